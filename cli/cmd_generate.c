/* cmd_generate.c - `loraforge generate`: prefill a prompt, then sample new tokens with the KV cache. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/cli_device.h"
#include "kernels/backend.h"
#include "adapters/lora.h"
#include "model/model.h"
#include "model/sampler.h"
#include "model/tokenizer.h"

static const char *CMD = "generate";
static const char *const FLAGS[] = {"--model", "--adapter", "--tokens", "--prompt", "--max-new-tokens",
                                    "--temperature", "--top-k", "--top-p", "--seed", "--threads", "--ignore-eos", "--device",
                                    LF_CLI_MODEL_FLAG_NAMES, NULL};

static void help(void) {
    printf("usage: loraforge generate --model DIR (--tokens \"1 2 3\" | --prompt TEXT) [options]\n\n"
           "With --tokens, prints the generated token ids (space separated); with --prompt, streams the\n"
           "generated text (the prompt is encoded with the model's tokenizer, BOS as its config says).\n"
           "Timing goes to stderr.\n\n"
           "  --model DIR           Hugging Face model directory\n"
           "  --adapter DIR         apply a PEFT LoRA/DoRA adapter (unmerged)\n"
           "  --tokens IDS          prompt token ids\n"
           "  --prompt TEXT         prompt text (needs tokenizer.json in the model directory)\n"
           "  --max-new-tokens N    tokens to generate (default 32)\n"
           "  --temperature T       0 = greedy (default 0)\n"
           "  --top-k K             keep the K most likely tokens (default 0 = off)\n"
           "  --top-p P             nucleus sampling mass in (0, 1] (default 1 = off)\n"
           "  --seed S              sampling seed (default 0)\n"
           "  --ignore-eos          keep generating after an EOS token\n"
           "  --threads N           CPU threads (default: all cores)\n" LF_CLI_MODEL_OPTIONS_HELP LF_CLI_COMPUTE_HELP LF_CLI_DEVICE_HELP);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int lf_cmd_generate(int argc, char **argv) {
    const char *model_dir = NULL, *tokens_s = NULL, *prompt = NULL;
    int64_t threads = 0, max_new = 32, top_k = 0, seed = 0;
    double temperature = 0.0, top_p = 1.0;
    int ignore_eos = 0;
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
        if (!strcmp(a, "--ignore-eos")) {
            ignore_eos = 1;
            continue;
        }
        int mo = lf_cli_model_option(CMD, argc, argv, &i, &mopt, 0);
        if (mo < 0) return 2;
        if (mo) continue;
        const char *v = lf_cli_flag_value(CMD, argc, argv, &i, FLAGS);
        if (!v) return 2;
        int bad = 0;
        if (!strcmp(a, "--model")) model_dir = v;
        else if (!strcmp(a, "--adapter")) adapter_dir = v;
        else if (!strcmp(a, "--tokens")) tokens_s = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--max-new-tokens")) bad = lf_cli_parse_i64(CMD, a, v, 0, 1 << 24, &max_new);
        else if (!strcmp(a, "--temperature")) bad = lf_cli_parse_f64(CMD, a, v, 0.0, 1e6, &temperature);
        else if (!strcmp(a, "--top-k")) bad = lf_cli_parse_i64(CMD, a, v, 0, INT32_MAX, &top_k);
        else if (!strcmp(a, "--top-p")) bad = lf_cli_parse_f64(CMD, a, v, 1e-9, 1.0, &top_p);
        else if (!strcmp(a, "--seed")) bad = lf_cli_parse_i64(CMD, a, v, 0, INT64_MAX, &seed);
        else if (!strcmp(a, "--device")) { if (lf_cli_device_parse(CMD, v, &device)) return 2; }
        else if (!strcmp(a, "--threads")) bad = lf_cli_parse_i64(CMD, a, v, 0, 4096, &threads);
        else return lf_cli_unknown_option(CMD, a, FLAGS);
        if (bad) return 2;
    }
    if (!model_dir || (!tokens_s && !prompt) || (tokens_s && prompt)) {
        lf_cli_error(CMD, "--model and exactly one of --tokens / --prompt are required (see --help)");
        return 2;
    }
    int32_t *tokens = NULL;
    int64_t T = 0;
    int rc = 1;
    lf_err err = {0};
    lf_tokenizer *tok = NULL;
    lf_tokenizer_stream *stream = NULL;
    if (prompt) {
        if (lf_tokenizer_load(model_dir, &tok, &err) ||
            lf_tokenizer_encode(tok, prompt, strlen(prompt), 1, &tokens, &T, &err) ||
            lf_tokenizer_stream_create(tok, 1, &stream, &err)) {
            lf_cli_error(CMD, "%s", err.msg);
            lf_tokenizer_stream_free(stream);
            lf_tokenizer_free(tok);
            free(tokens);
            return 1;
        }
        if (T == 0) {
            lf_cli_error(CMD, "--prompt encodes to no tokens");
            lf_tokenizer_stream_free(stream);
            lf_tokenizer_free(tok);
            free(tokens);
            return 2;
        }
    } else if (lf_cli_parse_tokens(CMD, tokens_s, &tokens, &T)) {
        return 2;
    }
    lf_backend *be = NULL;
    lf_model *m = NULL;
    lf_session *s = NULL;
    lf_sampler *smp = NULL;
    float *logits = NULL;
    if (lf_cli_device_backend(CMD, &device, (int)threads, &be)) goto done;
    if (lf_model_load_opts(model_dir, be, &mopt, &m, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    if (adapter_dir && lf_cli_apply_adapter(CMD, m, adapter_dir, &adapter)) goto done;
    lf_cli_report_memory(CMD, m);
    const lf_model_config *cfg = lf_model_get_config(m);
    if (T + max_new > cfg->max_pos)
        fprintf(stderr, "loraforge generate: warning: %lld prompt + %lld new tokens exceed max_position_embeddings %lld\n",
                (long long)T, (long long)max_new, (long long)cfg->max_pos);
    lf_sampler_params sp = {(float)temperature, top_k, (float)top_p, (uint64_t)seed};
    if (lf_session_create(m, T + max_new, 512, &s, &err) || lf_sampler_create(cfg->V, &sp, &smp, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    logits = malloc((size_t)cfg->V * sizeof(float));
    if (!logits) {
        lf_cli_error(CMD, "out of memory");
        goto done;
    }
    double t0 = now_s();
    if (lf_session_forward(s, tokens, T, logits, 1, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    double t1 = now_s();
    int64_t ngen = 0;
    for (; ngen < max_new; ngen++) {
        int32_t next = lf_sampler_sample(smp, logits);
        int is_eos = 0;
        for (int e = 0; e < cfg->n_eos; e++) is_eos |= next == cfg->eos_ids[e];
        if (stream) {
            const char *piece = NULL;
            size_t plen = 0;
            if (lf_tokenizer_stream_push(stream, next, &piece, &plen, &err)) {
                lf_cli_error(CMD, "%s", err.msg);
                goto done;
            }
            fwrite(piece, 1, plen, stdout);
        } else {
            printf(ngen ? " %d" : "%d", next);
        }
        fflush(stdout);
        if (is_eos && !ignore_eos) {
            ngen++;
            break;
        }
        if (ngen + 1 < max_new && lf_session_forward(s, &next, 1, logits, 1, &err)) {
            printf("\n");
            lf_cli_error(CMD, "%s", err.msg);
            goto done;
        }
    }
    if (stream) {
        const char *piece = NULL;
        size_t plen = 0;
        if (lf_tokenizer_stream_flush(stream, &piece, &plen, &err) == LF_OK) fwrite(piece, 1, plen, stdout);
    }
    printf("\n");
    fflush(stdout);
    double t2 = now_s();
    fprintf(stderr, "loraforge generate: prompt %lld tokens in %.3f s (%.1f tok/s), generated %lld tokens in %.3f s (%.1f tok/s)\n",
            (long long)T, t1 - t0, (double)T / (t1 - t0 + 1e-12), (long long)ngen, t2 - t1, (double)ngen / (t2 - t1 + 1e-12));
    rc = 0;
done:
    lf_tokenizer_stream_free(stream);
    lf_tokenizer_free(tok);
    free(logits);
    free(tokens);
    lf_sampler_free(smp);
    lf_session_free(s);
    lf_model_free(m);
    lf_lora_free(adapter);
    lf_backend_free(be);
    return rc;
}
