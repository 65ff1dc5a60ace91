/* sample_tool.c - test helper for the Hugging Face sampling oracle (tests/oracle/test_sample_hf.py).
 *
 *   sample_tool IN.bin OUT.bin
 *
 * IN.bin (little-endian): "LFSMPIN2" (8 bytes), int64 n_cases, then per case
 *     int64 V, int64 n_hist, int64 top_k, f64 temperature, f64 top_p, f64 repetition_penalty,
 *     int32 do_sample, int32 n_top, uint64 seed, f64 min_p, f64 typical_p, f64 presence_penalty,
 *     f64 frequency_penalty, int64 n_prompt, f32 logits[V], int32 history[n_hist]
 * OUT.bin: "LFSMPOU1", int64 n_cases, then per case
 *     f32 probs[V]              lf_sample_distribution with the case's params
 *     int32 greedy_id           lf_sample_token with do_sample = 0 (argmax after the penalties)
 *     int32 sampled_id          lf_sample_token with the case's params, rng seeded with seed
 *     f32 sampled_log_prob
 *     int32 n_top               = min(n_top, V)
 *     int32 top_id[20]          (-1 past n_top)
 *     f32 top_log_prob[20]      (0 past n_top)
 * Exit 0 on success, 1 on error (message on stderr), 2 on usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "serve/sample.h"

typedef struct {
    const char *p;
    size_t left;
} reader;

static int take(reader *r, void *dst, size_t n) {
    if (r->left < n) return 0;
    if (n == 0) return 1; /* dst may be NULL (a case with no history): memcpy(NULL, p, 0) is undefined */
    memcpy(dst, r->p, n);
    r->p += n;
    r->left -= n;
    return 1;
}

typedef struct {
    char *buf;
    size_t len, cap;
} writer;

static int put(writer *w, const void *src, size_t n) {
    if (n == 0) return 1;
    if (w->len + n > w->cap) {
        size_t nc = w->cap ? w->cap : 1 << 16;
        while (nc < w->len + n) nc *= 2;
        char *nb = realloc(w->buf, nc);
        if (!nb) return 0;
        w->buf = nb;
        w->cap = nc;
    }
    memcpy(w->buf + w->len, src, n);
    w->len += n;
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: sample_tool IN.bin OUT.bin\n");
        return 2;
    }
    int rc = 1;
    char *in = NULL;
    size_t len = 0;
    float *logits = NULL, *probs = NULL;
    int32_t *hist = NULL;
    lf_sample_scratch *s = NULL;
    writer w = {0};
    lf_err err;
    if (lf_file_read_all(argv[1], &in, &len, &err)) {
        fprintf(stderr, "sample_tool: %s\n", err.msg);
        return 1;
    }
    reader r = {in, len};
    char magic[8];
    int64_t n_cases;
    if (!take(&r, magic, 8) || memcmp(magic, "LFSMPIN2", 8) != 0 || !take(&r, &n_cases, 8) || n_cases < 0) {
        fprintf(stderr, "sample_tool: %s: bad header\n", argv[1]);
        goto done;
    }
    if (!put(&w, "LFSMPOU1", 8) || !put(&w, &n_cases, 8)) goto oom;
    int64_t cap_v = 0, cap_h = 0;
    for (int64_t c = 0; c < n_cases; c++) {
        int64_t V, nh;
        lf_sample_params p = {0};
        uint64_t seed;
        int32_t ds, nt;
        if (!take(&r, &V, 8) || !take(&r, &nh, 8) || !take(&r, &p.top_k, 8) || !take(&r, &p.temperature, 8) ||
            !take(&r, &p.top_p, 8) || !take(&r, &p.repetition_penalty, 8) || !take(&r, &ds, 4) ||
            !take(&r, &nt, 4) || !take(&r, &seed, 8) || !take(&r, &p.min_p, 8) || !take(&r, &p.typical_p, 8) ||
            !take(&r, &p.presence_penalty, 8) || !take(&r, &p.frequency_penalty, 8) || !take(&r, &p.n_prompt, 8)) {
            fprintf(stderr, "sample_tool: %s: case %lld: truncated header\n", argv[1], (long long)c);
            goto done;
        }
        if (V < 1 || V > (1 << 24) || nh < 0 || nh > (1 << 24)) {
            fprintf(stderr, "sample_tool: case %lld: bad V=%lld or n_hist=%lld\n", (long long)c, (long long)V,
                    (long long)nh);
            goto done;
        }
        p.do_sample = ds;
        p.n_top = nt;
        if (V > cap_v) {
            free(logits);
            free(probs);
            lf_sample_scratch_free(s);
            s = NULL;
            logits = malloc((size_t)V * sizeof *logits);
            probs = malloc((size_t)V * sizeof *probs);
            if (!logits || !probs) goto oom;
            if (lf_sample_scratch_create(V, &s, &err)) {
                fprintf(stderr, "sample_tool: %s\n", err.msg);
                goto done;
            }
            cap_v = V;
        }
        if (nh > cap_h) {
            free(hist);
            hist = malloc((size_t)nh * sizeof *hist);
            if (!hist) goto oom;
            cap_h = nh;
        }
        if (!take(&r, logits, (size_t)V * 4) || !take(&r, hist, (size_t)nh * 4)) {
            fprintf(stderr, "sample_tool: case %lld: truncated data\n", (long long)c);
            goto done;
        }
        lf_sample_params g = p;
        g.do_sample = 0;
        lf_sample_result gr, sr;
        lf_rng rng;
        lf_rng_seed(&rng, seed);
        if (lf_sample_distribution(s, &p, logits, V, hist, nh, probs, &err) ||
            lf_sample_token(s, &g, NULL, logits, V, hist, nh, &gr, &err) ||
            lf_sample_token(s, &p, &rng, logits, V, hist, nh, &sr, &err)) {
            fprintf(stderr, "sample_tool: case %lld: %s\n", (long long)c, err.msg);
            goto done;
        }
        int32_t tid[LF_SAMPLE_MAX_TOP];
        float tlp[LF_SAMPLE_MAX_TOP];
        for (int j = 0; j < LF_SAMPLE_MAX_TOP; j++) {
            tid[j] = j < sr.n_top ? sr.top_id[j] : -1;
            tlp[j] = j < sr.n_top ? sr.top_log_prob[j] : 0.0f;
        }
        int32_t n_top = sr.n_top;
        if (!put(&w, probs, (size_t)V * 4) || !put(&w, &gr.id, 4) || !put(&w, &sr.id, 4) ||
            !put(&w, &sr.log_prob, 4) || !put(&w, &n_top, 4) || !put(&w, tid, sizeof tid) || !put(&w, tlp, sizeof tlp))
            goto oom;
    }
    if (r.left != 0) {
        fprintf(stderr, "sample_tool: %s: %zu trailing bytes\n", argv[1], r.left);
        goto done;
    }
    if (lf_file_write_atomic(argv[2], w.buf, w.len, &err)) {
        fprintf(stderr, "sample_tool: %s\n", err.msg);
        goto done;
    }
    rc = 0;
    goto done;
oom:
    fprintf(stderr, "sample_tool: out of memory\n");
done:
    free(in);
    free(logits);
    free(probs);
    free(hist);
    free(w.buf);
    lf_sample_scratch_free(s);
    return rc;
}
