/* test_backward.c - the CPU backend's training ops (kernels/cpu/cpu_ops.h "training ops"):
 *  (1) every fast entry point, through the backend table, against its scalar _ref on random ragged shapes
 *      (T = 1, GQA H/KH = 1, 3, 4, packed pos vectors with several rows and non-monotone ones, window on and
 *      off, LoRA-rank shapes, K beyond one cache block), in four configurations: 1 and 2 threads x AVX2 and
 *      portable (lf_cpu_set_simd / lf_quant_set_simd). Gradient outputs start from random values, so the
 *      += accumulation is checked too; output buffers carry sentinels past their end (masked AVX stores
 *      are invisible to AddressSanitizer).
 *  (2) every _ref gradient against central finite differences of a small f64 forward written here
 *      (loss = sum(w_rand * forward(x)), h = 1e-6 in double).
 *  (3) the 4-bit ops against dequantize (lf_quant_dequantize_f32_ref) + the f32 op, and error paths.
 * Seed from LF_TEST_SEED or the clock (printed). One line per case; the last line is "N passed, M failed";
 * exit 1 on any failure. Tolerances are written beside each comparison with their reason. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/status.h"
#include "core/tensor.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_ops.h"
#include "quant/quant.h"

#define U 0x1p-24 /* f32 unit roundoff */

/* ---- rng (splitmix64) ---- */

static uint64_t rng_state;

static uint64_t rng_u64(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_unif(float lo, float hi) { return lo + (hi - lo) * (float)((rng_u64() >> 40) * (1.0 / 16777216.0)); }
static int64_t rng_int(int64_t lo, int64_t hi) { return lo + (int64_t)(rng_u64() % (uint64_t)(hi - lo + 1)); }

static void fill(float *x, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) x[i] = rng_unif(lo, hi);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "test_backward: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static float *falloc(int64_t n) { return xmalloc((size_t)n * sizeof(float)); }
static double *dalloc0(int64_t n) { return calloc((size_t)(n ? n : 1), sizeof(double)); }

static float *frand(int64_t n, float lo, float hi) {
    float *p = falloc(n);
    fill(p, n, lo, hi);
    return p;
}

#define GUARD 16
#define SENTINEL 1234.5f

/* n floats + GUARD sentinels, the first n copied from init (or NaN when init is NULL). */
static float *alloc_out(int64_t n, const float *init) {
    float *p = falloc(n + GUARD);
    for (int64_t i = 0; i < n; i++) p[i] = init ? init[i] : NAN;
    for (int i = 0; i < GUARD; i++) p[n + i] = SENTINEL;
    return p;
}

static int guard_ok(const float *p, int64_t n) {
    for (int i = 0; i < GUARD; i++)
        if (p[n + i] != SENTINEL) return 0;
    return 1;
}

/* ---- configurations ---- */

typedef struct {
    const char *name;
    int threads, simd;
    lf_backend *be;
} config;

#define NCFG 4
static config cfgs[NCFG] = {
    {"1t-avx2", 1, 1, NULL}, {"2t-avx2", 2, 1, NULL}, {"1t-port", 1, 0, NULL}, {"2t-port", 2, 0, NULL}};

static lf_backend *use_cfg(int ci) {
    lf_cpu_set_simd(cfgs[ci].simd);
    lf_quant_set_simd(cfgs[ci].simd);
    return cfgs[ci].be;
}

/* ---- comparison and reporting ---- */

static int n_pass, n_fail;

/* Worst err/tol over n elements, tol = tol_each[i] (or tol_abs) + tol_rel*|ref|; INFINITY on a NaN mismatch. */
static double worst_ratio(const float *got, const float *ref, int64_t n, const double *tol_each, double tol_abs,
                          double tol_rel) {
    double worst = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(got[i]) || isnan(ref[i])) {
            if (!(isnan(got[i]) && isnan(ref[i]))) return INFINITY;
            continue;
        }
        double err = fabs((double)got[i] - (double)ref[i]);
        if (isinf(got[i]) || isinf(ref[i])) err = got[i] == ref[i] ? 0.0 : INFINITY;
        double tol = (tol_each ? tol_each[i] : tol_abs) + tol_rel * fabs((double)ref[i]);
        double r = err == 0.0 ? 0.0 : (tol > 0.0 ? err / tol : INFINITY);
        if (r > worst) worst = r;
    }
    return worst;
}

typedef struct {
    double ratio[NCFG];
    int status_bad[NCFG];
    char msg[NCFG][160];
} case_res;

static void case_record(case_res *c, int ci, lf_status st, double ratio) {
    c->status_bad[ci] = st != LF_OK;
    c->ratio[ci] = ratio;
    snprintf(c->msg[ci], sizeof c->msg[ci], "%.150s", st != LF_OK ? cfgs[ci].be->err.msg : "");
}

static void case_finish(const case_res *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void case_finish(const case_res *c, const char *fmt, ...) {
    char desc[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(desc, sizeof desc, fmt, ap);
    va_end(ap);
    int ok_all = 1;
    for (int ci = 0; ci < NCFG; ci++) {
        int ok = !c->status_bad[ci] && c->ratio[ci] <= 1.0;
        ok_all &= ok;
        if (ok)
            n_pass++;
        else
            n_fail++;
    }
    printf("%s %s  err/tol:", ok_all ? "PASS" : "FAIL", desc);
    for (int ci = 0; ci < NCFG; ci++) {
        if (c->status_bad[ci])
            printf(" %s=status-error(%s)", cfgs[ci].name, c->msg[ci]);
        else
            printf(" %s=%.3g", cfgs[ci].name, c->ratio[ci]);
    }
    printf("\n");
}

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
    char desc[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(desc, sizeof desc, fmt, ap);
    va_end(ap);
    printf("%s %s\n", ok ? "PASS" : "FAIL", desc);
    if (ok)
        n_pass++;
    else
        n_fail++;
}

/* Roundoff of the finite differences so far: 2^-52 (|loss(x+h)| + |loss(x-h)|) / (2h), maxed over the
 * elements, times 16 for the rounding inside the loss's own sums. An absolute floor for gradients that are tiny
 * next to the loss (rmsnorm with C = 1, where dy/dx ~ eps / |x|^3). Reset by each FD test. */
static double fd_noise;

/* Worst |got - fd| / (tol_rel * (|fd| + rms(fd)) + fd_noise) over n elements (finite differences). */
static double fd_ratio(const float *got, const double *fd, int64_t n, double tol_rel) {
    double ss = 0.0, worst = 0.0;
    for (int64_t i = 0; i < n; i++) ss += fd[i] * fd[i];
    const double rms = n ? sqrt(ss / (double)n) : 0.0;
    for (int64_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - fd[i]), tol = tol_rel * (fabs(fd[i]) + rms) + fd_noise + 1e-300;
        if (isnan(got[i]) || err / tol > worst) worst = isnan(got[i]) ? INFINITY : err / tol;
    }
    return worst;
}

/* Central difference of loss(ctx) in x[i], i < n; x is restored. h = 1e-6 in double: truncation error
 * h^2 |f'''| / 6 ~ 1e-13, rounding ~ 1e-16 |loss| / h ~ 1e-10 |loss| (kept in fd_noise). */
typedef double (*loss_fn)(void *ctx);
static void fd_grad(double *g, double *x, int64_t n, loss_fn f, void *ctx) {
    const double h = 1e-6;
    for (int64_t i = 0; i < n; i++) {
        const double x0 = x[i];
        x[i] = x0 + h;
        const double lp = f(ctx);
        x[i] = x0 - h;
        const double lm = f(ctx);
        x[i] = x0;
        g[i] = (lp - lm) / (2.0 * h);
        fd_noise = fmax(fd_noise, 16.0 * 0x1p-52 * (fabs(lp) + fabs(lm)) / (2.0 * h));
    }
}

static double *to_f64(const float *x, int64_t n) {
    double *d = xmalloc((size_t)(n ? n : 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

/* FD tolerance (relative to |fd| + rms(fd)) for refs whose only f32 step is the final rounding of the output
 * (2^-24 relative) and whose FD roundoff is ~1e-10 |loss| (loss ~ 1..100): 1e-6 leaves > 10x margin. */
#define FD_TOL 1e-6
/* Attention's backward reads out and lse rounded to f32: P = exp(s - lse) moves by |lse| 2^-24 relative
 * (|lse| <= ~5 here) and D = dout . out by 2^-24 relative, so its gradients are good to ~1e-6: 1e-5. */
#define FD_TOL_ATT 1e-5

/* ==== matmul_backward (and the 4-bit backward against it) ==== */

static void *make_weights(lf_dtype dt, int64_t n, float lo, float hi) {
    if (dt == LF_DTYPE_F32) return frand(n, lo, hi);
    uint16_t *w = xmalloc((size_t)n * 2);
    for (int64_t i = 0; i < n; i++) {
        float v = rng_unif(lo, hi);
        w[i] = dt == LF_DTYPE_BF16 ? lf_f32_to_bf16(v) : lf_f32_to_f16(v);
    }
    return w;
}

static float wval(const void *w, lf_dtype dt, int64_t i) {
    if (dt == LF_DTYPE_BF16) return lf_bf16_to_f32(((const uint16_t *)w)[i]);
    if (dt == LF_DTYPE_F16) return lf_f16_to_f32(((const uint16_t *)w)[i]);
    return ((const float *)w)[i];
}

/* Tolerances of dinp/dweight: each element gains a sum of K f32 products added to its old value; recursive
 * summation of K+1 terms is within (K+1) 2^-24 sum|terms| of exact (Higham 4.2), +1 for the ref's rounding. */
static void mm_tols(double *tin, double *tw, const float *dinp0, const float *dw0, const float *dout, const float *inp,
                    const void *w, lf_dtype dt, int64_t T, int64_t C, int64_t OC) {
    for (int64_t t = 0; tin && t < T; t++)
        for (int64_t c = 0; c < C; c++) {
            double a = fabs(dinp0[t * C + c]);
            for (int64_t o = 0; o < OC; o++) a += fabs((double)dout[t * OC + o] * wval(w, dt, o * C + c));
            tin[t * C + c] = (double)(OC + 2) * U * a + 1e-30;
        }
    for (int64_t o = 0; tw && o < OC; o++)
        for (int64_t c = 0; c < C; c++) {
            double a = fabs(dw0[o * C + c]);
            for (int64_t t = 0; t < T; t++) a += fabs((double)dout[t * OC + o] * inp[t * C + c]);
            tw[o * C + c] = (double)(T + 2) * U * a + 1e-30;
        }
}

static void test_matmul_backward_case(lf_dtype dt, int64_t T, int64_t C, int64_t OC, int want_in, int want_w) {
    float *dout = frand(T * OC, -1, 1), *inp = frand(T * C, -1, 1);
    float *din0 = frand(T * C, -1, 1), *dw0 = frand(OC * C, -1, 1);
    void *wd = make_weights(dt, OC * C, -1, 1);
    lf_tensor w = lf_tensor_view(wd, dt, 2, (int64_t[]){OC, C});
    float *rin = alloc_out(T * C, din0), *rw = alloc_out(OC * C, dw0);
    double *tin = dalloc0(T * C), *tw = dalloc0(OC * C);
    lf_err err;
    lf_err_clear(&err);
    lf_status st = lf_cpu_matmul_backward_ref(want_in ? rin : NULL, want_w ? rw : NULL, dout, inp, &w, T, C, OC, &err);
    mm_tols(tin, tw, din0, dw0, dout, inp, wd, dt, T, C, OC);
    case_res cr;
    for (int ci = 0; ci < NCFG; ci++) {
        lf_backend *be = use_cfg(ci);
        float *gin = alloc_out(T * C, din0), *gw = alloc_out(OC * C, dw0);
        lf_status s = st != LF_OK ? st
                                  : be->ops->matmul_backward(be, want_in ? gin : NULL, want_w ? gw : NULL, dout, inp,
                                                             &w, T, C, OC);
        double r = worst_ratio(gin, rin, T * C, tin, 0, 0);
        double r2 = worst_ratio(gw, rw, OC * C, tw, 0, 0);
        if (r2 > r) r = r2;
        if (!guard_ok(gin, T * C) || !guard_ok(gw, OC * C)) r = INFINITY;
        case_record(&cr, ci, s, r);
        free(gin), free(gw);
    }
    case_finish(&cr, "matmul_backward %s T=%lld C=%lld OC=%lld%s%s", lf_dtype_name(dt), (long long)T, (long long)C,
                (long long)OC, want_in ? " dinp" : "", want_w ? " dweight" : "");
    free(dout), free(inp), free(din0), free(dw0), free(wd), free(rin), free(rw), free(tin), free(tw);
}

static void test_matmul_backward(void) {
    const lf_dtype dts[] = {LF_DTYPE_F32, LF_DTYPE_BF16, LF_DTYPE_F16};
    /* ragged sizes, T = 1, LoRA shapes (OC or C = rank 8/16), K = OC or T beyond one 256 block, several tiles */
    const int64_t shapes[][3] = {{1, 1, 1},       {1, 7, 5},      {3, 16, 8},   {7, 13, 17},
                                 {17, 64, 64},    {50, 33, 70},   {64, 200, 8}, {64, 16, 200},
                                 {130, 300, 270}, {270, 70, 300}, {5, 1000, 3}, {300, 19, 17}};
    for (int d = 0; d < 3; d++)
        for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
            test_matmul_backward_case(dts[d], shapes[i][0], shapes[i][1], shapes[i][2], 1, 1);
    test_matmul_backward_case(LF_DTYPE_BF16, 40, 37, 29, 1, 0);
    test_matmul_backward_case(LF_DTYPE_F32, 40, 37, 29, 0, 1);

    /* error paths */
    lf_backend *be = use_cfg(0);
    float x[12] = {0}, y[12] = {0}, z[12] = {0};
    int32_t wi[6] = {0};
    lf_tensor w32 = lf_tensor_view(wi, LF_DTYPE_I32, 2, (int64_t[]){2, 3});
    lf_status st = be->ops->matmul_backward(be, y, NULL, x, x, &w32, 2, 3, 2);
    check(st == LF_EUNSUPPORTED && strstr(be->err.msg, "I32"), "matmul_backward I32 weight -> LF_EUNSUPPORTED (%s)",
          be->err.msg);
    lf_tensor wbad = lf_tensor_view(z, LF_DTYPE_F32, 2, (int64_t[]){3, 2});
    st = be->ops->matmul_backward(be, y, NULL, x, x, &wbad, 2, 3, 2);
    check(st == LF_EINVAL, "matmul_backward weight [3,2] for OC=2 C=3 -> LF_EINVAL (%s)", be->err.msg);
    lf_tensor wok = lf_tensor_view(z, LF_DTYPE_F32, 2, (int64_t[]){2, 3});
    st = be->ops->matmul_backward(be, x, NULL, x, y, &wok, 2, 3, 2);
    check(st == LF_EINVAL, "matmul_backward dinp aliasing dout -> LF_EINVAL (%s)", be->err.msg);
    st = be->ops->matmul_backward(be, NULL, y, x, y, &wok, 2, 3, 2);
    check(st == LF_EINVAL, "matmul_backward dweight aliasing inp -> LF_EINVAL (%s)", be->err.msg);
    st = be->ops->matmul_backward(be, y, NULL, x, x, NULL, 2, 3, 2);
    check(st == LF_EINVAL, "matmul_backward NULL weight with dinp -> LF_EINVAL (%s)", be->err.msg);
}

/* ---- 4-bit ---- */

static void test_q4_case(int64_t T, int64_t C, int64_t OC, int64_t B, lf_quant_type type, int nested) {
    float *wf = falloc(OC * C);
    for (int64_t i = 0; i < OC * C; i++) wf[i] = rng_unif(-0.1f, 0.1f);
    lf_quant_state qs;
    lf_err err;
    lf_err_clear(&err);
    if (lf_quant_quantize(&qs, wf, LF_DTYPE_F32, OC, C, B, type, nested, &err) != LF_OK) {
        check(0, "quantize [%lld,%lld] B=%lld: %s", (long long)OC, (long long)C, (long long)B, err.msg);
        free(wf);
        return;
    }
    float *deq = falloc(OC * C);
    lf_quant_dequantize_f32_ref(deq, &qs, &err);
    lf_tensor wt = lf_tensor_view(deq, LF_DTYPE_F32, 2, (int64_t[]){OC, C});
    float *dout = frand(T * OC, -1, 1), *din0 = frand(T * C, -1, 1), *inp = frand(T * C, -1, 1),
          *bias = frand(OC, -1, 1);

    /* backward: the q4 ref and the f32 ref on the dequantized weight both sum the same products in double in
     * the same order and round once: identical results (tol 0). */
    float *rq = alloc_out(T * C, din0), *rf = alloc_out(T * C, din0);
    lf_status s1 = lf_cpu_matmul_q4_backward_ref(rq, dout, &qs, T, C, OC, &err);
    lf_status s2 = lf_cpu_matmul_backward_ref(rf, NULL, dout, NULL, &wt, T, C, OC, &err);
    check(s1 == LF_OK && s2 == LF_OK && worst_ratio(rq, rf, T * C, NULL, 0, 0) <= 1.0,
          "matmul_q4_backward_ref == dequantize + matmul_backward_ref (%s B=%lld nested=%d T=%lld C=%lld OC=%lld)",
          lf_quant_type_name(type), (long long)B, nested, (long long)T, (long long)C, (long long)OC);
    double *tin = dalloc0(T * C);
    mm_tols(tin, NULL, din0, NULL, dout, NULL, deq, LF_DTYPE_F32, T, C, OC);
    case_res cr;
    for (int ci = 0; ci < NCFG; ci++) {
        lf_backend *be = use_cfg(ci);
        float *g = alloc_out(T * C, din0);
        lf_status s = be->ops->matmul_q4_backward(be, g, dout, &qs, T, C, OC);
        double r = worst_ratio(g, rf, T * C, tin, 0, 0);
        if (!guard_ok(g, T * C)) r = INFINITY;
        case_record(&cr, ci, s, r);
        free(g);
    }
    case_finish(&cr, "matmul_q4_backward %s B=%lld nested=%d T=%lld C=%lld OC=%lld", lf_quant_type_name(type),
                (long long)B, nested, (long long)T, (long long)C, (long long)OC);

    /* forward through the backend: vs the double matmul ref on the dequantized weight; f32 sums of C products
     * plus the bias in another order: (C+2) 2^-24 (sum|x w| + |bias|). */
    float *of = alloc_out(T * OC, NULL), *oref = falloc(T * OC);
    double *to = dalloc0(T * OC);
    lf_cpu_matmul_forward_ref(oref, inp, &wt, bias, T, C, OC, &err);
    for (int64_t t = 0; t < T; t++)
        for (int64_t o = 0; o < OC; o++) {
            double a = fabs(bias[o]);
            for (int64_t c = 0; c < C; c++) a += fabs((double)inp[t * C + c] * deq[o * C + c]);
            to[t * OC + o] = (double)(C + 2) * U * a + 1e-30;
        }
    for (int ci = 0; ci < NCFG; ci++) {
        lf_backend *be = use_cfg(ci);
        for (int64_t i = 0; i < T * OC; i++) of[i] = NAN;
        lf_status s = be->ops->matmul_q4_forward(be, lf_f32(of), lf_f32(inp), &qs, bias, T, C, OC);
        double r = worst_ratio(of, oref, T * OC, to, 0, 0);
        if (!guard_ok(of, T * OC)) r = INFINITY;
        case_record(&cr, ci, s, r);
    }
    case_finish(&cr, "matmul_q4_forward %s B=%lld nested=%d T=%lld C=%lld OC=%lld", lf_quant_type_name(type),
                (long long)B, nested, (long long)T, (long long)C, (long long)OC);
    lf_quant_state_free(&qs);
    free(wf), free(deq), free(dout), free(din0), free(inp), free(bias), free(rq), free(rf), free(tin), free(of),
        free(oref), free(to);
}

static void test_q4(void) {
    const int64_t shapes[][4] = {{1, 64, 5, 64},    {7, 100, 9, 32},  {33, 130, 70, 64}, {250, 64, 130, 64},
                                 {13, 200, 3, 128}, {2, 2049, 5, 32}, {20, 16, 300, 64}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        test_q4_case(shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3], i % 2 ? LF_QUANT_FP4 : LF_QUANT_NF4,
                     (int)(i % 3 == 0));
    lf_backend *be = use_cfg(0);
    float w[64 * 2], x[64 * 2] = {0}, y[64 * 2] = {0};
    fill(w, 128, -1, 1);
    lf_quant_state qs;
    lf_err err;
    if (lf_quant_quantize(&qs, w, LF_DTYPE_F32, 2, 64, 64, LF_QUANT_NF4, 0, &err) == LF_OK) {
        lf_status st = be->ops->matmul_q4_backward(be, y, x, &qs, 1, 64, 3);
        check(st == LF_EINVAL, "matmul_q4_backward OC=3 for a [2,64] weight -> LF_EINVAL (%s)", be->err.msg);
        st = be->ops->matmul_q4_forward(be, lf_f32(y), lf_f32(x), &qs, NULL, 1, 32, 2);
        check(st == LF_EINVAL, "matmul_q4_forward C=32 for a [2,64] weight -> LF_EINVAL (%s)", be->err.msg);
        lf_quant_state_free(&qs);
    }
}

/* FD: loss = sum(wr * (inp @ W^T)), gradients wrt inp and W (F32 and BF16 weights). */
typedef struct {
    const double *inp, *w, *wr;
    int64_t T, C, OC;
} mm_fd;

static double mm_loss(void *vctx) {
    const mm_fd *m = vctx;
    double L = 0.0;
    for (int64_t t = 0; t < m->T; t++)
        for (int64_t o = 0; o < m->OC; o++) {
            double s = 0.0;
            for (int64_t c = 0; c < m->C; c++) s += m->inp[t * m->C + c] * m->w[o * m->C + c];
            L += m->wr[t * m->OC + o] * s;
        }
    return L;
}

static void test_matmul_backward_fd(lf_dtype dt, int64_t T, int64_t C, int64_t OC) {
    fd_noise = 0.0;
    float *inp = frand(T * C, -1, 1), *dout = frand(T * OC, -1, 1), *wf = falloc(OC * C);
    void *wd = make_weights(dt, OC * C, -1, 1);
    for (int64_t i = 0; i < OC * C; i++) wf[i] = wval(wd, dt, i);
    lf_tensor w = lf_tensor_view(wd, dt, 2, (int64_t[]){OC, C});
    float *din = alloc_out(T * C, NULL), *dw = alloc_out(OC * C, NULL);
    memset(din, 0, (size_t)(T * C) * 4), memset(dw, 0, (size_t)(OC * C) * 4);
    lf_err err;
    lf_status st = lf_cpu_matmul_backward_ref(din, dw, dout, inp, &w, T, C, OC, &err);
    double *xi = to_f64(inp, T * C), *xw = to_f64(wf, OC * C), *xr = to_f64(dout, T * OC);
    double *gi = dalloc0(T * C), *gw = dalloc0(OC * C);
    mm_fd ctx = {xi, xw, xr, T, C, OC};
    fd_grad(gi, xi, T * C, mm_loss, &ctx);
    fd_grad(gw, xw, OC * C, mm_loss, &ctx);
    double r = fmax(fd_ratio(din, gi, T * C, FD_TOL), fd_ratio(dw, gw, OC * C, FD_TOL));
    check(st == LF_OK && r <= 1.0, "fd matmul_backward_ref %s T=%lld C=%lld OC=%lld  err/tol=%.3g", lf_dtype_name(dt),
          (long long)T, (long long)C, (long long)OC, r);
    free(inp), free(dout), free(wf), free(wd), free(din), free(dw), free(xi), free(xw), free(xr), free(gi), free(gw);
}

/* ==== rmsnorm_backward ==== */

static void test_rmsnorm_backward(void) {
    const int64_t shapes[][2] = {{1, 1}, {1, 7}, {3, 64}, {5, 129}, {17, 1000}, {2, 4099}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const int64_t T = shapes[i][0], C = shapes[i][1];
        const float eps = i % 2 ? 1e-5f : 1e-6f;
        float *x = frand(T * C, -2, 2), *dy = frand(T * C, -1, 1), *w = frand(C, 0.5f, 1.5f), *d0 = frand(T * C, -1, 1);
        float *ref = alloc_out(T * C, d0);
        lf_cpu_rmsnorm_backward_ref(ref, dy, x, w, T, C, eps);
        /* The fast path sums x^2 and (w dy x) in f32 (C terms each: (C+2) 2^-24 relative to the sum of |terms|),
         * which moves r by ~(C/2+2) u relative and coef by ~(C+4) u; then ~5 f32 roundings per element. Per
         * element: tol = (C + 16) u (|old| + r |w dy| + |x| r^3 sum|w dy x| / C). */
        double *tol = dalloc0(T * C);
        for (int64_t t = 0; t < T; t++) {
            double ss = 0, sa = 0;
            for (int64_t c = 0; c < C; c++) {
                ss += (double)x[t * C + c] * x[t * C + c];
                sa += fabs((double)w[c] * dy[t * C + c] * x[t * C + c]);
            }
            double r = 1.0 / sqrt(ss / (double)C + eps);
            for (int64_t c = 0; c < C; c++)
                tol[t * C + c] = (double)(C + 16) * U *
                                 (fabs(d0[t * C + c]) + r * fabs((double)w[c] * dy[t * C + c]) +
                                  fabs(x[t * C + c]) * r * r * r * sa / (double)C);
        }
        case_res cr;
        for (int ci = 0; ci < NCFG; ci++) {
            lf_backend *be = use_cfg(ci);
            float *g = alloc_out(T * C, d0);
            lf_status s = be->ops->rmsnorm_backward(be, g, dy, x, w, T, C, eps);
            double rr = worst_ratio(g, ref, T * C, tol, 0, 0);
            if (!guard_ok(g, T * C)) rr = INFINITY;
            case_record(&cr, ci, s, rr);
            free(g);
        }
        case_finish(&cr, "rmsnorm_backward T=%lld C=%lld eps=%g", (long long)T, (long long)C, eps);
        free(x), free(dy), free(w), free(d0), free(ref), free(tol);
    }
    lf_backend *be = use_cfg(0);
    float a[2] = {0};
    check(be->ops->rmsnorm_backward(be, a, a, a, a, 1, 0, 1e-5f) == LF_EINVAL, "rmsnorm_backward C=0 -> LF_EINVAL (%s)",
          be->err.msg);
}

typedef struct {
    const double *x, *w, *wr;
    int64_t T, C;
    double eps;
} rms_fd;

static double rms_loss(void *vctx) {
    const rms_fd *m = vctx;
    double L = 0.0;
    for (int64_t t = 0; t < m->T; t++) {
        double ss = 0.0;
        for (int64_t c = 0; c < m->C; c++) ss += m->x[t * m->C + c] * m->x[t * m->C + c];
        const double r = 1.0 / sqrt(ss / (double)m->C + m->eps);
        for (int64_t c = 0; c < m->C; c++) L += m->wr[t * m->C + c] * m->w[c] * m->x[t * m->C + c] * r;
    }
    return L;
}

static void test_rmsnorm_backward_fd(int64_t T, int64_t C) {
    fd_noise = 0.0;
    const float eps = 1e-5f;
    float *x = frand(T * C, -2, 2), *dy = frand(T * C, -1, 1), *w = frand(C, 0.5f, 1.5f), *g = falloc(T * C);
    memset(g, 0, (size_t)(T * C) * 4);
    lf_cpu_rmsnorm_backward_ref(g, dy, x, w, T, C, eps);
    double *xd = to_f64(x, T * C), *wd = to_f64(w, C), *rd = to_f64(dy, T * C), *fd = dalloc0(T * C);
    rms_fd ctx = {xd, wd, rd, T, C, (double)eps};
    fd_grad(fd, xd, T * C, rms_loss, &ctx);
    double r = fd_ratio(g, fd, T * C, FD_TOL);
    check(r <= 1.0, "fd rmsnorm_backward_ref T=%lld C=%lld  err/tol=%.3g", (long long)T, (long long)C, r);
    free(x), free(dy), free(w), free(g), free(xd), free(wd), free(rd), free(fd);
}

/* ==== rope_backward ==== */

static void make_inv_freq(float *inv, int64_t D) {
    for (int64_t i = 0; i < D / 2; i++) inv[i] = (float)(1.0 / pow(10000.0, (double)(2 * i) / (double)D));
}

static void test_rope_backward(void) {
    const int64_t shapes[][3] = {{1, 1, 2}, {3, 2, 8}, {5, 4, 18}, {17, 3, 64}, {9, 2, 128}, {2, 1, 512}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const int64_t T = shapes[i][0], NH = shapes[i][1], D = shapes[i][2], N = T * NH * D;
        int32_t *pos = xmalloc((size_t)T * 4);
        for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)rng_int(0, 5000);
        float inv[LF_CPU_MAX_HEAD_DIM / 2];
        make_inv_freq(inv, D);
        float *dy = frand(N, -1, 1), *ref = alloc_out(N, dy);
        lf_cpu_rope_backward_ref(ref, pos, inv, T, NH, D);
        /* same cosf/sinf and the same mul, mul, add per output: identical but for a possible FMA contraction,
         * which moves a result by at most an ulp of each product: tol = 2 u (|dy[i]| + |dy[i+D/2]|). */
        double *tol = dalloc0(N);
        for (int64_t r = 0; r < T * NH; r++)
            for (int64_t k = 0; k < D / 2; k++) {
                double m = fabs(dy[r * D + k]) + fabs(dy[r * D + k + D / 2]);
                tol[r * D + k] = tol[r * D + k + D / 2] = 2 * U * m + 1e-30;
            }
        case_res cr;
        for (int ci = 0; ci < NCFG; ci++) {
            lf_backend *be = use_cfg(ci);
            float *g = alloc_out(N, dy);
            lf_status s = be->ops->rope_backward(be, g, pos, inv, T, NH, D);
            double rr = worst_ratio(g, ref, N, tol, 0, 0);
            if (!guard_ok(g, N)) rr = INFINITY;
            case_record(&cr, ci, s, rr);
            free(g);
        }
        case_finish(&cr, "rope_backward T=%lld NH=%lld D=%lld", (long long)T, (long long)NH, (long long)D);
        free(pos), free(dy), free(ref), free(tol);
    }
    lf_backend *be = use_cfg(0);
    float a[8] = {0}, inv[4] = {1, 1, 1, 1};
    int32_t p[1] = {0};
    check(be->ops->rope_backward(be, a, p, inv, 1, 1, 7) == LF_EINVAL, "rope_backward odd D -> LF_EINVAL (%s)",
          be->err.msg);
}

typedef struct {
    const double *x, *wr;
    const int32_t *pos;
    const float *inv;
    int64_t T, NH, D;
} rope_fd;

static double rope_loss(void *vctx) {
    const rope_fd *m = vctx;
    const int64_t half = m->D / 2;
    double L = 0.0;
    for (int64_t t = 0; t < m->T; t++)
        for (int64_t h = 0; h < m->NH; h++)
            for (int64_t i = 0; i < half; i++) {
                const int64_t b = (t * m->NH + h) * m->D;
                const double a = (double)((float)m->pos[t] * m->inv[i]); /* the forward's f32 angle */
                const double x0 = m->x[b + i], x1 = m->x[b + i + half];
                L += m->wr[b + i] * (x0 * cos(a) - x1 * sin(a)) + m->wr[b + i + half] * (x1 * cos(a) + x0 * sin(a));
            }
    return L;
}

static void test_rope_backward_fd(void) {
    fd_noise = 0.0;
    const int64_t T = 4, NH = 3, D = 10, N = T * NH * D;
    int32_t pos[4] = {0, 1, 7, 300};
    float inv[5];
    make_inv_freq(inv, D);
    float *x = frand(N, -1, 1), *dy = frand(N, -1, 1), *g = falloc(N);
    memcpy(g, dy, (size_t)N * 4);
    lf_cpu_rope_backward_ref(g, pos, inv, T, NH, D);
    double *xd = to_f64(x, N), *rd = to_f64(dy, N), *fd = dalloc0(N);
    rope_fd ctx = {xd, rd, pos, inv, T, NH, D};
    fd_grad(fd, xd, N, rope_loss, &ctx);
    /* the ref uses cosf/sinf (within an ulp of cos/sin of the same f32 angle) and f32 products: ~3 u relative */
    double r = fd_ratio(g, fd, N, FD_TOL);
    check(r <= 1.0, "fd rope_backward_ref T=%lld NH=%lld D=%lld  err/tol=%.3g", (long long)T, (long long)NH,
          (long long)D, r);
    free(x), free(dy), free(g), free(xd), free(rd), free(fd);
}

/* ==== attention ==== */

/* pos kinds: 0 one row (pos = t); 1 packed rows of random lengths; 2 general (pos[t] uniform in [0, t], so row
 * starts t - pos[t] do not increase monotonically: the backward's non-packed fallback). */
static void make_pos(int32_t *pos, int64_t T, int kind) {
    int64_t p = 0, len = 0;
    for (int64_t t = 0; t < T; t++) {
        if (kind == 0) {
            pos[t] = (int32_t)t;
        } else if (kind == 1) {
            if (p >= len) p = 0, len = rng_int(1, T / 3 + 1);
            pos[t] = (int32_t)p++;
        } else {
            pos[t] = (int32_t)rng_int(0, t);
        }
    }
}

static int64_t lo_of(const int32_t *pos, int64_t t, int64_t window) {
    int64_t lo = t - pos[t];
    if (window > 0 && t - window + 1 > lo) lo = t - window + 1;
    return lo;
}

/* Error bounds of the f32 fast paths, built from the magnitudes each rounding is relative to:
 *   sa_j = scale sum_d |q_d k_jd| bounds the f32 score error by (D+2) u sa_j, which moves P_j = exp(s_j - .)
 *   by a relative (D+2) u sa_j; exp8/expf adds ~3 u. n = T * group bounds the terms of any sum, F = (D+n+16) u.
 *   forward: out = sum_j P_j v_j / l: tol = F sum_j P_j (1 + sa_j) (|v_jd| + |out_d|);
 *            lse = m + log(l): tol = F (1 + max_j sa_j) + u |lse|.
 *   backward: dS_j = P_j (dP_j - Dt) with f32 dots dP, Dt: its error is within
 *            c_j = (D + 16) u P_j ((1 + sa_j) (|dP_j| + |Dt|) + sum|dout v_j| + sum|dout out|); the sums over
 *            n terms add F |term|: tol(dq) = sum_j scale |k_jd| (c_j + F P_j (|dP_j| + |Dt|)) + 2 u |old|,
 *            dk likewise with |q_d|, tol(dv) = F sum P_j (1 + sa_j) |dout_d| + 2 u |old| (the fast path and
 *            the ref each round old + sum once). */
typedef struct {
    const float *q, *k, *v, *out, *lse, *dout;
    const int32_t *pos;
    int64_t T, H, KH, D, window;
    float scale;
} att_case;

static void att_tols(const att_case *a, double *tout, double *tlse, double *tq, double *tk, double *tv,
                     const float *dq0, const float *dk0, const float *dv0) {
    const int64_t T = a->T, H = a->H, KH = a->KH, D = a->D, group = H / KH;
    const double n = (double)(T * group), f = (double)(D + 16) * U, F = ((double)D + n + 16) * U;
    double *mq = dalloc0(T * H * D), *mk = dalloc0(T * KH * D), *mv = dalloc0(T * KH * D), *mo = dalloc0(T * H * D);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            const int64_t g = h / group, it = t * H + h;
            const float *qv = a->q + it * D, *ov = a->out + it * D, *dov = a->dout + it * D;
            double dt = 0, adt = 0, samax = 0;
            for (int64_t d = 0; d < D; d++) dt += (double)dov[d] * ov[d], adt += fabs((double)dov[d] * ov[d]);
            for (int64_t j = lo_of(a->pos, t, a->window); j <= t; j++) {
                const float *kv = a->k + (j * KH + g) * D, *vv = a->v + (j * KH + g) * D;
                double s = 0, sa = 0, dp = 0, adp = 0;
                for (int64_t d = 0; d < D; d++) {
                    s += (double)qv[d] * kv[d], sa += fabs((double)qv[d] * kv[d]);
                    dp += (double)dov[d] * vv[d], adp += fabs((double)dov[d] * vv[d]);
                }
                s *= a->scale, sa *= a->scale;
                if (sa > samax) samax = sa;
                const double p = exp(s - (double)a->lse[it]);
                const double c = f * p * ((1 + sa) * (fabs(dp) + fabs(dt)) + adp + adt) + F * p * (fabs(dp) + fabs(dt));
                for (int64_t d = 0; d < D; d++) {
                    mo[it * D + d] += F * p * (1 + sa) * (fabs(vv[d]) + fabs(ov[d]));
                    mq[it * D + d] += a->scale * c * fabs(kv[d]);
                    mk[(j * KH + g) * D + d] += a->scale * c * fabs(qv[d]);
                    mv[(j * KH + g) * D + d] += F * p * (1 + sa) * fabs(dov[d]);
                }
            }
            tlse[it] = F * (1 + samax) + U * fabs(a->lse[it]);
        }
    for (int64_t i = 0; i < T * H * D; i++) {
        tout[i] = mo[i] + 1e-30;
        tq[i] = mq[i] + 2 * U * fabs(dq0[i]) + 1e-30;
    }
    for (int64_t i = 0; i < T * KH * D; i++) {
        tk[i] = mk[i] + 2 * U * fabs(dk0[i]) + 1e-30;
        tv[i] = mv[i] + 2 * U * fabs(dv0[i]) + 1e-30;
    }
    free(mq), free(mk), free(mv), free(mo);
}

static void test_attention_case(int64_t T, int64_t H, int64_t KH, int64_t D, int pos_kind, int64_t window, int which) {
    const int64_t NQ = T * H * D, NK = T * KH * D;
    const float scale = (float)(1.0 / sqrt((double)D));
    float *q = frand(NQ, -2, 2), *k = frand(NK, -2, 2), *v = frand(NK, -1, 1), *dout = frand(NQ, -1, 1);
    int32_t *pos = xmalloc((size_t)(T ? T : 1) * 4);
    make_pos(pos, T, pos_kind);
    float *out = alloc_out(NQ, NULL), *lse = alloc_out(T * H, NULL);
    lf_err err;
    lf_err_clear(&err);
    lf_status st = lf_cpu_attention_train_forward_ref(out, lse, q, k, v, pos, T, H, KH, D, window, scale, &err);
    float *dq0 = frand(NQ, -1, 1), *dk0 = frand(NK, -1, 1), *dv0 = frand(NK, -1, 1);
    const int wq = which & 1, wk = which & 2, wv = which & 4;
    float *rq = alloc_out(NQ, dq0), *rk = alloc_out(NK, dk0), *rv = alloc_out(NK, dv0);
    if (st == LF_OK)
        st = lf_cpu_attention_backward_ref(wq ? rq : NULL, wk ? rk : NULL, wv ? rv : NULL, dout, q, k, v, out, lse, pos,
                                           T, H, KH, D, window, scale, &err);
    att_case ac = {q, k, v, out, lse, dout, pos, T, H, KH, D, window, scale};
    double *tout = dalloc0(NQ), *tlse = dalloc0(T * H), *tq = dalloc0(NQ), *tk = dalloc0(NK), *tv = dalloc0(NK);
    att_tols(&ac, tout, tlse, tq, tk, tv, dq0, dk0, dv0);
    case_res cf, cb;
    for (int ci = 0; ci < NCFG; ci++) {
        lf_backend *be = use_cfg(ci);
        float *go = alloc_out(NQ, NULL), *gl = alloc_out(T * H, NULL);
        lf_status s =
            st != LF_OK ? st : be->ops->attention_train_forward(be, go, gl, q, k, v, pos, T, H, KH, D, window, scale);
        double r = fmax(worst_ratio(go, out, NQ, tout, 0, 0), worst_ratio(gl, lse, T * H, tlse, 0, 0));
        if (!guard_ok(go, NQ) || !guard_ok(gl, T * H)) r = INFINITY;
        case_record(&cf, ci, s, r);
        float *gq = alloc_out(NQ, dq0), *gk = alloc_out(NK, dk0), *gv = alloc_out(NK, dv0);
        s = st != LF_OK ? st
                        : be->ops->attention_backward(be, wq ? gq : NULL, wk ? gk : NULL, wv ? gv : NULL, dout, q, k, v,
                                                      out, lse, pos, T, H, KH, D, window, scale);
        r = fmax(worst_ratio(gq, rq, NQ, tq, 0, 0),
                 fmax(worst_ratio(gk, rk, NK, tk, 0, 0), worst_ratio(gv, rv, NK, tv, 0, 0)));
        if (!guard_ok(gq, NQ) || !guard_ok(gk, NK) || !guard_ok(gv, NK)) r = INFINITY;
        case_record(&cb, ci, s, r);
        free(go), free(gl), free(gq), free(gk), free(gv);
    }
    static const char *kinds[] = {"one-row", "packed", "general"};
    case_finish(&cf, "attention_train_forward T=%lld H=%lld KH=%lld D=%lld pos=%s window=%lld", (long long)T,
                (long long)H, (long long)KH, (long long)D, kinds[pos_kind], (long long)window);
    case_finish(&cb, "attention_backward T=%lld H=%lld KH=%lld D=%lld pos=%s window=%lld%s%s%s", (long long)T,
                (long long)H, (long long)KH, (long long)D, kinds[pos_kind], (long long)window, wq ? " dq" : "",
                wk ? " dk" : "", wv ? " dv" : "");
    free(q), free(k), free(v), free(dout), free(pos), free(out), free(lse), free(dq0), free(dk0), free(dv0), free(rq),
        free(rk), free(rv), free(tout), free(tlse), free(tq), free(tk), free(tv);
}

static void test_attention(void) {
    /* T, H, KH, D: T = 1, GQA 4:1, 1:1, 3:1, ragged D, D = 512 (the limit), T past a backward key block */
    const int64_t shapes[][4] = {{1, 4, 1, 8},    {5, 4, 4, 12},  {37, 4, 1, 64},  {70, 6, 2, 18},
                                 {33, 2, 2, 128}, {9, 1, 1, 512}, {100, 4, 1, 16}, {23, 3, 1, 7}};
    const int64_t windows[] = {0, 3, 1000};
    int n = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        for (int pk = 0; pk < 3; pk++)
            for (int w = 0; w < 3; w++, n++) {
                if (shapes[i][0] * shapes[i][3] > 4000 && (pk + w) % 2) continue; /* keep the big shapes few */
                /* every 5th case asks for a subset of the gradients (bits: 1 dq, 2 dk, 4 dv) */
                static const int subsets[] = {6, 1, 2, 4, 3};
                test_attention_case(shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3], pk, windows[w],
                                    n % 5 == 4 ? subsets[(n / 5) % 5] : 7);
            }
    test_attention_case(0, 2, 1, 8, 0, 0, 7);    /* empty */
    test_attention_case(19, 4, 2, 16, 1, 1, 7);  /* window 1: each query sees itself only */
    test_attention_case(19, 4, 2, 16, 2, -1, 7); /* negative window = no window */

    lf_backend *be = use_cfg(0);
    float a[64] = {0}, l[8];
    int32_t bad[3] = {0, 2, 2}, neg[2] = {0, -1}, good[2] = {0, 1};
    check(be->ops->attention_train_forward(be, a, l, a, a, a, bad, 3, 1, 1, 4, 0, 1.0f) == LF_EINVAL &&
              strstr(be->err.msg, "pos[1]"),
          "attention_train_forward pos[1]=2 > 1 -> LF_EINVAL (%s)", be->err.msg);
    check(be->ops->attention_backward(be, a, a, a, a, a, a, a, a, l, neg, 2, 1, 1, 4, 0, 1.0f) == LF_EINVAL,
          "attention_backward pos[1]=-1 -> LF_EINVAL (%s)", be->err.msg);
    check(be->ops->attention_train_forward(be, a, l, a, a, a, good, 2, 3, 2, 4, 0, 1.0f) == LF_EINVAL,
          "attention_train_forward H=3 KH=2 -> LF_EINVAL (%s)", be->err.msg);
    check(be->ops->attention_train_forward(be, a, l, a, a, a, good, 2, 1, 1, 514, 0, 1.0f) == LF_EINVAL,
          "attention_train_forward D=514 -> LF_EINVAL (%s)", be->err.msg);
}

/* f64 forward for the finite differences. */
typedef struct {
    const double *q, *k, *v, *wr;
    const int32_t *pos;
    int64_t T, H, KH, D, window;
    double scale;
} att_fd;

static double att_loss(void *vctx) {
    const att_fd *m = vctx;
    const int64_t D = m->D, group = m->H / m->KH;
    double L = 0.0, sc[64];
    for (int64_t t = 0; t < m->T; t++)
        for (int64_t h = 0; h < m->H; h++) {
            const int64_t g = h / group, lo = lo_of(m->pos, t, m->window);
            double mx = -INFINITY, l = 0.0;
            for (int64_t j = lo; j <= t; j++) {
                double s = 0.0;
                for (int64_t d = 0; d < D; d++) s += m->q[(t * m->H + h) * D + d] * m->k[(j * m->KH + g) * D + d];
                sc[j - lo] = s * m->scale;
                mx = fmax(mx, sc[j - lo]);
            }
            for (int64_t j = lo; j <= t; j++) l += exp(sc[j - lo] - mx);
            for (int64_t j = lo; j <= t; j++) {
                const double p = exp(sc[j - lo] - mx) / l;
                for (int64_t d = 0; d < D; d++) L += m->wr[(t * m->H + h) * D + d] * p * m->v[(j * m->KH + g) * D + d];
            }
        }
    return L;
}

static void test_attention_fd(int64_t T, int64_t H, int64_t KH, int64_t D, int pos_kind, int64_t window) {
    fd_noise = 0.0;
    const int64_t NQ = T * H * D, NK = T * KH * D;
    const float scale = (float)(1.0 / sqrt((double)D));
    float *q = frand(NQ, -2, 2), *k = frand(NK, -2, 2), *v = frand(NK, -1, 1), *dout = frand(NQ, -1, 1);
    int32_t pos[64];
    make_pos(pos, T, pos_kind);
    float *out = falloc(NQ), *lse = falloc(T * H), *gq = falloc(NQ), *gk = falloc(NK), *gv = falloc(NK);
    memset(gq, 0, (size_t)NQ * 4), memset(gk, 0, (size_t)NK * 4), memset(gv, 0, (size_t)NK * 4);
    lf_err err;
    lf_status st = lf_cpu_attention_train_forward_ref(out, lse, q, k, v, pos, T, H, KH, D, window, scale, &err);
    if (st == LF_OK)
        st = lf_cpu_attention_backward_ref(gq, gk, gv, dout, q, k, v, out, lse, pos, T, H, KH, D, window, scale, &err);
    double *qd = to_f64(q, NQ), *kd = to_f64(k, NK), *vd = to_f64(v, NK), *wd = to_f64(dout, NQ);
    double *fq = dalloc0(NQ), *fk = dalloc0(NK), *fv = dalloc0(NK);
    att_fd ctx = {qd, kd, vd, wd, pos, T, H, KH, D, window, (double)scale};
    fd_grad(fq, qd, NQ, att_loss, &ctx);
    fd_grad(fk, kd, NK, att_loss, &ctx);
    fd_grad(fv, vd, NK, att_loss, &ctx);
    double r = fmax(fd_ratio(gq, fq, NQ, FD_TOL_ATT),
                    fmax(fd_ratio(gk, fk, NK, FD_TOL_ATT), fd_ratio(gv, fv, NK, FD_TOL_ATT)));
    /* the forward itself: out vs the f64 forward's softmax(s) v (f32 output rounding only: tol 1e-6 rms-relative) */
    check(st == LF_OK && r <= 1.0,
          "fd attention_backward_ref T=%lld H=%lld KH=%lld D=%lld pos kind %d window %lld  "
          "err/tol=%.3g",
          (long long)T, (long long)H, (long long)KH, (long long)D, pos_kind, (long long)window, r);
    free(q), free(k), free(v), free(dout), free(out), free(lse), free(gq), free(gk), free(gv), free(qd), free(kd),
        free(vd), free(wd), free(fq), free(fk), free(fv);
}

/* ==== swiglu_backward, axpy ==== */

static void test_swiglu_backward(void) {
    const int64_t Ns[] = {1, 7, 8, 9, 100, 1000, 100003};
    for (size_t i = 0; i < sizeof Ns / sizeof *Ns; i++)
        for (int which = 1; which <= 3; which++) {
            const int64_t N = Ns[i];
            if (which != 3 && N > 1000) continue;
            float *g = frand(N, -12, 12), *u = frand(N, -2, 2), *dy = frand(N, -1, 1);
            float *dg0 = frand(N, -1, 1), *du0 = frand(N, -1, 1);
            if (N > 4)
                g[0] = -100.0f, g[1] = 100.0f, g[2] = 0.0f, g[3] = -1.2785f; /* exp over/underflow, 0, near dsilu=0 */
            float *rg = alloc_out(N, dg0), *ru = alloc_out(N, du0);
            lf_cpu_swiglu_backward_ref(which & 1 ? rg : NULL, which & 2 ? ru : NULL, dy, g, u, N);
            /* ~10 f32 operations (exp8 2 ulp, one division) on terms bounded by
             * M = |old| + |dy u| (s + |g| s (1-s)) (dgate) or |old| + |dy g s| (dup): tol = 32 u M. */
            double *tg = dalloc0(N), *tu = dalloc0(N);
            for (int64_t k = 0; k < N; k++) {
                const double s = 1.0 / (1.0 + exp(-(double)g[k]));
                tg[k] = 32 * U * (fabs(dg0[k]) + fabs((double)dy[k] * u[k]) * (s + fabs(g[k]) * s * (1 - s))) + 1e-30;
                tu[k] = 32 * U * (fabs(du0[k]) + fabs((double)dy[k] * g[k] * s)) + 1e-30;
            }
            case_res cr;
            for (int ci = 0; ci < NCFG; ci++) {
                lf_backend *be = use_cfg(ci);
                float *a = alloc_out(N, dg0), *b = alloc_out(N, du0);
                lf_status s = be->ops->swiglu_backward(be, which & 1 ? a : NULL, which & 2 ? b : NULL, dy, g, u, N);
                double r = fmax(worst_ratio(a, rg, N, tg, 0, 0), worst_ratio(b, ru, N, tu, 0, 0));
                if (!guard_ok(a, N) || !guard_ok(b, N)) r = INFINITY;
                case_record(&cr, ci, s, r);
                free(a), free(b);
            }
            case_finish(&cr, "swiglu_backward N=%lld%s%s", (long long)N, which & 1 ? " dgate" : "",
                        which & 2 ? " dup" : "");
            free(g), free(u), free(dy), free(dg0), free(du0), free(rg), free(ru), free(tg), free(tu);
        }
}

typedef struct {
    const double *g, *u, *wr;
    int64_t N;
} swi_fd;

static double swi_loss(void *vctx) {
    const swi_fd *m = vctx;
    double L = 0.0;
    for (int64_t i = 0; i < m->N; i++) L += m->wr[i] * m->g[i] / (1.0 + exp(-m->g[i])) * m->u[i];
    return L;
}

static void test_swiglu_backward_fd(void) {
    fd_noise = 0.0;
    const int64_t N = 40;
    float *g = frand(N, -6, 6), *u = frand(N, -2, 2), *dy = frand(N, -1, 1), *dg = falloc(N), *du = falloc(N);
    memset(dg, 0, N * 4), memset(du, 0, N * 4);
    lf_cpu_swiglu_backward_ref(dg, du, dy, g, u, N);
    double *gd = to_f64(g, N), *ud = to_f64(u, N), *wd = to_f64(dy, N), *fg = dalloc0(N), *fu = dalloc0(N);
    swi_fd ctx = {gd, ud, wd, N};
    fd_grad(fg, gd, N, swi_loss, &ctx);
    fd_grad(fu, ud, N, swi_loss, &ctx);
    double r = fmax(fd_ratio(dg, fg, N, FD_TOL), fd_ratio(du, fu, N, FD_TOL));
    check(r <= 1.0, "fd swiglu_backward_ref N=%lld  err/tol=%.3g", (long long)N, r);
    free(g), free(u), free(dy), free(dg), free(du), free(gd), free(ud), free(wd), free(fg), free(fu);
}

static void test_axpy(void) {
    const int64_t Ns[] = {0, 1, 7, 8, 13, 1000, 200001};
    for (size_t i = 0; i < sizeof Ns / sizeof *Ns; i++) {
        const int64_t N = Ns[i];
        const float alpha = rng_unif(-3, 3);
        float *x = frand(N, -1, 1), *y0 = frand(N, -1, 1), *ref = alloc_out(N, y0);
        lf_cpu_axpy_ref(ref, x, alpha, N);
        /* the ref rounds y + alpha x once (from double), FMA once too, the portable mul + add twice: the two
         * differ by at most u |alpha x| + 2 u |y + alpha x| <= 3 u (|y| + |alpha x|) */
        double *tol = dalloc0(N);
        for (int64_t k = 0; k < N; k++) tol[k] = 3 * U * (fabs(y0[k]) + fabs((double)alpha * x[k])) + 1e-30;
        case_res cr;
        for (int ci = 0; ci < NCFG; ci++) {
            lf_backend *be = use_cfg(ci);
            float *y = alloc_out(N, y0);
            lf_status s = be->ops->axpy(be, y, x, alpha, N);
            double r = worst_ratio(y, ref, N, tol, 0, 0);
            if (!guard_ok(y, N)) r = INFINITY;
            case_record(&cr, ci, s, r);
            free(y);
        }
        case_finish(&cr, "axpy N=%lld alpha=%g", (long long)N, alpha);
        free(x), free(y0), free(ref), free(tol);
    }
    /* x == y: y += alpha y */
    lf_backend *be = use_cfg(1);
    float y[20];
    for (int k = 0; k < 20; k++) y[k] = (float)k;
    lf_status s = be->ops->axpy(be, y, y, 0.5f, 20);
    int ok = s == LF_OK;
    for (int k = 0; k < 20; k++) ok &= y[k] == 1.5f * (float)k;
    check(ok, "axpy with x == y gives y * (1 + alpha)");
}

/* ==== crossentropy ==== */

static void test_crossentropy_case(int64_t R, int64_t V, float spread, int alias) {
    float *x = frand(R * V, -spread, spread);
    int32_t *tg = xmalloc((size_t)(R ? R : 1) * 4);
    for (int64_t r = 0; r < R; r++) tg[r] = (r % 4 == 3) ? -100 : (int32_t)rng_int(0, V - 1);
    const float dscale = rng_unif(0.1f, 2.0f);
    float *rl = alloc_out(R, NULL), *rd = alloc_out(R * V, NULL);
    lf_err err;
    lf_status st = lf_cpu_crossentropy_forward_backward_ref(rl, rd, x, tg, R, V, dscale, &err);
    /* f32 fast path: m exact; V exps (~3 u each) summed in f32 ((V+2) u relative) -> log-sum moves by
     * e = (V + 8) u absolute, lse = m + log(s) and loss = lse - x[t] add u |lse| + u |loss| + u |m|.
     * dlogits = exp(x - lse) dscale: relative error e + u |x - lse| + 4 u, plus an ulp of dscale at the target. */
    double *tl = dalloc0(R), *td = dalloc0(R * V);
    for (int64_t r = 0; r < R; r++) {
        if (tg[r] == -100) continue; /* exact zeros expected: tol 0 */
        double m = -INFINITY, s = 0;
        for (int64_t v = 0; v < V; v++) m = fmax(m, x[r * V + v]);
        for (int64_t v = 0; v < V; v++) s += exp((double)x[r * V + v] - m);
        const double lse = m + log(s), e = (double)(V + 8) * U;
        tl[r] = e + U * (2 * fabs(lse) + fabs(lse - x[r * V + tg[r]]) + fabs(m)) + 1e-30;
        for (int64_t v = 0; v < V; v++) {
            const double p = exp((double)x[r * V + v] - lse);
            td[r * V + v] =
                fabs(dscale) * (p * (e + 2 * tl[r] + U * fabs(x[r * V + v] - lse) + 4 * U) + (v == tg[r] ? 2 * U : 0)) +
                1e-30;
        }
    }
    case_res cr;
    for (int ci = 0; ci < NCFG; ci++) {
        lf_backend *be = use_cfg(ci);
        float *gl = alloc_out(R, NULL), *gd = alloc_out(R * V, alias ? x : NULL);
        const float *lg = alias ? gd : x;
        lf_status s = be->ops->crossentropy_forward_backward(be, gl, gd, lg, tg, R, V, dscale);
        double r = fmax(worst_ratio(gl, rl, R, tl, 0, 0), worst_ratio(gd, rd, R * V, td, 0, 0));
        if (!guard_ok(gl, R) || !guard_ok(gd, R * V)) r = INFINITY;
        case_record(&cr, ci, st != LF_OK ? st : s, r);
        free(gl), free(gd);
    }
    case_finish(&cr, "crossentropy R=%lld V=%lld spread=%g%s", (long long)R, (long long)V, spread,
                alias ? " dlogits aliases logits" : "");
    free(x), free(tg), free(rl), free(rd), free(tl), free(td);
}

static void test_crossentropy(void) {
    test_crossentropy_case(1, 1, 1, 0);
    test_crossentropy_case(4, 7, 3, 0);
    test_crossentropy_case(5, 100, 10, 1);
    test_crossentropy_case(8, 5003, 10, 0);
    test_crossentropy_case(3, 32000, 20, 1);
    test_crossentropy_case(9, 17, 80, 0); /* exp(x - max) underflows for most entries */
    test_crossentropy_case(0, 10, 1, 0);

    lf_backend *be = use_cfg(1);
    float x[12], l[3] = {7, 7, 7}, d[12];
    fill(x, 12, -1, 1);
    for (int i = 0; i < 12; i++) d[i] = 7;
    const int32_t bad_targets[][3] = {{0, 4, 1}, {0, -1, 1}, {2, 3, -99}};
    for (int b = 0; b < 3; b++) {
        lf_status s = be->ops->crossentropy_forward_backward(be, l, d, x, bad_targets[b], 3, 4, 1.0f);
        int untouched = 1;
        for (int i = 0; i < 12; i++) untouched &= d[i] == 7;
        for (int i = 0; i < 3; i++) untouched &= l[i] == 7;
        check(s == LF_EINVAL && untouched, "crossentropy bad target set %d -> LF_EINVAL, outputs untouched (%s)", b,
              be->err.msg);
    }
}

typedef struct {
    const double *x;
    const int32_t *tg;
    int64_t R, V;
    double dscale;
} ce_fd;

static double ce_loss(void *vctx) {
    const ce_fd *m = vctx;
    double L = 0.0;
    for (int64_t r = 0; r < m->R; r++) {
        if (m->tg[r] == -100) continue;
        double mx = -INFINITY, s = 0.0;
        for (int64_t v = 0; v < m->V; v++) mx = fmax(mx, m->x[r * m->V + v]);
        for (int64_t v = 0; v < m->V; v++) s += exp(m->x[r * m->V + v] - mx);
        L += m->dscale * (mx + log(s) - m->x[r * m->V + m->tg[r]]);
    }
    return L;
}

static void test_crossentropy_fd(void) {
    fd_noise = 0.0;
    const int64_t R = 4, V = 11;
    float *x = frand(R * V, -4, 4), *l = falloc(R), *d = falloc(R * V);
    int32_t tg[4] = {3, -100, 0, 10};
    const float dscale = 0.37f;
    lf_err err;
    lf_status st = lf_cpu_crossentropy_forward_backward_ref(l, d, x, tg, R, V, dscale, &err);
    double *xd = to_f64(x, R * V), *fd = dalloc0(R * V);
    ce_fd ctx = {xd, tg, R, V, (double)dscale};
    fd_grad(fd, xd, R * V, ce_loss, &ctx);
    double r = fd_ratio(d, fd, R * V, FD_TOL);
    /* losses vs the f64 loss of each row: only the f32 rounding of the output (tol 2^-23 relative) */
    int ok_loss = 1;
    for (int64_t row = 0; row < R; row++) {
        ce_fd one = {xd + row * V, tg + row, 1, V, 1.0};
        ok_loss &= fabs(l[row] - ce_loss(&one)) <= 0x1p-23 * fabs(ce_loss(&one)) + 1e-30;
    }
    check(st == LF_OK && r <= 1.0 && ok_loss, "fd crossentropy_ref R=%lld V=%lld  err/tol=%.3g, losses %s",
          (long long)R, (long long)V, r, ok_loss ? "match" : "DIFFER");
    free(x), free(l), free(d), free(xd), free(fd);
}

/* ==== main ==== */

int main(void) {
    const char *env = getenv("LF_TEST_SEED");
    uint64_t seed = env && *env ? strtoull(env, NULL, 0) : ((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32));
    rng_state = seed;
    printf("test_backward: seed %llu (set LF_TEST_SEED to repeat)\n", (unsigned long long)seed);
    printf("AVX2 %s\n",
           lf_cpu_set_simd(1) ? "available" : "not available: the avx2 configurations run the portable path");
    for (int ci = 0; ci < NCFG; ci++) {
        cfgs[ci].be = lf_backend_cpu_create(cfgs[ci].threads);
        if (!cfgs[ci].be) {
            fprintf(stderr, "test_backward: cannot create a %d-thread CPU backend\n", cfgs[ci].threads);
            return 1;
        }
    }
    lf_backend *be = cfgs[0].be;
    {
        int all = lf_backend_supports(be, LF_OP_MATMUL_Q4, LF_DTYPE_F32);
        for (int op = LF_OP_MATMUL_BACKWARD; op <= LF_OP_CROSSENTROPY; op++) all &= lf_backend_supports(be, (lf_op)op, LF_DTYPE_F32);
        check(all && be->ops->matmul_backward && be->ops->matmul_q4_backward && be->ops->rmsnorm_backward &&
                  be->ops->rope_backward && be->ops->attention_train_forward && be->ops->attention_backward &&
                  be->ops->swiglu_backward && be->ops->axpy && be->ops->crossentropy_forward_backward,
              "cpu backend registers and supports every training op");
    }

    test_matmul_backward();
    test_q4();
    test_rmsnorm_backward();
    test_rope_backward();
    test_attention();
    test_swiglu_backward();
    test_axpy();
    test_crossentropy();

    /* finite differences of the refs, in double */
    test_matmul_backward_fd(LF_DTYPE_F32, 3, 5, 4);
    test_matmul_backward_fd(LF_DTYPE_BF16, 2, 7, 3);
    test_rmsnorm_backward_fd(3, 9);
    test_rmsnorm_backward_fd(1, 1);
    test_rope_backward_fd();
    test_attention_fd(7, 4, 1, 6, 0, 0);
    test_attention_fd(9, 4, 2, 4, 1, 0);
    test_attention_fd(10, 2, 2, 6, 1, 3);
    test_attention_fd(8, 3, 1, 4, 2, 0);
    test_attention_fd(1, 4, 4, 8, 0, 0);
    test_swiglu_backward_fd();
    test_crossentropy_fd();

    lf_cpu_set_simd(1);
    lf_quant_set_simd(1);
    for (int ci = 0; ci < NCFG; ci++) lf_backend_free(cfgs[ci].be);
    printf("seed %llu\n", (unsigned long long)seed);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
