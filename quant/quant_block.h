/* quant_block.h - the bitsandbytes 4-bit block layout and code tables, defined once for C and CUDA.
 *
 * Source: ../shared/formats.md section 3 (bnb functional.py get_4bit_type, csrc/kernels.cu dQuantizeNF4 /
 * dQuantizeFP4, backends/default/ops.py). Plain C89-style declarations only (no designated initializers,
 * no C11 keywords outside LF_QB_STATIC_ASSERT) so nvcc accepts this file unchanged.
 *
 * Layout of one quantized tensor of n elements (flattened row-major [out, in]):
 *   packed  uint8 [(n+1)/2]   element 2j in the HIGH nibble, 2j+1 in the LOW nibble; odd n pads low nibble 0
 *   absmax  f32   [ceil(n/B)] one per block of B consecutive elements; the ragged last block has its own
 *   nested (double quantization): absmax_q uint8 [ceil(n/B)], nested_absmax f32 [ceil(nblocks/256)],
 *           nested_map f32 [256] (signed dynamic map), offset f32: absmax = map[q]*nested_absmax + offset
 *
 * Invariant: blocksize B is a power of two in [32, 4096]; B is even, so every block starts on a byte. */
#ifndef LF_QUANT_QUANT_BLOCK_H
#define LF_QUANT_QUANT_BLOCK_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#define LF_QB_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define LF_QB_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

#define LF_QUANT_BLOCK_DEFAULT 64     /* quantize_4bit default blocksize */
#define LF_QUANT_BLOCK_MIN 32         /* allowed: powers of two 32..4096 */
#define LF_QUANT_BLOCK_MAX 4096
#define LF_QUANT_NESTED_BLOCK 256     /* double quantization: quantize_blockwise(absmax - offset, 256) */
#define LF_QUANT_DYN_MAP_SIZE 256     /* create_dynamic_map(signed=True, 7, 8): 256 sorted f32 values */
#define LF_QUANT_CODES 16             /* 4-bit code table size */

/* Nibble order: element 2j -> high nibble, 2j+1 -> low nibble (default/ops.py:256, kernels.cu:364). */
#define LF_QUANT_PACK(q_even, q_odd) ((uint8_t)((((unsigned)(q_even) & 0xFu) << 4) | ((unsigned)(q_odd) & 0xFu)))
#define LF_QUANT_NIBBLE(packed, e) ((unsigned)(((e) & 1) ? ((packed)[(e) >> 1] & 0xFu) : ((packed)[(e) >> 1] >> 4)))

/* Codes that stand for 0.0: what an all-zero block (absmax == 0) quantizes to (see quant.c). */
#define LF_QUANT_NF4_ZERO_CODE 7
#define LF_QUANT_FP4_ZERO_CODE 0
#define LF_QUANT_DYN_ZERO_CODE 0      /* all-zero 256-block of absmax - offset: bnb CUDA (NaN -> index 0) and CPU write 0 */

/* NF4 values, index 0..15 (formats.md "NF4 code values"; nf4_dequantization_lut). */
#define LF_QUANT_NF4_TABLE_INIT                                                                          \
    {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,   \
     -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,   \
     0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,             \
     0.7229568362236023f, 1.0f}

/* FP4 values in bit order: [0, .0625, 8, 12, 4, 6, 2, 3, -0, -.0625, -8, -12, -4, -6, -2, -3] / 12, the
 * division done in f32 as torch's data.div_(data.abs().max()) does (constant-folded, correctly rounded). */
#define LF_QUANT_FP4_TABLE_INIT                                                                          \
    {0.0f, 0.0625f / 12.0f, 8.0f / 12.0f, 12.0f / 12.0f, 4.0f / 12.0f, 6.0f / 12.0f, 2.0f / 12.0f,       \
     3.0f / 12.0f, -0.0f, -0.0625f / 12.0f, -8.0f / 12.0f, -12.0f / 12.0f, -4.0f / 12.0f, -6.0f / 12.0f, \
     -2.0f / 12.0f, -3.0f / 12.0f}

/* dQuantizeNF4 thresholds in ascending order; threshold k separates sorted codes k and k+1. Each decimal is
 * the f64 midpoint of its two codes, written as an f32 literal exactly as kernels.cu does: the compiler rounds
 * the decimal straight to f32, which for k = 0, 8, 12, 14 is one ulp away from (float)(double midpoint).
 * x > t takes the upper code. */
#define LF_QUANT_NF4_THRESH_INIT                                                                          \
    {-0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,             \
     -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,           \
     0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,                   \
     0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f}

/* dQuantizeFP4 thresholds on |x|, ascending, as kernels.cu writes them. They separate the positive
 * magnitudes 0 < 1/192 < 1/6 < 1/4 < 1/3 < 1/2 < 2/3 < 1 (codes 0,1,6,7,4,5,2,3). They are the midpoints
 * 1/384, 11/128, 5/24, 7/24, 5/12, 7/12, 5/6 written to 6-8 digits, so 0.583333f sits a few ulps below
 * 7/12: an |x| in (0.583333f, 7/12] goes to 2/3 although 1/2 is nearer. We follow the kernel. */
#define LF_QUANT_FP4_THRESH_INIT \
    {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f}
#define LF_QUANT_FP4_MAG_CODES_INIT {0, 1, 6, 7, 4, 5, 2, 3} /* code for magnitude rank 0..7 */

LF_QB_STATIC_ASSERT(sizeof(float) == 4, "f32 absmax and code tables");
LF_QB_STATIC_ASSERT((LF_QUANT_BLOCK_DEFAULT & (LF_QUANT_BLOCK_DEFAULT - 1)) == 0, "blocksize is a power of 2");
LF_QB_STATIC_ASSERT(LF_QUANT_BLOCK_MIN % 2 == 0, "blocks start on a whole byte");
LF_QB_STATIC_ASSERT(LF_QUANT_NESTED_BLOCK == 256 && LF_QUANT_DYN_MAP_SIZE == 256, "8-bit nested codes");
LF_QB_STATIC_ASSERT(LF_QUANT_PACK(0xA, 0x5) == 0xA5, "element 2j in the high nibble");

#ifdef __cplusplus
}
#endif
#endif
