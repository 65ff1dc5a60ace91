/* test_kvcache.c - the paged KV cache (serve/kvcache) and the CPU paged attention op (kernels/cpu/
 * attention_paged.c).
 *
 * Op: fast lf_cpu_attention_paged_forward (1 and 2 threads, SIMD on/off) vs its _ref vs the contiguous
 * lf_cpu_attention_forward_ref on the same K/V laid out contiguously; random block tables over shuffled block
 * ids with every unused slot/block set to NaN (a stray read shows), BS in {1, 16, 32}, MHA/GQA/MQA, window on
 * (blocks wholly before the window set to -1) and off, decode (T = 1), chunked prefill at an offset, random
 * positions; bad arguments.
 * Cache: pool sizing from the budget, reserve/EBUSY without side effects/release/no leak, write + read back
 * (lf_kv_read and the raw pool rows), prefix fork with copy-on-write, many sequences interleaving with
 * preemption (content checked against a hash of who wrote each position), a stats reader thread, and paged
 * attention over a fragmented pool filled through lf_kv_write vs contiguous attention.
 * Seed from LF_TEST_SEED or time, printed. */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/rng.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_paged.h"
#include "serve/kvcache.h"

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
static lf_backend *be1, *be2; /* CPU backends with 1 and 2 threads */

static int64_t rnd(int64_t n) { return (int64_t)(lf_rng_next(&rng) % (uint64_t)n); } /* [0, n) */
static float urand(float lo, float hi) { return lo + (hi - lo) * lf_rng_uniform(&rng); }

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "test_kvcache: out of memory (%zu bytes)\n", n);
        exit(2);
    }
    return p;
}

static void shuffle32(int32_t *a, int64_t n) {
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = rnd(i + 1);
        int32_t t = a[i];
        a[i] = a[j], a[j] = t;
    }
}

/* max over i of |got - ref| / (tol_abs + tol_rel |ref|); INFINITY on a NaN/inf in either. */
static double worst_ratio(const float *got, const float *ref, int64_t n, double tol_abs, double tol_rel,
                          double *max_err) {
    double worst = 0.0;
    *max_err = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) || !isfinite(ref[i])) return INFINITY;
        double e = fabs((double)got[i] - (double)ref[i]), tol = tol_abs + tol_rel * fabs((double)ref[i]);
        if (e > *max_err) *max_err = e;
        if (e / tol > worst) worst = e / tol;
    }
    return worst;
}

/* ==== paged attention op ==== */

typedef struct {
    int64_t T, S, H, KH, D, BS, window;
    const char *kind;
} pa_case;

/* q, contiguous k/v [S,KH,D] and pos are given; lays k/v out in a paged pool over shuffled ids and compares
 * the three implementations. */
static void run_paged_case(const pa_case *c, const float *q, const float *k, const float *v, const int32_t *pos) {
    const int64_t T = c->T, S = c->S, H = c->H, KH = c->KH, D = c->D, BS = c->BS, R = KH * D;
    const int64_t n_blocks = (S + BS - 1) / BS + rnd(3); /* extra trailing entries: never attended */
    const int64_t NB = n_blocks + 1 + rnd(4);           /* blocks the table does not name stay NaN */
    int32_t *ids = xmalloc((size_t)NB * 4), *bt = xmalloc((size_t)n_blocks * 4);
    for (int64_t i = 0; i < NB; i++) ids[i] = (int32_t)i;
    shuffle32(ids, NB);
    for (int64_t i = 0; i < n_blocks; i++) bt[i] = ids[i];
    float *kp = xmalloc((size_t)(NB * BS * R) * 4), *vp = xmalloc((size_t)(NB * BS * R) * 4);
    for (int64_t i = 0; i < NB * BS * R; i++) kp[i] = vp[i] = NAN;
    for (int64_t j = 0; j < S; j++) {
        int64_t row = (int64_t)bt[j / BS] * BS + j % BS;
        memcpy(kp + row * R, k + j * R, (size_t)R * 4);
        memcpy(vp + row * R, v + j * R, (size_t)R * 4);
    }
    /* a sliding window lets the engine drop blocks no query reaches: mark them -1 (the op must not read them) */
    int64_t dropped = 0;
    if (c->window > 0) {
        int64_t min_lo = S;
        for (int64_t t = 0; t < T; t++) {
            int64_t lo = pos[t] - c->window + 1 > 0 ? pos[t] - c->window + 1 : 0;
            if (lo < min_lo) min_lo = lo;
        }
        for (int64_t b = 0; (b + 1) * BS <= min_lo; b++) bt[b] = -1, dropped++;
    }
    for (int64_t b = (S + BS - 1) / BS; b < n_blocks; b++)
        if (rnd(2)) bt[b] = -1; /* trailing entries past every position: may be anything */

    const size_t nq = (size_t)(T * H * D);
    float *ref_c = xmalloc(nq * 4), *ref_p = xmalloc(nq * 4), *out = xmalloc(nq * 4);
    const float scale = 1.0f / sqrtf((float)D);
    lf_err err;
    lf_status s1 = lf_cpu_attention_forward_ref(ref_c, q, k, v, pos, T, S, H, KH, D, c->window, scale, &err);
    lf_status s2 = lf_cpu_attention_paged_forward_ref(ref_p, q, kp, vp, bt, n_blocks, BS, pos, T, H, KH, D, c->window,
                                                      scale, &err);
    double e0, r0 = worst_ratio(ref_p, ref_c, (int64_t)nq, 1e-6, 1e-6, &e0);
    /* both refs run the same double sums in the same order: only the final f32 rounding may differ */
    CHECK(s1 == LF_OK && s2 == LF_OK && r0 <= 1.0,
          "paged ref vs contiguous ref %s T=%lld S=%lld H=%lld KH=%lld D=%lld BS=%lld window=%lld: st %d/%d err %.3g "
          "(%s)",
          c->kind, (long long)T, (long long)S, (long long)H, (long long)KH, (long long)D, (long long)BS,
          (long long)c->window, s1, s2, e0, err.msg);
    /* Fast vs ref tolerance, as test_cpu_ops' attention: |q|,|k| <= qs so each f32 score is off by at most
     * ds = D 2^-24 scale D qs^2 and the softmax weights by 2 ds in l1; out is a convex combination of |v| <= 1
     * rows, so it moves by 2 ds; exp (2 ulp) and the f32 running sums over <= S keys add (S + 8) 2^-24. */
    const double qs = 3.0, ds = (double)D * 0x1p-24 * (double)scale * (double)D * qs * qs;
    const double tol = 2.0 * ds + (double)(S + 8) * 0x1p-24 + 1e-6;
    for (int cfg = 0; cfg < 4; cfg++) {
        lf_backend *be = (cfg & 1) ? be2 : be1;
        int simd = lf_cpu_set_simd(cfg >> 1);
        for (size_t i = 0; i < nq; i++) out[i] = NAN;
        lf_status st = lf_cpu_attention_paged_forward(be, out, q, kp, vp, bt, n_blocks, BS, pos, T, H, KH, D, c->window,
                                                      scale);
        double e, r = worst_ratio(out, ref_p, (int64_t)nq, tol, 0.0, &e);
        CHECK(st == LF_OK && r <= 1.0,
              "paged fast [%d thr, simd %d] vs ref %s T=%lld S=%lld H=%lld KH=%lld D=%lld BS=%lld window=%lld "
              "(dropped %lld blocks): st %d err %.3g tol %.3g (%s)",
              lf_backend_cpu_threads(be), simd, c->kind, (long long)T, (long long)S, (long long)H, (long long)KH,
              (long long)D, (long long)BS, (long long)c->window, (long long)dropped, st, e, tol, be->err.msg);
    }
    lf_cpu_set_simd(1);
    free(ids), free(bt), free(kp), free(vp), free(ref_c), free(ref_p), free(out);
}

static int n_op_cases;

static void test_paged_op(void) {
    const int64_t BSs[] = {1, 16, 32};
    const int64_t heads[][2] = {{4, 4}, {8, 2}, {6, 1}}; /* MHA, GQA, MQA */
    const int64_t Ds[] = {2, 6, 16, 64, 80, 128};
    for (int bi = 0; bi < 3; bi++)
        for (int hi = 0; hi < 3; hi++)
            for (int wi = 0; wi < 2; wi++)
                for (int mode = 0; mode < 3; mode++) {
                    pa_case c = {.H = heads[hi][0], .KH = heads[hi][1], .BS = BSs[bi], .D = Ds[rnd(6)]};
                    int64_t p0;
                    if (mode == 0) { /* decode: one query at the end */
                        c.T = 1, c.S = 1 + rnd(300), p0 = c.S - 1, c.kind = "decode";
                    } else if (mode == 1) { /* chunked prefill: T queries after p0 cached positions */
                        p0 = rnd(200), c.T = 2 + rnd(30), c.S = p0 + c.T, c.kind = "prefill-chunk";
                    } else { /* any positions in [0, S), unsorted, repeats allowed */
                        c.T = 1 + rnd(12), c.S = 1 + rnd(250), p0 = -1, c.kind = "random-pos";
                    }
                    c.window = wi ? 1 + rnd(c.S < 64 ? c.S : 64) : 0;
                    const int64_t R = c.KH * c.D;
                    float *q = xmalloc((size_t)(c.T * c.H * c.D) * 4), *k = xmalloc((size_t)(c.S * R) * 4),
                          *v = xmalloc((size_t)(c.S * R) * 4);
                    int32_t *pos = xmalloc((size_t)c.T * 4);
                    for (int64_t i = 0; i < c.T * c.H * c.D; i++) q[i] = urand(-3, 3);
                    for (int64_t i = 0; i < c.S * R; i++) k[i] = urand(-3, 3), v[i] = urand(-1, 1);
                    for (int64_t t = 0; t < c.T; t++) pos[t] = (int32_t)(p0 >= 0 ? p0 + t : rnd(c.S));
                    if (p0 < 0) pos[rnd(c.T)] = (int32_t)(c.S - 1);
                    run_paged_case(&c, q, k, v, pos);
                    n_op_cases++;
                    free(q), free(k), free(v), free(pos);
                }
    /* the largest head dim and a long span crossing many BS = 1 blocks */
    {
        pa_case c = {
            .T = 3, .S = 700, .H = 2, .KH = 1, .D = LF_CPU_MAX_HEAD_DIM, .BS = 1, .window = 0, .kind = "D=max"};
        float *q = xmalloc((size_t)(c.T * c.H * c.D) * 4), *k = xmalloc((size_t)(c.S * c.D) * 4),
              *v = xmalloc((size_t)(c.S * c.D) * 4);
        int32_t pos[3] = {697, 698, 699};
        for (int64_t i = 0; i < c.T * c.H * c.D; i++) q[i] = urand(-3, 3);
        for (int64_t i = 0; i < c.S * c.D; i++) k[i] = urand(-3, 3), v[i] = urand(-1, 1);
        run_paged_case(&c, q, k, v, pos);
        n_op_cases++;
        free(q), free(k), free(v);
    }
}

static void test_paged_op_errors(void) {
    /* T=2 H=2 D=8; pool NB=4 BS=2 KH=1 */
    float q[2 * 2 * 8] = {0}, out[2 * 2 * 8], kp[4 * 2 * 8] = {0}, vp[4 * 2 * 8] = {0};
    int32_t bt[3] = {2, 0, -1}, pos[2] = {0, 3};
    lf_backend *be = be1;
    const float sc = 0.5f;
    lf_status st;
    /* baseline: valid (positions 0..3 in blocks 0, 1 of BS = 2; block_table[2] = -1 never attended) */
    st = lf_cpu_attention_paged_forward(be, out, q, kp, vp, bt, 3, 2, pos, 2, 2, 1, 8, 0, sc);
    CHECK(st == LF_OK, "paged op valid baseline: %s", be->err.msg);
    int32_t bad_pos[2] = {0, 6};
    st = lf_cpu_attention_paged_forward(be, out, q, kp, vp, bt, 3, 2, bad_pos, 2, 2, 1, 8, 0, sc);
    CHECK(st == LF_EINVAL && strstr(be->err.msg, "pos[1]=6"), "pos >= n_blocks*BS -> EINVAL (%s)", be->err.msg);
    st = lf_cpu_attention_paged_forward(be, out, q, kp, vp, bt, 2, 2, bad_pos + 1, 1, 2, 1, 8, 0, sc);
    CHECK(st == LF_EINVAL, "pos beyond n_blocks=2 -> EINVAL (%s)", be->err.msg);
    bad_pos[1] = -1;
    st = lf_cpu_attention_paged_forward(be, out, q, kp, vp, bt, 3, 2, bad_pos, 2, 2, 1, 8, 0, sc);
    CHECK(st == LF_EINVAL, "negative pos -> EINVAL (%s)", be->err.msg);
    st = lf_cpu_attention_paged_forward(be, out, q, kp, vp, bt, 3, 2, pos, 2, 3, 2, 8, 0, sc);
    CHECK(st == LF_EINVAL && strstr(be->err.msg, "multiple"), "H %% KH != 0 -> EINVAL (%s)", be->err.msg);
    st = lf_cpu_attention_paged_forward(be, out, q, kp, vp, bt, 3, 2, pos, 2, 2, 1, 7, 0, sc);
    CHECK(st == LF_EINVAL && strstr(be->err.msg, "even"), "odd D -> EINVAL (%s)", be->err.msg);
    st = lf_cpu_attention_paged_forward(be, out, q, kp, vp, bt, 3, 2, pos, 2, 2, 1, LF_CPU_MAX_HEAD_DIM + 2, 0, sc);
    CHECK(st == LF_EINVAL, "D > max -> EINVAL (%s)", be->err.msg);
    st = lf_cpu_attention_paged_forward(be, out, q, kp, vp, bt, 3, 0, pos, 2, 2, 1, 8, 0, sc);
    CHECK(st == LF_EINVAL, "BS = 0 -> EINVAL (%s)", be->err.msg);
    st = lf_cpu_attention_paged_forward(be, out, q, kp, vp, bt, 0, 2, pos, 2, 2, 1, 8, 0, sc);
    CHECK(st == LF_EINVAL, "T > 0 with n_blocks = 0 -> EINVAL (%s)", be->err.msg);
    int32_t bt_neg[2] = {1, -1};
    st = lf_cpu_attention_paged_forward(be, out, q, kp, vp, bt_neg, 2, 2, pos, 2, 2, 1, 8, 0, sc);
    CHECK(st == LF_EINVAL && strstr(be->err.msg, "block_table[1]"), "attended block id -1 -> EINVAL (%s)",
          be->err.msg);
    lf_err err;
    st = lf_cpu_attention_paged_forward_ref(out, q, kp, vp, bt_neg, 2, 2, pos, 2, 2, 1, 8, 0, sc, &err);
    CHECK(st == LF_EINVAL, "ref: attended block id -1 -> EINVAL (%s)", err.msg);
    /* window 1 at position 3: only block 1 is attended, so block 0 = -1 is fine */
    int32_t bt_win[2] = {-1, 3}, pos_w[1] = {3};
    st = lf_cpu_attention_paged_forward(be, out, q, kp, vp, bt_win, 2, 2, pos_w, 1, 2, 1, 8, 1, sc);
    CHECK(st == LF_OK, "window: unattended block id -1 accepted (%s)", be->err.msg);
    st = lf_cpu_attention_paged_forward(be, out, q, kp, vp, bt_win, 2, 2, pos_w, 1, 2, 1, 8, 3, sc);
    CHECK(st == LF_EINVAL, "window 3 reaches block 0 = -1 -> EINVAL (%s)", be->err.msg);
    st = lf_cpu_attention_paged_forward(be, out, q, kp, vp, NULL, 0, 2, pos, 0, 2, 1, 8, 0, sc);
    CHECK(st == LF_OK, "T = 0 with an empty table is a no-op (%s)", be->err.msg);
}

/* ==== kv cache ==== */

/* The value of element i of position pos's K (kv = 0) or V (kv = 1) row in layer l, as written by uid. */
static float kv_val(uint64_t uid, int64_t l, int kv, int64_t pos, int64_t i) {
    uint64_t x = uid * 0x9E3779B97F4A7C15ull ^ ((uint64_t)l << 48) ^ ((uint64_t)kv << 47) ^ ((uint64_t)pos << 20) ^
                 (uint64_t)i;
    x ^= x >> 30, x *= 0xBF58476D1CE4E5B9ull, x ^= x >> 27, x *= 0x94D049BB133111EBull, x ^= x >> 31;
    return (float)((double)(x >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static void fill_rows(float *buf, uint64_t uid, int64_t l, int kv, int64_t pos0, int64_t T, int64_t R) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < R; i++) buf[t * R + i] = kv_val(uid, l, kv, pos0 + t, i);
}

static void test_pool_basics(void) {
    lf_err err;
    lf_kv_pool *pool = NULL;
    const int64_t L = 3, KH = 2, D = 8, BS = 4, blk = 2 * L * BS * KH * D * 4;
    lf_status st = lf_kv_pool_create(be1, L, KH, D, BS, (size_t)(10 * blk + blk - 1), &pool, &err);
    CHECK(st == LF_OK && pool && lf_kv_pool_blocks(pool) == 10 && lf_kv_pool_free_blocks(pool) == 10,
          "pool NB = budget / block bytes = 10 (%s)", err.msg);
    if (!pool) return;
    CHECK(lf_kv_pool_block_size(pool) == BS && lf_kv_pool_layers(pool) == L && lf_kv_pool_kv_heads(pool) == KH &&
              lf_kv_pool_head_dim(pool) == D,
          "pool dims");
    CHECK(((float *)lf_kv_pool_v(pool, 0)) - ((float *)lf_kv_pool_k(pool, 0)) == 10 * BS * KH * D &&
              ((float *)lf_kv_pool_k(pool, 1)) - ((float *)lf_kv_pool_k(pool, 0)) == 2 * 10 * BS * KH * D,
          "pool planes are [L, 2, NB, BS, KH, D]");
    lf_kv_pool *p2 = NULL;
    st = lf_kv_pool_create(be1, L, KH, D, BS, (size_t)(blk - 1), &p2, &err);
    CHECK(st == LF_EINVAL && !p2 && strstr(err.msg, "holds no block"), "budget below one block -> EINVAL (%s)",
          err.msg);
    st = lf_kv_pool_create(be1, 0, KH, D, BS, 1 << 20, &p2, &err);
    CHECK(st == LF_EINVAL && !p2, "L = 0 -> EINVAL (%s)", err.msg);
    st = lf_kv_pool_create(be1, L, KH, D, 0, 1 << 20, &p2, &err);
    CHECK(st == LF_EINVAL && !p2, "BS = 0 -> EINVAL (%s)", err.msg);

    lf_kv_seq a, b;
    st = lf_kv_seq_init(&a, pool, 0, &err);
    CHECK(st == LF_EINVAL, "seq max_tokens 0 -> EINVAL (%s)", err.msg);
    CHECK(lf_kv_seq_init(&a, pool, 30, &err) == LF_OK && lf_kv_seq_init(&b, pool, 1000, &err) == LF_OK, "seq init");
    CHECK(lf_kv_seq_blocks_needed(pool, &a, 9) == 3, "blocks needed for 9 tokens of BS 4 = 3");
    st = lf_kv_seq_reserve(pool, &a, 9, &err);
    CHECK(st == LF_OK && a.n_tokens == 9 && lf_kv_seq_n_blocks(&a) == 3 && lf_kv_pool_free_blocks(pool) == 7,
          "reserve 9 -> 3 blocks, 7 free (%s)", err.msg);
    st = lf_kv_seq_reserve(pool, &a, 5, &err);
    CHECK(st == LF_OK && a.n_tokens == 9 && a.n_blocks == 3, "reserve below n_tokens is a no-op");
    st = lf_kv_seq_reserve(pool, &a, 12, &err);
    CHECK(st == LF_OK && a.n_blocks == 3 && lf_kv_pool_free_blocks(pool) == 7, "reserve within the last block");
    st = lf_kv_seq_reserve(pool, &a, 31, &err);
    CHECK(st == LF_EINVAL && a.n_tokens == 12 && strstr(err.msg, "limit"), "reserve past max_tokens -> EINVAL (%s)",
          err.msg);
    int32_t blk_id;
    int64_t slot;
    CHECK(lf_kv_slot(&a, 6, &blk_id, &slot) == LF_OK && blk_id == lf_kv_seq_table(&a)[1] && slot == 2,
          "slot of position 6 = (table[1], 2)");
    CHECK(lf_kv_slot(&a, 12, &blk_id, &slot) == LF_EINVAL && lf_kv_slot(&a, -1, &blk_id, &slot) == LF_EINVAL,
          "slot outside [0, n_tokens) -> EINVAL");

    /* EBUSY: b wants 8 blocks, 7 are free; nothing changes */
    st = lf_kv_seq_reserve(pool, &b, 25, &err);
    CHECK(st == LF_OK && b.n_blocks == 7 && lf_kv_pool_free_blocks(pool) == 0, "b takes the remaining 7 blocks");
    int32_t snap[8];
    memcpy(snap, b.blocks, 7 * 4);
    lf_kv_stats s0, s1;
    lf_kv_pool_stats(pool, &s0);
    st = lf_kv_seq_reserve(pool, &b, 29, &err);
    lf_kv_pool_stats(pool, &s1);
    CHECK(st == LF_EBUSY && b.n_tokens == 25 && b.n_blocks == 7 && memcmp(snap, b.blocks, 7 * 4) == 0 &&
              lf_kv_pool_free_blocks(pool) == 0 && s1.used == s0.used && s1.reserve_fails == s0.reserve_fails + 1,
          "full pool -> EBUSY without side effects (%s)", err.msg);
    CHECK(s1.used == 10 && s1.free == 0 && s1.high_water == 10 && s1.blocks == 10 && s1.block_size == BS &&
              s1.bytes == (size_t)(10 * blk),
          "stats: used 10 free 0 high-water 10 bytes %zu", s1.bytes);
    int distinct = 1; /* every block held exactly once */
    for (int32_t i = 0; i < 10; i++) distinct &= lf_kv_pool_refcount(pool, i) == 1;
    CHECK(distinct, "each block held by exactly one sequence");
    lf_kv_seq_release(pool, &a);
    CHECK(a.n_tokens == 0 && a.n_blocks == 0 && lf_kv_pool_free_blocks(pool) == 3, "release a -> 3 free");
    st = lf_kv_seq_reserve(pool, &b, 29, &err);
    CHECK(st == LF_OK && b.n_blocks == 8 && lf_kv_pool_free_blocks(pool) == 2, "b grows after a's release (%s)",
          err.msg);
    lf_kv_seq_free(pool, &b);
    lf_kv_seq_free(pool, &a);
    lf_kv_seq_free(pool, NULL);
    lf_kv_pool_stats(pool, &s1);
    CHECK(lf_kv_pool_free_blocks(pool) == 10 && s1.used == 0 && s1.high_water == 10, "all blocks back, no leak");
    lf_kv_pool_free(pool);
    lf_kv_pool_free(NULL);
}

static void test_write_read_fork(void) {
    lf_err err;
    lf_kv_pool *pool = NULL;
    const int64_t L = 2, KH = 2, D = 6, BS = 16, R = KH * D, NB = 12;
    lf_status st = lf_kv_pool_create(be1, L, KH, D, BS, (size_t)(NB * 2 * L * BS * R * 4), &pool, &err);
    CHECK(st == LF_OK, "pool for write/read (%s)", err.msg);
    if (st != LF_OK) return;
    lf_kv_seq a, b;
    lf_kv_seq_init(&a, pool, 200, &err);
    lf_kv_seq_init(&b, pool, 200, &err);
    /* interleave a and b so their blocks alternate in the pool */
    float *kb = xmalloc((size_t)(200 * R) * 4), *vb = xmalloc((size_t)(200 * R) * 4);
    float *kr = xmalloc((size_t)(200 * R) * 4), *vr = xmalloc((size_t)(200 * R) * 4);
    int ok = 1;
    int64_t written = 0;
    const int64_t chunks[] = {5, 11, 1, 16, 20, 3}; /* crossing block boundaries at odd offsets */
    for (int ci = 0; ci < 6; ci++) {
        int64_t T = chunks[ci];
        ok &= lf_kv_seq_reserve(pool, &a, written + T, &err) == LF_OK;
        ok &= lf_kv_seq_reserve(pool, &b, written + T, &err) == LF_OK;
        for (int64_t l = 0; l < L; l++) {
            fill_rows(kb, 1, l, 0, written, T, R), fill_rows(vb, 1, l, 1, written, T, R);
            ok &= lf_kv_write(pool, &a, l, written, T, kb, vb, &err) == LF_OK;
            fill_rows(kb, 2, l, 0, written, T, R), fill_rows(vb, 2, l, 1, written, T, R);
            ok &= lf_kv_write(pool, &b, l, written, T, kb, vb, &err) == LF_OK;
        }
        written += T;
    }
    CHECK(ok && a.n_tokens == 56 && a.n_blocks == 4 && b.n_blocks == 4, "interleaved writes of 56 positions (%s)",
          err.msg);
    /* read back: lf_kv_read and the raw pool rows through lf_kv_slot */
    int64_t bad = 0;
    for (int64_t l = 0; l < L; l++) {
        fill_rows(kb, 1, l, 0, 0, written, R), fill_rows(vb, 1, l, 1, 0, written, R);
        st = lf_kv_read(pool, &a, l, 0, written, kr, vr, &err);
        bad += st != LF_OK || memcmp(kb, kr, (size_t)(written * R) * 4) || memcmp(vb, vr, (size_t)(written * R) * 4);
        for (int64_t p = 0; p < written; p++) {
            int32_t blk;
            int64_t s;
            lf_kv_slot(&a, p, &blk, &s);
            const float *kp = ((float *)lf_kv_pool_k(pool, l)) + ((int64_t)blk * BS + s) * R;
            const float *vp = ((float *)lf_kv_pool_v(pool, l)) + ((int64_t)blk * BS + s) * R;
            bad += memcmp(kp, kb + p * R, (size_t)R * 4) != 0 || memcmp(vp, vb + p * R, (size_t)R * 4) != 0;
        }
        st = lf_kv_read(pool, &b, l, 7, 30, kr, NULL, &err); /* an inner range, K only */
        fill_rows(kb, 2, l, 0, 7, 30, R);
        bad += st != LF_OK || memcmp(kb, kr, (size_t)(30 * R) * 4);
    }
    CHECK(bad == 0, "write + read back (lf_kv_read and raw pool rows): %lld mismatches", (long long)bad);
    st = lf_kv_write(pool, &a, 0, 50, 7, kb, vb, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "outside"), "write past n_tokens -> EINVAL (%s)", err.msg);
    st = lf_kv_write(pool, &a, L, 0, 1, kb, vb, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "layer"), "write to layer L -> EINVAL (%s)", err.msg);
    st = lf_kv_write(pool, &a, 0, 0, 1, kb, NULL, &err);
    CHECK(st == LF_EINVAL, "write with NULL v -> EINVAL (%s)", err.msg);
    st = lf_kv_read(pool, &a, 0, -1, 2, kr, vr, &err);
    CHECK(st == LF_EINVAL, "read at pos -1 -> EINVAL (%s)", err.msg);

    /* fork: c shares a's first 40 positions (blocks 0..2, the third partly: 40 = 2*16 + 8) */
    lf_kv_seq c;
    lf_kv_seq_init(&c, pool, 200, &err);
    int64_t free0 = lf_kv_pool_free_blocks(pool);
    st = lf_kv_seq_fork(pool, &c, &a, 40, &err);
    CHECK(st == LF_OK && c.n_tokens == 40 && c.n_blocks == 3 && lf_kv_pool_free_blocks(pool) == free0 &&
              lf_kv_pool_refcount(pool, a.blocks[2]) == 2 && lf_kv_pool_refcount(pool, a.blocks[3]) == 1 &&
              memcmp(c.blocks, a.blocks, 3 * 4) == 0,
          "fork shares 3 blocks without copying (%s)", err.msg);
    st = lf_kv_seq_fork(pool, &c, &a, 10, &err);
    CHECK(st == LF_EINVAL, "fork into a non-empty sequence -> EINVAL (%s)", err.msg);
    st = lf_kv_write(pool, &c, 0, 39, 1, kb, vb, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "shared"), "write into a shared block -> EINVAL (%s)", err.msg);
    CHECK(lf_kv_seq_blocks_needed(pool, &c, 41) == 1 && lf_kv_seq_blocks_needed(pool, &c, 49) == 2,
          "blocks needed counts the copy of the shared partial block");
    lf_kv_stats s0, s1;
    lf_kv_pool_stats(pool, &s0);
    int32_t shared_old = c.blocks[2];
    st = lf_kv_seq_reserve(pool, &c, 50, &err);
    lf_kv_pool_stats(pool, &s1);
    CHECK(st == LF_OK && c.n_blocks == 4 && c.blocks[2] != shared_old && c.blocks[1] == a.blocks[1] &&
              lf_kv_pool_refcount(pool, shared_old) == 1 && lf_kv_pool_refcount(pool, c.blocks[2]) == 1 &&
              lf_kv_pool_refcount(pool, a.blocks[0]) == 2 && s1.cow_copies == s0.cow_copies + 1 &&
              lf_kv_pool_free_blocks(pool) == free0 - 2,
          "reserve copies the shared partial block (copy-on-write) (%s)", err.msg);
    for (int64_t l = 0; l < L; l++) { /* c overwrites 40..49 with its own rows */
        fill_rows(kb, 3, l, 0, 40, 10, R), fill_rows(vb, 3, l, 1, 40, 10, R);
        st = lf_kv_write(pool, &c, l, 40, 10, kb, vb, &err);
        CHECK(st == LF_OK, "write c's new positions (%s)", err.msg);
    }
    bad = 0;
    for (int64_t l = 0; l < L; l++) {
        /* c = a's rows on [0, 40), its own on [40, 50); a unchanged on [0, 56) */
        lf_kv_read(pool, &c, l, 0, 50, kr, vr, &err);
        fill_rows(kb, 1, l, 0, 0, 40, R), fill_rows(vb, 1, l, 1, 0, 40, R);
        bad += memcmp(kb, kr, (size_t)(40 * R) * 4) != 0 || memcmp(vb, vr, (size_t)(40 * R) * 4) != 0;
        fill_rows(kb, 3, l, 0, 40, 10, R), fill_rows(vb, 3, l, 1, 40, 10, R);
        bad += memcmp(kb, kr + 40 * R, (size_t)(10 * R) * 4) != 0 || memcmp(vb, vr + 40 * R, (size_t)(10 * R) * 4);
        lf_kv_read(pool, &a, l, 0, 56, kr, vr, &err);
        fill_rows(kb, 1, l, 0, 0, 56, R), fill_rows(vb, 1, l, 1, 0, 56, R);
        bad += memcmp(kb, kr, (size_t)(56 * R) * 4) != 0 || memcmp(vb, vr, (size_t)(56 * R) * 4) != 0;
    }
    CHECK(bad == 0, "after copy-on-write: fork sees the shared prefix + its own rows, source unchanged (%lld)",
          (long long)bad);
    lf_kv_seq_release(pool, &a); /* shared blocks 0, 1 stay with c */
    CHECK(lf_kv_pool_refcount(pool, c.blocks[0]) == 1 && lf_kv_pool_refcount(pool, c.blocks[1]) == 1,
          "release of the source leaves the shared blocks to the fork");
    lf_kv_read(pool, &c, 1, 0, 32, kr, vr, &err);
    fill_rows(kb, 1, 1, 0, 0, 32, R);
    CHECK(memcmp(kb, kr, (size_t)(32 * R) * 4) == 0, "fork's prefix intact after the source's release");
    lf_kv_seq_free(pool, &a);
    lf_kv_seq_free(pool, &b);
    lf_kv_seq_free(pool, &c);
    int zero = 1;
    for (int32_t i = 0; i < NB; i++) zero &= lf_kv_pool_refcount(pool, i) == 0;
    CHECK(lf_kv_pool_free_blocks(pool) == NB && zero, "fork/CoW: every block back on the free list");
    free(kb), free(vb), free(kr), free(vr);
    lf_kv_pool_free(pool);
}

/* ---- many sequences interleaving, with a stats reader on another thread ---- */

typedef struct {
    lf_kv_seq seq;
    uint64_t *owner; /* [max_tokens]: uid whose rows position p holds */
    int64_t written; /* positions written so far (n_tokens may be ahead after a failed step) */
    uint64_t uid;
    int active;
} sim_seq;

typedef struct {
    const lf_kv_pool *pool;
    atomic_int stop;
    atomic_long reads;
    long bad;
} stats_reader;

static void *reader_main(void *arg) {
    stats_reader *r = arg;
    while (!atomic_load(&r->stop)) {
        lf_kv_stats s;
        lf_kv_pool_stats(r->pool, &s);
        /* used is loaded before high_water, which never decreases: used <= high_water holds */
        if (s.used < 0 || s.used > s.blocks || s.used + s.free != s.blocks || s.used > s.high_water) r->bad++;
        atomic_fetch_add(&r->reads, 1);
    }
    return NULL;
}

static int64_t verify_seq(lf_kv_pool *pool, sim_seq *s, float *kr, float *vr, int64_t L, int64_t R) {
    int64_t bad = 0, n = s->written;
    if (n == 0) return 0;
    lf_err err;
    for (int64_t l = 0; l < L; l++) {
        if (lf_kv_read(pool, &s->seq, l, 0, n, kr, vr, &err) != LF_OK) return 1;
        for (int64_t p = 0; p < n; p++)
            for (int64_t i = 0; i < R; i++)
                bad += kr[p * R + i] != kv_val(s->owner[p], l, 0, p, i) ||
                       vr[p * R + i] != kv_val(s->owner[p], l, 1, p, i);
    }
    return bad;
}

static void test_interleave(void) {
    lf_err err;
    lf_kv_pool *pool = NULL;
    const int64_t L = 2, KH = 1, D = 4, R = KH * D, BS = 1 + rnd(16), NB = 40, NS = 12, MAXT = 160;
    lf_status st = lf_kv_pool_create(be1, L, KH, D, BS, (size_t)(NB * 2 * L * BS * R * 4), &pool, &err);
    CHECK(st == LF_OK, "pool for interleaving (%s)", err.msg);
    if (st != LF_OK) return;
    sim_seq ss[12];
    uint64_t next_uid = 100;
    for (int i = 0; i < NS; i++) {
        lf_kv_seq_init(&ss[i].seq, pool, MAXT, &err);
        ss[i].owner = xmalloc((size_t)MAXT * sizeof(uint64_t));
        ss[i].written = 0, ss[i].uid = next_uid++, ss[i].active = 1;
    }
    stats_reader rd = {.pool = pool, .bad = 0};
    atomic_init(&rd.stop, 0);
    atomic_init(&rd.reads, 0);
    pthread_t th;
    int have_thread = pthread_create(&th, NULL, reader_main, &rd) == 0;
    while (have_thread && atomic_load(&rd.reads) == 0) sched_yield(); /* the reader runs during the simulation */
    float *kb = xmalloc((size_t)(MAXT * R) * 4), *vb = xmalloc((size_t)(MAXT * R) * 4);
    float *kr = xmalloc((size_t)(MAXT * R) * 4), *vr = xmalloc((size_t)(MAXT * R) * 4);
    int64_t n_steps = 3000, n_busy = 0, n_preempt = 0, n_fork = 0, n_finish = 0, bad_busy = 0, bad_write = 0,
            bad_inv = 0, bad_data = 0, bad_need = 0;
    for (int64_t step = 0; step < n_steps; step++) {
        sim_seq *s = &ss[rnd(NS)];
        int64_t op = rnd(20), T = rnd(4) == 0 ? 1 + rnd(24) : 1;
        if ((op == 0 && s->written > 0) || s->written + T > MAXT) { /* finish: release, becomes a new request */
            lf_kv_seq_release(pool, &s->seq);
            s->written = 0, s->uid = next_uid++;
            n_finish++;
        } else if (op == 1 && s->written == 0) { /* fork from another sequence's written prefix */
            sim_seq *src = &ss[rnd(NS)];
            if (src != s && src->written > 0) {
                int64_t n = 1 + rnd(src->written);
                if (lf_kv_seq_fork(pool, &s->seq, &src->seq, n, &err) == LF_OK) {
                    memcpy(s->owner, src->owner, (size_t)n * sizeof(uint64_t));
                    s->written = n;
                    n_fork++;
                } else {
                    bad_write++;
                }
            }
        } else { /* step: T new tokens (a prefill chunk or one decode token) */
            int64_t need = lf_kv_seq_blocks_needed(pool, &s->seq, s->written + T);
            const int64_t nt0 = s->seq.n_tokens, nb0 = s->seq.n_blocks, free_before = lf_kv_pool_free_blocks(pool);
            int32_t snap[160];
            if (nb0) memcpy(snap, s->seq.blocks, (size_t)nb0 * 4);
            st = lf_kv_seq_reserve(pool, &s->seq, s->written + T, &err);
            if (st == LF_EBUSY) {
                n_busy++;
                bad_busy += need <= free_before || s->seq.n_tokens != nt0 || s->seq.n_blocks != nb0 ||
                            lf_kv_pool_free_blocks(pool) != free_before ||
                            (nb0 && memcmp(snap, s->seq.blocks, (size_t)nb0 * 4) != 0);
                /* preempt the largest other sequence, as a scheduler would */
                sim_seq *victim = NULL;
                for (int i = 0; i < NS; i++)
                    if (&ss[i] != s && (!victim || ss[i].seq.n_blocks > victim->seq.n_blocks)) victim = &ss[i];
                if (victim && victim->seq.n_blocks > 0) {
                    lf_kv_seq_release(pool, &victim->seq);
                    victim->written = 0, victim->uid = next_uid++;
                    n_preempt++;
                }
            } else if (st != LF_OK) {
                bad_write++;
            } else {
                bad_need += free_before - lf_kv_pool_free_blocks(pool) != need;
                for (int64_t l = 0; l < L; l++) {
                    fill_rows(kb, s->uid, l, 0, s->written, T, R), fill_rows(vb, s->uid, l, 1, s->written, T, R);
                    bad_write += lf_kv_write(pool, &s->seq, l, s->written, T, kb, vb, &err) != LF_OK;
                }
                for (int64_t t = 0; t < T; t++) s->owner[s->written + t] = s->uid;
                s->written += T;
            }
        }
        if (step % 100 == 99 || step == n_steps - 1) { /* invariants: refcounts = holders; data intact */
            int32_t holders[64] = {0};
            int64_t held = 0;
            for (int i = 0; i < NS; i++)
                for (int64_t b = 0; b < ss[i].seq.n_blocks; b++) holders[ss[i].seq.blocks[b]]++;
            for (int32_t b = 0; b < NB; b++) {
                bad_inv += holders[b] != lf_kv_pool_refcount(pool, b);
                held += holders[b] > 0;
            }
            lf_kv_stats sst;
            lf_kv_pool_stats(pool, &sst);
            bad_inv += held != NB - lf_kv_pool_free_blocks(pool) || sst.used != held || sst.high_water < held;
            for (int i = 0; i < NS; i++) {
                bad_inv += ss[i].seq.n_tokens != ss[i].written ||
                           ss[i].seq.n_blocks != (ss[i].written + BS - 1) / BS;
                bad_data += verify_seq(pool, &ss[i], kr, vr, L, R);
            }
        }
    }
    if (have_thread) {
        atomic_store(&rd.stop, 1);
        pthread_join(th, NULL);
    }
    const long n_reads = atomic_load(&rd.reads);
    lf_kv_stats fin;
    lf_kv_pool_stats(pool, &fin);
    printf("interleave: BS=%lld NB=%lld %lld steps, %lld EBUSY, %lld preemptions, %lld forks, %lld finished, stats "
           "reader %ld reads, %lld copy-on-write\n",
           (long long)BS, (long long)NB, (long long)n_steps, (long long)n_busy, (long long)n_preempt,
           (long long)n_fork, (long long)n_finish, n_reads, (long long)fin.cow_copies);
    CHECK(bad_busy == 0, "EBUSY only when short of blocks, and without side effects (%lld bad)", (long long)bad_busy);
    CHECK(bad_need == 0, "reserve takes exactly lf_kv_seq_blocks_needed blocks (%lld bad)", (long long)bad_need);
    CHECK(bad_write == 0, "every reserve/write/fork of the simulation succeeded (%lld bad)", (long long)bad_write);
    CHECK(bad_inv == 0, "refcounts = holders, counters consistent (%lld bad)", (long long)bad_inv);
    CHECK(bad_data == 0, "every sequence reads back what was written for it (%lld bad values)", (long long)bad_data);
    CHECK(n_busy > 0 && n_preempt > 0, "the simulation hit a full pool (%lld EBUSY) and preempted", (long long)n_busy);
    CHECK(!have_thread || (rd.bad == 0 && n_reads > 0), "stats reader thread: %ld inconsistent of %ld", rd.bad,
          n_reads);

    for (int i = 0; i < NS; i++) {
        lf_kv_seq_free(pool, &ss[i].seq);
        free(ss[i].owner);
    }
    lf_kv_stats sst;
    lf_kv_pool_stats(pool, &sst);
    CHECK(lf_kv_pool_free_blocks(pool) == NB && sst.used == 0 && sst.high_water == NB,
          "interleave: free count back to NB=%lld (free %lld, high-water %lld)", (long long)NB,
          (long long)lf_kv_pool_free_blocks(pool), (long long)sst.high_water);
    free(kb), free(vb), free(kr), free(vr);
    lf_kv_pool_free(pool);
}

/* Paged attention over a fragmented pool filled through lf_kv_write (uneven chunks, as prefill then decode)
 * vs contiguous attention on the same rows, every layer, GQA, window on and off. */
static void test_attention_over_cache(void) {
    const int64_t BSs[] = {1, 7, 16};
    const int64_t L = 2, H = 4, KH = 2, D = 8, R = KH * D, S = 90, T = 7;
    for (int bi = 0; bi < 3; bi++) {
        const int64_t BS = BSs[bi], NB = (S + BS - 1) / BS + (50 + BS - 1) / BS + 2;
        lf_err err;
        lf_kv_pool *pool = NULL;
        lf_status st = lf_kv_pool_create(be2, L, KH, D, BS, (size_t)(NB * 2 * L * BS * R * 4), &pool, &err);
        CHECK(st == LF_OK, "pool BS=%lld (%s)", (long long)BS, err.msg);
        if (st != LF_OK) continue;
        lf_kv_seq s, other;
        lf_kv_seq_init(&s, pool, S, &err);
        lf_kv_seq_init(&other, pool, 100, &err);
        int ok = 1;
        for (int64_t p = 0; p < S; p += 10) { /* interleave with another sequence, then drop it: fragmentation */
            ok &= lf_kv_seq_reserve(pool, &s, p + 10, &err) == LF_OK;
            ok &= lf_kv_seq_reserve(pool, &other, p / 2 + 5, &err) == LF_OK;
        }
        lf_kv_seq_release(pool, &other);
        float *kc = xmalloc((size_t)(L * S * R) * 4), *vc = xmalloc((size_t)(L * S * R) * 4);
        for (int64_t i = 0; i < L * S * R; i++) kc[i] = urand(-3, 3), vc[i] = urand(-1, 1);
        for (int64_t p = 0; p < S;) {
            int64_t n = p == 0 ? 37 : 1 + rnd(9);
            if (p + n > S) n = S - p;
            for (int64_t l = 0; l < L; l++)
                ok &= lf_kv_write(pool, &s, l, p, n, kc + (l * S + p) * R, vc + (l * S + p) * R, &err) == LF_OK;
            p += n;
        }
        float *q = xmalloc((size_t)(T * H * D) * 4), *ref = xmalloc((size_t)(T * H * D) * 4),
              *out = xmalloc((size_t)(T * H * D) * 4);
        int32_t pos[7];
        for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)(S - T + t);
        const float scale = 1.0f / sqrtf((float)D);
        /* tolerance as in run_paged_case (qs = 3) */
        const double ds = (double)D * 0x1p-24 * (double)scale * (double)D * 9.0;
        const double tol = 2.0 * ds + (double)(S + 8) * 0x1p-24 + 1e-6;
        for (int64_t l = 0; l < L; l++)
            for (int w = 0; w < 2; w++) {
                const int64_t window = w ? 20 : 0;
                for (int64_t i = 0; i < T * H * D; i++) q[i] = urand(-3, 3);
                lf_status s1 = lf_cpu_attention_forward_ref(ref, q, kc + l * S * R, vc + l * S * R, pos, T, S, H, KH,
                                                            D, window, scale, &err);
                st = lf_cpu_attention_paged_forward(be2, out, q, ((float *)lf_kv_pool_k(pool, l)), ((float *)lf_kv_pool_v(pool, l)),
                                                    lf_kv_seq_table(&s), lf_kv_seq_n_blocks(&s), BS, pos, T, H, KH, D,
                                                    window, scale);
                double e, r = worst_ratio(out, ref, T * H * D, tol, 0.0, &e);
                CHECK(ok && s1 == LF_OK && st == LF_OK && r <= 1.0,
                      "paged attention over the cache (BS=%lld layer %lld window %lld, lf_kv_write) vs contiguous: "
                      "err %.3g tol %.3g (%s %s)",
                      (long long)BS, (long long)l, (long long)window, e, tol, err.msg, be2->err.msg);
            }
        free(kc), free(vc), free(q), free(ref), free(out);
        lf_kv_seq_free(pool, &s);
        lf_kv_seq_free(pool, &other);
        CHECK(lf_kv_pool_free_blocks(pool) == NB, "BS=%lld: free count back to NB", (long long)BS);
        lf_kv_pool_free(pool);
    }
}

int main(void) {
    const char *env = getenv("LF_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 0) : ((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20));
    lf_rng_seed(&rng, seed);
    int simd_hw = lf_cpu_set_simd(1);
    printf("test_kvcache: seed %llu (set LF_TEST_SEED to repeat); AVX2/FMA/F16C %s\n", (unsigned long long)seed,
           simd_hw ? "available" : "NOT available: the simd-on runs take the portable path");
    be1 = lf_backend_cpu_create(1);
    be2 = lf_backend_cpu_create(2);
    if (!be1 || !be2) {
        printf("FAIL lf_backend_cpu_create\n0 passed, 1 failed\n");
        return 1;
    }
    test_paged_op();
    printf("paged attention: %d cases x (paged ref vs contiguous ref + 4 fast configurations)\n", n_op_cases);
    test_paged_op_errors();
    test_pool_basics();
    test_write_read_fork();
    test_interleave();
    test_attention_over_cache();
    lf_backend_free(be1);
    lf_backend_free(be2);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
