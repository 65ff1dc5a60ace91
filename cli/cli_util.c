/* cli_util.c - flag value parsing shared by the subcommands; every failure names the flag and the value. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "adapters/peft_io.h"
#include "model/model.h"
#include "model/model_train.h"
#include "quant/quant.h"

void lf_cli_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "loraforge %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int lf_cli_need_value(const char *cmd, int argc, char **argv, int i) {
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v || (v[0] == '-' && v[1] == '-' && v[2])) {
        lf_cli_error(cmd, "%s needs a value (see loraforge %s --help)", argv[i], cmd);
        return 1;
    }
    return 0;
}

/* Levenshtein distance, strings capped at 63 characters. */
static int edit_distance(const char *a, const char *b) {
    int n = (int)strlen(a), m = (int)strlen(b), row[64];
    if (n > 63) n = 63;
    if (m > 63) m = 63;
    for (int j = 0; j <= m; j++) row[j] = j;
    for (int i = 1; i <= n; i++) {
        int diag = row[0];
        row[0] = i;
        for (int j = 1; j <= m; j++) {
            int up = row[j], v = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < v) v = up + 1;
            if (row[j - 1] + 1 < v) v = row[j - 1] + 1;
            row[j] = v;
            diag = up;
        }
    }
    return row[m];
}

const char *lf_cli_suggest(const char *arg, const char *const *known) {
    const char *best = NULL;
    int bd = 1 << 30;
    for (size_t k = 0; known && known[k]; k++) {
        int d = edit_distance(arg, known[k]), len = (int)strlen(known[k]);
        if (d > 0 && d <= 4 && d * 3 <= len + 1 && d < bd) bd = d, best = known[k];
    }
    return best;
}

int lf_cli_unknown_option(const char *cmd, const char *arg, const char *const *known) {
    const char *best = lf_cli_suggest(arg, known);
    if (best) lf_cli_error(cmd, "unknown option '%s'; did you mean '%s'? (see loraforge %s --help)", arg, best, cmd);
    else lf_cli_error(cmd, "unknown option '%s' (see loraforge %s --help)", arg, cmd);
    return 2;
}

const char *lf_cli_flag_value(const char *cmd, int argc, char **argv, int *i, const char *const *known) {
    const char *a = argv[*i];
    size_t k = 0;
    while (known[k] && strcmp(known[k], a)) k++;
    if (!known[k]) {
        lf_cli_unknown_option(cmd, a, known);
        return NULL;
    }
    if (lf_cli_need_value(cmd, argc, argv, *i)) return NULL;
    return argv[++*i];
}

int lf_cli_parse_i64(const char *cmd, const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end != '\0') {
        lf_cli_error(cmd, "%s: '%s' is not an integer", flag, s);
        return 1;
    }
    if (v < lo || v > hi) {
        lf_cli_error(cmd, "%s: %lld is out of range [%lld, %lld]", flag, v, (long long)lo, (long long)hi);
        return 1;
    }
    *out = v;
    return 0;
}

int lf_cli_parse_f64(const char *cmd, const char *flag, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || v != v) {
        lf_cli_error(cmd, "%s: '%s' is not a number", flag, s);
        return 1;
    }
    if (v < lo || v > hi) {
        lf_cli_error(cmd, "%s: %g is out of range [%g, %g]", flag, v, lo, hi);
        return 1;
    }
    *out = v;
    return 0;
}

int lf_cli_parse_tokens(const char *cmd, const char *s, int32_t **out, int64_t *n) {
    size_t cap = 16, len = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) {
        lf_cli_error(cmd, "out of memory");
        return 1;
    }
    const char *p = s;
    while (*p) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || (*end && *end != ' ' && *end != ',' && *end != '\t' && *end != '\n')) {
            lf_cli_error(cmd, "--tokens: '%.*s' is not a token id (expected non-negative integers separated by spaces)",
                         (int)strcspn(p, " ,\t\n"), p);
            free(ids);
            return 1;
        }
        if (len == cap) {
            int32_t *t = realloc(ids, (cap *= 2) * sizeof *ids);
            if (!t) {
                free(ids);
                lf_cli_error(cmd, "out of memory");
                return 1;
            }
            ids = t;
        }
        ids[len++] = (int32_t)v;
        p = end;
    }
    if (len == 0) {
        free(ids);
        lf_cli_error(cmd, "--tokens: no token ids given");
        return 1;
    }
    *out = ids;
    *n = (int64_t)len;
    return 0;
}

int lf_cli_model_option(const char *cmd, int argc, char **argv, int *i, lf_model_options *o, int short_names) {
    const char *a = argv[*i];
    if (!strcmp(a, "--no-double-quant")) {
        o->double_quant = 0;
        return 1;
    }
    if (!short_names && (!strcmp(a, "--compute-dtype") || !strcmp(a, "--dtype"))) {
        if (lf_cli_need_value(cmd, argc, argv, *i)) return -1;
        const char *v = argv[++*i];
        return lf_cli_parse_compute_dtype(cmd, a, v, &o->compute_dtype) ? -1 : 1;
    }
    int which = !strcmp(a, "--quantization-bit") || !strcmp(a, "--quantization_bit") ? 1
              : !strcmp(a, "--quant-type") || (short_names && !strcmp(a, "--type")) ? 2
              : !strcmp(a, "--quant-blocksize") || (short_names && !strcmp(a, "--blocksize")) ? 3 : 0;
    if (!which) return 0;
    if (lf_cli_need_value(cmd, argc, argv, *i)) return -1;
    const char *v = argv[++*i];
    if (which == 1) {
        if (!strcmp(v, "4")) o->quant_bits = 4;
        else if (!strcmp(v, "0") || !strcmp(v, "none")) o->quant_bits = 0;
        else {
            lf_cli_error(cmd, "%s '%s': accepted values are 4 or none", a, v);
            return -1;
        }
    } else if (which == 2) {
        if (!strcmp(v, "nf4")) o->quant_type = LF_QUANT_NF4;
        else if (!strcmp(v, "fp4")) o->quant_type = LF_QUANT_FP4;
        else {
            lf_cli_error(cmd, "%s '%s': accepted values are nf4 or fp4", a, v);
            return -1;
        }
    } else {
        int64_t b = 0;
        if (lf_cli_parse_i64(cmd, a, v, 1, INT32_MAX, &b)) return -1;
        lf_err err = {0};
        if (lf_quant_check_blocksize(b, &err)) {
            lf_cli_error(cmd, "%s: %s", a, err.msg);
            return -1;
        }
        o->quant_blocksize = b;
    }
    return 1;
}

int lf_cli_parse_compute_dtype(const char *cmd, const char *what, const char *v, lf_dtype *out) {
    if (!strcmp(v, "auto")) {
        *out = LF_DTYPE_INVALID; /* the backend's default (lf_model_load_opts) */
        return 0;
    }
    lf_dtype dt = !strcmp(v, "float") ? LF_DTYPE_F32 : lf_model_parse_dtype(v);
    if (dt == LF_DTYPE_INVALID) {
        lf_cli_error(cmd, "%s '%s': accepted values are auto, f32 (float32, fp32, float), bf16 (bfloat16) and f16 "
                          "(float16, fp16, half)", what, v);
        return 2;
    }
    *out = dt;
    return 0;
}

void lf_cli_report_memory(const char *cmd, const lf_model *m) {
    const lf_model_memory *mm = lf_model_get_memory(m);
    const double MiB = 1024.0 * 1024.0;
    fprintf(stderr, "loraforge %s: model weights %.1f MiB: %d 4-bit matrices %.1f MiB%s, %d dense %.1f MiB, "
            "norms/biases %.1f KiB\n", cmd, (double)(mm->q4_bytes + mm->dense_bytes + mm->small_bytes) / MiB,
            mm->n_q4, (double)mm->q4_bytes / MiB, mm->prequantized ? " (pre-quantized checkpoint)" : "",
            mm->n_dense, (double)mm->dense_bytes / MiB, (double)mm->small_bytes / 1024.0);
}

int lf_cli_apply_adapter(const char *cmd, lf_model *m, const char *dir, struct lf_lora_adapter **out) {
    lf_err err = {0};
    lf_lora_adapter *a = NULL;
    const lf_model_config *c = lf_model_get_config(m);
    *out = NULL;
    if (lf_peft_load(dir, c, &a, &err)) {
        lf_cli_error(cmd, "%s", err.msg);
        return 1;
    }
    int64_t NV = c->L * LF_MOD_COUNT;
    lf_lora_view *v = calloc((size_t)NV, sizeof *v);
    if (!v) {
        lf_lora_free(a);
        lf_cli_error(cmd, "out of memory");
        return 1;
    }
    for (int64_t i = 0; i < NV; i++) {
        const lf_lora_slot *s = lf_lora_get(a, i / LF_MOD_COUNT, (lf_module)(i % LF_MOD_COUNT));
        if (s) v[i] = (lf_lora_view){s->A, s->B, s->mag, NULL, NULL, NULL, s->R, (float)s->scaling};
    }
    lf_status st = lf_model_set_lora(m, v, &err);
    free(v);
    if (st) {
        lf_lora_free(a);
        lf_cli_error(cmd, "%s", err.msg);
        return 1;
    }
    *out = a;
    return 0;
}
