/* cmd_score.c - `loraforge score`: float32 logits [T, V] for every position of a token sequence, as .npy. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/cli_device.h"
#include "core/npy.h"
#include "kernels/backend.h"
#include "adapters/lora.h"
#include "model/model.h"

static const char *CMD = "score";
static const char *const FLAGS[] = {"--model", "--adapter", "--tokens", "--out", "--threads", "--chunk", "--device",
                                    LF_CLI_MODEL_FLAG_NAMES, NULL};

static void help(void) {
    printf("usage: loraforge score --model DIR --tokens \"1 2 3\" --out logits.npy [--threads N] [--chunk N]\n\n"
           "Runs the model over the token ids and writes float32 logits [T, V] for every position.\n\n"
           "  --model DIR     Hugging Face model directory (config.json + safetensors)\n"
           "  --adapter DIR   apply a PEFT LoRA/DoRA adapter (unmerged)\n"
           "  --tokens IDS    token ids separated by spaces or commas\n"
           "  --out FILE      output .npy path (written atomically)\n"
           "  --threads N     CPU threads (default: all cores)\n"
           "  --chunk N       prefill chunk size in tokens (default 512)\n" LF_CLI_MODEL_OPTIONS_HELP LF_CLI_COMPUTE_HELP LF_CLI_DEVICE_HELP);
}

int lf_cmd_score(int argc, char **argv) {
    const char *model_dir = NULL, *tokens_s = NULL, *out = NULL;
    int64_t threads = 0, chunk = 512;
    lf_model_options mopt = lf_model_default_options();
    lf_cli_device device = {2, 0}; /* auto */
    const char *adapter_dir = NULL;
    lf_lora_adapter *adapter = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help();
            return 0;
        }
        int mo = lf_cli_model_option(CMD, argc, argv, &i, &mopt, 0);
        if (mo < 0) return 2;
        if (mo) continue;
        const char *v = lf_cli_flag_value(CMD, argc, argv, &i, FLAGS);
        if (!v) return 2;
        if (!strcmp(a, "--model")) model_dir = v;
        else if (!strcmp(a, "--adapter")) adapter_dir = v;
        else if (!strcmp(a, "--tokens")) tokens_s = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--device")) { if (lf_cli_device_parse(CMD, v, &device)) return 2; }
        else if (!strcmp(a, "--threads")) { if (lf_cli_parse_i64(CMD, a, v, 0, 4096, &threads)) return 2; }
        else if (!strcmp(a, "--chunk")) { if (lf_cli_parse_i64(CMD, a, v, 1, 1 << 20, &chunk)) return 2; }
        else return lf_cli_unknown_option(CMD, a, FLAGS);
    }
    if (!model_dir || !tokens_s || !out) {
        lf_cli_error(CMD, "--model, --tokens and --out are required (see --help)");
        return 2;
    }
    int32_t *tokens = NULL;
    int64_t T = 0;
    if (lf_cli_parse_tokens(CMD, tokens_s, &tokens, &T)) return 2;
    int rc = 1;
    lf_err err = {0};
    lf_backend *be = NULL;
    lf_model *m = NULL;
    lf_session *s = NULL;
    float *logits = NULL;
    if (lf_cli_device_backend(CMD, &device, (int)threads, &be)) goto done;
    if (lf_model_load_opts(model_dir, be, &mopt, &m, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    if (adapter_dir && lf_cli_apply_adapter(CMD, m, adapter_dir, &adapter)) goto done;
    if (lf_session_create(m, T, chunk, &s, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    if (lf_model_get_memory(m)->n_q4) lf_cli_report_memory(CMD, m);
    int64_t V = lf_model_get_config(m)->V;
    logits = malloc((size_t)(T * V) * sizeof(float));
    if (!logits) {
        lf_cli_error(CMD, "out of memory for %lld x %lld logits", (long long)T, (long long)V);
        goto done;
    }
    int64_t shape[2] = {T, V};
    if (lf_session_forward(s, tokens, T, logits, 0, &err) || lf_npy_write(out, logits, LF_DTYPE_F32, 2, shape, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    rc = 0;
done:
    free(logits);
    free(tokens);
    lf_session_free(s);
    lf_model_free(m);
    lf_lora_free(adapter);
    lf_backend_free(be);
    return rc;
}
