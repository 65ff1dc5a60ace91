#!/usr/bin/env python3
"""test_serve.py - end-to-end tests of `loraforge serve` (issue 6) with real HTTP clients (requests,
http.client, raw sockets, curl) against servers started here on free loopback ports.

Run: python test_serve.py --bin BUILD/loraforge --workdir DIR   (seed: LF_TEST_SEED, default random; printed)

Fixtures (serve_fixtures.py): a tiny Llama made by `loraforge make-tiny` with the bundled tokenizer, PEFT 0.12
adapters (LoRA r8 x2, DoRA r8, LoRA r4; r32 over --max-lora-rank; one made for a hidden-128 model).

Groups (case counts are printed per group and in total; exit 1 on any failure):
  startup      serve --help, /ping 503-before-200, curl
  parity       greedy /invocations == `loraforge generate` == transformers(+peft) generate (ids, text, finish),
               log_prob == torch log_softmax (1e-4), repetition_penalty vs transformers, top_k=1 == greedy
  stream       JSON lines and SSE (Accept) parsed line by line, final line == non-stream result, curl -N
  chat         OpenAI chat on /invocations and /v1/chat/completions, usage, logprobs, stream + [DONE]
  params       stop sequences across token boundaries, seeds, return_full_text, adapter choice
               (header > body), list inputs with per-input adapters
  errors       400 / 404 / 405 / 413 / 422 with the JSON error body
  hostile      deep nesting, 1e400, invalid UTF-8, NUL, 7 MB bodies -> 4xx, server alive
  adapters     POST/GET/DELETE /adapters (JSON and query string), path traversal refused, 409/424/404/507,
               MME /models routes
  concurrency  64 concurrent clients, mixed adapters, stream and not: each == its single-request result;
               /ping fast under load; KV blocks all free afterwards
  dynamic      adapter register/unregister while requests run
  metrics      Prometheus text format, counters moving
  sse-server   --stream-format sse
  preemption   tiny --kv-cache-memory: preemptions happen, outputs unchanged; too small a pool refused
  queue        --max-queue tiny: 429 under load, never a crash; --tgi-compat shapes
  sigterm      SAGEMAKER_BIND_TO_PORT, /ping 503 while loading; SIGTERM: in-flight requests answered, exit 0
               within 25 s
  long-requests  (10M-parameter model without EOS) tokens streamed as generated; DELETE of an adapter waits for
               its in-flight stream while new requests for it get 404; a client that disconnects (stream or
               not) has its sequence cancelled
  docs         every bash example of docs/serving.md, run against the documented `loraforge serve` command
  drain-deadline  SIGTERM with work that cannot finish in 25 s: the rest is cancelled, yet every request gets a
               complete answer (stream: final line with finish_reason "error"; else 503/500 + error body)
"""
import argparse
import json
import os
import random
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
REPO = os.path.dirname(os.path.dirname(HERE))

from serve_util import Results, Server, ServerStartError, error_body_ok, free_port, raw_exchange  # noqa: E402
from serve_util import read_jsonlines, read_sse  # noqa: E402

R = Results()

try:
    import requests
    from serve_client import Gen, from_result, body, gen, params
    from serve_fixtures import Fixtures, Reference, kv_block_bytes
except Exception as e:  # a missing package is a failure, never a skip
    R.check("import requests/torch/transformers/peft", False, repr(e))
    sys.exit(R.summary() and 1)

N = 16              # max_new_tokens of most cases
MAX_MODEL_LEN = 256
MAX_LORAS = 8
TIE_TOL = 1e-4      # a greedy step whose top-2 logits differ by less than this may legitimately flip between two
                    # f32 implementations (different summation orders: ~1e-6 relative); such a divergence is noted
LP_TOL = 1e-4       # log_prob vs torch float64 log_softmax of the same model: f32 forward rounding (~1e-6 per op)
ADAPTERS = [None, "alpha", "beta", "dora", "r4"]
UPROMPT = "Héllo wörld — 日本語のテキスト 🙂 naïve café, Ελληνικά."  # multi-byte UTF-8 through the byte-level BPE
WORDS = ("the quick brown fox jumps over lazy dog river stone light green house market winter song paper "
         "window garden silver morning table ocean forest apple yellow north").split()


class Ctx:
    pass


def diverge_ok(a, b, gaps):
    """a == b, or they first differ at a near-tie step of the reference."""
    if a == b:
        return True, ""
    i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
    if i < len(gaps) and gaps[i] < TIE_TOL:
        return True, f"diverged at near-tie step {i} (gap {gaps[i]:.2e})"
    gap = gaps[i] if i < len(gaps) else None
    return False, f"first difference at step {i}: {a} vs {b} (reference top-2 gap there {gap})"


def gen_ok(name, g, want=None):
    """The request answered 200 without stream/shape problems and (want) equals the expected Gen."""
    if not R.check(f"{name}: 200", g.status == 200, f"status {g.status} body {str(g.raw)[:300]}"):
        return False
    ok = R.check(f"{name}: well-formed", not g.problems and g.ids is not None, "; ".join(g.problems) or "no ids")
    if want is not None:
        ok = R.eq(f"{name}: == single-request result", g.key(), want.key()) and ok
    return ok


def exp(c, prompt, adapter, n=N):
    """The main server's single-request greedy result for (prompt, adapter, n), cached."""
    k = (prompt, adapter or None, n)
    if k not in c.exp:
        c.exp[k] = gen(c.main, body(prompt, adapter, n), c.eos)
    return c.exp[k]


def status_case(name, r_status, r_text, want, check_body=True):
    ok = R.check(f"{name}: {want}", r_status == want, f"status {r_status} body {r_text[:300]!r}")
    if ok and check_body:
        good, msg = error_body_ok(r_text, want)
        R.check(f"{name}: error body", good, msg)
    return ok


# ============================================================ groups


def g_startup(c):
    R.set_group("startup")
    p = subprocess.run([c.bin, "serve", "--help"], capture_output=True, text=True)
    out = p.stdout + p.stderr
    R.check("serve --help exits 0", p.returncode == 0, f"exit {p.returncode}: {out[-500:]}")
    missing = [f for f in ("--model", "--adapter", "--adapter-root", "--port", "--host", "--max-batch-size",
                           "--max-model-len", "--max-queue", "--kv-cache-memory", "--max-loras",
                           "--max-lora-rank", "--tgi-compat", "--stream-format") if f not in out]
    R.check("serve --help lists the flags", not missing, f"missing {missing}")
    R.check("/ping before ready only 503", all(s == 503 for s in c.main.ping_codes), f"{c.main.ping_codes}")
    r = c.main.get("/ping")
    R.eq("/ping 200 when ready", r.status_code, 200)
    p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", c.main.url("/ping")],
                       capture_output=True, text=True, timeout=30)
    R.eq("curl /ping", p.stdout.strip(), "200")
    st, _, _ = c.main.raw("HEAD", "/ping")
    R.eq("HEAD /ping", st, 200)
    # keep-alive: several requests (one streamed) on one connection, as SageMaker's front end sends them
    with requests.Session() as ss:
        rs = [ss.post(c.main.url("/invocations"), json=body(c.prompts[0], None, 4), timeout=60),
              ss.post(c.main.url("/invocations"), json=body(c.prompts[0], None, 4, stream=True), timeout=60),
              ss.get(c.main.url("/ping"), timeout=60),
              ss.post(c.main.url("/invocations"), json=body(c.prompts[0], "alpha", 4), timeout=60)]
        R.eq("keep-alive connection: 4 requests answered", [r.status_code for r in rs], [200] * 4)
        R.check("keep-alive: same answer before and after a stream on the connection",
                rs[0].json()["generated_text"] == exp(c, c.prompts[0], None, 4).text, rs[0].text[:200])
    r = c.main.post("/invocations", body(c.prompts[0], None, 4))
    R.check("non-stream Content-Type application/json", r.headers.get("Content-Type", "").startswith(
        "application/json"), r.headers.get("Content-Type"))


def g_parity(c):
    R.set_group("parity")
    cases = [(f"p{i}", p, ADAPTERS) for i, p in enumerate(c.prompts[:3])] + [("unicode", UPROMPT, [None, "dora"])]
    for pname, prompt, ads in cases:
        pids = c.ref.encode(prompt)
        for ad in ads:
            tag = f"{pname}/{ad or 'base'}"
            g = exp(c, prompt, ad)
            if not gen_ok(f"{tag} server", g):
                continue
            # loraforge generate
            cmd = [c.bin, "generate", "--model", c.fx.base, "--tokens", " ".join(map(str, pids)),
                   "--max-new-tokens", str(N), "--threads", "1"]
            if ad:
                cmd += ["--adapter", c.fx.adapters[ad]]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            cli = [int(x) for x in p.stdout.split()]
            if cli and cli[-1] in c.eos:
                cli = cli[:-1]
            hf, hf_eos, gaps = c.ref.greedy(pids, ad, N)
            ok, note = diverge_ok(g.ids, cli, gaps)
            R.check(f"{tag} == loraforge generate", p.returncode == 0 and ok, f"exit {p.returncode} {note}")
            ok, note2 = diverge_ok(g.ids, hf, gaps)
            R.check(f"{tag} == transformers{'+peft' if ad else ''} generate", ok, note2)
            for n_ in (note, note2):
                if n_ and ok:
                    R.note(f"{tag}: {n_}")
            R.eq(f"{tag} text == tokenizer.decode(ids)", g.text, c.ref.decode(g.ids))
            if g.ids == hf:
                R.eq(f"{tag} finish_reason", g.finish, "eos_token" if hf_eos else "length")
            lps = c.ref.logprobs(pids, g.all_ids, ad)
            bad = [(i, a, b) for i, (a, b) in enumerate(zip(g.lps, lps))
                   if not isinstance(a, (int, float)) or a > 0 or abs(a - b) > LP_TOL]
            R.check(f"{tag} log_prob <= 0 and == torch log_softmax", not bad and len(g.lps) == len(lps),
                    f"(step, server, torch): {bad[:4]}")
    for ad in ADAPTERS[1:]:
        differs = any(exp(c, p, ad).ids != exp(c, p, None).ids for p in c.prompts[:3])
        R.check(f"adapter {ad} changes the output", differs, "same ids as the base model on every prompt")
    # repetition_penalty (HF's RepetitionPenaltyLogitsProcessor) against transformers
    for ad in (None, "dora"):
        prompt = c.prompts[0]
        pids = c.ref.encode(prompt)
        g = gen(c.main, body(prompt, ad, N, repetition_penalty=1.3), c.eos)
        if gen_ok(f"repetition_penalty 1.3 {ad or 'base'}", g):
            hf, _, gaps = c.ref.greedy(pids, ad, N, repetition_penalty=1.3)
            ok, note = diverge_ok(g.ids, hf, gaps)
            R.check(f"repetition_penalty 1.3 {ad or 'base'} == transformers", ok, note)
    # sampling with top_k 1 / tiny top_p is greedy
    for extra in ({"top_k": 1}, {"top_p": 0.001}):
        g = gen(c.main, body(c.prompts[1], "beta", N, do_sample=True, temperature=1.0, seed=3, **extra), c.eos)
        if gen_ok(f"sampling {extra}", g):
            R.eq(f"sampling {extra} == greedy", g.ids, exp(c, c.prompts[1], "beta").ids)


def g_stream(c):
    R.set_group("stream")
    for ad in (None, "dora"):
        want = exp(c, c.prompts[0], ad)
        for accept, ctype in ((None, "application/jsonlines"), ("text/event-stream", "text/event-stream"),
                              ("application/jsonlines", "application/jsonlines")):
            tag = f"{ad or 'base'} Accept={accept}"
            g = gen(c.main, body(c.prompts[0], ad, N, stream=True), c.eos, accept=accept)
            R.check(f"{tag}: Content-Type {ctype}", (g.content_type or "").startswith(ctype), g.content_type)
            if gen_ok(f"{tag} stream", g, want):
                R.eq(f"{tag}: lines == tokens (+ final)", len([o for o in g.lines if o["token"]["id"] >= 0]),
                     len(want.all_ids))
                lps_ok = all(abs(a - b) <= 1e-6 for a, b in zip(g.lps, want.lps)) and len(g.lps) == len(want.lps)
                R.check(f"{tag}: details log_probs == non-stream", lps_ok, f"{g.lps} vs {want.lps}")
    want = exp(c, UPROMPT, "dora")
    g = gen(c.main, body(UPROMPT, "dora", N, stream=True), c.eos)
    gen_ok("multi-byte prompt stream", g, want)
    if g.lines:
        emitted = "".join(o["token"]["text"] for o in g.lines if o["token"]["id"] >= 0)
        R.check("multi-byte prompt stream: token texts add up to generated_text", emitted == g.text,
                f"{emitted!r} vs {g.text!r}")
    g = gen(c.main, body(UPROMPT, None, N, return_full_text=True), c.eos)
    if gen_ok("multi-byte prompt, return_full_text", g):
        R.eq("multi-byte prompt, return_full_text: prompt + text", g.text, UPROMPT + exp(c, UPROMPT, None).text)
    # adapter chosen by header on a stream
    want = exp(c, c.prompts[1], "alpha")
    g = gen(c.main, body(c.prompts[1], None, N, stream=True), c.eos,
            headers={"X-Amzn-SageMaker-Adapter-Identifier": "alpha"})
    gen_ok("stream with adapter header", g, want)
    # stream without details asked: the last line still carries details
    b = body(c.prompts[1], None, N, stream=True)
    b["parameters"]["details"] = False
    g = gen(c.main, b, c.eos)
    gen_ok("stream with details false", g, exp(c, c.prompts[1], None))
    # curl -N, line by line
    want = exp(c, c.prompts[2], "r4")
    p = subprocess.run(["curl", "-sN", "-H", "Content-Type: application/json", "--data-binary",
                        json.dumps(body(c.prompts[2], "r4", N, stream=True)), c.main.url("/invocations")],
                       capture_output=True, timeout=60)
    lines = p.stdout.decode("utf-8", "replace").split("\n")
    R.check("curl -N stream ends with a newline", lines and lines[-1] == "", repr(p.stdout[-100:]))
    try:
        objs = [json.loads(x) for x in lines if x]
        ok = objs[-1]["generated_text"] == want.text and \
            [o["token"]["id"] for o in objs if o["token"]["id"] >= 0][:len(want.ids)] == want.ids
        R.check("curl -N stream == non-stream", ok, f"{objs[-1]}")
    except (ValueError, KeyError, IndexError) as e:
        R.check("curl -N stream == non-stream", False, f"{e!r} {p.stdout[:300]!r}")
    # a client that goes away mid-stream: the server stays healthy
    r = requests.post(c.main.url("/invocations"), json=body(c.prompts[0], "alpha", 200, stream=True), stream=True,
                      timeout=60)
    it = r.iter_lines()
    next(it, None)
    r.close()
    R.check("server alive after a client dropped a stream", c.main.alive())


def chat_messages(prompt):
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": prompt}]


def g_chat(c):
    R.set_group("chat")
    msgs = chat_messages(c.prompts[0])
    rendered = c.fx.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    n_prompt = len(c.ref.encode(rendered))
    for ad in (None, "alpha"):
        want = exp(c, rendered, ad, 12)
        hdr = {"X-Amzn-SageMaker-Adapter-Identifier": ad} if ad else {}
        for path in ("/invocations", "/v1/chat/completions"):
            tag = f"{path} {ad or 'base'}"
            r = requests.post(c.main.url(path), headers=hdr, timeout=60,
                              json={"messages": msgs, "max_tokens": 12, "temperature": 0, "logprobs": True})
            if not R.eq(f"{tag}: 200", r.status_code, 200):
                R.note(r.text[:300])
                continue
            j = r.json()
            try:
                ch = j["choices"][0]
                ok = j["object"] == "chat.completion" and isinstance(j["id"], str) and isinstance(j["created"], int) \
                    and ch["message"]["role"] == "assistant" and ch["index"] == 0
                R.check(f"{tag}: chat.completion shape", ok, str(j)[:300])
                R.eq(f"{tag}: content == generate on the rendered template", ch["message"]["content"], want.text)
                R.eq(f"{tag}: finish_reason", ch["finish_reason"], {"length": "length", "eos_token": "stop"}
                     .get(want.finish, want.finish))
                u = j["usage"]
                R.eq(f"{tag}: usage", (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]),
                     (n_prompt, len(want.all_ids), n_prompt + len(want.all_ids)))
                lp = [x["logprob"] for x in ch["logprobs"]["content"]]
                R.check(f"{tag}: logprobs == details log_probs", len(lp) == len(want.lps) and
                        all(abs(a - b) <= 1e-5 for a, b in zip(lp, want.lps)), f"{lp} vs {want.lps}")
            except (KeyError, TypeError, IndexError) as e:
                R.check(f"{tag}: chat.completion fields", False, f"{e!r}: {str(j)[:400]}")
    r = c.main.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 12, "temperature": 0, "model": "dora"})
    R.check("chat \"model\" naming an adapter uses it", r.status_code == 200 and
            r.json()["choices"][0]["message"]["content"] == exp(c, rendered, "dora", 12).text, r.text[:300])
    r = c.main.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 12, "temperature": 0, "model": "gpt-4"})
    R.check("chat \"model\" not an adapter -> base", r.status_code == 200 and
            r.json()["choices"][0]["message"]["content"] == exp(c, rendered, None, 12).text, r.text[:300])
    # streaming: SSE with [DONE], and the default JSON lines on /invocations
    want = exp(c, rendered, None, 12)
    for path, accept in (("/invocations", "text/event-stream"), ("/v1/chat/completions", "text/event-stream"),
                         ("/invocations", None)):
        tag = f"stream {path} Accept={accept}"
        h = {"Accept": accept} if accept else {}
        r = requests.post(c.main.url(path), headers=h, stream=True, timeout=60,
                          json={"messages": msgs, "max_tokens": 12, "temperature": 0, "stream": True,
                                "stream_options": {"include_usage": True}})
        if not R.eq(f"{tag}: 200", r.status_code, 200):
            continue
        ct = r.headers.get("Content-Type", "")
        if accept:
            R.check(f"{tag}: text/event-stream", ct.startswith("text/event-stream"), ct)
            payloads, err = read_sse(r)
            R.check(f"{tag}: SSE framing", not err, err)
            R.eq(f"{tag}: ends with [DONE]", payloads[-1:] , ["[DONE]"])
            payloads = [p for p in payloads if p != "[DONE]"]
        else:
            R.check(f"{tag}: application/jsonlines", ct.startswith("application/jsonlines"), ct)
            objs, err = read_jsonlines(r)
            R.check(f"{tag}: JSON lines", not err, err)
            payloads = [json.dumps(o) for o in objs]
        try:
            chunks = [json.loads(p) for p in payloads]
            R.check(f"{tag}: every chunk is chat.completion.chunk",
                    all(ch["object"] == "chat.completion.chunk" for ch in chunks), str(chunks[:2])[:300])
            deltas = [ch["choices"][0]["delta"] for ch in chunks if ch.get("choices")]
            R.eq(f"{tag}: first delta has role assistant", deltas[0].get("role"), "assistant")
            text = "".join(d.get("content") or "" for d in deltas)
            R.eq(f"{tag}: concatenated deltas == non-stream content", text, want.text)
            fins = [ch["choices"][0].get("finish_reason") for ch in chunks if ch.get("choices")]
            R.check(f"{tag}: one final finish_reason", fins[-1] in ("length", "stop") and
                    all(f is None for f in fins[:-1]), f"{fins}")
            us = [ch["usage"] for ch in chunks if ch.get("usage")]
            R.check(f"{tag}: include_usage chunk", us and us[-1]["completion_tokens"] == len(want.all_ids),
                    f"{us}")
        except (ValueError, KeyError, TypeError, IndexError) as e:
            R.check(f"{tag}: chunks", False, f"{e!r} {payloads[:3]}")
    # what openai-python sends for stream=True: Accept: application/json (its default header for every call);
    # its Stream decodes SSE only, so the OpenAI route must stream SSE (as vLLM and TGI do on /v1/chat/completions)
    r = requests.post(c.main.url("/v1/chat/completions"), headers={"Accept": "application/json"}, stream=True,
                      timeout=60, json={"messages": msgs, "max_tokens": 4, "temperature": 0, "stream": True})
    ct = r.headers.get("Content-Type", "")
    payloads, err = read_sse(r) if ct.startswith("text/event-stream") else ([], "")
    R.check("/v1/chat/completions stream as openai-python asks (Accept: application/json) is SSE + [DONE]",
            r.status_code == 200 and ct.startswith("text/event-stream") and payloads[-1:] == ["[DONE]"],
            f"{r.status_code} Content-Type {ct!r} {err}")
    # chat prompt too long for --max-model-len -> 413
    r = c.main.post("/v1/chat/completions", {"messages": [{"role": "user", "content": c.long_prompt}],
                                             "max_tokens": 4})
    status_case("chat prompt over --max-model-len", r.status_code, r.text, 413)
    r = c.main.post("/v1/chat/completions", {"messages": "hello"})
    status_case("chat messages not a list", r.status_code, r.text, 400)
    r = c.main.post("/v1/chat/completions", {"messages": msgs, "max_tokens": -1})
    status_case("chat max_tokens -1", r.status_code, r.text, 422)


def g_params(c):
    R.set_group("params")
    # stop sequences across token boundaries: take the generated text's token pieces from details
    done = 0
    for prompt in c.prompts:
        for ad in ADAPTERS:
            if done >= 3:
                break
            want = exp(c, prompt, ad)
            r = c.main.post("/invocations", body(prompt, ad, N))
            toks = r.json()["details"]["tokens"]
            pos = 0
            stop = None
            for k in range(2, len(toks) - 1):  # pieces k, k+1: a string made of the end of k and start of k+1
                a, b = toks[k]["text"], toks[k + 1]["text"]
                pos = sum(len(t["text"]) for t in toks[:k + 1])
                cand = a[-2:] + b[:2]
                # pieces aligned with the text, and the stop's FIRST occurrence is the one across this boundary
                # printable only: NUL is refused in requests (400) and other control characters add nothing
                if a and b and cand.isprintable() and "\ufffd" not in cand and want.text[pos - len(a):pos] == a and \
                        want.text.find(cand) == pos - len(a[-2:]):
                    stop = cand
                    break
            if not stop:
                continue
            cut = want.text.find(stop)
            for field in ("stop_sequences", "stop"):
                tag = f"stop {stop!r} via {field} ({ad or 'base'})"
                g = gen(c.main, body(prompt, ad, N, **{field: ["\u2603never", stop]}), c.eos)
                if gen_ok(tag, g):
                    R.eq(f"{tag}: finish_reason", g.finish, "stop_sequence")
                    R.eq(f"{tag}: text truncated before the stop", g.text, want.text[:cut])
            g = gen(c.main, body(prompt, ad, N, stream=True, stop=[stop]), c.eos)
            if gen_ok(f"stop {stop!r} streamed", g):
                R.eq(f"stop {stop!r} streamed: text", (g.text, g.finish), (want.text[:cut], "stop_sequence"))
                emitted = "".join(o["token"]["text"] for o in g.lines if o["token"]["id"] >= 0)
                R.check(f"stop {stop!r} streamed: token texts cover the text", emitted.startswith(g.text),
                        f"{emitted!r} vs {g.text!r}")
            done += 1
    R.check("found stop strings spanning token boundaries", done >= 1, "no generated text had usable pieces")
    # seeds
    sb = lambda seed, stream=False: body(c.prompts[2], "alpha", 12, stream=stream, do_sample=True,  # noqa: E731
                                         temperature=1.0, seed=seed)
    a = gen(c.main, sb(1234), c.eos)
    b = gen(c.main, sb(1234), c.eos)
    if gen_ok("seed 1234", a) and gen_ok("seed 1234 again", b):
        R.eq("same seed -> same output", b.key(), a.key())
        s = gen(c.main, sb(1234, True), c.eos)
        gen_ok("same seed streamed -> same output", s, a)
        outs = {a.key()}
        for seed in range(1, 7):
            outs.add(gen(c.main, sb(seed), c.eos).key())
        R.check("different seeds differ at least once (temperature 1)", len(outs) > 1, f"{len(outs)} distinct")
    # return_full_text
    want = exp(c, c.prompts[1], "r4")
    g = gen(c.main, body(c.prompts[1], "r4", N, return_full_text=True), c.eos)
    if gen_ok("return_full_text", g):
        R.eq("return_full_text: prompt + text", g.text, c.prompts[1] + want.text)
    # adapter choice
    p = c.prompts[3]
    cases = [
        ("body adapters", "alpha", {}, "alpha"),
        ("header Adapter-Identifier", None, {"X-Amzn-SageMaker-Adapter-Identifier": "beta"}, "beta"),
        ("header wins over body", "alpha", {"X-Amzn-SageMaker-Adapter-Identifier": "beta"}, "beta"),
        ("Inference-Component naming an adapter", None, {"X-Amzn-SageMaker-Inference-Component": "dora"}, "dora"),
        ("Inference-Component not an adapter -> base", None, {"X-Amzn-SageMaker-Inference-Component": "ic-base"},
         None),
        ("Target-Model naming an adapter", None, {"X-Amzn-SageMaker-Target-Model": "r4.tar.gz"}, "r4"),
        ("body empty string -> base", "", {}, None),
    ]
    for name, bad, hdr, want_ad in cases:
        g = gen(c.main, body(p, bad, N), c.eos, headers=hdr)
        gen_ok(name, g, exp(c, p, want_ad))
    b = body(p, None, N)
    b["parameters"]["adapter_id"] = "dora"
    gen_ok("parameters.adapter_id", gen(c.main, b, c.eos), exp(c, p, "dora"))
    # list inputs with per-input adapters
    ins = [c.prompts[0], c.prompts[1], c.prompts[2], c.prompts[0], c.prompts[3]]
    ads = ["", "alpha", "dora", "r4", "beta"]
    for tag, adv, hdr, wants in (
            ("per-input adapters", ads, {}, ads),
            ("one adapter for all", "beta", {}, ["beta"] * 5),
            ("header for all", ads, {"X-Amzn-SageMaker-Adapter-Identifier": "r4"}, ["r4"] * 5)):
        r = c.main.post("/invocations", {"inputs": ins, "parameters": params(N), "adapters": adv}, headers=hdr)
        if not R.eq(f"list inputs, {tag}: 200", r.status_code, 200):
            continue
        j = r.json()
        if R.check(f"list inputs, {tag}: a list of {len(ins)}", isinstance(j, list) and len(j) == len(ins),
                   str(j)[:200]):
            for i, (o, pr, w) in enumerate(zip(j, ins, wants)):
                g = Gen()
                g.status = 200
                from_result(g, o, c.eos)
                R.eq(f"list inputs, {tag}: [{i}] == single", g.key(), exp(c, pr, w or None).key())
    r = c.main.post("/invocations", {"inputs": [c.prompts[0]], "parameters": params(N)})
    R.check("list of one input -> list of one", r.status_code == 200 and isinstance(r.json(), list) and
            len(r.json()) == 1 and r.json()[0]["generated_text"] == exp(c, c.prompts[0], None).text, r.text[:200])
    r = c.main.post("/invocations", {"inputs": ins, "parameters": params(N), "adapters": ["alpha", "beta"]})
    R.check("adapters list length != inputs -> 400/422", r.status_code in (400, 422), f"{r.status_code} {r.text[:200]}")
    r = c.main.post("/invocations", {"inputs": ins[:2], "parameters": params(N), "adapters": ["alpha", "nope"]})
    status_case("list inputs with one unknown adapter", r.status_code, r.text, 404)


def g_errors(c):
    R.set_group("errors")
    m = c.main
    ok_body = json.dumps(body(c.prompts[0], None, 4)).encode()
    cases = [
        # name, method, path, raw body, headers, status
        ("malformed JSON", "POST", "/invocations", b'{"inputs": "hi", ', {}, 400),
        ("not JSON at all", "POST", "/invocations", b"inputs=hi", {}, 400),
        ("empty body", "POST", "/invocations", b"", {}, 400),
        ("inputs is a number", "POST", "/invocations", b'{"inputs": 5}', {}, 400),
        ("inputs list with a number", "POST", "/invocations", b'{"inputs": ["a", 3]}', {}, 400),
        ("parameters is a string", "POST", "/invocations", b'{"inputs": "a", "parameters": "x"}', {}, 400),
        ("max_new_tokens is a string", "POST", "/invocations",
         b'{"inputs": "a", "parameters": {"max_new_tokens": "10"}}', {}, 400),
        ("stream is a string", "POST", "/invocations", b'{"inputs": "a", "stream": "yes"}', {}, 400),
        ("top_p 1.5", "POST", "/invocations", b'{"inputs": "a", "parameters": {"top_p": 1.5}}', {}, 422),
        ("max_new_tokens -1", "POST", "/invocations", b'{"inputs": "a", "parameters": {"max_new_tokens": -1}}', {},
         422),
        ("max_new_tokens 0", "POST", "/invocations", b'{"inputs": "a", "parameters": {"max_new_tokens": 0}}', {}, 422),
        ("temperature -0.5", "POST", "/invocations",
         b'{"inputs": "a", "parameters": {"temperature": -0.5, "do_sample": true}}', {}, 422),
        ("repetition_penalty 0", "POST", "/invocations",
         b'{"inputs": "a", "parameters": {"repetition_penalty": 0}}', {}, 422),
        ("max_new_tokens 10^6", "POST", "/invocations",
         b'{"inputs": "a", "parameters": {"max_new_tokens": 1000000}}', {}, 422),
        ("100 stop strings", "POST", "/invocations",
         json.dumps({"inputs": "a", "parameters": {"stop": [f"s{i}" for i in range(100)]}}).encode(), {}, 422),
        ("unknown adapter in body", "POST", "/invocations", b'{"inputs": "a", "adapters": "nope"}', {}, 404),
        ("unknown adapter in header", "POST", "/invocations", ok_body,
         {"X-Amzn-SageMaker-Adapter-Identifier": "nope"}, 404),
        ("unknown route", "GET", "/nope", b"", {}, 404),
        ("unknown route POST", "POST", "/v2/whatever", ok_body, {}, 404),
        ("GET /invocations", "GET", "/invocations", b"", {}, 405),
        ("DELETE /ping", "DELETE", "/ping", b"", {}, 405),
        ("PUT /adapters", "PUT", "/adapters", b"{}", {}, 405),
        ("POST /metrics", "POST", "/metrics", b"{}", {}, 405),
        ("GET /adapters/nope", "GET", "/adapters/nope", b"", {}, 404),
        ("DELETE /adapters/nope", "DELETE", "/adapters/nope", b"", {}, 404),
        ("prompt over --max-model-len", "POST", "/invocations",
         json.dumps({"inputs": c.long_prompt, "parameters": {"max_new_tokens": 4}}).encode(), {}, 413),
        ("a list input over --max-model-len", "POST", "/invocations",
         json.dumps({"inputs": ["hi", c.long_prompt], "parameters": {"max_new_tokens": 4}}).encode(), {}, 413),
    ]
    for name, meth, path, data, hdr, want in cases:
        st, h, resp = m.raw(meth, path, data, hdr)
        status_case(name, st, resp.decode("utf-8", "replace"), want)
        if want == 405 and st == 405:
            R.check(f"{name}: Allow header", "allow" in h, str(h))
    r = m.post("/invocations", {"inputs": "a", "parameters": {"top_p": 1.5}})
    R.check("422 message names the field", "top_p" in r.text, r.text[:200])
    # 7 MB bodies: with Expect: 100-continue, via curl (@file), and plain (server answers before the body ends)
    big = b'{"inputs": "' + b"a" * (7 << 20) + b'"}'
    head = (f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(big)}\r\n").encode()
    st, raw, err = raw_exchange(m.port, head + b"Expect: 100-continue\r\n\r\n",
                                body_iter=(big[i:i + 65536] for i in range(0, len(big), 65536)),
                                expect_continue=True)
    R.eq("7 MB body with Expect: 100-continue -> 413", st, 413)
    bigf = os.path.join(c.work, "big.json")
    with open(bigf, "wb") as f:
        f.write(big)
    p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                        "Content-Type: application/json", "--data-binary", "@" + bigf, m.url("/invocations")],
                       capture_output=True, text=True, timeout=60)
    R.eq("7 MB body via curl -> 413", p.stdout.strip(), "413")
    st, raw, err = raw_exchange(m.port, head + b"\r\n",
                                body_iter=(big[i:i + 65536] for i in range(0, len(big), 65536)))
    R.check("7 MB body without Expect -> 413 (or the connection closed)", st == 413 or (st is None and err),
            f"status {st} {err} {raw[:200]!r}")
    if st != 413:
        R.note(f"plain 7 MB upload: no 413 seen by the client ({err})")

    def chunks():
        for i in range(0, len(big), 65536):
            part = big[i:i + 65536]
            yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
        yield b"0\r\n\r\n"
    st, raw, err = raw_exchange(m.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n", body_iter=chunks())
    R.check("7 MB chunked body (no Content-Length) -> 413 (or the connection closed)",
            st == 413 or (st is None and err), f"status {st} {err} {raw[:200]!r}")
    R.check("server alive after the 7 MB bodies", m.alive())
    # just under the cap is read and served (whitespace padding keeps it valid JSON)
    near = json.dumps(body(c.prompts[0], None, 4)).encode()
    near = near[:-1] + b" " * ((6 << 20) - len(near) - 64) + b"}"
    st, _, resp = m.raw("POST", "/invocations", near)
    R.check("6 MB - 64 B body is served", st == 200 and json.loads(resp)["generated_text"] ==
            exp(c, c.prompts[0], None, 4).text, f"{st} {resp[:200]!r}")


def g_hostile(c):
    R.set_group("hostile")
    m = c.main
    cases = [
        ("nesting depth 100000 (arrays)", b"[" * 100000 + b"]" * 100000),
        ("nesting depth 100000 (objects, unterminated)", b'{"a":' * 100000),
        ("nesting 100000 inside inputs", b'{"inputs": ' + b"[" * 100000 + b"]" * 100000 + b"}"),
        ("nesting 100000 inside parameters", b'{"inputs": "a", "parameters": {"x": ' + b"[" * 100000 + b"]" * 100000
         + b"}}"),
        ("inputs 1e400", b'{"inputs": 1e400}'),
        ("max_new_tokens 1e400", b'{"inputs": "a", "parameters": {"max_new_tokens": 1e400}}'),
        ("temperature -1e400", b'{"inputs": "a", "parameters": {"temperature": -1e400, "do_sample": true}}'),
        ("max_new_tokens 2^70", b'{"inputs": "a", "parameters": {"max_new_tokens": 1180591620717411303424}}'),
        ("seed -1", b'{"inputs": "a", "parameters": {"seed": -1}}'),
        ("top_p NaN", b'{"inputs": "a", "parameters": {"top_p": NaN}}'),
        ("invalid UTF-8 in inputs", b'{"inputs": "ab\xff\xfe\xc3"}'),
        ("overlong UTF-8 in inputs", b'{"inputs": "\xc0\xaf"}'),
        ("UTF-16 surrogate bytes in inputs", b'{"inputs": "\xed\xa0\x80"}'),
        ("invalid UTF-8 in a key", b'{"inp\xffuts": "a"}'),
        ("raw NUL in inputs", b'{"inputs": "a\x00b"}'),
        ("raw NUL after the JSON", b'{"inputs": "a"}\x00'),
        ("\\u0000 escape in inputs", b'{"inputs": "a\\u0000b"}'),
        ("lone surrogate escape", b'{"inputs": "\\ud800"}'),
        ("trailing garbage", b'{"inputs": "a"} {"inputs": "b"}'),
        ("JSON string body", b'"just a string"'),
        ("JSON null body", b"null"),
        ("JSON array body", b"[]"),
        ("1000 inputs", json.dumps({"inputs": ["a"] * 1000}).encode()),
        ("stop string of 10000 chars", json.dumps({"inputs": "a", "parameters": {"stop": ["x" * 10000]}}).encode()),
        ("messages with a number content", b'{"messages": [{"role": "user", "content": 5}]}'),
        ("messages with an unknown role", b'{"messages": [{"role": "wizard", "content": "hi"}], "max_tokens": 2}'),
    ]
    for i, (name, data) in enumerate(cases):
        st, _, resp = m.raw("POST", "/invocations", data)
        txt = resp.decode("utf-8", "replace")
        if R.check(f"{name}: 4xx", st is not None and 400 <= st < 500, f"status {st} {txt[:200]!r}"):
            good, msg = error_body_ok(txt, st)
            R.check(f"{name}: error body", good, msg)
        if i % 6 == 5:
            R.check(f"alive after case {i}", m.alive())
    # hostile things in headers / paths
    for name, meth, path, hdr in (
            ("adapter header with path chars", "POST", "/invocations",
             {"X-Amzn-SageMaker-Adapter-Identifier": "../../etc/passwd"}),
            ("8 KB adapter header", "POST", "/invocations", {"X-Amzn-SageMaker-Adapter-Identifier": "a" * 8192}),
            ("adapter name with %2F", "GET", "/adapters/..%2F..%2Fetc", {}),
            ("path traversal in URL", "GET", "/adapters/../../../etc/passwd", {})):
        st, _, resp = m.raw(meth, path, json.dumps(body("a", None, 2)).encode(), hdr)
        R.check(f"{name}: 4xx", st is not None and 400 <= st < 500, f"{st} {resp[:200]!r}")
    # a request line of garbage on a raw socket
    st, raw, err = raw_exchange(m.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
    R.check("TLS hello / garbage request line: no crash", st is None or 400 <= st < 500, f"{st} {raw[:100]!r}")
    # 64 connections that never finish their headers (slowloris): /ping still answers quickly
    socks = []
    try:
        for _ in range(64):
            sk = socket.create_connection(("127.0.0.1", m.port), timeout=5)
            sk.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
            socks.append(sk)
        t0 = time.time()
        st = requests.get(m.url("/ping"), timeout=5).status_code
        R.check("64 half-open connections: /ping 200 within 2 s", st == 200 and time.time() - t0 < 2.0,
                f"{st} in {time.time() - t0:.2f} s")
        g = gen(m, body(c.prompts[0], None, 4), c.eos)
        gen_ok("64 half-open connections: a request is served", g, exp(c, c.prompts[0], None, 4))
    except (OSError, requests.RequestException) as e:
        R.check("64 half-open connections", False, repr(e))
    finally:
        for sk in socks:
            sk.close()
    R.check("server alive after the hostile bodies", m.alive())


def adapter_names(c, srv=None):
    r = (srv or c.main).get("/adapters")
    try:
        return {a["name"]: a for a in r.json()["adapters"]}
    except (ValueError, KeyError, TypeError):
        return {}


def g_adapters(c):
    R.set_group("adapters")
    m = c.main
    r = m.get("/adapters")
    names = adapter_names(c)
    R.check("GET /adapters: 200 with the preloaded adapters", r.status_code == 200 and
            {"alpha", "beta", "dora", "r4"} <= set(names), r.text[:300])
    if names:
        R.check("GET /adapters: ranks and DoRA flag", names.get("r4", {}).get("rank") == 4 and
                names.get("alpha", {}).get("rank") == 8 and names.get("dora", {}).get("dora") in (True, 1),
                str(names)[:400])
    r = m.get("/adapters/alpha")
    R.check("GET /adapters/alpha", r.status_code == 200 and r.json().get("name") == "alpha", r.text[:200])
    # register: JSON body, then query string (a symlink that stays inside the root)
    r = m.post("/adapters", {"name": "gamma", "src": c.fx.gamma})
    if R.eq("POST /adapters JSON body: 200", r.status_code, 200):
        gen_ok("invoke gamma (copy of r4) by header", gen(m, body(c.prompts[0], None, N), c.eos,
               headers={"X-Amzn-SageMaker-Adapter-Identifier": "gamma"}), exp(c, c.prompts[0], "r4"))
        gen_ok("invoke gamma by body", gen(m, body(c.prompts[1], "gamma", N), c.eos), exp(c, c.prompts[1], "r4"))
    r = m.post("/adapters", {"name": "gamma", "src": c.fx.gamma})
    status_case("register the same name again", r.status_code, r.text, 409)
    r = requests.post(m.url("/adapters"), params={"name": "gamma2", "src": c.fx.inner_link}, timeout=60)
    if R.eq("POST /adapters?name=&src= (symlink inside the root): 200", r.status_code, 200):
        gen_ok("invoke gamma2", gen(m, body(c.prompts[2], "gamma2", N), c.eos), exp(c, c.prompts[2], "r4"))
    r = m.post("/adapters", {"name": "gamma3", "src": "file://" + c.fx.gamma})
    R.eq("src as file:// URI: 200", r.status_code, 200)
    R.check("GET /adapters lists the registered ones", {"gamma", "gamma2", "gamma3"} <= set(adapter_names(c)),
            str(sorted(adapter_names(c))))
    # unregister
    for n in ("gamma2", "gamma3"):
        r = m.delete(f"/adapters/{n}")
        R.eq(f"DELETE /adapters/{n}: 200", r.status_code, 200)
    g = gen(m, body(c.prompts[2], "gamma2", N), c.eos)
    status_case("invoke an unregistered adapter", g.status, g.raw or "", 404)
    g = gen(m, body(c.prompts[2], None, N), c.eos, headers={"X-Amzn-SageMaker-Adapter-Identifier": "gamma2"})
    status_case("invoke an unregistered adapter by header", g.status, g.raw or "", 404)
    r = m.delete("/adapters/gamma2")
    status_case("DELETE it again", r.status_code, r.text, 404)
    r = m.get("/adapters/gamma2")
    status_case("GET it", r.status_code, r.text, 404)
    # refused sources
    root = c.fx.root
    refused = [
        ("src with .. escaping the root", {"name": "evil1", "src": os.path.join(root, "..", "outside", "evil")}),
        ("src symlink escaping the root", {"name": "evil2", "src": c.fx.escape_link}),
        ("absolute src outside the roots", {"name": "evil3", "src": c.fx.evil}),
        ("file:// src outside the roots", {"name": "evil4", "src": "file://" + c.fx.evil}),
        ("relative src with ..", {"name": "evil5", "src": "../../../" + c.fx.evil.lstrip("/")}),
        ("src /etc", {"name": "evil6", "src": "/etc"}),
    ]
    for name, q in refused:  # registry.h: 403 for a src outside the roots (after realpath)
        r = m.post("/adapters", q)
        status_case(f"{name}: refused", r.status_code, r.text, 403)
    r = requests.post(m.url("/adapters"), params={"name": "evil7", "src": os.path.join(root, "..", "outside", "evil")},
                      timeout=60)
    status_case("query-string src with .. refused", r.status_code, r.text, 403)
    for name, q, want in (
            ("s3:// src", {"name": "s3x", "src": "s3://bucket/adapter"}, 400),
            ("name with ..", {"name": "../x", "src": c.fx.gamma}, 400),
            ("name with a space", {"name": "a b", "src": c.fx.gamma}, 400),
            ("name of 200 chars", {"name": "a" * 200, "src": c.fx.gamma}, 400),
            ("missing src", {"name": "nosrc"}, 400),
            ("missing name", {"src": c.fx.gamma}, 400),
            ("src missing inside the root", {"name": "missing", "src": os.path.join(root, "nothing-here")}, 404),
            ("wrong-shape adapter (hidden 128)", {"name": "wrong", "src": c.fx.wrong}, 424),
            ("rank 32 over --max-lora-rank 16", {"name": "big", "src": c.fx.big}, 424),
            ("broken adapter files", {"name": "broken", "src": c.broken}, 424)):
        r = m.post("/adapters", q)
        status_case(name, r.status_code, r.text, want)
    r = m.post("/adapters", {"name": "big", "src": c.fx.big})
    R.check("rank refusal names the rank", "rank" in r.text.lower(), r.text[:200])
    now = set(adapter_names(c))
    R.check("no refused adapter is listed", not (now & {"evil1", "evil2", "evil3", "evil4", "evil5", "evil6", "evil7",
                                                      "s3x", "wrong", "big", "broken", "missing"}), str(sorted(now)))
    R.check("alive after the refusals", m.alive())
    # MME routes
    r = m.post("/models", {"model_name": "mm1", "url": c.fx.gamma})
    if R.eq("POST /models: 200", r.status_code, 200):
        r = m.post("/models", {"model_name": "mm1", "url": c.fx.gamma})
        status_case("POST /models again", r.status_code, r.text, 409)
        r = m.get("/models")
        try:
            ms = {x["modelName"]: x for x in r.json()["models"]}
            R.check("GET /models lists mm1 {modelName, modelUrl}", r.status_code == 200 and "mm1" in ms and
                    isinstance(ms["mm1"].get("modelUrl"), str), r.text[:300])
        except (ValueError, KeyError, TypeError) as e:
            R.check("GET /models shape", False, f"{e!r} {r.text[:300]}")
        r = m.get("/models/mm1")
        R.check("GET /models/mm1", r.status_code == 200 and r.json().get("modelName") == "mm1", r.text[:200])
        g = gen(m, body(c.prompts[3], None, N), c.eos, path="/models/mm1/invoke")
        gen_ok("POST /models/mm1/invoke", g, exp(c, c.prompts[3], "r4"))
        r = m.delete("/models/mm1")
        R.eq("DELETE /models/mm1: 200", r.status_code, 200)
        r = m.get("/models/mm1")
        status_case("GET /models/mm1 after unload", r.status_code, r.text, 404)
        g = gen(m, body(c.prompts[3], None, N), c.eos, path="/models/mm1/invoke")
        status_case("invoke unloaded model", g.status, g.raw or "", 404)
        r = m.delete("/models/mm1")
        status_case("DELETE /models/mm1 again", r.status_code, r.text, 404)
    r = m.get("/models/nope")
    status_case("GET /models/nope", r.status_code, r.text, 404)
    r = m.post("/models", {"model_name": "mm-evil", "url": c.fx.evil})
    status_case("POST /models with a url outside the roots refused", r.status_code, r.text, 403)
    r = m.post("/models", {"model_name": "mm-wrong", "url": c.fx.wrong})
    status_case("POST /models with a wrong-shape adapter refused", r.status_code, r.text, 424)
    # 507 once --max-loras adapters are loaded
    have = len(adapter_names(c))
    loaded = []
    for i in range(max(0, MAX_LORAS - have)):
        r = m.post("/adapters", {"name": f"fill{i}", "src": c.fx.fills[i]})
        if r.status_code == 200:
            loaded.append(f"fill{i}")
    R.eq(f"fill up to --max-loras {MAX_LORAS}", len(adapter_names(c)), MAX_LORAS)
    r = m.post("/adapters", {"name": "onemore", "src": c.fx.fills[-1]})
    status_case("one adapter over --max-loras", r.status_code, r.text, 507)
    r = m.post("/models", {"model_name": "onemore", "url": c.fx.fills[-1]})
    status_case("POST /models over --max-loras", r.status_code, r.text, 507)
    for n in loaded:
        m.delete(f"/adapters/{n}")
    R.eq("unloaded the fillers", len(adapter_names(c)), have)


def g_concurrency(c):
    R.set_group("concurrency")
    m = c.main
    jobs = []
    for i in range(64):
        prompt = c.prompts[i % 4]
        ad = ADAPTERS[(i // 4) % 5]
        jobs.append((prompt, ad, i % 2 == 1, i % 3 == 0))  # stream every other; adapter by header every third
    for prompt, ad, _, _ in jobs:
        exp(c, prompt, ad)
    out = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs) + 1)

    def worker(i):
        prompt, ad, stream, by_header = jobs[i]
        hdr = {"X-Amzn-SageMaker-Adapter-Identifier": ad} if (by_header and ad) else {}
        b = body(prompt, None if by_header else ad, N, stream=stream)
        barrier.wait()
        out[i] = gen(m, b, c.eos, headers=hdr, timeout=120)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.time()
    pings = []
    while any(t.is_alive() for t in ts):
        tp = time.time()
        try:
            st = requests.get(m.url("/ping"), timeout=5).status_code
        except requests.RequestException:
            st = None
        pings.append((st, time.time() - tp))
        time.sleep(0.01)
    for t in ts:
        t.join()
    wall = time.time() - t0
    bad = [(i, jobs[i], out[i]) for i in range(len(jobs))
           if out[i].status != 200 or out[i].problems or out[i].key() != exp(c, jobs[i][0], jobs[i][1]).key()]
    R.check("64 concurrent clients: all 200 and == single-request results", not bad,
            f"{len(bad)} wrong, first: {bad[:2]}")
    R.eq("64 concurrent: statuses", sorted({o.status for o in out}), [200])
    R.check("64 concurrent: streams and non-streams both answered",
            sum(1 for i, j in enumerate(jobs) if j[2] and out[i].status == 200) == 32, "")
    R.check("/ping under load: 200 within 2 s", pings and all(s == 200 and d < 2.0 for s, d in pings),
            f"{[(s, round(d, 3)) for s, d in pings if s != 200 or d >= 2.0][:5]} ({len(pings)} pings)")
    R.note(f"64 concurrent requests answered in {wall:.2f} s; {len(pings)} pings, max "
           f"{max((d for _, d in pings), default=0) * 1000:.0f} ms")
    idle_ok, g = wait_idle(m)
    R.check("after the load: no running/waiting sequence, every KV block free", idle_ok, str(g))


def gauges(srv):
    _, p = srv.metrics()
    out = {}
    for n, _, v in p.samples:
        low = n.lower()
        if "kv" in low and "used" in low:
            out["kv_used"] = out.get("kv_used", 0) + v
        elif "queue" in low and "depth" in low or low.endswith("waiting"):
            out["waiting"] = out.get("waiting", 0) + v
        elif "running" in low:
            out["running"] = out.get("running", 0) + v
    return out


def wait_idle(srv, timeout=10):
    t_end = time.time() + timeout
    g = {}
    while time.time() < t_end:
        g = gauges(srv)
        if g and all(v == 0 for v in g.values()) and {"kv_used", "running"} <= set(g):
            return True, g
        time.sleep(0.05)
    return False, g


def g_dynamic(c):
    R.set_group("dynamic")
    m = c.main
    stop = threading.Event()
    res = []
    lock = threading.Lock()

    def worker(k):
        i = 0
        while not stop.is_set() or i < 2:
            prompt = c.prompts[(k + i) % 4]
            ad = ("alpha", None, "dora", "beta")[(k + i) % 4]
            g = gen(m, body(prompt, ad, N, stream=(i % 2 == 0)), c.eos, timeout=120)
            with lock:
                res.append((prompt, ad, g))
            i += 1

    for p in c.prompts[:4]:
        for a in ("alpha", None, "dora", "beta"):
            exp(c, p, a)
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    try:
        for i in range(3):
            name = f"dyn{i}"
            r = m.post("/adapters", {"name": name, "src": c.fx.gamma})
            if R.eq(f"register {name} under load", r.status_code, 200):
                gen_ok(f"invoke {name} under load", gen(m, body(c.prompts[i], name, N), c.eos),
                       exp(c, c.prompts[i], "r4"))
                # a long stream on the adapter while it is being unregistered: unload waits for it
                holder = {}

                def long_stream():
                    holder["g"] = gen(m, body(c.prompts[i], name, 120, stream=True), c.eos, timeout=120)
                t = threading.Thread(target=long_stream)
                t.start()
                r = m.delete(f"/adapters/{name}")
                t.join()
                R.eq(f"unregister {name} under load", r.status_code, 200)
                lg = holder.get("g")
                if lg and lg.status == 200:
                    R.check(f"stream on {name} during its unload completed", not lg.problems and
                            lg.finish in ("length", "eos_token"), f"{lg}")
                else:
                    R.check(f"stream on {name} during its unload: 200 or 404 (raced the delete)",
                            lg is not None and lg.status == 404, f"{lg}")
                g = gen(m, body(c.prompts[i], name, N), c.eos)
                status_case(f"{name} after unregister", g.status, g.raw or "", 404)
    finally:
        stop.set()
        for t in ts:
            t.join()
    bad = [(p, a, g) for p, a, g in res if g.status != 200 or g.problems or g.key() != exp(c, p, a).key()]
    R.check(f"requests for other adapters unaffected ({len(res)} requests)", not bad and len(res) >= 8,
            f"{len(bad)} bad: {bad[:2]}")


def g_metrics(c):
    R.set_group("metrics")
    m = c.main
    r1, p1 = m.metrics()
    R.eq("GET /metrics: 200", r1.status_code, 200)
    ct = r1.headers.get("Content-Type", "")
    R.check("Content-Type text/plain; version=0.0.4", ct.startswith("text/plain") and "0.0.4" in ct, ct)
    R.check("valid Prometheus text", not p1.errors and p1.samples, "; ".join(p1.errors[:5]))
    names = p1.names()
    R.check("every metric prefixed loraforge_", all(n.startswith("loraforge_") for n in names),
            str(sorted(n for n in names if not n.startswith("loraforge_"))))
    fams = {
        "requests by status": r"request",
        "tokens in": r"(prompt|input).*token|token.*(prompt|input)",
        "tokens out": r"(generat|output).*token|token.*(generat|output)",
        "queue depth": r"queue|waiting",
        "running sequences": r"running",
        "KV blocks": r"kv.*block",
        "preemptions": r"^loraforge_preemptions_total$",
        "time to first token histogram": r"(ttft|first_token).*_bucket",
        "time per output token histogram": r"(tpot|per_output_token|inter_token).*_bucket",
        "adapters loaded": r"adapter",
    }
    for what, rx in fams.items():
        R.check(f"has {what}", any(re.search(rx, n) for n in names), f"/{rx}/ not in {sorted(names)}")
    st_labels = {l.get("status", l.get("code")) for n, l, _ in p1.samples if "request" in n}
    R.check("requests counted by status (200, 404, 413, 422 seen)", {"200", "404", "413", "422"} <= st_labels,
            str(st_labels))

    def tot(p, rx):
        return sum(v for n, _, v in p.samples if re.search(rx, n) and not n.endswith(("_bucket", "_sum")))
    g = gen(m, body(c.prompts[0], "alpha", N), c.eos)
    gen_ok("a request between scrapes", g)
    g2 = gen(m, body(c.prompts[1], None, N, stream=True), c.eos)
    r2, p2 = m.metrics()
    R.check("second scrape valid", not p2.errors, "; ".join(p2.errors[:5]))
    reqs = r"request.*_total$|requests$"
    R.check("request counter moved by >= 2", tot(p2, reqs) >= tot(p1, reqs) + 2, f"{tot(p1, reqs)} -> {tot(p2, reqs)}")
    out_rx = r"(generat|output).*token.*_total$|token.*(generat|output).*_total$"
    d = tot(p2, out_rx) - tot(p1, out_rx)
    R.check("generated-token counter moved by the tokens generated", d >= len(g.all_ids or []) + len(g2.all_ids or []),
            f"moved {d}, generated {len(g.all_ids or [])}+{len(g2.all_ids or [])}")
    ttft = r"(ttft|first_token).*_count$"
    R.check("TTFT histogram count moved", tot(p2, ttft) >= tot(p1, ttft) + 2, f"{tot(p1, ttft)} -> {tot(p2, ttft)}")
    ad = [v for n, _, v in p2.samples if re.search(r"adapter", n) and "loaded" in n]
    R.check("adapters-loaded gauge == GET /adapters", ad and ad[0] == len(adapter_names(c)),
            f"{ad} vs {len(adapter_names(c))}")
    for n, _, v in p2.samples:
        if p2.types.get(n[:-6] if n.endswith("_total") else n) == "counter" and v < 0:
            R.check(f"counter {n} non-negative", False, str(v))


def g_sse_server(c):
    R.set_group("sse-server")
    with Server(c.bin, c.fx.serve_args() + ["--stream-format", "sse", "--threads", "1"], c.work, "sse",
                env={"OPTION_MAX_MODEL_LEN": "64"}) as s:
        r = s.post("/invocations", body(c.mid_prompt, None, 4))
        status_case(f"OPTION_MAX_MODEL_LEN=64: {c.mid_len}-token prompt", r.status_code, r.text, 413)
        R.eq("(the main server takes that prompt)", c.main.post("/invocations", body(c.mid_prompt, None, 4))
             .status_code, 200)
        want = exp(c, c.prompts[0], "beta")
        g = gen(s, body(c.prompts[0], "beta", N, stream=True), c.eos)
        R.check("stream without Accept is SSE", (g.content_type or "").startswith("text/event-stream"),
                g.content_type)
        gen_ok("SSE stream == non-stream", g, want)
        gen_ok("non-stream unchanged", gen(s, body(c.prompts[0], "beta", N), c.eos), want)
        r = requests.post(s.url("/invocations"), stream=True, timeout=60,
                          json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "stream": True,
                                "temperature": 0})
        payloads, err = read_sse(r)
        R.check("chat stream is SSE ending in [DONE]", r.status_code == 200 and not err and payloads[-1:] == ["[DONE]"],
                f"{r.status_code} {err} {payloads[-2:]}")


def g_preemption(c):
    R.set_group("preemption")
    mml = 96
    blocks = 10   # one sequence of 96 tokens needs 6 blocks of 16; 24 sequences of ~50 tokens need ~100
    budget = kv_block_bytes() * blocks
    ins = [c.prompts[i % 4] for i in range(8)]
    ads = [ADAPTERS[i % 5] or "" for i in range(8)]
    n = 40
    # a pool that cannot hold one sequence is refused at startup
    p = subprocess.run([c.bin, "serve", "--model", c.fx.base, "--host", "127.0.0.1", "--port", str(free_port()),
                        "--max-model-len", str(mml), "--kv-cache-memory", str(kv_block_bytes() * 2)],
                       capture_output=True, text=True, timeout=60)
    R.check("--kv-cache-memory below one sequence: exit non-zero with a message", p.returncode not in (0, None) and
            p.stderr.strip() != "", f"exit {p.returncode}: {p.stderr[-300:]}")
    try:
        s = Server(c.bin, c.fx.serve_args() + ["--max-model-len", str(mml), "--kv-cache-memory", str(budget),
                                               "--max-batch-size", "24", "--threads", "1"], c.work, "preempt")
    except ServerStartError as e:
        R.check("server with a tiny KV pool starts", False, str(e)[-500:])
        return
    with s:
        single = {}
        for p_, a_ in sorted(set(zip(ins, ads))):
            g = single[(p_, a_)] = gen(s, body(p_, a_ or None, n), c.eos)
            if gen_ok(f"single request {a_ or 'base'} {len(c.ref.encode(p_))}-token prompt", g):
                m = exp(c, p_, a_ or None, n)  # the main server (max-model-len 256) may generate more
                R.check(f"single request {a_ or 'base'}: == main server's result (up to the length cap)",
                        g.ids == m.ids[:len(g.ids)] and (g.ids == m.ids or g.finish == "length"), f"{g} vs {m}")
        _, pm = s.metrics()
        R.eq("one sequence at a time: no preemption", pm.value("loraforge_preemptions_total"), 0.0)
        out = []
        lock = threading.Lock()

        def worker(k):
            if k < 3:
                r = requests.post(s.url("/invocations"), timeout=120,
                                  json={"inputs": ins, "parameters": params(n), "adapters": ads})
                with lock:
                    out.append(("list", r.status_code, r.text))
            else:
                g = gen(s, body(ins[k % 8], ads[k % 8] or None, n, stream=True), c.eos, timeout=120)
                with lock:
                    out.append(((ins[k % 8], ads[k % 8] or None), g.status, g))
        ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        bad = []
        for kind, st, x in out:
            if st != 200:
                bad.append((kind, st, str(x)[:200]))
            elif kind == "list":
                for o, p_, a_ in zip(json.loads(x), ins, ads):
                    g = from_result(Gen(), o, c.eos)
                    if g.key() != single[(p_, a_)].key():
                        bad.append((p_, a_, g.key(), single[(p_, a_)].key()))
            elif x.problems or x.key() != single[(kind[0], kind[1] or "")].key():
                bad.append((kind, x))
        R.check("outputs under preemption == single-request results", not bad, f"{len(bad)} bad: {bad[:2]}")
        _, pm = s.metrics()
        pre = pm.value("loraforge_preemptions_total")
        R.check("loraforge_preemptions_total > 0", pre is not None and pre > 0, f"{pre}")
        R.note(f"preemptions with a {blocks}-block pool: {pre}")
        idle_ok, g = wait_idle(s)
        R.check("every KV block free afterwards", idle_ok, str(g))


def g_queue(c):
    R.set_group("queue")
    p = subprocess.run([c.bin, "serve", "--model", c.fx.base, "--host", "127.0.0.1", "--port", str(free_port())],
                       capture_output=True, text=True, timeout=60, env=dict(os.environ, OPTION_MAX_LORA_RANK="4"))
    R.check("a preloaded adapter over OPTION_MAX_LORA_RANK: exit non-zero naming it", p.returncode not in (0, None)
            and "alpha" in p.stderr and "rank" in p.stderr, f"exit {p.returncode}: {p.stderr[-300:]}")
    try:
        s = Server(c.bin, ["--model", c.bare, "--max-queue", "2", "--max-batch-size", "1", "--tgi-compat",
                           "--max-model-len", str(MAX_MODEL_LEN), "--threads", "1",
                           "--adapter-root", os.path.dirname(c.fx.adapters["beta"])], c.work, "queue",
                   env={"OPTION_MAX_LORA_RANK": "4", "OPTION_MAX_MODEL_LEN": "64"})
    except ServerStartError as e:
        R.check("server with --max-queue 2 starts", False, str(e)[-500:])
        return
    with s:
        want = exp(c, c.prompts[0], None)
        r = s.post("/invocations", body(c.prompts[0], None, N))
        j = r.json() if r.status_code == 200 else None
        R.check("--tgi-compat: non-stream answer is a list", isinstance(j, list) and len(j) == 1 and
                j[0].get("generated_text") == want.text, r.text[:200])
        g = gen(s, body(c.prompts[0], None, N, stream=True), c.eos)
        R.check("--tgi-compat: stream is SSE", (g.content_type or "").startswith("text/event-stream"), g.content_type)
        gen_ok("--tgi-compat stream == non-stream", g, want)
        if g.lines:
            R.check("--tgi-compat: token events carry index and logprob",
                    all("index" in o and "logprob" in o["token"] for o in g.lines[:-1]), str(g.lines[:1]))
        r = s.post("/invocations", {"inputs": [c.prompts[0]] * 3, "parameters": params(4)})
        status_case("3 inputs with --max-queue 2", r.status_code, r.text, 429)
        r = s.post("/adapters", {"name": "beta", "src": c.fx.adapters["beta"]})
        status_case("OPTION_MAX_LORA_RANK=4: rank-8 adapter", r.status_code, r.text, 424)
        r = s.post("/adapters", {"name": "r4", "src": c.fx.adapters["r4"]})
        R.eq("OPTION_MAX_LORA_RANK=4: rank-4 adapter loads", r.status_code, 200)
        r = s.post("/invocations", body(c.mid_prompt, None, 4))
        R.check("--max-model-len wins over OPTION_MAX_MODEL_LEN", r.status_code == 200,
                f"{r.status_code} {r.text[:200]}")
        # load: 40 clients at once, 200 tokens each, batch of 1 and a queue of 2
        nn = 200
        out = [None] * 40
        barrier = threading.Barrier(len(out))

        def worker(i):
            barrier.wait()
            try:
                rr = requests.post(s.url("/invocations"), json=body(c.prompts[i % 4], None, nn), timeout=120)
                out[i] = (rr.status_code, rr.text)
            except requests.RequestException as e:
                out[i] = (None, repr(e))
        ts = [threading.Thread(target=worker, args=(i,)) for i in range(len(out))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        sts = [o[0] for o in out]
        R.check("under load: every request answered 200 or 429", all(x in (200, 429) for x in sts),
                str(sorted(set(map(str, sts)))))
        R.check("under load: some 429", sts.count(429) > 0, f"{sts.count(200)} x 200, {sts.count(429)} x 429")
        R.check("under load: some 200", sts.count(200) > 0, f"{sts.count(200)} x 200")
        R.note(f"--max-queue 2 load: {sts.count(200)} x 200, {sts.count(429)} x 429")
        b429 = [o[1] for o in out if o[0] == 429]
        if b429:
            good, msg = error_body_ok(b429[0], 429)
            R.check("429 error body", good, msg)
        for i, o in enumerate(out):
            if o[0] == 200:
                g = Gen()
                lst = json.loads(o[1])
                from_result(g, lst[0] if isinstance(lst, list) else lst, c.eos)
                R.eq("a 200 under load == single-request result", g.key(), exp(c, c.prompts[i % 4], None, nn).key())
                break
        R.check("alive after the overload", s.alive())
        _, pm = s.metrics()
        rej = sum(v for n, l, v in pm.samples if "reject" in n or l.get("status", l.get("code")) == "429")
        R.check("429s visible in /metrics", rej > 0, str([x for x in pm.samples if "reject" in x[0]][:3]))


def shutdown_under_load(c, s, prompts, n_stream, n_plain, max_new):
    """Send n_stream streams and n_plain non-stream requests, SIGTERM once the streams are generating, and check
    that the server exits 0 in time and that every request got a complete answer. Returns (requests still
    unanswered at the signal, answers cut by the shutdown: stream finish_reason "error" or a 5xx)."""
    res = [None] * (n_stream + n_plain)

    def streamer(i):
        g = Gen()
        g.lines = []
        try:
            r = requests.post(s.url("/invocations"), json=body(prompts[i % len(prompts)], None, max_new, stream=True,
                                                              details=False), stream=True, timeout=90)
            g.status = r.status_code
            if r.status_code != 200:
                g.raw = r.text
                good, msg = error_body_ok(r.text, r.status_code)
                if not good:
                    g.problems.append(msg)
            else:
                for line in r.iter_lines():
                    g.lines.append(line)
        except requests.RequestException as e:
            g.problems.append(repr(e))
        res[i] = g

    def plain(i):
        try:
            r = requests.post(s.url("/invocations"), json=body(prompts[i % len(prompts)], None, max_new), timeout=90)
            res[i] = (r.status_code, r.text)
        except requests.RequestException as e:
            res[i] = (None, repr(e))
    ts = [threading.Thread(target=streamer if i < n_stream else plain, args=(i,)) for i in range(len(res))]
    order = list(range(len(res)))
    order.sort(key=lambda i: (i if i < n_stream else i - n_stream) * 2 + (i >= n_stream))  # interleave the kinds
    for i in order:
        ts[i].start()
    # signal once every request is in the engine (running or waiting) or already answered
    t_end = time.time() + 30
    while time.time() < t_end:
        g = gauges(s)
        if g.get("running", 0) + g.get("waiting", 0) + sum(1 for x in res if x is not None) >= len(res):
            break
        time.sleep(0.02)
    unanswered = sum(1 for x in res if x is None)
    early = [(i, x.status if isinstance(x, Gen) else x[0]) for i, x in enumerate(res) if x is not None]
    rc, secs = s.terminate(40)
    for t in ts:
        t.join(60)
    # the server finishes in-flight work for up to 25 s, then cancels the rest; SageMaker kills at 30 s
    R.check("SIGTERM: exit 0 within 25 s (+3 s to cancel and tear down)", rc == 0 and secs <= 28,
            f"exit {rc} after {secs:.1f} s\n{s.log_tail(800)}")
    cut = 0
    for i in range(n_stream):
        g = res[i]
        if g is not None and g.status in (500, 503) and not g.lines:  # refused before its stream began
            cut += 1
            continue
        last = None
        if g is not None and g.status == 200 and g.lines and not g.problems:
            try:
                last = json.loads(g.lines[-1])
            except ValueError:
                pass
        fin = ((last or {}).get("details") or {}).get("finish_reason")
        cut += fin == "error"
        R.check(f"stream {i} answered: 200, complete, final line with a finish_reason", fin in
                ("length", "eos_token", "error"), f"{g} last line {(g.lines or [])[-1:] if g else None}")
    for i in range(n_stream, len(res)):
        st, txt = res[i] if res[i] else (None, "no answer")
        if st == 200:
            try:
                ok = isinstance(json.loads(txt).get("generated_text"), str)
            except (ValueError, AttributeError):
                ok = False
            R.check(f"request {i} answered 200 with generated_text", ok, txt[:200])
        else:
            cut += 1
            good, msg = error_body_ok(txt, st) if st in (500, 503) else (False, f"status {st}: {txt[:200]}")
            R.check(f"request {i} answered (200, or 500/503 with an error body)", good, msg)
    try:
        r = requests.get(s.url("/ping"), timeout=2)
        R.check("no service after exit", False, f"/ping answered {r.status_code}")
    except requests.RequestException:
        R.check("no service after exit", True)
    R.note(f"SIGTERM ({s.name}): {unanswered} of {len(res)} requests unanswered at the signal (answered before: "
           f"{early}), {cut} cut by the shutdown; exit after {secs:.2f} s")
    return unanswered, cut


def g_sigterm(c):
    R.set_group("sigterm")
    try:
        s = Server(c.bin, ["--model", c.slow, "--max-model-len", "2048", "--threads", "1", "--quantization-bit", "4",
                           "--max-batch-size", "8"], c.work, "sigterm", port_from_env=True)
    except ServerStartError as e:
        R.check("server on SAGEMAKER_BIND_TO_PORT starts", False, str(e)[-500:])
        return
    try:
        R.check("listens on $SAGEMAKER_BIND_TO_PORT", s.alive(), "")
        R.check("/ping 503 while loading (4-bit quantization on load), then 200",
                s.ping_codes and all(x == 503 for x in s.ping_codes), f"codes before 200: {s.ping_codes[:10]}")
        # prompts that do not meet EOS soon on this model, so that the requests are still running at the signal
        long_ones = []
        for p in c.prompts + c.more_prompts:
            g = gen(s, body(p, None, 100), c.eos)
            if g.status == 200 and g.finish == "length":
                long_ones.append(p)
        R.check("prompts that run 100 tokens without EOS", long_ones, "every prompt met EOS")
        unanswered, _ = shutdown_under_load(c, s, long_ones or c.prompts, 4, 2, 1500)
        R.check("requests were in flight at the signal", unanswered > 0, "all answered before SIGTERM")
    finally:
        s.kill()


def g_drain_deadline(c):
    """Work that cannot finish in 25 s (a 10M-parameter model without EOS, two sequences at a time, 24 x 1900
    tokens): at the deadline the server cancels what is left; every request must still get a complete answer and
    the exit must be in time. Also: a stream delivers its tokens as they are generated."""
    R.set_group("long-requests")
    try:
        s = Server(c.bin, ["--model", c.big, "--max-model-len", "2048", "--threads", "1", "--max-batch-size", "2",
                           "--adapter", f"slow={c.big_adapter}"], c.work, "deadline")
    except ServerStartError as e:
        R.check("server starts", False, str(e)[-500:])
        return
    try:
        # tokens are delivered as they are generated, not at the end
        t0 = time.time()
        r = requests.post(s.url("/invocations"), json=body(c.prompts[0], None, 200, stream=True),
                          stream=True, timeout=60)
        times = [time.time() - t0 for _ in r.iter_lines()]
        R.check("stream delivers tokens incrementally (first line before half of the stream's time)",
                len(times) == 200 and times[0] < 0.5 * times[-1], f"{len(times)} lines, first at {times[:1]}, "
                f"last at {times[-1:]}")
        if times:
            R.note(f"stream of {len(times)} lines: first after {times[0] * 1000:.0f} ms, "
                   f"last after {times[-1] * 1000:.0f} ms")
        # unloading an adapter waits for its in-flight request (up to the server's 30 s unload timeout, so the
        # stream is sized to last ~1.5 s at the rate just measured); meanwhile the name is no longer served
        n_hold = max(20, min(600, int(200 * 1.5 / max(times[-1] if times else 1.0, 1e-3))))
        hold = {}
        started = threading.Event()

        def user():
            g = Gen()
            g.lines = []
            r = requests.post(s.url("/invocations"), stream=True, timeout=120,
                              json=body(c.prompts[2], "slow", n_hold, stream=True, details=False))
            g.status = r.status_code
            try:
                for line in r.iter_lines():
                    g.lines.append(line)
                    started.set()
            except requests.RequestException as e:
                g.problems.append(repr(e))
            hold["end"] = time.time()
            hold["g"] = g
            started.set()
        t = threading.Thread(target=user)
        t.start()
        started.wait(60)
        late = {}

        def late_request():
            time.sleep(0.2)  # the DELETE below has begun
            late["g"] = gen(s, body(c.prompts[2], "slow", 4), c.eos)
        t2 = threading.Thread(target=late_request)
        t2.start()
        r = s.delete("/adapters/slow", timeout=120)
        t_del = time.time()
        t.join()
        t2.join()
        g = hold.get("g")
        last = {}
        try:
            last = json.loads(g.lines[-1])
        except (ValueError, IndexError, AttributeError):
            pass
        R.eq("DELETE of an adapter in use: 200", r.status_code, 200)
        R.check(f"the in-flight stream on it completed ({n_hold} tokens)", g is not None and g.status == 200 and
                (last.get("details") or {}).get("generated_tokens") == n_hold and
                (last.get("details") or {}).get("finish_reason") == "length", f"{g} {str(last)[:200]}")
        R.check("DELETE returned only after that stream ended", "end" in hold and t_del >= hold["end"] - 0.05,
                f"delete at {t_del:.3f}, stream end {hold.get('end', 0):.3f}")
        lg = late.get("g")
        status_case("a new request for the adapter being unloaded", lg.status if lg else None,
                    (lg.raw or "") if lg else "", 404)
        # a client that goes away frees its sequence: generation stops long before its 1900 tokens
        for kind in ("stream", "non-stream"):
            _, p0 = s.metrics()
            before = p0.value("loraforge_generation_tokens_total") or 0
            t0 = time.time()
            try:
                if kind == "stream":
                    r = requests.post(s.url("/invocations"), json=body(c.prompts[1], None, 1900, stream=True),
                                      stream=True, timeout=60)
                    it = r.iter_lines()
                    for _ in range(3):
                        next(it, None)
                    r.close()
                else:  # raw socket: send, wait until the engine runs it, then hang up without reading
                    data = json.dumps(body(c.prompts[1], None, 1900)).encode()
                    sk = socket.create_connection(("127.0.0.1", s.port), timeout=10)
                    sk.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
                    t_end = time.time() + 30
                    while time.time() < t_end and gauges(s).get("running", 0) < 1:
                        time.sleep(0.01)
                    t0 = time.time()
                    sk.close()
            except requests.RequestException:
                pass
            full = (times[-1] if times else 0.4) * 1900 / 200  # what all 1900 tokens take on this machine now
            idle, gs = wait_idle(s, timeout=min(30.0, 0.5 * full + 1.0))
            took = time.time() - t0
            _, p1 = s.metrics()
            made = (p1.value("loraforge_generation_tokens_total") or 0) - before
            R.check(f"{kind} client gone: its sequence is cancelled (idle well before 1900 tokens could be made)",
                    idle and made < 1000 and took < 0.5 * full,
                    f"idle {idle} {gs} after {took:.2f} s (1900 tokens take ~{full:.1f} s), {made:.0f} tokens counted")
            R.note(f"{kind} client gone: {'idle' if idle else 'STILL RUNNING'} after {took:.2f} s (1900 tokens "
                   f"~{full:.1f} s), {made:.0f} tokens counted")
        R.set_group("drain-deadline")
        _, cut = shutdown_under_load(c, s, c.prompts + c.more_prompts, 12, 12, 1900)
        if cut == 0:
            R.note("drain-deadline: everything finished before the 25 s deadline (fast machine): the cancel path "
                   "was not exercised")
    finally:
        s.kill()


def g_docs(c):
    """Every bash example of docs/serving.md against a server started with the documented command line (with
    /opt/ml mapped to a directory laid out as the examples assume, and a free port)."""
    R.set_group("docs")
    path = os.path.join(REPO, "docs", "serving.md")
    if not R.check("docs/serving.md exists", os.path.exists(path), path):
        return
    with open(path) as f:
        text = f.read()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    starts = [b for b in blocks if "loraforge serve" in b]
    if not R.check("docs: a `loraforge serve` example", starts, ""):
        return
    optml = os.path.join(c.work, "optml")
    model = os.path.join(optml, "model")
    os.makedirs(os.path.join(model, "adapters"))
    os.makedirs(os.path.join(optml, "adapters"))
    for f in os.listdir(c.fx.base):
        if f != "adapters":
            os.symlink(os.path.join(c.fx.base, f), os.path.join(model, f))
    shutil.copytree(c.fx.adapters["alpha"], os.path.join(model, "adapters", "support"))
    shutil.copytree(c.fx.adapters["beta"], os.path.join(optml, "adapters", "billing"))
    shutil.copytree(c.fx.adapters["r4"], os.path.join(optml, "adapters", "sql"))
    argv = shlex.split(starts[0].replace("\\\n", " ").replace("/opt/ml", optml))
    if not R.check("docs: the start example is `loraforge serve ...`", argv[:2] == ["loraforge", "serve"], str(argv)):
        return
    args = []
    i = 2
    while i < len(argv):
        if argv[i] in ("--port", "--host"):
            i += 2
            continue
        args.append(argv[i])
        i += 1
    try:  # /opt/ml is a default root; here it is optml
        s = Server(c.bin, args + ["--adapter-root", optml, "--threads", "2"], c.work, "docs")
    except ServerStartError as e:
        R.check("docs: the documented command starts", False, str(e)[-800:])
        return
    with s:
        for b in blocks:
            if "curl" not in b:
                continue
            script = b.replace("localhost:8080", f"127.0.0.1:{s.port}").replace("/opt/ml", optml)
            want = re.findall(r"#\s*->\s*(\d{3})", b)
            name = "docs: " + " ".join(b.split())[:90]
            p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
            out = p.stdout
            if want:
                ok = p.returncode == 0 and all(f'"code":{w}' in out.replace(" ", "") for w in want)
            else:
                ok = p.returncode == 0 and out.strip() != "" and '"error"' not in out
            R.check(name, ok, f"exit {p.returncode}: {out[-400:]!r} {p.stderr[-200:]!r}")


# ============================================================ main


def make_prompts(rng):
    ps = []
    for n in (5, 9, 14, 7):
        ps.append(" ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + ".")
    return ps


GROUPS = [g_startup, g_parity, g_stream, g_chat, g_params, g_errors, g_hostile, g_adapters, g_concurrency,
          g_dynamic, g_metrics, g_sse_server, g_preemption, g_queue, g_sigterm, g_drain_deadline, g_docs]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--only", default="", help="comma-separated group functions (debugging), e.g. g_parity")
    a = ap.parse_args()
    seed = int(os.environ.get("LF_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
    print(f"seed {seed} (set LF_TEST_SEED to reproduce)", flush=True)
    t_start = time.time()
    rng = random.Random(seed)
    c = Ctx()
    c.bin = os.path.abspath(a.bin)
    c.work = os.path.abspath(a.workdir)
    shutil.rmtree(c.work, ignore_errors=True)
    os.makedirs(c.work)
    c.exp = {}
    c.main = None
    try:
        try:
            c.fx = Fixtures(c.bin, c.work, seed, REPO)
        except Exception as e:
            R.check("fixtures (make-tiny, peft adapters)", False, repr(e))
            return 1
        c.eos = c.fx.eos
        c.ref = Reference(c.fx)
        c.prompts = make_prompts(rng)
        c.long_prompt = " ".join(rng.choice(WORDS) for _ in range(300))
        R.check("long prompt is over --max-model-len", len(c.ref.encode(c.long_prompt)) > MAX_MODEL_LEN, "")
        words = c.long_prompt.split()
        k = 1
        while len(c.ref.encode(" ".join(words[:k]))) < 100:
            k += 1
        c.mid_prompt = " ".join(words[:k])
        c.mid_len = len(c.ref.encode(c.mid_prompt))
        c.broken = os.path.join(c.fx.root, "broken")
        shutil.copytree(c.fx.gamma, c.broken)
        with open(os.path.join(c.broken, "adapter_model.safetensors"), "r+b") as f:
            f.truncate(100)
        c.bare = os.path.join(c.work, "bare")  # the base model without its adapters/ directory
        os.makedirs(c.bare)
        for f in os.listdir(c.fx.base):
            if f != "adapters":
                os.symlink(os.path.join(c.fx.base, f), os.path.join(c.bare, f))
        c.slow = os.path.join(c.work, "slow")
        from serve_fixtures import make_tiny
        make_tiny(c.bin, c.slow, seed % 1000 + 7, 256, os.path.join(REPO, "examples", "tokenizer"))
        c.big = os.path.join(c.work, "big")
        make_tiny(c.bin, c.big, seed % 1000 + 8, 512, os.path.join(REPO, "examples", "tokenizer"), layers=4)
        for f, v in (("config.json", None), ("generation_config.json", [])):  # no EOS: requests run to the end
            with open(os.path.join(c.big, f)) as fh:
                j = json.load(fh)
            j["eos_token_id"] = v
            with open(os.path.join(c.big, f), "w") as fh:
                json.dump(j, fh)
        from serve_fixtures import peft_adapter
        c.big_adapter = peft_adapter(c.big, os.path.join(c.work, "bigad"), seed % 1000 + 9, 4, 8)
        c.more_prompts = [" ".join(rng.choice(WORDS) for _ in range(3 + k)) for k in range(8)]
        print(f"fixtures ready in {time.time() - t_start:.1f} s", flush=True)
        try:
            c.main = Server(c.bin, c.fx.serve_args() + [
                "--adapter-root", c.fx.root, "--max-model-len", str(MAX_MODEL_LEN), "--max-lora-rank", "16",
                "--max-loras", str(MAX_LORAS), "--max-batch-size", "16", "--threads", "2"], c.work, "main")
        except ServerStartError as e:
            R.check("main server starts", False, str(e)[-1500:])
            return 1
        only = set(x for x in a.only.split(",") if x)
        for fn in GROUPS:
            if only and fn.__name__ not in only:
                continue
            t0 = time.time()
            try:
                fn(c)
            except Exception as e:  # a crash in one group is a failure, the others still run
                import traceback
                traceback.print_exc()
                R.check(f"{fn.__name__} ran to the end", False, repr(e))
            print(f"   ({fn.__name__}: {time.time() - t0:.1f} s)", flush=True)
            if c.main.proc.poll() is not None:
                R.check("main server still running", False, f"exit {c.main.proc.returncode}\n{c.main.log_tail()}")
                break
        if c.main.proc.poll() is None:
            rc, secs = c.main.terminate(25)
            R.check("main server: SIGTERM -> exit 0", rc == 0, f"exit {rc} after {secs:.1f} s", group="sigterm")
        for fn in sorted(os.listdir(c.work)):
            if fn.startswith("server-") and fn.endswith(".log"):
                log = open(os.path.join(c.work, fn), "rb").read().decode("utf-8", "replace")
                bad = [ln for ln in log.splitlines() if "Sanitizer" in ln or "runtime error" in ln]
                R.check(f"no sanitizer report in {fn}", not bad, "\n".join(bad[:5]), group="sigterm")
    finally:
        if c.main:
            c.main.kill()
        print(f"runtime {time.time() - t_start:.1f} s, seed {seed}")
        failed = R.summary()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
