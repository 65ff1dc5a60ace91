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
struct lf_quant_state;

/* How to load. quant_bits 4 quantizes the seven decoder linears (q/k/v/o/gate/up/down) on load with
 * bitsandbytes semantics; embeddings, norms and lm_head keep their stored dtype. A pre-quantized bitsandbytes
 * checkpoint (config.json quantization_config) is read as stored whatever quant_bits says. */
typedef struct lf_model_options {
    int quant_bits;          /* 0 (as stored) or 4 */
    int quant_type;          /* lf_quant_type: 0 nf4 (default), 1 fp4 */
    int64_t quant_blocksize; /* 64 */
    int double_quant;        /* 1: quantize absmax too (bnb compress_statistics) */
    lf_dtype compute_dtype;  /* activations and KV cache of sessions and batches: F32, BF16, F16, or
                              * LF_DTYPE_INVALID = auto (the default: F32 on the cpu backend, BF16 on cuda);
                              * the backend must support every inference op for it (LF_EUNSUPPORTED at
                              * session / batch create otherwise). Logits are f32 whatever it is. */
} lf_model_options;

lf_model_options lf_model_default_options(void);

/* Resident weight memory by kind (bytes). */
typedef struct lf_model_memory {
    int64_t q4_bytes;     /* packed codes + absmax (+ nested) of the 4-bit linears */
    int64_t dense_bytes;  /* dense matrices: linears not quantized, embeddings, lm_head (counted once if tied) */
    int64_t small_bytes;  /* f32 norms, biases, rope tables */
    int n_q4, n_dense;    /* matrices of each kind (embeddings and lm_head included in n_dense) */
    int prequantized;     /* loaded from a bitsandbytes 4-bit checkpoint */
} lf_model_memory;

/* Load DIR (config.json + model.safetensors or a sharded index). Weights in the compute dtype (and
 * BF16/F16, which the matmul reads directly) are mmapped views, never copied; 1-D tensors (norms,
 * biases) are converted to f32. Every tensor's presence, dtype and shape is checked: a missing or
 * wrong-shape tensor fails with its name, file and expected shape. */
lf_status lf_model_load(const char *dir, lf_backend *be, lf_model **out, lf_err *err);
/* Same with options (NULL = defaults). Bad options (blocksize not a power of two in 32..4096, quant_bits not
 * 0/4) are LF_EINVAL. */
lf_status lf_model_load_opts(const char *dir, lf_backend *be, const lf_model_options *opt, lf_model **out,
                             lf_err *err);
/* Resident weight memory, filled at load. */
const lf_model_memory *lf_model_get_memory(const lf_model *m);
/* The weight of decoder linear `mod` of layer `layer`: its 4-bit state (NULL when dense) or its dense view
 * (NULL when 4-bit). Pointers owned by the model. */
const struct lf_quant_state *lf_model_linear_q4(const lf_model *m, int64_t layer, int mod);
const lf_tensor *lf_model_linear_dense(const lf_model *m, int64_t layer, int mod);
/* Write the model quantized on load (quant_bits 4) to out_dir in the Hugging Face bitsandbytes 4-bit layout:
 * model.safetensors (packed linears + companions, every other tensor as stored), config.json with
 * quantization_config, and every other file of the model directory (tokenizer, generation config) copied.
 * All files written atomically. out_dir must differ from the model directory. */
lf_status lf_model_save_quantized(const lf_model *m, const char *out_dir, lf_err *err);
/* The backend the model computes on (borrowed). */
lf_backend *lf_model_backend(const lf_model *m);
/* The directory the model was loaded from. */
const char *lf_model_dir(const lf_model *m);
void lf_model_free(lf_model *m);
const lf_model_config *lf_model_get_config(const lf_model *m);
/* Bytes of weights the model reads per token (all matrices + lm_head row block). */
int64_t lf_model_weight_bytes(const lf_model *m);

/* The compute dtype of sessions and batches (lf_model_options.compute_dtype). */
lf_dtype lf_model_compute_dtype(const lf_model *m);
/* Parse "f32"/"float32", "bf16"/"bfloat16", "f16"/"float16"/"half" (the names transformers' torch_dtype and
 * bnb_4bit_compute_dtype use). LF_DTYPE_INVALID otherwise. */
lf_dtype lf_model_parse_dtype(const char *name);

/* A decoding session: KV cache for max_seq (S) positions in the compute dtype; prompts are processed in
 * chunks of at most max_chunk tokens (activation buffers are sized for that). It runs the model's one
 * inference forward (lf_batch_forward, model_batch.h) with one segment over its contiguous cache, read as a
 * paged pool of a single block. */
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
