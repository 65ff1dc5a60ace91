/* backend_cuda.cu - the CUDA backend: device selection, context (stream, cuBLASLt handle and workspace),
 * memory ops, the op table and supports_op. The ops themselves live one family per file (matmul.cu,
 * rmsnorm.cu, attention_paged.cu, ...).
 *
 * Capabilities (supports_op, and the same check at the top of every op): every inference op with F32, BF16
 * and F16 activations in any combination, except attention and attention_paged, whose q, k, v (kpool,
 * vpool) share one dtype (out may differ). The f32 training ops are not on CUDA yet: supports_op answers 0
 * and their table entries return LF_EUNSUPPORTED (never NULL, so a caller that skips the check gets an
 * error, not a crash).
 *
 * Lifetimes: lf_backend_cuda_create allocates everything the backend needs up front (stream, cuBLASLt and
 * cuBLAS handles, a 32 MiB cuBLASLt workspace, attention_paged's 8 MiB split scratch, a pinned error flag);
 * the only later growth is matmul's converted input / f32 staging output (see matmul.cu) and matmul_q4's
 * bf16 copy of a 4-bit weight (quant.cu), each sized by the largest call seen, so a warm-up call at the
 * largest shape leaves every later call allocation-free.
 * destroy (via lf_backend_free) waits for the stream, then frees all of it and the lf_backend itself.
 *
 * be->ctx is a cuda_ctx_full: the lf_cuda_ctx every op file sees (first member, so lf_cuda_ctx_of's cast
 * holds) followed by state of op families declared in their own headers (cuda_quant.h's workspace).
 *
 * Ordering: every op and copy is queued on the context's one stream, so ops see each other's results in
 * call order. upload and download return only when the copy is done (the host may reuse or read its buffer
 * at once); copy and the ops return as soon as the work is queued. */
#include "kernels/cuda/cuda_common.h" /* defines: LF_CHECK_CUDA..., lf_cuda_ctx, the lf_cuda_* launchers */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"                 /* defines: LF_LOG */
#include "kernels/cuda/cuda_quant.h" /* defines: lf_cuda_matmul_q4_forward, lf_cuda_q4_ws */

/* The context as allocated (see the header comment). */
typedef struct cuda_ctx_full {
    lf_cuda_ctx cx;    /* first: be->ctx points here */
    lf_cuda_q4_ws q4;  /* matmul_q4's bf16 weight workspace (quant.cu) */
} cuda_ctx_full;

extern "C" lf_cuda_q4_ws *lf_cuda_q4_ws_of(lf_backend *be) { return &((cuda_ctx_full *)be->ctx)->q4; }

/* ---------------------------------------------------------------------------------------------------------
 * Context teardown (shared by destroy and create's failure path; every member may be unset)
 * --------------------------------------------------------------------------------------------------------- */

static void cuda_ctx_release(lf_cuda_ctx *cx) {
    if (!cx) return;
    (void)cudaSetDevice(cx->ordinal);
    if (cx->stream) (void)cudaStreamSynchronize(cx->stream); /* frees below must not race queued work */
    if (cx->blas) (void)cublasDestroy(cx->blas);
    if (cx->lt) (void)cublasLtDestroy(cx->lt);
    if (cx->lt_ws) (void)cudaFree(cx->lt_ws);
    if (cx->mm_in) (void)cudaFree(cx->mm_in);
    if (cx->mm_out) (void)cudaFree(cx->mm_out);
    if (cx->pa_part) (void)cudaFree(cx->pa_part);
    lf_cuda_q4_ws_release(&((cuda_ctx_full *)cx)->q4);
    if (cx->d_flag) (void)cudaFree(cx->d_flag);
    if (cx->h_flag) (void)cudaFreeHost(cx->h_flag);
    if (cx->stream) (void)cudaStreamDestroy(cx->stream);
    free(cx);
}

/* ---------------------------------------------------------------------------------------------------------
 * Lifetime and memory ops
 * --------------------------------------------------------------------------------------------------------- */

static void cuda_destroy(lf_backend *be) {
    if (!be) return;
    cuda_ctx_release(lf_cuda_ctx_of(be));
    free(be);
}

static void *cuda_alloc(lf_backend *be, size_t nbytes) {
    void *p = NULL;
    if (lf_cuda_enter(be) != LF_OK) return NULL;
    cudaError_t e = cudaMalloc(&p, nbytes ? nbytes : 1);
    if (e != cudaSuccess) {
        size_t free_b = 0, total_b = 0;
        (void)cudaGetLastError(); /* cudaErrorMemoryAllocation is not sticky; clear it */
        (void)cudaMemGetInfo(&free_b, &total_b);
        lf_err_set(&be->err, e == cudaErrorMemoryAllocation ? LF_ENOMEM : LF_ECUDA,
                   "cudaMalloc(%zu bytes) on cuda:%d failed: %s (%.2f of %.2f GiB free)", nbytes,
                   lf_cuda_ctx_of(be)->ordinal, cudaGetErrorString(e), free_b / 1073741824.0,
                   total_b / 1073741824.0);
        return NULL;
    }
    return p;
}

static void cuda_free(lf_backend *be, void *ptr) {
    if (!ptr) return;
    if (lf_cuda_enter(be) != LF_OK) return;
    /* cudaFree waits for work that may still use ptr; a failure here leaves the message in be->err */
    cudaError_t e = cudaFree(ptr);
    if (e != cudaSuccess) lf_cuda_fail_(&be->err, e, "cudaFree(ptr)", __FILE__, __LINE__);
}

static lf_status cuda_memcpy(lf_backend *be, void *dst, const void *src, size_t nbytes, cudaMemcpyKind kind,
                             int wait) {
    if (nbytes == 0) return LF_OK;
    if (!dst || !src) return lf_err_set(&be->err, LF_EINVAL, "cuda memcpy: NULL pointer (%zu bytes)", nbytes);
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    LF_CHECK_CUDA(&be->err, cudaSetDevice(cx->ordinal));
    LF_CHECK_CUDA(&be->err, cudaMemcpyAsync(dst, src, nbytes, kind, cx->stream));
    if (wait) LF_CHECK_CUDA(&be->err, cudaStreamSynchronize(cx->stream));
    return LF_OK;
}

/* host -> device. Waits: the caller may free or overwrite host_src as soon as this returns, even when it is
 * pinned memory (where cudaMemcpyAsync would otherwise return before reading it). */
static lf_status cuda_upload(lf_backend *be, void *dst, const void *host_src, size_t nbytes) {
    return cuda_memcpy(be, dst, host_src, nbytes, cudaMemcpyHostToDevice, 1);
}

/* device -> host, after every op queued before it. Waits: the host reads host_dst next. */
static lf_status cuda_download(lf_backend *be, void *host_dst, const void *src, size_t nbytes) {
    return cuda_memcpy(be, host_dst, src, nbytes, cudaMemcpyDeviceToHost, 1);
}

/* device -> device, queued in order with the ops; does not wait. */
static lf_status cuda_copy(lf_backend *be, void *dst, const void *src, size_t nbytes) {
    return cuda_memcpy(be, dst, src, nbytes, cudaMemcpyDeviceToDevice, 0);
}

static lf_status cuda_synchronize(lf_backend *be) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    LF_CHECK_CUDA(&be->err, cudaSetDevice(cx->ordinal));
    LF_CHECK_CUDA(&be->err, cudaStreamSynchronize(cx->stream));
    return LF_OK;
}

/* ---------------------------------------------------------------------------------------------------------
 * Capabilities
 * --------------------------------------------------------------------------------------------------------- */

extern "C" int lf_cuda_supports_op(const lf_backend *be, lf_op op, const lf_dtype *dt, int n) {
    (void)be;
    if ((int)op < 0 || op >= LF_OP_COUNT || n != lf_op_n_act(op) || n == 0) return 0; /* n == 0: training ops */
    if (!dt) return 0;
    for (int i = 0; i < n; i++)
        if (!lf_act_dtype_ok(dt[i])) return 0;
    if (op == LF_OP_ATTENTION || op == LF_OP_ATTENTION_PAGED) /* q, k, v (pools) share one dtype */
        return dt[1] == dt[2] && dt[2] == dt[3];
    return 1;
}

extern "C" lf_status lf_cuda_acts_ok(lf_backend *be, lf_op op, const lf_act *a, int n) {
    lf_dtype dt[4];
    for (int i = 0; i < n && i < 4; i++) dt[i] = a[i].dt;
    if (n <= 4 && lf_cuda_supports_op(be, op, dt, n)) return LF_OK;
    char list[64] = "";
    size_t used = 0;
    for (int i = 0; i < n && i < 4; i++)
        used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", lf_dtype_name(a[i].dt));
    return lf_err_set(&be->err, LF_EUNSUPPORTED, "cuda %s: activation dtypes (%s) not supported%s", lf_op_name(op),
                      list,
                      (op == LF_OP_ATTENTION || op == LF_OP_ATTENTION_PAGED) ? " (q, k, v must share a dtype; each "
                                                                                "F32, BF16 or F16)"
                                                                              : " (F32, BF16, F16)");
}

/* The f32 training ops: not on CUDA yet (supports_op answers 0). */
static lf_status cuda_no_training(lf_backend *be, lf_op op) {
    return lf_err_set(&be->err, LF_EUNSUPPORTED, "cuda %s: not implemented on the CUDA backend (f32 training ops "
                      "run on the CPU backend)", lf_op_name(op));
}
static lf_status cuda_matmul_backward(lf_backend *be, float *, float *, const float *, const float *,
                                      const lf_tensor *, int64_t, int64_t, int64_t) {
    return cuda_no_training(be, LF_OP_MATMUL_BACKWARD);
}
static lf_status cuda_matmul_q4_backward(lf_backend *be, float *, const float *, const struct lf_quant_state *,
                                         int64_t, int64_t, int64_t) {
    return cuda_no_training(be, LF_OP_MATMUL_Q4_BACKWARD);
}
static lf_status cuda_rmsnorm_backward(lf_backend *be, float *, const float *, const float *, const float *, int64_t,
                                       int64_t, float) {
    return cuda_no_training(be, LF_OP_RMSNORM_BACKWARD);
}
static lf_status cuda_rope_backward(lf_backend *be, float *, const int32_t *, const float *, int64_t, int64_t,
                                    int64_t) {
    return cuda_no_training(be, LF_OP_ROPE_BACKWARD);
}
static lf_status cuda_attention_train(lf_backend *be, float *, float *, const float *, const float *, const float *,
                                      const int32_t *, int64_t, int64_t, int64_t, int64_t, int64_t, float) {
    return cuda_no_training(be, LF_OP_ATTENTION_TRAIN);
}
static lf_status cuda_attention_backward(lf_backend *be, float *, float *, float *, const float *, const float *,
                                         const float *, const float *, const float *, const float *, const int32_t *,
                                         int64_t, int64_t, int64_t, int64_t, int64_t, float) {
    return cuda_no_training(be, LF_OP_ATTENTION_BACKWARD);
}
static lf_status cuda_swiglu_backward(lf_backend *be, float *, float *, const float *, const float *, const float *,
                                      int64_t) {
    return cuda_no_training(be, LF_OP_SWIGLU_BACKWARD);
}
static lf_status cuda_axpy(lf_backend *be, float *, const float *, float, int64_t) {
    return cuda_no_training(be, LF_OP_AXPY);
}
static lf_status cuda_crossentropy(lf_backend *be, float *, float *, const float *, const int32_t *, int64_t, int64_t,
                                   float) {
    return cuda_no_training(be, LF_OP_CROSSENTROPY);
}

static const lf_backend_ops cuda_ops = {
    /* destroy */ cuda_destroy,
    /* alloc */ cuda_alloc,
    /* free */ cuda_free,
    /* upload */ cuda_upload,
    /* download */ cuda_download,
    /* copy */ cuda_copy,
    /* synchronize */ cuda_synchronize,
    /* embedding_forward */ lf_cuda_embedding_forward,
    /* rmsnorm_forward */ lf_cuda_rmsnorm_forward,
    /* matmul_forward */ lf_cuda_matmul_forward,
    /* rope_forward */ lf_cuda_rope_forward,
    /* attention_forward */ lf_cuda_attention_forward,
    /* swiglu_forward */ lf_cuda_swiglu_forward,
    /* residual_forward */ lf_cuda_residual_forward,
    /* softmax_forward */ lf_cuda_softmax_forward,
    /* matmul_q4_forward */ lf_cuda_matmul_q4_forward,
    /* attention_paged_forward */ lf_cuda_attention_paged_forward,
    /* add_scaled_forward */ lf_cuda_add_scaled_forward,
    /* dora_combine_forward */ lf_cuda_dora_combine_forward,
    /* convert */ lf_cuda_convert,
    /* supports_op */ lf_cuda_supports_op,
    /* training ops (not on CUDA yet; supports_op answers 0): */
    /* matmul_backward */ cuda_matmul_backward,
    /* matmul_q4_backward */ cuda_matmul_q4_backward,
    /* rmsnorm_backward */ cuda_rmsnorm_backward,
    /* rope_backward */ cuda_rope_backward,
    /* attention_train_forward */ cuda_attention_train,
    /* attention_backward */ cuda_attention_backward,
    /* swiglu_backward */ cuda_swiglu_backward,
    /* axpy */ cuda_axpy,
    /* crossentropy_forward_backward */ cuda_crossentropy,
};

/* ---------------------------------------------------------------------------------------------------------
 * Public entry points (declared in kernels/backend.h)
 * --------------------------------------------------------------------------------------------------------- */

extern "C" int lf_backend_cuda_built(void) { return 1; }

extern "C" lf_backend *lf_backend_cuda_create(int ordinal, lf_err *err) {
    lf_status st = LF_OK;
    lf_backend *be = NULL;
    lf_cuda_ctx *cx = NULL;
    int count = 0;
    cudaDeviceProp prop;
    size_t free_b = 0, total_b = 0;

    /* No driver, a driver older than the runtime, or no GPU all surface here: answer, don't crash. */
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        lf_err_set(err, LF_ECUDA, "no usable CUDA device: cudaGetDeviceCount: %s: %s", cudaGetErrorName(e),
                   cudaGetErrorString(e));
        return NULL;
    }
    if (count <= 0) {
        lf_err_set(err, LF_ECUDA, "no usable CUDA device: cudaGetDeviceCount reports 0 devices");
        return NULL;
    }
    if (ordinal < 0 || ordinal >= count) {
        lf_err_set(err, LF_EINVAL, "CUDA device %d does not exist (this machine has %d: 0..%d)", ordinal, count,
                   count - 1);
        return NULL;
    }

    LF_CUDA_TRY(err, cudaSetDevice(ordinal));
    LF_CUDA_TRY(err, cudaGetDeviceProperties(&prop, ordinal));
    if (prop.major < 8) {
        /* bf16 tensor-core GEMMs and the archs we compile (80;86;89;90) start at Ampere */
        lf_err_set(err, LF_EUNSUPPORTED, "CUDA device %d (%s) has compute capability %d.%d; loraforge needs 8.0+",
                   ordinal, prop.name, prop.major, prop.minor);
        return NULL;
    }

    be = (lf_backend *)calloc(1, sizeof *be);
    LF_CHECK_ALLOC(be, err);
    cx = (lf_cuda_ctx *)calloc(1, sizeof(cuda_ctx_full)); /* &full->cx == full: cuda_ctx_release frees it */
    LF_CHECK_ALLOC(cx, err);
    cx->ordinal = ordinal;
    cx->cc_major = prop.major;
    cx->cc_minor = prop.minor;
    cx->sm_count = prop.multiProcessorCount;

    LF_CUDA_TRY(err, cudaStreamCreate(&cx->stream));
    LF_CUBLAS_TRY(err, cublasLtCreate(&cx->lt));
    LF_CUBLAS_TRY(err, cublasCreate(&cx->blas));
    LF_CUBLAS_TRY(err, cublasSetStream(cx->blas, cx->stream));
    /* cuBLAS v2 defaults to true FP32 for SGEMM-like calls (no TF32) unless NVIDIA_TF32_OVERRIDE says so. */
    cx->lt_ws_bytes = LF_CUDA_LT_WORKSPACE_BYTES;
    LF_CUDA_TRY(err, cudaMalloc(&cx->lt_ws, cx->lt_ws_bytes));
    LF_CUDA_TRY(err, cudaMalloc((void **)&cx->pa_part, LF_CUDA_PAGED_SCRATCH_BYTES));
    cx->pa_part_floats = LF_CUDA_PAGED_SCRATCH_BYTES / sizeof(float);
    LF_CUDA_TRY(err, cudaMalloc((void **)&cx->d_flag, 2 * sizeof(int)));
    LF_CUDA_TRY(err, cudaMallocHost((void **)&cx->h_flag, 2 * sizeof(int)));
    LF_CUDA_TRY(err, cudaMemsetAsync(cx->d_flag, 0, 2 * sizeof(int), cx->stream));
    LF_CUDA_TRY(err, cudaStreamSynchronize(cx->stream));
    LF_CUDA_TRY(err, cudaMemGetInfo(&free_b, &total_b));

    be->name = "cuda";
    be->device = LF_DEVICE_CUDA;
    be->ops = &cuda_ops;
    be->ctx = cx;
    lf_err_clear(&be->err);

    LF_LOG(LF_LOG_INFO, "cuda:%d %s, sm_%d%d, %d SMs, %.1f GiB memory (%.1f GiB free), L2 %.1f MiB", ordinal,
           prop.name, prop.major, prop.minor, prop.multiProcessorCount, total_b / 1073741824.0,
           free_b / 1073741824.0, prop.l2CacheSize / 1048576.0);
    return be;

fail:
    /* the message is in err; create reports failure as NULL */
    LF_LOG(LF_LOG_DEBUG, "cuda:%d backend not created (%s)", ordinal, lf_status_name(st == LF_OK ? LF_ENOMEM : st));
    (void)cudaGetLastError();
    cuda_ctx_release(cx);
    free(be);
    return NULL;
}
