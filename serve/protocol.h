/* protocol.h - SageMaker /invocations request and response JSON: the LMI/TGI generate body and the OpenAI
 * chat body parsed into a typed lf_gen_request, adapter choice from SageMaker headers, and builders for
 * non-streaming, streaming (JSON lines or SSE), OpenAI chat.completion(.chunk) and error bodies.
 *
 * Invariants: parsing never crashes on hostile input; every failure returns a non-LF_OK status with an
 * HTTP status (400 malformed JSON or wrong types, 413 body over the size limit, checked before parsing,
 * 422 invalid values or unsupported options, 404 unknown adapter) and a message that names the field
 * ("parameters.top_p must be in (0, 1], got 1.5").
 * Every key is either understood or refused: an unknown key (of the body, of "parameters", of
 * "stream_options") is a 422 naming it; a known option we do not implement (watermark, num_beams, best_of,
 * n, top_n_tokens, logit_bias, grammar, ...) is a 422 naming it unless it carries its no-op value
 * (watermark: false, num_beams: 1, ...), which clients send as defaults. A key whose value is null counts as
 * absent (clients send null for "unset"), unknown keys included. The generation parameters are the same on
 * both bodies (under "parameters" in the generate body, at the top level of the chat body); only the
 * length, sampling-switch and output options differ per body (see lf_gen_params). The list is in
 * docs/serving.md ("Generation parameters"). Bodies nested deeper than limits.max_depth are
 * rejected by a pre-scan before jansson recurses; raw NUL bytes, \u0000 escapes and invalid UTF-8 are 400.
 * A parsed request holds only NUL-free, valid UTF-8 strings. Builders accept any bytes as generated text:
 * invalid UTF-8 is replaced with U+FFFD, so the output is always valid JSON.
 * Ownership: lf_gen_request owns every string and JSON reference in it (lf_proto_request_free). Builders
 * borrow their inputs and return malloc'd NUL-terminated text the caller frees (NULL on out of memory). */
#ifndef LF_SERVE_PROTOCOL_H
#define LF_SERVE_PROTOCOL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LF_PROTO_MAX_BODY_BYTES ((size_t)6291456) /* SageMaker InvokeEndpoint body cap (6 MB) */
#define LF_PROTO_MAX_DEPTH 64

typedef struct lf_proto_limits {
    size_t max_body_bytes;           /* 413 above this; default LF_PROTO_MAX_BODY_BYTES */
    int max_depth;                   /* nesting of arrays/objects; default 64 */
    int64_t max_new_tokens;          /* upper bound for max_new_tokens / max_tokens; default 4096 */
    int64_t default_max_new_tokens;  /* generate body without max_new_tokens; default 30 (LMI) */
    int64_t default_chat_max_tokens; /* chat body without max_tokens; 0 = max_new_tokens (default) */
    size_t max_inputs;               /* length of an "inputs" list; default 64 */
    size_t max_stop;                 /* number of stop strings; default 16 */
    size_t max_stop_bytes;           /* length of one stop string; default 256 */
    size_t max_stop_token_ids;       /* length of stop_token_ids; default 64 */
    int max_top_logprobs;            /* OpenAI top_logprobs upper bound; default 20 */
} lf_proto_limits;

lf_proto_limits lf_proto_default_limits(void);

typedef enum lf_req_kind { LF_REQ_GENERATE = 0, LF_REQ_CHAT = 1 } lf_req_kind;

typedef struct lf_gen_params {
    int64_t max_new_tokens;    /* 1..limits.max_new_tokens */
    double temperature;        /* effective: 0 = greedy (see do_sample) */
    int do_sample;             /* 1 when sampling. Generate body: do_sample:false -> greedy; do_sample:true ->
                                * sample at temperature (default 1.0); absent -> sample only when temperature
                                * (> 0), top_k (> 0), top_p (< 1), min_p (> 0) or typical_p (< 1) is given
                                * (TGI/LMI: a warper turns sampling on). Chat: temperature default 1.0 samples,
                                * 0 is greedy. */
    int64_t top_k;             /* 0 = off (-1 accepted as off) */
    double top_p;              /* (0, 1]; 1 = off */
    double min_p;              /* [0, 1]; 0 = off (vLLM: drop tokens below min_p x the top probability) */
    double typical_p;          /* (0, 1]; 1 = off (TGI / HF typical decoding) */
    double repetition_penalty; /* > 0; 1 = off (HF, over prompt + generated tokens) */
    double presence_penalty;   /* [-2, 2]; 0 = off (OpenAI / vLLM, over the generated tokens) */
    double frequency_penalty;  /* [-2, 2]; 0 = off (OpenAI / vLLM, over the generated tokens) */
    uint64_t seed;             /* valid when has_seed */
    int has_seed;
    char **stop;               /* [n_stop] non-empty UTF-8 strings: "stop" and "stop_sequences" merged */
    size_t n_stop;
    int32_t *stop_token_ids;   /* [n_stop_token_ids] ids >= 0 that end the sequence when generated (vLLM); the
                                * id's text is not part of the output (like EOS); finish reason "stop"
                                * (OpenAI) / "stop_sequence" (generate body) */
    size_t n_stop_token_ids;
    int ignore_eos;            /* do not stop at the model's EOS ids: generate until max_new_tokens (vLLM) */
    int64_t truncate;          /* > 0: keep only the last `truncate` prompt tokens (TGI "truncate", vLLM
                                * "truncate_prompt_tokens"); 0 = off */
    int return_full_text;      /* generate: prepend the input to generated_text */
    int details;               /* generate: include details (always on for the final stream line) */
    int logprobs;              /* chat: return per-token logprobs */
    int top_logprobs;          /* chat: 0..limits.max_top_logprobs alternatives per token (needs logprobs) */
} lf_gen_params;

typedef enum lf_adapter_source {
    LF_ADAPTER_FROM_NONE = 0,       /* base model */
    LF_ADAPTER_FROM_HEADER_ID,      /* X-Amzn-SageMaker-Adapter-Identifier */
    LF_ADAPTER_FROM_HEADER_IC,      /* X-Amzn-SageMaker-Inference-Component naming a loaded adapter */
    LF_ADAPTER_FROM_HEADER_TARGET,  /* X-Amzn-SageMaker-Target-Model naming a loaded adapter */
    LF_ADAPTER_FROM_BODY,           /* "adapters" or parameters.adapter_id */
    LF_ADAPTER_FROM_MODEL,          /* chat "model" naming a loaded adapter (vLLM style) */
} lf_adapter_source;

typedef struct lf_gen_request {
    lf_req_kind kind;
    size_t n_inputs;            /* N >= 1 prompts (chat: 1) */
    char **inputs;              /* generate: [N] prompts; chat: NULL (render messages with the template) */
    int inputs_is_list;         /* generate: "inputs" was a list -> answer with a list */
    json_t *messages;           /* chat: array of {role, content, ...}; content of text parts flattened to a
                                 * string (parts joined by "\n"); new reference owned here; NULL for generate */
    json_t *tools;              /* chat: "tools" array for the template, owned reference, or NULL */
    char *model;                /* chat: "model" or NULL */
    int include_usage;          /* chat: stream_options.include_usage */
    int stream;
    lf_gen_params params;
    char **body_adapters;       /* as given in the body: 1 (applies to every input) or N names; "" = base */
    size_t n_body_adapters;
    /* filled by lf_proto_resolve_adapters: [N] adapter per input, "" = base model */
    char **adapters;
    lf_adapter_source adapter_source;
} lf_gen_request;

/* Parse and validate a request body. On failure *http_status is 400/413/422 and err names the field; on
 * success *http_status = 200 and *out is a new request (lf_proto_request_free). lim NULL = defaults.
 * Status codes returned: LF_EFORMAT (400), LF_EINVAL (413, 422), LF_EUNSUPPORTED (422), LF_ENOMEM (500). */
lf_status lf_proto_parse(const char *body, size_t len, const lf_proto_limits *lim, lf_gen_request **out,
                         int *http_status, lf_err *err);
/* NULL is a no-op. */
void lf_proto_request_free(lf_gen_request *r);

/* Returns non-zero when `name` is a loaded adapter. */
typedef int (*lf_proto_is_loaded_fn)(void *user, const char *name);

typedef struct lf_proto_headers {   /* borrowed header values, NULL when absent */
    const char *adapter_identifier;  /* X-Amzn-SageMaker-Adapter-Identifier */
    const char *inference_component; /* X-Amzn-SageMaker-Inference-Component */
    const char *target_model;        /* X-Amzn-SageMaker-Target-Model */
} lf_proto_headers;

/* Choose the adapter of every input: Adapter-Identifier header (it overrides the body, as LMI), else the
 * Inference-Component or Target-Model header when it names a loaded adapter (Target-Model also tried as
 * its base name without ".tar.gz"), else the body's "adapters"/parameters.adapter_id, else (chat) a
 * "model" naming a loaded adapter, else the base model (""). An Adapter-Identifier or body adapter that
 * is_loaded rejects is a 404 ("adapter 'x' ... was not found"). With is_loaded NULL those names are taken
 * as given and the Inference-Component / Target-Model / model hints are ignored (they cannot be told
 * apart from the base model's names). Fills r->adapters ([n_inputs], "" = base) and r->adapter_source. */
lf_status lf_proto_resolve_adapters(lf_gen_request *r, const lf_proto_headers *h, lf_proto_is_loaded_fn is_loaded,
                                    void *user, int *http_status, lf_err *err);

/* ---- responses ---- */

typedef enum lf_finish_reason {
    LF_FINISH_NONE = 0, /* still generating */
    LF_FINISH_LENGTH,   /* max_new_tokens reached */
    LF_FINISH_EOS,      /* end-of-sequence token */
    LF_FINISH_STOP,     /* a stop sequence matched */
    LF_FINISH_ERROR,    /* generation failed */
} lf_finish_reason;

/* LMI/TGI name ("length", "eos_token", "stop_sequence", "error") or OpenAI name ("length", "stop",
 * "stop", "error"); NULL for LF_FINISH_NONE. */
const char *lf_proto_finish_name(lf_finish_reason r, int openai);

typedef struct lf_gen_token {
    int32_t id;                    /* -1 for the error line of a stream */
    const char *text;              /* text_len bytes, any bytes (sanitized to UTF-8 on output) */
    size_t text_len;
    float log_prob;
    int special;
    const struct lf_gen_token *top; /* [n_top] alternatives for OpenAI top_logprobs, or NULL */
    size_t n_top;
} lf_gen_token;

typedef struct lf_gen_result {
    const char *text;          /* generated text (text_len bytes), without the prompt */
    size_t text_len;
    const char *prompt;        /* the input, prepended when lf_proto_out.return_full_text; may be NULL */
    size_t prompt_len;
    lf_finish_reason finish;
    int64_t prompt_tokens;
    int64_t generated_tokens;
    uint64_t seed;             /* reported when has_seed */
    int has_seed;
    const lf_gen_token *tokens; /* [n_tokens] for details / logprobs, may be NULL */
    size_t n_tokens;
    const char *error;         /* message when finish == LF_FINISH_ERROR */
} lf_gen_result;

typedef enum lf_stream_format {
    LF_STREAM_JSONLINES = 0, /* application/jsonlines: one JSON object + "\n" per event (LMI default) */
    LF_STREAM_SSE = 1,       /* text/event-stream: "data: " + JSON + "\n\n" (TGI, OpenAI) */
} lf_stream_format;

typedef struct lf_proto_out {
    int details;           /* add "details" to non-stream results (final stream lines always have it) */
    int tgi_compat;        /* TGI shapes: non-stream answer is a list, stream tokens use "logprob" + "index",
                            * details carry "prefill": [] */
    int return_full_text;  /* prepend result.prompt to generated_text */
    lf_stream_format format;
} lf_proto_out;

/* SSE when Accept asks for text/event-stream or tgi_compat is set; otherwise JSON lines. */
lf_stream_format lf_proto_stream_format_for(const char *accept, int tgi_compat);
/* "application/jsonlines" or "text/event-stream". */
const char *lf_proto_stream_content_type(lf_stream_format f);
/* Frame one JSON text for the stream: "json\n" or "data: json\n\n". */
char *lf_proto_frame(lf_stream_format f, const char *json, size_t len, size_t *out_len);

/* Non-streaming generate answer for n results: {"generated_text", "details"?} when n == 1 and not as_list,
 * else a list of them (as_list: the "inputs" were a list; tgi_compat: always a list). A result whose
 * finish is LF_FINISH_ERROR also carries "error". */
char *lf_proto_generate_body(const lf_gen_result *res, size_t n, int as_list, const lf_proto_out *o, size_t *len);

/* One framed stream event for a generated token: {"token": {id, text, log_prob, special}, "generated_text":
 * null, "details": null}. index: 1-based token index (used in tgi_compat). final != NULL makes it the last
 * event: generated_text and details filled from final. tok NULL: a token with id -1 and empty text (the
 * form of the final error line: final->finish = LF_FINISH_ERROR adds "error"). */
char *lf_proto_stream_token(const lf_gen_token *tok, size_t index, const lf_gen_result *final, const lf_proto_out *o,
                            size_t *len);
/* The mid-stream error line: token id -1, generated_text null, details.finish_reason "error", plus
 * "error": msg and "code": code. generated_tokens is reported in details. */
char *lf_proto_stream_error(const char *msg, int code, int64_t generated_tokens, const lf_proto_out *o, size_t *len);

/* Error body {"error": msg, "code": status, "error_type": ...} (not framed). */
char *lf_proto_error_body(int status, const char *msg, size_t *len);

/* ---- OpenAI chat ---- */

typedef struct lf_chat_meta {
    const char *id;     /* "chatcmpl-..." chosen by the caller */
    int64_t created;    /* unix seconds */
    const char *model;  /* echoed "model" (request's, else the served model's name) */
} lf_chat_meta;

/* {"id", "object": "chat.completion", "created", "model", "choices": [{index 0, message {role assistant,
 * content}, logprobs null|{content: [...]}, finish_reason}], "usage": {prompt, completion, total}}.
 * logprobs: include res->tokens as logprobs (with their top alternatives). A failed result (finish
 * LF_FINISH_ERROR) is not a chat answer: use lf_proto_error_body. */
char *lf_proto_chat_body(const lf_chat_meta *m, const lf_gen_result *res, int logprobs, size_t *len);

typedef struct lf_chat_delta {
    const char *text;            /* new content (text_len bytes), may be NULL */
    size_t text_len;
    int first;                   /* first chunk: delta carries role "assistant" */
    const lf_gen_token *tokens;  /* [n_tokens] tokens behind this text, for logprobs; NULL = logprobs null */
    size_t n_tokens;
    lf_finish_reason finish;     /* LF_FINISH_NONE until the last chunk */
    const char *error;           /* with LF_FINISH_ERROR: adds "error": {"message", "code": 500} */
    const lf_gen_result *usage;  /* non-NULL: add "usage" from its token counts (final chunk) */
} lf_chat_delta;

/* One framed chat.completion.chunk. */
char *lf_proto_chat_chunk(const lf_chat_meta *m, const lf_chat_delta *d, lf_stream_format f, size_t *len);
/* The SSE terminator "data: [DONE]\n\n" (static; send only in SSE format). */
const char *lf_proto_sse_done(void);

#ifdef __cplusplus
}
#endif
#endif
