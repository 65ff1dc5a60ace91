/* cpu_ops.h - internal to kernels/cpu and its tests: the CPU backend context, the scalar references
 * lf_cpu_<op>_forward_ref (the spec: plain loops, double accumulation where cheap) and the fast entry points
 * lf_cpu_<op>_forward that the op table holds (threaded over the backend's pool, AVX2/FMA/F16C chosen at run
 * time with a portable path otherwise).
 *
 * Shape letters as in kernels/backend.h: T tokens, C channels in, OC channels out, H query heads, KH kv heads,
 * NH heads of a rope input (H or KH), D head dim, S cached positions, V vocab / row length, R rows,
 * N flat element count. Every index is int64_t.
 *
 * Invariants: ops never allocate; the only scratch is lf_cpu_ctx.scratch, sized at create time
 * (LF_CPU_SCRATCH_FLOATS per thread), and stack buffers bounded by LF_CPU_MAX_HEAD_DIM. A fast entry point
 * validates its arguments, fills be->err and returns its code on bad input; the _ref functions assume valid
 * shapes except where they return lf_status. */
#ifndef LF_KERNELS_CPU_CPU_OPS_H
#define LF_KERNELS_CPU_CPU_OPS_H

#include <math.h>
#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"
#include "core/threadpool.h"
#include "kernels/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Per-thread scratch, in floats (16 KiB): one packed matmul weight panel (matmul.c asserts its panels fit). */
#define LF_CPU_SCRATCH_FLOATS ((int64_t)4096)
/* Head dim bound of rope (cos/sin table on the stack) and attention (one D accumulator on the stack). */
#define LF_CPU_MAX_HEAD_DIM 512

/* be->ctx of a CPU backend. */
typedef struct lf_cpu_ctx {
    lf_pool *pool; /* owned; n_threads workers including the caller */
    int n_threads;
    float *scratch; /* owned, 64-byte aligned: [n_threads, LF_CPU_SCRATCH_FLOATS], row tid for pool thread tid */
} lf_cpu_ctx;

/* ---- run-time SIMD selection ----
 * The AVX2/FMA/F16C paths are used when the CPU has all three, LF_CPU_NO_SIMD is not "1" in the environment
 * (read once, on first use), and lf_cpu_set_simd(0) was not called. */
/* 1 when the AVX2 paths are in use. */
int lf_cpu_simd(void);
/* Tests' hook: enabled = 0 forces the portable path, 1 restores AVX2 when the CPU has it. Returns the new
 * lf_cpu_simd(). Not meant to be called while ops run on another thread. */
int lf_cpu_set_simd(int enabled);

/* ---- helpers for the op files ---- */
/* Run fn over [0, n) on be's pool (chunks of >= grain items); tid indexes lf_cpu_scratch. */
void lf_cpu_parallel_for(lf_backend *be, int64_t n, int64_t grain, lf_pool_fn fn, void *ctx);
/* Scratch row of pool thread tid: LF_CPU_SCRATCH_FLOATS floats, 64-byte aligned. */
float *lf_cpu_scratch(lf_backend *be, int tid);
/* Items per chunk so that a chunk holds about `work` element-operations when one item costs `item_cost`. */
static inline int64_t lf_cpu_grain(int64_t item_cost, int64_t work) {
    if (item_cost < 1) item_cost = 1;
    int64_t g = work / item_cost;
    return g < 1 ? 1 : g;
}

/* ---- embedding.c ---- */
/* out[T,C] = wte[tokens[t], :]; wte [V,C] F32/BF16/F16. LF_EINVAL (with id and position) on an id outside
 * [0, V); LF_EUNSUPPORTED on another dtype. out is untouched on failure. */
/* Argument checks shared by the f32 paths and the typed references (typed.c). */
lf_status lf_cpu_embedding_check(const int32_t *tokens, const lf_tensor *wte, int64_t T, lf_err *err);
lf_status lf_cpu_embedding_forward_ref(float *out, const int32_t *tokens, const lf_tensor *wte, int64_t T, lf_err *err);
lf_status lf_cpu_embedding_forward(lf_backend *be, float *out, const int32_t *tokens, const lf_tensor *wte, int64_t T);

/* ---- rmsnorm.c ---- */
/* out[T,C] = weight[C] * (inp[T,C] * rsqrt(mean(inp^2) + eps)) in f32, as HF LlamaRMSNorm; out may alias inp. */
void lf_cpu_rmsnorm_forward_ref(float *out, const float *inp, const float *weight, int64_t T, int64_t C, float eps);
lf_status lf_cpu_rmsnorm_forward(lf_backend *be, float *out, const float *inp, const float *weight, int64_t T,
                                 int64_t C, float eps);

/* ---- matmul.c ---- */
/* out[T,OC] = inp[T,C] @ weight[OC,C]^T (+ bias[OC]); weight F32/BF16/F16 (LF_EUNSUPPORTED otherwise).
 * The ref accumulates in double. */
/* Sizes, weight shape [OC, C], dtype and memory: the checks of every dense matmul entry (LF_EINVAL/EUNSUPPORTED). */
lf_status lf_cpu_matmul_check(const lf_tensor *weight, int64_t T, int64_t C, int64_t OC, lf_err *err);
lf_status lf_cpu_matmul_forward_ref(float *out, const float *inp, const lf_tensor *weight, const float *bias, int64_t T,
                                    int64_t C, int64_t OC, lf_err *err);
lf_status lf_cpu_matmul_forward(lf_backend *be, float *out, const float *inp, const lf_tensor *weight,
                                const float *bias, int64_t T, int64_t C, int64_t OC);

/* ---- rope.c ---- */
/* In place on x[T,NH,D], D even: HF rotate-half at positions pos[T] with inv_freq[D/2]; angle computed in
 * f32 as (float)pos * inv_freq[i], then cosf/sinf. */
void lf_cpu_rope_forward_ref(float *x, const int32_t *pos, const float *inv_freq, int64_t T, int64_t NH, int64_t D);
lf_status lf_cpu_rope_forward(lf_backend *be, float *x, const int32_t *pos, const float *inv_freq, int64_t T,
                              int64_t NH, int64_t D);

/* ---- attention.c ---- */
/* Causal GQA attention as backend.h: q[T,H,D], k,v [S,KH,D], pos[T] in [0, S), out[T,H,D]. The ref is
 * two-pass in double and returns LF_EINVAL on a position outside [0, S) or H % KH != 0. */
lf_status lf_cpu_attention_check(const int32_t *pos, int64_t T, int64_t S, int64_t H, int64_t KH, int64_t D,
                                 lf_err *err);
lf_status lf_cpu_attention_forward_ref(float *out, const float *q, const float *k, const float *v, const int32_t *pos,
                                       int64_t T, int64_t S, int64_t H, int64_t KH, int64_t D, int64_t window,
                                       float scale, lf_err *err);
lf_status lf_cpu_attention_forward(lf_backend *be, float *out, const float *q, const float *k, const float *v,
                                   const int32_t *pos, int64_t T, int64_t S, int64_t H, int64_t KH, int64_t D,
                                   int64_t window, float scale);

/* ---- elementwise.c ---- */
/* out[N] = silu(gate[N]) * up[N], silu(x) = x / (1 + exp(-x)); out may alias gate or up. */
void lf_cpu_swiglu_forward_ref(float *out, const float *gate, const float *up, int64_t N);
lf_status lf_cpu_swiglu_forward(lf_backend *be, float *out, const float *gate, const float *up, int64_t N);
/* out[N] = a[N] + b[N]; out may alias a or b. */
void lf_cpu_residual_forward_ref(float *out, const float *a, const float *b, int64_t N);
lf_status lf_cpu_residual_forward(lf_backend *be, float *out, const float *a, const float *b, int64_t N);

/* ---- softmax.c ---- */
/* out[R,V] = exp(inp - rowmax) / sum(exp(inp - rowmax)) per row; out may alias inp. */
void lf_cpu_softmax_forward_ref(float *out, const float *inp, int64_t R, int64_t V);
lf_status lf_cpu_softmax_forward(lf_backend *be, float *out, const float *inp, int64_t R, int64_t V);

/* ---- typed.c: the op table's inference entries (backend.h signatures and contracts) ----
 * All-f32 calls go to the fast entry points of each family; any BF16/F16 activation goes to a plain typed
 * reference (double accumulation, one rounding per output element, matmul and attention threaded over rows)
 * that checks its arguments as the f32 path does. dora_combine and convert have no separate fast path. */
lf_status lf_cpu_op_embedding(lf_backend *be, lf_act out, const int32_t *tokens, const lf_tensor *wte, int64_t T);
lf_status lf_cpu_op_rmsnorm(lf_backend *be, lf_act out, lf_act inp, const float *weight, int64_t T, int64_t C,
                            float eps);
lf_status lf_cpu_op_matmul(lf_backend *be, lf_act out, lf_act inp, const lf_tensor *weight, const float *bias,
                           int64_t T, int64_t C, int64_t OC);
lf_status lf_cpu_op_matmul_q4(lf_backend *be, lf_act out, lf_act inp, const struct lf_quant_state *w,
                              const float *bias, int64_t T, int64_t C, int64_t OC);
lf_status lf_cpu_op_rope(lf_backend *be, lf_act x, const int32_t *pos, const float *inv_freq, int64_t T, int64_t NH,
                         int64_t D);
lf_status lf_cpu_op_attention(lf_backend *be, lf_act out, lf_act q, lf_act k, lf_act v, const int32_t *pos, int64_t T,
                              int64_t S, int64_t H, int64_t KH, int64_t D, int64_t window, float scale);
lf_status lf_cpu_op_attention_paged(lf_backend *be, lf_act out, lf_act q, lf_act kpool, lf_act vpool,
                                    const int32_t *block_table, int64_t n_blocks, int64_t BS, const int32_t *pos,
                                    int64_t T, int64_t H, int64_t KH, int64_t D, int64_t window, float scale);
lf_status lf_cpu_op_swiglu(lf_backend *be, lf_act out, lf_act gate, lf_act up, int64_t N);
lf_status lf_cpu_op_residual(lf_backend *be, lf_act out, lf_act x, lf_act y, int64_t N);
lf_status lf_cpu_op_add_scaled(lf_backend *be, lf_act y, lf_act x, float alpha, int64_t N);
lf_status lf_cpu_op_softmax(lf_backend *be, lf_act out, lf_act inp, int64_t R, int64_t V);
lf_status lf_cpu_op_dora_combine(lf_backend *be, lf_act out, lf_act lo, const float *mag, const float *wn,
                                 const float *bias, float scale, int64_t T, int64_t OC);
lf_status lf_cpu_op_convert(lf_backend *be, lf_act dst, lf_act src, int64_t N);
/* supports_op of the CPU backend: every op, activations F32/BF16/F16 (training ops: f32, n = 0). */
int lf_cpu_op_supports(const lf_backend *be, lf_op op, const lf_dtype *dt, int n);

/* ==== training ops (backend.h "training ops"): gradients ACCUMULATE (+=) into d* outputs, NULL ones are
 * skipped; rope_backward and crossentropy overwrite. The refs work in double (rope: the f32 arithmetic of the
 * fast path) and are the spec for the tests; the fast paths are threaded and AVX2 where it pays. ==== */

/* ---- matmul_backward.c ---- */
/* dinp[T,C] += dout[T,OC] @ weight[OC,C] (weight F32/BF16/F16, LF_EUNSUPPORTED otherwise; needed only when dinp
 * is non-NULL); dweight[OC,C] (F32) += dout^T @ inp[T,C]. dinp must not overlap dout, inp or weight; dweight not
 * dout, inp or dinp (LF_EINVAL). The ref sums each element in double and rounds once. */
lf_status lf_cpu_matmul_backward_ref(float *dinp, float *dweight, const float *dout, const float *inp,
                                     const lf_tensor *weight, int64_t T, int64_t C, int64_t OC, lf_err *err);
lf_status lf_cpu_matmul_backward(lf_backend *be, float *dinp, float *dweight, const float *dout, const float *inp,
                                 const lf_tensor *weight, int64_t T, int64_t C, int64_t OC);
/* out[T,OC] = inp[T,C] @ deq(w)^T (+ bias[OC]): lf_quant_matmul_4bit on the backend's pool and scratch
 * (the ref is lf_quant_matmul_4bit_ref). w must be [OC, C]; out must not alias inp. The 4-bit ops follow
 * quant's own SIMD switch (lf_quant_simd_active / lf_quant_set_simd), not lf_cpu_simd(). */
lf_status lf_cpu_matmul_q4_forward_ref(float *out, const float *inp, const struct lf_quant_state *w, const float *bias,
                                       int64_t T, int64_t C, int64_t OC, lf_err *err);
lf_status lf_cpu_matmul_q4_forward(lf_backend *be, float *out, const float *inp, const struct lf_quant_state *w,
                                   const float *bias, int64_t T, int64_t C, int64_t OC);
/* dinp[T,C] += dout[T,OC] @ deq(w)[OC,C]: lf_quant_matmul_4bit_backward (ref: its _ref). dinp must not
 * overlap dout. */
lf_status lf_cpu_matmul_q4_backward_ref(float *dinp, const float *dout, const struct lf_quant_state *w, int64_t T,
                                        int64_t C, int64_t OC, lf_err *err);
lf_status lf_cpu_matmul_q4_backward(lf_backend *be, float *dinp, const float *dout, const struct lf_quant_state *w,
                                    int64_t T, int64_t C, int64_t OC);

/* ---- attention_train.c ---- */
/* Training attention (no cache): q[T,H,D], k,v [T,KH,D] -> out[T,H,D], lse[T,H] (may be NULL). Query t attends
 * keys j with max(t - pos[t], t - window + 1 if window > 0) <= j <= t; pos[t] must be in [0, t], H % KH == 0,
 * 1 <= D <= LF_CPU_MAX_HEAD_DIM (LF_EINVAL otherwise, from the refs too). */
lf_status lf_cpu_attention_train_forward_ref(float *out, float *lse, const float *q, const float *k, const float *v,
                                             const int32_t *pos, int64_t T, int64_t H, int64_t KH, int64_t D,
                                             int64_t window, float scale, lf_err *err);
lf_status lf_cpu_attention_train_forward(lf_backend *be, float *out, float *lse, const float *q, const float *k,
                                         const float *v, const int32_t *pos, int64_t T, int64_t H, int64_t KH,
                                         int64_t D, int64_t window, float scale);
/* dq[T,H,D], dk, dv [T,KH,D] += gradients of the training attention given dout[T,H,D] and the forward's out,
 * lse (P = exp(s - lse), dS = P (dP - dout.out)). Each of dq, dk, dv may be NULL. */
lf_status lf_cpu_attention_backward_ref(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                        const float *k, const float *v, const float *out, const float *lse,
                                        const int32_t *pos, int64_t T, int64_t H, int64_t KH, int64_t D,
                                        int64_t window, float scale, lf_err *err);
lf_status lf_cpu_attention_backward(lf_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *q,
                                    const float *k, const float *v, const float *out, const float *lse,
                                    const int32_t *pos, int64_t T, int64_t H, int64_t KH, int64_t D, int64_t window,
                                    float scale);

/* ---- elementwise_backward.c ---- */
/* dgate[N] += dout * up * silu'(gate), dup[N] += dout * silu(gate); either may be NULL. */
void lf_cpu_swiglu_backward_ref(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                                int64_t N);
lf_status lf_cpu_swiglu_backward(lf_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                                 const float *up, int64_t N);
/* y[N] += alpha * x[N] (x may equal y). */
void lf_cpu_axpy_ref(float *y, const float *x, float alpha, int64_t N);
lf_status lf_cpu_axpy(lf_backend *be, float *y, const float *x, float alpha, int64_t N);
/* dinp[T,C] += gradient through lf_cpu_rmsnorm_forward (weight[C] frozen) given dout[T,C]. */
void lf_cpu_rmsnorm_backward_ref(float *dinp, const float *dout, const float *inp, const float *weight, int64_t T,
                                 int64_t C, float eps);
lf_status lf_cpu_rmsnorm_backward(lf_backend *be, float *dinp, const float *dout, const float *inp,
                                  const float *weight, int64_t T, int64_t C, float eps);
/* In place on dx[T,NH,D]: the gradient through rope_forward (each pair turned by -angle). Overwrites. */
void lf_cpu_rope_backward_ref(float *dx, const int32_t *pos, const float *inv_freq, int64_t T, int64_t NH, int64_t D);
lf_status lf_cpu_rope_backward(lf_backend *be, float *dx, const int32_t *pos, const float *inv_freq, int64_t T,
                               int64_t NH, int64_t D);
/* losses[R] = logsumexp(row) - row[target] (0 for target -100), dlogits[R,V] = (softmax(row) - onehot) * dscale
 * (zeros for -100); both overwritten, either may be NULL, dlogits may alias logits. A target outside [0, V)
 * other than -100 returns LF_EINVAL before anything is written. */
lf_status lf_cpu_crossentropy_forward_backward_ref(float *losses, float *dlogits, const float *logits,
                                                   const int32_t *targets, int64_t R, int64_t V, float dscale,
                                                   lf_err *err);
lf_status lf_cpu_crossentropy_forward_backward(lf_backend *be, float *losses, float *dlogits, const float *logits,
                                               const int32_t *targets, int64_t R, int64_t V, float dscale);

/* ---- AVX2 helpers shared by the op files (x86 with GCC/Clang only) ---- */
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define LF_CPU_X86 1
#include <immintrin.h>

#define LF_CPU_AVX2 __attribute__((target("avx2,fma,f16c")))

/* Sum of the 8 lanes. */
static inline LF_CPU_AVX2 float lf_cpu_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Max of the 8 lanes. */
static inline LF_CPU_AVX2 float lf_cpu_hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* exp(x) on 8 lanes (Cephes expf: n = round(x log2 e), r = x - n ln2 in two parts, degree-6 polynomial,
 * times 2^n). Relative error about 2 ulp on [-87.3, 88.3]; x > 88.376 gives +inf, x < -87.336 gives 0
 * (the subnormal range is flushed), NaN stays NaN. */
static inline LF_CPU_AVX2 __m256 lf_cpu_exp8(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365478515625f);
    __m256 over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    __m256 xc = _mm256_max_ps(lo, _mm256_min_ps(hi, x)); /* operand order keeps NaN */
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500E-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()), over);
    return _mm256_andnot_ps(under, y);
}

/* Mask selecting the first n (0..8) lanes, for _mm256_maskload_ps / _mm256_maskstore_ps. */
static inline LF_CPU_AVX2 __m256i lf_cpu_mask8(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* ---- online-softmax steps shared by the attention kernels (attention.c, attention_paged.c,
 * attention_train.c). D8 = D rounded down to a multiple of 8; acc is 32-byte aligned. ---- */

/* q . k over D (two 8-lane FMA chains, then the scalar tail from D8). */
static inline LF_CPU_AVX2 float lf_cpu_att_dot(const float *qv, const float *kv, int64_t D, int64_t D8) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t d = 0;
    for (; d + 16 <= D; d += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(qv + d), _mm256_loadu_ps(kv + d), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(qv + d + 8), _mm256_loadu_ps(kv + d + 8), s1);
    }
    if (d < D8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(qv + d), _mm256_loadu_ps(kv + d), s0);
    float s = lf_cpu_hsum8(_mm256_add_ps(s0, s1));
    for (d = D8; d < D; d++) s += qv[d] * kv[d];
    return s;
}

/* A chunk's max bm exceeds the running max *m: rescale acc[D] and *l by exp(*m - bm) (nothing is accumulated
 * yet when *m = -inf) and make bm the running max. */
static inline LF_CPU_AVX2 void lf_cpu_att_rescale(float *acc, int64_t D, int64_t D8, float *m, float *l, float bm) {
    if (!(bm > *m)) return;
    const float corr = expf(*m - bm);
    const __m256 cv = _mm256_set1_ps(corr);
    int64_t d = 0;
    for (; d < D8; d += 8) _mm256_store_ps(acc + d, _mm256_mul_ps(_mm256_load_ps(acc + d), cv));
    for (; d < D; d++) acc[d] *= corr;
    *l *= corr;
    *m = bm;
}

/* sc[n] = exp(sc - m) in place; sc is 32-byte aligned. */
static inline LF_CPU_AVX2 void lf_cpu_att_exp_shift(float *sc, int64_t n, float m) {
    const __m256 mv = _mm256_set1_ps(m);
    int64_t jj = 0;
    for (; jj + 8 <= n; jj += 8) _mm256_store_ps(sc + jj, lf_cpu_exp8(_mm256_sub_ps(_mm256_load_ps(sc + jj), mv)));
    if (jj < n) {
        const __m256i mask = lf_cpu_mask8(n - jj);
        _mm256_maskstore_ps(sc + jj, mask, lf_cpu_exp8(_mm256_sub_ps(_mm256_maskload_ps(sc + jj, mask), mv)));
    }
}
#endif

#ifdef __cplusplus
}
#endif
#endif
