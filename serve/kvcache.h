/* kvcache.h - the paged KV cache for serving: one preallocated pool of fixed-size blocks per model, and each
 * sequence's block table into it (free list, O(1) block alloc/free, copy-on-write sharing, counters).
 *
 * Layout: for each layer l, K and V are [NB, BS, KH, D] of the pool's dtype (F32, BF16 or F16; the model's
 * compute dtype in serving) in the backend's memory (one allocation for all
 * layers); block b, slot s is pool row b * BS + s. A sequence's logical position j lives in block
 * seq->blocks[j / BS], slot j % BS: exactly what backend.h's attention_paged_forward reads, given
 * lf_kv_pool_k/v(pool, l), lf_kv_seq_table(seq), lf_kv_seq_n_blocks(seq) and BS.
 *
 * Invariants:
 *  - A sequence holds n_blocks = ceil(n_tokens / BS) blocks; n_tokens <= max_tokens (set at init).
 *  - Every block is either on the free list (refcount 0) or held by >= 1 sequences (refcount = holders).
 *    A block held by more than one sequence (after lf_kv_seq_fork) is read-only: lf_kv_write refuses it, and
 *    lf_kv_seq_reserve copies a shared, partly filled last block before the sequence grows into it.
 *  - No function allocates backend memory after lf_kv_pool_create; the only host allocation after create is a
 *    sequence's block table growing (doubling, bounded by max_tokens / BS).
 *
 * Ownership and threads: the pool owns its backend allocation and host arrays; it borrows the backend, which
 * must outlive it. A lf_kv_seq is a caller-owned struct whose `blocks` array it owns (lf_kv_seq_free). ONE
 * thread (the engine thread) calls every function here except lf_kv_pool_stats, which any thread may call
 * at any time: the counters it reads are atomics. */
#ifndef LF_SERVE_KVCACHE_H
#define LF_SERVE_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "kernels/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lf_kv_pool lf_kv_pool;

/* A snapshot of the pool's counters (blocks unless said otherwise). */
typedef struct lf_kv_stats {
    int64_t blocks;        /* NB, fixed */
    int64_t block_size;    /* BS, token slots per block */
    int64_t used;          /* blocks held by some sequence */
    int64_t free;          /* blocks on the free list = blocks - used */
    int64_t high_water;    /* max of used since create */
    int64_t reserve_fails; /* lf_kv_seq_reserve calls answered LF_EBUSY */
    int64_t cow_copies;    /* shared blocks copied by lf_kv_seq_reserve */
    size_t bytes;          /* the pool's backend allocation */
} lf_kv_stats;

/* One sequence's view of the pool. Fields are read-only to callers; use the functions. */
typedef struct lf_kv_seq {
    const lf_kv_pool *pool; /* borrowed: the pool the sequence was initialised for */
    int32_t *blocks;        /* owned host array [cap]: block ids of positions [0, n_tokens), first n_blocks valid */
    int64_t cap;            /* entries allocated in blocks */
    int64_t n_blocks;       /* ceil(n_tokens / BS) */
    int64_t n_tokens;       /* positions with a slot (reserved; the caller writes them) */
    int64_t max_blocks;     /* ceil(max_tokens / BS) */
    int64_t max_tokens;     /* bound on n_tokens (the model's max length) */
    int64_t BS;             /* copied from the pool */
} lf_kv_seq;

/* ---- pool ---- */
/* Pool for L layers of KH kv heads of dim D in blocks of BS token slots, with as many blocks as fit in
 * budget_bytes: NB = budget_bytes / (2 * L * BS * KH * D * 4) (capped at INT32_MAX). LF_EINVAL when a size
 * is < 1 or the budget holds no block; LF_ENOMEM (with the size) when the backend cannot allocate it. The
 * pool contents start undefined (only slots a sequence wrote are read). */
lf_status lf_kv_pool_create(lf_backend *be, int64_t L, int64_t KH, int64_t D, int64_t BS, size_t budget_bytes,
                            lf_kv_pool **out, lf_err *err);
/* The same with elements of dtype dt (F32, BF16, F16; the 4 above becomes its size): a bf16 pool holds twice
 * the blocks of an f32 one in the same budget. */
lf_status lf_kv_pool_create_dt(lf_backend *be, lf_dtype dt, int64_t L, int64_t KH, int64_t D, int64_t BS,
                               size_t budget_bytes, lf_kv_pool **out, lf_err *err);
/* Element dtype of K and V. */
lf_dtype lf_kv_pool_dtype(const lf_kv_pool *pool);
/* Frees the backend allocation and the pool. Sequences still holding blocks must not be used afterwards
 * (lf_kv_seq_free on them after the pool is gone is not allowed). NULL is a no-op. */
void lf_kv_pool_free(lf_kv_pool *pool);
/* NB, BS, L, KH, D. */
int64_t lf_kv_pool_blocks(const lf_kv_pool *pool);
int64_t lf_kv_pool_block_size(const lf_kv_pool *pool);
int64_t lf_kv_pool_layers(const lf_kv_pool *pool);
int64_t lf_kv_pool_kv_heads(const lf_kv_pool *pool);
int64_t lf_kv_pool_head_dim(const lf_kv_pool *pool);
/* Blocks on the free list now. */
int64_t lf_kv_pool_free_blocks(const lf_kv_pool *pool);
/* Layer l's K / V pools [NB, BS, KH, D] in the backend's memory (borrowed), for attention_paged_forward.
 * l must be in [0, L) (asserted). */
void *lf_kv_pool_k(lf_kv_pool *pool, int64_t l);
void *lf_kv_pool_v(lf_kv_pool *pool, int64_t l);
/* Reference count of block id b (0 = free). For tests and debugging. */
int32_t lf_kv_pool_refcount(const lf_kv_pool *pool, int32_t b);
/* Counters, from any thread (atomic loads; fields may come from slightly different instants). */
void lf_kv_pool_stats(const lf_kv_pool *pool, lf_kv_stats *out);

/* ---- sequences ---- */
/* An empty sequence of the pool that may grow to max_tokens positions. No allocation yet. LF_EINVAL when
 * max_tokens < 1. */
lf_status lf_kv_seq_init(lf_kv_seq *seq, const lf_kv_pool *pool, int64_t max_tokens, lf_err *err);
/* Releases the sequence's blocks and frees its table; seq is left empty (init it again to reuse). NULL seq or
 * a zeroed seq is a no-op. */
void lf_kv_seq_free(lf_kv_pool *pool, lf_kv_seq *seq);
/* Free blocks lf_kv_seq_reserve(pool, seq, new_total) would take now (new blocks, plus 1 when a shared, partly
 * filled last block must be copied); 0 when new_total <= n_tokens. For the scheduler's admission check. */
int64_t lf_kv_seq_blocks_needed(const lf_kv_pool *pool, const lf_kv_seq *seq, int64_t new_total);
/* Gives the sequence slots for positions [0, new_total): allocates the missing blocks (and copies a shared
 * partly filled last block, see the invariants) and sets n_tokens = new_total. new_total <= n_tokens: no-op.
 * LF_EBUSY, with no side effect at all, when the free list holds fewer than lf_kv_seq_blocks_needed blocks
 * (the scheduler preempts another sequence and retries). LF_EINVAL when new_total > max_tokens; LF_ENOMEM
 * when the block table cannot grow; a backend error from the copy. On every error the sequence and the pool
 * are unchanged. */
lf_status lf_kv_seq_reserve(lf_kv_pool *pool, lf_kv_seq *seq, int64_t new_total, lf_err *err);
/* Returns every block (decrements shared ones) and sets n_tokens = 0; keeps the table's memory for reuse. */
void lf_kv_seq_release(lf_kv_pool *pool, lf_kv_seq *seq);
/* Prefix sharing: the empty sequence dst (initialised, n_tokens 0) shares src's blocks of positions
 * [0, n_tokens) (n_tokens <= src->n_tokens, <= dst->max_tokens) without copying: refcounts go up, both read
 * the same K/V. Those blocks become read-only for both (lf_kv_write refuses them), so share positions that are
 * already written. LF_EINVAL on bad sizes or a non-empty dst; LF_ENOMEM when dst's table cannot grow. */
lf_status lf_kv_seq_fork(lf_kv_pool *pool, lf_kv_seq *dst, const lf_kv_seq *src, int64_t n_tokens, lf_err *err);
/* Block id and slot of position pos (LF_EINVAL when pos is outside [0, n_tokens); no message: plain lookup). */
lf_status lf_kv_slot(const lf_kv_seq *seq, int64_t pos, int32_t *block, int64_t *slot);
/* The block table [n_blocks] (host memory, borrowed; valid until the next reserve/release/free) and its
 * length, for attention_paged_forward on the CPU backend. */
const int32_t *lf_kv_seq_table(const lf_kv_seq *seq);
int64_t lf_kv_seq_n_blocks(const lf_kv_seq *seq);
/* Copies the block table into dst[n_blocks] in the backend's memory (be->ops->upload), for a backend whose
 * ops read device memory (CUDA). */
lf_status lf_kv_seq_table_upload(lf_kv_pool *pool, const lf_kv_seq *seq, int32_t *dst, lf_err *err);

/* ---- K/V rows ---- */
/* Scatters k[T,KH,D], v[T,KH,D] (backend memory, e.g. the k/v projections after RoPE) into layer l's slots of
 * positions pos0 .. pos0+T-1, one be->ops->copy per run of positions inside a block. Needs 0 <= pos0,
 * pos0 + T <= n_tokens (reserve first), non-NULL k and v, and every touched block unshared; LF_EINVAL
 * otherwise, before anything is written. */
lf_status lf_kv_write(lf_kv_pool *pool, const lf_kv_seq *seq, int64_t l, int64_t pos0, int64_t T, const void *k,
                      const void *v, lf_err *err);
/* The converse gather: k[T,KH,D], v[T,KH,D] (backend memory; either may be NULL) from layer l's slots of
 * positions pos0 .. pos0+T-1 (within [0, n_tokens)). For tests, debugging, and swapping a sequence out. */
lf_status lf_kv_read(lf_kv_pool *pool, const lf_kv_seq *seq, int64_t l, int64_t pos0, int64_t T, void *k, void *v,
                     lf_err *err);

#ifdef __cplusplus
}
#endif
#endif
