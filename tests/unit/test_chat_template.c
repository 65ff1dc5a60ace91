/* test_chat_template.c - unit tests of model/chat_template: built-in templates render the expected text,
 * and bad templates (syntax errors, raise_exception, unknown filters, runaway loops, deep nesting, huge
 * repetitions, self-containing values, integer edge cases, a slice in a tuple subscript) come back as
 * lf_status errors with a message, never a crash or a hang; the render limits API.
 * Prints "N passed, M failed"; exit 1 on failure. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/chat_template.h"

static int n_pass, n_fail;

#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (cond) n_pass++;                                \
        else {                                             \
            n_fail++;                                      \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);    \
            printf(__VA_ARGS__);                           \
            printf("\n");                                  \
        }                                                  \
    } while (0)

static json_t *conv(int with_system) {
    json_t *m = json_array();
    if (with_system) json_array_append_new(m, json_pack("{s:s, s:s}", "role", "system", "content", "SYS"));
    json_array_append_new(m, json_pack("{s:s, s:s}", "role", "user", "content", "Hi"));
    json_array_append_new(m, json_pack("{s:s, s:s}", "role", "assistant", "content", "Yo"));
    json_array_append_new(m, json_pack("{s:s, s:s}", "role", "user", "content", "Q"));
    return m;
}

/* render source; returns status, *out malloc'd on success */
static lf_status render_src(const char *src, const json_t *msgs, int agp, const json_t *extra, char **out, lf_err *err) {
    lf_chat_template *t = NULL;
    *out = NULL;
    lf_status st = lf_chat_template_compile(src, &t, err);
    if (st != LF_OK) return st;
    st = lf_chat_template_render(t, msgs, agp, extra, out, err);
    lf_chat_template_free(t);
    return st;
}

static void expect_builtin(const char *name, int with_system, int agp, const char *want) {
    const char *src = lf_chat_template_builtin(name);
    CHECK(src != NULL, "built-in %s missing", name);
    if (!src) return;
    json_t *m = conv(with_system);
    json_t *extra = json_pack("{s:s, s:s}", "bos_token", "<s>", "eos_token", "</s>");
    char *out = NULL;
    lf_err err = {0};
    lf_status st = render_src(src, m, agp, extra, &out, &err);
    CHECK(st == LF_OK, "built-in %s: %s", name, err.msg);
    if (st == LF_OK) CHECK(!strcmp(out, want), "built-in %s (system=%d agp=%d):\n  want %s\n  got  %s", name, with_system, agp, want, out);
    free(out);
    json_decref(m);
    json_decref(extra);
}

static void expect_error(const char *src, lf_status want_code, const char *want_substr) {
    json_t *m = conv(0);
    char *out = NULL;
    lf_err err = {0};
    lf_status st = render_src(src, m, 1, NULL, &out, &err);
    CHECK(st == want_code, "template %s: status %s, want %s (%s)", src, lf_status_name(st), lf_status_name(want_code), err.msg);
    CHECK(out == NULL, "template %s: output set on error", src);
    CHECK(strstr(err.msg, want_substr) != NULL, "template %s: message '%s' lacks '%s'", src, err.msg, want_substr);
    free(out);
    json_decref(m);
}

static void expect_error_lim(const char *src, const lf_chat_template_limits *lim, lf_status want_code,
                             const char *want_substr) {
    json_t *m = conv(0);
    char *out = NULL;
    lf_err err = {0};
    lf_chat_template *t = NULL;
    lf_status st = lf_chat_template_compile(src, &t, &err);
    CHECK(st == LF_OK, "template %.60s: compile: %s", src, err.msg);
    if (st == LF_OK) {
        lf_chat_template_set_limits(t, lim);
        st = lf_chat_template_render(t, m, 1, NULL, &out, &err);
        CHECK(st == want_code, "template %.60s: status %s, want %s (%s)", src, lf_status_name(st),
              lf_status_name(want_code), err.msg);
        CHECK(out == NULL, "template %.60s: output set on error", src);
        CHECK(strstr(err.msg, want_substr) != NULL, "template %.60s: message '%s' lacks '%s'", src, err.msg, want_substr);
    }
    free(out);
    lf_chat_template_free(t);
    json_decref(m);
}

/* the error must come from lf_chat_template_compile itself (at load), naming the line */
static void expect_compile_error(const char *src, const char *want_line, const char *want_substr) {
    lf_chat_template *t = NULL;
    lf_err err = {0};
    lf_status st = lf_chat_template_compile(src, &t, &err);
    CHECK(st == LF_EFORMAT && t == NULL, "template %s: compile gave %s, want EFORMAT (%s)", src, lf_status_name(st), err.msg);
    CHECK(strstr(err.msg, want_line) != NULL, "template %s: message '%s' lacks '%s'", src, err.msg, want_line);
    CHECK(strstr(err.msg, want_substr) != NULL, "template %s: message '%s' lacks '%s'", src, err.msg, want_substr);
    lf_chat_template_free(t);
}

static void expect_render(const char *src, const char *want) {
    json_t *m = conv(0);
    char *out = NULL;
    lf_err err = {0};
    lf_status st = render_src(src, m, 0, NULL, &out, &err);
    CHECK(st == LF_OK, "template %s: %s", src, err.msg);
    if (st == LF_OK) CHECK(!strcmp(out, want), "template %s:\n  want %s\n  got  %s", src, want, out);
    free(out);
    json_decref(m);
}

/* "{{ " + n x open + "1" + n x close + " }}" */
static char *nested(size_t n, const char *open, const char *mid, const char *close) {
    size_t lo = strlen(open), lm = strlen(mid), lc = strlen(close);
    char *src = malloc(n * (lo + lc) + lm + 1);
    char *p = src;
    for (size_t i = 0; i < n; i++, p += lo) memcpy(p, open, lo);
    memcpy(p, mid, lm);
    p += lm;
    for (size_t i = 0; i < n; i++, p += lc) memcpy(p, close, lc);
    *p = '\0';
    return src;
}

/* Issue 11: a template is untrusted input. Each of these crashed, hung or was accepted by the old code. */
static void test_hostile_templates(void) {
    /* a slice among several subscript items: compiled, then the first render dereferenced NULL (SIGSEGV);
     * jinja2 fails at compile time, and so do we, naming the line */
    expect_compile_error("{{ messages[:,1] }}", "line 1, column 13", "slice");
    expect_compile_error("{%- for m in messages %}\n{{ m }}\n{%- endfor %}\n{{ messages[:,1] }}", "line 4", "slice");
    expect_compile_error("{{ x[a:b, c] }}", "line 1", "slice");
    expect_compile_error("{{ x[1, 2:] }}", "line 1, column 9", "slice");
    expect_compile_error("{{ x[1, ::2] }}", "line 1", "slice");
    expect_compile_error("{{ x[1,] }}", "line 1", "unexpected ']'"); /* jinja2: no trailing comma either */
    /* a tuple subscript without slices is valid (jinja2: Getitem(x, Tuple)); no such key -> undefined -> "" */
    expect_render("{% set d = {'a': 1} %}[{{ d[1, 2] }}][{{ d[] }}]{{ messages[1:][0].content }}", "[][]Yo");
    {
        /* the server's path: a model whose template has it fails to load (compile), never at a request */
        lf_chat_template *t = NULL;
        lf_err err = {0};
        CHECK(lf_chat_template_compile("{% if messages %}{{ messages[:,1] }}{% endif %}", &t, &err) == LF_EFORMAT && !t,
              "messages[:,1] must not compile: %s", err.msg);
    }

    /* raise_exception without a message (found by fuzz_template): the error still has a text */
    expect_error("{{ raise_exception(other=1) }}", LF_EINVAL, "missing 1 required argument");
    expect_error("{{ raise_exception('') }}", LF_EINVAL, "empty message");
    expect_error("{{ raise_exception(message='kw ok') }}", LF_EINVAL, "kw ok");

    /* integer edges: INT64_MIN // -1 and % -1 trap on x86, -INT64_MIN and abs overflow; Python makes a big int,
     * we a float */
    expect_render("{{ (-9223372036854775807 - 1) // -1 }} {{ (-9223372036854775807 - 1) % -1 }} {{ 7 // -1 }}",
                  "9.223372036854776e+18 0 -7");
    expect_render("{{ -(-9223372036854775807 - 1) }} {{ (-9223372036854775807 - 1)|abs }} {{ [9223372036854775807, 1]|sum }}",
                  "9.223372036854776e+18 9.223372036854776e+18 9.223372036854776e+18");
    expect_render("{{ (-9223372036854775807 - 1) is divisibleby(-1) }} {{ '1e300'|int }} {{ 1e300|int(7) }}", "True 0 7");
    expect_render("{{ range(-9223372036854775807 - 1, 9223372036854775807, 4611686018427387904)|list }}",
                  "[-9223372036854775808, -4611686018427387904, 0, 4611686018427387904]");
    expect_render("{{ [1, 2, 3][1::9223372036854775807] }} {{ 'abc'[1::9223372036854775807] }} {{ [1, 2, 3][::-9223372036854775807] }}",
                  "[2] b [3]");
    /* 1 ** 10**11 looped 10**11 times; '' * 10**18 and [] * 10**18 looped 10**18 times */
    expect_render("{{ 1 ** 100000000000 }} {{ (-1) ** 100000000001 }} {{ 3 ** 5 }} {{ 2 ** 62 }} {{ 2 ** 64 }}",
                  "1 -1 243 4611686018427387904 1.8446744073709552e+19");
    expect_render("[{{ '' * 1000000000000000000 }}{{ [] * 1000000000000000000 }}]", "[[]]");

    /* huge string multiplication: 4 * 2**62 wrapped the size check to 0 */
    expect_error("{{ 'abcd' * 4611686018427387904 }}", LF_EINVAL, "repetition too large");
    expect_error("{{ 'x' * 1000000000000 }}", LF_EINVAL, "repetition too large");
    expect_error("{{ [1, 2] * 4611686018427387904 }}", LF_EINVAL, "repetition too large");
    /* huge loops: range length, then steps / memory / work */
    expect_error("{% for i in range(10**9) %}x{% endfor %}", LF_EINVAL, "Range too big");
    expect_error("{% set s = 'x' * 1000000 %}{% for i in range(100000) %}{% if 'y' in s %}{% endif %}{% endfor %}",
                 LF_EINVAL, "work budget");

    /* a namespace that holds itself: repr recursed forever (stack overflow) */
    expect_error("{% set ns = namespace(a=1) %}{% set ns.me = ns %}{{ ns }}", LF_EINVAL, "nested too deeply");
    expect_render("{% set ns = namespace(a=1, b='x') %}{{ ns }}", "<Namespace {'a': 1, 'b': 'x'}>"); /* jinja2 3.1 */
    /* values nested 5000 deep: ==, < and repr recursed once per level (stack overflow) */
    expect_error("{% set ns = namespace(x=[]) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}{% endfor %}"
                 "{{ ns.x == [ns.x] }}",
                 LF_EINVAL, "nested too deeply");
    expect_error("{% set ns = namespace(x=[]) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}",
                 LF_EINVAL, "nested too deeply");
    expect_error("{% set ns = namespace(x=[], y=[0]) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}"
                 "{% set ns.y = [ns.y] %}{% endfor %}{{ ns.x < ns.y }}",
                 LF_EINVAL, "nested too deeply");
    {
        /* map(filter) recursed once per argument, outside the depth count */
        size_t n = 20000;
        char *src = nested(n, "'map', ", "'upper'", "");
        char *full = malloc(strlen(src) + 64);
        sprintf(full, "{{ ['a']|map(%s)|list }}", src);
        expect_error(full, LF_EINVAL, "nested too deeply");
        free(full);
        free(src);
    }
    {
        /* deep nesting: blocks and long postfix / filter / operator chains */
        char *src = nested(5000, "{% if 1 %}", "x", "{% endif %}");
        expect_compile_error(src, "line 1", "nested too deeply");
        free(src);
        src = nested(20000, "", "{{ messages", "|first");
        char *full = malloc(strlen(src) + 8);
        sprintf(full, "%s }}", src);
        expect_error(full, LF_EINVAL, "nested too deeply");
        free(full);
        free(src);
        src = nested(20000, "", "{{ 1", " + 1");
        full = malloc(strlen(src) + 8);
        sprintf(full, "%s }}", src);
        expect_error(full, LF_EINVAL, "nested too deeply");
        free(full);
        free(src);
    }
    /* deep recursion via macro, with a base case the recursion never reaches in time */
    expect_error("{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(100000) }}", LF_EINVAL,
                 "recursion depth");
    expect_error("{% macro f() %}{% call f() %}{% endcall %}{% endmacro %}{{ f() }}", LF_EINVAL, "recursion depth");
    expect_render("{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{% endif %}{{ n }}{% endmacro %}{{ f(20) }}",
                  "01234567891011121314151617181920");
    {
        /* messages JSON nested deeper than the value bound: an error for that request */
        json_t *deep = json_string("x");
        for (int i = 0; i < 5000; i++) {
            json_t *a = json_array();
            json_array_append_new(a, deep);
            deep = a;
        }
        json_t *m = json_array();
        json_array_append_new(m, json_pack("{s:s, s:o}", "role", "user", "content", deep));
        char *out = NULL;
        lf_err err = {0};
        lf_status st = render_src("{{ messages|length }}", m, 0, NULL, &out, &err);
        CHECK(st == LF_EINVAL && !out && strstr(err.msg, "nested too deeply"), "deep messages: %s %s", lf_status_name(st), err.msg);
        free(out);
        json_decref(m);
    }

    /* the render limits API: output, memory, steps, work */
    {
        lf_chat_template_limits lim = {.max_output = 100};
        expect_error_lim("{{ 'x' * 60 }}{{ 'y' * 60 }}", &lim, LF_EINVAL, "output exceeds 100 bytes");
        expect_error_lim("{{ 'x' * 101 }}", &lim, LF_EINVAL, "repetition too large");
        lim = (lf_chat_template_limits){.max_memory = 1 << 20};
        expect_error_lim("{% set s = 'x' * 2000000 %}", &lim, LF_ENOMEM, "memory");
        lim = (lf_chat_template_limits){.max_steps = 1000};
        expect_error_lim("{% for i in range(2000) %}{% endfor %}", &lim, LF_EINVAL, "steps");
        lim = (lf_chat_template_limits){.max_work = 1000000};
        /* a needle with long near-matches at every position: quadratic, so the budget stops it */
        expect_error_lim("{{ ('a' * 3000 ~ 'b') in ('a' * 200000) }}", &lim, LF_EINVAL, "work budget");
        expect_error_lim("{{ ('x' * 100000).strip('y' * 100000 ~ 'x') }}", &lim, LF_EINVAL, "work budget");
        expect_error_lim("{{ range(3000)|unique|list|length }}", &lim, LF_EINVAL, "work budget");
        expect_error_lim("{% set s = 'x' * 100000 %}{% for i in range(1000) %}{{ s|length }}{% endfor %}", &lim, LF_EINVAL,
                         "work budget");
        lf_chat_template *t = NULL;
        lf_err err = {0};
        char *out = NULL;
        CHECK(lf_chat_template_compile("{{ 'x' * 50 }}", &t, &err) == LF_OK, "compile: %s", err.msg);
        lim = (lf_chat_template_limits){.max_output = 10};
        lf_chat_template_set_limits(t, &lim);
        CHECK(lf_chat_template_render(t, NULL, 0, NULL, &out, &err) == LF_EINVAL && !out, "limit 10 bytes");
        lf_chat_template_set_limits(t, NULL); /* back to the defaults */
        CHECK(lf_chat_template_render(t, NULL, 0, NULL, &out, &err) == LF_OK && out && strlen(out) == 50, "defaults");
        free(out);
        lf_chat_template_free(t);
        lf_chat_template_set_limits(NULL, &lim); /* no-op */
    }
}

int main(void) {
    /* ---- built-ins ---- */
    expect_builtin("llama3", 1, 1,
                   "<s><|start_header_id|>system<|end_header_id|>\n\nSYS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\nYo<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n");
    expect_builtin("llama2", 1, 1, "<s>[INST] <<SYS>>\nSYS\n<</SYS>>\n\nHi [/INST] Yo </s><s>[INST] Q [/INST]");
    expect_builtin("llama2", 0, 0, "<s>[INST] Hi [/INST] Yo </s><s>[INST] Q [/INST]");
    expect_builtin("mistral", 0, 1, "<s>[INST] Hi[/INST]Yo</s>[INST] Q[/INST]");
    expect_builtin("mistral", 1, 1, "<s>[INST] SYS\n\nHi[/INST]Yo</s>[INST] Q[/INST]");
    expect_builtin("qwen", 1, 1,
                   "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n"
                   "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n");
    expect_builtin("chatml", 0, 0,
                   "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                   "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n");
    expect_builtin("gemma", 1, 1,
                   "<s><start_of_turn>user\nSYS\n\nHi<end_of_turn>\n<start_of_turn>model\nYo<end_of_turn>\n"
                   "<start_of_turn>user\nQ<end_of_turn>\n<start_of_turn>model\n");
    expect_builtin("phi", 1, 1,
                   "<s><|system|>\nSYS<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nYo<|end|>\n<|user|>\nQ<|end|>\n<|assistant|>\n");
    expect_builtin("alpaca", 0, 1,
                   "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\nHi\n\n### Response:\nYo</s>\n\n### Instruction:\nQ\n\n### Response:\n");
    expect_builtin("default", 1, 1, "System: SYS\nHuman: Hi\nAssistant: Yo</s>\nHuman: Q\nAssistant:");
    CHECK(lf_chat_template_builtin("nope") == NULL, "unknown built-in must be NULL");
    CHECK(lf_chat_template_builtin(NULL) == NULL, "NULL name must be NULL");
    for (const char *const *n = lf_chat_template_builtin_names(); *n; n++)
        CHECK(lf_chat_template_builtin(*n) != NULL, "listed built-in %s missing", *n);

    /* ---- undefined bos/eos render as empty in built-ins ---- */
    {
        json_t *m = conv(0);
        char *out = NULL;
        lf_err err = {0};
        lf_status st = render_src(lf_chat_template_builtin("llama2"), m, 0, NULL, &out, &err);
        CHECK(st == LF_OK && out && !strcmp(out, "[INST] Hi [/INST] Yo [INST] Q [/INST]"), "llama2 without tokens: %s", out ? out : err.msg);
        free(out);
        json_decref(m);
    }

    /* ---- errors, not crashes ---- */
    expect_error("{% if %}", LF_EFORMAT, "line 1, column 7");
    expect_error("hello\n{{ x + }}", LF_EFORMAT, "line 2");
    expect_error("{{ raise_exception('Conversation roles must alternate') }}", LF_EINVAL, "Conversation roles must alternate");
    expect_error("{{ messages|nosuchfilter }}", LF_EFORMAT, "No filter named 'nosuchfilter'");
    expect_error("{{ messages is nosuchtest }}", LF_EFORMAT, "No test named 'nosuchtest'");
    expect_error("{{ messages|wordwrap }}", LF_EUNSUPPORTED, "wordwrap");
    expect_error("{% for x in messages %}", LF_EFORMAT, "endfor");
    expect_error("{{ 'unterminated }}", LF_EFORMAT, "string");
    expect_error("{# never closed", LF_EFORMAT, "comment");
    expect_error("{{ undefined_thing.x }}", LF_EINVAL, "'undefined_thing' is undefined");
    expect_error("{{ 1 // 0 }}", LF_EINVAL, "division");
    expect_error("{{ 'a' + 1 }}", LF_EINVAL, "concatenate");
    expect_error("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", LF_EINVAL, "recursion");
    {
        /* runaway loop: the step limit (or, first, the memory limit) stops it */
        json_t *m = conv(0);
        char *out = NULL;
        lf_err err = {0};
        lf_status st = render_src("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", m, 0,
                                  NULL, &out, &err);
        CHECK((st == LF_EINVAL && strstr(err.msg, "steps")) || (st == LF_ENOMEM && strstr(err.msg, "memory")),
              "runaway loop: %s %s", lf_status_name(st), err.msg);
        CHECK(out == NULL, "runaway loop: output set on error");
        json_decref(m);
    }
    expect_error("{{ range(1000000) }}", LF_EINVAL, "Range too big");
    {
        /* deeply nested parentheses: depth limit, not a stack overflow */
        size_t n = 20000;
        char *src = malloc(2 * n + 16);
        strcpy(src, "{{ ");
        memset(src + 3, '(', n);
        strcpy(src + 3 + n, "1");
        memset(src + 4 + n, ')', n);
        strcpy(src + 4 + 2 * n, " }}");
        expect_error(src, LF_EFORMAT, "nested too deeply");
        free(src);
    }
    {
        lf_chat_template *t = NULL;
        lf_err err = {0};
        CHECK(lf_chat_template_compile(NULL, &t, &err) == LF_EINVAL && t == NULL, "NULL source");
        lf_chat_template_free(NULL);
        CHECK(lf_chat_template_compile("{{ 1 }}", &t, &err) == LF_OK, "compile: %s", err.msg);
        char *out = NULL;
        json_t *notarr = json_object();
        CHECK(lf_chat_template_render(t, notarr, 0, NULL, &out, &err) == LF_EINVAL && !out, "messages must be an array");
        json_decref(notarr);
        CHECK(lf_chat_template_render(t, NULL, 0, NULL, &out, &err) == LF_OK && out && !strcmp(out, "1"), "render 1");
        free(out);
        lf_chat_template_free(t);
    }
    {
        lf_err err = {0};
        char *src = NULL;
        CHECK(lf_chat_template_from_model("/nonexistent-dir-xyz", &src, &err) != LF_OK && src == NULL, "missing model dir");
    }
    test_hostile_templates();

    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
