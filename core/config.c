/* config.c - the `loraforge train` schema and its readers (YAML, JSON, flags, hyperparameters.json, SageMaker
 * env), cross-key validation, help and JSON output. Every source turns its values into one cfg_val (null,
 * scalar text or list of texts) and goes through set_key, so conversion, range checks and error messages
 * are the same whatever the source. */
#include "core/config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "core/fileio.h"
#include "core/json.h"
#include "core/log.h"

#define F(field) offsetof(lf_train_config, field)
#define MINV LF_CFG_F_MIN
#define MAXV LF_CFG_F_MAX
#define NB LF_CFG_F_NULLABLE

/* ---- the schema ----------------------------------------------------------------------------------------
 * name, type, default, help, choices, unsupported, min, max, flags, section, note, offset */
static const lf_config_key SCHEMA[] = {
    /* model */
    {"model_name_or_path", LF_CFG_STRING, "none", "Base model directory (config.json, *.safetensors, tokenizer.json); local paths only",
     NULL, NULL, 0, 0, NB, "model", NULL, F(model_name_or_path)},
    {"adapter_name_or_path", LF_CFG_LIST, "none", "Existing PEFT LoRA adapter directory to continue training",
     NULL, NULL, 0, 0, NB, "model", NULL, F(adapter_name_or_path)},
    {"template", LF_CFG_STRING, "none", "Chat template name (llama3, qwen, mistral, ...); unset = the model's own chat_template",
     NULL, NULL, 0, 0, NB, "model", NULL, F(template_name)},
    {"trust_remote_code", LF_CFG_BOOL, "false", "Accepted for compatibility", NULL, NULL, 0, 0, LF_CFG_F_IGNORED, "model",
     "loraforge never runs model code from the model directory", F(trust_remote_code)},
    {"quantization_bit", LF_CFG_INT, "none", "Quantize the base model's linear layers on load (QLoRA): none or 4", "4",
     "2|3|5|6|8", 0, 0, NB, "model", NULL, F(quantization_bit)},
    {"quantization_method", LF_CFG_ENUM, "bnb", "On-the-fly quantization scheme (bitsandbytes-compatible blocks)",
     "bnb|bitsandbytes", "hqq|eetq|gptq|awq|aqlm|quanto", 0, 0, 0, "model", NULL, F(quantization_method)},
    {"quantization_type", LF_CFG_ENUM, "nf4", "4-bit data type with quantization_bit 4", "nf4|fp4", NULL, 0, 0, 0, "model",
     NULL, F(quantization_type)},
    {"double_quantization", LF_CFG_BOOL, "true", "Quantize the 4-bit absmax scales again (8-bit, block 256)", NULL, NULL, 0,
     0, 0, "model", NULL, F(double_quantization)},
    {"compute_dtype", LF_CFG_ENUM, "auto", "Activation dtype of the training forward (also bnb_4bit_compute_dtype): "
     "auto = float32, what the training ops compute in", "auto|float32|fp32", "bfloat16|bf16|float16|fp16", 0, 0, 0,
     "model", NULL, F(compute_dtype)},
    {"flash_attn", LF_CFG_ENUM, "auto", "Accepted for compatibility", "auto|disabled|sdpa|fa2|fa3", NULL, 0, 0,
     LF_CFG_F_IGNORED, "model", "the backend always uses its own fused attention", F(flash_attn)},
    {"disable_gradient_checkpointing", LF_CFG_BOOL, "false",
     "LLaMA-Factory recomputes activations in backward unless this is true", NULL, NULL, 0, 0, 0, "model", NULL,
     F(disable_gradient_checkpointing)},
    /* method */
    {"stage", LF_CFG_ENUM, "sft", "Training stage: supervised fine-tuning", "sft", "pt|rm|ppo|dpo|kto", 0, 0, 0, "method",
     NULL, F(stage)},
    {"finetuning_type", LF_CFG_ENUM, "lora", "Fine-tuning method (LoRA; with quantization_bit 4: QLoRA)", "lora",
     "full|freeze|oft", 0, 0, 0, "method", NULL, F(finetuning_type)},
    {"do_train", LF_CFG_BOOL, "true", "`loraforge train` always trains; false is rejected", NULL, NULL, 0, 0, 0, "method",
     NULL, F(do_train)},
    {"do_eval", LF_CFG_BOOL, "false", "Evaluate on the validation set after training (on by itself when eval_strategy != no)",
     NULL, NULL, 0, 0, 0, "method", NULL, F(do_eval)},
    {"lora_target", LF_CFG_LIST, "all", "Modules that get LoRA: all, or a comma list of projections",
     "all|q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj", NULL, 0, 0, 0, "method", NULL, F(lora_target)},
    {"lora_rank", LF_CFG_INT, "8", "LoRA rank r", NULL, NULL, 1, 0, MINV, "method", NULL, F(lora_rank)},
    {"lora_alpha", LF_CFG_INT, "none", "LoRA alpha (scale alpha/r, or alpha/sqrt(r) with use_rslora); default 2 * lora_rank",
     NULL, NULL, 1, 0, MINV | NB, "method", NULL, F(lora_alpha)},
    {"lora_dropout", LF_CFG_FLOAT, "0", "Dropout on the LoRA input", NULL, NULL, 0, 1, MINV | MAXV | LF_CFG_F_MAX_OPEN,
     "method", NULL, F(lora_dropout)},
    {"use_rslora", LF_CFG_BOOL, "false", "Rank-stabilized LoRA scale alpha/sqrt(r)", NULL, NULL, 0, 0, 0, "method", NULL,
     F(use_rslora)},
    {"use_dora", LF_CFG_BOOL, "false", "Weight-decomposed LoRA (DoRA)", NULL, NULL, 0, 0, 0, "method", NULL, F(use_dora)},
    /* dataset */
    {"dataset", LF_CFG_LIST, "none", "Training dataset name(s): entries of dataset_dir/dataset_info.json, comma-separated",
     NULL, NULL, 0, 0, NB, "dataset", NULL, F(dataset)},
    {"eval_dataset", LF_CFG_LIST, "none", "Evaluation dataset name(s), comma-separated", NULL, NULL, 0, 0, NB, "dataset",
     NULL, F(eval_dataset)},
    {"dataset_dir", LF_CFG_STRING, "data", "Folder holding the datasets and dataset_info.json (SageMaker: the training channel)",
     NULL, NULL, 0, 0, 0, "dataset", NULL, F(dataset_dir)},
    {"cutoff_len", LF_CFG_INT, "2048", "Maximum tokens per training sequence (longer examples are truncated)", NULL, NULL,
     1, 0, MINV, "dataset", NULL, F(cutoff_len)},
    {"max_samples", LF_CFG_INT, "none", "Use at most this many examples of each dataset", NULL, NULL, 1, 0, MINV | NB,
     "dataset", NULL, F(max_samples)},
    {"val_size", LF_CFG_FLOAT, "0", "Validation split taken from dataset: a fraction in [0,1) or a count (integer > 1)",
     NULL, NULL, 0, 0, MINV, "dataset", NULL, F(val_size)},
    {"train_on_prompt", LF_CFG_BOOL, "false", "Compute the loss on prompt tokens too", NULL, NULL, 0, 0, 0, "dataset", NULL,
     F(train_on_prompt)},
    {"mask_history", LF_CFG_BOOL, "false", "Train on the last turn only (earlier turns masked)", NULL, NULL, 0, 0, 0,
     "dataset", NULL, F(mask_history)},
    {"packing", LF_CFG_BOOL, "false", "Pack several examples into each cutoff_len sequence", NULL, NULL, 0, 0,
     LF_CFG_F_NOTE, "dataset",
     "loraforge packs without attention across examples (as LLaMA-Factory's neat_packing)", F(packing)},
    {"neat_packing", LF_CFG_BOOL, "false", "Packing without cross-example attention (implies packing)", NULL, NULL, 0, 0, 0,
     "dataset", NULL, F(neat_packing)},
    {"default_system", LF_CFG_STRING, "none", "System prompt used when an example has none", NULL, NULL, 0, 0, NB,
     "dataset", NULL, F(default_system)},
    {"overwrite_cache", LF_CFG_BOOL, "false", "Accepted for compatibility", NULL, NULL, 0, 0, LF_CFG_F_IGNORED, "dataset",
     "there is no preprocessing cache: examples are tokenized when loaded", F(overwrite_cache)},
    {"preprocessing_num_workers", LF_CFG_INT, "none", "Accepted for compatibility", NULL, NULL, 1, 0,
     MINV | NB | LF_CFG_F_IGNORED, "dataset", "tokenization uses the trainer's threads (see threads)",
     F(preprocessing_num_workers)},
    /* output */
    {"output_dir", LF_CFG_STRING, "none", "Where the adapter, logs and checkpoints go (SageMaker: SM_MODEL_DIR)", NULL, NULL,
     0, 0, NB, "output", NULL, F(output_dir)},
    {"overwrite_output_dir", LF_CFG_BOOL, "false", "Start afresh in a non-empty output_dir instead of resuming", NULL, NULL,
     0, 0, 0, "output", NULL, F(overwrite_output_dir)},
    {"logging_steps", LF_CFG_FLOAT, "500", "Log every N optimizer steps (< 1: a ratio of the total steps)", NULL, NULL, 0, 0,
     MINV | LF_CFG_F_MIN_OPEN | LF_CFG_F_STEPS, "output", NULL, F(logging_steps)},
    {"logging_first_step", LF_CFG_BOOL, "false", "Also log the first step", NULL, NULL, 0, 0, 0, "output", NULL,
     F(logging_first_step)},
    {"save_strategy", LF_CFG_ENUM, "steps", "When to write checkpoint-N/", "no|steps|epoch", "best", 0, 0, 0, "output", NULL,
     F(save_strategy)},
    {"save_steps", LF_CFG_FLOAT, "500", "Checkpoint every N steps with save_strategy steps (< 1: a ratio)", NULL, NULL, 0, 0,
     MINV | LF_CFG_F_MIN_OPEN | LF_CFG_F_STEPS, "output", NULL, F(save_steps)},
    {"save_total_limit", LF_CFG_INT, "none", "Keep at most N checkpoints (oldest deleted first)", NULL, NULL, 1, 0,
     MINV | NB, "output", NULL, F(save_total_limit)},
    {"save_only_model", LF_CFG_BOOL, "false", "Checkpoints hold the adapter only (no optimizer/RNG state: no exact resume)",
     NULL, NULL, 0, 0, 0, "output", NULL, F(save_only_model)},
    {"plot_loss", LF_CFG_BOOL, "false", "Write training_loss.svg into output_dir", NULL, NULL, 0, 0, 0, "output", NULL,
     F(plot_loss)},
    {"report_to", LF_CFG_LIST, "none", "Accepted for compatibility", NULL, NULL, 0, 0, LF_CFG_F_IGNORED, "output",
     "metrics go to trainer_log.jsonl and stdout (SageMaker metric regexes), never to external trackers", F(report_to)},
    {"run_name", LF_CFG_STRING, "none", "Name of the run in logs and trainer_state.json", NULL, NULL, 0, 0, NB, "output",
     NULL, F(run_name)},
    /* train */
    {"per_device_train_batch_size", LF_CFG_INT, "8", "Examples per device per micro-batch (transformers' default 8)", NULL,
     NULL, 1, 0, MINV, "train", NULL, F(per_device_train_batch_size)},
    {"gradient_accumulation_steps", LF_CFG_INT, "1", "Micro-batches per optimizer step", NULL, NULL, 1, 0, MINV, "train",
     NULL, F(gradient_accumulation_steps)},
    {"learning_rate", LF_CFG_FLOAT, "5e-5", "Peak AdamW learning rate", NULL, NULL, 0, 0, MINV, "train", NULL,
     F(learning_rate)},
    {"lr_scheduler_type", LF_CFG_ENUM, "linear", "Learning-rate schedule after warmup",
     "linear|cosine|constant|constant_with_warmup",
     "cosine_with_restarts|polynomial|inverse_sqrt|reduce_lr_on_plateau|cosine_with_min_lr|warmup_stable_decay", 0, 0, 0,
     "train", NULL, F(lr_scheduler_type)},
    {"warmup_steps", LF_CFG_INT, "0", "Linear warmup steps (overrides warmup_ratio when > 0)", NULL, NULL, 0, 0, MINV,
     "train", NULL, F(warmup_steps)},
    {"warmup_ratio", LF_CFG_FLOAT, "0", "Warmup as a fraction of the total steps", NULL, NULL, 0, 1, MINV | MAXV, "train",
     NULL, F(warmup_ratio)},
    {"weight_decay", LF_CFG_FLOAT, "0", "AdamW decoupled weight decay", NULL, NULL, 0, 0, MINV, "train", NULL,
     F(weight_decay)},
    {"adam_beta1", LF_CFG_FLOAT, "0.9", "AdamW beta1", NULL, NULL, 0, 1, MINV | MAXV | LF_CFG_F_MAX_OPEN, "train", NULL,
     F(adam_beta1)},
    {"adam_beta2", LF_CFG_FLOAT, "0.999", "AdamW beta2", NULL, NULL, 0, 1, MINV | MAXV | LF_CFG_F_MAX_OPEN, "train", NULL,
     F(adam_beta2)},
    {"adam_epsilon", LF_CFG_FLOAT, "1e-8", "AdamW epsilon", NULL, NULL, 0, 0, MINV, "train", NULL, F(adam_epsilon)},
    {"max_grad_norm", LF_CFG_FLOAT, "1.0", "Clip the global gradient norm to this (0 = no clipping)", NULL, NULL, 0, 0,
     MINV, "train", NULL, F(max_grad_norm)},
    {"optim", LF_CFG_ENUM, "adamw_torch", "Optimizer: AdamW with f32 state (8-bit variants are computed in f32)",
     "adamw_torch|adamw_torch_fused|adamw_hf|paged_adamw_32bit|paged_adamw_8bit|adamw_8bit|adamw_bnb_8bit",
     "adafactor|sgd|adagrad|rmsprop|lion_32bit|lion_8bit|paged_lion_32bit|paged_lion_8bit|galore_adamw|adamw_anyprecision",
     0, 0, 0, "train", NULL, F(optim)},
    {"num_train_epochs", LF_CFG_FLOAT, "3.0", "Passes over the training set (fractions allowed)", NULL, NULL, 0, 0, MINV,
     "train", NULL, F(num_train_epochs)},
    {"max_steps", LF_CFG_INT, "-1", "Total optimizer steps; > 0 overrides num_train_epochs", NULL, NULL, -1, 0, MINV,
     "train", NULL, F(max_steps)},
    {"gradient_checkpointing", LF_CFG_BOOL, "false", "Recompute activations in backward (see disable_gradient_checkpointing)",
     NULL, NULL, 0, 0, 0, "train", NULL, F(gradient_checkpointing)},
    {"seed", LF_CFG_INT, "42", "Seed for LoRA init, dropout, shuffling and splits", NULL, NULL, 0, 4294967295.0,
     MINV | MAXV, "train", NULL, F(seed)},
    {"bf16", LF_CFG_BOOL, "false", "bf16 mixed precision", NULL, NULL, 0, 0, LF_CFG_F_NOTE, "train",
     "compute dtype is chosen by the backend: bf16 on CUDA, f32 on CPU", F(bf16)},
    {"fp16", LF_CFG_BOOL, "false", "fp16 mixed precision", NULL, NULL, 0, 0, LF_CFG_F_NOTE, "train",
     "computed as bf16 on CUDA and f32 on CPU (no fp16 loss scaling)", F(fp16)},
    {"resume_from_checkpoint", LF_CFG_STRING, "none",
     "checkpoint-N directory to resume from, or true = the latest checkpoint in output_dir", NULL, NULL, 0, 0, NB,
     "train", NULL, F(resume_from_checkpoint)},
    {"dataloader_num_workers", LF_CFG_INT, "0", "Accepted for compatibility", NULL, NULL, 0, 0, MINV | LF_CFG_F_IGNORED,
     "train", "batches are built on the trainer's threads", F(dataloader_num_workers)},
    {"ddp_timeout", LF_CFG_INT, "1800", "Seconds to wait for other ranks (rendezvous and collectives)", NULL, NULL, 1, 0,
     MINV, "train", NULL, F(ddp_timeout)},
    /* eval */
    {"eval_strategy", LF_CFG_ENUM, "no", "When to evaluate (alias evaluation_strategy)", "no|steps|epoch", NULL, 0, 0, 0,
     "eval", NULL, F(eval_strategy)},
    {"eval_steps", LF_CFG_FLOAT, "none", "Evaluate every N steps with eval_strategy steps (default: logging_steps)", NULL,
     NULL, 0, 0, MINV | LF_CFG_F_MIN_OPEN | LF_CFG_F_STEPS | NB, "eval", NULL, F(eval_steps)},
    {"per_device_eval_batch_size", LF_CFG_INT, "8", "Examples per device per evaluation batch", NULL, NULL, 1, 0, MINV,
     "eval", NULL, F(per_device_eval_batch_size)},
    /* loraforge */
    {"device", LF_CFG_ENUM, "auto", "Where training runs: auto (the cpu until training runs on CUDA) or cpu", "auto|cpu",
     "cuda", 0, 0, LF_CFG_F_OURS, "loraforge", NULL, F(device)},
    {"threads", LF_CFG_INT, "0", "CPU threads (0 = all cores)", NULL, NULL, 0, 0, MINV | LF_CFG_F_OURS, "loraforge", NULL,
     F(threads)},
    {"checkpoint_dir", LF_CFG_STRING, "none",
     "Where checkpoint-N/ go (default output_dir; SageMaker: the CheckpointConfig local path)", NULL, NULL, 0, 0,
     NB | LF_CFG_F_OURS, "loraforge", NULL, F(checkpoint_dir)},
    {"output_data_dir", LF_CFG_STRING, "none",
     "Extra copy of logs and metrics (SageMaker: SM_OUTPUT_DATA_DIR -> output.tar.gz)", NULL, NULL, 0, 0,
     NB | LF_CFG_F_OURS, "loraforge", NULL, F(output_data_dir)},
    {"config", LF_CFG_STRING, "none", "YAML/JSON config file to load (as a flag or hyperparameter; like the positional file)",
     NULL, NULL, 0, 0, NB | LF_CFG_F_OURS, "loraforge", NULL, F(config)},
};
#define NKEYS (sizeof SCHEMA / sizeof SCHEMA[0])
_Static_assert(sizeof SCHEMA / sizeof SCHEMA[0] <= LF_CONFIG_MAX_KEYS, "raise LF_CONFIG_MAX_KEYS");

static const struct {
    const char *alias, *name;
} ALIASES[] = {{"evaluation_strategy", "eval_strategy"}, {"bnb_4bit_compute_dtype", "compute_dtype"}};

static const char *const SECTIONS[] = {"model", "method", "dataset", "output", "train", "eval", "loraforge"};

/* ---- small helpers ---- */
static size_t key_index(const lf_config_key *k) { return (size_t)(k - SCHEMA); }
static void *field_ptr(lf_train_config *cfg, const lf_config_key *k) { return (char *)cfg + k->offset; }
static const void *cfield_ptr(const lf_train_config *cfg, const lf_config_key *k) {
    return (const char *)cfg + k->offset;
}

static int ieq(const char *a, const char *b) {
    for (; *a && *b; a++, b++)
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return 0;
    return *a == *b;
}

static int is_none_word(const char *s) { return s[0] == '\0' || ieq(s, "none") || ieq(s, "null") || strcmp(s, "~") == 0; }

/* index of s in "a|b|c" (case-insensitive), -1 if absent */
static int choice_index(const char *choices, const char *s) {
    if (!choices) return -1;
    size_t n = strlen(s);
    int idx = 0;
    for (const char *p = choices;; idx++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n) {
            size_t i = 0;
            while (i < n && tolower((unsigned char)p[i]) == tolower((unsigned char)s[i])) i++;
            if (i == n) return idx;
        }
        if (!bar) return -1;
        p = bar + 1;
    }
}

/* Levenshtein distance, strings capped at 63 chars */
static int edit_distance(const char *a, const char *b) {
    int n = (int)strlen(a), m = (int)strlen(b);
    if (n > 63) n = 63;
    if (m > 63) m = 63;
    int row[64];
    for (int j = 0; j <= m; j++) row[j] = j;
    for (int i = 1; i <= n; i++) {
        int diag = row[0];
        row[0] = i;
        for (int j = 1; j <= m; j++) {
            int up = row[j];
            int cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
            int v = diag + cost;
            if (row[j] + 1 < v) v = row[j] + 1;
            if (row[j - 1] + 1 < v) v = row[j - 1] + 1;
            row[j] = v;
            diag = up;
        }
    }
    return row[m];
}

static int close_enough(const char *name, int d) {
    int len = (int)strlen(name);
    return d > 0 && d <= 4 && d * 3 <= len + 1;
}

/* The distance is at least the length difference: candidates more than 4 apart are never close_enough, so
 * skip computing it (unknown keys and values come from users, flags and fuzzers: keep the lookup cheap). */
static int edit_distance_near(const char *a, const char *b) {
    int n = (int)strlen(a), m = (int)strlen(b);
    if (n > 63) n = 63;
    if (m > 63) m = 63;
    return (n > m ? n - m : m - n) > 4 ? 1 << 20 : edit_distance(a, b);
}

/* closest entry of "a|b|c" to s, written into out; 0 if none is close */
static int suggest_choice(const char *choices, const char *s, char *out, size_t cap) {
    int best = 1 << 30;
    out[0] = '\0';
    if (!choices) return 0;
    char item[128];
    for (const char *p = choices;;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len < sizeof item) {
            memcpy(item, p, len);
            item[len] = '\0';
            int d = edit_distance_near(s, item);
            if (close_enough(item, d) && d < best) {
                best = d;
                snprintf(out, cap, "%s", item);
            }
        }
        if (!bar) break;
        p = bar + 1;
    }
    return out[0] != '\0';
}

const lf_config_key *lf_config_schema(size_t *n) {
    if (n) *n = NKEYS;
    return SCHEMA;
}

const lf_config_key *lf_config_find_key(const char *name) {
    char norm[128];
    size_t n = strlen(name);
    if (n == 0 || n >= sizeof norm) return NULL;
    for (size_t i = 0; i <= n; i++) norm[i] = name[i] == '-' ? '_' : name[i];
    for (size_t i = 0; i < sizeof ALIASES / sizeof ALIASES[0]; i++)
        if (strcmp(norm, ALIASES[i].alias) == 0) return lf_config_find_key(ALIASES[i].name);
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(norm, SCHEMA[i].name) == 0) return &SCHEMA[i];
    return NULL;
}

const char *lf_config_suggest_key(const char *name) {
    const char *best = NULL;
    int bd = 1 << 30;
    for (size_t i = 0; i < NKEYS; i++) {
        int d = edit_distance_near(name, SCHEMA[i].name);
        if (close_enough(SCHEMA[i].name, d) && d < bd) bd = d, best = SCHEMA[i].name;
    }
    for (size_t i = 0; i < sizeof ALIASES / sizeof ALIASES[0]; i++) {
        int d = edit_distance_near(name, ALIASES[i].alias);
        if (close_enough(ALIASES[i].alias, d) && d < bd) bd = d, best = ALIASES[i].alias;
    }
    return best;
}

const char *lf_config_enum_name(const lf_config_key *key, int index) {
    static _Thread_local char ring[4][64]; /* a few names may be used in one printf */
    static _Thread_local int slot;
    char *buf = ring[slot++ & 3];
    if (!key || key->type != LF_CFG_ENUM || index < 0) return NULL;
    const char *p = key->choices;
    for (int i = 0; i < index; i++) {
        p = strchr(p, '|');
        if (!p) return NULL;
        p++;
    }
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    if (len >= sizeof ring[0]) return NULL;
    memcpy(buf, p, len);
    buf[len] = '\0';
    return buf;
}

static void list_free(lf_config_list *l) {
    for (int i = 0; i < l->n; i++) free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

/* "accepted: ..." text for a key */
static void describe_accepted(const lf_config_key *k, char *out, size_t cap) {
    char range[160] = "";
    if (k->type == LF_CFG_INT || k->type == LF_CFG_FLOAT) {
        int hmin = (k->flags & LF_CFG_F_MIN) != 0, hmax = (k->flags & LF_CFG_F_MAX) != 0;
        if (hmin && hmax)
            snprintf(range, sizeof range, " in %c%.10g, %.10g%c", (k->flags & LF_CFG_F_MIN_OPEN) ? '(' : '[', k->min,
                     k->max, (k->flags & LF_CFG_F_MAX_OPEN) ? ')' : ']');
        else if (hmin)
            snprintf(range, sizeof range, " %s %.10g", (k->flags & LF_CFG_F_MIN_OPEN) ? ">" : ">=", k->min);
        else if (hmax)
            snprintf(range, sizeof range, " %s %.10g", (k->flags & LF_CFG_F_MAX_OPEN) ? "<" : "<=", k->max);
    }
    const char *nul = (k->flags & LF_CFG_F_NULLABLE) ? ", or none" : "";
    switch (k->type) {
    case LF_CFG_BOOL: snprintf(out, cap, "true or false (also yes/no, on/off, 1/0)"); break;
    case LF_CFG_INT:
        if (k->choices)
            snprintf(out, cap, "%s%s", k->choices, nul);
        else
            snprintf(out, cap, "an integer%s%s", range, nul);
        break;
    case LF_CFG_FLOAT:
        if (k->flags & LF_CFG_F_STEPS)
            snprintf(out, cap, "an integer >= 1, or a ratio of the total steps in (0, 1)%s", nul);
        else if (strcmp(k->name, "val_size") == 0)
            snprintf(out, cap, "a fraction in [0, 1) or an integer count > 1");
        else
            snprintf(out, cap, "a number%s%s", range, nul);
        break;
    case LF_CFG_STRING: snprintf(out, cap, "%s%s", (k->flags & LF_CFG_F_NULLABLE) ? "a string" : "a non-empty string", nul); break;
    case LF_CFG_ENUM: snprintf(out, cap, "%s", k->choices); break;
    case LF_CFG_LIST:
        if (k->choices)
            snprintf(out, cap, "a comma-separated or YAML/JSON list of %s", k->choices);
        else
            snprintf(out, cap, "a comma-separated or YAML/JSON list of names%s", nul);
        break;
    }
    /* choices are written "a|b|c": show them as "a, b, c" */
    char tmp[512];
    size_t j = 0;
    for (size_t i = 0; out[i] && j + 3 < sizeof tmp; i++) {
        if (out[i] == '|') {
            tmp[j++] = ',';
            tmp[j++] = ' ';
        } else {
            tmp[j++] = out[i];
        }
    }
    tmp[j] = '\0';
    snprintf(out, cap, "%s", tmp);
}

/* ---- values ---- */
enum { V_NULL, V_SCALAR, V_LIST };
typedef struct cfg_val {
    int kind;
    int quoted;         /* scalar was a quoted/JSON string: "none" stays a string for STRING/LIST keys */
    const char *text;   /* V_SCALAR */
    int n;              /* V_LIST */
    const char **items; /* V_LIST */
} cfg_val;

typedef struct parsed {
    int64_t i;
    double d;
    char *s;
    lf_config_list l;
} parsed;

static void val_text(const cfg_val *v, char *out, size_t cap) {
    if (v->kind == V_NULL) {
        snprintf(out, cap, "null");
    } else if (v->kind == V_SCALAR) {
        snprintf(out, cap, "%s", v->text);
    } else {
        size_t j = 0;
        out[j++] = '[';
        for (int i = 0; i < v->n && j + 4 < cap; i++) {
            int w = snprintf(out + j, cap - j, "%s%s", i ? ", " : "", v->items[i]);
            if (w < 0) break;
            j += (size_t)w;
            if (j >= cap) j = cap - 1;
        }
        if (j + 2 <= cap) out[j++] = ']';
        out[j < cap ? j : cap - 1] = '\0';
    }
    if (strlen(out) > 200) strcpy(out + 196, "...");
}

/* copy of s without leading/trailing whitespace */
static char *trimmed_dup(const char *s) {
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) n--;
    char *r = malloc(n + 1);
    if (!r) return NULL;
    memcpy(r, s, n);
    r[n] = '\0';
    return r;
}

static int parse_bool_text(const char *s, int *out) {
    static const char *t[] = {"true", "yes", "on", "t", "y", "1"}, *f[] = {"false", "no", "off", "f", "n", "0"};
    for (int i = 0; i < 6; i++) {
        if (ieq(s, t[i])) return *out = 1, 1;
        if (ieq(s, f[i])) return *out = 0, 1;
    }
    return 0;
}

/* a decimal number: [+-]digits[.digits][e[+-]digits]; no hex, inf or nan */
static int parse_double_text(const char *s, double *out) {
    const char *p = s;
    if (*p == '+' || *p == '-') p++;
    int digits = 0;
    while (isdigit((unsigned char)*p)) p++, digits++;
    if (*p == '.') {
        p++;
        while (isdigit((unsigned char)*p)) p++, digits++;
    }
    if (!digits) return 0;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        if (!isdigit((unsigned char)*p)) return 0;
        while (isdigit((unsigned char)*p)) p++;
    }
    if (*p) return 0;
    errno = 0;
    double d = strtod(s, NULL);
    if (!isfinite(d)) return 0;
    *out = d;
    return 1;
}

static int parse_int_text(const char *s, int64_t *out) {
    const char *p = s;
    if (*p == '+' || *p == '-') p++;
    if (!*p) return 0;
    const char *q = p;
    while (isdigit((unsigned char)*q)) q++;
    if (!*q) {
        errno = 0;
        long long v = strtoll(s, NULL, 10);
        if (errno == ERANGE) return 0;
        *out = v;
        return 1;
    }
    double d; /* "8.0", "1e3": integral numbers written as floats */
    if (!parse_double_text(s, &d) || d != floor(d) || fabs(d) > 9007199254740992.0) return 0;
    *out = (int64_t)d;
    return 1;
}

static int in_range(const lf_config_key *k, double v) {
    if (k->flags & LF_CFG_F_MIN) {
        if ((k->flags & LF_CFG_F_MIN_OPEN) ? !(v > k->min) : !(v >= k->min)) return 0;
    }
    if (k->flags & LF_CFG_F_MAX) {
        if ((k->flags & LF_CFG_F_MAX_OPEN) ? !(v < k->max) : !(v <= k->max)) return 0;
    }
    return 1;
}

static lf_status bad_value(const lf_config_key *k, const cfg_val *v, const char *where, const char *why, const char *hint,
                           lf_err *err) {
    char vt[256], acc[512];
    val_text(v, vt, sizeof vt);
    describe_accepted(k, acc, sizeof acc);
    return lf_err_set(err, LF_EINVAL, "%s: %s: invalid value \"%s\": %s (accepted: %s)%s", where, k->name, vt, why, acc,
                      hint ? hint : "");
}

static lf_status unsupported_value(const lf_config_key *k, const char *text, const char *where, lf_err *err) {
    char acc[512];
    describe_accepted(k, acc, sizeof acc);
    return lf_err_set(err, LF_EUNSUPPORTED, "%s: %s: \"%s\" is %s that loraforge does not support yet (accepted: %s)",
                      where, k->name, text, (k->flags & LF_CFG_F_OURS) ? "a value" : "a LLaMA-Factory value", acc);
}

/* one scalar text into p (already known to be non-null) */
static lf_status parse_scalar(const lf_config_key *k, const cfg_val *v, const char *text, const char *where, parsed *p,
                              lf_err *err) {
    char hint[160];
    switch (k->type) {
    case LF_CFG_BOOL: {
        int b;
        if (!parse_bool_text(text, &b)) return bad_value(k, v, where, "not a boolean", NULL, err);
        p->i = b;
        return LF_OK;
    }
    case LF_CFG_INT: {
        int64_t i;
        if (!parse_int_text(text, &i)) return bad_value(k, v, where, "not an integer", NULL, err);
        if (k->choices) {
            char num[32];
            snprintf(num, sizeof num, "%lld", (long long)i);
            if (choice_index(k->choices, num) < 0) {
                if (choice_index(k->unsupported, num) >= 0) return unsupported_value(k, num, where, err);
                return bad_value(k, v, where, "not one of the accepted values", NULL, err);
            }
        }
        if (!in_range(k, (double)i)) return bad_value(k, v, where, "out of range", NULL, err);
        p->i = i;
        return LF_OK;
    }
    case LF_CFG_FLOAT: {
        double d;
        if (!parse_double_text(text, &d)) return bad_value(k, v, where, "not a number", NULL, err);
        if (!in_range(k, d)) return bad_value(k, v, where, "out of range", NULL, err);
        if ((k->flags & LF_CFG_F_STEPS) && d > 1 && d != floor(d))
            return bad_value(k, v, where, "a step count above 1 must be an integer", NULL, err);
        if (strcmp(k->name, "val_size") == 0 && d >= 1 && (d == 1 || d != floor(d)))
            return bad_value(k, v, where, "a count must be an integer > 1 (1.0 would hold out everything)", NULL, err);
        p->d = d;
        return LF_OK;
    }
    case LF_CFG_STRING:
        if (!text[0]) return bad_value(k, v, where, "empty", NULL, err);
        p->s = strdup(text);
        if (!p->s) return lf_err_set(err, LF_ENOMEM, "out of memory");
        return LF_OK;
    case LF_CFG_ENUM: {
        int idx = choice_index(k->choices, text);
        if (idx < 0) {
            if (choice_index(k->unsupported, text) >= 0) return unsupported_value(k, text, where, err);
            hint[0] = '\0';
            char s[128];
            if (suggest_choice(k->choices, text, s, sizeof s)) snprintf(hint, sizeof hint, "; did you mean \"%s\"?", s);
            return bad_value(k, v, where, "not one of the accepted values", hint[0] ? hint : NULL, err);
        }
        p->i = idx;
        return LF_OK;
    }
    case LF_CFG_LIST: break;
    }
    return lf_err_set(err, LF_EINVAL, "%s: %s: internal: bad scalar type", where, k->name);
}

static lf_status list_push(lf_config_list *l, const char *item, lf_err *err) {
    char **items = realloc(l->items, (size_t)(l->n + 1) * sizeof *items);
    if (!items) return lf_err_set(err, LF_ENOMEM, "out of memory");
    l->items = items;
    char *s = trimmed_dup(item);
    if (!s) return lf_err_set(err, LF_ENOMEM, "out of memory");
    if (!s[0]) {
        free(s);
        return LF_OK;
    }
    l->items[l->n++] = s;
    return LF_OK;
}

/* list key: items (a list, or a scalar split on commas) checked against choices */
static lf_status parse_list(const lf_config_key *k, const cfg_val *v, const char *where, parsed *p, lf_err *err) {
    lf_status st = LF_OK;
    if (v->kind == V_LIST) {
        for (int i = 0; i < v->n; i++) {
            if (strchr(v->items[i], ',')) { /* ["q_proj,v_proj"] is allowed too */
                cfg_val one = {V_SCALAR, 1, v->items[i], 0, NULL};
                parsed sub = {0};
                LF_TRY(parse_list(k, &one, where, &sub, err));
                for (int j = 0; j < sub.l.n; j++) {
                    lf_status s2 = list_push(&p->l, sub.l.items[j], err);
                    if (s2) {
                        list_free(&sub.l);
                        st = s2;
                        goto fail;
                    }
                }
                list_free(&sub.l);
            } else {
                LF_TRY(list_push(&p->l, v->items[i], err));
            }
        }
    } else {
        const char *s = v->text;
        char item[512];
        while (1) {
            const char *c = strchr(s, ',');
            size_t len = c ? (size_t)(c - s) : strlen(s);
            if (len >= sizeof item) {
                st = bad_value(k, v, where, "list item too long", NULL, err);
                goto fail;
            }
            memcpy(item, s, len);
            item[len] = '\0';
            LF_TRY(list_push(&p->l, item, err));
            if (!c) break;
            s = c + 1;
        }
    }
    if (k->choices) {
        for (int i = 0; i < p->l.n; i++) {
            if (choice_index(k->choices, p->l.items[i]) < 0) {
                char hint[160] = "", sug[128], why[256];
                if (suggest_choice(k->choices, p->l.items[i], sug, sizeof sug))
                    snprintf(hint, sizeof hint, "; did you mean \"%s\"?", sug);
                snprintf(why, sizeof why, "unknown item \"%s\"", p->l.items[i]);
                st = bad_value(k, v, where, why, hint[0] ? hint : NULL, err);
                goto fail;
            }
            for (char *c = p->l.items[i]; *c; c++) *c = (char)tolower((unsigned char)*c);
        }
    }
    return LF_OK;
fail:
    list_free(&p->l);
    return st;
}

static void set_origin(lf_train_config *cfg, const lf_config_key *k, lf_config_source src, const char *where) {
    lf_config_origin *o = &cfg->origin[key_index(k)];
    o->src = src;
    snprintf(o->where, sizeof o->where, "%s", where ? where : "");
}

static void commit(lf_train_config *cfg, const lf_config_key *k, parsed *p) {
    void *f = field_ptr(cfg, k);
    switch (k->type) {
    case LF_CFG_BOOL:
    case LF_CFG_ENUM: *(int *)f = (int)p->i; break;
    case LF_CFG_INT: *(int64_t *)f = p->i; break;
    case LF_CFG_FLOAT: *(double *)f = p->d; break;
    case LF_CFG_STRING:
        free(*(char **)f);
        *(char **)f = p->s;
        p->s = NULL;
        break;
    case LF_CFG_LIST:
        list_free((lf_config_list *)f);
        *(lf_config_list *)f = p->l;
        p->l.n = 0;
        p->l.items = NULL;
        break;
    }
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF). */
static int utf8_ok(const char *str) {
    const unsigned char *s = (const unsigned char *)str;
    while (*s) {
        unsigned c = *s, k, cp, min;
        if (c < 0x80) {
            s++;
            continue;
        }
        if ((c & 0xE0) == 0xC0) k = 1, cp = c & 0x1F, min = 0x80;
        else if ((c & 0xF0) == 0xE0) k = 2, cp = c & 0x0F, min = 0x800;
        else if ((c & 0xF8) == 0xF0) k = 3, cp = c & 0x07, min = 0x10000;
        else return 0;
        for (unsigned j = 1; j <= k; j++) {
            if ((s[j] & 0xC0) != 0x80) return 0; /* also stops at the NUL */
            cp = (cp << 6) | (s[j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        s += k + 1;
    }
    return 1;
}

/* The one way a value enters a config. A source ranked below the key's current source is ignored. */
static lf_status set_key(lf_train_config *cfg, const lf_config_key *k, const cfg_val *v, lf_config_source src,
                         const char *where, lf_err *err) {
    lf_config_origin *o = &cfg->origin[key_index(k)];
    if (src < o->src) return LF_OK;
    if (!where || !where[0]) where = "config";
    /* values are written back as JSON (lf_config_to_json, trainer_state.json): text only. YAML and JSON
     * sources are UTF-8 already; flags and lf_config_set can carry any bytes. */
    int bad_utf8 = v->kind == V_SCALAR && v->text && !utf8_ok(v->text);
    for (int i = 0; v->kind == V_LIST && i < v->n && !bad_utf8; i++) bad_utf8 = v->items[i] && !utf8_ok(v->items[i]);
    if (bad_utf8) return lf_err_set(err, LF_EINVAL, "%s: %s: value is not valid UTF-8 text", where, k->name);
    parsed p = {0};
    lf_status st = LF_OK;
    int nullable = (k->flags & LF_CFG_F_NULLABLE) != 0;
    int is_null = v->kind == V_NULL;
    /* "none"/"null"/"" unquoted (or quoted, where the key is not a string or list) means unset */
    if (v->kind == V_SCALAR && nullable && is_none_word(v->text) &&
        (!v->quoted || v->text[0] == '\0' || (k->type != LF_CFG_STRING && k->type != LF_CFG_LIST)))
        is_null = 1;
    if (is_null) {
        if (nullable && is_none_word(k->def)) { /* unset */
            if (k->type == LF_CFG_INT) p.i = LF_CONFIG_UNSET;
            if (k->type == LF_CFG_FLOAT) p.d = LF_CONFIG_UNSET;
        } else { /* null means "the default" */
            cfg_val dv = {V_SCALAR, 0, k->def, 0, NULL};
            return set_key(cfg, k, &dv, src, where, err);
        }
    } else if (k->type == LF_CFG_LIST) {
        LF_TRY(parse_list(k, v, where, &p, err));
    } else if (v->kind == V_LIST) {
        if (v->n == 1 && k->type != LF_CFG_STRING) { /* [4] for a scalar key: take the element */
            cfg_val one = {V_SCALAR, v->quoted, v->items[0], 0, NULL};
            return set_key(cfg, k, &one, src, where, err);
        }
        return bad_value(k, v, where, "a list where one value is expected", NULL, err);
    } else {
        char *t = (k->type == LF_CFG_STRING) ? NULL : trimmed_dup(v->text);
        if (k->type != LF_CFG_STRING && !t) return lf_err_set(err, LF_ENOMEM, "out of memory");
        st = parse_scalar(k, v, t ? t : v->text, where, &p, err);
        free(t);
        if (st) goto fail;
    }
    commit(cfg, k, &p);
    set_origin(cfg, k, src, where);
    return LF_OK;
fail:
    free(p.s);
    list_free(&p.l);
    return st;
}

lf_status lf_config_set(lf_train_config *cfg, const char *key, const char *value, lf_config_source src,
                        const char *where, lf_err *err) {
    const lf_config_key *k = lf_config_find_key(key);
    if (!k) return lf_err_set(err, LF_ENOTFOUND, "%s: unknown key \"%s\"", where ? where : "config", key);
    cfg_val v = {value ? V_SCALAR : V_NULL, 0, value, 0, NULL};
    return set_key(cfg, k, &v, src, where, err);
}

static void warn_unknown(const char *where, const char *key) {
    const char *s = lf_config_suggest_key(key);
    if (s)
        LF_LOG(LF_LOG_WARN, "%s: unknown key \"%s\" ignored; did you mean \"%s\"?", where, key, s);
    else
        LF_LOG(LF_LOG_WARN, "%s: unknown key \"%s\" ignored (see `loraforge train --help`)", where, key);
}

/* ---- lifecycle ---- */
void lf_config_free(lf_train_config *cfg) {
    if (!cfg) return;
    for (size_t i = 0; i < NKEYS; i++) {
        if (SCHEMA[i].type == LF_CFG_STRING) {
            char **s = field_ptr(cfg, &SCHEMA[i]);
            free(*s);
            *s = NULL;
        } else if (SCHEMA[i].type == LF_CFG_LIST) {
            list_free(field_ptr(cfg, &SCHEMA[i]));
        }
    }
    memset(cfg, 0, sizeof *cfg);
}

lf_status lf_config_defaults(lf_train_config *cfg, lf_err *err) {
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < NKEYS; i++) {
        cfg_val v = {V_SCALAR, 0, SCHEMA[i].def, 0, NULL};
        lf_status st = set_key(cfg, &SCHEMA[i], &v, LF_CFG_SRC_DEFAULT, "default", err);
        if (st) return lf_err_wrap(err, st, "schema default of %s", SCHEMA[i].name);
        cfg->origin[i].where[0] = '\0';
    }
    return LF_OK;
}

/* ---- YAML ---- */
static int yaml_is_null(const yaml_node_t *n) {
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return 0;
    const char *s = (const char *)n->data.scalar.value;
    return n->data.scalar.length == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
           strcmp(s, "NULL") == 0;
}

static int yaml_scalar_ok(const yaml_node_t *n) { /* no embedded NUL */
    return strlen((const char *)n->data.scalar.value) == n->data.scalar.length;
}

lf_status lf_config_load_yaml_buffer(lf_train_config *cfg, const char *buf, size_t len, const char *label,
                                     lf_err *err) {
    yaml_parser_t parser;
    yaml_document_t doc;
    int have_doc = 0;
    const char **items = NULL;
    unsigned char seen_line[LF_CONFIG_MAX_KEYS] = {0};
    int seen_at[LF_CONFIG_MAX_KEYS] = {0};
    lf_status st = LF_OK;
    char where[LF_CONFIG_WHERE_MAX];
    if (!yaml_parser_initialize(&parser)) return lf_err_set(err, LF_ENOMEM, "%s: cannot initialize the YAML parser", label);
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
    if (!yaml_parser_load(&parser, &doc)) {
        st = lf_err_set(err, LF_EFORMAT, "%s:%zu:%zu: invalid YAML: %s%s%s", label, parser.problem_mark.line + 1,
                        parser.problem_mark.column + 1, parser.problem ? parser.problem : "parse error",
                        parser.context ? " " : "", parser.context ? parser.context : "");
        goto fail;
    }
    have_doc = 1;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root || yaml_is_null(root)) goto done; /* empty file: nothing to apply */
    if (root->type != YAML_MAPPING_NODE) {
        st = lf_err_set(err, LF_EFORMAT, "%s:%zu: the top level must be a mapping of key: value", label,
                        root->start_mark.line + 1);
        goto fail;
    }
    for (yaml_node_pair_t *pair = root->data.mapping.pairs.start; pair < root->data.mapping.pairs.top; pair++) {
        yaml_node_t *kn = yaml_document_get_node(&doc, pair->key), *vn = yaml_document_get_node(&doc, pair->value);
        size_t line = kn->start_mark.line + 1;
        snprintf(where, sizeof where, "%s:%zu", label, line);
        if (kn->type != YAML_SCALAR_NODE || !yaml_scalar_ok(kn)) {
            st = lf_err_set(err, LF_EFORMAT, "%s: keys must be plain names", where);
            goto fail;
        }
        const char *key = (const char *)kn->data.scalar.value;
        const lf_config_key *k = lf_config_find_key(key);
        if (!k) {
            warn_unknown(where, key);
            continue;
        }
        if (strcmp(k->name, "config") == 0) { /* e.g. a resolved config written by lf_config_to_json */
            LF_LOG(LF_LOG_DEBUG, "%s: \"config\" inside a config file is ignored (files do not nest)", where);
            continue;
        }
        size_t ki = key_index(k);
        if (seen_line[ki])
            LF_LOG(LF_LOG_WARN, "%s: %s is given twice (first at line %d); the last one wins", where, k->name, seen_at[ki]);
        seen_line[ki] = 1;
        seen_at[ki] = (int)line;
        cfg_val v = {V_NULL, 0, NULL, 0, NULL};
        if (vn->type == YAML_SCALAR_NODE) {
            if (!yaml_scalar_ok(vn)) {
                st = lf_err_set(err, LF_EFORMAT, "%s: %s: value contains a NUL byte", where, k->name);
                goto fail;
            }
            if (!yaml_is_null(vn)) {
                v.kind = V_SCALAR;
                v.text = (const char *)vn->data.scalar.value;
                v.quoted = vn->data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
            }
        } else if (vn->type == YAML_SEQUENCE_NODE) {
            int n = (int)(vn->data.sequence.items.top - vn->data.sequence.items.start);
            free(items);
            items = calloc((size_t)(n ? n : 1), sizeof *items);
            if (!items) {
                st = lf_err_set(err, LF_ENOMEM, "out of memory");
                goto fail;
            }
            v.kind = V_LIST;
            v.n = n;
            v.items = items;
            for (int i = 0; i < n; i++) {
                yaml_node_t *it = yaml_document_get_node(&doc, vn->data.sequence.items.start[i]);
                if (it->type != YAML_SCALAR_NODE || yaml_is_null(it) || !yaml_scalar_ok(it)) {
                    st = lf_err_set(err, LF_EINVAL, "%s:%zu: %s: list items must be plain values", label,
                                    it->start_mark.line + 1, k->name);
                    goto fail;
                }
                items[i] = (const char *)it->data.scalar.value;
            }
        } else {
            char acc[512];
            describe_accepted(k, acc, sizeof acc);
            st = lf_err_set(err, LF_EINVAL, "%s: %s: a nested mapping is not a valid value (accepted: %s)", where, k->name,
                            acc);
            goto fail;
        }
        LF_TRY(set_key(cfg, k, &v, LF_CFG_SRC_FILE, where, err));
    }
done:
    free(items);
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return LF_OK;
fail:
    free(items);
    if (have_doc) yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return st;
}

lf_status lf_config_load_yaml(lf_train_config *cfg, const char *path, lf_err *err) {
    char *buf = NULL;
    size_t len = 0;
    lf_status st = lf_file_read_all(path, &buf, &len, err);
    if (st) return lf_err_wrap(err, st, "config file");
    st = lf_config_load_yaml_buffer(cfg, buf, len, path, err);
    free(buf);
    return st;
}

/* ---- JSON ---- */
/* line of the first `"key" :` in buf (1-based), 0 if not found */
static int json_key_line(const char *buf, size_t len, const char *key) {
    size_t kl = strlen(key);
    for (size_t i = 0; i + kl + 2 <= len; i++) {
        if (buf[i] != '"' || memcmp(buf + i + 1, key, kl) != 0 || buf[i + 1 + kl] != '"') continue;
        size_t j = i + kl + 2;
        while (j < len && isspace((unsigned char)buf[j])) j++;
        if (j < len && buf[j] == ':') {
            int line = 1;
            for (size_t q = 0; q < i; q++) line += buf[q] == '\n';
            return line;
        }
    }
    return 0;
}

/* shortest "%.Ng" that reads back as d */
static void format_double(double d, char *out, size_t cap) {
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(out, cap, "%.*g", prec, d);
        if (strtod(out, NULL) == d) return;
    }
}

/* JSON value -> cfg_val; texts live in `store` (n_store slots of 64 bytes) or in the JSON itself */
typedef struct json_conv {
    const char **items;
    char (*num)[40];
    int cap;
} json_conv;

static lf_status json_scalar_text(const json_t *j, char *numbuf, const char **out) {
    switch (json_typeof(j)) {
    case JSON_STRING: *out = json_string_value(j); return LF_OK;
    case JSON_INTEGER: snprintf(numbuf, 40, "%lld", (long long)json_integer_value(j)); *out = numbuf; return LF_OK;
    case JSON_REAL: format_double(json_real_value(j), numbuf, 40); *out = numbuf; return LF_OK;
    case JSON_TRUE: *out = "true"; return LF_OK;
    case JSON_FALSE: *out = "false"; return LF_OK;
    default: return LF_EINVAL;
    }
}

static lf_status json_to_val(const json_t *j, const lf_config_key *k, const char *where, cfg_val *v, json_conv *c,
                             lf_err *err) {
    memset(v, 0, sizeof *v);
    if (json_is_null(j)) return LF_OK;
    if (json_is_array(j)) {
        int n = (int)json_array_size(j);
        free(c->items);
        free(c->num);
        c->items = calloc((size_t)(n ? n : 1), sizeof *c->items);
        c->num = calloc((size_t)(n ? n : 1), sizeof *c->num);
        if (!c->items || !c->num) return lf_err_set(err, LF_ENOMEM, "out of memory");
        for (int i = 0; i < n; i++)
            if (json_scalar_text(json_array_get(j, (size_t)i), c->num[i], &c->items[i]))
                return lf_err_set(err, LF_EINVAL, "%s: %s: list items must be strings, numbers or booleans", where,
                                  k->name);
        v->kind = V_LIST;
        v->n = n;
        v->items = c->items;
        return LF_OK;
    }
    if (json_is_object(j)) {
        char acc[512];
        describe_accepted(k, acc, sizeof acc);
        return lf_err_set(err, LF_EINVAL, "%s: %s: an object is not a valid value (accepted: %s)", where, k->name, acc);
    }
    free(c->num);
    c->num = calloc(1, sizeof *c->num);
    if (!c->num) return lf_err_set(err, LF_ENOMEM, "out of memory");
    v->kind = V_SCALAR;
    v->quoted = json_is_string(j);
    json_scalar_text(j, c->num[0], &v->text);
    if (json_is_string(j) && strlen(v->text) != json_string_length(j))
        return lf_err_set(err, LF_EINVAL, "%s: %s: value contains a NUL byte", where, k->name);
    return LF_OK;
}

/* kind: 0 = config file, 1 = hyperparameters.json (string values decoded as JSON first) */
static lf_status load_json_object(lf_train_config *cfg, const char *buf, size_t len, const char *label, int hp,
                                  lf_err *err) {
    json_t *root = NULL, *decoded = NULL;
    json_conv conv = {0};
    lf_status st = LF_OK;
    char where[LF_CONFIG_WHERE_MAX];
    LF_TRY(lf_json_load_buffer(buf, len, label, &root, err));
    if (!json_is_object(root)) {
        st = lf_err_set(err, LF_EFORMAT, "%s: the top level must be a JSON object of key: value", label);
        goto fail;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        int line = json_key_line(buf, len, key);
        if (line)
            snprintf(where, sizeof where, "%s:%d", label, line);
        else
            snprintf(where, sizeof where, "%s", label);
        if (hp && (strncmp(key, "sagemaker_", 10) == 0 || key[0] == '_')) continue; /* SDK / tuner bookkeeping */
        const lf_config_key *k = lf_config_find_key(key);
        if (!k) {
            warn_unknown(where, key);
            continue;
        }
        if (!hp && strcmp(k->name, "config") == 0) {
            LF_LOG(LF_LOG_DEBUG, "%s: \"config\" inside a config file is ignored (files do not nest)", where);
            continue;
        }
        const json_t *use = val;
        cfg_val v;
        json_decref(decoded);
        decoded = NULL;
        if (hp && json_is_string(val)) { /* the toolkit's rule: try json.loads, else keep the raw string */
            json_error_t je;
            decoded = json_loadb(json_string_value(val), json_string_length(val), JSON_DECODE_ANY, &je);
            if (decoded) use = decoded;
        }
        LF_TRY(json_to_val(use, k, where, &v, &conv, err));
        if (hp && use == val && v.kind == V_SCALAR) v.quoted = 0; /* raw text such as True, None, q_proj,v_proj */
        LF_TRY(set_key(cfg, k, &v, hp ? LF_CFG_SRC_HPARAMS : LF_CFG_SRC_FILE, where, err));
    }
fail:
    json_decref(decoded);
    json_decref(root);
    free(conv.items);
    free(conv.num);
    return st;
}

lf_status lf_config_load_json_buffer(lf_train_config *cfg, const char *buf, size_t len, const char *label,
                                     lf_err *err) {
    return load_json_object(cfg, buf, len, label, 0, err);
}

lf_status lf_config_load_json(lf_train_config *cfg, const char *path, lf_err *err) {
    char *buf = NULL;
    size_t len = 0;
    lf_status st = lf_file_read_all(path, &buf, &len, err);
    if (st) return lf_err_wrap(err, st, "config file");
    st = load_json_object(cfg, buf, len, path, 0, err);
    free(buf);
    return st;
}

lf_status lf_config_load_file(lf_train_config *cfg, const char *path, lf_err *err) {
    size_t n = strlen(path);
    if (n >= 5 && ieq(path + n - 5, ".json")) return lf_config_load_json(cfg, path, err);
    return lf_config_load_yaml(cfg, path, err);
}

lf_status lf_config_load_hyperparameters(lf_train_config *cfg, const char *path, int *loaded, lf_err *err) {
    if (loaded) *loaded = 0;
    int optional = 0;
    if (!path) path = getenv("SM_HP_PATH");
    if (!path || !path[0]) path = LF_CONFIG_SM_HP_PATH, optional = 1;
    if (optional && !lf_path_exists(path)) return LF_OK;
    char *buf = NULL;
    size_t len = 0;
    lf_status st = lf_file_read_all(path, &buf, &len, err);
    if (st) return lf_err_wrap(err, st, "SageMaker hyperparameters");
    st = load_json_object(cfg, buf, len, path, 1, err);
    free(buf);
    if (!st && loaded) *loaded = 1;
    return st;
}

/* ---- flags ---- */
static int looks_like_config_file(const char *s) {
    size_t n = strlen(s);
    return (n >= 5 && (ieq(s + n - 5, ".yaml") || ieq(s + n - 5, ".json"))) || (n >= 4 && ieq(s + n - 4, ".yml"));
}

lf_status lf_config_load_flags(lf_train_config *cfg, int argc, char **argv, const char **file_out, lf_err *err) {
    char name[128], where[LF_CONFIG_WHERE_MAX];
    if (file_out) *file_out = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *eq = strchr(a, '=');
        int dashed = a[0] == '-' && a[1] == '-';
        if (!dashed && a[0] == '-' && a[1] && !isdigit((unsigned char)a[1]))
            return lf_err_set(err, LF_EINVAL, "command line: unknown option \"%s\" (keys are given as --key value)", a);
        if (!dashed && (!eq || eq == a)) { /* positional: the config file */
            if (!file_out) return lf_err_set(err, LF_EINVAL, "command line: unexpected argument \"%s\"", a);
            if (*file_out)
                return lf_err_set(err, LF_EINVAL, "command line: two config files given (\"%s\" and \"%s\")", *file_out, a);
            *file_out = a;
            continue;
        }
        const char *kstart = dashed ? a + 2 : a;
        size_t klen = eq ? (size_t)(eq - kstart) : strlen(kstart);
        if (klen == 0 || klen >= sizeof name)
            return lf_err_set(err, LF_EINVAL, "command line: malformed argument \"%s\"", a);
        memcpy(name, kstart, klen);
        name[klen] = '\0';
        snprintf(where, sizeof where, "command line %s%s", dashed ? "--" : "", name);
        const lf_config_key *k = lf_config_find_key(name);
        const char *value = eq ? eq + 1 : NULL;
        if (!value) { /* --key value, or a bare boolean --flag */
            const char *next = i + 1 < argc ? argv[i + 1] : NULL;
            int b;
            if (k && k->type == LF_CFG_BOOL) {
                if (next && parse_bool_text(next, &b)) value = argv[++i];
                /* "--packing maybe": a word that is not a flag, key=value or a config file is a bad value of this
                 * key (named in the error), not a positional config file that "cannot open" */
                else if (next && strncmp(next, "--", 2) != 0 && !strchr(next, '=') && !looks_like_config_file(next) &&
                         !lf_path_exists(next))
                    value = argv[++i];
                else value = "true";
            } else if (!k) {
                if (next && strncmp(next, "--", 2) != 0 && !strchr(next, '=') && !looks_like_config_file(next)) i++;
            } else if (next && strncmp(next, "--", 2) != 0) {
                value = argv[++i];
            } else {
                char acc[512];
                describe_accepted(k, acc, sizeof acc);
                return lf_err_set(err, LF_EINVAL, "%s: missing value (accepted: %s)", where, acc);
            }
        }
        if (!k) {
            warn_unknown(where, name);
            continue;
        }
        cfg_val v = {V_SCALAR, 0, value, 0, NULL};
        lf_status st = set_key(cfg, k, &v, LF_CFG_SRC_FLAG, where, err);
        if (st) return st;
    }
    return LF_OK;
}

/* ---- SageMaker environment ---- */
static lf_status env_default(lf_train_config *cfg, const char *key, const char *value, const char *where, lf_err *err) {
    cfg_val v = {V_SCALAR, 1, value, 0, NULL};
    return set_key(cfg, lf_config_find_key(key), &v, LF_CFG_SRC_ENV, where, err);
}

/* first set env var among names[], else first existing directory <root>/input/data/<chan>[] in a job */
static lf_status channel_default(lf_train_config *cfg, const char *key, const char *const *envs,
                                 const char *const *chans, const char *root, int in_job, lf_err *err) {
    char where[LF_CONFIG_WHERE_MAX], path[1024];
    for (int i = 0; envs[i]; i++) {
        const char *v = getenv(envs[i]);
        if (v && v[0]) {
            snprintf(where, sizeof where, "env %s", envs[i]);
            return env_default(cfg, key, v, where, err);
        }
    }
    if (!in_job) return LF_OK;
    for (int i = 0; chans[i]; i++) {
        snprintf(path, sizeof path, "%s/input/data/%s", root, chans[i]);
        if (lf_path_is_dir(path)) {
            snprintf(where, sizeof where, "SageMaker channel %s", chans[i]);
            return env_default(cfg, key, path, where, err);
        }
    }
    return LF_OK;
}

lf_status lf_config_apply_sagemaker_env(lf_train_config *cfg, const char *ml_root, lf_err *err) {
    const char *root = ml_root ? ml_root : LF_CONFIG_SM_ROOT;
    const char *tj = getenv("TRAINING_JOB_NAME"), *te = getenv("SM_TRAINING_ENV");
    int in_job = (tj && tj[0]) || (te && te[0]);
    char path[1024];
    lf_status st = LF_OK;
    const char *v = getenv("SM_MODEL_DIR");
    if (v && v[0]) {
        LF_TRY(env_default(cfg, "output_dir", v, "env SM_MODEL_DIR", err));
    } else if (in_job) {
        snprintf(path, sizeof path, "%s/model", root);
        LF_TRY(env_default(cfg, "output_dir", path, "SageMaker model directory", err));
    }
    static const char *const train_env[] = {"SM_CHANNEL_TRAINING", "SM_CHANNEL_TRAIN", "SM_CHANNEL_DATA", NULL};
    static const char *const train_ch[] = {"training", "train", "data", NULL};
    static const char *const model_env[] = {"SM_CHANNEL_MODEL", NULL}, *const model_ch[] = {"model", NULL};
    static const char *const ad_env[] = {"SM_CHANNEL_ADAPTER", NULL}, *const ad_ch[] = {"adapter", NULL};
    LF_TRY(channel_default(cfg, "dataset_dir", train_env, train_ch, root, in_job, err));
    LF_TRY(channel_default(cfg, "model_name_or_path", model_env, model_ch, root, in_job, err));
    LF_TRY(channel_default(cfg, "adapter_name_or_path", ad_env, ad_ch, root, in_job, err));
    v = getenv("SM_OUTPUT_DATA_DIR");
    if (v && v[0]) {
        LF_TRY(env_default(cfg, "output_data_dir", v, "env SM_OUTPUT_DATA_DIR", err));
    } else if (in_job) {
        snprintf(path, sizeof path, "%s/output/data", root);
        LF_TRY(env_default(cfg, "output_data_dir", path, "SageMaker output data directory", err));
    }
    char ckpt_cfg[1024];
    snprintf(ckpt_cfg, sizeof ckpt_cfg, "%s/input/config/checkpointconfig.json", root);
    if (lf_path_exists(ckpt_cfg)) {
        json_t *j = NULL;
        const char *local = NULL;
        snprintf(path, sizeof path, "%s/checkpoints", root);
        LF_TRY(lf_json_load_file(ckpt_cfg, &j, err));
        st = lf_json_str_opt(j, "LocalPath", path, &local, ckpt_cfg, err);
        if (!st) st = env_default(cfg, "checkpoint_dir", local, ckpt_cfg, err);
        json_decref(j);
        if (st) goto fail;
    }
    return LF_OK;
fail:
    return st;
}

/* ---- everything ---- */
lf_status lf_config_load_all(lf_train_config *cfg, int argc, char **argv, const char *hp_path, const char *ml_root,
                             lf_err *err) {
    const char *file = NULL;
    lf_status st = LF_OK;
    LF_TRY(lf_config_load_flags(cfg, argc, argv, &file, err));
    if (file) LF_TRY(lf_config_set(cfg, "config", file, LF_CFG_SRC_FLAG, "command line", err));
    LF_TRY(lf_config_load_hyperparameters(cfg, hp_path, NULL, err));
    if (cfg->config) LF_TRY(lf_config_load_file(cfg, cfg->config, err));
    LF_TRY(lf_config_apply_sagemaker_env(cfg, ml_root, err));
    LF_TRY(lf_config_validate(cfg, err));
    return LF_OK;
fail:
    return st;
}

/* ---- validation ---- */
static const lf_config_origin *origin(const lf_train_config *cfg, const char *key) {
    return &cfg->origin[key_index(lf_config_find_key(key))];
}
static int is_set(const lf_train_config *cfg, const char *key) { return origin(cfg, key)->src >= LF_CFG_SRC_ENV; }
/* " (x.yaml:3)" or " (default)" */
static const char *at(const lf_train_config *cfg, const char *key, char *buf, size_t cap) {
    const lf_config_origin *o = origin(cfg, key);
    if (o->src == LF_CFG_SRC_DEFAULT) snprintf(buf, cap, " (default)");
    else if (o->src == LF_CFG_SRC_DERIVED) snprintf(buf, cap, " (derived)");
    else snprintf(buf, cap, " (%s)", o->where);
    return buf;
}

/* Fill key from other keys unless the user gave it a value. unset: the key holds no value although it may have
 * been given explicitly as none/null (e.g. hyperparameters.json "lora_alpha": "null"): derive it anyway, as
 * LLaMA-Factory does for None, instead of running with the LF_CONFIG_UNSET sentinel. */
static lf_status derive(lf_train_config *cfg, const char *key, const char *text, const char *why, int unset,
                        lf_err *err) {
    const lf_config_key *k = lf_config_find_key(key);
    if (cfg->origin[key_index(k)].src > LF_CFG_SRC_DERIVED && !unset) return LF_OK;
    cfg->origin[key_index(k)].src = LF_CFG_SRC_DEFAULT; /* so that set_key takes the derived value */
    cfg_val v = {V_SCALAR, 1, text, 0, NULL};
    return set_key(cfg, k, &v, LF_CFG_SRC_DERIVED, why, err);
}

lf_status lf_config_validate(lf_train_config *cfg, lf_err *err) {
    char a1[LF_CONFIG_WHERE_MAX + 8], a2[LF_CONFIG_WHERE_MAX + 8], num[64];
    lf_status st = LF_OK;
    cfg->validated = 0;

    if (!cfg->do_train)
        return lf_err_set(err, LF_EUNSUPPORTED, "do_train: false%s: `loraforge train` always trains; remove do_train or set it true",
                          at(cfg, "do_train", a1, sizeof a1));
    if (!cfg->model_name_or_path)
        return lf_err_set(err, LF_EINVAL,
                          "model_name_or_path is required: set it in the config file, with --model_name_or_path, as a "
                          "hyperparameter, or give the SageMaker training job a \"model\" channel");
    if (!cfg->output_dir)
        return lf_err_set(err, LF_EINVAL,
                          "output_dir is required: set it in the config file or with --output_dir (on SageMaker it "
                          "defaults to SM_MODEL_DIR)");
    if (cfg->dataset.n == 0)
        return lf_err_set(err, LF_EINVAL,
                          "dataset is required: name the training dataset(s), comma-separated (entries of "
                          "%s/dataset_info.json)", cfg->dataset_dir);
    if (cfg->adapter_name_or_path.n > 1)
        return lf_err_set(err, LF_EUNSUPPORTED,
                          "adapter_name_or_path%s: %d adapters given; loraforge continues training one adapter (merge "
                          "the others into the base model first)", at(cfg, "adapter_name_or_path", a1, sizeof a1),
                          cfg->adapter_name_or_path.n);

    /* lora */
    snprintf(num, sizeof num, "%lld", (long long)(2 * cfg->lora_rank));
    LF_TRY(derive(cfg, "lora_alpha", num, "2 * lora_rank", cfg->lora_alpha == LF_CONFIG_UNSET, err));
    cfg->lora_target_mask = 0;
    for (int i = 0; i < cfg->lora_target.n; i++) {
        const char *t = cfg->lora_target.items[i];
        if (strcmp(t, "all") == 0) {
            if (cfg->lora_target.n != 1)
                return lf_err_set(err, LF_EINVAL,
                                  "lora_target%s: \"all\" cannot be combined with other modules (accepted: all, or a "
                                  "list of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)",
                                  at(cfg, "lora_target", a1, sizeof a1));
            cfg->lora_target_mask = LF_LORA_ALL;
        } else {
            const lf_config_key *k = lf_config_find_key("lora_target");
            cfg->lora_target_mask |= 1u << (choice_index(k->choices, t) - 1);
        }
    }
    if (!cfg->lora_target_mask)
        return lf_err_set(err, LF_EINVAL,
                          "lora_target%s: empty (accepted: all, or a list of q_proj, k_proj, v_proj, o_proj, gate_proj, "
                          "up_proj, down_proj)", at(cfg, "lora_target", a1, sizeof a1));

    /* data */
    if (cfg->mask_history && cfg->train_on_prompt)
        return lf_err_set(err, LF_EINVAL, "mask_history%s is incompatible with train_on_prompt%s",
                          at(cfg, "mask_history", a1, sizeof a1), at(cfg, "train_on_prompt", a2, sizeof a2));
    if (cfg->neat_packing && !cfg->packing) { /* as LLaMA-Factory: neat_packing forces packing */
        if (is_set(cfg, "packing"))
            LF_LOG(LF_LOG_INFO, "packing: false%s is overridden: neat_packing is true", at(cfg, "packing", a1, sizeof a1));
        cfg->packing = 1;
        set_origin(cfg, lf_config_find_key("packing"), LF_CFG_SRC_DERIVED, "neat_packing");
    }
    if (cfg->eval_dataset.n > 0 && cfg->val_size > 1e-6)
        return lf_err_set(err, LF_EINVAL, "val_size%s cannot be combined with eval_dataset%s: use one validation source",
                          at(cfg, "val_size", a1, sizeof a1), at(cfg, "eval_dataset", a2, sizeof a2));

    /* evaluation */
    if (cfg->eval_strategy != LF_STRATEGY_NO) LF_TRY(derive(cfg, "do_eval", "true", "eval_strategy", 0, err));
    if ((cfg->do_eval || cfg->eval_strategy != LF_STRATEGY_NO) && cfg->eval_dataset.n == 0 && cfg->val_size < 1e-6)
        return lf_err_set(err, LF_EINVAL,
                          "evaluation is on (do_eval = true%s, eval_strategy = %s%s) but there is no validation set: "
                          "set eval_dataset or val_size",
                          at(cfg, "do_eval", a1, sizeof a1),
                          lf_config_enum_name(lf_config_find_key("eval_strategy"), cfg->eval_strategy),
                          at(cfg, "eval_strategy", a2, sizeof a2));
    format_double(cfg->logging_steps, num, sizeof num);
    LF_TRY(derive(cfg, "eval_steps", num, "logging_steps", cfg->eval_steps == LF_CONFIG_UNSET, err));

    /* schedule */
    if (cfg->max_steps <= 0 && !(cfg->num_train_epochs > 0))
        return lf_err_set(err, LF_EINVAL,
                          "nothing to train: num_train_epochs is 0%s and max_steps is not set%s (accepted: "
                          "num_train_epochs > 0 or max_steps >= 1)",
                          at(cfg, "num_train_epochs", a1, sizeof a1), at(cfg, "max_steps", a2, sizeof a2));
    if (cfg->max_steps > 0 && is_set(cfg, "num_train_epochs"))
        LF_LOG(LF_LOG_INFO, "max_steps = %lld%s overrides num_train_epochs%s", (long long)cfg->max_steps,
               at(cfg, "max_steps", a1, sizeof a1), at(cfg, "num_train_epochs", a2, sizeof a2));
    if (cfg->warmup_steps > 0 && cfg->warmup_ratio > 0)
        LF_LOG(LF_LOG_INFO, "warmup_steps = %lld%s overrides warmup_ratio%s", (long long)cfg->warmup_steps,
               at(cfg, "warmup_steps", a1, sizeof a1), at(cfg, "warmup_ratio", a2, sizeof a2));
    if (cfg->bf16 && cfg->fp16)
        return lf_err_set(err, LF_EINVAL, "bf16%s and fp16%s: at most one mixed-precision type may be true",
                          at(cfg, "bf16", a1, sizeof a1), at(cfg, "fp16", a2, sizeof a2));

    /* quantization */
    if (cfg->quantization_bit == LF_CONFIG_UNSET) {
        if (is_set(cfg, "quantization_type") || is_set(cfg, "double_quantization"))
            LF_LOG(LF_LOG_INFO, "quantization_type / double_quantization have no effect without quantization_bit: 4");
    }

    /* resume */
    const char *r = cfg->resume_from_checkpoint;
    if (!r || ieq(r, "false")) cfg->resume_mode = LF_RESUME_NONE;
    else if (ieq(r, "true")) cfg->resume_mode = LF_RESUME_LATEST;
    else cfg->resume_mode = LF_RESUME_PATH;
    cfg->use_gradient_checkpointing = cfg->gradient_checkpointing || !cfg->disable_gradient_checkpointing;

    /* notes for keys that are accepted but change nothing (or not what LLaMA-Factory would) */
    for (size_t i = 0; i < NKEYS; i++) {
        const lf_config_key *k = &SCHEMA[i];
        if (!(k->flags & (LF_CFG_F_IGNORED | LF_CFG_F_NOTE)) || cfg->origin[i].src < LF_CFG_SRC_ENV || !k->note) continue;
        if (k->type == LF_CFG_BOOL && !*(const int *)cfield_ptr(cfg, k)) continue; /* "false" needs no note */
        if (strcmp(k->name, "report_to") == 0 && cfg->report_to.n == 1 && strcmp(cfg->report_to.items[0], "none") == 0)
            continue; /* what LLaMA-Factory's examples say, and what we do */
        LF_LOG(LF_LOG_INFO, "%s (%s): %s", k->name, cfg->origin[i].where, k->note);
    }
    if (cfg->optim >= LF_OPTIM_PAGED_ADAMW_8BIT && is_set(cfg, "optim"))
        LF_LOG(LF_LOG_INFO, "optim %s: AdamW state is kept in f32 (no 8-bit optimizer state)",
               lf_config_enum_name(lf_config_find_key("optim"), cfg->optim));
    cfg->validated = 1;
    return LF_OK;
fail:
    return st;
}

int64_t lf_config_resolve_steps(double steps, int64_t total_steps) {
    if (steps <= 0) return 1;
    if (steps < 1) {
        double v = ceil(steps * (double)(total_steps > 0 ? total_steps : 1));
        return v < 1 ? 1 : (int64_t)v;
    }
    return (int64_t)steps;
}

/* ---- output ---- */
static json_t *key_json(const lf_train_config *cfg, const lf_config_key *k) {
    const void *f = cfield_ptr(cfg, k);
    switch (k->type) {
    case LF_CFG_BOOL: return json_boolean(*(const int *)f);
    case LF_CFG_ENUM: return json_string(lf_config_enum_name(k, *(const int *)f));
    case LF_CFG_INT: {
        int64_t v = *(const int64_t *)f;
        if ((k->flags & LF_CFG_F_NULLABLE) && v == LF_CONFIG_UNSET) return json_null();
        return json_integer((json_int_t)v);
    }
    case LF_CFG_FLOAT: {
        double v = *(const double *)f;
        if ((k->flags & LF_CFG_F_NULLABLE) && v == LF_CONFIG_UNSET) return json_null();
        if ((k->flags & LF_CFG_F_STEPS) && v == floor(v) && v < 9e15) return json_integer((json_int_t)v);
        return json_real(v);
    }
    case LF_CFG_STRING: {
        const char *s = *(char *const *)f;
        return s ? json_string(s) : json_null();
    }
    case LF_CFG_LIST: {
        const lf_config_list *l = f;
        /* empty: unset where the key may be unset; else an explicit [] (null would read back as the default,
         * e.g. lora_target "all", and lf_config_validate refuses the empty list) */
        if (l->n == 0 && (k->flags & LF_CFG_F_NULLABLE)) return json_null();
        json_t *a = json_array();
        for (int i = 0; a && i < l->n; i++) json_array_append_new(a, json_string(l->items[i]));
        return a;
    }
    }
    return json_null();
}

lf_status lf_config_to_json(const lf_train_config *cfg, json_t **out, lf_err *err) {
    json_t *o = json_object();
    if (!o) return lf_err_set(err, LF_ENOMEM, "out of memory");
    for (size_t i = 0; i < NKEYS; i++) {
        json_t *v = key_json(cfg, &SCHEMA[i]);
        if (!v || json_object_set_new(o, SCHEMA[i].name, v)) {
            json_decref(o);
            return lf_err_set(err, LF_ENOMEM, "out of memory");
        }
    }
    *out = o;
    return LF_OK;
}

lf_status lf_config_origins_to_json(const lf_train_config *cfg, json_t **out, lf_err *err) {
    json_t *o = json_object();
    if (!o) return lf_err_set(err, LF_ENOMEM, "out of memory");
    for (size_t i = 0; i < NKEYS; i++) {
        const lf_config_origin *g = &cfg->origin[i];
        if (g->src == LF_CFG_SRC_DEFAULT) continue;
        if (json_object_set_new(o, SCHEMA[i].name, json_string(g->src == LF_CFG_SRC_DERIVED ? "derived" : g->where))) {
            json_decref(o);
            return lf_err_set(err, LF_ENOMEM, "out of memory");
        }
    }
    *out = o;
    return LF_OK;
}

static const char *type_label(const lf_config_key *k) {
    switch (k->type) {
    case LF_CFG_BOOL: return "BOOL";
    case LF_CFG_INT: return "INT";
    case LF_CFG_FLOAT: return "FLOAT";
    case LF_CFG_STRING: return "STR";
    case LF_CFG_ENUM: return "CHOICE";
    case LF_CFG_LIST: return "LIST";
    }
    return "?";
}

void lf_config_print_help(FILE *f) {
    fprintf(f,
            "usage: loraforge train [CONFIG.yaml|CONFIG.json] [--key value | --key=value | --flag | key=value ...]\n"
            "\n"
            "Keys are LLaMA-Factory's (and transformers' TrainingArguments), with their defaults. Sources, lowest to\n"
            "highest precedence: defaults < SageMaker env (SM_MODEL_DIR, SM_CHANNEL_*) < config file <\n"
            "/opt/ml/input/config/hyperparameters.json (or $SM_HP_PATH) < command line.\n");
    for (size_t s = 0; s < sizeof SECTIONS / sizeof SECTIONS[0]; s++) {
        fprintf(f, "\n%s:\n", SECTIONS[s]);
        for (size_t i = 0; i < NKEYS; i++) {
            const lf_config_key *k = &SCHEMA[i];
            if (strcmp(k->section, SECTIONS[s]) != 0) continue;
            char acc[512] = "";
            if (k->type == LF_CFG_ENUM || k->choices || (k->flags & (LF_CFG_F_MIN | LF_CFG_F_MAX))) describe_accepted(k, acc, sizeof acc);
            fprintf(f, "  --%-30s %-6s %s\n", k->name, type_label(k), k->help);
            fprintf(f, "  %-32s %-6s default: %s%s%s%s%s\n", "", "", k->def, acc[0] ? "; accepted: " : "", acc,
                    k->note ? "; note: " : "", k->note ? k->note : "");
        }
    }
    fprintf(f, "\nAliases: evaluation_strategy = eval_strategy. Unknown keys are warned about and ignored.\n");
}

static void format_value(const lf_train_config *cfg, const lf_config_key *k, char *out, size_t cap) {
    if (k->type == LF_CFG_FLOAT && *(const double *)cfield_ptr(cfg, k) != LF_CONFIG_UNSET) { /* 0.05, not %.17g */
        format_double(*(const double *)cfield_ptr(cfg, k), out, cap);
        return;
    }
    json_t *v = key_json(cfg, k);
    char *s = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    snprintf(out, cap, "%s", s ? s : "?");
    free(s);
    json_decref(v);
}

void lf_config_print(FILE *f, const lf_train_config *cfg) {
    char val[512];
    for (size_t i = 0; i < NKEYS; i++) {
        const lf_config_origin *o = &cfg->origin[i];
        if (o->src == LF_CFG_SRC_DEFAULT) continue;
        format_value(cfg, &SCHEMA[i], val, sizeof val);
        fprintf(f, "  %s = %s  (%s)\n", SCHEMA[i].name, val, o->src == LF_CFG_SRC_DERIVED ? "derived" : o->where);
    }
}

const lf_config_origin *lf_config_origin_of(const lf_train_config *cfg, const char *key) {
    const lf_config_key *k = lf_config_find_key(key);
    return k ? &cfg->origin[key_index(k)] : NULL;
}
