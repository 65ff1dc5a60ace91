/* stop.c - incremental stop-sequence matcher: held text + new piece searched for complete stop strings;
 * the longest suffix that could still grow into one (or an incomplete UTF-8 character) is held back. */
#include "serve/stop.h"

#include <stdlib.h>
#include <string.h>

struct lf_stop_matcher {
    char **stops;   /* [n] copies */
    size_t *lens;   /* [n] */
    size_t n;
    int include_stop;
    char *buf;      /* held text at [hold_off, hold_off + held), then room for the next piece */
    size_t cap, hold_off, held;
    int done;       /* a stop matched */
    int which;      /* index of the matched stop or -1 */
};

size_t lf_stop_utf8_tail(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t back = 0;
    /* walk back over at most 3 continuation bytes to the lead byte */
    while (back < n && back < 4 && (u[n - 1 - back] & 0xC0) == 0x80) back++;
    if (back == n || back >= 4) return 0; /* no lead byte within reach: not a prefix of anything valid */
    size_t lead_at = n - 1 - back;
    unsigned char c = u[lead_at];
    size_t need = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    size_t have = back + 1;
    if (need == 0 || have >= need) return 0; /* ASCII, invalid lead, or complete character */
    if (have >= 2) {                          /* second byte ranges that rule out overlongs/surrogates */
        unsigned char c1 = u[lead_at + 1];
        if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 > 0x9F) || (c == 0xF0 && c1 < 0x90) || (c == 0xF4 && c1 > 0x8F))
            return 0;
    }
    return have;
}

lf_status lf_stop_create(const char *const *stops, const size_t *lens, size_t n, int include_stop,
                         lf_stop_matcher **out, lf_err *err) {
    lf_status st = LF_ENOMEM;
    *out = NULL;
    lf_stop_matcher *m = calloc(1, sizeof *m);
    LF_CHECK_ALLOC(m, err);
    m->include_stop = include_stop;
    m->which = -1;
    size_t longest = 4;
    if (n > 0) {
        m->stops = calloc(n, sizeof *m->stops);
        LF_CHECK_ALLOC(m->stops, err);
        m->lens = calloc(n, sizeof *m->lens);
        LF_CHECK_ALLOC(m->lens, err);
    }
    for (size_t i = 0; i < n; i++) {
        if (!stops[i]) {
            st = lf_err_set(err, LF_EINVAL, "stop string %zu is NULL", i);
            goto fail;
        }
        size_t l = lens ? lens[i] : strlen(stops[i]);
        if (l == 0) {
            st = lf_err_set(err, LF_EINVAL, "stop string %zu is empty", i);
            goto fail;
        }
        m->stops[i] = malloc(l);
        LF_CHECK_ALLOC(m->stops[i], err);
        memcpy(m->stops[i], stops[i], l);
        m->lens[i] = l;
        m->n = i + 1;
        if (l > longest) longest = l;
    }
    m->cap = 2 * longest + 64;
    m->buf = malloc(m->cap);
    LF_CHECK_ALLOC(m->buf, err);
    *out = m;
    return LF_OK;
fail:
    lf_stop_free(m);
    return st;
}

void lf_stop_free(lf_stop_matcher *m) {
    if (!m) return;
    for (size_t i = 0; i < m->n; i++) free(m->stops[i]);
    free(m->stops);
    free(m->lens);
    free(m->buf);
    free(m);
}

void lf_stop_reset(lf_stop_matcher *m) {
    m->hold_off = m->held = 0;
    m->done = 0;
    m->which = -1;
}

int lf_stop_which(const lf_stop_matcher *m) { return m->which; }
size_t lf_stop_held(const lf_stop_matcher *m) { return m->held; }

lf_status lf_stop_feed(lf_stop_matcher *m, const char *piece, size_t len, const char **emit, size_t *emit_len,
                       int *stopped, lf_err *err) {
    *emit = m->buf;
    *emit_len = 0;
    *stopped = m->done;
    if (m->done) return LF_OK;
    /* compact the held text to the front (invalidates the previous emit pointer, as documented) */
    if (m->hold_off) memmove(m->buf, m->buf + m->hold_off, m->held);
    m->hold_off = 0;
    if (m->held + len > m->cap) {
        size_t nc = m->cap;
        while (nc < m->held + len) nc *= 2;
        char *nb = realloc(m->buf, nc);
        if (!nb) return lf_err_set(err, LF_ENOMEM, "stop matcher: out of memory growing to %zu bytes", nc);
        m->buf = nb;
        m->cap = nc;
    }
    if (len) memcpy(m->buf + m->held, piece, len);
    size_t total = m->held + len;
    const char *t = m->buf;
    *emit = m->buf;
    /* complete matches: the held text alone holds none (else it would have matched earlier), so a match
     * ends past `held`. The first one to complete wins (earliest end; then the longest, i.e. earliest
     * start; then list order): the same answer whatever the split of the text into pieces. */
    for (size_t e = m->held + 1; e <= total; e++) {
        int best = -1;
        for (size_t k = 0; k < m->n; k++) {
            size_t l = m->lens[k];
            if (l <= e && (best < 0 || l > m->lens[best]) && memcmp(t + e - l, m->stops[k], l) == 0) best = (int)k;
        }
        if (best >= 0) {
            size_t l = m->lens[best];
            m->done = 1;
            m->which = best;
            m->held = 0;
            *emit_len = m->include_stop ? e : e - l;
            *stopped = 1;
            return LF_OK;
        }
    }
    /* hold back the longest suffix that is a proper prefix of some stop string */
    size_t hold = 0;
    for (size_t k = 0; k < m->n; k++) {
        size_t maxj = m->lens[k] - 1 < total ? m->lens[k] - 1 : total;
        for (size_t j = maxj; j > hold; j--) {
            if (memcmp(t + total - j, m->stops[k], j) == 0) {
                hold = j;
                break;
            }
        }
    }
    size_t u = lf_stop_utf8_tail(t, total);
    if (u > hold) hold = u;
    *emit_len = total - hold;
    m->hold_off = total - hold;
    m->held = hold;
    return LF_OK;
}

void lf_stop_flush(lf_stop_matcher *m, const char **emit, size_t *emit_len) {
    *emit = m->buf + m->hold_off;
    *emit_len = m->done ? 0 : m->held;
    m->hold_off = m->held = 0;
}
