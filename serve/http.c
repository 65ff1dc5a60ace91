/* http.c - the HTTP/1.1 server behind serve/http.h: one epoll I/O thread owns every socket (accept, reads
 * with deadlines, writes, streams), a bounded pool of worker threads runs the blocking handlers, inline
 * routes (/ping) run on the I/O thread itself so no slow client or busy worker can delay them.
 *
 * Invariants: a connection slot belongs to the I/O thread except while its request is with a worker
 * (state C_QUEUED: the worker owns req/resp, the I/O thread only sets `gone`); every error the server
 * answers is JSON {"error", "code"}; a client that is too slow (header, body or write deadline) is
 * answered 408 or closed, never holds a thread; connections over max_connections still get an answer
 * (inline routes served, others 503) until the overflow reserve is used up, after which new connections
 * wait in the kernel's backlog instead of being reset. No allocation per event beyond request buffers. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4, POLLRDHUP */
#endif
#include "serve/http_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "serve/http_parse.h"

#define MAX_LINE 8192            /* request line; longer is 414 */
#define MAX_HEAD (64 * 1024)     /* request head; larger is 431 */
#define WRITE_HIGH (64 * 1024)   /* pull more stream data only below this many unsent bytes */
#define LINGER_MS 2000           /* after an error answer with Connection: close, read and drop for this long */
#define OVERFLOW_HEAD_MS 2000    /* an over-the-limit connection must send its head within this */
#define SWEEP_MS 50

/* =============================== small helpers =============================== */

int64_t lf_http__now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void abs_deadline(struct timespec *ts, int64_t ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

static int cond_init_monotonic(pthread_cond_t *cv) {
    pthread_condattr_t a;
    if (pthread_condattr_init(&a)) return -1;
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
    return rc;
}


static const char *reason(int status) {
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 424: return "Failed Dependency";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
    default: return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    }
}

static void in_flight_add(lf_http_server *s, int d) {
    pthread_mutex_lock(&s->mu);
    s->in_flight += d;
    if (d < 0) pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static uint64_t slot_key(const lf_http_server *s, const conn *c) {
    return (uint64_t)(c - s->conns) | ((uint64_t)c->gen << 32);
}

/* Ask the I/O thread to look at a slot (worker finished, stream has news). Any thread. */
void lf_http__wake_slot(lf_http_server *s, int64_t slot, uint32_t gen) {
    pthread_mutex_lock(&s->wmu);
    if (!s->wflag[slot]) {
        s->wflag[slot] = 1;
        s->wake[s->nwake++] = (uint64_t)slot | ((uint64_t)gen << 32);
    }
    pthread_mutex_unlock(&s->wmu);
    uint64_t one = 1;
    ssize_t w = write(s->efd, &one, sizeof one);
    (void)w; /* EAGAIN: the counter is already non-zero, the loop wakes anyway */
}

static void wake_loop(lf_http_server *s) {
    uint64_t one = 1;
    ssize_t w = write(s->efd, &one, sizeof one);
    (void)w;
}

/* =============================== connection I/O (I/O thread) =============================== */

static void set_events(lf_http_server *s, conn *c, unsigned ev) {
    if (c->events == ev) return;
    struct epoll_event e;
    memset(&e, 0, sizeof e);
    e.events = ev;
    e.data.u64 = slot_key(s, c) + 1; /* 0 = the listener / wake fd */
    int rc = c->events == ~0u ? epoll_ctl(s->ep, EPOLL_CTL_ADD, c->fd, &e) : epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &e);
    if (rc != 0) LF_LOG(LF_LOG_WARN, "http: epoll_ctl(fd %d): %s", c->fd, strerror(errno));
    c->events = ev;
}

static void unregister(lf_http_server *s, conn *c) {
    if (c->events != ~0u) epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
    c->events = ~0u;
}

static int wbuf_append(conn *c, const char *p, size_t n) {
    if (c->woff && c->woff == c->wlen) c->woff = c->wlen = 0;
    if (c->wlen + n > c->wcap) {
        if (c->woff) { /* compact before growing */
            memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
            c->wlen -= c->woff;
            c->woff = 0;
        }
        if (c->wlen + n > c->wcap) {
            size_t nc = c->wcap ? c->wcap : 4096;
            while (nc < c->wlen + n) nc *= 2;
            char *nb = realloc(c->wbuf, nc);
            if (!nb) return -1;
            c->wbuf = nb;
            c->wcap = nc;
        }
    }
    memcpy(c->wbuf + c->wlen, p, n);
    c->wlen += n;
    return 0;
}

static void request_done(lf_http_server *s, conn *c) {
    if (c->counted) {
        c->counted = 0;
        in_flight_add(s, -1);
    }
}

static void conn_close(lf_http_server *s, conn *c) {
    if (c->state == C_FREE) return;
    if (c->stream) {
        lf_http_stream *st = c->stream;
        void *user = NULL;
        pthread_mutex_lock(&st->mu);
        void (*fn)(void *) = NULL;
        if (!st->closed || st->len) fn = lf_http__cancel_locked(st, &user);
        st->slot = -1;
        pthread_mutex_unlock(&st->mu);
        if (fn) fn(user);
        lf_http__stream_release(st);
        c->stream = NULL;
    }
    lf_http__response_free(&c->resp);
    request_done(s, c);
    unregister(s, c);
    close(c->fd);
    free(c->rbuf);
    free(c->hbuf);
    free(c->body);
    free(c->wbuf);
    if (c->overflow) s->n_overflow--;
    else s->n_normal--;
    uint32_t gen = c->gen + 1;
    memset(c, 0, sizeof *c);
    c->gen = gen;
    c->fd = -1;
    c->state = C_FREE;
    c->events = ~0u;
    s->freel[s->nfree++] = c - s->conns;
}

/* Queue the head of a response. body_len < 0: streamed (chunked on HTTP/1.1, raw until close on 1.0). */
static int queue_head(lf_http_server *s, conn *c, int status, const char *ctype, int64_t body_len, const hdr *h,
                      size_t nh) {
    char date[64];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (atomic_load(&s->stopping) || c->overflow) c->close_after = 1;
    if (!c->keep_alive) c->close_after = 1;
    char head[1024];
    int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: %s\r\n", status, reason(status),
                     date, ctype ? ctype : "application/json");
    if (n < 0 || (size_t)n >= sizeof head) return -1;
    if (body_len >= 0) {
        n += snprintf(head + n, sizeof head - (size_t)n, "Content-Length: %lld\r\n", (long long)body_len);
    } else if (c->head.minor >= 1) {
        c->out_chunked = 1;
        n += snprintf(head + n, sizeof head - (size_t)n, "Transfer-Encoding: chunked\r\n");
    } else {
        c->close_after = 1; /* HTTP/1.0 stream: the end of the body is the end of the connection */
    }
    if (c->close_after) n += snprintf(head + n, sizeof head - (size_t)n, "Connection: close\r\n");
    else if (c->head.minor == 0) n += snprintf(head + n, sizeof head - (size_t)n, "Connection: keep-alive\r\n");
    if ((size_t)n >= sizeof head || wbuf_append(c, head, (size_t)n)) return -1;
    for (size_t i = 0; i < nh; i++) {
        if (wbuf_append(c, h[i].name, strlen(h[i].name)) || wbuf_append(c, ": ", 2) ||
            wbuf_append(c, h[i].value, strlen(h[i].value)) || wbuf_append(c, "\r\n", 2))
            return -1;
    }
    return wbuf_append(c, "\r\n", 2);
}

static void conn_flush(lf_http_server *s, conn *c);
static void *worker_main(void *arg);

/* A whole response; the connection then waits for its next request or closes. */
static void respond_whole(lf_http_server *s, conn *c, int status, const char *ctype, const char *body, size_t len,
                          const hdr *h, size_t nh) {
    if (queue_head(s, c, status, ctype, (int64_t)len, h, nh) || (!c->is_head && len && wbuf_append(c, body, len))) {
        LF_LOG(LF_LOG_ERROR, "http: out of memory queueing a response; closing the connection");
        conn_close(s, c);
        return;
    }
    c->state = C_WRITE;
    conn_flush(s, c);
}

static void respond_error(lf_http_server *s, conn *c, int status, const char *msg, int close_conn, const char *allow) {
    size_t len = 0;
    char *body = lf_http__error_json(status, msg, &len);
    hdr h[2];
    size_t nh = 0;
    if (allow) h[nh++] = (hdr){(char *)"Allow", (char *)allow};
    if (status == 503 || status == 429) h[nh++] = (hdr){(char *)"Retry-After", (char *)"1"};
    if (close_conn) c->close_after = 1;
    respond_whole(s, c, status, "application/json", body ? body : "", body ? len : 0, h, nh);
    free(body);
}

/* The next request on a keep-alive connection (pipelined bytes may already be in rbuf). */
static void conn_process(lf_http_server *s, conn *c);

static void next_request(lf_http_server *s, conn *c) {
    request_done(s, c);
    c->served++;
    lf_http__response_free(&c->resp);
    free(c->body);
    c->body = NULL;
    c->blen = c->bcap = 0;
    c->too_big = 0;
    c->out_chunked = 0;
    c->rt = NULL;
    memset(&c->head, 0, sizeof c->head);
    c->state = C_HEAD;
    c->t_start = c->t_io = lf_http__now_ms();
    set_events(s, c, EPOLLIN | EPOLLRDHUP);
    if (c->rlen) conn_process(s, c);
}

/* Pull what the producer queued into the write buffer; end or abort the response as the stream says. */
static void stream_pump(lf_http_server *s, conn *c) {
    lf_http_stream *st = c->stream;
    if (!st) return;
    void *user = NULL;
    void (*fn)(void *) = NULL;
    int abort = 0, end = 0, oom = 0;
    pthread_mutex_lock(&st->mu);
    if (st->cancelled) {
        fn = lf_http__cancel_locked(st, &user);
        abort = 1;
    } else {
        if (st->len && c->wlen - c->woff < WRITE_HIGH) {
            char sz[24];
            int k = snprintf(sz, sizeof sz, "%zx\r\n", st->len);
            if ((c->out_chunked && wbuf_append(c, sz, (size_t)k)) || wbuf_append(c, st->buf + st->head, st->len) ||
                (c->out_chunked && wbuf_append(c, "\r\n", 2))) {
                oom = 1;
            } else {
                st->head = st->len = 0;
            }
        }
        if (st->closed && !st->len && !oom) end = 1;
    }
    if (end || abort || oom) st->slot = -1;
    pthread_mutex_unlock(&st->mu);
    if (fn) fn(user);
    if (oom) {
        LF_LOG(LF_LOG_ERROR, "http: out of memory forwarding a stream; closing the connection");
        conn_close(s, c);
        return;
    }
    if (abort) { /* send what is queued, then end the connection without the final chunk */
        lf_http__stream_release(st);
        c->stream = NULL;
        c->close_after = 1;
        c->state = C_WRITE;
        conn_flush(s, c);
        return;
    }
    if (end) {
        lf_http__stream_release(st);
        c->stream = NULL;
        if (c->out_chunked && wbuf_append(c, "0\r\n\r\n", 5)) {
            conn_close(s, c);
            return;
        }
        c->state = C_WRITE;
    }
    conn_flush(s, c);
}

/* Write what is queued; on completion move to the next state. */
static void conn_flush(lf_http_server *s, conn *c) {
    while (c->woff < c->wlen) {
        ssize_t k = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (k > 0) {
            c->woff += (size_t)k;
            c->t_io = lf_http__now_ms();
            continue;
        }
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        conn_close(s, c); /* EPIPE / ECONNRESET: the client is gone */
        return;
    }
    int pending = c->woff < c->wlen;
    if (!pending) c->woff = c->wlen = 0;
    if (c->state == C_STREAM) {
        if (!pending && c->stream) { /* room again: take more from the producer */
            lf_http_stream *st = c->stream;
            pthread_mutex_lock(&st->mu);
            int more = st->len || st->closed || st->cancelled;
            pthread_mutex_unlock(&st->mu);
            if (more) {
                stream_pump(s, c);
                return;
            }
        }
        set_events(s, c, EPOLLRDHUP | (pending ? EPOLLOUT : 0));
        return;
    }
    if (c->state != C_WRITE && c->state != C_HEAD && c->state != C_BODY) return;
    if (pending) {
        set_events(s, c, EPOLLOUT | (c->state == C_WRITE ? 0 : EPOLLIN | EPOLLRDHUP));
        return;
    }
    if (c->state != C_WRITE) { /* e.g. a 100 Continue went out: keep reading the body */
        set_events(s, c, EPOLLIN | EPOLLRDHUP);
        return;
    }
    if (c->close_after) { /* half-close, then read and drop what the client still sends so it sees our answer */
        request_done(s, c);
        shutdown(c->fd, SHUT_WR);
        c->state = C_LINGER;
        c->t_linger = lf_http__now_ms();
        set_events(s, c, EPOLLIN | EPOLLRDHUP);
        return;
    }
    next_request(s, c);
}

static void body_append(void *user, const char *data, size_t len) {
    conn *c = user;
    if (c->too_big) return;
    if (c->blen + len + 1 > c->bcap) {
        size_t nc = c->bcap ? c->bcap : 8192;
        while (nc < c->blen + len + 1) nc *= 2;
        char *nb = realloc(c->body, nc);
        if (!nb) {
            c->too_big = 2; /* out of memory */
            return;
        }
        c->body = nb;
        c->bcap = nc;
    }
    memcpy(c->body + c->blen, data, len);
    c->blen += len;
}

static void run_handler(lf_http_server *s, conn *c) {
    c->req.c = c;
    c->req.method = c->head.method;
    c->req.path = c->head.path;
    c->req.body = c->body ? c->body : "";
    c->req.body_len = c->blen;
    memset(&c->resp, 0, sizeof c->resp);
    c->resp.srv = s;
    c->rt->h(c->rt->user, &c->req, &c->resp);
}

/* The handler returned (inline, or a worker finished): send its answer. */
static void finish_handler(lf_http_server *s, conn *c) {
    lf_http_response *r = &c->resp;
    if (atomic_load(&c->gone) || atomic_load(&s->hard_stop)) {
        if (r->stream) {
            c->stream = r->stream;
            r->stream = NULL;
        }
        conn_close(s, c); /* cancels the stream */
        return;
    }
    if (r->stream) {
        c->stream = r->stream;
        r->stream = NULL;
        if (queue_head(s, c, r->status, r->ctype, -1, r->h, r->nh)) {
            conn_close(s, c);
            return;
        }
        lf_http__response_free(r);
        pthread_mutex_lock(&c->stream->mu);
        c->stream->slot = c - s->conns;
        c->stream->gen = c->gen;
        c->stream->last_push_ms = lf_http__now_ms();
        pthread_mutex_unlock(&c->stream->mu);
        c->state = C_STREAM;
        LF_LOG(LF_LOG_DEBUG, "%s %s -> %d (stream)", c->head.method, c->head.path, r->status);
        stream_pump(s, c);
        return;
    }
    if (!r->set) {
        LF_LOG(LF_LOG_ERROR, "%s %s: handler produced no response", c->head.method, c->head.path);
        respond_error(s, c, 500, "handler produced no response", 1, NULL);
        return;
    }
    LF_LOG(LF_LOG_DEBUG, "%s %s -> %d", c->head.method, c->head.path, r->status);
    respond_whole(s, c, r->status, r->ctype, r->body, r->len, r->h, r->nh);
}

static void enqueue_job(lf_http_server *s, conn *c) {
    c->state = C_QUEUED;
    atomic_store(&c->worker_done, 0);
    set_events(s, c, EPOLLRDHUP);
    pthread_mutex_lock(&s->qmu);
    s->jobs[(s->qhead + s->qlen) % s->ncap] = c - s->conns;
    s->qlen++;
    int spawn = s->idle_workers < s->qlen && s->nworkers < s->p.max_workers;
    pthread_cond_signal(&s->qcv);
    pthread_mutex_unlock(&s->qmu);
    if (spawn) {
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setstacksize(&a, (size_t)1 << 20);
        pthread_mutex_lock(&s->qmu);
        if (pthread_create(&s->workers[s->nworkers], &a, worker_main, s) == 0) s->nworkers++;
        else LF_LOG(LF_LOG_WARN, "http: cannot start another worker thread (%zu running)", s->nworkers);
        int none = s->nworkers == 0;
        pthread_mutex_unlock(&s->qmu);
        pthread_attr_destroy(&a);
        if (none) { /* no worker at all: take the job back and refuse it */
            pthread_mutex_lock(&s->qmu);
            s->qlen--;
            pthread_mutex_unlock(&s->qmu);
            c->state = C_WRITE;
            respond_error(s, c, 503, "the server cannot start a worker thread", 1, NULL);
        }
    }
}

/* The head and body are in: route and answer (I/O thread). */
static void dispatch(lf_http_server *s, conn *c) {
    const char *method = c->head.method, *url = c->head.path;
    c->state = C_WRITE; /* until a handler takes it */
    set_events(s, c, 0);
    if (c->too_big == 2) {
        respond_error(s, c, 500, "out of memory reading the request body", 1, NULL);
        return;
    }
    if (atomic_load(&s->stopping)) {
        respond_error(s, c, 503, "server is shutting down", 1, NULL);
        return;
    }
    char *path = strdup(url), *seg[MAX_SEGMENTS];
    if (!path) {
        respond_error(s, c, 500, "out of memory", 1, NULL);
        return;
    }
    int n = lf_http__split_path(path, seg, MAX_SEGMENTS);
    memset(&c->req, 0, sizeof c->req);
    const route *hit = NULL;
    char allow[128] = "";
    for (size_t i = 0; n >= 0 && i < s->nroutes && !hit; i++) {
        const route *rt = &s->routes[i];
        if (!lf_http__route_matches_path(rt, seg, n, NULL)) continue;
        if (lf_http__method_matches(rt, method)) {
            hit = rt;
        } else if (!strstr(allow, rt->method) && strlen(allow) + strlen(rt->method) + 3 < sizeof allow) {
            if (allow[0]) strcat(allow, ", ");
            strcat(allow, rt->method);
        }
    }
    free(path);
    if (!hit) {
        char msg[512];
        if (allow[0]) snprintf(msg, sizeof msg, "method %.16s is not allowed on %.200s (allowed: %s)", method, url, allow);
        else snprintf(msg, sizeof msg, "no route for %.16s %.200s", method, url);
        LF_LOG(LF_LOG_DEBUG, "%s %s -> %d", method, url, allow[0] ? 405 : 404);
        respond_error(s, c, allow[0] ? 405 : 404, msg, 0, allow[0] ? allow : NULL);
        return;
    }
    if (c->overflow && !hit->inline_) {
        char msg[200];
        snprintf(msg, sizeof msg, "the server is at its connection limit (%u); retry shortly", s->p.max_connections);
        respond_error(s, c, 503, msg, 1, NULL);
        return;
    }
    /* the route's {params} point into a private copy of the path kept in hbuf's tail */
    size_t pl = strlen(url) + 1;
    if (c->hcap < c->hlen + pl) { /* (cannot happen: the path is part of the head) */
        respond_error(s, c, 500, "request path does not fit", 1, NULL);
        return;
    }
    char *pcopy = c->hbuf + c->hlen;
    memcpy(pcopy, url, pl);
    n = lf_http__split_path(pcopy, seg, MAX_SEGMENTS);
    lf_http__route_matches_path(hit, seg, n, &c->req);
    c->rt = hit;
    if (hit->inline_) {
        run_handler(s, c);
        finish_handler(s, c);
        return;
    }
    enqueue_job(s, c);
}

/* Copy the parsed head out of rbuf (its pointers move with it) so rbuf can be reused for the body; hbuf keeps
 * room after the head for a copy of the path that route parameters point into. */
static int keep_head(conn *c, int64_t hl) {
    size_t need = (size_t)hl + MAX_LINE + 2;
    if (c->hcap < need) {
        char *nb = malloc(need);
        if (!nb) return -1;
        free(c->hbuf);
        c->hbuf = nb;
        c->hcap = need;
    }
    memcpy(c->hbuf, c->rbuf, (size_t)hl);
    c->hlen = (size_t)hl;
    ptrdiff_t d = c->hbuf - c->rbuf;
#define MOVE(p) ((p) = (p) ? (p) + d : (p))
    MOVE(c->head.method);
    MOVE(c->head.path);
    for (size_t i = 0; i < c->head.nfield; i++) {
        MOVE(c->head.field[i].name);
        MOVE(c->head.field[i].value);
    }
    for (size_t i = 0; i < c->head.narg; i++) {
        MOVE(c->head.arg[i].name);
        /* "?flag" values point at a static "" outside rbuf */
        if (c->head.arg[i].value >= c->rbuf && c->head.arg[i].value < c->rbuf + hl) c->head.arg[i].value += d;
    }
#undef MOVE
    memmove(c->rbuf, c->rbuf + hl, c->rlen - (size_t)hl);
    c->rlen -= (size_t)hl;
    return 0;
}

/* Make progress on buffered input: parse the head, read the body, dispatch. */
static void conn_process(lf_http_server *s, conn *c) {
    if (c->state == C_HEAD) {
        if (!c->rlen) return;
        int status = 400;
        char msg[160];
        int64_t hl = lf_http_parse_head(c->rbuf, c->rlen, MAX_LINE, MAX_HEAD, &c->head, &status, msg, sizeof msg);
        if (hl == 0) return;
        if (hl < 0) {
            LF_LOG(LF_LOG_DEBUG, "http: bad request head -> %d: %s", status, msg);
            c->keep_alive = 0;
            c->head.minor = 1;
            c->state = C_WRITE;
            set_events(s, c, 0);
            respond_error(s, c, status, msg, 1, NULL);
            return;
        }
        if (keep_head(c, hl)) {
            conn_close(s, c);
            return;
        }
        c->keep_alive = c->head.keep_alive;
        c->close_after = 0;
        c->is_head = strcmp(c->head.method, "HEAD") == 0;
        c->counted = 1;
        in_flight_add(s, 1);
        c->t_body = lf_http__now_ms();
        memset(&c->ch, 0, sizeof c->ch);
        c->blen = 0;
        c->too_big = 0;
        uint64_t max = s->p.max_body_bytes;
        if (atomic_load(&s->stopping)) {
            c->state = C_WRITE;
            respond_error(s, c, 503, "server is shutting down", 1, NULL);
            return;
        }
        if (c->head.content_length > 0 && (uint64_t)c->head.content_length > max) { /* answer without reading it */
            char m[160];
            snprintf(m, sizeof m, "request body is %lld bytes; the limit is %llu", (long long)c->head.content_length,
                     (unsigned long long)max);
            c->state = C_WRITE;
            respond_error(s, c, 413, m, 1, NULL);
            return;
        }
        c->body_left = c->head.chunked ? -1 : (c->head.content_length > 0 ? c->head.content_length : 0);
        if (c->body_left > 0) { /* up to 1 MiB up front: idle clients cannot pin memory */
            size_t want = (size_t)(c->body_left < (1 << 20) ? c->body_left : (1 << 20)) + 1;
            c->body = malloc(want);
            if (c->body) c->bcap = want;
        }
        c->state = C_BODY;
        if (c->head.expect_continue && c->body_left != 0 && c->head.minor >= 1) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            if (wbuf_append(c, cont, sizeof cont - 1)) {
                conn_close(s, c);
                return;
            }
            conn_flush(s, c);
            if (c->state == C_FREE) return;
        }
    }
    if (c->state != C_BODY) return;
    if (c->body_left > 0) {
        size_t take = c->rlen < (uint64_t)c->body_left ? c->rlen : (size_t)c->body_left;
        body_append(c, c->rbuf, take);
        memmove(c->rbuf, c->rbuf + take, c->rlen - take);
        c->rlen -= take;
        c->body_left -= (int64_t)take;
        if (c->body_left > 0) return;
    } else if (c->body_left < 0) {
        char msg[160];
        int64_t k = lf_http_chunked_feed(&c->ch, c->rbuf, c->rlen, body_append, c, msg, sizeof msg);
        if (k < 0) {
            c->state = C_WRITE;
            respond_error(s, c, 400, msg, 1, NULL);
            return;
        }
        memmove(c->rbuf, c->rbuf + k, c->rlen - (size_t)k);
        c->rlen -= (size_t)k;
        if (c->blen > s->p.max_body_bytes && c->too_big != 2) c->too_big = 1;
        if (c->too_big == 1) { /* a chunked upload over the cap: answer now, drop the rest while lingering */
            char m[160];
            snprintf(m, sizeof m, "request body is over the limit of %zu bytes", s->p.max_body_bytes);
            c->state = C_WRITE;
            respond_error(s, c, 413, m, 1, NULL);
            return;
        }
        if (!c->ch.done) return;
    }
    if (c->body) c->body[c->blen] = '\0';
    dispatch(s, c);
}

static void conn_read(lf_http_server *s, conn *c) {
    for (;;) {
        if (c->state == C_LINGER) {
            char sink[16384];
            ssize_t k = recv(c->fd, sink, sizeof sink, 0);
            if (k > 0) continue;
            if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
            if (k < 0 && errno == EINTR) continue;
            conn_close(s, c);
            return;
        }
        if (c->state != C_HEAD && c->state != C_BODY) return;
        size_t limit = (size_t)MAX_HEAD + MAX_LINE;
        if (c->rlen >= limit) { /* nothing parseable fits: the parser has already answered for heads */
            conn_process(s, c);
            return;
        }
        if (c->rcap - c->rlen < 4096) {
            size_t nc = c->rcap ? c->rcap * 2 : 8192;
            if (nc > limit + 4096) nc = limit + 4096;
            char *nb = realloc(c->rbuf, nc);
            if (!nb) {
                conn_close(s, c);
                return;
            }
            c->rbuf = nb;
            c->rcap = nc;
        }
        size_t room = c->rcap - c->rlen - 1;
        ssize_t k = recv(c->fd, c->rbuf + c->rlen, room, 0);
        if (k > 0) {
            if (c->state == C_HEAD && c->rlen == 0) c->t_start = lf_http__now_ms();
            c->rlen += (size_t)k;
            c->t_io = lf_http__now_ms();
            conn_process(s, c);
            if (c->state == C_FREE) return;
            continue;
        }
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        conn_close(s, c); /* EOF or error: no complete request to answer */
        return;
    }
}

/* =============================== workers =============================== */

static void *worker_main(void *arg) {
    lf_http_server *s = arg;
    pthread_mutex_lock(&s->qmu);
    for (;;) {
        while (!s->qlen && !s->quit_workers) {
            s->idle_workers++;
            pthread_cond_wait(&s->qcv, &s->qmu);
            s->idle_workers--;
        }
        if (!s->qlen) break; /* quit */
        int64_t slot = s->jobs[s->qhead];
        s->qhead = (s->qhead + 1) % s->ncap;
        s->qlen--;
        pthread_mutex_unlock(&s->qmu);
        conn *c = &s->conns[slot];
        if (!atomic_load(&c->gone) && !atomic_load(&s->hard_stop)) run_handler(s, c);
        atomic_store(&c->worker_done, 1);
        lf_http__wake_slot(s, slot, c->gen);
        pthread_mutex_lock(&s->qmu);
    }
    pthread_mutex_unlock(&s->qmu);
    return NULL;
}

/* =============================== the I/O loop =============================== */

static int set_listening(lf_http_server *s, int on) {
    if (s->listening == on || s->lfd < 0) return 0;
    struct epoll_event e;
    memset(&e, 0, sizeof e);
    e.events = on ? EPOLLIN : 0;
    e.data.u64 = 0;
    s->listening = on;
    return epoll_ctl(s->ep, EPOLL_CTL_MOD, s->lfd, &e);
}

/* Close the connection idle longest between requests (a keep-alive that sent nothing yet), if any. */
static int evict_idle(lf_http_server *s) {
    conn *best = NULL;
    for (size_t i = 0; i < s->ncap; i++) {
        conn *c = &s->conns[i];
        if (c->state == C_HEAD && !c->rlen && c->served > 0 && !c->overflow && (!best || c->t_io < best->t_io)) best = c;
    }
    if (!best) return 0;
    conn_close(s, best);
    return 1;
}

static void do_accept(lf_http_server *s) {
    for (;;) {
        if (!s->nfree) {
            set_listening(s, 0); /* new connections wait in the backlog until a slot frees */
            return;
        }
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(s->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE) {
                LF_LOG(LF_LOG_WARN, "http: out of file descriptors accepting a connection; pausing accepts for 100 ms");
                set_listening(s, 0);
                s->accept_pause_until = lf_http__now_ms() + 100;
            }
            return;
        }
        if (s->n_normal >= s->p.max_connections) evict_idle(s);
        int ovf = s->n_normal >= s->p.max_connections;
        if (ovf && s->n_overflow >= s->overflow_cap) { /* (cannot happen: the table holds both) */
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        int64_t slot = s->freel[--s->nfree];
        conn *c = &s->conns[slot];
        uint32_t gen = c->gen;
        memset(c, 0, sizeof *c);
        c->gen = gen;
        c->fd = fd;
        c->events = ~0u;
        c->state = C_HEAD;
        c->overflow = ovf;
        c->t_start = c->t_io = lf_http__now_ms();
        atomic_init(&c->gone, 0);
        atomic_init(&c->worker_done, 0);
        if (ovf) s->n_overflow++;
        else s->n_normal++;
        if (ovf) LF_LOG(LF_LOG_DEBUG, "http: connection over the limit of %u (overflow %zu)", s->p.max_connections, s->n_overflow);
        set_events(s, c, EPOLLIN | EPOLLRDHUP);
    }
}

static void conn_event(lf_http_server *s, conn *c, unsigned ev) {
    if (c->state == C_QUEUED) {
        if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) { /* the worker's handler sees it through client_gone */
            atomic_store(&c->gone, 1);
            unregister(s, c);
        }
        return;
    }
    if (c->state == C_STREAM) {
        if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
            LF_LOG(LF_LOG_INFO, "client disconnected during a streamed response; cancelling");
            conn_close(s, c);
            return;
        }
        if (ev & EPOLLOUT) conn_flush(s, c);
        return;
    }
    if ((ev & EPOLLERR) || ((ev & EPOLLHUP) && c->state == C_WRITE)) {
        conn_close(s, c);
        return;
    }
    if (ev & EPOLLOUT) {
        conn_flush(s, c);
        if (c->state == C_FREE) return;
    }
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) conn_read(s, c);
}

/* Deadlines: slow heads and bodies get 408, idle keep-alives and stalled writes are closed. */
static void sweep(lf_http_server *s, int64_t t) {
    int stopping = atomic_load(&s->stopping);
    int64_t head_ms = s->p.header_timeout_ms, body_ms = s->p.body_timeout_ms, idle_ms = (int64_t)s->p.idle_timeout_s * 1000;
    for (size_t i = 0; i < s->ncap; i++) {
        conn *c = &s->conns[i];
        switch (c->state) {
        case C_HEAD: {
            int64_t limit = c->overflow ? OVERFLOW_HEAD_MS : head_ms;
            if (!c->rlen && c->served > 0) { /* idle keep-alive */
                if (stopping || t - c->t_io > idle_ms) conn_close(s, c);
            } else if (t - c->t_start > limit) {
                if (!c->rlen) {
                    conn_close(s, c); /* never sent a byte */
                } else {
                    char m[160];
                    snprintf(m, sizeof m, "the request head did not arrive within %lld ms", (long long)limit);
                    c->head.minor = 1;
                    c->state = C_WRITE;
                    set_events(s, c, 0);
                    respond_error(s, c, 408, m, 1, NULL);
                }
            }
            break;
        }
        case C_BODY:
            if (t - c->t_body > body_ms || t - c->t_io > idle_ms) {
                char m[160];
                snprintf(m, sizeof m, "the request body did not arrive within %lld ms", (long long)body_ms);
                c->state = C_WRITE;
                set_events(s, c, 0);
                respond_error(s, c, 408, m, 1, NULL);
            }
            break;
        case C_WRITE:
            if (c->woff < c->wlen && t - c->t_io > idle_ms) {
                LF_LOG(LF_LOG_INFO, "http: client stopped reading its response for %lld ms; closing", (long long)idle_ms);
                conn_close(s, c);
            }
            break;
        case C_STREAM: {
            if (c->woff < c->wlen && t - c->t_io > idle_ms) {
                LF_LOG(LF_LOG_INFO, "http: client stopped reading its stream; cancelling");
                conn_close(s, c);
                break;
            }
            lf_http_stream *st = c->stream;
            if (!st || st->idle_ms <= 0) break;
            pthread_mutex_lock(&st->mu);
            int silent = !st->closed && !st->len && t - st->last_push_ms >= st->idle_ms;
            pthread_mutex_unlock(&st->mu);
            if (silent) {
                LF_LOG(LF_LOG_WARN, "stream producer silent for %d ms; cancelling", st->idle_ms);
                conn_close(s, c);
            }
            break;
        }
        case C_LINGER:
            if (t - c->t_linger > LINGER_MS) conn_close(s, c);
            break;
        default:
            break;
        }
    }
}

static void handle_wakes(lf_http_server *s) {
    uint64_t buf[256];
    for (;;) {
        size_t n = 0;
        pthread_mutex_lock(&s->wmu);
        while (n < 256 && s->nwake) {
            uint64_t k = s->wake[--s->nwake];
            s->wflag[k & 0xffffffffu] = 0;
            buf[n++] = k;
        }
        pthread_mutex_unlock(&s->wmu);
        if (!n) return;
        for (size_t i = 0; i < n; i++) {
            /* by slot, not generation: a wake that raced with a close finds a new connection (or none) and
             * only makes it look at its state, which is harmless */
            conn *c = &s->conns[buf[i] & 0xffffffffu];
            if (c->state == C_FREE) continue;
            if (c->state == C_QUEUED && atomic_load(&c->worker_done)) {
                if (atomic_load(&c->gone)) { /* the client left while the worker ran */
                    if (c->resp.stream) {
                        c->stream = c->resp.stream;
                        c->resp.stream = NULL;
                    }
                    conn_close(s, c);
                } else {
                    finish_handler(s, c);
                }
            } else if (c->state == C_STREAM) {
                stream_pump(s, c);
            }
        }
    }
}

static void *loop_main(void *arg) {
    lf_http_server *s = arg;
    struct epoll_event ev[256];
    int closed_listener = 0;
    for (;;) {
        if (atomic_load(&s->hard_stop)) break;
        if (atomic_load(&s->stopping) && !closed_listener) {
            if (s->lfd >= 0) {
                epoll_ctl(s->ep, EPOLL_CTL_DEL, s->lfd, NULL);
                close(s->lfd);
                s->lfd = -1;
            }
            closed_listener = 1;
        }
        if (!s->listening && s->lfd >= 0 && s->nfree && !atomic_load(&s->stopping) && lf_http__now_ms() >= s->accept_pause_until)
            set_listening(s, 1);
        int n = epoll_wait(s->ep, ev, 256, SWEEP_MS);
        for (int i = 0; i < n; i++) {
            uint64_t k = ev[i].data.u64;
            if (k == 0) {
                do_accept(s);
            } else if (k == UINT64_MAX) {
                uint64_t v;
                ssize_t r = read(s->efd, &v, sizeof v);
                (void)r;
            } else {
                k -= 1;
                conn *c = &s->conns[k & 0xffffffffu];
                if (c->state == C_FREE || c->gen != (uint32_t)(k >> 32)) continue;
                conn_event(s, c, ev[i].events);
            }
        }
        handle_wakes(s);
        int64_t t = lf_http__now_ms();
        if (t - s->last_sweep >= SWEEP_MS) {
            s->last_sweep = t;
            sweep(s, t);
        }
    }
    /* hard stop: cut every connection not held by a worker; those are closed after the workers joined */
    for (size_t i = 0; i < s->ncap; i++) {
        conn *c = &s->conns[i];
        if (c->state == C_QUEUED) atomic_store(&c->gone, 1);
        else if (c->state != C_FREE) conn_close(s, c);
    }
    return NULL;
}

/* =============================== server lifetime =============================== */

lf_http_params lf_http_default_params(void) {
    lf_http_params p;
    memset(&p, 0, sizeof p);
    p.host = "0.0.0.0";
    p.port = 8080;
    p.max_body_bytes = 6291456;
    p.max_connections = 1024;
    p.idle_timeout_s = 75;
    p.stream_idle_timeout_ms = 0;
    p.stream_buffer_max = (size_t)16 << 20;
    p.header_timeout_ms = 10000;
    p.body_timeout_ms = 60000;
    p.max_workers = 256;
    return p;
}

lf_status lf_http_create(const lf_http_params *p, lf_http_server **out, lf_err *err) {
    *out = NULL;
    lf_http_params d = lf_http_default_params();
    if (!p) p = &d;
    if (p->port < 0 || p->port > 65535) return lf_err_set(err, LF_EINVAL, "http: port %d is out of range", p->port);
    const char *host = p->host ? p->host : "0.0.0.0";
    if (strlen(host) > INET6_ADDRSTRLEN) return lf_err_set(err, LF_EINVAL, "http: host '%.64s' is too long", host);
    if (p->max_connections > 1000000) return lf_err_set(err, LF_EINVAL, "http: max_connections %u is too large", p->max_connections);
    lf_http_server *s = calloc(1, sizeof *s);
    if (!s) return lf_err_set(err, LF_ENOMEM, "http: out of memory");
    s->p = *p;
    strcpy(s->host, host);
    s->p.host = s->host;
    if (!s->p.max_body_bytes) s->p.max_body_bytes = d.max_body_bytes;
    if (!s->p.max_connections) s->p.max_connections = d.max_connections;
    if (!s->p.stream_buffer_max) s->p.stream_buffer_max = d.stream_buffer_max;
    if (s->p.header_timeout_ms <= 0) s->p.header_timeout_ms = d.header_timeout_ms;
    if (s->p.body_timeout_ms <= 0) s->p.body_timeout_ms = d.body_timeout_ms;
    if (!s->p.idle_timeout_s) s->p.idle_timeout_s = d.idle_timeout_s;
    if (!s->p.max_workers) s->p.max_workers = d.max_workers;
    s->lfd = s->ep = s->efd = -1;
    if (pthread_mutex_init(&s->mu, NULL) || cond_init_monotonic(&s->cv) || pthread_mutex_init(&s->qmu, NULL) ||
        pthread_cond_init(&s->qcv, NULL) || pthread_mutex_init(&s->wmu, NULL)) {
        free(s);
        return lf_err_set(err, LF_ENOMEM, "http: cannot create a mutex");
    }
    *out = s;
    return LF_OK;
}

/* Room for every connection plus the process's other files. */
static size_t raise_fd_limit(size_t want) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return want;
    if (rl.rlim_cur < want + 256) {
        rlim_t nv = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want + 256 ? (rlim_t)(want + 256) : rl.rlim_max;
        if (nv > rl.rlim_cur) {
            rl.rlim_cur = nv;
            setrlimit(RLIMIT_NOFILE, &rl);
            getrlimit(RLIMIT_NOFILE, &rl);
        }
    }
    return rl.rlim_cur > 256 + 64 ? (size_t)rl.rlim_cur - 256 : 64;
}

lf_status lf_http_start(lf_http_server *s, lf_err *err) {
    if (s->started) return lf_err_set(err, LF_EBUSY, "http: server already started");
    lf_status st = LF_EIO;
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
    struct sockaddr *sa;
    socklen_t sl;
    memset(&v4, 0, sizeof v4);
    memset(&v6, 0, sizeof v6);
    int fam;
    if (strchr(s->host, ':')) {
        v6.sin6_family = AF_INET6;
        v6.sin6_port = htons((uint16_t)s->p.port);
        if (inet_pton(AF_INET6, s->host, &v6.sin6_addr) != 1)
            return lf_err_set(err, LF_EINVAL, "http: host '%s' is not an IPv6 address", s->host);
        sa = (struct sockaddr *)&v6;
        sl = sizeof v6;
        fam = AF_INET6;
    } else {
        v4.sin_family = AF_INET;
        v4.sin_port = htons((uint16_t)s->p.port);
        if (inet_pton(AF_INET, s->host, &v4.sin_addr) != 1)
            return lf_err_set(err, LF_EINVAL, "http: host '%s' is not an IPv4 address", s->host);
        sa = (struct sockaddr *)&v4;
        sl = sizeof v4;
        fam = AF_INET;
    }
    /* the connection table: max_connections plus an overflow reserve answered with 503 (/ping served) */
    s->overflow_cap = s->p.max_connections / 2 > 256 ? s->p.max_connections / 2 : 256;
    size_t want = s->p.max_connections + s->overflow_cap, fit = raise_fd_limit(want);
    if (fit < want) {
        LF_LOG(LF_LOG_WARN, "http: the open-files limit allows %zu connections, not %zu; lowering max_connections", fit, want);
        s->p.max_connections = (unsigned)(fit * 4 / 5 > 1 ? fit * 4 / 5 : 1);
        s->overflow_cap = fit - s->p.max_connections;
        want = fit;
    }
    s->ncap = want;
    s->conns = calloc(s->ncap, sizeof *s->conns);
    s->freel = calloc(s->ncap, sizeof *s->freel);
    s->jobs = calloc(s->ncap, sizeof *s->jobs);
    s->wake = calloc(s->ncap, sizeof *s->wake);
    s->wflag = calloc(s->ncap, 1);
    s->workers = calloc(s->p.max_workers, sizeof *s->workers);
    if (!s->conns || !s->freel || !s->jobs || !s->wake || !s->wflag || !s->workers) {
        st = lf_err_set(err, LF_ENOMEM, "http: out of memory for %zu connection slots", s->ncap);
        goto fail;
    }
    for (size_t i = 0; i < s->ncap; i++) {
        s->conns[i].fd = -1;
        s->conns[i].events = ~0u;
        s->freel[s->nfree++] = (int64_t)(s->ncap - 1 - i);
    }
    s->lfd = socket(fam, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->lfd < 0) {
        st = lf_err_set(err, LF_EIO, "http: socket: %s", strerror(errno));
        goto fail;
    }
    int one = 1;
    setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fam == AF_INET6) setsockopt(s->lfd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(s->lfd, sa, sl) != 0 || listen(s->lfd, 4096) != 0) {
        st = lf_err_set(err, LF_EIO, "http: cannot listen on %s:%d: %s (port in use, or no permission?)", s->host,
                        s->p.port, strerror(errno));
        goto fail;
    }
    struct sockaddr_storage bound;
    socklen_t bl = sizeof bound;
    if (getsockname(s->lfd, (struct sockaddr *)&bound, &bl) == 0)
        s->port = fam == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                  : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    s->ep = epoll_create1(EPOLL_CLOEXEC);
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->ep < 0 || s->efd < 0) {
        st = lf_err_set(err, LF_EIO, "http: epoll/eventfd: %s", strerror(errno));
        goto fail;
    }
    struct epoll_event e;
    memset(&e, 0, sizeof e);
    e.events = EPOLLIN;
    e.data.u64 = 0;
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, s->lfd, &e) != 0) {
        st = lf_err_set(err, LF_EIO, "http: epoll_ctl: %s", strerror(errno));
        goto fail;
    }
    s->listening = 1;
    e.data.u64 = UINT64_MAX;
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, s->efd, &e) != 0) {
        st = lf_err_set(err, LF_EIO, "http: epoll_ctl: %s", strerror(errno));
        goto fail;
    }
    if (pthread_create(&s->loop, NULL, loop_main, s) != 0) {
        st = lf_err_set(err, LF_EIO, "http: cannot start the I/O thread");
        goto fail;
    }
    s->loop_started = 1;
    s->started = 1;
    LF_LOG(LF_LOG_INFO, "listening on %s:%d (max %u connections + %zu overflow, %u worker threads, header timeout %d ms)",
           s->host, s->port, s->p.max_connections, s->overflow_cap, s->p.max_workers, s->p.header_timeout_ms);
    return LF_OK;
fail:
    if (s->lfd >= 0) close(s->lfd);
    if (s->ep >= 0) close(s->ep);
    if (s->efd >= 0) close(s->efd);
    s->lfd = s->ep = s->efd = -1;
    return st;
}

int lf_http_port(const lf_http_server *s) { return s->started ? s->port : 0; }
int lf_http_stopping(const lf_http_server *s) { return atomic_load(&((lf_http_server *)s)->stopping); }

int lf_http_in_flight(lf_http_server *s) {
    pthread_mutex_lock(&s->mu);
    int n = s->in_flight;
    pthread_mutex_unlock(&s->mu);
    return n;
}

void lf_http_stop(lf_http_server *s, int deadline_ms) {
    if (!s || !s->started || s->stopped) return;
    atomic_store(&s->stopping, 1);
    wake_loop(s);
    struct timespec ts;
    abs_deadline(&ts, deadline_ms > 0 ? deadline_ms : 0);
    pthread_mutex_lock(&s->mu);
    while (s->in_flight > 0) {
        if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) == ETIMEDOUT) break;
    }
    int left = s->in_flight;
    pthread_mutex_unlock(&s->mu);
    if (left) LF_LOG(LF_LOG_WARN, "stopping with %d request(s) still in flight after %d ms; cancelling them", left, deadline_ms);
    atomic_store(&s->hard_stop, 1);
    wake_loop(s);
    if (s->loop_started) pthread_join(s->loop, NULL);
    s->loop_started = 0;
    pthread_mutex_lock(&s->qmu);
    s->quit_workers = 1;
    pthread_cond_broadcast(&s->qcv);
    pthread_mutex_unlock(&s->qmu);
    for (size_t i = 0; i < s->nworkers; i++) pthread_join(s->workers[i], NULL);
    s->nworkers = 0;
    for (size_t i = 0; i < s->ncap; i++) { /* what the workers held */
        conn *c = &s->conns[i];
        if (c->state == C_FREE) continue;
        if (c->resp.stream) {
            c->stream = c->resp.stream;
            c->resp.stream = NULL;
        }
        conn_close(s, c);
    }
    if (s->lfd >= 0) close(s->lfd);
    s->lfd = -1;
    s->stopped = 1;
}

void lf_http_free(lf_http_server *s) {
    if (!s) return;
    lf_http_stop(s, 0);
    for (size_t i = 0; i < s->nroutes; i++) lf_http__route_free(&s->routes[i]);
    free(s->routes);
    if (s->ep >= 0) close(s->ep);
    if (s->efd >= 0) close(s->efd);
    free(s->conns);
    free(s->freel);
    free(s->jobs);
    free(s->wake);
    free(s->wflag);
    free(s->workers);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->qmu);
    pthread_cond_destroy(&s->qcv);
    pthread_mutex_destroy(&s->wmu);
    free(s);
}

