/* model_batch.c - the serving engine's forward: one step over a batch of sequence segments with per-segment
 * adapters, K/V in a paged pool (see model_batch.h for the contract).
 *
 * Rows of all segments are concatenated (segment s owns rows [row0[s], row0[s] + n[s]) of every [T, *]
 * buffer). Each layer is lf_decoder_layer_forward (decoder.c, the one layer of the model) with this file's two
 * hooks: a linear is the base over all T rows, then per run of consecutive segments sharing a non-NULL adapter
 * the LoRA/DoRA term over that run's rows (lora_rows: u = x A^T [rows,R], lo = u B^T [rows,OC]); attention
 * scatters each segment's new K/V rows into its pool slots (one convert per run inside a block), then runs
 * attention_paged_forward per segment over its block table.
 * Final: gather the logit rows (the last row of LAST segments, every row of ALL ones), final rmsnorm,
 * lm_head into f32 logits, download.
 *
 * Activations are of the model's compute dtype `adt` (F32, BF16, F16): every [T, *] buffer below holds adt
 * elements, the ops widen to f32 inside and round their outputs once; logits are f32. Everything the ops read
 * (token ids, positions, block tables, activations) lives in one backend allocation carved at create (llm.c
 * style, byte offsets rounded to 64), so the CUDA backend reads device memory; the host keeps only the
 * staging array for positions and the per-segment row offsets. Host code never writes backend memory except
 * through upload. lf_batch_forward allocates nothing. */
#include "model/model_batch.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/decoder.h"
#include "model/model_int.h"

struct lf_model_adapter {
    const lf_model *m;   /* the model the views were checked against (borrowed) */
    lf_lora_view *views; /* [L * LF_MOD_COUNT] owned copy of the table; A, B, mag borrowed on a host-memory
                          * backend, else pointing into dev */
    float *wn;           /* [L * LF_MOD_COUNT, maxoc] DoRA norms (owned host array, or in dev), NULL without DoRA */
    void *dev;           /* owned backend allocation of A, B, mag and wn when the backend has no host memory */
    int64_t maxoc;       /* widest OC of the model's linears (stride of wn) */
    int64_t rmax;        /* largest rank, 1 when empty */
    int dora;
};

struct lf_batch {
    lf_model *m;                   /* borrowed */
    lf_dtype adt;                  /* activation dtype (the model's compute dtype) */
    int64_t Tm, Sm, Rm, Bm, Lm;    /* max rows, segments, rank, blocks per sequence, logit rows */
    int64_t maxoc;                 /* widest linear OC */
    /* backend memory, carved from `block`; activations are adt */
    lf_act x, xb, xb2;    /* [Tm, C] residual stream, normed input, linear output */
    lf_act q, att;        /* [Tm, H*D] */
    lf_act k, v;          /* [Tm, KH*D] new K/V rows (after RoPE), before the scatter */
    lf_act hb, hb2;       /* [Tm, FF] */
    lf_act lu;            /* [Tm, Rm] LoRA x A^T */
    lf_act llo;           /* [Tm, maxoc] LoRA (x A^T) B^T */
    lf_act xl;            /* [Lm, C] the rows that get logits */
    float *logits;        /* [Lm, V] f32 */
    int32_t *tok, *pos;   /* [Tm] token ids, positions */
    int32_t *tables;      /* [Sm, Bm] block tables (segment s at s * Bm) */
    void *block;
    /* host memory, carved from `host` */
    int32_t *hpos;        /* [Tm] positions staging */
    int64_t *row0;        /* [Sm] first row of each segment */
    int64_t *nblk;        /* [Sm] blocks covering [0, pos0 + n) */
    void *host;
};

/* ---------------------------------------------------------------------------------------------------- */
/* adapters                                                                                              */

/* A backend without host memory: A, B, mag of every view and the DoRA norms into one allocation (pieces
 * 256-byte aligned), the views and wn repointed there. The caller's host arrays are not needed afterwards. */
static lf_status adapter_upload(lf_model_adapter *a, lf_err *err) {
    lf_backend *be = a->m->be;
    const lf_model *m = a->m;
    const int64_t NV = m->cfg.L * LF_MOD_COUNT;
#define AL(n) (((n) + 255) / 256 * 256)
    size_t total = a->wn ? AL((size_t)(NV * a->maxoc) * 4) : 0;
    for (int64_t i = 0; i < NV; i++) {
        const lf_lora_view *v = &a->views[i];
        if (!v->A) continue;
        const lf_linear *lin = &m->layers[i / LF_MOD_COUNT].lin[i % LF_MOD_COUNT];
        total += AL((size_t)(v->R * lin->C) * 4) + AL((size_t)(lin->OC * v->R) * 4) + (v->mag ? AL((size_t)lin->OC * 4) : 0);
    }
    if (total == 0) return LF_OK;
    a->dev = be->ops->alloc(be, total);
    if (!a->dev)
        return lf_err_set(err, LF_ENOMEM, "adapter: cannot allocate %.1f MiB on %s: %s", (double)total / (1 << 20),
                          be->name, be->err.msg);
    char *base = (char *)a->dev;
    size_t off = 0;
    lf_status st = LF_OK;
#define PUT(dst, src, nbytes)                                                                                     \
    do {                                                                                                          \
        if (be->ops->upload(be, base + off, (src), (nbytes)) != LF_OK) {                                          \
            st = lf_err_set(err, be->err.code ? be->err.code : LF_EIO, "adapter: upload to %s: %s", be->name,     \
                            be->err.msg);                                                                         \
            goto fail;                                                                                            \
        }                                                                                                         \
        (dst) = (float *)(base + off);                                                                            \
        off += AL(nbytes);                                                                                        \
    } while (0)
    for (int64_t i = 0; i < NV; i++) {
        lf_lora_view *v = &a->views[i];
        if (!v->A) continue;
        const lf_linear *lin = &m->layers[i / LF_MOD_COUNT].lin[i % LF_MOD_COUNT];
        PUT(v->A, v->A, (size_t)(v->R * lin->C) * 4);
        PUT(v->B, v->B, (size_t)(lin->OC * v->R) * 4);
        if (v->mag) PUT(v->mag, v->mag, (size_t)lin->OC * 4);
        v->dA = v->dB = v->dmag = NULL; /* inference only */
    }
    if (a->wn) {
        float *host = a->wn, *d = NULL;
        PUT(d, host, (size_t)(NV * a->maxoc) * 4);
        free(host);
        a->wn = d;
    }
#undef PUT
#undef AL
    return LF_OK;
fail:
    return st; /* the caller frees a (and a->dev) */
}

lf_status lf_model_adapter_create(const lf_model *m, const lf_lora_view *views, lf_model_adapter **out, lf_err *err) {
    lf_status st = LF_OK;
    float *scratch = NULL;
    lf_model_adapter *a = NULL;
    if (!out) return lf_err_set(err, LF_EINVAL, "adapter: out is NULL");
    *out = NULL;
    if (!m || !views) return lf_err_set(err, LF_EINVAL, "adapter: model or view table is NULL");
    const int64_t NV = m->cfg.L * LF_MOD_COUNT;
    int64_t rmax = 1, maxoc = 1, wmax = 0;
    int dora = 0;
    for (int64_t i = 0; i < NV; i++) {
        const lf_linear *lin = &m->layers[i / LF_MOD_COUNT].lin[i % LF_MOD_COUNT];
        const lf_lora_view *v = &views[i];
        if (lin->OC > maxoc) maxoc = lin->OC;
        if (!v->A) continue;
        const long long l = (long long)(i / LF_MOD_COUNT);
        const char *mod = lf_module_name((lf_module)(i % LF_MOD_COUNT));
        if (v->R < 1)
            return lf_err_set(err, LF_EINVAL, "adapter: layer %lld %s: rank %lld < 1", l, mod, (long long)v->R);
        if (!v->B)
            return lf_err_set(err, LF_EINVAL, "adapter: layer %lld %s: lora_A [%lld, %lld] without lora_B [%lld, %lld]",
                              l, mod, (long long)v->R, (long long)lin->C, (long long)lin->OC, (long long)v->R);
        if (!isfinite(v->scale))
            return lf_err_set(err, LF_EINVAL, "adapter: layer %lld %s: scaling %g is not finite", l, mod, (double)v->scale);
        if (v->R > rmax) rmax = v->R;
        if (v->mag) {
            dora = 1;
            if (lin->OC * lin->C > wmax) wmax = lin->OC * lin->C;
        }
    }
    a = calloc(1, sizeof *a);
    LF_CHECK_ALLOC(a, err);
    a->m = m;
    a->maxoc = maxoc;
    a->rmax = rmax;
    a->dora = dora;
    a->views = malloc((size_t)NV * sizeof *a->views);
    LF_CHECK_ALLOC(a->views, err);
    memcpy(a->views, views, (size_t)NV * sizeof *views);
    if (dora) {
        a->wn = malloc((size_t)(NV * maxoc) * sizeof(float));
        LF_CHECK_ALLOC(a->wn, err);
        scratch = malloc((size_t)wmax * sizeof(float));
        LF_CHECK_ALLOC(scratch, err);
        for (int64_t i = 0; i < NV; i++)
            if (views[i].A && views[i].mag)
                LF_TRY(lf_model_dora_norm(m, &views[i], i / LF_MOD_COUNT, (int)(i % LF_MOD_COUNT), a->wn + i * maxoc,
                                          scratch, err));
    }
    free(scratch);
    scratch = NULL;
    if (!m->be->host_memory) LF_TRY(adapter_upload(a, err));
    *out = a;
    return LF_OK;
fail:
    free(scratch);
    lf_model_adapter_free(a);
    return st ? st : LF_ENOMEM;
}

void lf_model_adapter_free(lf_model_adapter *a) {
    if (!a) return;
    if (a->dev) {
        a->m->be->ops->free(a->m->be, a->dev);
        a->wn = NULL; /* it lived in dev */
    }
    free(a->views);
    free(a->wn);
    free(a);
}

int64_t lf_model_adapter_max_rank(const lf_model_adapter *a) { return a ? a->rmax : 1; }
int lf_model_adapter_is_dora(const lf_model_adapter *a) { return a ? a->dora : 0; }

/* ---------------------------------------------------------------------------------------------------- */
/* workspace                                                                                             */

lf_status lf_batch_create(lf_model *m, int64_t max_tokens, int64_t max_segs, int64_t max_rank, int64_t max_blocks,
                          lf_batch **out, lf_err *err) {
    int64_t segs = max_segs < max_tokens ? max_segs : max_tokens;
    return lf_batch_create_ex(m, max_tokens, max_segs, max_rank, max_blocks, segs, out, err);
}

lf_status lf_batch_create_ex(lf_model *m, int64_t max_tokens, int64_t max_segs, int64_t max_rank, int64_t max_blocks,
                             int64_t max_logit_rows, lf_batch **out, lf_err *err) {
    lf_status st = LF_OK;
    lf_batch *b = NULL;
    if (!out) return lf_err_set(err, LF_EINVAL, "batch: out is NULL");
    *out = NULL;
    if (!m) return lf_err_set(err, LF_EINVAL, "batch: model is NULL");
    if (max_tokens < 1 || max_segs < 1 || max_rank < 1 || max_blocks < 1 || max_logit_rows < 1)
        return lf_err_set(err, LF_EINVAL, "batch: max_tokens (%lld), max_segs (%lld), max_rank (%lld), max_blocks "
                          "(%lld) and max_logit_rows (%lld) must be >= 1", (long long)max_tokens, (long long)max_segs,
                          (long long)max_rank, (long long)max_blocks, (long long)max_logit_rows);
    if (max_tokens > INT32_MAX || max_blocks > INT32_MAX || max_rank > INT32_MAX)
        return lf_err_set(err, LF_EINVAL, "batch: max_tokens (%lld), max_blocks (%lld) and max_rank (%lld) must fit "
                          "in int32", (long long)max_tokens, (long long)max_blocks, (long long)max_rank);
    lf_backend *be = m->be;
    const lf_dtype adt = m->opt.compute_dtype;
    const lf_op need[] = {LF_OP_EMBEDDING, LF_OP_RMSNORM, LF_OP_MATMUL, LF_OP_ROPE, LF_OP_ATTENTION_PAGED,
                          LF_OP_SWIGLU, LF_OP_RESIDUAL, LF_OP_ADD_SCALED, LF_OP_DORA_COMBINE, LF_OP_CONVERT};
    for (size_t i = 0; i < sizeof need / sizeof need[0]; i++)
        if (!lf_backend_supports(be, need[i], adt))
            return lf_err_set(err, LF_EUNSUPPORTED, "batch: the %s backend has no %s op for %s activations", be->name,
                              lf_op_name(need[i]), lf_dtype_name(adt));
    const lf_dtype head_dt[2] = {LF_DTYPE_F32, adt}; /* lm_head: f32 logits from adt rows */
    if (!be->ops->supports_op(be, LF_OP_MATMUL, head_dt, 2))
        return lf_err_set(err, LF_EUNSUPPORTED, "batch: the %s backend cannot write f32 logits from %s activations",
                          be->name, lf_dtype_name(adt));
    if (m->mem.n_q4 && !lf_backend_supports(be, LF_OP_MATMUL_Q4, adt))
        return lf_err_set(err, LF_EUNSUPPORTED, "batch: the %s backend has no 4-bit matmul for %s activations",
                          be->name, lf_dtype_name(adt));
    if (max_segs > max_tokens) max_segs = max_tokens; /* every segment has >= 1 row */
    if (max_logit_rows > max_tokens) max_logit_rows = max_tokens;
    const lf_model_config *c = &m->cfg;
    int64_t maxoc = 1;
    for (int64_t l = 0; l < c->L; l++)
        for (int mod = 0; mod < LF_MOD_COUNT; mod++)
            if (m->layers[l].lin[mod].OC > maxoc) maxoc = m->layers[l].lin[mod].OC;
    const int64_t Tm = max_tokens, Sm = max_segs, Lm = max_logit_rows, HD = c->H * c->D, KD = c->KH * c->D;
    const double ae = (double)(lf_dtype_bits(adt) / 8);
    /* the backend block, carved in this order; sizes in bytes, each piece rounded up to 64. Summed in double
     * first so absurd arguments fail instead of overflowing. */
    enum { P_X, P_XB, P_XB2, P_Q, P_ATT, P_K, P_V, P_HB, P_HB2, P_LU, P_LLO, P_XL, P_LOGITS, P_TOK, P_POS, P_TABLES, NP };
    const double want[NP] = {ae * Tm * c->C, ae * Tm * c->C, ae * Tm * c->C, ae * Tm * HD, ae * Tm * HD,
                             ae * Tm * KD,   ae * Tm * KD,   ae * Tm * c->FF, ae * Tm * c->FF, ae * Tm * max_rank,
                             ae * Tm * maxoc, ae * Lm * c->C, 4.0 * Lm * c->V, 4.0 * Tm, 4.0 * Tm,
                             4.0 * Sm * max_blocks};
    double total_d = 0;
    for (int i = 0; i < NP; i++) total_d += want[i] + 64;
    if (total_d > 1e15)
        return lf_err_set(err, LF_EINVAL, "batch: workspace of %.3g bytes (max_tokens %lld, max_segs %lld, max_rank %lld, "
                          "max_blocks %lld) is too large", total_d, (long long)max_tokens, (long long)max_segs,
                          (long long)max_rank, (long long)max_blocks);
    int64_t off[NP + 1];
    off[0] = 0;
    for (int i = 0; i < NP; i++) off[i + 1] = off[i] + ((int64_t)want[i] + 63) / 64 * 64;
    b = calloc(1, sizeof *b);
    LF_CHECK_ALLOC(b, err);
    b->m = m;
    b->adt = adt;
    b->Tm = Tm;
    b->Sm = Sm;
    b->Rm = max_rank;
    b->Bm = max_blocks;
    b->Lm = Lm;
    b->maxoc = maxoc;
    b->block = be->ops->alloc(be, (size_t)off[NP]);
    if (!b->block) {
        st = lf_err_set(err, LF_ENOMEM, "batch: cannot allocate %.1f MiB of activations (max_tokens %lld, max_segs "
                        "%lld, max_rank %lld, max_blocks %lld): %s", (double)off[NP] / (1 << 20),
                        (long long)max_tokens, (long long)max_segs, (long long)max_rank, (long long)max_blocks,
                        be->err.msg);
        goto fail;
    }
    char *base = (char *)b->block;
    lf_act *acts[] = {&b->x, &b->xb, &b->xb2, &b->q, &b->att, &b->k, &b->v, &b->hb, &b->hb2, &b->lu, &b->llo, &b->xl};
    for (int i = 0; i <= P_XL; i++) *acts[i] = lf_act_of(base + off[i], adt);
    b->logits = (float *)(base + off[P_LOGITS]);
    b->tok = (int32_t *)(base + off[P_TOK]);
    b->pos = (int32_t *)(base + off[P_POS]);
    b->tables = (int32_t *)(base + off[P_TABLES]);
    /* host: hpos [Tm] int32, row0 [Sm] int64, nblk [Sm] int64 */
    b->host = malloc((size_t)Tm * sizeof(int32_t) + 2 * (size_t)Sm * sizeof(int64_t) + 16);
    LF_CHECK_ALLOC(b->host, err);
    b->row0 = (int64_t *)b->host;
    b->nblk = b->row0 + Sm;
    b->hpos = (int32_t *)(b->nblk + Sm);
    *out = b;
    return LF_OK;
fail:
    lf_batch_free(b);
    return st ? st : LF_ENOMEM;
}

void lf_batch_free(lf_batch *b) {
    if (!b) return;
    if (b->block) b->m->be->ops->free(b->m->be, b->block);
    free(b->host);
    free(b);
}

/* ---------------------------------------------------------------------------------------------------- */
/* forward                                                                                               */

/* Turn an op failure (message in be->err) into err and jump to fail. */
#define OP(call)                                                                                               \
    do {                                                                                                       \
        if ((call) != LF_OK) {                                                                                 \
            st = lf_err_set(err, be->err.code ? be->err.code : LF_EINVAL, "batch forward: %s", be->err.msg); \
            goto fail;                                                                                         \
        }                                                                                                      \
    } while (0)

/* Lowest position any layer's attention reads for a query at position p (sliding windows per layer). */
static int64_t lowest_attended(const lf_model_config *c, int64_t p) {
    int64_t lo = p;
    for (int64_t l = 0; l < c->L; l++) {
        int64_t w = c->window[l], a = w > 0 && p - w + 1 > 0 ? p - w + 1 : 0;
        if (a < lo) lo = a;
    }
    return lo;
}

/* Everything checked before anything is written (pool included). Fills row0, nblk; *T_out = total rows,
 * *n_want = logit rows asked for. */
static lf_status validate(lf_batch *b, const lf_paged_kv *kv, const lf_batch_seg *segs, int64_t n_segs,
                          const float *logits, int64_t *T_out, int64_t *n_want, lf_err *err) {
    const lf_model *m = b->m;
    const lf_model_config *c = &m->cfg;
    *T_out = *n_want = 0;
    if (n_segs < 0 || n_segs > b->Sm)
        return lf_err_set(err, LF_EINVAL, "batch forward: %lld segments, the workspace takes 0..%lld", (long long)n_segs,
                          (long long)b->Sm);
    if (n_segs == 0) return LF_OK;
    if (!segs || !kv || !kv->k || !kv->v)
        return lf_err_set(err, LF_EINVAL, "batch forward: segments or paged KV description is NULL");
    if (kv->BS < 1) return lf_err_set(err, LF_EINVAL, "batch forward: paged KV block size %lld < 1", (long long)kv->BS);
    if (!lf_act_dtype_ok(kv->dt))
        return lf_err_set(err, LF_EINVAL, "batch forward: paged KV dtype %s is not F32, BF16 or F16",
                          lf_dtype_name(kv->dt));
    for (int64_t l = 0; l < c->L; l++)
        if (!kv->k[l] || !kv->v[l])
            return lf_err_set(err, LF_EINVAL, "batch forward: K/V pool of layer %lld is NULL", (long long)l);
    const int64_t BS = kv->BS;
    int64_t T = 0, nw = 0;
    for (int64_t s = 0; s < n_segs; s++) {
        const lf_batch_seg *g = &segs[s];
        if (g->n < 1 || !g->tokens)
            return lf_err_set(err, LF_EINVAL, "batch forward: segment %lld has %lld tokens (needs >= 1, non-NULL)",
                              (long long)s, (long long)g->n);
        if (g->pos0 < 0 || g->pos0 > INT32_MAX - g->n)
            return lf_err_set(err, LF_EINVAL, "batch forward: segment %lld: pos0 %lld + n %lld outside [0, 2^31)",
                              (long long)s, (long long)g->pos0, (long long)g->n);
        if (g->n > b->Tm - T)
            return lf_err_set(err, LF_EINVAL, "batch forward: segment %lld brings the batch to %lld rows, the workspace "
                              "takes %lld", (long long)s, (long long)(T + g->n), (long long)b->Tm);
        for (int64_t i = 0; i < g->n; i++)
            if (g->tokens[i] < 0 || g->tokens[i] >= c->V)
                return lf_err_set(err, LF_EINVAL, "batch forward: segment %lld token %lld: id %d is outside the vocabulary "
                                  "[0, %lld)", (long long)s, (long long)i, (int)g->tokens[i], (long long)c->V);
        const int64_t end = g->pos0 + g->n, need = (end + BS - 1) / BS;
        if (!g->block_table || g->n_blocks < need)
            return lf_err_set(err, LF_EINVAL, "batch forward: segment %lld: block table of %lld blocks (BS %lld) is too "
                              "short for positions [0, %lld) (pos0 %lld + n %lld): needs %lld", (long long)s,
                              (long long)(g->block_table ? g->n_blocks : 0), (long long)BS, (long long)end,
                              (long long)g->pos0, (long long)g->n, (long long)need);
        if (need > b->Bm)
            return lf_err_set(err, LF_EINVAL, "batch forward: segment %lld: positions [0, %lld) need %lld blocks, the "
                              "workspace takes %lld", (long long)s, (long long)end, (long long)need, (long long)b->Bm);
        for (int64_t j = lowest_attended(c, g->pos0) / BS; j < need; j++) {
            const int32_t id = g->block_table[j];
            if (id < 0 || (kv->NB > 0 && id >= kv->NB))
                return lf_err_set(err, LF_EINVAL, "batch forward: segment %lld: block_table[%lld] = %d (outside the "
                                  "pool's %lld blocks) is written or attended at pos0 %lld", (long long)s, (long long)j,
                                  (int)id, (long long)kv->NB, (long long)g->pos0);
        }
        const lf_model_adapter *a = g->adapter;
        if (a) {
            if (a->m != m)
                return lf_err_set(err, LF_EINVAL, "batch forward: segment %lld: adapter was made for another model",
                                  (long long)s);
            if (a->rmax > b->Rm)
                return lf_err_set(err, LF_EINVAL, "batch forward: segment %lld: adapter rank %lld > the workspace's "
                                  "max_rank %lld", (long long)s, (long long)a->rmax, (long long)b->Rm);
        }
        if (g->want_logits != LF_LOGITS_NONE) {
            if (g->want_logits != LF_LOGITS_LAST && g->want_logits != LF_LOGITS_ALL)
                return lf_err_set(err, LF_EINVAL, "batch forward: segment %lld: want_logits %d is not NONE, LAST or ALL",
                                  (long long)s, g->want_logits);
            if (!logits)
                return lf_err_set(err, LF_EINVAL, "batch forward: segment %lld wants logits but the logits array is NULL",
                                  (long long)s);
            nw += g->want_logits == LF_LOGITS_ALL ? g->n : 1;
            if (nw > b->Lm)
                return lf_err_set(err, LF_EINVAL, "batch forward: segment %lld brings the logit rows to %lld, the "
                                  "workspace takes %lld", (long long)s, (long long)nw, (long long)b->Lm);
        }
        b->row0[s] = T;
        b->nblk[s] = need;
        T += g->n;
    }
    *T_out = T;
    *n_want = nw;
    return LF_OK;
}

/* out[rows, OC] += the adapter's term of (l, mod) for x[rows, C]: LoRA s * (x A^T) B^T, or DoRA (PEFT 0.12):
 * out += (m/n - 1) * (out - bias) + (m/n) * s * (x A^T) B^T (the dora_combine op). */
static lf_status lora_rows(lf_batch *b, const lf_model_adapter *a, int64_t l, int mod, lf_act out, lf_act x,
                           int64_t rows) {
    lf_backend *be = b->m->be;
    const lf_linear *lin = &b->m->fl[l].lin[mod]; /* the forward's view: its bias is in the backend's memory */
    const lf_lora_view *v = &a->views[l * LF_MOD_COUNT + mod];
    const int64_t C = lin->C, OC = lin->OC, R = v->R;
    int64_t sa[2] = {R, C}, sb[2] = {OC, R};
    lf_tensor A = lf_tensor_view(v->A, LF_DTYPE_F32, 2, sa), B = lf_tensor_view(v->B, LF_DTYPE_F32, 2, sb);
    lf_status st = be->ops->matmul_forward(be, b->lu, x, &A, NULL, rows, C, R);
    if (st) return st;
    if ((st = be->ops->matmul_forward(be, b->llo, b->lu, &B, NULL, rows, R, OC))) return st;
    if (!v->mag) return be->ops->add_scaled_forward(be, out, b->llo, v->scale, rows * OC);
    const float *wn = a->wn + (l * LF_MOD_COUNT + mod) * a->maxoc;
    return be->ops->dora_combine_forward(be, out, b->llo, v->mag, wn, lin->b, v->scale, rows, OC);
}

/* out[T, OC] = base(x[T, C]) once over all rows, then each run of consecutive segments sharing a non-NULL
 * adapter that adapts (l, mod) adds its term over the run's rows. */
static lf_status lin_batch(lf_batch *b, const lf_batch_seg *segs, int64_t n_segs, int64_t T, int64_t l, int mod,
                           lf_act out, lf_act x, lf_err *err) {
    lf_status st = LF_OK;
    lf_backend *be = b->m->be;
    const lf_linear *lin = &b->m->fl[l].lin[mod];
    OP(lf_linear_forward(be, out, x, lin, T));
    for (int64_t s = 0; s < n_segs;) {
        const lf_model_adapter *a = segs[s].adapter;
        int64_t e = s + 1;
        while (e < n_segs && segs[e].adapter == a) e++;
        if (a && a->views[l * LF_MOD_COUNT + mod].A) {
            const int64_t r0 = b->row0[s], rows = b->row0[e - 1] + segs[e - 1].n - r0;
            OP(lora_rows(b, a, l, mod, lf_act_at(out, r0 * lin->OC), lf_act_at(x, r0 * lin->C), rows));
        }
        s = e;
    }
    return LF_OK;
fail:
    return st;
}

/* Layer l: segment g's new K/V rows (b->k, b->v from row r0) into the pool slots of positions pos0..pos0+n-1,
 * one convert (a copy when the dtypes agree) per run of positions inside a block. */
static lf_status scatter_kv(lf_batch *b, const lf_paged_kv *kv, const lf_batch_seg *g, int64_t r0, int64_t l,
                            lf_err *err) {
    lf_status st = LF_OK;
    lf_backend *be = b->m->be;
    const int64_t KD = b->m->cfg.KH * b->m->cfg.D, BS = kv->BS;
    const lf_act kp = lf_act_of(kv->k[l], kv->dt), vp = lf_act_of(kv->v[l], kv->dt);
    for (int64_t i = 0; i < g->n;) {
        const int64_t p = g->pos0 + i, slot = p % BS;
        const int64_t run = g->n - i < BS - slot ? g->n - i : BS - slot;
        const int64_t off = ((int64_t)g->block_table[p / BS] * BS + slot) * KD;
        OP(be->ops->convert(be, lf_act_at(kp, off), lf_act_at(b->k, (r0 + i) * KD), run * KD));
        OP(be->ops->convert(be, lf_act_at(vp, off), lf_act_at(b->v, (r0 + i) * KD), run * KD));
        i += run;
    }
    return LF_OK;
fail:
    return st;
}

/* The decoder hooks of one step (decoder.h): linears grouped by adapter, attention over the paged pool. */
typedef struct {
    lf_batch *b;
    const lf_paged_kv *kv;
    const lf_batch_seg *segs;
    int64_t n_segs, T;
} batch_run;

static lf_status batch_linear(void *ctx, int64_t l, int mod, lf_act out, lf_act x, int64_t T, lf_err *err) {
    const batch_run *r = (const batch_run *)ctx;
    return lin_batch(r->b, r->segs, r->n_segs, T, l, mod, out, x, err);
}

/* scatter each segment's new K/V rows into its pool slots, then each segment attends over its block table */
static lf_status batch_attend(void *ctx, int64_t l, const lf_layer_acts *a, int64_t T, lf_err *err) {
    (void)T;
    const batch_run *r = (const batch_run *)ctx;
    lf_batch *b = r->b;
    lf_backend *be = b->m->be;
    const lf_model_config *c = &b->m->cfg;
    const int64_t H = c->H, KH = c->KH, D = c->D;
    const lf_act kp = lf_act_of(r->kv->k[l], r->kv->dt), vp = lf_act_of(r->kv->v[l], r->kv->dt);
    lf_status st = LF_OK;
    for (int64_t s = 0; s < r->n_segs; s++) LF_TRY(scatter_kv(b, r->kv, &r->segs[s], b->row0[s], l, err));
    for (int64_t s = 0; s < r->n_segs; s++) {
        const int64_t r0 = b->row0[s];
        OP(be->ops->attention_paged_forward(be, lf_act_at(a->att, r0 * H * D), lf_act_at(a->q, r0 * H * D), kp, vp,
                                            b->tables + s * b->Bm, b->nblk[s], r->kv->BS, b->pos + r0, r->segs[s].n,
                                            H, KH, D, c->window[l], 1.0f / sqrtf((float)D)));
    }
    (void)KH;
    return LF_OK;
fail:
    return st;
}

lf_status lf_batch_forward(lf_batch *b, const lf_paged_kv *kv, const lf_batch_seg *segs, int64_t n_segs,
                           float *logits, lf_err *err) {
    lf_status st = LF_OK;
    if (!b) return lf_err_set(err, LF_EINVAL, "batch forward: batch is NULL");
    int64_t T = 0, nw = 0;
    if ((st = validate(b, kv, segs, n_segs, logits, &T, &nw, err))) return st;
    if (n_segs == 0) return LF_OK;
    lf_model *m = b->m;
    lf_backend *be = m->be;
    const lf_backend_ops *ops = be->ops;
    const lf_model_config *c = &m->cfg;
    const int64_t C = c->C, V = c->V;

    /* token ids, positions and block tables into the workspace's backend memory */
    for (int64_t s = 0; s < n_segs; s++) {
        const lf_batch_seg *g = &segs[s];
        OP(ops->upload(be, b->tok + b->row0[s], g->tokens, (size_t)g->n * sizeof(int32_t)));
        OP(ops->upload(be, b->tables + s * b->Bm, g->block_table, (size_t)b->nblk[s] * sizeof(int32_t)));
        for (int64_t i = 0; i < g->n; i++) b->hpos[b->row0[s] + i] = (int32_t)(g->pos0 + i);
    }
    OP(ops->upload(be, b->pos, b->hpos, (size_t)T * sizeof(int32_t)));

    OP(ops->embedding_forward(be, b->x, b->tok, &m->fwte, T));
    batch_run run = {.b = b, .kv = kv, .segs = segs, .n_segs = n_segs, .T = T};
    const lf_decoder_hooks hooks = {batch_linear, batch_attend, &run};
    /* one scratch set for every layer: residuals in place in x, xn1 = xn2 = xb, h over g, q/k normed in place */
    const lf_layer_acts acts = {.xn1 = b->xb, .qp = b->q, .kp = b->k, .q = b->q, .k = b->k, .v = b->v,
                                .att = b->att, .tmp = b->xb2, .xmid = b->x, .xn2 = b->xb, .g = b->hb,
                                .up = b->hb2, .h = b->hb};
    for (int64_t l = 0; l < c->L; l++) LF_TRY(lf_decoder_layer_forward(m, l, b->x, b->x, &acts, b->pos, T, &hooks, err));
    if (nw == 0) return LF_OK;
    /* the logit rows of every segment, gathered into xl [nw, C] */
    for (int64_t s = 0, i = 0; s < n_segs; s++) {
        const int w = segs[s].want_logits;
        if (w == LF_LOGITS_NONE) continue;
        const int64_t rows = w == LF_LOGITS_ALL ? segs[s].n : 1, r = b->row0[s] + segs[s].n - rows;
        OP(ops->copy(be, lf_act_at(b->xl, i * C).p, lf_act_at(b->x, r * C).p, lf_act_bytes(b->adt, rows * C)));
        i += rows;
    }
    OP(ops->rmsnorm_forward(be, b->xl, b->xl, m->fnorm_f, nw, C, c->rms_eps));
    OP(ops->matmul_forward(be, lf_f32(b->logits), b->xl, &m->flm_head, NULL, nw, C, V));
    OP(ops->download(be, logits, b->logits, (size_t)(nw * V) * sizeof(float)));
    return LF_OK;
fail:
    return st;
}
