/* optim_tool.c - test helper for the torch/transformers oracle (tests/oracle/test_optim_torch.py): runs our
 * AdamW + lr schedule + clipping, the schedules alone, the loss smoothing and the SVG plot on raw files.
 *
 *   optim_tool adamw N STEPS P0.f32 GRADS.f32 OUTPREFIX [options]
 *       P0.f32: N raw little-endian f32 (initial params); GRADS.f32: STEPS*N f32 (the gradient of each step).
 *       Per step s (1-based): [clip g with --max-norm if > 0, else only its norm]; lr = lf_sched_lr(s - 1);
 *       lf_adamw_step(t = s). With --resume-at K: after step K the state goes through a safetensors file
 *       (OUTPREFIX.state.safetensors): m, v, t are overwritten with garbage and loaded back.
 *       Writes OUTPREFIX.params f32 [STEPS*N] (params after each step), .m and .v f32 [N] (final), .norms f32
 *       [STEPS] (total norm, f32 as clip_grad_norm_ returns it), .coef f32 [STEPS], .lrs f64 [STEPS].
 *   optim_tool sched NAME COUNT OUT.f64 [options]
 *       lf_sched_lr(k) for k = 0..COUNT-1; prints "warmup_steps=W" (the resolved value) on stdout.
 *   optim_tool smooth IN.f64 OUT.f64            lf_plot_smooth over all values of IN
 *   optim_tool plot OUT.svg TRAIN.f64 EVAL.f64|- [--title T]
 *       TRAIN/EVAL: (step, loss) f64 pairs.
 * Options: --lr --beta1 --beta2 --eps --wd --sched --warmup --warmup-ratio --total --max-norm --threads --simd 0|1
 *          --resume-at --num-cycles --lr-end --power --timescale --min-lr --min-lr-rate --stable --decay
 *          --min-lr-ratio --title
 * Exit 0 on success, 1 on error (message on stderr), 2 on usage. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_args.h" // defines: lf_args_parse, lf_args_i64
#include "core/fileio.h"
#include "core/threadpool.h"
#include "finetune/optim.h"
#include "finetune/plot.h"
#include "finetune/schedule.h"

typedef struct opts {
    double lr, beta1, beta2, eps, wd, warmup_ratio, max_norm;
    double num_cycles, lr_end, power, min_lr, min_lr_rate, min_lr_ratio;
    int has_num_cycles, has_lr_end, has_power;
    int64_t warmup, total, timescale, stable, decay, resume_at;
    int threads, simd;
    const char *sched, *title;
} opts;

static const char USAGE[] = "usage: optim_tool adamw N STEPS P0.f32 GRADS.f32 OUTPREFIX [options]\n"
                            "       optim_tool sched NAME COUNT OUT.f64 [options]\n"
                            "       optim_tool smooth IN.f64 OUT.f64\n"
                            "       optim_tool plot OUT.svg TRAIN.f64 EVAL.f64|- [--title T]\n";

static int usage(void) {
    fputs(USAGE, stderr);
    return 2;
}

/* The options (any number: the schedule / optimizer checks validate them; the oracle passes bad ones) and
 * positionals (the command first) of every command. -1: go on; else the exit code. */
static int parse_args(int argc, char **argv, opts *o, const char **pos, int maxpos, int *npos) {
    lf_adamw_cfg c = lf_adamw_default_cfg();
    *o = (opts){.lr = 1e-3, .beta1 = c.beta1, .beta2 = c.beta2, .eps = c.eps, .wd = c.weight_decay, .total = -1,
                .min_lr = NAN, .min_lr_rate = NAN, .resume_at = -1, .threads = 1, .simd = 1, .sched = "constant"};
    const lf_arg_spec flags[] = {LF_FLAG_F64("--lr", &o->lr, 0, 0),
                                 LF_FLAG_F64("--beta1", &o->beta1, 0, 0),
                                 LF_FLAG_F64("--beta2", &o->beta2, 0, 0),
                                 LF_FLAG_F64("--eps", &o->eps, 0, 0),
                                 LF_FLAG_F64("--wd", &o->wd, 0, 0),
                                 LF_FLAG_STR("--sched", &o->sched),
                                 LF_FLAG_I64("--warmup", &o->warmup, 0, 0),
                                 LF_FLAG_F64("--warmup-ratio", &o->warmup_ratio, 0, 0),
                                 LF_FLAG_I64("--total", &o->total, 0, 0),
                                 LF_FLAG_F64("--max-norm", &o->max_norm, 0, 0),
                                 LF_FLAG_INT("--threads", &o->threads, 0, 0),
                                 LF_FLAG_INT("--simd", &o->simd, 0, 0),
                                 LF_FLAG_I64("--resume-at", &o->resume_at, 0, 0),
                                 {"--num-cycles", LF_ARG_F64, &o->num_cycles, .seen = &o->has_num_cycles},
                                 {"--lr-end", LF_ARG_F64, &o->lr_end, .seen = &o->has_lr_end},
                                 {"--power", LF_ARG_F64, &o->power, .seen = &o->has_power},
                                 LF_FLAG_I64("--timescale", &o->timescale, 0, 0),
                                 LF_FLAG_F64("--min-lr", &o->min_lr, 0, 0),
                                 LF_FLAG_F64("--min-lr-rate", &o->min_lr_rate, 0, 0),
                                 LF_FLAG_I64("--stable", &o->stable, 0, 0),
                                 LF_FLAG_I64("--decay", &o->decay, 0, 0),
                                 LF_FLAG_F64("--min-lr-ratio", &o->min_lr_ratio, 0, 0),
                                 LF_FLAG_STR("--title", &o->title),
                                 LF_FLAG_END};
    return lf_args_parse("optim_tool", USAGE, argc, argv, 1, flags, pos, maxpos, npos);
}

static int make_sched(const opts *o, int64_t total, lf_sched *s) {
    lf_err err;
    lf_sched_type type;
    if (lf_sched_parse_type(o->sched, &type, &err)) {
        fprintf(stderr, "optim_tool: %s\n", err.msg);
        return 0;
    }
    lf_sched_init(s, type, o->lr, lf_sched_resolve_warmup(o->warmup, o->warmup_ratio, total), total);
    if (o->has_num_cycles) s->num_cycles = o->num_cycles;
    if (o->has_lr_end) s->lr_end = o->lr_end;
    if (o->has_power) s->power = o->power;
    s->timescale = o->timescale;
    s->min_lr = o->min_lr;
    s->min_lr_rate = o->min_lr_rate;
    s->num_stable_steps = o->stable;
    s->num_decay_steps = o->decay;
    s->min_lr_ratio = o->min_lr_ratio;
    if (lf_sched_check(s, &err)) {
        fprintf(stderr, "optim_tool: %s\n", err.msg);
        return 0;
    }
    return 1;
}

static void *read_raw(const char *path, size_t want, const char *what) {
    char *buf = NULL;
    size_t len = 0;
    lf_err err;
    if (lf_file_read_all(path, &buf, &len, &err)) {
        fprintf(stderr, "optim_tool: %s\n", err.msg);
        return NULL;
    }
    if (want != (size_t)-1 && len != want) {
        fprintf(stderr, "optim_tool: %s (%s) has %zu bytes, expected %zu\n", path, what, len, want);
        free(buf);
        return NULL;
    }
    return buf;
}

static int write_raw(const char *prefix, const char *suffix, const void *data, size_t len) {
    char path[4096];
    lf_err err;
    snprintf(path, sizeof path, "%s%s", prefix, suffix);
    if (lf_file_write_atomic(path, data, len, &err)) {
        fprintf(stderr, "optim_tool: %s\n", err.msg);
        return 0;
    }
    return 1;
}

static int cmd_adamw(int argc, const char **argv, opts o) {
    if (argc != 5) return usage();
    int64_t n = 0, steps = 0;
    if (lf_args_i64("optim_tool", "N", argv[0], 1, INT32_MAX, &n) ||
        lf_args_i64("optim_tool", "STEPS", argv[1], 1, INT32_MAX, &steps))
        return 2;
    const char *prefix = argv[4];
    int rc = 1;
    lf_err err;
    lf_pool *pool = NULL;
    float *p0 = NULL, *g = NULL, *p = NULL, *m = NULL, *v = NULL, *out = NULL, *norms = NULL, *coefs = NULL, *gs = NULL;
    double *lrs = NULL;
    lf_sched s;
    if (!make_sched(&o, o.total >= 0 ? o.total : steps, &s)) goto done;
    lf_adamw_cfg cfg = {.beta1 = o.beta1, .beta2 = o.beta2, .eps = o.eps, .weight_decay = o.wd};
    p0 = read_raw(argv[2], (size_t)n * 4, "params");
    g = read_raw(argv[3], (size_t)(n * steps) * 4, "grads");
    if (!p0 || !g) goto done;
    pool = lf_pool_create(o.threads);
    lf_adamw_set_simd(o.simd);
    p = malloc((size_t)n * 4), m = calloc((size_t)n, 4), v = calloc((size_t)n, 4), gs = malloc((size_t)n * 4);
    out = malloc((size_t)(n * steps) * 4), norms = malloc((size_t)steps * 4), coefs = malloc((size_t)steps * 4);
    lrs = malloc((size_t)steps * 8);
    if (!pool || !p || !m || !v || !gs || !out || !norms || !coefs || !lrs) {
        fprintf(stderr, "optim_tool: out of memory\n");
        goto done;
    }
    memcpy(p, p0, (size_t)n * 4);
    int64_t t = 0;
    for (int64_t st = 1; st <= steps; st++) {
        memcpy(gs, g + (st - 1) * n, (size_t)n * 4);
        if (o.max_norm > 0) {
            if (lf_grad_clip(pool, gs, n, o.max_norm, &norms[st - 1], &coefs[st - 1], &err)) goto fail;
        } else {
            norms[st - 1] = (float)lf_grad_norm(pool, gs, n);
            coefs[st - 1] = 1.0f;
        }
        lrs[st - 1] = lf_sched_lr(&s, st - 1);
        t = st;
        if (lf_adamw_step(pool, &cfg, lrs[st - 1], t, p, gs, m, v, n, &err)) goto fail;
        memcpy(out + (st - 1) * n, p, (size_t)n * 4);
        if (st == o.resume_at) {
            char path[4096];
            snprintf(path, sizeof path, "%s.state.safetensors", prefix);
            if (lf_adamw_state_save(path, m, v, n, t, &err)) goto fail;
            for (int64_t i = 0; i < n; i++) m[i] = NAN, v[i] = -1.0f;
            t = -7;
            if (lf_adamw_state_load(path, m, v, n, &t, &err)) goto fail;
            if (t != st) {
                fprintf(stderr, "optim_tool: state step %" PRId64 " after load, expected %" PRId64 "\n", t, st);
                goto done;
            }
        }
    }
    if (!write_raw(prefix, ".params", out, (size_t)(n * steps) * 4) || !write_raw(prefix, ".m", m, (size_t)n * 4) ||
        !write_raw(prefix, ".v", v, (size_t)n * 4) || !write_raw(prefix, ".norms", norms, (size_t)steps * 4) ||
        !write_raw(prefix, ".coef", coefs, (size_t)steps * 4) || !write_raw(prefix, ".lrs", lrs, (size_t)steps * 8))
        goto done;
    printf("warmup_steps=%" PRId64 "\n", s.warmup_steps);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "optim_tool: %s\n", err.msg);
done:
    lf_pool_destroy(pool);
    free(p0), free(g), free(p), free(m), free(v), free(gs), free(out), free(norms), free(coefs), free(lrs);
    return rc;
}

static int cmd_sched(int argc, const char **argv, opts o) {
    if (argc != 3) return usage();
    int64_t count = 0;
    if (lf_args_i64("optim_tool", "COUNT", argv[1], 0, INT32_MAX, &count)) return 2;
    o.sched = argv[0];
    lf_sched s;
    if (!make_sched(&o, o.total >= 0 ? o.total : 0, &s)) return 1;
    double *lrs = malloc((size_t)(count ? count : 1) * 8);
    if (!lrs) return 1;
    for (int64_t k = 0; k < count; k++) lrs[k] = lf_sched_lr(&s, k);
    int ok = write_raw(argv[2], "", lrs, (size_t)count * 8);
    free(lrs);
    if (!ok) return 1;
    printf("warmup_steps=%" PRId64 "\n", s.warmup_steps);
    return 0;
}

static int cmd_smooth(int argc, const char **argv) {
    if (argc != 2) return usage();
    char *raw = NULL;
    size_t n = 0;
    lf_err err;
    if (lf_file_read_all(argv[0], &raw, &n, &err)) {
        fprintf(stderr, "optim_tool: %s\n", err.msg);
        return 1;
    }
    int64_t cnt = (int64_t)(n / 8);
    double *x = malloc((size_t)(cnt ? cnt : 1) * 8);
    if (!x) {
        free(raw);
        return 1;
    }
    memcpy(x, raw, (size_t)cnt * 8);
    lf_plot_smooth(x, x, cnt);
    int ok = write_raw(argv[1], "", x, (size_t)cnt * 8);
    free(x);
    free(raw);
    return ok ? 0 : 1;
}

static int read_pairs(const char *path, int64_t **steps, double **vals, int64_t *n) {
    char *raw = NULL;
    size_t len = 0;
    lf_err err;
    *steps = NULL, *vals = NULL, *n = 0;
    if (!strcmp(path, "-")) return 1;
    if (lf_file_read_all(path, &raw, &len, &err)) {
        fprintf(stderr, "optim_tool: %s\n", err.msg);
        return 0;
    }
    int64_t cnt = (int64_t)(len / 16);
    *steps = malloc((size_t)(cnt ? cnt : 1) * sizeof **steps);
    *vals = malloc((size_t)(cnt ? cnt : 1) * sizeof **vals);
    if (!*steps || !*vals) {
        free(raw);
        return 0;
    }
    for (int64_t i = 0; i < cnt; i++) {
        double pr[2];
        memcpy(pr, raw + 16 * i, 16);
        (*steps)[i] = (int64_t)pr[0];
        (*vals)[i] = pr[1];
    }
    *n = cnt;
    free(raw);
    return 1;
}

static int cmd_plot(int argc, const char **argv, opts o) {
    if (argc != 3) return usage();
    int64_t *ts = NULL, *es = NULL;
    double *tl = NULL, *el = NULL;
    int64_t nt = 0, ne = 0;
    int rc = 1;
    if (!read_pairs(argv[1], &ts, &tl, &nt) || !read_pairs(argv[2], &es, &el, &ne)) goto done;
    lf_plot_loss_data d = {.title = o.title, .steps = ts, .loss = tl, .n = nt, .eval_steps = es, .eval_loss = el, .n_eval = ne};
    lf_err err;
    if (lf_plot_loss_svg(argv[0], &d, &err)) {
        fprintf(stderr, "optim_tool: %s\n", err.msg);
        goto done;
    }
    rc = 0;
done:
    free(ts), free(tl), free(es), free(el);
    return rc;
}

int main(int argc, char **argv) {
    const char *pos[6];
    int npos = 0;
    opts o;
    int rc = parse_args(argc, argv, &o, pos, 6, &npos);
    if (rc >= 0) return rc;
    const char *cmd = npos ? pos[0] : "";
    if (!strcmp(cmd, "adamw")) return cmd_adamw(npos - 1, pos + 1, o);
    if (!strcmp(cmd, "sched")) return cmd_sched(npos - 1, pos + 1, o);
    if (!strcmp(cmd, "smooth")) return cmd_smooth(npos - 1, pos + 1);
    if (!strcmp(cmd, "plot")) return cmd_plot(npos - 1, pos + 1, o);
    if (npos) fprintf(stderr, "optim_tool: unknown command '%s'\n", cmd);
    return usage();
}
