#!/usr/bin/env python3
"""`loraforge train` against PEFT + torch AdamW, adapters both ways, merge, and exact resume (issue 5 checks b-e).

(b) 20 optimizer steps from the same initial adapter (made by peft) on the same data: per-step loss trajectory
    vs transformers + peft + torch.optim.AdamW + transformers' linear schedule + clip_grad_norm_, within 1e-3
    relative (f32 both sides; our per-op sums differ in order, and the error compounds over 20 updates).
    The batch is the whole dataset (full-batch steps) so that the data order cannot matter; a second run with
    gradient accumulation (2 x 2) over equal-length rows must give the same trajectory.
(c) peft loads the adapter we wrote (PeftModel.from_pretrained) and its logits equal ours (`score --adapter`)
    within 1e-4; we load an adapter peft saved and reproduce its logits.
(d) `merge --dtype f32` vs the unmerged adapter within 1e-4, and transformers loads the merged directory.
(e) kill -9 during training, resume_from_checkpoint: the remaining per-step losses equal an uninterrupted run
    exactly (same machine, same threads); SIGTERM: a checkpoint at the current step and exit 0.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

try:
    import numpy as np
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, get_scheduler
except Exception as e:
    print(f"FAIL: cannot import the oracle packages: {e}")
    print("0 passed, 1 failed")
    sys.exit(1)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TRAJ_TOL = 1e-3
LOGIT_TOL = 1e-4
SHARED = os.environ.get("LF_SHARED", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared"))


def run(cmd, ok=(0,), **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode not in ok:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-800:]}")
    return p


def losses(out):
    return [(e["step"], e["loss"]) for e in map(json.loads, open(os.path.join(out, "trainer_log.jsonl"))) if "loss" in e]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    seed = int(os.environ.get("LF_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
    print(f"seed {seed} (set LF_TEST_SEED to reproduce)")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    w = a.workdir
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    passed = failed = 0

    def check(ok, msg):
        nonlocal passed, failed
        passed += bool(ok)
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {msg}")

    base = os.path.join(w, "base")
    run([a.bin, "make-tiny", "--arch", "llama", "--out", base, "--hidden", "64", "--layers", "2", "--heads", "4",
         "--kv-heads", "2", "--intermediate", "128", "--vocab", "256", "--seed", str(int(rng.integers(1 << 30))),
         "--init-std", "0.08"])
    V = 256
    # pre-tokenized rows of equal length and equal label count (prompt masked)
    rows = []
    for _ in range(4):
        ids = rng.integers(3, V, size=24).tolist()
        labels = [-100] * 8 + ids[8:]
        rows.append({"input_ids": ids, "attention_mask": [1] * 24, "labels": labels})
    data = os.path.join(w, "data.jsonl")
    with open(data, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    # the initial adapter, from peft
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.05)
    init = os.path.join(w, "init-adapter")
    pm.save_pretrained(init)
    LR, STEPS, WARM, WD = 2e-3, 20, 3, 0.01
    common = ["--model_name_or_path", base, "--adapter_name_or_path", init, "--dataset", data, "--dataset_dir", w,
              "--max_steps", str(STEPS), "--learning_rate", str(LR), "--lr_scheduler_type", "linear", "--warmup_steps",
              str(WARM), "--weight_decay", str(WD), "--max_grad_norm", "1.0", "--logging_steps", "1", "--save_steps",
              "1000", "--cutoff_len", "64", "--seed", "7", "--threads", "2"]

    # (b) torch reference trajectory (full batch)
    pm.train()
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=LR, weight_decay=WD, betas=(0.9, 0.999), eps=1e-8)
    sch = get_scheduler("linear", opt, num_warmup_steps=WARM, num_training_steps=STEPS)
    ids = torch.tensor([r["input_ids"] for r in rows])
    lab = torch.tensor([r["labels"] for r in rows])
    ref = []
    for _ in range(STEPS):
        opt.zero_grad()
        logits = pm(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), lab[:, 1:].reshape(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in pm.parameters() if p.requires_grad], 1.0)
        opt.step()
        sch.step()
        ref.append(float(loss))
    for tag, extra in (("full-batch", ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1"]),
                       ("2x2-accumulation", ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2"])):
        out = os.path.join(w, "out-" + tag)
        try:
            run([a.bin, "train"] + common + ["--output_dir", out] + extra)
            ours = [l for _, l in losses(out)]
            rel = max(abs(o - r) / abs(r) for o, r in zip(ours, ref)) if len(ours) == STEPS else float("inf")
            check(rel <= TRAJ_TOL, f"(b) {tag}: {len(ours)} steps, loss {ours[0]:.4f} -> {ours[-1]:.4f} (torch "
                                   f"{ref[0]:.4f} -> {ref[-1]:.4f}), max rel diff {rel:.2e} (tol {TRAJ_TOL:g})")
        except Exception as e:
            check(False, f"(b) {tag}: {e}")

    # (c) peft loads our adapter; we load peft's
    out = os.path.join(w, "out-full-batch")
    toks = rng.integers(0, V, size=20).tolist()
    tstr = " ".join(map(str, toks))
    try:
        for tag, adir in (("ours->peft", out), ("peft->ours", init)):
            npy = os.path.join(w, f"logits-{tag.replace('>', '')}.npy")
            run([a.bin, "score", "--model", base, "--adapter", adir, "--tokens", tstr, "--out", npy])
            mine = np.load(npy)
            bm = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
            pl = PeftModel.from_pretrained(bm, adir)
            pl.eval()
            with torch.no_grad():
                theirs = pl(torch.tensor([toks])).logits[0].numpy()
            rel = float(np.max(np.abs(mine - theirs)) / np.max(np.abs(theirs)))
            check(rel <= LOGIT_TOL, f"(c) {tag}: logits max|d|/max|ref| {rel:.2e} (tol {LOGIT_TOL:g})")
    except Exception as e:
        check(False, f"(c) {e}")

    # (d) merge
    try:
        merged = os.path.join(w, "merged")
        run([a.bin, "merge", "--model", base, "--adapter", out, "--out", merged, "--dtype", "f32"])
        run([a.bin, "score", "--model", merged, "--tokens", tstr, "--out", os.path.join(w, "m.npy")])
        run([a.bin, "score", "--model", base, "--adapter", out, "--tokens", tstr, "--out", os.path.join(w, "u.npy")])
        mm, uu = np.load(os.path.join(w, "m.npy")), np.load(os.path.join(w, "u.npy"))
        rel = float(np.max(np.abs(mm - uu)) / np.max(np.abs(uu)))
        check(rel <= LOGIT_TOL, f"(d) merged vs unmerged: max|d|/max|ref| {rel:.2e} (tol {LOGIT_TOL:g})")
        tm = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32, attn_implementation="eager")
        with torch.no_grad():
            tl = tm(torch.tensor([toks])).logits[0].numpy()
        rel = float(np.max(np.abs(mm - tl)) / np.max(np.abs(tl)))
        check(rel <= LOGIT_TOL, f"(d) transformers loads the merged dir: max|d|/max|ref| {rel:.2e}")
        p = run([a.bin, "merge", "--model", base, "--adapter", out, "--out", merged, "--dtype", "f8"], ok=(2,))
        check("f8" in p.stderr, "(d) merge --dtype f8 refused")
    except Exception as e:
        check(False, f"(d) {e}")

    # (e) kill -9 and resume: 8 rows, batch 2, dropout on, checkpoints every 2 steps
    more = os.path.join(w, "more.jsonl")
    with open(more, "w") as f:
        for _ in range(8):
            ids = rng.integers(3, V, size=int(rng.integers(12, 30))).tolist()
            f.write(json.dumps({"input_ids": ids, "labels": [-100] * 4 + ids[4:]}) + "\n")
    rcommon = ["--model_name_or_path", base, "--dataset", more, "--dataset_dir", w, "--max_steps", "14",
               "--per_device_train_batch_size", "2", "--learning_rate", "3e-3", "--lora_target", "all",
               "--lora_dropout", "0.1", "--logging_steps", "1", "--save_steps", "2", "--threads", "2", "--seed", "11",
               "--quantization_bit", "4"]
    try:
        full = os.path.join(w, "resume-full")
        run([a.bin, "train"] + rcommon + ["--output_dir", full])
        want = losses(full)
        cut = os.path.join(w, "resume-cut")
        proc = subprocess.Popen([a.bin, "train"] + rcommon + ["--output_dir", cut], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        t0 = time.time()
        while not os.path.isdir(os.path.join(cut, "checkpoint-6")) and proc.poll() is None and time.time() - t0 < 120:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        cks = sorted(int(d.split("-")[1]) for d in os.listdir(cut) if d.startswith("checkpoint-") and d.split("-")[1].isdigit())
        killed_early = bool(cks) and cks[-1] < 14
        run([a.bin, "train"] + rcommon + ["--output_dir", cut, "--resume_from_checkpoint", "true"])
        got = losses(cut)
        tail_w = [l for s, l in want if s > cks[-1]] if cks else []
        tail_g = [l for s, l in got if s > cks[-1]] if cks else []
        check(killed_early and tail_g == tail_w and len(tail_w) == 14 - cks[-1],
              f"(e) kill -9 after checkpoint-{cks[-1] if cks else '?'}: resumed losses for {len(tail_g)} steps "
              f"{'equal' if tail_g == tail_w else 'DIFFER from'} the uninterrupted run")
        # SIGTERM: finish the step, checkpoint, exit 0
        term = os.path.join(w, "term")
        proc = subprocess.Popen([a.bin, "train"] + rcommon + ["--output_dir", term, "--max_steps", "400"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        t0 = time.time()
        while not os.path.isdir(os.path.join(term, "checkpoint-2")) and proc.poll() is None and time.time() - t0 < 120:
            time.sleep(0.01)
        t1 = time.time()
        proc.send_signal(signal.SIGTERM)
        outp, _ = proc.communicate(timeout=60)
        dt = time.time() - t1
        cks = [d for d in os.listdir(term) if d.startswith("checkpoint-")]
        check(proc.returncode == 0 and "stopping at step" in outp and len(cks) >= 2 and dt < 10,
              f"(e) SIGTERM: exit {proc.returncode} after {dt:.1f} s, checkpoints {sorted(cks)}")
    except Exception as e:
        check(False, f"(e) {e}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
