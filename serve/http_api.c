/* http_api.c - the handler- and producer-facing half of serve/http.h: streams fed from any thread, whole
 * responses, the routing table and the request accessors. The I/O loop that moves the bytes is http.c.
 * Invariants: a stream's fields are read and written under its mutex; push never blocks (it queues up to
 * stream_buffer_max bytes, then cancels); on_cancel runs at most once and never after the producer closed. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* POLLRDHUP */
#endif
#include "serve/http_int.h"

#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/log.h"

/* {"error": msg, "code": status}; msg bytes that are not UTF-8 become '?'. */
char *lf_http__error_json(int status, const char *msg, size_t *len) {
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
        if (out) { /* json_dumps uses jansson's allocator: copy so callers free() safely */
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

/* =============================== streams (producer side) =============================== */

void lf_http__stream_release(lf_http_stream *st) {
    pthread_mutex_lock(&st->mu);
    int left = --st->refs;
    pthread_mutex_unlock(&st->mu);
    if (left) return;
    pthread_mutex_destroy(&st->mu);
    free(st->buf);
    free(st);
}

/* Mark cancelled (mu held); returns the callback to run after unlocking, or NULL. */
void (*lf_http__cancel_locked(lf_http_stream *st, void **user))(void *) {
    void (*fn)(void *) = NULL;
    st->cancelled = 1;
    if (!st->closed && !st->notified && st->on_cancel) {
        fn = st->on_cancel;
        *user = st->cancel_user;
        st->notified = 1;
    }
    return fn;
}

static void stream_notify_locked(lf_http_stream *st) {
    if (st->slot >= 0) lf_http__wake_slot(st->srv, st->slot, st->gen);
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
        stream_notify_locked(st);
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
        st->last_push_ms = lf_http__now_ms();
        stream_notify_locked(st);
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
    stream_notify_locked(st);
    pthread_mutex_unlock(&st->mu);
    lf_http__stream_release(st);
}

/* =============================== responses (handler side) =============================== */

void lf_http__response_clear(lf_http_response *r) {
    free(r->ctype);
    free(r->body);
    r->ctype = r->body = NULL;
    r->len = 0;
    r->set = 0;
}

void lf_http__response_free(lf_http_response *r) {
    lf_http__response_clear(r);
    for (size_t i = 0; i < r->nh; i++) {
        free(r->h[i].name);
        free(r->h[i].value);
    }
    free(r->h);
    r->h = NULL;
    r->nh = 0;
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
    lf_http__response_clear(r);
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
    char *body = lf_http__error_json(status, msg, &len);
    if (!body) return LF_ENOMEM;
    lf_status st = lf_http_respond(r, status, "application/json", body, len);
    free(body);
    return st;
}

lf_status lf_http_add_header(lf_http_response *r, const char *name, const char *value) {
    for (const char *q = name; *q; q++)
        if ((unsigned char)*q <= 0x20 || *q == ':') return LF_EINVAL;
    for (const char *q = value; *q; q++)
        if (*q == '\r' || *q == '\n') return LF_EINVAL; /* no header injection */
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
    st->refs = 2; /* producer + server */
    st->max = r->srv->p.stream_buffer_max;
    st->idle_ms = r->srv->p.stream_idle_timeout_ms;
    st->srv = r->srv;
    st->slot = -1;
    st->last_push_ms = lf_http__now_ms();
    lf_http__response_clear(r);
    r->status = status;
    r->ctype = c;
    r->stream = st;
    r->set = 1;
    return st;
}

/* =============================== routing =============================== */

void lf_http__route_free(route *rt) {
    for (int i = 0; i < rt->nseg; i++) free(rt->seg[i]);
    free(rt->seg);
    free(rt->is_param);
    free(rt->method);
    free(rt->pattern);
}

/* Split "/a/b" into segments in place (s is modified); returns the count or -1 when over max. A path
 * "/" has zero segments; empty segments ("//", trailing "/") are kept so they never match a pattern. */
int lf_http__split_path(char *s, char **seg, int max) {
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


static lf_status add_route(lf_http_server *s, const char *method, const char *pattern, lf_http_handler h, void *user,
                           int inline_, lf_err *err) {
    lf_status st = LF_ENOMEM;
    if (s->started) return lf_err_set(err, LF_EBUSY, "http: route %s %s added after start", method, pattern);
    if (!method || !pattern || pattern[0] != '/' || !h)
        return lf_err_set(err, LF_EINVAL, "http: route needs a method, a pattern starting with '/' and a handler");
    route rt;
    memset(&rt, 0, sizeof rt);
    char *copy = strdup(pattern), *seg[MAX_SEGMENTS];
    LF_CHECK_ALLOC(copy, err);
    int n = lf_http__split_path(copy, seg, MAX_SEGMENTS), np = 0;
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
    rt.inline_ = inline_;
    route *nr = realloc(s->routes, (s->nroutes + 1) * sizeof *nr);
    LF_CHECK_ALLOC(nr, err);
    s->routes = nr;
    s->routes[s->nroutes++] = rt;
    free(copy);
    return LF_OK;
fail:
    free(copy);
    lf_http__route_free(&rt);
    return st;
}

lf_status lf_http_route(lf_http_server *s, const char *method, const char *pattern, lf_http_handler h, void *user,
                        lf_err *err) {
    return add_route(s, method, pattern, h, user, 0, err);
}

lf_status lf_http_route_inline(lf_http_server *s, const char *method, const char *pattern, lf_http_handler h,
                               void *user, lf_err *err) {
    return add_route(s, method, pattern, h, user, 1, err);
}

int lf_http__route_matches_path(const route *rt, char **seg, int n, lf_http_request *req) {
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

int lf_http__method_matches(const route *rt, const char *method) {
    return strcmp(rt->method, "*") == 0 || strcmp(rt->method, method) == 0 ||
           (strcmp(method, "HEAD") == 0 && strcmp(rt->method, "GET") == 0);
}

/* =============================== request accessors =============================== */

const char *lf_http_method(const lf_http_request *r) { return r->method; }
const char *lf_http_path(const lf_http_request *r) { return r->path; }

const char *lf_http_body(const lf_http_request *r, size_t *len) {
    if (len) *len = r->body_len;
    return r->body;
}

const char *lf_http_header(const lf_http_request *r, const char *name) { return lf_http_head_field(&r->c->head, name); }

const char *lf_http_query(const lf_http_request *r, const char *name) {
    const lf_http_head *h = &r->c->head;
    for (size_t i = 0; i < h->narg; i++)
        if (strcmp(h->arg[i].name, name) == 0) return h->arg[i].value;
    return NULL;
}

const char *lf_http_param(const lf_http_request *r, const char *name) {
    for (int i = 0; i < r->nparam; i++)
        if (strcmp(r->pname[i], name) == 0) return r->pval[i];
    return NULL;
}

/* The client closed or reset its socket (or the server is cutting everything off). From the handler. */
int lf_http_client_gone(const lf_http_request *r) {
    if (!r || !r->c) return 0;
    conn *c = r->c;
    if (atomic_load(&c->gone) || (c->resp.srv && atomic_load(&c->resp.srv->hard_stop))) return 1;
    struct pollfd pf = {c->fd, POLLIN | POLLRDHUP, 0};
    if (poll(&pf, 1, 0) <= 0) return 0;
    if (pf.revents & (POLLHUP | POLLERR | POLLNVAL | POLLRDHUP)) return 1;
    if (pf.revents & POLLIN) {
        char ch;
        ssize_t n = recv(c->fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0) return 1;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return 1;
    }
    return 0;
}

