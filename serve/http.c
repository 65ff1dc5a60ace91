/* http.c - libmicrohttpd wrapper: routing, capped body accumulation, whole and streamed (chunked)
 * responses, client-disconnect detection, graceful shutdown. */
#include "serve/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"

/* =============================== types =============================== */

typedef struct route {
    char *method;   /* "GET", ... or "*" */
    char *pattern;
    int nseg;
    char **seg;     /* [nseg] literal text, or the parameter name when is_param */
    int *is_param;  /* [nseg] */
    lf_http_handler h;
    void *user;
} route;

struct lf_http_server {
    lf_http_params p;
    char host[INET6_ADDRSTRLEN + 1];
    struct MHD_Daemon *d;
    route *routes;
    size_t nroutes;
    int port;
    int started, stopped;
    atomic_int stopping;  /* no new requests */
    atomic_int hard_stop; /* waiting streams give up */
    pthread_mutex_t mu;   /* guards in_flight */
    pthread_cond_t cv;    /* signalled when in_flight drops */
    int in_flight;
};

struct lf_http_request {
    struct MHD_Connection *conn;
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
    pthread_cond_t cv;     /* producer -> connection thread: data or close */
    char *buf;             /* pending bytes at [head, head + len) */
    size_t head, len, cap, max;
    int closed;            /* producer is done */
    int cancelled;
    int notified;          /* on_cancel ran, or must not run (producer hit LF_EBUSY itself) */
    int refs;
    void (*on_cancel)(void *);
    void *cancel_user;
    lf_http_server *srv;
    struct MHD_Connection *conn;
    int idle_ms;
    int64_t last_check_ms;
};

typedef struct req_ctx {
    lf_http_server *srv;
    char *body;
    size_t len, cap;
    uint64_t seen;        /* body bytes received, kept or not */
    int too_big;
    int nomem;
    int answered;         /* a response was queued before the body was read */
    lf_http_stream *stream; /* reference held for the completion callback */
} req_ctx;

/* =============================== small helpers =============================== */

static int64_t now_ms(void) {
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

/* {"error": msg, "code": status}; msg bytes that are not UTF-8 become '?'. */
static char *error_json(int status, const char *msg, size_t *len) {
    json_t *j = json_object(), *m = json_string(msg);
    if (!m) {
        char *t = strdup(msg);
        if (t)
            for (char *q = t; *q; q++)
                if ((unsigned char)*q >= 0x80) *q = '?';
        m = json_string(t ? t : "error");
        free(t);
    }
    char *out = NULL;
    if (j && m && json_object_set_new(j, "error", m) == 0 && json_object_set_new(j, "code", json_integer(status)) == 0) {
        out = json_dumps(j, JSON_COMPACT);
        /* json_dumps uses jansson's allocator (malloc by default); copy so callers free() safely */
        if (out) {
            char *c = strdup(out);
            free(out);
            out = c;
        }
    } else if (!j) {
        json_decref(m);
    }
    json_decref(j);
    if (out && len) *len = strlen(out);
    return out;
}

static enum MHD_Result queue_error(struct MHD_Connection *conn, int status, const char *msg, int close_conn,
                                   const char *allow) {
    size_t len = 0;
    char *body = error_json(status, msg, &len);
    struct MHD_Response *r = body ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE)
                                  : MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (close_conn) MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    if (allow) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result ok = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    return ok;
}

static void in_flight_add(lf_http_server *s, int d) {
    pthread_mutex_lock(&s->mu);
    s->in_flight += d;
    if (d < 0) pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* =============================== streams =============================== */

static void stream_release(lf_http_stream *st) {
    pthread_mutex_lock(&st->mu);
    int left = --st->refs;
    pthread_mutex_unlock(&st->mu);
    if (left) return;
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cv);
    free(st->buf);
    free(st);
}

/* Mark cancelled (mu held); returns the callback to run after unlocking, or NULL. */
static void (*cancel_locked(lf_http_stream *st, void **user))(void *) {
    void (*fn)(void *) = NULL;
    if (!st->cancelled) {
        st->cancelled = 1;
        pthread_cond_broadcast(&st->cv);
    }
    if (!st->closed && !st->notified && st->on_cancel) {
        fn = st->on_cancel;
        *user = st->cancel_user;
        st->notified = 1;
    }
    return fn;
}

static void stream_cancel(lf_http_stream *st) {
    void *user = NULL;
    pthread_mutex_lock(&st->mu);
    void (*fn)(void *) = cancel_locked(st, &user);
    pthread_mutex_unlock(&st->mu);
    if (fn) fn(user);
}

/* The client closed or reset its socket (peek: EOF or error). Called on the connection's own thread. */
static int client_gone(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 0;
    int fd = (int)ci->connect_fd;
    struct pollfd pf = {fd, POLLIN, 0};
    if (poll(&pf, 1, 0) <= 0) return 0;
    if (pf.revents & (POLLHUP | POLLERR | POLLNVAL)) return 1;
    if (pf.revents & POLLIN) {
        char c;
        ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0) return 1;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return 1;
    }
    return 0;
}

int lf_http_client_gone(const lf_http_request *r) { return r && r->conn ? client_gone(r->conn) : 0; }

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    lf_http_stream *st = cls;
    int64_t idle_since = now_ms();
    void *user = NULL;
    void (*fn)(void *) = NULL;
    ssize_t ret;
    pthread_mutex_lock(&st->mu);
    for (;;) {
        if (st->cancelled) {
            ret = MHD_CONTENT_READER_END_WITH_ERROR;
            break;
        }
        int64_t t = now_ms();
        int check = t - st->last_check_ms >= LF_HTTP_POLL_MS;
        if (check) { /* look at the client even while data flows: a dead peer is noticed within ~50 ms */
            st->last_check_ms = t;
            pthread_mutex_unlock(&st->mu);
            int gone = client_gone(st->conn);
            pthread_mutex_lock(&st->mu);
            if (gone) {
                LF_LOG(LF_LOG_INFO, "client disconnected during a streamed response; cancelling");
                fn = cancel_locked(st, &user);
                ret = MHD_CONTENT_READER_END_WITH_ERROR;
                break;
            }
        }
        if (st->len) {
            size_t n = st->len < max ? st->len : max;
            memcpy(buf, st->buf + st->head, n);
            st->head += n;
            st->len -= n;
            if (st->len == 0) st->head = 0;
            ret = (ssize_t)n;
            break;
        }
        if (st->closed) {
            ret = MHD_CONTENT_READER_END_OF_STREAM;
            break;
        }
        if (atomic_load(&st->srv->hard_stop)) {
            fn = cancel_locked(st, &user);
            ret = MHD_CONTENT_READER_END_WITH_ERROR;
            break;
        }
        if (st->idle_ms > 0 && t - idle_since >= st->idle_ms) {
            LF_LOG(LF_LOG_WARN, "stream producer silent for %d ms; cancelling", st->idle_ms);
            fn = cancel_locked(st, &user);
            ret = MHD_CONTENT_READER_END_WITH_ERROR;
            break;
        }
        struct timespec ts;
        abs_deadline(&ts, LF_HTTP_POLL_MS);
        pthread_cond_timedwait(&st->cv, &st->mu, &ts);
    }
    pthread_mutex_unlock(&st->mu);
    if (fn) fn(user);
    return ret;
}

/* The response is gone (sent, failed or connection closed): drop the server's reference. */
static void stream_response_free(void *cls) {
    lf_http_stream *st = cls;
    void *user = NULL;
    pthread_mutex_lock(&st->mu);
    void (*fn)(void *) = NULL;
    if (!st->closed || st->len) fn = cancel_locked(st, &user);
    pthread_mutex_unlock(&st->mu);
    if (fn) fn(user);
    stream_release(st);
}

lf_status lf_http_stream_push(lf_http_stream *st, const char *data, size_t len) {
    lf_status rc = LF_OK;
    pthread_mutex_lock(&st->mu);
    if (st->cancelled) {
        rc = LF_EBUSY;
    } else if (st->closed) {
        rc = LF_EINVAL;
    } else if (st->len + len > st->max) {
        LF_LOG(LF_LOG_WARN, "client too slow: %zu bytes queued (limit %zu); cancelling the stream", st->len + len, st->max);
        st->notified = 1; /* the producer learns it from this return value */
        st->cancelled = 1;
        pthread_cond_broadcast(&st->cv);
        rc = LF_EBUSY;
    } else if (len) {
        if (st->head + st->len + len > st->cap && st->head) {
            memmove(st->buf, st->buf + st->head, st->len);
            st->head = 0;
        }
        if (st->len + len > st->cap) {
            size_t nc = st->cap ? st->cap : 4096;
            while (nc < st->len + len) nc *= 2;
            char *nb = realloc(st->buf, nc);
            if (!nb) {
                pthread_mutex_unlock(&st->mu);
                return LF_ENOMEM;
            }
            st->buf = nb;
            st->cap = nc;
        }
        memcpy(st->buf + st->head + st->len, data, len);
        st->len += len;
        pthread_cond_signal(&st->cv);
    }
    pthread_mutex_unlock(&st->mu);
    return rc;
}

int lf_http_stream_cancelled(lf_http_stream *st) {
    pthread_mutex_lock(&st->mu);
    int c = st->cancelled;
    pthread_mutex_unlock(&st->mu);
    return c;
}

void lf_http_stream_on_cancel(lf_http_stream *st, void (*fn)(void *user), void *user) {
    int now = 0;
    pthread_mutex_lock(&st->mu);
    st->on_cancel = fn;
    st->cancel_user = user;
    if (st->cancelled && !st->notified && !st->closed && fn) {
        st->notified = 1;
        now = 1;
    }
    pthread_mutex_unlock(&st->mu);
    if (now) fn(user);
}

void lf_http_stream_close(lf_http_stream *st) {
    pthread_mutex_lock(&st->mu);
    st->closed = 1;
    pthread_cond_broadcast(&st->cv);
    pthread_mutex_unlock(&st->mu);
    stream_release(st);
}

/* =============================== responses =============================== */

static void response_clear(lf_http_response *r) {
    free(r->ctype);
    free(r->body);
    r->ctype = r->body = NULL;
    r->len = 0;
    r->set = 0;
}

lf_status lf_http_respond(lf_http_response *r, int status, const char *content_type, const char *body, size_t len) {
    if (r->stream) return LF_EINVAL; /* already streaming */
    char *b = malloc(len + 1), *c = strdup(content_type ? content_type : "application/json");
    if (!b || !c) {
        free(b);
        free(c);
        return LF_ENOMEM;
    }
    if (len) memcpy(b, body, len);
    b[len] = '\0';
    response_clear(r);
    r->status = status;
    r->ctype = c;
    r->body = b;
    r->len = len;
    r->set = 1;
    return LF_OK;
}

lf_status lf_http_respond_error(lf_http_response *r, int status, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t len = 0;
    char *body = error_json(status, msg, &len);
    if (!body) return LF_ENOMEM;
    lf_status st = lf_http_respond(r, status, "application/json", body, len);
    free(body);
    return st;
}

lf_status lf_http_add_header(lf_http_response *r, const char *name, const char *value) {
    hdr *nh = realloc(r->h, (r->nh + 1) * sizeof *nh);
    if (!nh) return LF_ENOMEM;
    r->h = nh;
    char *n = strdup(name), *v = strdup(value);
    if (!n || !v) {
        free(n);
        free(v);
        return LF_ENOMEM;
    }
    r->h[r->nh].name = n;
    r->h[r->nh].value = v;
    r->nh++;
    return LF_OK;
}

lf_http_stream *lf_http_respond_stream(lf_http_response *r, int status, const char *content_type) {
    if (r->stream) return NULL;
    lf_http_stream *st = calloc(1, sizeof *st);
    char *c = strdup(content_type ? content_type : "application/jsonlines");
    if (!st || !c || pthread_mutex_init(&st->mu, NULL)) {
        free(st);
        free(c);
        return NULL;
    }
    if (cond_init_monotonic(&st->cv)) {
        pthread_mutex_destroy(&st->mu);
        free(st);
        free(c);
        return NULL;
    }
    st->refs = 2; /* producer + server */
    st->max = r->srv->p.stream_buffer_max;
    st->idle_ms = r->srv->p.stream_idle_timeout_ms;
    st->srv = r->srv;
    response_clear(r);
    r->status = status;
    r->ctype = c;
    r->stream = st;
    r->set = 1;
    return st;
}

/* =============================== routing =============================== */

static void route_free(route *rt) {
    for (int i = 0; i < rt->nseg; i++) free(rt->seg[i]);
    free(rt->seg);
    free(rt->is_param);
    free(rt->method);
    free(rt->pattern);
}

/* Split "/a/b" into segments in place (s is modified); returns the count or -1 when over max. A path
 * "/" has zero segments; empty segments ("//", trailing "/") are kept so they never match a pattern. */
static int split_path(char *s, char **seg, int max) {
    if (*s == '/') s++;
    if (*s == '\0') return 0;
    int n = 0;
    for (;;) {
        if (n == max) return -1;
        seg[n++] = s;
        char *slash = strchr(s, '/');
        if (!slash) break;
        *slash = '\0';
        s = slash + 1;
    }
    return n;
}

#define MAX_SEGMENTS 32

lf_status lf_http_route(lf_http_server *s, const char *method, const char *pattern, lf_http_handler h, void *user,
                        lf_err *err) {
    lf_status st = LF_ENOMEM;
    if (s->started) return lf_err_set(err, LF_EBUSY, "http: route %s %s added after start", method, pattern);
    if (!method || !pattern || pattern[0] != '/' || !h)
        return lf_err_set(err, LF_EINVAL, "http: route needs a method, a pattern starting with '/' and a handler");
    route rt;
    memset(&rt, 0, sizeof rt);
    char *copy = strdup(pattern), *seg[MAX_SEGMENTS];
    LF_CHECK_ALLOC(copy, err);
    int n = split_path(copy, seg, MAX_SEGMENTS), np = 0;
    if (n < 0) {
        st = lf_err_set(err, LF_EINVAL, "http: route pattern %s has more than %d segments", pattern, MAX_SEGMENTS);
        goto fail;
    }
    rt.method = strdup(method);
    rt.pattern = strdup(pattern);
    rt.seg = calloc((size_t)n + 1, sizeof *rt.seg);
    rt.is_param = calloc((size_t)n + 1, sizeof *rt.is_param);
    LF_CHECK_ALLOC(rt.method, err);
    LF_CHECK_ALLOC(rt.pattern, err);
    LF_CHECK_ALLOC(rt.seg, err);
    LF_CHECK_ALLOC(rt.is_param, err);
    for (int i = 0; i < n; i++) {
        size_t l = strlen(seg[i]);
        if (l >= 2 && seg[i][0] == '{' && seg[i][l - 1] == '}') {
            if (++np > LF_HTTP_MAX_PARAMS) {
                st = lf_err_set(err, LF_EINVAL, "http: route pattern %s has more than %d {params}", pattern, LF_HTTP_MAX_PARAMS);
                goto fail;
            }
            rt.is_param[i] = 1;
            rt.seg[i] = strndup(seg[i] + 1, l - 2);
        } else {
            rt.seg[i] = strdup(seg[i]);
        }
        LF_CHECK_ALLOC(rt.seg[i], err);
        rt.nseg = i + 1;
    }
    rt.h = h;
    rt.user = user;
    route *nr = realloc(s->routes, (s->nroutes + 1) * sizeof *nr);
    LF_CHECK_ALLOC(nr, err);
    s->routes = nr;
    s->routes[s->nroutes++] = rt;
    free(copy);
    return LF_OK;
fail:
    free(copy);
    route_free(&rt);
    return st;
}

static int route_matches_path(const route *rt, char **seg, int n, lf_http_request *req) {
    if (rt->nseg != n) return 0;
    for (int i = 0; i < n; i++) {
        if (rt->is_param[i] ? seg[i][0] == '\0' : strcmp(rt->seg[i], seg[i]) != 0) return 0;
    }
    if (req) {
        req->nparam = 0;
        for (int i = 0; i < n; i++) {
            if (!rt->is_param[i]) continue;
            req->pname[req->nparam] = rt->seg[i];
            req->pval[req->nparam++] = seg[i];
        }
    }
    return 1;
}

static int method_matches(const route *rt, const char *method) {
    return strcmp(rt->method, "*") == 0 || strcmp(rt->method, method) == 0 ||
           (strcmp(method, "HEAD") == 0 && strcmp(rt->method, "GET") == 0);
}

/* =============================== request handling =============================== */

static enum MHD_Result dispatch(lf_http_server *s, req_ctx *c, struct MHD_Connection *conn, const char *url,
                                const char *method) {
    char *path = strdup(url), *seg[MAX_SEGMENTS];
    if (!path) return queue_error(conn, 500, "out of memory", 1, NULL);
    int n = split_path(path, seg, MAX_SEGMENTS);
    lf_http_request req;
    memset(&req, 0, sizeof req);
    const route *hit = NULL;
    char allow[128] = "";
    for (size_t i = 0; n >= 0 && i < s->nroutes && !hit; i++) {
        const route *rt = &s->routes[i];
        if (!route_matches_path(rt, seg, n, NULL)) continue;
        if (method_matches(rt, method)) {
            hit = rt;
            route_matches_path(rt, seg, n, &req);
        } else if (!strstr(allow, rt->method) && strlen(allow) + strlen(rt->method) + 3 < sizeof allow) {
            if (allow[0]) strcat(allow, ", ");
            strcat(allow, rt->method);
        }
    }
    enum MHD_Result ok;
    if (!hit) {
        char msg[512];
        if (allow[0]) {
            snprintf(msg, sizeof msg, "method %.16s is not allowed on %.200s (allowed: %s)", method, url, allow);
            ok = queue_error(conn, 405, msg, 0, allow);
        } else {
            snprintf(msg, sizeof msg, "no route for %.16s %.200s", method, url);
            ok = queue_error(conn, 404, msg, 0, NULL);
        }
        LF_LOG(LF_LOG_DEBUG, "%s %s -> %d", method, url, allow[0] ? 405 : 404);
        free(path);
        return ok;
    }
    req.conn = conn;
    req.method = method;
    req.path = url;
    req.body = c->body ? c->body : "";
    req.body_len = c->len;
    lf_http_response resp;
    memset(&resp, 0, sizeof resp);
    resp.srv = s;
    hit->h(hit->user, &req, &resp);
    free(path);

    struct MHD_Response *mr = NULL;
    if (resp.stream) {
        mr = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_reader, resp.stream,
                                               stream_response_free);
        if (!mr) { /* nobody will read it: cancel and drop the server's reference */
            stream_cancel(resp.stream);
            stream_release(resp.stream);
            resp.stream = NULL;
        } else {
            pthread_mutex_lock(&resp.stream->mu);
            resp.stream->refs++; /* the completion callback's */
            resp.stream->conn = conn;
            resp.stream->last_check_ms = now_ms();
            pthread_mutex_unlock(&resp.stream->mu);
            c->stream = resp.stream;
        }
    } else if (resp.set) {
        mr = resp.len ? MHD_create_response_from_buffer(resp.len, resp.body, MHD_RESPMEM_MUST_FREE)
                      : MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        if (mr && resp.len) resp.body = NULL; /* MHD frees it */
    }
    if (!mr) {
        const char *why = resp.set ? "out of memory building the response" : "handler produced no response";
        LF_LOG(LF_LOG_ERROR, "%s %s: %s", method, url, why);
        ok = queue_error(conn, 500, why, 1, NULL);
    } else {
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, resp.ctype);
        for (size_t i = 0; i < resp.nh; i++) MHD_add_response_header(mr, resp.h[i].name, resp.h[i].value);
        ok = MHD_queue_response(conn, (unsigned)resp.status, mr);
        MHD_destroy_response(mr);
        LF_LOG(LF_LOG_DEBUG, "%s %s -> %d%s", method, url, resp.status, c->stream ? " (stream)" : "");
    }
    for (size_t i = 0; i < resp.nh; i++) {
        free(resp.h[i].name);
        free(resp.h[i].value);
    }
    free(resp.h);
    free(resp.ctype);
    free(resp.body);
    return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    (void)version;
    lf_http_server *s = cls;
    req_ctx *c = *con_cls;
    size_t max = s->p.max_body_bytes;
    if (!c) { /* headers are in; the body (if any) follows */
        c = calloc(1, sizeof *c);
        if (!c) return MHD_NO;
        c->srv = s;
        *con_cls = c;
        in_flight_add(s, 1);
        if (atomic_load(&s->stopping)) {
            c->answered = 1;
            return queue_error(conn, 503, "server is shutting down", 1, NULL);
        }
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char *end = NULL;
            errno = 0;
            unsigned long long v = strtoull(cl, &end, 10);
            if (errno == 0 && end != cl && v > max) { /* answer now, without reading the body */
                char msg[160];
                snprintf(msg, sizeof msg, "request body is %llu bytes; the limit is %zu", v, max);
                c->answered = 1;
                LF_LOG(LF_LOG_DEBUG, "%s %s -> 413 (Content-Length %llu)", method, url, v);
                return queue_error(conn, 413, msg, 1, NULL);
            }
            if (errno == 0 && end != cl && v > 0) { /* up to 1 MiB up front: idle clients cannot pin memory */
                size_t want = (size_t)(v < ((uint64_t)1 << 20) ? v : ((uint64_t)1 << 20)) + 1;
                c->body = malloc(want);
                if (c->body) c->cap = want;
            }
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        c->seen += n;
        if (c->answered || c->nomem) return MHD_YES;
        if (c->too_big || c->len + n > max) { /* chunked upload over the cap: drop it, answer 413 at the end */
            if (!c->too_big) {
                free(c->body);
                c->body = NULL;
                c->len = c->cap = 0;
                c->too_big = 1;
            }
            /* a client that keeps sending far past the cap is cut off */
            return c->seen > 4 * (uint64_t)max ? MHD_NO : MHD_YES;
        }
        if (c->len + n + 1 > c->cap) {
            size_t nc = c->cap ? c->cap : 8192;
            while (nc < c->len + n + 1) nc *= 2;
            if (nc > max + 1) nc = max + 1;
            char *nb = realloc(c->body, nc);
            if (!nb) {
                c->nomem = 1;
                return MHD_YES;
            }
            c->body = nb;
            c->cap = nc;
        }
        memcpy(c->body + c->len, upload_data, n);
        c->len += n;
        c->body[c->len] = '\0';
        return MHD_YES;
    }
    if (c->answered) return MHD_YES;
    c->answered = 1;
    if (c->too_big) {
        char msg[160];
        snprintf(msg, sizeof msg, "request body is over the limit of %zu bytes", max);
        return queue_error(conn, 413, msg, 1, NULL);
    }
    if (c->nomem) return queue_error(conn, 500, "out of memory reading the request body", 1, NULL);
    if (c->body) c->body[c->len] = '\0';
    return dispatch(s, c, conn, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)conn;
    lf_http_server *s = cls;
    req_ctx *c = *con_cls;
    if (!c) return;
    if (c->stream) {
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) stream_cancel(c->stream);
        stream_release(c->stream);
    }
    free(c->body);
    free(c);
    *con_cls = NULL;
    in_flight_add(s, -1);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
    LF_LOG(LF_LOG_WARN, "microhttpd: %s", msg);
}

/* =============================== server lifetime =============================== */

lf_http_params lf_http_default_params(void) {
    lf_http_params p;
    p.host = "0.0.0.0";
    p.port = 8080;
    p.max_body_bytes = 6291456;
    p.max_connections = 256;
    p.idle_timeout_s = 75;
    p.stream_idle_timeout_ms = 0;
    p.stream_buffer_max = (size_t)16 << 20;
    return p;
}

lf_status lf_http_create(const lf_http_params *p, lf_http_server **out, lf_err *err) {
    *out = NULL;
    lf_http_params d = lf_http_default_params();
    if (!p) p = &d;
    if (p->port < 0 || p->port > 65535) return lf_err_set(err, LF_EINVAL, "http: port %d is out of range", p->port);
    const char *host = p->host ? p->host : "0.0.0.0";
    if (strlen(host) > INET6_ADDRSTRLEN) return lf_err_set(err, LF_EINVAL, "http: host '%.64s' is too long", host);
    lf_http_server *s = calloc(1, sizeof *s);
    if (!s) return lf_err_set(err, LF_ENOMEM, "http: out of memory");
    s->p = *p;
    strcpy(s->host, host);
    s->p.host = s->host;
    if (!s->p.max_body_bytes) s->p.max_body_bytes = d.max_body_bytes;
    if (!s->p.max_connections) s->p.max_connections = d.max_connections;
    if (!s->p.stream_buffer_max) s->p.stream_buffer_max = d.stream_buffer_max;
    if (pthread_mutex_init(&s->mu, NULL) || cond_init_monotonic(&s->cv)) {
        free(s);
        return lf_err_set(err, LF_ENOMEM, "http: cannot create a mutex");
    }
    *out = s;
    return LF_OK;
}

lf_status lf_http_start(lf_http_server *s, lf_err *err) {
    if (s->started) return lf_err_set(err, LF_EBUSY, "http: server already started");
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
    struct sockaddr *sa;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ITC | MHD_USE_POLL |
                     MHD_USE_ERROR_LOG;
    memset(&v4, 0, sizeof v4);
    memset(&v6, 0, sizeof v6);
    if (strchr(s->host, ':')) {
        v6.sin6_family = AF_INET6;
        v6.sin6_port = htons((uint16_t)s->p.port);
        if (inet_pton(AF_INET6, s->host, &v6.sin6_addr) != 1)
            return lf_err_set(err, LF_EINVAL, "http: host '%s' is not an IPv6 address", s->host);
        sa = (struct sockaddr *)&v6;
        flags |= MHD_USE_IPv6;
    } else {
        v4.sin_family = AF_INET;
        v4.sin_port = htons((uint16_t)s->p.port);
        if (inet_pton(AF_INET, s->host, &v4.sin_addr) != 1)
            return lf_err_set(err, LF_EINVAL, "http: host '%s' is not an IPv4 address", s->host);
        sa = (struct sockaddr *)&v4;
    }
    s->d = MHD_start_daemon(flags, (uint16_t)s->p.port, NULL, NULL, on_request, s,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, s, /* first, so every message goes through it */
                            MHD_OPTION_SOCK_ADDR, sa,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->p.max_connections,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->p.idle_timeout_s,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_END);
    if (!s->d) return lf_err_set(err, LF_EIO, "http: cannot listen on %s:%d (port in use, or no permission?)", s->host, s->p.port);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? (int)di->port : s->p.port;
    s->started = 1;
    LF_LOG(LF_LOG_INFO, "listening on %s:%d", s->host, s->port);
    return LF_OK;
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
    MHD_socket lfd = MHD_quiesce_daemon(s->d);
    struct timespec ts;
    abs_deadline(&ts, deadline_ms > 0 ? deadline_ms : 0);
    pthread_mutex_lock(&s->mu);
    while (s->in_flight > 0) {
        if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) == ETIMEDOUT) break;
    }
    int left = s->in_flight;
    pthread_mutex_unlock(&s->mu);
    if (left) LF_LOG(LF_LOG_WARN, "stopping with %d request(s) still in flight after %d ms; cancelling them", left, deadline_ms);
    atomic_store(&s->hard_stop, 1); /* waiting streams end within LF_HTTP_POLL_MS */
    MHD_stop_daemon(s->d);
    s->d = NULL;
    if (lfd != MHD_INVALID_SOCKET) close(lfd);
    s->stopped = 1;
}

void lf_http_free(lf_http_server *s) {
    if (!s) return;
    lf_http_stop(s, 0);
    for (size_t i = 0; i < s->nroutes; i++) route_free(&s->routes[i]);
    free(s->routes);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

/* =============================== request accessors =============================== */

const char *lf_http_method(const lf_http_request *r) { return r->method; }
const char *lf_http_path(const lf_http_request *r) { return r->path; }

const char *lf_http_body(const lf_http_request *r, size_t *len) {
    if (len) *len = r->body_len;
    return r->body;
}

const char *lf_http_header(const lf_http_request *r, const char *name) {
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *lf_http_query(const lf_http_request *r, const char *name) {
    const char *v = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
    if (!v) {
        /* "?flag" without '=' is stored with a NULL value; tell it apart from an absent key */
        const char *dummy = NULL;
        if (MHD_lookup_connection_value_n(r->conn, MHD_GET_ARGUMENT_KIND, name, strlen(name), &dummy, NULL) == MHD_YES)
            return "";
    }
    return v;
}

const char *lf_http_param(const lf_http_request *r, const char *name) {
    for (int i = 0; i < r->nparam; i++)
        if (strcmp(r->pname[i], name) == 0) return r->pval[i];
    return NULL;
}
