#!/usr/bin/env python3
"""The serve endpoint's HTTP layer under hostile clients (issue 11, faults 3 and 4), over real sockets:

- slowloris: more slow-header sockets than --max-connections; /ping probes every 0.2 s must all answer 200
  within 2 s (before: 61 of 61 probes failed with 300 such sockets and 256 connection slots);
- a slow head is answered 408 JSON after --header-timeout, a slow body after --body-timeout;
- over --max-connections a generation request gets 503 JSON with Retry-After (before: connection reset),
  /ping is still 200; idle keep-alive connections are closed first to make room;
- every error the HTTP layer itself sends is JSON {"error", "code"}: 400, 404, 405, 408, 413, 414, 431, 501,
  505 (before: 431 and 414 were libmicrohttpd's plain text / HTML);
- 100-continue, chunked request bodies, pipelining and HTTP/1.0 still work;
- a bounded run of bench/load_serve.py: concurrent mixed clients + slowloris + register/unregister races,
  every request answered (no resets), /ping p99 < 2 s (the full-size run is recorded in docs/perf/serve.md).

The server's log is kept under the work directory. Seed printed (random prompts in the load run).
"""
import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "bench"))
from serve_util import Results, Server  # noqa: E402
import load_serve  # noqa: E402

R = Results()


def exchange(port, data, timeout=10.0, read_all=True):
    """Send raw bytes, read until EOF (or timeout); returns (status or None, head text, body bytes, error)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    buf = b""
    err = None
    try:
        s.sendall(data)
        while True:
            d = s.recv(65536)
            if not d:
                break
            buf += d
            if not read_all and b"\r\n\r\n" in buf:
                break
    except OSError as e:
        err = e
    finally:
        s.close()
    st = int(buf[9:12]) if buf.startswith(b"HTTP/1.") and len(buf) >= 12 else None
    sep = buf.find(b"\r\n\r\n")
    head = buf[:sep].decode("latin-1") if sep >= 0 else buf.decode("latin-1")
    body = buf[sep + 4:] if sep >= 0 else b""
    return st, head, body, err


def json_error_ok(status, body, want):
    try:
        j = json.loads(body.decode())
    except (ValueError, UnicodeDecodeError):
        return False
    return status == want and j.get("code") == want and isinstance(j.get("error"), str) and j["error"]


def ping(port, timeout=5.0):
    t0 = time.time()
    st, _, _, _ = exchange(port, b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout)
    return st, time.time() - t0


def gen_req(n=4, conn="close"):
    b = json.dumps({"inputs": "hello world", "parameters": {"max_new_tokens": n}}).encode()
    return (f"POST /invocations HTTP/1.1\r\nHost: x\r\nConnection: {conn}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(b)}\r\n\r\n").encode() + b


def test_errors_are_json(port):
    R.set_group("errors from the HTTP layer are JSON")
    cases = [
        ("431: 70 KB of headers", b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
        ("431: 101 header fields", b"GET /ping HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", 431),
        ("414: 10 KB URL", b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        ("400: garbage request line", b"\x16\x03\x01garbage\r\n\r\n", 400),
        ("400: bad percent escape", b"GET /ping%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("400: NUL in path", b"GET /a%00b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("400: obsolete line folding", b"GET /ping HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        ("400: two Content-Lengths", b"POST /invocations HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
        ("400: Content-Length and chunked", b"POST /invocations HTTP/1.1\r\nContent-Length: 1\r\n"
                                            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("400: bad chunk size", b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        ("501: gzip transfer coding", b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        ("505: HTTP/2.0", b"GET /ping HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        ("404: no route", b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
        ("405: wrong method", b"PUT /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", 405),
        ("413: Content-Length over 6 MB", b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 7000000\r\n\r\n", 413),
    ]
    for name, data, want in cases:
        st, head, body, err = exchange(port, data)
        R.check(name, json_error_ok(st, body, want) and "application/json" in head.lower(),
                f"status {st} err {err!r} head {head[:200]!r} body {body[:200]!r}")
    st, head, _, _ = exchange(port, b"PUT /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    R.check("405 names the allowed methods", "allow: get" in head.lower(), head[:300])


def test_protocol_basics(port):
    R.set_group("HTTP/1.1 basics on the new server")
    body = json.dumps({"inputs": "hello", "parameters": {"max_new_tokens": 3}}).encode()
    # Expect: 100-continue (curl sends it for bodies over 1 KiB): the interim response, then the answer
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall((f"POST /invocations HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode())
    first = s.recv(4096)
    s.sendall(body)
    rest = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        rest += d
    s.close()
    allb = first + rest
    R.check("100 Continue before the body, then 200", first.startswith(b"HTTP/1.1 100") and b"HTTP/1.1 200" in allb,
            repr(allb[:200]))
    # chunked request body
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
    st, _, b, _ = exchange(port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\nX-Trailer: 1\r\n\r\n")
    R.check("chunked request body with a trailer: 200", st == 200 and b"generated_text" in b, f"{st} {b[:200]!r}")
    # pipelining: two requests in one write, both answered in order on one connection
    st, head, b, _ = exchange(port, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n" + gen_req(2))
    R.check("pipelined ping + generate: both answered", st == 200 and b"HTTP/1.1 200" in b and b"generated_text" in b,
            repr(b[:300]))
    # HTTP/1.0 without keep-alive: answered and closed
    st, head, b, _ = exchange(port, b"GET /ping HTTP/1.0\r\n\r\n")
    R.check("HTTP/1.0 ping: 200 and Connection: close", st == 200 and "connection: close" in head.lower(), head)
    # absolute-form target
    st, _, _, _ = exchange(port, b"GET http://127.0.0.1/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    R.check("absolute-form request target", st == 200, str(st))
    # HEAD: no body, Content-Length of the GET body
    st, head, b, _ = exchange(port, b"HEAD /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    R.check("HEAD /ping: 200, no body", st == 200 and b == b"" and "content-length:" in head.lower(), f"{head} {b!r}")
    # streamed generate over HTTP/1.0: no chunked coding, ends at close
    sb = json.dumps({"inputs": "hello", "parameters": {"max_new_tokens": 3}, "stream": True}).encode()
    st, head, b, _ = exchange(port, b"POST /invocations HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(sb), sb))
    R.check("HTTP/1.0 stream: raw lines, no chunked coding", st == 200 and "chunked" not in head.lower() and
            b.count(b"\n") >= 3, f"{head} {b[:200]!r}")


def test_slow_clients(binary, model, workdir):
    R.set_group("slowloris and deadlines (--max-connections 32, --header-timeout 3, --body-timeout 3)")
    srv = Server(binary, ["--model", model, "--max-connections", "32", "--header-timeout", "3", "--body-timeout", "3"],
                 workdir, "slow")
    socks = []
    try:
        port = srv.port
        # 96 slow-header sockets: three times the connection limit, inside the overflow reserve (256)
        for _ in range(96):
            sk = socket.create_connection(("127.0.0.1", port), timeout=10)
            sk.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
            socks.append(sk)
        lat, codes = [], []
        t_end = time.time() + 2.5
        while time.time() < t_end:
            st, dt = ping(port)
            codes.append(st)
            lat.append(dt)
            for sk in socks:  # one more header byte each, as slowloris does
                try:
                    sk.send(b"X")
                except OSError:
                    pass
            time.sleep(0.2)
        R.check("96 slowloris sockets (limit 32): every /ping 200", all(c == 200 for c in codes), str(codes))
        R.check("96 slowloris sockets: every /ping within 2 s", max(lat) < 2.0, f"max {max(lat):.2f} s")
        # a generation request over the limit: 503 JSON with Retry-After, not a reset
        st, head, b, err = exchange(port, gen_req())
        R.check("over --max-connections: generate -> 503 JSON + Retry-After",
                json_error_ok(st, b, 503) and "retry-after:" in head.lower() and b"connection limit" in b,
                f"{st} {err!r} {head[:200]!r} {b[:200]!r}")
        # the slow heads are cut off with 408 JSON after the header timeout (3 s)
        time.sleep(2.0)
        got408 = 0
        for sk in socks:
            sk.settimeout(5)
            data = b""
            try:
                while True:
                    d = sk.recv(4096)
                    if not d:
                        break
                    data += d
            except OSError:
                pass
            if data.startswith(b"HTTP/1.1 408") and b'"code":408' in data:
                got408 += 1
        R.check("slow heads answered 408 JSON after --header-timeout", got408 == len(socks), f"{got408}/{len(socks)}")
        for sk in socks:
            sk.close()
        socks = []
        # after they are gone, generation is served again
        st, _, b, _ = exchange(port, gen_req(), timeout=30)
        R.check("after the slow clients: generate 200", st == 200 and b"generated_text" in b, f"{st} {b[:200]!r}")
        # slow body: the head arrives, the body never completes -> 408 after --body-timeout
        t0 = time.time()
        st, _, b, _ = exchange(port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"in",
                               timeout=15)
        dt = time.time() - t0
        R.check("a body that never completes: 408 JSON after ~3 s", json_error_ok(st, b, 408) and 2.5 < dt < 8,
                f"{st} {dt:.1f} s {b[:200]!r}")
        # idle keep-alive connections do not keep new clients out: 40 idle ones, then a request is served
        idle = []
        for _ in range(40):
            sk = socket.create_connection(("127.0.0.1", port), timeout=10)
            sk.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            sk.recv(4096)
            idle.append(sk)
        st, _, b, _ = exchange(port, gen_req(), timeout=30)
        R.check("40 idle keep-alives (limit 32): generate still 200 (idle ones evicted)", st == 200, f"{st} {b[:200]!r}")
        for sk in idle:
            sk.close()
        R.check("server alive", srv.alive())
    finally:
        for sk in socks:
            sk.close()
        srv.stop()


def test_load(binary, workdir, seed):
    R.set_group("bounded load: bench/load_serve.py (300 clients x 2 waves, 100 slowloris, limit 200)")
    ns = argparse.Namespace(binary=binary, model=None, adapter_dir=None, url=None, pid=None, adapter=None,
                            race_src=None, clients=300, waves=2, slowloris=100, duration=120.0, timeout=120.0,
                            max_connections=200, header_timeout=5, max_queue=64, seed=seed, keep=False, scale=2, layers=2)
    import io
    import contextlib
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = load_serve.run(ns)
    text = out.getvalue()
    print(text, end="")
    line = text.strip().splitlines()[-1] if text.strip() else "{}"
    try:
        summ = json.loads(line)
    except ValueError:
        summ = {}
    R.check("load run passes (every request answered, /ping p99 < 2 s, no resets)", rc == 0,
            json.dumps({k: summ.get(k) for k in ("bad", "bad_examples", "hung_clients", "ping", "alive")}))
    codes = {}
    for kind, d in summ.get("by_kind", {}).items():
        for k, v in d.items():
            codes[k] = codes.get(k, 0) + v
    kinds = set(summ.get("by_kind", {}))
    want = {"gen", "gen_stream", "chat", "chat_stream", "list", "models", "metrics", "adapter_hdr", "disconnect",
            "slow_body", "race_adapter", "ping", "register", "unregister", "slowloris"}
    # under load (ASan, a busy machine) many answers are 429/503 by design; the mix must still have run
    R.check("load run: every kind of client ran, >= 100 answered 200", want <= kinds and codes.get("200", 0) >= 100,
            f"missing {sorted(want - kinds)}; {codes}")
    if summ.get("rss_kib_before") and summ.get("rss_kib_after"):
        R.note(f"RSS {summ['rss_kib_before']} KiB before, {summ['rss_kib_after']} KiB after")


def test_readme_table():
    """Every status the serve sources can send (>= 400) has a row in README's error table."""
    import re
    R.set_group("README error table lists every status the server sends")
    pats = [r"reply_error\(resp, (\d{3})", r"set_http\([a-z_]+, (\d{3})\)", r"respond_error\(s, c, (\d{3})",
            r"fail\(status, (\d{3})", r"status = (\d{3})", r"return (\d{3});", r"\*hs = (\d{3})", r"\bhs = (\d{3})"]
    sent = set()
    sdir = os.path.join(REPO, "serve")
    for f in sorted(os.listdir(sdir)):
        if f.endswith(".c"):
            text = open(os.path.join(sdir, f)).read()
            for p in pats:
                sent |= {int(x) for x in re.findall(p, text) if int(x) >= 400}
    readme = open(os.path.join(REPO, "README.md")).read()
    rows = {int(x) for x in re.findall(r"^\| (\d{3}) \|", readme, re.M)}
    R.check("statuses found in serve/*.c", len(sent) >= 10, str(sorted(sent)))
    R.check("each one is in README's table", sent <= rows, f"missing {sorted(sent - rows)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    seed = int(os.environ.get("LF_TEST_SEED", random.randrange(1 << 30)))
    print(f"test_serve_http: seed {seed} (LF_TEST_SEED to reproduce)", flush=True)
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    test_readme_table()
    model = load_serve.make_model(a.bin, a.workdir, os.path.join(REPO, "examples", "tokenizer"))
    srv = Server(a.bin, ["--model", model], a.workdir, "main")
    try:
        test_errors_are_json(srv.port)
        test_protocol_basics(srv.port)
        R.check("main server alive after the bad requests", srv.alive())
    finally:
        srv.stop()
    test_slow_clients(a.bin, model, a.workdir)
    test_load(a.bin, a.workdir, seed)
    npass = sum(v[0] for v in R.groups.values())
    nfail = sum(v[1] for v in R.groups.values())
    for f in R.failures:
        print("FAILED", f)
    print(f"{npass} passed, {nfail} failed")
    sys.exit(1 if nfail else 0)


if __name__ == "__main__":
    main()
