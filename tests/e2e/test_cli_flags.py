#!/usr/bin/env python3
"""Every executable refuses bad flags (issue 11 item 6): the loraforge CLI and each subcommand, the bench/
programs and the tests/tools helpers (all built next to --bin).

For every binary: an unknown flag, a flag without its value (last, or followed by another --flag) and a
value that is not a number (or out of range) where a number is expected must exit 2 before doing any work,
with a stderr line that starts with the program's name and names the flag (and, for a typo, "did you mean"
the right one); a negative number after a numeric flag is a value, not a flag; --help exits 0 with the usage
on stdout. `bench_cpu_infer --model DIR --promptlen 4` (the report: it ran with the default prompt length and
exited 0) must exit 2 and suggest --prompt-len. No case may leave a sanitizer report.

Nothing here runs a benchmark or loads a model: every case stops at flag parsing, so the test takes seconds.
Known gaps are printed as NOTE lines, not failures: `loraforge train` warns about an unknown --key and goes on
(core/config.c; tests/e2e/test_train_bad_input.py expects that), sample_tool is positional-only.
"""
import argparse
import os
import subprocess
import sys

GARBAGE = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "Segmentation fault", "Aborted", "core dumped")
passed = failed = 0


def check(ok, what, detail=""):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {what}" + (f": {detail}" if detail else ""))


def run(cmd, cwd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", cwd=cwd, timeout=120,
                           stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        return None, "", "timed out after 120 s (the flags were not refused: it ran)"


def expect_usage_error(binp, args, prog, want, cwd):
    """exit 2, stderr names prog and contains every string of want, no sanitizer report."""
    rc, _, err = run([binp] + args, cwd)
    line = " ".join([os.path.basename(binp)] + args)
    bad = [w for w in [prog + ":"] + want if w not in err]
    junk = [g for g in GARBAGE if g in err]
    check(rc == 2 and not bad and not junk, line,
          f"exit {rc}, missing {bad}, garbage {junk}, stderr: {err.strip()[:300]!r}")


def expect_help(binp, args, cwd):
    rc, out, err = run([binp] + args, cwd)
    check(rc == 0 and "usage" in out.lower() and not any(g in err for g in GARBAGE),
          " ".join([os.path.basename(binp)] + args) + " prints the usage", f"exit {rc}, stdout {out[:120]!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    w = a.workdir
    lf = os.path.abspath(a.bin)
    bindir = os.path.dirname(lf)

    # a real model directory, so that a flag the parser skipped would mean a real run (not a load error)
    tiny = os.path.join(w, "tiny")
    if not os.path.isfile(os.path.join(tiny, "config.json")):
        rc, _, err = run([lf, "make-tiny", "--arch", "llama", "--out", tiny, "--seed", "1", "--layers", "1"], w)
        check(rc == 0, "make-tiny for the bench/tool cases", err.strip()[:200])

    def tool(name):
        p = os.path.join(bindir, name)
        check(os.access(p, os.X_OK), f"{name} is built next to {lf}")
        return p

    # ---- bench/ and tests/tools/: (binary, leading args, [(args, must-contain)...]) ----
    U, V, N = "unknown option", "needs a value", "is not"
    progs = {
        "bench_cpu_infer": ["--model", tiny],
        "bench_cpu_ops": [], "bench_quant": [], "bench_train_ops": [],
        "batch_tool": [tiny], "data_tool": [], "dtype_tool": [], "lora_tool": ["init", os.path.join(w, "never")],
        "optim_tool": ["sched", "constant", "3", os.path.join(w, "never.f64")], "quant_tool": [],
        "st_tool": ["write", os.path.join(w, "never.st")], "train_tool": [],
    }
    cases = {
        "bench_cpu_infer": [
            (["--promptlen", "4"], [U, "'--promptlen'", "did you mean '--prompt-len'"]),
            (["--prompt-len"], ["--prompt-len", V]),
            (["--prompt-len", "--decode", "3"], ["--prompt-len", V]),
            (["--threads", "abc"], ["--threads", "'abc'", N]),
            (["--decode", "1.5"], ["--decode", "'1.5'", N]),
            (["--threads", "-1"], ["--threads", "out of range"]),  # -1 is a value, not a flag
            (["--prompt-len", "0"], ["--prompt-len", "out of range"]),
            (["--quantization-bit", "3"], ["--quantization-bit"]),
        ],
        "bench_cpu_ops": [(["--thread", "2"], [U, "'--thread'", "did you mean '--threads'"]),
                          (["--threads"], ["--threads", V]), (["--threads", "x2"], ["--threads", "'x2'", N])],
        "bench_quant": [(["--bogus"], [U, "'--bogus'"]), (["--pool"], ["--pool", V]),
                        (["--rounds", "--quick"], ["--rounds", V]), (["--rounds", "abc"], ["--rounds", "'abc'", N]),
                        (["--rounds", "0"], ["--rounds", "out of range"])],
        "bench_train_ops": [(["--t", "4"], [U, "'--t'"]), (["--T"], ["--T", V]), (["--C", "abc"], ["--C", "'abc'", N]),
                            (["--OC", "-5"], ["--OC", "out of range"])],
        "batch_tool": [(["--bss", "4"], [U, "'--bss'", "did you mean '--bs'"]), (["--bs"], ["--bs", V]),
                       (["--bs", "--q4"], ["--bs", V]), (["--seqs", "many"], ["--seqs", "'many'", N])],
        "data_tool": [(["--tokeniser", "t"], [U, "'--tokeniser'", "did you mean '--tokenizer'"]),
                      (["--tokenizer"], ["--tokenizer", V]), (["--cutoff-len", "abc"], ["--cutoff-len", "'abc'", N]),
                      (["--val-size", "x"], ["--val-size", "'x'", N]), (["--seed", "-1"], ["--seed", "'-1'"])],
        "dtype_tool": [(["--bogus", "a", "b", "c"], [U, "'--bogus'"])],
        "lora_tool": [(["--bogus"], [U, "'--bogus'"]), (["--r"], ["--r", V]), (["--r", "--dora"], ["--r", V]),
                      (["--r", "abc"], ["--r", "'abc'", N]), (["--alpha", "1x"], ["--alpha", "'1x'", N])],
        "optim_tool": [(["--warmup-ratoi", "0.1"], [U, "'--warmup-ratoi'", "did you mean '--warmup-ratio'"]),
                       (["--lr"], ["--lr", V]), (["--lr", "--warmup", "2"], ["--lr", V]),
                       (["--lr", "abc"], ["--lr", "'abc'", N]), (["--warmup", "2.5"], ["--warmup", "'2.5'", N]),
                       # a negative value is consumed as the value: the error is about --bogus, not --warmup
                       (["--warmup", "-1", "--bogus"], [U, "'--bogus'"])],
        "quant_tool": [(["--bogus"], [U, "'--bogus'"]),
                       (["quant", "in.f32", "x", "4", "64", "nf4", "1", "out"], ["ROWS", "'x'", N]),
                       (["quant", "in.f32", "4", "4", "64", "nf4", "2", "out"], ["DQ", "out of range"])],
        "st_tool": [(["--dtype", "F32"], [U, "'--dtype'", "did you mean '--dtypes'"]),
                    (["--dtypes"], ["--dtypes", V])],
        "train_tool": [(["--modle", "m"], [U, "'--modle'", "did you mean '--model'"]), (["--model"], ["--model", V]),
                       (["--model", "--adapter", "a"], ["--model", V]), (["--seqs", "abc"], ["--seqs", "'abc'", N]),
                       (["--threads", "1e9"], ["--threads", "'1e9'", N]), (["--seqs", "0"], ["--seqs", "out of range"])],
    }
    for name, lead in progs.items():
        binp = tool(name)
        if not os.access(binp, os.X_OK):
            continue
        for args, want in cases[name]:
            expect_usage_error(binp, lead + args, name, want, w)
        expect_help(binp, ["--help"], w)
        expect_help(binp, lead + ["-h"], w)

    # ---- the loraforge CLI ----
    lp = "loraforge"
    expect_usage_error(lf, ["--bogus"], lp, [U, "'--bogus'"], w)
    expect_usage_error(lf, ["generat"], lp, ["'generat'", "did you mean 'generate'"], w)
    expect_help(lf, ["--help"], w)
    m = ["--model", tiny]
    cli = {
        "generate": [(m + ["--modle", "x"], [U, "'--modle'", "did you mean '--model'"]),
                     (m + ["--tokens"], ["--tokens", V]), (["--model", "--tokens", "1"], ["--model", V]),
                     (m + ["--tokens", "1", "--max-new-tokens", "abc"], ["--max-new-tokens", "'abc'", N]),
                     (m + ["--tokens", "1", "--temperature", "-1"], ["--temperature", "out of range"]),
                     (m + ["--tokens", "1", "--threads", "0x"], ["--threads", "'0x'", N]),
                     (m + ["--tokens", "1", "--quantization-bit"], ["--quantization-bit", V])],
        "score": [(m + ["--chunks", "4"], [U, "'--chunks'", "did you mean '--chunk'"]), (m + ["--out"], ["--out", V]),
                  (m + ["--out", "--tokens", "1"], ["--out", V]), (m + ["--chunk", "abc"], ["--chunk", "'abc'", N]),
                  (m + ["--chunk", "0"], ["--chunk", "out of range"])],
        "merge": [(m + ["--adaptor", "x"], [U, "'--adaptor'", "did you mean '--adapter'"]),
                  (m + ["--adapter", "a", "--out", "--dtype", "f32"], ["--out", V])],
        "quantize": [(m + ["--blocksise", "64"], [U, "'--blocksise'", "did you mean '--blocksize'"]),
                     (m + ["--out"], ["--out", V]), (m + ["--blocksize", "abc"], ["--blocksize", "'abc'", N]),
                     (m + ["--threads", "-2"], ["--threads", "out of range"])],
        "make-tiny": [(["--arch", "llama", "--layrs", "2"], [U, "'--layrs'", "did you mean '--layers'"]),
                      (["--arch"], ["--arch", V]), (["--arch", "--out", "x"], ["--arch", V]),
                      (["--arch", "llama", "--layers", "two"], ["--layers", "'two'", N]),
                      (["--arch", "llama", "--init-std", "-1"], ["--init-std", "out of range"])],
        "tokenize": [(m + ["--jsonll"], [U, "'--jsonll'", "did you mean '--jsonl'"]), (["--model"], ["--model", V]),
                     (["--model", "--jsonl"], ["--model", V])],
        "detokenize": [(m + ["--skip-specials"], [U, "'--skip-specials'", "did you mean '--skip-special'"]),
                       (["--stream", "--model"], ["--model", V])],
        "chat-template": [(m + ["--messsages", "x"], [U, "'--messsages'", "did you mean '--messages'"]),
                          (m + ["--messages"], ["--messages", V]), (m + ["--messages", "--extra", "e"], ["--messages", V])],
        "inspect": [([tiny, "--jsn"], [U, "'--jsn'", "did you mean '--json'"])],
        "serve": [(m + ["--bogus"], [U, "'--bogus'"]), (m + ["--port"], ["--port", V]),
                  (["--model", "--port", "8080"], ["--model", V]), (m + ["--port", "abc"], ["--port", "'abc'"]),
                  (m + ["--threads", "-1"], ["--threads", "out of range"])],
        "train": [(["--lora_rank"], ["--lora_rank", "missing value"]),
                  (["--lora_rank", "--seed", "1"], ["--lora_rank", "missing value"]),
                  (["--lora_rank", "abc"], ["--lora_rank", '"abc"', "not an integer"]),
                  (["--learning_rate", "-1"], ["--learning_rate", "out of range"])],
    }
    for sub, cs in cli.items():
        for args, want in cs:
            expect_usage_error(lf, [sub] + args, f"loraforge {sub}", want, w)
        expect_help(lf, [sub, "--help"], w)

    # ---- known gaps (not failures): printed so that they are not forgotten ----
    rc, _, err = run([lf, "train", "--lora_rnak", "4"], w)
    if 'unknown key "lora_rnak" ignored' in err:
        print("NOTE loraforge train --lora_rnak 4: an unknown command-line key is warned about and ignored, the run "
              "goes on (core/config.c lf_config_load_flags; tests/e2e/test_train_bad_input.py expects it)")
    sp = os.path.join(bindir, "sample_tool")
    if os.access(sp, os.X_OK):
        rc, _, err = run([sp, "--bogus", "x"], w)
        if rc != 2 or "--bogus" not in err:
            print(f"NOTE sample_tool --bogus x: exit {rc}: its argv is positional only (tests/tools/sample_tool.c)")

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
