/* cmd_merge.c - `loraforge merge`: fold a PEFT LoRA/DoRA adapter into the base weights (PEFT's merge_and_unload)
 * and write a plain Hugging Face model directory that transformers, vLLM and llama.cpp's converter load. */
#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/peft_io.h"
#include "cli/cli.h"
#include "core/fileio.h"
#include "core/json.h"
#include "core/safetensors.h"
#include "model/model.h"
#include "quant/quant.h"

static const char *CMD = "merge";
static const char *const FLAGS[] = {"--model", "--adapter", "--out", "--dtype", NULL};

static void help(void) {
    printf("usage: loraforge merge --model DIR --adapter DIR --out DIR [--dtype bf16|f16|f32]\n\n"
           "Writes the base model with the adapter folded in: W' = W + s * B @ A (DoRA: m / ||W + s B A||_row *\n"
           "(W + s B A)), computed in f32 and stored in --dtype (default bf16), as model.safetensors + config.json\n"
           "(torch_dtype set, quantization_config removed) + the tokenizer and generation files. A 4-bit base is\n"
           "dequantized first. Every file is written atomically.\n");
}

int lf_cmd_merge(int argc, char **argv) {
    const char *model_dir = NULL, *adapter_dir = NULL, *out = NULL, *dts = "bf16";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help();
            return 0;
        }
        const char *v = lf_cli_flag_value(CMD, argc, argv, &i, FLAGS);
        if (!v) return 2;
        if (!strcmp(a, "--model")) model_dir = v;
        else if (!strcmp(a, "--adapter")) adapter_dir = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--dtype")) dts = v;
        else return lf_cli_unknown_option(CMD, a, FLAGS);
    }
    if (!model_dir || !adapter_dir || !out) {
        lf_cli_error(CMD, "--model, --adapter and --out are required (see --help)");
        return 2;
    }
    lf_dtype dt = !strcmp(dts, "bf16") ? LF_DTYPE_BF16 : !strcmp(dts, "f16") ? LF_DTYPE_F16
                : !strcmp(dts, "f32") ? LF_DTYPE_F32 : LF_DTYPE_U8;
    if (dt == LF_DTYPE_U8) {
        lf_cli_error(CMD, "--dtype '%s': accepted values are bf16, f16, f32", dts);
        return 2;
    }
    int rc = 1;
    lf_err err = {0};
    lf_backend *be = lf_backend_cpu_create(0);
    lf_model *m = NULL;
    lf_lora_adapter *ad = NULL;
    lf_st_model *src = NULL;
    lf_st_writer *w = NULL;
    json_t *cfg = NULL;
    void **bufs = NULL;
    int64_t nbufs = 0;
    char path[PATH_MAX], sp[PATH_MAX];
    DIR *d = NULL;
    if (!be || lf_model_load(model_dir, be, &m, &err) || lf_peft_load(adapter_dir, lf_model_get_config(m), &ad, &err) ||
        lf_st_model_open(model_dir, &src, &err) || lf_mkdirs(out, &err))
        goto fail;
    const lf_model_config *c = lf_model_get_config(m);
    w = lf_st_writer_create();
    bufs = calloc((size_t)lf_st_model_count(src) + 1, sizeof *bufs);
    if (!w || !bufs || lf_st_writer_set_meta(w, "format", "pt", &err)) goto oom;
    for (int64_t i = 0; i < lf_st_model_count(src); i++) {
        const lf_st_tensor *t = lf_st_model_at(src, i, NULL);
        if (strstr(t->name, ".weight.")) continue; /* bitsandbytes companions */
        long long l = -1;
        int used = 0, mod = -1;
        if (sscanf(t->name, "model.layers.%lld.%n", &l, &used) == 1 && used)
            for (int k = 0; k < LF_MOD_COUNT; k++) {
                char want[96];
                snprintf(want, sizeof want, "%s.%s.weight", lf_module_parent(k), lf_module_name(k));
                if (!strcmp(t->name + used, want)) mod = k;
            }
        int is_float = t->dtype == LF_DTYPE_F32 || t->dtype == LF_DTYPE_BF16 || t->dtype == LF_DTYPE_F16;
        if (mod < 0 && !is_float) { /* keep anything else as stored */
            if (lf_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &err)) goto fail;
            continue;
        }
        int64_t OC = t->shape[0], C = t->ndim > 1 ? t->shape[1] : 1, n = OC * C;
        if (mod >= 0) lf_module_shape(c, (lf_module)mod, &OC, &C), n = OC * C;
        else n = t->numel;
        float *f = malloc((size_t)n * sizeof(float));
        void *o = malloc((size_t)n * 4);
        if (!f || !o) {
            free(f);
            free(o);
            goto oom;
        }
        bufs[nbufs++] = o;
        const struct lf_quant_state *q = mod >= 0 ? lf_model_linear_q4(m, l, mod) : NULL;
        lf_status st = q ? lf_quant_dequantize_f32(f, q, NULL, &err) : lf_to_f32_n(f, t->data, t->dtype, n, &err);
        if (!st && mod >= 0 && lf_lora_get(ad, l, (lf_module)mod)) st = lf_lora_merge_weight(ad, l, (lf_module)mod, f, &err);
        if (!st) {
            if (dt == LF_DTYPE_F32) memcpy(o, f, (size_t)n * sizeof(float));
            else if (dt == LF_DTYPE_BF16) lf_f32_to_bf16_n(o, f, n);
            else lf_f32_to_f16_n(o, f, n);
        }
        free(f);
        if (st) goto fail;
        int64_t shp[2] = {OC, C};
        if (lf_st_writer_add(w, t->name, dt, mod >= 0 ? 2 : t->ndim, mod >= 0 ? shp : t->shape, o, &err)) goto fail;
    }
    if (lf_path_join(path, sizeof path, out, "model.safetensors", &err) || lf_st_writer_write(w, path, &err)) goto fail;
    if (lf_path_join(sp, sizeof sp, model_dir, "config.json", &err) || lf_json_load_file(sp, &cfg, &err)) goto fail;
    json_object_del(cfg, "quantization_config");
    json_object_set_new(cfg, "torch_dtype", json_string(dt == LF_DTYPE_BF16 ? "bfloat16" : dt == LF_DTYPE_F16 ? "float16" : "float32"));
    if (lf_path_join(path, sizeof path, out, "config.json", &err) || lf_json_write_file(path, cfg, &err)) goto fail;
    d = opendir(model_dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t k = strlen(e->d_name);
        if (e->d_name[0] == '.' || !strcmp(e->d_name, "config.json") || strstr(e->d_name, ".safetensors") ||
            (k > 5 && !strcmp(e->d_name + k - 5, ".json") && strstr(e->d_name, "index")))
            continue;
        if (lf_path_join(sp, sizeof sp, model_dir, e->d_name, &err) || lf_path_is_dir(sp)) continue;
        if (lf_path_join(path, sizeof path, out, e->d_name, &err) || lf_file_copy(sp, path, &err)) goto fail;
    }
    printf("merged %s (%lld modules) into %s -> %s (%s)\n", adapter_dir, (long long)ad->n_slots, model_dir, out, dts);
    rc = 0;
    goto done;
oom:
    lf_err_set(&err, LF_ENOMEM, "out of memory");
fail:
    lf_cli_error(CMD, "%s", err.msg[0] ? err.msg : "cannot create the cpu backend");
done:
    if (d) closedir(d);
    for (int64_t i = 0; i < nbufs; i++) free(bufs[i]);
    free(bufs);
    json_decref(cfg);
    lf_st_writer_free(w);
    lf_st_model_close(src);
    lf_lora_free(ad);
    lf_model_free(m);
    lf_backend_free(be);
    return rc;
}
