/* test_protocol.c - serve/protocol (every parse path and error status, hostile bodies, the generation parameters
 * of both bodies: each implemented one wired into lf_gen_params, each refused one a 422 naming it with its
 * no-op value accepted, unknown keys refused, adapter choice, response builders parsed back with jansson), serve/stop (stop strings split over pieces, overlapping
 * prefixes, UTF-8, a randomized split-invariance check against a whole-text reference) and serve/http (a
 * real server on a free loopback port spoken to with plain sockets: routing, 404/405/413, chunked
 * streaming from another thread, concurrency, client disconnect, graceful stop). Seed from LF_TEST_SEED or
 * time, printed. */
#define _GNU_SOURCE /* strcasestr */
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/rng.h"
#include "serve/http.h"
#include "serve/protocol.h"
#include "serve/stop.h"

static int passed, failed;
#define CHECK(cond, ...)                                \
    do {                                                \
        if (cond) {                                     \
            passed++;                                   \
        } else {                                        \
            failed++;                                   \
            printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            printf(__VA_ARGS__);                        \
            printf("\n");                               \
        }                                               \
    } while (0)

static lf_rng rng;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* =============================== parsing =============================== */

static lf_gen_request *parse_ok(const char *body, const char *what) {
    lf_gen_request *r = NULL;
    lf_err err = {0};
    int status = 0;
    lf_status st = lf_proto_parse(body, strlen(body), NULL, &r, &status, &err);
    CHECK(st == LF_OK && status == 200 && r, "%s: expected success, got %d: %s", what, status, err.msg);
    return st == LF_OK ? r : NULL;
}

/* Expect failure with an HTTP status and a message containing `needle`. */
static void parse_bad_n(const char *body, size_t len, const lf_proto_limits *lim, int want, const char *needle) {
    lf_gen_request *r = (lf_gen_request *)1;
    lf_err err = {0};
    int status = 0;
    lf_status st = lf_proto_parse(body, len, lim, &r, &status, &err);
    CHECK(st != LF_OK && status == want && r == NULL && strstr(err.msg, needle) != NULL,
          "body %.80s: want %d with '%s', got status %d (%s) msg '%s'", body, want, needle, status, lf_status_name(st),
          err.msg);
}
static void parse_bad(const char *body, int want, const char *needle) { parse_bad_n(body, strlen(body), NULL, want, needle); }

static void test_parse_generate(void) {
    lf_gen_request *r = parse_ok("{\"inputs\": \"Hello\"}", "minimal");
    if (r) {
        CHECK(r->kind == LF_REQ_GENERATE && r->n_inputs == 1 && !r->inputs_is_list && strcmp(r->inputs[0], "Hello") == 0,
              "minimal: inputs");
        lf_gen_params *p = &r->params;
        CHECK(p->max_new_tokens == 30 && p->temperature == 0 && !p->do_sample && p->top_k == 0 && p->top_p == 1.0 &&
                  p->repetition_penalty == 1.0 && !p->has_seed && p->n_stop == 0 && !p->details && !r->stream,
              "minimal: LMI defaults (greedy, 30 tokens)");
        CHECK(r->n_body_adapters == 0 && r->messages == NULL, "minimal: no adapters, no messages");
        lf_proto_request_free(r);
    }
    r = parse_ok("{\"inputs\": [\"a\", \"b\\u00e9\"], \"stream\": true, \"adapters\": [\"fr\", \"\"], \"parameters\": "
                 "{\"max_new_tokens\": 64, \"temperature\": 0.7, \"top_k\": 40, \"top_p\": 0.9, \"repetition_penalty\": "
                 "1.1, \"seed\": 1234, \"stop\": [\"</s>\", \"\\n\\n\"], \"stop_sequences\": [\"END\"], \"details\": true, "
                 "\"return_full_text\": true, \"decoder_input_details\": false, \"typical_p\": 0.5}}",
                 "full");
    if (r) {
        lf_gen_params *p = &r->params;
        CHECK(r->n_inputs == 2 && r->inputs_is_list && strcmp(r->inputs[1], "b\xc3\xa9") == 0 && r->stream, "full: inputs");
        CHECK(p->max_new_tokens == 64 && fabs(p->temperature - 0.7) < 1e-12 && p->do_sample && p->top_k == 40 &&
                  fabs(p->top_p - 0.9) < 1e-12 && fabs(p->repetition_penalty - 1.1) < 1e-12 && p->has_seed &&
                  p->seed == 1234 && p->details && p->return_full_text,
              "full: parameters");
        CHECK(p->n_stop == 3 && strcmp(p->stop[0], "</s>") == 0 && strcmp(p->stop[1], "\n\n") == 0 &&
                  strcmp(p->stop[2], "END") == 0,
              "full: stop + stop_sequences merged (%zu)", p->n_stop);
        CHECK(r->n_body_adapters == 2 && strcmp(r->body_adapters[0], "fr") == 0 && r->body_adapters[1][0] == 0,
              "full: per-input adapters");
        lf_proto_request_free(r);
    }
    /* effective sampling rules */
    struct {
        const char *params;
        int do_sample;
        double temp;
    } rules[] = {
        {"{\"temperature\": 0.7}", 1, 0.7},             /* a warper given -> sample (TGI) */
        {"{\"do_sample\": false, \"temperature\": 0.7}", 0, 0}, /* explicit greedy wins */
        {"{\"do_sample\": true}", 1, 1.0},              /* default temperature 1.0 */
        {"{\"do_sample\": true, \"temperature\": 0}", 0, 0},
        {"{\"top_k\": 5}", 1, 1.0},
        {"{\"top_p\": 0.5}", 1, 1.0},
        {"{\"top_p\": 1.0, \"top_k\": -1}", 0, 0},     /* "off" values do not switch sampling on */
        {"{\"temperature\": null, \"seed\": null}", 0, 0}, /* null = unset */
    };
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++) {
        char body[256];
        snprintf(body, sizeof body, "{\"inputs\": \"x\", \"parameters\": %s}", rules[i].params);
        r = parse_ok(body, rules[i].params);
        if (!r) continue;
        CHECK(r->params.do_sample == rules[i].do_sample && fabs(r->params.temperature - rules[i].temp) < 1e-12,
              "sampling rule %s: do_sample %d temperature %g", rules[i].params, r->params.do_sample, r->params.temperature);
        lf_proto_request_free(r);
    }
    r = parse_ok("{\"inputs\": \"x\", \"parameters\": {\"adapter_id\": \"de\", \"max_new_tokens\": 4096, \"seed\": 5.0}}",
                 "adapter_id");
    if (r) {
        CHECK(r->n_body_adapters == 1 && strcmp(r->body_adapters[0], "de") == 0 && r->params.max_new_tokens == 4096 &&
                  r->params.seed == 5,
              "TGI parameters.adapter_id, integral real seed");
        lf_proto_request_free(r);
    }
    r = parse_ok("{\"inputs\": \"x\", \"parameters\": {\"stop\": \"###\"}, \"messages\": null}", "stop string");
    if (r) {
        CHECK(r->kind == LF_REQ_GENERATE && r->params.n_stop == 1 && strcmp(r->params.stop[0], "###") == 0,
              "stop as one string; messages null ignored");
        lf_proto_request_free(r);
    }
}

static void test_parse_errors(void) {
    /* 400: malformed or wrong types */
    parse_bad("", 400, "empty");
    parse_bad("not json", 400, "invalid JSON");
    parse_bad("{\"inputs\": \"a\",}", 400, "invalid JSON");
    parse_bad("[1, 2]", 400, "must be a JSON object");
    parse_bad("{}", 400, "\"inputs\"");
    parse_bad("{\"prompt\": \"x\"}", 400, "\"messages\"");
    parse_bad("{\"inputs\": 5}", 400, "inputs must be a string or a list");
    parse_bad("{\"inputs\": [\"a\", 3]}", 400, "inputs[1] must be a string");
    parse_bad("{\"inputs\": \"a\", \"parameters\": 5}", 400, "parameters must be an object");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"temperature\": \"hot\"}}", 400, "parameters.temperature must be a number");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"max_new_tokens\": 2.5}}", 400, "parameters.max_new_tokens must be an integer");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"max_new_tokens\": \"10\"}}", 400, "parameters.max_new_tokens must be an integer");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"seed\": 1.5}}", 400, "parameters.seed");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"do_sample\": \"yes\"}}", 400, "parameters.do_sample must be a boolean");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"stop\": [1]}}", 400, "parameters.stop[0] must be a string");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"stop\": {}}}", 400, "parameters.stop must be");
    parse_bad("{\"inputs\": \"a\", \"stream\": \"true\"}", 400, "stream must be a boolean");
    parse_bad("{\"inputs\": \"a\", \"adapters\": 7}", 400, "adapters must be");
    parse_bad("{\"inputs\": \"a\", \"inputs\": \"b\"}", 400, "duplicate");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"seed\": 99999999999999999999999}}", 400, "invalid JSON");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"temperature\": 1e999}}", 400, "invalid JSON");
    /* 422: values out of range / unsupported */
    parse_bad("{\"inputs\": \"\"}", 422, "inputs must not be empty");
    parse_bad("{\"inputs\": []}", 422, "inputs must not be an empty list");
    parse_bad("{\"inputs\": [\"a\", \"\"]}", 422, "inputs[1] must not be empty");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"temperature\": -0.5}}", 422, "parameters.temperature must be >= 0");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"top_p\": 0}}", 422, "parameters.top_p must be in (0, 1]");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"top_p\": 1.5}}", 422, "parameters.top_p must be in (0, 1]");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"top_k\": -2}}", 422, "parameters.top_k must be >= -1");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"max_new_tokens\": 0}}", 422, "parameters.max_new_tokens must be >= 1");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"max_new_tokens\": 5000}}", 422, "parameters.max_new_tokens must be <= 4096");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"max_new_tokens\": 1e20}}", 422, "parameters.max_new_tokens must be <= 4096");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"max_new_tokens\": -1e300}}", 422, "parameters.max_new_tokens must be >= 1");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"repetition_penalty\": 0}}", 422, "parameters.repetition_penalty must be > 0");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"seed\": -1}}", 422, "parameters.seed must be >= 0");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"stop\": [\"\"]}}", 422, "parameters.stop[0] must not be empty");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"decoder_input_details\": true}}", 422, "decoder_input_details is not supported");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"best_of\": 2}}", 422, "best_of must be 1");
    parse_bad("{\"inputs\": \"a\", \"parameters\": {\"grammar\": {\"type\": \"json\"}}}", 422, "grammar");
    parse_bad("{\"inputs\": [\"a\", \"b\", \"c\"], \"adapters\": [\"x\", \"y\"]}", 422, "adapters has 2 entries for 3 inputs");
    parse_bad("{\"inputs\": \"a\", \"adapters\": \"x\", \"parameters\": {\"adapter_id\": \"y\"}}", 422, "not both");
    { /* the unsupported ones say so in the status code too */
        lf_gen_request *r = NULL;
        lf_err err = {0};
        int status = 0;
        const char *b = "{\"inputs\": \"a\", \"parameters\": {\"decoder_input_details\": true}}";
        CHECK(lf_proto_parse(b, strlen(b), NULL, &r, &status, &err) == LF_EUNSUPPORTED && status == 422,
              "unsupported -> LF_EUNSUPPORTED");
    }
    /* stop limits */
    char big[4096];
    strcpy(big, "{\"inputs\": \"a\", \"parameters\": {\"stop\": [");
    for (int i = 0; i < 17; i++) strcat(big, i ? ",\"s\"" : "\"s\"");
    strcat(big, "]}}");
    parse_bad(big, 422, "at most 16 stop sequences");
    snprintf(big, sizeof big, "{\"inputs\": \"a\", \"parameters\": {\"stop\": \"%0300d\"}}", 0);
    parse_bad(big, 422, "300 bytes; the limit is 256");
    /* caller limits */
    lf_proto_limits lim = lf_proto_default_limits();
    lim.max_new_tokens = 100;
    const char *b200 = "{\"inputs\": \"a\", \"parameters\": {\"max_new_tokens\": 200}}";
    parse_bad_n(b200, strlen(b200), &lim, 422, "must be <= 100");
    lim.max_inputs = 2;
    const char *b3 = "{\"inputs\": [\"a\", \"b\", \"c\"]}";
    parse_bad_n(b3, strlen(b3), &lim, 422, "3 prompts; the limit is 2");
}

static void test_parse_hostile(void) {
    /* nesting: depth 64 accepted (the root object is level 1), 65 rejected before jansson (inside "tools",
     * the one field that takes any JSON) */
    size_t cap = 300000;
    char *b = malloc(cap);
    for (int depth = 64; depth <= 65; depth++) {
        size_t at = (size_t)sprintf(b, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"tools\": ");
        for (int i = 1; i < depth; i++) b[at++] = '[';
        for (int i = 1; i < depth; i++) b[at++] = ']';
        b[at++] = '}';
        b[at] = '\0';
        lf_gen_request *r = NULL;
        lf_err err = {0};
        int status = 0;
        lf_status st = lf_proto_parse(b, at, NULL, &r, &status, &err);
        if (depth == 64) CHECK(st == LF_OK, "depth 64 accepted: %s", err.msg);
        else CHECK(status == 400 && strstr(err.msg, "deeper than 64"), "depth 65: %d %s", status, err.msg);
        lf_proto_request_free(r);
    }
    /* 100k levels: rejected quickly (jansson alone would recurse to its 2048 limit) */
    size_t at = 0;
    for (int i = 0; i < 100000; i++) b[at++] = '[';
    b[at] = '\0';
    double t0 = now_s();
    parse_bad_n(b, at, NULL, 400, "deeper than 64");
    CHECK(now_s() - t0 < 0.5, "deep nesting rejected fast");
    /* brackets inside strings do not count */
    at = (size_t)sprintf(b, "{\"inputs\": \"");
    for (int i = 0; i < 1000; i++) b[at++] = '[';
    at += (size_t)sprintf(b + at, "\\\"{{{\"}");
    lf_gen_request *r = NULL;
    lf_err err = {0};
    int status = 0;
    CHECK(lf_proto_parse(b, at, NULL, &r, &status, &err) == LF_OK && r && strlen(r->inputs[0]) == 1004,
          "brackets in strings are text: %s", err.msg);
    lf_proto_request_free(r);
    free(b);
    /* NUL bytes: raw, and escaped */
    const char raw_nul[] = "{\"inputs\": \"a\0b\"}";
    parse_bad_n(raw_nul, sizeof raw_nul - 1, NULL, 400, "NUL byte at offset 13");
    parse_bad("{\"inputs\": \"a\\u0000b\"}", 400, "invalid JSON");
    /* invalid UTF-8: overlong, lone continuation, surrogate escape */
    parse_bad("{\"inputs\": \"\xc0\xaf\"}", 400, "invalid JSON");
    parse_bad("{\"inputs\": \"\x80\"}", 400, "invalid JSON");
    parse_bad("{\"inputs\": \"\\ud800\"}", 400, "invalid JSON");
    /* 7 MB body: 413 from the length alone (even though it is not JSON) */
    size_t n7 = (size_t)7 << 20;
    char *seven = malloc(n7);
    memset(seven, '[', n7);
    t0 = now_s();
    parse_bad_n(seven, n7, NULL, 413, "7340032 bytes; the limit is 6291456");
    CHECK(now_s() - t0 < 0.05, "413 decided before scanning");
    /* just under the limit: a 6 MB prompt parses */
    size_t n6 = LF_PROTO_MAX_BODY_BYTES;
    at = (size_t)sprintf(seven, "{\"inputs\": \"");
    memset(seven + at, 'x', n6 - at - 2);
    memcpy(seven + n6 - 2, "\"}", 2);
    r = NULL;
    CHECK(lf_proto_parse(seven, n6, NULL, &r, &status, &err) == LF_OK && r && strlen(r->inputs[0]) == n6 - 14,
          "a body of exactly 6291456 bytes is accepted: %s", err.msg);
    lf_proto_request_free(r);
    free(seven);
    /* random garbage never crashes and never succeeds without inputs/messages */
    char junk[256];
    int crashes_not_possible_but_statuses_ok = 1;
    for (int it = 0; it < 2000; it++) {
        size_t n = 1 + (uint32_t)lf_rng_next(&rng) % sizeof junk;
        static const char alphabet[] = "{}[]\":,0123456789.eE+-tfnul\\ \xc3\xa9" "abc";
        for (size_t i = 0; i < n; i++) junk[i] = alphabet[(uint32_t)lf_rng_next(&rng) % (sizeof alphabet - 1)];
        r = NULL;
        lf_status st = lf_proto_parse(junk, n, NULL, &r, &status, &err);
        if (st == LF_OK) lf_proto_request_free(r);
        else if (status != 400 && status != 422) crashes_not_possible_but_statuses_ok = 0;
    }
    CHECK(crashes_not_possible_but_statuses_ok, "random bodies answer 400/422");
}

static void test_parse_chat(void) {
    lf_gen_request *r = parse_ok(
        "{\"model\": \"tiny\", \"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", "
        "\"content\": [{\"type\": \"text\", \"text\": \"Hi\"}, {\"type\": \"text\", \"text\": \"there\"}]}, {\"role\": "
        "\"assistant\", \"tool_calls\": [{\"id\": \"1\"}]}], \"max_tokens\": 50, \"top_p\": 0.5, \"stop\": \"\\n\", "
        "\"seed\": 7, \"stream\": true, \"logprobs\": true, \"top_logprobs\": 3, \"n\": 1, \"stream_options\": "
        "{\"include_usage\": true}, \"tools\": [{\"type\": \"function\"}], \"frequency_penalty\": 0, \"logit_bias\": {}}",
        "chat full");
    if (r) {
        CHECK(r->kind == LF_REQ_CHAT && r->n_inputs == 1 && r->inputs == NULL && r->stream && r->include_usage,
              "chat: kind");
        CHECK(json_array_size(r->messages) == 3 &&
                  strcmp(json_string_value(json_object_get(json_array_get(r->messages, 1), "content")), "Hi\nthere") == 0,
              "chat: text parts joined with \\n");
        CHECK(json_object_get(json_array_get(r->messages, 2), "content") == NULL, "chat: tool-call turn without content");
        lf_gen_params *p = &r->params;
        CHECK(p->max_new_tokens == 50 && p->do_sample && p->temperature == 1.0 && fabs(p->top_p - 0.5) < 1e-12 &&
                  p->n_stop == 1 && strcmp(p->stop[0], "\n") == 0 && p->seed == 7 && p->logprobs && p->top_logprobs == 3,
              "chat: parameters");
        CHECK(r->model && strcmp(r->model, "tiny") == 0 && json_array_size(r->tools) == 1, "chat: model, tools");
        lf_proto_request_free(r);
    }
    r = parse_ok("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"temperature\": 0, \"max_completion_tokens\": 9}",
                 "chat greedy");
    if (r) {
        CHECK(!r->params.do_sample && r->params.temperature == 0 && r->params.max_new_tokens == 9 && !r->stream,
              "chat: temperature 0 greedy, max_completion_tokens");
        lf_proto_request_free(r);
    }
    r = parse_ok("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}", "chat defaults");
    if (r) {
        CHECK(r->params.max_new_tokens == 4096 && r->params.do_sample && r->params.temperature == 1.0,
              "chat: default max_tokens = the limit, sampling at 1.0 (OpenAI)");
        lf_proto_request_free(r);
    }
    parse_bad("{\"messages\": \"hi\"}", 400, "messages must be a list");
    parse_bad("{\"messages\": []}", 422, "messages must not be empty");
    parse_bad("{\"messages\": [5]}", 400, "messages[0] must be an object");
    parse_bad("{\"messages\": [{\"content\": \"x\"}]}", 400, "messages[0].role must be a string");
    parse_bad("{\"messages\": [{\"role\": \"wizard\", \"content\": \"x\"}]}", 422, "messages[0].role 'wizard'");
    parse_bad("{\"messages\": [{\"role\": \"user\"}]}", 400, "messages[0].content is required");
    parse_bad("{\"messages\": [{\"role\": \"user\", \"content\": 3}]}", 400, "messages[0].content must be a string");
    parse_bad("{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", \"image_url\": {}}]}]}", 422,
              "messages[0].content[0].type 'image_url' is not supported");
    parse_bad("{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}]}", 400,
              "messages[0].content[0].text must be a string");
    const char *one = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], ";
    struct {
        const char *tail;
        int status;
        const char *needle;
    } bad[] = {
        {"\"n\": 2}", 422, "n must be 1"},
        {"\"top_logprobs\": 2}", 422, "top_logprobs needs logprobs"},
        {"\"logprobs\": true, \"top_logprobs\": 21}", 422, "top_logprobs must be <= 20"},
        {"\"frequency_penalty\": 2.5}", 422, "frequency_penalty must be in [-2, 2], got 2.5"},
        {"\"presence_penalty\": -3}", 422, "presence_penalty must be in [-2, 2], got -3"},
        {"\"logit_bias\": {\"1\": 2}}", 422, "logit_bias is not supported"},
        {"\"response_format\": {\"type\": \"json_object\"}}", 422, "response_format type 'json_object'"},
        {"\"max_tokens\": 0}", 422, "max_tokens must be >= 1"},
        {"\"temperature\": -1}", 422, "temperature must be >= 0"},
        {"\"model\": 5}", 400, "model must be a string"},
        {"\"tools\": {}}", 400, "tools must be a list"},
        {"\"stream_options\": {\"include_usage\": 1}}", 400, "stream_options.include_usage must be a boolean"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char body[512];
        snprintf(body, sizeof body, "%s%s", one, bad[i].tail);
        parse_bad(body, bad[i].status, bad[i].needle);
    }
}

/* =============================== generation parameters (issue 11) =============================== */

/* body = the generate form {"inputs": "x", "parameters": {P}} (chat 0) or the chat form {"messages": [...], P}
 * (chat 1) for the parameter text P. */
static void params_body(char *buf, size_t cap, int chat, const char *p) {
    if (chat) snprintf(buf, cap, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]%s%s}", p[0] ? ", " : "", p);
    else snprintf(buf, cap, "{\"inputs\": \"x\", \"parameters\": {%s}}", p);
}

static lf_gen_request *params_ok(int chat, const char *p) {
    char body[2048], what[2100];
    params_body(body, sizeof body, chat, p);
    snprintf(what, sizeof what, "%s: %s", chat ? "chat" : "generate", p);
    return parse_ok(body, what);
}

/* Failure with `want` and a message holding the route's prefix + needle ("parameters.min_p must ..."). */
static void params_bad(int chat, const char *p, int want, const char *needle) {
    char body[2048], full[512];
    params_body(body, sizeof body, chat, p);
    snprintf(full, sizeof full, "%s%s", chat ? "" : "parameters.", needle);
    parse_bad(body, want, full);
}

static void test_parse_params_issue11(void) {
    int passed0 = passed, failed0 = failed;
    for (int chat = 0; chat <= 1; chat++) {
        const char *route = chat ? "chat" : "generate";
        /* defaults: everything off */
        lf_gen_request *r = params_ok(chat, "");
        if (r) {
            lf_gen_params *p = &r->params;
            CHECK(p->min_p == 0 && p->typical_p == 1.0 && p->presence_penalty == 0 && p->frequency_penalty == 0 &&
                      p->n_stop_token_ids == 0 && p->stop_token_ids == NULL && !p->ignore_eos && p->truncate == 0,
                  "%s: new parameters default to off", route);
            lf_proto_request_free(r);
        }
        /* every implemented one, wired into lf_gen_params */
        r = params_ok(chat, "\"min_p\": 0.1, \"typical_p\": 0.5, \"presence_penalty\": 0.5, \"frequency_penalty\": -1.25, "
                            "\"stop_token_ids\": [5, 7, 0], \"ignore_eos\": true, \"truncate\": 12, \"temperature\": 0.8");
        if (r) {
            lf_gen_params *p = &r->params;
            CHECK(fabs(p->min_p - 0.1) < 1e-12 && fabs(p->typical_p - 0.5) < 1e-12 && p->presence_penalty == 0.5 &&
                      p->frequency_penalty == -1.25 && p->ignore_eos && p->truncate == 12 && p->do_sample &&
                      fabs(p->temperature - 0.8) < 1e-12,
                  "%s: min_p typical_p presence frequency ignore_eos truncate wired", route);
            CHECK(p->n_stop_token_ids == 3 && p->stop_token_ids[0] == 5 && p->stop_token_ids[1] == 7 &&
                      p->stop_token_ids[2] == 0,
                  "%s: stop_token_ids (%zu)", route, p->n_stop_token_ids);
            lf_proto_request_free(r);
        }
        r = params_ok(chat, "\"truncate_prompt_tokens\": 8, \"stop_token_ids\": [], \"presence_penalty\": -2, "
                            "\"frequency_penalty\": 2, \"min_p\": 0, \"typical_p\": 1");
        if (r) {
            CHECK(r->params.truncate == 8 && r->params.n_stop_token_ids == 0 && r->params.presence_penalty == -2 &&
                      r->params.frequency_penalty == 2,
                  "%s: vLLM's truncate_prompt_tokens, empty stop_token_ids, penalty edges", route);
            lf_proto_request_free(r);
        }
        /* range and type errors name the field */
        params_bad(chat, "\"min_p\": 1.5", 422, "min_p must be in [0, 1], got 1.5");
        params_bad(chat, "\"min_p\": -0.1", 422, "min_p must be in [0, 1]");
        params_bad(chat, "\"min_p\": \"a\"", 400, "min_p must be a number");
        params_bad(chat, "\"typical_p\": 0", 422, "typical_p must be in (0, 1]");
        params_bad(chat, "\"typical_p\": 1.01", 422, "typical_p must be in (0, 1]");
        params_bad(chat, "\"presence_penalty\": 2.5", 422, "presence_penalty must be in [-2, 2], got 2.5");
        params_bad(chat, "\"frequency_penalty\": -3", 422, "frequency_penalty must be in [-2, 2], got -3");
        params_bad(chat, "\"frequency_penalty\": true", 400, "frequency_penalty must be a number");
        params_bad(chat, "\"stop_token_ids\": 5", 400, "stop_token_ids must be a list of integer token ids");
        params_bad(chat, "\"stop_token_ids\": [1, \"2\"]", 400, "stop_token_ids[1] must be an integer");
        params_bad(chat, "\"stop_token_ids\": [1.5]", 400, "stop_token_ids[0] must be an integer");
        params_bad(chat, "\"stop_token_ids\": [-1]", 422, "stop_token_ids[0] must be a token id in [0, 2147483647], got -1");
        params_bad(chat, "\"stop_token_ids\": [4294967296]", 422, "stop_token_ids[0] must be a token id");
        params_bad(chat, "\"ignore_eos\": \"yes\"", 400, "ignore_eos must be a boolean");
        params_bad(chat, "\"truncate\": 0", 422, "truncate must be >= 1");
        params_bad(chat, "\"truncate\": \"5\"", 400, "truncate must be an integer");
        params_bad(chat, "\"truncate_prompt_tokens\": -1", 422, "truncate_prompt_tokens must be >= 1");
        {
            char many[2048] = "\"stop_token_ids\": [";
            for (int i = 0; i < 65; i++) snprintf(many + strlen(many), sizeof many - strlen(many), "%s%d", i ? "," : "", i);
            strcat(many, "]");
            params_bad(chat, many, 422, "stop_token_ids: at most 64 ids are allowed, got 65");
        }
        char both[2048];
        params_body(both, sizeof both, chat, "\"truncate\": 3, \"truncate_prompt_tokens\": 4");
        parse_bad(both, 422, "not both");
        /* refused: named, 422, LF_EUNSUPPORTED; their no-op values (what clients send as defaults) accepted */
        struct {
            const char *bad, *needle, *noop;
        } refused[] = {
            {"\"watermark\": true", "watermark is not supported", "\"watermark\": false"},
            {"\"num_beams\": 4", "num_beams must be 1, got 4", "\"num_beams\": 1"},
            {"\"best_of\": 2", "best_of must be 1, got 2", "\"best_of\": 1"},
            {"\"n\": 3", "n must be 1, got 3", "\"n\": 1"},
            {"\"top_n_tokens\": 5", "top_n_tokens must be 0, got 5", "\"top_n_tokens\": 0"},
            {"\"decoder_input_details\": true", "decoder_input_details is not supported", "\"decoder_input_details\": false"},
            {"\"logit_bias\": {\"1\": 2}", "logit_bias is not supported", "\"logit_bias\": {}"},
            {"\"use_beam_search\": true", "use_beam_search is not supported", "\"use_beam_search\": false"},
            {"\"length_penalty\": 2", "length_penalty must be 1, got 2", "\"length_penalty\": 1.0"},
            {"\"early_stopping\": true", "early_stopping is not supported", "\"early_stopping\": false"},
            {"\"min_tokens\": 3", "min_tokens must be 0, got 3", "\"min_tokens\": 0"},
            {"\"no_repeat_ngram_size\": 2", "no_repeat_ngram_size must be 0, got 2", "\"no_repeat_ngram_size\": 0"},
            {"\"skip_special_tokens\": false", "skip_special_tokens is not supported", "\"skip_special_tokens\": true"},
            {"\"spaces_between_special_tokens\": false", "spaces_between_special_tokens is not supported",
             "\"spaces_between_special_tokens\": true"},
            {"\"include_stop_str_in_output\": true", "include_stop_str_in_output is not supported",
             "\"include_stop_str_in_output\": false"},
            {"\"grammar\": {\"type\": \"json\", \"value\": {}}", "grammar is not supported", "\"grammar\": null"},
        };
        for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
            params_bad(chat, refused[i].bad, 422, refused[i].needle);
            char body[2048];
            params_body(body, sizeof body, chat, refused[i].bad);
            lf_gen_request *q = NULL;
            lf_err err = {0};
            int status = 0;
            CHECK(lf_proto_parse(body, strlen(body), NULL, &q, &status, &err) == LF_EUNSUPPORTED && status == 422,
                  "%s: %s -> LF_EUNSUPPORTED", route, refused[i].bad);
            lf_proto_request_free(q);
            q = params_ok(chat, refused[i].noop);
            lf_proto_request_free(q);
        }
        params_bad(chat, "\"num_beams\": 0", 422, "num_beams must be >= 1");
        params_bad(chat, "\"watermark\": 1", 400, "watermark must be a boolean");
        params_bad(chat, "\"logit_bias\": []", 400, "logit_bias must be an object");
        /* unknown keys: 422 naming them; null values count as absent */
        params_bad(chat, "\"frobnicate\": 1", 422, "frobnicate is not a known parameter");
        params_bad(chat, "\"temperature\": 0.5, \"typo_p\": 0.5", 422, "typo_p is not a known parameter");
        lf_proto_request_free(params_ok(chat, "\"frobnicate\": null"));
    }
    /* the other body's names say where they belong */
    params_bad(0, "\"max_tokens\": 5", 422, "max_tokens is not a known parameter here (the chat body's name");
    params_bad(0, "\"logprobs\": true", 422, "logprobs is not a known parameter here");
    params_bad(1, "\"max_new_tokens\": 5", 422, "max_new_tokens is not a known parameter here (a generate-body");
    params_bad(1, "\"do_sample\": true", 422, "do_sample is not a known parameter here");
    params_bad(0, "\"stream\": true", 422, "stream belongs at the top level of the body");
    /* the generate body's top level: only inputs / parameters / stream / adapters */
    parse_bad("{\"inputs\": \"x\", \"temperature\": 0.5}", 422, "temperature is not a known top-level key of the generate "
                                                            "body; put it under \"parameters\"");
    parse_bad("{\"inputs\": \"x\", \"extra\": 1}", 422, "extra is not a known parameter");
    lf_proto_request_free(parse_ok("{\"inputs\": \"x\", \"extra\": null, \"messages\": null}", "generate: null extras"));
    /* chat-only options */
    parse_bad("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stream_options\": {\"include_usage\": true, "
              "\"continuous_usage_stats\": true}}",
              422, "stream_options.continuous_usage_stats is not a known parameter");
    parse_bad("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tool_choice\": \"required\"}", 422,
              "tool_choice is not supported");
    parse_bad("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"parallel_tool_calls\": false}", 422,
              "parallel_tool_calls");
    parse_bad("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"user\": 5}", 400, "user must be a string");
    lf_proto_request_free(parse_ok("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tool_choice\": \"auto\", "
                                   "\"parallel_tool_calls\": true, \"user\": \"u-1\"}",
                                   "chat: tool_choice auto, parallel_tool_calls true, user (metadata)"));
    /* sampling switch of the generate body: min_p / typical_p turn it on like the other warpers; the penalties,
     * ignore_eos and stop ids do not */
    struct {
        const char *params;
        int do_sample;
    } sw[] = {{"\"min_p\": 0.05", 1}, {"\"typical_p\": 0.9", 1}, {"\"min_p\": 0", 0}, {"\"typical_p\": 1.0", 0},
              {"\"presence_penalty\": 1, \"frequency_penalty\": 1", 0}, {"\"min_p\": 0.05, \"do_sample\": false", 0},
              {"\"ignore_eos\": true, \"stop_token_ids\": [3]", 0}};
    for (size_t i = 0; i < sizeof sw / sizeof sw[0]; i++) {
        lf_gen_request *r = params_ok(0, sw[i].params);
        if (!r) continue;
        CHECK(r->params.do_sample == sw[i].do_sample, "generate %s: do_sample %d", sw[i].params, r->params.do_sample);
        lf_proto_request_free(r);
    }
    /* what TGI's Python client sends: every field, unset ones as null */
    lf_gen_request *r = parse_ok(
        "{\"inputs\": \"x\", \"stream\": false, \"parameters\": {\"best_of\": null, \"decoder_input_details\": false, "
        "\"details\": true, \"do_sample\": false, \"frequency_penalty\": null, \"grammar\": null, \"max_new_tokens\": 20, "
        "\"repetition_penalty\": null, \"return_full_text\": false, \"seed\": null, \"stop\": [], \"temperature\": null, "
        "\"top_k\": null, \"top_n_tokens\": null, \"top_p\": null, \"truncate\": null, \"typical_p\": null, "
        "\"watermark\": false, \"adapter_id\": null}}",
        "TGI client defaults");
    if (r) {
        CHECK(r->params.max_new_tokens == 20 && r->params.details && !r->params.do_sample && r->params.typical_p == 1.0,
              "TGI client defaults parsed as greedy, 20 tokens");
        lf_proto_request_free(r);
    }
    printf("generation parameters (issue 11): %d passed, %d failed\n", passed - passed0, failed - failed0);
}

/* =============================== adapters =============================== */

static int fake_loaded(void *user, const char *name) {
    (void)user;
    const char *set[] = {"fr", "de", "ic-fr", "tm", NULL};
    for (int i = 0; set[i]; i++)
        if (strcmp(set[i], name) == 0) return 1;
    return 0;
}

static void resolve_case(const char *body, lf_proto_headers h, lf_proto_is_loaded_fn f, int want_status,
                         const char *want0, const char *want1, lf_adapter_source want_src, const char *what) {
    lf_gen_request *r = parse_ok(body, what);
    if (!r) return;
    lf_err err = {0};
    int status = 0;
    lf_status st = lf_proto_resolve_adapters(r, &h, f, NULL, &status, &err);
    if (want_status != 200) {
        CHECK(st != LF_OK && status == want_status && r->adapters == NULL && strstr(err.msg, "was not found"),
              "%s: want %d, got %d (%s)", what, want_status, status, err.msg);
    } else {
        int ok = st == LF_OK && status == 200 && r->adapters && strcmp(r->adapters[0], want0) == 0 &&
                 (!want1 || strcmp(r->adapters[1], want1) == 0) && r->adapter_source == want_src;
        CHECK(ok, "%s: got st %d adapters[0]='%s' source %d (%s)", what, st, r->adapters ? r->adapters[0] : "(null)",
              r->adapter_source, err.msg);
    }
    lf_proto_request_free(r);
}

static void test_adapters(void) {
    lf_proto_headers none = {NULL, NULL, NULL};
    const char *gen = "{\"inputs\": \"x\", \"adapters\": \"de\"}";
    resolve_case(gen, (lf_proto_headers){"fr", NULL, NULL}, fake_loaded, 200, "fr", NULL, LF_ADAPTER_FROM_HEADER_ID,
                 "Adapter-Identifier overrides the body");
    resolve_case(gen, (lf_proto_headers){"zz", NULL, NULL}, fake_loaded, 404, NULL, NULL, 0, "unknown Adapter-Identifier");
    resolve_case(gen, (lf_proto_headers){"", "ic-fr", NULL}, fake_loaded, 200, "ic-fr", NULL, LF_ADAPTER_FROM_HEADER_IC,
                 "empty identifier ignored, Inference-Component names a loaded adapter");
    resolve_case(gen, (lf_proto_headers){NULL, "base-ic", NULL}, fake_loaded, 200, "de", NULL, LF_ADAPTER_FROM_BODY,
                 "Inference-Component of the base model falls through to the body");
    resolve_case("{\"inputs\": \"x\"}", (lf_proto_headers){NULL, NULL, "prefix/tm.tar.gz"}, fake_loaded, 200, "tm", NULL,
                 LF_ADAPTER_FROM_HEADER_TARGET, "Target-Model base name");
    resolve_case("{\"inputs\": \"x\"}", (lf_proto_headers){NULL, NULL, "tm"}, fake_loaded, 200, "tm", NULL,
                 LF_ADAPTER_FROM_HEADER_TARGET, "Target-Model exact");
    resolve_case("{\"inputs\": \"x\"}", (lf_proto_headers){NULL, NULL, "other.tar.gz"}, fake_loaded, 200, "", NULL,
                 LF_ADAPTER_FROM_NONE, "Target-Model not an adapter -> base");
    resolve_case("{\"inputs\": [\"a\", \"b\"], \"adapters\": [\"fr\", \"\"]}", none, fake_loaded, 200, "fr", "", LF_ADAPTER_FROM_BODY,
                 "per-input body adapters");
    resolve_case("{\"inputs\": [\"a\", \"b\"], \"adapters\": \"de\"}", none, fake_loaded, 200, "de", "de", LF_ADAPTER_FROM_BODY,
                 "one body adapter for every input");
    resolve_case("{\"inputs\": [\"a\", \"b\"], \"adapters\": [\"\", \"\"]}", none, fake_loaded, 200, "", "", LF_ADAPTER_FROM_NONE,
                 "all-empty body adapters = base");
    resolve_case("{\"inputs\": \"x\", \"adapters\": \"xx\"}", none, fake_loaded, 404, NULL, NULL, 0, "unknown body adapter");
    resolve_case("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"model\": \"de\"}", none, fake_loaded, 200, "de",
                 NULL, LF_ADAPTER_FROM_MODEL, "chat model names an adapter (vLLM style)");
    resolve_case("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"model\": \"llama\"}", none, fake_loaded, 200, "",
                 NULL, LF_ADAPTER_FROM_NONE, "chat model of the base");
    resolve_case("{\"inputs\": \"x\"}", none, fake_loaded, 200, "", NULL, LF_ADAPTER_FROM_NONE, "nothing -> base");
    resolve_case(gen, (lf_proto_headers){"anything", NULL, NULL}, NULL, 200, "anything", NULL, LF_ADAPTER_FROM_HEADER_ID,
                 "no is_loaded: identifier taken as is");
    resolve_case(gen, (lf_proto_headers){NULL, "ic-fr", "tm"}, NULL, 200, "de", NULL, LF_ADAPTER_FROM_BODY,
                 "no is_loaded: IC/Target-Model headers cannot be checked, body used");
}

/* =============================== builders =============================== */

static json_t *load(const char *s, size_t len, const char *what) {
    json_error_t je;
    json_t *j = s ? json_loadb(s, len, 0, &je) : NULL;
    CHECK(j != NULL, "%s: output is not JSON: %s (%s)", what, s ? s : "(null)", s ? je.text : "");
    return j;
}

static const char *jget_str(json_t *o, const char *path) { /* "a.b.0.c" */
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    json_t *cur = o;
    for (char *tok = strtok(buf, "."); tok && cur; tok = strtok(NULL, "."))
        cur = json_is_array(cur) ? json_array_get(cur, (size_t)atoi(tok)) : json_object_get(cur, tok);
    return json_is_string(cur) ? json_string_value(cur) : NULL;
}
static json_t *jget(json_t *o, const char *path) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    json_t *cur = o;
    for (char *tok = strtok(buf, "."); tok && cur; tok = strtok(NULL, "."))
        cur = json_is_array(cur) ? json_array_get(cur, (size_t)atoi(tok)) : json_object_get(cur, tok);
    return cur;
}

static void test_builders(void) {
    lf_gen_token toks[3] = {{5, "Hel", 3, -0.5f, 0, NULL, 0}, {9, "lo", 2, -INFINITY, 0, NULL, 0}, {2, "</s>", 4, -0.1f, 1, NULL, 0}};
    lf_gen_result res;
    memset(&res, 0, sizeof res);
    res.text = "Hello";
    res.text_len = 5;
    res.prompt = "Say: ";
    res.prompt_len = 5;
    res.finish = LF_FINISH_EOS;
    res.prompt_tokens = 4;
    res.generated_tokens = 3;
    res.seed = 42;
    res.has_seed = 1;
    res.tokens = toks;
    res.n_tokens = 3;
    lf_proto_out o = {1, 0, 0, LF_STREAM_JSONLINES};
    size_t len = 0;
    char *s = lf_proto_generate_body(&res, 1, 0, &o, &len);
    json_t *j = load(s, len, "generate body");
    if (j) {
        CHECK(json_is_object(j) && strcmp(jget_str(j, "generated_text"), "Hello") == 0, "generate: object with generated_text");
        CHECK(strcmp(jget_str(j, "details.finish_reason"), "eos_token") == 0 &&
                  json_integer_value(jget(j, "details.generated_tokens")) == 3 && json_integer_value(jget(j, "details.seed")) == 42,
              "generate: details");
        CHECK(json_array_size(jget(j, "details.tokens")) == 3 && json_integer_value(jget(j, "details.tokens.1.id")) == 9 &&
                  json_real_value(jget(j, "details.tokens.1.log_prob")) == -9999.0 &&
                  fabs(json_real_value(jget(j, "details.tokens.0.log_prob")) + 0.5) < 1e-6,
              "generate: tokens with log_prob (-inf reported as -9999)");
        json_decref(j);
    }
    free(s);
    o.details = 0;
    o.return_full_text = 1;
    s = lf_proto_generate_body(&res, 1, 0, &o, &len);
    j = load(s, len, "full text");
    if (j) {
        CHECK(strcmp(jget_str(j, "generated_text"), "Say: Hello") == 0 && !json_object_get(j, "details"),
              "return_full_text prepends the prompt, no details unless asked");
        json_decref(j);
    }
    free(s);
    o.return_full_text = 0;
    lf_gen_result two[2] = {res, res};
    two[1].text = "bad \xff\xfe utf8 \xe2\x82";
    two[1].text_len = strlen(two[1].text);
    two[1].finish = LF_FINISH_LENGTH;
    s = lf_proto_generate_body(two, 2, 1, &o, &len);
    j = load(s, len, "list body");
    if (j) {
        CHECK(json_array_size(j) == 2 && strcmp(jget_str(j, "1.generated_text"), "bad \xef\xbf\xbd\xef\xbf\xbd utf8 \xef\xbf\xbd\xef\xbf\xbd") == 0,
              "list answer; invalid UTF-8 replaced by U+FFFD: %s", s);
        json_decref(j);
    }
    free(s);
    o.tgi_compat = 1;
    o.details = 1;
    s = lf_proto_generate_body(&res, 1, 0, &o, &len);
    j = load(s, len, "tgi body");
    if (j) {
        CHECK(json_array_size(j) == 1 && json_is_array(jget(j, "0.details.prefill")) &&
                  json_object_get(jget(j, "0.details.tokens.0"), "logprob") != NULL,
              "tgi_compat: a list, prefill, logprob key");
        json_decref(j);
    }
    free(s);
    o.tgi_compat = 0;
    lf_gen_result er = res;
    er.finish = LF_FINISH_ERROR;
    er.error = "CUDA out of memory";
    er.text_len = 0;
    s = lf_proto_generate_body(&er, 1, 0, &o, &len);
    j = load(s, len, "error result");
    if (j) {
        CHECK(strcmp(jget_str(j, "generated_text"), "") == 0 && strcmp(jget_str(j, "details.finish_reason"), "error") == 0 &&
                  strcmp(jget_str(j, "error"), "CUDA out of memory") == 0,
              "failed non-stream result: empty text, finish_reason error");
        json_decref(j);
    }
    free(s);
    /* NUL byte in generated text survives as \u0000 */
    lf_gen_result nul = res;
    nul.text = "a\0b";
    nul.text_len = 3;
    o.details = 0;
    s = lf_proto_generate_body(&nul, 1, 0, &o, &len);
    CHECK(s && strstr(s, "a\\u0000b") != NULL && strlen(s) == len, "NUL in output escaped: %s", s ? s : "");
    free(s);

    /* streaming: JSON lines */
    o.format = LF_STREAM_JSONLINES;
    s = lf_proto_stream_token(&toks[0], 1, NULL, &o, &len);
    CHECK(s && len > 1 && s[len - 1] == '\n' && memchr(s, '\n', len - 1) == NULL, "jsonlines: one line");
    j = load(s, len, "stream token");
    if (j) {
        CHECK(json_integer_value(jget(j, "token.id")) == 5 && strcmp(jget_str(j, "token.text"), "Hel") == 0 &&
                  json_is_false(jget(j, "token.special")) && json_is_null(json_object_get(j, "generated_text")) &&
                  json_is_null(json_object_get(j, "details")),
              "stream token: token, null generated_text/details");
        json_decref(j);
    }
    free(s);
    s = lf_proto_stream_token(&toks[2], 3, &res, &o, &len);
    j = load(s, len, "final stream token");
    if (j) {
        CHECK(strcmp(jget_str(j, "generated_text"), "Hello") == 0 && strcmp(jget_str(j, "details.finish_reason"), "eos_token") == 0 &&
                  json_integer_value(jget(j, "details.generated_tokens")) == 3 && json_is_true(jget(j, "token.special")),
              "final stream line: generated_text + details");
        json_decref(j);
    }
    free(s);
    /* SSE + TGI keys */
    o.format = LF_STREAM_SSE;
    o.tgi_compat = 1;
    s = lf_proto_stream_token(&toks[1], 2, NULL, &o, &len);
    CHECK(s && strncmp(s, "data: ", 6) == 0 && len > 8 && strcmp(s + len - 2, "\n\n") == 0, "sse framing");
    j = s ? load(s + 6, len - 8, "sse token") : NULL;
    if (j) {
        CHECK(json_integer_value(json_object_get(j, "index")) == 2 && json_object_get(json_object_get(j, "token"), "logprob"),
              "tgi stream: index and logprob");
        json_decref(j);
    }
    free(s);
    o.tgi_compat = 0;
    o.format = LF_STREAM_JSONLINES;
    s = lf_proto_stream_error("engine failed", 500, 7, &o, &len);
    j = load(s, len, "stream error");
    if (j) {
        CHECK(json_integer_value(jget(j, "token.id")) == -1 && strcmp(jget_str(j, "details.finish_reason"), "error") == 0 &&
                  strcmp(jget_str(j, "error"), "engine failed") == 0 && json_integer_value(json_object_get(j, "code")) == 500 &&
                  json_integer_value(jget(j, "details.generated_tokens")) == 7,
              "mid-stream error line");
        json_decref(j);
    }
    free(s);
    s = lf_proto_stream_token(NULL, 0, &er, &o, &len);
    j = load(s, len, "stream error via final");
    if (j) {
        CHECK(json_integer_value(jget(j, "token.id")) == -1 && strcmp(jget_str(j, "details.finish_reason"), "error") == 0 &&
                  json_is_null(json_object_get(j, "generated_text")),
              "final line of a failed stream");
        json_decref(j);
    }
    free(s);
    s = lf_proto_error_body(422, "parameters.top_p must be in (0, 1], got 2", &len);
    j = load(s, len, "error body");
    if (j) {
        CHECK(strstr(jget_str(j, "error"), "top_p") && json_integer_value(json_object_get(j, "code")) == 422 &&
                  strcmp(jget_str(j, "error_type"), "validation") == 0,
              "error body");
        json_decref(j);
    }
    free(s);
    char *fr = lf_proto_frame(LF_STREAM_SSE, "{}", 2, &len);
    CHECK(fr && len == 10 && strcmp(fr, "data: {}\n\n") == 0, "frame sse");
    free(fr);
    fr = lf_proto_frame(LF_STREAM_JSONLINES, "{}", 2, &len);
    CHECK(fr && len == 3 && strcmp(fr, "{}\n") == 0, "frame jsonlines");
    free(fr);
    CHECK(lf_proto_stream_format_for("text/event-stream", 0) == LF_STREAM_SSE &&
              lf_proto_stream_format_for("Application/JSONLines", 1) == LF_STREAM_JSONLINES &&
              lf_proto_stream_format_for(NULL, 1) == LF_STREAM_SSE && lf_proto_stream_format_for("*/*", 0) == LF_STREAM_JSONLINES,
          "stream format from Accept / tgi_compat");
    CHECK(strcmp(lf_proto_stream_content_type(LF_STREAM_SSE), "text/event-stream") == 0 &&
              strcmp(lf_proto_stream_content_type(LF_STREAM_JSONLINES), "application/jsonlines") == 0,
          "content types");

    /* OpenAI chat */
    lf_gen_token alts[2] = {{9, "lo", 2, -0.2f, 0, NULL, 0}, {11, "p", 1, -2.0f, 0, NULL, 0}};
    lf_gen_token ct[2] = {{5, "Hel", 3, -0.5f, 0, NULL, 0}, {9, "lo", 2, -0.2f, 0, alts, 2}};
    lf_gen_result cr = res;
    cr.tokens = ct;
    cr.n_tokens = 2;
    cr.finish = LF_FINISH_STOP;
    lf_chat_meta meta = {"chatcmpl-abc", 1700000000, "tiny"};
    s = lf_proto_chat_body(&meta, &cr, 1, &len);
    j = load(s, len, "chat body");
    if (j) {
        CHECK(strcmp(jget_str(j, "object"), "chat.completion") == 0 && strcmp(jget_str(j, "id"), "chatcmpl-abc") == 0 &&
                  json_integer_value(json_object_get(j, "created")) == 1700000000 && strcmp(jget_str(j, "model"), "tiny") == 0,
              "chat: head");
        CHECK(strcmp(jget_str(j, "choices.0.message.role"), "assistant") == 0 &&
                  strcmp(jget_str(j, "choices.0.message.content"), "Hello") == 0 &&
                  strcmp(jget_str(j, "choices.0.finish_reason"), "stop") == 0 &&
                  json_integer_value(jget(j, "choices.0.index")) == 0,
              "chat: choice");
        CHECK(json_integer_value(jget(j, "usage.prompt_tokens")) == 4 && json_integer_value(jget(j, "usage.completion_tokens")) == 3 &&
                  json_integer_value(jget(j, "usage.total_tokens")) == 7,
              "chat: usage");
        CHECK(json_array_size(jget(j, "choices.0.logprobs.content")) == 2 &&
                  strcmp(jget_str(j, "choices.0.logprobs.content.1.top_logprobs.1.token"), "p") == 0 &&
                  json_integer_value(jget(j, "choices.0.logprobs.content.0.bytes.0")) == 'H',
              "chat: logprobs with top alternatives and bytes");
        CHECK(strstr(s, "\"logprob\":-0.2,") != NULL, "float log-probs printed as their shortest decimal: %s", s);
        json_decref(j);
    }
    free(s);
    cr.finish = LF_FINISH_EOS;
    s = lf_proto_chat_body(&meta, &cr, 0, &len);
    j = load(s, len, "chat body 2");
    if (j) {
        CHECK(json_is_null(jget(j, "choices.0.logprobs")) && strcmp(jget_str(j, "choices.0.finish_reason"), "stop") == 0,
              "chat: logprobs null, EOS -> stop");
        json_decref(j);
    }
    free(s);
    lf_chat_delta d;
    memset(&d, 0, sizeof d);
    d.first = 1;
    s = lf_proto_chat_chunk(&meta, &d, LF_STREAM_SSE, &len);
    j = s ? load(s + 6, len - 8, "first chunk") : NULL;
    if (j) {
        CHECK(strcmp(jget_str(j, "object"), "chat.completion.chunk") == 0 &&
                  strcmp(jget_str(j, "choices.0.delta.role"), "assistant") == 0 &&
                  strcmp(jget_str(j, "choices.0.delta.content"), "") == 0 && json_is_null(jget(j, "choices.0.finish_reason")),
              "first chunk: role");
        json_decref(j);
    }
    free(s);
    memset(&d, 0, sizeof d);
    d.text = "lo";
    d.text_len = 2;
    d.tokens = &ct[1];
    d.n_tokens = 1;
    s = lf_proto_chat_chunk(&meta, &d, LF_STREAM_JSONLINES, &len);
    j = load(s, len, "content chunk");
    if (j) {
        CHECK(strcmp(jget_str(j, "choices.0.delta.content"), "lo") == 0 && !jget(j, "choices.0.delta.role") &&
                  json_array_size(jget(j, "choices.0.logprobs.content")) == 1,
              "content chunk");
        json_decref(j);
    }
    free(s);
    memset(&d, 0, sizeof d);
    d.finish = LF_FINISH_LENGTH;
    d.usage = &cr;
    s = lf_proto_chat_chunk(&meta, &d, LF_STREAM_JSONLINES, &len);
    j = load(s, len, "final chunk");
    if (j) {
        CHECK(json_object_size(jget(j, "choices.0.delta")) == 0 && strcmp(jget_str(j, "choices.0.finish_reason"), "length") == 0 &&
                  json_integer_value(jget(j, "usage.total_tokens")) == 7,
              "final chunk: finish_reason, usage");
        json_decref(j);
    }
    free(s);
    memset(&d, 0, sizeof d);
    d.finish = LF_FINISH_ERROR;
    d.error = "boom";
    s = lf_proto_chat_chunk(&meta, &d, LF_STREAM_JSONLINES, &len);
    j = load(s, len, "error chunk");
    if (j) {
        CHECK(strcmp(jget_str(j, "choices.0.finish_reason"), "error") == 0 && strcmp(jget_str(j, "error.message"), "boom") == 0,
              "chat error chunk");
        json_decref(j);
    }
    free(s);
    CHECK(strcmp(lf_proto_sse_done(), "data: [DONE]\n\n") == 0, "[DONE]");
    CHECK(strcmp(lf_proto_finish_name(LF_FINISH_STOP, 0), "stop_sequence") == 0 &&
              strcmp(lf_proto_finish_name(LF_FINISH_STOP, 1), "stop") == 0 && lf_proto_finish_name(LF_FINISH_NONE, 0) == NULL,
          "finish names");
}

/* =============================== stop matcher =============================== */

typedef struct feed_out {
    char text[4096];
    size_t len;
    int stopped;
    int which;
    size_t max_held;
} feed_out;

/* Feed pieces (NULL-terminated list of {ptr,len}); flush at the end unless stopped. */
static void feed_all(lf_stop_matcher *m, const char *const *pieces, const size_t *lens, size_t n, feed_out *o) {
    memset(o, 0, sizeof *o);
    o->which = -1;
    lf_err err = {0};
    for (size_t i = 0; i < n; i++) {
        const char *e;
        size_t el;
        int st;
        if (lf_stop_feed(m, pieces[i], lens[i], &e, &el, &st, &err) != LF_OK) return;
        if (o->len + el < sizeof o->text) memcpy(o->text + o->len, e, el), o->len += el;
        if (lf_stop_held(m) > o->max_held) o->max_held = lf_stop_held(m);
        o->stopped = st;
    }
    if (!o->stopped) {
        const char *e;
        size_t el;
        lf_stop_flush(m, &e, &el);
        if (o->len + el < sizeof o->text) memcpy(o->text + o->len, e, el), o->len += el;
    }
    o->which = lf_stop_which(m);
    o->text[o->len] = '\0';
}

static void test_stop_cases(void) {
    lf_err err = {0};
    lf_stop_matcher *m = NULL;
    const char *stops[] = {"</s>", "\n\nUser:"};
    CHECK(lf_stop_create(stops, NULL, 2, 0, &m, &err) == LF_OK, "create");
    if (!m) return;
    /* stop split over 3 pieces; nothing of it is emitted, text before it is */
    const char *p1[] = {"Hello <", "/", "s", ">tail"};
    size_t l1[] = {7, 1, 1, 5};
    const char *e;
    size_t el;
    int st;
    lf_stop_feed(m, p1[0], l1[0], &e, &el, &st, &err);
    CHECK(el == 6 && memcmp(e, "Hello ", 6) == 0 && !st && lf_stop_held(m) == 1, "'<' held back");
    lf_stop_feed(m, p1[1], l1[1], &e, &el, &st, &err);
    CHECK(el == 0 && !st && lf_stop_held(m) == 2, "'</' held back");
    lf_stop_feed(m, p1[2], l1[2], &e, &el, &st, &err);
    CHECK(el == 0 && !st && lf_stop_held(m) == 3, "'</s' held back");
    lf_stop_feed(m, p1[3], l1[3], &e, &el, &st, &err);
    CHECK(el == 0 && st && lf_stop_which(m) == 0, "stop completes on the 4th piece; its tail is dropped");
    lf_stop_feed(m, "more", 4, &e, &el, &st, &err);
    CHECK(el == 0 && st, "after a stop nothing more is emitted");
    /* a held prefix that does not complete is released */
    lf_stop_reset(m);
    feed_out o;
    const char *p2[] = {"a </", "x> b\n", "\nUs", "e", "r"};
    size_t l2[] = {4, 5, 3, 1, 1};
    feed_all(m, p2, l2, 5, &o);
    CHECK(!o.stopped && strcmp(o.text, "a </x> b\n\nUser") == 0, "near-miss prefixes released: '%s'", o.text);
    lf_stop_reset(m);
    const char *p3[] = {"x\n", "\nUser", ":", " hi"};
    size_t l3[] = {2, 5, 1, 3};
    feed_all(m, p3, l3, 4, &o);
    CHECK(o.stopped && o.which == 1 && strcmp(o.text, "x") == 0, "multi-char stop over pieces: '%s'", o.text);
    lf_stop_free(m);

    /* overlapping prefixes: stop "aab" in "aaab" fed byte by byte; stop "abcabd" in "abcabcabd" */
    const char *s2[] = {"aab"};
    lf_stop_create(s2, NULL, 1, 0, &m, &err);
    const char *p4[] = {"a", "a", "a", "b"};
    size_t l4[] = {1, 1, 1, 1};
    feed_all(m, p4, l4, 4, &o);
    CHECK(o.stopped && strcmp(o.text, "a") == 0, "aab in aaab: '%s'", o.text);
    lf_stop_free(m);
    const char *s3[] = {"abcabd"};
    lf_stop_create(s3, NULL, 1, 0, &m, &err);
    const char *p5[] = {"ab", "ca", "bc", "a", "bd!"};
    size_t l5[] = {2, 2, 2, 1, 3};
    feed_all(m, p5, l5, 5, &o);
    CHECK(o.stopped && strcmp(o.text, "abc") == 0, "abcabd in abcabcabd: '%s'", o.text);
    lf_stop_free(m);
    /* first to complete wins, whatever the split; include_stop keeps it */
    const char *s4[] = {"abcd", "bc"};
    lf_stop_create(s4, NULL, 2, 1, &m, &err);
    const char *whole[] = {"xabcd"};
    size_t lw[] = {5};
    feed_all(m, whole, lw, 1, &o);
    CHECK(o.stopped && o.which == 1 && strcmp(o.text, "xabc") == 0, "earliest end wins, stop kept: '%s'", o.text);
    lf_stop_free(m);

    /* UTF-8: stop "é!" split inside the é; no stops: an incomplete € is held until complete */
    const char *s5[] = {"\xc3\xa9!"};
    lf_stop_create(s5, NULL, 1, 0, &m, &err);
    const char *p6[] = {"caf", "\xc3", "\xa9", "!"};
    size_t l6[] = {3, 1, 1, 1};
    feed_all(m, p6, l6, 4, &o);
    CHECK(o.stopped && strcmp(o.text, "caf") == 0, "stop split inside a 2-byte char: '%s'", o.text);
    lf_stop_free(m);
    lf_stop_create(NULL, NULL, 0, 0, &m, &err);
    lf_stop_feed(m, "1\xe2\x82", 3, &e, &el, &st, &err);
    CHECK(el == 1 && lf_stop_held(m) == 2, "incomplete 3-byte char held (%zu emitted)", el);
    lf_stop_feed(m, "\xac", 1, &e, &el, &st, &err);
    CHECK(el == 3 && memcmp(e, "\xe2\x82\xac", 3) == 0, "completed char released");
    lf_stop_feed(m, "\xf0\x9f", 2, &e, &el, &st, &err);
    CHECK(el == 0, "incomplete 4-byte char held");
    lf_stop_flush(m, &e, &el);
    CHECK(el == 2, "flush releases an incomplete char at the end");
    lf_stop_feed(m, "\xff\x80", 2, &e, &el, &st, &err);
    CHECK(el == 2, "bytes that can never be valid are not held");
    lf_stop_free(m);
    /* multi-byte stop "日本" against "日曜日本" fed byte by byte: only whole characters are emitted */
    const char *s6[] = {"\xe6\x97\xa5\xe6\x9c\xac"};
    lf_stop_create(s6, NULL, 1, 0, &m, &err);
    const char *text = "\xe6\x97\xa5\xe6\x9b\x9c\xe6\x97\xa5\xe6\x9c\xac";
    int whole_chars = 1;
    size_t total = 0;
    for (size_t i = 0; i < strlen(text); i++) {
        lf_stop_feed(m, text + i, 1, &e, &el, &st, &err);
        total += el;
        if (total % 3 != 0) whole_chars = 0;
    }
    CHECK(st && total == 6 && whole_chars, "UTF-8 stop: emitted %zu bytes, whole chars %d", total, whole_chars);
    lf_stop_free(m);
    const char *empty[] = {""};
    CHECK(lf_stop_create(empty, NULL, 1, 0, &m, &err) == LF_EINVAL && m == NULL, "empty stop rejected");
    CHECK(lf_stop_utf8_tail("a\xc3", 2) == 1 && lf_stop_utf8_tail("\xe0\x80", 2) == 0 && lf_stop_utf8_tail("\xed\xa0", 2) == 0 &&
              lf_stop_utf8_tail("\xf4\x8f\xbf", 3) == 3 && lf_stop_utf8_tail("\xc3\xa9", 2) == 0,
          "utf8 tail: overlong/surrogate prefixes are not held");
}

/* Random texts over a tiny alphabet, random stops and random splits, against a whole-text reference:
 * the stop that ends first (then the longest) cuts the text. */
static void test_stop_random(void) {
    const char alpha[] = "ab\xc3\xa9"; /* 'a', 'b', and the 2 bytes of é */
    int bad = 0, runs = 400;
    for (int it = 0; it < runs; it++) {
        char text[200];
        size_t n = 0, want = 1 + (uint32_t)lf_rng_next(&rng) % 150;
        while (n < want) {
            uint32_t c = (uint32_t)lf_rng_next(&rng) % 3;
            if (c == 2) text[n++] = alpha[2], text[n++] = alpha[3];
            else text[n++] = alpha[c];
        }
        size_t ns = (uint32_t)lf_rng_next(&rng) % 4;
        char sbuf[4][8];
        const char *stops[4];
        size_t slen[4];
        for (size_t k = 0; k < ns; k++) {
            size_t l = 0, w = 1 + (uint32_t)lf_rng_next(&rng) % 5;
            while (l < w) {
                uint32_t c = (uint32_t)lf_rng_next(&rng) % 3;
                if (c == 2 && l + 2 <= 7) sbuf[k][l++] = alpha[2], sbuf[k][l++] = alpha[3];
                else sbuf[k][l++] = alpha[c % 2];
            }
            stops[k] = sbuf[k];
            slen[k] = l;
        }
        /* reference */
        size_t cut = n, refw = (size_t)-1;
        for (size_t e = 1; e <= n && refw == (size_t)-1; e++) {
            for (size_t k = 0; k < ns; k++)
                if (slen[k] <= e && memcmp(text + e - slen[k], stops[k], slen[k]) == 0 &&
                    (refw == (size_t)-1 || slen[k] > slen[refw]))
                    refw = k, cut = e - slen[k];
        }
        lf_err err = {0};
        lf_stop_matcher *m = NULL;
        if (lf_stop_create(stops, slen, ns, 0, &m, &err) != LF_OK) {
            bad++;
            continue;
        }
        const char *pieces[200];
        size_t plen[200], np = 0;
        for (size_t at = 0; at < n;) {
            size_t l = 1 + (uint32_t)lf_rng_next(&rng) % 6;
            if (l > n - at) l = n - at;
            pieces[np] = text + at;
            plen[np++] = l;
            at += l;
        }
        feed_out o;
        feed_all(m, pieces, plen, np, &o);
        size_t longest = 4;
        for (size_t k = 0; k < ns; k++) longest = slen[k] > longest ? slen[k] : longest;
        int ok = o.len == cut && memcmp(o.text, text, cut) == 0 && o.stopped == (refw != (size_t)-1) &&
                 (refw == (size_t)-1 || o.which == (int)refw) && o.max_held < longest;
        if (!ok && bad < 3)
            printf("  stop random %d: text %.*s cut %zu got %zu stopped %d which %d/%zu held %zu\n", it, (int)n, text, cut,
                   o.len, o.stopped, o.which, refw, o.max_held);
        bad += !ok;
        lf_stop_free(m);
    }
    CHECK(bad == 0, "stop matcher vs whole-text reference: %d of %d random splits differ", bad, runs);
}

/* =============================== HTTP =============================== */

typedef struct http_resp {
    int status;
    char headers[4096];
    char *body;
    size_t body_len;
    int chunked;
    int nchunks;
} http_resp;

static int dial(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {10, 0}; /* a hung server fails the test instead of hanging it */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *b, size_t n) {
    while (n) {
        ssize_t k = send(fd, b, n, MSG_NOSIGNAL);
        if (k <= 0) return -1;
        b += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Read to EOF, then split status / headers / body and decode chunked bodies. */
static int read_response(int fd, http_resp *r) {
    memset(r, 0, sizeof *r);
    size_t cap = 1 << 16, n = 0;
    char *raw = malloc(cap);
    for (;;) {
        if (n + 4096 > cap) raw = realloc(raw, cap *= 2);
        ssize_t k = recv(fd, raw + n, cap - n - 1, 0);
        if (k <= 0) break;
        n += (size_t)k;
    }
    raw[n] = '\0';
    char *hend = strstr(raw, "\r\n\r\n");
    if (!hend || sscanf(raw, "HTTP/1.%*d %d", &r->status) != 1) {
        free(raw);
        return -1;
    }
    size_t hl = (size_t)(hend - raw);
    snprintf(r->headers, sizeof r->headers, "%.*s", (int)(hl < sizeof r->headers - 1 ? hl : sizeof r->headers - 1), raw);
    char *b = hend + 4;
    size_t bl = n - (size_t)(b - raw);
    r->body = malloc(bl + 1);
    if (strcasestr(r->headers, "transfer-encoding: chunked")) {
        r->chunked = 1;
        size_t out = 0;
        char *p = b, *end = b + bl;
        for (;;) {
            char *eol = strstr(p, "\r\n");
            if (!eol || eol >= end) break;
            size_t sz = strtoul(p, NULL, 16);
            p = eol + 2;
            if (sz == 0) break;
            if (p + sz > end) break;
            memcpy(r->body + out, p, sz);
            out += sz;
            p += sz + 2;
            r->nchunks++;
        }
        r->body_len = out;
    } else {
        memcpy(r->body, b, bl);
        r->body_len = bl;
    }
    r->body[r->body_len] = '\0';
    free(raw);
    return 0;
}

static int http_do(int port, const char *req, size_t len, http_resp *r) {
    int fd = dial(port);
    if (fd < 0) return -1;
    int rc = send_all(fd, req, len) == 0 ? read_response(fd, r) : -1;
    close(fd);
    return rc;
}

static int http_simple(int port, const char *method, const char *path, const char *body, http_resp *r) {
    char req[4096];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %zu\r\n\r\n%s",
                     method, path, body ? strlen(body) : 0, body ? body : "");
    return http_do(port, req, (size_t)n, r);
}

/* ---- handlers ---- */

static void h_ping(void *u, const lf_http_request *req, lf_http_response *resp) {
    (void)u;
    (void)req;
    lf_http_respond(resp, 200, "text/plain", "", 0);
}

static void h_echo(void *u, const lf_http_request *req, lf_http_response *resp) {
    (void)u;
    size_t len;
    const char *b = lf_http_body(req, &len);
    lf_http_respond(resp, 200, "text/plain", b, len);
    const char *q = lf_http_query(req, "q"), *h = lf_http_header(req, "x-amzn-sagemaker-adapter-identifier");
    lf_http_add_header(resp, "X-Q", q ? q : "(none)");
    lf_http_add_header(resp, "X-Adapter", h ? h : "(none)");
    lf_http_add_header(resp, "X-Flag", lf_http_query(req, "flag") ? "present" : "absent");
}

static void h_adapter(void *u, const lf_http_request *req, lf_http_response *resp) {
    (void)u;
    char body[256];
    snprintf(body, sizeof body, "{\"name\": \"%s\", \"method\": \"%s\"}", lf_http_param(req, "name"), lf_http_method(req));
    lf_http_respond(resp, 200, NULL, body, strlen(body));
}

static void h_nothing(void *u, const lf_http_request *req, lf_http_response *resp) {
    (void)u;
    (void)req;
    (void)resp;
}

static void h_slow(void *u, const lf_http_request *req, lf_http_response *resp) {
    (void)u;
    (void)req;
    sleep_ms(300);
    lf_http_respond(resp, 200, "text/plain", "slow", 4);
}

/* streaming: a producer thread pushes 100 pieces */
typedef struct producer {
    lf_http_stream *st;
    int pieces;   /* < 0: forever until cancelled */
    int delay_ms;
    atomic_int saw_cancel;
    atomic_int done;
    atomic_int cancel_calls;
} producer;

static producer g_prod;
static pthread_t g_prod_thread;
static atomic_int g_prod_started;

static void *producer_main(void *arg) {
    producer *p = arg;
    for (int i = 0; p->pieces < 0 || i < p->pieces; i++) {
        char piece[64];
        int n = snprintf(piece, sizeof piece, "{\"token\": %d}\n", i);
        if (lf_http_stream_push(p->st, piece, (size_t)n) != LF_OK || lf_http_stream_cancelled(p->st)) {
            atomic_store(&p->saw_cancel, 1);
            break;
        }
        if (p->delay_ms) sleep_ms(p->delay_ms);
    }
    lf_http_stream_close(p->st);
    atomic_store(&p->done, 1);
    return NULL;
}

static void on_cancel(void *u) { atomic_fetch_add(&((producer *)u)->cancel_calls, 1); }

static void start_stream(lf_http_response *resp, int pieces, int delay_ms) {
    producer *p = &g_prod;
    p->st = lf_http_respond_stream(resp, 200, "application/jsonlines");
    p->pieces = pieces;
    p->delay_ms = delay_ms;
    atomic_store(&p->saw_cancel, 0);
    atomic_store(&p->done, 0);
    atomic_store(&p->cancel_calls, 0);
    if (!p->st) return;
    lf_http_stream_on_cancel(p->st, on_cancel, p);
    pthread_create(&g_prod_thread, NULL, producer_main, p);
    atomic_store(&g_prod_started, 1);
}

static void h_stream(void *u, const lf_http_request *req, lf_http_response *resp) {
    (void)u;
    (void)req;
    start_stream(resp, 100, 0);
}
static void h_forever(void *u, const lf_http_request *req, lf_http_response *resp) {
    (void)u;
    (void)req;
    start_stream(resp, -1, 20);
}

/* a producer that never pushes: it only waits to be told the stream is cancelled */
static void *silent_main(void *arg) {
    producer *p = arg;
    for (int t = 0; t < 500 && !lf_http_stream_cancelled(p->st); t++) sleep_ms(10);
    atomic_store(&p->saw_cancel, lf_http_stream_cancelled(p->st));
    lf_http_stream_close(p->st);
    atomic_store(&p->done, 1);
    return NULL;
}

static void h_silent(void *u, const lf_http_request *req, lf_http_response *resp) {
    (void)u;
    (void)req;
    producer *p = &g_prod;
    p->st = lf_http_respond_stream(resp, 200, "text/event-stream");
    atomic_store(&p->saw_cancel, 0);
    atomic_store(&p->done, 0);
    atomic_store(&p->cancel_calls, 0);
    if (!p->st) return;
    lf_http_stream_on_cancel(p->st, on_cancel, p);
    pthread_create(&g_prod_thread, NULL, silent_main, p);
    atomic_store(&g_prod_started, 1);
}

/* pushes one piece bigger than the server's stream_buffer_max from the handler thread itself */
static atomic_int g_big_rc;
static void h_big(void *u, const lf_http_request *req, lf_http_response *resp) {
    (void)u;
    (void)req;
    lf_http_stream *st = lf_http_respond_stream(resp, 200, "application/jsonlines");
    if (!st) return;
    char piece[2048];
    memset(piece, 'z', sizeof piece);
    atomic_store(&g_big_rc, (int)lf_http_stream_push(st, piece, sizeof piece));
    atomic_store(&g_prod.cancel_calls, 0);
    lf_http_stream_on_cancel(st, on_cancel, &g_prod); /* the producer already knows: no callback */
    lf_http_stream_close(st);
}

static void join_producer(void) {
    if (atomic_exchange(&g_prod_started, 0)) pthread_join(g_prod_thread, NULL);
}

typedef struct client_job {
    int port;
    int status;
    double secs;
} client_job;

static void *slow_client(void *arg) {
    client_job *j = arg;
    http_resp r;
    double t0 = now_s();
    j->status = http_simple(j->port, "GET", "/slow", NULL, &r) == 0 ? r.status : -1;
    j->secs = now_s() - t0;
    if (j->status > 0) free(r.body);
    return NULL;
}

static int wait_flag(atomic_int *f, int ms) {
    for (int t = 0; t < ms && !atomic_load(f); t += 10) sleep_ms(10);
    return atomic_load(f);
}

static void test_http(void) {
    lf_err err = {0};
    lf_http_params hp = lf_http_default_params();
    hp.host = "127.0.0.1";
    hp.port = 0;
    lf_http_server *s = NULL;
    if (lf_http_create(&hp, &s, &err) != LF_OK) {
        CHECK(0, "http create: %s", err.msg);
        return;
    }
    int ok = lf_http_route(s, "GET", "/ping", h_ping, NULL, &err) == LF_OK &&
             lf_http_route(s, "POST", "/echo", h_echo, NULL, &err) == LF_OK &&
             lf_http_route(s, "GET", "/adapters/{name}", h_adapter, NULL, &err) == LF_OK &&
             lf_http_route(s, "DELETE", "/adapters/{name}", h_adapter, NULL, &err) == LF_OK &&
             lf_http_route(s, "POST", "/stream", h_stream, NULL, &err) == LF_OK &&
             lf_http_route(s, "POST", "/forever", h_forever, NULL, &err) == LF_OK &&
             lf_http_route(s, "GET", "/slow", h_slow, NULL, &err) == LF_OK &&
             lf_http_route(s, "*", "/nothing", h_nothing, NULL, &err) == LF_OK &&
             lf_http_route(s, "GET", "/silent", h_silent, NULL, &err) == LF_OK;
    CHECK(ok, "routes: %s", err.msg);
    CHECK(lf_http_route(s, "GET", "no-slash", h_ping, NULL, &err) == LF_EINVAL, "pattern must start with /");
    CHECK(lf_http_port(s) == 0, "no port before start");
    if (lf_http_start(s, &err) != LF_OK) {
        CHECK(0, "http start: %s", err.msg);
        lf_http_free(s);
        return;
    }
    int port = lf_http_port(s);
    CHECK(port > 0 && port < 65536, "bound an ephemeral port: %d", port);
    CHECK(lf_http_route(s, "GET", "/late", h_ping, NULL, &err) == LF_EBUSY, "no routes after start");
    http_resp r;

    /* routing */
    CHECK(http_simple(port, "GET", "/ping", NULL, &r) == 0 && r.status == 200 && r.body_len == 0, "GET /ping 200");
    free(r.body);
    CHECK(http_simple(port, "HEAD", "/ping", NULL, &r) == 0 && r.status == 200, "HEAD served by the GET route");
    free(r.body);
    CHECK(http_simple(port, "POST", "/echo?q=a%20b&flag", "hello body", &r) == 0 && r.status == 200 &&
              strcmp(r.body, "hello body") == 0 && strcasestr(r.headers, "X-Q: a b") && strcasestr(r.headers, "X-Flag: present") &&
              strcasestr(r.headers, "content-type: text/plain"),
          "POST /echo: body, decoded query, flag query, content type (%d: %s)", r.status, r.headers);
    free(r.body);
    const char *hreq = "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Amzn-SageMaker-Adapter-Identifier: fr\r\n"
                       "Content-Length: 2\r\n\r\nhi";
    CHECK(http_do(port, hreq, strlen(hreq), &r) == 0 && r.status == 200 && strcasestr(r.headers, "X-Adapter: fr"),
          "header lookup is case-insensitive");
    free(r.body);
    CHECK(http_simple(port, "GET", "/adapters/fr-v2", NULL, &r) == 0 && r.status == 200 && strstr(r.body, "\"fr-v2\"") &&
              strstr(r.body, "\"GET\"") && strcasestr(r.headers, "application/json"),
          "path parameter: %s", r.body);
    free(r.body);
    CHECK(http_simple(port, "DELETE", "/adapters/x", NULL, &r) == 0 && r.status == 200 && strstr(r.body, "DELETE"),
          "same pattern, another method");
    free(r.body);
    CHECK(http_simple(port, "GET", "/nope", NULL, &r) == 0 && r.status == 404 && strstr(r.body, "\"code\":404") &&
              strstr(r.body, "/nope"),
          "404 JSON: %s", r.body);
    free(r.body);
    CHECK(http_simple(port, "GET", "/adapters/", NULL, &r) == 0 && r.status == 404, "empty {param} segment does not match");
    free(r.body);
    CHECK(http_simple(port, "POST", "/ping", "x", &r) == 0 && r.status == 405 && strcasestr(r.headers, "Allow: GET"),
          "405 with Allow: %s", r.headers);
    free(r.body);
    CHECK(http_simple(port, "PUT", "/nothing", NULL, &r) == 0 && r.status == 500 && strstr(r.body, "no response"),
          "handler without a response -> 500");
    free(r.body);

    /* 413 from Content-Length: answered after 64 KiB of a 7 MiB body */
    int fd = dial(port);
    const char *big_head = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 7340032\r\n\r\n";
    char *chunk = calloc(1, 65536);
    memset(chunk, 'x', 65536);
    double t0 = now_s();
    int sent = fd >= 0 && send_all(fd, big_head, strlen(big_head)) == 0 && send_all(fd, chunk, 65536) == 0;
    CHECK(sent && read_response(fd, &r) == 0 && r.status == 413 && strstr(r.body, "7340032 bytes") &&
              strstr(r.body, "\"code\":413"),
          "413 before the body is read (status %d, %s)", r.status, r.body ? r.body : "");
    CHECK(now_s() - t0 < 5, "413 came quickly");
    free(r.body);
    if (fd >= 0) close(fd);
    /* 413 for a chunked upload over the cap (no Content-Length): the rest is discarded */
    fd = dial(port);
    const char *ch_head = "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
    sent = fd >= 0 && send_all(fd, ch_head, strlen(ch_head)) == 0;
    for (int i = 0; sent && i < 112; i++) { /* 112 x 64 KiB = 7 MiB */
        char sz[16];
        int k = snprintf(sz, sizeof sz, "10000\r\n");
        sent = send_all(fd, sz, (size_t)k) == 0 && send_all(fd, chunk, 65536) == 0 && send_all(fd, "\r\n", 2) == 0;
    }
    sent = sent && send_all(fd, "0\r\n\r\n", 5) == 0;
    CHECK(sent && read_response(fd, &r) == 0 && r.status == 413, "chunked 7 MiB upload -> 413 (status %d)", r.status);
    free(r.body);
    if (fd >= 0) close(fd);
    free(chunk);
    /* a body right at the limit still goes through */
    size_t nmax = hp.max_body_bytes;
    char *maxreq = malloc(nmax + 200);
    int hn = snprintf(maxreq, 200, "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %zu\r\n\r\n", nmax);
    memset(maxreq + hn, 'y', nmax);
    CHECK(http_do(port, maxreq, (size_t)hn + nmax, &r) == 0 && r.status == 200 && r.body_len == nmax,
          "6 MiB body accepted and echoed (%d, %zu bytes)", r.status, r.body_len);
    free(r.body);
    free(maxreq);

    /* chunked streaming: 100 pieces from another thread */
    CHECK(http_simple(port, "POST", "/stream", "{}", &r) == 0 && r.status == 200 && r.chunked &&
              strcasestr(r.headers, "content-type: application/jsonlines"),
          "stream: 200 chunked jsonlines (%s)", r.headers);
    join_producer();
    {
        char want[4096];
        size_t wl = 0;
        for (int i = 0; i < 100; i++) wl += (size_t)snprintf(want + wl, sizeof want - wl, "{\"token\": %d}\n", i);
        CHECK(r.body_len == wl && memcmp(r.body, want, wl) == 0 && r.nchunks >= 1,
              "stream: decoded body is the 100 pieces in order (%zu bytes, %d chunks)", r.body_len, r.nchunks);
        CHECK(atomic_load(&g_prod.cancel_calls) == 0 && !atomic_load(&g_prod.saw_cancel), "completed stream is not cancelled");
    }
    free(r.body);

    /* concurrent connections: 6 slow (300 ms) requests overlap */
    enum { NC = 6 };
    pthread_t th[NC];
    client_job jobs[NC];
    t0 = now_s();
    for (int i = 0; i < NC; i++) {
        jobs[i].port = port;
        pthread_create(&th[i], NULL, slow_client, &jobs[i]);
    }
    int all200 = 1;
    for (int i = 0; i < NC; i++) {
        pthread_join(th[i], NULL);
        all200 &= jobs[i].status == 200;
    }
    double wall = now_s() - t0;
    /* serial would take NC*0.3 = 1.8 s; parallel ~0.3 s; 1.2 s leaves room for a loaded 2-core machine */
    CHECK(all200 && wall < 1.2, "6 concurrent slow requests: all 200 %d, %.2f s", all200, wall);

    /* client disconnect mid-stream: the producer is told and stops */
    fd = dial(port);
    const char *freq = "POST /forever HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    char buf[4096];
    ssize_t got = 0;
    if (fd >= 0 && send_all(fd, freq, strlen(freq)) == 0) got = recv(fd, buf, sizeof buf - 1, 0);
    buf[got > 0 ? got : 0] = '\0';
    CHECK(got > 0 && strstr(buf, "200"), "forever stream started");
    if (fd >= 0) close(fd);
    t0 = now_s();
    int cancelled = wait_flag(&g_prod.done, 3000);
    CHECK(cancelled && atomic_load(&g_prod.saw_cancel) && atomic_load(&g_prod.cancel_calls) == 1,
          "disconnect flagged: producer done %d, saw cancel %d, on_cancel calls %d (%.2f s)", cancelled,
          atomic_load(&g_prod.saw_cancel), atomic_load(&g_prod.cancel_calls), now_s() - t0);
    join_producer();
    for (int t = 0; t < 200 && lf_http_in_flight(s) != 0; t++) sleep_ms(10);
    CHECK(lf_http_in_flight(s) == 0, "no request left in flight (%d)", lf_http_in_flight(s));

    /* client disconnect while the producer is silent (long prefill): noticed by polling the socket */
    fd = dial(port);
    const char *sreq = "GET /silent HTTP/1.1\r\nHost: x\r\n\r\n";
    got = 0;
    if (fd >= 0 && send_all(fd, sreq, strlen(sreq)) == 0) got = recv(fd, buf, sizeof buf - 1, 0);
    buf[got > 0 ? got : 0] = '\0';
    CHECK(got > 0 && strstr(buf, "200") && strcasestr(buf, "text/event-stream"), "silent stream: headers sent");
    sleep_ms(120);
    CHECK(!atomic_load(&g_prod.done), "silent stream stays open while the client is there");
    if (fd >= 0) close(fd);
    t0 = now_s();
    CHECK(wait_flag(&g_prod.done, 3000) && atomic_load(&g_prod.saw_cancel) && atomic_load(&g_prod.cancel_calls) == 1,
          "silent stream: disconnect noticed without any push (%.2f s, on_cancel %d)", now_s() - t0,
          atomic_load(&g_prod.cancel_calls));
    CHECK(now_s() - t0 < 1.0, "silent stream: noticed within a second (%.2f s)", now_s() - t0);
    join_producer();

    /* keep-alive: two pipelined requests on one connection */
    const char *two = "GET /ping HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      "Content-Length: 3\r\n\r\nabc";
    fd = dial(port);
    char all[8192];
    size_t an = 0;
    if (fd >= 0 && send_all(fd, two, strlen(two)) == 0) {
        ssize_t k;
        while (an < sizeof all - 1 && (k = recv(fd, all + an, sizeof all - 1 - an, 0)) > 0) an += (size_t)k;
    }
    all[an] = '\0';
    char *second = strstr(all, "HTTP/1.1 200");
    second = second ? strstr(second + 1, "HTTP/1.1 200") : NULL;
    CHECK(second && strstr(second, "\r\n\r\nabc"), "keep-alive: both pipelined requests answered");
    if (fd >= 0) close(fd);

    /* graceful stop: an in-flight slow request finishes, a never-ending stream is cancelled at the deadline */
    client_job sj = {port, 0, 0};
    pthread_t sth;
    pthread_create(&sth, NULL, slow_client, &sj);
    int sfd = dial(port);
    if (sfd >= 0) send_all(sfd, freq, strlen(freq));
    sleep_ms(100);
    t0 = now_s();
    lf_http_stop(s, 600);
    double stop_s = now_s() - t0;
    pthread_join(sth, NULL);
    CHECK(sj.status == 200, "in-flight request finished during stop (%d)", sj.status);
    CHECK(stop_s < 2.0 && stop_s >= 0.5, "stop waited for the deadline, then ended the stream (%.2f s)", stop_s);
    CHECK(wait_flag(&g_prod.done, 2000) && atomic_load(&g_prod.saw_cancel), "stream cancelled at shutdown");
    join_producer();
    if (sfd >= 0) close(sfd);
    CHECK(lf_http_stopping(s), "stopping flag");
    CHECK(dial(port) < 0, "no longer accepting connections");
    lf_http_stop(s, 0); /* idempotent */
    lf_http_free(s);
}

/* A server with a tiny stream buffer and a stream idle timeout. */
static void test_http_limits(void) {
    lf_err err = {0};
    lf_http_params hp = lf_http_default_params();
    hp.host = "127.0.0.1";
    hp.port = 0;
    hp.stream_buffer_max = 1024;
    hp.stream_idle_timeout_ms = 200;
    hp.max_body_bytes = 100;
    lf_http_server *s = NULL;
    if (lf_http_create(&hp, &s, &err) != LF_OK || lf_http_route(s, "GET", "/big", h_big, NULL, &err) != LF_OK ||
        lf_http_route(s, "GET", "/silent", h_silent, NULL, &err) != LF_OK ||
        lf_http_route(s, "POST", "/echo", h_echo, NULL, &err) != LF_OK || lf_http_start(s, &err) != LF_OK) {
        CHECK(0, "limits server: %s", err.msg);
        lf_http_free(s);
        return;
    }
    int port = lf_http_port(s);
    http_resp r;
    CHECK(http_simple(port, "GET", "/big", NULL, &r) == 0 && r.status == 200 && r.body_len == 0, "big piece: stream ends empty");
    free(r.body);
    CHECK(atomic_load(&g_big_rc) == LF_EBUSY && atomic_load(&g_prod.cancel_calls) == 0,
          "a piece over stream_buffer_max -> LF_EBUSY, no on_cancel (rc %d)", atomic_load(&g_big_rc));
    double t0 = now_s();
    CHECK(http_simple(port, "GET", "/silent", NULL, &r) == 0 && r.status == 200, "idle stream answered");
    double dt = now_s() - t0;
    free(r.body);
    CHECK(wait_flag(&g_prod.done, 3000) && atomic_load(&g_prod.saw_cancel) && atomic_load(&g_prod.cancel_calls) == 1,
          "silent producer cancelled by stream_idle_timeout_ms");
    CHECK(dt >= 0.15 && dt < 2.0, "idle timeout after ~200 ms (%.2f s)", dt);
    join_producer();
    CHECK(http_simple(port, "POST", "/echo", "0123456789012345678901234567890123456789012345678901234567890123456789"
                                             "0123456789012345678901234567890123456789", &r) == 0 && r.status == 413,
          "custom max_body_bytes: 110 bytes over 100 -> 413");
    free(r.body);
    CHECK(http_simple(port, "POST", "/echo", "small", &r) == 0 && r.status == 200 && strcmp(r.body, "small") == 0,
          "under the custom cap");
    free(r.body);
    lf_http_free(s); /* stops with deadline 0 */
    lf_http_params bad = lf_http_default_params();
    bad.host = "not-an-ip";
    bad.port = 0;
    CHECK(lf_http_create(&bad, &s, &err) == LF_OK && lf_http_start(s, &err) == LF_EINVAL && strstr(err.msg, "not-an-ip"),
          "bad host named: %s", err.msg);
    lf_http_free(s);
}

int main(void) {
    const char *env = getenv("LF_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    printf("test_protocol: seed %llu (LF_TEST_SEED to reproduce)\n", (unsigned long long)seed);
    lf_rng_seed(&rng, seed);
    lf_log_set_level(LF_LOG_ERROR);
    test_parse_generate();
    test_parse_errors();
    test_parse_hostile();
    test_parse_chat();
    test_parse_params_issue11();
    test_adapters();
    test_builders();
    test_stop_cases();
    test_stop_random();
    test_http();
    test_http_limits();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
