/* test_registry.c - serve/registry against a real tiny model written here (config.json + model.safetensors
 * with seeded random weights) and PEFT adapter directories written with lf_lora_create + lf_peft_save:
 * names, src path rules (.., symlinks, file://, s3://), load/list/unload with every HTTP status, limits
 * (max_loras, max_rank), concurrent loads of one name, unload waiting for / timing out on a held reference,
 * preload_dir, close, and an acquire/release storm racing load/unload cycles (for ASan/TSan builds).
 * Seed from LF_TEST_SEED or time, printed. Runs in a fresh mkdtemp directory, removed at the end. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
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
#include "core/rng.h"
#include "core/safetensors.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "model/model_batch.h"
#include "serve/registry.h"

static int passed, failed;
#define CHECK(cond, ...)                                \
    do {                                                \
        if (cond) {                                     \
            passed++;                                   \
        } else {                                        \
            failed++;                                   \
            printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            printf(__VA_ARGS__);                        \
            printf("\n");                               \
        }                                               \
    } while (0)

static char TMP[256];
static uint64_t SEED;
static lf_rng RNG;

static void pathf(char *out, size_t cap, const char *rel) { snprintf(out, cap, "%s/%s", TMP, rel); }

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void rm_rf(const char *path) {
    struct stat st;
    if (lstat(path, &st)) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            for (struct dirent *de; (de = readdir(d));) {
                if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
                char sub[4096];
                snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
                rm_rf(sub);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void write_text(const char *path, const char *text) {
    lf_err err;
    if (lf_file_write_atomic(path, text, strlen(text), &err)) {
        printf("setup: %s\n", err.msg);
        exit(1);
    }
}

/* ---- fixtures: a tiny Llama and adapters for it ---- */

enum { C_ = 32, L_ = 2, H_ = 4, KH_ = 2, D_ = 8, FF_ = 64, V_ = 64 };

static void add_rand(lf_st_writer *w, float **keep, int *nk, const char *name, int64_t r, int64_t c, int norm) {
    int64_t n = c ? r * c : r;
    float *x = malloc((size_t)n * sizeof *x);
    if (!x) exit(1);
    for (int64_t i = 0; i < n; i++) x[i] = norm ? 1.0f + 0.1f * lf_rng_normal(&RNG) : 0.02f * lf_rng_normal(&RNG);
    int64_t shape[2] = {r, c};
    lf_err err;
    if (lf_st_writer_add(w, name, LF_DTYPE_F32, c ? 2 : 1, shape, x, &err)) {
        printf("setup: %s\n", err.msg);
        exit(1);
    }
    keep[(*nk)++] = x;
}

static void make_model(const char *dir) {
    lf_err err;
    if (lf_mkdirs(dir, &err)) exit(1);
    char p[4096], cfg[2048];
    snprintf(cfg, sizeof cfg,
             "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": %d, "
             "\"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d, "
             "\"num_key_value_heads\": %d, \"vocab_size\": %d, \"max_position_embeddings\": 256, "
             "\"rms_norm_eps\": 1e-06, \"rope_theta\": 10000.0, \"tie_word_embeddings\": false, "
             "\"torch_dtype\": \"float32\", \"bos_token_id\": 1, \"eos_token_id\": 2, \"hidden_act\": \"silu\"}",
             C_, FF_, L_, H_, KH_, V_);
    snprintf(p, sizeof p, "%.3000s/config.json", dir);
    write_text(p, cfg);
    lf_st_writer *w = lf_st_writer_create();
    float *keep[64];
    int nk = 0;
    add_rand(w, keep, &nk, "model.embed_tokens.weight", V_, C_, 0);
    for (int l = 0; l < L_; l++) {
        char n[128];
#define T(s, r, c, norm) (snprintf(n, sizeof n, "model.layers.%d.%s", l, s), add_rand(w, keep, &nk, n, r, c, norm))
        T("input_layernorm.weight", C_, 0, 1);
        T("self_attn.q_proj.weight", H_ * D_, C_, 0);
        T("self_attn.k_proj.weight", KH_ * D_, C_, 0);
        T("self_attn.v_proj.weight", KH_ * D_, C_, 0);
        T("self_attn.o_proj.weight", C_, H_ * D_, 0);
        T("post_attention_layernorm.weight", C_, 0, 1);
        T("mlp.gate_proj.weight", FF_, C_, 0);
        T("mlp.up_proj.weight", FF_, C_, 0);
        T("mlp.down_proj.weight", C_, FF_, 0);
#undef T
    }
    add_rand(w, keep, &nk, "model.norm.weight", C_, 0, 1);
    add_rand(w, keep, &nk, "lm_head.weight", V_, C_, 0);
    snprintf(p, sizeof p, "%.3000s/model.safetensors", dir);
    if (lf_st_writer_write(w, p, &err)) {
        printf("setup: %s\n", err.msg);
        exit(1);
    }
    lf_st_writer_free(w);
    for (int i = 0; i < nk; i++) free(keep[i]);
}

/* A PEFT adapter of rank r for model config mc (possibly not the served one), targets q_proj,v_proj (+DoRA). */
static void make_adapter(const char *dir, const lf_model_config *mc, int64_t r, int dora, int rslora) {
    lf_lora_config cfg = lf_lora_config_default();
    cfg.r = r;
    cfg.alpha = 2.0 * (double)r;
    cfg.use_dora = dora;
    cfg.use_rslora = rslora;
    cfg.init = LF_LORA_INIT_RANDOM; /* B != 0: a real delta */
    lf_lora_adapter *a = NULL;
    lf_err err;
    if (lf_lora_create(&cfg, mc, &a, &err)) {
        printf("setup: %s\n", err.msg);
        exit(1);
    }
    lf_lora_init_peft(a, lf_rng_next(&RNG));
    for (int64_t i = 0; i < a->L * LF_MOD_COUNT; i++)
        if (a->slots[i].mag)
            for (int64_t o = 0; o < a->slots[i].OC; o++) a->slots[i].mag[o] = 1.0f + 0.1f * lf_rng_uniform(&RNG);
    if (lf_peft_save(a, dir, LF_DTYPE_F32, &err)) {
        printf("setup: %s\n", err.msg);
        exit(1);
    }
    lf_lora_free(a);
}

/* ---- helpers ---- */

static lf_model *MODEL;
static const lf_model_config *MC;

static int load(lf_registry *r, const char *name, const char *rel_or_abs, int check_roots, lf_err *err) {
    char p[4096];
    if (!rel_or_abs) return -1;
    if (rel_or_abs[0] == '/' || strstr(rel_or_abs, "://") || !rel_or_abs[0]) snprintf(p, sizeof p, "%s", rel_or_abs);
    else pathf(p, sizeof p, rel_or_abs);
    int hs = -1;
    lf_err_clear(err);
    lf_status st = lf_registry_load(r, name, p, check_roots, &hs, err);
    if (getenv("LF_TEST_VERBOSE")) printf("  load '%.40s' %s -> %d %s\n", name ? name : "(null)", p, hs, err->msg);
    if ((st == LF_OK) != (hs == 200)) return -2; /* status and http code must agree */
    if (st != LF_OK && !err->msg[0]) return -3;  /* every failure says why */
    return hs;
}

static const char *jsv(const json_t *v) { return json_is_string(v) ? json_string_value(v) : ""; }

static json_t *list(lf_registry *r, const char *name, int mme) {
    char *s = lf_registry_list_json(r, name, mme);
    if (!s) return NULL;
    json_error_t je;
    json_t *j = json_loads(s, 0, &je);
    free(s);
    return j;
}

/* ---- tests ---- */

static void test_names(void) {
    char n128[LF_REGISTRY_NAME_MAX + 1], n129[LF_REGISTRY_NAME_MAX + 2];
    memset(n128, 'a', sizeof n128 - 1);
    n128[sizeof n128 - 1] = '\0';
    memset(n129, 'b', sizeof n129 - 1);
    n129[sizeof n129 - 1] = '\0';
    const char *good[] = {"a", "A-b_c.1", "..x", "x..", ".hidden", n128};
    const char *bad[] = {"", ".", "..", "../x", "a/b", "a b", "a\\b", "caf\xc3\xa9", "x\n", n129};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) CHECK(lf_registry_name_ok(good[i]), "good name '%s'", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) CHECK(!lf_registry_name_ok(bad[i]), "bad name '%s'", bad[i]);
    CHECK(!lf_registry_name_ok(NULL), "NULL name");
}

static void test_basic(lf_registry *r) {
    lf_err err;
    char p[4096];
    CHECK(lf_registry_count(r) == 0, "empty");
    CHECK(load(r, "a1", "root/a1", 1, &err) == 200, "load a1: %s", err.msg);
    CHECK(load(r, "b2", "root/b2", 1, &err) == 200, "load b2: %s", err.msg);
    CHECK(lf_registry_count(r) == 2, "count 2: %lld", (long long)lf_registry_count(r));
    CHECK(lf_registry_is_loaded(r, "a1") && !lf_registry_is_loaded(r, "zz"), "is_loaded");
    const lf_served_adapter *a = lf_registry_acquire(r, "a1");
    CHECK(a != NULL, "acquire a1");
    if (a) {
        pathf(p, sizeof p, "root/a1");
        char *rp = realpath(p, NULL);
        CHECK(rp && !strcmp(a->src, rp), "src resolved: %s", a->src);
        free(rp);
        CHECK(!strcmp(a->name, "a1") && a->rank == 4 && a->alpha == 8.0 && !a->dora && !a->rslora, "fields rank %lld alpha %g",
              (long long)a->rank, a->alpha);
        CHECK(!strcmp(a->target_modules, "q_proj,v_proj"), "target_modules '%s'", a->target_modules);
        /* q: A [4, 32] + B [32, 4]; v: A [4, 32] + B [16, 4]; 2 layers */
        int64_t want = L_ * (4 * C_ + H_ * D_ * 4 + 4 * C_ + KH_ * D_ * 4);
        CHECK(a->n_params == want && a->lora && a->lora->n_params == want, "n_params %lld want %lld",
              (long long)a->n_params, (long long)want);
        CHECK(a->fwd && lf_model_adapter_max_rank(a->fwd) == 4 && !lf_model_adapter_is_dora(a->fwd), "forward view");
    }
    const lf_served_adapter *a2 = lf_registry_acquire(r, "a1");
    CHECK(a2 == a, "second acquire same pointer");
    CHECK(lf_registry_acquire(r, "nope") == NULL && lf_registry_acquire(r, NULL) == NULL, "acquire missing");
    json_t *j = list(r, NULL, 0);
    json_t *arr = json_object_get(j, "adapters");
    CHECK(json_array_size(arr) == 2, "list 2");
    json_t *e0 = json_array_get(arr, 0), *e1 = json_array_get(arr, 1);
    CHECK(!strcmp(jsv(json_object_get(e0, "name")), "a1") &&
          !strcmp(jsv(json_object_get(e1, "name")), "b2"), "sorted by name");
    CHECK(json_integer_value(json_object_get(e0, "in_flight")) == 2 && json_integer_value(json_object_get(e1, "in_flight")) == 0,
          "in_flight counts");
    CHECK(json_integer_value(json_object_get(e0, "rank")) == 4 && json_real_value(json_object_get(e0, "alpha")) == 8.0 &&
          json_is_false(json_object_get(e0, "dora")) && json_is_false(json_object_get(e0, "rslora")) &&
          !strcmp(jsv(json_object_get(e0, "target_modules")), "q_proj,v_proj") &&
          json_is_string(json_object_get(e0, "src")), "entry keys");
    CHECK(json_integer_value(json_object_get(e1, "rank")) == 2 && json_is_true(json_object_get(e1, "rslora")), "b2 rank 2 rslora");
    json_decref(j);
    j = list(r, NULL, 1);
    arr = json_object_get(j, "models");
    CHECK(json_array_size(arr) == 2 && !strcmp(jsv(json_object_get(json_array_get(arr, 1), "modelName")), "b2") &&
          json_is_string(json_object_get(json_array_get(arr, 0), "modelUrl")) && json_object_size(json_array_get(arr, 0)) == 2,
          "MME list form");
    json_decref(j);
    j = list(r, "b2", 1);
    CHECK(j && json_object_size(j) == 2 && !strcmp(jsv(json_object_get(j, "modelName")), "b2"), "MME one");
    json_decref(j);
    j = list(r, "a1", 0);
    CHECK(j && !strcmp(jsv(json_object_get(j, "name")), "a1"), "one adapter");
    json_decref(j);
    CHECK(lf_registry_list_json(r, "nope", 0) == NULL && lf_registry_list_json(r, "nope", 1) == NULL, "one missing: NULL");
    lf_registry_release(r, a);
    lf_registry_release(r, a2);
    lf_registry_release(r, NULL);

    /* 409 duplicate (also from another src), a DoRA adapter, file:// */
    CHECK(load(r, "a1", "root/a1", 1, &err) == 409, "duplicate 409: %s", err.msg);
    CHECK(load(r, "a1", "root/b2", 1, &err) == 409, "duplicate name, other src 409");
    pathf(p, sizeof p, "root/dora");
    char url[4200];
    snprintf(url, sizeof url, "file://%s", p);
    CHECK(load(r, "d", url, 1, &err) == 200, "file:// DoRA: %s", err.msg);
    a = lf_registry_acquire(r, "d");
    CHECK(a && a->dora && a->fwd && lf_model_adapter_is_dora(a->fwd), "DoRA flags");
    lf_registry_release(r, a);

    /* unload */
    int hs = 0;
    CHECK(lf_registry_unload(r, "b2", 1000, &hs, &err) == LF_OK && hs == 200, "unload b2");
    CHECK(!lf_registry_is_loaded(r, "b2") && lf_registry_acquire(r, "b2") == NULL, "b2 gone");
    CHECK(lf_registry_unload(r, "b2", 1000, &hs, &err) == LF_ENOTFOUND && hs == 404, "unload again 404");
    CHECK(lf_registry_unload(r, "../x", 1000, &hs, &err) != LF_OK && hs == 400, "unload bad name 400");
    CHECK(load(r, "b2", "root/b2", 1, &err) == 200, "reload b2 after unload");
    CHECK(lf_registry_unload(r, "b2", 0, &hs, &err) == LF_OK && hs == 200, "unload unreferenced with timeout 0");
    CHECK(lf_registry_unload(r, "d", 0, &hs, &err) == LF_OK, "unload d");
    CHECK(lf_registry_count(r) == 1, "count 1");
}

static void test_paths(lf_registry *r) {
    lf_err err;
    char p[4096];
    struct {
        const char *src;
        int want;
        const char *why;
    } cases[] = {
        {"root/missing", 404, "missing inside root"},
        {"root/afile", 404, "a file, not a directory"},
        {"root/empty", 404, "directory without adapter_config.json"},
        {"root/../outside", 403, "'..' escape to an existing adapter"},
        {"root/../../nonexistent-xyz", 403, "'..' escape to a missing path: 403, not 404"},
        {"root/a1/../../outside", 403, "'..' through an adapter dir"},
        {"root/evil", 403, "symlink inside the root pointing outside"},
        {"root/evil/sub/..", 403, "path through an escaping symlink"},
        {"/etc", 403, "absolute path outside"},
        {"/nonexistent-dir-xyz/abc", 403, "absolute missing path outside"},
        {"root/a1/../a1", 200, "'..' that stays inside"},
        {"root/good_link", 200, "symlink staying inside the root"},
        {"root2/c3", 200, "second root"},
        {"s3://bucket/adapters/x", 400, "s3 URI"},
        {"http://example.com/x", 400, "other URI scheme"},
        {"file://", 400, "empty file:// path"},
        {"", 400, "empty src"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int hs = load(r, "p", cases[i].src, 1, &err);
        CHECK(hs == cases[i].want, "src '%s' (%s): %d want %d: %s", cases[i].src, cases[i].why, hs, cases[i].want, err.msg);
        if (hs == 200) lf_registry_unload(r, "p", 0, NULL, &err);
    }
    int hs = load(r, "p", "s3://bucket/x", 1, &err);
    CHECK(hs == 400 && strstr(err.msg, "S3") && strstr(err.msg, "download"), "s3 message: %s", err.msg);
    /* check_src alone */
    char *res = NULL;
    pathf(p, sizeof p, "root/a1/.");
    CHECK(lf_registry_check_src(r, p, &res, &hs, &err) == LF_OK && hs == 200 && res && !strstr(res, "/."), "check_src ok: %s",
          res ? res : "-");
    free(res);
    res = NULL;
    pathf(p, sizeof p, "root/evil");
    CHECK(lf_registry_check_src(r, p, &res, &hs, &err) != LF_OK && hs == 403 && !res, "check_src 403");
    /* check_roots 0: the operator's own paths may be anywhere */
    CHECK(load(r, "o", "outside", 0, &err) == 200, "outside with check_roots 0: %s", err.msg);
    CHECK(load(r, "o2", "root/missing", 0, &err) == 404, "missing with check_roots 0");
    lf_registry_unload(r, "o", 0, NULL, &err);
    /* bad names: 400 before anything else */
    char n129[LF_REGISTRY_NAME_MAX + 2];
    memset(n129, 'n', sizeof n129 - 1);
    n129[sizeof n129 - 1] = '\0';
    const char *bad[] = {"../x", "", n129, "a/b", "."};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(load(r, bad[i], "root/a1", 1, &err) == 400, "bad name '%.20s' -> 400: %s", bad[i], err.msg);
    hs = 0;
    CHECK(lf_registry_load(r, NULL, "x", 1, &hs, &err) != LF_OK && hs == 400, "NULL name 400");
    CHECK(lf_registry_count(r) == 1, "count unchanged: %lld", (long long)lf_registry_count(r));
}

static void test_incompatible(lf_registry *r) {
    lf_err err;
    int hs = load(r, "w", "root/wide", 1, &err);
    CHECK(hs == 424 && strstr(err.msg, "'w'"), "wrong hidden size -> 424: %d %s", hs, err.msg);
    hs = load(r, "big", "root/rank16", 1, &err);
    CHECK(hs == 424 && strstr(err.msg, "adapter 'big' has rank 16, greater than max_lora_rank 8"), "rank > max: %d %s", hs,
          err.msg);
    hs = load(r, "junk", "root/junk", 1, &err);
    CHECK(hs == 424, "malformed weights -> 424: %d %s", hs, err.msg);
    hs = load(r, "unsup", "root/unsup", 1, &err);
    CHECK(hs == 424 && strstr(err.msg, "bias"), "unsupported PEFT feature -> 424: %d %s", hs, err.msg);
    CHECK(!lf_registry_is_loaded(r, "w") && !lf_registry_is_loaded(r, "big") && lf_registry_count(r) == 1,
          "failed loads leave nothing");
    CHECK(load(r, "w", "root/a1", 1, &err) == 200, "a failed name is free again");
    lf_registry_unload(r, "w", 0, NULL, &err);
}

typedef struct load_arg {
    lf_registry *r;
    const char *name, *rel;
    int hs;
    lf_err err;
} load_arg;

static atomic_int GO;

static void *load_thread(void *p) {
    load_arg *a = p;
    while (!atomic_load(&GO)) {
    }
    a->hs = load(a->r, a->name, a->rel, 1, &a->err);
    return NULL;
}

static void test_concurrent_loads(lf_registry *r) {
    enum { N = 4 };
    pthread_t th[N];
    load_arg args[N];
    atomic_store(&GO, 0);
    for (int i = 0; i < N; i++) {
        args[i] = (load_arg){r, "same", (i % 2) ? "root/a1" : "root/dora", 0, {0}};
        pthread_create(&th[i], NULL, load_thread, &args[i]);
    }
    atomic_store(&GO, 1);
    int ok = 0, conflict = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ok += args[i].hs == 200;
        conflict += args[i].hs == 409;
    }
    CHECK(ok == 1 && conflict == N - 1, "concurrent loads of one name: %d ok, %d conflict", ok, conflict);
    lf_err err;
    CHECK(lf_registry_unload(r, "same", 1000, NULL, &err) == LF_OK, "unload same");
}

/* max_loras = 4 (a1 is loaded): three more fit, the next is 507; concurrently, distinct names. */
static void test_max_loras(lf_registry *r) {
    enum { N = 5 };
    pthread_t th[N];
    load_arg args[N];
    static const char *names[N] = {"m0", "m1", "m2", "m3", "m4"};
    atomic_store(&GO, 0);
    for (int i = 0; i < N; i++) {
        args[i] = (load_arg){r, names[i], "root/dora", 0, {0}}; /* DoRA: norms computed concurrently */
        pthread_create(&th[i], NULL, load_thread, &args[i]);
    }
    atomic_store(&GO, 1);
    int ok = 0, full = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ok += args[i].hs == 200;
        full += args[i].hs == 507;
    }
    CHECK(ok == 3 && full == 2 && lf_registry_count(r) == 4, "max_loras 4 with 1 loaded + 5 racing: %d ok, %d 507", ok, full);
    lf_err err;
    int hs = load(r, "extra", "root/b2", 1, &err);
    CHECK(hs == 507 && strstr(err.msg, "max_loras"), "507 message: %s", err.msg);
    for (int i = 0; i < N; i++)
        if (args[i].hs == 200) lf_registry_unload(r, names[i], 0, NULL, &err);
    CHECK(load(r, "extra", "root/b2", 1, &err) == 200, "room again after unloads: %s", err.msg);
    lf_registry_unload(r, "extra", 0, NULL, &err);
    CHECK(lf_registry_count(r) == 1, "count back to 1");
}

typedef struct holder_arg {
    lf_registry *r;
    const lf_served_adapter *a;
    int saw_hidden, acquire_null;
    double released_at;
} holder_arg;

static void *holder_thread(void *p) {
    holder_arg *h = p;
    /* wait until the unload has begun (the name stops being visible), then hold on 200 ms more */
    for (int i = 0; i < 2000 && lf_registry_is_loaded(h->r, h->a->name); i++) sleep_ms(1);
    h->saw_hidden = !lf_registry_is_loaded(h->r, h->a->name);
    sleep_ms(200);
    h->acquire_null = lf_registry_acquire(h->r, h->a->name) == NULL;
    h->released_at = now_ms();
    lf_registry_release(h->r, h->a);
    return NULL;
}

static void test_unload_wait(lf_registry *r) {
    lf_err err;
    int hs = 0;
    CHECK(load(r, "held", "root/b2", 1, &err) == 200, "load held");
    holder_arg h = {r, lf_registry_acquire(r, "held"), 0, 0, 0};
    CHECK(h.a != NULL, "acquire held");
    if (!h.a) return;
    pthread_t th;
    pthread_create(&th, NULL, holder_thread, &h);
    double t0 = now_ms();
    lf_status st = lf_registry_unload(r, "held", 5000, &hs, &err);
    double t1 = now_ms();
    pthread_join(th, NULL);
    CHECK(st == LF_OK && hs == 200, "unload waited and succeeded: %s", err.msg);
    CHECK(h.saw_hidden && h.acquire_null, "hidden while unloading: is_loaded 0 %d, acquire NULL %d", h.saw_hidden,
          h.acquire_null);
    /* returned after the release (the holder held on >= 200 ms after the unload started) */
    CHECK(t1 >= h.released_at && t1 - t0 >= 200.0, "unload took %.1f ms, returned %.1f ms after the release", t1 - t0,
          t1 - h.released_at);
    CHECK(!lf_registry_is_loaded(r, "held"), "held gone");

    /* timeout: 503 and still loaded */
    CHECK(load(r, "held", "root/b2", 1, &err) == 200, "reload held");
    const lf_served_adapter *a = lf_registry_acquire(r, "held");
    t0 = now_ms();
    st = lf_registry_unload(r, "held", 100, &hs, &err);
    t1 = now_ms();
    CHECK(st == LF_EBUSY && hs == 503, "unload timeout 503: %d %s", hs, err.msg);
    CHECK(t1 - t0 >= 99.0 && t1 - t0 < 3000.0, "timed out after %.1f ms (100 asked)", t1 - t0);
    CHECK(lf_registry_is_loaded(r, "held"), "still loaded after timeout");
    const lf_served_adapter *b = lf_registry_acquire(r, "held");
    CHECK(b == a, "acquirable again");
    json_t *j = list(r, "held", 0);
    CHECK(json_integer_value(json_object_get(j, "in_flight")) == 2, "in_flight 2");
    json_decref(j);
    CHECK(lf_registry_unload(r, "held", 0, &hs, &err) == LF_EBUSY && hs == 503, "timeout 0 with references: 503 at once");
    lf_registry_release(r, b);
    lf_registry_release(r, a);
    CHECK(lf_registry_unload(r, "held", 100, &hs, &err) == LF_OK, "unload after release");
}

static void test_preload(lf_registry *r) {
    lf_err err;
    char p[4096];
    int n = -1;
    pathf(p, sizeof p, "pre");
    CHECK(lf_registry_preload_dir(r, p, &n, &err) == LF_OK && n == 2, "preload 2 (skips non-adapters): %d %s", n, err.msg);
    CHECK(lf_registry_is_loaded(r, "p1") && lf_registry_is_loaded(r, "p2"), "preloaded names");
    pathf(p, sizeof p, "no-such-dir");
    CHECK(lf_registry_preload_dir(r, p, &n, &err) == LF_OK && n == 0, "missing preload dir is fine");
    lf_registry_unload(r, "p1", 0, NULL, &err); /* room under max_loras for prebad */
    lf_registry_unload(r, "p2", 0, NULL, &err);
    pathf(p, sizeof p, "prebad");
    lf_status st = lf_registry_preload_dir(r, p, &n, &err);
    CHECK(st != LF_OK && strstr(err.msg, "zbroken") && n == 1, "broken adapter named: %d %s", n, err.msg);
    CHECK(lf_registry_is_loaded(r, "ok1") && !lf_registry_is_loaded(r, "zbroken"), "adapters before the broken one stay");
    lf_registry_unload(r, "ok1", 0, NULL, &err);
    CHECK(lf_registry_count(r) == 1, "count back to 1 after preload");
}

/* acquire/release storm on two names while the main thread loads and unloads one of them */
typedef struct storm_arg {
    lf_registry *r;
    int stop;
    long hits, misses;
} storm_arg;

static void *storm_thread(void *p) {
    storm_arg *s = p;
    while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
        const lf_served_adapter *a = lf_registry_acquire(s->r, "cyc");
        const lf_served_adapter *b = lf_registry_acquire(s->r, "a1");
        if (a) {
            s->hits++;
            if (strcmp(a->name, "cyc") || a->rank != 2 || !a->fwd) s->misses += 1000000; /* corrupt view */
        }
        if (b && b->rank != 4) s->misses += 1000000;
        char *js = lf_registry_list_json(s->r, NULL, (int)(s->hits & 1));
        free(js);
        lf_registry_release(s->r, a);
        lf_registry_release(s->r, b);
    }
    return NULL;
}

static void test_storm(lf_registry *r) {
    enum { N = 3, CYCLES = 12 };
    pthread_t th[N];
    storm_arg s[N];
    for (int i = 0; i < N; i++) {
        s[i] = (storm_arg){r, 0, 0, 0};
        pthread_create(&th[i], NULL, storm_thread, &s[i]);
    }
    lf_err err;
    int loads = 0, unloads = 0;
    for (int c = 0; c < CYCLES; c++) {
        loads += load(r, "cyc", "root/b2", 1, &err) == 200;
        sleep_ms(5); /* let the storm threads use it, so the unload below races real references */
        unloads += lf_registry_unload(r, "cyc", 5000, NULL, &err) == LF_OK;
    }
    for (int i = 0; i < N; i++) __atomic_store_n(&s[i].stop, 1, __ATOMIC_RELEASE);
    long hits = 0, bad = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        hits += s[i].hits;
        bad += s[i].misses;
    }
    CHECK(loads == CYCLES && unloads == CYCLES, "storm: %d loads, %d unloads of %d", loads, unloads, CYCLES);
    CHECK(bad == 0, "storm: views consistent");
    CHECK(hits > 0, "storm: the cycling adapter was acquired at all");
    printf("  storm: %d load/unload cycles, %ld acquires of the cycling adapter by %d threads\n", CYCLES, hits, N);
}

/* The LOADING state, made deterministic with a FIFO as adapter_config.json: the loader reserves the name,
 * then blocks opening the FIFO until this thread opens its write end (the read then fails: a FIFO cannot be
 * sized, so that load ends in 424). Meanwhile the name is reserved but invisible. */
typedef struct fifo_arg {
    lf_registry *r;
    int delay_ms;
    char path[4096];
} fifo_arg;

static void *fifo_writer(void *p) {
    fifo_arg *f = p;
    sleep_ms(f->delay_ms);
    /* a non-blocking open succeeds once the loader waits in its open of the read end; give up after 5 s so a
     * broken registry fails the checks instead of hanging the test */
    for (int i = 0; i < 5000; i++) {
        int fd = open(f->path, O_WRONLY | O_NONBLOCK);
        if (fd >= 0) {
            close(fd);
            return NULL;
        }
        if (errno != ENXIO) break;
        sleep_ms(1);
    }
    return NULL;
}

static int wait_reserved(lf_registry *r, const char *name) {
    lf_err err;
    for (int i = 0; i < 5000; i++) {
        int hs = 0;
        lf_registry_unload(r, name, 0, &hs, &err); /* 404 until reserved, then 409 "still loading" */
        if (hs == 409) return 1;
        if (hs != 404) return 0;
        sleep_ms(1);
    }
    return 0;
}

static void test_loading_state(void) {
    lf_err err;
    char p[4096];
    pathf(p, sizeof p, "root/slow");
    make_adapter(p, MC, 2, 0, 0);
    fifo_arg fa = {NULL, 0, ""};
    pathf(fa.path, sizeof fa.path, "root/slow/adapter_config.json");
    unlink(fa.path);
    if (mkfifo(fa.path, 0600)) {
        printf("  mkfifo: %s: loading-state checks skipped\n", strerror(errno));
        return;
    }
    char r1[4096];
    pathf(r1, sizeof r1, "root");
    const char *roots[] = {r1};
    lf_registry_limits lim = {.max_loras = 2, .max_rank = 0};
    lf_registry *r = NULL;
    CHECK(lf_registry_create(MODEL, roots, 1, &lim, &r, &err) == LF_OK, "create");
    if (!r) return;
    fa.r = r;
    CHECK(load(r, "a1", "root/a1", 1, &err) == 200, "a1");
    load_arg la = {r, "slow", "root/slow", 0, {0}};
    atomic_store(&GO, 1);
    pthread_t lt, wt;
    pthread_create(&lt, NULL, load_thread, &la);
    int reserved = wait_reserved(r, "slow");
    CHECK(reserved, "the loader reserved the name");
    if (reserved) {
        int hs = load(r, "slow", "root/b2", 1, &err);
        CHECK(hs == 409 && strstr(err.msg, "being loaded"), "load while loading: %d %s", hs, err.msg);
        hs = 0;
        CHECK(lf_registry_unload(r, "slow", 1000, &hs, &err) == LF_EBUSY && hs == 409 && strstr(err.msg, "still loading"),
              "unload while loading: %d %s", hs, err.msg);
        CHECK(!lf_registry_is_loaded(r, "slow") && lf_registry_acquire(r, "slow") == NULL, "invisible while loading");
        CHECK(lf_registry_count(r) == 1 && lf_registry_list_json(r, "slow", 0) == NULL, "not counted or listed");
        json_t *j = list(r, NULL, 0);
        CHECK(json_array_size(json_object_get(j, "adapters")) == 1, "list holds a1 only");
        json_decref(j);
        hs = load(r, "third", "root/b2", 1, &err);
        CHECK(hs == 507, "a loading adapter counts against max_loras: %d", hs);
        const lf_served_adapter *a = lf_registry_acquire(r, "a1");
        CHECK(a != NULL, "other adapters keep serving while one loads");
        lf_registry_release(r, a);
    }
    pthread_create(&wt, NULL, fifo_writer, &fa);
    pthread_join(wt, NULL);
    pthread_join(lt, NULL);
    CHECK(la.hs == 424, "FIFO config fails the load: %d %s", la.hs, la.err.msg);
    CHECK(load(r, "slow", "root/b2", 1, &err) == 200, "name free again after the failed load: %s", err.msg);
    lf_registry_unload(r, "slow", 0, NULL, &err);

    /* free while a load is in flight: waits for it (the writer opens the FIFO 100 ms later) */
    la = (load_arg){r, "slow2", "root/slow", 0, {0}};
    pthread_create(&lt, NULL, load_thread, &la);
    CHECK(wait_reserved(r, "slow2"), "second loader reserved");
    fa.delay_ms = 100;
    pthread_create(&wt, NULL, fifo_writer, &fa);
    double t0 = now_ms();
    lf_registry_free(r); /* must not free under the loader */
    double t1 = now_ms();
    pthread_join(wt, NULL);
    pthread_join(lt, NULL);
    CHECK(la.hs == 424 || la.hs == 503, "in-flight load at free ends: %d", la.hs);
    CHECK(t1 - t0 >= 90.0, "free waited %.1f ms for the in-flight load", t1 - t0);
    unlink(fa.path);
}

static void test_close(lf_registry *r) {
    lf_err err;
    lf_registry_close(r);
    CHECK(load(r, "late", "root/b2", 1, &err) == 503, "load after close 503");
    const lf_served_adapter *a = lf_registry_acquire(r, "a1");
    CHECK(a != NULL, "acquire still works after close");
    lf_registry_release(r, a);
}

static void setup_tree(const lf_model_config *mc) {
    char p[4096], q[4096];
    lf_err err;
    pathf(p, sizeof p, "root");
    lf_mkdirs(p, &err);
    pathf(p, sizeof p, "root2");
    lf_mkdirs(p, &err);
    pathf(p, sizeof p, "root/a1"), make_adapter(p, mc, 4, 0, 0);
    pathf(p, sizeof p, "root/b2"), make_adapter(p, mc, 2, 0, 1);
    pathf(p, sizeof p, "root/dora"), make_adapter(p, mc, 4, 1, 0);
    pathf(p, sizeof p, "root/rank16"), make_adapter(p, mc, 16, 0, 0);
    pathf(p, sizeof p, "root2/c3"), make_adapter(p, mc, 2, 0, 0);
    pathf(p, sizeof p, "outside"), make_adapter(p, mc, 2, 0, 0);
    lf_model_config wide = *mc; /* an adapter made for a model with another hidden size */
    wide.C = 48;
    pathf(p, sizeof p, "root/wide"), make_adapter(p, &wide, 4, 0, 0);
    /* malformed weights: a good config with garbage safetensors */
    pathf(p, sizeof p, "root/junk"), make_adapter(p, mc, 4, 0, 0);
    pathf(p, sizeof p, "root/junk/adapter_model.safetensors"), write_text(p, "this is not a safetensors file");
    /* unsupported PEFT feature: bias "all" */
    pathf(p, sizeof p, "root/unsup"), make_adapter(p, mc, 4, 0, 0);
    {
        char *txt = NULL;
        size_t n = 0;
        pathf(p, sizeof p, "root/unsup/adapter_config.json");
        if (lf_file_read_all(p, &txt, &n, &err) == LF_OK) {
            char *b = strstr(txt, "\"bias\": \"none\"");
            if (b) memcpy(b, "\"bias\": \"all\" ", 14);
            write_text(p, txt);
        }
        free(txt);
    }
    pathf(p, sizeof p, "root/empty"), lf_mkdirs(p, &err);
    pathf(p, sizeof p, "root/afile"), write_text(p, "x");
    pathf(p, sizeof p, "outside"), pathf(q, sizeof q, "root/evil");
    if (symlink(p, q)) printf("setup: symlink: %s\n", strerror(errno));
    pathf(p, sizeof p, "root/a1"), pathf(q, sizeof q, "root/good_link");
    if (symlink(p, q)) printf("setup: symlink: %s\n", strerror(errno));
    /* preload dirs */
    pathf(p, sizeof p, "pre/p1"), make_adapter(p, mc, 2, 0, 0);
    pathf(p, sizeof p, "pre/p2"), make_adapter(p, mc, 2, 0, 0);
    pathf(p, sizeof p, "pre/notes"), lf_mkdirs(p, &err);
    pathf(p, sizeof p, "pre/readme.txt"), write_text(p, "x");
    pathf(p, sizeof p, "prebad/ok1"), make_adapter(p, mc, 2, 0, 0);
    pathf(p, sizeof p, "prebad/zbroken"), make_adapter(p, &wide, 2, 0, 0);
}

int main(void) {
    const char *env = getenv("LF_TEST_SEED");
    SEED = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    printf("test_registry: seed %llu (LF_TEST_SEED)\n", (unsigned long long)SEED);
    lf_rng_seed(&RNG, SEED);
    lf_log_set_level(LF_LOG_ERROR); /* load/unload info lines would drown the output */
    snprintf(TMP, sizeof TMP, "/tmp/lf_test_registry_XXXXXX");
    if (!mkdtemp(TMP)) {
        printf("mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    char p[4096];
    lf_err err;
    pathf(p, sizeof p, "model");
    make_model(p);
    lf_backend *be = lf_backend_cpu_create(1);
    if (!be || lf_model_load(p, be, &MODEL, &err)) {
        printf("model load: %s\n", err.msg);
        return 1;
    }
    MC = lf_model_get_config(MODEL);
    setup_tree(MC);

    test_names();
    char r1[4096], r2[4096], r3[4096];
    pathf(r1, sizeof r1, "root");
    pathf(r2, sizeof r2, "root2/");
    pathf(r3, sizeof r3, "no-such-root");
    const char *roots[] = {r1, r2, r3};
    lf_registry_limits lim = {.max_loras = 4, .max_rank = 8};
    lf_registry *r = NULL;
    CHECK(lf_registry_create(MODEL, roots, 3, &lim, &r, &err) == LF_OK, "create: %s", err.msg);
    if (r) {
        test_basic(r);
        test_paths(r);
        test_incompatible(r);
        test_concurrent_loads(r);
        test_max_loras(r);
        test_unload_wait(r);
        test_preload(r);
        test_storm(r);
        test_close(r);
        lf_registry_free(r);
    }
    lf_registry_free(NULL);
    test_loading_state();
    /* no roots at all: every runtime src is 403, operator paths still load */
    r = NULL;
    CHECK(lf_registry_create(MODEL, NULL, 0, NULL, &r, &err) == LF_OK, "create without roots");
    if (r) {
        CHECK(load(r, "x", "root/a1", 1, &err) == 403, "no roots: 403");
        CHECK(load(r, "x", "root/a1", 0, &err) == 200, "no roots, check_roots 0: %s", err.msg);
        CHECK(load(r, "y", "root/rank16", 0, &err) == 200, "no limits: rank 16 loads");
        lf_registry_free(r); /* frees loaded adapters */
    }
    lf_model_free(MODEL);
    lf_backend_free(be);
    rm_rf(TMP);
    printf("test_registry: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
