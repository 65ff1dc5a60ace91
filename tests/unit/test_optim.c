/* test_optim.c - finetune/optim (AdamW, gradient norm, clipping, state files), finetune/schedule (lr schedules,
 * warmup resolution) and finetune/plot (smoothing, training_loss.svg).
 *
 * AdamW: threaded (AVX2 path on and off) == scalar _ref bit for bit for pools NULL/1/2/3 and ragged sizes; vs an independent f64
 * textbook AdamW within a tolerance from f32 rounding; the first-step closed form; bad arguments.
 * Norm/clip: threaded == _ref bit for bit for 1/2/3 threads, vs a long double sum; clip to max_norm, no-op when
 * under, torch's behaviour on inf gradients. State: save/load round trip, prefixed writer/reader, split run ==
 * continuous run bit for bit, corrupt files. Schedules: hand-computed values, HF's warmup_ratio rounding
 * quirk, validation. Plot: smoothing, SVG well-formed (tag balance, entities), axis titles, legend, path point
 * counts, 0/1 points, NaN/inf, huge and log ranges, atomic write.
 * Seed: LF_TEST_SEED or time, printed first. Files live in a mkdtemp dir removed at the end. */
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/fileio.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "core/threadpool.h"
#include "finetune/optim.h"
#include "finetune/plot.h"
#include "finetune/schedule.h"

static int passed, failed;
#define CHECK(cond, ...)                                \
    do {                                                \
        if (cond) {                                     \
            passed++;                                   \
        } else {                                        \
            failed++;                                   \
            printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            printf(__VA_ARGS__);                        \
            printf("\n");                               \
        }                                               \
    } while (0)

static lf_rng rng;
static char g_dir[512];
static lf_pool *pools[4]; /* NULL, 1, 2, 3 threads */

static float *randn(int64_t n, float scale) {
    float *x = malloc((size_t)(n ? n : 1) * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = lf_rng_normal(&rng) * scale;
    return x;
}

static float *copyf(const float *x, int64_t n) {
    float *y = malloc((size_t)(n ? n : 1) * sizeof *y);
    if (n) memcpy(y, x, (size_t)n * sizeof *y);
    return y;
}

static int same_bits(const float *a, const float *b, int64_t n) { return n == 0 || memcmp(a, b, (size_t)n * 4) == 0; }

/* ============================================================================================ AdamW */

static void test_adamw_threads_vs_ref(void) {
    const int64_t sizes[] = {0, 1, 7, 4095, 4097, 100003};
    lf_adamw_cfg cfg = lf_adamw_default_cfg();
    cfg.weight_decay = 0.1;
    int all_same = 1;
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        int64_t n = sizes[si];
        float *p0 = randn(n, 1.0f), *pr = copyf(p0, n), *mr = calloc((size_t)n + 1, 4), *vr = calloc((size_t)n + 1, 4);
        float *gs[5];
        for (int s = 0; s < 5; s++) gs[s] = randn(n, s == 2 ? 100.0f : 0.5f);
        for (int s = 0; s < 5; s++) lf_adamw_step_ref(&cfg, 1e-3 * (s + 1), s + 1, pr, gs[s], mr, vr, n);
        for (int simd = 1; simd >= 0; simd--) {
            lf_adamw_set_simd(simd);
            for (int pi = 0; pi < 4; pi++) {
                float *p = copyf(p0, n), *m = calloc((size_t)n + 1, 4), *v = calloc((size_t)n + 1, 4);
                lf_err err;
                for (int s = 0; s < 5; s++)
                    CHECK(lf_adamw_step(pools[pi], &cfg, 1e-3 * (s + 1), s + 1, p, gs[s], m, v, n, &err) == LF_OK, "step: %s", err.msg);
                int same = same_bits(p, pr, n) && same_bits(m, mr, n) && same_bits(v, vr, n);
                all_same &= same;
                CHECK(same, "adamw n=%" PRId64 " pool %d threads simd %d differs from _ref", n, lf_pool_size(pools[pi]),
                      lf_adamw_simd_active());
                free(p), free(m), free(v);
            }
        }
        lf_adamw_set_simd(1);
        for (int s = 0; s < 5; s++) free(gs[s]);
        free(p0), free(pr), free(mr), free(vr);
    }
    lf_adamw_set_simd(1);
    printf("adamw: threaded == _ref bit for bit over sizes 0..100003, pools NULL/1/2/3, SIMD %s and off: %s\n",
           lf_adamw_simd_active() ? "on (AVX2+FMA)" : "unavailable", all_same ? "yes" : "NO");
}

/* Independent f64 AdamW (textbook form, Loshchilov & Hutter decoupled decay as torch applies it). Tolerance:
 * the f32 version rounds ~10 times per step (each <= 2^-24 relative) and its m, v, p feed back across steps,
 * so m, v agree to ~1e-6 relative (m relative to the same recurrence over |g|: m itself may cancel to ~0); p moves by <= lr * |m_hat/(sqrt(v_hat)+eps)| per step, whose f32 error is
 * ~1e-6 relative, plus the f32 rounding of p itself: two roundings of <= 2^-24 |p| per step (decay, add),
 * i.e. <= 1.2e-7 |p| per step, which the test doubles (2.4e-7) since the bound is reached within 5%. */
static void test_adamw_vs_f64(void) {
    const int64_t n = 2049;
    const int steps = 20;
    lf_adamw_cfg cfg = {.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.01};
    float *p = randn(n, 1.0f), *m = calloc(n, 4), *v = calloc(n, 4), *g = malloc(n * 4);
    double *pd = malloc(n * 8), *md = calloc(n, 8), *vd = calloc(n, 8), *ma = calloc(n, 8);
    for (int64_t i = 0; i < n; i++) pd[i] = p[i];
    double worst_p = 0, worst_mv = 0;
    int ok = 1;
    for (int t = 1; t <= steps; t++) {
        double lr = 1e-3 * (1.0 - (t - 1) / (double)steps);
        for (int64_t i = 0; i < n; i++) g[i] = lf_rng_normal(&rng) * (i % 3 == 0 ? 10.0f : 0.1f);
        lf_err err;
        lf_adamw_step(pools[2], &cfg, lr, t, p, g, m, v, n, &err);
        double bc1 = 1 - pow(cfg.beta1, t), bc2 = 1 - pow(cfg.beta2, t);
        for (int64_t i = 0; i < n; i++) {
            pd[i] *= 1 - lr * cfg.weight_decay;
            md[i] = cfg.beta1 * md[i] + (1 - cfg.beta1) * g[i];
            ma[i] = cfg.beta1 * ma[i] + (1 - cfg.beta1) * fabs(g[i]); /* same recurrence on |g|: m's magnitude scale */
            vd[i] = cfg.beta2 * vd[i] + (1 - cfg.beta2) * (double)g[i] * g[i];
            pd[i] -= lr * (md[i] / bc1) / (sqrt(vd[i] / bc2) + cfg.eps);
            double em = fabs(m[i] - md[i]) / (ma[i] + 1e-30), ev = fabs(v[i] - vd[i]) / (vd[i] + 1e-30);
            double tol_p = 1e-6 * t * 1e-3 + t * 2.4e-7 * fabs(pd[i]);
            double ep = fabs(p[i] - pd[i]);
            worst_mv = fmax(worst_mv, fmax(em, ev));
            worst_p = fmax(worst_p, ep / tol_p);
            if (em > 4e-6 || ev > 4e-6 || ep > tol_p) ok = 0;
        }
    }
    CHECK(ok, "adamw vs f64: worst m/v rel %.3g, worst p err / tol %.3g", worst_mv, worst_p);
    printf("adamw vs f64 textbook: %d steps, worst m/v rel %.2g (tol 4e-6), worst p err/tol %.2f\n", steps, worst_mv, worst_p);
    free(p), free(m), free(v), free(g), free(pd), free(md), free(vd), free(ma);
}

static void test_adamw_first_step_and_errors(void) {
    /* step 1 from zero state: m_hat = g, v_hat = g^2 -> p1 = p0 (1 - lr wd) - lr g / (|g| + eps) */
    lf_adamw_cfg cfg = lf_adamw_default_cfg();
    float p[4] = {1.0f, -2.0f, 0.5f, 3.0f}, g[4] = {0.3f, -4.0f, 0.0f, 1e-3f}, m[4] = {0}, v[4] = {0};
    lf_err err;
    double lr = 0.01;
    float p0[4];
    memcpy(p0, p, sizeof p);
    CHECK(lf_adamw_step(NULL, &cfg, lr, 1, p, g, m, v, 4, &err) == LF_OK, "first step: %s", err.msg);
    for (int i = 0; i < 4; i++) {
        double want = p0[i] * (1 - lr * cfg.weight_decay) - lr * g[i] / (fabs(g[i]) + cfg.eps);
        CHECK(fabs(p[i] - want) <= 1e-6 * fabs(want) + 1e-7, "first step p[%d] = %.9g want %.9g", i, p[i], want);
    }
    CHECK(m[2] == 0.0f && v[2] == 0.0f && p[2] == (float)(0.5 * (1 - lr * cfg.weight_decay)),
          "zero gradient: only weight decay (p %.9g m %g v %g)", p[2], m[2], v[2]);
    /* bad arguments */
    lf_adamw_cfg bad = cfg;
    bad.beta1 = 1.0;
    CHECK(lf_adamw_step(NULL, &bad, lr, 1, p, g, m, v, 4, &err) == LF_EINVAL && strstr(err.msg, "beta1"), "beta1=1: %s", err.msg);
    bad = cfg;
    bad.beta2 = NAN;
    CHECK(lf_adamw_step(NULL, &bad, lr, 1, p, g, m, v, 4, &err) == LF_EINVAL && strstr(err.msg, "beta2"), "beta2 NaN: %s", err.msg);
    bad = cfg;
    bad.eps = -1;
    CHECK(lf_adamw_check(&bad, &err) == LF_EINVAL && strstr(err.msg, "eps"), "eps<0: %s", err.msg);
    bad = cfg;
    bad.weight_decay = -0.1;
    CHECK(lf_adamw_check(&bad, &err) == LF_EINVAL && strstr(err.msg, "weight_decay"), "wd<0: %s", err.msg);
    CHECK(lf_adamw_step(NULL, &cfg, NAN, 1, p, g, m, v, 4, &err) == LF_EINVAL && strstr(err.msg, "learning rate"), "lr NaN: %s", err.msg);
    CHECK(lf_adamw_step(NULL, &cfg, lr, 0, p, g, m, v, 4, &err) == LF_EINVAL && strstr(err.msg, "t = 0"), "t=0: %s", err.msg);
    CHECK(lf_adamw_step(NULL, &cfg, lr, 1, p, NULL, m, v, 4, &err) == LF_EINVAL && strstr(err.msg, "g NULL"), "NULL g: %s", err.msg);
    CHECK(lf_adamw_step(NULL, &cfg, lr, 1, NULL, NULL, NULL, NULL, 0, &err) == LF_OK, "n=0 with NULL arrays is fine");
    CHECK(lf_adamw_step(NULL, &cfg, lr, 1, p, g, m, v, -1, &err) == LF_EINVAL, "n<0");
}

/* ============================================================================================ norm + clip */

static void test_norm(void) {
    const int64_t sizes[] = {0, 1, 5, 255, 256, 257, 65535, 65536, 300001};
    int all_same = 1;
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        int64_t n = sizes[si];
        float *g = randn(n, 3.0f);
        double ref = lf_grad_norm_ref(g, n);
        for (int pi = 0; pi < 4; pi++) {
            double x = lf_grad_norm(pools[pi], g, n);
            all_same &= memcmp(&x, &ref, 8) == 0;
            CHECK(memcmp(&x, &ref, 8) == 0, "norm n=%" PRId64 " pool %d: %.17g vs ref %.17g", n, lf_pool_size(pools[pi]), x, ref);
        }
        long double s = 0;
        for (int64_t i = 0; i < n; i++) s += (long double)g[i] * g[i];
        double exact = (double)sqrtl(s);
        /* f64 sums of n positive terms: relative error <= n * 2^-53 in the worst case; 1e-12 holds to n ~ 1e4 worst
         * case and to far larger n for the partitioned sum (each part ~n/256 terms, then 256 partials) */
        CHECK(fabs(ref - exact) <= 1e-12 * exact, "norm n=%" PRId64 ": %.17g vs long double %.17g", n, ref, exact);
        free(g);
    }
    float z[3] = {0, 0, 0}, inf3[3] = {1, INFINITY, 2}, nan3[3] = {1, NAN, 2};
    CHECK(lf_grad_norm(NULL, z, 3) == 0.0 && lf_grad_norm(NULL, z, 0) == 0.0, "norm of zeros / empty");
    CHECK(isinf(lf_grad_norm(NULL, inf3, 3)) && isnan(lf_grad_norm(NULL, nan3, 3)), "norm of inf / NaN");
    float big[2] = {3e38f, 3e38f}; /* squares overflow f32 but not f64 */
    double bn = lf_grad_norm(NULL, big, 2), bw = (double)big[0] * sqrt(2.0);
    CHECK(fabs(bn - bw) <= 1e-15 * bw, "norm without f32 overflow: %.17g want %.17g", bn, bw);
    printf("norm: threaded == _ref bit for bit for every size and pool: %s\n", all_same ? "yes" : "NO");
}

static void test_clip(void) {
    lf_err err;
    const int64_t n = 70001;
    float *g = randn(n, 1.0f);
    double norm0 = lf_grad_norm(NULL, g, n);
    float *outs[4];
    float tn[4], coef[4];
    for (int pi = 0; pi < 4; pi++) {
        outs[pi] = copyf(g, n);
        CHECK(lf_grad_clip(pools[pi], outs[pi], n, 1.0, &tn[pi], &coef[pi], &err) == LF_OK, "clip: %s", err.msg);
    }
    for (int pi = 1; pi < 4; pi++)
        CHECK(same_bits(outs[0], outs[pi], n) && tn[0] == tn[pi] && coef[0] == coef[pi], "clip differs for pool %d", pi);
    CHECK(tn[0] == (float)norm0, "clip total_norm %.9g vs f32(norm) %.9g", tn[0], (float)norm0);
    float want = (1.0f / (tn[0] + 1e-6f)) * 1.0f;
    CHECK(coef[0] == want, "clip coef %.9g want %.9g (torch reciprocal * max_norm)", coef[0], want);
    double after = lf_grad_norm(NULL, outs[0], n);
    CHECK(fabs(after - 1.0) < 2e-6, "norm after clip %.9g (want 1 within the 1e-6 guard + f32 rounding)", after);
    for (int pi = 0; pi < 4; pi++) free(outs[pi]);
    /* under the limit: untouched, coef 1 */
    float *h = copyf(g, n);
    CHECK(lf_grad_clip(pools[3], h, n, norm0 * 2, &tn[0], &coef[0], &err) == LF_OK && coef[0] == 1.0f && same_bits(h, g, n),
          "clip under max_norm changed gradients (coef %g)", coef[0]);
    free(h);
    /* torch: inf norm -> coef 0 -> finite entries 0, inf * 0 = NaN */
    float gi[3] = {1.0f, INFINITY, -2.0f};
    CHECK(lf_grad_clip(NULL, gi, 3, 1.0, &tn[0], &coef[0], &err) == LF_OK && isinf(tn[0]) && coef[0] == 0.0f && gi[0] == 0.0f &&
              isnan(gi[1]) && gi[2] == 0.0f,
          "clip with inf: tn %g coef %g g = %g %g %g", tn[0], coef[0], gi[0], gi[1], gi[2]);
    float gn[2] = {1.0f, NAN};
    CHECK(lf_grad_clip(NULL, gn, 2, 1.0, &tn[0], &coef[0], &err) == LF_OK && isnan(coef[0]) && isnan(gn[0]), "clip with NaN propagates");
    CHECK(lf_grad_clip(NULL, g, n, 0.0, NULL, NULL, &err) == LF_EINVAL && strstr(err.msg, "max_norm"), "max_norm 0: %s", err.msg);
    CHECK(lf_grad_clip(NULL, g, n, NAN, NULL, NULL, &err) == LF_EINVAL, "max_norm NaN");
    CHECK(lf_grad_clip(NULL, NULL, 0, 1.0, &tn[0], &coef[0], &err) == LF_OK && tn[0] == 0.0f && coef[0] == 1.0f, "clip empty");
    free(g);
}

/* ============================================================================================ state */

static void path_in(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", g_dir, name); }

static void test_state(void) {
    lf_err err;
    char path[1024];
    const int64_t n = 5003;
    lf_adamw_cfg cfg = lf_adamw_default_cfg();
    float *p0 = randn(n, 1.0f);
    float *gs[8];
    for (int s = 0; s < 8; s++) gs[s] = randn(n, 0.2f);
    /* continuous 8 steps */
    float *pa = copyf(p0, n), *ma = calloc(n, 4), *va = calloc(n, 4);
    for (int s = 0; s < 8; s++) lf_adamw_step(pools[1], &cfg, 1e-3, s + 1, pa, gs[s], ma, va, n, &err);
    /* 4 steps, save, load into fresh arrays, 4 more */
    float *pb = copyf(p0, n), *mb = calloc(n, 4), *vb = calloc(n, 4);
    for (int s = 0; s < 4; s++) lf_adamw_step(pools[2], &cfg, 1e-3, s + 1, pb, gs[s], mb, vb, n, &err);
    path_in(path, sizeof path, "optimizer.safetensors");
    CHECK(lf_adamw_state_save(path, mb, vb, n, 4, &err) == LF_OK, "save: %s", err.msg);
    float *mc = malloc(n * 4), *vc = malloc(n * 4);
    int64_t t = -1;
    CHECK(lf_adamw_state_load(path, mc, vc, n, &t, &err) == LF_OK, "load: %s", err.msg);
    CHECK(t == 4 && same_bits(mc, mb, n) && same_bits(vc, vb, n), "round trip: step %" PRId64 ", arrays equal %d", t,
          same_bits(mc, mb, n) && same_bits(vc, vb, n));
    for (int s = 4; s < 8; s++) lf_adamw_step(pools[3], &cfg, 1e-3, ++t, pb, gs[s], mc, vc, n, &err);
    CHECK(same_bits(pa, pb, n) && same_bits(ma, mc, n) && same_bits(va, vc, n), "save/load mid-run != continuous run");
    /* wrong size, missing file, corrupt values */
    CHECK(lf_adamw_state_load(path, mc, vc, n + 1, &t, &err) == LF_EFORMAT && strstr(err.msg, "exp_avg") &&
              strstr(err.msg, "optimizer.safetensors"),
          "wrong n: %s", err.msg);
    char missing[1024];
    path_in(missing, sizeof missing, "nope.safetensors");
    CHECK(lf_adamw_state_load(missing, mc, vc, n, &t, &err) != LF_OK && strstr(err.msg, "nope.safetensors"), "missing: %s", err.msg);
    vb[17] = -1.0f;
    CHECK(lf_adamw_state_save(path, mb, vb, n, 4, &err) == LF_OK, "save negative v");
    memset(mc, 0x5a, n * 4);
    CHECK(lf_adamw_state_load(path, mc, vc, n, &t, &err) == LF_EFORMAT && strstr(err.msg, "exp_avg_sq") && strstr(err.msg, "[17]") &&
              ((unsigned char *)mc)[0] == 0x5a,
          "negative v rejected without touching m: %s", err.msg);
    CHECK(lf_adamw_state_save(path, mb, vb, n, -3, &err) == LF_EINVAL, "negative step refused on save");
    /* prefixed, inside a bigger file, through the writer/reader pair */
    lf_st_writer *w = lf_st_writer_create();
    int64_t step = 9, other_shape[1] = {3};
    float other[3] = {1, 2, 3};
    CHECK(lf_st_writer_add(w, "lora_A", LF_DTYPE_F32, 1, other_shape, other, &err) == LF_OK, "writer add");
    CHECK(lf_adamw_state_add(w, "optimizer.", ma, va, n, &step, &err) == LF_OK, "state add: %s", err.msg);
    path_in(path, sizeof path, "ckpt.safetensors");
    CHECK(lf_st_writer_write(w, path, &err) == LF_OK, "write: %s", err.msg);
    lf_st_writer_free(w);
    lf_st_file *f = NULL;
    CHECK(lf_st_open(path, &f, &err) == LF_OK, "open: %s", err.msg);
    if (f) {
        t = 0;
        CHECK(lf_adamw_state_read(f, "optimizer.", mc, vc, n, &t, &err) == LF_OK && t == 9 && same_bits(mc, ma, n) &&
                  same_bits(vc, va, n),
              "prefixed read: %s", err.msg);
        CHECK(lf_adamw_state_read(f, "", mc, vc, n, &t, &err) == LF_ENOTFOUND && strstr(err.msg, "'exp_avg'"), "no prefix: %s",
              err.msg);
        lf_st_close(f);
    }
    /* a safetensors file of another format */
    w = lf_st_writer_create();
    lf_st_writer_set_meta(w, "format", "pt", &err);
    lf_adamw_state_add(w, NULL, ma, va, n, &step, &err);
    path_in(path, sizeof path, "other.safetensors");
    lf_st_writer_write(w, path, &err);
    lf_st_writer_free(w);
    CHECK(lf_adamw_state_load(path, mc, vc, n, &t, &err) == LF_EFORMAT && strstr(err.msg, "format"), "format meta: %s", err.msg);
    /* step stored as a float: wrong dtype */
    w = lf_st_writer_create();
    float fstep = 3;
    int64_t one[1] = {n};
    lf_st_writer_add(w, "exp_avg", LF_DTYPE_F32, 1, one, ma, &err);
    lf_st_writer_add(w, "exp_avg_sq", LF_DTYPE_F32, 1, one, va, &err);
    lf_st_writer_add(w, "step", LF_DTYPE_F32, 0, NULL, &fstep, &err);
    path_in(path, sizeof path, "fstep.safetensors");
    lf_st_writer_write(w, path, &err);
    lf_st_writer_free(w);
    CHECK(lf_adamw_state_load(path, mc, vc, n, &t, &err) == LF_EFORMAT && strstr(err.msg, "'step'") && strstr(err.msg, "F32"),
          "float step: %s", err.msg);
    for (int s = 0; s < 8; s++) free(gs[s]);
    free(p0), free(pa), free(ma), free(va), free(pb), free(mb), free(vb), free(mc), free(vc);
}

/* ============================================================================================ schedules */

static int near(double a, double b) { return fabs(a - b) <= 1e-15 + 1e-12 * fabs(b); }

static void test_schedules(void) {
    lf_err err;
    lf_sched s;
    lf_sched_init(&s, LF_SCHED_LINEAR, 1.0, 2, 10);
    CHECK(lf_sched_check(&s, &err) == LF_OK, "linear check: %s", err.msg);
    const double lin[] = {0, 0.5, 1, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0, 0, 0};
    for (int k = 0; k < 13; k++) CHECK(near(lf_sched_lr(&s, k), lin[k]), "linear k=%d: %.17g want %g", k, lf_sched_lr(&s, k), lin[k]);
    lf_sched_init(&s, LF_SCHED_COSINE, 2e-4, 0, 10);
    CHECK(lf_sched_lr(&s, 0) == 2e-4 && near(lf_sched_lr(&s, 5), 1e-4) && lf_sched_lr(&s, 10) == 0.0,
          "cosine: %.17g %.17g %.17g", lf_sched_lr(&s, 0), lf_sched_lr(&s, 5), lf_sched_lr(&s, 10));
    CHECK(lf_sched_lr(&s, 15) > 0.0, "cosine past the end rises again (as transformers)");
    int mono = 1;
    for (int k = 1; k <= 10; k++) mono &= lf_sched_lr(&s, k) <= lf_sched_lr(&s, k - 1);
    CHECK(mono, "cosine not monotone over [0, T]");
    lf_sched_init(&s, LF_SCHED_CONSTANT, 3e-5, 7, 10);
    CHECK(lf_sched_lr(&s, 0) == 3e-5 && lf_sched_lr(&s, 3) == 3e-5, "constant ignores warmup");
    lf_sched_init(&s, LF_SCHED_CONSTANT_WITH_WARMUP, 1.0, 4, 10);
    CHECK(lf_sched_lr(&s, 0) == 0 && lf_sched_lr(&s, 1) == 0.25 && lf_sched_lr(&s, 4) == 1.0 && lf_sched_lr(&s, 100) == 1.0,
          "constant_with_warmup");
    lf_sched_init(&s, LF_SCHED_COSINE_WITH_RESTARTS, 1.0, 0, 8);
    s.num_cycles = 2;
    CHECK(lf_sched_lr(&s, 0) == 1.0 && near(lf_sched_lr(&s, 4), 1.0) && lf_sched_lr(&s, 8) == 0.0 && near(lf_sched_lr(&s, 2), 0.5),
          "cosine_with_restarts: %.17g %.17g %.17g", lf_sched_lr(&s, 2), lf_sched_lr(&s, 4), lf_sched_lr(&s, 8));
    lf_sched_init(&s, LF_SCHED_POLYNOMIAL, 1e-3, 0, 10);
    CHECK(lf_sched_check(&s, &err) == LF_OK && near(lf_sched_lr(&s, 10), 1e-7) && near(lf_sched_lr(&s, 20), 1e-7) &&
              near(lf_sched_lr(&s, 5), (1e-3 - 1e-7) * 0.5 + 1e-7),
          "polynomial: %.17g", lf_sched_lr(&s, 5));
    lf_sched_init(&s, LF_SCHED_INVERSE_SQRT, 1.0, 4, 100);
    CHECK(lf_sched_lr(&s, 2) == 0.5 && lf_sched_lr(&s, 4) == 1.0 && near(lf_sched_lr(&s, 16), 0.5), "inverse_sqrt: %.17g",
          lf_sched_lr(&s, 16));
    lf_sched_init(&s, LF_SCHED_COSINE_WITH_MIN_LR, 1e-3, 0, 10);
    CHECK(lf_sched_check(&s, &err) == LF_EINVAL && strstr(err.msg, "min_lr"), "min_lr unset: %s", err.msg);
    s.min_lr = 1e-4;
    CHECK(lf_sched_check(&s, &err) == LF_OK && near(lf_sched_lr(&s, 10), 1e-4) && near(lf_sched_lr(&s, 0), 1e-3),
          "cosine_with_min_lr end %.17g", lf_sched_lr(&s, 10));
    s.min_lr_rate = 0.1;
    CHECK(lf_sched_check(&s, &err) == LF_EINVAL, "both min_lr and min_lr_rate");
    lf_sched_init(&s, LF_SCHED_WARMUP_STABLE_DECAY, 1.0, 2, 0);
    s.num_stable_steps = 3, s.num_decay_steps = 4, s.min_lr_ratio = 0.1;
    CHECK(lf_sched_check(&s, &err) == LF_OK && /* transformers 5: warmup from min_lr_ratio */ near(lf_sched_lr(&s, 0), 0.1) &&
              near(lf_sched_lr(&s, 1), 0.55) && lf_sched_lr(&s, 4) == 1.0 &&
              near(lf_sched_lr(&s, 7), 0.55) && lf_sched_lr(&s, 9) == 0.1,
          "wsd: %.17g %.17g", lf_sched_lr(&s, 7), lf_sched_lr(&s, 9));
    /* validation */
    lf_sched_init(&s, LF_SCHED_POLYNOMIAL, 1e-7, 0, 10);
    CHECK(lf_sched_check(&s, &err) == LF_EINVAL && strstr(err.msg, "lr_end"), "poly lr_end: %s", err.msg);
    lf_sched_init(&s, LF_SCHED_POLYNOMIAL, 1e-3, 10, 10);
    CHECK(lf_sched_check(&s, &err) == LF_EINVAL && strstr(err.msg, "no decay steps"), "poly W==T: %s", err.msg);
    lf_sched_init(&s, LF_SCHED_LINEAR, -1.0, 0, 10);
    CHECK(lf_sched_check(&s, &err) == LF_EINVAL && strstr(err.msg, "learning_rate"), "negative lr: %s", err.msg);
    lf_sched_init(&s, LF_SCHED_LINEAR, 1.0, -1, 10);
    CHECK(lf_sched_check(&s, &err) == LF_EINVAL, "negative warmup");
    /* names */
    for (int i = 0; i < LF_SCHED_COUNT; i++) {
        lf_sched_type t;
        CHECK(lf_sched_parse_type(lf_sched_type_name((lf_sched_type)i), &t, &err) == LF_OK && (int)t == i, "name round trip %d", i);
    }
    lf_sched_type t;
    CHECK(lf_sched_parse_type("cosine_warmup", &t, &err) == LF_EINVAL && strstr(err.msg, "cosine_warmup"), "unknown: %s", err.msg);
    CHECK(lf_sched_parse_type("reduce_lr_on_plateau", &t, &err) == LF_EUNSUPPORTED, "plateau unsupported");
    /* warmup resolution: HF's ceil(total * ratio) in f64 */
    CHECK(lf_sched_resolve_warmup(0, 0.07, 100) == 8, "100 * 0.07 = 7.000000000000001 -> 8 (HF), got %" PRId64,
          lf_sched_resolve_warmup(0, 0.07, 100));
    CHECK(lf_sched_resolve_warmup(5, 0.5, 10) == 5 && lf_sched_resolve_warmup(0, 0.0, 100) == 0 &&
              lf_sched_resolve_warmup(0, 0.25, 100) == 25 && lf_sched_resolve_warmup(0, 0.01, 1) == 1 &&
              lf_sched_resolve_warmup(0, NAN, 10) == 0,
          "warmup resolution");
}

/* ============================================================================================ plot */

/* Minimal XML well-formedness: balanced tags, quoted attributes, known entities, one root <svg>. */
static int xml_ok(const char *s, char *why, size_t cap) {
    char stack[64][32];
    int depth = 0, roots = 0;
    const char *p = s;
    while (*p) {
        if (*p == '<') {
            if (!strncmp(p, "<?", 2)) {
                const char *e = strstr(p, "?>");
                if (!e) return snprintf(why, cap, "unterminated <?"), 0;
                p = e + 2;
                continue;
            }
            int closing = p[1] == '/';
            const char *q = p + 1 + closing;
            char name[32];
            int k = 0;
            while (*q && !strchr(" \t\n/>", *q) && k < 31) name[k++] = *q++;
            name[k] = 0;
            if (!k) return snprintf(why, cap, "empty tag name at %ld", (long)(p - s)), 0;
            int self = 0;
            while (*q && *q != '>') {
                if (*q == '"') {
                    const char *e = strchr(q + 1, '"');
                    if (!e) return snprintf(why, cap, "unterminated attribute in <%s>", name), 0;
                    if (memchr(q + 1, '<', (size_t)(e - q - 1))) return snprintf(why, cap, "'<' in attribute of <%s>", name), 0;
                    q = e + 1;
                    continue;
                }
                if (*q == '=' && q[1] != '"') return snprintf(why, cap, "unquoted attribute in <%s>", name), 0;
                if (*q == '/' && q[1] == '>') self = 1;
                q++;
            }
            if (!*q) return snprintf(why, cap, "unterminated <%s", name), 0;
            if (closing) {
                if (!depth || strcmp(stack[depth - 1], name)) return snprintf(why, cap, "</%s> does not close <%s>", name, depth ? stack[depth - 1] : "(none)"), 0;
                depth--;
            } else if (!self) {
                if (depth == 0) roots++;
                if (depth == 64) return snprintf(why, cap, "too deep"), 0;
                snprintf(stack[depth++], 32, "%s", name);
                if (depth == 1 && strcmp(name, "svg")) return snprintf(why, cap, "root is <%s>", name), 0;
            } else if (depth == 0) {
                return snprintf(why, cap, "self-closing root"), 0;
            }
            p = q + 1;
        } else if (*p == '&') {
            if (strncmp(p, "&amp;", 5) && strncmp(p, "&lt;", 4) && strncmp(p, "&gt;", 4) && strncmp(p, "&quot;", 6) &&
                strncmp(p, "&apos;", 6))
                return snprintf(why, cap, "bad entity at %ld", (long)(p - s)), 0;
            p++;
        } else {
            if (depth == 0 && !strchr(" \t\r\n", *p)) return snprintf(why, cap, "text outside the root"), 0;
            p++;
        }
    }
    if (depth) return snprintf(why, cap, "<%s> not closed", stack[depth - 1]), 0;
    if (roots != 1) return snprintf(why, cap, "%d roots", roots), 0;
    return 1;
}

/* number of points in <path class="CLS" ... d="..."> (-1 when absent) */
static int path_points(const char *svg, const char *cls) {
    char key[64];
    snprintf(key, sizeof key, "<path class=\"%s\"", cls);
    const char *p = strstr(svg, key);
    if (!p) return -1;
    const char *d = strstr(p, " d=\"");
    const char *end = d ? strchr(d + 4, '"') : NULL;
    if (!d || !end || d[4] != 'M') return -1;
    int pts = 1;
    for (const char *q = d + 4; q < end; q++) pts += *q == 'L';
    return pts;
}

static int render(const lf_plot_loss_data *d, char **svg) {
    size_t len = 0;
    lf_err err;
    *svg = NULL;
    if (lf_plot_loss_svg_render(d, svg, &len, &err) != LF_OK) {
        printf("render failed: %s\n", err.msg);
        return 0;
    }
    return strlen(*svg) == len;
}

static void check_svg(const char *tag, const lf_plot_loss_data *d, int want_train_pts, int want_eval_pts, int want_log) {
    char *svg = NULL, why[256] = "";
    if (!render(d, &svg)) {
        CHECK(0, "plot %s: render", tag);
        free(svg);
        return;
    }
    CHECK(xml_ok(svg, why, sizeof why), "plot %s: not well-formed: %s", tag, why);
    CHECK(strstr(svg, ">step</text>") != NULL, "plot %s: no x title", tag);
    CHECK(strstr(svg, want_log ? ">loss (log scale)</text>" : ">loss</text>") != NULL, "plot %s: y title (log %d)", tag, want_log);
    CHECK(!strstr(svg, "nan") && !strstr(svg, "inf") && !strstr(svg, "NaN") && !strstr(svg, "-nan"), "plot %s: nan/inf in output", tag);
    int ticks = 0;
    for (const char *q = svg; (q = strstr(q, "text-anchor=\"end\" dy=")); q++) ticks++;
    CHECK(ticks >= 3, "plot %s: %d y tick labels", tag, ticks);
    CHECK(path_points(svg, "original") == (want_train_pts ? want_train_pts : -1) &&
              path_points(svg, "smoothed") == (want_train_pts ? want_train_pts : -1),
          "plot %s: original/smoothed points %d/%d, want %d", tag, path_points(svg, "original"), path_points(svg, "smoothed"),
          want_train_pts);
    CHECK(path_points(svg, "eval") == (want_eval_pts ? want_eval_pts : -1), "plot %s: eval points %d want %d", tag,
          path_points(svg, "eval"), want_eval_pts);
    if (want_train_pts) CHECK(strstr(svg, ">original</text>") && strstr(svg, ">smoothed</text>"), "plot %s: legend", tag);
    if (want_eval_pts) CHECK(strstr(svg, ">eval</text>") != NULL, "plot %s: eval legend", tag);
    if (!want_train_pts && !want_eval_pts) CHECK(strstr(svg, ">no data</text>") != NULL, "plot %s: no-data note", tag);
    if (want_train_pts == 1) CHECK(strstr(svg, "original-marker") != NULL, "plot %s: single point marker", tag);
    free(svg);
}

static void test_plot(void) {
    /* smoothing */
    double x[5] = {4, 4, 4, 4, 4}, y[5];
    lf_plot_smooth(x, y, 5);
    CHECK(y[0] == 4 && y[4] == 4, "smooth of a constant is constant");
    double one = 2.5;
    lf_plot_smooth(&one, &one, 1);
    CHECK(one == 2.5, "smooth of one value");
    double ramp[100], sm[100];
    for (int i = 0; i < 100; i++) ramp[i] = i;
    lf_plot_smooth(ramp, sm, 100);
    double w = 1.8 * (1.0 / (1.0 + exp(-0.05 * 100)) - 0.5);
    CHECK(sm[0] == 0 && fabs(sm[1] - (1 - w)) < 1e-15 && sm[99] < 99 && sm[99] > 80, "smooth ramp: w %.6f sm1 %.6f sm99 %.3f", w,
          sm[1], sm[99]);

    /* series */
    enum { N = 200 };
    int64_t steps[N], esteps[10];
    double loss[N], eloss[10];
    for (int i = 0; i < N; i++) steps[i] = 10 * (i + 1), loss[i] = 2.0 * exp(-i / 60.0) + 0.05 * lf_rng_uniform(&rng);
    for (int i = 0; i < 10; i++) esteps[i] = 200 * (i + 1), eloss[i] = 1.0 + 0.1 * i;
    lf_plot_loss_data d = {.title = "training loss of <out> & \"co\"", .steps = steps, .loss = loss, .n = N, .eval_steps = esteps,
                           .eval_loss = eloss, .n_eval = 10};
    check_svg("train+eval", &d, N, 10, 0);
    char *svg = NULL;
    if (render(&d, &svg)) CHECK(strstr(svg, "training loss of &lt;out&gt; &amp; &quot;co&quot;") != NULL, "title escaped");
    free(svg);
    loss[3] = NAN, loss[50] = INFINITY, loss[51] = -INFINITY, eloss[2] = NAN;
    check_svg("non-finite", &d, N - 3, 9, 0);
    if (render(&d, &svg)) CHECK(strstr(svg, ">4 non-finite values not plotted</text>") != NULL, "skipped note");
    free(svg);
    lf_plot_loss_data empty = {0};
    check_svg("empty", &empty, 0, 0, 0);
    lf_plot_loss_data single = {.steps = steps, .loss = (double[]){1.5}, .n = 1};
    check_svg("single", &single, 1, 0, 0);
    lf_plot_loss_data flat = {.steps = steps, .loss = (double[]){0.7, 0.7, 0.7}, .n = 3};
    check_svg("flat", &flat, 3, 0, 0);
    lf_plot_loss_data zero = {.steps = steps, .loss = (double[]){0, 0}, .n = 2};
    check_svg("zeros", &zero, 2, 0, 0);
    lf_plot_loss_data huge = {.steps = steps, .loss = (double[]){DBL_MAX, -DBL_MAX, 1.0, 1e300}, .n = 4};
    check_svg("huge", &huge, 4, 0, 0);
    lf_plot_loss_data tiny = {.steps = steps, .loss = (double[]){5e-324, 0.0, 1e-320}, .n = 3};
    check_svg("subnormal", &tiny, 3, 0, 0);
    lf_plot_loss_data logs = {.steps = steps, .loss = (double[]){1e6, 1e4, 30, 1, 0.01}, .n = 5};
    check_svg("log", &logs, 5, 0, 1);
    lf_plot_loss_data allbad = {.steps = steps, .loss = (double[]){NAN, INFINITY}, .n = 2};
    check_svg("all-nan", &allbad, 0, 0, 0);
    lf_plot_loss_data evalonly = {.eval_steps = esteps, .eval_loss = (double[]){1, 2, 3}, .n_eval = 3};
    check_svg("eval-only", &evalonly, 0, 3, 0);
    int64_t bigsteps[3] = {INT64_C(1) << 50, (INT64_C(1) << 50) + 1000, (INT64_C(1) << 50) + 2000};
    lf_plot_loss_data bigx = {.steps = bigsteps, .loss = (double[]){3, 2, 1}, .n = 3};
    check_svg("big steps", &bigx, 3, 0, 0);
    /* many points */
    enum { M = 20000 };
    int64_t *ms = malloc(M * sizeof *ms);
    double *ml = malloc(M * sizeof *ml);
    for (int i = 0; i < M; i++) ms[i] = i + 1, ml[i] = 1.0 / sqrt(i + 1.0);
    lf_plot_loss_data many = {.steps = ms, .loss = ml, .n = M};
    check_svg("20000 points", &many, M, 0, 0);
    /* bad input */
    lf_err err;
    size_t len;
    lf_plot_loss_data bad = {.n = 3};
    CHECK(lf_plot_loss_svg_render(&bad, &svg, &len, &err) == LF_EINVAL && svg == NULL, "NULL arrays with n > 0");
    /* atomic write */
    char path[1024];
    path_in(path, sizeof path, "training_loss.svg");
    CHECK(lf_plot_loss_svg(path, &d, &err) == LF_OK, "write: %s", err.msg);
    char *got = NULL, *want = NULL;
    size_t glen = 0;
    CHECK(lf_file_read_all(path, &got, &glen, &err) == LF_OK && render(&d, &want) && strcmp(got, want) == 0, "written file == render");
    free(got), free(want);
    path_in(path, sizeof path, "no/such/dir/training_loss.svg");
    CHECK(lf_plot_loss_svg(path, &d, &err) != LF_OK && strstr(err.msg, "training_loss.svg") && !lf_path_exists(path),
          "write into a missing dir: %s", err.msg);
    free(ms), free(ml);
}

/* ============================================================================================ main */

static void rm_dir(const char *dir) {
    const char *names[] = {"optimizer.safetensors", "ckpt.safetensors", "other.safetensors", "fstep.safetensors",
                           "training_loss.svg"};
    char p[1024];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

int main(void) {
    const char *env = getenv("LF_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    printf("seed %llu\n", (unsigned long long)seed);
    lf_rng_seed(&rng, seed);
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/lf_optim_test.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        printf("0 passed, 1 failed\n");
        return 1;
    }
    pools[0] = NULL;
    pools[1] = lf_pool_create(1);
    pools[2] = lf_pool_create(2);
    pools[3] = lf_pool_create(3);
    test_adamw_threads_vs_ref();
    test_adamw_vs_f64();
    test_adamw_first_step_and_errors();
    test_norm();
    test_clip();
    test_state();
    test_schedules();
    test_plot();
    for (int i = 1; i < 4; i++) lf_pool_destroy(pools[i]);
    rm_dir(g_dir);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
