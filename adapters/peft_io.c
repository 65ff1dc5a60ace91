/* peft_io.c - PEFT adapter directories: adapter_config.json (peft 0.12 keys, Python json.dumps formatting) and
 * adapter_model.safetensors (A/B/DoRA magnitude), with validation against the model config. */
#include "adapters/peft_io.h"

#include <ctype.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/fileio.h"      // defines: lf_file_write_atomic, lf_path_join, lf_mkdirs, lf_path_exists
#include "core/json.h"        // defines: lf_json_load_file
#include "core/safetensors.h" // defines: lf_st_open, lf_st_writer_*

/* ---- tensor names ---- */

static const char *const KIND_NAMES[3] = {"lora_A", "lora_B", "lora_magnitude_vector"};

void lf_peft_tensor_name(char *buf, size_t cap, int64_t l, lf_module m, lf_peft_kind k) {
    snprintf(buf, cap, "base_model.model.model.layers.%" PRId64 ".%s.%s.%s%s", l, lf_module_parent(m),
             lf_module_name(m), KIND_NAMES[k], k == LF_PEFT_MAG ? "" : ".weight");
}

/* s starts with prefix: return the rest, else NULL. */
static const char *skip(const char *s, const char *prefix) {
    size_t n = strlen(prefix);
    return strncmp(s, prefix, n) == 0 ? s + n : NULL;
}

int lf_peft_parse_name(const char *name, int64_t *l, lf_module *m, lf_peft_kind *k) {
    const char *p = skip(name, "base_model.model.");
    if (!p) p = name;
    if (!(p = skip(p, "model.layers."))) return 0;
    if (!isdigit((unsigned char)*p)) return 0;
    int64_t layer = 0;
    for (; isdigit((unsigned char)*p); p++) {
        if (layer > (INT64_MAX - 9) / 10) return 0;
        layer = layer * 10 + (*p - '0');
    }
    if (*p++ != '.') return 0;
    const char *q = strchr(p, '.');
    if (!q) return 0;
    char parent[16], mod[16];
    size_t n = (size_t)(q - p);
    if (n >= sizeof parent) return 0;
    memcpy(parent, p, n);
    parent[n] = '\0';
    p = q + 1;
    if (!(q = strchr(p, '.'))) return 0;
    n = (size_t)(q - p);
    if (n >= sizeof mod) return 0;
    memcpy(mod, p, n);
    mod[n] = '\0';
    int mi = lf_module_from_name(mod);
    if (mi < 0 || strcmp(parent, lf_module_parent((lf_module)mi)) != 0) return 0;
    p = q + 1;
    int kind = -1;
    for (int i = 0; i < 3; i++) {
        size_t kl = strlen(KIND_NAMES[i]);
        if (strncmp(p, KIND_NAMES[i], kl) == 0 && (p[kl] == '\0' || p[kl] == '.')) {
            kind = i;
            p += kl;
            break;
        }
    }
    if (kind < 0) return 0;
    /* rest: "" | ".weight" | ".<adapter>" | ".<adapter>.weight"; A and B need the ".weight" */
    int has_weight = 0;
    if (*p) {
        const char *c1 = p + 1, *d = strchr(c1, '.');
        if (!*c1) return 0;
        if (d) { /* ".<adapter>.weight" */
            if (d == c1 || strcmp(d, ".weight") != 0) return 0;
            has_weight = 1;
        } else {
            has_weight = strcmp(c1, "weight") == 0;
        }
    }
    if (kind != LF_PEFT_MAG && !has_weight) return 0;
    *l = layer;
    *m = (lf_module)mi;
    *k = (lf_peft_kind)kind;
    return 1;
}

/* ---- Python json.dumps(indent=2, sort_keys=True) ---- */

void lf_peft_float_repr(double x, char *buf, size_t cap) {
    if (isnan(x)) {
        snprintf(buf, cap, "NaN");
        return;
    }
    if (isinf(x)) {
        snprintf(buf, cap, x > 0 ? "Infinity" : "-Infinity");
        return;
    }
    if (x == 0.0) {
        snprintf(buf, cap, signbit(x) ? "-0.0" : "0.0");
        return;
    }
    char e[48];
    for (int p = 1; p <= 17; p++) {
        snprintf(e, sizeof e, "%.*e", p - 1, x);
        if (strtod(e, NULL) == x) break;
    }
    int neg = e[0] == '-';
    char dig[24];
    int nd = 0;
    const char *s = e + neg;
    for (; *s && *s != 'e'; s++)
        if (isdigit((unsigned char)*s)) dig[nd++] = *s;
    int ex = atoi(s + 1);
    while (nd > 1 && dig[nd - 1] == '0') nd--;
    dig[nd] = '\0';
    char out[64];
    size_t o = 0;
    if (neg) out[o++] = '-';
    if (ex < -4 || ex >= 16) { /* repr switches to exponent form outside 1e-4 <= |x| < 1e16 */
        out[o++] = dig[0];
        if (nd > 1) {
            out[o++] = '.';
            memcpy(out + o, dig + 1, (size_t)nd - 1);
            o += (size_t)nd - 1;
        }
        snprintf(out + o, sizeof out - o, "e%c%02d", ex < 0 ? '-' : '+', ex < 0 ? -ex : ex);
    } else if (ex >= 0) {
        for (int i = 0; i <= ex; i++) out[o++] = i < nd ? dig[i] : '0';
        out[o++] = '.';
        if (nd > ex + 1) {
            memcpy(out + o, dig + ex + 1, (size_t)(nd - ex - 1));
            o += (size_t)(nd - ex - 1);
        } else {
            out[o++] = '0';
        }
        out[o] = '\0';
    } else {
        out[o++] = '0';
        out[o++] = '.';
        for (int i = 0; i < -ex - 1; i++) out[o++] = '0';
        memcpy(out + o, dig, (size_t)nd);
        o += (size_t)nd;
        out[o] = '\0';
    }
    snprintf(buf, cap, "%s", out);
}

typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->n + n + 1 > cap) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_indent(sbuf *b, int n) {
    for (int i = 0; i < n; i++) sb_put(b, " ", 1);
}

/* Python ensure_ascii string: \" \\ \n \r \t \b \f, other controls and non-ASCII as \uxxxx (lowercase hex,
 * surrogate pairs past U+FFFF). Input is valid UTF-8 (jansson guarantees it). */
static void sb_json_string(sbuf *b, const char *s, size_t n) {
    char u[16];
    sb_put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        uint32_t cp;
        size_t k;
        if (c < 0x80) cp = c, k = 1;
        else if ((c & 0xE0) == 0xC0) cp = c & 0x1Fu, k = 2;
        else if ((c & 0xF0) == 0xE0) cp = c & 0x0Fu, k = 3;
        else cp = c & 0x07u, k = 4;
        for (size_t j = 1; j < k && i + j < n; j++) cp = (cp << 6) | ((unsigned char)s[i + j] & 0x3Fu);
        i += k;
        switch (cp) {
        case '"': sb_puts(b, "\\\""); continue;
        case '\\': sb_puts(b, "\\\\"); continue;
        case '\n': sb_puts(b, "\\n"); continue;
        case '\r': sb_puts(b, "\\r"); continue;
        case '\t': sb_puts(b, "\\t"); continue;
        case '\b': sb_puts(b, "\\b"); continue;
        case '\f': sb_puts(b, "\\f"); continue;
        default: break;
        }
        if (cp >= 0x20 && cp < 0x7F) {
            char ch = (char)cp;
            sb_put(b, &ch, 1);
        } else if (cp < 0x10000) {
            snprintf(u, sizeof u, "\\u%04x", cp);
            sb_puts(b, u);
        } else {
            uint32_t v = cp - 0x10000;
            snprintf(u, sizeof u, "\\u%04x\\u%04x", 0xD800u + (v >> 10), 0xDC00u + (v & 0x3FFu));
            sb_puts(b, u);
        }
    }
    sb_put(b, "\"", 1);
}

static int cmp_cstr(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

static void sb_json(sbuf *b, const json_t *v, int ind) {
    char num[64];
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        size_t n = json_object_size(v);
        if (n == 0) {
            sb_puts(b, "{}");
            return;
        }
        const char **keys = malloc(n * sizeof *keys);
        if (!keys) {
            b->oom = 1;
            return;
        }
        size_t i = 0;
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)v, key, val) keys[i++] = key;
        qsort(keys, n, sizeof *keys, cmp_cstr); /* bytewise UTF-8 order = Python's code point order */
        sb_puts(b, "{\n");
        for (i = 0; i < n; i++) {
            sb_indent(b, ind + 2);
            sb_json_string(b, keys[i], strlen(keys[i]));
            sb_puts(b, ": ");
            sb_json(b, json_object_get(v, keys[i]), ind + 2);
            sb_puts(b, i + 1 < n ? ",\n" : "\n");
        }
        sb_indent(b, ind);
        sb_puts(b, "}");
        free(keys);
        return;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        if (n == 0) {
            sb_puts(b, "[]");
            return;
        }
        sb_puts(b, "[\n");
        for (size_t i = 0; i < n; i++) {
            sb_indent(b, ind + 2);
            sb_json(b, json_array_get(v, i), ind + 2);
            sb_puts(b, i + 1 < n ? ",\n" : "\n");
        }
        sb_indent(b, ind);
        sb_puts(b, "]");
        return;
    }
    case JSON_STRING: sb_json_string(b, json_string_value(v), json_string_length(v)); return;
    case JSON_INTEGER:
        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        sb_puts(b, num);
        return;
    case JSON_REAL:
        lf_peft_float_repr(json_real_value(v), num, sizeof num);
        sb_puts(b, num);
        return;
    case JSON_TRUE: sb_puts(b, "true"); return;
    case JSON_FALSE: sb_puts(b, "false"); return;
    case JSON_NULL: sb_puts(b, "null"); return;
    }
}

/* A number as Python would have stored it in the config: integral values as int (as users write
 * lora_alpha=16), others as float. */
static json_t *json_num(double x) {
    if (x == floor(x) && fabs(x) < 9007199254740992.0) return json_integer((json_int_t)x);
    return json_real(x);
}

static json_t *json_str_or_null(const char *s) { return s[0] ? json_string(s) : json_null(); }

/* ---- config write ---- */

lf_status lf_peft_config_json(const lf_lora_config *c, char **out, lf_err *err) {
    lf_status st = LF_OK;
    json_t *o = NULL, *t = NULL, *rp = NULL, *ap = NULL;
    sbuf b = {0};
    *out = NULL;
    LF_TRY(lf_lora_config_validate(c, err));
    o = json_object();
    rp = json_object();
    ap = json_object();
    LF_CHECK_ALLOC(o, err);
    LF_CHECK_ALLOC(rp, err);
    LF_CHECK_ALLOC(ap, err);
    for (int i = 0; i < c->n_rank_pattern; i++)
        if (json_object_set_new(rp, c->rank_pattern[i].key, json_integer((json_int_t)c->rank_pattern[i].value))) goto oom;
    for (int i = 0; i < c->n_alpha_pattern; i++)
        if (json_object_set_new(ap, c->alpha_pattern[i].key, json_num(c->alpha_pattern[i].value))) goto oom;
    if (c->target_regex[0]) {
        t = json_string(c->target_regex);
    } else {
        t = json_array();
        LF_CHECK_ALLOC(t, err);
        if (c->n_target_names > 0) {
            for (int i = 0; i < c->n_target_names; i++)
                if (json_array_append_new(t, json_string(c->target_names[i]))) goto oom;
        } else {
            for (int m = 0; m < LF_MOD_COUNT; m++)
                if ((c->target_mask >> m) & 1u)
                    if (json_array_append_new(t, json_string(lf_module_name((lf_module)m)))) goto oom;
        }
    }
    LF_CHECK_ALLOC(t, err);
    json_t *init = c->init == LF_LORA_INIT_GAUSSIAN ? json_string("gaussian")
                                                    : json_boolean(c->init == LF_LORA_INIT_DEFAULT);
    int bad = 0;
    bad |= json_object_set_new(o, "alora_invocation_tokens", json_null());
    bad |= json_object_set_new(o, "alpha_pattern", ap);
    ap = NULL;
    bad |= json_object_set_new(o, "arrow_config", json_null());
    if (c->auto_mapping_class[0] || c->auto_mapping_library[0]) {
        json_t *am = json_object();
        LF_CHECK_ALLOC(am, err);
        bad |= json_object_set_new(am, "base_model_class", json_str_or_null(c->auto_mapping_class));
        bad |= json_object_set_new(am, "parent_library", json_str_or_null(c->auto_mapping_library));
        bad |= json_object_set_new(o, "auto_mapping", am);
    } else {
        bad |= json_object_set_new(o, "auto_mapping", json_null());
    }
    bad |= json_object_set_new(o, "base_model_name_or_path", json_str_or_null(c->base_model_name_or_path));
    bad |= json_object_set_new(o, "bias", json_string("none"));
    bad |= json_object_set_new(o, "corda_config", json_null());
    bad |= json_object_set_new(o, "ensure_weight_tying", json_false());
    bad |= json_object_set_new(o, "eva_config", json_null());
    bad |= json_object_set_new(o, "exclude_modules", json_null());
    bad |= json_object_set_new(o, "fan_in_fan_out", json_false());
    bad |= json_object_set_new(o, "inference_mode", json_true());
    bad |= json_object_set_new(o, "init_lora_weights", init);
    bad |= json_object_set_new(o, "kasa_config", json_null());
    bad |= json_object_set_new(o, "layer_replication", json_null());
    bad |= json_object_set_new(o, "layers_pattern", json_null());
    bad |= json_object_set_new(o, "layers_to_transform", json_null());
    bad |= json_object_set_new(o, "loftq_config", json_object());
    bad |= json_object_set_new(o, "lora_alpha", json_num(c->alpha));
    bad |= json_object_set_new(o, "lora_bias", json_false());
    bad |= json_object_set_new(o, "lora_dropout", json_real(c->dropout));
    bad |= json_object_set_new(o, "lora_ga_config", json_null());
    bad |= json_object_set_new(o, "megatron_config", json_null());
    bad |= json_object_set_new(o, "megatron_core", json_string("megatron.core"));
    bad |= json_object_set_new(o, "modules_to_save", json_null());
    bad |= json_object_set_new(o, "monteclora_config", json_null());
    bad |= json_object_set_new(o, "peft_type", json_string("LORA"));
    bad |= json_object_set_new(o, "peft_version", json_string(LF_PEFT_FORMAT_VERSION));
    bad |= json_object_set_new(o, "qalora_group_size", json_integer(16));
    bad |= json_object_set_new(o, "r", json_integer((json_int_t)c->r));
    bad |= json_object_set_new(o, "rank_pattern", rp);
    rp = NULL;
    bad |= json_object_set_new(o, "revision", json_str_or_null(c->revision));
    bad |= json_object_set_new(o, "target_modules", t);
    t = NULL;
    bad |= json_object_set_new(o, "target_parameters", json_null());
    bad |= json_object_set_new(o, "task_type", json_str_or_null(c->task_type));
    bad |= json_object_set_new(o, "trainable_token_indices", json_null());
    bad |= json_object_set_new(o, "use_bdlora", json_null());
    bad |= json_object_set_new(o, "use_dora", json_boolean(c->use_dora));
    bad |= json_object_set_new(o, "use_qalora", json_false());
    bad |= json_object_set_new(o, "use_rslora", json_boolean(c->use_rslora));
    bad |= json_object_set_new(o, "velora_config", json_null());
    if (bad) goto oom;
    sb_json(&b, o, 0);
    if (b.oom || !b.p) goto oom;
    json_decref(o);
    *out = b.p;
    return LF_OK;
oom:
    st = lf_err_set(err, LF_ENOMEM, "adapter_config.json: out of memory");
fail:
    json_decref(o);
    json_decref(t);
    json_decref(rp);
    json_decref(ap);
    free(b.p);
    return st ? st : LF_ENOMEM;
}

lf_status lf_peft_config_write(const lf_lora_config *cfg, const char *path, lf_err *err) {
    char *text = NULL;
    lf_status st = lf_peft_config_json(cfg, &text, err);
    if (st) return st;
    st = lf_file_write_atomic(path, text, strlen(text), err);
    free(text);
    return st;
}

/* ---- config read ---- */

static const char *jtype(const json_t *v) {
    switch (json_typeof(v)) {
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

/* null, false, {} or [] */
static int json_off(const json_t *v) {
    return json_is_null(v) || json_is_false(v) || (json_is_object(v) && json_object_size(v) == 0) ||
           (json_is_array(v) && json_array_size(v) == 0);
}

static lf_status want_type(const char *path, const char *key, const json_t *v, int ok, const char *what, lf_err *err) {
    if (ok) return LF_OK;
    return lf_err_set(err, LF_EFORMAT, "%s: \"%s\" must be %s, got %s", path, key, what, jtype(v));
}

static lf_status copy_str(const char *path, const char *key, const char *s, char *dst, size_t cap, lf_err *err) {
    size_t n = strlen(s);
    if (n >= cap)
        return lf_err_set(err, LF_EUNSUPPORTED, "%s: \"%s\" is %zu bytes long (at most %zu supported)", path, key, n,
                          cap - 1);
    memcpy(dst, s, n + 1);
    return LF_OK;
}

static lf_status read_patterns(const char *path, const char *key, const json_t *v, int is_rank, lf_lora_pattern *pat,
                               int *count, lf_err *err) {
    lf_status st = LF_OK;
    *count = 0;
    if (json_is_null(v)) return LF_OK;
    LF_TRY(want_type(path, key, v, json_is_object(v), "an object of module pattern -> number", err));
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
        if (*count >= LF_LORA_MAX_PATTERNS)
            return lf_err_set(err, LF_EUNSUPPORTED, "%s: \"%s\" has more than %d entries", path, key, LF_LORA_MAX_PATTERNS);
        if (!json_is_number(x) || (is_rank && !(json_is_integer(x) || json_number_value(x) == floor(json_number_value(x)))))
            return lf_err_set(err, LF_EFORMAT, "%s: \"%s\"[\"%s\"] must be %s, got %s", path, key, k,
                              is_rank ? "an integer rank" : "a number", jtype(x));
        char kk[128];
        snprintf(kk, sizeof kk, "%s key", key);
        LF_TRY(copy_str(path, kk, k, pat[*count].key, sizeof pat[*count].key, err));
        pat[*count].value = json_number_value(x);
        if (is_rank && !(pat[*count].value >= 1 && pat[*count].value <= 1e9)) /* as "r"; also keeps int64 casts defined */
            return lf_err_set(err, LF_EFORMAT, "%s: \"%s\"[\"%s\"] = %g: ranks must be in 1..1e9", path, key, k,
                              pat[*count].value);
        (*count)++;
    }
    return LF_OK;
fail:
    return st;
}

static lf_status unsupported(const char *path, const char *key, const json_t *v, const char *why, lf_err *err) {
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    lf_status st = lf_err_set(err, LF_EUNSUPPORTED, "%s: \"%s\" = %.200s is not supported: %s", path, key,
                              s ? s : "?", why);
    free(s);
    return st;
}

static lf_status config_from_json(const json_t *root, const char *path, lf_lora_config *c, lf_err *err) {
    lf_status st = LF_OK;
    *c = lf_lora_config_default();
    c->task_type[0] = '\0';
    if (!json_is_object(root)) return lf_err_set(err, LF_EFORMAT, "%s: top level must be a JSON object", path);
    const json_t *pt = json_object_get(root, "peft_type");
    if (!pt) return lf_err_set(err, LF_EFORMAT, "%s: missing \"peft_type\" (not a PEFT adapter config)", path);
    if (!json_is_string(pt)) return want_type(path, "peft_type", pt, 0, "a string", err);
    if (strcmp(json_string_value(pt), "LORA") != 0)
        return lf_err_set(err, LF_EUNSUPPORTED, "%s: peft_type \"%s\" is not supported (only LORA adapters, "
                          "including DoRA and rsLoRA)", path, json_string_value(pt));
    const json_t *r = json_object_get(root, "r");
    if (!r) return lf_err_set(err, LF_EFORMAT, "%s: missing \"r\"", path);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)root, key, v) {
        if (!strcmp(key, "peft_type")) continue;
        if (!strcmp(key, "r")) {
            double rv = json_is_number(v) ? json_number_value(v) : 0;
            LF_TRY(want_type(path, key, v, rv >= 1 && rv <= 1e9 && rv == floor(rv), "a positive integer", err));
            c->r = (int64_t)rv;
        } else if (!strcmp(key, "lora_alpha")) {
            LF_TRY(want_type(path, key, v, json_is_number(v), "a number", err));
            c->alpha = json_number_value(v);
        } else if (!strcmp(key, "lora_dropout")) {
            LF_TRY(want_type(path, key, v, json_is_number(v) || json_is_null(v), "a number", err));
            c->dropout = json_is_null(v) ? 0.0 : json_number_value(v);
            if (!(c->dropout >= 0 && c->dropout < 1))
                return lf_err_set(err, LF_EFORMAT, "%s: \"lora_dropout\" = %g must be in [0, 1)", path, c->dropout);
        } else if (!strcmp(key, "use_rslora") || !strcmp(key, "use_dora") || !strcmp(key, "fan_in_fan_out") ||
                   !strcmp(key, "inference_mode") || !strcmp(key, "lora_bias") || !strcmp(key, "use_qalora")) {
            LF_TRY(want_type(path, key, v, json_is_boolean(v) || json_is_null(v), "true or false", err));
            int on = json_is_true(v);
            if (!strcmp(key, "use_rslora")) c->use_rslora = on;
            else if (!strcmp(key, "use_dora")) c->use_dora = on;
            else if (on && strcmp(key, "inference_mode") != 0)
                return unsupported(path, key, v, !strcmp(key, "fan_in_fan_out")
                                                      ? "weights stored transposed (Conv1D models) are not handled"
                                                      : "this LoRA variant is not implemented", err);
        } else if (!strcmp(key, "bias")) {
            LF_TRY(want_type(path, key, v, json_is_string(v) || json_is_null(v), "a string", err));
            if (json_is_string(v) && strcmp(json_string_value(v), "none") != 0)
                return unsupported(path, key, v, "only bias \"none\" (no trained biases)", err);
        } else if (!strcmp(key, "target_modules")) {
            if (json_is_null(v)) continue; /* PEFT default for Llama/Mistral/Qwen2: q_proj, v_proj */
            if (json_is_string(v)) {
                LF_TRY(copy_str(path, key, json_string_value(v), c->target_regex, sizeof c->target_regex, err));
                continue;
            }
            LF_TRY(want_type(path, key, v, json_is_array(v), "a list of module names or a regex string", err));
            if (json_array_size(v) > LF_LORA_MAX_TARGETS)
                return lf_err_set(err, LF_EUNSUPPORTED, "%s: \"target_modules\" has %zu entries (at most %d)", path,
                                  json_array_size(v), LF_LORA_MAX_TARGETS);
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) {
                if (!json_is_string(e))
                    return lf_err_set(err, LF_EFORMAT, "%s: \"target_modules\"[%zu] must be a string, got %s", path, i,
                                      jtype(e));
                LF_TRY(copy_str(path, key, json_string_value(e), c->target_names[i], sizeof c->target_names[i], err));
            }
            c->n_target_names = (int)json_array_size(v);
            if (c->n_target_names == 0) return lf_err_set(err, LF_EFORMAT, "%s: \"target_modules\" is empty", path);
        } else if (!strcmp(key, "rank_pattern")) {
            LF_TRY(read_patterns(path, key, v, 1, c->rank_pattern, &c->n_rank_pattern, err));
        } else if (!strcmp(key, "alpha_pattern")) {
            LF_TRY(read_patterns(path, key, v, 0, c->alpha_pattern, &c->n_alpha_pattern, err));
        } else if (!strcmp(key, "init_lora_weights")) {
            if (json_is_true(v) || json_is_null(v)) c->init = LF_LORA_INIT_DEFAULT;
            else if (json_is_false(v)) c->init = LF_LORA_INIT_RANDOM;
            else if (json_is_string(v) && !strcasecmp(json_string_value(v), "gaussian")) c->init = LF_LORA_INIT_GAUSSIAN;
            else if (json_is_string(v) && !strcmp(json_string_value(v), "eva")) c->init = LF_LORA_INIT_DEFAULT;
            else if (json_is_string(v))
                return unsupported(path, key, v, "PiSSA/OLoRA/LoftQ/CorDA-style inits modify the base weights; convert "
                                   "the adapter to plain LoRA (peft save_pretrained(path_initial_model_for_weight_"
                                   "conversion=...)) first", err);
            else return want_type(path, key, v, 0, "true, false or a string", err);
        } else if (!strcmp(key, "base_model_name_or_path") || !strcmp(key, "revision") || !strcmp(key, "task_type")) {
            if (json_is_null(v)) continue;
            LF_TRY(want_type(path, key, v, json_is_string(v), "a string or null", err));
            char *dst = !strcmp(key, "revision") ? c->revision
                        : !strcmp(key, "task_type") ? c->task_type : c->base_model_name_or_path;
            size_t cap = !strcmp(key, "revision") ? sizeof c->revision
                         : !strcmp(key, "task_type") ? sizeof c->task_type : sizeof c->base_model_name_or_path;
            LF_TRY(copy_str(path, key, json_string_value(v), dst, cap, err));
        } else if (!strcmp(key, "modules_to_save") || !strcmp(key, "layers_to_transform") ||
                   !strcmp(key, "layer_replication") || !strcmp(key, "megatron_config") ||
                   !strcmp(key, "loftq_config") || !strcmp(key, "exclude_modules") ||
                   !strcmp(key, "trainable_token_indices") || !strcmp(key, "target_parameters")) {
            if (!json_off(v))
                return unsupported(path, key, v, !strcmp(key, "modules_to_save")
                                                     ? "fully trained extra modules are not handled"
                                                     : "loraforge adapts every selected decoder linear of every layer",
                                   err);
        } else if (!strcmp(key, "auto_mapping")) {
            if (json_is_null(v)) continue;
            LF_TRY(want_type(path, key, v, json_is_object(v), "an object or null", err));
            const json_t *bc = json_object_get(v, "base_model_class"), *pl = json_object_get(v, "parent_library");
            if (bc && json_is_string(bc))
                LF_TRY(copy_str(path, "auto_mapping.base_model_class", json_string_value(bc), c->auto_mapping_class,
                                sizeof c->auto_mapping_class, err));
            if (pl && json_is_string(pl))
                LF_TRY(copy_str(path, "auto_mapping.parent_library", json_string_value(pl), c->auto_mapping_library,
                                sizeof c->auto_mapping_library, err));
        } else if (!strcmp(key, "layers_pattern") || !strcmp(key, "megatron_core") ||
                   !strcmp(key, "peft_version") || !strcmp(key, "runtime_config")) {
            continue; /* informational, or only meaningful with options refused above */
        } else if (json_is_true(v) || (json_is_object(v) && json_object_size(v) > 0) ||
                   (json_is_array(v) && json_array_size(v) > 0)) {
            return unsupported(path, key, v, "unknown option (written by a newer peft?) that is switched on", err);
        }
    }
    return LF_OK;
fail:
    return st;
}

lf_status lf_peft_config_read(const char *path, lf_lora_config *cfg, lf_err *err) {
    json_t *root = NULL;
    lf_status st = lf_json_load_file(path, &root, err);
    if (st) return st;
    st = config_from_json(root, path, cfg, err);
    json_decref(root);
    if (st == LF_OK) {
        lf_status vs = lf_lora_config_validate(cfg, err);
        if (vs) return lf_err_wrap(err, vs, "%s", path);
    }
    return st;
}

/* ---- load ---- */

static void fmt_shape(char *buf, size_t cap, const int64_t *shape, int ndim) {
    size_t o = 0;
    o += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && o < cap; i++) o += (size_t)snprintf(buf + o, cap - o, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
}

lf_status lf_peft_load(const char *dir, const lf_model_config *mc, lf_lora_adapter **out, lf_err *err) {
    lf_status st = LF_OK;
    lf_lora_adapter *a = NULL;
    lf_st_file *f = NULL;
    const lf_st_tensor **seen = NULL;
    lf_lora_config cfg;
    char cpath[4096], wpath[4096], bpath[4096];
    *out = NULL;
    if (!lf_path_is_dir(dir)) return lf_err_set(err, LF_ENOTFOUND, "%s: adapter directory does not exist", dir);
    LF_TRY(lf_path_join(cpath, sizeof cpath, dir, LF_PEFT_CONFIG_NAME, err));
    LF_TRY(lf_path_join(wpath, sizeof wpath, dir, LF_PEFT_WEIGHTS_NAME, err));
    LF_TRY(lf_path_join(bpath, sizeof bpath, dir, LF_PEFT_LEGACY_WEIGHTS_NAME, err));
    if (!lf_path_exists(cpath))
        return lf_err_set(err, LF_ENOTFOUND, "%s: missing %s (not a PEFT adapter directory)", dir, LF_PEFT_CONFIG_NAME);
    if (!lf_path_exists(wpath)) {
        if (lf_path_exists(bpath))
            return lf_err_set(err, LF_EUNSUPPORTED, "%s: only %s (PyTorch pickle) found; loraforge reads %s - convert "
                              "it, e.g. in Python: safetensors.torch.save_file(torch.load('%s'), '%s', "
                              "metadata={'format': 'pt'})", dir, LF_PEFT_LEGACY_WEIGHTS_NAME, LF_PEFT_WEIGHTS_NAME,
                              LF_PEFT_LEGACY_WEIGHTS_NAME, LF_PEFT_WEIGHTS_NAME);
        return lf_err_set(err, LF_ENOTFOUND, "%s: missing %s", dir, LF_PEFT_WEIGHTS_NAME);
    }
    LF_TRY(lf_peft_config_read(cpath, &cfg, err));
    LF_TRY(lf_st_open(wpath, &f, err));
    {
        /* The ranks come from the config, the memory follows them: lf_lora_create allocates every selected
         * slot before a tensor is read, so "r": 1000000000 alone would ask for gigabytes. A slot of rank R
         * needs a lora_A [R, in_features] in the file, so no rank above the file's largest such lora_A can
         * load: ranks are capped at that + 1 for the allocation (a slot left with rank > max_r fails below,
         * as it would have at its shape check) and restored in the adapter's config. */
        int64_t max_r = 0;
        for (int64_t i = 0; i < lf_st_count(f); i++) {
            const lf_st_tensor *t = lf_st_at(f, i);
            int64_t l, oc, in;
            lf_module m;
            lf_peft_kind k;
            if (!lf_peft_parse_name(t->name, &l, &m, &k) || k != LF_PEFT_A || t->ndim != 2 || l >= mc->L) continue;
            lf_module_shape(mc, m, &oc, &in);
            if (t->shape[1] == in && t->shape[0] > max_r) max_r = t->shape[0];
        }
        lf_lora_config capped = cfg;
        if (capped.r > max_r + 1) capped.r = max_r + 1;
        for (int i = 0; i < capped.n_rank_pattern; i++)
            if (capped.rank_pattern[i].value > (double)(max_r + 1)) capped.rank_pattern[i].value = (double)(max_r + 1);
        lf_status cs = lf_lora_create(&capped, mc, &a, err);
        if (cs) {
            st = lf_err_wrap(err, cs, "%s", cpath);
            goto fail;
        }
        a->cfg.r = cfg.r;
        for (int i = 0; i < cfg.n_rank_pattern; i++) a->cfg.rank_pattern[i].value = cfg.rank_pattern[i].value;
        for (int64_t i = 0; i < a->L * LF_MOD_COUNT; i++) {
            const lf_lora_slot *s = &a->slots[i];
            if (s->present && s->R > max_r) {
                int64_t l = i / LF_MOD_COUNT;
                lf_module m = (lf_module)(i % LF_MOD_COUNT);
                const lf_st_tensor *ta = NULL;
                for (int64_t j = 0; j < lf_st_count(f) && !ta; j++) {
                    int64_t tl;
                    lf_module tm;
                    lf_peft_kind tk;
                    const lf_st_tensor *t = lf_st_at(f, j);
                    if (lf_peft_parse_name(t->name, &tl, &tm, &tk) && tl == l && tm == m && tk == LF_PEFT_A) ta = t;
                }
                char name[256], got[96];
                lf_peft_tensor_name(name, sizeof name, l, m, LF_PEFT_A);
                if (ta) fmt_shape(got, sizeof got, ta->shape, ta->ndim);
                if (ta && (ta->ndim != 2 || ta->shape[1] != s->IN))
                    st = lf_err_set(err, LF_EFORMAT, "%s: tensor '%s' has shape %s, expected [r, %" PRId64 "] [r, "
                                    "in_features] (r=%" PRId64 " or a rank_pattern entry from %s, %s in_features %" PRId64
                                    " from the model config; adapter of another base model?)", wpath, ta->name, got,
                                    s->IN, cfg.r, cpath, lf_module_name(m), s->IN);
                else if (ta)
                    st = lf_err_set(err, LF_EFORMAT, "%s: tensor '%s' has shape %s, expected [r, in_features] with the "
                                    "rank from %s (r=%" PRId64 " or a rank_pattern entry), which is above %" PRId64
                                    ", the largest lora_A rank in the file", wpath, ta->name, got, cpath, cfg.r, max_r);
                else
                    st = lf_err_set(err, LF_EFORMAT, "%s: missing tensor '%s' (target_modules in %s selects layer %"
                                    PRId64 " %s, with a rank above %" PRId64 ": r=%" PRId64 " or a rank_pattern entry)",
                                    wpath, name, cpath, l, lf_module_name(m), max_r, cfg.r);
                goto fail;
            }
        }
    }
    seen = calloc((size_t)(a->L * LF_MOD_COUNT * 3), sizeof *seen);
    LF_CHECK_ALLOC(seen, err);
    for (int64_t i = 0; i < lf_st_count(f); i++) {
        const lf_st_tensor *t = lf_st_at(f, i);
        int64_t l;
        lf_module m;
        lf_peft_kind k;
        if (!lf_peft_parse_name(t->name, &l, &m, &k)) {
            st = lf_err_set(err, LF_EUNSUPPORTED, "%s: tensor '%s' is not a lora_A/lora_B/lora_magnitude_vector of a "
                            "decoder linear (model.layers.N.{self_attn,mlp}.*_proj); adapters on embeddings, lm_head "
                            "or biases are not supported", wpath, t->name);
            goto fail;
        }
        if (l >= a->L) {
            st = lf_err_set(err, LF_EFORMAT, "%s: tensor '%s' is for layer %" PRId64 ", but the model has %" PRId64
                            " layers (adapter of another base model?)", wpath, t->name, l, a->L);
            goto fail;
        }
        lf_lora_slot *s = &a->slots[l * LF_MOD_COUNT + m];
        if (!s->present) {
            st = lf_err_set(err, LF_EFORMAT, "%s: tensor '%s' is for layer %" PRId64 " %s, which target_modules in %s "
                            "does not select", wpath, t->name, l, lf_module_name(m), cpath);
            goto fail;
        }
        if (k == LF_PEFT_MAG && !s->mag) {
            st = lf_err_set(err, LF_EFORMAT, "%s: tensor '%s' is a DoRA magnitude, but use_dora is false in %s", wpath,
                            t->name, cpath);
            goto fail;
        }
        const lf_st_tensor **sv = &seen[(l * LF_MOD_COUNT + m) * 3 + k];
        if (*sv) {
            st = lf_err_set(err, LF_EFORMAT, "%s: tensors '%s' and '%s' both hold %s of layer %" PRId64 " %s", wpath,
                            (*sv)->name, t->name, KIND_NAMES[k], l, lf_module_name(m));
            goto fail;
        }
        *sv = t;
        int64_t want[2];
        int wnd = 2;
        float *dst;
        const char *why;
        if (k == LF_PEFT_A) want[0] = s->R, want[1] = s->IN, dst = s->A, why = "[r, in_features]";
        else if (k == LF_PEFT_B) want[0] = s->OC, want[1] = s->R, dst = s->B, why = "[out_features, r]";
        else want[0] = s->OC, wnd = 1, dst = s->mag, why = "[out_features]";
        int ok = t->ndim == wnd;
        for (int d = 0; ok && d < wnd; d++) ok = t->shape[d] == want[d];
        if (!ok) {
            char got[96], exp[96];
            fmt_shape(got, sizeof got, t->shape, t->ndim);
            fmt_shape(exp, sizeof exp, want, wnd);
            st = lf_err_set(err, LF_EFORMAT, "%s: tensor '%s' has shape %s, expected %s %s (r=%" PRId64 " from %s, "
                            "%s %" PRId64 "x%" PRId64 " from the model config; adapter of another base model?)", wpath,
                            t->name, got, exp, why, s->R, cpath, lf_module_name(m), s->OC, s->IN);
            goto fail;
        }
        if (t->dtype != LF_DTYPE_F32 && t->dtype != LF_DTYPE_BF16 && t->dtype != LF_DTYPE_F16) {
            st = lf_err_set(err, LF_EUNSUPPORTED, "%s: tensor '%s' has dtype %s (F32, BF16 or F16 supported)", wpath,
                            t->name, lf_dtype_name(t->dtype));
            goto fail;
        }
        /* a header length that is not a multiple of the element size leaves the data unaligned (valid
         * safetensors, core/safetensors.h): the 16-bit converters need aligned loads, so copy those first */
        const void *src = t->data;
        void *aligned = NULL;
        if (t->dtype != LF_DTYPE_F32 && ((uintptr_t)src % 2) != 0 && t->numel > 0) {
            aligned = malloc((size_t)(t->end - t->begin));
            LF_CHECK_ALLOC(aligned, err);
            memcpy(aligned, src, (size_t)(t->end - t->begin));
            src = aligned;
        }
        lf_status cs = lf_to_f32_n(dst, src, t->dtype, t->numel, err);
        free(aligned);
        if (cs) {
            st = lf_err_wrap(err, cs, "%s: tensor '%s'", wpath, t->name);
            goto fail;
        }
    }
    for (int64_t i = 0; i < a->L * LF_MOD_COUNT; i++) {
        if (!a->slots[i].present) continue;
        for (int k = 0; k < (a->cfg.use_dora ? 3 : 2); k++) {
            if (seen[i * 3 + k]) continue;
            char name[256];
            lf_peft_tensor_name(name, sizeof name, i / LF_MOD_COUNT, (lf_module)(i % LF_MOD_COUNT), (lf_peft_kind)k);
            st = lf_err_set(err, LF_EFORMAT, "%s: missing tensor '%s' (target_modules in %s selects layer %" PRId64
                            " %s)", wpath, name, cpath, i / LF_MOD_COUNT, lf_module_name((lf_module)(i % LF_MOD_COUNT)));
            goto fail;
        }
    }
    free(seen);
    lf_st_close(f);
    *out = a;
    return LF_OK;
fail:
    free(seen);
    lf_st_close(f);
    lf_lora_free(a);
    return st ? st : LF_ENOMEM;
}

/* ---- save ---- */

lf_status lf_peft_save(const lf_lora_adapter *a, const char *dir, lf_dtype dtype, lf_err *err) {
    lf_status st = LF_OK;
    lf_st_writer *w = NULL;
    uint16_t *half = NULL;
    char path[4096];
    if (dtype != LF_DTYPE_F32 && dtype != LF_DTYPE_BF16 && dtype != LF_DTYPE_F16)
        return lf_err_set(err, LF_EINVAL, "adapter save: dtype %s not supported (F32, BF16, F16)", lf_dtype_name(dtype));
    LF_TRY(lf_lora_config_validate(&a->cfg, err));
    LF_TRY(lf_mkdirs(dir, err));
    w = lf_st_writer_create();
    LF_CHECK_ALLOC(w, err);
    const void *base = a->params;
    if (dtype != LF_DTYPE_F32) {
        half = malloc((size_t)(a->n_params > 0 ? a->n_params : 1) * sizeof *half);
        LF_CHECK_ALLOC(half, err);
        if (dtype == LF_DTYPE_BF16) lf_f32_to_bf16_n(half, a->params, a->n_params);
        else lf_f32_to_f16_n(half, a->params, a->n_params);
        base = half;
    }
    size_t esz = dtype == LF_DTYPE_F32 ? 4 : 2;
    for (int64_t i = 0; i < a->L * LF_MOD_COUNT; i++) {
        const lf_lora_slot *s = &a->slots[i];
        if (!s->present) continue;
        char name[256];
        int64_t l = i / LF_MOD_COUNT;
        lf_module m = (lf_module)(i % LF_MOD_COUNT);
        int64_t shA[2] = {s->R, s->IN}, shB[2] = {s->OC, s->R}, shM[1] = {s->OC};
        lf_peft_tensor_name(name, sizeof name, l, m, LF_PEFT_A);
        LF_TRY(lf_st_writer_add(w, name, dtype, 2, shA, (const char *)base + (size_t)s->off_A * esz, err));
        lf_peft_tensor_name(name, sizeof name, l, m, LF_PEFT_B);
        LF_TRY(lf_st_writer_add(w, name, dtype, 2, shB, (const char *)base + (size_t)s->off_B * esz, err));
        if (s->mag) {
            lf_peft_tensor_name(name, sizeof name, l, m, LF_PEFT_MAG);
            LF_TRY(lf_st_writer_add(w, name, dtype, 1, shM, (const char *)base + (size_t)s->off_mag * esz, err));
        }
    }
    LF_TRY(lf_st_writer_set_meta(w, "format", "pt", err));
    LF_TRY(lf_path_join(path, sizeof path, dir, LF_PEFT_WEIGHTS_NAME, err));
    LF_TRY(lf_st_writer_write(w, path, err));
    LF_TRY(lf_path_join(path, sizeof path, dir, LF_PEFT_CONFIG_NAME, err));
    LF_TRY(lf_peft_config_write(&a->cfg, path, err));
    lf_st_writer_free(w);
    free(half);
    return LF_OK;
fail:
    lf_st_writer_free(w);
    free(half);
    return st ? st : LF_ENOMEM;
}
