/* backend.h - the op table every model / serve / finetune call goes through (cpu always, cuda when built).
 *
 * Invariants:
 *  - Activations are typed: an lf_act is a pointer into the backend's memory plus its element type (F32, BF16
 *    or F16), row-major. Ops accumulate in f32 (or wider) whatever the storage type and round each output
 *    element once to its dtype. The arguments of one op may have different dtypes (a bf16 input and an f32
 *    output, e.g. the lm_head writing f32 logits). Weights are lf_tensor views (F32, BF16 or F16) in the
 *    backend's memory, never modified by an op; small vectors (norm weights, biases, inv_freq, DoRA
 *    magnitudes and norms) are f32.
 *  - supports_op(be, op, dtypes) says whether the backend runs `op` with activations of those dtypes (listed
 *    in the order the op's lf_act arguments appear; lf_op_n_act(op) of them). It replaces "a NULL entry means
 *    unsupported"; the CPU backend supports every op for F32, BF16 and F16 (plain references outside f32),
 *    so every other backend's result has a CPU result of the same dtype to be compared with.
 *    The training ops still take f32 `float *` activations (lf_op_n_act = 0): typing them is the next step.
 *  - Shape letters: T tokens, C channels (in), OC channels (out), H query heads, KH key/value heads,
 *    D head dim, S cached positions, V vocab, R rows, N flat element count.
 *  - One thread at a time per backend: ops share the backend's thread pool, scratch and `err`.
 *  - Shapes are checked: matmul wants weight [OC, C] and out not overlapping inp; token ids in [0, V);
 *    attention wants 0 <= pos[t] < S and H % KH == 0; rope and attention want D even and <= 512.
 *    Violations return LF_EINVAL with the op and the values in be->err.
 *  - Ops return LF_OK or fill be->err and return its code (CUDA errors, unsupported dtypes: LF_EUNSUPPORTED
 *    naming the op and the dtypes).
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

/* An activation argument: data in the backend's memory (not owned) and its dtype (F32, BF16, F16). */
typedef struct lf_act {
    void *p;
    lf_dtype dt;
} lf_act;

static inline lf_act lf_act_of(void *p, lf_dtype dt) {
    lf_act a;
    a.p = p;
    a.dt = dt;
    return a;
}
/* An f32 activation (the training path, tests). */
static inline lf_act lf_f32(const float *p) { return lf_act_of((void *)p, LF_DTYPE_F32); }
/* The activation `elems` elements further on (row offsets into a carved buffer). */
static inline lf_act lf_act_at(lf_act a, int64_t elems) {
    return lf_act_of((char *)a.p + (size_t)elems * (size_t)(lf_dtype_bits(a.dt) / 8), a.dt);
}
/* Bytes of n elements of an activation dtype. */
static inline size_t lf_act_bytes(lf_dtype dt, int64_t n) { return (size_t)n * (size_t)(lf_dtype_bits(dt) / 8); }
/* 1 for the activation dtypes (F32, BF16, F16). */
static inline int lf_act_dtype_ok(lf_dtype dt) {
    return dt == LF_DTYPE_F32 || dt == LF_DTYPE_BF16 || dt == LF_DTYPE_F16;
}

/* Every op of the table, for supports_op and the table-driven op test. */
typedef enum lf_op {
    LF_OP_EMBEDDING = 0,   /* acts: out */
    LF_OP_RMSNORM,         /* out, inp */
    LF_OP_MATMUL,          /* out, inp */
    LF_OP_ROPE,            /* x */
    LF_OP_ATTENTION,       /* out, q, k, v */
    LF_OP_SWIGLU,          /* out, gate, up */
    LF_OP_RESIDUAL,        /* out, a, b */
    LF_OP_SOFTMAX,         /* out, inp */
    LF_OP_MATMUL_Q4,       /* out, inp */
    LF_OP_ATTENTION_PAGED, /* out, q, kpool, vpool */
    LF_OP_ADD_SCALED,      /* y, x */
    LF_OP_DORA_COMBINE,    /* out, lo */
    LF_OP_CONVERT,         /* dst, src */
    /* training ops: f32 float * activations (no lf_act) */
    LF_OP_MATMUL_BACKWARD,
    LF_OP_MATMUL_Q4_BACKWARD,
    LF_OP_RMSNORM_BACKWARD,
    LF_OP_ROPE_BACKWARD,
    LF_OP_ATTENTION_TRAIN,
    LF_OP_ATTENTION_BACKWARD,
    LF_OP_SWIGLU_BACKWARD,
    LF_OP_AXPY,
    LF_OP_CROSSENTROPY,
    LF_OP_COUNT
} lf_op;

/* "matmul", "attention_paged", ...; "?" for an unknown op. */
const char *lf_op_name(lf_op op);
/* Number of lf_act arguments of op (0 for the f32 training ops). */
int lf_op_n_act(lf_op op);

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
    lf_status (*embedding_forward)(lf_backend *be, lf_act out, const int32_t *tokens, const lf_tensor *wte,
                                   int64_t T);
    /* out[T,C] = inp * rsqrt(mean(inp^2) + eps) * weight[C]; out may alias inp. */
    lf_status (*rmsnorm_forward)(lf_backend *be, lf_act out, lf_act inp, const float *weight, int64_t T,
                                 int64_t C, float eps);
    /* out[T,OC] = inp[T,C] @ weight[OC,C]^T (+ bias[OC] if non-NULL). out must not alias inp. */
    lf_status (*matmul_forward)(lf_backend *be, lf_act out, lf_act inp, const lf_tensor *weight,
                                const float *bias, int64_t T, int64_t C, int64_t OC);
    /* In place on x[T,NH,D] (NH = H or KH): HF rotate-half RoPE at positions pos[T] with inv_freq[D/2]. */
    lf_status (*rope_forward)(lf_backend *be, lf_act x, const int32_t *pos, const float *inv_freq, int64_t T,
                              int64_t NH, int64_t D);
    /* Causal GQA attention. q[T,H,D]; k, v: [S,KH,D] (cache rows 0..S-1 hold positions 0..S-1).
     * Query t at position pos[t] attends keys j with max(0, pos[t]-window+1) <= j <= pos[t]
     * (window <= 0: no window). Scores scaled by `scale`. out[T,H,D]. Query head h uses KV head
     * h / (H/KH). */
    lf_status (*attention_forward)(lf_backend *be, lf_act out, lf_act q, lf_act k, lf_act v,
                                   const int32_t *pos, int64_t T, int64_t S, int64_t H, int64_t KH, int64_t D,
                                   int64_t window, float scale);
    /* out[N] = silu(gate[N]) * up[N]; out may alias gate or up. */
    lf_status (*swiglu_forward)(lf_backend *be, lf_act out, lf_act gate, lf_act up, int64_t N);
    /* out[N] = a[N] + b[N]; out may alias a or b. */
    lf_status (*residual_forward)(lf_backend *be, lf_act out, lf_act a, lf_act b, int64_t N);
    /* out[R,V] = softmax over each row of inp[R,V]; out may alias inp. */
    lf_status (*softmax_forward)(lf_backend *be, lf_act out, lf_act inp, int64_t R, int64_t V);

    /* ---- 4-bit weights (quant/quant_block.h layout) ---- */
    /* out[T,OC] = inp[T,C] @ deq(w)^T (+ bias[OC]); w is [OC,C] NF4/FP4, read packed (never a full dequantized
     * copy). out must not alias inp. */
    lf_status (*matmul_q4_forward)(lf_backend *be, lf_act out, lf_act inp, const struct lf_quant_state *w,
                                   const float *bias, int64_t T, int64_t C, int64_t OC);

    /* ---- paged attention (serving) ----
     * Causal GQA attention of T new queries of ONE sequence over a paged KV cache. kpool, vpool:
     * [NB, BS, KH, D] (NB blocks of BS token slots); the sequence's logical position j lives in block
     * block_table[j / BS], slot j % BS. Query t at position pos[t] attends positions
     * max(0, pos[t]-window+1) .. pos[t]; every attended position's block must be in block_table[0..n_blocks).
     * q[T,H,D] -> out[T,H,D]. */
    lf_status (*attention_paged_forward)(lf_backend *be, lf_act out, lf_act q, lf_act kpool,
                                         lf_act vpool, const int32_t *block_table, int64_t n_blocks,
                                         int64_t BS, const int32_t *pos, int64_t T, int64_t H, int64_t KH,
                                         int64_t D, int64_t window, float scale);

    /* ---- adapters and conversions ----
     * y[N] += alpha * x[N] (the LoRA term of a linear); x may equal y. */
    lf_status (*add_scaled_forward)(lf_backend *be, lf_act y, lf_act x, float alpha, int64_t N);
    /* DoRA (PEFT's inference formula) given the base output out[T,OC] (bias included) and lo[T,OC] = B A x:
     * out += (mag/wn - 1) * (out - bias) + (mag/wn) * scale * lo, with mag, wn [OC] f32 and bias [OC] f32 or
     * NULL. */
    lf_status (*dora_combine_forward)(lf_backend *be, lf_act out, lf_act lo, const float *mag, const float *wn,
                                      const float *bias, float scale, int64_t T, int64_t OC);
    /* dst[N] = src[N] converted (round to nearest even); dst must not overlap src unless it is src. */
    lf_status (*convert)(lf_backend *be, lf_act dst, lf_act src, int64_t N);

    /* ---- capabilities ---- */
    /* 1 when the backend runs op with activations of dtypes[0..n) (lf_op_n_act(op) entries, in argument
     * order; n = 0 for the f32 training ops). */
    int (*supports_op)(const lf_backend *be, lf_op op, const lf_dtype *dtypes, int n);

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
    const char *name;          /* "cpu", "cuda", "cpu-checked" */
    lf_device device;
    int host_memory;           /* 1: ops may be handed host pointers (the cpu backend reads mmapped weights in
                                * place); 0: everything an op reads or writes must come from ops->alloc, so the
                                * model uploads its weights and adapters (cuda, the checked cpu backend) */
    const lf_backend_ops *ops; /* static table, not owned */
    void *ctx;                 /* backend-private state, owned by the backend */
    lf_err err;                /* last op failure */
};

/* CPU backend with n_threads (<= 0: all online CPUs). Caller owns; free with lf_backend_free. */
lf_backend *lf_backend_cpu_create(int n_threads);
/* A CPU backend for tests with host_memory = 0 whose every op and copy first checks that each pointer it is
 * given lies, with its whole extent, inside one of the backend's own allocations (LF_EINVAL naming the op and
 * the argument otherwise), then runs the CPU op. It stands in for a device on a machine without one: a model,
 * session, batch or engine that runs on it never hands an op host memory. Training ops are not offered. */
lf_backend *lf_backend_cpu_checked_create(int n_threads);
/* Threads of a CPU backend (1 for others). */
int lf_backend_cpu_threads(const lf_backend *be);

/* CUDA backend on device `ordinal`. Returns NULL and fills err when CUDA is not built or no device. */
lf_backend *lf_backend_cuda_create(int ordinal, lf_err *err);
/* 1 when this binary was built with the CUDA part. */
int lf_backend_cuda_built(void);

/* Frees any backend. NULL is a no-op. */
void lf_backend_free(lf_backend *be);

/* 1 when be runs op with activations of dtype dt everywhere (every lf_act argument dt; the f32 training ops
 * ignore dt). The one capability check callers use. */
int lf_backend_supports(const lf_backend *be, lf_op op, lf_dtype dt);

#ifdef __cplusplus
}
#endif
#endif
