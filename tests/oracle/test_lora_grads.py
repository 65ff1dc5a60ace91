#!/usr/bin/env python3
"""LoRA / rsLoRA / DoRA loss and gradients vs torch autograd through transformers + peft (issue 5, check a).

For make-tiny models of each architecture (and a 4-bit base, dequantized for torch with the NumPy
re-implementation of bitsandbytes), peft builds an adapter on all seven linears with random non-zero A, B (and
DoRA magnitude); both sides take the same packed batch: two rows with restarting positions, prompt tokens
masked to -100. Torch runs the model with a block-diagonal causal 4D mask and position_ids, sums the
cross-entropy over the unmasked targets, scales it and backpropagates. Our train_tool runs
lf_trainer_model_step on the same inputs. Checked: the loss sum (relative 1e-5) and every LoRA gradient tensor
(max|ours - torch| / max|torch| <= 1e-4: both f32, different summation order over T and the vocabulary).
"""
import argparse
import importlib.util
import os
import random
import subprocess
import sys

try:
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
except Exception as e:
    print(f"FAIL: cannot import the oracle packages: {e}")
    print("0 passed, 1 failed")
    sys.exit(1)

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("qnp", os.path.join(HERE, "test_quant_numpy.py"))
qnp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(qnp)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GRAD_TOL = 1e-4
LOSS_TOL = 1e-5
# name, arch, make-tiny flags, r, alpha, rslora, dora, 4-bit base, checkpointing
CASES = [
    ("llama-lora", "llama", "--hidden 64 --heads 4 --kv-heads 2 --intermediate 128 --layers 2 --vocab 300", 8, 16, False, False, False, False),
    ("mistral-lora-ckpt", "mistral", "--hidden 64 --heads 4 --kv-heads 1 --intermediate 96 --layers 2 --vocab 280", 4, 8, False, False, False, True),
    ("qwen2-lora", "qwen2", "--hidden 48 --heads 4 --kv-heads 2 --intermediate 112 --layers 2 --vocab 320", 8, 8, False, False, False, False),
    ("llama-rslora", "llama", "--hidden 64 --heads 4 --kv-heads 4 --intermediate 128 --layers 2 --vocab 256", 16, 32, True, False, False, False),
    ("qwen2-dora", "qwen2", "--hidden 64 --heads 4 --kv-heads 2 --intermediate 96 --layers 2 --vocab 256", 4, 8, False, True, False, False),
    ("llama-qlora-nf4", "llama", "--hidden 64 --heads 4 --kv-heads 2 --intermediate 128 --layers 2 --vocab 300", 8, 16, False, False, True, False),
    ("mistral-qlora-dora-ckpt", "mistral", "--hidden 64 --heads 4 --kv-heads 2 --intermediate 128 --layers 2 --vocab 300", 4, 4, False, True, True, True),
]


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()}")
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    seed = int(os.environ.get("LF_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
    print(f"seed {seed} (set LF_TEST_SEED to reproduce)")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    os.makedirs(a.workdir, exist_ok=True)
    tool = os.path.join(os.path.dirname(os.path.abspath(a.bin)), "train_tool")
    dmap = qnp.dynamic_map_numpy()
    passed = failed = 0

    def check(ok, msg):
        nonlocal passed, failed
        passed += bool(ok)
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {msg}")

    for name, arch, flags, r, alpha, rslora, dora, q4, ckpt in CASES:
        try:
            d = os.path.join(a.workdir, name)
            run([a.bin, "make-tiny", "--arch", arch, "--out", d, "--seed", str(int(rng.integers(1 << 31))),
                 "--init-std", "0.08"] + flags.split())
            model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
            if q4:  # the base torch sees is the dequantized NF4 base (the codes are bit-exact with ours)
                sd = model.state_dict()
                for k in list(sd):
                    if k.endswith("_proj.weight") and ".layers." in k:
                        w = sd[k].numpy()
                        sd[k] = torch.from_numpy(qnp.reference(w.reshape(-1), 64, "nf4", True, dmap)["dequant"].reshape(w.shape).copy())
                model.load_state_dict(sd)
            cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, lora_dropout=0.0, use_rslora=rslora,
                             use_dora=dora, task_type="CAUSAL_LM")
            pm = get_peft_model(model, cfg)
            with torch.no_grad():
                for n_, p in pm.named_parameters():
                    if "lora_A" in n_ or "lora_B" in n_:
                        p.copy_(torch.randn_like(p) * 0.1)
                    elif "lora_magnitude_vector" in n_:
                        p.mul_(1.0 + 0.1 * torch.randn_like(p))
            adir = d + "-adapter"
            pm.save_pretrained(adir)
            V = model.config.vocab_size
            # a packed batch: rows of 19 and 14 tokens, prompts of 6 and 5 tokens masked
            rows = [(19, 6), (14, 5)]
            ids, pos, tg = [], [], []
            for n_tok, n_prompt in rows:
                row = rng.integers(0, V, size=n_tok).tolist()
                ids += row
                pos += list(range(n_tok))
                tg += [-100 if i + 1 < n_prompt else row[i + 1] for i in range(n_tok - 1)] + [-100]
            T = len(ids)
            dscale = 1.0 / sum(t != -100 for t in tg)
            out = os.path.join(a.workdir, name + "-grads.safetensors")
            cmd = [tool, "--model", d, "--adapter", adir, "--tokens", " ".join(map(str, ids)), "--targets",
                   " ".join(map(str, tg)), "--pos", " ".join(map(str, pos)), "--dscale", repr(dscale), "--out", out]
            if q4:
                cmd += ["--quantization-bit", "4"]
            if ckpt:
                cmd += ["--checkpointing"]
            run(cmd)
            ours = load_file(out)
            # torch: block-diagonal causal mask
            mask = torch.full((T, T), torch.finfo(torch.float32).min)
            s = 0
            for n_tok, _ in rows:
                for i in range(n_tok):
                    mask[s + i, s:s + i + 1] = 0.0
                s += n_tok
            pm.train()
            pm.zero_grad()
            logits = pm(input_ids=torch.tensor([ids]), attention_mask=mask[None, None],
                        position_ids=torch.tensor([pos])).logits[0]
            tgt = torch.tensor(tg)
            loss_sum = torch.nn.functional.cross_entropy(logits, tgt, ignore_index=-100, reduction="sum")
            (loss_sum * dscale).backward()
            lref = float(loss_sum)
            lours = float(ours["loss_sum"][0])
            check(abs(lours - lref) <= LOSS_TOL * abs(lref), f"{name}: loss sum ours {lours:.6f} torch {lref:.6f}")
            worst, bad, n = 0.0, [], 0
            for n_, p in pm.named_parameters():
                if not p.requires_grad:
                    continue
                key = n_.replace(".default", "").replace("lora_magnitude_vector.weight", "lora_magnitude_vector")
                if key not in ours:
                    bad.append(f"missing {key}")
                    continue
                g = p.grad.detach().numpy()
                o = ours[key].numpy()
                rel = float(np.max(np.abs(o - g)) / max(np.max(np.abs(g)), 1e-30))
                worst = max(worst, rel)
                n += 1
                if rel > GRAD_TOL:
                    bad.append(f"{key} {rel:.2e}")
            check(not bad and n > 0, f"{name}: {n} LoRA gradient tensors vs torch autograd, worst max|d|/max|ref| "
                                     f"{worst:.2e} (tol {GRAD_TOL:g}){': ' + ', '.join(bad[:4]) if bad else ''}")
        except Exception as e:
            check(False, f"{name}: {e}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
