/* npy.h - NumPy .npy (format 1.0) writer, written atomically. */
#ifndef LF_CORE_NPY_H
#define LF_CORE_NPY_H

#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Write data (borrowed; row-major, little-endian) of dtype F32/F64/F16/I32/I64/U8/I8 with shape[ndim] to
 * path as .npy, through a temp file + rename. */
lf_status lf_npy_write(const char *path, const void *data, lf_dtype dt, int ndim, const int64_t *shape, lf_err *err);

#ifdef __cplusplus
}
#endif
#endif
