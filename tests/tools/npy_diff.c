/* npy_diff.c - compare two f32 .npy arrays (what `loraforge score --out` writes) where no Python is at hand
 * (the GPU machine of scripts/gpu-check.sh). Built, not run by ctest.
 *
 *   npy_diff A.npy B.npy TOL
 *       Prints one JSON line {"n": N, "max_abs": .., "max_ref": .., "rel": max|a-b| / max|b|, "tol": TOL,
 *       "pass": true|false} and exits 0 when rel <= TOL (and the shapes agree), 1 otherwise, 2 on bad usage or
 *       an unreadable file. Only little-endian '<f4' C-order arrays (lf_npy_write's format) are read. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* data of an '<f4' npy file: *n floats (owned by the caller), shape text into shape[cap]; NULL on error */
static float *load(const char *path, int64_t *n, char *shape, size_t cap) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char pre[10];
    float *data = NULL;
    char *hdr = NULL;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) goto done;
    size_t hl = pre[8] | (size_t)pre[9] << 8;
    if (pre[6] >= 2) { /* version 2+: 4-byte header length */
        unsigned char ext[2];
        if (fread(ext, 1, 2, f) != 2) goto done;
        hl |= (size_t)ext[0] << 16 | (size_t)ext[1] << 24;
    }
    hdr = calloc(1, hl + 1);
    if (!hdr || fread(hdr, 1, hl, f) != hl || !strstr(hdr, "'<f4'") || strstr(hdr, "'fortran_order': True")) goto done;
    const char *s = strstr(hdr, "'shape': (");
    if (!s) goto done;
    s += 10;
    const char *e = strchr(s, ')');
    if (!e) goto done;
    snprintf(shape, cap, "%.*s", (int)(e - s), s);
    int64_t count = 1;
    for (const char *p = s; p < e;) {
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p) break;
        count *= v;
        p = end;
        while (p < e && (*p == ',' || *p == ' ')) p++;
    }
    data = malloc((size_t)(count > 0 ? count : 1) * 4);
    if (data && fread(data, 4, (size_t)count, f) != (size_t)count) {
        free(data);
        data = NULL;
    }
    *n = count;
done:
    free(hdr);
    fclose(f);
    return data;
}

int main(int argc, char **argv) {
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: npy_diff A.npy B.npy TOL   (positional only; max|a-b|/max|b| <= TOL exits 0)\n");
        return 0;
    }
    if (argc != 4 || argv[1][0] == '-' || argv[2][0] == '-') {
        fprintf(stderr, "usage: npy_diff A.npy B.npy TOL\n");
        return 2;
    }
    char sa[256] = "", sb[256] = "";
    int64_t na = 0, nb = 0;
    float *a = load(argv[1], &na, sa, sizeof sa), *b = load(argv[2], &nb, sb, sizeof sb);
    char *end;
    double tol = strtod(argv[3], &end);
    if (!a || !b || *end || !(tol >= 0)) {
        fprintf(stderr, "npy_diff: cannot read %s as an '<f4' .npy array (or bad TOL '%s')\n", !a ? argv[1] : argv[2],
                argv[3]);
        return 2;
    }
    double max_abs = 0, max_ref = 0;
    int same = na == nb && strcmp(sa, sb) == 0, nan = 0;
    for (int64_t i = 0; same && i < na; i++) {
        if (isnan(a[i]) || isnan(b[i])) nan = 1;
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > max_abs) max_abs = d;
        if (fabs((double)b[i]) > max_ref) max_ref = fabs((double)b[i]);
    }
    double rel = max_ref > 0 ? max_abs / max_ref : max_abs;
    int pass = same && !nan && rel <= tol;
    printf("{\"n\": %lld, \"shape_a\": \"(%s)\", \"shape_b\": \"(%s)\", \"max_abs\": %.6g, \"max_ref\": %.6g, "
           "\"rel\": %.6g, \"tol\": %g, \"nan\": %s, \"pass\": %s}\n",
           (long long)na, sa, sb, max_abs, max_ref, rel, tol, nan ? "true" : "false", pass ? "true" : "false");
    free(a);
    free(b);
    return pass ? 0 : 1;
}
