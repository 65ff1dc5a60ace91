/* backend.h - the op table every model / serve / finetune call goes through (cpu always, cuda when built).
 *
 * Invariants:
 *  - Activations are f32 row-major in the backend's memory; weights are lf_tensor views (F32, BF16 or F16)
 *    in the backend's memory, never modified by an op.
 *  - Shape letters: T tokens, C channels (in), OC channels (out), H query heads, KH key/value heads,
 *    D head dim, S cached positions, V vocab, R rows, N flat element count.
 *  - One thread at a time per backend: ops share the backend's thread pool, scratch and `err`.
 *  - Shapes are checked: matmul wants weight [OC, C] and out not overlapping inp; token ids in [0, V);
 *    attention wants 0 <= pos[t] < S and H % KH == 0; rope and attention want D even and <= 512.
 *    Violations return LF_EINVAL with the op and the values in be->err.
 *  - Ops return LF_OK or fill be->err and return its code (CUDA errors, unsupported dtypes). An op left
 *    NULL in a table is unsupported by that backend: callers check LF_BACKEND_SUPPORTS(be, op).
 *  - Ops never allocate per call on the CPU; scratch lives in the backend context sized at create time. */
#ifndef LF_KERNELS_BACKEND_H
#define LF_KERNELS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"

struct lf_quant_state; /* quant/quant.h: one 4-bit weight (packed codes + absmax), in the backend's memory */

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lf_backend lf_backend;

typedef struct lf_backend_ops {
    /* ---- lifetime and memory ---- */
    void (*destroy)(lf_backend *be);                         /* frees ctx and be itself */
    void *(*alloc)(lf_backend *be, size_t nbytes);           /* NULL (and be->err) on failure */
    void (*free)(lf_backend *be, void *ptr);                 /* NULL is a no-op */
    lf_status (*upload)(lf_backend *be, void *dst, const void *host_src, size_t nbytes);
    lf_status (*download)(lf_backend *be, void *host_dst, const void *src, size_t nbytes);
    lf_status (*copy)(lf_backend *be, void *dst, const void *src, size_t nbytes); /* within the backend; may overlap */
    lf_status (*synchronize)(lf_backend *be);

    /* ---- inference ops ---- */
    /* out[T,C] = wte[tokens[t], :] (wte: [V,C] F32/BF16/F16). Token ids are checked < V. */
    lf_status (*embedding_forward)(lf_backend *be, float *out, const int32_t *tokens, const lf_tensor *wte,
                                   int64_t T);
    /* out[T,C] = inp * rsqrt(mean(inp^2) + eps) * weight[C]; out may alias inp. */
    lf_status (*rmsnorm_forward)(lf_backend *be, float *out, const float *inp, const float *weight, int64_t T,
                                 int64_t C, float eps);
    /* out[T,OC] = inp[T,C] @ weight[OC,C]^T (+ bias[OC] if non-NULL). out must not alias inp. */
    lf_status (*matmul_forward)(lf_backend *be, float *out, const float *inp, const lf_tensor *weight,
                                const float *bias, int64_t T, int64_t C, int64_t OC);
    /* In place on x[T,NH,D] (NH = H or KH): HF rotate-half RoPE at positions pos[T] with inv_freq[D/2]. */
    lf_status (*rope_forward)(lf_backend *be, float *x, const int32_t *pos, const float *inv_freq, int64_t T,
                              int64_t NH, int64_t D);
    /* Causal GQA attention. q[T,H,D]; k, v: [S,KH,D] (cache rows 0..S-1 hold positions 0..S-1).
     * Query t at position pos[t] attends keys j with max(0, pos[t]-window+1) <= j <= pos[t]
     * (window <= 0: no window). Scores scaled by `scale`. out[T,H,D]. Query head h uses KV head
     * h / (H/KH). */
    lf_status (*attention_forward)(lf_backend *be, float *out, const float *q, const float *k, const float *v,
                                   const int32_t *pos, int64_t T, int64_t S, int64_t H, int64_t KH, int64_t D,
                                   int64_t window, float scale);
    /* out[N] = silu(gate[N]) * up[N]; out may alias gate or up. */
    lf_status (*swiglu_forward)(lf_backend *be, float *out, const float *gate, const float *up, int64_t N);
    /* out[N] = a[N] + b[N]; out may alias a or b. */
    lf_status (*residual_forward)(lf_backend *be, float *out, const float *a, const float *b, int64_t N);
    /* out[R,V] = softmax over each row of inp[R,V]; out may alias inp. */
    lf_status (*softmax_forward)(lf_backend *be, float *out, const float *inp, int64_t R, int64_t V);

    /* ---- 4-bit weights (quant/quant_block.h layout) ---- */
    /* out[T,OC] = inp[T,C] @ deq(w)^T (+ bias[OC]); w is [OC,C] NF4/FP4, read packed (never a full dequantized
     * copy). out must not alias inp. */
    lf_status (*matmul_q4_forward)(lf_backend *be, float *out, const float *inp, const struct lf_quant_state *w,
                                   const float *bias, int64_t T, int64_t C, int64_t OC);

    /* ---- paged attention (serving) ----
     * Causal GQA attention of T new queries of ONE sequence over a paged KV cache. kpool, vpool:
     * [NB, BS, KH, D] (NB blocks of BS token slots); the sequence's logical position j lives in block
     * block_table[j / BS], slot j % BS. Query t at position pos[t] attends positions
     * max(0, pos[t]-window+1) .. pos[t]; every attended position's block must be in block_table[0..n_blocks).
     * q[T,H,D] -> out[T,H,D]. */
    lf_status (*attention_paged_forward)(lf_backend *be, float *out, const float *q, const float *kpool,
                                         const float *vpool, const int32_t *block_table, int64_t n_blocks,
                                         int64_t BS, const int32_t *pos, int64_t T, int64_t H, int64_t KH,
                                         int64_t D, int64_t window, float scale);

    /* ---- training ops ----
     * Gradients ACCUMULATE (+=) into every d* output unless said otherwise; the caller zeroes them. A NULL
     * d* output is skipped. Training sequences may be packed: pos[t] restarts at 0 at each row's first token,
     * and query t attends keys j with t - pos[t] <= j <= t (and j > t - window when window > 0), so no
     * attention crosses rows. */
    /* dinp[T,C] += dout[T,OC] @ weight[OC,C] (weight F32/BF16/F16); dweight[OC,C] (F32, may be NULL)
     * += dout^T @ inp[T,C]. */
    lf_status (*matmul_backward)(lf_backend *be, float *dinp, float *dweight, const float *dout, const float *inp,
                                 const lf_tensor *weight, int64_t T, int64_t C, int64_t OC);
    /* dinp[T,C] += dout[T,OC] @ deq(w)[OC,C] (frozen 4-bit base: no weight gradient). */
    lf_status (*matmul_q4_backward)(lf_backend *be, float *dinp, const float *dout, const struct lf_quant_state *w,
                                    int64_t T, int64_t C, int64_t OC);
    /* dinp[T,C] += d/dinp of rmsnorm_forward(inp, weight) given dout[T,C] (weight frozen). */
    lf_status (*rmsnorm_backward)(lf_backend *be, float *dinp, const float *dout, const float *inp,
                                  const float *weight, int64_t T, int64_t C, float eps);
    /* In place on dx[T,NH,D]: the gradient through rope_forward (rotation by -angle). Overwrites. */
    lf_status (*rope_backward)(lf_backend *be, float *dx, const int32_t *pos, const float *inv_freq, int64_t T,
                               int64_t NH, int64_t D);
    /* Training attention over the sequence itself (no cache): q[T,H,D], k,v [T,KH,D] -> out[T,H,D] and
     * lse[T,H] (log-sum-exp of each query's scaled scores, kept for the backward). Masking as above. */
    lf_status (*attention_train_forward)(lf_backend *be, float *out, float *lse, const float *q, const float *k,
                                         const float *v, const int32_t *pos, int64_t T, int64_t H, int64_t KH,
                                         int64_t D, int64_t window, float scale);
    /* dq[T,H,D], dk, dv [T,KH,D] += gradients given dout[T,H,D] and the forward's q, k, v, out, lse. */
    lf_status (*attention_backward)(lf_backend *be, float *dq, float *dk, float *dv, const float *dout,
                                    const float *q, const float *k, const float *v, const float *out,
                                    const float *lse, const int32_t *pos, int64_t T, int64_t H, int64_t KH,
                                    int64_t D, int64_t window, float scale);
    /* dgate[N] += dout * d silu(gate)*up / dgate; dup[N] += dout * silu(gate). */
    lf_status (*swiglu_backward)(lf_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                                 const float *up, int64_t N);
    /* y[N] += alpha * x[N] (residual backward, LoRA scaling, gradient accumulation). */
    lf_status (*axpy)(lf_backend *be, float *y, const float *x, float alpha, int64_t N);
    /* Cross-entropy of R rows of logits[R,V] against targets[R] (-100 = ignored row). losses[R] (overwritten):
     * logsumexp(row) - row[target], 0 for ignored rows. dlogits[R,V] (overwritten, may alias logits):
     * (softmax(row) - onehot(target)) * dscale, zeros for ignored rows. The caller feeds the vocabulary in
     * row chunks so [T,V] is never held whole. */
    lf_status (*crossentropy_forward_backward)(lf_backend *be, float *losses, float *dlogits, const float *logits,
                                               const int32_t *targets, int64_t R, int64_t V, float dscale);
} lf_backend_ops;

struct lf_backend {
    const char *name;          /* "cpu", "cuda" */
    lf_device device;
    const lf_backend_ops *ops; /* static table, not owned */
    void *ctx;                 /* backend-private state, owned by the backend */
    lf_err err;                /* last op failure */
};

/* CPU backend with n_threads (<= 0: all online CPUs). Caller owns; free with lf_backend_free. */
lf_backend *lf_backend_cpu_create(int n_threads);
/* Threads of a CPU backend (1 for others). */
int lf_backend_cpu_threads(const lf_backend *be);

/* CUDA backend on device `ordinal`. Returns NULL and fills err when CUDA is not built or no device. */
lf_backend *lf_backend_cuda_create(int ordinal, lf_err *err);
/* 1 when this binary was built with the CUDA part. */
int lf_backend_cuda_built(void);

/* Frees any backend. NULL is a no-op. */
void lf_backend_free(lf_backend *be);

/* 1 when the backend implements op, e.g. LF_BACKEND_SUPPORTS(be, matmul_forward). */
#define LF_BACKEND_SUPPORTS(be, op) ((be)->ops->op != NULL)

#ifdef __cplusplus
}
#endif
#endif
