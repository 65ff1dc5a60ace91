/* attention_paged.cu - attention_paged_forward: causal GQA attention of T new queries of ONE sequence over a
 * paged KV cache (serving), as backend.h and kernels/cpu/attention_paged.c define it.
 *
 * Layout: q[T,H,D] -> out[T,H,D]; kpool, vpool [NB,BS,KH,D]; logical position j of the sequence lives at pool
 * row block_table[j / BS] * BS + j % BS. Query t (head h, kv head g = h / (H/KH)) at position p = pos[t]
 * attends j in [lo, p], lo = max(0, p - window + 1) when window > 0, else 0, weights softmax(scale * q.k_j).
 *
 * Invariants:
 *  - q, kpool, vpool share one dtype (F32, BF16 or F16: the kernels' template parameter Tq); out may be any of
 *    the three (written through lf_dyn). Scores, the online softmax and the weighted sum of v are f32 on
 *    widened elements; each output element is rounded once.
 *  - GQA-aware: a block serves one kv head g and up to QG of its query heads, so every K/V row it reads is
 *    used for QG heads. QG and DPL (head-dim elements per lane: lane l holds d = l + 32i, i < DPL) are
 *    template parameters chosen from D: D <= 64: (DPL 2, QG 8), <= 128: (4, 8), <= 256: (8, 4), <= 512:
 *    (16, 2), so the accumulators stay at QG*DPL <= 32 registers per lane; the prefill kernel takes at most
 *    4 heads (its tile bookkeeping needs the registers; ptxas-check keeps both spill-free).
 *  - Decode (T < PA_PREFILL_MIN_T): flash-decoding. The key range of each query is cut into n_splits chunks
 *    of `chunk` keys counted from its own lo; grid (t, split, kv head x head group). Inside a block the
 *    PA_WARPS warps take keys round-robin, each with its own online-softmax state in registers, merged
 *    through shared memory at the end. With n_splits == 1 the block writes out directly; otherwise it writes
 *    its unnormalised partial (acc[D], max m, sum l) to ctx->pa_part and pa_combine_kernel merges the splits
 *    (M = max m_s, out = sum_s acc_s e^(m_s-M) / sum_s l_s e^(m_s-M)). n_splits is picked on the host from
 *    the longest possible range (min(window, n_blocks*BS)), the SM count and the scratch: the scratch
 *    (LF_CUDA_PAGED_SCRATCH_BYTES) is allocated at backend create time, and a call whose partials do not fit
 *    uses fewer splits, down to 1, which needs none. No op allocates.
 *  - Prefill (T >= PA_PREFILL_MIN_T): one block per PA_WARPS consecutive queries (one warp each) x kv head x
 *    head group. The block walks the union of its queries' ranges in tiles of TK keys; each tile of K and V is
 *    resolved through the block table once, widened into shared memory once and reused by every warp (the
 *    queries of a chunk attend nearly the same keys), each warp keeping its own online softmax.
 *  - Not validated on the device (that would need a wait per call): the host checks sizes as the CPU op does;
 *    on the device a position is clamped to n_blocks*BS - 1, a negative position attends nothing (zeros out),
 *    and a key whose block id is negative is skipped. The caller guarantees block ids < NB. */
#include "kernels/cuda/cuda_common.h" /* defines: LF_CHECK_*, lf_warp_sum, lf_ptr/lf_dyn, the launcher */

#include <limits.h>

#define PA_WARPS 4               /* warps per block */
#define PA_MAX_D 512             /* head dims 2..512, even (the CPU op's limit) */
#define PA_PREFILL_MIN_T 4       /* T >= this: the tiled prefill kernel; below: split decode */
#define PA_MIN_KEYS_PER_SPLIT 64 /* a split gets at least this many keys (16 per warp) */
#define PA_TILE_FLOATS 2048      /* prefill: a K (and a V) tile holds TK = min(32, this / D) rows */

#if defined(__CUDA_ARCH__)
#define PA_UNROLL _Pragma("unroll")
#else
#define PA_UNROLL
#endif

/* The scalar arguments every kernel needs (by value). */
struct pa_args {
    lf_dyn out;           /* [T,H,D] */
    const int32_t *bt;    /* [n_blocks] */
    const int32_t *pos;   /* [T] */
    int64_t n_blocks, BS, T, H, KH, D, group, window;
    float scale;
    int nhg;              /* query-head groups per kv head: ceil(group / QG) */
};

/* Element offset of logical position j, kv head g, in the pools; -1 when its block is outside the table or
 * its id is negative (the key is skipped). */
static __device__ __forceinline__ int64_t pa_row_off(const pa_args &a, int64_t j, int64_t g) {
    const int64_t b = (uint32_t)j / (uint32_t)a.BS; /* j <= pos < 2^31, BS < 2^31 (host check): 32-bit divide */
    if (b >= a.n_blocks) return -1;
    const int32_t id = __ldg(a.bt + b);
    if (id < 0) return -1;
    return (((int64_t)id * a.BS + (j - b * a.BS)) * a.KH + g) * a.D;
}

/* Keys [lo, hi] of query t (empty when hi < lo: a negative position). */
static __device__ __forceinline__ void pa_range(const pa_args &a, int64_t t, int64_t &lo, int64_t &hi) {
    int64_t p = __ldg(a.pos + t);
    const int64_t S = a.n_blocks * a.BS;
    if (p > S - 1) p = S - 1;
    hi = p;
    lo = a.window > 0 ? p - a.window + 1 : 0;
    if (lo < 0) lo = 0;
}

/* One key for the nq (<= QG) heads of a warp: q_s [QG][D] f32 (shared), kx/vx the lane's elements of the key's
 * K and V rows. Updates each head's running max m, sum l and unnormalised acc. */
template <int DPL, int QG>
static __device__ __forceinline__ void pa_step(const float *q_s, const float (&kx)[DPL], const float (&vx)[DPL],
                                               int nq, int64_t D, int lane, float scale, float (&m)[QG],
                                               float (&l)[QG], float (&acc)[QG][DPL]) {
    PA_UNROLL
    for (int hq = 0; hq < QG; hq++) {
        if (hq >= nq) break; /* warp-uniform */
        float s = 0.0f;
        PA_UNROLL
        for (int i = 0; i < DPL; i++) {
            const int64_t d = lane + 32 * i;
            if (d < D) s = fmaf(q_s[hq * D + d], kx[i], s);
        }
        s = lf_warp_sum(s) * scale; /* every lane holds the score */
        const float mn = fmaxf(m[hq], s);
        const float corr = expf(m[hq] - mn); /* 0 while m = -inf */
        const float e = expf(s - mn);
        l[hq] = l[hq] * corr + e;
        PA_UNROLL
        for (int i = 0; i < DPL; i++) acc[hq][i] = acc[hq][i] * corr + e * vx[i];
        m[hq] = mn;
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * Decode: split-KV kernel + combine
 * grid (T, n_splits, KH * nhg), PA_WARPS warps; dynamic shared memory
 *   q_s [QG*D] | m_s [PA_WARPS*QG] | l_s [PA_WARPS*QG] | acc_s [PA_WARPS*QG*D]   (floats)
 * part: [n_splits, T*H, D] unnormalised accumulators, then ml [n_splits, T*H, 2] (max, sum); unused when
 * n_splits == 1.
 * --------------------------------------------------------------------------------------------------------- */
template <typename Tq, int DPL, int QG>
static __global__ void __launch_bounds__(PA_WARPS * 32, 1)
    pa_split_kernel(const Tq *q, const Tq *kp, const Tq *vp, const pa_args a, float *part_o, float *part_ml,
                    int n_splits, int64_t chunk) {
    extern __shared__ float smem[];
    const int64_t D = a.D;
    float *q_s = smem;
    float *m_s = q_s + QG * D;
    float *l_s = m_s + PA_WARPS * QG;
    float *acc_s = l_s + PA_WARPS * QG;

    const int64_t t = blockIdx.x;
    const int split = (int)blockIdx.y;
    const int64_t g = blockIdx.z / a.nhg, hs = blockIdx.z % a.nhg;
    const int64_t h0 = g * a.group + hs * QG;
    const int nq = (int)(a.group - hs * QG < QG ? a.group - hs * QG : QG);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    /* the nq query rows (t, h0..h0+nq-1) are contiguous */
    const Tq *qr = q + (t * a.H + h0) * D;
    for (int64_t i = threadIdx.x; i < nq * D; i += blockDim.x) q_s[i] = lf_ty<Tq>::ld(qr[i]);
    __syncthreads();

    int64_t lo, hi;
    pa_range(a, t, lo, hi);
    const int64_t jlo = lo + (int64_t)split * chunk;
    const int64_t jhi = hi < jlo + chunk - 1 ? hi : jlo + chunk - 1;

    float m[QG], l[QG], acc[QG][DPL];
    PA_UNROLL
    for (int hq = 0; hq < QG; hq++) {
        m[hq] = -INFINITY, l[hq] = 0.0f;
        PA_UNROLL
        for (int i = 0; i < DPL; i++) acc[hq][i] = 0.0f;
    }
    for (int64_t j = jlo + warp; j <= jhi; j += PA_WARPS) {
        const int64_t off = pa_row_off(a, j, g);
        if (off < 0) continue;
        float kx[DPL], vx[DPL];
        PA_UNROLL
        for (int i = 0; i < DPL; i++) {
            const int64_t d = lane + 32 * i;
            kx[i] = d < D ? lf_ty<Tq>::ld(kp[off + d]) : 0.0f;
            vx[i] = d < D ? lf_ty<Tq>::ld(vp[off + d]) : 0.0f;
        }
        pa_step<DPL, QG>(q_s, kx, vx, nq, D, lane, a.scale, m, l, acc);
    }

    /* merge the warps */
    PA_UNROLL
    for (int hq = 0; hq < QG; hq++) {
        if (lane == 0) m_s[warp * QG + hq] = m[hq], l_s[warp * QG + hq] = l[hq];
        PA_UNROLL
        for (int i = 0; i < DPL; i++) {
            const int64_t d = lane + 32 * i;
            if (d < D) acc_s[(warp * QG + hq) * D + d] = acc[hq][i];
        }
    }
    __syncthreads();
    const int64_t rows = a.T * a.H;
    for (int64_t e = threadIdx.x; e < nq * D; e += blockDim.x) {
        const int hq = (int)((uint32_t)e / (uint32_t)D);
        const int64_t d = e - hq * D, row = t * a.H + h0 + hq;
        float M = -INFINITY;
        for (int w = 0; w < PA_WARPS; w++) M = fmaxf(M, m_s[w * QG + hq]);
        float L = 0.0f, A = 0.0f;
        for (int w = 0; w < PA_WARPS; w++) {
            const float mw = m_s[w * QG + hq];
            if (mw == -INFINITY) continue; /* this warp saw no key */
            const float f = expf(mw - M);
            L += l_s[w * QG + hq] * f;
            A += acc_s[(w * QG + hq) * D + d] * f;
        }
        if (n_splits == 1) {
            a.out.st(row * D + d, L > 0.0f ? A / L : 0.0f);
        } else {
            const int64_t pr = (int64_t)split * rows + row;
            part_o[pr * D + d] = A;
            if (d == 0) part_ml[2 * pr] = M, part_ml[2 * pr + 1] = L;
        }
    }
}

/* One block per output row (t, h): merge the n_splits partials. */
static __global__ void pa_combine_kernel(lf_dyn out, const float *part_o, const float *part_ml, int n_splits,
                                         int64_t rows, int64_t D) {
    __shared__ float w_s[LF_CUDA_PAGED_MAX_SPLITS];
    __shared__ float inv_L;
    const int64_t row = blockIdx.x;
    if (threadIdx.x == 0) {
        float M = -INFINITY, L = 0.0f;
        for (int s = 0; s < n_splits; s++) M = fmaxf(M, part_ml[2 * ((int64_t)s * rows + row)]);
        for (int s = 0; s < n_splits; s++) {
            const int64_t pr = (int64_t)s * rows + row;
            const float ms = part_ml[2 * pr];
            const float w = ms == -INFINITY ? 0.0f : expf(ms - M); /* an empty split weighs nothing */
            w_s[s] = w;
            L += part_ml[2 * pr + 1] * w;
        }
        inv_L = L > 0.0f ? 1.0f / L : 0.0f;
    }
    __syncthreads();
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float A = 0.0f;
        for (int s = 0; s < n_splits; s++) A += w_s[s] * part_o[((int64_t)s * rows + row) * D + d];
        out.st(row * D + d, A * inv_L);
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * Prefill: grid (ceil(T / PA_WARPS), KH * nhg), PA_WARPS warps (warp w = query t0 + w); dynamic shared memory
 *   q_s [PA_WARPS*QG*D] | k_s [TK*D] | v_s [TK*D]   (floats) | off_s [TK] (int64)
 * --------------------------------------------------------------------------------------------------------- */
template <typename Tq, int DPL, int QG>
static __global__ void __launch_bounds__(PA_WARPS * 32, 1)
    pa_prefill_kernel(const Tq *q, const Tq *kp, const Tq *vp, const pa_args a, int TK) {
    extern __shared__ float smem[];
    __shared__ int64_t rng_s[PA_WARPS][2];
    const int64_t D = a.D;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float *q_s = smem + (int64_t)warp * QG * D; /* this warp's queries */
    float *k_s = smem + (int64_t)PA_WARPS * QG * D;
    float *v_s = k_s + (int64_t)TK * D;
    int64_t *off_s = (int64_t *)(v_s + (int64_t)TK * D); /* 8-byte aligned: D is even */

    const int64_t t = (int64_t)blockIdx.x * PA_WARPS + warp;
    const bool active = t < a.T;
    const int64_t g = blockIdx.y / a.nhg, hs = blockIdx.y % a.nhg;
    const int64_t h0 = g * a.group + hs * QG;
    const int nq = (int)(a.group - hs * QG < QG ? a.group - hs * QG : QG);

    int64_t lo = 0, hi = -1;
    if (active) {
        const Tq *qr = q + (t * a.H + h0) * D;
        for (int64_t i = lane; i < nq * D; i += 32) q_s[i] = lf_ty<Tq>::ld(qr[i]);
        pa_range(a, t, lo, hi);
    }
    if (lane == 0) rng_s[warp][0] = lo, rng_s[warp][1] = hi;
    __syncthreads();
    int64_t klo = INT64_MAX, khi = -1; /* the union of the block's ranges (uniform over the block) */
    for (int w = 0; w < PA_WARPS; w++)
        if (rng_s[w][0] <= rng_s[w][1]) {
            klo = rng_s[w][0] < klo ? rng_s[w][0] : klo;
            khi = rng_s[w][1] > khi ? rng_s[w][1] : khi;
        }

    float m[QG], l[QG], acc[QG][DPL];
    PA_UNROLL
    for (int hq = 0; hq < QG; hq++) {
        m[hq] = -INFINITY, l[hq] = 0.0f;
        PA_UNROLL
        for (int i = 0; i < DPL; i++) acc[hq][i] = 0.0f;
    }
    for (int64_t j0 = klo; j0 <= khi; j0 += TK) {
        __syncthreads(); /* every warp is done with the previous tile */
        for (int jj = threadIdx.x; jj < TK; jj += blockDim.x)
            off_s[jj] = j0 + jj <= khi ? pa_row_off(a, j0 + jj, g) : -1;
        __syncthreads();
        for (int jj = warp; jj < TK; jj += PA_WARPS) {
            const int64_t off = off_s[jj];
            for (int64_t d = lane; d < D; d += 32) {
                k_s[jj * D + d] = off >= 0 ? lf_ty<Tq>::ld(kp[off + d]) : 0.0f;
                v_s[jj * D + d] = off >= 0 ? lf_ty<Tq>::ld(vp[off + d]) : 0.0f;
            }
        }
        __syncthreads();
        if (!active) continue;
        const int64_t jb = lo > j0 ? lo : j0, je = hi < j0 + TK - 1 ? hi : j0 + TK - 1;
        for (int64_t j = jb; j <= je; j++) {
            const int64_t jj = j - j0;
            if (off_s[jj] < 0) continue;
            float kx[DPL], vx[DPL];
            PA_UNROLL
            for (int i = 0; i < DPL; i++) {
                const int64_t d = lane + 32 * i;
                kx[i] = d < D ? k_s[jj * D + d] : 0.0f;
                vx[i] = d < D ? v_s[jj * D + d] : 0.0f;
            }
            pa_step<DPL, QG>(q_s, kx, vx, nq, D, lane, a.scale, m, l, acc);
        }
    }
    if (!active) return;
    PA_UNROLL
    for (int hq = 0; hq < QG; hq++) {
        if (hq >= nq) break;
        const float inv = l[hq] > 0.0f ? 1.0f / l[hq] : 0.0f;
        const int64_t o = (t * a.H + h0 + hq) * D;
        PA_UNROLL
        for (int i = 0; i < DPL; i++) {
            const int64_t d = lane + 32 * i;
            if (d < D) a.out.st(o + d, acc[hq][i] * inv);
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * Launcher
 * --------------------------------------------------------------------------------------------------------- */

/* Queue the kernels for one (Tq, DPL, QG) instantiation. */
template <typename Tq, int DPL, int QG>
static lf_status pa_launch(lf_backend *be, const Tq *q, const Tq *kp, const Tq *vp, pa_args a) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    const int64_t D = a.D, T = a.T;
    /* prefill keeps at most 4 heads per warp: its tile pointers and ranges leave less room for accumulators */
    constexpr int QGP = QG > 4 ? 4 : QG;
    a.nhg = (int)((a.group + (T >= PA_PREFILL_MIN_T ? QGP : QG) - 1) / (T >= PA_PREFILL_MIN_T ? QGP : QG));
    const int64_t heads = a.KH * a.nhg; /* blocks per query token */
    if (heads > 65535)
        return lf_err_set(&be->err, LF_EUNSUPPORTED, "attention_paged: KH=%lld x %d head groups exceeds one grid",
                          (long long)a.KH, a.nhg);

    if (T >= PA_PREFILL_MIN_T) {
        int TK = (int)(PA_TILE_FLOATS / D);
        TK = TK < 1 ? 1 : TK > 32 ? 32 : TK;
        const size_t smem = ((size_t)PA_WARPS * QGP * D + 2 * (size_t)TK * D) * sizeof(float) + (size_t)TK * 8;
        const int64_t tiles = (T + PA_WARPS - 1) / PA_WARPS;
        if (tiles > INT_MAX) return lf_err_set(&be->err, LF_EINVAL, "attention_paged: T=%lld too large", (long long)T);
        pa_prefill_kernel<Tq, DPL, QGP><<<dim3((unsigned)tiles, (unsigned)heads), PA_WARPS * 32, smem, cx->stream>>>(
            q, kp, vp, a, TK);
        LF_CUDA_LAUNCH_CHECK(&be->err);
        return LF_OK;
    }

    /* decode: choose the split count (see the header comment) */
    const int64_t S = a.n_blocks * a.BS;
    const int64_t Lmax = a.window > 0 && a.window < S ? a.window : S;
    const int64_t base = T * heads, rows = T * a.H;
    const int64_t target = 4 * (int64_t)(cx->sm_count > 0 ? cx->sm_count : 80);
    int64_t n = (target + base - 1) / base;
    const int64_t by_len = (Lmax + PA_MIN_KEYS_PER_SPLIT - 1) / PA_MIN_KEYS_PER_SPLIT;
    const int64_t by_scratch = (int64_t)(cx->pa_part_floats / (size_t)(rows * (D + 2)));
    if (n > by_len) n = by_len;
    if (n > LF_CUDA_PAGED_MAX_SPLITS) n = LF_CUDA_PAGED_MAX_SPLITS;
    if (n > by_scratch) n = by_scratch;
    if (n < 1) n = 1;
    const int64_t chunk = (Lmax + n - 1) / n;
    float *part_o = cx->pa_part, *part_ml = cx->pa_part + n * rows * D;

    const size_t smem = ((size_t)QG * D + 2 * PA_WARPS * QG + (size_t)PA_WARPS * QG * D) * sizeof(float);
    pa_split_kernel<Tq, DPL, QG><<<dim3((unsigned)T, (unsigned)n, (unsigned)heads), PA_WARPS * 32, smem, cx->stream>>>(
        q, kp, vp, a, part_o, part_ml, (int)n, chunk);
    LF_CUDA_LAUNCH_CHECK(&be->err);
    if (n > 1) {
        pa_combine_kernel<<<(unsigned)rows, D >= 256 ? 256 : 128, 0, cx->stream>>>(a.out, part_o, part_ml, (int)n,
                                                                                  rows, D);
        LF_CUDA_LAUNCH_CHECK(&be->err);
    }
    return LF_OK;
}

extern "C" lf_status lf_cuda_attention_paged_forward(lf_backend *be, lf_act out, lf_act q, lf_act kpool,
                                                     lf_act vpool, const int32_t *block_table, int64_t n_blocks,
                                                     int64_t BS, const int32_t *pos, int64_t T, int64_t H,
                                                     int64_t KH, int64_t D, int64_t window, float scale) {
    const lf_act acts[4] = {out, q, kpool, vpool};
    lf_status st = lf_cuda_acts_ok(be, LF_OP_ATTENTION_PAGED, acts, 4);
    if (st != LF_OK) return st;
    if (T < 0 || n_blocks < 0 || BS < 1 || H < 1 || KH < 1 || D < 1)
        return lf_err_set(&be->err, LF_EINVAL,
                          "attention_paged: bad size T=%lld n_blocks=%lld BS=%lld H=%lld KH=%lld D=%lld", (long long)T,
                          (long long)n_blocks, (long long)BS, (long long)H, (long long)KH, (long long)D);
    if (H % KH != 0)
        return lf_err_set(&be->err, LF_EINVAL, "attention_paged: H=%lld is not a multiple of KH=%lld", (long long)H,
                          (long long)KH);
    if (D % 2 != 0 || D > PA_MAX_D)
        return lf_err_set(&be->err, LF_EINVAL, "attention_paged: head dim D=%lld must be even and <= %d", (long long)D,
                          PA_MAX_D);
    if (T > 0 && (n_blocks == 0 || !block_table || !pos))
        return lf_err_set(&be->err, LF_EINVAL, "attention_paged: %lld queries but an empty block table (n_blocks=%lld)",
                          (long long)T, (long long)n_blocks);
    if (BS > INT_MAX || n_blocks > INT64_MAX / BS || T > INT_MAX || T * H > INT_MAX)
        return lf_err_set(&be->err, LF_EINVAL, "attention_paged: sizes too large (n_blocks=%lld BS=%lld T=%lld H=%lld)",
                          (long long)n_blocks, (long long)BS, (long long)T, (long long)H);
    if (T == 0) return LF_OK;
    if (!out.p || !q.p || !kpool.p || !vpool.p)
        return lf_err_set(&be->err, LF_EINVAL, "attention_paged: NULL out, q or pool");
    st = lf_cuda_enter(be);
    if (st != LF_OK) return st;

    pa_args a;
    a.out = lf_dyn_of(out);
    a.bt = block_table, a.pos = pos;
    a.n_blocks = n_blocks, a.BS = BS, a.T = T, a.H = H, a.KH = KH, a.D = D, a.group = H / KH, a.window = window;
    a.scale = scale;
    a.nhg = 1;
    lf_cuda_visit(q.dt, [&](auto tag) {
        typedef typename decltype(tag)::type Tq;
        const Tq *qp = (const Tq *)q.p, *kp = (const Tq *)kpool.p, *vp = (const Tq *)vpool.p;
        if (D <= 64) st = pa_launch<Tq, 2, 8>(be, qp, kp, vp, a);
        else if (D <= 128) st = pa_launch<Tq, 4, 8>(be, qp, kp, vp, a);
        else if (D <= 256) st = pa_launch<Tq, 8, 4>(be, qp, kp, vp, a);
        else st = pa_launch<Tq, 16, 2>(be, qp, kp, vp, a);
    });
    return st;
}
