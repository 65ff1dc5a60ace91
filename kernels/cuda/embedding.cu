/* embedding.cu - embedding_forward: out[T,C] = wte[tokens[t], :] for wte [V,C] in F32, BF16 or F16 and out
 * F32, BF16 or F16 (a copy when the dtypes match, else one exact widening and one rounding per element).
 *
 * tokens[T] is in device memory (like every op argument). backend.h promises token ids are checked < V:
 * a kernel cannot return an error, so it records the first bad row in ctx->d_flag (and writes zeros there),
 * and the launcher copies the flag back and waits for it. This makes embedding the one op that waits for
 * the device; it runs once per forward pass, usually on an idle queue, so the wait costs little. */
#include "kernels/cuda/cuda_common.h" /* defines: LF_CHECK_*, lf_cuda_ctx, lf_cuda_embedding_forward */

#include <limits.h>

/* One block per token row t; threads stride over C. flag[0] = 1 + first bad row, flag[1] = its token id. */
template <typename Tw, class O>
static __global__ void embedding_kernel(O out, const int32_t *tokens, const Tw *wte, int64_t V, int64_t C,
                                        int *flag) {
    const int64_t t = blockIdx.x;
    const int32_t tok = tokens[t];
    if (tok < 0 || (int64_t)tok >= V) {
        if (threadIdx.x == 0 && atomicCAS(&flag[0], 0, (int)(t + 1)) == 0) flag[1] = tok;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out.st(t * C + c, 0.0f);
        return;
    }
    const Tw *row = wte + (int64_t)tok * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out.st(t * C + c, lf_ty<Tw>::ld(row[c]));
}

extern "C" lf_status lf_cuda_embedding_forward(lf_backend *be, lf_act out, const int32_t *tokens,
                                               const lf_tensor *wte, int64_t T) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    lf_status st = lf_cuda_acts_ok(be, LF_OP_EMBEDDING, &out, 1);
    if (st != LF_OK) return st;
    if (!wte || wte->ndim != 2 || wte->shape[0] <= 0 || wte->shape[1] <= 0)
        return lf_err_set(&be->err, LF_EINVAL, "embedding: wte must be a non-empty [V,C] tensor");
    if (wte->device != LF_DEVICE_CUDA)
        return lf_err_set(&be->err, LF_EINVAL, "embedding: wte is not in CUDA memory (lf_tensor.device != CUDA)");
    if (!lf_act_dtype_ok(wte->dtype))
        return lf_err_set(&be->err, LF_EUNSUPPORTED, "embedding: wte dtype %s not supported (F32, BF16, F16)",
                          lf_dtype_name(wte->dtype));
    if (T < 0 || T > INT_MAX - 1)
        return lf_err_set(&be->err, LF_EINVAL, "embedding: T=%lld out of range", (long long)T);
    if (T == 0) return LF_OK;
    const int64_t V = wte->shape[0], C = wte->shape[1];
    const int threads = C >= 1024 ? 256 : 128;
    st = lf_cuda_enter(be);
    if (st != LF_OK) return st;

    LF_CHECK_CUDA(&be->err, cudaMemsetAsync(cx->d_flag, 0, 2 * sizeof(int), cx->stream));
    lf_cuda_visit(wte->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type Tw;
        const Tw *w = (const Tw *)wte->data;
        if (out.dt == wte->dtype)
            embedding_kernel<<<(unsigned)T, threads, 0, cx->stream>>>(lf_ptr_of<Tw>(out), tokens, w, V, C, cx->d_flag);
        else
            embedding_kernel<<<(unsigned)T, threads, 0, cx->stream>>>(lf_dyn_of(out), tokens, w, V, C, cx->d_flag);
    });
    LF_CUDA_LAUNCH_CHECK(&be->err);

    LF_CHECK_CUDA(&be->err, cudaMemcpyAsync(cx->h_flag, cx->d_flag, 2 * sizeof(int), cudaMemcpyDeviceToHost,
                                            cx->stream));
    LF_CHECK_CUDA(&be->err, cudaStreamSynchronize(cx->stream));
    if (cx->h_flag[0] != 0)
        return lf_err_set(&be->err, LF_EINVAL, "embedding: token id %d at row %d is out of range [0, %lld)",
                          cx->h_flag[1], cx->h_flag[0] - 1, (long long)V);
    return LF_OK;
}
