/* http.h - engine-agnostic HTTP/1.1 server (our own, over epoll): a routing table (method + path pattern ->
 * handler callback), request bodies accumulated up to a size cap (413 before reading the rest when
 * Content-Length is over it), whole responses, and streamed chunked responses fed from any thread.
 *
 * Threads: one I/O thread owns every socket: it accepts, reads heads and bodies under deadlines (408 for a
 * head slower than header_timeout_ms or a body slower than body_timeout_ms), parses, routes (404/405 there)
 * and writes. Handlers of ordinary routes run on a pool of at most max_workers threads, after the whole
 * body arrived; they may block, and must return. Inline routes (lf_http_route_inline) run on the I/O
 * thread and must not block: /ping stays answered whatever the workers and slow clients do. Connections
 * beyond max_connections are still accepted into a reserve (max(256, max_connections / 2)) where inline
 * routes are served and everything else is answered 503; only past the reserve do new connections wait in
 * the kernel's listen backlog. Idle keep-alive connections are closed first when the table is full.
 * A streamed response is fed by a producer (the engine thread) through lf_http_stream_push; a client
 * that goes away is noticed at once (EPOLLRDHUP) even while the producer is silent: the stream is then
 * flagged cancelled (lf_http_stream_cancelled, the on_cancel callback, LF_EBUSY from push) so the engine
 * can free the sequence.
 * Ownership: routes borrow `user`; a request and everything reachable from it is borrowed for the handler
 * call only; a response body passed to lf_http_respond is copied. A stream is reference counted: the
 * producer's reference ends with lf_http_stream_close (exactly once), the server's when the response is
 * done, whichever is last frees it. Every error the server itself sends (400, 404, 405, 408, 413, 414,
 * 431, 500, 501, 503, 505) has a JSON body {"error", "code"}; no input crashes the server. */
#ifndef LF_SERVE_HTTP_H
#define LF_SERVE_HTTP_H

#include <stddef.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LF_HTTP_POLL_MS 50      /* how often a blocking handler should look at lf_http_client_gone */
#define LF_HTTP_MAX_PARAMS 8    /* {name} captures in one route pattern */

typedef struct lf_http_server lf_http_server;
typedef struct lf_http_request lf_http_request;
typedef struct lf_http_response lf_http_response;
typedef struct lf_http_stream lf_http_stream;

/* Fill resp with lf_http_respond* (a handler that sets nothing answers 500). */
typedef void (*lf_http_handler)(void *user, const lf_http_request *req, lf_http_response *resp);

typedef struct lf_http_params {
    const char *host;               /* IPv4 or IPv6 literal to bind; default "0.0.0.0" */
    int port;                       /* 0 = any free port (read back with lf_http_port); default 8080 */
    size_t max_body_bytes;          /* 413 above; default 6291456 (SageMaker's cap) */
    unsigned max_connections;       /* concurrent connections served in full; default 1024 */
    unsigned idle_timeout_s;        /* close an idle keep-alive connection (or a stalled write) after this; 75 */
    int header_timeout_ms;          /* a request head must arrive within this (408 after); default 10000 */
    int body_timeout_ms;            /* a request body must arrive within this (408 after); default 60000 */
    unsigned max_workers;           /* handler threads (started on demand); default 256 */
    int stream_idle_timeout_ms;     /* end a stream whose producer is silent this long; 0 = never; default 0 */
    size_t stream_buffer_max;       /* bytes queued for a slow client before the stream is cancelled; 16 MiB */
} lf_http_params;

lf_http_params lf_http_default_params(void);

/* Create (not yet listening). Add routes, then lf_http_start. */
lf_status lf_http_create(const lf_http_params *p, lf_http_server **out, lf_err *err);
/* method: "GET", "POST", ..., or "*" for any (HEAD is served by GET routes). pattern: "/path/{name}/x":
 * literal segments and {name} segments that match one non-empty segment. First added match wins. A path
 * that matches with another method is answered 405 with an Allow header; no match is 404. Only before
 * lf_http_start. */
lf_status lf_http_route(lf_http_server *s, const char *method, const char *pattern, lf_http_handler h, void *user,
                        lf_err *err);
/* Same, for a handler that runs on the I/O thread: it must answer at once and never block (health checks). */
lf_status lf_http_route_inline(lf_http_server *s, const char *method, const char *pattern, lf_http_handler h,
                               void *user, lf_err *err);
lf_status lf_http_start(lf_http_server *s, lf_err *err);
/* The bound port (the real one when params.port was 0); 0 before start. */
int lf_http_port(const lf_http_server *s);
/* Non-zero once lf_http_stop began: long handlers may poll it to finish early. */
int lf_http_stopping(const lf_http_server *s);
/* Requests between their first byte and the end of their response (streams included). */
int lf_http_in_flight(lf_http_server *s);
/* Stop accepting connections, let in-flight requests finish for up to deadline_ms (new requests on open
 * keep-alive connections get 503), then cancel the streams still running and close every connection.
 * Handlers still running block the final join: they must return. Idempotent. */
void lf_http_stop(lf_http_server *s, int deadline_ms);
/* Stops (deadline 0) if needed and frees. NULL is a no-op. */
void lf_http_free(lf_http_server *s);

/* ---- request (borrowed for the duration of the handler call) ---- */
const char *lf_http_method(const lf_http_request *r);
const char *lf_http_path(const lf_http_request *r); /* decoded path without the query string */
/* Body bytes (NUL-terminated for convenience; may contain NULs); "" when there is none. */
const char *lf_http_body(const lf_http_request *r, size_t *len);
/* Header value (name case-insensitive), NULL when absent. */
const char *lf_http_header(const lf_http_request *r, const char *name);
/* Decoded query argument, NULL when absent ("" for "?flag"). */
const char *lf_http_query(const lf_http_request *r, const char *name);
/* Non-zero when the client closed or reset its connection (a peek at the socket; call it from the handler's
 * own thread, e.g. while a long handler waits, so it can stop working for a client that is gone). */
int lf_http_client_gone(const lf_http_request *r);
/* Value of a {name} segment of the matched route pattern, NULL if the pattern has none. */
const char *lf_http_param(const lf_http_request *r, const char *name);

/* ---- response (from the handler, on its thread) ---- */
/* Whole response; body copied. content_type NULL = "application/json". Replaces an earlier respond. */
lf_status lf_http_respond(lf_http_response *r, int status, const char *content_type, const char *body, size_t len);
/* JSON error body {"error": message, "code": status}. */
lf_status lf_http_respond_error(lf_http_response *r, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Extra response header (copied); Content-Type is set by respond. */
lf_status lf_http_add_header(lf_http_response *r, const char *name, const char *value);
/* Answer with a chunked stream. Returns the producer's reference (NULL on out of memory: the request is
 * then answered 500). Hand it to any thread; it must call lf_http_stream_close once. */
lf_http_stream *lf_http_respond_stream(lf_http_response *r, int status, const char *content_type);

/* ---- stream producer side (any thread) ---- */
/* Queue bytes for the client (copied). LF_EBUSY when the stream is cancelled (client gone, server
 * stopping, or more than stream_buffer_max bytes waiting): stop producing and close. */
lf_status lf_http_stream_push(lf_http_stream *s, const char *data, size_t len);
/* Non-zero once cancelled. */
int lf_http_stream_cancelled(lf_http_stream *s);
/* fn(user) runs once, on an HTTP thread, when the stream is cancelled before the producer closed it (not
 * when the producer itself hits LF_EBUSY in push); immediately on this thread if already cancelled. It
 * must not call back into this stream except lf_http_stream_cancelled. */
void lf_http_stream_on_cancel(lf_http_stream *s, void (*fn)(void *user), void *user);
/* End of data: the connection sends what is queued, then the final chunk. Drops the producer's
 * reference: s must not be used afterwards. */
void lf_http_stream_close(lf_http_stream *s);

#ifdef __cplusplus
}
#endif
#endif
