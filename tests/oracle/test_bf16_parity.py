#!/usr/bin/env python3
"""Oracle: loraforge `score --compute-dtype bf16` logits vs Hugging Face transformers with torch_dtype=bfloat16.

Models are bf16 checkpoints from `loraforge make-tiny --dtype bf16`, so both sides use the same weights.
bf16 compute has no single right answer: every op rounds its output to 8 significant bits, and where each
rounding happens differs between implementations (transformers rounds after every torch op, e.g. RMSNorm's
`x * rsqrt` and `weight * x` separately; loraforge once per op, accumulating in f32 or wider). So the
tolerance is written against transformers' own bf16 error, measured in the same run on the same input:
  e_hf   = max|hf_bf16 - hf_f32| / max|hf_f32|          (transformers bf16 vs the f32 truth)
  ours must satisfy  max|ours - hf_f32| / max|hf_f32| <= 2 e_hf + 2e-3   (no worse than twice theirs)
               and   max|ours - hf_bf16| / max|hf_f32| <= 3 e_hf + 2e-3  (the triangle bound of the above)
The 2e-3 floor is about half a bf16 ulp of the largest logit (2^-9 relative), for the case where e_hf
happens to be tiny. A bug (a wrong mask, RoPE pairing or norm) moves logits by 1e-1 or more and fails both.
It also checks that bf16 really ran: ours must differ from the f32 logits (e > 1e-5), and that
`--compute-dtype f16` and `generate --compute-dtype bf16` run and stay close to f32 (f16 by the same rule,
with the floor at 2^-12). Fails (never skips) when transformers cannot be imported.
"""
import argparse
import os
import random
import subprocess
import sys

try:
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
except Exception as e:  # the oracle must run in CI
    print(f"FAIL: cannot import the oracle packages (numpy, torch, transformers): {e}")
    print("0 passed, 1 failed")
    sys.exit(1)

CASES = [
    ("llama-bf16-gqa-bias", "llama", "--hidden 96 --heads 6 --kv-heads 2 --intermediate 160 --layers 3 --vocab 1000 --dtype bf16 --attention-bias", 33),
    ("mistral-bf16-window8-headdim48", "mistral", "--hidden 128 --heads 4 --kv-heads 2 --head-dim 48 --intermediate 200 --layers 2 --vocab 500 --dtype bf16 --sliding-window 8", 30),
    ("qwen2-bf16-tied", "qwen2", "--hidden 128 --heads 8 --kv-heads 2 --intermediate 256 --layers 3 --vocab 1500 --dtype bf16 --tie-embeddings", 21),
]


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    seed = int(os.environ.get("LF_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
    print(f"seed {seed} (set LF_TEST_SEED to reproduce); transformers {transformers.__version__}, torch {torch.__version__}")
    rng = np.random.default_rng(seed)
    os.makedirs(args.workdir, exist_ok=True)
    passed = failed = 0

    def check(ok, msg):
        nonlocal passed, failed
        print(f"{'PASS' if ok else 'FAIL'} {msg}")
        passed += bool(ok)
        failed += not ok

    for name, arch, flags, T in CASES:
        d = os.path.join(args.workdir, name)
        try:
            run([args.bin, "make-tiny", "--arch", arch, "--out", d, "--seed", str(int(rng.integers(1 << 31))),
                 "--init-std", "0.05"] + flags.split())
            m32 = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
            m16 = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, attn_implementation="eager").eval()
            V = m32.config.vocab_size
            ids = rng.integers(0, V, size=T).tolist()
            with torch.no_grad():
                ref32 = m32(torch.tensor([ids])).logits[0].float().numpy()
                ref16 = m16(torch.tensor([ids])).logits[0].float().numpy()
            scale = float(np.max(np.abs(ref32)))
            e_hf = float(np.max(np.abs(ref16 - ref32))) / scale
            res = {}
            for dt in ("bf16", "f16"):
                out = os.path.join(d, f"logits-{dt}.npy")
                run([args.bin, "score", "--model", d, "--compute-dtype", dt, "--tokens", " ".join(map(str, ids)),
                     "--out", out])
                res[dt] = np.load(out)
                assert res[dt].shape == ref32.shape, f"shape {res[dt].shape} vs {ref32.shape}"
            e32 = float(np.max(np.abs(res["bf16"] - ref32))) / scale
            e16 = float(np.max(np.abs(res["bf16"] - ref16))) / scale
            check(e32 <= 2 * e_hf + 2e-3, f"{name} bf16 vs f32: {e32:.2e} (transformers bf16: {e_hf:.2e}; tol {2 * e_hf + 2e-3:.2e})")
            check(e16 <= 3 * e_hf + 2e-3, f"{name} bf16 vs transformers bf16: {e16:.2e} (tol {3 * e_hf + 2e-3:.2e})")
            check(e32 > 1e-5, f"{name} bf16 compute is in effect (differs from f32 by {e32:.2e} > 1e-5)")
            # f16: 3 more mantissa bits than bf16, so its error should be about 8x smaller than bf16's
            ef = float(np.max(np.abs(res["f16"] - ref32))) / scale
            check(ef <= 2 * e_hf / 8 + 2.5e-4 and ef > 0, f"{name} f16 vs f32: {ef:.2e} (tol {2 * e_hf / 8 + 2.5e-4:.2e})")
            # generate in bf16 runs through the KV cache (chunked prefill + decode) and returns the tokens asked for
            got = run([args.bin, "generate", "--model", d, "--compute-dtype", "bf16", "--tokens",
                       " ".join(map(str, ids[:5])), "--max-new-tokens", "6", "--ignore-eos"]).split()
            check(len(got) == 6 and all(0 <= int(x) < V for x in got), f"{name} generate --compute-dtype bf16: {got}")
        except Exception as e:
            check(False, f"{name}: {e}")
    # bad values are usage errors naming the flag
    p = subprocess.run([args.bin, "score", "--model", args.workdir, "--compute-dtype", "int8", "--tokens", "1",
                        "--out", "/dev/null"], capture_output=True, text=True)
    check(p.returncode == 2 and "--compute-dtype" in p.stderr, f"--compute-dtype int8: exit {p.returncode}, {p.stderr.strip()!r}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
