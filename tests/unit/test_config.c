/* test_config.c - core/config: schema sanity and defaults, YAML (comments, quotes, block/flow/comma lists,
 * nulls, errors with file:line), JSON, SageMaker hyperparameters.json (string values converted), flags
 * (--k v, --k=v, bare booleans, k=v, positional file), precedence by source rank whatever the call order,
 * every error path (message names source, key, value and accepted values), unknown-key warnings with
 * "did you mean", cross-key validation, SageMaker env defaults, load_all end to end, and a randomized
 * round trip (random valid values through random sources, then to_json -> load_json). Seed from LF_TEST_SEED
 * or time, printed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/config.h"
#include "core/fileio.h"
#include "core/log.h"
#include "core/rng.h"

static int passed, failed;
#define CHECK(cond, ...)                                \
    do {                                                \
        if (cond) {                                     \
            passed++;                                   \
        } else {                                        \
            failed++;                                   \
            printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            printf(__VA_ARGS__);                        \
            printf("\n");                               \
        }                                               \
    } while (0)

static char tmpdir[64];
static FILE *logf_;
static char logbuf[16384];

/* ---- helpers ---- */
static void log_reset(void) {
    fflush(logf_);
    if (ftruncate(fileno(logf_), 0) != 0) perror("ftruncate");
    rewind(logf_);
}
static const char *log_text(void) {
    fflush(logf_);
    rewind(logf_);
    size_t n = fread(logbuf, 1, sizeof logbuf - 1, logf_);
    logbuf[n] = '\0';
    fseek(logf_, 0, SEEK_END);
    return logbuf;
}

static const char *write_file(const char *name, const char *text) {
    static char path[8][256];
    static int slot;
    char *p = path[slot++ & 7];
    snprintf(p, 256, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "wb");
    if (!f) return p;
    fputs(text, f);
    fclose(f);
    return p;
}

static int contains(const char *hay, const char *needle) { return strstr(hay, needle) != NULL; }

/* msg contains every NULL-terminated needle */
static int has_all(const char *msg, const char *const *needles) {
    for (int i = 0; needles[i]; i++)
        if (!strstr(msg, needles[i])) return 0;
    return 1;
}

static void fresh(lf_train_config *c) {
    lf_config_free(c);
    lf_err e = {0};
    if (lf_config_defaults(c, &e)) printf("defaults failed: %s\n", e.msg);
}

/* required keys so that validate can pass */
static void set_required(lf_train_config *c) {
    lf_err e = {0};
    lf_config_set(c, "model_name_or_path", "/m", LF_CFG_SRC_FLAG, "test", &e);
    lf_config_set(c, "output_dir", "/o", LF_CFG_SRC_FLAG, "test", &e);
    lf_config_set(c, "dataset", "alpaca_en_demo", LF_CFG_SRC_FLAG, "test", &e);
}

static void clear_sm_env(void) {
    static const char *vars[] = {"SM_MODEL_DIR", "SM_CHANNEL_TRAINING", "SM_CHANNEL_TRAIN", "SM_CHANNEL_DATA",
                                 "SM_CHANNEL_MODEL", "SM_CHANNEL_ADAPTER", "SM_OUTPUT_DATA_DIR", "TRAINING_JOB_NAME",
                                 "SM_TRAINING_ENV", "SM_HP_PATH", NULL};
    for (int i = 0; vars[i]; i++) unsetenv(vars[i]);
}

/* ---- schema ---- */
static void test_schema(void) {
    size_t n;
    const lf_config_key *s = lf_config_schema(&n);
    CHECK(n >= 60 && n <= LF_CONFIG_MAX_KEYS, "schema has %zu keys", n);
    for (size_t i = 0; i < n; i++) {
        CHECK(s[i].help && s[i].help[0] && s[i].def && s[i].section, "key %s lacks help/default/section", s[i].name);
        CHECK(lf_config_find_key(s[i].name) == &s[i], "find_key(%s)", s[i].name);
        for (size_t j = 0; j < i; j++) CHECK(strcmp(s[i].name, s[j].name) != 0, "duplicate key %s", s[i].name);
        if (s[i].flags & (LF_CFG_F_IGNORED | LF_CFG_F_NOTE)) CHECK(s[i].note != NULL, "%s: ignored key without note", s[i].name);
    }
    CHECK(lf_config_find_key("evaluation_strategy") == lf_config_find_key("eval_strategy"), "alias");
    CHECK(lf_config_find_key("lora-rank") == lf_config_find_key("lora_rank"), "dashes");
    CHECK(lf_config_find_key("nope") == NULL, "unknown key");
    CHECK(lf_config_suggest_key("lora_rnk") && strcmp(lf_config_suggest_key("lora_rnk"), "lora_rank") == 0, "suggest");
    CHECK(lf_config_suggest_key("learning_rat") && strcmp(lf_config_suggest_key("learning_rat"), "learning_rate") == 0,
          "suggest lr");
    CHECK(lf_config_suggest_key("zzzzzz") == NULL, "no suggestion for garbage");
    /* C enums match the schema's choices order */
    struct {
        const char *key;
        int v;
        const char *name;
    } en[] = {{"stage", LF_STAGE_SFT, "sft"},
              {"finetuning_type", LF_FT_LORA, "lora"},
              {"quantization_type", LF_QTYPE_FP4, "fp4"},
              {"quantization_method", LF_QMETHOD_BITSANDBYTES, "bitsandbytes"},
              {"flash_attn", LF_ATTN_FA3, "fa3"},
              {"lr_scheduler_type", LF_CFG_SCHED_CONSTANT_WITH_WARMUP, "constant_with_warmup"},
              {"lr_scheduler_type", LF_CFG_SCHED_COSINE, "cosine"},
              {"eval_strategy", LF_STRATEGY_EPOCH, "epoch"},
              {"save_strategy", LF_STRATEGY_STEPS, "steps"},
              {"optim", LF_OPTIM_ADAMW_BNB_8BIT, "adamw_bnb_8bit"},
              {"optim", LF_OPTIM_PAGED_ADAMW_8BIT, "paged_adamw_8bit"}};
    for (size_t i = 0; i < sizeof en / sizeof en[0]; i++) {
        const char *got = lf_config_enum_name(lf_config_find_key(en[i].key), en[i].v);
        CHECK(got && strcmp(got, en[i].name) == 0, "%s enum %d = %s want %s", en[i].key, en[i].v, got ? got : "NULL",
              en[i].name);
    }
    /* help lists every key with its default */
    FILE *h = tmpfile();
    lf_config_print_help(h);
    long len = ftell(h);
    rewind(h);
    char *txt = calloc(1, (size_t)len + 1);
    if (txt && fread(txt, 1, (size_t)len, h) == (size_t)len) {
        char want[160];
        for (size_t i = 0; i < n; i++) {
            snprintf(want, sizeof want, "--%s ", s[i].name);
            CHECK(contains(txt, want), "help lacks %s", s[i].name);
        }
        CHECK(contains(txt, "default: 5e-5") && contains(txt, "default: 2048") && contains(txt, "precedence"),
              "help text");
    }
    free(txt);
    fclose(h);
}

static void test_defaults(void) {
    lf_train_config c = {0};
    fresh(&c);
    CHECK(c.model_name_or_path == NULL && c.adapter_name_or_path.n == 0 && c.template_name == NULL, "model defaults");
    CHECK(c.quantization_bit == LF_CONFIG_UNSET && c.quantization_type == LF_QTYPE_NF4 && c.double_quantization == 1,
          "quant defaults");
    CHECK(c.stage == LF_STAGE_SFT && c.finetuning_type == LF_FT_LORA && c.do_train == 1 && c.do_eval == 0, "method");
    CHECK(c.lora_target.n == 1 && strcmp(c.lora_target.items[0], "all") == 0, "lora_target all");
    CHECK(c.lora_rank == 8 && c.lora_alpha == LF_CONFIG_UNSET && c.lora_dropout == 0 && !c.use_rslora && !c.use_dora,
          "lora defaults");
    CHECK(c.dataset.n == 0 && c.eval_dataset.n == 0 && strcmp(c.dataset_dir, "data") == 0 && c.cutoff_len == 2048 &&
              c.max_samples == LF_CONFIG_UNSET && c.val_size == 0 && !c.train_on_prompt && !c.mask_history && !c.packing,
          "data defaults");
    CHECK(c.output_dir == NULL && !c.overwrite_output_dir && c.logging_steps == 500 && c.save_steps == 500 &&
              c.save_total_limit == LF_CONFIG_UNSET && c.save_strategy == LF_STRATEGY_STEPS && !c.plot_loss,
          "output defaults");
    CHECK(c.per_device_train_batch_size == 8 && c.per_device_eval_batch_size == 8 && c.gradient_accumulation_steps == 1,
          "batch defaults (transformers)");
    CHECK(c.learning_rate == 5e-5 && c.lr_scheduler_type == LF_CFG_SCHED_LINEAR && c.warmup_steps == 0 &&
              c.warmup_ratio == 0 && c.weight_decay == 0 && c.adam_beta1 == 0.9 && c.adam_beta2 == 0.999 &&
              c.adam_epsilon == 1e-8 && c.max_grad_norm == 1.0 && c.num_train_epochs == 3.0 && c.max_steps == -1,
          "optimizer defaults");
    CHECK(c.seed == 42 && !c.gradient_checkpointing && !c.bf16 && !c.fp16 && c.resume_from_checkpoint == NULL &&
              c.eval_strategy == LF_STRATEGY_NO && c.eval_steps == LF_CONFIG_UNSET && c.threads == 0 &&
              c.ddp_timeout == 1800 && c.optim == LF_OPTIM_ADAMW_TORCH,
          "misc defaults");
    CHECK(c.report_to.n == 1 && strcmp(c.report_to.items[0], "none") == 0, "report_to none");
    const lf_config_origin *o = lf_config_origin_of(&c, "lora_rank");
    CHECK(o && o->src == LF_CFG_SRC_DEFAULT, "default origin");
    lf_config_free(&c);
    lf_config_free(NULL);
}

/* ---- YAML ---- */
static void test_yaml(void) {
    lf_train_config c = {0};
    lf_err e = {0};
    fresh(&c);
    const char *y = "### model\n"
                    "model_name_or_path: /models/llama  # trailing comment\n"
                    "template: \"none\"\n"
                    "quantization_bit: 4\n"
                    "double_quantization: no\n"
                    "\n"
                    "### method\n"
                    "stage: sft\n"
                    "do_train: true\n"
                    "finetuning_type: lora\n"
                    "lora_target: q_proj, v_proj\n"
                    "lora_rank: 16\n"
                    "lora_dropout: 0.05\n"
                    "use_rslora: True\n"
                    "dataset:\n"
                    "  - identity\n"
                    "  - 'alpaca_en_demo'\n"
                    "eval_dataset: [a, \"b,c\"]\n"
                    "cutoff_len: 1024\n"
                    "max_samples: 1000\n"
                    "overwrite_cache: true\n"
                    "preprocessing_num_workers: 16\n"
                    "output_dir: 'saves/llama3-8b/lora/sft'\n"
                    "logging_steps: 10\n"
                    "save_steps: 0.25\n"
                    "report_to: none\n"
                    "learning_rate: 1.0e-4\n"
                    "weight_decay: 5e-2\n"
                    "num_train_epochs: 3.0\n"
                    "lr_scheduler_type: cosine\n"
                    "warmup_ratio: 0.1\n"
                    "bf16: true\n"
                    "ddp_timeout: 180000000\n"
                    "resume_from_checkpoint: null\n"
                    "default_system: ~\n"
                    "per_device_train_batch_size: 1\n"
                    "evaluation_strategy: 'no'\n";
    lf_status st = lf_config_load_yaml_buffer(&c, y, strlen(y), "sft.yaml", &e);
    CHECK(st == LF_OK, "yaml load: %s", e.msg);
    CHECK(c.model_name_or_path && strcmp(c.model_name_or_path, "/models/llama") == 0, "comment stripped: %s",
          c.model_name_or_path ? c.model_name_or_path : "NULL");
    CHECK(c.template_name && strcmp(c.template_name, "none") == 0, "quoted \"none\" stays a string for a string key");
    CHECK(c.quantization_bit == 4 && c.double_quantization == 0, "quant from yaml");
    CHECK(c.lora_target.n == 2 && strcmp(c.lora_target.items[0], "q_proj") == 0 &&
              strcmp(c.lora_target.items[1], "v_proj") == 0, "comma list with spaces");
    CHECK(c.lora_rank == 16 && fabs(c.lora_dropout - 0.05) == 0 && c.use_rslora == 1, "lora from yaml");
    CHECK(c.dataset.n == 2 && strcmp(c.dataset.items[1], "alpaca_en_demo") == 0, "block list");
    CHECK(c.eval_dataset.n == 3 && strcmp(c.eval_dataset.items[2], "c") == 0, "flow list with a comma item");
    CHECK(c.cutoff_len == 1024 && c.max_samples == 1000 && c.preprocessing_num_workers == 16, "ints");
    CHECK(c.output_dir && strcmp(c.output_dir, "saves/llama3-8b/lora/sft") == 0, "single quotes");
    CHECK(c.logging_steps == 10 && c.save_steps == 0.25, "steps and ratios");
    CHECK(c.learning_rate == 1.0e-4 && c.weight_decay == 5e-2, "1.0e-4 and 5e-2 (PyYAML reads 5e-2 as a string)");
    CHECK(c.lr_scheduler_type == LF_CFG_SCHED_COSINE && c.warmup_ratio == 0.1 && c.bf16 == 1, "enum/bool");
    CHECK(c.ddp_timeout == 180000000 && c.resume_from_checkpoint == NULL && c.default_system == NULL, "null and ~");
    CHECK(c.per_device_train_batch_size == 1 && c.eval_strategy == LF_STRATEGY_NO, "alias evaluation_strategy");
    const lf_config_origin *o = lf_config_origin_of(&c, "lora_rank");
    CHECK(o && o->src == LF_CFG_SRC_FILE && strcmp(o->where, "sft.yaml:12") == 0, "origin file:line = %s",
          o ? o->where : "");

    /* unknown keys: warning naming the key, with a suggestion; duplicates warned */
    log_reset();
    const char *y2 = "lora_rnk: 4\nfoo_bar_baz: 1\nseed: 1\nseed: 2\n";
    st = lf_config_load_yaml_buffer(&c, y2, strlen(y2), "u.yaml", &e);
    const char *lg = log_text();
    CHECK(st == LF_OK && c.seed == 2, "unknown keys are not errors; last duplicate wins");
    CHECK(contains(lg, "u.yaml:1") && contains(lg, "\"lora_rnk\"") && contains(lg, "did you mean \"lora_rank\""),
          "unknown key warning: %s", lg);
    CHECK(contains(lg, "\"foo_bar_baz\""), "warning for key without suggestion");
    CHECK(contains(lg, "given twice"), "duplicate key warning");
    CHECK(c.lora_rank == 16, "unknown key changed nothing");

    /* empty document and comment-only file */
    st = lf_config_load_yaml_buffer(&c, "# nothing\n", 10, "empty.yaml", &e);
    CHECK(st == LF_OK, "comment-only yaml: %s", e.msg);
    st = lf_config_load_yaml_buffer(&c, "", 0, "empty.yaml", &e);
    CHECK(st == LF_OK, "empty yaml: %s", e.msg);

    /* errors: syntax (with line), top level not a mapping, nested mapping, bad value with file:line */
    const char *bad = "a: 1\nb: [1, 2\nc: 3\n";
    st = lf_config_load_yaml_buffer(&c, bad, strlen(bad), "bad.yaml", &e);
    CHECK(st == LF_EFORMAT && contains(e.msg, "bad.yaml:") && contains(e.msg, "invalid YAML"), "syntax error: %s", e.msg);
    st = lf_config_load_yaml_buffer(&c, "- a\n- b\n", 8, "list.yaml", &e);
    CHECK(st == LF_EFORMAT && contains(e.msg, "list.yaml:1") && contains(e.msg, "mapping"), "top-level list: %s", e.msg);
    const char *nest = "seed: 3\nlora_rank:\n  value: 8\n";
    st = lf_config_load_yaml_buffer(&c, nest, strlen(nest), "n.yaml", &e);
    CHECK(st == LF_EINVAL && contains(e.msg, "n.yaml:2") && contains(e.msg, "lora_rank") && contains(e.msg, "accepted"),
          "nested mapping: %s", e.msg);
    const char *badv = "# header\n\nlr_scheduler_type: cosin\n";
    st = lf_config_load_yaml_buffer(&c, badv, strlen(badv), "v.yaml", &e);
    static const char *want_enum[] = {"v.yaml:3", "lr_scheduler_type", "\"cosin\"", "linear, cosine, constant, constant_with_warmup",
                                      "did you mean \"cosine\"", NULL};
    CHECK(st == LF_EINVAL && has_all(e.msg, want_enum), "enum error: %s", e.msg);
    CHECK(c.lr_scheduler_type == LF_CFG_SCHED_COSINE, "failed set leaves the old value");
    const char *badl = "lora_target: [q_proj, qv_proj]\n";
    st = lf_config_load_yaml_buffer(&c, badl, strlen(badl), "l.yaml", &e);
    static const char *want_list[] = {"l.yaml:1", "lora_target", "qv_proj", "q_proj, k_proj", "did you mean", NULL};
    CHECK(st == LF_EINVAL && has_all(e.msg, want_list), "list item error: %s", e.msg);
    CHECK(c.lora_target.n == 2, "failed list set leaves the old list");

    /* from a file on disk */
    const char *p = write_file("t.yml", "lora_rank: 32\nseed: 7\n");
    st = lf_config_load_file(&c, p, &e);
    CHECK(st == LF_OK && c.lora_rank == 32 && c.seed == 7, "load_file yml: %s", e.msg);
    st = lf_config_load_yaml(&c, "/nonexistent/x.yaml", &e);
    CHECK(st != LF_OK && contains(e.msg, "/nonexistent/x.yaml"), "missing yaml: %s", e.msg);
    lf_config_free(&c);
}

/* ---- JSON ---- */
static void test_json(void) {
    lf_train_config c = {0};
    lf_err e = {0};
    fresh(&c);
    const char *j = "{\n"
                    "  \"model_name_or_path\": \"/m\",\n"
                    "  \"lora_rank\": 8.0,\n"
                    "  \"lora_alpha\": 32,\n"
                    "  \"learning_rate\": 0.0002,\n"
                    "  \"lora_target\": [\"q_proj\", \"K_PROJ\"],\n"
                    "  \"packing\": true,\n"
                    "  \"max_samples\": null,\n"
                    "  \"template\": \"llama3\",\n"
                    "  \"quantization_bit\": \"4\"\n"
                    "}\n";
    lf_status st = lf_config_load_json_buffer(&c, j, strlen(j), "c.json", &e);
    CHECK(st == LF_OK, "json load: %s", e.msg);
    CHECK(c.lora_rank == 8 && c.lora_alpha == 32 && c.learning_rate == 2e-4 && c.packing == 1 &&
              c.max_samples == LF_CONFIG_UNSET && c.quantization_bit == 4, "json values");
    CHECK(c.lora_target.n == 2 && strcmp(c.lora_target.items[1], "k_proj") == 0, "json list, case folded");
    const lf_config_origin *o = lf_config_origin_of(&c, "learning_rate");
    CHECK(o && strcmp(o->where, "c.json:5") == 0, "json origin line: %s", o ? o->where : "");

    const char *bad = "{\n  \"seed\": 1,\n  \"lora_rank\": 8.5\n}";
    st = lf_config_load_json_buffer(&c, bad, strlen(bad), "b.json", &e);
    static const char *w1[] = {"b.json:3", "lora_rank", "\"8.5\"", "not an integer", "integer >= 1", NULL};
    CHECK(st == LF_EINVAL && has_all(e.msg, w1), "json int error: %s", e.msg);
    st = lf_config_load_json_buffer(&c, "{\"seed\": {\"a\": 1}}", 18, "o.json", &e);
    CHECK(st == LF_EINVAL && contains(e.msg, "seed") && contains(e.msg, "object"), "json object value: %s", e.msg);
    st = lf_config_load_json_buffer(&c, "[1]", 3, "a.json", &e);
    CHECK(st == LF_EFORMAT && contains(e.msg, "a.json"), "json top-level array: %s", e.msg);
    st = lf_config_load_json_buffer(&c, "{\"seed\": 1,}", 12, "s.json", &e);
    CHECK(st == LF_EFORMAT && contains(e.msg, "s.json"), "json syntax: %s", e.msg);
    log_reset();
    st = lf_config_load_json_buffer(&c, "{\"lerning_rate\": 1}", 19, "w.json", &e);
    CHECK(st == LF_OK && contains(log_text(), "did you mean \"learning_rate\""), "json unknown key: %s", log_text());
    const char *p = write_file("c.json", "{\"seed\": 99}");
    st = lf_config_load_file(&c, p, &e);
    CHECK(st == LF_OK && c.seed == 99, "load_file json: %s", e.msg);
    lf_config_free(&c);
}

/* ---- hyperparameters.json ---- */
static void test_hyperparameters(void) {
    lf_train_config c = {0};
    lf_err e = {0};
    clear_sm_env();
    fresh(&c);
    /* every value a string, as SageMaker passes them (some JSON-quoted by the SDK, some str()'d) */
    const char *hp = write_file("hyperparameters.json",
                                "{\n"
                                "  \"lora_rank\": \"16\",\n"
                                "  \"quantization_bit\": \"\\\"4\\\"\",\n"
                                "  \"use_dora\": \"True\",\n"
                                "  \"packing\": \"false\",\n"
                                "  \"learning_rate\": \"1e-4\",\n"
                                "  \"lora_target\": \"[\\\"q_proj\\\", \\\"v_proj\\\"]\",\n"
                                "  \"dataset\": \"identity,alpaca_en_demo\",\n"
                                "  \"template\": \"\\\"llama3\\\"\",\n"
                                "  \"max_samples\": \"None\",\n"
                                "  \"eval_steps\": \"null\",\n"
                                "  \"lr_scheduler_type\": \"cosine\",\n"
                                "  \"num_train_epochs\": \"2\",\n"
                                "  \"model_name_or_path\": \"/opt/ml/input/data/model\",\n"
                                "  \"sagemaker_program\": \"\\\"train.py\\\"\",\n"
                                "  \"sagemaker_region\": \"\\\"us-east-1\\\"\",\n"
                                "  \"_tuning_objective_metric\": \"\\\"loss\\\"\",\n"
                                "  \"seed\": 5\n"
                                "}\n");
    int loaded = 0;
    log_reset();
    lf_status st = lf_config_load_hyperparameters(&c, hp, &loaded, &e);
    CHECK(st == LF_OK && loaded, "hyperparameters: %s", e.msg);
    CHECK(c.lora_rank == 16 && c.quantization_bit == 4 && c.use_dora == 1 && c.packing == 0, "hp conversions");
    CHECK(c.learning_rate == 1e-4 && c.num_train_epochs == 2.0 && c.seed == 5, "hp numbers");
    CHECK(c.lora_target.n == 2 && strcmp(c.lora_target.items[1], "v_proj") == 0, "hp JSON list");
    CHECK(c.dataset.n == 2 && strcmp(c.dataset.items[0], "identity") == 0, "hp comma list");
    CHECK(c.template_name && strcmp(c.template_name, "llama3") == 0, "hp quoted string");
    CHECK(c.max_samples == LF_CONFIG_UNSET && c.eval_steps == LF_CONFIG_UNSET, "hp None/null");
    CHECK(c.lr_scheduler_type == LF_CFG_SCHED_COSINE, "hp raw enum");
    CHECK(c.model_name_or_path && strcmp(c.model_name_or_path, "/opt/ml/input/data/model") == 0, "hp raw path");
    CHECK(!contains(log_text(), "sagemaker_") && !contains(log_text(), "_tuning"), "SDK keys skipped silently: %s",
          log_text());
    const lf_config_origin *o = lf_config_origin_of(&c, "lora_rank");
    CHECK(o && o->src == LF_CFG_SRC_HPARAMS && contains(o->where, "hyperparameters.json:2"), "hp origin: %s",
          o ? o->where : "");

    /* errors name hyperparameters.json, key, value, accepted */
    const char *bad = write_file("hp_bad.json", "{\"warmup_ratio\": \"1.5\"}");
    st = lf_config_load_hyperparameters(&c, bad, NULL, &e);
    static const char *w1[] = {"hp_bad.json", "warmup_ratio", "\"1.5\"", "out of range", "number in [0, 1]", NULL};
    CHECK(st == LF_EINVAL && has_all(e.msg, w1), "hp range error: %s", e.msg);
    bad = write_file("hp_bad.json", "{\"use_dora\": \"maybe\"}");
    st = lf_config_load_hyperparameters(&c, bad, NULL, &e);
    static const char *w2[] = {"hp_bad.json", "use_dora", "\"maybe\"", "true or false", NULL};
    CHECK(st == LF_EINVAL && has_all(e.msg, w2), "hp bool error: %s", e.msg);
    bad = write_file("hp_bad.json", "{\"quantization_bit\": \"8\"}");
    st = lf_config_load_hyperparameters(&c, bad, NULL, &e);
    static const char *w3[] = {"hp_bad.json", "quantization_bit", "\"8\"", "does not support", "4, or none", NULL};
    CHECK(st == LF_EUNSUPPORTED && has_all(e.msg, w3), "hp unsupported: %s", e.msg);

    /* SM_HP_PATH; a missing explicit file is an error; the default path missing is not */
    setenv("SM_HP_PATH", write_file("hp2.json", "{\"cutoff_len\": \"512\"}"), 1);
    st = lf_config_load_hyperparameters(&c, NULL, &loaded, &e);
    CHECK(st == LF_OK && loaded && c.cutoff_len == 512, "SM_HP_PATH: %s", e.msg);
    setenv("SM_HP_PATH", "/nonexistent/hp.json", 1);
    st = lf_config_load_hyperparameters(&c, NULL, &loaded, &e);
    CHECK(st != LF_OK && contains(e.msg, "/nonexistent/hp.json"), "missing SM_HP_PATH file is an error: %s", e.msg);
    unsetenv("SM_HP_PATH");
    if (!lf_path_exists(LF_CONFIG_SM_HP_PATH)) {
        st = lf_config_load_hyperparameters(&c, NULL, &loaded, &e);
        CHECK(st == LF_OK && !loaded, "no SageMaker: nothing loaded");
    }
    lf_config_free(&c);
}

/* ---- flags ---- */
static void test_flags(void) {
    lf_train_config c = {0};
    lf_err e = {0};
    fresh(&c);
    char *argv[] = {"cfg.yaml", "--lora_rank", "4", "--learning_rate=3e-4", "--bf16", "--packing", "false",
                    "--use-dora", "--output_dir", "/out", "lora_alpha=12", "--seed=-0", "--plot_loss", "--max_steps",
                    "-1", "--lora_target=q_proj,o_proj", NULL};
    int argc = (int)(sizeof argv / sizeof argv[0]) - 1;
    const char *file = NULL;
    lf_status st = lf_config_load_flags(&c, argc, argv, &file, &e);
    CHECK(st == LF_OK, "flags: %s", e.msg);
    CHECK(file && strcmp(file, "cfg.yaml") == 0, "positional file");
    CHECK(c.lora_rank == 4 && c.learning_rate == 3e-4 && c.bf16 == 1 && c.packing == 0 && c.use_dora == 1, "flag values");
    CHECK(c.output_dir && strcmp(c.output_dir, "/out") == 0 && c.lora_alpha == 12 && c.seed == 0 && c.plot_loss == 1 &&
              c.max_steps == -1, "flag values 2");
    CHECK(c.lora_target.n == 2 && strcmp(c.lora_target.items[1], "o_proj") == 0, "flag list");
    const lf_config_origin *o = lf_config_origin_of(&c, "bf16");
    CHECK(o && o->src == LF_CFG_SRC_FLAG && strcmp(o->where, "command line --bf16") == 0, "flag origin: %s",
          o ? o->where : "");

    /* unknown flag: warning, its value consumed, parsing continues */
    log_reset();
    char *argv2[] = {"--lora_rnak", "5", "--seed", "9", NULL};
    st = lf_config_load_flags(&c, 4, argv2, NULL, &e);
    CHECK(st == LF_OK && c.seed == 9 && c.lora_rank == 4, "unknown flag skipped");
    CHECK(contains(log_text(), "--lora_rnak") && contains(log_text(), "did you mean \"lora_rank\""), "flag warning: %s",
          log_text());

    /* errors */
    char *argv3[] = {"--lora_rank", NULL};
    st = lf_config_load_flags(&c, 1, argv3, NULL, &e);
    CHECK(st == LF_EINVAL && contains(e.msg, "--lora_rank") && contains(e.msg, "missing value") &&
              contains(e.msg, "integer >= 1"), "missing value: %s", e.msg);
    char *argv4[] = {"--lora_rank=0", NULL};
    st = lf_config_load_flags(&c, 1, argv4, NULL, &e);
    static const char *w4[] = {"command line --lora_rank", "lora_rank", "\"0\"", "out of range", "integer >= 1", NULL};
    CHECK(st == LF_EINVAL && has_all(e.msg, w4), "flag range error: %s", e.msg);
    char *argv5[] = {"a.yaml", "b.yaml", NULL};
    st = lf_config_load_flags(&c, 2, argv5, &file, &e);
    CHECK(st == LF_EINVAL && contains(e.msg, "two config files"), "two files: %s", e.msg);
    st = lf_config_load_flags(&c, 1, argv5, NULL, &e);
    CHECK(st == LF_EINVAL && contains(e.msg, "unexpected argument"), "positional without file_out: %s", e.msg);
    char *argv6[] = {"--stage", "dpo", NULL};
    st = lf_config_load_flags(&c, 2, argv6, NULL, &e);
    static const char *w6[] = {"--stage", "\"dpo\"", "does not support", "accepted: sft", NULL};
    CHECK(st == LF_EUNSUPPORTED && has_all(e.msg, w6), "unsupported stage: %s", e.msg);
    char *argv7[] = {"--finetuning_type=full", NULL};
    st = lf_config_load_flags(&c, 1, argv7, NULL, &e);
    CHECK(st == LF_EUNSUPPORTED && contains(e.msg, "finetuning_type") && contains(e.msg, "lora"), "full ft: %s", e.msg);
    char *argv8[] = {"--logging_steps", "2.5", NULL};
    st = lf_config_load_flags(&c, 2, argv8, NULL, &e);
    CHECK(st == LF_EINVAL && contains(e.msg, "logging_steps") && contains(e.msg, "integer"), "steps: %s", e.msg);
    char *argv9[] = {"--val_size", "1", NULL};
    st = lf_config_load_flags(&c, 2, argv9, NULL, &e);
    CHECK(st == LF_EINVAL && contains(e.msg, "val_size") && contains(e.msg, "fraction"), "val_size 1: %s", e.msg);
    char *argv10[] = {"--adam_beta2", "1.0", NULL};
    st = lf_config_load_flags(&c, 2, argv10, NULL, &e);
    CHECK(st == LF_EINVAL && contains(e.msg, "adam_beta2") && contains(e.msg, "[0, 1)"), "beta open range: %s", e.msg);
    char *argv11[] = {"--learning_rate", "0x10", NULL};
    st = lf_config_load_flags(&c, 2, argv11, NULL, &e);
    CHECK(st == LF_EINVAL && contains(e.msg, "not a number"), "hex rejected: %s", e.msg);
    char *argv12[] = {"--cutoff_len", "nan", NULL};
    st = lf_config_load_flags(&c, 2, argv12, NULL, &e);
    CHECK(st == LF_EINVAL && contains(e.msg, "cutoff_len"), "nan rejected: %s", e.msg);
    char *argv13[] = {"--dataset_dir=", NULL};
    st = lf_config_load_flags(&c, 1, argv13, NULL, &e);
    CHECK(st == LF_EINVAL && contains(e.msg, "dataset_dir") && contains(e.msg, "non-empty"), "empty string: %s", e.msg);
    char *argv14[] = {"--seed", "4294967296", NULL};
    st = lf_config_load_flags(&c, 2, argv14, NULL, &e);
    CHECK(st == LF_EINVAL && contains(e.msg, "seed") && contains(e.msg, "4294967295"), "seed range: %s", e.msg);
    char *argv15[] = {"--optim", "sgd", NULL};
    st = lf_config_load_flags(&c, 2, argv15, NULL, &e);
    CHECK(st == LF_EUNSUPPORTED && contains(e.msg, "adamw_torch"), "optim sgd: %s", e.msg);
    char *argv16[] = {"-x", NULL};
    st = lf_config_load_flags(&c, 1, argv16, NULL, &e);
    CHECK(st == LF_EINVAL && contains(e.msg, "-x"), "single-dash option: %s", e.msg);
    CHECK(c.lora_rank == 4 && c.seed == 9 && c.stage == LF_STAGE_SFT && c.logging_steps == 500, "errors changed nothing");
    lf_config_free(&c);
}

/* ---- precedence ---- */
static void test_precedence(void) {
    lf_train_config c = {0};
    lf_err e = {0};
    clear_sm_env();
    fresh(&c);
    /* flags first, then hyperparameters, then file, then env: rank decides, not order */
    char *argv[] = {"--lora_rank", "64", NULL};
    CHECK(lf_config_load_flags(&c, 2, argv, NULL, &e) == LF_OK, "flags");
    const char *hp = write_file("hp_prec.json", "{\"lora_rank\": \"32\", \"cutoff_len\": \"333\"}");
    CHECK(lf_config_load_hyperparameters(&c, hp, NULL, &e) == LF_OK, "hp: %s", e.msg);
    const char *y = "lora_rank: 16\ncutoff_len: 222\nseed: 3\noutput_dir: /from/file\n";
    CHECK(lf_config_load_yaml_buffer(&c, y, strlen(y), "p.yaml", &e) == LF_OK, "yaml");
    setenv("SM_MODEL_DIR", "/opt/ml/model", 1);
    setenv("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data", 1);
    CHECK(lf_config_apply_sagemaker_env(&c, tmpdir, &e) == LF_OK, "env: %s", e.msg);
    CHECK(c.lora_rank == 64, "flag beats hp and file: %lld", (long long)c.lora_rank);
    CHECK(c.cutoff_len == 333, "hp beats file");
    CHECK(c.seed == 3, "file beats default");
    CHECK(c.output_dir && strcmp(c.output_dir, "/from/file") == 0, "file beats env");
    CHECK(c.output_data_dir && strcmp(c.output_data_dir, "/opt/ml/output/data") == 0, "env beats default");
    CHECK(strcmp(lf_config_origin_of(&c, "output_data_dir")->where, "env SM_OUTPUT_DATA_DIR") == 0, "env origin");
    /* later call of the same rank wins */
    CHECK(lf_config_load_yaml_buffer(&c, "seed: 4\n", 8, "q.yaml", &e) == LF_OK && c.seed == 4, "same rank: later wins");
    /* lf_config_set with a lower rank is ignored */
    CHECK(lf_config_set(&c, "lora_rank", "2", LF_CFG_SRC_FILE, "x", &e) == LF_OK && c.lora_rank == 64, "lower rank ignored");
    CHECK(lf_config_set(&c, "nope", "2", LF_CFG_SRC_FLAG, "x", &e) == LF_ENOTFOUND, "set unknown key");
    clear_sm_env();
    lf_config_free(&c);
}

/* ---- validation ---- */
static void test_validate(void) {
    lf_train_config c = {0};
    lf_err e = {0};
    lf_status st;
    fresh(&c);
    st = lf_config_validate(&c, &e);
    CHECK(st == LF_EINVAL && contains(e.msg, "model_name_or_path is required"), "model required: %s", e.msg);
    lf_config_set(&c, "model_name_or_path", "/m", LF_CFG_SRC_FLAG, "t", &e);
    st = lf_config_validate(&c, &e);
    CHECK(st == LF_EINVAL && contains(e.msg, "output_dir is required") && contains(e.msg, "SM_MODEL_DIR"),
          "output_dir required: %s", e.msg);
    lf_config_set(&c, "output_dir", "/o", LF_CFG_SRC_FLAG, "t", &e);
    st = lf_config_validate(&c, &e);
    CHECK(st == LF_EINVAL && contains(e.msg, "dataset is required"), "dataset required: %s", e.msg);
    set_required(&c);
    st = lf_config_validate(&c, &e);
    CHECK(st == LF_OK, "minimal config validates: %s", e.msg);
    CHECK(c.lora_alpha == 16 && lf_config_origin_of(&c, "lora_alpha")->src == LF_CFG_SRC_DERIVED, "lora_alpha = 2*rank");
    CHECK(c.lora_target_mask == LF_LORA_ALL && c.resume_mode == LF_RESUME_NONE && c.eval_steps == 500 &&
              c.use_gradient_checkpointing == 1 && c.validated, "derived values");
    lf_config_set(&c, "lora_rank", "32", LF_CFG_SRC_FLAG, "t", &e);
    CHECK(lf_config_validate(&c, &e) == LF_OK && c.lora_alpha == 64, "lora_alpha re-derived: %lld", (long long)c.lora_alpha);
    lf_config_set(&c, "lora_alpha", "8", LF_CFG_SRC_FILE, "f.yaml:1", &e);
    CHECK(lf_config_validate(&c, &e) == LF_OK && c.lora_alpha == 8, "explicit lora_alpha kept");
    lf_config_set(&c, "lora_target", "v_proj,q_proj,down_proj", LF_CFG_SRC_FLAG, "t", &e);
    CHECK(lf_config_validate(&c, &e) == LF_OK && c.lora_target_mask == (LF_LORA_Q_PROJ | LF_LORA_V_PROJ | LF_LORA_DOWN_PROJ),
          "lora mask %x", c.lora_target_mask);
    lf_config_set(&c, "disable_gradient_checkpointing", "true", LF_CFG_SRC_FLAG, "t", &e);
    CHECK(lf_config_validate(&c, &e) == LF_OK && c.use_gradient_checkpointing == 0, "gc disabled");

    struct {
        const char *key, *value;
        lf_status want;
        const char *needle1, *needle2;
    } cases[] = {
        {"lora_target", "all,q_proj", LF_EINVAL, "\"all\" cannot be combined", "q_proj, k_proj"},
        {"mask_history", "true", LF_EINVAL, "mask_history", "train_on_prompt"},
        {"eval_strategy", "steps", LF_EINVAL, "no validation set", "eval_dataset or val_size"},
        {"do_eval", "true", LF_EINVAL, "no validation set", "val_size"},
        {"num_train_epochs", "0", LF_EINVAL, "nothing to train", "max_steps"},
        {"fp16", "true", LF_EINVAL, "bf16", "fp16"},
        {"adapter_name_or_path", "/a1,/a2", LF_EUNSUPPORTED, "adapter_name_or_path", "2 adapters"},
        {"do_train", "false", LF_EUNSUPPORTED, "do_train", "always trains"},
        {"lora_target", "[]", LF_EINVAL, "lora_target", "k_proj"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fresh(&c);
        set_required(&c);
        if (strcmp(cases[i].key, "mask_history") == 0) lf_config_set(&c, "train_on_prompt", "true", LF_CFG_SRC_FLAG, "t", &e);
        if (strcmp(cases[i].key, "fp16") == 0) lf_config_set(&c, "bf16", "true", LF_CFG_SRC_FLAG, "t", &e);
        if (strcmp(cases[i].value, "[]") == 0) {
            st = lf_config_load_yaml_buffer(&c, "lora_target: []\n", 16, "e.yaml", &e);
        } else {
            st = lf_config_set(&c, cases[i].key, cases[i].value, LF_CFG_SRC_FILE, "case.yaml:9", &e);
        }
        CHECK(st == LF_OK, "case %zu set: %s", i, e.msg);
        st = lf_config_validate(&c, &e);
        CHECK(st == cases[i].want && contains(e.msg, cases[i].needle1) && contains(e.msg, cases[i].needle2),
              "case %s=%s: %s (%s)", cases[i].key, cases[i].value, e.msg, lf_status_name(st));
    }
    /* where a key was set appears in cross-key errors */
    fresh(&c);
    set_required(&c);
    lf_config_set(&c, "val_size", "0.1", LF_CFG_SRC_FILE, "v.yaml:4", &e);
    lf_config_set(&c, "eval_dataset", "x", LF_CFG_SRC_FLAG, "command line --eval_dataset", &e);
    st = lf_config_validate(&c, &e);
    CHECK(st == LF_EINVAL && contains(e.msg, "v.yaml:4") && contains(e.msg, "command line --eval_dataset"),
          "cross-key error names sources: %s", e.msg);
    /* evaluation with a validation split passes; do_eval derived from eval_strategy */
    fresh(&c);
    set_required(&c);
    lf_config_set(&c, "val_size", "0.1", LF_CFG_SRC_FILE, "f", &e);
    lf_config_set(&c, "eval_strategy", "steps", LF_CFG_SRC_FILE, "f", &e);
    lf_config_set(&c, "logging_steps", "10", LF_CFG_SRC_FILE, "f", &e);
    CHECK(lf_config_validate(&c, &e) == LF_OK && c.do_eval == 1 && c.eval_steps == 10, "eval ok: %s", e.msg);
    /* neat_packing implies packing; max_steps without epochs; resume modes; notes for ignored keys */
    fresh(&c);
    set_required(&c);
    lf_config_set(&c, "neat_packing", "true", LF_CFG_SRC_FILE, "f", &e);
    lf_config_set(&c, "num_train_epochs", "0", LF_CFG_SRC_FILE, "f", &e);
    lf_config_set(&c, "max_steps", "100", LF_CFG_SRC_FILE, "f", &e);
    lf_config_set(&c, "resume_from_checkpoint", "True", LF_CFG_SRC_FILE, "f", &e);
    lf_config_set(&c, "overwrite_cache", "true", LF_CFG_SRC_FILE, "n.yaml:2", &e);
    lf_config_set(&c, "bf16", "true", LF_CFG_SRC_FILE, "n.yaml:3", &e);
    lf_config_set(&c, "optim", "paged_adamw_8bit", LF_CFG_SRC_FILE, "n.yaml:4", &e);
    lf_config_set(&c, "quantization_type", "fp4", LF_CFG_SRC_FILE, "n.yaml:5", &e);
    log_reset();
    st = lf_config_validate(&c, &e);
    const char *lg = log_text();
    CHECK(st == LF_OK && c.packing == 1 && c.resume_mode == LF_RESUME_LATEST, "neat/resume: %s", e.msg);
    CHECK(contains(lg, "overwrite_cache (n.yaml:2)") && contains(lg, "bf16 (n.yaml:3)") && contains(lg, "f32") &&
              contains(lg, "paged_adamw_8bit") && contains(lg, "quantization_bit"), "notes: %s", lg);
    lf_config_set(&c, "resume_from_checkpoint", "/o/checkpoint-50", LF_CFG_SRC_FLAG, "t", &e);
    CHECK(lf_config_validate(&c, &e) == LF_OK && c.resume_mode == LF_RESUME_PATH, "resume path");
    lf_config_set(&c, "resume_from_checkpoint", "false", LF_CFG_SRC_FLAG, "t", &e);
    CHECK(lf_config_validate(&c, &e) == LF_OK && c.resume_mode == LF_RESUME_NONE, "resume false");
    CHECK(lf_config_resolve_steps(500, 100) == 500 && lf_config_resolve_steps(0.25, 10) == 3 &&
              lf_config_resolve_steps(0.01, 10) == 1, "resolve_steps");
    lf_config_free(&c);
}

/* ---- SageMaker env ---- */
static void test_sagemaker_env(void) {
    lf_train_config c = {0};
    lf_err e = {0};
    clear_sm_env();
    fresh(&c);
    /* no env: nothing changes */
    CHECK(lf_config_apply_sagemaker_env(&c, tmpdir, &e) == LF_OK && c.output_dir == NULL &&
              strcmp(c.dataset_dir, "data") == 0, "no env");
    /* toolkit variables */
    setenv("SM_MODEL_DIR", "/opt/ml/model", 1);
    setenv("SM_CHANNEL_TRAINING", "/opt/ml/input/data/training", 1);
    setenv("SM_CHANNEL_MODEL", "/opt/ml/input/data/model", 1);
    setenv("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data", 1);
    CHECK(lf_config_apply_sagemaker_env(&c, tmpdir, &e) == LF_OK, "env: %s", e.msg);
    CHECK(c.output_dir && strcmp(c.output_dir, "/opt/ml/model") == 0, "SM_MODEL_DIR -> output_dir");
    CHECK(strcmp(c.dataset_dir, "/opt/ml/input/data/training") == 0, "SM_CHANNEL_TRAINING -> dataset_dir");
    CHECK(c.model_name_or_path && strcmp(c.model_name_or_path, "/opt/ml/input/data/model") == 0,
          "SM_CHANNEL_MODEL -> model_name_or_path");
    CHECK(c.output_data_dir && strcmp(c.output_data_dir, "/opt/ml/output/data") == 0, "SM_OUTPUT_DATA_DIR");
    CHECK(strcmp(lf_config_origin_of(&c, "output_dir")->where, "env SM_MODEL_DIR") == 0, "env origin");
    lf_config_set(&c, "dataset", "d", LF_CFG_SRC_FILE, "f", &e);
    CHECK(lf_config_validate(&c, &e) == LF_OK, "SageMaker env satisfies required keys: %s", e.msg);
    /* a model path set in the config wins over the channel */
    fresh(&c);
    lf_config_set(&c, "model_name_or_path", "/mine", LF_CFG_SRC_HPARAMS, "hp", &e);
    CHECK(lf_config_apply_sagemaker_env(&c, tmpdir, &e) == LF_OK && strcmp(c.model_name_or_path, "/mine") == 0,
          "channel only when unset");
    clear_sm_env();

    /* no toolkit: the platform's TRAINING_JOB_NAME and the container layout under ml_root */
    char root[256], d[320];
    snprintf(root, sizeof root, "%s/ml", tmpdir);
    const char *dirs[] = {"", "/input", "/input/data", "/input/data/train", "/input/data/model", "/input/data/adapter",
                          "/input/config", NULL};
    for (int i = 0; dirs[i]; i++) {
        snprintf(d, sizeof d, "%s%s", root, dirs[i]);
        mkdir(d, 0755);
    }
    snprintf(d, sizeof d, "%s/input/config/checkpointconfig.json", root);
    FILE *f = fopen(d, "w");
    if (f) {
        fputs("{\"LocalPath\": \"/opt/ml/checkpoints\", \"S3Uri\": \"s3://b/c\"}", f);
        fclose(f);
    }
    fresh(&c);
    CHECK(lf_config_apply_sagemaker_env(&c, root, &e) == LF_OK && c.output_dir == NULL && c.checkpoint_dir &&
              strcmp(c.checkpoint_dir, "/opt/ml/checkpoints") == 0, "outside a job only checkpointconfig applies: %s",
          e.msg);
    setenv("TRAINING_JOB_NAME", "job-1", 1);
    fresh(&c);
    CHECK(lf_config_apply_sagemaker_env(&c, root, &e) == LF_OK, "job env: %s", e.msg);
    char want[320];
    snprintf(want, sizeof want, "%s/model", root);
    CHECK(c.output_dir && strcmp(c.output_dir, want) == 0, "job: output_dir %s", c.output_dir ? c.output_dir : "NULL");
    snprintf(want, sizeof want, "%s/input/data/train", root);
    CHECK(strcmp(c.dataset_dir, want) == 0, "job: train channel dir %s", c.dataset_dir);
    snprintf(want, sizeof want, "%s/input/data/model", root);
    CHECK(c.model_name_or_path && strcmp(c.model_name_or_path, want) == 0, "job: model channel dir");
    snprintf(want, sizeof want, "%s/input/data/adapter", root);
    CHECK(c.adapter_name_or_path.n == 1 && strcmp(c.adapter_name_or_path.items[0], want) == 0, "job: adapter channel");
    snprintf(want, sizeof want, "%s/output/data", root);
    CHECK(c.output_data_dir && strcmp(c.output_data_dir, want) == 0, "job: output data dir");
    clear_sm_env();
    lf_config_free(&c);
}

/* ---- load_all ---- */
static void test_load_all(void) {
    lf_train_config c = {0};
    lf_err e = {0};
    clear_sm_env();
    fresh(&c);
    const char *y = write_file("all.yaml", "model_name_or_path: /m\ndataset: alpaca\noutput_dir: /o\nlora_rank: 8\n"
                                           "learning_rate: 1.0e-4\n");
    const char *hp = write_file("all_hp.json", "{\"learning_rate\": \"2e-4\", \"lora_rank\": \"4\"}");
    char *argv[] = {(char *)y, "--lora_rank", "2", NULL};
    lf_status st = lf_config_load_all(&c, 3, argv, hp, tmpdir, &e);
    CHECK(st == LF_OK, "load_all: %s", e.msg);
    CHECK(c.lora_rank == 2 && c.learning_rate == 2e-4 && c.lora_alpha == 4 && c.validated, "load_all precedence");
    CHECK(c.config && strcmp(c.config, y) == 0, "config recorded");
    /* the config file named by a hyperparameter (SageMaker: a YAML in a channel) */
    fresh(&c);
    char hptext[512];
    snprintf(hptext, sizeof hptext, "{\"config\": \"%s\", \"seed\": \"11\"}", y);
    hp = write_file("all_hp2.json", hptext);
    st = lf_config_load_all(&c, 0, argv, hp, tmpdir, &e);
    CHECK(st == LF_OK && c.seed == 11 && c.model_name_or_path && strcmp(c.model_name_or_path, "/m") == 0,
          "config from hyperparameters: %s", e.msg);
    /* validation failure surfaces */
    fresh(&c);
    char *argv2[] = {(char *)y, "--bf16", "--fp16", NULL};
    st = lf_config_load_all(&c, 3, argv2, write_file("empty_hp.json", "{}"), tmpdir, &e);
    CHECK(st == LF_EINVAL && contains(e.msg, "fp16"), "load_all validate: %s", e.msg);
    lf_config_free(&c);
}

/* ---- output + randomized round trip ---- */
static uint32_t rnd(lf_rng *r, uint32_t n) { return (uint32_t)(lf_rng_next(r) % n); }

/* random valid text for key k; *is_list when the text is a comma list */
static void random_text(lf_rng *r, const lf_config_key *k, char *out, size_t cap) {
    static const char *bools[] = {"true", "false", "True", "FALSE", "yes", "no", "1", "0", "on", "off"};
    static const char *proj[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    switch (k->type) {
    case LF_CFG_BOOL: snprintf(out, cap, "%s", bools[rnd(r, 10)]); break;
    case LF_CFG_INT:
        if (k->choices) snprintf(out, cap, "%s", k->choices);
        else snprintf(out, cap, "%lld", (long long)(k->min + rnd(r, 5000)));
        break;
    case LF_CFG_FLOAT: {
        double v;
        if (k->flags & LF_CFG_F_STEPS) v = rnd(r, 2) ? (double)(1 + rnd(r, 1000)) : (1 + rnd(r, 998)) / 1000.0;
        else if (strcmp(k->name, "val_size") == 0) v = rnd(r, 999) / 1000.0;
        else if (k->flags & LF_CFG_F_MAX) v = k->min + (k->max - k->min) * (rnd(r, 1000) / 1000.0);
        else v = ldexp(1.0 + rnd(r, 1u << 20) / (double)(1u << 20), (int)rnd(r, 20) - 15);
        snprintf(out, cap, "%.17g", v);
        break;
    }
    case LF_CFG_STRING: snprintf(out, cap, "s_%u/x-%u", rnd(r, 100000), rnd(r, 100)); break;
    case LF_CFG_ENUM: {
        int n = 1;
        for (const char *p = k->choices; *p; p++) n += *p == '|';
        snprintf(out, cap, "%s", lf_config_enum_name(k, (int)rnd(r, (uint32_t)n)));
        break;
    }
    case LF_CFG_LIST: {
        int n = 1 + (int)rnd(r, 3);
        size_t j = 0;
        for (int i = 0; i < n && j < cap; i++) {
            int w = k->choices ? snprintf(out + j, cap - j, "%s%s", i ? "," : "", proj[rnd(r, 7)])
                               : snprintf(out + j, cap - j, "%sn%u", i ? "," : "", rnd(r, 1000));
            j += (size_t)w;
        }
        break;
    }
    }
}

static void test_roundtrip(lf_rng *r) {
    lf_train_config a = {0}, b = {0};
    lf_err e = {0};
    size_t n;
    const lf_config_key *s = lf_config_schema(&n);
    char text[256], buf[512];
    for (int iter = 0; iter < 40; iter++) {
        fresh(&a);
        for (size_t i = 0; i < n; i++) {
            if (strcmp(s[i].name, "config") == 0 || rnd(r, 3) == 0) continue;
            random_text(r, &s[i], text, sizeof text);
            int how = (int)rnd(r, 4);
            lf_status st;
            if (how == 0) { /* flag */
                snprintf(buf, sizeof buf, "--%s=%s", s[i].name, text);
                char *argv[] = {buf, NULL};
                st = lf_config_load_flags(&a, 1, argv, NULL, &e);
            } else if (how == 1) { /* YAML, quoted or plain */
                snprintf(buf, sizeof buf, rnd(r, 2) ? "%s: \"%s\"\n" : "%s: %s\n", s[i].name, text);
                if (s[i].type == LF_CFG_BOOL || s[i].type == LF_CFG_INT || s[i].type == LF_CFG_FLOAT ||
                    s[i].type == LF_CFG_ENUM || s[i].type == LF_CFG_LIST)
                    st = lf_config_load_yaml_buffer(&a, buf, strlen(buf), "r.yaml", &e);
                else
                    st = lf_config_load_yaml_buffer(&a, buf, strlen(buf), "r.yaml", &e);
            } else if (how == 2) { /* hyperparameters.json, JSON-quoted (SDK json.dumps) */
                snprintf(buf, sizeof buf, "{\"%s\": \"\\\"%s\\\"\"}", s[i].name, text);
                const char *p = write_file("r_hp.json", buf);
                st = lf_config_load_hyperparameters(&a, p, NULL, &e);
            } else { /* hyperparameters.json, raw str() */
                snprintf(buf, sizeof buf, "{\"%s\": \"%s\"}", s[i].name, text);
                const char *p = write_file("r_hp.json", buf);
                st = lf_config_load_hyperparameters(&a, p, NULL, &e);
            }
            CHECK(st == LF_OK, "iter %d key %s text %s via %d: %s", iter, s[i].name, text, how, e.msg);
            /* the typed field holds the value */
            const lf_config_origin *o = lf_config_origin_of(&a, s[i].name);
            json_t *j = NULL;
            lf_config_to_json(&a, &j, &e);
            json_t *v = json_object_get(j, s[i].name);
            int ok = 1;
            if (s[i].type == LF_CFG_FLOAT) {
                double want = strtod(text, NULL);
                ok = v && json_is_number(v) && json_number_value(v) == want;
            } else if (s[i].type == LF_CFG_INT) {
                ok = v && json_is_integer(v) && json_integer_value(v) == strtoll(text, NULL, 10);
            } else if (s[i].type == LF_CFG_STRING || s[i].type == LF_CFG_ENUM) {
                ok = v && json_is_string(v) && strcmp(json_string_value(v), text) == 0;
            } else if (s[i].type == LF_CFG_BOOL) {
                int want = 0;
                const char *t = text;
                want = !strcmp(t, "true") || !strcmp(t, "True") || !strcmp(t, "yes") || !strcmp(t, "1") || !strcmp(t, "on");
                ok = v && json_is_boolean(v) && json_is_true(v) == want;
            } else {
                char *joined = NULL;
                size_t cap = 0;
                FILE *m = open_memstream(&joined, &cap);
                for (size_t q = 0; m && v && q < json_array_size(v); q++)
                    fprintf(m, "%s%s", q ? "," : "", json_string_value(json_array_get(v, q)));
                if (m) fclose(m);
                ok = joined && strcmp(joined, text) == 0;
                free(joined);
            }
            CHECK(ok && o && o->src >= LF_CFG_SRC_FILE, "iter %d key %s text %s via %d not stored", iter, s[i].name, text,
                  how);
            json_decref(j);
        }
        /* to_json -> load_json -> to_json is the identity */
        json_t *j1 = NULL, *j2 = NULL;
        CHECK(lf_config_to_json(&a, &j1, &e) == LF_OK, "to_json");
        char *dump = json_dumps(j1, JSON_SORT_KEYS);
        fresh(&b);
        lf_status st = lf_config_load_json_buffer(&b, dump, strlen(dump), "resolved.json", &e);
        CHECK(st == LF_OK, "reload: %s", e.msg);
        lf_config_to_json(&b, &j2, &e);
        json_object_del(j1, "config");
        json_object_del(j2, "config");
        CHECK(json_equal(j1, j2), "round trip differs (iter %d)", iter);
        free(dump);
        json_decref(j1);
        json_decref(j2);
    }
    /* origins and print */
    json_t *oj = NULL;
    CHECK(lf_config_origins_to_json(&a, &oj, &e) == LF_OK && json_object_size(oj) > 0, "origins");
    json_decref(oj);
    FILE *f = tmpfile();
    lf_config_print(f, &a);
    CHECK(ftell(f) > 0, "print");
    fclose(f);
    lf_config_free(&a);
    lf_config_free(&b);
}

/* ---- inputs found by tests/fuzz/fuzz_config.c (docs/fuzzing.md) ---- */
/* compute_dtype (alias bnb_4bit_compute_dtype) and device: what training runs in and where; values it cannot honour
 * are refused (LF_EUNSUPPORTED naming the key), never accepted and ignored. */
static void test_compute_keys(void) {
    lf_train_config cfg;
    lf_err err;
    lf_config_defaults(&cfg, &err);
    CHECK(cfg.compute_dtype == 0 && cfg.device == 0, "defaults: compute_dtype auto, device auto");
    CHECK(lf_config_set(&cfg, "bnb_4bit_compute_dtype", "float32", LF_CFG_SRC_FLAG, "test", &err) == LF_OK &&
              cfg.compute_dtype == 1, "bnb_4bit_compute_dtype float32: %s", err.msg);
    lf_status st = lf_config_set(&cfg, "bnb_4bit_compute_dtype", "bfloat16", LF_CFG_SRC_FLAG, "test", &err);
    CHECK(st == LF_EUNSUPPORTED && strstr(err.msg, "compute_dtype") && strstr(err.msg, "float32"),
          "bnb_4bit_compute_dtype bfloat16 refused: %d %s", st, err.msg);
    st = lf_config_set(&cfg, "compute_dtype", "int8", LF_CFG_SRC_FLAG, "test", &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "compute_dtype"), "compute_dtype int8: %d %s", st, err.msg);
    CHECK(lf_config_set(&cfg, "device", "cpu", LF_CFG_SRC_FLAG, "test", &err) == LF_OK && cfg.device == 1,
          "device cpu: %s", err.msg);
    st = lf_config_set(&cfg, "device", "cuda", LF_CFG_SRC_FLAG, "test", &err);
    CHECK(st == LF_EUNSUPPORTED && strstr(err.msg, "device") && strstr(err.msg, "not support"), "device cuda: %d %s", st,
          err.msg);
    lf_config_free(&cfg);
}

static void test_fuzz_regressions(void) {
    lf_train_config cfg;
    lf_err err;
    /* a flag value with invalid UTF-8 used to be accepted, then lf_config_to_json dropped it ("dataset": [])
     * or failed: every source now refuses bytes that are not UTF-8 text, naming the key */
    char a0[] = "--model_name_or_path", a1[] = "/m", a2[] = "dataset=a\xd4\x9d\xff\xd2-packing";
    char *argv[] = {a0, a1, a2};
    lf_config_defaults(&cfg, &err);
    lf_status st = lf_config_load_flags(&cfg, 3, argv, NULL, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "dataset") && strstr(err.msg, "UTF-8"), "bad UTF-8 flag: %d %s", st,
          err.msg);
    CHECK(lf_config_set(&cfg, "output_dir", "/o\xc3", LF_CFG_SRC_FLAG, "test", &err) == LF_EINVAL,
          "bad UTF-8 lf_config_set: %s", err.msg);
    CHECK(lf_config_set(&cfg, "lora_target", "q_proj,\xed\xa0\x80", LF_CFG_SRC_FLAG, "test", &err) == LF_EINVAL,
          "surrogate in a list: %s", err.msg);
    CHECK(lf_config_set(&cfg, "output_dir", "/o/caf\xc3\xa9", LF_CFG_SRC_FLAG, "test", &err) == LF_OK, "UTF-8 ok: %s",
          err.msg);
    json_t *j = NULL;
    CHECK(lf_config_to_json(&cfg, &j, &err) == LF_OK && j && json_is_string(json_object_get(j, "output_dir")),
          "to_json after refusals: %s", err.msg);
    json_decref(j);
    /* an empty list for a list key that cannot be unset (lora_target, report_to) was written as null by
     * lf_config_to_json and so read back as the default ("all"); it is written as [] now (validation still
     * refuses it), and nullable keys stay null */
    lf_config_free(&cfg);
    lf_config_defaults(&cfg, &err);
    const char *js = "{\"lora_target\": [ ], \"report_to\": [], \"dataset\": []}";
    CHECK(lf_config_load_json_buffer(&cfg, js, strlen(js), "t.json", &err) == LF_OK, "empty lists load: %s", err.msg);
    j = NULL;
    CHECK(lf_config_to_json(&cfg, &j, &err) == LF_OK, "to_json: %s", err.msg);
    json_t *lt = json_object_get(j, "lora_target"), *rt = json_object_get(j, "report_to");
    CHECK(json_is_array(lt) && json_array_size(lt) == 0 && json_is_array(rt) && json_array_size(rt) == 0 &&
              json_is_null(json_object_get(j, "dataset")),
          "empty lists written as [] (null where unset)");
    char *txt = json_dumps(j, 0);
    lf_train_config back;
    lf_config_defaults(&back, &err);
    CHECK(txt && lf_config_load_json_buffer(&back, txt, strlen(txt), "back.json", &err) == LF_OK &&
              back.lora_target.n == 0 && back.report_to.n == 0,
          "empty lists read back empty: %s", err.msg);
    free(txt);
    json_decref(j);
    lf_config_free(&back);
    lf_config_free(&cfg);
}

int main(void) {
    const char *env = getenv("LF_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    printf("test_config: seed %llu (LF_TEST_SEED to reproduce)\n", (unsigned long long)seed);
    lf_rng rng;
    lf_rng_seed(&rng, seed);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/lf_test_config_XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    logf_ = tmpfile();
    if (!logf_) return 1;
    lf_log_set_sink(logf_);
    lf_log_set_level(LF_LOG_INFO);

    test_schema();
    test_defaults();
    test_yaml();
    test_json();
    test_hyperparameters();
    test_flags();
    test_precedence();
    test_validate();
    test_sagemaker_env();
    test_load_all();
    test_roundtrip(&rng);
    test_fuzz_regressions();
    test_compute_keys();

    lf_log_set_sink(NULL);
    fclose(logf_);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) printf("note: could not remove %s\n", tmpdir);
    printf("test_config: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
