"""serve_fixtures.py - data for test_serve.py: tiny models made with `loraforge make-tiny` (the bundled
examples/tokenizer, so text round-trips), PEFT 0.12 adapters saved with save_pretrained (random non-zero A and
B via init_lora_weights=False), and a transformers (+ peft) reference for greedy generation and log-probs.

Layout under workdir:
  base/                    the served model (hidden 64, 2 layers, f32) + a chat_template in tokenizer_config.json
  base/adapters/alpha/     preloaded from the model directory (r 8, all targets)
  ad/beta ad/dora ad/r4    given with --adapter name=DIR (r 8 alpha 32; DoRA r 8; r 4)
  root/                    --adapter-root: gamma (= copy of r4), big (r 32 > --max-lora-rank 16),
                           wrong (made for a hidden-128 model), inner -> gamma (symlink inside the root),
                           escape -> ../outside/evil (symlink leaving the root), fill0..fill7 (copies of r4)
  outside/evil/            a valid adapter outside every allowed root
  other128/                the hidden-128 model the wrong-shape adapter belongs to
"""
import json
import os
import shutil
import subprocess

import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

transformers.logging.set_verbosity_error()

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
HIDDEN = 64
LAYERS = 2
KV_HEADS = 2
HEAD_DIM = 16  # hidden 64 / 4 heads
N_FILL = 8


def kv_block_bytes(block_size=16):
    """Bytes of one KV block (f32 K and V, every layer): kvcache.h layout [NB, BS, KH, D] per layer."""
    return 2 * LAYERS * block_size * KV_HEADS * HEAD_DIM * 4


def _run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p.stdout


def make_tiny(binary, out, seed, hidden, tokenizer, layers=LAYERS):
    _run([binary, "make-tiny", "--arch", "llama", "--out", out, "--seed", str(seed), "--hidden", str(hidden),
          "--layers", str(layers), "--heads", "4", "--kv-heads", str(KV_HEADS), "--intermediate", str(2 * hidden),
          "--init-std", "0.1", "--tokenizer", tokenizer])


def peft_adapter(base_dir, out, seed, r, alpha, dora=False):
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=False, use_dora=dora,
                     lora_dropout=0.0)
    pm = get_peft_model(m, cfg)
    if dora:  # move the magnitudes away from ||W + BA|| so that the DoRA path really matters
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_magnitude_vector" in n:
                    p.mul_(1.0 + 0.3 * torch.rand_like(p))
    pm.save_pretrained(out)
    return out


class Fixtures:
    def __init__(self, binary, workdir, seed, repo):
        self.workdir = workdir
        tok_src = os.path.join(repo, "examples", "tokenizer")
        self.base = os.path.join(workdir, "base")
        self.other = os.path.join(workdir, "other128")
        make_tiny(binary, self.base, seed % 100000, HIDDEN, tok_src)
        make_tiny(binary, self.other, seed % 100000 + 1, 128, tok_src)
        tc_path = os.path.join(self.base, "tokenizer_config.json")
        with open(tc_path) as f:
            tc = json.load(f)
        tc["chat_template"] = CHAT_TEMPLATE
        with open(tc_path, "w") as f:
            json.dump(tc, f, indent=2)
        with open(os.path.join(self.base, "generation_config.json")) as f:
            gc = json.load(f)
        eos = gc.get("eos_token_id")
        self.eos = set(eos if isinstance(eos, list) else [eos])

        ad = os.path.join(workdir, "ad")
        self.root = os.path.join(workdir, "root")
        self.outside = os.path.join(workdir, "outside")
        for d in (ad, self.root, self.outside):
            os.makedirs(d, exist_ok=True)
        s = seed % 100000
        self.adapters = {
            "alpha": peft_adapter(self.base, os.path.join(self.base, "adapters", "alpha"), s + 11, 8, 16),
            "beta": peft_adapter(self.base, os.path.join(ad, "beta"), s + 12, 8, 32),
            "dora": peft_adapter(self.base, os.path.join(ad, "dora"), s + 13, 8, 16, dora=True),
            "r4": peft_adapter(self.base, os.path.join(ad, "r4"), s + 14, 4, 8),
        }
        self.big = peft_adapter(self.base, os.path.join(self.root, "big"), s + 15, 32, 32)
        self.wrong = peft_adapter(self.other, os.path.join(self.root, "wrong"), s + 16, 8, 16)
        self.gamma = os.path.join(self.root, "gamma")
        shutil.copytree(self.adapters["r4"], self.gamma)
        self.fills = []
        for i in range(N_FILL):
            d = os.path.join(self.root, f"fill{i}")
            shutil.copytree(self.adapters["r4"], d)
            self.fills.append(d)
        self.evil = os.path.join(self.outside, "evil")
        shutil.copytree(self.adapters["r4"], self.evil)
        self.inner_link = os.path.join(self.root, "inner")
        os.symlink("gamma", self.inner_link)
        self.escape_link = os.path.join(self.root, "escape")
        os.symlink(os.path.join("..", "outside", "evil"), self.escape_link)
        self.tok = AutoTokenizer.from_pretrained(self.base)

    def serve_args(self):
        """--model and --adapter flags of the main server (alpha comes from base/adapters/)."""
        a = ["--model", self.base]
        for n in ("beta", "dora", "r4"):
            a += ["--adapter", f"{n}={self.adapters[n]}"]
        return a


class Reference:
    """transformers (+ peft) on the same model: greedy generate and log-probs."""

    def __init__(self, fx):
        self.fx = fx
        self.models = {}

    def model(self, adapter):
        key = adapter or ""
        if key not in self.models:
            m = AutoModelForCausalLM.from_pretrained(self.fx.base, dtype=torch.float32)
            if key:
                m = PeftModel.from_pretrained(m, self.fx.adapters[key])
            m.eval()
            self.models[key] = m
        return self.models[key]

    def encode(self, text):
        return self.fx.tok(text, add_special_tokens=True).input_ids

    def greedy(self, prompt_ids, adapter, max_new, repetition_penalty=1.0):
        """Returns (generated ids without a trailing EOS, ended_by_eos, top1-top2 gap of each step)."""
        m = self.model(adapter)
        eos = sorted(self.fx.eos)
        ids = torch.tensor([prompt_ids])
        with torch.no_grad():
            out = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                             do_sample=False, eos_token_id=eos, pad_token_id=eos[0],
                             repetition_penalty=repetition_penalty, output_scores=True,
                             return_dict_in_generate=True)
        gen = out.sequences[0, len(prompt_ids):].tolist()
        gaps = []
        for sc in out.scores:
            t = torch.topk(sc[0].float(), 2).values
            gaps.append(float(t[0] - t[1]))
        ended = bool(gen) and gen[-1] in self.fx.eos
        if ended:
            gen = gen[:-1]
        return gen, ended, gaps

    def logprobs(self, prompt_ids, gen_ids, adapter):
        """log_softmax of the raw logits at each generated position, for the generated token."""
        m = self.model(adapter)
        ids = torch.tensor([prompt_ids + gen_ids])
        with torch.no_grad():
            logits = m(input_ids=ids).logits[0].double()
        lp = torch.log_softmax(logits, dim=-1)
        n = len(prompt_ids)
        return [float(lp[n - 1 + i, t]) for i, t in enumerate(gen_ids)]

    def decode(self, ids):
        return self.fx.tok.decode(ids, skip_special_tokens=True)
