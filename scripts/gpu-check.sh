#!/usr/bin/env bash
# gpu-check.sh - build loraforge with CUDA on a dev machine, then check and time it on a GPU machine that has no
# package registry (and maybe no CUDA toolkit).
#
#   scripts/gpu-check.sh build          on the dev machine (needs nvcc, cmake, jansson):
#       configure + build into build-gpu/ (LF_CUDA=ON, archs 80;86;89;90), record the commit in
#       build-gpu/COMMIT, and copy the shared libraries a bare machine may lack into build-gpu/lib/.
#   scripts/gpu-check.sh run [OUTDIR]   on the GPU machine, in a copy of the repo with build-gpu/ carried:
#       nvidia-smi, every gpu-labelled test (tests/gpu/test_*.c: test_cuda_ops, test_cuda_quant, ...), the
#       build-gpu/bench_* benchmarks (bench_quant with --require-cuda), and a markdown report
#       OUTDIR/gpu-report-<date>.md (OUTDIR: the argument, else $OUT, else docs/perf/). Exit 1 when a gpu
#       test fails (a test that exits 77, "skipped", is not a failure); 2 on a usage or setup error.
#
# CUDA libraries (libcudart, libcublas, libcublasLt): cuBLASLt alone is ~540 MB, too big to travel with a
# carried build folder (the device tool carries 64 MiB). So `build` copies them, into build-gpu/lib/cuda/, only
# with LF_BUNDLE_CUDA=1 (for a driver-only machine reached another way); by default `run` finds them on the
# GPU machine (its CUDA toolkit, or the nvidia-* Python wheels beside PyTorch) and says where in the report.
#
# Environment: LF_BUNDLE_CUDA=1 (build), LF_BENCH_TIMEOUT (run, seconds per benchmark, default 300),
# LF_BENCH_MODEL (run: model directory for bench_cpu_infer; default: make a TinyLlama-shaped one in /tmp).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
BUILD="$ROOT/build-gpu"
LIBDIR="$BUILD/lib"
ARCHS="80;86;89;90"

die() { echo "gpu-check: $*" >&2; exit 2; }
usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

# Base-system libraries every Linux GPU machine has, never copied: glibc's parts, the C++ runtime (copying an
# older libstdc++ in front of the system's would break newer programs started with our LD_LIBRARY_PATH) and the
# driver's own libraries, which must match the installed kernel module.
SYSTEM_LIBS='^(linux-vdso|linux-gate|ld-linux|libc\.so|libm\.so|libmvec|libpthread|libdl\.so|librt\.so|libresolv'
SYSTEM_LIBS+='|libutil|libanl|libstdc\+\+|libgcc_s|libcuda\.so|libnvidia-)'
# CUDA toolkit libraries: bundled only with LF_BUNDLE_CUDA=1.
CUDA_LIBS='^(libcudart|libcublas|libcublasLt|libnccl|libnvJitLink|libnvrtc|libcusparse|libcufft|libcurand|libcusolver)'

# ELF executables at the top of the build folder (tests, benchmarks, tools, the CLI).
build_binaries() {
  local f
  for f in "$BUILD"/*; do
    [ -f "$f" ] && [ -x "$f" ] && [ "$(head -c 4 "$f" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] && echo "$f"
  done
  return 0
}

# ------------------------------------------------------------------------------------------------ build
do_build() {
  command -v nvcc >/dev/null || [ ! -x /usr/local/cuda/bin/nvcc ] || export PATH="/usr/local/cuda/bin:$PATH"
  command -v nvcc >/dev/null || die "nvcc not found (install the CUDA toolkit or put it on PATH)"
  command -v cmake >/dev/null || die "cmake not found"

  echo "== configure ($BUILD, CUDA archs $ARCHS) =="
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLF_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCHS"
  echo "== build =="
  cmake --build "$BUILD" -j "$(nproc)"

  # The commit the binaries come from (the GPU machine may get a copy without .git history).
  local commit dirty
  commit=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo "unknown (no commit yet)")
  dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l | tr -d ' ')
  echo "$commit" >"$BUILD/COMMIT"
  {
    echo "commit: $commit ($dirty uncommitted paths in the working tree at build time)"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n) ($(uname -m))"
    echo "nvcc: $(nvcc --version | sed -n 's/^Cuda compilation tools, //p')"
    echo "cuda archs: $ARCHS"
  } >"$BUILD/BUILD_INFO"

  echo "== bundle shared libraries into $LIBDIR =="
  rm -rf "$LIBDIR"
  mkdir -p "$LIBDIR"
  local bin name path n=0
  while read -r bin; do
    # ldd lines: "libjansson.so.4 => /lib/x86_64-linux-gnu/libjansson.so.4 (0x...)"
    while read -r name path; do
      [[ "$name" =~ $SYSTEM_LIBS ]] && continue
      [ -f "$path" ] || continue
      if [[ "$name" =~ $CUDA_LIBS ]]; then
        [ "${LF_BUNDLE_CUDA:-0}" = 1 ] || continue
        mkdir -p "$LIBDIR/cuda"
        [ -e "$LIBDIR/cuda/$name" ] || { cp -L "$path" "$LIBDIR/cuda/$name"; n=$((n + 1)); }
      else
        [ -e "$LIBDIR/$name" ] || { cp -L "$path" "$LIBDIR/$name"; n=$((n + 1)); }
      fi
    done < <(ldd "$bin" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }')
  done < <(build_binaries)
  echo "copied $n libraries:"
  (cd "$LIBDIR" && find . -type f -printf '  %P (%s bytes)\n' | sort)
  [ "${LF_BUNDLE_CUDA:-0}" = 1 ] ||
    echo "  (CUDA runtime/cuBLAS not bundled: LF_BUNDLE_CUDA=1 adds them to $LIBDIR/cuda, ~600 MB)"
  echo "== done: carry build-gpu/ to the GPU machine and run: scripts/gpu-check.sh run [OUTDIR] =="
}

# ------------------------------------------------------------------------------------------------ run
# Sonames our binaries need that the loader cannot find with the current LD_LIBRARY_PATH.
missing_libs() {
  local bin
  while read -r bin; do ldd "$bin" 2>/dev/null | awk '$2 == "=>" && $3 == "not" { print $1 }'; done < <(build_binaries)
}

# Add the first folder holding each missing CUDA library: the toolkit, then pip's nvidia-* wheels.
find_cuda_libs() {
  local lib dir found
  for lib in $(missing_libs | sort -u); do
    found=""
    for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu \
               $(find /opt /usr/local /usr/lib -maxdepth 9 -path '*/site-packages/nvidia/*/lib' -type d 2>/dev/null |
                 sort); do
      if [ -e "$dir/$lib" ]; then found=$dir; break; fi
    done
    if [ -n "$found" ]; then
      case ":$LD_LIBRARY_PATH:" in *":$found:"*) ;; *) LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$found" ;; esac
      echo "  $lib -> $found"
    else
      echo "  $lib -> NOT FOUND"
    fi
  done
}

do_run() {
  local outdir="${1:-${OUT:-$ROOT/docs/perf}}"
  [ -d "$BUILD" ] || die "$BUILD not found: run 'scripts/gpu-check.sh build' on the dev machine and carry build-gpu/"
  mkdir -p "$outdir"
  outdir=$(cd "$outdir" && pwd -P)
  local date report log
  date=$(date -u +%Y-%m-%d-%H%M%S)
  report="$outdir/gpu-report-$date.md"
  log="$outdir/gpu-check-$date.log"
  cd "$ROOT"

  # Our bundled libraries first (only non-system ones are there), then whatever the machine has.
  export LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  [ -d "$LIBDIR/cuda" ] && LD_LIBRARY_PATH="$LIBDIR/cuda:$LD_LIBRARY_PATH"
  echo "== shared libraries ==" | tee "$log"
  find_cuda_libs | tee -a "$log"
  export LD_LIBRARY_PATH

  echo "== nvidia-smi ==" | tee -a "$log"
  local smi="(nvidia-smi not found)" gpu="unknown" driver="unknown"
  if command -v nvidia-smi >/dev/null; then
    smi=$(nvidia-smi 2>&1 || true)
    gpu=$(nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader 2>/dev/null | head -1 || true)
    driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1 || true)
  fi
  echo "$smi" | tee -a "$log"

  # ---- gpu tests: the binaries of tests/gpu/test_*.c ----
  local tests=() t name
  for t in "$ROOT"/tests/gpu/test_*.c; do
    [ -e "$t" ] || continue
    name=$(basename "$t" .c)
    tests+=("$name")
  done
  [ ${#tests[@]} -gt 0 ] || die "no tests/gpu/test_*.c in this tree"

  # ctest knows the tests' labels, but its files hold absolute paths: usable only if build-gpu/ was not moved.
  local use_ctest=0 cache_dir
  cache_dir=$(sed -n 's/^CMAKE_CACHEFILE_DIR:INTERNAL=//p' "$BUILD/CMakeCache.txt" 2>/dev/null || true)
  if command -v ctest >/dev/null && [ "$cache_dir" = "$BUILD" ]; then use_ctest=1; fi

  local results=() failed=0 rc status out
  echo "== gpu tests ($([ $use_ctest = 1 ] && echo ctest || echo "binaries directly")) ==" | tee -a "$log"
  if [ $use_ctest = 1 ]; then
    rc=0
    out=$(cd "$BUILD" && ctest -L gpu -V --timeout 600 2>&1) || rc=$?
    echo "$out" | tee -a "$log"
    # summary lines: "1/1 Test #4: gpu_test_cuda_ops ......   Passed    1.23 sec" (or ***Skipped, ***Failed);
    # with -V each output line of test 4 starts with "4: "
    local num
    while read -r num name status; do
      case "$status" in
        Passed) ;;
        *Skipped*) status="Skipped ($(echo "$out" | grep -m1 "^$num: skipped:" | cut -d: -f3- | cut -c2- || true))" ;;
        *) failed=1 ;;
      esac
      results+=("$name|$status")
    done < <(echo "$out" |
      sed -n 's/^ *[0-9]*\/[0-9]* *Test *#\([0-9]*\): \([^ ]*\) [. *]*\([A-Za-z][A-Za-z ()]*[A-Za-z)]\) *[0-9.]* sec.*/\1 \2 \3/p')
    [ $rc = 0 ] || failed=1
    [ ${#results[@]} -gt 0 ] || { results+=("ctest|no gpu test ran (rc $rc)"); failed=1; }
  else
    for name in "${tests[@]}"; do
      echo "-- $name" | tee -a "$log"
      if [ ! -x "$BUILD/$name" ]; then
        results+=("$name|MISSING (not built)")
        failed=1
        continue
      fi
      rc=0
      timeout 600 "$BUILD/$name" >"$log.tmp" 2>&1 || rc=$?
      tee -a "$log" <"$log.tmp"
      case $rc in
        0) status=Passed ;;
        77) status="Skipped ($(grep -m1 '^skipped:' "$log.tmp" | cut -c10- || true))" ;;
        124) status="Failed (timeout)"; failed=1 ;;
        *) status="Failed (exit $rc)"; failed=1 ;;
      esac
      results+=("$name|$status")
    done
    rm -f "$log.tmp"
  fi

  # ---- GPU end-to-end: the model on cuda against the cpu (score logits, generate, serve with adapters) ----
  # tiny Llama (bundled tokenizer); a LoRA adapter trained on the cpu for 3 steps of the bundled data; then:
  #   score f32 cuda vs cpu (rel 1e-3: f32 sums in another order), score bf16 cuda vs cpu bf16 (rel 5e-2:
  #   both round every op to bf16, at different places), 4-bit base and the adapter (rel 1e-3), generate runs,
  #   serve on cuda answers /ping and a base + adapter request (bash /dev/tcp; no curl needed).
  echo "== gpu e2e ==" | tee -a "$log"
  local e2e="$outdir/gpu-e2e" lf="$BUILD/loraforge" toks="1 5 9 13 17 21 25 29 33 37 41 45 49 53 57 61"
  rm -rf "$e2e"; mkdir -p "$e2e"
  e2e_case() { # name tol extra-args...
    local nm=$1 tol=$2; shift 2
    local st=Failed
    if timeout 300 "$lf" score --model "$e2e/m" --tokens "$toks" --device cpu --out "$e2e/$nm-cpu.npy" "$@" >>"$log" 2>&1 &&
       timeout 300 "$lf" score --model "$e2e/m" --tokens "$toks" --device cuda --out "$e2e/$nm-cuda.npy" "$@" >>"$log" 2>&1; then
      local j
      j=$("$BUILD/npy_diff" "$e2e/$nm-cuda.npy" "$e2e/$nm-cpu.npy" "$tol" 2>&1) && st=Passed
      echo "e2e $nm: $j" | tee -a "$log"
      st="$st $j"
    fi
    case "$st" in Passed*) ;; *) failed=1 ;; esac
    results+=("e2e score $nm (cuda vs cpu)|$st")
  }
  if timeout 120 "$lf" make-tiny --arch llama --out "$e2e/m" --hidden 128 --layers 2 --heads 4 --kv-heads 2 \
       --intermediate 256 --tokenizer "$ROOT/examples/tokenizer" --seed 1 --init-std 0.05 >>"$log" 2>&1 &&
     timeout 300 "$lf" train "$ROOT/examples/demo_qlora.yaml" --model_name_or_path "$e2e/m" --output_dir "$e2e/ad" \
       --max_steps 3 --quantization_bit none --dataset_dir "$ROOT/examples/data" >>"$log" 2>&1; then
    e2e_case f32 1e-3 --compute-dtype f32
    e2e_case bf16 5e-2 --compute-dtype bf16
    e2e_case nf4 1e-3 --compute-dtype f32 --quantization-bit 4
    e2e_case lora 1e-3 --compute-dtype f32 --adapter "$e2e/ad"
    if timeout 300 "$lf" generate --model "$e2e/m" --tokens "$toks" --max-new-tokens 8 --device cuda >>"$log" 2>&1; then
      results+=("e2e generate (cuda)|Passed")
    else results+=("e2e generate (cuda)|Failed"); failed=1; fi
    local port=18231 sp ok=0 body
    "$lf" serve --model "$e2e/m" --device cuda --host 127.0.0.1 --port $port --adapter "ad=$e2e/ad" >>"$log" 2>&1 &
    sp=$!
    for _ in $(seq 1 120); do
      if (exec 3<>/dev/tcp/127.0.0.1/$port && printf 'GET /ping HTTP/1.0\r\n\r\n' >&3 && grep -q " 200 " <&3) 2>/dev/null; then ok=1; break; fi
      sleep 0.5
    done
    if [ $ok = 1 ]; then
      for hdr in "" "X-Amzn-SageMaker-Adapter-Identifier: ad\r\n"; do
        body='{"inputs": "hello", "parameters": {"max_new_tokens": 4}}'
        if ! (exec 3<>/dev/tcp/127.0.0.1/$port &&
              printf "POST /invocations HTTP/1.0\r\nContent-Type: application/json\r\n${hdr}Content-Length: ${#body}\r\n\r\n%s" "$body" >&3 &&
              cat <&3 | tee -a "$log" | grep -q " 200 ") 2>/dev/null; then ok=0; fi
      done
    fi
    kill $sp 2>/dev/null; wait $sp 2>/dev/null || true
    if [ $ok = 1 ]; then results+=("e2e serve (cuda, base + adapter)|Passed"); else results+=("e2e serve (cuda, base + adapter)|Failed"); failed=1; fi
  else
    results+=("e2e setup (make-tiny + 3-step train)|Failed (see log)"); failed=1
  fi

  # ---- benchmarks: build-gpu/bench_*; each prints one JSON line ----
  local benches=() b json bto="${LF_BENCH_TIMEOUT:-300}" model="${LF_BENCH_MODEL:-}"
  echo "== benchmarks ==" | tee -a "$log"
  for b in "$BUILD"/bench_*; do
    [ -x "$b" ] || continue
    name=$(basename "$b")
    local args=()
    if [ "$name" = bench_cpu_infer ]; then
      if [ -z "$model" ]; then # the TinyLlama shape of bench/run_cpu_infer.sh, made once per machine
        model=/tmp/lf-bench-1b
        [ -f "$model/config.json" ] || timeout "$bto" "$BUILD/loraforge" make-tiny --arch llama --out "$model" \
          --hidden 2048 --layers 22 --heads 32 --kv-heads 4 --intermediate 5632 --vocab 32000 --dtype bf16 \
          --seed 1 --max-pos 4096 >>"$log" 2>&1 || echo "make-tiny failed (see log)" | tee -a "$log"
      fi
      args=(--model "$model" --prompt-len 128 --decode 16)
    elif [ "$name" = bench_quant ]; then
      args=(--require-cuda) # 4-bit dequantize / GEMV on CPU and GPU; a missing CUDA part is an error here
    fi
    rc=0
    out=$(timeout "$bto" "$b" "${args[@]}" 2>&1) || rc=$?
    echo "-- $name ${args[*]} (exit $rc)" | tee -a "$log"
    echo "$out" | tee -a "$log"
    json=$(echo "$out" | grep -E '^\{.*\}$' || true)
    benches+=("$name|${json:-no JSON line (exit $rc)}")
  done
  # the informational timings printed by the gpu tests ("info: {...}")
  while read -r json; do benches+=("tests|$json"); done < <(grep -oE 'info: \{.*\}' "$log" | cut -c7- || true)

  # ---- report ----
  {
    echo "# GPU check $date"
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| device | ${gpu:-unknown} |"
    echo "| driver | ${driver:-unknown} |"
    echo "| host | $(uname -n), $(nproc) CPUs, kernel $(uname -r) |"
    echo "| commit (build) | $(cat "$BUILD/COMMIT" 2>/dev/null || echo unknown) |"
    echo "| commit (tree here) | $(git rev-parse HEAD 2>/dev/null || echo "unknown (no .git history)") |"
    echo "| build | $(sed -n 's/^built: //p; s/^nvcc: /nvcc /p' "$BUILD/BUILD_INFO" 2>/dev/null | paste -sd ';' -) |"
    echo "| runner | $([ $use_ctest = 1 ] && echo "ctest -L gpu" || echo "test binaries run directly") |"
    echo
    echo "## GPU tests"
    echo
    echo "| test | result |"
    echo "|---|---|"
    for t in "${results[@]}"; do echo "| ${t%%|*} | ${t#*|} |"; done
    echo
    echo "## Benchmarks (JSON lines)"
    echo
    echo '```'
    for t in "${benches[@]}"; do echo "${t%%|*}: ${t#*|}"; done
    echo '```'
    echo
    echo "## Shared libraries used"
    echo
    echo '```'
    ldd "$BUILD/${tests[0]}" 2>/dev/null | grep -E 'cudart|cublas|jansson|not found' || true
    echo '```'
    echo
    echo "## nvidia-smi"
    echo
    echo '```'
    echo "$smi"
    echo '```'
    echo
    echo "## Log (last 300 lines; full log: $(basename "$log"))"
    echo
    echo '```'
    tail -n 300 "$log"
    echo '```'
  } >"$report"

  echo "== summary =="
  for t in "${results[@]}"; do echo "  ${t%%|*}: ${t#*|}"; done
  echo "report: $report"
  [ $failed = 0 ] || { echo "gpu-check: FAILED" >&2; exit 1; }
  echo "gpu-check: ok"
}

case "${1:-}" in
  build) do_build ;;
  run) shift; do_run "$@" ;;
  *) usage ;;
esac
