/* fileio.h - file utilities: atomic writes (temp + fsync + rename + dir fsync), whole-file reads, paths.
 *
 * Invariant: a file written through lf_atomic_* either appears complete under its final name or not at
 * all; the temp file "<path>.tmp.<pid>" is removed on abort or failure. */
#ifndef LF_CORE_FILEIO_H
#define LF_CORE_FILEIO_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lf_atomic_file lf_atomic_file;

/* Open "<path>.tmp.<pid>" for writing. Caller must commit or abort. */
lf_status lf_atomic_open(const char *path, lf_atomic_file **out, lf_err *err);
/* Write all n bytes (retries short writes). */
lf_status lf_atomic_write(lf_atomic_file *f, const void *data, size_t n, lf_err *err);
/* fsync, close, rename over path, fsync the directory. Frees f (also on failure, after removing temp). */
lf_status lf_atomic_commit(lf_atomic_file *f, lf_err *err);
/* Close and remove the temp file; frees f. NULL is a no-op. */
void lf_atomic_abort(lf_atomic_file *f);

/* One-shot atomic write of a buffer. */
lf_status lf_file_write_atomic(const char *path, const void *data, size_t n, lf_err *err);
/* Read a whole file into a malloc'd, NUL-terminated buffer (caller frees). *len excludes the NUL. */
lf_status lf_file_read_all(const char *path, char **out, size_t *len, lf_err *err);
/* 1 if path exists (any type). */
int lf_path_exists(const char *path);
/* 1 if path is a directory. */
int lf_path_is_dir(const char *path);
/* mkdir -p. */
lf_status lf_mkdirs(const char *path, lf_err *err);
/* snprintf "dir/name" into out; LF_EINVAL when it does not fit. */
lf_status lf_path_join(char *out, size_t cap, const char *dir, const char *name, lf_err *err);
/* Copy a file atomically (src -> dst). */
lf_status lf_file_copy(const char *src, const char *dst, lf_err *err);

#ifdef __cplusplus
}
#endif
#endif
