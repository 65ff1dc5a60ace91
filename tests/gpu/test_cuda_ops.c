/* test_cuda_ops.c - every inference op of the CUDA backend against the CPU backend op of the SAME dtypes (the
 * CPU typed references of kernels/cpu/typed.c: double accumulation, one rounding per output), on the same
 * random inputs, for F32, BF16 and F16 activations and the mixed combinations the model uses; the capability
 * answers (supports_op) and their enforcement; plus an informational bf16 matmul timing.
 *
 * Exit 77 (ctest: skipped) when the binary has no CUDA part or no device; 1 when any case fails.
 * Seed: LF_TEST_SEED, else the time; printed first so a failure can be replayed.
 * A case passes when (a) nothing is NaN where the reference is not, (b) NMSE = sum (got-ref)^2 / sum ref^2 is
 * at most max_nmse, and (c) every element has |got - ref| <= tol_abs + tol_rel * |ref|. Each op's f32
 * thresholds carry their reason next to them; a 16-bit output adds one unit in the last place of its dtype
 * (tol_out below), since the GPU's f32 result and the CPU's double result may round to neighbours. Inputs are
 * rounded to their dtype on the host once, so both backends read the same bytes. Outputs are poisoned with
 * NaN first, so an unwritten element fails. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/backend.h"

static int n_pass, n_fail, n_unsupported;
static lf_backend *gpu, *cpu;

static const lf_dtype DTS[3] = {LF_DTYPE_F32, LF_DTYPE_BF16, LF_DTYPE_F16};
static const char *dn(lf_dtype dt) { return lf_dtype_name(dt); }

/* ---- random numbers: splitmix64 ---- */
static uint64_t rng_state;
static uint64_t rng_next(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float rng_uniform(float lo, float hi) { return lo + (hi - lo) * (float)((rng_next() >> 40) * 0x1p-24); }
static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}
static float *rand_floats(int64_t n, float lo, float hi) {
    float *x = xmalloc((size_t)(n > 0 ? n : 1) * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = rng_uniform(lo, hi);
    return x;
}

/* x[n] rounded to dt (as the CPU rounds: lf_f32_to_bf16 / lf_f32_to_f16), in a new host buffer. */
static void *to_dt(const float *x, int64_t n, lf_dtype dt) {
    void *h = xmalloc(lf_act_bytes(dt, n));
    if (dt == LF_DTYPE_F32) memcpy(h, x, lf_act_bytes(dt, n));
    else if (dt == LF_DTYPE_BF16) lf_f32_to_bf16_n(h, x, n);
    else lf_f32_to_f16_n(h, x, n);
    return h;
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
/* x[n] rounded to dt on both backends */
static pair put_dt(const float *x, int64_t n, lf_dtype dt) {
    void *h = to_dt(x, n, dt);
    pair p = put2(h, lf_act_bytes(dt, n));
    free(h);
    return p;
}
static void free2(pair p) {
    cpu->ops->free(cpu, p.c);
    gpu->ops->free(gpu, p.g);
}
static lf_act AC(pair p, lf_dtype dt) { return lf_act_of(p.c, dt); }
static lf_act AG(pair p, lf_dtype dt) { return lf_act_of(p.g, dt); }
/* NaN everywhere in the GPU copy (0xff bytes: NaN in f32, bf16 and f16), so unwritten elements show up. */
static void poison(pair p) {
    unsigned char *nan_bytes = xmalloc(p.n);
    memset(nan_bytes, 0xff, p.n);
    if (gpu->ops->upload(gpu, p.g, nan_bytes, p.n) != LF_OK) abort();
    free(nan_bytes);
}

typedef struct {
    double tol_abs, tol_rel, max_nmse;
} tol_t;

/* The f32 tolerance of an op plus the rounding of a 16-bit output: the GPU rounds its f32 value, the CPU its
 * double value, to dt; when the two straddle a rounding boundary they land one ulp apart. One ulp is at most
 * 2^-7 |ref| in bf16 (8-bit significand), 2^-10 |ref| in f16 (11 bits; 2^-24 absolute among subnormals).
 * Such flips are rare (the values differ by f32 rounding, ~1e-6 relative, against an ulp of 4e-3 / 5e-4):
 * the NMSE allowance admits a few percent of the elements one ulp off, 1e-6 (bf16) / 2e-8 (f16). */
static tol_t tol_out(tol_t t, lf_dtype dt) {
    if (dt == LF_DTYPE_BF16) t.tol_rel += 0x1p-7, t.max_nmse += 1e-6;
    if (dt == LF_DTYPE_F16) t.tol_rel += 0x1p-10, t.tol_abs += 0x1p-24, t.max_nmse += 2e-8;
    return t;
}

static float *download_f32(lf_backend *be, const void *src, lf_dtype dt, int64_t n) {
    void *raw = xmalloc(lf_act_bytes(dt, n));
    float *f = xmalloc((size_t)(n > 0 ? n : 1) * 4);
    lf_err err;
    lf_err_clear(&err);
    if (be->ops->download(be, raw, src, lf_act_bytes(dt, n)) != LF_OK || lf_to_f32_n(f, raw, dt, n, &err) != LF_OK) {
        free(raw), free(f);
        return NULL;
    }
    free(raw);
    return f;
}

/* Download both copies of an output of dtype dt, widen, compare; prints one line; counts the result. */
static void check(const char *name, pair out, lf_dtype dt, int64_t n, tol_t tol) {
    float *got = download_f32(gpu, out.g, dt, n), *ref = download_f32(cpu, out.c, dt, n);
    if (!got || !ref) {
        printf("FAIL %s: download: %s %s\n", name, gpu->err.msg, cpu->err.msg);
        n_fail++;
        free(got), free(ref);
        return;
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
    free(got), free(ref);
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

static double rms_of(pair p, lf_dtype dt, int64_t n) {
    float *x = download_f32(cpu, p.c, dt, n);
    double s = 0;
    for (int64_t i = 0; x && i < n; i++) s += (double)x[i] * x[i];
    free(x);
    return n ? sqrt(s / (double)n) : 0;
}

/* 1 when both backends claim op for these activation dtypes; else counts "n/a". */
static int both_support(const char *name, lf_op op, const lf_dtype *dts) {
    const int n = lf_op_n_act(op);
    if (gpu->ops->supports_op(gpu, op, dts, n) && cpu->ops->supports_op(cpu, op, dts, n)) return 1;
    printf("n/a  %s: supports_op answers 0\n", name);
    n_unsupported++;
    return 0;
}

/* ================================================================ ops */

static void test_embedding(lf_dtype wdt, lf_dtype odt, int64_t T, int64_t V, int64_t C) {
    char name[128];
    snprintf(name, sizeof name, "embedding wte %s -> %s T=%lld V=%lld C=%lld", dn(wdt), dn(odt), (long long)T,
             (long long)V, (long long)C);
    if (!both_support(name, LF_OP_EMBEDDING, &odt)) return;
    float *w = rand_floats(V * C, -1, 1);
    int32_t *tok = xmalloc((size_t)T * 4);
    for (int64_t t = 0; t < T; t++) tok[t] = (int32_t)(rng_next() % (uint64_t)V);
    tok[T - 1] = (int32_t)(V - 1); /* the last row of the table is reachable */
    pair pw = put_dt(w, V * C, wdt), pt = put2(tok, (size_t)T * 4), po = put2(NULL, lf_act_bytes(odt, T * C));
    int64_t shape[2] = {V, C};
    lf_tensor wc = lf_tensor_view(pw.c, wdt, 2, shape), wg = lf_tensor_view(pw.g, wdt, 2, shape);
    wg.device = LF_DEVICE_CUDA;
    poison(po);
    lf_status sg = gpu->ops->embedding_forward(gpu, AG(po, odt), pt.g, &wg, T);
    lf_status sc = cpu->ops->embedding_forward(cpu, AC(po, odt), pt.c, &wc, T);
    /* a row copy with one exact conversion (or a plain copy): bit-identical */
    if (ran(name, sg, sc)) check(name, po, odt, T * C, (tol_t){0, 0, 0});

    /* a token id >= V must be refused with LF_EINVAL, and the backend must stay usable */
    tok[0] = (int32_t)V;
    if (gpu->ops->upload(gpu, pt.g, tok, (size_t)T * 4) != LF_OK) abort();
    sg = gpu->ops->embedding_forward(gpu, AG(po, odt), pt.g, &wg, T);
    int ok = sg == LF_EINVAL && gpu->ops->synchronize(gpu) == LF_OK;
    printf("%s %s token id = V: %s (%s)\n", ok ? "ok  " : "FAIL", name, lf_status_name(sg), gpu->err.msg);
    if (ok) n_pass++; else n_fail++;
    free2(pw), free2(pt), free2(po);
    free(w), free(tok);
}

static void test_rmsnorm(lf_dtype odt, lf_dtype idt, int64_t T, int64_t C, int in_place) {
    char name[128];
    snprintf(name, sizeof name, "rmsnorm %s <- %s T=%lld C=%lld%s", dn(odt), dn(idt), (long long)T, (long long)C,
             in_place ? " in-place" : "");
    lf_dtype d2[2] = {odt, idt};
    if (!both_support(name, LF_OP_RMSNORM, d2)) return;
    float *x = rand_floats(T * C, -2, 2), *w = rand_floats(C, 0.5f, 1.5f);
    pair px = put_dt(x, T * C, idt), pw = put2(w, (size_t)C * 4);
    pair po = in_place ? px : put2(NULL, lf_act_bytes(odt, T * C));
    if (!in_place) poison(po);
    lf_status sg = gpu->ops->rmsnorm_forward(gpu, AG(po, odt), AG(px, idt), pw.g, T, C, 1e-5f);
    lf_status sc = cpu->ops->rmsnorm_forward(cpu, AC(po, odt), AC(px, idt), pw.c, T, C, 1e-5f);
    /* f32 sum of C squares in another order (or against double), then a few roundings: ~1e-6 relative */
    if (ran(name, sg, sc)) check(name, po, odt, T * C, tol_out((tol_t){1e-6, 1e-5, 1e-10}, odt));
    free2(px), free2(pw);
    if (!in_place) free2(po);
    free(x), free(w);
}

/* out[odt] = inp[idt] @ weight[wdt]^T */
static void test_matmul(lf_dtype wdt, lf_dtype odt, lf_dtype idt, int64_t T, int64_t C, int64_t OC, int with_bias,
                        int misalign) {
    char name[200];
    snprintf(name, sizeof name, "matmul w %s, %s <- %s T=%lld C=%lld OC=%lld%s%s", dn(wdt), dn(odt), dn(idt),
             (long long)T, (long long)C, (long long)OC, with_bias ? " +bias" : "",
             misalign ? " (unaligned weight/bias)" : "");
    lf_dtype d2[2] = {odt, idt};
    if (!both_support(name, LF_OP_MATMUL, d2)) return;
    const int64_t off = misalign ? 1 : 0; /* elements: a 2- or 4-byte aligned view, like a weight in a blob */
    float *x = rand_floats(T * C, -1, 1), *w = rand_floats(OC * C + off, -1, 1), *b = rand_floats(OC + 1, -1, 1);
    for (int64_t i = 0; i < OC * C + off; i++) w[i] /= sqrtf((float)C); /* keeps out ~ U(-1,1)-sized */
    const size_t es = lf_act_bytes(wdt, 1);
    pair pw = put_dt(w, OC * C + off, wdt), px = put_dt(x, T * C, idt), pb = put2(b, (size_t)(OC + 1) * 4);
    pair po = put2(NULL, lf_act_bytes(odt, T * OC));
    int64_t shape[2] = {OC, C};
    lf_tensor wc = lf_tensor_view((char *)pw.c + off * es, wdt, 2, shape);
    lf_tensor wg = lf_tensor_view((char *)pw.g + off * es, wdt, 2, shape);
    wg.device = LF_DEVICE_CUDA;
    const float *bc = with_bias ? (const float *)pb.c + off : NULL, *bg = with_bias ? (const float *)pb.g + off : NULL;
    poison(po);
    lf_status sg = gpu->ops->matmul_forward(gpu, AG(po, odt), AG(px, idt), &wg, bg, T, C, OC);
    lf_status sc = cpu->ops->matmul_forward(cpu, AC(po, odt), AC(px, idt), &wc, bc, T, C, OC);
    if (ran(name, sg, sc)) {
        const double r = rms_of(po, odt, T * OC);
        /* The GPU multiplies in the weight's type: an input of another dtype is converted first, which loses
         * bits when the input is f32 and the weight 16-bit, or f16 and the weight bf16. */
        const int lossy = (idt == LF_DTYPE_F32 && wdt != LF_DTYPE_F32) || (idt == LF_DTYPE_F16 && wdt == LF_DTYPE_BF16);
        tol_t tol;
        if (!lossy) {
            /* exact products (16-bit x 16-bit is exact in f32) accumulated in f32 (cuBLAS COMPUTE_32F: no TF32)
             * against double: error ~ sqrt(C) * 2^-24 * |out| ~ 3e-6 relative at C = 2048; 1e-4 is ample. */
            tol = (tol_t){1e-4 * r, 1e-4, 1e-8};
        } else if (wdt == LF_DTYPE_BF16) {
            /* the activations are rounded to 8 mantissa bits (relative error up to 2^-9, rms 2^-9/sqrt(3) =
             * 1.1e-3). On a C-length dot product the errors are independent, so the output error is ~1.1e-3 *
             * rms(out) per element (NMSE ~1.3e-6), ~5e-3 * rms(out) at the worst of ~1e5 elements: 1e-2
             * relative to the output scale, NMSE 1e-4. */
            tol = (tol_t){1e-2 * r, 1e-2, 1e-4};
        } else {
            /* f16 keeps 11 mantissa bits: the bf16 reasoning with 8x less rounding, so 4e-3 / 1e-5 */
            tol = (tol_t){4e-3 * r, 4e-3, 1e-5};
        }
        check(name, po, odt, T * OC, tol_out(tol, odt));
    }
    free2(pw), free2(px), free2(pb), free2(po);
    free(x), free(w), free(b);
}

static void test_rope(lf_dtype dt, int64_t T, int64_t NH, int64_t D, float theta) {
    char name[128];
    snprintf(name, sizeof name, "rope %s T=%lld NH=%lld D=%lld theta=%g", dn(dt), (long long)T, (long long)NH,
             (long long)D, theta);
    if (!both_support(name, LF_OP_ROPE, &dt)) return;
    float *x = rand_floats(T * NH * D, -1, 1), *inv = xmalloc((size_t)(D / 2) * 4);
    int32_t *pos = xmalloc((size_t)T * 4);
    for (int64_t i = 0; i < D / 2; i++) inv[i] = (float)(1.0 / pow(theta, (double)(2 * i) / (double)D));
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)(rng_next() % 4096);
    pair px = put_dt(x, T * NH * D, dt), pi = put2(inv, (size_t)(D / 2) * 4), pp = put2(pos, (size_t)T * 4);
    lf_status sg = gpu->ops->rope_forward(gpu, AG(px, dt), pp.g, pi.g, T, NH, D);
    lf_status sc = cpu->ops->rope_forward(cpu, AC(px, dt), pp.c, pi.c, T, NH, D);
    /* same f32 angle p*inv_freq on both sides, then accurate sin/cos (~1 ulp): ~1e-7. A reference that forms
     * the angle in double differs by up to half an f32 ulp of the angle (2.4e-4 rad at p = 4095): 1e-3. */
    if (ran(name, sg, sc)) check(name, px, dt, T * NH * D, tol_out((tol_t){1e-3, 1e-5, 1e-6}, dt));
    free2(px), free2(pi), free2(pp);
    free(x), free(inv), free(pos);
}

/* f32 attention: softmax sums and the weighted sum of v in another order (online, split over warps) and in
 * f32 against double: ~1e-6 on outputs of size ~0.1..1. 2e-5 + 1e-4*|ref| leaves an order of magnitude. */
static const tol_t TOL_ATT = {2e-5, 1e-4, 1e-9};

/* pos[t] = p0 + t (a chunk of a sequence whose cache holds rows 0..p0+T-1, so S = p0 + T) */
static void test_attention(lf_dtype odt, lf_dtype dt, int64_t T, int64_t p0, int64_t H, int64_t KH, int64_t D,
                           int64_t window) {
    const int64_t S = p0 + T;
    char name[160];
    snprintf(name, sizeof name, "attention %s <- %s T=%lld S=%lld H=%lld KH=%lld D=%lld window=%lld", dn(odt), dn(dt),
             (long long)T, (long long)S, (long long)H, (long long)KH, (long long)D, (long long)window);
    lf_dtype d4[4] = {odt, dt, dt, dt};
    if (!both_support(name, LF_OP_ATTENTION, d4)) return;
    float *q = rand_floats(T * H * D, -1, 1), *k = rand_floats(S * KH * D, -1, 1), *v = rand_floats(S * KH * D, -1, 1);
    int32_t *pos = xmalloc((size_t)T * 4);
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)(p0 + t);
    pair pq = put_dt(q, T * H * D, dt), pk = put_dt(k, S * KH * D, dt), pv = put_dt(v, S * KH * D, dt);
    pair pp = put2(pos, (size_t)T * 4), po = put2(NULL, lf_act_bytes(odt, T * H * D));
    const float scale = 1.0f / sqrtf((float)D);
    poison(po);
    lf_status sg = gpu->ops->attention_forward(gpu, AG(po, odt), AG(pq, dt), AG(pk, dt), AG(pv, dt), pp.g, T, S, H, KH,
                                               D, window, scale);
    lf_status sc = cpu->ops->attention_forward(cpu, AC(po, odt), AC(pq, dt), AC(pk, dt), AC(pv, dt), pp.c, T, S, H, KH,
                                               D, window, scale);
    if (ran(name, sg, sc)) check(name, po, odt, T * H * D, tol_out(TOL_ATT, odt));
    free2(pq), free2(pk), free2(pv), free2(pp), free2(po);
    free(q), free(k), free(v), free(pos);
}

/* Paged attention of T queries at positions p0..p0+T-1 of one sequence over a pool of NB blocks of BS slots.
 * The block table maps the sequence's n_blocks = ceil((p0+T)/BS) (+ `extra` unused ones) logical blocks to a
 * random permutation of the pool's ids, so consecutive positions jump around the pool; with `hole`, blocks
 * lying wholly before every query's window are set to -1 (freed), which a correct kernel never reads. */
static void test_paged(lf_dtype odt, lf_dtype dt, int64_t BS, int64_t T, int64_t p0, int64_t H, int64_t KH, int64_t D,
                       int64_t window, int64_t extra, int hole) {
    const int64_t S = p0 + T, n_blocks = (S + BS - 1) / BS + extra, NB = n_blocks + 3;
    char name[200];
    snprintf(name, sizeof name, "attention_paged %s <- %s BS=%lld T=%lld p0=%lld H=%lld KH=%lld D=%lld window=%lld "
             "n_blocks=%lld%s [%s]", dn(odt), dn(dt), (long long)BS, (long long)T, (long long)p0, (long long)H,
             (long long)KH, (long long)D, (long long)window, (long long)n_blocks, hole ? " holes" : "",
             T >= 4 ? "prefill" : "decode");
    lf_dtype d4[4] = {odt, dt, dt, dt};
    if (!both_support(name, LF_OP_ATTENTION_PAGED, d4)) return;
    const int64_t pool_n = NB * BS * KH * D;
    float *q = rand_floats(T * H * D, -1, 1), *k = rand_floats(pool_n, -1, 1), *v = rand_floats(pool_n, -1, 1);
    int32_t *pos = xmalloc((size_t)T * 4), *bt = xmalloc((size_t)n_blocks * 4), *perm = xmalloc((size_t)NB * 4);
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)(p0 + t);
    for (int64_t i = 0; i < NB; i++) perm[i] = (int32_t)i;
    for (int64_t i = NB - 1; i > 0; i--) { /* Fisher-Yates */
        int64_t j = (int64_t)(rng_next() % (uint64_t)(i + 1));
        int32_t tmp = perm[i];
        perm[i] = perm[j], perm[j] = tmp;
    }
    for (int64_t b = 0; b < n_blocks; b++) bt[b] = perm[b];
    if (hole && window > 0) {
        const int64_t first_lo = p0 - window + 1 > 0 ? p0 - window + 1 : 0; /* smallest attended position */
        for (int64_t b = 0; b < first_lo / BS; b++) bt[b] = -1;
    }
    pair pq = put_dt(q, T * H * D, dt), pk = put_dt(k, pool_n, dt), pv = put_dt(v, pool_n, dt);
    pair pp = put2(pos, (size_t)T * 4), pb = put2(bt, (size_t)n_blocks * 4);
    pair po = put2(NULL, lf_act_bytes(odt, T * H * D));
    const float scale = 1.0f / sqrtf((float)D);
    poison(po);
    lf_status sg = gpu->ops->attention_paged_forward(gpu, AG(po, odt), AG(pq, dt), AG(pk, dt), AG(pv, dt), pb.g,
                                                     n_blocks, BS, pp.g, T, H, KH, D, window, scale);
    lf_status sc = cpu->ops->attention_paged_forward(cpu, AC(po, odt), AC(pq, dt), AC(pk, dt), AC(pv, dt), pb.c,
                                                     n_blocks, BS, pp.c, T, H, KH, D, window, scale);
    /* as contiguous attention; the split-KV merge adds one more f32 rescaling per split (~1e-7) */
    if (ran(name, sg, sc)) check(name, po, odt, T * H * D, tol_out(TOL_ATT, odt));
    free2(pq), free2(pk), free2(pv), free2(pp), free2(pb), free2(po);
    free(q), free(k), free(v), free(pos), free(bt), free(perm);
}

/* swiglu and residual on out/a/b dtypes (od, ad, bd); in_place: out is a (same dtype) */
static void test_elementwise(lf_dtype od, lf_dtype ad, lf_dtype bd, int64_t N, int in_place) {
    char name[160];
    float *a = rand_floats(N, -8, 8), *b = rand_floats(N, -2, 2);
    pair pa = put_dt(a, N, ad), pb = put_dt(b, N, bd), po = put2(NULL, lf_act_bytes(od, N));
    pair out = in_place ? pa : po;
    lf_dtype d3[3] = {od, ad, bd};
    if (!in_place) poison(po);
    snprintf(name, sizeof name, "swiglu %s <- %s, %s N=%lld%s", dn(od), dn(ad), dn(bd), (long long)N,
             in_place ? " in-place (out = gate)" : "");
    if (both_support(name, LF_OP_SWIGLU, d3)) {
        lf_status sg = gpu->ops->swiglu_forward(gpu, AG(out, od), AG(pa, ad), AG(pb, bd), N);
        lf_status sc = cpu->ops->swiglu_forward(cpu, AC(out, od), AC(pa, ad), AC(pb, bd), N);
        /* one expf (<= 2 ulp on the GPU, ~1 in glibc) and three roundings, ~5 ulp = 6e-7; a reference written
         * as g * sigmoid(g), or in double, rounds differently again: 4e-6 (~34 ulp) relative */
        if (ran(name, sg, sc)) check(name, out, od, N, tol_out((tol_t){1e-7, 4e-6, 1e-11}, od));
    }

    /* inputs again (swiglu may have overwritten a) */
    void *ha = to_dt(a, N, ad);
    if (cpu->ops->upload(cpu, pa.c, ha, lf_act_bytes(ad, N)) != LF_OK ||
        gpu->ops->upload(gpu, pa.g, ha, lf_act_bytes(ad, N)) != LF_OK)
        abort();
    free(ha);
    if (!in_place) poison(po);
    snprintf(name, sizeof name, "residual %s <- %s, %s N=%lld%s", dn(od), dn(ad), dn(bd), (long long)N,
             in_place ? " in-place (out = a)" : "");
    if (both_support(name, LF_OP_RESIDUAL, d3)) {
        lf_status sg = gpu->ops->residual_forward(gpu, AG(out, od), AG(pa, ad), AG(pb, bd), N);
        lf_status sc = cpu->ops->residual_forward(cpu, AC(out, od), AC(pa, ad), AC(pb, bd), N);
        /* one correctly rounded f32 add, then one rounding to od on both sides: bit-identical */
        if (ran(name, sg, sc)) check(name, out, od, N, (tol_t){0, 0, 0});
    }
    free2(pa), free2(pb), free2(po);
    free(a), free(b);
}

static void test_add_scaled(lf_dtype yd, lf_dtype xd, int64_t N, int same) {
    char name[128];
    snprintf(name, sizeof name, "add_scaled %s += %s N=%lld%s", dn(yd), dn(xd), (long long)N, same ? " (x = y)" : "");
    lf_dtype d2[2] = {yd, xd};
    if (!both_support(name, LF_OP_ADD_SCALED, d2)) return;
    float *y = rand_floats(N, -1, 1), *x = rand_floats(N, -1, 1);
    pair py = put_dt(y, N, yd), px = same ? py : put_dt(x, N, xd);
    lf_status sg = gpu->ops->add_scaled_forward(gpu, AG(py, yd), AG(px, same ? yd : xd), 0.37f, N);
    lf_status sc = cpu->ops->add_scaled_forward(cpu, AC(py, yd), AC(px, same ? yd : xd), 0.37f, N);
    /* y + round(alpha*x) in f32 on both sides (the CPU's f32 axpy may fuse the multiply-add: 1 ulp) */
    if (ran(name, sg, sc)) check(name, py, yd, N, tol_out((tol_t){1e-7, 2e-7, 1e-13}, yd));
    free2(py);
    if (!same) free2(px);
    free(y), free(x);
}

static void test_dora(lf_dtype od, lf_dtype ld, int64_t T, int64_t OC, int with_bias) {
    char name[128];
    snprintf(name, sizeof name, "dora_combine %s, lo %s T=%lld OC=%lld%s", dn(od), dn(ld), (long long)T, (long long)OC,
             with_bias ? " +bias" : "");
    lf_dtype d2[2] = {od, ld};
    if (!both_support(name, LF_OP_DORA_COMBINE, d2)) return;
    float *o = rand_floats(T * OC, -2, 2), *lo = rand_floats(T * OC, -1, 1), *mag = rand_floats(OC, 0.5f, 2.0f);
    float *wn = rand_floats(OC, 0.5f, 2.0f), *b = rand_floats(OC, -1, 1);
    pair po = put_dt(o, T * OC, od), pl = put_dt(lo, T * OC, ld), pm = put2(mag, (size_t)OC * 4);
    pair pn = put2(wn, (size_t)OC * 4), pb = put2(b, (size_t)OC * 4);
    lf_status sg = gpu->ops->dora_combine_forward(gpu, AG(po, od), AG(pl, ld), pm.g, pn.g, with_bias ? pb.g : NULL,
                                                  0.5f, T, OC);
    lf_status sc = cpu->ops->dora_combine_forward(cpu, AC(po, od), AC(pl, ld), pm.c, pn.c, with_bias ? pb.c : NULL,
                                                  0.5f, T, OC);
    /* the same six f32 operations in the same order on both sides (no contraction on the GPU); the C compiler
     * may contract on the CPU: a few ulp of an O(1) result */
    if (ran(name, sg, sc)) check(name, po, od, T * OC, tol_out((tol_t){1e-6, 1e-6, 1e-12}, od));
    free2(po), free2(pl), free2(pm), free2(pn), free2(pb);
    free(o), free(lo), free(mag), free(wn), free(b);
}

static void test_convert(lf_dtype dd, lf_dtype sd, int64_t N) {
    char name[128];
    snprintf(name, sizeof name, "convert %s <- %s N=%lld", dn(dd), dn(sd), (long long)N);
    lf_dtype d2[2] = {dd, sd};
    if (!both_support(name, LF_OP_CONVERT, d2)) return;
    float *x = rand_floats(N, -3, 3);
    for (int64_t i = 0; i < N; i += 7) x[i] *= 1e-6f; /* some f16 subnormals */
    pair ps = put_dt(x, N, sd), pd = put2(NULL, lf_act_bytes(dd, N));
    poison(pd);
    lf_status sg = gpu->ops->convert(gpu, AG(pd, dd), AG(ps, sd), N);
    lf_status sc = cpu->ops->convert(cpu, AC(pd, dd), AC(ps, sd), N);
    /* exact widening and one round-to-nearest-even on both sides: bit-identical */
    if (ran(name, sg, sc)) check(name, pd, dd, N, (tol_t){0, 0, 0});
    free2(ps), free2(pd);
    free(x);
}

static void test_softmax(lf_dtype od, lf_dtype id, int64_t R, int64_t V, int in_place) {
    char name[128];
    snprintf(name, sizeof name, "softmax %s <- %s R=%lld V=%lld%s", dn(od), dn(id), (long long)R, (long long)V,
             in_place ? " in-place" : "");
    lf_dtype d2[2] = {od, id};
    if (!both_support(name, LF_OP_SOFTMAX, d2)) return;
    float *x = rand_floats(R * V, -15, 15); /* logit-like spread: weights from ~1e-13 to ~1 */
    pair px = put_dt(x, R * V, id), po = in_place ? px : put2(NULL, lf_act_bytes(od, R * V));
    if (!in_place) poison(po);
    lf_status sg = gpu->ops->softmax_forward(gpu, AG(po, od), AG(px, id), R, V);
    lf_status sc = cpu->ops->softmax_forward(cpu, AC(po, od), AC(px, id), R, V);
    /* expf (~2 ulp) and an f32 sum over V in another order: ~sqrt(V) * 2^-24 ~ 2e-5 relative at V = 128k */
    if (ran(name, sg, sc)) check(name, po, od, R * V, tol_out((tol_t){1e-9, 1e-4, 1e-9}, od));
    free2(px);
    if (!in_place) free2(po);
    free(x);
}

/* ================================================================ capabilities */

static void expect(int cond, const char *what) {
    printf("%s supports: %s\n", cond ? "ok  " : "FAIL", what);
    if (cond) n_pass++; else n_fail++;
}

static void test_supports(void) {
    char line[256];
    for (int op = 0; op < LF_OP_COUNT; op++) {
        const int n = lf_op_n_act((lf_op)op);
        size_t used = (size_t)snprintf(line, sizeof line, "%-20s", lf_op_name((lf_op)op));
        for (int d = 0; d < 3; d++)
            used += (size_t)snprintf(line + used, sizeof line - used, " %s:%d", dn(DTS[d]),
                                     lf_backend_supports(gpu, (lf_op)op, DTS[d]));
        printf("info: cuda %s\n", line);
        for (int d = 0; d < 3; d++) /* every inference op in every uniform dtype; no f32 training op yet */
            if (lf_backend_supports(gpu, (lf_op)op, DTS[d]) != (n > 0)) {
                snprintf(line, sizeof line, "%s %s answers %d", lf_op_name((lf_op)op), dn(DTS[d]), n == 0);
                expect(0, line);
            }
    }
    const lf_dtype mixed_qkv[4] = {LF_DTYPE_F32, LF_DTYPE_BF16, LF_DTYPE_F32, LF_DTYPE_BF16};
    const lf_dtype lm_head[2] = {LF_DTYPE_F32, LF_DTYPE_BF16}, bad[2] = {LF_DTYPE_F32, LF_DTYPE_I32};
    expect(!gpu->ops->supports_op(gpu, LF_OP_ATTENTION_PAGED, mixed_qkv, 4), "attention_paged with mixed q/k/v: 0");
    expect(gpu->ops->supports_op(gpu, LF_OP_MATMUL, lm_head, 2), "matmul f32 <- bf16 (the lm_head): 1");
    expect(gpu->ops->supports_op(gpu, LF_OP_MATMUL_Q4, lm_head, 2), "matmul_q4 f32 <- bf16: 1");
    expect(!gpu->ops->supports_op(gpu, LF_OP_MATMUL, bad, 2), "matmul with an I32 activation: 0");
    expect(!gpu->ops->supports_op(gpu, LF_OP_MATMUL, lm_head, 1), "matmul with the wrong arity: 0");

    /* an unsupported call is refused with LF_EUNSUPPORTED, naming op and dtypes, and runs nothing */
    float *d = gpu->ops->alloc(gpu, 64 * 4);
    if (!d) abort();
    lf_status s = gpu->ops->attention_forward(gpu, lf_act_of(d, LF_DTYPE_F32), lf_act_of(d, LF_DTYPE_BF16),
                                              lf_act_of(d, LF_DTYPE_F32), lf_act_of(d, LF_DTYPE_F32), NULL, 1, 1, 1, 1, 2,
                                              0, 1.0f);
    printf("info: refused call: %s\n", gpu->err.msg);
    expect(s == LF_EUNSUPPORTED && strstr(gpu->err.msg, "attention") && strstr(gpu->err.msg, "BF16"),
           "attention with q BF16, k F32 returns LF_EUNSUPPORTED naming op and dtypes");
    s = gpu->ops->axpy(gpu, d, d, 1.0f, 64);
    expect(s == LF_EUNSUPPORTED && strstr(gpu->err.msg, "axpy"), "a training op (axpy) returns LF_EUNSUPPORTED");
    expect(gpu->ops->synchronize(gpu) == LF_OK, "backend usable after refused calls");
    gpu->ops->free(gpu, d);
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

/* bf16 weight; activations in `adt` (f32: includes the input conversion; bf16: the bf16 model's call) */
static void time_matmul_bf16(lf_dtype adt, int64_t T, int64_t C, int64_t OC) {
    float *x = rand_floats(T * C, -1, 1);
    void *hx = to_dt(x, T * C, adt);
    uint16_t *w = xmalloc((size_t)(OC * C) * 2);
    for (int64_t i = 0; i < OC * C; i++) w[i] = lf_f32_to_bf16(rng_uniform(-1, 1) / sqrtf((float)C));
    void *dx = gpu->ops->alloc(gpu, lf_act_bytes(adt, T * C)), *dout = gpu->ops->alloc(gpu, lf_act_bytes(adt, T * OC));
    void *dw = gpu->ops->alloc(gpu, (size_t)(OC * C) * 2);
    if (!dx || !dout || !dw || gpu->ops->upload(gpu, dx, hx, lf_act_bytes(adt, T * C)) != LF_OK ||
        gpu->ops->upload(gpu, dw, w, (size_t)(OC * C) * 2) != LF_OK)
        abort();
    int64_t shape[2] = {OC, C};
    lf_tensor wt = lf_tensor_view(dw, LF_DTYPE_BF16, 2, shape);
    wt.device = LF_DEVICE_CUDA;
    const lf_act ao = lf_act_of(dout, adt), ai = lf_act_of(dx, adt);
    enum { WARMUP = 3, BATCH = 10, REPS = 7 };
    double t_batch[REPS];
    int ok = 1;
    for (int i = 0; i < WARMUP && ok; i++) ok = gpu->ops->matmul_forward(gpu, ao, ai, &wt, NULL, T, C, OC) == LF_OK;
    ok = ok && gpu->ops->synchronize(gpu) == LF_OK;
    for (int r = 0; r < REPS && ok; r++) {
        double t0 = now_s();
        for (int i = 0; i < BATCH && ok; i++) ok = gpu->ops->matmul_forward(gpu, ao, ai, &wt, NULL, T, C, OC) == LF_OK;
        ok = ok && gpu->ops->synchronize(gpu) == LF_OK;
        t_batch[r] = (now_s() - t0) / BATCH;
    }
    if (ok) {
        qsort(t_batch, REPS, sizeof t_batch[0], cmp_double);
        double med = t_batch[REPS / 2], gflop = 2.0 * (double)T * (double)C * (double)OC * 1e-9;
        printf("info: {\"bench\":\"cuda_matmul_bf16\",\"act\":\"%s\",\"T\":%lld,\"C\":%lld,\"OC\":%lld,\"ms\":%.4f,"
               "\"gflops\":%.1f} (median of %d batches of %d)\n",
               dn(adt), (long long)T, (long long)C, (long long)OC, med * 1e3, gflop / med, REPS, BATCH);
    } else {
        printf("info: matmul timing failed: %s\n", gpu->err.msg);
    }
    gpu->ops->free(gpu, dx), gpu->ops->free(gpu, dout), gpu->ops->free(gpu, dw);
    free(x), free(hx), free(w);
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
    const lf_dtype F32 = LF_DTYPE_F32, BF16 = LF_DTYPE_BF16, F16 = LF_DTYPE_F16;

    test_supports();

    for (int w = 0; w < 3; w++)
        for (int o = 0; o < 3; o++) test_embedding(DTS[w], DTS[o], Ts[(w + o) % 4], 1001, Cs[(w + 2 * o) % 3]);

    for (int d = 0; d < 3; d++) {
        for (int t = 0; t < 4; t++)
            for (int c = 0; c < 3; c++) test_rmsnorm(DTS[d], DTS[d], Ts[t], Cs[c], 0);
        test_rmsnorm(DTS[d], DTS[d], 7, 4096, 1);
    }
    test_rmsnorm(BF16, F32, 7, 2048, 0);
    test_rmsnorm(F32, F16, 7, 257, 0);

    {
        static const int64_t OCs[] = {67, 1001};
        /* uniform dtypes: the weight in the activations' dtype (the 16-bit model), and f32 weights */
        for (int d = 0; d < 3; d++)
            for (int t = 0; t < 4; t++)
                for (int c = 0; c < 3; c++)
                    for (int o = 0; o < 2; o++)
                        test_matmul(DTS[d], DTS[d], DTS[d], Ts[t], Cs[c], OCs[o], (t + c + o) % 2, 0);
        for (int d = 1; d < 3; d++) test_matmul(F32, DTS[d], DTS[d], 7, 257, 67, 1, 0);
        /* f32 activations on 16-bit weights (the f32 model on a bf16 checkpoint) */
        for (int d = 1; d < 3; d++)
            for (int t = 0; t < 4; t += 2) test_matmul(DTS[d], F32, F32, Ts[t], 2048, 1001, t == 0, 0);
        /* the lm_head: 16-bit hidden state, f32 logits */
        test_matmul(BF16, F32, BF16, 7, 2048, 1001, 0, 0);
        test_matmul(F16, F32, F16, 64, 257, 1001, 1, 0);
        /* 16-bit out with a bias (f32 staging), other mixes, unaligned views */
        test_matmul(BF16, BF16, F32, 7, 257, 67, 1, 0);
        test_matmul(F16, BF16, BF16, 7, 257, 67, 1, 0);
        test_matmul(BF16, F16, F16, 7, 257, 67, 0, 0);
        for (int d = 0; d < 3; d++) test_matmul(DTS[d], DTS[d], DTS[d], 7, 257, 1001, 1, 1);
        test_matmul(BF16, BF16, BF16, 64, 2048, 2048, 1, 1);
        test_matmul(BF16, F32, F32, 64, 2048, 2048, 1, 1);
        test_matmul(BF16, BF16, BF16, 3, 0, 5, 1, 0); /* C = 0: out = bias */
    }

    for (int d = 0; d < 3; d++) {
        test_rope(DTS[d], 1, 8, 64, 10000.0f);
        test_rope(DTS[d], 7, 32, 128, 500000.0f);
        test_rope(DTS[d], 129, 8, 128, 10000.0f);
        test_rope(DTS[d], 64, 3, 32, 10000.0f);
    }

    for (int d = 0; d < 3; d++) {
        const lf_dtype dt = DTS[d];
        test_attention(dt, dt, 1, 0, 8, 2, 64, 0);     /* first token of a sequence: one key */
        test_attention(dt, dt, 1, 999, 32, 8, 128, 0); /* decode step at a long position */
        test_attention(dt, dt, 64, 0, 8, 2, 64, 0);    /* prefill, GQA */
        test_attention(dt, dt, 129, 0, 4, 4, 128, 16); /* prefill, MHA, sliding window */
        test_attention(dt, dt, 7, 93, 8, 1, 64, 0);    /* chunk after a cached prefix, MQA */
        test_attention(dt, dt, 7, 93, 6, 3, 96, 40);   /* chunk with a window straddling the prefix, odd D/32 */
        test_attention(dt, dt, 1, 2047, 8, 2, 256, 1); /* window 1: attends only itself */
    }
    test_attention(F32, BF16, 7, 93, 8, 2, 128, 0); /* f32 out from bf16 q/k/v */

    for (int d = 0; d < 3; d++) {
        const lf_dtype dt = DTS[d];
        /* decode (T < 4: split-KV + combine), BS = 1 and 16, GQA / MQA / MHA, windows, ragged last block */
        test_paged(dt, dt, 16, 1, 0, 8, 2, 64, 0, 0, 0);        /* one key */
        test_paged(dt, dt, 16, 1, 37, 8, 2, 128, 0, 1, 0);       /* short: one split; an unused block */
        test_paged(dt, dt, 16, 1, 3000, 32, 8, 128, 0, 0, 0);    /* long: many splits */
        test_paged(dt, dt, 1, 1, 700, 8, 1, 64, 0, 0, 0);        /* BS = 1, MQA */
        test_paged(dt, dt, 16, 1, 2500, 12, 2, 128, 300, 0, 1);  /* window, freed blocks, group 6 = 4 + 2 */
        test_paged(dt, dt, 16, 3, 1000, 16, 4, 96, 0, 2, 0);     /* 3 queries, D = 96 (lanes partly idle) */
        test_paged(dt, dt, 16, 1, 1500, 8, 8, 256, 0, 0, 0);     /* MHA, D = 256 */
        test_paged(dt, dt, 1, 2, 400, 4, 2, 512, 50, 0, 1);      /* BS = 1, D = 512, window */
        /* prefill (T >= 4: tiled), from 0 and after a cached prefix */
        test_paged(dt, dt, 16, 37, 0, 8, 2, 64, 0, 0, 0);
        test_paged(dt, dt, 16, 64, 100, 32, 8, 128, 0, 1, 0);
        test_paged(dt, dt, 1, 19, 50, 12, 3, 128, 20, 0, 1);     /* BS = 1, window, holes */
        test_paged(dt, dt, 16, 129, 0, 4, 4, 256, 40, 0, 0);     /* window < T */
        test_paged(dt, dt, 16, 5, 300, 6, 1, 512, 0, 0, 0);      /* MQA, D = 512, partial tile of queries */
    }
    test_paged(F32, BF16, 16, 1, 3000, 32, 8, 128, 0, 0, 0); /* f32 out from bf16 pools */
    test_paged(F32, F16, 16, 37, 0, 8, 2, 64, 0, 0, 0);

    {
        static const int64_t Ns[] = {1, 7, 1000, 100003, 4 * 1024 * 1024 + 5};
        for (int d = 0; d < 3; d++) {
            for (int i = 0; i < 5; i++) test_elementwise(DTS[d], DTS[d], DTS[d], Ns[i], 0);
            test_elementwise(DTS[d], DTS[d], DTS[d], 100003, 1);
        }
        test_elementwise(BF16, F32, BF16, 100003, 0);
        test_elementwise(F32, F16, BF16, 1000, 0);
        for (int d = 0; d < 3; d++) {
            test_add_scaled(DTS[d], DTS[d], 100003, 0);
            test_add_scaled(DTS[d], DTS[d], 1000, 1);
        }
        test_add_scaled(BF16, F32, 1000, 0);
        test_add_scaled(F32, BF16, 1000, 0);
        for (int d = 0; d < 3; d++) {
            test_dora(DTS[d], DTS[d], 7, 1001, 1);
            test_dora(DTS[d], DTS[d], 64, 257, 0);
        }
        test_dora(BF16, F32, 7, 257, 1);
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++) test_convert(DTS[a], DTS[b], 100003);
    }

    for (int d = 0; d < 3; d++) {
        test_softmax(DTS[d], DTS[d], 1, 1, 0);
        test_softmax(DTS[d], DTS[d], 7, 257, 0);
        test_softmax(DTS[d], DTS[d], 64, 32000, 0);
        test_softmax(DTS[d], DTS[d], 3, 128256, 1);
    }
    test_softmax(F32, BF16, 7, 32000, 0);

    time_matmul_bf16(F32, 512, 4096, 4096);
    time_matmul_bf16(BF16, 512, 4096, 4096);
    time_matmul_bf16(BF16, 4096, 4096, 4096);

    if (n_unsupported) printf("(%d cases not run: op or dtype not supported by a backend)\n", n_unsupported);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    lf_backend_free(cpu);
    lf_backend_free(gpu);
    return n_fail ? 1 : 0;
}
