/* attention.c - causal grouped-query attention over a KV cache.
 *
 * q[T,H,D]; k, v [S,KH,D] (cache row j holds position j); out[T,H,D]. Query t of head h (KV head
 * g = h / (H/KH)) at position p = pos[t] attends keys j in [lo, p], lo = max(0, p - window + 1) when
 * window > 0, else 0:
 *   s_j = scale * (q . k_j),  out = sum_j softmax(s)_j v_j.
 * Positions must lie in [0, S) (LF_EINVAL otherwise) and H must be a multiple of KH.
 *
 * The ref is two passes in double (max, then exp-sum and weighted sum), with a D-length double accumulator
 * on the stack. The fast path is one pass of online softmax over blocks of ATT_BK keys: block scores, one
 * rescale of the running f32 accumulator acc[D] when the block raises the running max, then
 * acc += exp(s_j - m) v_j; out = acc / l. Only acc[D] (D <= LF_CPU_MAX_HEAD_DIM) and the block's scores live
 * on the stack. Work items (t, h) are split over the pool, h fastest so heads sharing a KV head run together. */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"

#define ATT_BK 32 /* keys per online-softmax block */

lf_status lf_cpu_attention_check(const int32_t *pos, int64_t T, int64_t S, int64_t H, int64_t KH, int64_t D, lf_err *err) {
    if (T < 0 || S < 1 || H < 1 || KH < 1 || D < 1)
        return lf_err_set(err, LF_EINVAL, "attention: bad size T=%lld S=%lld H=%lld KH=%lld D=%lld", (long long)T,
                          (long long)S, (long long)H, (long long)KH, (long long)D);
    if (H % KH != 0)
        return lf_err_set(err, LF_EINVAL, "attention: H=%lld is not a multiple of KH=%lld", (long long)H,
                          (long long)KH);
    if (D > LF_CPU_MAX_HEAD_DIM)
        return lf_err_set(err, LF_EINVAL, "attention: head dim D=%lld exceeds the CPU backend's limit %d", (long long)D,
                          LF_CPU_MAX_HEAD_DIM);
    for (int64_t t = 0; t < T; t++)
        if (pos[t] < 0 || (int64_t)pos[t] >= S)
            return lf_err_set(err, LF_EINVAL, "attention: pos[%lld]=%d is outside the cache [0, S=%lld)", (long long)t,
                              (int)pos[t], (long long)S);
    return LF_OK;
}

static inline int64_t att_lo(int64_t p, int64_t window) {
    if (window <= 0) return 0;
    int64_t lo = p - window + 1;
    return lo < 0 ? 0 : lo;
}

/* ==== reference ==== */

lf_status lf_cpu_attention_forward_ref(float *out, const float *q, const float *k, const float *v, const int32_t *pos,
                                       int64_t T, int64_t S, int64_t H, int64_t KH, int64_t D, int64_t window,
                                       float scale, lf_err *err) {
    lf_status st = lf_cpu_attention_check(pos, T, S, H, KH, D, err);
    if (st != LF_OK) return st;
    const int64_t group = H / KH;
    double acc[LF_CPU_MAX_HEAD_DIM];
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            const float *qv = q + (t * H + h) * D;
            /* written out here rather than through att_lo, so the ref checks the fast path's window */
            const int64_t g = h / group, p = pos[t], lo = (window > 0 && p - window + 1 > 0) ? p - window + 1 : 0;
            double m = -INFINITY;
            for (int64_t j = lo; j <= p; j++) {
                const float *kv = k + (j * KH + g) * D;
                double s = 0.0;
                for (int64_t d = 0; d < D; d++) s += (double)qv[d] * (double)kv[d];
                s *= (double)scale;
                if (s > m) m = s;
            }
            double l = 0.0;
            for (int64_t d = 0; d < D; d++) acc[d] = 0.0;
            for (int64_t j = lo; j <= p; j++) {
                const float *kv = k + (j * KH + g) * D, *vv = v + (j * KH + g) * D;
                double s = 0.0;
                for (int64_t d = 0; d < D; d++) s += (double)qv[d] * (double)kv[d];
                double e = exp(s * (double)scale - m);
                l += e;
                for (int64_t d = 0; d < D; d++) acc[d] += e * (double)vv[d];
            }
            for (int64_t d = 0; d < D; d++) out[(t * H + h) * D + d] = (float)(acc[d] / l);
        }
    return LF_OK;
}

/* ==== fast path ==== */

typedef struct {
    float *out;
    const float *q, *k, *v;
    const int32_t *pos;
    int64_t H, KH, D, window;
    float scale;
} att_job;

#ifdef LF_CPU_X86
static LF_CPU_AVX2 void att_item_avx2(const att_job *J, int64_t t, int64_t h) {
    const int64_t D = J->D, KH = J->KH, g = h / (J->H / KH), p = J->pos[t], lo = att_lo(p, J->window);
    const int64_t D8 = D & ~(int64_t)7;
    const float *qv = J->q + (t * J->H + h) * D;
    float acc[LF_CPU_MAX_HEAD_DIM] __attribute__((aligned(32)));
    float sc[ATT_BK] __attribute__((aligned(32)));
    for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int64_t j0 = lo; j0 <= p; j0 += ATT_BK) {
        const int64_t n = (p + 1 - j0) < ATT_BK ? (p + 1 - j0) : ATT_BK;
        float bm = -INFINITY;
        for (int64_t jj = 0; jj < n; jj++) {
            const float *kv = J->k + ((j0 + jj) * KH + g) * D;
            float s = lf_cpu_att_dot(qv, kv, D, D8) * J->scale;
            sc[jj] = s;
            if (s > bm) bm = s;
        }
        /* rescale what was accumulated under the old max, then exponentiate the chunk's scores */
        lf_cpu_att_rescale(acc, D, D8, &m, &l, bm);
        lf_cpu_att_exp_shift(sc, n, m);
        for (int64_t jj = 0; jj < n; jj++) {
            const float e = sc[jj];
            const float *vv = J->v + ((j0 + jj) * KH + g) * D;
            const __m256 ev = _mm256_set1_ps(e);
            l += e;
            int64_t d = 0;
            for (; d < D8; d += 8)
                _mm256_store_ps(acc + d, _mm256_fmadd_ps(ev, _mm256_loadu_ps(vv + d), _mm256_load_ps(acc + d)));
            for (; d < D; d++) acc[d] += e * vv[d];
        }
    }
    float *o = J->out + (t * J->H + h) * D;
    const float inv = 1.0f / l;
    for (int64_t d = 0; d < D; d++) o[d] = acc[d] * inv;
}
#endif

static void att_item_port(const att_job *J, int64_t t, int64_t h) {
    const int64_t D = J->D, KH = J->KH, g = h / (J->H / KH), p = J->pos[t], lo = att_lo(p, J->window);
    const float *qv = J->q + (t * J->H + h) * D;
    float acc[LF_CPU_MAX_HEAD_DIM], sc[ATT_BK];
    for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int64_t j0 = lo; j0 <= p; j0 += ATT_BK) {
        const int64_t n = (p + 1 - j0) < ATT_BK ? (p + 1 - j0) : ATT_BK;
        float bm = -INFINITY;
        for (int64_t jj = 0; jj < n; jj++) {
            const float *kv = J->k + ((j0 + jj) * KH + g) * D;
            float s4[4] = {0};
            int64_t d = 0;
            for (; d + 4 <= D; d += 4)
                for (int i = 0; i < 4; i++) s4[i] += qv[d + i] * kv[d + i];
            float s = (s4[0] + s4[1]) + (s4[2] + s4[3]);
            for (; d < D; d++) s += qv[d] * kv[d];
            s *= J->scale;
            sc[jj] = s;
            if (s > bm) bm = s;
        }
        if (bm > m) {
            float corr = expf(m - bm);
            for (int64_t d = 0; d < D; d++) acc[d] *= corr;
            l *= corr;
            m = bm;
        }
        for (int64_t jj = 0; jj < n; jj++) {
            const float e = expf(sc[jj] - m);
            const float *vv = J->v + ((j0 + jj) * KH + g) * D;
            l += e;
            for (int64_t d = 0; d < D; d++) acc[d] += e * vv[d];
        }
    }
    float *o = J->out + (t * J->H + h) * D;
    const float inv = 1.0f / l;
    for (int64_t d = 0; d < D; d++) o[d] = acc[d] * inv;
}

typedef struct {
    const att_job *job;
    int simd;
} att_run;

static void att_chunk(void *vrun, int64_t b, int64_t e, int tid) {
    (void)tid;
    const att_run *r = (const att_run *)vrun;
    for (int64_t it = b; it < e; it++) {
        int64_t t = it / r->job->H, h = it % r->job->H;
#ifdef LF_CPU_X86
        if (r->simd) {
            att_item_avx2(r->job, t, h);
            continue;
        }
#endif
        att_item_port(r->job, t, h);
    }
}

lf_status lf_cpu_attention_forward(lf_backend *be, float *out, const float *q, const float *k, const float *v,
                                   const int32_t *pos, int64_t T, int64_t S, int64_t H, int64_t KH, int64_t D,
                                   int64_t window, float scale) {
    lf_status st = lf_cpu_attention_check(pos, T, S, H, KH, D, &be->err);
    if (st != LF_OK) return st;
    att_job job = {
        .out = out, .q = q, .k = k, .v = v, .pos = pos, .H = H, .KH = KH, .D = D, .window = window, .scale = scale};
    att_run run = {.job = &job, .simd = lf_cpu_simd()};
    int64_t span = (window > 0 && window < S) ? window : S; /* keys per query, at most */
    lf_cpu_parallel_for(be, T * H, lf_cpu_grain(span * D * 4, 1 << 15), att_chunk, &run);
    return LF_OK;
}
