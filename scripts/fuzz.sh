#!/usr/bin/env bash
# fuzz.sh - build every libFuzzer target tests/fuzz/fuzz_*.c with clang (ASan + UBSan + libFuzzer) into
# build-fuzz/, then run each one for SECONDS on a copy of its seed corpus (docs/fuzzing.md).
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]      (TARGET: fuzz_config or config; default: all)
#   SECONDS   per target, default 30; 0 = build only.
#   env LF_FUZZ_ARGS   extra libFuzzer flags, e.g. "-max_len=65536" or "-runs=1000000"
# Each target's header comment names what it links: `* sources: a.c b.c` (repository-relative; globs such
# as model/jinja*.c are expanded) and `* pkg: jansson zlib` (pkg-config names). Seeds:
# tests/fuzz/corpus/<name without fuzz_>/; the working corpus build-fuzz/corpus/<name>/ starts as a copy
# and keeps what a run adds; crash, leak and timeout
# inputs land in build-fuzz/artifacts/<name>/. Exit status non-zero when a target fails to build, crashes,
# leaks, times out (-timeout=10) or runs out of memory (-rss_limit_mb=2048).
set -euo pipefail
# (the body is one function: bash parses it whole, so editing this file during a long run is safe)
main() {
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/build-fuzz

SECS=30
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then SECS=$1; shift; fi
WANT=("$@")

# ---- toolchain: the project's build packages, plus clang and its libFuzzer runtime ----
bash scripts/setup.sh >/dev/null
missing=()
for p in clang libclang-rt-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "fuzz: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
CC=${LF_FUZZ_CC:-clang}

# ---- which targets ----
targets=()
for src in tests/fuzz/fuzz_*.c; do
  name=$(basename "$src" .c)
  if [ ${#WANT[@]} -gt 0 ]; then
    keep=0
    for w in "${WANT[@]}"; do [ "$w" = "$name" ] || [ "fuzz_$w" = "$name" ] && keep=1; done
    [ $keep -eq 1 ] || continue
  fi
  targets+=("$name")
done
if [ ${#targets[@]} -eq 0 ]; then echo "fuzz: no target matches ${WANT[*]:-}" >&2; exit 2; fi

# `* sources: ...` / `* pkg: ...` from the first comment of a target
header_field() { sed -n '1,/\*\//p' "$1" | sed -n "s/^ *\* *$2: *//p" | tr '\n' ' '; }

mkdir -p "$OUT/bin" "$OUT/obj" "$OUT/corpus" "$OUT/artifacts" "$OUT/logs"
CFLAGS=(-g -O1 -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -Wall -Wextra
        -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -I"$ROOT"
        -DLF_FUZZ_ROOT="\"$ROOT\"")
OBJFLAGS=("${CFLAGS[@]/-fsanitize=fuzzer,address,undefined/-fsanitize=fuzzer-no-link,address,undefined}")

# Objects are shared between targets and rebuilt when their source or any header is newer (coarse on
# purpose: headers are few and a full rebuild is a minute).
newest_header=$(find core model adapters finetune serve kernels quant -name '*.h' -printf '%T@\n' 2>/dev/null |
                sort -n | tail -1)
build_obj() { # src -> prints object path
  local src=$1 obj=$OUT/obj/${1//\//_}.o
  obj=${obj%.c.o}.o
  if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] ||
     awk -v a="$(stat -c %Y "$obj")" -v b="${newest_header%.*}" 'BEGIN{exit !(b > a)}'; then
    "$CC" "${OBJFLAGS[@]}" "${PKG_CFLAGS[@]}" -c "$src" -o "$obj" || return 1
  fi
  echo "$obj"
}

build_fail=()
t_build=$(date +%s)
for name in "${targets[@]}"; do
  src=tests/fuzz/$name.c
  srcs=()  # words may be globs (model/jinja_*.c): expanded here, relative to the repository root
  for w in $(header_field "$src" sources); do for f in $w; do srcs+=("$f"); done; done
  read -r -a pkgs <<<"$(header_field "$src" pkg)"
  PKG_CFLAGS=(); PKG_LIBS=()
  if [ ${#pkgs[@]} -gt 0 ]; then
    read -r -a PKG_CFLAGS <<<"$(pkg-config --cflags "${pkgs[@]}")"
    read -r -a PKG_LIBS <<<"$(pkg-config --libs "${pkgs[@]}")"
  fi
  objs=(); ok=1
  if [ ${#srcs[@]} -eq 0 ]; then
    echo "fuzz: $name: no '* sources: a.c b.c' line in its header comment (see docs/fuzzing.md)" >&2
    build_fail+=("$name"); continue
  fi
  for s in "${srcs[@]}"; do o=$(build_obj "$s") || { ok=0; break; }; objs+=("$o"); done
  if [ $ok -eq 1 ] && "$CC" "${CFLAGS[@]}" "${PKG_CFLAGS[@]}" "$src" "${objs[@]}" "${PKG_LIBS[@]}" -lm -lpthread \
       -o "$OUT/bin/$name"; then
    echo "fuzz: built $name (${#srcs[@]} sources; ${pkgs[*]:-no packages})"
  else
    echo "fuzz: BUILD FAILED $name" >&2
    build_fail+=("$name")
  fi
done
echo "fuzz: build took $(( $(date +%s) - t_build )) s"

passed=0; failed=${#build_fail[@]}
if [ "$SECS" -eq 0 ]; then
  echo "fuzz: built only (SECONDS=0)"
  [ "$failed" -eq 0 ] || { echo "fuzz: 0 passed, $failed failed"; exit 1; }
  exit 0
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
read -r -a EXTRA <<<"${LF_FUZZ_ARGS:-}"
for name in "${targets[@]}"; do
  printf '%s\n' "${build_fail[@]:-}" | grep -qx "$name" && continue
  short=${name#fuzz_}
  work=$OUT/corpus/$name
  mkdir -p "$work" "$OUT/artifacts/$name"
  [ -d "tests/fuzz/corpus/$short" ] && cp -rn "tests/fuzz/corpus/$short/." "$work/" 2>/dev/null || true
  log=$OUT/logs/$name.log
  t0=$(date +%s)
  before=$(find "$OUT/artifacts/$name" -type f | wc -l)
  set +e
  "$OUT/bin/$name" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$OUT/artifacts/$name/" "${EXTRA[@]}" "$work" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [ -n "$execs" ] || execs=$(grep -o '#[0-9]*' "$log" | tail -1 | tr -d '#' || true)
  crashes=$(( $(find "$OUT/artifacts/$name" -type f | wc -l) - before ))
  secs=$(( $(date +%s) - t0 ))
  corpus_n=$(find "$work" -type f | wc -l)
  if [ $rc -eq 0 ]; then
    passed=$((passed + 1))
    echo "fuzz: $name ok: ${execs:-?} executions in ${secs} s, corpus $corpus_n, 0 crashes"
  else
    failed=$((failed + 1))
    echo "fuzz: $name FAILED (exit $rc): ${execs:-?} executions in ${secs} s, $crashes artifact(s) in build-fuzz/artifacts/$name/"
    { grep -aE '^(==[0-9]+== ?ERROR|SUMMARY|.*runtime error)' "$log" || true; } | head -5 | sed 's/^/fuzz:   /'
    echo "fuzz:   log: build-fuzz/logs/$name.log"
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
}
main "$@"; exit $?  # exit here: nothing after this line is read, even if the file changed meanwhile
