#!/usr/bin/env python3
"""--device on the commands that run the model (issue 12, item 6): `cpu` and `auto` run (auto is the cpu
until the model runs on CUDA), `cuda` / `cuda:N` on a machine without a usable GPU (or a build without CUDA)
exit 1 with "no CUDA device" and never crash; a malformed value exits 2 naming it. With a device present the
CUDA answer is the explicit "does not run on the CUDA backend yet" (exit 1), also never a crash.
"""
import argparse
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def run(cmd, timeout=120):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    model = os.path.join(a.workdir, "m")
    p = run([a.bin, "make-tiny", "--arch", "llama", "--out", model, "--tokenizer", os.path.join(REPO, "examples", "tokenizer")])
    assert p.returncode == 0, p.stderr
    npass = nfail = 0

    def check(name, ok, detail=""):
        nonlocal npass, nfail
        print(f"  {'PASS' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"), flush=True)
        npass, nfail = npass + bool(ok), nfail + (not ok)

    commands = {
        "score": [a.bin, "score", "--model", model, "--tokens", "1 2 3", "--out", os.path.join(a.workdir, "l.npy")],
        "generate": [a.bin, "generate", "--model", model, "--tokens", "1 2 3", "--max-new-tokens", "2"],
        "serve": [a.bin, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0"],
    }
    for cmd, base in commands.items():
        for dev in ("cuda", "cuda:0", "cuda:3"):
            p = run(base + ["--device", dev])
            err = p.stderr
            ok = p.returncode == 1 and ("CUDA device" in err or "does not run on the CUDA backend yet" in err)
            check(f"{cmd} --device {dev}: exit 1 with the reason", ok, f"rc {p.returncode} {err[-400:]!r}")
        for dev in ("tpu", "cuda:x", "cuda:-1", "gpu", ""):
            p = run(base + ["--device", dev])
            check(f"{cmd} --device {dev!r}: usage error (exit 2) naming it", p.returncode == 2 and "--device" in p.stderr,
                  f"rc {p.returncode} {p.stderr[-300:]!r}")
        if cmd != "serve":
            outs = {}
            for dev in ("cpu", "auto", None):
                extra = ["--device", dev] if dev else []
                out = list(base)
                if cmd == "score":
                    out[-1] = os.path.join(a.workdir, f"l-{dev}.npy")
                p = run(out + extra)
                check(f"{cmd} --device {dev}: runs", p.returncode == 0, p.stderr[-300:])
                outs[dev] = open(out[-1], "rb").read() if cmd == "score" and p.returncode == 0 else p.stdout
            check(f"{cmd}: cpu, auto and the default give the same output",
                  outs.get("cpu") == outs.get("auto") == outs.get(None), "outputs differ")
    print(f"{npass} passed, {nfail} failed")
    sys.exit(1 if nfail else 0)


if __name__ == "__main__":
    main()
