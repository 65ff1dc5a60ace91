/* quant.cu - 4-bit (NF4/FP4, bitsandbytes layout of quant/quant_block.h) weights on CUDA: dequantize to f32 /
 * bf16, and matmul_q4_forward. Weights are backend states (kernels/quant_upload.h): packed codes and absmax
 * arrays in device memory; the scalars, code table and 256-entry nested map travel by value as kernel
 * parameters (q4_params, ~1.1 KiB) and are copied to shared memory by each block.
 *
 * Exactness. Dequantize is bit-identical to quant.c: value = code[q] * absmax(block) as one f32 multiply, and
 * a nested absmax = map[absmax_q] * nested_absmax + offset as two separately rounded f32 operations
 * (__fmul_rn/__fadd_rn: nvcc would otherwise contract them into one FMA); bf16 rounds that f32 product to
 * nearest even exactly as lf_f32_to_bf16 (NaN kept quiet).
 *
 * matmul_q4_forward, out[T,OC] = inp[T,C] @ deq(W)^T (+ bias[OC]), W [OC,C]; inp and out F32, BF16 or F16 in
 * any combination (inputs widened to f32, f32 accumulation, one rounding per output element):
 *  - T <= LF_CUDA_Q4_FUSED_MAX_T (decode, small batches): fused kernels that read the packed bytes directly.
 *    q4_gemv_kernel (C % 8 == 0, packed 4-byte and inp 16-byte aligned: every Llama shape): a block of
 *    Q4_WARPS warps owns Q4_ROWS rows of W; the warps split the row's columns in steps of 256 (lane l takes the
 *    8 columns 8l..8l+7 of a step: one coalesced 4-byte load of packed codes per row, one 16-byte load
 *    (16-bit inputs) or two (f32) of each input row shared by the Q4_ROWS weight rows, the 8 codes looked up in a 16-entry shared table, which no
 *    access pattern can bank-conflict). A lane's 8 columns lie in one quantization block (blocksize >= 32 and
 *    8 | column offset), so its partial dot product is scaled by the block's absmax once. Partial sums are
 *    reduced in a fixed order (warp shuffles, then the warps through shared memory): deterministic.
 *    q4_gemv_any_kernel handles every other shape and alignment (odd C, rows starting mid-byte, blocks
 *    spanning rows): one warp per row, one element per lane per step, weight = code * absmax as dequantize.
 *    Both accumulate in f32 with FMAs: results match the f32 CPU reference to rounding, not bit for bit.
 *  - T > LF_CUDA_Q4_FUSED_MAX_T (prefill, training): W is dequantized to bf16 into the backend's workspace
 *    (lf_cuda_q4_ws: allocated on first use, grown only for a larger W, freed with the backend), then the bf16
 *    cuBLASLt path of matmul.cu runs (inp rounded to bf16 unless it is bf16, f32 accumulate, out in its dtype):
 *    the precision of a bf16 weight matmul, as bitsandbytes' QLoRA compute dtype bf16.
 *  The input element type is a template parameter of the fused kernels (float, __nv_bfloat16, __half); the
 *  output is written through lf_dyn (T*OC stores per call: a switch there costs nothing).
 *
 * Shapes: T tokens, C in channels, OC out channels; n = OC*C elements; element e = o*C + c; block e / B. */
#include "kernels/cuda/cuda_common.h" /* defines: LF_CHECK_*, lf_cuda_ctx, lf_warp_sum, lf_cuda_matmul_forward */
#include "kernels/cuda/cuda_quant.h"  /* defines: lf_cuda_quant_dequantize, lf_cuda_matmul_q4_forward, lf_cuda_q4_ws */

#include <string.h>

#include "quant/quant.h" /* defines: lf_quant_state, lf_quant_code_table */

/* ---------------------------------------------------------------------------------------------------------
 * Parameters and device helpers
 * --------------------------------------------------------------------------------------------------------- */

/* A backend state as kernels see it (by value). */
struct q4_params {
    const uint8_t *packed;       /* [(n+1)/2] */
    const float *absmax;         /* [nblocks] f32 when !nested */
    const uint8_t *absmax_q;     /* [nblocks] when nested */
    const float *nested_absmax;  /* [ceil(nblocks/256)] when nested */
    int64_t n;                   /* elements */
    int log2b;                   /* log2(blocksize) */
    int nested;
    float offset;                /* nested: added after the 8-bit decode */
    float code[LF_QUANT_CODES];  /* the type's 16 code values */
    float map[LF_QUANT_DYN_MAP_SIZE]; /* nested: the signed dynamic map */
};

/* The per-element and per-lane logic below is __host__ __device__: the kernels call it per thread, and a host
 * program can run it lane by lane to check the indexing without a GPU. */
#ifdef __CUDA_ARCH__
#define Q4_LDG(ptr) __ldg(ptr)
#define Q4_LDCS(ptr) __ldcs(ptr)
#else
#define Q4_LDG(ptr) (*(ptr))
#define Q4_LDCS(ptr) (*(ptr))
#endif

/* "#pragma unroll" for device code only: the host compiler does not know it (-Wunknown-pragmas) */
#ifdef __CUDA_ARCH__
#define Q4_PRAGMA_UNROLL _Pragma("unroll")
#else
#define Q4_PRAGMA_UNROLL
#endif

/* a * b and a + b, each rounded once (never contracted into an FMA) */
static __host__ __device__ __forceinline__ float q4_mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    volatile float r = a * b;
    return r;
#endif
}
static __host__ __device__ __forceinline__ float q4_add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    volatile float r = a + b;
    return r;
#endif
}

/* Copy the code table (and the nested map) into shared memory; every thread of the block must call it. */
static __device__ __forceinline__ void q4_load_tables(const q4_params &p, float *s_code, float *s_map) {
    for (int i = threadIdx.x; i < LF_QUANT_CODES; i += blockDim.x) s_code[i] = p.code[i];
    if (p.nested)
        for (int i = threadIdx.x; i < LF_QUANT_DYN_MAP_SIZE; i += blockDim.x) s_map[i] = p.map[i];
    __syncthreads();
}

/* Decoded absmax of block b, bit-identical to lf_quant_state_absmax. */
static __host__ __device__ __forceinline__ float q4_absmax(const q4_params &p, const float *s_map, int64_t b) {
    if (!p.nested) return Q4_LDG(p.absmax + b);
    const float v = q4_mul_rn(s_map[Q4_LDG(p.absmax_q + b)], Q4_LDG(p.nested_absmax + b / LF_QUANT_NESTED_BLOCK));
    return q4_add_rn(v, p.offset);
}

/* lf_f32_to_bf16, bit for bit: round to nearest even, NaN kept (quiet, sign kept). */
static __host__ __device__ __forceinline__ uint32_t q4_bf16_bits(float f) {
#ifdef __CUDA_ARCH__
    uint32_t u = __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, 4);
#endif
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return u >> 16;
}

/* One 16-bit input element from its bits, widened (host and device). */
template <typename Ti> static __host__ __device__ __forceinline__ float q4_h2f(uint32_t bits);
template <> __host__ __device__ __forceinline__ float q4_h2f<__nv_bfloat16>(uint32_t bits) {
    __nv_bfloat16_raw r;
    r.x = (unsigned short)bits;
    return __bfloat162float(__nv_bfloat16(r));
}
template <> __host__ __device__ __forceinline__ float q4_h2f<__half>(uint32_t bits) {
    __half_raw r;
    r.x = (unsigned short)bits;
    return __half2float(__half(r));
}

/* x[0..7] = the 8 inputs at p (16-byte aligned), widened to f32: two float4 loads, or one uint4 of 16-bit. */
template <typename Ti>
static __host__ __device__ __forceinline__ void q4_load8(float (&x)[8], const Ti *p) {
    if constexpr (sizeof(Ti) == 4) {
        const float4 a = Q4_LDG(reinterpret_cast<const float4 *>(p)), b = Q4_LDG(reinterpret_cast<const float4 *>(p) + 1);
        x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
    } else {
        const uint4 u = Q4_LDG(reinterpret_cast<const uint4 *>(p));
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
Q4_PRAGMA_UNROLL
        for (int k = 0; k < 4; k++) {
            x[2 * k] = q4_h2f<Ti>(w[k] & 0xffffu);
            x[2 * k + 1] = q4_h2f<Ti>(w[k] >> 16);
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * Dequantize: one thread per group of 16 elements (8 packed bytes). Groups start at multiples of 16 and the
 * blocksize is a multiple of 32, so a group never spans two blocks: one absmax per group.
 * vec_in: packed is 8-byte aligned (one 8-byte load per whole group); vec_out: out is 16-byte aligned.
 * --------------------------------------------------------------------------------------------------------- */

/* Group g of 16 elements into out (f32, or bf16 bits when BF16). */
template <bool BF16>
static __host__ __device__ __forceinline__ void q4_dequant_group(void *out, const q4_params &p, const float *s_code,
                                                                 const float *s_map, int64_t g, int vec_in,
                                                                 int vec_out) {
    const int64_t n = p.n, nbytes = (n + 1) / 2, e0 = g * 16;
    const float a = q4_absmax(p, s_map, e0 >> p.log2b);
    uint32_t word[2] = {0u, 0u}; /* bytes 8g..8g+7, little-endian */
    if (vec_in && 8 * g + 8 <= nbytes) {
        const uint2 v = Q4_LDG(reinterpret_cast<const uint2 *>(p.packed + 8 * g));
        word[0] = v.x, word[1] = v.y;
    } else {
        for (int k = 0; k < 8 && 8 * g + k < nbytes; k++) word[k >> 2] |= (uint32_t)p.packed[8 * g + k] << (8 * (k & 3));
    }
    float v[16];
Q4_PRAGMA_UNROLL
    for (int k = 0; k < 8; k++) { /* byte k: element 2k in the high nibble, 2k+1 in the low one */
        const uint32_t byte = (word[k >> 2] >> (8 * (k & 3))) & 0xffu;
        v[2 * k] = q4_mul_rn(s_code[byte >> 4], a);
        v[2 * k + 1] = q4_mul_rn(s_code[byte & 15u], a);
    }
    const bool whole = vec_out && e0 + 16 <= n;
    if (BF16) {
        uint16_t *o = (uint16_t *)out + e0;
        if (whole) {
            uint32_t h[8];
Q4_PRAGMA_UNROLL
            for (int k = 0; k < 8; k++) h[k] = q4_bf16_bits(v[2 * k]) | (q4_bf16_bits(v[2 * k + 1]) << 16);
            reinterpret_cast<uint4 *>(o)[0] = make_uint4(h[0], h[1], h[2], h[3]);
            reinterpret_cast<uint4 *>(o)[1] = make_uint4(h[4], h[5], h[6], h[7]);
        } else {
Q4_PRAGMA_UNROLL
            for (int k = 0; k < 16; k++)
                if (e0 + k < n) o[k] = (uint16_t)q4_bf16_bits(v[k]);
        }
    } else {
        float *o = (float *)out + e0;
        if (whole) {
Q4_PRAGMA_UNROLL
            for (int k = 0; k < 4; k++)
                reinterpret_cast<float4 *>(o)[k] = make_float4(v[4 * k], v[4 * k + 1], v[4 * k + 2], v[4 * k + 3]);
        } else {
Q4_PRAGMA_UNROLL
            for (int k = 0; k < 16; k++)
                if (e0 + k < n) o[k] = v[k];
        }
    }
}

template <bool BF16>
static __global__ void q4_dequant_kernel(void *out, const q4_params p, int vec_in, int vec_out) {
    __shared__ float s_code[LF_QUANT_CODES];
    __shared__ float s_map[LF_QUANT_DYN_MAP_SIZE];
    q4_load_tables(p, s_code, s_map);
    const int64_t ngroups = (p.n + 15) / 16;
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < ngroups; g += (int64_t)gridDim.x * blockDim.x)
        q4_dequant_group<BF16>(out, p, s_code, s_map, g, vec_in, vec_out);
}

/* ---------------------------------------------------------------------------------------------------------
 * Fused 4-bit matmul for T <= LF_CUDA_Q4_FUSED_MAX_T
 * --------------------------------------------------------------------------------------------------------- */

#define Q4_WARPS 4    /* warps per block; they split the columns of the block's rows */
#define Q4_ROWS 4     /* W rows per block: each input load is reused for Q4_ROWS rows */
#define Q4_STEP 256   /* columns per warp step: 32 lanes x 8 */
#define Q4_UNROLL 2   /* warp steps whose loads are issued together */

/* The column loop of one lane of q4_gemv_kernel: acc[r][t] += its share of row o0+r times input row t.
 * Needs C % 8 == 0, packed 4-byte aligned, inp 16-byte aligned (checked by the launcher). */
template <int T, typename Ti>
static __host__ __device__ __forceinline__ void q4_gemv_lane(float (&acc)[Q4_ROWS][T], const Ti *inp,
                                                             const q4_params &p, const float *s_code,
                                                             const float *s_map, int64_t C, int64_t OC, int64_t o0,
                                                             int warp, int lane) {
    int64_t rowoff[Q4_ROWS]; /* first element of each row; rows past OC repeat the last row (never written) */
Q4_PRAGMA_UNROLL
    for (int r = 0; r < Q4_ROWS; r++) rowoff[r] = (o0 + r < OC ? o0 + r : OC - 1) * C;
    const int64_t nsteps = (C + Q4_STEP - 1) / Q4_STEP;
    for (int64_t s = warp; s < nsteps; s += Q4_UNROLL * Q4_WARPS) {
        uint32_t wd[Q4_UNROLL][Q4_ROWS];
        float a[Q4_UNROLL][Q4_ROWS];
        int64_t c[Q4_UNROLL];
        /* all loads of Q4_UNROLL steps first, so they are in flight together */
Q4_PRAGMA_UNROLL
        for (int u = 0; u < Q4_UNROLL; u++) {
            c[u] = (s + u * Q4_WARPS) * Q4_STEP + lane * 8;
            if (c[u] < C) {
Q4_PRAGMA_UNROLL
                for (int r = 0; r < Q4_ROWS; r++) {
                    const int64_t e = rowoff[r] + c[u];
                    wd[u][r] = Q4_LDCS(reinterpret_cast<const unsigned int *>(p.packed + (e >> 1)));
                    a[u][r] = q4_absmax(p, s_map, e >> p.log2b);
                }
            }
        }
Q4_PRAGMA_UNROLL
        for (int u = 0; u < Q4_UNROLL; u++) {
            if (c[u] >= C) continue; /* only in a row's last steps */
            float x[T][8];
Q4_PRAGMA_UNROLL
            for (int t = 0; t < T; t++) q4_load8<Ti>(x[t], inp + t * C + c[u]);
Q4_PRAGMA_UNROLL
            for (int r = 0; r < Q4_ROWS; r++) {
                /* little-endian word: byte k holds column 2k (high nibble) and 2k+1 (low nibble) */
                const uint32_t w = wd[u][r];
                const float k0 = s_code[(w >> 4) & 15u], k1 = s_code[w & 15u];
                const float k2 = s_code[(w >> 12) & 15u], k3 = s_code[(w >> 8) & 15u];
                const float k4 = s_code[(w >> 20) & 15u], k5 = s_code[(w >> 16) & 15u];
                const float k6 = s_code[(w >> 28) & 15u], k7 = s_code[(w >> 24) & 15u];
Q4_PRAGMA_UNROLL
                for (int t = 0; t < T; t++) {
                    float d = x[t][0] * k0;
                    d = fmaf(x[t][1], k1, d);
                    d = fmaf(x[t][2], k2, d);
                    d = fmaf(x[t][3], k3, d);
                    d = fmaf(x[t][4], k4, d);
                    d = fmaf(x[t][5], k5, d);
                    d = fmaf(x[t][6], k6, d);
                    d = fmaf(x[t][7], k7, d);
                    acc[r][t] = fmaf(d, a[u][r], acc[r][t]);
                }
            }
        }
    }
}

template <int T, typename Ti>
static __global__ void __launch_bounds__(Q4_WARPS * 32)
    q4_gemv_kernel(lf_dyn out, const Ti *inp, const float *bias, const q4_params p, int64_t C, int64_t OC) {
    __shared__ float s_code[LF_QUANT_CODES];
    __shared__ float s_map[LF_QUANT_DYN_MAP_SIZE];
    __shared__ float s_part[Q4_WARPS][Q4_ROWS * T];
    q4_load_tables(p, s_code, s_map);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t o0 = (int64_t)blockIdx.x * Q4_ROWS;
    float acc[Q4_ROWS][T];
Q4_PRAGMA_UNROLL
    for (int r = 0; r < Q4_ROWS; r++)
Q4_PRAGMA_UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = 0.0f;
    q4_gemv_lane<T, Ti>(acc, inp, p, s_code, s_map, C, OC, o0, warp, lane);

    /* fixed-order reduction: lanes by shuffles, then warps 0..Q4_WARPS-1 in order */
Q4_PRAGMA_UNROLL
    for (int r = 0; r < Q4_ROWS; r++)
Q4_PRAGMA_UNROLL
        for (int t = 0; t < T; t++) {
            const float v = lf_warp_sum(acc[r][t]);
            if (lane == 0) s_part[warp][r * T + t] = v;
        }
    __syncthreads();
    for (int i = threadIdx.x; i < Q4_ROWS * T; i += blockDim.x) {
        const int r = i / T, t = i % T;
        const int64_t o = o0 + r;
        if (o >= OC) continue;
        float v = s_part[0][i];
        for (int w = 1; w < Q4_WARPS; w++) v += s_part[w][i];
        out.st((int64_t)t * OC + o, bias ? v + bias[o] : v);
    }
}

/* One lane of q4_gemv_any_kernel: acc[t] += its share of row o times input row t (any shape and alignment). */
template <int T, typename Ti>
static __host__ __device__ __forceinline__ void q4_gemv_any_lane(float (&acc)[T], const Ti *inp, const q4_params &p,
                                                                 const float *s_code, const float *s_map, int64_t C,
                                                                 int64_t o, int lane) {
    const int64_t base = o * C;
    for (int64_t c = lane; c < C; c += 32) {
        const int64_t e = base + c;
        const uint32_t byte = Q4_LDG(p.packed + (e >> 1));
        const uint32_t q = (e & 1) ? (byte & 15u) : (byte >> 4);
        const float w = q4_mul_rn(s_code[q], q4_absmax(p, s_map, e >> p.log2b));
Q4_PRAGMA_UNROLL
        for (int t = 0; t < T; t++) acc[t] = fmaf(lf_ty<Ti>::ld(Q4_LDG(inp + t * C + c)), w, acc[t]);
    }
}

/* Any shape and alignment: one warp per row of W, one element per lane per step. */
template <int T, typename Ti>
static __global__ void __launch_bounds__(Q4_WARPS * 32)
    q4_gemv_any_kernel(lf_dyn out, const Ti *inp, const float *bias, const q4_params p, int64_t C, int64_t OC) {
    __shared__ float s_code[LF_QUANT_CODES];
    __shared__ float s_map[LF_QUANT_DYN_MAP_SIZE];
    q4_load_tables(p, s_code, s_map);
    const int lane = threadIdx.x & 31;
    const int64_t o = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (o >= OC) return; /* whole warps: o is uniform within a warp, and no barrier follows */
    float acc[T];
Q4_PRAGMA_UNROLL
    for (int t = 0; t < T; t++) acc[t] = 0.0f;
    q4_gemv_any_lane<T, Ti>(acc, inp, p, s_code, s_map, C, o, lane);
Q4_PRAGMA_UNROLL
    for (int t = 0; t < T; t++) {
        const float v = lf_warp_sum(acc[t]);
        if (lane == 0) out.st((int64_t)t * OC + o, bias ? v + bias[o] : v);
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * Host side
 * --------------------------------------------------------------------------------------------------------- */

/* Validate a backend state and fill the kernel parameters. Errors name `op` and go to be->err. */
static lf_status q4_params_of(lf_backend *be, const lf_quant_state *w, q4_params *p, const char *op) {
    if (!w || !w->packed) return lf_err_set(&be->err, LF_EINVAL, "%s: empty 4-bit weight (no packed data)", op);
    if (w->type != LF_QUANT_NF4 && w->type != LF_QUANT_FP4)
        return lf_err_set(&be->err, LF_EINVAL, "%s: unknown 4-bit type %d", op, (int)w->type);
    const int64_t B = w->blocksize;
    if (B < LF_QUANT_BLOCK_MIN || B > LF_QUANT_BLOCK_MAX || (B & (B - 1)) != 0)
        return lf_err_set(&be->err, LF_EINVAL, "%s: blocksize %lld is not a power of two in [%d, %d]", op,
                          (long long)B, LF_QUANT_BLOCK_MIN, LF_QUANT_BLOCK_MAX);
    if (w->rows <= 0 || w->cols <= 0 || w->rows > INT64_MAX / w->cols || w->n != w->rows * w->cols ||
        w->nblocks != (w->n + B - 1) / B)
        return lf_err_set(&be->err, LF_EINVAL, "%s: inconsistent 4-bit weight: shape [%lld, %lld], n=%lld, nblocks=%lld",
                          op, (long long)w->rows, (long long)w->cols, (long long)w->n, (long long)w->nblocks);
    if (w->nested ? (!w->absmax_q || !w->nested_absmax) : !w->absmax)
        return lf_err_set(&be->err, LF_EINVAL, "%s: 4-bit weight [%lld, %lld] lacks its %s", op, (long long)w->rows,
                          (long long)w->cols, w->nested ? "absmax_q/nested_absmax" : "absmax");
#ifdef LF_CUDA_DEBUG_SYNC
    /* debug builds: a host state passed by mistake faults the context; say so instead */
    cudaPointerAttributes attr;
    if (cudaPointerGetAttributes(&attr, w->packed) != cudaSuccess || attr.type != cudaMemoryTypeDevice) {
        (void)cudaGetLastError();
        return lf_err_set(&be->err, LF_EINVAL, "%s: 4-bit weight's packed data is not device memory (upload it with "
                          "lf_quant_state_upload)", op);
    }
#endif
    memset(p, 0, sizeof *p);
    p->packed = w->packed;
    p->absmax = w->absmax;
    p->absmax_q = w->absmax_q;
    p->nested_absmax = w->nested_absmax;
    p->n = w->n;
    p->log2b = 0;
    while (((int64_t)1 << p->log2b) < B) p->log2b++;
    p->nested = w->nested ? 1 : 0;
    p->offset = w->nested ? w->offset : 0.0f;
    memcpy(p->code, lf_quant_code_table(w->type), sizeof p->code);
    if (w->nested) memcpy(p->map, w->nested_map, sizeof p->map);
    return LF_OK;
}

/* Queue the dequantize kernel (parameters already validated). */
static lf_status q4_dequant_launch(lf_backend *be, void *out, int bf16, const q4_params &p) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    const int threads = 256;
    const int64_t groups = (p.n + 15) / 16;
    const unsigned grid = lf_cuda_grid_1d(cx, groups, threads);
    const int vec_in = ((uintptr_t)p.packed % 8) == 0, vec_out = ((uintptr_t)out % 16) == 0;
    if (bf16)
        q4_dequant_kernel<true><<<grid, threads, 0, cx->stream>>>(out, p, vec_in, vec_out);
    else
        q4_dequant_kernel<false><<<grid, threads, 0, cx->stream>>>(out, p, vec_in, vec_out);
    LF_CUDA_LAUNCH_CHECK(&be->err);
    return LF_OK;
}

extern "C" lf_status lf_cuda_quant_dequantize(lf_backend *be, void *out, lf_dtype dt, const lf_quant_state *w) {
    q4_params p;
    if (!out) return lf_err_set(&be->err, LF_EINVAL, "quant dequantize: NULL output");
    if (dt != LF_DTYPE_F32 && dt != LF_DTYPE_BF16)
        return lf_err_set(&be->err, LF_EUNSUPPORTED, "quant dequantize: output dtype %s (F32 or BF16)",
                          lf_dtype_name(dt));
    lf_status st = q4_params_of(be, w, &p, "quant dequantize");
    if (st != LF_OK) return st;
    st = lf_cuda_enter(be);
    if (st != LF_OK) return st;
    return q4_dequant_launch(be, out, dt == LF_DTYPE_BF16, p);
}

/* ---- the bf16 workspace of the T > LF_CUDA_Q4_FUSED_MAX_T path ---- */

extern "C" void lf_cuda_q4_ws_release(lf_cuda_q4_ws *ws) {
    if (!ws) return;
    if (ws->w16) (void)cudaFree(ws->w16);
    ws->w16 = NULL;
    ws->w16_bytes = 0;
}

/* Make the workspace hold `bytes`; grows (never shrinks), rounded up to 1 MiB. */
static lf_status q4_ws_reserve(lf_backend *be, size_t bytes) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    lf_cuda_q4_ws *ws = lf_cuda_q4_ws_of(be);
    if (bytes <= ws->w16_bytes) return LF_OK;
    const size_t want = (bytes + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1);
    LF_CHECK_CUDA(&be->err, cudaStreamSynchronize(cx->stream)); /* queued matmuls may still read the old one */
    lf_cuda_q4_ws_release(ws);
    cudaError_t e = cudaMalloc(&ws->w16, want);
    if (e != cudaSuccess) {
        ws->w16 = NULL;
        (void)cudaGetLastError(); /* an allocation failure is not sticky */
        return lf_err_set(&be->err, e == cudaErrorMemoryAllocation ? LF_ENOMEM : LF_ECUDA,
                          "matmul_q4: bf16 workspace of %zu bytes on cuda:%d: %s", want, cx->ordinal,
                          cudaGetErrorString(e));
    }
    ws->w16_bytes = want;
    return LF_OK;
}

/* ---- the op ---- */

template <int T, typename Ti>
static void q4_gemv_launch(cudaStream_t stream, int vec, lf_dyn out, const Ti *inp, const float *bias,
                           const q4_params &p, int64_t C, int64_t OC) {
    if (vec) {
        const unsigned grid = (unsigned)((OC + Q4_ROWS - 1) / Q4_ROWS);
        q4_gemv_kernel<T, Ti><<<grid, Q4_WARPS * 32, 0, stream>>>(out, inp, bias, p, C, OC);
    } else {
        const unsigned grid = (unsigned)((OC + Q4_WARPS - 1) / Q4_WARPS);
        q4_gemv_any_kernel<T, Ti><<<grid, Q4_WARPS * 32, 0, stream>>>(out, inp, bias, p, C, OC);
    }
}

extern "C" lf_status lf_cuda_matmul_q4_forward(lf_backend *be, lf_act out, lf_act inp, const lf_quant_state *w,
                                               const float *bias, int64_t T, int64_t C, int64_t OC) {
    lf_cuda_ctx *cx = lf_cuda_ctx_of(be);
    q4_params p;
    const lf_act acts[2] = {out, inp};
    lf_status st = lf_cuda_acts_ok(be, LF_OP_MATMUL_Q4, acts, 2);
    if (st != LF_OK) return st;
    if (!out.p || !inp.p) return lf_err_set(&be->err, LF_EINVAL, "matmul_q4: NULL out or inp");
    st = q4_params_of(be, w, &p, "matmul_q4");
    if (st != LF_OK) return st;
    if (T < 0 || C != w->cols || OC != w->rows)
        return lf_err_set(&be->err, LF_EINVAL, "matmul_q4: weight is [%lld, %lld], asked for OC=%lld C=%lld (T=%lld)",
                          (long long)w->rows, (long long)w->cols, (long long)OC, (long long)C, (long long)T);
    if (lf_cuda_overlap(out, T * OC, inp, T * C))
        return lf_err_set(&be->err, LF_EINVAL, "matmul_q4: out must not alias inp");
    if (T == 0) return LF_OK;
    if (OC > (int64_t)Q4_ROWS * 0x7fffffff)
        return lf_err_set(&be->err, LF_EUNSUPPORTED, "matmul_q4: OC=%lld too large for one grid", (long long)OC);
    st = lf_cuda_enter(be);
    if (st != LF_OK) return st;

    if (T <= LF_CUDA_Q4_FUSED_MAX_T) {
        const int vec = C % 8 == 0 && ((uintptr_t)w->packed % 4) == 0 && ((uintptr_t)inp.p % 16) == 0;
        const lf_dyn o = lf_dyn_of(out);
        lf_cuda_visit(inp.dt, [&](auto tag) {
            typedef typename decltype(tag)::type Ti;
            const Ti *x = (const Ti *)inp.p;
            switch (T) {
            case 1: q4_gemv_launch<1, Ti>(cx->stream, vec, o, x, bias, p, C, OC); break;
            case 2: q4_gemv_launch<2, Ti>(cx->stream, vec, o, x, bias, p, C, OC); break;
            case 3: q4_gemv_launch<3, Ti>(cx->stream, vec, o, x, bias, p, C, OC); break;
            case 4: q4_gemv_launch<4, Ti>(cx->stream, vec, o, x, bias, p, C, OC); break;
            case 5: q4_gemv_launch<5, Ti>(cx->stream, vec, o, x, bias, p, C, OC); break;
            case 6: q4_gemv_launch<6, Ti>(cx->stream, vec, o, x, bias, p, C, OC); break;
            case 7: q4_gemv_launch<7, Ti>(cx->stream, vec, o, x, bias, p, C, OC); break;
            default: q4_gemv_launch<8, Ti>(cx->stream, vec, o, x, bias, p, C, OC); break;
            }
        });
        LF_CUDA_LAUNCH_CHECK(&be->err);
        return LF_OK;
    }

    /* larger T: dequantize to bf16 once per call, then the bf16 tensor-core GEMM */
    st = q4_ws_reserve(be, (size_t)OC * (size_t)C * 2);
    if (st != LF_OK) return st;
    lf_cuda_q4_ws *ws = lf_cuda_q4_ws_of(be);
    st = q4_dequant_launch(be, ws->w16, 1, p);
    if (st != LF_OK) return st;
    int64_t shape[2] = {OC, C};
    lf_tensor wt = lf_tensor_view(ws->w16, LF_DTYPE_BF16, 2, shape);
    wt.device = LF_DEVICE_CUDA;
    st = lf_cuda_matmul_forward(be, out, inp, &wt, bias, T, C, OC);
    if (st != LF_OK) return lf_err_wrap(&be->err, st, "matmul_q4 (dequantized to bf16)");
    return LF_OK;
}
