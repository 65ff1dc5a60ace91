/* matmul.cu - matmul_forward: out[T,OC] = inp[T,C] @ weight[OC,C]^T (+ bias[OC]) through cuBLASLt.
 *
 * Activations out, inp: F32, BF16 or F16 in any combination; weights F32, BF16 or F16 (never modified);
 * every product accumulated in f32 (CUBLAS_COMPUTE_32F, no TF32), each output element rounded once.
 * cuBLAS(Lt) wants A and B of one type, so the GEMM runs in the WEIGHT's type:
 *   - inp of the weight's dtype is used as is (the bf16 model: bf16 x bf16, no copy);
 *   - any other inp is converted into ctx->mm_in first (to f32: exact; f32 -> bf16: the activations lose 16
 *     of their 24 mantissa bits, ~1e-3..1e-2 relative error against an f32 reference on C-length dot
 *     products; f32 -> f16: 11-bit mantissa, |x| > 65504 becomes +-Inf, far above Llama activations);
 *   - D is written directly when out is f32 (bias by the epilogue) or out has the weight's 16-bit dtype and
 *     there is no bias; otherwise (a 16-bit out with a bias: cuBLASLt wants a bias of D's type, and ours is
 *     f32; or an out dtype the GEMM cannot write) D is staged in f32 in ctx->mm_out and one kernel adds the
 *     bias and rounds once into out.
 *
 * ctx->mm_in and ctx->mm_out are sized on first use and grow only when a call sees a larger T*C / T*OC:
 * with the model's largest shape first (a prefill, or one warm-up call at setup), steady-state decode never
 * allocates. Growing waits for the stream (the old buffer may still be read).
 *
 * Row-major vs column-major. cuBLAS(Lt) is column-major: a row-major [R, K] matrix with row stride K is,
 * byte for byte, the column-major K x R matrix (its transpose) with leading dimension K. So
 *   inp  row-major [T, C]  == column-major  C x T,  ld C   (= inp^T)
 *   W    row-major [OC, C] == column-major  C x OC, ld C   (= W^T)
 *   out  row-major [T, OC] == column-major OC x T,  ld OC  (= out^T)
 * and out = inp @ W^T  <=>  out^T = W @ inp^T, i.e. in cuBLAS terms D(m=OC, n=T) = op(A) * op(B) with
 *   A = W (stored C x OC, transa = T -> OC x C, lda = C),  B = inp (stored C x T, transb = N, ldb = C),
 *   k = C, D = out (ldd = OC). bias[OC] is one value per row of D, which is exactly what
 *   CUBLASLT_EPILOGUE_BIAS broadcasts ("bias vector length must match matrix D rows").
 *
 * Fallbacks: the bias epilogue is used only for an f32 D and a 16-byte aligned bias (older cuBLASLt versions
 * rejected less); otherwise a small kernel adds it. When cuBLASLt offers no algorithm for the pointers'
 * alignment and leading dimensions (odd C with 2-byte types), cublasGemmEx does the same product. */
#include "kernels/cuda/cuda_common.h" /* defines: LF_CHECK_*, lf_cuda_ctx, lf_cuda_matmul_forward */

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <limits.h>
#include <string.h>

#include "core/log.h" /* defines: LF_LOG */

/* ---------------------------------------------------------------------------------------------------------
 * Kernels
 * --------------------------------------------------------------------------------------------------------- */

/* dst[n] = src[n] in dst's dtype (round to nearest even). */
template <class D, class S>
static __global__ void cvt_kernel(D dst, S src, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst.st(i, src.ld(i));
}

/* out[T,OC] = (src ? src : 0) + (bias ? bias[OC] : 0), rounded once to out's dtype; src may be out's f32 data. */
static __global__ void bias_store_kernel(lf_dyn out, const float *src, const float *bias, int64_t T, int64_t OC) {
    const int64_t n = T * OC;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float v = src ? src[i] : 0.0f;
        out.st(i, bias ? v + bias[i % OC] : v);
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * Helpers
 * --------------------------------------------------------------------------------------------------------- */

/* Largest power of two (<= 256) dividing both the address and the leading dimension in bytes: what cuBLASLt
 * calls the matrix's alignment (its default assumption is 256, which views into a weight blob may break). */
static uint32_t lt_alignment(const void *p, int64_t ld_bytes) {
    uint64_t v = (uint64_t)(uintptr_t)p | (uint64_t)ld_bytes | 256u;
    return (uint32_t)(v & (~v + 1)); /* lowest set bit */
}

/* Make sure *buf holds `bytes`; grows (never shrinks) with 1 MiB rounding. */
static lf_status mm_reserve(lf_backend *be, void **buf, size_t *cap, size_t bytes) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    if (bytes <= *cap) return LF_OK;
    size_t want = (bytes + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1);
    LF_CHECK_CUDA(&be->err, cudaStreamSynchronize(cx->stream)); /* queued matmuls may still read the old one */
    if (*buf) LF_CHECK_CUDA(&be->err, cudaFree(*buf));
    *buf = NULL;
    *cap = 0;
    cudaError_t e = cudaMalloc(buf, want);
    if (e != cudaSuccess) {
        *buf = NULL;
        (void)cudaGetLastError(); /* an allocation failure is not sticky */
        return lf_err_set(&be->err, e == cudaErrorMemoryAllocation ? LF_ENOMEM : LF_ECUDA,
                          "matmul: scratch of %zu bytes on cuda:%d: %s", want, cx->ordinal, cudaGetErrorString(e));
    }
    *cap = want;
    return LF_OK;
}

/* cuBLASLt: D(OC x T) = op(A)(OC x C) * B(C x T) (+ bias), see the header comment for the mapping.
 * Returns LF_OK, LF_ECUDA, or LF_EUNSUPPORTED (no message set) when cuBLASLt offers no algorithm. */
static lf_status lt_matmul(lf_backend *be, void *out, cudaDataType_t d_type, int d_size, const void *A,
                           const void *B, cudaDataType_t ab_type, int ab_size, const float *bias, int64_t T,
                           int64_t C, int64_t OC) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    lf_status st = LF_OK;
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t heur;
    int n_results = 0;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtEpilogue_t epi = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    uint64_t ws = cx->lt_ws_bytes;
    uint32_t al_a = lt_alignment(A, C * ab_size), al_b = lt_alignment(B, C * ab_size);
    uint32_t al_d = lt_alignment(out, OC * d_size);
    const float alpha = 1.0f, beta = 0.0f;
    lf_cuda_algo_key key;
    const cublasLtMatmulAlgo_t *algo = NULL;

    LF_CUBLAS_TRY(&be->err, cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LF_CUBLAS_TRY(&be->err, cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LF_CUBLAS_TRY(&be->err, cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    LF_CUBLAS_TRY(&be->err, cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    if (bias) {
        /* bias elements have D's type (f32) by default; set it explicitly anyway */
        int32_t bias_type = CUDA_R_32F;
        LF_CUBLAS_TRY(&be->err, cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                               sizeof bias_type));
        LF_CUBLAS_TRY(&be->err,
                      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    }
    /* layouts describe storage (rows, cols, ld) before op(): A is C x OC, B is C x T, D is OC x T */
    LF_CUBLAS_TRY(&be->err, cublasLtMatrixLayoutCreate(&la, ab_type, (uint64_t)C, (uint64_t)OC, C));
    LF_CUBLAS_TRY(&be->err, cublasLtMatrixLayoutCreate(&lb, ab_type, (uint64_t)C, (uint64_t)T, C));
    LF_CUBLAS_TRY(&be->err, cublasLtMatrixLayoutCreate(&ld, d_type, (uint64_t)OC, (uint64_t)T, OC));

    LF_CUBLAS_TRY(&be->err, cublasLtMatmulPreferenceCreate(&pref));
    LF_CUBLAS_TRY(&be->err, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                                 sizeof ws));
    LF_CUBLAS_TRY(&be->err, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                                 &al_a, sizeof al_a));
    LF_CUBLAS_TRY(&be->err, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                                 &al_b, sizeof al_b));
    LF_CUBLAS_TRY(&be->err, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                                 &al_d, sizeof al_d));
    LF_CUBLAS_TRY(&be->err, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                                 &al_d, sizeof al_d));

    /* The heuristic query costs more host time than a small GEMM takes on the GPU: answers are kept in
     * cx->algos, keyed on everything that selects them (shape, types, alignments, epilogue). */
    memset(&key, 0, sizeof key);
    key.T = T, key.C = C, key.OC = OC, key.ab_type = (int32_t)ab_type, key.d_type = (int32_t)d_type;
    key.al_a = al_a, key.al_b = al_b, key.al_d = al_d, key.al_bias = bias ? lt_alignment(bias, 0) : 0;
    for (int i = 0; i < LF_CUDA_ALGO_CACHE && !algo; i++)
        if (cx->algos[i].valid && memcmp(&cx->algos[i].key, &key, sizeof key) == 0) algo = &cx->algos[i].algo;
    if (!algo) {
        /* No algorithm (NOT_SUPPORTED, or zero results) for this type combination, alignment or leading
         * dimension: the caller falls back to cublasGemmEx, which reports a real error if there is one. */
        cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(cx->lt, op, la, lb, ld, ld, pref, 1, &heur, &n_results);
        if (hs != CUBLAS_STATUS_SUCCESS || n_results == 0) {
            LF_LOG(LF_LOG_DEBUG, "cuBLASLt: no algorithm for T=%lld C=%lld OC=%lld type %d align %u/%u/%u (%s)",
                   (long long)T, (long long)C, (long long)OC, (int)ab_type, al_a, al_b, al_d, cublasGetStatusName(hs));
            st = LF_EUNSUPPORTED;
            goto fail;
        }
        lf_cuda_algo_entry *e = &cx->algos[cx->algo_next];
        cx->algo_next = (cx->algo_next + 1) % LF_CUDA_ALGO_CACHE;
        e->key = key;
        e->algo = heur.algo;
        e->valid = 1;
        algo = &e->algo;
    }
    /* C is unused (beta = 0) but must be a valid description: pass D's pointer and layout */
    {
        cublasStatus_t ms = cublasLtMatmul(cx->lt, op, &alpha, A, la, B, lb, &beta, out, ld, out, ld, algo,
                                           cx->lt_ws, cx->lt_ws_bytes, cx->stream);
        if (ms == CUBLAS_STATUS_NOT_SUPPORTED) st = LF_EUNSUPPORTED; /* nothing was queued: caller falls back */
        else if (ms != CUBLAS_STATUS_SUCCESS) st = lf_cublas_fail_(&be->err, ms, "cublasLtMatmul", __FILE__, __LINE__);
    }

fail:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
    return st;
}

/* cublasGemmEx with the same mapping as lt_matmul (no epilogue: the caller adds bias). */
static lf_status gemmex_matmul(lf_backend *be, void *out, cudaDataType_t d_type, const void *A, const void *B,
                               cudaDataType_t ab_type, int64_t T, int64_t C, int64_t OC) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    const float alpha = 1.0f, beta = 0.0f;
    if (T > INT_MAX || C > INT_MAX || OC > INT_MAX)
        return lf_err_set(&be->err, LF_EUNSUPPORTED, "matmul: T=%lld C=%lld OC=%lld too large for cublasGemmEx",
                          (long long)T, (long long)C, (long long)OC);
    LF_CHECK_CUBLAS(&be->err, cublasGemmEx(cx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)OC, (int)T, (int)C, &alpha, A,
                                           ab_type, (int)C, B, ab_type, (int)C, &beta, out, d_type, (int)OC,
                                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return LF_OK;
}

/* ---------------------------------------------------------------------------------------------------------
 * Launcher
 * --------------------------------------------------------------------------------------------------------- */

extern "C" lf_status lf_cuda_matmul_forward(lf_backend *be, lf_act out, lf_act inp, const lf_tensor *weight,
                                            const float *bias, int64_t T, int64_t C, int64_t OC) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    const lf_act acts[2] = {out, inp};
    cudaDataType_t ab_type;
    int ab_size;
    const int threads = 256;

    lf_status st = lf_cuda_acts_ok(be, LF_OP_MATMUL, acts, 2);
    if (st != LF_OK) return st;
    if (T < 0 || C < 0 || OC < 0 || !weight)
        return lf_err_set(&be->err, LF_EINVAL, "matmul: bad shape T=%lld C=%lld OC=%lld", (long long)T,
                          (long long)C, (long long)OC);
    if (weight->ndim != 2 || weight->shape[0] != OC || weight->shape[1] != C)
        return lf_err_set(&be->err, LF_EINVAL, "matmul: weight shape [%lld,%lld] (ndim %d), expected [OC=%lld,C=%lld]",
                          (long long)weight->shape[0], (long long)weight->shape[1], weight->ndim, (long long)OC,
                          (long long)C);
    switch (weight->dtype) {
    case LF_DTYPE_F32: ab_type = CUDA_R_32F; ab_size = 4; break;
    case LF_DTYPE_BF16: ab_type = CUDA_R_16BF; ab_size = 2; break;
    case LF_DTYPE_F16: ab_type = CUDA_R_16F; ab_size = 2; break;
    default:
        return lf_err_set(&be->err, LF_EUNSUPPORTED, "matmul: weight dtype %s not supported on CUDA (F32, BF16, F16)",
                          lf_dtype_name(weight->dtype));
    }

    if (weight->device != LF_DEVICE_CUDA)
        return lf_err_set(&be->err, LF_EINVAL, "matmul: weight is not in CUDA memory (lf_tensor.device != CUDA)");
    if (lf_cuda_overlap(out, T * OC, inp, T * C)) return lf_err_set(&be->err, LF_EINVAL, "matmul: out must not alias inp");
    if (T == 0 || OC == 0) return LF_OK;
    st = lf_cuda_enter(be);
    if (st != LF_OK) return st;
    if (C == 0) { /* empty sums: out = bias or 0 */
        bias_store_kernel<<<lf_cuda_grid_1d(cx, T * OC, threads), threads, 0, cx->stream>>>(lf_dyn_of(out), NULL, bias,
                                                                                           T, OC);
        LF_CUDA_LAUNCH_CHECK(&be->err);
        return LF_OK;
    }

    /* B: the input in the weight's type (A and B must share a type in cuBLAS(Lt)) */
    const void *B = inp.p;
    if (inp.dt != weight->dtype) {
        const int64_t n = T * C;
        st = mm_reserve(be, &cx->mm_in, &cx->mm_in_bytes, (size_t)n * (size_t)ab_size);
        if (st != LF_OK) return st;
        const lf_act conv = lf_act_of(cx->mm_in, weight->dtype);
        const unsigned grid = lf_cuda_grid_1d(cx, n, threads);
        if (inp.dt == LF_DTYPE_F32 && weight->dtype == LF_DTYPE_BF16)
            cvt_kernel<<<grid, threads, 0, cx->stream>>>(lf_ptr_of<__nv_bfloat16>(conv), lf_ptr_of<float>(inp), n);
        else if (inp.dt == LF_DTYPE_F32 && weight->dtype == LF_DTYPE_F16)
            cvt_kernel<<<grid, threads, 0, cx->stream>>>(lf_ptr_of<__half>(conv), lf_ptr_of<float>(inp), n);
        else
            cvt_kernel<<<grid, threads, 0, cx->stream>>>(lf_dyn_of(conv), lf_dyn_of(inp), n);
        LF_CUDA_LAUNCH_CHECK(&be->err);
        B = cx->mm_in;
    }

    /* D: out itself (f32; or out's 16-bit type = the weight's, without bias), else f32 staging */
    const int direct = out.dt == LF_DTYPE_F32 || (out.dt == weight->dtype && !bias);
    void *D = out.p;
    cudaDataType_t d_type = out.dt == LF_DTYPE_F32 ? CUDA_R_32F : ab_type;
    int d_size = out.dt == LF_DTYPE_F32 ? 4 : 2;
    if (!direct) {
        st = mm_reserve(be, (void **)&cx->mm_out, &cx->mm_out_bytes, (size_t)(T * OC) * sizeof(float));
        if (st != LF_OK) return st;
        D = cx->mm_out, d_type = CUDA_R_32F, d_size = 4;
    }

    /* the bias epilogue for an f32 out with a 16-byte aligned bias, else bias_store_kernel below */
    const float *epi_bias = (direct && bias && out.dt == LF_DTYPE_F32 && ((uintptr_t)bias % 16) == 0) ? bias : NULL;
    st = lt_matmul(be, D, d_type, d_size, weight->data, B, ab_type, ab_size, epi_bias, T, C, OC);
    if (st == LF_EUNSUPPORTED) {
        epi_bias = NULL;
        st = gemmex_matmul(be, D, d_type, weight->data, B, ab_type, T, C, OC);
    }
    if (st != LF_OK)
        return lf_err_wrap(&be->err, st, "matmul T=%lld C=%lld OC=%lld weight %s, out %s, inp %s", (long long)T,
                           (long long)C, (long long)OC, lf_dtype_name(weight->dtype), lf_dtype_name(out.dt),
                           lf_dtype_name(inp.dt));

    if (!direct || (bias && !epi_bias)) { /* staged: bias + one rounding into out; direct f32: bias in place */
        bias_store_kernel<<<lf_cuda_grid_1d(cx, T * OC, threads), threads, 0, cx->stream>>>(
            lf_dyn_of(out), (const float *)D, bias, T, OC);
        LF_CUDA_LAUNCH_CHECK(&be->err);
    }
    return LF_OK;
}
