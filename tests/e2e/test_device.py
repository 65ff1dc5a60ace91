#!/usr/bin/env python3
"""--device on the commands that run the model (issue 12).

* `cuda`, `cuda:N` without a usable GPU (or in a build without CUDA) exit 1 with "no CUDA device" and never
  crash; with a GPU present they run (or name the missing device, exit 1); a malformed value exits 2 naming it.
* `cpu`, `auto` (cpu without a GPU) and the default give the same output.
* `cpu-checked`: the CPU backend with device-style memory: every op refuses an argument that is not in the
  backend's own allocations, so the model must upload its weights, 4-bit states, adapters (LoRA and DoRA) and
  DoRA norms, and everything the forward reads must be in backend memory, as on a GPU. Its ops are the CPU
  ops on copies of the same bytes, so its logits must equal `--device cpu` BIT FOR BIT for: the f32 base, a
  LoRA adapter, a DoRA adapter, the 4-bit base (--quantization-bit 4) and bf16 compute; generate's tokens
  equal; and `serve --device cpu-checked` answers base, LoRA and DoRA requests exactly as `serve --device cpu`.

Oracle stack: (transformers 5: its qwen3 model; scripts/setup-tests.sh)
"""
import argparse
import os
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from serve_fixtures import make_tiny, peft_adapter  # noqa: E402
from serve_util import Server  # noqa: E402


def run(cmd, timeout=180):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def gpu_present():
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0
    except Exception:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    seed = int(os.environ.get("LF_TEST_SEED", str(int.from_bytes(os.urandom(3), "little"))))
    print(f"seed {seed} (set LF_TEST_SEED to reproduce)")
    model = os.path.join(a.workdir, "m")
    make_tiny(a.bin, model, seed % 100000, 64, os.path.join(REPO, "examples", "tokenizer"))
    lora = peft_adapter(model, os.path.join(a.workdir, "lora"), seed + 1, 8, 16)
    dora = peft_adapter(model, os.path.join(a.workdir, "dora"), seed + 2, 4, 8, dora=True)
    q3 = os.path.join(a.workdir, "q3")  # a layer with optional parts: Qwen3's per-head q/k norms, head_dim apart
    run([a.bin, "make-tiny", "--arch", "qwen3", "--out", q3, "--seed", str(seed % 100000 + 7), "--hidden", "64",
         "--heads", "4", "--kv-heads", "2", "--head-dim", "24", "--intermediate", "128", "--layers", "2",
         "--init-std", "0.1", "--tokenizer", os.path.join(REPO, "examples", "tokenizer")])
    q3lora = peft_adapter(q3, os.path.join(a.workdir, "q3lora"), seed + 3, 8, 16)
    npass = nfail = 0
    has_gpu = gpu_present()

    def check(name, ok, detail=""):
        nonlocal npass, nfail
        print(f"  {'PASS' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"), flush=True)
        npass, nfail = npass + bool(ok), nfail + (not ok)

    commands = {
        "score": [a.bin, "score", "--model", model, "--tokens", "1 2 3", "--out", os.path.join(a.workdir, "l.npy")],
        "generate": [a.bin, "generate", "--model", model, "--tokens", "1 2 3", "--max-new-tokens", "2"],
        "serve": [a.bin, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0"],
    }
    for cmd, base in commands.items():
        for dev in ("cuda", "cuda:0", "cuda:3"):
            if has_gpu and dev != "cuda:3":
                continue  # runs on the device: covered by scripts/gpu-check.sh
            p = run(base + ["--device", dev])
            ok = p.returncode == 1 and "CUDA device" in p.stderr
            check(f"{cmd} --device {dev}: exit 1 with the reason", ok, f"rc {p.returncode} {p.stderr[-400:]!r}")
        for dev in ("tpu", "cuda:x", "cuda:-1", "gpu", ""):
            p = run(base + ["--device", dev])
            check(f"{cmd} --device {dev!r}: usage error (exit 2) naming it", p.returncode == 2 and "--device" in p.stderr,
                  f"rc {p.returncode} {p.stderr[-300:]!r}")
        if cmd != "serve":
            outs = {}
            for dev in ("cpu", "auto", None) if not has_gpu else ("cpu", None):
                extra = ["--device", dev] if dev else ["--device", "cpu"] if has_gpu else []
                out = list(base)
                if cmd == "score":
                    out[-1] = os.path.join(a.workdir, f"l-{dev}.npy")
                p = run(out + extra)
                check(f"{cmd} --device {dev}: runs", p.returncode == 0, p.stderr[-300:])
                outs[dev] = open(out[-1], "rb").read() if cmd == "score" and p.returncode == 0 else p.stdout
            check(f"{cmd}: cpu, auto and the default give the same output", len(set(outs.values())) == 1, "outputs differ")

    # ---- cpu-checked == cpu, bit for bit
    rng = np.random.default_rng(seed)
    toks = " ".join(str(int(x)) for x in rng.integers(3, 200, size=37))
    variants = {
        "qwen3": ["--model", q3],
        "qwen3 + lora, 4-bit": ["--model", q3, "--adapter", q3lora, "--quantization-bit", "4"],
        "f32": [],
        "lora": ["--adapter", lora],
        "dora": ["--adapter", dora],
        "4-bit": ["--quantization-bit", "4"],
        "4-bit + dora": ["--quantization-bit", "4", "--adapter", dora],
        "bf16": ["--compute-dtype", "bf16"],
    }
    for name, extra in variants.items():
        mdl, extra = (extra[1], extra[2:]) if extra[:1] == ["--model"] else (model, extra)
        res = {}
        for dev in ("cpu", "cpu-checked"):
            out = os.path.join(a.workdir, f"v-{name.replace(' ', '')}-{dev}.npy")
            p = run([a.bin, "score", "--model", mdl, "--tokens", toks, "--chunk", "16", "--out", out, "--device", dev] + extra)
            res[dev] = np.load(out) if p.returncode == 0 else None
            if p.returncode != 0:
                check(f"score {name} --device {dev}", False, p.stderr[-600:])
        if res["cpu"] is not None and res["cpu-checked"] is not None:
            check(f"score {name}: cpu-checked logits == cpu logits (bit for bit)",
                  res["cpu"].shape == res["cpu-checked"].shape and np.array_equal(res["cpu"], res["cpu-checked"]),
                  f"max |d| {np.max(np.abs(res['cpu'] - res['cpu-checked'])):.3g}")
        gen = {}
        for dev in ("cpu", "cpu-checked"):
            p = run([a.bin, "generate", "--model", mdl, "--tokens", toks, "--max-new-tokens", "5", "--ignore-eos",
                     "--device", dev] + extra)
            gen[dev] = p.stdout if p.returncode == 0 else f"rc {p.returncode}: {p.stderr[-300:]}"
        check(f"generate {name}: cpu-checked tokens == cpu tokens", gen["cpu"] == gen["cpu-checked"], str(gen))

    for dev in ("cpu", "cpu-checked"):  # serve a qwen3 base with its adapter
        try:
            with Server(a.bin, ["--model", q3, "--device", dev, "--adapter", f"q3lora={q3lora}"], a.workdir,
                        "q3-" + dev) as s:
                got = [s.post("/invocations", {"inputs": "hello there", "parameters": {"max_new_tokens": 6,
                       "do_sample": False}}, headers=h) for h in ({}, {"X-Amzn-SageMaker-Adapter-Identifier": "q3lora"})]
                answers_q3 = [(r.status_code, r.text) for r in got]
        except Exception as e:
            answers_q3 = f"error {e}"
        if dev == "cpu":
            q3_cpu = answers_q3
    check("serve qwen3 + adapter: cpu-checked answers as cpu (200, same text)",
          isinstance(q3_cpu, list) and q3_cpu == answers_q3 and all(c == 200 for c, _ in q3_cpu), str(answers_q3)[:600])

    answers = {}
    for dev in ("cpu", "cpu-checked"):
        try:
            with Server(a.bin, ["--model", model, "--device", dev, "--adapter", f"lora={lora}", "--adapter",
                                f"dora={dora}"], a.workdir, dev) as s:
                got = []
                for ad in (None, "lora", "dora"):
                    hdr = {"X-Amzn-SageMaker-Adapter-Identifier": ad} if ad else {}
                    r = s.post("/invocations", {"inputs": "hello there", "parameters": {"max_new_tokens": 6,
                                                                                       "do_sample": False}}, headers=hdr)
                    got.append((r.status_code, r.text))
                answers[dev] = got
        except Exception as e:
            answers[dev] = f"error {e}"
    ok = isinstance(answers.get("cpu"), list) and answers.get("cpu") == answers.get("cpu-checked") and \
        all(code == 200 for code, _ in answers["cpu"])
    check("serve --device cpu-checked answers base, LoRA and DoRA requests as --device cpu", ok, str(answers)[:800])
    print(f"{npass} passed, {nfail} failed")
    sys.exit(1 if nfail else 0)


if __name__ == "__main__":
    main()
