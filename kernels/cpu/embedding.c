/* embedding.c - out[T,C] = wte[tokens[t], :] with wte [V,C] F32, BF16 or F16 converted exactly to f32.
 *
 * Every id is checked against [0, V) before anything is written, so a bad id leaves out untouched and
 * be->err names the id and its position. The fast path converts rows with AVX2/F16C (BF16: zero-extend +
 * shift, F16: vcvtph2ps) and splits tokens over the pool; conversions are exact, so it equals the ref bit
 * for bit. */
#include <string.h>

#include "kernels/cpu/cpu_ops.h"

lf_status lf_cpu_embedding_check(const int32_t *tokens, const lf_tensor *wte, int64_t T, lf_err *err) {
    if (!wte || wte->ndim != 2)
        return lf_err_set(err, LF_EINVAL, "embedding: wte must be 2-D [V, C], got ndim %d", wte ? wte->ndim : -1);
    lf_dtype dt = wte->dtype;
    if (dt != LF_DTYPE_F32 && dt != LF_DTYPE_BF16 && dt != LF_DTYPE_F16)
        return lf_err_set(err, LF_EUNSUPPORTED, "embedding: wte dtype %s is not supported (F32, BF16, F16)",
                          lf_dtype_name(dt));
    if (T < 0) return lf_err_set(err, LF_EINVAL, "embedding: negative T=%lld", (long long)T);
    int64_t V = wte->shape[0];
    for (int64_t t = 0; t < T; t++)
        if (tokens[t] < 0 || (int64_t)tokens[t] >= V)
            return lf_err_set(err, LF_EINVAL, "embedding: token id %d at position %lld is out of range [0, %lld)",
                              (int)tokens[t], (long long)t, (long long)V);
    return LF_OK;
}

/* ==== reference ==== */

lf_status lf_cpu_embedding_forward_ref(float *out, const int32_t *tokens, const lf_tensor *wte, int64_t T,
                                       lf_err *err) {
    lf_status st = lf_cpu_embedding_check(tokens, wte, T, err);
    if (st != LF_OK) return st;
    int64_t C = wte->shape[1];
    for (int64_t t = 0; t < T; t++) {
        int64_t row = (int64_t)tokens[t] * C;
        for (int64_t c = 0; c < C; c++) {
            float v;
            if (wte->dtype == LF_DTYPE_BF16)
                v = lf_bf16_to_f32(((const uint16_t *)wte->data)[row + c]);
            else if (wte->dtype == LF_DTYPE_F16)
                v = lf_f16_to_f32(((const uint16_t *)wte->data)[row + c]);
            else
                v = ((const float *)wte->data)[row + c];
            out[t * C + c] = v;
        }
    }
    return LF_OK;
}

/* ==== fast path ==== */

#ifdef LF_CPU_X86
static LF_CPU_AVX2 void emb_row_avx2(float *dst, const uint16_t *src, lf_dtype dt, int64_t C) {
    int64_t c = 0;
    if (dt == LF_DTYPE_BF16) {
        for (; c + 8 <= C; c += 8) {
            __m128i h = _mm_loadu_si128((const __m128i *)(src + c));
            _mm256_storeu_ps(dst + c, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
        }
        for (; c < C; c++) dst[c] = lf_bf16_to_f32(src[c]);
    } else {
        for (; c + 8 <= C; c += 8)
            _mm256_storeu_ps(dst + c, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + c))));
        for (; c < C; c++) dst[c] = _cvtsh_ss(src[c]);
    }
}
#endif

typedef struct {
    float *out;
    const int32_t *tokens;
    const lf_tensor *wte;
    int simd;
} emb_job;

static void emb_chunk(void *vjob, int64_t t0, int64_t t1, int tid) {
    (void)tid;
    const emb_job *j = (const emb_job *)vjob;
    const int64_t C = j->wte->shape[1];
    const lf_dtype dt = j->wte->dtype;
    for (int64_t t = t0; t < t1; t++) {
        int64_t row = (int64_t)j->tokens[t] * C;
        float *dst = j->out + t * C;
        if (dt == LF_DTYPE_F32) {
            memcpy(dst, (const float *)j->wte->data + row, (size_t)C * sizeof(float));
            continue;
        }
        const uint16_t *src = (const uint16_t *)j->wte->data + row;
#ifdef LF_CPU_X86
        if (j->simd) {
            emb_row_avx2(dst, src, dt, C);
            continue;
        }
#endif
        if (dt == LF_DTYPE_BF16)
            lf_bf16_to_f32_n(dst, src, C);
        else
            lf_f16_to_f32_n(dst, src, C);
    }
}

lf_status lf_cpu_embedding_forward(lf_backend *be, float *out, const int32_t *tokens, const lf_tensor *wte, int64_t T) {
    lf_status st = lf_cpu_embedding_check(tokens, wte, T, &be->err);
    if (st != LF_OK) return st;
    if (wte->device != LF_DEVICE_CPU) return lf_err_set(&be->err, LF_EINVAL, "embedding: wte is not in CPU memory");
    emb_job job = {.out = out, .tokens = tokens, .wte = wte, .simd = lf_cpu_simd()};
    lf_cpu_parallel_for(be, T, lf_cpu_grain(wte->shape[1], 1 << 16), emb_chunk, &job);
    return LF_OK;
}
