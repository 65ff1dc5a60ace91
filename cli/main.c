/* main.c - the loraforge binary: subcommand dispatch and top-level help. exit() happens only here. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/log.h"

#define LF_VERSION "0.1.0"

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} command;

static const command commands[] = {
    {"train", lf_cmd_train, "fine-tune a LoRA/QLoRA adapter (LLaMA-Factory-style config; see train --help)"},
    {"merge", lf_cmd_merge, "fold a PEFT LoRA/DoRA adapter into the base weights and write a model directory"},
    {"make-tiny", lf_cmd_make_tiny, "write a random-init Hugging Face model directory (tests, demo, benchmarks)"},
    {"score", lf_cmd_score, "write float32 logits [T, V] for a token sequence to a .npy file"},
    {"generate", lf_cmd_generate, "generate tokens from a prompt with a KV cache"},
    {"serve", lf_cmd_serve, "SageMaker-compatible HTTP endpoint: base model + many LoRA adapters, continuous batching"},
    {"tokenize", lf_cmd_tokenize, "text on stdin -> token ids (tokenizer.json)"},
    {"detokenize", lf_cmd_detokenize, "token ids on stdin -> text (tokenizer.json)"},
    {"chat-template", lf_cmd_chat_template, "render a conversation with a chat template (as transformers apply_chat_template)"},
    {"quantize", lf_cmd_quantize, "write a bitsandbytes 4-bit (NF4/FP4) checkpoint of a model"},
    {"inspect", lf_cmd_inspect, "list tensors, dtypes, shapes and sizes of a .safetensors file or model directory"},
};

static void usage(FILE *f) {
    fprintf(f, "loraforge %s - LoRA/QLoRA fine-tuning and multi-adapter serving\n\nusage: loraforge <command> [options]\n\ncommands:\n", LF_VERSION);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n`loraforge <command> --help` for the options of each command.\n"
               "Environment: LF_LOG_LEVEL=debug|info|warn|error\n");
}

int main(int argc, char **argv) {
    const char *lvl = getenv("LF_LOG_LEVEL");
    if (lvl) {
        int l = lf_log_level_from_name(lvl);
        if (l >= 0) lf_log_set_level((lf_log_level)l);
    }
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("loraforge %s\n", LF_VERSION);
        return 0;
    }
    const size_t n = sizeof commands / sizeof commands[0];
    const char *names[sizeof commands / sizeof commands[0] + 1];
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
        names[i] = commands[i].name;
    }
    names[n] = NULL;
    const char *near = lf_cli_suggest(argv[1], names);
    if (argv[1][0] == '-') fprintf(stderr, "loraforge: unknown option '%s'", argv[1]);
    else fprintf(stderr, "loraforge: unknown command '%s'", argv[1]);
    if (near) fprintf(stderr, "; did you mean '%s'?", near);
    fprintf(stderr, "\n\n");
    usage(stderr);
    return 2;
}
