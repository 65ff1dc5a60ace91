/* quant_upload.c - lf_quant_state into a backend's memory (one allocation), and dequantize there.
 * See quant_upload.h for the ownership rules; the CUDA kernels are in kernels/cuda/quant.cu. */
#include "kernels/quant_upload.h"

#include <string.h>

#include "kernels/cpu/cpu_ops.h" /* defines: lf_cpu_ctx (the CPU backend's pool) */
#ifdef LF_WITH_CUDA
#include "kernels/cuda/cuda_quant.h" /* defines: lf_cuda_quant_dequantize */
#endif

/* Layout of the one device allocation: packed at 0, then absmax / absmax_q, then nested_absmax. */
typedef struct upload_layout {
    size_t packed_b, abs_off, abs_b, nest_off, nest_b, total;
} upload_layout;

static size_t align_up(size_t v) { return (v + LF_QUANT_UPLOAD_ALIGN - 1) & ~(size_t)(LF_QUANT_UPLOAD_ALIGN - 1); }

static upload_layout layout_of(const lf_quant_state *h) {
    upload_layout l;
    memset(&l, 0, sizeof l);
    l.packed_b = (size_t)((h->n + 1) / 2);
    l.abs_off = align_up(l.packed_b);
    l.abs_b = h->nested ? (size_t)h->nblocks : (size_t)h->nblocks * 4;
    l.nest_off = align_up(l.abs_off + l.abs_b);
    l.nest_b = h->nested ? (size_t)h->n_nested * 4 : 0;
    l.total = h->nested ? l.nest_off + l.nest_b : l.abs_off + l.abs_b;
    return l;
}

/* The host state is complete and self-consistent (the fields the kernels trust). */
static lf_status check_host(const lf_quant_state *h, lf_err *err) {
    if (!h || !h->packed) return lf_err_set(err, LF_EINVAL, "quant upload: empty state (no packed data)");
    if (h->type != LF_QUANT_NF4 && h->type != LF_QUANT_FP4)
        return lf_err_set(err, LF_EINVAL, "quant upload: unknown 4-bit type %d", (int)h->type);
    if (lf_quant_check_blocksize(h->blocksize, err) != LF_OK) return LF_EINVAL;
    if (h->rows <= 0 || h->cols <= 0 || h->rows > INT64_MAX / h->cols || h->n != h->rows * h->cols ||
        h->nblocks != (h->n + h->blocksize - 1) / h->blocksize)
        return lf_err_set(err, LF_EINVAL, "quant upload: inconsistent state: shape [%lld, %lld], n=%lld, nblocks=%lld",
                          (long long)h->rows, (long long)h->cols, (long long)h->n, (long long)h->nblocks);
    if (h->nested) {
        if (!h->absmax_q || !h->nested_absmax ||
            h->n_nested != (h->nblocks + LF_QUANT_NESTED_BLOCK - 1) / LF_QUANT_NESTED_BLOCK)
            return lf_err_set(err, LF_EINVAL, "quant upload: nested state without absmax_q/nested_absmax or with "
                                              "n_nested=%lld for %lld blocks",
                              (long long)h->n_nested, (long long)h->nblocks);
    } else if (!h->absmax) {
        return lf_err_set(err, LF_EINVAL, "quant upload: state has no absmax");
    }
    return LF_OK;
}

size_t lf_quant_upload_nbytes(const lf_quant_state *host) {
    if (!host || !host->packed) return 0;
    return layout_of(host).total;
}

lf_status lf_quant_state_upload(lf_backend *be, const lf_quant_state *host, lf_quant_state *dev, lf_err *err) {
    lf_status st = LF_OK;
    char *mem = NULL;
    if (!dev) return lf_err_set(err, LF_EINVAL, "quant upload: NULL destination state");
    memset(dev, 0, sizeof *dev);
    if (!be) return lf_err_set(err, LF_EINVAL, "quant upload: NULL backend");
    LF_TRY(check_host(host, err));

    *dev = *host;
    dev->owned = NULL; /* never a host allocation: lf_quant_state_free must not free() it */
    if (be->host_memory) return LF_OK; /* a view of host's arrays */

    upload_layout l = layout_of(host);
    mem = be->ops->alloc(be, l.total);
    if (!mem) {
        st = lf_err_set(err, be->err.code ? be->err.code : LF_ENOMEM, "quant upload: %zu bytes on %s for [%lld, %lld]: %s",
                        l.total, be->name, (long long)host->rows, (long long)host->cols, be->err.msg);
        goto fail;
    }
    dev->packed = (uint8_t *)mem;
    if (be->ops->upload(be, mem, host->packed, l.packed_b) != LF_OK) goto upload_failed;
    if (host->nested) {
        dev->absmax = NULL;
        dev->absmax_q = (uint8_t *)(mem + l.abs_off);
        dev->nested_absmax = (float *)(mem + l.nest_off);
        if (be->ops->upload(be, dev->absmax_q, host->absmax_q, l.abs_b) != LF_OK ||
            be->ops->upload(be, dev->nested_absmax, host->nested_absmax, l.nest_b) != LF_OK)
            goto upload_failed;
    } else {
        dev->absmax = (float *)(mem + l.abs_off);
        dev->absmax_q = NULL;
        dev->nested_absmax = NULL;
        if (be->ops->upload(be, dev->absmax, host->absmax, l.abs_b) != LF_OK) goto upload_failed;
    }
    return LF_OK;

upload_failed:
    st = lf_err_set(err, be->err.code ? be->err.code : LF_EIO, "quant upload: copy to %s failed: %s", be->name,
                    be->err.msg);
fail:
    if (mem) be->ops->free(be, mem);
    memset(dev, 0, sizeof *dev);
    return st;
}

void lf_quant_state_release(lf_backend *be, lf_quant_state *dev) {
    if (!dev) return;
    if (be && !be->host_memory && dev->packed) be->ops->free(be, dev->packed); /* packed is at offset 0 */
    memset(dev, 0, sizeof *dev);
}

lf_status lf_quant_state_dequantize(lf_backend *be, void *out, lf_dtype dt, const lf_quant_state *w, lf_err *err) {
    if (!be || !out || !w || !w->packed) return lf_err_set(err, LF_EINVAL, "quant dequantize: NULL argument");
    if (dt != LF_DTYPE_F32 && dt != LF_DTYPE_BF16)
        return lf_err_set(err, LF_EUNSUPPORTED, "quant dequantize: output dtype %s (F32 or BF16)", lf_dtype_name(dt));
    if (be->device == LF_DEVICE_CPU) { /* the checked cpu backend has no pool of its own here: serial */
        lf_pool *pool = be->host_memory ? ((lf_cpu_ctx *)be->ctx)->pool : NULL;
        return dt == LF_DTYPE_F32 ? lf_quant_dequantize_f32((float *)out, w, pool, err)
                                  : lf_quant_dequantize_bf16((uint16_t *)out, w, pool, err);
    }
#ifdef LF_WITH_CUDA
    if (be->device == LF_DEVICE_CUDA) {
        lf_status st = lf_cuda_quant_dequantize(be, out, dt, w);
        if (st != LF_OK) return lf_err_set(err, st, "quant dequantize [%lld, %lld] to %s on %s: %s", (long long)w->rows,
                                           (long long)w->cols, lf_dtype_name(dt), be->name, be->err.msg);
        return LF_OK;
    }
#endif
    return lf_err_set(err, LF_EUNSUPPORTED, "quant dequantize: backend %s has no 4-bit dequantize", be->name);
}
