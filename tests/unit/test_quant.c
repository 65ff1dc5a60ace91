/* test_quant.c - quant: code tables, decision trees vs brute-force nearest code, quantize/dequantize error
 * bounds from the code spacing (N(0,1) and a Llama-shaped weight), ragged sizes and every blocksize, double
 * quantization bound, fast dequant/matmul vs _ref vs dequantize-then-matmul (1/2 threads, every SIMD level:
 * portable, AVX2, AVX-512, AVX-512 + BF16 where the CPU has them), every matmul driver (rows: T <= 4; panel: larger T;
 * generic: C % 32 != 0) over T = 1..17, ragged C and OC, blocks straddling rows, blocksizes 32..4096,
 * nf4/fp4, double quant on/off, non-finite absmax in the bf16 dequantize, and bad input.
 * Seed from LF_TEST_SEED or time, printed. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/rng.h"
#include "core/tensor.h"
#include "core/threadpool.h"
#include "quant/quant.h"

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

/* ---- brute-force references ---- */
static int argmin_code(const float *table, int count, float v) { /* torch argmin: first index on ties */
    int best = 0;
    float bd = fabsf(v - table[0]);
    for (int i = 1; i < count; i++) {
        float d = fabsf(v - table[i]);
        if (d < bd) bd = d, best = i;
    }
    return best;
}

static int ulps_apart(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    if ((ia < 0) != (ib < 0)) return (a == b) ? 0 : 1 << 30;
    return abs(ia - ib);
}

static void test_tables(void) {
    static const float nf4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                                  -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                                  0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f,
                                  0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
                                  0.7229568362236023f, 1.0f};
    static const float fp4_bits[16] = {0, .0625f, 8, 12, 4, 6, 2, 3, -0.0f, -.0625f, -8, -12, -4, -6, -2, -3};
    const float *t = lf_quant_code_table(LF_QUANT_NF4), *f = lf_quant_code_table(LF_QUANT_FP4);
    volatile float twelve = 12.0f; /* runtime f32 division, as torch's div_ */
    for (int i = 0; i < 16; i++) {
        CHECK(memcmp(&t[i], &nf4[i], 4) == 0, "nf4[%d] = %.9g", i, t[i]);
        float want = fp4_bits[i] / twelve;
        CHECK(memcmp(&f[i], &want, 4) == 0, "fp4[%d] = %.9g want %.9g", i, f[i], want);
        CHECK(lf_quant_nf4_code(t[i]) == i, "nf4 code of table[%d] = %d", i, lf_quant_nf4_code(t[i]));
        /* -0.0 is not < 0, so dQuantizeFP4 gives code 0 for it; every other value maps back to itself */
        CHECK(lf_quant_fp4_code(f[i]) == (i == 8 ? 0 : i), "fp4 code of table[%d] = %d", i, lf_quant_fp4_code(f[i]));
    }
    /* NF4 thresholds (kernels.cu literals) sit between their two codes within 2 ulps of the exact midpoint;
     * 4 of the 15 (k = 0, 8, 12, 14) are not the f32-rounded midpoint, so the tree, not argmin, is the rule */
    static const float th[15] = LF_QUANT_NF4_THRESH_INIT;
    for (int i = 0; i < 15; i++) {
        float mid = (float)(((double)nf4[i] + (double)nf4[i + 1]) / 2.0);
        CHECK(nf4[i] < th[i] && th[i] < nf4[i + 1] && ulps_apart(th[i], mid) <= 2, "nf4 threshold %d %.9g vs midpoint %.9g",
              i, th[i], mid);
    }
    float m[256];
    lf_quant_dynamic_map_signed(m);
    int sorted = 1;
    for (int i = 1; i < 256; i++) sorted &= m[i - 1] < m[i];
    CHECK(sorted && m[127] == 0.0f && m[255] == 1.0f && m[128] == 5.50000039e-07f && m[0] == -0.992968738f,
          "dynamic map: sorted %d m[127]=%g m[128]=%.9g m[0]=%.9g m[255]=%g", sorted, m[127], m[128], m[0], m[255]);
}

static void test_nearest(void) {
    const float *nf = lf_quant_code_table(LF_QUANT_NF4), *fp = lf_quant_code_table(LF_QUANT_FP4);
    static const float nth[15] = LF_QUANT_NF4_THRESH_INIT, fth[7] = LF_QUANT_FP4_THRESH_INIT;
    float fmag[8];
    for (int i = 0; i < 8; i++) fmag[i] = fp[i];
    int n_nf = 0, n_nf_bad = 0, n_fp = 0, n_fp_bad = 0, n_dyn_bad = 0;
    float map[256];
    lf_quant_dynamic_map_signed(map);
    for (int it = 0; it < 2000000; it++) {
        float v;
        int kind = it % 4;
        if (kind == 0) v = lf_rng_uniform(&rng) * 2.0f - 1.0f;
        else if (kind == 1) { /* within a few ulps of an NF4 threshold */
            v = nth[lf_rng_next(&rng) % 15];
            for (int k = (int)(lf_rng_next(&rng) % 9) - 4; k != 0; k += k > 0 ? -1 : 1) v = nextafterf(v, k > 0 ? 2.f : -2.f);
        } else if (kind == 2) { /* near an FP4 threshold, either sign */
            v = fth[lf_rng_next(&rng) % 7];
            for (int k = (int)(lf_rng_next(&rng) % 17) - 8; k != 0; k += k > 0 ? -1 : 1) v = nextafterf(v, k > 0 ? 2.f : -2.f);
            if (lf_rng_next(&rng) & 1) v = -v;
        } else { /* near a dynamic map midpoint */
            int i = (int)(lf_rng_next(&rng) % 255);
            v = (float)(((double)map[i] + map[i + 1]) / 2.0);
            for (int k = (int)(lf_rng_next(&rng) % 5) - 2; k != 0; k += k > 0 ? -1 : 1) v = nextafterf(v, k > 0 ? 2.f : -2.f);
        }
        /* NF4: tree vs argmin; a disagreement is allowed only at an exact-midpoint tie (within 2 ulps) */
        int a = lf_quant_nf4_code(v), b = argmin_code(nf, 16, v);
        n_nf++;
        if (a != b) {
            int near = 0;
            for (int k = 0; k < 15; k++) near |= ulps_apart(v, nth[k]) <= 2;
            if (!near) n_nf_bad++;
        }
        /* FP4: sign bit + argmin over magnitudes; disagreements only near the kernel's thresholds (the
         * 0.583333f literal is 5 ulps below 7/12) */
        int fa = lf_quant_fp4_code(v), fb = argmin_code(fmag, 8, fabsf(v)) + (v < 0 ? 8 : 0);
        n_fp++;
        if (fa != fb) {
            int near = 0;
            for (int k = 0; k < 7; k++) near |= ulps_apart(fabsf(v), fth[k]) <= 8;
            if (!near) n_fp_bad++;
        }
        /* dynamic map: our bracketing search must equal brute-force argmin exactly */
        if (lf_quant_map_code(map, v) != argmin_code(map, 256, v)) n_dyn_bad++;
    }
    printf("nearest: %d nf4 / %d fp4 / %d map values checked\n", n_nf, n_fp, n_nf);
    CHECK(n_nf_bad == 0, "nf4 tree disagrees with argmin away from midpoints %d times", n_nf_bad);
    CHECK(n_fp_bad == 0, "fp4 tree disagrees with argmin away from thresholds %d times", n_fp_bad);
    CHECK(n_dyn_bad == 0, "dynamic-map code disagrees with argmin %d times", n_dyn_bad);
}

static float max_half_gap(lf_quant_type t) {
    const float *c = lf_quant_code_table(t);
    float s[16];
    memcpy(s, c, sizeof(s));
    for (int i = 0; i < 16; i++) /* sort */
        for (int j = i + 1; j < 16; j++)
            if (s[j] < s[i]) { float x = s[i]; s[i] = s[j]; s[j] = x; }
    float g = 0;
    for (int i = 0; i < 15; i++) g = fmaxf(g, s[i + 1] - s[i]);
    return g / 2;
}

/* Quantize x (n = rows*cols), dequantize with _ref, check the exact absmax, the bound, and print stats. */
static void roundtrip(const char *name, const float *x, int64_t rows, int64_t cols, int64_t B, lf_quant_type t,
                      int verbose) {
    lf_quant_state st;
    lf_err err;
    int64_t n = rows * cols;
    lf_status s = lf_quant_quantize(&st, x, LF_DTYPE_F32, rows, cols, B, t, 0, &err);
    CHECK(s == LF_OK, "%s quantize: %s", name, err.msg);
    if (s) return;
    float *y = malloc((size_t)n * 4);
    lf_quant_dequantize_f32_ref(y, &st, &err);
    /* slack: the FP4 kernel thresholds sit up to ~5 ulp off the midpoints */
    double bound = (double)max_half_gap(t) + 1e-6;
    double sum = 0, mx = 0, bsum = 0, bmax = 0;
    int bad_abs = 0, bad_bound = 0;
    for (int64_t b = 0; b < st.nblocks; b++) {
        int64_t e0 = b * B, e1 = e0 + B < n ? e0 + B : n;
        float a = 0;
        double be = 0;
        for (int64_t e = e0; e < e1; e++) a = fmaxf(a, fabsf(x[e]));
        bad_abs += a != st.absmax[b];
        for (int64_t e = e0; e < e1; e++) {
            double d = fabs((double)x[e] - y[e]);
            sum += d;
            be += d;
            mx = fmax(mx, d);
            if (d > bound * a) bad_bound++;
        }
        be /= (double)(e1 - e0);
        bsum += be;
        bmax = fmax(bmax, be);
    }
    if (n & 1) CHECK((st.packed[n / 2] & 0xF) == 0, "%s odd n: pad nibble %d", name, st.packed[n / 2] & 0xF);
    CHECK(bad_abs == 0, "%s: %d absmax values differ from max|x|", name, bad_abs);
    CHECK(bad_bound == 0, "%s: %d elements exceed half the largest gap x absmax", name, bad_bound);
    if (verbose)
        printf("%-28s B=%-4lld elem mean %.3e max %.3e | block-mean mean %.3e max %.3e (bound %.3f x absmax)\n", name,
               (long long)B, sum / (double)n, mx, bsum / (double)st.nblocks, bmax, bound);
    free(y);
    lf_quant_state_free(&st);
}

static void test_roundtrip(void) {
    int64_t n = 1 << 20;
    float *x = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) x[i] = lf_rng_normal(&rng);
    roundtrip("N(0,1) nf4", x, 1024, 1024, 64, LF_QUANT_NF4, 1);
    roundtrip("N(0,1) fp4", x, 1024, 1024, 64, LF_QUANT_FP4, 1);
    free(x);
    /* Llama-shaped: 2048 x 5632 (mlp of a 1B-class model), std 0.02 with a few outliers */
    int64_t R = 2048, Cc = 5632;
    x = malloc((size_t)(R * Cc) * 4);
    for (int64_t i = 0; i < R * Cc; i++) x[i] = 0.02f * lf_rng_normal(&rng) * ((i % 9973) == 0 ? 8.0f : 1.0f);
    roundtrip("llama 2048x5632 nf4", x, R, Cc, 64, LF_QUANT_NF4, 1);
    roundtrip("llama 2048x5632 fp4", x, R, Cc, 64, LF_QUANT_FP4, 1);
    /* ragged sizes and every blocksize */
    int cases = 0;
    for (int64_t B = 32; B <= 4096; B *= 2) {
        int64_t sizes[] = {1, 2, 7, B - 1, B, B + 1, 3 * B + 17, 5 * B};
        for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
            for (int64_t i = 0; i < sizes[k]; i++) x[i] = lf_rng_normal(&rng) * 3.0f;
            if (k == 7) memset(x + B, 0, (size_t)B * 4); /* one all-zero block */
            char name[64];
            snprintf(name, sizeof(name), "ragged n=%lld", (long long)sizes[k]);
            roundtrip(name, x, 1, sizes[k], B, LF_QUANT_NF4, 0);
            roundtrip(name, x, 1, sizes[k], B, LF_QUANT_FP4, 0);
            cases += 2;
        }
    }
    printf("ragged: %d cases over blocksizes 32..4096\n", cases);
    /* zero block decodes to +0 exactly with the code of 0.0 */
    float z[64] = {0};
    lf_quant_state st;
    lf_err err;
    lf_quant_quantize(&st, z, LF_DTYPE_F32, 1, 64, 64, LF_QUANT_NF4, 0, &err);
    float y[64];
    lf_quant_dequantize_f32_ref(y, &st, &err);
    CHECK(st.packed[0] == 0x77 && y[0] == 0.0f && !signbit(y[0]), "zero block: byte %02x y %g", st.packed[0], y[0]);
    lf_quant_state_free(&st);
    /* bf16 input = quantizing its f32 widening */
    uint16_t hb[300];
    float hf[300];
    for (int i = 0; i < 300; i++) hb[i] = lf_f32_to_bf16(lf_rng_normal(&rng)), hf[i] = lf_bf16_to_f32(hb[i]);
    lf_quant_state s1, s2;
    lf_quant_quantize(&s1, hb, LF_DTYPE_BF16, 3, 100, 32, LF_QUANT_NF4, 1, &err);
    lf_quant_quantize(&s2, hf, LF_DTYPE_F32, 3, 100, 32, LF_QUANT_NF4, 1, &err);
    CHECK(memcmp(s1.packed, s2.packed, 150) == 0 && memcmp(s1.absmax_q, s2.absmax_q, (size_t)s1.nblocks) == 0,
          "bf16 quantize differs from f32 quantize of the same values");
    lf_quant_state_free(&s1);
    lf_quant_state_free(&s2);
    free(x);
}

static void test_double_quant(void) {
    float map[256];
    lf_quant_dynamic_map_signed(map);
    int64_t sizes[][3] = {{4096, 4096, 64}, {1, 7, 32}, {333, 517, 64}, {1000, 1000, 128}, {64, 64, 4096}};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        int64_t R = sizes[k][0], C = sizes[k][1], B = sizes[k][2], n = R * C;
        float *x = malloc((size_t)n * 4);
        float sc = 0.01f + lf_rng_uniform(&rng);
        for (int64_t i = 0; i < n; i++) x[i] = sc * lf_rng_normal(&rng);
        lf_quant_state plain, dq;
        lf_err err;
        CHECK(lf_quant_quantize(&plain, x, LF_DTYPE_F32, R, C, B, LF_QUANT_NF4, 0, &err) == LF_OK, "%s", err.msg);
        CHECK(lf_quant_quantize(&dq, x, LF_DTYPE_F32, R, C, B, LF_QUANT_NF4, 1, &err) == LF_OK, "%s", err.msg);
        CHECK(memcmp(plain.packed, dq.packed, (size_t)(n + 1) / 2) == 0, "packed differs with double quant");
        double mx = 0;
        int bad = 0;
        for (int64_t b = 0; b < dq.nblocks; b++) {
            double a2 = dq.nested_absmax[b / 256];
            double v = ((double)plain.absmax[b] - dq.offset) / a2;
            int lo = 0;
            while (lo < 254 && map[lo + 1] <= v) lo++;
            double step = (double)map[lo + 1] - map[lo];
            double err_abs = fabs((double)lf_quant_state_absmax(&dq, b) - plain.absmax[b]);
            mx = fmax(mx, err_abs / a2);
            /* bnb bound: half the local map step x absmax2, plus f32 rounding of the two ops */
            if (err_abs > (step / 2) * a2 + 4e-7 * (fabs(plain.absmax[b]) + fabs(dq.offset) + a2)) bad++;
        }
        printf("double quant %lldx%lld B=%lld: %lld blocks, offset %.6g, max |absmax err|/absmax2 %.3e\n",
               (long long)R, (long long)C, (long long)B, (long long)dq.nblocks, dq.offset, mx);
        CHECK(bad == 0, "double quant: %d absmax beyond half a map step", bad);
        size_t want = (size_t)((n + 1) / 2) + (size_t)dq.nblocks + (size_t)dq.n_nested * 4 + 1024;
        CHECK(lf_quant_state_nbytes(&dq) == want, "nbytes %zu want %zu", lf_quant_state_nbytes(&dq), want);
        lf_quant_state_free(&plain);
        lf_quant_state_free(&dq);
        free(x);
    }
}

static void test_fast_paths(void) {
    lf_pool *p1 = lf_pool_create(1), *p2 = lf_pool_create(2);
    lf_pool *pools[3] = {NULL, p1, p2};
    const int have_simd = lf_quant_set_simd_level(LF_QUANT_SIMD_AVX512_BF16); /* the best level this CPU has */
    printf("fast paths: SIMD levels 0..%d (0 portable, 1 AVX2, 2 AVX-512, 3 AVX-512 + BF16)\n", have_simd);
    int64_t shapes[][4] = {{1, 64, 5, 64}, {3, 100, 7, 32}, {17, 33, 9, 32}, {5, 4096, 64, 64}, {2, 1000, 13, 256}, {8, 256, 1, 4096}, {2, 2049, 5, 32}};
    for (size_t k = 0; k < sizeof(shapes) / sizeof(shapes[0]); k++)
        for (int nested = 0; nested < 2; nested++)
            for (int typ = 0; typ < 2; typ++) {
                int64_t T = shapes[k][0], C = shapes[k][1], OC = shapes[k][2], B = shapes[k][3], n = C * OC;
                float *w = malloc((size_t)n * 4), *x = malloc((size_t)(T * C) * 4), *bias = malloc((size_t)OC * 4);
                for (int64_t i = 0; i < n; i++) w[i] = 0.05f * lf_rng_normal(&rng);
                for (int64_t i = 0; i < T * C; i++) x[i] = lf_rng_normal(&rng);
                for (int64_t i = 0; i < OC; i++) bias[i] = lf_rng_normal(&rng);
                lf_quant_state st;
                lf_err err;
                lf_quant_quantize(&st, w, LF_DTYPE_F32, OC, C, B, (lf_quant_type)typ, nested, &err);
                float *dref = malloc((size_t)n * 4), *d = malloc((size_t)n * 4);
                uint16_t *db = malloc((size_t)n * 2);
                float *oref = malloc((size_t)(T * OC) * 4), *o = malloc((size_t)(T * OC) * 4);
                double *odq = malloc((size_t)(T * OC) * 8), *mag = malloc((size_t)(T * OC) * 8);
                lf_quant_dequantize_f32_ref(dref, &st, &err);
                for (int64_t t = 0; t < T; t++)
                    for (int64_t oc = 0; oc < OC; oc++) {
                        double acc = bias[oc], m = fabs(bias[oc]);
                        for (int64_t c = 0; c < C; c++) {
                            acc += (double)x[t * C + c] * dref[oc * C + c];
                            m += fabs((double)x[t * C + c] * dref[oc * C + c]);
                        }
                        odq[t * OC + oc] = acc;
                        mag[t * OC + oc] = m;
                    }
                lf_quant_matmul_4bit_ref(oref, x, &st, bias, T, C, OC, &err);
                int bad_ref = 0;
                for (int64_t i = 0; i < T * OC; i++) bad_ref += fabs(oref[i] - odq[i]) > 1e-6 * mag[i] * (double)C + 1e-6;
                CHECK(bad_ref == 0, "matmul_ref vs dequant+matmul: %d bad (T=%lld C=%lld OC=%lld)", bad_ref, (long long)T,
                      (long long)C, (long long)OC);
                for (int simd = 0; simd <= have_simd; simd++)
                    for (int pi = 0; pi < 3; pi++) {
                        CHECK(lf_quant_set_simd_level(simd) == simd, "simd level %d not set", simd);
                        lf_quant_dequantize_f32(d, &st, pools[pi], &err);
                        CHECK(memcmp(d, dref, (size_t)n * 4) == 0, "dequant fast != ref (simd %d pool %d shape %zu)", simd, pi, k);
                        lf_quant_dequantize_bf16(db, &st, pools[pi], &err);
                        int bb = 0;
                        for (int64_t i = 0; i < n; i++) bb += db[i] != lf_f32_to_bf16(dref[i]);
                        CHECK(bb == 0, "dequant bf16: %d differ (simd %d pool %d)", bb, simd, pi);
                        lf_quant_matmul_4bit(o, x, &st, pi == 2 ? NULL : bias, T, C, OC, pools[pi], NULL, &err);
                        int bad = 0;
                        for (int64_t i = 0; i < T * OC; i++) {
                            double want = odq[i] - (pi == 2 ? bias[i % OC] : 0.0);
                            /* f32 accumulation in a different order: tol = C * eps * sum|terms| */
                            bad += fabs(o[i] - want) > 1e-6 * mag[i] * (double)C + 1e-6;
                        }
                        CHECK(bad == 0, "matmul fast: %d bad (simd %d pool %d T=%lld C=%lld OC=%lld nested %d)", bad, simd, pi,
                              (long long)T, (long long)C, (long long)OC, nested);
                    }
                lf_quant_set_simd(1);
                lf_quant_state_free(&st);
                free(w), free(x), free(bias), free(dref), free(d), free(db), free(oref), free(o), free(odq), free(mag);
            }
    lf_pool_destroy(p1);
    lf_pool_destroy(p2);
}

/* Every matmul driver against dequantize-then-matmul in double: T = 1..17 (rows driver up to 4 (AVX-512) /
 * 2 (AVX2), panel above), shapes with C % B == 0, blocks straddling rows (C % 32 == 0, C % B != 0), C % 32 != 0
 * (generic driver; odd C starts rows mid-byte), OC not a multiple of the 4- or 8-row tiles, every blocksize,
 * nf4/fp4, double quant on/off, bias or not, caller thread / 2 threads, each SIMD level. Dequantize (f32
 * and bf16) must match the _ref bit for bit on the same states. */
static void test_matmul_paths(void) {
    static const int64_t cases[][3] = {/* C, OC, B */
                                       {64, 9, 64},    {96, 13, 64},  {2048, 11, 64}, {160, 7, 32},
                                       {256, 6, 128},  {4096, 3, 4096}, {1536, 5, 1024}, {33, 5, 32},
                                       {100, 7, 32},   {512, 17, 256}, {8192, 2, 2048}};
    const int ncase = (int)(sizeof(cases) / sizeof(cases[0]));
    lf_pool *p2 = lf_pool_create(2);
    const int top = lf_quant_set_simd_level(LF_QUANT_SIMD_AVX512_BF16);
    int calls = 0, bad_mm = 0, bad_dq = 0;
    for (int ci = 0; ci < ncase; ci++)
        for (int typ = 0; typ < 2; typ++)
            for (int nested = 0; nested < 2; nested++) {
                const int64_t C = cases[ci][0], OC = cases[ci][1], B = cases[ci][2], n = C * OC, TM = 17;
                float *w = malloc((size_t)n * 4), *x = malloc((size_t)(TM * C) * 4), *bias = malloc((size_t)OC * 4);
                float *dref = malloc((size_t)n * 4), *d = malloc((size_t)n * 4), *o = malloc((size_t)(TM * OC) * 4);
                double *want = malloc((size_t)(TM * OC) * 8), *mag = malloc((size_t)(TM * OC) * 8);
                uint16_t *db = malloc((size_t)n * 2);
                const float scale = 0.01f + lf_rng_uniform(&rng);
                for (int64_t i = 0; i < n; i++) w[i] = scale * lf_rng_normal(&rng);
                for (int64_t i = 0; i < TM * C; i++) x[i] = lf_rng_normal(&rng);
                for (int64_t i = 0; i < OC; i++) bias[i] = lf_rng_normal(&rng);
                lf_quant_state st;
                lf_err err;
                if (lf_quant_quantize(&st, w, LF_DTYPE_F32, OC, C, B, (lf_quant_type)typ, nested, &err) != LF_OK) {
                    CHECK(0, "quantize C=%lld OC=%lld B=%lld: %s", (long long)C, (long long)OC, (long long)B, err.msg);
                    continue;
                }
                lf_quant_dequantize_f32_ref(dref, &st, &err);
                for (int64_t t = 0; t < TM; t++)
                    for (int64_t oc = 0; oc < OC; oc++) {
                        double acc = 0, m = 0;
                        for (int64_t c = 0; c < C; c++) {
                            double p = (double)x[t * C + c] * dref[oc * C + c];
                            acc += p, m += fabs(p);
                        }
                        want[t * OC + oc] = acc, mag[t * OC + oc] = m;
                    }
                for (int lvl = 0; lvl <= top; lvl++) {
                    lf_quant_set_simd_level(lvl);
                    for (int pi = 0; pi < 2; pi++) {
                        lf_pool *pool = pi ? p2 : NULL;
                        lf_quant_dequantize_f32(d, &st, pool, &err);
                        lf_quant_dequantize_bf16(db, &st, pool, &err);
                        int bd = memcmp(d, dref, (size_t)n * 4) != 0;
                        for (int64_t i = 0; i < n; i++) bd += db[i] != lf_f32_to_bf16(dref[i]);
                        bad_dq += bd != 0;
                        CHECK(bd == 0, "dequantize C=%lld OC=%lld B=%lld typ %d nested %d simd %d pool %d: %d differ",
                              (long long)C, (long long)OC, (long long)B, typ, nested, lvl, pi, bd);
                        for (int64_t T = 1; T <= TM; T++) {
                            const float *bs = (T + pi) % 2 ? bias : NULL;
                            lf_status s = lf_quant_matmul_4bit(o, x, &st, bs, T, C, OC, pool, NULL, &err);
                            calls++;
                            int bad = s != LF_OK;
                            for (int64_t i = 0; i < T * OC && !bad; i++) {
                                const double b = bs ? bias[i % OC] : 0.0, want_i = want[i] + b;
                                /* f32 sums in a different order: C * 1e-6 (~16 eps) x sum |terms| */
                                bad += fabs(o[i] - want_i) > 1e-6 * (mag[i] + fabs(b)) * (double)C + 1e-6;
                            }
                            bad_mm += bad != 0;
                            CHECK(bad == 0, "matmul C=%lld OC=%lld B=%lld T=%lld typ %d nested %d simd %d pool %d",
                                  (long long)C, (long long)OC, (long long)B, (long long)T, typ, nested, lvl, pi);
                        }
                    }
                }
                lf_quant_set_simd(1);
                lf_quant_state_free(&st);
                free(w), free(x), free(bias), free(dref), free(d), free(o), free(want), free(mag), free(db);
            }
    printf("matmul paths: %d calls over %d shapes x nf4/fp4 x double quant x T 1..17 x %d SIMD levels x 2 pools, "
           "%d bad; dequantize %d bad\n", calls, ncase, top + 1, bad_mm, bad_dq);

    /* bf16 dequantize, against the rounding of the f32 reference, of blocks whose absmax is inf (the SIMD paths
     * leave it to the scalar rounding: inf * code gives inf and NaN), normal, 1e-38 (subnormal products: not
     * for vcvtne2ps2bf16, which flushes them) and 1e-30 (just above its 2^-100 limit) */
    float wi[256];
    for (int i = 0; i < 256; i++) wi[i] = lf_rng_normal(&rng) * (i >= 192 ? 1e-30f : i >= 128 ? 1e-38f : 1.0f);
    wi[5] = INFINITY;
    lf_quant_state st;
    lf_err err;
    CHECK(lf_quant_quantize(&st, wi, LF_DTYPE_F32, 4, 64, 64, LF_QUANT_NF4, 0, &err) == LF_OK, "inf quantize");
    float ref[256], f[256];
    uint16_t hb[256];
    lf_quant_dequantize_f32_ref(ref, &st, &err);
    for (int lvl = 0; lvl <= top; lvl++) {
        lf_quant_set_simd_level(lvl);
        lf_quant_dequantize_f32(f, &st, NULL, &err);
        lf_quant_dequantize_bf16(hb, &st, NULL, &err);
        int bd = memcmp(f, ref, sizeof f) != 0, sub = 0;
        for (int i = 0; i < 256; i++) bd += hb[i] != lf_f32_to_bf16(ref[i]), sub += fpclassify(ref[i]) == FP_SUBNORMAL;
        CHECK(bd == 0 && isinf(st.absmax[0]) && sub > 0, "inf/tiny absmax blocks, simd %d: %d differ (%d subnormal)",
              lvl, bd, sub);
    }
    lf_quant_set_simd(1);
    lf_quant_state_free(&st);
    CHECK(lf_quant_set_simd_level(-1) == 0 && lf_quant_simd_active() == 0, "simd level -1 -> portable");
    CHECK(lf_quant_set_simd_level(99) == top, "simd level 99 -> the best (%d)", top);
    lf_quant_set_simd(1);
    lf_pool_destroy(p2);
}

static void test_bad_input(void) {
    float x[64] = {1};
    uint8_t p[32];
    float a[2];
    lf_err err;
    int64_t bad_b[] = {0, 16, 48, 100, 8192, -64};
    for (size_t i = 0; i < sizeof(bad_b) / sizeof(bad_b[0]); i++) {
        lf_err_clear(&err);
        lf_status s = lf_quant_quantize_4bit_f32(p, a, x, 64, bad_b[i], LF_QUANT_NF4, &err);
        CHECK(s == LF_EINVAL && strstr(err.msg, "blocksize"), "blocksize %lld: %d '%s'", (long long)bad_b[i], s, err.msg);
    }
    lf_quant_state st;
    CHECK(lf_quant_quantize(&st, x, LF_DTYPE_F16, 1, 64, 64, LF_QUANT_NF4, 0, &err) == LF_EUNSUPPORTED, "f16 input");
    CHECK(lf_quant_quantize(&st, x, LF_DTYPE_F32, 0, 64, 64, LF_QUANT_NF4, 0, &err) == LF_EINVAL, "empty shape");
    float map[256];
    lf_quant_dynamic_map_signed(map);
    uint8_t q[2];
    float n2[1];
    /* n/byte mismatches in a view */
    CHECK(lf_quant_state_view(&st, LF_QUANT_NF4, 3, 5, 32, p, 7, a, 4, 0, NULL, 0, NULL, 0, &err) == LF_EFORMAT &&
              strstr(err.msg, "packed"), "packed bytes 7 for n=15: %s", err.msg);
    CHECK(lf_quant_state_view(&st, LF_QUANT_NF4, 3, 5, 32, p, 8, a, 8, 0, NULL, 0, NULL, 0, &err) == LF_EFORMAT &&
              strstr(err.msg, "absmax"), "absmax 8 bytes for 1 block: %s", err.msg);
    CHECK(lf_quant_state_view(&st, LF_QUANT_NF4, 3, 5, 32, p, 8, q, 1, 1, n2, 8, map, 0, &err) == LF_EFORMAT,
          "nested_absmax bytes: %s", err.msg);
    CHECK(lf_quant_state_view(&st, LF_QUANT_NF4, 3, 5, 32, p, 8, q, 1, 1, n2, 4, map, 0, &err) == LF_OK, "good view: %s",
          err.msg);
    float out[15], in[5];
    CHECK(lf_quant_matmul_4bit(out, in, &st, NULL, 1, 4, 3, NULL, NULL, &err) == LF_EINVAL, "matmul shape mismatch");
    lf_quant_state_free(&st);
}

int main(void) {
    const char *env = getenv("LF_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    printf("seed %llu\n", (unsigned long long)seed);
    lf_rng_seed(&rng, seed);
    test_tables();
    test_nearest();
    test_roundtrip();
    test_double_quant();
    test_fast_paths();
    test_matmul_paths();
    test_bad_input();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
