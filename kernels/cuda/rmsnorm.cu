/* rmsnorm.cu - rmsnorm_forward: out[T,C] = weight[C] * (inp * rsqrt(mean(inp^2) + eps)); out may alias inp
 * (same dtype).
 *
 * Invariants: out and inp F32, BF16 or F16 in any combination; the sum of squares is an f32 block reduction
 * of widened elements, each output element one f32 product rounded once to out's dtype (the CPU reference
 * sums in double: the results differ by f32 rounding of the sum). One block per row. Aliasing is safe: each
 * thread writes only the elements it read itself, and the block reduction's barriers separate every read of
 * the first pass from every write of the second. */
#include "kernels/cuda/cuda_common.h" /* defines: LF_CHECK_*, lf_block_sum, lf_ptr, lf_dyn, the launcher */

#include <limits.h>

template <class O, class I>
static __global__ void rmsnorm_kernel(O out, I inp, const float *weight, int64_t C, float eps) {
    __shared__ float scratch[32];
    const int64_t base = (int64_t)blockIdx.x * C;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
        const float v = inp.ld(base + i);
        ss += v * v;
    }
    ss = lf_block_sum(ss, scratch);
    const float r = 1.0f / sqrtf(ss / (float)C + eps);
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) out.st(base + i, weight[i] * (inp.ld(base + i) * r));
}

extern "C" lf_status lf_cuda_rmsnorm_forward(lf_backend *be, lf_act out, lf_act inp, const float *weight, int64_t T,
                                             int64_t C, float eps) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    const lf_act a[2] = {out, inp};
    lf_status st = lf_cuda_acts_ok(be, LF_OP_RMSNORM, a, 2);
    if (st != LF_OK) return st;
    if (T < 0 || T > INT_MAX || C <= 0)
        return lf_err_set(&be->err, LF_EINVAL, "rmsnorm: bad shape T=%lld C=%lld", (long long)T, (long long)C);
    if (T == 0) return LF_OK;
    st = lf_cuda_enter(be);
    if (st != LF_OK) return st;
    const int threads = C >= 2048 ? 512 : C >= 512 ? 256 : 128;
    if (out.dt == inp.dt)
        lf_cuda_visit(out.dt, [&](auto tag) {
            typedef typename decltype(tag)::type Ty;
            rmsnorm_kernel<<<(unsigned)T, threads, 0, cx->stream>>>(lf_ptr_of<Ty>(out), lf_ptr_of<Ty>(inp), weight, C,
                                                                   eps);
        });
    else
        rmsnorm_kernel<<<(unsigned)T, threads, 0, cx->stream>>>(lf_dyn_of(out), lf_dyn_of(inp), weight, C, eps);
    LF_CUDA_LAUNCH_CHECK(&be->err);
    return LF_OK;
}
