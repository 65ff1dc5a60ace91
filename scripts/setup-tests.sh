#!/usr/bin/env bash
# setup-tests.sh BUILD_DIR - the oracle virtualenv under BUILD_DIR/venv: Debian's python3-torch (system site
# packages; it reports 1.13.0a0, so PyPI packages are installed with --no-deps to keep pip from pulling a
# CUDA torch) plus pinned transformers/tokenizers/safetensors/numpy and their pure-Python needs.
# Then BUILD_DIR/venv-current: the current stack (torch 2.15, transformers 5, peft 0.21, bitsandbytes 0.50,
# tokenizers 0.23), every package pinned in scripts/oracle-current-requirements.txt, for the tests that carry the
# line "oracle-stack: current" (CMakeLists.txt runs them with LF_PYTHON_CURRENT). About 6 GB, 1.5 minutes.
# The other tests move to it as they are ported (issue 13).
# Idempotent: each venv is skipped when it already imports everything at the pinned versions.
set -euo pipefail
BUILD=${1:?usage: setup-tests.sh BUILD_DIR}
VENV="$BUILD/venv"
PY=/usr/bin/python3
PINS=(
  transformers==4.44.2 tokenizers==0.19.1 safetensors==0.4.5 numpy==1.26.4 huggingface-hub==0.24.6
  regex==2024.9.11 tqdm==4.66.5 filelock==3.16.1 fsspec==2024.9.0 packaging==24.1 pyyaml==6.0.2
  peft==0.12.0 accelerate==0.33.0 psutil==6.0.0
  jinja2==3.1.4 markupsafe==2.1.5 requests==2.32.3 urllib3==2.2.3 idna==3.10 certifi==2024.8.30 charset-normalizer==3.4.0 typing-extensions==4.12.2
)
check='import torch, transformers, tokenizers, safetensors, numpy, peft, accelerate
assert transformers.__version__ == "4.44.2" and tokenizers.__version__ == "0.19.1" and safetensors.__version__ == "0.4.5" and numpy.__version__ == "1.26.4" and peft.__version__ == "0.12.0"'
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "$check" 2>/dev/null; then
  echo "setup-tests: $VENV ready"
else
  mkdir -p "$BUILD"
  $PY -m venv --system-site-packages "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "${PINS[@]}"
  "$VENV/bin/python" -c "$check"
  "$VENV/bin/python" -c 'import torch, transformers; print(f"setup-tests: torch {torch.__version__}, transformers {transformers.__version__}")'
fi

# ---- the current stack ----
CUR="$BUILD/venv-current"
REQ="$(cd "$(dirname "$0")" && pwd)/oracle-current-requirements.txt"
pin() { grep -i "^$1==" "$REQ" | cut -d= -f3; }
check_cur="import torch, transformers, peft, bitsandbytes, tokenizers, safetensors, numpy, requests, jinja2, yaml
assert (torch.__version__.split('+')[0], transformers.__version__, peft.__version__, bitsandbytes.__version__, tokenizers.__version__) == ('$(pin torch)', '$(pin transformers)', '$(pin peft)', '$(pin bitsandbytes)', '$(pin tokenizers)')"
if [ -x "$CUR/bin/python" ] && "$CUR/bin/python" -c "$check_cur" 2>/dev/null; then
  echo "setup-tests: $CUR ready"
else
  rm -rf "$CUR"
  $PY -m venv "$CUR"
  "$CUR/bin/pip" install -q --disable-pip-version-check --no-deps -r "$REQ"
  "$CUR/bin/python" -c "$check_cur"
  "$CUR/bin/python" -c 'import torch, transformers, peft, bitsandbytes; print(f"setup-tests: current stack: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, bitsandbytes {bitsandbytes.__version__}")'
fi
