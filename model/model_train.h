/* model_train.h - training forward + backward of the Llama-family model with LoRA / DoRA on its decoder
 * linears (the base is frozen: dense or 4-bit), for one packed sequence at a time, through the backend ops.
 *
 * Semantics (PEFT 0.12 Linear.forward, LlamaForCausalLM loss):
 *   LoRA   : y = base(x) + s * B(A(drop(x)))                   s = alpha/r, or alpha/sqrt(r) with rsLoRA
 *   DoRA   : y = base(x) + (m/n - 1) * W drop(x) + (m/n) * s * B(A(drop(x)))
 *            n[o] = || W[o,:] + s * (B A)[o,:] ||_2, recomputed from the current A, B before each step and
 *            treated as a constant in the backward (PEFT detaches it).
 *   loss   : sum over t of CE(logits[t], targets[t]) for targets[t] != -100 (the caller shifts labels:
 *            targets[t] is the label of token t+1), times dscale; gradients of dscale * sum accumulate into
 *            the views' dA, dB, dmag. The [T, V] logits are never held whole: rows go through lm_head and the
 *            cross-entropy in chunks.
 *   packing: pos[t] restarts at 0 at each row's first token; RoPE uses pos and attention stays inside rows.
 *   dropout: a counter-based hash of (seed, step, layer, module, element) decides each dropped element, so
 *            the backward (and a gradient-checkpointing recompute) regenerates the same mask without storing it.
 *
 * Ownership: lf_trainer_model borrows the model and the views' arrays (caller-owned f32, e.g. one adapter
 * allocation); it owns its activation/gradient workspace, allocated once at create (steps never allocate). */
#ifndef LF_MODEL_MODEL_TRAIN_H
#define LF_MODEL_MODEL_TRAIN_H

#include <stdint.h>

#include "core/status.h"
#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* LoRA parameters of one (layer, module); A == NULL means the module is not adapted. */
typedef struct lf_lora_view {
    float *A, *B;        /* [R, C], [OC, R] */
    float *mag;          /* [OC] DoRA magnitude, NULL for plain LoRA */
    float *dA, *dB, *dmag; /* gradients, same shapes (accumulated); may be NULL for eval-only use */
    int64_t R;
    float scale;         /* s */
} lf_lora_view;

/* DoRA norm of one module: wn[o] = || W[o,:] + s * (B A)[o,:] || with W the (dequantized) base weight of
 * (layer, mod). scratch: [OC * C] floats. */
lf_status lf_model_dora_norm(const lf_model *m, const lf_lora_view *v, int64_t layer, int mod, float *wn,
                             float *scratch, lf_err *err);

/* Apply LoRA/DoRA (no dropout) in every later forward of the model's sessions: views [L * LF_MOD_COUNT] are
 * checked and copied into an lf_model_adapter (model_batch.h; their arrays borrowed: they must outlive the
 * model's use); DoRA norms are computed now. A session created before an adapter of a larger rank than it was
 * sized for fails its forward with LF_EINVAL (create sessions after this call). NULL removes the adapter. */
lf_status lf_model_set_lora(lf_model *m, const lf_lora_view *views, lf_err *err);

typedef struct lf_train_options {
    int64_t max_tokens;        /* T: longest sequence a step takes */
    float dropout;             /* lora_dropout in [0, 1) */
    int checkpointing;         /* recompute each layer's activations in the backward */
    uint64_t seed;             /* dropout hash seed */
    int64_t ce_chunk;          /* rows per lm_head / cross-entropy chunk (default 32 when <= 0) */
} lf_train_options;

typedef struct lf_trainer_model lf_trainer_model;

/* views: [L * LF_MOD_COUNT] (layer-major, lf_module order), copied. */
lf_status lf_trainer_model_create(lf_model *m, const lf_lora_view *views, const lf_train_options *opt,
                                  lf_trainer_model **out, lf_err *err);
void lf_trainer_model_free(lf_trainer_model *tm);
/* Bytes of workspace held (activations + gradients + scratch). */
int64_t lf_trainer_model_workspace_bytes(const lf_trainer_model *tm);

/* DoRA: recompute every DoRA module's norm n from the current A, B (call after each optimizer update and
 * before the first step). No-op without DoRA modules. */
lf_status lf_trainer_model_refresh_dora(lf_trainer_model *tm, lf_err *err);

/* One sequence: forward, loss, and (when backward) the gradients of dscale * loss_sum added into the
 * views. tokens, targets, pos: [T] host arrays. step: the dropout counter (the optimizer step, so that
 * micro-batches of one step and their recomputations agree); seq: index of the sequence within the step.
 * *loss_sum = sum of the per-token CE over targets != -100 (unscaled), *n_tokens = their count. */
lf_status lf_trainer_model_step(lf_trainer_model *tm, const int32_t *tokens, const int32_t *targets,
                                const int32_t *pos, int64_t T, float dscale, int backward, uint64_t step,
                                uint64_t seq, double *loss_sum, int64_t *n_tokens, lf_err *err);

#ifdef __cplusplus
}
#endif
#endif
