#!/usr/bin/env python3
"""Bad input to `loraforge train` (issue 5 point 10): clear errors, nothing lost.

Every failing case must exit 1 or 2 (2 = bad configuration; never a signal or a sanitizer report), and its
stderr must name the culprit: file:line for rows, the key for config values, the tensor for an adapter of
another base, the path for files and directories. Cases that must still train (some bad rows, unknown keys,
SageMaker string hyperparameters) must exit 0 and report what they skipped or ignored by name.

Full disk while checkpointing is a real OS failure: the trainer runs with RLIMIT_FSIZE set and SIGXFSZ ignored
(an ignored disposition survives exec), so a write past the limit fails with EFBIG. The limit is calibrated from
an unlimited run of the same config: checkpoint trainer_state.json grows with log_history (every step is
logged), so checkpoint-S fits and checkpoint-2S does not, while every other file written before 2S fits. After
the failure: exit 1 naming the checkpoint, checkpoint-S complete and resumable (the resumed losses equal the
unlimited run's), no checkpoint-2S under its final name (save_total_limit 1 did not delete checkpoint-S), no
temp files left (the trainer removes its temp dir and temp files on failure: checked). A second limit, between
the tokenizer copy and every other file, fails the final save: exit 1, last checkpoint kept.

Broken JSON (a syntax error) stops the run with file:line:column, as data.h specifies; a valid JSON line that
is not an object ([1, 2], "text", 42, null) is a bad row: skipped and reported with its line.

Everything runs on a 1-layer, hidden-32 model with the bundled demo tokenizer; the whole test takes seconds.
Random parts (row order inside the mixed files, learning rate, seeds passed to make-tiny and train) come
from LF_TEST_SEED or a fresh seed, printed.
"""
import argparse
import gzip
import json
import os
import random
import resource
import shutil
import signal
import stat
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "..", "..", "examples", "tokenizer")
GARBAGE = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "Segmentation fault", "Traceback",
           "Assertion", "core dumped", "Aborted")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    seed = int(os.environ.get("LF_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
    print(f"seed {seed} (set LF_TEST_SEED to reproduce)")
    rng = random.Random(seed)
    w = os.path.abspath(a.workdir)
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    binp = os.path.abspath(a.bin)
    passed = failed = 0

    def check(ok, msg):
        nonlocal passed, failed
        passed += bool(ok)
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {msg}", flush=True)
        return ok

    def run(args, env=None, preexec=None):
        e = dict(os.environ)
        e.pop("SM_HP_PATH", None)
        e.update(env or {})
        return subprocess.run([binp] + args, capture_output=True, text=True, cwd=w, env=e, preexec_fn=preexec,
                              timeout=300)

    def clean(p):
        return p.returncode >= 0 and not any(g in p.stderr for g in GARBAGE)

    def last_err(p):
        lines = [l for l in p.stderr.strip().splitlines() if not l.startswith(("[loraforge INFO]", "  "))]
        return lines[-1][:300] if lines else ""

    def expect_fail(name, args, needles, codes=(1, 2), env=None):
        p = run(args, env)
        miss = [n for n in needles if n not in p.stderr]
        ok = p.returncode in codes and not miss and clean(p)
        check(ok, f"{name}: exit {p.returncode}: {last_err(p)}" + (f" [missing in stderr: {miss}]" if miss else ""))
        if not ok:
            print("    stderr tail: " + p.stderr.strip()[-1500:].replace("\n", "\n    "))
        return p

    def expect_ok(name, args, needles, env=None, absent=()):
        p = run(args, env)
        miss = [n for n in needles if n not in p.stderr]
        extra = [n for n in absent if n in p.stderr]
        ok = p.returncode == 0 and not miss and not extra and clean(p)
        check(ok, f"{name}: exit {p.returncode}" + (f" [missing in stderr: {miss}]" if miss else "") +
              (f" [unexpected in stderr: {extra}]" if extra else ""))
        if not ok:
            print("    stderr tail: " + p.stderr.strip()[-1500:].replace("\n", "\n    "))
        return p

    def tiny(out, hidden, layers=1, tokenizer=True):
        args = ["make-tiny", "--arch", "llama", "--out", out, "--hidden", str(hidden), "--layers", str(layers),
                "--heads", "2", "--kv-heads", "1", "--intermediate", "64", "--seed", str(rng.randrange(1 << 30))]
        if tokenizer:
            args += ["--tokenizer", TOKENIZER]
        p = run(args)
        if p.returncode != 0:
            raise RuntimeError(f"make-tiny {out}: {p.stderr.strip()}")

    def jsonl(name, lines):
        with open(os.path.join(w, name), "w") as f:
            f.write("\n".join(lines) + "\n")
        return name

    try:
        tiny("base", 32)
        tiny("base48", 48)        # same layout, another hidden size
        tiny("base2l", 32, 2)     # same hidden size, another layer count
        tiny("notok", 32, tokenizer=False)
    except Exception as e:
        check(False, f"setup: {e}")
        print(f"{passed} passed, {failed} failed")
        return 1

    lr = f"{rng.uniform(5e-3, 2e-2):.4g}"
    tseed = str(rng.randrange(1 << 20))
    good = [json.dumps({"instruction": f"Convert {i} m to mm.", "input": "", "output": f"{i} m = {i * 1000} mm."})
            for i in range(rng.randrange(3, 7))]
    jsonl("good.jsonl", good)
    common = ["--model_name_or_path", "base", "--dataset_dir", ".", "--template", "alpaca", "--threads", "2",
              "--max_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", lr, "--seed", tseed,
              "--lora_target", "q_proj,v_proj", "--lora_rank", "2", "--overwrite_output_dir", "true"]
    n_out = [0]

    def train(*extra, dataset="good.jsonl", out=None):
        n_out[0] += 1
        return ["train"] + common + ["--dataset", dataset, "--output_dir", out or f"out{n_out[0]}"] + list(extra)

    # ---------------------------------------------------------------- rows
    def mixed(name, good_rows, bad_rows):
        """good and bad rows in a seeded order (first row good so the format is detected); the bad rows' lines"""
        rows = [(r, None) for r in good_rows[1:]] + [(r, why) for r, why in bad_rows]
        rng.shuffle(rows)
        rows = [(good_rows[0], None)] + rows
        jsonl(name, [r for r, _ in rows])
        return [(i + 1, why) for i, (_, why) in enumerate(rows) if why is not None]

    alp = lambda **kw: json.dumps(kw)
    alpaca_bad = [("[1, 2]", "not an object"), ('"just a string"', "not"), ("42", "not"), ("null", "not"),
                  (alp(instruction=5, input="", output="x"), "'instruction'"),
                  (alp(instruction="a", output=7), "'output'"), (alp(instruction="a"), "missing 'output'"),
                  (alp(instruction="a", output=""), "empty"), (alp(instruction="a", input=3, output="b"), "'input'"),
                  (alp(instruction="a", output="b", history="nope"), "'history'"),
                  (alp(instruction="a", output="b", system=["s"]), "'system'")]
    sg = lambda conv, **kw: json.dumps(dict(conversations=conv, **kw))
    ok_conv = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello there"}]
    sharegpt_bad = [(json.dumps({"conversations": "hi"}), "must be a list"),
                    (sg([{"from": "wizard", "value": "hi"}, {"from": "gpt", "value": "x"}]), "'wizard'"),
                    (sg([{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]), "'value'"),
                    (sg([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]), "assistant"),
                    (sg([{"from": "human", "value": "a"}]), "assistant"), (sg([]), "no turns"),
                    (sg(["notobj"]), "object"), (sg([{"from": "human"}, {"from": "gpt", "value": "x"}]), "'value'"),
                    (sg(ok_conv, system=5), "'system'")]
    om = lambda m: json.dumps({"messages": m})
    ok_msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    openai_bad = [(json.dumps({"messages": {"role": "user"}}), "must be a list"),
                  (om([{"role": "robot", "content": "a"}, {"role": "assistant", "content": "b"}]), "'robot'"),
                  (om([{"role": "user", "content": 1}, {"role": "assistant", "content": "b"}]), "'content'"),
                  (om([]), "no turns"), (om([{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]), "empty")]
    tk = lambda **kw: json.dumps(kw)
    tok_bad = [(tk(input_ids="5 6"), "must be a list"), (tk(input_ids=[5, "x", 7]), "'input_ids'[1]"),
               (tk(input_ids=[5, -2, 7]), "-2"), (tk(input_ids=[5, 6, 99999]), "99999"),
               (tk(input_ids=[5, 6, 7], labels=[1, 2]), "'labels'"),
               (tk(input_ids=[5, 6, 7], attention_mask=[1, 1]), "'attention_mask'"), (tk(input_ids=[]), "no tokens")]
    sets = [("alpaca", "alpaca-mixed.jsonl", good, alpaca_bad),
            ("sharegpt", "sharegpt-mixed.jsonl", [sg(ok_conv), sg(ok_conv, system="be brief")], sharegpt_bad),
            ("openai", "openai-mixed.jsonl", [om(ok_msgs), om([{"role": "system", "content": "s"}] + ok_msgs)], openai_bad),
            ("tokenized", "tokenized-mixed.jsonl", [tk(input_ids=[5, 6, 7, 8]), tk(input_ids=[9, 10, 11], labels=[-100, 10, 11])],
             tok_bad)]
    for fmt, name, good_rows, bad_rows in sets:
        bad_lines = mixed(name, good_rows, bad_rows)
        where = [f"./{name}:{ln}: " for ln, _ in bad_lines]
        p = expect_ok(f"some bad {fmt} rows: trains on {len(good_rows)}, skips {len(bad_lines)} (lines "
                      f"{','.join(str(l) for l, _ in bad_lines)})",
                      train(dataset=name), where + [f"{len(good_rows) + len(bad_lines)} rows read, {len(bad_lines)} skipped"])
        # each reported line carries its own reason
        skips = [l.split("skipped row ", 1)[1] for l in p.stderr.splitlines() if "skipped row " in l]
        reason = lambda ln: next((l[len(f"./{name}:{ln}: "):] for l in skips if l.startswith(f"./{name}:{ln}: ")), "")
        wrong = [f"{ln}: want '{why}', got '{reason(ln)}'" for ln, why in bad_lines if why not in reason(ln)]
        check(not wrong, f"some bad {fmt} rows: every skip names its reason" + (f" [wrong: {wrong}]" if wrong else ""))
        only = "only-bad-" + name
        jsonl(only, [r for r, _ in bad_rows])
        expect_fail(f"only bad {fmt} rows: error", train(dataset=only), [f"./{only}", "no usable rows",
                                                                         f"{len(bad_rows)} skipped", f"./{only}:1"])
    # the same rows as a JSON array: positions are file[index]
    with open(os.path.join(w, "array.json"), "w") as f:
        f.write("[" + ",\n".join(good + ["7", alp(instruction="a", output=3)]) + "]")
    expect_ok("bad rows in a JSON array: reported as file[index]", train(dataset="array.json"),
              [f"./array.json[{len(good)}]", f"./array.json[{len(good) + 1}]", "2 skipped"])
    # broken JSON: a syntax error is not a row, it is an error naming file:line:column (data.h contract)
    broken = good[:2] + ['{"instruction": "Convert 3 m to mm.", "output": '] + good[2:]
    jsonl("broken.jsonl", broken)
    expect_fail("broken JSON line", train(dataset="broken.jsonl"), ["./broken.jsonl:3:", "invalid JSON"])
    with open(os.path.join(w, "broken-array.json"), "w") as f:
        f.write("[\n" + ",\n".join(good) + ",\n{\"instruction\": \n")
    expect_fail("truncated JSON array", train(dataset="broken-array.json"), ["./broken-array.json:", "invalid JSON"])
    jsonl("empty.jsonl", [""])
    expect_fail("empty dataset file", train(dataset="empty.jsonl"), ["empty.jsonl", "no rows"])
    with open(os.path.join(w, "good.jsonl"), "rb") as f, open(os.path.join(w, "trunc.jsonl.gz"), "wb") as g:
        g.write(gzip.compress(f.read())[:40])
    expect_fail("truncated .jsonl.gz", train(dataset="trunc.jsonl.gz"), ["trunc.jsonl.gz", "truncated or corrupt gzip"])
    os.makedirs(os.path.join(w, "no-data-dir"))
    with open(os.path.join(w, "no-data-dir", "notes.txt"), "w") as f:
        f.write("not data")
    expect_fail("dataset directory without data files", train(dataset="no-data-dir"), ["no-data-dir", ".jsonl"])
    os.makedirs(os.path.join(w, "mixdir"))
    shutil.copy(os.path.join(w, "good.jsonl"), os.path.join(w, "mixdir", "a.jsonl"))
    shutil.copy(os.path.join(w, "only-bad-openai-mixed.jsonl"), os.path.join(w, "mixdir", "b.jsonl"))
    expect_ok("dataset directory with a good and a bad file", train(dataset="mixdir"),
              ["./mixdir/b.jsonl:1: ", f"./mixdir/b.jsonl:{len(openai_bad)}: ", f"{len(openai_bad)} skipped"])
    expect_fail("eval_dataset missing", train("--eval_dataset", "nope-eval.jsonl"), ["nope-eval.jsonl"])
    expect_fail("eval_dataset with only bad rows", train("--eval_dataset", "only-bad-alpaca-mixed.jsonl"),
                ["eval_dataset", "only-bad-alpaca-mixed.jsonl", "no usable rows"])
    expect_fail("val_size larger than the data", train("--val_size", "50"), ["val_size", "50"])
    jsonl("unknown-rows.jsonl", [json.dumps({"prompt": "a", "completion": "b"})] * 2)
    expect_fail("rows of no known format", train(dataset="unknown-rows.jsonl"),
                ["./unknown-rows.jsonl:1", "unrecognized row", "no usable rows"])

    # ---------------------------------------------------------------- datasets
    expect_fail("missing dataset file", train(dataset="nope.jsonl"), ["nope.jsonl"])
    os.makedirs(os.path.join(w, "dd"))
    shutil.copy(os.path.join(w, "good.jsonl"), os.path.join(w, "dd", "good.jsonl"))
    info = {"mine": {"file_name": "good.jsonl", "formatting": "alpaca"}, "ghost": {"file_name": "ghost.jsonl"},
            "weird": {"file_name": "good.jsonl", "formatting": "yaml"}}
    with open(os.path.join(w, "dd", "dataset_info.json"), "w") as f:
        json.dump(info, f)
    dd = lambda ds: train("--dataset_dir", "dd", dataset=ds)
    expect_ok("dataset_info.json entry", dd("mine"), [])
    expect_fail("dataset name not in dataset_info.json", dd("mine,absent"), ["'absent'", "dd/dataset_info.json"])
    expect_fail("dataset_info.json file_name missing", dd("ghost"), ["ghost.jsonl", "dd/dataset_info.json"])
    expect_fail("dataset_info.json bad formatting", dd("weird"), ["formatting", "yaml", "alpaca"])
    os.makedirs(os.path.join(w, "dd2"))
    with open(os.path.join(w, "dd2", "dataset_info.json"), "w") as f:
        f.write('{"mine": {"file_name": ')
    expect_fail("dataset_info.json invalid JSON", train("--dataset_dir", "dd2", dataset="mine"),
                ["dd2/dataset_info.json", "line"])

    # ---------------------------------------------------------------- template
    expect_fail("template that does not exist", train("--template", "nosuch"), ["nosuch", "alpaca", "llama3"])
    jsonl("ids.jsonl", [tk(input_ids=[5, 6, 7, 8]), tk(input_ids=[9, 10, 11])])
    expect_fail("template that does not exist (model without tokenizer)",
                ["train", "--model_name_or_path", "notok", "--dataset_dir", ".", "--dataset", "ids.jsonl", "--template",
                 "nosuch", "--max_steps", "1", "--threads", "2", "--output_dir", "out-notok"], ["nosuch"])

    # ---------------------------------------------------------------- adapters
    adapters_ok = True
    for src in ("base48", "base2l"):
        p = run(["train", "--model_name_or_path", src, "--dataset_dir", ".", "--dataset", "good.jsonl", "--template",
                 "alpaca", "--max_steps", "1", "--threads", "2", "--output_dir", "ad-" + src, "--lora_rank", "2"])
        adapters_ok &= p.returncode == 0
    if check(adapters_ok, "adapters of other bases trained"):
        p = expect_fail("adapter of another hidden size", train("--adapter_name_or_path", "ad-base48"),
                        ["ad-base48/adapter_model.safetensors", "base_model.model.model.layers.0.", "shape", "another base"])
        check("[48, 2]" in p.stderr or "[2, 48]" in p.stderr, "adapter of another hidden size: the message gives the shapes")
        expect_fail("adapter of a deeper model", train("--adapter_name_or_path", "ad-base2l"),
                    ["ad-base2l/adapter_model.safetensors", "layers.1.", "another base"])
    expect_fail("adapter directory missing", train("--adapter_name_or_path", "no-adapter"), ["no-adapter"])
    expect_fail("resume from a checkpoint that does not exist", train("--resume_from_checkpoint", "nowhere/checkpoint-3"),
                ["nowhere/checkpoint-3"])

    # ---------------------------------------------------------------- output_dir
    with open(os.path.join(w, "a-file"), "w") as f:
        f.write("x")
    expect_fail("output_dir is a file", train(out="a-file"), ["output_dir", "a-file", "not a directory"])
    expect_fail("output_dir under a file", train(out="a-file/sub"), ["output_dir", "a-file/sub"])
    ro = os.path.join(w, "read-only")
    os.makedirs(ro)
    os.chmod(ro, stat.S_IRUSR | stat.S_IXUSR)
    if os.access(ro, os.W_OK):  # root ignores the mode: a path under a file is unwritable for everyone
        print("  (running as root: chmod does not stop writes; the read-only case uses a path under a file)")
        ro_out = "a-file/deeper/out"
    else:
        ro_out = "read-only/out"
    expect_fail("output_dir not writable", train(out=ro_out), ["output_dir", ro_out])
    if ro_out.startswith("read-only"):  # the existing read-only directory itself
        expect_fail("output_dir exists but is read-only", train(out="read-only"), ["output_dir", "read-only", "not writable"])
    os.chmod(ro, stat.S_IRWXU)
    os.makedirs(os.path.join(w, "used"))
    with open(os.path.join(w, "used", "adapter_model.safetensors"), "w") as f:
        f.write("precious")
    p = run(["train"] + [x for x in common if x not in ("--overwrite_output_dir", "true")] +
            ["--dataset", "good.jsonl", "--output_dir", "used"])
    check(p.returncode in (1, 2) and "overwrite_output_dir" in p.stderr and clean(p) and
          open(os.path.join(w, "used", "adapter_model.safetensors")).read() == "precious",
          f"output_dir holding an adapter is not overwritten: exit {p.returncode}: {last_err(p)}")

    # ---------------------------------------------------------------- config
    p = expect_ok("unknown keys warned by name", train("--lora_rnak", "4"), ['"lora_rnak"', '"lora_rank"'])
    with open(os.path.join(w, "cfg.yaml"), "w") as f:
        f.write("model_name_or_path: base\ndataset: good.jsonl\ndataset_dir: .\ntemplate: alpaca\nmax_steps: 1\n"
                "threads: 2\noutput_dir: out-yaml\nlora_rnak: 4\nfrobnicate: yes\n")
    expect_ok("unknown keys in YAML warned with file:line", ["train", "cfg.yaml"],
              ['cfg.yaml:8: unknown key "lora_rnak"', '"lora_rank"', 'cfg.yaml:9: unknown key "frobnicate"'])
    bad_values = [("lr_scheduler_type", "bogus", ["linear", "cosine"]), ("lora_dropout", "1.5", ["[0, 1)"]),
                  ("lora_target", "q_proj,bogus_proj", ["bogus_proj", "q_proj", "down_proj"]),
                  ("per_device_train_batch_size", "abc", ["integer"]), ("learning_rate", "fast", ["number"]),
                  ("packing", "maybe", ["true", "false"]), ("quantization_bit", "8", ["4"]),
                  ("save_strategy", "sometimes", ["steps", "epoch"]), ("lora_rank", "0", [">= 1"])]
    for key, val, accepted in bad_values:
        expect_fail(f"invalid {key}", train(f"--{key}", val), [key, val] + accepted, codes=(2,))
    with open(os.path.join(w, "bad.yaml"), "w") as f:
        f.write("model_name_or_path: base\ndataset: good.jsonl\nwarmup_ratio: 3\n")
    expect_fail("invalid value in YAML: file:line", ["train", "bad.yaml"], ["bad.yaml:3", "warmup_ratio", "[0, 1]"], codes=(2,))
    with open(os.path.join(w, "broken.yaml"), "w") as f:
        f.write("model_name_or_path: base\ndataset: [good.jsonl\nmax_steps: 1\n")
    expect_fail("broken YAML", ["train", "broken.yaml"], ["broken.yaml:3"], codes=(2,))
    expect_fail("config file missing", ["train", "missing.yaml"], ["missing.yaml"], codes=(1, 2))

    # SageMaker hyperparameters.json: every value a string
    hp = {"model_name_or_path": "base", "dataset": "good.jsonl", "dataset_dir": ".", "template": "alpaca",
          "max_steps": "2", "learning_rate": lr, "lora_target": "q_proj,v_proj", "lora_rank": "4", "packing": "false",
          "use_rslora": "True", "threads": "2", "output_dir": "out-hp", "overwrite_output_dir": "true",
          "warmup_ratio": "0.25", "lora_alpha": "null", "eval_steps": "null", "max_grad_norm": "0.5", "seed": tseed,
          "sagemaker_program": "train.py", "sagemaker_region": "\"us-east-1\"", "_tuning_objective_metric": "loss",
          "bogus_hp": "1"}
    with open(os.path.join(w, "hp.json"), "w") as f:
        json.dump(hp, f, indent=1)
    p = expect_ok("hyperparameters.json string values", ["train"], ['unknown key "bogus_hp"'],
                  env={"SM_HP_PATH": "hp.json"}, absent=("sagemaker_program", "_tuning"))
    try:
        args = json.load(open(os.path.join(w, "out-hp", "training_args.json")))
        adcfg = json.load(open(os.path.join(w, "out-hp", "adapter_config.json")))
        want = {"max_steps": 2, "lora_rank": 4, "packing": False, "use_rslora": True, "warmup_ratio": 0.25,
                "max_grad_norm": 0.5, "lora_target": ["q_proj", "v_proj"], "learning_rate": float(lr),
                "lora_alpha": 8, "eval_steps": args.get("logging_steps"), "seed": int(tseed)}
        diff = {k: (args.get(k), v) for k, v in want.items() if args.get(k) != v or type(args.get(k)) is not type(v)}
        check(not diff, "hyperparameters.json: strings converted to typed values (lora_alpha/eval_steps \"null\" -> "
                        "derived)" + (f" [differ: {diff}]" if diff else ""))
        check(adcfg.get("r") == 4 and adcfg.get("lora_alpha") == 8 and adcfg.get("use_rslora") is True and
              sorted(adcfg.get("target_modules", [])) == ["q_proj", "v_proj"],
              f"hyperparameters.json: adapter_config r={adcfg.get('r')} lora_alpha={adcfg.get('lora_alpha')} "
              f"use_rslora={adcfg.get('use_rslora')} target_modules={adcfg.get('target_modules')}")
    except Exception as e:
        check(False, f"hyperparameters.json outputs: {e}")
    for key, val, accepted in [("lora_rank", "eight", ["integer"]), ("lr_scheduler_type", "\"warp\"", ["cosine"]),
                               ("num_train_epochs", "[1, 2]", ["list"]), ("use_dora", "perhaps", ["true", "false"])]:
        with open(os.path.join(w, f"hp-{key}.json"), "w") as f:
            json.dump({"model_name_or_path": "base", "dataset": "good.jsonl", "output_dir": "out-hpbad", key: val}, f,
                      indent=1)
        shown = json.loads(val) if val.startswith('"') else val
        expect_fail(f"hyperparameters.json bad {key}", ["train"], [f"hp-{key}.json:", key] + accepted +
                    ([shown] if not val.startswith("[") else []), codes=(2,), env={"SM_HP_PATH": f"hp-{key}.json"})
    with open(os.path.join(w, "hp-broken.json"), "w") as f:
        f.write('{"model_name_or_path": "base",\n')
    expect_fail("hyperparameters.json invalid JSON", ["train"], ["hp-broken.json"], codes=(2,),
                env={"SM_HP_PATH": "hp-broken.json"})

    # ---------------------------------------------------------------- full disk while checkpointing
    S, M = 8, 2 * 8 + 2
    fd = ["train", "--model_name_or_path", "base", "--dataset_dir", ".", "--dataset", "good.jsonl", "--template",
          "alpaca", "--threads", "2", "--max_steps", str(M), "--per_device_train_batch_size", "2", "--learning_rate", lr,
          "--seed", tseed, "--lora_target", "q_proj", "--lora_rank", "1", "--logging_steps", "1", "--save_steps", str(S),
          "--lora_dropout", "0.1"]
    try:
        p = run(fd + ["--output_dir", "fd-ref"])
        if p.returncode != 0:
            raise RuntimeError(f"reference run failed: {last_err(p)}")
        ref = os.path.join(w, "fd-ref")
        grows = os.path.join(ref, f"checkpoint-{2 * S}", "trainer_state.json")
        # files written only at the end (tokenizer copy, final trainer_state with all steps) never get written
        # by the failing run; everything else it writes before checkpoint-2S is at most as large as here
        skip = {grows, os.path.join(ref, "trainer_state.json"), os.path.join(ref, "tokenizer.json")}
        others = max(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ref) for f in fs
                     if os.path.join(d, f) not in skip)
        big = os.path.getsize(grows)
        first = os.path.getsize(os.path.join(ref, f"checkpoint-{S}", "trainer_state.json"))
        if big - others < 256:
            raise RuntimeError(f"cannot place the size limit: checkpoint-{2 * S}/trainer_state.json {big} B vs other "
                               f"files up to {others} B")
        limit = (big + others) // 2
        print(f"  file size limit {limit} B: checkpoint-{S}/trainer_state.json {first} B, other files <= {others} B, "
              f"checkpoint-{2 * S}/trainer_state.json {big} B")

        def fsize_limit():
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

        p = subprocess.run([binp] + fd + ["--output_dir", "fd", "--save_total_limit", "1"], capture_output=True, text=True, cwd=w,
                           preexec_fn=fsize_limit, timeout=300)
        out = os.path.join(w, "fd")
        check(p.returncode == 1 and clean(p) and f"checkpoint at step {2 * S} not written" in p.stderr and
              "File too large" in p.stderr,
              f"full disk at checkpoint-{2 * S}: exit {p.returncode}: {last_err(p)}")
        names = sorted(os.listdir(out))
        check(f"checkpoint-{2 * S}" not in names and f"checkpoint-{S}" in names,
              f"full disk: checkpoint-{S} kept, no checkpoint-{2 * S} under its final name (output_dir: {names})")
        leftovers = [os.path.join(d, f) for d, ds, fs in os.walk(out) for f in fs + ds if ".tmp." in f]
        check(not leftovers, f"full disk: no temp files or dirs left {leftovers if leftovers else ''}")
        ck = os.path.join(out, f"checkpoint-{S}")
        same = all(open(os.path.join(ck, f), "rb").read() == open(os.path.join(ref, f"checkpoint-{S}", f), "rb").read()
                   for f in ("adapter_model.safetensors", "optimizer.safetensors", "adapter_config.json"))
        check(same and sorted(os.listdir(ck)) == sorted(os.listdir(os.path.join(ref, f"checkpoint-{S}"))),
              f"full disk: checkpoint-{S} is complete (files and bytes equal the unlimited run's)")
        p = run(fd + ["--output_dir", "fd", "--resume_from_checkpoint", ck])
        lo = lambda d: [(e["step"], e["loss"]) for e in map(json.loads, open(os.path.join(w, d, "trainer_log.jsonl")))
                        if "loss" in e]
        got = [x for x in lo("fd") if x[0] > S] if p.returncode == 0 else []
        want = [x for x in lo("fd-ref") if x[0] > S]
        check(p.returncode == 0 and got == want and len(want) == M - S,
              f"full disk: resume_from_checkpoint checkpoint-{S} runs to step {M} with the unlimited run's losses "
              f"({len(got)} steps {'equal' if got == want else 'DIFFER'}; exit {p.returncode})")
        # full disk when the final outputs are written: the biggest one is the tokenizer copy
        tok = os.path.getsize(os.path.join(ref, "tokenizer.json"))
        rest = max(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ref) for f in fs if f != "tokenizer.json")
        limit = (tok + rest) // 2
        p = subprocess.run([binp] + fd + ["--output_dir", "fd-end"], capture_output=True, text=True, cwd=w,
                           preexec_fn=fsize_limit, timeout=300)
        names = sorted(os.listdir(os.path.join(w, "fd-end")))
        check(p.returncode == 1 and clean(p) and "tokenizer.json" in p.stderr and "File too large" in p.stderr and
              f"checkpoint-{2 * S}" in names and not [n for n in names if ".tmp." in n],
              f"full disk at the final save (limit {limit} B): exit {p.returncode}: {last_err(p)}; last checkpoint "
              f"kept, no temp files ({names})")
    except Exception as e:
        check(False, f"full disk: {e}")

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
