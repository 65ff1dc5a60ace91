/* cpu_paged.h - internal to kernels/cpu and its tests: the CPU paged attention op (serving), its scalar
 * reference and the fast entry point that the CPU op table holds as attention_paged_forward.
 *
 * Layout (kernels/backend.h): kpool, vpool [NB, BS, KH, D] f32; a sequence's logical position j lives in
 * block block_table[j / BS], slot j % BS, i.e. at row (block_table[j / BS] * BS + j % BS) of the pool.
 * Shape letters as in backend.h: T new query tokens, H query heads, KH kv heads, D head dim, BS slots per block.
 *
 * Invariants: both functions only read q, kpool, vpool, block_table, pos and write out[T,H,D]; neither
 * allocates. The caller guarantees that every block id in block_table[0..n_blocks) that an attended position
 * maps to is < NB (the pool size is not passed to the op); ids are checked to be >= 0. Arguments checked:
 * T >= 0, n_blocks >= 0, BS >= 1, H, KH >= 1, H % KH == 0, D even with 2 <= D <= LF_CPU_MAX_HEAD_DIM,
 * 0 <= pos[t] < n_blocks * BS. Bad input returns LF_EINVAL with the values in the message, out untouched. */
#ifndef LF_KERNELS_CPU_CPU_PAGED_H
#define LF_KERNELS_CPU_CPU_PAGED_H

#include <stdint.h>

#include "core/status.h"
#include "kernels/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- attention_paged.c ---- */
/* Causal GQA attention of T queries of one sequence over a paged KV cache, as backend.h's
 * attention_paged_forward: query t (head h, kv head h / (H/KH)) at position pos[t] attends positions
 * max(0, pos[t]-window+1) .. pos[t] (window <= 0: no window), scores scaled by `scale`.
 * q[T,H,D], kpool/vpool [NB,BS,KH,D], block_table[n_blocks], pos[T] -> out[T,H,D].
 * The ref is two passes in double (the spec); fills err (may be NULL) on bad input. */
/* The argument checks of both (sizes, positions, the ids of every attended block). */
lf_status lf_cpu_attention_paged_check(const int32_t *bt, int64_t n_blocks, int64_t BS, const int32_t *pos, int64_t T,
                                       int64_t H, int64_t KH, int64_t D, int64_t window, lf_err *err);
lf_status lf_cpu_attention_paged_forward_ref(float *out, const float *q, const float *kpool, const float *vpool,
                                             const int32_t *block_table, int64_t n_blocks, int64_t BS,
                                             const int32_t *pos, int64_t T, int64_t H, int64_t KH, int64_t D,
                                             int64_t window, float scale, lf_err *err);
/* Fast path: one pass of online softmax per (t, h) over chunks of keys, threaded over (t, h) on be's pool,
 * AVX2/FMA when lf_cpu_simd(). be must be a CPU backend; fills be->err on bad input. */
lf_status lf_cpu_attention_paged_forward(lf_backend *be, float *out, const float *q, const float *kpool,
                                         const float *vpool, const int32_t *block_table, int64_t n_blocks,
                                         int64_t BS, const int32_t *pos, int64_t T, int64_t H, int64_t KH,
                                         int64_t D, int64_t window, float scale);

#ifdef __cplusplus
}
#endif
#endif
