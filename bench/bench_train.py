#!/usr/bin/env python3
"""bench_train.py - CPU QLoRA training throughput and peak memory on a ~100M-parameter Llama (issue 5, point 11).

What it does, in one run:
  1. makes (once) a 100,092,672-parameter Llama with `loraforge make-tiny`: hidden 768, 12 layers, 12 heads,
     4 KV heads (head dim 64), intermediate 2048, vocab 32000, tied embeddings, bf16 weights;
  2. writes (once) a pre-tokenized dataset of random token rows of exactly --seq tokens (labels = input_ids);
  3. trains `loraforge train` with quantization_bit 4 (NF4, double quant), LoRA r=16 alpha=32 on all seven
     projections, cutoff_len = --seq, no packing, batch --batch, --steps optimizer steps, logging every step, with
     and without gradient checkpointing, each as its own child process; peak RSS from wait4() of that child;
  4. tokens/s from trainer_log.jsonl with step 1 skipped as warm-up:
     (steps 2..N tokens) / (elapsed at step N - elapsed at step 1);
  5. measures the f32 matmul rate of the model's shapes (T = --seq rows) with bench_train_ops (F32 weights, our
     backend's matmul_forward), before and after the training runs, and takes the better of the two per shape;
     the model's rate is the FLOP-weighted harmonic mean over its matmuls (q,o: 768->768; k,v: 768->256;
     gate,up: 768->2048; down: 2048->768; lm_head: 768->32000);
  6. counts FLOPs per token as 4N (N = base parameters: forward 2N + input gradients 2N; with tied embeddings the
     embedding table is counted once, as the lm_head matmul); not counted: attention scores (q.k, p.v and their
     gradients), LoRA products (forward, input and weight gradients), the recomputed forward of gradient
     checkpointing, norms/RoPE/SwiGLU/softmax/AdamW.
Prints one JSON line per measurement and a Markdown table at the end.

Usage: python3 bench/bench_train.py [--build BUILD] [--workdir DIR] [--steps 6] [--batch 1] [--threads 0]
  BUILD must hold `loraforge` and `bench_train_ops` (make -C BUILD loraforge bench_train_ops).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

HIDDEN, LAYERS, HEADS, KV_HEADS, INTER, VOCAB = 768, 12, 12, 4, 2048, 32000
HEAD_DIM = HIDDEN // HEADS
RANK, ALPHA = 16, 32


def model_params():
    """Parameter count of the make-tiny model above (tied embeddings), and the per-token matmul shapes."""
    kv = KV_HEADS * HEAD_DIM
    per_layer = 2 * HIDDEN * HIDDEN + 2 * HIDDEN * kv + 3 * HIDDEN * INTER + 2 * HIDDEN  # + 2 RMSNorm weights
    n = LAYERS * per_layer + VOCAB * HIDDEN + HIDDEN  # + embedding (= lm_head) + final norm
    # (C, OC, uses per token): every matmul the 4N count covers
    shapes = [(HIDDEN, HIDDEN, 2 * LAYERS), (HIDDEN, kv, 2 * LAYERS), (HIDDEN, INTER, 2 * LAYERS),
              (INTER, HIDDEN, LAYERS), (HIDDEN, VOCAB, 1)]
    return n, shapes


def extra_flops_per_token(seq):
    """FLOPs per token the 4N count leaves out (estimates): causal attention (forward q.k + p.v = 4*D per
    (query, key, head) pair, backward 8*D), LoRA (forward 2r(C+OC), input grad 2r(C+OC), weight grads 2r(C+OC)),
    and the forward recomputed by gradient checkpointing (2 * decoder-linear parameters + attention forward)."""
    kv = KV_HEADS * HEAD_DIM
    pairs_per_token = (seq + 1) / 2.0
    attn_fwd = 4.0 * HEAD_DIM * HEADS * pairs_per_token * LAYERS
    attn = attn_fwd * 3.0  # forward + backward (8D)
    lora_io = 2 * (HIDDEN + HIDDEN) + 2 * (HIDDEN + kv) + 2 * (HIDDEN + INTER) + (INTER + HIDDEN)
    lora = 6.0 * RANK * lora_io * LAYERS
    lin = LAYERS * (2 * HIDDEN * HIDDEN + 2 * HIDDEN * kv + 3 * HIDDEN * INTER)
    recompute = 2.0 * lin + attn_fwd
    return attn, lora, recompute


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kw):
    log("+ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, **kw)


def make_model(lf, path):
    if os.path.exists(os.path.join(path, "config.json")):
        return
    run([lf, "make-tiny", "--arch", "llama", "--out", path, "--hidden", str(HIDDEN), "--layers", str(LAYERS),
         "--heads", str(HEADS), "--kv-heads", str(KV_HEADS), "--intermediate", str(INTER), "--vocab", str(VOCAB),
         "--tie-embeddings", "--dtype", "bf16", "--seed", "1", "--max-pos", "2048"], stdout=subprocess.DEVNULL)


def make_data(path, seq, rows):
    """Pre-tokenized rows of exactly `seq` random ids (labels = input_ids: loss on every token)."""
    name = "tok%d" % seq
    f = os.path.join(path, name + ".jsonl")
    if not os.path.exists(f):
        import random
        rng = random.Random(0)
        os.makedirs(path, exist_ok=True)
        with open(f + ".tmp", "w") as fh:
            for _ in range(rows):
                fh.write(json.dumps({"input_ids": [rng.randrange(3, VOCAB) for _ in range(seq)]}) + "\n")
        os.replace(f + ".tmp", f)
        with open(os.path.join(path, "dataset_info.json"), "w") as fh:
            json.dump({name: {"file_name": name + ".jsonl", "formatting": "tokenized"}}, fh)
    return name


def train(lf, model, data_dir, dataset, out, seq, batch, steps, threads, ckpt):
    """One training child; returns (tokens/s after warm-up, per-step tokens/s list, peak RSS bytes, wall s,
    CPU s of the child, workspace MiB)."""
    cmd = [lf, "train", "--model_name_or_path", model, "--output_dir", out, "--overwrite_output_dir", "true",
           "--dataset", dataset, "--dataset_dir", data_dir, "--quantization_bit", "4", "--lora_target", "all",
           "--lora_rank", str(RANK), "--lora_alpha", str(ALPHA), "--lora_dropout", "0", "--cutoff_len", str(seq),
           "--packing", "false", "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps", "1",
           "--max_steps", str(steps), "--logging_steps", "1", "--save_strategy", "no", "--learning_rate", "1e-4",
           "--lr_scheduler_type", "constant", "--threads", str(threads),
           "--disable_gradient_checkpointing", "false" if ckpt else "true"]
    log("+ " + " ".join(cmd))
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)  # rusage of this child alone (ru_maxrss in KiB on Linux)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        log(text)
        raise SystemExit("bench_train: training exited with %d" % p.returncode)
    ws = re.search(r"workspace ([0-9.]+) MiB", text)
    with open(os.path.join(out, "trainer_log.jsonl")) as fh:
        entries = [json.loads(line) for line in fh if line.strip()]
    entries = [e for e in entries if "tokens_per_sec" in e]
    if len(entries) < 2:
        raise SystemExit("bench_train: need >= 2 logged steps (got %d); raise --steps" % len(entries))
    tokens_per_step = batch * seq  # every row is exactly seq tokens
    dt = entries[-1]["elapsed"] - entries[0]["elapsed"]
    tps = tokens_per_step * (len(entries) - 1) / dt
    return tps, [e["tokens_per_sec"] for e in entries], ru.ru_maxrss * 1024, wall, ru.ru_utime + ru.ru_stime, \
        float(ws.group(1)) if ws else None


def matmul_rates(ops_bin, shapes, seq, threads):
    """f32 GFLOP/s of out[seq, OC] = inp[seq, C] @ W[OC, C]^T for each shape (bench_train_ops, F32 weights),
    plus the FMA peak and the 4-bit forward/backward rates of the same shapes."""
    res = {}
    for c, oc, _ in shapes:
        cmd = [ops_bin, "--T", str(seq), "--C", str(c), "--OC", str(oc)]
        if threads:
            cmd += ["--threads", str(threads)]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
        j = json.loads(out.strip().splitlines()[-1])
        res[(c, oc)] = j
        print(json.dumps(j), flush=True)
    return res


def weighted_rate(shapes, rates, key):
    """FLOP-weighted harmonic mean: total matmul FLOPs / total time at the per-shape rates."""
    flops = sum(2.0 * c * oc * n for c, oc, n in shapes)
    secs = sum(2.0 * c * oc * n / (rates[(c, oc)][key] * 1e9) for c, oc, n in shapes)
    return flops / secs * 1e-9


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build", help="build dir with loraforge and bench_train_ops")
    ap.add_argument("--workdir", default=None, help="model, data and outputs (default BUILD/bench-train)")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1, help="sequences per optimizer step")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per run (step 1 is warm-up)")
    ap.add_argument("--threads", type=int, default=0, help="0 = all cores")
    ap.add_argument("--no-ops", action="store_true", help="skip the matmul-rate measurement")
    a = ap.parse_args()
    lf = os.path.join(a.build, "loraforge")
    ops_bin = os.path.join(a.build, "bench_train_ops")
    for b in [lf] + ([] if a.no_ops else [ops_bin]):
        if not os.access(b, os.X_OK):
            raise SystemExit("bench_train: %s not built (make -C %s loraforge bench_train_ops)" % (b, a.build))
    wd = a.workdir or os.path.join(a.build, "bench-train")
    os.makedirs(wd, exist_ok=True)
    model = os.path.join(wd, "llama-100m")
    data_dir = os.path.join(wd, "data")
    n, shapes = model_params()
    make_model(lf, model)
    with open(os.path.join(model, "config.json")) as fh:
        cfgj = json.load(fh)
    assert cfgj["hidden_size"] == HIDDEN and cfgj["num_hidden_layers"] == LAYERS, "stale model in " + model
    dataset = make_data(data_dir, a.seq, max(64, a.batch * a.steps))
    flops_tok = 4.0 * n
    attn, lora, recompute = extra_flops_per_token(a.seq)
    log("model: %d parameters (N); 4N = %.1f MFLOP/token; not counted: attention %.1f, LoRA %.1f, "
        "checkpoint recompute %.1f MFLOP/token" % (n, flops_tok / 1e6, attn / 1e6, lora / 1e6, recompute / 1e6))

    rates_before = {} if a.no_ops else matmul_rates(ops_bin, shapes, a.seq, a.threads)
    results = []
    for ckpt in (False, True):
        out = os.path.join(wd, "out-ckpt" if ckpt else "out-nockpt")
        load0 = os.getloadavg()[0]
        tps, per_step, rss, wall, cpu, ws = train(lf, model, data_dir, dataset, out, a.seq, a.batch, a.steps,
                                                  a.threads, ckpt)
        best = max(per_step[1:])
        r = {"bench": "train", "params": n, "seq": a.seq, "batch": a.batch, "steps": a.steps, "threads": a.threads,
             "lora_rank": RANK, "quantization_bit": 4, "gradient_checkpointing": ckpt, "tokens_per_sec": round(tps, 2),
             "per_step_tokens_per_sec": [round(x, 1) for x in per_step], "peak_rss_mib": round(rss / 2**20, 1),
             "best_step_tokens_per_sec": round(best, 2), "workspace_mib": ws, "wall_s": round(wall, 1),
             "cpu_s": round(cpu, 1), "loadavg_1m_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
             "model_gflops_per_token": round(flops_tok / 1e9, 4), "achieved_gflops": round(tps * flops_tok / 1e9, 2),
             "best_step_gflops": round(best * flops_tok / 1e9, 2)}
        results.append(r)
        log("%s: %.1f tokens/s, peak RSS %.0f MiB" % ("checkpointing" if ckpt else "no checkpointing", tps,
                                                      r["peak_rss_mib"]))
    rates_after = {} if a.no_ops else matmul_rates(ops_bin, shapes, a.seq, a.threads)

    summary = {"bench": "train_summary", "params": n, "flops_per_token": flops_tok,
               "uncounted_mflops_per_token": {"attention": round(attn / 1e6, 1), "lora": round(lora / 1e6, 1),
                                              "checkpoint_recompute": round(recompute / 1e6, 1)}}
    if not a.no_ops:
        best = {k: {f: max(rates_before[k][f], rates_after[k][f]) for f in rates_before[k] if
                    isinstance(rates_before[k][f], (int, float))} for k in rates_before}
        f32 = weighted_rate(shapes, best, "matmul_forward_f32_gflops")
        summary.update({
            "f32_matmul_gflops_model_shapes": round(f32, 2),
            "f32_matmul_gflops_before_after": [
                round(weighted_rate(shapes, rates_before, "matmul_forward_f32_gflops"), 2),
                round(weighted_rate(shapes, rates_after, "matmul_forward_f32_gflops"), 2)],
            # the 4-bit rates over the decoder linears only (lm_head stays bf16)
            "q4_forward_gflops_decoder_shapes": round(weighted_rate(shapes[:-1], best, "matmul_q4_forward_gflops"), 2),
            "q4_backward_gflops_decoder_shapes": round(weighted_rate(shapes[:-1], best, "matmul_q4_backward_gflops"),
                                                       2),
            "fma_peak_gflops": max(j["fma_peak_gflops"] for j in best.values()),
            "per_shape_f32_gflops": {"%dx%d" % k: v["matmul_forward_f32_gflops"] for k, v in best.items()}})
        for r in results:
            r["fraction_of_f32_matmul"] = round(r["achieved_gflops"] / f32, 3)
            r["best_step_fraction_of_f32_matmul"] = round(r["best_step_gflops"] / f32, 3)
    for r in results:
        print(json.dumps(r), flush=True)
    print(json.dumps(summary), flush=True)

    print()
    print("Llama %.1fM params (N = %d), NF4 base, LoRA r=%d all targets, seq %d, batch %d, %d steps (step 1 "
          "warm-up), %s threads" % (n / 1e6, n, RANK, a.seq, a.batch, a.steps, a.threads or "all"))
    print()
    f32 = summary.get("f32_matmul_gflops_model_shapes")
    print("| gradient checkpointing | tokens/s (steps 2..N) | best step tokens/s | 4N GFLOP/s | "
          "f32 matmul GFLOP/s, model shapes | fraction (best step) | peak RSS MiB | workspace MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print("| %s | %.1f | %.1f | %.1f | %s | %s | %.0f | %s |" % (
            "on" if r["gradient_checkpointing"] else "off", r["tokens_per_sec"], r["best_step_tokens_per_sec"],
            r["achieved_gflops"], "%.1f" % f32 if f32 else "-",
            "%.0f%% (%.0f%%)" % (100 * r["fraction_of_f32_matmul"], 100 * r["best_step_fraction_of_f32_matmul"])
            if f32 else "-", r["peak_rss_mib"], "%.1f" % r["workspace_mib"] if r["workspace_mib"] is not None else "-"))

if __name__ == "__main__":
    main()
