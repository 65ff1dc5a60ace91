/* tokenizer.h - Hugging Face tokenizer.json (BPE family) encode/decode, matching `tokenizers` 0.19 ids.
 *
 * Supported components (anything else fails at load, naming the type):
 *   model          BPE (vocab, merges as "a b" or ["a","b"], byte_fallback, fuse_unk, unk_token, ignore_merges,
 *                  continuing_subword_prefix, end_of_word_suffix; dropout must be null or 0)
 *   normalizer     Sequence, Prepend, Replace (String|Regex), NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents
 *   pre_tokenizer  Sequence, Split (String|Regex, all behaviors, invert), ByteLevel, Metaspace, Digits,
 *                  Punctuation, Whitespace, WhitespaceSplit
 *   post_processor TemplateProcessing (single template), ByteLevel, Sequence, BertProcessing, RobertaProcessing
 *   decoder        ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, BPEDecoder, Sequence
 *   added tokens   special or not, lstrip/rstrip/single_word/normalized, leftmost-longest matching; non-normalized
 *                  ones on the raw text, normalized ones on the normalized pieces (tokenizers' AddedVocabulary)
 * Regexes run on PCRE2 (UTF + UCP) where tokenizers uses Oniguruma; the GPT-2 / Llama-3 / Qwen2 patterns agree.
 *
 * Loading: lf_tokenizer_load takes a model directory (tokenizer.json, and when present tokenizer_config.json and
 * special_tokens_map.json) or the path of a tokenizer.json (sibling config files are read from its directory).
 * tokenizer_config.json supplies bos_token/eos_token (string or {"__type":"AddedToken","content":...}),
 * add_bos_token/add_eos_token and split_special_tokens. For tokenizer_class Llama/CodeLlama/Gemma tokenizers, as
 * transformers' update_post_processor does, the post-processor becomes [BOS if add_bos_token] $A [EOS if
 * add_eos_token] (defaults true/false). split_special_tokens:true makes special added tokens plain text.
 *
 * Invalid UTF-8 input: each maximal invalid byte sequence is replaced by U+FFFD before encoding (Rust
 * String::from_utf8_lossy, Python bytes.decode("utf-8", "replace")); `tokenizers` itself only accepts str.
 * Decoded text is always valid UTF-8 (the decoders replace invalid bytes with U+FFFD).
 *
 * Thread safety: a loaded tokenizer is immutable; encode/decode/id lookups may run concurrently on one
 * tokenizer (all scratch is per call). A stream is single-threaded. */
#ifndef LF_MODEL_TOKENIZER_H
#define LF_MODEL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lf_tokenizer lf_tokenizer;
typedef struct lf_tokenizer_stream lf_tokenizer_stream;

/* Load from a model directory or a tokenizer.json path. *out owned by the caller (lf_tokenizer_free). */
lf_status lf_tokenizer_load(const char *path_or_dir, lf_tokenizer **out, lf_err *err);
/* NULL is a no-op. */
void lf_tokenizer_free(lf_tokenizer *t);

/* text[len] (any bytes; see invalid UTF-8 above) -> *ids [*n] (malloc'd, caller frees; non-NULL even when
 * *n == 0). add_special: apply the post-processor (e.g. BOS), as tokenizers' add_special_tokens. */
lf_status lf_tokenizer_encode(const lf_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids,
                              int64_t *n, lf_err *err);
/* ids[n] -> *text [*len] (malloc'd, NUL-terminated, caller frees). Unknown ids are skipped, as tokenizers does;
 * skip_special drops special added tokens. */
lf_status lf_tokenizer_decode(const lf_tokenizer *t, const int32_t *ids, int64_t n, int skip_special, char **text,
                              size_t *len, lf_err *err);

/* max id + 1 over the model vocab and the added tokens (the embedding rows a model needs). */
int64_t lf_tokenizer_vocab_size(const lf_tokenizer *t);
/* Added tokens first, then the model vocab; -1 when absent. */
int32_t lf_tokenizer_token_to_id(const lf_tokenizer *t, const char *tok, size_t len);
/* Borrowed token string (not NUL-terminated in general: use *len) or NULL for an unknown id. */
const char *lf_tokenizer_id_to_token(const lf_tokenizer *t, int32_t id, size_t *len);
/* 1 when id is a special added token. */
int lf_tokenizer_is_special(const lf_tokenizer *t, int32_t id);
/* From tokenizer_config.json / special_tokens_map.json; -1 when not configured. */
int32_t lf_tokenizer_bos_id(const lf_tokenizer *t);
int32_t lf_tokenizer_eos_id(const lf_tokenizer *t);

/* Incremental decoding: push ids one at a time and get only complete text; the concatenation of every piece
 * returned by push and the final flush equals lf_tokenizer_decode of all the ids. The stream borrows t. */
lf_status lf_tokenizer_stream_create(const lf_tokenizer *t, int skip_special, lf_tokenizer_stream **out, lf_err *err);
/* *piece (borrowed, valid until the next call on s) may be empty when the text so far ends mid-character. */
lf_status lf_tokenizer_stream_push(lf_tokenizer_stream *s, int32_t id, const char **piece, size_t *len, lf_err *err);
/* Whatever is still held back (e.g. a trailing incomplete byte sequence, as U+FFFD). */
lf_status lf_tokenizer_stream_flush(lf_tokenizer_stream *s, const char **piece, size_t *len, lf_err *err);
/* NULL is a no-op. */
void lf_tokenizer_stream_free(lf_tokenizer_stream *s);

#ifdef __cplusplus
}
#endif
#endif
