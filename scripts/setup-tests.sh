#!/usr/bin/env bash
# setup-tests.sh BUILD_DIR - the oracle virtualenv under BUILD_DIR/venv: a plain venv (no system site
# packages) from Debian 12's /usr/bin/python3 (3.11) with the current Hugging Face stack from PyPI - torch
# 2.15, transformers 5, peft 0.21, bitsandbytes 0.50 (the NF4 oracle; it quantizes on the CPU), tokenizers
# 0.23, safetensors, numpy, accelerate, jinja2 - and every dependency pinned with == in
# scripts/oracle-requirements.txt (regenerate it with the recipe at its top). About 1.5 minutes and 6 GB:
# torch's CUDA libraries install alongside even though the tests run on the CPU.
# Idempotent: skipped when the venv already holds every pinned distribution at its version and imports the
# oracle packages.
set -euo pipefail
BUILD=${1:?usage: setup-tests.sh BUILD_DIR}
REQ="$(cd "$(dirname "$0")" && pwd)/oracle-requirements.txt"
VENV="$BUILD/venv"
PY=/usr/bin/python3
# every "name==version" line of the requirements file must be installed at that version (names compared
# PEP 503-normalized), and the oracle packages must import
check='import sys, re, importlib.metadata as md
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
have = {norm(d.metadata["Name"]): d.version for d in md.distributions()}
bad = []
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line: continue
    name, ver = line.split("==")
    if have.get(norm(name)) != ver: bad.append(f"{name}=={ver} (have {have.get(norm(name))})")
if bad: sys.exit("setup-tests: not at the pins: " + ", ".join(bad))
import torch, transformers, tokenizers, safetensors, numpy, peft, accelerate, jinja2, bitsandbytes, requests'
versions='import torch, transformers, tokenizers, safetensors, numpy, peft, accelerate, bitsandbytes, jinja2, sys
print("setup-tests: python " + sys.version.split()[0] + ", " + ", ".join(f"{m.__name__} {m.__version__}" for m in
      (torch, transformers, peft, bitsandbytes, tokenizers, safetensors, numpy, accelerate, jinja2)))'
export HF_HUB_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1   # bitsandbytes' CPU backend would look for hub kernels
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "$check" "$REQ" 2>/dev/null; then
  echo "setup-tests: $VENV ready"
  "$VENV/bin/python" -c "$versions" 2>/dev/null
  exit 0
fi
mkdir -p "$BUILD"
# an old venv (e.g. one made with --system-site-packages around Debian's torch 1.13) is replaced, not mended
if [ -e "$VENV" ] && grep -qs '^include-system-site-packages = true' "$VENV/pyvenv.cfg"; then
  echo "setup-tests: replacing $VENV (it used system site packages)"
  rm -rf "$VENV"
fi
$PY -m venv "$VENV"
# --no-deps: the file is the complete, already resolved set, so pip installs exactly it; pip check then
# verifies that it is consistent
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r "$REQ"
"$VENV/bin/pip" check --disable-pip-version-check >/dev/null
"$VENV/bin/python" -c "$check" "$REQ"
"$VENV/bin/python" -c "$versions" 2>/dev/null
