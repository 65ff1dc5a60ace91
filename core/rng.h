/* rng.h - xoshiro256** PRNG seeded by splitmix64, with uniform and normal draws (reproducible across runs). */
#ifndef LF_CORE_RNG_H
#define LF_CORE_RNG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lf_rng {
    uint64_t s[4];
} lf_rng;

void lf_rng_seed(lf_rng *r, uint64_t seed);
uint64_t lf_rng_next(lf_rng *r);
/* Uniform in [0, 1) with 24 bits (float) / 53 bits (double). */
float lf_rng_uniform(lf_rng *r);
double lf_rng_uniform_f64(lf_rng *r);
/* Standard normal (Box-Muller). */
float lf_rng_normal(lf_rng *r);

#ifdef __cplusplus
}
#endif
#endif
