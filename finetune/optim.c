/* optim.c - AdamW (torch 2.15 single-tensor arithmetic), deterministic gradient norm + clipping, state files.
 *
 * Floating point: every a*b+c that torch fuses is written as fmaf(); every other expression is split so that
 * no compiler contraction (clang's default -ffp-contract=on, GCC's fast mode outside ISO C) can change it: one
 * rounding per statement. See optim.h for the formulas and their torch origin. */
#include "finetune/optim.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define LF_OPTIM_GRAIN 4096           /* elements per AdamW work item: big enough to amortize the pool */
#define LF_OPTIM_NORM_SERIAL (1 << 16) /* below this many elements the norm runs on the caller */

lf_adamw_cfg lf_adamw_default_cfg(void) {
    lf_adamw_cfg c = {.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 1e-2};
    return c;
}

lf_status lf_adamw_check(const lf_adamw_cfg *cfg, lf_err *err) {
    if (!cfg) return lf_err_set(err, LF_EINVAL, "adamw: NULL config");
    /* torch.optim.AdamW raises ValueError for the same ranges (0 <= beta < 1, eps >= 0, weight_decay >= 0) */
    if (!(cfg->beta1 >= 0.0 && cfg->beta1 < 1.0))
        return lf_err_set(err, LF_EINVAL, "adamw: beta1 = %g, must be in [0, 1)", cfg->beta1);
    if (!(cfg->beta2 >= 0.0 && cfg->beta2 < 1.0))
        return lf_err_set(err, LF_EINVAL, "adamw: beta2 = %g, must be in [0, 1)", cfg->beta2);
    if (!(cfg->eps >= 0.0) || isinf(cfg->eps)) return lf_err_set(err, LF_EINVAL, "adamw: eps = %g, must be >= 0 and finite", cfg->eps);
    if (!(cfg->weight_decay >= 0.0) || isinf(cfg->weight_decay))
        return lf_err_set(err, LF_EINVAL, "adamw: weight_decay = %g, must be >= 0 and finite", cfg->weight_decay);
    return LF_OK;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* AdamW */

/* The per-step scalars, computed once in f64 exactly as torch's Python code does, then rounded to f32 the way
 * ATen turns a Python float Scalar into a float operand. */
typedef struct adamw_consts {
    float decay;   /* f32(1 - lr*wd) */
    float omb1;     /* f32(1 - beta1): exp_avg.lerp_(grad, 1 - beta1)'s weight */
    float lw, lb;   /* the lerp's coefficient and which base: (omb1, 0 = m) when |omb1| < 0.5, else (omb1 - 1, 1 = g) */
    float b2, omb2; /* f32(beta2), f32(1 - beta2) */
    float bc2_sqrt; /* f32(sqrt(1 - beta2^t)) */
    float eps;      /* f32(eps) */
    float neg_step; /* f32(-(lr / (1 - beta1^t))) */
} adamw_consts;

static adamw_consts adamw_make_consts(const lf_adamw_cfg *cfg, double lr, int64_t t) {
    adamw_consts c;
    double step = (double)t; /* torch: step_t is an f32 tensor, .item() -> Python float; exact below 2^24 */
    double bc1 = 1.0 - pow(cfg->beta1, step);
    double bc2 = 1.0 - pow(cfg->beta2, step);
    double lrwd = lr * cfg->weight_decay;
    double step_size = lr / bc1;
    c.decay = (float)(1.0 - lrwd);
    c.omb1 = (float)(1.0 - cfg->beta1);
    /* ATen's lerp (aten/src/ATen/native/Lerp.h, LerpKernel.cpp): weight small (|w| < 0.5) -> fma(w, end - self,
     * self), else fma(w - 1, end - self, end); the vector and scalar kernels agree (both contract). */
    if (fabsf(c.omb1) < 0.5f) {
        c.lw = c.omb1;
        c.lb = 0.0f;
    } else {
        c.lw = c.omb1 - 1.0f;
        c.lb = 1.0f;
    }
    c.b2 = (float)cfg->beta2;
    c.omb2 = (float)(1.0 - cfg->beta2);
    c.bc2_sqrt = (float)sqrt(bc2);
    c.eps = (float)cfg->eps;
    c.neg_step = (float)(-step_size);
    return c;
}

/* The element update over [b, e); one rounding per statement (fmaf: one rounding for the fused pair). */
static void adamw_range(const adamw_consts *c, float *p, const float *g, float *m, float *v, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) {
        float gi = g[i];
        float pi = p[i] * c->decay;
        float mi = fmaf(c->lw, gi - m[i], c->lb != 0.0f ? gi : m[i]);
        float vb = v[i] * c->b2;
        float sg = c->omb2 * gi;
        float vi = fmaf(sg, gi, vb);
        float sq = sqrtf(vi);
        float q = sq / c->bc2_sqrt;
        float d = q + c->eps;
        float num = c->neg_step * mi;
        float upd = num / d;
        p[i] = pi + upd;
        m[i] = mi;
        v[i] = vi;
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define LF_OPTIM_HAVE_AVX2 1
/* The same statements on 8 lanes (AVX2 + FMA): every intrinsic is one IEEE operation with one rounding
 * (mul, fmadd, sqrt, div, add), so each lane equals adamw_range bit for bit; the tail runs adamw_range. */
__attribute__((target("avx2,fma"))) static void adamw_range_avx2(const adamw_consts *c, float *p, const float *g, float *m,
                                                                 float *v, int64_t b, int64_t e) {
    const __m256 decay = _mm256_set1_ps(c->decay), lw = _mm256_set1_ps(c->lw);
    const int lerp_from_g = c->lb != 0.0f;
    const __m256 b2 = _mm256_set1_ps(c->b2), omb2 = _mm256_set1_ps(c->omb2), bc2 = _mm256_set1_ps(c->bc2_sqrt);
    const __m256 eps = _mm256_set1_ps(c->eps), neg_step = _mm256_set1_ps(c->neg_step);
    int64_t i = b;
    for (; i + 8 <= e; i += 8) {
        __m256 gi = _mm256_loadu_ps(g + i);
        __m256 pi = _mm256_mul_ps(_mm256_loadu_ps(p + i), decay);
        __m256 m0 = _mm256_loadu_ps(m + i);
        __m256 mi = _mm256_fmadd_ps(lw, _mm256_sub_ps(gi, m0), lerp_from_g ? gi : m0);
        __m256 vi = _mm256_fmadd_ps(_mm256_mul_ps(omb2, gi), gi, _mm256_mul_ps(_mm256_loadu_ps(v + i), b2));
        __m256 d = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bc2), eps);
        __m256 upd = _mm256_div_ps(_mm256_mul_ps(neg_step, mi), d);
        _mm256_storeu_ps(p + i, _mm256_add_ps(pi, upd));
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
    }
    adamw_range(c, p, g, m, v, i, e);
}

static int have_avx2_fma(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
static int have_avx2_fma(void) { return 0; }
#endif

static int g_simd = -1; /* -1: not probed yet; set once by the owner thread before any parallel_for */

int lf_adamw_simd_active(void) {
    if (g_simd < 0) g_simd = have_avx2_fma();
    return g_simd;
}

void lf_adamw_set_simd(int enabled) { g_simd = enabled ? have_avx2_fma() : 0; }

void lf_adamw_step_ref(const lf_adamw_cfg *cfg, double lr, int64_t t, float *p, const float *g, float *m, float *v,
                       int64_t n) {
    adamw_consts c = adamw_make_consts(cfg, lr, t);
    for (int64_t i = 0; i < n; i++) {
        /* torch, statement by statement (f32 tensors, f64 Python scalars) */
        p[i] = p[i] * c.decay;                      /* param.mul_(1 - lr * weight_decay) */
        float dm = g[i] - m[i];                     /* exp_avg.lerp_(grad, 1 - beta1): end - self */
        m[i] = fmaf(c.lw, dm, c.lb != 0.0f ? g[i] : m[i]); /* w*(end-self) + self (or (w-1)*(..) + end), fused */
        float vb = v[i] * c.b2;                     /* exp_avg_sq.mul_(beta2) */
        float sg = c.omb2 * g[i];                   /* .addcmul_(grad, grad, value=1 - beta2): */
        v[i] = fmaf(sg, g[i], vb);                  /*   self + (value*t1)*t2, fused */
        float sq = sqrtf(v[i]);                     /* exp_avg_sq.sqrt() */
        float q = sq / c.bc2_sqrt;                  /* / bias_correction2_sqrt */
        float d = q + c.eps;                        /* .add_(eps) */
        float num = c.neg_step * m[i];              /* param.addcdiv_(exp_avg, denom, value=-step_size): */
        float upd = num / d;                        /*   self + (value*t1)/t2 */
        p[i] = p[i] + upd;
    }
}

typedef struct adamw_job {
    adamw_consts c;
    float *p, *m, *v;
    const float *g;
    int simd; /* use adamw_range_avx2 (same results, 8 lanes at a time) */
} adamw_job;

static void adamw_worker(void *ctx, int64_t b, int64_t e, int tid) {
    (void)tid;
    adamw_job *j = (adamw_job *)ctx;
#ifdef LF_OPTIM_HAVE_AVX2
    if (j->simd) {
        adamw_range_avx2(&j->c, j->p, j->g, j->m, j->v, b, e);
        return;
    }
#endif
    adamw_range(&j->c, j->p, j->g, j->m, j->v, b, e);
}

lf_status lf_adamw_step(lf_pool *pool, const lf_adamw_cfg *cfg, double lr, int64_t t, float *p, const float *g,
                        float *m, float *v, int64_t n, lf_err *err) {
    lf_status st = lf_adamw_check(cfg, err);
    if (st) return st;
    if (!(lr >= 0.0) || isinf(lr)) return lf_err_set(err, LF_EINVAL, "adamw: learning rate %g, must be >= 0 and finite", lr);
    if (t < 1) return lf_err_set(err, LF_EINVAL, "adamw: step number t = %" PRId64 ", must be >= 1 (1 for the first step)", t);
    if (n < 0) return lf_err_set(err, LF_EINVAL, "adamw: n = %" PRId64 " elements, must be >= 0", n);
    if (n > 0 && (!p || !g || !m || !v))
        return lf_err_set(err, LF_EINVAL, "adamw: NULL array (p %s, g %s, m %s, v %s) for %" PRId64 " elements",
                          p ? "ok" : "NULL", g ? "ok" : "NULL", m ? "ok" : "NULL", v ? "ok" : "NULL", n);
    adamw_job j = {.c = adamw_make_consts(cfg, lr, t), .p = p, .m = m, .v = v, .g = g};
    j.simd = lf_adamw_simd_active();
    lf_pool_parallel_for(pool, n, LF_OPTIM_GRAIN, adamw_worker, &j);
    return LF_OK;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* gradient norm */

/* floor(n*k/P) without overflowing int64 */
static int64_t part_begin(int64_t n, int64_t k) {
    return (n / LF_OPTIM_NORM_PARTS) * k + (n % LF_OPTIM_NORM_PARTS) * k / LF_OPTIM_NORM_PARTS;
}

/* Sum of squares over [b, e): 4 accumulators by (i - b) % 4, combined (a0 + a1) + (a2 + a3). A float squared
 * is exact in f64 (48 significant bits), so only the additions round. */
static double sumsq_range(const float *g, int64_t b, int64_t e) {
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
    int64_t i = b;
    for (; i + 4 <= e; i += 4) {
        double x0 = (double)g[i], x1 = (double)g[i + 1], x2 = (double)g[i + 2], x3 = (double)g[i + 3];
        double s0 = x0 * x0, s1 = x1 * x1, s2 = x2 * x2, s3 = x3 * x3;
        a0 = a0 + s0;
        a1 = a1 + s1;
        a2 = a2 + s2;
        a3 = a3 + s3;
    }
    double *acc[4] = {&a0, &a1, &a2, &a3};
    for (int r = 0; i < e; i++, r++) {
        double x = (double)g[i];
        double s = x * x;
        *acc[r] = *acc[r] + s;
    }
    double lo = a0 + a1, hi = a2 + a3;
    return lo + hi;
}

double lf_grad_norm_ref(const float *g, int64_t n) {
    double total = 0.0;
    for (int64_t k = 0; k < LF_OPTIM_NORM_PARTS; k++) total = total + sumsq_range(g, part_begin(n, k), part_begin(n, k + 1));
    return sqrt(total);
}

typedef struct norm_job {
    const float *g;
    int64_t n;
    double *partial; /* [LF_OPTIM_NORM_PARTS] */
} norm_job;

static void norm_worker(void *ctx, int64_t b, int64_t e, int tid) {
    (void)tid;
    norm_job *j = (norm_job *)ctx;
    for (int64_t k = b; k < e; k++) j->partial[k] = sumsq_range(j->g, part_begin(j->n, k), part_begin(j->n, k + 1));
}

double lf_grad_norm(lf_pool *pool, const float *g, int64_t n) {
    if (n <= 0 || !g) return 0.0;
    double partial[LF_OPTIM_NORM_PARTS];
    norm_job j = {.g = g, .n = n, .partial = partial};
    /* small inputs: one work item on the caller (same partition, so the same value) */
    int64_t grain = n < LF_OPTIM_NORM_SERIAL ? LF_OPTIM_NORM_PARTS : 1;
    lf_pool_parallel_for(pool, LF_OPTIM_NORM_PARTS, grain, norm_worker, &j);
    double total = 0.0;
    for (int k = 0; k < LF_OPTIM_NORM_PARTS; k++) total = total + partial[k];
    return sqrt(total);
}

typedef struct scale_job {
    float *g;
    float coef;
} scale_job;

static void scale_worker(void *ctx, int64_t b, int64_t e, int tid) {
    (void)tid;
    scale_job *j = (scale_job *)ctx;
    for (int64_t i = b; i < e; i++) j->g[i] = j->g[i] * j->coef;
}

lf_status lf_grad_clip(lf_pool *pool, float *g, int64_t n, double max_norm, float *total_norm, float *coef,
                       lf_err *err) {
    if (!(max_norm > 0.0))
        return lf_err_set(err, LF_EINVAL, "clip_grad_norm: max_norm = %g, must be > 0 (no clipping: use lf_grad_norm)",
                          max_norm);
    if (n < 0 || (n > 0 && !g)) return lf_err_set(err, LF_EINVAL, "clip_grad_norm: bad gradient array (n = %" PRId64 ")", n);
    float tn = (float)lf_grad_norm(pool, g, n);
    float den = tn + 1e-6f;                /* total_norm + 1e-6 (f32 tensor + Python scalar) */
    float rcp = 1.0f / den;                /* Tensor.__rdiv__: self.reciprocal() * other */
    float c = rcp * (float)max_norm;
    if (c > 1.0f) c = 1.0f;                /* torch.clamp(max=1.0); NaN compares false and stays NaN */
    if (c != 1.0f) {                       /* g * 1.0f == g bit for bit, so skipping the pass changes nothing */
        scale_job j = {.g = g, .coef = c};
        lf_pool_parallel_for(pool, n, LF_OPTIM_GRAIN, scale_worker, &j);
    }
    if (total_norm) *total_norm = tn;
    if (coef) *coef = c;
    return LF_OK;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* state files */

#define LF_OPTIM_NAME_MAX 512

static lf_status state_name(char *out, const char *prefix, const char *name, lf_err *err) {
    int k = snprintf(out, LF_OPTIM_NAME_MAX, "%s%s", prefix ? prefix : "", name);
    if (k < 0 || k >= LF_OPTIM_NAME_MAX)
        return lf_err_set(err, LF_EINVAL, "optimizer state: tensor name prefix '%.64s...' is too long", prefix);
    return LF_OK;
}

lf_status lf_adamw_state_add(lf_st_writer *w, const char *prefix, const float *m, const float *v, int64_t n,
                             const int64_t *step, lf_err *err) {
    lf_status st = LF_OK;
    char name[LF_OPTIM_NAME_MAX];
    if (!w || !step || n < 0 || (n > 0 && (!m || !v)))
        return lf_err_set(err, LF_EINVAL, "optimizer state: bad arguments to lf_adamw_state_add (n = %" PRId64 ")", n);
    if (*step < 0) return lf_err_set(err, LF_EINVAL, "optimizer state: step = %" PRId64 " is negative", *step);
    int64_t shape[1] = {n};
    LF_TRY(state_name(name, prefix, "exp_avg", err));
    LF_TRY(lf_st_writer_add(w, name, LF_DTYPE_F32, 1, shape, m, err));
    LF_TRY(state_name(name, prefix, "exp_avg_sq", err));
    LF_TRY(lf_st_writer_add(w, name, LF_DTYPE_F32, 1, shape, v, err));
    LF_TRY(state_name(name, prefix, "step", err));
    LF_TRY(lf_st_writer_add(w, name, LF_DTYPE_I64, 0, NULL, step, err));
    return LF_OK;
fail:
    return st;
}

static lf_status find_vec(const lf_st_file *f, const char *name, int64_t n, const lf_st_tensor **out, lf_err *err) {
    const lf_st_tensor *t = lf_st_find(f, name);
    if (!t) return lf_err_set(err, LF_ENOTFOUND, "%s: optimizer state has no tensor '%s'", lf_st_path(f), name);
    if (t->dtype != LF_DTYPE_F32 || t->ndim != 1 || t->shape[0] != n)
        return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s' is %s rank %d [%" PRId64 "...], expected F32 [%" PRId64 "]",
                          lf_st_path(f), name, lf_dtype_name(t->dtype), t->ndim, t->ndim ? t->shape[0] : 0, n);
    *out = t;
    return LF_OK;
}

lf_status lf_adamw_state_read(const lf_st_file *f, const char *prefix, float *m, float *v, int64_t n, int64_t *step,
                              lf_err *err) {
    lf_status st = LF_OK;
    char name[LF_OPTIM_NAME_MAX];
    const lf_st_tensor *tm = NULL, *tv = NULL, *ts = NULL;
    if (!f || !step || n < 0 || (n > 0 && (!m || !v)))
        return lf_err_set(err, LF_EINVAL, "optimizer state: bad arguments to lf_adamw_state_read (n = %" PRId64 ")", n);
    LF_TRY(state_name(name, prefix, "exp_avg", err));
    LF_TRY(find_vec(f, name, n, &tm, err));
    LF_TRY(state_name(name, prefix, "exp_avg_sq", err));
    LF_TRY(find_vec(f, name, n, &tv, err));
    LF_TRY(state_name(name, prefix, "step", err));
    ts = lf_st_find(f, name);
    if (!ts) return lf_err_set(err, LF_ENOTFOUND, "%s: optimizer state has no tensor '%s'", lf_st_path(f), name);
    if (ts->dtype != LF_DTYPE_I64 || ts->numel != 1 || ts->ndim > 1)
        return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s' is %s rank %d with %" PRId64 " elements, expected one I64",
                          lf_st_path(f), name, lf_dtype_name(ts->dtype), ts->ndim, ts->numel);
    int64_t s;
    memcpy(&s, ts->data, sizeof s); /* safetensors is little-endian, as every host we build for */
    if (s < 0) return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s' = %" PRId64 " is negative", lf_st_path(f), name, s);
    const float *vs = (const float *)tv->data;
    for (int64_t i = 0; i < n; i++) {
        float x;
        memcpy(&x, vs + i, sizeof x); /* data may be unaligned in files other writers ordered differently */
        if (x < 0.0f)
            return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s'[%" PRId64 "] = %g is negative (second moments are >= 0)",
                              lf_st_path(f), tv->name, i, (double)x);
    }
    if (n > 0) {
        memcpy(m, tm->data, (size_t)n * sizeof(float));
        memcpy(v, tv->data, (size_t)n * sizeof(float));
    }
    *step = s;
    return LF_OK;
fail:
    return st;
}

lf_status lf_adamw_state_save(const char *path, const float *m, const float *v, int64_t n, int64_t step,
                              lf_err *err) {
    lf_status st = LF_OK;
    lf_st_writer *w = NULL;
    if (!path) return lf_err_set(err, LF_EINVAL, "optimizer state: NULL path");
    w = lf_st_writer_create();
    LF_CHECK_ALLOC(w, err);
    LF_TRY(lf_st_writer_set_meta(w, "format", "loraforge.adamw", err));
    LF_TRY(lf_st_writer_set_meta(w, "version", "1", err));
    LF_TRY(lf_adamw_state_add(w, "", m, v, n, &step, err)); /* step lives until the write below returns */
    LF_TRY(lf_st_writer_write(w, path, err));
    lf_st_writer_free(w);
    return LF_OK;
fail:
    lf_st_writer_free(w);
    return lf_err_wrap(err, st ? st : LF_ENOMEM, "%s: saving optimizer state", path);
}

lf_status lf_adamw_state_load(const char *path, float *m, float *v, int64_t n, int64_t *step, lf_err *err) {
    lf_status st = LF_OK;
    lf_st_file *f = NULL;
    if (!path) return lf_err_set(err, LF_EINVAL, "optimizer state: NULL path");
    LF_TRY(lf_st_open(path, &f, err));
    const char *fmt = lf_st_meta(f, "format");
    if (fmt && strcmp(fmt, "loraforge.adamw") != 0) {
        st = lf_err_set(err, LF_EFORMAT, "%s: __metadata__ format is '%s', expected 'loraforge.adamw'", path, fmt);
        goto fail;
    }
    LF_TRY(lf_adamw_state_read(f, "", m, v, n, step, err));
    lf_st_close(f);
    return LF_OK;
fail:
    lf_st_close(f);
    return st;
}
