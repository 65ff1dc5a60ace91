/* config.h - Hugging Face config.json (+ generation_config.json) for Llama, Mistral, Qwen2 and Qwen3 causal LMs.
 *
 * Invariants after a successful lf_model_config_load: all sizes > 0, H % KH == 0, D even and <= 512,
 * window[l] >= 0 for every layer (0 = full causal attention). */
#ifndef LF_MODEL_CONFIG_H
#define LF_MODEL_CONFIG_H

#include <stdint.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lf_arch { LF_ARCH_LLAMA = 0, LF_ARCH_MISTRAL = 1, LF_ARCH_QWEN2 = 2, LF_ARCH_QWEN3 = 3 } lf_arch;

typedef enum lf_rope_type { LF_ROPE_DEFAULT = 0, LF_ROPE_LINEAR = 1, LF_ROPE_LLAMA3 = 2 } lf_rope_type;

#define LF_MAX_LAYERS 512
#define LF_MAX_EOS 8
#define LF_MAX_HEAD_DIM 512

typedef struct lf_model_config {
    lf_arch arch;
    char architecture[64]; /* "LlamaForCausalLM" */
    int64_t C;             /* hidden_size */
    int64_t FF;            /* intermediate_size */
    int64_t L;             /* num_hidden_layers */
    int64_t H;             /* num_attention_heads */
    int64_t KH;            /* num_key_value_heads */
    int64_t D;             /* head_dim */
    int64_t V;             /* vocab_size */
    int64_t max_pos;       /* max_position_embeddings */
    double rope_theta;
    float rms_eps;
    int tie_embeddings;
    int qkv_bias;          /* q/k/v projections have bias (Qwen2; Llama attention_bias) */
    int o_bias;            /* o_proj has bias (Llama attention_bias) */
    int mlp_bias;          /* gate/up/down have bias (Llama mlp_bias) */
    /* optional parts of a layer (0 = absent) */
    int qk_norm;           /* per-head RMSNorm of q and k over D before RoPE (Qwen3: self_attn.q_norm/k_norm [D]) */
    int64_t window[LF_MAX_LAYERS]; /* per-layer sliding window, 0 = none */
    /* rope scaling */
    lf_rope_type rope_type;
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int64_t rope_original_max_pos;
    /* special tokens (-1 = unset) */
    int64_t bos_id;
    int64_t eos_ids[LF_MAX_EOS];
    int n_eos;
    char torch_dtype[16];
    /* config.json "quantization_config" (bitsandbytes 4-bit checkpoints): prequant_4bit = 1 when present with
     * quant_method "bitsandbytes" and load_in_4bit; the per-tensor quant_state blobs carry the details. */
    int prequant_4bit;
    char bnb_quant_type[8]; /* "nf4" / "fp4" as the config says (informational) */
    int bnb_double_quant;
} lf_model_config;

/* The seven decoder linears (LoRA targets), in this fixed order everywhere (layers, adapters, checkpoints). */
typedef enum lf_module {
    LF_MOD_Q = 0, LF_MOD_K, LF_MOD_V, LF_MOD_O, LF_MOD_GATE, LF_MOD_UP, LF_MOD_DOWN, LF_MOD_COUNT
} lf_module;
/* "q_proj" ... "down_proj". */
const char *lf_module_name(lf_module m);
/* HF parent of the module: "self_attn" (q/k/v/o) or "mlp" (gate/up/down). */
const char *lf_module_parent(lf_module m);
/* Weight shape [OC, C] of module m: q [H*D, C], k/v [KH*D, C], o [C, H*D], gate/up [FF, C], down [C, FF]. */
void lf_module_shape(const lf_model_config *cfg, lf_module m, int64_t *OC, int64_t *C);
/* Index of a module name, or -1. */
int lf_module_from_name(const char *name);

/* Parse DIR/config.json (required) and DIR/generation_config.json (optional). Unknown architectures,
 * missing fields and invalid values fail with the file and key named. */
lf_status lf_model_config_load(const char *dir, lf_model_config *cfg, lf_err *err);

/* inv_freq[D/2] for RoPE, following transformers' rope init functions (default, linear, llama3). */
void lf_model_config_inv_freq(const lf_model_config *cfg, float *inv_freq);

const char *lf_arch_name(lf_arch a);

#ifdef __cplusplus
}
#endif
#endif
