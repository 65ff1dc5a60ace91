/* metrics.h - the server's Prometheus metrics: request counts by route and status, tokens in/out,
 * preemptions, and latency histograms (time to first token, time per output token, request duration),
 * rendered as Prometheus text exposition format 0.0.4 for GET /metrics.
 *
 * Invariants: counters only grow; histogram buckets are cumulative in the output (le="..." plus +Inf,
 * _sum, _count). Gauges (queue depth, running sequences, KV blocks, adapters) are not stored here: the
 * caller passes a snapshot to lf_metrics_render.
 * Ownership and threads: every function is thread-safe (one mutex, held for O(buckets) work); render returns
 * malloc'd text the caller frees. */
#ifndef LF_SERVE_METRICS_H
#define LF_SERVE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lf_metrics lf_metrics;

typedef struct lf_metrics_gauges {
    int64_t queue_depth;      /* sequences waiting for admission */
    int64_t running;          /* sequences in the running batch */
    int64_t kv_blocks_used, kv_blocks_free;
    int64_t adapters_loaded;
    int ready;                /* 1 once the model is loaded */
} lf_metrics_gauges;

lf_metrics *lf_metrics_create(void);           /* NULL on out of memory */
void lf_metrics_free(lf_metrics *m);           /* NULL is a no-op */

/* route: a short label ("invocations", "ping", "adapters", "models", "metrics", "other"; NULL/"" = "other",
 * cut to 64 bytes); status: HTTP code. seconds: the request's duration for the route-labelled histogram
 * loraforge_request_duration_seconds{route}; < 0 (or NaN) counts the request without a duration. */
void lf_metrics_request(lf_metrics *m, const char *route, int status, double seconds);
void lf_metrics_tokens(lf_metrics *m, int64_t prompt_tokens, int64_t generated_tokens);
/* Histogram observations: NaN is ignored, a negative value counts as 0. */
void lf_metrics_ttft(lf_metrics *m, double seconds);   /* time to first token of one sequence */
void lf_metrics_tpot(lf_metrics *m, double seconds);   /* mean time per output token after the first */
void lf_metrics_preemption(lf_metrics *m, int64_t n);
void lf_metrics_rejected(lf_metrics *m, const char *reason); /* "queue_full", "too_long", ... */

/* Prometheus text; names prefixed "loraforge_"; label sets sorted (routes, codes, reasons) so scrapes are
 * stable. g NULL: the gauges are left out. NULL on out of memory. Histograms: vLLM's bucket bounds. */
char *lf_metrics_render(lf_metrics *m, const lf_metrics_gauges *g, size_t *len);

#ifdef __cplusplus
}
#endif
#endif
