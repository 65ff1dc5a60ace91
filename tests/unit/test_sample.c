/* test_sample.c - serve/sample: fast path vs the full-sort reference over random logits (V 1..32000, ties,
 * -inf, NaN, +inf, huge values) and every parameter combination (same token from the same rng draw, same rng
 * state after, same alternatives, log-probs within 1e-5: the fast path's f32 exp vs the reference's f64 exp
 * in the log-sum-exp), rows that steer the fast path's histogram into each of its branches; greedy = argmax
 * with lowest-id ties; repetition penalty once per distinct id; HF's tie rules at the top-k / top-p cuts;
 * seed reproducibility and exactly one rng draw per sampled token (none when greedy); top_k = 1 == greedy;
 * sampled frequencies vs lf_sample_distribution: 7 chi-square tests, each failing a correct sampler with
 * probability ~1e-6 (Wilson-Hilferty 1 - 1e-6 quantile), so ~7e-6 per run; parameter errors. Timings at
 * V = 152064 are printed (informational). Sanitizer builds run fewer repetitions and draws (LIGHT).
 * Issue 11 parameters: fast vs ref with random min_p / typical_p / presence / frequency / n_prompt on top of
 * the HF ones; hand cases (vLLM's penalty formula over the generated ids only, after the repetition penalty;
 * min_p after temperature and top-p; typical_p dropping the most likely token, keeping tie classes); 3 more
 * chi-square tests; range errors. (Oracles: tests/oracle/test_sample_hf.py.)
 * Seed from LF_TEST_SEED or time, printed. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/rng.h"
#include "serve/sample.h"

static int passed, failed;
#define CHECK(cond, ...)                                \
    do {                                                \
        if (cond) {                                     \
            passed++;                                   \
        } else {                                        \
            failed++;                                   \
            printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            printf(__VA_ARGS__);                        \
            printf("\n");                               \
        }                                               \
    } while (0)

static lf_rng rng;
static lf_sample_scratch *S; /* serves every V up to MAXV */
#define MAXV 152064

/* Sanitizer builds run about 10x slower: the same cases, fewer random repetitions and draws. */
#if defined(__SANITIZE_ADDRESS__)
#define LIGHT 4
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LIGHT 4
#endif
#endif
#ifndef LIGHT
#define LIGHT 1
#endif

static uint64_t rnd(uint64_t n) { return lf_rng_next(&rng) % n; }

/* The HF-order parameters (the penalties, min_p, typical_p off); fields added later stay off. */
static lf_sample_params SP(int ds, double t, int64_t k, double tp, double rp, int nt) {
    lf_sample_params p = {.do_sample = ds, .temperature = t, .top_k = k, .top_p = tp, .repetition_penalty = rp,
                          .n_top = nt};
    return p;
}

enum { K_NORMAL, K_TIES, K_NINF, K_NAN, K_HUGE, K_PEAKED, K_ALLNINF, K_PINF, K_NKINDS };
static const char *kind_name[K_NKINDS] = {"normal", "ties", "-inf", "nan", "huge", "peaked", "all-inf", "+inf"};

static void gen_logits(float *x, int64_t V, int kind) {
    float scale = (float[]){0.5f, 2.0f, 8.0f}[rnd(3)];
    for (int64_t i = 0; i < V; i++) x[i] = lf_rng_normal(&rng) * scale;
    switch (kind) {
    case K_TIES: /* a handful of values: ties everywhere, including at the max and at every cut */
        for (int64_t i = 0; i < V; i++) x[i] = 0.5f * (float)rnd(5);
        break;
    case K_NINF:
        for (int64_t i = 0; i < V; i++)
            if (rnd(5) == 0) x[i] = -INFINITY;
        break;
    case K_NAN:
        for (int64_t i = 0; i < V; i++) {
            uint64_t r = rnd(10);
            if (r == 0) x[i] = NAN;
            else if (r == 1) x[i] = -INFINITY;
        }
        break;
    case K_HUGE:
        for (int64_t i = 0; i < V; i++) {
            uint64_t r = rnd(8);
            if (r == 0) x[i] = 1e30f;
            else if (r == 1) x[i] = -1e30f;
            else if (r == 2) x[i] = FLT_MAX;
            else if (r == 3) x[i] = -FLT_MAX;
        }
        break;
    case K_PEAKED:
        x[rnd((uint64_t)V)] += 15.0f;
        break;
    case K_ALLNINF:
        for (int64_t i = 0; i < V; i++) x[i] = rnd(2) ? -INFINITY : NAN;
        break;
    case K_PINF:
        for (int64_t i = 0; i < V; i++)
            if (rnd(7) == 0) x[i] = INFINITY;
        break;
    default:
        break;
    }
}

static int64_t gen_history(int32_t *h, int64_t V) { /* duplicates and out-of-range ids included */
    int64_t n = (int64_t)rnd(40);
    for (int64_t j = 0; j < n; j++) {
        uint64_t r = rnd(10);
        if (r == 0) h[j] = -(int32_t)rnd(3) - 1;
        else if (r == 1) h[j] = (int32_t)(V + (int64_t)rnd(3));
        else if (r < 5 && j > 0) h[j] = h[rnd((uint64_t)j)];
        else h[j] = (int32_t)rnd((uint64_t)V);
    }
    return n;
}

static int lp_close(float a, float b) { /* 1e-5 abs: f32 exp vs f64 exp in the log-sum-exp */
    if (isinf(a) || isinf(b)) return a == b;
    return fabsf(a - b) <= 1e-5f;
}

static int same_rng(const lf_rng *a, const lf_rng *b) { return memcmp(a, b, sizeof *a) == 0; }

static const char *fmt_params(const lf_sample_params *p) {
    static char buf[256];
    snprintf(buf, sizeof buf, "do_sample=%d T=%g top_k=%lld top_p=%g rp=%g n_top=%d", p->do_sample, p->temperature,
             (long long)p->top_k, p->top_p, p->repetition_penalty, p->n_top);
    return buf;
}

/* One case: fast vs ref (token, rng state, log-probs, alternatives) and the fast distribution's support. */
static float probs[MAXV];
static long n_cases, n_mismatch, n_sampled;
static int compare_case(const float *x, int64_t V, const int32_t *h, int64_t nh, const lf_sample_params *p,
                        const char *kind) {
    lf_err err;
    lf_sample_result a, b;
    lf_rng ra = rng, rb = rng, r1 = rng;
    lf_rng_next(&r1); /* the state after exactly one draw */
    n_cases++;
    lf_status sa = lf_sample_token(S, p, &ra, x, V, h, nh, &a, &err);
    lf_status sb = lf_sample_token_ref(p, &rb, x, V, h, nh, &b, &err);
    lf_status sd = lf_sample_distribution(S, p, x, V, h, nh, probs, &err);
    int samp = p->do_sample && (float)p->temperature > 0;
    n_sampled += samp;
    int ok = sa == LF_OK && sb == LF_OK && sd == LF_OK && a.id == b.id && a.id >= 0 && a.id < V &&
             lp_close(a.log_prob, b.log_prob) && a.n_top == b.n_top && same_rng(&ra, &rb) &&
             same_rng(&ra, samp ? &r1 : &rng) && probs[a.id] > 0;
    for (int j = 0; ok && j < a.n_top; j++)
        ok = a.top_id[j] == b.top_id[j] && lp_close(a.top_log_prob[j], b.top_log_prob[j]);
    double sum = 0;
    for (int64_t i = 0; i < V; i++) sum += probs[i];
    ok = ok && fabs(sum - 1.0) <= 1e-5; /* V f32-rounded probabilities: each 6e-8 relative */
    if (!ok) {
        n_mismatch++;
        if (n_mismatch <= 10)
            printf("  mismatch V=%lld kind=%s %s: fast id %d lp %.7g (st %d) ref id %d lp %.7g (st %d) p[id]=%g "
                   "sum=%.9g n_top %d/%d rng %s\n",
                   (long long)V, kind, fmt_params(p), a.id, a.log_prob, sa, b.id, b.log_prob, sb, probs[a.id], sum,
                   a.n_top, b.n_top, same_rng(&ra, &rb) ? "same" : "differs");
    }
    lf_rng_next(&rng);
    return ok;
}

static void test_fast_vs_ref(void) {
    static float x[MAXV];
    static int32_t h[64];
    static const int64_t Vs[] = {1, 2, 7, 1000, 2500, 32000};
    static const struct {
        int ds;
        double t;
    } modes[] = {{0, 1.0}, {1, 0.0}, {1, 0.5}, {1, 1.0}, {1, 2.5}};
    static const double tps[] = {1.0, 0.95, 0.5, 1e-3}, rps[] = {1.0, 1.3, 0.6};
    for (size_t vi = 0; vi < sizeof Vs / sizeof *Vs; vi++) {
        int64_t V = Vs[vi];
        int64_t tks[] = {0, 1, 3, 50, V / 2, V - 1, V, V + 3};
        long before_cases = n_cases, before_bad = n_mismatch;
        for (int kind = 0; kind < K_NKINDS; kind++) {
            int reps = V <= 7 ? 4 / LIGHT : 1;
            for (int rep = 0; rep < reps; rep++) {
                gen_logits(x, V, kind);
                for (size_t mi = 0; mi < 5; mi++)
                    for (size_t ki = 0; ki < 8; ki++)
                        for (size_t pi = 0; pi < 4; pi++)
                            for (size_t ri = 0; ri < 3; ri++) {
                                /* large V: a random eighth of the grid (the reference sorts V twice per call) */
                                if (V > 1000 && rnd((V > 2500 ? 16 : 4) * LIGHT) != 0) continue;
                                lf_sample_params p = SP(modes[mi].ds, modes[mi].t, tks[ki], tps[pi], rps[ri],
                                                      (int)rnd(LF_SAMPLE_MAX_TOP + 1));
                                int64_t nh = gen_history(h, V);
                                compare_case(x, V, h, nh, &p, kind_name[kind]);
                            }
            }
        }
        printf("fast vs ref V=%lld: %ld cases, %ld mismatches\n", (long long)V, n_cases - before_cases,
               n_mismatch - before_bad);
        CHECK(n_mismatch == before_bad, "fast vs ref V=%lld: %ld of %ld cases differ", (long long)V,
              n_mismatch - before_bad, n_cases - before_cases);
    }
    printf("fast vs ref: %ld cases (%ld sampled), %ld mismatches\n", n_cases, n_sampled, n_mismatch);
}

/* Rows that steer the fast path's histogram (V > 1024 candidates): one token 10 nats above a cluster of
 * 1999, top_p around the top token's probability p0. Just below p0 the whole cluster is cut but the histogram
 * puts the cut inside the cluster's bin (the fallback sort); just above, the top token's bin is kept whole
 * and the cut runs through the sorted cluster (the draw crosses the unsorted head bin by bin). */
static void test_histogram_paths(void) {
    static float x[2000];
    const int64_t V = 2000;
    long before_bad = n_mismatch, before_cases = n_cases;
    for (int rep = 0; rep < 4; rep++) {
        for (int64_t i = 0; i < V; i++) x[i] = rep == 3 ? 0.0f : lf_rng_normal(&rng) * 0.002f;
        x[rnd((uint64_t)V)] = 10.0f;
        double z = 0, top = 0;
        for (int64_t i = 0; i < V; i++) {
            double w = exp((double)x[i] - 10.0);
            z += w;
            top = w > top ? w : top;
        }
        double p0 = top / z;
        const double dps[] = {-1e-4, -3e-7, -1e-7, 1e-7, 3e-7, 1e-4, 0.05};
        for (size_t d = 0; d < sizeof dps / sizeof *dps; d++)
            for (int k = 0; k < 2; k++)
                for (int draw = 0; draw < 10; draw++) {
                    lf_sample_params p = SP(1, 1.0, k ? 1500 : 0, p0 + dps[d], 1.0, 3);
                    compare_case(x, V, NULL, 0, &p, "two-cluster");
                }
    }
    printf("histogram paths: %ld cases, %ld mismatches\n", n_cases - before_cases, n_mismatch - before_bad);
    CHECK(n_mismatch == before_bad, "two-cluster rows: %ld of %ld cases differ", n_mismatch - before_bad,
          n_cases - before_cases);
}

static lf_sample_params greedy_params(double rp) {
    lf_sample_params p = SP(0, 1.0, 0, 1.0, rp, 0);
    return p;
}

static int32_t pick(const lf_sample_params *p, const float *x, int64_t V, const int32_t *h, int64_t nh, lf_rng *r) {
    lf_sample_result res;
    lf_err err;
    if (lf_sample_token(S, p, r, x, V, h, nh, &res, &err) != LF_OK) {
        printf("  lf_sample_token: %s\n", err.msg);
        return -2;
    }
    return res.id;
}

static void test_greedy(void) {
    lf_sample_params g = greedy_params(1.0);
    lf_sample_result res;
    lf_err err;
    float a[] = {1, 5, 3, 5, 5};
    CHECK(pick(&g, a, 5, NULL, 0, NULL) == 1, "greedy ties -> lowest id");
    float b[] = {NAN, -INFINITY, NAN, 2.0f, 2.0f};
    CHECK(pick(&g, b, 5, NULL, 0, NULL) == 3, "greedy skips NaN, lowest id of the tie");
    float c[] = {NAN, NAN, -INFINITY};
    CHECK(lf_sample_token(S, &g, NULL, c, 3, NULL, 0, &res, &err) == LF_OK && res.id == 0 && res.log_prob == -INFINITY,
          "all NaN/-inf: token 0, log_prob -inf (got %d %g)", res.id, res.log_prob);
    lf_sample_params gs = SP(1, 0.0, 0, 1.0, 1.0, 3); /* do_sample with temperature 0: greedy, no rng needed */
    CHECK(lf_sample_token(S, &gs, NULL, c, 3, NULL, 0, &res, &err) == LF_OK && res.n_top == 3 && res.top_id[0] == 0 &&
              res.top_id[2] == 2 && res.top_log_prob[1] == -INFINITY,
          "all -inf alternatives: ids 0,1,2 at -inf");
    float d[] = {4.0f, 3.5f};
    int32_t h0[] = {0};
    lf_sample_params gp = greedy_params(2.0);
    CHECK(pick(&gp, d, 2, h0, 1, NULL) == 1, "penalty moves the argmax (4/2 < 3.5)");
    float e[] = {-1.0f, -1.5f};
    CHECK(pick(&gp, e, 2, h0, 1, NULL) == 1, "negative logit penalised by multiplication (-2 < -1.5)");
    /* random rows: argmax with lowest id, also with ties */
    static float x[5000];
    int bad = 0;
    for (int t = 0; t < 300; t++) {
        int64_t V = 1 + (int64_t)rnd(5000);
        gen_logits(x, V, (int)rnd(K_NKINDS));
        int64_t best = 0;
        for (int64_t i = 0; i < V; i++) {
            float v = isnan(x[i]) ? -INFINITY : x[i];
            float bv = isnan(x[best]) ? -INFINITY : x[best];
            if (v > bv) best = i;
        }
        bad += pick(&g, x, V, NULL, 0, NULL) != best;
    }
    CHECK(bad == 0, "greedy != argmax (lowest id) on %d of 300 random rows", bad);
    /* log-probs of a hand case: log_softmax([0, ln 3]) = [ln 1/4, ln 3/4]; +inf logits share the mass */
    float f[] = {0.0f, logf(3.0f)};
    lf_sample_params g2 = SP(0, 1.0, 0, 1.0, 1.0, 2);
    CHECK(lf_sample_token(S, &g2, NULL, f, 2, NULL, 0, &res, &err) == LF_OK && res.id == 1 &&
              fabsf(res.log_prob - logf(0.75f)) < 1e-6f && res.top_id[1] == 0 &&
              fabsf(res.top_log_prob[1] - logf(0.25f)) < 1e-6f,
          "log-probs of [0, ln 3]: %g", res.log_prob);
    float pi[] = {1.0f, INFINITY, 2.0f, INFINITY};
    lf_sample_params sp = SP(1, 1.0, 0, 1.0, 1.0, 1);
    lf_rng r;
    lf_rng_seed(&r, 7);
    CHECK(lf_sample_token(S, &sp, &r, pi, 4, NULL, 0, &res, &err) == LF_OK && (res.id == 1 || res.id == 3) &&
              fabsf(res.log_prob - logf(0.5f)) < 1e-6f,
          "+inf logits: token %d log_prob %g", res.id, res.log_prob);
}

static void test_penalty_once(void) {
    float x[] = {1.0f, 0.0f, 2.0f, 4.0f, -1.0f};
    int32_t once[] = {3, 4}, many[] = {3, 3, 4, 3, -1, 99, 4, 4};
    lf_sample_params p = SP(1, 1.0, 0, 1.0, 2.0, 0);
    float pa[5], pb[5];
    lf_err err;
    CHECK(lf_sample_distribution(S, &p, x, 5, once, 2, pa, &err) == LF_OK &&
              lf_sample_distribution(S, &p, x, 5, many, 8, pb, &err) == LF_OK && memcmp(pa, pb, sizeof pa) == 0,
          "duplicates in history penalise once");
    /* expected: softmax([1, 0, 2, 4/2, -1*2]) */
    double z[5] = {1, 0, 2, 2, -2}, s = 0;
    for (int i = 0; i < 5; i++) s += exp(z[i]);
    double worst = 0;
    for (int i = 0; i < 5; i++) worst = fmax(worst, fabs(pa[i] - exp(z[i]) / s));
    CHECK(worst < 1e-7, "penalised distribution off by %g", worst);
    /* penalty 1 / empty history leaves the row alone */
    lf_sample_params p1 = p;
    p1.repetition_penalty = 1.0;
    CHECK(lf_sample_distribution(S, &p1, x, 5, many, 8, pa, &err) == LF_OK &&
              lf_sample_distribution(S, &p, x, 5, NULL, 0, pb, &err) == LF_OK && memcmp(pa, pb, sizeof pa) == 0,
          "penalty 1 == no history");
}

/* The HF rules the oracle cannot pin down for large V: top-k keeps ties at the k-th value, top-p cuts a tie
 * class in torch.sort(stable) order (lower ids dropped first), the most likely token always stays. */
static void test_hf_rules(void) {
    lf_err err;
    float pr[8];
    float u8[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    lf_sample_params p = SP(1, 1.0, 0, 0.5, 1.0, 0);
    CHECK(lf_sample_distribution(S, &p, u8, 8, NULL, 0, pr, &err) == LF_OK && pr[0] == 0 && pr[3] == 0 &&
              pr[4] == 0.25f && pr[7] == 0.25f,
          "uniform 8, top_p 0.5: keeps ids 4..7 (%g %g %g %g)", pr[0], pr[3], pr[4], pr[7]);
    float t3[3] = {3, 3, 1};
    p.top_p = 1e-3;
    CHECK(lf_sample_distribution(S, &p, t3, 3, NULL, 0, pr, &err) == LF_OK && pr[1] == 1.0f && pr[0] == 0,
          "tiny top_p with a tied max keeps the higher id");
    float k5[6] = {1, 2, 2, 2, 0, 3};
    lf_sample_params pk = SP(1, 1.0, 2, 1.0, 1.0, 0);
    CHECK(lf_sample_distribution(S, &pk, k5, 6, NULL, 0, pr, &err) == LF_OK && pr[0] == 0 && pr[4] == 0 &&
              pr[1] > 0 && pr[2] > 0 && pr[3] > 0 && pr[5] > 0,
          "top_k 2 keeps every tie at the 2nd value");
    /* [2, 1, 0, -1, -inf], top_k 3, top_p 0.7: softmax(2,1,0) = .665 .245 .090; ascending cum .090 <= .3
     * dropped, .335 kept -> {0, 1} renormalised */
    float h5[5] = {2, 1, 0, -1, -INFINITY};
    lf_sample_params pp = SP(1, 1.0, 3, 0.7, 1.0, 0);
    double e0 = exp(2.0), e1 = exp(1.0);
    CHECK(lf_sample_distribution(S, &pp, h5, 5, NULL, 0, pr, &err) == LF_OK && fabs(pr[0] - e0 / (e0 + e1)) < 1e-7 &&
              fabs(pr[1] - e1 / (e0 + e1)) < 1e-7 && pr[2] == 0 && pr[3] == 0 && pr[4] == 0,
          "top_k 3 + top_p 0.7 hand case: %g %g %g", pr[0], pr[1], pr[2]);
}

static void test_seed_and_draws(void) {
    static float x[1000];
    static int32_t seq_a[200], seq_b[200], seq_c[200];
    lf_sample_params p = SP(1, 1.0, 0, 0.95, 1.1, 0);
    uint64_t base = lf_rng_next(&rng);
    int ref_bad = 0;
    for (int pass = 0; pass < 3; pass++) {
        lf_rng r, rr;
        lf_rng_seed(&r, pass == 2 ? base + 1 : base);
        lf_rng_seed(&rr, pass == 2 ? base + 1 : base);
        lf_rng lg;
        lf_rng_seed(&lg, 12345); /* the same logits rows every pass */
        for (int t = 0; t < 200; t++) {
            for (int i = 0; i < 1000; i++) x[i] = lf_rng_normal(&lg) * 0.3f;
            int32_t *seq = pass == 0 ? seq_a : pass == 1 ? seq_b : seq_c;
            seq[t] = pick(&p, x, 1000, seq, t, &r);
            lf_sample_result res;
            lf_err err;
            lf_sample_token_ref(&p, &rr, x, 1000, seq, t, &res, &err);
            ref_bad += res.id != seq[t];
        }
    }
    CHECK(memcmp(seq_a, seq_b, sizeof seq_a) == 0, "same seed, same 200 tokens");
    CHECK(memcmp(seq_a, seq_c, sizeof seq_a) != 0, "another seed gives another sequence");
    CHECK(ref_bad == 0, "reference sequence differs at %d steps", ref_bad);
    /* greedy does not touch the rng */
    lf_rng r0, r1;
    lf_rng_seed(&r0, base);
    r1 = r0;
    lf_sample_params g = greedy_params(1.0);
    pick(&g, x, 1000, NULL, 0, &r0);
    CHECK(same_rng(&r0, &r1), "greedy consumed an rng draw");
}

static void test_topk1(void) {
    static float x[3000];
    static int32_t h[64];
    int bad = 0, bad_tie = 0;
    for (int t = 0; t < 300; t++) {
        int64_t V = 1 + (int64_t)rnd(3000);
        int kind = t % 2 ? K_NORMAL : K_TIES;
        gen_logits(x, V, kind);
        int64_t nh = gen_history(h, V);
        double rp = (double[]){1.0, 1.3, 0.7}[rnd(3)];
        lf_sample_params g = greedy_params(rp);
        lf_sample_params s = SP(1, (double[]){0.3, 1.0, 4.0}[rnd(3)], 1, (double[]){1.0, 0.5, 0.01}[rnd(3)], rp, 0);
        lf_rng r;
        lf_rng_seed(&r, lf_rng_next(&rng));
        int32_t gi = pick(&g, x, V, h, nh, NULL), si = pick(&s, x, V, h, nh, &r);
        /* the processed maximum (penalty only; temperature keeps the order) */
        float pen[3000];
        for (int64_t i = 0; i < V; i++) pen[i] = x[i];
        for (int64_t j = 0; j < nh; j++)
            if (h[j] >= 0 && h[j] < V) pen[h[j]] = x[h[j]] < 0 ? x[h[j]] * (float)rp : x[h[j]] / (float)rp;
        int nmax = 0;
        for (int64_t i = 0; i < V; i++) nmax += pen[i] == pen[gi];
        if (nmax == 1) bad += si != gi;
        else bad_tie += !(si >= 0 && si < V && pen[si] == pen[gi]);
    }
    CHECK(bad == 0, "top_k=1 sampling != greedy on %d rows with a unique max", bad);
    CHECK(bad_tie == 0, "top_k=1 with a tied max drew outside the tie on %d rows", bad_tie);
}

/* Chi-square of N draws against lf_sample_distribution. Cells: tokens with expected count >= 5, the rest
 * pooled (pooled into the smallest cell when the pool itself expects < 5). Bound: the 1 - 1e-6 quantile of
 * chi-square(df) by Wilson-Hilferty (z = 4.7534), conservative for small df, so a correct sampler fails each
 * case with probability about 1e-6. Tokens with probability 0 must never be drawn. */
static void chi_square_case(const char *name, const float *x, int64_t V, const int32_t *h, int64_t nh,
                            const lf_sample_params *p, long N) {
    static float pr[MAXV];
    static long cnt[MAXV];
    lf_err err;
    if (lf_sample_distribution(S, p, x, V, h, nh, pr, &err) != LF_OK) {
        CHECK(0, "%s: %s", name, err.msg);
        return;
    }
    memset(cnt, 0, (size_t)V * sizeof *cnt);
    lf_rng r;
    lf_rng_seed(&r, lf_rng_next(&rng));
    long zero_hits = 0;
    N /= LIGHT > 1 ? 2 * LIGHT : 1; /* sanitizer builds: an eighth of the draws (the bound stays valid) */
    for (long t = 0; t < N; t++) {
        int32_t id = pick(p, x, V, h, nh, &r);
        if (id < 0 || id >= V) {
            zero_hits++;
            continue;
        }
        cnt[id]++;
        zero_hits += pr[id] == 0;
    }
    double chi = 0, pool_e = 0, pool_o = 0, small_e = 1e300, small_o = 0;
    int cells = 0, support = 0;
    for (int64_t i = 0; i < V; i++) {
        if (pr[i] == 0) continue;
        support++;
        double e = (double)N * pr[i];
        if (e >= 10) {
            chi += (cnt[i] - e) * (cnt[i] - e) / e;
            cells++;
            if (e < small_e) small_e = e, small_o = (double)cnt[i];
        } else {
            pool_e += e;
            pool_o += (double)cnt[i];
        }
    }
    if (pool_e >= 10) {
        chi += (pool_o - pool_e) * (pool_o - pool_e) / pool_e;
        cells++;
    } else if (pool_e > 0 && cells > 0) { /* merge the pool into the smallest cell */
        chi -= (small_o - small_e) * (small_o - small_e) / small_e;
        double e = small_e + pool_e, o = small_o + pool_o;
        chi += (o - e) * (o - e) / e;
    }
    int df = cells - 1;
    double bound = 0;
    if (df >= 1) {
        double a = 2.0 / (9.0 * df);
        bound = df * pow(1.0 - a + 4.7534 * sqrt(a), 3.0);
    }
    printf("chi-square %-28s N=%ld support=%d cells=%d df=%d chi2=%.2f bound=%.2f\n", name, N, support, cells, df,
           chi, bound);
    CHECK(zero_hits == 0, "%s: %ld draws hit a zero-probability token", name, zero_hits);
    CHECK(df >= 2, "%s: only %d cells, the test would be vacuous", name, cells);
    CHECK(df < 1 || chi <= bound, "%s: chi2 %.2f > %.2f (df %d)", name, chi, bound, df);
}

static void test_chi_square(void) {
    static float x[3000];
    static int32_t h[64];
    lf_sample_params p;
    for (int i = 0; i < 7; i++) x[i] = lf_rng_normal(&rng);
    p = SP(1, 1.0, 0, 1.0, 1.0, 0);
    chi_square_case("V=7 T=1", x, 7, NULL, 0, &p, 100000);
    for (int i = 0; i < 1000; i++) x[i] = lf_rng_normal(&rng);
    p = SP(1, 0.8, 20, 1.0, 1.0, 0);
    chi_square_case("V=1000 top_k=20 T=0.8", x, 1000, NULL, 0, &p, 50000);
    for (int i = 0; i < 1000; i++) x[i] = lf_rng_normal(&rng) * 2.0f;
    int64_t nh = gen_history(h, 1000);
    p = SP(1, 1.2, 0, 0.6, 1.3, 0);
    chi_square_case("V=1000 top_p=0.6 rp=1.3", x, 1000, h, nh, &p, 50000);
    /* V > LF_SAMPLE_SMALL (1024): the histogram paths */
    for (int i = 0; i < 3000; i++) x[i] = lf_rng_normal(&rng) * 2.0f;
    p = SP(1, 1.0, 0, 0.9, 1.0, 0);
    chi_square_case("V=3000 top_p=0.9 (histogram)", x, 3000, NULL, 0, &p, 20000);
    for (int i = 0; i < 3000; i++) x[i] = lf_rng_normal(&rng) * 2.0f;
    p = SP(1, 1.0, 0, 1.0, 1.0, 0);
    chi_square_case("V=3000 T=1 (bin draw)", x, 3000, NULL, 0, &p, 20000);
    p = SP(1, 1.0, 1500, 0.95, 1.0, 0);
    chi_square_case("V=3000 top_k=1500 top_p=0.95", x, 3000, NULL, 0, &p, 20000);
    float u8[8] = {0, 0, 0, 0, 0, 0, -1, -1};
    p = SP(1, 1.0, 0, 0.3, 1.0, 0);
    chi_square_case("V=8 tie class cut by top_p", u8, 8, NULL, 0, &p, 100000);
}

static void test_bad_params(void) {
    lf_err err;
    struct {
        lf_sample_params p;
        const char *name;
    } bad[] = {
        {SP(2, 1.0, 0, 1.0, 1.0, 0), "do_sample"},          {SP(1, -1.0, 0, 1.0, 1.0, 0), "temperature"},
        {SP(1, NAN, 0, 1.0, 1.0, 0), "temperature"},        {SP(1, INFINITY, 0, 1.0, 1.0, 0), "temperature"},
        {SP(1, 1.0, 0, 0.0, 1.0, 0), "top_p"},              {SP(1, 1.0, 0, 1.5, 1.0, 0), "top_p"},
        {SP(1, 1.0, 0, NAN, 1.0, 0), "top_p"},              {SP(1, 1.0, 0, -0.1, 1.0, 0), "top_p"},
        {SP(1, 1.0, 0, 1.0, 0.0, 0), "repetition_penalty"}, {SP(1, 1.0, 0, 1.0, -2.0, 0), "repetition_penalty"},
        {SP(1, 1.0, 0, 1.0, NAN, 0), "repetition_penalty"}, {SP(1, 1.0, 0, 1.0, INFINITY, 0), "repetition_penalty"},
        {SP(1, 1.0, 0, 1.0, 1.0, -1), "n_top"},             {SP(1, 1.0, 0, 1.0, 1.0, 21), "n_top"},
    };
    float x[3] = {0, 1, 2};
    lf_sample_result res;
    lf_rng r;
    lf_rng_seed(&r, 1);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        lf_err_clear(&err);
        lf_status st = lf_sample_params_check(&bad[i].p, &err);
        CHECK(st == LF_EINVAL && strstr(err.msg, bad[i].name), "bad %s: status %d msg '%s'", bad[i].name, st, err.msg);
        CHECK(lf_sample_token(S, &bad[i].p, &r, x, 3, NULL, 0, &res, &err) == LF_EINVAL, "token with bad %s",
              bad[i].name);
        CHECK(lf_sample_token_ref(&bad[i].p, &r, x, 3, NULL, 0, &res, &err) == LF_EINVAL, "ref with bad %s",
              bad[i].name);
    }
    lf_sample_params ok = SP(1, 1.0, -5, 1.0, 1.0, 20);
    CHECK(lf_sample_params_check(&ok, &err) == LF_OK, "top_k < 0 (off) is valid: %s", err.msg);
    CHECK(lf_sample_params_check(NULL, &err) == LF_EINVAL, "NULL params");
    CHECK(lf_sample_token(S, &ok, &r, x, 0, NULL, 0, &res, &err) == LF_EINVAL, "V = 0");
    CHECK(lf_sample_token(S, &ok, &r, x, MAXV + 1, NULL, 0, &res, &err) == LF_EINVAL && strstr(err.msg, "V="),
          "V above the scratch size: %s", err.msg);
    CHECK(lf_sample_token(S, &ok, NULL, x, 3, NULL, 0, &res, &err) == LF_EINVAL, "sampling without rng");
    CHECK(lf_sample_token(S, &ok, &r, x, 3, NULL, 2, &res, &err) == LF_EINVAL, "n_hist > 0 with NULL history");
    CHECK(lf_sample_token(S, &ok, &r, x, 3, NULL, -1, &res, &err) == LF_EINVAL, "n_hist < 0");
    CHECK(lf_sample_token(NULL, &ok, &r, x, 3, NULL, 0, &res, &err) == LF_EINVAL, "NULL scratch");
    lf_sample_scratch *s2 = NULL;
    CHECK(lf_sample_scratch_create(0, &s2, &err) == LF_EINVAL && s2 == NULL, "scratch V = 0");
    CHECK(lf_sample_scratch_create(-3, &s2, &err) == LF_EINVAL && s2 == NULL, "scratch V < 0");
    lf_sample_scratch_free(NULL);
    /* V = 1: always token 0, log_prob 0 */
    float one = 3.5f;
    CHECK(lf_sample_token(S, &ok, &r, &one, 1, NULL, 0, &res, &err) == LF_OK && res.id == 0 && res.log_prob == 0 &&
              res.n_top == 1,
          "V = 1");
}

/* Informational timing at Qwen2's vocabulary (no pass/fail: timings vary by machine and sanitizer); the
 * tokens must still agree. */
static void test_timing(void) {
    static float x[MAXV];
    const int64_t V = MAXV;
    struct {
        const char *name;
        lf_sample_params p;
    } cfg[] = {{"T=0.7 top_k=50 top_p=0.9", SP(1, 0.7, 50, 0.9, 1.1, 5)},
               {"T=1 top_p=0.9", SP(1, 1.0, 0, 0.9, 1.0, 0)},
               {"T=1.5 top_p=0.95 (flat)", SP(1, 1.5, 0, 0.95, 1.0, 0)},
               {"T=1 (no filter)", SP(1, 1.0, 0, 1.0, 1.0, 0)},
               {"greedy", SP(0, 1.0, 0, 1.0, 1.0, 0)}};
    int32_t h[32];
    for (int j = 0; j < 32; j++) h[j] = (int32_t)rnd((uint64_t)V);
    for (size_t c = 0; c < sizeof cfg / sizeof *cfg; c++) {
        double tf = 0, tr = 0;
        int bad = 0, reps = LIGHT > 1 ? 1 : 3;
        for (int rep = 0; rep < reps; rep++) {
            for (int64_t i = 0; i < V; i++) x[i] = lf_rng_normal(&rng) * 2.5f;
            x[rnd((uint64_t)V)] += 8.0f;
            lf_rng ra, rb;
            lf_rng_seed(&ra, (uint64_t)rep);
            rb = ra;
            lf_sample_result a, b;
            lf_err err;
            struct timespec t0, t1, t2;
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
            lf_sample_token(S, &cfg[c].p, &ra, x, V, h, 32, &a, &err);
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
            lf_sample_token_ref(&cfg[c].p, &rb, x, V, h, 32, &b, &err);
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t2);
            tf += (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) * 1e-6;
            tr += (t2.tv_sec - t1.tv_sec) * 1e3 + (t2.tv_nsec - t1.tv_nsec) * 1e-6;
            bad += a.id != b.id || !lp_close(a.log_prob, b.log_prob);
        }
        printf("timing V=%lld %-26s fast %.3f ms  ref %.3f ms per token (thread CPU time)\n", (long long)V,
               cfg[c].name, tf / reps, tr / reps);
        CHECK(bad == 0, "V=%lld %s: fast and ref differ on %d of %d rows", (long long)V, cfg[c].name, bad, reps);
    }
}

/* ---------------------------------------------------------------- vLLM / TGI parameters (issue 11) */

/* Random draws of the newer parameters on top of the HF ones. */
static lf_sample_params random_new_params(int64_t V, int64_t nh) {
    static const double mps[] = {0, 0, 0.01, 0.1, 0.5, 0.9, 1.0}, typs[] = {0, 1.0, 0.2, 0.5, 0.9, 0.999};
    static const double pens[] = {0, 0, 0.5, -0.5, 2.0, -2.0, 1.25};
    static const struct {
        int ds;
        double t;
    } modes[] = {{0, 1.0}, {1, 0.5}, {1, 1.0}, {1, 1.0}, {1, 2.5}};
    int mi = (int)rnd(5);
    int64_t tks[] = {0, 0, 1, 3, 50, V / 2, V - 1, V + 3};
    double tps[] = {1.0, 1.0, 0.95, 0.5, 1e-3};
    lf_sample_params p = SP(modes[mi].ds, modes[mi].t, tks[rnd(8)], tps[rnd(5)], (double[]){1.0, 1.3, 0.6}[rnd(3)],
                            (int)rnd(LF_SAMPLE_MAX_TOP + 1));
    p.min_p = mps[rnd(7)];
    p.typical_p = typs[rnd(6)];
    p.presence_penalty = pens[rnd(7)];
    p.frequency_penalty = pens[rnd(7)];
    p.n_prompt = (int64_t)rnd((uint64_t)nh + 2); /* may exceed n_hist: nothing generated */
    return p;
}

static void test_new_params_fast_vs_ref(void) {
    static float x[32000];
    static int32_t h[64];
    static const int64_t Vs[] = {1, 2, 7, 40, 1000, 2500, 32000};
    long before_cases = n_cases, before_bad = n_mismatch;
    for (size_t vi = 0; vi < sizeof Vs / sizeof *Vs; vi++) {
        int64_t V = Vs[vi];
        int reps = (V >= 2500 ? 8 : V >= 1000 ? 40 : 200) / LIGHT;
        for (int rep = 0; rep < reps; rep++) {
            int kind = (int)rnd(K_NKINDS);
            gen_logits(x, V, kind);
            int64_t nh = gen_history(h, V);
            lf_sample_params p = random_new_params(V, nh);
            compare_case(x, V, h, nh, &p, kind_name[kind]);
        }
    }
    printf("new params fast vs ref: %ld cases, %ld mismatches\n", n_cases - before_cases, n_mismatch - before_bad);
    CHECK(n_mismatch == before_bad, "new params: %ld of %ld cases differ", n_mismatch - before_bad,
          n_cases - before_cases);
}

static double maxdiff(const float *a, const double *b, int n) {
    double w = 0;
    for (int i = 0; i < n; i++) w = fmax(w, fabs((double)a[i] - b[i]));
    return w;
}

/* softmax of z[n] into out (f64). */
static void softmax_d(const double *z, int n, double *out) {
    double m = -INFINITY, s = 0;
    for (int i = 0; i < n; i++) m = z[i] > m ? z[i] : m;
    for (int i = 0; i < n; i++) s += (out[i] = z[i] == -INFINITY ? 0 : exp(z[i] - m));
    for (int i = 0; i < n; i++) out[i] /= s;
}

static void test_presence_frequency(void) {
    lf_err err;
    float pr[6], pb[6];
    double want[6];
    float x[6] = {1.0f, 2.0f, 3.0f, 0.0f, -1.0f, 0.5f};
    /* prompt [0, 5], generated [1, 1, 2, 4, 99 (out of range), -1] */
    int32_t h[] = {0, 5, 1, 1, 2, 4, 99, -1};
    lf_sample_params p = SP(1, 1.0, 0, 1.0, 1.0, 0);
    p.presence_penalty = 0.5;
    p.frequency_penalty = 0.25;
    p.n_prompt = 2;
    /* vLLM: x - f * count - r over the generated ids only: 1: 2 - 0.5 - 0.5 = 1; 2: 3 - 0.25 - 0.5 = 2.25;
     * 4: -1 - 0.75 = -1.75; the prompt ids 0 and 5 untouched */
    double z[6] = {1.0, 1.0, 2.25, 0.0, -1.75, 0.5};
    softmax_d(z, 6, want);
    CHECK(lf_sample_distribution(S, &p, x, 6, h, 8, pr, &err) == LF_OK && maxdiff(pr, want, 6) < 1e-7,
          "presence 0.5 + frequency 0.25 over generated ids: off by %g (%s)", maxdiff(pr, want, 6), err.msg);
    /* the prompt does not count: n_prompt = n_hist leaves the row alone */
    lf_sample_params q = p;
    q.n_prompt = 8;
    lf_sample_params off = SP(1, 1.0, 0, 1.0, 1.0, 0);
    CHECK(lf_sample_distribution(S, &q, x, 6, h, 8, pr, &err) == LF_OK &&
              lf_sample_distribution(S, &off, x, 6, h, 8, pb, &err) == LF_OK && memcmp(pr, pb, sizeof pr) == 0,
          "presence/frequency ignore the prompt tokens");
    q.n_prompt = 100; /* past the history: nothing generated yet */
    CHECK(lf_sample_distribution(S, &q, x, 6, h, 8, pr, &err) == LF_OK && memcmp(pr, pb, sizeof pr) == 0,
          "n_prompt beyond n_hist: no generated tokens");
    /* after the repetition penalty (vLLM's order), on the penalised value: rp 2 over all of history, then the
     * generated counts. 0: 1/2 = 0.5; 1: 2/2 - 1 = 0; 2: 3/2 - 0.75 = 0.75; 4: -1*2 - 0.75 = -2.75; 5: 0.25 */
    lf_sample_params r = p;
    r.repetition_penalty = 2.0;
    double z2[6] = {0.5, 0.0, 0.75, 0.0, -2.75, 0.25};
    softmax_d(z2, 6, want);
    CHECK(lf_sample_distribution(S, &r, x, 6, h, 8, pr, &err) == LF_OK && maxdiff(pr, want, 6) < 1e-7,
          "repetition then presence/frequency: off by %g", maxdiff(pr, want, 6));
    /* negative penalties encourage repeats; greedy applies them (argmax moves from 2 to 1) */
    lf_sample_params g = greedy_params(1.0);
    g.frequency_penalty = -1.5;
    g.n_prompt = 2;
    CHECK(pick(&g, x, 6, h, 8, NULL) == 1, "greedy with frequency -1.5: 2 + 3 = 5 > 3 + 1.5");
    g.presence_penalty = 2.0;
    g.frequency_penalty = 2.0;
    CHECK(pick(&g, x, 6, h, 8, NULL) == 0, "greedy with penalties 2/2: the generated ids fall below the prompt's 1");
    /* the count buffer is clean after each call: the same call twice gives the same row, and a call without
     * penalties after one with them is unaffected */
    CHECK(lf_sample_distribution(S, &p, x, 6, h, 8, pr, &err) == LF_OK &&
              lf_sample_distribution(S, &p, x, 6, h, 8, pb, &err) == LF_OK && memcmp(pr, pb, sizeof pr) == 0,
          "penalised twice: same distribution");
    float pc[6];
    CHECK(lf_sample_distribution(S, &off, x, 6, h, 8, pc, &err) == LF_OK &&
              lf_sample_distribution(S, &off, x, 6, NULL, 0, pb, &err) == LF_OK && memcmp(pc, pb, sizeof pc) == 0,
          "no penalty after a penalised call: the row is untouched");
    /* -inf stays -inf, +inf stays +inf */
    float xi[3] = {-INFINITY, INFINITY, 1.0f};
    int32_t hi[] = {0, 1, 2};
    lf_sample_params pi = SP(1, 1.0, 0, 1.0, 1.0, 0);
    pi.presence_penalty = -2.0;
    pi.frequency_penalty = 2.0;
    CHECK(lf_sample_distribution(S, &pi, xi, 3, hi, 3, pr, &err) == LF_OK && pr[0] == 0 && pr[1] == 1.0f && pr[2] == 0,
          "penalties keep -inf / +inf");
}

static void test_min_p(void) {
    lf_err err;
    float pr[5];
    /* relative weights 1, 0.5, 0.1, 0.05, 0.3 */
    float x[5] = {0.0f, logf(0.5f), logf(0.1f), logf(0.05f), logf(0.3f)};
    lf_sample_params p = SP(1, 1.0, 0, 1.0, 1.0, 0);
    p.min_p = 0.2;
    double s = 1.0 + 0.5 + 0.3;
    CHECK(lf_sample_distribution(S, &p, x, 5, NULL, 0, pr, &err) == LF_OK && fabs(pr[0] - 1 / s) < 1e-6 &&
              fabs(pr[1] - 0.5 / s) < 1e-6 && pr[2] == 0 && pr[3] == 0 && fabs(pr[4] - 0.3 / s) < 1e-6,
          "min_p 0.2 keeps weights >= 0.2 x max: %g %g %g %g %g", pr[0], pr[1], pr[2], pr[3], pr[4]);
    p.min_p = 1.0;
    CHECK(lf_sample_distribution(S, &p, x, 5, NULL, 0, pr, &err) == LF_OK && pr[0] == 1.0f, "min_p 1 keeps the max");
    float t2[4] = {2.0f, 2.0f, 1.0f, -INFINITY};
    CHECK(lf_sample_distribution(S, &p, t2, 4, NULL, 0, pr, &err) == LF_OK && pr[0] == 0.5f && pr[1] == 0.5f &&
              pr[2] == 0,
          "min_p 1 keeps a tied max");
    /* after temperature: T = 0.5 squares the relative weights (0.25, 0.01, 0.0025, 0.09), min_p 0.2 keeps 2 */
    p.min_p = 0.2;
    p.temperature = 0.5;
    CHECK(lf_sample_distribution(S, &p, x, 5, NULL, 0, pr, &err) == LF_OK && pr[0] > 0 && pr[1] > 0 && pr[4] == 0 &&
              fabs(pr[0] - 1 / 1.25) < 1e-6,
          "min_p after temperature: %g %g %g", pr[0], pr[1], pr[4]);
    /* after top-p (HF / vLLM order): top_p 0.9 over (1, .5, .1, .05, .3)/1.95 drops 3 and 2 (ascending cum
     * .026, .077 <= .1), min_p 0.4 then drops 4 (0.3 < 0.4): {0, 1} */
    p.temperature = 1.0;
    p.top_p = 0.9;
    p.min_p = 0.4;
    CHECK(lf_sample_distribution(S, &p, x, 5, NULL, 0, pr, &err) == LF_OK && fabs(pr[0] - 1 / 1.5) < 1e-6 &&
              fabs(pr[1] - 0.5 / 1.5) < 1e-6 && pr[2] == 0 && pr[3] == 0 && pr[4] == 0,
          "top_p then min_p: %g %g %g %g %g", pr[0], pr[1], pr[2], pr[3], pr[4]);
    /* greedy ignores it */
    lf_sample_params g = greedy_params(1.0);
    g.min_p = 0.9;
    CHECK(pick(&g, x, 5, NULL, 0, NULL) == 0, "greedy ignores min_p");
}

static void test_typical_p(void) {
    lf_err err;
    float pr[4];
    /* p = (4, 2, 1, 1) / 8: -log p = (.69, 1.39, 2.08, 2.08), H = 1.213, scores (.52, .17, .87, .87): sorted
     * 1, 0, {2, 3}; cum .25, .75, ... typical_p 0.5: first cum >= .5 at position 1 -> keep {1, 0};
     * typical_p 0.2: position 0 -> keep {1} only (the most likely token is dropped) */
    float x[4] = {logf(4.0f), logf(2.0f), 0.0f, 0.0f};
    lf_sample_params p = SP(1, 1.0, 0, 1.0, 1.0, 0);
    p.typical_p = 0.5;
    CHECK(lf_sample_distribution(S, &p, x, 4, NULL, 0, pr, &err) == LF_OK && fabs(pr[0] - 2.0 / 3) < 1e-6 &&
              fabs(pr[1] - 1.0 / 3) < 1e-6 && pr[2] == 0 && pr[3] == 0,
          "typical_p 0.5: %g %g %g %g", pr[0], pr[1], pr[2], pr[3]);
    p.typical_p = 0.2;
    CHECK(lf_sample_distribution(S, &p, x, 4, NULL, 0, pr, &err) == LF_OK && pr[1] == 1.0f && pr[0] == 0,
          "typical_p 0.2 keeps only the most typical token: %g %g", pr[0], pr[1]);
    p.typical_p = 0.9; /* cum .25 .75 1.0: position 2 -> the tie {2, 3} is kept whole: everything */
    CHECK(lf_sample_distribution(S, &p, x, 4, NULL, 0, pr, &err) == LF_OK && pr[2] > 0 && pr[3] > 0 && pr[0] > 0,
          "typical_p 0.9 keeps the tie class at the cut");
    /* uniform: every score 0, all kept */
    float u[4] = {1, 1, 1, 1};
    p.typical_p = 0.1;
    CHECK(lf_sample_distribution(S, &p, u, 4, NULL, 0, pr, &err) == LF_OK && pr[0] == 0.25f && pr[3] == 0.25f,
          "typical_p on a uniform row keeps all");
    /* +inf: uniform over the +inf tokens */
    float pi[4] = {INFINITY, 1.0f, INFINITY, 0.0f};
    CHECK(lf_sample_distribution(S, &p, pi, 4, NULL, 0, pr, &err) == LF_OK && pr[0] == 0.5f && pr[2] == 0.5f &&
              pr[1] == 0,
          "typical_p with +inf logits");
    /* greedy ignores it (HF applies warpers only when sampling) */
    lf_sample_params g = greedy_params(1.0);
    g.typical_p = 0.2;
    CHECK(pick(&g, x, 4, NULL, 0, NULL) == 0, "greedy ignores typical_p");
    /* one draw, same rng state as the reference, also here */
    lf_rng r0;
    lf_rng_seed(&r0, 99);
    p.typical_p = 0.2;
    CHECK(pick(&p, x, 4, NULL, 0, &r0) == 1, "typical_p 0.2 draws token 1");
}

static void test_new_chi_square(void) {
    static float x[3000];
    static int32_t h[64];
    for (int i = 0; i < 3000; i++) x[i] = lf_rng_normal(&rng) * 2.0f;
    lf_sample_params p = SP(1, 1.0, 0, 1.0, 1.0, 0);
    p.min_p = 0.02;
    chi_square_case("V=3000 min_p=0.02", x, 3000, NULL, 0, &p, 20000);
    p = SP(1, 0.9, 0, 0.95, 1.0, 0);
    p.typical_p = 0.7;
    chi_square_case("V=3000 top_p=0.95 typical_p=0.7", x, 3000, NULL, 0, &p, 20000);
    for (int i = 0; i < 200; i++) x[i] = lf_rng_normal(&rng);
    int64_t nh = gen_history(h, 200);
    p = SP(1, 1.0, 20, 1.0, 1.2, 0);
    p.presence_penalty = 1.0;
    p.frequency_penalty = 0.5;
    p.n_prompt = nh / 2;
    chi_square_case("V=200 top_k=20 rp presence frequency", x, 200, h, nh, &p, 50000);
}

static void test_new_bad_params(void) {
    lf_err err;
    struct {
        const char *name;
        double pres, freq, minp, typ;
        int64_t np;
    } bad[] = {
        {"presence_penalty", 2.5, 0, 0, 1, 0},  {"presence_penalty", NAN, 0, 0, 1, 0},
        {"frequency_penalty", 0, -2.01, 0, 1, 0}, {"frequency_penalty", 0, INFINITY, 0, 1, 0},
        {"min_p", 0, 0, -0.1, 1, 0},            {"min_p", 0, 0, 1.5, 1, 0},
        {"min_p", 0, 0, NAN, 1, 0},             {"typical_p", 0, 0, 0, -0.5, 0},
        {"typical_p", 0, 0, 0, 1.01, 0},        {"typical_p", 0, 0, 0, NAN, 0},
        {"n_prompt", 0, 0, 0, 1, -1},
    };
    float x[3] = {0, 1, 2};
    lf_sample_result res;
    lf_rng r;
    lf_rng_seed(&r, 1);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        lf_sample_params p = SP(1, 1.0, 0, 1.0, 1.0, 0);
        p.presence_penalty = bad[i].pres;
        p.frequency_penalty = bad[i].freq;
        p.min_p = bad[i].minp;
        p.typical_p = bad[i].typ;
        p.n_prompt = bad[i].np;
        lf_err_clear(&err);
        lf_status st = lf_sample_params_check(&p, &err);
        CHECK(st == LF_EINVAL && strstr(err.msg, bad[i].name), "bad %s: status %d msg '%s'", bad[i].name, st, err.msg);
        CHECK(lf_sample_token(S, &p, &r, x, 3, NULL, 0, &res, &err) == LF_EINVAL, "token with bad %s", bad[i].name);
    }
    lf_sample_params ok = SP(1, 1.0, 0, 1.0, 1.0, 0);
    ok.presence_penalty = -2;
    ok.frequency_penalty = 2;
    ok.min_p = 1;
    ok.typical_p = 0; /* 0 and 1: off */
    CHECK(lf_sample_params_check(&ok, &err) == LF_OK, "edge values valid: %s", err.msg);
}

/* Informational: the cost of the newer filters at V = 152064. */
static void test_new_timing(void) {
    static float x[MAXV];
    const int64_t V = MAXV;
    int32_t h[64];
    for (int j = 0; j < 64; j++) h[j] = (int32_t)rnd((uint64_t)V);
    struct {
        const char *name;
        double minp, typ, pen;
    } cfg[] = {{"min_p=0.05", 0.05, 0, 0}, {"typical_p=0.9", 0, 0.9, 0}, {"presence+frequency", 0, 0, 0.5}};
    for (size_t c = 0; c < sizeof cfg / sizeof *cfg; c++) {
        lf_sample_params p = SP(1, 1.0, 0, 1.0, 1.0, 0);
        p.min_p = cfg[c].minp;
        p.typical_p = cfg[c].typ;
        p.presence_penalty = p.frequency_penalty = cfg[c].pen;
        p.n_prompt = 32;
        for (int64_t i = 0; i < V; i++) x[i] = lf_rng_normal(&rng) * 2.5f;
        lf_rng ra;
        lf_rng_seed(&ra, 5);
        lf_sample_result a;
        lf_err err;
        struct timespec t0, t1;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
        lf_status st = lf_sample_token(S, &p, &ra, x, V, h, 64, &a, &err);
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
        printf("timing V=%lld %-20s fast %.3f ms per token (thread CPU time)\n", (long long)V, cfg[c].name,
               (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) * 1e-6);
        CHECK(st == LF_OK, "%s: %s", cfg[c].name, err.msg);
    }
}

int main(void) {
    const char *env = getenv("LF_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    printf("seed %llu\n", (unsigned long long)seed);
    lf_rng_seed(&rng, seed);
    lf_err err;
    if (lf_sample_scratch_create(MAXV, &S, &err) != LF_OK) {
        printf("FAIL scratch: %s\n", err.msg);
        return 1;
    }
    struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {{"fast_vs_ref", test_fast_vs_ref}, {"histogram_paths", test_histogram_paths},
                 {"greedy", test_greedy},
                 {"penalty_once", test_penalty_once}, {"hf_rules", test_hf_rules},
                 {"seed_and_draws", test_seed_and_draws}, {"topk1", test_topk1},
                 {"chi_square", test_chi_square}, {"bad_params", test_bad_params},
                 {"timing", test_timing}, {"new_params_fast_vs_ref", test_new_params_fast_vs_ref},
                 {"presence_frequency", test_presence_frequency}, {"min_p", test_min_p},
                 {"typical_p", test_typical_p}, {"new_chi_square", test_new_chi_square},
                 {"new_bad_params", test_new_bad_params}, {"new_timing", test_new_timing}};
    for (size_t i = 0; i < sizeof tests / sizeof *tests; i++) {
        clock_t t0 = clock();
        tests[i].fn();
        printf("[%s: %.2f s CPU]\n", tests[i].name, (double)(clock() - t0) / CLOCKS_PER_SEC);
    }
    lf_sample_scratch_free(S);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
