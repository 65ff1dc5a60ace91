/* rng.c - xoshiro256** (Blackman & Vigna) seeded with splitmix64; Box-Muller normals. */
#include "core/rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void lf_rng_seed(lf_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t lf_rng_next(lf_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float lf_rng_uniform(lf_rng *r) { return (float)(lf_rng_next(r) >> 40) * (1.0f / 16777216.0f); }

double lf_rng_uniform_f64(lf_rng *r) { return (double)(lf_rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }

float lf_rng_normal(lf_rng *r) {
    double u1 = lf_rng_uniform_f64(r), u2 = lf_rng_uniform_f64(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2));
}
