/* kvcache.c - paged KV cache: the block pool (one backend allocation, a free-list stack of block ids,
 * refcounts, atomic counters) and per-sequence block tables. See kvcache.h for the layout and invariants.
 *
 * Pool memory: [L, 2, NB, BS, KH, D] f32, i.e. layer l's K at base + (2l) * NB*BS*KH*D, V right after.
 * The free list is a stack (pop on alloc, push on free): O(1) both ways; initially block 0 is on top. */
#include "serve/kvcache.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct lf_kv_pool {
    lf_backend *be; /* borrowed */
    int64_t L, KH, D, BS, NB;
    lf_dtype dt;      /* element type of K and V (F32, BF16, F16) */
    int64_t esz;      /* bytes per element */
    int64_t row;      /* elements per slot: KH * D */
    int64_t plane;    /* elements per layer's K (or V): NB * BS * KH * D */
    char *base;       /* owned, backend memory [L, 2, NB, BS, KH, D] */
    size_t bytes;     /* of base */
    int32_t *free_ids; /* owned host [NB]: the free stack, first n_free valid */
    int64_t n_free;
    int32_t *ref; /* owned host [NB]: holders of each block, 0 = on the free list */
    /* counters readable from other threads */
    atomic_llong used, high_water, reserve_fails, cow_copies;
};

/* ---------------------------------------------------------------------------------------------------- */
/* pool                                                                                                  */

lf_status lf_kv_pool_create(lf_backend *be, int64_t L, int64_t KH, int64_t D, int64_t BS, size_t budget_bytes,
                            lf_kv_pool **out, lf_err *err) {
    return lf_kv_pool_create_dt(be, LF_DTYPE_F32, L, KH, D, BS, budget_bytes, out, err);
}

lf_status lf_kv_pool_create_dt(lf_backend *be, lf_dtype dt, int64_t L, int64_t KH, int64_t D, int64_t BS,
                               size_t budget_bytes, lf_kv_pool **out, lf_err *err) {
    lf_status st = LF_OK;
    *out = NULL;
    lf_kv_pool *p = NULL;
    if (!lf_act_dtype_ok(dt))
        return lf_err_set(err, LF_EINVAL, "kv pool: dtype %s is not a KV cache dtype (F32, BF16, F16)", lf_dtype_name(dt));
    const int64_t esz = lf_dtype_bits(dt) / 8;
    if (!be || L < 1 || KH < 1 || D < 1 || BS < 1)
        return lf_err_set(err, LF_EINVAL, "kv pool: bad size L=%lld KH=%lld D=%lld BS=%lld%s", (long long)L,
                          (long long)KH, (long long)D, (long long)BS, be ? "" : " (no backend)");
    /* bytes per block over all layers, K and V; the sizes are model dims, far from overflowing int64 */
    const double block_bytes_d = 2.0 * (double)L * (double)BS * (double)KH * (double)D * (double)esz;
    if (block_bytes_d > 9.0e18)
        return lf_err_set(err, LF_EINVAL, "kv pool: block of %.3g bytes is too large", block_bytes_d);
    const uint64_t block_bytes = (uint64_t)(2 * L * BS * KH * D * esz);
    uint64_t nb = (uint64_t)budget_bytes / block_bytes;
    if (nb > INT32_MAX) nb = INT32_MAX;
    if (nb < 1)
        return lf_err_set(err, LF_EINVAL,
                          "kv pool: budget of %zu bytes holds no block (one block = 2*L*BS*KH*D*%lld = %llu bytes with "
                          "L=%lld BS=%lld KH=%lld D=%lld, %s)",
                          budget_bytes, (long long)esz, (unsigned long long)block_bytes, (long long)L, (long long)BS,
                          (long long)KH, (long long)D, lf_dtype_name(dt));
    p = calloc(1, sizeof *p);
    LF_CHECK_ALLOC(p, err);
    p->be = be;
    p->L = L, p->KH = KH, p->D = D, p->BS = BS, p->NB = (int64_t)nb;
    p->dt = dt;
    p->esz = esz;
    p->row = KH * D;
    p->plane = p->NB * BS * p->row;
    p->bytes = (size_t)(nb * block_bytes);
    p->free_ids = malloc((size_t)p->NB * sizeof *p->free_ids);
    LF_CHECK_ALLOC(p->free_ids, err);
    p->ref = calloc((size_t)p->NB, sizeof *p->ref);
    LF_CHECK_ALLOC(p->ref, err);
    p->base = be->ops->alloc(be, p->bytes);
    if (!p->base) {
        st = lf_err_set(err, LF_ENOMEM, "kv pool: cannot allocate %.1f MiB for %lld blocks of %lld tokens on %s: %s",
                        (double)p->bytes / (1 << 20), (long long)p->NB, (long long)BS, be->name ? be->name : "backend",
                        be->err.msg);
        goto fail;
    }
    for (int64_t i = 0; i < p->NB; i++) p->free_ids[i] = (int32_t)(p->NB - 1 - i); /* block 0 on top */
    p->n_free = p->NB;
    atomic_init(&p->used, 0);
    atomic_init(&p->high_water, 0);
    atomic_init(&p->reserve_fails, 0);
    atomic_init(&p->cow_copies, 0);
    *out = p;
    return LF_OK;
fail:
    lf_kv_pool_free(p);
    return st ? st : LF_ENOMEM;
}

void lf_kv_pool_free(lf_kv_pool *pool) {
    if (!pool) return;
    if (pool->base) pool->be->ops->free(pool->be, pool->base);
    free(pool->free_ids);
    free(pool->ref);
    free(pool);
}

int64_t lf_kv_pool_blocks(const lf_kv_pool *pool) { return pool->NB; }
int64_t lf_kv_pool_block_size(const lf_kv_pool *pool) { return pool->BS; }
int64_t lf_kv_pool_layers(const lf_kv_pool *pool) { return pool->L; }
int64_t lf_kv_pool_kv_heads(const lf_kv_pool *pool) { return pool->KH; }
int64_t lf_kv_pool_head_dim(const lf_kv_pool *pool) { return pool->D; }
int64_t lf_kv_pool_free_blocks(const lf_kv_pool *pool) { return pool->n_free; }

lf_dtype lf_kv_pool_dtype(const lf_kv_pool *pool) { return pool->dt; }

void *lf_kv_pool_k(lf_kv_pool *pool, int64_t l) {
    LF_ASSERT(l >= 0 && l < pool->L);
    return pool->base + (size_t)((2 * l) * pool->plane * pool->esz);
}

void *lf_kv_pool_v(lf_kv_pool *pool, int64_t l) {
    LF_ASSERT(l >= 0 && l < pool->L);
    return pool->base + (size_t)((2 * l + 1) * pool->plane * pool->esz);
}

int32_t lf_kv_pool_refcount(const lf_kv_pool *pool, int32_t b) {
    LF_ASSERT(b >= 0 && b < pool->NB);
    return pool->ref[b];
}

void lf_kv_pool_stats(const lf_kv_pool *pool, lf_kv_stats *out) {
    memset(out, 0, sizeof *out);
    out->blocks = pool->NB;
    out->block_size = pool->BS;
    out->used = (int64_t)atomic_load_explicit(&pool->used, memory_order_acquire); /* before high_water */
    out->free = pool->NB - out->used;
    out->high_water = (int64_t)atomic_load_explicit(&pool->high_water, memory_order_relaxed);
    out->reserve_fails = (int64_t)atomic_load_explicit(&pool->reserve_fails, memory_order_relaxed);
    out->cow_copies = (int64_t)atomic_load_explicit(&pool->cow_copies, memory_order_relaxed);
    out->bytes = pool->bytes;
}

/* Pops a free block (refcount 1). The caller has checked n_free. */
static int32_t pool_pop(lf_kv_pool *p) {
    LF_ASSERT(p->n_free > 0);
    int32_t b = p->free_ids[--p->n_free];
    LF_ASSERT(p->ref[b] == 0);
    p->ref[b] = 1;
    long long used = (long long)(p->NB - p->n_free);
    /* high_water first, then used with release: a reader that loads used (acquire) and then high_water sees
     * used <= high_water */
    if (used > atomic_load_explicit(&p->high_water, memory_order_relaxed))
        atomic_store_explicit(&p->high_water, used, memory_order_relaxed);
    atomic_store_explicit(&p->used, used, memory_order_release);
    return b;
}

/* Drops one holder of block b; pushes it on the free list when none is left. */
static void pool_unref(lf_kv_pool *p, int32_t b) {
    LF_ASSERT(b >= 0 && b < p->NB && p->ref[b] > 0);
    if (--p->ref[b] > 0) return;
    LF_ASSERT(p->n_free < p->NB);
    p->free_ids[p->n_free++] = b;
    atomic_store_explicit(&p->used, (long long)(p->NB - p->n_free), memory_order_release);
}

/* ---------------------------------------------------------------------------------------------------- */
/* sequences                                                                                             */

lf_status lf_kv_seq_init(lf_kv_seq *seq, const lf_kv_pool *pool, int64_t max_tokens, lf_err *err) {
    memset(seq, 0, sizeof *seq);
    if (!pool || max_tokens < 1)
        return lf_err_set(err, LF_EINVAL, "kv seq: max_tokens=%lld must be >= 1%s", (long long)max_tokens,
                          pool ? "" : " (no pool)");
    seq->pool = pool;
    seq->BS = pool->BS;
    seq->max_tokens = max_tokens;
    seq->max_blocks = (max_tokens + pool->BS - 1) / pool->BS;
    return LF_OK;
}

void lf_kv_seq_free(lf_kv_pool *pool, lf_kv_seq *seq) {
    if (!seq) return;
    if (seq->n_blocks > 0) lf_kv_seq_release(pool, seq);
    free(seq->blocks);
    memset(seq, 0, sizeof *seq);
}

/* Makes room for n entries in seq->blocks (doubling, bounded by max_blocks). */
static lf_status seq_grow(lf_kv_seq *seq, int64_t n, lf_err *err) {
    if (n <= seq->cap) return LF_OK;
    LF_ASSERT(n <= seq->max_blocks);
    int64_t cap = seq->cap < 4 ? 4 : seq->cap * 2;
    if (cap < n) cap = n;
    if (cap > seq->max_blocks) cap = seq->max_blocks;
    int32_t *nb = realloc(seq->blocks, (size_t)cap * sizeof *nb);
    if (!nb)
        return lf_err_set(err, LF_ENOMEM, "kv seq: cannot grow the block table to %lld entries", (long long)cap);
    seq->blocks = nb;
    seq->cap = cap;
    return LF_OK;
}

/* 1 when growing seq past n_tokens writes into its last block while another sequence holds it. */
static int seq_needs_cow(const lf_kv_pool *pool, const lf_kv_seq *seq, int64_t new_total) {
    return new_total > seq->n_tokens && seq->n_tokens % seq->BS != 0 && pool->ref[seq->blocks[seq->n_blocks - 1]] > 1;
}

int64_t lf_kv_seq_blocks_needed(const lf_kv_pool *pool, const lf_kv_seq *seq, int64_t new_total) {
    if (new_total <= seq->n_tokens) return 0;
    int64_t want = (new_total + seq->BS - 1) / seq->BS;
    return want - seq->n_blocks + seq_needs_cow(pool, seq, new_total);
}

lf_status lf_kv_seq_reserve(lf_kv_pool *pool, lf_kv_seq *seq, int64_t new_total, lf_err *err) {
    lf_status st = LF_OK;
    LF_ASSERT(seq->pool == pool);
    if (new_total <= seq->n_tokens) return LF_OK;
    if (new_total > seq->max_tokens)
        return lf_err_set(err, LF_EINVAL, "kv seq: %lld positions exceed the sequence's limit of %lld",
                          (long long)new_total, (long long)seq->max_tokens);
    const int64_t want = (new_total + seq->BS - 1) / seq->BS;
    const int cow = seq_needs_cow(pool, seq, new_total);
    const int64_t need = want - seq->n_blocks + cow;
    if (need > pool->n_free) {
        atomic_fetch_add_explicit(&pool->reserve_fails, 1, memory_order_relaxed);
        return lf_err_set(err, LF_EBUSY, "kv cache full: %lld positions need %lld more blocks, %lld of %lld free",
                          (long long)new_total, (long long)need, (long long)pool->n_free, (long long)pool->NB);
    }
    LF_TRY(seq_grow(seq, want, err));
    if (cow) { /* copy the shared last block (every layer's K and V), then swap it in */
        const int32_t old = seq->blocks[seq->n_blocks - 1], nb = pool_pop(pool);
        const size_t nbytes = (size_t)(pool->BS * pool->row * pool->esz);
        for (int64_t l = 0; l < 2 * pool->L; l++) {
            char *plane = pool->base + (size_t)(l * pool->plane * pool->esz);
            if (pool->be->ops->copy(pool->be, plane + (size_t)nb * nbytes, plane + (size_t)old * nbytes, nbytes) !=
                LF_OK) {
                pool_unref(pool, nb);
                st = lf_err_set(err, pool->be->err.code ? pool->be->err.code : LF_EINVAL,
                                "kv seq: copying shared block %d: %s", (int)old, pool->be->err.msg);
                goto fail;
            }
        }
        pool_unref(pool, old); /* still held by the other sequence(s) */
        seq->blocks[seq->n_blocks - 1] = nb;
        atomic_fetch_add_explicit(&pool->cow_copies, 1, memory_order_relaxed);
    }
    while (seq->n_blocks < want) seq->blocks[seq->n_blocks++] = pool_pop(pool);
    seq->n_tokens = new_total;
    return LF_OK;
fail:
    return st;
}

void lf_kv_seq_release(lf_kv_pool *pool, lf_kv_seq *seq) {
    LF_ASSERT(seq->pool == pool || seq->n_blocks == 0);
    /* last block first, so the next sequence pops this one's blocks back in table order */
    for (int64_t i = seq->n_blocks - 1; i >= 0; i--) pool_unref(pool, seq->blocks[i]);
    seq->n_blocks = 0;
    seq->n_tokens = 0;
}

lf_status lf_kv_seq_fork(lf_kv_pool *pool, lf_kv_seq *dst, const lf_kv_seq *src, int64_t n_tokens, lf_err *err) {
    lf_status st = LF_OK;
    LF_ASSERT(src->pool == pool && dst->pool == pool);
    if (dst->n_tokens != 0 || dst == src)
        return lf_err_set(err, LF_EINVAL, "kv seq fork: destination is not empty (%lld positions)",
                          (long long)dst->n_tokens);
    if (n_tokens < 0 || n_tokens > src->n_tokens || n_tokens > dst->max_tokens)
        return lf_err_set(err, LF_EINVAL,
                          "kv seq fork: %lld shared positions outside [0, %lld] (source length) or over the "
                          "destination's limit %lld",
                          (long long)n_tokens, (long long)src->n_tokens, (long long)dst->max_tokens);
    const int64_t nb = (n_tokens + pool->BS - 1) / pool->BS;
    LF_TRY(seq_grow(dst, nb, err));
    for (int64_t i = 0; i < nb; i++) {
        const int32_t b = src->blocks[i];
        LF_ASSERT(pool->ref[b] > 0);
        pool->ref[b]++;
        dst->blocks[i] = b;
    }
    dst->n_blocks = nb;
    dst->n_tokens = n_tokens;
    return LF_OK;
fail:
    return st;
}

lf_status lf_kv_slot(const lf_kv_seq *seq, int64_t pos, int32_t *block, int64_t *slot) {
    if (pos < 0 || pos >= seq->n_tokens) return LF_EINVAL;
    *block = seq->blocks[pos / seq->BS];
    *slot = pos % seq->BS;
    return LF_OK;
}

const int32_t *lf_kv_seq_table(const lf_kv_seq *seq) { return seq->blocks; }
int64_t lf_kv_seq_n_blocks(const lf_kv_seq *seq) { return seq->n_blocks; }

lf_status lf_kv_seq_table_upload(lf_kv_pool *pool, const lf_kv_seq *seq, int32_t *dst, lf_err *err) {
    LF_ASSERT(seq->pool == pool);
    if (seq->n_blocks == 0) return LF_OK;
    if (pool->be->ops->upload(pool->be, dst, seq->blocks, (size_t)seq->n_blocks * sizeof(int32_t)) != LF_OK)
        return lf_err_set(err, pool->be->err.code ? pool->be->err.code : LF_EINVAL,
                          "kv seq: uploading a block table of %lld entries: %s", (long long)seq->n_blocks,
                          pool->be->err.msg);
    return LF_OK;
}

/* ---------------------------------------------------------------------------------------------------- */
/* K/V rows                                                                                              */

static lf_status rows_check(const lf_kv_pool *pool, const lf_kv_seq *seq, int64_t l, int64_t pos0, int64_t T,
                            const char *what, lf_err *err) {
    LF_ASSERT(seq->pool == pool);
    if (l < 0 || l >= pool->L)
        return lf_err_set(err, LF_EINVAL, "kv %s: layer %lld outside [0, %lld)", what, (long long)l,
                          (long long)pool->L);
    if (pos0 < 0 || T < 0 || pos0 + T > seq->n_tokens)
        return lf_err_set(err, LF_EINVAL, "kv %s: positions [%lld, %lld) outside the sequence's slots [0, %lld)", what,
                          (long long)pos0, (long long)(pos0 + T), (long long)seq->n_tokens);
    return LF_OK;
}

/* Moves the rows of positions pos0..pos0+T-1 between plane and packed rows [T, KH*D], one backend copy per run
 * of positions inside one block: from `in` into the pool (scatter) when in != NULL, else from the pool into
 * `out` (gather). */
static lf_status rows_copy(lf_kv_pool *pool, const lf_kv_seq *seq, char *plane, const char *in, char *out,
                           int64_t pos0, int64_t T, lf_err *err) {
    const int64_t BS = pool->BS, R = pool->row * pool->esz; /* bytes per slot */
    for (int64_t j = pos0; j < pos0 + T;) {
        const int64_t b = j / BS, s = j - b * BS, n = (BS - s) < (pos0 + T - j) ? (BS - s) : (pos0 + T - j);
        char *slot = plane + ((int64_t)seq->blocks[b] * BS + s) * R;
        const size_t nbytes = (size_t)(n * R);
        lf_status st = in ? pool->be->ops->copy(pool->be, slot, in + (j - pos0) * R, nbytes)
                          : pool->be->ops->copy(pool->be, out + (j - pos0) * R, slot, nbytes);
        if (st != LF_OK)
            return lf_err_set(err, pool->be->err.code ? pool->be->err.code : st, "kv %s: block %d: %s",
                              in ? "write" : "read", (int)seq->blocks[b], pool->be->err.msg);
        j += n;
    }
    return LF_OK;
}

lf_status lf_kv_write(lf_kv_pool *pool, const lf_kv_seq *seq, int64_t l, int64_t pos0, int64_t T, const void *k,
                      const void *v, lf_err *err) {
    lf_status st = rows_check(pool, seq, l, pos0, T, "write", err);
    if (st != LF_OK) return st;
    if (T == 0) return LF_OK;
    if (!k || !v) return lf_err_set(err, LF_EINVAL, "kv write: NULL %s rows", k ? "v" : "k");
    for (int64_t b = pos0 / pool->BS; b <= (pos0 + T - 1) / pool->BS; b++)
        if (pool->ref[seq->blocks[b]] != 1)
            return lf_err_set(err, LF_EINVAL,
                              "kv write: block %d (positions %lld..%lld) is shared by %d sequences and read-only",
                              (int)seq->blocks[b], (long long)(b * pool->BS), (long long)((b + 1) * pool->BS - 1),
                              (int)pool->ref[seq->blocks[b]]);
    if ((st = rows_copy(pool, seq, lf_kv_pool_k(pool, l), (const char *)k, NULL, pos0, T, err)) != LF_OK) return st;
    return rows_copy(pool, seq, lf_kv_pool_v(pool, l), (const char *)v, NULL, pos0, T, err);
}

lf_status lf_kv_read(lf_kv_pool *pool, const lf_kv_seq *seq, int64_t l, int64_t pos0, int64_t T, void *k, void *v,
                     lf_err *err) {
    lf_status st = rows_check(pool, seq, l, pos0, T, "read", err);
    if (st != LF_OK) return st;
    if (k && (st = rows_copy(pool, seq, lf_kv_pool_k(pool, l), NULL, (char *)k, pos0, T, err)) != LF_OK) return st;
    if (v && (st = rows_copy(pool, seq, lf_kv_pool_v(pool, l), NULL, (char *)v, pos0, T, err)) != LF_OK) return st;
    return LF_OK;
}
