/* lora.c - LoRA/DoRA adapter parameters: config helpers, PEFT target/rank resolution, one-allocation storage,
 * PEFT initialisation and the scalar reference forward/merge/DoRA math. */
#include "adapters/lora.h"

#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/rng.h"

/* ---- config ---- */

lf_lora_config lf_lora_config_default(void) {
    lf_lora_config c;
    memset(&c, 0, sizeof c);
    c.r = 8;
    c.alpha = 8.0;
    c.dropout = 0.0;
    c.init = LF_LORA_INIT_DEFAULT;
    c.target_mask = (1u << LF_MOD_Q) | (1u << LF_MOD_V);
    snprintf(c.task_type, sizeof c.task_type, "CAUSAL_LM");
    return c;
}

lf_status lf_lora_parse_modules(const char *list, uint32_t *mask, lf_err *err) {
    *mask = 0;
    if (!list) return lf_err_set(err, LF_EINVAL, "target modules: NULL list");
    const char *p = list;
    while (isspace((unsigned char)*p)) p++;
    if (!strcmp(p, "all") || !strcmp(p, "all-linear")) {
        *mask = LF_LORA_ALL_MODULES;
        return LF_OK;
    }
    for (;;) {
        while (isspace((unsigned char)*p)) p++;
        const char *e = p;
        while (*e && *e != ',') e++;
        const char *t = e;
        while (t > p && isspace((unsigned char)t[-1])) t--;
        char name[64];
        size_t n = (size_t)(t - p);
        if (n == 0 || n >= sizeof name)
            return lf_err_set(err, LF_EINVAL, "target modules \"%s\": %s entry (expected a comma list of q_proj "
                              "k_proj v_proj o_proj gate_proj up_proj down_proj, or \"all\")", list,
                              n == 0 ? "empty" : "over-long");
        memcpy(name, p, n);
        name[n] = '\0';
        int m = lf_module_from_name(name);
        if (m < 0)
            return lf_err_set(err, LF_EINVAL, "target modules \"%s\": unknown module \"%s\" (expected q_proj k_proj "
                              "v_proj o_proj gate_proj up_proj down_proj, or \"all\")", list, name);
        *mask |= 1u << m;
        if (!*e) break;
        p = e + 1;
    }
    return LF_OK;
}

double lf_lora_scaling(double alpha, int64_t r, int use_rslora) {
    return use_rslora ? alpha / sqrt((double)r) : alpha / (double)r;
}

lf_status lf_lora_config_validate(const lf_lora_config *c, lf_err *err) {
    if (c->r <= 0) return lf_err_set(err, LF_EINVAL, "LoRA r = %" PRId64 ": must be > 0", c->r);
    if (!isfinite(c->alpha)) return lf_err_set(err, LF_EINVAL, "lora_alpha = %g: must be finite", c->alpha);
    if (!(c->dropout >= 0.0 && c->dropout < 1.0))
        return lf_err_set(err, LF_EINVAL, "lora_dropout = %g: must be in [0, 1)", c->dropout);
    if ((unsigned)c->init > LF_LORA_INIT_RANDOM) return lf_err_set(err, LF_EINVAL, "LoRA init kind %d unknown", (int)c->init);
    if (c->n_target_names < 0 || c->n_target_names > LF_LORA_MAX_TARGETS || c->n_rank_pattern < 0 ||
        c->n_rank_pattern > LF_LORA_MAX_PATTERNS || c->n_alpha_pattern < 0 || c->n_alpha_pattern > LF_LORA_MAX_PATTERNS)
        return lf_err_set(err, LF_EINVAL, "LoRA config: target/pattern counts out of range");
    if (!c->target_regex[0] && c->n_target_names == 0 && (c->target_mask & LF_LORA_ALL_MODULES) == 0)
        return lf_err_set(err, LF_EINVAL, "LoRA config: no target modules");
    if (c->target_mask & ~LF_LORA_ALL_MODULES)
        return lf_err_set(err, LF_EINVAL, "LoRA config: target_mask 0x%x has bits beyond the 7 modules", c->target_mask);
    for (int i = 0; i < c->n_rank_pattern; i++) {
        double v = c->rank_pattern[i].value;
        if (!(v >= 1 && v <= 1e9 && v == floor(v)))
            return lf_err_set(err, LF_EINVAL, "rank_pattern[\"%s\"] = %g: must be a positive integer",
                              c->rank_pattern[i].key, v);
    }
    for (int i = 0; i < c->n_alpha_pattern; i++)
        if (!isfinite(c->alpha_pattern[i].value))
            return lf_err_set(err, LF_EINVAL, "alpha_pattern[\"%s\"] = %g: must be finite", c->alpha_pattern[i].key,
                              c->alpha_pattern[i].value);
    return LF_OK;
}

/* ---- target resolution ---- */

typedef struct lora_matcher {
    const lf_lora_config *cfg;
    pcre2_code *target_re;                      /* target_regex, anchored at both ends (re.fullmatch) */
    pcre2_code *pat_re[2 * LF_LORA_MAX_PATTERNS]; /* "(.*\\.)?(" + key + ")$", anchored at start (re.match) */
    pcre2_match_data *md;
} lora_matcher;

static lf_status re_compile(const char *src, uint32_t opts, const char *what, pcre2_code **out, lf_err *err) {
    int ec;
    PCRE2_SIZE eo;
    *out = pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED, PCRE2_UTF | opts, &ec, &eo, NULL);
    if (!*out) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return lf_err_set(err, LF_EINVAL, "%s: bad regular expression \"%s\" at offset %zu: %s", what, src, (size_t)eo,
                          (const char *)msg);
    }
    return LF_OK;
}

static void matcher_free(lora_matcher *mt) {
    pcre2_code_free(mt->target_re);
    for (int i = 0; i < 2 * LF_LORA_MAX_PATTERNS; i++) pcre2_code_free(mt->pat_re[i]);
    pcre2_match_data_free(mt->md);
}

static lf_status matcher_init(lora_matcher *mt, const lf_lora_config *cfg, lf_err *err) {
    lf_status st = LF_OK;
    memset(mt, 0, sizeof *mt);
    mt->cfg = cfg;
    mt->md = pcre2_match_data_create(8, NULL);
    LF_CHECK_ALLOC(mt->md, err);
    if (cfg->target_regex[0] && strcasecmp(cfg->target_regex, "all-linear") != 0)
        LF_TRY(re_compile(cfg->target_regex, PCRE2_ANCHORED | PCRE2_ENDANCHORED, "target_modules", &mt->target_re, err));
    for (int i = 0; i < cfg->n_rank_pattern + cfg->n_alpha_pattern; i++) {
        const lf_lora_pattern *p = i < cfg->n_rank_pattern ? &cfg->rank_pattern[i]
                                                            : &cfg->alpha_pattern[i - cfg->n_rank_pattern];
        char src[LF_LORA_NAME_MAX + 16];
        snprintf(src, sizeof src, "(.*\\.)?(%s)$", p->key); /* peft.utils.other.get_pattern_key */
        LF_TRY(re_compile(src, PCRE2_ANCHORED, i < cfg->n_rank_pattern ? "rank_pattern key" : "alpha_pattern key",
                          &mt->pat_re[i], err));
    }
    return LF_OK;
fail:
    matcher_free(mt);
    return st ? st : LF_ENOMEM;
}

static int re_hit(const lora_matcher *mt, const pcre2_code *re, const char *name) {
    return pcre2_match(re, (PCRE2_SPTR)name, strlen(name), 0, 0, mt->md, NULL) >= 0;
}

static int ends_with_component(const char *name, const char *entry) {
    size_t n = strlen(name), e = strlen(entry);
    if (n == e) return strcmp(name, entry) == 0;
    return n > e && name[n - e - 1] == '.' && strcmp(name + n - e, entry) == 0;
}

/* PEFT check_target_module_exists for one module name. `m` is the module of a decoder linear, or -1. */
static int target_hit(const lora_matcher *mt, const char *name, int m) {
    const lf_lora_config *c = mt->cfg;
    if (c->target_regex[0]) {
        if (!mt->target_re) return m >= 0; /* "all-linear": every decoder linear (never lm_head) */
        return re_hit(mt, mt->target_re, name);
    }
    if (c->n_target_names > 0) {
        for (int i = 0; i < c->n_target_names; i++)
            if (ends_with_component(name, c->target_names[i])) return 1;
        return 0;
    }
    return m >= 0 && (c->target_mask >> m) & 1u;
}

/* PEFT (0.21) LoraModel._create_and_replace: rank and alpha are looked up separately, each with
 * get_pattern_key: the first key of that dict whose "(.*\.)?(key)$" matches the module name, else the name
 * itself; then dict.get(key, default). */
static void slot_rank_alpha(const lora_matcher *mt, const char *name, int64_t *R, double *alpha) {
    const lf_lora_config *c = mt->cfg;
    *R = c->r;
    *alpha = c->alpha;
    const char *rkey = name, *akey = name;
    for (int i = 0; i < c->n_rank_pattern; i++)
        if (re_hit(mt, mt->pat_re[i], name)) {
            rkey = c->rank_pattern[i].key;
            break;
        }
    for (int i = 0; i < c->n_alpha_pattern; i++)
        if (re_hit(mt, mt->pat_re[c->n_rank_pattern + i], name)) {
            akey = c->alpha_pattern[i].key;
            break;
        }
    for (int k = 0; k < c->n_rank_pattern; k++)
        if (!strcmp(c->rank_pattern[k].key, rkey)) {
            *R = (int64_t)c->rank_pattern[k].value;
            break;
        }
    for (int k = 0; k < c->n_alpha_pattern; k++)
        if (!strcmp(c->alpha_pattern[k].key, akey)) {
            *alpha = c->alpha_pattern[k].value;
            break;
        }
}

static void module_key(char *buf, size_t cap, int64_t l, lf_module m) {
    snprintf(buf, cap, "model.layers.%" PRId64 ".%s.%s", l, lf_module_parent(m), lf_module_name(m));
}

lf_status lf_lora_create(const lf_lora_config *cfg, const lf_model_config *mc, lf_lora_adapter **out, lf_err *err) {
    lf_status st = LF_OK;
    lf_lora_adapter *a = NULL;
    lora_matcher mt;
    int have_mt = 0;
    *out = NULL;
    LF_TRY(lf_lora_config_validate(cfg, err));
    if (mc->L <= 0 || mc->L > LF_MAX_LAYERS)
        return lf_err_set(err, LF_EINVAL, "LoRA: model has %" PRId64 " layers (1..%d supported)", mc->L, LF_MAX_LAYERS);
    LF_TRY(matcher_init(&mt, cfg, err));
    have_mt = 1;
    /* LoRA on the embeddings or the output head is not supported: refuse a target that selects them */
    static const char *const others[] = {"lm_head", "model.embed_tokens"};
    for (size_t i = 0; i < sizeof others / sizeof *others; i++)
        if (target_hit(&mt, others[i], -1)) {
            st = lf_err_set(err, LF_EUNSUPPORTED, "target_modules selects %s: LoRA on %s is not supported (only the "
                            "decoder linears q/k/v/o/gate/up/down_proj)", others[i], others[i]);
            goto fail;
        }
    a = calloc(1, sizeof *a);
    LF_CHECK_ALLOC(a, err);
    a->cfg = *cfg;
    a->L = mc->L;
    a->slots = calloc((size_t)(mc->L * LF_MOD_COUNT), sizeof *a->slots);
    LF_CHECK_ALLOC(a->slots, err);
    uint32_t mask = 0;
    int64_t off = 0;
    for (int64_t l = 0; l < mc->L; l++) {
        for (int m = 0; m < LF_MOD_COUNT; m++) {
            char name[128];
            module_key(name, sizeof name, l, (lf_module)m);
            if (!target_hit(&mt, name, m)) continue;
            lf_lora_slot *s = &a->slots[l * LF_MOD_COUNT + m];
            s->present = 1;
            lf_module_shape(mc, (lf_module)m, &s->OC, &s->IN);
            slot_rank_alpha(&mt, name, &s->R, &s->alpha);
            s->scaling = lf_lora_scaling(s->alpha, s->R, cfg->use_rslora);
            s->off_A = off;
            off += s->R * s->IN;
            s->off_B = off;
            off += s->OC * s->R;
            s->off_mag = -1;
            if (cfg->use_dora) {
                s->off_mag = off;
                off += s->OC;
            }
            a->n_slots++;
            mask |= 1u << m;
        }
    }
    if (a->n_slots == 0) {
        if (cfg->target_regex[0])
            st = lf_err_set(err, LF_EINVAL, "target_modules regex \"%s\" matches no decoder linear "
                            "(model.layers.N.self_attn.q_proj ...) of this %" PRId64 "-layer model", cfg->target_regex, mc->L);
        else if (cfg->n_target_names)
            st = lf_err_set(err, LF_EINVAL, "target_modules [\"%s\"%s] match no decoder linear of this model",
                            cfg->target_names[0], cfg->n_target_names > 1 ? ", ..." : "");
        else
            st = lf_err_set(err, LF_EINVAL, "LoRA config: no target modules");
        goto fail;
    }
    a->cfg.target_mask = mask;
    a->n_params = off;
    a->params = calloc((size_t)off, sizeof(float));
    if (!a->params) {
        st = lf_err_set(err, LF_ENOMEM, "LoRA: out of memory for %" PRId64 " parameters", off);
        goto fail;
    }
    for (int64_t i = 0; i < mc->L * LF_MOD_COUNT; i++) {
        lf_lora_slot *s = &a->slots[i];
        if (!s->present) continue;
        s->A = a->params + s->off_A;
        s->B = a->params + s->off_B;
        s->mag = s->off_mag >= 0 ? a->params + s->off_mag : NULL;
    }
    matcher_free(&mt);
    *out = a;
    return LF_OK;
fail:
    if (have_mt) matcher_free(&mt);
    lf_lora_free(a);
    return st ? st : LF_ENOMEM;
}

void lf_lora_free(lf_lora_adapter *a) {
    if (!a) return;
    free(a->params);
    free(a->grad);
    free(a->adam_m);
    free(a->adam_v);
    free(a->slots);
    free(a);
}

const lf_lora_slot *lf_lora_get(const lf_lora_adapter *a, int64_t l, lf_module m) {
    if (!a || l < 0 || l >= a->L || (unsigned)m >= LF_MOD_COUNT) return NULL;
    const lf_lora_slot *s = &a->slots[l * LF_MOD_COUNT + m];
    return s->present ? s : NULL;
}

lf_lora_slot *lf_lora_get_mut(lf_lora_adapter *a, int64_t l, lf_module m) {
    return (lf_lora_slot *)lf_lora_get(a, l, m);
}

lf_status lf_lora_alloc_grads(lf_lora_adapter *a, int with_adam, lf_err *err) {
    size_t n = a->n_params > 0 ? (size_t)a->n_params : 1;
    if (!a->grad && !(a->grad = calloc(n, sizeof(float)))) goto oom;
    if (with_adam) {
        if (!a->adam_m && !(a->adam_m = calloc(n, sizeof(float)))) goto oom;
        if (!a->adam_v && !(a->adam_v = calloc(n, sizeof(float)))) goto oom;
    }
    return LF_OK;
oom:
    return lf_err_set(err, LF_ENOMEM, "LoRA: out of memory for gradient/optimizer buffers of %" PRId64 " floats",
                      a->n_params);
}

void lf_lora_zero_grads(lf_lora_adapter *a) {
    if (a->grad) memset(a->grad, 0, (size_t)a->n_params * sizeof(float));
}

/* ---- init ---- */

static void fill_uniform(lf_rng *rng, float *p, int64_t n, double bound) {
    for (int64_t i = 0; i < n; i++) p[i] = (float)((2.0 * lf_rng_uniform_f64(rng) - 1.0) * bound);
}

void lf_lora_init_peft(lf_lora_adapter *a, uint64_t seed) {
    lf_rng rng;
    lf_rng_seed(&rng, seed);
    for (int64_t i = 0; i < a->L * LF_MOD_COUNT; i++) {
        lf_lora_slot *s = &a->slots[i];
        if (!s->present) continue;
        int64_t nA = s->R * s->IN, nB = s->OC * s->R;
        if (a->cfg.init == LF_LORA_INIT_GAUSSIAN) {
            for (int64_t k = 0; k < nA; k++) s->A[k] = (float)(lf_rng_normal(&rng) / (double)s->R);
        } else {
            /* kaiming_uniform_(a=sqrt(5)): gain sqrt(2/(1+5)), bound = gain*sqrt(3/fan_in) = 1/sqrt(C) */
            fill_uniform(&rng, s->A, nA, 1.0 / sqrt((double)s->IN));
        }
        if (a->cfg.init == LF_LORA_INIT_RANDOM) fill_uniform(&rng, s->B, nB, 1.0 / sqrt((double)s->R));
        else memset(s->B, 0, (size_t)nB * sizeof(float));
        if (s->mag) memset(s->mag, 0, (size_t)s->OC * sizeof(float));
    }
}

void lf_lora_dora_norm_ref(float *norm, const float *W_rows, const float *A, const float *B_rows, int64_t n,
                           int64_t C, int64_t R, double scaling) {
    const float sc = (float)scaling;
    for (int64_t o = 0; o < n; o++) {
        double ss = 0.0;
        for (int64_t i = 0; i < C; i++) {
            double d = 0.0;
            for (int64_t r = 0; r < R; r++) d += (double)B_rows[o * R + r] * (double)A[r * C + i];
            double w = (double)W_rows[o * C + i] + (double)sc * d;
            ss += w * w;
        }
        norm[o] = (float)sqrt(ss);
    }
}

lf_status lf_lora_init_dora_magnitude(lf_lora_adapter *a, int64_t l, lf_module m, const float *W_rows, lf_err *err) {
    lf_lora_slot *s = lf_lora_get_mut(a, l, m);
    if (!s) return lf_err_set(err, LF_EINVAL, "DoRA init: layer %" PRId64 " %s has no adapter", l, lf_module_name(m));
    if (!s->mag) return lf_err_set(err, LF_EINVAL, "DoRA init: adapter is not DoRA (use_dora false)");
    lf_lora_dora_norm_ref(s->mag, W_rows, s->A, s->B, s->OC, s->IN, s->R, s->scaling);
    return LF_OK;
}

lf_status lf_lora_init_dora(lf_lora_adapter *a, lf_lora_rows_fn rows_fn, void *ctx, lf_err *err) {
    enum { CHUNK = 64 };
    lf_status st = LF_OK;
    float *scratch = NULL;
    if (!a->cfg.use_dora) return LF_OK;
    int64_t max_in = 0;
    for (int64_t i = 0; i < a->L * LF_MOD_COUNT; i++)
        if (a->slots[i].present && a->slots[i].IN > max_in) max_in = a->slots[i].IN;
    scratch = malloc((size_t)(CHUNK * max_in) * sizeof(float));
    LF_CHECK_ALLOC(scratch, err);
    for (int64_t i = 0; i < a->L * LF_MOD_COUNT; i++) {
        lf_lora_slot *s = &a->slots[i];
        if (!s->present) continue;
        int64_t l = i / LF_MOD_COUNT;
        lf_module m = (lf_module)(i % LF_MOD_COUNT);
        for (int64_t r0 = 0; r0 < s->OC; r0 += CHUNK) {
            int64_t n = s->OC - r0 < CHUNK ? s->OC - r0 : CHUNK;
            lf_status cs = rows_fn(ctx, l, m, r0, n, scratch, err);
            if (cs) {
                st = lf_err_wrap(err, cs, "DoRA init: base rows %" PRId64 "..%" PRId64 " of layer %" PRId64 " %s", r0,
                                 r0 + n - 1, l, lf_module_name(m));
                goto fail;
            }
            lf_lora_dora_norm_ref(s->mag + r0, scratch, s->A, s->B + r0 * s->R, n, s->IN, s->R, s->scaling);
        }
    }
    free(scratch);
    return LF_OK;
fail:
    free(scratch);
    return st ? st : LF_ENOMEM;
}

/* ---- reference math ---- */

void lf_lora_forward_ref(float *out, const float *x, int64_t T, int64_t C, int64_t OC, int64_t R, const float *A,
                         const float *B, double scaling, float *h) {
    const float sc = (float)scaling;
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * C;
        float *ht = h + t * R;
        for (int64_t r = 0; r < R; r++) {
            float acc = 0.0f;
            for (int64_t i = 0; i < C; i++) acc += xt[i] * A[r * C + i];
            ht[r] = acc;
        }
        float *ot = out + t * OC;
        for (int64_t o = 0; o < OC; o++) {
            float acc = 0.0f;
            for (int64_t r = 0; r < R; r++) acc += B[o * R + r] * ht[r];
            ot[o] += acc * sc; /* PEFT: lora_B(lora_A(x)) * scaling */
        }
    }
}

void lf_lora_dora_combine_ref(float *y, const float *wx, const float *lora, const float *mag, const float *norm,
                              int64_t T, int64_t OC) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t o = 0; o < OC; o++) {
            float s = mag[o] / norm[o];
            y[t * OC + o] += (s - 1.0f) * wx[t * OC + o] + s * lora[t * OC + o];
        }
}

void lf_lora_merge_ref(float *W, int64_t OC, int64_t C, int64_t R, const float *A, const float *B, double scaling,
                       const float *mag) {
    const float sc = (float)scaling;
    for (int64_t o = 0; o < OC; o++) {
        float *w = W + o * C;
        double ss = 0.0;
        for (int64_t i = 0; i < C; i++) {
            float d = 0.0f;
            for (int64_t r = 0; r < R; r++) d += B[o * R + r] * A[r * C + i];
            w[i] += d * sc; /* delta = (B @ A) * scaling, then W + delta */
            ss += (double)w[i] * (double)w[i];
        }
        if (mag) {
            float f = mag[o] / (float)sqrt(ss);
            for (int64_t i = 0; i < C; i++) w[i] *= f;
        }
    }
}

lf_status lf_lora_merge_weight(const lf_lora_adapter *a, int64_t l, lf_module m, float *W, lf_err *err) {
    const lf_lora_slot *s = lf_lora_get(a, l, m);
    if (!s) return lf_err_set(err, LF_EINVAL, "LoRA merge: layer %" PRId64 " %s has no adapter", l, lf_module_name(m));
    lf_lora_merge_ref(W, s->OC, s->IN, s->R, s->A, s->B, s->scaling, s->mag);
    return LF_OK;
}
