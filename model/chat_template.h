/* chat_template.h - Hugging Face chat templates (Jinja2) rendered byte-identically to transformers 4.44's
 * tokenizer.apply_chat_template(..., tokenize=False), plus named built-in templates for models without one.
 *
 * Invariants: the environment matches transformers' (trim_blocks, lstrip_blocks, raise_exception, tojson
 * with ensure_ascii=False); render never crashes on bad templates or input: syntax errors come back as
 * LF_EFORMAT with line/column, raise_exception(msg) as LF_EINVAL with exactly msg, Jinja filters we do not
 * implement as LF_EUNSUPPORTED, runaway templates as LF_EINVAL (nesting depth, steps, output size and work
 * limits) or LF_ENOMEM (memory limit). A compiled template is immutable (but for set_limits, called before
 * it is shared) and may be rendered from several threads at once. */
#ifndef LF_MODEL_CHAT_TEMPLATE_H
#define LF_MODEL_CHAT_TEMPLATE_H

#include <jansson.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lf_chat_template lf_chat_template;

/* Compile Jinja source (copied; the caller keeps source). */
lf_status lf_chat_template_compile(const char *source, lf_chat_template **out, lf_err *err);
/* NULL is a no-op. */
void lf_chat_template_free(lf_chat_template *t);

/* What one render may spend; 0 in a field means its default. Nesting depths (parser 200, render 512 levels
 * of expressions, blocks, macro calls and nested values) are fixed: they protect the C stack. */
typedef struct lf_chat_template_limits {
    size_t max_output;   /* bytes of rendered text, also of one captured macro / set block (64 MiB) */
    size_t max_memory;   /* bytes allocated while rendering, the converted messages included (256 MiB) */
    long long max_steps; /* statements run + loop iterations (5,000,000) */
    long long max_work;  /* scanning / comparing that allocates nothing, in units (100,000,000: about 1 s) */
} lf_chat_template_limits;

/* Set t's limits for later renders (NULL = all defaults). Not thread-safe: call before rendering. */
void lf_chat_template_set_limits(lf_chat_template *t, const lf_chat_template_limits *limits);

/* Render with messages (borrowed JSON array of {role, content, ...}), add_generation_prompt, and extra
 * variables (borrowed JSON object or NULL: bos_token, eos_token, tools, documents, enable_thinking, ...).
 * As in transformers, `tools` and `documents` are defined as none unless extra sets them.
 * *out: malloc'd NUL-terminated text, caller frees (the text may itself contain NUL bytes from the input;
 * out_len, if non-NULL, receives the byte length). */
lf_status lf_chat_template_render(const lf_chat_template *t, const json_t *messages, int add_generation_prompt,
                                  const json_t *extra, char **out, lf_err *err);
lf_status lf_chat_template_render_len(const lf_chat_template *t, const json_t *messages, int add_generation_prompt,
                                      const json_t *extra, char **out, size_t *out_len, lf_err *err);

/* The template of a model: path is a model directory or a tokenizer_config.json file. Reads the
 * "chat_template" key (a string, or a list of {name, template} where "default" is used), else a
 * chat_template.jinja file next to it. *source_out: malloc'd, caller frees. LF_ENOTFOUND when none. */
lf_status lf_chat_template_from_model(const char *model_dir_or_tokenizer_config, char **source_out, lf_err *err);

/* The special-token variables transformers passes to templates (its special_tokens_map): bos_token,
 * eos_token, unk_token, sep_token, pad_token, cls_token, mask_token (strings or {"content": ...} objects in
 * tokenizer_config.json; null/missing ones are left out) and additional_special_tokens (list of strings).
 * *vars_out: new JSON object reference (caller json_decref); an empty object when the file is missing. */
lf_status lf_chat_template_special_tokens(const char *model_dir_or_tokenizer_config, json_t **vars_out, lf_err *err);

/* Built-in templates by name, mirroring LLaMA-Factory's `template:` formats: llama3, llama2, mistral,
 * qwen (alias chatml), gemma, phi, alpaca, default. Returns static Jinja source or NULL for unknown names. */
const char *lf_chat_template_builtin(const char *name);
/* NULL-terminated list of built-in names (for --help and tests). */
const char *const *lf_chat_template_builtin_names(void);

#ifdef __cplusplus
}
#endif
#endif
