/* data_formats.c - one dataset row -> one tokenized example: alpaca / sharegpt / openai rows become chat
 * messages (LLaMA-Factory's converters), the chat template renders them incrementally into source/target
 * segments, each segment is tokenized on its own, and LLaMA-Factory's per-turn truncation and label rules
 * build input_ids + labels. Tokenized rows are checked, unpadded and cut. See data.h for the rules. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/data_int.h"

/* ---- small vectors ---- */

lf_status lf_i32vec_reserve(lf_i32vec *x, int64_t n, lf_err *err) {
    if (n <= x->cap) return LF_OK;
    int64_t cap = x->cap ? x->cap : 256;
    while (cap < n) cap *= 2;
    int32_t *v = realloc(x->v, (size_t)cap * sizeof *v);
    if (!v) return lf_err_set(err, LF_ENOMEM, "data: out of memory for %lld tokens", (long long)cap);
    x->v = v;
    x->cap = cap;
    return LF_OK;
}

lf_status lf_i32vec_push(lf_i32vec *x, const int32_t *src, int64_t n, lf_err *err) {
    lf_status st = lf_i32vec_reserve(x, x->n + n, err);
    if (st) return st;
    if (n) memcpy(x->v + x->n, src, (size_t)n * sizeof *src);
    x->n += n;
    return LF_OK;
}

lf_status lf_i32vec_fill(lf_i32vec *x, int32_t value, int64_t n, lf_err *err) {
    lf_status st = lf_i32vec_reserve(x, x->n + n, err);
    if (st) return st;
    for (int64_t i = 0; i < n; i++) x->v[x->n + i] = value;
    x->n += n;
    return LF_OK;
}

void lf_i32vec_free(lf_i32vec *x) {
    free(x->v);
    memset(x, 0, sizeof *x);
}

/* ---- formats ---- */

const char *lf_dfmt_name(lf_dfmt_kind k) {
    switch (k) {
    case LF_DFMT_AUTO: return "auto";
    case LF_DFMT_ALPACA: return "alpaca";
    case LF_DFMT_SHAREGPT: return "sharegpt";
    case LF_DFMT_OPENAI: return "openai";
    case LF_DFMT_TOKENIZED: return "tokenized";
    }
    return "?";
}

void lf_dfmt_defaults(lf_dfmt *f, lf_dfmt_kind kind) {
    memset(f, 0, sizeof *f);
    f->kind = kind;
    /* LLaMA-Factory DatasetAttr defaults */
    f->prompt = "instruction";
    f->query = "input";
    f->response = "output";
    if (kind == LF_DFMT_OPENAI) {
        f->messages = "messages";
        f->role_tag = "role";
        f->content_tag = "content";
        f->user_tag = "user";
        f->assistant_tag = "assistant";
        f->observation_tag = "tool";
        f->function_tag = "function_call";
        f->system_tag = "system";
    } else {
        f->messages = "conversations";
        f->role_tag = "from";
        f->content_tag = "value";
        f->user_tag = "human";
        f->assistant_tag = "gpt";
        f->observation_tag = "observation";
        f->function_tag = "function_call";
        f->system_tag = "system";
    }
}

int lf_dfmt_detect(const json_t *row, lf_dfmt *f) {
    if (!json_is_object(row)) return 0;
    lf_dfmt_kind k;
    if (json_object_get(row, "input_ids")) k = LF_DFMT_TOKENIZED;
    else if (json_object_get(row, "conversations")) k = LF_DFMT_SHAREGPT;
    else if (json_object_get(row, "messages")) k = LF_DFMT_OPENAI;
    else if (json_object_get(row, "instruction") || json_object_get(row, "output")) k = LF_DFMT_ALPACA;
    else return 0;
    lf_dfmt_defaults(f, k);
    f->lenient = 1;
    f->system = "system";
    f->tools = "tools";
    if (k == LF_DFMT_ALPACA) f->history = "history";
    return 1;
}

/* A column's value; NULL when the column is unused, absent or JSON null (HF datasets fills absent keys with None). */
static const json_t *col(const json_t *row, const char *name) {
    if (!name) return NULL;
    const json_t *v = json_object_get(row, name);
    return json_is_null(v) ? NULL : v;
}

static const char *type_name(const json_t *v) {
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

/* {role, content} with content a new string of s[n] (or the borrowed JSON string when src is non-NULL). */
static json_t *make_msg(const char *role, json_t *src, const char *s, size_t n) {
    json_t *m = json_object();
    json_t *c = src ? json_incref(src) : json_stringn(s, n);
    if (!m || !c || json_object_set_new(m, "role", json_string(role)) || json_object_set_new(m, "content", c)) {
        json_decref(m);
        return NULL;
    }
    return m;
}

static lf_status push_msg(json_t *msgs, const char *role, json_t *src, const char *s, size_t n, lf_err *err) {
    json_t *m = make_msg(role, src, s, n);
    if (!m || json_array_append_new(msgs, m)) return lf_err_set(err, LF_ENOMEM, "data: out of memory building messages");
    return LF_OK;
}

#define SKIP(...)                             \
    do {                                      \
        snprintf(reason, cap, __VA_ARGS__);   \
        goto done;                            \
    } while (0)

/* alpaca -> messages (LLaMA-Factory AlpacaDatasetConverter). */
static lf_status alpaca_messages(const lf_dfmt *f, const json_t *row, json_t **out, char *reason, size_t cap, lf_err *err) {
    lf_status st = LF_OK;
    char *user = NULL;
    json_t *msgs = json_array();
    if (!msgs) return lf_err_set(err, LF_ENOMEM, "data: out of memory");
    const json_t *sys = col(row, f->system), *hist = col(row, f->history), *p = col(row, f->prompt),
                 *q = col(row, f->query), *r = col(row, f->response);
    if (sys && !json_is_string(sys)) SKIP("'%s' must be a string, got %s", f->system, type_name(sys));
    if (sys && json_string_length(sys) > 0) LF_TRY(push_msg(msgs, "system", (json_t *)sys, NULL, 0, err));
    if (hist) {
        if (!json_is_array(hist)) SKIP("'%s' must be a list of [user, assistant] pairs, got %s", f->history, type_name(hist));
        size_t i;
        json_t *pair;
        json_array_foreach(hist, i, pair) {
            json_t *a = json_array_get(pair, 0), *b = json_array_get(pair, 1);
            if (!json_is_array(pair) || json_array_size(pair) != 2 || !json_is_string(a) || !json_is_string(b))
                SKIP("'%s'[%zu] must be a [user, assistant] pair of strings", f->history, i);
            LF_TRY(push_msg(msgs, "user", a, NULL, 0, err));
            LF_TRY(push_msg(msgs, "assistant", b, NULL, 0, err));
        }
    }
    if (!p && !q) SKIP("missing '%s'", f->prompt ? f->prompt : "instruction");
    if (p && !json_is_string(p)) SKIP("'%s' must be a string, got %s", f->prompt, type_name(p));
    if (q && !json_is_string(q)) SKIP("'%s' must be a string, got %s", f->query, type_name(q));
    if (!r) SKIP("missing '%s'", f->response ? f->response : "output");
    if (!json_is_string(r)) SKIP("'%s' must be a string, got %s", f->response, type_name(r));
    if (json_string_length(r) == 0) SKIP("empty response '%s'", f->response);
    size_t pn = p ? json_string_length(p) : 0, qn = q ? json_string_length(q) : 0;
    user = malloc(pn + qn + 2);
    LF_CHECK_ALLOC(user, err);
    size_t n = 0;
    if (pn) memcpy(user, json_string_value(p), pn), n = pn;
    if (qn) {
        if (n) user[n++] = '\n';
        memcpy(user + n, json_string_value(q), qn);
        n += qn;
    }
    LF_TRY(push_msg(msgs, "user", NULL, user, n, err));
    LF_TRY(push_msg(msgs, "assistant", (json_t *)r, NULL, 0, err));
done:
    free(user);
    if (reason[0]) json_decref(msgs), msgs = NULL;
    *out = msgs;
    return LF_OK;
fail:
    free(user);
    json_decref(msgs);
    *out = NULL;
    if (st == LF_OK) st = LF_ENOMEM;
    return st;
}

typedef enum { R_NONE, R_USER, R_ASSISTANT, R_SYSTEM, R_OBSERVATION, R_FUNCTION } role_kind;

static int eq(const char *a, const char *b) { return a && b && !strcmp(a, b); }

static role_kind map_role(const lf_dfmt *f, const char *r) {
    if (eq(r, f->user_tag)) return R_USER;
    if (eq(r, f->assistant_tag)) return R_ASSISTANT;
    if (eq(r, f->system_tag)) return R_SYSTEM;
    if (eq(r, f->observation_tag)) return R_OBSERVATION;
    if (eq(r, f->function_tag)) return R_FUNCTION;
    if (f->lenient) {
        if (eq(r, "human") || eq(r, "user")) return R_USER;
        if (eq(r, "gpt") || eq(r, "assistant")) return R_ASSISTANT;
        if (eq(r, "system")) return R_SYSTEM;
        if (eq(r, "observation") || eq(r, "tool")) return R_OBSERVATION;
        if (eq(r, "function_call")) return R_FUNCTION;
    }
    return R_NONE;
}

static const json_t *msg_field(const lf_dfmt *f, const json_t *m, const char *tag, const char *alt1, const char *alt2) {
    const json_t *v = json_object_get(m, tag);
    if (!v && f->lenient) {
        v = json_object_get(m, alt1);
        if (!v) v = json_object_get(m, alt2);
    }
    return v;
}

/* sharegpt / openai -> messages (LLaMA-Factory SharegptDatasetConverter: optional leading system turn, then
 * user-side (user|observation) and assistant-side (assistant|function_call) turns alternating, even count). */
static lf_status sharegpt_messages(const lf_dfmt *f, const json_t *row, json_t **out, char *reason, size_t cap,
                                   lf_err *err) {
    lf_status st = LF_OK;
    json_t *msgs = json_array();
    if (!msgs) return lf_err_set(err, LF_ENOMEM, "data: out of memory");
    const json_t *conv = col(row, f->messages);
    if (!conv) SKIP("missing '%s'", f->messages);
    if (!json_is_array(conv)) SKIP("'%s' must be a list, got %s", f->messages, type_name(conv));
    size_t n = json_array_size(conv), start = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *m = json_array_get(conv, i);
        if (!json_is_object(m)) SKIP("'%s'[%zu] must be an object, got %s", f->messages, i, type_name(m));
        const json_t *role = msg_field(f, m, f->role_tag, "role", "from");
        const json_t *content = msg_field(f, m, f->content_tag, "content", "value");
        if (!role) SKIP("'%s'[%zu]: missing '%s'", f->messages, i, f->role_tag);
        if (!json_is_string(role)) SKIP("'%s'[%zu]: '%s' must be a string", f->messages, i, f->role_tag);
        if (!content) SKIP("'%s'[%zu]: missing '%s'", f->messages, i, f->content_tag);
        if (!json_is_string(content))
            SKIP("'%s'[%zu]: '%s' must be a string, got %s", f->messages, i, f->content_tag, type_name(content));
        role_kind rk = map_role(f, json_string_value(role));
        if (rk == R_NONE) SKIP("'%s'[%zu]: unknown role '%s'", f->messages, i, json_string_value(role));
        if (rk == R_SYSTEM) {
            if (i != 0) SKIP("'%s'[%zu]: a system turn is only allowed first", f->messages, i);
            if (json_string_length(content) > 0) LF_TRY(push_msg(msgs, "system", (json_t *)content, NULL, 0, err));
            start = 1;
            continue;
        }
        int user_side = ((i - start) % 2) == 0;
        if (user_side && rk != R_USER && rk != R_OBSERVATION)
            SKIP("'%s'[%zu]: expected a user turn, got '%s'", f->messages, i, json_string_value(role));
        if (!user_side && rk != R_ASSISTANT && rk != R_FUNCTION)
            SKIP("'%s'[%zu]: expected an assistant turn, got '%s'", f->messages, i, json_string_value(role));
        const char *r = rk == R_USER ? "user" : rk == R_OBSERVATION ? "tool" : "assistant";
        LF_TRY(push_msg(msgs, r, (json_t *)content, NULL, 0, err));
    }
    if (start == 0) {
        const json_t *sys = col(row, f->system);
        if (sys && !json_is_string(sys)) SKIP("'%s' must be a string, got %s", f->system, type_name(sys));
        if (sys && json_string_length(sys) > 0) {
            json_t *m = make_msg("system", (json_t *)sys, NULL, 0);
            if (!m || json_array_insert_new(msgs, 0, m)) {
                st = lf_err_set(err, LF_ENOMEM, "data: out of memory");
                goto fail;
            }
        }
    }
    if (n - start == 0) SKIP("'%s' has no turns", f->messages);
    if ((n - start) % 2 != 0) SKIP("'%s' must end with an assistant turn (%zu turns)", f->messages, n - start);
    {
        json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
        if (json_string_length(json_object_get(last, "content")) == 0) SKIP("empty response (last assistant turn)");
    }
done:
    if (reason[0]) json_decref(msgs), msgs = NULL;
    *out = msgs;
    return LF_OK;
fail:
    json_decref(msgs);
    *out = NULL;
    if (st == LF_OK) st = LF_ENOMEM;
    return st;
}

/* tools column: a JSON string (LLaMA-Factory) or a list; "" / [] = none. *out new reference or NULL. */
static void row_tools(const lf_dfmt *f, const json_t *row, json_t **out, char *reason, size_t cap) {
    *out = NULL;
    const json_t *t = col(row, f->tools);
    if (!t) return;
    if (json_is_string(t)) {
        if (json_string_length(t) == 0) return;
        json_error_t je;
        json_t *v = json_loadb(json_string_value(t), json_string_length(t), JSON_DECODE_ANY, &je);
        if (!v) {
            snprintf(reason, cap, "'%s' is not valid JSON (column %d: %s)", f->tools, je.column, je.text);
            return;
        }
        if (json_is_object(v)) { /* a single tool */
            json_t *l = json_array();
            if (l) json_array_append_new(l, v);
            v = l;
        }
        if (!json_is_array(v)) {
            json_decref(v);
            snprintf(reason, cap, "'%s' must hold a list of tools", f->tools);
            return;
        }
        *out = v;
        return;
    }
    if (json_is_array(t)) {
        if (json_array_size(t)) *out = json_incref((json_t *)t);
        return;
    }
    snprintf(reason, cap, "'%s' must be a JSON string or a list, got %s", f->tools, type_name(t));
}

/* ---- encoder ---- */

lf_status lf_dencoder_init(lf_dencoder *e, const lf_data_options *opts, const lf_tokenizer *tok,
                           const lf_chat_template *tmpl, lf_err *err) {
    memset(e, 0, sizeof *e);
    e->opts = opts;
    e->tok = tok;
    e->tmpl = tmpl;
    e->tmpl_name = opts->template_name && opts->template_name[0] ? opts->template_name : "chat template";
    e->eos_id = tok ? lf_tokenizer_eos_id(tok) : -1;
    e->vocab = tok ? lf_tokenizer_vocab_size(tok) : 0;
    if (opts->template_vars) {
        if (!json_is_object(opts->template_vars)) return lf_err_set(err, LF_EINVAL, "data: template_vars must be a JSON object");
        e->vars = json_deep_copy(opts->template_vars);
    } else {
        e->vars = json_object();
        if (e->vars && tok) {
            static const char *const names[2] = {"bos_token", "eos_token"};
            int32_t ids[2] = {lf_tokenizer_bos_id(tok), lf_tokenizer_eos_id(tok)};
            for (int i = 0; i < 2; i++) {
                size_t n;
                const char *s = ids[i] >= 0 ? lf_tokenizer_id_to_token(tok, ids[i], &n) : NULL;
                if (s) json_object_set_new(e->vars, names[i], json_stringn(s, n));
            }
        }
    }
    if (!e->vars) return lf_err_set(err, LF_ENOMEM, "data: out of memory");
    return LF_OK;
}

void lf_dencoder_free(lf_dencoder *e) {
    if (!e) return;
    json_decref(e->vars);
    lf_i32vec_free(&e->ids);
    lf_i32vec_free(&e->labels);
    lf_i32vec_free(&e->seg);
    free(e->seg_off);
    memset(e, 0, sizeof *e);
}

void lf_data_infer_seqlen(int64_t source_len, int64_t target_len, int64_t cutoff, int64_t *new_source,
                          int64_t *new_target) {
    int64_t max_target;
    if (target_len * 2 < cutoff) max_target = cutoff; /* truncate source */
    else if (source_len * 2 < cutoff) max_target = cutoff - source_len; /* truncate target */
    else max_target = (int64_t)((double)cutoff * ((double)target_len / (double)(source_len + target_len))); /* both */
    int64_t t = max_target < target_len ? max_target : target_len;
    int64_t max_source = cutoff - t > 0 ? cutoff - t : 0;
    *new_target = t;
    *new_source = max_source < source_len ? max_source : source_len;
}

/* Render; a template error on this row's content (LF_EINVAL: raise_exception, limits) skips the row. */
static lf_status render(lf_dencoder *e, const json_t *msgs, int gen, const json_t *extra, char **out, size_t *len,
                        char *reason, size_t cap, lf_err *err) {
    lf_err re = {0};
    lf_status st = lf_chat_template_render_len(e->tmpl, msgs, gen, extra, out, len, &re);
    if (st == LF_EINVAL) {
        snprintf(reason, cap, "template '%s': %s", e->tmpl_name, re.msg);
        return LF_OK;
    }
    if (st) return lf_err_set(err, st, "template '%s': %s", e->tmpl_name, re.msg);
    return LF_OK;
}

static size_t common_prefix(const char *a, size_t an, const char *b, size_t bn) {
    size_t i = 0;
    while (i < an && i < bn && a[i] == b[i]) i++;
    return i;
}

static lf_status tokenize_into(lf_dencoder *e, const char *text, size_t len, lf_err *err) {
    int32_t *ids = NULL;
    int64_t n = 0;
    lf_status st = lf_tokenizer_encode(e->tok, text, len, 0, &ids, &n, err);
    if (st == LF_OK) st = lf_i32vec_push(&e->seg, ids, n, err);
    free(ids);
    return st;
}

static lf_status ensure_seg_off(lf_dencoder *e, int64_t n, lf_err *err) {
    if (n <= e->seg_cap) return LF_OK;
    int64_t cap = e->seg_cap ? e->seg_cap * 2 : 64;
    while (cap < n) cap *= 2;
    int64_t *p = realloc(e->seg_off, (size_t)cap * sizeof *p);
    if (!p) return lf_err_set(err, LF_ENOMEM, "data: out of memory");
    e->seg_off = p;
    e->seg_cap = cap;
    return LF_OK;
}

/* messages -> source/target segments in e->seg / e->seg_off; *turns = number of assistant turns. */
static lf_status segment_conversation(lf_dencoder *e, const json_t *msgs, const json_t *extra, int64_t *turns,
                                      char *reason, size_t cap, lf_err *err) {
    lf_status st = LF_OK;
    json_t *sub = json_array();
    char *prev = NULL, *p = NULL, *f = NULL;
    size_t prev_n = 0, p_n = 0, f_n = 0;
    int64_t t = 0;
    e->seg.n = 0;
    LF_CHECK_ALLOC(sub, err);
    size_t n = json_array_size(msgs);
    for (size_t k = 0; k < n; k++) {
        json_t *m = json_array_get(msgs, k);
        const char *role = json_string_value(json_object_get(m, "role"));
        if (strcmp(role, "assistant") != 0) {
            if (json_array_append(sub, m)) goto oom;
            continue;
        }
        LF_TRY(render(e, sub, 1, extra, &p, &p_n, reason, cap, err));
        if (reason[0]) goto done;
        if (p_n < prev_n || (prev_n > 0 && memcmp(p, prev, prev_n) != 0)) {
            snprintf(reason, cap,
                     "template '%s' is not incremental: the conversation up to message %zu is not a prefix of the "
                     "prompt for message %zu (they differ at byte %zu); LLaMA-Factory-style masking needs earlier "
                     "turns to render the same whatever follows",
                     e->tmpl_name, k - 1, k, common_prefix(prev, prev_n, p, p_n));
            goto done;
        }
        if (json_array_append(sub, m)) goto oom;
        LF_TRY(render(e, sub, 0, extra, &f, &f_n, reason, cap, err));
        if (reason[0]) goto done;
        if (f_n < p_n || (p_n > 0 && memcmp(f, p, p_n) != 0)) {
            snprintf(reason, cap,
                     "template '%s' is not incremental: the generation prompt for message %zu is not a prefix of the "
                     "rendered message (they differ at byte %zu)",
                     e->tmpl_name, k, common_prefix(p, p_n, f, f_n));
            goto done;
        }
        LF_TRY(ensure_seg_off(e, 2 * t + 3, err));
        e->seg_off[2 * t] = e->seg.n;
        LF_TRY(tokenize_into(e, p + prev_n, p_n - prev_n, err));
        e->seg_off[2 * t + 1] = e->seg.n;
        int64_t tstart = e->seg.n;
        LF_TRY(tokenize_into(e, f + p_n, f_n - p_n, err));
        if (e->opts->eos_mode == LF_DATA_EOS_AUTO && e->eos_id >= 0) {
            int ended = 0;
            for (int64_t i = tstart; i < e->seg.n && !ended; i++)
                ended = e->seg.v[i] == e->eos_id || lf_tokenizer_is_special(e->tok, e->seg.v[i]);
            if (!ended) LF_TRY(lf_i32vec_push(&e->seg, &e->eos_id, 1, err));
        }
        e->seg_off[2 * t + 2] = e->seg.n;
        t++;
        free(prev);
        free(p);
        prev = f, prev_n = f_n;
        p = f = NULL;
    }
done:
    *turns = t;
    json_decref(sub);
    free(prev);
    free(p);
    free(f);
    return LF_OK;
oom:
    st = lf_err_set(err, LF_ENOMEM, "data: out of memory building messages");
fail:
    json_decref(sub);
    free(prev);
    free(p);
    free(f);
    if (st == LF_OK) st = LF_ENOMEM;
    return st;
}

/* LLaMA-Factory SupervisedDatasetProcessor._encode_data_example over the segments. */
static lf_status assemble(lf_dencoder *e, int64_t turns, int *truncated, lf_err *err) {
    lf_status st = LF_OK;
    const lf_data_options *o = e->opts;
    int64_t total = 0, processed = 0;
    e->ids.n = e->labels.n = 0;
    /* kept[2*i], kept[2*i+1]: kept source/target lengths of the i-th processed turn (reuses seg_off's tail) */
    LF_TRY(ensure_seg_off(e, 2 * turns + 1 + 2 * turns, err));
    int64_t *kept = e->seg_off + 2 * turns + 1;
    for (int64_t i = 0; i < turns; i++) {
        int64_t t = o->mask_history ? turns - 1 - i : i;
        if (total >= o->cutoff_len) break;
        int64_t sl = e->seg_off[2 * t + 1] - e->seg_off[2 * t], tl = e->seg_off[2 * t + 2] - e->seg_off[2 * t + 1];
        int64_t ns, nt;
        lf_data_infer_seqlen(sl, tl, o->cutoff_len - total, &ns, &nt);
        if (ns < sl || nt < tl) *truncated = 1;
        kept[2 * i] = ns;
        kept[2 * i + 1] = nt;
        total += ns + nt;
        processed++;
    }
    if (processed < turns) *truncated = 1;
    LF_TRY(lf_i32vec_reserve(&e->ids, total, err));
    LF_TRY(lf_i32vec_reserve(&e->labels, total, err));
    /* chronological order: with mask_history the processed turns are the last ones, latest first */
    for (int64_t j = 0; j < processed; j++) {
        int64_t i = o->mask_history ? processed - 1 - j : j;
        int64_t t = o->mask_history ? turns - 1 - i : i;
        const int32_t *src = e->seg.v + e->seg_off[2 * t], *tgt = e->seg.v + e->seg_off[2 * t + 1];
        int64_t ns = kept[2 * i], nt = kept[2 * i + 1];
        LF_TRY(lf_i32vec_push(&e->ids, src, ns, err));
        if (o->train_on_prompt) LF_TRY(lf_i32vec_push(&e->labels, src, ns, err));
        else LF_TRY(lf_i32vec_fill(&e->labels, LF_DATA_IGNORE, ns, err));
        LF_TRY(lf_i32vec_push(&e->ids, tgt, nt, err));
        if (o->mask_history && i != 0) LF_TRY(lf_i32vec_fill(&e->labels, LF_DATA_IGNORE, nt, err));
        else LF_TRY(lf_i32vec_push(&e->labels, tgt, nt, err));
    }
    return LF_OK;
fail:
    return st;
}

static lf_status encode_tokenized(lf_dencoder *e, const json_t *row, char *reason, size_t cap, int *truncated,
                                  lf_err *err) {
    lf_status st = LF_OK;
    const json_t *ids = col(row, "input_ids"), *mask = col(row, "attention_mask"), *labels = col(row, "labels");
    e->ids.n = e->labels.n = 0;
    if (!ids) SKIP("missing 'input_ids'");
    if (!json_is_array(ids)) SKIP("'input_ids' must be a list, got %s", type_name(ids));
    size_t n = json_array_size(ids);
    if (mask && (!json_is_array(mask) || json_array_size(mask) != n))
        SKIP("'attention_mask' must be a list as long as 'input_ids' (%zu)", n);
    if (labels && (!json_is_array(labels) || json_array_size(labels) != n))
        SKIP("'labels' must be a list as long as 'input_ids' (%zu)", n);
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_array_get(ids, i);
        if (!json_is_integer(v)) SKIP("'input_ids'[%zu] must be an integer, got %s", i, type_name(v));
        json_int_t id = json_integer_value(v);
        if (id < 0 || id > INT32_MAX || (e->vocab > 0 && id >= e->vocab))
            SKIP("'input_ids'[%zu] = %lld is outside the vocabulary [0, %lld)", i, (long long)id,
                 (long long)(e->vocab > 0 ? e->vocab : (int64_t)INT32_MAX + 1));
        if (mask) {
            const json_t *mv = json_array_get(mask, i);
            if (!json_is_integer(mv) || (json_integer_value(mv) != 0 && json_integer_value(mv) != 1))
                SKIP("'attention_mask'[%zu] must be 0 or 1", i);
            if (json_integer_value(mv) == 0) continue; /* padding */
        }
        int32_t lab = (int32_t)id;
        if (labels) {
            const json_t *lv = json_array_get(labels, i);
            if (!json_is_integer(lv)) SKIP("'labels'[%zu] must be an integer, got %s", i, type_name(lv));
            json_int_t l = json_integer_value(lv);
            if (l != LF_DATA_IGNORE && (l < 0 || l > INT32_MAX || (e->vocab > 0 && l >= e->vocab)))
                SKIP("'labels'[%zu] = %lld is neither -100 nor a token id", i, (long long)l);
            lab = (int32_t)l;
        }
        if (e->ids.n >= e->opts->cutoff_len) {
            *truncated = 1;
            continue;
        }
        int32_t idv = (int32_t)id;
        LF_TRY(lf_i32vec_push(&e->ids, &idv, 1, err));
        LF_TRY(lf_i32vec_push(&e->labels, &lab, 1, err));
    }
    if (e->ids.n == 0) SKIP("no tokens (empty 'input_ids' or all masked)");
done:
    return LF_OK;
fail:
    return st;
}

lf_status lf_dencode_row(lf_dencoder *e, const lf_dfmt *f, const json_t *row, char *reason, size_t cap, int *truncated,
                         lf_err *err) {
    lf_status st = LF_OK;
    json_t *msgs = NULL, *tools = NULL, *extra = NULL;
    reason[0] = '\0';
    *truncated = 0;
    e->ids.n = e->labels.n = 0;
    if (!json_is_object(row)) SKIP("row is %s, not an object", type_name(row));
    if (f->kind == LF_DFMT_TOKENIZED) {
        LF_TRY(encode_tokenized(e, row, reason, cap, truncated, err));
        if (reason[0]) goto done;
    } else {
        if (f->kind == LF_DFMT_ALPACA) LF_TRY(alpaca_messages(f, row, &msgs, reason, cap, err));
        else LF_TRY(sharegpt_messages(f, row, &msgs, reason, cap, err));
        if (reason[0]) goto done;
        row_tools(f, row, &tools, reason, cap);
        if (reason[0]) goto done;
        if (!e->tmpl || !e->tok) {
            st = lf_err_set(err, LF_EINVAL, "data: %s rows need a tokenizer and a chat template", lf_dfmt_name(f->kind));
            goto fail;
        }
        if (tools) {
            extra = json_copy(e->vars);
            LF_CHECK_ALLOC(extra, err);
            if (json_object_set(extra, "tools", tools)) goto oom;
        }
        int64_t turns = 0;
        LF_TRY(segment_conversation(e, msgs, extra ? extra : e->vars, &turns, reason, cap, err));
        if (reason[0]) goto done;
        LF_TRY(assemble(e, turns, truncated, err));
    }
    {
        int64_t trained = 0;
        for (int64_t i = 0; i < e->labels.n; i++) trained += e->labels.v[i] != LF_DATA_IGNORE;
        if (trained == 0) {
            if (*truncated)
                SKIP("nothing to train after truncation to cutoff_len=%lld", (long long)e->opts->cutoff_len);
            SKIP("nothing to train (every label is -100)");
        }
    }
done:
    json_decref(msgs);
    json_decref(tools);
    json_decref(extra);
    if (reason[0]) e->ids.n = e->labels.n = 0;
    return LF_OK;
oom:
    st = lf_err_set(err, LF_ENOMEM, "data: out of memory");
fail:
    json_decref(msgs);
    json_decref(tools);
    json_decref(extra);
    if (st == LF_OK) st = LF_ENOMEM;
    return st;
}
