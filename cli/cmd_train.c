/* cmd_train.c - `loraforge train [config.yaml|json] [--key value ...]`: LoRA/QLoRA supervised fine-tuning.
 * Configuration: LLaMA-Factory keys from a YAML/JSON file, SageMaker hyperparameters.json and --key value flags
 * (flags win), SageMaker environment defaults (core/config.h); the run itself is finetune/trainer.h. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "core/config.h"
#include "finetune/trainer.h"

static const char *CMD = "train";

static void help(void) {
    printf("usage: loraforge train [CONFIG.yaml|CONFIG.json] [--key value | --key=value | key=value ...]\n\n"
           "Supervised fine-tuning of a LoRA/DoRA adapter on a (4-bit) base model, with LLaMA-Factory's key\n"
           "names and defaults. Sources, lowest to highest precedence: defaults, SageMaker environment\n"
           "(SM_MODEL_DIR, SM_CHANNEL_*), the config file, /opt/ml/input/config/hyperparameters.json\n"
           "(or $SM_HP_PATH), command-line flags. Writes a PEFT adapter, logs and checkpoints to output_dir.\n"
           "SIGTERM/SIGINT: the current step finishes, a checkpoint is written, exit 0.\n"
           "Exit status: 0 done (or stopped on a signal with a checkpoint), 1 run failed, 2 bad configuration.\n\n");
    lf_config_print_help(stdout);
}

int lf_cmd_train(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            help();
            return 0;
        }
    lf_train_config cfg;
    lf_err err = {0};
    int rc = 2;
    if (lf_config_defaults(&cfg, &err) || lf_config_load_all(&cfg, argc - 1, argv + 1, NULL, NULL, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    lf_config_print(stdout, &cfg);
    lf_train_install_signal_handlers();
    lf_train_result res;
    rc = 1;
    if (lf_train_run(&cfg, &res, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    rc = 0;
done:
    lf_config_free(&cfg);
    fflush(stdout);
    return rc;
}
