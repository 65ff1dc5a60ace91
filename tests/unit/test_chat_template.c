/* test_chat_template.c - unit tests of model/chat_template: built-in templates render the expected text,
 * and bad templates (syntax errors, raise_exception, unknown filters, runaway loops, deep nesting) come back
 * as lf_status errors with a message, never a crash. Prints "N passed, M failed"; exit 1 on failure. */
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

    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
