/* status.c - lf_status names and lf_err message formatting. */
#include "core/status.h"

#include <string.h>

const char *lf_status_name(lf_status s) {
    switch (s) {
    case LF_OK: return "LF_OK";
    case LF_EINVAL: return "LF_EINVAL";
    case LF_ENOMEM: return "LF_ENOMEM";
    case LF_EIO: return "LF_EIO";
    case LF_EFORMAT: return "LF_EFORMAT";
    case LF_ECUDA: return "LF_ECUDA";
    case LF_EBUSY: return "LF_EBUSY";
    case LF_ENOTFOUND: return "LF_ENOTFOUND";
    case LF_EUNSUPPORTED: return "LF_EUNSUPPORTED";
    }
    return "LF_E?";
}

lf_status lf_err_set(lf_err *err, lf_status code, const char *fmt, ...) {
    if (!err) return code;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return code;
}

lf_status lf_err_wrap(lf_err *err, lf_status code, const char *fmt, ...) {
    if (!err) return code;
    char prefix[LF_ERR_MSG_MAX], old[LF_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    if (err->code == LF_OK) err->code = code;
    /* "prefix: old", truncated to the buffer */
    size_t n = strlen(prefix), m = strlen(old), cap = sizeof err->msg - 1;
    if (n > cap) n = cap;
    memcpy(err->msg, prefix, n);
    if (n + 2 <= cap) {
        memcpy(err->msg + n, ": ", 2);
        n += 2;
    }
    if (m > cap - n) m = cap - n;
    memcpy(err->msg + n, old, m);
    err->msg[n + m] = '\0';
    return err->code;
}

void lf_err_clear(lf_err *err) {
    if (!err) return;
    err->code = LF_OK;
    err->msg[0] = '\0';
}
