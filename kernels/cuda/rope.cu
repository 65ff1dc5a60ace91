/* rope.cu - rope_forward: in place on x[T,NH,D] (F32, BF16 or F16), Hugging Face "rotate half" RoPE.
 *
 * For pair i < D/2 at position p = pos[t]: a = p * inv_freq[i] (f32, as HF computes it), and
 *   x[i]       <- x[i] * cos(a) - x[i + D/2] * sin(a)
 *   x[i + D/2] <- x[i + D/2] * cos(a) + x[i] * sin(a)
 * on widened f32 elements, each result rounded once to x's dtype. One thread per (t, head, i): each pair is
 * read and written by one thread, so in place is safe. sincosf is the accurate version (no fast math):
 * angles reach p * 1 = tens of thousands of radians. */
#include "kernels/cuda/cuda_common.h" /* defines: LF_CHECK_*, lf_cuda_grid_1d, lf_ptr, lf_cuda_rope_forward */

template <typename T>
static __global__ void rope_kernel(T *x, const int32_t *pos, const float *inv_freq, int64_t T_, int64_t NH,
                                   int64_t D) {
    const int64_t half = D / 2, n = T_ * NH * half;
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = idx % half, row = idx / half; /* row = t * NH + head */
        const int64_t t = row / NH;
        float s, c;
        sincosf((float)pos[t] * inv_freq[i], &s, &c);
        T *xr = x + row * D;
        const float x1 = lf_ty<T>::ld(xr[i]), x2 = lf_ty<T>::ld(xr[i + half]);
        /* each product rounded on its own (no FMA contraction), as transformers and the CPU backend do */
        xr[i] = lf_ty<T>::st(__fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
        xr[i + half] = lf_ty<T>::st(__fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
    }
}

extern "C" lf_status lf_cuda_rope_forward(lf_backend *be, lf_act x, const int32_t *pos, const float *inv_freq,
                                          int64_t T, int64_t NH, int64_t D) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    lf_status st = lf_cuda_acts_ok(be, LF_OP_ROPE, &x, 1);
    if (st != LF_OK) return st;
    if (T < 0 || NH < 0 || D <= 0 || D % 2 != 0)
        return lf_err_set(&be->err, LF_EINVAL, "rope: bad shape T=%lld NH=%lld D=%lld (D must be even)", (long long)T,
                          (long long)NH, (long long)D);
    if (T == 0 || NH == 0) return LF_OK;
    st = lf_cuda_enter(be);
    if (st != LF_OK) return st;
    const int threads = 256;
    const unsigned grid = lf_cuda_grid_1d(cx, T * NH * (D / 2), threads);
    lf_cuda_visit(x.dt, [&](auto tag) {
        typedef typename decltype(tag)::type Ty;
        rope_kernel<Ty><<<grid, threads, 0, cx->stream>>>((Ty *)x.p, pos, inv_freq, T, NH, D);
    });
    LF_CUDA_LAUNCH_CHECK(&be->err);
    return LF_OK;
}
