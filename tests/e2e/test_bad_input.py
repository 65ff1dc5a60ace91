#!/usr/bin/env python3
"""Bad input to the CLI: every case must exit with status 1 or 2 (never a signal / sanitizer abort) and
print an error naming the file and, where there is one, the tensor or key.

Corrupted checkpoints are derived from a valid `make-tiny` model by rewriting its safetensors header
(or bytes) directly, so each case breaks exactly one rule.
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


def read_st(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path, header, data, pad=True):
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    base = os.path.join(a.workdir, "base")
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    p = run([a.bin, "make-tiny", "--arch", "llama", "--out", base, "--seed", "3"])
    if p.returncode != 0:
        print(f"FAIL: make-tiny: {p.stderr}")
        print("0 passed, 1 failed")
        return 1
    header, data = read_st(os.path.join(base, "model.safetensors"))
    victim = "model.layers.0.self_attn.k_proj.weight"
    cases = []

    def variant(name, mutate_dir):
        d = os.path.join(a.workdir, name)
        shutil.copytree(base, d)
        mutate_dir(d)
        return d

    def st_case(name, expect, hdr_fn=None, raw_fn=None, pad=True):
        def mut(d):
            path = os.path.join(d, "model.safetensors")
            if raw_fn:
                with open(path, "rb") as f:
                    raw = f.read()
                with open(path, "wb") as f:
                    f.write(raw_fn(raw))
            else:
                h = json.loads(json.dumps(header))
                hdr_fn(h)
                write_st(path, h, data, pad)
        cases.append((name, variant(name, mut), expect))

    def shift(h, delta):  # move the victim's span (same length): overlaps one neighbour, leaves a gap by the other
        h[victim]["data_offsets"][0] += delta
        h[victim]["data_offsets"][1] += delta

    st_case("truncated", ["model.safetensors"], raw_fn=lambda r: r[: len(r) // 2])
    st_case("tiny-file", ["model.safetensors"], raw_fn=lambda r: r[:5])
    st_case("header-past-eof", ["model.safetensors"], raw_fn=lambda r: struct.pack("<Q", len(r) * 2) + r[8:])
    st_case("header-not-object", ["model.safetensors"], raw_fn=lambda r: r[:8] + b"[" + r[9:])
    st_case("overlap", ["model.safetensors", "k_proj"], hdr_fn=lambda h: shift(h, -8))
    st_case("gap", ["model.safetensors", "k_proj"], hdr_fn=lambda h: shift(h, 8))
    st_case("offsets-not-from-zero", ["model.safetensors"], hdr_fn=lambda h: [v["data_offsets"].__setitem__(i, v["data_offsets"][i] + 4) for k, v in h.items() if k != "__metadata__" for i in (0, 1)])
    st_case("unknown-dtype", ["model.safetensors", victim], hdr_fn=lambda h: h[victim].update(dtype="F12"))
    st_case("span-mismatch", ["model.safetensors", victim], hdr_fn=lambda h: h[victim].update(shape=[3, 5]))
    st_case("wrong-shape", ["model.safetensors", victim],
            hdr_fn=lambda h: h[victim].update(shape=[h[victim]["shape"][1], h[victim]["shape"][0]]))
    st_case("missing-tensor", [victim], hdr_fn=lambda h: h.__setitem__(victim.replace("k_proj", "kk_proj"), h.pop(victim)))

    def cfg_case(name, fn, expect):
        def mut(d):
            path = os.path.join(d, "config.json")
            with open(path) as f:
                c = json.load(f)
            fn(c)
            with open(path, "w") as f:
                json.dump(c, f)
        cases.append((name, variant(name, mut), expect))

    cfg_case("config-missing-hidden", lambda c: c.pop("hidden_size"), ["config.json", "hidden_size"])
    cfg_case("config-bad-type", lambda c: c.update(num_hidden_layers="two"), ["config.json", "num_hidden_layers"])
    cfg_case("config-unknown-arch", lambda c: c.update(architectures=["GPTNeoXForCausalLM"]), ["config.json", "GPTNeoXForCausalLM"])
    cfg_case("config-heads-mismatch", lambda c: c.update(num_key_value_heads=3), ["config.json", "num_key_value_heads"])
    cases.append(("config-invalid-json", variant("config-invalid-json", lambda d: open(os.path.join(d, "config.json"), "w").write("{\"hidden_size\": ")), ["config.json"]))
    cases.append(("no-such-dir", os.path.join(a.workdir, "does-not-exist"), ["does-not-exist"]))

    passed = failed = 0
    for name, d, expect in cases:
        p = run([a.bin, "score", "--model", d, "--tokens", "1 2 3", "--out", os.path.join(a.workdir, name + ".npy")])
        msg = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
        ok = p.returncode in (1, 2) and all(e in p.stderr for e in expect) and "AddressSanitizer" not in p.stderr \
            and "runtime error" not in p.stderr and not os.path.exists(os.path.join(a.workdir, name + ".npy"))
        print(f"{'PASS' if ok else 'FAIL'} {name}: exit {p.returncode}: {msg}")
        passed += ok
        failed += not ok

    # CLI-level bad input on the valid model
    for name, cmd, expect in [
        ("token-out-of-range", ["score", "--model", base, "--tokens", "1 999999", "--out", os.path.join(a.workdir, "x.npy")], ["999999"]),
        ("token-not-a-number", ["score", "--model", base, "--tokens", "1 abc", "--out", os.path.join(a.workdir, "x.npy")], ["abc"]),
        ("unknown-flag", ["score", "--model", base, "--bogus", "1"], ["--bogus"]),
        ("bad-temperature", ["generate", "--model", base, "--tokens", "1", "--temperature", "-1"], ["--temperature"]),
        ("unknown-command", ["frobnicate"], ["frobnicate"]),
    ]:
        p = run([a.bin] + cmd)
        ok = p.returncode in (1, 2) and all(e in p.stderr for e in expect) and "AddressSanitizer" not in p.stderr
        print(f"{'PASS' if ok else 'FAIL'} {name}: exit {p.returncode}: {p.stderr.strip()[:200]}")
        passed += ok
        failed += not ok
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
