#!/usr/bin/env bash
# demo.sh - set up, build, and run the main job end to end on the CPU with a tiny random model.
# Today: make-tiny -> inspect -> score -> generate. Fine-tuning (issue 5) and serving (issue 6) join this
# script as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)"
LF=build/loraforge
OUT=${DEMO_DIR:-build/demo}
rm -rf "$OUT"; mkdir -p "$OUT"
TOK=""
# the real Llama-2 tokenizer files travel with the model when ../shared is beside the checkout
[ -f ../shared/data/tokenizers/llama2/tokenizer.json ] && TOK="--tokenizer ../shared/data/tokenizers/llama2"
echo "== make-tiny: a random Llama with GQA (bf16) =="
$LF make-tiny --arch llama --out "$OUT/tiny-llama" --hidden 256 --layers 4 --heads 8 --kv-heads 2 \
  --intermediate 512 --vocab 32000 --dtype bf16 --seed 1 $TOK
echo "== inspect =="
$LF inspect "$OUT/tiny-llama" | tail -n 6
echo "== score: logits for 8 tokens =="
$LF score --model "$OUT/tiny-llama" --tokens "1 450 4996 17354 1701 432 17204 975" --out "$OUT/logits.npy"
echo "wrote $OUT/logits.npy"
echo "== generate: greedy, 16 new tokens =="
$LF generate --model "$OUT/tiny-llama" --tokens "1 450 4996 17354" --max-new-tokens 16 --ignore-eos
if [ -n "$TOK" ]; then
  echo "== generate from a text prompt (Llama-2 tokenizer), streamed =="
  $LF generate --model "$OUT/tiny-llama" --prompt "The capital of France is" --max-new-tokens 12 --ignore-eos
fi
echo "== chat-template: the llama3 built-in =="
printf '[{"role":"system","content":"You are terse."},{"role":"user","content":"Hi!"}]' > "$OUT/messages.json"
$LF chat-template --template llama3 --messages "$OUT/messages.json" --add-generation-prompt; echo
echo "== demo done =="
