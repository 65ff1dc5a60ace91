/* sampler.h - next-token choice from logits: greedy, temperature, top-k, top-p, seeded.
 *
 * Ownership: the sampler owns a scratch buffer of V (index, prob) pairs allocated at create time, so
 * lf_sampler_sample never allocates. */
#ifndef LF_MODEL_SAMPLER_H
#define LF_MODEL_SAMPLER_H

#include <stdint.h>

#include "core/rng.h"
#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lf_sampler_params {
    float temperature; /* <= 0: greedy */
    int64_t top_k;     /* <= 0: off */
    float top_p;       /* >= 1: off */
    uint64_t seed;
} lf_sampler_params;

lf_sampler_params lf_sampler_default_params(void);

typedef struct lf_sampler lf_sampler;

/* V = vocab size. Validates params (temperature >= 0, 0 < top_p <= 1). */
lf_status lf_sampler_create(int64_t V, const lf_sampler_params *p, lf_sampler **out, lf_err *err);
void lf_sampler_free(lf_sampler *s);
/* Pick a token from logits[V] (not modified). */
int32_t lf_sampler_sample(lf_sampler *s, const float *logits);

#ifdef __cplusplus
}
#endif
#endif
