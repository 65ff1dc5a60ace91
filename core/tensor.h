/* tensor.h - lf_tensor (a view: data pointer, dtype, up to 4 dims) and dtypes, with exact bf16/f16 <-> f32.
 *
 * Invariants: an lf_tensor never owns its data (weights are views into an mmap or one device buffer);
 * shape[i] for i >= ndim is 1; numel and byte sizes are int64_t/size_t. Conversions round to nearest even
 * and keep NaN (quiet) and +-Inf. The dtype list is the safetensors spec's, in its enum order. */
#ifndef LF_CORE_TENSOR_H
#define LF_CORE_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lf_dtype {
    LF_DTYPE_BOOL = 0,
    LF_DTYPE_F4,          /* 4-bit float (e2m1), 2 per byte */
    LF_DTYPE_F6_E2M3,     /* 6-bit floats: numel*6 must be a multiple of 8 */
    LF_DTYPE_F6_E3M2,
    LF_DTYPE_U8,
    LF_DTYPE_I8,
    LF_DTYPE_F8_E5M2,
    LF_DTYPE_F8_E4M3,
    LF_DTYPE_F8_E8M0,
    LF_DTYPE_F8_E4M3FNUZ,
    LF_DTYPE_F8_E5M2FNUZ,
    LF_DTYPE_I16,
    LF_DTYPE_U16,
    LF_DTYPE_F16,
    LF_DTYPE_BF16,
    LF_DTYPE_I32,
    LF_DTYPE_U32,
    LF_DTYPE_F32,
    LF_DTYPE_C64,
    LF_DTYPE_F64,
    LF_DTYPE_I64,
    LF_DTYPE_U64,
    LF_DTYPE_COUNT,
    LF_DTYPE_INVALID = -1,
} lf_dtype;

/* Bits per element (4 for F4, 6 for F6_*, 8 for U8, ...). */
int lf_dtype_bits(lf_dtype dt);
/* Safetensors name ("BF16"); "?" for invalid. */
const char *lf_dtype_name(lf_dtype dt);
/* Parse a safetensors dtype name; LF_DTYPE_INVALID if unknown. */
lf_dtype lf_dtype_from_name(const char *name);
/* Bytes for numel elements, or -1 when numel*bits is not a whole number of bytes. */
int64_t lf_dtype_nbytes(lf_dtype dt, int64_t numel);

#define LF_MAX_DIMS 4

typedef enum lf_device { LF_DEVICE_CPU = 0, LF_DEVICE_CUDA = 1 } lf_device;

typedef struct lf_tensor {
    void *data;                  /* borrowed: the tensor never frees it */
    lf_dtype dtype;
    int ndim;
    int64_t shape[LF_MAX_DIMS];  /* row-major; unused dims are 1 */
    lf_device device;
} lf_tensor;

int64_t lf_tensor_numel(const lf_tensor *t);
size_t lf_tensor_nbytes(const lf_tensor *t);
/* Build a view. shape has ndim entries (ndim <= 4). */
lf_tensor lf_tensor_view(void *data, lf_dtype dt, int ndim, const int64_t *shape);

/* ---- exact scalar conversions ---- */
static inline float lf_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t lf_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* NaN: keep sign, force quiet */
    uint32_t lsb = (u >> 16) & 1u;
    u += 0x7fffu + lsb; /* round to nearest, ties to even; Inf stays Inf, overflow rounds to Inf */
    return (uint16_t)(u >> 16);
}

float lf_f16_to_f32(uint16_t h);
uint16_t lf_f32_to_f16(float f);

/* Bulk conversions (n elements). */
void lf_bf16_to_f32_n(float *dst, const uint16_t *src, int64_t n);
void lf_f32_to_bf16_n(uint16_t *dst, const float *src, int64_t n);
void lf_f16_to_f32_n(float *dst, const uint16_t *src, int64_t n);
void lf_f32_to_f16_n(uint16_t *dst, const float *src, int64_t n);
/* Convert n elements of F32/BF16/F16 to f32; LF_EUNSUPPORTED for other dtypes. */
lf_status lf_to_f32_n(float *dst, const void *src, lf_dtype dt, int64_t n, lf_err *err);

#ifdef __cplusplus
}
#endif
#endif
