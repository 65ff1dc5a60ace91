#!/usr/bin/env python3
"""make_seeds.py - (re)build the fuzz seed corpora tests/fuzz/corpus/<target>/ and the small tokenizers
tests/fuzz/data/tokenizer-*/ from real files: ../shared/data (tokenizers, chat templates), examples/ (train
config, dataset, demo tokenizer) and small safetensors / PEFT files written here. Deterministic; standard
library only. Run from anywhere: python3 tests/fuzz/make_seeds.py [SHARED_DATA_DIR]

Multi-file inputs are joined with the separator of tests/fuzz/fuzz_util.h (LF_FUZZ_SEP). Files named
regress-* in a corpus (inputs that once found a bug, see docs/fuzzing.md) are kept. The corpus of
fuzz_template (another target's) is not touched."""
import gzip
import json
import os
import shutil
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "data")
FUZZ = os.path.join(ROOT, "tests", "fuzz")
SEP = b"#@@#"


def reset(d):
    """Empty a corpus directory, keeping regress-* (inputs that once crashed a target, kept as seeds)."""
    if os.path.isdir(d):
        for f in os.listdir(d):
            if not f.startswith("regress-"):
                p = os.path.join(d, f)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    else:
        os.makedirs(d)


def put(target, name, data):
    d = os.path.join(FUZZ, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def jb(obj, indent=None):
    return json.dumps(obj, indent=indent, ensure_ascii=False).encode()


# ---- safetensors ----------------------------------------------------------------------------------------
DT = {"F32": ("<f", 4), "F16": ("<e", 2), "BF16": (None, 2), "I8": ("<b", 1), "U8": ("<B", 1), "I64": ("<q", 8),
      "BOOL": ("<B", 1), "F64": ("<d", 8)}


def st_bytes(tensors, meta=None, pad=True):
    """tensors: list of (name, dtype, shape, values) in file order."""
    header, blob = {}, b""
    if meta is not None:
        header["__metadata__"] = meta
    for name, dt, shape, vals in tensors:
        fmt, size = DT[dt]
        if dt == "BF16":
            raw = b"".join(struct.pack("<f", v)[2:] for v in vals)
        else:
            raw = b"".join(struct.pack(fmt, v) for v in vals)
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def safetensors_seeds():
    t = "safetensors"
    reset(os.path.join(FUZZ, "corpus", t))
    files = {
        "empty": st_bytes([]),
        "meta": st_bytes([("w", "F32", [2, 2], [1, 2, 3, 4])], {"format": "pt"}),
        "dtypes": st_bytes([("a", "F64", [1], [1.5]), ("b", "I64", [2], [1, -1]), ("c", "F32", [3], [0, 1, 2]),
                            ("d", "BF16", [2, 1], [1, 2]), ("e", "F16", [2], [0.5, 2]), ("f", "I8", [3], [1, 2, 3]),
                            ("g", "BOOL", [1], [1])]),
        "scalar_zero": st_bytes([("s", "F32", [], [7]), ("z", "F32", [0, 4], []), ("y", "U8", [4], [1, 2, 3, 4])]),
        "nopad": st_bytes([("x", "F32", [1], [1])], pad=False),
        "model": st_bytes([("model.embed_tokens.weight", "BF16", [4, 2], list(range(8))),
                           ("model.norm.weight", "F32", [2], [1, 1])], {"format": "pt", "k": "v"}),
    }
    for name, data in files.items():
        put(t, "mem-" + name, b"\x00" + data)
        put(t, "file-" + name, b"\x01" + data)
    # truncated / corrupt variants
    put(t, "mem-truncated", b"\x00" + files["meta"][:-3])
    put(t, "mem-shortlen", b"\x00" + struct.pack("<Q", 4) + b"{}  ")
    # index against the fuzzer's fixed shards (fuzz_safetensors.c make_shards)
    s1, s2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    put(t, "index-full", b"\x02" + jb({"metadata": {"total_size": 18}, "weight_map": {"x": s1, "y": s1, "z": s2}}, 2))
    put(t, "index-partial", b"\x02" + jb({"weight_map": {"z": s2}}))
    put(t, "index-missing", b"\x02" + jb({"weight_map": {"x": "model-00003-of-00003.safetensors"}}))
    put(t, "index-traversal", b"\x02" + jb({"weight_map": {"x": "../" + s1}}))
    # model config.json (+ generation_config.json)
    llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
             "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
             "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}
    llama3 = dict(llama, rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 64, "rope_type": "llama3"},
                  eos_token_id=[2, 3], head_dim=16)
    qwen2 = dict(llama, architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=True,
                 sliding_window=32, max_window_layers=1)
    mistral = dict(llama, architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=64,
                   rope_scaling={"type": "linear", "factor": 2.0})
    bnb = dict(llama, quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True,
                                           "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True})
    gen = {"bos_token_id": 1, "eos_token_id": [2, 5], "do_sample": False}
    for name, c in [("llama", llama), ("llama3", llama3), ("qwen2", qwen2), ("mistral", mistral), ("bnb", bnb)]:
        put(t, "config-" + name, b"\x03" + jb(c, 2))
    put(t, "config-gen", b"\x03" + jb(llama) + SEP + jb(gen))


# ---- tokenizers -----------------------------------------------------------------------------------------
def trim_tokenizer(src_dir, dst_dir, keep_ids=400):
    tj = json.load(open(os.path.join(src_dir, "tokenizer.json"), encoding="utf-8"))
    m = tj["model"]
    vocab = m["vocab"]
    keep = {}
    for tok, i in vocab.items():
        single = len(tok) == 1 and (ord(tok) < 0x180 or tok == "\u2581")
        if i < keep_ids or single:
            keep[tok] = i
    for a in tj.get("added_tokens", []):
        if a["content"] in vocab:
            keep[a["content"]] = vocab[a["content"]]
    merges = []
    for mg in m["merges"]:
        a, b = mg.split(" ", 1) if isinstance(mg, str) else mg
        if a in keep and b in keep and (a + b) in keep:
            merges.append(mg)
    m["vocab"] = dict(sorted(keep.items(), key=lambda kv: kv[1]))
    m["merges"] = merges
    reset(dst_dir)
    with open(os.path.join(dst_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, separators=(",", ":"))
    for extra in ("tokenizer_config.json", "special_tokens_map.json"):
        p = os.path.join(src_dir, extra)
        if os.path.exists(p):
            shutil.copy(p, os.path.join(dst_dir, extra))
            os.chmod(os.path.join(dst_dir, extra), 0o644)


TEXTS = [b"Hello, world!", b"  leading spaces and\ttabs\n\nnew lines", b"caf\xc3\xa9 na\xc3\xafve \xe2\x96\x81 \xf0\x9f\x98\x80",
         b"<s>[INST] special <|im_start|> tokens </s>", b"1234567 digits 3.14159", b"\xff\xfe invalid \xc3 utf-8 \xed\xa0\x80",
         b"def f(x):\n    return x ** 2  # code", b"\x00NUL\x00bytes", "\u4f60\u597d\uff0c\u4e16\u754c".encode()]


def tokenizer_seeds():
    t = "tokenizer"
    reset(os.path.join(FUZZ, "corpus", t))
    data_dir = os.path.join(FUZZ, "data")
    os.makedirs(data_dir, exist_ok=True)
    for name in ("llama2", "phi-2", "falcon", "phi-3-mini"):
        dst = os.path.join(data_dir, "tokenizer-" + name)
        trim_tokenizer(os.path.join(SHARED, "tokenizers", name), dst)
        parts = []
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            p = os.path.join(dst, f)
            parts.append(open(p, "rb").read() if os.path.exists(p) else None)
        # tokenizer.json [SEP config [SEP special map]] SEP text: absent files are written empty
        body = parts[0] + SEP + (parts[1] or b"{}") + SEP + (parts[2] or b"{}") + SEP + TEXTS[0]
        put(t, "load-" + name, b"\x00" + body)
        put(t, "load-" + name + "-nocfg", b"\x00" + parts[0])
    demo = os.path.join(ROOT, "examples", "tokenizer")
    shutil.copytree(demo, os.path.join(data_dir, "tokenizer-demo"), dirs_exist_ok=True)
    put(t, "load-demo", b"\x00" + open(os.path.join(demo, "tokenizer.json"), "rb").read() + SEP +
        open(os.path.join(demo, "tokenizer_config.json"), "rb").read())
    for i, s in enumerate(TEXTS):
        put(t, "text-%d" % i, b"\x01" + s)
    for f in sorted(os.listdir(os.path.join(SHARED, "chat_templates"))):
        if f.endswith(".jinja"):
            put(t, "text-" + f[:-6][:40], b"\x01" + open(os.path.join(SHARED, "chat_templates", f), "rb").read()[:1500])


# ---- adapters -------------------------------------------------------------------------------------------
# the tiny model of fuzz_adapter.c: C 8, FF 12, L 2, H 2, KH 1, D 4
SHAPES = {"q_proj": (8, 8), "k_proj": (4, 8), "v_proj": (4, 8), "o_proj": (8, 8), "gate_proj": (12, 8),
          "up_proj": (12, 8), "down_proj": (8, 12)}
PARENT = {m: ("self_attn" if m in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp") for m in SHAPES}


def peft_config(**kw):
    c = {"alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "tiny", "bias": "none",
         "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True, "layer_replication": None,
         "layers_pattern": None, "layers_to_transform": None, "loftq_config": {}, "lora_alpha": 16,
         "lora_dropout": 0.05, "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None,
         "peft_type": "LORA", "r": 2, "rank_pattern": {}, "revision": None, "target_modules": ["q_proj", "v_proj"],
         "task_type": "CAUSAL_LM", "use_dora": False, "use_rslora": False}
    c.update(kw)
    return c


def peft_weights(modules, r=2, dora=False, dtype="F32", prefix="base_model.model.", infix="", ranks=None):
    ts = []
    k = 0
    for layer in range(2):
        for m in modules:
            oc, c = SHAPES[m]
            rr = (ranks or {}).get(m, r)
            base = "%smodel.layers.%d.%s.%s." % (prefix, layer, PARENT[m], m)
            for kind, shape in (("lora_A", [rr, c]), ("lora_B", [oc, rr])):
                ts.append((base + kind + infix + ".weight", dtype, shape, [((k + i) % 7 - 3) * 0.125 for i in range(numel(shape))]))
                k += 1
            if dora:
                ts.append((base + "lora_magnitude_vector" + infix, dtype, [oc], [1.0 + 0.5 * i for i in range(oc)]))
    return st_bytes(ts, {"format": "pt"})


def adapter_seeds():
    t = "adapter"
    reset(os.path.join(FUZZ, "corpus", t))
    qv = ["q_proj", "v_proj"]
    allm = list(SHAPES)
    put(t, "qv", jb(peft_config(), 2) + SEP + peft_weights(qv))
    put(t, "all-dora-bf16", jb(peft_config(r=4, lora_alpha=8.0, use_dora=True, target_modules=allm), 2) + SEP +
        peft_weights(allm, r=4, dora=True, dtype="BF16"))
    put(t, "regex-rslora-f16", jb(peft_config(target_modules=".*\\.(q_proj|k_proj)", use_rslora=True), 2) + SEP +
        peft_weights(["q_proj", "k_proj"], dtype="F16", prefix="", infix=".default"))
    put(t, "patterns", jb(peft_config(target_modules="all-linear", rank_pattern={"q_proj": 3}, alpha_pattern={"v_proj": 4},
                                      init_lora_weights="gaussian"), 2) + SEP +
        peft_weights(allm, ranks={"q_proj": 3}))
    put(t, "config-only", jb(peft_config(target_modules=None)))
    put(t, "unsupported", jb(peft_config(bias="all", fan_in_fan_out=True)) + SEP + peft_weights(qv))
    put(t, "name", b"base_model.model.model.layers.1.mlp.down_proj.lora_magnitude_vector.weight")


# ---- train config ---------------------------------------------------------------------------------------
def config_seeds():
    t = "config"
    reset(os.path.join(FUZZ, "corpus", t))
    yaml = open(os.path.join(ROOT, "examples", "demo_qlora.yaml"), "rb").read()
    put(t, "yaml-demo", b"\x00" + yaml)
    put(t, "yaml-lists", b"\x00" + b"model_name_or_path: /m\noutput_dir: /o\ndataset: [a, b]\nlora_target:\n  - q_proj\n"
        b"  - v_proj\nval_size: 0.1\nbf16: true\neval_strategy: steps\nmax_steps: 10\nwarmup_steps: 2\n")
    demo = {"model_name_or_path": "/m", "output_dir": "/o", "dataset": "forge_sft", "lora_rank": 16, "lora_alpha": 32,
            "lora_target": ["q_proj", "v_proj"], "learning_rate": 1e-4, "packing": True, "neat_packing": True,
            "cutoff_len": 512, "val_size": 10, "quantization_bit": None, "num_train_epochs": 1.5}
    put(t, "json-demo", b"\x01" + jb(demo, 2))
    hp = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in demo.items()}
    hp.update({"sagemaker_program": "train", "_tuning_objective_metric": "loss", "bf16": "True",
               "lora_target": "q_proj,v_proj"})
    put(t, "hp-sagemaker", b"\x02" + jb(hp, 2))
    flags = [b"--model_name_or_path", b"/m", b"--output-dir=/o", b"dataset=a,b", b"--packing", b"--lora_rank", b"4",
             b"config.yaml", b"--bf16", b"false"]
    put(t, "flags", b"\x03" + b"\x00".join(flags))


# ---- training data --------------------------------------------------------------------------------------
def data_seeds():
    t = "data"
    reset(os.path.join(FUZZ, "corpus", t))
    rows = json.load(open(os.path.join(ROOT, "examples", "data", "forge_sft.json"), encoding="utf-8"))[:6]
    alpaca = rows + [{"instruction": "Sum", "input": "2 and 3", "output": "5", "system": "Be brief.",
                      "history": [["hi", "hello"]]}]
    sharegpt = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
                                   {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}],
                 "system": "You are terse."},
                {"conversations": [{"from": "system", "value": "s"}, {"from": "user", "value": "call"},
                                   {"from": "function_call", "value": "{\"name\":\"f\"}"},
                                   {"from": "observation", "value": "42"}, {"from": "assistant", "value": "42."}]}]
    openai = [{"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                            {"role": "assistant", "content": "Hello, how can I help?"}]},
              {"messages": [{"role": "user", "content": "caf\u00e9?"}, {"role": "assistant", "content": "\u2615"}]}]
    tokenized = [{"input_ids": [1, 5, 9, 13, 2], "attention_mask": [1, 1, 1, 1, 0]},
                 {"input_ids": [3, 4, 5], "labels": [-100, 4, 5]}, {"input_ids": list(range(40))}]
    info = {"fz": {"file_name": "d.json", "formatting": "alpaca",
                   "columns": {"prompt": "instruction", "query": "input", "response": "output"}}}
    info_sg = {"fz": {"file_name": "d.jsonl", "formatting": "sharegpt", "columns": {"messages": "conversations"},
                      "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}}}
    # flags byte 0: bits 0-1 ext (.json .jsonl .json.gz .jsonl.gz), bit 2 gzip in harness, bit 3 dataset_info,
    # 4 packing, 5 train_on_prompt, 6 mask_history, 7 val_size; byte 1: cutoff 4 + 8*(b & 63), bit 6 llama3
    for name, rs in (("alpaca", alpaca), ("sharegpt", sharegpt), ("openai", openai), ("tokenized", tokenized)):
        arr = jb(rs, 2)
        lines = b"\n".join(jb(r) for r in rs) + b"\n"
        put(t, name + "-json", bytes([0, 16]) + arr)
        put(t, name + "-jsonl", bytes([1 | 16, 63]) + lines)
        put(t, name + "-json-gz", bytes([2 | 4 | 128, 16 | 64]) + arr)
        put(t, name + "-jsonl-gz-raw", bytes([3, 32]) + gzip.compress(lines, 6, mtime=0))
        put(t, name + "-lines-in-json", bytes([0 | 32 | 64, 8]) + lines)
    put(t, "info-alpaca", bytes([0 | 8, 20]) + jb(alpaca) + SEP + jb(info))
    put(t, "info-sharegpt", bytes([1 | 8 | 16, 20 | 64]) + b"\n".join(jb(r) for r in sharegpt) + SEP + jb(info_sg))


# ---- HTTP request bodies (fuzz_protocol) ----------------------------------------------------------------
def protocol_seeds():
    t = "protocol"
    reset(os.path.join(FUZZ, "corpus", t))
    bodies = [
        {"inputs": "hi", "parameters": {"stop": ["</s>"]}},
        {"inputs": ["a", "b"], "parameters": {"max_new_tokens": 16, "temperature": 0.7, "top_p": 0.9, "top_k": 5,
                                              "repetition_penalty": 1.1, "seed": 3, "details": True,
                                              "decoder_input_details": True, "return_full_text": True},
         "stream": True, "adapters": ["a1", "b2"]},
        {"messages": [{"role": "user", "content": "x"}]},
        {"model": "a1", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
         "max_tokens": 8, "stream": True, "logprobs": True, "top_logprobs": 2, "stop": "\n", "n": 1},
        {"inputs": "x", "parameters": {"do_sample": False, "max_new_tokens": 0}},
    ]
    for i, b in enumerate(bodies):
        put(t, "body-%d" % i, jb(b))


def main():
    safetensors_seeds()
    tokenizer_seeds()
    adapter_seeds()
    config_seeds()
    data_seeds()
    protocol_seeds()
    total = 0
    for dp, _, fs in os.walk(FUZZ):
        for f in fs:
            if "/corpus/" in dp + "/" or "/data/" in dp + "/":
                total += os.path.getsize(os.path.join(dp, f))
    print("make_seeds: %d bytes of corpus and tokenizers under tests/fuzz" % total)


if __name__ == "__main__":
    main()
