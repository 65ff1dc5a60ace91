/* rmsnorm.c - out[T,C] = weight[C] * (inp[T,C] * rsqrt(mean(inp^2) + eps)), as HF LlamaRMSNorm in f32:
 *   variance = x.pow(2).mean(-1); x = x * torch.rsqrt(variance + eps); return weight * x
 * i.e. two separate f32 roundings (x * r, then weight * that) and rsqrt = 1 / sqrt in f32 (what torch's CPU
 * kernel computes). out may alias inp: each row's variance is taken before the row is written.
 *
 * The ref sums squares in double; the fast path in f32 with 32 (AVX2) or 8 (portable) partial sums, which
 * moves the variance by a few ulp at most for C <= 16k (sum of positive terms, relative error <= (C/32+5) u). */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"

/* ==== reference ==== */

void lf_cpu_rmsnorm_forward_ref(float *out, const float *inp, const float *weight, int64_t T, int64_t C, float eps) {
    for (int64_t t = 0; t < T; t++) {
        const float *x = inp + t * C;
        double ss = 0.0;
        for (int64_t c = 0; c < C; c++) ss += (double)x[c] * (double)x[c];
        float var = (float)(ss / (double)C);
        float r = 1.0f / sqrtf(var + eps);
        for (int64_t c = 0; c < C; c++) out[t * C + c] = weight[c] * (x[c] * r);
    }
}

/* ==== fast path ==== */

#ifdef LF_CPU_X86
static LF_CPU_AVX2 void rms_row_avx2(float *o, const float *x, const float *w, int64_t C, float eps) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t c = 0;
    for (; c + 32 <= C; c += 32) {
        __m256 a = _mm256_loadu_ps(x + c), b = _mm256_loadu_ps(x + c + 8);
        __m256 d = _mm256_loadu_ps(x + c + 16), e = _mm256_loadu_ps(x + c + 24);
        s0 = _mm256_fmadd_ps(a, a, s0);
        s1 = _mm256_fmadd_ps(b, b, s1);
        s2 = _mm256_fmadd_ps(d, d, s2);
        s3 = _mm256_fmadd_ps(e, e, s3);
    }
    for (; c + 8 <= C; c += 8) {
        __m256 a = _mm256_loadu_ps(x + c);
        s0 = _mm256_fmadd_ps(a, a, s0);
    }
    float ss = lf_cpu_hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; c < C; c++) ss += x[c] * x[c];
    float r = 1.0f / sqrtf(ss / (float)C + eps);
    __m256 rv = _mm256_set1_ps(r);
    for (c = 0; c + 8 <= C; c += 8)
        _mm256_storeu_ps(o + c, _mm256_mul_ps(_mm256_loadu_ps(w + c), _mm256_mul_ps(_mm256_loadu_ps(x + c), rv)));
    for (; c < C; c++) o[c] = w[c] * (x[c] * r);
}
#endif

static void rms_row_port(float *o, const float *x, const float *w, int64_t C, float eps) {
    float s[8] = {0};
    int64_t c = 0;
    for (; c + 8 <= C; c += 8)
        for (int i = 0; i < 8; i++) s[i] += x[c + i] * x[c + i];
    float ss = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; c < C; c++) ss += x[c] * x[c];
    float r = 1.0f / sqrtf(ss / (float)C + eps);
    for (c = 0; c < C; c++) o[c] = w[c] * (x[c] * r);
}

typedef struct {
    float *out;
    const float *inp, *weight;
    int64_t C;
    float eps;
    int simd;
} rms_job;

static void rms_chunk(void *vjob, int64_t t0, int64_t t1, int tid) {
    (void)tid;
    const rms_job *j = (const rms_job *)vjob;
    for (int64_t t = t0; t < t1; t++) {
#ifdef LF_CPU_X86
        if (j->simd) {
            rms_row_avx2(j->out + t * j->C, j->inp + t * j->C, j->weight, j->C, j->eps);
            continue;
        }
#endif
        rms_row_port(j->out + t * j->C, j->inp + t * j->C, j->weight, j->C, j->eps);
    }
}

lf_status lf_cpu_rmsnorm_forward(lf_backend *be, float *out, const float *inp, const float *weight, int64_t T,
                                 int64_t C, float eps) {
    if (T < 0 || C < 1)
        return lf_err_set(&be->err, LF_EINVAL, "rmsnorm: bad size T=%lld C=%lld", (long long)T, (long long)C);
    rms_job job = {.out = out, .inp = inp, .weight = weight, .C = C, .eps = eps, .simd = lf_cpu_simd()};
    lf_cpu_parallel_for(be, T, lf_cpu_grain(C, 1 << 15), rms_chunk, &job);
    return LF_OK;
}
