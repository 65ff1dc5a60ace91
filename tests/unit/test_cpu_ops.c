/* test_cpu_ops.c - every CPU op's fast path, through the backend table, against its scalar _ref
 * (kernels/cpu/cpu_ops.h), in four configurations: 1 and 3 threads x AVX2 and portable
 * (lf_cpu_set_simd(0), the hook behind LF_CPU_NO_SIMD=1). Random inputs with odd sizes, seeded from
 * LF_TEST_SEED or the clock (printed). Also the error paths (bad token id, bad sizes, unsupported dtypes)
 * and the backend's memory entry points. One line per case; the last line is exactly "N passed, M failed"
 * (N, M count case x configuration checks); exit 1 on any failure.
 *
 * Tolerances are tol_abs + tol_rel*|ref| with the reason beside each; a NaN where the ref has none fails. */
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

/* ---- rng (splitmix64) ---- */

static uint64_t rng_state;

static uint64_t rng_u64(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_unif(float lo, float hi) { return lo + (hi - lo) * (float)((rng_u64() >> 40) * (1.0 / 16777216.0)); }

static void fill(float *x, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) x[i] = rng_unif(lo, hi);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "test_cpu_ops: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* Outputs get GUARD sentinel floats past their end: masked AVX stores are invisible to AddressSanitizer, so a
 * store past the end shows up as a changed sentinel instead. */
#define GUARD 16
#define SENTINEL 1234.5f

static float *alloc_out(int64_t n) {
    float *p = xmalloc((size_t)(n + GUARD) * 4);
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
    {"1t-avx2", 1, 1, NULL}, {"3t-avx2", 3, 1, NULL}, {"1t-port", 1, 0, NULL}, {"3t-port", 3, 0, NULL}};

static lf_backend *use_cfg(int ci) {
    lf_cpu_set_simd(cfgs[ci].simd);
    return cfgs[ci].be;
}

/* ---- comparison and reporting ---- */

static int n_pass, n_fail;

/* Worst err/tol over n elements (tol = tol_each[i] or tol_abs, + tol_rel*|ref|); INFINITY on NaN mismatch. */
static double worst_ratio(const float *got, const float *ref, int64_t n, const double *tol_each, double tol_abs,
                          double tol_rel, double *max_err) {
    double worst = 0.0;
    *max_err = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(got[i]) || isnan(ref[i])) {
            if (!(isnan(got[i]) && isnan(ref[i]))) return INFINITY;
            continue;
        }
        double err = fabs((double)got[i] - (double)ref[i]);
        if (isinf(got[i]) || isinf(ref[i])) err = got[i] == ref[i] ? 0.0 : INFINITY;
        double tol = (tol_each ? tol_each[i] : tol_abs) + tol_rel * fabs((double)ref[i]);
        double r = err == 0.0 ? 0.0 : (tol > 0.0 ? err / tol : INFINITY);
        if (err > *max_err) *max_err = err;
        if (r > worst) worst = r;
    }
    return worst;
}

/* One case across the configurations: results are recorded per configuration, then printed as one line. */
typedef struct {
    double ratio[NCFG], err[NCFG];
    int status_bad[NCFG];
} case_res;

static void case_record(case_res *c, int ci, lf_status st, double ratio, double err) {
    c->status_bad[ci] = st != LF_OK;
    c->ratio[ci] = ratio;
    c->err[ci] = err;
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
            printf(" %s=status-error(%s)", cfgs[ci].name, cfgs[ci].be->err.msg);
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

/* Weights of dtype dt with values uniform in [lo, hi] (rounded to dt); returns the storage. */
static void *make_weights(lf_dtype dt, int64_t n, float lo, float hi) {
    if (dt == LF_DTYPE_F32) {
        float *w = xmalloc((size_t)n * 4);
        fill(w, n, lo, hi);
        return w;
    }
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

/* ==== matmul ==== */

static void test_matmul_case(lf_dtype dt, int with_bias, int64_t T, int64_t C, int64_t OC) {
    float *x = xmalloc((size_t)(T * C) * 4), *ref = xmalloc((size_t)(T * OC) * 4), *out = alloc_out(T * OC);
    float *bias = with_bias ? xmalloc((size_t)OC * 4) : NULL;
    double *tol = xmalloc((size_t)(T * OC) * sizeof(double));
    fill(x, T * C, -1.0f, 1.0f);
    if (bias) fill(bias, OC, -1.0f, 1.0f);
    void *wdata = make_weights(dt, OC * C, -1.0f, 1.0f);
    lf_tensor w = lf_tensor_view(wdata, dt, 2, (int64_t[]){OC, C});
    lf_err err;
    lf_err_clear(&err);
    lf_status st = lf_cpu_matmul_forward_ref(ref, x, &w, bias, T, C, OC, &err);
    /* Tolerance: the fast path sums the same C products (bf16/f16 -> f32 is exact) plus the bias in f32 in a
     * blocked order; recursive f32 summation of n = C+1 terms is off by at most (n * 2^-24) * sum|terms|
     * (Higham, Accuracy and Stability, 4.2). tol_rel 2^-24 covers the ref's own rounding to f32. */
    for (int64_t t = 0; t < T; t++)
        for (int64_t o = 0; o < OC; o++) {
            double a = bias ? fabs(bias[o]) : 0.0;
            for (int64_t c = 0; c < C; c++) a += fabs((double)x[t * C + c] * wval(wdata, dt, o * C + c));
            tol[t * OC + o] = (double)(C + 1) * 0x1p-24 * a + 1e-30;
        }
    case_res cr;
    for (int ci = 0; ci < NCFG; ci++) {
        lf_backend *be = use_cfg(ci);
        for (int64_t i = 0; i < T * OC; i++) out[i] = NAN;
        lf_status s = st != LF_OK ? st : be->ops->matmul_forward(be, lf_f32(out), lf_f32(x), &w, bias, T, C, OC);
        double e, r = worst_ratio(out, ref, T * OC, tol, 0.0, 0x1p-24, &e);
        if (!guard_ok(out, T * OC)) r = INFINITY;
        case_record(&cr, ci, s, r, e);
    }
    case_finish(&cr, "matmul %s%s T=%lld C=%lld OC=%lld", lf_dtype_name(dt), bias ? "+bias" : "", (long long)T,
                (long long)C, (long long)OC);
    free(x), free(ref), free(out), free(bias), free(tol), free(wdata);
}

static void test_matmul(void) {
    const lf_dtype dts[] = {LF_DTYPE_F32, LF_DTYPE_BF16, LF_DTYPE_F16};
    const int64_t Ts[] = {1, 3, 6, 17, 50, 51, 53, 64, 67}, Cs[] = {1, 7, 64, 129, 256}, OCs[] = {1, 5, 67};
    for (int d = 0; d < 3; d++)
        for (int b = 0; b < 2; b++)
            for (size_t ti = 0; ti < sizeof Ts / sizeof *Ts; ti++)
                for (size_t c = 0; c < sizeof Cs / sizeof *Cs; c++)
                    for (size_t o = 0; o < sizeof OCs / sizeof *OCs; o++)
                        test_matmul_case(dts[d], b, Ts[ti], Cs[c], OCs[o]);
    /* C > LF_CPU_MM_KC (blocks accumulate into out), several token and row tiles, decode GEMV with a long C */
    for (int d = 0; d < 3; d++) {
        test_matmul_case(dts[d], 1, 67, 1100, 13);
        test_matmul_case(dts[d], 0, 130, 2100, 100);
        test_matmul_case(dts[d], 1, 1, 2100, 37);
        test_matmul_case(dts[d], 0, 2, 1031, 101);
    }

    /* error paths */
    lf_backend *be = use_cfg(0);
    float x[6] = {0}, y[6];
    int32_t wi[6] = {0};
    lf_tensor w32 = lf_tensor_view(wi, LF_DTYPE_I32, 2, (int64_t[]){2, 3});
    lf_status st = be->ops->matmul_forward(be, lf_f32(y), lf_f32(x), &w32, NULL, 2, 3, 2);
    check(st == LF_EUNSUPPORTED && strstr(be->err.msg, "I32"), "matmul I32 weights -> LF_EUNSUPPORTED (%s)",
          be->err.msg);
    lf_tensor wbad = lf_tensor_view(x, LF_DTYPE_F32, 2, (int64_t[]){3, 2});
    st = be->ops->matmul_forward(be, lf_f32(y), lf_f32(x), &wbad, NULL, 2, 3, 2);
    check(st == LF_EINVAL, "matmul weight shape [3,2] for OC=2 C=3 -> LF_EINVAL (%s)", be->err.msg);
    lf_tensor wok = lf_tensor_view(y, LF_DTYPE_F32, 2, (int64_t[]){2, 3});
    st = be->ops->matmul_forward(be, lf_f32(x), lf_f32(x), &wok, NULL, 2, 3, 2);
    check(st == LF_EINVAL, "matmul out aliasing inp -> LF_EINVAL (%s)", be->err.msg);
}

/* ==== embedding ==== */

static void test_embedding(void) {
    const lf_dtype dts[] = {LF_DTYPE_F32, LF_DTYPE_BF16, LF_DTYPE_F16};
    const int64_t V = 50, Cs[] = {1, 7, 64, 129}, Ts[] = {1, 3, 17};
    for (int d = 0; d < 3; d++)
        for (size_t c = 0; c < 4; c++)
            for (size_t ti = 0; ti < 3; ti++) {
                int64_t C = Cs[c], T = Ts[ti];
                void *wd = make_weights(dts[d], V * C, -2.0f, 2.0f);
                lf_tensor wte = lf_tensor_view(wd, dts[d], 2, (int64_t[]){V, C});
                int32_t tok[17];
                for (int64_t t = 0; t < T; t++) tok[t] = (int32_t)(rng_u64() % (uint64_t)V);
                tok[0] = (int32_t)(V - 1);
                float *ref = xmalloc((size_t)(T * C) * 4), *out = alloc_out(T * C);
                lf_err err;
                lf_status st = lf_cpu_embedding_forward_ref(ref, tok, &wte, T, &err);
                case_res cr;
                for (int ci = 0; ci < NCFG; ci++) {
                    lf_backend *be = use_cfg(ci);
                    lf_status s = st != LF_OK ? st : be->ops->embedding_forward(be, lf_f32(out), tok, &wte, T);
                    double e, r = worst_ratio(out, ref, T * C, NULL, 0.0, 0.0, &e); /* exact conversions: tol 0 */
                    if (!guard_ok(out, T * C)) r = INFINITY;
                    case_record(&cr, ci, s, r, e);
                }
                case_finish(&cr, "embedding %s V=%lld C=%lld T=%lld", lf_dtype_name(dts[d]), (long long)V, (long long)C,
                            (long long)T);
                free(ref), free(out), free(wd);
            }

    /* a bad id: LF_EINVAL naming id and position, out untouched */
    for (int ci = 0; ci < NCFG; ci++) {
        lf_backend *be = use_cfg(ci);
        float wd[50 * 4], out[5 * 4];
        fill(wd, 50 * 4, -1.0f, 1.0f);
        for (int i = 0; i < 20; i++) out[i] = 42.0f;
        lf_tensor wte = lf_tensor_view(wd, LF_DTYPE_F32, 2, (int64_t[]){50, 4});
        int32_t tok[5] = {1, 2, 50, 3, -1};
        lf_status st = be->ops->embedding_forward(be, lf_f32(out), tok, &wte, 5);
        int untouched = 1;
        for (int i = 0; i < 20; i++) untouched &= out[i] == 42.0f;
        check(st == LF_EINVAL && strstr(be->err.msg, "50") && strstr(be->err.msg, "position 2") && untouched,
              "embedding bad id [%s] -> LF_EINVAL, out untouched: \"%s\"", cfgs[ci].name, be->err.msg);
        int32_t tok2[2] = {0, -7};
        st = be->ops->embedding_forward(be, lf_f32(out), tok2, &wte, 2);
        check(st == LF_EINVAL && strstr(be->err.msg, "-7") && strstr(be->err.msg, "position 1"),
              "embedding negative id [%s] -> LF_EINVAL: \"%s\"", cfgs[ci].name, be->err.msg);
    }
}

/* ==== rmsnorm ==== */

static void test_rmsnorm(void) {
    const int64_t Ts[] = {1, 3, 17}, Cs[] = {1, 7, 64, 129, 4096};
    const float epss[] = {1e-5f, 1e-6f};
    for (size_t ti = 0; ti < 3; ti++)
        for (size_t c = 0; c < 5; c++)
            for (int e = 0; e < 2; e++)
                for (int alias = 0; alias < 2; alias++) {
                    int64_t T = Ts[ti], C = Cs[c];
                    float *x = xmalloc((size_t)(T * C) * 4), *w = xmalloc((size_t)C * 4);
                    float *ref = xmalloc((size_t)(T * C) * 4), *out = alloc_out(T * C);
                    float scale = rng_unif(0.01f, 30.0f);
                    fill(x, T * C, -scale, scale);
                    fill(w, C, 0.5f, 1.5f);
                    lf_cpu_rmsnorm_forward_ref(ref, x, w, T, C, epss[e]);
                    case_res cr;
                    for (int ci = 0; ci < NCFG; ci++) {
                        lf_backend *be = use_cfg(ci);
                        lf_status s;
                        if (alias) {
                            memcpy(out, x, (size_t)(T * C) * 4);
                            s = be->ops->rmsnorm_forward(be, lf_f32(out), lf_f32(out), w, T, C, epss[e]);
                        } else {
                            s = be->ops->rmsnorm_forward(be, lf_f32(out), lf_f32(x), w, T, C, epss[e]);
                        }
                        /* out = w*(x*r): relative error = that of r plus 2 roundings. r comes from a sum of C
                         * squares in f32 with >= 8 partial sums (the ref sums in double): random-walk error
                         * ~sqrt(C/8) 2^-24 ~ 1.4e-6 at C=4096 (worst case (C/8) 2^-24 = 3e-5 is never reached),
                         * halved by the rsqrt. 1e-5 relative leaves room; 1e-30 absolute for exact zeros. */
                        double er, r = worst_ratio(out, ref, T * C, NULL, 1e-30, 1e-5, &er);
                        if (!guard_ok(out, T * C)) r = INFINITY;
                        case_record(&cr, ci, s, r, er);
                    }
                    case_finish(&cr, "rmsnorm T=%lld C=%lld eps=%g%s", (long long)T, (long long)C, (double)epss[e],
                                alias ? " out=inp" : "");
                    free(x), free(w), free(ref), free(out);
                }
}

/* ==== rope ==== */

static void test_rope(void) {
    const int64_t Ts[] = {1, 3, 17}, NHs[] = {1, 4, 8}, Ds[] = {16, 20, 64, 128};
    const double thetas[] = {10000.0, 500000.0};
    for (size_t ti = 0; ti < 3; ti++)
        for (size_t h = 0; h < 3; h++)
            for (size_t d = 0; d < 4; d++)
                for (int th = 0; th < 2; th++) {
                    int64_t T = Ts[ti], NH = NHs[h], D = Ds[d];
                    float inv_freq[64];
                    for (int64_t i = 0; i < D / 2; i++)
                        inv_freq[i] = (float)(1.0 / pow(thetas[th], (double)(2 * i) / (double)D));
                    int32_t pos[17];
                    int32_t off = th ? 100000 : 37; /* incremental decoding: positions continue a cache */
                    for (int64_t t = 0; t < T; t++) pos[t] = off + (int32_t)t;
                    size_t n = (size_t)(T * NH * D);
                    float *x = xmalloc(n * 4), *ref = xmalloc(n * 4), *out = alloc_out((int64_t)n);
                    fill(x, (int64_t)n, -1.0f, 1.0f);
                    memcpy(ref, x, n * 4);
                    lf_cpu_rope_forward_ref(ref, pos, inv_freq, T, NH, D);
                    /* the ref itself against double arithmetic on the same f32 angle: the convention and
                     * rounding (|x| <= 1, cosf/sinf ~1 ulp, 3 f32 roundings): within 1e-6 absolute */
                    float *dbl = xmalloc(n * 4);
                    for (int64_t t = 0; t < T; t++)
                        for (int64_t hh = 0; hh < NH; hh++)
                            for (int64_t i = 0; i < D / 2; i++) {
                                const float *v = x + (t * NH + hh) * D;
                                double a = (double)((float)pos[t] * inv_freq[i]);
                                dbl[(t * NH + hh) * D + i] = (float)(v[i] * cos(a) - v[i + D / 2] * sin(a));
                                dbl[(t * NH + hh) * D + i + D / 2] = (float)(v[i + D / 2] * cos(a) + v[i] * sin(a));
                            }
                    double e0, r0 = worst_ratio(ref, dbl, (int64_t)n, NULL, 1e-6, 0.0, &e0);
                    check(r0 <= 1.0, "rope ref vs double T=%lld NH=%lld D=%lld theta=%g max_err=%.3g", (long long)T,
                          (long long)NH, (long long)D, thetas[th], e0);
                    case_res cr;
                    for (int ci = 0; ci < NCFG; ci++) {
                        lf_backend *be = use_cfg(ci);
                        memcpy(out, x, n * 4);
                        lf_status s = be->ops->rope_forward(be, lf_f32(out), pos, inv_freq, T, NH, D);
                        /* same f32 operations in the same order: equal, up to an FMA contraction a different
                         * compiler may do in the ref (1 ulp of values <= 1.5): 1e-6 absolute */
                        double er, r = worst_ratio(out, ref, (int64_t)n, NULL, 1e-6, 0.0, &er);
                        if (!guard_ok(out, (int64_t)n)) r = INFINITY;
                        case_record(&cr, ci, s, r, er);
                    }
                    case_finish(&cr, "rope T=%lld NH=%lld D=%lld theta=%g pos0=%d", (long long)T, (long long)NH,
                                (long long)D, thetas[th], (int)off);
                    free(x), free(ref), free(out), free(dbl);
                }
    lf_backend *be = use_cfg(0);
    float x[8] = {0};
    int32_t pos[1] = {0};
    lf_status st = be->ops->rope_forward(be, lf_f32(x), pos, x, 1, 1, 7);
    check(st == LF_EINVAL, "rope odd D -> LF_EINVAL (%s)", be->err.msg);
}

/* ==== attention ==== */

static void test_attention_case(int64_t T, int64_t S, int64_t H, int64_t KH, int64_t D, int64_t window,
                                const int32_t *pos, const char *kind) {
    float qs = 3.0f; /* |q|,|k| <= 3 makes the softmax peaky enough to matter */
    size_t nq = (size_t)(T * H * D), nk = (size_t)(S * KH * D);
    float *q = xmalloc(nq * 4), *k = xmalloc(nk * 4), *v = xmalloc(nk * 4);
    float *ref = xmalloc(nq * 4), *out = alloc_out((int64_t)nq);
    fill(q, (int64_t)nq, -qs, qs);
    fill(k, (int64_t)nk, -qs, qs);
    fill(v, (int64_t)nk, -1.0f, 1.0f);
    float scale = 1.0f / sqrtf((float)D);
    lf_err err;
    lf_status st = lf_cpu_attention_forward_ref(ref, q, k, v, pos, T, S, H, KH, D, window, scale, &err);
    /* Tolerance: out is a convex combination of rows of v (|v| <= 1). A score s_j is a D-term f32 dot product,
     * off by at most D 2^-24 scale sum|q k| <= D 2^-24 scale D qs^2 =: ds; softmax weights then move by at most
     * 2 ds in l1, so out by 2 ds. exp (2 ulp) and the f32 running sums over at most S keys add (S + 8) 2^-24
     * relative. Plus 1e-6 absolute for the final roundings. */
    double ds = (double)D * 0x1p-24 * (double)scale * (double)D * qs * qs;
    double tol_abs = 2.0 * ds + (double)(S + 8) * 0x1p-24 + 1e-6;
    case_res cr;
    for (int ci = 0; ci < NCFG; ci++) {
        lf_backend *be = use_cfg(ci);
        lf_status s =
            st != LF_OK ? st : be->ops->attention_forward(be, lf_f32(out), lf_f32(q), lf_f32(k), lf_f32(v), pos, T, S, H, KH, D, window, scale);
        double e, r = worst_ratio(out, ref, (int64_t)nq, NULL, tol_abs, 0.0, &e);
        if (!guard_ok(out, (int64_t)nq)) r = INFINITY;
        case_record(&cr, ci, s, r, e);
    }
    case_finish(&cr, "attention %s T=%lld S=%lld H=%lld KH=%lld D=%lld window=%lld (tol %.2g)", kind, (long long)T,
                (long long)S, (long long)H, (long long)KH, (long long)D, (long long)window, tol_abs);
    free(q), free(k), free(v), free(ref), free(out);
}

static void test_attention(void) {
    const int64_t HKH[][2] = {{4, 1}, {4, 4}, {8, 2}}, Ds[] = {16, 20, 64, 128}, windows[] = {0, 7, 1000};
    int32_t pos[80];
    for (size_t g = 0; g < 3; g++)
        for (size_t d = 0; d < 4; d++)
            for (size_t w = 0; w < 3; w++) {
                int64_t H = HKH[g][0], KH = HKH[g][1], D = Ds[d], win = windows[w];
                for (int i = 0; i < 41; i++) pos[i] = i; /* prefill: T = S */
                test_attention_case(41, 41, H, KH, D, win, pos, "prefill");
                pos[0] = 69; /* decode: one token after 69 cached */
                test_attention_case(1, 70, H, KH, D, win, pos, "decode");
                for (int i = 0; i < 5; i++) pos[i] = 72 + i; /* a chunk appended to a cache */
                test_attention_case(5, 77, H, KH, D, win, pos, "chunk");
                for (int i = 0; i < 6; i++) pos[i] = (int32_t)(rng_u64() % 77); /* any positions < S */
                test_attention_case(6, 77, H, KH, D, win, pos, "random-pos");
            }
    /* independent oracle for the mask: with q = 0 every attended key weighs the same, so out is the mean of
     * v over exactly the keys [max(0, p - window + 1), p] */
    for (int ci = 0; ci < NCFG; ci++) {
        lf_backend *be = use_cfg(ci);
        enum { S = 12, H = 2, KH = 1, D = 3 };
        float q[4 * H * D] = {0}, k[S * KH * D], v[S * KH * D], o[4 * H * D];
        for (int j = 0; j < S; j++)
            for (int d = 0; d < D; d++) k[j * D + d] = (float)(j + d), v[j * D + d] = (float)(j * 10 + d);
        int32_t p4[4] = {0, 5, 11, 2};
        const int64_t wins[3] = {0, 1, 4};
        for (int wi = 0; wi < 3; wi++) {
            lf_status st = be->ops->attention_forward(be, lf_f32(o), lf_f32(q), lf_f32(k), lf_f32(v), p4, 4, S, H, KH, D, wins[wi], 0.5f);
            double worst = 0;
            for (int t = 0; t < 4; t++) {
                int lo = wins[wi] > 0 && p4[t] - wins[wi] + 1 > 0 ? p4[t] - (int)wins[wi] + 1 : 0;
                for (int h = 0; h < H; h++)
                    for (int d = 0; d < D; d++) {
                        double mean = 0;
                        for (int j = lo; j <= p4[t]; j++) mean += v[j * D + d];
                        mean /= (p4[t] - lo + 1);
                        double e = fabs(o[(t * H + h) * D + d] - mean);
                        if (e > worst) worst = e;
                    }
            }
            /* means of values <= 112 in f32: 1e-4 absolute is a few ulp */
            check(st == LF_OK && worst <= 1e-4, "attention mask oracle [%s] window=%lld: max |out - mean(v)| = %.3g",
                  cfgs[ci].name, (long long)wins[wi], worst);
        }
    }

    lf_backend *be = use_cfg(0);
    float buf[1024] = {0}, o[1024];
    pos[0] = 3;
    lf_status st = be->ops->attention_forward(be, lf_f32(o), lf_f32(buf), lf_f32(buf), lf_f32(buf), pos, 1, 3, 1, 1, 16, 0, 1.0f);
    check(st == LF_EINVAL && strstr(be->err.msg, "pos[0]=3"), "attention pos >= S -> LF_EINVAL (%s)", be->err.msg);
    pos[0] = 0;
    st = be->ops->attention_forward(be, lf_f32(o), lf_f32(buf), lf_f32(buf), lf_f32(buf), pos, 1, 1, 1, 1, 513, 0, 1.0f);
    check(st == LF_EINVAL && strstr(be->err.msg, "513"), "attention D=513 -> LF_EINVAL (%s)", be->err.msg);
    st = be->ops->attention_forward(be, lf_f32(o), lf_f32(buf), lf_f32(buf), lf_f32(buf), pos, 1, 1, 6, 4, 16, 0, 1.0f);
    check(st == LF_EINVAL, "attention H=6 KH=4 -> LF_EINVAL (%s)", be->err.msg);
}

/* ==== swiglu, residual, softmax ==== */

static void test_elementwise(void) {
    const int64_t Ns[] = {1, 7, 8, 9, 100, 1000, 3 * 65536 + 5};
    for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++) {
        int64_t N = Ns[ni];
        float *g = xmalloc((size_t)N * 4), *u = xmalloc((size_t)N * 4), *ref = xmalloc((size_t)N * 4);
        float *out = alloc_out(N);
        fill(g, N, -20.0f, 20.0f);
        fill(u, N, -2.0f, 2.0f);
        const float special[] = {0.0f, -0.0f, 100.0f, -100.0f, 88.5f, -88.5f, -87.0f, 87.0f, 1e-20f};
        for (int i = 0; i < 9 && i < N; i++) g[N - 1 - i] = special[i];
        lf_cpu_swiglu_forward_ref(ref, g, u, N);
        for (int alias = 0; alias < 3; alias++) {
            case_res cr;
            for (int ci = 0; ci < NCFG; ci++) {
                lf_backend *be = use_cfg(ci);
                lf_status s;
                if (alias == 0)
                    s = be->ops->swiglu_forward(be, lf_f32(out), lf_f32(g), lf_f32(u), N);
                else if (alias == 1)
                    memcpy(out, g, (size_t)N * 4), s = be->ops->swiglu_forward(be, lf_f32(out), lf_f32(out), lf_f32(u), N);
                else
                    memcpy(out, u, (size_t)N * 4), s = be->ops->swiglu_forward(be, lf_f32(out), lf_f32(g), lf_f32(out), N);
                /* f32 exp (~2 ulp), one add, one division, one multiply: <= ~6 ulp relative, 1e-6 leaves room;
                 * 1e-35 absolute: for x < -88.37 exp(-x) overflows and silu(x) = -0 where the exact value is
                 * below 5e-37 */
                double e, r = worst_ratio(out, ref, N, NULL, 1e-35, 1e-6, &e);
                if (!guard_ok(out, N)) r = INFINITY;
                case_record(&cr, ci, s, r, e);
            }
            case_finish(&cr, "swiglu N=%lld%s", (long long)N, alias == 1 ? " out=gate" : alias == 2 ? " out=up" : "");
        }
        lf_cpu_residual_forward_ref(ref, g, u, N);
        for (int alias = 0; alias < 3; alias++) {
            case_res cr;
            for (int ci = 0; ci < NCFG; ci++) {
                lf_backend *be = use_cfg(ci);
                lf_status s;
                if (alias == 0)
                    s = be->ops->residual_forward(be, lf_f32(out), lf_f32(g), lf_f32(u), N);
                else if (alias == 1)
                    memcpy(out, g, (size_t)N * 4), s = be->ops->residual_forward(be, lf_f32(out), lf_f32(out), lf_f32(u), N);
                else
                    memcpy(out, u, (size_t)N * 4), s = be->ops->residual_forward(be, lf_f32(out), lf_f32(g), lf_f32(out), N);
                double e, r = worst_ratio(out, ref, N, NULL, 0.0, 0.0, &e); /* one f32 add: exact equality */
                if (!guard_ok(out, N)) r = INFINITY;
                case_record(&cr, ci, s, r, e);
            }
            case_finish(&cr, "residual N=%lld%s", (long long)N, alias == 1 ? " out=a" : alias == 2 ? " out=b" : "");
        }
        free(g), free(u), free(ref), free(out);
    }
}

static void test_softmax(void) {
    const int64_t Rs[] = {1, 3, 17}, Vs[] = {1, 7, 8, 129, 1000, 32003};
    for (size_t ri = 0; ri < 3; ri++)
        for (size_t vi = 0; vi < 6; vi++)
            for (int kind = 0; kind < 3; kind++) {
                int64_t R = Rs[ri], V = Vs[vi];
                if (R == 17 && V == 32003) continue;
                float *x = xmalloc((size_t)(R * V) * 4), *ref = xmalloc((size_t)(R * V) * 4);
                float *out = alloc_out(R * V);
                fill(x, R * V, -10.0f, 10.0f);
                if (kind == 1) /* large offset: only a max-subtracted softmax survives */
                    for (int64_t i = 0; i < R * V; i++) x[i] += 1000.0f;
                if (kind == 2) /* masked entries */
                    for (int64_t i = 0; i < R * V; i += 3)
                        if (i % V != 0) x[i] = -INFINITY;
                lf_cpu_softmax_forward_ref(ref, x, R, V);
                for (int alias = 0; alias < 2; alias++) {
                    case_res cr;
                    for (int ci = 0; ci < NCFG; ci++) {
                        lf_backend *be = use_cfg(ci);
                        lf_status s;
                        if (alias)
                            memcpy(out, x, (size_t)(R * V) * 4), s = be->ops->softmax_forward(be, lf_f32(out), lf_f32(out), R, V);
                        else
                            s = be->ops->softmax_forward(be, lf_f32(out), lf_f32(x), R, V);
                        /* x - max is rounded in f32 (the ref subtracts in double): |x - max| <= 20 here, so the
                         * exponent is off by up to 20 * 2^-24 absolute = that much relative in exp; then f32 exp
                         * (~2 ulp) and a multiply by the f32 reciprocal of a double sum (2 roundings): 1e-6 on top.
                         * 1e-37 absolute for exps flushed below FLT_MIN. */
                        double e, r = worst_ratio(out, ref, R * V, NULL, 1e-37, 20.0 * 0x1p-24 + 1e-6, &e);
                        if (!guard_ok(out, R * V)) r = INFINITY;
                        case_record(&cr, ci, s, r, e);
                    }
                    case_finish(&cr, "softmax R=%lld V=%lld%s%s", (long long)R, (long long)V,
                                kind == 1   ? " +1000"
                                : kind == 2 ? " masked"
                                            : "",
                                alias ? " out=inp" : "");
                }
                free(x), free(ref), free(out);
            }
}

/* ==== backend plumbing ==== */

static void test_backend(void) {
    for (int ci = 0; ci < NCFG; ci++) {
        lf_backend *be = cfgs[ci].be;
        check(lf_backend_cpu_threads(be) == cfgs[ci].threads && strcmp(be->name, "cpu") == 0 &&
                  be->device == LF_DEVICE_CPU,
              "cpu backend [%s] name/device/threads=%d", cfgs[ci].name, lf_backend_cpu_threads(be));
    }
    lf_backend *be = cfgs[0].be;
    float src[37], back[37];
    fill(src, 37, -1.0f, 1.0f);
    float *d = be->ops->alloc(be, sizeof src), *d2 = be->ops->alloc(be, sizeof src);
    int ok = d && d2 && ((uintptr_t)d % 64 == 0) && ((uintptr_t)d2 % 64 == 0);
    ok = ok && be->ops->upload(be, d, src, sizeof src) == LF_OK && be->ops->copy(be, d2, d, sizeof src) == LF_OK &&
         be->ops->download(be, back, d2, sizeof src) == LF_OK && be->ops->synchronize(be) == LF_OK &&
         memcmp(src, back, sizeof src) == 0;
    be->ops->free(be, d);
    be->ops->free(be, d2);
    be->ops->free(be, NULL);
    check(ok, "cpu alloc (64-byte aligned) / upload / copy / download / free");
    lf_backend_free(NULL);
    check(1, "lf_backend_free(NULL) is a no-op");
#ifndef LF_WITH_CUDA
    lf_err err;
    lf_err_clear(&err);
    lf_backend *cu = lf_backend_cuda_create(0, &err);
    check(cu == NULL && err.code != LF_OK && strstr(err.msg, "without CUDA") && !lf_backend_cuda_built(),
          "cuda stubs without CUDA: NULL + \"%s\"", err.msg);
#endif
}

int main(void) {
    const char *env = getenv("LF_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 0) : ((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20));
    rng_state = seed;
    const char *no_simd = getenv("LF_CPU_NO_SIMD");
    int simd_env = lf_cpu_simd(); /* the choice made from the CPU flags and LF_CPU_NO_SIMD */
    int simd_hw = lf_cpu_set_simd(1);
    printf("test_cpu_ops: seed %llu (set LF_TEST_SEED to repeat); AVX2/FMA/F16C %s\n", (unsigned long long)seed,
           simd_hw ? "available" : "NOT available: the *-avx2 configurations run the portable path");
    check(simd_env == (simd_hw && !(no_simd && strcmp(no_simd, "1") == 0)),
          "LF_CPU_NO_SIMD=%s -> initial SIMD %d (hardware %d)", no_simd ? no_simd : "(unset)", simd_env, simd_hw);
    for (int ci = 0; ci < NCFG; ci++) {
        cfgs[ci].be = lf_backend_cpu_create(cfgs[ci].threads);
        if (!cfgs[ci].be) {
            printf("FAIL lf_backend_cpu_create(%d)\n0 passed, 1 failed\n", cfgs[ci].threads);
            return 1;
        }
    }
    test_backend();
    test_embedding();
    test_rmsnorm();
    test_rope();
    test_attention();
    test_elementwise();
    test_softmax();
    test_matmul();
    for (int ci = 0; ci < NCFG; ci++) lf_backend_free(cfgs[ci].be);
    lf_cpu_set_simd(1);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
