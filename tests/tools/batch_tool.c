/* batch_tool.c - checks model/model_batch (the serving forward) against lf_session_forward, for
 * tests/e2e/test_model_batch.py (built, not run by ctest).
 *
 *   batch_tool MODEL_DIR [--q4] [--bs N] [--seqs N] [--max-tokens N] [--max-prompt N] [--max-gen N]
 *
 * Loads MODEL_DIR (4-bit on load with --q4), makes three random adapters with lf_lora_create and random
 * A, B (B non-zero) and DoRA magnitudes:
 *   a0: LoRA r=4 alpha 8 on all seven modules
 *   a1: rsLoRA r=8 alpha 16 on q_proj, v_proj, up_proj, down_proj
 *   a2: DoRA r=2 alpha 4 on all seven modules, mag = DoRA norm * U(0.5, 1.5)
 * References: every sequence (random prompt of 1..max-prompt tokens, random adapter or none) goes alone
 * through lf_session_forward with lf_model_set_lora(its adapter): logits of every position and the greedy
 * continuation of 1..max-gen tokens.
 * Batched run: like the serving engine, up to 8 sequences run at once out of a waiting queue; each step gives
 * a running sequence a random prefill chunk (the batch's max-tokens rows shared) or one decode token, skips some,
 * orders the segments either sorted by adapter or shuffled, reserves KV blocks in a serve/kvcache pool of BS-slot
 * blocks (freed blocks come back shuffled), and runs one lf_batch_forward. Every want_logits row (the last row of
 * every decode / final prefill chunk, and of half of the intermediate chunks) is compared with the reference row
 * of the same position, and every decode's argmax with the reference's greedy token.
 * Tolerance: max |batch - ref| <= 1e-4 * max |ref| per row. Reason: both are f32; the batch runs the matmuls
 * over different row groupings (T rows of the whole batch, LoRA per adapter group), and the paged attention
 * kernel accumulates in another order than the contiguous one, so results agree to ~1e-6 relative, not bitwise.
 * A greedy token may differ only where the reference's top-2 logits are within 2e-4 * max |ref| (a near tie,
 * counted and reported; the run continues with the reference token).
 * Sanity: each adapter changes the logits by > 1e-2 relative (so a skipped adapter cannot pass).
 * Bad input: too many rows/segments, bad token ids, short block table, n < 1, pos0 < 0, rank > max_rank,
 * an adapter of another model, more blocks than max_blocks, NULL logits, negative block id: LF_EINVAL, a
 * message naming the segment, and the pool unchanged (hash of every layer's K and V before and after).
 *
 * Seed: env LF_TEST_SEED, else time; printed. Last line: "batch_tool: N passed, M failed". Exit 1 on any failure,
 * 2 on bad usage. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adapters/lora.h"
#include "bench/bench_args.h" // defines: lf_args_parse
#include "core/rng.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "model/model_batch.h"
#include "model/model_train.h"
#include "serve/kvcache.h"

static int passed, failed;
#define CHECK(cond, ...)                               \
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

#define REL_TOL 1e-4f  /* see the header comment */
#define TIE_TOL 2e-4f  /* top-2 gap under which a greedy token may flip */
#define NAD 3          /* adapters */
#define MAX_RUN 8      /* sequences running at once */

static lf_rng rng;
static int64_t rnd(int64_t n) { return (int64_t)(lf_rng_next(&rng) % (uint64_t)n); } /* [0, n) */
static float unif(float lo, float hi) { return lo + (hi - lo) * lf_rng_uniform(&rng); }

static void die_err(const char *what, const lf_err *e) {
    printf("FAIL %s: %s\n", what, e->msg);
    printf("batch_tool: %d passed, %d failed\n", passed, failed + 1);
    exit(1);
}

static int64_t argmax(const float *x, int64_t n) {
    int64_t b = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static float maxabs(const float *x, int64_t n) {
    float m = 0;
    for (int64_t i = 0; i < n; i++) m = fabsf(x[i]) > m ? fabsf(x[i]) : m;
    return m;
}

/* max |a - b| / max |b| */
static float rel_err(const float *a, const float *b, int64_t n) {
    float d = 0;
    for (int64_t i = 0; i < n; i++) {
        float e = fabsf(a[i] - b[i]);
        if (!(e <= d)) d = e; /* NaN propagates */
    }
    float s = maxabs(b, n);
    return d / (s > 1e-30f ? s : 1e-30f);
}

/* top1 - top2 of a row */
static float top2_gap(const float *x, int64_t n) {
    float a = -INFINITY, b = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        if (x[i] > a) {
            b = a;
            a = x[i];
        } else if (x[i] > b) {
            b = x[i];
        }
    }
    return a - b;
}

/* ---- adapters ---- */

typedef struct adapter {
    lf_lora_adapter *lora;
    lf_lora_view *views; /* [L * 7] */
    lf_model_adapter *fwd;
    const char *name;
} adapter;

static void make_adapter(lf_model *m, adapter *ad, const char *name, int64_t r, double alpha, int rslora, int dora,
                         uint32_t mask) {
    const lf_model_config *mc = lf_model_get_config(m);
    lf_err err = {0};
    lf_lora_config cfg = lf_lora_config_default();
    cfg.r = r;
    cfg.alpha = alpha;
    cfg.use_rslora = rslora;
    cfg.use_dora = dora;
    cfg.target_mask = mask;
    ad->name = name;
    if (lf_lora_create(&cfg, mc, &ad->lora, &err)) die_err("lf_lora_create", &err);
    const int64_t NV = mc->L * LF_MOD_COUNT;
    ad->views = calloc((size_t)NV, sizeof *ad->views);
    if (!ad->views) {
        printf("FAIL out of memory\n");
        exit(1);
    }
    int64_t wmax = 0;
    for (int64_t i = 0; i < NV; i++) {
        lf_lora_slot *s = lf_lora_get_mut(ad->lora, i / LF_MOD_COUNT, (lf_module)(i % LF_MOD_COUNT));
        if (!s) continue;
        /* A ~ U(+-1/sqrt(C)) (PEFT's kaiming bound), B ~ U(+-1): the adapter term is of the base's size or larger */
        for (int64_t j = 0; j < s->R * s->IN; j++) s->A[j] = unif(-1.0f, 1.0f) / sqrtf((float)s->IN);
        for (int64_t j = 0; j < s->OC * s->R; j++) s->B[j] = unif(-1.0f, 1.0f);
        ad->views[i] = (lf_lora_view){s->A, s->B, s->mag, NULL, NULL, NULL, s->R, (float)s->scaling};
        if (s->OC * s->IN > wmax) wmax = s->OC * s->IN;
    }
    if (dora) { /* mag = n * U(0.5, 1.5) so that m/n != 1 exercises both DoRA terms */
        float *scratch = malloc((size_t)wmax * sizeof(float));
        if (!scratch) {
            printf("FAIL out of memory\n");
            exit(1);
        }
        for (int64_t i = 0; i < NV; i++) {
            lf_lora_view *v = &ad->views[i];
            if (!v->A) continue;
            if (lf_model_dora_norm(m, v, i / LF_MOD_COUNT, (int)(i % LF_MOD_COUNT), v->mag, scratch, &err))
                die_err("lf_model_dora_norm", &err);
            lf_lora_slot *s = lf_lora_get_mut(ad->lora, i / LF_MOD_COUNT, (lf_module)(i % LF_MOD_COUNT));
            for (int64_t o = 0; o < s->OC; o++) v->mag[o] *= unif(0.5f, 1.5f);
        }
        free(scratch);
    }
    if (lf_model_adapter_create(m, ad->views, &ad->fwd, &err)) die_err("lf_model_adapter_create", &err);
}

/* ---- reference: one sequence alone through lf_session_forward ---- */

typedef struct seq {
    int ad;            /* adapter index, -1 = base */
    int64_t P, G;      /* prompt tokens, generated tokens */
    int32_t *tok;      /* [P + G - 1] prompt + the greedy tokens fed back */
    int32_t *gen;      /* [G] reference greedy tokens (gen[g] = tok[P + g] for g < G - 1) */
    float *ref;        /* [P + G - 1, V] reference logits of every position */
    /* batched run */
    lf_kv_seq kv;
    int64_t done;      /* positions in the pool */
    int64_t ngen;      /* decode rows checked */
} seq;

static void reference(lf_model *m, adapter *ads, seq *s) {
    const lf_model_config *mc = lf_model_get_config(m);
    const int64_t V = mc->V, n = s->P + s->G - 1;
    lf_err err = {0};
    lf_session *ss = NULL;
    if (lf_model_set_lora(m, s->ad >= 0 ? ads[s->ad].views : NULL, &err)) die_err("lf_model_set_lora", &err);
    if (lf_session_create(m, n + 1, 1 + rnd(32), &ss, &err)) die_err("lf_session_create", &err);
    if (lf_session_forward(ss, s->tok, s->P, s->ref, 0, &err)) die_err("lf_session_forward prompt", &err);
    for (int64_t g = 0; g < s->G; g++) {
        const float *row = s->ref + (s->P - 1 + g) * V;
        s->gen[g] = (int32_t)argmax(row, V);
        if (g == s->G - 1) break;
        s->tok[s->P + g] = s->gen[g];
        if (lf_session_forward(ss, &s->tok[s->P + g], 1, s->ref + (s->P + g) * V, 0, &err))
            die_err("lf_session_forward decode", &err);
    }
    lf_session_free(ss);
}

/* ---- pool hash (bad input must leave it unchanged) ---- */

static uint64_t pool_hash(lf_kv_pool *pool) {
    uint64_t h = 1469598103934665603ull;
    const int64_t L = lf_kv_pool_layers(pool);
    const size_t n = (size_t)(lf_kv_pool_blocks(pool) * lf_kv_pool_block_size(pool) * lf_kv_pool_kv_heads(pool) *
                              lf_kv_pool_head_dim(pool)) * sizeof(float);
    for (int64_t l = 0; l < L; l++)
        for (int kv = 0; kv < 2; kv++) {
            const unsigned char *p = (const unsigned char *)(kv ? lf_kv_pool_v(pool, l) : lf_kv_pool_k(pool, l));
            for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
        }
    return h;
}

static void bad_case(const char *what, lf_batch *b, const lf_paged_kv *kv, const lf_batch_seg *segs, int64_t n,
                     float *logits, lf_kv_pool *pool, const char *needle) {
    lf_err err = {0};
    uint64_t h0 = pool_hash(pool);
    lf_status st = lf_batch_forward(b, kv, segs, n, logits, &err);
    CHECK(st == LF_EINVAL, "bad input '%s': status %d, want LF_EINVAL (%s)", what, (int)st, err.msg);
    CHECK(err.msg[0] && (!needle || strstr(err.msg, needle)), "bad input '%s': message '%s' lacks '%s'", what,
          err.msg, needle ? needle : "");
    CHECK(pool_hash(pool) == h0, "bad input '%s': the pool was written", what);
    if (st == LF_EINVAL) printf("  bad input %-28s -> %s\n", what, err.msg);
}

static void bad_inputs(const char *dir, lf_backend *be, const lf_model_options *opt, lf_model *m, adapter *ads,
                       lf_batch *b, int64_t Tm, int64_t Sm, int64_t Bm, lf_kv_pool *pool, const lf_paged_kv *kv) {
    const lf_model_config *mc = lf_model_get_config(m);
    const int64_t V = mc->V, BS = kv->BS;
    lf_err err = {0};
    int64_t ntok = Tm + 2;
    int32_t *toks = calloc((size_t)ntok, sizeof *toks);
    int32_t *table = calloc((size_t)Bm + 2, sizeof *table);
    float *logits = calloc((size_t)(Sm + 1) * (size_t)V, sizeof *logits);
    lf_batch_seg *segs = calloc((size_t)Sm + 2, sizeof *segs);
    if (!toks || !table || !logits || !segs) {
        printf("FAIL out of memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < ntok; i++) toks[i] = (int32_t)rnd(V);
    for (int64_t i = 0; i < Bm + 2; i++) table[i] = (int32_t)rnd(lf_kv_pool_blocks(pool));
    /* a valid segment: 3 tokens at pos0 2, base model */
    const lf_batch_seg ok = {toks, 3, 2, table, Bm, NULL, 1};

    segs[0] = ok;
    segs[0].n = Tm + 1;
    bad_case("one segment > max_tokens", b, kv, segs, 1, logits, pool, "segment 0");
    segs[0] = ok;
    segs[1] = ok;
    segs[1].n = Tm - 2;
    bad_case("rows summed > max_tokens", b, kv, segs, 2, logits, pool, "segment 1");
    for (int64_t i = 0; i < Sm + 1; i++) segs[i] = (lf_batch_seg){toks + i, 1, 0, table, Bm, NULL, 1};
    bad_case("segments > max_segs", b, kv, segs, Sm + 1, logits, pool, "segments");
    bad_case("negative n_segs", b, kv, segs, -1, logits, pool, "segments");
    int32_t bad_tok[3] = {1, (int32_t)V, 2};
    segs[0] = ok;
    segs[1] = ok;
    segs[1].tokens = bad_tok;
    bad_case("token id == V", b, kv, segs, 2, logits, pool, "segment 1 token 1");
    bad_tok[1] = -1;
    bad_case("token id -1", b, kv, segs, 2, logits, pool, "segment 1 token 1");
    segs[1] = ok;
    segs[1].n_blocks = (ok.pos0 + ok.n + BS - 1) / BS - 1;
    bad_case("short block table", b, kv, segs, 2, logits, pool, "segment 1");
    segs[1] = ok;
    segs[1].block_table = NULL;
    bad_case("NULL block table", b, kv, segs, 2, logits, pool, "segment 1");
    segs[1] = ok;
    segs[1].n = 0;
    bad_case("n = 0", b, kv, segs, 2, logits, pool, "segment 1");
    segs[1] = ok;
    segs[1].pos0 = -1;
    bad_case("pos0 = -1", b, kv, segs, 2, logits, pool, "segment 1");
    segs[1] = ok;
    segs[1].pos0 = Bm * BS; /* needs Bm + 1 blocks: the table has them, the workspace not */
    segs[1].n_blocks = Bm + 2;
    bad_case("more blocks than max_blocks", b, kv, segs, 2, logits, pool, "segment 1");
    segs[1] = ok;
    int32_t neg_table[4] = {0, -1, 1, 2};
    segs[1].block_table = neg_table;
    segs[1].n_blocks = 4;
    segs[1].pos0 = 0;
    segs[1].n = BS + 1; /* writes blocks 0 and 1 */
    bad_case("negative block id", b, kv, segs, 2, logits, pool, "segment 1");
    segs[1] = ok;
    bad_case("want_logits, logits NULL", b, kv, segs, 2, NULL, pool, "segment 0");

    /* rank > max_rank: a workspace for rank 4, a1 has rank 8 */
    lf_batch *b4 = NULL;
    if (lf_batch_create(m, Tm, Sm, 4, Bm, &b4, &err)) die_err("lf_batch_create rank 4", &err);
    segs[1] = ok;
    segs[1].adapter = ads[1].fwd;
    bad_case("adapter rank > max_rank", b4, kv, segs, 2, logits, pool, "segment 1");
    segs[1].adapter = ads[0].fwd; /* rank 4: fine, and DoRA rank 2 too */
    segs[0].adapter = ads[2].fwd;
    uint64_t h = pool_hash(pool);
    lf_status st = lf_batch_forward(b4, kv, segs, 2, logits, &err);
    CHECK(st == LF_OK, "rank 4 / 2 adapters on a rank-4 workspace: %s", err.msg);
    CHECK(pool_hash(pool) != h, "a valid step wrote nothing into the pool");
    lf_batch_free(b4);

    /* an adapter made for another model (same files, another lf_model) */
    lf_model *m2 = NULL;
    lf_model_adapter *other = NULL;
    if (lf_model_load_opts(dir, be, opt, &m2, &err)) die_err("load the model again", &err);
    if (lf_model_adapter_create(m2, ads[0].views, &other, &err)) die_err("adapter on the second model", &err);
    segs[0] = ok;
    segs[1] = ok;
    segs[1].adapter = other;
    bad_case("adapter of another model", b, kv, segs, 2, logits, pool, "segment 1");
    lf_model_adapter_free(other);
    lf_model_free(m2);

    /* bad adapters and workspaces */
    const int64_t NV = mc->L * LF_MOD_COUNT;
    lf_lora_view *vv = malloc((size_t)NV * sizeof *vv);
    if (!vv) exit(1);
    memcpy(vv, ads[0].views, (size_t)NV * sizeof *vv);
    vv[LF_MOD_COUNT + LF_MOD_V].R = 0;
    other = NULL;
    st = lf_model_adapter_create(m, vv, &other, &err);
    CHECK(st == LF_EINVAL && !other && strstr(err.msg, "layer 1 v_proj"), "adapter rank 0: %d '%s'", (int)st, err.msg);
    memcpy(vv, ads[0].views, (size_t)NV * sizeof *vv);
    vv[LF_MOD_DOWN].B = NULL;
    st = lf_model_adapter_create(m, vv, &other, &err);
    CHECK(st == LF_EINVAL && !other && strstr(err.msg, "layer 0 down_proj"), "adapter without B: %d '%s'", (int)st,
          err.msg);
    free(vv);
    lf_batch *bb = NULL;
    st = lf_batch_create(m, 0, 1, 1, 1, &bb, &err);
    CHECK(st == LF_EINVAL && !bb, "batch max_tokens 0: %d", (int)st);
    st = lf_batch_create(m, 8, 1, 1, -1, &bb, &err);
    CHECK(st == LF_EINVAL && !bb, "batch max_blocks -1: %d", (int)st);
    CHECK(lf_batch_forward(b, kv, segs, 0, NULL, &err) == LF_OK, "empty batch: %s", err.msg);
    lf_batch_free(NULL);
    lf_model_adapter_free(NULL);
    free(toks);
    free(table);
    free(logits);
    free(segs);
}

/* ---- main ---- */

static const char USAGE[] =
    "usage: batch_tool MODEL_DIR [--q4] [--bs N] [--seqs N] [--max-tokens N] [--max-prompt N] [--max-gen N]\n"
    "  checks model_batch (the serving forward) against lf_session_forward; seed: env LF_TEST_SEED\n";

static int usage(void) {
    fputs(USAGE, stderr);
    return 2;
}

typedef struct order_item {
    int ad;
    int64_t key;
} order_item;

int main(int argc, char **argv) {
    const char *dir = NULL;
    int q4 = 0, npos = 0;
    int64_t BS = 4, nseqs = 32, Tm = 32, max_prompt = 40, max_gen = 8;
    const lf_arg_spec flags[] = {LF_FLAG_BOOL("--q4", &q4),
                                 LF_FLAG_I64("--bs", &BS, 1, 1 << 16),
                                 LF_FLAG_I64("--seqs", &nseqs, 1, 1 << 20),
                                 LF_FLAG_I64("--max-tokens", &Tm, MAX_RUN + 2, 1 << 20),
                                 LF_FLAG_I64("--max-prompt", &max_prompt, 1, 1 << 20),
                                 LF_FLAG_I64("--max-gen", &max_gen, 1, 1 << 20),
                                 LF_FLAG_END};
    int rc = lf_args_parse("batch_tool", USAGE, argc, argv, 1, flags, &dir, 1, &npos);
    if (rc >= 0) return rc;
    if (npos != 1) return usage();
    const char *env = getenv("LF_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    lf_rng_seed(&rng, seed);
    printf("batch_tool: seed %llu (LF_TEST_SEED), model %s%s, BS %lld, %lld sequences, max_tokens %lld\n",
           (unsigned long long)seed, dir, q4 ? " (4-bit on load)" : "", (long long)BS, (long long)nseqs, (long long)Tm);

    lf_err err = {0};
    lf_backend *be = lf_backend_cpu_create(0);
    if (!be) {
        printf("FAIL cpu backend\n");
        return 1;
    }
    lf_model_options opt = lf_model_default_options();
    opt.quant_bits = q4 ? 4 : 0;
    lf_model *m = NULL;
    if (lf_model_load_opts(dir, be, &opt, &m, &err)) die_err("load", &err);
    const lf_model_config *mc = lf_model_get_config(m);
    const int64_t V = mc->V, L = mc->L;
    const uint32_t all = LF_LORA_ALL_MODULES;
    const uint32_t subset = (1u << LF_MOD_Q) | (1u << LF_MOD_V) | (1u << LF_MOD_UP) | (1u << LF_MOD_DOWN);
    adapter ads[NAD];
    make_adapter(m, &ads[0], "lora r4", 4, 8.0, 0, 0, all);
    make_adapter(m, &ads[1], "rslora r8", 8, 16.0, 1, 0, subset);
    make_adapter(m, &ads[2], "dora r2", 2, 4.0, 0, 1, all);
    CHECK(lf_model_adapter_max_rank(ads[0].fwd) == 4 && lf_model_adapter_max_rank(ads[1].fwd) == 8 &&
              lf_model_adapter_max_rank(ads[2].fwd) == 2,
          "max ranks %lld %lld %lld", (long long)lf_model_adapter_max_rank(ads[0].fwd),
          (long long)lf_model_adapter_max_rank(ads[1].fwd), (long long)lf_model_adapter_max_rank(ads[2].fwd));
    CHECK(!lf_model_adapter_is_dora(ads[0].fwd) && !lf_model_adapter_is_dora(ads[1].fwd) &&
              lf_model_adapter_is_dora(ads[2].fwd),
          "is_dora flags");

    /* sequences and their references */
    seq *seqs = calloc((size_t)nseqs, sizeof *seqs);
    if (!seqs) return 1;
    int64_t max_len = 0;
    for (int64_t i = 0; i < nseqs; i++) {
        seq *s = &seqs[i];
        s->ad = (int)rnd(NAD + 1) - 1;
        s->P = 1 + rnd(max_prompt);
        s->G = 1 + rnd(max_gen);
        s->tok = malloc((size_t)(s->P + s->G) * sizeof *s->tok);
        s->gen = malloc((size_t)s->G * sizeof *s->gen);
        s->ref = malloc((size_t)((s->P + s->G) * V) * sizeof *s->ref);
        if (!s->tok || !s->gen || !s->ref) return 1;
        for (int64_t t = 0; t < s->P; t++) s->tok[t] = (int32_t)rnd(V);
        reference(m, ads, s);
        if (s->P + s->G > max_len) max_len = s->P + s->G;
    }
    /* sanity: every adapter moves the logits of the first sequence's prompt */
    {
        seq probe = seqs[0];
        float *base = malloc((size_t)(probe.P * V) * sizeof *base), *with = malloc((size_t)(probe.P * V) * sizeof *with);
        lf_session *ss = NULL;
        if (!base || !with) return 1;
        for (int a = -1; a < NAD; a++) {
            if (lf_model_set_lora(m, a >= 0 ? ads[a].views : NULL, &err)) die_err("set_lora", &err);
            if (lf_session_create(m, probe.P, probe.P, &ss, &err)) die_err("session", &err);
            if (lf_session_forward(ss, probe.tok, probe.P, a < 0 ? base : with, 0, &err)) die_err("forward", &err);
            lf_session_free(ss);
            if (a >= 0) {
                float r = rel_err(with, base, probe.P * V);
                CHECK(r > 1e-2f, "adapter %s changes the logits by only %.3g relative", ads[a].name, (double)r);
            }
        }
        free(base);
        free(with);
    }
    if (lf_model_set_lora(m, NULL, &err)) die_err("set_lora NULL", &err);

    /* pool and workspace */
    const int64_t Bm = (max_len + BS - 1) / BS + 1, Sm = MAX_RUN;
    lf_kv_pool *pool = NULL;
    const size_t block_bytes = (size_t)(2 * L * BS * mc->KH * mc->D) * sizeof(float);
    if (lf_kv_pool_create(be, L, mc->KH, mc->D, BS, block_bytes * (size_t)(MAX_RUN * Bm + 3), &pool, &err))
        die_err("kv pool", &err);
    void **kp = malloc((size_t)L * sizeof *kp), **vp = malloc((size_t)L * sizeof *vp);
    if (!kp || !vp) return 1;
    for (int64_t l = 0; l < L; l++) {
        kp[l] = lf_kv_pool_k(pool, l);
        vp[l] = lf_kv_pool_v(pool, l);
    }
    const lf_paged_kv kv = {kp, vp, BS, lf_kv_pool_blocks(pool), lf_kv_pool_dtype(pool)};
    lf_batch *b = NULL;
    if (lf_batch_create(m, Tm, Sm, 8, Bm, &b, &err)) die_err("lf_batch_create", &err);

    const int pass0 = passed, fail0 = failed;
    bad_inputs(dir, be, &opt, m, ads, b, Tm, Sm, Bm, pool, &kv);
    const int n_bad = passed + failed - pass0 - fail0;

    /* batched run */
    lf_batch_seg segs[MAX_RUN];
    seq *segseq[MAX_RUN];
    float *logits = malloc((size_t)(MAX_RUN * V) * sizeof *logits);
    int64_t running[MAX_RUN], n_running = 0, next = 0, finished = 0, steps = 0, rows_checked = 0, toks_checked = 0;
    int64_t ties = 0, grouped_steps = 0, mixed_steps = 0, multi_seg = 0;
    float worst = 0;
    int64_t worst_seq = -1, worst_pos = -1;
    if (!logits) return 1;
    for (int64_t i = 0; i < nseqs; i++)
        if (lf_kv_seq_init(&seqs[i].kv, pool, max_len, &err)) die_err("kv seq init", &err);
    while (finished < nseqs) {
        while (n_running < MAX_RUN && next < nseqs) running[n_running++] = next++;
        /* shuffle the running list, then give each a piece of work */
        for (int64_t i = n_running - 1; i > 0; i--) {
            int64_t j = rnd(i + 1), t = running[i];
            running[i] = running[j];
            running[j] = t;
        }
        int64_t nseg = 0, rows = 0;
        for (int64_t i = 0; i < n_running; i++) {
            seq *s = &seqs[running[i]];
            if (nseg > 0 && rnd(5) == 0) continue; /* sometimes left out of this step */
            int64_t n;
            if (s->done < s->P) {
                int64_t left = Tm - rows - (n_running - 1 - i); /* leave a row for each later sequence */
                if (left < 1) continue;
                int64_t cap = s->P - s->done < left ? s->P - s->done : left;
                n = 1 + rnd(cap);
            } else {
                n = 1;
            }
            if (rows + n > Tm) continue;
            if (lf_kv_seq_reserve(pool, &s->kv, s->done + n, &err)) die_err("kv reserve", &err);
            const int64_t last = s->done + n - 1;
            int want = last >= s->P - 1 || rnd(2) == 0;
            segs[nseg] = (lf_batch_seg){s->tok + s->done, n, s->done, lf_kv_seq_table(&s->kv),
                                        lf_kv_seq_n_blocks(&s->kv), s->ad >= 0 ? ads[s->ad].fwd : NULL, want};
            segseq[nseg++] = s;
            rows += n;
        }
        if (nseg > 1 && rnd(2) == 0) { /* group by adapter (stable insertion sort), as the engine does */
            for (int64_t i = 1; i < nseg; i++)
                for (int64_t j = i; j > 0 && segseq[j - 1]->ad > segseq[j]->ad; j--) {
                    lf_batch_seg t = segs[j];
                    segs[j] = segs[j - 1];
                    segs[j - 1] = t;
                    seq *u = segseq[j];
                    segseq[j] = segseq[j - 1];
                    segseq[j - 1] = u;
                }
            grouped_steps++;
        } else {
            mixed_steps++;
        }
        multi_seg += nseg > 1;
        if (lf_batch_forward(b, &kv, segs, nseg, logits, &err)) die_err("lf_batch_forward", &err);
        steps++;
        for (int64_t i = 0, w = 0; i < nseg; i++) {
            seq *s = segseq[i];
            const int64_t last = s->done + segs[i].n - 1;
            if (segs[i].want_logits) {
                const float *got = logits + w * V, *ref = s->ref + last * V;
                float r = rel_err(got, ref, V);
                if (r > worst) {
                    worst = r;
                    worst_seq = s - seqs;
                    worst_pos = last;
                }
                CHECK(r <= REL_TOL, "seq %lld (adapter %d, P %lld) pos %lld (step %lld, seg %lld of %lld, n %lld): "
                      "rel err %.3g", (long long)(s - seqs), s->ad, (long long)s->P, (long long)last, (long long)steps,
                      (long long)i, (long long)nseg, (long long)segs[i].n, (double)r);
                rows_checked++;
                if (last >= s->P - 1) {
                    const int64_t g = last - (s->P - 1);
                    const int64_t tok = argmax(got, V);
                    const int tie = top2_gap(ref, V) <= TIE_TOL * maxabs(ref, V);
                    CHECK(tok == s->gen[g] || tie, "seq %lld greedy token %lld: batch %lld, reference %d",
                          (long long)(s - seqs), (long long)g, (long long)tok, (int)s->gen[g]);
                    ties += tok != s->gen[g] && tie;
                    toks_checked++;
                    s->ngen++;
                }
                w++;
            }
            s->done += segs[i].n;
        }
        for (int64_t i = 0; i < n_running;) { /* finished: back to the pool */
            seq *s = &seqs[running[i]];
            if (s->done >= s->P && s->ngen >= s->G) {
                lf_kv_seq_free(pool, &s->kv);
                running[i] = running[--n_running];
                finished++;
            } else {
                i++;
            }
        }
    }
    printf("batch_tool: %lld steps (%lld with >1 segment; %lld grouped by adapter, %lld unsorted), %lld logit rows "
           "(worst rel err %.3g at seq %lld adapter %d pos %lld, tol %.0e), %lld greedy tokens (%lld near ties), %d "
           "bad-input checks\n", (long long)steps, (long long)multi_seg, (long long)grouped_steps, (long long)mixed_steps,
           (long long)rows_checked, (double)worst, (long long)worst_seq, worst_seq >= 0 ? seqs[worst_seq].ad : -2,
           (long long)worst_pos, (double)REL_TOL, (long long)toks_checked, (long long)ties, n_bad);

    lf_batch_free(b);
    free(kp);
    free(vp);
    free(logits);
    lf_kv_pool_free(pool);
    for (int64_t i = 0; i < nseqs; i++) {
        free(seqs[i].tok);
        free(seqs[i].gen);
        free(seqs[i].ref);
    }
    free(seqs);
    for (int a = 0; a < NAD; a++) {
        lf_model_adapter_free(ads[a].fwd);
        free(ads[a].views);
        lf_lora_free(ads[a].lora);
    }
    lf_model_free(m);
    lf_backend_free(be);
    printf("batch_tool: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
