#!/usr/bin/env bash
# test.sh - set up, build warning-free, run the whole suite (unit, oracle, e2e; gpu tests report
# "skipped" without a device), then build and run it again under AddressSanitizer + UBSan, then a short
# libFuzzer smoke of every tests/fuzz target (LF_FUZZ_SECONDS each, default 30; scripts/fuzz.sh).
# Usage: scripts/test.sh [--no-sanitize]
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=$(nproc)
bash scripts/setup.sh --tests

echo "== build (Release, -Werror) =="
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLF_WERROR=ON >/dev/null
cmake --build build -j "$JOBS"
bash scripts/setup-tests.sh build
echo "== tests =="
(cd build && ctest --output-on-failure -j "$JOBS")

if [ "${1:-}" != "--no-sanitize" ]; then
  echo "== build (AddressSanitizer + UndefinedBehaviorSanitizer) =="
  # CUDA off here: nothing CUDA runs without a device, and cudart is not ASan-instrumented.
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DLF_SANITIZE=ON -DLF_WERROR=ON -DLF_CUDA=OFF \
        -DLF_PYTHON="$PWD/build/venv/bin/python" >/dev/null
  cmake --build build-asan -j "$JOBS"
  echo "== tests under ASan + UBSan =="
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
     ctest --output-on-failure -j "$JOBS")
  echo "== fuzz smoke (libFuzzer + ASan + UBSan, every tests/fuzz target; docs/fuzzing.md) =="
  bash scripts/fuzz.sh "${LF_FUZZ_SECONDS:-30}"
fi
echo "== all tests passed =="
