/* bench_cpu_infer.c - prefill and decode tokens/s of a model on the CPU backend, and decode's share of the
 * memory bandwidth measured in the same run (threaded memcpy over the same thread pool size).
 * Prints one JSON line. Usage: bench_cpu_infer --model DIR [--prompt-len 128] [--decode 32] [--threads N]
 * [--quantization-bit 4]; a bad or unknown flag is a usage error (exit 2, bench/bench_args.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench_args.h" // defines: lf_args_parse
#include "core/threadpool.h"
#include "kernels/backend.h"
#include "model/model.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
    char *dst;
    const char *src;
} copy_ctx;

static void copy_chunk(void *ctx, int64_t b, int64_t e, int tid) {
    (void)tid;
    copy_ctx *c = (copy_ctx *)ctx;
    memcpy(c->dst + b * 4096, c->src + b * 4096, (size_t)(e - b) * 4096);
}

/* Best of 5 threaded copies of `bytes`; returns GB/s of DRAM traffic (read + write = 2 x bytes). */
static double memcpy_gbs(int threads, size_t bytes) {
    char *a = malloc(bytes), *b = malloc(bytes);
    if (!a || !b) {
        free(a);
        free(b);
        return 0;
    }
    memset(a, 1, bytes);
    memset(b, 2, bytes);
    lf_pool *pool = lf_pool_create(threads);
    copy_ctx c = {b, a};
    double best = 1e30;
    for (int r = 0; r < 5; r++) {
        double t0 = now_s();
        lf_pool_parallel_for(pool, (int64_t)(bytes / 4096), 256, copy_chunk, &c);
        double t = now_s() - t0;
        if (t < best) best = t;
    }
    lf_pool_destroy(pool);
    free(a);
    free(b);
    return 2.0 * (double)bytes / best / 1e9;
}

static const char USAGE[] =
    "usage: bench_cpu_infer --model DIR [--prompt-len N] [--decode N] [--threads N] [--quantization-bit 4]\n"
    "  prefill and decode tokens/s on the CPU backend, and decode's share of the memory bandwidth; one JSON line\n"
    "  --model DIR            Hugging Face model directory (required)\n"
    "  --prompt-len N         prompt tokens to prefill (default 128)\n"
    "  --decode N             tokens to decode after the prompt (default 32)\n"
    "  --threads N            CPU threads (default 0 = all online CPUs)\n"
    "  --quantization-bit B   4: quantize the decoder linears to NF4 on load; 0: keep the weights (default)\n";

int main(int argc, char **argv) {
    const char *dir = NULL;
    int64_t prompt_len = 128, ndecode = 32;
    lf_model_options mo = lf_model_default_options();
    int threads = 0, qbits = mo.quant_bits;
    const lf_arg_spec flags[] = {LF_FLAG_STR("--model", &dir),
                                 LF_FLAG_I64("--prompt-len", &prompt_len, 1, 1 << 24),
                                 LF_FLAG_I64("--decode", &ndecode, 1, 1 << 24),
                                 LF_FLAG_INT("--threads", &threads, 0, 4096),
                                 LF_FLAG_INT("--quantization-bit", &qbits, 0, 4),
                                 LF_FLAG_END};
    int rc = lf_args_parse("bench_cpu_infer", USAGE, argc, argv, 1, flags, NULL, 0, NULL);
    if (rc >= 0) return rc;
    if (qbits != 0 && qbits != 4) {
        fprintf(stderr, "bench_cpu_infer: --quantization-bit: %d is not 0 or 4\n", qbits);
        return 2;
    }
    if (!dir) {
        fprintf(stderr, "bench_cpu_infer: --model DIR is required (see bench_cpu_infer --help)\n");
        return 2;
    }
    mo.quant_bits = qbits;
    lf_err err = {0};
    lf_backend *be = lf_backend_cpu_create(threads);
    lf_model *m = NULL;
    lf_session *s = NULL;
    if (!be || lf_model_load_opts(dir, be, &mo, &m, &err) || lf_session_create(m, prompt_len + ndecode, prompt_len, &s, &err)) {
        fprintf(stderr, "bench_cpu_infer: %s\n", be ? err.msg : "cannot create backend");
        return 1;
    }
    const lf_model_config *c = lf_model_get_config(m);
    int nth = lf_backend_cpu_threads(be);
    int32_t *tokens = malloc((size_t)prompt_len * sizeof(int32_t));
    float *logits = malloc((size_t)c->V * sizeof(float));
    if (!tokens || !logits) return 1;
    for (int64_t i = 0; i < prompt_len; i++) tokens[i] = (int32_t)((i * 7919 + 13) % c->V);

    /* warm-up: touch every weight page once (mmap faults are not what we measure) */
    if (lf_session_forward(s, tokens, 1, logits, 1, &err)) goto fail;
    lf_session_reset(s);
    double t0 = now_s();
    if (lf_session_forward(s, tokens, prompt_len, logits, 1, &err)) goto fail;
    double t_prefill = now_s() - t0;
    int32_t next = 0;
    t0 = now_s();
    for (int64_t i = 0; i < ndecode; i++) {
        next = (int32_t)((next + 1 + i) % c->V);
        if (lf_session_forward(s, &next, 1, logits, 1, &err)) goto fail;
    }
    double t_decode = now_s() - t0;
    double bw = memcpy_gbs(nth, (size_t)1 << 30);
    double wbytes = (double)lf_model_weight_bytes(m);
    double dec_tps = (double)ndecode / t_decode, dec_gbs = wbytes * dec_tps / 1e9;
    int64_t params = c->V * c->C * (c->tie_embeddings ? 1 : 2) + c->L * (c->C * c->D * (c->H * 2 + c->KH * 2) + 3 * c->C * c->FF);
    printf("{\"bench\":\"cpu_infer\",\"arch\":\"%s\",\"params\":%lld,\"weight_dtype\":\"%s\",\"threads\":%d,"
           "\"prompt_len\":%lld,\"prefill_tok_s\":%.2f,\"prefill_gflops\":%.1f,\"decode_tokens\":%lld,\"decode_tok_s\":%.3f,"
           "\"weight_bytes_per_token\":%.0f,\"decode_weight_gbs\":%.2f,\"memcpy_gbs\":%.2f,\"decode_bw_share\":%.3f}\n",
           c->architecture, (long long)params, lf_model_get_memory(m)->n_q4 ? "nf4" : c->torch_dtype, nth, (long long)prompt_len, (double)prompt_len / t_prefill,
           2.0 * (double)params * (double)prompt_len / t_prefill / 1e9, (long long)ndecode, dec_tps, wbytes, dec_gbs, bw,
           dec_gbs / bw);
    free(tokens);
    free(logits);
    lf_session_free(s);
    lf_model_free(m);
    lf_backend_free(be);
    return 0;
fail:
    fprintf(stderr, "bench_cpu_infer: %s\n", err.msg);
    return 1;
}
