/* model_batch.c - the serving engine's forward: one step over a batch of sequence segments with per-segment
 * adapters, K/V in a paged pool (see model_batch.h for the contract).
 *
 * Rows of all segments are concatenated (segment s owns rows [row0[s], row0[s] + n[s]) of every [T, *]
 * buffer). Per layer:
 *   xb = rmsnorm(x) over all T rows
 *   q/k/v = base linear over all T rows, then per run of consecutive segments sharing a non-NULL adapter the
 *           LoRA/DoRA term over that run's rows (lora_rows: u = x A^T [rows,R], lo = u B^T [rows,OC])
 *   RoPE on q, k with per-row positions (pos0 + i of its segment)
 *   scatter each segment's new K/V rows into its pool slots (one be->ops->copy per run inside a block)
 *   att = attention_paged_forward per segment over its block table
 *   x += o_proj(att); xb = rmsnorm(x); x += down(swiglu(gate(xb), up(xb)))   (same grouping)
 * Final: gather the last row of each want_logits segment, final rmsnorm, lm_head, download.
 *
 * Everything the ops read (token ids, positions, block tables, activations) lives in one backend allocation
 * carved at create (llm.c style), so the CUDA backend reads device memory; the host keeps only the staging
 * array for positions and the per-segment row offsets. lf_batch_forward allocates nothing.
 * DoRA's combine runs on the host like model.c's lin_apply (the model loads on the CPU backend only for
 * now); a DoRA adapter on another backend is LF_EUNSUPPORTED. */
#include "model/model_batch.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_int.h"

struct lf_model_adapter {
    const lf_model *m;   /* the model the views were checked against (borrowed) */
    lf_lora_view *views; /* [L * LF_MOD_COUNT] owned copy of the table; A, B, mag borrowed */
    float *wn;           /* [L * LF_MOD_COUNT, maxoc] DoRA norms (owned), NULL without DoRA */
    int64_t maxoc;       /* widest OC of the model's linears (stride of wn) */
    int64_t rmax;        /* largest rank, 1 when empty */
    int dora;
};

struct lf_batch {
    lf_model *m;                   /* borrowed */
    int64_t Tm, Sm, Rm, Bm, maxoc; /* max rows, segments, rank, blocks per sequence; widest linear OC */
    /* backend memory, carved from `block` */
    float *x, *xb, *xb2;  /* [Tm, C] residual stream, normed input, linear output */
    float *q, *att;       /* [Tm, H*D] */
    float *k, *v;         /* [Tm, KH*D] new K/V rows (after RoPE), before the scatter */
    float *hb, *hb2;      /* [Tm, FF] */
    float *lu;            /* [Tm, Rm] LoRA x A^T */
    float *llo;           /* [Tm, maxoc] LoRA (x A^T) B^T */
    float *logits;        /* [min(Sm, Tm), V] */
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
    *out = a;
    return LF_OK;
fail:
    free(scratch);
    lf_model_adapter_free(a);
    return st ? st : LF_ENOMEM;
}

void lf_model_adapter_free(lf_model_adapter *a) {
    if (!a) return;
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
    lf_status st = LF_OK;
    lf_batch *b = NULL;
    if (!out) return lf_err_set(err, LF_EINVAL, "batch: out is NULL");
    *out = NULL;
    if (!m) return lf_err_set(err, LF_EINVAL, "batch: model is NULL");
    if (max_tokens < 1 || max_segs < 1 || max_rank < 1 || max_blocks < 1)
        return lf_err_set(err, LF_EINVAL, "batch: max_tokens (%lld), max_segs (%lld), max_rank (%lld) and max_blocks "
                          "(%lld) must be >= 1", (long long)max_tokens, (long long)max_segs, (long long)max_rank,
                          (long long)max_blocks);
    if (max_tokens > INT32_MAX || max_blocks > INT32_MAX || max_rank > INT32_MAX)
        return lf_err_set(err, LF_EINVAL, "batch: max_tokens (%lld), max_blocks (%lld) and max_rank (%lld) must fit "
                          "in int32", (long long)max_tokens, (long long)max_blocks, (long long)max_rank);
    lf_backend *be = m->be;
    if (!LF_BACKEND_SUPPORTS(be, attention_paged_forward) || !LF_BACKEND_SUPPORTS(be, axpy) ||
        (m->mem.n_q4 && !LF_BACKEND_SUPPORTS(be, matmul_q4_forward)))
        return lf_err_set(err, LF_EUNSUPPORTED, "batch: the %s backend lacks paged attention, axpy or the 4-bit matmul",
                          be->name);
    if (max_segs > max_tokens) max_segs = max_tokens; /* every segment has >= 1 row */
    const lf_model_config *c = &m->cfg;
    int64_t maxoc = 1;
    for (int64_t l = 0; l < c->L; l++)
        for (int mod = 0; mod < LF_MOD_COUNT; mod++)
            if (m->layers[l].lin[mod].OC > maxoc) maxoc = m->layers[l].lin[mod].OC;
    const int64_t Tm = max_tokens, Sm = max_segs, HD = c->H * c->D, KD = c->KH * c->D;
    /* the backend block, carved in this order; sizes in 4-byte elements (f32 or int32), each piece rounded up
     * to 16 (64 bytes). Sizes are summed in double first so absurd arguments fail instead of overflowing. */
    enum { P_X, P_XB, P_XB2, P_Q, P_ATT, P_K, P_V, P_HB, P_HB2, P_LU, P_LLO, P_LOGITS, P_TOK, P_POS, P_TABLES, NP };
    const double want[NP] = {(double)Tm * c->C, (double)Tm * c->C, (double)Tm * c->C, (double)Tm * HD,
                             (double)Tm * HD, (double)Tm * KD, (double)Tm * KD, (double)Tm * c->FF,
                             (double)Tm * c->FF, (double)Tm * max_rank, (double)Tm * maxoc, (double)Sm * c->V,
                             (double)Tm, (double)Tm, (double)Sm * max_blocks};
    double total_d = 0;
    for (int i = 0; i < NP; i++) total_d += want[i] + 16;
    if (total_d * 4 > 1e15)
        return lf_err_set(err, LF_EINVAL, "batch: workspace of %.3g bytes (max_tokens %lld, max_segs %lld, max_rank %lld, "
                          "max_blocks %lld) is too large", total_d * 4, (long long)max_tokens, (long long)max_segs,
                          (long long)max_rank, (long long)max_blocks);
    int64_t off[NP + 1];
    off[0] = 0;
    for (int i = 0; i < NP; i++) off[i + 1] = off[i] + ((int64_t)want[i] + 15) / 16 * 16;
    b = calloc(1, sizeof *b);
    LF_CHECK_ALLOC(b, err);
    b->m = m;
    b->Tm = Tm;
    b->Sm = Sm;
    b->Rm = max_rank;
    b->Bm = max_blocks;
    b->maxoc = maxoc;
    b->block = be->ops->alloc(be, (size_t)off[NP] * 4);
    if (!b->block) {
        st = lf_err_set(err, LF_ENOMEM, "batch: cannot allocate %.1f MiB of activations (max_tokens %lld, max_segs "
                        "%lld, max_rank %lld, max_blocks %lld): %s", (double)off[NP] * 4 / (1 << 20),
                        (long long)max_tokens, (long long)max_segs, (long long)max_rank, (long long)max_blocks,
                        be->err.msg);
        goto fail;
    }
    float *f = (float *)b->block;
    b->x = f + off[P_X];
    b->xb = f + off[P_XB];
    b->xb2 = f + off[P_XB2];
    b->q = f + off[P_Q];
    b->att = f + off[P_ATT];
    b->k = f + off[P_K];
    b->v = f + off[P_V];
    b->hb = f + off[P_HB];
    b->hb2 = f + off[P_HB2];
    b->lu = f + off[P_LU];
    b->llo = f + off[P_LLO];
    b->logits = f + off[P_LOGITS];
    b->tok = (int32_t *)(f + off[P_TOK]);
    b->pos = (int32_t *)(f + off[P_POS]);
    b->tables = (int32_t *)(f + off[P_TABLES]);
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
 * *n_want = segments with want_logits. */
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
            if (a->dora && m->be->device != LF_DEVICE_CPU)
                return lf_err_set(err, LF_EUNSUPPORTED, "batch forward: segment %lld: DoRA adapters run on the cpu "
                                  "backend only (got %s)", (long long)s, m->be->name);
        }
        if (g->want_logits) {
            if (!logits)
                return lf_err_set(err, LF_EINVAL, "batch forward: segment %lld wants logits but the logits array is NULL",
                                  (long long)s);
            nw++;
        }
        b->row0[s] = T;
        b->nblk[s] = need;
        T += g->n;
    }
    *T_out = T;
    *n_want = nw;
    return LF_OK;
}

/* out[rows, OC] += the adapter's term of (l, mod) for x[rows, C]: LoRA s * (x A^T) B^T, or DoRA (PEFT 0.12, as
 * model.c lin_apply): out += (m/n - 1) * (out - bias) + (m/n) * s * (x A^T) B^T. */
static lf_status lora_rows(lf_batch *b, const lf_model_adapter *a, int64_t l, int mod, float *out, const float *x,
                           int64_t rows) {
    lf_backend *be = b->m->be;
    const lf_linear *lin = &b->m->layers[l].lin[mod];
    const lf_lora_view *v = &a->views[l * LF_MOD_COUNT + mod];
    const int64_t C = lin->C, OC = lin->OC, R = v->R;
    int64_t sa[2] = {R, C}, sb[2] = {OC, R};
    lf_tensor A = lf_tensor_view(v->A, LF_DTYPE_F32, 2, sa), B = lf_tensor_view(v->B, LF_DTYPE_F32, 2, sb);
    lf_status st = be->ops->matmul_forward(be, b->lu, x, &A, NULL, rows, C, R);
    if (st) return st;
    if ((st = be->ops->matmul_forward(be, b->llo, b->lu, &B, NULL, rows, R, OC))) return st;
    if (!v->mag) return be->ops->axpy(be, out, b->llo, v->scale, rows * OC);
    const float *wn = a->wn + (l * LF_MOD_COUNT + mod) * a->maxoc;
    for (int64_t t = 0; t < rows; t++)
        for (int64_t o = 0; o < OC; o++) {
            float mns = v->mag[o] / wn[o], bnb = out[t * OC + o] - (lin->b ? lin->b[o] : 0.0f);
            out[t * OC + o] += (mns - 1.0f) * bnb + mns * v->scale * b->llo[t * OC + o];
        }
    return LF_OK;
}

/* out[T, OC] = base(x[T, C]) once over all rows, then each run of consecutive segments sharing a non-NULL
 * adapter that adapts (l, mod) adds its term over the run's rows. */
static lf_status lin_batch(lf_batch *b, const lf_batch_seg *segs, int64_t n_segs, int64_t T, int64_t l, int mod,
                           float *out, const float *x, lf_err *err) {
    lf_status st = LF_OK;
    lf_backend *be = b->m->be;
    const lf_linear *lin = &b->m->layers[l].lin[mod];
    OP(lf_linear_forward(be, out, x, lin, T));
    for (int64_t s = 0; s < n_segs;) {
        const lf_model_adapter *a = segs[s].adapter;
        int64_t e = s + 1;
        while (e < n_segs && segs[e].adapter == a) e++;
        if (a && a->views[l * LF_MOD_COUNT + mod].A) {
            const int64_t r0 = b->row0[s], rows = b->row0[e - 1] + segs[e - 1].n - r0;
            OP(lora_rows(b, a, l, mod, out + r0 * lin->OC, x + r0 * lin->C, rows));
        }
        s = e;
    }
    return LF_OK;
fail:
    return st;
}

/* Layer l: segment g's new K/V rows (b->k, b->v from row r0) into the pool slots of positions pos0..pos0+n-1,
 * one copy per run of positions inside a block. */
static lf_status scatter_kv(lf_batch *b, const lf_paged_kv *kv, const lf_batch_seg *g, int64_t r0, int64_t l,
                            lf_err *err) {
    lf_status st = LF_OK;
    lf_backend *be = b->m->be;
    const int64_t KD = b->m->cfg.KH * b->m->cfg.D, BS = kv->BS;
    for (int64_t i = 0; i < g->n;) {
        const int64_t p = g->pos0 + i, slot = p % BS;
        const int64_t run = g->n - i < BS - slot ? g->n - i : BS - slot;
        const size_t off = ((size_t)g->block_table[p / BS] * (size_t)BS + (size_t)slot) * (size_t)KD;
        const size_t bytes = (size_t)(run * KD) * sizeof(float);
        OP(be->ops->copy(be, kv->k[l] + off, b->k + (r0 + i) * KD, bytes));
        OP(be->ops->copy(be, kv->v[l] + off, b->v + (r0 + i) * KD, bytes));
        i += run;
    }
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
    const int64_t C = c->C, FF = c->FF, H = c->H, KH = c->KH, D = c->D, V = c->V, BS = kv->BS;
    const float scale = 1.0f / sqrtf((float)D);

    /* token ids, positions and block tables into the workspace's backend memory */
    for (int64_t s = 0; s < n_segs; s++) {
        const lf_batch_seg *g = &segs[s];
        OP(ops->upload(be, b->tok + b->row0[s], g->tokens, (size_t)g->n * sizeof(int32_t)));
        OP(ops->upload(be, b->tables + s * b->Bm, g->block_table, (size_t)b->nblk[s] * sizeof(int32_t)));
        for (int64_t i = 0; i < g->n; i++) b->hpos[b->row0[s] + i] = (int32_t)(g->pos0 + i);
    }
    OP(ops->upload(be, b->pos, b->hpos, (size_t)T * sizeof(int32_t)));

    OP(ops->embedding_forward(be, b->x, b->tok, &m->wte, T));
    for (int64_t l = 0; l < c->L; l++) {
        const lf_layer *ly = &m->layers[l];
        OP(ops->rmsnorm_forward(be, b->xb, b->x, ly->ln1, T, C, c->rms_eps));
        LF_TRY(lin_batch(b, segs, n_segs, T, l, LF_MOD_Q, b->q, b->xb, err));
        LF_TRY(lin_batch(b, segs, n_segs, T, l, LF_MOD_K, b->k, b->xb, err));
        LF_TRY(lin_batch(b, segs, n_segs, T, l, LF_MOD_V, b->v, b->xb, err));
        OP(ops->rope_forward(be, b->q, b->pos, m->inv_freq, T, H, D));
        OP(ops->rope_forward(be, b->k, b->pos, m->inv_freq, T, KH, D));
        for (int64_t s = 0; s < n_segs; s++) LF_TRY(scatter_kv(b, kv, &segs[s], b->row0[s], l, err));
        for (int64_t s = 0; s < n_segs; s++) {
            const int64_t r0 = b->row0[s];
            OP(ops->attention_paged_forward(be, b->att + r0 * H * D, b->q + r0 * H * D, kv->k[l], kv->v[l],
                                            b->tables + s * b->Bm, b->nblk[s], BS, b->pos + r0, segs[s].n, H, KH, D,
                                            c->window[l], scale));
        }
        LF_TRY(lin_batch(b, segs, n_segs, T, l, LF_MOD_O, b->xb2, b->att, err));
        OP(ops->residual_forward(be, b->x, b->x, b->xb2, T * C));
        OP(ops->rmsnorm_forward(be, b->xb, b->x, ly->ln2, T, C, c->rms_eps));
        LF_TRY(lin_batch(b, segs, n_segs, T, l, LF_MOD_GATE, b->hb, b->xb, err));
        LF_TRY(lin_batch(b, segs, n_segs, T, l, LF_MOD_UP, b->hb2, b->xb, err));
        OP(ops->swiglu_forward(be, b->hb, b->hb, b->hb2, T * FF));
        LF_TRY(lin_batch(b, segs, n_segs, T, l, LF_MOD_DOWN, b->xb2, b->hb, err));
        OP(ops->residual_forward(be, b->x, b->x, b->xb2, T * C));
    }
    if (nw == 0) return LF_OK;
    /* the last row of every want_logits segment, gathered into xb [nw, C] */
    for (int64_t s = 0, i = 0; s < n_segs; s++)
        if (segs[s].want_logits) {
            OP(ops->copy(be, b->xb + i * C, b->x + (b->row0[s] + segs[s].n - 1) * C, (size_t)C * sizeof(float)));
            i++;
        }
    OP(ops->rmsnorm_forward(be, b->xb, b->xb, m->norm_f, nw, C, c->rms_eps));
    OP(ops->matmul_forward(be, b->logits, b->xb, &m->lm_head, NULL, nw, C, V));
    OP(ops->download(be, logits, b->logits, (size_t)(nw * V) * sizeof(float)));
    return LF_OK;
fail:
    return st;
}
