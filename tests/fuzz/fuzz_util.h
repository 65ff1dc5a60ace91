/* fuzz_util.h - helpers shared by the libFuzzer targets (header-only, static): a per-process scratch
 * directory in /dev/shm (falling back to /tmp) for parsers that take paths, file writes, splitting one input
 * into several files at a separator, and the REQUIRE invariant macro (a violation traps, which libFuzzer
 * reports as a crash). Not a target itself: scripts/fuzz.sh builds only tests/fuzz/fuzz_*.c. */
#ifndef LF_TESTS_FUZZ_UTIL_H
#define LF_TESTS_FUZZ_UTIL_H

#include <dirent.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define REQUIRE(c)                  \
    do {                            \
        if (!(c)) __builtin_trap(); \
    } while (0)

/* Separator between the files packed into one input (seeds are built with it: tests/fuzz/make_seeds.py). */
#define LF_FUZZ_SEP "#@@#"
#define LF_FUZZ_SEP_LEN 4

static char lf_fuzz__root[256];

static inline void lf_fuzz__rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[1024];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) lf_fuzz__rm_tree(p);
        else unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static inline void lf_fuzz__cleanup(void) {
    if (lf_fuzz__root[0]) lf_fuzz__rm_tree(lf_fuzz__root);
}

/* The scratch directory, created on first use and removed at exit. */
static inline const char *lf_fuzz_root(void) {
    if (!lf_fuzz__root[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(lf_fuzz__root, sizeof lf_fuzz__root, "%s/lf-fuzz-%ld", base, (long)getpid());
        lf_fuzz__rm_tree(lf_fuzz__root);
        REQUIRE(mkdir(lf_fuzz__root, 0700) == 0);
        atexit(lf_fuzz__cleanup);
    }
    return lf_fuzz__root;
}

/* root/sub (created when missing) into buf. */
static inline const char *lf_fuzz_subdir(char *buf, size_t cap, const char *sub) {
    snprintf(buf, cap, "%s/%s", lf_fuzz_root(), sub);
    mkdir(buf, 0700);
    return buf;
}

/* Write len bytes to dir/name (replacing it); the full path into path. */
static inline void lf_fuzz_write(const char *dir, const char *name, const void *data, size_t len, char *path,
                          size_t cap) {
    snprintf(path, cap, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    REQUIRE(fd >= 0);
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        REQUIRE(w > 0);
        p += w;
        len -= (size_t)w;
    }
    close(fd);
}

static inline void lf_fuzz_unlink(const char *dir, const char *name) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    unlink(p);
}

/* Split data at LF_FUZZ_SEP into at most n parts (the last part keeps any further separators); returns how
 * many parts were found (>= 1). Parts point into data. */
static inline int lf_fuzz_split(const uint8_t *data, size_t size, const uint8_t **part, size_t *len, int n) {
    int k = 0;
    size_t at = 0;
    while (k < n - 1) {
        size_t i = at;
        while (i + LF_FUZZ_SEP_LEN <= size && memcmp(data + i, LF_FUZZ_SEP, LF_FUZZ_SEP_LEN) != 0) i++;
        if (i + LF_FUZZ_SEP_LEN > size) break;
        part[k] = data + at;
        len[k] = i - at;
        k++;
        at = i + LF_FUZZ_SEP_LEN;
    }
    part[k] = data + at;
    len[k] = size - at;
    for (int j = k + 1; j < n; j++) part[j] = NULL, len[j] = 0;
    return k + 1;
}

/* A NUL-terminated copy (caller frees). */
static inline char *lf_fuzz_strndup(const uint8_t *p, size_t n) {
    char *s = malloc(n + 1);
    REQUIRE(s != NULL);
    if (n) memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

#endif
