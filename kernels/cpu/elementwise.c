/* elementwise.c - the Llama MLP gate and the residual add, flat over N elements.
 *   swiglu:   out[N] = silu(gate[N]) * up[N],  silu(x) = x / (1 + exp(-x))   (torch: act_fn(gate) * up)
 *   residual: out[N] = a[N] + b[N]
 * out may alias either input (each element is read before it is written, at the same index).
 *
 * The swiglu ref works in double; the fast path in f32 with lf_cpu_exp8 (about 2 ulp) or expf, then one
 * division and one multiply, so it stays within a few ulp of the ref. For x < -88.37, exp(-x) overflows to
 * +inf and silu(x) = -0 (torch gives the same); the exact value is below 5e-37 in magnitude. The residual add
 * is exact in both paths. Both are memory-bound: chunks of ELT_GRAIN elements over the pool. */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"

#define ELT_GRAIN (1 << 16)

/* ==== reference ==== */

void lf_cpu_swiglu_forward_ref(float *out, const float *gate, const float *up, int64_t N) {
    for (int64_t i = 0; i < N; i++) {
        double g = gate[i];
        out[i] = (float)(g / (1.0 + exp(-g)) * (double)up[i]);
    }
}

void lf_cpu_residual_forward_ref(float *out, const float *a, const float *b, int64_t N) {
    for (int64_t i = 0; i < N; i++) out[i] = a[i] + b[i];
}

/* ==== fast path ==== */

typedef struct {
    float *out;
    const float *x, *y;
    int simd;
} elt_job;

#ifdef LF_CPU_X86
static LF_CPU_AVX2 __m256 silu_mul8(__m256 g, __m256 u) {
    __m256 one = _mm256_set1_ps(1.0f);
    __m256 e = lf_cpu_exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u);
}

static LF_CPU_AVX2 void swiglu_avx2(float *out, const float *gate, const float *up, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, silu_mul8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
    if (i < n) {
        __m256i mask = lf_cpu_mask8(n - i);
        _mm256_maskstore_ps(out + i, mask,
                            silu_mul8(_mm256_maskload_ps(gate + i, mask), _mm256_maskload_ps(up + i, mask)));
    }
}

static LF_CPU_AVX2 void residual_avx2(float *out, const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    for (; i < n; i++) out[i] = a[i] + b[i];
}
#endif

static void swiglu_chunk(void *vjob, int64_t b, int64_t e, int tid) {
    (void)tid;
    const elt_job *j = (const elt_job *)vjob;
#ifdef LF_CPU_X86
    if (j->simd) {
        swiglu_avx2(j->out + b, j->x + b, j->y + b, e - b);
        return;
    }
#endif
    for (int64_t i = b; i < e; i++) {
        float g = j->x[i];
        j->out[i] = g / (1.0f + expf(-g)) * j->y[i];
    }
}

static void residual_chunk(void *vjob, int64_t b, int64_t e, int tid) {
    (void)tid;
    const elt_job *j = (const elt_job *)vjob;
#ifdef LF_CPU_X86
    if (j->simd) {
        residual_avx2(j->out + b, j->x + b, j->y + b, e - b);
        return;
    }
#endif
    for (int64_t i = b; i < e; i++) j->out[i] = j->x[i] + j->y[i];
}

lf_status lf_cpu_swiglu_forward(lf_backend *be, float *out, const float *gate, const float *up, int64_t N) {
    if (N < 0) return lf_err_set(&be->err, LF_EINVAL, "swiglu: negative N=%lld", (long long)N);
    elt_job job = {.out = out, .x = gate, .y = up, .simd = lf_cpu_simd()};
    lf_cpu_parallel_for(be, N, ELT_GRAIN / 4, swiglu_chunk, &job); /* exp makes an element ~4x a plain add */
    return LF_OK;
}

lf_status lf_cpu_residual_forward(lf_backend *be, float *out, const float *a, const float *b, int64_t N) {
    if (N < 0) return lf_err_set(&be->err, LF_EINVAL, "residual: negative N=%lld", (long long)N);
    elt_job job = {.out = out, .x = a, .y = b, .simd = lf_cpu_simd()};
    lf_cpu_parallel_for(be, N, ELT_GRAIN, residual_chunk, &job);
    return LF_OK;
}
