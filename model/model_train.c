/* model_train.c - training forward/backward with LoRA/DoRA (see model_train.h for the semantics).
 *
 * The forward of a layer is the model's one decoder layer (decoder.c) with this file's hooks: linears with
 * dropout and the saved LoRA activations (lin_fwd), attention over the sequence itself (attention_train).
 * Per layer l (HF names), forward with what the backward keeps:
 *   xn1 = rmsnorm(x_l)                                    keep x_l (always), xn1
 *   q, k, v = lin(xn1); [qk-norm]; rope(q, k)             keep q, k, v (after rope); with q_norm/k_norm also
 *                                                         the projections before them (qp, kp)
 *   att, lse = attention_train(q, k, v)                   keep att, lse
 *   x_mid = x_l + lin_o(att)                              keep x_mid
 *   xn2 = rmsnorm(x_mid); g, u = lin(xn2); h = swiglu(g,u) keep xn2, g, u, h
 *   x_{l+1} = x_mid + lin_down(h)
 * and per adapted module the LoRA hidden A(drop(x)) [T, R] (DoRA also the base product and B A x).
 * With checkpointing only x_l is kept per layer; the backward recomputes layer l into one activation set.
 * Backward ops accumulate (backend.h), so every gradient buffer is zeroed right before it is produced.
 * The DoRA and dropout elementwise loops run on host memory: this file is CPU-only until those move into
 * backend ops (the model is CPU-only today as well). */
#include "model/model_train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/decoder.h"
#include "model/model_int.h"

typedef struct act_set {
    float *xn1, *q, *k, *v, *att, *lse, *xmid, *xn2, *g, *up, *h; /* see the file comment */
    float *qp, *kp;           /* [T, H*D], [T, KH*D] before q_norm/k_norm (cfg.qk_norm), else NULL */
    float *u[LF_MOD_COUNT];   /* [T, R] per adapted module */
    float *bnb[LF_MOD_COUNT]; /* DoRA: W drop(x) without bias [T, OC] */
    float *lo[LF_MOD_COUNT];  /* DoRA: B A drop(x) [T, OC] */
} act_set;

struct lf_trainer_model {
    lf_model *m;            /* borrowed */
    lf_train_options opt;
    lf_lora_view *views;    /* [L * LF_MOD_COUNT], owned copy of the caller's table */
    float *wn;              /* DoRA norms, [L * LF_MOD_COUNT] slots of OC floats each (NULL when no DoRA) */
    int64_t *wn_off;        /* offset of each module's norm in wn, -1 when not DoRA */
    float *wscratch;        /* DoRA refresh: one dequantized weight [OC, C] */
    int64_t T;              /* max tokens */
    float *xs;              /* [(L+1), T, C] residual stream at each layer input (+ final) */
    act_set *sets;          /* [NS] */
    int64_t NS;
    float *dres, *dxn, *dq, *dk, *dv, *datt, *dg, *dup, *dh, *tmpc; /* gradients and a [T, C] temp */
    float *dqp, *dkp;                    /* gradients before q_norm/k_norm (cfg.qk_norm), else NULL */
    float *xd, *dxd, *lo_s, *dlo, *dur;  /* LoRA scratch */
    float *logits, *losses, *xf, *dxf;   /* head chunk: [Rc, V], [Rc], [Rc, C], [Rc, C] */
    int64_t Rc;
    int32_t *posbuf;
    void *block;            /* the one workspace allocation */
    int64_t block_bytes;
};

#define OP(call)                                                                                 \
    do {                                                                                         \
        if ((call) != LF_OK) {                                                                   \
            st = lf_err_set(err, be->err.code ? be->err.code : LF_EINVAL, "train: %s", be->err.msg); \
            goto fail;                                                                           \
        }                                                                                        \
    } while (0)

static int64_t rup16(int64_t n) { return (n + 15) / 16 * 16; }

/* ---- dropout: a keep decision per element from a hash, no stored mask ---- */
static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t drop_key(const lf_trainer_model *tm, uint64_t step, uint64_t seq, int64_t l, int mod) {
    return mix64(mix64(mix64(tm->opt.seed ^ 0x9e3779b97f4a7c15ull) + step) + (seq << 20) + (uint64_t)l * 16 + (uint64_t)mod);
}

static inline int drop_keep(uint64_t key, int64_t i, uint32_t thresh) {
    return (uint32_t)(mix64(key + (uint64_t)i * 0x9e3779b97f4a7c15ull) >> 40) >= thresh;
}

/* xd[N] = x * keep / (1 - p) */
static void dropout_apply(float *xd, const float *x, int64_t N, uint64_t key, float p) {
    uint32_t th = (uint32_t)((double)p * 16777216.0);
    float inv = 1.0f / (1.0f - p);
    for (int64_t i = 0; i < N; i++) xd[i] = drop_keep(key, i, th) ? x[i] * inv : 0.0f;
}

/* dx[N] += dxd * keep / (1 - p) */
static void dropout_backward(float *dx, const float *dxd, int64_t N, uint64_t key, float p) {
    uint32_t th = (uint32_t)((double)p * 16777216.0);
    float inv = 1.0f / (1.0f - p);
    for (int64_t i = 0; i < N; i++)
        if (drop_keep(key, i, th)) dx[i] += dxd[i] * inv;
}

static lf_tensor f32_matrix(float *p, int64_t rows, int64_t cols) {
    int64_t shape[2] = {rows, cols};
    return lf_tensor_view(p, LF_DTYPE_F32, 2, shape);
}

/* ---- one linear with its LoRA ---- */
static lf_status lin_fwd(lf_trainer_model *tm, act_set *S, int64_t l, int mod, const float *x, float *out, int64_t T,
                         uint64_t step, uint64_t seq, lf_err *err) {
    lf_status st = LF_OK;
    lf_backend *be = tm->m->be;
    const lf_linear *lin = &tm->m->layers[l].lin[mod];
    const lf_lora_view *v = &tm->views[l * LF_MOD_COUNT + mod];
    int64_t C = lin->C, OC = lin->OC, R = v->R;
    OP(lf_linear_forward(be, lf_f32(out), lf_f32(x), lin, T));
    if (!v->A) return LF_OK;
    const float *xd = x;
    float p = tm->opt.dropout;
    if (p > 0) {
        dropout_apply(tm->xd, x, T * C, drop_key(tm, step, seq, l, mod), p);
        xd = tm->xd;
    }
    lf_tensor A = f32_matrix(v->A, R, C), B = f32_matrix(v->B, OC, R);
    float *u = S->u[mod];
    OP(be->ops->matmul_forward(be, lf_f32(u), lf_f32(xd), &A, NULL, T, C, R));
    if (!v->mag) {
        OP(be->ops->matmul_forward(be, lf_f32(tm->lo_s), lf_f32(u), &B, NULL, T, R, OC));
        OP(be->ops->axpy(be, out, tm->lo_s, v->scale, T * OC));
        return LF_OK;
    }
    /* DoRA */
    float *bnb = S->bnb[mod], *lo = S->lo[mod];
    const float *wn = tm->wn + tm->wn_off[l * LF_MOD_COUNT + mod];
    OP(be->ops->matmul_forward(be, lf_f32(lo), lf_f32(u), &B, NULL, T, R, OC));
    if (p > 0) {
        lf_linear nb = *lin;
        nb.b = NULL;
        OP(lf_linear_forward(be, lf_f32(bnb), lf_f32(xd), &nb, T));
    } else {
        for (int64_t t = 0; t < T; t++)
            for (int64_t o = 0; o < OC; o++) bnb[t * OC + o] = out[t * OC + o] - (lin->b ? lin->b[o] : 0.0f);
    }
    for (int64_t t = 0; t < T; t++)
        for (int64_t o = 0; o < OC; o++) {
            float mns = v->mag[o] / wn[o];
            out[t * OC + o] += (mns - 1.0f) * bnb[t * OC + o] + mns * v->scale * lo[t * OC + o];
        }
    return LF_OK;
fail:
    return st;
}

/* dx[T, C] += d(lin)/dx given dout[T, OC]; LoRA gradients into the view. x is the linear's input. */
static lf_status lin_bwd(lf_trainer_model *tm, act_set *S, int64_t l, int mod, const float *x, const float *dout,
                         float *dx, int64_t T, uint64_t step, uint64_t seq, lf_err *err) {
    lf_status st = LF_OK;
    lf_backend *be = tm->m->be;
    const lf_linear *lin = &tm->m->layers[l].lin[mod];
    const lf_lora_view *v = &tm->views[l * LF_MOD_COUNT + mod];
    int64_t C = lin->C, OC = lin->OC, R = v->R;
    if (lin->q.packed) OP(be->ops->matmul_q4_backward(be, dx, dout, &lin->q, T, C, OC));
    else OP(be->ops->matmul_backward(be, dx, NULL, dout, x, &lin->w, T, C, OC));
    if (!v->A) return LF_OK;
    float p = tm->opt.dropout;
    uint64_t key = drop_key(tm, step, seq, l, mod);
    const float *xd = x;
    if (p > 0) {
        dropout_apply(tm->xd, x, T * C, key, p);
        xd = tm->xd;
    }
    lf_tensor A = f32_matrix(v->A, R, C), B = f32_matrix(v->B, OC, R);
    const float *wn = v->mag ? tm->wn + tm->wn_off[l * LF_MOD_COUNT + mod] : NULL;
    /* dlo = dout * s (* m/n for DoRA); DoRA magnitude gradient */
    for (int64_t t = 0; t < T; t++)
        for (int64_t o = 0; o < OC; o++)
            tm->dlo[t * OC + o] = dout[t * OC + o] * v->scale * (wn ? v->mag[o] / wn[o] : 1.0f);
    if (wn && v->dmag)
        for (int64_t o = 0; o < OC; o++) {
            double acc = 0;
            for (int64_t t = 0; t < T; t++)
                acc += (double)dout[t * OC + o] * (S->bnb[mod][t * OC + o] + v->scale * S->lo[mod][t * OC + o]);
            v->dmag[o] += (float)(acc / wn[o]);
        }
    memset(tm->dur, 0, (size_t)(T * R) * sizeof(float));
    OP(be->ops->matmul_backward(be, tm->dur, v->dB, tm->dlo, S->u[mod], &B, T, R, OC));
    if (p == 0 && !wn) { /* drop(x) = x: the input gradient goes straight to dx */
        OP(be->ops->matmul_backward(be, dx, v->dA, tm->dur, xd, &A, T, C, R));
        return LF_OK;
    }
    memset(tm->dxd, 0, (size_t)(T * C) * sizeof(float));
    OP(be->ops->matmul_backward(be, tm->dxd, v->dA, tm->dur, xd, &A, T, C, R));
    if (wn) { /* the (m/n - 1) W drop(x) term */
        for (int64_t t = 0; t < T; t++)
            for (int64_t o = 0; o < OC; o++) tm->dlo[t * OC + o] = dout[t * OC + o] * (v->mag[o] / wn[o] - 1.0f);
        if (lin->q.packed) OP(be->ops->matmul_q4_backward(be, tm->dxd, tm->dlo, &lin->q, T, C, OC));
        else OP(be->ops->matmul_backward(be, tm->dxd, NULL, tm->dlo, xd, &lin->w, T, C, OC));
    }
    if (p > 0) dropout_backward(dx, tm->dxd, T * C, key, p);
    else OP(be->ops->axpy(be, dx, tm->dxd, 1.0f, T * C));
    return LF_OK;
fail:
    return st;
}

/* ---- layers: the forward is the model's one layer (decoder.c) with training's hooks ---- */
typedef struct {
    lf_trainer_model *tm;
    act_set *S;
    uint64_t step, seq;
} train_run;

static lf_status train_linear(void *ctx, int64_t l, int mod, lf_act out, lf_act x, int64_t T, lf_err *err) {
    const train_run *r = (const train_run *)ctx;
    return lin_fwd(r->tm, r->S, l, mod, (const float *)x.p, (float *)out.p, T, r->step, r->seq, err);
}

/* attention over the sequence itself (packed rows), keeping the log-sum-exp for the backward */
static lf_status train_attend(void *ctx, int64_t l, const lf_layer_acts *a, int64_t T, lf_err *err) {
    const train_run *r = (const train_run *)ctx;
    lf_trainer_model *tm = r->tm;
    lf_backend *be = tm->m->be;
    const lf_model_config *c = &tm->m->cfg;
    lf_status st = LF_OK;
    OP(be->ops->attention_train_forward(be, (float *)a->att.p, r->S->lse, (const float *)a->q.p, (const float *)a->k.p,
                                        (const float *)a->v.p, tm->posbuf, T, c->H, c->KH, c->D, c->window[l],
                                        1.0f / sqrtf((float)c->D)));
    return LF_OK;
fail:
    return st;
}

static lf_status layer_fwd(lf_trainer_model *tm, act_set *S, int64_t l, const float *x, float *xnext, int64_t T,
                           uint64_t step, uint64_t seq, lf_err *err) {
    train_run run = {tm, S, step, seq};
    const lf_decoder_hooks hooks = {train_linear, train_attend, &run};
    const lf_layer_acts acts = {.xn1 = lf_f32(S->xn1), .qp = lf_f32(S->qp), .kp = lf_f32(S->kp),
                                .q = lf_f32(S->q), .k = lf_f32(S->k), .v = lf_f32(S->v),
                                .att = lf_f32(S->att), .tmp = lf_f32(tm->tmpc), .xmid = lf_f32(S->xmid),
                                .xn2 = lf_f32(S->xn2), .g = lf_f32(S->g), .up = lf_f32(S->up), .h = lf_f32(S->h)};
    return lf_decoder_layer_forward(tm->m, l, lf_f32(x), lf_f32(xnext), &acts, tm->posbuf, T, &hooks, err);
}

/* On entry tm->dres = dL/dx_{l+1}; on exit dL/dx_l. */
static lf_status layer_bwd(lf_trainer_model *tm, act_set *S, int64_t l, const float *x, int64_t T, uint64_t step,
                           uint64_t seq, lf_err *err) {
    lf_status st = LF_OK;
    lf_model *m = tm->m;
    lf_backend *be = m->be;
    const lf_model_config *c = &m->cfg;
    const lf_layer *ly = &m->layers[l];
    int64_t C = c->C, H = c->H, KH = c->KH, D = c->D, FF = c->FF;
    float scale = 1.0f / sqrtf((float)D);
    /* MLP */
    memset(tm->dh, 0, (size_t)(T * FF) * sizeof(float));
    LF_TRY(lin_bwd(tm, S, l, LF_MOD_DOWN, S->h, tm->dres, tm->dh, T, step, seq, err));
    memset(tm->dg, 0, (size_t)(T * FF) * sizeof(float));
    memset(tm->dup, 0, (size_t)(T * FF) * sizeof(float));
    OP(be->ops->swiglu_backward(be, tm->dg, tm->dup, tm->dh, S->g, S->up, T * FF));
    memset(tm->dxn, 0, (size_t)(T * C) * sizeof(float));
    LF_TRY(lin_bwd(tm, S, l, LF_MOD_GATE, S->xn2, tm->dg, tm->dxn, T, step, seq, err));
    LF_TRY(lin_bwd(tm, S, l, LF_MOD_UP, S->xn2, tm->dup, tm->dxn, T, step, seq, err));
    OP(be->ops->rmsnorm_backward(be, tm->dres, tm->dxn, S->xmid, ly->ln2, T, C, c->rms_eps));
    /* attention */
    memset(tm->datt, 0, (size_t)(T * H * D) * sizeof(float));
    LF_TRY(lin_bwd(tm, S, l, LF_MOD_O, S->att, tm->dres, tm->datt, T, step, seq, err));
    memset(tm->dq, 0, (size_t)(T * H * D) * sizeof(float));
    memset(tm->dk, 0, (size_t)(T * KH * D) * sizeof(float));
    memset(tm->dv, 0, (size_t)(T * KH * D) * sizeof(float));
    OP(be->ops->attention_backward(be, tm->dq, tm->dk, tm->dv, tm->datt, S->q, S->k, S->v, S->att, S->lse,
                                   tm->posbuf, T, H, KH, D, c->window[l], scale));
    OP(be->ops->rope_backward(be, tm->dq, tm->posbuf, m->inv_freq, T, H, D));
    OP(be->ops->rope_backward(be, tm->dk, tm->posbuf, m->inv_freq, T, KH, D));
    const float *dqo = tm->dq, *dko = tm->dk; /* gradients at the q/k projections' outputs */
    if (ly->qn) {
        memset(tm->dqp, 0, (size_t)(T * H * D) * sizeof(float));
        OP(be->ops->rmsnorm_backward(be, tm->dqp, tm->dq, S->qp, ly->qn, T * H, D, c->rms_eps));
        dqo = tm->dqp;
    }
    if (ly->kn) {
        memset(tm->dkp, 0, (size_t)(T * KH * D) * sizeof(float));
        OP(be->ops->rmsnorm_backward(be, tm->dkp, tm->dk, S->kp, ly->kn, T * KH, D, c->rms_eps));
        dko = tm->dkp;
    }
    memset(tm->dxn, 0, (size_t)(T * C) * sizeof(float));
    LF_TRY(lin_bwd(tm, S, l, LF_MOD_Q, S->xn1, dqo, tm->dxn, T, step, seq, err));
    LF_TRY(lin_bwd(tm, S, l, LF_MOD_K, S->xn1, dko, tm->dxn, T, step, seq, err));
    LF_TRY(lin_bwd(tm, S, l, LF_MOD_V, S->xn1, tm->dv, tm->dxn, T, step, seq, err));
    OP(be->ops->rmsnorm_backward(be, tm->dres, tm->dxn, x, ly->ln1, T, C, c->rms_eps));
    return LF_OK;
fail:
    return st;
}

/* ---- create / free ---- */
lf_status lf_trainer_model_create(lf_model *m, const lf_lora_view *views, const lf_train_options *opt,
                                  lf_trainer_model **out, lf_err *err) {
    lf_status st = LF_OK;
    *out = NULL;
    const lf_model_config *c = &m->cfg;
    lf_backend *be = m->be;
    if (!be->host_memory)
        return lf_err_set(err, LF_EUNSUPPORTED, "training runs on the cpu backend for now (got %s): its dropout, DoRA "
                          "and gradient loops read activations on the host", be->name);
    if (!opt || opt->max_tokens <= 0)
        return lf_err_set(err, LF_EINVAL, "train: max_tokens must be > 0");
    if (!(opt->dropout >= 0.0f && opt->dropout < 1.0f))
        return lf_err_set(err, LF_EINVAL, "train: lora_dropout %g must be in [0, 1)", (double)opt->dropout);
    static const char *need[] = {"matmul_backward", "rmsnorm_backward", "rope_backward", "attention_train_forward",
                                 "attention_backward", "swiglu_backward", "axpy", "crossentropy_forward_backward"};
    const void *have[] = {(const void *)be->ops->matmul_backward, (const void *)be->ops->rmsnorm_backward,
                          (const void *)be->ops->rope_backward, (const void *)be->ops->attention_train_forward,
                          (const void *)be->ops->attention_backward, (const void *)be->ops->swiglu_backward,
                          (const void *)be->ops->axpy, (const void *)be->ops->crossentropy_forward_backward};
    for (size_t i = 0; i < sizeof need / sizeof need[0]; i++)
        if (!have[i]) return lf_err_set(err, LF_EUNSUPPORTED, "the %s backend has no %s op", be->name, need[i]);
    if (m->mem.n_q4 && (!be->ops->matmul_q4_forward || !be->ops->matmul_q4_backward))
        return lf_err_set(err, LF_EUNSUPPORTED, "the %s backend has no 4-bit matmul ops", be->name);

    lf_trainer_model *tm = calloc(1, sizeof *tm);
    LF_CHECK_ALLOC(tm, err);
    tm->m = m;
    tm->opt = *opt;
    tm->T = opt->max_tokens;
    tm->Rc = opt->ce_chunk > 0 ? opt->ce_chunk : 32;
    if (tm->Rc > tm->T) tm->Rc = tm->T;
    const int64_t L = c->L, T = tm->T, C = c->C, H = c->H, KH = c->KH, D = c->D, FF = c->FF, V = c->V;
    const int64_t NV = L * LF_MOD_COUNT;
    tm->views = calloc((size_t)NV, sizeof *tm->views);
    tm->wn_off = malloc((size_t)NV * sizeof *tm->wn_off);
    if (!tm->views || !tm->wn_off) {
        st = lf_err_set(err, LF_ENOMEM, "train: out of memory");
        goto fail;
    }
    memcpy(tm->views, views, (size_t)NV * sizeof *views);
    int64_t Rmax = 1, maxin = C, maxout = C, wn_total = 0, wmax = 0;
    int any_dora = 0;
    for (int64_t i = 0; i < NV; i++) {
        lf_lora_view *v = &tm->views[i];
        const lf_linear *lin = &m->layers[i / LF_MOD_COUNT].lin[i % LF_MOD_COUNT];
        maxin = lin->C > maxin ? lin->C : maxin;
        maxout = lin->OC > maxout ? lin->OC : maxout;
        tm->wn_off[i] = -1;
        if (!v->A) continue;
        if (v->R <= 0 || !v->B) {
            st = lf_err_set(err, LF_EINVAL, "train: LoRA view of layer %lld %s has rank %lld or no B",
                            (long long)(i / LF_MOD_COUNT), lf_module_name((lf_module)(i % LF_MOD_COUNT)), (long long)v->R);
            goto fail;
        }
        Rmax = v->R > Rmax ? v->R : Rmax;
        if (v->mag) {
            any_dora = 1;
            tm->wn_off[i] = wn_total;
            wn_total += rup16(lin->OC);
            wmax = lin->OC * lin->C > wmax ? lin->OC * lin->C : wmax;
        }
    }
    tm->NS = opt->checkpointing ? 1 : L;
    tm->sets = calloc((size_t)tm->NS, sizeof *tm->sets);
    LF_CHECK_ALLOC(tm->sets, err);

    /* sizes in floats: first pass counts, second pass carves */
    for (int pass = 0; pass < 2; pass++) {
        float *p = pass ? (float *)tm->block : NULL;
        int64_t total = 0;
#define CARVE(dst, n)                                   \
    do {                                                \
        int64_t n_ = rup16(n);                          \
        if (pass) (dst) = p + total;                    \
        total += n_;                                    \
    } while (0)
        CARVE(tm->xs, (L + 1) * T * C);
        for (int64_t s = 0; s < tm->NS; s++) {
            act_set *S = &tm->sets[s];
            CARVE(S->xn1, T * C); CARVE(S->q, T * H * D); CARVE(S->k, T * KH * D); CARVE(S->v, T * KH * D);
            CARVE(S->att, T * H * D); CARVE(S->lse, T * H); CARVE(S->xmid, T * C); CARVE(S->xn2, T * C);
            CARVE(S->g, T * FF); CARVE(S->up, T * FF); CARVE(S->h, T * FF);
            if (c->qk_norm) { CARVE(S->qp, T * H * D); CARVE(S->kp, T * KH * D); }
            for (int mod = 0; mod < LF_MOD_COUNT; mod++) {
                /* the set serves layer s (or every layer when checkpointing): size for the largest rank */
                int64_t R = 0, OC = 0, dora = 0;
                for (int64_t l = 0; l < L; l++) {
                    if (!opt->checkpointing && l != s) continue;
                    const lf_lora_view *v = &tm->views[l * LF_MOD_COUNT + mod];
                    if (!v->A) continue;
                    R = v->R > R ? v->R : R;
                    OC = m->layers[l].lin[mod].OC;
                    dora |= v->mag != NULL;
                }
                if (R) CARVE(S->u[mod], T * R);
                if (dora) { CARVE(S->bnb[mod], T * OC); CARVE(S->lo[mod], T * OC); }
            }
        }
        CARVE(tm->dres, T * C); CARVE(tm->dxn, T * C); CARVE(tm->tmpc, T * C);
        CARVE(tm->dq, T * H * D); CARVE(tm->dk, T * KH * D); CARVE(tm->dv, T * KH * D); CARVE(tm->datt, T * H * D);
        CARVE(tm->dg, T * FF); CARVE(tm->dup, T * FF); CARVE(tm->dh, T * FF);
        if (c->qk_norm) { CARVE(tm->dqp, T * H * D); CARVE(tm->dkp, T * KH * D); }
        CARVE(tm->xd, T * maxin); CARVE(tm->dxd, T * maxin); CARVE(tm->lo_s, T * maxout); CARVE(tm->dlo, T * maxout);
        CARVE(tm->dur, T * Rmax);
        CARVE(tm->logits, tm->Rc * V); CARVE(tm->losses, tm->Rc); CARVE(tm->xf, tm->Rc * C); CARVE(tm->dxf, tm->Rc * C);
        if (any_dora) { CARVE(tm->wn, wn_total); CARVE(tm->wscratch, wmax); }
        if (pass) tm->posbuf = (int32_t *)(p + total); /* int32 in float slots */
        total += rup16(T);
#undef CARVE
        if (!pass) {
            tm->block_bytes = total * (int64_t)sizeof(float);
            tm->block = be->ops->alloc(be, (size_t)tm->block_bytes);
            if (!tm->block) {
                st = lf_err_set(err, LF_ENOMEM, "train: cannot allocate %.1f MiB of activations for %lld tokens "
                                "(try gradient_checkpointing or a smaller cutoff_len)",
                                (double)tm->block_bytes / (1 << 20), (long long)T);
                goto fail;
            }
        }
    }
    *out = tm;
    if (any_dora) LF_TRY(lf_trainer_model_refresh_dora(tm, err));
    return LF_OK;
fail:
    *out = NULL;
    lf_trainer_model_free(tm);
    return st ? st : LF_ENOMEM;
}

void lf_trainer_model_free(lf_trainer_model *tm) {
    if (!tm) return;
    if (tm->block) tm->m->be->ops->free(tm->m->be, tm->block);
    free(tm->sets);
    free(tm->views);
    free(tm->wn_off);
    free(tm);
}

int64_t lf_trainer_model_workspace_bytes(const lf_trainer_model *tm) { return tm->block_bytes; }

lf_status lf_model_dora_norm(const lf_model *m, const lf_lora_view *v, int64_t layer, int mod, float *wn,
                             float *scratch, lf_err *err) {
    lf_status st = LF_OK;
    const lf_linear *lin = &m->layers[layer].lin[mod];
    int64_t OC = lin->OC, C = lin->C, R = v->R;
    float *w = scratch;
    if (lin->q.packed) LF_TRY(lf_quant_dequantize_f32(w, &lin->q, NULL, err));
    else LF_TRY(lf_to_f32_n(w, lin->w.data, lin->w.dtype, OC * C, err));
    /* n[o] = || W[o,:] + s * B[o,:] @ A ||, accumulated in double (PEFT: f32 torch.linalg.norm) */
    for (int64_t o = 0; o < OC; o++) {
        double acc = 0;
        for (int64_t cc = 0; cc < C; cc++) {
            float ba = 0.0f;
            for (int64_t r = 0; r < R; r++) ba += v->B[o * R + r] * v->A[r * C + cc];
            double e = (double)(w[o * C + cc] + v->scale * ba);
            acc += e * e;
        }
        wn[o] = (float)sqrt(acc);
        if (!(wn[o] > 0)) wn[o] = 1e-30f; /* an all-zero row: m/n would be inf; PEFT divides too */
    }
fail:
    return st;
}

lf_status lf_trainer_model_refresh_dora(lf_trainer_model *tm, lf_err *err) {
    lf_model *m = tm->m;
    for (int64_t i = 0; i < m->cfg.L * LF_MOD_COUNT; i++) {
        const lf_lora_view *v = &tm->views[i];
        if (!v->A || !v->mag) continue;
        lf_status st = lf_model_dora_norm(m, v, i / LF_MOD_COUNT, (int)(i % LF_MOD_COUNT), tm->wn + tm->wn_off[i],
                                          tm->wscratch, err);
        if (st) return st;
    }
    return LF_OK;
}

/* ---- step ---- */
lf_status lf_trainer_model_step(lf_trainer_model *tm, const int32_t *tokens, const int32_t *targets,
                                const int32_t *pos, int64_t T, float dscale, int backward, uint64_t step,
                                uint64_t seq, double *loss_sum, int64_t *n_tokens, lf_err *err) {
    lf_status st = LF_OK;
    lf_model *m = tm->m;
    lf_backend *be = m->be;
    const lf_model_config *c = &m->cfg;
    const int64_t L = c->L, C = c->C, V = c->V;
    *loss_sum = 0;
    *n_tokens = 0;
    if (T <= 0 || T > tm->T)
        return lf_err_set(err, LF_EINVAL, "train: sequence of %lld tokens (max %lld)", (long long)T, (long long)tm->T);
    for (int64_t t = 0; t < T; t++) {
        if (tokens[t] < 0 || tokens[t] >= V)
            return lf_err_set(err, LF_EINVAL, "train: token id %d at position %lld is outside the vocabulary [0, %lld)",
                              tokens[t], (long long)t, (long long)V);
        if (targets[t] != -100 && (targets[t] < 0 || targets[t] >= V))
            return lf_err_set(err, LF_EINVAL, "train: label %d at position %lld is outside the vocabulary", targets[t],
                              (long long)t);
        if (pos[t] < 0 || pos[t] > t || (t > 0 && pos[t] != 0 && pos[t] != pos[t - 1] + 1))
            return lf_err_set(err, LF_EINVAL, "train: position %d at token %lld: positions must count up from 0 "
                              "within each packed row", pos[t], (long long)t);
    }
    memcpy(tm->posbuf, pos, (size_t)T * sizeof(int32_t));

    /* forward */
    OP(be->ops->embedding_forward(be, lf_f32(tm->xs), tokens, &m->wte, T));
    for (int64_t l = 0; l < L; l++)
        LF_TRY(layer_fwd(tm, &tm->sets[tm->NS == 1 ? 0 : l], l, tm->xs + l * T * C, tm->xs + (l + 1) * T * C, T,
                         step, seq, err));

    /* head + loss in row chunks */
    const float *xL = tm->xs + L * T * C;
    if (backward) memset(tm->dres, 0, (size_t)(T * C) * sizeof(float));
    double ls = 0;
    int64_t nt = 0;
    for (int64_t r0 = 0; r0 < T; r0 += tm->Rc) {
        int64_t rows = T - r0 < tm->Rc ? T - r0 : tm->Rc, valid = 0;
        for (int64_t r = 0; r < rows; r++) valid += targets[r0 + r] != -100;
        if (!valid) continue; /* no loss and no gradient from these rows */
        OP(be->ops->rmsnorm_forward(be, lf_f32(tm->xf), lf_f32(xL + r0 * C), m->norm_f, rows, C, c->rms_eps));
        OP(be->ops->matmul_forward(be, lf_f32(tm->logits), lf_f32(tm->xf), &m->lm_head, NULL, rows, C, V));
        OP(be->ops->crossentropy_forward_backward(be, tm->losses, tm->logits, tm->logits, targets + r0, rows, V, dscale));
        for (int64_t r = 0; r < rows; r++) ls += tm->losses[r];
        nt += valid;
        if (!backward) continue;
        memset(tm->dxf, 0, (size_t)(rows * C) * sizeof(float));
        OP(be->ops->matmul_backward(be, tm->dxf, NULL, tm->logits, tm->xf, &m->lm_head, rows, C, V));
        OP(be->ops->rmsnorm_backward(be, tm->dres + r0 * C, tm->dxf, xL + r0 * C, m->norm_f, rows, C, c->rms_eps));
    }
    *loss_sum = ls;
    *n_tokens = nt;
    if (!backward || nt == 0) return LF_OK;

    /* backward through the layers */
    for (int64_t l = L - 1; l >= 0; l--) {
        act_set *S = &tm->sets[tm->NS == 1 ? 0 : l];
        const float *x = tm->xs + l * T * C;
        if (tm->opt.checkpointing) /* recompute this layer's activations (x_{l+1} is rewritten identically) */
            LF_TRY(layer_fwd(tm, S, l, x, tm->xs + (l + 1) * T * C, T, step, seq, err));
        LF_TRY(layer_bwd(tm, S, l, x, T, step, seq, err));
    }
    return LF_OK;
fail:
    return st;
}
