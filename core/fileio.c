/* fileio.c - atomic writes (temp + fsync + rename + dir fsync), whole-file reads, mkdir -p, path join. */
#define _GNU_SOURCE
#include "core/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct lf_atomic_file {
    int fd;
    char *path;
    char *tmp;
};

lf_status lf_atomic_open(const char *path, lf_atomic_file **out, lf_err *err) {
    lf_status st = LF_OK;
    lf_atomic_file *f = calloc(1, sizeof *f);
    LF_CHECK_ALLOC(f, err);
    f->fd = -1;
    f->path = strdup(path);
    LF_CHECK_ALLOC(f->path, err);
    size_t n = strlen(path) + 32;
    f->tmp = malloc(n);
    LF_CHECK_ALLOC(f->tmp, err);
    snprintf(f->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f->fd < 0) {
        st = lf_err_set(err, LF_EIO, "%s: cannot create temp file %s: %s", path, f->tmp, strerror(errno));
        goto fail;
    }
    *out = f;
    return LF_OK;
fail:
    if (f) {
        free(f->path);
        free(f->tmp);
        free(f);
    }
    *out = NULL;
    return st ? st : LF_ENOMEM;
}

lf_status lf_atomic_write(lf_atomic_file *f, const void *data, size_t n, lf_err *err) {
    const char *p = (const char *)data;
    while (n > 0) {
        ssize_t w = write(f->fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return lf_err_set(err, LF_EIO, "%s: write failed: %s", f->tmp, strerror(errno));
        }
        p += w;
        n -= (size_t)w;
    }
    return LF_OK;
}

static void fsync_parent_dir(const char *path) {
    char *copy = strdup(path);
    if (!copy) return;
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    free(copy);
}

lf_status lf_atomic_commit(lf_atomic_file *f, lf_err *err) {
    lf_status st = LF_OK;
    if (fsync(f->fd) != 0) {
        st = lf_err_set(err, LF_EIO, "%s: fsync failed: %s", f->tmp, strerror(errno));
        goto fail;
    }
    int fd = f->fd;
    f->fd = -1;
    if (close(fd) != 0) {
        st = lf_err_set(err, LF_EIO, "%s: close failed: %s", f->tmp, strerror(errno));
        goto fail;
    }
    if (rename(f->tmp, f->path) != 0) {
        st = lf_err_set(err, LF_EIO, "cannot rename %s to %s: %s", f->tmp, f->path, strerror(errno));
        goto fail;
    }
    fsync_parent_dir(f->path);
    free(f->path);
    free(f->tmp);
    free(f);
    return LF_OK;
fail:
    lf_atomic_abort(f);
    return st;
}

void lf_atomic_abort(lf_atomic_file *f) {
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    if (f->tmp) unlink(f->tmp);
    free(f->path);
    free(f->tmp);
    free(f);
}

lf_status lf_file_write_atomic(const char *path, const void *data, size_t n, lf_err *err) {
    lf_atomic_file *f = NULL;
    lf_status st = lf_atomic_open(path, &f, err);
    if (st) return st;
    st = lf_atomic_write(f, data, n, err);
    if (st) {
        lf_atomic_abort(f);
        return st;
    }
    return lf_atomic_commit(f, err);
}

lf_status lf_file_read_all(const char *path, char **out, size_t *len, lf_err *err) {
    lf_status st = LF_OK;
    char *buf = NULL;
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) return lf_err_set(err, errno == ENOENT ? LF_ENOTFOUND : LF_EIO, "%s: cannot open: %s", path, strerror(errno));
    if (fseek(fp, 0, SEEK_END) != 0) {
        st = lf_err_set(err, LF_EIO, "%s: cannot seek: %s", path, strerror(errno));
        goto fail;
    }
    long sz = ftell(fp);
    if (sz < 0) {
        st = lf_err_set(err, LF_EIO, "%s: cannot tell size: %s", path, strerror(errno));
        goto fail;
    }
    rewind(fp);
    buf = malloc((size_t)sz + 1);
    LF_CHECK_ALLOC(buf, err);
    if (sz > 0 && fread(buf, 1, (size_t)sz, fp) != (size_t)sz) {
        st = lf_err_set(err, LF_EIO, "%s: short read", path);
        goto fail;
    }
    buf[sz] = '\0';
    fclose(fp);
    *out = buf;
    if (len) *len = (size_t)sz;
    return LF_OK;
fail:
    free(buf);
    fclose(fp);
    return st ? st : LF_ENOMEM;
}

int lf_path_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

int lf_path_is_dir(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

lf_status lf_mkdirs(const char *path, lf_err *err) {
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) return lf_err_set(err, LF_EINVAL, "bad directory path '%s'", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return lf_err_set(err, LF_EIO, "cannot create directory %s: %s", buf, strerror(errno));
            buf[i] = c;
        }
    }
    if (!lf_path_is_dir(path)) return lf_err_set(err, LF_EIO, "%s exists and is not a directory", path);
    return LF_OK;
}

lf_status lf_path_join(char *out, size_t cap, const char *dir, const char *name, lf_err *err) {
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap) return lf_err_set(err, LF_EINVAL, "path too long: %s/%s", dir, name);
    return LF_OK;
}

lf_status lf_file_copy(const char *src, const char *dst, lf_err *err) {
    char *buf = NULL;
    size_t len = 0;
    lf_status st = lf_file_read_all(src, &buf, &len, err);
    if (st) return st;
    st = lf_file_write_atomic(dst, buf, len, err);
    free(buf);
    return st;
}
