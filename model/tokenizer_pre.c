/* tokenizer_pre.c - the string side of the tokenizer: UTF-8 and hash-map helpers, String/Regex patterns
 * with tokenizers' find_matches semantics (PCRE2 in place of Oniguruma), normalizers and pre-tokenizers.
 *
 * A pre-tokenizer turns a list of pieces into a longer list of pieces; pieces carrying an id (added tokens)
 * pass through untouched, and empty pieces are dropped, as in tokenizers' PreTokenizedString::split. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "model/tokenizer_int.h"

/* ---------------------------------------------------------------- buffers */
lf_status tk_buf_reserve(tk_buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return LF_OK;
    size_t c = b->cap ? b->cap : 64;
    while (c < b->len + extra + 1) c *= 2;
    char *p = realloc(b->data, c);
    if (!p) return LF_ENOMEM;
    b->data = p;
    b->cap = c;
    return LF_OK;
}

lf_status tk_buf_put(tk_buf *b, const void *p, size_t n) {
    if (tk_buf_reserve(b, n)) return LF_ENOMEM;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return LF_OK;
}

void tk_buf_free(tk_buf *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* ---------------------------------------------------------------- UTF-8 */
int tk_utf8_next(const char *s, size_t n, size_t i, int32_t *cp) {
    const uint8_t *u = (const uint8_t *)s + i;
    (void)n;
    if (u[0] < 0x80) return *cp = u[0], 1;
    if (u[0] < 0xE0) return *cp = (int32_t)((u[0] & 0x1F) << 6 | (u[1] & 0x3F)), 2;
    if (u[0] < 0xF0) return *cp = (int32_t)((u[0] & 0x0F) << 12 | (u[1] & 0x3F) << 6 | (u[2] & 0x3F)), 3;
    return *cp = (int32_t)((u[0] & 0x07) << 18 | (u[1] & 0x3F) << 12 | (u[2] & 0x3F) << 6 | (u[3] & 0x3F)), 4;
}

int tk_utf8_prev_len(const char *s, size_t i) {
    int k = 1;
    while (k < 4 && (size_t)k < i && ((uint8_t)s[i - (size_t)k] & 0xC0) == 0x80) k++;
    return k;
}

int tk_utf8_put(int32_t cp, char *o) {
    if (cp < 0x80) return o[0] = (char)cp, 1;
    if (cp < 0x800) return o[0] = (char)(0xC0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3F)), 2;
    if (cp < 0x10000)
        return o[0] = (char)(0xE0 | cp >> 12), o[1] = (char)(0x80 | ((cp >> 6) & 0x3F)), o[2] = (char)(0x80 | (cp & 0x3F)), 3;
    o[0] = (char)(0xF0 | cp >> 18), o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)), o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the valid sequence at s[i] (1..4), or -(bytes of the maximal invalid subpart) (Rust Utf8Chunks). */
static int utf8_check(const uint8_t *s, size_t n, size_t i) {
    uint8_t b = s[i];
    if (b < 0x80) return 1;
#define CONT(k) (i + (k) < n && (s[i + (k)] & 0xC0) == 0x80)
    if (b >= 0xC2 && b <= 0xDF) return CONT(1) ? 2 : -1;
    if (b >= 0xE0 && b <= 0xEF) {
        if (i + 1 >= n) return -1;
        uint8_t c = s[i + 1];
        int ok = (b == 0xE0) ? (c >= 0xA0 && c <= 0xBF) : (b == 0xED) ? (c >= 0x80 && c <= 0x9F) : (c >= 0x80 && c <= 0xBF);
        if (!ok) return -1;
        return CONT(2) ? 3 : -2;
    }
    if (b >= 0xF0 && b <= 0xF4) {
        if (i + 1 >= n) return -1;
        uint8_t c = s[i + 1];
        int ok = (b == 0xF0) ? (c >= 0x90 && c <= 0xBF) : (b == 0xF4) ? (c >= 0x80 && c <= 0x8F) : (c >= 0x80 && c <= 0xBF);
        if (!ok) return -1;
        if (!CONT(2)) return -2;
        return CONT(3) ? 4 : -3;
    }
#undef CONT
    return -1;
}

int tk_utf8_valid(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        int k = utf8_check((const uint8_t *)s, n, i);
        if (k < 0) return 0;
        i += (size_t)k;
    }
    return 1;
}

lf_status tk_utf8_lossy(const char *s, size_t n, tk_buf *out) {
    size_t i = 0, run = 0;
    while (i < n) {
        int k = utf8_check((const uint8_t *)s, n, i);
        if (k > 0) {
            i += (size_t)k;
            continue;
        }
        if (tk_buf_put(out, s + run, i - run) || tk_buf_put(out, "\xEF\xBF\xBD", 3)) return LF_ENOMEM;
        i += (size_t)(-k);
        run = i;
    }
    return tk_buf_put(out, s + run, n - run);
}

int tk_is_whitespace(int32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

int tk_is_alnum(int32_t c) {
    switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
    case UTF8PROC_CATEGORY_MC: return 1;
    default: return 0;
    }
}

static int is_numeric(int32_t c) {
    int k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}

/* tokenizers' is_punc: char::is_ascii_punctuation || unicode_categories is_punctuation (P*). */
static int is_punc(int32_t c) {
    if (c < 0x80) return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E);
    switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_PC:
    case UTF8PROC_CATEGORY_PD:
    case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI:
    case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO: return 1;
    default: return 0;
    }
}

/* ---------------------------------------------------------------- string map */
static uint64_t hash_bytes(const char *k, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)k[i]) * 0x100000001b3ULL;
    h ^= h >> 29;
    return h ? h : 1;
}

const int32_t *tk_smap_get(const tk_smap *m, const char *k, size_t n) {
    if (!m->cap) return NULL;
    uint64_t h = hash_bytes(k, n);
    size_t mask = m->cap - 1, i = (size_t)h & mask;
    for (;;) {
        const tk_smap_ent *e = &m->slots[i];
        if (!e->hash) return NULL;
        if (e->hash == h && e->len == n && !memcmp(m->pool.data + e->off, k, n)) return &e->val;
        i = (i + 1) & mask;
    }
}

static lf_status smap_grow(tk_smap *m) {
    size_t nc = m->cap ? m->cap * 2 : 64;
    tk_smap_ent *ns = calloc(nc, sizeof *ns);
    if (!ns) return LF_ENOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        tk_smap_ent *e = &m->slots[i];
        if (!e->hash) continue;
        size_t j = (size_t)e->hash & (nc - 1);
        while (ns[j].hash) j = (j + 1) & (nc - 1);
        ns[j] = *e;
    }
    free(m->slots);
    m->slots = ns;
    m->cap = nc;
    return LF_OK;
}

lf_status tk_smap_set(tk_smap *m, const char *k, size_t n, int32_t v) {
    if ((m->n + 1) * 2 > m->cap && smap_grow(m)) return LF_ENOMEM;
    uint64_t h = hash_bytes(k, n);
    size_t mask = m->cap - 1, i = (size_t)h & mask;
    for (;;) {
        tk_smap_ent *e = &m->slots[i];
        if (!e->hash) break;
        if (e->hash == h && e->len == n && !memcmp(m->pool.data + e->off, k, n)) {
            e->val = v;
            return LF_OK;
        }
        i = (i + 1) & mask;
    }
    size_t off = m->pool.len;
    if (n > UINT32_MAX || tk_buf_put(&m->pool, k, n)) return LF_ENOMEM;
    m->slots[i] = (tk_smap_ent){h, off, (uint32_t)n, v};
    m->n++;
    return LF_OK;
}

void tk_smap_free(tk_smap *m) {
    free(m->slots);
    tk_buf_free(&m->pool);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------- patterns */
const char TK_GPT2_REGEX[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

lf_status tk_regex_compile(const char *src, pcre2_code **out, const char *ctx, lf_err *err) {
    int ec;
    PCRE2_SIZE eo;
    *out = pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
    if (!*out) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return lf_err_set(err, LF_EFORMAT, "%s: regex \"%s\" does not compile at offset %zu: %s", ctx, src, (size_t)eo,
                          (const char *)msg);
    }
    pcre2_jit_compile(*out, PCRE2_JIT_COMPLETE); /* optional speed-up; the interpreter is used if JIT is absent */
    return LF_OK;
}

lf_status tk_pattern_parse(const json_t *j, tk_pattern *p, const char *ctx, lf_err *err) {
    memset(p, 0, sizeof *p);
    const json_t *v;
    if (!json_is_object(j)) return lf_err_set(err, LF_EFORMAT, "%s: pattern must be {\"String\": ...} or {\"Regex\": ...}", ctx);
    if ((v = json_object_get(j, "String")) && json_is_string(v)) p->is_regex = 0;
    else if ((v = json_object_get(j, "Regex")) && json_is_string(v)) p->is_regex = 1;
    else return lf_err_set(err, LF_EFORMAT, "%s: pattern must be {\"String\": ...} or {\"Regex\": ...}", ctx);
    p->len = json_string_length(v);
    p->str = malloc(p->len + 1);
    if (!p->str) return lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
    memcpy(p->str, json_string_value(v), p->len + 1);
    if (p->is_regex) {
        lf_status st = tk_regex_compile(p->str, &p->re, ctx, err);
        if (st) {
            tk_pattern_free(p);
            return st;
        }
    }
    return LF_OK;
}

void tk_pattern_free(tk_pattern *p) {
    free(p->str);
    if (p->re) pcre2_code_free(p->re);
    memset(p, 0, sizeof *p);
}

static lf_status spans_push(tk_spans *o, size_t a, size_t b, int m) {
    if (o->n == o->cap) {
        size_t c = o->cap ? o->cap * 2 : 32;
        tk_span *q = realloc(o->v, c * sizeof *q);
        if (!q) return LF_ENOMEM;
        o->v = q;
        o->cap = c;
    }
    o->v[o->n++] = (tk_span){a, b, m};
    return LF_OK;
}

/* Matches (non-overlapping, start/end) -> spans covering [0, n) as in tokenizers' find_matches. */
static lf_status regex_find(pcre2_code *re, const char *s, size_t n, pcre2_match_data *md, tk_spans *out, lf_err *err) {
    size_t last_end = 0, prev = 0;
    int have_last = 0;
    size_t last_match_end = 0;
    while (last_end <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, last_end, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return lf_err_set(err, LF_EINVAL, "tokenizer: regex match failed: %s", (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t a = ov[0], b = ov[1];
        if (a == b && have_last && last_match_end == b) { /* onig FindMatches: no empty match right after a match */
            if (last_end < n) {
                int32_t cp;
                last_end += (size_t)tk_utf8_next(s, n, last_end, &cp);
            } else {
                last_end++;
            }
            continue;
        }
        last_end = b;
        last_match_end = b;
        have_last = 1;
        if (prev != a && spans_push(out, prev, a, 0)) goto oom;
        if (spans_push(out, a, b, 1)) goto oom;
        prev = b;
    }
    if (prev != n && spans_push(out, prev, n, 0)) goto oom;
    return LF_OK;
oom:
    return lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory");
}

/* memmem is a GNU extension: first byte with memchr, then memcmp. */
static const char *find_bytes(const char *h, size_t hn, const char *nd, size_t nn) {
    const char *end = h + hn;
    while ((size_t)(end - h) >= nn) {
        const char *c = memchr(h, nd[0], (size_t)(end - h) - nn + 1);
        if (!c) return NULL;
        if (!memcmp(c, nd, nn)) return c;
        h = c + 1;
    }
    return NULL;
}

lf_status tk_pattern_find(const tk_pattern *p, const char *s, size_t n, pcre2_match_data *md, tk_spans *out, lf_err *err) {
    out->n = 0;
    if (n == 0) return spans_push(out, 0, 0, 0) ? lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory") : LF_OK;
    if (p->is_regex) return regex_find(p->re, s, n, md, out, err);
    if (p->len == 0) { /* tokenizers: ((0, chars().count()), false) */
        size_t nc = 0;
        for (size_t i = 0; i < n; i++) nc += ((uint8_t)s[i] & 0xC0) != 0x80;
        return spans_push(out, 0, nc, 0) ? lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory") : LF_OK;
    }
    size_t prev = 0, i = 0;
    while (i + p->len <= n) {
        const char *hit = find_bytes(s + i, n - i, p->str, p->len);
        if (!hit) break;
        size_t a = (size_t)(hit - s);
        if (prev != a && spans_push(out, prev, a, 0)) goto oom;
        if (spans_push(out, a, a + p->len, 1)) goto oom;
        prev = i = a + p->len;
    }
    if (prev != n && spans_push(out, prev, n, 0)) goto oom;
    return LF_OK;
oom:
    return lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory");
}

/* Pattern for a char predicate: every matching char is its own match. */
static lf_status pred_find(int (*pred)(int32_t), int32_t only, const char *s, size_t n, tk_spans *out, lf_err *err) {
    out->n = 0;
    if (n == 0) return spans_push(out, 0, 0, 0) ? lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory") : LF_OK;
    size_t last = 0;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        int k = tk_utf8_next(s, n, i, &cp);
        if (pred ? pred(cp) : cp == only) {
            if (last < i && spans_push(out, last, i, 0)) goto oom;
            if (spans_push(out, i, i + (size_t)k, 1)) goto oom;
            last = i + (size_t)k;
        }
        i += (size_t)k;
    }
    if (n > last && spans_push(out, last, n, 0)) goto oom;
    return LF_OK;
oom:
    return lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory");
}

/* ---------------------------------------------------------------- pieces */
lf_status tk_pieces_push(tk_pieces *p, const char *s, size_t n, int32_t id, int first) {
    if (p->n == p->cap) {
        size_t c = p->cap ? p->cap * 2 : 32;
        tk_piece *q = realloc(p->v, c * sizeof *q);
        if (!q) return LF_ENOMEM;
        p->v = q;
        p->cap = c;
    }
    size_t off = p->text.len;
    if (tk_buf_put(&p->text, s, n)) return LF_ENOMEM;
    p->v[p->n++] = (tk_piece){off, n, id, first};
    return LF_OK;
}

void tk_pieces_reset(tk_pieces *p) {
    p->n = 0;
    p->text.len = 0;
}

void tk_pieces_free(tk_pieces *p) {
    tk_buf_free(&p->text);
    free(p->v);
    memset(p, 0, sizeof *p);
}

/* NormalizedString::split with a behavior, then PreTokenizedString's "drop empty". */
static lf_status apply_split(const char *s, tk_spans *sp, int behavior, int first, tk_pieces *out) {
    size_t w = 0; /* compact sp->v into (start, end, remove) */
    int prev_match = 0;
    if (behavior == TK_SPLIT_MERGED_NEXT) {
        /* walk in reverse, merging a match into the following split */
        size_t n = sp->n;
        tk_span *v = sp->v;
        /* result built reversed in place from the end */
        size_t k = n; /* write index (exclusive), results stored at v[k..n) reversed order */
        for (size_t r = n; r-- > 0;) {
            tk_span cur = v[r];
            if (cur.is_match && !prev_match && k < n) {
                v[k].start = cur.start;
            } else {
                v[--k] = (tk_span){cur.start, cur.end, 0};
            }
            prev_match = cur.is_match;
        }
        for (size_t r = k; r < n; r++) v[w++] = v[r];
    } else {
        for (size_t r = 0; r < sp->n; r++) {
            tk_span cur = sp->v[r];
            switch (behavior) {
            case TK_SPLIT_ISOLATED: sp->v[w++] = (tk_span){cur.start, cur.end, 0}; break;
            case TK_SPLIT_REMOVED: sp->v[w++] = cur; break;
            case TK_SPLIT_CONTIGUOUS:
                if (cur.is_match == prev_match && w > 0) sp->v[w - 1].end = cur.end;
                else sp->v[w++] = (tk_span){cur.start, cur.end, 0};
                prev_match = cur.is_match;
                break;
            case TK_SPLIT_MERGED_PREV:
                if (cur.is_match && !prev_match && w > 0) sp->v[w - 1].end = cur.end;
                else sp->v[w++] = (tk_span){cur.start, cur.end, 0};
                prev_match = cur.is_match;
                break;
            }
        }
    }
    for (size_t r = 0; r < w; r++) {
        tk_span c = sp->v[r];
        if (c.is_match || c.end <= c.start) continue; /* removed, or empty */
        if (tk_pieces_push(out, s + c.start, c.end - c.start, -1, first && c.start == 0)) return LF_ENOMEM;
    }
    return LF_OK;
}

/* ---------------------------------------------------------------- normalizers */
static const char *json_type_str(const json_t *j) {
    const json_t *t = json_object_get(j, "type");
    return json_is_string(t) ? json_string_value(t) : NULL;
}

static lf_status dup_str(const json_t *v, char **out, size_t *len, const char *ctx, const char *field, lf_err *err) {
    if (!json_is_string(v)) return lf_err_set(err, LF_EFORMAT, "%s: \"%s\" must be a string", ctx, field);
    *len = json_string_length(v);
    *out = malloc(*len + 1);
    if (!*out) return lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
    memcpy(*out, json_string_value(v), *len + 1);
    return LF_OK;
}

static int jbool(const json_t *j, const char *key, int def) {
    const json_t *v = json_object_get(j, key);
    return (!v || json_is_null(v)) ? def : json_is_true(v);
}

lf_status tk_normalizer_parse(const json_t *j, tk_normalizer *n, const char *ctx, lf_err *err) {
    memset(n, 0, sizeof *n);
    const char *t = json_type_str(j);
    if (!t) return lf_err_set(err, LF_EFORMAT, "%s: normalizer without a \"type\"", ctx);
    if (!strcmp(t, "Sequence")) {
        const json_t *a = json_object_get(j, "normalizers");
        if (!json_is_array(a)) return lf_err_set(err, LF_EFORMAT, "%s: normalizer Sequence needs \"normalizers\"", ctx);
        n->kind = TK_NORM_SEQUENCE;
        n->children = calloc(json_array_size(a) + 1, sizeof *n->children);
        if (!n->children) return lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
        for (size_t i = 0; i < json_array_size(a); i++) {
            lf_status st = tk_normalizer_parse(json_array_get(a, i), &n->children[i], ctx, err);
            if (st) {
                tk_normalizer_free(n);
                return st;
            }
            n->n_children++;
        }
        return LF_OK;
    }
    if (!strcmp(t, "Prepend")) {
        n->kind = TK_NORM_PREPEND;
        return dup_str(json_object_get(j, "prepend"), &n->content, &n->content_len, ctx, "prepend", err);
    }
    if (!strcmp(t, "Replace")) {
        n->kind = TK_NORM_REPLACE;
        lf_status st = tk_pattern_parse(json_object_get(j, "pattern"), &n->pattern, ctx, err);
        if (!st) st = dup_str(json_object_get(j, "content"), &n->content, &n->content_len, ctx, "content", err);
        if (st) tk_normalizer_free(n);
        return st;
    }
    if (!strcmp(t, "NFC")) return n->kind = TK_NORM_NFC, LF_OK;
    if (!strcmp(t, "NFD")) return n->kind = TK_NORM_NFD, LF_OK;
    if (!strcmp(t, "NFKC")) return n->kind = TK_NORM_NFKC, LF_OK;
    if (!strcmp(t, "NFKD")) return n->kind = TK_NORM_NFKD, LF_OK;
    if (!strcmp(t, "Lowercase")) return n->kind = TK_NORM_LOWERCASE, LF_OK;
    if (!strcmp(t, "StripAccents")) return n->kind = TK_NORM_STRIP_ACCENTS, LF_OK;
    if (!strcmp(t, "Strip")) {
        n->kind = TK_NORM_STRIP;
        n->strip_left = jbool(j, "strip_left", 1);
        n->strip_right = jbool(j, "strip_right", 1);
        return LF_OK;
    }
    return lf_err_set(err, LF_EUNSUPPORTED, "%s: normalizer type \"%s\" is not supported", ctx, t);
}

void tk_normalizer_free(tk_normalizer *n) {
    for (size_t i = 0; i < n->n_children; i++) tk_normalizer_free(&n->children[i]);
    free(n->children);
    tk_pattern_free(&n->pattern);
    free(n->content);
    memset(n, 0, sizeof *n);
}

lf_status tk_normalize(const tk_normalizer *n, const char *s, size_t len, tk_buf *out, pcre2_match_data *md, lf_err *err) {
    lf_status st = LF_OK;
    out->len = 0;
    switch (n->kind) {
    case TK_NORM_SEQUENCE: {
        tk_buf a = {0};
        if (tk_buf_put(out, s, len)) goto oom;
        for (size_t i = 0; i < n->n_children; i++) {
            tk_buf tmp = a;
            a = *out;
            *out = tmp;
            if ((st = tk_normalize(&n->children[i], a.data, a.len, out, md, err))) break;
        }
        tk_buf_free(&a);
        return st;
    }
    case TK_NORM_PREPEND:
        if (len && tk_buf_put(out, n->content, n->content_len)) goto oom;
        if (tk_buf_put(out, s, len)) goto oom;
        return LF_OK;
    case TK_NORM_REPLACE: {
        tk_spans sp = {0};
        if ((st = tk_pattern_find(&n->pattern, s, len, md, &sp, err))) {
            free(sp.v);
            return st;
        }
        if (tk_buf_reserve(out, len)) st = LF_ENOMEM;
        for (size_t i = 0; !st && i < sp.n; i++) {
            if (sp.v[i].is_match) st = tk_buf_put(out, n->content, n->content_len);
            else if (sp.v[i].end <= len) st = tk_buf_put(out, s + sp.v[i].start, sp.v[i].end - sp.v[i].start);
        }
        free(sp.v);
        if (st) goto oom;
        return LF_OK;
    }
    case TK_NORM_NFC:
    case TK_NORM_NFD:
    case TK_NORM_NFKC:
    case TK_NORM_NFKD: {
        if (len == 0) return tk_buf_put(out, "", 0) ? lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory") : LF_OK;
        int opt = UTF8PROC_STABLE;
        opt |= (n->kind == TK_NORM_NFC || n->kind == TK_NORM_NFKC) ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE;
        if (n->kind == TK_NORM_NFKC || n->kind == TK_NORM_NFKD) opt |= UTF8PROC_COMPAT;
        utf8proc_uint8_t *r = NULL;
        utf8proc_ssize_t rl = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &r, (utf8proc_option_t)opt);
        if (rl < 0) return lf_err_set(err, LF_EINVAL, "tokenizer: unicode normalization failed: %s", utf8proc_errmsg(rl));
        st = tk_buf_put(out, r, (size_t)rl);
        free(r);
        if (st) goto oom;
        return LF_OK;
    }
    case TK_NORM_LOWERCASE:
        if (tk_buf_reserve(out, len)) goto oom;
        for (size_t i = 0; i < len;) {
            int32_t cp;
            int k = tk_utf8_next(s, len, i, &cp);
            char u[8];
            int ul;
            if (cp == 0x130) { /* Rust char::to_lowercase: U+0130 -> "i\u0307" */
                memcpy(u, "i\xCC\x87", 3);
                ul = 3;
            } else {
                ul = tk_utf8_put(utf8proc_tolower(cp), u);
            }
            if (tk_buf_put(out, u, (size_t)ul)) goto oom;
            i += (size_t)k;
        }
        return LF_OK;
    case TK_NORM_STRIP: {
        size_t a = 0, b = len;
        int32_t cp;
        if (n->strip_left)
            while (a < b) {
                int k = tk_utf8_next(s, len, a, &cp);
                if (!tk_is_whitespace(cp)) break;
                a += (size_t)k;
            }
        if (n->strip_right)
            while (b > a) {
                int k = tk_utf8_prev_len(s, b);
                tk_utf8_next(s, len, b - (size_t)k, &cp);
                if (!tk_is_whitespace(cp)) break;
                b -= (size_t)k;
            }
        if (tk_buf_put(out, s + a, b - a)) goto oom;
        return LF_OK;
    }
    case TK_NORM_STRIP_ACCENTS:
        if (tk_buf_reserve(out, len)) goto oom;
        for (size_t i = 0; i < len;) {
            int32_t cp;
            int k = tk_utf8_next(s, len, i, &cp);
            int c = utf8proc_category(cp);
            if (c != UTF8PROC_CATEGORY_MN && c != UTF8PROC_CATEGORY_MC && c != UTF8PROC_CATEGORY_ME && tk_buf_put(out, s + i, (size_t)k))
                goto oom;
            i += (size_t)k;
        }
        return LF_OK;
    }
    LF_ASSERT(0 && "unknown normalizer kind");
    return LF_EINVAL;
oom:
    return lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory");
}

/* ---------------------------------------------------------------- byte level */
static int32_t g_b2c[256];
static int16_t g_c2b[512];
static void init_bytes_once(void) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        g_b2c[b] = keep ? b : 256 + n++;
    }
    for (int i = 0; i < 512; i++) g_c2b[i] = -1;
    for (int b = 0; b < 256; b++) g_c2b[g_b2c[b]] = (int16_t)b;
}
static pthread_once_t g_bytes_once = PTHREAD_ONCE_INIT;

int32_t tk_byte_to_cp(uint8_t b) {
    pthread_once(&g_bytes_once, init_bytes_once);
    return g_b2c[b];
}

int tk_cp_to_byte(int32_t cp) {
    pthread_once(&g_bytes_once, init_bytes_once);
    return (cp >= 0 && cp < 512) ? g_c2b[cp] : -1;
}

/* ---------------------------------------------------------------- pre-tokenizers */
static int parse_behavior(const json_t *j, int def, int *out) {
    const json_t *v = json_object_get(j, "behavior");
    if (!v || json_is_null(v)) return *out = def, 0;
    const char *s = json_is_string(v) ? json_string_value(v) : "";
    if (!strcmp(s, "Removed")) *out = TK_SPLIT_REMOVED;
    else if (!strcmp(s, "Isolated")) *out = TK_SPLIT_ISOLATED;
    else if (!strcmp(s, "MergedWithPrevious")) *out = TK_SPLIT_MERGED_PREV;
    else if (!strcmp(s, "MergedWithNext")) *out = TK_SPLIT_MERGED_NEXT;
    else if (!strcmp(s, "Contiguous")) *out = TK_SPLIT_CONTIGUOUS;
    else return -1;
    return 0;
}

lf_status tk_pretok_parse(const json_t *j, tk_pretok *p, const char *ctx, lf_err *err) {
    memset(p, 0, sizeof *p);
    const char *t = json_type_str(j);
    lf_status st;
    if (!t) return lf_err_set(err, LF_EFORMAT, "%s: pre_tokenizer without a \"type\"", ctx);
    if (!strcmp(t, "Sequence")) {
        const json_t *a = json_object_get(j, "pretokenizers");
        if (!json_is_array(a)) return lf_err_set(err, LF_EFORMAT, "%s: pre_tokenizer Sequence needs \"pretokenizers\"", ctx);
        p->kind = TK_PRE_SEQUENCE;
        p->children = calloc(json_array_size(a) + 1, sizeof *p->children);
        if (!p->children) return lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
        for (size_t i = 0; i < json_array_size(a); i++) {
            if ((st = tk_pretok_parse(json_array_get(a, i), &p->children[i], ctx, err))) {
                tk_pretok_free(p);
                return st;
            }
            p->n_children++;
        }
        return LF_OK;
    }
    if (!strcmp(t, "Split")) {
        p->kind = TK_PRE_SPLIT;
        if (parse_behavior(j, TK_SPLIT_ISOLATED, &p->behavior))
            return lf_err_set(err, LF_EFORMAT, "%s: Split has an unknown \"behavior\"", ctx);
        p->invert = jbool(j, "invert", 0);
        return tk_pattern_parse(json_object_get(j, "pattern"), &p->pattern, ctx, err);
    }
    if (!strcmp(t, "ByteLevel")) {
        p->kind = TK_PRE_BYTELEVEL;
        p->add_prefix_space = jbool(j, "add_prefix_space", 1);
        p->use_regex = jbool(j, "use_regex", 1);
        if (p->use_regex) {
            p->pattern.is_regex = 1;
            return tk_regex_compile(TK_GPT2_REGEX, &p->pattern.re, ctx, err);
        }
        return LF_OK;
    }
    if (!strcmp(t, "Metaspace")) {
        p->kind = TK_PRE_METASPACE;
        const json_t *r = json_object_get(j, "replacement");
        const char *rs = json_is_string(r) ? json_string_value(r) : "\xE2\x96\x81";
        size_t rl = json_is_string(r) ? json_string_length(r) : 3;
        if (rl == 0 || rl > 4 || !tk_utf8_valid(rs, rl) || tk_utf8_next(rs, rl, 0, &p->replacement) != (int)rl)
            return lf_err_set(err, LF_EFORMAT, "%s: Metaspace \"replacement\" must be one character", ctx);
        memcpy(p->repl_utf8, rs, rl);
        p->repl_len = (int)rl;
        p->split = jbool(j, "split", 1);
        const json_t *ps = json_object_get(j, "prepend_scheme");
        int have_scheme = ps && json_is_string(ps);
        p->prepend_scheme = TK_PREPEND_ALWAYS;
        if (have_scheme) {
            const char *s = json_string_value(ps);
            if (!strcmp(s, "always")) p->prepend_scheme = TK_PREPEND_ALWAYS;
            else if (!strcmp(s, "first")) p->prepend_scheme = TK_PREPEND_FIRST;
            else if (!strcmp(s, "never")) p->prepend_scheme = TK_PREPEND_NEVER;
            else return lf_err_set(err, LF_EFORMAT, "%s: Metaspace prepend_scheme \"%s\" is unknown", ctx, s);
        }
        const json_t *aps = json_object_get(j, "add_prefix_space");
        if (aps && json_is_false(aps)) { /* legacy field */
            if (have_scheme && p->prepend_scheme != TK_PREPEND_NEVER)
                return lf_err_set(err, LF_EFORMAT, "%s: Metaspace add_prefix_space does not match declared prepend_scheme", ctx);
            p->prepend_scheme = TK_PREPEND_NEVER;
        }
        return LF_OK;
    }
    if (!strcmp(t, "Digits")) {
        p->kind = TK_PRE_DIGITS;
        p->individual_digits = jbool(j, "individual_digits", 0);
        return LF_OK;
    }
    if (!strcmp(t, "Punctuation")) {
        p->kind = TK_PRE_PUNCTUATION;
        if (parse_behavior(j, TK_SPLIT_ISOLATED, &p->behavior))
            return lf_err_set(err, LF_EFORMAT, "%s: Punctuation has an unknown \"behavior\"", ctx);
        return LF_OK;
    }
    if (!strcmp(t, "Whitespace")) {
        p->kind = TK_PRE_WHITESPACE;
        p->pattern.is_regex = 1;
        /* Rust regex \w is Alphabetic + M + Nd + Pc + Join_Control, \s is White_Space (PCRE2's differ) */
        return tk_regex_compile("[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]+"
                                "|[^\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}\\p{White_Space}]+",
                                &p->pattern.re, ctx, err);
    }
    if (!strcmp(t, "WhitespaceSplit")) return p->kind = TK_PRE_WHITESPACE_SPLIT, LF_OK;
    return lf_err_set(err, LF_EUNSUPPORTED, "%s: pre_tokenizer type \"%s\" is not supported", ctx, t);
}

void tk_pretok_free(tk_pretok *p) {
    for (size_t i = 0; i < p->n_children; i++) tk_pretok_free(&p->children[i]);
    free(p->children);
    tk_pattern_free(&p->pattern);
    memset(p, 0, sizeof *p);
}

static void invert_spans(tk_spans *sp) {
    for (size_t i = 0; i < sp->n; i++) sp->v[i].is_match = !sp->v[i].is_match;
}

/* Byte-level transform of s into out (each byte -> its GPT-2 code point). */
static lf_status bytelevel_push(tk_pieces *out, const char *s, size_t n, int first) {
    if (tk_pieces_push(out, "", 0, -1, first)) return LF_ENOMEM;
    tk_piece *pc = &out->v[out->n - 1];
    if (tk_buf_reserve(&out->text, 2 * n)) return LF_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        char u[4];
        int k = tk_utf8_put(tk_byte_to_cp((uint8_t)s[i]), u);
        tk_buf_put(&out->text, u, (size_t)k);
    }
    pc->len = out->text.len - pc->off;
    return LF_OK;
}

static lf_status pretok_one(const tk_pretok *p, const char *s, size_t n, int first, tk_pieces *out, tk_spans *sp,
                            tk_buf *tmp, pcre2_match_data *md, lf_err *err) {
    lf_status st;
    switch (p->kind) {
    case TK_PRE_SPLIT:
        if ((st = tk_pattern_find(&p->pattern, s, n, md, sp, err))) return st;
        if (p->invert) invert_spans(sp);
        return apply_split(s, sp, p->behavior, first, out) ? lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory") : LF_OK;
    case TK_PRE_BYTELEVEL: {
        const char *src = s;
        size_t len = n;
        if (p->add_prefix_space && n > 0 && s[0] != ' ') {
            tmp->len = 0;
            if (tk_buf_put(tmp, " ", 1) || tk_buf_put(tmp, s, n)) goto oom;
            src = tmp->data, len = tmp->len;
        }
        if (!p->use_regex) return bytelevel_push(out, src, len, first) ? lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory") : LF_OK;
        if ((st = regex_find(p->pattern.re, src, len, md, (sp->n = 0, sp), err))) return st;
        for (size_t i = 0; i < sp->n; i++) {
            tk_span c = sp->v[i];
            if (c.end > c.start && bytelevel_push(out, src + c.start, c.end - c.start, first && c.start == 0)) goto oom;
        }
        return LF_OK;
    }
    case TK_PRE_METASPACE: {
        tmp->len = 0;
        /* starts_with(replacement) is checked after ' ' -> replacement */
        int starts = s[0] == ' ' || (n >= (size_t)p->repl_len && !memcmp(s, p->repl_utf8, (size_t)p->repl_len));
        int prepend = p->prepend_scheme == TK_PREPEND_ALWAYS || (p->prepend_scheme == TK_PREPEND_FIRST && first);
        if (prepend && !starts && tk_buf_put(tmp, p->repl_utf8, (size_t)p->repl_len)) goto oom;
        for (size_t i = 0; i < n; i++) {
            if (s[i] == ' ') {
                if (tk_buf_put(tmp, p->repl_utf8, (size_t)p->repl_len)) goto oom;
            } else if (tk_buf_put(tmp, s + i, 1)) {
                goto oom;
            }
        }
        if (!p->split) return tk_pieces_push(out, tmp->data, tmp->len, -1, first) ? lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory") : LF_OK;
        if ((st = pred_find(NULL, p->replacement, tmp->data, tmp->len, sp, err))) return st;
        return apply_split(tmp->data, sp, TK_SPLIT_MERGED_NEXT, first, out) ? lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory") : LF_OK;
    }
    case TK_PRE_DIGITS:
        if ((st = pred_find(is_numeric, 0, s, n, sp, err))) return st;
        return apply_split(s, sp, p->individual_digits ? TK_SPLIT_ISOLATED : TK_SPLIT_CONTIGUOUS, first, out)
                   ? lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory")
                   : LF_OK;
    case TK_PRE_PUNCTUATION:
        if ((st = pred_find(is_punc, 0, s, n, sp, err))) return st;
        return apply_split(s, sp, p->behavior, first, out) ? lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory") : LF_OK;
    case TK_PRE_WHITESPACE:
        if ((st = tk_pattern_find(&p->pattern, s, n, md, sp, err))) return st;
        invert_spans(sp);
        return apply_split(s, sp, TK_SPLIT_REMOVED, first, out) ? lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory") : LF_OK;
    case TK_PRE_WHITESPACE_SPLIT:
        if ((st = pred_find(tk_is_whitespace, 0, s, n, sp, err))) return st;
        return apply_split(s, sp, TK_SPLIT_REMOVED, first, out) ? lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory") : LF_OK;
    }
    LF_ASSERT(0 && "unknown pre-tokenizer kind");
    return LF_EINVAL;
oom:
    return lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory");
}

lf_status tk_pretokenize(const tk_pretok *p, tk_pieces **io, tk_pieces **tmp, pcre2_match_data *md, lf_err *err) {
    lf_status st = LF_OK;
    if (p->kind == TK_PRE_SEQUENCE) {
        for (size_t i = 0; i < p->n_children; i++)
            if ((st = tk_pretokenize(&p->children[i], io, tmp, md, err))) return st;
        return LF_OK;
    }
    tk_pieces *in = *io, *out = *tmp;
    tk_pieces_reset(out);
    tk_spans sp = {0};
    tk_buf b = {0};
    for (size_t i = 0; i < in->n && !st; i++) {
        tk_piece pc = in->v[i];
        if (pc.id >= 0) {
            if (tk_pieces_push(out, in->text.data + pc.off, pc.len, pc.id, pc.first)) st = lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory");
            continue;
        }
        if (pc.len == 0) continue;
        st = pretok_one(p, in->text.data + pc.off, pc.len, pc.first, out, &sp, &b, md, err);
    }
    free(sp.v);
    tk_buf_free(&b);
    *io = out;
    *tmp = in;
    return st;
}
