/* cuda_quant.h - the CUDA side of 4-bit weights (kernels/cuda/quant.cu), callable from C: dequantize a
 * backend state to f32/bf16, matmul_q4_forward, and the backend's dequantize workspace.
 *
 * Plain C (no CUDA headers), so kernels/quant_upload.c can call in; the symbols exist only in builds with
 * LF_WITH_CUDA. `w` is always a backend state of `be` (arrays in device memory, see kernels/quant_upload.h);
 * errors go to be->err as for every op. Work is queued on the backend's stream. */
#ifndef LF_KERNELS_CUDA_CUDA_QUANT_H
#define LF_KERNELS_CUDA_CUDA_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"
#include "kernels/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lf_quant_state;

/* matmul_q4_forward takes the fused kernel (reads packed weights, never a dequantized copy) for T up to this;
 * above it, W is dequantized to bf16 in the workspace and the bf16 cuBLASLt matmul runs. */
#define LF_CUDA_Q4_FUSED_MAX_T 8

/* out[n] (device) = dequantize(w) as dt (LF_DTYPE_F32 or LF_DTYPE_BF16 as uint16 bits); bit-identical to
 * lf_quant_dequantize_f32 / _bf16. */
lf_status lf_cuda_quant_dequantize(lf_backend *be, void *out, lf_dtype dt, const struct lf_quant_state *w);

/* The backend.h op: out[T,OC] = inp[T,C] @ deq(w)^T (+ bias[OC]). inp, out, bias in device memory; out and
 * inp F32, BF16 or F16 in any combination (f32 accumulation, one rounding per output element). */
lf_status lf_cuda_matmul_q4_forward(lf_backend *be, lf_act out, lf_act inp, const struct lf_quant_state *w,
                                    const float *bias, int64_t T, int64_t C, int64_t OC);

/* The bf16 copy of W that matmul_q4_forward's T > LF_CUDA_Q4_FUSED_MAX_T path multiplies with: sized on first
 * use, grown (never shrunk) when a larger weight comes, freed with the backend. Lives beside lf_cuda_ctx in the
 * backend's context (backend_cuda.cu); quant.cu reserves and frees it. */
typedef struct lf_cuda_q4_ws {
    void *w16;        /* owned: [OC*C] bf16, device */
    size_t w16_bytes; /* capacity in bytes (0 until first use) */
} lf_cuda_q4_ws;

/* The workspace of a CUDA backend (defined in backend_cuda.cu). */
lf_cuda_q4_ws *lf_cuda_q4_ws_of(lf_backend *be);
/* Frees ws's buffer (after the stream is idle: the caller has synchronized) and zeroes it (quant.cu). */
void lf_cuda_q4_ws_release(lf_cuda_q4_ws *ws);

#ifdef __cplusplus
}
#endif
#endif
