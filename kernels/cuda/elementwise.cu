/* elementwise.cu - swiglu_forward (out = silu(gate) * up) and residual_forward (out = a + b), over N floats.
 *
 * Grid-stride loops, one element per thread per step; out may alias either input because every element is
 * read and written by the same thread in the same step. */
#include "kernels/cuda/cuda_common.h" /* defines: LF_CHECK_*, lf_cuda_grid_1d, the two launchers */

/* silu(g) = g * sigmoid(g) = g / (1 + exp(-g)); for g -> -inf, exp(-g) = inf and the quotient is -0. */
static __global__ void swiglu_kernel(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

static __global__ void residual_kernel(float *out, const float *a, const float *b, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

extern "C" lf_status lf_cuda_swiglu_forward(lf_backend *be, float *out, const float *gate, const float *up,
                                            int64_t N) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    if (N < 0) return lf_err_set(&be->err, LF_EINVAL, "swiglu: N=%lld", (long long)N);
    if (N == 0) return LF_OK;
    lf_status st = lf_cuda_enter(be);
    if (st != LF_OK) return st;
    const int threads = 256;
    swiglu_kernel<<<lf_cuda_grid_1d(cx, N, threads), threads, 0, cx->stream>>>(out, gate, up, N);
    LF_CUDA_LAUNCH_CHECK(&be->err);
    return LF_OK;
}

extern "C" lf_status lf_cuda_residual_forward(lf_backend *be, float *out, const float *a, const float *b,
                                              int64_t N) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    if (N < 0) return lf_err_set(&be->err, LF_EINVAL, "residual: N=%lld", (long long)N);
    if (N == 0) return LF_OK;
    lf_status st = lf_cuda_enter(be);
    if (st != LF_OK) return st;
    const int threads = 256;
    residual_kernel<<<lf_cuda_grid_1d(cx, N, threads), threads, 0, cx->stream>>>(out, a, b, N);
    LF_CUDA_LAUNCH_CHECK(&be->err);
    return LF_OK;
}
