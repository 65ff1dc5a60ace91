/* test_safetensors.c - unit tests for core/safetensors.h: reference byte vectors, random round trips of
 * every dtype (zero-size and rank-0 included), sharded model directories, and every class of bad input,
 * checking the lf_status and that the message names the file and the tensor/key. Plus a mutation fuzz.
 *
 * Seed: LF_TEST_SEED or time; printed first. Files live in a mkdtemp dir that is removed at the end.
 * Prints one line per case and ends with "N passed, M failed"; exit status 0 only when all pass. */
#include <dirent.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/fileio.h"      // defines: lf_file_write_atomic, lf_mkdirs
#include "core/safetensors.h" // defines: lf_st_*

static uint64_t g_rng;
static char g_dir[256];
static int g_pass, g_fail;

static uint64_t rnd(void) { /* xorshift64* */
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 0x2545F4914F6CDD1Dull;
}
static int64_t rnd_in(int64_t lo, int64_t hi) { return lo + (int64_t)(rnd() % (uint64_t)(hi - lo + 1)); }

#define CHECK(cond, ...)                                                              \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "    check failed at %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                             \
            fputc('\n', stderr);                                                      \
            ok = 0;                                                                   \
        }                                                                             \
    } while (0)

static void run(const char *name, int (*fn)(void)) {
    int ok = fn();
    printf("%s %s\n", ok ? "PASS" : "FAIL", name);
    fflush(stdout);
    if (ok) g_pass++;
    else g_fail++;
}

static void tpath(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", g_dir, name); }

static int write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    size_t w = n ? fwrite(p, 1, n, f) : 0;
    return fclose(f) == 0 && w == n;
}

static int read_bytes(const char *path, uint8_t **out, size_t *n) {
    char *p;
    if (lf_file_read_all(path, &p, n, NULL) != LF_OK) return 0;
    *out = (uint8_t *)p;
    return 1;
}

/* Raw file: 8-byte N (n_override, or strlen(header)), header, then data_len pattern bytes. */
static void make_raw(const char *name, const char *header, uint64_t n_override, size_t data_len, char *path,
                     size_t cap) {
    size_t hl = strlen(header);
    size_t n = 8 + hl + data_len;
    uint8_t *b = malloc(n);
    uint64_t N = n_override ? n_override : hl;
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(N >> (8 * i));
    memcpy(b + 8, header, hl);
    for (size_t i = 0; i < data_len; i++) b[8 + hl + i] = (uint8_t)(i * 7 + 3);
    tpath(path, cap, name);
    if (!write_bytes(path, b, n)) fprintf(stderr, "cannot write %s\n", path);
    free(b);
}

/* Open a crafted file both from disk and from memory; expect status `want` and every needle (and the
 * file name) in the message. */
static int expect_bad(const char *name, const char *header, uint64_t n_override, size_t data_len, lf_status want,
                      const char *needle1, const char *needle2) {
    int ok = 1;
    char path[1024];
    make_raw(name, header, n_override, data_len, path, sizeof path);
    lf_err err = {0};
    lf_st_file *f = NULL;
    lf_status st = lf_st_open(path, &f, &err);
    CHECK(st == want, "%s: got %s, want %s (%s)", name, lf_status_name(st), lf_status_name(want), err.msg);
    CHECK(f == NULL, "%s: handle returned on failure", name);
    CHECK(strstr(err.msg, name) != NULL, "%s: message does not name the file: %s", name, err.msg);
    if (needle1) CHECK(strstr(err.msg, needle1) != NULL, "%s: message lacks '%s': %s", name, needle1, err.msg);
    if (needle2) CHECK(strstr(err.msg, needle2) != NULL, "%s: message lacks '%s': %s", name, needle2, err.msg);
    printf("    %s -> %s: %s\n", name, lf_status_name(st), err.msg);
    lf_st_close(f);
    /* same verdict from memory */
    uint8_t *buf = NULL;
    size_t n = 0;
    if (read_bytes(path, &buf, &n)) {
        lf_err e2 = {0};
        st = lf_st_open_memory(buf, n, name, &f, &e2);
        CHECK(st == want, "%s (memory): got %s, want %s (%s)", name, lf_status_name(st), lf_status_name(want), e2.msg);
        CHECK(strcmp(err.msg + strlen(path), e2.msg + strlen(name)) == 0, "memory message differs: %s", e2.msg);
        lf_st_close(f);
        free(buf);
    }
    return ok;
}

static int expect_good(const char *name, const char *header, size_t data_len, int64_t want_count) {
    int ok = 1;
    char path[1024];
    make_raw(name, header, 0, data_len, path, sizeof path);
    lf_err err = {0};
    lf_st_file *f = NULL;
    lf_status st = lf_st_open(path, &f, &err);
    CHECK(st == LF_OK, "%s: %s", name, err.msg);
    if (f) CHECK(lf_st_count(f) == want_count, "%s: count %" PRId64, name, lf_st_count(f));
    lf_st_close(f);
    return ok;
}

/* ---- reference byte vectors (safetensors tensor.rs tests) ---- */

static int file_equals(const char *path, const uint8_t *want, size_t n) {
    uint8_t *got = NULL;
    size_t gn = 0;
    if (!read_bytes(path, &got, &gn)) return 0;
    int eq = gn == n && memcmp(got, want, n) == 0;
    free(got);
    return eq;
}

static int case_reference_vectors(void) {
    int ok = 1;
    char path[1024];
    lf_err err = {0};
    float v[6] = {0, 1, 2, 3, 4, 5};
    /* test_serialization: "attn.0" F32 [1,2,3] */
    static const uint8_t ser[] = {
        64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34,
        58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97,
        116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0,
        128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64};
    lf_st_writer *w = lf_st_writer_create();
    CHECK(lf_st_writer_add(w, "attn.0", LF_DTYPE_F32, 3, (int64_t[]){1, 2, 3}, v, &err) == LF_OK, "%s", err.msg);
    tpath(path, sizeof path, "ref_ser.safetensors");
    CHECK(lf_st_writer_write(w, path, &err) == LF_OK, "%s", err.msg);
    CHECK(file_equals(path, ser, sizeof ser), "test_serialization bytes differ");
    lf_st_writer_free(w);
    /* test_serialization_forced_alignement: "attn0" [1,1,2,3] pads 7 spaces */
    static const uint8_t al[] = {
        72, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 48, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58,
        34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 49, 44, 49, 44, 50, 44, 51, 93, 44, 34, 100,
        97, 116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 32, 32, 32,
        32, 32, 32, 32, 0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64};
    w = lf_st_writer_create();
    CHECK(lf_st_writer_add(w, "attn0", LF_DTYPE_F32, 4, (int64_t[]){1, 1, 2, 3}, v, &err) == LF_OK, "%s", err.msg);
    tpath(path, sizeof path, "ref_align.safetensors");
    CHECK(lf_st_writer_write(w, path, &err) == LF_OK, "%s", err.msg);
    CHECK(file_equals(path, al, sizeof al), "test_serialization_forced_alignement bytes differ");
    lf_st_file *f = NULL;
    CHECK(lf_st_open(path, &f, &err) == LF_OK, "%s", err.msg);
    if (f) {
        const lf_st_tensor *t = lf_st_find(f, "attn0");
        CHECK(t && ((uintptr_t)t->data % 4) == 0, "data not 4-aligned");
        CHECK(t && memcmp(t->data, v, sizeof v) == 0, "data differs");
    }
    lf_st_close(f);
    lf_st_writer_free(w);
    /* test_empty: no tensors, with and without metadata */
    static const uint8_t e0[] = {8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32};
    static const uint8_t e1[] = {40, 0, 0, 0, 0, 0, 0, 0, 123, 34, 95, 95, 109, 101, 116, 97, 100, 97, 116, 97, 95,
                                 95, 34, 58, 123, 34, 102, 114, 97, 109, 101, 119, 111, 114, 107, 34, 58, 34, 112,
                                 116, 34, 125, 125, 32, 32, 32, 32, 32};
    w = lf_st_writer_create();
    tpath(path, sizeof path, "ref_empty.safetensors");
    CHECK(lf_st_writer_write(w, path, &err) == LF_OK, "%s", err.msg);
    CHECK(file_equals(path, e0, sizeof e0), "test_empty bytes differ");
    CHECK(lf_st_open(path, &f, &err) == LF_OK && lf_st_count(f) == 0, "%s", err.msg);
    lf_st_close(f);
    CHECK(lf_st_writer_set_meta(w, "framework", "pt", &err) == LF_OK, "%s", err.msg);
    tpath(path, sizeof path, "ref_empty_meta.safetensors");
    CHECK(lf_st_writer_write(w, path, &err) == LF_OK, "%s", err.msg);
    CHECK(file_equals(path, e1, sizeof e1), "test_empty (metadata) bytes differ");
    CHECK(lf_st_open(path, &f, &err) == LF_OK, "%s", err.msg);
    if (f) CHECK(lf_st_meta(f, "framework") && strcmp(lf_st_meta(f, "framework"), "pt") == 0, "metadata lost");
    lf_st_close(f);
    lf_st_writer_free(w);
    return ok;
}

/* ---- random round trip ---- */

typedef struct rt_tensor {
    char name[64];
    lf_dtype dt;
    int ndim;
    int64_t shape[8];
    uint8_t *data;
    int64_t nbytes;
} rt_tensor;

static void random_shape(rt_tensor *t, int kind) {
    /* kind 0: random rank 0..4; 1: rank 0; 2: zero-size; 3: rank 8 */
    t->ndim = kind == 1 ? 0 : kind == 3 ? 8 : (int)rnd_in(kind == 2 ? 1 : 0, 4);
    for (int d = 0; d < t->ndim; d++) t->shape[d] = kind == 3 ? rnd_in(1, 2) : rnd_in(1, 5);
    if (kind == 2) t->shape[rnd_in(0, t->ndim - 1)] = 0;
    int64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
    if (lf_dtype_nbytes(t->dt, numel) < 0) { /* F4 / F6: make numel a multiple of 4 */
        if (t->ndim == 0) {
            t->ndim = 1;
            t->shape[0] = 4;
        } else {
            t->shape[t->ndim - 1] *= 4;
        }
    }
}

static int64_t rt_numel(const rt_tensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

static int case_roundtrip_all_dtypes(void) {
    int ok = 1;
    enum { KINDS = 4 };
    rt_tensor ts[LF_DTYPE_COUNT * KINDS];
    int nt = 0;
    lf_err err = {0};
    lf_st_writer *w = lf_st_writer_create();
    for (int dt = 0; dt < LF_DTYPE_COUNT; dt++) {
        for (int kind = 0; kind < KINDS; kind++) {
            rt_tensor *t = &ts[nt];
            memset(t, 0, sizeof *t);
            t->dt = (lf_dtype)dt;
            snprintf(t->name, sizeof t->name, "layers.%d.%s.k%d", (int)rnd_in(0, 99), lf_dtype_name(t->dt), kind);
            random_shape(t, kind);
            t->nbytes = lf_dtype_nbytes(t->dt, rt_numel(t));
            if (t->nbytes < 0) {
                CHECK(0, "bad generated shape for %s", t->name);
                continue;
            }
            t->data = malloc((size_t)t->nbytes + 1);
            for (int64_t i = 0; i < t->nbytes; i++) t->data[i] = (uint8_t)rnd();
            CHECK(lf_st_writer_add(w, t->name, t->dt, t->ndim, t->shape, t->data, &err) == LF_OK, "%s", err.msg);
            nt++;
        }
    }
    CHECK(lf_st_writer_set_meta(w, "format", "pt", &err) == LF_OK, "%s", err.msg);
    CHECK(lf_st_writer_set_meta(w, "note", "tab\there \"quoted\" back\\slash \x01\x1b ctl, caf\xc3\xa9 \xe2\x9c\x93", &err) == LF_OK, "%s", err.msg);
    CHECK(lf_st_writer_set_meta(w, "aaa", "first-set order, not sorted", &err) == LF_OK, "%s", err.msg);
    CHECK(lf_st_writer_set_meta(w, "format", "pt", &err) == LF_OK, "%s", err.msg); /* replace keeps position */
    char path[1024];
    tpath(path, sizeof path, "roundtrip.safetensors");
    CHECK(lf_st_writer_write(w, path, &err) == LF_OK, "%s", err.msg);
    lf_st_writer_free(w); /* the file must not depend on the writer any more */

    uint8_t *bytes = NULL;
    size_t blen = 0;
    CHECK(read_bytes(path, &bytes, &blen), "cannot read back");
    for (int pass = 0; pass < 2 && bytes; pass++) {
        lf_st_file *f = NULL;
        lf_status st = pass == 0 ? lf_st_open(path, &f, &err) : lf_st_open_memory(bytes, blen, "mem", &f, &err);
        CHECK(st == LF_OK, "open (pass %d): %s", pass, err.msg);
        if (!f) continue;
        CHECK(lf_st_count(f) == nt, "count %" PRId64 " != %d", lf_st_count(f), nt);
        for (int i = 0; i < nt; i++) {
            const rt_tensor *t = &ts[i];
            const lf_st_tensor *g = lf_st_find(f, t->name);
            CHECK(g != NULL, "'%s' not found", t->name);
            if (!g) continue;
            CHECK(g->dtype == t->dt && g->ndim == t->ndim, "'%s': dtype/rank differ", t->name);
            for (int d = 0; d < t->ndim; d++) CHECK(g->shape[d] == t->shape[d], "'%s': shape[%d]", t->name, d);
            CHECK(g->numel == rt_numel(t), "'%s': numel", t->name);
            CHECK((int64_t)(g->end - g->begin) == t->nbytes, "'%s': span", t->name);
            CHECK(t->nbytes == 0 || memcmp(g->data, t->data, (size_t)t->nbytes) == 0, "'%s': bytes differ", t->name);
            int eb = lf_dtype_bits(t->dt) / 8;
            CHECK(eb == 0 || (uintptr_t)g->data % (uintptr_t)eb == 0 || pass == 1, "'%s': misaligned", t->name);
        }
        /* file order: offsets tile; write order is dtype descending then name */
        uint64_t at = 0;
        for (int64_t i = 0; i < lf_st_count(f); i++) {
            const lf_st_tensor *g = lf_st_at(f, i);
            CHECK(g->begin == at, "tensor %" PRId64 " begins at %" PRIu64 ", expected %" PRIu64, i, g->begin, at);
            at = g->end;
            if (i > 0 && lf_st_at(f, i - 1)->begin != g->begin) { /* zero-size ties are ambiguous here */
                const lf_st_tensor *p = lf_st_at(f, i - 1);
                CHECK(p->dtype > g->dtype || (p->dtype == g->dtype && strcmp(p->name, g->name) < 0),
                      "write order: '%s' before '%s'", p->name, g->name);
            }
        }
        CHECK(lf_st_at(f, -1) == NULL && lf_st_at(f, lf_st_count(f)) == NULL, "at out of range");
        CHECK(lf_st_find(f, "no.such.tensor") == NULL, "find of an absent name");
        CHECK(lf_st_meta_count(f) == 3, "meta count %" PRId64, lf_st_meta_count(f));
        CHECK(lf_st_meta_key(f, 0) && strcmp(lf_st_meta_key(f, 0), "format") == 0, "meta order 0");
        CHECK(lf_st_meta_key(f, 1) && strcmp(lf_st_meta_key(f, 1), "note") == 0, "meta order 1");
        CHECK(lf_st_meta_key(f, 2) && strcmp(lf_st_meta_key(f, 2), "aaa") == 0, "meta order 2");
        CHECK(lf_st_meta_key(f, 3) == NULL, "meta key out of range");
        const char *note = lf_st_meta(f, "note");
        CHECK(note && strcmp(note, "tab\there \"quoted\" back\\slash \x01\x1b ctl, caf\xc3\xa9 \xe2\x9c\x93") == 0,
              "metadata escapes did not round trip: %s", note ? note : "(null)");
        CHECK(lf_st_meta(f, "missing") == NULL, "absent metadata key");
        CHECK(strcmp(lf_st_path(f), pass == 0 ? path : "mem") == 0, "path");
        lf_st_close(f);
    }
    /* header: multiple of 8, space padded, serde escapes (\t, \", \\, \u0001) */
    if (bytes && blen >= 8) {
        uint64_t n = 0;
        for (int i = 7; i >= 0; i--) n = (n << 8) | bytes[i];
        CHECK(n % 8 == 0, "header length %" PRIu64 " not a multiple of 8", n);
        char *h = malloc(n + 1);
        memcpy(h, bytes + 8, n);
        h[n] = 0;
        const char *want = "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"tab\\there \\\"quoted\\\" back\\\\slash \\u0001\\u001b ctl";
        CHECK(strncmp(h, want, strlen(want)) == 0, "header start: %.80s", h);
        /* header key order is the writer's order: dtype descending, then name */
        json_t *root = json_loads(h, 0, NULL);
        CHECK(root != NULL, "header does not parse");
        const char *key, *prev = NULL;
        json_t *v;
        lf_dtype pdt = LF_DTYPE_COUNT;
        json_object_foreach(root, key, v) {
            if (strcmp(key, "__metadata__") == 0) {
                CHECK(prev == NULL, "__metadata__ is not first");
                prev = key;
                continue;
            }
            lf_dtype dt = lf_dtype_from_name(json_string_value(json_object_get(v, "dtype")));
            CHECK(dt < pdt || (dt == pdt && strcmp(prev, key) < 0), "header order: '%s' after '%s'", key, prev);
            pdt = dt;
            prev = key;
        }
        json_decref(root);
        char *end = strrchr(h, '}');
        for (char *p = end + 1; p && *p; p++) CHECK(*p == ' ', "padding byte 0x%02x", (unsigned char)*p);
        free(h);
    }
    free(bytes);
    for (int i = 0; i < nt; i++) free(ts[i].data);
    return ok;
}

static int case_many_tensors_lookup(void) {
    int ok = 1;
    enum { N = 1500 };
    lf_err err = {0};
    lf_st_writer *w = lf_st_writer_create();
    static uint16_t vals[N];
    char name[64];
    for (int i = 0; i < N; i++) {
        vals[i] = (uint16_t)rnd();
        snprintf(name, sizeof name, "model.layers.%d.mlp.up_proj.weight", i);
        if (lf_st_writer_add(w, name, LF_DTYPE_BF16, 1, (int64_t[]){1}, &vals[i], &err) != LF_OK) {
            CHECK(0, "%s", err.msg);
            break;
        }
    }
    lf_status st = lf_st_writer_add(w, "model.layers.7.mlp.up_proj.weight", LF_DTYPE_F32, 0, NULL, vals, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "model.layers.7.mlp.up_proj.weight"), "duplicate add: %s", err.msg);
    char path[1024];
    tpath(path, sizeof path, "many.safetensors");
    CHECK(lf_st_writer_write(w, path, &err) == LF_OK, "%s", err.msg);
    lf_st_writer_free(w);
    lf_st_file *f = NULL;
    CHECK(lf_st_open(path, &f, &err) == LF_OK, "%s", err.msg);
    if (!f) return 0;
    CHECK(lf_st_count(f) == N, "count");
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "model.layers.%d.mlp.up_proj.weight", i);
        const lf_st_tensor *t = lf_st_find(f, name);
        CHECK(t && memcmp(t->data, &vals[i], 2) == 0, "'%s'", name);
    }
    CHECK(lf_st_find(f, "model.layers.1500.mlp.up_proj.weight") == NULL, "absent");
    lf_st_close(f);
    return ok;
}

static int case_writer_rejects(void) {
    int ok = 1;
    lf_err err = {0};
    float x[8] = {0};
    lf_st_writer *w = lf_st_writer_create();
    lf_status st;
    st = lf_st_writer_add(w, "__metadata__", LF_DTYPE_F32, 1, (int64_t[]){1}, x, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "__metadata__"), "reserved name: %s", err.msg);
    st = lf_st_writer_add(w, "w.f4", LF_DTYPE_F4, 1, (int64_t[]){3}, x, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "w.f4") && strstr(err.msg, "12 bits"), "odd F4: %s", err.msg);
    st = lf_st_writer_add(w, "w.f6", LF_DTYPE_F6_E2M3, 1, (int64_t[]){2}, x, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "w.f6"), "F6 x2: %s", err.msg);
    st = lf_st_writer_add(w, "w.neg", LF_DTYPE_F32, 2, (int64_t[]){2, -1}, x, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "w.neg") && strstr(err.msg, "-1"), "negative: %s", err.msg);
    st = lf_st_writer_add(w, "w.rank9", LF_DTYPE_F32, 9, (int64_t[]){1, 1, 1, 1, 1, 1, 1, 1, 1}, x, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "w.rank9"), "rank 9: %s", err.msg);
    st = lf_st_writer_add(w, "w.\xc3(bad", LF_DTYPE_F32, 0, NULL, x, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "UTF-8"), "bad utf8: %s", err.msg);
    st = lf_st_writer_add(w, "w.null", LF_DTYPE_F32, 1, (int64_t[]){2}, NULL, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "w.null"), "NULL data: %s", err.msg);
    st = lf_st_writer_add(w, "w.huge", LF_DTYPE_F64, 3, (int64_t[]){1ll << 40, 1ll << 40, 1 << 20}, x, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "w.huge"), "overflow: %s", err.msg);
    st = lf_st_writer_add(w, "w.bad_dtype", LF_DTYPE_INVALID, 0, NULL, x, &err);
    CHECK(st == LF_EINVAL, "invalid dtype: %s", err.msg);
    st = lf_st_writer_add(w, "w.empty_null", LF_DTYPE_F32, 2, (int64_t[]){0, 3}, NULL, &err);
    CHECK(st == LF_OK, "zero-size with NULL data: %s", err.msg);
    st = lf_st_writer_set_meta(w, "k", "\xff", &err);
    CHECK(st == LF_EINVAL, "bad utf8 meta: %s", err.msg);
    char path[1024];
    snprintf(path, sizeof path, "%s/no/such/dir/x.safetensors", g_dir);
    st = lf_st_writer_write(w, path, &err);
    CHECK(st == LF_EIO && strstr(err.msg, "x.safetensors"), "unwritable path: %s", err.msg);
    lf_st_writer_free(w);
    lf_st_writer_free(NULL);
    lf_st_close(NULL);
    lf_st_model_close(NULL);
    return ok;
}

/* Raw files our writer would never produce but the reference accepts. */
static int case_reader_accepts(void) {
    int ok = 1;
    /* unsorted in the header, trailing padding, null metadata, extra fields, zero-size at the same offset */
    ok &= expect_good("acc_unsorted.safetensors",
                      "{\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]},"
                      "\"a\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[0,4]}}      ",
                      8, 2);
    ok &= expect_good("acc_nullmeta.safetensors",
                      "{\"__metadata__\":null,\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4],\"x\":1}}", 4, 1);
    ok &= expect_good("acc_zero.safetensors",
                      "{\"z2\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                      "\"z1\":{\"dtype\":\"F64\",\"shape\":[3,0],\"data_offsets\":[0,0]},"
                      "\"a\":{\"dtype\":\"F4\",\"shape\":[2],\"data_offsets\":[0,1]},"
                      "\"z3\":{\"dtype\":\"BOOL\",\"shape\":[0,1],\"data_offsets\":[1,1]}}",
                      1, 4);
    ok &= expect_good("acc_empty.safetensors", "{}", 0, 0);
    ok &= expect_good("acc_ws.safetensors", "{ \"a\" : { \"dtype\" : \"U8\" , \"shape\" : [ 1 ] , \"data_offsets\" : [ 0 , 1 ] } }\n\t ", 1, 1);
    /* F6: 4 elements = 3 bytes */
    ok &= expect_good("acc_f6.safetensors", "{\"a\":{\"dtype\":\"F6_E3M2\",\"shape\":[2,2],\"data_offsets\":[0,3]}}", 3, 1);
    return ok;
}

static int case_bad_inputs(void) {
    int ok = 1;
    char path[1024];
    /* file shorter than 8 bytes */
    tpath(path, sizeof path, "bad_tiny.safetensors");
    write_bytes(path, "\x05\x00\x00", 3);
    {
        lf_err err = {0};
        lf_st_file *f = NULL;
        lf_status st = lf_st_open(path, &f, &err);
        CHECK(st == LF_EFORMAT && strstr(err.msg, "bad_tiny.safetensors") && strstr(err.msg, "3 bytes"), "tiny: %s", err.msg);
        printf("    bad_tiny.safetensors -> %s: %s\n", lf_status_name(st), err.msg);
        tpath(path, sizeof path, "bad_zero.safetensors");
        write_bytes(path, "", 0);
        st = lf_st_open(path, &f, &err);
        CHECK(st == LF_EFORMAT && strstr(err.msg, "bad_zero.safetensors"), "empty file: %s", err.msg);
        tpath(path, sizeof path, "does_not_exist.safetensors");
        st = lf_st_open(path, &f, &err);
        CHECK(st == LF_ENOTFOUND && strstr(err.msg, "does_not_exist"), "missing: %s", err.msg);
        st = lf_st_open(g_dir, &f, &err);
        CHECK(st == LF_EINVAL, "directory: %s", err.msg);
    }
    const char *ok1 = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    ok &= expect_bad("bad_hdr_past_eof.safetensors", ok1, 1000, 8, LF_EFORMAT, "1000", "past the end");
    ok &= expect_bad("bad_hdr_too_big.safetensors", ok1, 100000001ull, 8, LF_EFORMAT, "100000001", "100000000");
    ok &= expect_bad("bad_hdr_huge.safetensors", ok1, UINT64_MAX, 8, LF_EFORMAT, "18446744073709551615", NULL);
    ok &= expect_bad("bad_start_space.safetensors", " {\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                     0, 8, LF_EFORMAT, "start with '{'", NULL);
    ok &= expect_bad("bad_start_array.safetensors", "[1]", 0, 0, LF_EFORMAT, "start with '{'", NULL);
    ok &= expect_bad("bad_start_empty.safetensors", "", 0, 0, LF_EFORMAT, "start with '{'", NULL);
    ok &= expect_bad("bad_json.safetensors", "{\"w\":{\"dtype\":\"F32\",}}", 0, 0, LF_EFORMAT, "not valid JSON", NULL);
    ok &= expect_bad("bad_json_trailing.safetensors", "{} x", 0, 0, LF_EFORMAT, "not valid JSON", NULL);
    ok &= expect_bad("bad_utf8.safetensors", "{\"w\xc3\x28\":{}}", 0, 0, LF_EFORMAT, "UTF-8", "offset 11");
    ok &= expect_bad("bad_surrogate.safetensors", "{\"\xed\xa0\x80\":{}}", 0, 0, LF_EFORMAT, "UTF-8", NULL);
    ok &= expect_bad("bad_dup.safetensors",
                     "{\"w.dup\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                     "\"w.dup\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                     0, 2, LF_EFORMAT, "duplicate", "w.dup");
    ok &= expect_bad("bad_gap.safetensors",
                     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                     "\"b.gap\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                     0, 12, LF_EFORMAT, "tensor 'b.gap': data_offsets [8, 12) leave a gap", "expected begin 4");
    ok &= expect_bad("bad_overlap.safetensors",
                     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                     "\"b.over\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                     0, 12, LF_EFORMAT, "tensor 'b.over': data_offsets [4, 12) overlap tensor 'a' [0, 8)", NULL);
    ok &= expect_bad("bad_not_zero.safetensors", "{\"w.first\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                     0, 8, LF_EFORMAT, "tensor 'w.first': data_offsets [4, 8)", "begin at offset 0");
    ok &= expect_bad("bad_end_before.safetensors", "{\"w.rev\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                     "\"w.rev2\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}",
                     0, 4, LF_EFORMAT, "w.rev2", "end before begin");
    ok &= expect_bad("bad_longer.safetensors", ok1, 0, 11, LF_EFORMAT, "last tensor 'w'", "trailing bytes");
    ok &= expect_bad("bad_shorter.safetensors", ok1, 0, 5, LF_EFORMAT, "last tensor 'w'", "truncated");
    ok &= expect_bad("bad_dtype.safetensors", "{\"w.dt\":{\"dtype\":\"F31\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                     0, 4, LF_EFORMAT, "tensor 'w.dt'", "unknown dtype \"F31\"");
    ok &= expect_bad("bad_dtype_lower.safetensors", "{\"w.dt\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                     0, 4, LF_EFORMAT, "tensor 'w.dt'", "\"f32\"");
    ok &= expect_bad("bad_dtype_type.safetensors", "{\"w.dt\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}",
                     0, 4, LF_EFORMAT, "tensor 'w.dt'", "an integer");
    ok &= expect_bad("bad_span.safetensors",
                     "{\"model.layers.0.mlp.up_proj.weight\":{\"dtype\":\"F32\",\"shape\":[64,32],\"data_offsets\":[0,8000]}}",
                     0, 8000, LF_EFORMAT,
                     "tensor 'model.layers.0.mlp.up_proj.weight': data_offsets [0, 8000) but shape [64, 32] x F32 needs 8192 bytes",
                     NULL);
    ok &= expect_bad("bad_f4_bits.safetensors", "{\"w.f4\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,1]}}",
                     0, 1, LF_EFORMAT, "tensor 'w.f4'", "12 bits");
    ok &= expect_bad("bad_overflow.safetensors",
                     "{\"w.big\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}",
                     0, 4, LF_EFORMAT, "tensor 'w.big'", "overflows");
    ok &= expect_bad("bad_neg_shape.safetensors", "{\"w.neg\":{\"dtype\":\"F32\",\"shape\":[-1,4],\"data_offsets\":[0,4]}}",
                     0, 4, LF_EFORMAT, "tensor 'w.neg'", "shape[0] is -1");
    ok &= expect_bad("bad_float_shape.safetensors", "{\"w.fl\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}",
                     0, 4, LF_EFORMAT, "tensor 'w.fl'", "a real number");
    ok &= expect_bad("bad_no_shape.safetensors", "{\"w.ns\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}",
                     0, 4, LF_EFORMAT, "tensor 'w.ns'", "\"shape\" is missing");
    ok &= expect_bad("bad_offsets3.safetensors", "{\"w.o3\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}",
                     0, 4, LF_EFORMAT, "tensor 'w.o3'", "[0,4,8]");
    ok &= expect_bad("bad_offsets_neg.safetensors", "{\"w.on\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}",
                     0, 4, LF_EFORMAT, "tensor 'w.on'", "data_offsets");
    ok &= expect_bad("bad_entry.safetensors", "{\"w.str\":\"F32\"}", 0, 0, LF_EFORMAT, "tensor 'w.str'", "a string");
    ok &= expect_bad("bad_rank9.safetensors",
                     "{\"w.r9\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}",
                     0, 1, LF_EUNSUPPORTED, "tensor 'w.r9'", "rank 9");
    ok &= expect_bad("bad_meta_value.safetensors",
                     "{\"__metadata__\":{\"format\":\"pt\",\"step\":1},\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                     0, 1, LF_EFORMAT, "__metadata__ key 'step'", "an integer");
    ok &= expect_bad("bad_meta_nested.safetensors", "{\"__metadata__\":{\"cfg\":{\"a\":\"b\"}}}", 0, 0, LF_EFORMAT,
                     "__metadata__ key 'cfg'", "an object");
    ok &= expect_bad("bad_meta_type.safetensors", "{\"__metadata__\":[\"a\"]}", 0, 0, LF_EFORMAT, "__metadata__ is an array",
                     NULL);
    ok &= expect_bad("bad_nul.safetensors", "{\"__metadata__\":{\"k\":\"a\\u0000b\"}}", 0, 0, LF_EFORMAT, "JSON", NULL);
    return ok;
}

/* ---- sharded model directories ---- */

static int write_shard(const char *dir, const char *file, int first, int count, float *vals) {
    lf_err err = {0};
    char path[1024], name[64];
    lf_st_writer *w = lf_st_writer_create();
    for (int i = first; i < first + count; i++) {
        snprintf(name, sizeof name, "model.layers.%d.weight", i);
        lf_st_writer_add(w, name, LF_DTYPE_F32, 2, (int64_t[]){2, 2}, &vals[4 * i], &err);
    }
    snprintf(path, sizeof path, "%s/%s", dir, file);
    lf_status st = lf_st_writer_write(w, path, &err);
    lf_st_writer_free(w);
    return st == LF_OK;
}

static int write_text(const char *dir, const char *file, const char *text) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    return lf_file_write_atomic(path, text, strlen(text), NULL) == LF_OK;
}

/* index.json mapping tensors [0,n) to shards of `per` tensors, with one entry rewritten by `override`. */
static char *index_json(int n, int per, int nshards, const char *override_name, const char *override_file) {
    size_t cap = 64 + (size_t)n * 128;
    char *s = malloc(cap);
    size_t o = (size_t)snprintf(s, cap, "{\"metadata\":{\"total_size\":%d},\"weight_map\":{", n * 16);
    for (int i = 0; i < n; i++) {
        char name[64], file[64];
        snprintf(name, sizeof name, "model.layers.%d.weight", i);
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", i / per + 1, nshards);
        const char *fn = override_name && strcmp(name, override_name) == 0 ? override_file : file;
        o += (size_t)snprintf(s + o, cap - o, "%s\"%s\":\"%s\"", i ? "," : "", name, fn);
    }
    snprintf(s + o, cap - o, "}}");
    return s;
}

static int case_sharded_model(void) {
    int ok = 1;
    enum { N = 10, PER = 4, NS = 3 };
    float vals[4 * N];
    for (int i = 0; i < 4 * N; i++) vals[i] = (float)(rnd() % 1000) / 7.0f;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/sharded", g_dir);
    lf_mkdirs(dir, NULL);
    char file[64];
    for (int s = 0; s < NS; s++) {
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", s + 1, NS);
        CHECK(write_shard(dir, file, s * PER, s == NS - 1 ? N - s * PER : PER, vals), "shard %d", s);
    }
    char *idx = index_json(N, PER, NS, NULL, NULL);
    CHECK(write_text(dir, "model.safetensors.index.json", idx), "index");
    free(idx);
    lf_err err = {0};
    for (int via = 0; via < 2; via++) {
        char p[1024];
        snprintf(p, sizeof p, via ? "%s/model.safetensors.index.json" : "%s", dir);
        lf_st_model *m = NULL;
        CHECK(lf_st_model_open(p, &m, &err) == LF_OK, "%s", err.msg);
        if (!m) continue;
        CHECK(lf_st_model_count(m) == N && lf_st_model_nfiles(m) == NS, "count %" PRId64 " files %d",
              lf_st_model_count(m), lf_st_model_nfiles(m));
        for (int i = 0; i < N; i++) {
            char name[64], want[64];
            snprintf(name, sizeof name, "model.layers.%d.weight", i);
            snprintf(want, sizeof want, "model-%05d-of-%05d.safetensors", i / PER + 1, NS);
            const lf_st_file *sf = NULL;
            const lf_st_tensor *t = lf_st_model_find(m, name, &sf);
            CHECK(t && memcmp(t->data, &vals[4 * i], 16) == 0, "'%s' data", name);
            CHECK(sf && strstr(lf_st_path(sf), want), "'%s' in %s, want %s", name, sf ? lf_st_path(sf) : "-", want);
        }
        CHECK(lf_st_model_find(m, "nope", NULL) == NULL, "absent");
        const lf_st_file *sf = NULL;
        CHECK(lf_st_model_at(m, N, &sf) == NULL && sf == NULL, "at past end");
        int seen = 0;
        for (int64_t i = 0; i < lf_st_model_count(m); i++) seen += lf_st_model_at(m, i, NULL) != NULL;
        CHECK(seen == N, "iteration");
        CHECK(lf_st_model_file(m, 0) && strstr(lf_st_path(lf_st_model_file(m, 0)), "model-00001-of-00003"), "file order");
        lf_st_model_close(m);
    }

    /* single-file directory, and a file given directly */
    char one[512];
    snprintf(one, sizeof one, "%s/single", g_dir);
    lf_mkdirs(one, NULL);
    CHECK(write_shard(one, "model.safetensors", 0, 3, vals), "single");
    for (int via = 0; via < 2; via++) {
        char p[1024];
        snprintf(p, sizeof p, via ? "%s/model.safetensors" : "%s", one);
        lf_st_model *m = NULL;
        CHECK(lf_st_model_open(p, &m, &err) == LF_OK, "%s", err.msg);
        if (m) CHECK(lf_st_model_count(m) == 3 && lf_st_model_nfiles(m) == 1, "single count");
        lf_st_model_close(m);
    }
    lf_st_model *m = NULL;
    char p[1024];
    snprintf(p, sizeof p, "%s/empty_model_dir", g_dir);
    lf_mkdirs(p, NULL);
    lf_status st = lf_st_model_open(p, &m, &err);
    CHECK(st == LF_ENOTFOUND && strstr(err.msg, "empty_model_dir"), "empty dir: %s", err.msg);
    snprintf(p, sizeof p, "%s/nothing_here", g_dir);
    st = lf_st_model_open(p, &m, &err);
    CHECK(st == LF_ENOTFOUND && strstr(err.msg, "nothing_here"), "nonexistent: %s", err.msg);
    return ok;
}

static int expect_model_bad(const char *sub, const char *index, lf_status want, const char *n1, const char *n2,
                            const char *n3) {
    int ok = 1;
    float vals[16] = {0};
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", g_dir, sub);
    lf_mkdirs(dir, NULL);
    write_shard(dir, "model-00001-of-00002.safetensors", 0, 2, vals);
    write_shard(dir, "model-00002-of-00002.safetensors", 2, 2, vals);
    write_text(dir, "model.safetensors.index.json", index);
    lf_err err = {0};
    lf_st_model *m = NULL;
    lf_status st = lf_st_model_open(dir, &m, &err);
    CHECK(st == want, "%s: got %s want %s: %s", sub, lf_status_name(st), lf_status_name(want), err.msg);
    CHECK(m == NULL, "handle on failure");
    CHECK(strstr(err.msg, "model.safetensors.index.json") != NULL, "%s: index file not named: %s", sub, err.msg);
    if (n1) CHECK(strstr(err.msg, n1) != NULL, "%s: lacks '%s': %s", sub, n1, err.msg);
    if (n2) CHECK(strstr(err.msg, n2) != NULL, "%s: lacks '%s': %s", sub, n2, err.msg);
    if (n3) CHECK(strstr(err.msg, n3) != NULL, "%s: lacks '%s': %s", sub, n3, err.msg);
    printf("    %s -> %s: %s\n", sub, lf_status_name(st), err.msg);
    lf_st_model_close(m);
    return ok;
}

static int case_sharded_bad(void) {
    int ok = 1;
    char *idx;
    idx = index_json(4, 2, 2, "model.layers.3.weight", "model-00003-of-00002.safetensors");
    ok &= expect_model_bad("idx_missing_shard", idx, LF_ENOTFOUND, "model.layers.3.weight",
                           "model-00003-of-00002.safetensors", "does not exist");
    free(idx);
    idx = index_json(5, 2, 2, "model.layers.4.weight", "model-00002-of-00002.safetensors");
    ok &= expect_model_bad("idx_absent_tensor", idx, LF_EFORMAT, "model.layers.4.weight",
                           "model-00002-of-00002.safetensors", "no such tensor");
    free(idx);
    ok &= expect_model_bad("idx_bad_json", "{\"weight_map\":", LF_EFORMAT, "not valid JSON", NULL, NULL);
    ok &= expect_model_bad("idx_no_map", "{\"metadata\":{}}", LF_EFORMAT, "weight_map", "missing", NULL);
    ok &= expect_model_bad("idx_escape", "{\"weight_map\":{\"model.layers.0.weight\":\"../x.safetensors\"}}", LF_EFORMAT,
                           "model.layers.0.weight", "../x.safetensors", NULL);
    ok &= expect_model_bad("idx_non_string", "{\"weight_map\":{\"model.layers.0.weight\":3}}", LF_EFORMAT,
                           "model.layers.0.weight", "an integer", NULL);
    /* a shard that is itself corrupt: message names the index, the shard and the tensor */
    {
        char dir[512], path[1024];
        snprintf(dir, sizeof dir, "%s/idx_corrupt_shard", g_dir);
        lf_mkdirs(dir, NULL);
        float vals[16] = {0};
        write_shard(dir, "model-00001-of-00002.safetensors", 0, 2, vals);
        snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
        const char *h = "{\"model.layers.2.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,15]}}";
        size_t hl = strlen(h);
        uint8_t b[256] = {0};
        b[0] = (uint8_t)hl;
        memcpy(b + 8, h, hl);
        write_bytes(path, b, 8 + hl + 15);
        idx = index_json(3, 2, 2, NULL, NULL);
        write_text(dir, "model.safetensors.index.json", idx);
        free(idx);
        lf_err err = {0};
        lf_st_model *m = NULL;
        lf_status st = lf_st_model_open(dir, &m, &err);
        CHECK(st == LF_EFORMAT && strstr(err.msg, "model-00002-of-00002.safetensors") &&
                  strstr(err.msg, "model.layers.2.weight") && strstr(err.msg, "needs 16 bytes"),
              "corrupt shard: %s", err.msg);
        printf("    idx_corrupt_shard -> %s: %s\n", lf_status_name(st), err.msg);
    }
    /* the same tensor in two shards */
    {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/idx_twice", g_dir);
        lf_mkdirs(dir, NULL);
        float vals[16] = {0};
        write_shard(dir, "model-00001-of-00002.safetensors", 0, 2, vals);
        write_shard(dir, "model-00002-of-00002.safetensors", 1, 2, vals);
        idx = index_json(3, 2, 2, NULL, NULL);
        write_text(dir, "model.safetensors.index.json", idx);
        free(idx);
        lf_err err = {0};
        lf_st_model *m = NULL;
        lf_status st = lf_st_model_open(dir, &m, &err);
        CHECK(st == LF_EFORMAT && strstr(err.msg, "model.layers.1.weight") && strstr(err.msg, "two shards"),
              "twice: %s", err.msg);
    }
    return ok;
}

/* ---- mutation fuzz: never crash, never accept a file that breaks the invariants ---- */

static int case_fuzz_mutations(void) {
    int ok = 1;
    char path[1024];
    tpath(path, sizeof path, "roundtrip.safetensors");
    uint8_t *orig = NULL;
    size_t n = 0;
    if (!read_bytes(path, &orig, &n)) return 0;
    uint8_t *buf = malloc(n + 16);
    int accepted = 0, rejected = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(buf, orig, n);
        memset(buf + n, 0, 16);
        size_t len = n;
        int muts = (int)rnd_in(1, 4);
        for (int k = 0; k < muts; k++) {
            uint64_t hl = 0;
            for (int i = 7; i >= 0; i--) hl = (hl << 8) | orig[i];
            switch (rnd() % 5) {
            case 0: if (len) buf[rnd() % len] ^= (uint8_t)(1u << (rnd() % 8)); break;      /* bit flip anywhere */
            case 1: buf[8 + rnd() % hl] = "{}[],:\"0123456789 -.eE"[rnd() % 22]; break;   /* JSON punctuation */
            case 2: len = (size_t)rnd_in(0, (int64_t)len); break;                         /* truncate */
            case 3: buf[rnd() % 8] = (uint8_t)rnd(); break;                                /* header length */
            default: len += (size_t)rnd_in(0, 16); break;                                  /* extend */
            }
            if (len > n + 16) len = n + 16;
        }
        lf_err err = {0};
        lf_st_file *f = NULL;
        lf_status st = lf_st_open_memory(buf, len, "fuzz.safetensors", &f, &err);
        if (st == LF_OK) {
            accepted++;
            uint64_t hl = 0;
            for (int i = 7; i >= 0; i--) hl = (hl << 8) | buf[i];
            uint64_t at = 0;
            for (int64_t i = 0; i < lf_st_count(f); i++) {
                const lf_st_tensor *t = lf_st_at(f, i);
                CHECK(t->begin == at && t->end >= t->begin, "accepted a non-tiling file");
                CHECK((const uint8_t *)t->data == buf + 8 + hl + t->begin, "data pointer");
                CHECK(lf_st_find(f, t->name) == t, "find");
                at = t->end;
            }
            CHECK(8 + hl + at == len, "accepted a file with wrong length");
            lf_st_close(f);
        } else {
            rejected++;
            CHECK(f == NULL && strstr(err.msg, "fuzz.safetensors") != NULL, "message without label: %s", err.msg);
        }
        if (!ok) break;
    }
    printf("    fuzz: %d accepted, %d rejected\n", accepted, rejected);
    free(buf);
    free(orig);
    return ok;
}

/* ---- temp dir cleanup ---- */

static void rm_rf(const char *path) {
    struct stat sb;
    if (lstat(path, &sb) != 0) return;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d)) != NULL) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
                char sub[1024];
                snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
                rm_rf(sub);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

/* A header whose length is not a multiple of 8 (the spec allows it) puts BF16/F32 data at odd addresses of the
 * mapping: lf_st_open must hand out aligned pointers with the right bytes (regression: misaligned uint16_t loads
 * in the model loader, UBSan). A tensor misaligned inside the data section is LF_EFORMAT naming it. */
static int case_unaligned_header(void) {
    int ok = 1;
    char path[1024];
    /* data: an F32 [2] at 0..8, a BF16 [3] at 8..14; the header's length makes the data start at an odd byte */
    const char *hdr = "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                      "\"a\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[8,14]}}";
    CHECK((8 + strlen(hdr)) % 8 != 0, "header length %zu must break alignment for this case", strlen(hdr));
    make_raw("unaligned.safetensors", hdr, 0, 14, path, sizeof path);
    lf_err err = {0};
    lf_st_file *f = NULL;
    CHECK(lf_st_open(path, &f, &err) == LF_OK, "odd header length: %s", err.msg);
    if (f) {
        const lf_st_tensor *a = lf_st_find(f, "a"), *b = lf_st_find(f, "b");
        CHECK(a && (uintptr_t)a->data % 2 == 0 && b && (uintptr_t)b->data % 4 == 0, "pointers aligned to 2 and 4");
        uint8_t want[16];
        for (int i = 0; i < 16; i++) want[i] = (uint8_t)(i * 7 + 3); /* make_raw's pattern */
        CHECK(b && memcmp(b->data, want, 8) == 0 && a && memcmp(a->data, want + 8, 6) == 0, "bytes kept");
        float fv[2];
        lf_err e2;
        CHECK(a && lf_to_f32_n(fv, a->data, LF_DTYPE_BF16, 2, &e2) == LF_OK, "bf16 conversion from the copy");
        lf_st_close(f);
    }
    const char *bad = "{\"a\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[0,2]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}  ";
    make_raw("misaligned.safetensors", bad, 0, 6, path, sizeof path);
    f = NULL;
    lf_status st = lf_st_open(path, &f, &err);
    CHECK(st == LF_EFORMAT && !f && strstr(err.msg, "'b'") && strstr(err.msg, "element size"),
          "misaligned tensor: %s: %s", lf_status_name(st), err.msg);
    lf_st_close(f);
    return ok;
}

int main(void) {
    const char *s = getenv("LF_TEST_SEED");
    uint64_t seed = s && *s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    printf("test_safetensors: seed %" PRIu64 " (set LF_TEST_SEED to repeat)\n", seed);
    g_rng = seed ? seed : 1;
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/lf_st_test.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        printf("0 passed, 1 failed\n");
        return 1;
    }
    run("reference_vectors", case_reference_vectors);
    run("roundtrip_all_dtypes", case_roundtrip_all_dtypes);
    run("many_tensors_lookup", case_many_tensors_lookup);
    run("writer_rejects", case_writer_rejects);
    run("reader_accepts", case_reader_accepts);
    run("bad_inputs", case_bad_inputs);
    run("sharded_model", case_sharded_model);
    run("sharded_bad", case_sharded_bad);
    run("fuzz_mutations", case_fuzz_mutations);
    run("unaligned_header", case_unaligned_header);
    rm_rf(g_dir);
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
