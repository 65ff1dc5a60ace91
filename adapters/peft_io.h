/* peft_io.h - PEFT LoRA/DoRA adapter directories (adapter_config.json + adapter_model.safetensors), read and
 * written the way peft 0.21 does, so that PeftModel.from_pretrained loads what we write and we load what peft,
 * LLaMA-Factory or Unsloth write.
 *
 * Written (lf_peft_save):
 *   adapter_model.safetensors  metadata {"format":"pt"}; for every present slot, in any order the safetensors
 *       writer picks (it sorts like the reference): base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight
 *       [R, C], ...lora_B.weight [OC, R], DoRA ...lora_magnitude_vector [OC] (no ".weight", as peft saves it);
 *       mlp.{gate,up,down}_proj for the MLP. F32 (default), or BF16/F16 on request.
 *   adapter_config.json  exactly the 41 keys peft 0.21.2 writes for a LoRA config (alora_invocation_tokens
 *       alpha_pattern arrow_config auto_mapping base_model_name_or_path bias corda_config ensure_weight_tying
 *       eva_config exclude_modules fan_in_fan_out inference_mode init_lora_weights kasa_config layer_replication
 *       layers_pattern layers_to_transform loftq_config lora_alpha lora_bias lora_dropout lora_ga_config
 *       megatron_config megatron_core modules_to_save monteclora_config peft_type peft_version
 *       qalora_group_size r rank_pattern revision target_modules target_parameters task_type
 *       trainable_token_indices use_bdlora use_dora use_qalora use_rslora velora_config), the features we do not
 *       implement at their off values and peft_version = LF_PEFT_FORMAT_VERSION, formatted as Python's
 *       json.dumps(indent=2, sort_keys=True) (ASCII-only, no trailing newline, floats as Python repr), with
 *       inference_mode true: byte-identical to peft 0.21.2's save_pretrained. peft drops (with a warning) keys
 *       it does not know; peft 0.12 and older refuse them.
 *   Each file is written atomically (temp + fsync + rename); the weights first, then the config.
 *
 * Read (lf_peft_load):
 *   - adapter_config.json: peft_type "LORA"; r; lora_alpha (int or float); lora_dropout; use_rslora; use_dora;
 *     target_modules as a list, a regex string, "all-linear", or null (= PEFT's q_proj, v_proj default);
 *     rank_pattern / alpha_pattern (per-module rank and alpha are supported); init_lora_weights true, false,
 *     "gaussian" or "eva" (the latter kept as true: it only affects initialisation).
 *     Refused with LF_EUNSUPPORTED and the key named: bias != "none", fan_in_fan_out true, modules_to_save,
 *     layers_to_transform, layer_replication, megatron_config, non-empty loftq_config, exclude_modules,
 *     lora_bias true, init_lora_weights "pissa*"/"olora"/"loftq"/"corda" (these change the base weights), and
 *     any other unknown key whose value is true or a non-empty object/array (a feature we do not implement);
 *     unknown keys that are null/false/empty/a string/a number are ignored (newer peft versions add such keys).
 *     Wrong JSON types are LF_EFORMAT naming file and key.
 *   - adapter_model.safetensors (adapter_model.bin alone: LF_EUNSUPPORTED, asking for a safetensors
 *     conversion). Tensors in F32, BF16 or F16 (converted to f32). Names with or without the
 *     "base_model.model." prefix, with or without an adapter-name infix (lora_A.default.weight), DoRA magnitude
 *     as lora_magnitude_vector[.<adapter>][.weight]. Every tensor's shape is checked against the model config
 *     and the rank (error names tensor, expected and found shape); a missing tensor, a tensor of a module the
 *     config does not target, an unknown tensor (lm_head/embedding/bias adapters) or a duplicate is an error.
 *
 * Ownership: lf_peft_load returns a new lf_lora_adapter (lf_lora_free). Strings out of lf_peft_config_json are
 * malloc'd, caller frees. */
#ifndef LF_ADAPTERS_PEFT_IO_H
#define LF_ADAPTERS_PEFT_IO_H

#include <stddef.h>
#include <stdint.h>

#include "adapters/lora.h" // defines: lf_lora_config, lf_lora_adapter
#include "core/status.h"
#include "core/tensor.h"   // defines: lf_dtype

#ifdef __cplusplus
extern "C" {
#endif

#define LF_PEFT_CONFIG_NAME "adapter_config.json"
#define LF_PEFT_FORMAT_VERSION "0.21.2" /* the peft release whose adapter_config.json we write (peft_version) */
#define LF_PEFT_WEIGHTS_NAME "adapter_model.safetensors"
#define LF_PEFT_LEGACY_WEIGHTS_NAME "adapter_model.bin"

typedef enum lf_peft_kind { LF_PEFT_A = 0, LF_PEFT_B = 1, LF_PEFT_MAG = 2 } lf_peft_kind;

/* Canonical saved name: "base_model.model.model.layers.<l>.<parent>.<module>.lora_A.weight" / lora_B.weight /
 * lora_magnitude_vector. Truncates to cap (always NUL-terminated). */
void lf_peft_tensor_name(char *buf, size_t cap, int64_t l, lf_module m, lf_peft_kind k);
/* Parse any accepted spelling (see above); 1 on success, 0 when the name is not an adapter tensor of a decoder
 * linear. */
int lf_peft_parse_name(const char *name, int64_t *l, lf_module *m, lf_peft_kind *k);

/* Parse adapter_config.json (path) into cfg (fully overwritten). */
lf_status lf_peft_config_read(const char *path, lf_lora_config *cfg, lf_err *err);
/* The adapter_config.json text for cfg (peft 0.21.2 key set and formatting); *out malloc'd, caller frees. */
lf_status lf_peft_config_json(const lf_lora_config *cfg, char **out, lf_err *err);
/* Write it atomically to path. */
lf_status lf_peft_config_write(const lf_lora_config *cfg, const char *path, lf_err *err);

/* Load DIR/adapter_config.json + DIR/adapter_model.safetensors for the model mc (shapes validated). */
lf_status lf_peft_load(const char *dir, const lf_model_config *mc, lf_lora_adapter **out, lf_err *err);
/* Save a to DIR (created when missing): adapter_model.safetensors in dtype (LF_DTYPE_F32, BF16 or F16; round to
 * nearest even), then adapter_config.json from a->cfg. */
lf_status lf_peft_save(const lf_lora_adapter *a, const char *dir, lf_dtype dtype, lf_err *err);

/* Python repr() of a double ("0.05", "16.0", "1e-05", "1e+16", "NaN", "Infinity"): the shortest digits that
 * read back to x, as json.dumps prints floats. */
void lf_peft_float_repr(double x, char *buf, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
