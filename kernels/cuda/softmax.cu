/* softmax.cu - softmax_forward: out[R,V] = softmax over each row of inp[R,V]; out may alias inp.
 *
 * One block per row, three passes: max, sum of exp(x - max), then out = exp(x - max) / sum. Aliasing is safe:
 * the reductions' barriers order every read of the first two passes before any write, and in the last pass
 * each thread reads only the elements it then writes. */
#include "kernels/cuda/cuda_common.h" /* defines: LF_CHECK_*, lf_block_max, lf_block_sum, the launcher */

#include <limits.h>

static __global__ void softmax_kernel(float *out, const float *inp, int64_t V) {
    __shared__ float scratch[32];
    const float *x = inp + (int64_t)blockIdx.x * V;
    float *y = out + (int64_t)blockIdx.x * V;
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, x[i]);
    m = lf_block_max(m, scratch);
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) s += expf(x[i] - m);
    s = lf_block_sum(s, scratch);
    const float inv = 1.0f / s;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) y[i] = expf(x[i] - m) * inv;
}

extern "C" lf_status lf_cuda_softmax_forward(lf_backend *be, float *out, const float *inp, int64_t R, int64_t V) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    if (R < 0 || R > INT_MAX || V <= 0)
        return lf_err_set(&be->err, LF_EINVAL, "softmax: bad shape R=%lld V=%lld", (long long)R, (long long)V);
    if (R == 0) return LF_OK;
    lf_status st = lf_cuda_enter(be);
    if (st != LF_OK) return st;
    const int threads = V >= 8192 ? 1024 : V >= 1024 ? 256 : 64;
    softmax_kernel<<<(unsigned)R, threads, 0, cx->stream>>>(out, inp, V);
    LF_CUDA_LAUNCH_CHECK(&be->err);
    return LF_OK;
}
