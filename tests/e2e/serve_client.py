"""serve_client.py - request builders and response readers shared by the groups of test_serve.py.

Gen: one generate request's outcome (status, generated ids without a trailing EOS, text, finish reason,
log-probs of every reported token, and the problems seen while reading it)."""
import json

import requests

from serve_util import read_jsonlines, read_sse


def params(n, **kw):
    p = {"max_new_tokens": n, "details": True, "do_sample": False}
    p.update(kw)
    return p


def body(prompt, adapter=None, n=16, stream=False, **kw):
    b = {"inputs": prompt, "parameters": params(n, **kw)}
    if adapter is not None:
        b["adapters"] = adapter
    if stream:
        b["stream"] = True
    return b


class Gen:
    def __init__(self):
        self.status = None
        self.ids = None        # generated ids, trailing EOS removed
        self.all_ids = None    # as reported (EOS kept)
        self.text = None
        self.finish = None
        self.lps = None        # log_prob of every reported token (EOS included)
        self.problems = []     # stream/shape problems
        self.raw = None
        self.lines = None
        self.content_type = None
        self.headers = {}

    def key(self):
        """(ids tuple, text, finish reason): what two equal generations share."""
        return (tuple(self.ids) if self.ids is not None else None, self.text, self.finish)

    def __repr__(self):
        return (f"Gen(status={self.status}, ids={self.ids}, text={self.text!r}, finish={self.finish}, "
                f"problems={self.problems})")


def from_result(g, obj, eos):
    if not isinstance(obj, dict):
        g.problems.append(f"result is not an object: {str(obj)[:200]}")
        return g
    g.text = obj.get("generated_text")
    d = obj.get("details")
    if isinstance(d, dict):
        g.finish = d.get("finish_reason")
        toks = d.get("tokens")
        if isinstance(toks, list):
            g.all_ids = [t.get("id") for t in toks]
            g.lps = [t.get("log_prob", t.get("logprob")) for t in toks]
            ids = list(g.all_ids)
            if ids and ids[-1] in eos:
                ids = ids[:-1]
            g.ids = ids
            if d.get("generated_tokens") != len(toks):
                g.problems.append(f"details.generated_tokens {d.get('generated_tokens')} != {len(toks)} tokens")
    return g


def gen(srv, b, eos, headers=None, path="/invocations", accept=None, timeout=60):
    """POST b; parse non-stream or stream (JSON lines or SSE chosen by the response Content-Type)."""
    g = Gen()
    h = dict(headers or {})
    if accept:
        h["Accept"] = accept
    stream = bool(b.get("stream")) if isinstance(b, dict) else False
    try:
        r = requests.post(srv.url(path), json=b, headers=h, timeout=timeout, stream=stream)
    except requests.RequestException as e:
        g.problems.append(f"request failed: {e!r}")
        return g
    g.status = r.status_code
    g.content_type = r.headers.get("Content-Type", "")
    g.headers = r.headers
    if r.status_code != 200 or not stream:
        g.raw = r.text
        if r.status_code == 200:
            try:
                obj = r.json()
            except ValueError:
                g.problems.append(f"non-JSON body {r.text[:200]!r}")
                return g
            if isinstance(obj, list):
                if len(obj) != 1:
                    g.problems.append(f"list of {len(obj)} for one input")
                    return g
                g.problems.append("answered a list for a single string input")
                obj = obj[0]
            from_result(g, obj, eos)
        return g
    return read_stream(g, r, eos)


def read_stream(g, r, eos):
    ct = r.headers.get("Content-Type", "")
    if r.headers.get("Transfer-Encoding", "").lower() != "chunked":
        g.problems.append(f"stream not chunked (Transfer-Encoding {r.headers.get('Transfer-Encoding')!r})")
    if ct.startswith("text/event-stream"):
        payloads, err = read_sse(r)
    elif ct.startswith("application/jsonlines"):
        payloads, err = read_jsonlines(r)
        payloads = [json.dumps(p) for p in payloads]
    else:
        g.problems.append(f"stream Content-Type {ct!r}")
        return g
    if err:
        g.problems.append(err)
    objs = []
    for p in payloads:
        try:
            objs.append(json.loads(p))
        except ValueError:
            g.problems.append(f"event is not JSON: {p[:200]!r}")
    g.lines = objs
    if not objs:
        g.problems.append("empty stream")
        return g
    tok_ids = []
    tok_lps = []
    for i, o in enumerate(objs):
        t = o.get("token") if isinstance(o, dict) else None
        if not isinstance(t, dict) or not isinstance(t.get("id"), int) or not isinstance(t.get("text"), str) \
                or not isinstance(t.get("log_prob", t.get("logprob")), (int, float)):
            g.problems.append(f"event {i} has no token object {{id, text, log_prob}}: {str(o)[:200]}")
            continue
        if t["id"] >= 0:
            tok_ids.append(t["id"])
            tok_lps.append(t.get("log_prob", t.get("logprob")))
        if i < len(objs) - 1 and o.get("generated_text") is not None:
            g.problems.append(f"event {i} (not last) carries generated_text")
    last = objs[-1]
    if not isinstance(last.get("generated_text"), str) or not isinstance(last.get("details"), dict):
        g.problems.append(f"last event lacks generated_text/details: {str(last)[:300]}")
        return g
    from_result(g, last, eos)
    ids = list(tok_ids)
    if ids and ids[-1] in eos:
        ids = ids[:-1]
    if g.ids is None:  # the final details carry no token list: the token events are the record
        g.ids = ids
        g.all_ids = tok_ids
        g.lps = tok_lps
        if last["details"].get("generated_tokens") != len(tok_ids):
            g.problems.append(f"details.generated_tokens {last['details'].get('generated_tokens')} != "
                              f"{len(tok_ids)} token events")
    elif ids != g.ids:
        g.problems.append(f"token events ids {ids} != final details ids {g.ids}")
    return g
