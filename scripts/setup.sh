#!/usr/bin/env bash
# setup.sh - install the system packages loraforge builds against (Debian 12). Idempotent: apt runs only
# when something is missing. Needs root (or sudo).
set -euo pipefail
PKGS=(build-essential curl cmake pkg-config libjansson-dev zlib1g-dev libpcre2-dev libutf8proc-dev libyaml-dev)
if [ "${1:-}" = "--tests" ]; then
  # the oracle virtualenv (scripts/setup-tests.sh: python3 + venv, everything else from PyPI); clang + its
  # libFuzzer runtime for scripts/fuzz.sh
  PKGS+=(python3 python3-venv clang libclang-rt-dev)
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: system packages present"
fi
