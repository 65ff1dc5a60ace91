/* bench_cpu_ops.c - CPU matmul throughput against limits measured in the same run (a benchmark, not a test).
 *
 *   prefill: out[T=128, OC] = inp[128, C=2048] @ W[OC, 2048]^T, OC in {2048, 5632}, BF16 and F32 weights:
 *            GFLOP/s (2*T*C*OC per call) against the FMA peak of a tight 8-wide FMA loop on the same threads.
 *   decode:  T = 1 GEMV, GB/s of weight bytes, cycling through enough weight copies (>= 1 GiB) that they come
 *            from DRAM, against memcpy bandwidth (bytes read + written per second) and a read-only stream
 *            (AVX2 loads summed; what a GEMV needs) over 512 MiB buffers.
 * Threads = all online CPUs unless --threads N. Progress goes to stderr; stdout is one JSON line.
 *
 * Build (see the CMake bench_* target, or):
 *   gcc -std=c11 -O2 -I. -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE bench/bench_cpu_ops.c kernels/backend.c
 *       kernels/cpu/[a-z_]*.c core/status.c core/tensor.c core/threadpool.c core/log.c -lpthread -lm */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench_args.h" // defines: lf_args_parse
#include "core/threadpool.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_ops.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *xalloc(size_t n) {
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p) {
        fprintf(stderr, "bench_cpu_ops: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static uint64_t rng = 88172645463325252ull;
static float frand(void) { /* xorshift64, uniform [-1, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (2.0 / 16777216.0)) - 1.0f;
}

/* ---- FMA peak: each item runs FMA_ITERS iterations of 12 independent 8-wide FMA chains ---- */

#define FMA_ITERS 2000000
static volatile float fma_sink;

#ifdef LF_CPU_X86
static LF_CPU_AVX2 void fma_item_avx2(void *ctx, int64_t b, int64_t e, int tid) {
    (void)ctx, (void)tid;
    for (int64_t it = b; it < e; it++) {
        /* distinct starting values, or the compiler merges the identical chains into one */
        __m256 a0 = _mm256_set1_ps(1.00f), a1 = _mm256_set1_ps(1.01f), a2 = _mm256_set1_ps(1.02f),
               a3 = _mm256_set1_ps(1.03f), a4 = _mm256_set1_ps(1.04f), a5 = _mm256_set1_ps(1.05f),
               a6 = _mm256_set1_ps(1.06f), a7 = _mm256_set1_ps(1.07f), a8 = _mm256_set1_ps(1.08f),
               a9 = _mm256_set1_ps(1.09f), a10 = _mm256_set1_ps(1.10f), a11 = _mm256_set1_ps(1.11f);
        const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
        for (int i = 0; i < FMA_ITERS; i++) {
            a0 = _mm256_fmadd_ps(a0, m, c), a1 = _mm256_fmadd_ps(a1, m, c), a2 = _mm256_fmadd_ps(a2, m, c);
            a3 = _mm256_fmadd_ps(a3, m, c), a4 = _mm256_fmadd_ps(a4, m, c), a5 = _mm256_fmadd_ps(a5, m, c);
            a6 = _mm256_fmadd_ps(a6, m, c), a7 = _mm256_fmadd_ps(a7, m, c), a8 = _mm256_fmadd_ps(a8, m, c);
            a9 = _mm256_fmadd_ps(a9, m, c), a10 = _mm256_fmadd_ps(a10, m, c), a11 = _mm256_fmadd_ps(a11, m, c);
        }
        __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                 _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
        s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
        fma_sink = lf_cpu_hsum8(s);
    }
}
#endif

static void fma_item_scalar(void *ctx, int64_t b, int64_t e, int tid) {
    (void)ctx, (void)tid;
    for (int64_t it = b; it < e; it++) {
        float a[12];
        for (int j = 0; j < 12; j++) a[j] = 1.0f + 0.01f * (float)j;
        for (int i = 0; i < FMA_ITERS; i++)
            for (int j = 0; j < 12; j++) a[j] = a[j] * 0.999999f + 1e-7f;
        float s = 0;
        for (int j = 0; j < 12; j++) s += a[j];
        fma_sink = s;
    }
}

/* GFLOP/s of the FMA loop over all pool threads (best of 3). */
static double fma_peak(lf_pool *pool, int simd, double *flops_per_item) {
    int n = lf_pool_size(pool) * 4;
    lf_pool_fn fn = fma_item_scalar;
    double per_item = (double)FMA_ITERS * 12 * 2; /* scalar: 12 mul+add pairs */
#ifdef LF_CPU_X86
    if (simd) {
        fn = fma_item_avx2;
        per_item = (double)FMA_ITERS * 12 * 8 * 2;
    }
#endif
    (void)simd;
    *flops_per_item = per_item;
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now_s();
        lf_pool_parallel_for(pool, n, 1, fn, NULL);
        double g = per_item * n / (now_s() - t0) * 1e-9;
        if (g > best) best = g;
    }
    return best;
}

/* ---- memory bandwidth ---- */

typedef struct {
    char *dst;
    const char *src;
    size_t bytes;
    int64_t n;
    double sums[64];
} bw_job;

static void memcpy_chunk(void *ctx, int64_t b, int64_t e, int tid) {
    (void)tid;
    bw_job *j = (bw_job *)ctx;
    size_t per = j->bytes / (size_t)j->n;
    memcpy(j->dst + (size_t)b * per, j->src + (size_t)b * per, (size_t)(e - b) * per);
}

#ifdef LF_CPU_X86
static LF_CPU_AVX2 void read_chunk_avx2(void *ctx, int64_t b, int64_t e, int tid) {
    bw_job *j = (bw_job *)ctx;
    size_t per = j->bytes / (size_t)j->n;
    const float *p = (const float *)(j->src + (size_t)b * per);
    size_t nf = (size_t)(e - b) * per / 4;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i + 32 <= nf; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_load_ps(p + i));
        s1 = _mm256_add_ps(s1, _mm256_load_ps(p + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_load_ps(p + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_load_ps(p + i + 24));
    }
    j->sums[tid % 64] += lf_cpu_hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}
#endif

static void read_chunk_scalar(void *ctx, int64_t b, int64_t e, int tid) {
    bw_job *j = (bw_job *)ctx;
    size_t per = j->bytes / (size_t)j->n;
    const float *p = (const float *)(j->src + (size_t)b * per);
    size_t nf = (size_t)(e - b) * per / 4;
    float s[8] = {0};
    for (size_t i = 0; i + 8 <= nf; i += 8)
        for (int k = 0; k < 8; k++) s[k] += p[i + k];
    j->sums[tid % 64] += s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

/* memcpy GB/s (read + written bytes) and read-only GB/s over `bytes`-sized buffers, best of 3 each. */
static void bandwidth(lf_pool *pool, int simd, size_t bytes, double *memcpy_gbps, double *read_gbps) {
    char *a = xalloc(bytes), *b = xalloc(bytes);
    memset(a, 1, bytes); /* fault the pages in before timing */
    memset(b, 2, bytes);
    bw_job j = {.dst = b, .src = a, .bytes = bytes, .n = 256};
    *memcpy_gbps = *read_gbps = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now_s();
        lf_pool_parallel_for(pool, j.n, 1, memcpy_chunk, &j);
        double g = 2.0 * (double)bytes / (now_s() - t0) * 1e-9;
        if (g > *memcpy_gbps) *memcpy_gbps = g;
    }
    lf_pool_fn rf = read_chunk_scalar;
#ifdef LF_CPU_X86
    if (simd) rf = read_chunk_avx2;
#endif
    (void)simd;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now_s();
        lf_pool_parallel_for(pool, j.n, 1, rf, &j);
        double g = (double)bytes / (now_s() - t0) * 1e-9;
        if (g > *read_gbps) *read_gbps = g;
    }
    free(a);
    free(b);
}

/* ---- matmul ---- */

static void *make_weights(lf_dtype dt, int64_t n) {
    if (dt == LF_DTYPE_F32) {
        float *w = xalloc((size_t)n * 4);
        for (int64_t i = 0; i < n; i++) w[i] = frand();
        return w;
    }
    uint16_t *w = xalloc((size_t)n * 2);
    for (int64_t i = 0; i < n; i++) w[i] = lf_f32_to_bf16(frand());
    return w;
}

/* Best-of GFLOP/s of inp[T,C] @ W[OC,C]^T, running for about min_s seconds after one warm-up call. */
static double bench_prefill(lf_backend *be, lf_dtype dt, int64_t T, int64_t C, int64_t OC, double min_s) {
    void *w = make_weights(dt, OC * C);
    float *x = xalloc((size_t)(T * C) * 4), *y = xalloc((size_t)(T * OC) * 4);
    for (int64_t i = 0; i < T * C; i++) x[i] = frand();
    lf_tensor wt = lf_tensor_view(w, dt, 2, (int64_t[]){OC, C});
    if (be->ops->matmul_forward(be, lf_f32(y), lf_f32(x), &wt, NULL, T, C, OC) != LF_OK) {
        fprintf(stderr, "bench_cpu_ops: matmul failed: %s\n", be->err.msg);
        exit(1);
    }
    double best = 1e30, start = now_s();
    int reps = 0;
    while (reps < 3 || now_s() - start < min_s) {
        double t0 = now_s();
        be->ops->matmul_forward(be, lf_f32(y), lf_f32(x), &wt, NULL, T, C, OC);
        double dt_s = now_s() - t0;
        if (dt_s < best) best = dt_s;
        reps++;
    }
    free(w), free(x), free(y);
    return 2.0 * (double)T * (double)C * (double)OC / best * 1e-9;
}

/* GB/s of weight bytes for T=1 GEMVs over n_copies weight matrices (together >= 1 GiB, so from DRAM). */
static double bench_decode(lf_backend *be, lf_dtype dt, int64_t C, int64_t OC, double *us_per_call) {
    size_t wbytes = (size_t)(OC * C) * (dt == LF_DTYPE_F32 ? 4 : 2);
    int n_copies = (int)((((size_t)1 << 30) + wbytes - 1) / wbytes);
    void **w = xalloc(sizeof(void *) * (size_t)n_copies);
    for (int i = 0; i < n_copies; i++) w[i] = make_weights(dt, OC * C);
    float *x = xalloc((size_t)C * 4), *y = xalloc((size_t)OC * 4);
    for (int64_t i = 0; i < C; i++) x[i] = frand();
    double best = 1e30;
    for (int rep = 0; rep < 4; rep++) { /* rep 0 warms up */
        double t0 = now_s();
        for (int i = 0; i < n_copies; i++) {
            lf_tensor wt = lf_tensor_view(w[i], dt, 2, (int64_t[]){OC, C});
            be->ops->matmul_forward(be, lf_f32(y), lf_f32(x), &wt, NULL, 1, C, OC);
        }
        double s = now_s() - t0;
        if (rep > 0 && s < best) best = s;
    }
    for (int i = 0; i < n_copies; i++) free(w[i]);
    free(w), free(x), free(y);
    *us_per_call = best / n_copies * 1e6;
    return (double)wbytes * n_copies / best * 1e-9;
}

static const char USAGE[] =
    "usage: bench_cpu_ops [--threads N]\n"
    "  CPU matmul GFLOP/s and GEMV GB/s against the FMA peak and memory bandwidth measured in the same run;\n"
    "  progress on stderr, one JSON line on stdout\n"
    "  --threads N   threads (default 0 = all online CPUs)\n";

int main(int argc, char **argv) {
    int threads = 0;
    const lf_arg_spec flags[] = {LF_FLAG_INT("--threads", &threads, 0, 4096), LF_FLAG_END};
    int rc = lf_args_parse("bench_cpu_ops", USAGE, argc, argv, 1, flags, NULL, 0, NULL);
    if (rc >= 0) return rc;
    lf_backend *be = lf_backend_cpu_create(threads);
    lf_pool *pool = lf_pool_create(threads);
    if (!be || !pool) {
        fprintf(stderr, "bench_cpu_ops: cannot create the backend or pool\n");
        return 1;
    }
    int n_threads = lf_backend_cpu_threads(be), simd = lf_cpu_simd();
    fprintf(stderr, "bench_cpu_ops: %d threads, %s path\n", n_threads, simd ? "AVX2/FMA/F16C" : "portable");

    double flops_item, peak = fma_peak(pool, simd, &flops_item);
    fprintf(stderr, "  FMA peak (%s): %.1f GFLOP/s\n", simd ? "8-wide FMA" : "portable mul+add loop", peak);
    double cpy, rd;
    bandwidth(pool, simd, (size_t)512 << 20, &cpy, &rd);
    fprintf(stderr, "  memcpy %.1f GB/s (read+write), read-only %.1f GB/s\n", cpy, rd);
    lf_pool_destroy(pool); /* its threads would compete with the backend's */

    char json[4096];
    int n = snprintf(json, sizeof json,
                     "{\"bench\":\"cpu_ops\",\"threads\":%d,\"simd\":\"%s\",\"fma_peak_gflops\":%.1f,"
                     "\"memcpy_gbps\":%.1f,\"read_gbps\":%.1f,\"prefill\":[",
                     n_threads, simd ? "avx2-fma-f16c" : "portable", peak, cpy, rd);
    const lf_dtype dts[2] = {LF_DTYPE_BF16, LF_DTYPE_F32};
    const int64_t OCs[2] = {2048, 5632};
    int first = 1;
    for (int o = 0; o < 2; o++)
        for (int d = 0; d < 2; d++) {
            double g = bench_prefill(be, dts[d], 128, 2048, OCs[o], 1.0);
            fprintf(stderr, "  prefill T=128 C=2048 OC=%lld %s: %.1f GFLOP/s (%.0f%% of peak)\n", (long long)OCs[o],
                    lf_dtype_name(dts[d]), g, 100.0 * g / peak);
            n += snprintf(json + n, sizeof json - (size_t)n,
                          "%s{\"T\":128,\"C\":2048,\"OC\":%lld,\"dtype\":\"%s\",\"gflops\":%.1f,\"pct_peak\":%.1f}",
                          first ? "" : ",", (long long)OCs[o], lf_dtype_name(dts[d]), g, 100.0 * g / peak);
            first = 0;
        }
    n += snprintf(json + n, sizeof json - (size_t)n, "],\"decode\":[");
    const int64_t shapes[2][2] = {{2048, 5632}, {4096, 4096}};
    first = 1;
    for (int s = 0; s < 2; s++)
        for (int d = 0; d < 2; d++) {
            double us, g = bench_decode(be, dts[d], shapes[s][0], shapes[s][1], &us);
            fprintf(stderr,
                    "  decode T=1 C=%lld OC=%lld %s: %.1f GB/s of weights (%.0f%% of memcpy, %.0f%% of read), "
                    "%.0f us/call\n",
                    (long long)shapes[s][0], (long long)shapes[s][1], lf_dtype_name(dts[d]), g, 100.0 * g / cpy,
                    100.0 * g / rd, us);
            n += snprintf(json + n, sizeof json - (size_t)n,
                          "%s{\"T\":1,\"C\":%lld,\"OC\":%lld,\"dtype\":\"%s\",\"gbps\":%.1f,\"us\":%.0f,"
                          "\"pct_memcpy\":%.1f,\"pct_read\":%.1f}",
                          first ? "" : ",", (long long)shapes[s][0], (long long)shapes[s][1], lf_dtype_name(dts[d]), g,
                          us, 100.0 * g / cpy, 100.0 * g / rd);
            first = 0;
        }
    snprintf(json + n, sizeof json - (size_t)n, "]}");
    printf("%s\n", json);
    lf_backend_free(be);
    return 0;
}
