/* cmd_quantize.c - `loraforge quantize`: write a model's decoder linears as a bitsandbytes 4-bit checkpoint
 * (the layout transformers saves for load_in_4bit models), loadable without re-quantizing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "kernels/backend.h"
#include "model/model.h"

static const char *CMD = "quantize";
static const char *const FLAGS[] = {"--model", "--out", "--threads", "--type", "--blocksize", LF_CLI_MODEL_FLAG_NAMES,
                                    NULL};

static void help(void) {
    printf("usage: loraforge quantize --model DIR --out DIR [--type nf4|fp4] [--blocksize N] [--no-double-quant]\n\n"
           "Quantizes q/k/v/o/gate/up/down of every decoder layer to 4 bits with bitsandbytes' semantics and writes\n"
           "the Hugging Face bitsandbytes layout: P.weight (packed U8 [(n+1)/2, 1]), P.weight.absmax, .quant_map,\n"
           ".nested_absmax, .nested_quant_map, .quant_state.bitsandbytes__nf4|fp4, and config.json's\n"
           "quantization_config. Embeddings, norms and lm_head keep their dtype. Tokenizer and generation files are\n"
           "copied. Every file is written atomically.\n\n"
           "  --model DIR        Hugging Face model directory (F32/BF16/F16 weights)\n"
           "  --out DIR          output directory (created; must differ from --model)\n"
           "  --type T           nf4 (default) or fp4\n"
           "  --blocksize N      elements per absmax block, a power of two in 32..4096 (default 64)\n"
           "  --no-double-quant  keep absmax in f32 (default: 8-bit double quantization)\n"
           "  --threads N        CPU threads (default: all cores)\n");
}

int lf_cmd_quantize(int argc, char **argv) {
    const char *model_dir = NULL, *out = NULL;
    int64_t threads = 0;
    lf_model_options mopt = lf_model_default_options();
    mopt.quant_bits = 4;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help();
            return 0;
        }
        int mo = lf_cli_model_option(CMD, argc, argv, &i, &mopt, 1);
        if (mo < 0) return 2;
        if (mo) continue;
        const char *v = lf_cli_flag_value(CMD, argc, argv, &i, FLAGS);
        if (!v) return 2;
        if (!strcmp(a, "--model")) model_dir = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--threads")) { if (lf_cli_parse_i64(CMD, a, v, 0, 4096, &threads)) return 2; }
        else return lf_cli_unknown_option(CMD, a, FLAGS);
    }
    if (!model_dir || !out) {
        lf_cli_error(CMD, "--model and --out are required (see --help)");
        return 2;
    }
    if (mopt.quant_bits != 4) {
        lf_cli_error(CMD, "quantize writes 4-bit checkpoints only");
        return 2;
    }
    int rc = 1;
    lf_err err = {0};
    lf_model *m = NULL;
    lf_backend *be = lf_backend_cpu_create((int)threads);
    if (!be) {
        lf_cli_error(CMD, "cannot create the cpu backend");
        return 1;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (lf_model_load_opts(model_dir, be, &mopt, &m, &err) || lf_model_save_quantized(m, out, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    lf_cli_report_memory(CMD, m);
    const lf_model_memory *mm = lf_model_get_memory(m);
    printf("quantized %d matrices (%s, blocksize %lld%s) of %s into %s in %.2f s\n", mm->n_q4,
           mopt.quant_type ? "fp4" : "nf4", (long long)mopt.quant_blocksize,
           mopt.double_quant ? ", double quantization" : "", model_dir, out,
           (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    rc = 0;
done:
    lf_model_free(m);
    lf_backend_free(be);
    return rc;
}
