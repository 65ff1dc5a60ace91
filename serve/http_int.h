/* http_int.h - private to serve/http.c (the I/O loop, connections, workers) and serve/http_api.c (streams,
 * responses, routing, request accessors): the shared structures and the few helpers both use. */
#ifndef LF_SERVE_HTTP_INT_H
#define LF_SERVE_HTTP_INT_H

#include <netinet/in.h> /* INET6_ADDRSTRLEN */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "serve/http.h"
#include "serve/http_parse.h"

/* =============================== types =============================== */

typedef struct route {
    char *method;   /* "GET", ... or "*" */
    char *pattern;
    int nseg;
    char **seg;     /* [nseg] literal text, or the parameter name when is_param */
    int *is_param;  /* [nseg] */
    lf_http_handler h;
    void *user;
    int inline_;    /* runs on the I/O thread */
} route;

enum { C_FREE = 0, C_HEAD, C_BODY, C_QUEUED, C_WRITE, C_STREAM, C_LINGER };

typedef struct conn conn;

struct lf_http_request {
    conn *c;
    const char *method, *path, *body;
    size_t body_len;
    int nparam;
    const char *pname[LF_HTTP_MAX_PARAMS];
    const char *pval[LF_HTTP_MAX_PARAMS];
};

typedef struct hdr {
    char *name, *value;
} hdr;

struct lf_http_response {
    lf_http_server *srv;
    int set;
    int status;
    char *ctype;
    char *body;
    size_t len;
    hdr *h;
    size_t nh;
    lf_http_stream *stream;
};

struct lf_http_stream {
    pthread_mutex_t mu;
    char *buf;             /* pending bytes at [head, head + len) */
    size_t head, len, cap, max;
    int closed;            /* producer is done */
    int cancelled;
    int notified;          /* on_cancel ran, or must not run (producer hit LF_EBUSY itself) */
    int refs;
    void (*on_cancel)(void *);
    void *cancel_user;
    lf_http_server *srv;
    int64_t slot;          /* the connection it feeds, -1 until attached and after detach */
    uint32_t gen;
    int idle_ms;
    int64_t last_push_ms;
};

struct conn {
    int fd;
    uint32_t gen;
    int state;
    int overflow;          /* accepted over max_connections */
    int served;            /* requests answered on this connection */
    unsigned events;       /* epoll interest now; ~0u = not registered */
    int64_t t_start;       /* accept, or the first byte of the current request */
    int64_t t_io;          /* last progress */
    int64_t t_body;        /* end of head */
    int64_t t_linger;
    char *rbuf;            /* unprocessed input */
    size_t rlen, rcap;
    char *hbuf;            /* the current request's head (lf_http_head points into it), then a path copy */
    size_t hlen, hcap;
    lf_http_head head;
    int is_head;           /* HEAD request */
    char *body;
    size_t blen, bcap;
    int64_t body_left;     /* Content-Length bytes still to read; -1 = chunked */
    lf_http_chunked ch;
    int too_big;
    char *wbuf;
    size_t wlen, woff, wcap;
    int keep_alive, close_after, counted, out_chunked;
    const route *rt;
    lf_http_request req;
    lf_http_response resp;
    lf_http_stream *stream; /* attached stream (server's reference) */
    atomic_int gone;        /* client closed while a worker held the request */
    atomic_int worker_done;
};

struct lf_http_server {
    lf_http_params p;
    char host[INET6_ADDRSTRLEN + 1];
    route *routes;
    size_t nroutes;
    int port;
    int started, stopped;
    int lfd, ep, efd;
    int listening;          /* lfd in the epoll set with EPOLLIN */
    pthread_t loop;
    int loop_started;
    conn *conns;            /* [ncap] */
    size_t ncap, n_normal, n_overflow, overflow_cap;
    int64_t *freel;         /* [ncap] free slots */
    size_t nfree;
    atomic_int stopping;    /* no new requests */
    atomic_int hard_stop;   /* cut everything */
    pthread_mutex_t mu;     /* guards in_flight */
    pthread_cond_t cv;      /* signalled when in_flight drops */
    int in_flight;
    /* workers */
    pthread_mutex_t qmu;
    pthread_cond_t qcv;
    int64_t *jobs;          /* ring [ncap] of slots */
    size_t qhead, qlen;
    pthread_t *workers;     /* [p.max_workers] */
    size_t nworkers, idle_workers;
    int quit_workers;
    /* wake-ups for the I/O thread (worker done, stream data) */
    pthread_mutex_t wmu;
    uint64_t *wake;         /* [ncap] slot | gen << 32 */
    size_t nwake;
    unsigned char *wflag;   /* [ncap] in the wake list */
    int64_t last_sweep;
    int64_t accept_pause_until; /* out of file descriptors: retry accepting after this */
};


/* ---- shared helpers ---- */
int64_t lf_http__now_ms(void);
/* Ask the I/O thread to look at a connection slot (worker done, stream news). Any thread. */
void lf_http__wake_slot(lf_http_server *s, int64_t slot, uint32_t gen);
/* {"error": msg, "code": status}, malloc'd (NULL on out of memory); *len = its length. */
char *lf_http__error_json(int status, const char *msg, size_t *len);
void lf_http__stream_release(lf_http_stream *st);
/* Mark cancelled (st->mu held); returns the on_cancel callback to run after unlocking, or NULL. */
void (*lf_http__cancel_locked(lf_http_stream *st, void **user))(void *);
void lf_http__response_clear(lf_http_response *r);
void lf_http__response_free(lf_http_response *r);
void lf_http__route_free(route *rt);
int lf_http__split_path(char *s, char **seg, int max);
int lf_http__route_matches_path(const route *rt, char **seg, int n, lf_http_request *req);
int lf_http__method_matches(const route *rt, const char *method);

#define MAX_SEGMENTS 32

#endif
