/* cmd_inspect.c - `loraforge inspect PATH [--json]`: list every tensor of a .safetensors file or a model
 * directory (single file or sharded with model.safetensors.index.json): name, dtype, shape, bytes, shard
 * file; then totals. Reads headers only (the data stays mapped, untouched). Exit 0 ok, 1 bad or missing
 * input, 2 usage error (cli/cli.h). */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"           // defines: lf_cmd_inspect, lf_cli_error
#include "core/safetensors.h" // defines: lf_st_model_*, lf_st_tensor, lf_dtype_name

static const char *CMD = "inspect";

static void inspect_usage(FILE *out) {
    fprintf(out,
            "usage: loraforge inspect PATH [--json]\n"
            "\n"
            "List the tensors of a safetensors checkpoint: name, dtype, shape, bytes and shard file, then\n"
            "totals (tensors, parameters, bytes).\n"
            "\n"
            "PATH    a .safetensors file, a model directory holding model.safetensors, or a sharded model\n"
            "        directory (or its model.safetensors.index.json)\n"
            "--json  print one JSON object instead of a table\n"
            "--help  show this help\n");
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static void shape_str(char *buf, size_t cap, const lf_st_tensor *t) {
    size_t o = 0;
    buf[0] = '\0';
    o += (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < t->ndim && o < cap; d++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%" PRId64, d ? ", " : "", t->shape[d]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
}

static void human_bytes(char *buf, size_t cap, uint64_t b) {
    static const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int u = 0;
    while (v >= 1024.0 && u < 4) v /= 1024.0, u++;
    snprintf(buf, cap, u ? "%.2f %s" : "%.0f %s", v, unit[u]);
}

/* bitsandbytes 4-bit checkpoints store each quantized weight X.weight as packed U8 plus companions
 * (X.weight.absmax, .quant_map, .nested_absmax, .nested_quant_map, .quant_state.bitsandbytes__nf4|fp4).
 * inspect groups them: one row per quantized weight with its logical shape, quant type, block size and the
 * bytes of all its parts; the companions are not listed separately. */
static int is_bnb_companion(const char *name) {
    static const char *sfx[] = {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"};
    size_t n = strlen(name);
    if (!strstr(name, ".weight.")) return 0;
    for (size_t i = 0; i < sizeof sfx / sizeof *sfx; i++) {
        size_t k = strlen(sfx[i]);
        if (n >= k && strcmp(name + n - k, sfx[i]) == 0) return 1;
    }
    return strstr(name, ".quant_state.bitsandbytes__") != NULL;
}

typedef struct q4_info {
    char type[8];
    int64_t blocksize, rows, cols;
    int nested;
    uint64_t bytes; /* packed + every companion */
} q4_info;

/* When t is a packed 4-bit weight with a readable quant_state, fill *q and return 1. */
static int q4_lookup(const lf_st_model *m, const lf_st_tensor *t, q4_info *q) {
    if (t->dtype != LF_DTYPE_U8) return 0;
    size_t n = strlen(t->name);
    if (n < 7 || strcmp(t->name + n - 7, ".weight") != 0) return 0;
    char nm[512];
    const lf_st_tensor *qs = NULL;
    for (int k = 0; k < 2 && !qs; k++) {
        snprintf(nm, sizeof nm, "%s.quant_state.bitsandbytes__%s", t->name, k ? "fp4" : "nf4");
        qs = lf_st_model_find(m, nm, NULL);
    }
    if (!qs) return 0;
    json_error_t je;
    json_t *j = json_loadb((const char *)qs->data, (size_t)(qs->end - qs->begin), 0, &je);
    const json_t *shape = j ? json_object_get(j, "shape") : NULL;
    int ok = j && json_is_string(json_object_get(j, "quant_type")) && json_is_integer(json_object_get(j, "blocksize")) &&
             json_is_array(shape) && json_array_size(shape) == 2;
    if (ok) {
        snprintf(q->type, sizeof q->type, "%s", json_string_value(json_object_get(j, "quant_type")));
        q->blocksize = json_integer_value(json_object_get(j, "blocksize"));
        q->rows = json_integer_value(json_array_get(shape, 0));
        q->cols = json_integer_value(json_array_get(shape, 1));
        q->nested = json_object_get(j, "nested_blocksize") != NULL;
        q->bytes = t->end - t->begin;
        static const char *parts[] = {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"};
        for (size_t i = 0; i < 4; i++) {
            snprintf(nm, sizeof nm, "%s%s", t->name, parts[i]);
            const lf_st_tensor *c = lf_st_model_find(m, nm, NULL);
            if (c) q->bytes += c->end - c->begin;
        }
        q->bytes += qs->end - qs->begin;
    }
    json_decref(j);
    return ok;
}

static int print_json(const char *path, const lf_st_model *m, uint64_t params, uint64_t bytes) {
    json_t *root = json_object(), *files = json_array(), *tensors = json_array();
    json_object_set_new(root, "path", json_string(path));
    for (int i = 0; i < lf_st_model_nfiles(m); i++) {
        const lf_st_file *f = lf_st_model_file(m, i);
        json_t *meta = json_object();
        for (int64_t k = 0; k < lf_st_meta_count(f); k++)
            json_object_set_new(meta, lf_st_meta_key(f, k), json_string(lf_st_meta(f, lf_st_meta_key(f, k))));
        json_array_append_new(files, json_pack("{s:s, s:I, s:o}", "file", base_name(lf_st_path(f)), "tensors",
                                               (json_int_t)lf_st_count(f), "metadata", meta));
    }
    for (int64_t i = 0; i < lf_st_model_count(m); i++) {
        const lf_st_file *f = NULL;
        const lf_st_tensor *t = lf_st_model_at(m, i, &f);
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        json_t *row = json_pack("{s:s, s:s, s:o, s:I, s:I, s:s}", "name", t->name, "dtype", lf_dtype_name(t->dtype),
                                "shape", shape, "numel", (json_int_t)t->numel, "bytes",
                                (json_int_t)(t->end - t->begin), "file", base_name(lf_st_path(f)));
        q4_info q;
        if (row && q4_lookup(m, t, &q))
            json_object_set_new(row, "quantized", json_pack("{s:s, s:I, s:[I,I], s:b, s:I}", "quant_type", q.type,
                                                            "blocksize", (json_int_t)q.blocksize, "shape",
                                                            (json_int_t)q.rows, (json_int_t)q.cols, "double_quant",
                                                            q.nested, "bytes", (json_int_t)q.bytes));
        else if (row && is_bnb_companion(t->name))
            json_object_set_new(row, "companion", json_true());
        json_array_append_new(tensors, row);
    }
    json_object_set_new(root, "files", files);
    json_object_set_new(root, "tensors", tensors);
    json_object_set_new(root, "total", json_pack("{s:I, s:I, s:I}", "tensors", (json_int_t)lf_st_model_count(m),
                                                 "parameters", (json_int_t)params, "bytes", (json_int_t)bytes));
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!s) {
        lf_cli_error(CMD, "%s: out of memory formatting JSON", path);
        return 1;
    }
    puts(s);
    free(s);
    return 0;
}

/* One table row: raw tensors as stored; 4-bit weights as "nf4 [OC, C] B=64 dq" with all their bytes. */
static void row_strings(const lf_st_model *m, const lf_st_tensor *t, char *dt, size_t dcap, char *shp, size_t scap,
                        uint64_t *bytes) {
    q4_info q;
    if (q4_lookup(m, t, &q)) {
        snprintf(dt, dcap, "%s%s", q.type, q.nested ? "+dq" : "");
        snprintf(shp, scap, "[%lld, %lld] B=%lld", (long long)q.rows, (long long)q.cols, (long long)q.blocksize);
        *bytes = q.bytes;
        return;
    }
    snprintf(dt, dcap, "%s", lf_dtype_name(t->dtype));
    shape_str(shp, scap, t);
    *bytes = t->end - t->begin;
}

static void print_table(const char *path, const lf_st_model *m, uint64_t params, uint64_t bytes, int64_t n_bnb) {
    char shp[256], hb[32], dt[32];
    uint64_t tb;
    int wn = 4, wd = 5, ws = 5, wb = 5;
    int64_t n_q = 0;
    for (int64_t i = 0; i < lf_st_model_count(m); i++) {
        const lf_st_tensor *t = lf_st_model_at(m, i, NULL);
        if (n_bnb && is_bnb_companion(t->name)) continue;
        row_strings(m, t, dt, sizeof dt, shp, sizeof shp, &tb);
        int l = (int)strlen(t->name);
        wn = l > wn ? l : wn;
        l = (int)strlen(dt);
        wd = l > wd ? l : wd;
        l = (int)strlen(shp);
        ws = l > ws ? l : ws;
        l = snprintf(NULL, 0, "%" PRIu64, tb);
        wb = l > wb ? l : wb;
    }
    printf("%s: %d file%s\n", path, lf_st_model_nfiles(m), lf_st_model_nfiles(m) == 1 ? "" : "s");
    for (int i = 0; i < lf_st_model_nfiles(m); i++) {
        const lf_st_file *f = lf_st_model_file(m, i);
        printf("  %s: %" PRId64 " tensors", base_name(lf_st_path(f)), lf_st_count(f));
        for (int64_t k = 0; k < lf_st_meta_count(f); k++)
            printf("%s%s=%s", k ? ", " : "; metadata ", lf_st_meta_key(f, k), lf_st_meta(f, lf_st_meta_key(f, k)));
        printf("\n");
    }
    printf("\n%-*s  %-*s  %-*s  %*s  %s\n", wn, "name", wd, "dtype", ws, "shape", wb, "bytes", "file");
    for (int64_t i = 0; i < lf_st_model_count(m); i++) {
        const lf_st_file *f = NULL;
        const lf_st_tensor *t = lf_st_model_at(m, i, &f);
        if (n_bnb && is_bnb_companion(t->name)) continue;
        row_strings(m, t, dt, sizeof dt, shp, sizeof shp, &tb);
        q4_info q;
        n_q += q4_lookup(m, t, &q);
        printf("%-*s  %-*s  %-*s  %*" PRIu64 "  %s\n", wn, t->name, wd, dt, ws, shp, wb, tb, base_name(lf_st_path(f)));
    }
    human_bytes(hb, sizeof hb, bytes);
    printf("\ntotal: %" PRId64 " tensors, %" PRIu64 " parameters, %" PRIu64 " bytes (%s)\n", lf_st_model_count(m),
           params, bytes, hb);
    if (n_bnb > 0)
        printf("4-bit: %" PRId64 " bitsandbytes weights shown with their logical shape (dq = double quantization); "
               "their %" PRId64 " companion tensors are included in each row's bytes\n", n_q, n_bnb);
}

int lf_cmd_inspect(int argc, char **argv) {
    const char *path = NULL;
    int as_json = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            inspect_usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--json") == 0) {
            as_json = 1;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            static const char *const known[] = {"--json", NULL};
            return lf_cli_unknown_option(CMD, argv[i], known);
        } else if (path) {
            lf_cli_error(CMD, "more than one PATH ('%s' and '%s')", path, argv[i]);
            return 2;
        } else {
            path = argv[i];
        }
    }
    if (!path) {
        lf_cli_error(CMD, "missing PATH (see loraforge inspect --help)");
        return 2;
    }
    lf_err err = {0};
    lf_st_model *m = NULL;
    if (lf_st_model_open(path, &m, &err) != LF_OK) {
        lf_cli_error(CMD, "%s", err.msg);
        return 1;
    }
    uint64_t params = 0, bytes = 0;
    int64_t n_bnb = 0;
    for (int64_t i = 0; i < lf_st_model_count(m); i++) {
        const lf_st_tensor *t = lf_st_model_at(m, i, NULL);
        q4_info q;
        bytes += t->end - t->begin;
        n_bnb += is_bnb_companion(t->name);
        if (q4_lookup(m, t, &q)) params += (uint64_t)(q.rows * q.cols);
        else if (!is_bnb_companion(t->name)) params += (uint64_t)t->numel;
    }
    int rc = 0;
    if (as_json) rc = print_json(path, m, params, bytes);
    else print_table(path, m, params, bytes, n_bnb);
    if (fflush(stdout) != 0) {
        lf_cli_error(CMD, "cannot write output");
        rc = 1;
    }
    lf_st_model_close(m);
    return rc;
}
