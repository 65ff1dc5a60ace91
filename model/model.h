/* model.h - Llama-family causal LM (Llama, Mistral, Qwen2): weights from a Hugging Face directory and an
 * inference session with a contiguous KV cache for incremental decoding.
 *
 * Ownership: lf_model borrows the backend (which must outlive it) and owns the safetensors mappings its
 * weight views point into; lf_session borrows its model and owns its KV cache and activation buffers,
 * all allocated once at create time (forward never allocates). */
#ifndef LF_MODEL_MODEL_H
#define LF_MODEL_MODEL_H

#include <stdint.h>

#include "core/status.h"
#include "kernels/backend.h"
#include "model/config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lf_model lf_model;
typedef struct lf_session lf_session;

/* Load DIR (config.json + model.safetensors or a sharded index). Weights in the compute dtype (and
 * BF16/F16, which the matmul reads directly) are mmapped views, never copied; 1-D tensors (norms,
 * biases) are converted to f32. Every tensor's presence, dtype and shape is checked: a missing or
 * wrong-shape tensor fails with its name, file and expected shape. */
lf_status lf_model_load(const char *dir, lf_backend *be, lf_model **out, lf_err *err);
void lf_model_free(lf_model *m);
const lf_model_config *lf_model_get_config(const lf_model *m);
/* Bytes of weights the model reads per token (all matrices + lm_head row block). */
int64_t lf_model_weight_bytes(const lf_model *m);

/* A decoding session: KV cache for max_seq (S) positions; prompts are processed in chunks of at most
 * max_chunk tokens (activation buffers are sized for that). */
lf_status lf_session_create(lf_model *m, int64_t max_seq, int64_t max_chunk, lf_session **out, lf_err *err);
void lf_session_free(lf_session *s);
/* Positions already in the cache. */
int64_t lf_session_pos(const lf_session *s);
/* Drop the cache (next forward starts at position 0). */
void lf_session_reset(lf_session *s);
/* Append T tokens at the current position and run the model. logits (host memory, caller-owned):
 * [T, V] for every position, or [1, V] for the last one when last_only. LF_EINVAL if the cache would
 * overflow or a token id is out of range. */
lf_status lf_session_forward(lf_session *s, const int32_t *tokens, int64_t T, float *logits, int last_only,
                             lf_err *err);

#ifdef __cplusplus
}
#endif
#endif
