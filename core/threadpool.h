/* threadpool.h - a fixed pthread pool that runs parallel-for loops; the calling thread takes part.
 *
 * Invariants: workers are created once in lf_pool_create and live until lf_pool_destroy; a parallel_for
 * returns only when every chunk is done; one parallel_for at a time per pool (the owner thread calls it). */
#ifndef LF_CORE_THREADPOOL_H
#define LF_CORE_THREADPOOL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lf_pool lf_pool;

/* Work callback: process [begin, end). tid in [0, lf_pool_size) identifies the thread (for scratch). */
typedef void (*lf_pool_fn)(void *ctx, int64_t begin, int64_t end, int tid);

/* n_threads <= 0 means the number of online CPUs. Returns NULL on failure. Caller owns the pool. */
lf_pool *lf_pool_create(int n_threads);
/* Joins the workers. NULL is a no-op. */
void lf_pool_destroy(lf_pool *pool);
/* Threads including the caller. */
int lf_pool_size(const lf_pool *pool);
/* Split [0, n) into chunks of at least `grain` items and run fn over them on all threads.
 * pool may be NULL: runs fn(ctx, 0, n, 0) on the caller. */
void lf_pool_parallel_for(lf_pool *pool, int64_t n, int64_t grain, lf_pool_fn fn, void *ctx);

#ifdef __cplusplus
}
#endif
#endif
