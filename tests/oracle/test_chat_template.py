#!/usr/bin/env python3
"""Oracle test: `loraforge chat-template` against transformers' apply_chat_template(..., tokenize=False).

For every template in $LF_SHARED/data/chat_templates/ (*.jinja files, and the "chat_template" of each
*.tokenizer_config.json) and for a set of conversations (with/without system, single/multi-turn, unicode,
quotes, newlines, leading/trailing spaces, tools, tool calls, reasoning, non-alternating roles), each with
add_generation_prompt true and false, the output of our CLI must equal transformers' byte for byte. When
transformers raises (raise_exception: "roles must alternate", "System role not supported", ...), ours must
fail with exit 1 and, for raise_exception, print the same message.

The oracle is a real PreTrainedTokenizerFast (a one-word WordLevel tokenizer built in memory) carrying the
template's special tokens, so special_tokens_map and apply_chat_template are exactly transformers' own.

usage: test_chat_template.py --bin build/loraforge --workdir DIR   (env LF_SHARED, default /work/shared)
"""
import argparse
import glob
import json
import os
import subprocess
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--bin", required=True)
ap.add_argument("--workdir", required=True)
args = ap.parse_args()

try:
    import jinja2  # noqa: F401
    from jinja2.exceptions import TemplateError
    import transformers
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
except Exception as e:  # the oracle is required: no silent pass
    print(f"FAIL: cannot import transformers/jinja2/tokenizers: {e}")
    sys.exit(1)

shared = os.environ.get("LF_SHARED", "/work/shared")
tdir = os.path.join(shared, "data", "chat_templates")
os.makedirs(args.workdir, exist_ok=True)
print(f"transformers {transformers.__version__}, jinja2 {jinja2.__version__}, templates from {tdir}")

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather in a city — «quoted» \"names\" ok",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Zürich"},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7.5},
                    "units": {"type": "string", "enum": ["c", "f"]},
                },
                "required": ["city"],
            },
        },
    }
]

CONVS = {
    "single_user": {"messages": [{"role": "user", "content": "Hello!"}]},
    "system_user": {
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "What is 2+2?"},
        ]
    },
    "multi_turn": {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Tell me a joke."},
        ]
    },
    "system_multi_assistant_last": {
        "messages": [
            {"role": "system", "content": "Be nice.\nAlways."},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "two"},
            {"role": "user", "content": "three"},
            {"role": "assistant", "content": "four"},
        ]
    },
    "tricky_text": {
        "messages": [
            {"role": "system", "content": "  Système: «guillemets» 'single' \"double\" \\ backslash  \n"},
            {"role": "user", "content": "  ünïcödé 日本語 🎉 emoji\n\nline2\ttab  "},
            {"role": "assistant", "content": "\n  {{ not a template }} {% raw %} <|im_end|> \u00a0nbsp  "},
            {"role": "user", "content": "</think> </s> [INST] end"},
        ]
    },
    "reasoning": {
        "messages": [
            {"role": "user", "content": "Why is the sky blue?"},
            {"role": "assistant", "content": "<think>\nRayleigh scattering.\n</think>\n\nBecause of scattering."},
            {"role": "user", "content": "And sunsets?"},
        ]
    },
    "no_think": {
        "messages": [{"role": "system", "content": "Answer fast /no_think"}, {"role": "user", "content": "Quick: 3*3?"}],
        "enable_thinking": False,
    },
    "non_alternating": {
        "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    },
    "tools": {
        "messages": [
            {"role": "system", "content": "You can call tools."},
            {"role": "user", "content": "Weather in Zürich?"},
        ],
        "tools": TOOLS,
    },
    "tool_calls": {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call12345",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call12345", "content": "{\"temp\": 21.5, \"sky\": \"clear\"}"},
            {"role": "assistant", "content": "It is 21.5°C and clear."},
        ],
        "tools": TOOLS,
    },
}

_tk = Tokenizer(models.WordLevel(vocab={"<unk>": 0}, unk_token="<unk>"))


def oracle(src, special, conv, agp):
    tok = PreTrainedTokenizerFast(tokenizer_object=_tk, **special)
    kwargs = {k: v for k, v in conv.items() if k not in ("messages", "tools")}
    try:
        out = tok.apply_chat_template(
            conv["messages"], tools=conv.get("tools"), chat_template=src, tokenize=False,
            add_generation_prompt=agp, **kwargs)
        return True, out, None
    except TemplateError as e:  # raise_exception and jinja errors
        return False, str(e), type(e).__name__
    except Exception as e:  # TypeError etc. from the template's Python operations
        return False, str(e), type(e).__name__


def token_content(v):
    if isinstance(v, dict):
        return v.get("content")
    return v


# ---- collect templates: (name, source, special tokens for the oracle, CLI args that select it) ----
cases = []
for path in sorted(glob.glob(os.path.join(tdir, "*.jinja"))):
    name = os.path.basename(path)[: -len(".jinja")]
    with open(path, encoding="utf-8") as f:
        src = f.read()
    special = {"bos_token": "<s>", "eos_token": "</s>"}
    cases.append((name, src, special, ["--template-file", path], dict(special)))
for path in sorted(glob.glob(os.path.join(tdir, "*.tokenizer_config.json"))):
    name = os.path.basename(path)[: -len(".tokenizer_config.json")] + " (tokenizer_config)"
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    src = cfg.get("chat_template")
    if isinstance(src, list):
        src = next(t["template"] for t in src if t.get("name") == "default")
    special = {}
    for k in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
        v = token_content(cfg.get(k))
        if v is not None:
            special[k] = v
    if cfg.get("additional_special_tokens"):
        special["additional_special_tokens"] = [token_content(t) for t in cfg["additional_special_tokens"]]
    mdir = os.path.join(args.workdir, "model-" + os.path.basename(path).split(".")[0])
    os.makedirs(mdir, exist_ok=True)
    with open(os.path.join(mdir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False)
    cases.append((name, src, special, ["--model", mdir], {}))

if not cases:
    print(f"FAIL: no templates found in {tdir}")
    sys.exit(1)

passed = failed = 0
first_diff_shown = 0
for name, src, special, sel, cli_vars in cases:
    tp = tf = nraise = 0
    for cname, conv in CONVS.items():
        for agp in (False, True):
            ok, want, exc = oracle(src, special, conv, agp)
            doc = dict(conv)
            doc.update(cli_vars)
            mpath = os.path.join(args.workdir, f"msgs-{cname}.json")
            with open(mpath, "w", encoding="utf-8") as f:
                json.dump(doc, f, ensure_ascii=False)
            cmd = [args.bin, "chat-template", *sel, "--messages", mpath] + (["--add-generation-prompt"] if agp else [])
            r = subprocess.run(cmd, capture_output=True)
            got, err = r.stdout, r.stderr.decode("utf-8", "replace")
            label = f"{name} / {cname} / add_generation_prompt={agp}"
            good = False
            why = ""
            if ok:
                good = r.returncode == 0 and got == want.encode("utf-8")
                if not good and r.returncode == 0 and "strftime_now" in src:
                    # strftime_now reads the clock on both sides: a date that changed between the two renders
                    # (midnight) is not a difference; the render after ours must then match
                    ok2, want2, _ = oracle(src, special, conv, agp)
                    good = ok2 and got == want2.encode("utf-8")
                    want = want2 if ok2 else want
                if not good:
                    if r.returncode != 0:
                        why = f"transformers rendered, ours failed (rc={r.returncode}): {err.strip()}"
                    else:
                        g = got.decode("utf-8", "replace")
                        i = next((k for k in range(min(len(g), len(want))) if g[k] != want[k]), min(len(g), len(want)))
                        why = (f"first difference at char {i}:\n  want: {want[max(0, i - 40):i + 40]!r}\n"
                               f"  got:  {g[max(0, i - 40):i + 40]!r}")
            else:
                nraise += 1
                if r.returncode != 1:
                    why = f"transformers raised {exc}: {want!r}; ours rc={r.returncode}"
                elif exc == "TemplateError" and want not in err:
                    why = f"transformers raised {want!r}; ours said {err.strip()!r}"
                else:
                    good = True
            if good:
                tp += 1
            else:
                tf += 1
                if first_diff_shown < 5:
                    first_diff_shown += 1
                    print(f"FAIL {label}: {why}")
    passed += tp
    failed += tf
    print(f"{name:55s} {tp:3d} passed, {tf:3d} failed ({nraise} raise in transformers)")

# ---- feature snippets: small templates exercising the Jinja subset, same oracle ----
SNIPPETS = [
 "{% for m in messages %}{{ loop.index }}/{{ loop.length }}:{{ loop.revindex }}{{ loop.first }}{{ loop.last }}{{ loop.index0 }} {% endfor %}",
 "  {% if true %}\n    x\n  {% endif %}\n  y\n",
 "a  {%- if true -%}  b  {%- endif -%}  c\n\n",
 "{# comment #}\nline\n  {# c2 #}\nz",
 "{{ 'x' }}\n{{ 'y' }}\n",
 "{% raw %}{{ not }}{% endraw %}",
 "{{ [1,2,3][::-1] }}{{ 'héllo'[1:] }}{{ 'abc'[-1] }}{{ [1,2,3,4,5][1:4:2] }}",
 "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ 2 ** 10 }} {{ 7 / 2 }} {{ 1.0 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 3 * 'ab' }}",
 "{{ 'a' ~ 1 ~ none ~ true ~ undefined_var }}",
 "{{ x is defined }} {{ x is undefined }} {{ none is none }} {{ 1 is number }} {{ 'a' is string }} {{ {} is mapping }} {{ [] is iterable }} {{ true is boolean }} {{ 1 is integer }} {{ 1.5 is float }} {{ 3 is odd }} {{ 4 is even }} {{ 'a' is equalto 'a' }} {{ 9 is divisibleby 3 }}",
 "{{ '  x  '|trim }}|{{ 'abc'|upper }}|{{ 'ABC'|lower }}|{{ 'hello world-foo'|title }}|{{ 'hELLO'|capitalize }}|{{ 'aXbX'|replace('X','y') }}|{{ [1,2]|join(', ') }}|{{ [3,4]|first }}|{{ [3,4]|last }}|{{ u|default('dflt') }}|{{ 5|string }}|{{ '42'|int + 1 }}|{{ '1.5'|float }}|{{ 'ab'|list }}|{{ -3|abs }}|{{ 2.567|round(2) }}|{{ 2.5|round }}",
 "{{ {'a': 1, 'b': [1, 2.5, none, true, 'x\"y']}|tojson }}|{{ {'a': {'b': []}, 'c': {}}|tojson(indent=2) }}|{{ 'ü\\n'|tojson }}",
 "{{ messages|selectattr('role', 'equalto', 'user')|map(attribute='content')|join('|') }}|{{ messages|rejectattr('role', 'eq', 'user')|list|length }}",
 "{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}{% for k, v in {'x': 3}|items %}{{ k }}{{ v }}{% endfor %}",
 "{% set ns = namespace(c=0) %}{% for m in messages %}{% set ns.c = ns.c + 1 %}{% endfor %}{{ ns.c }}",
 "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Bob') }} {{ greet('Al', punct='?') }}",
 "{% for x in [] %}a{% else %}empty{% endfor %}{% for x in [1,2,3] if x > 1 %}{{ x }}{{ loop.length }}{% endfor %}",
 "{{ 'a' if false else 'b' }}{{ 'c' if true }}{{ 'd' if false }}|{{ 1 < 2 < 3 }} {{ 'b' in 'abc' }} {{ 2 not in [1,3] }} {{ not false and true or false }}",
 "{{ '  a b  c '.split() }}{{ 'a,b,,c'.split(',') }}{{ 'a,b,c'.split(',', 1) }}{{ 'xxhixx'.strip('x') }}{{ 'hi'.startswith('h') }}{{ 'hi'.endswith('i') }}{{ 'Hello World'.lower() }}{{ 'x'.upper() }}{{ 'a b'.title() }}{{ 'aaa'.replace('a', 'b', 2) }}",
 "{{ {'a': 1}.get('a') }}{{ {'a': 1}.get('b') }}{{ {'a': 1}.get('b', 5) }}{{ {'a': 1, 'b': 2}.keys()|list }}{{ {'a': 1}.values()|list }}",
 "{{ messages }}",
 "{{ messages[0] }}{{ messages[0].role }}{{ messages[0]['content'] }}{{ messages[5] is defined }}{{ messages[0].nokey is defined }}",
 "{% set x %}captured {{ 1 + 1 }}{% endset %}[{{ x }}]",
 "{{ 'line1\nline2\n\nline4'|indent(2) }}|{{ 'a\nb'|indent(4, true) }}|{{ 'a\n\nb'|indent(2, blank=true) }}",
 "{% for m in messages %}{{ loop.previtem is defined }}{{ loop.cycle('o','e') }}{% endfor %}",
 "{% filter upper %}shout {{ 'me' }}{% endfilter %}",
 "{{ range(3)|list }}{{ range(1, 10, 3)|list }}{{ [3,1,2]|sort }}{{ ['b','A','c']|sort }}{{ [1,1,2]|unique|list }}{{ [1,2,3]|sum }}{{ [4,2,9]|max }}{{ [4,2,9]|min }}{{ 'abc'|reverse }}{{ [1,2]|reverse|list }}",
 "{%- for m in messages -%}\n  {%- if m.role == 'user' %}\n    U: {{ m.content }}\n  {%- else %}\n    A: {{ m.content }}\n  {% endif %}\n{%- endfor %}\n",
 "{{ 1 == 1.0 }}{{ true == 1 }}{{ 'a' == 'a' }}{{ [1] == [1] }}{{ none == none }}{{ x == none }}",
 "{{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }}{{ [1,[2,[3]]]|tojson(indent=1) }}{{ 1.0|tojson }}{{ 1e-7|tojson }}{{ 'é'|tojson(ensure_ascii=true) }}",
 "{{ (1, 2) }}{{ () }}",
 "{{ 10000000000000000.0 }} {{ 0.0001 }} {{ 0.00001 }} {{ 123456789.125 }} {{ -0.0 }} {{ 1/3 }}",
 "{{ '%s'|length }}{{ messages|length }}{{ {'a':1}|length }}{{ 'héllo'|length }}{{ undefined_x|length }}",
 "  {%+ if true %}keep{% endif %}\n{% if true +%}\nnotrim{% endif %}",
 "{{- '  lead' -}}   \n\n   {{- 'x' }}",
]
ERR_SNIPPETS = [
 "{{ raise_exception('custom boom: ' ~ 42) }}",
 "{% if %}",
 "{{ x|nosuchfilter }}",
 "{{ x is nosuchtest }}",
 "{% for %}",
 "{{ 'a' + 1 }}",
 "{{ undefined_thing.attr }}",
 "{% endfor %}",
 "{{ (1 }}",
 "{% if true %}unclosed",
 "{{ 1/0 }}",
]

SNIP_MSGS = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
sdir = os.path.join(args.workdir, "snippets")
os.makedirs(sdir, exist_ok=True)
smsgs = os.path.join(sdir, "messages.json")
with open(smsgs, "w", encoding="utf-8") as f:
    json.dump({"messages": SNIP_MSGS, "bos_token": "<s>", "eos_token": "</s>"}, f)
sp = sf = 0
for i, s in enumerate(SNIPPETS + ERR_SNIPPETS):
    tpath = os.path.join(sdir, f"t{i}.jinja")
    with open(tpath, "w", encoding="utf-8") as f:
        f.write(s)
    ok, want, exc = oracle(s, {"bos_token": "<s>", "eos_token": "</s>"}, {"messages": SNIP_MSGS}, False)
    r = subprocess.run([args.bin, "chat-template", "--template-file", tpath, "--messages", smsgs], capture_output=True)
    if ok:
        good = r.returncode == 0 and r.stdout == want.encode("utf-8")
    else:
        good = r.returncode == 1 and (exc != "TemplateError" or want in r.stderr.decode("utf-8", "replace")
                                      or "syntax error" in r.stderr.decode("utf-8", "replace"))
    if good:
        sp += 1
    else:
        sf += 1
        print(f"FAIL snippet #{i} {s!r}:\n  want ({exc or 'ok'}): {want!r}\n  got (rc={r.returncode}): "
              f"{r.stdout.decode('utf-8', 'replace')!r} {r.stderr.decode('utf-8', 'replace').strip()!r}")
print(f"{'feature snippets':55s} {sp:3d} passed, {sf:3d} failed")
passed += sp
failed += sf

# ---- the built-ins must compile and render every plain conversation ----
for bname in ("llama3", "llama2", "mistral", "qwen", "chatml", "gemma", "phi", "alpaca", "default"):
    r = subprocess.run([args.bin, "chat-template", "--template", bname, "--messages",
                        os.path.join(args.workdir, "msgs-multi_turn.json"), "--add-generation-prompt"],
                       capture_output=True)
    if r.returncode == 0 and r.stdout:
        passed += 1
    else:
        failed += 1
        print(f"FAIL built-in {bname}: rc={r.returncode} {r.stderr.decode(errors='replace').strip()}")

# ---- usage errors ----
r = subprocess.run([args.bin, "chat-template"], capture_output=True)
if r.returncode == 2 and b"loraforge chat-template:" in r.stderr:
    passed += 1
else:
    failed += 1
    print(f"FAIL usage error: rc={r.returncode} {r.stderr!r}")

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
