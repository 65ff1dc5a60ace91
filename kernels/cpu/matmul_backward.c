/* matmul_backward.c - the backward of out[T,OC] = inp[T,C] @ weight[OC,C]^T, and the CPU entry points of the
 * 4-bit matmul ops (forward and backward live in quant/quant.c; here they are validated and run on the
 * backend's pool and scratch).
 *
 *   dinp[T,C]     += dout[T,OC] @ weight[OC,C]        (weight F32/BF16/F16; frozen base or LoRA A/B)
 *   dweight[OC,C] += dout[T,OC]^T @ inp[T,C]          (F32: LoRA A/B gradients)
 * Accumulation rule: both are activation/parameter gradients that the caller zeroes; this op adds (+=).
 * A NULL dinp or dweight is skipped.
 *
 * Both products are one GEMM engine, C[M,N] += A[M,K] @ B[K,N] with B row-major (B(k,n) = b[k*ldb + n]) and A
 * read through two strides (A(i,k) = a[i*a_rs + k*a_cs]):
 *   dinp:    M=T,  N=C, K=OC, A = dout (a_rs = OC, a_cs = 1),  B = weight rows (ldb = C, any dtype)
 *   dweight: M=OC, N=C, K=T,  A = dout^T (a_rs = 1, a_cs = OC), B = inp rows (ldb = C, f32)
 * so neither operand is transposed in memory. C is cut into tiles of up to MB_MT rows x MB_NT columns, each
 * owned by one pool thread (race-free, no atomics); consecutive tiles share B's columns. Inside a tile K is
 * blocked by kc; each [kc, 16] slice of B is converted once to an f32 panel in the thread's scratch (L1-
 * resident; row stride ldb = C never reaches the microkernel, so C = 1024, 2048, ... cannot thrash L1 sets) and
 * reused by every row group of the tile. Row-major A (dinp) is read in place: 6 sequential streams. A^T
 * (dweight) would be read with stride OC per k - one new cache line per k, all in one L1 set when OC*4 is a
 * multiple of 4 KiB - so its [kc, mt] block is first copied into the scratch as [mt/6][kc][6] micro-panels
 * (smaller blocks there: kc = MBA_KC, tiles of <= MBA_MT rows, so both panels fit the 16 KiB scratch).
 *   AVX2: the microkernel is the forward's outer product: 6 rows x 16 columns = 12 ymm accumulators, per k two
 *   panel loads + 6 broadcasts of A, 12 FMAs; the tile is then added into C (masked for ragged columns).
 *   Portable: the same tiles with a scalar 6x16 kernel the compiler may vectorize.
 * Tile sizes shrink (rows first, then columns) until there are >= 4 tiles per thread, so small-T and LoRA
 * shapes (K or N = rank) still spread over the pool.
 *
 * Precision: each output gains a sum of K f32 products, accumulated in f32 in blocks of kc and added to the
 * existing value: at most about (K+2) * 2^-24 * (|old| + sum_k |a_k b_k|) from the exact result (recursive
 * summation bound; the tests use it). The ref accumulates in double and rounds once. */
#include <string.h>

#include "kernels/cpu/cpu_ops.h"
#include "quant/quant.h"

#define MB_MR 6      /* microkernel rows (broadcast side) */
#define MB_NR 16     /* microkernel columns (2 ymm) */
#define MB_KC 256    /* K block: one [MB_KC, MB_NR] f32 panel = 16 KiB */
#define MB_MT 144    /* rows per tile at most (multiple of MB_MR): the A block MB_MT x MB_KC stays in L2 */
#define MB_NT 48     /* columns per tile at most (multiple of MB_NR) */
#define MB_MT_MIN 24 /* tile shrinking stops here (rows) */
#define MBA_KC 64    /* A^T path: K block ([MBA_KC, 16] B panel = 4 KiB) */
#define MBA_MT 48    /* A^T path: rows per tile at most (packed A block [MBA_MT, MBA_KC] = 12 KiB) */
#define MBA_NT 192   /* A^T path: columns per tile at most: each packed A block serves 12 column strips */

_Static_assert(MB_KC *MB_NR <= LF_CPU_SCRATCH_FLOATS, "matmul_backward panel exceeds the per-thread scratch");
_Static_assert(MBA_KC *MB_NR + MBA_MT * MBA_KC <= LF_CPU_SCRATCH_FLOATS, "A^T panels exceed the per-thread scratch");
_Static_assert(MB_MT % MB_MR == 0 && MB_NT % MB_NR == 0 && MB_MT_MIN % MB_MR == 0 && MBA_MT % MB_MR == 0 &&
                   MBA_NT % MB_NR == 0,
               "tile sizes");
_Static_assert(LF_QUANT_MM_SCRATCH_FLOATS <= LF_CPU_SCRATCH_FLOATS, "4-bit matmul scratch exceeds the CPU scratch");

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

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

static int ranges_overlap(const void *a, size_t na, const void *b, size_t nb) {
    uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b;
    return a && b && na && nb && pa < pb + nb && pb < pa + na;
}

/* ==== reference ==== */

lf_status lf_cpu_matmul_backward_ref(float *dinp, float *dweight, const float *dout, const float *inp,
                                     const lf_tensor *weight, int64_t T, int64_t C, int64_t OC, lf_err *err) {
    if (dinp) {
        lf_dtype dt = weight->dtype;
        if (dt != LF_DTYPE_F32 && dt != LF_DTYPE_BF16 && dt != LF_DTYPE_F16)
            return lf_err_set(err, LF_EUNSUPPORTED,
                              "matmul_backward: weight dtype %s is not supported (F32, BF16, F16)", lf_dtype_name(dt));
        for (int64_t t = 0; t < T; t++)
            for (int64_t c = 0; c < C; c++) {
                double s = 0.0;
                for (int64_t o = 0; o < OC; o++)
                    s += (double)dout[t * OC + o] * (double)w_get(weight->data, dt, o * C + c);
                dinp[t * C + c] = (float)((double)dinp[t * C + c] + s);
            }
    }
    if (dweight) {
        for (int64_t o = 0; o < OC; o++)
            for (int64_t c = 0; c < C; c++) {
                double s = 0.0;
                for (int64_t t = 0; t < T; t++) s += (double)dout[t * OC + o] * (double)inp[t * C + c];
                dweight[o * C + c] = (float)((double)dweight[o * C + c] + s);
            }
    }
    return LF_OK;
}

/* ==== the GEMM engine: C[M,N] += A[M,K] @ B[K,N] ==== */

typedef struct mb_job {
    lf_backend *be;
    float *c; /* [M, ldc] */
    int64_t ldc;
    const float *a; /* A(i,k) = a[i*a_rs + k*a_cs] */
    int64_t a_rs, a_cs;
    const void *b; /* B(k,n) = b[k*ldb + n], dtype bdt */
    lf_dtype bdt;
    int64_t ldb;
    int64_t M, N, K;
    int64_t mt, nt, n_mt; /* tile rows, tile columns, tiles along M */
    int64_t kc;           /* K block */
    int acol;             /* A^T layout (a_rs == 1): pack A blocks */
} mb_job;

/* panel[k*MB_NR + n] = B(k, n) as f32 for k < kc, n < nr; columns nr..MB_NR-1 zero. b points at B(0,0). */
static void mb_pack_port(float *panel, const void *b, lf_dtype dt, int64_t ldb, int nr, int64_t kc) {
    for (int64_t k = 0; k < kc; k++) {
        float *p = panel + k * MB_NR;
        for (int n = 0; n < nr; n++) p[n] = w_get(b, dt, k * ldb + n);
        for (int n = nr; n < MB_NR; n++) p[n] = 0.0f;
    }
}

/* C(i, n) += sum_{k<kc} A(i,k) * panel[k][n] for i < mr, n < nr. */
static void mb_kernel_port(int mr, const float *a, int64_t a_rs, int64_t a_cs, const float *panel, int64_t kc, float *c,
                           int64_t ldc, int nr) {
    float acc[MB_MR][MB_NR];
    memset(acc, 0, sizeof acc);
    for (int64_t k = 0; k < kc; k++) {
        const float *p = panel + k * MB_NR;
        for (int i = 0; i < mr; i++) {
            const float x = a[i * a_rs + k * a_cs];
            for (int n = 0; n < MB_NR; n++) acc[i][n] += x * p[n];
        }
    }
    for (int i = 0; i < mr; i++)
        for (int n = 0; n < nr; n++) c[i * ldc + n] += acc[i][n];
}

#ifdef LF_CPU_X86
#define MB_AVX2_INLINE static inline __attribute__((always_inline)) LF_CPU_AVX2

/* 8 consecutive B elements from element i, as f32. */
MB_AVX2_INLINE __m256 mb_load8(const void *b, const lf_dtype dt, int64_t i) {
    if (dt == LF_DTYPE_F32) return _mm256_loadu_ps((const float *)b + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)b + i));
    if (dt == LF_DTYPE_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

MB_AVX2_INLINE void mb_pack_avx2_t(const lf_dtype dt, float *panel, const void *b, int64_t ldb, int nr, int64_t kc) {
    if (nr == MB_NR) {
        for (int64_t k = 0; k < kc; k++) {
            _mm256_store_ps(panel + k * MB_NR, mb_load8(b, dt, k * ldb));
            _mm256_store_ps(panel + k * MB_NR + 8, mb_load8(b, dt, k * ldb + 8));
        }
        return;
    }
    for (int64_t k = 0; k < kc; k++) {
        float *p = panel + k * MB_NR;
        for (int n = 0; n < nr; n++)
            p[n] = dt == LF_DTYPE_F16 ? _cvtsh_ss(((const uint16_t *)b)[k * ldb + n]) : w_get(b, dt, k * ldb + n);
        for (int n = nr; n < MB_NR; n++) p[n] = 0.0f;
    }
}

static LF_CPU_AVX2 void mb_pack_avx2(float *panel, const void *b, lf_dtype dt, int64_t ldb, int nr, int64_t kc) {
    switch (dt) {
    case LF_DTYPE_BF16: mb_pack_avx2_t(LF_DTYPE_BF16, panel, b, ldb, nr, kc); break;
    case LF_DTYPE_F16: mb_pack_avx2_t(LF_DTYPE_F16, panel, b, ldb, nr, kc); break;
    default: mb_pack_avx2_t(LF_DTYPE_F32, panel, b, ldb, nr, kc); break;
    }
}

/* ACOL = 0: A(i,k) = a[i*a_rs + k] (row-major A); ACOL = 1: A(i,k) = a[i + k*a_cs] (A^T row-major). */
MB_AVX2_INLINE void mb_tile_avx2(const int MR, const int ACOL, const float *a, int64_t a_rs, int64_t a_cs,
                                 const float *panel, int64_t kc, float *c, int64_t ldc, int nr) {
    __m256 acc[MB_MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MB_MR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    if (ACOL) {
        const float *ak = a;
#pragma GCC unroll 2
        for (int64_t k = 0; k < kc; k++, ak += a_cs) {
            __m256 b0 = _mm256_load_ps(panel + k * MB_NR), b1 = _mm256_load_ps(panel + k * MB_NR + 8);
#pragma GCC unroll 6
            for (int i = 0; i < MR; i++) {
                __m256 x = _mm256_broadcast_ss(ak + i);
                acc[i][0] = _mm256_fmadd_ps(x, b0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(x, b1, acc[i][1]);
            }
        }
    } else {
#pragma GCC unroll 2
        for (int64_t k = 0; k < kc; k++) {
            __m256 b0 = _mm256_load_ps(panel + k * MB_NR), b1 = _mm256_load_ps(panel + k * MB_NR + 8);
#pragma GCC unroll 6
            for (int i = 0; i < MR; i++) {
                __m256 x = _mm256_broadcast_ss(a + i * a_rs + k);
                acc[i][0] = _mm256_fmadd_ps(x, b0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(x, b1, acc[i][1]);
            }
        }
    }
    if (nr == MB_NR) {
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            float *o = c + i * ldc;
            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), acc[i][0]));
            _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_loadu_ps(o + 8), acc[i][1]));
        }
        return;
    }
    const __m256i m0 = lf_cpu_mask8(nr < 8 ? nr : 8), m1 = lf_cpu_mask8(nr > 8 ? nr - 8 : 0);
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        float *o = c + i * ldc;
        _mm256_maskstore_ps(o, m0, _mm256_add_ps(_mm256_maskload_ps(o, m0), acc[i][0]));
        _mm256_maskstore_ps(o + 8, m1, _mm256_add_ps(_mm256_maskload_ps(o + 8, m1), acc[i][1]));
    }
}

#define MB_CASES(ACOL)                                                                                                 \
    switch (mr) {                                                                                                      \
    case 6: mb_tile_avx2(6, ACOL, a, a_rs, a_cs, panel, kc, c, ldc, nr); break;                                        \
    case 5: mb_tile_avx2(5, ACOL, a, a_rs, a_cs, panel, kc, c, ldc, nr); break;                                        \
    case 4: mb_tile_avx2(4, ACOL, a, a_rs, a_cs, panel, kc, c, ldc, nr); break;                                        \
    case 3: mb_tile_avx2(3, ACOL, a, a_rs, a_cs, panel, kc, c, ldc, nr); break;                                        \
    case 2: mb_tile_avx2(2, ACOL, a, a_rs, a_cs, panel, kc, c, ldc, nr); break;                                        \
    case 1: mb_tile_avx2(1, ACOL, a, a_rs, a_cs, panel, kc, c, ldc, nr); break;                                        \
    default: LF_ASSERT(!"matmul_backward kernel: bad mr");                                                             \
    }

static LF_CPU_AVX2 void mb_kernel_avx2(int mr, const float *a, int64_t a_rs, int64_t a_cs, const float *panel,
                                       int64_t kc, float *c, int64_t ldc, int nr) {
    if (a_cs == 1) {
        MB_CASES(0)
    } else {
        LF_ASSERT(a_rs == 1);
        MB_CASES(1)
    }
}
#endif /* LF_CPU_X86 */

/* A^T block rows [m0, m1) x K [k0, k0+kc) into ap as micro-panels: ap[(g*kc + k)*MB_MR + i] = A(m0 + g*MB_MR + i,
 * k0 + k) (rows past m1 zero). a points at A(0,0) with a_rs == 1. Reads A^T row by row (contiguous in m). */
static void mb_pack_acol(float *ap, const float *a, int64_t a_cs, int64_t m0, int64_t m1, int64_t k0, int64_t kc) {
    const int64_t nfull = (m1 - m0) / MB_MR, rest = (m1 - m0) % MB_MR;
    for (int64_t k = 0; k < kc; k++) {
        const float *row = a + (k0 + k) * a_cs + m0;
        for (int64_t g = 0; g < nfull; g++) memcpy(ap + (g * kc + k) * MB_MR, row + g * MB_MR, MB_MR * sizeof(float));
        if (rest) {
            float *dst = ap + (nfull * kc + k) * MB_MR;
            for (int i = 0; i < MB_MR; i++) dst[i] = i < rest ? row[nfull * MB_MR + i] : 0.0f;
        }
    }
}

/* Tiles [b, e): tile = ni * n_mt + mi (consecutive tiles share B's columns). */
static void mb_chunk(void *vjob, int64_t b, int64_t e, int tid, int simd) {
    const mb_job *j = (const mb_job *)vjob;
    float *panel = lf_cpu_scratch(j->be, tid), *ap = panel + j->kc * MB_NR;
    (void)simd;
    for (int64_t tile = b; tile < e; tile++) {
        const int64_t m0 = (tile % j->n_mt) * j->mt, m1 = min64(j->M, m0 + j->mt);
        const int64_t n0 = (tile / j->n_mt) * j->nt, n1 = min64(j->N, n0 + j->nt);
        for (int64_t k0 = 0; k0 < j->K; k0 += j->kc) {
            const int64_t kc = min64(j->kc, j->K - k0);
            /* A of row group m: in place (row-major A) or the packed micro-panel (A^T) */
            const float *a = j->a + m0 * j->a_rs + k0 * j->a_cs;
            int64_t a_rs = j->a_rs, a_cs = j->a_cs, a_gs = MB_MR * j->a_rs; /* a_gs: step between row groups */
            if (j->acol) {
                mb_pack_acol(ap, j->a, j->a_cs, m0, m1, k0, kc);
                a = ap, a_rs = 1, a_cs = MB_MR, a_gs = kc * MB_MR;
            }
            for (int64_t n = n0; n < n1; n += MB_NR) {
                const int nr = (int)min64(MB_NR, n1 - n);
                const void *bp = w_at(j->b, j->bdt, k0 * j->ldb + n);
#ifdef LF_CPU_X86
                if (simd) {
                    mb_pack_avx2(panel, bp, j->bdt, j->ldb, nr, kc);
                    for (int64_t m = m0, g = 0; m < m1; m += MB_MR, g++)
                        mb_kernel_avx2((int)min64(MB_MR, m1 - m), a + g * a_gs, a_rs, a_cs, panel, kc,
                                       j->c + m * j->ldc + n, j->ldc, nr);
                    continue;
                }
#endif
                mb_pack_port(panel, bp, j->bdt, j->ldb, nr, kc);
                for (int64_t m = m0, g = 0; m < m1; m += MB_MR, g++)
                    mb_kernel_port((int)min64(MB_MR, m1 - m), a + g * a_gs, a_rs, a_cs, panel, kc,
                                   j->c + m * j->ldc + n, j->ldc, nr);
            }
        }
    }
}

static void mb_chunk_simd(void *vjob, int64_t b, int64_t e, int tid) { mb_chunk(vjob, b, e, tid, 1); }
static void mb_chunk_port(void *vjob, int64_t b, int64_t e, int tid) { mb_chunk(vjob, b, e, tid, 0); }

/* C[M,N] += A[M,K] @ B[K,N] on be's pool. */
static void mb_gemm(lf_backend *be, float *c, int64_t ldc, const float *a, int64_t a_rs, int64_t a_cs, const void *b,
                    lf_dtype bdt, int64_t ldb, int64_t M, int64_t N, int64_t K) {
    if (M == 0 || N == 0 || K == 0) return;
    const int acol = a_cs != 1;
    LF_ASSERT(!acol || a_rs == 1);
    mb_job j = {.be = be,
                .c = c,
                .ldc = ldc,
                .a = a,
                .a_rs = a_rs,
                .a_cs = a_cs,
                .b = b,
                .bdt = bdt,
                .ldb = ldb,
                .M = M,
                .N = N,
                .K = K,
                .mt = acol ? MBA_MT : MB_MT,
                .nt = acol ? MBA_NT : MB_NT,
                .kc = acol ? MBA_KC : MB_KC,
                .acol = acol};
    const int64_t want = 4 * (int64_t)lf_backend_cpu_threads(be);
#define MB_TILES(mt, nt) (((M + (mt)-1) / (mt)) * ((N + (nt)-1) / (nt)))
    while (j.mt > MB_MT_MIN && MB_TILES(j.mt, j.nt) < want) {
        j.mt = (j.mt / 2 + MB_MR - 1) / MB_MR * MB_MR;
        if (j.mt < MB_MT_MIN) j.mt = MB_MT_MIN;
    }
    while (j.nt > MB_NR && MB_TILES(j.mt, j.nt) < want) j.nt -= MB_NR;
    j.n_mt = (M + j.mt - 1) / j.mt;
    const int64_t n_tiles = MB_TILES(j.mt, j.nt);
#undef MB_TILES
    lf_cpu_parallel_for(be, n_tiles, 1, lf_cpu_simd() ? mb_chunk_simd : mb_chunk_port, &j);
}

/* ==== entry points ==== */

lf_status lf_cpu_matmul_backward(lf_backend *be, float *dinp, float *dweight, const float *dout, const float *inp,
                                 const lf_tensor *weight, int64_t T, int64_t C, int64_t OC) {
    if (T < 0 || C < 0 || OC < 0)
        return lf_err_set(&be->err, LF_EINVAL, "matmul_backward: negative size T=%lld C=%lld OC=%lld", (long long)T,
                          (long long)C, (long long)OC);
    if (!dinp && !dweight) return LF_OK;
    if (!dout && T * OC > 0) return lf_err_set(&be->err, LF_EINVAL, "matmul_backward: dout is NULL");
    if (dinp) {
        lf_dtype dt = weight ? weight->dtype : LF_DTYPE_INVALID;
        if (!weight || weight->ndim != 2 || weight->shape[0] != OC || weight->shape[1] != C)
            return lf_err_set(&be->err, LF_EINVAL,
                              "matmul_backward: weight must be [OC=%lld, C=%lld], got ndim %d [%lld, %lld]",
                              (long long)OC, (long long)C, weight ? weight->ndim : -1,
                              weight ? (long long)weight->shape[0] : -1LL, weight ? (long long)weight->shape[1] : -1LL);
        if (dt != LF_DTYPE_F32 && dt != LF_DTYPE_BF16 && dt != LF_DTYPE_F16)
            return lf_err_set(&be->err, LF_EUNSUPPORTED,
                              "matmul_backward: weight dtype %s is not supported (F32, BF16, F16)", lf_dtype_name(dt));
        if (weight->device != LF_DEVICE_CPU)
            return lf_err_set(&be->err, LF_EINVAL, "matmul_backward: weight is not in CPU memory");
    }
    if (dweight && !inp && T * C > 0) return lf_err_set(&be->err, LF_EINVAL, "matmul_backward: inp is NULL");
    const size_t n_inp = (size_t)(T * C) * sizeof(float), n_out = (size_t)(T * OC) * sizeof(float);
    const size_t n_w = (size_t)(OC * C) * sizeof(float);
    if (dinp && (ranges_overlap(dinp, n_inp, dout, n_out) || ranges_overlap(dinp, n_inp, inp, n_inp) ||
                 ranges_overlap(dinp, n_inp, weight->data, (size_t)lf_tensor_nbytes(weight))))
        return lf_err_set(&be->err, LF_EINVAL, "matmul_backward: dinp must not overlap dout, inp or weight");
    if (dweight && (ranges_overlap(dweight, n_w, dout, n_out) || ranges_overlap(dweight, n_w, inp, n_inp) ||
                    ranges_overlap(dweight, n_w, dinp, n_inp)))
        return lf_err_set(&be->err, LF_EINVAL, "matmul_backward: dweight must not overlap dout, inp or dinp");

    if (dinp) mb_gemm(be, dinp, C, dout, OC, 1, weight->data, weight->dtype, C, T, C, OC);
    if (dweight) mb_gemm(be, dweight, C, dout, 1, OC, inp, LF_DTYPE_F32, C, OC, C, T);
    return LF_OK;
}

/* ---- 4-bit weights: quant/quant.c does the work ---- */

static lf_status q4_check(lf_backend *be, const char *op, const struct lf_quant_state *w, int64_t T, int64_t C,
                          int64_t OC) {
    if (T < 0 || C < 0 || OC < 0)
        return lf_err_set(&be->err, LF_EINVAL, "%s: negative size T=%lld C=%lld OC=%lld", op, (long long)T,
                          (long long)C, (long long)OC);
    if (!w || !w->packed) return lf_err_set(&be->err, LF_EINVAL, "%s: the 4-bit weight is NULL or empty", op);
    if (w->rows != OC || w->cols != C)
        return lf_err_set(&be->err, LF_EINVAL, "%s: 4-bit weight is [%lld, %lld], want [OC=%lld, C=%lld]", op,
                          (long long)w->rows, (long long)w->cols, (long long)OC, (long long)C);
    return LF_OK;
}

lf_status lf_cpu_matmul_q4_forward_ref(float *out, const float *inp, const struct lf_quant_state *w, const float *bias,
                                       int64_t T, int64_t C, int64_t OC, lf_err *err) {
    return lf_quant_matmul_4bit_ref(out, inp, w, bias, T, C, OC, err);
}

lf_status lf_cpu_matmul_q4_forward(lf_backend *be, float *out, const float *inp, const struct lf_quant_state *w,
                                   const float *bias, int64_t T, int64_t C, int64_t OC) {
    lf_status st = q4_check(be, "matmul_q4_forward", w, T, C, OC);
    if (st != LF_OK) return st;
    if (T == 0 || OC == 0) return LF_OK;
    if (!out || (!inp && C > 0)) return lf_err_set(&be->err, LF_EINVAL, "matmul_q4_forward: out or inp is NULL");
    if (ranges_overlap(out, (size_t)(T * OC) * sizeof(float), inp, (size_t)(T * C) * sizeof(float)))
        return lf_err_set(&be->err, LF_EINVAL, "matmul_q4_forward: out must not alias inp");
    lf_cpu_ctx *c = (lf_cpu_ctx *)be->ctx;
    return lf_quant_matmul_4bit(out, inp, w, bias, T, C, OC, c->pool, c->scratch, &be->err);
}

lf_status lf_cpu_matmul_q4_backward_ref(float *dinp, const float *dout, const struct lf_quant_state *w, int64_t T,
                                        int64_t C, int64_t OC, lf_err *err) {
    return lf_quant_matmul_4bit_backward_ref(dinp, dout, w, T, C, OC, err);
}

lf_status lf_cpu_matmul_q4_backward(lf_backend *be, float *dinp, const float *dout, const struct lf_quant_state *w,
                                    int64_t T, int64_t C, int64_t OC) {
    lf_status st = q4_check(be, "matmul_q4_backward", w, T, C, OC);
    if (st != LF_OK) return st;
    if (!dinp || T == 0 || C == 0) return LF_OK;
    if (!dout && OC > 0) return lf_err_set(&be->err, LF_EINVAL, "matmul_q4_backward: dout is NULL");
    if (ranges_overlap(dinp, (size_t)(T * C) * sizeof(float), dout, (size_t)(T * OC) * sizeof(float)))
        return lf_err_set(&be->err, LF_EINVAL, "matmul_q4_backward: dinp must not overlap dout");
    lf_cpu_ctx *c = (lf_cpu_ctx *)be->ctx;
    return lf_quant_matmul_4bit_backward(dinp, dout, w, T, C, OC, c->pool, c->scratch, &be->err);
}
