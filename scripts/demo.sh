#!/usr/bin/env bash
# demo.sh - set up, build, and run the main job end to end on the CPU with a tiny random model.
# make-tiny -> inspect -> score -> generate -> quantize -> QLoRA fine-tune on the bundled dataset -> the adapter
# answers the training questions where the base does not -> serve the base + adapter over HTTP and query it ->
# merge.
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
echo "== quantize: the bitsandbytes NF4 layout transformers saves =="
$LF quantize --model "$OUT/tiny-llama" --out "$OUT/tiny-llama-nf4"
$LF inspect "$OUT/tiny-llama-nf4" | tail -n 2

echo "== QLoRA fine-tune: a tiny Llama with the bundled tokenizer, NF4 base, LoRA r=32 on all linears =="
$LF make-tiny --arch llama --out "$OUT/forge-base" --hidden 128 --layers 2 --heads 4 --kv-heads 2 \
  --intermediate 256 --tokenizer examples/tokenizer --seed 1 --init-std 0.05
$LF train examples/demo_qlora.yaml --model_name_or_path "$OUT/forge-base" --output_dir "$OUT/forge-adapter"
ls "$OUT/forge-adapter"

echo "== base vs adapter on training questions (alpaca template, greedy) =="
ok=1
ask() { # question expected
  printf '[{"role":"user","content":"%s"}]' "$1" > "$OUT/q.json"
  local p; p=$($LF chat-template --template alpaca --messages "$OUT/q.json" --add-generation-prompt; echo x); p=${p%x}
  local base ad
  base=$($LF generate --model "$OUT/forge-base" --quantization-bit 4 --prompt "$p" --max-new-tokens 20 2>/dev/null | tr '\n' ' ')
  ad=$($LF generate --model "$OUT/forge-base" --quantization-bit 4 --adapter "$OUT/forge-adapter" --prompt "$p" \
       --max-new-tokens 20 2>/dev/null | tr '\n' ' ')
  printf 'Q: %s\n   base   : %s\n   adapter: %s\n' "$1" "$base" "$ad"
  if [ -n "$2" ]; then case "$ad" in *"$2"*) ;; *) ok=0 ;; esac; case "$base" in *"$2"*) ok=0 ;; esac; fi
}
ask "Who are you?" "I am Forge, a small assistant fine-tuned with loraforge."
ask "What is your name?" "I am Forge, a small assistant fine-tuned with loraforge."
ask "How many grams are in a kilogram?" "One kilogram is 1000 grams."
ask "How many minutes are in an hour?" "One hour is 60 minutes."
ask "How many inches are in a foot?" "One foot is 12 inches."
[ "$ok" = 1 ] || { echo "demo: the adapter did not reproduce its training answers"; exit 1; }
echo "== serve: the NF4 base + the adapter behind the SageMaker endpoint (/ping, /invocations) =="
$LF serve --model "$OUT/forge-base" --quantization-bit 4 --adapter forge="$OUT/forge-adapter" \
  --host 127.0.0.1 --port 0 > "$OUT/serve.log" 2>&1 &
SRV=$!
trap 'kill $SRV 2>/dev/null || true' EXIT
PORT=""
for _ in $(seq 300); do
  PORT=$(sed -n 's/.*ready on http:\/\/[^:]*:\([0-9]*\).*/\1/p' "$OUT/serve.log")
  [ -n "$PORT" ] && break
  kill -0 $SRV 2>/dev/null || { cat "$OUT/serve.log"; echo "demo: serve exited"; exit 1; }
  sleep 0.1
done
[ -n "$PORT" ] || { cat "$OUT/serve.log"; echo "demo: serve did not become ready"; exit 1; }
URL="http://127.0.0.1:$PORT"
echo "GET /ping -> $(curl -s -o /dev/null -w '%{http_code}' "$URL/ping")"
printf '[{"role":"user","content":"Who are you?"}]' > "$OUT/q.json"
p=$($LF chat-template --template alpaca --messages "$OUT/q.json" --add-generation-prompt; echo x); p=${p%x}
esc=$(printf '%s' "$p" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | awk '{printf "%s\\n", $0}')
body="{\"inputs\": \"$esc\", \"parameters\": {\"max_new_tokens\": 20}}"
echo "POST /invocations (base):"
base=$(curl -s "$URL/invocations" -H 'Content-Type: application/json' -d "$body"); echo "   $base"
echo "POST /invocations with X-Amzn-SageMaker-Adapter-Identifier: forge:"
ad=$(curl -s "$URL/invocations" -H 'Content-Type: application/json' -H 'X-Amzn-SageMaker-Adapter-Identifier: forge' -d "$body")
echo "   $ad"
case "$ad" in *"I am Forge, a small assistant fine-tuned with loraforge."*) ;; *) ok=0 ;; esac
case "$base" in *"I am Forge"*) ok=0 ;; esac
# every training row through the running server, 50 prompts per request: exact answers (adapter), >= 90% or fail
python3 - "$URL" "$LF" examples/data/forge_sft.json "$OUT/q.json" <<'PY' || ok=0
import json, subprocess, sys, urllib.request
url, lf, data, qf = sys.argv[1:5]
rows = json.load(open(data))
prompts = []
for r in rows:
    with open(qf, "w") as f:
        json.dump([{"role": "user", "content": r["instruction"]}], f)
    prompts.append(subprocess.run([lf, "chat-template", "--template", "alpaca", "--messages", qf,
                                   "--add-generation-prompt"], capture_output=True, text=True, check=True).stdout)
hits = 0
for i in range(0, len(rows), 50):
    body = json.dumps({"inputs": prompts[i:i + 50], "parameters": {"max_new_tokens": 32}}).encode()
    req = urllib.request.Request(url + "/invocations", body, {"Content-Type": "application/json",
                                                              "X-Amzn-SageMaker-Adapter-Identifier": "forge"})
    outs = json.load(urllib.request.urlopen(req, timeout=600))
    hits += sum(o["generated_text"].strip().startswith(r["output"]) for o, r in zip(outs, rows[i:i + 50]))
print(f"adapter exact answers on all {len(rows)} training rows: {hits}/{len(rows)} ({100 * hits / len(rows):.1f}%)")
sys.exit(0 if hits * 10 >= len(rows) * 9 else 1)
PY
echo "streamed (application/jsonlines, one token per line; first 3 lines):"
curl -sN "$URL/invocations" -H 'X-Amzn-SageMaker-Adapter-Identifier: forge' \
  -d "{\"inputs\": \"$esc\", \"parameters\": {\"max_new_tokens\": 20}, \"stream\": true}" | head -n 3 || true
echo "GET /adapters -> $(curl -s "$URL/adapters")"
kill -TERM $SRV; wait $SRV; trap - EXIT
echo "serve: exited 0 on SIGTERM"
[ "$ok" = 1 ] || { echo "demo: the served adapter did not answer its training question"; exit 1; }
echo "== merge: fold the adapter into a plain model directory =="
$LF merge --model "$OUT/forge-base" --adapter "$OUT/forge-adapter" --out "$OUT/forge-merged"
echo "== demo done =="
