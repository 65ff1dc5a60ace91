/* config.c - config.json / generation_config.json parsing and RoPE frequency setup for Llama-family models. */
#include "model/config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/fileio.h"
#include "core/json.h"

const char *lf_arch_name(lf_arch a) {
    switch (a) {
    case LF_ARCH_LLAMA: return "LlamaForCausalLM";
    case LF_ARCH_MISTRAL: return "MistralForCausalLM";
    case LF_ARCH_QWEN2: return "Qwen2ForCausalLM";
    case LF_ARCH_QWEN3: return "Qwen3ForCausalLM";
    }
    return "?";
}

/* eos_token_id / bos_token_id may be an int, a list of ints, or null. */
static lf_status read_eos(const json_t *obj, const char *key, lf_model_config *cfg, const char *ctx, lf_err *err) {
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return LF_OK;
    cfg->n_eos = 0;
    if (json_is_integer(v)) {
        cfg->eos_ids[cfg->n_eos++] = json_integer_value(v);
        return LF_OK;
    }
    if (json_is_array(v)) {
        size_t i;
        const json_t *e;
        json_array_foreach(v, i, e) {
            if (!json_is_integer(e)) return lf_err_set(err, LF_EFORMAT, "%s: \"%s\"[%zu] must be an integer", ctx, key, i);
            if (cfg->n_eos < LF_MAX_EOS) cfg->eos_ids[cfg->n_eos++] = json_integer_value(e);
        }
        return LF_OK;
    }
    return lf_err_set(err, LF_EFORMAT, "%s: \"%s\" must be an integer or a list of integers", ctx, key);
}

/* "rope_scaling" (transformers 4) or "rope_parameters" (transformers 5, which also carries rope_theta). */
static lf_status read_rope_scaling(const json_t *root, lf_model_config *cfg, const char *ctx, lf_err *err) {
    const char *key = "rope_scaling";
    const json_t *rs = json_object_get(root, key);
    cfg->rope_type = LF_ROPE_DEFAULT;
    if (!rs || json_is_null(rs)) rs = json_object_get(root, key = "rope_parameters");
    if (!rs || json_is_null(rs)) return LF_OK;
    if (!json_is_object(rs)) return lf_err_set(err, LF_EFORMAT, "%s: \"%s\" must be an object or null", ctx, key);
    lf_status st = lf_json_num_opt(rs, "rope_theta", cfg->rope_theta, &cfg->rope_theta, ctx, err);
    if (st) return st;
    if (!(cfg->rope_theta > 0)) return lf_err_set(err, LF_EINVAL, "%s: %s.rope_theta must be > 0", ctx, key);
    const char *type = NULL;
    if ((st = lf_json_str_opt(rs, "rope_type", NULL, &type, ctx, err))) return st;
    if (!type && (st = lf_json_str_opt(rs, "type", NULL, &type, ctx, err))) return st;
    if (!type) return lf_err_set(err, LF_EFORMAT, "%s: %s has no \"rope_type\"", ctx, key);
    if (strcmp(type, "default") == 0) return LF_OK;
    if ((st = lf_json_num(rs, "factor", &cfg->rope_factor, ctx, err))) return st;
    if (!(cfg->rope_factor >= 1.0))
        return lf_err_set(err, LF_EINVAL, "%s: rope_scaling.factor must be >= 1, got %g", ctx, cfg->rope_factor);
    if (strcmp(type, "linear") == 0) {
        cfg->rope_type = LF_ROPE_LINEAR;
        return LF_OK;
    }
    if (strcmp(type, "llama3") == 0) {
        cfg->rope_type = LF_ROPE_LLAMA3;
        if ((st = lf_json_num(rs, "low_freq_factor", &cfg->rope_low_freq_factor, ctx, err)) ||
            (st = lf_json_num(rs, "high_freq_factor", &cfg->rope_high_freq_factor, ctx, err)) ||
            (st = lf_json_int(rs, "original_max_position_embeddings", &cfg->rope_original_max_pos, ctx, err)))
            return st;
        if (!(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor) || cfg->rope_original_max_pos <= 0)
            return lf_err_set(err, LF_EINVAL, "%s: rope_scaling llama3 needs high_freq_factor > low_freq_factor and original_max_position_embeddings > 0", ctx);
        return LF_OK;
    }
    return lf_err_set(err, LF_EUNSUPPORTED, "%s: %s type \"%s\" is not supported (supported: default, linear, llama3)", ctx, key, type);
}

lf_status lf_model_config_load(const char *dir, lf_model_config *cfg, lf_err *err) {
    char path[4096], gpath[4096];
    json_t *root = NULL, *gen = NULL;
    lf_status st = LF_OK;
    memset(cfg, 0, sizeof *cfg);
    cfg->bos_id = -1;
    LF_TRY(lf_path_join(path, sizeof path, dir, "config.json", err));
    LF_TRY(lf_json_load_file(path, &root, err));
    if (!json_is_object(root)) {
        st = lf_err_set(err, LF_EFORMAT, "%s: top level must be an object", path);
        goto fail;
    }

    /* architecture: "architectures": ["LlamaForCausalLM"], falling back to model_type */
    const json_t *archs = json_object_get(root, "architectures");
    const char *arch = NULL;
    if (json_is_array(archs) && json_array_size(archs) > 0 && json_is_string(json_array_get(archs, 0)))
        arch = json_string_value(json_array_get(archs, 0));
    const char *mtype = NULL;
    LF_TRY(lf_json_str_opt(root, "model_type", NULL, &mtype, path, err));
    if (arch ? strcmp(arch, "LlamaForCausalLM") == 0 : (mtype && strcmp(mtype, "llama") == 0))
        cfg->arch = LF_ARCH_LLAMA;
    else if (arch ? strcmp(arch, "MistralForCausalLM") == 0 : (mtype && strcmp(mtype, "mistral") == 0))
        cfg->arch = LF_ARCH_MISTRAL;
    else if (arch ? strcmp(arch, "Qwen2ForCausalLM") == 0 : (mtype && strcmp(mtype, "qwen2") == 0))
        cfg->arch = LF_ARCH_QWEN2;
    else if (arch ? strcmp(arch, "Qwen3ForCausalLM") == 0 : (mtype && strcmp(mtype, "qwen3") == 0))
        cfg->arch = LF_ARCH_QWEN3;
    else {
        st = lf_err_set(err, LF_EUNSUPPORTED,
                        "%s: unknown architecture \"%s\" (model_type \"%s\"); supported: LlamaForCausalLM, "
                        "MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM",
                        path, arch ? arch : "(none)", mtype ? mtype : "(none)");
        goto fail;
    }
    snprintf(cfg->architecture, sizeof cfg->architecture, "%s", lf_arch_name(cfg->arch));

    LF_TRY(lf_json_int(root, "hidden_size", &cfg->C, path, err));
    LF_TRY(lf_json_int(root, "intermediate_size", &cfg->FF, path, err));
    LF_TRY(lf_json_int(root, "num_hidden_layers", &cfg->L, path, err));
    LF_TRY(lf_json_int(root, "num_attention_heads", &cfg->H, path, err));
    LF_TRY(lf_json_int(root, "vocab_size", &cfg->V, path, err));
    LF_TRY(lf_json_int_opt(root, "num_key_value_heads", cfg->H, &cfg->KH, path, err));
    LF_TRY(lf_json_int_opt(root, "max_position_embeddings", 2048, &cfg->max_pos, path, err));
    double d;
    LF_TRY(lf_json_num_opt(root, "rms_norm_eps", 1e-6, &d, path, err));
    cfg->rms_eps = (float)d;
    LF_TRY(lf_json_num_opt(root, "rope_theta", 10000.0, &cfg->rope_theta, path, err));
    LF_TRY(lf_json_bool_opt(root, "tie_word_embeddings", 0, &cfg->tie_embeddings, path, err));
    const char *tdt = NULL;
    LF_TRY(lf_json_str_opt(root, "torch_dtype", "float32", &tdt, path, err));
    snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s", tdt);

    if (cfg->C <= 0 || cfg->FF <= 0 || cfg->L <= 0 || cfg->H <= 0 || cfg->V <= 0 || cfg->KH <= 0 || cfg->max_pos <= 0) {
        st = lf_err_set(err, LF_EINVAL, "%s: sizes must be positive (hidden_size %lld, intermediate_size %lld, "
                        "num_hidden_layers %lld, num_attention_heads %lld, num_key_value_heads %lld, vocab_size %lld)",
                        path, (long long)cfg->C, (long long)cfg->FF, (long long)cfg->L, (long long)cfg->H,
                        (long long)cfg->KH, (long long)cfg->V);
        goto fail;
    }
    if (cfg->L > LF_MAX_LAYERS) {
        st = lf_err_set(err, LF_EUNSUPPORTED, "%s: num_hidden_layers %lld exceeds the supported %d", path, (long long)cfg->L, LF_MAX_LAYERS);
        goto fail;
    }
    if (cfg->H % cfg->KH != 0) {
        st = lf_err_set(err, LF_EINVAL, "%s: num_attention_heads %lld is not a multiple of num_key_value_heads %lld", path,
                        (long long)cfg->H, (long long)cfg->KH);
        goto fail;
    }
    /* head_dim: separate from hidden/heads in Qwen3 and Mistral-Nemo; honoured by every architecture here
     * (transformers 4.44's Llama/Qwen2 used hidden/heads, and their real configs set head_dim to that value). */
    int64_t hd_default = cfg->C % cfg->H == 0 ? cfg->C / cfg->H : 0;
    LF_TRY(lf_json_int_opt(root, "head_dim", hd_default, &cfg->D, path, err));
    if (cfg->D <= 0 || cfg->D % 2 != 0 || cfg->D > LF_MAX_HEAD_DIM) {
        st = lf_err_set(err, LF_EINVAL, "%s: head_dim %lld must be even, positive and <= %d (hidden_size %lld, heads %lld)",
                        path, (long long)cfg->D, LF_MAX_HEAD_DIM, (long long)cfg->C, (long long)cfg->H);
        goto fail;
    }
    if (!(cfg->rms_eps > 0) || !(cfg->rope_theta > 0)) {
        st = lf_err_set(err, LF_EINVAL, "%s: rms_norm_eps and rope_theta must be > 0", path);
        goto fail;
    }

    /* biases */
    if (cfg->arch == LF_ARCH_QWEN2) {
        cfg->qkv_bias = 1;
    } else if (cfg->arch == LF_ARCH_LLAMA || cfg->arch == LF_ARCH_QWEN3) {
        int ab = 0, mb = 0;
        LF_TRY(lf_json_bool_opt(root, "attention_bias", 0, &ab, path, err));
        LF_TRY(lf_json_bool_opt(root, "mlp_bias", 0, &mb, path, err));
        cfg->qkv_bias = cfg->o_bias = ab;
        cfg->mlp_bias = cfg->arch == LF_ARCH_LLAMA ? mb : 0;
    }
    cfg->qk_norm = cfg->arch == LF_ARCH_QWEN3;

    /* sliding window: Mistral on every layer when set; Qwen2 only with use_sliding_window, on layers
     * >= max_window_layers */
    int64_t sw = 0;
    LF_TRY(lf_json_int_opt(root, "sliding_window", 0, &sw, path, err));
    if (sw < 0) {
        st = lf_err_set(err, LF_EINVAL, "%s: sliding_window must be >= 0 or null, got %lld", path, (long long)sw);
        goto fail;
    }
    int64_t first_window_layer = 0;
    if (cfg->arch == LF_ARCH_QWEN2 || cfg->arch == LF_ARCH_QWEN3) {
        int use = 0;
        LF_TRY(lf_json_bool_opt(root, "use_sliding_window", 0, &use, path, err));
        if (!use) sw = 0;
        LF_TRY(lf_json_int_opt(root, "max_window_layers", 0, &first_window_layer, path, err));
    } else if (cfg->arch == LF_ARCH_LLAMA) {
        sw = 0;
    }
    for (int64_t l = 0; l < cfg->L; l++) cfg->window[l] = l >= first_window_layer ? sw : 0;
    /* transformers 5 writes the per-layer kinds out: "layer_types" wins over the rule above when present */
    const json_t *lt = json_object_get(root, "layer_types");
    if (lt && !json_is_null(lt)) {
        if (!json_is_array(lt) || (int64_t)json_array_size(lt) != cfg->L) {
            st = lf_err_set(err, LF_EFORMAT, "%s: \"layer_types\" must be a list of num_hidden_layers (%lld) strings",
                            path, (long long)cfg->L);
            goto fail;
        }
        for (int64_t l = 0; l < cfg->L; l++) {
            const char *k = json_string_value(json_array_get(lt, (size_t)l));
            if (k && strcmp(k, "full_attention") == 0) cfg->window[l] = 0;
            else if (k && strcmp(k, "sliding_attention") == 0) cfg->window[l] = sw; /* 0: no window set */
            else {
                st = lf_err_set(err, k ? LF_EUNSUPPORTED : LF_EFORMAT, "%s: layer_types[%lld] is %s%s%s; supported: "
                                "\"full_attention\", \"sliding_attention\"", path,
                                (long long)l, k ? "\"" : "not a string", k ? k : "", k ? "\"" : "");
                goto fail;
            }
        }
    }

    /* bitsandbytes checkpoints: only 4-bit is supported (8-bit LLM.int8 weights are refused by name) */
    const json_t *qc = json_object_get(root, "quantization_config");
    if (qc && !json_is_null(qc)) {
        const char *qm = NULL, *qt = NULL;
        int l4 = 0, l8 = 0;
        if (!json_is_object(qc)) {
            st = lf_err_set(err, LF_EFORMAT, "%s: quantization_config must be an object", path);
            goto fail;
        }
        LF_TRY(lf_json_str_opt(qc, "quant_method", "bitsandbytes", &qm, path, err));
        LF_TRY(lf_json_bool_opt(qc, "load_in_4bit", 0, &l4, path, err));
        LF_TRY(lf_json_bool_opt(qc, "load_in_8bit", 0, &l8, path, err));
        if (strcmp(qm, "bitsandbytes") != 0 || l8 || !l4) {
            st = lf_err_set(err, LF_EUNSUPPORTED, "%s: quantization_config quant_method \"%s\" load_in_4bit=%d "
                            "load_in_8bit=%d is not supported; loraforge reads bitsandbytes 4-bit (nf4/fp4) "
                            "checkpoints", path, qm, l4, l8);
            goto fail;
        }
        LF_TRY(lf_json_str_opt(qc, "bnb_4bit_quant_type", "fp4", &qt, path, err));
        LF_TRY(lf_json_bool_opt(qc, "bnb_4bit_use_double_quant", 0, &cfg->bnb_double_quant, path, err));
        snprintf(cfg->bnb_quant_type, sizeof cfg->bnb_quant_type, "%s", qt);
        cfg->prequant_4bit = 1;
    }

    LF_TRY(read_rope_scaling(root, cfg, path, err));
    int64_t bos;
    LF_TRY(lf_json_int_opt(root, "bos_token_id", -1, &bos, path, err));
    cfg->bos_id = bos;
    LF_TRY(read_eos(root, "eos_token_id", cfg, path, err));

    /* generation_config.json overrides bos/eos when present */
    LF_TRY(lf_path_join(gpath, sizeof gpath, dir, "generation_config.json", err));
    if (lf_path_exists(gpath)) {
        LF_TRY(lf_json_load_file(gpath, &gen, err));
        LF_TRY(lf_json_int_opt(gen, "bos_token_id", cfg->bos_id, &bos, gpath, err));
        cfg->bos_id = bos;
        LF_TRY(read_eos(gen, "eos_token_id", cfg, gpath, err));
    }
    json_decref(root);
    json_decref(gen);
    return LF_OK;
fail:
    json_decref(root);
    json_decref(gen);
    return st;
}

void lf_model_config_inv_freq(const lf_model_config *cfg, float *inv_freq) {
    int64_t D = cfg->D;
    for (int64_t i = 0; i < D / 2; i++) {
        /* transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), in float32 */
        float expo = (float)(2 * i) / (float)D;
        float f = 1.0f / powf((float)cfg->rope_theta, expo);
        if (cfg->rope_type == LF_ROPE_LINEAR) {
            f = f / (float)cfg->rope_factor;
        } else if (cfg->rope_type == LF_ROPE_LLAMA3) {
            /* modeling_rope_utils._compute_llama3_parameters */
            double L0 = (double)cfg->rope_original_max_pos;
            double lo_wl = L0 / cfg->rope_low_freq_factor, hi_wl = L0 / cfg->rope_high_freq_factor;
            double wl = 2.0 * M_PI / (double)f;
            if (wl > lo_wl) {
                f = (float)((double)f / cfg->rope_factor);
            } else if (wl >= hi_wl) {
                double s = (L0 / wl - cfg->rope_low_freq_factor) / (cfg->rope_high_freq_factor - cfg->rope_low_freq_factor);
                f = (float)((1.0 - s) * (double)f / cfg->rope_factor + s * (double)f);
            }
        }
        inv_freq[i] = f;
    }
}

static const char *const MODULE_NAMES[LF_MOD_COUNT] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                      "gate_proj", "up_proj", "down_proj"};

const char *lf_module_name(lf_module m) { return (unsigned)m < LF_MOD_COUNT ? MODULE_NAMES[m] : "?"; }
const char *lf_module_parent(lf_module m) { return m <= LF_MOD_O ? "self_attn" : "mlp"; }

void lf_module_shape(const lf_model_config *c, lf_module m, int64_t *OC, int64_t *C) {
    switch (m) {
    case LF_MOD_Q: *OC = c->H * c->D; *C = c->C; break;
    case LF_MOD_K:
    case LF_MOD_V: *OC = c->KH * c->D; *C = c->C; break;
    case LF_MOD_O: *OC = c->C; *C = c->H * c->D; break;
    case LF_MOD_GATE:
    case LF_MOD_UP: *OC = c->FF; *C = c->C; break;
    default: *OC = c->C; *C = c->FF; break;
    }
}

int lf_module_from_name(const char *name) {
    for (int i = 0; i < LF_MOD_COUNT; i++)
        if (!strcmp(name, MODULE_NAMES[i])) return i;
    return -1;
}
