/* rmsnorm.cu - rmsnorm_forward: out[T,C] = inp * rsqrt(mean(inp^2) + eps) * weight[C]; out may alias inp.
 *
 * One block per row. Aliasing is safe: each thread writes only the elements it read itself, and the block
 * reduction's barriers separate every read of the first pass from every write of the second. */
#include "kernels/cuda/cuda_common.h" /* defines: LF_CHECK_*, lf_block_sum, lf_cuda_rmsnorm_forward */

#include <limits.h>

static __global__ void rmsnorm_kernel(float *out, const float *inp, const float *weight, int64_t C, float eps) {
    __shared__ float scratch[32];
    const float *x = inp + (int64_t)blockIdx.x * C;
    float *y = out + (int64_t)blockIdx.x * C;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
        float v = x[i];
        ss += v * v;
    }
    ss = lf_block_sum(ss, scratch);
    const float r = 1.0f / sqrtf(ss / (float)C + eps);
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) y[i] = x[i] * r * weight[i];
}

extern "C" lf_status lf_cuda_rmsnorm_forward(lf_backend *be, float *out, const float *inp, const float *weight,
                                             int64_t T, int64_t C, float eps) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    if (T < 0 || T > INT_MAX || C <= 0)
        return lf_err_set(&be->err, LF_EINVAL, "rmsnorm: bad shape T=%lld C=%lld", (long long)T, (long long)C);
    if (T == 0) return LF_OK;
    lf_status st = lf_cuda_enter(be);
    if (st != LF_OK) return st;
    const int threads = C >= 2048 ? 512 : C >= 512 ? 256 : 128;
    rmsnorm_kernel<<<(unsigned)T, threads, 0, cx->stream>>>(out, inp, weight, C, eps);
    LF_CUDA_LAUNCH_CHECK(&be->err);
    return LF_OK;
}
