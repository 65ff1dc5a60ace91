/* server.c - `loraforge serve`'s HTTP endpoint: route handlers over serve/http.h, request contexts that
 * bridge the engine's callbacks (engine thread) to whole or streamed responses (HTTP threads). */
#include "serve/server.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"          // defines: LF_LOG
#include "serve/http.h"        // defines: lf_http_*

enum { ST_LOADING = 0, ST_READY = 1, ST_DRAINING = 2 };

struct lf_server {
    lf_http_server *http;
    lf_metrics *metrics;             /* borrowed, may be NULL */
    lf_server_options o;
    char *host, *served_name;        /* owned copies behind o.host / o.served_model_name */
    _Atomic int state;
    _Atomic int64_t stop_deadline_ms; /* 0 = not stopping; else monotonic ms after which work is cancelled */
    _Atomic uint64_t chat_seq;
    int attached, stopped;
    /* attached (borrowed) */
    lf_model *model;
    const lf_tokenizer *tok;
    const lf_chat_template *tpl;
    const json_t *tpl_vars;
    lf_engine *engine;
    lf_registry *reg;
    lf_proto_limits lim;
    int64_t max_model_len;
};

/* =============================== small helpers =============================== */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void count(lf_server *s, const char *route, int status, double t0) {
    if (s->metrics && status > 0) lf_metrics_request(s->metrics, route, status, now_s() - t0);
}

/* JSON error {"error", "code", "error_type"}; returns status (for `return reply_error(...)`). */
static int reply_error(lf_http_response *resp, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int reply_error(lf_http_response *resp, int status, const char *fmt, ...) {
    char msg[LF_ERR_MSG_MAX + 64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t len = 0;
    char *body = lf_proto_error_body(status, msg, &len);
    if (!body || lf_http_respond(resp, status, "application/json", body, len) != LF_OK) {
        free(body);
        lf_http_respond_error(resp, status, "%s", msg);
        return status;
    }
    free(body);
    return status;
}

/* Whole JSON body (owned text, freed here); NULL text = out of memory -> 500. */
static int reply_json(lf_http_response *resp, int status, char *text, const size_t *lenp) {
    size_t len = text ? *lenp : 0; /* read after the builder that set it ran */
    if (!text) return reply_error(resp, 500, "out of memory building the response");
    lf_status st = lf_http_respond(resp, status, "application/json", text, len);
    free(text);
    if (st != LF_OK) return reply_error(resp, 500, "out of memory building the response");
    return status;
}

/* {"status": msg} */
static int reply_status(lf_http_response *resp, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int reply_status(lf_http_response *resp, int status, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *j = json_pack("{s:s}", "status", msg);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    size_t len = text ? strlen(text) : 0;
    return reply_json(resp, status, text, &len);
}

/* 503 unless ready (loading or shutting down); returns 0 when ready. */
static int not_ready(lf_server *s, lf_http_response *resp) {
    int st = atomic_load(&s->state);
    if (st == ST_READY) return 0;
    if (st == ST_LOADING) return reply_error(resp, 503, "the model is still loading; retry when GET /ping answers 200");
    return reply_error(resp, 503, "the server is shutting down");
}

/* =============================== request context =============================== */

typedef struct slot {            /* one input's result (non-streaming) */
    char *text;
    size_t text_len;
    lf_finish_reason finish;
    int64_t prompt_tokens, generated_tokens;
    uint64_t seed;
    int has_seed, done;
    lf_gen_token *tokens;        /* [n_tokens] deep copies (text and top owned) */
    size_t n_tokens;
    char *error;
} slot;

typedef struct inv_ctx {
    lf_server *s;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;                    /* handler + engine (from a successful submit) */
    int released;                /* on_release ran */
    int cancel;                  /* ask the engine to cancel (set under mu) */
    const char *route;
    double t0;
    int status;                  /* counted when the context is freed (0 = already counted) */
    lf_gen_request *req;         /* owned */
    int is_chat, stream, want_top;
    lf_proto_out out;
    lf_chat_meta meta;
    char chat_id[40];
    const char *model_name;      /* borrowed from req or the server */
    size_t n;                    /* inputs */
    slot *res;                   /* [n] non-streaming results */
    /* streaming */
    lf_http_stream *hs;          /* producer reference while open */
    int dead;                    /* push failed: client gone or too slow */
    char *pend;                  /* frames produced before hs existed */
    size_t pend_len, pend_cap;
    size_t n_sent;               /* generate stream: token lines sent */
} inv_ctx;

static void free_tokens(lf_gen_token *t, size_t n) {
    if (!t) return;
    for (size_t i = 0; i < n; i++) {
        free((char *)t[i].text);
        if (t[i].top) {
            for (size_t k = 0; k < t[i].n_top; k++) free((char *)t[i].top[k].text);
            free((lf_gen_token *)t[i].top);
        }
    }
    free(t);
}

static char *dup_bytes(const char *p, size_t n) {
    char *d = malloc(n + 1);
    if (!d) return NULL;
    if (n) memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

/* Deep copy of tokens (with their top alternatives when with_top). NULL on out of memory. */
static lf_gen_token *copy_tokens(const lf_gen_token *src, size_t n, int with_top) {
    lf_gen_token *t = calloc(n ? n : 1, sizeof *t);
    if (!t) return NULL;
    for (size_t i = 0; i < n; i++) {
        t[i] = src[i];
        t[i].top = NULL;
        t[i].n_top = 0;
        t[i].text = dup_bytes(src[i].text ? src[i].text : "", src[i].text ? src[i].text_len : 0);
        if (!t[i].text) goto oom;
        if (!src[i].text) t[i].text_len = 0;
        if (with_top && src[i].top && src[i].n_top) {
            lf_gen_token *top = calloc(src[i].n_top, sizeof *top);
            if (!top) goto oom;
            t[i].top = top;
            t[i].n_top = src[i].n_top;
            for (size_t k = 0; k < src[i].n_top; k++) {
                top[k] = src[i].top[k];
                top[k].top = NULL;
                top[k].n_top = 0;
                top[k].text = dup_bytes(src[i].top[k].text ? src[i].top[k].text : "", src[i].top[k].text ? src[i].top[k].text_len : 0);
                if (!top[k].text) {
                    t[i].n_top = k;
                    goto oom;
                }
                if (!src[i].top[k].text) top[k].text_len = 0;
            }
        }
    }
    return t;
oom:
    free_tokens(t, n);
    return NULL;
}

static void ctx_free(inv_ctx *c) {
    if (!c) return;
    if (c->status) count(c->s, c->route, c->status, c->t0);
    for (size_t i = 0; c->res && i < c->n; i++) {
        free(c->res[i].text);
        free(c->res[i].error);
        free_tokens(c->res[i].tokens, c->res[i].n_tokens);
    }
    free(c->res);
    free(c->pend);
    lf_proto_request_free(c->req);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}

/* Drop one reference (mu held on entry, released here); frees on the last. */
static void ctx_unref_unlock(inv_ctx *c) {
    int last = --c->refs == 0;
    pthread_mutex_unlock(&c->mu);
    if (last) ctx_free(c);
}

/* Send a frame (owned text, freed here) to the client, or queue it until the stream exists. mu held. */
static void emit_frame(inv_ctx *c, char *frame, const size_t *lenp) {
    size_t len = frame ? *lenp : 0; /* read after the builder that set it ran */
    if (!frame) {
        LF_LOG(LF_LOG_ERROR, "out of memory building a stream event; cancelling the request");
        c->dead = 1;
        return;
    }
    if (c->hs) {
        if (!c->dead && lf_http_stream_push(c->hs, frame, len) != LF_OK) c->dead = 1;
    } else if (!c->dead) {
        if (c->pend_len + len > c->pend_cap) {
            size_t nc = c->pend_cap ? c->pend_cap : 1024;
            while (nc < c->pend_len + len) nc *= 2;
            char *np = realloc(c->pend, nc);
            if (!np) {
                c->dead = 1;
                free(frame);
                return;
            }
            c->pend = np;
            c->pend_cap = nc;
        }
        memcpy(c->pend + c->pend_len, frame, len);
        c->pend_len += len;
    }
    free(frame);
}

static void emit_static(inv_ctx *c, const char *text) {
    char *f = dup_bytes(text, strlen(text));
    size_t len = strlen(text);
    emit_frame(c, f, &len);
}

/* ---- engine callbacks (engine thread) ---- */


static void cb_token(void *user, size_t idx, const lf_gen_token *tok, const char *emit, size_t emit_len) {
    (void)idx;
    inv_ctx *c = user;
    if (!c->stream) return;
    pthread_mutex_lock(&c->mu);
    if (c->is_chat) {
        if (emit_len || c->req->params.logprobs) {
            lf_chat_delta d;
            memset(&d, 0, sizeof d);
            d.text = emit ? emit : "";
            d.text_len = emit ? emit_len : 0;
            if (c->req->params.logprobs) {
                d.tokens = tok;
                d.n_tokens = 1;
            }
            size_t len = 0;
            emit_frame(c, lf_proto_chat_chunk(&c->meta, &d, c->out.format, &len), &len);
        }
    } else {
        lf_gen_token t = *tok; /* the token line carries the text made safe with it (stop strings held back) */
        t.text = emit ? emit : "";
        t.text_len = emit ? emit_len : 0;
        t.top = NULL;
        t.n_top = 0;
        size_t len = 0;
        c->n_sent++;
        emit_frame(c, lf_proto_stream_token(&t, c->n_sent, NULL, &c->out, &len), &len);
    }
    pthread_mutex_unlock(&c->mu);
}

static void done_stream_generate(inv_ctx *c, const lf_gen_result *res, const lf_gen_token *last_tok,
                                 const char *flush, size_t flush_len) {
    size_t len = 0;
    if (res->finish == LF_FINISH_ERROR) {
        emit_frame(c, lf_proto_stream_error(res->error, 500, res->generated_tokens, &c->out, &len), &len);
        return;
    }
    lf_gen_result fin = *res;
    fin.prompt = c->req->inputs ? c->req->inputs[0] : NULL;
    fin.prompt_len = fin.prompt ? strlen(fin.prompt) : 0;
    fin.tokens = NULL;
    fin.n_tokens = 0;
    /* The final line carries the token that ended the sequence (the EOS token last, as TGI streams it) with
     * the text still to send, so the token texts of a stream add up to generated_text. */
    lf_gen_token last;
    memset(&last, 0, sizeof last);
    if (last_tok) {
        last = *last_tok;
    } else {
        last.id = -1;
        last.special = 1;
    }
    last.text = flush ? flush : "";
    last.text_len = flush ? flush_len : 0;
    last.top = NULL;
    last.n_top = 0;
    c->n_sent++;
    emit_frame(c, lf_proto_stream_token(&last, c->n_sent, &fin, &c->out, &len), &len);
}

static void done_stream_chat(inv_ctx *c, const lf_gen_result *res, const lf_gen_token *last_tok, const char *flush,
                             size_t flush_len) {
    size_t len = 0;
    lf_chat_delta d;
    int lp = c->req->params.logprobs && last_tok && res->finish != LF_FINISH_EOS;
    if ((flush_len || lp) && res->finish != LF_FINISH_ERROR) {
        memset(&d, 0, sizeof d);
        d.text = flush;
        d.text_len = flush_len;
        if (lp) {
            d.tokens = last_tok;
            d.n_tokens = 1;
        }
        emit_frame(c, lf_proto_chat_chunk(&c->meta, &d, c->out.format, &len), &len);
    }
    memset(&d, 0, sizeof d);
    d.finish = res->finish == LF_FINISH_NONE ? LF_FINISH_LENGTH : res->finish;
    d.error = res->finish == LF_FINISH_ERROR ? (res->error ? res->error : "generation failed") : NULL;
    d.usage = c->req->include_usage ? res : NULL;
    emit_frame(c, lf_proto_chat_chunk(&c->meta, &d, c->out.format, &len), &len);
    if (c->out.format == LF_STREAM_SSE) emit_static(c, lf_proto_sse_done());
}

static void cb_done(void *user, size_t idx, const lf_gen_result *res, const lf_gen_token *last, const char *flush,
                    size_t flush_len) {
    inv_ctx *c = user;
    pthread_mutex_lock(&c->mu);
    if (c->stream) {
        if (c->is_chat) done_stream_chat(c, res, last, flush, flush_len);
        else done_stream_generate(c, res, last, flush, flush_len);
    } else if (idx < c->n && !c->res[idx].done) {
        slot *r = &c->res[idx];
        r->done = 1;
        r->finish = res->finish == LF_FINISH_NONE ? LF_FINISH_LENGTH : res->finish;
        r->prompt_tokens = res->prompt_tokens;
        r->generated_tokens = res->generated_tokens;
        r->seed = res->seed;
        r->has_seed = res->has_seed;
        if (r->finish == LF_FINISH_ERROR) {
            r->text = dup_bytes("", 0); /* LMI: a failed generation answers generated_text "" */
            r->text_len = 0;
            const char *m = res->error ? res->error : "generation failed";
            r->error = dup_bytes(m, strlen(m));
        } else {
            r->text = dup_bytes(res->text ? res->text : "", res->text ? res->text_len : 0);
            r->text_len = res->text ? res->text_len : 0;
            if (res->tokens && res->n_tokens) {
                r->tokens = copy_tokens(res->tokens, res->n_tokens, c->want_top);
                r->n_tokens = r->tokens ? res->n_tokens : 0;
                if (!r->tokens) r->text = (free(r->text), NULL);
            }
        }
        if (!r->text) { /* out of memory: report it as a failed generation */
            free(r->error);
            r->error = NULL;
            r->finish = LF_FINISH_ERROR;
            r->text = NULL;
            r->text_len = 0;
        }
    }
    pthread_mutex_unlock(&c->mu);
}

static void cb_release(void *user) {
    inv_ctx *c = user;
    pthread_mutex_lock(&c->mu);
    c->released = 1;
    if (c->hs) {
        lf_http_stream_close(c->hs);
        c->hs = NULL;
    }
    pthread_cond_broadcast(&c->cv);
    ctx_unref_unlock(c);
}

static int cb_cancelled(void *user) {
    inv_ctx *c = user;
    int64_t dl = atomic_load(&c->s->stop_deadline_ms);
    pthread_mutex_lock(&c->mu);
    int x = c->cancel || c->dead || (c->hs && lf_http_stream_cancelled(c->hs));
    pthread_mutex_unlock(&c->mu);
    if (!x && dl && now_ms() >= dl) x = 1; /* shutdown deadline passed: give up on it */
    return x;
}

static void cb_release_adapter(void *user, void *ref) {
    inv_ctx *c = user;
    if (ref && c->s->reg) lf_registry_release(c->s->reg, (const lf_served_adapter *)ref);
}

/* =============================== tokenization =============================== */

/* Prompt ids of input i: generate bodies as `loraforge generate --prompt` (post-processor specials, e.g.
 * BOS); chat as transformers apply_chat_template(tokenize=True): render with add_generation_prompt, then
 * encode without adding specials (the template writes them). Returns an HTTP status (200 ok). */
static int tokenize_input(lf_server *s, const lf_gen_request *r, size_t i, int32_t **ids, int64_t *n, char *msg,
                          size_t msg_cap) {
    lf_err err = {0};
    *ids = NULL;
    *n = 0;
    if (r->kind == LF_REQ_CHAT) {
        if (!s->tpl) {
            snprintf(msg, msg_cap, "the model has no chat template (tokenizer_config.json \"chat_template\" or "
                                   "chat_template.jinja); send {\"inputs\": ...} instead");
            return 422;
        }
        json_t *extra = json_object();
        if (!extra) goto oom;
        if (s->tpl_vars && json_is_object(s->tpl_vars)) json_object_update(extra, (json_t *)s->tpl_vars);
        if (r->tools) json_object_set(extra, "tools", r->tools);
        char *text = NULL;
        size_t len = 0;
        lf_status st = lf_chat_template_render_len(s->tpl, r->messages, 1, extra, &text, &len, &err);
        json_decref(extra);
        if (st != LF_OK) {
            snprintf(msg, msg_cap, "chat template: %s", err.msg);
            return st == LF_ENOMEM ? 500 : 422;
        }
        st = lf_tokenizer_encode(s->tok, text, len, 0, ids, n, &err);
        free(text);
        if (st != LF_OK) {
            snprintf(msg, msg_cap, "tokenizer: %s", err.msg);
            return st == LF_ENOMEM ? 500 : 422;
        }
    } else {
        const char *in = r->inputs[i];
        lf_status st = lf_tokenizer_encode(s->tok, in, strlen(in), 1, ids, n, &err);
        if (st != LF_OK) {
            snprintf(msg, msg_cap, "tokenizer: %s", err.msg);
            return st == LF_ENOMEM ? 500 : 422;
        }
    }
    if (*n == 0) {
        free(*ids);
        *ids = NULL;
        snprintf(msg, msg_cap, r->n_inputs > 1 ? "inputs[%zu] encodes to no tokens" : "the prompt encodes to no tokens", i);
        return 422;
    }
    /* the engine keeps only the last `truncate` ids: the limit applies to what is kept */
    int64_t kept = r->params.truncate > 0 && *n > r->params.truncate ? r->params.truncate : *n;
    if (kept >= s->max_model_len) {
        snprintf(msg, msg_cap, "%sprompt is %lld tokens%s; --max-model-len is %lld and the prompt must leave room for "
                               "at least one generated token", r->n_inputs > 1 ? "an input's " : "the ", (long long)kept,
                 kept < *n ? " after truncate" : "", (long long)s->max_model_len);
        free(*ids);
        *ids = NULL;
        return 413;
    }
    return 200;
oom:
    snprintf(msg, msg_cap, "out of memory");
    return 500;
}

/* =============================== invocations =============================== */

enum { MODE_ANY = 0, MODE_CHAT = 1, MODE_MME = 2 };

/* Non-streaming answer once the engine released the request. Returns the HTTP status. */
static int answer_whole(inv_ctx *c, lf_http_response *resp) {
    lf_gen_result *res = calloc(c->n, sizeof *res);
    if (!res) return reply_error(resp, 500, "out of memory building the response");
    int failed = 0;
    const char *why = NULL;
    for (size_t i = 0; i < c->n; i++) {
        slot *r = &c->res[i];
        if (!r->done) { /* the engine released without a result: treat as failed */
            r->finish = LF_FINISH_ERROR;
        }
        res[i].text = r->text ? r->text : "";
        res[i].text_len = r->text ? r->text_len : 0;
        res[i].prompt = c->req->inputs ? c->req->inputs[i] : NULL;
        res[i].prompt_len = res[i].prompt ? strlen(res[i].prompt) : 0;
        res[i].finish = r->finish;
        res[i].prompt_tokens = r->prompt_tokens;
        res[i].generated_tokens = r->generated_tokens;
        res[i].seed = r->seed;
        res[i].has_seed = r->has_seed;
        res[i].tokens = r->tokens;
        res[i].n_tokens = r->n_tokens;
        res[i].error = r->error ? r->error : (r->finish == LF_FINISH_ERROR ? "generation failed" : NULL);
        if (r->finish == LF_FINISH_ERROR) {
            failed = 1;
            if (!why) why = res[i].error;
        }
    }
    int stopping = atomic_load(&c->s->state) == ST_DRAINING;
    int status = failed ? (stopping ? 503 : 500) : 200;
    int rc;
    if (c->is_chat) {
        if (failed) {
            rc = reply_error(resp, status, "%s", why);
        } else {
            size_t len = 0;
            rc = reply_json(resp, 200, lf_proto_chat_body(&c->meta, &res[0], c->req->params.logprobs, &len), &len);
        }
    } else {
        size_t len = 0;
        char *body = lf_proto_generate_body(res, c->n, c->req->inputs_is_list, &c->out, &len);
        if (body && failed) { /* the LMI failure shape plus "code" on every failed result */
            json_t *j = json_loadb(body, len, 0, NULL);
            json_t *arr = json_is_array(j) ? j : NULL;
            size_t m = arr ? json_array_size(arr) : 1;
            for (size_t i = 0; j && i < m; i++) {
                json_t *o = arr ? json_array_get(arr, i) : j;
                if (json_is_object(o) && json_object_get(o, "error")) json_object_set_new(o, "code", json_integer(status));
            }
            char *b2 = j ? json_dumps(j, JSON_COMPACT) : NULL;
            json_decref(j);
            if (b2) {
                free(body);
                body = b2;
                len = strlen(b2);
            }
        }
        rc = reply_json(resp, status, body, &len);
    }
    free(res);
    return rc;
}

/* Returns the HTTP status to count, or 0 when the request context counts it when freed. */
static int do_invoke(lf_server *s, const lf_http_request *hreq, lf_http_response *resp, int mode, const char *route,
                     double t0) {
    int bad = not_ready(s, resp);
    if (bad) return bad;
    lf_err err = {0};
    int hs = 500;
    size_t blen = 0;
    const char *body = lf_http_body(hreq, &blen);
    lf_gen_request *r = NULL;
    if (lf_proto_parse(body, blen, &s->lim, &r, &hs, &err) != LF_OK)
        return reply_error(resp, hs >= 400 ? hs : 400, "%s", err.msg[0] ? err.msg : "invalid request body");
    if (mode == MODE_CHAT && r->kind != LF_REQ_CHAT) {
        lf_proto_request_free(r);
        return reply_error(resp, 422, "/v1/chat/completions takes an OpenAI chat body with \"messages\"");
    }
    if (r->stream && r->n_inputs > 1) {
        size_t n = r->n_inputs;
        lf_proto_request_free(r);
        return reply_error(resp, 422, "\"stream\": true takes a single input; \"inputs\" is a list of %zu", n);
    }
    lf_proto_headers h = {lf_http_header(hreq, "X-Amzn-SageMaker-Adapter-Identifier"),
                          lf_http_header(hreq, "X-Amzn-SageMaker-Inference-Component"),
                          lf_http_header(hreq, "X-Amzn-SageMaker-Target-Model")};
    if (mode == MODE_MME) {
        const char *name = lf_http_param(hreq, "name");
        if (!s->reg || !name || !lf_registry_is_loaded(s->reg, name)) {
            lf_proto_request_free(r);
            return reply_error(resp, 404, "model '%.200s' is not loaded", name ? name : "");
        }
        h.adapter_identifier = name;
        h.inference_component = h.target_model = NULL;
    }
    if (lf_proto_resolve_adapters(r, &h, s->reg ? lf_registry_is_loaded : NULL, s->reg, &hs, &err) != LF_OK) {
        lf_proto_request_free(r);
        return reply_error(resp, hs >= 400 ? hs : 500, "%s", err.msg);
    }

    /* the context, the prompts and the adapter references */
    inv_ctx *c = calloc(1, sizeof *c);
    lf_engine_input *in = calloc(r->n_inputs, sizeof *in);
    int32_t **ids = calloc(r->n_inputs, sizeof *ids);
    if (!c || !in || !ids || pthread_mutex_init(&c->mu, NULL)) {
        free(c);
        free(in);
        free(ids);
        lf_proto_request_free(r);
        return reply_error(resp, 500, "out of memory");
    }
    if (pthread_cond_init(&c->cv, NULL)) {
        pthread_mutex_destroy(&c->mu);
        free(c);
        free(in);
        free(ids);
        lf_proto_request_free(r);
        return reply_error(resp, 500, "cannot create a condition variable");
    }
    c->s = s;
    c->refs = 1;
    c->route = route;
    c->t0 = t0;
    c->req = r;
    c->n = r->n_inputs;
    c->is_chat = r->kind == LF_REQ_CHAT;
    c->stream = r->stream;
    c->want_top = c->is_chat && r->params.logprobs;
    c->out.details = r->params.details;
    c->out.tgi_compat = s->o.tgi_compat;
    c->out.return_full_text = r->params.return_full_text;
    /* OpenAI clients send "Accept: application/json" even for streams and read only SSE: the OpenAI route
     * always streams SSE; /invocations follows Accept (JSON lines by default, as LMI) */
    c->out.format = s->o.force_sse || mode == MODE_CHAT
                        ? LF_STREAM_SSE
                        : lf_proto_stream_format_for(lf_http_header(hreq, "Accept"), s->o.tgi_compat);
    c->model_name = r->model && r->model[0] ? r->model : s->served_name;
    uint64_t seq = atomic_fetch_add(&s->chat_seq, 1) + 1;
    snprintf(c->chat_id, sizeof c->chat_id, "chatcmpl-%08llx%08llx", (unsigned long long)(time(NULL) & 0xffffffff),
             (unsigned long long)(seq & 0xffffffff));
    c->meta.id = c->chat_id;
    c->meta.created = (int64_t)time(NULL);
    c->meta.model = c->model_name;
    c->res = c->stream ? NULL : calloc(c->n, sizeof *c->res);
    int status = 0;
    size_t n_acq = 0;
    char msg[LF_ERR_MSG_MAX + 128];
    if (!c->stream && !c->res) {
        status = reply_error(resp, 500, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < c->n; i++) {
        int64_t n = 0;
        int st = tokenize_input(s, r, i, &ids[i], &n, msg, sizeof msg);
        if (st != 200) {
            if (st == 413 && s->metrics) lf_metrics_rejected(s->metrics, "too_long");
            status = reply_error(resp, st, "%s", msg);
            goto fail;
        }
        in[i].ids = ids[i];
        in[i].n = n;
    }
    for (; n_acq < c->n; n_acq++) {
        const char *name = r->adapters ? r->adapters[n_acq] : "";
        if (!name || !name[0]) continue;
        const lf_served_adapter *a = s->reg ? lf_registry_acquire(s->reg, name) : NULL;
        if (!a) {
            status = reply_error(resp, 404, "adapter '%.200s' is not loaded (it may have just been unregistered)", name);
            goto fail;
        }
        in[n_acq].adapter = a->fwd;
        in[n_acq].adapter_ref = (void *)a;
    }
    lf_engine_callbacks cb = {cb_token, cb_done, cb_release, cb_cancelled, cb_release_adapter};
    int want_tokens = c->stream ? !c->is_chat : (r->params.details || (c->is_chat && r->params.logprobs));
    c->refs = 2; /* the engine's reference, dropped in on_release */
    hs = 500;
    if (lf_engine_submit(s->engine, in, c->n, &r->params, want_tokens, &cb, c, &hs, &err) != LF_OK) {
        c->refs = 1;
        /* (the engine counts its own queue_full rejections) */
        status = reply_error(resp, hs >= 400 ? hs : 500, "%s", err.msg);
        goto fail;
    }
    /* submitted: the engine owns the adapter references and may already be calling back */
    for (size_t i = 0; i < c->n; i++) free(ids[i]);
    free(ids);
    free(in);
    if (c->stream) {
        pthread_mutex_lock(&c->mu);
        lf_http_stream *st = lf_http_respond_stream(resp, 200, lf_proto_stream_content_type(c->out.format));
        if (!st) {
            c->cancel = 1; /* the HTTP layer answers 500; the engine drops the sequence */
            c->status = 500;
        } else {
            c->status = 200;
            if (c->is_chat) { /* OpenAI's first chunk: the assistant role, empty content */
                lf_chat_delta d;
                memset(&d, 0, sizeof d);
                d.first = 1;
                d.text = "";
                size_t len = 0;
                char *f = lf_proto_chat_chunk(&c->meta, &d, c->out.format, &len);
                if (f && lf_http_stream_push(st, f, len) != LF_OK) c->dead = 1;
                free(f);
            }
            if (c->pend_len && lf_http_stream_push(st, c->pend, c->pend_len) != LF_OK) c->dead = 1;
            free(c->pend);
            c->pend = NULL;
            c->pend_len = c->pend_cap = 0;
            if (c->released) lf_http_stream_close(st); /* the engine finished before the stream existed */
            else c->hs = st;
        }
        ctx_unref_unlock(c);
        return 0;
    }
    pthread_mutex_lock(&c->mu);
    while (!c->released) {
        /* wake every LF_HTTP_POLL_MS to notice a client that went away: the engine then drops its sequences */
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_nsec += (long)LF_HTTP_POLL_MS * 1000000L;
        if (dl.tv_nsec >= 1000000000L) dl.tv_sec++, dl.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&c->cv, &c->mu, &dl);
        if (!c->released && !c->cancel && lf_http_client_gone(hreq)) c->cancel = 1;
    }
    status = answer_whole(c, resp);
    c->status = status;
    ctx_unref_unlock(c);
    return 0;
fail:
    for (size_t i = 0; i < n_acq && i < c->n; i++)
        if (in[i].adapter_ref) lf_registry_release(s->reg, (const lf_served_adapter *)in[i].adapter_ref);
    for (size_t i = 0; i < c->n; i++) free(ids[i]);
    free(ids);
    free(in);
    c->status = 0;
    ctx_free(c);
    return status;
}

static void h_invocations(void *u, const lf_http_request *req, lf_http_response *resp) {
    lf_server *s = u;
    double t0 = now_s();
    count(s, "invocations", do_invoke(s, req, resp, MODE_ANY, "invocations", t0), t0);
}

static void h_chat(void *u, const lf_http_request *req, lf_http_response *resp) {
    lf_server *s = u;
    double t0 = now_s();
    count(s, "invocations", do_invoke(s, req, resp, MODE_CHAT, "invocations", t0), t0);
}

static void h_mme_invoke(void *u, const lf_http_request *req, lf_http_response *resp) {
    lf_server *s = u;
    double t0 = now_s();
    count(s, "invocations", do_invoke(s, req, resp, MODE_MME, "invocations", t0), t0);
}

/* =============================== ping, metrics =============================== */

static void h_ping(void *u, const lf_http_request *req, lf_http_response *resp) {
    (void)req;
    lf_server *s = u;
    double t0 = now_s();
    int status;
    if (atomic_load(&s->state) == ST_READY) {
        static const char ok[] = "{\"status\":\"healthy\"}";
        status = lf_http_respond(resp, 200, "application/json", ok, sizeof ok - 1) == LF_OK ? 200 : 500;
    } else {
        status = not_ready(s, resp);
    }
    count(s, "ping", status, t0);
}

static void h_metrics(void *u, const lf_http_request *req, lf_http_response *resp) {
    (void)req;
    lf_server *s = u;
    double t0 = now_s();
    if (!s->metrics) {
        reply_error(resp, 503, "metrics are not enabled");
        return;
    }
    lf_metrics_gauges g;
    memset(&g, 0, sizeof g);
    int st = atomic_load(&s->state);
    g.ready = st == ST_READY;
    if (s->attached) {
        lf_engine_stats es;
        memset(&es, 0, sizeof es);
        lf_engine_stats_get(s->engine, &es);
        g.queue_depth = es.waiting;
        g.running = es.running;
        g.kv_blocks_used = es.kv_blocks_used;
        g.kv_blocks_free = es.kv_blocks_free;
        g.adapters_loaded = s->reg ? lf_registry_count(s->reg) : 0;
    }
    /* count this request first so the rendered counters include it */
    count(s, "metrics", 200, t0);
    size_t len = 0;
    char *text = lf_metrics_render(s->metrics, &g, &len);
    if (!text) {
        reply_error(resp, 500, "out of memory rendering metrics");
        return;
    }
    if (lf_http_respond(resp, 200, "text/plain; version=0.0.4", text, len) != LF_OK)
        reply_error(resp, 500, "out of memory building the response");
    free(text);
}

/* =============================== adapters and MME models =============================== */

/* Registry routes need a ready server with a registry; returns the error status or 0. */
static int registry_unavailable(lf_server *s, lf_http_response *resp) {
    int bad = not_ready(s, resp);
    if (bad) return bad;
    if (!s->reg) return reply_error(resp, 503, "adapters are not enabled on this server");
    return 0;
}

/* Fields from a JSON object body, else the query string. *doc keeps the JSON alive (json_decref). */
static int body_fields(const lf_http_request *req, lf_http_response *resp, const char *k1, const char *k2,
                       const char **v1, const char **v2, json_t **doc) {
    size_t len = 0;
    const char *body = lf_http_body(req, &len);
    *doc = NULL;
    *v1 = *v2 = NULL;
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n')) i++;
    if (i < len) {
        json_error_t je;
        json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
        if (!j) return reply_error(resp, 400, "malformed JSON body: %s (line %d, column %d)", je.text, je.line, je.column);
        if (!json_is_object(j)) {
            json_decref(j);
            return reply_error(resp, 400, "the body must be a JSON object with \"%s\" and \"%s\"", k1, k2);
        }
        json_t *a = json_object_get(j, k1), *b = json_object_get(j, k2);
        if ((a && !json_is_string(a)) || (b && !json_is_string(b))) {
            json_decref(j);
            return reply_error(resp, 400, "\"%s\" and \"%s\" must be strings", k1, k2);
        }
        *v1 = a ? json_string_value(a) : NULL;
        *v2 = b ? json_string_value(b) : NULL;
        *doc = j;
    }
    if (!*v1) *v1 = lf_http_query(req, k1);
    if (!*v2) *v2 = lf_http_query(req, k2);
    if (!*v1 || !(*v1)[0] || !*v2 || !(*v2)[0]) {
        json_decref(*doc);
        *doc = NULL;
        return reply_error(resp, 400, "\"%s\" and \"%s\" are required (JSON body or query string)", k1, k2);
    }
    return 0;
}

static int do_register(lf_server *s, const lf_http_request *req, lf_http_response *resp, int mme) {
    int bad = registry_unavailable(s, resp);
    if (bad) return bad;
    const char *name = NULL, *src = NULL;
    json_t *doc = NULL;
    bad = body_fields(req, resp, mme ? "model_name" : "name", mme ? "url" : "src", &name, &src, &doc);
    if (bad) return bad;
    lf_err err = {0};
    int hs = 500;
    int status;
    if (lf_registry_load(s->reg, name, src, 1, &hs, &err) != LF_OK) {
        status = reply_error(resp, hs >= 400 ? hs : 500, "%s", err.msg);
    } else {
        status = mme ? reply_status(resp, 200, "Model \"%.200s\" loaded", name)
                     : reply_status(resp, 200, "Adapter %.200s registered", name);
    }
    json_decref(doc);
    return status;
}

static int do_unregister(lf_server *s, const lf_http_request *req, lf_http_response *resp, int mme) {
    int bad = registry_unavailable(s, resp);
    if (bad) return bad;
    const char *name = lf_http_param(req, "name");
    lf_err err = {0};
    int hs = 500;
    if (lf_registry_unload(s->reg, name ? name : "", s->o.unload_timeout_ms, &hs, &err) != LF_OK)
        return reply_error(resp, hs >= 400 ? hs : 500, "%s", err.msg);
    return mme ? reply_status(resp, 200, "Model \"%.200s\" unloaded", name)
               : reply_status(resp, 200, "Adapter %.200s unregistered", name);
}

static int do_list(lf_server *s, const lf_http_request *req, lf_http_response *resp, int mme, int one) {
    int bad = registry_unavailable(s, resp);
    if (bad) return bad;
    const char *name = one ? lf_http_param(req, "name") : NULL;
    if (one && !lf_registry_name_ok(name ? name : ""))
        return reply_error(resp, 404, "%s '%.200s' is not loaded", mme ? "model" : "adapter", name ? name : "");
    char *text = lf_registry_list_json(s->reg, name, mme);
    if (!text) {
        if (one) return reply_error(resp, 404, "%s '%.200s' is not loaded", mme ? "model" : "adapter", name);
        return reply_error(resp, 500, "out of memory listing adapters");
    }
    size_t len = strlen(text);
    return reply_json(resp, 200, text, &len);
}

#define ROUTE_FN(fn, label, call)                                                  \
    static void fn(void *u, const lf_http_request *req, lf_http_response *resp) {  \
        lf_server *s = u;                                                          \
        double t0 = now_s();                                                       \
        count(s, label, call, t0);                                                 \
    }
ROUTE_FN(h_adapter_register, "adapters", do_register(s, req, resp, 0))
ROUTE_FN(h_adapter_list, "adapters", do_list(s, req, resp, 0, 0))
ROUTE_FN(h_adapter_get, "adapters", do_list(s, req, resp, 0, 1))
ROUTE_FN(h_adapter_delete, "adapters", do_unregister(s, req, resp, 0))
ROUTE_FN(h_model_register, "models", do_register(s, req, resp, 1))
ROUTE_FN(h_model_list, "models", do_list(s, req, resp, 1, 0))
ROUTE_FN(h_model_get, "models", do_list(s, req, resp, 1, 1))
ROUTE_FN(h_model_delete, "models", do_unregister(s, req, resp, 1))
#undef ROUTE_FN

/* =============================== lifetime =============================== */

lf_server_options lf_server_default_options(void) {
    lf_server_options o;
    memset(&o, 0, sizeof o);
    o.host = "0.0.0.0";
    o.port = 8080;
    o.max_body_bytes = LF_PROTO_MAX_BODY_BYTES;
    o.max_connections = 1024;
    o.header_timeout_ms = 10000;
    o.body_timeout_ms = 60000;
    o.http_threads = 256;
    o.served_model_name = "loraforge";
    o.unload_timeout_ms = 30000;
    return o;
}

lf_status lf_server_create(const lf_server_options *o, lf_metrics *metrics, lf_server **out, lf_err *err) {
    lf_status st = LF_OK;
    *out = NULL;
    lf_server_options d = lf_server_default_options();
    if (!o) o = &d;
    lf_server *s = calloc(1, sizeof *s);
    LF_CHECK_ALLOC(s, err);
    s->o = *o;
    s->metrics = metrics;
    s->host = strdup(o->host ? o->host : d.host);
    s->served_name = strdup(o->served_model_name && o->served_model_name[0] ? o->served_model_name : d.served_model_name);
    LF_CHECK_ALLOC(s->host, err);
    LF_CHECK_ALLOC(s->served_name, err);
    s->o.host = s->host;
    s->o.served_model_name = s->served_name;
    if (!s->o.max_body_bytes) s->o.max_body_bytes = d.max_body_bytes;
    if (!s->o.max_connections) s->o.max_connections = d.max_connections;
    if (s->o.unload_timeout_ms <= 0) s->o.unload_timeout_ms = d.unload_timeout_ms;
    atomic_init(&s->state, ST_LOADING);
    atomic_init(&s->stop_deadline_ms, 0);
    atomic_init(&s->chat_seq, 0);
    s->lim = lf_proto_default_limits();
    s->lim.max_body_bytes = s->o.max_body_bytes;

    lf_http_params hp = lf_http_default_params();
    hp.host = s->host;
    hp.port = s->o.port;
    hp.max_body_bytes = s->o.max_body_bytes;
    hp.max_connections = s->o.max_connections;
    hp.header_timeout_ms = s->o.header_timeout_ms;
    hp.body_timeout_ms = s->o.body_timeout_ms;
    hp.max_workers = s->o.http_threads;
    if (s->o.idle_timeout_s) hp.idle_timeout_s = s->o.idle_timeout_s;
    LF_TRY(lf_http_create(&hp, &s->http, err));
    /* health checks run on the HTTP I/O thread: no slow client, busy worker or engine lock delays them */
    LF_TRY(lf_http_route_inline(s->http, "GET", "/ping", h_ping, s, err));
    LF_TRY(lf_http_route_inline(s->http, "GET", "/health", h_ping, s, err));
    static const struct {
        const char *method, *pattern;
        lf_http_handler h;
    } routes[] = {
        {"POST", "/invocations", h_invocations},
        {"POST", "/v1/chat/completions", h_chat},
        {"GET", "/metrics", h_metrics},
        {"POST", "/adapters", h_adapter_register},
        {"GET", "/adapters", h_adapter_list},
        {"GET", "/adapters/{name}", h_adapter_get},
        {"DELETE", "/adapters/{name}", h_adapter_delete},
        /* LMI's management prefix /models/{model}/adapters (single model: {model} is not checked) */
        {"POST", "/models/{model}/adapters", h_adapter_register},
        {"GET", "/models/{model}/adapters", h_adapter_list},
        {"GET", "/models/{model}/adapters/{name}", h_adapter_get},
        {"DELETE", "/models/{model}/adapters/{name}", h_adapter_delete},
        /* SageMaker multi-model endpoint API */
        {"POST", "/models", h_model_register},
        {"GET", "/models", h_model_list},
        {"GET", "/models/{name}", h_model_get},
        {"DELETE", "/models/{name}", h_model_delete},
        {"POST", "/models/{name}/invoke", h_mme_invoke},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        LF_TRY(lf_http_route(s->http, routes[i].method, routes[i].pattern, routes[i].h, s, err));
    LF_TRY(lf_http_start(s->http, err));
    *out = s;
    return LF_OK;
fail:
    if (s) {
        lf_http_free(s->http);
        free(s->host);
        free(s->served_name);
        free(s);
    }
    return st ? st : (err ? err->code : LF_ENOMEM);
}

int lf_server_port(const lf_server *s) { return s ? lf_http_port(s->http) : 0; }

lf_status lf_server_attach(lf_server *s, lf_model *m, const lf_tokenizer *tok, const lf_chat_template *tpl,
                           const json_t *tpl_vars, lf_engine *e, lf_registry *reg, lf_err *err) {
    if (s->attached) return lf_err_set(err, LF_EBUSY, "server: already attached");
    if (!m || !tok || !e) return lf_err_set(err, LF_EINVAL, "server: attach needs a model, a tokenizer and an engine");
    const lf_engine_params *ep = lf_engine_get_params(e);
    s->model = m;
    s->tok = tok;
    s->tpl = tpl;
    s->tpl_vars = tpl_vars;
    s->engine = e;
    s->reg = reg;
    s->max_model_len = ep->max_model_len > 1 ? ep->max_model_len : 2;
    s->lim.max_new_tokens = s->max_model_len;
    s->attached = 1;
    return LF_OK;
}

void lf_server_set_ready(lf_server *s) {
    if (s && s->attached && atomic_load(&s->state) == ST_LOADING) atomic_store(&s->state, ST_READY);
}

void lf_server_drain(lf_server *s) {
    if (!s) return;
    atomic_store(&s->state, ST_DRAINING);
    if (s->attached) lf_engine_drain(s->engine);
}

void lf_server_stop(lf_server *s, int deadline_ms) {
    if (!s || s->stopped) return;
    lf_server_drain(s);
    if (deadline_ms < 0) deadline_ms = 0;
    /* Work still running shortly before the deadline is cancelled through the engine (cb_cancelled), so
     * streams end with their error line and whole requests get their answer; whatever is left at the
     * deadline itself is cut off by the HTTP layer. */
    int grace = deadline_ms / 10 < 2000 ? deadline_ms / 10 : 2000;
    int64_t dl = now_ms() + deadline_ms - grace;
    atomic_store(&s->stop_deadline_ms, dl > 0 ? dl : 1);
    lf_http_stop(s->http, deadline_ms);
    s->stopped = 1;
}

void lf_server_free(lf_server *s) {
    if (!s) return;
    lf_server_stop(s, 0);
    lf_http_free(s->http);
    free(s->host);
    free(s->served_name);
    free(s);
}
