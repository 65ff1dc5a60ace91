/* quant.c - bitsandbytes-exact NF4/FP4 quantization, double quantization, CPU dequantize and 4-bit matmul.
 *
 * What "bnb-exact" means here, rule by rule (bnb = bitsandbytes; sources quoted from ../shared/formats.md
 * section 3 and the bnb tree: csrc/kernels.cu, bitsandbytes/functional.py, backends/default/ops.py):
 *  - Scaling: both bnb paths multiply by the f32 reciprocal: CUDA kQuantizeBlockwise stores
 *    1.0f/local_abs_max and quantizes vals[j]*that; the torch backend does A * (1/absmax). We do x * (1.0f/a),
 *    never x / a (they differ by an ulp at times, which moves codes at thresholds).
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
 *    quantize_blockwise(absmax - offset, blocksize=256) with the signed dynamic map. We use the torch
 *    default backend semantics: v = clamp((x) * (1/absmax2), -1, 1), code = argmin |v - map| (ties to the
 *    first = lower index). bnb's CUDA dQuantize binary search breaks ties by its own pivot rule; only exact
 *    f32 ties can differ. A 256-block of zeros maps to index 127 (0.0) instead of argmin-over-NaN's index 0;
 *    both decode to offset.
 *  - offset: torch's f32 mean depends on its reduction order (CPU cascade sum vs CUDA tree); we return
 *    the correctly rounded f32 of the exact mean. It is stored next to the data (nested_offset), so loading
 *    a bnb checkpoint uses bnb's value; only our own quantization may differ from torch by an ulp.
 *  - Dynamic map: see lf_quant_dynamic_map_signed.
 * Dequantize: code_value * absmax in f32 (CUDA kDequantizeBlockwise); bf16 rounds that product (the torch
 * backend casts the code table to bf16 first, which can differ in the last bf16 bit). */
#include "quant/quant.h"

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

/* torch.linspace(0.1, 1, steps) in float32, as torch's CPU kernel computes it (RangeFactoriesKernel.cpp):
 *   step = (1.0f - 0.1f) / (steps - 1); idx < steps/2: start + step*idx, else end - step*(steps-idx-1);
 * cpu_serial_kernel_vec runs 2 vectors of 8 floats per iteration while 16 elements remain: each vector is
 * arange(base, step) = base + k*step with base from the formula above at the vector's first index (the
 * halfway test is made once per vector); the rest is scalar. Built with GCC for AVX2, the scalar
 * `start + step*idx` forms are contracted to FMAs (observed on torch 1.13 AVX2: this emulation reproduces
 * torch.linspace bit for bit for steps 2..65; a plain double linspace differs in 90 of the 256 map entries).
 * UNCERTAIN: other torch builds (AVX-512 vectors of 16, no contraction) give 1-ulp different boundaries. */
static void torch_linspace_f32(float *out, int steps) {
    const float start = 0.1f, end = 1.0f;
    const float step = (end - start) / (float)(steps - 1);
    const int halfway = steps / 2, V = 8;
    int idx = 0;
    while (idx <= steps - 2 * V) {
        for (int r = 0; r < 2; r++) {
            float base = idx < halfway ? fmaf(step, (float)idx, start) : fmaf(-step, (float)(steps - idx - 1), end);
            for (int k = 0; k < V; k++) {
                float ks = (float)k * step; /* separate rounding: arange computes base + k*step, no FMA */
                out[idx + k] = k == 0 ? base : base + ks;
            }
            idx += V;
        }
    }
    for (; idx < steps; idx++)
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
            uint8_t q1 = 0; /* odd n: the last low nibble is padding 0 */
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
            float v = x[e] * r;
            v = v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v; /* torch.clamp(..., -1, 1) */
            q[e] = lf_quant_map_code(map, v);
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

static int g_simd = -1; /* -1: not probed yet */

static int cpu_has_avx2(void) {
#if LF_QUANT_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

int lf_quant_simd_active(void) {
    if (g_simd < 0) g_simd = cpu_has_avx2();
    return g_simd;
}

void lf_quant_set_simd(int enabled) { g_simd = enabled ? cpu_has_avx2() : 0; }

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

static void decode_bytes_portable(float *out, const uint8_t *p, int64_t nbytes, const float (*lut)[2], float a) {
    for (int64_t j = 0; j < nbytes; j++) {
        const float *pair = lut[p[j]];
        out[2 * j] = pair[0] * a;
        out[2 * j + 1] = pair[1] * a;
    }
}

#if LF_QUANT_X86
/* 4 bytes -> 8 floats: duplicate each byte, shift the even lanes by 4, mask, then look the 16-entry table
 * up with two 8-lane permutes and pick by bit 3. Same product code*a as the scalar path: bit-identical. */
__attribute__((target("avx2,fma"))) static void decode_bytes_avx2(float *out, const uint8_t *p, int64_t nbytes,
                                                                   const float *code, float a) {
    const __m256 lo8 = _mm256_loadu_ps(code), hi8 = _mm256_loadu_ps(code + 8), va = _mm256_set1_ps(a);
    const __m256i shifts = _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0), m15 = _mm256_set1_epi32(15);
    int64_t j = 0;
    for (; j + 4 <= nbytes; j += 4) {
        int32_t w;
        memcpy(&w, p + j, 4);
        __m128i b = _mm_cvtsi32_si128(w);
        b = _mm_unpacklo_epi8(b, b);
        __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_cvtepu8_epi32(b), shifts), m15);
        __m256 vlo = _mm256_permutevar8x32_ps(lo8, idx), vhi = _mm256_permutevar8x32_ps(hi8, idx);
        __m256 v = _mm256_blendv_ps(vlo, vhi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
        _mm256_storeu_ps(out + 2 * j, _mm256_mul_ps(v, va));
    }
    for (; j < nbytes; j++) {
        out[2 * j] = code[p[j] >> 4] * a;
        out[2 * j + 1] = code[p[j] & 15] * a;
    }
}
#endif

/* Elements [e0, e0+len) of st into out (any start parity, any block crossing). */
static void decode_range(const lf_quant_state *st, int64_t e0, int64_t len, float *out, int simd) {
    const float *code = lf_quant_code_table(st->type);
    const float (*lut)[2] = g_lut[st->type == LF_QUANT_FP4];
    const int64_t B = st->blocksize, end = e0 + len;
    int64_t e = e0;
    (void)simd;
    while (e < end) {
        int64_t b = e / B, bend = (b + 1) * B < end ? (b + 1) * B : end;
        float a = lf_quant_state_absmax(st, b);
        if (e & 1) *out++ = code[LF_QUANT_NIBBLE(st->packed, e)] * a, e++;
        int64_t np = (bend - e) / 2;
#if LF_QUANT_X86
        if (simd) decode_bytes_avx2(out, st->packed + e / 2, np, code, a);
        else
#endif
            decode_bytes_portable(out, st->packed + e / 2, np, lut, a);
        out += 2 * np;
        e += 2 * np;
        if (e < bend) *out++ = code[LF_QUANT_NIBBLE(st->packed, e)] * a, e++;
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
    if (j->out_f32) {
        decode_range(st, e0, e1 - e0, j->out_f32 + e0, j->simd);
        return;
    }
    float buf[1024];
    for (int64_t e = e0; e < e1; e += 1024) {
        int64_t len = e1 - e < 1024 ? e1 - e : 1024;
        decode_range(st, e, len, buf, j->simd);
        lf_f32_to_bf16_n(j->out_bf16 + e, buf, len);
    }
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

#define MM_ROWS 4 /* W rows decoded per tile; each inp row is loaded once per tile */

static void dot4_portable(float *res, const float *x, const float *w, int64_t C) {
    for (int r = 0; r < MM_ROWS; r++) {
        const float *wr = w + r * C;
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

#if LF_QUANT_X86
__attribute__((target("avx2,fma"))) static float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) static void dot4_avx2(float *res, const float *x, const float *w, int64_t C) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
        __m256 xv = _mm256_loadu_ps(x + c);
        a0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + c), a0);
        a1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + C + c), a1);
        a2 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + 2 * C + c), a2);
        a3 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + 3 * C + c), a3);
    }
    res[0] = hsum256(a0);
    res[1] = hsum256(a1);
    res[2] = hsum256(a2);
    res[3] = hsum256(a3);
    for (; c < C; c++)
        for (int r = 0; r < MM_ROWS; r++) res[r] += x[c] * w[r * C + c];
}
#endif

typedef struct mm_job {
    float *out;
    const float *inp, *bias;
    const lf_quant_state *W;
    int64_t T, C, OC;
    float *scratch; /* [threads, LF_QUANT_MM_SCRATCH_FLOATS] */
    int simd;
} mm_job;

/* A tile is MM_ROWS rows of W; its columns are walked in chunks of MM_COLS decoded into the thread's scratch
 * (rows at stride MM_COLS), so the scratch is a fixed 16 KiB whatever C is. */
#define MM_COLS (LF_QUANT_MM_SCRATCH_FLOATS / MM_ROWS)

static void mm_run(void *ctx, int64_t begin, int64_t end, int tid) {
    const mm_job *j = ctx;
    const int64_t C = j->C, OC = j->OC;
    float *w = j->scratch + (size_t)tid * LF_QUANT_MM_SCRATCH_FLOATS;
    for (int64_t tile = begin; tile < end; tile++) {
        int64_t o0 = tile * MM_ROWS, nr = OC - o0 < MM_ROWS ? OC - o0 : MM_ROWS;
        for (int64_t t = 0; t < j->T; t++)
            for (int64_t r = 0; r < nr; r++) j->out[t * OC + o0 + r] = j->bias ? j->bias[o0 + r] : 0.0f;
        for (int64_t c0 = 0; c0 < C; c0 += MM_COLS) {
            int64_t cb = C - c0 < MM_COLS ? C - c0 : MM_COLS;
            for (int64_t r = 0; r < nr; r++) decode_range(j->W, (o0 + r) * C + c0, cb, w + r * cb, j->simd);
            if (nr < MM_ROWS) memset(w + nr * cb, 0, (size_t)(MM_ROWS - nr) * (size_t)cb * sizeof(float));
            for (int64_t t = 0; t < j->T; t++) {
                float res[MM_ROWS];
#if LF_QUANT_X86
                if (j->simd) dot4_avx2(res, j->inp + t * C + c0, w, cb);
                else
#endif
                    dot4_portable(res, j->inp + t * C + c0, w, cb);
                for (int64_t r = 0; r < nr; r++) j->out[t * OC + o0 + r] += res[r];
            }
        }
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
    int nth = pool ? lf_pool_size(pool) : 1;
    float *own = NULL;
    if (!scratch) {
        own = scratch = malloc((size_t)nth * LF_QUANT_MM_SCRATCH_FLOATS * sizeof(float));
        if (!own) return lf_err_set(err, LF_ENOMEM, "quant matmul: out of memory for %d threads' scratch", nth);
    }
    mm_job j = {out, inp, bias, W, T, C, OC, scratch, lf_quant_simd_active()};
    int64_t tiles = (OC + MM_ROWS - 1) / MM_ROWS;
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
                decode_range(j->W, (o0 + r) * C + c0, nc, panel + r * QB_NC, j->simd);
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
