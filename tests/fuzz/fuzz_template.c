/* fuzz_template.c - libFuzzer target: the chat-template engine (model/chat_template.c, model/jinja_*.c).
 * Compiles fuzz Jinja, then renders it over fuzz messages with add_generation_prompt both ways.
 * Input: FLAGS TEMPLATE [LF_FUZZ_SEP MESSAGES]. FLAGS is the first byte: bit 0 renders
 * add_generation_prompt=true first, bit 1 passes a tools list, bit 2 sets enable_thinking, bit 3 sets
 * bos_token / eos_token, bit 4 gives generated messages list-of-parts contents. MESSAGES is a JSON array of
 * messages, or an object whose "messages" is one and whose other keys become template variables (as
 * `loraforge chat-template --messages`); anything else is cut at newlines into the contents of up to 8
 * messages with rotating roles.
 * Renders run under small limits (lf_chat_template_set_limits: 1 MiB output, 32 MiB memory, 200,000 steps,
 * 5,000,000 work units) so that one input stays far below -timeout; the nesting depths are the real ones.
 * Invariants (a violation traps): a failed compile has a message and no handle, and an LF_EFORMAT one names
 * the line; a failed render is LF_EINVAL, LF_ENOMEM or LF_EUNSUPPORTED with a message and no output; a
 * render that succeeds returns NUL-terminated text of the reported length within the output limit, and
 * rendering the same input again gives the same bytes (a render leaves the compiled template unchanged).
 * sources: model/chat_template.c model/chat_template_builtin.c model/jinja_parse.c model/jinja_eval.c model/jinja_value.c model/jinja_filters.c core/fileio.c core/status.c
 * pkg: jansson libutf8proc
 * Build and run: scripts/fuzz.sh [SECONDS] template (docs/fuzzing.md). By hand, from the repository root:
 *   clang -g -O1 -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -fsanitize=fuzzer,address,undefined \
 *     -I. tests/fuzz/fuzz_template.c model/chat_template.c model/chat_template_builtin.c model/jinja_*.c \
 *     core/fileio.c core/status.c $(pkg-config --cflags --libs jansson libutf8proc) -lm -o /tmp/fuzz_template
 *   /tmp/fuzz_template -max_len=8192 -timeout=5 -rss_limit_mb=2048 /tmp/corpus tests/fuzz/corpus/template
 * Seeds (tests/fuzz/corpus/template/): the real templates of ../shared/data/chat_templates and the built-ins,
 * each with a small conversation, and the templates of past crashes. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/chat_template.h"
#include "tests/fuzz/fuzz_util.h"

#define OUT_LIMIT ((size_t)1 << 20)

static const char TOOLS[] =
    "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":\"Weather in a city\","
    "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"},\"days\":{\"type\":"
    "\"integer\",\"minimum\":1}},\"required\":[\"city\"]}}}]";

/* Messages from bytes that are not JSON: newline-separated contents, roles in a fixed rotation. */
static json_t *messages_from_bytes(const uint8_t *p, size_t n, int parts) {
    static const char *const roles[] = {"system", "user", "assistant", "user", "tool", "assistant", "user", "user"};
    json_t *m = json_array();
    REQUIRE(m != NULL);
    size_t at = 0;
    for (int k = 0; k < 8 && at <= n; k++) {
        size_t e = at;
        while (e < n && p[e] != '\n') e++;
        json_t *content = json_stringn((const char *)p + at, e - at); /* NULL when not UTF-8 */
        if (!content) content = json_string("?");
        if (parts) content = json_pack("[{s:s, s:o}]", "type", "text", "text", content);
        json_t *msg = json_pack("{s:s, s:o}", "role", roles[k], "content", content);
        REQUIRE(msg != NULL);
        if (k == 2 && parts) /* an assistant turn with a tool call */
            json_object_set_new(msg, "tool_calls",
                                json_pack("[{s:s, s:{s:s, s:{s:s}}}]", "type", "function", "function", "name",
                                          "get_weather", "arguments", "city", "Paris"));
        json_array_append_new(m, msg);
        at = e + 1;
    }
    return m;
}

static void render_check(const lf_chat_template *t, const json_t *msgs, int agp, const json_t *extra, int again) {
    char *out = (char *)1;
    size_t len = 12345;
    lf_err err;
    memset(&err, 0, sizeof err);
    lf_status st = lf_chat_template_render_len(t, msgs, agp, extra, &out, &len, &err);
    if (st != LF_OK) {
        REQUIRE(st == LF_EINVAL || st == LF_ENOMEM || st == LF_EUNSUPPORTED);
        REQUIRE(err.msg[0] != '\0');
        REQUIRE(out == NULL);
        return;
    }
    REQUIRE(out != NULL);
    REQUIRE(len <= OUT_LIMIT);
    REQUIRE(out[len] == '\0');
    if (again) {
        char *out2 = NULL;
        size_t len2 = 0;
        REQUIRE(lf_chat_template_render_len(t, msgs, agp, extra, &out2, &len2, &err) == LF_OK);
        REQUIRE(len2 == len && memcmp(out, out2, len) == 0);
        free(out2);
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    unsigned flags = data[0];
    const uint8_t *part[2];
    size_t plen[2];
    lf_fuzz_split(data + 1, size - 1, part, plen, 2);

    char *src = lf_fuzz_strndup(part[0], plen[0]);
    lf_chat_template *t = (lf_chat_template *)1;
    lf_err err;
    memset(&err, 0, sizeof err);
    lf_status st = lf_chat_template_compile(src, &t, &err);
    free(src);
    if (st != LF_OK) {
        REQUIRE(t == NULL);
        REQUIRE(err.msg[0] != '\0');
        REQUIRE(st != LF_EFORMAT || strstr(err.msg, "line ") != NULL);
        return 0;
    }
    REQUIRE(t != NULL);
    lf_chat_template_limits lim = {.max_output = OUT_LIMIT, .max_memory = (size_t)32 << 20, .max_steps = 200000,
                                   .max_work = 5000000};
    lf_chat_template_set_limits(t, &lim);

    json_t *extra = json_object(), *msgs = NULL;
    REQUIRE(extra != NULL);
    json_t *j = part[1] ? json_loadb((const char *)part[1], plen[1], JSON_DECODE_ANY, NULL) : NULL;
    if (json_is_array(j)) msgs = json_incref(j);
    else if (json_is_object(j) && json_is_array(json_object_get(j, "messages"))) {
        msgs = json_incref(json_object_get(j, "messages"));
        json_object_update(extra, j);
        json_object_del(extra, "messages");
    } else msgs = messages_from_bytes(part[1] ? part[1] : (const uint8_t *)"", plen[1], flags & 16);
    json_decref(j);
    if (flags & 2) json_object_set_new(extra, "tools", json_loads(TOOLS, 0, NULL));
    if (flags & 4) json_object_set_new(extra, "enable_thinking", json_true());
    if (flags & 8) {
        json_object_set_new(extra, "bos_token", json_string("<s>"));
        json_object_set_new(extra, "eos_token", json_string("</s>"));
    }

    int first = flags & 1;
    render_check(t, msgs, first, extra, 1);
    render_check(t, msgs, !first, extra, 0);
    render_check(t, NULL, first, NULL, 0); /* no messages, no variables */

    json_decref(msgs);
    json_decref(extra);
    lf_chat_template_free(t);
    return 0;
}
