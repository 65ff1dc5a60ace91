/* engine.h - the serving engine: one thread owns the model, the paged KV cache and the batch workspace and
 * runs continuous batching over every admitted sequence; HTTP threads submit tokenized requests and receive
 * tokens and results through callbacks.
 *
 * Scheduling (each step of the engine thread):
 *   1. take newly submitted sequences into the waiting queue (FIFO);
 *   2. drop cancelled sequences (their blocks go back to the pool);
 *   3. admit waiting sequences while fewer than max_batch_size run;
 *   4. give every running sequence its next piece of work: 1 token for a decoding sequence, a chunk of its
 *      prompt (at most what is left of max_batch_tokens after the decodes) for a prefilling one, so long
 *      prompts are prefilled in chunks while decodes keep flowing; KV blocks are reserved for it, and when
 *      the pool is full the most recently admitted running sequence is preempted: its blocks are freed and
 *      it goes back to the front of the waiting queue, to be recomputed (prompt + generated tokens) later;
 *   5. one lf_batch_forward over all pieces, sorted by adapter (grouped LoRA products);
 *   6. sample the sequences whose piece ended at their last token; detokenize incrementally, match stop
 *      strings, call on_token; finish on EOS (generation_config eos ids, unless params.ignore_eos), a stop
 *      token id (params.stop_token_ids: finish LF_FINISH_STOP, the token's text left out as EOS's), a stop
 *      string or max_new_tokens.
 * Preemption never changes outputs: sampling depends only on the sequence's tokens and its own rng.
 *
 * Callbacks run on the engine thread, must not block for long and must not call back into the engine
 * except lf_engine_stats. Per request: on_token zero or more times per input, then on_done exactly once per
 * input (also on error or cancel, with finish LF_FINISH_ERROR), then on_release exactly once after the
 * last on_done: the engine no longer touches `user` after it.
 *
 * Ownership: the engine borrows the model and tokenizer (they outlive it) and owns the KV pool, the batch
 * workspace and every queued sequence. lf_engine_submit copies the token ids and params; the adapter
 * references passed in are owned by the engine from then on (released with registry release via the
 * release_adapter callback when the sequence ends). */
#ifndef LF_SERVE_ENGINE_H
#define LF_SERVE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "serve/protocol.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lf_model_adapter;
struct lf_metrics;

typedef struct lf_engine_params {
    int64_t max_batch_size;    /* running sequences at once (default 32) */
    int64_t max_batch_tokens;  /* rows per forward step: decodes + prefill chunks (default 256) */
    int64_t max_model_len;     /* prompt + generated tokens of one sequence (default: model max, capped 4096) */
    int64_t max_queue;         /* waiting sequences before submit answers 429 (default 256) */
    int64_t block_size;        /* KV tokens per block (default 16) */
    size_t kv_cache_bytes;     /* pool budget; 0 = room for max(2 * max_batch_size, 8) full-length sequences
                                * capped at 25% of physical memory */
    int64_t max_lora_rank;     /* largest adapter rank the step workspace holds (default 64) */
} lf_engine_params;

lf_engine_params lf_engine_default_params(void);

typedef struct lf_engine lf_engine;

/* Creates the pool and workspace and starts the engine thread. LF_EINVAL when the pool cannot hold one
 * sequence of max_model_len tokens (the message gives the sizes). metrics may be NULL. */
lf_status lf_engine_create(lf_model *m, const lf_tokenizer *tok, const lf_engine_params *p,
                           struct lf_metrics *metrics, lf_engine **out, lf_err *err);
/* Stops the thread (every unfinished sequence gets on_done with an error "server shutting down", then
 * on_release) and frees. NULL is a no-op. */
void lf_engine_free(lf_engine *e);
/* The effective parameters (defaults filled in, max_model_len clamped to the model). */
const lf_engine_params *lf_engine_get_params(const lf_engine *e);

/* Stop admitting: later submits answer 503; running and queued work continues. */
void lf_engine_drain(lf_engine *e);
/* Cancel every queued and running sequence (on_done with an error, then on_release). */
void lf_engine_cancel_all(lf_engine *e, const char *reason);

typedef struct lf_engine_stats {
    int64_t waiting, running;           /* sequences */
    int64_t kv_blocks_used, kv_blocks_free, kv_blocks;
    int64_t preemptions;                /* since create */
    int64_t steps;                      /* forward steps since create */
    int64_t tokens_generated;           /* since create */
} lf_engine_stats;
void lf_engine_stats_get(lf_engine *e, lf_engine_stats *out); /* any thread */

/* One input of a request. */
typedef struct lf_engine_input {
    const int32_t *ids;                      /* [n] prompt token ids (copied) */
    int64_t n;                               /* >= 1 */
    const struct lf_model_adapter *adapter;  /* NULL = base model */
    void *adapter_ref;                       /* handed back to release_adapter when the sequence ends */
} lf_engine_input;

typedef struct lf_engine_callbacks {
    /* A generated token of input idx that does not end the sequence. tok: id, text (this token's own
     * decoded piece), log_prob, special, top alternatives when asked (pointers valid during the call).
     * emit/emit_len: the text that became safe to send with this token (stop strings and incomplete UTF-8
     * held back; may be empty). */
    void (*on_token)(void *user, size_t idx, const lf_gen_token *tok, const char *emit, size_t emit_len);
    /* Input idx finished. res: text = the whole generated text (stop string removed; the EOS token's text not
     * included), finish reason, prompt/generated token counts, tokens[] when want_tokens, error message when
     * finish is LF_FINISH_ERROR. last: the token that ended the sequence (the EOS token with empty text, the
     * token completing a stop string, or the max_new_tokens-th token), never passed to on_token, so a stream
     * can send it as its final event without holding tokens back; NULL when the sequence ended without a new
     * token (error, cancel). flush/flush_len: the text still to send: what `last` made safe plus the
     * held-back text released at the end. Pointers valid during the call only. */
    void (*on_done)(void *user, size_t idx, const lf_gen_result *res, const lf_gen_token *last, const char *flush,
                    size_t flush_len);
    /* Called once after the request's last on_done. */
    void (*on_release)(void *user);
    /* Polled before every step: non-zero cancels the whole request (client gone). May be NULL. */
    int (*is_cancelled)(void *user);
    /* Releases an input's adapter_ref (registry reference). May be NULL. */
    void (*release_adapter)(void *user, void *adapter_ref);
} lf_engine_callbacks;

/* Queue a request of n inputs with params (copied; stop strings included). want_tokens: keep per-token
 * details (id, text, log_prob, top alternatives) for on_done's res.tokens. Fails without calling any
 * callback: 429 (LF_EBUSY) when the waiting queue has fewer than n free places, 503 (LF_EBUSY) when
 * draining or stopped, 413 (LF_EINVAL) when an input's n >= max_model_len (the prompt leaves no room for
 * one generated token), 422 (LF_EINVAL) for bad params.
 * max_new_tokens is clamped to max_model_len - n per input. params->truncate > 0 keeps only the last
 * `truncate` ids of each prompt (before the checks above; res.prompt_tokens counts what is left). A stop
 * token id outside the vocabulary is a 422. The presence/frequency penalties count the tokens generated
 * after the (truncated) prompt. On failure the caller still owns the adapter references. */
lf_status lf_engine_submit(lf_engine *e, const lf_engine_input *inputs, size_t n, const lf_gen_params *params,
                           int want_tokens, const lf_engine_callbacks *cb, void *user, int *http_status,
                           lf_err *err);

#ifdef __cplusplus
}
#endif
#endif
