/* softmax.c - out[R,V] = softmax of each row of inp[R,V], max-subtracted:
 *   m = max_i x_i,  out_i = exp(x_i - m) / sum_j exp(x_j - m)
 * out may alias inp (three passes over the row: max, exp + sum writing out, scale out).
 *
 * The ref works in double. The fast path computes exp in f32 (lf_cpu_exp8, about 2 ulp, or expf) and sums
 * the exps in double (cheap next to the exp, and it keeps a 128k-vocab row's sum exact to f32), then
 * multiplies by 1/sum: a few ulp from the ref per element. Rows are split over the pool. */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"

/* ==== reference ==== */

void lf_cpu_softmax_forward_ref(float *out, const float *inp, int64_t R, int64_t V) {
    for (int64_t r = 0; r < R; r++) {
        const float *x = inp + r * V;
        float *o = out + r * V;
        double m = -INFINITY;
        for (int64_t i = 0; i < V; i++)
            if (x[i] > m) m = x[i];
        double s = 0.0;
        for (int64_t i = 0; i < V; i++) s += exp((double)x[i] - m);
        for (int64_t i = 0; i < V; i++) o[i] = (float)(exp((double)x[i] - m) / s);
    }
}

/* ==== fast path ==== */

#ifdef LF_CPU_X86
static LF_CPU_AVX2 void softmax_row_avx2(float *o, const float *x, int64_t V) {
    __m256 mv = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= V; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
    float m = lf_cpu_hmax8(mv);
    for (; i < V; i++) m = x[i] > m ? x[i] : m;
    mv = _mm256_set1_ps(m);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (i = 0; i + 8 <= V; i += 8) {
        __m256 e = lf_cpu_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
        _mm256_storeu_ps(o + i, e);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double sd[4];
    _mm256_storeu_pd(sd, _mm256_add_pd(s0, s1));
    double s = (sd[0] + sd[1]) + (sd[2] + sd[3]);
    if (i < V) {
        __m256i mask = lf_cpu_mask8(V - i);
        float e8[8];
        __m256 e = lf_cpu_exp8(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), mv));
        _mm256_storeu_ps(e8, e);
        _mm256_maskstore_ps(o + i, mask, e);
        for (int64_t k = 0; k < V - i; k++) s += e8[k];
    }
    const __m256 inv = _mm256_set1_ps((float)(1.0 / s));
    for (i = 0; i + 8 <= V; i += 8) _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_loadu_ps(o + i), inv));
    for (; i < V; i++) o[i] *= (float)(1.0 / s);
}
#endif

static void softmax_row_port(float *o, const float *x, int64_t V) {
    float m = -INFINITY;
    for (int64_t i = 0; i < V; i++) m = x[i] > m ? x[i] : m;
    double s = 0.0;
    for (int64_t i = 0; i < V; i++) {
        float e = expf(x[i] - m);
        o[i] = e;
        s += e;
    }
    const float inv = (float)(1.0 / s);
    for (int64_t i = 0; i < V; i++) o[i] *= inv;
}

typedef struct {
    float *out;
    const float *inp;
    int64_t V;
    int simd;
} softmax_job;

static void softmax_chunk(void *vjob, int64_t r0, int64_t r1, int tid) {
    (void)tid;
    const softmax_job *j = (const softmax_job *)vjob;
    for (int64_t r = r0; r < r1; r++) {
#ifdef LF_CPU_X86
        if (j->simd) {
            softmax_row_avx2(j->out + r * j->V, j->inp + r * j->V, j->V);
            continue;
        }
#endif
        softmax_row_port(j->out + r * j->V, j->inp + r * j->V, j->V);
    }
}

lf_status lf_cpu_softmax_forward(lf_backend *be, float *out, const float *inp, int64_t R, int64_t V) {
    if (R < 0 || V < 1)
        return lf_err_set(&be->err, LF_EINVAL, "softmax: bad size R=%lld V=%lld", (long long)R, (long long)V);
    softmax_job job = {.out = out, .inp = inp, .V = V, .simd = lf_cpu_simd()};
    lf_cpu_parallel_for(be, R, lf_cpu_grain(V * 4, 1 << 15), softmax_chunk, &job);
    return LF_OK;
}
