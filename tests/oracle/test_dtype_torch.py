#!/usr/bin/env python3
"""Oracle: our f32 -> bf16 / f16 conversions vs torch (`.to(torch.bfloat16)`) and numpy (`astype(float16)`),
bit for bit, on random bit patterns, values in f16's range (subnormals included), exact ties, and specials.
NaN is compared as NaN (payload bits are not part of the contract)."""
import argparse
import os
import random
import subprocess
import sys

try:
    import numpy as np
    import torch
except Exception as e:
    print(f"FAIL: cannot import numpy/torch: {e}")
    print("0 passed, 1 failed")
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    seed = int(os.environ.get("LF_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    os.makedirs(a.workdir, exist_ok=True)
    tool = os.path.join(os.path.dirname(a.bin), "dtype_tool")
    bits = rng.integers(0, 1 << 32, size=400000, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([
        bits.view(np.float32),
        (rng.standard_normal(200000) * np.exp2(rng.integers(-30, 17, 200000))).astype(np.float32),
        # exact bf16 ties: low 16 bits = 0x8000
        ((rng.integers(0, 1 << 16, 50000, dtype=np.uint64).astype(np.uint32) << 16) | 0x8000).view(np.float32),
        # exact f16 ties in the normal range: 13 dropped bits = 0x1000
        ((rng.integers(0x38800000 >> 13, 0x477fe000 >> 13, 50000, dtype=np.uint64).astype(np.uint32) << 13) | 0x1000).view(np.float32),
        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519.99, 65520, 5.96e-8, 2.98e-8, 1e-45, 3.4e38], np.float32),
    ])
    inp = os.path.join(a.workdir, "x.f32")
    x.tofile(inp)
    outs = [os.path.join(a.workdir, f) for f in ("x.bf16", "x.f16", "x.back")]
    p = subprocess.run([tool, inp] + outs, capture_output=True, text=True)
    if p.returncode:
        print(f"FAIL dtype_tool: {p.stderr}")
        print("0 passed, 1 failed")
        return 1
    ours_b = np.fromfile(outs[0], np.uint16)
    ours_h = np.fromfile(outs[1], np.uint16)
    back = np.fromfile(outs[2], np.float32)
    ref_b = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    with np.errstate(over="ignore"):
        ref_h16 = x.astype(np.float16)
    ref_h = ref_h16.view(np.uint16)
    nan = np.isnan(x)
    passed = failed = 0
    for name, ours, ref, isnan_ours in [
        ("bf16 vs torch", ours_b, ref_b, np.isnan(torch.from_numpy(ours_b.view(np.int16).copy()).view(torch.bfloat16).float().numpy())),
        ("f16 vs numpy", ours_h, ref_h, np.isnan(ours_h.view(np.float16))),
    ]:
        bad = (~nan & (ours != ref)) | (nan & ~isnan_ours)
        ok = not bad.any()
        print(f"{'PASS' if ok else 'FAIL'} {name}: {int(bad.sum())} of {len(x)} differ" +
              ("" if ok else f"; first x={x[bad][0]!r} ours={ours[bad][0]:#06x} ref={ref[bad][0]:#06x}"))
        passed += ok
        failed += not ok
    ref_back = ref_h16.astype(np.float32)
    bad = ~nan & (back.view(np.uint32) != ref_back.view(np.uint32))
    ok = not bad.any()
    print(f"{'PASS' if ok else 'FAIL'} f16 -> f32 vs numpy: {int(bad.sum())} differ")
    passed += ok
    failed += not ok
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
