/* tensor.c - dtype table and exact f16/bf16 <-> f32 conversion (round to nearest even, NaN/Inf kept). */
#include "core/tensor.h"

static const struct {
    const char *name;
    int bits;
} dtype_table[LF_DTYPE_COUNT] = {
    [LF_DTYPE_BOOL] = {"BOOL", 8},          [LF_DTYPE_F4] = {"F4", 4},
    [LF_DTYPE_F6_E2M3] = {"F6_E2M3", 6},    [LF_DTYPE_F6_E3M2] = {"F6_E3M2", 6},
    [LF_DTYPE_U8] = {"U8", 8},              [LF_DTYPE_I8] = {"I8", 8},
    [LF_DTYPE_F8_E5M2] = {"F8_E5M2", 8},    [LF_DTYPE_F8_E4M3] = {"F8_E4M3", 8},
    [LF_DTYPE_F8_E8M0] = {"F8_E8M0", 8},    [LF_DTYPE_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8},
    [LF_DTYPE_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8},
    [LF_DTYPE_I16] = {"I16", 16},           [LF_DTYPE_U16] = {"U16", 16},
    [LF_DTYPE_F16] = {"F16", 16},           [LF_DTYPE_BF16] = {"BF16", 16},
    [LF_DTYPE_I32] = {"I32", 32},           [LF_DTYPE_U32] = {"U32", 32},
    [LF_DTYPE_F32] = {"F32", 32},           [LF_DTYPE_C64] = {"C64", 64},
    [LF_DTYPE_F64] = {"F64", 64},           [LF_DTYPE_I64] = {"I64", 64},
    [LF_DTYPE_U64] = {"U64", 64},
};

int lf_dtype_bits(lf_dtype dt) {
    if (dt < 0 || dt >= LF_DTYPE_COUNT) return 0;
    return dtype_table[dt].bits;
}

const char *lf_dtype_name(lf_dtype dt) {
    if (dt < 0 || dt >= LF_DTYPE_COUNT) return "?";
    return dtype_table[dt].name;
}

lf_dtype lf_dtype_from_name(const char *name) {
    if (!name) return LF_DTYPE_INVALID;
    for (int i = 0; i < LF_DTYPE_COUNT; i++)
        if (strcmp(name, dtype_table[i].name) == 0) return (lf_dtype)i;
    return LF_DTYPE_INVALID;
}

int64_t lf_dtype_nbytes(lf_dtype dt, int64_t numel) {
    int bits = lf_dtype_bits(dt);
    if (bits == 0 || numel < 0) return -1;
    if (numel > INT64_MAX / 64) return -1;
    int64_t b = numel * bits;
    if (b % 8 != 0) return -1;
    return b / 8;
}

int64_t lf_tensor_numel(const lf_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t lf_tensor_nbytes(const lf_tensor *t) {
    int64_t b = lf_dtype_nbytes(t->dtype, lf_tensor_numel(t));
    return b < 0 ? 0 : (size_t)b;
}

lf_tensor lf_tensor_view(void *data, lf_dtype dt, int ndim, const int64_t *shape) {
    lf_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dt;
    t.ndim = ndim;
    for (int i = 0; i < LF_MAX_DIMS; i++) t.shape[i] = i < ndim ? shape[i] : 1;
    t.device = LF_DEVICE_CPU;
    return t;
}

/* IEEE half: 1 sign, 5 exponent (bias 15), 10 mantissa. */
float lf_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalize */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while ((man & 0x400u) == 0);
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13) | (man ? 0x00400000u : 0); /* Inf or (quiet) NaN */
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t lf_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((abs >> 13) & 0x3ffu)); /* NaN, quiet */
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: Inf */
    if (abs < 0x38800000u) {
        /* result is subnormal (or zero) in f16: value = m * 2^-24 */
        if (abs < 0x33000000u) return sign; /* < 2^-25: rounds to 0 (2^-25 exactly ties to even 0) */
        uint32_t e = abs >> 23;
        uint32_t m = (abs & 0x7fffffu) | 0x800000u;
        /* value = m * 2^(e-150); in units of 2^-24 that is m * 2^(e-126): shift right by 126-e (14..24) */
        int shift = (int)(126 - e);
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    /* normal: rebias exponent, round mantissa from 23 to 10 bits */
    uint32_t r = abs - ((127u - 15u) << 23);
    uint32_t lsb = (r >> 13) & 1u;
    r += 0xfffu + lsb;
    return (uint16_t)(sign | (r >> 13));
}

void lf_bf16_to_f32_n(float *dst, const uint16_t *src, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = lf_bf16_to_f32(src[i]);
}
void lf_f32_to_bf16_n(uint16_t *dst, const float *src, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = lf_f32_to_bf16(src[i]);
}
void lf_f16_to_f32_n(float *dst, const uint16_t *src, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = lf_f16_to_f32(src[i]);
}
void lf_f32_to_f16_n(uint16_t *dst, const float *src, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = lf_f32_to_f16(src[i]);
}

lf_status lf_to_f32_n(float *dst, const void *src, lf_dtype dt, int64_t n, lf_err *err) {
    switch (dt) {
    case LF_DTYPE_F32: memcpy(dst, src, (size_t)n * 4); return LF_OK;
    case LF_DTYPE_BF16: lf_bf16_to_f32_n(dst, (const uint16_t *)src, n); return LF_OK;
    case LF_DTYPE_F16: lf_f16_to_f32_n(dst, (const uint16_t *)src, n); return LF_OK;
    default:
        return lf_err_set(err, LF_EUNSUPPORTED, "cannot convert dtype %s to F32", lf_dtype_name(dt));
    }
}
