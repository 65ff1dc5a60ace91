/* matmul.c - out[T,OC] = inp[T,C] @ weight[OC,C]^T (+ bias[OC]): torch Linear with weights F32, BF16 or F16
 * ([OC,C] row-major), f32 activations, f32 accumulation.
 *
 * Two drivers, chosen by T:
 *  - direct (T < MM_DIRECT_T: decode and short chunks). Threads split OC in groups of MM_NR = 3 weight rows;
 *    each group streams its rows once per MM_MR = 4 tokens over the full C through the dot-product microkernel
 *    mm_tile: 4 tokens x 3 rows of 8-wide FMA accumulators along C (12 ymm accumulators + 3 weight vectors + 1
 *    input vector = the 16 ymm registers), reduced at the end with a hadd tree. BF16/F16 are converted in
 *    registers (BF16: zero-extend + shift left 16; F16: vcvtph2ps) and weight rows are prefetched
 *    MM_PF_BYTES ahead. For T = 1 this is a GEMV bound by memory bandwidth.
 *  - tiled (T >= MM_DIRECT_T: prefill). The output is cut into tiles of tokens x MM_OT rows handed to
 *    threads (consecutive tiles share weight rows). Inside a tile, C is blocked; each block of weight rows is
 *    converted once to an f32 panel in the thread's scratch (L1-resident) and reused by every token of the
 *    tile, whose input slice stays in L2; later C blocks add into out.
 *    AVX2: the panel is 16 rows x MMX_KC, transposed to [k][16] (8x8 register transposes), and the
 *    microkernel mmx_tile is an outer product: 6 tokens x 16 rows = 12 ymm accumulators, per k two panel
 *    loads + 6 broadcasts of x for 12 FMAs, all from L1 - it runs near the FMA peak.
 *    Portable: panels of MM_NR rows x MM_KC feed the same dot-product microkernel as the direct driver.
 * The AVX2/FMA/F16C code is chosen at run time (lf_cpu_simd()).
 *
 * Precision: each output is a sum of C f32 products (bf16/f16 -> f32 conversion is exact) plus the bias,
 * accumulated in f32 in a blocked order, so it differs from the double reference by at most about
 * (C+1) * 2^-24 * (sum_k |x_k w_k| + |bias|) (the standard bound for recursive summation; tests use it as the
 * tolerance). Typical errors are ~sqrt(C) times smaller. */
#include <string.h>

#include "kernels/cpu/cpu_ops.h"

#define MM_MR 4          /* dot-product microkernel: tokens */
#define MM_NR 3          /* dot-product microkernel: weight rows (4x3 ymm accumulators + 3 w + 1 x = 16) */
#define MM_KC 1024       /* portable tiled driver: C block of its [MM_NR, MM_KC] panel */
#define MM_DIRECT_T 48   /* below this, converting weights in registers per MM_MR tokens beats packing (measured) */
#define MM_TT 128        /* tokens per tile: the 128 x MMX_KC input slice (128 KiB) stays in L2 */
#define MM_OT 48         /* weight rows per tile (a multiple of MM_NR and of MMX_NR) */
#define MM_PF_BYTES 1024 /* software prefetch distance on streamed weight rows (direct driver) */
#define MMX_MR 6         /* AVX2 outer-product microkernel: tokens */
#define MMX_NR 16        /* AVX2 outer-product microkernel: weight rows (2 ymm) */
#define MMX_KC 256       /* AVX2 tiled driver: C block of its [MMX_KC, MMX_NR] panel (16 KiB) */

_Static_assert(MM_NR *MM_KC <= LF_CPU_SCRATCH_FLOATS, "portable panel exceeds the per-thread scratch");
_Static_assert(MMX_NR *MMX_KC <= LF_CPU_SCRATCH_FLOATS, "AVX2 panel exceeds the per-thread scratch");
_Static_assert(MM_OT % MM_NR == 0 && MM_OT % MMX_NR == 0, "MM_OT must be a multiple of both row groups");

/* ---- weight element access ---- */

static inline float w_get(const void *w, lf_dtype dt, int64_t i) {
    switch (dt) {
    case LF_DTYPE_BF16: return lf_bf16_to_f32(((const uint16_t *)w)[i]);
    case LF_DTYPE_F16: return lf_f16_to_f32(((const uint16_t *)w)[i]);
    default: return ((const float *)w)[i];
    }
}

static inline const void *w_at(const void *w, lf_dtype dt, int64_t i) {
    return dt == LF_DTYPE_F32 ? (const void *)((const float *)w + i) : (const void *)((const uint16_t *)w + i);
}

/* ==== reference ==== */

lf_status lf_cpu_matmul_forward_ref(float *out, const float *inp, const lf_tensor *weight, const float *bias, int64_t T,
                                    int64_t C, int64_t OC, lf_err *err) {
    lf_dtype dt = weight->dtype;
    if (dt != LF_DTYPE_F32 && dt != LF_DTYPE_BF16 && dt != LF_DTYPE_F16)
        return lf_err_set(err, LF_EUNSUPPORTED, "matmul: weight dtype %s is not supported (F32, BF16, F16)",
                          lf_dtype_name(dt));
    for (int64_t t = 0; t < T; t++) {
        for (int64_t o = 0; o < OC; o++) {
            double s = bias ? (double)bias[o] : 0.0;
            for (int64_t c = 0; c < C; c++) s += (double)inp[t * C + c] * (double)w_get(weight->data, dt, o * C + c);
            out[t * OC + o] = (float)s;
        }
    }
    return LF_OK;
}

/* ==== microkernels ====
 * mm_kernel(mr, nr, x, ldx, w, ldw, K, out, ldo, bias, accumulate), mr <= MM_MR, nr <= MM_NR:
 *   out[i*ldo + j] = (accumulate ? out[i*ldo + j] : (bias ? bias[j] : 0)) + sum_{k<K} x[i*ldx + k] * w[j*ldw + k]
 * x: [mr, ldx] f32; w: [nr, ldw] of the kernel's dtype; out: [mr, ldo]. */
typedef void (*mm_kernel_fn)(int mr, int nr, const float *x, int64_t ldx, const void *w, int64_t ldw, int64_t K,
                             float *out, int64_t ldo, const float *bias, int accumulate);

static inline void mm_store(int mr, int nr, float r[MM_MR][MM_NR], float *out, int64_t ldo, const float *bias,
                            int accumulate) {
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) {
            float *o = out + i * ldo + j;
            *o = (accumulate ? *o : (bias ? bias[j] : 0.0f)) + r[i][j];
        }
}

/* ---- portable ---- */

static inline void mm_tile_port(const int MR, const int NR, const lf_dtype dt, const int PF, const float *x,
                                int64_t ldx, const void *w, int64_t ldw, int64_t K, float *out, int64_t ldo,
                                const float *bias, int accumulate) {
    (void)PF;
    float acc[MM_MR][MM_NR] = {{0}};
    for (int64_t k = 0; k < K; k++) {
        float b[MM_NR];
        for (int j = 0; j < NR; j++) b[j] = w_get(w, dt, j * ldw + k);
        for (int i = 0; i < MR; i++) {
            float a = x[i * ldx + k];
            for (int j = 0; j < NR; j++) acc[i][j] += a * b[j];
        }
    }
    mm_store(MR, NR, acc, out, ldo, bias, accumulate);
}

#define MM_DISPATCH(tile, dt, pf)                                                                                      \
    switch (mr * 4 + nr) {                                                                                             \
    case 4 * 4 + 3: tile(4, 3, dt, pf, x, ldx, w, ldw, K, out, ldo, bias, accumulate); break;                          \
    case 4 * 4 + 2: tile(4, 2, dt, pf, x, ldx, w, ldw, K, out, ldo, bias, accumulate); break;                          \
    case 4 * 4 + 1: tile(4, 1, dt, pf, x, ldx, w, ldw, K, out, ldo, bias, accumulate); break;                          \
    case 3 * 4 + 3: tile(3, 3, dt, pf, x, ldx, w, ldw, K, out, ldo, bias, accumulate); break;                          \
    case 3 * 4 + 2: tile(3, 2, dt, pf, x, ldx, w, ldw, K, out, ldo, bias, accumulate); break;                          \
    case 3 * 4 + 1: tile(3, 1, dt, pf, x, ldx, w, ldw, K, out, ldo, bias, accumulate); break;                          \
    case 2 * 4 + 3: tile(2, 3, dt, pf, x, ldx, w, ldw, K, out, ldo, bias, accumulate); break;                          \
    case 2 * 4 + 2: tile(2, 2, dt, pf, x, ldx, w, ldw, K, out, ldo, bias, accumulate); break;                          \
    case 2 * 4 + 1: tile(2, 1, dt, pf, x, ldx, w, ldw, K, out, ldo, bias, accumulate); break;                          \
    case 1 * 4 + 3: tile(1, 3, dt, pf, x, ldx, w, ldw, K, out, ldo, bias, accumulate); break;                          \
    case 1 * 4 + 2: tile(1, 2, dt, pf, x, ldx, w, ldw, K, out, ldo, bias, accumulate); break;                          \
    case 1 * 4 + 1: tile(1, 1, dt, pf, x, ldx, w, ldw, K, out, ldo, bias, accumulate); break;                          \
    default: LF_ASSERT(!"matmul microkernel: bad mr/nr");                                                              \
    }

#define MM_KERNEL(attr, name, tile, dt, pf)                                                                            \
    static attr void name(int mr, int nr, const float *x, int64_t ldx, const void *w, int64_t ldw, int64_t K,          \
                          float *out, int64_t ldo, const float *bias, int accumulate) {                                \
        MM_DISPATCH(tile, dt, pf)                                                                                      \
    }

MM_KERNEL(, mm_port_f32, mm_tile_port, LF_DTYPE_F32, 0)
MM_KERNEL(, mm_port_bf16, mm_tile_port, LF_DTYPE_BF16, 0)
MM_KERNEL(, mm_port_f16, mm_tile_port, LF_DTYPE_F16, 0)

/* Convert nr rows x kc of w (row stride ldw elements) to an f32 panel [nr, MM_KC]. */
static void mm_pack_port(float *panel, const void *w, lf_dtype dt, int64_t ldw, int nr, int64_t kc) {
    for (int j = 0; j < nr; j++)
        for (int64_t k = 0; k < kc; k++) panel[j * MM_KC + k] = w_get(w, dt, j * ldw + k);
}

/* ---- AVX2 / FMA / F16C ---- */
#ifdef LF_CPU_X86
#define MM_AVX2_INLINE static inline __attribute__((always_inline)) LF_CPU_AVX2

/* 8 consecutive weights from element i, as f32. */
MM_AVX2_INLINE __m256 mm_load_w8(const void *w, const lf_dtype dt, int64_t i) {
    if (dt == LF_DTYPE_F32) return _mm256_loadu_ps((const float *)w + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (dt == LF_DTYPE_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

MM_AVX2_INLINE float mm_get_w1(const void *w, const lf_dtype dt, int64_t i) {
    if (dt == LF_DTYPE_F16) return _cvtsh_ss(((const uint16_t *)w)[i]);
    return w_get(w, dt, i);
}

/* The 4 lane-sums of a, b, c, d in one vector. */
MM_AVX2_INLINE __m128 mm_hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    __m256 abcd = _mm256_hadd_ps(ab, cd); /* [a0123 b0123 c0123 d0123 | a4567 b4567 c4567 d4567] */
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

/* PF = 1: prefetch each weight row MM_PF_BYTES ahead (the direct driver streams weights from DRAM once; the
 * hardware prefetcher alone leaves ~15% of the bandwidth unused for BF16 GEMV on the machines we measured). */
MM_AVX2_INLINE void mm_tile_avx2(const int MR, const int NR, const lf_dtype dt, const int PF, const float *x,
                                 int64_t ldx, const void *w, int64_t ldw, int64_t K, float *out, int64_t ldo,
                                 const float *bias, int accumulate) {
    __m256 acc[MM_MR][MM_NR];
#pragma GCC unroll 4
    for (int i = 0; i < MM_MR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < MM_NR; j++) acc[i][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 b[MM_NR];
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++) {
            if (PF) /* an address past the row's end is fine for a prefetch; uintptr_t keeps the C legal */
                _mm_prefetch((const char *)((uintptr_t)w_at(w, dt, j * ldw + k) + MM_PF_BYTES), _MM_HINT_T0);
            b[j] = mm_load_w8(w, dt, j * ldw + k);
        }
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) {
            __m256 a = _mm256_loadu_ps(x + i * ldx + k);
#pragma GCC unroll 4
            for (int j = 0; j < NR; j++) acc[i][j] = _mm256_fmadd_ps(a, b[j], acc[i][j]);
        }
    }
    float r[MM_MR][MM_NR];
#pragma GCC unroll 4
    for (int j = 0; j < NR; j++) {
        float s[4];
        _mm_storeu_ps(s, mm_hsum4(acc[0][j], acc[1][j], acc[2][j], acc[3][j])); /* unused rows are zero */
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) r[i][j] = s[i];
    }
    for (; k < K; k++) { /* C % 8 tail */
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++) {
            float b = mm_get_w1(w, dt, j * ldw + k);
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) r[i][j] += x[i * ldx + k] * b;
        }
    }
    mm_store(MR, NR, r, out, ldo, bias, accumulate);
}

MM_KERNEL(LF_CPU_AVX2, mm_avx2_f32_pf, mm_tile_avx2, LF_DTYPE_F32, 1) /* direct: weights streamed from memory */
MM_KERNEL(LF_CPU_AVX2, mm_avx2_bf16_pf, mm_tile_avx2, LF_DTYPE_BF16, 1)
MM_KERNEL(LF_CPU_AVX2, mm_avx2_f16_pf, mm_tile_avx2, LF_DTYPE_F16, 1)

/* In-register transpose of 8 rows of 8: afterwards v[j] holds the old column j. */
MM_AVX2_INLINE void mmx_transpose8(__m256 v[8]) {
    __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
    __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
    __m256 t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]);
    __m256 t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    v[0] = _mm256_permute2f128_ps(u0, u4, 0x20), v[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    v[2] = _mm256_permute2f128_ps(u2, u6, 0x20), v[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    v[4] = _mm256_permute2f128_ps(u0, u4, 0x31), v[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    v[6] = _mm256_permute2f128_ps(u2, u6, 0x31), v[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* panel[k * MMX_NR + r] = w[r * ldw + k] as f32 for r < nr, k < kc; rows nr..MMX_NR-1 are zero. */
static LF_CPU_AVX2 void mmx_pack(float *panel, const void *w, lf_dtype dt, int64_t ldw, int nr, int64_t kc) {
    int64_t k = 0;
    if (nr == MMX_NR) {
        for (; k + 8 <= kc; k += 8)
            for (int r0 = 0; r0 < MMX_NR; r0 += 8) {
                __m256 v[8];
                for (int i = 0; i < 8; i++) v[i] = mm_load_w8(w, dt, (r0 + i) * ldw + k);
                mmx_transpose8(v);
                for (int j = 0; j < 8; j++) _mm256_store_ps(panel + (k + j) * MMX_NR + r0, v[j]);
            }
    }
    for (; k < kc; k++)
        for (int r = 0; r < MMX_NR; r++) panel[k * MMX_NR + r] = r < nr ? mm_get_w1(w, dt, r * ldw + k) : 0.0f;
}

/* Prefetch (to L2) nr rows x kc elements of w from element i, row stride ldw. */
static LF_CPU_AVX2 void mmx_prefetch(const void *w, lf_dtype dt, int64_t i, int64_t ldw, int nr, int64_t kc) {
    const int64_t bytes = kc * (dt == LF_DTYPE_F32 ? 4 : 2);
    for (int r = 0; r < nr; r++) {
        const char *row = (const char *)w_at(w, dt, i + r * ldw);
        for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(row + b, _MM_HINT_T1);
    }
}

/* out[i*ldo + r] = (accumulate ? out : bias[r] or 0) + sum_{k<kc} x[i*ldx + k] * panel[k*MMX_NR + r],
 * i < MR, r < nr. */
MM_AVX2_INLINE void mmx_tile(const int MR, const float *x, int64_t ldx, const float *panel, int64_t kc, float *out,
                             int64_t ldo, int nr, const float *bias, int accumulate) {
    __m256 c[MMX_MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MMX_MR; i++) c[i][0] = c[i][1] = _mm256_setzero_ps();
#pragma GCC unroll 2
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(panel + k * MMX_NR), b1 = _mm256_load_ps(panel + k * MMX_NR + 8);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            __m256 a = _mm256_broadcast_ss(x + i * ldx + k);
            c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);
            c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);
        }
    }
    if (nr == MMX_NR) {
        __m256 z0 = _mm256_setzero_ps(), z1 = z0;
        if (!accumulate && bias) z0 = _mm256_loadu_ps(bias), z1 = _mm256_loadu_ps(bias + 8);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            float *o = out + i * ldo;
            __m256 o0 = accumulate ? _mm256_loadu_ps(o) : z0, o1 = accumulate ? _mm256_loadu_ps(o + 8) : z1;
            _mm256_storeu_ps(o, _mm256_add_ps(o0, c[i][0]));
            _mm256_storeu_ps(o + 8, _mm256_add_ps(o1, c[i][1]));
        }
        return;
    }
    const __m256i m0 = lf_cpu_mask8(nr < 8 ? nr : 8), m1 = lf_cpu_mask8(nr > 8 ? nr - 8 : 0);
    __m256 z0 = _mm256_setzero_ps(), z1 = z0;
    if (!accumulate && bias) z0 = _mm256_maskload_ps(bias, m0), z1 = _mm256_maskload_ps(bias + 8, m1);
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        float *o = out + i * ldo;
        __m256 o0 = accumulate ? _mm256_maskload_ps(o, m0) : z0, o1 = accumulate ? _mm256_maskload_ps(o + 8, m1) : z1;
        _mm256_maskstore_ps(o, m0, _mm256_add_ps(o0, c[i][0]));
        _mm256_maskstore_ps(o + 8, m1, _mm256_add_ps(o1, c[i][1]));
    }
}

static LF_CPU_AVX2 void mmx_kernel(int mr, const float *x, int64_t ldx, const float *panel, int64_t kc, float *out,
                                   int64_t ldo, int nr, const float *bias, int accumulate) {
    switch (mr) {
    case 6: mmx_tile(6, x, ldx, panel, kc, out, ldo, nr, bias, accumulate); break;
    case 5: mmx_tile(5, x, ldx, panel, kc, out, ldo, nr, bias, accumulate); break;
    case 4: mmx_tile(4, x, ldx, panel, kc, out, ldo, nr, bias, accumulate); break;
    case 3: mmx_tile(3, x, ldx, panel, kc, out, ldo, nr, bias, accumulate); break;
    case 2: mmx_tile(2, x, ldx, panel, kc, out, ldo, nr, bias, accumulate); break;
    case 1: mmx_tile(1, x, ldx, panel, kc, out, ldo, nr, bias, accumulate); break;
    default: LF_ASSERT(!"matmul mmx_kernel: bad mr");
    }
}
#endif /* LF_CPU_X86 */

/* ==== drivers ==== */

typedef struct mm_job {
    lf_backend *be;
    float *out;       /* [T, OC] */
    const float *inp; /* [T, C] */
    const void *w;    /* [OC, C] of wdt */
    lf_dtype wdt;
    const float *bias; /* [OC] or NULL */
    int64_t T, C, OC;
    int64_t n_tt;            /* token tiles (tiled driver) */
    mm_kernel_fn kernel;     /* of wdt: direct driver */
    mm_kernel_fn kernel_f32; /* on packed panels: portable tiled driver */
} mm_job;

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Groups [g0, g1) of MM_NR weight rows, all tokens, full C. */
static void mm_direct_chunk(void *vjob, int64_t g0, int64_t g1, int tid) {
    (void)tid;
    const mm_job *j = (const mm_job *)vjob;
    const int64_t T = j->T, C = j->C, OC = j->OC;
    for (int64_t g = g0; g < g1; g++) {
        int64_t o = g * MM_NR;
        int nr = (int)min64(MM_NR, OC - o);
        const void *wrows = w_at(j->w, j->wdt, o * C);
        for (int64_t t = 0; t < T; t += MM_MR) {
            int mr = (int)min64(MM_MR, T - t);
            j->kernel(mr, nr, j->inp + t * C, C, wrows, C, C, j->out + t * OC + o, OC, j->bias ? j->bias + o : NULL, 0);
        }
    }
}

/* Tile index -> tokens [*t0, *t1) x rows [*o0, *o1); tile = ot * n_tt + tt, so consecutive tiles share rows. */
static void mm_tile_range(const mm_job *j, int64_t tile, int64_t *t0, int64_t *t1, int64_t *o0, int64_t *o1) {
    *o0 = (tile / j->n_tt) * MM_OT, *o1 = min64(j->OC, *o0 + MM_OT);
    *t0 = (tile % j->n_tt) * MM_TT, *t1 = min64(j->T, *t0 + MM_TT);
}

/* Portable tiled driver: [MM_NR, MM_KC] panels (F32 weights are read in place) and the dot-product kernel. */
static void mm_tiled_chunk_port(void *vjob, int64_t b, int64_t e, int tid) {
    const mm_job *j = (const mm_job *)vjob;
    const int64_t C = j->C, OC = j->OC;
    float *panel = lf_cpu_scratch(j->be, tid);
    for (int64_t tile = b; tile < e; tile++) {
        int64_t t0, t1, o0, o1;
        mm_tile_range(j, tile, &t0, &t1, &o0, &o1);
        for (int64_t k0 = 0; k0 < C; k0 += MM_KC) {
            int64_t kc = min64(MM_KC, C - k0);
            for (int64_t o = o0; o < o1; o += MM_NR) {
                int nr = (int)min64(MM_NR, o1 - o);
                const void *wp = w_at(j->w, j->wdt, o * C + k0);
                int64_t ldw = C;
                if (j->wdt != LF_DTYPE_F32) {
                    mm_pack_port(panel, wp, j->wdt, C, nr, kc);
                    wp = panel;
                    ldw = MM_KC;
                }
                const float *bias = (k0 == 0 && j->bias) ? j->bias + o : NULL;
                for (int64_t t = t0; t < t1; t += MM_MR) {
                    int mr = (int)min64(MM_MR, t1 - t);
                    j->kernel_f32(mr, nr, j->inp + t * C + k0, C, wp, ldw, kc, j->out + t * OC + o, OC, bias, k0 > 0);
                }
            }
        }
    }
}

#ifdef LF_CPU_X86
/* AVX2 tiled driver: transposed [MMX_KC, MMX_NR] panels and the 6x16 outer-product kernel. */
static LF_CPU_AVX2 void mm_tiled_chunk_avx2(void *vjob, int64_t b, int64_t e, int tid) {
    const mm_job *j = (const mm_job *)vjob;
    const int64_t C = j->C, OC = j->OC;
    float *panel = lf_cpu_scratch(j->be, tid);
    for (int64_t tile = b; tile < e; tile++) {
        int64_t t0, t1, o0, o1;
        mm_tile_range(j, tile, &t0, &t1, &o0, &o1);
        for (int64_t k0 = 0; k0 < C; k0 += MMX_KC) {
            int64_t kc = min64(MMX_KC, C - k0);
            for (int64_t o = o0; o < o1; o += MMX_NR) {
                int nr = (int)min64(MMX_NR, o1 - o);
                mmx_pack(panel, w_at(j->w, j->wdt, o * C + k0), j->wdt, C, nr, kc);
                /* pull the next panel's weights toward L2 while this one is multiplied: they come from DRAM */
                int64_t on = o + MMX_NR, kn = k0;
                if (on >= o1) on = o0, kn = k0 + MMX_KC;
                if (kn < C)
                    mmx_prefetch(j->w, j->wdt, on * C + kn, C, (int)min64(MMX_NR, o1 - on), min64(MMX_KC, C - kn));
                const float *bias = (k0 == 0 && j->bias) ? j->bias + o : NULL;
                for (int64_t t = t0; t < t1; t += MMX_MR) {
                    int mr = (int)min64(MMX_MR, t1 - t);
                    mmx_kernel(mr, j->inp + t * C + k0, C, panel, kc, j->out + t * OC + o, OC, nr, bias, k0 > 0);
                }
            }
        }
    }
}
#endif

static int ranges_overlap(const void *a, size_t na, const void *b, size_t nb) {
    uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b;
    return na && nb && pa < pb + nb && pb < pa + na;
}

lf_status lf_cpu_matmul_check(const lf_tensor *weight, int64_t T, int64_t C, int64_t OC, lf_err *err) {
    lf_dtype dt = weight ? weight->dtype : LF_DTYPE_INVALID;
    if (T < 0 || C < 0 || OC < 0)
        return lf_err_set(err, LF_EINVAL, "matmul: negative size T=%lld C=%lld OC=%lld", (long long)T, (long long)C,
                          (long long)OC);
    if (!weight || weight->ndim != 2 || weight->shape[0] != OC || weight->shape[1] != C)
        return lf_err_set(err, LF_EINVAL, "matmul: weight must be [OC=%lld, C=%lld], got ndim %d [%lld, %lld]",
                          (long long)OC, (long long)C, weight ? weight->ndim : -1,
                          weight ? (long long)weight->shape[0] : -1LL, weight ? (long long)weight->shape[1] : -1LL);
    if (dt != LF_DTYPE_F32 && dt != LF_DTYPE_BF16 && dt != LF_DTYPE_F16)
        return lf_err_set(err, LF_EUNSUPPORTED, "matmul: weight dtype %s is not supported (F32, BF16, F16)",
                          lf_dtype_name(dt));
    if (weight->device != LF_DEVICE_CPU) return lf_err_set(err, LF_EINVAL, "matmul: weight is not in CPU memory");
    return LF_OK;
}

lf_status lf_cpu_matmul_forward(lf_backend *be, float *out, const float *inp, const lf_tensor *weight,
                                const float *bias, int64_t T, int64_t C, int64_t OC) {
    lf_status cs = lf_cpu_matmul_check(weight, T, C, OC, &be->err);
    if (cs != LF_OK) return cs;
    const lf_dtype dt = weight->dtype;
    if (ranges_overlap(out, (size_t)(T * OC) * sizeof(float), inp, (size_t)(T * C) * sizeof(float)))
        return lf_err_set(&be->err, LF_EINVAL, "matmul: out must not alias inp");
    if (T == 0 || OC == 0) return LF_OK;
    if (C == 0) { /* empty sum */
        for (int64_t t = 0; t < T; t++)
            for (int64_t o = 0; o < OC; o++) out[t * OC + o] = bias ? bias[o] : 0.0f;
        return LF_OK;
    }

    mm_job job = {
        .be = be, .out = out, .inp = inp, .w = weight->data, .wdt = dt, .bias = bias, .T = T, .C = C, .OC = OC};
    const int simd = lf_cpu_simd();
    if (T < MM_DIRECT_T) {
#ifdef LF_CPU_X86
        if (simd)
            job.kernel = dt == LF_DTYPE_F32 ? mm_avx2_f32_pf : dt == LF_DTYPE_BF16 ? mm_avx2_bf16_pf : mm_avx2_f16_pf;
        else
#endif
            job.kernel = dt == LF_DTYPE_F32 ? mm_port_f32 : dt == LF_DTYPE_BF16 ? mm_port_bf16 : mm_port_f16;
        int64_t groups = (OC + MM_NR - 1) / MM_NR;
        lf_cpu_parallel_for(be, groups, lf_cpu_grain(MM_NR * C * T, 1 << 16), mm_direct_chunk, &job);
        return LF_OK;
    }
    job.n_tt = (T + MM_TT - 1) / MM_TT;
    int64_t n_tiles = ((OC + MM_OT - 1) / MM_OT) * job.n_tt;
    lf_pool_fn tiled = mm_tiled_chunk_port;
    job.kernel_f32 = mm_port_f32;
#ifdef LF_CPU_X86
    if (simd) tiled = mm_tiled_chunk_avx2;
#endif
    (void)simd;
    lf_cpu_parallel_for(be, n_tiles, 1, tiled, &job);
    return LF_OK;
}
