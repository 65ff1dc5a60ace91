/* fuzz_config.c - libFuzzer target: the `loraforge train` config readers (core/config.c): LLaMA-Factory YAML,
 * JSON, SageMaker hyperparameters.json (a file) and command-line flags, then cross-key validation and the
 * JSON/print outputs. The first byte picks the reader (byte % 4): 0 YAML buffer, 1 JSON buffer,
 * 2 hyperparameters.json, 3 flags (the rest split at NUL bytes into argv).
 * Invariants (a violation traps): every failure has a message; a config that loads serialises with
 * lf_config_to_json, and loading that JSON into fresh defaults serialises to the same JSON (config.h:
 * "Loading it back with lf_config_load_json reproduces the config"); validation is idempotent (a config that
 * validated validates again, with the same JSON).
 * sources: core/config.c core/json.c core/fileio.c core/log.c core/status.c
 * pkg: jansson yaml-0.1
 * Build and run: scripts/fuzz.sh [SECONDS] config (docs/fuzzing.md). */
#include <jansson.h>
#include <stdint.h>
#include <string.h>

#include "core/config.h"
#include "core/log.h"
#include "tests/fuzz/fuzz_util.h"

static char dir_hp[512];
static FILE *devnull;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    lf_fuzz_subdir(dir_hp, sizeof dir_hp, "hp");
    lf_log_set_level(LF_LOG_OFF);
    devnull = fopen("/dev/null", "w");
    REQUIRE(devnull != NULL);
    return 0;
}

static char *to_json_text(const lf_train_config *cfg) {
    json_t *j = NULL;
    lf_err err;
    REQUIRE(lf_config_to_json(cfg, &j, &err) == LF_OK && j);
    char *s = json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT);
    REQUIRE(s);
    json_decref(j);
    return s;
}

/* to_json -> load_json into defaults -> to_json is the same text */
static void check_roundtrip(const lf_train_config *cfg) {
    char *a = to_json_text(cfg);
    lf_train_config *c2 = calloc(1, sizeof *c2);
    REQUIRE(c2);
    lf_err err;
    REQUIRE(lf_config_defaults(c2, &err) == LF_OK);
    if (lf_config_load_json_buffer(c2, a, strlen(a), "roundtrip", &err) != LF_OK) {
        fprintf(stderr, "round trip does not load: %s\n%s\n", err.msg, a);
        __builtin_trap();
    }
    char *b = to_json_text(c2);
    if (strcmp(a, b) != 0) {
        fprintf(stderr, "round trip differs:\n%s\n%s\n", a, b);
        __builtin_trap();
    }
    free(a);
    free(b);
    lf_config_free(c2);
    free(c2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int mode = data[0] % 4;
    data++, size--;
    lf_train_config *cfg = calloc(1, sizeof *cfg);
    REQUIRE(cfg);
    lf_err err;
    err.msg[0] = '\0';
    REQUIRE(lf_config_defaults(cfg, &err) == LF_OK);
    lf_status st;
    char *buf = NULL; /* flags: argv points into it until the end */
    if (mode == 0) {
        st = lf_config_load_yaml_buffer(cfg, (const char *)data, size, "fuzz.yaml", &err);
    } else if (mode == 1) {
        st = lf_config_load_json_buffer(cfg, (const char *)data, size, "fuzz.json", &err);
    } else if (mode == 2) {
        char path[1024];
        lf_fuzz_write(dir_hp, "hyperparameters.json", data, size, path, sizeof path);
        int loaded = 0;
        st = lf_config_load_hyperparameters(cfg, path, &loaded, &err);
        REQUIRE(st != LF_OK || loaded);
    } else {
        buf = lf_fuzz_strndup(data, size);
        char *argv[65];
        int argc = 0;
        for (size_t at = 0; at <= size && argc < 64;) {
            argv[argc++] = buf + at;
            at += strlen(buf + at) + 1;
        }
        argv[argc] = NULL;
        const char *file = NULL;
        st = lf_config_load_flags(cfg, argc, argv, &file, &err);
    }
    if (st != LF_OK) {
        REQUIRE(err.msg[0] != '\0');
    } else {
        check_roundtrip(cfg);
        err.msg[0] = '\0';
        if (lf_config_validate(cfg, &err) == LF_OK) {
            char *a = to_json_text(cfg);
            REQUIRE(lf_config_validate(cfg, &err) == LF_OK);
            char *b = to_json_text(cfg);
            REQUIRE(strcmp(a, b) == 0);
            free(a);
            free(b);
            check_roundtrip(cfg);
            json_t *o = NULL;
            REQUIRE(lf_config_origins_to_json(cfg, &o, &err) == LF_OK);
            json_decref(o);
            lf_config_print(devnull, cfg);
        } else {
            REQUIRE(err.msg[0] != '\0');
        }
    }
    lf_config_free(cfg);
    free(cfg);
    free(buf);
    return 0;
}
