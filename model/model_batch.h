/* model_batch.h - one forward step over a batch of sequence segments that share the base weights (the
 * serving engine's forward): each segment appends n tokens to its own sequence, whose K/V live in a paged
 * pool read through the segment's block table, and may use its own LoRA/DoRA adapter.
 *
 * Semantics: for every segment, the result equals lf_session_forward of that sequence alone (with
 * lf_model_set_lora of the segment's adapter, or none) up to float summation order: the base matmuls run
 * once over all rows of the batch ([T, C] with T = sum of n), the adapter products run once per group of
 * consecutive segments that use the same adapter (the caller sorts the batch by adapter to make groups
 * large), attention runs per segment over its block table (attention_paged_forward), and the new K/V rows
 * are scattered into the pool slots of positions pos0 .. pos0+n-1 before the segment's attention reads them.
 * LoRA: y = base(x) + s * B A x; DoRA: y = (m/n) * (base(x) - b + s * B A x) + b with n the DoRA weight norm
 * computed at lf_model_adapter_create (PEFT 0.12 inference formulas, no dropout).
 * This is the model's one inference forward: lf_session_forward (model.h) runs it with one segment over a
 * contiguous cache seen as a pool of one block. Activations (and the K/V rows before the scatter) are in
 * the model's compute dtype (lf_model_options.compute_dtype); logits always come back f32.
 *
 * Ownership: lf_model_adapter borrows the lf_lora_view arrays (A, B, mag; the caller keeps them alive, e.g.
 * an lf_lora_adapter; on a backend without host memory it owns device copies instead) and owns a copy of the view table and its DoRA norms; it remembers which model it was
 * checked against (only compared: a segment whose adapter was made for another lf_model is LF_EINVAL).
 * lf_batch borrows the model (and its backend), owns its activation workspace (one backend allocation for
 * activations, token ids, positions and block tables, one host allocation for staging), allocated once at
 * create: lf_batch_forward never allocates.
 * Segments, block tables and the pool are borrowed for the call. Not thread-safe: one thread per lf_batch, and
 * one thread at a time per backend (backend.h); adapters are read-only after create and may be shared by any
 * number of batches / threads. */
#ifndef LF_MODEL_MODEL_BATCH_H
#define LF_MODEL_MODEL_BATCH_H

#include <stdint.h>

#include "core/status.h"
#include "model/model.h"
#include "model/model_train.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lf_model_adapter lf_model_adapter;

/* views: [L * LF_MOD_COUNT] (layer-major, lf_module order; A == NULL: module not adapted). Checks every
 * present view (R >= 1, B non-NULL, scale finite; A [R, C], B [OC, R], mag [OC] of that module: the caller
 * guarantees the arrays hold that many floats) and computes DoRA norms (lf_model_dora_norm, for views with
 * mag). LF_EINVAL naming the layer/module on a bad view. */
lf_status lf_model_adapter_create(const lf_model *m, const lf_lora_view *views, lf_model_adapter **out, lf_err *err);
void lf_model_adapter_free(lf_model_adapter *a); /* NULL is a no-op */
/* Largest rank over its modules; 1 when DoRA-only / empty. */
int64_t lf_model_adapter_max_rank(const lf_model_adapter *a);
/* 1 when any module uses DoRA. */
int lf_model_adapter_is_dora(const lf_model_adapter *a);

/* The paged pool, described without depending on serve/: per layer l, k[l] and v[l] point at
 * [NB, BS, KH, D] elements of dtype dt in the backend's memory; position j of a segment lives in block
 * block_table[j / BS], slot j % BS (serve/kvcache.h's layout). */
typedef struct lf_paged_kv {
    void *const *k; /* [L] borrowed */
    void *const *v; /* [L] borrowed */
    int64_t BS;
    int64_t NB;     /* blocks in the pool: block ids must be in [0, NB) (0 = unchecked) */
    lf_dtype dt;    /* F32, BF16 or F16 (0 is not a valid dtype: set it) */
} lf_paged_kv;

/* want_logits of a segment */
enum { LF_LOGITS_NONE = 0, LF_LOGITS_LAST = 1, LF_LOGITS_ALL = 2 };

typedef struct lf_batch_seg {
    const int32_t *tokens;           /* [n] host memory, ids < V */
    int64_t n;                       /* >= 1 */
    int64_t pos0;                    /* position of tokens[0]; the pool already holds K/V of [0, pos0) */
    const int32_t *block_table;      /* [n_blocks] host memory: covers positions [0, pos0 + n), every block
                                      * it names for positions >= pos0 is writable (not shared) */
    int64_t n_blocks;
    const lf_model_adapter *adapter; /* NULL = base model */
    int want_logits;                 /* LF_LOGITS_LAST: the logits of the segment's last token; LF_LOGITS_ALL:
                                      * of every token (rows in order); LF_LOGITS_NONE: none */
} lf_batch_seg;

typedef struct lf_batch lf_batch;

/* Workspace for batches of at most max_tokens rows in total, at most max_segs segments, adapters of rank
 * <= max_rank, and sequences of at most max_blocks blocks (max_model_len / BS rounded up). */
lf_status lf_batch_create(lf_model *m, int64_t max_tokens, int64_t max_segs, int64_t max_rank, int64_t max_blocks,
                          lf_batch **out, lf_err *err);
/* The same with room for max_logit_rows rows of logits per step (LF_LOGITS_ALL segments count n rows, LAST
 * ones 1); lf_batch_create takes min(max_segs, max_tokens). */
lf_status lf_batch_create_ex(lf_model *m, int64_t max_tokens, int64_t max_segs, int64_t max_rank, int64_t max_blocks,
                             int64_t max_logit_rows, lf_batch **out, lf_err *err);
void lf_batch_free(lf_batch *b); /* NULL is a no-op */

/* Run one step. logits: host [n_want, V] (n_want = logit rows the segments ask for, in segment order); may be
 * NULL when n_want = 0. LF_EINVAL (before any write into the pool) for more rows/segments than the workspace, a
 * token id out of range, n < 1, pos0 < 0, a block table too short for pos0 + n, pos0 + n needing more than
 * max_blocks blocks, a negative block id among those the step writes or attends, an adapter of rank >
 * max_rank or made for another model, or want_logits with logits NULL. n_segs = 0 is a no-op. The caller
 * guarantees every block id is < the pool's NB (the pool size is not passed) and that no two segments write
 * the same slot. A backend failure during the step (LF_ECUDA, ...) may leave the pool slots of
 * [pos0, pos0 + n) partly written: the caller recomputes those positions. A pool whose dtype differs from
 * the compute dtype is converted on the scatter. On a backend without host memory (cuda, cpu-checked)
 * lf_model_adapter_create uploads A, B, magnitudes and DoRA norms once; the caller's arrays are then not read. */
lf_status lf_batch_forward(lf_batch *b, const lf_paged_kv *kv, const lf_batch_seg *segs, int64_t n_segs,
                           float *logits, lf_err *err);

#ifdef __cplusplus
}
#endif
#endif
