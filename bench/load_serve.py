#!/usr/bin/env python3
"""load_serve.py - hostile load against `loraforge serve`: N concurrent mixed clients (whole and streamed
generate, chat, lists, adapter headers, disconnects after the first chunk, bodies sent a byte at a time),
slowloris sockets (one header byte per second), adapter register/unregister races, and a /ping prober
throughout. Standard library only; traffic goes to 127.0.0.1 only, every loop is bounded in count and time.

Pass criteria (exit 1 otherwise; the JSON summary says which failed):
  - every request is answered with an allowed status (200, 429, 503; 404/409 for the racing adapter, 408
    for requests that were meant to be too slow); no connection reset, no timeout without an answer;
  - /ping p99 under 2 s and no failed probe while the load runs;
  - the server is alive at the end; RSS before/after is reported.

Usage:
  bench/load_serve.py --binary build/loraforge [--clients 1000 --slowloris 300 --duration 20 ...]
     (makes a tiny model with `loraforge make-tiny` and three random PEFT adapters written by hand, plus one
      that a racing thread registers and unregisters while requests name it)
  bench/load_serve.py --url http://127.0.0.1:8080 --pid PID [...]   (an existing server)
Prints one JSON line (the summary) last.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ALLOWED = {200, 429, 503}


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_kind = {}  # kind -> {status or error name: count}
        self.bad = []      # (kind, outcome, detail)

    def add(self, kind, outcome, ok, detail=""):
        with self.lock:
            d = self.by_kind.setdefault(kind, {})
            d[str(outcome)] = d.get(str(outcome), 0) + 1
            if not ok and len(self.bad) < 50:
                self.bad.append((kind, str(outcome), detail[:300]))
            if not ok:
                self.nbad = getattr(self, "nbad", 0) + 1


def raw_request(port, method, path, body=b"", headers=None, timeout=60.0, byte_delay=0.0, stop_after_first=False):
    """One request on a fresh connection. Returns (status, body bytes) or raises OSError subclasses.
    byte_delay: send the body one byte at a time with this pause. stop_after_first: return after the first
    body bytes of the response arrive (then close: a client that disconnects mid-stream)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        h = {"Host": "127.0.0.1", "Connection": "close", "Content-Type": "application/json"}
        h.update(headers or {})
        if body or method == "POST":
            h["Content-Length"] = str(len(body))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        s.sendall(head.encode())
        if byte_delay > 0:
            for i in range(len(body)):
                s.sendall(body[i:i + 1])
                time.sleep(byte_delay)
        elif body:
            s.sendall(body)
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
            if stop_after_first and b"\r\n\r\n" in data and len(data) > data.index(b"\r\n\r\n") + 4:
                break
        if not data.startswith(b"HTTP/1."):
            raise ConnectionError(f"no HTTP status line (got {len(data)} bytes)")
        status = int(data[9:12])
        sep = data.find(b"\r\n\r\n")
        return status, data[sep + 4:] if sep >= 0 else b""
    finally:
        s.close()


def gen_body(prompt, n=8, stream=False, **params):
    p = {"max_new_tokens": n}
    p.update(params)
    return json.dumps({"inputs": prompt, "parameters": p, "stream": stream}).encode()


def chat_body(text, n=8, stream=False):
    return json.dumps({"messages": [{"role": "user", "content": text}], "max_tokens": n, "stream": stream}).encode()


class Live:
    """Clients inside a request right now, and the most seen at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = self.peak = 0

    def enter(self):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self):
        with self.lock:
            self.now -= 1


def client(port, i, adapters, race_name, stats, rnd, deadline, timeout, barrier=None, live=None, scale=1):
    """One client of the mix; kind chosen from i so that every run covers every kind. barrier: all clients
    of a wave send at once; scale multiplies the generated lengths (longer requests, more overlap)."""
    if barrier is not None:
        try:
            barrier.wait(60)
        except threading.BrokenBarrierError:
            pass
    kinds = ["gen", "gen_stream", "chat", "chat_stream", "list", "models", "metrics", "adapter_hdr",
             "disconnect", "slow_body", "race_adapter", "ping"]
    kind = kinds[i % len(kinds)]
    prompt = "hello world " * rnd.randint(1, 4)
    allowed = set(ALLOWED)
    kw = {}
    if kind == "gen":
        args = ("POST", "/invocations", gen_body(prompt, rnd.randint(1, 12) * scale))
    elif kind == "gen_stream":
        args = ("POST", "/invocations", gen_body(prompt, 8 * scale, True))
    elif kind == "chat":
        args = ("POST", "/v1/chat/completions", chat_body(prompt, 8 * scale))
    elif kind == "chat_stream":
        args = ("POST", "/v1/chat/completions", chat_body(prompt, 8 * scale, True))
    elif kind == "list":
        args = ("GET", "/adapters", b"")
    elif kind == "models":
        args = ("GET", "/models", b"")
    elif kind == "metrics":
        args = ("GET", "/metrics", b"")
    elif kind == "ping":
        args = ("GET", "/ping", b"")
    elif kind == "adapter_hdr":
        name = adapters[i % len(adapters)] if adapters else ""
        kw["headers"] = {"X-Amzn-SageMaker-Adapter-Identifier": name} if name else {}
        args = ("POST", "/invocations", gen_body(prompt, 6 * scale))
    elif kind == "disconnect":
        kw["stop_after_first"] = True
        args = ("POST", "/invocations", gen_body(prompt, 32 * scale, True))
    elif kind == "slow_body":
        kw["byte_delay"] = 0.01
        args = ("POST", "/invocations", gen_body("hi", 2))
    else:  # race_adapter: the adapter being registered/unregistered right now
        kw["headers"] = {"X-Amzn-SageMaker-Adapter-Identifier": race_name}
        allowed |= {404}
        args = ("POST", "/invocations", gen_body(prompt, 4))
    t0 = time.time()
    if live:
        live.enter()
    try:
        st, _ = raw_request(port, *args, timeout=timeout, **kw)
        stats.add(kind, st, st in allowed, f"status {st} after {time.time() - t0:.2f} s")
    except (OSError, ValueError) as e:
        stats.add(kind, type(e).__name__, False, f"{e!r} after {time.time() - t0:.2f} s")
    finally:
        if live:
            live.leave()


def slowloris(port, stop, stats, header_timeout):
    """Sends one header byte per second; the server must cut it off (408 or close) after its header timeout."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError as e:
        stats.add("slowloris", type(e).__name__, False, repr(e))
        return
    payload = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nX-Pad: " + b"a" * 10000
    t0 = time.time()
    outcome = "held"
    try:
        s.settimeout(1.0)
        for b in payload:
            if stop.is_set():
                break
            try:
                s.sendall(bytes([b]))
            except OSError:
                outcome = "closed"
                break
            try:
                d = s.recv(4096)
                if d:
                    outcome = int(d[9:12]) if d.startswith(b"HTTP/1.") else "garbage"
                else:
                    outcome = "closed"
                break
            except socket.timeout:
                pass
            except OSError:
                outcome = "closed"
                break
    finally:
        s.close()
    # cut off (408 / closed) or still held when the run ended are both fine; a reset-free 408 is the norm
    waited = time.time() - t0
    ok = outcome in (408, "closed", "held")
    if outcome == "held" and waited > header_timeout + 5:
        ok = False
    stats.add("slowloris", outcome, ok, f"after {waited:.1f} s")


def pinger(port, stop, lat, fails):
    while not stop.is_set():
        t0 = time.time()
        try:
            st, _ = raw_request(port, "GET", "/ping", timeout=5)
            dt = time.time() - t0
            lat.append(dt)
            if st != 200:
                fails.append(f"status {st}")
        except OSError as e:
            lat.append(time.time() - t0)
            fails.append(repr(e))
        time.sleep(0.1)


def racer(port, stop, src, name, stats, rounds):
    for _ in range(rounds):
        if stop.is_set():
            break
        try:
            st, _ = raw_request(port, "POST", "/adapters", json.dumps({"name": name, "src": src}).encode(), timeout=30)
            stats.add("register", st, st in (200, 201, 409, 429, 503))
            st, _ = raw_request(port, "DELETE", f"/adapters/{name}", timeout=60)
            stats.add("unregister", st, st in (200, 404, 409, 503))
        except OSError as e:
            stats.add("register", type(e).__name__, False, repr(e))
        time.sleep(0.05)


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))]


def write_adapter(out, seed, layers=2, hidden=64, kv=32, r=4):
    """A PEFT LoRA adapter (q_proj, v_proj) for the make-tiny model below, written by hand in the safetensors
    layout (8-byte header length, JSON header, little-endian f32 data) so that no torch is needed."""
    import struct
    rnd = random.Random(seed)
    tensors = {}
    for i in range(layers):
        for mod, out_f in (("q_proj", hidden), ("v_proj", kv)):
            pre = f"base_model.model.model.layers.{i}.self_attn.{mod}"
            tensors[pre + ".lora_A.weight"] = ([r, hidden], [rnd.gauss(0, 0.1) for _ in range(r * hidden)])
            tensors[pre + ".lora_B.weight"] = ([out_f, r], [rnd.gauss(0, 0.1) for _ in range(out_f * r)])
    header, blobs, off = {}, [], 0
    for k in sorted(tensors):
        shape, vals = tensors[k]
        b = struct.pack(f"<{len(vals)}f", *vals)
        header[k] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "adapter_model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
                   "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0, "bias": "none",
                   "fan_in_fan_out": False, "base_model_name_or_path": "tiny"}, f)
    return out


def make_model(binary, work, tokenizer, layers=2):
    model = os.path.join(work, "model")
    subprocess.run([binary, "make-tiny", "--arch", "llama", "--out", model, "--seed", "7", "--hidden", "64",
                    "--layers", str(layers), "--heads", "4", "--kv-heads", "2", "--intermediate", "128",
                    "--tokenizer", tokenizer], check=True, capture_output=True)
    tc = os.path.join(model, "tokenizer_config.json")
    with open(tc) as f:
        cfg = json.load(f)
    cfg["chat_template"] = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                            "{% if add_generation_prompt %}assistant:{% endif %}")
    with open(tc, "w") as f:
        json.dump(cfg, f)
    for i, name in enumerate(("a1", "a2", "a3")):  # preloaded from adapters/<name>/
        write_adapter(os.path.join(model, "adapters", name), 100 + i, layers=layers)
    write_adapter(os.path.join(model, "race"), 200, layers=layers)  # registered/unregistered by the racer
    return model


def run(a):
    work = tempfile.mkdtemp(prefix="lf-load-")
    proc = None
    try:
        adapters = [x for x in (a.adapter or [])]
        if a.url:
            port = int(a.url.rsplit(":", 1)[1].split("/")[0])
            pid = a.pid
        else:
            repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            model = a.model or make_model(a.binary, work, os.path.join(repo, "examples", "tokenizer"), a.layers)
            if not a.model:
                adapters += ["a1", "a2", "a3"]
                a.race_src = a.race_src or os.path.join(model, "race")
            port = free_port()
            cmd = [a.binary, "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port),
                   "--max-connections", str(a.max_connections), "--header-timeout", str(a.header_timeout),
                   "--max-queue", str(a.max_queue)]
            for ad in a.adapter_dir or []:
                name, d = ad.split("=", 1)
                cmd += ["--adapter", ad]
                adapters.append(name)
            log = open(os.path.join(work, "server.log"), "wb")
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            pid = proc.pid
            t_end = time.time() + 60
            while time.time() < t_end:
                try:
                    if raw_request(port, "GET", "/ping", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                if proc.poll() is not None:
                    raise SystemExit(f"server died at start:\n{open(log.name, 'rb').read()[-3000:].decode()}")
                time.sleep(0.05)
        seed = a.seed if a.seed is not None else random.randrange(1 << 30)
        print(f"load_serve: seed {seed}, {a.clients} clients, {a.slowloris} slowloris, port {port}", flush=True)
        rss0 = rss_kib(pid) if pid else None
        stats = Stats()
        stop = threading.Event()
        lat, fails = [], []
        threads = [threading.Thread(target=pinger, args=(port, stop, lat, fails), daemon=True)]
        for _ in range(a.slowloris):
            threads.append(threading.Thread(target=slowloris, args=(port, stop, stats, a.header_timeout), daemon=True))
        race_name = "racer"
        if a.race_src:
            threads.append(threading.Thread(target=racer, args=(port, stop, a.race_src, race_name, stats, 200),
                                            daemon=True))
        for t in threads:
            t.start()
        time.sleep(1.0)  # slowloris sockets are in place
        rnd = random.Random(seed)
        t0 = time.time()
        deadline = t0 + a.duration
        cl = []
        waves = max(1, a.waves)
        live = Live()
        for w in range(waves):
            barrier = threading.Barrier(a.clients)
            batch = [threading.Thread(target=client, args=(port, w * a.clients + i, adapters, race_name, stats,
                                                           random.Random(rnd.random()), deadline, a.timeout,
                                                           barrier, live, a.scale),
                                      daemon=True) for i in range(a.clients)]
            for t in batch:
                t.start()
            cl += batch
            for t in batch:
                t.join(a.timeout + 10)
            if time.time() > deadline:
                break
        wall = time.time() - t0
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(15)
        alive = True
        try:
            alive = raw_request(port, "GET", "/ping", timeout=5)[0] == 200
        except OSError:
            alive = False
        rss1 = rss_kib(pid) if pid else None
        hung = sum(1 for t in cl if t.is_alive())
        summary = {
            "clients": a.clients * waves, "slowloris": a.slowloris, "wall_s": round(wall, 2),
            "by_kind": stats.by_kind, "bad": getattr(stats, "nbad", 0), "bad_examples": stats.bad[:10],
            "hung_clients": hung, "peak_concurrent_clients": live.peak,
            "ping": {"n": len(lat), "p50_s": pct(lat, 50), "p99_s": pct(lat, 99), "max_s": max(lat) if lat else None,
                     "failed": len(fails), "fail_examples": fails[:5]},
            "rss_kib_before": rss0, "rss_kib_after": rss1, "alive": alive, "seed": seed,
        }
        ok = (summary["bad"] == 0 and hung == 0 and not fails and lat and pct(lat, 99) < 2.0 and alive)
        summary["ok"] = bool(ok)
        print(json.dumps(summary), flush=True)
        return 0 if ok else 1
    finally:
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", help="loraforge binary (starts its own server on a tiny model)")
    ap.add_argument("--model", help="model directory for the started server (default: make-tiny)")
    ap.add_argument("--adapter-dir", action="append", help="NAME=DIR preloaded in the started server")
    ap.add_argument("--url", help="an already running server, http://127.0.0.1:PORT")
    ap.add_argument("--pid", type=int, help="its pid (for RSS)")
    ap.add_argument("--adapter", action="append", help="adapter names the running server has loaded")
    ap.add_argument("--race-src", help="adapter directory to register/unregister in a loop (under an allowed root)")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--waves", type=int, default=1, help="rounds of --clients concurrent requests")
    ap.add_argument("--slowloris", type=int, default=300)
    ap.add_argument("--duration", type=float, default=60.0, help="stop starting waves after this many seconds")
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request socket timeout")
    ap.add_argument("--max-connections", type=int, default=1024)
    ap.add_argument("--header-timeout", type=int, default=10)
    ap.add_argument("--max-queue", type=int, default=256)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--scale", type=int, default=1, help="multiply generated lengths (longer, overlapping requests)")
    ap.add_argument("--layers", type=int, default=2, help="layers of the made model (slower steps, more overlap)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    if not a.binary and not a.url:
        ap.error("give --binary (start a server) or --url (use a running one)")
    sys.exit(run(a))


if __name__ == "__main__":
    main()
