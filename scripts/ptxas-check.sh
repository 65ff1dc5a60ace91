#!/usr/bin/env bash
# ptxas-check.sh [ARCH...] - compile every kernels/cuda/*.cu with `ptxas -v` for each arch (default 80 86 89
# 90) and fail if any kernel spills registers to local memory. Needs nvcc; no GPU. Prints one line per
# file/arch with the worst register count, then "ptxas-check: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || { echo "ptxas-check: nvcc not found (skipped)"; exit 0; }
ARCHS=("$@"); [ ${#ARCHS[@]} -gt 0 ] || ARCHS=(80 86 89 90)
OUT=$(mktemp -d); trap 'rm -rf "$OUT"' EXIT
pass=0; fail=0
for f in kernels/cuda/*.cu; do
  for a in "${ARCHS[@]}"; do
    log="$OUT/$(basename "$f").$a.log"
    if ! nvcc -std=c++17 -O3 -I. -arch="sm_$a" -Xptxas -v -c "$f" -o "$OUT/x.o" >"$log" 2>&1; then
      echo "FAIL $f sm_$a: compile error"; sed -n 1,20p "$log"; fail=$((fail+1)); continue
    fi
    spills=$(grep -E "bytes spill" "$log" | grep -cv " 0 bytes spill stores, 0 bytes spill loads" || true)
    regs=$(grep -oE "Used [0-9]+ registers" "$log" | awk '{print $2}' | sort -n | tail -1 || true)
    if [ "$spills" != "0" ]; then
      echo "FAIL $f sm_$a: $spills kernel(s) spill"; grep -B1 -E "bytes spill" "$log" | grep -v " 0 bytes spill" | head -10
      fail=$((fail+1))
    else
      echo "ok   $f sm_$a: no spills, max ${regs:-0} registers"; pass=$((pass+1))
    fi
  done
done
echo "ptxas-check: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
