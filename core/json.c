/* json.c - jansson helpers: file loading, typed getters with file/key context, atomic JSON writes. */
#include "core/json.h"

#include <string.h>

#include "core/fileio.h"

lf_status lf_json_load_file(const char *path, json_t **out, lf_err *err) {
    char *buf = NULL;
    size_t len = 0;
    lf_status st = lf_file_read_all(path, &buf, &len, err);
    if (st) return st;
    st = lf_json_load_buffer(buf, len, path, out, err);
    free(buf);
    return st;
}

lf_status lf_json_load_buffer(const char *buf, size_t len, const char *label, json_t **out, lf_err *err) {
    json_error_t je;
    *out = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    if (!*out) return lf_err_set(err, LF_EFORMAT, "%s: invalid JSON at line %d column %d: %s", label, je.line, je.column, je.text);
    return LF_OK;
}

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "number";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

static lf_status lookup(const json_t *obj, const char *key, const json_t **v, const char *ctx, lf_err *err) {
    if (!json_is_object(obj)) return lf_err_set(err, LF_EFORMAT, "%s: expected a JSON object", ctx);
    *v = json_object_get(obj, key);
    if (!*v) return lf_err_set(err, LF_ENOTFOUND, "%s: missing required key \"%s\"", ctx, key);
    return LF_OK;
}

static lf_status as_int(const json_t *v, const char *key, int64_t *out, const char *ctx, lf_err *err) {
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return LF_OK;
    }
    if (json_is_real(v)) { /* accept 4.0 but not 4.5, nor 1e28 (no int64: converting it is undefined) */
        double d = json_real_value(v);
        if (d >= -0x1p63 && d < 0x1p63 && d == (double)(int64_t)d) {
            *out = (int64_t)d;
            return LF_OK;
        }
    }
    return lf_err_set(err, LF_EFORMAT, "%s: key \"%s\" must be an integer, got %s", ctx, key, type_name(v));
}

static lf_status as_num(const json_t *v, const char *key, double *out, const char *ctx, lf_err *err) {
    if (json_is_number(v)) {
        *out = json_number_value(v);
        return LF_OK;
    }
    return lf_err_set(err, LF_EFORMAT, "%s: key \"%s\" must be a number, got %s", ctx, key, type_name(v));
}

static lf_status as_str(const json_t *v, const char *key, const char **out, const char *ctx, lf_err *err) {
    if (json_is_string(v)) {
        *out = json_string_value(v);
        return LF_OK;
    }
    return lf_err_set(err, LF_EFORMAT, "%s: key \"%s\" must be a string, got %s", ctx, key, type_name(v));
}

lf_status lf_json_int(const json_t *obj, const char *key, int64_t *out, const char *ctx, lf_err *err) {
    const json_t *v;
    lf_status st = lookup(obj, key, &v, ctx, err);
    return st ? st : as_int(v, key, out, ctx, err);
}

lf_status lf_json_num(const json_t *obj, const char *key, double *out, const char *ctx, lf_err *err) {
    const json_t *v;
    lf_status st = lookup(obj, key, &v, ctx, err);
    return st ? st : as_num(v, key, out, ctx, err);
}

lf_status lf_json_str(const json_t *obj, const char *key, const char **out, const char *ctx, lf_err *err) {
    const json_t *v;
    lf_status st = lookup(obj, key, &v, ctx, err);
    return st ? st : as_str(v, key, out, ctx, err);
}

lf_status lf_json_int_opt(const json_t *obj, const char *key, int64_t def, int64_t *out, const char *ctx, lf_err *err) {
    const json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (!v || json_is_null(v)) {
        *out = def;
        return LF_OK;
    }
    return as_int(v, key, out, ctx, err);
}

lf_status lf_json_num_opt(const json_t *obj, const char *key, double def, double *out, const char *ctx, lf_err *err) {
    const json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (!v || json_is_null(v)) {
        *out = def;
        return LF_OK;
    }
    return as_num(v, key, out, ctx, err);
}

lf_status lf_json_bool_opt(const json_t *obj, const char *key, int def, int *out, const char *ctx, lf_err *err) {
    const json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (!v || json_is_null(v)) {
        *out = def;
        return LF_OK;
    }
    if (!json_is_boolean(v))
        return lf_err_set(err, LF_EFORMAT, "%s: key \"%s\" must be true or false, got %s", ctx, key, type_name(v));
    *out = json_is_true(v);
    return LF_OK;
}

lf_status lf_json_str_opt(const json_t *obj, const char *key, const char *def, const char **out, const char *ctx,
                          lf_err *err) {
    const json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (!v || json_is_null(v)) {
        *out = def;
        return LF_OK;
    }
    return as_str(v, key, out, ctx, err);
}

lf_status lf_json_write_file(const char *path, const json_t *obj, lf_err *err) {
    char *s = json_dumps(obj, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
    if (!s) return lf_err_set(err, LF_ENOMEM, "%s: cannot serialize JSON", path);
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (!t) {
        free(s);
        return lf_err_set(err, LF_ENOMEM, "%s: out of memory", path);
    }
    t[n] = '\n';
    t[n + 1] = '\0';
    lf_status st = lf_file_write_atomic(path, t, n + 1, err);
    free(t);
    return st;
}
