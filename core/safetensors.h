/* safetensors.h - header-only (stb style) reader/writer for .safetensors files and sharded HF model dirs.
 *
 * Format: ../shared/formats.md section 1 (8-byte LE header length N, N bytes of JSON starting with '{' and
 * optionally space-padded, then the byte buffer). Every file includes this header for the declarations;
 * exactly one translation unit (core/safetensors.c) defines LF_SAFETENSORS_IMPLEMENTATION first.
 *
 * Reader invariants: lf_st_open/lf_st_open_memory accept exactly what the reference Rust reader
 * (safetensors tensor.rs read_metadata + validate) accepts, with one documented extra limit (rank <= 8):
 *   - N <= 100,000,000 and 8+N <= file length; the header is valid UTF-8 and JSON starting with '{';
 *     no duplicate keys; "__metadata__" (optional, may be null) is an object of string -> string;
 *   - every other key is a tensor: "dtype" a known name (all 22 of lf_dtype), "shape" an array of
 *     non-negative integers, "data_offsets" [begin, end] non-negative integers; unknown fields are ignored;
 *   - sorted by (begin, end) the tensors tile [0, buffer_len) with no gap or overlap, each spans exactly
 *     numel*bits/8 bytes (numel*bits a multiple of 8, no overflow), and 8+N+last_end == file length.
 *   Known differences, all on malformed input: "\u0000" inside JSON strings is rejected (names are C
 *   strings); "-0" is read as 0; duplicate keys inside __metadata__ are rejected (the spec forbids them;
 *   serde keeps the last). safetensors 0.4.x does not check the leading '{'; the spec and we do.
 *   After a successful open: lf_st_at(f, i) is in file-offset order, every data pointer lies inside the
 *   buffer, and the handle is immutable (safe to read from many threads).
 *   Alignment: lf_st_open gives every tensor's data a pointer aligned to its element size. A file whose
 *   header length is not a multiple of 8 (the spec allows it; Python safetensors pads to 8) is read into an
 *   aligned heap copy instead of being mapped; a tensor whose own offset is misaligned for its dtype is
 *   LF_EFORMAT naming it. lf_st_open_memory keeps the caller's buffer: its pointers may be unaligned.
 *
 * Ownership:
 *   - lf_st_file owns its mapping (or borrows the caller's buffer, see lf_st_open_memory), the tensor
 *     array, every name, metadata key/value and the path; all returned pointers die with lf_st_close.
 *   - lf_st_model owns its lf_st_file shards; every pointer it returns dies with lf_st_model_close.
 *   - lf_st_writer copies names, shapes and metadata; it borrows tensor data until the last
 *     lf_st_writer_write that uses it has returned.
 *
 * Errors: every failure returns an lf_status and a message naming the file (path or label), the tensor or
 * key, and the offending offsets/values. LF_EFORMAT malformed contents, LF_ENOTFOUND missing file/shard,
 * LF_EIO open/mmap/write failures, LF_EINVAL bad arguments, LF_EUNSUPPORTED rank > 8, LF_ENOMEM. */
#ifndef LF_CORE_SAFETENSORS_H
#define LF_CORE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h" // defines: lf_status, lf_err
#include "core/tensor.h" // defines: lf_dtype, lf_dtype_bits, lf_dtype_name, lf_dtype_from_name

#ifdef __cplusplus
extern "C" {
#endif

#define LF_ST_MAX_DIMS 8
#define LF_ST_MAX_HEADER_SIZE 100000000ull /* reference MAX_HEADER_SIZE */

typedef struct lf_st_tensor {
    const char *name;               /* owned by the file handle */
    lf_dtype dtype;
    int ndim;                       /* 0..LF_ST_MAX_DIMS; 0 = scalar */
    int64_t shape[LF_ST_MAX_DIMS];  /* row-major; entries >= ndim are 1 */
    int64_t numel;                  /* product of shape (1 for rank 0, 0 for zero-size) */
    uint64_t begin, end;            /* data_offsets, relative to the byte buffer; end exclusive */
    const void *data;               /* buffer + begin, inside the mapping; end-begin bytes */
} lf_st_tensor;

typedef struct lf_st_file lf_st_file;

/* mmap (PROT_READ, MAP_PRIVATE) the whole file and validate it. */
lf_status lf_st_open(const char *path, lf_st_file **out, lf_err *err);
/* Same validation over a caller-owned buffer (borrowed: it must outlive the handle); label (copied) names
 * it in messages and is what lf_st_path returns. */
lf_status lf_st_open_memory(const void *buf, size_t len, const char *label, lf_st_file **out, lf_err *err);
void lf_st_close(lf_st_file *f); /* NULL is a no-op */

const char *lf_st_path(const lf_st_file *f);
int64_t lf_st_count(const lf_st_file *f);
/* i-th tensor in file-offset order; NULL when i is out of range. */
const lf_st_tensor *lf_st_at(const lf_st_file *f, int64_t i);
/* Hash lookup by name; NULL when absent. */
const lf_st_tensor *lf_st_find(const lf_st_file *f, const char *name);
/* __metadata__: value for key (NULL when absent); keys iterate in header order. */
const char *lf_st_meta(const lf_st_file *f, const char *key);
int64_t lf_st_meta_count(const lf_st_file *f);
const char *lf_st_meta_key(const lf_st_file *f, int64_t i); /* NULL when out of range */

/* ---- model: one file, a directory with model.safetensors, or a sharded directory ---- */
typedef struct lf_st_model lf_st_model;

/* dir_or_file: a directory holding model.safetensors.index.json (sharded: every shard in weight_map must
 * exist, LF_ENOTFOUND otherwise, and hold every tensor mapped to it, LF_EFORMAT otherwise) or else
 * model.safetensors; a *.safetensors file; or an *.index.json file. A tensor present in two shards is
 * LF_EFORMAT. Tensors in a shard but absent from weight_map are still listed. */
lf_status lf_st_model_open(const char *dir_or_file, lf_st_model **out, lf_err *err);
void lf_st_model_close(lf_st_model *m); /* NULL is a no-op */
/* All tensors across shards: shards in file-name order, each in file-offset order. file may be NULL. */
int64_t lf_st_model_count(const lf_st_model *m);
const lf_st_tensor *lf_st_model_at(const lf_st_model *m, int64_t i, const lf_st_file **file);
const lf_st_tensor *lf_st_model_find(const lf_st_model *m, const char *name, const lf_st_file **file);
int lf_st_model_nfiles(const lf_st_model *m);
const lf_st_file *lf_st_model_file(const lf_st_model *m, int i);

/* ---- writer ---- */
typedef struct lf_st_writer lf_st_writer;

lf_st_writer *lf_st_writer_create(void); /* NULL when out of memory */
/* Add a tensor. shape has ndim (0..8) non-negative entries; data (borrowed until write) holds
 * numel*bits/8 bytes, little-endian row-major (may be NULL when that is 0). LF_EINVAL for a duplicate or
 * reserved ("__metadata__") or non-UTF-8 name, a bad shape, or numel*bits not a multiple of 8. */
lf_status lf_st_writer_add(lf_st_writer *w, const char *name, lf_dtype dt, int ndim, const int64_t *shape,
                           const void *data, lf_err *err);
/* Set (or replace) a __metadata__ entry; keys keep their first-set order. Both strings are copied. */
lf_status lf_st_writer_set_meta(lf_st_writer *w, const char *key, const char *value, lf_err *err);
/* Write exactly like the reference prepare(): __metadata__ first (omitted when empty), tensors sorted by
 * descending dtype (enum order) then name, compact JSON as serde_json prints it, padded with spaces to a
 * multiple of 8, data in that order; through lf_atomic_* (temp + fsync + rename). May be called again. */
lf_status lf_st_writer_write(const lf_st_writer *w, const char *path, lf_err *err);
void lf_st_writer_free(lf_st_writer *w); /* NULL is a no-op */

#ifdef __cplusplus
}
#endif
#endif /* LF_CORE_SAFETENSORS_H */

/* ======================================================================================================= */
#ifdef LF_SAFETENSORS_IMPLEMENTATION
#ifndef LF_SAFETENSORS_IMPLEMENTED
#define LF_SAFETENSORS_IMPLEMENTED

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fileio.h" // defines: lf_atomic_*, lf_file_read_all, lf_path_*

/* ---- small helpers ---- */

static uint64_t lf_st__fnv1a(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

/* Strict UTF-8 (as Rust's str::from_utf8): no overlongs, surrogates or code points past U+10FFFF.
 * On failure *bad is the offset of the first bad sequence. */
static int lf_st__utf8_valid(const uint8_t *s, size_t n, size_t *bad) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) {
            k = 1, cp = c & 0x1Fu, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, cp = c & 0x0Fu, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, cp = c & 0x07u, min = 0x10000;
        } else {
            goto fail;
        }
        if (n - i <= k) goto fail;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) goto fail;
            cp = (cp << 6) | (s[i + j] & 0x3Fu);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) goto fail;
        i += k + 1;
    }
    return 1;
fail:
    if (bad) *bad = i;
    return 0;
}

static const char *lf_st__json_type(const json_t *j) {
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE: return "true";
    case JSON_FALSE: return "false";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* "[64, 32]" */
static void lf_st__fmt_shape(char *buf, size_t cap, const int64_t *shape, int ndim) {
    size_t o = 0;
    int w = snprintf(buf, cap, "[");
    o = w > 0 ? (size_t)w : 0;
    for (int i = 0; i < ndim && o < cap; i++) {
        w = snprintf(buf + o, cap - o, "%s%" PRId64, i ? ", " : "", shape[i]);
        if (w < 0) break;
        o += (size_t)w;
    }
    if (o < cap) snprintf(buf + o, cap - o, "]");
}

/* Open-addressing name -> id table over ids whose names come from name_of(ctx, id). Load <= 1/2. */
typedef const char *(*lf_st__name_fn)(const void *ctx, int64_t id);
typedef struct lf_st__index {
    int64_t *slot; /* -1 = empty */
    uint64_t cap;  /* 0 or a power of two */
} lf_st__index;

/* Insert id; returns -1 when inserted, else the id that already holds the same name. */
static int64_t lf_st__index_put(lf_st__index *ix, int64_t id, lf_st__name_fn name_of, const void *ctx) {
    const char *name = name_of(ctx, id);
    uint64_t m = ix->cap - 1;
    for (uint64_t h = lf_st__fnv1a(name) & m;; h = (h + 1) & m) {
        int64_t s = ix->slot[h];
        if (s < 0) {
            ix->slot[h] = id;
            return -1;
        }
        if (strcmp(name_of(ctx, s), name) == 0) return s;
    }
}

static int64_t lf_st__index_get(const lf_st__index *ix, const char *name, lf_st__name_fn name_of,
                                const void *ctx) {
    if (ix->cap == 0 || !name) return -1;
    uint64_t m = ix->cap - 1;
    for (uint64_t h = lf_st__fnv1a(name) & m;; h = (h + 1) & m) {
        int64_t s = ix->slot[h];
        if (s < 0) return -1;
        if (strcmp(name_of(ctx, s), name) == 0) return s;
    }
}

/* Room for n ids; when it grows, re-inserts ids 0..have-1. Returns 0 when out of memory. */
static int lf_st__index_reserve(lf_st__index *ix, int64_t n, int64_t have, lf_st__name_fn name_of,
                                const void *ctx) {
    uint64_t need = 16;
    while (need < (uint64_t)n * 2) need <<= 1;
    if (need <= ix->cap) return 1;
    int64_t *s = malloc(need * sizeof *s);
    if (!s) return 0;
    for (uint64_t i = 0; i < need; i++) s[i] = -1;
    free(ix->slot);
    ix->slot = s;
    ix->cap = need;
    for (int64_t i = 0; i < have; i++) (void)lf_st__index_put(ix, i, name_of, ctx);
    return 1;
}

/* ======================================================================================================= */
/* reader */

struct lf_st_file {
    char *label;             /* path, or the label given to lf_st_open_memory */
    const uint8_t *base;     /* whole file: mapping (mapped = 1), an aligned copy (heap != NULL) or the caller's buffer */
    size_t len;
    int mapped;
    void *heap;              /* owned: the aligned copy of a file whose header length breaks alignment */
    uint64_t header_len;     /* N */
    int64_t n;               /* tensors, file-offset order */
    lf_st_tensor *t;
    int64_t n_meta;
    const char **meta_key;   /* n_meta each, into pool, header order */
    const char **meta_val;
    char *pool;              /* every name and metadata string, NUL-terminated */
    lf_st__index ix;
};

static const char *lf_st__file_name_of(const void *ctx, int64_t i) {
    return ((const lf_st_file *)ctx)->t[i].name;
}

static int lf_st__cmp_offsets(const void *a, const void *b) {
    const lf_st_tensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* A JSON value that is an integer >= 0 (serde's usize). */
static int lf_st__json_uint(const json_t *j, uint64_t *out) {
    if (!json_is_integer(j) || json_integer_value(j) < 0) return 0;
    *out = (uint64_t)json_integer_value(j);
    return 1;
}

/* Parse one tensor entry (types only; offsets and sizes are checked once all are sorted). */
static lf_status lf_st__parse_entry(const lf_st_file *f, const char *name, json_t *v, lf_st_tensor *t,
                                    lf_err *err) {
    const char *L = f->label;
    if (!json_is_object(v))
        return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s': header entry is %s, not an object", L, name,
                          lf_st__json_type(v));
    json_t *jd = json_object_get(v, "dtype");
    json_t *js = json_object_get(v, "shape");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!jd || !json_is_string(jd))
        return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s': \"dtype\" is %s, not a dtype string", L, name,
                          jd ? lf_st__json_type(jd) : "missing");
    t->dtype = lf_dtype_from_name(json_string_value(jd));
    if (t->dtype == LF_DTYPE_INVALID)
        return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s': unknown dtype \"%s\"", L, name,
                          json_string_value(jd));
    if (!js || !json_is_array(js))
        return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s': \"shape\" is %s, not an array", L, name,
                          js ? lf_st__json_type(js) : "missing");
    size_t nd = json_array_size(js);
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(js, i);
        uint64_t u;
        if (!lf_st__json_uint(d, &u)) {
            if (json_is_integer(d))
                return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s': shape[%zu] is %" JSON_INTEGER_FORMAT
                                  ", not a non-negative integer", L, name, i, json_integer_value(d));
            return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s': shape[%zu] is %s, not a non-negative integer",
                              L, name, i, lf_st__json_type(d));
        }
        if (i < LF_ST_MAX_DIMS) t->shape[i] = (int64_t)u;
    }
    if (nd > LF_ST_MAX_DIMS)
        return lf_err_set(err, LF_EUNSUPPORTED, "%s: tensor '%s': rank %zu exceeds the supported maximum of %d",
                          L, name, nd, LF_ST_MAX_DIMS);
    t->ndim = (int)nd;
    for (int i = t->ndim; i < LF_ST_MAX_DIMS; i++) t->shape[i] = 1;
    if (!jo || !json_is_array(jo) || json_array_size(jo) != 2 ||
        !lf_st__json_uint(json_array_get(jo, 0), &t->begin) || !lf_st__json_uint(json_array_get(jo, 1), &t->end)) {
        char *s = jo ? json_dumps(jo, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        lf_status st = lf_err_set(err, LF_EFORMAT,
                                  "%s: tensor '%s': \"data_offsets\" is %.200s, not [begin, end] non-negative integers",
                                  L, name, s ? s : "missing");
        free(s);
        return st;
    }
    return LF_OK;
}

/* Offsets tile the buffer, sizes match shape x dtype, file length matches (reference validate()). */
static lf_status lf_st__validate(lf_st_file *f, uint64_t buffer_len, lf_err *err) {
    const char *L = f->label;
    char shp[256];
    uint64_t start = 0;
    for (int64_t i = 0; i < f->n; i++) {
        const lf_st_tensor *t = &f->t[i];
        if (t->end < t->begin)
            return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                              ") end before begin", L, t->name, t->begin, t->end);
        if (t->begin != start) {
            if (i == 0)
                return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                                  ") but the first tensor must begin at offset 0", L, t->name, t->begin, t->end);
            const lf_st_tensor *p = &f->t[i - 1];
            return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 ") %s "
                              "tensor '%s' [%" PRIu64 ", %" PRIu64 "): tensors must be contiguous, expected begin %"
                              PRIu64, L, t->name, t->begin, t->end,
                              t->begin > start ? "leave a gap after" : "overlap", p->name, p->begin, p->end, start);
        }
        start = t->end;
        uint64_t numel = 1;
        int over = 0;
        for (int d = 0; d < t->ndim; d++) {
            uint64_t s = (uint64_t)t->shape[d];
            if (s != 0 && numel > UINT64_MAX / s) over = 1;
            numel *= s;
            if (over) break;
        }
        uint64_t bits = (uint64_t)lf_dtype_bits(t->dtype);
        lf_st__fmt_shape(shp, sizeof shp, t->shape, t->ndim);
        if (over || numel > UINT64_MAX / bits)
            return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s': shape %s x %s overflows 64 bits", L, t->name,
                              shp, lf_dtype_name(t->dtype));
        uint64_t nbits = numel * bits;
        if (nbits % 8 != 0)
            return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s': shape %s x %s is %" PRIu64
                              " bits, not a whole number of bytes", L, t->name, shp, lf_dtype_name(t->dtype), nbits);
        if (t->end - t->begin != nbits / 8)
            return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                              ") but shape %s x %s needs %" PRIu64 " bytes", L, t->name, t->begin, t->end, shp,
                              lf_dtype_name(t->dtype), nbits / 8);
        f->t[i].numel = (int64_t)numel; /* < 2^62: numel * bits (>= 4) did not overflow */
    }
    if (start != buffer_len) {
        const char *last = f->n ? f->t[f->n - 1].name : "(none)";
        return lf_err_set(err, LF_EFORMAT, "%s: tensors end at buffer offset %" PRIu64 " (last tensor '%s') but "
                          "the buffer after the %" PRIu64 "-byte header is %" PRIu64 " bytes (file %zu bytes): %s",
                          L, start, last, f->header_len, buffer_len, f->len,
                          start < buffer_len ? "trailing bytes" : "file truncated");
    }
    return LF_OK;
}

static lf_status lf_st__parse(lf_st_file *f, lf_err *err) {
    lf_status st = LF_OK;
    const char *L = f->label;
    json_t *root = NULL;
    if (f->len < 8)
        return lf_err_set(err, LF_EFORMAT, "%s: file is %zu bytes, shorter than the 8-byte header length", L,
                          f->len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | f->base[i];
    f->header_len = n;
    if (n > LF_ST_MAX_HEADER_SIZE)
        return lf_err_set(err, LF_EFORMAT, "%s: header length %" PRIu64 " exceeds the maximum of %llu bytes", L,
                          n, LF_ST_MAX_HEADER_SIZE);
    if (n > f->len - 8)
        return lf_err_set(err, LF_EFORMAT, "%s: header length %" PRIu64 " runs past the end of the file (%zu "
                          "bytes, header would end at %" PRIu64 ")", L, n, f->len, n + 8);
    const uint8_t *hdr = f->base + 8;
    size_t bad = 0;
    if (!lf_st__utf8_valid(hdr, (size_t)n, &bad))
        return lf_err_set(err, LF_EFORMAT, "%s: header is not valid UTF-8 (file offset %zu)", L, bad + 8);
    if (n == 0 || hdr[0] != '{')
        return lf_err_set(err, LF_EFORMAT, "%s: header does not start with '{' (first byte %s0x%02x)", L,
                          n ? "" : "missing, ", n ? hdr[0] : 0);
    json_error_t je;
    root = json_loadb((const char *)hdr, (size_t)n, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (json_error_code(&je) == json_error_duplicate_key)
            return lf_err_set(err, LF_EFORMAT, "%s: header has a duplicate tensor name or key (file offset %d): %s",
                              L, je.position + 8, je.text);
        return lf_err_set(err, LF_EFORMAT, "%s: header is not valid JSON (file offset %d): %s", L,
                          je.position + 8, je.text);
    }
    LF_ASSERT(json_is_object(root)); /* it starts with '{' and parsed */

    /* pass 1: metadata types, counts, string pool size */
    json_t *meta = json_object_get(root, "__metadata__");
    if (meta && json_is_null(meta)) meta = NULL; /* serde: Option<...> accepts null */
    if (meta && !json_is_object(meta)) {
        st = lf_err_set(err, LF_EFORMAT, "%s: __metadata__ is %s, not an object of strings", L,
                        lf_st__json_type(meta));
        goto fail;
    }
    size_t pool = 0;
    const char *key;
    json_t *v;
    if (meta) {
        json_object_foreach(meta, key, v) {
            if (!json_is_string(v)) {
                st = lf_err_set(err, LF_EFORMAT, "%s: __metadata__ key '%s': value is %s, not a string", L, key,
                                lf_st__json_type(v));
                goto fail;
            }
            pool += strlen(key) + json_string_length(v) + 2;
        }
        f->n_meta = (int64_t)json_object_size(meta);
    }
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0) continue;
        pool += strlen(key) + 1;
        f->n++;
    }
    f->pool = malloc(pool ? pool : 1);
    f->t = calloc(f->n ? (size_t)f->n : 1, sizeof *f->t);
    f->meta_key = calloc(f->n_meta ? (size_t)f->n_meta : 1, sizeof *f->meta_key);
    f->meta_val = calloc(f->n_meta ? (size_t)f->n_meta : 1, sizeof *f->meta_val);
    LF_CHECK_ALLOC(f->pool, err);
    LF_CHECK_ALLOC(f->t, err);
    LF_CHECK_ALLOC(f->meta_key, err);
    LF_CHECK_ALLOC(f->meta_val, err);

    /* pass 2: copy strings, parse entries */
    char *p = f->pool;
    int64_t i = 0;
    if (meta) {
        json_object_foreach(meta, key, v) {
            size_t kl = strlen(key), vl = json_string_length(v);
            memcpy(p, key, kl + 1);
            f->meta_key[i] = p;
            p += kl + 1;
            memcpy(p, json_string_value(v), vl + 1);
            f->meta_val[i++] = p;
            p += vl + 1;
        }
    }
    i = 0;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0) continue;
        size_t kl = strlen(key);
        memcpy(p, key, kl + 1);
        f->t[i].name = p;
        p += kl + 1;
        LF_TRY(lf_st__parse_entry(f, f->t[i].name, v, &f->t[i], err));
        i++;
    }
    json_decref(root);
    root = NULL;

    qsort(f->t, (size_t)f->n, sizeof *f->t, lf_st__cmp_offsets);
    uint64_t buffer_len = (uint64_t)f->len - 8 - n;
    LF_TRY(lf_st__validate(f, buffer_len, err));
    const uint8_t *buf = f->base + 8 + n;
    for (i = 0; i < f->n; i++) f->t[i].data = buf + f->t[i].begin;
    if (!lf_st__index_reserve(&f->ix, f->n, 0, lf_st__file_name_of, f)) {
        st = lf_err_set(err, LF_ENOMEM, "%s: out of memory for the name index of %" PRId64 " tensors", L, f->n);
        goto fail;
    }
    for (i = 0; i < f->n; i++) LF_ASSERT(lf_st__index_put(&f->ix, i, lf_st__file_name_of, f) < 0); /* JSON keys unique */
    return LF_OK;
fail:
    json_decref(root);
    return st ? st : LF_ENOMEM;
}

static lf_status lf_st__new(const char *label, lf_st_file **out, lf_err *err) {
    lf_status st = LF_OK;
    lf_st_file *f = calloc(1, sizeof *f);
    LF_CHECK_ALLOC(f, err);
    f->label = strdup(label ? label : "(memory)");
    LF_CHECK_ALLOC(f->label, err);
    *out = f;
    return LF_OK;
fail:
    free(f);
    return st ? st : LF_ENOMEM;
}

lf_status lf_st_open_memory(const void *buf, size_t len, const char *label, lf_st_file **out, lf_err *err) {
    lf_status st = LF_OK;
    lf_st_file *f = NULL;
    *out = NULL;
    if (!buf && len) return lf_err_set(err, LF_EINVAL, "%s: NULL buffer of %zu bytes", label ? label : "(memory)", len);
    LF_TRY(lf_st__new(label, &f, err));
    f->base = buf;
    f->len = len;
    LF_TRY(lf_st__parse(f, err));
    *out = f;
    return LF_OK;
fail:
    lf_st_close(f);
    return st;
}

/* Every tensor's data aligned to its element size (see "Alignment" above). The data section starts at
 * 8 + header_len; when that is not a multiple of 8, the file is copied to a heap buffer placed so that it
 * is, and the tensor pointers are moved there. */
static lf_status lf_st__align(lf_st_file *f, lf_err *err) {
    const uint64_t start = 8 + f->header_len;
    if (start % 8 != 0) {
        const size_t pad = (size_t)((8 - start % 8) % 8);
        uint8_t *buf = (uint8_t *)aligned_alloc(64, (f->len + pad + 63) / 64 * 64);
        if (!buf) return lf_err_set(err, LF_ENOMEM, "%s: out of memory for an aligned copy (%zu bytes)", f->label, f->len);
        memcpy(buf + pad, f->base, f->len);
        for (int64_t i = 0; i < f->n; i++)
            f->t[i].data = buf + pad + ((const uint8_t *)f->t[i].data - f->base);
        if (f->mapped) munmap((void *)f->base, f->len);
        f->mapped = 0;
        f->heap = buf;
        f->base = buf + pad;
    }
    for (int64_t i = 0; i < f->n; i++) {
        const int bits = lf_dtype_bits(f->t[i].dtype), esz = bits >= 8 ? bits / 8 : 1;
        if ((uintptr_t)f->t[i].data % (uintptr_t)(esz > 8 ? 8 : esz) != 0)
            return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s' (%s) starts at data offset %llu, not a multiple of its "
                              "element size %d: rewrite the file with safetensors.save_file", f->label, f->t[i].name,
                              lf_dtype_name(f->t[i].dtype), (unsigned long long)f->t[i].begin, esz);
    }
    return LF_OK;
}

lf_status lf_st_open(const char *path, lf_st_file **out, lf_err *err) {
    lf_status st = LF_OK;
    lf_st_file *f = NULL;
    int fd = -1;
    *out = NULL;
    if (!path) return lf_err_set(err, LF_EINVAL, "lf_st_open: NULL path");
    LF_TRY(lf_st__new(path, &f, err));
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        st = lf_err_set(err, errno == ENOENT ? LF_ENOTFOUND : LF_EIO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = lf_err_set(err, LF_EIO, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = lf_err_set(err, LF_EINVAL, "%s: not a regular file", path);
        goto fail;
    }
    if (sb.st_size < 0 || (uint64_t)sb.st_size > SIZE_MAX) {
        st = lf_err_set(err, LF_EIO, "%s: file size %lld not addressable", path, (long long)sb.st_size);
        goto fail;
    }
    f->len = (size_t)sb.st_size;
    if (f->len > 0) { /* mmap of 0 bytes fails; an empty file is reported by the parser */
        void *m = mmap(NULL, f->len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            st = lf_err_set(err, LF_EIO, "%s: mmap of %zu bytes failed: %s", path, f->len, strerror(errno));
            goto fail;
        }
        f->base = m;
        f->mapped = 1;
    }
    close(fd);
    fd = -1;
    LF_TRY(lf_st__parse(f, err));
    LF_TRY(lf_st__align(f, err));
    *out = f;
    return LF_OK;
fail:
    if (fd >= 0) close(fd);
    lf_st_close(f);
    return st;
}

void lf_st_close(lf_st_file *f) {
    if (!f) return;
    if (f->mapped) munmap((void *)f->base, f->len);
    free(f->heap);
    free(f->ix.slot);
    free(f->t);
    free(f->meta_key);
    free(f->meta_val);
    free(f->pool);
    free(f->label);
    free(f);
}

const char *lf_st_path(const lf_st_file *f) { return f->label; }
int64_t lf_st_count(const lf_st_file *f) { return f->n; }

const lf_st_tensor *lf_st_at(const lf_st_file *f, int64_t i) {
    return i >= 0 && i < f->n ? &f->t[i] : NULL;
}

const lf_st_tensor *lf_st_find(const lf_st_file *f, const char *name) {
    int64_t i = lf_st__index_get(&f->ix, name, lf_st__file_name_of, f);
    return i < 0 ? NULL : &f->t[i];
}

const char *lf_st_meta(const lf_st_file *f, const char *key) {
    for (int64_t i = 0; key && i < f->n_meta; i++)
        if (strcmp(f->meta_key[i], key) == 0) return f->meta_val[i];
    return NULL;
}

int64_t lf_st_meta_count(const lf_st_file *f) { return f->n_meta; }

const char *lf_st_meta_key(const lf_st_file *f, int64_t i) {
    return i >= 0 && i < f->n_meta ? f->meta_key[i] : NULL;
}

/* ======================================================================================================= */
/* model */

typedef struct lf_st__mentry {
    const lf_st_tensor *t;
    int file;
} lf_st__mentry;

struct lf_st_model {
    int n_files;
    lf_st_file **files;
    int64_t n;
    lf_st__mentry *e;
    lf_st__index ix;
};

static const char *lf_st__model_name_of(const void *ctx, int64_t i) {
    return ((const lf_st_model *)ctx)->e[i].t->name;
}

static int lf_st__cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* List every tensor of every shard; a name in two shards is an error. */
static lf_status lf_st__model_build(lf_st_model *m, lf_err *err) {
    lf_status st = LF_OK;
    int64_t total = 0;
    for (int i = 0; i < m->n_files; i++) total += lf_st_count(m->files[i]);
    m->e = calloc(total ? (size_t)total : 1, sizeof *m->e);
    LF_CHECK_ALLOC(m->e, err);
    if (!lf_st__index_reserve(&m->ix, total, 0, lf_st__model_name_of, m)) {
        st = lf_err_set(err, LF_ENOMEM, "out of memory for the name index of %" PRId64 " tensors", total);
        goto fail;
    }
    for (int i = 0; i < m->n_files; i++) {
        for (int64_t j = 0; j < lf_st_count(m->files[i]); j++) {
            m->e[m->n].t = lf_st_at(m->files[i], j);
            m->e[m->n].file = i;
            int64_t dup = lf_st__index_put(&m->ix, m->n, lf_st__model_name_of, m);
            if (dup >= 0) {
                st = lf_err_set(err, LF_EFORMAT, "tensor '%s' is in two shards: %s and %s", m->e[dup].t->name,
                                lf_st_path(m->files[m->e[dup].file]), lf_st_path(m->files[i]));
                goto fail;
            }
            m->n++;
        }
    }
    return LF_OK;
fail:
    return st ? st : LF_ENOMEM;
}

/* A shard name from weight_map must stay inside the model directory. */
static int lf_st__safe_relpath(const char *s) {
    if (!*s || s[0] == '/') return 0;
    for (const char *p = s; *p;) {
        const char *q = strchr(p, '/');
        size_t l = q ? (size_t)(q - p) : strlen(p);
        if (l == 2 && p[0] == '.' && p[1] == '.') return 0;
        if (!q) break;
        p = q + 1;
    }
    return 1;
}

static lf_status lf_st__model_open_index(lf_st_model *m, const char *dir, const char *index_path, lf_err *err) {
    lf_status st = LF_OK;
    char *text = NULL;
    size_t len = 0;
    json_t *root = NULL;
    const char **shards = NULL; /* distinct shard names (borrowed from root), sorted */
    char path[4096];
    LF_TRY(lf_file_read_all(index_path, &text, &len, err));
    json_error_t je;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        st = lf_err_set(err, LF_EFORMAT, "%s: not valid JSON (line %d, column %d): %s", index_path, je.line,
                        je.column, je.text);
        goto fail;
    }
    json_t *wm = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    if (!wm || !json_is_object(wm) || json_object_size(wm) == 0) {
        st = lf_err_set(err, LF_EFORMAT, "%s: \"weight_map\" is %s, not a non-empty object of tensor -> shard file",
                        index_path, wm ? lf_st__json_type(wm) : "missing");
        goto fail;
    }
    size_t nw = json_object_size(wm);
    shards = calloc(nw, sizeof *shards);
    LF_CHECK_ALLOC(shards, err);
    const char *key;
    json_t *v;
    int ns = 0;
    json_object_foreach(wm, key, v) {
        if (!json_is_string(v) || !lf_st__safe_relpath(json_string_value(v))) {
            st = lf_err_set(err, LF_EFORMAT, "%s: weight_map['%s'] is %s, not a shard file name inside %s",
                            index_path, key, json_is_string(v) ? json_string_value(v) : lf_st__json_type(v), dir);
            goto fail;
        }
        int k = 0;
        while (k < ns && strcmp(shards[k], json_string_value(v)) != 0) k++;
        if (k == ns) shards[ns++] = json_string_value(v);
    }
    qsort(shards, (size_t)ns, sizeof *shards, lf_st__cmp_str);
    m->files = calloc((size_t)ns, sizeof *m->files);
    LF_CHECK_ALLOC(m->files, err);
    for (int k = 0; k < ns; k++) {
        LF_TRY(lf_path_join(path, sizeof path, dir, shards[k], err));
        if (!lf_path_exists(path)) {
            const char *first = "?";
            json_object_foreach(wm, key, v) if (strcmp(json_string_value(v), shards[k]) == 0) {
                first = key;
                break;
            }
            st = lf_err_set(err, LF_ENOTFOUND, "%s: weight_map maps tensor '%s' to shard '%s', but %s does not exist",
                            index_path, first, shards[k], path);
            goto fail;
        }
        lf_status so = lf_st_open(path, &m->files[k], err);
        if (so) {
            st = lf_err_wrap(err, so, "%s: shard '%s'", index_path, shards[k]);
            goto fail;
        }
        m->n_files++;
    }
    json_object_foreach(wm, key, v) {
        const char **sp = bsearch(&(const char *){json_string_value(v)}, shards, (size_t)ns, sizeof *shards,
                                  lf_st__cmp_str);
        LF_ASSERT(sp);
        const lf_st_file *sf = m->files[sp - shards];
        if (!lf_st_find(sf, key)) {
            st = lf_err_set(err, LF_EFORMAT, "%s: weight_map maps tensor '%s' to shard '%s', but %s has no such tensor",
                            index_path, key, *sp, lf_st_path(sf));
            goto fail;
        }
    }
    free(shards);
    json_decref(root);
    free(text);
    return LF_OK;
fail:
    free(shards);
    json_decref(root);
    free(text);
    return st ? st : LF_ENOMEM;
}

lf_status lf_st_model_open(const char *dir_or_file, lf_st_model **out, lf_err *err) {
    lf_status st = LF_OK;
    lf_st_model *m = NULL;
    char path[4096], dir[4096];
    *out = NULL;
    if (!dir_or_file) return lf_err_set(err, LF_EINVAL, "lf_st_model_open: NULL path");
    m = calloc(1, sizeof *m);
    LF_CHECK_ALLOC(m, err);
    size_t L = strlen(dir_or_file);
    const char *sfx = ".index.json";
    if (lf_path_is_dir(dir_or_file)) {
        LF_TRY(lf_path_join(path, sizeof path, dir_or_file, "model.safetensors.index.json", err));
        if (lf_path_exists(path)) {
            LF_TRY(lf_st__model_open_index(m, dir_or_file, path, err));
        } else {
            LF_TRY(lf_path_join(path, sizeof path, dir_or_file, "model.safetensors", err));
            if (!lf_path_exists(path)) {
                st = lf_err_set(err, LF_ENOTFOUND, "%s: directory has neither model.safetensors.index.json nor "
                                "model.safetensors", dir_or_file);
                goto fail;
            }
            m->files = calloc(1, sizeof *m->files);
            LF_CHECK_ALLOC(m->files, err);
            LF_TRY(lf_st_open(path, &m->files[0], err));
            m->n_files = 1;
        }
    } else if (!lf_path_exists(dir_or_file)) {
        st = lf_err_set(err, LF_ENOTFOUND, "%s: no such file or directory", dir_or_file);
        goto fail;
    } else if (L >= strlen(sfx) && strcmp(dir_or_file + L - strlen(sfx), sfx) == 0) {
        if (L >= sizeof dir) {
            st = lf_err_set(err, LF_EINVAL, "%s: path too long", dir_or_file);
            goto fail;
        }
        memcpy(dir, dir_or_file, L + 1);
        char *slash = strrchr(dir, '/');
        if (!slash) snprintf(dir, sizeof dir, ".");
        else if (slash == dir) dir[1] = '\0';
        else *slash = '\0';
        LF_TRY(lf_st__model_open_index(m, dir, dir_or_file, err));
    } else {
        m->files = calloc(1, sizeof *m->files);
        LF_CHECK_ALLOC(m->files, err);
        LF_TRY(lf_st_open(dir_or_file, &m->files[0], err));
        m->n_files = 1;
    }
    LF_TRY(lf_st__model_build(m, err));
    *out = m;
    return LF_OK;
fail:
    lf_st_model_close(m);
    return st ? st : LF_ENOMEM;
}

void lf_st_model_close(lf_st_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_files; i++) lf_st_close(m->files[i]);
    free(m->files);
    free(m->e);
    free(m->ix.slot);
    free(m);
}

int64_t lf_st_model_count(const lf_st_model *m) { return m->n; }

const lf_st_tensor *lf_st_model_at(const lf_st_model *m, int64_t i, const lf_st_file **file) {
    if (i < 0 || i >= m->n) {
        if (file) *file = NULL;
        return NULL;
    }
    if (file) *file = m->files[m->e[i].file];
    return m->e[i].t;
}

const lf_st_tensor *lf_st_model_find(const lf_st_model *m, const char *name, const lf_st_file **file) {
    return lf_st_model_at(m, lf_st__index_get(&m->ix, name, lf_st__model_name_of, m), file);
}

int lf_st_model_nfiles(const lf_st_model *m) { return m->n_files; }

const lf_st_file *lf_st_model_file(const lf_st_model *m, int i) {
    return i >= 0 && i < m->n_files ? m->files[i] : NULL;
}

/* ======================================================================================================= */
/* writer */

typedef struct lf_st__wtensor {
    char *name;
    lf_dtype dtype;
    int ndim;
    int64_t shape[LF_ST_MAX_DIMS];
    const void *data; /* borrowed */
    uint64_t nbytes;
} lf_st__wtensor;

struct lf_st_writer {
    int64_t n, cap;
    lf_st__wtensor *t;
    lf_st__index ix;
    uint64_t total; /* sum of nbytes */
    int64_t n_meta, cap_meta;
    char **meta_key, **meta_val;
};

static const char *lf_st__writer_name_of(const void *ctx, int64_t i) {
    return ((const lf_st_writer *)ctx)->t[i].name;
}

lf_st_writer *lf_st_writer_create(void) { return calloc(1, sizeof(lf_st_writer)); }

void lf_st_writer_free(lf_st_writer *w) {
    if (!w) return;
    for (int64_t i = 0; i < w->n; i++) free(w->t[i].name);
    for (int64_t i = 0; i < w->n_meta; i++) {
        free(w->meta_key[i]);
        free(w->meta_val[i]);
    }
    free(w->t);
    free(w->ix.slot);
    free(w->meta_key);
    free(w->meta_val);
    free(w);
}

lf_status lf_st_writer_add(lf_st_writer *w, const char *name, lf_dtype dt, int ndim, const int64_t *shape,
                           const void *data, lf_err *err) {
    lf_status st = LF_OK;
    char *copy = NULL;
    if (!w || !name) return lf_err_set(err, LF_EINVAL, "lf_st_writer_add: NULL writer or name");
    if (!lf_st__utf8_valid((const uint8_t *)name, strlen(name), NULL))
        return lf_err_set(err, LF_EINVAL, "tensor '%s': name is not valid UTF-8", name);
    if (strcmp(name, "__metadata__") == 0)
        return lf_err_set(err, LF_EINVAL, "tensor '%s': name is reserved for metadata", name);
    if (lf_dtype_bits(dt) == 0) return lf_err_set(err, LF_EINVAL, "tensor '%s': invalid dtype %d", name, (int)dt);
    if (ndim < 0 || ndim > LF_ST_MAX_DIMS || (ndim > 0 && !shape))
        return lf_err_set(err, LF_EINVAL, "tensor '%s': rank %d (shape %s) not in 0..%d", name, ndim,
                          shape ? "given" : "NULL", LF_ST_MAX_DIMS);
    uint64_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) return lf_err_set(err, LF_EINVAL, "tensor '%s': shape[%d] = %" PRId64 " is negative", name, d, shape[d]);
        if (shape[d] != 0 && numel > (uint64_t)INT64_MAX / 64 / (uint64_t)shape[d])
            return lf_err_set(err, LF_EINVAL, "tensor '%s': shape overflows 64 bits", name);
        numel *= (uint64_t)shape[d];
    }
    int64_t nb = lf_dtype_nbytes(dt, (int64_t)numel);
    if (nb < 0) {
        char shp[256];
        lf_st__fmt_shape(shp, sizeof shp, shape, ndim);
        return lf_err_set(err, LF_EINVAL, "tensor '%s': shape %s x %s is %" PRIu64 " bits, not a whole number of bytes",
                          name, shp, lf_dtype_name(dt), numel * (uint64_t)lf_dtype_bits(dt));
    }
    if (nb > 0 && !data) return lf_err_set(err, LF_EINVAL, "tensor '%s': NULL data for %" PRId64 " bytes", name, nb);
    if ((uint64_t)nb > UINT64_MAX / 2 - w->total)
        return lf_err_set(err, LF_EINVAL, "tensor '%s': total size overflows", name);
    if (w->n == w->cap) {
        int64_t cap = w->cap ? w->cap * 2 : 16;
        lf_st__wtensor *t = realloc(w->t, (size_t)cap * sizeof *t);
        LF_CHECK_ALLOC(t, err);
        w->t = t;
        w->cap = cap;
    }
    if (!lf_st__index_reserve(&w->ix, w->n + 1, w->n, lf_st__writer_name_of, w)) {
        st = lf_err_set(err, LF_ENOMEM, "tensor '%s': out of memory for the name index", name);
        goto fail;
    }
    copy = strdup(name);
    LF_CHECK_ALLOC(copy, err);
    lf_st__wtensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = copy;
    t->dtype = dt;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    t->data = data;
    t->nbytes = (uint64_t)nb;
    if (lf_st__index_put(&w->ix, w->n, lf_st__writer_name_of, w) >= 0) {
        st = lf_err_set(err, LF_EINVAL, "tensor '%s': added twice", name);
        goto fail;
    }
    w->n++;
    w->total += (uint64_t)nb;
    return LF_OK;
fail:
    free(copy);
    return st ? st : LF_ENOMEM;
}

lf_status lf_st_writer_set_meta(lf_st_writer *w, const char *key, const char *value, lf_err *err) {
    lf_status st = LF_OK;
    char *k = NULL, *v = NULL;
    if (!w || !key || !value) return lf_err_set(err, LF_EINVAL, "lf_st_writer_set_meta: NULL argument");
    if (!lf_st__utf8_valid((const uint8_t *)key, strlen(key), NULL) ||
        !lf_st__utf8_valid((const uint8_t *)value, strlen(value), NULL))
        return lf_err_set(err, LF_EINVAL, "metadata key '%s': key or value is not valid UTF-8", key);
    v = strdup(value);
    LF_CHECK_ALLOC(v, err);
    for (int64_t i = 0; i < w->n_meta; i++) {
        if (strcmp(w->meta_key[i], key) == 0) {
            free(w->meta_val[i]);
            w->meta_val[i] = v;
            return LF_OK;
        }
    }
    if (w->n_meta == w->cap_meta) {
        int64_t cap = w->cap_meta ? w->cap_meta * 2 : 8;
        char **nk = realloc(w->meta_key, (size_t)cap * sizeof *nk);
        LF_CHECK_ALLOC(nk, err);
        w->meta_key = nk;
        char **nv = realloc(w->meta_val, (size_t)cap * sizeof *nv);
        LF_CHECK_ALLOC(nv, err);
        w->meta_val = nv;
        w->cap_meta = cap;
    }
    k = strdup(key);
    LF_CHECK_ALLOC(k, err);
    w->meta_key[w->n_meta] = k;
    w->meta_val[w->n_meta++] = v;
    return LF_OK;
fail:
    free(k);
    free(v);
    return st ? st : LF_ENOMEM;
}

/* Growable byte buffer; oom sticks. */
typedef struct lf_st__buf {
    char *p;
    size_t len, cap;
    int oom;
} lf_st__buf;

static void lf_st__put(lf_st__buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void lf_st__puts(lf_st__buf *b, const char *s) { lf_st__put(b, s, strlen(s)); }

static void lf_st__putu(lf_st__buf *b, uint64_t u) {
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%" PRIu64, u);
    lf_st__put(b, tmp, (size_t)n);
}

/* A JSON string escaped exactly as serde_json does: \" \\ \b \f \n \r \t, other bytes < 0x20 as \u00xx
 * (lowercase hex), everything else (including 0x7f and non-ASCII UTF-8) verbatim. */
static void lf_st__put_jstr(lf_st__buf *b, const char *s) {
    static const char hex[] = "0123456789abcdef";
    lf_st__put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char e[7];
        switch (*p) {
        case '"': lf_st__put(b, "\\\"", 2); break;
        case '\\': lf_st__put(b, "\\\\", 2); break;
        case '\b': lf_st__put(b, "\\b", 2); break;
        case '\f': lf_st__put(b, "\\f", 2); break;
        case '\n': lf_st__put(b, "\\n", 2); break;
        case '\r': lf_st__put(b, "\\r", 2); break;
        case '\t': lf_st__put(b, "\\t", 2); break;
        default:
            if (*p < 0x20) {
                memcpy(e, "\\u00", 4);
                e[4] = hex[*p >> 4];
                e[5] = hex[*p & 15];
                lf_st__put(b, e, 6);
            } else {
                lf_st__put(b, (const char *)p, 1);
            }
        }
    }
    lf_st__put(b, "\"", 1);
}

static int lf_st__cmp_write_order(const void *a, const void *b) {
    const lf_st__wtensor *x = *(const lf_st__wtensor *const *)a, *y = *(const lf_st__wtensor *const *)b;
    if (x->dtype != y->dtype) return x->dtype > y->dtype ? -1 : 1; /* descending dtype */
    return strcmp(x->name, y->name);
}

lf_status lf_st_writer_write(const lf_st_writer *w, const char *path, lf_err *err) {
    lf_status st = LF_OK;
    lf_st__buf b = {0};
    const lf_st__wtensor **order = NULL;
    lf_atomic_file *af = NULL;
    if (!w || !path) return lf_err_set(err, LF_EINVAL, "lf_st_writer_write: NULL writer or path");
    order = malloc((w->n ? (size_t)w->n : 1) * sizeof *order);
    LF_CHECK_ALLOC(order, err);
    for (int64_t i = 0; i < w->n; i++) order[i] = &w->t[i];
    qsort(order, (size_t)w->n, sizeof *order, lf_st__cmp_write_order);

    lf_st__put(&b, "        {", 9); /* 8 bytes reserved for N */
    int first = 1;
    if (w->n_meta > 0) {
        lf_st__puts(&b, "\"__metadata__\":{");
        for (int64_t i = 0; i < w->n_meta; i++) {
            if (i) lf_st__put(&b, ",", 1);
            lf_st__put_jstr(&b, w->meta_key[i]);
            lf_st__put(&b, ":", 1);
            lf_st__put_jstr(&b, w->meta_val[i]);
        }
        lf_st__put(&b, "}", 1);
        first = 0;
    }
    uint64_t off = 0;
    for (int64_t i = 0; i < w->n; i++) {
        const lf_st__wtensor *t = order[i];
        if (!first) lf_st__put(&b, ",", 1);
        first = 0;
        lf_st__put_jstr(&b, t->name);
        lf_st__puts(&b, ":{\"dtype\":\"");
        lf_st__puts(&b, lf_dtype_name(t->dtype));
        lf_st__puts(&b, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            if (d) lf_st__put(&b, ",", 1);
            lf_st__putu(&b, (uint64_t)t->shape[d]);
        }
        lf_st__puts(&b, "],\"data_offsets\":[");
        lf_st__putu(&b, off);
        lf_st__put(&b, ",", 1);
        off += t->nbytes;
        lf_st__putu(&b, off);
        lf_st__puts(&b, "]}");
    }
    lf_st__put(&b, "}", 1);
    while (!b.oom && (b.len - 8) % 8 != 0) lf_st__put(&b, " ", 1);
    if (b.oom) {
        st = lf_err_set(err, LF_ENOMEM, "%s: out of memory building a %zu-byte header", path, b.len);
        goto fail;
    }
    uint64_t n = (uint64_t)(b.len - 8);
    if (n > LF_ST_MAX_HEADER_SIZE) {
        st = lf_err_set(err, LF_EINVAL, "%s: header would be %" PRIu64 " bytes, over the %llu-byte maximum", path, n,
                        LF_ST_MAX_HEADER_SIZE);
        goto fail;
    }
    for (int i = 0; i < 8; i++) b.p[i] = (char)(uint8_t)(n >> (8 * i));

    LF_TRY(lf_atomic_open(path, &af, err));
    LF_TRY(lf_atomic_write(af, b.p, b.len, err));
    for (int64_t i = 0; i < w->n; i++)
        if (order[i]->nbytes) LF_TRY(lf_atomic_write(af, order[i]->data, (size_t)order[i]->nbytes, err));
    st = lf_atomic_commit(af, err); /* frees af, also on failure */
    af = NULL;
    if (st) goto fail;
    free(order);
    free(b.p);
    return LF_OK;
fail:
    lf_atomic_abort(af);
    free(order);
    free(b.p);
    return st ? st : LF_ENOMEM;
}

#endif /* LF_SAFETENSORS_IMPLEMENTED */
#endif /* LF_SAFETENSORS_IMPLEMENTATION */
