/* lora_tool.c - LoRA/PEFT helper for tests/oracle/test_peft_io.py (built, not run by ctest).
 *
 *   lora_tool roundtrip IN_DIR OUT_DIR --model-config DIR [--dtype F32|BF16|F16]
 *       lf_peft_load IN_DIR (validated against DIR/config.json), then lf_peft_save to OUT_DIR.
 *   lora_tool init OUT_DIR --model-config DIR [--config adapter_config.json] [--seed N] [--r R] [--alpha A] [--dropout P]
 *                  [--targets q_proj,v_proj|all] [--target-regex RE] [--target-names a,b,...]
 *                  [--rank-pattern KEY=R,...] [--alpha-pattern KEY=A,...] [--rslora] [--dora]
 *                  [--init true|false|gaussian] [--base-model NAME] [--dtype F32|BF16|F16]
 *       Settings from --config (a PEFT adapter_config.json, via lf_peft_config_read) or PEFT defaults, then the
 *       flags given. lf_lora_create + lf_lora_init_peft(seed); with --dora the magnitudes come from the base weights in
 *       DIR (model.safetensors or shards, F32/BF16/F16) through the lf_lora_init_dora row callback. Saves.
 *   lora_tool merge ADAPTER_DIR --model DIR OUT.safetensors
 *       For every adapted linear: the base weight as f32 merged with lf_lora_merge_weight, written as
 *       "model.layers.N.<parent>.<module>.weight" F32.
 *   lora_tool info ADAPTER_DIR --model-config DIR
 *       One JSON line: {"n_params", "n_slots", "use_dora", "use_rslora", "target_mask", "slots": [{"layer",
 *       "module", "r", "alpha", "scaling", "in", "out", "off_A", "off_B", "off_mag"}]}.
 *
 * Exit 0 on success; 1 with "lora_tool: <message>" on stderr on error; 2 for bad usage. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/lora.h"
#include "adapters/peft_io.h"
#include "bench/bench_args.h" // defines: lf_args_parse
#include "core/safetensors.h"
#include "model/config.h"

static const char USAGE[] = "usage: lora_tool roundtrip IN_DIR OUT_DIR --model-config DIR [--dtype F32|BF16|F16]\n"
                            "       lora_tool init OUT_DIR --model-config DIR [--config adapter_config.json] [--seed N]\n"
                            "                 [--r R] [--alpha A] [--dropout P]\n"
                            "                 [--targets LIST|all] [--target-regex RE] [--target-names a,b]\n"
                            "                 [--rank-pattern K=R,..] [--alpha-pattern K=A,..] [--rslora] [--dora]\n"
                            "                 [--init true|false|gaussian] [--base-model NAME] [--dtype F32|BF16|F16]\n"
                            "       lora_tool merge ADAPTER_DIR --model DIR OUT.safetensors\n"
                            "       lora_tool info ADAPTER_DIR --model-config DIR\n";

static int usage(void) {
    fputs(USAGE, stderr);
    return 2;
}

static int fail_err(const lf_err *e) {
    fprintf(stderr, "lora_tool: %s\n", e->msg);
    return 1;
}

/* "k=v,k=v" into patterns. */
static int parse_patterns(const char *s, lf_lora_pattern *pat, int *n) {
    char *copy = strdup(s), *save = NULL;
    if (!copy) return 0;
    *n = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strrchr(tok, '=');
        if (!eq || *n >= LF_LORA_MAX_PATTERNS) {
            free(copy);
            return 0;
        }
        *eq = '\0';
        snprintf(pat[*n].key, sizeof pat[*n].key, "%s", tok);
        pat[*n].value = atof(eq + 1);
        (*n)++;
    }
    free(copy);
    return 1;
}

/* ---- base rows from a model directory ---- */
typedef struct rows_ctx {
    lf_st_model *m;
    const lf_model_config *mc;
} rows_ctx;

static lf_status find_weight(const rows_ctx *c, int64_t layer, lf_module m, const lf_st_tensor **out, lf_err *err) {
    char name[160];
    snprintf(name, sizeof name, "model.layers.%" PRId64 ".%s.%s.weight", layer, lf_module_parent(m), lf_module_name(m));
    const lf_st_tensor *t = lf_st_model_find(c->m, name, NULL);
    int64_t OC, C;
    lf_module_shape(c->mc, m, &OC, &C);
    if (!t) return lf_err_set(err, LF_ENOTFOUND, "base weight '%s' not found", name);
    if (t->ndim != 2 || t->shape[0] != OC || t->shape[1] != C)
        return lf_err_set(err, LF_EFORMAT, "base weight '%s' has the wrong shape", name);
    *out = t;
    return LF_OK;
}

static lf_status rows_fn(void *ctx, int64_t layer, lf_module m, int64_t row0, int64_t nrows, float *dst, lf_err *err) {
    const rows_ctx *c = ctx;
    const lf_st_tensor *t = NULL;
    lf_status st = find_weight(c, layer, m, &t, err);
    if (st) return st;
    size_t esz = (size_t)lf_dtype_bits(t->dtype) / 8;
    return lf_to_f32_n(dst, (const char *)t->data + (size_t)(row0 * t->shape[1]) * esz, t->dtype, nrows * t->shape[1],
                       err);
}

static lf_dtype parse_dtype(const char *s) {
    lf_dtype d = lf_dtype_from_name(s);
    return (d == LF_DTYPE_F32 || d == LF_DTYPE_BF16 || d == LF_DTYPE_F16) ? d : LF_DTYPE_INVALID;
}

int main(int argc, char **argv) {
    const char *args[4] = {0}, *const *pos = args + 1; /* the command, then its positionals */
    int npos = 0;
    const char *model_cfg = NULL, *model = NULL, *dtype_s = "F32", *targets = NULL, *regex = NULL, *names = NULL;
    const char *rank_pat = NULL, *alpha_pat = NULL, *init_s = NULL, *base_model = NULL, *config = NULL;
    uint64_t seed = 0;
    int64_t r = -1;               /* -1 / NAN: not given */
    double alpha = NAN, dropout = NAN;
    int rslora = 0, dora = 0;
    /* numbers: any value (lf_lora / lf_peft validate them; tests pass bad ones on purpose) */
    const lf_arg_spec flags[] = {LF_FLAG_STR("--model-config", &model_cfg),
                                 LF_FLAG_STR("--model", &model),
                                 LF_FLAG_STR("--config", &config),
                                 LF_FLAG_STR("--dtype", &dtype_s),
                                 LF_FLAG_U64("--seed", &seed),
                                 LF_FLAG_I64("--r", &r, 0, 0),
                                 LF_FLAG_F64("--alpha", &alpha, 0, 0),
                                 LF_FLAG_F64("--dropout", &dropout, 0, 0),
                                 LF_FLAG_STR("--targets", &targets),
                                 LF_FLAG_STR("--target-regex", &regex),
                                 LF_FLAG_STR("--target-names", &names),
                                 LF_FLAG_STR("--rank-pattern", &rank_pat),
                                 LF_FLAG_STR("--alpha-pattern", &alpha_pat),
                                 LF_FLAG_STR("--init", &init_s),
                                 LF_FLAG_STR("--base-model", &base_model),
                                 LF_FLAG_BOOL("--rslora", &rslora),
                                 LF_FLAG_BOOL("--dora", &dora),
                                 LF_FLAG_END};
    int arc = lf_args_parse("lora_tool", USAGE, argc, argv, 1, flags, args, 4, &npos);
    if (arc >= 0) return arc;
    if (npos < 1) return usage();
    const char *cmd = args[0];
    npos--; /* positionals after the command */
    lf_err err = {0};
    lf_model_config mc;
    lf_lora_adapter *ad = NULL;
    lf_dtype dtype = parse_dtype(dtype_s);
    if (dtype == LF_DTYPE_INVALID) return usage();
    if (!model_cfg) model_cfg = model;

    if (!strcmp(cmd, "roundtrip")) {
        if (npos != 2 || !model_cfg) return usage();
        if (lf_model_config_load(model_cfg, &mc, &err)) return fail_err(&err);
        if (lf_peft_load(pos[0], &mc, &ad, &err)) return fail_err(&err);
        lf_status st = lf_peft_save(ad, pos[1], dtype, &err);
        lf_lora_free(ad);
        return st ? fail_err(&err) : 0;
    }
    if (!strcmp(cmd, "init")) {
        if (npos != 1 || !model_cfg) return usage();
        if (lf_model_config_load(model_cfg, &mc, &err)) return fail_err(&err);
        lf_lora_config c = lf_lora_config_default();
        if (config && lf_peft_config_read(config, &c, &err)) return fail_err(&err);
        if (r >= 0) c.r = r;
        if (!isnan(alpha)) c.alpha = alpha;
        if (!isnan(dropout)) c.dropout = dropout;
        c.use_rslora |= rslora;
        c.use_dora |= dora;
        if (targets || regex || names) { /* flags replace the config's targets */
            c.target_regex[0] = '\0';
            c.n_target_names = 0;
        }
        if (targets && lf_lora_parse_modules(targets, &c.target_mask, &err)) return fail_err(&err);
        if (regex) snprintf(c.target_regex, sizeof c.target_regex, "%s", regex);
        if (names) {
            char *copy = strdup(names), *save = NULL;
            for (char *tok = strtok_r(copy, ",", &save); tok && c.n_target_names < LF_LORA_MAX_TARGETS;
                 tok = strtok_r(NULL, ",", &save))
                snprintf(c.target_names[c.n_target_names++], LF_LORA_NAME_MAX, "%s", tok);
            free(copy);
        }
        if (rank_pat && !parse_patterns(rank_pat, c.rank_pattern, &c.n_rank_pattern)) return usage();
        if (alpha_pat && !parse_patterns(alpha_pat, c.alpha_pattern, &c.n_alpha_pattern)) return usage();
        if (init_s) {
            if (!strcmp(init_s, "true")) c.init = LF_LORA_INIT_DEFAULT;
            else if (!strcmp(init_s, "false")) c.init = LF_LORA_INIT_RANDOM;
            else if (!strcmp(init_s, "gaussian")) c.init = LF_LORA_INIT_GAUSSIAN;
            else return usage();
        }
        if (base_model) snprintf(c.base_model_name_or_path, sizeof c.base_model_name_or_path, "%s", base_model);
        if (lf_lora_create(&c, &mc, &ad, &err)) return fail_err(&err);
        lf_lora_init_peft(ad, seed);
        lf_status st = LF_OK;
        if (c.use_dora) {
            rows_ctx rc = {NULL, &mc};
            st = lf_st_model_open(model_cfg, &rc.m, &err);
            if (!st) st = lf_lora_init_dora(ad, rows_fn, &rc, &err);
            lf_st_model_close(rc.m);
        }
        if (!st) st = lf_peft_save(ad, pos[0], dtype, &err);
        lf_lora_free(ad);
        return st ? fail_err(&err) : 0;
    }
    if (!strcmp(cmd, "merge")) {
        if (npos != 2 || !model) return usage();
        if (lf_model_config_load(model, &mc, &err)) return fail_err(&err);
        if (lf_peft_load(pos[0], &mc, &ad, &err)) return fail_err(&err);
        rows_ctx rc = {NULL, &mc};
        lf_st_writer *w = NULL;
        float *buf = NULL;
        lf_status st = lf_st_model_open(model, &rc.m, &err);
        int64_t total = 0;
        for (int64_t i = 0; i < ad->L * LF_MOD_COUNT; i++)
            if (ad->slots[i].present) total += ad->slots[i].OC * ad->slots[i].IN;
        if (!st) {
            w = lf_st_writer_create();
            buf = malloc((size_t)total * sizeof(float));
            if (!w || !buf) st = lf_err_set(&err, LF_ENOMEM, "out of memory");
        }
        int64_t off = 0;
        for (int64_t i = 0; !st && i < ad->L * LF_MOD_COUNT; i++) {
            const lf_lora_slot *s = &ad->slots[i];
            if (!s->present) continue;
            int64_t l = i / LF_MOD_COUNT;
            lf_module m = (lf_module)(i % LF_MOD_COUNT);
            float *W = buf + off;
            off += s->OC * s->IN;
            st = rows_fn(&rc, l, m, 0, s->OC, W, &err);
            if (!st) st = lf_lora_merge_weight(ad, l, m, W, &err);
            char name[160];
            snprintf(name, sizeof name, "model.layers.%" PRId64 ".%s.%s.weight", l, lf_module_parent(m), lf_module_name(m));
            int64_t shape[2] = {s->OC, s->IN};
            if (!st) st = lf_st_writer_add(w, name, LF_DTYPE_F32, 2, shape, W, &err);
        }
        if (!st) st = lf_st_writer_write(w, pos[1], &err);
        lf_st_writer_free(w);
        free(buf);
        lf_st_model_close(rc.m);
        lf_lora_free(ad);
        return st ? fail_err(&err) : 0;
    }
    if (!strcmp(cmd, "info")) {
        if (npos != 1 || !model_cfg) return usage();
        if (lf_model_config_load(model_cfg, &mc, &err)) return fail_err(&err);
        if (lf_peft_load(pos[0], &mc, &ad, &err)) return fail_err(&err);
        printf("{\"n_params\": %" PRId64 ", \"n_slots\": %" PRId64 ", \"use_dora\": %d, \"use_rslora\": %d, "
               "\"target_mask\": %u, \"slots\": [",
               ad->n_params, ad->n_slots, ad->cfg.use_dora, ad->cfg.use_rslora, ad->cfg.target_mask);
        int first = 1;
        for (int64_t i = 0; i < ad->L * LF_MOD_COUNT; i++) {
            const lf_lora_slot *s = &ad->slots[i];
            if (!s->present) continue;
            printf("%s{\"layer\": %" PRId64 ", \"module\": \"%s\", \"r\": %" PRId64 ", \"alpha\": %.17g, \"scaling\": "
                   "%.17g, \"in\": %" PRId64 ", \"out\": %" PRId64 ", \"off_A\": %" PRId64 ", \"off_B\": %" PRId64
                   ", \"off_mag\": %" PRId64 "}",
                   first ? "" : ", ", i / LF_MOD_COUNT, lf_module_name((lf_module)(i % LF_MOD_COUNT)), s->R, s->alpha,
                   s->scaling, s->IN, s->OC, s->off_A, s->off_B, s->off_mag);
            first = 0;
        }
        printf("]}\n");
        lf_lora_free(ad);
        return 0;
    }
    fprintf(stderr, "lora_tool: unknown command '%s'\n", cmd);
    return usage();
}
