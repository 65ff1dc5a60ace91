/* cli.h - subcommand entry points and the small flag-parsing helpers they share.
 *
 * Every command: int lf_cmd_<name>(int argc, char **argv) with argv[0] the command name; returns the
 * process exit code (0 ok, 1 runtime/input error, 2 usage error) and prints errors as
 * "loraforge <cmd>: <message>" on stderr. */
#ifndef LF_CLI_CLI_H
#define LF_CLI_CLI_H

#include <stdint.h>

#include "core/tensor.h"

int lf_cmd_make_tiny(int argc, char **argv);
int lf_cmd_score(int argc, char **argv);
int lf_cmd_generate(int argc, char **argv);
int lf_cmd_quantize(int argc, char **argv);
int lf_cmd_train(int argc, char **argv);
int lf_cmd_merge(int argc, char **argv);
int lf_cmd_inspect(int argc, char **argv);
int lf_cmd_chat_template(int argc, char **argv);
int lf_cmd_tokenize(int argc, char **argv);
int lf_cmd_detokenize(int argc, char **argv);
int lf_cmd_serve(int argc, char **argv);

/* Flag value parsing: on error print "loraforge CMD: --flag: ..." and return nonzero.
 * lf_cli_need_value: argv[i] needs a value: argv[i + 1] must exist and must not be another flag ("--x";
 * "-1" is a value). */
int lf_cli_need_value(const char *cmd, int argc, char **argv, int i);
/* The entry of known (NULL-terminated) closest to arg by edit distance, when close enough to be a typo; else NULL. */
const char *lf_cli_suggest(const char *arg, const char *const *known);
/* "loraforge CMD: unknown option 'ARG'; did you mean '--x'? (see loraforge CMD --help)", the suggestion the
 * closest of known (NULL-terminated: every flag of the command) when one is close. Returns 2 (the exit code). */
int lf_cli_unknown_option(const char *cmd, const char *arg, const char *const *known);
/* argv[*i] takes a value: it must be one of known (else lf_cli_unknown_option) and have a value
 * (lf_cli_need_value). Advances *i to the value and returns it; NULL after printing the error. */
const char *lf_cli_flag_value(const char *cmd, int argc, char **argv, int *i, const char *const *known);
int lf_cli_parse_i64(const char *cmd, const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out);
int lf_cli_parse_f64(const char *cmd, const char *flag, const char *s, double lo, double hi, double *out);
/* Parse "1 2 3" (spaces or commas) into a malloc'd int32 array (caller frees). */
int lf_cli_parse_tokens(const char *cmd, const char *s, int32_t **out, int64_t *n);
/* Print "loraforge CMD: msg" to stderr. */
/* Model loading flags shared by commands: --quantization-bit 4 (alias --quantization_bit), --quant-type nf4|fp4,
 * --quant-blocksize N, and the valueless --no-double-quant (short_names: also --type / --blocksize). Returns 1 when argv[*i] was one of them (and
 * advances *i past its value), 0 when it was not, -1 after printing an error. */
struct lf_model_options;
int lf_cli_model_option(const char *cmd, int argc, char **argv, int *i, struct lf_model_options *o, int short_names);
#define LF_CLI_MODEL_FLAG_NAMES "--quantization-bit", "--quantization_bit", "--quant-type", "--quant-blocksize", \
                                "--no-double-quant"
#define LF_CLI_MODEL_OPTIONS_HELP                                                                         \
    "  --quantization-bit 4  quantize q/k/v/o/gate/up/down to 4 bits on load (bitsandbytes NF4/FP4)\n"    \
    "  --quant-type T        nf4 (default) or fp4\n"                                                       \
    "  --quant-blocksize N   elements per absmax block: a power of two in 32..4096 (default 64)\n"        \
    "  --no-double-quant     keep absmax in f32 (default: quantize it to 8 bits, as QLoRA does)\n"
/* --compute-dtype / --dtype of the commands that run the model (score, generate, serve; parsed by
 * lf_cli_model_option when short_names is 0). */
#define LF_CLI_COMPUTE_HELP                                                                               \
    "  --compute-dtype T     activations and KV cache: auto (default: f32 on the cpu, bf16 on cuda), f32,\n" \
    "                        bf16 or f16 (also --dtype; torch names such as bfloat16 and half accepted)\n"
/* Parse a compute dtype value ("auto" -> LF_DTYPE_INVALID, resolved at load). 0 ok, 2 after a usage error
 * naming `what`. */
int lf_cli_parse_compute_dtype(const char *cmd, const char *what, const char *v, lf_dtype *out);
/* One stderr line: the loaded model's weight memory by kind. */
struct lf_model;
void lf_cli_report_memory(const char *cmd, const struct lf_model *m);
/* Load the PEFT adapter in dir (validated against m) and apply it unmerged to m's forward. *out owns the
 * adapter's arrays and must outlive m's sessions (lf_lora_free after). 0 ok, 1 after printing an error. */
struct lf_lora_adapter;
int lf_cli_apply_adapter(const char *cmd, struct lf_model *m, const char *dir, struct lf_lora_adapter **out);
void lf_cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
