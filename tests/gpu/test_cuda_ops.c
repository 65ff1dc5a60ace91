/* test_cuda_ops.c - every op of the CUDA backend against the CPU backend (the reference), on the same random
 * inputs, plus an informational bf16 matmul timing.
 *
 * Exit 77 (ctest: skipped) when the binary has no CUDA part or no device; 1 when any case fails.
 * Seed: LF_TEST_SEED, else the time; printed first so a failure can be replayed.
 * A case passes when (a) nothing is NaN where the reference is not, (b) NMSE = sum (got-ref)^2 / sum ref^2 is
 * at most max_nmse, and (c) every element has |got - ref| <= tol_abs + tol_rel * |ref|. Each op's thresholds
 * carry their reason next to them. Outputs are poisoned with NaN first, so an unwritten element fails. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/backend.h"

static int n_pass, n_fail, n_unsupported;
static lf_backend *gpu, *cpu;

/* ---- random numbers: splitmix64 ---- */
static uint64_t rng_state;
static uint64_t rng_next(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float rng_uniform(float lo, float hi) { return lo + (hi - lo) * (float)((rng_next() >> 40) * 0x1p-24); }
static float *rand_floats(int64_t n, float lo, float hi) {
    float *x = malloc((size_t)(n > 0 ? n : 1) * sizeof *x);
    if (!x) abort();
    for (int64_t i = 0; i < n; i++) x[i] = rng_uniform(lo, hi);
    return x;
}

/* ---- one buffer on each backend ---- */
typedef struct { void *c, *g; size_t n; } pair;

static pair put2(const void *host, size_t nbytes) {
    pair p = {cpu->ops->alloc(cpu, nbytes), gpu->ops->alloc(gpu, nbytes), nbytes};
    if (!p.c || !p.g) {
        fprintf(stderr, "alloc of %zu bytes failed: %s / %s\n", nbytes, cpu->err.msg, gpu->err.msg);
        exit(1);
    }
    if (host && (cpu->ops->upload(cpu, p.c, host, nbytes) != LF_OK ||
                 gpu->ops->upload(gpu, p.g, host, nbytes) != LF_OK)) {
        fprintf(stderr, "upload failed: %s / %s\n", cpu->err.msg, gpu->err.msg);
        exit(1);
    }
    return p;
}
static void free2(pair p) {
    cpu->ops->free(cpu, p.c);
    gpu->ops->free(gpu, p.g);
}
/* NaN everywhere in the GPU copy (0xff bytes), so elements an op forgets to write show up. */
static void poison(pair p) {
    unsigned char *nan_bytes = malloc(p.n);
    if (!nan_bytes) abort();
    memset(nan_bytes, 0xff, p.n);
    if (gpu->ops->upload(gpu, p.g, nan_bytes, p.n) != LF_OK) abort();
    free(nan_bytes);
}

typedef struct {
    double tol_abs, tol_rel, max_nmse;
} tol_t;

/* Download both copies of an f32 buffer and compare; prints one line; counts the result. */
static void check(const char *name, pair out, int64_t n, tol_t tol) {
    float *got = malloc((size_t)n * sizeof *got), *ref = malloc((size_t)n * sizeof *ref);
    if (!got || !ref) abort();
    if (gpu->ops->download(gpu, got, out.g, (size_t)n * 4) != LF_OK ||
        cpu->ops->download(cpu, ref, out.c, (size_t)n * 4) != LF_OK) {
        printf("FAIL %s: download: %s %s\n", name, gpu->err.msg, cpu->err.msg);
        n_fail++;
        goto done;
    }
    double se = 0, sr = 0, max_err = 0, worst_ratio = 0;
    int64_t bad = 0, nan = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(got[i]) && !isnan(ref[i])) nan++;
        double e = fabs((double)got[i] - ref[i]), lim = tol.tol_abs + tol.tol_rel * fabs(ref[i]);
        se += e * e;
        sr += (double)ref[i] * ref[i];
        if (e > max_err) max_err = e;
        if (!(e <= lim)) bad++;
        if (lim > 0 && e / lim > worst_ratio) worst_ratio = e / lim;
    }
    double nmse = sr > 0 ? se / sr : se;
    int ok = nan == 0 && bad == 0 && nmse <= tol.max_nmse;
    printf("%s %s: nmse=%.2e (max %.0e) max_err=%.2e worst err/tol=%.2f%s%s\n", ok ? "ok  " : "FAIL", name, nmse,
           tol.max_nmse, max_err, worst_ratio, bad ? " [elements over tolerance]" : "", nan ? " [NaN/unwritten]" : "");
    if (ok) n_pass++; else n_fail++;
done:
    free(got);
    free(ref);
}

/* Run status of both backends; returns 1 when both ran, else counts and prints why. */
static int ran(const char *name, lf_status sg, lf_status sc) {
    if (sc == LF_EUNSUPPORTED || sg == LF_EUNSUPPORTED) {
        printf("n/a  %s: not supported (%s%s)\n", name, sc == LF_EUNSUPPORTED ? "cpu: " : "cuda: ",
               sc == LF_EUNSUPPORTED ? cpu->err.msg : gpu->err.msg);
        n_unsupported++;
        return 0;
    }
    if (sg != LF_OK || sc != LF_OK) {
        printf("FAIL %s: cuda %s (%s), cpu %s (%s)\n", name, lf_status_name(sg), gpu->err.msg, lf_status_name(sc),
               cpu->err.msg);
        n_fail++;
        return 0;
    }
    return 1;
}

static double rms(const float *x, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return n ? sqrt(s / (double)n) : 0;
}

/* ================================================================ ops */

static void test_embedding(lf_dtype dt, int64_t T, int64_t V, int64_t C) {
    char name[128];
    snprintf(name, sizeof name, "embedding %s T=%lld V=%lld C=%lld", lf_dtype_name(dt), (long long)T, (long long)V,
             (long long)C);
    float *w = rand_floats(V * C, -1, 1);
    uint16_t *w16 = malloc((size_t)(V * C) * 2);
    int32_t *tok = malloc((size_t)T * 4);
    if (!w16 || !tok) abort();
    for (int64_t i = 0; i < V * C; i++) w16[i] = dt == LF_DTYPE_BF16 ? lf_f32_to_bf16(w[i]) : lf_f32_to_f16(w[i]);
    for (int64_t t = 0; t < T; t++) tok[t] = (int32_t)(rng_next() % (uint64_t)V);
    tok[T - 1] = (int32_t)(V - 1); /* the last row of the table is reachable */
    pair pw = put2(dt == LF_DTYPE_F32 ? (void *)w : (void *)w16, (size_t)lf_dtype_nbytes(dt, V * C));
    pair pt = put2(tok, (size_t)T * 4), po = put2(NULL, (size_t)(T * C) * 4);
    int64_t shape[2] = {V, C};
    lf_tensor wc = lf_tensor_view(pw.c, dt, 2, shape), wg = lf_tensor_view(pw.g, dt, 2, shape);
    wg.device = LF_DEVICE_CUDA;
    poison(po);
    lf_status sg = gpu->ops->embedding_forward(gpu, po.g, pt.g, &wg, T);
    lf_status sc = cpu->ops->embedding_forward(cpu, po.c, pt.c, &wc, T);
    /* a row copy with an exact dtype conversion: must be bit-identical */
    if (ran(name, sg, sc)) check(name, po, T * C, (tol_t){0, 0, 0});

    /* a token id >= V must be refused with LF_EINVAL, and the backend must stay usable */
    tok[0] = (int32_t)V;
    if (gpu->ops->upload(gpu, pt.g, tok, (size_t)T * 4) != LF_OK) abort();
    sg = gpu->ops->embedding_forward(gpu, po.g, pt.g, &wg, T);
    int ok = sg == LF_EINVAL && gpu->ops->synchronize(gpu) == LF_OK;
    printf("%s %s token id = V: %s (%s)\n", ok ? "ok  " : "FAIL", name, lf_status_name(sg), gpu->err.msg);
    if (ok) n_pass++; else n_fail++;
    free2(pw), free2(pt), free2(po);
    free(w), free(w16), free(tok);
}

static void test_rmsnorm(int64_t T, int64_t C, int in_place) {
    char name[128];
    snprintf(name, sizeof name, "rmsnorm T=%lld C=%lld%s", (long long)T, (long long)C, in_place ? " in-place" : "");
    float *x = rand_floats(T * C, -2, 2), *w = rand_floats(C, 0.5f, 1.5f);
    pair px = put2(x, (size_t)(T * C) * 4), pw = put2(w, (size_t)C * 4);
    pair po = in_place ? px : put2(NULL, (size_t)(T * C) * 4);
    if (!in_place) poison(po);
    lf_status sg = gpu->ops->rmsnorm_forward(gpu, po.g, px.g, pw.g, T, C, 1e-5f);
    lf_status sc = cpu->ops->rmsnorm_forward(cpu, po.c, px.c, pw.c, T, C, 1e-5f);
    /* f32 sum of C squares in another order, then a few roundings: ~1e-6 relative; 1e-5 leaves margin */
    if (ran(name, sg, sc)) check(name, po, T * C, (tol_t){1e-6, 1e-5, 1e-10});
    free2(px), free2(pw);
    if (!in_place) free2(po);
    free(x), free(w);
}

static void test_matmul(lf_dtype dt, int64_t T, int64_t C, int64_t OC, int with_bias, int misalign) {
    char name[160];
    snprintf(name, sizeof name, "matmul %s T=%lld C=%lld OC=%lld%s%s", lf_dtype_name(dt), (long long)T, (long long)C,
             (long long)OC, with_bias ? " +bias" : "", misalign ? " (unaligned weight/bias)" : "");
    const int64_t off = misalign ? 1 : 0; /* elements: a 2- or 4-byte aligned view, like a weight in a blob */
    float *x = rand_floats(T * C, -1, 1), *w = rand_floats(OC * C + off, -1, 1), *b = rand_floats(OC + 1, -1, 1);
    for (int64_t i = 0; i < OC * C + off; i++) w[i] /= sqrtf((float)C); /* keeps out ~ U(-1,1)-sized */
    uint16_t *w16 = malloc((size_t)(OC * C + off) * 2);
    if (!w16) abort();
    for (int64_t i = 0; i < OC * C + off; i++)
        w16[i] = dt == LF_DTYPE_BF16 ? lf_f32_to_bf16(w[i]) : lf_f32_to_f16(w[i]);
    int es = dt == LF_DTYPE_F32 ? 4 : 2;
    pair pw = put2(dt == LF_DTYPE_F32 ? (void *)w : (void *)w16, (size_t)(OC * C + off) * es);
    pair px = put2(x, (size_t)(T * C) * 4), pb = put2(b, (size_t)(OC + 1) * 4), po = put2(NULL, (size_t)(T * OC) * 4);
    int64_t shape[2] = {OC, C};
    lf_tensor wc = lf_tensor_view((char *)pw.c + off * es, dt, 2, shape);
    lf_tensor wg = lf_tensor_view((char *)pw.g + off * es, dt, 2, shape);
    wg.device = LF_DEVICE_CUDA;
    const float *bc = with_bias ? (const float *)pb.c + off : NULL, *bg = with_bias ? (const float *)pb.g + off : NULL;
    poison(po);
    lf_status sg = gpu->ops->matmul_forward(gpu, po.g, px.g, &wg, bg, T, C, OC);
    lf_status sc = cpu->ops->matmul_forward(cpu, po.c, px.c, &wc, bc, T, C, OC);
    if (ran(name, sg, sc)) {
        float *ref = malloc((size_t)(T * OC) * 4);
        if (!ref || cpu->ops->download(cpu, ref, po.c, (size_t)(T * OC) * 4) != LF_OK) abort();
        double r = rms(ref, T * OC);
        free(ref);
        tol_t tol;
        if (dt == LF_DTYPE_F32) {
            /* f32 x f32 with f32 accumulation on both sides (cuBLAS COMPUTE_32F: no TF32), only the summation
             * order differs: error ~ sqrt(C) * 2^-24 * |out| ~ 3e-6 relative at C = 2048; 1e-4 is ample. */
            tol = (tol_t){1e-4 * r, 1e-4, 1e-8};
        } else if (dt == LF_DTYPE_BF16) {
            /* cuBLASLt takes bf16 x bf16: the f32 activations are rounded to 8 mantissa bits (relative error
             * up to 2^-9, rms 2^-9/sqrt(3) = 1.1e-3). On a C-length dot product the errors are independent, so
             * the output error is ~1.1e-3 * rms(out) per element (NMSE ~1.3e-6), ~5e-3 * rms(out) at the
             * worst of ~1e5 elements: 1e-2 relative to the output scale, NMSE 1e-4. */
            tol = (tol_t){1e-2 * r, 1e-2, 1e-4};
        } else {
            /* f16 keeps 11 mantissa bits: the bf16 reasoning with 8x less rounding, so 4e-3 / 1e-5 */
            tol = (tol_t){4e-3 * r, 4e-3, 1e-5};
        }
        check(name, po, T * OC, tol);
    }
    free2(pw), free2(px), free2(pb), free2(po);
    free(x), free(w), free(b), free(w16);
}

static void test_rope(int64_t T, int64_t NH, int64_t D, float theta) {
    char name[128];
    snprintf(name, sizeof name, "rope T=%lld NH=%lld D=%lld theta=%g", (long long)T, (long long)NH, (long long)D,
             theta);
    float *x = rand_floats(T * NH * D, -1, 1), *inv = malloc((size_t)(D / 2) * 4);
    int32_t *pos = malloc((size_t)T * 4);
    if (!inv || !pos) abort();
    for (int64_t i = 0; i < D / 2; i++) inv[i] = (float)(1.0 / pow(theta, (double)(2 * i) / (double)D));
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)(rng_next() % 4096);
    pair px = put2(x, (size_t)(T * NH * D) * 4), pi = put2(inv, (size_t)(D / 2) * 4), pp = put2(pos, (size_t)T * 4);
    lf_status sg = gpu->ops->rope_forward(gpu, px.g, pp.g, pi.g, T, NH, D);
    lf_status sc = cpu->ops->rope_forward(cpu, px.c, pp.c, pi.c, T, NH, D);
    /* same f32 angle p*inv_freq on both sides, then accurate sin/cos (~1 ulp): ~1e-7. A reference that forms
     * the angle in double differs by up to half an f32 ulp of the angle (2.4e-4 rad at p = 4095): 1e-3. */
    if (ran(name, sg, sc)) check(name, px, T * NH * D, (tol_t){1e-3, 1e-5, 1e-6});
    free2(px), free2(pi), free2(pp);
    free(x), free(inv), free(pos);
}

/* pos[t] = p0 + t (a chunk of a sequence whose cache holds rows 0..p0+T-1, so S = p0 + T) */
static void test_attention(int64_t T, int64_t p0, int64_t H, int64_t KH, int64_t D, int64_t window) {
    const int64_t S = p0 + T;
    char name[160];
    snprintf(name, sizeof name, "attention T=%lld S=%lld H=%lld KH=%lld D=%lld window=%lld", (long long)T,
             (long long)S, (long long)H, (long long)KH, (long long)D, (long long)window);
    float *q = rand_floats(T * H * D, -1, 1), *k = rand_floats(S * KH * D, -1, 1), *v = rand_floats(S * KH * D, -1, 1);
    int32_t *pos = malloc((size_t)T * 4);
    if (!pos) abort();
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)(p0 + t);
    pair pq = put2(q, (size_t)(T * H * D) * 4), pk = put2(k, (size_t)(S * KH * D) * 4);
    pair pv = put2(v, (size_t)(S * KH * D) * 4), pp = put2(pos, (size_t)T * 4);
    pair po = put2(NULL, (size_t)(T * H * D) * 4);
    const float scale = 1.0f / sqrtf((float)D);
    poison(po);
    lf_status sg = gpu->ops->attention_forward(gpu, po.g, pq.g, pk.g, pv.g, pp.g, T, S, H, KH, D, window, scale);
    lf_status sc = cpu->ops->attention_forward(cpu, po.c, pq.c, pk.c, pv.c, pp.c, T, S, H, KH, D, window, scale);
    /* f32 throughout; softmax sums and the weighted sum of v run in another order (online, split over warps):
     * ~1e-6 on outputs of size ~0.1..1. 2e-5 + 1e-4*|ref| leaves an order of magnitude. */
    if (ran(name, sg, sc)) check(name, po, T * H * D, (tol_t){2e-5, 1e-4, 1e-9});
    free2(pq), free2(pk), free2(pv), free2(pp), free2(po);
    free(q), free(k), free(v), free(pos);
}

static void test_elementwise(int64_t N, int in_place) {
    char name[128];
    float *a = rand_floats(N, -8, 8), *b = rand_floats(N, -2, 2);
    pair pa = put2(a, (size_t)N * 4), pb = put2(b, (size_t)N * 4), po = put2(NULL, (size_t)N * 4);
    pair out = in_place ? pa : po;
    if (!in_place) poison(po);
    snprintf(name, sizeof name, "swiglu N=%lld%s", (long long)N, in_place ? " in-place (out = gate)" : "");
    lf_status sg = gpu->ops->swiglu_forward(gpu, out.g, pa.g, pb.g, N);
    lf_status sc = cpu->ops->swiglu_forward(cpu, out.c, pa.c, pb.c, N);
    /* one expf (<= 2 ulp on the GPU, ~1 in glibc) and three roundings, ~5 ulp = 6e-7; a reference written as
     * g * sigmoid(g) rounds differently again: 4e-6 (~34 ulp) relative */
    if (ran(name, sg, sc)) check(name, out, N, (tol_t){1e-7, 4e-6, 1e-11});

    /* inputs again (swiglu may have overwritten a) */
    if (cpu->ops->upload(cpu, pa.c, a, (size_t)N * 4) != LF_OK ||
        gpu->ops->upload(gpu, pa.g, a, (size_t)N * 4) != LF_OK)
        abort();
    if (!in_place) poison(po);
    snprintf(name, sizeof name, "residual N=%lld%s", (long long)N, in_place ? " in-place (out = a)" : "");
    sg = gpu->ops->residual_forward(gpu, out.g, pa.g, pb.g, N);
    sc = cpu->ops->residual_forward(cpu, out.c, pa.c, pb.c, N);
    /* one correctly rounded f32 add on both sides: bit-identical */
    if (ran(name, sg, sc)) check(name, out, N, (tol_t){0, 0, 0});
    free2(pa), free2(pb), free2(po);
    free(a), free(b);
}

static void test_softmax(int64_t R, int64_t V, int in_place) {
    char name[128];
    snprintf(name, sizeof name, "softmax R=%lld V=%lld%s", (long long)R, (long long)V, in_place ? " in-place" : "");
    float *x = rand_floats(R * V, -15, 15); /* logit-like spread: weights from ~1e-13 to ~1 */
    pair px = put2(x, (size_t)(R * V) * 4), po = in_place ? px : put2(NULL, (size_t)(R * V) * 4);
    if (!in_place) poison(po);
    lf_status sg = gpu->ops->softmax_forward(gpu, po.g, px.g, R, V);
    lf_status sc = cpu->ops->softmax_forward(cpu, po.c, px.c, R, V);
    /* expf (~2 ulp) and an f32 sum over V in another order: ~sqrt(V) * 2^-24 ~ 2e-5 relative at V = 128k */
    if (ran(name, sg, sc)) check(name, po, R * V, (tol_t){1e-9, 1e-4, 1e-9});
    free2(px);
    if (!in_place) free2(po);
    free(x);
}

/* ================================================================ timing (info only) */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void time_matmul_bf16(int64_t T, int64_t C, int64_t OC) {
    float *x = rand_floats(T * C, -1, 1);
    uint16_t *w = malloc((size_t)(OC * C) * 2);
    if (!w) abort();
    for (int64_t i = 0; i < OC * C; i++) w[i] = lf_f32_to_bf16(rng_uniform(-1, 1) / sqrtf((float)C));
    float *dx = gpu->ops->alloc(gpu, (size_t)(T * C) * 4), *dout = gpu->ops->alloc(gpu, (size_t)(T * OC) * 4);
    void *dw = gpu->ops->alloc(gpu, (size_t)(OC * C) * 2);
    if (!dx || !dout || !dw || gpu->ops->upload(gpu, dx, x, (size_t)(T * C) * 4) != LF_OK ||
        gpu->ops->upload(gpu, dw, w, (size_t)(OC * C) * 2) != LF_OK)
        abort();
    int64_t shape[2] = {OC, C};
    lf_tensor wt = lf_tensor_view(dw, LF_DTYPE_BF16, 2, shape);
    wt.device = LF_DEVICE_CUDA;
    enum { WARMUP = 3, BATCH = 10, REPS = 7 };
    double t_batch[REPS];
    int ok = 1;
    for (int i = 0; i < WARMUP && ok; i++) ok = gpu->ops->matmul_forward(gpu, dout, dx, &wt, NULL, T, C, OC) == LF_OK;
    ok = ok && gpu->ops->synchronize(gpu) == LF_OK;
    for (int r = 0; r < REPS && ok; r++) {
        double t0 = now_s();
        for (int i = 0; i < BATCH && ok; i++)
            ok = gpu->ops->matmul_forward(gpu, dout, dx, &wt, NULL, T, C, OC) == LF_OK;
        ok = ok && gpu->ops->synchronize(gpu) == LF_OK;
        t_batch[r] = (now_s() - t0) / BATCH;
    }
    if (ok) {
        qsort(t_batch, REPS, sizeof t_batch[0], cmp_double);
        double med = t_batch[REPS / 2], gflop = 2.0 * (double)T * (double)C * (double)OC * 1e-9;
        printf("info: {\"bench\":\"cuda_matmul_bf16\",\"T\":%lld,\"C\":%lld,\"OC\":%lld,\"ms\":%.4f,\"gflops\":%.1f}"
               " (median of %d batches of %d, includes the f32->bf16 input conversion)\n",
               (long long)T, (long long)C, (long long)OC, med * 1e3, gflop / med, REPS, BATCH);
    } else {
        printf("info: matmul timing failed: %s\n", gpu->err.msg);
    }
    gpu->ops->free(gpu, dx), gpu->ops->free(gpu, dout), gpu->ops->free(gpu, dw);
    free(x), free(w);
}

/* ================================================================ main */

int main(void) {
    lf_err err;
    lf_err_clear(&err);
    if (!lf_backend_cuda_built()) {
        printf("skipped: built without the CUDA backend\n");
        return 77;
    }
    gpu = lf_backend_cuda_create(0, &err);
    if (!gpu) {
        printf("skipped: %s\n", err.msg);
        return 77;
    }
    cpu = lf_backend_cpu_create(0);
    if (!cpu) {
        printf("FAIL: the CPU reference backend could not be created\n0 passed, 1 failed\n");
        lf_backend_free(gpu);
        return 1;
    }
    const char *seed_env = getenv("LF_TEST_SEED");
    uint64_t seed = seed_env ? strtoull(seed_env, NULL, 0) : (uint64_t)time(NULL);
    rng_state = seed;
    printf("seed: %llu (replay with LF_TEST_SEED=%llu)\n", (unsigned long long)seed, (unsigned long long)seed);

    static const int64_t Ts[] = {1, 7, 64, 129}, Cs[] = {64, 257, 2048};
    static const lf_dtype dts[] = {LF_DTYPE_F32, LF_DTYPE_BF16, LF_DTYPE_F16};
#define FOR_OP(op) if (LF_BACKEND_SUPPORTS(gpu, op) && LF_BACKEND_SUPPORTS(cpu, op))
#define NOT_BOTH(op) if (!(LF_BACKEND_SUPPORTS(gpu, op) && LF_BACKEND_SUPPORTS(cpu, op))) \
        (printf("n/a  %s: op missing from a table\n", #op), n_unsupported++)

    FOR_OP(embedding_forward) for (int d = 0; d < 3; d++) for (int c = 0; c < 3; c++)
        test_embedding(dts[d], Ts[(d + c) % 4], 1001, Cs[c]);
    NOT_BOTH(embedding_forward);

    FOR_OP(rmsnorm_forward) for (int t = 0; t < 4; t++) for (int c = 0; c < 3; c++) test_rmsnorm(Ts[t], Cs[c], 0);
    FOR_OP(rmsnorm_forward) test_rmsnorm(7, 4096, 1);
    NOT_BOTH(rmsnorm_forward);

    FOR_OP(matmul_forward) {
        static const int64_t OCs[] = {67, 1001};
        for (int d = 0; d < 3; d++)
            for (int t = 0; t < 4; t++)
                for (int c = 0; c < 3; c++)
                    for (int o = 0; o < 2; o++) test_matmul(dts[d], Ts[t], Cs[c], OCs[o], (t + c + o) % 2, 0);
        for (int d = 0; d < 3; d++) test_matmul(dts[d], 7, 257, 1001, 1, 1);
        test_matmul(LF_DTYPE_BF16, 64, 2048, 2048, 1, 1);
    }
    NOT_BOTH(matmul_forward);

    FOR_OP(rope_forward) {
        test_rope(1, 8, 64, 10000.0f);
        test_rope(7, 32, 128, 500000.0f);
        test_rope(129, 8, 128, 10000.0f);
        test_rope(64, 3, 32, 10000.0f);
    }
    NOT_BOTH(rope_forward);

    FOR_OP(attention_forward) {
        test_attention(1, 0, 8, 2, 64, 0);       /* first token of a sequence: one key */
        test_attention(1, 999, 32, 8, 128, 0);   /* decode step at a long position */
        test_attention(64, 0, 8, 2, 64, 0);      /* prefill, GQA */
        test_attention(129, 0, 4, 4, 128, 16);   /* prefill, MHA, sliding window */
        test_attention(7, 93, 8, 1, 64, 0);      /* chunk after a cached prefix, MQA */
        test_attention(7, 93, 6, 3, 96, 40);     /* chunk with a window straddling the prefix, odd D */
        test_attention(1, 2047, 8, 2, 256, 1);   /* window 1: attends only itself */
    }
    NOT_BOTH(attention_forward);

    if (LF_BACKEND_SUPPORTS(gpu, swiglu_forward) && LF_BACKEND_SUPPORTS(cpu, swiglu_forward) &&
        LF_BACKEND_SUPPORTS(gpu, residual_forward) && LF_BACKEND_SUPPORTS(cpu, residual_forward)) {
        static const int64_t Ns[] = {1, 7, 1000, 100003, 4 * 1024 * 1024 + 5};
        for (int i = 0; i < 5; i++) test_elementwise(Ns[i], 0);
        test_elementwise(100003, 1);
    } else {
        printf("n/a  swiglu/residual: op missing from a table\n");
        n_unsupported++;
    }

    FOR_OP(softmax_forward) {
        test_softmax(1, 1, 0);
        test_softmax(7, 257, 0);
        test_softmax(64, 32000, 0);
        test_softmax(3, 128256, 1);
    }
    NOT_BOTH(softmax_forward);

    if (LF_BACKEND_SUPPORTS(gpu, matmul_forward)) {
        time_matmul_bf16(512, 4096, 4096);
        time_matmul_bf16(4096, 4096, 4096);
    }

    if (n_unsupported) printf("(%d cases not run: op or dtype not supported by a backend)\n", n_unsupported);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    lf_backend_free(cpu);
    lf_backend_free(gpu);
    return n_fail ? 1 : 0;
}
