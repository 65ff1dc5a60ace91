/* attention.cu - attention_forward: causal grouped-query attention with an optional sliding window.
 *
 * q[T,H,D]; k, v: [S,KH,D] (cache row j holds position j); out[T,H,D]. q, k, v share one dtype (F32, BF16 or
 * F16: the kernel's template parameter), out any of the three (written through lf_dyn); scores, softmax and
 * the weighted sum of v run in f32 on widened elements, each output element rounded once. Query t at position p = pos[t]
 * attends keys j in [max(0, p - window + 1), p] (window <= 0: [0, p]) with weights softmax(scale * q.k_j);
 * query head h reads KV head h / (H / KH).
 *
 * Simple and exact rather than fast: one block per (t, h), ATT_WARPS warps. Warp w takes keys lo+w,
 * lo+w+ATT_WARPS, ... and keeps its own online-softmax state (running max m, running sum l, and an
 * unnormalised accumulator acc[D] in shared memory, lane-owned columns d = lane + 32i); at the end the
 * warps' states are merged: M = max m_w, out = sum_w acc_w e^(m_w - M) / sum_w l_w e^(m_w - M).
 * K and V rows are read coalesced (a warp reads D consecutive floats). Shared memory: (1 + ATT_WARPS) * D + 2 *
 * ATT_WARPS floats, so D <= ATT_MAX_D keeps it under the default 48 KB.
 *
 * pos is in device memory and not validated (that would need a wait): a position >= S attends up to row
 * S-1, and a query with no key in range (negative position) gets zeros. */
#include "kernels/cuda/cuda_common.h" /* defines: LF_CHECK_*, lf_warp_sum, lf_cuda_attention_forward */

#include <limits.h>

#define ATT_WARPS 8
#define ATT_MAX_D 1024

template <typename Tq>
static __global__ void __launch_bounds__(ATT_WARPS * 32)
    attention_kernel(lf_dyn out, const Tq *q, const Tq *k, const Tq *v, const int32_t *pos, int64_t S, int64_t H,
                     int64_t KH, int64_t D, int64_t window, float scale) {
    extern __shared__ float smem[];
    float *q_s = smem;                      /* [D] this block's query row */
    float *acc_all = q_s + D;               /* [ATT_WARPS, D] per-warp unnormalised outputs */
    float *m_s = acc_all + ATT_WARPS * D;   /* [ATT_WARPS] per-warp running max */
    float *l_s = m_s + ATT_WARPS;           /* [ATT_WARPS] per-warp running sum of exp */

    const int64_t t = blockIdx.x / H, h = blockIdx.x % H;
    const int64_t kh = h / (H / KH);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const Tq *qr = q + (t * H + h) * D;
    float *acc = acc_all + (int64_t)warp * D;

    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) q_s[d] = lf_ty<Tq>::ld(qr[d]);
    for (int64_t d = lane; d < D; d += 32) acc[d] = 0.0f;
    __syncthreads();

    const int64_t p = pos[t];
    const int64_t hi = p < S - 1 ? p : S - 1;
    int64_t lo = window > 0 ? p - window + 1 : 0;
    if (lo < 0) lo = 0;

    float m = -INFINITY, l = 0.0f;
    for (int64_t j = lo + warp; j <= hi; j += ATT_WARPS) {
        const Tq *kr = k + (j * KH + kh) * D;
        const Tq *vr = v + (j * KH + kh) * D;
        float s = 0.0f;
        for (int64_t d = lane; d < D; d += 32) s += q_s[d] * lf_ty<Tq>::ld(kr[d]);
        s = lf_warp_sum(s) * scale; /* every lane holds the score */
        const float m_new = fmaxf(m, s);
        const float corr = m == -INFINITY ? 0.0f : expf(m - m_new); /* rescale what was summed so far */
        const float e = expf(s - m_new);
        l = l * corr + e;
        for (int64_t d = lane; d < D; d += 32) acc[d] = acc[d] * corr + e * lf_ty<Tq>::ld(vr[d]);
        m = m_new;
    }
    if (lane == 0) {
        m_s[warp] = m;
        l_s[warp] = l;
    }
    __syncthreads();

    /* merge the warps: every thread computes the same M and L (ATT_WARPS values each) */
    float M = -INFINITY;
    for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, m_s[w]);
    float L = 0.0f;
    for (int w = 0; w < ATT_WARPS; w++)
        if (m_s[w] != -INFINITY) L += l_s[w] * expf(m_s[w] - M);
    const float inv_L = L > 0.0f ? 1.0f / L : 0.0f;
    const int64_t o = (t * H + h) * D;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float acc_d = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++)
            if (m_s[w] != -INFINITY) acc_d += acc_all[(int64_t)w * D + d] * expf(m_s[w] - M);
        out.st(o + d, acc_d * inv_L);
    }
}

extern "C" lf_status lf_cuda_attention_forward(lf_backend *be, lf_act out, lf_act q, lf_act k, lf_act v,
                                               const int32_t *pos, int64_t T, int64_t S, int64_t H, int64_t KH,
                                               int64_t D, int64_t window, float scale) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    const lf_act acts[4] = {out, q, k, v};
    lf_status st = lf_cuda_acts_ok(be, LF_OP_ATTENTION, acts, 4);
    if (st != LF_OK) return st;
    if (T < 0 || S <= 0 || H <= 0 || KH <= 0 || H % KH != 0 || D <= 0)
        return lf_err_set(&be->err, LF_EINVAL,
                          "attention: bad shape T=%lld S=%lld H=%lld KH=%lld D=%lld (H must be a multiple of KH)",
                          (long long)T, (long long)S, (long long)H, (long long)KH, (long long)D);
    if (D > ATT_MAX_D)
        return lf_err_set(&be->err, LF_EUNSUPPORTED, "attention: head dim D=%lld > %d not supported on CUDA",
                          (long long)D, ATT_MAX_D);
    if (T * H > INT_MAX)
        return lf_err_set(&be->err, LF_EINVAL, "attention: T*H=%lld too large", (long long)(T * H));
    if (T == 0) return LF_OK;
    st = lf_cuda_enter(be);
    if (st != LF_OK) return st;
    const size_t smem = ((size_t)(1 + ATT_WARPS) * (size_t)D + 2 * ATT_WARPS) * sizeof(float);
    lf_cuda_visit(q.dt, [&](auto tag) {
        typedef typename decltype(tag)::type Tq;
        attention_kernel<Tq><<<(unsigned)(T * H), ATT_WARPS * 32, smem, cx->stream>>>(
            lf_dyn_of(out), (const Tq *)q.p, (const Tq *)k.p, (const Tq *)v.p, pos, S, H, KH, D, window, scale);
    });
    LF_CUDA_LAUNCH_CHECK(&be->err);
    return LF_OK;
}
