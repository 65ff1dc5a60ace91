/* model.c - Llama-family forward pass (inference) written once against the backend op table.
 *
 * Layout per layer (HF names): input_layernorm -> q/k/v_proj (+bias) (-> q_norm/k_norm per head, Qwen3) ->
 * RoPE -> causal GQA attention
 * (optional sliding window) -> o_proj -> residual -> post_attention_layernorm -> gate/up -> SwiGLU ->
 * down_proj -> residual. Final norm, then lm_head (tied to embed_tokens when tie_word_embeddings).
 * Decoder linears are dense mmapped views or 4-bit states (model_quant.c); lf_linear_forward picks the op.
 * The forward itself is written once, in model_batch.c; a session is one segment of it over a contiguous
 * cache (per layer k, v [S, KH, D] in the compute dtype; row p holds position p), seen as one block. */
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "kernels/quant_upload.h"
#include "model/model_batch.h"
#include "model/model_int.h"
#include "model/model_train.h"

struct lf_session {
    lf_model *m;          /* borrowed */
    int64_t S, Tc, pos;   /* cache capacity, max chunk, positions filled */
    lf_batch *b;          /* owned: the forward's workspace (one segment, one block) */
    void *cache;          /* owned backend allocation: K then V of every layer, [2, L, S, KH, D] compute dtype */
    void **kv;            /* owned host array [2L]: layer l's K at kv[l], V at kv[L + l] */
    lf_paged_kv view;     /* the cache as a pool of one block of S slots */
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

/* The forward's views (model_int.h `fl`, fwte, ...). A backend with host memory reads the host views in
 * place. Any other gets one allocation holding every dense matrix (embeddings, lm_head once when tied, dense
 * linears) and the small f32 block (norms, biases, inv_freq), each piece 256-byte aligned, uploaded once;
 * 4-bit states are uploaded one allocation each (kernels/quant_upload.h). */
static lf_status upload_weights(lf_model *m, lf_err *err) {
    lf_backend *be = m->be;
    const lf_model_config *c = &m->cfg;
    if (be->host_memory) {
        m->fl = m->layers;
        m->fwte = m->wte;
        m->flm_head = m->lm_head;
        m->fnorm_f = m->norm_f;
        m->finv_freq = m->inv_freq;
        return LF_OK;
    }
    lf_status st = LF_OK;
    m->fl = calloc((size_t)c->L, sizeof *m->fl);
    LF_CHECK_ALLOC(m->fl, err);
    memcpy(m->fl, m->layers, (size_t)c->L * sizeof *m->fl);
    for (int64_t l = 0; l < c->L; l++) /* not uploaded yet: lf_model_free must not release host states */
        for (int mod = 0; mod < LF_MOD_COUNT; mod++) memset(&m->fl[l].lin[mod].q, 0, sizeof m->fl[l].lin[mod].q);
    const int tied = m->lm_head.data == m->wte.data;
#define UP_ALIGN(n) (((n) + 255) / 256 * 256)
    size_t total = UP_ALIGN((size_t)m->mem.small_bytes) + UP_ALIGN(lf_tensor_nbytes(&m->wte)) +
                   (tied ? 0 : UP_ALIGN(lf_tensor_nbytes(&m->lm_head)));
    for (int64_t l = 0; l < c->L; l++)
        for (int mod = 0; mod < LF_MOD_COUNT; mod++)
            if (!m->layers[l].lin[mod].q.packed) total += UP_ALIGN(lf_tensor_nbytes(&m->layers[l].lin[mod].w));
    m->dev = be->ops->alloc(be, total);
    if (!m->dev) {
        st = lf_err_set(err, LF_ENOMEM, "cannot allocate %.1f MiB for the weights on %s: %s", (double)total / (1 << 20),
                        be->name, be->err.msg);
        goto fail;
    }
    char *base = (char *)m->dev;
    size_t off = 0;
#define UPLOAD(dst_ptr, src, nbytes)                                                                            \
    do {                                                                                                        \
        (dst_ptr) = (void *)(base + off);                                                                       \
        if (be->ops->upload(be, base + off, (src), (nbytes)) != LF_OK) {                                        \
            st = lf_err_set(err, be->err.code ? be->err.code : LF_EIO, "uploading weights to %s: %s", be->name, \
                            be->err.msg);                                                                       \
            goto fail;                                                                                          \
        }                                                                                                       \
        off += UP_ALIGN(nbytes);                                                                                \
    } while (0)
    float *small = NULL;
    UPLOAD(small, m->small, (size_t)m->mem.small_bytes);
#define REBASE(p) ((p) ? small + ((p) - m->small) : NULL)
    m->fnorm_f = REBASE(m->norm_f);
    m->finv_freq = REBASE(m->inv_freq);
    m->fwte = m->wte;
    m->fwte.device = be->device;
    UPLOAD(m->fwte.data, m->wte.data, lf_tensor_nbytes(&m->wte));
    m->flm_head = m->lm_head;
    if (tied) m->flm_head.data = m->fwte.data;
    else UPLOAD(m->flm_head.data, m->lm_head.data, lf_tensor_nbytes(&m->lm_head));
    m->flm_head.device = be->device;
    for (int64_t l = 0; l < c->L; l++) {
        lf_layer *fy = &m->fl[l];
        const lf_layer *hy = &m->layers[l];
        fy->ln1 = REBASE(hy->ln1);
        fy->ln2 = REBASE(hy->ln2);
        fy->qn = REBASE(hy->qn);
        fy->kn = REBASE(hy->kn);
        for (int mod = 0; mod < LF_MOD_COUNT; mod++) {
            lf_linear *f = &fy->lin[mod];
            const lf_linear *h = &hy->lin[mod];
            f->b = REBASE(h->b);
            if (h->q.packed) {
                LF_TRY(lf_quant_state_upload(be, &h->q, &f->q, err));
            } else {
                f->w.device = be->device;
                UPLOAD(f->w.data, h->w.data, lf_tensor_nbytes(&h->w));
            }
        }
    }
#undef REBASE
#undef UPLOAD
#undef UP_ALIGN
    return LF_OK;
fail:
    return st; /* lf_model_free releases what was made */
}

lf_model_options lf_model_default_options(void) {
    lf_model_options o = {0, LF_QUANT_NF4, LF_QUANT_BLOCK_DEFAULT, 1, LF_DTYPE_INVALID};
    return o;
}

lf_dtype lf_model_parse_dtype(const char *name) {
    static const struct {
        const char *name;
        lf_dtype dt;
    } names[] = {{"f32", LF_DTYPE_F32},      {"float32", LF_DTYPE_F32}, {"fp32", LF_DTYPE_F32},
                 {"bf16", LF_DTYPE_BF16},    {"bfloat16", LF_DTYPE_BF16}, {"f16", LF_DTYPE_F16},
                 {"float16", LF_DTYPE_F16},  {"fp16", LF_DTYPE_F16},    {"half", LF_DTYPE_F16},
                 {"torch.float32", LF_DTYPE_F32}, {"torch.bfloat16", LF_DTYPE_BF16}, {"torch.float16", LF_DTYPE_F16}};
    if (!name) return LF_DTYPE_INVALID;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(name, names[i].name) == 0) return names[i].dt;
    return LF_DTYPE_INVALID;
}

lf_dtype lf_model_compute_dtype(const lf_model *m) { return m->opt.compute_dtype; }

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
    if (o.compute_dtype == LF_DTYPE_INVALID) /* auto */
        o.compute_dtype = be->device == LF_DEVICE_CPU ? LF_DTYPE_F32 : LF_DTYPE_BF16;
    if (!lf_act_dtype_ok(o.compute_dtype))
        return lf_err_set(err, LF_EINVAL, "compute dtype %s is not supported (f32, bf16 or f16)",
                          lf_dtype_name(o.compute_dtype));
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
    /* all 1-D weights: per layer 2 norms + biases (+ q/k norms), plus final norm, plus inv_freq */
    int64_t per_layer = 2 * C + (H * D + 2 * KH * D) + C + 2 * FF + C + 2 * D;
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
        if (c->qk_norm) {
            LF_TRY(load_vector(m, LNAME("self_attn.q_norm.weight"), D, 1, &cur, &ly->qn, err));
            LF_TRY(load_vector(m, LNAME("self_attn.k_norm.weight"), D, 1, &cur, &ly->kn, err));
        }
#undef LNAME
    }
    m->inv_freq = cur;
    cur += D / 2;
    lf_model_config_inv_freq(c, m->inv_freq);
    LF_TRY(upload_weights(m, err));
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
    if (m->fl && m->fl != m->layers) {
        for (int64_t l = 0; l < m->cfg.L; l++)
            for (int mod = 0; mod < LF_MOD_COUNT; mod++) lf_quant_state_release(m->be, &m->fl[l].lin[mod].q);
        free(m->fl);
    }
    if (m->dev) m->be->ops->free(m->be, m->dev);
    lf_st_model_close(m->st);
    if (m->layers)
        for (int64_t l = 0; l < m->cfg.L; l++)
            for (int mod = 0; mod < LF_MOD_COUNT; mod++) lf_quant_state_free(&m->layers[l].lin[mod].q);
    free(m->layers);
    free(m->small);
    lf_model_adapter_free(m->lora);
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
    if (max_seq > INT32_MAX) return lf_err_set(err, LF_EINVAL, "session: max_seq %lld does not fit in int32", (long long)max_seq);
    if (max_chunk > max_seq) max_chunk = max_seq;
    lf_session *s = calloc(1, sizeof *s);
    LF_CHECK_ALLOC(s, err);
    s->m = m;
    s->S = max_seq;
    s->Tc = max_chunk;
    const lf_dtype adt = m->opt.compute_dtype;
    LF_TRY(lf_batch_create_ex(m, max_chunk, 1, lf_model_adapter_max_rank(m->lora), 1, max_chunk, &s->b, err));
    const size_t plane = lf_act_bytes(adt, max_seq * c->KH * c->D);
    s->cache = m->be->ops->alloc(m->be, 2 * (size_t)c->L * plane);
    if (!s->cache) {
        st = lf_err_set(err, LF_ENOMEM, "session: cannot allocate %.1f MiB of %s KV cache (%lld positions): %s",
                        2.0 * (double)c->L * (double)plane / (1 << 20), lf_dtype_name(adt), (long long)max_seq,
                        m->be->err.msg);
        goto fail;
    }
    s->kv = malloc(2 * (size_t)c->L * sizeof *s->kv);
    LF_CHECK_ALLOC(s->kv, err);
    for (int64_t i = 0; i < 2 * c->L; i++) s->kv[i] = (char *)s->cache + (size_t)i * plane;
    s->view.k = s->kv;
    s->view.v = s->kv + c->L;
    s->view.BS = max_seq;
    s->view.NB = 1;
    s->view.dt = adt;
    *out = s;
    return LF_OK;
fail:
    lf_session_free(s);
    return st ? st : LF_ENOMEM;
}

void lf_session_free(lf_session *s) {
    if (!s) return;
    lf_batch_free(s->b);
    if (s->cache) s->m->be->ops->free(s->m->be, s->cache);
    free(s->kv);
    free(s);
}

int64_t lf_session_pos(const lf_session *s) { return s->pos; }
void lf_session_reset(lf_session *s) { s->pos = 0; }

lf_status lf_model_set_lora(lf_model *m, const lf_lora_view *views, lf_err *err) {
    lf_model_adapter *a = NULL;
    if (views) {
        lf_status st = lf_model_adapter_create(m, views, &a, err);
        if (st) return st;
    }
    lf_model_adapter_free(m->lora);
    m->lora = a;
    return LF_OK;
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
    static const int32_t block0 = 0;
    for (int64_t done = 0; done < T;) {
        int64_t n = T - done < s->Tc ? T - done : s->Tc;
        /* with last_only, earlier chunks only fill the cache and skip the lm_head */
        lf_batch_seg g = {.tokens = tokens + done, .n = n, .pos0 = s->pos, .block_table = &block0, .n_blocks = 1,
                          .adapter = s->m->lora,
                          .want_logits = last_only ? (done + n == T ? LF_LOGITS_LAST : LF_LOGITS_NONE) : LF_LOGITS_ALL};
        float *dst = last_only ? logits : logits + done * c->V;
        lf_status st = lf_batch_forward(s->b, &s->view, &g, 1, g.want_logits ? dst : NULL, err);
        if (st) return st;
        s->pos += n;
        done += n;
    }
    return LF_OK;
}
