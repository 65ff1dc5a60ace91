#!/usr/bin/env python3
"""test_tokenizer.py - `loraforge tokenize/detokenize` against Hugging Face `tokenizers` (0.19).

For every tokenizer in $LF_SHARED/data/tokenizers/ and for pipelines built here with `tokenizers`
(Llama-3 style, Qwen2 style, non-legacy Llama Metaspace, and one exercising the other normalizers and
pre-tokenizers), a seeded corpus (>= 2,000 strings: Latin, CJK, Cyrillic, Arabic, Devanagari, emoji + ZWJ,
code, whitespace runs, numbers, contractions in every case, special-token text, empty string) is encoded with
and without add_special_tokens and compared id for id; decode, decode(skip_special) and the streaming decoder
are compared with tokenizers' decode. The whole corpus goes through one process per check (--jsonl batch
mode). Invalid UTF-8 (which tokenizers cannot take) is checked against the documented behaviour: each invalid
sequence becomes U+FFFD, i.e. encode(bytes.decode("utf-8", "replace")).

usage: test_tokenizer.py --bin build/loraforge --workdir DIR   (seed: LF_TEST_SEED, default 20240611)
"""
import argparse
import json
import os
import random
import subprocess
import sys

MAX_SHOWN = 5


class Report:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL {name}: {detail}")


# ---------------------------------------------------------------- corpus
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")

WORDS = ("the quick brown fox jumps over lazy dog Hello World naïve café résumé Straße Ünïcödé façade "
         "tokenizer LoRA fine-tuning Llama model ÉCOLE İstanbul ΣΊΣΥΦΟΣ Ωmega ﬁle ﬂow ｆｕｌｌｗｉｄｔｈ "
         "e\u0301 A\u030a \u212b x² ½ Ⅻ").split()
CODE = ["def f(x):\n    return x * 2\n", "if (a != b) { return -1; }", "for i in range(10):\n\tprint(i)",
        '{"key": [1, 2.5, null], "k2": "v"}', "int main(void) { printf(\"%d\\n\", 42); }",
        "x = y ** 2 // 3 % 4", "#include <stdio.h>", "SELECT * FROM t WHERE a >= 10;", "a->b && c || !d",
        "    indented\n        more\n", "```python\nprint('hi')\n```", "https://example.com/a?b=c&d=e#f"]
SPECIAL_TEXT = ["<s>", "</s>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>",
                "<|end|>", "<|begin_of_text|>", "<|eot_id|>", ">>TITLE<<", ">>ABSTRACT<<", "<|system|>", "<0x0A>"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
WS = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t ", "\u00a0", "\u3000", "\u2009", "\u2028",
      "\u0085", "\u000b", "\u000c", "        ", " \t\n\r "]
EMOJI = ["😀", "😂", "🤖", "👍🏽", "❤️", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸", "🇯🇵", "👩🏾‍💻", "🧑‍🤝‍🧑", "✨", "🫠", "©", "™"]


def rand_range(rng, lo, hi, n):
    return "".join(chr(rng.randint(lo, hi)) for _ in range(n))


def fragment(rng):
    k = rng.randrange(14)
    if k == 0:
        return rng.choice(WORDS)
    if k == 1:  # CJK, kana, hangul
        lo, hi = rng.choice([(0x4E00, 0x9FFF), (0x3041, 0x3096), (0x30A1, 0x30FA), (0xAC00, 0xD7A3)])
        return rand_range(rng, lo, hi, rng.randint(1, 8))
    if k == 2:
        return rand_range(rng, 0x0410, 0x044F, rng.randint(1, 10))
    if k == 3:
        return rand_range(rng, 0x0627, 0x064A, rng.randint(1, 8))
    if k == 4:
        return "".join(chr(rng.randint(0x0915, 0x0939)) + rng.choice(["", "\u093e", "\u093f", "\u0940", "\u094d", "\u0902"])
                       for _ in range(rng.randint(1, 5)))
    if k == 5:
        return "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 4)))
    if k == 6:
        return rng.choice(CODE)
    if k == 7:
        return "".join(rng.choice(WS) for _ in range(rng.randint(1, 4)))
    if k == 8:
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 24)))
    if k == 9:
        c = rng.choice(CONTRACTIONS)
        c = "".join(ch.upper() if rng.random() < 0.5 else ch for ch in c)
        return rng.choice(WORDS) + c
    if k == 10:
        return rng.choice(SPECIAL_TEXT)
    if k == 11:
        return "".join(rng.choice("!@#$%^&*()[]{}<>?/\\|~`-_=+.,;:'\"…—–«»¿¡") for _ in range(rng.randint(1, 6)))
    if k == 12:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(1, 30)))
    return rand_range(rng, 0x00A1, 0x024F, rng.randint(1, 6))


def make_corpus(seed, n=2200):
    rng = random.Random(seed)
    corpus = ["", " ", "  ", "\n", "a", "Hello world", "<s>", " <s> ", "<s>hi</s>", "hello<s>", "I'M here, you'LL see",
              "DON'T 'S 'T 'RE 'VE 'M 'LL 'D 's 't 're 've 'm 'll 'd 'Ll 'lL", "1 12 123 1234 12345 123456 1234567",
              "<|endoftext|><|endoftext|>", "  <|im_start|>user\nhi<|im_end|>\n", "<|user|>\nhi<|end|>\n<|assistant|>",
              "\t\tx", "x   \n   y", "ｆｕｌｌ ﬁ ½ e\u0301", "a" * 300, " " * 100, "\n" * 50, "😀" * 40]
    while len(corpus) < n:
        parts = [fragment(rng) for _ in range(rng.randint(1, 8))]
        seps = [rng.choice(["", " ", " ", " ", "\n", "  ", "\t"]) for _ in parts]
        s = "".join(p + q for p, q in zip(parts, seps))
        if rng.random() < 0.2:
            s = s.strip()
        corpus.append(s)
    return corpus


# ---------------------------------------------------------------- built pipelines
def train_bpe(tokenizers, corpus, specials, vocab_size=3000):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus, trainer=trainer)
    return json.loads(tk.to_str())


def build_pipelines(tokenizers, train_corpus, shared_llama2):
    """name -> tokenizer.json dict."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    out = {}
    # Llama-3 style
    j = train_bpe(tokenizers, train_corpus, ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    tk = Tokenizer.from_str(json.dumps(j))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    bos = tk.token_to_id("<|begin_of_text|>")
    tk.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    j = json.loads(tk.to_str())
    j["model"]["ignore_merges"] = True
    out["built-llama3"] = j
    # Qwen2 style
    j = train_bpe(tokenizers, train_corpus, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], vocab_size=2500)
    tk = Tokenizer.from_str(json.dumps(j))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    out["built-qwen2"] = json.loads(tk.to_str())
    # non-legacy Llama (transformers LlamaConverter, legacy=False): Metaspace(first, split=False), no normalizer
    j = json.loads(json.dumps(shared_llama2))
    j["normalizer"] = None
    j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    out["built-llama-metaspace"] = j
    # everything else: normalizers and pre-tokenizers the real files do not use
    j = train_bpe(tokenizers, train_corpus, ["[BOS]", "[EOS]", "<sep>"], vocab_size=2000)
    tk = Tokenizer.from_str(json.dumps(j))
    tk.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\d{4,}"), "<num>"),
                                          normalizers.Replace("…", "..."), normalizers.Strip(left=False, right=True),
                                          normalizers.Lowercase()])
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s*[\r\n]+"), behavior="merged_with_previous"),
        pre_tokenizers.Split(",", behavior="merged_with_next"),
        pre_tokenizers.Split(Regex(r"[a-z]+"), behavior="contiguous", invert=True),
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)])
    tk.decoder = decoders.ByteLevel()
    tk.add_tokens([tokenizers.AddedToken("hello world", normalized=True, single_word=True),
                   tokenizers.AddedToken("<pad>", normalized=False, lstrip=True, rstrip=True)])
    tk.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]", pair="[BOS] $A [EOS] $B:1",
                                                      special_tokens=[("[BOS]", tk.token_to_id("[BOS]")),
                                                                      ("[EOS]", tk.token_to_id("[EOS]"))])
    out["built-misc"] = json.loads(tk.to_str())
    j = json.loads(json.dumps(out["built-misc"]))
    j["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "StripAccents"},
                                                           {"type": "Prepend", "prepend": "~"}]}
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Whitespace"}, {"type": "Split", "pattern": {"String": "e"}, "behavior": "Removed", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    out["built-misc2"] = j
    j = json.loads(json.dumps(out["built-misc"]))
    j["normalizer"] = {"type": "NFKD"}
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "WhitespaceSplit"}, {"type": "Digits", "individual_digits": False},
        {"type": "Metaspace", "replacement": "_", "add_prefix_space": False, "prepend_scheme": "never"},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    out["built-misc3"] = j
    return out


# ---------------------------------------------------------------- running the CLI
def run(bin_, args, data, rep, name):
    p = subprocess.run([bin_] + args, input=data, capture_output=True)
    if p.returncode != 0:
        rep.check(name, False, f"exit {p.returncode}: {p.stderr.decode(errors='replace')[:500]}")
        return None
    return p.stdout


def jsonl_lines(out):
    return [json.loads(l) for l in out.decode("utf-8").split("\n") if l != ""]


def compare_lists(rep, name, got, want, corpus):
    if got is None:
        return
    if len(got) != len(want):
        rep.check(name, False, f"{len(got)} results for {len(want)} inputs")
        return
    bad = [i for i in range(len(want)) if got[i] != want[i]]
    for i in bad[:MAX_SHOWN]:
        print(f"  {name} #{i} input={corpus[i]!r}\n    want={want[i]!r}\n    got ={got[i]!r}")
    print(f"  {name}: {len(want) - len(bad)}/{len(want)} equal")
    rep.check(name, not bad, f"{len(bad)} of {len(want)} differ")


def decode_oracle(oracle):
    """the oracle for decode. tokenizers 0.23 no longer treats a special added token marked "normalized": true
    (Llama-2's <s>, </s>, <unk>) as an added token when decoding: skip_special_tokens=True keeps it and the
    decoder chain adds a space before it ("<s> <s>hi" for [1, 1, hi]), which tokenizers <= 0.22 and every
    server built on them did not do. loraforge keeps the earlier behaviour (skipped when asked, glued to its
    neighbours otherwise); for decode the oracle is the same tokenizer with normalized=false on those tokens,
    which 0.23 decodes as before. Encoding is compared against the unmodified file."""
    import json as _json
    from tokenizers import Tokenizer
    j = _json.loads(oracle.to_str())
    hit = [a["content"] for a in j.get("added_tokens", []) if a.get("special") and a.get("normalized")]
    if not hit:
        return oracle
    for a in j["added_tokens"]:
        if a.get("special"):
            a["normalized"] = False
    print(f"  decode oracle: special tokens {hit!r} with normalized=false (tokenizers 0.23 decode change)")
    return Tokenizer.from_str(_json.dumps(j))


def check_tokenizer(rep, bin_, name, model_path, oracle, corpus):
    from tokenizers import Tokenizer  # noqa: F401
    dec = decode_oracle(oracle)
    data = "".join(json.dumps(s) + "\n" for s in corpus).encode()
    for add in (False, True):
        want = [e.ids for e in oracle.encode_batch(corpus, add_special_tokens=add)]
        out = run(bin_, ["tokenize", "--model", model_path, "--jsonl"] + (["--add-special"] if add else []), data, rep,
                  f"{name} encode add_special={add}")
        compare_lists(rep, f"{name} encode add_special={add}", jsonl_lines(out) if out is not None else None, want, corpus)
    enc = [e.ids for e in oracle.encode_batch(corpus, add_special_tokens=True)]
    ids_data = "".join(json.dumps(x) + "\n" for x in enc).encode()
    for skip in (False, True):
        want = dec.decode_batch(enc, skip_special_tokens=skip)
        flags = ["--skip-special"] if skip else []
        out = run(bin_, ["detokenize", "--model", model_path, "--jsonl"] + flags, ids_data, rep, f"{name} decode skip={skip}")
        compare_lists(rep, f"{name} decode skip_special={skip}", jsonl_lines(out) if out is not None else None, want, corpus)
        out = run(bin_, ["detokenize", "--model", model_path, "--jsonl", "--stream"] + flags, ids_data, rep,
                  f"{name} stream skip={skip}")
        got = ["".join(pieces) for pieces in jsonl_lines(out)] if out is not None else None
        compare_lists(rep, f"{name} stream decode skip_special={skip}", got, want, corpus)
    # plain (non-batch) mode on a few inputs: output format and invalid UTF-8
    samples = [corpus[i] for i in (5, 10, 11, 50, 100)]
    for s in samples:
        out = run(bin_, ["tokenize", "--model", model_path], s.encode(), rep, f"{name} plain tokenize")
        want = " ".join(map(str, oracle.encode(s, add_special_tokens=False).ids)) + "\n"
        rep.check(f"{name} plain tokenize {s[:20]!r}", out is not None and out.decode() == want, f"got {out!r} want {want!r}")
        ids = oracle.encode(s, add_special_tokens=True).ids
        out = run(bin_, ["detokenize", "--model", model_path], " ".join(map(str, ids)).encode(), rep, f"{name} plain detok")
        want = dec.decode(ids, skip_special_tokens=False)
        rep.check(f"{name} plain detokenize {s[:20]!r}", out is not None and out.decode() == want, f"got {out!r} want {want!r}")
    bad_utf8 = [b"abc\xffdef", b"\xe2\x82", b"caf\xc3", b"\xed\xa0\x80 surrogate", b"\xf0\x9f\x98 x \x80\x80",
                b"ok \xc0\xaf overlong", b"\xf4\x90\x80\x80 too big", b"\xe2\x82\xac fine"]
    for b in bad_utf8:
        out = run(bin_, ["tokenize", "--model", model_path], b, rep, f"{name} invalid utf8")
        want = " ".join(map(str, oracle.encode(b.decode("utf-8", "replace"), add_special_tokens=False).ids)) + "\n"
        rep.check(f"{name} invalid UTF-8 {b!r}", out is not None and out.decode() == want, f"got {out!r} want {want!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    rep = Report()
    try:
        import tokenizers
        from tokenizers import Tokenizer
    except ImportError as e:
        print(f"FAIL: cannot import tokenizers ({e}); install the oracle venv (scripts/setup-tests.sh)")
        print("0 passed, 1 failed")
        return 1
    seed = int(os.environ.get("LF_TEST_SEED", "20240611"))
    print(f"seed {seed} (LF_TEST_SEED), tokenizers {tokenizers.__version__}")
    os.makedirs(args.workdir, exist_ok=True)
    shared = os.environ.get("LF_SHARED", "/work/shared")
    tokdir = os.path.join(shared, "data", "tokenizers")
    corpus = make_corpus(seed)
    print(f"corpus: {len(corpus)} strings")

    targets = []  # (name, path for loraforge, oracle Tokenizer)
    names = sorted(os.listdir(tokdir)) if os.path.isdir(tokdir) else []
    rep.check("shared tokenizers present", len(names) > 0, f"nothing in {tokdir}")
    shared_llama2 = None
    for n in names:
        d = os.path.join(tokdir, n)
        j = json.load(open(os.path.join(d, "tokenizer.json"), encoding="utf-8"))
        # tokenizers 0.19 cannot load "a b" merges whose tokens contain spaces (llama2 has 3: "   " = " " + " ");
        # the oracle gets a copy without them. They can never fire there: the normalizer turns spaces into U+2581.
        m = j["model"].get("merges", [])
        dropped = [x for x in m if isinstance(x, str) and len(x.split(" ")) != 2]
        if dropped:
            j = dict(j, model=dict(j["model"], merges=[x for x in m if x not in dropped]))
            print(f"  {n}: oracle copy without {len(dropped)} space-containing merges {dropped!r}")
        if n == "llama2":
            shared_llama2 = j
        targets.append((n, d, Tokenizer.from_str(json.dumps(j))))

    train_corpus = make_corpus(seed + 1, 3000)
    if shared_llama2 is not None:
        for name, j in build_pipelines(tokenizers, train_corpus, shared_llama2).items():
            d = os.path.join(args.workdir, name)
            os.makedirs(d, exist_ok=True)
            path = os.path.join(d, "tokenizer.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(j, f, ensure_ascii=False)
            targets.append((name, path, Tokenizer.from_file(path)))

    for name, path, oracle in targets:
        print(f"== {name}")
        check_tokenizer(rep, args.bin, name, path, oracle, corpus)

    # merges as ["a", "b"] pairs (the current writer's form; tokenizers 0.19 cannot read it): same ids as strings
    if "phi-2" in names:
        j = json.load(open(os.path.join(tokdir, "phi-2", "tokenizer.json"), encoding="utf-8"))
        j["model"]["merges"] = [m.split(" ") for m in j["model"]["merges"]]
        path = os.path.join(args.workdir, "phi2-pairs.json")
        json.dump(j, open(path, "w", encoding="utf-8"), ensure_ascii=False)
        oracle = [t for t in targets if t[0] == "phi-2"][0][2]
        data = "".join(json.dumps(s) + "\n" for s in corpus).encode()
        out = run(args.bin, ["tokenize", "--model", path, "--jsonl"], data, rep, "pair merges")
        compare_lists(rep, "phi-2 pair-form merges", jsonl_lines(out) if out is not None else None,
                      [e.ids for e in oracle.encode_batch(corpus, add_special_tokens=False)], corpus)

    # split_special_tokens (tokenizer_config.json) = tokenizers' encode_special_tokens
    if "phi-3-mini" in names:
        d = os.path.join(args.workdir, "phi3-split-special")
        os.makedirs(d, exist_ok=True)
        src = os.path.join(tokdir, "phi-3-mini", "tokenizer.json")
        with open(os.path.join(d, "tokenizer.json"), "wb") as f:
            f.write(open(src, "rb").read())
        json.dump({"split_special_tokens": True}, open(os.path.join(d, "tokenizer_config.json"), "w"))
        oracle = Tokenizer.from_file(src)
        oracle.encode_special_tokens = True
        data = "".join(json.dumps(s) + "\n" for s in corpus).encode()
        out = run(args.bin, ["tokenize", "--model", d, "--jsonl"], data, rep, "split_special_tokens")
        compare_lists(rep, "phi-3-mini split_special_tokens", jsonl_lines(out) if out is not None else None,
                      [e.ids for e in oracle.encode_batch(corpus, add_special_tokens=False)], corpus)

    # unsupported components fail at load, naming the type; dropout != 0 fails
    if "phi-2" in names:
        base = json.load(open(os.path.join(tokdir, "phi-2", "tokenizer.json"), encoding="utf-8"))
        cases = [("pre_tokenizer", {"type": "BertPreTokenizer"}, 'pre_tokenizer type "BertPreTokenizer" is not supported'),
                 ("normalizer", {"type": "Precompiled", "precompiled_charsmap": ""}, 'normalizer type "Precompiled" is not supported'),
                 ("decoder", {"type": "WordPiece", "prefix": "##", "cleanup": True}, 'decoder type "WordPiece" is not supported'),
                 ("model", dict(base["model"], dropout=0.1), "dropout")]
        for key, val, msg in cases:
            j = dict(base)
            j[key] = val
            path = os.path.join(args.workdir, f"bad-{key}.json")
            json.dump(j, open(path, "w", encoding="utf-8"))
            p = subprocess.run([args.bin, "tokenize", "--model", path], input=b"x", capture_output=True)
            err = p.stderr.decode(errors="replace")
            rep.check(f"unsupported {key}", p.returncode == 1 and msg in err and err.startswith("loraforge tokenize: "),
                      f"exit {p.returncode}, stderr {err!r}")
        p = subprocess.run([args.bin, "tokenize"], input=b"x", capture_output=True)
        rep.check("usage error exits 2", p.returncode == 2, f"exit {p.returncode}")
        p = subprocess.run([args.bin, "detokenize", "--model", os.path.join(tokdir, "phi-2")], input=b"1 x 2",
                           capture_output=True)
        rep.check("bad id exits 1", p.returncode == 1 and b"loraforge detokenize: " in p.stderr, f"exit {p.returncode}")

    # a large input must not be quadratic (llama2 has no pre-tokenizer: one 2 MB word through the merge loop)
    if "llama2" in names:
        import time
        big = ("Lorem ipsum dolor sit amet, 😀 ünïcode 12345 " * 50000).encode()
        t0 = time.time()
        out = run(args.bin, ["tokenize", "--model", os.path.join(tokdir, "llama2")], big, rep, "large input")
        dt = time.time() - t0
        oracle = [t for t in targets if t[0] == "llama2"][0][2]
        want = " ".join(map(str, oracle.encode(big.decode(), add_special_tokens=False).ids)) + "\n"
        print(f"  large input: {len(big) / 1e6:.1f} MB in {dt:.2f} s")
        rep.check("large input (2.4 MB) equal and < 30 s", out is not None and out.decode() == want and dt < 30, f"{dt:.1f} s")

    print(f"{rep.passed} passed, {rep.failed} failed")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
