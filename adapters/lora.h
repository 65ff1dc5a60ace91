/* lora.h - LoRA / DoRA adapter parameters over the seven decoder linears: config, one-allocation f32 storage
 * with a flat view for the optimizer, PEFT initialisation, and the scalar reference math (forward, merge, DoRA).
 * On-disk PEFT format (adapter_config.json + adapter_model.safetensors): adapters/peft_io.h.
 *
 * Slots. An adapter has L*7 slots, slot (l, m) for layer l and module m (lf_module order: q k v o gate up down,
 * model/config.h). A slot is present when target_modules selects "model.layers.l.<parent>.<module>" (PEFT's
 * rules, see lf_lora_create); a present slot holds
 *     A   [R, C]   f32        lora_A.weight
 *     B   [OC, R]  f32        lora_B.weight
 *     mag [OC]     f32        lora_magnitude_vector (DoRA only)
 * with [OC, C] the base weight's shape (lf_module_shape: C = in_features, i.e. the hidden size, H*D for o_proj,
 * FF for down_proj) and R the slot's rank (cfg.r, or rank_pattern).
 * PEFT's forward: y = base(x) + scaling * B(A(dropout(x))), scaling = alpha/R (alpha/sqrt(R) with rsLoRA).
 *
 * Layout (fixed; optimizer state and checkpoints rely on it): ONE f32 allocation `params` of n_params floats
 * holds, for l = 0..L-1, then m = q..down (lf_module order), for every present slot: A, then B, then mag
 * (DoRA), contiguous with no padding. `grad`, `adam_m`, `adam_v` (lf_lora_alloc_grads) have the identical
 * layout, so slot->off_A/off_B/off_mag index every buffer and an optimizer runs over [0, n_params) of each.
 *
 * Ownership: lf_lora_adapter owns params, grad, adam_m, adam_v and slots; slot->A/B/mag are views into params
 * and die with lf_lora_free. lf_lora_config is a plain value (fixed-size strings, copyable). */
#ifndef LF_ADAPTERS_LORA_H
#define LF_ADAPTERS_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"  // defines: lf_status, lf_err
#include "model/config.h" // defines: lf_model_config, lf_module, lf_module_shape, lf_module_name

#ifdef __cplusplus
extern "C" {
#endif

#define LF_LORA_ALL_MODULES 0x7Fu /* every bit of lf_module */
#define LF_LORA_MAX_TARGETS 32    /* entries of a target_modules list */
#define LF_LORA_NAME_MAX 160      /* one target_modules entry / pattern key, with its NUL */
#define LF_LORA_MAX_PATTERNS 32   /* entries of rank_pattern / alpha_pattern each */
#define LF_LORA_STR_MAX 1024      /* regex target_modules, base_model_name_or_path */

typedef struct lf_lora_pattern {
    char key[LF_LORA_NAME_MAX]; /* PEFT pattern key: matched as Python re.match(".*\\." + key + "$", module) */
    double value;               /* rank (a positive integer) or alpha */
} lf_lora_pattern;

typedef enum lf_lora_init_kind {
    LF_LORA_INIT_DEFAULT = 0, /* init_lora_weights true: A ~ U(+-1/sqrt(C)) (kaiming_uniform a=sqrt 5), B = 0 */
    LF_LORA_INIT_GAUSSIAN,    /* "gaussian": A ~ N(0, (1/R)^2), B = 0 */
    LF_LORA_INIT_RANDOM,      /* false (nn.Linear default for both): A ~ U(+-1/sqrt(C)), B ~ U(+-1/sqrt(R)) */
} lf_lora_init_kind;

typedef struct lf_lora_config {
    int64_t r;          /* rank (> 0) */
    double alpha;       /* lora_alpha */
    double dropout;     /* lora_dropout in [0, 1); applied by the trainer, carried here */
    int use_rslora;     /* scaling = alpha/sqrt(R) instead of alpha/R */
    int use_dora;
    lf_lora_init_kind init;
    /* Targets. When target_regex and target_names are both empty, target_mask (bit m = lf_module m) selects
     * module m in every layer and is written as a target_modules list. lf_peft_config_read fills target_names
     * or target_regex exactly as the file has them (a re-save writes them back unchanged); after
     * lf_lora_create, adapter->cfg.target_mask is the union of modules present in any layer. */
    uint32_t target_mask;
    int n_target_names;
    char target_names[LF_LORA_MAX_TARGETS][LF_LORA_NAME_MAX]; /* PEFT list entries ("q_proj", "self_attn.q_proj", full names) */
    char target_regex[LF_LORA_STR_MAX];                       /* PEFT string form: Python re.fullmatch on the module name */
    /* Per-module overrides (PEFT rank_pattern / alpha_pattern), in file order. */
    int n_rank_pattern, n_alpha_pattern;
    lf_lora_pattern rank_pattern[LF_LORA_MAX_PATTERNS];
    lf_lora_pattern alpha_pattern[LF_LORA_MAX_PATTERNS];
    /* Informational (written to adapter_config.json); empty = JSON null. */
    char base_model_name_or_path[LF_LORA_STR_MAX];
    char revision[128];
    char task_type[32]; /* "CAUSAL_LM" by default */
    /* auto_mapping (peft writes it when task_type is null): {"base_model_class", "parent_library"}; both empty =
     * null. */
    char auto_mapping_class[128];
    char auto_mapping_library[256];
} lf_lora_config;

/* PEFT's defaults: r 8, alpha 8, dropout 0, init true, targets q_proj + v_proj (PEFT's Llama/Mistral/Qwen2
 * default), task_type CAUSAL_LM. */
lf_lora_config lf_lora_config_default(void);

/* "all" / "all-linear" or a comma list of module names ("q_proj,v_proj", spaces allowed) -> mask of lf_module
 * bits. LF_EINVAL naming an unknown or empty entry. */
lf_status lf_lora_parse_modules(const char *list, uint32_t *mask, lf_err *err);

/* alpha/r, or alpha/sqrt(r) with rsLoRA (PEFT layer.update_layer). */
double lf_lora_scaling(double alpha, int64_t r, int use_rslora);

/* r > 0, alpha finite, 0 <= dropout < 1, rank_pattern values positive integers, at least one target.
 * LF_EINVAL with the field named. */
lf_status lf_lora_config_validate(const lf_lora_config *cfg, lf_err *err);

typedef struct lf_lora_slot {
    int present;                   /* 0: the module has no adapter in this layer; every other field is 0/NULL */
    int64_t R, IN, OC;             /* A [R, IN], B [OC, R], mag [OC]; IN = the module's in_features (C) */
    double alpha;                  /* alpha of this slot (alpha_pattern or cfg.alpha) */
    double scaling;                /* lf_lora_scaling(alpha, R, cfg.use_rslora) */
    int64_t off_A, off_B, off_mag; /* float offsets into params / grad / adam_m / adam_v; off_mag -1 without DoRA */
    float *A, *B, *mag;            /* views into params; mag NULL without DoRA */
} lf_lora_slot;

typedef struct lf_lora_adapter {
    lf_lora_config cfg;
    int64_t L;               /* layers of the model it was made for */
    int64_t n_slots;         /* present slots */
    lf_lora_slot *slots;     /* [L * LF_MOD_COUNT], index l*LF_MOD_COUNT + m */
    float *params;           /* [n_params]: the flat view of every trainable parameter (layout above) */
    int64_t n_params;
    float *grad;             /* [n_params] or NULL until lf_lora_alloc_grads */
    float *adam_m, *adam_v;  /* [n_params] or NULL (lf_lora_alloc_grads with_adam) */
} lf_lora_adapter;

/* Resolve which slots exist and their shapes, then allocate params (zeroed) in one block.
 * Target rules, as PEFT 0.12 check_target_module_exists on the module name "model.layers.N.<parent>.<module>":
 *   list (target_names): name == entry, or name ends with "." + entry;
 *   string (target_regex): "all-linear" (any case) = all seven; else Python re.fullmatch(regex, name), done
 *     with PCRE2 (syntax shared by Python re and PCRE2 behaves the same; Python-only escapes such as \Z differ);
 *   neither: target_mask in every layer.
 * Rank/alpha per slot, PEFT 0.12 LoraModel._create_and_replace: key = the first key of rank_pattern then
 * alpha_pattern (file order) with re.match(".*\\." + key + "$", name), else the full module name itself; then
 * R = rank_pattern[key] (else cfg.r) and alpha = alpha_pattern[key] (else cfg.alpha).
 * Errors: no slot selected (LF_EINVAL), a target that also selects lm_head or embed_tokens (LF_EUNSUPPORTED:
 * LoRA there is not supported), bad regex (LF_EINVAL, with PCRE2's message and offset), bad config values
 * (lf_lora_config_validate), a model with more than LF_MAX_LAYERS layers. */
lf_status lf_lora_create(const lf_lora_config *cfg, const lf_model_config *mc, lf_lora_adapter **out, lf_err *err);
void lf_lora_free(lf_lora_adapter *a); /* NULL is a no-op */

/* Slot (l, m), or NULL when l/m are out of range or the slot is absent. */
const lf_lora_slot *lf_lora_get(const lf_lora_adapter *a, int64_t l, lf_module m);
lf_lora_slot *lf_lora_get_mut(lf_lora_adapter *a, int64_t l, lf_module m);

/* Allocate grad (and, with_adam, adam_m and adam_v), zeroed, same layout as params. Buffers that already
 * exist are kept as they are (not re-zeroed). */
lf_status lf_lora_alloc_grads(lf_lora_adapter *a, int with_adam, lf_err *err);
void lf_lora_zero_grads(lf_lora_adapter *a); /* grad = 0 (no-op without grads) */

/* PEFT initialisation from a seeded xoshiro stream (core/rng.h), by cfg.init (see lf_lora_init_kind). Draws go
 * slot by slot in layout order, A row-major then B; the same seed gives the same adapter. DoRA magnitudes are
 * set to 0 here: fill them with lf_lora_init_dora / lf_lora_init_dora_magnitude afterwards (PEFT computes them
 * from the base weight after A and B are initialised). */
void lf_lora_init_peft(lf_lora_adapter *a, uint64_t seed);

/* norm[o] = || W[o,:] + scaling * (B @ A)[o,:] ||_2 for n rows (double accumulation, rounded to f32).
 * W_rows [n, C], B_rows [n, R] (rows row0.. of B), A [R, C]. PEFT DoraLinearLayer.get_weight_norm. */
void lf_lora_dora_norm_ref(float *norm, const float *W_rows, const float *A, const float *B_rows, int64_t n,
                           int64_t C, int64_t R, double scaling);

/* DoRA magnitude of slot (l, m) = row norm of W + scaling*B@A (equals ||W||_row at init, B = 0).
 * W_rows: the dequantized base weight [OC, C] f32. LF_EINVAL when the slot is absent or the adapter not DoRA. */
lf_status lf_lora_init_dora_magnitude(lf_lora_adapter *a, int64_t l, lf_module m, const float *W_rows, lf_err *err);

/* Fills dst [nrows, C] with rows row0..row0+nrows-1 of the dequantized base weight of (layer, m), f32. */
typedef lf_status (*lf_lora_rows_fn)(void *ctx, int64_t layer, lf_module m, int64_t row0, int64_t nrows,
                                     float *dst, lf_err *err);
/* lf_lora_init_dora_magnitude for every present slot, asking rows_fn for 64-row chunks (one scratch of
 * 64*max C floats). No-op without DoRA. The callback's error is passed through, wrapped with the slot. */
lf_status lf_lora_init_dora(lf_lora_adapter *a, lf_lora_rows_fn rows_fn, void *ctx, lf_err *err);

/* ---- reference math (scalar, readable; fast versions live in kernels/) ---- */

/* out[T, OC] += scaling * (x[T, C] @ A^T) @ B^T. h [T, R] is scratch and on return holds x @ A^T (the
 * backward needs it). Row-major everywhere. */
void lf_lora_forward_ref(float *out, const float *x, int64_t T, int64_t C, int64_t OC, int64_t R, const float *A,
                         const float *B, double scaling, float *h);

/* DoRA output, PEFT 0.12 (dora.py DoraLinearLayer.forward): with s = mag/norm (norm from lf_lora_dora_norm_ref,
 * treated as a constant), y[T, OC] += (s - 1) * wx + s * lora, where wx = dropout(x) @ W^T (NO bias) and
 * lora = scaling * B(A(dropout(x))) (what lf_lora_forward_ref adds to a zero buffer). y holds base(x) with bias. */
void lf_lora_dora_combine_ref(float *y, const float *wx, const float *lora, const float *mag, const float *norm,
                              int64_t T, int64_t OC);

/* Merge into a dense base weight W [OC, C] f32, as PEFT LoraLayer.merge: delta = (B @ A) * scaling;
 * LoRA: W += delta; DoRA (mag != NULL): W = (mag / ||W + delta||_row) * (W + delta). */
void lf_lora_merge_ref(float *W, int64_t OC, int64_t C, int64_t R, const float *A, const float *B, double scaling,
                       const float *mag);
/* lf_lora_merge_ref with slot (l, m) of a. LF_EINVAL when the slot is absent. */
lf_status lf_lora_merge_weight(const lf_lora_adapter *a, int64_t l, lf_module m, float *W, lf_err *err);

#ifdef __cplusplus
}
#endif
#endif
