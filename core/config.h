/* config.h - `loraforge train` configuration: one schema with LLaMA-Factory / transformers key names and
 * defaults, read from YAML, JSON, command-line flags and SageMaker's hyperparameters.json, plus the
 * SageMaker training-container defaults (SM_MODEL_DIR, SM_CHANNEL_<NAME>, SM_OUTPUT_DATA_DIR, ...).
 *
 * Precedence is by source rank, not by call order (a value never replaces one from a higher-ranked source;
 * equal ranks: the later call wins):
 *     default < derived < SageMaker env < config file (YAML/JSON) < hyperparameters.json < command-line flag
 * so `loraforge train x.yaml --learning_rate 1e-4` overrides the file, and a SageMaker hyperparameter
 * overrides the YAML baked into the image or passed as a channel.
 *
 * Invariants: every field always holds a valid value of its type and range (a failed set leaves the field
 * and its origin unchanged); enum fields hold the index of their value in the key's `choices`; nullable
 * INT/FLOAT keys hold LF_CONFIG_UNSET when unset, nullable strings NULL. Unknown keys are warnings (with a
 * "did you mean"); invalid values are errors naming the source (file:line, flag, hyperparameters.json),
 * the key, the value and the accepted values. Cross-key rules and derived values (lora_alpha = 2*rank,
 * eval_steps = logging_steps, lora_target_mask, resume_mode, ...) are applied by lf_config_validate.
 *
 * Ownership: lf_train_config owns its strings and lists (lf_config_free releases them; the struct itself
 * belongs to the caller); the schema table and every const char* it returns are static. Not thread-safe
 * for concurrent writes to one config; reads of a validated config are. */
#ifndef LF_CORE_CONFIG_H
#define LF_CORE_CONFIG_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LF_CONFIG_MAX_KEYS 96
#define LF_CONFIG_WHERE_MAX 192
#define LF_CONFIG_UNSET (-1) /* value of an unset nullable INT or FLOAT key */

/* Default SageMaker paths (overridable: SM_HP_PATH env / function arguments). */
#define LF_CONFIG_SM_ROOT "/opt/ml"
#define LF_CONFIG_SM_HP_PATH "/opt/ml/input/config/hyperparameters.json"

/* ---- schema ---- */
typedef enum lf_config_type {
    LF_CFG_BOOL,   /* int field: 0/1. true/false, yes/no, on/off, t/f, y/n, 1/0 (any case) */
    LF_CFG_INT,    /* int64_t field */
    LF_CFG_FLOAT,  /* double field */
    LF_CFG_STRING, /* char* field (owned), NULL = unset */
    LF_CFG_ENUM,   /* int field: index into choices */
    LF_CFG_LIST,   /* lf_config_list field: YAML/JSON list or comma-separated string */
} lf_config_type;

enum {
    LF_CFG_F_NULLABLE = 1u << 0, /* "none"/"null" accepted: unset */
    LF_CFG_F_MIN = 1u << 1,      /* value >= min (or > min with F_MIN_OPEN) */
    LF_CFG_F_MAX = 1u << 2,      /* value <= max (or < max with F_MAX_OPEN) */
    LF_CFG_F_MIN_OPEN = 1u << 3,
    LF_CFG_F_MAX_OPEN = 1u << 4,
    LF_CFG_F_IGNORED = 1u << 5,  /* accepted for compatibility, has no effect; `note` says why */
    LF_CFG_F_STEPS = 1u << 6,    /* transformers step count: a ratio of total steps in (0,1), else an integer */
    LF_CFG_F_OURS = 1u << 7,     /* loraforge-specific key (not LLaMA-Factory / transformers) */
    LF_CFG_F_NOTE = 1u << 8,     /* has an effect, but `note` is printed when the key is set */
};

typedef struct lf_config_key {
    const char *name;
    lf_config_type type;
    const char *def;         /* default as text, parsed like any value ("none" = unset) */
    const char *help;        /* one line */
    const char *choices;     /* ENUM: "a|b|c"; LIST: allowed items or NULL (any); INT: allowed values or NULL */
    const char *unsupported; /* valid LLaMA-Factory values loraforge rejects (LF_EUNSUPPORTED), "a|b" or NULL */
    double min, max;         /* INT/FLOAT range, used with LF_CFG_F_MIN / LF_CFG_F_MAX */
    unsigned flags;          /* LF_CFG_F_* */
    const char *section;     /* model, method, dataset, output, train, eval, loraforge */
    const char *note;        /* printed once by lf_config_validate when an IGNORED/NOTE key is set, or NULL */
    size_t offset;           /* field offset in lf_train_config */
} lf_config_key;

/* The table (static). *n receives the number of keys. */
const lf_config_key *lf_config_schema(size_t *n);
/* Key by name or alias (evaluation_strategy -> eval_strategy; dashes read as underscores); NULL if unknown. */
const lf_config_key *lf_config_find_key(const char *name);
/* Closest schema key within a small edit distance, or NULL ("did you mean"). */
const char *lf_config_suggest_key(const char *name);
/* Name of value `index` of an ENUM key, or NULL. Points into a small per-thread ring of buffers: valid until
 * four more calls from the same thread (copy it to keep it). */
const char *lf_config_enum_name(const lf_config_key *key, int index);

/* ---- typed config ---- */
typedef struct lf_config_list {
    int n;
    char **items; /* n owned strings */
} lf_config_list;

typedef enum lf_config_source {
    LF_CFG_SRC_DEFAULT = 0,
    LF_CFG_SRC_DERIVED = 1, /* filled by lf_config_validate from other keys */
    LF_CFG_SRC_ENV = 2,     /* SageMaker environment / container layout */
    LF_CFG_SRC_FILE = 3,    /* YAML or JSON config file */
    LF_CFG_SRC_HPARAMS = 4, /* SageMaker hyperparameters.json */
    LF_CFG_SRC_FLAG = 5,    /* command line */
} lf_config_source;

typedef struct lf_config_origin {
    lf_config_source src;
    char where[LF_CONFIG_WHERE_MAX]; /* "train.yaml:12", "command line --lora_rank", "env SM_MODEL_DIR", "" */
} lf_config_origin;

/* Enum values, in the order of each key's `choices`. */
typedef enum { LF_STAGE_SFT = 0 } lf_config_stage;
typedef enum { LF_FT_LORA = 0 } lf_config_finetuning_type;
typedef enum { LF_QTYPE_NF4 = 0, LF_QTYPE_FP4 = 1 } lf_config_quant_type;
typedef enum { LF_QMETHOD_BNB = 0, LF_QMETHOD_BITSANDBYTES = 1 } lf_config_quant_method;
typedef enum { LF_ATTN_AUTO = 0, LF_ATTN_DISABLED, LF_ATTN_SDPA, LF_ATTN_FA2, LF_ATTN_FA3 } lf_config_flash_attn;
typedef enum {
    LF_CFG_SCHED_LINEAR = 0,
    LF_CFG_SCHED_COSINE = 1,
    LF_CFG_SCHED_CONSTANT = 2,
    LF_CFG_SCHED_CONSTANT_WITH_WARMUP = 3,
} lf_config_scheduler;
typedef enum { LF_STRATEGY_NO = 0, LF_STRATEGY_STEPS = 1, LF_STRATEGY_EPOCH = 2 } lf_config_strategy;
typedef enum {
    LF_OPTIM_ADAMW_TORCH = 0,
    LF_OPTIM_ADAMW_TORCH_FUSED,
    LF_OPTIM_ADAMW_HF,
    LF_OPTIM_PAGED_ADAMW_32BIT,
    LF_OPTIM_PAGED_ADAMW_8BIT, /* computed as f32 AdamW (note printed) */
    LF_OPTIM_ADAMW_8BIT,       /* idem */
    LF_OPTIM_ADAMW_BNB_8BIT,   /* idem */
} lf_config_optim;
/* resume_from_checkpoint, resolved by lf_config_validate */
typedef enum { LF_RESUME_NONE = 0, LF_RESUME_LATEST = 1, LF_RESUME_PATH = 2 } lf_config_resume;

/* lora_target_mask bits (set by lf_config_validate; "all" = every bit) */
enum {
    LF_LORA_Q_PROJ = 1u << 0,
    LF_LORA_K_PROJ = 1u << 1,
    LF_LORA_V_PROJ = 1u << 2,
    LF_LORA_O_PROJ = 1u << 3,
    LF_LORA_GATE_PROJ = 1u << 4,
    LF_LORA_UP_PROJ = 1u << 5,
    LF_LORA_DOWN_PROJ = 1u << 6,
    LF_LORA_ALL = 0x7fu,
};

typedef struct lf_train_config {
    /* model */
    char *model_name_or_path;
    lf_config_list adapter_name_or_path;
    char *template_name; /* key "template" */
    int trust_remote_code;
    int64_t quantization_bit; /* LF_CONFIG_UNSET or 4 */
    int quantization_method;  /* lf_config_quant_method */
    int quantization_type;    /* lf_config_quant_type */
    int double_quantization;
    int compute_dtype;        /* 0 auto, 1 float32, 2 fp32 (all f32: the training ops take f32 activations) */
    int flash_attn; /* lf_config_flash_attn */
    int device;     /* 0 auto, 1 cpu (cuda is refused until training runs there) */
    int disable_gradient_checkpointing;
    /* method */
    int stage;           /* lf_config_stage */
    int finetuning_type; /* lf_config_finetuning_type */
    int do_train, do_eval;
    lf_config_list lora_target;
    int64_t lora_rank;
    int64_t lora_alpha; /* LF_CONFIG_UNSET until validate derives 2 * lora_rank */
    double lora_dropout;
    int use_rslora, use_dora;
    /* dataset */
    lf_config_list dataset, eval_dataset;
    char *dataset_dir;
    int64_t cutoff_len;
    int64_t max_samples; /* LF_CONFIG_UNSET = all */
    double val_size;     /* fraction in [0,1) or a count >= 1 (integer) */
    int train_on_prompt, mask_history, packing, neat_packing;
    char *default_system;
    int overwrite_cache;
    int64_t preprocessing_num_workers;
    /* output */
    char *output_dir;
    int overwrite_output_dir;
    double logging_steps; /* LF_CFG_F_STEPS: < 1 is a ratio of total steps (lf_config_resolve_steps) */
    int logging_first_step;
    int save_strategy; /* lf_config_strategy */
    double save_steps;
    int64_t save_total_limit; /* LF_CONFIG_UNSET = keep all */
    int save_only_model;
    int plot_loss;
    lf_config_list report_to;
    char *run_name;
    /* train */
    int64_t per_device_train_batch_size;
    int64_t gradient_accumulation_steps;
    double learning_rate;
    int lr_scheduler_type; /* lf_config_scheduler */
    int64_t warmup_steps;
    double warmup_ratio;
    double weight_decay;
    double adam_beta1, adam_beta2, adam_epsilon;
    double max_grad_norm;
    int optim; /* lf_config_optim */
    double num_train_epochs;
    int64_t max_steps; /* <= 0: run num_train_epochs */
    int gradient_checkpointing;
    int64_t seed;
    int bf16, fp16;
    char *resume_from_checkpoint; /* path, "true"/"false" or NULL; see resume_mode */
    int64_t dataloader_num_workers;
    int64_t ddp_timeout; /* seconds */
    /* eval */
    int eval_strategy; /* lf_config_strategy */
    double eval_steps; /* LF_CONFIG_UNSET until validate copies logging_steps */
    int64_t per_device_eval_batch_size;
    /* loraforge */
    int64_t threads; /* CPU threads, 0 = all */
    char *checkpoint_dir;  /* NULL = output_dir */
    char *output_data_dir; /* NULL = none; extra copy of logs and metrics */
    char *config;          /* config file that was loaded (flags/hyperparameters only) */

    /* derived by lf_config_validate */
    uint32_t lora_target_mask;     /* LF_LORA_* */
    int resume_mode;               /* lf_config_resume; the path is resume_from_checkpoint */
    int use_gradient_checkpointing; /* LLaMA-Factory: on unless disable_gradient_checkpointing, or gradient_checkpointing */
    int validated;

    lf_config_origin origin[LF_CONFIG_MAX_KEYS]; /* by schema index */
} lf_train_config;

/* ---- lifecycle ---- */
/* Fill every key with its default (origin LF_CFG_SRC_DEFAULT). cfg need not be initialized; call
 * lf_config_free on it afterwards even on failure. */
lf_status lf_config_defaults(lf_train_config *cfg, lf_err *err);
/* Release owned strings and lists; the struct is left zeroed. NULL is a no-op. */
void lf_config_free(lf_train_config *cfg);

/* ---- sources ---- */
/* Set one key from text as a plain (unquoted) scalar; lists split on commas. `where` names the source in
 * errors and in the origin. Unknown key: LF_ENOTFOUND (no warning: the caller decides). */
lf_status lf_config_set(lf_train_config *cfg, const char *key, const char *value, lf_config_source src,
                        const char *where, lf_err *err);

/* A YAML mapping of key: value (scalars or lists of scalars). Errors carry path:line. */
lf_status lf_config_load_yaml(lf_train_config *cfg, const char *path, lf_err *err);
lf_status lf_config_load_yaml_buffer(lf_train_config *cfg, const char *buf, size_t len, const char *label,
                                     lf_err *err);
/* A JSON object of key: value (JSON types or strings). */
lf_status lf_config_load_json(lf_train_config *cfg, const char *path, lf_err *err);
lf_status lf_config_load_json_buffer(lf_train_config *cfg, const char *buf, size_t len, const char *label,
                                     lf_err *err);
/* Config file by extension: .json -> JSON, anything else (.yaml/.yml) -> YAML. */
lf_status lf_config_load_file(lf_train_config *cfg, const char *path, lf_err *err);

/* SageMaker hyperparameters.json: a JSON object of string values (the toolkit's rule: each value is tried
 * as JSON first, so "4", "\"4\"", "true", "True", "[\"q_proj\"]", "q_proj,v_proj" and "null" all work).
 * Keys starting with "sagemaker_" or "_" (SDK and tuner bookkeeping) are skipped silently.
 * path NULL: env SM_HP_PATH, else LF_CONFIG_SM_HP_PATH; a missing file is not an error only for that
 * last default (*loaded, if non-NULL, says whether a file was read). */
lf_status lf_config_load_hyperparameters(lf_train_config *cfg, const char *path, int *loaded, lf_err *err);

/* Command-line arguments (argv[0] is NOT skipped: pass argv + 1 after the subcommand):
 *   --key value | --key=value | --flag (booleans: true; the next argument is taken only if it is a boolean
 *   literal) | key=value (LLaMA-Factory / OmegaConf override style). Dashes in keys read as underscores.
 * A positional argument without '=' is the config file: stored in *file_out when file_out is non-NULL
 * (the string is argv's), else an error; two of them are an error. */
lf_status lf_config_load_flags(lf_train_config *cfg, int argc, char **argv, const char **file_out, lf_err *err);

/* SageMaker training-container defaults, each applied only where no file/hyperparameter/flag set the key
 * (source rank ENV):
 *   output_dir           <- SM_MODEL_DIR, else <ml_root>/model inside a training job
 *   dataset_dir          <- SM_CHANNEL_TRAINING | SM_CHANNEL_TRAIN | SM_CHANNEL_DATA, else
 *                           <ml_root>/input/data/{training,train,data} inside a training job (if a directory)
 *   model_name_or_path   <- SM_CHANNEL_MODEL, else <ml_root>/input/data/model (idem)
 *   adapter_name_or_path <- SM_CHANNEL_ADAPTER, else <ml_root>/input/data/adapter (idem)
 *   output_data_dir      <- SM_OUTPUT_DATA_DIR, else <ml_root>/output/data inside a training job
 *   checkpoint_dir       <- "LocalPath" of <ml_root>/input/config/checkpointconfig.json when that file
 *                           exists (default <ml_root>/checkpoints)
 * "Inside a training job" = env TRAINING_JOB_NAME (set by the platform) or SM_TRAINING_ENV (toolkit) is set.
 * ml_root NULL = LF_CONFIG_SM_ROOT. */
lf_status lf_config_apply_sagemaker_env(lf_train_config *cfg, const char *ml_root, lf_err *err);

/* Everything `loraforge train` does, in one call: flags (argc/argv as for lf_config_load_flags),
 * hyperparameters.json (hp_path as above), the config file (the positional argument, else the `config`
 * key from flags or hyperparameters), SageMaker env defaults, then lf_config_validate. cfg must hold
 * defaults (lf_config_defaults). */
lf_status lf_config_load_all(lf_train_config *cfg, int argc, char **argv, const char *hp_path, const char *ml_root,
                             lf_err *err);

/* Cross-key rules and derived values; logs notes for accepted-but-ignored keys. Idempotent. Errors name
 * the keys and where each was set. Rules: model_name_or_path, output_dir and dataset required; do_train
 * cannot be false; lora_alpha defaults to 2*lora_rank; lora_target "all" alone or a list of the seven
 * projections; at most one adapter; mask_history excludes train_on_prompt; neat_packing implies packing;
 * val_size >= 1 must be an integer and excludes eval_dataset; evaluation (do_eval or eval_strategy != no)
 * needs eval_dataset or val_size; eval_steps defaults to logging_steps; num_train_epochs > 0 unless
 * max_steps > 0 (max_steps wins, noted); warmup_steps > 0 overrides warmup_ratio (noted); bf16 excludes
 * fp16; quantization_type/double_quantization without quantization_bit are noted as unused. */
lf_status lf_config_validate(lf_train_config *cfg, lf_err *err);

/* ---- output ---- */
/* Every key with its value (null when unset), LLaMA-Factory-typed (lists as arrays, quantization_bit as a
 * number). Loading it back with lf_config_load_json reproduces the config. *out: new reference. */
lf_status lf_config_to_json(const lf_train_config *cfg, json_t **out, lf_err *err);
/* {"key": "where"} for every key not at its default (for logs). *out: new reference. */
lf_status lf_config_origins_to_json(const lf_train_config *cfg, json_t **out, lf_err *err);
/* Help text: every key grouped by section, with type, default, accepted values and help. */
void lf_config_print_help(FILE *f);
/* "key = value  (where)" for every key not at its default. */
void lf_config_print(FILE *f, const lf_train_config *cfg);
/* Origin of a key (NULL if unknown key). */
const lf_config_origin *lf_config_origin_of(const lf_train_config *cfg, const char *key);

/* A step interval (logging_steps, save_steps, eval_steps): values < 1 are a ratio of total_steps (the run's
 * optimizer steps, from max_steps or epochs; rounded up, as transformers does), others are taken as is.
 * Returns >= 1. */
int64_t lf_config_resolve_steps(double steps, int64_t total_steps);

#ifdef __cplusplus
}
#endif
#endif
