/* quant_upload.h - put a 4-bit weight (lf_quant_state) into a backend's memory, and dequantize it there.
 *
 * A "backend state" is an lf_quant_state whose array pointers (packed, absmax or absmax_q + nested_absmax)
 * are in the backend's memory; the scalars (type, blocksize, shape, offset) and the 256-entry nested_map stay
 * inside the struct on the host, and ops pass them to their kernels by value. It is what
 * lf_backend_ops.matmul_q4_forward takes.
 *
 * Ownership:
 *  - A backend without host memory (be->host_memory 0: CUDA, the checked cpu backend): lf_quant_state_upload makes ONE be->ops->alloc holding
 *    every array (packed at offset 0, each later array 256-byte aligned) and copies the host arrays into it;
 *    dev->owned stays NULL, so lf_quant_state_free on it frees nothing (it must not free() device memory):
 *    release it with lf_quant_state_release, on the same backend, after the ops that read it.
 *  - host_memory backends (the CPU): dev is a view of host's arrays (no copy); host must outlive dev; release only zeroes dev.
 * Shapes: W [rows = OC, cols = C]; n = rows * cols; nblocks = ceil(n / blocksize). */
#ifndef LF_KERNELS_QUANT_UPLOAD_H
#define LF_KERNELS_QUANT_UPLOAD_H

#include <stddef.h>

#include "core/status.h"
#include "core/tensor.h"
#include "kernels/backend.h"
#include "quant/quant.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Alignment of every array after packed inside the one device allocation. */
#define LF_QUANT_UPLOAD_ALIGN 256

/* dev = host's weight in be's memory (see above). host must be a complete state (packed non-NULL; absmax, or
 * absmax_q + nested_absmax when nested). On failure dev is zeroed, nothing is left allocated, err says why. */
lf_status lf_quant_state_upload(lf_backend *be, const lf_quant_state *host, lf_quant_state *dev, lf_err *err);

/* Frees what lf_quant_state_upload allocated for dev (nothing on the CPU) and zeroes dev. NULL dev or a
 * zeroed dev is a no-op. Frees wait for queued work that may still read the arrays (cudaFree does). */
void lf_quant_state_release(lf_backend *be, lf_quant_state *dev);

/* Bytes of the one allocation lf_quant_state_upload makes for host on a device backend (0 for an empty
 * state): packed + padding + absmax (f32) or absmax_q (u8) + nested_absmax. */
size_t lf_quant_upload_nbytes(const lf_quant_state *host);

/* out[n] (in be's memory) = dequantize(w), w a backend state of be; dt LF_DTYPE_F32 or LF_DTYPE_BF16.
 * Bit-identical to lf_quant_dequantize_f32 / _bf16 on every backend. CPU: threaded on be's pool. CUDA: queued
 * on the backend's stream (returns before the kernel finishes; download or synchronize to wait). */
lf_status lf_quant_state_dequantize(lf_backend *be, void *out, lf_dtype dt, const lf_quant_state *w, lf_err *err);

#ifdef __cplusplus
}
#endif
#endif
