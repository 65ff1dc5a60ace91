/* cuda_common.h - private to kernels/cuda/ .cu files: error macros, the backend context, reductions, typed
 * activation accessors (lf_ptr<T> / lf_dyn: f32 arithmetic, one rounding per stored element), launchers.
 *
 * Not a public header: it includes CUDA and cuBLAS headers and is compiled as C++ by nvcc only.
 *
 * Error macros. Each one evaluates `expr` once; on failure it writes
 *     "<expr> failed: <library error name>: <library error string> (cuda:<device>, <file>:<line>)"
 * into an lf_err (any lf_err *, usually &be->err; NULL is allowed) and then either returns LF_ECUDA
 * (LF_CHECK_*) or sets the caller's `lf_status st = LF_ECUDA` and jumps to its one `fail:` label (LF_*_TRY),
 * matching LF_TRY / LF_CHECK_ALLOC in core/status.h:
 *
 *     lf_status st = LF_OK;
 *     LF_CUDA_TRY(&be->err, cudaMalloc(&p, n));      // on failure: be->err filled, st = LF_ECUDA, goto fail
 *     kernel<<<g, b, 0, stream>>>(...);
 *     LF_CUDA_LAUNCH_TRY(&be->err);                  // after every launch
 *     return LF_OK;
 * fail:
 *     cudaFree(p);
 *     return st;
 *
 * After each kernel launch, LF_CUDA_LAUNCH_CHECK / LF_CUDA_LAUNCH_TRY read cudaGetLastError (bad launch
 * configuration, missing kernel image for this GPU). Built with -DLF_CUDA_DEBUG_SYNC they also
 * cudaDeviceSynchronize, so a fault inside the kernel is reported at its own launch rather than at a later
 * copy. LF_CHECK_NCCL / LF_NCCL_TRY exist only when LF_WITH_NCCL is defined. */
#ifndef LF_KERNELS_CUDA_COMMON_H
#define LF_KERNELS_CUDA_COMMON_H

#ifndef __cplusplus
#error "kernels/cuda/cuda_common.h is for .cu files (C++) only"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cublasLt.h>
#include <cublas_v2.h>
#ifdef LF_WITH_NCCL
#include <nccl.h>
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"
#include "kernels/backend.h"

/* ---------------------------------------------------------------------------------------------------------
 * Error recording (out-of-line helpers so each macro expands to one call on its cold path)
 * --------------------------------------------------------------------------------------------------------- */

static inline lf_status lf_cuda_record_(lf_err *err, const char *expr, const char *name, const char *desc,
                                        const char *file, int line) {
    int dev = -1;
    (void)cudaGetDevice(&dev); /* best effort; does not touch the sticky error state */
    return lf_err_set(err, LF_ECUDA, "%s failed: %s: %s (cuda:%d, %s:%d)", expr, name, desc, dev, file, line);
}

static inline lf_status lf_cuda_fail_(lf_err *err, cudaError_t e, const char *expr, const char *file, int line) {
    return lf_cuda_record_(err, expr, cudaGetErrorName(e), cudaGetErrorString(e), file, line);
}

static inline lf_status lf_cublas_fail_(lf_err *err, cublasStatus_t s, const char *expr, const char *file,
                                        int line) {
    return lf_cuda_record_(err, expr, cublasGetStatusName(s), cublasGetStatusString(s), file, line);
}

/* ---- return form: `return LF_ECUDA` from the enclosing function ---- */
#define LF_CHECK_CUDA(err, expr)                                                   \
    do {                                                                           \
        cudaError_t lf_cu_e_ = (expr);                                             \
        if (lf_cu_e_ != cudaSuccess) return lf_cuda_fail_((err), lf_cu_e_, #expr, __FILE__, __LINE__); \
    } while (0)

#define LF_CHECK_CUBLAS(err, expr)                                                 \
    do {                                                                           \
        cublasStatus_t lf_cb_s_ = (expr);                                          \
        if (lf_cb_s_ != CUBLAS_STATUS_SUCCESS)                                     \
            return lf_cublas_fail_((err), lf_cb_s_, #expr, __FILE__, __LINE__);    \
    } while (0)

/* ---- goto form: st = LF_ECUDA; goto fail (the function declares `lf_status st` and one `fail:`) ---- */
#define LF_CUDA_TRY(err, expr)                                                     \
    do {                                                                           \
        cudaError_t lf_cu_e_ = (expr);                                             \
        if (lf_cu_e_ != cudaSuccess) {                                             \
            st = lf_cuda_fail_((err), lf_cu_e_, #expr, __FILE__, __LINE__);        \
            goto fail;                                                             \
        }                                                                          \
    } while (0)

#define LF_CUBLAS_TRY(err, expr)                                                   \
    do {                                                                           \
        cublasStatus_t lf_cb_s_ = (expr);                                          \
        if (lf_cb_s_ != CUBLAS_STATUS_SUCCESS) {                                   \
            st = lf_cublas_fail_((err), lf_cb_s_, #expr, __FILE__, __LINE__);      \
            goto fail;                                                             \
        }                                                                          \
    } while (0)

/* ---- after every kernel launch ---- */
#ifdef LF_CUDA_DEBUG_SYNC
#define LF_CUDA_LAUNCH_SYNC_(err, on_fail)                                                    \
    do {                                                                                      \
        cudaError_t lf_cu_s_ = cudaDeviceSynchronize();                                       \
        if (lf_cu_s_ != cudaSuccess) {                                                        \
            lf_status lf_cu_st_ = lf_cuda_fail_((err), lf_cu_s_, "kernel (debug sync)", __FILE__, __LINE__); \
            on_fail;                                                                          \
        }                                                                                     \
    } while (0)
#else
#define LF_CUDA_LAUNCH_SYNC_(err, on_fail) ((void)0)
#endif

#define LF_CUDA_LAUNCH_CHECK(err)                                                             \
    do {                                                                                      \
        cudaError_t lf_cu_l_ = cudaGetLastError();                                            \
        if (lf_cu_l_ != cudaSuccess) return lf_cuda_fail_((err), lf_cu_l_, "kernel launch", __FILE__, __LINE__); \
        LF_CUDA_LAUNCH_SYNC_((err), return lf_cu_st_);                                        \
    } while (0)

#define LF_CUDA_LAUNCH_TRY(err)                                                               \
    do {                                                                                      \
        cudaError_t lf_cu_l_ = cudaGetLastError();                                            \
        if (lf_cu_l_ != cudaSuccess) {                                                        \
            st = lf_cuda_fail_((err), lf_cu_l_, "kernel launch", __FILE__, __LINE__);         \
            goto fail;                                                                        \
        }                                                                                     \
        LF_CUDA_LAUNCH_SYNC_((err), st = lf_cu_st_; goto fail);                               \
    } while (0)

#ifdef LF_WITH_NCCL
static inline lf_status lf_nccl_fail_(lf_err *err, ncclResult_t r, const char *expr, const char *file, int line) {
    return lf_cuda_record_(err, expr, "ncclResult", ncclGetErrorString(r), file, line);
}

#define LF_CHECK_NCCL(err, expr)                                                   \
    do {                                                                           \
        ncclResult_t lf_nc_r_ = (expr);                                            \
        if (lf_nc_r_ != ncclSuccess) return lf_nccl_fail_((err), lf_nc_r_, #expr, __FILE__, __LINE__); \
    } while (0)

#define LF_NCCL_TRY(err, expr)                                                     \
    do {                                                                           \
        ncclResult_t lf_nc_r_ = (expr);                                            \
        if (lf_nc_r_ != ncclSuccess) {                                             \
            st = lf_nccl_fail_((err), lf_nc_r_, #expr, __FILE__, __LINE__);        \
            goto fail;                                                             \
        }                                                                          \
    } while (0)
#endif /* LF_WITH_NCCL */

/* ---------------------------------------------------------------------------------------------------------
 * The CUDA backend's private state (be->ctx). Created once in lf_backend_cuda_create, freed by destroy.
 * Every op runs on `stream`, in order; only upload/download/synchronize (and the embedding token check)
 * make the host wait.
 * --------------------------------------------------------------------------------------------------------- */

#define LF_CUDA_LT_WORKSPACE_BYTES ((size_t)32 << 20) /* cuBLASLt scratch: 32 MiB, NVIDIA's advice for Hopper */
/* attention_paged's split-KV partials (attention_paged.cu): allocated at create time, never grown. A call
 * whose T*H*(D+2) floats per split do not fit runs with fewer splits (down to 1, which needs none). */
#define LF_CUDA_PAGED_SCRATCH_BYTES ((size_t)8 << 20)
#define LF_CUDA_PAGED_MAX_SPLITS 64

/* One remembered cuBLASLt heuristic answer: the algorithm for a problem shape, types and alignments. */
#define LF_CUDA_ALGO_CACHE 64
typedef struct lf_cuda_algo_key {
    int64_t T, C, OC;
    int32_t ab_type;                  /* cudaDataType_t of A and B */
    int32_t d_type;                   /* cudaDataType_t of C and D */
    uint32_t al_a, al_b, al_d, al_bias; /* alignments in bytes (al_bias 0: no bias epilogue) */
} lf_cuda_algo_key;
typedef struct lf_cuda_algo_entry {
    lf_cuda_algo_key key;
    int valid;
    cublasLtMatmulAlgo_t algo;
} lf_cuda_algo_entry;

typedef struct lf_cuda_ctx {
    int ordinal;                /* device index passed to cudaSetDevice before each op */
    int cc_major, cc_minor;     /* compute capability */
    int sm_count;               /* multiprocessors, for grid sizing */
    cudaStream_t stream;        /* owned: every op and copy is queued here */
    cublasLtHandle_t lt;        /* owned: the matmul path */
    cublasHandle_t blas;        /* owned: fallback GEMM when cuBLASLt offers no algorithm */
    void *lt_ws;                /* owned: [LF_CUDA_LT_WORKSPACE_BYTES] cuBLASLt workspace */
    size_t lt_ws_bytes;
    void *mm_in;                /* owned: matmul input converted to the weight's dtype, [T*C]; grows */
    size_t mm_in_bytes;         /* its capacity in bytes (0 until the first call that needs it) */
    float *mm_out;              /* owned: matmul f32 staging output [T*OC] (16-bit out with bias or another
                                 * compute type); grows */
    size_t mm_out_bytes;
    float *pa_part;             /* owned: attention_paged split partials, [LF_CUDA_PAGED_SCRATCH_BYTES] */
    size_t pa_part_floats;      /* its capacity in floats */
    int *d_flag;                /* owned: [2] device ints set by kernels that detect bad input (embedding) */
    int *h_flag;                /* owned: [2] pinned host copy of d_flag */
    lf_cuda_algo_entry algos[LF_CUDA_ALGO_CACHE]; /* matmul: heuristic answers, round-robin replacement */
    int algo_next;              /* next slot to replace */
} lf_cuda_ctx;

static inline lf_cuda_ctx *lf_cuda_ctx_of(lf_backend *be) { return (lf_cuda_ctx *)be->ctx; }

/* Make this backend's device current (a no-op when it already is); first call of every op. */
static inline lf_status lf_cuda_enter(lf_backend *be) {
    LF_CHECK_CUDA(&be->err, cudaSetDevice(lf_cuda_ctx_of(be)->ordinal));
    return LF_OK;
}

/* Blocks for a grid-stride loop over n elements: enough to fill the GPU, capped so huge n still loops. */
static inline unsigned lf_cuda_grid_1d(const lf_cuda_ctx *cx, int64_t n, int threads) {
    int64_t blocks = (n + threads - 1) / threads;
    int64_t cap = (int64_t)(cx->sm_count > 0 ? cx->sm_count : 80) * 32;
    if (blocks > cap) blocks = cap;
    return (unsigned)(blocks < 1 ? 1 : blocks);
}

/* ---------------------------------------------------------------------------------------------------------
 * Device reductions (blockDim.x a multiple of 32, at most 1024)
 * --------------------------------------------------------------------------------------------------------- */

static __device__ __forceinline__ float lf_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float lf_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum of v over the block, returned to every thread. scratch: 32 floats of shared memory. Starts with a
 * barrier, so back-to-back calls may reuse the same scratch; all threads of the block must call it. */
static __device__ __forceinline__ float lf_block_sum(float v, float *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = lf_warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return lf_warp_sum(lane < nwarps ? scratch[lane] : 0.0f);
}

/* Max of v over the block (as lf_block_sum). */
static __device__ __forceinline__ float lf_block_max(float v, float *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = lf_warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return lf_warp_max(lane < nwarps ? scratch[lane] : -INFINITY);
}

/* ---------------------------------------------------------------------------------------------------------
 * Typed activations (the floatX of llm.c, three ways at once). Kernels are written once against an accessor:
 *   lf_ptr<T>  a pointer whose element type (float, __nv_bfloat16, __half) is known at compile time;
 *   lf_dyn     a pointer plus a run-time dtype (a switch per element: for calls that mix dtypes, where an
 *              instantiation per combination would not pay).
 * Both give ld(i) -> f32 (exact widening) and st(i, f32) (one round to nearest even). Arithmetic is f32.
 * Host code picks the accessor: lf_cuda_visit(dt, f) calls f(lf_tag<T>()) for the dtype's element type.
 * --------------------------------------------------------------------------------------------------------- */

template <typename T> struct lf_ty; /* widen / round one element */
template <> struct lf_ty<float> {
    static __host__ __device__ __forceinline__ float ld(float x) { return x; }
    static __host__ __device__ __forceinline__ float st(float v) { return v; }
};
template <> struct lf_ty<__nv_bfloat16> {
    static __host__ __device__ __forceinline__ float ld(__nv_bfloat16 x) { return __bfloat162float(x); }
    static __host__ __device__ __forceinline__ __nv_bfloat16 st(float v) { return __float2bfloat16_rn(v); }
};
template <> struct lf_ty<__half> {
    static __host__ __device__ __forceinline__ float ld(__half x) { return __half2float(x); }
    static __host__ __device__ __forceinline__ __half st(float v) { return __float2half_rn(v); }
};

template <typename T> struct lf_ptr {
    T *p;
    __device__ __forceinline__ float ld(int64_t i) const { return lf_ty<T>::ld(p[i]); }
    __device__ __forceinline__ void st(int64_t i, float v) const { p[i] = lf_ty<T>::st(v); }
};

struct lf_dyn {
    void *p;
    int dt; /* LF_DTYPE_F32, LF_DTYPE_BF16 or LF_DTYPE_F16 */
    __device__ __forceinline__ float ld(int64_t i) const {
        if (dt == LF_DTYPE_BF16) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
        if (dt == LF_DTYPE_F16) return __half2float(((const __half *)p)[i]);
        return ((const float *)p)[i];
    }
    __device__ __forceinline__ void st(int64_t i, float v) const {
        if (dt == LF_DTYPE_BF16) ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
        else if (dt == LF_DTYPE_F16) ((__half *)p)[i] = __float2half_rn(v);
        else ((float *)p)[i] = v;
    }
};

template <typename T> static inline lf_ptr<T> lf_ptr_of(lf_act a) {
    lf_ptr<T> r;
    r.p = (T *)a.p;
    return r;
}
static inline lf_dyn lf_dyn_of(lf_act a) {
    lf_dyn r;
    r.p = a.p;
    r.dt = (int)a.dt;
    return r;
}

template <typename T> struct lf_tag { typedef T type; };
/* f(lf_tag<T>()) with T the element type of activation dtype dt (the caller has checked dt). */
template <typename F> static inline void lf_cuda_visit(lf_dtype dt, F &&f) {
    switch (dt) {
    case LF_DTYPE_BF16: f(lf_tag<__nv_bfloat16>()); break;
    case LF_DTYPE_F16: f(lf_tag<__half>()); break;
    default: f(lf_tag<float>()); break;
    }
}

/* 1 when every one of the n activations has dtype a[0].dt. */
static inline int lf_cuda_same_dt(const lf_act *a, int n) {
    for (int i = 1; i < n; i++)
        if (a[i].dt != a[0].dt) return 0;
    return 1;
}

/* 1 when [a, a + na elements) and [b, b + nb elements) share a byte. */
static inline int lf_cuda_overlap(lf_act a, int64_t na, lf_act b, int64_t nb) {
    const char *pa = (const char *)a.p, *pb = (const char *)b.p;
    const size_t ba = lf_act_bytes(a.dt, na), bb = lf_act_bytes(b.dt, nb);
    return ba && bb && pa < pb + bb && pb < pa + ba;
}

/* ---------------------------------------------------------------------------------------------------------
 * The launchers: one family per .cu file, each with its backend.h op-table signature (see there for semantics).
 * Every launcher first calls lf_cuda_acts_ok, so an op runs exactly the dtype combinations supports_op admits
 * and answers any other with LF_EUNSUPPORTED naming the op and the dtypes.
 * --------------------------------------------------------------------------------------------------------- */
extern "C" {
/* backend_cuda.cu: the backend's supports_op, and its check inside each op (fills be->err when it fails). */
int lf_cuda_supports_op(const lf_backend *be, lf_op op, const lf_dtype *dtypes, int n);
lf_status lf_cuda_acts_ok(lf_backend *be, lf_op op, const lf_act *acts, int n);
/* embedding.cu */
lf_status lf_cuda_embedding_forward(lf_backend *be, lf_act out, const int32_t *tokens, const lf_tensor *wte,
                                    int64_t T);
/* rmsnorm.cu */
lf_status lf_cuda_rmsnorm_forward(lf_backend *be, lf_act out, lf_act inp, const float *weight, int64_t T,
                                  int64_t C, float eps);
/* matmul.cu */
lf_status lf_cuda_matmul_forward(lf_backend *be, lf_act out, lf_act inp, const lf_tensor *weight,
                                 const float *bias, int64_t T, int64_t C, int64_t OC);
/* rope.cu */
lf_status lf_cuda_rope_forward(lf_backend *be, lf_act x, const int32_t *pos, const float *inv_freq, int64_t T,
                               int64_t NH, int64_t D);
/* attention.cu */
lf_status lf_cuda_attention_forward(lf_backend *be, lf_act out, lf_act q, lf_act k, lf_act v, const int32_t *pos,
                                    int64_t T, int64_t S, int64_t H, int64_t KH, int64_t D, int64_t window,
                                    float scale);
/* attention_paged.cu */
lf_status lf_cuda_attention_paged_forward(lf_backend *be, lf_act out, lf_act q, lf_act kpool, lf_act vpool,
                                          const int32_t *block_table, int64_t n_blocks, int64_t BS,
                                          const int32_t *pos, int64_t T, int64_t H, int64_t KH, int64_t D,
                                          int64_t window, float scale);
/* elementwise.cu */
lf_status lf_cuda_swiglu_forward(lf_backend *be, lf_act out, lf_act gate, lf_act up, int64_t N);
lf_status lf_cuda_residual_forward(lf_backend *be, lf_act out, lf_act a, lf_act b, int64_t N);
lf_status lf_cuda_add_scaled_forward(lf_backend *be, lf_act y, lf_act x, float alpha, int64_t N);
lf_status lf_cuda_dora_combine_forward(lf_backend *be, lf_act out, lf_act lo, const float *mag, const float *wn,
                                       const float *bias, float scale, int64_t T, int64_t OC);
lf_status lf_cuda_convert(lf_backend *be, lf_act dst, lf_act src, int64_t N);
/* softmax.cu */
lf_status lf_cuda_softmax_forward(lf_backend *be, lf_act out, lf_act inp, int64_t R, int64_t V);
}

#endif
