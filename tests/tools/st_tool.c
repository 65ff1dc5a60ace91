/* st_tool.c - safetensors helper for tests/oracle/test_safetensors_interop.py (built, not run by ctest).
 *
 *   st_tool write OUT.safetensors [--dtypes F32,BF16,...]
 *       Writes a deterministic file through lf_st_writer, metadata {"format":"pt","creator":"loraforge"}
 *       (in that order), with, for every dtype d in lf_dtype enum order (all 22 unless --dtypes narrows it):
 *         name  "t.<dtype name in lower case>"        e.g. "t.bf16", "t.f8_e4m3"
 *         shape [(d % 3) + 1, 4]                       d = the lf_dtype value (BOOL 0 ... U64 21)
 *         bytes b[i] = (i*131 + k*17 + 7) mod 256      k = d; for BOOL b[i] & 1
 *       and three extra tensors, each only when its dtype is selected:
 *         "extra.scalar"                              F32 shape []     k = 100
 *         "extra.empty"                               I64 shape [0, 5] (no bytes)
 *         "extra.name \"q\" \\ <TAB> caf<U+00E9>"     U8  shape [3]    k = 102
 *       (the last one exercises JSON escaping in the header).
 *   st_tool copy IN.safetensors OUT.safetensors
 *       Reads IN with lf_st_open and writes every tensor and metadata entry (in IN's header order) through
 *       lf_st_writer: for a file written by the reference serializer the output is byte-identical.
 *   st_tool read IN.safetensors
 *       Prints one JSON object: {"metadata": {...}, "tensors": {name: {"dtype": "F32", "shape": [...],
 *       "data_offsets": [b, e], "fnv1a64": "<16 lowercase hex digits, FNV-1a 64 of the tensor bytes>"}}},
 *       tensors in file-offset order, ASCII-only (non-ASCII escaped as \uXXXX).
 *
 * Exit 0 on success; 1 with "st_tool: <message>" on stderr for a bad file; 2 for bad usage. */
#include <ctype.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_args.h"   // defines: lf_args_parse
#include "core/safetensors.h" // defines: lf_st_*, lf_dtype

#define EXTRA_NAME "extra.name \"q\" \\ \t caf\xc3\xa9"

static const char USAGE[] = "usage: st_tool write OUT.safetensors [--dtypes F32,BF16,...]\n"
                            "       st_tool copy IN.safetensors OUT.safetensors\n"
                            "       st_tool read IN.safetensors\n";

static int usage(void) {
    fputs(USAGE, stderr);
    return 2;
}

static uint8_t *pattern(int64_t n, int k, int is_bool) {
    uint8_t *b = malloc(n > 0 ? (size_t)n : 1);
    if (!b) return NULL;
    for (int64_t i = 0; i < n; i++) {
        uint8_t v = (uint8_t)((uint64_t)i * 131u + (uint64_t)k * 17u + 7u);
        b[i] = is_bool ? (uint8_t)(v & 1u) : v;
    }
    return b;
}

/* selected[d] = 1 for every dtype in the comma list (or all when list is NULL). */
static int parse_dtypes(const char *list, int *selected) {
    for (int d = 0; d < LF_DTYPE_COUNT; d++) selected[d] = list == NULL;
    if (!list) return 1;
    char *copy = strdup(list);
    if (!copy) return 0;
    int ok = 1;
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        lf_dtype dt = lf_dtype_from_name(tok);
        if (dt == LF_DTYPE_INVALID) {
            fprintf(stderr, "st_tool: unknown dtype '%s' in --dtypes\n", tok);
            ok = 0;
            break;
        }
        selected[dt] = 1;
    }
    free(copy);
    return ok;
}

static int cmd_write(const char *out, const char *dtypes) {
    int selected[LF_DTYPE_COUNT];
    if (!parse_dtypes(dtypes, selected)) return 2;
    lf_err err = {0};
    lf_status st = LF_OK;
    uint8_t *bufs[LF_DTYPE_COUNT + 3] = {0};
    int nb = 0;
    lf_st_writer *w = lf_st_writer_create();
    if (!w) {
        fprintf(stderr, "st_tool: out of memory\n");
        return 1;
    }
    st = lf_st_writer_set_meta(w, "format", "pt", &err);
    if (!st) st = lf_st_writer_set_meta(w, "creator", "loraforge", &err);
    for (int d = 0; d < LF_DTYPE_COUNT && !st; d++) {
        if (!selected[d]) continue;
        char name[64];
        int o = snprintf(name, sizeof name, "t.");
        for (const char *p = lf_dtype_name((lf_dtype)d); *p; p++) name[o++] = (char)tolower((unsigned char)*p);
        name[o] = '\0';
        int64_t shape[2] = {(d % 3) + 1, 4};
        int64_t n = lf_dtype_nbytes((lf_dtype)d, shape[0] * shape[1]);
        bufs[nb] = pattern(n, d, d == LF_DTYPE_BOOL);
        st = lf_st_writer_add(w, name, (lf_dtype)d, 2, shape, bufs[nb++], &err);
    }
    if (!st && selected[LF_DTYPE_F32]) {
        bufs[nb] = pattern(4, 100, 0);
        st = lf_st_writer_add(w, "extra.scalar", LF_DTYPE_F32, 0, NULL, bufs[nb++], &err);
    }
    if (!st && selected[LF_DTYPE_I64]) st = lf_st_writer_add(w, "extra.empty", LF_DTYPE_I64, 2, (int64_t[]){0, 5}, NULL, &err);
    if (!st && selected[LF_DTYPE_U8]) {
        bufs[nb] = pattern(3, 102, 0);
        st = lf_st_writer_add(w, EXTRA_NAME, LF_DTYPE_U8, 1, (int64_t[]){3}, bufs[nb++], &err);
    }
    if (!st) st = lf_st_writer_write(w, out, &err);
    lf_st_writer_free(w);
    for (int i = 0; i < nb; i++) free(bufs[i]);
    if (st) {
        fprintf(stderr, "st_tool: %s\n", err.msg);
        return 1;
    }
    return 0;
}

static int cmd_copy(const char *in, const char *out) {
    lf_err err = {0};
    lf_st_file *f = NULL;
    lf_status st = lf_st_open(in, &f, &err);
    lf_st_writer *w = st ? NULL : lf_st_writer_create();
    if (!st && !w) st = lf_err_set(&err, LF_ENOMEM, "out of memory");
    for (int64_t i = 0; !st && i < lf_st_meta_count(f); i++)
        st = lf_st_writer_set_meta(w, lf_st_meta_key(f, i), lf_st_meta(f, lf_st_meta_key(f, i)), &err);
    for (int64_t i = 0; !st && i < lf_st_count(f); i++) {
        const lf_st_tensor *t = lf_st_at(f, i);
        st = lf_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &err);
    }
    if (!st) st = lf_st_writer_write(w, out, &err);
    lf_st_writer_free(w);
    lf_st_close(f);
    if (st) {
        fprintf(stderr, "st_tool: %s\n", err.msg);
        return 1;
    }
    return 0;
}

static uint64_t fnv1a64(const uint8_t *p, uint64_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint64_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static int cmd_read(const char *in) {
    lf_err err = {0};
    lf_st_file *f = NULL;
    if (lf_st_open(in, &f, &err) != LF_OK) {
        fprintf(stderr, "st_tool: %s\n", err.msg);
        return 1;
    }
    json_t *root = json_object(), *meta = json_object(), *tensors = json_object();
    json_object_set_new(root, "metadata", meta);
    json_object_set_new(root, "tensors", tensors);
    for (int64_t i = 0; i < lf_st_meta_count(f); i++) {
        const char *k = lf_st_meta_key(f, i);
        json_object_set_new(meta, k, json_string(lf_st_meta(f, k)));
    }
    for (int64_t i = 0; i < lf_st_count(f); i++) {
        const lf_st_tensor *t = lf_st_at(f, i);
        json_t *shape = json_array(), *offs = json_array();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        json_array_append_new(offs, json_integer((json_int_t)t->begin));
        json_array_append_new(offs, json_integer((json_int_t)t->end));
        char hash[17];
        snprintf(hash, sizeof hash, "%016" PRIx64, fnv1a64(t->data, t->end - t->begin));
        json_object_set_new(tensors, t->name,
                            json_pack("{s:s, s:o, s:o, s:s}", "dtype", lf_dtype_name(t->dtype), "shape", shape,
                                      "data_offsets", offs, "fnv1a64", hash));
    }
    char *s = json_dumps(root, JSON_COMPACT | JSON_ENSURE_ASCII);
    int rc = 0;
    if (!s) {
        fprintf(stderr, "st_tool: %s: cannot serialize the listing\n", in);
        rc = 1;
    } else {
        puts(s);
    }
    free(s);
    json_decref(root);
    lf_st_close(f);
    return rc;
}

int main(int argc, char **argv) {
    const char *pos[3], *dtypes = NULL;
    int npos = 0;
    const lf_arg_spec flags[] = {LF_FLAG_STR("--dtypes", &dtypes), LF_FLAG_END};
    int rc = lf_args_parse("st_tool", USAGE, argc, argv, 1, flags, pos, 3, &npos);
    if (rc >= 0) return rc;
    const char *cmd = npos ? pos[0] : "";
    if (dtypes && strcmp(cmd, "write") != 0) {
        fprintf(stderr, "st_tool: --dtypes is an option of st_tool write only\n");
        return 2;
    }
    if (npos == 2 && !strcmp(cmd, "write")) return cmd_write(pos[1], dtypes);
    if (npos == 2 && !strcmp(cmd, "read")) return cmd_read(pos[1]);
    if (npos == 3 && !strcmp(cmd, "copy")) return cmd_copy(pos[1], pos[2]);
    if (npos && strcmp(cmd, "write") && strcmp(cmd, "read") && strcmp(cmd, "copy"))
        fprintf(stderr, "st_tool: unknown command '%s'\n", cmd);
    return usage();
}
