/* registry.h - the adapters a server holds: load a PEFT adapter directory under a name (validated against
 * the base model and the limits), look it up for requests with a reference count, unload it once no
 * request uses it, and list them; the path rules that keep `src` inside the allowed roots.
 *
 * Invariants:
 *  - A name is 1..128 chars of [A-Za-z0-9._-], not "." or ".."; it names at most one adapter at a time.
 *  - src is resolved with realpath (symlinks followed) and must be a directory equal to or below one of
 *    the allowed roots (each root also realpath'd at create), so neither ".." nor a symlink escapes; a
 *    local path or "file://" path only ("s3://..." is 400: download it first).
 *  - An adapter is visible to lf_registry_acquire from the end of a successful load until unload begins;
 *    its memory is freed only when its reference count is 0 (unload waits for in-flight requests).
 *  - Loading (file reads, DoRA norms) happens outside the lock: requests keep flowing meanwhile.
 * HTTP status for each failure (the *http_status out-parameter, which may be NULL; 200 on success): 400 bad name / bad src form, 403 src
 * outside the roots (also for a missing path outside them, so probing tells nothing about what exists there;
 * and for every src when no root exists), 404 src missing, not a directory or without adapter_config.json
 * (load) / name not loaded (unload), 409 name already loaded, being loaded or being unloaded (load) / still
 * loading or already being unloaded (unload), 424 adapter the base cannot take (shape or target mismatch,
 * rank > max_rank, unsupported PEFT feature, malformed adapter files), 507 max_loras reached (loading ones
 * count) or out of memory, 503 registry closing (load) / references still held at the timeout (unload).
 *
 * Ownership and threads: the registry borrows the model (it must outlive the registry) and owns every
 * loaded adapter (lf_lora_adapter + lf_model_adapter). Every function but lf_registry_free is thread-safe
 * (one mutex, never held across file reads or DoRA norm computation). Pointers from
 * lf_registry_acquire stay valid until the matching lf_registry_release. */
#ifndef LF_SERVE_REGISTRY_H
#define LF_SERVE_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lf_lora_adapter;
struct lf_model_adapter;

#define LF_REGISTRY_NAME_MAX 128

typedef struct lf_registry_limits {
    int64_t max_loras;    /* adapters loaded (or loading) at once; <= 0: unlimited */
    int64_t max_rank;     /* largest rank of any module (rank_pattern included); <= 0: unlimited */
} lf_registry_limits;

/* One loaded adapter; read-only while referenced. */
typedef struct lf_served_adapter {
    char name[LF_REGISTRY_NAME_MAX + 1];
    char *src;                         /* resolved directory (owned) */
    struct lf_lora_adapter *lora;      /* owned: the weights (PEFT layout) */
    struct lf_model_adapter *fwd;      /* owned: the forward's view (model/model_batch.h) */
    int64_t rank;                      /* max rank */
    double alpha;
    int dora, rslora;
    int64_t n_params;                  /* trainable parameters (floats) */
    char target_modules[128];          /* "q_proj,v_proj" style, for listings */
} lf_served_adapter;

typedef struct lf_registry lf_registry;

/* roots[n_roots]: allowed parent directories for src checks (non-existing roots are skipped with a
 * warning; with none left, every src checked against the roots is 403). lim NULL: no limits. */
lf_status lf_registry_create(const lf_model *m, const char *const *roots, size_t n_roots,
                             const lf_registry_limits *lim, lf_registry **out, lf_err *err);
/* From now on every load answers 503 (a load in flight is discarded with 503 when it finishes); acquire,
 * release and unload keep working. Idempotent; NULL is a no-op. */
void lf_registry_close(lf_registry *r);
/* Closes, waits for loads in flight, then frees every adapter (callers must have released their references
 * and must not start new calls). NULL is a no-op. */
void lf_registry_free(lf_registry *r);

/* 1 when name is a valid adapter name. */
int lf_registry_name_ok(const char *name);
/* Resolve src (strip "file://", realpath) and check it is a directory inside a root. On success *resolved
 * is a malloc'd absolute path. Status as above (400/403/404). */
lf_status lf_registry_check_src(const lf_registry *r, const char *src, char **resolved, int *http_status,
                                lf_err *err);

/* Load src as name. check_roots 0 skips the root rule (operator-given --adapter name=DIR and the model's own
 * adapters/ directory). */
lf_status lf_registry_load(lf_registry *r, const char *name, const char *src, int check_roots, int *http_status,
                           lf_err *err);
/* Preload every subdirectory of dir holding adapter_config.json, named after the subdirectory, in name order
 * and without the root rule (a missing dir is not an error; a broken adapter or bad name stops there with an
 * error naming it, those loaded before stay). *n_loaded counts the adapters this call loaded. */
lf_status lf_registry_preload_dir(lf_registry *r, const char *dir, int *n_loaded, lf_err *err);
/* Stop new acquires of name, wait up to timeout_ms for its references to drop to 0, free it. 400 bad name,
 * 404 when not loaded, 409 while it is loading or another unload of it waits; on timeout LF_EBUSY (http 503)
 * and the adapter stays loaded and visible again. timeout_ms <= 0: no wait (503 at once when referenced). */
lf_status lf_registry_unload(lf_registry *r, const char *name, int timeout_ms, int *http_status, lf_err *err);

/* Reference to a loaded adapter, or NULL when absent or being unloaded. */
const lf_served_adapter *lf_registry_acquire(lf_registry *r, const char *name);
void lf_registry_release(lf_registry *r, const lf_served_adapter *a); /* NULL is a no-op */
/* 1 when name is loaded (and not being unloaded). Signature fits lf_proto_is_loaded_fn (user = registry). */
int lf_registry_is_loaded(void *registry, const char *name);
/* Adapters in memory now: loaded ones, including those being unloaded (not yet freed). */
int64_t lf_registry_count(lf_registry *r);

/* JSON text (malloc'd, compact) listing the loaded adapters (not those loading or being unloaded), sorted by
 * name:
 * {"adapters": [{"name", "src", "rank", "alpha", "dora", "rslora", "target_modules", "in_flight"}...]}.
 * mme != 0: the MME form {"models": [{"modelName", "modelUrl"}...]}. One adapter (name != NULL): that
 * object alone (MME: {"modelName", "modelUrl"}), or NULL when not loaded. */
char *lf_registry_list_json(lf_registry *r, const char *name, int mme);

#ifdef __cplusplus
}
#endif
#endif
