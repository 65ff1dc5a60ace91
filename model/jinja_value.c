/* jinja_value.c - the chat-template interpreter's arena, error exits, values, str()/repr() and tojson,
 * each written to print exactly what Python 3 / Jinja2 print. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/jinja.h"

/* ======================================================================================= arena */

struct jchunk {
    jchunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

#define JCHUNK_MIN ((size_t)64 << 10)

void jarena_free(jarena *a) {
    if (!a) return;
    jchunk *ch = a->head;
    while (ch) {
        jchunk *nx = ch->next;
        free(ch);
        ch = nx;
    }
    a->head = NULL;
    a->used_total = 0;
}

void *ja_alloc(jctx *c, size_t n) {
    jarena *a = c->arena;
    if (n > ((size_t)1 << 40)) jfail(c, LF_ENOMEM, "chat template: allocation of %zu bytes refused", n);
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    if (a->limit && a->used_total + n > a->limit) {
        if (a->limit >= ((size_t)1 << 20))
            jfail(c, LF_ENOMEM, "template needs more than %zu MiB of memory (its limit)", a->limit >> 20);
        jfail(c, LF_ENOMEM, "template needs more than %zu bytes of memory (its limit)", a->limit);
    }
    jchunk *ch = a->head;
    if (!ch || ch->cap - ch->used < n) {
        size_t cap = n > JCHUNK_MIN ? n : JCHUNK_MIN;
        jchunk *nc = malloc(sizeof(jchunk) + cap);
        if (!nc) jfail(c, LF_ENOMEM, "out of memory in chat template (%zu bytes)", n);
        nc->used = 0;
        nc->cap = cap;
        if (ch && n > JCHUNK_MIN) { /* big one-off: keep the current chunk on top */
            nc->next = ch->next;
            ch->next = nc;
        } else {
            nc->next = ch;
            a->head = nc;
        }
        ch = nc;
    }
    void *p = ch->data + ch->used;
    ch->used += n;
    a->used_total += n;
    memset(p, 0, n);
    return p;
}

char *ja_strndup(jctx *c, const char *s, size_t n) {
    char *p = ja_alloc(c, n + 1);
    if (n) memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* ======================================================================================= errors */

void jfail(jctx *c, lf_status code, const char *fmt, ...) {
    if (c->err) {
        va_list ap;
        va_start(ap, fmt);
        c->err->code = code;
        vsnprintf(c->err->msg, sizeof c->err->msg, fmt, ap);
        va_end(ap);
    }
    longjmp(c->jb, (int)code);
}

void jfail_at(jctx *c, const jnode *at, const char *fmt, ...) {
    char buf[LF_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (at) jfail(c, LF_EINVAL, "%s (template line %d)", buf, at->line);
    jfail(c, LF_EINVAL, "%s", buf);
}

void jwork_exceeded(jctx *c) {
    jfail(c, LF_EINVAL, "template exceeded its work budget (%lld units of scanning and comparing; runaway template?)",
          (long long)c->max_work);
}

void jdeep(jctx *c) {
    if (++c->depth > JINJA_MAX_EVAL_DEPTH)
        jfail(c, LF_EINVAL, "value nested too deeply (more than %d levels, or a namespace that contains itself)",
              JINJA_MAX_EVAL_DEPTH);
}

/* ======================================================================================= UTF-8 */

int ju_decode(const char *p, size_t n, size_t *adv) {
    const unsigned char *s = (const unsigned char *)p;
    unsigned c0 = s[0];
    int need = c0 < 0x80 ? 0 : (c0 & 0xE0) == 0xC0 ? 1 : (c0 & 0xF0) == 0xE0 ? 2 : (c0 & 0xF8) == 0xF0 ? 3 : -1;
    if (need <= 0 || (size_t)need + 1 > n) {
        *adv = 1;
        return (int)c0;
    }
    int cp = (int)(c0 & (0x3F >> need));
    for (int k = 1; k <= need; k++) {
        if ((s[k] & 0xC0) != 0x80) {
            *adv = 1;
            return (int)c0;
        }
        cp = (cp << 6) | (s[k] & 0x3F);
    }
    *adv = (size_t)need + 1;
    return cp;
}

size_t ju_len(const char *p, size_t n) {
    size_t k = 0, i = 0, adv;
    while (i < n) {
        ju_decode(p + i, n - i, &adv);
        i += adv;
        k++;
    }
    return k;
}

size_t ju_offset(const char *p, size_t n, size_t cp) {
    size_t i = 0, adv;
    while (i < n && cp > 0) {
        ju_decode(p + i, n - i, &adv);
        i += adv;
        cp--;
    }
    return i;
}

int ju_is_space(int cp) {
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x1F)) return 1;
    if (cp < 0x80) return 0;
    switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
        return 1;
    default:
        return cp >= 0x2000 && cp <= 0x200A;
    }
}

/* ======================================================================================= constructors */

jv jv_undef(const char *hint) {
    jv v = {.t = JV_UNDEF};
    v.u.s.p = hint ? hint : "";
    v.u.s.n = hint ? strlen(hint) : 0;
    return v;
}
jv jv_none(void) { return (jv){.t = JV_NONE}; }
jv jv_bool(int b) {
    jv v = {.t = JV_BOOL};
    v.u.b = b ? 1 : 0;
    return v;
}
jv jv_int(int64_t i) {
    jv v = {.t = JV_INT};
    v.u.i = i;
    return v;
}
jv jv_float(double f) {
    jv v = {.t = JV_FLOAT};
    v.u.f = f;
    return v;
}
jv jv_str(const char *p, size_t n) {
    jv v = {.t = JV_STR};
    v.u.s.p = p;
    v.u.s.n = n;
    return v;
}
jv jv_cstr(const char *p) { return jv_str(p, strlen(p)); }
jv jv_strdup(jctx *c, const char *p, size_t n) { return jv_str(ja_strndup(c, p, n), n); }

jv jv_list_new(jctx *c, size_t cap) {
    jv v = {.t = JV_LIST};
    v.u.l = ja_alloc(c, sizeof(jlist));
    if (cap) {
        v.u.l->v = ja_alloc(c, cap * sizeof(jv));
        v.u.l->cap = cap;
    }
    return v;
}

void jv_list_push(jctx *c, jv list, jv item) {
    jlist *l = list.u.l;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        jv *nv = ja_alloc(c, cap * sizeof(jv));
        if (l->n) memcpy(nv, l->v, l->n * sizeof(jv));
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = item;
}

jv jv_dict_new(jctx *c) {
    jv v = {.t = JV_DICT};
    v.u.d = ja_alloc(c, sizeof(jdict));
    return v;
}

int jdict_get(jctx *c, const jdict *d, jv key, jv *out) {
    for (size_t i = 0; i < d->n; i++)
        if (jv_equal(c, d->k[i], key)) {
            if (out) *out = d->v[i];
            return 1;
        }
    return 0;
}

int jdict_get_str(jctx *c, const jdict *d, const char *key, size_t n, jv *out) {
    jwork(c, d->n + 1);
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == JV_STR && d->k[i].u.s.n == n && memcmp(d->k[i].u.s.p, key, n) == 0) {
            if (out) *out = d->v[i];
            return 1;
        }
    return 0;
}

static void jdict_append(jctx *c, jdict *d, jv key, jv val) {
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        jv *nk = ja_alloc(c, cap * sizeof(jv)), *nv = ja_alloc(c, cap * sizeof(jv));
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof(jv));
            memcpy(nv, d->v, d->n * sizeof(jv));
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = key;
    d->v[d->n] = val;
    d->n++;
}

static void jdict_set(jctx *c, jdict *d, jv key, jv val) {
    for (size_t i = 0; i < d->n; i++)
        if (jv_equal(c, d->k[i], key)) {
            d->v[i] = val;
            return;
        }
    jdict_append(c, d, key, val);
}

void jv_dict_set(jctx *c, jv dict, jv key, jv val) { jdict_set(c, dict.u.d, key, val); }
void jdict_set_str(jctx *c, jdict *d, const char *key, jv val) { jdict_set(c, d, jv_cstr(key), val); }
void jdict_append_str(jctx *c, jdict *d, const char *key, jv val) { jdict_append(c, d, jv_cstr(key), val); }

/* ======================================================================================= semantics */

int jv_truthy(jv v) {
    switch (v.t) {
    case JV_UNDEF: case JV_NONE: return 0;
    case JV_BOOL: return v.u.b;
    case JV_INT: return v.u.i != 0;
    case JV_FLOAT: return v.u.f != 0.0;
    case JV_STR: return v.u.s.n != 0;
    case JV_LIST: return v.u.l->n != 0;
    case JV_DICT: return v.u.d->is_ns ? 1 : v.u.d->n != 0;
    case JV_FUNC: return 1;
    }
    return 0;
}

static int is_num(jv v) { return v.t == JV_BOOL || v.t == JV_INT || v.t == JV_FLOAT; }
static double num_f(jv v) { return v.t == JV_FLOAT ? v.u.f : v.t == JV_INT ? (double)v.u.i : (double)v.u.b; }

static int equal_rec(jctx *c, jv a, jv b);

int jv_equal(jctx *c, jv a, jv b) {
    jwork(c, 1);
    if (a.t != b.t && !(is_num(a) && is_num(b))) return 0;
    if (a.t == JV_STR) {
        if (a.u.s.n != b.u.s.n) return 0;
        jwork(c, a.u.s.n / 4);
        return memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0;
    }
    if (a.t != JV_LIST && a.t != JV_DICT) return equal_rec(c, a, b);
    jdeep(c);
    int r = equal_rec(c, a, b);
    c->depth--;
    return r;
}

static int equal_rec(jctx *c, jv a, jv b) {
    if (is_num(a) && is_num(b)) {
        if (a.t != JV_FLOAT && b.t != JV_FLOAT) {
            int64_t x = a.t == JV_INT ? a.u.i : a.u.b, y = b.t == JV_INT ? b.u.i : b.u.b;
            return x == y;
        }
        return num_f(a) == num_f(b);
    }
    if (a.t != b.t) return 0;
    switch (a.t) {
    case JV_UNDEF: case JV_NONE: return 1;
    case JV_STR: return a.u.s.n == b.u.s.n && memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0;
    case JV_LIST:
        if (a.u.l->n != b.u.l->n) return 0;
        if (a.u.l == b.u.l) return 1;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!jv_equal(c, a.u.l->v[i], b.u.l->v[i])) return 0;
        return 1;
    case JV_DICT:
        if (a.u.d == b.u.d) return 1;
        if (a.u.d->is_ns || b.u.d->is_ns || a.u.d->n != b.u.d->n) return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            jv o;
            if (!jdict_get(c, b.u.d, a.u.d->k[i], &o) || !jv_equal(c, a.u.d->v[i], o)) return 0;
        }
        return 1;
    case JV_FUNC: return a.u.fn == b.u.fn;
    default: return 0;
    }
}

int jv_is_str(jv v, const char *s) { return v.t == JV_STR && v.u.s.n == strlen(s) && !memcmp(v.u.s.p, s, v.u.s.n); }

const char *jv_type_name(jv v) {
    switch (v.t) {
    case JV_UNDEF: return "Undefined";
    case JV_NONE: return "NoneType";
    case JV_BOOL: return "bool";
    case JV_INT: return "int";
    case JV_FLOAT: return "float";
    case JV_STR: return "str";
    case JV_LIST: return "list";
    case JV_DICT: return v.u.d->is_ns ? "Namespace" : "dict";
    case JV_FUNC: return "function";
    }
    return "?";
}

int jv_compare(jctx *c, jv a, jv b, const jnode *at) {
    jwork(c, 1);
    if (is_num(a) && is_num(b)) {
        if (a.t != JV_FLOAT && b.t != JV_FLOAT) {
            int64_t x = a.t == JV_INT ? a.u.i : a.u.b, y = b.t == JV_INT ? b.u.i : b.u.b;
            return x < y ? -1 : x > y;
        }
        double x = num_f(a), y = num_f(b);
        return x < y ? -1 : x > y;
    }
    if (a.t == JV_STR && b.t == JV_STR) {
        size_t n = a.u.s.n < b.u.s.n ? a.u.s.n : b.u.s.n;
        jwork(c, n / 4);
        int r = memcmp(a.u.s.p, b.u.s.p, n); /* byte order == code point order for UTF-8 */
        if (r) return r < 0 ? -1 : 1;
        return a.u.s.n < b.u.s.n ? -1 : a.u.s.n > b.u.s.n;
    }
    if (a.t == JV_LIST && b.t == JV_LIST) {
        size_t n = a.u.l->n < b.u.l->n ? a.u.l->n : b.u.l->n;
        jdeep(c);
        for (size_t i = 0; i < n; i++) {
            if (jv_equal(c, a.u.l->v[i], b.u.l->v[i])) continue;
            int r = jv_compare(c, a.u.l->v[i], b.u.l->v[i], at);
            c->depth--;
            return r;
        }
        c->depth--;
        return a.u.l->n < b.u.l->n ? -1 : a.u.l->n > b.u.l->n;
    }
    jfail_at(c, at, "'<' not supported between instances of '%s' and '%s'", jv_type_name(a), jv_type_name(b));
}

jv jv_from_json(jctx *c, const json_t *j) {
    switch (json_typeof(j)) {
    case JSON_OBJECT: { /* a JSON object's keys are unique: append without the duplicate scan */
        jv d = jv_dict_new(c);
        const char *k;
        json_t *v;
        jdeep(c);
        json_object_foreach((json_t *)j, k, v) jdict_append(c, d.u.d, jv_cstr(k), jv_from_json(c, v));
        c->depth--;
        return d;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        jv l = jv_list_new(c, n);
        jdeep(c);
        for (size_t i = 0; i < n; i++) jv_list_push(c, l, jv_from_json(c, json_array_get(j, i)));
        c->depth--;
        return l;
    }
    case JSON_STRING: return jv_str(json_string_value(j), json_string_length(j));
    case JSON_INTEGER: return jv_int((int64_t)json_integer_value(j));
    case JSON_REAL: return jv_float(json_real_value(j));
    case JSON_TRUE: return jv_bool(1);
    case JSON_FALSE: return jv_bool(0);
    default: return jv_none();
    }
}

/* ======================================================================================= string builder */

void jsb_init(jsb *b, jctx *c) {
    b->c = c;
    b->p = NULL;
    b->n = b->cap = 0;
}

void jsb_put(jsb *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *np = ja_alloc(b->c, cap);
        if (b->n) memcpy(np, b->p, b->n);
        b->p = np;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

void jsb_puts(jsb *b, const char *s) { jsb_put(b, s, strlen(s)); }
void jsb_putc(jsb *b, char ch) { jsb_put(b, &ch, 1); }
jv jsb_done(jsb *b) { return b->n ? jv_str(b->p, b->n) : jv_str("", 0); }

/* ======================================================================================= str / repr */

/* Python's repr(float): shortest round-trip digits; exponent form when exp < -4 or exp >= 16. */
void jv_float_repr(char *buf, size_t cap, double d) {
    if (isnan(d)) {
        snprintf(buf, cap, "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(buf, cap, d < 0 ? "-inf" : "inf");
        return;
    }
    if (d == 0) {
        snprintf(buf, cap, signbit(d) ? "-0.0" : "0.0");
        return;
    }
    char tmp[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, d);
        if (strtod(tmp, NULL) == d) break;
    }
    /* tmp = [-]D.DDDDe[+-]XX */
    char digits[24];
    int nd = 0, neg = tmp[0] == '-';
    const char *q = tmp + neg;
    for (; *q && *q != 'e'; q++)
        if (*q != '.') digits[nd++] = *q;
    digits[nd] = '\0';
    while (nd > 1 && digits[nd - 1] == '0') digits[--nd] = '\0';
    int exp = atoi(q + 1);
    char *o = buf;
    size_t left = cap;
#define PUT(...)                                        \
    do {                                                \
        int w_ = snprintf(o, left, __VA_ARGS__);        \
        if (w_ < 0 || (size_t)w_ >= left) return;       \
        o += w_;                                        \
        left -= (size_t)w_;                             \
    } while (0)
    if (neg) PUT("-");
    if (exp < -4 || exp >= 16) {
        PUT("%c", digits[0]);
        if (nd > 1) PUT(".%s", digits + 1);
        PUT("e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    } else if (exp < 0) {
        PUT("0.");
        for (int k = 0; k < -exp - 1; k++) PUT("0");
        PUT("%s", digits);
    } else {
        for (int k = 0; k <= exp; k++) PUT("%c", k < nd ? digits[k] : '0');
        PUT(".");
        if (nd > exp + 1) PUT("%s", digits + exp + 1);
        else PUT("0");
    }
#undef PUT
}

static void repr_str(jsb *b, const char *p, size_t n) {
    int has_sq = memchr(p, '\'', n) != NULL, has_dq = memchr(p, '"', n) != NULL;
    char q = (has_sq && !has_dq) ? '"' : '\'';
    jsb_putc(b, q);
    size_t i = 0, adv;
    while (i < n) {
        int cp = ju_decode(p + i, n - i, &adv);
        char esc[16];
        if (cp == q || cp == '\\') {
            jsb_putc(b, '\\');
            jsb_putc(b, (char)cp);
        } else if (cp == '\n') jsb_puts(b, "\\n");
        else if (cp == '\r') jsb_puts(b, "\\r");
        else if (cp == '\t') jsb_puts(b, "\\t");
        else if (cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp < 0xA0) || cp == 0xAD) {
            snprintf(esc, sizeof esc, "\\x%02x", cp);
            jsb_puts(b, esc);
        } else if (cp == 0x2028 || cp == 0x2029 || (cp >= 0x200B && cp <= 0x200F) || cp == 0xFEFF) {
            snprintf(esc, sizeof esc, "\\u%04x", cp);
            jsb_puts(b, esc);
        } else jsb_put(b, p + i, adv);
        i += adv;
    }
    jsb_putc(b, q);
}

void jv_repr(jsb *b, jv v) {
    char buf[64];
    if (v.t == JV_LIST || v.t == JV_DICT) jdeep(b->c);
    switch (v.t) {
    case JV_UNDEF: break;
    case JV_NONE: jsb_puts(b, "None"); break;
    case JV_BOOL: jsb_puts(b, v.u.b ? "True" : "False"); break;
    case JV_INT:
        snprintf(buf, sizeof buf, "%lld", (long long)v.u.i);
        jsb_puts(b, buf);
        break;
    case JV_FLOAT:
        jv_float_repr(buf, sizeof buf, v.u.f);
        jsb_puts(b, buf);
        break;
    case JV_STR: repr_str(b, v.u.s.p, v.u.s.n); break;
    case JV_LIST:
        jsb_putc(b, v.u.l->is_tuple ? '(' : '[');
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) jsb_puts(b, ", ");
            jv_repr(b, v.u.l->v[i]);
        }
        if (v.u.l->is_tuple && v.u.l->n == 1) jsb_putc(b, ',');
        jsb_putc(b, v.u.l->is_tuple ? ')' : ']');
        break;
    case JV_DICT:
        if (v.u.d->is_ns) jsb_puts(b, "<Namespace "); /* jinja2 3.1: f"<Namespace {self.__attrs!r}>" */
        jsb_putc(b, '{');
        for (size_t i = 0; i < v.u.d->n; i++) {
            if (i) jsb_puts(b, ", ");
            jv_repr(b, v.u.d->k[i]);
            jsb_puts(b, ": ");
            jv_repr(b, v.u.d->v[i]);
        }
        jsb_putc(b, '}');
        if (v.u.d->is_ns) jsb_putc(b, '>');
        break;
    case JV_FUNC:
        jsb_puts(b, "<function ");
        jsb_puts(b, v.u.fn->name ? v.u.fn->name : "?");
        jsb_putc(b, '>');
        break;
    }
    if (v.t == JV_LIST || v.t == JV_DICT) b->c->depth--;
}

jv jv_to_str(jctx *c, jv v) {
    if (v.t == JV_STR) return v;
    if (v.t == JV_UNDEF) return jv_str("", 0);
    jsb b;
    jsb_init(&b, c);
    jv_repr(&b, v);
    return jsb_done(&b);
}

/* ======================================================================================= tojson */

static void json_str(jsb *b, const char *p, size_t n, int ensure_ascii) {
    jsb_putc(b, '"');
    size_t i = 0, adv;
    char esc[16];
    while (i < n) {
        unsigned char ch = (unsigned char)p[i];
        if (ch < 0x80) {
            switch (ch) {
            case '"': jsb_puts(b, "\\\""); break;
            case '\\': jsb_puts(b, "\\\\"); break;
            case '\n': jsb_puts(b, "\\n"); break;
            case '\r': jsb_puts(b, "\\r"); break;
            case '\t': jsb_puts(b, "\\t"); break;
            case '\b': jsb_puts(b, "\\b"); break;
            case '\f': jsb_puts(b, "\\f"); break;
            default:
                if (ch < 0x20) {
                    snprintf(esc, sizeof esc, "\\u%04x", ch);
                    jsb_puts(b, esc);
                } else jsb_putc(b, (char)ch);
            }
            i++;
            continue;
        }
        int cp = ju_decode(p + i, n - i, &adv);
        if (ensure_ascii) {
            if (cp >= 0x10000) {
                int v = cp - 0x10000;
                snprintf(esc, sizeof esc, "\\u%04x\\u%04x", 0xD800 | (v >> 10), 0xDC00 | (v & 0x3FF));
            } else snprintf(esc, sizeof esc, "\\u%04x", cp);
            jsb_puts(b, esc);
        } else jsb_put(b, p + i, adv);
        i += adv;
    }
    jsb_putc(b, '"');
}

static void json_newline(jsb *b, const char *indent, int level) {
    jsb_putc(b, '\n');
    for (int k = 0; k < level; k++) jsb_puts(b, indent);
}

static int cmp_keys(const void *x, const void *y) {
    const jv *a = *(const jv *const *)x, *b = *(const jv *const *)y;
    if (a->t == JV_STR && b->t == JV_STR) {
        size_t n = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
        int r = memcmp(a->u.s.p, b->u.s.p, n);
        if (r) return r;
        return a->u.s.n < b->u.s.n ? -1 : a->u.s.n > b->u.s.n;
    }
    return 0;
}

void jv_tojson(jctx *c, jsb *b, jv v, int ensure_ascii, const char *indent, const char *item_sep, const char *key_sep,
               int sort_keys, int level, const jnode *at) {
    char buf[64];
    if (level > JINJA_MAX_DEPTH) jfail_at(c, at, "tojson: value nested too deeply");
    switch (v.t) {
    case JV_UNDEF: jfail_at(c, at, "Object of type Undefined is not JSON serializable");
    case JV_FUNC: jfail_at(c, at, "Object of type function is not JSON serializable");
    case JV_NONE: jsb_puts(b, "null"); return;
    case JV_BOOL: jsb_puts(b, v.u.b ? "true" : "false"); return;
    case JV_INT:
        snprintf(buf, sizeof buf, "%lld", (long long)v.u.i);
        jsb_puts(b, buf);
        return;
    case JV_FLOAT:
        if (isnan(v.u.f)) jsb_puts(b, "NaN");
        else if (isinf(v.u.f)) jsb_puts(b, v.u.f < 0 ? "-Infinity" : "Infinity");
        else {
            jv_float_repr(buf, sizeof buf, v.u.f);
            jsb_puts(b, buf);
        }
        return;
    case JV_STR: json_str(b, v.u.s.p, v.u.s.n, ensure_ascii); return;
    case JV_LIST:
        if (v.u.l->n == 0) {
            jsb_puts(b, "[]");
            return;
        }
        jsb_putc(b, '[');
        if (indent) json_newline(b, indent, level + 1);
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) {
                jsb_puts(b, item_sep);
                if (indent) json_newline(b, indent, level + 1);
            }
            jv_tojson(c, b, v.u.l->v[i], ensure_ascii, indent, item_sep, key_sep, sort_keys, level + 1, at);
        }
        if (indent) json_newline(b, indent, level);
        jsb_putc(b, ']');
        return;
    case JV_DICT: {
        jdict *d = v.u.d;
        if (d->is_ns) jfail_at(c, at, "Object of type Namespace is not JSON serializable");
        if (d->n == 0) {
            jsb_puts(b, "{}");
            return;
        }
        const jv **order = ja_alloc(c, d->n * sizeof(jv *));
        for (size_t i = 0; i < d->n; i++) order[i] = &d->k[i];
        if (sort_keys) qsort(order, d->n, sizeof(jv *), cmp_keys);
        jsb_putc(b, '{');
        if (indent) json_newline(b, indent, level + 1);
        for (size_t i = 0; i < d->n; i++) {
            size_t idx = (size_t)(order[i] - d->k);
            if (i) {
                jsb_puts(b, item_sep);
                if (indent) json_newline(b, indent, level + 1);
            }
            jv k = d->k[idx];
            if (k.t == JV_STR) json_str(b, k.u.s.p, k.u.s.n, ensure_ascii);
            else if (k.t == JV_INT || k.t == JV_FLOAT) {
                jsb_putc(b, '"');
                jv_tojson(c, b, k, ensure_ascii, NULL, ", ", ": ", 0, level + 1, at);
                jsb_putc(b, '"');
            } else if (k.t == JV_BOOL) jsb_puts(b, k.u.b ? "\"true\"" : "\"false\"");
            else if (k.t == JV_NONE) jsb_puts(b, "\"null\"");
            else jfail_at(c, at, "keys must be str, int, float, bool or None, not %s", jv_type_name(k));
            jsb_puts(b, key_sep);
            jv_tojson(c, b, d->v[idx], ensure_ascii, indent, item_sep, key_sep, sort_keys, level + 1, at);
        }
        if (indent) json_newline(b, indent, level);
        jsb_putc(b, '}');
        return;
    }
    }
}
