/* elementwise.cu - the flat ops over N elements: swiglu_forward (out = silu(gate) * up), residual_forward
 * (out = a + b), add_scaled_forward (y += alpha x), dora_combine_forward (PEFT's DoRA inference formula on a
 * base output [T,OC]) and convert (dst = src in another dtype).
 *
 * Invariants: activations F32, BF16 or F16 in any combination (backend.h lf_act); each element is widened to
 * f32, computed in f32 and rounded once to the output's dtype. A call whose activations share one dtype runs
 * an instantiation for that element type (lf_ptr<T>); a mixed call runs the lf_dyn one. Grid-stride loops,
 * one element per thread per step: out may alias an input of the same dtype because every element is read
 * and written by the same thread in the same step. Products and sums that the CPU reference writes as
 * separate f32 operations are written with __fmul_rn / __fadd_rn here, so nvcc cannot contract them into an
 * FMA and f32 results match the CPU bit for bit where the CPU does the same operations. */
#include "kernels/cuda/cuda_common.h" /* defines: LF_CHECK_*, lf_cuda_grid_1d, lf_ptr, lf_dyn, the launchers */

/* silu(g) = g * sigmoid(g) = g / (1 + exp(-g)); for g -> -inf, exp(-g) = inf and the quotient is -0. */
template <class O, class G, class U>
static __global__ void swiglu_kernel(O out, G gate, U up, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float g = gate.ld(i);
        out.st(i, g / (1.0f + expf(-g)) * up.ld(i));
    }
}

template <class O, class A, class B>
static __global__ void residual_kernel(O out, A a, B b, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out.st(i, __fadd_rn(a.ld(i), b.ld(i)));
}

/* y = y + alpha * x, the product rounded first (the CPU's order) */
template <class Y, class X>
static __global__ void add_scaled_kernel(Y y, X x, float alpha, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y.st(i, __fadd_rn(y.ld(i), __fmul_rn(alpha, x.ld(i))));
}

/* out += (mag/wn - 1) * (out - bias) + (mag/wn) * scale * lo, in the CPU reference's operation order */
template <class O, class L>
static __global__ void dora_kernel(O out, L lo, const float *mag, const float *wn, const float *bias, float scale,
                                   int64_t T, int64_t OC) {
    const int64_t n = T * OC;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t o = i % OC;
        const float mns = __fdiv_rn(mag[o], wn[o]), y = out.ld(i);
        const float bnb = __fsub_rn(y, bias ? bias[o] : 0.0f);
        const float t1 = __fmul_rn(__fsub_rn(mns, 1.0f), bnb), t2 = __fmul_rn(__fmul_rn(mns, scale), lo.ld(i));
        out.st(i, __fadd_rn(y, __fadd_rn(t1, t2)));
    }
}

template <class D, class S>
static __global__ void convert_kernel(D dst, S src, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst.st(i, src.ld(i));
}

#define EW_THREADS 256

/* Common prologue: dtypes, N, device. Returns LF_OK and sets *run when there is work to queue. */
static lf_status ew_enter(lf_backend *be, lf_op op, const lf_act *a, int n_act, int64_t N, int *run) {
    *run = 0;
    lf_status st = lf_cuda_acts_ok(be, op, a, n_act);
    if (st != LF_OK) return st;
    if (N < 0) return lf_err_set(&be->err, LF_EINVAL, "%s: negative N=%lld", lf_op_name(op), (long long)N);
    for (int i = 0; i < n_act; i++)
        if (N > 0 && !a[i].p) return lf_err_set(&be->err, LF_EINVAL, "%s: activation %d is NULL", lf_op_name(op), i);
    if (N == 0) return LF_OK;
    st = lf_cuda_enter(be);
    if (st == LF_OK) *run = 1;
    return st;
}

extern "C" lf_status lf_cuda_swiglu_forward(lf_backend *be, lf_act out, lf_act gate, lf_act up, int64_t N) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    const lf_act a[3] = {out, gate, up};
    int run;
    lf_status st = ew_enter(be, LF_OP_SWIGLU, a, 3, N, &run);
    if (st != LF_OK || !run) return st;
    const unsigned grid = lf_cuda_grid_1d(cx, N, EW_THREADS);
    if (lf_cuda_same_dt(a, 3))
        lf_cuda_visit(out.dt, [&](auto tag) {
            typedef typename decltype(tag)::type T;
            swiglu_kernel<<<grid, EW_THREADS, 0, cx->stream>>>(lf_ptr_of<T>(out), lf_ptr_of<T>(gate), lf_ptr_of<T>(up),
                                                               N);
        });
    else
        swiglu_kernel<<<grid, EW_THREADS, 0, cx->stream>>>(lf_dyn_of(out), lf_dyn_of(gate), lf_dyn_of(up), N);
    LF_CUDA_LAUNCH_CHECK(&be->err);
    return LF_OK;
}

extern "C" lf_status lf_cuda_residual_forward(lf_backend *be, lf_act out, lf_act x, lf_act y, int64_t N) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    const lf_act a[3] = {out, x, y};
    int run;
    lf_status st = ew_enter(be, LF_OP_RESIDUAL, a, 3, N, &run);
    if (st != LF_OK || !run) return st;
    const unsigned grid = lf_cuda_grid_1d(cx, N, EW_THREADS);
    if (lf_cuda_same_dt(a, 3))
        lf_cuda_visit(out.dt, [&](auto tag) {
            typedef typename decltype(tag)::type T;
            residual_kernel<<<grid, EW_THREADS, 0, cx->stream>>>(lf_ptr_of<T>(out), lf_ptr_of<T>(x), lf_ptr_of<T>(y),
                                                                 N);
        });
    else
        residual_kernel<<<grid, EW_THREADS, 0, cx->stream>>>(lf_dyn_of(out), lf_dyn_of(x), lf_dyn_of(y), N);
    LF_CUDA_LAUNCH_CHECK(&be->err);
    return LF_OK;
}

extern "C" lf_status lf_cuda_add_scaled_forward(lf_backend *be, lf_act y, lf_act x, float alpha, int64_t N) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    const lf_act a[2] = {y, x};
    int run;
    lf_status st = ew_enter(be, LF_OP_ADD_SCALED, a, 2, N, &run);
    if (st != LF_OK || !run) return st;
    const unsigned grid = lf_cuda_grid_1d(cx, N, EW_THREADS);
    if (lf_cuda_same_dt(a, 2))
        lf_cuda_visit(y.dt, [&](auto tag) {
            typedef typename decltype(tag)::type T;
            add_scaled_kernel<<<grid, EW_THREADS, 0, cx->stream>>>(lf_ptr_of<T>(y), lf_ptr_of<T>(x), alpha, N);
        });
    else
        add_scaled_kernel<<<grid, EW_THREADS, 0, cx->stream>>>(lf_dyn_of(y), lf_dyn_of(x), alpha, N);
    LF_CUDA_LAUNCH_CHECK(&be->err);
    return LF_OK;
}

extern "C" lf_status lf_cuda_dora_combine_forward(lf_backend *be, lf_act out, lf_act lo, const float *mag,
                                                  const float *wn, const float *bias, float scale, int64_t T,
                                                  int64_t OC) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    const lf_act a[2] = {out, lo};
    if (T < 0 || OC < 0)
        return lf_err_set(&be->err, LF_EINVAL, "dora_combine: negative size T=%lld OC=%lld", (long long)T,
                          (long long)OC);
    if (T && OC && (!mag || !wn)) return lf_err_set(&be->err, LF_EINVAL, "dora_combine: magnitude or norm is NULL");
    int run;
    lf_status st = ew_enter(be, LF_OP_DORA_COMBINE, a, 2, T * OC, &run);
    if (st != LF_OK || !run) return st;
    const unsigned grid = lf_cuda_grid_1d(cx, T * OC, EW_THREADS);
    if (lf_cuda_same_dt(a, 2))
        lf_cuda_visit(out.dt, [&](auto tag) {
            typedef typename decltype(tag)::type Ty;
            dora_kernel<<<grid, EW_THREADS, 0, cx->stream>>>(lf_ptr_of<Ty>(out), lf_ptr_of<Ty>(lo), mag, wn, bias,
                                                             scale, T, OC);
        });
    else
        dora_kernel<<<grid, EW_THREADS, 0, cx->stream>>>(lf_dyn_of(out), lf_dyn_of(lo), mag, wn, bias, scale, T, OC);
    LF_CUDA_LAUNCH_CHECK(&be->err);
    return LF_OK;
}

extern "C" lf_status lf_cuda_convert(lf_backend *be, lf_act dst, lf_act src, int64_t N) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    const lf_act a[2] = {dst, src};
    int run;
    lf_status st = ew_enter(be, LF_OP_CONVERT, a, 2, N, &run);
    if (st != LF_OK || !run) return st;
    if (dst.p == src.p && dst.dt == src.dt) return LF_OK;
    if (lf_cuda_overlap(dst, N, src, N)) return lf_err_set(&be->err, LF_EINVAL, "convert: dst overlaps src");
    if (dst.dt == src.dt) {
        LF_CHECK_CUDA(&be->err, cudaMemcpyAsync(dst.p, src.p, lf_act_bytes(dst.dt, N), cudaMemcpyDeviceToDevice,
                                                cx->stream));
        return LF_OK;
    }
    const unsigned grid = lf_cuda_grid_1d(cx, N, EW_THREADS);
    /* the conversions the model runs every step get their own instantiation; the rest share lf_dyn */
    if (src.dt == LF_DTYPE_F32 && dst.dt == LF_DTYPE_BF16)
        convert_kernel<<<grid, EW_THREADS, 0, cx->stream>>>(lf_ptr_of<__nv_bfloat16>(dst), lf_ptr_of<float>(src), N);
    else if (src.dt == LF_DTYPE_BF16 && dst.dt == LF_DTYPE_F32)
        convert_kernel<<<grid, EW_THREADS, 0, cx->stream>>>(lf_ptr_of<float>(dst), lf_ptr_of<__nv_bfloat16>(src), N);
    else
        convert_kernel<<<grid, EW_THREADS, 0, cx->stream>>>(lf_dyn_of(dst), lf_dyn_of(src), N);
    LF_CUDA_LAUNCH_CHECK(&be->err);
    return LF_OK;
}
