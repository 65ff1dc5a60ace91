/* test_cuda_quant.c - 4-bit weights on the CUDA backend against the CPU reference (quant/quant.c):
 *   - lf_quant_state_upload / _release / lf_quant_state_dequantize (kernels/quant_upload.h), first on the CPU
 *     backend (a view), then on CUDA;
 *   - CUDA dequantize to f32 and bf16: bit-identical to lf_quant_dequantize_f32 / _bf16, for NF4 and FP4,
 *     nested (double quant) on and off, every blocksize 32..4096, ragged n (odd, partial last block), an
 *     all-zero block, unaligned packed input and unaligned output;
 *   - matmul_q4_forward vs lf_quant_matmul_4bit_ref, T in {1,3,8,17,64} (T <= 8: fused kernels; T > 8: bf16
 *     dequantize + cuBLASLt), C % 8 == 0 (vector kernel) and not (odd C: rows start mid-byte), blocks that
 *     span rows, OC not a multiple of the kernel's row group, bias on and off, unaligned inputs;
 *   - matmul_q4_forward with BF16 / F16 activations (and f32 out from a 16-bit input, the lm_head's case)
 *     against the CPU backend's op of the same dtypes, fused and dequantize paths; supports_op for every
 *     activation dtype, and an I32 activation refused with LF_EUNSUPPORTED.
 *
 * Exit 77 (ctest: skipped) when the binary has no CUDA part or no device, after the CPU-backend checks (a
 * failure there still exits 1); 1 when any check fails. Seed: LF_TEST_SEED, else the time; printed first.
 * Outputs are poisoned with NaN first, so an element an op forgets to write fails. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/rng.h"
#include "core/tensor.h"
#include "kernels/backend.h"
#include "kernels/quant_upload.h"
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
static lf_backend *gpu, *cpu;

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "test_cuda_quant: out of host memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static float uni(float lo, float hi) { return lo + (hi - lo) * lf_rng_uniform(&rng); }

/* A weight [rows, cols] with row scales spread over 4 decades, a few outliers and one all-zero block (absmax
 * 0: decodes to +0), quantized on the host. */
static lf_status make_host_weight(lf_quant_state *h, lf_quant_type type, int nested, int64_t B, int64_t rows,
                                  int64_t cols, lf_err *err) {
    int64_t n = rows * cols;
    float *x = xmalloc((size_t)n * 4);
    for (int64_t r = 0; r < rows; r++) {
        float scale = powf(10.0f, uni(-3.0f, 1.0f));
        for (int64_t c = 0; c < cols; c++) x[r * cols + c] = scale * lf_rng_normal(&rng);
    }
    for (int k = 0; k < 3; k++) x[lf_rng_next(&rng) % (uint64_t)n] *= 50.0f;
    if (n >= 3 * B) memset(x + B, 0, (size_t)B * 4); /* block 1 all zero */
    lf_status st = lf_quant_quantize(h, x, LF_DTYPE_F32, rows, cols, B, type, nested, err);
    free(x);
    return st;
}

/* NaN in every byte pattern 0xff..: an unwritten f32 or bf16 element shows up as NaN. */
static void poison(void *dev, size_t nbytes) {
    unsigned char *p = xmalloc(nbytes);
    memset(p, 0xff, nbytes);
    if (gpu->ops->upload(gpu, dev, p, nbytes) != LF_OK) {
        fprintf(stderr, "poison upload failed: %s\n", gpu->err.msg);
        exit(1);
    }
    free(p);
}

static void *gpu_alloc(size_t nbytes) {
    void *p = gpu->ops->alloc(gpu, nbytes);
    if (!p) {
        fprintf(stderr, "cuda alloc of %zu bytes failed: %s\n", nbytes, gpu->err.msg);
        exit(1);
    }
    return p;
}

static void gpu_put(void *dev, const void *host, size_t nbytes) {
    if (gpu->ops->upload(gpu, dev, host, nbytes) != LF_OK) {
        fprintf(stderr, "upload failed: %s\n", gpu->err.msg);
        exit(1);
    }
}

/* A device state whose packed array starts one byte past an aligned address (a view into a blob), built with
 * lf_quant_state_view over device pointers. *blob receives what to free. */
static lf_status upload_misaligned(const lf_quant_state *h, lf_quant_state *d, void *blob[3], lf_err *err) {
    size_t pb = (size_t)((h->n + 1) / 2), ab = h->nested ? (size_t)h->nblocks : (size_t)h->nblocks * 4;
    size_t nb = h->nested ? (size_t)h->n_nested * 4 : 0;
    blob[0] = gpu_alloc(pb + 1), blob[1] = gpu_alloc(ab), blob[2] = nb ? gpu_alloc(nb) : NULL;
    gpu_put((char *)blob[0] + 1, h->packed, pb);
    gpu_put(blob[1], h->nested ? (const void *)h->absmax_q : (const void *)h->absmax, ab);
    if (nb) gpu_put(blob[2], h->nested_absmax, nb);
    return lf_quant_state_view(d, h->type, h->rows, h->cols, h->blocksize, (char *)blob[0] + 1, pb, blob[1], ab,
                               h->nested, blob[2], nb, h->nested ? h->nested_map : NULL, h->offset, err);
}

static void free_misaligned(void *blob[3]) {
    for (int i = 0; i < 3; i++) gpu->ops->free(gpu, blob[i]);
}

/* ================================================================ CPU backend: upload is a view */

static void test_cpu_backend(void) {
    lf_err err;
    lf_quant_state h, d;
    lf_err_clear(&err);
    if (make_host_weight(&h, LF_QUANT_NF4, 1, 64, 37, 129, &err) != LF_OK) {
        CHECK(0, "quantize: %s", err.msg);
        return;
    }
    CHECK(lf_quant_state_upload(cpu, &h, &d, &err) == LF_OK, "cpu upload: %s", err.msg);
    CHECK(d.packed == h.packed && d.absmax_q == h.absmax_q && d.owned == NULL && d.rows == 37 && d.cols == 129,
          "cpu upload is a view of the host arrays (owned NULL)");
    float *a = xmalloc((size_t)h.n * 4), *b = xmalloc((size_t)h.n * 4);
    uint16_t *a16 = xmalloc((size_t)h.n * 2), *b16 = xmalloc((size_t)h.n * 2);
    lf_status s1 = lf_quant_state_dequantize(cpu, a, LF_DTYPE_F32, &d, &err);
    lf_status s2 = lf_quant_dequantize_f32_ref(b, &h, &err);
    CHECK(s1 == LF_OK && s2 == LF_OK && memcmp(a, b, (size_t)h.n * 4) == 0, "cpu dequantize f32 == ref");
    s1 = lf_quant_state_dequantize(cpu, a16, LF_DTYPE_BF16, &d, &err);
    lf_f32_to_bf16_n(b16, b, h.n);
    CHECK(s1 == LF_OK && memcmp(a16, b16, (size_t)h.n * 2) == 0, "cpu dequantize bf16 == bf16(ref)");
    CHECK(lf_quant_state_dequantize(cpu, a, LF_DTYPE_F16, &d, &err) == LF_EUNSUPPORTED, "F16 output refused");
    lf_quant_state_release(cpu, &d);
    CHECK(d.packed == NULL && h.packed != NULL, "cpu release zeroes the view, host state untouched");
    lf_quant_state empty;
    memset(&empty, 0, sizeof empty);
    CHECK(lf_quant_state_upload(cpu, &empty, &d, &err) == LF_EINVAL && d.packed == NULL, "empty state refused: %s",
          err.msg);
    free(a), free(b), free(a16), free(b16);
    lf_quant_state_free(&h);
}

/* ================================================================ CUDA dequantize: bit-exact */

static void test_dequant(lf_quant_type type, int nested, int64_t B, int64_t rows, int64_t cols, int misalign) {
    char name[160];
    snprintf(name, sizeof name, "dequant %s%s B=%lld [%lld,%lld]%s", lf_quant_type_name(type), nested ? "+dq" : "",
             (long long)B, (long long)rows, (long long)cols,
             misalign ? " (packed at +1 byte, output at +1 element)" : "");
    lf_err err;
    lf_quant_state h, d;
    void *blob[3] = {NULL, NULL, NULL};
    lf_err_clear(&err);
    if (make_host_weight(&h, type, nested, B, rows, cols, &err) != LF_OK) {
        CHECK(0, "%s: quantize: %s", name, err.msg);
        return;
    }
    const int64_t n = h.n, off = misalign ? 1 : 0;
    lf_status st = misalign ? upload_misaligned(&h, &d, blob, &err) : lf_quant_state_upload(gpu, &h, &d, &err);
    if (st != LF_OK) {
        CHECK(0, "%s: upload: %s", name, err.msg);
        lf_quant_state_free(&h);
        return;
    }
    float *ref = xmalloc((size_t)n * 4), *got = xmalloc((size_t)n * 4);
    uint16_t *ref16 = xmalloc((size_t)n * 2), *got16 = xmalloc((size_t)n * 2);
    (void)lf_quant_dequantize_f32(ref, &h, NULL, &err);
    (void)lf_quant_dequantize_bf16(ref16, &h, NULL, &err);
    float *dout = gpu_alloc((size_t)(n + off) * 4);
    uint16_t *dout16 = gpu_alloc((size_t)(n + off) * 2);
    poison(dout, (size_t)(n + off) * 4);
    poison(dout16, (size_t)(n + off) * 2);
    lf_status s1 = lf_quant_state_dequantize(gpu, dout + off, LF_DTYPE_F32, &d, &err);
    if (s1 != LF_OK) printf("  %s f32: %s\n", name, err.msg);
    lf_status s2 = lf_quant_state_dequantize(gpu, dout16 + off, LF_DTYPE_BF16, &d, &err);
    if (s2 != LF_OK) printf("  %s bf16: %s\n", name, err.msg);
    if (s1 == LF_OK && s2 == LF_OK && gpu->ops->download(gpu, got, dout + off, (size_t)n * 4) == LF_OK &&
        gpu->ops->download(gpu, got16, dout16 + off, (size_t)n * 2) == LF_OK) {
        int64_t bad = 0, bad16 = 0, first = -1, first16 = -1;
        for (int64_t i = 0; i < n; i++) {
            if (memcmp(&got[i], &ref[i], 4) != 0 && bad++ == 0) first = i;
            if (got16[i] != ref16[i] && bad16++ == 0) first16 = i;
        }
        CHECK(bad == 0, "%s f32: %lld of %lld elements differ (first %lld: %.9g vs %.9g)", name, (long long)bad,
              (long long)n, (long long)first, first >= 0 ? got[first] : 0.0f, first >= 0 ? ref[first] : 0.0f);
        CHECK(bad16 == 0, "%s bf16: %lld of %lld elements differ (first %lld: 0x%04x vs 0x%04x)", name,
              (long long)bad16, (long long)n, (long long)first16, first16 >= 0 ? got16[first16] : 0,
              first16 >= 0 ? ref16[first16] : 0);
    } else {
        CHECK(0, "%s: cuda %s / %s: %s", name, lf_status_name(s1), lf_status_name(s2), gpu->err.msg);
    }
    gpu->ops->free(gpu, dout), gpu->ops->free(gpu, dout16);
    if (misalign) free_misaligned(blob);
    else lf_quant_state_release(gpu, &d);
    free(ref), free(got), free(ref16), free(got16);
    lf_quant_state_free(&h);
}

/* ================================================================ CUDA matmul_q4_forward */

/* References in double from the exact f32 weights w[OC,C]:
 *   ex[t,o]  = sum x*w + b                  (the exact product of the f32 operands)
 *   e16[t,o] = sum bf16(x)*bf16(w) + b      (what the bf16 tensor-core path computes, up to f32 summation)
 *   S[t,o]   = sum |x*w| + |b|              (the scale every rounding error bound is proportional to) */
static void host_refs(const float *x, const float *w, const float *b, int64_t T, int64_t C, int64_t OC, double *ex,
                      double *e16, double *S) {
    float *x16 = xmalloc((size_t)(T * C) * 4);
    for (int64_t i = 0; i < T * C; i++) x16[i] = lf_bf16_to_f32(lf_f32_to_bf16(x[i]));
    for (int64_t o = 0; o < OC; o++) {
        const float *wr = w + o * C;
        for (int64_t t = 0; t < T; t++) {
            const float *xr = x + t * C, *xr16 = x16 + t * C;
            double s = 0, s16 = 0, sa = 0;
            for (int64_t c = 0; c < C; c++) {
                s += (double)xr[c] * wr[c];
                s16 += (double)xr16[c] * lf_bf16_to_f32(lf_f32_to_bf16(wr[c]));
                sa += fabs((double)xr[c] * wr[c]);
            }
            double bo = b ? b[o] : 0.0;
            ex[t * OC + o] = s + bo, e16[t * OC + o] = s16 + bo, S[t * OC + o] = sa + fabs(bo);
        }
    }
    free(x16);
}

static void test_matmul(lf_quant_type type, int nested, int64_t B, int64_t T, int64_t C, int64_t OC, int with_bias,
                        int misalign) {
    char name[200];
    const int fused = T <= 8;
    snprintf(name, sizeof name, "matmul_q4 %s%s B=%lld T=%lld C=%lld OC=%lld%s%s [%s]", lf_quant_type_name(type),
             nested ? "+dq" : "", (long long)B, (long long)T, (long long)C, (long long)OC, with_bias ? " +bias" : "",
             misalign == 1 ? " (packed at +1 byte)" : misalign == 2 ? " (inp at +1 float)" : "",
             fused ? "fused" : "bf16 dequant + cuBLASLt");
    lf_err err;
    lf_quant_state h, d;
    void *blob[3] = {NULL, NULL, NULL};
    lf_err_clear(&err);
    if (make_host_weight(&h, type, nested, B, OC, C, &err) != LF_OK) {
        CHECK(0, "%s: quantize: %s", name, err.msg);
        return;
    }
    lf_status st = misalign == 1 ? upload_misaligned(&h, &d, blob, &err) : lf_quant_state_upload(gpu, &h, &d, &err);
    if (st != LF_OK) {
        CHECK(0, "%s: upload: %s", name, err.msg);
        lf_quant_state_free(&h);
        return;
    }
    /* inputs of activation size ~1; weights' row scales span 1e-3..10 */
    const int64_t xoff = misalign == 2 ? 1 : 0;
    float *x = xmalloc((size_t)(T * C) * 4), *b = xmalloc((size_t)OC * 4), *w = xmalloc((size_t)(OC * C) * 4);
    for (int64_t i = 0; i < T * C; i++) x[i] = uni(-1.0f, 1.0f);
    for (int64_t i = 0; i < OC; i++) b[i] = uni(-1.0f, 1.0f);
    (void)lf_quant_dequantize_f32_ref(w, &h, &err);
    float *cref = xmalloc((size_t)(T * OC) * 4), *got = xmalloc((size_t)(T * OC) * 4);
    double *ex = xmalloc((size_t)(T * OC) * 8), *e16 = xmalloc((size_t)(T * OC) * 8), *S = xmalloc((size_t)(T * OC) * 8);
    (void)lf_quant_matmul_4bit_ref(cref, x, &h, with_bias ? b : NULL, T, C, OC, &err);
    host_refs(x, w, with_bias ? b : NULL, T, C, OC, ex, e16, S);

    float *dx = gpu_alloc((size_t)(T * C + xoff) * 4), *db = gpu_alloc((size_t)OC * 4);
    float *dout = gpu_alloc((size_t)(T * OC) * 4);
    gpu_put(dx + xoff, x, (size_t)(T * C) * 4);
    gpu_put(db, b, (size_t)OC * 4);
    poison(dout, (size_t)(T * OC) * 4);
    st = gpu->ops->matmul_q4_forward(gpu, lf_f32(dout), lf_f32(dx + xoff), &d, with_bias ? db : NULL, T, C, OC);
    if (st == LF_OK) st = gpu->ops->download(gpu, got, dout, (size_t)(T * OC) * 4);
    if (st != LF_OK) {
        CHECK(0, "%s: %s: %s", name, lf_status_name(st), gpu->err.msg);
    } else {
        /* u = 2^-24, the f32 unit roundoff. Any summation order of C f32 terms errs by at most (C-1)*u*S.
         * fused: the kernel sums x*code per 8 columns, scales by absmax, then reduces partial sums: at most
         *   ~(8 + C/256 + 7) roundings deep, so |got - ex| <= 1e-5*S holds with a wide margin for C <= 8192
         *   (a wrong code moves an output by ~|x|*absmax*0.1 ~ S/C, above 1e-5*S for every C tested);
         *   the CPU ref is a sequential f32 sum: |cref - ex| <= C*u*S, so |got - cref| <= (1e-5 + C*u)*S.
         * bf16 path: cuBLASLt multiplies bf16(x)*bf16(w) exactly and sums in f32 in its own order (allow 2u per
         *   addition in case the tensor cores truncate): |got - e16| <= 2*C*u*S; bf16 rounding moves each
         *   product by at most 2*2^-9 + 2^-18 relative, so |got - cref| <= (3.92e-3 + 3*C*u)*S.
         * Plus 1e-6*|ref| for the final bias add and the output rounding. */
        const double u = 0x1p-24;
        double worst = 0, worst_c = 0, nmse_num = 0, nmse_den = 0;
        int64_t bad = 0, bad_c = 0, nan = 0, first = -1;
        for (int64_t i = 0; i < T * OC; i++) {
            const double g = got[i];
            if (isnan(got[i])) {
                nan++;
                continue;
            }
            double lim = fused ? 1e-5 * S[i] : 2.0 * (double)C * u * S[i];
            double lim_c = fused ? (1e-5 + (double)C * u) * S[i] : (3.92e-3 + 3.0 * (double)C * u) * S[i];
            lim += 1e-6 * fabs(ex[i]) + 1e-30;
            lim_c += 1e-6 * fabs(ex[i]) + 1e-30;
            const double e = fabs(g - (fused ? ex[i] : e16[i])), ec = fabs(g - cref[i]);
            if (e > lim && bad++ == 0) first = i;
            if (ec > lim_c) bad_c++;
            if (e / lim > worst) worst = e / lim;
            if (ec / lim_c > worst_c) worst_c = ec / lim_c;
            nmse_num += (g - ex[i]) * (g - ex[i]);
            nmse_den += ex[i] * ex[i];
        }
        const double nmse = nmse_den > 0 ? nmse_num / nmse_den : nmse_num;
        /* NMSE against the exact product: f32 rounding ~1e-13; bf16 rounding of x and w ~(2 * 1.1e-3)^2 ~ 5e-6 */
        const double max_nmse = fused ? 1e-10 : 1e-4;
        int ok = nan == 0 && bad == 0 && bad_c == 0 && nmse <= max_nmse;
        printf("%s %s: worst err/tol %.3f (vs %s), %.3f (vs cpu ref), nmse %.2e%s\n", ok ? "ok  " : "FAIL", name,
               worst, fused ? "exact" : "bf16-exact", worst_c, nmse, nan ? " [NaN/unwritten]" : "");
        if (bad) printf("  first bad element %lld: got %.9g, ref %.9g, cpu %.9g, S %.3g\n", (long long)first,
                        got[first], fused ? ex[first] : e16[first], cref[first], S[first]);
        CHECK(ok, "%s: %lld over tol, %lld over cpu tol, %lld NaN, nmse %.2e", name, (long long)bad, (long long)bad_c,
              (long long)nan, nmse);
    }
    gpu->ops->free(gpu, dx), gpu->ops->free(gpu, db), gpu->ops->free(gpu, dout);
    if (misalign == 1) free_misaligned(blob);
    else lf_quant_state_release(gpu, &d);
    free(x), free(b), free(w), free(cref), free(got), free(ex), free(e16), free(S);
    lf_quant_state_free(&h);
}

/* matmul_q4_forward with activations out[odt] <- inp[idt] on CUDA against the CPU backend's op of the same
 * dtypes (the typed reference: double accumulation over the exact dequantized weights, one rounding). */
static void test_matmul_typed(lf_quant_type type, int nested, int64_t B, int64_t T, int64_t C, int64_t OC,
                              int with_bias, lf_dtype odt, lf_dtype idt) {
    char name[200];
    const int fused = T <= 8;
    snprintf(name, sizeof name, "matmul_q4 %s%s B=%lld T=%lld C=%lld OC=%lld%s out %s inp %s [%s]",
             lf_quant_type_name(type), nested ? "+dq" : "", (long long)B, (long long)T, (long long)C, (long long)OC,
             with_bias ? " +bias" : "", lf_dtype_name(odt), lf_dtype_name(idt), fused ? "fused" : "bf16 dequant");
    lf_err err;
    lf_quant_state h, d, dc;
    lf_err_clear(&err);
    if (make_host_weight(&h, type, nested, B, OC, C, &err) != LF_OK) {
        CHECK(0, "%s: quantize: %s", name, err.msg);
        return;
    }
    if (lf_quant_state_upload(gpu, &h, &d, &err) != LF_OK || lf_quant_state_upload(cpu, &h, &dc, &err) != LF_OK) {
        CHECK(0, "%s: upload: %s", name, err.msg);
        lf_quant_state_free(&h);
        return;
    }
    float *x = xmalloc((size_t)(T * C) * 4), *b = xmalloc((size_t)OC * 4);
    for (int64_t i = 0; i < T * C; i++) x[i] = uni(-1.0f, 1.0f);
    for (int64_t i = 0; i < OC; i++) b[i] = uni(-1.0f, 1.0f);
    const size_t xb = lf_act_bytes(idt, T * C), ob = lf_act_bytes(odt, T * OC);
    void *hx = xmalloc(xb), *hg = xmalloc(ob), *hc = xmalloc(ob);
    if (idt == LF_DTYPE_F32) memcpy(hx, x, xb);
    else if (idt == LF_DTYPE_BF16) lf_f32_to_bf16_n(hx, x, T * C);
    else lf_f32_to_f16_n(hx, x, T * C);
    void *dx = gpu_alloc(xb), *dout = gpu_alloc(ob);
    float *db = gpu_alloc((size_t)OC * 4);
    void *cx = cpu->ops->alloc(cpu, xb), *cout = cpu->ops->alloc(cpu, ob);
    if (!cx || !cout) exit(1);
    gpu_put(dx, hx, xb);
    gpu_put(db, b, (size_t)OC * 4);
    memcpy(cx, hx, xb);
    poison(dout, ob);
    lf_status sg = gpu->ops->matmul_q4_forward(gpu, lf_act_of(dout, odt), lf_act_of(dx, idt), &d,
                                               with_bias ? db : NULL, T, C, OC);
    lf_status sc = cpu->ops->matmul_q4_forward(cpu, lf_act_of(cout, odt), lf_act_of(cx, idt), &dc,
                                               with_bias ? b : NULL, T, C, OC);
    if (sg == LF_OK) sg = gpu->ops->download(gpu, hg, dout, ob);
    if (sg != LF_OK || sc != LF_OK) {
        CHECK(0, "%s: cuda %s (%s), cpu %s (%s)", name, lf_status_name(sg), gpu->err.msg, lf_status_name(sc),
              cpu->err.msg);
    } else {
        memcpy(hc, cout, ob);
        float *got = xmalloc((size_t)(T * OC) * 4), *ref = xmalloc((size_t)(T * OC) * 4);
        (void)lf_to_f32_n(got, hg, odt, T * OC, &err);
        (void)lf_to_f32_n(ref, hc, odt, T * OC, &err);
        double sr = 0, se = 0, worst = 0;
        for (int64_t i = 0; i < T * OC; i++) sr += (double)ref[i] * ref[i];
        const double r = sqrt(sr / (double)(T * OC));
        /* fused: the same dequantized f32 weights times the same widened inputs, summed in f32 (GPU) and double
         * (CPU): ~1e-6 of the output scale; 1e-4 leaves two decades. bf16 dequant path: the weights (and any
         * non-bf16 input) are rounded to bf16, ~1.1e-3 * rms per element, ~5e-3 at the worst: 1e-2, NMSE 1e-4
         * (test_cuda_ops.c's bf16 matmul reasoning). A 16-bit output adds one ulp: 2^-7 (bf16) / 2^-10 (f16). */
        double ta = fused ? 1e-4 * r : 1e-2 * r, tr = fused ? 1e-4 : 1e-2, tn = fused ? 1e-8 : 1e-4;
        if (odt == LF_DTYPE_BF16) tr += 0x1p-7, tn += 1e-6;
        if (odt == LF_DTYPE_F16) tr += 0x1p-10, tn += 2e-8;
        int64_t bad = 0, nan = 0;
        for (int64_t i = 0; i < T * OC; i++) {
            if (isnan(got[i]) && !isnan(ref[i])) nan++;
            const double e = fabs((double)got[i] - ref[i]), lim = ta + tr * fabs(ref[i]);
            se += e * e;
            if (!(e <= lim)) bad++;
            if (e / lim > worst) worst = e / lim;
        }
        const double nmse = sr > 0 ? se / sr : se;
        const int ok = bad == 0 && nan == 0 && nmse <= tn;
        printf("%s %s: nmse %.2e (max %.0e), worst err/tol %.3f%s\n", ok ? "ok  " : "FAIL", name, nmse, tn, worst,
               nan ? " [NaN/unwritten]" : "");
        CHECK(ok, "%s: %lld over tol, %lld NaN, nmse %.2e", name, (long long)bad, (long long)nan, nmse);
        free(got), free(ref);
    }
    gpu->ops->free(gpu, dx), gpu->ops->free(gpu, dout), gpu->ops->free(gpu, db);
    cpu->ops->free(cpu, cx), cpu->ops->free(cpu, cout);
    lf_quant_state_release(gpu, &d);
    lf_quant_state_release(cpu, &dc);
    free(x), free(b), free(hx), free(hg), free(hc);
    lf_quant_state_free(&h);
}

/* Bad arguments are refused with LF_EINVAL and leave the backend usable. */
static void test_bad_input(void) {
    lf_err err;
    lf_quant_state h, d;
    lf_err_clear(&err);
    if (make_host_weight(&h, LF_QUANT_NF4, 0, 64, 16, 64, &err) != LF_OK ||
        lf_quant_state_upload(gpu, &h, &d, &err) != LF_OK) {
        CHECK(0, "bad-input setup: %s", err.msg);
        return;
    }
    CHECK(d.packed != h.packed && d.owned == NULL && d.absmax != NULL && d.absmax_q == NULL,
          "cuda upload: own device arrays, owned NULL");
    CHECK(lf_quant_upload_nbytes(&h) >= (size_t)(16 * 64 / 2 + 16 * 4), "upload nbytes %zu",
          lf_quant_upload_nbytes(&h));
    float *dx = gpu_alloc(64 * 4), *dout = gpu_alloc(16 * 4);
    lf_status st = gpu->ops->matmul_q4_forward(gpu, lf_f32(dout), lf_f32(dx), &d, NULL, 1, 64, 17); /* OC != rows */
    CHECK(st == LF_EINVAL, "wrong OC: %s (%s)", lf_status_name(st), gpu->err.msg);
    st = gpu->ops->matmul_q4_forward(gpu, lf_f32(dout), lf_f32(dx), &d, NULL, 1, 63, 16); /* C != cols */
    CHECK(st == LF_EINVAL, "wrong C: %s (%s)", lf_status_name(st), gpu->err.msg);
    st = gpu->ops->matmul_q4_forward(gpu, lf_f32(dx), lf_f32(dx), &d, NULL, 1, 64, 16); /* out aliases inp */
    CHECK(st == LF_EINVAL, "aliasing: %s (%s)", lf_status_name(st), gpu->err.msg);
    lf_quant_state bad = d;
    bad.blocksize = 48;
    st = gpu->ops->matmul_q4_forward(gpu, lf_f32(dout), lf_f32(dx), &bad, NULL, 1, 64, 16);
    CHECK(st == LF_EINVAL, "blocksize 48: %s (%s)", lf_status_name(st), gpu->err.msg);
    st = gpu->ops->matmul_q4_forward(gpu, lf_f32(dout), lf_f32(dx), &d, NULL, 0, 64, 16); /* T = 0: nothing to do */
    CHECK(st == LF_OK, "T=0: %s (%s)", lf_status_name(st), gpu->err.msg);
    st = gpu->ops->matmul_q4_forward(gpu, lf_f32(dout), lf_act_of(dx, LF_DTYPE_I32), &d, NULL, 1, 64, 16);
    CHECK(st == LF_EUNSUPPORTED && strstr(gpu->err.msg, "matmul_q4"), "an I32 input is refused: %s (%s)",
          lf_status_name(st), gpu->err.msg);
    CHECK(gpu->ops->synchronize(gpu) == LF_OK, "backend usable after refused calls: %s", gpu->err.msg);
    lf_quant_state_release(gpu, &d);
    CHECK(d.packed == NULL, "release zeroes the state");
    lf_quant_state_release(gpu, &d); /* zeroed: a no-op */
    gpu->ops->free(gpu, dx), gpu->ops->free(gpu, dout);
    lf_quant_state_free(&h);
}

/* ================================================================ main */

static int finish(int code) {
    printf("%d passed, %d failed\n", passed, failed);
    lf_backend_free(cpu);
    lf_backend_free(gpu);
    return failed ? 1 : code;
}

int main(void) {
    lf_err err;
    lf_err_clear(&err);
    const char *seed_env = getenv("LF_TEST_SEED");
    uint64_t seed = seed_env ? strtoull(seed_env, NULL, 0) : (uint64_t)time(NULL);
    lf_rng_seed(&rng, seed);
    printf("seed: %llu (replay with LF_TEST_SEED=%llu)\n", (unsigned long long)seed, (unsigned long long)seed);

    cpu = lf_backend_cpu_create(0);
    if (!cpu) {
        printf("FAIL: the CPU backend could not be created\n0 passed, 1 failed\n");
        return 1;
    }
    test_cpu_backend();

    if (!lf_backend_cuda_built()) {
        printf("skipped: no CUDA device (built without the CUDA backend)\n");
        return finish(77);
    }
    gpu = lf_backend_cuda_create(0, &err);
    if (!gpu) {
        printf("skipped: no CUDA device (%s)\n", err.msg);
        return finish(77);
    }
    for (int d = 0; d < 3; d++) {
        static const lf_dtype dts[3] = {LF_DTYPE_F32, LF_DTYPE_BF16, LF_DTYPE_F16};
        CHECK(lf_backend_supports(gpu, LF_OP_MATMUL_Q4, dts[d]), "cuda supports matmul_q4 with %s activations",
              lf_dtype_name(dts[d]));
    }
    if (failed) return finish(1);

    /* dequantize: every type x nested x blocksize, two shapes each (odd n with a partial last block; a larger
     * one whose nested absmax spans several 256-blocks at small B) */
    static const int64_t shapes[][2] = {{1, 33}, {7, 33}, {67, 1001}, {130, 2048}, {3, 12293}};
    int k = 0;
    for (int type = 0; type < 2; type++)
        for (int nested = 0; nested < 2; nested++)
            for (int64_t B = 32; B <= 4096; B *= 2, k++) {
                const int64_t *s1 = shapes[k % 5], *s2 = shapes[(k + 2) % 5];
                test_dequant((lf_quant_type)type, nested, B, s1[0], s1[1], 0);
                test_dequant((lf_quant_type)type, nested, B, s2[0], s2[1], 0);
            }
    test_dequant(LF_QUANT_NF4, 1, 64, 67, 1001, 1);
    test_dequant(LF_QUANT_FP4, 0, 32, 130, 2048, 1);
    printf("dequantize: %d passed, %d failed so far\n", passed, failed);

    /* matmul: each shape at every T of the brief (<= 8 fused, > 8 bf16 dequantize + cuBLASLt) */
    static const int64_t Ts[] = {1, 3, 8, 17, 64};
    for (int t = 0; t < 5; t++) {
        test_matmul(LF_QUANT_NF4, 1, 64, Ts[t], 2048, 257, t % 2, 0);  /* Llama-like C, OC % 4 != 0 */
        test_matmul(LF_QUANT_FP4, 0, 32, Ts[t], 1001, 67, 1, 0);       /* odd C: rows start mid-byte */
        test_matmul(LF_QUANT_FP4, 1, 4096, Ts[t], 4104, 33, 0, 0);     /* partial last step; blocks span rows */
        test_matmul(LF_QUANT_NF4, 0, 128, Ts[t], 96, 130, 1, 0);       /* short rows; blocks span rows */
    }
    /* every blocksize on the vector kernel, and on the general one */
    k = 0;
    for (int64_t B = 32; B <= 4096; B *= 2, k++) {
        test_matmul((lf_quant_type)(k % 2), k / 2 % 2, B, 1 + k % 3 * 3, 520, 45, k % 2, 0);
        test_matmul((lf_quant_type)(k % 2), (k + 1) / 2 % 2, B, 2, 333, 21, 1, 0);
    }
    test_matmul(LF_QUANT_NF4, 1, 64, 1, 8192, 64, 0, 0);   /* long rows (down_proj-like) */
    test_matmul(LF_QUANT_NF4, 1, 64, 1, 512, 96, 1, 1);    /* packed unaligned: general kernel */
    test_matmul(LF_QUANT_NF4, 1, 64, 3, 512, 96, 1, 2);    /* inp unaligned: general kernel */
    test_matmul(LF_QUANT_FP4, 0, 64, 17, 512, 96, 1, 2);   /* inp unaligned on the cuBLASLt path */
    test_matmul(LF_QUANT_NF4, 1, 64, 1, 1, 5, 1, 0);       /* C = 1 */
    /* 16-bit activations (and f32 logits from a 16-bit input) against the CPU backend's op of the same dtypes */
    const lf_dtype F32 = LF_DTYPE_F32, BF16 = LF_DTYPE_BF16, F16 = LF_DTYPE_F16;
    for (int t = 0; t < 5; t++) {
        test_matmul_typed(LF_QUANT_NF4, 1, 64, Ts[t], 2048, 257, t % 2, BF16, BF16);
        test_matmul_typed(LF_QUANT_FP4, 0, 32, Ts[t], 1001, 67, 1, F16, F16);      /* general kernel */
        test_matmul_typed(LF_QUANT_NF4, 0, 128, Ts[t], 96, 130, 0, F32, BF16);     /* the lm_head's combination */
    }
    test_matmul_typed(LF_QUANT_NF4, 1, 64, 1, 4096, 96, 1, F32, F16);
    test_matmul_typed(LF_QUANT_NF4, 1, 64, 3, 512, 96, 1, BF16, F32);
    test_matmul_typed(LF_QUANT_FP4, 1, 64, 17, 512, 96, 1, F16, BF16);
    test_bad_input();
    return finish(0);
}
