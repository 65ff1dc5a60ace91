/* sampler.c - greedy / temperature / top-k / top-p sampling over a logits row (HF order: temperature,
 * then top-k, then top-p over the renormalized distribution). */
#include "model/sampler.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    float p;
    int32_t id;
} cand;

struct lf_sampler {
    int64_t V;
    lf_sampler_params p;
    lf_rng rng;
    cand *buf; /* [V] */
};

lf_sampler_params lf_sampler_default_params(void) {
    lf_sampler_params p = {0.0f, 0, 1.0f, 0};
    return p;
}

lf_status lf_sampler_create(int64_t V, const lf_sampler_params *p, lf_sampler **out, lf_err *err) {
    *out = NULL;
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
        return lf_err_set(err, LF_EINVAL, "temperature must be a finite number >= 0, got %g", (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return lf_err_set(err, LF_EINVAL, "top_p must be in (0, 1], got %g", (double)p->top_p);
    if (p->top_k < 0) return lf_err_set(err, LF_EINVAL, "top_k must be >= 0, got %lld", (long long)p->top_k);
    lf_sampler *s = calloc(1, sizeof *s);
    if (!s) return lf_err_set(err, LF_ENOMEM, "sampler: out of memory");
    s->buf = malloc((size_t)V * sizeof(cand));
    if (!s->buf) {
        free(s);
        return lf_err_set(err, LF_ENOMEM, "sampler: out of memory for %lld candidates", (long long)V);
    }
    s->V = V;
    s->p = *p;
    lf_rng_seed(&s->rng, p->seed);
    *out = s;
    return LF_OK;
}

void lf_sampler_free(lf_sampler *s) {
    if (!s) return;
    free(s->buf);
    free(s);
}

static int cand_desc(const void *a, const void *b) {
    float x = ((const cand *)a)->p, y = ((const cand *)b)->p;
    if (x > y) return -1;
    if (x < y) return 1;
    return ((const cand *)a)->id - ((const cand *)b)->id;
}

int32_t lf_sampler_sample(lf_sampler *s, const float *logits) {
    int64_t V = s->V;
    int32_t best = 0;
    for (int64_t i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = (int32_t)i;
    if (s->p.temperature <= 0.0f) return best;
    /* softmax(logits / T) */
    float mx = logits[best] / s->p.temperature;
    double sum = 0;
    for (int64_t i = 0; i < V; i++) {
        float e = expf(logits[i] / s->p.temperature - mx);
        s->buf[i].p = e;
        s->buf[i].id = (int32_t)i;
        sum += e;
    }
    int64_t n = V;
    if ((s->p.top_k > 0 && s->p.top_k < V) || s->p.top_p < 1.0f) {
        qsort(s->buf, (size_t)V, sizeof(cand), cand_desc);
        if (s->p.top_k > 0 && s->p.top_k < n) n = s->p.top_k;
        sum = 0;
        for (int64_t i = 0; i < n; i++) sum += s->buf[i].p;
        if (s->p.top_p < 1.0f) { /* keep the smallest prefix whose mass reaches top_p (at least one) */
            double acc = 0;
            int64_t keep = n;
            for (int64_t i = 0; i < n; i++) {
                acc += s->buf[i].p / sum;
                if (acc >= s->p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            n = keep;
            sum = 0;
            for (int64_t i = 0; i < n; i++) sum += s->buf[i].p;
        }
    }
    double r = lf_rng_uniform_f64(&s->rng) * sum, acc = 0;
    for (int64_t i = 0; i < n; i++) {
        acc += s->buf[i].p;
        if (r < acc) return s->buf[i].id;
    }
    return s->buf[n - 1].id;
}
