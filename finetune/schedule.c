/* schedule.c - transformers 4.44 lr_lambda functions in C, in Python's f64 operation order.
 *
 * One rounding per statement: a Python expression like `a * b + c` rounds twice, so it is written as two C
 * statements (a single C expression may be contracted into an FMA by some compilers). */
#include "finetune/schedule.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

static const double LF_PI = 3.141592653589793; /* math.pi */

static const char *const sched_names[LF_SCHED_COUNT] = {
    [LF_SCHED_LINEAR] = "linear",
    [LF_SCHED_COSINE] = "cosine",
    [LF_SCHED_COSINE_WITH_RESTARTS] = "cosine_with_restarts",
    [LF_SCHED_POLYNOMIAL] = "polynomial",
    [LF_SCHED_CONSTANT] = "constant",
    [LF_SCHED_CONSTANT_WITH_WARMUP] = "constant_with_warmup",
    [LF_SCHED_INVERSE_SQRT] = "inverse_sqrt",
    [LF_SCHED_COSINE_WITH_MIN_LR] = "cosine_with_min_lr",
    [LF_SCHED_WARMUP_STABLE_DECAY] = "warmup_stable_decay",
};

const char *lf_sched_type_name(lf_sched_type type) {
    return (int)type >= 0 && type < LF_SCHED_COUNT ? sched_names[type] : "?";
}

lf_status lf_sched_parse_type(const char *name, lf_sched_type *out, lf_err *err) {
    if (!name || !out) return lf_err_set(err, LF_EINVAL, "lr_scheduler_type: NULL argument");
    for (int i = 0; i < LF_SCHED_COUNT; i++) {
        if (strcmp(name, sched_names[i]) == 0) {
            *out = (lf_sched_type)i;
            return LF_OK;
        }
    }
    if (strcmp(name, "reduce_lr_on_plateau") == 0)
        return lf_err_set(err, LF_EUNSUPPORTED, "lr_scheduler_type 'reduce_lr_on_plateau' is not supported (it needs "
                          "evaluation metrics); use one of linear, cosine, cosine_with_restarts, polynomial, constant, "
                          "constant_with_warmup, inverse_sqrt, cosine_with_min_lr, warmup_stable_decay");
    return lf_err_set(err, LF_EINVAL, "unknown lr_scheduler_type '%s' (known: linear, cosine, cosine_with_restarts, "
                      "polynomial, constant, constant_with_warmup, inverse_sqrt, cosine_with_min_lr, "
                      "warmup_stable_decay)", name);
}

void lf_sched_init(lf_sched *s, lf_sched_type type, double base_lr, int64_t warmup_steps, int64_t training_steps) {
    memset(s, 0, sizeof *s);
    s->type = type;
    s->base_lr = base_lr;
    s->warmup_steps = warmup_steps;
    s->training_steps = training_steps;
    s->num_cycles = type == LF_SCHED_COSINE_WITH_RESTARTS ? 1.0 : 0.5;
    s->lr_end = 1e-7;
    s->power = 1.0;
    s->timescale = 0;
    s->min_lr = NAN;
    s->min_lr_rate = NAN;
    s->num_stable_steps = 0;
    s->num_decay_steps = 0;
    s->min_lr_ratio = 0.0;
}

lf_status lf_sched_check(const lf_sched *s, lf_err *err) {
    if (!s) return lf_err_set(err, LF_EINVAL, "lr schedule: NULL");
    const char *nm = lf_sched_type_name(s->type);
    if ((int)s->type < 0 || s->type >= LF_SCHED_COUNT) return lf_err_set(err, LF_EINVAL, "lr schedule: bad type %d", (int)s->type);
    if (!(s->base_lr >= 0.0) || isinf(s->base_lr))
        return lf_err_set(err, LF_EINVAL, "%s schedule: learning_rate = %g, must be >= 0 and finite", nm, s->base_lr);
    if (s->warmup_steps < 0) return lf_err_set(err, LF_EINVAL, "%s schedule: warmup steps = %" PRId64 " is negative", nm, s->warmup_steps);
    if (s->training_steps < 0)
        return lf_err_set(err, LF_EINVAL, "%s schedule: num_training_steps = %" PRId64 " is negative", nm, s->training_steps);
    if (!isfinite(s->num_cycles)) return lf_err_set(err, LF_EINVAL, "%s schedule: num_cycles = %g is not finite", nm, s->num_cycles);
    switch (s->type) {
    case LF_SCHED_POLYNOMIAL:
        if (!(s->base_lr > s->lr_end)) /* transformers: ValueError */
            return lf_err_set(err, LF_EINVAL, "polynomial schedule: lr_end (%g) must be smaller than the learning rate (%g)",
                              s->lr_end, s->base_lr);
        if (!(s->power >= 0.0) || isinf(s->power))
            return lf_err_set(err, LF_EINVAL, "polynomial schedule: power = %g, must be >= 0 and finite (0.0 ** negative "
                              "fails at the last step in transformers)", s->power);
        if (s->warmup_steps == s->training_steps) /* decay_steps = 0: ZeroDivisionError at step num_training_steps */
            return lf_err_set(err, LF_EINVAL, "polynomial schedule: warmup steps (%" PRId64 ") == num_training_steps leaves "
                              "no decay steps (transformers divides by zero)", s->warmup_steps);
        break;
    case LF_SCHED_INVERSE_SQRT:
        if (s->timescale < 0) return lf_err_set(err, LF_EINVAL, "inverse_sqrt schedule: timescale = %" PRId64 " is negative", s->timescale);
        break;
    case LF_SCHED_COSINE_WITH_MIN_LR: {
        int has_lr = !isnan(s->min_lr), has_rate = !isnan(s->min_lr_rate);
        if (has_lr && has_rate) return lf_err_set(err, LF_EINVAL, "cosine_with_min_lr schedule: only one of min_lr or min_lr_rate should be set");
        if (!has_lr && !has_rate)
            return lf_err_set(err, LF_EINVAL, "cosine_with_min_lr schedule: one of min_lr or min_lr_rate must be set "
                              "(lr_scheduler_kwargs)");
        if (has_lr && (isinf(s->min_lr) || !(s->base_lr > 0.0)))
            return lf_err_set(err, LF_EINVAL, "cosine_with_min_lr schedule: min_lr = %g needs a finite value and a learning rate > 0 (is %g)",
                              s->min_lr, s->base_lr);
        if (has_rate && isinf(s->min_lr_rate)) return lf_err_set(err, LF_EINVAL, "cosine_with_min_lr schedule: min_lr_rate is infinite");
        break;
    }
    case LF_SCHED_WARMUP_STABLE_DECAY:
        if (s->num_stable_steps < 0 || s->num_decay_steps < 0)
            return lf_err_set(err, LF_EINVAL, "warmup_stable_decay schedule: num_stable_steps = %" PRId64 ", num_decay_steps = %"
                              PRId64 ", must be >= 0", s->num_stable_steps, s->num_decay_steps);
        if (!isfinite(s->min_lr_ratio)) return lf_err_set(err, LF_EINVAL, "warmup_stable_decay schedule: min_lr_ratio is not finite");
        break;
    default: break;
    }
    return LF_OK;
}

/* Python max(0.0, x) / max(0, x): x if x > 0 else 0 (NaN -> 0). */
static double pymax0(double x) { return x > 0.0 ? x : 0.0; }

/* Python float % float. */
static double pymod(double x, double y) {
    double m = fmod(x, y);
    if (m != 0.0) {
        if ((y < 0.0) != (m < 0.0)) m = m + y;
    } else {
        m = copysign(0.0, y);
    }
    return m;
}

static int64_t max1(int64_t x) { return x > 1 ? x : 1; }

/* float(current_step) / float(max(1, num_warmup_steps)) (reached only when k < warmup) */
static double warmup_factor(int64_t k, int64_t w) { return (double)k / (double)max1(w); }

/* 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)) */
static double half_cosine(double num_cycles, double progress) {
    double a = LF_PI * num_cycles;
    double b = a * 2.0;
    double c = b * progress;
    double one_plus = 1.0 + cos(c);
    return 0.5 * one_plus;
}

double lf_sched_factor(const lf_sched *s, int64_t k) {
    const int64_t W = s->warmup_steps, T = s->training_steps;
    switch (s->type) {
    case LF_SCHED_CONSTANT:
        return 1.0;
    case LF_SCHED_CONSTANT_WITH_WARMUP:
        return k < W ? warmup_factor(k, W) : 1.0;
    case LF_SCHED_LINEAR:
        if (k < W) return warmup_factor(k, W);
        return pymax0((double)(T - k) / (double)max1(T - W));
    case LF_SCHED_COSINE:
    case LF_SCHED_COSINE_WITH_MIN_LR: {
        if (k < W) return warmup_factor(k, W);
        double rate = 0.0; /* plain cosine: min_lr_rate = 0.0, and the formula below still runs (as in transformers) */
        if (s->type == LF_SCHED_COSINE_WITH_MIN_LR) rate = isnan(s->min_lr_rate) ? s->min_lr / s->base_lr : s->min_lr_rate;
        double progress = (double)(k - W) / (double)max1(T - W);
        double factor = half_cosine(s->num_cycles, progress);
        double scaled = factor * (1.0 - rate);
        factor = scaled + rate;
        return pymax0(factor);
    }
    case LF_SCHED_COSINE_WITH_RESTARTS: {
        if (k < W) return warmup_factor(k, W);
        double progress = (double)(k - W) / (double)max1(T - W);
        if (progress >= 1.0) return 0.0;
        double x = pymod(s->num_cycles * progress, 1.0);
        double a = LF_PI * x;
        double one_plus = 1.0 + cos(a);
        return pymax0(0.5 * one_plus);
    }
    case LF_SCHED_POLYNOMIAL: {
        const double lr_init = s->base_lr;
        if (k < W) return warmup_factor(k, W);
        if (k > T) return s->lr_end / lr_init;
        double lr_range = lr_init - s->lr_end;
        int64_t decay_steps = T - W;
        double frac = (double)(k - W) / (double)decay_steps; /* int / int: correctly rounded, as (double)/(double) */
        double pct_remaining = 1.0 - frac;
        double p = pow(pct_remaining, s->power);
        double scaled = lr_range * p;
        double decay = scaled + s->lr_end;
        return decay / lr_init;
    }
    case LF_SCHED_INVERSE_SQRT: {
        if (k < W) return warmup_factor(k, W);
        int64_t timescale = s->timescale > 0 ? s->timescale : (W ? W : 10000);
        int64_t shift = timescale - W;
        double q = (double)(k + shift) / (double)timescale;
        return 1.0 / sqrt(q);
    }
    case LF_SCHED_WARMUP_STABLE_DECAY: {
        const int64_t S = s->num_stable_steps, D = s->num_decay_steps;
        /* transformers 5 (_get_wsd_scheduler_lambda, warmup_type linear, decay_type cosine): both ramps go
         * between min_lr_ratio and 1, factor * (1 - min_lr_ratio) + min_lr_ratio, then max(0.0, .) */
        if (k < W) return pymax0(warmup_factor(k, W) * (1.0 - s->min_lr_ratio) + s->min_lr_ratio);
        if (k < W + S) return 1.0;
        if (k < W + S + D) {
            double progress = (double)(k - W - S) / (double)max1(D);
            return pymax0(half_cosine(s->num_cycles, progress) * (1.0 - s->min_lr_ratio) + s->min_lr_ratio);
        }
        return s->min_lr_ratio;
    }
    default:
        return 0.0;
    }
}

double lf_sched_lr(const lf_sched *s, int64_t k) { return s->base_lr * lf_sched_factor(s, k); }

int64_t lf_sched_resolve_warmup(int64_t warmup_steps, double warmup_ratio, int64_t training_steps) {
    if (warmup_steps > 0) return warmup_steps;
    if (!(warmup_ratio > 0.0) || training_steps <= 0) return 0; /* ratio 0 (or invalid: HF validates 0..1) */
    double w = ceil((double)training_steps * warmup_ratio);
    if (!(w < 9.2e18)) return INT64_MAX;
    return (int64_t)w;
}
