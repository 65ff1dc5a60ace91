#!/usr/bin/env python3
"""Oracle: our NF4/FP4 quantization (quant_tool) vs a NumPy re-implementation of bitsandbytes' algorithm,
written from ../shared/formats.md section 3 and bnb's semantics, bit for bit: packed bytes, absmax, nested
absmax, quantized absmax, offset, dequantized values; and the signed dynamic map vs a NumPy emulation of
create_dynamic_map (and vs bnb's own code run on torch, when torch imports).

Rules the reference encodes (see quant/quant.c for the sources):
  scale v = x * f32(1/absmax); NF4 = number of kernel thresholds strictly below v (bucketize right=False on
  the ascending thresholds: x > t takes the upper code); FP4 = sign bit (x < 0) + magnitude bucket by the
  kernel's thresholds; all-zero block -> the code of 0.0; packing (q[0::2] << 4) | q[1::2], odd n pads 0 (bnb pads the code of 0.0; test_quant_bnb.py);
  double quant: offset = f32(exact mean), x - offset quantized per 256 with v = x * f32(1/absmax2), code = bnb's
  CUDA dQuantize<0> (binary search, f32 midpoints), zero 256-block -> index 0; decode map[q]*a2 + offset.
  The dynamic map is torch 2.x's (per-element FMA linspace); it must also equal bnb's create_dynamic_map run on
  the oracle's torch, checked whenever torch imports."""
import argparse
import math
import os
import random
import subprocess
import sys
from fractions import Fraction

try:
    import numpy as np
except Exception as e:  # pragma: no cover
    print(f"FAIL: cannot import numpy: {e}")
    print("0 passed, 1 failed")
    sys.exit(1)

f32 = np.float32
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], np.float32)
FP4 = (np.array([0, .0625, 8, 12, 4, 6, 2, 3, -0.0, -.0625, -8, -12, -4, -6, -2, -3], np.float32) / f32(12))
# formats.md "NF4 quantizer" thresholds and the dQuantizeFP4 thresholds, as the kernel's C literals ("...f"):
# a decimal rounded straight to f32. np.float32(float(s)) rounds twice (decimal -> f64 -> f32) and lands one
# ulp off for 4 NF4 thresholds (0.8614784181118011, 0.5016634166240692, 0.1202552504837513,
# -0.8480964004993439: each decimal is the f64 midpoint of two NF4 codes, an exact f32 tie).
NF4_TH_STR = ["0.03979014977812767", "0.3893125355243683", "0.6427869200706482", "0.8614784181118011",
              "0.5016634166240692", "0.2035212516784668", "0.2920137718319893", "0.1202552504837513",
              "-0.33967943489551544", "-0.13791173323988914", "-0.045525018125772476", "-0.23460740596055984",
              "-0.6106329262256622", "-0.4599952697753906", "-0.8480964004993439"]
# |x| thresholds, ascending; code of each magnitude rank (0 < 1/192 < 1/6 < 1/4 < 1/3 < 1/2 < 2/3 < 1)
FP4_TH_STR = ["0.00260417", "0.0859375", "0.20833333", "0.29166667", "0.4166667", "0.583333", "0.8333333"]
FP4_RANK_CODE = np.array([0, 1, 6, 7, 4, 5, 2, 3], np.uint8)


# ---------------- create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8) ----------------
def round_f32(x: Fraction) -> np.float32:
    """Correctly rounded f32 of an exact rational (ties to even)."""
    f = f32(float(x))
    cands = [np.nextafter(f, f32(-np.inf)), f, np.nextafter(f, f32(np.inf))]
    best = min(cands, key=lambda c: (abs(Fraction(float(c)) - x), int(np.array(c).view(np.uint32)) & 1))
    return f32(best)


def c_float_literal(s):
    return round_f32(Fraction(s))


NF4_TH = np.sort(np.array([c_float_literal(t) for t in NF4_TH_STR], np.float32))
FP4_TH = np.array([c_float_literal(t) for t in FP4_TH_STR], np.float32)


def fmaf(a, b, c):
    return round_f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


def torch_linspace_f32(steps):
    """torch.linspace(0.1, 1, steps) float32 as PyPI torch 2.x computes it on an AVX2/AVX-512 CPU
    (RangeFactoriesKernel.cpp linspace_kernel: a serial loop, no vector path any more; GCC contracts
    start + step*idx to one FMA): step = (end - start) / (steps - 1); idx < steps/2: fma(step, idx, start),
    else fma(-step, steps-idx-1, end). (Debian's torch 1.13.0a0 ran a vectorized kernel, 2 vectors of 8 with
    base + k*step, and gave 42 map entries 1-2 ulp apart; the C map followed it until the oracle moved to
    torch 2.15.)"""
    start, end = f32(0.1), f32(1.0)
    step = f32((end - start) / f32(steps - 1))
    half = steps // 2
    return np.array([fmaf(step, f32(i), start) if i < half else fmaf(-step, f32(steps - i - 1), end)
                     for i in range(steps)], np.float32)


def dynamic_map_numpy():
    data = []
    for i in range(7):
        b = torch_linspace_f32(2 ** i + 1)
        means = (b[:-1] + b[1:]) / f32(2.0)
        p = f32(10 ** (-6 + i))
        data += list((p * means).astype(np.float32))
        data += list((-p * means).astype(np.float32))
    data += [f32(0.0), f32(1.0)]
    return np.sort(np.array(data, np.float32))


def dynamic_map_bnb_torch():
    """bnb functional.create_dynamic_map, verbatim logic, run on torch (None without torch)."""
    try:
        import torch
    except Exception:
        return None
    data = []
    non_sign_bits, max_exponent_bits = 7, 7
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data.append(0)
    data.append(1.0)
    data.sort()
    return torch.tensor(data, dtype=torch.float32).numpy()


# ---------------- 4-bit quantize / double quant ----------------
def blocks_absmax(x, B):
    n = x.size
    nb = (n + B - 1) // B
    pad = np.zeros(nb * B, np.float32)
    pad[:n] = np.abs(x)
    return pad.reshape(nb, B).max(axis=1).astype(np.float32)


def quantize_4bit(x, B, qtype):
    n = x.size
    absmax = blocks_absmax(x, B)
    a = np.repeat(absmax, B)[:n]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (f32(1.0) / a).astype(np.float32)
        v = (x * r).astype(np.float32)
    if qtype == "nf4":
        q = np.searchsorted(NF4_TH, v, side="left").astype(np.uint8)
        zero = 7
    else:
        q = FP4_RANK_CODE[np.searchsorted(FP4_TH, np.abs(v), side="left")] + np.where(v < 0, 8, 0).astype(np.uint8)
        zero = 0
    q[a == 0] = zero
    if n % 2:
        q = np.concatenate([q, np.zeros(1, np.uint8)])
    packed = ((q[0::2] << 4) | q[1::2]).astype(np.uint8)
    return packed, absmax


def cuda_dquantize(dmap, x):
    """bnb csrc/kernels.cu dQuantize<0> (kQuantizeBlockwise, General8bit), vectorized: binary search from pivot
    127 over 7 halvings, then pivot vs the bracketing entry against the f32 midpoint (a + b) * 0.5f, strict
    comparisons (a tie keeps the pivot). NaN (an all-zero block) walks down to index 0."""
    x = np.asarray(x, np.float32)
    pivot = np.full(x.shape, 127)
    lo_p, up_p = np.zeros(x.shape, int), np.full(x.shape, 255)
    lower, upper = np.full(x.shape, f32(-1)), np.full(x.shape, f32(1))
    val = dmap[pivot]
    i = 64
    while i > 0:
        g = x > val
        lo_p, lower = np.where(g, pivot, lo_p), np.where(g, val, lower)
        up_p, upper = np.where(g, up_p, pivot), np.where(g, upper, val)
        pivot = np.where(g, pivot + i, pivot - i)
        val = dmap[pivot]
        i >>= 1
    upper = np.where(up_p == 255, dmap[255], upper)
    lower = np.where(lo_p == 0, dmap[0], lower)
    g = x > val
    mid_u = ((upper + val).astype(np.float32) * f32(0.5)).astype(np.float32)
    mid_l = ((lower + val).astype(np.float32) * f32(0.5)).astype(np.float32)
    return np.where(g, np.where(x > mid_u, up_p, pivot), np.where(x < mid_l, lo_p, pivot)).astype(np.uint8)


def quantize_blockwise_8bit(x, dmap, B=256):
    """bnb's CUDA kQuantizeBlockwise (what users' checkpoints are made with; bnb's own CPU path, a 65536-bin
    lookup table, differs near midpoints: tests/oracle/test_quant_bnb.py, docs/quantization.md):
    v = x * f32(1/absmax2), code = dQuantize<0>(v); zero 256-block: 0 * inf = NaN -> index 0."""
    n = x.size
    a2 = blocks_absmax(x, B)
    a = np.repeat(a2, B)[:n]
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (x * (f32(1.0) / a).astype(np.float32)).astype(np.float32)
    q = cuda_dquantize(dmap, v)
    q[a == 0] = 0
    return q, a2


def reference(x, B, qtype, dq, dmap):
    packed, absmax = quantize_4bit(x, B, qtype)
    out = {"packed": packed}
    if dq:
        offset = f32(math.fsum(absmax.astype(np.float64).tolist()) / absmax.size)
        q8, a2 = quantize_blockwise_8bit((absmax - offset).astype(np.float32), dmap)
        out.update(absmax=q8, nested_absmax=a2, offset=np.array([offset], np.float32))
        dec = ((dmap[q8] * np.repeat(a2, 256)[:q8.size]).astype(np.float32) + offset).astype(np.float32)
    else:
        out["absmax"] = absmax
        dec = absmax
    n = x.size
    q = np.empty(packed.size * 2, np.uint8)
    q[0::2], q[1::2] = packed >> 4, packed & 15
    table = NF4 if qtype == "nf4" else FP4
    out["dequant"] = (table[q[:n]] * np.repeat(dec, B)[:n]).astype(np.float32)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    seed = int(os.environ.get("LF_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    os.makedirs(a.workdir, exist_ok=True)
    tool = os.path.join(os.path.dirname(os.path.abspath(a.bin)), "quant_tool")
    passed = failed = 0

    def check(ok, msg):
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
            print(f"FAIL {msg}")

    # dynamic map: C vs numpy emulation (vs bnb-on-torch, informational + checked when torch imports)
    mpath = os.path.join(a.workdir, "map.f32")
    p = subprocess.run([tool, "map", mpath], capture_output=True, text=True)
    if p.returncode:
        print(f"FAIL quant_tool map: {p.stderr}")
        print(f"{passed} passed, {failed + 1} failed")
        return 1
    cmap = np.fromfile(mpath, np.float32)
    dmap = dynamic_map_numpy()
    check(np.array_equal(cmap.view(np.uint32), dmap.view(np.uint32)),
          f"dynamic map: {int(np.sum(cmap != dmap))} entries differ from the numpy emulation")
    tmap = dynamic_map_bnb_torch()
    if tmap is not None:
        nd = int(np.sum(tmap != cmap))
        print(f"dynamic map vs bnb create_dynamic_map on this torch: {nd} of 256 entries differ")
        check(nd == 0, "dynamic map differs from bnb's algorithm run on this torch (torch build dependent: "
              "docs/quantization.md)")
    else:
        print("dynamic map vs torch: skipped (torch not importable)")

    blocksizes = [32, 64, 128, 256, 512, 1024, 2048, 4096]
    cases = []
    for B in blocksizes:
        for _ in range(3):
            rows = int(rng.integers(1, 40))
            cols = int(rng.integers(1, 3 * B))
            cases.append((rows, cols, B))
    cases += [(1, 1, 64), (1, 63, 64), (3, 5, 32), (512, 300, 64), (1, 4097, 4096), (700, 800, 64)]
    n_cases = 0
    for ci, (rows, cols, B) in enumerate(cases):
        n = rows * cols
        kind = ci % 4
        x = (rng.standard_normal(n) * np.exp(rng.uniform(-6, 2))).astype(np.float32)
        if kind == 1 and n > B:  # an all-zero block
            x[:B] = 0
        if kind == 2:  # exact thresholds and neighbours with absmax 1 (scale 1)
            th = np.concatenate([NF4_TH, FP4_TH, -FP4_TH, NF4])
            th = np.concatenate([th, np.nextafter(th, f32(2)), np.nextafter(th, f32(-2))])
            k = min(n, th.size)
            x[:k] = th[rng.integers(0, th.size, k)]
            x[::B] = 1.0
        if kind == 3:  # constant tensor: every absmax equal, nested blocks all zero
            x[:] = f32(0.5)
        inp = os.path.join(a.workdir, "x.f32")
        x.tofile(inp)
        for qtype in ("nf4", "fp4"):
            for dq in (0, 1):
                pre = os.path.join(a.workdir, f"out_{qtype}_{dq}")
                p = subprocess.run([tool, "quant", inp, str(rows), str(cols), str(B), qtype, str(dq), pre],
                                   capture_output=True, text=True)
                tag = f"[{rows}x{cols} B={B} {qtype} dq={dq}]"
                if p.returncode:
                    check(False, f"{tag} quant_tool: {p.stderr.strip()}")
                    continue
                ref = reference(x, B, qtype, dq, dmap)
                n_cases += 1
                for key, dt in (("packed", np.uint8), ("absmax", np.uint8 if dq else np.float32),
                                ("nested_absmax", np.float32), ("offset", np.float32), ("dequant", np.float32)):
                    if key not in ref:
                        continue
                    ours = np.fromfile(pre + "." + key, dt)
                    want = ref[key].astype(dt)
                    same = ours.shape == want.shape and np.array_equal(ours.view(np.uint8), want.view(np.uint8))
                    if not same and ours.shape == want.shape:
                        bad = np.flatnonzero(ours.view(np.uint8 if dt == np.uint8 else np.uint32) !=
                                             want.view(np.uint8 if dt == np.uint8 else np.uint32))
                        check(False, f"{tag} {key}: {bad.size} differ, first at {bad[0]}: ours {ours[bad[0]]!r} "
                                     f"ref {want[bad[0]]!r}")
                    else:
                        check(same, f"{tag} {key}: shape ours {ours.shape} ref {want.shape}")
    print(f"{n_cases} tool runs over {len(cases)} tensors, blocksizes {blocksizes}, nf4/fp4, with/without double quant")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
