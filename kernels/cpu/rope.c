/* rope.c - rotary position embedding, HF rotate-half convention, in place on x[T,NH,D] (NH = H or KH).
 *
 * For i < D/2 the pair (x[i], x[i+D/2]) turns by angle a = (float)pos[t] * inv_freq[i]:
 *   x'[i]       = x[i] * cos(a) - x[i+D/2] * sin(a)
 *   x'[i+D/2]   = x[i+D/2] * cos(a) + x[i] * sin(a)
 * exactly as transformers does in f32: freqs = inv_freq @ pos (one f32 product), cos/sin of it, then
 * q * cos + rotate_half(q) * sin with each product rounded separately (no FMA), so the result matches
 * transformers to the accuracy of cosf/sinf (~1 ulp) - within 1e-6 for |x| <= 1.
 * inv_freq[D/2] comes from the model (theta and llama3 scaling are applied there).
 *
 * The fast path computes cos/sin once per token for all heads (stack tables of D/2 <= LF_CPU_MAX_HEAD_DIM/2
 * floats) and splits tokens over the pool; its arithmetic is the ref's, so results are identical. */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"

/* ==== reference ==== */

void lf_cpu_rope_forward_ref(float *x, const int32_t *pos, const float *inv_freq, int64_t T, int64_t NH, int64_t D) {
    const int64_t half = D / 2;
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < NH; h++) {
            float *v = x + (t * NH + h) * D;
            for (int64_t i = 0; i < half; i++) {
                float a = (float)pos[t] * inv_freq[i];
                float c = cosf(a), s = sinf(a);
                float x0 = v[i], x1 = v[i + half];
                v[i] = x0 * c - x1 * s;
                v[i + half] = x1 * c + x0 * s;
            }
        }
}

/* ==== fast path ==== */

#ifdef LF_CPU_X86
static LF_CPU_AVX2 void rope_head_avx2(float *v, const float *cs, const float *sn, int64_t half) {
    int64_t i = 0;
    for (; i + 8 <= half; i += 8) {
        __m256 c = _mm256_loadu_ps(cs + i), s = _mm256_loadu_ps(sn + i);
        __m256 x0 = _mm256_loadu_ps(v + i), x1 = _mm256_loadu_ps(v + i + half);
        _mm256_storeu_ps(v + i, _mm256_sub_ps(_mm256_mul_ps(x0, c), _mm256_mul_ps(x1, s)));
        _mm256_storeu_ps(v + i + half, _mm256_add_ps(_mm256_mul_ps(x1, c), _mm256_mul_ps(x0, s)));
    }
    for (; i < half; i++) {
        float x0 = v[i], x1 = v[i + half];
        v[i] = x0 * cs[i] - x1 * sn[i];
        v[i + half] = x1 * cs[i] + x0 * sn[i];
    }
}
#endif

static void rope_head_port(float *v, const float *cs, const float *sn, int64_t half) {
    for (int64_t i = 0; i < half; i++) {
        float x0 = v[i], x1 = v[i + half];
        v[i] = x0 * cs[i] - x1 * sn[i];
        v[i + half] = x1 * cs[i] + x0 * sn[i];
    }
}

typedef struct {
    float *x;
    const int32_t *pos;
    const float *inv_freq;
    int64_t NH, D;
    int simd;
} rope_job;

static void rope_chunk(void *vjob, int64_t t0, int64_t t1, int tid) {
    (void)tid;
    const rope_job *j = (const rope_job *)vjob;
    const int64_t half = j->D / 2;
    float cs[LF_CPU_MAX_HEAD_DIM / 2], sn[LF_CPU_MAX_HEAD_DIM / 2];
    for (int64_t t = t0; t < t1; t++) {
        for (int64_t i = 0; i < half; i++) {
            float a = (float)j->pos[t] * j->inv_freq[i];
            cs[i] = cosf(a);
            sn[i] = sinf(a);
        }
        for (int64_t h = 0; h < j->NH; h++) {
            float *v = j->x + (t * j->NH + h) * j->D;
#ifdef LF_CPU_X86
            if (j->simd) {
                rope_head_avx2(v, cs, sn, half);
                continue;
            }
#endif
            rope_head_port(v, cs, sn, half);
        }
    }
}

lf_status lf_cpu_rope_forward(lf_backend *be, float *x, const int32_t *pos, const float *inv_freq, int64_t T,
                              int64_t NH, int64_t D) {
    if (T < 0 || NH < 0 || D < 2 || D % 2 != 0 || D > LF_CPU_MAX_HEAD_DIM)
        return lf_err_set(&be->err, LF_EINVAL, "rope: bad size T=%lld NH=%lld D=%lld (D must be even, 2..%d)",
                          (long long)T, (long long)NH, (long long)D, LF_CPU_MAX_HEAD_DIM);
    rope_job job = {.x = x, .pos = pos, .inv_freq = inv_freq, .NH = NH, .D = D, .simd = lf_cpu_simd()};
    lf_cpu_parallel_for(be, T, lf_cpu_grain(NH * D + 40 * D, 1 << 14), rope_chunk, &job);
    return LF_OK;
}
