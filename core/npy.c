/* npy.c - .npy 1.0 writer: magic, version, little-endian u16 header length, dict header padded to 64. */
#include "core/npy.h"

#include <stdio.h>
#include <string.h>

#include "core/fileio.h"

lf_status lf_npy_write(const char *path, const void *data, lf_dtype dt, int ndim, const int64_t *shape, lf_err *err) {
    const char *descr;
    switch (dt) {
    case LF_DTYPE_F32: descr = "<f4"; break;
    case LF_DTYPE_F64: descr = "<f8"; break;
    case LF_DTYPE_F16: descr = "<f2"; break;
    case LF_DTYPE_I32: descr = "<i4"; break;
    case LF_DTYPE_I64: descr = "<i8"; break;
    case LF_DTYPE_U8: descr = "|u1"; break;
    case LF_DTYPE_I8: descr = "|i1"; break;
    default: return lf_err_set(err, LF_EUNSUPPORTED, "%s: npy writer does not support dtype %s", path, lf_dtype_name(dt));
    }
    if (ndim < 0 || ndim > 8) return lf_err_set(err, LF_EINVAL, "%s: bad ndim %d", path, ndim);
    char shp[256] = "";
    size_t off = 0;
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        off += (size_t)snprintf(shp + off, sizeof shp - off, "%lld%s", (long long)shape[i],
                                (ndim == 1 || i < ndim - 1) ? ", " : "");
        numel *= shape[i];
    }
    if (ndim == 1) shp[off - 1] = '\0'; /* "(5,)" */
    char hdr[512];
    int n = snprintf(hdr + 10, sizeof hdr - 10, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, shp);
    size_t total = 10 + (size_t)n + 1; /* + trailing newline */
    size_t padded = (total + 63) / 64 * 64;
    memset(hdr + 10 + n, ' ', padded - total);
    hdr[padded - 1] = '\n';
    memcpy(hdr, "\x93NUMPY\x01\x00", 8);
    uint16_t hl = (uint16_t)(padded - 10);
    hdr[8] = (char)(hl & 0xff);
    hdr[9] = (char)(hl >> 8);
    int64_t nbytes = lf_dtype_nbytes(dt, numel);
    lf_atomic_file *f = NULL;
    lf_status st = lf_atomic_open(path, &f, err);
    if (st) return st;
    if ((st = lf_atomic_write(f, hdr, padded, err)) || (st = lf_atomic_write(f, data, (size_t)nbytes, err))) {
        lf_atomic_abort(f);
        return st;
    }
    return lf_atomic_commit(f, err);
}
