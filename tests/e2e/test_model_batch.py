#!/usr/bin/env python3
"""The serving forward (model/model_batch: lf_batch_forward over a paged KV pool, mixed adapters per batch)
against lf_session_forward of each sequence alone, on tiny random models made with `loraforge make-tiny`.

The checks themselves live in the C helper `batch_tool` (tests/tools/batch_tool.c, built next to loraforge):
per model it makes three random adapters (LoRA r4 on all modules, rsLoRA r8 on a subset, DoRA r2), runs
sequences through engine-like steps (chunked prefill interleaved with decodes of other sequences, segments
sorted by adapter or shuffled) and compares every returned logits row (tolerance 1e-4 relative to the row's
max |logit|: f32 with a different summation grouping, see batch_tool.c) and every greedy token; then bad input
(LF_EINVAL without touching the pool). This script covers the model variants:
  llama GQA f32, BS 4 | llama MHA bf16 with attention biases and tied embeddings, BS 1 |
  qwen2 (q/k/v biases) odd sizes with head_dim set, BS 16 | mistral sliding window 5 (prompts up to 40), BS 3 |
  llama MQA quantized to NF4 on load, BS 8 | a wider llama (C 256) with 64-row batches, BS 16.
Seed: env LF_TEST_SEED (passed on to batch_tool, one derived seed per model), else time; printed.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time

MODELS = [
    # name, make-tiny args, batch_tool args
    ("llama_gqa", ["--arch", "llama", "--heads", "4", "--kv-heads", "2"], ["--bs", "4"]),
    ("llama_mha_bf16_bias", ["--arch", "llama", "--heads", "4", "--kv-heads", "4", "--dtype", "bf16",
                             "--attention-bias", "--tie-embeddings"], ["--bs", "1", "--max-prompt", "24"]),
    ("qwen2_odd", ["--arch", "qwen2", "--hidden", "48", "--heads", "6", "--kv-heads", "2", "--head-dim", "10",
                   "--intermediate", "72", "--vocab", "301"], ["--bs", "16"]),
    ("mistral_window5", ["--arch", "mistral", "--sliding-window", "5", "--layers", "3"], ["--bs", "3"]),
    ("llama_nf4", ["--arch", "llama", "--heads", "4", "--kv-heads", "1"], ["--bs", "8", "--q4"]),
    # wider: the threaded / SIMD matmul paths, 64-row batches, longer prompts
    ("llama_wide", ["--arch", "llama", "--hidden", "256", "--heads", "8", "--kv-heads", "2", "--intermediate", "512",
                    "--vocab", "1000"], ["--bs", "16", "--max-tokens", "64", "--max-prompt", "80", "--seqs", "16"]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    seed = int(os.environ.get("LF_TEST_SEED", str(int(time.time()))))
    print(f"test_model_batch: seed {seed} (LF_TEST_SEED)")
    tool = os.path.join(os.path.dirname(os.path.abspath(a.bin)), "batch_tool")
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    passed = failed = 0
    if not os.path.exists(tool):
        print(f"FAIL: {tool} not found (build the batch_tool target)")
        print("0 passed, 1 failed")
        return 1
    for i, (name, tiny, targs) in enumerate(MODELS):
        d = os.path.join(a.workdir, name)
        p = subprocess.run([a.bin, "make-tiny", "--out", d, "--seed", str((seed + i) % 100000)] + tiny,
                           capture_output=True, text=True)
        if p.returncode != 0:
            print(f"FAIL {name}: make-tiny: {p.stderr.strip()}")
            failed += 1
            continue
        env = dict(os.environ, LF_TEST_SEED=str(seed * 7 + i))
        t0 = time.time()
        p = subprocess.run([tool, d] + targs, capture_output=True, text=True, env=env)
        dt = time.time() - t0
        out = p.stdout + p.stderr
        m = re.search(r"batch_tool: (\d+) passed, (\d+) failed", p.stdout)
        summary = [l for l in p.stdout.splitlines() if "steps" in l]
        if p.returncode == 0 and m and int(m.group(2)) == 0 and int(m.group(1)) > 0:
            passed += 1
            print(f"ok   {name} ({dt:.1f} s): {m.group(1)} checks; {summary[0] if summary else ''}")
        else:
            failed += 1
            print(f"FAIL {name} (exit {p.returncode}, {dt:.1f} s):")
            print("\n".join("    " + l for l in out.strip().splitlines()[-40:]))
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
