/* protocol.c - /invocations JSON: request parsing and validation (LMI/TGI generate, OpenAI chat), adapter
 * choice from headers, response builders (non-stream, JSON-lines/SSE stream events, chat, errors). */
#include "serve/protocol.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* =============================== limits =============================== */

lf_proto_limits lf_proto_default_limits(void) {
    lf_proto_limits l;
    l.max_body_bytes = LF_PROTO_MAX_BODY_BYTES;
    l.max_depth = LF_PROTO_MAX_DEPTH;
    l.max_new_tokens = 4096;
    l.default_max_new_tokens = 30;
    l.default_chat_max_tokens = 0;
    l.max_inputs = 64;
    l.max_stop = 16;
    l.max_stop_bytes = 256;
    l.max_stop_token_ids = 64;
    l.max_top_logprobs = 20;
    return l;
}

/* Zero fields of a caller's struct fall back to the defaults. */
static lf_proto_limits effective_limits(const lf_proto_limits *in) {
    lf_proto_limits d = lf_proto_default_limits();
    lf_proto_limits l = in ? *in : d;
    if (!l.max_body_bytes) l.max_body_bytes = d.max_body_bytes;
    if (l.max_depth <= 0) l.max_depth = d.max_depth;
    if (l.max_new_tokens <= 0) l.max_new_tokens = d.max_new_tokens;
    if (l.default_max_new_tokens <= 0) l.default_max_new_tokens = d.default_max_new_tokens;
    if (l.default_max_new_tokens > l.max_new_tokens) l.default_max_new_tokens = l.max_new_tokens;
    if (l.default_chat_max_tokens <= 0 || l.default_chat_max_tokens > l.max_new_tokens)
        l.default_chat_max_tokens = l.max_new_tokens;
    if (!l.max_inputs) l.max_inputs = d.max_inputs;
    if (!l.max_stop) l.max_stop = d.max_stop;
    if (!l.max_stop_bytes) l.max_stop_bytes = d.max_stop_bytes;
    if (!l.max_stop_token_ids) l.max_stop_token_ids = d.max_stop_token_ids;
    if (l.max_top_logprobs < 0) l.max_top_logprobs = d.max_top_logprobs;
    return l;
}

/* =============================== parse context =============================== */

typedef struct pctx {
    lf_err *err;
    int status;
    lf_proto_limits L;
} pctx;

static lf_status failv(pctx *p, int status, const char *fmt, va_list ap) {
    char msg[LF_ERR_MSG_MAX];
    vsnprintf(msg, sizeof msg, fmt, ap);
    lf_status code = status == 400 ? LF_EFORMAT : status == 404 ? LF_ENOTFOUND : status >= 500 ? LF_ENOMEM : LF_EINVAL;
    p->status = status;
    return lf_err_set(p->err, code, "%s", msg);
}

__attribute__((format(printf, 3, 4))) static lf_status fail(pctx *p, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    lf_status st = failv(p, status, fmt, ap);
    va_end(ap);
    return st;
}

/* 422 for a valid request asking for something we do not do. */
__attribute__((format(printf, 2, 3))) static lf_status unsupported(pctx *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    failv(p, 422, fmt, ap);
    va_end(ap);
    if (p->err) p->err->code = LF_EUNSUPPORTED;
    return LF_EUNSUPPORTED;
}

static lf_status oom(pctx *p) { return fail(p, 500, "out of memory while parsing the request"); }

static const char *jtype(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* Present and not JSON null (clients send null for "unset"). */
static const json_t *field(const json_t *o, const char *key) {
    const json_t *v = json_object_get(o, key);
    return (v && !json_is_null(v)) ? v : NULL;
}

static lf_status get_bool(pctx *p, const json_t *o, const char *key, const char *pre, int *out, int *present) {
    const json_t *v = field(o, key);
    if (present) *present = v != NULL;
    if (!v) return LF_OK;
    if (!json_is_boolean(v)) return fail(p, 400, "%s%s must be a boolean (true/false), got %s", pre, key, jtype(v));
    *out = json_is_true(v);
    return LF_OK;
}

static lf_status get_num(pctx *p, const json_t *o, const char *key, const char *pre, double *out, int *present) {
    const json_t *v = field(o, key);
    if (present) *present = v != NULL;
    if (!v) return LF_OK;
    if (!json_is_number(v)) return fail(p, 400, "%s%s must be a number, got %s", pre, key, jtype(v));
    *out = json_number_value(v);
    return LF_OK;
}

/* Integer in [lo, hi]: a non-integral number is a type error (400), an integral one out of range 422. */
static lf_status get_int(pctx *p, const json_t *o, const char *key, const char *pre, int64_t lo, int64_t hi,
                         int64_t *out, int *present) {
    const json_t *v = field(o, key);
    if (present) *present = v != NULL;
    if (!v) return LF_OK;
    int64_t x;
    if (json_is_integer(v)) {
        x = (int64_t)json_integer_value(v);
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d != floor(d)) return fail(p, 400, "%s%s must be an integer, got %g", pre, key, d);
        if (d < (double)lo) return fail(p, 422, "%s%s must be >= %lld, got %g", pre, key, (long long)lo, d);
        if (d > (double)hi) return fail(p, 422, "%s%s must be <= %lld, got %g", pre, key, (long long)hi, d);
        x = (int64_t)d; /* in range, so the conversion is defined */
    } else {
        return fail(p, 400, "%s%s must be an integer, got %s", pre, key, jtype(v));
    }
    if (x < lo) return fail(p, 422, "%s%s must be >= %lld, got %lld", pre, key, (long long)lo, (long long)x);
    if (x > hi) return fail(p, 422, "%s%s must be <= %lld, got %lld", pre, key, (long long)hi, (long long)x);
    *out = x;
    return LF_OK;
}

static char *dupn(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

/* Append the stop strings of `key` (a string or a list of strings). */
static lf_status get_stops(pctx *p, const json_t *o, const char *key, const char *pre, lf_gen_params *gp) {
    const json_t *v = field(o, key);
    if (!v) return LF_OK;
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (!json_is_array(v) && !json_is_string(v))
        return fail(p, 400, "%s%s must be a string or a list of strings, got %s", pre, key, jtype(v));
    if (gp->n_stop + n > p->L.max_stop)
        return fail(p, 422, "%s%s: at most %zu stop sequences are allowed, got %zu", pre, key, p->L.max_stop, gp->n_stop + n);
    char **ns = realloc(gp->stop, (gp->n_stop + n) * sizeof *ns);
    if (!ns) return oom(p);
    gp->stop = ns;
    for (size_t i = 0; i < n; i++) {
        const json_t *s = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_string(s)) return fail(p, 400, "%s%s[%zu] must be a string, got %s", pre, key, i, jtype(s));
        size_t l = json_string_length(s);
        if (l == 0) return fail(p, 422, "%s%s[%zu] must not be empty", pre, key, i);
        if (l > p->L.max_stop_bytes)
            return fail(p, 422, "%s%s[%zu] is %zu bytes; the limit is %zu", pre, key, i, l, p->L.max_stop_bytes);
        char *c = dupn(json_string_value(s), l);
        if (!c) return oom(p);
        gp->stop[gp->n_stop++] = c;
    }
    return LF_OK;
}

#define MAX_ADAPTER_NAME 1024

/* "adapters": a string or a list of strings (one per input). */
static lf_status get_adapters(pctx *p, const json_t *v, const char *name, lf_gen_request *r) {
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (!json_is_array(v) && !json_is_string(v))
        return fail(p, 400, "%s must be a string or a list of strings, got %s", name, jtype(v));
    if (json_is_array(v) && n != 1 && n != r->n_inputs)
        return fail(p, 422, "%s has %zu entries for %zu inputs (give one name, or one per input)", name, n, r->n_inputs);
    if (n == 0) return fail(p, 422, "%s must not be an empty list", name);
    r->body_adapters = calloc(n, sizeof *r->body_adapters);
    if (!r->body_adapters) return oom(p);
    for (size_t i = 0; i < n; i++) {
        const json_t *s = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_string(s)) return fail(p, 400, "%s[%zu] must be a string, got %s", name, i, jtype(s));
        if (json_string_length(s) > MAX_ADAPTER_NAME)
            return fail(p, 422, "%s[%zu] is longer than %d bytes", name, i, MAX_ADAPTER_NAME);
        r->body_adapters[i] = dupn(json_string_value(s), json_string_length(s));
        if (!r->body_adapters[i]) return oom(p);
        r->n_body_adapters = i + 1;
    }
    return LF_OK;
}

/* =============================== generation parameters (both bodies) =============================== */

/* Which sampling switches were given (the generate body's do_sample rule). */
typedef struct sampling_seen {
    int temperature, top_k, top_p, min_p, typical_p;
} sampling_seen;

/* "stop_token_ids": a list of integer ids >= 0. */
static lf_status get_stop_ids(pctx *p, const json_t *o, const char *pre, lf_gen_params *gp) {
    const char *key = "stop_token_ids";
    const json_t *v = field(o, key);
    if (!v) return LF_OK;
    if (!json_is_array(v)) return fail(p, 400, "%s%s must be a list of integer token ids, got %s", pre, key, jtype(v));
    size_t n = json_array_size(v);
    if (n > p->L.max_stop_token_ids)
        return fail(p, 422, "%s%s: at most %zu ids are allowed, got %zu", pre, key, p->L.max_stop_token_ids, n);
    if (n == 0) return LF_OK;
    gp->stop_token_ids = calloc(n, sizeof *gp->stop_token_ids);
    if (!gp->stop_token_ids) return oom(p);
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(v, i);
        if (!json_is_integer(e))
            return fail(p, 400, "%s%s[%zu] must be an integer token id, got %s", pre, key, i, jtype(e));
        json_int_t id = json_integer_value(e);
        if (id < 0 || id > INT32_MAX)
            return fail(p, 422, "%s%s[%zu] must be a token id in [0, %d], got %lld", pre, key, i, INT32_MAX, (long long)id);
        gp->stop_token_ids[i] = (int32_t)id;
        gp->n_stop_token_ids = i + 1;
    }
    return LF_OK;
}

/* A number in [lo, hi] (422 outside, naming the range as `range`). */
static lf_status get_ranged(pctx *p, const json_t *o, const char *key, const char *pre, double lo, double hi,
                            int lo_open, const char *range, double *out, int *present) {
    int have = 0;
    lf_status st = get_num(p, o, key, pre, out, &have);
    if (present) *present = have;
    if (st || !have) return st;
    if (!((lo_open ? *out > lo : *out >= lo) && *out <= hi))
        return fail(p, 422, "%s%s must be in %s, got %g", pre, key, range, *out);
    return LF_OK;
}

/* Options we know but do not implement: accepted only with the value that changes nothing (what clients send
 * as a default), else 422 naming them. */
typedef enum { NOOP_FALSE, NOOP_TRUE, NOOP_INT0, NOOP_INT1, NOOP_NUM1, NOOP_EMPTY_OBJECT, NOOP_NONE } noop_kind;

static const struct {
    const char *key;
    noop_kind noop;
    const char *why;
} REFUSED[] = {
    {"n", NOOP_INT1, "send one request per sample"},
    {"best_of", NOOP_INT1, "send one request per sample"},
    {"num_beams", NOOP_INT1, "beam search is not supported"},
    {"use_beam_search", NOOP_FALSE, "beam search is not supported"},
    {"length_penalty", NOOP_NUM1, "it applies to beam search, which is not supported"},
    {"early_stopping", NOOP_FALSE, "it applies to beam search, which is not supported"},
    {"watermark", NOOP_FALSE, "watermarking is not supported"},
    {"top_n_tokens", NOOP_INT0, "alternatives per token are returned on the chat body only (logprobs + top_logprobs)"},
    {"decoder_input_details", NOOP_FALSE, "prompt token details are not returned"},
    {"logit_bias", NOOP_EMPTY_OBJECT, "logit biases are not supported"},
    {"grammar", NOOP_NONE, "constrained decoding is not supported"},
    {"min_tokens", NOOP_INT0, "a minimum length is not supported"},
    {"no_repeat_ngram_size", NOOP_INT0, "n-gram blocking is not supported (repetition_penalty, presence_penalty and "
                                        "frequency_penalty are)"},
    {"skip_special_tokens", NOOP_TRUE, "special tokens are always left out of the text"},
    {"spaces_between_special_tokens", NOOP_TRUE, "special tokens are always left out of the text"},
    {"include_stop_str_in_output", NOOP_FALSE, "the matched stop string is always left out of the text"},
};

static lf_status get_refused(pctx *p, const json_t *o, const char *pre) {
    lf_status st;
    for (size_t i = 0; i < sizeof REFUSED / sizeof REFUSED[0]; i++) {
        const char *key = REFUSED[i].key, *why = REFUSED[i].why;
        const json_t *v = field(o, key);
        if (!v) continue;
        switch (REFUSED[i].noop) {
        case NOOP_FALSE:
        case NOOP_TRUE: {
            int b = 0, want = REFUSED[i].noop == NOOP_TRUE;
            if ((st = get_bool(p, o, key, pre, &b, NULL))) return st;
            if (b != want)
                return unsupported(p, "%s%s is not supported (%s); leave it out or set it to %s", pre, key, why,
                                   want ? "true" : "false");
            break;
        }
        case NOOP_INT0:
        case NOOP_INT1: {
            int64_t want = REFUSED[i].noop == NOOP_INT1, x = want;
            if ((st = get_int(p, o, key, pre, want, INT64_MAX, &x, NULL))) return st;
            if (x != want) return unsupported(p, "%s%s must be %lld, got %lld (%s)", pre, key, (long long)want, (long long)x, why);
            break;
        }
        case NOOP_NUM1: {
            double x = 1.0;
            if ((st = get_num(p, o, key, pre, &x, NULL))) return st;
            if (x != 1.0) return unsupported(p, "%s%s must be 1, got %g (%s)", pre, key, x, why);
            break;
        }
        case NOOP_EMPTY_OBJECT:
            if (!json_is_object(v)) return fail(p, 400, "%s%s must be an object, got %s", pre, key, jtype(v));
            if (json_object_size(v) > 0) return unsupported(p, "%s%s is not supported (%s); leave it out or send {}", pre, key, why);
            break;
        case NOOP_NONE: return unsupported(p, "%s%s is not supported (%s)", pre, key, why);
        }
    }
    return LF_OK;
}

/* Keys of the generation parameters, the same on both bodies ("parameters.X" or top-level X). */
static const char *const COMMON_KEYS[] = {
    "temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "seed", "stop", "stop_sequences", "stop_token_ids", "ignore_eos", "truncate",
    "truncate_prompt_tokens", NULL};
/* Per body. */
static const char *const GENERATE_PARAM_KEYS[] = {"max_new_tokens", "do_sample", "return_full_text", "details",
                                                   "adapter_id", NULL};
static const char *const GENERATE_ROOT_KEYS[] = {"inputs", "parameters", "stream", "adapters", NULL};
static const char *const CHAT_KEYS[] = {"messages", "model", "max_tokens", "max_completion_tokens", "logprobs",
                                        "top_logprobs", "response_format", "stream_options", "tools", "tool_choice",
                                        "parallel_tool_calls", "user", "stream", "adapters", NULL};
static const char *const STREAM_OPTION_KEYS[] = {"include_usage", NULL};

static int in_list(const char *const *l, const char *k) {
    for (; l && *l; l++)
        if (strcmp(*l, k) == 0) return 1;
    return 0;
}

static int refused_key(const char *k) {
    for (size_t i = 0; i < sizeof REFUSED / sizeof REFUSED[0]; i++)
        if (strcmp(REFUSED[i].key, k) == 0) return 1;
    return 0;
}

/* 422 for the first key of o (insertion order) with a non-null value that is in none of the lists; the
 * message says where the key belongs when it is known elsewhere. */
static lf_status check_keys(pctx *p, const json_t *o, const char *pre, const char *const *a, const char *const *b,
                            int with_common, const char *hint_other, const char *const *other) {
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)o, k, v) {
        if (json_is_null(v)) continue;
        if (in_list(a, k) || in_list(b, k) || (with_common && (in_list(COMMON_KEYS, k) || refused_key(k)))) continue;
        if (other && in_list(other, k))
            return fail(p, 422, "%s%.64s is not a known parameter here (%s)", pre, k, hint_other);
        return fail(p, 422, "%s%.64s is not a known parameter (see \"Generation parameters\" in docs/serving.md)", pre, k);
    }
    return LF_OK;
}

static lf_status get_common(pctx *p, const json_t *o, const char *pre, lf_gen_params *gp, sampling_seen *seen) {
    lf_status st;
    if ((st = get_num(p, o, "temperature", pre, &gp->temperature, &seen->temperature))) return st;
    if (seen->temperature && !(gp->temperature >= 0))
        return fail(p, 422, "%stemperature must be >= 0, got %g", pre, gp->temperature);
    int64_t k = 0;
    if ((st = get_int(p, o, "top_k", pre, -1, INT64_MAX, &k, &seen->top_k))) return st;
    gp->top_k = k < 0 ? 0 : k;
    if ((st = get_ranged(p, o, "top_p", pre, 0, 1, 1, "(0, 1]", &gp->top_p, &seen->top_p))) return st;
    if ((st = get_ranged(p, o, "min_p", pre, 0, 1, 0, "[0, 1]", &gp->min_p, &seen->min_p))) return st;
    if ((st = get_ranged(p, o, "typical_p", pre, 0, 1, 1, "(0, 1] (1 = off)", &gp->typical_p, &seen->typical_p)))
        return st;
    int have = 0;
    if ((st = get_num(p, o, "repetition_penalty", pre, &gp->repetition_penalty, &have))) return st;
    if (have && !(gp->repetition_penalty > 0))
        return fail(p, 422, "%srepetition_penalty must be > 0, got %g", pre, gp->repetition_penalty);
    if ((st = get_ranged(p, o, "presence_penalty", pre, -2, 2, 0, "[-2, 2]", &gp->presence_penalty, NULL))) return st;
    if ((st = get_ranged(p, o, "frequency_penalty", pre, -2, 2, 0, "[-2, 2]", &gp->frequency_penalty, NULL))) return st;
    int64_t seed = 0;
    if ((st = get_int(p, o, "seed", pre, 0, INT64_MAX, &seed, &gp->has_seed))) return st;
    gp->seed = (uint64_t)seed;
    if ((st = get_stops(p, o, "stop", pre, gp))) return st;
    if ((st = get_stops(p, o, "stop_sequences", pre, gp))) return st;
    if ((st = get_stop_ids(p, o, pre, gp))) return st;
    if ((st = get_bool(p, o, "ignore_eos", pre, &gp->ignore_eos, NULL))) return st;
    int have_t = 0, have_tp = 0;
    int64_t t = 0, tp = 0;
    if ((st = get_int(p, o, "truncate", pre, 1, INT64_MAX, &t, &have_t))) return st;
    if ((st = get_int(p, o, "truncate_prompt_tokens", pre, 1, INT64_MAX, &tp, &have_tp))) return st;
    if (have_t && have_tp)
        return fail(p, 422, "give %struncate or %struncate_prompt_tokens, not both", pre, pre);
    gp->truncate = have_t ? t : have_tp ? tp : 0;
    return get_refused(p, o, pre);
}

/* =============================== hostile-input pre-scan =============================== */

/* Raw NUL bytes and nesting deeper than max_depth, found before jansson (whose recursion limit is 2048)
 * sees the text. Strings are skipped, escapes included. */
static lf_status prescan(pctx *p, const char *b, size_t n) {
    int depth = 0, in_str = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)b[i];
        if (c == 0) return fail(p, 400, "request body contains a NUL byte at offset %zu", i);
        if (in_str) {
            if (c == '\\') {
                i++;
                if (i < n && b[i] == 0) return fail(p, 400, "request body contains a NUL byte at offset %zu", i);
            } else if (c == '"') {
                in_str = 0;
            }
            continue;
        }
        if (c == '"') {
            in_str = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > p->L.max_depth)
                return fail(p, 400, "request body nests arrays/objects deeper than %d levels (at offset %zu)", p->L.max_depth, i);
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return LF_OK;
}

/* =============================== generate body =============================== */

static lf_status parse_generate(pctx *p, const json_t *root, lf_gen_request *r) {
    lf_status st;
    lf_gen_params *gp = &r->params;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)root, k, v) { /* a parameter at the top level belongs under "parameters" */
        if (!json_is_null(v) && !in_list(GENERATE_ROOT_KEYS, k) &&
            (in_list(COMMON_KEYS, k) || in_list(GENERATE_PARAM_KEYS, k) || refused_key(k)))
            return fail(p, 422, "%.64s is not a known top-level key of the generate body; put it under \"parameters\"", k);
    }
    if ((st = check_keys(p, root, "", GENERATE_ROOT_KEYS, NULL, 0, "", NULL))) return st;
    const json_t *in = field(root, "inputs");
    if (json_is_string(in)) {
        r->n_inputs = 1;
    } else if (json_is_array(in)) {
        r->n_inputs = json_array_size(in);
        r->inputs_is_list = 1;
        if (r->n_inputs == 0) return fail(p, 422, "inputs must not be an empty list");
        if (r->n_inputs > p->L.max_inputs)
            return fail(p, 422, "inputs has %zu prompts; the limit is %zu", r->n_inputs, p->L.max_inputs);
    } else {
        return fail(p, 400, "inputs must be a string or a list of strings, got %s", jtype(in));
    }
    r->inputs = calloc(r->n_inputs, sizeof *r->inputs);
    if (!r->inputs) return oom(p);
    for (size_t i = 0; i < r->n_inputs; i++) {
        const json_t *s = r->inputs_is_list ? json_array_get(in, i) : in;
        if (!json_is_string(s)) return fail(p, 400, "inputs[%zu] must be a string, got %s", i, jtype(s));
        if (json_string_length(s) == 0) {
            if (r->inputs_is_list) return fail(p, 422, "inputs[%zu] must not be empty", i);
            return fail(p, 422, "inputs must not be empty");
        }
        r->inputs[i] = dupn(json_string_value(s), json_string_length(s));
        if (!r->inputs[i]) return oom(p);
    }

    const json_t *pa = field(root, "parameters");
    json_t *empty = NULL;
    if (pa && !json_is_object(pa)) return fail(p, 400, "parameters must be an object, got %s", jtype(pa));
    if (!pa) pa = empty = json_object();
    if (!pa) return oom(p);
    const char *pre = "parameters.";
    sampling_seen seen = {0, 0, 0, 0, 0};
    int ds = 0, ds_present = 0;
    json_object_foreach((json_t *)pa, k, v) {
        if (!json_is_null(v) && in_list(GENERATE_ROOT_KEYS, k)) {
            st = fail(p, 422, "parameters.%.64s belongs at the top level of the body, not under \"parameters\"", k);
            goto out;
        }
    }
    if ((st = check_keys(p, pa, pre, GENERATE_PARAM_KEYS, NULL, 1,
                         "the chat body's name; the generate body uses max_new_tokens / details", CHAT_KEYS)))
        goto out;
    if ((st = get_int(p, pa, "max_new_tokens", pre, 1, p->L.max_new_tokens, &gp->max_new_tokens, NULL))) goto out;
    if ((st = get_common(p, pa, pre, gp, &seen))) goto out;
    if ((st = get_bool(p, pa, "do_sample", pre, &ds, &ds_present))) goto out;
    if ((st = get_bool(p, pa, "return_full_text", pre, &gp->return_full_text, NULL))) goto out;
    if ((st = get_bool(p, pa, "details", pre, &gp->details, NULL))) goto out;
    /* effective sampling (see lf_gen_params.do_sample) */
    int sample = ds_present ? ds
                            : (seen.temperature && gp->temperature > 0) || (seen.top_k && gp->top_k > 0) ||
                                  (seen.top_p && gp->top_p < 1) || (seen.min_p && gp->min_p > 0) ||
                                  (seen.typical_p && gp->typical_p < 1);
    if (!seen.temperature) gp->temperature = 1.0;
    if (!sample || gp->temperature == 0) {
        gp->temperature = 0;
        gp->do_sample = 0;
    } else {
        gp->do_sample = 1;
    }
    /* adapters: body "adapters" (LMI) or parameters.adapter_id (TGI) */
    const json_t *ad = field(root, "adapters"), *aid = field(pa, "adapter_id");
    if (ad && aid) {
        st = fail(p, 422, "give the adapter either as \"adapters\" or as parameters.adapter_id, not both");
        goto out;
    }
    if (ad && (st = get_adapters(p, ad, "adapters", r))) goto out;
    if (aid && (st = get_adapters(p, aid, "parameters.adapter_id", r))) goto out;
    st = LF_OK;
out:
    json_decref(empty);
    return st;
}

/* =============================== chat body =============================== */

static const char *KNOWN_ROLES[] = {"system", "user", "assistant", "tool", "developer", "function", "ipython", NULL};

/* Validate messages and return a normalized deep copy (content parts joined into a string). */
static lf_status parse_messages(pctx *p, const json_t *msgs, json_t **out) {
    *out = NULL;
    if (!json_is_array(msgs)) return fail(p, 400, "messages must be a list of objects, got %s", jtype(msgs));
    size_t n = json_array_size(msgs);
    if (n == 0) return fail(p, 422, "messages must not be empty");
    json_t *copy = json_deep_copy(msgs); /* depth is bounded by the pre-scan */
    if (!copy) return oom(p);
    lf_status st = LF_OK;
    char *joined = NULL;
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(copy, i);
        if (!json_is_object(m)) {
            st = fail(p, 400, "messages[%zu] must be an object, got %s", i, jtype(m));
            goto fail;
        }
        const json_t *role = field(m, "role");
        if (!json_is_string(role)) {
            st = fail(p, 400, "messages[%zu].role must be a string, got %s", i, role ? jtype(role) : "nothing");
            goto fail;
        }
        int known = 0;
        for (int k = 0; KNOWN_ROLES[k]; k++) known |= strcmp(json_string_value(role), KNOWN_ROLES[k]) == 0;
        if (!known) {
            st = fail(p, 422, "messages[%zu].role '%.64s' is not one of system, user, assistant, tool, developer", i,
                      json_string_value(role));
            goto fail;
        }
        json_t *c = json_object_get(m, "content");
        if (!c || json_is_null(c)) {
            /* an assistant turn that only calls tools may have no content */
            if (strcmp(json_string_value(role), "assistant") == 0 && field(m, "tool_calls")) continue;
            st = fail(p, 400, "messages[%zu].content is required (a string or a list of text parts)", i);
            goto fail;
        }
        if (json_is_string(c)) continue;
        if (!json_is_array(c)) {
            st = fail(p, 400, "messages[%zu].content must be a string or a list of parts, got %s", i, jtype(c));
            goto fail;
        }
        size_t total = 0, np = json_array_size(c);
        for (size_t j = 0; j < np; j++) {
            const json_t *part = json_array_get(c, j), *type = field(part, "type"), *text = field(part, "text");
            if (!json_is_object(part)) {
                st = fail(p, 400, "messages[%zu].content[%zu] must be an object, got %s", i, j, jtype(part));
                goto fail;
            }
            if (!json_is_string(type)) {
                st = fail(p, 400, "messages[%zu].content[%zu].type must be a string", i, j);
                goto fail;
            }
            if (strcmp(json_string_value(type), "text") != 0) {
                st = unsupported(p, "messages[%zu].content[%zu].type '%.64s' is not supported (text only)", i, j,
                                 json_string_value(type));
                goto fail;
            }
            if (!json_is_string(text)) {
                st = fail(p, 400, "messages[%zu].content[%zu].text must be a string, got %s", i, j,
                          text ? jtype(text) : "nothing");
                goto fail;
            }
            total += json_string_length(text) + 1;
        }
        joined = malloc(total + 1);
        if (!joined) {
            st = oom(p);
            goto fail;
        }
        size_t at = 0;
        for (size_t j = 0; j < np; j++) { /* parts joined by "\n", as vLLM does */
            const json_t *text = json_object_get(json_array_get(c, j), "text");
            if (j) joined[at++] = '\n';
            memcpy(joined + at, json_string_value(text), json_string_length(text));
            at += json_string_length(text);
        }
        if (json_object_set_new(m, "content", json_stringn(joined, at))) {
            st = oom(p);
            goto fail;
        }
        free(joined);
        joined = NULL;
    }
    *out = copy;
    return LF_OK;
fail:
    free(joined);
    json_decref(copy);
    return st;
}

static lf_status parse_chat(pctx *p, const json_t *root, lf_gen_request *r) {
    lf_status st;
    lf_gen_params *gp = &r->params;
    r->n_inputs = 1;
    if ((st = check_keys(p, root, "", CHAT_KEYS, NULL, 1,
                         "a generate-body parameter; the chat body uses max_tokens, temperature, logprobs",
                         GENERATE_PARAM_KEYS)))
        return st;
    if ((st = parse_messages(p, field(root, "messages"), &r->messages))) return st;
    gp->max_new_tokens = p->L.default_chat_max_tokens;
    int have = 0;
    if ((st = get_int(p, root, "max_tokens", "", 1, p->L.max_new_tokens, &gp->max_new_tokens, &have))) return st;
    if (!have && (st = get_int(p, root, "max_completion_tokens", "", 1, p->L.max_new_tokens, &gp->max_new_tokens, NULL)))
        return st;
    sampling_seen seen = {0, 0, 0, 0, 0};
    gp->temperature = 1.0;
    if ((st = get_common(p, root, "", gp, &seen))) return st;
    gp->do_sample = gp->temperature > 0;
    if ((st = get_bool(p, root, "logprobs", "", &gp->logprobs, NULL))) return st;
    int64_t top = 0;
    if ((st = get_int(p, root, "top_logprobs", "", 0, p->L.max_top_logprobs, &top, &have))) return st;
    if (top > 0 && !gp->logprobs) return fail(p, 422, "top_logprobs needs logprobs set to true");
    gp->top_logprobs = (int)top;
    const json_t *rf = field(root, "response_format");
    if (rf) {
        const json_t *t = field(rf, "type");
        if (!json_is_object(rf) || !json_is_string(t)) return fail(p, 400, "response_format must be an object with a string \"type\"");
        if (strcmp(json_string_value(t), "text") != 0)
            return unsupported(p, "response_format type '%.64s' is not supported (only \"text\")", json_string_value(t));
    }
    const json_t *so = field(root, "stream_options");
    if (so) {
        if (!json_is_object(so)) return fail(p, 400, "stream_options must be an object, got %s", jtype(so));
        if ((st = check_keys(p, so, "stream_options.", STREAM_OPTION_KEYS, NULL, 0, "", NULL))) return st;
        if ((st = get_bool(p, so, "include_usage", "stream_options.", &r->include_usage, NULL))) return st;
    }
    const json_t *tc = field(root, "tool_choice");
    if (tc && !(json_is_string(tc) && strcmp(json_string_value(tc), "auto") == 0))
        return unsupported(p, "tool_choice is not supported except \"auto\" (tool calls are not parsed or forced)");
    int par = 1;
    if ((st = get_bool(p, root, "parallel_tool_calls", "", &par, NULL))) return st;
    if (!par) return unsupported(p, "parallel_tool_calls: false is not supported (tool calls are not parsed)");
    const json_t *user = field(root, "user");
    if (user && !json_is_string(user)) return fail(p, 400, "user must be a string, got %s", jtype(user));
    const json_t *tools = field(root, "tools");
    if (tools) {
        if (!json_is_array(tools)) return fail(p, 400, "tools must be a list, got %s", jtype(tools));
        r->tools = json_deep_copy(tools);
        if (!r->tools) return oom(p);
    }
    const json_t *model = field(root, "model");
    if (model) {
        if (!json_is_string(model)) return fail(p, 400, "model must be a string, got %s", jtype(model));
        r->model = dupn(json_string_value(model), json_string_length(model));
        if (!r->model) return oom(p);
    }
    const json_t *ad = field(root, "adapters");
    if (ad && (st = get_adapters(p, ad, "adapters", r))) return st;
    return LF_OK;
}

lf_status lf_proto_parse(const char *body, size_t len, const lf_proto_limits *lim, lf_gen_request **out,
                         int *http_status, lf_err *err) {
    pctx P = {err, 200, effective_limits(lim)}, *p = &P;
    lf_status st;
    json_t *root = NULL;
    lf_gen_request *r = NULL;
    *out = NULL;
    if (len > p->L.max_body_bytes) {
        st = fail(p, 413, "request body is %zu bytes; the limit is %zu", len, p->L.max_body_bytes);
        goto fail;
    }
    if (!body || len == 0) {
        st = fail(p, 400, "empty request body (expected a JSON object)");
        goto fail;
    }
    if ((st = prescan(p, body, len))) goto fail;
    json_error_t je;
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je); /* no JSON_ALLOW_NUL: \u0000 is rejected */
    if (!root) {
        st = fail(p, 400, "invalid JSON at line %d column %d: %s", je.line, je.column, je.text);
        goto fail;
    }
    if (!json_is_object(root)) {
        st = fail(p, 400, "request body must be a JSON object, got %s", jtype(root));
        goto fail;
    }
    r = calloc(1, sizeof *r);
    if (!r) {
        st = oom(p);
        goto fail;
    }
    r->params.max_new_tokens = p->L.default_max_new_tokens;
    r->params.top_p = 1.0;
    r->params.typical_p = 1.0;
    r->params.repetition_penalty = 1.0;
    if (field(root, "messages")) {
        r->kind = LF_REQ_CHAT;
        st = parse_chat(p, root, r);
    } else if (field(root, "inputs")) {
        r->kind = LF_REQ_GENERATE;
        st = parse_generate(p, root, r);
    } else {
        st = fail(p, 400, "request body needs \"inputs\" (text generation) or \"messages\" (chat completion)");
    }
    if (st) goto fail;
    if ((st = get_bool(p, root, "stream", "", &r->stream, NULL))) goto fail;
    json_decref(root);
    *out = r;
    *http_status = 200;
    return LF_OK;
fail:
    json_decref(root);
    lf_proto_request_free(r);
    *http_status = P.status == 200 ? 500 : P.status;
    return st;
}

static void free_strv(char **v, size_t n) {
    if (!v) return;
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

void lf_proto_request_free(lf_gen_request *r) {
    if (!r) return;
    free_strv(r->inputs, r->n_inputs);
    json_decref(r->messages);
    json_decref(r->tools);
    free(r->model);
    free_strv(r->params.stop, r->params.n_stop);
    free(r->params.stop_token_ids);
    free_strv(r->body_adapters, r->n_body_adapters);
    free_strv(r->adapters, r->adapters ? r->n_inputs : 0);
    free(r);
}

/* =============================== adapters =============================== */

static int loaded(lf_proto_is_loaded_fn f, void *user, const char *name) { return f ? f(user, name) != 0 : 1; }

/* Target-Model "path/name.tar.gz" -> "name" in buf; 0 when there is nothing to strip. */
static int target_basename(const char *t, char *buf, size_t cap) {
    const char *b = strrchr(t, '/');
    b = b ? b + 1 : t;
    size_t n = strlen(b);
    if (n > 7 && strcmp(b + n - 7, ".tar.gz") == 0) n -= 7;
    else if (n > 4 && strcmp(b + n - 4, ".tgz") == 0) n -= 4;
    if (n == 0 || n >= cap || (b == t && n == strlen(t))) return 0;
    memcpy(buf, b, n);
    buf[n] = '\0';
    return 1;
}

lf_status lf_proto_resolve_adapters(lf_gen_request *r, const lf_proto_headers *h, lf_proto_is_loaded_fn is_loaded,
                                    void *user, int *http_status, lf_err *err) {
    pctx P = {err, 200, lf_proto_default_limits()}, *p = &P;
    lf_proto_headers none = {NULL, NULL, NULL};
    if (!h) h = &none;
    free_strv(r->adapters, r->adapters ? r->n_inputs : 0);
    r->adapters = NULL;
    r->adapter_source = LF_ADAPTER_FROM_NONE;
    const char *all = "", *alias = NULL;
    char base[MAX_ADAPTER_NAME + 1];
    int per_input = 0;
    if (h->adapter_identifier && h->adapter_identifier[0]) {
        all = h->adapter_identifier;
        alias = "X-Amzn-SageMaker-Adapter-Identifier";
        r->adapter_source = LF_ADAPTER_FROM_HEADER_ID;
    } else if (is_loaded && h->inference_component && h->inference_component[0] && is_loaded(user, h->inference_component)) {
        all = h->inference_component;
        r->adapter_source = LF_ADAPTER_FROM_HEADER_IC;
    } else if (is_loaded && h->target_model && h->target_model[0] &&
               (is_loaded(user, h->target_model) ||
                (target_basename(h->target_model, base, sizeof base) && is_loaded(user, base)))) {
        all = is_loaded(user, h->target_model) ? h->target_model : base;
        r->adapter_source = LF_ADAPTER_FROM_HEADER_TARGET;
    } else if (r->n_body_adapters > 0) {
        per_input = r->n_body_adapters > 1;
        all = r->body_adapters[0];
        alias = "adapters";
        r->adapter_source = LF_ADAPTER_FROM_BODY;
    } else if (is_loaded && r->model && r->model[0] && is_loaded(user, r->model)) {
        all = r->model;
        r->adapter_source = LF_ADAPTER_FROM_MODEL;
    }
    r->adapters = calloc(r->n_inputs, sizeof *r->adapters);
    if (!r->adapters) goto nomem;
    for (size_t i = 0; i < r->n_inputs; i++) {
        const char *name = per_input ? r->body_adapters[i] : all;
        if (name[0] && alias && !loaded(is_loaded, user, name)) {
            fail(p, 404, "adapter '%.256s' (from %s) was not found; register it with POST /adapters", name, alias);
            goto out_fail;
        }
        r->adapters[i] = strdup(name);
        if (!r->adapters[i]) goto nomem;
    }
    if (r->adapter_source == LF_ADAPTER_FROM_BODY) {
        int any = 0;
        for (size_t i = 0; i < r->n_inputs; i++) any |= r->adapters[i][0] != 0;
        if (!any) r->adapter_source = LF_ADAPTER_FROM_NONE;
    }
    *http_status = 200;
    return LF_OK;
nomem:
    oom(p);
out_fail:
    free_strv(r->adapters, r->n_inputs);
    r->adapters = NULL;
    r->adapter_source = LF_ADAPTER_FROM_NONE;
    *http_status = P.status;
    return err ? err->code : (P.status == 404 ? LF_ENOTFOUND : LF_ENOMEM);
}

/* =============================== output helpers =============================== */

const char *lf_proto_finish_name(lf_finish_reason r, int openai) {
    switch (r) {
    case LF_FINISH_NONE: return NULL;
    case LF_FINISH_LENGTH: return "length";
    case LF_FINISH_EOS: return openai ? "stop" : "eos_token";
    case LF_FINISH_STOP: return openai ? "stop" : "stop_sequence";
    case LF_FINISH_ERROR: return "error";
    }
    return NULL;
}

/* Length of the valid UTF-8 character at s[0..n), 0 if invalid (RFC 3629: no overlongs, surrogates or
 * code points above U+10FFFF). */
static size_t utf8_char(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t need = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (need == 0 || n < need) return 0;
    for (size_t i = 1; i < need; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F) || (c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] > 0x8F))
        return 0;
    return need;
}

/* JSON string from any bytes: invalid UTF-8 bytes become U+FFFD; NUL bytes are kept (dumped as \u0000). */
static json_t *jstr(const char *s, size_t n) {
    if (!s || n == 0) return json_string("");
    json_t *j = json_stringn(s, n);
    if (j) return j;
    char *t = malloc(3 * n + 1);
    if (!t) return NULL;
    size_t at = 0;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t l = utf8_char(u + i, n - i);
        if (l) {
            memcpy(t + at, u + i, l);
            at += l;
            i += l;
        } else {
            memcpy(t + at, "\xEF\xBF\xBD", 3);
            at += 3;
            i++;
        }
    }
    j = json_stringn(t, at);
    free(t);
    return j;
}

/* Log-probabilities: -inf (probability 0) is not JSON; OpenAI reports -9999.0 for it. */
static json_t *jlogprob(float lp) {
    if (isnan(lp)) return json_null();
    if (!isfinite(lp)) return json_real(lp < 0 ? -9999.0 : 0.0);
    /* the shortest decimal that reads back as the same float ("-0.1", not "-0.10000000149011612"); dump()
     * prints reals with 9 significant digits, which reproduces that decimal exactly */
    char buf[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)lp);
        if ((float)strtod(buf, NULL) == lp) break;
    }
    return json_real(strtod(buf, NULL));
}

/* Serialize compactly into a malloc'd buffer with an optional stream framing; decrefs j. */
static char *dump(json_t *j, int framed, lf_stream_format f, size_t *len) {
    char *out = NULL;
    if (!j) goto done;
    const size_t flags = JSON_COMPACT | JSON_REAL_PRECISION(9);
    size_t n = json_dumpb(j, NULL, 0, flags);
    if (n == 0) goto done;
    const char *pre = framed && f == LF_STREAM_SSE ? "data: " : "";
    const char *post = !framed ? "" : f == LF_STREAM_SSE ? "\n\n" : "\n";
    size_t a = strlen(pre), b = strlen(post);
    out = malloc(a + n + b + 1);
    if (!out) goto done;
    memcpy(out, pre, a);
    json_dumpb(j, out + a, n, flags);
    memcpy(out + a + n, post, b);
    out[a + n + b] = '\0';
    if (len) *len = a + n + b;
done:
    json_decref(j);
    return out;
}

/* json_object_set_new that records failure (a NULL value or an allocation failure) in *ok. */
static void put(json_t *o, const char *k, json_t *v, int *ok) {
    if (!v) {
        *ok = 0;
    } else if (!o) {
        json_decref(v);
        *ok = 0;
    } else if (json_object_set_new(o, k, v)) { /* set_new drops v on failure */
        *ok = 0;
    }
}

/* Append to a list; the item is dropped on failure. */
static void push(json_t *a, json_t *v, int *ok) {
    if (!v) {
        *ok = 0;
    } else if (!a) {
        json_decref(v);
        *ok = 0;
    } else if (json_array_append_new(a, v)) {
        *ok = 0;
    }
}

static int contains_nocase(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0) return 1;
    return 0;
}

lf_stream_format lf_proto_stream_format_for(const char *accept, int tgi_compat) {
    if (accept && contains_nocase(accept, "text/event-stream")) return LF_STREAM_SSE;
    if (accept && contains_nocase(accept, "jsonlines")) return LF_STREAM_JSONLINES;
    return tgi_compat ? LF_STREAM_SSE : LF_STREAM_JSONLINES;
}

const char *lf_proto_stream_content_type(lf_stream_format f) {
    return f == LF_STREAM_SSE ? "text/event-stream" : "application/jsonlines";
}

char *lf_proto_frame(lf_stream_format f, const char *json, size_t len, size_t *out_len) {
    const char *pre = f == LF_STREAM_SSE ? "data: " : "";
    const char *post = f == LF_STREAM_SSE ? "\n\n" : "\n";
    size_t a = strlen(pre), b = strlen(post);
    char *out = malloc(a + len + b + 1);
    if (!out) return NULL;
    memcpy(out, pre, a);
    if (len) memcpy(out + a, json, len); /* json may be NULL when len is 0 */
    memcpy(out + a + len, post, b);
    out[a + len + b] = '\0';
    if (out_len) *out_len = a + len + b;
    return out;
}

const char *lf_proto_sse_done(void) { return "data: [DONE]\n\n"; }

static json_t *token_obj(const lf_gen_token *t, const lf_proto_out *o) {
    json_t *j = json_object();
    int ok = 1;
    put(j, "id", json_integer(t ? t->id : -1), &ok);
    put(j, "text", t ? jstr(t->text, t->text_len) : json_string(""), &ok);
    put(j, o && o->tgi_compat ? "logprob" : "log_prob", t ? jlogprob(t->log_prob) : json_real(0.0), &ok);
    put(j, "special", json_boolean(t ? t->special : 1), &ok);
    if (!ok) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static json_t *generated_text(const lf_gen_result *r, const lf_proto_out *o) {
    if (!(o && o->return_full_text && r->prompt && r->prompt_len)) return jstr(r->text, r->text_len);
    char *t = malloc(r->prompt_len + r->text_len + 1);
    if (!t) return NULL;
    memcpy(t, r->prompt, r->prompt_len);
    if (r->text_len) memcpy(t + r->prompt_len, r->text, r->text_len);
    json_t *j = jstr(t, r->prompt_len + r->text_len);
    free(t);
    return j;
}

/* details: {finish_reason, generated_tokens, seed, [input_length], [tokens], [prefill]} */
static json_t *details_obj(const lf_gen_result *r, const lf_proto_out *o, int stream) {
    json_t *d = json_object();
    int ok = 1;
    const char *fin = lf_proto_finish_name(r->finish, 0);
    put(d, "finish_reason", fin ? json_string(fin) : json_null(), &ok);
    put(d, "generated_tokens", json_integer(r->generated_tokens), &ok);
    put(d, "seed", r->has_seed ? json_integer((json_int_t)(r->seed & 0x7fffffffffffffffull)) : json_null(), &ok);
    if (stream) {
        put(d, "input_length", json_integer(r->prompt_tokens), &ok);
    } else {
        json_t *toks = json_array();
        for (size_t i = 0; ok && i < r->n_tokens; i++) {
            push(toks, token_obj(&r->tokens[i], o), &ok);
        }
        put(d, "tokens", toks, &ok);
        if (o && o->tgi_compat) put(d, "prefill", json_array(), &ok);
    }
    if (!ok) {
        json_decref(d);
        return NULL;
    }
    return d;
}

static json_t *result_obj(const lf_gen_result *r, const lf_proto_out *o) {
    json_t *j = json_object();
    int ok = 1;
    put(j, "generated_text", generated_text(r, o), &ok);
    if ((o && o->details) || r->finish == LF_FINISH_ERROR) put(j, "details", details_obj(r, o, 0), &ok);
    if (r->finish == LF_FINISH_ERROR) put(j, "error", json_string(r->error ? r->error : "generation failed"), &ok);
    if (!ok) {
        json_decref(j);
        return NULL;
    }
    return j;
}

char *lf_proto_generate_body(const lf_gen_result *res, size_t n, int as_list, const lf_proto_out *o, size_t *len) {
    if (n == 1 && !as_list && !(o && o->tgi_compat)) return dump(result_obj(&res[0], o), 0, LF_STREAM_JSONLINES, len);
    json_t *arr = json_array();
    int ok = 1;
    for (size_t i = 0; ok && i < n; i++) push(arr, result_obj(&res[i], o), &ok);
    if (!ok) {
        json_decref(arr);
        return NULL;
    }
    return dump(arr, 0, LF_STREAM_JSONLINES, len);
}

char *lf_proto_stream_token(const lf_gen_token *tok, size_t index, const lf_gen_result *final, const lf_proto_out *o,
                            size_t *len) {
    json_t *j = json_object();
    int ok = 1;
    lf_stream_format f = o ? o->format : LF_STREAM_JSONLINES;
    if (o && o->tgi_compat) put(j, "index", json_integer((json_int_t)index), &ok);
    put(j, "token", token_obj(tok, o), &ok);
    int failed = final && final->finish == LF_FINISH_ERROR;
    put(j, "generated_text", final && !failed ? generated_text(final, o) : json_null(), &ok);
    put(j, "details", final ? details_obj(final, o, 1) : json_null(), &ok);
    if (failed) put(j, "error", json_string(final->error ? final->error : "generation failed"), &ok);
    if (!ok) {
        json_decref(j);
        return NULL;
    }
    return dump(j, 1, f, len);
}

char *lf_proto_stream_error(const char *msg, int code, int64_t generated_tokens, const lf_proto_out *o, size_t *len) {
    lf_gen_result r;
    memset(&r, 0, sizeof r);
    r.finish = LF_FINISH_ERROR;
    r.error = msg ? msg : "generation failed";
    r.generated_tokens = generated_tokens;
    json_t *j = json_object();
    int ok = 1;
    if (o && o->tgi_compat) put(j, "index", json_integer(0), &ok);
    put(j, "token", token_obj(NULL, o), &ok);
    put(j, "generated_text", json_null(), &ok);
    put(j, "details", details_obj(&r, o, 1), &ok);
    put(j, "error", json_string(r.error), &ok);
    put(j, "code", json_integer(code), &ok);
    if (!ok) {
        json_decref(j);
        return NULL;
    }
    return dump(j, 1, o ? o->format : LF_STREAM_JSONLINES, len);
}

static const char *error_type(int status) {
    switch (status) {
    case 400:
    case 413:
    case 422: return "validation";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 424: return "generation";
    case 429: return "overloaded";
    case 503: return "unavailable";
    }
    return status >= 500 ? "internal" : "request";
}

char *lf_proto_error_body(int status, const char *msg, size_t *len) {
    json_t *j = json_object();
    int ok = 1;
    put(j, "error", jstr(msg ? msg : "", msg ? strlen(msg) : 0), &ok);
    put(j, "code", json_integer(status), &ok);
    put(j, "error_type", json_string(error_type(status)), &ok);
    if (!ok) {
        json_decref(j);
        return NULL;
    }
    return dump(j, 0, LF_STREAM_JSONLINES, len);
}

/* =============================== OpenAI chat =============================== */

static json_t *bytes_arr(const char *s, size_t n) {
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) {
        if (json_array_append_new(a, json_integer((unsigned char)s[i]))) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

static json_t *logprob_entry(const lf_gen_token *t, int with_top) {
    json_t *e = json_object();
    int ok = 1;
    put(e, "token", jstr(t->text, t->text_len), &ok);
    put(e, "logprob", jlogprob(t->log_prob), &ok);
    put(e, "bytes", bytes_arr(t->text, t->text_len), &ok);
    if (with_top) {
        json_t *top = json_array();
        for (size_t k = 0; ok && top && k < t->n_top; k++) {
            push(top, logprob_entry(&t->top[k], 0), &ok);
        }
        put(e, "top_logprobs", top, &ok);
    }
    if (!ok) {
        json_decref(e);
        return NULL;
    }
    return e;
}

static json_t *logprobs_obj(const lf_gen_token *toks, size_t n) {
    json_t *content = json_array(), *o = json_object();
    int ok = 1;
    for (size_t i = 0; ok && content && i < n; i++) {
        push(content, logprob_entry(&toks[i], 1), &ok);
    }
    put(o, "content", content, &ok);
    if (!ok) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *usage_obj(const lf_gen_result *r) {
    json_t *u = json_object();
    int ok = 1;
    put(u, "prompt_tokens", json_integer(r->prompt_tokens), &ok);
    put(u, "completion_tokens", json_integer(r->generated_tokens), &ok);
    put(u, "total_tokens", json_integer(r->prompt_tokens + r->generated_tokens), &ok);
    if (!ok) {
        json_decref(u);
        return NULL;
    }
    return u;
}

static json_t *chat_head(const lf_chat_meta *m, const char *object, int *ok) {
    json_t *j = json_object();
    put(j, "id", json_string(m && m->id ? m->id : "chatcmpl-0"), ok);
    put(j, "object", json_string(object), ok);
    put(j, "created", json_integer(m ? m->created : 0), ok);
    put(j, "model", jstr(m && m->model ? m->model : "", m && m->model ? strlen(m->model) : 0), ok);
    return j;
}

char *lf_proto_chat_body(const lf_chat_meta *m, const lf_gen_result *res, int logprobs, size_t *len) {
    int ok = 1;
    json_t *j = chat_head(m, "chat.completion", &ok);
    json_t *choices = json_array(), *choice = json_object(), *msg = json_object();
    put(msg, "role", json_string("assistant"), &ok);
    put(msg, "content", jstr(res->text, res->text_len), &ok);
    put(choice, "index", json_integer(0), &ok);
    put(choice, "message", msg, &ok);
    put(choice, "logprobs", logprobs ? logprobs_obj(res->tokens, res->n_tokens) : json_null(), &ok);
    const char *fin = lf_proto_finish_name(res->finish, 1);
    put(choice, "finish_reason", fin ? json_string(fin) : json_null(), &ok);
    push(choices, choice, &ok);
    put(j, "choices", choices, &ok);
    put(j, "usage", usage_obj(res), &ok);
    if (!ok) {
        json_decref(j);
        return NULL;
    }
    return dump(j, 0, LF_STREAM_JSONLINES, len);
}

char *lf_proto_chat_chunk(const lf_chat_meta *m, const lf_chat_delta *d, lf_stream_format f, size_t *len) {
    int ok = 1;
    json_t *j = chat_head(m, "chat.completion.chunk", &ok);
    json_t *choices = json_array(), *choice = json_object(), *delta = json_object();
    if (d->first) put(delta, "role", json_string("assistant"), &ok);
    if (d->text || d->first) put(delta, "content", jstr(d->text, d->text_len), &ok);
    put(choice, "index", json_integer(0), &ok);
    put(choice, "delta", delta, &ok);
    put(choice, "logprobs", d->tokens ? logprobs_obj(d->tokens, d->n_tokens) : json_null(), &ok);
    const char *fin = lf_proto_finish_name(d->finish, 1);
    put(choice, "finish_reason", fin ? json_string(fin) : json_null(), &ok);
    push(choices, choice, &ok);
    put(j, "choices", choices, &ok);
    if (d->usage) put(j, "usage", usage_obj(d->usage), &ok);
    if (d->finish == LF_FINISH_ERROR) {
        json_t *e = json_object();
        const char *msg = d->error ? d->error : "generation failed";
        put(e, "message", jstr(msg, strlen(msg)), &ok);
        put(e, "code", json_integer(500), &ok);
        put(j, "error", e, &ok);
    }
    if (!ok) {
        json_decref(j);
        return NULL;
    }
    return dump(j, 1, f, len);
}
