/* json.h - helpers over jansson: load a file, typed field access with errors that name file and key.
 *
 * Invariant: getters never crash on wrong types; a present key of the wrong type is an LF_EFORMAT error
 * naming `ctx` (usually the file path) and the key. json_t references follow jansson's rules: *_load
 * returns a new reference the caller must json_decref. */
#ifndef LF_CORE_JSON_H
#define LF_CORE_JSON_H

#include <jansson.h>
#include <stdint.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Parse a JSON file; *out is a new reference (caller json_decref). Errors carry line/column. */
lf_status lf_json_load_file(const char *path, json_t **out, lf_err *err);
/* Parse a buffer; label names it in errors. */
lf_status lf_json_load_buffer(const char *buf, size_t len, const char *label, json_t **out, lf_err *err);

/* Required fields: LF_ENOTFOUND when missing, LF_EFORMAT when the type is wrong. */
lf_status lf_json_int(const json_t *obj, const char *key, int64_t *out, const char *ctx, lf_err *err);
lf_status lf_json_num(const json_t *obj, const char *key, double *out, const char *ctx, lf_err *err);
/* *out borrows the string from obj. */
lf_status lf_json_str(const json_t *obj, const char *key, const char **out, const char *ctx, lf_err *err);

/* Optional fields: missing or JSON null -> default; wrong type -> LF_EFORMAT. */
lf_status lf_json_int_opt(const json_t *obj, const char *key, int64_t def, int64_t *out, const char *ctx, lf_err *err);
lf_status lf_json_num_opt(const json_t *obj, const char *key, double def, double *out, const char *ctx, lf_err *err);
lf_status lf_json_bool_opt(const json_t *obj, const char *key, int def, int *out, const char *ctx, lf_err *err);
lf_status lf_json_str_opt(const json_t *obj, const char *key, const char *def, const char **out, const char *ctx,
                          lf_err *err);

/* Serialize with sorted keys and 2-space indent and write atomically. */
lf_status lf_json_write_file(const char *path, const json_t *obj, lf_err *err);

#ifdef __cplusplus
}
#endif
#endif
