/* server.h - the SageMaker-compatible HTTP endpoint of `loraforge serve`: routes (ping, invocations, OpenAI
 * chat, adapter and MME model management, metrics) over serve/http.h, turning requests into engine
 * submissions and engine callbacks into whole or streamed responses.
 *
 * Lifecycle: lf_server_create starts listening at once (GET /ping answers 503 "loading" within
 * milliseconds, as SageMaker wants) before the model exists; lf_server_attach hands it the model,
 * tokenizer, chat template, engine and registry; lf_server_set_ready turns /ping to 200 and opens the
 * generation and adapter routes; lf_server_drain turns them back to 503 (shutdown); lf_server_stop stops
 * accepting, lets in-flight requests finish until the deadline, then cancels what is left.
 *
 * Invariants: every request is answered with a JSON body ({"error", "code"} for failures) and never
 * crashes the server; every answered request is counted by lf_metrics_request(route, status, seconds);
 * /ping only reads an atomic (no lock shared with the engine). A request's registry references are
 * released exactly once (by the engine's release_adapter callback, or by the server when submit fails).
 *
 * Ownership and threads: the server borrows everything given to create/attach (metrics, model, tokenizer,
 * template, template variables, engine, registry); they must outlive lf_server_stop. Free order: stop the
 * server, then cancel/free the engine, registry, model. create/attach/set_ready/drain/stop/free are called
 * from one controlling thread; handlers run on HTTP connection threads, callbacks on the engine thread. */
#ifndef LF_SERVE_SERVER_H
#define LF_SERVE_SERVER_H

#include <jansson.h>
#include <stddef.h>

#include "core/status.h"
#include "model/chat_template.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "serve/engine.h"
#include "serve/metrics.h"
#include "serve/protocol.h"
#include "serve/registry.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lf_server_options {
    const char *host;              /* bind address; default "0.0.0.0" (copied) */
    int port;                      /* 0 = any free port (lf_server_port); default 8080 */
    size_t max_body_bytes;         /* 413 above; default LF_PROTO_MAX_BODY_BYTES (6 MB) */
    unsigned max_connections;      /* HTTP connections served in full (more get 503 JSON, /ping still); 1024 */
    int header_timeout_ms;         /* a request head must arrive within this, else 408; default 10000 */
    int body_timeout_ms;           /* a request body must arrive within this, else 408; default 60000 */
    unsigned idle_timeout_s;       /* idle keep-alive connections are closed after this; 0 = 75 */
    unsigned http_threads;         /* handler threads, started on demand; default 256 */
    int tgi_compat;                /* TGI shapes: list answers, SSE streams */
    int force_sse;                 /* --stream-format sse: stream SSE whatever Accept says */
    const char *served_model_name; /* "model" of chat answers; default "loraforge" (copied) */
    int unload_timeout_ms;         /* DELETE /adapters|/models waits this long for in-flight requests; 30000 */
} lf_server_options;

lf_server_options lf_server_default_options(void);

typedef struct lf_server lf_server;

/* Build the routes and start listening (answers 503 to everything but /ping, /health and /metrics until
 * ready). metrics may be NULL (no counting; /metrics then answers 503). */
lf_status lf_server_create(const lf_server_options *o, lf_metrics *metrics, lf_server **out, lf_err *err);
/* The bound port. */
int lf_server_port(const lf_server *s);

/* Hand over the serving objects (all borrowed). tpl may be NULL (chat requests then answer 422);
 * tpl_vars: the template's special-token variables (bos_token, ...) or NULL. reg may be NULL (no adapters:
 * adapter routes answer 503). The generation limits come from lf_engine_get_params(e). Only once. */
lf_status lf_server_attach(lf_server *s, lf_model *m, const lf_tokenizer *tok, const lf_chat_template *tpl,
                           const json_t *tpl_vars, lf_engine *e, lf_registry *reg, lf_err *err);
/* /ping -> 200; generation and adapter routes open. Needs attach. */
void lf_server_set_ready(lf_server *s);
/* /ping -> 503 and new generation / adapter requests 503 (in-flight ones continue); calls lf_engine_drain. */
void lf_server_drain(lf_server *s);
/* Drain, stop accepting connections, wait up to deadline_ms for in-flight requests, then cancel the rest:
 * at deadline_ms - min(deadline_ms / 10, 2 s) the engine is asked to cancel every request still running
 * (streams end with their error line, whole requests answer 503; the engine must still be running), and
 * at deadline_ms the HTTP layer cuts off whatever is left. Returns when every handler returned.
 * Idempotent. */
void lf_server_stop(lf_server *s, int deadline_ms);
/* Stops (deadline 0) if needed and frees. NULL is a no-op. */
void lf_server_free(lf_server *s);

#ifdef __cplusplus
}
#endif
#endif
