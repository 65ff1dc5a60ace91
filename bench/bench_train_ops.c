/* bench_train_ops.c - CPU training-op throughput against the forward matmul and the FMA peak measured in the
 * same run (a benchmark, not a test).
 *
 *   matmul:    T=512, C=768, OC=2048 (--T/--C/--OC to change): forward out = inp @ W^T (BF16 W, and F32 W:
 *              the f32 matmul rate bench/bench_train.py divides the training FLOPs by), backward
 *              dinp += dout @ W (BF16 W), dweight += dout^T @ inp (F32), and the 4-bit (NF4, block 64) forward
 *              and backward; GFLOP/s at 2*T*C*OC per product.
 *   attention: T=512, H=12, KH=4, D=64, one row: training forward and backward; GFLOP/s at 4*D flops per
 *              (query, key, head) pair for the forward (q.k and p v) and 8*D for the backward (what a fused
 *              kernel needs; ours recomputes scores, so it does more).
 *   peak:      a tight 12-chain 8-wide FMA loop on the same threads (AVX2 only).
 * Threads = all online CPUs unless --threads N. Progress goes to stderr; stdout is one JSON line. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench_args.h" // defines: lf_args_parse
#include "kernels/backend.h"
#include "kernels/cpu/cpu_ops.h"
#include "quant/quant.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *xalloc(size_t n) {
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p) {
        fprintf(stderr, "bench_train_ops: out of memory (%zu bytes)\n", n);
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

static float *frand_n(int64_t n, float s) {
    float *p = xalloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) p[i] = s * frand();
    return p;
}

/* ---- FMA peak ---- */

#define FMA_ITERS 2000000
static volatile float fma_sink;

#ifdef LF_CPU_X86
static LF_CPU_AVX2 void fma_item(void *ctx, int64_t b, int64_t e, int tid) {
    (void)ctx, (void)tid;
    for (int64_t it = b; it < e; it++) {
        __m256 a[12];
        for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps(1.0f + 0.01f * (float)i);
        const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
        for (int k = 0; k < FMA_ITERS; k++)
#pragma GCC unroll 12
            for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], m, c);
        __m256 s = a[0];
        for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, a[i]);
        fma_sink = lf_cpu_hsum8(s);
    }
}
#endif

static double fma_peak_gflops(lf_backend *be, int nth) {
#ifdef LF_CPU_X86
    if (!lf_cpu_simd()) return 0.0;
    double t0 = now_s();
    lf_cpu_parallel_for(be, nth, 1, fma_item, NULL);
    double dt = now_s() - t0;
    return (double)nth * FMA_ITERS * 12 * 16 / dt * 1e-9;
#else
    (void)be, (void)nth;
    return 0.0;
#endif
}

/* Seconds per call: the best of `reps` timed runs of `iters` calls each, after one warm-up. */
#define TIME_IT(var, iters, reps, call)                                                                                \
    do {                                                                                                               \
        call;                                                                                                          \
        double best_ = 1e30;                                                                                           \
        for (int r_ = 0; r_ < (reps); r_++) {                                                                          \
            double t0_ = now_s();                                                                                      \
            for (int i_ = 0; i_ < (iters); i_++) call;                                                                 \
            double dt_ = (now_s() - t0_) / (iters);                                                                    \
            if (dt_ < best_) best_ = dt_;                                                                              \
        }                                                                                                              \
        var = best_;                                                                                                   \
    } while (0)

static const char USAGE[] =
    "usage: bench_train_ops [--threads N] [--T n] [--C n] [--OC n]\n"
    "  CPU training-op GFLOP/s (matmul forward/backward, 4-bit, attention) against the FMA peak; one JSON line\n"
    "  --threads N   threads (default 0 = all online CPUs)\n"
    "  --T n         matmul rows (default 512)\n"
    "  --C n         matmul input features (default 768)\n"
    "  --OC n        matmul output features (default 2048)\n";

int main(int argc, char **argv) {
    int nth = 0;
    int64_t T = 512, C = 768, OC = 2048, AT = 512, H = 12, KH = 4, D = 64;
    const lf_arg_spec flags[] = {LF_FLAG_INT("--threads", &nth, 0, 4096), LF_FLAG_I64("--T", &T, 1, 1 << 20),
                                 LF_FLAG_I64("--C", &C, 1, 1 << 20), LF_FLAG_I64("--OC", &OC, 1, 1 << 20), LF_FLAG_END};
    int rc = lf_args_parse("bench_train_ops", USAGE, argc, argv, 1, flags, NULL, 0, NULL);
    if (rc >= 0) return rc;
    lf_backend *be = lf_backend_cpu_create(nth);
    if (!be) {
        fprintf(stderr, "bench_train_ops: cannot create the CPU backend\n");
        return 1;
    }
    nth = lf_backend_cpu_threads(be);
    fprintf(stderr, "bench_train_ops: %d threads, AVX2 %s\n", nth, lf_cpu_simd() ? "on" : "off");

    /* ---- matmul ---- */
    float *inp = frand_n(T * C, 1), *dout = frand_n(T * OC, 1), *out = frand_n(T * OC, 1);
    float *dinp = frand_n(T * C, 1), *dw = frand_n(OC * C, 1), *wf = frand_n(OC * C, 0.05f);
    uint16_t *wb = xalloc((size_t)(OC * C) * 2);
    for (int64_t i = 0; i < OC * C; i++) wb[i] = lf_f32_to_bf16(wf[i]);
    lf_tensor w = lf_tensor_view(wb, LF_DTYPE_BF16, 2, (int64_t[]){OC, C});
    lf_tensor w32 = lf_tensor_view(wf, LF_DTYPE_F32, 2, (int64_t[]){OC, C});
    lf_quant_state q4;
    lf_err err;
    if (lf_quant_quantize(&q4, wf, LF_DTYPE_F32, OC, C, 64, LF_QUANT_NF4, 1, &err) != LF_OK) {
        fprintf(stderr, "bench_train_ops: quantize: %s\n", err.msg);
        return 1;
    }
    const double mm_flop = 2.0 * (double)T * (double)C * (double)OC;
    double t_fwd, t_f32, t_din, t_dw, t_q4f, t_q4b;
    fprintf(stderr, "matmul T=%lld C=%lld OC=%lld ...\n", (long long)T, (long long)C, (long long)OC);
    TIME_IT(t_fwd, 3, 3, be->ops->matmul_forward(be, lf_f32(out), lf_f32(inp), &w, NULL, T, C, OC));
    TIME_IT(t_f32, 3, 3, be->ops->matmul_forward(be, lf_f32(out), lf_f32(inp), &w32, NULL, T, C, OC));
    TIME_IT(t_din, 3, 3, be->ops->matmul_backward(be, dinp, NULL, dout, inp, &w, T, C, OC));
    TIME_IT(t_dw, 3, 3, be->ops->matmul_backward(be, NULL, dw, dout, inp, &w, T, C, OC));
    TIME_IT(t_q4f, 1, 2, be->ops->matmul_q4_forward(be, lf_f32(out), lf_f32(inp), &q4, NULL, T, C, OC));
    TIME_IT(t_q4b, 2, 3, be->ops->matmul_q4_backward(be, dinp, dout, &q4, T, C, OC));

    /* ---- attention ---- */
    float *q = frand_n(AT * H * D, 1), *k = frand_n(AT * KH * D, 1), *v = frand_n(AT * KH * D, 1);
    float *ao = frand_n(AT * H * D, 1), *lse = frand_n(AT * H, 1), *ado = frand_n(AT * H * D, 1);
    float *dq = frand_n(AT * H * D, 1), *dk = frand_n(AT * KH * D, 1), *dv = frand_n(AT * KH * D, 1);
    int32_t *pos = xalloc((size_t)AT * 4);
    for (int64_t t = 0; t < AT; t++) pos[t] = (int32_t)t;
    const float scale = 1.0f / sqrtf((float)D);
    const double pairs = (double)AT * (double)(AT + 1) / 2.0 * (double)H;
    double t_af, t_ab;
    fprintf(stderr, "attention T=%lld H=%lld KH=%lld D=%lld ...\n", (long long)AT, (long long)H, (long long)KH,
            (long long)D);
    TIME_IT(t_af, 3, 3, be->ops->attention_train_forward(be, ao, lse, q, k, v, pos, AT, H, KH, D, 0, scale));
    TIME_IT(t_ab, 3, 3,
            be->ops->attention_backward(be, dq, dk, dv, ado, q, k, v, ao, lse, pos, AT, H, KH, D, 0, scale));

    const double peak = fma_peak_gflops(be, nth);
    printf("{\"bench\":\"train_ops\",\"threads\":%d,\"simd\":%d,\"T\":%lld,\"C\":%lld,\"OC\":%lld,"
           "\"fma_peak_gflops\":%.1f,\"matmul_forward_bf16_gflops\":%.1f,\"matmul_forward_f32_gflops\":%.1f,"
           "\"matmul_backward_dinp_bf16_gflops\":%.1f,"
           "\"matmul_backward_dweight_f32_gflops\":%.1f,\"matmul_q4_forward_gflops\":%.1f,"
           "\"matmul_q4_backward_gflops\":%.1f,\"attention_T\":%lld,\"attention_forward_gflops\":%.1f,"
           "\"attention_backward_gflops\":%.1f}\n",
           nth, lf_cpu_simd(), (long long)T, (long long)C, (long long)OC, peak, mm_flop / t_fwd * 1e-9,
           mm_flop / t_f32 * 1e-9, mm_flop / t_din * 1e-9, mm_flop / t_dw * 1e-9, mm_flop / t_q4f * 1e-9,
           mm_flop / t_q4b * 1e-9, (long long)AT,
           4.0 * D * pairs / t_af * 1e-9, 8.0 * D * pairs / t_ab * 1e-9);

    lf_quant_state_free(&q4);
    free(inp), free(dout), free(out), free(dinp), free(dw), free(wf), free(wb), free(q), free(k), free(v), free(ao),
        free(lse), free(ado), free(dq), free(dk), free(dv), free(pos);
    lf_backend_free(be);
    return 0;
}
