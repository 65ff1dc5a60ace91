#!/usr/bin/env python3
"""test_peft_io.py - our PEFT adapter reader/writer (adapters/peft_io.c via lora_tool) against peft 0.21.

Run: python test_peft_io.py --bin BUILD/loraforge --workdir DIR
(lora_tool, built from tests/tools/lora_tool.c, must sit next to --bin.)

Tiny LlamaForCausalLM / Qwen2ForCausalLM models are made here (random init from a config, saved with
save_pretrained as f32 safetensors).
(a) peft-made adapters: get_peft_model with list / "all-linear" / regex / full-name targets, r 4 and 8, rsLoRA,
    DoRA, rank_pattern + alpha_pattern, gaussian init, with and without task_type; every LoRA tensor perturbed
    (B non-zero, DoRA magnitudes scaled) and saved with save_pretrained. `lora_tool roundtrip` (our load + save)
    must reproduce both files byte for byte; PeftModel.from_pretrained of our directory must give logits
    identical (torch.equal) to the original PeftModel; our per-module rank and scaling must equal peft's; our
    merge (lf_lora_merge_weight, incl. DoRA) must match merge_and_unload; a BF16 re-save must load in peft as the
    bf16-rounded tensors with identical logits; an F16 file with ".default" adapter-name infixes must load and
    re-save under canonical names.
(b) adapters made by `lora_tool init`: peft loads them with exactly our tensors and per-module r/scaling;
    A lies in +-1/sqrt(in) (U, matching variance), gaussian A has std 1/r, B is zero (PEFT init) or in
    +-1/sqrt(r) (init false); DoRA magnitudes equal torch.linalg.norm(W + s*B@A, dim=1); with B = 0 peft's
    logits equal the base model's.
(c) adapters we must refuse (lm_head target, bias="all", modules_to_save, layers_to_transform,
    adapter_model.bin, an adapter of another base model): lora_tool exits 1 with a message naming the cause.

Seed: LF_TEST_SEED or time, printed. Ends with "N passed, M failed"; exit 1 on any failure. A missing torch,
transformers or peft is a failure, never a skip.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

try:
    import torch
    import transformers
    import peft
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
except Exception as e:  # ImportError, or a broken install
    print(f"FAIL: cannot import torch/transformers/peft/safetensors ({e!r}); install them into the test venv "
          "(scripts/setup-tests.sh)")
    print("0 passed, 1 failed")
    sys.exit(1)

import warnings

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PARENT = {m: ("self_attn" if m in ALL[:4] else "mlp") for m in ALL}
MERGE_TOL = 1e-5  # f32 merge: different summation order of B@A and of the DoRA row norms (~1e-7 relative)


class Runner:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def case(self, name, ok, detail=""):
        print(f"{'PASS' if ok else 'FAIL'} {name}{'' if ok or not detail else ': ' + detail}")
        sys.stdout.flush()
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        return ok


def make_base(kind, d, seed):
    torch.manual_seed(seed)
    if kind == "llama":
        cfg = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=96, max_position_embeddings=64, rms_norm_eps=1e-5)
        model = LlamaForCausalLM(cfg)
    else:
        cfg = Qwen2Config(hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=96, max_position_embeddings=64, rms_norm_eps=1e-6,
                          tie_word_embeddings=False, use_sliding_window=False)
        model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # larger weights than the 0.02 default so adapters visibly change the logits
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.1)
    model.save_pretrained(d, safe_serialization=True)


def load_base(d):
    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()


def lora_modules(pm):
    """{(layer, module): lora layer} of a PeftModel."""
    out = {}
    for name, mod in pm.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            parts = name.split(".")
            i = parts.index("layers")
            out[(int(parts[i + 1]), parts[-1])] = mod
    return out


def perturb(pm, gen):
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
            elif "lora_magnitude_vector" in n:
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=gen))


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def same_bytes(a, b):
    with open(a, "rb") as f, open(b, "rb") as g:
        return f.read() == g.read()


class Tool:
    def __init__(self, path):
        self.path = path

    def run(self, *argv):
        r = subprocess.run([self.path, *map(str, argv)], capture_output=True, text=True, timeout=300)
        return r.returncode, r.stdout, r.stderr


def check_info(R, name, tool, adir, base_dir, pm):
    """Our slots (lora_tool info) = peft's LoRA layers with the same r and scaling."""
    rc, out, err = tool.run("info", adir, "--model-config", base_dir)
    if not R.case(f"{name}: info", rc == 0, err.strip()):
        return
    info = json.loads(out)
    mods = lora_modules(pm)
    ours = {(s["layer"], s["module"]): s for s in info["slots"]}
    ok = set(ours) == set(mods)
    detail = f"slots ours {sorted(ours)} peft {sorted(mods)}"
    if ok:
        for k, s in ours.items():
            m = mods[k]
            if s["r"] != m.r["default"] or not math.isclose(s["scaling"], m.scaling["default"], rel_tol=1e-15):
                ok, detail = False, f"{k}: ours r={s['r']} s={s['scaling']} peft r={m.r['default']} s={m.scaling['default']}"
                break
    R.case(f"{name}: slots, per-module r and scaling equal peft's ({len(ours)} slots)", ok, detail)


def check_merge(R, name, tool, adir, base_dir, work):
    out = os.path.join(work, "merged.safetensors")
    rc, _, err = tool.run("merge", adir, "--model", base_dir, out)
    if not R.case(f"{name}: merge runs", rc == 0, err.strip()):
        return
    ours = load_file(out)
    merged = PeftModel.from_pretrained(load_base(base_dir), adir).merge_and_unload().state_dict()
    worst, wname = 0.0, ""
    for k, v in ours.items():
        ref = merged[k]
        rel = float((v - ref).abs().max() / ref.abs().max())
        if rel > worst:
            worst, wname = rel, k
    R.case(f"{name}: merged weights vs peft merge_and_unload ({len(ours)} matrices, max rel {worst:.1e} "
           f"at {wname}, tol {MERGE_TOL:g})", len(ours) > 0 and worst <= MERGE_TOL)


def peft_made_cases(R, tool, work, seed):
    cases = [
        ("llama-qv-r4", "llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")),
        ("llama-all-r8-rslora", "llama", dict(r=8, lora_alpha=16, lora_dropout=0.05, use_rslora=True,
                                              target_modules=list(ALL), task_type="CAUSAL_LM")),
        ("llama-dora-r4-notask", "llama", dict(r=4, lora_alpha=8, use_dora=True,
                                               target_modules=["q_proj", "k_proj", "down_proj"])),
        ("qwen2-dora-rslora-all-linear-r8", "qwen2", dict(r=8, lora_alpha=16, use_dora=True, use_rslora=True,
                                                          target_modules="all-linear", task_type="CAUSAL_LM")),
        ("llama-regex", "llama", dict(r=4, lora_alpha=8, task_type="CAUSAL_LM",
                                      target_modules=r".*layers\.1\.(self_attn\.(q|v)_proj|mlp\.up_proj)")),
        ("llama-rank-alpha-pattern", "llama", dict(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM",
                                                   rank_pattern={"v_proj": 8, "model.layers.0.mlp.down_proj": 2,
                                                                 "layers.1.mlp.up_proj": 6},
                                                   alpha_pattern={"o_proj": 32, "layers.0.mlp.gate_proj": 3.5})),
        ("qwen2-names-gaussian", "qwen2", dict(r=4, lora_alpha=4, init_lora_weights="gaussian", task_type="CAUSAL_LM",
                                               target_modules=["model.layers.0.self_attn.k_proj", "o_proj",
                                                               "mlp.gate_proj"])),
    ]
    for i, (name, kind, kw) in enumerate(cases):
        t0 = time.time()
        try:
            d = os.path.join(work, name)
            base_dir, pdir, odir = (os.path.join(d, x) for x in ("base", "peft", "ours"))
            make_base(kind, base_dir, seed + i)
            gen = torch.Generator().manual_seed(seed + 100 + i)
            pm = get_peft_model(load_base(base_dir), LoraConfig(**kw))
            perturb(pm, gen)
            pm.eval()
            V = pm.config.vocab_size
            ids = torch.randint(0, V, (2, 11), generator=gen)
            ref = logits(pm, ids)
            pm.save_pretrained(pdir)
            rc, _, err = tool.run("roundtrip", pdir, odir, "--model-config", base_dir)
            if not R.case(f"{name}: roundtrip", rc == 0, err.strip()):
                continue
            for f in ("adapter_model.safetensors", "adapter_config.json"):
                R.case(f"{name}: re-saved {f} byte-identical to peft's", same_bytes(os.path.join(pdir, f),
                                                                                     os.path.join(odir, f)))
            m2 = PeftModel.from_pretrained(load_base(base_dir), odir).eval()
            got = logits(m2, ids)
            R.case(f"{name}: peft loads our dir, logits identical to the original", torch.equal(got, ref),
                   f"max |d| {float((got - ref).abs().max()):.3g}")
            base_logits = logits(load_base(base_dir), ids)
            R.case(f"{name}: the adapter changes the logits (the test can fail)",
                   float((ref - base_logits).abs().max()) > 1e-3)
            check_info(R, name, tool, odir, base_dir, m2)
            check_merge(R, name, tool, odir, base_dir, d)

            # BF16 re-save: peft must load the bf16-rounded tensors
            bdir = os.path.join(d, "ours-bf16")
            rc, _, err = tool.run("roundtrip", pdir, bdir, "--model-config", base_dir, "--dtype", "BF16")
            if R.case(f"{name}: roundtrip --dtype BF16", rc == 0, err.strip()):
                theirs = load_file(os.path.join(pdir, "adapter_model.safetensors"))
                ours = load_file(os.path.join(bdir, "adapter_model.safetensors"))
                ok = set(theirs) == set(ours) and all(
                    ours[k].dtype == torch.bfloat16 and torch.equal(ours[k], theirs[k].to(torch.bfloat16)) for k in theirs)
                R.case(f"{name}: BF16 file = peft's tensors rounded to bf16", ok)
                m3 = PeftModel.from_pretrained(load_base(base_dir), bdir).eval()
                mref = PeftModel.from_pretrained(load_base(base_dir), pdir).eval()
                with torch.no_grad():
                    for n, p in mref.named_parameters():
                        if "lora_" in n:
                            p.copy_(p.to(torch.bfloat16).float())
                R.case(f"{name}: peft loads the BF16 dir, logits = peft with bf16-rounded adapter",
                       torch.equal(logits(m3, ids), logits(mref, ids)))
        except Exception as e:
            R.case(f"{name}", False, repr(e))
        print(f"  ({time.time() - t0:.1f} s)")


def infix_f16_case(R, tool, work, seed):
    """An F16 file with '.default' infixes (lora_A.default.weight, lora_magnitude_vector.default.weight)."""
    name = "llama-dora-f16-default-infix"
    try:
        d = os.path.join(work, name)
        base_dir, pdir, odir = (os.path.join(d, x) for x in ("base", "peft", "ours"))
        make_base("llama", base_dir, seed)
        gen = torch.Generator().manual_seed(seed + 7)
        pm = get_peft_model(load_base(base_dir), LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=list(ALL),
                                                            task_type="CAUSAL_LM"))
        perturb(pm, gen)
        pm.save_pretrained(pdir)
        st_path = os.path.join(pdir, "adapter_model.safetensors")
        orig = {k: v.clone() for k, v in load_file(st_path).items()}  # copies: the file is rewritten below
        renamed = {}
        for k, v in orig.items():
            k2 = k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
            k2 = k2.replace(".lora_magnitude_vector", ".lora_magnitude_vector.default.weight")
            renamed[k2] = v.to(torch.float16)
        save_file(renamed, st_path, metadata={"format": "pt"})
        rc, _, err = tool.run("roundtrip", pdir, odir, "--model-config", base_dir)
        if not R.case(f"{name}: roundtrip", rc == 0, err.strip()):
            return
        ours = load_file(os.path.join(odir, "adapter_model.safetensors"))
        ok = set(ours) == set(orig) and all(
            ours[k].dtype == torch.float32 and torch.equal(ours[k], orig[k].to(torch.float16).float()) for k in orig)
        R.case(f"{name}: canonical names, f32 values = f16 values", ok,
               f"ours-only {sorted(set(ours) - set(orig))[:2]} missing {sorted(set(orig) - set(ours))[:2]}")
        m2 = PeftModel.from_pretrained(load_base(base_dir), odir).eval()
        sd = peft.get_peft_model_state_dict(m2)
        R.case(f"{name}: peft loads it with the f16-rounded tensors",
               set(sd) == set(orig) and all(torch.equal(sd[k], orig[k].to(torch.float16).float()) for k in orig))
    except Exception as e:
        R.case(name, False, repr(e))


def our_made_cases(R, tool, work, seed):
    cases = [
        ("init-llama-all-r8", "llama", ["--r", 8, "--alpha", 16, "--targets", "all"]),
        ("init-qwen2-dora-rslora", "qwen2", ["--r", 4, "--alpha", 8, "--targets", "q_proj,v_proj,down_proj", "--dora",
                                             "--rslora"]),
        ("init-llama-dora-initfalse", "llama", ["--r", 4, "--alpha", 8, "--targets", "all", "--dora", "--init", "false"]),
        ("init-llama-regex-patterns", "llama", ["--r", 4, "--target-regex", r".*\.(q_proj|up_proj)", "--rank-pattern",
                                                "up_proj=8,model.layers.1.self_attn.q_proj=2", "--alpha-pattern",
                                                "q_proj=32", "--init", "false"]),
        ("init-qwen2-gaussian-bf16", "qwen2", ["--r", 8, "--targets", "k_proj,o_proj,gate_proj", "--init", "gaussian",
                                               "--dtype", "BF16"]),
        ("init-qwen2-names-dropout", "qwen2", ["--r", 2, "--alpha", 4, "--dropout", 0.1, "--target-names",
                                               "model.layers.2.mlp.down_proj,self_attn.v_proj"]),
        # settings from a peft-written adapter_config.json (LoraConfig.save_pretrained), seed only on the command line
        ("init-llama-from-peft-config", "llama", ["--config", LoraConfig(
            r=4, lora_alpha=12, use_dora=True, use_rslora=True, target_modules=["k_proj", "up_proj"],
            rank_pattern={"up_proj": 6}, init_lora_weights=False, task_type="CAUSAL_LM")]),
    ]
    for i, (name, kind, extra) in enumerate(cases):
        t0 = time.time()
        try:
            d = os.path.join(work, name)
            base_dir, odir = os.path.join(d, "base"), os.path.join(d, "ours")
            make_base(kind, base_dir, seed + 50 + i)
            if "--config" in extra:  # write the LoraConfig object given after --config, pass its path
                j = extra.index("--config") + 1
                cdir = os.path.join(d, "config")
                extra[j].save_pretrained(cdir)
                extra = extra[:j] + [os.path.join(cdir, "adapter_config.json")] + extra[j + 1:]
            rc, _, err = tool.run("init", odir, "--model-config", base_dir, "--seed", seed + i, "--base-model", base_dir,
                                  *extra)
            if not R.case(f"{name}: init", rc == 0, err.strip()):
                continue
            cfg = json.load(open(os.path.join(odir, "adapter_config.json")))
            base = load_base(base_dir)
            ids = torch.randint(0, base.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(seed + i))
            base_logits = logits(base, ids)
            pm = PeftModel.from_pretrained(load_base(base_dir), odir).eval()
            R.case(f"{name}: peft loads it", True)
            ours = load_file(os.path.join(odir, "adapter_model.safetensors"))
            sd = peft.get_peft_model_state_dict(pm)
            ok = set(sd) == set(ours) and all(torch.equal(sd[k], ours[k].float()) for k in ours)
            R.case(f"{name}: peft holds exactly our {len(ours)} tensors", ok,
                   f"ours-only {sorted(set(ours) - set(sd))[:3]} peft-only {sorted(set(sd) - set(ours))[:3]}")
            check_info(R, name, tool, odir, base_dir, pm)
            init = cfg["init_lora_weights"]
            mods = lora_modules(pm)
            a_ok, b_ok, us, u2, n, g2, gn = True, True, 0.0, 0.0, 0, 0.0, 0
            for (l, m), mod in mods.items():
                A, B = mod.lora_A["default"].weight.detach(), mod.lora_B["default"].weight.detach()
                r, fan_in = A.shape
                if init == "gaussian":
                    g2 += float((A.double() * r).pow(2).sum())
                    gn += A.numel()
                else:
                    bound = 1 / math.sqrt(fan_in)
                    bound = float(torch.tensor(bound, dtype=torch.bfloat16).float()) if "BF16" in extra else bound
                    a_ok &= bool((A.abs() <= bound * (1 + 1e-6)).all())
                    u = A.double() / bound
                    us += float(u.sum())
                    u2 += float(u.pow(2).sum())
                    n += A.numel()
                if init is False:
                    b_ok &= bool((B.abs() <= 1 / math.sqrt(r) * (1 + 1e-6)).all()) and bool((B != 0).any())
                else:
                    b_ok &= bool((B == 0).all())
            if init == "gaussian":
                var = g2 / gn  # E[(A r)^2] = 1; sd of the sample second moment of N(0,1) = sqrt(2/n)
                R.case(f"{name}: gaussian A has std 1/r (var of A*r {var:.4f}, n {gn})",
                       abs(var - 1) < 6 * math.sqrt(2 / gn))
            else:
                mean, var = us / n, u2 / n - (us / n) ** 2  # U(-1,1): var 1/3, sd of sample var sqrt((1/5-1/9)/n)
                R.case(f"{name}: A in +-1/sqrt(in), uniform (n {n}, mean {mean:.4f}, var {var:.4f} vs 1/3)",
                       a_ok and abs(mean) < 6 * math.sqrt(1 / 3 / n) and abs(var - 1 / 3) < 6 * math.sqrt((0.2 - 1 / 9) / n))
            R.case(f"{name}: B {'in +-1/sqrt(r), non-zero' if init is False else 'zero'}", b_ok)
            if cfg["use_dora"]:
                worst = 0.0
                W_of = dict(load_base(base_dir).named_parameters())
                for (l, m), mod in mods.items():
                    W = W_of[f"model.layers.{l}.{PARENT[m]}.{m}.weight"].detach().double()
                    A, B = mod.lora_A["default"].weight.double(), mod.lora_B["default"].weight.double()
                    want = torch.linalg.norm(W + mod.scaling["default"] * (B @ A), dim=1)
                    got = mod.lora_magnitude_vector["default"].weight.double()
                    worst = max(worst, float(((got - want).abs() / want).max()))
                # ours: double sum rounded to f32 -> within 1 f32 ulp (6e-8) of the exact norm
                R.case(f"{name}: DoRA magnitude = ||W + s*B@A||_row (max rel {worst:.1e}, tol 2e-7)", worst <= 2e-7)
            if init is not False:
                got = logits(pm, ids)
                if cfg["use_dora"]:  # m/||W|| is 1 up to f32 rounding of our norm vs torch's
                    rel = float((got - base_logits).abs().max() / base_logits.abs().max())
                    R.case(f"{name}: B = 0, DoRA: logits = base logits (rel {rel:.1e}, tol 1e-5)", rel <= 1e-5)
                else:
                    R.case(f"{name}: B = 0: logits identical to the base model", torch.equal(got, base_logits))
            else:
                check_merge(R, name, tool, odir, base_dir, d)
        except Exception as e:
            R.case(name, False, repr(e))
        print(f"  ({time.time() - t0:.1f} s)")


def refusal_cases(R, tool, work, seed):
    def peft_dir(name, kind, kw, safe=True):
        d = os.path.join(work, "refuse-" + name)
        base_dir, pdir = os.path.join(d, "base"), os.path.join(d, "peft")
        make_base(kind, base_dir, seed)
        pm = get_peft_model(load_base(base_dir), LoraConfig(**kw))
        pm.save_pretrained(pdir, safe_serialization=safe)
        return base_dir, pdir

    cases = [
        ("lm_head", "llama", dict(r=4, target_modules=["q_proj", "lm_head"]), True, ["lm_head"]),
        ("bias-all", "qwen2", dict(r=4, target_modules=["q_proj"], bias="all"), True, ["bias"]),
        ("modules_to_save", "llama", dict(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]), True,
         ["modules_to_save"]),
        ("layers_to_transform", "llama", dict(r=4, target_modules=["q_proj"], layers_to_transform=[1]), True,
         ["layers_to_transform"]),
        ("adapter_model.bin", "llama", dict(r=4, target_modules=["q_proj"]), False, ["adapter_model.bin", "safetensors"]),
    ]
    for name, kind, kw, safe, needles in cases:
        try:
            base_dir, pdir = peft_dir(name, kind, kw, safe)
            rc, _, err = tool.run("roundtrip", pdir, pdir + "-out", "--model-config", base_dir)
            R.case(f"refuse {name}: exit 1 naming {needles}", rc == 1 and all(s in err for s in needles), err.strip())
            R.case(f"refuse {name}: nothing written", not os.path.exists(pdir + "-out"))
        except Exception as e:
            R.case(f"refuse {name}", False, repr(e))
    # an adapter of another base model (llama hidden 32 vs qwen2 hidden 48)
    try:
        base_l, pdir = peft_dir("other-base", "llama", dict(r=4, target_modules=["q_proj", "v_proj"]))
        base_q = os.path.join(work, "refuse-other-base", "qwen2-base")
        make_base("qwen2", base_q, seed)
        rc, _, err = tool.run("roundtrip", pdir, pdir + "-out", "--model-config", base_q)
        R.case("refuse adapter of another base: exit 1 naming tensor, expected and found shape",
               rc == 1 and "base_model.model.model.layers.0.self_attn." in err and "expected [" in err
               and "has shape [" in err, err.strip())
    except Exception as e:
        R.case("refuse other base", False, repr(e))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    seed = int(os.environ.get("LF_TEST_SEED", int(time.time()))) % (1 << 31)
    print(f"seed {seed} (torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__})")
    torch.manual_seed(seed)
    tool_path = os.path.join(os.path.dirname(os.path.abspath(args.bin)), "lora_tool")
    R = Runner()
    if not R.case("lora_tool exists next to --bin", os.path.exists(tool_path), tool_path):
        print(f"{R.passed} passed, {R.failed} failed")
        return 1
    R.case("peft is 0.21.x (the oracle pin, scripts/oracle-requirements.txt: its adapter_config.json key set is the one to "
           "mirror)", peft.__version__.startswith("0.21."), peft.__version__)
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir, exist_ok=True)
    tool = Tool(tool_path)
    peft_made_cases(R, tool, args.workdir, seed)
    infix_f16_case(R, tool, args.workdir, seed)
    our_made_cases(R, tool, args.workdir, seed)
    refusal_cases(R, tool, args.workdir, seed)
    print(f"oracle cases ran: {R.passed + R.failed}")
    print(f"{R.passed} passed, {R.failed} failed")
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
