/* engine.c - the serving engine thread: continuous batching with chunked prefill over a paged KV cache,
 * preemption by recomputation, grouped multi-adapter forward, sampling, incremental detokenization and stop
 * strings. See engine.h for the scheduling contract.
 *
 * Invariants:
 *  - Only the engine thread touches sequences after submit (scheduling, KV, sampling, callbacks); the mutex
 *    guards the incoming list, the flags and the stats snapshot, never a forward step.
 *  - A sequence is in exactly one of: incoming (submitted, not yet seen), waiting (deque, FIFO; preempted
 *    ones go to its front), running (array in admission order); finished sequences are freed at once.
 *  - A running sequence holds KV for positions [0, n_cached); tokens[n_cached .. n_tokens) are its pending
 *    work; it samples only when a step's piece ends at n_tokens, so a preempted sequence (n_cached = 0)
 *    recomputes its prompt and generated tokens and then continues exactly where it was.
 *  - Everything a step needs (segments, logits, the batch workspace) is allocated at create. */
#include "serve/engine.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/rng.h"
#include "model/model_batch.h"
#include "serve/kvcache.h"
#include "serve/metrics.h"
#include "serve/sample.h"
#include "serve/stop.h"

typedef struct eng_req {
    lf_engine_callbacks cb;
    void *user;
    lf_gen_params params; /* stop strings and stop token ids owned (deep copies) */
    lf_sample_params sp;
    size_t n_inputs, n_done;
    int want_tokens;
    int cancelled;
} eng_req;

typedef struct eng_tok { /* one generated token kept for details */
    int32_t id;
    float log_prob;
    int special;
    size_t text_off, text_len; /* into seq->tokbuf */
} eng_tok;

typedef struct eng_seq {
    eng_req *req;
    size_t idx;
    int32_t *tokens;       /* [cap] prompt then generated */
    int64_t n_prompt, n_tokens, cap, max_new, n_gen;
    int64_t n_cached;      /* positions with K/V in the pool */
    int stop_matched;      /* a stop string matched (its held-back text is dropped, not flushed) */
    lf_kv_seq kv;
    int kv_init;
    const lf_model_adapter *adapter;
    void *adapter_ref;
    lf_rng rng;
    uint64_t seed;
    lf_stop_matcher *stop;
    lf_tokenizer_stream *detok;
    char *text;            /* emitted text so far */
    size_t text_len, text_cap;
    eng_tok *toks;         /* [max_new] when want_tokens */
    char *tokbuf;          /* token texts */
    size_t tokbuf_len, tokbuf_cap;
    int32_t *top_id;       /* [max_new * n_top] */
    float *top_lp;
    double t_submit, t_first, t_last;
    struct eng_seq *next;  /* incoming / waiting links */
} eng_seq;

struct lf_engine {
    lf_model *m;
    const lf_tokenizer *tok;
    lf_engine_params p;
    lf_metrics *metrics;
    const lf_model_config *cfg;
    lf_kv_pool *pool;
    lf_batch *batch;
    lf_sample_scratch *sample;
    void **kv_k, **kv_v;   /* [L] pool pointers */
    /* step workspace (engine thread) */
    lf_batch_seg *segs;    /* [max_batch_size] */
    eng_seq **seg_seq;     /* [max_batch_size] */
    int64_t *seg_work;
    float *logits;         /* [max_batch_size, V] host */
    eng_seq **running;     /* [max_batch_size] admission order */
    int64_t n_running;
    eng_seq *wait_head, *wait_tail;
    int64_t n_wait;        /* engine-side waiting count */
    /* shared with submitters, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    int thread_started;
    eng_seq *in_head, *in_tail;
    int64_t n_queued;      /* incoming + waiting, for the 429 check */
    int draining, stopping;
    char cancel_reason[128];
    int cancel_all;
    lf_engine_stats stats;
    int64_t n_preempt, n_steps, n_tokgen; /* engine thread's counters, copied into stats */
    atomic_uint_fast64_t seed_ctr;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

lf_engine_params lf_engine_default_params(void) {
    lf_engine_params p = {32, 256, 0, 256, 16, 0, 64};
    return p;
}

const lf_engine_params *lf_engine_get_params(const lf_engine *e) { return &e->p; }

/* ---------------------------------------------------------------------------------------------------- */
/* sequences                                                                                              */

static void req_free(eng_req *r) {
    if (!r) return;
    for (size_t i = 0; i < r->params.n_stop; i++) free(r->params.stop[i]);
    free(r->params.stop);
    free(r->params.stop_token_ids);
    free(r);
}

static void seq_free(lf_engine *e, eng_seq *s) {
    if (!s) return;
    if (s->kv_init) lf_kv_seq_free(e->pool, &s->kv);
    lf_stop_free(s->stop);
    lf_tokenizer_stream_free(s->detok);
    free(s->tokens);
    free(s->text);
    free(s->toks);
    free(s->tokbuf);
    free(s->top_id);
    free(s->top_lp);
    free(s);
}

static int buf_append(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
    if (!n || !s) return 0;
    if (n > ((size_t)1 << 40) || *len > ((size_t)1 << 40)) return -1; /* bounds the sizes for the compiler */
    if (*len + n + 1 > *cap) {
        size_t nc = *cap ? *cap : 256;
        while (nc < *len + n + 1) nc *= 2;
        char *nb = realloc(*buf, nc);
        if (!nb) return -1;
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = 0;
    return 0;
}

/* Ends sequence s (already out of the running array / waiting queue): final callbacks and frees it. */
/* The top alternatives of a sampled token as lf_gen_tokens with their decoded text (txt[k] malloc'd, the
 * caller frees them). Returns how many. */
static int make_tops(lf_engine *e, const lf_sample_result *sr, int n_top, lf_gen_token *tops, char **txt) {
    int nt = n_top < sr->n_top ? n_top : sr->n_top;
    for (int k = 0; k < nt; k++) {
        size_t tl = 0;
        lf_err derr = {0};
        if (lf_tokenizer_decode(e->tok, &sr->top_id[k], 1, 0, &txt[k], &tl, &derr) != LF_OK) txt[k] = NULL;
        tops[k] = (lf_gen_token){sr->top_id[k], txt[k] ? txt[k] : "", txt[k] ? tl : 0, sr->top_log_prob[k], 0, NULL, 0};
    }
    return nt;
}

/* Ends sequence s (already out of the running array / waiting queue): final callbacks and frees it. last: the
 * token that ended it (EOS, the stop string's or the max_new_tokens-th), not sent through on_token; last_emit:
 * the text it made safe to send. */
static void seq_finish_last(lf_engine *e, eng_seq *s, lf_finish_reason why, const char *errmsg,
                            const lf_gen_token *last, const char *last_emit, size_t last_emit_len) {
    eng_req *r = s->req;
    char *flush = NULL;
    size_t flush_len = 0, flush_cap = 0;
    buf_append(&flush, &flush_len, &flush_cap, last_emit, last_emit_len);
    if (why != LF_FINISH_ERROR && !s->stop_matched) {
        /* bytes the detokenizer still holds, through the stop matcher, then what the matcher holds */
        const char *piece = NULL, *emit = NULL;
        size_t plen = 0, elen = 0;
        int stopped = 0;
        lf_err err = {0};
        if (lf_tokenizer_stream_flush(s->detok, &piece, &plen, &err) == LF_OK && plen &&
            lf_stop_feed(s->stop, piece, plen, &emit, &elen, &stopped, &err) == LF_OK)
            buf_append(&flush, &flush_len, &flush_cap, emit, elen);
        if (stopped) why = LF_FINISH_STOP;
        else {
            lf_stop_flush(s->stop, &emit, &elen);
            buf_append(&flush, &flush_len, &flush_cap, emit, elen);
        }
    }
    if (why != LF_FINISH_ERROR) buf_append(&s->text, &s->text_len, &s->text_cap, flush, flush_len);
    lf_gen_token *toks = NULL, *tops = NULL;
    char **top_txt = NULL;
    size_t n_toks = 0;
    int n_top = r->sp.n_top;
    if (r->want_tokens && s->n_gen > 0) {
        n_toks = (size_t)s->n_gen;
        toks = calloc(n_toks, sizeof *toks);
        if (n_top > 0) {
            tops = calloc(n_toks * (size_t)n_top, sizeof *tops);
            top_txt = calloc(n_toks * (size_t)n_top, sizeof *top_txt);
        }
        if (!toks || (n_top > 0 && (!tops || !top_txt))) n_toks = 0;
        for (size_t i = 0; i < n_toks; i++) {
            const eng_tok *t = &s->toks[i];
            toks[i] = (lf_gen_token){t->id, s->tokbuf ? s->tokbuf + t->text_off : "", t->text_len, t->log_prob,
                                     t->special, NULL, 0};
            if (n_top > 0) {
                for (int k = 0; k < n_top; k++) {
                    size_t j = i * (size_t)n_top + (size_t)k;
                    int32_t id = s->top_id[j];
                    char *txt = NULL;
                    size_t tl = 0;
                    lf_err err = {0};
                    if (lf_tokenizer_decode(e->tok, &id, 1, 0, &txt, &tl, &err) != LF_OK) txt = NULL;
                    top_txt[j] = txt;
                    tops[j] = (lf_gen_token){id, txt ? txt : "", txt ? tl : 0, s->top_lp[j], 0, NULL, 0};
                }
                toks[i].top = tops + i * (size_t)n_top;
                toks[i].n_top = (size_t)n_top;
            }
        }
    }
    lf_gen_result res = {0};
    res.text = s->text ? s->text : "";
    res.text_len = s->text_len;
    res.finish = why;
    res.prompt_tokens = s->n_prompt;
    res.generated_tokens = s->n_gen;
    res.seed = s->seed;
    res.has_seed = r->params.has_seed;
    res.tokens = toks;
    res.n_tokens = n_toks;
    res.error = why == LF_FINISH_ERROR ? (errmsg ? errmsg : "generation failed") : NULL;
    if (e->metrics) { /* tokens of cancelled / failed sequences count too: the work was done */
        lf_metrics_tokens(e->metrics, s->n_prompt, s->n_gen);
        if (why != LF_FINISH_ERROR && s->n_gen > 1 && s->t_first > 0) lf_metrics_tpot(e->metrics, (s->t_last - s->t_first) / (double)(s->n_gen - 1));
    }
    r->cb.on_done(r->user, s->idx, &res, last, flush ? flush : "", flush_len);
    if (top_txt)
        for (size_t j = 0; j < n_toks * (size_t)n_top; j++) free(top_txt[j]);
    free(top_txt);
    free(tops);
    free(toks);
    free(flush);
    if (r->cb.release_adapter && s->adapter_ref) r->cb.release_adapter(r->user, s->adapter_ref);
    s->adapter_ref = NULL;
    seq_free(e, s);
    if (++r->n_done == r->n_inputs) {
        if (r->cb.on_release) r->cb.on_release(r->user);
        req_free(r);
    }
}

static void seq_finish(lf_engine *e, eng_seq *s, lf_finish_reason why, const char *errmsg) {
    seq_finish_last(e, s, why, errmsg, NULL, NULL, 0);
}

/* ---------------------------------------------------------------------------------------------------- */
/* submit (HTTP threads)                                                                                  */

/* The prompt of an input after params->truncate (its last `truncate` tokens, TGI). */
static void input_prompt(const lf_engine_input *in, const lf_gen_params *params, const int32_t **ids, int64_t *n) {
    *ids = in->ids;
    *n = in->n;
    if (params->truncate > 0 && *n > params->truncate) {
        *ids += *n - params->truncate;
        *n = params->truncate;
    }
}

lf_status lf_engine_submit(lf_engine *e, const lf_engine_input *inputs, size_t n, const lf_gen_params *params,
                           int want_tokens, const lf_engine_callbacks *cb, void *user, int *http_status,
                           lf_err *err) {
    lf_status st = LF_OK;
    eng_req *r = NULL;
    eng_seq **seqs = NULL;
    *http_status = 500;
    if (n == 0 || !inputs || !params || !cb || !cb->on_done) {
        *http_status = 500;
        return lf_err_set(err, LF_EINVAL, "engine: submit needs inputs, params and callbacks");
    }
    const int64_t V = e->cfg->V, maxlen = e->p.max_model_len;
    if (params->truncate < 0) {
        *http_status = 422;
        return lf_err_set(err, LF_EINVAL, "truncate must be >= 1 (0 = off), got %lld", (long long)params->truncate);
    }
    for (size_t i = 0; i < n; i++) {
        const int32_t *ids;
        int64_t np;
        input_prompt(&inputs[i], params, &ids, &np);
        if (np < 1) {
            *http_status = 422;
            return lf_err_set(err, LF_EINVAL, "input %zu: the prompt is empty (no tokens)", i);
        }
        if (np >= maxlen) {
            *http_status = 413;
            return lf_err_set(err, LF_EINVAL,
                              "input %zu: the prompt has %lld tokens; max_model_len is %lld (prompt + generated tokens)",
                              i, (long long)np, (long long)maxlen);
        }
        for (int64_t t = 0; t < np; t++)
            if (ids[t] < 0 || ids[t] >= V) {
                *http_status = 422;
                return lf_err_set(err, LF_EINVAL, "input %zu: token id %d at %lld is outside the vocabulary [0, %lld)", i,
                                  ids[t], (long long)t, (long long)V);
            }
    }
    if (params->max_new_tokens < 1) {
        *http_status = 422;
        return lf_err_set(err, LF_EINVAL, "max_new_tokens must be >= 1, got %lld", (long long)params->max_new_tokens);
    }
    if (params->n_stop_token_ids > 0 && !params->stop_token_ids) {
        *http_status = 500;
        return lf_err_set(err, LF_EINVAL, "engine: stop_token_ids is NULL with %zu ids", params->n_stop_token_ids);
    }
    for (size_t i = 0; i < params->n_stop_token_ids; i++)
        if (params->stop_token_ids[i] < 0 || params->stop_token_ids[i] >= V) {
            *http_status = 422;
            return lf_err_set(err, LF_EINVAL, "stop_token_ids[%zu] = %d is outside the vocabulary [0, %lld)", i,
                              params->stop_token_ids[i], (long long)V);
        }
    r = calloc(1, sizeof *r);
    seqs = calloc(n, sizeof *seqs);
    if (!r || !seqs) goto oom;
    r->cb = *cb;
    r->user = user;
    r->params = *params;
    r->params.stop = NULL;
    r->params.n_stop = 0;
    r->params.stop_token_ids = NULL;
    r->params.n_stop_token_ids = 0;
    if (params->n_stop_token_ids) {
        r->params.stop_token_ids = malloc(params->n_stop_token_ids * sizeof(int32_t));
        if (!r->params.stop_token_ids) goto oom;
        memcpy(r->params.stop_token_ids, params->stop_token_ids, params->n_stop_token_ids * sizeof(int32_t));
        r->params.n_stop_token_ids = params->n_stop_token_ids;
    }
    if (params->n_stop) {
        r->params.stop = calloc(params->n_stop, sizeof(char *));
        if (!r->params.stop) goto oom;
        for (size_t i = 0; i < params->n_stop; i++) {
            r->params.stop[i] = strdup(params->stop[i]);
            if (!r->params.stop[i]) goto oom;
            r->params.n_stop = i + 1;
        }
    }
    r->sp = (lf_sample_params){.do_sample = params->do_sample && params->temperature > 0,
                               .temperature = params->temperature,
                               .top_k = params->top_k,
                               .top_p = params->top_p,
                               .repetition_penalty = params->repetition_penalty,
                               .n_top = params->logprobs ? params->top_logprobs : 0,
                               .presence_penalty = params->presence_penalty,
                               .frequency_penalty = params->frequency_penalty,
                               .min_p = params->min_p,
                               .typical_p = params->typical_p,
                               .n_prompt = 0 /* per sequence, set in advance() */};
    if (r->sp.n_top > LF_SAMPLE_MAX_TOP) r->sp.n_top = LF_SAMPLE_MAX_TOP;
    if (lf_sample_params_check(&r->sp, err)) {
        *http_status = 422;
        st = LF_EINVAL;
        goto fail;
    }
    r->n_inputs = n;
    r->want_tokens = want_tokens;
    double t0 = now_s();
    for (size_t i = 0; i < n; i++) {
        eng_seq *s = calloc(1, sizeof *s);
        if (!s) goto oom;
        seqs[i] = s;
        s->req = r;
        s->idx = i;
        const int32_t *ids;
        int64_t np;
        input_prompt(&inputs[i], params, &ids, &np);
        s->n_prompt = s->n_tokens = np;
        s->max_new = params->max_new_tokens;
        if (s->max_new > maxlen - s->n_prompt) s->max_new = maxlen - s->n_prompt;
        s->cap = s->n_prompt + s->max_new;
        s->tokens = malloc((size_t)s->cap * sizeof(int32_t));
        if (!s->tokens) goto oom;
        memcpy(s->tokens, ids, (size_t)s->n_prompt * sizeof(int32_t));
        s->adapter = inputs[i].adapter;
        s->t_submit = t0;
        s->seed = params->has_seed ? params->seed
                                   : (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull + atomic_fetch_add(&e->seed_ctr, 1);
        lf_rng_seed(&s->rng, s->seed);
        if ((st = lf_kv_seq_init(&s->kv, e->pool, maxlen, err))) goto fail;
        s->kv_init = 1;
        if ((st = lf_stop_create((const char *const *)r->params.stop, NULL, r->params.n_stop, 0, &s->stop, err))) goto fail;
        if ((st = lf_tokenizer_stream_create(e->tok, 1, &s->detok, err))) goto fail;
        if (want_tokens) {
            s->toks = calloc((size_t)s->max_new, sizeof *s->toks);
            if (!s->toks) goto oom;
            if (r->sp.n_top > 0) {
                s->top_id = calloc((size_t)(s->max_new * r->sp.n_top), sizeof(int32_t));
                s->top_lp = calloc((size_t)(s->max_new * r->sp.n_top), sizeof(float));
                if (!s->top_id || !s->top_lp) goto oom;
            }
        }
    }
    pthread_mutex_lock(&e->mu);
    if (e->draining || e->stopping) {
        pthread_mutex_unlock(&e->mu);
        *http_status = 503;
        st = lf_err_set(err, LF_EBUSY, "the server is shutting down");
        goto fail;
    }
    if (e->n_queued + (int64_t)n > e->p.max_queue) {
        int64_t q = e->n_queued;
        pthread_mutex_unlock(&e->mu);
        *http_status = 429;
        if (e->metrics) lf_metrics_rejected(e->metrics, "queue_full");
        st = lf_err_set(err, LF_EBUSY, "the request queue is full (%lld of %lld waiting); retry later", (long long)q,
                        (long long)e->p.max_queue);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        seqs[i]->adapter_ref = inputs[i].adapter_ref; /* owned by the engine from here */
        if (e->in_tail) e->in_tail->next = seqs[i];
        else e->in_head = seqs[i];
        e->in_tail = seqs[i];
    }
    e->n_queued += (int64_t)n;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    free(seqs);
    *http_status = 200;
    return LF_OK;
oom:
    st = lf_err_set(err, LF_ENOMEM, "engine: out of memory queuing the request");
    *http_status = 500;
fail:
    if (seqs)
        for (size_t i = 0; i < n; i++) seq_free(e, seqs[i]);
    free(seqs);
    req_free(r);
    return st;
}

/* ---------------------------------------------------------------------------------------------------- */
/* engine thread                                                                                          */

static void wait_push_front(lf_engine *e, eng_seq *s) {
    s->next = e->wait_head;
    e->wait_head = s;
    if (!e->wait_tail) e->wait_tail = s;
    e->n_wait++;
}

static eng_seq *wait_pop(lf_engine *e) {
    eng_seq *s = e->wait_head;
    if (!s) return NULL;
    e->wait_head = s->next;
    if (!e->wait_head) e->wait_tail = NULL;
    s->next = NULL;
    e->n_wait--;
    return s;
}

static void running_remove(lf_engine *e, int64_t i) {
    memmove(e->running + i, e->running + i + 1, (size_t)(e->n_running - i - 1) * sizeof(eng_seq *));
    e->n_running--;
}

/* Take the incoming list; also the cancel-all request. Returns 0 when the thread should exit. */
static int take_incoming(lf_engine *e, int block) {
    pthread_mutex_lock(&e->mu);
    while (block && !e->stopping && !e->in_head && !e->cancel_all) pthread_cond_wait(&e->cv, &e->mu);
    eng_seq *h = e->in_head, *t = e->in_tail;
    e->in_head = e->in_tail = NULL;
    int stop = e->stopping, cancel = e->cancel_all;
    char reason[128];
    memcpy(reason, e->cancel_reason, sizeof reason);
    e->cancel_all = 0;
    pthread_mutex_unlock(&e->mu);
    if (h) { /* append to waiting, FIFO */
        int64_t k = 0;
        for (eng_seq *s = h; s; s = s->next) k++;
        if (e->wait_tail) e->wait_tail->next = h;
        else e->wait_head = h;
        e->wait_tail = t;
        e->n_wait += k;
    }
    if (cancel || stop) {
        const char *why = stop ? "the server is shutting down" : reason;
        while (e->n_running > 0) {
            eng_seq *s = e->running[e->n_running - 1];
            e->n_running--;
            seq_finish(e, s, LF_FINISH_ERROR, why);
        }
        eng_seq *s;
        while ((s = wait_pop(e))) seq_finish(e, s, LF_FINISH_ERROR, why);
    }
    return !stop;
}

static void publish_stats(lf_engine *e) {
    lf_kv_stats ks;
    lf_kv_pool_stats(e->pool, &ks);
    pthread_mutex_lock(&e->mu);
    int64_t in = 0;
    for (eng_seq *s = e->in_head; s; s = s->next) in++;
    e->n_queued = e->n_wait + in;
    e->stats.waiting = e->n_wait + in;
    e->stats.running = e->n_running;
    e->stats.kv_blocks = ks.blocks;
    e->stats.kv_blocks_used = ks.used;
    e->stats.kv_blocks_free = ks.free;
    e->stats.preemptions = e->n_preempt;
    e->stats.steps = e->n_steps;
    e->stats.tokens_generated = e->n_tokgen;
    pthread_mutex_unlock(&e->mu);
}

/* Drop cancelled requests' sequences. */
static void reap_cancelled(lf_engine *e) {
    for (int64_t i = e->n_running - 1; i >= 0; i--) {
        eng_seq *s = e->running[i];
        if (!s->req->cancelled && s->req->cb.is_cancelled && s->req->cb.is_cancelled(s->req->user)) s->req->cancelled = 1;
        if (s->req->cancelled) {
            running_remove(e, i);
            seq_finish(e, s, LF_FINISH_ERROR, "request cancelled (client disconnected or server stopping)");
        }
    }
    eng_seq *prev = NULL;
    for (eng_seq *s = e->wait_head; s;) {
        eng_seq *nx = s->next;
        if (!s->req->cancelled && s->req->cb.is_cancelled && s->req->cb.is_cancelled(s->req->user)) s->req->cancelled = 1;
        if (s->req->cancelled) {
            if (prev) prev->next = nx;
            else e->wait_head = nx;
            if (e->wait_tail == s) e->wait_tail = prev;
            e->n_wait--;
            s->next = NULL;
            seq_finish(e, s, LF_FINISH_ERROR, "request cancelled (client disconnected or server stopping)");
        } else prev = s;
        s = nx;
    }
}

/* Preempt running[i]: free its KV, send it to the front of the waiting queue. */
static void preempt(lf_engine *e, int64_t i) {
    eng_seq *s = e->running[i];
    int had = s->n_cached > 0;
    lf_kv_seq_release(e->pool, &s->kv);
    s->n_cached = 0;
    running_remove(e, i);
    wait_push_front(e, s);
    if (had) {
        e->n_preempt++;
        if (e->metrics) lf_metrics_preemption(e->metrics, 1);
        LF_LOG(LF_LOG_DEBUG, "engine: preempted a sequence of %lld tokens (pool full)", (long long)s->n_tokens);
    }
}

static int seg_cmp_adapter(const void *a, const void *b) {
    const lf_batch_seg *x = a, *y = b;
    uintptr_t px = (uintptr_t)x->adapter, py = (uintptr_t)y->adapter;
    return px < py ? -1 : px > py;
}

/* Sample the next token of s from its logits row and handle text / stop / EOS / length. Returns 1 when the
 * sequence finished (already freed). */
static int advance(lf_engine *e, eng_seq *s, const float *row, int64_t running_idx) {
    eng_req *r = s->req;
    lf_err err = {0};
    lf_sample_result sr;
    lf_sample_params sp = r->sp;
    sp.n_prompt = s->n_prompt; /* presence/frequency penalties count the generated tokens only (vLLM) */
    if (lf_sample_token(e->sample, &sp, &s->rng, row, e->cfg->V, s->tokens, s->n_tokens, &sr, &err)) {
        running_remove(e, running_idx);
        seq_finish(e, s, LF_FINISH_ERROR, err.msg);
        return 1;
    }
    double t = now_s();
    if (s->n_gen == 0) {
        s->t_first = t;
        if (e->metrics) lf_metrics_ttft(e->metrics, t - s->t_submit);
    }
    s->t_last = t;
    s->tokens[s->n_tokens++] = sr.id;
    int64_t gi = s->n_gen++;
    e->n_tokgen++;
    int is_eos = 0, is_stop_id = 0;
    if (!r->params.ignore_eos)
        for (int k = 0; k < e->cfg->n_eos; k++) is_eos |= sr.id == e->cfg->eos_ids[k];
    for (size_t k = 0; k < r->params.n_stop_token_ids; k++) is_stop_id |= sr.id == r->params.stop_token_ids[k];
    int end_tok = is_eos || is_stop_id; /* ends the sequence; its text is not part of the output */
    const char *piece = "", *emit = "";
    size_t plen = 0, elen = 0;
    int stopped = 0;
    if (!end_tok) {
        if (lf_tokenizer_stream_push(s->detok, sr.id, &piece, &plen, &err) ||
            lf_stop_feed(s->stop, piece, plen, &emit, &elen, &stopped, &err)) {
            running_remove(e, running_idx);
            seq_finish(e, s, LF_FINISH_ERROR, err.msg);
            return 1;
        }
        s->stop_matched = stopped;
    }
    int special = lf_tokenizer_is_special(e->tok, sr.id);
    if (r->want_tokens) {
        eng_tok *tk = &s->toks[gi];
        tk->id = sr.id;
        tk->log_prob = sr.log_prob;
        tk->special = special;
        tk->text_off = s->tokbuf_len;
        tk->text_len = plen;
        if (buf_append(&s->tokbuf, &s->tokbuf_len, &s->tokbuf_cap, piece, plen)) tk->text_len = 0;
        for (int k = 0; k < r->sp.n_top && k < sr.n_top; k++) {
            s->top_id[gi * r->sp.n_top + k] = sr.top_id[k];
            s->top_lp[gi * r->sp.n_top + k] = sr.top_log_prob[k];
        }
    }
    lf_gen_token tok = {sr.id, piece, plen, sr.log_prob, special, NULL, 0};
    lf_gen_token tops[LF_SAMPLE_MAX_TOP];
    char *txt[LF_SAMPLE_MAX_TOP] = {0};
    int nt = (r->cb.on_token || end_tok || stopped || s->n_gen >= s->max_new) ? make_tops(e, &sr, r->sp.n_top, tops, txt) : 0;
    if (nt > 0) {
        tok.top = tops;
        tok.n_top = (size_t)nt;
    }
    int done = 0;
    if (end_tok || stopped || s->n_gen >= s->max_new) {
        /* the detokenizer's flush in seq_finish_last may reuse the buffer `piece` points into: copy it */
        char *pc = malloc(plen + 1);
        if (pc) {
            if (plen) memcpy(pc, piece, plen); /* an EOS / stop id leaves piece "" (never memcpy from NULL) */
            pc[plen] = 0;
        }
        tok.text = end_tok || !pc ? "" : pc;
        tok.text_len = end_tok || !pc ? 0 : plen;
        running_remove(e, running_idx);
        lf_finish_reason why = is_eos ? LF_FINISH_EOS : is_stop_id || stopped ? LF_FINISH_STOP : LF_FINISH_LENGTH;
        seq_finish_last(e, s, why, NULL, &tok, end_tok ? NULL : emit, end_tok ? 0 : elen);
        free(pc);
        done = 1;
    } else {
        buf_append(&s->text, &s->text_len, &s->text_cap, emit, elen);
        if (r->cb.on_token) r->cb.on_token(r->user, s->idx, &tok, emit, elen);
    }
    for (int k = 0; k < nt; k++) free(txt[k]);
    return done;
}

/* One scheduling step; returns 0 when there was nothing to do. */
static int step(lf_engine *e) {
    const int64_t BS = e->p.block_size;
    reap_cancelled(e);
    /* admit */
    while (e->n_running < e->p.max_batch_size && e->wait_head) {
        eng_seq *s = e->wait_head;
        int64_t first = s->n_tokens < e->p.max_batch_tokens ? s->n_tokens : e->p.max_batch_tokens;
        if (e->n_running > 0 && lf_kv_pool_free_blocks(e->pool) < (first + BS - 1) / BS + 1) break;
        wait_pop(e);
        e->running[e->n_running++] = s;
    }
    if (e->n_running == 0) return 0;
    /* plan: decodes first, then prefill chunks within the token budget; reserve KV, preempting the newest */
    int64_t n_dec = 0;
    for (int64_t i = 0; i < e->n_running; i++) n_dec += e->running[i]->n_tokens - e->running[i]->n_cached == 1;
    int64_t prefill_left = e->p.max_batch_tokens - n_dec;
    int64_t nseg = 0;
    for (int64_t i = 0; i < e->n_running; i++) {
        eng_seq *s = e->running[i];
        int64_t need = s->n_tokens - s->n_cached, w = need;
        if (need > 1) {
            if (prefill_left <= 0) continue;
            if (w > prefill_left) w = prefill_left;
        }
        lf_err err = {0};
        for (;;) {
            lf_status st = lf_kv_seq_reserve(e->pool, &s->kv, s->n_cached + w, &err);
            if (st == LF_OK) break;
            if (st != LF_EBUSY) {
                running_remove(e, i);
                seq_finish(e, s, LF_FINISH_ERROR, err.msg);
                s = NULL;
                i--;
                break;
            }
            /* pool full: a shorter prefill chunk may fit; else preempt the newest other sequence */
            if (w > 1) {
                int64_t fit = lf_kv_pool_free_blocks(e->pool) * BS + (s->kv.n_blocks * BS - s->kv.n_tokens);
                if (fit >= 1 && fit < w && need > 1) {
                    w = fit;
                    continue;
                }
            }
            if (e->n_running - 1 > i) {
                preempt(e, e->n_running - 1);
                continue;
            }
            /* s is the newest: it waits (the oldest sequences keep their blocks) */
            preempt(e, i);
            s = NULL;
            i--;
            break;
        }
        if (!s) continue;
        if (need > 1) prefill_left -= w;
        e->segs[nseg] = (lf_batch_seg){s->tokens + s->n_cached, w, s->n_cached, lf_kv_seq_table(&s->kv),
                                       lf_kv_seq_n_blocks(&s->kv), s->adapter, s->n_cached + w == s->n_tokens};
        e->seg_seq[nseg] = s;
        nseg++;
    }
    if (nseg == 0) return e->n_running > 0;
    /* group by adapter: sort segments and their sequences together (index sort) */
    for (int64_t i = 0; i < nseg; i++) e->seg_work[i] = i;
    for (int64_t i = 1; i < nseg; i++) { /* insertion sort by adapter pointer, stable; nseg <= max_batch_size */
        int64_t k = e->seg_work[i], j = i - 1;
        while (j >= 0 && seg_cmp_adapter(&e->segs[e->seg_work[j]], &e->segs[k]) > 0) {
            e->seg_work[j + 1] = e->seg_work[j];
            j--;
        }
        e->seg_work[j + 1] = k;
    }
    lf_batch_seg *sorted = e->segs + e->p.max_batch_size; /* second half of the segs array */
    eng_seq **sseq = e->seg_seq + e->p.max_batch_size;
    for (int64_t i = 0; i < nseg; i++) {
        sorted[i] = e->segs[e->seg_work[i]];
        sseq[i] = e->seg_seq[e->seg_work[i]];
    }
    lf_paged_kv kv = {e->kv_k, e->kv_v, BS, lf_kv_pool_blocks(e->pool), lf_kv_pool_dtype(e->pool)};
    lf_err err = {0};
    lf_status st = lf_batch_forward(e->batch, &kv, sorted, nseg, e->logits, &err);
    e->n_steps++;
    if (st) {
        LF_LOG(LF_LOG_ERROR, "engine: forward step failed: %s", err.msg);
        for (int64_t i = 0; i < nseg; i++)
            for (int64_t j = 0; j < e->n_running; j++)
                if (e->running[j] == sseq[i]) {
                    running_remove(e, j);
                    seq_finish(e, sseq[i], LF_FINISH_ERROR, err.msg);
                    break;
                }
        return 1;
    }
    int64_t li = 0;
    for (int64_t i = 0; i < nseg; i++) {
        eng_seq *s = sseq[i];
        s->n_cached += sorted[i].n;
        if (!sorted[i].want_logits) continue;
        const float *row = e->logits + li * e->cfg->V;
        li++;
        int64_t ri = -1;
        for (int64_t j = 0; j < e->n_running; j++)
            if (e->running[j] == s) {
                ri = j;
                break;
            }
        if (ri >= 0) advance(e, s, row, ri);
    }
    return 1;
}

static void *engine_main(void *arg) {
    lf_engine *e = arg;
    for (;;) {
        int idle = e->n_running == 0 && e->wait_head == NULL;
        if (!take_incoming(e, idle)) break;
        step(e);
        publish_stats(e);
    }
    publish_stats(e);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------------- */
/* lifecycle                                                                                              */

static size_t phys_mem_bytes(void) {
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    return pages > 0 && psz > 0 ? (size_t)pages * (size_t)psz : (size_t)8 << 30;
}

lf_status lf_engine_create(lf_model *m, const lf_tokenizer *tok, const lf_engine_params *pin,
                           struct lf_metrics *metrics, lf_engine **out, lf_err *err) {
    lf_status st = LF_OK;
    *out = NULL;
    lf_engine *e = calloc(1, sizeof *e);
    LF_CHECK_ALLOC(e, err);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    e->m = m;
    e->tok = tok;
    e->metrics = metrics;
    e->cfg = lf_model_get_config(m);
    e->p = pin ? *pin : lf_engine_default_params();
    lf_engine_params *p = &e->p;
    const lf_model_config *c = e->cfg;
    if (p->max_batch_size <= 0) p->max_batch_size = 32;
    if (p->max_batch_tokens <= 0) p->max_batch_tokens = 256;
    if (p->max_queue <= 0) p->max_queue = 256;
    if (p->block_size <= 0) p->block_size = 16;
    if (p->max_batch_tokens < p->max_batch_size) p->max_batch_tokens = p->max_batch_size;
    int64_t model_max = c->max_pos > 0 ? c->max_pos : 4096;
    if (p->max_model_len <= 0) p->max_model_len = model_max < 4096 ? model_max : 4096;
    if (p->max_model_len > model_max) {
        st = lf_err_set(err, LF_EINVAL, "max_model_len %lld exceeds the model's max_position_embeddings %lld",
                        (long long)p->max_model_len, (long long)model_max);
        goto fail;
    }
    if (p->max_model_len < 2) {
        st = lf_err_set(err, LF_EINVAL, "max_model_len must be >= 2, got %lld", (long long)p->max_model_len);
        goto fail;
    }
    const lf_dtype kvdt = lf_model_compute_dtype(m); /* the KV cache holds the compute dtype */
    size_t per_token = lf_act_bytes(kvdt, 2 * c->L * c->KH * c->D);
    int64_t blocks_per_seq = (p->max_model_len + p->block_size - 1) / p->block_size;
    if (p->kv_cache_bytes == 0) {
        int64_t nseq = 2 * p->max_batch_size > 8 ? 2 * p->max_batch_size : 8;
        size_t want = (size_t)(nseq * blocks_per_seq * p->block_size) * per_token, cap = phys_mem_bytes() / 4;
        p->kv_cache_bytes = want < cap ? want : cap;
    }
    size_t block_bytes = per_token * (size_t)p->block_size;
    if (p->kv_cache_bytes / block_bytes < (size_t)blocks_per_seq) {
        st = lf_err_set(err, LF_EINVAL,
                        "the KV cache budget (%.1f MiB = %zu blocks of %lld tokens) cannot hold one sequence of "
                        "max_model_len %lld tokens (%lld blocks, %.1f MiB): raise --kv-cache-memory or lower "
                        "--max-model-len",
                        (double)p->kv_cache_bytes / 1048576.0, p->kv_cache_bytes / block_bytes, (long long)p->block_size,
                        (long long)p->max_model_len, (long long)blocks_per_seq,
                        (double)blocks_per_seq * (double)block_bytes / 1048576.0);
        goto fail;
    }
    LF_TRY(lf_kv_pool_create_dt(lf_model_backend(m), kvdt, c->L, c->KH, c->D, p->block_size, p->kv_cache_bytes, &e->pool,
                                err));
    const int64_t NB = p->max_batch_size;
    e->kv_k = calloc((size_t)c->L, sizeof(void *));
    e->kv_v = calloc((size_t)c->L, sizeof(void *));
    e->segs = calloc((size_t)(2 * NB), sizeof *e->segs);
    e->seg_seq = calloc((size_t)(2 * NB), sizeof *e->seg_seq);
    e->seg_work = calloc((size_t)NB, sizeof *e->seg_work);
    e->running = calloc((size_t)NB, sizeof *e->running);
    e->logits = malloc((size_t)(NB * c->V) * sizeof(float));
    if (!e->kv_k || !e->kv_v || !e->segs || !e->seg_seq || !e->seg_work || !e->running || !e->logits) {
        st = lf_err_set(err, LF_ENOMEM, "engine: out of memory for the step workspace");
        goto fail;
    }
    for (int64_t l = 0; l < c->L; l++) {
        e->kv_k[l] = lf_kv_pool_k(e->pool, l);
        e->kv_v[l] = lf_kv_pool_v(e->pool, l);
    }
    LF_TRY(lf_batch_create(m, p->max_batch_tokens, NB, p->max_lora_rank > 0 ? p->max_lora_rank : 64, blocks_per_seq,
                           &e->batch, err));
    LF_TRY(lf_sample_scratch_create(c->V, &e->sample, err));
    {
        lf_kv_stats ks;
        lf_kv_pool_stats(e->pool, &ks);
        e->stats.kv_blocks = ks.blocks;
        e->stats.kv_blocks_free = ks.free;
        LF_LOG(LF_LOG_INFO, "engine: KV cache %lld blocks x %lld tokens (%.1f MiB, %lld full-length sequences), batch <= %lld "
                    "sequences / %lld tokens per step, max_model_len %lld",
                    (long long)ks.blocks, (long long)p->block_size, (double)ks.bytes / 1048576.0,
                    (long long)(ks.blocks / blocks_per_seq), (long long)NB, (long long)p->max_batch_tokens,
                    (long long)p->max_model_len);
    }
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        st = lf_err_set(err, LF_EIO, "engine: cannot start the engine thread");
        goto fail;
    }
    e->thread_started = 1;
    *out = e;
    return LF_OK;
fail:
    lf_engine_free(e);
    return st ? st : LF_ENOMEM;
}

void lf_engine_free(lf_engine *e) {
    if (!e) return;
    if (e->thread_started) {
        pthread_mutex_lock(&e->mu);
        e->stopping = 1;
        pthread_cond_broadcast(&e->cv);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
    }
    /* sequences submitted after the thread's last look (none can remain once stopping is seen, but be safe) */
    eng_seq *s = e->in_head;
    while (s) {
        eng_seq *nx = s->next;
        seq_finish(e, s, LF_FINISH_ERROR, "the server is shutting down");
        s = nx;
    }
    lf_batch_free(e->batch);
    lf_sample_scratch_free(e->sample);
    lf_kv_pool_free(e->pool);
    free(e->kv_k);
    free(e->kv_v);
    free(e->segs);
    free(e->seg_seq);
    free(e->seg_work);
    free(e->running);
    free(e->logits);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

void lf_engine_drain(lf_engine *e) {
    pthread_mutex_lock(&e->mu);
    e->draining = 1;
    pthread_mutex_unlock(&e->mu);
}

void lf_engine_cancel_all(lf_engine *e, const char *reason) {
    pthread_mutex_lock(&e->mu);
    snprintf(e->cancel_reason, sizeof e->cancel_reason, "%s", reason ? reason : "cancelled");
    e->cancel_all = 1;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void lf_engine_stats_get(lf_engine *e, lf_engine_stats *out) {
    pthread_mutex_lock(&e->mu);
    *out = e->stats;
    pthread_mutex_unlock(&e->mu);
}
