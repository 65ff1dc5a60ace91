/* fuzz_safetensors.c - libFuzzer target: the safetensors reader (core/safetensors.h) over memory and over a
 * mapped file, the sharded-model index (model.safetensors.index.json against two fixed valid shards), and a
 * model directory's config.json + generation_config.json (model/config.c). The first input byte picks the
 * mode (byte % 4): 0 lf_st_open_memory, 1 DIR/model.safetensors via lf_st_model_open, 2 the index, 3 the
 * config files (config.json LF_FUZZ_SEP generation_config.json).
 * Invariants (a violation traps): a failure has a message and no handle; an opened file's tensors lie inside
 * the buffer in offset order, tile it, span numel*bits/8 bytes and are found by name; metadata keys are
 * found; a file that opened round-trips through lf_st_writer with the same tensors; a loaded config obeys
 * model/config.h (sizes > 0, H % KH == 0, D even and <= 512, windows >= 0).
 * sources: core/safetensors.c core/fileio.c core/status.c core/tensor.c core/json.c model/config.c
 * pkg: jansson
 * Build and run: scripts/fuzz.sh [SECONDS] safetensors (docs/fuzzing.md). */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/safetensors.h"
#include "model/config.h"
#include "tests/fuzz/fuzz_util.h"

static char dir_single[512], dir_index[512], dir_config[512], dir_rt[512];

static void make_shards(void) {
    lf_err err;
    float x[2] = {1, 2};
    uint16_t y[3] = {1, 2, 3};
    int8_t z[4] = {1, 2, 3, 4};
    int64_t s2 = 2, s3 = 3, s4 = 4;
    char path[1024];
    lf_st_writer *w = lf_st_writer_create();
    REQUIRE(w && lf_st_writer_add(w, "x", LF_DTYPE_F32, 1, &s2, x, &err) == LF_OK);
    REQUIRE(lf_st_writer_add(w, "y", LF_DTYPE_BF16, 1, &s3, y, &err) == LF_OK);
    snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", dir_index);
    REQUIRE(lf_st_writer_write(w, path, &err) == LF_OK);
    lf_st_writer_free(w);
    w = lf_st_writer_create();
    REQUIRE(w && lf_st_writer_add(w, "z", LF_DTYPE_I8, 1, &s4, z, &err) == LF_OK);
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir_index);
    REQUIRE(lf_st_writer_write(w, path, &err) == LF_OK);
    lf_st_writer_free(w);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    lf_fuzz_subdir(dir_single, sizeof dir_single, "single");
    lf_fuzz_subdir(dir_index, sizeof dir_index, "index");
    lf_fuzz_subdir(dir_config, sizeof dir_config, "config");
    lf_fuzz_subdir(dir_rt, sizeof dir_rt, "roundtrip");
    make_shards();
    return 0;
}

/* Everything an opened file promises (safetensors.h "After a successful open"). */
static void check_file(const lf_st_file *f, int roundtrip) {
    int64_t n = lf_st_count(f);
    REQUIRE(n >= 0);
    uint64_t prev_end = 0;
    for (int64_t i = 0; i < n; i++) {
        const lf_st_tensor *t = lf_st_at(f, i);
        REQUIRE(t && t->name && t->begin <= t->end && t->begin == prev_end);
        REQUIRE(t->ndim >= 0 && t->ndim <= LF_ST_MAX_DIMS);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
        REQUIRE(numel == t->numel);
        REQUIRE((uint64_t)lf_dtype_nbytes(t->dtype, t->numel) == t->end - t->begin);
        if (t->end > t->begin) {
            volatile uint8_t a = ((const uint8_t *)t->data)[0], b = ((const uint8_t *)t->data)[t->end - t->begin - 1];
            (void)a, (void)b; /* ASan checks both ends lie inside the buffer */
        }
        REQUIRE(lf_st_find(f, t->name) == t);
        prev_end = t->end;
    }
    REQUIRE(lf_st_at(f, n) == NULL && lf_st_at(f, -1) == NULL);
    for (int64_t i = 0; i < lf_st_meta_count(f); i++) {
        const char *k = lf_st_meta_key(f, i);
        REQUIRE(k && lf_st_meta(f, k) != NULL);
    }
    if (!roundtrip) return;
    /* write it back and read it again: same names, dtypes, shapes and bytes */
    lf_err err;
    lf_st_writer *w = lf_st_writer_create();
    REQUIRE(w);
    for (int64_t i = 0; i < n; i++) {
        const lf_st_tensor *t = lf_st_at(f, i);
        /* whatever the reader accepts the writer takes back (names are UTF-8, shapes fit, sizes whole bytes) */
        REQUIRE(lf_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &err) == LF_OK);
    }
    for (int64_t i = 0; i < lf_st_meta_count(f); i++)
        REQUIRE(lf_st_writer_set_meta(w, lf_st_meta_key(f, i), lf_st_meta(f, lf_st_meta_key(f, i)), &err) == LF_OK);
    char path[1024];
    snprintf(path, sizeof path, "%s/rt.safetensors", dir_rt);
    {
        REQUIRE(lf_st_writer_write(w, path, &err) == LF_OK);
        lf_st_file *g = NULL;
        REQUIRE(lf_st_open(path, &g, &err) == LF_OK);
        REQUIRE(lf_st_count(g) == n && lf_st_meta_count(g) == lf_st_meta_count(f));
        for (int64_t i = 0; i < n; i++) {
            const lf_st_tensor *t = lf_st_at(f, i), *u = lf_st_find(g, t->name);
            REQUIRE(u && u->dtype == t->dtype && u->ndim == t->ndim && u->numel == t->numel);
            REQUIRE(memcmp(u->shape, t->shape, sizeof t->shape) == 0);
            REQUIRE(u->end - u->begin == t->end - t->begin);
            REQUIRE(t->end == t->begin || memcmp(u->data, t->data, t->end - t->begin) == 0);
        }
        for (int64_t i = 0; i < lf_st_meta_count(f); i++) {
            const char *k = lf_st_meta_key(f, i);
            REQUIRE(lf_st_meta(g, k) && strcmp(lf_st_meta(g, k), lf_st_meta(f, k)) == 0);
        }
        lf_st_close(g);
    }
    lf_st_writer_free(w);
}

static void check_model(const lf_st_model *m) {
    int64_t n = lf_st_model_count(m);
    for (int64_t i = 0; i < n; i++) {
        const lf_st_file *f = NULL;
        const lf_st_tensor *t = lf_st_model_at(m, i, &f);
        REQUIRE(t && f);
        const lf_st_file *g = NULL;
        REQUIRE(lf_st_model_find(m, t->name, &g) == t && g == f);
    }
    REQUIRE(lf_st_model_at(m, n, NULL) == NULL);
    for (int i = 0; i < lf_st_model_nfiles(m); i++) check_file(lf_st_model_file(m, i), 0);
}

static void fuzz_config(const uint8_t *data, size_t size) {
    const uint8_t *part[2];
    size_t len[2];
    char path[1024];
    int np = lf_fuzz_split(data, size, part, len, 2);
    lf_fuzz_write(dir_config, "config.json", part[0], len[0], path, sizeof path);
    if (np > 1) lf_fuzz_write(dir_config, "generation_config.json", part[1], len[1], path, sizeof path);
    else lf_fuzz_unlink(dir_config, "generation_config.json");
    static lf_model_config cfg; /* 4 KiB of windows: keep it off the stack */
    lf_err err;
    err.msg[0] = '\0';
    if (lf_model_config_load(dir_config, &cfg, &err) != LF_OK) {
        REQUIRE(err.msg[0] != '\0');
        return;
    }
    REQUIRE(cfg.C > 0 && cfg.FF > 0 && cfg.L > 0 && cfg.L <= LF_MAX_LAYERS && cfg.H > 0 && cfg.KH > 0);
    REQUIRE(cfg.D > 0 && cfg.V > 0 && cfg.max_pos > 0 && cfg.H % cfg.KH == 0);
    REQUIRE(cfg.D % 2 == 0 && cfg.D <= LF_MAX_HEAD_DIM && cfg.n_eos >= 0 && cfg.n_eos <= LF_MAX_EOS);
    for (int64_t l = 0; l < cfg.L; l++) REQUIRE(cfg.window[l] >= 0);
    float inv_freq[LF_MAX_HEAD_DIM / 2];
    lf_model_config_inv_freq(&cfg, inv_freq);
    for (int m = 0; m < LF_MOD_COUNT; m++) {
        int64_t oc, c;
        lf_module_shape(&cfg, (lf_module)m, &oc, &c);
        REQUIRE(oc > 0 && c > 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int mode = data[0] % 4;
    data++, size--;
    lf_err err;
    err.msg[0] = '\0';
    char path[1024];
    if (mode == 0) {
        lf_st_file *f = (lf_st_file *)1;
        if (lf_st_open_memory(data, size, "fuzz", &f, &err) == LF_OK) {
            check_file(f, size <= 4096);
            lf_st_close(f);
        } else {
            REQUIRE(f == NULL && err.msg[0] != '\0');
        }
    } else if (mode == 1) {
        lf_fuzz_write(dir_single, "model.safetensors", data, size, path, sizeof path);
        lf_st_model *m = (lf_st_model *)1;
        if (lf_st_model_open(dir_single, &m, &err) == LF_OK) {
            check_model(m);
            lf_st_model_close(m);
        } else {
            REQUIRE(m == NULL && err.msg[0] != '\0');
        }
    } else if (mode == 2) {
        lf_fuzz_write(dir_index, "model.safetensors.index.json", data, size, path, sizeof path);
        for (int by_path = 0; by_path < 2; by_path++) {
            lf_st_model *m = (lf_st_model *)1;
            if (lf_st_model_open(by_path ? path : dir_index, &m, &err) == LF_OK) {
                check_model(m);
                lf_st_model_close(m);
            } else {
                REQUIRE(m == NULL && err.msg[0] != '\0');
            }
        }
    } else {
        fuzz_config(data, size);
    }
    return 0;
}
