/* elementwise_backward.c - training ops that work row by row or element by element: the backward of swiglu,
 * rmsnorm and rope, axpy (y += alpha x), and the fused cross-entropy forward + backward.
 *
 * Accumulation rule (kernels/backend.h): swiglu_backward and rmsnorm_backward ADD into their d* outputs (NULL
 * outputs are skipped); axpy adds into y; rope_backward and crossentropy_forward_backward overwrite.
 *
 *   swiglu:  s = sigmoid(g), silu = g s, dsilu/dg = s (1 + g (1 - s));
 *            dgate += dout * up * dsilu/dg,  dup += dout * silu.
 *   rmsnorm: y = w * (x r), r = 1/sqrt(mean(x^2) + eps) (weight frozen):
 *            dx = r (w dy) - x r^3 (sum_c w dy x) / C.
 *   rope:    the forward turns each pair (x[i], x[i+D/2]) by angle a; its Jacobian is a rotation, so the
 *            gradient turns (dy[i], dy[i+D/2]) by -a: dx[i] = dy[i] c + dy[i+D/2] s, dx[i+D/2] = dy[i+D/2] c -
 *            dy[i] s, with c, s = cosf, sinf of the forward's f32 angle (float)pos * inv_freq[i].
 *   crossentropy: per row, lse = m + log(sum exp(x - m)) (m = row max), loss = lse - x[target],
 *            dlogits = (exp(x - lse) - onehot(target)) * dscale; target -100 -> loss 0 and a zero row.
 *
 * The refs work in double (rope in f32, the fast path's exact arithmetic) and are the spec; the fast paths
 * use f32 with lf_cpu_exp8 (about 2 ulp) or expf, and spread rows / element chunks over the pool. Element
 * ops allow an output to alias an input at the same index (each index is read before it is written). */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"

#define EB_GRAIN (1 << 16) /* elements per chunk for the memory-bound element ops */

/* ==== references ==== */

void lf_cpu_swiglu_backward_ref(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                                int64_t N) {
    for (int64_t i = 0; i < N; i++) {
        const double g = gate[i], u = up[i], dy = dout[i];
        const double s = 1.0 / (1.0 + exp(-g));
        if (dgate) dgate[i] = (float)((double)dgate[i] + dy * u * s * (1.0 + g * (1.0 - s)));
        if (dup) dup[i] = (float)((double)dup[i] + dy * g * s);
    }
}

void lf_cpu_axpy_ref(float *y, const float *x, float alpha, int64_t N) {
    for (int64_t i = 0; i < N; i++) y[i] = (float)((double)y[i] + (double)alpha * (double)x[i]);
}

void lf_cpu_rmsnorm_backward_ref(float *dinp, const float *dout, const float *inp, const float *weight, int64_t T,
                                 int64_t C, float eps) {
    for (int64_t t = 0; t < T; t++) {
        const float *x = inp + t * C, *dy = dout + t * C;
        double ss = 0.0, dot = 0.0;
        for (int64_t c = 0; c < C; c++) {
            ss += (double)x[c] * (double)x[c];
            dot += (double)weight[c] * (double)dy[c] * (double)x[c];
        }
        const double r = 1.0 / sqrt(ss / (double)C + (double)eps), coef = r * r * r * dot / (double)C;
        for (int64_t c = 0; c < C; c++)
            dinp[t * C + c] =
                (float)((double)dinp[t * C + c] + r * (double)weight[c] * (double)dy[c] - coef * (double)x[c]);
    }
}

void lf_cpu_rope_backward_ref(float *dx, const int32_t *pos, const float *inv_freq, int64_t T, int64_t NH, int64_t D) {
    const int64_t half = D / 2;
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < NH; h++) {
            float *v = dx + (t * NH + h) * D;
            for (int64_t i = 0; i < half; i++) {
                float a = (float)pos[t] * inv_freq[i];
                float c = cosf(a), s = sinf(a);
                float y0 = v[i], y1 = v[i + half];
                v[i] = y0 * c + y1 * s;
                v[i + half] = y1 * c - y0 * s;
            }
        }
}

/* LF_OK when every target is -100 or in [0, V); else LF_EINVAL naming the first bad row. */
static lf_status ce_check(const int32_t *targets, int64_t R, int64_t V, lf_err *err) {
    if (R < 0 || V < 1)
        return lf_err_set(err, LF_EINVAL, "crossentropy: bad size R=%lld V=%lld", (long long)R, (long long)V);
    for (int64_t r = 0; r < R; r++)
        if (targets[r] != -100 && (targets[r] < 0 || (int64_t)targets[r] >= V))
            return lf_err_set(err, LF_EINVAL, "crossentropy: targets[%lld]=%d is outside [0, V=%lld) and not -100",
                              (long long)r, (int)targets[r], (long long)V);
    return LF_OK;
}

lf_status lf_cpu_crossentropy_forward_backward_ref(float *losses, float *dlogits, const float *logits,
                                                   const int32_t *targets, int64_t R, int64_t V, float dscale,
                                                   lf_err *err) {
    lf_status st = ce_check(targets, R, V, err);
    if (st != LF_OK) return st;
    for (int64_t r = 0; r < R; r++) {
        const float *x = logits + r * V;
        float *dl = dlogits ? dlogits + r * V : NULL;
        if (targets[r] == -100) {
            if (losses) losses[r] = 0.0f;
            if (dl)
                for (int64_t v = 0; v < V; v++) dl[v] = 0.0f;
            continue;
        }
        double m = -INFINITY, s = 0.0;
        for (int64_t v = 0; v < V; v++)
            if (x[v] > m) m = x[v];
        for (int64_t v = 0; v < V; v++) s += exp((double)x[v] - m);
        const double lse = m + log(s), xt = x[targets[r]];
        if (losses) losses[r] = (float)(lse - xt);
        if (dl) /* x[v] is read before dl[v] is written: dlogits may alias logits */
            for (int64_t v = 0; v < V; v++)
                dl[v] = (float)((exp((double)x[v] - lse) - (v == targets[r] ? 1.0 : 0.0)) * (double)dscale);
    }
    return LF_OK;
}

/* ==== fast paths ==== */

/* ---- swiglu_backward ---- */

typedef struct {
    float *dgate, *dup;
    const float *dout, *gate, *up;
    float alpha;
    int simd;
} eb_job;

#ifdef LF_CPU_X86
static LF_CPU_AVX2 void swiglu_bwd_avx2(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                                        int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 8) {
        const __m256i mask = lf_cpu_mask8(n - i < 8 ? n - i : 8);
        const __m256 g = _mm256_maskload_ps(gate + i, mask), u = _mm256_maskload_ps(up + i, mask);
        const __m256 dy = _mm256_maskload_ps(dout + i, mask);
        const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, lf_cpu_exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
        if (dgate) {
            __m256 ds = _mm256_mul_ps(s, _mm256_add_ps(one, _mm256_mul_ps(g, _mm256_sub_ps(one, s))));
            __m256 r = _mm256_add_ps(_mm256_maskload_ps(dgate + i, mask), _mm256_mul_ps(_mm256_mul_ps(dy, u), ds));
            _mm256_maskstore_ps(dgate + i, mask, r);
        }
        if (dup) {
            __m256 r = _mm256_add_ps(_mm256_maskload_ps(dup + i, mask), _mm256_mul_ps(dy, _mm256_mul_ps(g, s)));
            _mm256_maskstore_ps(dup + i, mask, r);
        }
    }
}
#endif

static void swiglu_bwd_chunk(void *vjob, int64_t b, int64_t e, int tid) {
    (void)tid;
    const eb_job *j = (const eb_job *)vjob;
#ifdef LF_CPU_X86
    if (j->simd) {
        swiglu_bwd_avx2(j->dgate ? j->dgate + b : NULL, j->dup ? j->dup + b : NULL, j->dout + b, j->gate + b, j->up + b,
                        e - b);
        return;
    }
#endif
    for (int64_t i = b; i < e; i++) {
        const float g = j->gate[i], u = j->up[i], dy = j->dout[i];
        const float s = 1.0f / (1.0f + expf(-g));
        if (j->dgate) j->dgate[i] += dy * u * (s * (1.0f + g * (1.0f - s)));
        if (j->dup) j->dup[i] += dy * (g * s);
    }
}

lf_status lf_cpu_swiglu_backward(lf_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                                 const float *up, int64_t N) {
    if (N < 0) return lf_err_set(&be->err, LF_EINVAL, "swiglu_backward: negative N=%lld", (long long)N);
    if (!dgate && !dup) return LF_OK;
    eb_job job = {.dgate = dgate, .dup = dup, .dout = dout, .gate = gate, .up = up, .simd = lf_cpu_simd()};
    lf_cpu_parallel_for(be, N, EB_GRAIN / 8, swiglu_bwd_chunk, &job); /* exp + div: ~8x a plain add */
    return LF_OK;
}

/* ---- axpy ---- */

#ifdef LF_CPU_X86
static LF_CPU_AVX2 void axpy_avx2(float *y, const float *x, float alpha, int64_t n) {
    const __m256 a = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = fmaf(alpha, x[i], y[i]);
}
#endif

static void axpy_chunk(void *vjob, int64_t b, int64_t e, int tid) {
    (void)tid;
    const eb_job *j = (const eb_job *)vjob;
    float *y = j->dgate;
    const float *x = j->dout;
#ifdef LF_CPU_X86
    if (j->simd) {
        axpy_avx2(y + b, x + b, j->alpha, e - b);
        return;
    }
#endif
    for (int64_t i = b; i < e; i++) y[i] += j->alpha * x[i];
}

lf_status lf_cpu_axpy(lf_backend *be, float *y, const float *x, float alpha, int64_t N) {
    if (N < 0) return lf_err_set(&be->err, LF_EINVAL, "axpy: negative N=%lld", (long long)N);
    eb_job job = {.dgate = y, .dout = x, .alpha = alpha, .simd = lf_cpu_simd()};
    lf_cpu_parallel_for(be, N, EB_GRAIN, axpy_chunk, &job);
    return LF_OK;
}

/* ---- rmsnorm_backward ---- */

typedef struct {
    float *dinp;
    const float *dout, *inp, *weight;
    int64_t C;
    float eps;
    int simd;
} rmsb_job;

#ifdef LF_CPU_X86
static LF_CPU_AVX2 void rmsb_row_avx2(float *dx, const float *dy, const float *x, const float *w, int64_t C,
                                      float eps) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, d0 = s0, d1 = s0;
    int64_t c = 0;
    for (; c + 16 <= C; c += 16) {
        __m256 a = _mm256_loadu_ps(x + c), b = _mm256_loadu_ps(x + c + 8);
        s0 = _mm256_fmadd_ps(a, a, s0);
        s1 = _mm256_fmadd_ps(b, b, s1);
        d0 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(w + c), _mm256_loadu_ps(dy + c)), a, d0);
        d1 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(w + c + 8), _mm256_loadu_ps(dy + c + 8)), b, d1);
    }
    float ss = lf_cpu_hsum8(_mm256_add_ps(s0, s1)), dot = lf_cpu_hsum8(_mm256_add_ps(d0, d1));
    for (; c < C; c++) {
        ss += x[c] * x[c];
        dot += w[c] * dy[c] * x[c];
    }
    const float r = 1.0f / sqrtf(ss / (float)C + eps), coef = r * r * r * dot / (float)C;
    const __m256 rv = _mm256_set1_ps(r), cv = _mm256_set1_ps(coef);
    for (c = 0; c + 8 <= C; c += 8) {
        __m256 g = _mm256_mul_ps(rv, _mm256_mul_ps(_mm256_loadu_ps(w + c), _mm256_loadu_ps(dy + c)));
        g = _mm256_fnmadd_ps(cv, _mm256_loadu_ps(x + c), g);
        _mm256_storeu_ps(dx + c, _mm256_add_ps(_mm256_loadu_ps(dx + c), g));
    }
    for (; c < C; c++) dx[c] += r * (w[c] * dy[c]) - coef * x[c];
}
#endif

static void rmsb_row_port(float *dx, const float *dy, const float *x, const float *w, int64_t C, float eps) {
    float s[8] = {0}, d[8] = {0};
    int64_t c = 0;
    for (; c + 8 <= C; c += 8)
        for (int i = 0; i < 8; i++) {
            s[i] += x[c + i] * x[c + i];
            d[i] += w[c + i] * dy[c + i] * x[c + i];
        }
    float ss = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    float dot = ((d[0] + d[1]) + (d[2] + d[3])) + ((d[4] + d[5]) + (d[6] + d[7]));
    for (; c < C; c++) {
        ss += x[c] * x[c];
        dot += w[c] * dy[c] * x[c];
    }
    const float r = 1.0f / sqrtf(ss / (float)C + eps), coef = r * r * r * dot / (float)C;
    for (c = 0; c < C; c++) dx[c] += r * (w[c] * dy[c]) - coef * x[c];
}

static void rmsb_chunk(void *vjob, int64_t t0, int64_t t1, int tid) {
    (void)tid;
    const rmsb_job *j = (const rmsb_job *)vjob;
    const int64_t C = j->C;
    for (int64_t t = t0; t < t1; t++) {
#ifdef LF_CPU_X86
        if (j->simd) {
            rmsb_row_avx2(j->dinp + t * C, j->dout + t * C, j->inp + t * C, j->weight, C, j->eps);
            continue;
        }
#endif
        rmsb_row_port(j->dinp + t * C, j->dout + t * C, j->inp + t * C, j->weight, C, j->eps);
    }
}

lf_status lf_cpu_rmsnorm_backward(lf_backend *be, float *dinp, const float *dout, const float *inp, const float *weight,
                                  int64_t T, int64_t C, float eps) {
    if (T < 0 || C < 1)
        return lf_err_set(&be->err, LF_EINVAL, "rmsnorm_backward: bad size T=%lld C=%lld", (long long)T, (long long)C);
    if (!dinp) return LF_OK;
    rmsb_job job = {
        .dinp = dinp, .dout = dout, .inp = inp, .weight = weight, .C = C, .eps = eps, .simd = lf_cpu_simd()};
    lf_cpu_parallel_for(be, T, lf_cpu_grain(3 * C, 1 << 15), rmsb_chunk, &job);
    return LF_OK;
}

/* ---- rope_backward ---- */

typedef struct {
    float *dx;
    const int32_t *pos;
    const float *inv_freq;
    int64_t NH, D;
    int simd;
} ropeb_job;

#ifdef LF_CPU_X86
static LF_CPU_AVX2 void ropeb_head_avx2(float *v, const float *cs, const float *sn, int64_t half) {
    int64_t i = 0;
    for (; i + 8 <= half; i += 8) { /* mul + mul + add/sub, no FMA: the ref's roundings */
        __m256 c = _mm256_loadu_ps(cs + i), s = _mm256_loadu_ps(sn + i);
        __m256 y0 = _mm256_loadu_ps(v + i), y1 = _mm256_loadu_ps(v + i + half);
        _mm256_storeu_ps(v + i, _mm256_add_ps(_mm256_mul_ps(y0, c), _mm256_mul_ps(y1, s)));
        _mm256_storeu_ps(v + i + half, _mm256_sub_ps(_mm256_mul_ps(y1, c), _mm256_mul_ps(y0, s)));
    }
    for (; i < half; i++) {
        float y0 = v[i], y1 = v[i + half];
        v[i] = y0 * cs[i] + y1 * sn[i];
        v[i + half] = y1 * cs[i] - y0 * sn[i];
    }
}
#endif

static void ropeb_head_port(float *v, const float *cs, const float *sn, int64_t half) {
    for (int64_t i = 0; i < half; i++) {
        float y0 = v[i], y1 = v[i + half];
        v[i] = y0 * cs[i] + y1 * sn[i];
        v[i + half] = y1 * cs[i] - y0 * sn[i];
    }
}

static void ropeb_chunk(void *vjob, int64_t t0, int64_t t1, int tid) {
    (void)tid;
    const ropeb_job *j = (const ropeb_job *)vjob;
    const int64_t half = j->D / 2;
    float cs[LF_CPU_MAX_HEAD_DIM / 2], sn[LF_CPU_MAX_HEAD_DIM / 2];
    for (int64_t t = t0; t < t1; t++) {
        for (int64_t i = 0; i < half; i++) {
            float a = (float)j->pos[t] * j->inv_freq[i];
            cs[i] = cosf(a);
            sn[i] = sinf(a);
        }
        for (int64_t h = 0; h < j->NH; h++) {
            float *v = j->dx + (t * j->NH + h) * j->D;
#ifdef LF_CPU_X86
            if (j->simd) {
                ropeb_head_avx2(v, cs, sn, half);
                continue;
            }
#endif
            ropeb_head_port(v, cs, sn, half);
        }
    }
}

lf_status lf_cpu_rope_backward(lf_backend *be, float *dx, const int32_t *pos, const float *inv_freq, int64_t T,
                               int64_t NH, int64_t D) {
    if (T < 0 || NH < 0 || D < 2 || D % 2 != 0 || D > LF_CPU_MAX_HEAD_DIM)
        return lf_err_set(&be->err, LF_EINVAL, "rope_backward: bad size T=%lld NH=%lld D=%lld (D must be even, 2..%d)",
                          (long long)T, (long long)NH, (long long)D, LF_CPU_MAX_HEAD_DIM);
    ropeb_job job = {.dx = dx, .pos = pos, .inv_freq = inv_freq, .NH = NH, .D = D, .simd = lf_cpu_simd()};
    lf_cpu_parallel_for(be, T, lf_cpu_grain(NH * D + 40 * D, 1 << 14), ropeb_chunk, &job);
    return LF_OK;
}

/* ---- crossentropy_forward_backward ---- */

typedef struct {
    float *losses, *dlogits;
    const float *logits;
    const int32_t *targets;
    int64_t V;
    float dscale;
    int simd;
} ce_job;

#ifdef LF_CPU_X86
/* Row max and sum(exp(x - max)) in f32. */
static LF_CPU_AVX2 void ce_stats_avx2(const float *x, int64_t V, float *pm, float *ps) {
    __m256 mv = _mm256_set1_ps(-INFINITY);
    int64_t v = 0;
    for (; v + 8 <= V; v += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + v));
    float m = lf_cpu_hmax8(mv);
    for (; v < V; v++) m = x[v] > m ? x[v] : m;
    const __m256 mb = _mm256_set1_ps(m);
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    for (v = 0; v + 16 <= V; v += 16) {
        s0 = _mm256_add_ps(s0, lf_cpu_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + v), mb)));
        s1 = _mm256_add_ps(s1, lf_cpu_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + v + 8), mb)));
    }
    if (v < V) {
        const __m256i m0 = lf_cpu_mask8(V - v < 8 ? V - v : 8), m1 = lf_cpu_mask8(V - v > 8 ? V - v - 8 : 0);
        /* masked-off lanes load 0 and give exp(0 - m); zero them with the mask */
        s0 = _mm256_add_ps(
            s0, _mm256_and_ps(_mm256_castsi256_ps(m0), lf_cpu_exp8(_mm256_sub_ps(_mm256_maskload_ps(x + v, m0), mb))));
        s1 = _mm256_add_ps(s1, _mm256_and_ps(_mm256_castsi256_ps(m1),
                                             lf_cpu_exp8(_mm256_sub_ps(_mm256_maskload_ps(x + v + 8, m1), mb))));
    }
    *pm = m;
    *ps = lf_cpu_hsum8(_mm256_add_ps(s0, s1));
}

/* dl[v] = exp(x[v] - lse) * dscale (dl may alias x). */
static LF_CPU_AVX2 void ce_grad_avx2(float *dl, const float *x, int64_t V, float lse, float dscale) {
    const __m256 lb = _mm256_set1_ps(lse), sb = _mm256_set1_ps(dscale);
    for (int64_t v = 0; v < V; v += 8) {
        const __m256i mask = lf_cpu_mask8(V - v < 8 ? V - v : 8);
        __m256 p = lf_cpu_exp8(_mm256_sub_ps(_mm256_maskload_ps(x + v, mask), lb));
        _mm256_maskstore_ps(dl + v, mask, _mm256_mul_ps(p, sb));
    }
}
#endif

static void ce_chunk(void *vjob, int64_t r0, int64_t r1, int tid) {
    (void)tid;
    const ce_job *j = (const ce_job *)vjob;
    const int64_t V = j->V;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = j->logits + r * V;
        float *dl = j->dlogits ? j->dlogits + r * V : NULL;
        const int32_t tg = j->targets[r];
        if (tg == -100) {
            if (j->losses) j->losses[r] = 0.0f;
            if (dl)
                for (int64_t v = 0; v < V; v++) dl[v] = 0.0f;
            continue;
        }
        float m, s;
#ifdef LF_CPU_X86
        if (j->simd)
            ce_stats_avx2(x, V, &m, &s);
        else
#endif
        {
            m = -INFINITY;
            for (int64_t v = 0; v < V; v++) m = x[v] > m ? x[v] : m;
            float s8[8] = {0};
            int64_t v = 0;
            for (; v + 8 <= V; v += 8)
                for (int i = 0; i < 8; i++) s8[i] += expf(x[v + i] - m);
            s = ((s8[0] + s8[1]) + (s8[2] + s8[3])) + ((s8[4] + s8[5]) + (s8[6] + s8[7]));
            for (; v < V; v++) s += expf(x[v] - m);
        }
        const float lse = m + logf(s), xt = x[tg];
        if (j->losses) j->losses[r] = lse - xt;
        if (!dl) continue;
#ifdef LF_CPU_X86
        if (j->simd)
            ce_grad_avx2(dl, x, V, lse, j->dscale);
        else
#endif
            for (int64_t v = 0; v < V; v++) dl[v] = expf(x[v] - lse) * j->dscale;
        dl[tg] -= j->dscale; /* p dscale - dscale: exact when p >= 1/2 (Sterbenz), else within an ulp of dscale */
    }
}

lf_status lf_cpu_crossentropy_forward_backward(lf_backend *be, float *losses, float *dlogits, const float *logits,
                                               const int32_t *targets, int64_t R, int64_t V, float dscale) {
    if (R > 0 && (!logits || !targets))
        return lf_err_set(&be->err, LF_EINVAL, "crossentropy: logits or targets is NULL (R=%lld)", (long long)R);
    lf_status st = ce_check(targets, R, V, &be->err);
    if (st != LF_OK) return st;
    ce_job job = {.losses = losses,
                  .dlogits = dlogits,
                  .logits = logits,
                  .targets = targets,
                  .V = V,
                  .dscale = dscale,
                  .simd = lf_cpu_simd()};
    lf_cpu_parallel_for(be, R, lf_cpu_grain(8 * V, 1 << 15), ce_chunk, &job);
    return LF_OK;
}
