"""serve_util.py - helpers for test_serve.py: case bookkeeping, starting/stopping `loraforge serve` on a free
loopback port, raw HTTP (http.client / sockets) for bodies `requests` would not send, stream parsers
(JSON lines, SSE) and a Prometheus text-format parser.

Every server started here is registered and killed at exit (atexit + the caller's try/finally).
"""
import atexit
import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import threading
import time

import requests

# ---------------------------------------------------------------- cases


class Results:
    """Cases grouped by name. check() records one case; thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.groups = {}  # name -> [passed, failed]
        self.order = []
        self.failures = []
        self.group = "setup"
        self.notes = []

    def set_group(self, g):
        self.group = g
        print(f"== {g}", flush=True)

    def check(self, name, ok, detail="", group=None):
        g = group or self.group
        with self.lock:
            if g not in self.groups:
                self.groups[g] = [0, 0]
                self.order.append(g)
            self.groups[g][0 if ok else 1] += 1
            if not ok:
                self.failures.append(f"[{g}] {name}: {detail}")
        d = f": {detail}" if (detail and not ok) else ""
        print(f"  {'PASS' if ok else 'FAIL'} {name}{d}", flush=True)
        return bool(ok)

    def eq(self, name, got, want, group=None):
        ok = got == want
        return self.check(name, ok, "" if ok else f"got {short(got)} want {short(want)}", group)

    def note(self, msg):
        with self.lock:
            self.notes.append(msg)
        print(f"  NOTE {msg}", flush=True)

    def summary(self):
        tp = tf = 0
        print("\n---- cases per group ----")
        for g in self.order:
            p, f = self.groups[g]
            tp += p
            tf += f
            print(f"  {g:<14} {p + f:4d} cases  {p:4d} passed  {f:3d} failed")
        if self.notes:
            print("---- notes ----")
            for n in self.notes:
                print("  " + n)
        if self.failures:
            print("---- failures ----")
            for f in self.failures:
                print("  " + f)
        print(f"total {tp + tf} cases: {tp} passed, {tf} failed")
        return tf


def short(x, n=300):
    s = repr(x)
    return s if len(s) <= n else s[:n] + f"...({len(s)} chars)"


# ---------------------------------------------------------------- servers

_LIVE = []


def _kill_all():
    for p in list(_LIVE):
        if p.poll() is None:
            try:
                p.kill()
                p.wait(5)
            except Exception:
                pass


atexit.register(_kill_all)


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class ServerStartError(Exception):
    pass


class Server:
    """`loraforge serve` on 127.0.0.1:<free port>. Use as a context manager or call stop()."""

    def __init__(self, binary, args, logdir, name, env=None, port_from_env=False, ready_timeout=60):
        self.binary, self.args, self.name = binary, list(args), name
        self.log_path = os.path.join(logdir, f"server-{name}.log")
        self.proc = None
        self.port = None
        self.ping_codes = []  # statuses /ping gave before the first 200
        last = ""
        for attempt in range(4):
            port = free_port()
            cmd = [binary, "serve", "--host", "127.0.0.1"] + self.args
            e = dict(os.environ)
            if env:
                e.update(env)
            if port_from_env:
                e["SAGEMAKER_BIND_TO_PORT"] = str(port)
            else:
                cmd += ["--port", str(port)]
            self.cmd = cmd
            log = open(self.log_path, "ab")
            log.write(f"\n=== attempt {attempt}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=e)
            log.close()
            _LIVE.append(self.proc)
            self.port = port
            self.base = f"http://127.0.0.1:{port}"
            st = self._wait_ready(ready_timeout)
            if st == "ready":
                return
            last = self.log_tail()
            self.kill()
            if st == "died" and re.search(r"(?i)address already in use|EADDRINUSE|bind", last):
                continue  # port collision: another port
            break
        raise ServerStartError(f"server {name} did not become ready ({' '.join(self.cmd)}):\n{last}")

    def _wait_ready(self, timeout):
        """Poll /ping on raw sockets every ~2 ms (fast enough to see the 503 of a model still loading)."""
        t_end = time.time() + timeout
        while time.time() < t_end:
            if self.proc.poll() is not None:
                return "died"
            st = None
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.sendall(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    head = b""
                    while b"\r\n" not in head:
                        d = s.recv(256)
                        if not d:
                            break
                        head += d
                    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
                    st = int(m.group(1)) if m else None
            except OSError:
                pass
            if st == 200:
                return "ready"
            if st is not None:
                self.ping_codes.append(st)
            time.sleep(0.002)
        return "timeout"

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def alive(self):
        if self.proc.poll() is not None:
            return False
        try:
            return requests.get(self.base + "/ping", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def terminate(self, timeout=25):
        """SIGTERM; returns (exit code or None on timeout, seconds)."""
        t0 = time.time()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        return rc, time.time() - t0

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def stop(self):
        if self.proc and self.proc.poll() is None:
            rc, _ = self.terminate(25)
            if rc is None:
                self.kill()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()

    # ---- requests helpers
    def url(self, path):
        return self.base + path

    def post(self, path, obj=None, headers=None, timeout=60, **kw):
        return requests.post(self.base + path, json=obj, headers=headers, timeout=timeout, **kw)

    def get(self, path, timeout=30, **kw):
        return requests.get(self.base + path, timeout=timeout, **kw)

    def delete(self, path, timeout=60, **kw):
        return requests.delete(self.base + path, timeout=timeout, **kw)

    def raw(self, method, path, body=b"", headers=None, timeout=30):
        """http.client request with raw bytes; returns (status, headers dict lower-cased, body bytes)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            h = {"Content-Type": "application/json"}
            h.update(headers or {})
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def metrics(self):
        r = self.get("/metrics")
        return r, parse_prometheus(r.text)


def raw_exchange(port, request_bytes, body_iter=None, timeout=20, expect_continue=False):
    """Send request_bytes (headers [+ body]) on a raw socket, then the chunks of body_iter while a reader
    thread collects the answer. Returns (status or None, raw response bytes, error string or "")."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    got = bytearray()
    err = []

    def reader():
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                got.extend(d)
                if b"\r\n\r\n" in got and _response_complete(bytes(got)):
                    break
        except OSError as e:
            err.append(f"recv: {e!r}")

    t = threading.Thread(target=reader, daemon=True)
    try:
        s.sendall(request_bytes)
        t.start()
        if body_iter is not None:
            if expect_continue:  # wait for a final status or 100 Continue before sending the body
                t_end = time.time() + 5
                while time.time() < t_end and b"\r\n\r\n" not in got:
                    time.sleep(0.01)
                if got.startswith(b"HTTP/1.1 100") or not got:
                    del got[:]
                else:
                    body_iter = None
            if body_iter is not None:
                try:
                    for chunk in body_iter:
                        s.sendall(chunk)
                except OSError as e:
                    err.append(f"send: {e!r}")
        t.join(timeout)
    finally:
        try:
            s.close()
        except OSError:
            pass
    m = re.match(rb"HTTP/1\.[01] (\d{3})", bytes(got))
    return (int(m.group(1)) if m else None), bytes(got), "; ".join(err)


def _response_complete(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 100"):
        return False
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    if m:
        return len(body) >= int(m.group(1))
    if re.search(rb"(?i)\r\ntransfer-encoding:\s*chunked", head):
        return body.endswith(b"0\r\n\r\n")
    return False


def error_body_ok(resp_text, status):
    """The error body contract: JSON object {"error": str, "code": status}."""
    try:
        j = json.loads(resp_text)
    except ValueError:
        return False, f"not JSON: {resp_text[:200]!r}"
    if not isinstance(j, dict) or not isinstance(j.get("error"), str) or j.get("code") != status:
        return False, f"bad error body {resp_text[:300]!r}"
    return True, j["error"]


# ---------------------------------------------------------------- streams


def read_jsonlines(resp):
    """Lines of a streamed requests response; returns (objects, error string or "")."""
    objs = []
    for line in resp.iter_lines(decode_unicode=False):
        if not line.strip():
            return objs, f"empty line in jsonlines after {len(objs)} objects"
        try:
            objs.append(json.loads(line))
        except ValueError:
            return objs, f"line {len(objs)} is not JSON: {line[:200]!r}"
    return objs, ""


def read_sse(resp):
    """Events of an SSE response: list of data payload strings (parsed later). Returns (payloads, error)."""
    payloads = []
    buf = []
    for line in resp.iter_lines(decode_unicode=False):
        line = line.decode("utf-8", "replace")
        if line == "":
            if buf:
                payloads.append("\n".join(buf))
                buf = []
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        if line.startswith("data:"):
            d = line[5:]
            buf.append(d[1:] if d.startswith(" ") else d)
        elif line.startswith(("event:", "id:", "retry:")):
            continue
        else:
            return payloads, f"not an SSE line: {line[:200]!r}"
    if buf:
        payloads.append("\n".join(buf))
    return payloads, ""


# ---------------------------------------------------------------- prometheus

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')


class Prom:
    def __init__(self):
        self.types = {}     # family -> type
        self.samples = []   # (name, labels dict, value)
        self.errors = []

    def value(self, name, **labels):
        """Sum of samples of name whose labels include the given ones (None when no sample)."""
        tot = None
        for n, l, v in self.samples:
            if n == name and all(l.get(k) == str(x) for k, x in labels.items()):
                tot = (tot or 0.0) + v
        return tot

    def names(self):
        return {n for n, _, _ in self.samples}


def parse_prometheus(text):
    """Text exposition format 0.0.4: returns Prom with errors listing every rule broken."""
    p = Prom()
    helped = set()
    seen_family_samples = set()
    for i, line in enumerate(text.split("\n")):
        if line == "":
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                fam = parts[2]
                if not _METRIC_NAME.match(fam):
                    p.errors.append(f"line {i}: bad name {fam!r}")
                if parts[1] == "TYPE":
                    t = parts[3].strip() if len(parts) > 3 else ""
                    if t not in ("counter", "gauge", "histogram", "summary", "untyped"):
                        p.errors.append(f"line {i}: bad type {t!r}")
                    if fam in p.types:
                        p.errors.append(f"line {i}: second TYPE for {fam}")
                    if fam in seen_family_samples:
                        p.errors.append(f"line {i}: TYPE for {fam} after its samples")
                    p.types[fam] = t
                else:
                    helped.add(fam)
            continue
        m = _SAMPLE.match(line)
        if not m:
            p.errors.append(f"line {i}: not a sample: {line[:120]!r}")
            continue
        name, _, lab, val = m.group(1), m.group(2), m.group(3), m.group(4)
        labels = {}
        if lab:
            rest = lab
            while rest.strip():
                lm = _LABEL.match(rest)
                if not lm:
                    p.errors.append(f"line {i}: bad labels {lab!r}")
                    break
                labels[lm.group(1)] = lm.group(2)
                rest = rest[lm.end():]
        try:
            v = float(val)
        except ValueError:
            p.errors.append(f"line {i}: bad value {val!r}")
            continue
        fam = re.sub(r"_(bucket|sum|count|total|created)$", "", name)
        for f in (name, fam):
            seen_family_samples.add(f)
        p.samples.append((name, labels, v))
    # histogram rules: cumulative buckets, +Inf bucket == _count
    for fam, t in p.types.items():
        if t != "histogram":
            continue
        series = {}
        for n, l, v in p.samples:
            if n == fam + "_bucket":
                key = tuple(sorted((k, x) for k, x in l.items() if k != "le"))
                series.setdefault(key, []).append((l.get("le"), v))
        if not series:
            p.errors.append(f"histogram {fam} has no buckets")
        for key, bs in series.items():
            les = [(math.inf if le == "+Inf" else float(le), v) for le, v in bs]
            if not les or les[-1][0] != math.inf:
                p.errors.append(f"histogram {fam}{dict(key)}: last bucket is not +Inf")
            for (a, va), (b, vb) in zip(les, les[1:]):
                if not (b > a and vb >= va):
                    p.errors.append(f"histogram {fam}{dict(key)}: buckets not increasing/cumulative at le={b}")
            cnt = [v for n, l, v in p.samples if n == fam + "_count"
                   and tuple(sorted(l.items())) == key]
            if not cnt or (les and cnt[0] != les[-1][1]):
                p.errors.append(f"histogram {fam}{dict(key)}: _count {cnt} != +Inf bucket")
    return p
