/* model.c - Llama-family forward pass (inference) written once against the backend op table.
 *
 * Layout per layer (HF names): input_layernorm -> q/k/v_proj (+bias) -> RoPE -> causal GQA attention
 * (optional sliding window) -> o_proj -> residual -> post_attention_layernorm -> gate/up -> SwiGLU ->
 * down_proj -> residual. Final norm, then lm_head (tied to embed_tokens when tie_word_embeddings).
 * KV cache: per layer k, v [S, KH, D] f32, contiguous; row p holds position p. Decoder linears are dense
 * mmapped views or 4-bit states (model_quant.c); lf_linear_forward picks the op. */
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "model/model_int.h"
#include "model/model_train.h"

struct lf_session {
    lf_model *m;          /* borrowed */
    int64_t S, Tc, pos;   /* cache capacity, max chunk, positions filled */
    float *kcache, *vcache; /* [L, S, KH, D] */
    float *x, *xb, *xb2;  /* [Tc, C] */
    float *q, *att;       /* [Tc, H*D] */
    float *hb, *hb2;      /* [Tc, FF] */
    float *logits;        /* [Tc, V] */
    float *lu, *llo, *lbnb; /* LoRA scratch [Tc, Rmax], [Tc, maxOC], [Tc, maxOC] (NULL without an adapter) */
    int32_t *posbuf;      /* [Tc] */
    void *block;          /* the one allocation all of the above are carved from */
};

/* ---------------------------------------------------------------------------------------------------- */
/* weight loading                                                                                        */

static lf_status get_tensor(lf_model *m, const char *name, int ndim, const int64_t *shape, int required,
                            const lf_st_tensor **out, lf_err *err) {
    *out = NULL;
    const lf_st_file *file = NULL;
    const lf_st_tensor *t = lf_st_model_find(m->st, name, &file);
    if (!t) {
        if (!required) return LF_OK;
        return lf_err_set(err, LF_ENOTFOUND, "tensor '%s' is missing from the checkpoint in %s (config.json "
                          "says %s)", name, m->dir, m->cfg.architecture);
    }
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char want[96] = "", got[96] = "";
        size_t o = 0;
        for (int i = 0; i < ndim; i++) o += (size_t)snprintf(want + o, sizeof want - o, i ? ", %lld" : "%lld", (long long)shape[i]);
        o = 0;
        for (int i = 0; i < t->ndim && o < sizeof got; i++) o += (size_t)snprintf(got + o, sizeof got - o, i ? ", %lld" : "%lld", (long long)t->shape[i]);
        return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s' has shape [%s], expected [%s] from config.json",
                          file ? lf_st_path(file) : "?", name, got, want);
    }
    if (t->dtype != LF_DTYPE_F32 && t->dtype != LF_DTYPE_BF16 && t->dtype != LF_DTYPE_F16)
        return lf_err_set(err, LF_EUNSUPPORTED, "%s: tensor '%s' has dtype %s; supported: F32, BF16, F16",
                          file ? lf_st_path(file) : "?", name, lf_dtype_name(t->dtype));
    *out = t;
    return LF_OK;
}

static lf_status load_matrix(lf_model *m, const char *name, int64_t rows, int64_t cols, lf_tensor *dst, lf_err *err) {
    const lf_st_tensor *t;
    int64_t shape[2] = {rows, cols};
    lf_status st = get_tensor(m, name, 2, shape, 1, &t, err);
    if (st) return st;
    *dst = lf_tensor_view((void *)t->data, t->dtype, 2, shape);
    m->weight_bytes += (int64_t)lf_tensor_nbytes(dst);
    return LF_OK;
}

/* 1-D tensor -> f32 copy carved from *cursor. Missing optional tensors leave *dst NULL. */
static lf_status load_vector(lf_model *m, const char *name, int64_t n, int required, float **cursor, float **dst,
                             lf_err *err) {
    const lf_st_tensor *t;
    int64_t shape[1] = {n};
    *dst = NULL;
    lf_status st = get_tensor(m, name, 1, shape, required, &t, err);
    if (st || !t) return st;
    *dst = *cursor;
    *cursor += n;
    return lf_to_f32_n(*dst, t->data, t->dtype, n, err);
}

lf_model_options lf_model_default_options(void) {
    lf_model_options o = {0, LF_QUANT_NF4, LF_QUANT_BLOCK_DEFAULT, 1};
    return o;
}

lf_status lf_model_load(const char *dir, lf_backend *be, lf_model **out, lf_err *err) {
    return lf_model_load_opts(dir, be, NULL, out, err);
}

lf_status lf_model_load_opts(const char *dir, lf_backend *be, const lf_model_options *opt, lf_model **out,
                             lf_err *err) {
    lf_status st = LF_OK;
    char name[256];
    *out = NULL;
    lf_model_options o = opt ? *opt : lf_model_default_options();
    if (o.quant_bits != 0 && o.quant_bits != 4)
        return lf_err_set(err, LF_EINVAL, "quantization_bit %d is not supported (use 4, or none for the stored "
                          "weights)", o.quant_bits);
    if (o.quant_type != LF_QUANT_NF4 && o.quant_type != LF_QUANT_FP4)
        return lf_err_set(err, LF_EINVAL, "unknown 4-bit quantization type %d (nf4 or fp4)", o.quant_type);
    if (o.quant_bits == 4 && lf_quant_check_blocksize(o.quant_blocksize, err)) return LF_EINVAL;
    if (be->device != LF_DEVICE_CPU) return lf_err_set(err, LF_EUNSUPPORTED, "model forward runs on the cpu backend only for now (got %s)", be->name);
    lf_model *m = calloc(1, sizeof *m);
    LF_CHECK_ALLOC(m, err);
    m->be = be;
    m->opt = o;
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    LF_TRY(lf_model_config_load(dir, &m->cfg, err));
    LF_TRY(lf_st_model_open(dir, &m->st, err));
    const lf_model_config *c = &m->cfg;
    int64_t C = c->C, FF = c->FF, H = c->H, KH = c->KH, D = c->D, V = c->V;

    m->layers = calloc((size_t)c->L, sizeof *m->layers);
    LF_CHECK_ALLOC(m->layers, err);
    /* all 1-D weights: per layer 2 norms + biases, plus final norm, plus inv_freq */
    int64_t per_layer = 2 * C + (H * D + 2 * KH * D) + C + 2 * FF + C;
    m->small = malloc((size_t)(per_layer * c->L + C + D / 2) * sizeof(float));
    LF_CHECK_ALLOC(m->small, err);
    m->mem.small_bytes = (per_layer * c->L + C + D / 2) * (int64_t)sizeof(float);
    float *cur = m->small;

    LF_TRY(load_matrix(m, "model.embed_tokens.weight", V, C, &m->wte, err));
    m->weight_bytes -= (int64_t)lf_tensor_nbytes(&m->wte); /* embedding reads one row per token */
    m->mem.dense_bytes += (int64_t)lf_tensor_nbytes(&m->wte);
    m->mem.n_dense++;
    if (c->tie_embeddings) {
        m->lm_head = m->wte;
        m->weight_bytes += (int64_t)lf_tensor_nbytes(&m->lm_head);
    } else {
        LF_TRY(load_matrix(m, "lm_head.weight", V, C, &m->lm_head, err));
        m->mem.dense_bytes += (int64_t)lf_tensor_nbytes(&m->lm_head);
        m->mem.n_dense++;
    }
    LF_TRY(load_vector(m, "model.norm.weight", C, 1, &cur, &m->norm_f, err));
    m->mem.prequantized = c->prequant_4bit;

    for (int64_t l = 0; l < c->L; l++) {
        lf_layer *ly = &m->layers[l];
#define LNAME(suffix) (snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)l, suffix), name)
        for (int mod = 0; mod < LF_MOD_COUNT; mod++) {
            lf_linear *lin = &ly->lin[mod];
            char prefix[200];
            snprintf(prefix, sizeof prefix, "model.layers.%lld.%s.%s", (long long)l, lf_module_parent(mod),
                     lf_module_name(mod));
            lf_module_shape(c, mod, &lin->OC, &lin->C);
            if (c->prequant_4bit) {
                LF_TRY(lf_model_load_linear_q4(m, prefix, lin, err));
            } else if (m->opt.quant_bits == 4) {
                LF_TRY(lf_model_quantize_linear(m, prefix, lin, err));
            } else {
                snprintf(name, sizeof name, "%s.weight", prefix);
                LF_TRY(load_matrix(m, name, lin->OC, lin->C, &lin->w, err));
                m->mem.dense_bytes += (int64_t)lf_tensor_nbytes(&lin->w);
                m->mem.n_dense++;
            }
            if (lin->q.packed) {
                int64_t qb = (int64_t)lf_quant_state_nbytes(&lin->q);
                m->weight_bytes += qb;
                m->mem.q4_bytes += qb;
                m->mem.n_q4++;
            }
            int has_bias = mod <= LF_MOD_V ? c->qkv_bias : mod == LF_MOD_O ? c->o_bias : c->mlp_bias;
            if (has_bias) {
                snprintf(name, sizeof name, "%s.bias", prefix);
                LF_TRY(load_vector(m, name, lin->OC, 1, &cur, &lin->b, err));
            }
        }
        LF_TRY(load_vector(m, LNAME("input_layernorm.weight"), C, 1, &cur, &ly->ln1, err));
        LF_TRY(load_vector(m, LNAME("post_attention_layernorm.weight"), C, 1, &cur, &ly->ln2, err));
#undef LNAME
    }
    m->inv_freq = cur;
    cur += D / 2;
    lf_model_config_inv_freq(c, m->inv_freq);
    LF_LOG(LF_LOG_DEBUG, "loaded %s: L=%lld C=%lld H=%lld KH=%lld D=%lld FF=%lld V=%lld", c->architecture,
           (long long)c->L, (long long)C, (long long)H, (long long)KH, (long long)D, (long long)FF, (long long)V);
    *out = m;
    return LF_OK;
fail:
    if (err && m && err->msg[0] == '\0') lf_err_set(err, st, "cannot load model from %s", dir);
    lf_model_free(m);
    return st ? st : LF_ENOMEM;
}

void lf_model_free(lf_model *m) {
    if (!m) return;
    lf_st_model_close(m->st);
    if (m->layers)
        for (int64_t l = 0; l < m->cfg.L; l++)
            for (int mod = 0; mod < LF_MOD_COUNT; mod++) lf_quant_state_free(&m->layers[l].lin[mod].q);
    free(m->layers);
    free(m->small);
    free(m->lora);
    free(m->lora_wn);
    free(m);
}

const lf_model_config *lf_model_get_config(const lf_model *m) { return &m->cfg; }
int64_t lf_model_weight_bytes(const lf_model *m) { return m->weight_bytes; }
const lf_model_memory *lf_model_get_memory(const lf_model *m) { return &m->mem; }
const char *lf_model_dir(const lf_model *m) { return m->dir; }
lf_backend *lf_model_backend(const lf_model *m) { return m->be; }

const lf_quant_state *lf_model_linear_q4(const lf_model *m, int64_t layer, int mod) {
    if (layer < 0 || layer >= m->cfg.L || mod < 0 || mod >= LF_MOD_COUNT) return NULL;
    const lf_linear *l = &m->layers[layer].lin[mod];
    return l->q.packed ? &l->q : NULL;
}

const lf_tensor *lf_model_linear_dense(const lf_model *m, int64_t layer, int mod) {
    if (layer < 0 || layer >= m->cfg.L || mod < 0 || mod >= LF_MOD_COUNT) return NULL;
    const lf_linear *l = &m->layers[layer].lin[mod];
    return l->q.packed ? NULL : &l->w;
}

/* ---------------------------------------------------------------------------------------------------- */
/* session                                                                                               */

lf_status lf_session_create(lf_model *m, int64_t max_seq, int64_t max_chunk, lf_session **out, lf_err *err) {
    lf_status st = LF_OK;
    *out = NULL;
    const lf_model_config *c = &m->cfg;
    if (max_seq <= 0 || max_chunk <= 0)
        return lf_err_set(err, LF_EINVAL, "session: max_seq (%lld) and max_chunk (%lld) must be > 0", (long long)max_seq, (long long)max_chunk);
    if (m->mem.n_q4 && !LF_BACKEND_SUPPORTS(m->be, matmul_q4_forward))
        return lf_err_set(err, LF_EUNSUPPORTED, "the %s backend has no 4-bit matmul", m->be->name);
    if (max_chunk > max_seq) max_chunk = max_seq;
    lf_session *s = calloc(1, sizeof *s);
    LF_CHECK_ALLOC(s, err);
    s->m = m;
    s->S = max_seq;
    s->Tc = max_chunk;
    int64_t Tc = max_chunk, kv = c->L * max_seq * c->KH * c->D;
    /* one allocation, carved: sizes in floats, each piece rounded to 16 floats (64 bytes) */
    int64_t lr = m->lora ? Tc * m->lora_rmax : 0, lo = m->lora ? Tc * m->lora_maxoc : 0;
    int64_t sizes[13] = {kv, kv, Tc * c->C, Tc * c->C, Tc * c->C, Tc * c->H * c->D, Tc * c->H * c->D,
                         Tc * c->FF, Tc * c->FF, Tc * c->V, lr, lo, lo};
    float **dst[13] = {&s->kcache, &s->vcache, &s->x, &s->xb, &s->xb2, &s->q, &s->att, &s->hb, &s->hb2, &s->logits,
                       &s->lu, &s->llo, &s->lbnb};
    int64_t total = Tc; /* posbuf (int32 fits in a float slot) */
    for (int i = 0; i < 13; i++) total += (sizes[i] + 15) / 16 * 16;
    s->block = m->be->ops->alloc(m->be, (size_t)total * sizeof(float));
    if (!s->block) {
        st = lf_err_set(err, LF_ENOMEM, "session: cannot allocate %.1f MiB for KV cache (%lld positions) and activations",
                        (double)total * 4 / (1 << 20), (long long)max_seq);
        goto fail;
    }
    float *p = (float *)s->block;
    for (int i = 0; i < 13; i++) {
        *dst[i] = sizes[i] ? p : NULL;
        p += (sizes[i] + 15) / 16 * 16;
    }
    s->posbuf = (int32_t *)p;
    *out = s;
    return LF_OK;
fail:
    lf_session_free(s);
    return st ? st : LF_ENOMEM;
}

void lf_session_free(lf_session *s) {
    if (!s) return;
    if (s->block) s->m->be->ops->free(s->m->be, s->block);
    free(s);
}

int64_t lf_session_pos(const lf_session *s) { return s->pos; }
void lf_session_reset(lf_session *s) { s->pos = 0; }

#define OP(call)                                                                          \
    do {                                                                                  \
        if ((call) != LF_OK) {                                                            \
            st = lf_err_set(err, be->err.code ? be->err.code : LF_EINVAL, "%s", be->err.msg); \
            goto fail;                                                                    \
        }                                                                                 \
    } while (0)

/* A decoder linear plus the model's adapter on it (LoRA: + s B A x; DoRA: PEFT's formula, no dropout). */
static lf_status lin_apply(lf_session *s, int64_t l, int mod, float *out, const float *x, int64_t T) {
    lf_model *m = s->m;
    lf_backend *be = m->be;
    const lf_linear *lin = &m->layers[l].lin[mod];
    lf_status st = lf_linear_forward(be, out, x, lin, T);
    if (st || !m->lora || !m->lora[l * LF_MOD_COUNT + mod].A) return st;
    const lf_lora_view *v = &m->lora[l * LF_MOD_COUNT + mod];
    int64_t C = lin->C, OC = lin->OC, R = v->R;
    int64_t sa[2] = {R, C}, sb[2] = {OC, R};
    lf_tensor A = lf_tensor_view(v->A, LF_DTYPE_F32, 2, sa), B = lf_tensor_view(v->B, LF_DTYPE_F32, 2, sb);
    if ((st = be->ops->matmul_forward(be, s->lu, x, &A, NULL, T, C, R))) return st;
    if ((st = be->ops->matmul_forward(be, s->llo, s->lu, &B, NULL, T, R, OC))) return st;
    if (!v->mag) return be->ops->axpy(be, out, s->llo, v->scale, T * OC);
    const float *wn = m->lora_wn + (l * LF_MOD_COUNT + mod) * m->lora_maxoc;
    for (int64_t t = 0; t < T; t++)
        for (int64_t o = 0; o < OC; o++) {
            float mns = v->mag[o] / wn[o], bnb = out[t * OC + o] - (lin->b ? lin->b[o] : 0.0f);
            out[t * OC + o] += (mns - 1.0f) * bnb + mns * v->scale * s->llo[t * OC + o];
        }
    return LF_OK;
}

lf_status lf_model_set_lora(lf_model *m, const lf_lora_view *views, lf_err *err) {
    lf_status st = LF_OK;
    float *scratch = NULL;
    free(m->lora);
    free(m->lora_wn);
    m->lora = NULL;
    m->lora_wn = NULL;
    m->lora_rmax = m->lora_maxoc = 0;
    if (!views) return LF_OK;
    const int64_t NV = m->cfg.L * LF_MOD_COUNT;
    int64_t rmax = 1, maxoc = 1, wmax = 0;
    for (int64_t i = 0; i < NV; i++) {
        const lf_linear *lin = &m->layers[i / LF_MOD_COUNT].lin[i % LF_MOD_COUNT];
        maxoc = lin->OC > maxoc ? lin->OC : maxoc;
        if (!views[i].A) continue;
        rmax = views[i].R > rmax ? views[i].R : rmax;
        if (views[i].mag) wmax = lin->OC * lin->C > wmax ? lin->OC * lin->C : wmax;
    }
    m->lora = malloc((size_t)NV * sizeof *m->lora);
    LF_CHECK_ALLOC(m->lora, err);
    memcpy(m->lora, views, (size_t)NV * sizeof *views);
    m->lora_rmax = rmax;
    m->lora_maxoc = maxoc;
    if (wmax) {
        m->lora_wn = malloc((size_t)(NV * maxoc) * sizeof(float));
        scratch = malloc((size_t)wmax * sizeof(float));
        if (!m->lora_wn || !scratch) {
            st = lf_err_set(err, LF_ENOMEM, "adapter: out of memory for DoRA norms");
            goto fail;
        }
        for (int64_t i = 0; i < NV; i++)
            if (views[i].A && views[i].mag)
                LF_TRY(lf_model_dora_norm(m, &views[i], i / LF_MOD_COUNT, (int)(i % LF_MOD_COUNT),
                                          m->lora_wn + i * maxoc, scratch, err));
    }
    free(scratch);
    return LF_OK;
fail:
    free(scratch);
    lf_model_set_lora(m, NULL, err);
    return st;
}

/* One chunk of T <= Tc tokens at positions pos..pos+T-1. */
static lf_status forward_chunk(lf_session *s, const int32_t *tokens, int64_t T, float *logits, int last_only, lf_err *err) {
    lf_status st = LF_OK;
    lf_model *m = s->m;
    lf_backend *be = m->be;
    const lf_backend_ops *ops = be->ops;
    const lf_model_config *c = &m->cfg;
    int64_t C = c->C, FF = c->FF, H = c->H, KH = c->KH, D = c->D, V = c->V, S = s->S;
    int64_t p0 = s->pos;
    float scale = 1.0f / sqrtf((float)D);
    for (int64_t t = 0; t < T; t++) s->posbuf[t] = (int32_t)(p0 + t);

    OP(ops->embedding_forward(be, s->x, tokens, &m->wte, T));
    for (int64_t l = 0; l < c->L; l++) {
        const lf_layer *ly = &m->layers[l];
        float *kc = s->kcache + l * S * KH * D, *vc = s->vcache + l * S * KH * D;
        float *k_new = kc + p0 * KH * D, *v_new = vc + p0 * KH * D; /* [T, KH*D] rows of the cache */
        OP(ops->rmsnorm_forward(be, s->xb, s->x, ly->ln1, T, C, c->rms_eps));
        OP(lin_apply(s, l, LF_MOD_Q, s->q, s->xb, T));
        OP(lin_apply(s, l, LF_MOD_K, k_new, s->xb, T));
        OP(lin_apply(s, l, LF_MOD_V, v_new, s->xb, T));
        OP(ops->rope_forward(be, s->q, s->posbuf, m->inv_freq, T, H, D));
        OP(ops->rope_forward(be, k_new, s->posbuf, m->inv_freq, T, KH, D));
        OP(ops->attention_forward(be, s->att, s->q, kc, vc, s->posbuf, T, p0 + T, H, KH, D, c->window[l], scale));
        OP(lin_apply(s, l, LF_MOD_O, s->xb2, s->att, T));
        OP(ops->residual_forward(be, s->x, s->x, s->xb2, T * C));
        OP(ops->rmsnorm_forward(be, s->xb, s->x, ly->ln2, T, C, c->rms_eps));
        OP(lin_apply(s, l, LF_MOD_GATE, s->hb, s->xb, T));
        OP(lin_apply(s, l, LF_MOD_UP, s->hb2, s->xb, T));
        OP(ops->swiglu_forward(be, s->hb, s->hb, s->hb2, T * FF));
        OP(lin_apply(s, l, LF_MOD_DOWN, s->xb2, s->hb, T));
        OP(ops->residual_forward(be, s->x, s->x, s->xb2, T * C));
    }
    s->pos = p0 + T;
    if (!logits) return LF_OK;
    int64_t first = last_only ? T - 1 : 0, rows = T - first;
    OP(ops->rmsnorm_forward(be, s->xb, s->x + first * C, m->norm_f, rows, C, c->rms_eps));
    OP(ops->matmul_forward(be, s->logits, s->xb, &m->lm_head, NULL, rows, C, V));
    OP(ops->download(be, logits, s->logits, (size_t)(rows * V) * sizeof(float)));
    return LF_OK;
fail:
    return st;
}

lf_status lf_session_forward(lf_session *s, const int32_t *tokens, int64_t T, float *logits, int last_only, lf_err *err) {
    const lf_model_config *c = &s->m->cfg;
    if (T <= 0) return lf_err_set(err, LF_EINVAL, "forward: no tokens");
    if (s->pos + T > s->S)
        return lf_err_set(err, LF_EINVAL, "forward: %lld cached + %lld new tokens exceed the session's %lld positions",
                          (long long)s->pos, (long long)T, (long long)s->S);
    for (int64_t t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= c->V)
            return lf_err_set(err, LF_EINVAL, "forward: token id %d at position %lld is outside the vocabulary [0, %lld)",
                              tokens[t], (long long)t, (long long)c->V);
    for (int64_t done = 0; done < T;) {
        int64_t n = T - done < s->Tc ? T - done : s->Tc;
        /* with last_only, earlier chunks only fill the cache and skip the lm_head */
        float *dst = last_only ? (done + n == T ? logits : NULL) : logits + done * c->V;
        lf_status st = forward_chunk(s, tokens + done, n, dst, last_only, err);
        if (st) return st;
        done += n;
    }
    return LF_OK;
}
