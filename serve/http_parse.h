/* http_parse.h - HTTP/1.x request-head parser and chunked-body decoder: pure functions over bytes, no
 * sockets, so that serve/http.c's event loop and a fuzz target share one implementation.
 *
 * lf_http_parse_head parses a complete request head (request line + header fields + blank line) in place:
 * it NUL-terminates the tokens inside buf and decodes the path and query arguments there, so every pointer
 * in lf_http_head points into buf and lives as long as those bytes. Limits are enforced while the head is
 * still incomplete, so a client cannot make the server buffer more than max_head bytes: a request line
 * longer than max_line is 414, a header section over max_head or more than LF_HTTP_MAX_HEADERS fields is
 * 431. Everything malformed is 400 (or 501 for a transfer coding other than chunked, 505 for a version
 * other than HTTP/1.0 / 1.1), with a message saying what was wrong. */
#ifndef LF_SERVE_HTTP_PARSE_H
#define LF_SERVE_HTTP_PARSE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LF_HTTP_MAX_HEADERS 100
#define LF_HTTP_MAX_ARGS 32

typedef struct lf_http_field {
    const char *name, *value; /* value: trimmed of surrounding spaces/tabs; "" when empty */
} lf_http_field;

typedef struct lf_http_head {
    const char *method;  /* token, e.g. "GET" */
    const char *target;  /* as sent, e.g. "/a%20b?x=1" (copy kept before decoding) */
    const char *path;    /* percent-decoded path, without the query */
    int minor;           /* HTTP/1.<minor> */
    size_t nfield;
    lf_http_field field[LF_HTTP_MAX_HEADERS];
    size_t narg;
    lf_http_field arg[LF_HTTP_MAX_ARGS]; /* decoded query arguments ('+' = space); "?flag" has value "" */
    int64_t content_length; /* -1 when absent */
    int chunked;            /* Transfer-Encoding: chunked */
    int keep_alive;         /* after this request (HTTP/1.1 default yes; "Connection: close"; 1.0 needs keep-alive) */
    int expect_continue;    /* Expect: 100-continue */
} lf_http_head;

/* Returns the head's length in bytes (through the blank line) when complete, 0 when more bytes are needed,
 * -1 on error with *status (400, 414, 431, 501, 505) and msg set. buf is modified only on success. */
int64_t lf_http_parse_head(char *buf, size_t len, size_t max_line, size_t max_head, lf_http_head *h, int *status,
                           char *msg, size_t msg_cap);

/* Case-insensitive field lookup: the first field of that name, NULL if none. */
const char *lf_http_head_field(const lf_http_head *h, const char *name);

/* Chunked transfer-coding decoder (RFC 9112 7.1): chunk extensions and trailer fields are read and ignored. */
typedef struct lf_http_chunked {
    int state;          /* internal */
    uint64_t left;      /* bytes left in the current chunk */
    size_t line;        /* bytes of the current size/trailer line (bounded) */
    int done;           /* the last chunk and trailers were read */
} lf_http_chunked;

/* Feed in[0..n): decoded data is appended through out(user, data, len) (which may drop it). Returns the
 * bytes consumed (stops right after the final CRLF, so what follows is the next request), or -1 on a
 * malformed stream with msg set. */
int64_t lf_http_chunked_feed(lf_http_chunked *c, const char *in, size_t n,
                             void (*out)(void *user, const char *data, size_t len), void *user, char *msg,
                             size_t msg_cap);

#ifdef __cplusplus
}
#endif
#endif
