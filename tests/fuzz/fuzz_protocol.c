/* fuzz_protocol.c - libFuzzer target: the /invocations body parser (lf_proto_parse), adapter resolution,
 * the response builders fed with the parsed strings and with raw fuzz bytes, and the stop matcher fed the
 * same bytes in fuzz-chosen pieces. Invariants checked (a violation traps): a failure has status 400, 413
 * or 422 and a message; a success has 1..max_inputs NUL-free inputs or a messages array; every builder
 * output parses back as JSON; the stop matcher's emitted + flushed text is a prefix of its input and its
 * held text stays below max(longest stop, 4) bytes.
 *
 * sources: serve/protocol.c serve/stop.c core/status.c
 * pkg: jansson
 * Not built by CMake. Build and run: scripts/fuzz.sh [SECONDS] protocol (docs/fuzzing.md), which reads the two
 * lines above; by hand from the repository root (clang 14 has libFuzzer built in):
 *   clang -g -O1 -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -fsanitize=fuzzer,address,undefined \
 *     -I. tests/fuzz/fuzz_protocol.c serve/protocol.c serve/stop.c core/status.c \
 *     $(pkg-config --cflags --libs jansson) -lm -o /tmp/fuzz_protocol
 *   mkdir -p /tmp/fuzz-corpus && /tmp/fuzz_protocol -max_len=4096 -max_total_time=60 /tmp/fuzz-corpus \
 *     tests/fuzz/corpus/protocol
 * Seeds: tests/fuzz/corpus/protocol/ (tests/fuzz/make_seeds.py). */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "serve/protocol.h"
#include "serve/stop.h"

#define REQUIRE(c)                  \
    do {                            \
        if (!(c)) __builtin_trap(); \
    } while (0)

static int loaded(void *user, const char *name) {
    (void)user;
    return name[0] == 'a'; /* adapters whose name starts with 'a' are "loaded" */
}

/* Builder output must be JSON (framed outputs: strip "data: " and the trailing newlines). */
static void check_json(char *s, size_t len, int framed) {
    REQUIRE(s != NULL);
    REQUIRE(strlen(s) == len);
    const char *b = s;
    size_t n = len;
    if (framed) {
        if (n >= 6 && memcmp(b, "data: ", 6) == 0) b += 6, n -= 6;
        while (n && b[n - 1] == '\n') n--;
    }
    json_error_t je;
    json_t *j = json_loadb(b, n, JSON_ALLOW_NUL, &je); /* NUL bytes in generated text come out as \u0000 */
    REQUIRE(j != NULL);
    json_decref(j);
    free(s);
}

static void stop_matcher(const lf_gen_request *r, const uint8_t *data, size_t size) {
    const char *const *stops = r ? (const char *const *)r->params.stop : NULL;
    size_t n = r ? r->params.n_stop : 0, longest = 4;
    for (size_t i = 0; i < n; i++) longest = strlen(stops[i]) > longest ? strlen(stops[i]) : longest;
    lf_stop_matcher *m = NULL;
    lf_err err;
    REQUIRE(lf_stop_create(stops, NULL, n, size & 1, &m, &err) == LF_OK);
    char *out = malloc(size + 1);
    size_t outlen = 0;
    int stopped = 0;
    for (size_t at = 0; at < size && !stopped;) {
        size_t piece = 1 + data[at] % 7;
        if (piece > size - at) piece = size - at;
        const char *e;
        size_t el;
        REQUIRE(lf_stop_feed(m, (const char *)data + at, piece, &e, &el, &stopped, &err) == LF_OK);
        REQUIRE(outlen + el <= size);
        memcpy(out + outlen, e, el);
        outlen += el;
        REQUIRE(lf_stop_held(m) < longest);
        at += piece;
    }
    if (!stopped) {
        const char *e;
        size_t el;
        lf_stop_flush(m, &e, &el);
        REQUIRE(outlen + el <= size);
        memcpy(out + outlen, e, el);
        outlen += el;
        REQUIRE(outlen == size);
    } else {
        REQUIRE(lf_stop_which(m) >= 0 && (size_t)lf_stop_which(m) < n);
    }
    REQUIRE(memcmp(out, data, outlen) == 0); /* emitted text is always a prefix of the input */
    free(out);
    lf_stop_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lf_proto_limits lim = lf_proto_default_limits();
    lim.max_new_tokens = 512;
    lf_gen_request *r = NULL;
    lf_err err;
    err.msg[0] = '\0';
    int status = 0;
    lf_status st = lf_proto_parse((const char *)data, size, &lim, &r, &status, &err);
    if (st != LF_OK) {
        REQUIRE(r == NULL);
        REQUIRE(status == 400 || status == 413 || status == 422);
        REQUIRE(err.msg[0] != '\0');
        char *e = lf_proto_error_body(status, err.msg, NULL);
        REQUIRE(e != NULL);
        free(e);
    } else {
        REQUIRE(status == 200 && r != NULL && r->n_inputs >= 1);
        if (r->kind == LF_REQ_GENERATE) {
            REQUIRE(r->n_inputs <= lim.max_inputs && r->inputs);
            for (size_t i = 0; i < r->n_inputs; i++) REQUIRE(r->inputs[i][0] != '\0');
        } else {
            REQUIRE(json_is_array(r->messages) && json_array_size(r->messages) > 0);
        }
        REQUIRE(r->params.max_new_tokens >= 1 && r->params.max_new_tokens <= lim.max_new_tokens);
        REQUIRE(r->params.temperature >= 0 && r->params.top_p > 0 && r->params.top_p <= 1);
        lf_proto_headers h = {NULL, r->model, NULL};
        int hs = 0;
        if (lf_proto_resolve_adapters(r, &h, loaded, NULL, &hs, &err) == LF_OK) {
            for (size_t i = 0; i < r->n_inputs; i++) REQUIRE(r->adapters[i] != NULL);
        } else {
            REQUIRE(hs == 404);
        }
    }
    /* builders over raw bytes (any bytes: invalid UTF-8, NULs) */
    size_t half = size / 2, len = 0;
    lf_gen_token tok = {7, (const char *)data, half, -1.0f, 0, NULL, 0};
    lf_gen_result res;
    memset(&res, 0, sizeof res);
    res.text = (const char *)data + half;
    res.text_len = size - half;
    res.prompt = r && r->inputs ? r->inputs[0] : NULL;
    res.prompt_len = res.prompt ? strlen(res.prompt) : 0;
    res.finish = (lf_finish_reason)(size % 5);
    res.error = "e";
    res.tokens = &tok;
    res.n_tokens = 1;
    lf_proto_out o = {1, (int)(size & 2), 1, (lf_stream_format)(size & 1)};
    char *s = lf_proto_generate_body(&res, 1, (int)(size & 4), &o, &len);
    check_json(s, len, 0);
    s = lf_proto_stream_token(&tok, 1, (size & 8) ? &res : NULL, &o, &len);
    check_json(s, len, 1);
    lf_chat_meta meta = {"chatcmpl-x", 1, r && r->model ? r->model : "m"};
    s = lf_proto_chat_body(&meta, &res, 1, &len);
    check_json(s, len, 0);
    lf_chat_delta d = {res.text, res.text_len, 1, &tok, 1, res.finish, "e", &res};
    s = lf_proto_chat_chunk(&meta, &d, o.format, &len);
    check_json(s, len, 1);
    stop_matcher(r, data, size);
    lf_proto_request_free(r);
    return 0;
}
