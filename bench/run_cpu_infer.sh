#!/usr/bin/env bash
# run_cpu_infer.sh [BUILD_DIR] - make a ~1.1B-parameter Llama-shaped bf16 model (TinyLlama shape: hidden
# 2048, 22 layers, 32 heads, 4 KV heads, intermediate 5632, vocab 32000) once, then run bench_cpu_infer on
# all cores, with the bf16 weights and with the decoder linears quantized to NF4 on load (double quant).
# Prints one JSON line per run.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build}
[ -x "$B/bench_cpu_infer" ] || { cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release >/dev/null; cmake --build "$B" -j "$(nproc)"; }
M="$B/bench-1b"
if [ ! -f "$M/config.json" ]; then
  "$B/loraforge" make-tiny --arch llama --out "$M" --hidden 2048 --layers 22 --heads 32 --kv-heads 4 \
    --intermediate 5632 --vocab 32000 --dtype bf16 --seed 1 --max-pos 4096
fi
"$B/bench_cpu_infer" --model "$M" --prompt-len "${PROMPT_LEN:-128}" --decode "${DECODE:-16}"
"$B/bench_cpu_infer" --model "$M" --prompt-len "${PROMPT_LEN:-128}" --decode "${DECODE:-16}" --quantization-bit 4
