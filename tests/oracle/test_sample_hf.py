#!/usr/bin/env python3
"""Oracle: the serving sampler (serve/sample.c, run through tests/tools/sample_tool) against Hugging Face
transformers' own logits processors on the same rows: RepetitionPenaltyLogitsProcessor, then the vLLM/OpenAI
presence and frequency penalties, then TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
MinPLogitsWarper, TypicalLogitsWarper (the order generate() applies the warpers, each only when generate would
add it), then torch.softmax; and greedy against torch.argmax of the penalised scores.

Presence/frequency penalties: transformers has no processor for them, so the reference is vLLM's own formula
(vllm/model_executor/layers/utils.py apply_penalties) written directly in torch f32 on the same scores, after
the repetition penalty: counts = bincount of the GENERATED ids (history[n_prompt:], in-range ids only),
scores -= frequency * counts, then scores -= presence * (counts > 0).

Cases: random rows (V 1..32000; normal, ties on a coarse grid, -inf, NaN, huge +-1e30, peaked, one token far
above a cluster), histories with
duplicates and out-of-range ids, every parameter kind (temperature, top_k incl. 1 / V-1 / V / > V / at a tie,
top_p incl. tiny, 1 - 1e-9 and edge values that sit exactly on a cumulative sum), and greedy.
NaN logits are -inf in our contract (torch would propagate NaN), so the HF side gets them as -inf.

What must match and why:
  - greedy id: exactly (argmax of bit-identical f32 penalised scores: both do the penalty and the temperature
    in f32 with the scalar rounded to f32; first index on ties).
  - kept set (tokens with probability > 0 vs tokens HF did not mask to -inf): identical, with two allowances:
      * a kept token whose probability is below 2e-38 may be 0 on our side (our exp flushes below
        e^-87 = FLT_MIN);
      * rows whose top-p cut is numerically ambiguous: HF's cumulative sum (torch's f32 softmax, cumsum)
        within 3e-5 of f32(1 - top_p) (torch's f32 softmax is off from the exact one by up to 2.2e-5 relative,
        measured on 32000 tied logits, where f32 summation error does not average out), or a tie class
        straddling the cut with V > 16 (torch's CPU sort is std::sort: stable below 17 elements, unspecified
        among ties above; ours is the stable order). There the differing tokens must all be borderline or in
        that tie class. Rows built with exact probabilities (uniform over 2^j tokens, top_p = i / 2^j) get no
        allowance: the exact edge ("<=" drops the token on the cut) and the stable tie order must match.
  - probabilities of kept tokens, within 1e-5 relative (+1e-37 absolute: subnormals) of HF's final scores
    normalised in f64 (ours: f32 exp weights, ~1 ulp, f64 sums), and within 1e-4 relative of torch's own f32
    softmax of them (its f32 sum: up to 2.2e-5 off, see above). Ambiguous rows: the sorted kept probabilities
    (tied tokens carry equal probabilities), or with a borderline token in or out, the distributions
    renormalised over the common kept set.
  - log-probs of the alternatives: ids = the n largest raw logits (NaN = -inf), lowest id first on ties
    (NumPy lexsort); values within 1e-5 + 1e-6 * |lp| of the f64 log_softmax of the raw row, and within 1e-4
    of torch's f32 log_softmax.
  - the sampled token (our rng, one draw) lies in the kept set; all--inf rows give token 0 (our contract).
  - min_p: the kept sets may differ only at tokens whose exact weight exp(x - max) is within 1e-5 relative of
    min_p (torch compares f32 softmax probabilities, we compare f32 weights).
  - typical_p: only at tokens whose score |-log p - H| (torch's f32 values) is within 1e-5 relative (+1e-6) of
    the score at the cut, or whose score lies between the cuts that cum = f32(mass) -+ 3e-5 would give (torch's
    f32 cumsum vs our f64). When an earlier cut (top-p, min-p) of the row is ambiguous, typical_p sees another
    distribution on the two sides: then only "our kept set lies inside HF's set before typical_p" is checked.
    Rows built by hand (p = (4, 2, 1, 1) / 8 and the like) must match exactly.
Seed: LF_TEST_SEED or random, printed."""
import argparse
import os
import random
import struct
import subprocess
import sys
import warnings

try:
    import numpy as np
    import torch
    import transformers
    from transformers.generation.logits_process import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
                                                        TypicalLogitsWarper)
except Exception as e:  # pragma: no cover
    print(f"FAIL: cannot import numpy/torch/transformers: {e}")
    print("0 passed, 1 failed")
    sys.exit(1)

warnings.filterwarnings("ignore")
f32 = np.float32
NTOP = 20
TINY = 2e-38  # below e^-87: our weights flush to 0, torch's f32 softmax is subnormal
BAND = 3e-5   # top-p cut ambiguity band on HF's f32 cumulative sum (torch's f32 softmax: up to 2.2e-5 off)

passed = failed = 0


def check(cond, msg):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {msg}")


# ---------------------------------------------------------------------------------------------- cases
class Case:
    def __init__(self, tag, logits, hist, do_sample=1, temperature=1.0, top_k=0, top_p=1.0, rp=1.0, n_top=5,
                 exact=False, min_p=0.0, typical_p=1.0, pres=0.0, freq=0.0, n_prompt=0):
        self.tag, self.logits, self.hist = tag, np.asarray(logits, f32), [int(h) for h in hist]
        self.do_sample, self.temperature, self.top_k, self.top_p, self.rp = do_sample, temperature, top_k, top_p, rp
        self.n_top, self.exact = n_top, exact
        self.min_p, self.typical_p, self.pres, self.freq, self.n_prompt = min_p, typical_p, pres, freq, n_prompt
        self.seed = random.getrandbits(63)

    def desc(self):
        return (f"{self.tag} V={len(self.logits)} do_sample={self.do_sample} T={self.temperature} "
                f"top_k={self.top_k} top_p={self.top_p!r} rp={self.rp} min_p={self.min_p} typical_p={self.typical_p} "
                f"presence={self.pres} frequency={self.freq} n_prompt={self.n_prompt} n_hist={len(self.hist)}")


def gen_row(rng, V, kind):
    scale = rng.choice([0.3, 1.0, 3.0, 10.0])
    x = (rng.standard_normal(V) * scale).astype(f32)
    if kind == "ties":
        x = (rng.integers(0, 5, V) * 0.5).astype(f32)
    elif kind == "-inf":
        x[rng.random(V) < 0.2] = -np.inf
    elif kind == "nan":
        x[rng.random(V) < 0.1] = np.nan
        x[rng.random(V) < 0.1] = -np.inf
    elif kind == "huge":
        r = rng.random(V)
        x[r < 0.15] = f32(1e30)
        x[(r >= 0.15) & (r < 0.3)] = f32(-1e30)
    elif kind == "peaked":
        x[rng.integers(0, V)] += f32(12.0)
    return x


def gen_hist(rng, V):
    n = int(rng.integers(0, 30))
    h = []
    for _ in range(n):
        r = rng.random()
        if r < 0.1:
            h.append(-int(rng.integers(1, 4)))
        elif r < 0.2:
            h.append(V + int(rng.integers(0, 3)))
        elif r < 0.5 and h:
            h.append(h[int(rng.integers(0, len(h)))])
        else:
            h.append(int(rng.integers(0, V)))
    return h


def build_cases(rng):
    cases = []
    kinds = ["normal", "ties", "-inf", "nan", "huge", "peaked"]
    Vs = [1, 2, 3, 5, 8, 16, 17, 50, 257, 1000, 1500, 4096]
    for i in range(420):
        V = int(rng.choice(Vs))
        kind = kinds[i % len(kinds)]
        x = gen_row(rng, V, kind)
        temperature = float(rng.choice([1.0, 0.7, 1.3, 0.05, 5.0]))
        top_k = int(rng.choice([0, 0, 1, 2, 5, 40, max(V - 1, 1), V, V + 5, int(rng.integers(1, V + 1))]))
        top_p = float(rng.choice([1.0, 1.0, 0.95, 0.9, 0.5, 0.2, 1e-8, 0.999999, 1.0 - 1e-9, float(rng.random())]))
        if top_p <= 0.0:
            top_p = 0.5
        rp = float(rng.choice([1.0, 1.0, 1.2, 0.8, 2.5]))
        do_sample = 0 if rng.random() < 0.1 else 1
        if kind == "ties" and top_k > 0:  # put the k-th value inside a tie class
            top_k = int(rng.integers(1, V + 1))
        cases.append(Case(kind, x, gen_hist(rng, V), do_sample, temperature, top_k, top_p, rp,
                          int(rng.integers(0, NTOP + 1))))
    # full-vocabulary sizes, fewer rows
    for kind in ["normal", "peaked", "ties"]:
        for top_k, top_p in [(0, 1.0), (0, 0.9), (50, 0.95), (2000, 0.8)]:
            V = 32000
            cases.append(Case(kind + "-32k", gen_row(rng, V, kind), gen_hist(rng, V), 1,
                              float(rng.choice([0.7, 1.0, 1.5])), top_k, top_p, float(rng.choice([1.0, 1.3])), 20))
    # exact top-p edges: uniform over n = 2^j finite tokens (exact probabilities and cumulative sums in both),
    # top_p = i / n hits a cumulative sum exactly ("<=" drops it); ties cut in stable order for V <= 16
    for n in [2, 4, 8, 16]:
        for extra in [0, 0, 3]:
            V = n + extra
            if V > 16:
                continue
            for i in range(1, n):
                x = np.full(V, -np.inf, f32)
                pos = rng.permutation(V)[:n]
                x[pos] = f32(rng.choice([0.0, 1.5, -2.0]))
                cases.append(Case(f"uniform{n}-edge", x, [], 1, 1.0, 0, i / n, 1.0, 3, exact=True))
    # top_p on HF's own cumulative sums (borderline by construction: allowed to differ only there)
    for _ in range(40):
        V = int(rng.choice([7, 16, 100, 1000]))
        x = gen_row(rng, V, "normal")
        s = torch.sort(torch.from_numpy(x.copy()))[0].softmax(-1).cumsum(-1).numpy()
        j = int(rng.integers(0, V - 1)) if V > 1 else 0
        tp = float(1.0 - float(s[j]))
        if 0.0 < tp < 1.0:
            cases.append(Case("cum-edge", x, [], 1, 1.0, 0, tp, 1.0, 2))
    # one token 10 nats above a cluster of 1999 (V > 1024: our histogram paths), top_p around its probability
    for _ in range(3):
        V = 2000
        x = (rng.standard_normal(V) * 0.002).astype(f32)
        x[int(rng.integers(0, V))] = f32(10.0)
        w = np.exp(x.astype(np.float64) - 10.0)
        p0 = float(w.max() / w.sum())
        for dp in [-1e-4, 1e-4, 0.05]:
            for top_k in [0, 1500]:
                cases.append(Case("two-cluster", x, [], 1, 1.0, top_k, p0 + dp, 1.0, 3))
    # greedy with ties at the max and the penalty moving it
    for _ in range(30):
        V = int(rng.choice([5, 50, 1000]))
        x = gen_row(rng, V, "ties")
        cases.append(Case("greedy-ties", x, gen_hist(rng, V), 0, 1.0, 0, 1.0, float(rng.choice([1.0, 1.5, 0.6])), 3))
    build_new_cases(rng, cases)
    return cases


def build_new_cases(rng, cases):
    """Issue 11: min_p, typical_p, presence/frequency penalties, alone and with the HF parameters."""
    kinds = ["normal", "ties", "-inf", "nan", "huge", "peaked"]
    Vs = [1, 2, 3, 5, 8, 16, 17, 50, 257, 1000, 4096]
    pens = [0.0, 0.0, 0.5, -0.5, 1.0, -1.3, 2.0, -2.0, float(rng.uniform(-2, 2))]
    for i in range(360):
        V = int(rng.choice(Vs))
        kind = kinds[i % len(kinds)]
        x = gen_row(rng, V, kind)
        h = gen_hist(rng, V)
        fam = i % 4
        temperature = float(rng.choice([1.0, 1.0, 0.7, 1.3, 0.3]))
        top_k = int(rng.choice([0, 0, 0, 5, 40, int(rng.integers(1, V + 1))]))
        top_p = float(rng.choice([1.0, 1.0, 1.0, 0.95, 0.8, float(rng.uniform(0.05, 1.0))]))
        min_p, typical_p, pres, freq = 0.0, 1.0, 0.0, 0.0
        if fam in (0, 3):
            min_p = float(rng.choice([0.01, 0.05, 0.1, 0.3, 0.8, 1.0, float(rng.uniform(0, 1))]))
        if fam in (1, 3):
            typical_p = float(rng.choice([0.2, 0.5, 0.9, 0.95, 0.999, float(rng.uniform(0.01, 0.99))]))
            if fam == 1 and rng.random() < 0.6:  # typical alone: no earlier cut that could cascade
                top_k, top_p = 0, 1.0
        if fam == 2 or rng.random() < 0.3:
            pres, freq = float(rng.choice(pens)), float(rng.choice(pens))
        rp = float(rng.choice([1.0, 1.0, 1.2, 0.8]))
        do_sample = 0 if rng.random() < 0.1 else 1
        n_prompt = int(rng.integers(0, len(h) + 2))
        cases.append(Case("new-" + ["minp", "typical", "penalties", "minp+typical"][fam] + "-" + kind, x, h, do_sample,
                          temperature, top_k, top_p, rp, int(rng.integers(0, NTOP + 1)), min_p=min_p,
                          typical_p=typical_p, pres=pres, freq=freq, n_prompt=n_prompt))
    # full vocabulary
    for kind in ["normal", "peaked"]:
        for mp, tp, pr in [(0.05, 1.0, 0.0), (0.0, 0.9, 0.0), (0.1, 0.95, 0.0), (0.0, 1.0, 1.5)]:
            V = 32000
            h = gen_hist(rng, V)
            cases.append(Case(f"new-{kind}-32k", gen_row(rng, V, kind), h, 1, float(rng.choice([0.7, 1.0])), 0, 1.0,
                              1.0, 5, min_p=mp, typical_p=tp, pres=pr, freq=-pr / 2, n_prompt=len(h) // 2))
    # hand rows with exact answers: p = (4, 2, 1, 1) / 8 (scores .52 .17 .87 .87; cum .25 .75 .875 1 in score
    # order), typical_p between the cumulative sums; min_p on weights 1, 1/2, 1/4, 1/8 (exact in f32)
    base = np.log(np.array([4, 2, 1, 1], np.float64)).astype(f32)
    for perm in range(3):
        order = rng.permutation(4)
        x = base[order]
        for tp in (0.2, 0.5, 0.8, 0.9):
            cases.append(Case("typical-hand", x, [], 1, 1.0, 0, 1.0, 1.0, 2, exact=True, typical_p=tp))
    w = np.log(np.array([1, 0.5, 0.25, 0.125, 0.0625], np.float64)).astype(f32)
    for mp in (0.2, 0.3, 0.6, 0.9):
        cases.append(Case("minp-hand", w[rng.permutation(5)], [], 1, 1.0, 0, 1.0, 1.0, 2, exact=True, min_p=mp))
    # greedy with penalties moving the argmax
    for _ in range(20):
        V = int(rng.choice([5, 50, 1000]))
        x = gen_row(rng, V, "ties")
        h = gen_hist(rng, V)
        cases.append(Case("greedy-penalties", x, h, 0, 1.0, 0, 1.0, float(rng.choice([1.0, 1.3])), 3,
                          pres=float(rng.choice(pens)), freq=float(rng.choice(pens)),
                          n_prompt=int(rng.integers(0, len(h) + 1))))


# ---------------------------------------------------------------------------------------------- I/O
def write_input(path, cases):
    with open(path, "wb") as f:
        f.write(b"LFSMPIN2" + struct.pack("<q", len(cases)))
        for c in cases:
            f.write(struct.pack("<qqqdddiiQddddq", len(c.logits), len(c.hist), c.top_k, c.temperature, c.top_p, c.rp,
                                c.do_sample, c.n_top, c.seed, c.min_p, c.typical_p, c.pres, c.freq, c.n_prompt))
            f.write(c.logits.astype("<f4").tobytes())
            f.write(np.asarray(c.hist, "<i4").tobytes())


def read_output(path, cases):
    data = open(path, "rb").read()
    assert data[:8] == b"LFSMPOU1", "bad output magic"
    n = struct.unpack_from("<q", data, 8)[0]
    assert n == len(cases), f"{n} cases in output, {len(cases)} sent"
    off, out = 16, []
    for c in cases:
        V = len(c.logits)
        probs = np.frombuffer(data, "<f4", V, off)
        off += 4 * V
        gid, sid, slp, nt = struct.unpack_from("<iifi", data, off)
        off += 16
        tid = np.frombuffer(data, "<i4", NTOP, off)
        off += 4 * NTOP
        tlp = np.frombuffer(data, "<f4", NTOP, off)
        off += 4 * NTOP
        out.append((probs, gid, sid, slp, nt, tid, tlp))
    assert off == len(data), "trailing bytes in output"
    return out


# ---------------------------------------------------------------------------------------------- HF side
def vllm_penalties(c, scores):
    """vLLM's presence/frequency penalties (no transformers processor exists), torch f32, generated ids only."""
    V = scores.shape[-1]
    gen = [h for h in c.hist[c.n_prompt:] if 0 <= h < V]
    counts = torch.zeros(1, V, dtype=torch.float32)
    if gen:
        counts = torch.bincount(torch.tensor(gen, dtype=torch.long), minlength=V).to(torch.float32)[None]
    scores = scores - torch.tensor(c.freq, dtype=torch.float32) * counts
    scores = scores - torch.tensor(c.pres, dtype=torch.float32) * (counts > 0).to(torch.float32)
    return scores


def kept_mask(scores):
    return (scores[0] > -np.inf).numpy()


def hf_process(c):
    """Returns (penalised scores for greedy, final f32 scores the softmax sees or None for greedy, info): info
    holds the ambiguity data of each cut ("top_p", "min_p", "typical") and HF's kept mask before typical_p."""
    V = len(c.logits)
    scores = torch.from_numpy(c.logits.copy())[None]
    scores = torch.where(torch.isnan(scores), torch.tensor(-float("inf")), scores)
    ids = torch.tensor([[h for h in c.hist if 0 <= h < V]], dtype=torch.long)
    if c.rp != 1.0 and ids.shape[1] > 0:
        scores = RepetitionPenaltyLogitsProcessor(penalty=float(c.rp))(ids, scores)
    if c.pres != 0.0 or c.freq != 0.0:
        scores = vllm_penalties(c, scores)
    penalised = scores.clone()
    info = {}
    if not c.do_sample or c.temperature == 0.0:
        return penalised, None, info
    if c.temperature != 1.0:
        scores = TemperatureLogitsWarper(float(c.temperature))(ids, scores)
    if c.top_k > 0:
        scores = TopKLogitsWarper(top_k=int(c.top_k))(ids, scores)
    if c.top_p < 1.0:
        # the warper's own intermediate values, for the ambiguity check
        sl, si = torch.sort(scores, descending=False)
        cum = sl.softmax(dim=-1).cumsum(dim=-1)[0].numpy()
        thr = f32(1.0 - c.top_p)
        info["top_p"] = (si[0].numpy(), sl[0].numpy(), cum, thr)
        scores = TopPLogitsWarper(top_p=float(c.top_p))(ids, scores)
    if c.min_p > 0.0:
        v = scores[0].numpy().astype(np.float64)
        m = v.max()
        border = np.zeros(V, bool)
        if np.isfinite(m):
            w = np.exp(v - m)
            border = (v > -np.inf) & (np.abs(w - c.min_p) <= 1e-5 * c.min_p)
        info["min_p"] = border
        scores = MinPLogitsWarper(min_p=float(c.min_p))(ids, scores)
    info["pre_typical"] = kept_mask(scores)
    if 0.0 < c.typical_p < 1.0:
        normalized = torch.nn.functional.log_softmax(scores, dim=-1)
        p = torch.exp(normalized)
        ent = -(normalized * p).nansum(-1, keepdim=True)
        shifted = torch.abs((-normalized) - ent)[0]
        ss, sidx = torch.sort(shifted, descending=False)
        cum = scores[0][sidx].softmax(dim=-1).cumsum(dim=-1).numpy().astype(np.float64)
        ssn = ss.numpy().astype(np.float64)
        mass = float(f32(c.typical_p))

        def cut_score(mm):
            j = min(int((cum < mm).sum()), V - 1)
            return ssn[j]

        sh = shifted.numpy().astype(np.float64)
        at = cut_score(mass)
        lo, hi = cut_score(mass - BAND), cut_score(mass + BAND)
        border = np.isfinite(sh) & ((np.abs(sh - at) <= 1e-5 * abs(at) + 1e-6) | ((sh >= lo) & (sh <= hi)))
        info["typical"] = border
        scores = TypicalLogitsWarper(mass=float(c.typical_p))(ids, scores)
    return penalised, scores, info


def softmax64(v):
    v = np.asarray(v, np.float64)
    m = v.max()
    if m == -np.inf:
        return np.full(len(v), np.nan)
    if m == np.inf:
        w = (v == np.inf).astype(np.float64)
    else:
        w = np.exp(v - m)
    return w / w.sum()


def close(got, ref, rtol, atol=1e-37):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return np.abs(got - ref) <= rtol * np.maximum(np.abs(got), np.abs(ref)) + atol


def compare(c, res):
    tag = c.desc()
    V = len(c.logits)
    probs, gid, sid, slp, nt, tid, tlp = res
    penalised, final, info = hf_process(c)
    hf_greedy = int(torch.argmax(penalised[0]).item())
    check(gid == hf_greedy, f"{tag}: greedy {gid}, HF argmax {hf_greedy}")
    status = "exact"
    if final is None or not bool((final[0] > -np.inf).any()):
        # greedy, or every processed logit -inf (HF's softmax is NaN there; our contract: token 0)
        want = np.zeros(V)
        want[hf_greedy if final is None else 0] = 1
        check(np.array_equal(probs, want.astype(f32)),
              f"{tag}: one-hot distribution expected at {int(np.argmax(want))}")
        check(sid == int(np.argmax(want)), f"{tag}: token {sid}, want {int(np.argmax(want))}")
        status = "greedy" if final is None else "all -inf"
    else:
        fin = final[0].numpy()
        hf_kept = fin > -np.inf
        want = softmax64(fin)                              # HF's scores and mask, normalised exactly
        want32 = torch.softmax(final[0], dim=-1).numpy()   # what torch itself would sample from
        ours_kept = probs > 0
        diff = np.nonzero(ours_kept != hf_kept)[0]
        diff = np.array([i for i in diff if not (hf_kept[i] and want[i] < TINY and probs[i] == 0)], dtype=np.int64)
        if len(diff):
            allowed, tie = np.zeros(V, bool), np.zeros(V, bool)
            earlier = False  # an ambiguous cut before typical_p
            if "top_p" in info and not c.exact:
                si, sl, cum, thr = info["top_p"]
                border = np.abs(cum.astype(np.float64) - float(thr)) <= BAND
                allowed[si[border]] = True
                earlier |= bool(border.any())
                if V > 16:  # the tie class at the cut (torch's sort order among ties is unspecified)
                    removed = cum <= thr
                    removed[-1] = False
                    nrem = int(removed.sum())
                    for pos in (nrem - 1, nrem):
                        if 0 <= pos < V:
                            tie[si[sl == sl[pos]]] = True
                    earlier |= bool(tie.sum() > 1)  # the order inside the class decides the set
            if "min_p" in info and not c.exact:
                allowed |= info["min_p"]
                earlier |= bool(info["min_p"].any())
            weak = False
            if "typical" in info and not c.exact:
                allowed |= info["typical"]
                if earlier:  # typical_p saw another distribution on each side: only inclusion is checked
                    weak = True
                    allowed |= info["pre_typical"]
            ok = bool(np.all((allowed | tie)[diff]))
            check(ok, f"{tag}: kept sets differ at {diff[:10].tolist()} (ours p={probs[diff[:5]].tolist()}, "
                      f"HF p={want[diff[:5]].tolist()})")
            if not ok:
                return "bad"
            if weak:
                status = "ambiguous (an earlier cut, then typical_p)"
            elif np.all(tie[diff]):
                status = "ambiguous (tie class at the cut)"
            elif "min_p" in info or "typical" in info:
                status = "ambiguous (top_p / min_p / typical_p border)"
            else:
                status = "ambiguous (cum within band)"
        if status == "exact":
            common = ours_kept & hf_kept
            check(bool(np.all(close(probs[common], want[common], 1e-5))),
                  f"{tag}: probabilities vs HF scores normalised in f64: worst "
                  f"{np.max(np.abs(probs[common] - want[common]) / np.maximum(want[common], 1e-300)):.3g} rel")
            check(bool(np.all(close(probs[common], want32[common], 1e-4))),
                  f"{tag}: probabilities vs torch's f32 softmax: worst "
                  f"{np.max(np.abs(probs[common] - want32[common]) / np.maximum(want32[common], 1e-30)):.3g} rel")
        elif status.startswith("ambiguous (an earlier"):
            pass  # the distributions differ by construction (another typical_p input); the inclusion was checked
        else:
            a, b = np.sort(probs[ours_kept].astype(np.float64)), np.sort(want[hf_kept & (want >= TINY)])
            a = a[a >= TINY]
            if len(a) == len(b) and bool(np.all(close(a, b, 1e-5))):
                check(True, "")  # the same counts: tied tokens carry equal probabilities
            else:  # borderline tokens in or out (or one in, another out): renormalised over the common support
                common = ours_kept & hf_kept
                check(bool(common.any()), f"{tag}: no common support")
                if common.any():
                    x, y = probs[common].astype(np.float64), want[common]
                    check(bool(np.all(close(x / x.sum(), y / y.sum(), 1e-5))),
                          f"{tag}: renormalised probabilities differ (ambiguous cut)")
        check(0 <= sid < V and probs[sid] > 0 and (hf_kept[sid] or sid in diff),
              f"{tag}: sampled {sid} outside the kept sets")
    # log-probs of the alternatives: ids by NumPy, values vs exact f64 log_softmax and torch's f32 one
    raw = np.where(np.isnan(c.logits), f32(-np.inf), c.logits)
    n = min(c.n_top, V)
    check(nt == n, f"{tag}: n_top {nt} want {n}")
    want_ids = np.lexsort((np.arange(V), -raw.astype(np.float64)))[:n]
    check(np.array_equal(tid[:n], want_ids), f"{tag}: top ids {tid[:n].tolist()} want {want_ids.tolist()}")
    r64 = raw.astype(np.float64)
    m = r64.max()
    if np.isfinite(m):
        lsm = (r64 - m) - np.log(np.sum(np.exp(r64 - m)))
    else:
        lsm = np.log(softmax64(r64)) if m == np.inf else np.full(V, -np.inf)
    lsm32 = torch.log_softmax(torch.from_numpy(raw.copy()), dim=-1).numpy().astype(np.float64)

    def lp_ok(got, ref, atol):
        got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
        return bool(np.all((np.isinf(got) & (got == ref)) | (np.abs(got - ref) <= atol + 1e-6 * np.abs(ref))))

    got = tlp[:n]
    check(lp_ok(got, lsm[want_ids], 1e-5),
          f"{tag}: top log-probs {got[:4].tolist()} vs f64 {lsm[want_ids][:4].tolist()}")
    if np.isfinite(m):
        check(lp_ok(got, lsm32[want_ids], 1e-4), f"{tag}: top log-probs vs torch f32 {lsm32[want_ids][:4].tolist()}")
    if 0 <= sid < V:
        check(lp_ok([slp], [lsm[sid]], 1e-5), f"{tag}: sampled log_prob {slp} vs f64 {lsm[sid]}")
    return status


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    seed = int(os.environ.get("LF_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
    print(f"seed {seed}")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    random.seed(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    os.makedirs(a.workdir, exist_ok=True)
    tool = os.path.join(os.path.dirname(os.path.abspath(a.bin)), "sample_tool")
    cases = build_cases(rng)
    inp, outp = os.path.join(a.workdir, "sample_in.bin"), os.path.join(a.workdir, "sample_out.bin")
    write_input(inp, cases)
    try:
        p = subprocess.run([tool, inp, outp], capture_output=True, text=True)
    except OSError as e:
        print(f"FAIL cannot run {tool}: {e}")
        print(f"{passed} passed, {failed + 1} failed")
        return 1
    if p.returncode != 0:
        print(f"FAIL sample_tool exit {p.returncode}: {p.stderr.strip()}")
        print(f"{passed} passed, {failed + 1} failed")
        return 1
    results = read_output(outp, cases)
    counts = {}
    for c, r in zip(cases, results):
        st = compare(c, r)
        counts[st] = counts.get(st, 0) + 1
    n_exact_edges = sum(1 for c in cases if c.exact)
    n_new = sum(1 for c in cases if c.min_p > 0 or c.typical_p < 1 or c.pres or c.freq)
    print(f"{len(cases)} rows ({n_new} with min_p / typical_p / presence / frequency, {n_exact_edges} exact rows, "
          f"{sum(1 for c in cases if not c.do_sample)} greedy): "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
