/* schedule.h - learning-rate schedules, value for value the ones transformers 4.44 get_scheduler builds
 * (LambdaLR over the lr_lambda functions of transformers/optimization.py), and the warmup_steps /
 * warmup_ratio resolution of TrainingArguments.get_warmup_steps.
 *
 * Step convention (HF Trainer + torch LambdaLR): the scheduler is created with last_epoch 0, so optimizer step
 * 1 runs with base_lr * lambda(0); after each optimizer step the Trainer calls scheduler.step(). So
 *     lf_sched_lr(s, k) = base_lr * lambda(k) = the lr applied by optimizer step k+1 (k is 0-based).
 * What HF logs: at global_step g (after g optimizer steps) Trainer logs "learning_rate" =
 * scheduler.get_last_lr() = base_lr * lambda(g) = lf_sched_lr(s, g), i.e. the lr the NEXT step will use, not
 * the one step g used. A trainer that writes the same trainer_log.jsonl as HF logs lf_sched_lr(s, g) on the
 * line for step g, and steps the optimizer with lf_sched_lr(s, g - 1) (= lf_adamw_step(..., lr, t = g, ...)).
 *
 * Arithmetic: every lambda is evaluated in f64 in Python's operation order with the same libm functions (cos,
 * pow, sqrt, fmod), and lr = base_lr * lambda, so values match transformers bit for bit. Python's
 * max(0, x) is "x if x > 0 else 0" (NaN -> 0). For k past num_training_steps the values follow the same
 * formulas (cosine rises again, as in transformers).
 *
 * Ownership: lf_sched is a plain value struct (no pointers). */
#ifndef LF_FINETUNE_SCHEDULE_H
#define LF_FINETUNE_SCHEDULE_H

#include <stdint.h>

#include "core/status.h" // defines: lf_status, lf_err

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lf_sched_type {
    LF_SCHED_LINEAR = 0,            /* "linear" (transformers' default) */
    LF_SCHED_COSINE,                /* "cosine": num_cycles (0.5) */
    LF_SCHED_COSINE_WITH_RESTARTS,  /* "cosine_with_restarts": num_cycles (1, hard restarts) */
    LF_SCHED_POLYNOMIAL,            /* "polynomial": lr_end (1e-7), power (1.0); needs base_lr > lr_end */
    LF_SCHED_CONSTANT,              /* "constant": no warmup (warmup_steps ignored, as get_scheduler does) */
    LF_SCHED_CONSTANT_WITH_WARMUP,  /* "constant_with_warmup" */
    LF_SCHED_INVERSE_SQRT,          /* "inverse_sqrt": timescale (0 = num_warmup_steps or 10000) */
    LF_SCHED_COSINE_WITH_MIN_LR,    /* "cosine_with_min_lr": num_cycles (0.5), exactly one of min_lr / min_lr_rate */
    LF_SCHED_WARMUP_STABLE_DECAY,   /* "warmup_stable_decay": num_stable_steps, num_decay_steps, min_lr_ratio (0),
                                       num_cycles (0.5); ignores num_training_steps (as transformers) */
    LF_SCHED_COUNT
} lf_sched_type;

typedef struct lf_sched {
    lf_sched_type type;
    double base_lr;         /* optimizer lr (LambdaLR base_lr, optimizer.defaults["lr"]) */
    int64_t warmup_steps;   /* resolved num_warmup_steps (lf_sched_resolve_warmup) */
    int64_t training_steps; /* num_training_steps (max_steps) */
    /* scheduler_specific_kwargs (lr_scheduler_kwargs), with transformers' defaults set by lf_sched_init */
    double num_cycles;       /* cosine, cosine_with_min_lr, warmup_stable_decay: 0.5; cosine_with_restarts: 1 */
    double lr_end;           /* polynomial: 1e-7 */
    double power;            /* polynomial: 1.0 */
    int64_t timescale;       /* inverse_sqrt: 0 = unset (num_warmup_steps, or 10000 when that is 0). NB
                                transformers 4.44 get_scheduler does NOT forward lr_scheduler_kwargs to
                                inverse_sqrt, so an HF run always has it unset: leave 0 to match HF. */
    double min_lr;           /* cosine_with_min_lr: NaN = unset */
    double min_lr_rate;      /* cosine_with_min_lr: NaN = unset */
    int64_t num_stable_steps; /* warmup_stable_decay (required, >= 0) */
    int64_t num_decay_steps;  /* warmup_stable_decay (required, >= 0) */
    double min_lr_ratio;      /* warmup_stable_decay: 0 */
} lf_sched;

/* Name <-> type ("linear", "cosine", ... as transformers' SchedulerType values). Unknown name: LF_EINVAL listing
 * the known ones ("reduce_lr_on_plateau" is named as unsupported: it needs eval metrics). */
lf_status lf_sched_parse_type(const char *name, lf_sched_type *out, lf_err *err);
const char *lf_sched_type_name(lf_sched_type type); /* "?" when out of range */

/* Fill s with type, base_lr, warmup and training steps and the transformers defaults of every kwarg. */
void lf_sched_init(lf_sched *s, lf_sched_type type, double base_lr, int64_t warmup_steps, int64_t training_steps);

/* What transformers would refuse (ValueError, or a ZeroDivisionError at some step): negative or NaN values,
 * polynomial with base_lr <= lr_end or warmup_steps == training_steps, cosine_with_min_lr with both or neither
 * of min_lr / min_lr_rate, inverse_sqrt with timescale < 0. LF_EINVAL with the field and value. */
lf_status lf_sched_check(const lf_sched *s, lf_err *err);

/* lambda(k): the LambdaLR multiplier for 0-based step k >= 0 (lr = base_lr * lambda). s must pass the check. */
double lf_sched_factor(const lf_sched *s, int64_t k);
/* base_lr * lambda(k): the lr of optimizer step k+1 (see the step convention above). */
double lf_sched_lr(const lf_sched *s, int64_t k);

/* TrainingArguments.get_warmup_steps: warmup_steps if warmup_steps > 0 else ceil(training_steps *
 * warmup_ratio), the product in f64 (so ratio 0.07 of 100 steps gives ceil(7.000000000000001) = 8, as HF). */
int64_t lf_sched_resolve_warmup(int64_t warmup_steps, double warmup_ratio, int64_t training_steps);

#ifdef __cplusplus
}
#endif
#endif
