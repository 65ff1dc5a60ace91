/* status.h - lf_status return codes and lf_err, the message buffer that carries the why.
 *
 * Invariant: every fallible function in loraforge returns lf_status and, when it fails and was given a
 * non-NULL lf_err, fills err->msg with context (file, tensor, key, offset). Library code never exits. */
#ifndef LF_CORE_STATUS_H
#define LF_CORE_STATUS_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lf_status {
    LF_OK = 0,
    LF_EINVAL = 1,       /* bad argument or bad user input */
    LF_ENOMEM = 2,       /* allocation failed */
    LF_EIO = 3,          /* open/read/write/mmap failed */
    LF_EFORMAT = 4,      /* malformed file contents */
    LF_ECUDA = 5,        /* CUDA / cuBLAS / NCCL failure */
    LF_EBUSY = 6,        /* resource in use */
    LF_ENOTFOUND = 7,    /* missing file, tensor or key */
    LF_EUNSUPPORTED = 8, /* valid input we do not handle (yet): named in the message */
} lf_status;

#define LF_ERR_MSG_MAX 1024

typedef struct lf_err {
    lf_status code;
    char msg[LF_ERR_MSG_MAX];
} lf_err;

/* Name of a status code ("LF_EFORMAT"). Static string. */
const char *lf_status_name(lf_status s);

/* Set err (if non-NULL) to code + printf-style message; returns code so callers can `return lf_err_set(...)`. */
lf_status lf_err_set(lf_err *err, lf_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepend context to an existing message: "ctx: old message". Returns err->code (or code if err is NULL). */
lf_status lf_err_wrap(lf_err *err, lf_status code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Clear to LF_OK with an empty message. */
void lf_err_clear(lf_err *err);

/* Broken invariants only (never for bad input): print expression, file, line and abort. */
#define LF_ASSERT(cond)                                                                          \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "loraforge: assertion failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            abort();                                                                             \
        }                                                                                        \
    } while (0)

/* Check an allocation result; on NULL sets err and jumps to the function's fail label. */
#define LF_CHECK_ALLOC(ptr, err)                                                                     \
    do {                                                                                             \
        if ((ptr) == NULL) {                                                                         \
            lf_err_set((err), LF_ENOMEM, "out of memory: %s (%s:%d)", #ptr, __FILE__, __LINE__);     \
            goto fail;                                                                               \
        }                                                                                            \
    } while (0)

/* Evaluate an lf_status expression; on failure jump to fail (err already filled by callee). */
#define LF_TRY(expr)                  \
    do {                              \
        lf_status lf_try_s_ = (expr); \
        if (lf_try_s_ != LF_OK) {     \
            st = lf_try_s_;           \
            goto fail;                \
        }                             \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif
