/* fuzz_adapter.c - libFuzzer target: a PEFT adapter directory (adapters/peft_io.c): adapter_config.json alone
 * (lf_peft_config_read, then its re-serialisation), and adapter_config.json + adapter_model.safetensors
 * through lf_peft_load against a tiny in-memory Llama config (2 layers, hidden 8, 2 heads of 4, 1 KV head,
 * FF 12), and tensor-name parsing. Input: adapter_config.json LF_FUZZ_SEP adapter_model.safetensors (without
 * a separator: the config alone).
 * Invariants (a violation traps): failures carry a message and no adapter; a config that reads back
 * serialises to JSON that reads to the same JSON again (a fixed point); a loaded adapter's slots match the
 * model shapes and its rank and the parameter count adds up, and a save + reload (F32) gives the
 * same parameters bit for bit; lf_peft_tensor_name of a parsed name parses to the same (layer, module, kind).
 * sources: adapters/peft_io.c adapters/lora.c core/safetensors.c core/json.c core/fileio.c core/status.c
 * sources: core/tensor.c core/rng.c model/config.c
 * pkg: jansson libpcre2-8
 * Build and run: scripts/fuzz.sh [SECONDS] adapter (docs/fuzzing.md). */
#include <jansson.h>
#include <stdint.h>
#include <string.h>

#include "adapters/peft_io.h"
#include "tests/fuzz/fuzz_util.h"

static lf_model_config mc;
static char dir_in[512], dir_out[512];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    lf_fuzz_subdir(dir_in, sizeof dir_in, "in");
    lf_fuzz_subdir(dir_out, sizeof dir_out, "out");
    memset(&mc, 0, sizeof mc);
    mc.arch = LF_ARCH_LLAMA;
    snprintf(mc.architecture, sizeof mc.architecture, "LlamaForCausalLM");
    mc.C = 8, mc.FF = 12, mc.L = 2, mc.H = 2, mc.KH = 1, mc.D = 4, mc.V = 16, mc.max_pos = 64;
    mc.rope_theta = 10000, mc.rms_eps = 1e-5f, mc.bos_id = 1, mc.n_eos = 1, mc.eos_ids[0] = 2;
    return 0;
}

static void check_names(const uint8_t *data, size_t size) {
    char *s = lf_fuzz_strndup(data, size < 256 ? size : 256);
    int64_t l;
    lf_module m;
    lf_peft_kind k;
    if (lf_peft_parse_name(s, &l, &m, &k)) {
        REQUIRE(l >= 0 && (int)m >= 0 && m < LF_MOD_COUNT && (int)k >= 0 && k <= LF_PEFT_MAG);
        char canon[256];
        lf_peft_tensor_name(canon, sizeof canon, l, m, k);
        int64_t l2;
        lf_module m2;
        lf_peft_kind k2;
        REQUIRE(lf_peft_parse_name(canon, &l2, &m2, &k2) && l2 == l && m2 == m && k2 == k);
    }
    free(s);
}

/* read -> json -> write -> read -> json must give the same text */
static void check_config(const char *cpath) {
    lf_lora_config *cfg = malloc(sizeof *cfg), *cfg2 = malloc(sizeof *cfg2); /* ~60 KiB each */
    REQUIRE(cfg && cfg2);
    lf_err err;
    err.msg[0] = '\0';
    if (lf_peft_config_read(cpath, cfg, &err) != LF_OK) {
        REQUIRE(err.msg[0] != '\0');
        goto done;
    }
    char *j1 = NULL, *j2 = NULL, path[1024];
    REQUIRE(lf_peft_config_json(cfg, &j1, &err) == LF_OK && j1);
    lf_fuzz_write(dir_out, "adapter_config.json", j1, strlen(j1), path, sizeof path);
    REQUIRE(lf_peft_config_read(path, cfg2, &err) == LF_OK);
    REQUIRE(lf_peft_config_json(cfg2, &j2, &err) == LF_OK && j2);
    REQUIRE(strcmp(j1, j2) == 0);
    free(j1);
    free(j2);
done:
    free(cfg);
    free(cfg2);
}

static void check_adapter(const lf_lora_adapter *a) {
    REQUIRE(a->L == mc.L && a->n_slots > 0);
    int64_t total = 0;
    for (int64_t l = 0; l < a->L; l++) {
        for (int m = 0; m < LF_MOD_COUNT; m++) {
            const lf_lora_slot *s = lf_lora_get(a, l, (lf_module)m);
            if (!s) continue;
            int64_t oc, c;
            lf_module_shape(&mc, (lf_module)m, &oc, &c);
            REQUIRE(s->present && s->R > 0 && s->IN == c && s->OC == oc);
            REQUIRE(s->A == a->params + s->off_A && s->B == a->params + s->off_B);
            total += s->R * (s->IN + s->OC) + (s->mag ? s->OC : 0);
        }
    }
    REQUIRE(total == a->n_params);
    lf_err err;
    REQUIRE(lf_peft_save(a, dir_out, LF_DTYPE_F32, &err) == LF_OK);
    lf_lora_adapter *b = NULL;
    REQUIRE(lf_peft_load(dir_out, &mc, &b, &err) == LF_OK);
    REQUIRE(b->n_params == a->n_params && memcmp(b->params, a->params, (size_t)a->n_params * sizeof(float)) == 0);
    lf_lora_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *part[2];
    size_t len[2];
    char path[1024];
    int np = lf_fuzz_split(data, size, part, len, 2);
    check_names(part[0], len[0]);
    lf_fuzz_write(dir_in, LF_PEFT_CONFIG_NAME, part[0], len[0], path, sizeof path);
    check_config(path);
    if (np < 2) return 0;
    lf_fuzz_write(dir_in, LF_PEFT_WEIGHTS_NAME, part[1], len[1], path, sizeof path);
    lf_lora_adapter *a = (lf_lora_adapter *)1;
    lf_err err;
    err.msg[0] = '\0';
    if (lf_peft_load(dir_in, &mc, &a, &err) != LF_OK) {
        REQUIRE(a == NULL && err.msg[0] != '\0');
        return 0;
    }
    check_adapter(a);
    lf_lora_free(a);
    return 0;
}
