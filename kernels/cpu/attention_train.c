/* attention_train.c - causal grouped-query attention over the training sequence itself (no cache), forward
 * with the log-sum-exp kept, and its backward.
 *
 * q[T,H,D]; k, v [T,KH,D]; out, dout [T,H,D]; lse [T,H]. Sequences may be packed: query t attends keys j with
 *   lo(t) = max(t - pos[t], t - window + 1 if window > 0) <= j <= t,
 * so a row whose pos restarts at 0 never sees the previous row. pos[t] must lie in [0, t] (LF_EINVAL else);
 * H must be a multiple of KH; query head h uses KV head g = h / (H/KH).
 *   forward:  s_j = scale (q . k_j), out = sum_j softmax(s)_j v_j (softmax in f32 with max subtraction, as HF
 *             eager attention), lse = log sum_j exp(s_j) (natural log).
 *   backward: P_j = exp(s_j - lse), dP_j = dout . v_j, Dt = dout . out, dS_j = P_j (dP_j - Dt);
 *             dq += scale sum_j dS_j k_j,  dk_j += scale sum_(t,h) dS_j q,  dv_j += sum_(t,h) P_j dout.
 * Accumulation rule: dq, dk, dv are gradients and ADD (+=); NULL ones are skipped. out and lse are outputs
 * (overwritten); lse may be NULL in the forward.
 *
 * Fast forward: online softmax over blocks of ATT_BK keys per (t, h) work item, as attention.c (an f32 running
 * max, one rescale per block that raises it), with lse = m + log(l) at the end.
 * Fast backward, two race-free passes that recompute the scores (flash-attention style, nothing T x T is
 * stored):
 *   pass 1, items (t, h): owns dq[t,h]; walks its keys in blocks of 8 (vector exp of the block).
 *   pass 2, items (block of bk <= ATB_BK keys, g): owns dk/dv of those keys; walks the queries that see the
 *           block (t from the block's first key; when t - pos[t] never decreases, as for packed rows, it stops
 *           at the first query of a later row or past the window) and every head of the group, summing into
 *           f32 accumulators in the thread's scratch (2 x bk x D floats) that are added to dk/dv once at the
 *           end, so the old values see one rounding, not one per query. AVX2: per query, P and dS of up to
 *           ATB_HG heads of the group first, then each key's accumulator row takes all those heads at once.
 * AVX2 dot products go 4 keys at a time (one load of q or dout per 4 FMAs, one hadd tree for 4 sums) and
 * probability-weighted row sums 4 rows at a time (the accumulator is loaded and stored once per 4 rows).
 * Each (query, key) pair is thus scored twice; the extra D-length dot products cost ~40% over a fused
 * kernel but need no atomics and no per-thread dk/dv copies.
 * The refs are plain double loops (forward two-pass; backward per query for dq, per key for dk/dv). */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"

#define ATT_BK 32 /* forward: keys per online-softmax block */
#define ATB_KB 8  /* backward pass 1: keys per exp block (one ymm) */
#define ATB_BK 16 /* backward pass 2: keys per work item at most (fewer when 2 x keys x D exceeds the scratch) */
#define ATB_HG 8  /* backward pass 2: heads of a KV group handled together */
_Static_assert(LF_CPU_SCRATCH_FLOATS >= 2 * LF_CPU_MAX_HEAD_DIM, "pass 2 needs one key's dk and dv in the scratch");

static lf_status attt_check(const char *op, const int32_t *pos, int64_t T, int64_t H, int64_t KH, int64_t D,
                            lf_err *err) {
    if (T < 0 || H < 1 || KH < 1 || D < 1)
        return lf_err_set(err, LF_EINVAL, "%s: bad size T=%lld H=%lld KH=%lld D=%lld", op, (long long)T, (long long)H,
                          (long long)KH, (long long)D);
    if (H % KH != 0)
        return lf_err_set(err, LF_EINVAL, "%s: H=%lld is not a multiple of KH=%lld", op, (long long)H, (long long)KH);
    if (D > LF_CPU_MAX_HEAD_DIM)
        return lf_err_set(err, LF_EINVAL, "%s: head dim D=%lld exceeds the CPU backend's limit %d", op, (long long)D,
                          LF_CPU_MAX_HEAD_DIM);
    if (T > 0 && !pos) return lf_err_set(err, LF_EINVAL, "%s: pos is NULL", op);
    for (int64_t t = 0; t < T; t++)
        if (pos[t] < 0 || (int64_t)pos[t] > t)
            return lf_err_set(err, LF_EINVAL,
                              "%s: pos[%lld]=%d is outside [0, %lld] (a row cannot start before the sequence)", op,
                              (long long)t, (int)pos[t], (long long)t);
    return LF_OK;
}

/* First key query t attends. */
static inline int64_t attt_lo(const int32_t *pos, int64_t t, int64_t window) {
    int64_t lo = t - pos[t];
    if (window > 0 && t - window + 1 > lo) lo = t - window + 1;
    return lo;
}

/* ==== references ==== */

lf_status lf_cpu_attention_train_forward_ref(float *out, float *lse, const float *q, const float *k, const float *v,
                                             const int32_t *pos, int64_t T, int64_t H, int64_t KH, int64_t D,
                                             int64_t window, float scale, lf_err *err) {
    lf_status st = attt_check("attention_train_forward", pos, T, H, KH, D, err);
    if (st != LF_OK) return st;
    const int64_t group = H / KH;
    double acc[LF_CPU_MAX_HEAD_DIM];
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            const float *qv = q + (t * H + h) * D;
            /* the mask written out rather than through attt_lo, so the ref checks the fast path's */
            int64_t lo = t - pos[t];
            if (window > 0 && t - window + 1 > lo) lo = t - window + 1;
            const int64_t g = h / group;
            double m = -INFINITY;
            for (int64_t j = lo; j <= t; j++) {
                double s = 0.0;
                for (int64_t d = 0; d < D; d++) s += (double)qv[d] * (double)k[(j * KH + g) * D + d];
                s *= (double)scale;
                if (s > m) m = s;
            }
            double l = 0.0;
            for (int64_t d = 0; d < D; d++) acc[d] = 0.0;
            for (int64_t j = lo; j <= t; j++) {
                double s = 0.0;
                for (int64_t d = 0; d < D; d++) s += (double)qv[d] * (double)k[(j * KH + g) * D + d];
                double e = exp(s * (double)scale - m);
                l += e;
                for (int64_t d = 0; d < D; d++) acc[d] += e * (double)v[(j * KH + g) * D + d];
            }
            for (int64_t d = 0; d < D; d++) out[(t * H + h) * D + d] = (float)(acc[d] / l);
            if (lse) lse[t * H + h] = (float)(m + log(l));
        }
    return LF_OK;
}

/* P and dS of query (t, h) against key j, in double, from the forward's lse and out. */
static void ref_pds(const float *dout, const float *q, const float *k, const float *v, const float *out,
                    const float *lse, int64_t t, int64_t h, int64_t j, int64_t H, int64_t KH, int64_t D, float scale,
                    double *p, double *ds) {
    const int64_t g = h / (H / KH);
    const float *qv = q + (t * H + h) * D, *dov = dout + (t * H + h) * D, *ov = out + (t * H + h) * D;
    const float *kv = k + (j * KH + g) * D, *vv = v + (j * KH + g) * D;
    double s = 0.0, dp = 0.0, dt = 0.0;
    for (int64_t d = 0; d < D; d++) {
        s += (double)qv[d] * (double)kv[d];
        dp += (double)dov[d] * (double)vv[d];
        dt += (double)dov[d] * (double)ov[d];
    }
    *p = exp(s * (double)scale - (double)lse[t * H + h]);
    *ds = *p * (dp - dt);
}

lf_status lf_cpu_attention_backward_ref(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                        const float *k, const float *v, const float *out, const float *lse,
                                        const int32_t *pos, int64_t T, int64_t H, int64_t KH, int64_t D, int64_t window,
                                        float scale, lf_err *err) {
    lf_status st = attt_check("attention_backward", pos, T, H, KH, D, err);
    if (st != LF_OK) return st;
    const int64_t group = H / KH;
    double a1[LF_CPU_MAX_HEAD_DIM], a2[LF_CPU_MAX_HEAD_DIM];
    /* dq[t,h] = scale sum_j dS_j k_j, per query */
    for (int64_t t = 0; dq && t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            const int64_t g = h / group;
            for (int64_t d = 0; d < D; d++) a1[d] = 0.0;
            for (int64_t j = attt_lo(pos, t, window); j <= t; j++) {
                double p, ds;
                ref_pds(dout, q, k, v, out, lse, t, h, j, H, KH, D, scale, &p, &ds);
                for (int64_t d = 0; d < D; d++) a1[d] += ds * (double)k[(j * KH + g) * D + d];
            }
            for (int64_t d = 0; d < D; d++)
                dq[(t * H + h) * D + d] = (float)((double)dq[(t * H + h) * D + d] + (double)scale * a1[d]);
        }
    /* dk[j,g] = scale sum dS q, dv[j,g] = sum P dout, per key over every query and head that attends it */
    for (int64_t j = 0; (dk || dv) && j < T; j++)
        for (int64_t g = 0; g < KH; g++) {
            for (int64_t d = 0; d < D; d++) a1[d] = a2[d] = 0.0;
            for (int64_t t = j; t < T; t++) {
                if (attt_lo(pos, t, window) > j) continue;
                for (int64_t h = g * group; h < (g + 1) * group; h++) {
                    double p, ds;
                    ref_pds(dout, q, k, v, out, lse, t, h, j, H, KH, D, scale, &p, &ds);
                    for (int64_t d = 0; d < D; d++) {
                        a1[d] += ds * (double)q[(t * H + h) * D + d];
                        a2[d] += p * (double)dout[(t * H + h) * D + d];
                    }
                }
            }
            for (int64_t d = 0; d < D; d++) {
                const int64_t i = (j * KH + g) * D + d;
                if (dk) dk[i] = (float)((double)dk[i] + (double)scale * a1[d]);
                if (dv) dv[i] = (float)((double)dv[i] + a2[d]);
            }
        }
    return LF_OK;
}

/* ==== fast forward ==== */

typedef struct {
    float *out, *lse;
    const float *q, *k, *v;
    const int32_t *pos;
    int64_t H, KH, D, window;
    float scale;
    int simd;
} attf_job;

static inline float dot_port(const float *a, const float *b, int64_t D) {
    float s4[4] = {0};
    int64_t d = 0;
    for (; d + 4 <= D; d += 4)
        for (int i = 0; i < 4; i++) s4[i] += a[d + i] * b[d + i];
    float s = (s4[0] + s4[1]) + (s4[2] + s4[3]);
    for (; d < D; d++) s += a[d] * b[d];
    return s;
}

/* y[D] += a x[D] */
static inline void axpy_port(float *y, float a, const float *x, int64_t D) {
    for (int64_t d = 0; d < D; d++) y[d] += a * x[d];
}

#ifdef LF_CPU_X86
#define ATT_AVX2_INLINE static inline __attribute__((always_inline)) LF_CPU_AVX2

ATT_AVX2_INLINE float dot_avx2(const float *a, const float *b, int64_t D) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t d = 0;
    for (; d + 16 <= D; d += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 8), _mm256_loadu_ps(b + d + 8), s1);
    }
    if (d + 8 <= D) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), s0);
        d += 8;
    }
    float s = lf_cpu_hsum8(_mm256_add_ps(s0, s1));
    for (; d < D; d++) s += a[d] * b[d];
    return s;
}

ATT_AVX2_INLINE void axpy_avx2(float *y, float a, const float *x, int64_t D) {
    const __m256 av = _mm256_set1_ps(a);
    int64_t d = 0;
    for (; d + 8 <= D; d += 8)
        _mm256_storeu_ps(y + d, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + d), _mm256_loadu_ps(y + d)));
    for (; d < D; d++) y[d] += a * x[d];
}

/* out[i] = x . r[i] for 4 rows (one load of x per 4 FMAs, one hadd tree for the 4 sums; D % 8 by masked loads). */
ATT_AVX2_INLINE void dot4_avx2(float out[4], const float *x, const float *r0, const float *r1, const float *r2,
                               const float *r3, int64_t D) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) {
        const __m256 xv = _mm256_loadu_ps(x + d);
        a0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(r0 + d), a0);
        a1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(r1 + d), a1);
        a2 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(r2 + d), a2);
        a3 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(r3 + d), a3);
    }
    if (d < D) {
        const __m256i m = lf_cpu_mask8(D - d);
        const __m256 xv = _mm256_maskload_ps(x + d, m);
        a0 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(r0 + d, m), a0);
        a1 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(r1 + d, m), a1);
        a2 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(r2 + d, m), a2);
        a3 = _mm256_fmadd_ps(xv, _mm256_maskload_ps(r3 + d, m), a3);
    }
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}

/* out[jj] = x . row(jj) for jj < n, row(jj) = base + jj * stride: 4 rows at a time. */
ATT_AVX2_INLINE void dots_avx2(float *out, const float *x, const float *base, int64_t stride, int64_t n, int64_t D) {
    int64_t jj = 0;
    for (; jj + 4 <= n; jj += 4) {
        const float *r = base + jj * stride;
        dot4_avx2(out + jj, x, r, r + stride, r + 2 * stride, r + 3 * stride, D);
    }
    for (; jj < n; jj++) out[jj] = dot_avx2(x, base + jj * stride, D);
}

/* y[D] += sum_{i<n} c[i] * x[i][D]: y is loaded and stored once for all n rows. */
ATT_AVX2_INLINE void axpys_ptr_avx2(float *y, const float *c, const float *const *x, int64_t n, int64_t D) {
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) {
        __m256 a = _mm256_loadu_ps(y + d);
        for (int64_t i = 0; i < n; i++) a = _mm256_fmadd_ps(_mm256_set1_ps(c[i]), _mm256_loadu_ps(x[i] + d), a);
        _mm256_storeu_ps(y + d, a);
    }
    for (; d < D; d++)
        for (int64_t i = 0; i < n; i++) y[d] += c[i] * x[i][d];
}

/* y[D] += sum_{i<n} c[i] * x_i[D] with x_i = base + i * stride: y is loaded and stored once per 4 rows. */
ATT_AVX2_INLINE void axpys_avx2(float *y, const float *c, const float *base, int64_t stride, int64_t n, int64_t D) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float *x0 = base + i * stride, *x1 = x0 + stride, *x2 = x1 + stride, *x3 = x2 + stride;
        const __m256 c0 = _mm256_set1_ps(c[i]), c1 = _mm256_set1_ps(c[i + 1]), c2 = _mm256_set1_ps(c[i + 2]),
                     c3 = _mm256_set1_ps(c[i + 3]);
        int64_t d = 0;
        for (; d + 8 <= D; d += 8) {
            __m256 a = _mm256_fmadd_ps(c0, _mm256_loadu_ps(x0 + d), _mm256_loadu_ps(y + d));
            a = _mm256_fmadd_ps(c1, _mm256_loadu_ps(x1 + d), a);
            a = _mm256_fmadd_ps(c2, _mm256_loadu_ps(x2 + d), a);
            _mm256_storeu_ps(y + d, _mm256_fmadd_ps(c3, _mm256_loadu_ps(x3 + d), a));
        }
        for (; d < D; d++) y[d] += c[i] * x0[d] + c[i + 1] * x1[d] + c[i + 2] * x2[d] + c[i + 3] * x3[d];
    }
    for (; i < n; i++) axpy_avx2(y, c[i], base + i * stride, D);
}

static LF_CPU_AVX2 void attf_item_avx2(const attf_job *J, int64_t t, int64_t h) {
    const int64_t D = J->D, KH = J->KH, g = h / (J->H / KH), lo = attt_lo(J->pos, t, J->window);
    const int64_t D8 = D & ~(int64_t)7;
    const float *qv = J->q + (t * J->H + h) * D;
    float acc[LF_CPU_MAX_HEAD_DIM] __attribute__((aligned(32)));
    float sc[ATT_BK] __attribute__((aligned(32)));
    for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int64_t j0 = lo; j0 <= t; j0 += ATT_BK) {
        const int64_t n = (t + 1 - j0) < ATT_BK ? (t + 1 - j0) : ATT_BK;
        float bm = -INFINITY;
        dots_avx2(sc, qv, J->k + (j0 * KH + g) * D, KH * D, n, D);
        for (int64_t jj = 0; jj < n; jj++) {
            const float s = sc[jj] * J->scale;
            sc[jj] = s;
            if (s > bm) bm = s;
        }
        /* rescale what was accumulated under the old max, then exponentiate the chunk's scores */
        lf_cpu_att_rescale(acc, D, D8, &m, &l, bm);
        lf_cpu_att_exp_shift(sc, n, m);
        for (int64_t jj = 0; jj < n; jj++) l += sc[jj];
        axpys_avx2(acc, sc, J->v + (j0 * KH + g) * D, KH * D, n, D);
    }
    float *o = J->out + (t * J->H + h) * D;
    const float inv = 1.0f / l;
    for (int64_t d = 0; d < D; d++) o[d] = acc[d] * inv;
    if (J->lse) J->lse[t * J->H + h] = m + logf(l);
}
#endif

static void attf_item_port(const attf_job *J, int64_t t, int64_t h) {
    const int64_t D = J->D, KH = J->KH, g = h / (J->H / KH), lo = attt_lo(J->pos, t, J->window);
    const float *qv = J->q + (t * J->H + h) * D;
    float acc[LF_CPU_MAX_HEAD_DIM], sc[ATT_BK];
    for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int64_t j0 = lo; j0 <= t; j0 += ATT_BK) {
        const int64_t n = (t + 1 - j0) < ATT_BK ? (t + 1 - j0) : ATT_BK;
        float bm = -INFINITY;
        for (int64_t jj = 0; jj < n; jj++) {
            float s = dot_port(qv, J->k + ((j0 + jj) * KH + g) * D, D) * J->scale;
            sc[jj] = s;
            if (s > bm) bm = s;
        }
        if (bm > m) {
            const float corr = expf(m - bm);
            for (int64_t d = 0; d < D; d++) acc[d] *= corr;
            l *= corr;
            m = bm;
        }
        for (int64_t jj = 0; jj < n; jj++) {
            const float e = expf(sc[jj] - m);
            l += e;
            axpy_port(acc, e, J->v + ((j0 + jj) * KH + g) * D, D);
        }
    }
    float *o = J->out + (t * J->H + h) * D;
    const float inv = 1.0f / l;
    for (int64_t d = 0; d < D; d++) o[d] = acc[d] * inv;
    if (J->lse) J->lse[t * J->H + h] = m + logf(l);
}

static void attf_chunk(void *vjob, int64_t b, int64_t e, int tid) {
    (void)tid;
    const attf_job *J = (const attf_job *)vjob;
    for (int64_t it = b; it < e; it++) {
        const int64_t t = it / J->H, h = it % J->H;
#ifdef LF_CPU_X86
        if (J->simd) {
            attf_item_avx2(J, t, h);
            continue;
        }
#endif
        attf_item_port(J, t, h);
    }
}

/* Keys one query sees at most (for the grain). */
static int64_t attt_span(const int32_t *pos, int64_t T, int64_t window) {
    int64_t span = 1;
    for (int64_t t = 0; t < T; t++) {
        int64_t n = t - attt_lo(pos, t, window) + 1;
        if (n > span) span = n;
    }
    return span;
}

lf_status lf_cpu_attention_train_forward(lf_backend *be, float *out, float *lse, const float *q, const float *k,
                                         const float *v, const int32_t *pos, int64_t T, int64_t H, int64_t KH,
                                         int64_t D, int64_t window, float scale) {
    lf_status st = attt_check("attention_train_forward", pos, T, H, KH, D, &be->err);
    if (st != LF_OK) return st;
    attf_job job = {.out = out,
                    .lse = lse,
                    .q = q,
                    .k = k,
                    .v = v,
                    .pos = pos,
                    .H = H,
                    .KH = KH,
                    .D = D,
                    .window = window,
                    .scale = scale,
                    .simd = lf_cpu_simd()};
    const int64_t span = attt_span(pos, T, window);
    lf_cpu_parallel_for(be, T * H, lf_cpu_grain(span * D * 4, 1 << 15), attf_chunk, &job);
    return LF_OK;
}

/* ==== fast backward ==== */

typedef struct {
    float *dq, *dk, *dv;
    const float *dout, *q, *k, *v, *out, *lse;
    const int32_t *pos;
    int64_t T, H, KH, D, window;
    float scale;
    int64_t bk; /* keys per pass-2 item */
    int mono;   /* t - pos[t] never decreases: the queries that see a key are contiguous */
    int simd;
    lf_backend *be; /* for the scratch */
} attb_job;

/* ---- pass 1: dq of query (t, h) ---- */

#ifdef LF_CPU_X86
static LF_CPU_AVX2 void attb_dq_avx2(const attb_job *J, int64_t t, int64_t h) {
    const int64_t D = J->D, KH = J->KH, g = h / (J->H / KH), lo = attt_lo(J->pos, t, J->window);
    const int64_t it = t * J->H + h;
    const float *qv = J->q + it * D, *dov = J->dout + it * D;
    const float Dt = dot_avx2(dov, J->out + it * D, D);
    const __m256 lv = _mm256_set1_ps(J->lse[it]), dtv = _mm256_set1_ps(Dt), sv = _mm256_set1_ps(J->scale);
    float acc[LF_CPU_MAX_HEAD_DIM] __attribute__((aligned(32)));
    float sc[ATB_KB] __attribute__((aligned(32))) = {0}, dp[ATB_KB] __attribute__((aligned(32))) = {0};
    for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
    for (int64_t j0 = lo; j0 <= t; j0 += ATB_KB) {
        const int64_t n = (t + 1 - j0) < ATB_KB ? (t + 1 - j0) : ATB_KB;
        dots_avx2(sc, qv, J->k + (j0 * KH + g) * D, KH * D, n, D);
        dots_avx2(dp, dov, J->v + (j0 * KH + g) * D, KH * D, n, D);
        const __m256 p = lf_cpu_exp8(_mm256_fmsub_ps(_mm256_load_ps(sc), sv, lv));
        _mm256_store_ps(sc, _mm256_mul_ps(p, _mm256_sub_ps(_mm256_load_ps(dp), dtv))); /* dS */
        axpys_avx2(acc, sc, J->k + (j0 * KH + g) * D, KH * D, n, D);
    }
    axpy_avx2(J->dq + it * D, J->scale, acc, D);
}
#endif

static void attb_dq_port(const attb_job *J, int64_t t, int64_t h) {
    const int64_t D = J->D, KH = J->KH, g = h / (J->H / KH), lo = attt_lo(J->pos, t, J->window);
    const int64_t it = t * J->H + h;
    const float *qv = J->q + it * D, *dov = J->dout + it * D;
    const float Dt = dot_port(dov, J->out + it * D, D), L = J->lse[it];
    float acc[LF_CPU_MAX_HEAD_DIM];
    for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
    for (int64_t j = lo; j <= t; j++) {
        const int64_t r = (j * KH + g) * D;
        const float p = expf(dot_port(qv, J->k + r, D) * J->scale - L);
        axpy_port(acc, p * (dot_port(dov, J->v + r, D) - Dt), J->k + r, D);
    }
    axpy_port(J->dq + it * D, J->scale, acc, D);
}

static void attb_dq_chunk(void *vjob, int64_t b, int64_t e, int tid) {
    (void)tid;
    const attb_job *J = (const attb_job *)vjob;
    for (int64_t it = b; it < e; it++) {
#ifdef LF_CPU_X86
        if (J->simd) {
            attb_dq_avx2(J, it / J->H, it % J->H);
            continue;
        }
#endif
        attb_dq_port(J, it / J->H, it % J->H);
    }
}

/* ---- pass 2: dk, dv of keys [j0, j1) of KV head g, summed in acc = [2, bk, D] (dk part, then dv part) ---- */

/* Next query after t that may see keys [j0, j1): returns 0 when no later query can (stop). Sets *jlo, *jhi to
 * the keys query t sees inside the block (jlo > jhi: none). */
static inline int attb_keys_of(const attb_job *J, int64_t t, int64_t j0, int64_t j1, int64_t *jlo, int64_t *jhi) {
    if (J->window > 0 && t - J->window + 1 > j1 - 1) return 0; /* window moved past the block for good */
    const int64_t lo = attt_lo(J->pos, t, J->window);
    if (J->mono && t - J->pos[t] > j1 - 1) return 0; /* a later row starts: no later query sees the block */
    *jlo = lo > j0 ? lo : j0;
    *jhi = t < j1 - 1 ? t : j1 - 1;
    return 1;
}

#ifdef LF_CPU_X86
static LF_CPU_AVX2 void attb_dkv_avx2(const attb_job *J, int64_t blk, int64_t g, float *acc) {
    const int64_t D = J->D, KH = J->KH, H = J->H, group = H / KH;
    const int64_t j0 = blk * J->bk, j1 = j0 + J->bk < J->T ? j0 + J->bk : J->T;
    float *ak = acc, *av = acc + J->bk * D;
    /* per query t: P and scaled dS of up to ATB_HG heads x ATB_BK keys, then each key's dk/dv row is updated
     * once for all those heads (one load + store of the accumulator per 8 lanes) */
    float P[ATB_HG][ATB_BK] __attribute__((aligned(32))), DS[ATB_HG][ATB_BK] __attribute__((aligned(32)));
    float sc[ATB_BK] __attribute__((aligned(32))) = {0}, dp[ATB_BK] __attribute__((aligned(32))) = {0};
    const float *qs[ATB_HG], *dos[ATB_HG];
    const __m256 sv = _mm256_set1_ps(J->scale);
    for (int64_t t = j0; t < J->T; t++) {
        int64_t jlo, jhi;
        if (!attb_keys_of(J, t, j0, j1, &jlo, &jhi)) break;
        if (jlo > jhi) continue;
        const int64_t n = jhi - jlo + 1;
        const float *kb = J->k + (jlo * KH + g) * D, *vb = J->v + (jlo * KH + g) * D;
        for (int64_t h0 = g * group; h0 < (g + 1) * group; h0 += ATB_HG) {
            const int64_t nh = (g + 1) * group - h0 < ATB_HG ? (g + 1) * group - h0 : ATB_HG;
            for (int64_t hh = 0; hh < nh; hh++) {
                const int64_t it = t * H + h0 + hh;
                const float *qv = J->q + it * D, *dov = J->dout + it * D;
                qs[hh] = qv, dos[hh] = dov;
                const float Dt = J->dk ? dot_avx2(dov, J->out + it * D, D) : 0.0f;
                dots_avx2(sc, qv, kb, KH * D, n, D);
                if (J->dk) dots_avx2(dp, dov, vb, KH * D, n, D);
                const __m256 lv = _mm256_set1_ps(J->lse[it]), dtv = _mm256_set1_ps(Dt);
                for (int64_t jj = 0; jj < n; jj += 8) {
                    const __m256 p = lf_cpu_exp8(_mm256_fmsub_ps(_mm256_load_ps(sc + jj), sv, lv));
                    _mm256_store_ps(P[hh] + jj, p);
                    _mm256_store_ps(DS[hh] + jj,
                                    _mm256_mul_ps(_mm256_mul_ps(p, _mm256_sub_ps(_mm256_load_ps(dp + jj), dtv)), sv));
                }
            }
            for (int64_t jj = 0; jj < n; jj++) {
                float c[ATB_HG];
                const int64_t r = (jlo - j0 + jj) * D;
                if (J->dv) {
                    for (int64_t hh = 0; hh < nh; hh++) c[hh] = P[hh][jj];
                    axpys_ptr_avx2(av + r, c, dos, nh, D);
                }
                if (J->dk) {
                    for (int64_t hh = 0; hh < nh; hh++) c[hh] = DS[hh][jj];
                    axpys_ptr_avx2(ak + r, c, qs, nh, D);
                }
            }
        }
    }
}
#endif

static void attb_dkv_port(const attb_job *J, int64_t blk, int64_t g, float *acc) {
    const int64_t D = J->D, KH = J->KH, H = J->H, group = H / KH;
    const int64_t j0 = blk * J->bk, j1 = j0 + J->bk < J->T ? j0 + J->bk : J->T;
    float *ak = acc, *av = acc + J->bk * D;
    for (int64_t t = j0; t < J->T; t++) {
        int64_t jlo, jhi;
        if (!attb_keys_of(J, t, j0, j1, &jlo, &jhi)) break;
        for (int64_t h = g * group; jlo <= jhi && h < (g + 1) * group; h++) {
            const int64_t it = t * H + h;
            const float *qv = J->q + it * D, *dov = J->dout + it * D;
            const float Dt = J->dk ? dot_port(dov, J->out + it * D, D) : 0.0f, L = J->lse[it];
            for (int64_t j = jlo; j <= jhi; j++) {
                const int64_t r = (j * KH + g) * D, a = (j - j0) * D;
                const float p = expf(dot_port(qv, J->k + r, D) * J->scale - L);
                if (J->dv) axpy_port(av + a, p, dov, D);
                if (J->dk) axpy_port(ak + a, p * (dot_port(dov, J->v + r, D) - Dt) * J->scale, qv, D);
            }
        }
    }
}

static void attb_dkv_chunk(void *vjob, int64_t b, int64_t e, int tid) {
    const attb_job *J = (const attb_job *)vjob;
    const int64_t D = J->D, KH = J->KH;
    float *acc = lf_cpu_scratch(J->be, tid);
    for (int64_t it = b; it < e; it++) {
        const int64_t blk = it / KH, g = it % KH, j0 = blk * J->bk, j1 = j0 + J->bk < J->T ? j0 + J->bk : J->T;
        for (int64_t i = 0; i < 2 * J->bk * D; i++) acc[i] = 0.0f;
#ifdef LF_CPU_X86
        if (J->simd)
            attb_dkv_avx2(J, blk, g, acc);
        else
#endif
            attb_dkv_port(J, blk, g, acc);
        for (int64_t j = j0; j < j1; j++) {
            float *dk = J->dk ? J->dk + (j * KH + g) * D : NULL, *dv = J->dv ? J->dv + (j * KH + g) * D : NULL;
            const float *ak = acc + (j - j0) * D, *av = acc + (J->bk + j - j0) * D;
            for (int64_t d = 0; d < D; d++) {
                if (dk) dk[d] += ak[d];
                if (dv) dv[d] += av[d];
            }
        }
    }
}

lf_status lf_cpu_attention_backward(lf_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *q,
                                    const float *k, const float *v, const float *out, const float *lse,
                                    const int32_t *pos, int64_t T, int64_t H, int64_t KH, int64_t D, int64_t window,
                                    float scale) {
    lf_status st = attt_check("attention_backward", pos, T, H, KH, D, &be->err);
    if (st != LF_OK) return st;
    if (T > 0 && (!dout || !q || !k || !v || !out || !lse))
        return lf_err_set(&be->err, LF_EINVAL, "attention_backward: an input (dout, q, k, v, out, lse) is NULL");
    attb_job job = {.dq = dq,
                    .dk = dk,
                    .dv = dv,
                    .dout = dout,
                    .q = q,
                    .k = k,
                    .v = v,
                    .out = out,
                    .lse = lse,
                    .pos = pos,
                    .T = T,
                    .H = H,
                    .KH = KH,
                    .D = D,
                    .window = window,
                    .scale = scale,
                    .mono = 1,
                    .simd = lf_cpu_simd(),
                    .be = be};
    job.bk = LF_CPU_SCRATCH_FLOATS / (2 * D) < ATB_BK ? LF_CPU_SCRATCH_FLOATS / (2 * D) : ATB_BK;
    for (int64_t t = 1; t < T; t++)
        if (t - pos[t] < t - 1 - pos[t - 1]) job.mono = 0;
    const int64_t span = attt_span(pos, T, window);
    if (dq) lf_cpu_parallel_for(be, T * H, lf_cpu_grain(span * D * 6, 1 << 15), attb_dq_chunk, &job);
    if (dk || dv) {
        const int64_t n_blk = (T + job.bk - 1) / job.bk;
        lf_cpu_parallel_for(be, n_blk * KH, 1, attb_dkv_chunk, &job);
    }
    return LF_OK;
}
