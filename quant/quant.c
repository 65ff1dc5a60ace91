/* quant.c - bitsandbytes-exact NF4/FP4 quantization, double quantization, CPU dequantize and 4-bit matmul.
 *
 * What "bnb-exact" means here, rule by rule (bnb = bitsandbytes; sources quoted from ../shared/formats.md
 * section 3 and the bnb tree: csrc/kernels.cu, bitsandbytes/functional.py, backends/default/ops.py):
 *  - Scaling: both bnb paths multiply by the f32 reciprocal: CUDA kQuantizeBlockwise stores
 *    1.0f/local_abs_max and quantizes vals[j]*that; the torch backend does A * (1/absmax). We do x * (1.0f/a),
 *    never x / a (they differ by an ulp at times, which moves codes at thresholds). bnb builds its CUDA
 *    kernels with --use_fast_math, so its 1.0f/absmax is the hardware's approximate reciprocal (within 1 ulp
 *    of ours): a value within about an ulp of a threshold can get the other code on a GPU. That cannot be
 *    reproduced without the GPU and is rare (~1e-6 of codes); docs/quantization.md.
 *  - 4-bit codes: the CUDA decision trees dQuantizeNF4 / dQuantizeFP4 with their f32 literal thresholds,
 *    "x > t" taking the upper branch. The torch backend instead takes argmin |v - code| (first index on ties);
 *    for NF4 the two agree except within an ulp or two of a midpoint (the literals are the rounded midpoints);
 *    for FP4 they differ where the kernel's literals are not midpoints (0.583333f is ~5 ulp below 7/12) and
 *    for tiny negatives (kernel: code 8 = -0, argmin: code 0). We follow the CUDA kernel (what QLoRA runs).
 *  - All-zero block (absmax == 0): bnb computes 1/0 = inf and 0*inf = NaN; NaN falls through every branch
 *    of dQuantizeNF4 to code 0 (-1.0) and of dQuantizeFP4 to code 0 (+0.0); the torch backend's argmin over
 *    NaN also gives index 0. Every variant dequantizes to +-0 * 0 = +-0. We write the code of 0.0
 *    (NF4 7, FP4 0) so such blocks decode to +0 exactly; for NF4 this differs from bnb's packed byte
 *    (0x77 vs 0x00) only in all-zero blocks. LF_QUANT_NF4_ZERO_CODE is the single place to change it.
 *  - Double quantization (functional.py quantize_4bit, compress_statistics): offset = absmax.mean(), then
 *    quantize_blockwise(absmax - offset, blocksize=256) with the signed dynamic map. We follow bnb's CUDA
 *    kernel (kQuantizeBlockwise + dQuantize<0>, what users' checkpoints are made with): v = x * (1/absmax2),
 *    code by its binary search and f32 midpoints (cuda_dyn_code). bnb's own CPU path disagrees with its CUDA
 *    kernel: since 0.50 (csrc/cpu_ops.cpp quantize_cpu_impl) it looks codes up in a 65536-bin table over
 *    [-1, 1] (build_quantize_lut / norm_to_lut_index), so a v within ~1.5e-5 of a midpoint takes the code of
 *    its bin, not its own: 0.3% of the absmax codes of a [256, 512] matrix differ from CUDA by one
 *    (docs/quantization.md has the evidence). The torch default backend (bucketize on midpoints) agrees with
 *    CUDA except at exact ties. A 256-block of zeros gets index 0, as CUDA (0 * inf = NaN walks to 0) and the
 *    CPU table do; it decodes to offset.
 *  - offset: torch's f32 mean depends on its reduction order (CPU cascade sum vs CUDA tree); we return
 *    the correctly rounded f32 of the exact mean. It is stored next to the data (nested_offset), so loading
 *    a bnb checkpoint uses bnb's value; only our own quantization may differ from torch by an ulp.
 *  - Dynamic map: see lf_quant_dynamic_map_signed.
 * Dequantize: code_value * absmax in f32 (CUDA kDequantizeBlockwise); bf16 rounds that product (the torch
 * backend casts the code table to bf16 first, which can differ in the last bf16 bit). */
#include "quant/quant.h"

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LF_QUANT_X86 1
#else
#define LF_QUANT_X86 0
#endif

static const float nf4_table[16] = LF_QUANT_NF4_TABLE_INIT;
static const float fp4_table[16] = LF_QUANT_FP4_TABLE_INIT;

const char *lf_quant_type_name(lf_quant_type t) { return t == LF_QUANT_FP4 ? "fp4" : "nf4"; }

const float *lf_quant_code_table(lf_quant_type t) { return t == LF_QUANT_FP4 ? fp4_table : nf4_table; }

static int valid_type(lf_quant_type t) { return t == LF_QUANT_NF4 || t == LF_QUANT_FP4; }

lf_status lf_quant_check_blocksize(int64_t blocksize, lf_err *err) {
    if (blocksize < LF_QUANT_BLOCK_MIN || blocksize > LF_QUANT_BLOCK_MAX || (blocksize & (blocksize - 1)) != 0)
        return lf_err_set(err, LF_EINVAL, "quant: blocksize %lld is not a power of two in [%d, %d]",
                          (long long)blocksize, LF_QUANT_BLOCK_MIN, LF_QUANT_BLOCK_MAX);
    return LF_OK;
}

/* ============================== dynamic map ============================== */

/* torch.linspace(0.1, 1, steps) in float32, as the torch that bitsandbytes users run computes it (PyPI torch
 * 2.x, aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp linspace_kernel; the vectorized path was removed
 * upstream "due to the precision issue"): a serial loop,
 *   step = (end - start) / (steps - 1); idx < steps/2: start + step*idx, else end - step*(steps-idx-1),
 * compiled for the AVX2 / AVX-512 kernels (what x86 machines dispatch to) with the multiply-add contracted to
 * one FMA. Observed: torch 2.15.0 (PyPI, ATEN_CPU_CAPABILITY avx2 and avx512) gives exactly these values for
 * steps 2..65, so bnb's create_dynamic_map (run on the CPU with torch.linspace, then moved to the device, for
 * CUDA and CPU quantization alike) equals this map bit for bit. Other builds differ by 1-2 ulps in up to 44 of
 * the 256 entries: Debian's torch 1.13.0a0 (the old vectorized kernel: 2 vectors of 8, base + k*step) and
 * torch's DEFAULT (no-FMA) kernel. The map is stored in every checkpoint (nested_quant_map), and loading
 * uses the stored one, so this only decides which map our own quantization writes (docs/quantization.md). */
static void torch_linspace_f32(float *out, int steps) {
    const float start = 0.1f, end = 1.0f;
    const float step = (end - start) / (float)(steps - 1);
    const int halfway = steps / 2;
    for (int idx = 0; idx < steps; idx++)
        out[idx] = idx < halfway ? fmaf(step, (float)idx, start) : fmaf(-step, (float)(steps - idx - 1), end);
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* bnb create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
 *   non_sign_bits = 7; for i in 0..6: fraction_items = 2**i + 1; boundaries = torch.linspace(0.1, 1, items)
 *   (float32); means = (b[:-1] + b[1:]) / 2.0 (f32); data += (10**(i-6) * means).tolist() and the negatives
 *   (python scalar times an f32 tensor: torch casts the scalar to f32 and multiplies in f32);
 *   additional_items = 2**(7-7) - 1 = 0; append 0 and 1.0; 256 - 256 = 0 zeros of padding; sort.
 * 127 positive + 127 negative + {0, 1} = 256, so 0.0 sits at index 127 and 1.0 at 255. */
void lf_quant_dynamic_map_signed(float map[LF_QUANT_DYN_MAP_SIZE]) {
    static const double pow10[7] = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0}; /* python 10**(i-6) */
    float b[65];
    int c = 0;
    for (int i = 0; i < 7; i++) {
        int items = (1 << i) + 1;
        torch_linspace_f32(b, items);
        float p = (float)pow10[i];
        for (int j = 0; j + 1 < items; j++) {
            float mean = (b[j] + b[j + 1]) / 2.0f;
            map[c++] = p * mean;
            map[c++] = -p * mean;
        }
    }
    map[c++] = 0.0f;
    map[c++] = 1.0f;
    LF_ASSERT(c == LF_QUANT_DYN_MAP_SIZE);
    qsort(map, LF_QUANT_DYN_MAP_SIZE, sizeof(float), cmp_float);
}

/* ============================== code selection ============================== */

/* dQuantizeNF4 (kernels.cu), branch for branch. */
uint8_t lf_quant_nf4_code(float x) {
    if (x > 0.03979014977812767f) {
        if (x > 0.3893125355243683f) {
            if (x > 0.6427869200706482f) return x > 0.8614784181118011f ? 15 : 14;
            return x > 0.5016634166240692f ? 13 : 12;
        }
        if (x > 0.2035212516784668f) return x > 0.2920137718319893f ? 11 : 10;
        return x > 0.1202552504837513f ? 9 : 8;
    }
    if (x > -0.33967943489551544f) {
        if (x > -0.13791173323988914f) return x > -0.045525018125772476f ? 7 : 6;
        return x > -0.23460740596055984f ? 5 : 4;
    }
    if (x > -0.6106329262256622f) return x > -0.4599952697753906f ? 3 : 2;
    return x > -0.8480964004993439f ? 1 : 0;
}

/* dQuantizeFP4 (kernels.cu): sign bit 8 when x < 0 (so -0.0 and NaN get +), magnitude by its tree. */
uint8_t lf_quant_fp4_code(float x) {
    int sign = x < 0 ? 8 : 0;
    x = fabsf(x);
    if (x > 0.29166667f) {
        if (x > 0.583333f) return (uint8_t)((x > 0.8333333f ? 3 : 2) + sign);
        return (uint8_t)((x > 0.4166667f ? 5 : 4) + sign);
    }
    if (x > 0.0859375f) return (uint8_t)((x > 0.20833333f ? 7 : 6) + sign);
    return (uint8_t)((x > 0.00260417f ? 1 : 0) + sign);
}

/* argmin_i |v - map[i]| in f32 with the first index on ties, for a sorted map: the f32 distances grow
 * monotonically away from v (rounding is monotone and the map's gaps are far above an ulp of the
 * distances), so only the two entries bracketing v can win. */
uint8_t lf_quant_map_code(const float map[LF_QUANT_DYN_MAP_SIZE], float v) {
    int lo = 0, hi = LF_QUANT_DYN_MAP_SIZE - 1; /* largest i with map[i] <= v, or 0 */
    if (!(v >= map[0])) return 0;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (map[mid] <= v) lo = mid; else hi = mid - 1;
    }
    if (lo == LF_QUANT_DYN_MAP_SIZE - 1) lo--;
    float dl = fabsf(v - map[lo]), dh = fabsf(v - map[lo + 1]);
    return (uint8_t)(dh < dl ? lo + 1 : lo);
}

/* bnb csrc/kernels.cu dQuantize<0> (kQuantizeBlockwise, General8bit), step for step: a 7-step binary search
 * from pivot 127, then the nearer of the final pivot and the bracketing entry decided against the f32
 * midpoint (a + b) * 0.5f, strict comparisons, a tie at the midpoint keeping the pivot. This is what the CUDA
 * kernel writes into users' checkpoints; it differs from argmin |v - map[i]| (lf_quant_map_code) only for v
 * within rounding of a midpoint. NaN (an all-zero block: 0 * (1/0)) walks to index 0, as on the GPU. */
static uint8_t cuda_dyn_code(const float map[LF_QUANT_DYN_MAP_SIZE], float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f, val = map[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = map[pivot];
    }
    if (upper_pivot == 255) upper = map[upper_pivot];
    if (lower_pivot == 0) lower = map[lower_pivot];
    if (x > val) {
        float midpoint = (upper + val) * 0.5f;
        return (uint8_t)(x > midpoint ? upper_pivot : pivot);
    }
    float midpoint = (lower + val) * 0.5f;
    return (uint8_t)(x < midpoint ? lower_pivot : pivot);
}

/* ============================== quantize ============================== */

typedef float (*load_fn)(const void *x, int64_t i);
static float load_f32(const void *x, int64_t i) { return ((const float *)x)[i]; }
static float load_bf16(const void *x, int64_t i) { return lf_bf16_to_f32(((const uint16_t *)x)[i]); }

static lf_status quantize_4bit(uint8_t *packed, float *absmax, const void *x, load_fn ld, int64_t n, int64_t B,
                               lf_quant_type type, lf_err *err) {
    if (lf_quant_check_blocksize(B, err)) return LF_EINVAL;
    if (!valid_type(type)) return lf_err_set(err, LF_EINVAL, "quant: unknown 4-bit type %d", (int)type);
    if (n <= 0) return lf_err_set(err, LF_EINVAL, "quant: cannot quantize %lld elements", (long long)n);
    if (!packed || !absmax || !x) return lf_err_set(err, LF_EINVAL, "quant: NULL buffer");
    uint8_t (*code)(float) = type == LF_QUANT_NF4 ? lf_quant_nf4_code : lf_quant_fp4_code;
    const uint8_t zero = type == LF_QUANT_NF4 ? LF_QUANT_NF4_ZERO_CODE : LF_QUANT_FP4_ZERO_CODE;
    int64_t nblocks = (n + B - 1) / B;
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t e0 = b * B, e1 = e0 + B < n ? e0 + B : n;
        float a = 0.0f;
        for (int64_t e = e0; e < e1; e++) {
            float v = fabsf(ld(x, e));
            if (v > a) a = v;
        }
        absmax[b] = a;
        float r = 1.0f / a;
        for (int64_t e = e0; e < e1; e += 2) { /* e0 is even: B is even */
            uint8_t q0 = a == 0.0f ? zero : code(ld(x, e) * r);
            /* odd n: the last low nibble is padding 0. Both bnb paths write the code of 0.0 there instead
             * (NF4 7, FP4 0: the CUDA kernel loads the missing item as 0.0f and quantizes it, the torch backend
             * pads with 0 before bucketize); never decoded. tests/unit/test_quant.c pins 0 today; to match bnb
             * byte for byte make this `zero` and that check LF_QUANT_*_ZERO_CODE (docs/quantization.md). */
            uint8_t q1 = 0;
            if (e + 1 < e1) q1 = a == 0.0f ? zero : code(ld(x, e + 1) * r);
            packed[e >> 1] = LF_QUANT_PACK(q0, q1);
        }
    }
    return LF_OK;
}

lf_status lf_quant_quantize_4bit_f32(uint8_t *packed, float *absmax, const float *x, int64_t n, int64_t blocksize,
                                     lf_quant_type type, lf_err *err) {
    return quantize_4bit(packed, absmax, x, load_f32, n, blocksize, type, err);
}

lf_status lf_quant_quantize_4bit_bf16(uint8_t *packed, float *absmax, const uint16_t *x, int64_t n,
                                      int64_t blocksize, lf_quant_type type, lf_err *err) {
    return quantize_4bit(packed, absmax, x, load_bf16, n, blocksize, type, err);
}

lf_status lf_quant_dequantize_4bit_ref(float *out, const uint8_t *packed, const float *absmax, int64_t n,
                                       int64_t blocksize, lf_quant_type type, lf_err *err) {
    if (lf_quant_check_blocksize(blocksize, err)) return LF_EINVAL;
    if (!valid_type(type)) return lf_err_set(err, LF_EINVAL, "quant: unknown 4-bit type %d", (int)type);
    const float *code = lf_quant_code_table(type);
    for (int64_t e = 0; e < n; e++) out[e] = code[LF_QUANT_NIBBLE(packed, e)] * absmax[e / blocksize];
    return LF_OK;
}

lf_status lf_quant_quantize_blockwise_8bit(uint8_t *q, float *absmax2, const float *x, int64_t n, int64_t blocksize,
                                           const float map[LF_QUANT_DYN_MAP_SIZE], lf_err *err) {
    if (blocksize <= 0 || n < 0) return lf_err_set(err, LF_EINVAL, "quant: bad 8-bit blocksize/n");
    for (int64_t b = 0; b * blocksize < n; b++) {
        int64_t e0 = b * blocksize, e1 = e0 + blocksize < n ? e0 + blocksize : n;
        float a = 0.0f;
        for (int64_t e = e0; e < e1; e++)
            if (fabsf(x[e]) > a) a = fabsf(x[e]);
        absmax2[b] = a;
        float r = 1.0f / a;
        for (int64_t e = e0; e < e1; e++) {
            if (a == 0.0f) {
                q[e] = LF_QUANT_DYN_ZERO_CODE;
                continue;
            }
            /* x * (1/absmax2), as the kernel's vals[j] * smem_absmax_value (no clamp there: |v| <= 1 + 1 ulp,
             * which lands on the end codes 0 / 255 either way) */
            q[e] = cuda_dyn_code(map, x[e] * r);
        }
    }
    return LF_OK;
}

lf_status lf_quant_dequantize_blockwise_8bit(float *out, const uint8_t *q, const float *absmax2, int64_t n,
                                             int64_t blocksize, const float map[LF_QUANT_DYN_MAP_SIZE],
                                             float offset, lf_err *err) {
    if (blocksize <= 0 || n < 0) return lf_err_set(err, LF_EINVAL, "quant: bad 8-bit blocksize/n");
    for (int64_t e = 0; e < n; e++) {
        float v = map[q[e]] * absmax2[e / blocksize];
        out[e] = v + offset;
    }
    return LF_OK;
}

float lf_quant_mean_f32(const float *x, int64_t n) {
    if (n <= 0) return 0.0f;
    double s = 0.0, c = 0.0; /* Neumaier: the sum of f32 values to ~1e-32 relative */
    for (int64_t i = 0; i < n; i++) {
        double v = x[i], t = s + v;
        c += fabs(s) >= fabs(v) ? (s - t) + v : (v - t) + s;
        s = t;
    }
    return (float)((s + c) / (double)n);
}

/* ============================== quant state ============================== */

static lf_status shape_check(int64_t rows, int64_t cols, int64_t *n, lf_err *err) {
    if (rows <= 0 || cols <= 0 || rows > INT64_MAX / cols)
        return lf_err_set(err, LF_EINVAL, "quant: bad shape [%lld, %lld]", (long long)rows, (long long)cols);
    *n = rows * cols;
    return LF_OK;
}

lf_status lf_quant_quantize(lf_quant_state *st, const void *x, lf_dtype dt, int64_t rows, int64_t cols,
                            int64_t blocksize, lf_quant_type type, int double_quant, lf_err *err) {
    lf_status s = LF_OK;
    float *tmp = NULL;
    int64_t n = 0;
    memset(st, 0, sizeof(*st));
    if ((s = shape_check(rows, cols, &n, err))) return s;
    if ((s = lf_quant_check_blocksize(blocksize, err))) return s;
    if (!valid_type(type)) return lf_err_set(err, LF_EINVAL, "quant: unknown 4-bit type %d", (int)type);
    if (dt != LF_DTYPE_F32 && dt != LF_DTYPE_BF16)
        return lf_err_set(err, LF_EUNSUPPORTED, "quant: cannot quantize dtype %s (F32 or BF16)", lf_dtype_name(dt));
    int64_t nblocks = (n + blocksize - 1) / blocksize;
    int64_t nn = (nblocks + LF_QUANT_NESTED_BLOCK - 1) / LF_QUANT_NESTED_BLOCK;
    size_t packed_b = (size_t)((n + 1) / 2), off_abs = (packed_b + 15) & ~(size_t)15;
    size_t abs_b = double_quant ? (size_t)nblocks : (size_t)nblocks * 4, off_nest = (off_abs + abs_b + 15) & ~(size_t)15;
    size_t total = off_nest + (double_quant ? (size_t)nn * 4 : 0);
    char *mem = malloc(total);
    LF_CHECK_ALLOC(mem, err);
    st->owned = mem;
    st->type = type;
    st->blocksize = blocksize;
    st->n = n;
    st->rows = rows;
    st->cols = cols;
    st->nblocks = nblocks;
    st->packed = (uint8_t *)mem;
    if (!double_quant) {
        st->absmax = (float *)(mem + off_abs);
        s = dt == LF_DTYPE_F32 ? lf_quant_quantize_4bit_f32(st->packed, st->absmax, x, n, blocksize, type, err)
                               : lf_quant_quantize_4bit_bf16(st->packed, st->absmax, x, n, blocksize, type, err);
        if (s) goto fail;
        return LF_OK;
    }
    tmp = malloc((size_t)nblocks * 4);
    LF_CHECK_ALLOC(tmp, err);
    s = dt == LF_DTYPE_F32 ? lf_quant_quantize_4bit_f32(st->packed, tmp, x, n, blocksize, type, err)
                           : lf_quant_quantize_4bit_bf16(st->packed, tmp, x, n, blocksize, type, err);
    if (s) goto fail;
    st->nested = 1;
    st->absmax_q = (uint8_t *)(mem + off_abs);
    st->nested_absmax = (float *)(mem + off_nest);
    st->nested_blocksize = LF_QUANT_NESTED_BLOCK;
    st->n_nested = nn;
    lf_quant_dynamic_map_signed(st->nested_map);
    st->offset = lf_quant_mean_f32(tmp, nblocks);
    for (int64_t b = 0; b < nblocks; b++) tmp[b] = tmp[b] - st->offset;
    if ((s = lf_quant_quantize_blockwise_8bit(st->absmax_q, st->nested_absmax, tmp, nblocks, LF_QUANT_NESTED_BLOCK,
                                              st->nested_map, err)))
        goto fail;
    free(tmp);
    return LF_OK;
fail:
    free(tmp);
    lf_quant_state_free(st);
    return s ? s : LF_ENOMEM;
}

lf_status lf_quant_state_view(lf_quant_state *st, lf_quant_type type, int64_t rows, int64_t cols, int64_t blocksize,
                              const void *packed, size_t packed_nbytes, const void *absmax, size_t absmax_nbytes,
                              int nested, const float *nested_absmax, size_t nested_absmax_nbytes,
                              const float *nested_map, float offset, lf_err *err) {
    lf_status s;
    int64_t n = 0;
    memset(st, 0, sizeof(*st));
    if ((s = shape_check(rows, cols, &n, err))) return s;
    if ((s = lf_quant_check_blocksize(blocksize, err))) return s;
    if (!valid_type(type)) return lf_err_set(err, LF_EINVAL, "quant: unknown 4-bit type %d", (int)type);
    int64_t nblocks = (n + blocksize - 1) / blocksize;
    int64_t nn = (nblocks + LF_QUANT_NESTED_BLOCK - 1) / LF_QUANT_NESTED_BLOCK;
    if (!packed || packed_nbytes != (size_t)((n + 1) / 2))
        return lf_err_set(err, LF_EFORMAT, "quant: packed data has %zu bytes, shape [%lld, %lld] needs %lld",
                          packed_nbytes, (long long)rows, (long long)cols, (long long)((n + 1) / 2));
    size_t want_abs = nested ? (size_t)nblocks : (size_t)nblocks * 4;
    if (!absmax || absmax_nbytes != want_abs)
        return lf_err_set(err, LF_EFORMAT, "quant: absmax has %zu bytes, %lld blocks of %lld need %zu (%s)",
                          absmax_nbytes, (long long)nblocks, (long long)blocksize, want_abs, nested ? "U8" : "F32");
    if (nested) {
        if (!nested_absmax || nested_absmax_nbytes != (size_t)nn * 4)
            return lf_err_set(err, LF_EFORMAT, "quant: nested_absmax has %zu bytes, %lld blocks need %lld",
                              nested_absmax_nbytes, (long long)nblocks, (long long)nn * 4);
        if (!nested_map) return lf_err_set(err, LF_EFORMAT, "quant: nested quant map missing");
        memcpy(st->nested_map, nested_map, sizeof(st->nested_map));
        st->absmax_q = (uint8_t *)(uintptr_t)absmax;
        st->nested_absmax = (float *)(uintptr_t)nested_absmax;
        st->nested_blocksize = LF_QUANT_NESTED_BLOCK;
        st->n_nested = nn;
        st->offset = offset;
        st->nested = 1;
    } else {
        st->absmax = (float *)(uintptr_t)absmax;
    }
    st->type = type;
    st->blocksize = blocksize;
    st->n = n;
    st->rows = rows;
    st->cols = cols;
    st->nblocks = nblocks;
    st->packed = (uint8_t *)(uintptr_t)packed;
    return LF_OK;
}

size_t lf_quant_state_nbytes(const lf_quant_state *st) {
    if (!st || !st->packed) return 0;
    size_t b = (size_t)((st->n + 1) / 2);
    if (st->nested) return b + (size_t)st->nblocks + (size_t)st->n_nested * 4 + sizeof(st->nested_map);
    return b + (size_t)st->nblocks * 4;
}

void lf_quant_state_free(lf_quant_state *st) {
    if (!st) return;
    free(st->owned);
    memset(st, 0, sizeof(*st));
}

float lf_quant_state_absmax(const lf_quant_state *st, int64_t b) {
    if (!st->nested) return st->absmax[b];
    float v = st->nested_map[st->absmax_q[b]] * st->nested_absmax[b / LF_QUANT_NESTED_BLOCK];
    return v + st->offset; /* two f32 ops, as dequantize_blockwise(...) + offset */
}

/* ============================== SIMD dispatch ============================== */

static int g_simd = -1; /* -1: not probed yet; else the LF_QUANT_SIMD_* level in use */

static int cpu_simd_level(void) {
#if LF_QUANT_X86
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return LF_QUANT_SIMD_PORTABLE;
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw")) return LF_QUANT_SIMD_AVX2;
    if (__builtin_cpu_supports("avx512bf16")) return LF_QUANT_SIMD_AVX512_BF16;
    return LF_QUANT_SIMD_AVX512;
#else
    return LF_QUANT_SIMD_PORTABLE;
#endif
}

int lf_quant_simd_active(void) {
    if (g_simd < 0) {
        int lvl = cpu_simd_level();
        const char *env = getenv("LF_QUANT_SIMD"); /* cap for benchmarks: portable | avx2 | avx512 (no BF16) */
        if (env && strcmp(env, "portable") == 0) lvl = LF_QUANT_SIMD_PORTABLE;
        else if (env && strcmp(env, "avx2") == 0 && lvl > LF_QUANT_SIMD_AVX2) lvl = LF_QUANT_SIMD_AVX2;
        else if (env && strcmp(env, "avx512") == 0 && lvl > LF_QUANT_SIMD_AVX512) lvl = LF_QUANT_SIMD_AVX512;
        g_simd = lvl;
    }
    return g_simd;
}

void lf_quant_set_simd(int enabled) { g_simd = enabled ? cpu_simd_level() : LF_QUANT_SIMD_PORTABLE; }

int lf_quant_set_simd_level(int level) {
    int best = cpu_simd_level();
    g_simd = level <= LF_QUANT_SIMD_PORTABLE ? LF_QUANT_SIMD_PORTABLE : level < best ? level : best;
    return g_simd;
}

/* ============================== SIMD decode ============================== */
/* Dequantize computes w = code[q] * absmax (one f32 multiply) on every path, bit-identical to the _ref; the
 * matmuls use the same terms and differ from their _ref only in summation order.
 * Nibble -> code lookups, natural element order (element 2j = high nibble of byte j):
 *  - AVX2, 8 weights from 4 bytes: broadcast the 4 bytes, vpshufb puts byte k/2 in the low byte of dword k,
 *    vpsrlvd by (4,0,4,0,..) brings the wanted nibble to bits 3:0; two vpermps look up the 8-entry halves of
 *    the table (they read bits 2:0) and vblendvps picks by bit 3 (moved to the sign bit).
 *  - AVX-512, 32 weights from 16 bytes: broadcast the 16 bytes to every 128-bit lane, two vpshufb + vpsrlvd
 *    as above, then one vpermps each looks up the whole 16-entry table held in a register.
 *  - AVX-512 GEMV (mm_seg512, T <= 2), even/odd order: vpmovzxbd of the 16 bytes, vpermps of it (low nibbles:
 *    odd elements) and of it >> 4 (high nibbles: even elements), against x split into even/odd lanes by two
 *    vpermt2ps per token: one shuffle and one shift fewer per 32 weights. */

#if LF_QUANT_X86
#define QAVX2 static inline __attribute__((always_inline, target("avx2,fma")))
#define QAVX512 static inline __attribute__((always_inline, target("avx2,fma,avx512f,avx512bw")))
#define QAVX2_FN __attribute__((target("avx2,fma")))
#define QAVX512_FN __attribute__((target("avx2,fma,avx512f,avx512bw")))

typedef struct q4k256 {
    __m256 lo, hi;    /* code[0..7], code[8..15] */
    __m256i ctl, sh;  /* vpshufb control, per-dword right shifts */
} q4k256;

QAVX2 q4k256 q4k256_make(const float *code) {
    q4k256 k;
    k.lo = _mm256_loadu_ps(code);
    k.hi = _mm256_loadu_ps(code + 8);
    /* dword k <- byte k/2 of the broadcast dword (lanes hold bytes 0..3 each; lane 1 covers elements 4..7) */
    k.ctl = _mm256_setr_epi32((int)0x80808000, (int)0x80808000, (int)0x80808001, (int)0x80808001,
                              (int)0x80808002, (int)0x80808002, (int)0x80808003, (int)0x80808003);
    k.sh = _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0);
    return k;
}

/* Codes of the 8 elements in bytes p[0..3]. */
QAVX2 __m256 q4_dec8(const uint8_t *p, const q4k256 *k) {
    int32_t v;
    memcpy(&v, p, 4);
    __m256i d = _mm256_srlv_epi32(_mm256_shuffle_epi8(_mm256_set1_epi32(v), k->ctl), k->sh);
    __m256 lo = _mm256_permutevar8x32_ps(k->lo, d), hi = _mm256_permutevar8x32_ps(k->hi, d);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(d, 28)));
}

typedef struct q4k512 {
    __m512 t;               /* the 16 codes */
    __m512i ctl0, ctl1, sh; /* vpshufb controls for elements 0..15 / 16..31, per-dword right shifts */
} q4k512;

/* dword i <- byte i/2 (elements 0..15) or 8 + i/2 (16..31) of the 16 bytes every 128-bit lane holds */
static const int32_t q4_ctl512[2][16] __attribute__((aligned(64))) = {
    {(int32_t)0x80808000, (int32_t)0x80808000, (int32_t)0x80808001, (int32_t)0x80808001, (int32_t)0x80808002,
     (int32_t)0x80808002, (int32_t)0x80808003, (int32_t)0x80808003, (int32_t)0x80808004, (int32_t)0x80808004,
     (int32_t)0x80808005, (int32_t)0x80808005, (int32_t)0x80808006, (int32_t)0x80808006, (int32_t)0x80808007,
     (int32_t)0x80808007},
    {(int32_t)0x80808008, (int32_t)0x80808008, (int32_t)0x80808009, (int32_t)0x80808009, (int32_t)0x8080800a,
     (int32_t)0x8080800a, (int32_t)0x8080800b, (int32_t)0x8080800b, (int32_t)0x8080800c, (int32_t)0x8080800c,
     (int32_t)0x8080800d, (int32_t)0x8080800d, (int32_t)0x8080800e, (int32_t)0x8080800e, (int32_t)0x8080800f,
     (int32_t)0x8080800f}};
static const int32_t q4_sh512[16] __attribute__((aligned(64))) = {4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0};

QAVX512 q4k512 q4k512_make(const float *code) {
    q4k512 k;
    k.t = _mm512_loadu_ps(code);
    k.ctl0 = _mm512_load_si512(q4_ctl512[0]);
    k.ctl1 = _mm512_load_si512(q4_ctl512[1]);
    k.sh = _mm512_load_si512(q4_sh512);
    return k;
}

/* Codes of the 32 elements in bytes p[0..15]: elements 0..15 in *w0, 16..31 in *w1. */
QAVX512 void q4_dec32(const uint8_t *p, const q4k512 *k, __m512 *w0, __m512 *w1) {
    __m512i b = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)p));
    *w0 = _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_shuffle_epi8(b, k->ctl0), k->sh), k->t);
    *w1 = _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_shuffle_epi8(b, k->ctl1), k->sh), k->t);
}

/* f32 -> bf16 bits (in the low half of each dword), round to nearest even as lf_f32_to_bf16, for non-NaN
 * inputs (the callers take blocks whose absmax is not finite, the only source of NaN, the scalar way). */
QAVX2 __m256i q4_bf16_round256(__m256 v) {
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    return _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
}

QAVX512 __m512i q4_bf16_round512(__m512 v) {
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    return _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
}
#endif

/* ============================== dequantize ============================== */

/* byte -> {code[hi], code[lo]}: one LUT per type, built once. */
static float g_lut[2][256][2];
static pthread_once_t g_lut_once = PTHREAD_ONCE_INIT;
static void lut_init(void) {
    for (int t = 0; t < 2; t++) {
        const float *code = lf_quant_code_table((lf_quant_type)t);
        for (int b = 0; b < 256; b++) {
            g_lut[t][b][0] = code[b >> 4];
            g_lut[t][b][1] = code[b & 15];
        }
    }
}

/* out (f32, or bf16 when o16) [2*nbytes] = codes of p[0..nbytes) * a. */
static void decode_bytes_portable(float *out, uint16_t *o16, const uint8_t *p, int64_t nbytes, const float (*lut)[2],
                                  float a) {
    for (int64_t j = 0; j < nbytes; j++) {
        const float *pair = lut[p[j]];
        float v0 = pair[0] * a, v1 = pair[1] * a;
        if (o16) {
            o16[2 * j] = lf_f32_to_bf16(v0);
            o16[2 * j + 1] = lf_f32_to_bf16(v1);
        } else {
            out[2 * j] = v0;
            out[2 * j + 1] = v1;
        }
    }
}

#if LF_QUANT_X86
/* f32 codes of p[0..nbytes) * a (nbytes % 4 == 0) into out. */
QAVX2 void decode_bytes_avx2(float *out, const uint8_t *p, int64_t nbytes, const q4k256 *k, float a) {
    const __m256 va = _mm256_set1_ps(a);
    for (int64_t j = 0; j < nbytes; j += 4) _mm256_storeu_ps(out + 2 * j, _mm256_mul_ps(q4_dec8(p + j, k), va));
}

/* Whole blocks [e0, e1) of st (e0 starts a block, e1 ends one or is n) into out or o16 (element e0 first):
 * the dequantize driver. The bit-exact product code * absmax, rounded to bf16 for o16. */
QAVX2_FN static void decode_blocks_avx2(const lf_quant_state *st, int64_t e0, int64_t e1, float *out, uint16_t *o16) {
    const q4k256 k = q4k256_make(lf_quant_code_table(st->type));
    const float (*lut)[2] = g_lut[st->type == LF_QUANT_FP4];
    const int64_t B = st->blocksize;
    int64_t b = e0 / B;
    for (int64_t e = e0; e < e1; e += B) {
        const int64_t len = e1 - e < B ? e1 - e : B, nb = len / 2, o = e - e0;
        const float a = lf_quant_state_absmax(st, b++);
        const uint8_t *p = st->packed + e / 2;
        int64_t j = 0;
        if (!o16) {
            j = nb & ~(int64_t)3;
            decode_bytes_avx2(out + o, p, j, &k, a);
        } else if (isfinite(a)) {
            const __m256 va = _mm256_set1_ps(a);
            for (; j + 8 <= nb; j += 8) { /* 16 elements -> 16 bf16 */
                __m256i h = _mm256_packus_epi32(q4_bf16_round256(_mm256_mul_ps(q4_dec8(p + j, &k), va)),
                                                q4_bf16_round256(_mm256_mul_ps(q4_dec8(p + j + 4, &k), va)));
                _mm256_storeu_si256((__m256i *)(o16 + o + 2 * j), _mm256_permute4x64_epi64(h, 0xD8));
            }
        }
        if (j < nb)
            decode_bytes_portable(out ? out + o + 2 * j : NULL, o16 ? o16 + o + 2 * j : NULL, p + j, nb - j, lut, a);
        if (len & 1) { /* odd n: the last element, high nibble of its byte */
            const float v = lut[p[nb]][0] * a;
            if (o16) o16[o + len - 1] = lf_f32_to_bf16(v); else out[o + len - 1] = v;
        }
    }
}

/* AVX512_BF16: vcvtne2ps2bf16 rounds to nearest even like lf_f32_to_bf16 for normal numbers and zeros but
 * flushes subnormal inputs; with 2^-100 <= |absmax| < inf every product code * absmax is zero or normal
 * (the smallest nonzero |code| is 1/192), so blocks in that range take it and give the same bits. */
__attribute__((target("avx2,fma,avx512f,avx512bw,avx512bf16"))) static int64_t
decode_bf16cvt(uint16_t *o16, const uint8_t *p, int64_t nb, const q4k512 *k, float a) {
    const __m512 va = _mm512_set1_ps(a);
    int64_t j = 0;
    for (; j + 16 <= nb; j += 16) {
        __m512 w0, w1;
        q4_dec32(p + j, k, &w0, &w1);
        __m512bh h = _mm512_cvtne2ps_pbh(_mm512_mul_ps(w1, va), _mm512_mul_ps(w0, va)); /* w0 in the low half */
        _mm512_storeu_si512(o16 + 2 * j, (__m512i)h);
    }
    return j;
}

QAVX512_FN static void decode_blocks_avx512(const lf_quant_state *st, int64_t e0, int64_t e1, float *out,
                                            uint16_t *o16, int simd) {
    const q4k512 k = q4k512_make(lf_quant_code_table(st->type));
    const q4k256 k2 = q4k256_make(lf_quant_code_table(st->type));
    const float (*lut)[2] = g_lut[st->type == LF_QUANT_FP4];
    const __m512i order = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7); /* undo packus' lane interleave */
    const int64_t B = st->blocksize;
    int64_t b = e0 / B;
    for (int64_t e = e0; e < e1; e += B) {
        const int64_t len = e1 - e < B ? e1 - e : B, nb = len / 2, o = e - e0;
        const float a = lf_quant_state_absmax(st, b++);
        const uint8_t *p = st->packed + e / 2;
        const __m512 va = _mm512_set1_ps(a);
        int64_t j = 0;
        if (!o16) {
            for (; j + 16 <= nb; j += 16) {
                __m512 w0, w1;
                q4_dec32(p + j, &k, &w0, &w1);
                _mm512_storeu_ps(out + o + 2 * j, _mm512_mul_ps(w0, va));
                _mm512_storeu_ps(out + o + 2 * j + 16, _mm512_mul_ps(w1, va));
            }
            const int64_t j4 = (nb - j) & ~(int64_t)3; /* ragged last block: 8 at a time */
            decode_bytes_avx2(out + o + 2 * j, p + j, j4, &k2, a);
            j += j4;
        } else if (simd >= LF_QUANT_SIMD_AVX512_BF16 && fabsf(a) >= 0x1p-100f && fabsf(a) <= FLT_MAX) {
            j = decode_bf16cvt(o16 + o, p, nb, &k, a);
        } else if (isfinite(a)) {
            for (; j + 16 <= nb; j += 16) {
                __m512 w0, w1;
                q4_dec32(p + j, &k, &w0, &w1);
                __m512i h = _mm512_packus_epi32(q4_bf16_round512(_mm512_mul_ps(w0, va)),
                                                q4_bf16_round512(_mm512_mul_ps(w1, va)));
                _mm512_storeu_si512(o16 + o + 2 * j, _mm512_permutexvar_epi64(order, h));
            }
        }
        if (j < nb)
            decode_bytes_portable(out ? out + o + 2 * j : NULL, o16 ? o16 + o + 2 * j : NULL, p + j, nb - j, lut, a);
        if (len & 1) {
            const float v = lut[p[nb]][0] * a;
            if (o16) o16[o + len - 1] = lf_f32_to_bf16(v); else out[o + len - 1] = v;
        }
    }
}
#endif

#if LF_QUANT_X86
QAVX2_FN static void decode_range_avx2(float *out, const uint8_t *p, int64_t nbytes, const float *code, float a) {
    const q4k256 k = q4k256_make(code);
    decode_bytes_avx2(out, p, nbytes, &k, a);
}
#endif

/* Elements [e0, e0+len) of st into out (f32) or o16 (bf16, when non-NULL): any start parity, any block
 * crossing. */
static void decode_range(const lf_quant_state *st, int64_t e0, int64_t len, float *out, uint16_t *o16, int simd) {
    const float *code = lf_quant_code_table(st->type);
    const float (*lut)[2] = g_lut[st->type == LF_QUANT_FP4];
    const int64_t B = st->blocksize, end = e0 + len;
    int64_t e = e0, i = 0; /* i: output index */
    (void)simd;
    while (e < end) {
        int64_t b = e / B, bend = (b + 1) * B < end ? (b + 1) * B : end;
        float a = lf_quant_state_absmax(st, b);
        if (e & 1) {
            float v = code[LF_QUANT_NIBBLE(st->packed, e)] * a;
            if (o16) o16[i++] = lf_f32_to_bf16(v); else out[i++] = v;
            e++;
        }
        int64_t np = (bend - e) / 2, done = 0;
        const uint8_t *p = st->packed + e / 2;
#if LF_QUANT_X86
        if (simd >= LF_QUANT_SIMD_AVX2 && !o16) {
            done = np & ~(int64_t)3;
            decode_range_avx2(out + i, p, done, code, a);
        }
#endif
        decode_bytes_portable(out ? out + i + 2 * done : NULL, o16 ? o16 + i + 2 * done : NULL, p + done, np - done,
                              lut, a);
        i += 2 * np;
        e += 2 * np;
        if (e < bend) {
            float v = code[LF_QUANT_NIBBLE(st->packed, e)] * a;
            if (o16) o16[i++] = lf_f32_to_bf16(v); else out[i++] = v;
            e++;
        }
    }
}

typedef struct dq_job {
    const lf_quant_state *st;
    float *out_f32;
    uint16_t *out_bf16;
    int simd;
} dq_job;

/* Work items are groups of 16 blocks. */
#define DQ_GROUP 16

static void dq_run(void *ctx, int64_t begin, int64_t end, int tid) {
    const dq_job *j = ctx;
    const lf_quant_state *st = j->st;
    (void)tid;
    int64_t e0 = begin * DQ_GROUP * st->blocksize, e1 = end * DQ_GROUP * st->blocksize;
    if (e1 > st->n) e1 = st->n;
    float *of = j->out_f32 ? j->out_f32 + e0 : NULL;
    uint16_t *ob = j->out_bf16 ? j->out_bf16 + e0 : NULL;
#if LF_QUANT_X86
    if (j->simd >= LF_QUANT_SIMD_AVX512) {
        decode_blocks_avx512(st, e0, e1, of, ob, j->simd);
        return;
    }
    if (j->simd >= LF_QUANT_SIMD_AVX2) {
        decode_blocks_avx2(st, e0, e1, of, ob);
        return;
    }
#endif
    decode_range(st, e0, e1 - e0, of, ob, j->simd);
}

static lf_status dq_check(const lf_quant_state *st, const void *out, lf_err *err) {
    if (!st || !st->packed || !out) return lf_err_set(err, LF_EINVAL, "quant: dequantize of an empty state");
    return LF_OK;
}

static lf_status dequantize(const lf_quant_state *st, float *of, uint16_t *ob, lf_pool *pool, lf_err *err) {
    lf_status s = dq_check(st, of ? (const void *)of : (const void *)ob, err);
    if (s) return s;
    pthread_once(&g_lut_once, lut_init);
    dq_job j = {st, of, ob, lf_quant_simd_active()};
    int64_t groups = (st->nblocks + DQ_GROUP - 1) / DQ_GROUP;
    int64_t grain = 65536 / (DQ_GROUP * st->blocksize) + 1; /* >= 64K elements per chunk */
    lf_pool_parallel_for(pool, groups, grain, dq_run, &j);
    return LF_OK;
}

lf_status lf_quant_dequantize_f32(float *out, const lf_quant_state *st, lf_pool *pool, lf_err *err) {
    return dequantize(st, out, NULL, pool, err);
}

lf_status lf_quant_dequantize_bf16(uint16_t *out, const lf_quant_state *st, lf_pool *pool, lf_err *err) {
    return dequantize(st, NULL, out, pool, err);
}

lf_status lf_quant_dequantize_f32_ref(float *out, const lf_quant_state *st, lf_err *err) {
    lf_status s = dq_check(st, out, err);
    if (s) return s;
    const float *code = lf_quant_code_table(st->type);
    for (int64_t e = 0; e < st->n; e++)
        out[e] = code[LF_QUANT_NIBBLE(st->packed, e)] * lf_quant_state_absmax(st, e / st->blocksize);
    return LF_OK;
}

/* ============================== matmul ============================== */
/* out[T,OC] = inp[T,C] @ deq(W)^T (+ bias). Threads take tiles of consecutive rows of W (pool chunks).
 * Three drivers, by SIMD level, C and T:
 *  - rows (SIMD, C % 32 == 0, T <= 4 (AVX-512) / 2 (AVX2): decode and small batches): tiles of MM_ROWS = 4
 *    rows, decoded 32 (AVX-512) or 8 (AVX2) columns at a time into registers and FMA'd into 4 x T
 *    accumulators along C (each decoded weight serves every token, each input vector 4 rows). Rows stream
 *    once from memory, each prefetched one tile ahead. C % 32 == 0 and B % 32 == 0 put every 32-column chunk of
 *    a row inside one block, so C is walked in segments that stay in one block for all 4 rows; with C % B == 0
 *    (the usual case) a segment is one block and the 4 rows' absmax values are decoded MM_AB blocks at a
 *    time (double quant: map[q] * absmax2 + offset). For T <= 2 each segment's x*code sum is scaled by its
 *    absmax once (acc += s * absmax); for T > 2 the decoded codes are scaled (fewer registers).
 *  - panel (SIMD, C % 32 == 0, larger T: batches and prefill): a tile's rows (AVX-512: MM_PR = 8 rows x
 *    MM_PKC = 512 columns; AVX2: 4 x 1024) are decoded once into an f32 panel in the thread's scratch (16 KiB,
 *    stays in L1) and every group of tokens runs a dot-product microkernel over it (AVX-512: 8 rows x 3
 *    tokens = 24 zmm accumulators, reduced 8 rows at a time by a shuffle tree; AVX2: 4 rows x 2 tokens);
 *    later column panels add into out.
 *  - generic (portable, or C % 32 != 0: rows that start mid-byte or mid-chunk): MM_ROWS x MM_COLS of W
 *    decoded by decode_range into the scratch, then one dot product per row and token.
 * Precision: products use the dequantized weight code*absmax (or, for the segment-scaled sums,
 * absmax * sum(x * code), the same terms grouped differently); sums are f32 in a blocked order, within about
 * C * 2^-24 * sum |x w| of the exact result (tests use C * 1e-6). */

#define MM_ROWS 4  /* rows / generic drivers, AVX2 panel: W rows per tile */
#define MM_PR 8    /* AVX-512 panel driver: W rows per tile */
#define MM_MAXR 8  /* the largest tile */
#define MM_COLS (LF_QUANT_MM_SCRATCH_FLOATS / MM_ROWS) /* generic driver: columns decoded per step */
#define MM_KC (LF_QUANT_MM_SCRATCH_FLOATS / MM_ROWS)   /* AVX2 panel: columns per panel */
#define MM_PKC (LF_QUANT_MM_SCRATCH_FLOATS / MM_PR)    /* AVX-512 panel: columns per panel */
#define MM_TG 4          /* rows driver (AVX-512): tokens at most */
#define MM_TG2 2         /* rows driver and panel microkernel (AVX2): tokens at most */
#define MM_PTG 3         /* AVX-512 panel microkernel: tokens */
#define MM_PF_MIN 1024   /* rows driver: software prefetch distance = one tile's bytes, clamped to these */
#define MM_PF_MAX 16384
#define MM_AB 64         /* rows driver: block absmax values decoded per row at a time */
_Static_assert(MM_KC % 32 == 0 && MM_PKC % 32 == 0, "panel columns are whole 32-column chunks");
_Static_assert(MM_PTG <= MM_TG && MM_TG2 <= MM_TG, "token groups");

static void dot4_portable(float *res, const float *x, const float *w, int64_t ldw, int64_t C) {
    for (int r = 0; r < MM_ROWS; r++) {
        const float *wr = w + r * ldw;
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int64_t c = 0;
        for (; c + 4 <= C; c += 4) {
            s0 += x[c] * wr[c];
            s1 += x[c + 1] * wr[c + 1];
            s2 += x[c + 2] * wr[c + 2];
            s3 += x[c + 3] * wr[c + 3];
        }
        for (; c < C; c++) s0 += x[c] * wr[c];
        res[r] = (s0 + s1) + (s2 + s3);
    }
}

enum { MM_GENERIC = 0, MM_REGS = 1, MM_PANEL = 2 };

typedef struct mm_job {
    float *out;
    const float *inp, *bias;
    const lf_quant_state *W;
    int64_t T, C, OC;
    float *scratch; /* [threads, LF_QUANT_MM_SCRATCH_FLOATS] */
    int simd;
    int driver;  /* MM_GENERIC, MM_REGS, MM_PANEL */
    int rows;    /* W rows per tile */
    int lb;      /* log2(blocksize) */
    int aligned; /* C % B == 0: every row starts a block */
    int64_t pf;  /* rows driver: prefetch distance in bytes */
} mm_job;

/* The tile's rows: o[r] = o0 + r, clamped to the last row (a short last tile recomputes it, never stores it).
 * Returns the number of real rows. */
static int tile_rows(const mm_job *j, int64_t tile, int R, int64_t o[MM_MAXR]) {
    const int64_t o0 = tile * R, nr = j->OC - o0 < R ? j->OC - o0 : R;
    for (int r = 0; r < R; r++) o[r] = o0 + (r < nr ? r : nr - 1);
    return (int)nr;
}

/* Columns [c, return) of the R rows o[] lie in one block each (c and the result are multiples of 32 when C
 * is); a[r] = the absmax of row r's block there. */
static inline int64_t mm_segment(const mm_job *j, const int R, const int64_t *o, int64_t c, int64_t cend, float *a) {
    int64_t end = cend;
    for (int r = 0; r < R; r++) {
        const int64_t base = o[r] * j->C, b = (base + c) >> j->lb, next = ((b + 1) << j->lb) - base;
        if (next < end) end = next;
        a[r] = lf_quant_state_absmax(j->W, b);
    }
    return end;
}

/* C % B == 0 (every row starts a block): ab[r][i] = absmax of block cb + i of row o[r], i < MM_AB (blocks past
 * the row's end are not written). */
static inline void mm_absmax_rows(const mm_job *j, const int R, const int64_t *o, int64_t cb,
                                  float ab[MM_MAXR][MM_AB]) {
    const lf_quant_state *W = j->W;
    const int64_t nbr = j->C >> j->lb, n = nbr - cb < MM_AB ? nbr - cb : MM_AB;
    for (int r = 0; r < R; r++) {
        const int64_t b0 = o[r] * nbr + cb;
        if (!W->nested) {
            memcpy(ab[r], W->absmax + b0, (size_t)n * sizeof(float));
            continue;
        }
        const uint8_t *q = W->absmax_q + b0;
        const float *map = W->nested_map, off = W->offset;
        for (int64_t i = 0; i < n;) { /* runs of blocks sharing one nested absmax */
            const uint64_t b = (uint64_t)(b0 + i);
            const int64_t run = LF_QUANT_NESTED_BLOCK - (int64_t)(b % LF_QUANT_NESTED_BLOCK);
            const int64_t e = n - i < run ? n : i + run;
            const float a2 = W->nested_absmax[b / LF_QUANT_NESTED_BLOCK];
            for (; i < e; i++) { /* lf_quant_state_absmax: two f32 ops (-std=c11: no contraction) */
                const float v = map[q[i]] * a2;
                ab[r][i] = v + off;
            }
        }
    }
}

/* out[t0 + t, o0 + r] (t < nt, r < nr <= MM_ROWS) = s[r][t] + bias, or += s when !first. */
static inline void mm_store(const mm_job *j, int64_t o0, int nr, int nt, int64_t t0, float s[MM_ROWS][MM_TG],
                            int first) {
    for (int t = 0; t < nt && t < MM_TG; t++)
        for (int r = 0; r < nr && r < MM_ROWS; r++) {
            float *o = j->out + (t0 + t) * j->OC + o0 + r;
            *o = first ? s[r][t] + (j->bias ? j->bias[o0 + r] : 0.0f) : *o + s[r][t];
        }
}

static void mm_generic_tile(const mm_job *j, int64_t tile, float *w) {
    const int64_t C = j->C, OC = j->OC, o0 = tile * MM_ROWS, nr = OC - o0 < MM_ROWS ? OC - o0 : MM_ROWS;
    for (int64_t t = 0; t < j->T; t++)
        for (int64_t r = 0; r < nr; r++) j->out[t * OC + o0 + r] = j->bias ? j->bias[o0 + r] : 0.0f;
    for (int64_t c0 = 0; c0 < C; c0 += MM_COLS) {
        int64_t cb = C - c0 < MM_COLS ? C - c0 : MM_COLS;
        for (int64_t r = 0; r < nr; r++) decode_range(j->W, (o0 + r) * C + c0, cb, w + r * cb, NULL, j->simd);
        if (nr < MM_ROWS) memset(w + nr * cb, 0, (size_t)(MM_ROWS - nr) * (size_t)cb * sizeof(float));
        for (int64_t t = 0; t < j->T; t++) {
            float res[MM_ROWS];
            dot4_portable(res, j->inp + t * C + c0, w, cb, cb);
            for (int64_t r = 0; r < nr; r++) j->out[t * OC + o0 + r] += res[r];
        }
    }
}

#if LF_QUANT_X86
QAVX2 float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* ---- AVX-512 ---- */

/* (GCC's _mm512_reduce_add_ps goes through _mm256_undefined_ps, which -Wmaybe-uninitialized flags.) */
QAVX512 float hsum512(__m512 v) {
    v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4E));
    return hsum256(_mm512_castps512_ps256(v));
}

/* The lane sums of a[0..7] as one vector [sum a0, ..., sum a7] (24 shuffles/adds instead of 8 hsums). */
QAVX512 __m256 hsum512x8(const __m512 a[8]) {
    __m512 b[4], c[2];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) /* b[i] = [a(2i) lanes 0+2, 1+3 | a(2i+1) lanes 0+2, 1+3] */
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) /* lane L of c[i] = 4 partial sums of a(4i + L) */
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
    /* lane L: [a(L) p0+p1, a(L) p2+p3, a(4+L) p0+p1, a(4+L) p2+p3], then pairs summed */
    __m512 d = _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], 0x88), _mm512_shuffle_ps(c[0], c[1], 0xDD));
    d = _mm512_add_ps(d, _mm512_shuffle_ps(d, d, 0xB1));
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_castps512_ps256(_mm512_permutexvar_ps(idx, d));
}

/* One segment of the rows driver: columns [c, c + 32 * n) lie in one block of each row r (absmax a[r * as]).
 * SEG: s = sum x * code over the segment, then acc += s * absmax; else the decoded codes are scaled.
 * CPB: n as a compile-time constant (2: blocksize 64, the default), or 0 for a run-time n. */
QAVX512 void mm_seg512(const int NT, const int SEG, const int CPB, int64_t n, const uint8_t *const rp[MM_ROWS],
                       int64_t c, const float *x, int64_t C, const float *a, int64_t as, const q4k512 *k, int64_t pf,
                       __m512 acc[MM_ROWS][MM_TG]) {
    __m512 s[MM_ROWS][MM_TG];
#pragma GCC unroll 4
    for (int r = 0; r < MM_ROWS; r++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) s[r][t] = SEG ? _mm512_setzero_ps() : acc[r][t];
    const int64_t cnt = CPB ? CPB : n;
    if (SEG) { /* codes in even/odd order (one zero-extend + one shift per 32) against x split the same way */
        const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
#pragma GCC unroll 2
        for (int64_t i = 0; i < cnt; i++, c += 32) {
            __m512 xe[MM_TG], xo[MM_TG];
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) {
                const __m512 lo = _mm512_loadu_ps(x + t * C + c), hi = _mm512_loadu_ps(x + t * C + c + 16);
                xe[t] = _mm512_permutex2var_ps(lo, ev, hi);
                xo[t] = _mm512_permutex2var_ps(lo, od, hi);
            }
#pragma GCC unroll 4
            for (int r = 0; r < MM_ROWS; r++) {
                const uint8_t *p = rp[r] + (c >> 1);
                _mm_prefetch((const char *)((uintptr_t)p + (uintptr_t)pf), _MM_HINT_T0);
                const __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
                const __m512 we = _mm512_permutexvar_ps(_mm512_srli_epi32(d, 4), k->t); /* high nibbles */
                const __m512 wo = _mm512_permutexvar_ps(d, k->t);                       /* low nibbles */
#pragma GCC unroll 4
                for (int t = 0; t < NT; t++) {
                    s[r][t] = _mm512_fmadd_ps(xe[t], we, s[r][t]);
                    s[r][t] = _mm512_fmadd_ps(xo[t], wo, s[r][t]);
                }
            }
        }
    } else { /* natural order, codes scaled by absmax (x loads shared by NT > 2 tokens need no split) */
#pragma GCC unroll 2
        for (int64_t i = 0; i < cnt; i++, c += 32) {
#pragma GCC unroll 4
            for (int r = 0; r < MM_ROWS; r++) {
                const uint8_t *p = rp[r] + (c >> 1);
                _mm_prefetch((const char *)((uintptr_t)p + (uintptr_t)pf), _MM_HINT_T0);
                __m512 w0, w1;
                q4_dec32(p, k, &w0, &w1);
                const __m512 va = _mm512_set1_ps(a[r * as]);
                w0 = _mm512_mul_ps(w0, va);
                w1 = _mm512_mul_ps(w1, va);
#pragma GCC unroll 4
                for (int t = 0; t < NT; t++) {
                    s[r][t] = _mm512_fmadd_ps(_mm512_loadu_ps(x + t * C + c), w0, s[r][t]);
                    s[r][t] = _mm512_fmadd_ps(_mm512_loadu_ps(x + t * C + c + 16), w1, s[r][t]);
                }
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < MM_ROWS; r++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++)
            acc[r][t] = SEG ? _mm512_fmadd_ps(s[r][t], _mm512_set1_ps(a[r * as]), acc[r][t]) : s[r][t];
}

/* rows driver, NT tokens (1..MM_TG): out[t, o[r]] for the whole of C. */
QAVX512 void mm_rows512(const int NT, const mm_job *j, const int64_t o[MM_ROWS], int nr, const q4k512 *k) {
    const int64_t C = j->C, B = j->W->blocksize;
    const float *x = j->inp;
    const int SEG = NT <= 2;
    const uint8_t *rp[MM_ROWS];
    __m512 acc[MM_ROWS][MM_TG];
#pragma GCC unroll 4
    for (int r = 0; r < MM_ROWS; r++) {
        rp[r] = j->W->packed + ((o[r] * C) >> 1);
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) acc[r][t] = _mm512_setzero_ps();
    }
    if (j->aligned) { /* C % B == 0: blocks are [cb * B, (cb + 1) * B) of every row */
        float ab[MM_MAXR][MM_AB];
        const int64_t nbr = C >> j->lb;
        for (int64_t cb = 0; cb < nbr; cb++) {
            if (cb % MM_AB == 0) mm_absmax_rows(j, MM_ROWS, o, cb, ab);
            const float *a = &ab[0][cb % MM_AB];
            if (B == 64) mm_seg512(NT, SEG, 2, 2, rp, cb << j->lb, x, C, a, MM_AB, k, j->pf, acc);
            else mm_seg512(NT, SEG, 0, B >> 5, rp, cb << j->lb, x, C, a, MM_AB, k, j->pf, acc);
        }
    } else {
        for (int64_t c = 0; c < C;) {
            float a[MM_ROWS];
            const int64_t end = mm_segment(j, MM_ROWS, o, c, C, a);
            mm_seg512(NT, SEG, 0, (end - c) >> 5, rp, c, x, C, a, 1, k, j->pf, acc);
            c = end;
        }
    }
    float s[MM_ROWS][MM_TG];
#pragma GCC unroll 4
    for (int r = 0; r < MM_ROWS; r++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) s[r][t] = hsum512(acc[r][t]);
    mm_store(j, o[0], nr, NT, 0, s, 1);
}

/* panel[r * MM_PKC + i] = w[o[r], c0 + i] for r < MM_PR, i < kc (kc % 32 == 0). */
QAVX512 void mm_panel512(const mm_job *j, const int64_t o[MM_PR], int64_t c0, int64_t kc, float *panel,
                         const q4k512 *k) {
    const int64_t C = j->C;
    for (int64_t c = c0; c < c0 + kc;) {
        float a[MM_PR];
        const int64_t end = mm_segment(j, MM_PR, o, c, c0 + kc, a);
        for (int r = 0; r < MM_PR; r++) {
            const uint8_t *p = j->W->packed + ((o[r] * C) >> 1);
            const __m512 va = _mm512_set1_ps(a[r]);
            float *dst = panel + r * MM_PKC - c0;
            for (int64_t cc = c; cc < end; cc += 32) {
                __m512 w0, w1;
                q4_dec32(p + (cc >> 1), k, &w0, &w1);
                _mm512_storeu_ps(dst + cc, _mm512_mul_ps(w0, va));
                _mm512_storeu_ps(dst + cc + 16, _mm512_mul_ps(w1, va));
            }
        }
        c = end;
    }
}

/* NT tokens (1..MM_PTG) from t0 x the MM_PR panel rows over kc columns, into out (first panel: = + bias). */
QAVX512 void mm_dot512(const int NT, const mm_job *j, const float *panel, int64_t c0, int64_t kc, int64_t o0, int nr,
                       int64_t t0) {
    const float *x = j->inp + t0 * j->C + c0;
    __m512 acc[MM_PTG][MM_PR];
#pragma GCC unroll 3
    for (int t = 0; t < NT; t++)
#pragma GCC unroll 8
        for (int r = 0; r < MM_PR; r++) acc[t][r] = _mm512_setzero_ps();
    for (int64_t i = 0; i < kc; i += 16) {
        __m512 xv[MM_PTG];
#pragma GCC unroll 3
        for (int t = 0; t < NT; t++) xv[t] = _mm512_loadu_ps(x + t * j->C + i);
#pragma GCC unroll 8
        for (int r = 0; r < MM_PR; r++) {
            __m512 w = _mm512_loadu_ps(panel + r * MM_PKC + i);
            __asm__("" : "+v"(w)); /* keep w in a register: GCC would fold its load into each of the NT FMAs */
#pragma GCC unroll 3
            for (int t = 0; t < NT; t++) acc[t][r] = _mm512_fmadd_ps(xv[t], w, acc[t][r]);
        }
    }
    const int first = c0 == 0;
#pragma GCC unroll 3
    for (int t = 0; t < NT; t++) {
        __m256 sum = hsum512x8(acc[t]);
        float *o = j->out + (t0 + t) * j->OC + o0;
        if (nr == MM_PR) {
            __m256 base = first ? (j->bias ? _mm256_loadu_ps(j->bias + o0) : _mm256_setzero_ps()) : _mm256_loadu_ps(o);
            _mm256_storeu_ps(o, _mm256_add_ps(sum, base)); /* sum + bias, or old + sum */
        } else {
            float v[MM_PR];
            _mm256_storeu_ps(v, sum);
            for (int r = 0; r < nr; r++) o[r] = first ? v[r] + (j->bias ? j->bias[o0 + r] : 0.0f) : o[r] + v[r];
        }
    }
}

QAVX512_FN static void mm_tile512(const mm_job *j, int64_t tile, float *panel) {
    const q4k512 k = q4k512_make(lf_quant_code_table(j->W->type));
    int64_t o[MM_MAXR];
    const int nr = tile_rows(j, tile, j->rows, o);
    if (j->driver == MM_REGS) {
        switch (j->T) {
        case 1: mm_rows512(1, j, o, nr, &k); break;
        case 2: mm_rows512(2, j, o, nr, &k); break;
        case 3: mm_rows512(3, j, o, nr, &k); break;
        default: mm_rows512(4, j, o, nr, &k); break;
        }
        return;
    }
    for (int64_t c0 = 0; c0 < j->C; c0 += MM_PKC) {
        const int64_t kc = j->C - c0 < MM_PKC ? j->C - c0 : MM_PKC;
        mm_panel512(j, o, c0, kc, panel, &k);
        int64_t t = 0;
        for (; t + MM_PTG <= j->T; t += MM_PTG) mm_dot512(MM_PTG, j, panel, c0, kc, o[0], nr, t);
        if (j->T - t == 2) mm_dot512(2, j, panel, c0, kc, o[0], nr, t);
        else if (j->T - t == 1) mm_dot512(1, j, panel, c0, kc, o[0], nr, t);
    }
}

/* ---- AVX2 (16 ymm registers: 4 rows x up to 2 tokens) ---- */

/* AVX2 twin of mm_seg512 (8 columns per step; CPB counts 32-column chunks). */
QAVX2 void mm_seg256(const int NT, const int CPB, int64_t n, const uint8_t *const rp[MM_ROWS], int64_t c,
                     const float *x, int64_t C, const float *a, int64_t as, const q4k256 *k, int64_t pf,
                     __m256 acc[MM_ROWS][MM_TG2]) {
    __m256 s[MM_ROWS][MM_TG2];
#pragma GCC unroll 4
    for (int r = 0; r < MM_ROWS; r++)
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) s[r][t] = _mm256_setzero_ps();
    const int64_t cnt = 4 * (CPB ? CPB : n);
#pragma GCC unroll 8
    for (int64_t i = 0; i < cnt; i++, c += 8) {
#pragma GCC unroll 4
        for (int r = 0; r < MM_ROWS; r++) {
            const uint8_t *p = rp[r] + (c >> 1);
            if ((i & 3) == 0) _mm_prefetch((const char *)((uintptr_t)p + (uintptr_t)pf), _MM_HINT_T0);
            const __m256 w = q4_dec8(p, k);
#pragma GCC unroll 2
            for (int t = 0; t < NT; t++) s[r][t] = _mm256_fmadd_ps(_mm256_loadu_ps(x + t * C + c), w, s[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < MM_ROWS; r++)
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) acc[r][t] = _mm256_fmadd_ps(s[r][t], _mm256_set1_ps(a[r * as]), acc[r][t]);
}

QAVX2 void mm_rows256(const int NT, const mm_job *j, const int64_t o[MM_ROWS], int nr, const q4k256 *k) {
    const int64_t C = j->C, B = j->W->blocksize;
    const float *x = j->inp;
    const uint8_t *rp[MM_ROWS];
    __m256 acc[MM_ROWS][MM_TG2];
#pragma GCC unroll 4
    for (int r = 0; r < MM_ROWS; r++) {
        rp[r] = j->W->packed + ((o[r] * C) >> 1);
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) acc[r][t] = _mm256_setzero_ps();
    }
    if (j->aligned) {
        float ab[MM_MAXR][MM_AB];
        const int64_t nbr = C >> j->lb;
        for (int64_t cb = 0; cb < nbr; cb++) {
            if (cb % MM_AB == 0) mm_absmax_rows(j, MM_ROWS, o, cb, ab);
            const float *a = &ab[0][cb % MM_AB];
            if (B == 64) mm_seg256(NT, 2, 2, rp, cb << j->lb, x, C, a, MM_AB, k, j->pf, acc);
            else mm_seg256(NT, 0, B >> 5, rp, cb << j->lb, x, C, a, MM_AB, k, j->pf, acc);
        }
    } else {
        for (int64_t c = 0; c < C;) {
            float a[MM_ROWS];
            const int64_t end = mm_segment(j, MM_ROWS, o, c, C, a);
            mm_seg256(NT, 0, (end - c) >> 5, rp, c, x, C, a, 1, k, j->pf, acc);
            c = end;
        }
    }
    float s[MM_ROWS][MM_TG];
#pragma GCC unroll 4
    for (int r = 0; r < MM_ROWS; r++)
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) s[r][t] = hsum256(acc[r][t]);
    mm_store(j, o[0], nr, NT, 0, s, 1);
}

QAVX2 void mm_panel256(const mm_job *j, const int64_t o[MM_ROWS], int64_t c0, int64_t kc, float *panel,
                       const q4k256 *k) {
    const int64_t C = j->C;
    for (int64_t c = c0; c < c0 + kc;) {
        float a[MM_ROWS];
        const int64_t end = mm_segment(j, MM_ROWS, o, c, c0 + kc, a);
        for (int r = 0; r < MM_ROWS; r++) {
            const uint8_t *p = j->W->packed + ((o[r] * C) >> 1);
            const __m256 va = _mm256_set1_ps(a[r]);
            float *dst = panel + r * MM_KC - c0;
            for (int64_t cc = c; cc < end; cc += 8)
                _mm256_storeu_ps(dst + cc, _mm256_mul_ps(q4_dec8(p + (cc >> 1), k), va));
        }
        c = end;
    }
}

QAVX2 void mm_dot256(const int NT, const mm_job *j, const float *panel, int64_t c0, int64_t kc, int64_t o0, int nr,
                     int64_t t0) {
    const float *x = j->inp + t0 * j->C + c0;
    __m256 acc[MM_ROWS][MM_TG2];
#pragma GCC unroll 4
    for (int r = 0; r < MM_ROWS; r++)
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) acc[r][t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < kc; i += 8) {
        __m256 xv[MM_TG2];
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) xv[t] = _mm256_loadu_ps(x + t * j->C + i);
#pragma GCC unroll 4
        for (int r = 0; r < MM_ROWS; r++) {
            const __m256 w = _mm256_loadu_ps(panel + r * MM_KC + i);
#pragma GCC unroll 2
            for (int t = 0; t < NT; t++) acc[r][t] = _mm256_fmadd_ps(xv[t], w, acc[r][t]);
        }
    }
    float s[MM_ROWS][MM_TG];
#pragma GCC unroll 4
    for (int r = 0; r < MM_ROWS; r++)
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) s[r][t] = hsum256(acc[r][t]);
    mm_store(j, o0, nr, NT, t0, s, c0 == 0);
}

QAVX2_FN static void mm_tile256(const mm_job *j, int64_t tile, float *panel) {
    const q4k256 k = q4k256_make(lf_quant_code_table(j->W->type));
    int64_t o[MM_MAXR];
    const int nr = tile_rows(j, tile, MM_ROWS, o);
    if (j->driver == MM_REGS) {
        if (j->T == 1) mm_rows256(1, j, o, nr, &k);
        else mm_rows256(2, j, o, nr, &k);
        return;
    }
    for (int64_t c0 = 0; c0 < j->C; c0 += MM_KC) {
        const int64_t kc = j->C - c0 < MM_KC ? j->C - c0 : MM_KC;
        mm_panel256(j, o, c0, kc, panel, &k);
        int64_t t = 0;
        for (; t + MM_TG2 <= j->T; t += MM_TG2) mm_dot256(MM_TG2, j, panel, c0, kc, o[0], nr, t);
        if (t < j->T) mm_dot256(1, j, panel, c0, kc, o[0], nr, t);
    }
}
#endif

static void mm_run(void *ctx, int64_t begin, int64_t end, int tid) {
    const mm_job *j = ctx;
    float *w = j->scratch ? j->scratch + (size_t)tid * LF_QUANT_MM_SCRATCH_FLOATS : NULL;
    for (int64_t tile = begin; tile < end; tile++) {
#if LF_QUANT_X86
        if (j->driver != MM_GENERIC && j->simd >= LF_QUANT_SIMD_AVX512) {
            mm_tile512(j, tile, w);
            continue;
        }
        if (j->driver != MM_GENERIC && j->simd >= LF_QUANT_SIMD_AVX2) {
            mm_tile256(j, tile, w);
            continue;
        }
#endif
        mm_generic_tile(j, tile, w);
    }
}

static lf_status mm_check(const float *out, const float *inp, const lf_quant_state *W, int64_t T, int64_t C,
                          int64_t OC, lf_err *err) {
    if (!out || !inp || !W || !W->packed) return lf_err_set(err, LF_EINVAL, "quant matmul: NULL argument");
    if (T < 0 || C != W->cols || OC != W->rows)
        return lf_err_set(err, LF_EINVAL, "quant matmul: W is [%lld, %lld], asked for OC=%lld C=%lld (T=%lld)",
                          (long long)W->rows, (long long)W->cols, (long long)OC, (long long)C, (long long)T);
    return LF_OK;
}

lf_status lf_quant_matmul_4bit(float *out, const float *inp, const lf_quant_state *W, const float *bias, int64_t T,
                               int64_t C, int64_t OC, lf_pool *pool, float *scratch, lf_err *err) {
    lf_status s = mm_check(out, inp, W, T, C, OC, err);
    if (s) return s;
    if (T == 0) return LF_OK;
    pthread_once(&g_lut_once, lut_init);
    const int simd = lf_quant_simd_active();
    int driver = MM_GENERIC, rows = MM_ROWS;
    if (simd >= LF_QUANT_SIMD_AVX2 && C % 32 == 0) {
        const int avx512 = simd >= LF_QUANT_SIMD_AVX512;
        driver = T <= (avx512 ? MM_TG : MM_TG2) ? MM_REGS : MM_PANEL;
        if (driver == MM_PANEL && avx512) rows = MM_PR;
    }
    int nth = pool ? lf_pool_size(pool) : 1;
    float *own = NULL;
    if (!scratch && driver != MM_REGS) {
        own = scratch = malloc((size_t)nth * LF_QUANT_MM_SCRATCH_FLOATS * sizeof(float));
        if (!own) return lf_err_set(err, LF_ENOMEM, "quant matmul: out of memory for %d threads' scratch", nth);
    }
    int lb = 0;
    while (((int64_t)1 << lb) < W->blocksize) lb++;
    /* prefetch the same place in the next tile: rows of a tile sit next to each other, so a shorter distance
     * runs into data the tile's next row is about to stream anyway (measured: 1.5x on a DRAM-bound GEMV) */
    const int64_t tb = (int64_t)rows * C / 2, pf = tb < MM_PF_MIN ? MM_PF_MIN : tb > MM_PF_MAX ? MM_PF_MAX : tb;
    mm_job j = {out, inp, bias, W, T, C, OC, scratch, simd, driver, rows, lb, C % W->blocksize == 0, pf};
    int64_t tiles = (OC + rows - 1) / rows;
    lf_pool_parallel_for(pool, tiles, 1, mm_run, &j);
    free(own);
    return LF_OK;
}

/* Readable reference: out[t,o] = sum_c inp[t,c] * (code[q(o,c)] * absmax(block(o,c))) + bias[o]. */
lf_status lf_quant_matmul_4bit_ref(float *out, const float *inp, const lf_quant_state *W, const float *bias,
                                   int64_t T, int64_t C, int64_t OC, lf_err *err) {
    lf_status s = mm_check(out, inp, W, T, C, OC, err);
    if (s) return s;
    const float *code = lf_quant_code_table(W->type);
    for (int64_t t = 0; t < T; t++)
        for (int64_t o = 0; o < OC; o++) {
            float acc = 0.0f;
            for (int64_t c = 0; c < C; c++) {
                int64_t e = o * C + c;
                float w = code[LF_QUANT_NIBBLE(W->packed, e)] * lf_quant_state_absmax(W, e / W->blocksize);
                acc += inp[t * C + c] * w;
            }
            out[t * OC + o] = acc + (bias ? bias[o] : 0.0f);
        }
    return LF_OK;
}

/* ============================== matmul backward ============================== */
/* dinp[T,C] += dout[T,OC] @ deq(W)[OC,C] (the input gradient through a frozen 4-bit base weight).
 * dinp is cut into tiles of up to QB_MT tokens x QB_NC columns, each owned by one pool thread (race-free).
 * For each block of QB_KO rows of W the tile's [QB_KO, QB_NC] slice is decoded (decode_range, the dequantize
 * arithmetic: code * absmax in f32, so the weights are exactly lf_quant_dequantize_f32's) into the thread's
 * scratch (16 KiB, columns past C zeroed) and multiplied into every 6-token group of the tile by a 6 x 16
 * outer-product microkernel (AVX2: 12 ymm accumulators, dout broadcast, two panel loads per k). Each decoded
 * weight serves up to QB_MT tokens; tiles shrink (fewer tokens) until every thread has ~4 of them.
 * Precision: every dinp element gains an f32 sum of OC products, in blocks of QB_KO added to the old value:
 * within (OC+2) * 2^-24 * (|old| + sum |dout * w|) of the exact result. The ref sums in double. */

#define QB_KO 64  /* W rows (the reduction) per decoded panel */
#define QB_NC 64  /* W columns per panel = dinp columns per tile */
#define QB_MR 6   /* microkernel tokens */
#define QB_NR 16  /* microkernel columns */
#define QB_MT 240 /* tokens per tile at most (multiple of QB_MR): the dout block QB_MT x QB_KO stays in L2 */
_Static_assert(QB_KO *QB_NC <= LF_QUANT_MM_SCRATCH_FLOATS, "backward panel exceeds the per-thread scratch");
_Static_assert(QB_NC % QB_NR == 0 && QB_MT % QB_MR == 0, "backward tile sizes");

typedef struct qb_job {
    float *dinp;       /* [T, C] */
    const float *dout; /* [T, OC] */
    const lf_quant_state *W;
    int64_t T, C, OC;
    int64_t mt, n_mt; /* tokens per tile, tiles along T */
    float *scratch;   /* [threads, LF_QUANT_MM_SCRATCH_FLOATS] */
    int simd;
} qb_job;

/* c[i*ldc + n] += sum_{k<kc} a[i*lda + k] * p[k*ldp + n] for i < mr, n < nr (p has QB_NR readable columns). */
static void qb_kernel_portable(int mr, const float *a, int64_t lda, const float *p, int64_t ldp, int64_t kc, float *c,
                               int64_t ldc, int nr) {
    float acc[QB_MR][QB_NR];
    memset(acc, 0, sizeof acc);
    for (int64_t k = 0; k < kc; k++)
        for (int i = 0; i < mr; i++) {
            const float x = a[i * lda + k];
            for (int n = 0; n < QB_NR; n++) acc[i][n] += x * p[k * ldp + n];
        }
    for (int i = 0; i < mr; i++)
        for (int n = 0; n < nr; n++) c[i * ldc + n] += acc[i][n];
}

#if LF_QUANT_X86
#define QB_AVX2 static inline __attribute__((always_inline, target("avx2,fma")))

QB_AVX2 __m256i qb_mask8(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

QB_AVX2 void qb_tile_avx2(const int MR, const float *a, int64_t lda, const float *p, int64_t ldp, int64_t kc, float *c,
                          int64_t ldc, int nr) {
    __m256 acc[QB_MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < QB_MR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
#pragma GCC unroll 2
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_loadu_ps(p + k * ldp), b1 = _mm256_loadu_ps(p + k * ldp + 8);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            __m256 x = _mm256_broadcast_ss(a + i * lda + k);
            acc[i][0] = _mm256_fmadd_ps(x, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(x, b1, acc[i][1]);
        }
    }
    const __m256i m0 = qb_mask8(nr < 8 ? nr : 8), m1 = qb_mask8(nr > 8 ? nr - 8 : 0);
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        float *o = c + i * ldc;
        if (nr == QB_NR) {
            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), acc[i][0]));
            _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_loadu_ps(o + 8), acc[i][1]));
        } else {
            _mm256_maskstore_ps(o, m0, _mm256_add_ps(_mm256_maskload_ps(o, m0), acc[i][0]));
            _mm256_maskstore_ps(o + 8, m1, _mm256_add_ps(_mm256_maskload_ps(o + 8, m1), acc[i][1]));
        }
    }
}

__attribute__((target("avx2,fma"))) static void qb_kernel_avx2(int mr, const float *a, int64_t lda, const float *p,
                                                               int64_t ldp, int64_t kc, float *c, int64_t ldc, int nr) {
    switch (mr) {
    case 6: qb_tile_avx2(6, a, lda, p, ldp, kc, c, ldc, nr); break;
    case 5: qb_tile_avx2(5, a, lda, p, ldp, kc, c, ldc, nr); break;
    case 4: qb_tile_avx2(4, a, lda, p, ldp, kc, c, ldc, nr); break;
    case 3: qb_tile_avx2(3, a, lda, p, ldp, kc, c, ldc, nr); break;
    case 2: qb_tile_avx2(2, a, lda, p, ldp, kc, c, ldc, nr); break;
    default: qb_tile_avx2(1, a, lda, p, ldp, kc, c, ldc, nr); break;
    }
}
#endif

static void qb_run(void *ctx, int64_t begin, int64_t end, int tid) {
    const qb_job *j = ctx;
    const int64_t C = j->C, OC = j->OC;
    float *panel = j->scratch + (size_t)tid * LF_QUANT_MM_SCRATCH_FLOATS;
    for (int64_t tile = begin; tile < end; tile++) {
        const int64_t t0 = (tile % j->n_mt) * j->mt, t1 = t0 + j->mt < j->T ? t0 + j->mt : j->T;
        const int64_t c0 = (tile / j->n_mt) * QB_NC, nc = C - c0 < QB_NC ? C - c0 : QB_NC;
        for (int64_t o0 = 0; o0 < OC; o0 += QB_KO) {
            const int64_t ko = OC - o0 < QB_KO ? OC - o0 : QB_KO;
            for (int64_t r = 0; r < ko; r++) {
                decode_range(j->W, (o0 + r) * C + c0, nc, panel + r * QB_NC, NULL, j->simd);
                if (nc < QB_NC) memset(panel + r * QB_NC + nc, 0, (size_t)(QB_NC - nc) * sizeof(float));
            }
            for (int64_t t = t0; t < t1; t += QB_MR) {
                const int mr = (int)(t1 - t < QB_MR ? t1 - t : QB_MR);
                for (int64_t s = 0; s < nc; s += QB_NR) {
                    const int nr = (int)(nc - s < QB_NR ? nc - s : QB_NR);
                    const float *a = j->dout + t * OC + o0;
                    float *c = j->dinp + t * C + c0 + s;
#if LF_QUANT_X86
                    if (j->simd) {
                        qb_kernel_avx2(mr, a, OC, panel + s, QB_NC, ko, c, C, nr);
                        continue;
                    }
#endif
                    qb_kernel_portable(mr, a, OC, panel + s, QB_NC, ko, c, C, nr);
                }
            }
        }
    }
}

static lf_status qb_check(const float *dinp, const float *dout, const lf_quant_state *W, int64_t T, int64_t C,
                          int64_t OC, lf_err *err) {
    if (!dinp || !dout || !W || !W->packed) return lf_err_set(err, LF_EINVAL, "quant matmul backward: NULL argument");
    if (T < 0 || C != W->cols || OC != W->rows)
        return lf_err_set(err, LF_EINVAL, "quant matmul backward: W is [%lld, %lld], asked for OC=%lld C=%lld (T=%lld)",
                          (long long)W->rows, (long long)W->cols, (long long)OC, (long long)C, (long long)T);
    return LF_OK;
}

lf_status lf_quant_matmul_4bit_backward(float *dinp, const float *dout, const lf_quant_state *W, int64_t T, int64_t C,
                                        int64_t OC, lf_pool *pool, float *scratch, lf_err *err) {
    lf_status s = qb_check(dinp, dout, W, T, C, OC, err);
    if (s) return s;
    if (T == 0 || C == 0 || OC == 0) return LF_OK;
    pthread_once(&g_lut_once, lut_init);
    const int nth = pool ? lf_pool_size(pool) : 1;
    float *own = NULL;
    if (!scratch) {
        own = scratch = malloc((size_t)nth * LF_QUANT_MM_SCRATCH_FLOATS * sizeof(float));
        if (!own)
            return lf_err_set(err, LF_ENOMEM, "quant matmul backward: out of memory for %d threads' scratch", nth);
    }
    qb_job j = {dinp, dout, W, T, C, OC, QB_MT, 0, scratch, lf_quant_simd_active()};
    const int64_t n_ct = (C + QB_NC - 1) / QB_NC;
    while (j.mt > 4 * QB_MR && ((T + j.mt - 1) / j.mt) * n_ct < 4 * (int64_t)nth)
        j.mt = (j.mt / 2 + QB_MR - 1) / QB_MR * QB_MR;
    j.n_mt = (T + j.mt - 1) / j.mt;
    lf_pool_parallel_for(pool, j.n_mt * n_ct, 1, qb_run, &j);
    free(own);
    return LF_OK;
}

/* Readable reference: dinp[t,c] += sum_o dout[t,o] * (code[q(o,c)] * absmax(block(o,c))), summed in double. */
lf_status lf_quant_matmul_4bit_backward_ref(float *dinp, const float *dout, const lf_quant_state *W, int64_t T,
                                            int64_t C, int64_t OC, lf_err *err) {
    lf_status s = qb_check(dinp, dout, W, T, C, OC, err);
    if (s) return s;
    const float *code = lf_quant_code_table(W->type);
    for (int64_t t = 0; t < T; t++)
        for (int64_t c = 0; c < C; c++) {
            double acc = 0.0;
            for (int64_t o = 0; o < OC; o++) {
                int64_t e = o * C + c;
                float w = code[LF_QUANT_NIBBLE(W->packed, e)] * lf_quant_state_absmax(W, e / W->blocksize);
                acc += (double)dout[t * OC + o] * (double)w;
            }
            dinp[t * C + c] = (float)((double)dinp[t * C + c] + acc);
        }
    return LF_OK;
}
