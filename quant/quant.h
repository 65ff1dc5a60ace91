/* quant.h - bitsandbytes-exact NF4/FP4 blockwise quantization, double quantization of absmax, and CPU
 * dequantize / 4-bit matmul (fast paths with a readable _ref beside each).
 *
 * Semantics (details and bnb sources in quant.c):
 *   quantize  : per block of B elements absmax = max|x| (f32); v = x * (1.0f/absmax) (f32, as bnb does);
 *               NF4 code = dQuantizeNF4 decision tree (x > threshold -> upper), FP4 = dQuantizeFP4 tree
 *               (sign bit from x < 0, magnitude by its thresholds); all-zero block -> code of 0.0.
 *   dequantize: code_value * absmax (f32); bf16 output rounds that product to nearest even.
 *   double quant: offset = mean(absmax) (f32); absmax_q = the code bnb's CUDA kernel picks (dQuantize<0>:
 *               binary search, f32 midpoints) for (absmax - offset) * (1/absmax2) per 256-block, in the
 *               signed dynamic map as torch 2.x builds it; decoded absmax = map[q] * absmax2 + offset
 *               (two f32 ops).
 * Shapes: W is [rows=OC, cols=C] row-major; n = rows*cols; nblocks = ceil(n/B). */
#ifndef LF_QUANT_QUANT_H
#define LF_QUANT_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"
#include "core/threadpool.h"
#include "quant/quant_block.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lf_quant_type { LF_QUANT_NF4 = 0, LF_QUANT_FP4 = 1 } lf_quant_type;

/* "nf4" / "fp4". */
const char *lf_quant_type_name(lf_quant_type t);
/* The 16 code values of t (static table, index = 4-bit code). */
const float *lf_quant_code_table(lf_quant_type t);
/* LF_OK when blocksize is a power of two in [32, 4096]; else LF_EINVAL with a message. */
lf_status lf_quant_check_blocksize(int64_t blocksize, lf_err *err);

/* bitsandbytes create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), emulating the f32 torch
 * arithmetic bnb runs it with (torch 2.x torch.linspace float32 on an AVX2/AVX-512 CPU, f32 means, f32
 * scale). Sorted ascending. */
void lf_quant_dynamic_map_signed(float map[LF_QUANT_DYN_MAP_SIZE]);

/* One value already scaled by 1/absmax -> 4-bit code (the bnb decision trees). */
uint8_t lf_quant_nf4_code(float v);
uint8_t lf_quant_fp4_code(float v);
/* Index of the nearest entry of a sorted 256-entry map (|v - map[i]| in f32; ties to the lower index). */
uint8_t lf_quant_map_code(const float map[LF_QUANT_DYN_MAP_SIZE], float v);

/* ---- flat-array primitives (caller owns every buffer) ---- */
/* x: [n] -> packed [(n+1)/2], absmax [ceil(n/blocksize)]. */
lf_status lf_quant_quantize_4bit_f32(uint8_t *packed, float *absmax, const float *x, int64_t n, int64_t blocksize,
                                     lf_quant_type type, lf_err *err);
lf_status lf_quant_quantize_4bit_bf16(uint8_t *packed, float *absmax, const uint16_t *x, int64_t n,
                                      int64_t blocksize, lf_quant_type type, lf_err *err);
/* out [n] = code[q] * absmax[e / blocksize]; scalar reference. */
lf_status lf_quant_dequantize_4bit_ref(float *out, const uint8_t *packed, const float *absmax, int64_t n,
                                       int64_t blocksize, lf_quant_type type, lf_err *err);
/* 8-bit blockwise (bnb quantize_blockwise as its CUDA kernel kQuantizeBlockwise computes it, which is not
 * lf_quant_map_code's argmin at midpoint ties): x [n] -> q [n], absmax2 [ceil(n/B)]. */
lf_status lf_quant_quantize_blockwise_8bit(uint8_t *q, float *absmax2, const float *x, int64_t n, int64_t blocksize,
                                           const float map[LF_QUANT_DYN_MAP_SIZE], lf_err *err);
/* out [n] = map[q] * absmax2[e / blocksize] + offset. */
lf_status lf_quant_dequantize_blockwise_8bit(float *out, const uint8_t *q, const float *absmax2, int64_t n,
                                             int64_t blocksize, const float map[LF_QUANT_DYN_MAP_SIZE],
                                             float offset, lf_err *err);
/* f32 mean as a correctly rounded f32 of the exact mean (torch's f32 reductions may differ by an ulp). */
float lf_quant_mean_f32(const float *x, int64_t n);

/* ---- quant state: one quantized weight ---- */
typedef struct lf_quant_state {
    lf_quant_type type;
    int64_t blocksize;       /* B */
    int64_t n;               /* rows * cols */
    int64_t rows, cols;      /* shape [OC, C] */
    int64_t nblocks;         /* ceil(n / B) */
    uint8_t *packed;         /* [(n+1)/2] */
    float *absmax;           /* [nblocks] f32, NULL when nested */
    int nested;              /* double quantization on */
    uint8_t *absmax_q;       /* [nblocks] when nested */
    float *nested_absmax;    /* [ceil(nblocks/256)] when nested */
    int64_t nested_blocksize; /* 256 */
    int64_t n_nested;        /* ceil(nblocks / 256) */
    float nested_map[LF_QUANT_DYN_MAP_SIZE];
    float offset;            /* mean(absmax) when nested, else 0 */
    void *owned;             /* the one allocation behind the arrays, NULL for views */
} lf_quant_state;

/* Quantize x [rows, cols] (F32 or BF16) into st (st owns one allocation; free with lf_quant_state_free).
 * double_quant: bnb compress_statistics. On failure st is left zeroed. */
lf_status lf_quant_quantize(lf_quant_state *st, const void *x, lf_dtype dt, int64_t rows, int64_t cols,
                            int64_t blocksize, lf_quant_type type, int double_quant, lf_err *err);
/* Build a view over caller-owned buffers (e.g. mmapped checkpoint tensors); validates every byte count:
 * packed_nbytes == (n+1)/2; not nested: absmax_nbytes == 4*nblocks; nested: absmax_nbytes == nblocks,
 * nested_absmax_nbytes == 4*ceil(nblocks/256), nested_map non-NULL (256 f32, copied). absmax points to f32
 * (not nested) or uint8 (nested) data. Borrows the buffers (they must outlive st). */
lf_status lf_quant_state_view(lf_quant_state *st, lf_quant_type type, int64_t rows, int64_t cols, int64_t blocksize,
                              const void *packed, size_t packed_nbytes, const void *absmax, size_t absmax_nbytes,
                              int nested, const float *nested_absmax, size_t nested_absmax_nbytes,
                              const float *nested_map, float offset, lf_err *err);
/* Bytes of packed + absmax (+ nested arrays and map) as stored. */
size_t lf_quant_state_nbytes(const lf_quant_state *st);
/* Frees the owned allocation (views: nothing) and zeroes st. NULL is a no-op. */
void lf_quant_state_free(lf_quant_state *st);
/* Decoded f32 absmax of block b (nested: map[q]*absmax2 + offset). */
float lf_quant_state_absmax(const lf_quant_state *st, int64_t b);

/* ---- CPU dequantize and matmul ---- */
/* out [n]. Threaded over blocks with pool (NULL: caller thread); the _ref is the scalar per-element loop.
 * Fast and _ref results are bit-identical. */
lf_status lf_quant_dequantize_f32(float *out, const lf_quant_state *st, lf_pool *pool, lf_err *err);
lf_status lf_quant_dequantize_bf16(uint16_t *out, const lf_quant_state *st, lf_pool *pool, lf_err *err);
lf_status lf_quant_dequantize_f32_ref(float *out, const lf_quant_state *st, lf_err *err);

/* Per-thread scratch of lf_quant_matmul_4bit and _backward, in floats (16 KiB: one decoded panel of W). */
#define LF_QUANT_MM_SCRATCH_FLOATS 4096
/* out [T, OC] = inp [T, C] @ W^T + bias [OC] (bias may be NULL); W [OC, C] quantized. Reads packed weights
 * directly, never a dequantized copy of the matrix: small T (<= 4; decode) decodes 4 rows at a time in
 * registers; larger T decodes a 16 KiB panel of rows (8 x 512 or 4 x 1024 columns) into the thread's scratch
 * and reuses it for every token (see quant.c for the drivers). Sums differ from the _ref only in f32 order.
 * scratch: [lf_pool_size(pool) (1 when pool is NULL), LF_QUANT_MM_SCRATCH_FLOATS] floats, row tid for pool
 * thread tid; NULL allocates one for this call when needed (tools and tests; step loops pass the backend's). */
lf_status lf_quant_matmul_4bit(float *out, const float *inp, const lf_quant_state *W, const float *bias, int64_t T,
                               int64_t C, int64_t OC, lf_pool *pool, float *scratch, lf_err *err);
lf_status lf_quant_matmul_4bit_ref(float *out, const float *inp, const lf_quant_state *W, const float *bias,
                                   int64_t T, int64_t C, int64_t OC, lf_err *err);
/* dinp [T, C] += dout [T, OC] @ deq(W) [OC, C]: the input gradient through a frozen 4-bit weight (no weight
 * gradient). Accumulates (+=) into dinp. Same packed reads and scratch contract as lf_quant_matmul_4bit
 * (64 rows x 64 columns of W decoded at a time into the thread's LF_QUANT_MM_SCRATCH_FLOATS scratch row;
 * scratch NULL allocates one for this call). dinp must not overlap dout. The _ref sums each element in double
 * and rounds once. */
lf_status lf_quant_matmul_4bit_backward(float *dinp, const float *dout, const lf_quant_state *W, int64_t T, int64_t C,
                                        int64_t OC, lf_pool *pool, float *scratch, lf_err *err);
lf_status lf_quant_matmul_4bit_backward_ref(float *dinp, const float *dout, const lf_quant_state *W, int64_t T,
                                            int64_t C, int64_t OC, lf_err *err);

/* SIMD dispatch. Levels: the portable C paths, AVX2+FMA, AVX-512 (F+BW; 16-entry code table in one register),
 * AVX-512 with AVX512_BF16 (the bf16 dequantize rounds with vcvtne2ps2bf16; same bits).
 * lf_quant_simd_active: the level in use (non-zero = some SIMD path): the best the CPU supports on first use,
 * capped by the environment variable LF_QUANT_SIMD=portable|avx2|avx512 when set (benchmarks). Not
 * thread-safe: tests and benchmarks set it between calls. lf_quant_set_simd(0) selects portable, non-zero the
 * best the CPU supports; lf_quant_set_simd_level caps the level at `level` and returns the level now in use. */
#define LF_QUANT_SIMD_PORTABLE 0
#define LF_QUANT_SIMD_AVX2 1
#define LF_QUANT_SIMD_AVX512 2
#define LF_QUANT_SIMD_AVX512_BF16 3
int lf_quant_simd_active(void);
void lf_quant_set_simd(int enabled);
int lf_quant_set_simd_level(int level);

#ifdef __cplusplus
}
#endif
#endif
