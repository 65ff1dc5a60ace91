/* softmax.cu - softmax_forward: out[R,V] = softmax over each row of inp[R,V]; out may alias inp (same dtype).
 *
 * Invariants: out and inp F32, BF16 or F16 in any combination; max, sum and exp in f32 on widened elements,
 * each output rounded once. One block per row, three passes: max, sum of exp(x - max), then
 * out = exp(x - max) / sum. Aliasing is safe: the reductions' barriers order every read of the first two
 * passes before any write, and in the last pass each thread reads only the elements it then writes. */
#include "kernels/cuda/cuda_common.h" /* defines: LF_CHECK_*, lf_block_max, lf_block_sum, lf_ptr, the launcher */

#include <limits.h>

template <class O, class I>
static __global__ void softmax_kernel(O out, I inp, int64_t V) {
    __shared__ float scratch[32];
    const int64_t base = (int64_t)blockIdx.x * V;
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, inp.ld(base + i));
    m = lf_block_max(m, scratch);
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) s += expf(inp.ld(base + i) - m);
    s = lf_block_sum(s, scratch);
    const float inv = 1.0f / s;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) out.st(base + i, expf(inp.ld(base + i) - m) * inv);
}

extern "C" lf_status lf_cuda_softmax_forward(lf_backend *be, lf_act out, lf_act inp, int64_t R, int64_t V) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    const lf_act a[2] = {out, inp};
    lf_status st = lf_cuda_acts_ok(be, LF_OP_SOFTMAX, a, 2);
    if (st != LF_OK) return st;
    if (R < 0 || R > INT_MAX || V <= 0)
        return lf_err_set(&be->err, LF_EINVAL, "softmax: bad shape R=%lld V=%lld", (long long)R, (long long)V);
    if (R == 0) return LF_OK;
    st = lf_cuda_enter(be);
    if (st != LF_OK) return st;
    const int threads = V >= 8192 ? 1024 : V >= 1024 ? 256 : 64;
    if (out.dt == inp.dt)
        lf_cuda_visit(out.dt, [&](auto tag) {
            typedef typename decltype(tag)::type Ty;
            softmax_kernel<<<(unsigned)R, threads, 0, cx->stream>>>(lf_ptr_of<Ty>(out), lf_ptr_of<Ty>(inp), V);
        });
    else
        softmax_kernel<<<(unsigned)R, threads, 0, cx->stream>>>(lf_dyn_of(out), lf_dyn_of(inp), V);
    LF_CUDA_LAUNCH_CHECK(&be->err);
    return LF_OK;
}
