#!/usr/bin/env python3
"""4-bit models end to end, against oracles we did not write where they exist.

For make-tiny models of each architecture (f32, bf16, f16; nf4/fp4; double quant on/off; blocksizes 32..4096):
  1. `loraforge quantize` writes the Hugging Face bitsandbytes layout: every key, dtype and shape, the
     quant_state JSON byte-identical to bitsandbytes' json.dumps(as_dict) blob, config.json's
     quantization_config; and its codes/absmax equal, bit for bit, the NumPy re-implementation of bnb's
     algorithm (tests/oracle/test_quant_numpy.py) run on the original weights.
  2. Our logits with on-load quantization vs `transformers` (torch, f32) on the dequantized weights: within 1e-4
     of max|logit| (f32 accumulation-order differences, as in test_hf_parity).
  3. The quantized directory loads back without re-quantizing: logits bit-identical to on-load quantization
     and the same greedy tokens (the issue's "done when").
  4. A directory written by Python the way transformers + bitsandbytes save it loads and matches.
  5. `inspect` groups the 4-bit weights.
  6. Bad input: wrong blocksize, shape/byte mismatch, missing quant_state, unknown quant_type, broken JSON,
     8-bit checkpoints: exit 1 (load) or 2 (usage) with a message naming the problem, never a crash.
"""
import argparse
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys

try:
    import numpy as np
    import torch
    from safetensors.numpy import load_file, save_file
    from transformers import AutoModelForCausalLM
except Exception as e:  # the oracle must run in CI
    print(f"FAIL: cannot import the oracle packages: {e}")
    print("0 passed, 1 failed")
    sys.exit(1)

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("qnp", os.path.join(HERE, "test_quant_numpy.py"))
qnp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(qnp)

REL_TOL = 1e-4  # f32 logits, different accumulation order than torch (same bound as test_hf_parity)
MODS = [("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
        ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj")]
# name, arch, make-tiny flags, quant type, blocksize, double quant
CASES = [
    ("llama-f32-nf4-b64-dq", "llama", "--hidden 128 --heads 4 --kv-heads 2 --intermediate 320 --layers 2 --vocab 1000", "nf4", 64, True),
    ("qwen2-bf16-fp4-b128", "qwen2", "--hidden 96 --heads 6 --kv-heads 2 --intermediate 200 --layers 2 --vocab 800 --dtype bf16", "fp4", 128, False),
    ("mistral-f16-tied-nf4-b32-dq", "mistral", "--hidden 64 --heads 4 --kv-heads 1 --intermediate 136 --layers 3 --vocab 600 --dtype f16 --tie-embeddings", "nf4", 32, True),
    ("llama-bf16-ragged-nf4-b4096-dq", "llama", "--hidden 72 --heads 4 --kv-heads 4 --intermediate 150 --layers 2 --vocab 500 --dtype bf16", "nf4", 4096, True),
    ("qwen2-f32-fp4-b256-dq", "qwen2", "--hidden 64 --heads 4 --kv-heads 2 --intermediate 128 --layers 2 --vocab 700", "fp4", 256, True),
]
T = 24
GEN = 10


def run(cmd, ok_codes=(0,)):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode not in ok_codes:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()}")
    return p


def qflags(qt, B, dq):
    return ["--quant-type", qt, "--quant-blocksize", str(B)] + ([] if dq else ["--no-double-quant"])


def load_f32(path):  # safetensors.numpy cannot read bf16: go through torch
    from safetensors.torch import load_file as tload
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in tload(path).items()}


def bnb_blob(qt, B, dtype, shape, offset):
    d = {"quant_type": qt, "blocksize": B, "dtype": dtype, "shape": list(shape)}
    if offset is not None:
        d.update({"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": float(offset)})
    return json.dumps(d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    seed = int(os.environ.get("LF_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
    print(f"seed {seed} (set LF_TEST_SEED to reproduce)")
    rng = np.random.default_rng(seed)
    os.makedirs(a.workdir, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    dmap = qnp.dynamic_map_numpy()
    passed = failed = 0

    def check(ok, msg):
        nonlocal passed, failed
        passed += bool(ok)
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {msg}")

    for name, arch, flags, qt, B, dq in CASES:
        try:
            d = os.path.join(a.workdir, name)
            qd = d + "-q"
            shutil.rmtree(qd, ignore_errors=True)
            run([a.bin, "make-tiny", "--arch", arch, "--out", d, "--seed", str(int(rng.integers(1 << 31))),
                 "--init-std", "0.05"] + flags.split())
            run([a.bin, "quantize", "--model", d, "--out", qd, "--type", qt, "--blocksize", str(B)] +
                ([] if dq else ["--no-double-quant"]))
            cfg = json.load(open(os.path.join(d, "config.json")))
            L = cfg["num_hidden_layers"]
            orig = load_f32(os.path.join(d, "model.safetensors")) if os.path.exists(os.path.join(d, "model.safetensors")) else None
            src_dtype = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[cfg.get("torch_dtype", "float32")]
            from safetensors.torch import load_file as tload
            qraw = {k: (v.float() if v.dtype in (torch.bfloat16, torch.float16) else v).numpy()
                    for k, v in tload(os.path.join(qd, "model.safetensors")).items()}
            # 1. layout + bit-exact codes vs the NumPy bnb re-implementation
            layout_bad, bits_bad = [], []
            deq = {}
            py_tensors = {}
            for l in range(L):
                for par, mod in MODS:
                    p = f"model.layers.{l}.{par}.{mod}.weight"
                    w = orig[p]
                    n = w.size
                    ref = qnp.reference(w.reshape(-1).astype(np.float32), B, qt, dq, dmap)
                    nb = (n + B - 1) // B
                    want = {p: (np.uint8, ((n + 1) // 2, 1)), p + ".absmax": (np.uint8 if dq else np.float32, (nb,)),
                            p + ".quant_map": (np.float32, (16,))}
                    if dq:
                        want[p + ".nested_absmax"] = (np.float32, ((nb + 255) // 256,))
                        want[p + ".nested_quant_map"] = (np.float32, (256,))
                    for k, (dt, shp) in want.items():
                        if k not in qraw or qraw[k].dtype != dt or qraw[k].shape != shp:
                            layout_bad.append(f"{k}: {qraw[k].dtype if k in qraw else 'missing'} {qraw[k].shape if k in qraw else ''} want {dt.__name__} {shp}")
                    blob_key = f"{p}.quant_state.bitsandbytes__{qt}"
                    offset = ref["offset"][0] if dq else None
                    blob = bnb_blob(qt, B, src_dtype, w.shape, offset)
                    if blob_key not in qraw or bytes(qraw[blob_key]) != blob.encode():
                        layout_bad.append(f"{blob_key}: {bytes(qraw.get(blob_key, b'')).decode(errors='replace')!r} want {blob!r}")
                    if layout_bad:
                        continue
                    same = np.array_equal(qraw[p].reshape(-1), ref["packed"]) and np.array_equal(qraw[p + ".absmax"], ref["absmax"])
                    if dq:
                        same = same and np.array_equal(qraw[p + ".nested_absmax"], ref["nested_absmax"]) and \
                            np.array_equal(qraw[p + ".nested_quant_map"], dmap)
                    same = same and np.array_equal(qraw[p + ".quant_map"], qnp.NF4 if qt == "nf4" else qnp.FP4)
                    if not same:
                        bits_bad.append(p)
                    deq[p] = ref["dequant"].reshape(w.shape)
                    # what transformers + bitsandbytes would save for this weight (key names, dtypes, blob)
                    py_tensors[p] = ref["packed"].reshape(-1, 1)
                    py_tensors[p + ".absmax"] = ref["absmax"]
                    py_tensors[p + ".quant_map"] = qnp.NF4 if qt == "nf4" else qnp.FP4
                    if dq:
                        py_tensors[p + ".nested_absmax"] = ref["nested_absmax"]
                        py_tensors[p + ".nested_quant_map"] = dmap
                    py_tensors[blob_key] = np.frombuffer(blob.encode(), np.uint8).copy()
            check(not layout_bad, f"{name}: bitsandbytes layout ({7 * L} weights){': ' + '; '.join(layout_bad[:3]) if layout_bad else ''}")
            check(not bits_bad, f"{name}: codes/absmax bit-identical to the NumPy bnb algorithm{': ' + ', '.join(bits_bad[:3]) if bits_bad else ''}")
            qcfg = json.load(open(os.path.join(qd, "config.json"))).get("quantization_config", {})
            check(qcfg.get("quant_method") == "bitsandbytes" and qcfg.get("load_in_4bit") is True and
                  qcfg.get("bnb_4bit_quant_type") == qt and qcfg.get("bnb_4bit_use_double_quant") == dq,
                  f"{name}: config.json quantization_config {qcfg}")
            if layout_bad:
                continue

            # 2. on-load logits vs transformers on the dequantized weights
            ids = rng.integers(0, cfg["vocab_size"], size=T).tolist()
            toks = " ".join(map(str, ids))
            o1 = os.path.join(a.workdir, name + "-onload.npy")
            run([a.bin, "score", "--model", d, "--tokens", toks, "--out", o1, "--quantization-bit", "4"] + qflags(qt, B, dq))
            ours = np.load(o1)
            model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
            sd = model.state_dict()
            for k, v in deq.items():
                sd[k] = torch.from_numpy(v.copy())
            model.load_state_dict(sd)
            model.eval()
            with torch.no_grad():
                ref = model(torch.tensor([ids])).logits[0].numpy()
            rel = float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
            check(rel <= REL_TOL, f"{name}: on-load 4-bit logits vs transformers on dequantized weights: "
                                  f"max|d|/max|ref| {rel:.2e} (tol {REL_TOL:g})")

            # 3. the quantized directory: same logits bit for bit, same greedy tokens
            o2 = os.path.join(a.workdir, name + "-file.npy")
            run([a.bin, "score", "--model", qd, "--tokens", toks, "--out", o2])
            check(np.array_equal(np.load(o2), ours), f"{name}: quantized dir logits == on-load logits (bit-exact)")
            prompt = " ".join(map(str, ids[:6]))
            g1 = run([a.bin, "generate", "--model", d, "--tokens", prompt, "--max-new-tokens", str(GEN), "--ignore-eos",
                      "--quantization-bit", "4"] + qflags(qt, B, dq)).stdout.split()
            g2 = run([a.bin, "generate", "--model", qd, "--tokens", prompt, "--max-new-tokens", str(GEN), "--ignore-eos"]).stdout.split()
            check(g1 == g2 and len(g1) == GEN, f"{name}: greedy tokens quantize-CLI dir {g2} == on-load {g1}")
            # memory report names the 4-bit matrices
            err = run([a.bin, "generate", "--model", qd, "--tokens", prompt, "--max-new-tokens", "1"]).stderr
            check(f"{7 * L} 4-bit matrices" in err and "pre-quantized" in err, f"{name}: memory report: {err.splitlines()[0] if err else ''}")

            # 4. a directory saved the way transformers + bitsandbytes do (written here by Python)
            pd = d + "-py"
            shutil.rmtree(pd, ignore_errors=True)
            os.makedirs(pd)
            from safetensors.torch import load_file as tload, save_file as tsave
            full = tload(os.path.join(d, "model.safetensors"))
            for k in list(full):
                if k in deq:
                    del full[k]
            for k, v in py_tensors.items():
                full[k] = torch.from_numpy(np.array(v, copy=True))  # no shared storage (safetensors refuses it)
            tsave(full, os.path.join(pd, "model.safetensors"), metadata={"format": "pt"})
            c2 = dict(cfg)
            c2["quantization_config"] = {"_load_in_4bit": True, "_load_in_8bit": False, "bnb_4bit_compute_dtype": "bfloat16",
                                         "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": qt,
                                         "bnb_4bit_use_double_quant": dq, "llm_int8_enable_fp32_cpu_offload": False,
                                         "llm_int8_has_fp16_weight": False, "llm_int8_skip_modules": None,
                                         "llm_int8_threshold": 6.0, "load_in_4bit": True, "load_in_8bit": False,
                                         "quant_method": "bitsandbytes"}
            json.dump(c2, open(os.path.join(pd, "config.json"), "w"))
            o3 = os.path.join(a.workdir, name + "-py.npy")
            run([a.bin, "score", "--model", pd, "--tokens", toks, "--out", o3])
            check(np.array_equal(np.load(o3), ours), f"{name}: transformers-style pre-quantized dir loads, logits == on-load")

            # 5. inspect groups the 4-bit weights
            js = json.loads(run([a.bin, "inspect", "--json", qd]).stdout)
            qrows = [t for t in js["tensors"] if "quantized" in t]
            okq = len(qrows) == 7 * L and all(t["quantized"]["quant_type"] == qt and t["quantized"]["blocksize"] == B
                                              for t in qrows)
            txt = run([a.bin, "inspect", qd]).stdout
            check(okq and f"{qt}{'+dq' if dq else ''}" in txt and ".absmax" not in txt,
                  f"{name}: inspect shows {len(qrows)} quantized weights grouped")
        except Exception as e:
            check(False, f"{name}: {e}")

    # 6. bad input
    base = os.path.join(a.workdir, CASES[0][0])
    good = base + "-q"
    src = load_file(os.path.join(good, "model.safetensors"))
    p0 = "model.layers.0.self_attn.q_proj.weight"
    blob0 = json.loads(bytes(src[p0 + ".quant_state.bitsandbytes__nf4"]).decode())

    def variant(tag, mutate, cfg_mut=None):
        vd = os.path.join(a.workdir, "bad-" + tag)
        shutil.rmtree(vd, ignore_errors=True)
        shutil.copytree(good, vd)
        t = dict(src)
        mutate(t)
        save_file(t, os.path.join(vd, "model.safetensors"), metadata={"format": "pt"})
        if cfg_mut:
            c = json.load(open(os.path.join(vd, "config.json")))
            cfg_mut(c)
            json.dump(c, open(os.path.join(vd, "config.json"), "w"))
        return vd

    def blob_with(**kw):
        b = dict(blob0)
        b.update(kw)
        return np.frombuffer(json.dumps(b).encode(), np.uint8).copy()

    def set_(k, v):
        return lambda t: t.__setitem__(k, v)

    def rename(k, k2):
        return lambda t: t.__setitem__(k2, t.pop(k))

    qs = p0 + ".quant_state.bitsandbytes__nf4"
    bad = [
        ("blocksize-48", set_(qs, blob_with(blocksize=48)), None, "power of two"),
        ("shape-mismatch", set_(qs, blob_with(shape=[64, 128])), None, "does not match config.json"),
        ("absmax-short", set_(p0 + ".absmax", src[p0 + ".absmax"][:-1].copy()), None, "elements, expected"),
        ("packed-short", set_(p0, src[p0][:-2].copy()), None, "packed bytes"),
        ("missing-quant-state", lambda t: t.pop(qs), None, "quant_state"),
        ("unknown-quant-type", rename(qs, p0 + ".quant_state.bitsandbytes__int3"), None, "unknown 4-bit quant_state"),
        ("type-mismatch", set_(qs, blob_with(quant_type="fp4")), None, "does not match"),
        ("broken-json", set_(qs, np.frombuffer(b'{"quant_type": "nf4", ', np.uint8).copy()), None, "JSON"),
        ("missing-absmax", lambda t: t.pop(p0 + ".absmax"), None, "is missing"),
        ("custom-quant-map", set_(p0 + ".quant_map", (qnp.NF4 * np.float32(0.5)).astype(np.float32)), None, "custom code tables"),
        ("8bit-config", lambda t: None, lambda c: c["quantization_config"].update(load_in_4bit=False, load_in_8bit=True), "not supported"),
    ]
    ids = "1 2 3 4"
    for tag, mut, cmut, want in bad:
        try:
            vd = variant(tag, mut, cmut)
            p = run([a.bin, "score", "--model", vd, "--tokens", ids, "--out", os.path.join(vd, "o.npy")], ok_codes=(0, 1, 2))
            ok = p.returncode == 1 and want.lower() in p.stderr.lower() and "Sanitizer" not in p.stderr
            check(ok, f"bad input {tag}: exit {p.returncode}, stderr: {p.stderr.strip()[:200]}")
        except Exception as e:
            check(False, f"bad input {tag}: {e}")
    for args, want in ([["--blocksize", "48"], "power of two"], [["--blocksize", "8192"], "power of two"],
                       [["--type", "int4"], "nf4 or fp4"], [["--blocksize", "abc"], "--blocksize"]):
        p = run([a.bin, "quantize", "--model", base, "--out", os.path.join(a.workdir, "never")] + args, ok_codes=(0, 1, 2))
        check(p.returncode == 2 and want in p.stderr, f"quantize {' '.join(args)}: exit {p.returncode}: {p.stderr.strip()[:160]}")
    p = run([a.bin, "quantize", "--model", good, "--out", os.path.join(a.workdir, "never2")], ok_codes=(0, 1, 2))
    check(p.returncode == 1 and "already" in p.stderr, f"quantize of a quantized dir: exit {p.returncode}: {p.stderr.strip()[:160]}")
    p = run([a.bin, "quantize", "--model", base, "--out", base], ok_codes=(0, 1, 2))
    check(p.returncode == 1 and "model directory itself" in p.stderr, f"quantize --out == --model refused: {p.stderr.strip()[:160]}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
