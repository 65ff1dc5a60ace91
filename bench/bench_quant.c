/* bench_quant.c - 4-bit (NF4, blocksize 64, double quant: the QLoRA default) weights against limits measured
 * in the same run (a benchmark, not a test), at Llama-1B-like shapes W [OC, C] = 2048x2048 (q/o_proj),
 * 8192x2048 (gate/up_proj), 2048x8192 (down_proj):
 *   dequant_f32 / dequant_bf16 : GB/s counting packed + absmax bytes read and output bytes written;
 *   gemv_q4   : fused 4-bit GEMV, T = 1: the backend's matmul_q4_forward (CPU: lf_quant_matmul_4bit directly
 *               where the CPU table lacks the op); q4_gbs = 4-bit bytes read per second, eff_gbs = the bf16 weight's bytes
 *               (2*OC*C) per second, i.e. the bandwidth a bf16 GEMV would need to match it;
 *   gemv_bf16 : the backend's matmul_forward with a BF16 weight tensor, T = 1, GB/s of weight bytes;
 *   matmul_q4 / matmul_bf16 at T = 4, 16 (small decode batches) and 128 (a prefill chunk), CPU: GFLOP/s;
 *   memcpy    : copying a buffer the size of the bf16 weight; GB/s = (read + written) bytes per second, as in
 *               bench_cpu_ops (read-only GB/s = half of it).
 * CPU runs interleave: every figure of a shape is measured once per round (--rounds, default 3), rounds
 * alternate over all ops, and each figure is the best over its rounds, so the ratios (q4 vs bf16 vs memcpy)
 * compare times taken under the same conditions even on a shared machine.
 * CUDA (when built and a device exists): the same on the device, plus matmul_q4 at T = 8 (fused) and T = 64
 * (bf16 dequantize + cuBLASLt) against the bf16 matmul at the same T.
 * Every timed call reads a different copy of its weight, cycling through enough copies (>= --pool MiB, default
 * 512) that they come from DRAM/HBM, not cache (compute-bound CPU calls, T >= 16, cycle through 4 copies).
 * Per-call time = the best batch (one pass over the copies) of those run in at least 0.3 s (CPU: 0.3 s / rounds
 * per round). CUDA times are host wall clock over a batch of queued calls then a synchronize:
 * they include launch overhead, which dominates below ~5 us per call.
 * CPU threads: all online CPUs (or --threads N), then 1.
 * Output: one JSON line per measurement, then a human summary with ratios. --require-cuda: exit 1 when the
 * CUDA part cannot run (used by scripts/gpu-check.sh). --quick: 64 MiB pools (a smoke run). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench_args.h" // defines: lf_args_parse
#include "core/rng.h"
#include "core/tensor.h"
#include "core/threadpool.h"
#include "kernels/backend.h"
#include "kernels/quant_upload.h"
#include "quant/quant.h"

#define N_SHAPES 3
static const int64_t SHAPES[N_SHAPES][2] = {{2048, 2048}, {8192, 2048}, {2048, 8192}}; /* {OC, C} */
#define BLOCKSIZE 64
#define MIN_TIME_S 0.3

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *xalloc(size_t n) {
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p) {
        fprintf(stderr, "bench_quant: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static void die(const char *what, const char *msg) {
    fprintf(stderr, "bench_quant: %s: %s\n", what, msg);
    exit(1);
}

/* ---- one row of the summary ---- */
typedef struct result {
    const char *backend;
    int threads;
    int64_t OC, C;
    double dq_f32_gbs, dq_bf16_gbs;
    double q4_us, q4_gbs, q4_eff_gbs;
    double bf16_us, bf16_gbs;
    double memcpy_gbs;
    double q4_t8_us, bf16_t8_us, q4_t64_us, bf16_t64_us; /* CUDA only; 0 = not measured */
    double q4_tn_us[3], bf16_tn_us[3];                  /* CPU only: T = CPU_TN[i]; 0 = not measured */
} result;

#define N_CPU_TN 3
static const int64_t CPU_TN[N_CPU_TN] = {4, 16, 128};
static int g_rounds = 3;
static const char *g_simd_name = "";

#define MAX_RESULTS 32
static result results[MAX_RESULTS];
static int n_results;

static void emit(const char *backend, int threads, int64_t OC, int64_t C, const char *op, int64_t T, double s,
                 double bytes, const char *extra) {
    printf("{\"bench\":\"quant\",\"backend\":\"%s\",\"threads\":%d,\"OC\":%lld,\"C\":%lld,\"type\":\"nf4\","
           "\"blocksize\":%d,\"nested\":1,\"op\":\"%s\",\"T\":%lld,\"us\":%.2f,\"gbs\":%.2f%s}\n",
           backend, threads, (long long)OC, (long long)C, BLOCKSIZE, op, (long long)T, s * 1e6, bytes / s * 1e-9, extra);
    fflush(stdout);
}

/* Best per-call seconds of fn over batches of `ncopy` calls (one per copy), >= MIN_TIME_S and >= 2 batches,
 * after one warm-up batch. sync (may be NULL) waits for queued work at the end of each batch. */
typedef int (*call_fn)(void *ctx, int copy);
static double time_calls_for(call_fn fn, void *ctx, int ncopy, int (*sync)(void *), void *sctx, double min_s) {
    double best = 1e30, t_start = now_s();
    int batches = 0;
    for (int i = 0; i < ncopy; i++)
        if (fn(ctx, i)) return -1;
    if (sync && sync(sctx)) return -1;
    while (batches < 2 || now_s() - t_start < min_s) {
        double t0 = now_s();
        for (int i = 0; i < ncopy; i++)
            if (fn(ctx, i)) return -1;
        if (sync && sync(sctx)) return -1;
        double per = (now_s() - t0) / ncopy;
        if (per < best) best = per;
        batches++;
    }
    return best;
}

static double time_calls(call_fn fn, void *ctx, int ncopy, int (*sync)(void *), void *sctx) {
    return time_calls_for(fn, ctx, ncopy, sync, sctx, MIN_TIME_S);
}

static int copies_for(size_t bytes, size_t pool_bytes) {
    size_t n = (pool_bytes + bytes - 1) / bytes;
    return n < 2 ? 2 : n > 4096 ? 4096 : (int)n;
}

/* ================================================================ CPU */

typedef struct cpu_ctx {
    lf_pool *pool;
    lf_backend *be;
    lf_quant_state *q;     /* [nq] views over copies */
    int nq;
    lf_tensor *wb;         /* [nb] bf16 weight copies */
    int nb;
    float *x, *y, *out32;  /* x [128, C], y [128, OC], out32 [n] */
    int64_t T;             /* tokens of the matmul_* calls */
    uint16_t *out16;       /* [n] */
    float *scratch;        /* [threads, LF_QUANT_MM_SCRATCH_FLOATS] */
    char *cpy_dst;         /* [2n] */
    size_t cpy_bytes;
    int64_t C, OC;
} cpu_ctx;

static int cpu_dq32(void *c, int i) {
    cpu_ctx *j = c;
    return lf_quant_dequantize_f32(j->out32, &j->q[i % j->nq], j->pool, NULL) != LF_OK;
}
static int cpu_dq16(void *c, int i) {
    cpu_ctx *j = c;
    return lf_quant_dequantize_bf16(j->out16, &j->q[i % j->nq], j->pool, NULL) != LF_OK;
}
static int cpu_gemv_q4(void *c, int i) {
    cpu_ctx *j = c;
    if (lf_backend_supports(j->be, LF_OP_MATMUL_Q4, LF_DTYPE_F32)) /* the op: lf_quant_matmul_4bit on the backend's pool */
        return j->be->ops->matmul_q4_forward(j->be, lf_f32(j->y), lf_f32(j->x), &j->q[i % j->nq], NULL, 1, j->C, j->OC) != LF_OK;
    return lf_quant_matmul_4bit(j->y, j->x, &j->q[i % j->nq], NULL, 1, j->C, j->OC, j->pool, j->scratch, NULL) != LF_OK;
}
static int cpu_gemv_bf16(void *c, int i) {
    cpu_ctx *j = c;
    return j->be->ops->matmul_forward(j->be, lf_f32(j->y), lf_f32(j->x), &j->wb[i % j->nb], NULL, 1, j->C, j->OC) != LF_OK;
}
static int cpu_mm_q4(void *c, int i) {
    cpu_ctx *j = c;
    if (lf_backend_supports(j->be, LF_OP_MATMUL_Q4, LF_DTYPE_F32))
        return j->be->ops->matmul_q4_forward(j->be, lf_f32(j->y), lf_f32(j->x), &j->q[i % j->nq], NULL, j->T, j->C, j->OC) != LF_OK;
    return lf_quant_matmul_4bit(j->y, j->x, &j->q[i % j->nq], NULL, j->T, j->C, j->OC, j->pool, j->scratch, NULL) !=
           LF_OK;
}
static int cpu_mm_bf16(void *c, int i) {
    cpu_ctx *j = c;
    return j->be->ops->matmul_forward(j->be, lf_f32(j->y), lf_f32(j->x), &j->wb[i % j->nb], NULL, j->T, j->C, j->OC) != LF_OK;
}

typedef struct cpy_job {
    char *dst;
    const char *src;
    size_t bytes;
} cpy_job;
#define CPY_CHUNKS 256
static void cpy_chunk(void *ctx, int64_t b, int64_t e, int tid) {
    const cpy_job *j = ctx;
    (void)tid;
    size_t lo = j->bytes * (size_t)b / CPY_CHUNKS, hi = j->bytes * (size_t)e / CPY_CHUNKS;
    memcpy(j->dst + lo, j->src + lo, hi - lo);
}
static int cpu_memcpy(void *c, int i) {
    cpu_ctx *j = c;
    cpy_job job = {j->cpy_dst, (const char *)j->wb[i % j->nb].data, j->cpy_bytes};
    lf_pool_parallel_for(j->pool, CPY_CHUNKS, 1, cpy_chunk, &job);
    return 0;
}

/* Views over `ncopy` copies of h's arrays (one allocation each, returned in mem[]). */
static lf_quant_state *q_copies(const lf_quant_state *h, int ncopy, void ***mem) {
    lf_quant_state *q = calloc((size_t)ncopy, sizeof *q);
    void **m = calloc((size_t)ncopy, sizeof *m);
    if (!q || !m) die("copies", "out of memory");
    size_t pb = (size_t)((h->n + 1) / 2), ab = (size_t)h->nblocks, nb = (size_t)h->n_nested * 4;
    size_t off_a = (pb + 63) / 64 * 64, off_n = (off_a + ab + 63) / 64 * 64;
    lf_err err;
    for (int i = 0; i < ncopy; i++) {
        char *p = xalloc(off_n + nb);
        memcpy(p, h->packed, pb);
        memcpy(p + off_a, h->absmax_q, ab);
        memcpy(p + off_n, h->nested_absmax, nb);
        if (lf_quant_state_view(&q[i], h->type, h->rows, h->cols, h->blocksize, p, pb, p + off_a, ab, 1,
                                (const float *)(p + off_n), nb, h->nested_map, h->offset, &err) != LF_OK)
            die("view", err.msg);
        m[i] = p;
    }
    *mem = m;
    return q;
}

static void bench_cpu_shape(const lf_quant_state *h, const uint16_t *wbf16, int threads, size_t pool_bytes) {
    const int64_t OC = h->rows, C = h->cols, n = h->n;
    const size_t qb = lf_quant_state_nbytes(h) - sizeof h->nested_map, wb = (size_t)n * 2;
    cpu_ctx j;
    memset(&j, 0, sizeof j);
    j.C = C, j.OC = OC;
    j.pool = lf_pool_create(threads);
    j.be = lf_backend_cpu_create(threads);
    if (!j.pool || !j.be) die("cpu", "pool/backend creation failed");
    void **qmem = NULL;
    j.nq = copies_for(qb, pool_bytes);
    j.q = q_copies(h, j.nq, &qmem);
    j.nb = copies_for(wb, pool_bytes);
    j.wb = calloc((size_t)j.nb, sizeof *j.wb);
    if (!j.wb) die("cpu", "out of memory");
    int64_t shape[2] = {OC, C};
    for (int i = 0; i < j.nb; i++) {
        void *p = xalloc(wb);
        memcpy(p, wbf16, wb);
        j.wb[i] = lf_tensor_view(p, LF_DTYPE_BF16, 2, shape);
    }
    j.x = xalloc((size_t)(128 * C) * 4), j.y = xalloc((size_t)(128 * OC) * 4);
    j.out32 = xalloc((size_t)n * 4), j.out16 = xalloc((size_t)n * 2);
    j.scratch = xalloc((size_t)lf_pool_size(j.pool) * LF_QUANT_MM_SCRATCH_FLOATS * 4);
    j.cpy_dst = xalloc(wb), j.cpy_bytes = wb;
    for (int64_t c = 0; c < 128 * C; c++) j.x[c] = (float)((c * 7919) % 2001) / 1000.0f - 1.0f;
    memset(j.out32, 0, (size_t)n * 4), memset(j.out16, 0, (size_t)n * 2), memset(j.cpy_dst, 0, wb);

    const int nth = lf_pool_size(j.pool);
    result *r = &results[n_results++];
    memset(r, 0, sizeof *r);
    r->backend = "cpu", r->threads = nth, r->OC = OC, r->C = C;
    /* every op once per round, best over the rounds: the ratios compare the same conditions */
    enum { OP_MEMCPY, OP_DQ32, OP_DQ16, OP_Q4, OP_BF16, OP_TN };
    const int n_ops = OP_TN + 2 * N_CPU_TN;
    double best[OP_TN + 2 * N_CPU_TN];
    for (int k = 0; k < n_ops; k++) best[k] = 1e30;
    const double per_round = MIN_TIME_S / g_rounds;
    for (int round = 0; round < g_rounds; round++)
        for (int k = 0; k < n_ops; k++) {
            call_fn fn;
            int nc;
            j.T = 1;
            switch (k) {
            case OP_MEMCPY: fn = cpu_memcpy, nc = j.nb; break;
            case OP_DQ32: fn = cpu_dq32, nc = j.nq; break;
            case OP_DQ16: fn = cpu_dq16, nc = j.nq; break;
            case OP_Q4: fn = cpu_gemv_q4, nc = j.nq; break;
            case OP_BF16: fn = cpu_gemv_bf16, nc = j.nb; break;
            default: {
                const int i = (k - OP_TN) / 2;
                j.T = CPU_TN[i];
                fn = (k - OP_TN) % 2 ? cpu_mm_bf16 : cpu_mm_q4;
                nc = (k - OP_TN) % 2 ? j.nb : j.nq;
                if (j.T >= 16) nc = nc < 4 ? nc : 4; /* compute bound: a few copies keep batches short */
            }
            }
            double s = time_calls_for(fn, &j, nc, NULL, NULL, per_round);
            if (s < 0) die("cpu", j.be->err.msg);
            if (s < best[k]) best[k] = s;
        }
    double s = best[OP_DQ32];
    emit("cpu", nth, OC, C, "dequant_f32", 0, s, (double)qb + 4.0 * (double)n, "");
    r->dq_f32_gbs = ((double)qb + 4.0 * (double)n) / s * 1e-9;
    s = best[OP_DQ16];
    emit("cpu", nth, OC, C, "dequant_bf16", 0, s, (double)qb + 2.0 * (double)n, "");
    r->dq_bf16_gbs = ((double)qb + 2.0 * (double)n) / s * 1e-9;
    char extra[160];
    s = best[OP_Q4];
    r->q4_us = s * 1e6, r->q4_gbs = (double)qb / s * 1e-9, r->q4_eff_gbs = (double)wb / s * 1e-9;
    snprintf(extra, sizeof extra, ",\"eff_gbs\":%.2f", r->q4_eff_gbs);
    emit("cpu", nth, OC, C, "gemv_q4", 1, s, (double)qb, extra);
    s = best[OP_BF16];
    r->bf16_us = s * 1e6, r->bf16_gbs = (double)wb / s * 1e-9;
    emit("cpu", nth, OC, C, "gemv_bf16", 1, s, (double)wb, "");
    s = best[OP_MEMCPY];
    r->memcpy_gbs = 2.0 * (double)wb / s * 1e-9;
    emit("cpu", nth, OC, C, "memcpy", 0, s, 2.0 * (double)wb, "");
    for (int i = 0; i < N_CPU_TN; i++) {
        const double flop = 2.0 * (double)CPU_TN[i] * (double)n;
        s = best[OP_TN + 2 * i];
        r->q4_tn_us[i] = s * 1e6;
        snprintf(extra, sizeof extra, ",\"eff_gbs\":%.2f,\"gflops\":%.1f", (double)wb / s * 1e-9, flop / s * 1e-9);
        emit("cpu", nth, OC, C, "matmul_q4", CPU_TN[i], s, (double)qb, extra);
        s = best[OP_TN + 2 * i + 1];
        r->bf16_tn_us[i] = s * 1e6;
        snprintf(extra, sizeof extra, ",\"gflops\":%.1f", flop / s * 1e-9);
        emit("cpu", nth, OC, C, "matmul_bf16", CPU_TN[i], s, (double)wb, extra);
    }

    for (int i = 0; i < j.nq; i++) free(qmem[i]);
    for (int i = 0; i < j.nb; i++) free(j.wb[i].data);
    free(qmem), free(j.q), free(j.wb), free(j.x), free(j.y), free(j.out32), free(j.out16), free(j.scratch);
    free(j.cpy_dst);
    lf_backend_free(j.be);
    lf_pool_destroy(j.pool);
}

/* ================================================================ CUDA */

typedef struct gpu_ctx {
    lf_backend *be;
    lf_quant_state *q; /* [nq] device states */
    int nq;
    lf_tensor *wb;     /* [nb] bf16 device weights */
    int nb;
    float *x, *y;      /* device: x [64, C], y [64, OC] */
    void *out;         /* device: [n] f32 (also used for bf16) */
    void *cpy_dst;     /* device: [2n] bytes */
    size_t cpy_bytes;
    int64_t C, OC, T;
} gpu_ctx;

static int g_sync(void *c) { return ((gpu_ctx *)c)->be->ops->synchronize(((gpu_ctx *)c)->be) != LF_OK; }
static int g_dq32(void *c, int i) {
    gpu_ctx *j = c;
    return lf_quant_state_dequantize(j->be, j->out, LF_DTYPE_F32, &j->q[i % j->nq], NULL) != LF_OK;
}
static int g_dq16(void *c, int i) {
    gpu_ctx *j = c;
    return lf_quant_state_dequantize(j->be, j->out, LF_DTYPE_BF16, &j->q[i % j->nq], NULL) != LF_OK;
}
static int g_mm_q4(void *c, int i) {
    gpu_ctx *j = c;
    return j->be->ops->matmul_q4_forward(j->be, lf_f32(j->y), lf_f32(j->x), &j->q[i % j->nq], NULL, j->T, j->C, j->OC) != LF_OK;
}
static int g_mm_bf16(void *c, int i) {
    gpu_ctx *j = c;
    return j->be->ops->matmul_forward(j->be, lf_f32(j->y), lf_f32(j->x), &j->wb[i % j->nb], NULL, j->T, j->C, j->OC) != LF_OK;
}
static int g_memcpy(void *c, int i) {
    gpu_ctx *j = c;
    return j->be->ops->copy(j->be, j->cpy_dst, j->wb[i % j->nb].data, j->cpy_bytes) != LF_OK;
}

static void *g_alloc(lf_backend *be, size_t n) {
    void *p = be->ops->alloc(be, n);
    if (!p) die("cuda alloc", be->err.msg);
    return p;
}

static void bench_cuda_shape(lf_backend *be, const lf_quant_state *h, const uint16_t *wbf16, size_t pool_bytes) {
    const int64_t OC = h->rows, C = h->cols, n = h->n;
    const size_t qb = lf_quant_state_nbytes(h) - sizeof h->nested_map, wb = (size_t)n * 2;
    gpu_ctx j;
    lf_err err;
    memset(&j, 0, sizeof j);
    j.be = be, j.C = C, j.OC = OC, j.T = 1;
    j.nq = copies_for(qb, pool_bytes);
    j.q = calloc((size_t)j.nq, sizeof *j.q);
    j.nb = copies_for(wb, pool_bytes);
    j.wb = calloc((size_t)j.nb, sizeof *j.wb);
    if (!j.q || !j.wb) die("cuda", "out of memory");
    for (int i = 0; i < j.nq; i++)
        if (lf_quant_state_upload(be, h, &j.q[i], &err) != LF_OK) die("cuda upload", err.msg);
    int64_t shape[2] = {OC, C};
    for (int i = 0; i < j.nb; i++) {
        void *p = g_alloc(be, wb);
        if (be->ops->upload(be, p, wbf16, wb) != LF_OK) die("cuda upload", be->err.msg);
        j.wb[i] = lf_tensor_view(p, LF_DTYPE_BF16, 2, shape);
        j.wb[i].device = LF_DEVICE_CUDA;
    }
    float *hx = xalloc((size_t)(64 * C) * 4);
    for (int64_t i = 0; i < 64 * C; i++) hx[i] = (float)((i * 7919) % 2001) / 1000.0f - 1.0f;
    j.x = g_alloc(be, (size_t)(64 * C) * 4), j.y = g_alloc(be, (size_t)(64 * OC) * 4);
    if (be->ops->upload(be, j.x, hx, (size_t)(64 * C) * 4) != LF_OK) die("cuda upload", be->err.msg);
    free(hx);
    j.out = g_alloc(be, (size_t)n * 4);
    j.cpy_dst = g_alloc(be, wb), j.cpy_bytes = wb;

    result *r = &results[n_results++];
    memset(r, 0, sizeof *r);
    r->backend = "cuda", r->threads = 1, r->OC = OC, r->C = C;
    char extra[160];
    double s;
#define TIME(fn, nc, what)                                                                   \
    do {                                                                                     \
        if ((s = time_calls(fn, &j, (nc), g_sync, &j)) < 0) die("cuda " what, be->err.msg);  \
    } while (0)
    TIME(g_dq32, j.nq, "dequant_f32");
    emit("cuda", 1, OC, C, "dequant_f32", 0, s, (double)qb + 4.0 * (double)n, "");
    r->dq_f32_gbs = ((double)qb + 4.0 * (double)n) / s * 1e-9;
    TIME(g_dq16, j.nq, "dequant_bf16");
    emit("cuda", 1, OC, C, "dequant_bf16", 0, s, (double)qb + 2.0 * (double)n, "");
    r->dq_bf16_gbs = ((double)qb + 2.0 * (double)n) / s * 1e-9;
    TIME(g_mm_q4, j.nq, "gemv_q4");
    r->q4_us = s * 1e6, r->q4_gbs = (double)qb / s * 1e-9, r->q4_eff_gbs = (double)wb / s * 1e-9;
    snprintf(extra, sizeof extra, ",\"eff_gbs\":%.2f", r->q4_eff_gbs);
    emit("cuda", 1, OC, C, "gemv_q4", 1, s, (double)qb, extra);
    TIME(g_mm_bf16, j.nb, "gemv_bf16");
    r->bf16_us = s * 1e6, r->bf16_gbs = (double)wb / s * 1e-9;
    emit("cuda", 1, OC, C, "gemv_bf16", 1, s, (double)wb, ",\"note\":\"includes the f32->bf16 input kernel\"");
    TIME(g_memcpy, j.nb, "memcpy");
    r->memcpy_gbs = 2.0 * (double)wb / s * 1e-9;
    emit("cuda", 1, OC, C, "memcpy", 0, s, 2.0 * (double)wb, "");
    /* batched: T = 8 (fused) and T = 64 (bf16 dequantize + cuBLASLt) against bf16 weights at the same T */
    static const int64_t Tb[2] = {8, 64};
    for (int k = 0; k < 2; k++) {
        j.T = Tb[k];
        TIME(g_mm_q4, j.nq, "matmul_q4");
        snprintf(extra, sizeof extra, ",\"eff_gbs\":%.2f,\"gflops\":%.1f", (double)wb / s * 1e-9,
                 2.0 * (double)j.T * (double)n / s * 1e-9);
        emit("cuda", 1, OC, C, "matmul_q4", j.T, s, (double)qb, extra);
        if (k == 0) r->q4_t8_us = s * 1e6; else r->q4_t64_us = s * 1e6;
        TIME(g_mm_bf16, j.nb, "matmul_bf16");
        snprintf(extra, sizeof extra, ",\"gflops\":%.1f", 2.0 * (double)j.T * (double)n / s * 1e-9);
        emit("cuda", 1, OC, C, "matmul_bf16", j.T, s, (double)wb, extra);
        if (k == 0) r->bf16_t8_us = s * 1e6; else r->bf16_t64_us = s * 1e6;
    }
#undef TIME
    for (int i = 0; i < j.nq; i++) lf_quant_state_release(be, &j.q[i]);
    for (int i = 0; i < j.nb; i++) be->ops->free(be, j.wb[i].data);
    be->ops->free(be, j.x), be->ops->free(be, j.y), be->ops->free(be, j.out), be->ops->free(be, j.cpy_dst);
    free(j.q), free(j.wb);
}

/* ================================================================ main */

static void summary(void) {
    printf("\nSummary (NF4, blocksize 64, double quant; W [OC, C]; GEMV T = 1; weights cycled from DRAM/HBM; CPU quant "
           "SIMD %s; best of %d rounds)\n", g_simd_name, g_rounds);
    printf("%-5s %3s %-10s %8s %8s | %9s %8s %8s | %9s %8s | %8s | %7s %7s %7s\n", "", "thr", "OC x C", "dq f32",
           "dq bf16", "q4 GEMV", "q4 read", "q4 eff", "bf16 GEMV", "bf16", "memcpy", "eff/", "read/", "bf16/q4");
    printf("%-5s %3s %-10s %8s %8s | %9s %8s %8s | %9s %8s | %8s | %7s %7s %7s\n", "", "", "", "GB/s", "GB/s", "us",
           "GB/s", "GB/s", "us", "GB/s", "GB/s", "memcpy", "memcpy", "time");
    for (int i = 0; i < n_results; i++) {
        const result *r = &results[i];
        char shape[32];
        snprintf(shape, sizeof shape, "%lldx%lld", (long long)r->OC, (long long)r->C);
        printf("%-5s %3d %-10s %8.2f %8.2f | %9.1f %8.2f %8.2f | %9.1f %8.2f | %8.2f | %7.2f %7.2f %7.2f\n",
               r->backend, r->threads, shape, r->dq_f32_gbs, r->dq_bf16_gbs, r->q4_us, r->q4_gbs, r->q4_eff_gbs,
               r->bf16_us, r->bf16_gbs, r->memcpy_gbs, r->q4_eff_gbs / r->memcpy_gbs, r->q4_gbs / r->memcpy_gbs,
               r->bf16_us / r->q4_us);
    }
    printf("\nCPU batched matmul (us per call; bf16/q4 = time ratio, > 1: 4-bit faster)\n");
    printf("%3s %-10s %9s %9s %7s %9s %9s %7s %9s %9s %7s\n", "thr", "OC x C", "q4 T=4", "bf16 T=4", "bf16/q4",
           "q4 T=16", "bf16 T=16", "bf16/q4", "q4 T=128", "bf16 T=128", "bf16/q4");
    for (int i = 0; i < n_results; i++) {
        const result *r = &results[i];
        if (r->q4_tn_us[0] <= 0) continue;
        char shape[32];
        snprintf(shape, sizeof shape, "%lldx%lld", (long long)r->OC, (long long)r->C);
        printf("%3d %-10s", r->threads, shape);
        for (int k = 0; k < N_CPU_TN; k++)
            printf(" %9.1f %9.1f %7.2f", r->q4_tn_us[k], r->bf16_tn_us[k], r->bf16_tn_us[k] / r->q4_tn_us[k]);
        printf("\n");
    }
    int any_t = 0;
    for (int i = 0; i < n_results; i++) any_t |= results[i].q4_t64_us > 0;
    if (any_t) {
        printf("\nCUDA batched matmul (us per call): q4 vs bf16 weights\n");
        printf("%-10s %10s %10s %10s %10s\n", "OC x C", "q4 T=8", "bf16 T=8", "q4 T=64", "bf16 T=64");
        for (int i = 0; i < n_results; i++) {
            const result *r = &results[i];
            if (r->q4_t64_us <= 0) continue;
            char shape[32];
            snprintf(shape, sizeof shape, "%lldx%lld", (long long)r->OC, (long long)r->C);
            printf("%-10s %10.1f %10.1f %10.1f %10.1f\n", shape, r->q4_t8_us, r->bf16_t8_us, r->q4_t64_us,
                   r->bf16_t64_us);
        }
    }
    printf("eff = 2*OC*C bytes (the bf16 weight) per second of the 4-bit GEMV; read = 4-bit bytes actually read;\n"
           "memcpy = read+written bytes per second (a pure read stream can reach up to ~2x less time per byte).\n");
}

static const char USAGE[] =
    "usage: bench_quant [--threads N] [--pool MiB] [--rounds N] [--quick] [--require-cuda]\n"
    "  4-bit (NF4) dequantize / GEMV / matmul against bf16 and memcpy, CPU (and CUDA when built and present)\n"
    "  --threads N      threads (default 0 = all online CPUs)\n"
    "  --pool MiB       weight copies cycled through so they come from DRAM (default 512)\n"
    "  --quick          --pool 64\n"
    "  --rounds N       interleaved rounds per figure, best of them (default 3)\n"
    "  --require-cuda   exit 1 when there are no CUDA figures\n";

int main(int argc, char **argv) {
    int threads = 0, require_cuda = 0, quick = 0, pool_set = 0;
    int64_t pool_arg = 512;
    const lf_arg_spec flags[] = {LF_FLAG_INT("--threads", &threads, 0, 4096),
                                 LF_FLAG_BOOL("--require-cuda", &require_cuda),
                                 LF_FLAG_BOOL("--quick", &quick),
                                 {"--pool", LF_ARG_I64, &pool_arg, .lo = 1, .hi = 1 << 20, .seen = &pool_set},
                                 LF_FLAG_INT("--rounds", &g_rounds, 1, 1000),
                                 LF_FLAG_END};
    int rc = lf_args_parse("bench_quant", USAGE, argc, argv, 1, flags, NULL, 0, NULL);
    if (rc >= 0) return rc;
    size_t pool_mib = pool_set ? (size_t)pool_arg : quick ? 64 : 512;
    const size_t pool_bytes = pool_mib << 20;
    lf_err err;
    lf_err_clear(&err);
    lf_backend *gpu = NULL;
    if (lf_backend_cuda_built()) {
        gpu = lf_backend_cuda_create(0, &err);
        if (!gpu) fprintf(stderr, "bench_quant: no CUDA figures: %s\n", err.msg);
    } else {
        lf_err_set(&err, LF_EUNSUPPORTED, "built without CUDA");
        fprintf(stderr, "bench_quant: no CUDA figures: built without the CUDA backend\n");
    }
    if (require_cuda && !gpu) {
        fprintf(stderr, "bench_quant: --require-cuda: %s\n", err.msg);
        return 1;
    }
    lf_pool *probe = lf_pool_create(threads);
    const int all = probe ? lf_pool_size(probe) : 1;
    lf_pool_destroy(probe);
    static const char *simd_names[] = {"portable", "avx2", "avx512", "avx512+bf16"};
    const int lvl = lf_quant_simd_active();
    g_simd_name = simd_names[lvl < 0 ? 0 : lvl > 3 ? 3 : lvl];
    fprintf(stderr, "bench_quant: simd %s, %d threads, weight pools %zu MiB, %d rounds\n", g_simd_name, all, pool_mib,
            g_rounds);

    lf_rng rng;
    lf_rng_seed(&rng, 1234);
    for (int s = 0; s < N_SHAPES; s++) {
        const int64_t OC = SHAPES[s][0], C = SHAPES[s][1], n = OC * C;
        /* a Llama-like weight: N(0, 0.02) */
        uint16_t *wbf16 = xalloc((size_t)n * 2);
        for (int64_t i = 0; i < n; i++) wbf16[i] = lf_f32_to_bf16(0.02f * lf_rng_normal(&rng));
        lf_quant_state h;
        if (lf_quant_quantize(&h, wbf16, LF_DTYPE_BF16, OC, C, BLOCKSIZE, LF_QUANT_NF4, 1, &err) != LF_OK)
            die("quantize", err.msg);
        fprintf(stderr, "bench_quant: %lldx%lld (4-bit %.1f MiB, bf16 %.1f MiB)\n", (long long)OC, (long long)C,
                (double)lf_quant_state_nbytes(&h) / 1048576.0, (double)n * 2 / 1048576.0);
        bench_cpu_shape(&h, wbf16, all, pool_bytes);
        if (all > 1) bench_cpu_shape(&h, wbf16, 1, pool_bytes);
        if (gpu) bench_cuda_shape(gpu, &h, wbf16, pool_bytes);
        lf_quant_state_free(&h);
        free(wbf16);
    }
    summary();
    lf_backend_free(gpu);
    return 0;
}
