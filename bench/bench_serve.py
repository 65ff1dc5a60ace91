#!/usr/bin/env python3
"""bench_serve.py - load generator for `loraforge serve` (issue 6, point 6).

Sends streaming LMI/TGI requests to POST /invocations:
    {"inputs": PROMPT, "parameters": {"max_new_tokens": N, "details": true}, "stream": true}
with header X-Amzn-SageMaker-Adapter-Identifier: NAME (left out for the base model), reads the
application/jsonlines answer line by line ({"token": {...}, "generated_text": null, ...} per token, the last
line carrying generated_text and details), and reports per phase: output tokens/s, requests/s, TTFT and TPOT
p50/p99 (and end-to-end latency), errors, and the client's own CPU use.

Load:
  --mode closed --concurrency C    C worker threads, each sending its next request when the last one ended
                                   (one keep-alive connection per worker).
  --mode open --rate R             Poisson arrivals at R requests/s (exponential gaps from --seed), each on its
                                   own thread and connection whatever the server's state (open loop); at most
                                   --max-inflight at once, later arrivals are counted as dropped.
  --prompt-len A or A:B            prompt tokens, fixed or uniform in [A, B]
  --output-len A or A:B            max_new_tokens, fixed or uniform in [A, B]
  --adapter-mix base|all|N         base model only, every loaded adapter, or the first N adapters
  --adapter-pick rr|random         round-robin or uniform random choice among them
  --compare                        two phases back to back with the same requests (lengths, arrivals): base
                                   only, then --compare-adapters (default 8) distinct adapters; prints the
                                   throughput ratio adapters / base.

Server: with --url it targets a running server (nothing is started). Otherwise it starts
`loraforge serve --host 127.0.0.1 --port FREE --model M --adapter aK=DIR ...` (binary from --bin or
--build/loraforge), waits for GET /ping == 200, and stops it with SIGTERM at the end. Without --model it makes
(once, under --workdir) a Llama with `loraforge make-tiny` (hidden 512, 8 layers, 8 heads, 4 KV heads,
intermediate 1408, Llama-2 tokenizer and vocab 32000 from ../shared/data when present, else the demo
tokenizer; bf16) and --num-adapters (default 8) random PEFT LoRA adapters (r --adapter-rank, all seven
projections; A and B random, so every adapter changes the output), written with the standard library only.

Prompts are made of words that the model's tokenizer encodes as one token each (checked once with
`loraforge tokenize`), so a prompt of N words is N tokens (+ BOS when the tokenizer adds one); the prompt
lengths the server saw (details.input_length) are reported.

Measurements: TTFT = first streamed line - request sent (the client sees the first token when the server
sends its first line); TPOT = (last line - first line) / (generated_tokens - 1) per request with >= 2 tokens;
throughput = sum of details.generated_tokens / (first send .. last answer) of the phase. Client overhead:
this process's CPU seconds (getrusage) per phase, per output token and as cores used, next to the server's
CPU seconds (/proc/PID/stat) when the server was started here. --mock runs the client against a built-in
Python streaming server that answers instantly (or one line every --mock-tpot-ms), to measure the client's own
ceiling and its CPU cost per streamed line.

Examples:
  python3 bench/bench_serve.py --build build --compare --mode closed --concurrency 8 --num-requests 48
  python3 bench/bench_serve.py --build build --compare --mode open --rate 2 --num-requests 48
  python3 bench/bench_serve.py --url http://127.0.0.1:8080 --adapter-mix base --mode closed --concurrency 4
  python3 bench/bench_serve.py --mock --mode closed --concurrency 16 --num-requests 2000 --output-len 64
Prints one JSON line per phase (and one for --compare), then a Markdown table.
"""
import argparse
import array
import http.client
import json
import math
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse

ADAPTER_HEADER = "X-Amzn-SageMaker-Adapter-Identifier"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the of and to in is that for it as was with on be at by this had not are but from or have an they "
         "which one you were her all she there would their we him been has when who will more no if out so said "
         "what up its about into than them can only other new some could time these two may then do first any my "
         "now such like our over man me even most made after also did many before must through back years where "
         "much your way well down should because each just those people").split()


def log(msg):
    print("bench_serve: " + msg, file=sys.stderr, flush=True)


def parse_range(s, name):
    try:
        if ":" in s:
            a, b = s.split(":", 1)
            a, b = int(a), int(b)
        else:
            a = b = int(s)
    except ValueError:
        raise SystemExit("bench_serve: --%s '%s': expected N or A:B" % (name, s))
    if a < 1 or b < a:
        raise SystemExit("bench_serve: --%s '%s': need 1 <= A <= B" % (name, s))
    return a, b


def percentile(xs, q):
    """Linear interpolation between closest ranks (numpy's default); None for no data."""
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100.0
    f = math.floor(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


# ---------------------------------------------------------------- model, adapters, server

def make_model(lf, out):
    if os.path.exists(os.path.join(out, "config.json")):
        return
    tok = os.path.join(os.path.dirname(REPO), "shared", "data", "tokenizers", "llama2")
    if not os.path.exists(os.path.join(tok, "tokenizer.json")):
        tok = os.path.join(REPO, "examples", "tokenizer")
    cmd = [lf, "make-tiny", "--arch", "llama", "--out", out, "--hidden", "512", "--layers", "8", "--heads", "8",
           "--kv-heads", "4", "--intermediate", "1408", "--tokenizer", tok, "--dtype", "bf16", "--seed", "1",
           "--max-pos", "2048"]
    log(" ".join(cmd))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def write_safetensors(path, tensors):
    """tensors: list of (name, shape, array('f')) -> an F32 .safetensors file (little-endian, as x86/arm)."""
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, data in tensors:
        n = len(data) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, data in tensors:
            data.tofile(f)
    os.replace(path + ".tmp", path)


def make_adapter(model_dir, out, rank, seed):
    """A random PEFT LoRA adapter on all seven projections of the model in model_dir: A ~ U(+-1/sqrt(in)) as
    PEFT's Kaiming init, B ~ U(+-0.02) (not PEFT's zeros, so that every adapter changes the logits)."""
    if os.path.exists(os.path.join(out, "adapter_model.safetensors")):
        return
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    H, L, inter = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]
    nh = c["num_attention_heads"]
    kvh = c.get("num_key_value_heads", nh)
    hd = c.get("head_dim") or H // nh
    mods = [("self_attn", "q_proj", H, nh * hd), ("self_attn", "k_proj", H, kvh * hd),
            ("self_attn", "v_proj", H, kvh * hd), ("self_attn", "o_proj", nh * hd, H),
            ("mlp", "gate_proj", H, inter), ("mlp", "up_proj", H, inter), ("mlp", "down_proj", inter, H)]
    rng = random.Random(seed)
    tensors = []
    for layer in range(L):
        for blk, name, cin, cout in mods:
            pre = "base_model.model.model.layers.%d.%s.%s" % (layer, blk, name)
            a = 1.0 / math.sqrt(cin)
            A = array.array("f", [rng.uniform(-a, a) for _ in range(rank * cin)])
            B = array.array("f", [rng.uniform(-0.02, 0.02) for _ in range(cout * rank)])
            tensors.append((pre + ".lora_A.weight", (rank, cin), A))
            tensors.append((pre + ".lora_B.weight", (cout, rank), B))
    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, "adapter_model.safetensors"), tensors)
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": os.path.abspath(model_dir),
           "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
           "target_modules": [m[1] for m in mods], "use_rslora": False, "use_dora": False, "inference_mode": True,
           "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
           "rank_pattern": {}, "alpha_pattern": {}, "revision": None}
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def ping(host, port, timeout=2.0):
    try:
        c = http.client.HTTPConnection(host, port, timeout=timeout)
        c.request("GET", "/ping")
        r = c.getresponse()
        r.read()
        c.close()
        return r.status
    except OSError:
        return None


class Server:
    """A `loraforge serve` child (or the --mock server) on 127.0.0.1:free port."""

    def __init__(self, cmd, port, log_path, wait_s):
        self.port, self.host = port, "127.0.0.1"
        self.log = open(log_path, "w")
        log("starting: " + " ".join(cmd))
        self.p = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while True:
            if self.p.poll() is not None:
                raise SystemExit("bench_serve: the server exited with %d while starting; see %s" %
                                 (self.p.returncode, log_path))
            if ping(self.host, port) == 200:
                break
            if time.monotonic() - t0 > wait_s:
                self.stop()
                raise SystemExit("bench_serve: no 200 from GET /ping after %.0f s; see %s" % (wait_s, log_path))
            time.sleep(0.2)
        self.ready_s = time.monotonic() - t0
        log("server ready in %.1f s" % self.ready_s)

    def cpu_s(self):
        """utime + stime of the server process so far (Linux /proc)."""
        try:
            with open("/proc/%d/stat" % self.p.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()
        return self.p.returncode


# ---------------------------------------------------------------- prompts

def single_token_words(lf, model_dir):
    """The WORDS that the tokenizer encodes as exactly one token after a space (checked with loraforge
    tokenize), and whether encoding adds tokens (BOS) of its own."""
    lines = "\n".join(json.dumps("x " + w) for w in WORDS) + "\n" + json.dumps("x") + "\n"
    r = subprocess.run([lf, "tokenize", "--model", model_dir, "--jsonl"], input=lines, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        log("tokenize failed (%s): assuming one token per word" % r.stderr.strip()[:200])
        return list(WORDS)
    ids = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    base = len(ids[-1])
    words = [w for w, t in zip(WORDS, ids) if len(t) == base + 1]
    if len(words) < 10:
        log("only %d one-token words: prompt lengths are approximate" % len(words))
        return list(WORDS)
    return words


def make_prompt(rng, words, n):
    return " ".join(rng.choice(words) for _ in range(n))


# ---------------------------------------------------------------- one request

class Result:
    __slots__ = ("ok", "status", "error", "t_send", "t_first", "t_end", "lines", "gen_tokens", "input_len",
                 "adapter", "max_new", "finish")

    def __init__(self):
        self.ok, self.status, self.error = False, None, None
        self.t_send = self.t_first = self.t_end = None
        self.lines, self.gen_tokens, self.input_len, self.finish = 0, 0, None, None


def do_request(conn_box, host, port, req, timeout):
    """Send one streaming request; conn_box[0] is a reusable HTTPConnection (or None). Returns a Result."""
    prompt, max_new, adapter = req
    res = Result()
    res.adapter, res.max_new = adapter, max_new
    body = json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": max_new, "details": True},
                       "stream": True}).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/jsonlines"}
    if adapter:
        headers[ADAPTER_HEADER] = adapter
    final = None
    for attempt in (0, 1):  # a kept-alive connection the server closed meanwhile: retry once on a new one
        conn = conn_box[0]
        if conn is None:
            conn = conn_box[0] = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            res.t_send = time.perf_counter()
            conn.request("POST", "/invocations", body, headers)
            r = conn.getresponse()
            res.status = r.status
            if r.status != 200:
                txt = r.read()
                res.t_end = time.perf_counter()
                res.error = "HTTP %d: %s" % (r.status, txt[:200].decode("utf-8", "replace"))
                return res
            while True:
                line = r.readline()
                if not line:
                    break
                if not line.strip():
                    continue
                now = time.perf_counter()
                if res.t_first is None:
                    res.t_first = now
                res.lines += 1
                res.t_end = now
                if b'"generated_text":null' in line and b'"error"' not in line:
                    continue  # an ordinary token line: no need to parse it
                final = json.loads(line)
            if r.will_close:
                conn.close()
                conn_box[0] = None
            break
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
            conn.close()
            conn_box[0] = None
            if attempt == 0 and res.lines == 0 and res.status is None:
                continue
            res.t_end = time.perf_counter()
            res.error = "%s: %s" % (type(e).__name__, e)
            return res
        except (OSError, http.client.HTTPException, ValueError) as e:
            conn.close()
            conn_box[0] = None
            res.t_end = time.perf_counter()
            res.error = "%s: %s" % (type(e).__name__, e)
            return res
    if final is None:
        res.error = "stream ended without a final line (%d lines)" % res.lines
        return res
    d = final.get("details") or {}
    if final.get("error") or d.get("finish_reason") == "error":
        res.error = "mid-stream error: %s" % final.get("error")
        return res
    res.gen_tokens = int(d.get("generated_tokens", res.lines))
    res.input_len = d.get("input_length")
    res.finish = d.get("finish_reason")
    res.ok = True
    return res


# ---------------------------------------------------------------- load

def run_closed(host, port, reqs, concurrency, timeout):
    results = [None] * len(reqs)
    nxt = [0]
    lock = threading.Lock()

    def worker():
        box = [None]
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(reqs):
                break
            results[i] = do_request(box, host, port, reqs[i], timeout)
        if box[0] is not None:
            box[0].close()

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results, 0


def run_open(host, port, reqs, arrivals, max_inflight, timeout):
    results = [None] * len(reqs)
    sem = threading.BoundedSemaphore(max_inflight)
    dropped = 0
    threads = []

    def one(i):
        try:
            results[i] = do_request([None], host, port, reqs[i], timeout)
        finally:
            sem.release()

    t0 = time.perf_counter()
    for i, at in enumerate(arrivals):
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if not sem.acquire(blocking=False):
            dropped += 1
            continue
        t = threading.Thread(target=one, args=(i,), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return results, dropped


def make_workload(a, adapters, seed):
    """Requests (prompt, max_new_tokens, adapter) and Poisson arrival offsets, all from `seed`: the lengths and
    arrivals do not depend on the adapter list (their own RNG streams), so --compare phases get the same."""
    rl, ra, rp = random.Random(seed), random.Random(seed + 1), random.Random(seed + 2)
    pa, pb = a.prompt_len
    oa, ob = a.output_len
    reqs, arrivals, t = [], [], 0.0
    for i in range(a.num_requests):
        n_in, n_out = rl.randint(pa, pb), rl.randint(oa, ob)
        if not adapters:
            ad = None
        elif a.adapter_pick == "rr":
            ad = adapters[i % len(adapters)]
        else:
            ad = adapters[ra.randrange(len(adapters))]
        reqs.append((make_prompt(rp, a.words, n_in), n_out, ad))
        if a.mode == "open":
            t += rl.expovariate(a.rate)
            arrivals.append(t)
    return reqs, arrivals


def run_phase(a, name, host, port, adapters, server):
    reqs, arrivals = make_workload(a, adapters, a.seed)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    scpu0 = server.cpu_s() if server else None
    t0 = time.perf_counter()
    if a.mode == "closed":
        results, dropped = run_closed(host, port, reqs, a.concurrency, a.timeout)
    else:
        results, dropped = run_open(host, port, reqs, arrivals, a.max_inflight, a.timeout)
    t1 = time.perf_counter()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    scpu1 = server.cpu_s() if server else None
    done = [r for r in results if r is not None]
    ok = [r for r in done if r.ok]
    errs = {}
    for r in done:
        if not r.ok:
            k = r.error.split(":")[0] if r.error else "unknown"
            errs[k] = errs.get(k, 0) + 1
    sends = [r.t_send for r in done if r.t_send is not None]
    ends = [r.t_end for r in done if r.t_end is not None]
    span = (max(ends) - min(sends)) if sends and ends else (t1 - t0)
    out_tokens = sum(r.gen_tokens for r in ok)
    ttft = [(r.t_first - r.t_send) * 1e3 for r in ok if r.t_first is not None]
    tpot = [(r.t_end - r.t_first) / (r.gen_tokens - 1) * 1e3 for r in ok if r.gen_tokens > 1 and r.t_first]
    e2e = [(r.t_end - r.t_send) * 1e3 for r in ok]
    in_lens = [r.input_len for r in ok if isinstance(r.input_len, int)]
    finish = {}
    for r in ok:
        finish[str(r.finish)] = finish.get(str(r.finish), 0) + 1
    client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)

    def rnd(x, n=2):
        return None if x is None else round(x, n)

    rep = {"bench": "serve", "phase": name, "mode": a.mode,
           "concurrency": a.concurrency if a.mode == "closed" else None,
           "rate_rps": a.rate if a.mode == "open" else None,
           "adapters": len(set(adapters)) if adapters else 0, "adapter_pick": a.adapter_pick if adapters else None,
           "requests": len(reqs), "ok": len(ok), "errors": sum(errs.values()), "error_kinds": errs,
           "dropped": dropped, "finish_reasons": finish, "prompt_len": list(a.prompt_len),
           "output_len": list(a.output_len),
           "mean_input_length": rnd(sum(in_lens) / len(in_lens) if in_lens else None, 1),
           "output_tokens": out_tokens, "duration_s": rnd(span, 3),
           "output_tok_s": rnd(out_tokens / span if span > 0 else None),
           "req_s": rnd(len(ok) / span if span > 0 else None, 3),
           "ttft_ms_p50": rnd(percentile(ttft, 50), 1), "ttft_ms_p99": rnd(percentile(ttft, 99), 1),
           "tpot_ms_p50": rnd(percentile(tpot, 50), 2), "tpot_ms_p99": rnd(percentile(tpot, 99), 2),
           "e2e_ms_p50": rnd(percentile(e2e, 50), 1), "e2e_ms_p99": rnd(percentile(e2e, 99), 1),
           "client_cpu_s": rnd(client_cpu, 3),
           "client_cores": rnd(client_cpu / (t1 - t0), 3),
           "client_cpu_us_per_token": rnd(client_cpu / out_tokens * 1e6 if out_tokens else None, 1),
           "server_cpu_s": rnd(scpu1 - scpu0 if scpu0 is not None and scpu1 is not None else None, 2)}
    if rep["server_cpu_s"]:
        rep["client_cpu_vs_server"] = round(client_cpu / rep["server_cpu_s"], 4)
    print(json.dumps(rep), flush=True)
    for r in done:
        if not r.ok:
            log("first error of phase %s: %s" % (name, r.error))
            break
    return rep


# ---------------------------------------------------------------- mock server (client ceiling)

def mock_server(port, tpot_ms):
    """Answers POST /invocations with max_new_tokens jsonlines token lines (chunked): all at once when tpot_ms is 0,
    else one chunk per line every tpot_ms (so the client reads each line separately, as from the real server).
    GET /ping answers 200."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms Nagle/delayed-ACK stall

        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            n = body["parameters"]["max_new_tokens"]
            self.send_response(200)
            self.send_header("Content-Type", "application/jsonlines")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            line = (b'{"token":{"id":278,"text":" the","log_prob":-1.25,"special":false},'
                    b'"generated_text":null,"details":null}\n')
            out = []
            for _ in range(n - 1):
                out.append(b"%x\r\n%s\r\n" % (len(line), line))
                if tpot_ms > 0:
                    time.sleep(tpot_ms / 1e3)
                    self.wfile.write(out.pop())
            last = json.dumps({"token": {"id": 278, "text": " the", "log_prob": -1.25, "special": False},
                               "generated_text": " the" * n,
                               "details": {"finish_reason": "length", "generated_tokens": n, "seed": None,
                                           "input_length": len(body["inputs"].split())}}).encode() + b"\n"
            out.append(b"%x\r\n%s\r\n0\r\n\r\n" % (len(last), last))
            self.wfile.write(b"".join(out))

    class S(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024  # the default listen backlog of 5 drops SYNs of concurrent clients (1 s retry)

    S(("127.0.0.1", port), H).serve_forever()


# ---------------------------------------------------------------- main

def table(reps):
    print()
    print("| phase | mode | adapters | requests ok/err | output tok/s | req/s | TTFT p50 / p99 ms | "
          "TPOT p50 / p99 ms | client CPU us/token | client/server CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in reps:
        load = "closed c=%d" % r["concurrency"] if r["mode"] == "closed" else "open %.3g rps" % r["rate_rps"]
        print("| %s | %s | %s | %d/%d | %s | %s | %s / %s | %s / %s | %s | %s |" % (
            r["phase"], load, r["adapters"] or "base", r["ok"], r["errors"] + r["dropped"], r["output_tok_s"],
            r["req_s"], r["ttft_ms_p50"], r["ttft_ms_p99"], r["tpot_ms_p50"], r["tpot_ms_p99"],
            r["client_cpu_us_per_token"], r.get("client_cpu_vs_server", "-")))


def main():
    ap = argparse.ArgumentParser(description="load generator for loraforge serve (see the file's docstring)")
    ap.add_argument("--url", help="target a running server (http://HOST:PORT); nothing is started")
    ap.add_argument("--bin", help="loraforge binary (default BUILD/loraforge)")
    ap.add_argument("--build", default=os.path.join(REPO, "build"), help="build dir holding loraforge")
    ap.add_argument("--workdir", help="model, adapters, server log (default BUILD/bench-serve)")
    ap.add_argument("--model", help="model dir (default: make one)")
    ap.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                    help="adapters to load (repeatable; default: make --num-adapters random ones)")
    ap.add_argument("--num-adapters", type=int, default=8)
    ap.add_argument("--adapter-rank", type=int, default=16)
    ap.add_argument("--adapter-names", help="with --url: comma list of the adapters the server has loaded")
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="server threads (0 = all cores)")
    ap.add_argument("--server-arg", action="append", default=[], help="extra argument for loraforge serve")
    ap.add_argument("--ready-timeout", type=float, default=300)
    ap.add_argument("--mode", choices=["closed", "open"], default="closed")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rate", type=float, default=2.0, help="open loop: requests/s (Poisson)")
    ap.add_argument("--max-inflight", type=int, default=512)
    ap.add_argument("--num-requests", type=int, default=48)
    ap.add_argument("--warmup", type=int, default=2,
                    help="base requests sent before measuring (plus one short one per adapter used); 0 = none")
    ap.add_argument("--prompt-len", default="64:256")
    ap.add_argument("--output-len", default="32:96")
    ap.add_argument("--adapter-mix", default="base", help="base | all | N (the first N adapters)")
    ap.add_argument("--adapter-pick", choices=["rr", "random"], default="rr")
    ap.add_argument("--compare", action="store_true", help="base-only, then --compare-adapters adapters")
    ap.add_argument("--compare-adapters", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900, help="per-request socket timeout (s)")
    ap.add_argument("--mock", action="store_true", help="target a built-in instant server (client ceiling)")
    ap.add_argument("--mock-tpot-ms", type=float, default=0.0,
                    help="--mock: the mock server's time between token lines (0 = the whole answer at once)")
    ap.add_argument("--mock-server", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.mock_server:
        mock_server(a.mock_server, a.mock_tpot_ms)
        return
    a.prompt_len = parse_range(a.prompt_len, "prompt-len")
    a.output_len = parse_range(a.output_len, "output-len")
    if a.adapter_mix not in ("base", "all") and not (a.adapter_mix.isdigit() and int(a.adapter_mix) >= 1):
        raise SystemExit("bench_serve: --adapter-mix '%s': expected base, all or a count >= 1" % a.adapter_mix)
    if a.concurrency < 1 or a.rate <= 0 or a.num_requests < 1:
        raise SystemExit("bench_serve: --concurrency, --rate and --num-requests must be positive")

    server, names = None, []
    lf = a.bin or os.path.join(a.build, "loraforge")
    wd = a.workdir or os.path.join(a.build, "bench-serve")
    a.words = list(WORDS)
    try:
        if a.url:
            u = urllib.parse.urlparse(a.url)
            host, port = u.hostname, u.port or 80
            names = a.adapter_names.split(",") if a.adapter_names else []
            if os.access(lf, os.X_OK) and a.model:
                a.words = single_token_words(lf, a.model)
        elif a.mock:
            port = free_port()
            host = "127.0.0.1"
            os.makedirs(wd, exist_ok=True)
            server = Server([sys.executable, os.path.abspath(__file__), "--mock-server", str(port),
                             "--mock-tpot-ms", str(a.mock_tpot_ms)], port, os.path.join(wd, "mock.log"), 30)
            names = ["a%d" % i for i in range(max(a.num_adapters, a.compare_adapters))]
        else:
            if not os.access(lf, os.X_OK):
                raise SystemExit("bench_serve: %s not found (make -C BUILD loraforge, or --bin/--url)" % lf)
            os.makedirs(wd, exist_ok=True)
            model = a.model or os.path.join(wd, "llama-tiny")
            if not a.model:
                make_model(lf, model)
            pairs = []
            if a.adapter:
                for s in a.adapter:
                    n, _, d = s.partition("=")
                    if not n or not d:
                        raise SystemExit("bench_serve: --adapter '%s': expected NAME=DIR" % s)
                    pairs.append((n, d))
            else:
                for i in range(a.num_adapters):
                    d = os.path.join(wd, "adapters-r%d" % a.adapter_rank, "a%d" % i)
                    make_adapter(model, d, a.adapter_rank, 1000 + i)
                    pairs.append(("a%d" % i, d))
            names = [n for n, _ in pairs]
            a.words = single_token_words(lf, model)
            port, host = free_port(), "127.0.0.1"
            cmd = [lf, "serve", "--model", model, "--host", host, "--port", str(port), "--max-batch-size",
                   str(a.max_batch_size)] + (["--threads", str(a.threads)] if a.threads else [])
            for n, d in pairs:
                cmd += ["--adapter", "%s=%s" % (n, d)]
            server = Server(cmd + a.server_arg, port, os.path.join(wd, "server.log"), a.ready_timeout)

        def pick(mix):
            if mix == "base":
                return []
            k = len(names) if mix == "all" else int(mix)
            if k > len(names):
                raise SystemExit("bench_serve: %d adapters asked, %d loaded (%s)" % (k, len(names), names))
            return names[:k]

        if a.warmup:  # --warmup base requests of the run's lengths, then one short request per adapter used
            wa = argparse.Namespace(**vars(a))
            wa.num_requests, wa.mode = a.warmup, "closed"
            reqs, _ = make_workload(wa, [], a.seed + 99)
            used = pick(str(a.compare_adapters)) if a.compare else pick(a.adapter_mix)
            reqs += [(make_prompt(random.Random(i), a.words, 8), 4, n) for i, n in enumerate(used)]
            res, _ = run_closed(host, port, reqs, max(1, min(a.concurrency, len(reqs))), a.timeout)
            bad = [r for r in res if not r.ok]
            if bad:
                raise SystemExit("bench_serve: warm-up request failed: %s" % bad[0].error)
        reps = []
        if a.compare:
            base = run_phase(a, "base", host, port, [], server)
            multi = run_phase(a, "%d-adapters" % a.compare_adapters, host, port, pick(str(a.compare_adapters)),
                              server)
            reps = [base, multi]
            ratio = (multi["output_tok_s"] / base["output_tok_s"]) if base["output_tok_s"] and multi[
                "output_tok_s"] else None
            print(json.dumps({"bench": "serve_compare", "adapters": a.compare_adapters,
                              "throughput_ratio_adapters_vs_base": None if ratio is None else round(ratio, 3)}),
                  flush=True)
        else:
            reps = [run_phase(a, a.adapter_mix if a.adapter_mix == "base" else "adapters-" + a.adapter_mix, host,
                              port, pick(a.adapter_mix), server)]
        table(reps)
        if a.compare and ratio is not None:
            print("\nthroughput ratio, %d distinct adapters / base only: %.3f" % (a.compare_adapters, ratio))
    finally:
        if server:
            rc = server.stop()
            if rc not in (0, -signal.SIGTERM) and not a.mock:
                log("server exited with %s" % rc)


if __name__ == "__main__":
    main()
