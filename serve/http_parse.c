/* http_parse.c - HTTP/1.x request heads and chunked bodies from untrusted bytes (see http_parse.h).
 * Invariants: never reads past len; never writes outside [buf, buf + head length); every error sets a
 * status and a message; accepted heads have a method token, a path starting with '/' (or "*"), field
 * names that are tokens and values without control bytes, and at most one Content-Length value. */
#include "serve/http_parse.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static int is_tchar(unsigned char c) {
    if (c >= 'a' && c <= 'z') return 1;
    if (c >= 'A' && c <= 'Z') return 1;
    if (c >= '0' && c <= '9') return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int hexval(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int64_t fail(int *status, int code, char *msg, size_t cap, const char *why) {
    *status = code;
    snprintf(msg, cap, "%s", why);
    return -1;
}

/* Decode %XX (and '+' as space when plus) in place; returns 0, or -1 on a bad escape / decoded NUL when
 * strict (a lenient decode keeps a bad escape as it is). */
static int pct_decode(char *s, int plus, int strict) {
    char *w = s;
    for (char *r = s; *r; r++) {
        if (*r == '%') {
            int a = hexval((unsigned char)r[1]), b = a >= 0 ? hexval((unsigned char)r[2]) : -1;
            if (a >= 0 && b >= 0 && (a || b)) {
                *w++ = (char)(a * 16 + b);
                r += 2;
                continue;
            }
            if (strict) return -1;
        } else if (plus && *r == '+') {
            *w++ = ' ';
            continue;
        }
        *w++ = *r;
    }
    *w = '\0';
    return 0;
}

static int token_list_has(const char *v, const char *tok) {
    size_t tl = strlen(tok);
    const char *p = v;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        const char *e = p;
        while (*e && *e != ',') e++;
        const char *t = e;
        while (t > p && (t[-1] == ' ' || t[-1] == '\t')) t--;
        if ((size_t)(t - p) == tl && strncasecmp(p, tok, tl) == 0) return 1;
        p = e;
    }
    return 0;
}

int64_t lf_http_parse_head(char *buf, size_t len, size_t max_line, size_t max_head, lf_http_head *h, int *status,
                           char *msg, size_t msg_cap) {
    size_t skip = 0; /* RFC 9112 2.2: ignore empty lines before the request line */
    while (skip < len && (buf[skip] == '\r' || buf[skip] == '\n') && skip < 64) skip++;
    /* 1. is the head complete, and within limits? (no writes before it is) */
    const char *first_nl = memchr(buf + skip, '\n', len - skip);
    if (!first_nl) {
        if (len - skip > max_line) return fail(status, 414, msg, msg_cap, "the request line is too long (URI too long)");
        return 0;
    }
    if ((size_t)(first_nl - (buf + skip)) > max_line)
        return fail(status, 414, msg, msg_cap, "the request line is too long (URI too long)");
    size_t end = 0;
    for (const char *p = first_nl; p; p = memchr(p + 1, '\n', len - (size_t)(p + 1 - buf))) {
        size_t i = (size_t)(p - buf) + 1;
        if (i >= len) break;
        if (buf[i] == '\n') {
            end = i + 1;
            break;
        }
        if (buf[i] == '\r' && i + 1 < len && buf[i + 1] == '\n') {
            end = i + 2;
            break;
        }
        if (i > max_head) break;
    }
    if (!end) {
        if (len > max_head) return fail(status, 431, msg, msg_cap, "the request header fields are too large");
        return 0;
    }
    if (end > max_head) return fail(status, 431, msg, msg_cap, "the request header fields are too large");

    memset(h, 0, sizeof *h);
    h->content_length = -1;
    /* 2. split into lines (NUL-terminated in place) */
    char *p = buf + skip, *stop = buf + end;
    char *line_end = memchr(p, '\n', (size_t)(stop - p));
    *line_end = '\0';
    if (line_end > p && line_end[-1] == '\r') line_end[-1] = '\0';
    /* request line: method SP target SP version */
    char *sp1 = strchr(p, ' ');
    if (!sp1 || sp1 == p) return fail(status, 400, msg, msg_cap, "malformed request line");
    *sp1 = '\0';
    for (char *q = p; *q; q++)
        if (!is_tchar((unsigned char)*q)) return fail(status, 400, msg, msg_cap, "malformed request method");
    if (strlen(p) > 32) return fail(status, 400, msg, msg_cap, "request method is too long");
    h->method = p;
    char *target = sp1 + 1, *sp2 = strchr(target, ' ');
    if (!sp2 || sp2 == target) return fail(status, 400, msg, msg_cap, "malformed request line");
    *sp2 = '\0';
    char *ver = sp2 + 1;
    if (strncmp(ver, "HTTP/", 5) != 0 || ver[5] < '0' || ver[5] > '9' || ver[6] != '.' || ver[7] < '0' || ver[7] > '9' || ver[8])
        return fail(status, 400, msg, msg_cap, "malformed HTTP version in the request line");
    if (ver[5] != '1') return fail(status, 505, msg, msg_cap, "only HTTP/1.0 and HTTP/1.1 are supported");
    h->minor = ver[7] - '0';
    for (char *q = target; *q; q++)
        if ((unsigned char)*q <= 0x20 || (unsigned char)*q == 0x7f)
            return fail(status, 400, msg, msg_cap, "control character in the request target");
    if (strncasecmp(target, "http://", 7) == 0 || strncasecmp(target, "https://", 8) == 0) { /* absolute-form */
        char *a = strstr(target, "://") + 3, *slash = strchr(a, '/');
        if (slash) {
            target = slash;
        } else { /* "http://host" or "http://host?q": the path is "/" */
            char *qm = strchr(a, '?');
            if (qm) {
                qm[-1] = '/';
                target = qm - 1;
            } else { /* reuse the second '/' of "://" */
                target = a - 1;
                *a = '\0';
            }
        }
    }
    if (target[0] != '/' && strcmp(target, "*") != 0)
        return fail(status, 400, msg, msg_cap, "the request target must be an absolute path");
    char *qm = strchr(target, '?');
    if (qm) *qm = '\0';
    if (pct_decode(target, 0, 1) != 0) return fail(status, 400, msg, msg_cap, "bad percent-escape in the request path");
    h->path = target;
    if (qm) {
        char *a = qm + 1;
        while (*a && h->narg < LF_HTTP_MAX_ARGS) {
            char *amp = strchr(a, '&');
            if (amp) *amp = '\0';
            if (*a) {
                char *eq = strchr(a, '=');
                if (eq) *eq = '\0';
                pct_decode(a, 1, 0);
                if (eq) pct_decode(eq + 1, 1, 0);
                h->arg[h->narg].name = a;
                h->arg[h->narg].value = eq ? eq + 1 : "";
                h->narg++;
            }
            if (!amp) break;
            a = amp + 1;
        }
    }
    /* header fields */
    int have_te = 0;
    for (p = line_end + 1; p < stop;) {
        char *e = memchr(p, '\n', (size_t)(stop - p));
        if (!e) break;
        *e = '\0';
        if (e > p && e[-1] == '\r') e[-1] = '\0';
        char *next = e + 1;
        if (!*p) break; /* the blank line */
        if (*p == ' ' || *p == '\t') return fail(status, 400, msg, msg_cap, "obsolete header line folding is not accepted");
        char *colon = strchr(p, ':');
        if (!colon || colon == p) return fail(status, 400, msg, msg_cap, "malformed header field (no name or no ':')");
        *colon = '\0';
        for (char *q = p; *q; q++)
            if (!is_tchar((unsigned char)*q)) return fail(status, 400, msg, msg_cap, "malformed header field name");
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        char *ve = v + strlen(v);
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) *--ve = '\0';
        for (char *q = v; *q; q++)
            if (((unsigned char)*q < 0x20 && *q != '\t') || (unsigned char)*q == 0x7f)
                return fail(status, 400, msg, msg_cap, "control character in a header field value");
        if (h->nfield == LF_HTTP_MAX_HEADERS) return fail(status, 431, msg, msg_cap, "too many request header fields");
        h->field[h->nfield].name = p;
        h->field[h->nfield].value = v;
        h->nfield++;
        if (strcasecmp(p, "Content-Length") == 0) {
            if (!*v || strlen(v) > 15) return fail(status, 400, msg, msg_cap, "bad Content-Length");
            int64_t n = 0;
            for (char *q = v; *q; q++) {
                if (*q < '0' || *q > '9') return fail(status, 400, msg, msg_cap, "bad Content-Length");
                n = n * 10 + (*q - '0');
            }
            if (h->content_length >= 0 && h->content_length != n)
                return fail(status, 400, msg, msg_cap, "conflicting Content-Length fields");
            h->content_length = n;
        } else if (strcasecmp(p, "Transfer-Encoding") == 0) {
            if (have_te || strcasecmp(v, "chunked") != 0)
                return fail(status, 501, msg, msg_cap, "only Transfer-Encoding: chunked is supported for request bodies");
            have_te = 1;
        } else if (strcasecmp(p, "Expect") == 0) {
            if (strcasecmp(v, "100-continue") == 0) h->expect_continue = 1;
        }
        p = next;
    }
    if (have_te && h->minor == 0) return fail(status, 400, msg, msg_cap, "Transfer-Encoding in an HTTP/1.0 request");
    if (have_te && h->content_length >= 0)
        return fail(status, 400, msg, msg_cap, "both Transfer-Encoding and Content-Length in one request");
    h->chunked = have_te;
    const char *conn = lf_http_head_field(h, "Connection");
    if (h->minor >= 1) h->keep_alive = !(conn && token_list_has(conn, "close"));
    else h->keep_alive = conn && token_list_has(conn, "keep-alive");
    return (int64_t)end;
}

const char *lf_http_head_field(const lf_http_head *h, const char *name) {
    for (size_t i = 0; i < h->nfield; i++)
        if (strcasecmp(h->field[i].name, name) == 0) return h->field[i].value;
    return NULL;
}

/* ---- chunked bodies ---- */

enum { CH_SIZE = 0, CH_EXT, CH_SIZE_LF, CH_DATA, CH_DATA_CR, CH_DATA_LF, CH_TRAILER, CH_TRAILER_LINE, CH_TRAILER_LF,
       CH_LAST_LF, CH_DONE };

#define CH_LINE_MAX 4096

int64_t lf_http_chunked_feed(lf_http_chunked *c, const char *in, size_t n,
                             void (*out)(void *user, const char *data, size_t len), void *user, char *msg,
                             size_t msg_cap) {
    size_t i = 0;
    int digits = c->line ? 1 : 0;
    while (i < n && c->state != CH_DONE) {
        unsigned char ch = (unsigned char)in[i];
        switch (c->state) {
        case CH_SIZE: {
            int v = hexval(ch);
            if (v >= 0) {
                if (c->left >> 40) {
                    snprintf(msg, msg_cap, "chunk size is too large");
                    return -1;
                }
                c->left = c->left * 16 + (uint64_t)v;
                c->line++;
                digits = 1;
                i++;
                break;
            }
            if (!digits) {
                snprintf(msg, msg_cap, "malformed chunk size");
                return -1;
            }
            if (ch == ';' || ch == ' ' || ch == '\t') c->state = CH_EXT;
            else if (ch == '\r') c->state = CH_SIZE_LF;
            else if (ch == '\n') c->state = c->left ? CH_DATA : CH_TRAILER;
            else {
                snprintf(msg, msg_cap, "malformed chunk size");
                return -1;
            }
            if (ch == '\n') c->line = 0;
            i++;
            break;
        }
        case CH_EXT:
            if (++c->line > CH_LINE_MAX) {
                snprintf(msg, msg_cap, "chunk extension is too long");
                return -1;
            }
            if (ch == '\r') c->state = CH_SIZE_LF;
            else if (ch == '\n') c->state = c->left ? CH_DATA : CH_TRAILER, c->line = 0;
            i++;
            break;
        case CH_SIZE_LF:
            if (ch != '\n') {
                snprintf(msg, msg_cap, "malformed chunk size line");
                return -1;
            }
            c->line = 0;
            c->state = c->left ? CH_DATA : CH_TRAILER;
            i++;
            break;
        case CH_DATA: {
            size_t take = n - i;
            if ((uint64_t)take > c->left) take = (size_t)c->left;
            if (out && take) out(user, in + i, take);
            c->left -= take;
            i += take;
            if (!c->left) c->state = CH_DATA_CR;
            break;
        }
        case CH_DATA_CR:
            if (ch == '\n') {
                c->state = CH_SIZE;
                digits = 0;
            } else if (ch == '\r') {
                c->state = CH_DATA_LF;
            } else {
                snprintf(msg, msg_cap, "chunk data is not followed by CRLF");
                return -1;
            }
            i++;
            break;
        case CH_DATA_LF:
            if (ch != '\n') {
                snprintf(msg, msg_cap, "chunk data is not followed by CRLF");
                return -1;
            }
            c->state = CH_SIZE;
            digits = 0;
            i++;
            break;
        case CH_TRAILER: /* start of a trailer line, or the final CRLF */
            if (ch == '\r') c->state = CH_LAST_LF;
            else if (ch == '\n') c->state = CH_DONE;
            else c->state = CH_TRAILER_LINE, c->line = 1;
            i++;
            break;
        case CH_TRAILER_LINE:
            if (++c->line > CH_LINE_MAX) {
                snprintf(msg, msg_cap, "trailer field is too long");
                return -1;
            }
            if (ch == '\r') c->state = CH_TRAILER_LF;
            else if (ch == '\n') c->state = CH_TRAILER;
            i++;
            break;
        case CH_TRAILER_LF:
            if (ch != '\n') {
                snprintf(msg, msg_cap, "malformed trailer field");
                return -1;
            }
            c->state = CH_TRAILER;
            i++;
            break;
        case CH_LAST_LF:
            if (ch != '\n') {
                snprintf(msg, msg_cap, "malformed end of chunked body");
                return -1;
            }
            c->state = CH_DONE;
            i++;
            break;
        default:
            snprintf(msg, msg_cap, "chunked decoder state is corrupt");
            return -1;
        }
    }
    if (c->state == CH_DONE) c->done = 1;
    return (int64_t)i;
}
