/* optim.h - AdamW over one flat f32 parameter array, gradient L2 norm + clipping, optimizer state files;
 * torch 2.15's torch.optim.AdamW(foreach=False) and torch.nn.utils.clip_grad_norm_, operation for operation.
 *
 * Invariants:
 *   - every array (params p, grads g, first moment m, second moment v) is [N] f32, caller-owned and only
 *     borrowed for the duration of a call; nothing here allocates per step.
 *   - results are bit-identical for any lf_pool size (1, 2, 3, ... threads or NULL): AdamW is elementwise, and
 *     the norm sums fixed ranges that depend only on N (see lf_grad_norm), combined in a fixed order.
 *   - the step count t is owned by the caller (the trainer keeps it next to m and v; state files carry it).
 *
 * AdamW element arithmetic, exactly torch's _single_tensor_adamw in the order torch evaluates it on its CPU
 * kernels (scalars in f64 as Python computes them, then rounded to f32 the way ATen converts a Scalar; the
 * vector kernels fuse a*b+c into one FMA, so m and v use fmaf; m and v verified bitwise, see tests/oracle;
 * p differs by a few ulp only because torch's CPU sqrt (MKL VML) is not correctly rounded, ours is):
 *     bc1 = 1 - beta1^t, bc2 = 1 - beta2^t                       (f64, C pow == Python float ** float)
 *     p   = p * f32(1 - lr*wd)                                    param.mul_(1 - lr * weight_decay)
 *     m   = fmaf(w, g - m, m), w = f32(1 - beta1)                exp_avg.lerp_(g, 1 - b1) (ATen: |w| < 0.5;
 *         = fmaf(w - 1, g - m, g) otherwise)
 *     v   = fmaf(f32(1 - beta2) * g, g, v * f32(beta2))           exp_avg_sq.mul_(b2).addcmul_(g, g, value=1-b2)
 *     d   = sqrtf(v) / f32(sqrt(bc2)) + f32(eps)                  (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
 *     p   = p + (f32(-(lr / bc1)) * m) / d                        param.addcdiv_(exp_avg, denom, value=-step_size)
 * Not supported (torch options): amsgrad, maximize, capturable, complex params.
 *
 * Clipping (clip_grad_norm_ with norm_type 2, error_if_nonfinite=False):
 *     total_norm = f32(sqrt(sum g^2 in f64))        torch: f32 norm of the stacked per-tensor f32 norms
 *     coef       = f32(1 / (total_norm + 1e-6f)) * f32(max_norm)    max_norm / (total_norm + 1e-6) is
 *                                                   Tensor.__rdiv__ = reciprocal() * max_norm, in f32
 *     coef       = min(coef, 1) (NaN stays NaN, as torch.clamp(max=1.0));  g *= coef
 *   Our sum is exact-order f64, so total_norm is the correctly rounded norm (or within 1 ulp of it); torch's
 *   CPU norm accumulates in f32 and lands a few to tens of ulps away for large N. A non-finite norm scales
 *   the gradients by 0 (inf) or NaN, exactly as torch does; the trainer decides whether to skip the step.
 *
 * State files (safetensors, written atomically through lf_st_writer_write):
 *     "<prefix>exp_avg"    F32 [N]   m
 *     "<prefix>exp_avg_sq" F32 [N]   v
 *     "<prefix>step"       I64 []    t (number of optimizer steps taken so far)
 *   lf_adamw_state_save/load use an empty prefix and add __metadata__ {"format": "loraforge.adamw",
 *   "version": "1"}; a checkpoint module that writes one file for several things uses lf_adamw_state_add /
 *   lf_adamw_state_read with its own prefix (e.g. "optimizer."). */
#ifndef LF_FINETUNE_OPTIM_H
#define LF_FINETUNE_OPTIM_H

#include <stdint.h>

#include "core/safetensors.h" // defines: lf_st_writer, lf_st_file
#include "core/status.h"      // defines: lf_status, lf_err
#include "core/threadpool.h"  // defines: lf_pool

#ifdef __cplusplus
extern "C" {
#endif

/* Hyperparameters that do not change between steps (the learning rate comes from the schedule). */
typedef struct lf_adamw_cfg {
    double beta1;        /* in [0, 1) */
    double beta2;        /* in [0, 1) */
    double eps;          /* >= 0, added to sqrt(v_hat) */
    double weight_decay; /* >= 0, decoupled: p *= 1 - lr*weight_decay */
} lf_adamw_cfg;

/* torch.optim.AdamW defaults: betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2. (transformers'
 * TrainingArguments default weight_decay is 0.0: the trainer sets it from its config.) */
lf_adamw_cfg lf_adamw_default_cfg(void);

/* LF_EINVAL (with the offending value) when a field is out of range or NaN. */
lf_status lf_adamw_check(const lf_adamw_cfg *cfg, lf_err *err);

/* One AdamW step over [0, n): t is the step number after this step (1 for the first step, like torch's
 * state['step'] after `step_t += 1`), lr the learning rate for this step (lf_sched_lr(s, t - 1)).
 * p [N] updated in place; g [N] read only; m [N], v [N] updated in place (all zero before step 1).
 * pool may be NULL (runs on the caller). LF_EINVAL for bad cfg, lr < 0 / NaN, t < 1, n < 0, NULL arrays. */
lf_status lf_adamw_step(lf_pool *pool, const lf_adamw_cfg *cfg, double lr, int64_t t, float *p, const float *g,
                        float *m, float *v, int64_t n, lf_err *err);
/* SIMD dispatch: 1 when lf_adamw_step runs its AVX2+FMA loop (x86-64 CPU with both; the same IEEE operations
 * lane by lane, so the results are identical either way). Tests toggle it; not for concurrent use. */
int lf_adamw_simd_active(void);
void lf_adamw_set_simd(int enabled);
/* Scalar single-threaded reference of lf_adamw_step (same arithmetic; arguments must be valid). */
void lf_adamw_step_ref(const lf_adamw_cfg *cfg, double lr, int64_t t, float *p, const float *g, float *m, float *v,
                       int64_t n);

/* sqrt(sum g[i]^2) in f64. The sum is split into LF_OPTIM_NORM_PARTS fixed ranges [n*k/P, n*(k+1)/P), each
 * summed in index order (4 interleaved f64 accumulators, combined (a0+a1)+(a2+a3)), the partial sums added in
 * k order: the value depends only on g and n, never on the pool. Non-finite inputs give inf/NaN. */
#define LF_OPTIM_NORM_PARTS 256
double lf_grad_norm(lf_pool *pool, const float *g, int64_t n);
/* Scalar reference: the same partition and order, single-threaded. */
double lf_grad_norm_ref(const float *g, int64_t n);

/* clip_grad_norm_(max_norm): computes total_norm (f32, see above), scales g [N] in place by the clipping
 * coefficient, writes total_norm to *total_norm (may be NULL) and the coefficient used to *coef (may be NULL;
 * 1 when no clipping happened). LF_EINVAL when max_norm is not > 0 (transformers clips only when
 * max_grad_norm > 0: call lf_grad_norm instead) or g is NULL with n > 0. */
lf_status lf_grad_clip(lf_pool *pool, float *g, int64_t n, double max_norm, float *total_norm, float *coef,
                       lf_err *err);

/* ---- optimizer state ---- */

/* Add "<prefix>exp_avg", "<prefix>exp_avg_sq", "<prefix>step" to w. m [N], v [N] and *step are BORROWED
 * until the last lf_st_writer_write that uses w returns. prefix may be NULL (= ""). */
lf_status lf_adamw_state_add(lf_st_writer *w, const char *prefix, const float *m, const float *v, int64_t n,
                             const int64_t *step, lf_err *err);
/* Read them back from an open file into caller arrays m [N], v [N]; *step gets t. LF_ENOTFOUND for a missing
 * tensor, LF_EFORMAT for a wrong dtype/shape (message names file, tensor, found vs expected), a negative
 * step, or a negative entry of v. m and v are written only when every check passed. */
lf_status lf_adamw_state_read(const lf_st_file *f, const char *prefix, float *m, float *v, int64_t n, int64_t *step,
                              lf_err *err);
/* One file holding only the optimizer state (empty prefix + format metadata), written atomically. Load accepts
 * a file without a "format" entry (e.g. written with lf_adamw_state_add and no prefix) and refuses any other
 * format (LF_EFORMAT); n must equal the saved length. */
lf_status lf_adamw_state_save(const char *path, const float *m, const float *v, int64_t n, int64_t step,
                              lf_err *err);
lf_status lf_adamw_state_load(const char *path, float *m, float *v, int64_t n, int64_t *step, lf_err *err);

#ifdef __cplusplus
}
#endif
#endif
