/* trainer.h - the SFT run of `loraforge train`: LoRA/QLoRA on a (4-bit) base, AdamW + schedule, gradient
 * accumulation and clipping, evaluation, logging, checkpoints with exact resume, final PEFT adapter.
 *
 * Semantics follow transformers 4.44's Trainer as LLaMA-Factory drives it:
 *   steps     : updates per epoch = max(1, ceil(units / batch) / gradient_accumulation_steps) (floor), total =
 *               max_steps if > 0 else ceil(num_train_epochs * updates per epoch);
 *   loss      : a micro-batch's loss is the mean CE over its unmasked targets; each micro-batch contributes
 *               loss / gradient_accumulation_steps; the logged train_loss is the mean over the logging window
 *               of the per-step sums;
 *   update    : clip to max_grad_norm (grad_norm logged before clipping), lr = schedule(step), AdamW;
 *   eval_loss : mean over eval batches of the batch-mean CE; perplexity = exp(eval_loss).
 * Outputs in output_dir (every file written atomically; checkpoints as checkpoint-N.tmp then renamed):
 *   adapter_model.safetensors, adapter_config.json, tokenizer files, trainer_log.jsonl, trainer_state.json,
 *   all_results.json, train_results.json, eval_results.json (with an eval set), training_loss.svg,
 *   training_args.json, and checkpoint-N/ (adapter, optimizer.safetensors, trainer_state.json with the data
 *   position) every save_steps, keeping save_total_limit. resume_from_checkpoint continues the identical loss
 *   trajectory (same machine and thread count). SIGTERM/SIGINT: the current step finishes, a checkpoint is
 *   written, the run returns LF_OK with *interrupted set.
 *
 * Ownership: everything is owned by the run; the config is borrowed. */
#ifndef LF_FINETUNE_TRAINER_H
#define LF_FINETUNE_TRAINER_H

#include "core/config.h"
#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lf_train_result {
    int64_t steps_done;   /* global step reached */
    int interrupted;      /* stopped by SIGTERM/SIGINT after writing a checkpoint */
    double train_loss;    /* mean train loss over the run's steps */
    double eval_loss;     /* last eval loss, NaN when no eval set */
} lf_train_result;

/* Run the whole job described by a validated config. */
lf_status lf_train_run(const lf_train_config *cfg, lf_train_result *res, lf_err *err);

/* Install SIGTERM/SIGINT handlers that ask a running lf_train_run to stop after its current step. */
void lf_train_install_signal_handlers(void);

#ifdef __cplusplus
}
#endif
#endif
