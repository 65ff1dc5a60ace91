#!/usr/bin/env bash
# seed-sweep.sh [N] [BUILD_DIR] - run every randomized test N times (default 50), each time with a fresh random
# LF_TEST_SEED (printed), from an AddressSanitizer + UBSan build (default build-asan, configured like
# scripts/test.sh when it does not exist; an existing BUILD_DIR must have LF_SANITIZE=ON), one test at a time
# (ctest -j1 -R '^name$'), and list the failing test + seed pairs with the command that reproduces each.
#
# The randomized tests are found, not listed: every tests/{unit,oracle,e2e,gpu}/test_* that reads LF_TEST_SEED
# (a tests/tools/*_tool that reads it gets the seed from the test that runs it, e.g. batch_tool from
# e2e_test_model_batch; a tool no randomized test runs is warned about). gpu tests count as skipped without a
# device.
#
# Environment:
#   LF_SWEEP_ONLY=ERE      only the tests whose ctest name matches (e.g. '^unit_')
#   LF_SWEEP_EXCLUDE=ERE   leave out the tests whose ctest name matches (e.g. '^e2e_test_serve')
#   LF_SWEEP_JOBS=J        parallel jobs of the incremental build before the sweep (default 1)
#   LF_SWEEP_LOGS=DIR      where the logs of failing runs are kept (default BUILD_DIR/seed-sweep-logs)
# Output: one line per run, a summary of failures, and last "seed-sweep: P passed, F failed" (skipped runs are
# counted on the line before it). Exit 0 when nothing failed, 1 when a run failed, 2 on bad usage.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() {
  echo "usage: scripts/seed-sweep.sh [N] [BUILD_DIR]   (N >= 1, default 50; BUILD_DIR default build-asan)" >&2
  exit 2
}
case "${1:-}" in -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
[ $# -le 2 ] || usage
N=${1:-50}
[[ "$N" =~ ^[0-9]+$ ]] && [ "$N" -ge 1 ] || { echo "seed-sweep: N must be a positive integer, not '$N'" >&2; usage; }
B=${2:-build-asan}
case "$B" in /*) ;; *) B="$ROOT/$B" ;; esac

# ---- the sanitizer build ----
if [ ! -f "$B/CMakeCache.txt" ]; then
  echo "seed-sweep: configuring $B (Debug, LF_SANITIZE=ON, LF_CUDA=OFF)"
  cmake -S "$ROOT" -B "$B" -DCMAKE_BUILD_TYPE=Debug -DLF_SANITIZE=ON -DLF_WERROR=ON -DLF_CUDA=OFF \
    -DLF_PYTHON="$ROOT/build/venv/bin/python" >/dev/null || exit 2
fi
if ! grep -q '^LF_SANITIZE:BOOL=ON$' "$B/CMakeCache.txt"; then
  echo "seed-sweep: $B is not a sanitizer build (LF_SANITIZE=ON); pass another BUILD_DIR" >&2
  exit 2
fi
echo "seed-sweep: building $B"
cmake --build "$B" -j "${LF_SWEEP_JOBS:-1}" >/dev/null || { echo "seed-sweep: the build of $B failed" >&2; exit 2; }

# ---- the randomized tests ----
tests=()
add() { local t; for t in "${tests[@]}"; do [ "$t" = "$1" ] && return; done; tests+=("$1"); }
for f in $(grep -l LF_TEST_SEED tests/unit/test_*.c tests/gpu/test_*.c tests/oracle/test_*.py tests/e2e/test_*.py \
  2>/dev/null | sort); do
  kind=$(basename "$(dirname "$f")")
  add "${kind}_$(basename "${f%.*}")"
done
# a tool that reads the seed gets it from the test that runs it (the environment is inherited): make sure one does
for tool in $(grep -l LF_TEST_SEED tests/tools/*.c 2>/dev/null); do
  name=$(basename "${tool%.c}")
  grep -lw "$name" $(grep -l LF_TEST_SEED tests/oracle/test_*.py tests/e2e/test_*.py 2>/dev/null) >/dev/null 2>&1 ||
    echo "seed-sweep: warning: $tool reads LF_TEST_SEED but no randomized test runs $name" >&2
done
known=$(cd "$B" && ctest -N | sed -n 's/^ *Test *#[0-9]*: //p')
selected=()
for t in "${tests[@]}"; do
  [ -n "${LF_SWEEP_ONLY:-}" ] && ! [[ "$t" =~ $LF_SWEEP_ONLY ]] && continue
  [ -n "${LF_SWEEP_EXCLUDE:-}" ] && [[ "$t" =~ $LF_SWEEP_EXCLUDE ]] && continue
  if ! grep -qx "$t" <<<"$known"; then
    echo "seed-sweep: $t reads LF_TEST_SEED but is not a ctest test of $B (reconfigure?)" >&2
    continue
  fi
  selected+=("$t")
done
[ ${#selected[@]} -gt 0 ] || { echo "seed-sweep: no test selected" >&2; exit 2; }
echo "seed-sweep: $N rounds of ${#selected[@]} tests: ${selected[*]}"

LOGS=${LF_SWEEP_LOGS:-$B/seed-sweep-logs}
mkdir -p "$LOGS"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
passed=0 failed=0 skipped=0
failures=()
summary() {
  echo
  if [ ${#failures[@]} -gt 0 ]; then
    echo "seed-sweep: failing test + seed (reproduce: cd $B && LF_TEST_SEED=SEED ASAN_OPTIONS=$ASAN_OPTIONS UBSAN_OPTIONS=$UBSAN_OPTIONS ctest -R '^TEST\$' --output-on-failure):"
    printf '  %s\n' "${failures[@]}"
  fi
  [ "$skipped" -gt 0 ] && echo "seed-sweep: $skipped runs skipped (gpu tests without a device)"
  echo "seed-sweep: $passed passed, $failed failed"
}
trap 'echo; echo "seed-sweep: interrupted"; summary; exit 1' INT TERM

for ((r = 1; r <= N; r++)); do
  t_round=$SECONDS
  for t in "${selected[@]}"; do
    seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
    seed=$((seed % 2147483647 + 1))
    log="$LOGS/$t-$seed.log"
    t0=$SECONDS
    (cd "$B" && LF_TEST_SEED=$seed ctest -j1 -R "^$t\$" --output-on-failure) >"$log" 2>&1
    rc=$?
    dt=$((SECONDS - t0))
    if [ $rc -eq 0 ] && grep -q 'Skipped\|Not Run' "$log"; then
      skipped=$((skipped + 1))
      echo "round $r/$N $t seed $seed: skipped (${dt}s)"
      rm -f "$log"
    elif [ $rc -eq 0 ]; then
      passed=$((passed + 1))
      echo "round $r/$N $t seed $seed: ok (${dt}s)"
      rm -f "$log"
    else
      failed=$((failed + 1))
      failures+=("$t seed $seed (log: $log)")
      echo "round $r/$N $t seed $seed: FAILED (${dt}s) - log $log"
      grep -m3 -E 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|^FAIL|FAIL ' "$log" | sed 's/^/    /'
    fi
  done
  echo "round $r/$N done in $((SECONDS - t_round))s ($passed passed, $failed failed so far)"
done
summary
[ "$failed" -eq 0 ]
