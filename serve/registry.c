/* registry.c - the server's adapter registry: a mutex-guarded list of entries, each LOADING (name reserved,
 * files being read outside the lock), READY (visible to acquire) or UNLOADING (acquire refuses it; unload
 * waits on the condition variable for its reference count to reach 0). See registry.h for the rules.
 *
 * Locking: r->mu guards the list, every entry's state and refs, and the counters. The files, the DoRA norms
 * and the frees of an adapter happen with the lock released. r->cv (CLOCK_MONOTONIC) is broadcast when an
 * unloading entry's refs reach 0 and when a load finishes (lf_registry_free waits for in-flight loads).
 * An entry's public part (lf_served_adapter) is written only while it is LOADING, by its loader, and read
 * by others only once READY (published under the lock), so readers need no lock for it. */
#include "serve/registry.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "adapters/lora.h"
#include "adapters/peft_io.h"
#include "core/fileio.h"
#include "core/log.h"
#include "model/model_batch.h"
#include "model/model_train.h" // defines: lf_lora_view

typedef enum entry_state { ST_LOADING = 0, ST_READY, ST_UNLOADING } entry_state;

typedef struct entry {
    lf_served_adapter pub; /* first member: lf_registry_acquire hands out &pub, release casts back */
    entry_state state;
    int64_t refs;          /* acquires not yet released */
    struct entry *next;
} entry;

struct lf_registry {
    const lf_model *m;        /* borrowed */
    char **roots;             /* owned [n_roots]: realpath'd allowed roots */
    size_t n_roots;
    lf_registry_limits lim;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    entry *head;              /* owned list, any order */
    int64_t n_entries;        /* every state: what max_loras counts (a loading adapter will take memory) */
    int64_t n_loaded;         /* READY + UNLOADING */
    int64_t n_loading;
    int closing;
};

/* ---------------------------------------------------------------------------------------------------- */
/* helpers                                                                                               */

static int set_http(int *hs, int code) {
    if (hs) *hs = code;
    return code;
}

static void entry_free(entry *e) {
    if (!e) return;
    lf_model_adapter_free(e->pub.fwd); /* borrows lora's arrays: free it first */
    lf_lora_free(e->pub.lora);
    free(e->pub.src);
    free(e);
}

/* Caller holds r->mu. */
static entry *find(const lf_registry *r, const char *name) {
    for (entry *e = r->head; e; e = e->next)
        if (!strcmp(e->pub.name, name)) return e;
    return NULL;
}

/* Caller holds r->mu. */
static void unlink_entry(lf_registry *r, entry *e) {
    for (entry **p = &r->head; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            e->next = NULL;
            return;
        }
}

static void deadline_after_ms(struct timespec *ts, int ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* 1 when path (absolute, resolved) equals root or lies below it. */
static int path_under(const char *path, const char *root) {
    if (!strcmp(root, "/")) return path[0] == '/';
    size_t n = strlen(root);
    return !strncmp(path, root, n) && (path[n] == '\0' || path[n] == '/');
}

static int under_any_root(const lf_registry *r, const char *path) {
    for (size_t i = 0; i < r->n_roots; i++)
        if (path_under(path, r->roots[i])) return 1;
    return 0;
}

/* Where a path that does not (fully) exist would be: the longest existing prefix resolved with realpath,
 * the rest applied lexically ("." dropped, ".." pops). Only used to answer 403 rather than 404 for a
 * missing path outside the roots, so that probing does not reveal what exists outside them. Malloc'd or
 * NULL (out of memory, or no working directory). */
static char *resolve_partial(const char *path) {
    size_t cap = strlen(path) + 4096 + 2;
    char *cur = NULL, *buf = malloc(cap), *rest = strdup(path);
    if (!buf || !rest) goto fail;
    if (path[0] == '/') {
        strcpy(buf, "/");
    } else if (!getcwd(buf, 4096)) {
        goto fail;
    }
    cur = realpath(buf, NULL);
    if (!cur) goto fail;
    snprintf(buf, cap, "%s", cur);
    free(cur);
    cur = NULL;
    int missing = 0;
    char *save = NULL;
    for (char *c = strtok_r(rest, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        if (!strcmp(c, ".")) continue;
        if (!missing) {
            size_t l = strlen(buf);
            char *cand = malloc(l + strlen(c) + 2);
            if (!cand) goto fail;
            sprintf(cand, "%s%s%s", buf, (l && buf[l - 1] == '/') ? "" : "/", c);
            char *rp = realpath(cand, NULL);
            free(cand);
            if (rp) {
                snprintf(buf, cap, "%s", rp);
                free(rp);
                continue;
            }
            missing = 1;
        }
        if (!strcmp(c, "..")) {
            char *s = strrchr(buf, '/');
            if (s == buf) buf[1] = '\0';
            else if (s) *s = '\0';
        } else {
            size_t l = strlen(buf);
            if (l + strlen(c) + 2 > cap) goto fail;
            snprintf(buf + l, cap - l, "%s%s", (l && buf[l - 1] == '/') ? "" : "/", c);
        }
    }
    free(rest);
    return buf;
fail:
    free(buf);
    free(rest);
    free(cur);
    return NULL;
}

/* src -> *resolved (malloc'd realpath of a directory); check_roots: also inside a root. */
static lf_status resolve_src(const lf_registry *r, const char *src, int check_roots, char **resolved, int *hs,
                             lf_err *err) {
    *resolved = NULL;
    if (!src || !*src) {
        set_http(hs, 400);
        return lf_err_set(err, LF_EINVAL, "adapter src is empty: give the adapter's local directory");
    }
    if (!strncmp(src, "s3://", 5)) {
        set_http(hs, 400);
        return lf_err_set(err, LF_EINVAL, "adapter src '%s' is an S3 URI: loraforge loads local directories only; "
                          "download it first (e.g. aws s3 cp --recursive %s /opt/ml/adapters/NAME) and pass that "
                          "directory", src, src);
    }
    const char *path = src;
    if (!strncmp(src, "file://", 7)) path = src + 7;
    else if (strstr(src, "://")) {
        set_http(hs, 400);
        return lf_err_set(err, LF_EINVAL, "adapter src '%s': unsupported URI scheme (a local directory or file:// "
                          "path only)", src);
    }
    if (!*path) {
        set_http(hs, 400);
        return lf_err_set(err, LF_EINVAL, "adapter src '%s' names no directory", src);
    }
    if (check_roots && r->n_roots == 0) {
        set_http(hs, 403);
        return lf_err_set(err, LF_EINVAL, "adapter src '%s': no allowed adapter root directory is configured, so no "
                          "src can be loaded at run time", src);
    }
    char *rp = realpath(path, NULL);
    if (!rp) {
        int e = errno;
        if (e == ENOMEM) {
            set_http(hs, 507);
            return lf_err_set(err, LF_ENOMEM, "adapter src '%s': out of memory resolving the path", src);
        }
        if (e == ENAMETOOLONG || e == ELOOP) {
            set_http(hs, 400);
            return lf_err_set(err, LF_EINVAL, "adapter src '%s': %s", src, strerror(e));
        }
        if (check_roots) { /* do not tell what exists outside the roots */
            char *where = resolve_partial(path);
            int inside = where && under_any_root(r, where);
            free(where);
            if (!inside) {
                set_http(hs, 403);
                return lf_err_set(err, LF_EINVAL, "adapter src '%s' is outside the allowed adapter directories", src);
            }
        }
        if (e == EACCES) {
            set_http(hs, 403);
            return lf_err_set(err, LF_EINVAL, "adapter src '%s': permission denied", src);
        }
        set_http(hs, 404);
        return lf_err_set(err, LF_ENOTFOUND, "adapter src '%s' does not exist", src);
    }
    if (check_roots && !under_any_root(r, rp)) {
        free(rp);
        set_http(hs, 403);
        return lf_err_set(err, LF_EINVAL, "adapter src '%s' is outside the allowed adapter directories (symlinks and "
                          "'..' are resolved before the check)", src);
    }
    if (!lf_path_is_dir(rp)) {
        free(rp);
        set_http(hs, 404);
        return lf_err_set(err, LF_ENOTFOUND, "adapter src '%s' is not a directory", src);
    }
    *resolved = rp;
    return LF_OK;
}

/* ---------------------------------------------------------------------------------------------------- */
/* lifetime                                                                                              */

lf_status lf_registry_create(const lf_model *m, const char *const *roots, size_t n_roots,
                             const lf_registry_limits *lim, lf_registry **out, lf_err *err) {
    lf_status st = LF_OK;
    int mu_ok = 0, cv_ok = 0;
    *out = NULL;
    if (!m) return lf_err_set(err, LF_EINVAL, "registry: no model");
    lf_registry *r = calloc(1, sizeof *r);
    LF_CHECK_ALLOC(r, err);
    r->m = m;
    if (lim) r->lim = *lim;
    if (n_roots) {
        r->roots = calloc(n_roots, sizeof *r->roots);
        LF_CHECK_ALLOC(r->roots, err);
    }
    for (size_t i = 0; i < n_roots; i++) {
        if (!roots[i] || !*roots[i]) continue;
        char *rp = realpath(roots[i], NULL);
        if (!rp || !lf_path_is_dir(rp)) {
            LF_LOG(LF_LOG_WARN, "adapter root '%s' %s: skipped", roots[i], rp ? "is not a directory" : "does not exist");
            free(rp);
            continue;
        }
        r->roots[r->n_roots++] = rp;
    }
    if (pthread_mutex_init(&r->mu, NULL)) {
        st = lf_err_set(err, LF_ENOMEM, "registry: pthread_mutex_init failed");
        goto fail;
    }
    mu_ok = 1;
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca)) {
        st = lf_err_set(err, LF_ENOMEM, "registry: pthread_condattr_init failed");
        goto fail;
    }
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc) {
        st = lf_err_set(err, LF_ENOMEM, "registry: pthread_cond_init failed");
        goto fail;
    }
    cv_ok = 1;
    *out = r;
    return LF_OK;
fail:
    if (r) {
        for (size_t i = 0; i < r->n_roots; i++) free(r->roots[i]);
        free(r->roots);
        if (mu_ok) pthread_mutex_destroy(&r->mu);
        if (cv_ok) pthread_cond_destroy(&r->cv);
        free(r);
    }
    return st ? st : LF_ENOMEM;
}

void lf_registry_close(lf_registry *r) {
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    r->closing = 1;
    pthread_mutex_unlock(&r->mu);
}

void lf_registry_free(lf_registry *r) {
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    r->closing = 1;
    while (r->n_loading > 0) pthread_cond_wait(&r->cv, &r->mu); /* loads in flight finish with 503 */
    entry *e = r->head;
    r->head = NULL;
    pthread_mutex_unlock(&r->mu);
    while (e) {
        entry *next = e->next;
        if (e->refs)
            LF_LOG(LF_LOG_WARN, "adapter '%s' freed with %lld references still held", e->pub.name, (long long)e->refs);
        entry_free(e);
        e = next;
    }
    for (size_t i = 0; i < r->n_roots; i++) free(r->roots[i]);
    free(r->roots);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* ---------------------------------------------------------------------------------------------------- */
/* names and paths                                                                                       */

int lf_registry_name_ok(const char *name) {
    if (!name) return 0;
    size_t n = strlen(name);
    if (n < 1 || n > LF_REGISTRY_NAME_MAX || !strcmp(name, ".") || !strcmp(name, "..")) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                 c == '-';
        if (!ok) return 0;
    }
    return 1;
}

static lf_status bad_name(const char *name, int *hs, lf_err *err) {
    set_http(hs, 400);
    if (!name) return lf_err_set(err, LF_EINVAL, "adapter name is missing");
    size_t n = strlen(name);
    if (n > LF_REGISTRY_NAME_MAX)
        return lf_err_set(err, LF_EINVAL, "adapter name of %zu characters is too long (at most %d)", n,
                          LF_REGISTRY_NAME_MAX);
    return lf_err_set(err, LF_EINVAL, "adapter name '%s' is invalid: use 1..%d characters of A-Z a-z 0-9 . _ - "
                      "(not '.' or '..')", name, LF_REGISTRY_NAME_MAX);
}

lf_status lf_registry_check_src(const lf_registry *r, const char *src, char **resolved, int *http_status,
                                lf_err *err) {
    set_http(http_status, 200);
    return resolve_src(r, src, 1, resolved, http_status, err);
}

/* ---------------------------------------------------------------------------------------------------- */
/* load / unload                                                                                         */

/* Build the forward's view of a (slots -> lf_lora_view table) and create the model adapter. */
static lf_status make_forward(const lf_model *m, const lf_lora_adapter *a, lf_model_adapter **out, lf_err *err) {
    lf_status st = LF_OK;
    const int64_t NV = a->L * LF_MOD_COUNT;
    lf_lora_view *v = calloc((size_t)NV, sizeof *v);
    LF_CHECK_ALLOC(v, err);
    for (int64_t i = 0; i < NV; i++) {
        const lf_lora_slot *s = lf_lora_get(a, i / LF_MOD_COUNT, (lf_module)(i % LF_MOD_COUNT));
        if (s) v[i] = (lf_lora_view){s->A, s->B, s->mag, NULL, NULL, NULL, s->R, (float)s->scaling};
    }
    st = lf_model_adapter_create(m, v, out, err);
fail:
    free(v);
    return st;
}

lf_status lf_registry_load(lf_registry *r, const char *name, const char *src, int check_roots, int *http_status,
                           lf_err *err) {
    lf_status st = LF_OK;
    char *resolved = NULL;
    entry *e = NULL;
    int reserved = 0;
    set_http(http_status, 200);
    if (!r) return lf_err_set(err, LF_EINVAL, "registry is NULL");
    if (!lf_registry_name_ok(name)) return bad_name(name, http_status, err);
    LF_TRY(resolve_src(r, src, check_roots, &resolved, http_status, err));
    {
        char cpath[4096];
        if (lf_path_join(cpath, sizeof cpath, resolved, LF_PEFT_CONFIG_NAME, err)) {
            st = LF_EINVAL;
            set_http(http_status, 400);
            goto fail;
        }
        if (!lf_path_exists(cpath)) {
            set_http(http_status, 404);
            st = lf_err_set(err, LF_ENOTFOUND, "adapter src '%s' holds no %s (not a PEFT adapter directory)", src,
                            LF_PEFT_CONFIG_NAME);
            goto fail;
        }
    }
    e = calloc(1, sizeof *e);
    if (!e) {
        set_http(http_status, 507);
        st = lf_err_set(err, LF_ENOMEM, "out of memory loading adapter '%s'", name);
        goto fail;
    }
    snprintf(e->pub.name, sizeof e->pub.name, "%s", name);
    e->state = ST_LOADING;

    /* reserve the name */
    pthread_mutex_lock(&r->mu);
    const entry *old = r->closing ? NULL : find(r, name);
    if (r->closing) {
        set_http(http_status, 503);
        st = lf_err_set(err, LF_EBUSY, "cannot load adapter '%s': the server is shutting down", name);
    } else if (old) {
        set_http(http_status, 409);
        st = lf_err_set(err, LF_EBUSY, "adapter '%s' %s", name,
                        old->state == ST_LOADING ? "is being loaded by another request"
                        : old->state == ST_UNLOADING ? "is being unloaded; load it again once that finished"
                                                     : "is already loaded (unload it first to replace it)");
    } else if (r->lim.max_loras > 0 && r->n_entries >= r->lim.max_loras) {
        set_http(http_status, 507);
        st = lf_err_set(err, LF_EBUSY, "cannot load adapter '%s': %lld adapters are loaded or loading and max_loras "
                        "is %lld; unload one first", name, (long long)r->n_entries, (long long)r->lim.max_loras);
    } else {
        e->next = r->head;
        r->head = e;
        r->n_entries++;
        r->n_loading++;
        reserved = 1;
    }
    pthread_mutex_unlock(&r->mu);
    if (!reserved) goto fail;

    /* read and validate, unlocked */
    {
        lf_status ls = lf_peft_load(resolved, lf_model_get_config(r->m), &e->pub.lora, err);
        if (ls) {
            set_http(http_status, ls == LF_ENOMEM ? 507 : 424);
            st = lf_err_wrap(err, ls, "adapter '%s'", name);
            goto fail;
        }
    }
    lf_lora_adapter *a = e->pub.lora;
    int64_t rank = 0;
    for (int64_t i = 0; i < a->L * LF_MOD_COUNT; i++)
        if (a->slots[i].present && a->slots[i].R > rank) rank = a->slots[i].R;
    if (r->lim.max_rank > 0 && rank > r->lim.max_rank) {
        set_http(http_status, 424);
        st = lf_err_set(err, LF_EUNSUPPORTED, "adapter '%s' has rank %lld, greater than max_lora_rank %lld", name,
                        (long long)rank, (long long)r->lim.max_rank);
        goto fail;
    }
    {
        lf_status fs = make_forward(r->m, a, &e->pub.fwd, err);
        if (fs) {
            set_http(http_status, fs == LF_ENOMEM ? 507 : 424);
            st = lf_err_wrap(err, fs, "adapter '%s' (%s)", name, resolved);
            goto fail;
        }
    }
    e->pub.src = resolved;
    resolved = NULL;
    e->pub.rank = rank;
    e->pub.alpha = a->cfg.alpha;
    e->pub.dora = a->cfg.use_dora;
    e->pub.rslora = a->cfg.use_rslora;
    e->pub.n_params = a->n_params;
    {
        size_t off = 0;
        e->pub.target_modules[0] = '\0';
        for (int mm = 0; mm < LF_MOD_COUNT; mm++) {
            if (!(a->cfg.target_mask & (1u << mm))) continue;
            int n = snprintf(e->pub.target_modules + off, sizeof e->pub.target_modules - off, "%s%s", off ? "," : "",
                             lf_module_name((lf_module)mm));
            if (n > 0) off += (size_t)n;
            if (off >= sizeof e->pub.target_modules) break;
        }
    }

    /* publish */
    pthread_mutex_lock(&r->mu);
    if (r->closing) {
        set_http(http_status, 503);
        st = lf_err_set(err, LF_EBUSY, "cannot load adapter '%s': the server is shutting down", name);
        pthread_mutex_unlock(&r->mu);
        goto fail;
    }
    e->state = ST_READY;
    r->n_loading--;
    r->n_loaded++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    LF_LOG(LF_LOG_INFO, "adapter '%s' loaded from %s: rank %lld, alpha %g%s%s, %s, %lld parameters", name,
           e->pub.src, (long long)rank, e->pub.alpha, e->pub.dora ? ", DoRA" : "", e->pub.rslora ? ", rsLoRA" : "",
           e->pub.target_modules, (long long)e->pub.n_params);
    return LF_OK;

fail:
    if (reserved) {
        pthread_mutex_lock(&r->mu);
        unlink_entry(r, e);
        r->n_entries--;
        r->n_loading--;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu); /* last touch of r: lf_registry_free may proceed now */
    }
    entry_free(e);
    free(resolved);
    return st;
}

lf_status lf_registry_preload_dir(lf_registry *r, const char *dir, int *n_loaded, lf_err *err) {
    lf_status st = LF_OK;
    char **names = NULL;
    size_t n = 0, cap = 0;
    int loaded = 0;
    if (n_loaded) *n_loaded = 0;
    if (!r || !dir) return lf_err_set(err, LF_EINVAL, "preload: registry or directory is NULL");
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return LF_OK;
        return lf_err_set(err, errno == ENOTDIR ? LF_EINVAL : LF_EIO, "adapter directory %s: %s", dir,
                          strerror(errno));
    }
    for (struct dirent *de; (de = readdir(d));) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            char **p = realloc(names, nc * sizeof *p);
            LF_CHECK_ALLOC(p, err);
            names = p;
            cap = nc;
        }
        names[n] = strdup(de->d_name);
        LF_CHECK_ALLOC(names[n], err);
        n++;
    }
    /* sorted: deterministic order (and max_loras cut-off) */
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            char *t = names[j];
            names[j] = names[j - 1];
            names[j - 1] = t;
        }
    for (size_t i = 0; i < n; i++) {
        char sub[4096], cfg[4096];
        LF_TRY(lf_path_join(sub, sizeof sub, dir, names[i], err));
        LF_TRY(lf_path_join(cfg, sizeof cfg, sub, LF_PEFT_CONFIG_NAME, err));
        if (!lf_path_is_dir(sub) || !lf_path_exists(cfg)) continue;
        int hs = 0;
        lf_status ls = lf_registry_load(r, names[i], sub, 0, &hs, err);
        if (ls) {
            st = lf_err_wrap(err, ls, "preloading %s", sub);
            goto fail;
        }
        loaded++;
    }
fail:
    closedir(d);
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    if (n_loaded) *n_loaded = loaded;
    return st;
}

lf_status lf_registry_unload(lf_registry *r, const char *name, int timeout_ms, int *http_status, lf_err *err) {
    lf_status st = LF_OK;
    set_http(http_status, 200);
    if (!r) return lf_err_set(err, LF_EINVAL, "registry is NULL");
    if (!lf_registry_name_ok(name)) return bad_name(name, http_status, err);
    pthread_mutex_lock(&r->mu);
    entry *e = find(r, name);
    if (!e) {
        set_http(http_status, 404);
        st = lf_err_set(err, LF_ENOTFOUND, "adapter '%s' is not loaded", name);
        goto out;
    }
    if (e->state != ST_READY) {
        set_http(http_status, 409);
        st = lf_err_set(err, LF_EBUSY, "adapter '%s' is %s", name,
                        e->state == ST_LOADING ? "still loading; unload it once loaded" : "already being unloaded");
        goto out;
    }
    e->state = ST_UNLOADING;
    struct timespec dl;
    deadline_after_ms(&dl, timeout_ms > 0 ? timeout_ms : 0);
    while (e->refs > 0 && timeout_ms > 0) {
        int rc = pthread_cond_timedwait(&r->cv, &r->mu, &dl);
        if (rc == ETIMEDOUT) break;
    }
    if (e->refs > 0) {
        e->state = ST_READY;
        set_http(http_status, 503);
        st = lf_err_set(err, LF_EBUSY, "adapter '%s' is still used by %lld in-flight request%s after %d ms; it stays "
                        "loaded, retry later", name, (long long)e->refs, e->refs == 1 ? "" : "s",
                        timeout_ms > 0 ? timeout_ms : 0);
        goto out;
    }
    unlink_entry(r, e);
    r->n_entries--;
    r->n_loaded--;
    pthread_mutex_unlock(&r->mu);
    LF_LOG(LF_LOG_INFO, "adapter '%s' unloaded", name);
    entry_free(e);
    return LF_OK;
out:
    pthread_mutex_unlock(&r->mu);
    return st;
}

/* ---------------------------------------------------------------------------------------------------- */
/* references and queries                                                                                */

const lf_served_adapter *lf_registry_acquire(lf_registry *r, const char *name) {
    if (!r || !name) return NULL;
    pthread_mutex_lock(&r->mu);
    entry *e = find(r, name);
    if (e && e->state == ST_READY) e->refs++;
    else e = NULL;
    pthread_mutex_unlock(&r->mu);
    return e ? &e->pub : NULL;
}

void lf_registry_release(lf_registry *r, const lf_served_adapter *a) {
    if (!r || !a) return;
    entry *e = (entry *)a; /* pub is the first member */
    pthread_mutex_lock(&r->mu);
    LF_ASSERT(e->refs > 0);
    if (--e->refs == 0 && e->state == ST_UNLOADING) pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

int lf_registry_is_loaded(void *registry, const char *name) {
    lf_registry *r = registry;
    if (!r || !name) return 0;
    pthread_mutex_lock(&r->mu);
    const entry *e = find(r, name);
    int ok = e && e->state == ST_READY;
    pthread_mutex_unlock(&r->mu);
    return ok;
}

int64_t lf_registry_count(lf_registry *r) {
    if (!r) return 0;
    pthread_mutex_lock(&r->mu);
    int64_t n = r->n_loaded;
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* JSON string of s; bytes that are not UTF-8 become '?' (a path may hold any bytes). */
static json_t *jstr(const char *s) {
    json_t *j = json_string(s);
    if (j) return j;
    char *t = strdup(s);
    if (!t) return NULL;
    for (char *q = t; *q; q++)
        if ((unsigned char)*q >= 0x80) *q = '?';
    j = json_string(t);
    free(t);
    return j;
}

static json_t *entry_json(const entry *e, int mme) {
    const lf_served_adapter *a = &e->pub;
    if (mme) return json_pack("{s:o, s:o}", "modelName", jstr(a->name), "modelUrl", jstr(a->src));
    return json_pack("{s:o, s:o, s:I, s:f, s:b, s:b, s:s, s:I}", "name", jstr(a->name), "src", jstr(a->src), "rank",
                     (json_int_t)a->rank, "alpha", a->alpha, "dora", a->dora, "rslora", a->rslora, "target_modules",
                     a->target_modules, "in_flight", (json_int_t)e->refs);
}

static int cmp_entry(const void *x, const void *y) {
    return strcmp((*(const entry *const *)x)->pub.name, (*(const entry *const *)y)->pub.name);
}

char *lf_registry_list_json(lf_registry *r, const char *name, int mme) {
    if (!r) return NULL;
    json_t *root = NULL;
    const entry **v = NULL;
    pthread_mutex_lock(&r->mu);
    if (name) {
        const entry *e = find(r, name);
        if (e && e->state == ST_READY) root = entry_json(e, mme);
    } else {
        size_t n = 0;
        for (const entry *e = r->head; e; e = e->next) n += e->state == ST_READY;
        v = malloc((n ? n : 1) * sizeof *v);
        json_t *arr = json_array();
        if (v && arr) {
            n = 0;
            for (const entry *e = r->head; e; e = e->next)
                if (e->state == ST_READY) v[n++] = e;
            qsort(v, n, sizeof *v, cmp_entry);
            int ok = 1;
            for (size_t i = 0; i < n && ok; i++) ok = !json_array_append_new(arr, entry_json(v[i], mme));
            if (ok) root = json_pack("{s:o}", mme ? "models" : "adapters", arr);
            else json_decref(arr);
        } else {
            json_decref(arr);
        }
    }
    pthread_mutex_unlock(&r->mu);
    free(v);
    if (!root) return NULL;
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return s;
}
