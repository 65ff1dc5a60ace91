#!/usr/bin/env python3
"""Oracle: our AdamW + lr schedules + gradient clipping (finetune/optim.c, finetune/schedule.c, run through
tests/tools/optim_tool) against torch.optim.AdamW(foreach=False) + transformers.get_scheduler +
torch.nn.utils.clip_grad_norm_ on the same data, step by step; and the loss plot's smoothing against
LLaMA-Factory's smooth(), and the SVG against a real XML parser.

Tolerances and why:
  - lr schedules: 0 ulp. Both sides evaluate the same lambda in f64 in the same operation order with the same
    libm (glibc cos/pow/sqrt/fmod, called by Python's math module and by our C).
  - AdamW without clipping, exp_avg / exp_avg_sq: expected 0 ulp (bit-identical): same f32 operations in the
    same order, including torch 2.x's fused multiply-adds in exp_avg.lerp_ (ATen's lerp: fma(w, end - self,
    self) for |w| < 0.5) and exp_avg_sq.addcmul_ (its vector kernels contract a*b+c, we call fmaf). Allowed:
    2 ulp, so a future torch kernel that rounds one of them separately is reported, not hidden.
  - AdamW without clipping, parameters: torch's CPU sqrt (MKL VML, test_torch_sqrt prints the measured rate)
    is not correctly rounded: about 20% of results are 1 ulp off the IEEE sqrtf we use. That enters only the
    denominator, so only the parameters: sqrt 1 ulp -> q = sqrt/bc2_sqrt <= 2 ulp (one more rounding) ->
    d = q + eps <= 3 -> upd = num/d <= 5 ulp of upd (one more rounding) < 6 * 2^-23 * |upd| relative; and
    p = p*decay + upd can round to the other neighbour once the inputs differ (1 ulp of p per step), while an
    earlier difference is carried times decay <= 1. So step s allows
    2 ulp(p_s) + sum_{k<=s} (6 * 2^-23 * |upd_k| + ulp(p_k)), |upd_k| = |p_k - p_{k-1} * decay_k| from torch.
  - clipping active: torch's total norm is an f32-accumulated sum (a few to tens of ulps from the true norm
    for N in the thousands); ours is an f64 sum rounded once. So norms agree to NORM_RTOL = 2e-5 relative
    (measured < 40 ulp = 5e-6 at N = 3e5), the clipping coefficients likewise, and parameters to
    2 ulp + 8 * NORM_RTOL * sum(lr so far) (+ the sqrt term below): a relative error d in g moves m by d*|m| and v by 2d*v, so the
    Adam direction m_hat / (sqrt(v_hat) + eps) by at most ~2d times its size, which is at most ~3.2 for
    betas (0.9, 0.999) ((1 - b1) / sqrt(1 - b2)), so each step's update by <= 8 * d * lr.
  - our norm vs the exactly rounded norm (f64 sum in NumPy): <= 1 f32 ulp (both round a ~1e-16-accurate f64 sum).
  - smoothing: exact (same f64 expression order, same exp).
Seed: LF_TEST_SEED or time, printed."""
import argparse
import math
import os
import struct
import subprocess
import sys
import time
import warnings
import xml.etree.ElementTree as ET
from types import SimpleNamespace

try:
    import numpy as np
    import torch
    import transformers
    from transformers import TrainingArguments
except Exception as e:  # pragma: no cover
    print(f"FAIL: cannot import numpy/torch/transformers: {e}")
    print("0 passed, 1 failed")
    sys.exit(1)

warnings.filterwarnings("ignore")
f32 = np.float32
NORM_RTOL = 2e-5
ADAM_ULP_TOL = 2

passed = failed = 0


def check(cond, msg):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {msg}")


def ulps32(a, b):
    """elementwise ulp distance between two f32 arrays (monotone integer mapping; NaN == NaN is 0)."""
    a = np.ascontiguousarray(a, dtype=f32).view(np.int32).astype(np.int64)
    b = np.ascontiguousarray(b, dtype=f32).view(np.int32).astype(np.int64)
    a = np.where(a < 0, -(a & 0x7FFFFFFF), a)
    b = np.where(b < 0, -(b & 0x7FFFFFFF), b)
    return np.abs(a - b)


def ulps64(a, b):
    a = np.ascontiguousarray(a, dtype=np.float64).view(np.int64).astype(object)
    b = np.ascontiguousarray(b, dtype=np.float64).view(np.int64).astype(object)
    m = lambda x: -(x & 0x7FFFFFFFFFFFFFFF) if x < 0 else x
    return max([abs(m(x) - m(y)) for x, y in zip(a, b)] or [0])


def ulp32(x):
    x = np.abs(np.asarray(x, dtype=f32))
    return np.nextafter(x, f32(np.inf)) - x


# ------------------------------------------------------------------------------------------------ schedules
def hf_warmup(W, R, T):
    """warmup steps for loraforge's warmup_steps=W / warmup_ratio=R (LLaMA-Factory's keys, transformers 4.x meaning:
    W > 0 wins, else ceil(T * R)). transformers 5 removed TrainingArguments.warmup_ratio: a float warmup_steps < 1
    is the ratio (same ceil(T * R), 100 * 0.07 -> 8 quirk included), so R < 1 goes through v5's own
    get_warmup_steps as warmup_steps=R. v5 reads a float >= 1 as a step count and cannot express the ratio 1.0:
    there the 4.x formula ceil(T * R) is the reference."""
    if W > 0 or R == 0:
        return TrainingArguments.get_warmup_steps(SimpleNamespace(warmup_steps=W), T)
    if R < 1:
        return TrainingArguments.get_warmup_steps(SimpleNamespace(warmup_steps=R), T)
    return math.ceil(T * R)


def hf_lrs(name, base_lr, W, T, count, kwargs):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=base_lr)
    if name == "inverse_sqrt" and "timescale" in kwargs:
        # get_scheduler does not forward scheduler_specific_kwargs to inverse_sqrt (4.44): call it directly
        sch = transformers.get_inverse_sqrt_schedule(opt, W, timescale=kwargs["timescale"])
    else:
        sch = transformers.get_scheduler(name, opt, num_warmup_steps=W, num_training_steps=T,
                                         scheduler_specific_kwargs=dict(kwargs))
    out = []
    for _ in range(count):
        out.append(opt.param_groups[0]["lr"])
        sch.step()
    return out


KW_FLAG = {"num_cycles": "--num-cycles", "lr_end": "--lr-end", "power": "--power", "timescale": "--timescale",
           "min_lr": "--min-lr", "min_lr_rate": "--min-lr-rate", "num_stable_steps": "--stable",
           "num_decay_steps": "--decay", "min_lr_ratio": "--min-lr-ratio"}


def kw_args(kwargs):
    out = []
    for k, v in kwargs.items():
        out += [KW_FLAG[k], repr(v)]
    return out


def run_tool(tool, args):
    return subprocess.run([tool] + [str(a) for a in args], capture_output=True, text=True)


def test_schedules(tool, wd):
    types = {
        "linear": [{}],
        "cosine": [{}, {"num_cycles": 1.5}],
        "cosine_with_restarts": [{}, {"num_cycles": 3}],
        "polynomial": [{}, {"lr_end": 1e-5, "power": 2.0}, {"power": 0.5}],
        "constant": [{}],
        "constant_with_warmup": [{}],
        "inverse_sqrt": [{}, {"timescale": 7}],
        "cosine_with_min_lr": [{"min_lr": 1e-6}, {"min_lr_rate": 0.1}],
        "warmup_stable_decay": [{"num_stable_steps": 6, "num_decay_steps": 8},
                                {"num_stable_steps": 0, "num_decay_steps": 13, "min_lr_ratio": 0.1, "num_cycles": 0.5}],
    }
    # (warmup_steps, warmup_ratio, num_training_steps): 100 * 0.07 = 7.000000000000001 -> ceil 8 (HF quirk);
    # warmup_steps > 0 wins over the ratio; warmup longer than training; one step; W == T.
    shapes = [(0, 0.0, 20), (5, 0.0, 20), (0, 0.1, 30), (0, 0.03, 1000), (3, 0.5, 10), (0, 0.0, 1), (25, 0.0, 10),
              (10, 0.0, 10), (0, 0.07, 57), (0, 1.0, 9), (0, 0.07, 100)]
    lrs_base = [1e-3, 3e-4, 5e-5, 2e-5]
    n_cmp = 0
    worst = {}
    for name, kwl in types.items():
        worst[name] = 0
        for kw in kwl:
            for i, (W, R, T) in enumerate(shapes):
                base = lrs_base[(i + len(kw)) % len(lrs_base)]
                tag = f"sched {name} {kw} W={W} R={R} T={T} lr={base}"
                Wr = hf_warmup(W, R, T)
                count = T + 4
                out = os.path.join(wd, "lrs.f64")
                args = ["sched", name, count, out, "--lr", repr(base), "--warmup", W, "--warmup-ratio", repr(R),
                        "--total", T] + kw_args(kw)
                if name == "polynomial" and Wr == T:
                    # transformers divides by zero at step T (ZeroDivisionError); we refuse up front
                    try:
                        hf_lrs(name, base, Wr, T, count, kw)
                        hf_ok = True
                    except ZeroDivisionError:
                        hf_ok = False
                    p = run_tool(tool, args)
                    check(not hf_ok and p.returncode == 1 and "no decay steps" in p.stderr,
                          f"{tag}: HF ok={hf_ok}, ours rc={p.returncode} {p.stderr.strip()}")
                    continue
                ref = hf_lrs(name, base, Wr, T, count, kw)
                p = run_tool(tool, args)
                if p.returncode != 0:
                    check(False, f"{tag}: optim_tool failed: {p.stderr.strip()}")
                    continue
                check(p.stdout.strip() == f"warmup_steps={Wr}", f"{tag}: warmup {p.stdout.strip()} vs HF {Wr}")
                ours = np.fromfile(out, dtype=np.float64)
                u = ulps64(ours, np.array(ref, dtype=np.float64))
                worst[name] = max(worst[name], u)
                n_cmp += count
                check(len(ours) == count and u == 0,
                      f"{tag}: max {u} ulp; first diffs " +
                      str([(k, ours[k], ref[k]) for k in range(count) if ours[k] != ref[k]][:3]))
    print(f"schedules: {n_cmp} lr values over {sum(len(v) for v in types.values())} type/kwargs x {len(shapes)} "
          f"warmup/total shapes; max ulp per type: {worst}")

    # errors transformers raises and we refuse with a message
    err_cases = [
        ("polynomial", {"lr_end": 1e-3}, 1e-3, ValueError),      # lr_end must be smaller than the lr
        ("cosine_with_min_lr", {}, 1e-3, ValueError),            # one of min_lr / min_lr_rate required
        ("cosine_with_min_lr", {"min_lr": 1e-6, "min_lr_rate": 0.1}, 1e-3, ValueError),
    ]
    for name, kw, base, exc in err_cases:
        try:
            hf_lrs(name, base, 2, 10, 12, kw)
            hf_raised = False
        except exc:
            hf_raised = True
        p = run_tool(tool, ["sched", name, 12, os.path.join(wd, "e.f64"), "--lr", repr(base), "--warmup", 2,
                            "--total", 10] + kw_args(kw))
        check(hf_raised and p.returncode == 1 and p.stderr.strip(), f"error parity {name} {kw}: HF raised {hf_raised}, "
              f"ours rc={p.returncode} '{p.stderr.strip()}'")
    p = run_tool(tool, ["sched", "reduce_lr_on_plateau", 3, os.path.join(wd, "e.f64")])
    check(p.returncode == 1 and "not supported" in p.stderr, f"reduce_lr_on_plateau: {p.returncode} {p.stderr}")
    p = run_tool(tool, ["sched", "cosine_typo", 3, os.path.join(wd, "e.f64")])
    check(p.returncode == 1 and "unknown lr_scheduler_type" in p.stderr, f"unknown name: {p.returncode} {p.stderr}")


# ------------------------------------------------------------------------------------------------ AdamW
def test_torch_sqrt(rng):
    """the one known difference: torch's f32 sqrt vs the correctly rounded one (NumPy's, = our sqrtf). The
    parameter tolerance below assumes it is at most 1 ulp off; a larger error fails here, not as a mystery."""
    x = rng.random(100003).astype(f32) * f32(10.0)
    t = torch.from_numpy(x).sqrt().numpy()
    u = ulps32(t, np.sqrt(x))
    print(f"torch sqrt vs IEEE sqrtf: {100.0 * np.mean(u > 0):.1f}% of 100003 values differ, max {int(u.max())} ulp")
    check(int(u.max()) <= 1, f"torch sqrt is {int(u.max())} ulp off IEEE (the AdamW parameter bound assumes <= 1)")


def torch_run(p0, grads, c, record_state_at=None):
    S = grads.shape[0]
    p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.AdamW([p], lr=c["lr"], betas=(c["beta1"], c["beta2"]), eps=c["eps"], weight_decay=c["wd"],
                            foreach=False)
    T = c.get("total", S)
    W = hf_warmup(c.get("warmup", 0), c.get("warmup_ratio", 0.0), T)
    sch = transformers.get_scheduler(c["sched"], opt, num_warmup_steps=W, num_training_steps=T,
                                     scheduler_specific_kwargs=dict(c.get("kw", {})))
    params, norms, lrs, state = [], [], [], None
    for s in range(S):
        p.grad = torch.from_numpy(grads[s].copy())
        if c.get("max_norm", 0) > 0:
            norms.append(f32(torch.nn.utils.clip_grad_norm_([p], c["max_norm"]).item()))
        else:
            norms.append(f32(np.nan))
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
        params.append(p.detach().numpy().copy())
        if record_state_at == s + 1:
            st = opt.state[p]
            state = (st["exp_avg"].numpy().copy(), st["exp_avg_sq"].numpy().copy(), float(st["step"]))
    st = opt.state[p]
    return np.stack(params), np.array(norms, f32), np.array(lrs), st["exp_avg"].numpy().copy(), \
        st["exp_avg_sq"].numpy().copy(), state


def tool_run(tool, wd, tag, p0, grads, c, threads=1, resume_at=None, simd=1):
    S, N = grads.shape
    pre = os.path.join(wd, tag)
    p0.astype(f32).tofile(pre + ".p0")
    grads.astype(f32).tofile(pre + ".g")
    args = ["adamw", N, S, pre + ".p0", pre + ".g", pre, "--lr", repr(c["lr"]), "--beta1", repr(c["beta1"]),
            "--beta2", repr(c["beta2"]), "--eps", repr(c["eps"]), "--wd", repr(c["wd"]), "--sched", c["sched"],
            "--warmup", c.get("warmup", 0), "--warmup-ratio", repr(c.get("warmup_ratio", 0.0)),
            "--total", c.get("total", S), "--max-norm", repr(c.get("max_norm", 0.0)), "--threads", threads,
            "--simd", simd]
    args += kw_args(c.get("kw", {}))
    if resume_at:
        args += ["--resume-at", resume_at]
    p = run_tool(tool, args)
    if p.returncode != 0:
        return None, p.stderr.strip()
    r = lambda sfx, dt: np.fromfile(pre + sfx, dtype=dt)
    return dict(params=r(".params", f32).reshape(S, N), m=r(".m", f32), v=r(".v", f32), norms=r(".norms", f32),
                coef=r(".coef", f32), lrs=r(".lrs", np.float64), state=pre + ".state.safetensors"), ""


def make_grads(rng, S, N, scales):
    g = rng.standard_normal((S, N)).astype(f32)
    for s in range(S):
        g[s] *= f32(scales[s % len(scales)])
    return g


def test_adamw(tool, wd, rng):
    cases = [
        # name, N, S, config, grad scales per step, clip active
        ("linear_wd_tail", 1037, 12, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.01, sched="linear",
                                          warmup=3), [1.0, 0.3, 2.0]),
        ("cosine_ratio_betas", 4101, 10, dict(lr=5e-4, beta1=0.95, beta2=0.98, eps=1e-6, wd=0.1, sched="cosine",
                                              warmup_ratio=0.2), [0.01, 1.0, 100.0]),
        ("one_param_const", 1, 6, dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.0, sched="constant"), [1.0]),
        ("aligned_poly", 4096, 8, dict(lr=2e-4, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.05, sched="polynomial",
                                       warmup=2, kw={"power": 2.0}), [3.0, 1e-3]),
        ("clip_linear", 5003, 12, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.01, sched="linear", warmup=2,
                                       max_norm=1.0), [1.0 / 70, 0.1, 1.0 / 71.0, 0.005]),
        ("clip_restarts_big", 200003, 3, dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.0,
                                              sched="cosine_with_restarts", warmup=1, total=3, max_norm=50.0),
         [0.05, 1.0, 0.2]),
    ]
    for name, N, S, c, scales in cases:
        p0 = rng.standard_normal(N).astype(f32)
        grads = make_grads(rng, S, N, scales)
        if name == "linear_wd_tail":  # zeros, tiny (v underflows to subnormal) and huge entries
            grads[:, :7] = np.array([0.0, 1e-20, -1e-20, 1e10, -3e9, 1e-38, 0.0], f32)
        clip = c.get("max_norm", 0) > 0
        resume = S // 2 if name in ("linear_wd_tail", "clip_linear") else None
        tp, tn, tl, tm, tv, tstate = torch_run(p0, grads, c, record_state_at=resume)
        outs = {}
        for threads in (1, 3):
            # 1 thread with the AVX2 loop (where the CPU has it) vs 3 threads on the scalar loop
            o, emsg = tool_run(tool, wd, f"{name}_t{threads}", p0, grads, c, threads=threads, resume_at=resume,
                               simd=1 if threads == 1 else 0)
            if o is None:
                check(False, f"adamw {name} threads={threads}: optim_tool failed: {emsg}")
                continue
            outs[threads] = o
        if len(outs) != 2:
            continue
        o = outs[1]
        check(all(np.array_equal(outs[1][k].view(np.uint8), outs[3][k].view(np.uint8))
                  for k in ("params", "m", "v", "norms", "coef", "lrs")),
              f"adamw {name}: 1 thread (SIMD) vs 3 threads (scalar) not bit-identical")
        check(ulps64(o["lrs"], tl) == 0, f"adamw {name}: lr sequence differs from transformers")
        # our norm vs the exactly rounded f64 norm, and the coefficient formula applied to our norm
        exact = np.array([f32(np.sqrt(np.sum(grads[s].astype(np.float64) ** 2))) for s in range(S)], f32)
        check(int(ulps32(o["norms"], exact).max()) <= 1, f"adamw {name}: norm vs exact f64 norm "
              f"{int(ulps32(o['norms'], exact).max())} ulp")
        if clip:
            want_coef = np.minimum((f32(1) / (o["norms"] + f32(1e-6))) * f32(c["max_norm"]), f32(1))
            check(np.array_equal(o["coef"], want_coef), f"adamw {name}: clip coef formula")
            nrel = float(np.max(np.abs(o["norms"].astype(np.float64) - tn) / tn))
            check(nrel <= NORM_RTOL, f"adamw {name}: total_norm rel diff {nrel:.3g} > {NORM_RTOL}")
            n_clipped = int(np.sum(o["coef"] < 1))
            check(0 < n_clipped < S or S < 4, f"adamw {name}: clipping active in {n_clipped} of {S} steps (test data "
                  "should mix clipped and unclipped steps)")
            print(f"adamw {name}: total_norm max rel diff vs torch {nrel:.3g} ({int(ulps32(o['norms'], tn).max())} ulp), "
                  f"clipped in {n_clipped} of {S} steps")
        lr_cum = np.cumsum(tl)
        sqrt_cum = np.zeros(N)
        worst_ulp, worst_rel = 0, 0.0
        lines = []
        for s in range(S):
            a, b = o["params"][s], tp[s]
            u = int(ulps32(a, b).max())
            rel = float(np.max(np.abs(a.astype(np.float64) - b) / np.maximum(np.abs(b.astype(np.float64)), 1e-30)))
            worst_ulp, worst_rel = max(worst_ulp, u), max(worst_rel, rel)
            lines.append(f"{s + 1}:{u}ulp/{rel:.2g}")
            prev = tp[s - 1] if s > 0 else p0
            decay = f32(1.0 - tl[s] * c["wd"])
            upd = np.abs(b.astype(np.float64) - (prev * decay).astype(np.float64))
            sqrt_cum = sqrt_cum + 6 * 2.0 ** -23 * upd + ulp32(b).astype(np.float64)
            if clip:
                tol = 2 * ulp32(b).astype(np.float64) + 8 * NORM_RTOL * lr_cum[s] + sqrt_cum
                bad = np.abs(a.astype(np.float64) - b) > tol
                check(not bad.any(), f"adamw {name} step {s + 1}: {int(bad.sum())} params beyond tolerance, max abs "
                      f"{np.max(np.abs(a.astype(np.float64) - b)):.3g}")
            else:
                tol = 2 * ulp32(b).astype(np.float64) + sqrt_cum
                bad = np.abs(a.astype(np.float64) - b) > tol
                check(not bad.any(), f"adamw {name} step {s + 1}: {int(bad.sum())} params beyond the sqrt-rounding "
                      f"bound, max abs {np.max(np.abs(a.astype(np.float64) - b)):.3g}")
        if not clip:
            check(int(ulps32(o["m"], tm).max()) <= ADAM_ULP_TOL and int(ulps32(o["v"], tv).max()) <= ADAM_ULP_TOL,
                  f"adamw {name}: final m/v ulp {int(ulps32(o['m'], tm).max())}/{int(ulps32(o['v'], tv).max())}")
        print(f"adamw {name}: N={N} steps={S} clip={'on' if clip else 'off'} resume_at={resume} "
              f"max ulp {worst_ulp}, max rel {worst_rel:.3g}; per step (ulp/rel): {' '.join(lines)}")
        if resume:
            from safetensors.numpy import load_file
            st = load_file(o["state"])
            check(sorted(st) == ["exp_avg", "exp_avg_sq", "step"] and st["exp_avg"].dtype == np.float32
                  and st["exp_avg"].shape == (N,) and st["step"].dtype == np.int64 and st["step"].shape == ()
                  and int(st["step"]) == resume, f"adamw {name}: state file layout {[(k, v.dtype, v.shape) for k, v in st.items()]}")
            if tstate is not None and not clip:
                check(int(ulps32(st["exp_avg"], tstate[0]).max()) <= ADAM_ULP_TOL
                      and int(ulps32(st["exp_avg_sq"], tstate[1]).max()) <= ADAM_ULP_TOL and tstate[2] == resume,
                      f"adamw {name}: saved state vs torch state at step {resume}")


# ------------------------------------------------------------------------------------------------ plot
def llamafactory_smooth(scalars):
    """LLaMA-Factory src/llamafactory/extras/ploting.py smooth() (TensorBoard-style EMA)."""
    if len(scalars) == 0:
        return []
    last = scalars[0]
    smoothed = []
    weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(scalars))) - 0.5)  # a sigmoid function
    for next_val in scalars:
        smoothed_val = last * weight + (1 - weight) * next_val
        smoothed.append(smoothed_val)
        last = smoothed_val
    return smoothed


def write_pairs(path, steps, vals):
    with open(path, "wb") as f:
        for s, v in zip(steps, vals):
            f.write(struct.pack("<dd", float(s), float(v)))


def svg_check(tool, wd, tag, steps, loss, esteps=None, eloss=None, want_log=False):
    tp, ep, out = (os.path.join(wd, f"{tag}.{x}") for x in ("train", "eval", "svg"))
    write_pairs(tp, steps, loss)
    args = ["plot", out, tp, "-", "--title", f"training loss of <{tag}> & co"]
    if esteps is not None:
        write_pairs(ep, esteps, eloss)
        args[3] = ep
    p = run_tool(tool, args)
    if p.returncode != 0:
        check(False, f"plot {tag}: optim_tool failed: {p.stderr.strip()}")
        return
    try:
        root = ET.parse(out).getroot()
    except ET.ParseError as e:
        check(False, f"plot {tag}: not well-formed XML: {e}")
        return
    ns = "{http://www.w3.org/2000/svg}"
    check(root.tag == ns + "svg" and root.get("viewBox") == "0 0 640 480", f"plot {tag}: root {root.tag}")
    texts = ["".join(t.itertext()) for t in root.iter(ns + "text")]
    check("step" in texts and ("loss (log scale)" if want_log else "loss") in texts, f"plot {tag}: axis titles {texts}")
    check(f"training loss of <{tag}> & co" in texts, f"plot {tag}: escaped title missing")
    n_fin = int(np.sum(np.isfinite(loss)))
    n_efin = int(np.sum(np.isfinite(eloss))) if eloss is not None else 0
    paths = {p.get("class"): p.get("d") for p in root.iter(ns + "path")}
    if n_fin:
        check("original" in texts and "smoothed" in texts, f"plot {tag}: legend {texts}")
        d = paths.get("original", "")
        pts = d.replace("M", " ").replace("L", " ").split()
        check(d.startswith("M") and d.count("L") == n_fin - 1 and len(pts) == 2 * n_fin,
              f"plot {tag}: original path has {d.count('L') + 1} points, want {n_fin}")
        xy = np.array(pts, dtype=np.float64).reshape(-1, 2)
        check(np.all(np.isfinite(xy)) and xy[:, 0].min() >= 80 - 1e-6 and xy[:, 0].max() <= 610 + 1e-6
              and xy[:, 1].min() >= 50 - 1e-6 and xy[:, 1].max() <= 410 + 1e-6, f"plot {tag}: points outside the plot area")
        check("smoothed" in paths, f"plot {tag}: no smoothed path")
    else:
        check("no data" in texts or n_efin, f"plot {tag}: empty plot lacks 'no data'")
    if n_efin:
        check("eval" in paths and "eval" in texts, f"plot {tag}: eval series/legend missing")
    skipped = len(loss) - n_fin + ((len(eloss) - n_efin) if eloss is not None else 0)
    if skipped:
        check(any(t.startswith(f"{skipped} non-finite") for t in texts), f"plot {tag}: skipped note {texts}")
    n_ticks = sum(1 for t in texts if t not in ("step", "loss", "loss (log scale)", "original", "smoothed", "eval")
                  and not t.startswith("training loss") and "non-finite" not in t and t != "no data")
    check(n_ticks >= 4, f"plot {tag}: only {n_ticks} tick labels")


def test_plot(tool, wd, rng):
    n_smooth = 0
    for n in (1, 2, 7, 100, 1000):
        x = (rng.standard_normal(n) * 0.3 + np.linspace(3, 1, n)).astype(np.float64)
        x.tofile(os.path.join(wd, "sm.in"))
        p = run_tool(tool, ["smooth", os.path.join(wd, "sm.in"), os.path.join(wd, "sm.out")])
        ours = np.fromfile(os.path.join(wd, "sm.out"), dtype=np.float64) if p.returncode == 0 else np.zeros(0)
        ref = np.array(llamafactory_smooth(list(x)), dtype=np.float64)
        check(len(ours) == n and ulps64(ours, ref) == 0, f"smooth n={n}: max {ulps64(ours, ref) if len(ours) == n else '?'} ulp")
        n_smooth += n
    print(f"smooth: {n_smooth} values vs LLaMA-Factory smooth(), exact")
    steps = np.arange(1, 61) * 5
    loss = 2.5 * np.exp(-steps / 100.0) + 0.1 * rng.random(60)
    loss[[7, 30]] = np.nan
    loss[12] = np.inf
    svg_check(tool, wd, "train_eval", steps, loss, steps[9::10], loss[9::10] * 0 + 1.3)
    svg_check(tool, wd, "empty", [], np.zeros(0))
    svg_check(tool, wd, "one", [10], np.array([1.25]))
    svg_check(tool, wd, "flat", np.arange(1, 11), np.full(10, 0.693))
    svg_check(tool, wd, "huge", [1, 2, 3, 4], np.array([1e300, -1e300, 5.0, 1.7e308]))
    svg_check(tool, wd, "logscale", [1, 2, 3, 4, 5], np.array([1e6, 1e3, 10.0, 1.0, 0.01]), want_log=True)
    svg_check(tool, wd, "allnan", [1, 2], np.array([np.nan, np.inf]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    tool = os.path.join(os.path.dirname(os.path.abspath(a.bin)), "optim_tool")
    seed = int(os.environ.get("LF_TEST_SEED", int(time.time()) % 1000000))
    print(f"seed {seed} (LF_TEST_SEED); torch {torch.__version__}, transformers {transformers.__version__}")
    rng = np.random.default_rng(seed)
    if not os.path.exists(tool):
        print(f"FAIL: {tool} not built")
        print("0 passed, 1 failed")
        sys.exit(1)
    torch.set_num_threads(1)
    test_torch_sqrt(rng)
    test_schedules(tool, a.workdir)
    test_adamw(tool, a.workdir, rng)
    test_plot(tool, a.workdir, rng)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
