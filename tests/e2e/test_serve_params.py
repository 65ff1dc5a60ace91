#!/usr/bin/env python3
"""test_serve_params.py - the generation parameters of issue 11 over real HTTP, on a tiny model served by
`loraforge serve` (same harness as test_serve.py: serve_util / serve_fixtures).

Run: python test_serve_params.py --bin BUILD/loraforge --workdir DIR   (seed: LF_TEST_SEED, default random)

Two servers on the same weights: "main" (the model's own EOS), and "eos" whose generation_config.json names as
EOS a token that main's greedy output emits (so EOS stopping and ignore_eos can be seen on a random model).
  stop_token_ids  greedy stops at an id the model emits (first occurrence k): ids = greedy[:k+1], the text is
                  tokenizer.decode(greedy[:k]) (the id left out, as EOS), finish stop_sequence / "stop"; streamed;
                  on the chat route; an id outside the vocabulary is a 422.
  ignore_eos      on "eos": without it greedy ends at the EOS id (eos_token), with it the run goes to
                  max_new_tokens and equals main's greedy output (ids and text); chat: finish length, usage.
  truncate        truncate: N (truncate_prompt_tokens on chat) gives exactly what the last N prompt tokens sent
                  by hand give, and the reported input length is N.
  penalties       presence/frequency penalties change greedy output, and equal transformers greedy with vLLM's
                  penalty formula as a logits processor (no transformers processor exists; divergence allowed
                  only at a near-tie step); min_p 1 == greedy; min_p / typical_p sampling reproducible per seed.
  refused         watermark, num_beams, best_of, n, top_n_tokens, logit_bias, use_beam_search, unknown keys:
                  422 naming the parameter on /invocations (generate and chat bodies) and /v1/chat/completions;
                  their no-op values are accepted.
"""
import argparse
import json
import os
import random
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
REPO = os.path.dirname(os.path.dirname(HERE))

from serve_util import Results, Server, ServerStartError, error_body_ok  # noqa: E402

R = Results()

try:
    import requests  # noqa: F401
    import torch
    from serve_client import body, gen
    from serve_fixtures import CHAT_TEMPLATE, HIDDEN, make_tiny
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.logits_process import LogitsProcessor, LogitsProcessorList
except Exception as e:  # a missing package is a failure, never a skip
    R.check("import requests/torch/transformers", False, repr(e))
    sys.exit(R.summary() and 1)

N = 24
TIE_TOL = 1e-4
WORDS = ("the quick brown fox jumps over lazy dog river stone light green house market winter song paper "
         "window garden silver morning table ocean forest apple yellow north").split()


class VllmPenalties(LogitsProcessor):
    """vLLM's presence/frequency penalties over the generated ids (the prompt does not count)."""

    def __init__(self, presence, frequency, n_prompt):
        self.p, self.f, self.n = presence, frequency, n_prompt

    def __call__(self, input_ids, scores):
        gen_ids = input_ids[:, self.n:]
        counts = torch.zeros_like(scores)
        if gen_ids.shape[1]:
            counts.scatter_add_(1, gen_ids, torch.ones_like(gen_ids, dtype=scores.dtype))
        scores = scores - torch.tensor(self.f, dtype=scores.dtype) * counts
        return scores - torch.tensor(self.p, dtype=scores.dtype) * (counts > 0).to(scores.dtype)


def chat(srv, content, path="/v1/chat/completions", **kw):
    b = {"messages": [{"role": "user", "content": content}], "max_tokens": N, "temperature": 0}
    b.update(kw)
    return srv.post(path, b)


def refused_case(srv, name, path, b, key):
    r = srv.post(path, b)
    ok = R.check(f"{name}: 422", r.status_code == 422, f"status {r.status_code} {r.text[:200]!r}")
    if ok:
        good, msg = error_body_ok(r.text, 422)
        R.check(f"{name}: error body names {key}", good and key in msg, msg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    seed = int(os.environ.get("LF_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
    print(f"seed {seed} (set LF_TEST_SEED to reproduce)", flush=True)
    t0 = time.time()
    rng = random.Random(seed)
    work = os.path.abspath(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    binary = os.path.abspath(a.bin)
    servers = []
    try:
        base = os.path.join(work, "base")
        make_tiny(binary, base, seed % 100000, HIDDEN, os.path.join(REPO, "examples", "tokenizer"))
        tc_path = os.path.join(base, "tokenizer_config.json")
        with open(tc_path) as f:
            tc = json.load(f)
        tc["chat_template"] = CHAT_TEMPLATE
        with open(tc_path, "w") as f:
            json.dump(tc, f, indent=2)
        with open(os.path.join(base, "generation_config.json")) as f:
            gc = json.load(f)
        eos = gc.get("eos_token_id")
        eos = set(eos if isinstance(eos, list) else [eos])
        tok = AutoTokenizer.from_pretrained(base)
        V = len(tok)
        args = ["--max-model-len", "256", "--threads", "2"]
        try:
            main_srv = Server(binary, ["--model", base] + args, work, "main")
        except ServerStartError as e:
            R.check("main server starts", False, str(e)[-1500:])
            return 1
        servers.append(main_srv)
        m = main_srv

        # ---------------------------------------------------------------- a prompt with a long greedy run
        R.set_group("baseline")
        prompt, g0 = None, None
        for _ in range(12):
            p = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "."
            g = gen(m, body(p, None, N), eos)
            if g.status == 200 and not g.problems and g.finish == "length" and len(set(g.ids[2:])) >= 3:
                prompt, g0 = p, g
                break
        if not R.check("a prompt whose greedy run has no EOS and varied tokens", prompt is not None, ""):
            return 1
        ids0 = g0.ids
        k = next(i for i in range(2, len(ids0)) if ids0[i] not in ids0[:i])
        t = ids0[k]
        print(f"  prompt {prompt!r}: greedy {ids0}; stop id {t} first at {k}", flush=True)

        # ---------------------------------------------------------------- stop_token_ids
        R.set_group("stop_token_ids")
        for stream in (False, True):
            tag = "stream" if stream else "non-stream"
            g = gen(m, body(prompt, None, N, stream=stream, stop_token_ids=[t]), eos)
            if R.check(f"{tag}: 200", g.status == 200 and not g.problems, f"{g.status} {g.problems} {str(g.raw)[:200]}"):
                R.eq(f"{tag}: finish_reason", g.finish, "stop_sequence")
                R.eq(f"{tag}: ids up to and including the stop id", g.all_ids, ids0[:k + 1])
                # the stop id's text is left out, like EOS's (held-back partial UTF-8 is flushed as U+FFFD, as
                # the tokenizer's own decode does)
                R.eq(f"{tag}: text == tokenizer.decode(ids before the stop id)", g.text,
                     tok.decode(ids0[:k], skip_special_tokens=True))
                if g.lines is None:
                    r = m.post("/invocations", body(prompt, None, N, stop_token_ids=[t]))
                    R.eq(f"{tag}: the stop token carries no text", r.json()["details"]["tokens"][-1]["text"], "")
        g = gen(m, body(prompt, None, N, stop_token_ids=[V + 5]), eos)
        R.check("stop id outside the vocabulary: 422 naming stop_token_ids",
                g.status == 422 and "stop_token_ids" in str(g.raw), f"{g.status} {str(g.raw)[:200]}")
        g = gen(m, body(prompt, None, N, stop_token_ids=[t], ignore_eos=True), eos)
        R.eq("stop_token_ids still stop with ignore_eos", (g.status, g.finish, g.all_ids),
             (200, "stop_sequence", ids0[:k + 1]))
        # chat: the same prompt text through the template, ids taken from the generate body
        rendered = f"user: {prompt}\nassistant:"
        gc0 = gen(m, body(rendered, None, N), eos)
        rc = chat(m, prompt)
        if R.check("chat baseline", rc.status_code == 200 and gc0.status == 200, rc.text[:200]):
            c0 = rc.json()["choices"][0]["message"]["content"]
            R.eq("chat greedy == generate body on the rendered template", c0, gc0.text)
            cids = gc0.ids
            kc = next((i for i in range(1, len(cids)) if cids[i] not in cids[:i]), None)
            if kc is not None:
                for path in ("/v1/chat/completions", "/invocations"):
                    r = chat(m, prompt, path=path, stop_token_ids=[cids[kc]])
                    ok = R.check(f"chat {path}: 200", r.status_code == 200, r.text[:200])
                    if ok:
                        ch = r.json()["choices"][0]
                        R.eq(f"chat {path}: finish_reason stop", ch["finish_reason"], "stop")
                        R.eq(f"chat {path}: completion_tokens", r.json()["usage"]["completion_tokens"], kc + 1)
                        R.eq(f"chat {path}: content == tokenizer.decode(ids before the stop id)",
                             ch["message"]["content"], tok.decode(cids[:kc], skip_special_tokens=True))

        # ---------------------------------------------------------------- ignore_eos (a server whose EOS is t)
        R.set_group("ignore_eos")
        eos_dir = os.path.join(work, "eos")
        os.makedirs(eos_dir)
        for f in os.listdir(base):
            if f != "generation_config.json":
                os.symlink(os.path.join(base, f), os.path.join(eos_dir, f))
        gc2 = dict(gc)
        gc2["eos_token_id"] = t
        with open(os.path.join(eos_dir, "generation_config.json"), "w") as f:
            json.dump(gc2, f)
        try:
            e_srv = Server(binary, ["--model", eos_dir] + args, work, "eos")
        except ServerStartError as e:
            R.check("eos server starts", False, str(e)[-1500:])
            return 1
        servers.append(e_srv)
        g = gen(e_srv, body(prompt, None, N), {t})
        R.eq("without ignore_eos: ends at the EOS id", (g.status, g.finish, g.all_ids), (200, "eos_token", ids0[:k + 1]))
        for stream in (False, True):
            g = gen(e_srv, body(prompt, None, N, ignore_eos=True, stream=stream), set())
            tag = "stream" if stream else "non-stream"
            R.eq(f"ignore_eos {tag}: runs to max_new_tokens", (g.status, g.finish, len(g.all_ids or [])),
                 (200, "length", N))
            R.eq(f"ignore_eos {tag}: == the main server's greedy run", (g.all_ids, g.text), (ids0, g0.text))
        rc = chat(e_srv, prompt, ignore_eos=True, max_tokens=10)
        if R.check("chat ignore_eos: 200", rc.status_code == 200, rc.text[:200]):
            R.eq("chat ignore_eos: finish length, 10 tokens",
                 (rc.json()["choices"][0]["finish_reason"], rc.json()["usage"]["completion_tokens"]), ("length", 10))

        # ---------------------------------------------------------------- truncate
        R.set_group("truncate")
        long_p = " ".join(rng.choice(WORDS) for _ in range(20))
        pid = tok(long_p, add_special_tokens=True).input_ids
        done = 0
        for n_keep in (3, 5, 8, len(pid) // 2):
            tail = pid[-n_keep:]
            text = tok.decode(tail)
            if tok(text, add_special_tokens=True).input_ids != tail:
                continue  # the tail does not round-trip as text: not comparable by hand
            full = gen(m, body(long_p, None, 12), eos)
            by_hand = gen(m, body(text, None, 12), eos)
            for stream in (False, True):
                g = gen(m, body(long_p, None, 12, truncate=n_keep, stream=stream), eos)
                tag = f"truncate {n_keep} ({'stream' if stream else 'non-stream'})"
                if R.check(f"{tag}: 200", g.status == 200 and not g.problems, f"{g.status} {str(g.raw)[:200]}"):
                    R.eq(f"{tag}: == the last {n_keep} tokens sent by hand", g.key(), by_hand.key())
                    if stream:
                        R.eq(f"{tag}: input_length", g.lines[-1]["details"].get("input_length"), n_keep)
            if full.key() != by_hand.key():
                done += 1
            r = chat(m, long_p, truncate_prompt_tokens=n_keep, max_tokens=4)
            R.eq(f"chat truncate_prompt_tokens {n_keep}: prompt_tokens", (r.status_code, r.json().get("usage", {})
                                                                          .get("prompt_tokens")), (200, n_keep))
        R.check("truncation changed the output at least once", done >= 1, "every truncated run equalled the full one")
        g = gen(m, body(long_p, None, 4, truncate=0), eos)
        R.check("truncate 0: 422 naming truncate", g.status == 422 and "truncate" in str(g.raw), str(g.raw)[:200])

        # ---------------------------------------------------------------- penalties and the new warpers
        R.set_group("penalties")
        hf = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        pids = tok(prompt, add_special_tokens=True).input_ids
        changed = 0
        for pres, freq in ((2.0, 0.0), (0.0, 2.0), (1.0, 0.5), (-1.0, -0.5)):
            g = gen(m, body(prompt, None, N, presence_penalty=pres, frequency_penalty=freq), eos)
            tag = f"presence {pres} frequency {freq}"
            if not R.check(f"{tag}: 200", g.status == 200 and not g.problems, f"{g.status} {str(g.raw)[:200]}"):
                continue
            changed += g.all_ids != ids0
            x = torch.tensor([pids])
            with torch.no_grad():
                out = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=N, do_sample=False,
                                  eos_token_id=sorted(eos), pad_token_id=sorted(eos)[0], output_scores=True,
                                  return_dict_in_generate=True,
                                  logits_processor=LogitsProcessorList([VllmPenalties(pres, freq, len(pids))]))
            want = out.sequences[0, len(pids):].tolist()
            gaps = [float(torch.topk(sc[0], 2).values[0] - torch.topk(sc[0], 2).values[1]) for sc in out.scores]
            got = g.all_ids
            i = next((j for j in range(min(len(got), len(want))) if got[j] != want[j]), None)
            if i is None:
                R.eq(f"{tag}: == transformers greedy + vLLM's penalty formula", got, want)
            else:
                near = i < len(gaps) and gaps[i] < TIE_TOL
                R.check(f"{tag}: == transformers greedy + vLLM's penalty formula", near,
                        f"first difference at step {i}: {got} vs {want} (gap {gaps[i] if i < len(gaps) else None})")
                if near:
                    R.note(f"{tag}: diverged at near-tie step {i}")
        R.check("penalties changed the greedy output", changed >= 2, f"{changed} of 4 changed")
        # min_p 1 keeps only the most likely token: sampling == greedy
        g = gen(m, body(prompt, None, N, do_sample=True, min_p=1.0, seed=3), eos)
        R.eq("min_p 1 == greedy", (g.status, g.all_ids), (200, ids0))
        for kw in ({"min_p": 0.05}, {"typical_p": 0.5}, {"min_p": 0.1, "typical_p": 0.9, "top_k": 50}):
            a1 = gen(m, body(prompt, None, N, seed=11, temperature=1.5, **kw), eos)
            a2 = gen(m, body(prompt, None, N, seed=11, temperature=1.5, stream=True, **kw), eos)
            R.eq(f"{kw} sampling: 200, same seed -> same output", (a1.status, a2.status, a1.key()),
                 (200, 200, a2.key()))
        r = chat(m, prompt, temperature=1.0, seed=5, min_p=0.2, presence_penalty=0.5, frequency_penalty=0.5)
        R.eq("chat with min_p + penalties: 200", r.status_code, 200)

        # ---------------------------------------------------------------- refused, the same on every route
        R.set_group("refused")
        refused = [("watermark", True, False), ("num_beams", 2, 1), ("best_of", 2, 1), ("n", 2, 1),
                   ("top_n_tokens", 3, 0), ("logit_bias", {"5": 1.0}, {}), ("use_beam_search", True, False),
                   ("frobnicate", 1, None)]
        for key, bad, noop in refused:
            b = body(prompt, None, 4)
            b["parameters"][key] = bad
            refused_case(m, f"/invocations generate {key}={bad}", "/invocations", b, key)
            cb = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 4, key: bad}
            refused_case(m, f"/invocations chat {key}={bad}", "/invocations", cb, key)
            refused_case(m, f"/v1/chat/completions {key}={bad}", "/v1/chat/completions", cb, key)
            if noop is not None:
                b["parameters"][key] = noop
                cb[key] = noop
                r1, r2 = m.post("/invocations", b), m.post("/v1/chat/completions", cb)
                R.eq(f"{key}={noop!r} (no-op) accepted on both bodies", (r1.status_code, r2.status_code), (200, 200))
        r = m.post("/invocations", {"inputs": prompt, "temperature": 0.5})
        R.check("a parameter outside \"parameters\": 422 naming it",
                r.status_code == 422 and "temperature" in r.text and "parameters" in r.text, r.text[:200])

        for s in servers:
            rc, _ = s.terminate(25)
            R.check(f"server {s.name}: SIGTERM -> exit 0", rc == 0, f"exit {rc}", group="shutdown")
            log = open(s.log_path, "rb").read().decode("utf-8", "replace")
            bad = [ln for ln in log.splitlines() if "Sanitizer" in ln or "runtime error" in ln]
            R.check(f"no sanitizer report in server-{s.name}.log", not bad, "\n".join(bad[:5]), group="shutdown")
    finally:
        for s in servers:
            s.kill()
        print(f"runtime {time.time() - t0:.1f} s, seed {seed}")
        failed = R.summary()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
