/* jinja_eval.c - evaluates the chat-template AST: statements, expressions, scopes, macros, globals
 * (raise_exception, strftime_now, namespace, range, dict) and the Python methods of str / dict / list that templates call.
 *
 * Scoping follows Jinja2: a for-loop body gets a fresh frame per iteration (a `set` inside it is invisible
 * after the loop and at the next iteration's start); if-blocks share their frame; macros get a frame whose
 * parent is the frame they were defined in. Attribute access tries Python attributes (methods) first, then
 * keys; subscript tries keys first. Missing things are Undefined: falsy, render as "", fail on use. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "model/jinja.h"

/* ======================================================================================= output */

static void emit(jctx *c, const char *p, size_t n) {
    if (n > c->max_output || c->sink->n > c->max_output - n)
        jfail(c, LF_EINVAL, "template output exceeds %zu bytes", c->max_output);
    jsb_put(c->sink, p, n);
}

static void step(jctx *c, const jnode *at) {
    if (++c->steps > c->max_steps)
        jfail_at(c, at, "template exceeded %lld steps (infinite loop?)", (long long)c->max_steps);
}

/* ======================================================================================= frames */

static jframe *frame_new(jctx *c, jframe *parent) {
    jframe *f = ja_alloc(c, sizeof(jframe));
    f->parent = parent;
    f->vars = ja_alloc(c, sizeof(jdict));
    return f;
}

static jv lookup(jctx *c, jframe *f, const char *name, size_t n) {
    for (; f; f = f->parent) {
        jv v;
        if (jdict_get_str(c, f->vars, name, n, &v)) return v;
    }
    char *hint = ja_alloc(c, n + 32);
    snprintf(hint, n + 32, "'%.*s' is undefined", (int)n, name);
    return jv_undef(hint);
}

static void frame_set(jctx *c, jframe *f, const char *name, size_t n, jv v) {
    jdict_set_str(c, f->vars, ja_strndup(c, name, n), v);
}

_Noreturn static void undefined_error(jctx *c, jv u, const jnode *at) {
    jfail_at(c, at, "%.*s", (int)u.u.s.n, u.u.s.n ? u.u.s.p : "value is undefined");
}

/* ======================================================================================= builtins */

static jfunc *mkfunc(jctx *c, const char *name, jbuiltin_fn fn, jv self) {
    jfunc *f = ja_alloc(c, sizeof(jfunc));
    f->name = name;
    f->fn = fn;
    f->self = self;
    f->caller = jv_undef(NULL);
    return f;
}

static jv fnval(jfunc *f) {
    jv v = {.t = JV_FUNC};
    v.u.fn = f;
    return v;
}

static void want_args(jctx *c, const char *name, int nargs, int lo, int hi, const jnode *at) {
    if (nargs < lo || nargs > hi) jfail_at(c, at, "%s() takes %d to %d arguments (%d given)", name, lo, hi, nargs);
}

static jv want_str(jctx *c, const char *what, jv v, const jnode *at) {
    if (v.t == JV_UNDEF) undefined_error(c, v, at);
    if (v.t != JV_STR) jfail_at(c, at, "%s: expected a string, got %s", what, jv_type_name(v));
    return v;
}

static jv g_raise_exception(jctx *c, jv self, const char *name, jv *args, int nargs, const char **kwn, jv *kwv,
                            int nkw, const jnode *at) {
    (void)self, (void)name;
    /* transformers' raise_exception(message): the message exactly as given (it is the error text) */
    jv m = nargs > 0 ? args[0] : jv_undef(NULL);
    for (int i = 0; i < nkw; i++)
        if (!strcmp(kwn[i], "message")) m = kwv[i];
    if (m.t == JV_UNDEF && nargs == 0) jfail_at(c, at, "raise_exception() missing 1 required argument: 'message'");
    m = jv_to_str(c, m);
    if (m.u.s.n == 0) jfail_at(c, at, "raise_exception() called with an empty message"); /* an error has a text */
    jfail(c, LF_EINVAL, "%.*s", (int)m.u.s.n, m.u.s.p);
}

/* transformers' strftime_now(format) = datetime.now().strftime(format): the local time, through C strftime as
 * CPython does, with datetime's own %f (microseconds, 6 digits) and empty %z / %Z (a naive datetime). The format is at most 256 bytes (real
 * templates ask for "%d %b %Y"). */
static jv g_strftime_now(jctx *c, jv self, const char *name, jv *args, int nargs, const char **kwn, jv *kwv,
                         int nkw, const jnode *at) {
    (void)self, (void)name, (void)kwn, (void)kwv;
    if (nargs != 1 || nkw != 0) jfail_at(c, at, "strftime_now() takes exactly one argument (the format)");
    jv f = want_str(c, "strftime_now()", args[0], at);
    if (f.u.s.n > 256) jfail_at(c, at, "strftime_now(): the format is %zu bytes (at most 256)", f.u.s.n);
    if (memchr(f.u.s.p, 0, f.u.s.n)) jfail_at(c, at, "strftime_now(): embedded null character in the format");
    struct timespec ts;
    struct tm tm;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0 || !localtime_r(&ts.tv_sec, &tm))
        jfail_at(c, at, "strftime_now(): the clock or the local time zone is unavailable");
    char fmt[2 * 256 + 1], usec[24];
    snprintf(usec, sizeof usec, "%06ld", (long)(ts.tv_nsec / 1000) % 1000000L); /* 0..999999 */
    size_t k = 0;
    for (size_t i = 0; i < f.u.s.n; i++) { /* %f -> the microseconds; %% stays a pair */
        if (f.u.s.p[i] == '%' && i + 1 < f.u.s.n && f.u.s.p[i + 1] == 'f') {
            memcpy(fmt + k, usec, 6);
            k += 6;
            i++;
        } else if (f.u.s.p[i] == '%' && i + 1 < f.u.s.n && (f.u.s.p[i + 1] == 'z' || f.u.s.p[i + 1] == 'Z')) {
            i++; /* datetime.now() is naive: its %z and %Z are empty */
        } else if (f.u.s.p[i] == '%' && i + 1 < f.u.s.n) {
            fmt[k++] = f.u.s.p[i++];
            fmt[k++] = f.u.s.p[i];
        } else {
            fmt[k++] = f.u.s.p[i];
        }
        if (k > 2 * 256 - 8) jfail_at(c, at, "strftime_now(): the format is too long");
    }
    fmt[k] = 0;
    /* the C locale (LC_TIME is never set, nor is it by CPython): the longest directive (%c) is 24 bytes, so
     * 128 directives fit; strftime's 0 is then an empty result, never an overflow */
    char out[4096];
    size_t n = strftime(out, sizeof out, fmt, &tm);
    return jv_strdup(c, out, n);
}

static jv g_namespace(jctx *c, jv self, const char *name, jv *args, int nargs, const char **kwn, jv *kwv, int nkw,
                      const jnode *at) {
    (void)self, (void)name;
    jv ns = jv_dict_new(c);
    ns.u.d->is_ns = 1;
    for (int i = 0; i < nargs; i++) {
        if (args[i].t != JV_DICT) jfail_at(c, at, "namespace() positional arguments must be mappings");
        for (size_t k = 0; k < args[i].u.d->n; k++) jv_dict_set(c, ns, args[i].u.d->k[k], args[i].u.d->v[k]);
    }
    for (int i = 0; i < nkw; i++) jv_dict_set(c, ns, jv_cstr(kwn[i]), kwv[i]);
    return ns;
}

static jv g_dict(jctx *c, jv self, const char *name, jv *args, int nargs, const char **kwn, jv *kwv, int nkw,
                 const jnode *at) {
    jv d = g_namespace(c, self, name, args, nargs, kwn, kwv, nkw, at);
    d.u.d->is_ns = 0;
    return d;
}

static int64_t want_int(jctx *c, const char *what, jv v, const jnode *at) {
    if (v.t == JV_INT) return v.u.i;
    if (v.t == JV_BOOL) return v.u.b;
    jfail_at(c, at, "%s: expected an integer, got %s", what, jv_type_name(v));
}

/* len(range(a, b, s)), s != 0, without signed overflow */
static uint64_t span_count(int64_t a, int64_t b, int64_t s) {
    if (s > 0) return b > a ? ((uint64_t)b - (uint64_t)a - 1) / (uint64_t)s + 1 : 0;
    return a > b ? ((uint64_t)a - (uint64_t)b - 1) / ((uint64_t)(-(s + 1)) + 1) + 1 : 0;
}

static jv g_range(jctx *c, jv self, const char *name, jv *args, int nargs, const char **kwn, jv *kwv, int nkw,
                  const jnode *at) {
    (void)self, (void)kwn, (void)kwv, (void)nkw;
    want_args(c, name, nargs, 1, 3, at);
    int64_t a = 0, b, s = 1;
    if (nargs == 1) b = want_int(c, "range", args[0], at);
    else {
        a = want_int(c, "range", args[0], at);
        b = want_int(c, "range", args[1], at);
        if (nargs == 3) s = want_int(c, "range", args[2], at);
    }
    if (s == 0) jfail_at(c, at, "range() arg 3 must not be zero");
    uint64_t cnt = span_count(a, b, s);
    if (cnt > JINJA_MAX_RANGE)
        jfail_at(c, at, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (%d).", JINJA_MAX_RANGE);
    jv l = jv_list_new(c, (size_t)cnt);
    for (uint64_t i = 0; i < cnt; i++) /* in [a, b): representable; unsigned arithmetic cannot overflow */
        jv_list_push(c, l, jv_int((int64_t)((uint64_t)a + i * (uint64_t)s)));
    return l;
}

static jv g_cycle(jctx *c, jv self, const char *name, jv *args, int nargs, const char **kwn, jv *kwv, int nkw,
                  const jnode *at) {
    (void)name, (void)kwn, (void)kwv, (void)nkw;
    if (nargs == 0) jfail_at(c, at, "no items for cycling given");
    return args[self.u.i % nargs];
}

/* ---- str methods ---- */

static int in_chars(jctx *c, int cp, jv chars) {
    if (chars.t != JV_STR) return ju_is_space(cp);
    jwork(c, 1 + chars.u.s.n); /* decodes every code point of chars */
    size_t i = 0, adv;
    while (i < chars.u.s.n) {
        if (ju_decode(chars.u.s.p + i, chars.u.s.n - i, &adv) == cp) return 1;
        i += adv;
    }
    return 0;
}

/* Python str.strip/lstrip/rstrip; chars not a string = whitespace. */
jv jinja_strip(jctx *c, jv s, jv chars, int left, int right) {
    const char *p = s.u.s.p;
    size_t a = 0, b = s.u.s.n, adv;
    if (left)
        while (a < b) {
            int cp = ju_decode(p + a, b - a, &adv);
            if (!in_chars(c, cp, chars)) break;
            a += adv;
        }
    if (right)
        while (b > a) {
            size_t st = b - 1;
            while (st > a && ((unsigned char)p[st] & 0xC0) == 0x80) st--;
            int cp = ju_decode(p + st, b - st, &adv);
            if (st + adv != b || !in_chars(c, cp, chars)) break;
            b = st;
        }
    jwork(c, (s.u.s.n - (b - a)) / 4);
    return jv_str(p + a, b - a);
}

/* memchr for the first byte, memcmp at each candidate: fast on real text; a pathological pair (long needle,
 * many near-matches) runs into the work budget instead of running for hours */
const char *jinja_find(jctx *c, const char *h, size_t hn, const char *nd, size_t nn, int last) {
    if (nn == 0) return last ? h + hn : h;
    if (nn > hn) return NULL;
    size_t span = hn - nn + 1; /* candidate starts */
    if (!last) {
        const char *p = h, *end = h + span;
        while (p < end) {
            const char *q = memchr(p, (unsigned char)nd[0], (size_t)(end - p));
            jwork(c, (size_t)((q ? q : end) - p) / 16 + 1);
            if (!q) return NULL;
            jwork(c, nn / 4);
            if (memcmp(q, nd, nn) == 0) return q;
            p = q + 1;
        }
        return NULL;
    }
    size_t scanned = 0;
    for (size_t i = span; i-- > 0;) {
        if (h[i] != nd[0]) {
            if (++scanned == 4096) {
                jwork(c, scanned / 4);
                scanned = 0;
            }
            continue;
        }
        jwork(c, 1 + nn / 4 + scanned / 4);
        scanned = 0;
        if (memcmp(h + i, nd, nn) == 0) return h + i;
    }
    jwork(c, scanned / 4);
    return NULL;
}

jv jinja_replace(jctx *c, jv s, jv old, jv new_, int64_t count) {
    jsb b;
    jsb_init(&b, c);
    const char *p = s.u.s.p;
    size_t n = s.u.s.n;
    if (old.u.s.n == 0) { /* Python inserts `new` between every character */
        size_t i = 0, adv;
        int64_t k = 0;
        while (1) {
            if (count < 0 || k < count) {
                jsb_put(&b, new_.u.s.p, new_.u.s.n);
                k++;
            }
            if (i >= n) break;
            ju_decode(p + i, n - i, &adv);
            jsb_put(&b, p + i, adv);
            i += adv;
        }
        return jsb_done(&b);
    }
    int64_t k = 0;
    size_t i = 0;
    while (i <= n) {
        const char *f = (count < 0 || k < count) ? jinja_find(c, p + i, n - i, old.u.s.p, old.u.s.n, 0) : NULL;
        if (!f) {
            jsb_put(&b, p + i, n - i);
            break;
        }
        jsb_put(&b, p + i, (size_t)(f - (p + i)));
        jsb_put(&b, new_.u.s.p, new_.u.s.n);
        i = (size_t)(f - p) + old.u.s.n;
        k++;
    }
    return jsb_done(&b);
}

static jv str_split(jctx *c, jv s, jv sep, int64_t maxsplit) {
    jv out = jv_list_new(c, 0);
    const char *p = s.u.s.p;
    size_t n = s.u.s.n, i = 0, adv;
    if (sep.t != JV_STR) {
        int64_t k = 0;
        for (;;) {
            while (i < n && ju_is_space(ju_decode(p + i, n - i, &adv))) i += adv;
            if (i >= n) break;
            if (maxsplit >= 0 && k >= maxsplit) {
                jv rest = jinja_strip(c, jv_str(p + i, n - i), jv_none(), 0, 1);
                jv_list_push(c, out, rest);
                break;
            }
            size_t st = i;
            while (i < n && !ju_is_space(ju_decode(p + i, n - i, &adv))) i += adv;
            jv_list_push(c, out, jv_str(p + st, i - st));
            k++;
        }
        return out;
    }
    if (sep.u.s.n == 0) jfail(c, LF_EINVAL, "empty separator");
    int64_t k = 0;
    for (;;) {
        const char *f = (maxsplit < 0 || k < maxsplit) ? jinja_find(c, p + i, n - i, sep.u.s.p, sep.u.s.n, 0) : NULL;
        if (!f) {
            jv_list_push(c, out, jv_str(p + i, n - i));
            break;
        }
        jv_list_push(c, out, jv_str(p + i, (size_t)(f - (p + i))));
        i = (size_t)(f - p) + sep.u.s.n;
        k++;
    }
    return out;
}

static int str_prefix(jctx *c, jv s, jv x, int suffix) {
    jwork(c, 1);
    if (x.t != JV_STR || x.u.s.n > s.u.s.n) return 0;
    jwork(c, x.u.s.n / 4);
    const char *p = suffix ? s.u.s.p + s.u.s.n - x.u.s.n : s.u.s.p;
    return memcmp(p, x.u.s.p, x.u.s.n) == 0;
}

jv jinja_case(jctx *c, jv s, int mode); /* jinja_filters.c: 0 lower 1 upper 2 title(Python str.title) 3 capitalize */

static jv kwarg(const char **kwn, jv *kwv, int nkw, const char *name, jv *args, int nargs, int pos, jv def) {
    for (int i = 0; i < nkw; i++)
        if (!strcmp(kwn[i], name)) return kwv[i];
    if (pos >= 0 && pos < nargs) return args[pos];
    return def;
}

static jv m_str(jctx *c, jv self, const char *name, jv *args, int nargs, const char **kwn, jv *kwv, int nkw,
                const jnode *at) {
    jv s = self;
    /* every method but startswith/endswith may scan the whole string without allocating */
    if (strcmp(name, "startswith") && strcmp(name, "endswith")) jwork(c, s.u.s.n / 4);
    if (!strcmp(name, "strip") || !strcmp(name, "lstrip") || !strcmp(name, "rstrip")) {
        want_args(c, name, nargs, 0, 1, at);
        jv ch = nargs ? args[0] : jv_none();
        if (ch.t != JV_STR && ch.t != JV_NONE) jfail_at(c, at, "%s arg must be None or str", name);
        return jinja_strip(c, s, ch, name[0] != 'r', name[0] != 'l');
    }
    if (!strcmp(name, "split") || !strcmp(name, "rsplit")) {
        jv sep = kwarg(kwn, kwv, nkw, "sep", args, nargs, 0, jv_none());
        jv ms = kwarg(kwn, kwv, nkw, "maxsplit", args, nargs, 1, jv_int(-1));
        if (sep.t != JV_STR && sep.t != JV_NONE) jfail_at(c, at, "must be str or None, not %s", jv_type_name(sep));
        int64_t m = want_int(c, name, ms, at);
        if (name[0] == 'r' && m >= 0) { /* rsplit with a limit: split fully, then re-join the head */
            jv all = str_split(c, s, sep, -1);
            jlist *l = all.u.l;
            if ((int64_t)l->n - 1 <= m) return all;
            if (sep.t != JV_STR) return all; /* whitespace rsplit with limit: rare; approximate */
            size_t keep = l->n - (size_t)m;
            const char *head_end = l->v[keep - 1].u.s.p + l->v[keep - 1].u.s.n;
            jv out = jv_list_new(c, (size_t)m + 1);
            jv_list_push(c, out, jv_str(s.u.s.p, (size_t)(head_end - s.u.s.p)));
            for (size_t i = keep; i < l->n; i++) jv_list_push(c, out, l->v[i]);
            return out;
        }
        return str_split(c, s, sep, m);
    }
    if (!strcmp(name, "startswith") || !strcmp(name, "endswith")) {
        want_args(c, name, nargs, 1, 1, at);
        int suf = name[0] == 'e';
        if (args[0].t == JV_LIST) {
            for (size_t i = 0; i < args[0].u.l->n; i++)
                if (str_prefix(c, s, args[0].u.l->v[i], suf)) return jv_bool(1);
            return jv_bool(0);
        }
        want_str(c, name, args[0], at);
        return jv_bool(str_prefix(c, s, args[0], suf));
    }
    if (!strcmp(name, "upper")) return jinja_case(c, s, 1);
    if (!strcmp(name, "lower")) return jinja_case(c, s, 0);
    if (!strcmp(name, "title")) return jinja_case(c, s, 2);
    if (!strcmp(name, "capitalize")) return jinja_case(c, s, 3);
    if (!strcmp(name, "replace")) {
        want_args(c, name, nargs, 2, 3, at);
        want_str(c, name, args[0], at);
        want_str(c, name, args[1], at);
        return jinja_replace(c, s, args[0], args[1], nargs > 2 ? want_int(c, name, args[2], at) : -1);
    }
    if (!strcmp(name, "find") || !strcmp(name, "index") || !strcmp(name, "rfind") || !strcmp(name, "count")) {
        want_args(c, name, nargs, 1, 1, at);
        want_str(c, name, args[0], at);
        if (!strcmp(name, "count")) {
            if (args[0].u.s.n == 0) return jv_int((int64_t)ju_len(s.u.s.p, s.u.s.n) + 1);
            int64_t k = 0;
            size_t i = 0;
            const char *f;
            while ((f = jinja_find(c, s.u.s.p + i, s.u.s.n - i, args[0].u.s.p, args[0].u.s.n, 0))) {
                k++;
                i = (size_t)(f - s.u.s.p) + args[0].u.s.n;
            }
            return jv_int(k);
        }
        const char *f = jinja_find(c, s.u.s.p, s.u.s.n, args[0].u.s.p, args[0].u.s.n, name[0] == 'r');
        if (!f) {
            if (name[0] == 'i') jfail_at(c, at, "substring not found");
            return jv_int(-1);
        }
        return jv_int((int64_t)ju_len(s.u.s.p, (size_t)(f - s.u.s.p)));
    }
    if (!strcmp(name, "join")) {
        want_args(c, name, nargs, 1, 1, at);
        if (args[0].t != JV_LIST) jfail_at(c, at, "can only join an iterable");
        jsb b;
        jsb_init(&b, c);
        for (size_t i = 0; i < args[0].u.l->n; i++) {
            jv it = args[0].u.l->v[i];
            if (it.t != JV_STR) jfail_at(c, at, "sequence item %zu: expected str instance, %s found", i, jv_type_name(it));
            if (i) jsb_put(&b, s.u.s.p, s.u.s.n);
            jsb_put(&b, it.u.s.p, it.u.s.n);
        }
        return jsb_done(&b);
    }
    if (!strcmp(name, "splitlines")) {
        jv out = jv_list_new(c, 0);
        size_t i = 0, st = 0, n = s.u.s.n;
        const char *p = s.u.s.p;
        while (i < n) {
            if (p[i] == '\n' || p[i] == '\r') {
                jv_list_push(c, out, jv_str(p + st, i - st));
                i += (p[i] == '\r' && i + 1 < n && p[i + 1] == '\n') ? 2 : 1;
                st = i;
            } else i++;
        }
        if (st < n) jv_list_push(c, out, jv_str(p + st, n - st));
        return out;
    }
    if (!strncmp(name, "is", 2)) {
        if (s.u.s.n == 0) return jv_bool(0);
        size_t i = 0, adv;
        int any_cased = 0;
        while (i < s.u.s.n) {
            int cp = ju_decode(s.u.s.p + i, s.u.s.n - i, &adv);
            i += adv;
            int ok;
            if (!strcmp(name, "isdigit") || !strcmp(name, "isnumeric") || !strcmp(name, "isdecimal")) ok = cp >= '0' && cp <= '9';
            else if (!strcmp(name, "isalpha")) ok = (cp | 32) >= 'a' && (cp | 32) <= 'z';
            else if (!strcmp(name, "isalnum")) ok = ((cp | 32) >= 'a' && (cp | 32) <= 'z') || (cp >= '0' && cp <= '9');
            else if (!strcmp(name, "isspace")) ok = ju_is_space(cp);
            else if (!strcmp(name, "isupper")) { ok = !(cp >= 'a' && cp <= 'z'); any_cased |= cp >= 'A' && cp <= 'Z'; }
            else if (!strcmp(name, "islower")) { ok = !(cp >= 'A' && cp <= 'Z'); any_cased |= cp >= 'a' && cp <= 'z'; }
            else jfail_at(c, at, "str.%s is not supported", name);
            if (!ok) return jv_bool(0);
        }
        if (!strcmp(name, "isupper") || !strcmp(name, "islower")) return jv_bool(any_cased);
        return jv_bool(1);
    }
    jfail_at(c, at, "str.%s() is not supported", name);
}

static jv m_dict(jctx *c, jv self, const char *name, jv *args, int nargs, const char **kwn, jv *kwv, int nkw,
                 const jnode *at) {
    (void)kwn, (void)kwv, (void)nkw;
    jdict *d = self.u.d;
    if (!strcmp(name, "items") || !strcmp(name, "keys") || !strcmp(name, "values")) {
        want_args(c, name, nargs, 0, 0, at);
        jv out = jv_list_new(c, d->n);
        for (size_t i = 0; i < d->n; i++) {
            if (name[0] == 'k') jv_list_push(c, out, d->k[i]);
            else if (name[0] == 'v') jv_list_push(c, out, d->v[i]);
            else {
                jv pair = jv_list_new(c, 2);
                pair.u.l->is_tuple = 1;
                jv_list_push(c, pair, d->k[i]);
                jv_list_push(c, pair, d->v[i]);
                jv_list_push(c, out, pair);
            }
        }
        return out;
    }
    if (!strcmp(name, "get")) {
        want_args(c, name, nargs, 1, 2, at);
        jv v;
        if (jdict_get(c, d, args[0], &v)) return v;
        return nargs > 1 ? args[1] : jv_none();
    }
    jfail_at(c, at, "access to attribute '%s' of 'dict' object is unsafe.", name);
}

static jv m_list(jctx *c, jv self, const char *name, jv *args, int nargs, const char **kwn, jv *kwv, int nkw,
                 const jnode *at) {
    (void)kwn, (void)kwv, (void)nkw;
    jlist *l = self.u.l;
    if (!strcmp(name, "index") || !strcmp(name, "count")) {
        want_args(c, name, nargs, 1, 1, at);
        int64_t k = 0;
        for (size_t i = 0; i < l->n; i++)
            if (jv_equal(c, l->v[i], args[0])) {
                if (name[0] == 'i') return jv_int((int64_t)i);
                k++;
            }
        if (name[0] == 'i') jfail_at(c, at, "value is not in list");
        return jv_int(k);
    }
    jfail_at(c, at, "access to attribute '%s' of 'list' object is unsafe.", name);
}

static int name_in(const char *name, size_t n, const char *const *list) {
    for (int k = 0; list[k]; k++)
        if (strlen(list[k]) == n && !memcmp(list[k], name, n)) return 1;
    return 0;
}

static const char *const STR_METHODS[] = {
    "strip", "lstrip", "rstrip", "split", "rsplit", "startswith", "endswith", "upper", "lower", "title",
    "capitalize", "replace", "find", "rfind", "index", "count", "join", "splitlines", "isdigit", "isnumeric",
    "isdecimal", "isalpha", "isalnum", "isspace", "isupper", "islower", NULL};
static const char *const DICT_METHODS[] = {"items", "keys", "values", "get", "pop", "update", "setdefault",
                                           "clear", "popitem", "copy", NULL};
static const char *const LIST_METHODS[] = {"index", "count", "append", "extend", "insert", "pop", "remove",
                                           "reverse", "sort", "clear", "copy", NULL};

static jv no_attr(jctx *c, jv obj, const char *name, size_t n) {
    const char *tn = obj.t == JV_NONE ? "None" : jv_type_name(obj);
    size_t cap = n + 64;
    char *hint = ja_alloc(c, cap);
    if (obj.t == JV_NONE) snprintf(hint, cap, "'None' has no attribute '%.*s'", (int)n, name);
    else snprintf(hint, cap, "'%s object' has no attribute '%.*s'", tn, (int)n, name);
    return jv_undef(hint);
}

jv jinja_getattr(jctx *c, jv obj, const char *name, size_t n, const jnode *at) {
    if (obj.t == JV_UNDEF) undefined_error(c, obj, at);
    if (obj.t == JV_DICT) {
        if (!obj.u.d->is_ns && name_in(name, n, DICT_METHODS))
            return fnval(mkfunc(c, ja_strndup(c, name, n), m_dict, obj));
        jv v;
        if (jdict_get_str(c, obj.u.d, name, n, &v)) return v;
        return no_attr(c, obj, name, n);
    }
    if (obj.t == JV_STR && name_in(name, n, STR_METHODS)) return fnval(mkfunc(c, ja_strndup(c, name, n), m_str, obj));
    if (obj.t == JV_LIST && name_in(name, n, LIST_METHODS)) return fnval(mkfunc(c, ja_strndup(c, name, n), m_list, obj));
    return no_attr(c, obj, name, n);
}

static int64_t norm_index(int64_t i, size_t len) { return i < 0 ? i + (int64_t)len : i; }

jv jinja_getitem(jctx *c, jv obj, jv key, const jnode *at) {
    if (obj.t == JV_UNDEF) undefined_error(c, obj, at);
    if (obj.t == JV_DICT) {
        jv v;
        if (jdict_get(c, obj.u.d, key, &v)) return v;
        if (key.t == JV_STR) return jinja_getattr(c, obj, key.u.s.p, key.u.s.n, at);
        return jv_undef("'dict object' has no attribute");
    }
    if ((obj.t == JV_LIST || obj.t == JV_STR) && (key.t == JV_INT || key.t == JV_BOOL)) {
        int64_t k = key.t == JV_INT ? key.u.i : key.u.b;
        if (obj.t == JV_LIST) {
            int64_t i = norm_index(k, obj.u.l->n);
            if (i < 0 || i >= (int64_t)obj.u.l->n) {
                char *hint = ja_alloc(c, 64);
                snprintf(hint, 64, "'list object' has no attribute '%lld'", (long long)k);
                return jv_undef(hint);
            }
            return obj.u.l->v[i];
        }
        jwork(c, obj.u.s.n / 4);
        size_t len = ju_len(obj.u.s.p, obj.u.s.n);
        int64_t i = norm_index(k, len);
        if (i < 0 || i >= (int64_t)len) return jv_undef("string index out of range");
        size_t a = ju_offset(obj.u.s.p, obj.u.s.n, (size_t)i), b = ju_offset(obj.u.s.p, obj.u.s.n, (size_t)i + 1);
        return jv_str(obj.u.s.p + a, b - a);
    }
    if (key.t == JV_STR) return jinja_getattr(c, obj, key.u.s.p, key.u.s.n, at);
    return jv_undef("item not found");
}

/* Python slice semantics over n elements. */
static void slice_indices(int64_t n, jv start, jv stop, jv stepv, int64_t *a, int64_t *b, int64_t *s, jctx *c,
                          const jnode *at) {
    int64_t st = stepv.t == JV_NONE ? 1 : want_int(c, "slice step", stepv, at);
    if (st == 0) jfail_at(c, at, "slice step cannot be zero");
    int64_t lo, hi;
    if (st > 0) {
        lo = 0;
        hi = n;
    } else {
        lo = -1;
        hi = n - 1;
    }
    int64_t x = start.t == JV_NONE ? (st > 0 ? lo : hi) : want_int(c, "slice index", start, at);
    int64_t y = stop.t == JV_NONE ? (st > 0 ? hi : lo) : want_int(c, "slice index", stop, at);
    if (start.t != JV_NONE) {
        if (x < 0) x += n;
        if (x < lo) x = lo;
        if (x > hi) x = hi;
    }
    if (stop.t != JV_NONE) {
        if (y < 0) y += n;
        if (y < lo) y = lo;
        if (y > hi) y = hi;
    }
    *a = x;
    *b = y;
    *s = st;
}

static jv do_slice(jctx *c, jv obj, jv start, jv stop, jv stepv, const jnode *at) {
    if (obj.t == JV_UNDEF) undefined_error(c, obj, at);
    int64_t a, b, s;
    if (obj.t == JV_LIST) {
        slice_indices((int64_t)obj.u.l->n, start, stop, stepv, &a, &b, &s, c, at);
        uint64_t cnt = span_count(a, b, s); /* a, b in [-1, n]: a + k*s stays in range */
        jv out = jv_list_new(c, (size_t)cnt);
        for (uint64_t k = 0; k < cnt; k++) jv_list_push(c, out, obj.u.l->v[a + (int64_t)k * s]);
        return out;
    }
    if (obj.t == JV_STR) {
        const char *p = obj.u.s.p;
        jwork(c, obj.u.s.n / 4);
        size_t n = obj.u.s.n, len = ju_len(p, n);
        slice_indices((int64_t)len, start, stop, stepv, &a, &b, &s, c, at);
        if (s == 1) {
            if (b <= a) return jv_str("", 0);
            size_t x = ju_offset(p, n, (size_t)a), y = ju_offset(p, n, (size_t)b);
            return jv_str(p + x, y - x);
        }
        size_t *offs = ja_alloc(c, (len + 1) * sizeof(size_t));
        size_t i = 0, k = 0, adv;
        while (i < n) {
            offs[k++] = i;
            ju_decode(p + i, n - i, &adv);
            i += adv;
        }
        offs[k] = n;
        jsb sb;
        jsb_init(&sb, c);
        uint64_t cnt = span_count(a, b, s);
        for (uint64_t k = 0; k < cnt; k++) {
            int64_t j = a + (int64_t)k * s;
            jsb_put(&sb, p + offs[j], offs[j + 1] - offs[j]);
        }
        return jsb_done(&sb);
    }
    jfail_at(c, at, "'%s' object is not subscriptable", jv_type_name(obj));
}

/* ======================================================================================= calls */

static void render_capture(jctx *c, const jnode *body, jframe *f, jsb *cap) {
    jsb *saved = c->sink;
    jsb_init(cap, c);
    c->sink = cap;
    jinja_render_body(c, body, f);
    c->sink = saved;
}

static jv call_macro(jctx *c, jfunc *fn, jv *args, int nargs, const char **kwn, jv *kwv, int nkw, const jnode *at) {
    const jnode *m = fn->macro;
    if (++c->depth > JINJA_MAX_DEPTH) jfail_at(c, at, "maximum recursion depth exceeded");
    jframe *f = frame_new(c, fn->closure);
    int *used = ja_alloc(c, (size_t)(nkw + 1) * sizeof(int));
    for (size_t p = 0; p < m->nkw; p++) {
        const char *pn = m->names[p];
        jv v;
        int have = 0;
        if ((int)p < nargs) {
            v = args[p];
            have = 1;
        }
        for (int k = 0; k < nkw; k++)
            if (!strcmp(kwn[k], pn)) {
                if (have) jfail_at(c, at, "macro '%s' got multiple values for argument '%s'", fn->name, pn);
                v = kwv[k];
                used[k] = 1;
                have = 1;
            }
        if (!have) v = m->kwitems[p] ? jinja_eval(c, m->kwitems[p], f) : jv_undef(NULL);
        if (!have && !m->kwitems[p]) {
            char *hint = ja_alloc(c, strlen(pn) + 64);
            sprintf(hint, "parameter '%s' was not provided", pn);
            v = jv_undef(hint);
        }
        frame_set(c, f, pn, strlen(pn), v);
    }
    jv varargs = jv_list_new(c, 0), kwargs = jv_dict_new(c);
    for (int i = (int)m->nkw; i < nargs; i++) jv_list_push(c, varargs, args[i]);
    for (int k = 0; k < nkw; k++)
        if (!used[k]) {
            if (!strcmp(kwn[k], "caller")) continue;
            jv_dict_set(c, kwargs, jv_cstr(kwn[k]), kwv[k]);
        }
    frame_set(c, f, "varargs", 7, varargs);
    frame_set(c, f, "kwargs", 6, kwargs);
    for (int k = 0; k < nkw; k++)
        if (!strcmp(kwn[k], "caller")) frame_set(c, f, "caller", 6, kwv[k]);
    jsb cap;
    render_capture(c, m->c, f, &cap);
    c->depth--;
    return jsb_done(&cap);
}

jv jinja_call_value(jctx *c, jv fn, jv *args, int nargs, const char **kwn, jv *kwv, int nkw, const jnode *at) {
    if (fn.t == JV_UNDEF) undefined_error(c, fn, at);
    if (fn.t != JV_FUNC) jfail_at(c, at, "'%s' object is not callable", jv_type_name(fn));
    if (fn.u.fn->macro) return call_macro(c, fn.u.fn, args, nargs, kwn, kwv, nkw, at);
    return fn.u.fn->fn(c, fn.u.fn->self, fn.u.fn->name, args, nargs, kwn, kwv, nkw, at);
}

static void eval_args(jctx *c, const jnode *e, jframe *f, jv **args, const char ***kwn, jv **kwv) {
    *args = ja_alloc(c, (e->nitems + 1) * sizeof(jv));
    for (size_t i = 0; i < e->nitems; i++) (*args)[i] = jinja_eval(c, e->items[i], f);
    *kwn = (const char **)e->names;
    *kwv = ja_alloc(c, (e->nkw + 1) * sizeof(jv));
    for (size_t i = 0; i < e->nkw; i++) (*kwv)[i] = jinja_eval(c, e->kwitems[i], f);
}

/* ======================================================================================= operators */

static int is_num(jv v) { return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL; }
static int is_intlike(jv v) { return v.t == JV_INT || v.t == JV_BOOL; }
static int64_t iv(jv v) { return v.t == JV_INT ? v.u.i : v.u.b; }
static double fv(jv v) { return v.t == JV_FLOAT ? v.u.f : (double)iv(v); }

static jv repeat(jctx *c, jv seq, int64_t k) {
    size_t n = seq.t == JV_STR ? seq.u.s.n : seq.u.l->n;
    if (k <= 0 || n == 0) return seq.t == JV_STR ? jv_str("", 0) : jv_list_new(c, 0);
    if (seq.t == JV_STR) {
        if ((uint64_t)k > c->max_output / n)
            jfail(c, LF_EINVAL, "string repetition too large (%lld x %zu bytes; the output limit is %zu bytes)",
                  (long long)k, n, c->max_output);
        jsb b;
        jsb_init(&b, c);
        for (int64_t i = 0; i < k; i++) jsb_put(&b, seq.u.s.p, seq.u.s.n);
        return jsb_done(&b);
    }
    if ((uint64_t)k > 10000000u / n)
        jfail(c, LF_EINVAL, "list repetition too large (%lld x %zu items)", (long long)k, n);
    jv out = jv_list_new(c, (size_t)k * seq.u.l->n);
    for (int64_t i = 0; i < k; i++)
        for (size_t j = 0; j < seq.u.l->n; j++) jv_list_push(c, out, seq.u.l->v[j]);
    return out;
}

_Noreturn static void bad_operands(jctx *c, const char *op, jv a, jv b, const jnode *at) {
    if (a.t == JV_UNDEF) undefined_error(c, a, at);
    if (b.t == JV_UNDEF) undefined_error(c, b, at);
    if (a.t == JV_STR && !strcmp(op, "+")) jfail_at(c, at, "can only concatenate str (not \"%s\") to str", jv_type_name(b));
    jfail_at(c, at, "unsupported operand type(s) for %s: '%s' and '%s'", op, jv_type_name(a), jv_type_name(b));
}

static jv binop(jctx *c, const char *op, jv a, jv b, const jnode *at) {
    int64_t r;
    switch (op[0]) {
    case '+':
        if (is_intlike(a) && is_intlike(b)) {
            if (__builtin_add_overflow(iv(a), iv(b), &r)) return jv_float(fv(a) + fv(b));
            return jv_int(r);
        }
        if (is_num(a) && is_num(b)) return jv_float(fv(a) + fv(b));
        if (a.t == JV_STR && b.t == JV_STR) {
            char *p = ja_alloc(c, a.u.s.n + b.u.s.n + 1);
            memcpy(p, a.u.s.p, a.u.s.n);
            memcpy(p + a.u.s.n, b.u.s.p, b.u.s.n);
            return jv_str(p, a.u.s.n + b.u.s.n);
        }
        if (a.t == JV_LIST && b.t == JV_LIST) {
            jv out = jv_list_new(c, a.u.l->n + b.u.l->n);
            for (size_t i = 0; i < a.u.l->n; i++) jv_list_push(c, out, a.u.l->v[i]);
            for (size_t i = 0; i < b.u.l->n; i++) jv_list_push(c, out, b.u.l->v[i]);
            return out;
        }
        bad_operands(c, op, a, b, at);
    case '-':
        if (is_intlike(a) && is_intlike(b)) {
            if (__builtin_sub_overflow(iv(a), iv(b), &r)) return jv_float(fv(a) - fv(b));
            return jv_int(r);
        }
        if (is_num(a) && is_num(b)) return jv_float(fv(a) - fv(b));
        bad_operands(c, op, a, b, at);
    case '*':
        if (op[1] == '*') {
            if (!is_num(a) || !is_num(b)) bad_operands(c, op, a, b, at);
            if (is_intlike(a) && is_intlike(b) && iv(b) >= 0) { /* by squaring: O(log e); overflow -> float */
                int64_t base = iv(a), e = iv(b), res = 1;
                int ovf = 0;
                while (e > 0 && !ovf) {
                    if (e & 1) ovf = __builtin_mul_overflow(res, base, &res);
                    e >>= 1;
                    if (e && !ovf) ovf = __builtin_mul_overflow(base, base, &base);
                }
                return ovf ? jv_float(pow(fv(a), fv(b))) : jv_int(res);
            }
            return jv_float(pow(fv(a), fv(b)));
        }
        if (is_intlike(a) && is_intlike(b)) {
            if (__builtin_mul_overflow(iv(a), iv(b), &r)) return jv_float(fv(a) * fv(b));
            return jv_int(r);
        }
        if (is_num(a) && is_num(b)) return jv_float(fv(a) * fv(b));
        if ((a.t == JV_STR || a.t == JV_LIST) && is_intlike(b)) return repeat(c, a, iv(b));
        if ((b.t == JV_STR || b.t == JV_LIST) && is_intlike(a)) return repeat(c, b, iv(a));
        bad_operands(c, op, a, b, at);
    case '/':
        if (!is_num(a) || !is_num(b)) bad_operands(c, op, a, b, at);
        if (op[1] == '/') {
            if (is_intlike(a) && is_intlike(b)) {
                int64_t x = iv(a), y = iv(b);
                if (y == 0) jfail_at(c, at, "integer division or modulo by zero");
                if (y == -1) return x == INT64_MIN ? jv_float(-(double)x) : jv_int(-x); /* INT64_MIN / -1 traps */
                int64_t q = x / y;
                if ((x % y != 0) && ((x < 0) != (y < 0))) q--;
                return jv_int(q);
            }
            if (fv(b) == 0) jfail_at(c, at, "float floor division by zero");
            return jv_float(floor(fv(a) / fv(b)));
        }
        if (fv(b) == 0) jfail_at(c, at, "division by zero");
        return jv_float(fv(a) / fv(b));
    case '%':
        if (!is_num(a) || !is_num(b)) bad_operands(c, op, a, b, at);
        if (is_intlike(a) && is_intlike(b)) {
            int64_t x = iv(a), y = iv(b);
            if (y == 0) jfail_at(c, at, "integer division or modulo by zero");
            if (y == -1) return jv_int(0); /* INT64_MIN % -1 traps */
            int64_t m = x % y;
            if (m != 0 && ((m < 0) != (y < 0))) m += y;
            return jv_int(m);
        } else {
            double x = fv(a), y = fv(b);
            if (y == 0) jfail_at(c, at, "float modulo");
            double m = fmod(x, y);
            if (m != 0 && ((m < 0) != (y < 0))) m += y;
            return jv_float(m);
        }
    }
    jfail_at(c, at, "unknown operator %s", op);
}

static int contains(jctx *c, jv hay, jv needle, const jnode *at) {
    switch (hay.t) {
    case JV_STR:
        if (needle.t == JV_UNDEF) undefined_error(c, needle, at);
        if (needle.t != JV_STR) jfail_at(c, at, "'in <string>' requires string as left operand, not %s", jv_type_name(needle));
        return jinja_find(c, hay.u.s.p, hay.u.s.n, needle.u.s.p, needle.u.s.n, 0) != NULL;
    case JV_LIST:
        for (size_t i = 0; i < hay.u.l->n; i++)
            if (jv_equal(c, hay.u.l->v[i], needle)) return 1;
        return 0;
    case JV_DICT: return jdict_get(c, hay.u.d, needle, NULL);
    case JV_UNDEF: return 0;
    default: jfail_at(c, at, "argument of type '%s' is not iterable", jv_type_name(hay));
    }
}

static int compare_op(jctx *c, const char *op, jv a, jv b, const jnode *at) {
    if (!strcmp(op, "==")) return jv_equal(c, a, b);
    if (!strcmp(op, "!=")) return !jv_equal(c, a, b);
    if (!strcmp(op, "in")) return contains(c, b, a, at);
    if (!strcmp(op, "notin")) return !contains(c, b, a, at);
    if (a.t == JV_UNDEF) undefined_error(c, a, at);
    if (b.t == JV_UNDEF) undefined_error(c, b, at);
    int r = jv_compare(c, a, b, at);
    if (!strcmp(op, "<")) return r < 0;
    if (!strcmp(op, "<=")) return r <= 0;
    if (!strcmp(op, ">")) return r > 0;
    return r >= 0;
}

/* ======================================================================================= expressions */

jv jinja_eval(jctx *c, const jnode *e, jframe *f) {
    if (++c->depth > JINJA_MAX_EVAL_DEPTH)
        jfail_at(c, e, "expression nested too deeply (more than %d levels)", JINJA_MAX_EVAL_DEPTH);
    jv r;
    switch (e->kind) {
    case N_CONST: r = e->cval; break;
    case N_NAME: r = lookup(c, f, e->name, e->name_len); break;
    case N_GETATTR: r = jinja_getattr(c, jinja_eval(c, e->a, f), e->name, e->name_len, e); break;
    case N_GETITEM: {
        jv obj = jinja_eval(c, e->a, f);
        r = jinja_getitem(c, obj, jinja_eval(c, e->b, f), e);
        break;
    }
    case N_SLICE: {
        jv obj = jinja_eval(c, e->a, f);
        jv a = e->b ? jinja_eval(c, e->b, f) : jv_none();
        jv b = e->c ? jinja_eval(c, e->c, f) : jv_none();
        jv s = e->d ? jinja_eval(c, e->d, f) : jv_none();
        r = do_slice(c, obj, a, b, s, e);
        break;
    }
    case N_CALL: {
        jv fn = jinja_eval(c, e->a, f), *args, *kwv;
        const char **kwn;
        eval_args(c, e, f, &args, &kwn, &kwv);
        r = jinja_call_value(c, fn, args, (int)e->nitems, kwn, kwv, (int)e->nkw, e);
        break;
    }
    case N_FILTER: {
        jv v = jinja_eval(c, e->a, f), *args, *kwv;
        const char **kwn;
        eval_args(c, e, f, &args, &kwn, &kwv);
        r = jinja_apply_filter(c, e->name, e->name_len, v, args, (int)e->nitems, kwn, kwv, (int)e->nkw, f, e);
        break;
    }
    case N_TEST: {
        jv v = jinja_eval(c, e->a, f), *args, *kwv;
        const char **kwn;
        eval_args(c, e, f, &args, &kwn, &kwv);
        int t = jinja_apply_test(c, e->name, e->name_len, v, args, (int)e->nitems, e);
        r = jv_bool(e->neg ? !t : t);
        break;
    }
    case N_BINOP: {
        jv a = jinja_eval(c, e->a, f);
        r = binop(c, e->name, a, jinja_eval(c, e->b, f), e);
        break;
    }
    case N_NEG: case N_POS: {
        jv a = jinja_eval(c, e->a, f);
        if (a.t == JV_UNDEF) undefined_error(c, a, e);
        if (!is_num(a)) jfail_at(c, e, "bad operand type for unary %c: '%s'", e->kind == N_NEG ? '-' : '+', jv_type_name(a));
        if (e->kind == N_POS) r = a.t == JV_BOOL ? jv_int(a.u.b) : a;
        else if (a.t == JV_FLOAT) r = jv_float(-a.u.f);
        else r = iv(a) == INT64_MIN ? jv_float(-(double)iv(a)) : jv_int(-iv(a));
        break;
    }
    case N_NOT: r = jv_bool(!jv_truthy(jinja_eval(c, e->a, f))); break;
    case N_AND: {
        jv a = jinja_eval(c, e->a, f);
        r = jv_truthy(a) ? jinja_eval(c, e->b, f) : a;
        break;
    }
    case N_OR: {
        jv a = jinja_eval(c, e->a, f);
        r = jv_truthy(a) ? a : jinja_eval(c, e->b, f);
        break;
    }
    case N_COMPARE: {
        jv left = jinja_eval(c, e->a, f);
        r = jv_bool(1);
        for (size_t i = 0; i < e->nitems; i++) {
            jv right = jinja_eval(c, e->items[i], f);
            if (!compare_op(c, e->names[i], left, right, e)) {
                r = jv_bool(0);
                break;
            }
            left = right;
        }
        break;
    }
    case N_COND:
        if (jv_truthy(jinja_eval(c, e->a, f))) r = jinja_eval(c, e->b, f);
        else r = e->c ? jinja_eval(c, e->c, f) : jv_undef("the inline if-expression evaluated to false and no else section was defined.");
        break;
    case N_LIST: case N_TUPLE:
        r = jv_list_new(c, e->nitems);
        r.u.l->is_tuple = e->kind == N_TUPLE;
        for (size_t i = 0; i < e->nitems; i++) jv_list_push(c, r, jinja_eval(c, e->items[i], f));
        break;
    case N_DICT:
        r = jv_dict_new(c);
        for (size_t i = 0; i < e->nitems; i++) {
            jv k = jinja_eval(c, e->items[i], f);
            jv_dict_set(c, r, k, jinja_eval(c, e->kwitems[i], f));
        }
        break;
    case N_CONCAT: {
        jsb b;
        jsb_init(&b, c);
        for (size_t i = 0; i < e->nitems; i++) {
            jv s = jv_to_str(c, jinja_eval(c, e->items[i], f));
            jsb_put(&b, s.u.s.p, s.u.s.n);
        }
        r = jsb_done(&b);
        break;
    }
    default: jfail_at(c, e, "internal error: statement node in expression");
    }
    c->depth--;
    return r;
}

/* ======================================================================================= statements */

static void assign(jctx *c, const jnode *target, jv v, jframe *f) {
    if (target->kind == N_NAME) {
        frame_set(c, f, target->name, target->name_len, v);
        return;
    }
    if (target->kind == N_GETATTR) {
        jv ns = lookup(c, f, target->a->name, target->a->name_len);
        if (ns.t != JV_DICT || !ns.u.d->is_ns) jfail_at(c, target, "can only assign attributes on namespace() objects");
        jdict_set_str(c, ns.u.d, ja_strndup(c, target->name, target->name_len), v);
        return;
    }
    /* tuple unpacking */
    jlist *src = NULL;
    if (v.t == JV_LIST) src = v.u.l;
    else if (v.t == JV_DICT) src = jinja_call_value(c, jinja_getattr(c, v, "keys", 4, target), NULL, 0, NULL, NULL, 0, target).u.l;
    else if (v.t == JV_STR) {
        jv l = jv_list_new(c, 0);
        size_t i = 0, adv;
        while (i < v.u.s.n) {
            ju_decode(v.u.s.p + i, v.u.s.n - i, &adv);
            jv_list_push(c, l, jv_str(v.u.s.p + i, adv));
            i += adv;
        }
        src = l.u.l;
    } else jfail_at(c, target, "cannot unpack non-iterable %s object", jv_type_name(v));
    if (src->n < target->nitems) jfail_at(c, target, "not enough values to unpack (expected %zu, got %zu)", target->nitems, src->n);
    if (src->n > target->nitems) jfail_at(c, target, "too many values to unpack (expected %zu)", target->nitems);
    for (size_t i = 0; i < target->nitems; i++) assign(c, target->items[i], src->v[i], f);
}

/* Iterable -> list of items (Python iteration order). */
static jlist *iter_items(jctx *c, jv v, const jnode *at) {
    switch (v.t) {
    case JV_LIST: jwork(c, v.u.l->n); return v.u.l; /* the caller walks it, often allocating nothing */
    case JV_UNDEF: return jv_list_new(c, 0).u.l;
    case JV_DICT: {
        jv l = jv_list_new(c, v.u.d->n);
        for (size_t i = 0; i < v.u.d->n; i++) jv_list_push(c, l, v.u.d->k[i]);
        return l.u.l;
    }
    case JV_STR: {
        jv l = jv_list_new(c, 0);
        size_t i = 0, adv;
        while (i < v.u.s.n) {
            ju_decode(v.u.s.p + i, v.u.s.n - i, &adv);
            jv_list_push(c, l, jv_str(v.u.s.p + i, adv));
            i += adv;
        }
        return l.u.l;
    }
    default: jfail_at(c, at, "'%s' object is not iterable", jv_type_name(v));
    }
}

jlist *jinja_iter(jctx *c, jv v, const jnode *at) { return iter_items(c, v, at); }

static void render_for(jctx *c, const jnode *s, jframe *f) {
    jlist *items = iter_items(c, jinja_eval(c, s->b, f), s);
    if (s->e) { /* for x in xs if cond: filter first; loop.length counts what is left */
        jv kept = jv_list_new(c, items->n);
        for (size_t i = 0; i < items->n; i++) {
            step(c, s);
            jframe *tf = frame_new(c, f);
            assign(c, s->a, items->v[i], tf);
            if (jv_truthy(jinja_eval(c, s->e, tf))) jv_list_push(c, kept, items->v[i]);
        }
        items = kept.u.l;
    }
    size_t n = items->n;
    for (size_t i = 0; i < n; i++) {
        step(c, s);
        jframe *it = frame_new(c, f);
        jdict *loop = ja_alloc(c, sizeof(jdict));
        jv lv = {.t = JV_DICT};
        lv.u.d = loop;
        jdict_append_str(c, loop, "index", jv_int((int64_t)i + 1));
        jdict_append_str(c, loop, "index0", jv_int((int64_t)i));
        jdict_append_str(c, loop, "revindex", jv_int((int64_t)(n - i)));
        jdict_append_str(c, loop, "revindex0", jv_int((int64_t)(n - i - 1)));
        jdict_append_str(c, loop, "first", jv_bool(i == 0));
        jdict_append_str(c, loop, "last", jv_bool(i + 1 == n));
        jdict_append_str(c, loop, "length", jv_int((int64_t)n));
        jdict_append_str(c, loop, "depth", jv_int(1));
        jdict_append_str(c, loop, "depth0", jv_int(0));
        jdict_append_str(c, loop, "previtem", i > 0 ? items->v[i - 1] : jv_undef("there is no previous item"));
        jdict_append_str(c, loop, "nextitem", i + 1 < n ? items->v[i + 1] : jv_undef("there is no next item"));
        jdict_append_str(c, loop, "cycle", fnval(mkfunc(c, "cycle", g_cycle, jv_int((int64_t)i))));
        frame_set(c, it, "loop", 4, lv);
        assign(c, s->a, items->v[i], it);
        jinja_render_body(c, s->c, it);
    }
    if (n == 0 && s->d) jinja_render_body(c, s->d, frame_new(c, f));
}

static jv apply_filter_chain(jctx *c, const jnode *s, jv v, jframe *f) {
    for (size_t i = 0; i < s->nitems; i++) {
        const jnode *flt = s->items[i];
        jv *args, *kwv;
        const char **kwn;
        eval_args(c, flt, f, &args, &kwn, &kwv);
        v = jinja_apply_filter(c, flt->name, flt->name_len, v, args, (int)flt->nitems, kwn, kwv, (int)flt->nkw, f, flt);
    }
    return v;
}

void jinja_render_body(jctx *c, const jnode *body, jframe *f) {
    if (!body) return;
    if (++c->depth > JINJA_MAX_EVAL_DEPTH)
        jfail_at(c, body, "template nested too deeply (more than %d levels)", JINJA_MAX_EVAL_DEPTH);
    for (size_t k = 0; k < body->nitems; k++) {
        const jnode *s = body->items[k];
        step(c, s);
        switch (s->kind) {
        case N_DATA: emit(c, s->name, s->name_len); break;
        case N_OUTPUT: {
            jv v = jv_to_str(c, jinja_eval(c, s->a, f));
            emit(c, v.u.s.p, v.u.s.n);
            break;
        }
        case N_BODY: jinja_render_body(c, s, f); break;
        case N_IF:
            if (jv_truthy(jinja_eval(c, s->a, f))) jinja_render_body(c, s->b, f);
            else jinja_render_body(c, s->c, f);
            break;
        case N_FOR: render_for(c, s, f); break;
        case N_SET: assign(c, s->a, jinja_eval(c, s->b, f), f); break;
        case N_SET_BLOCK: {
            jsb cap;
            render_capture(c, s->c, f, &cap);
            assign(c, s->a, apply_filter_chain(c, s, jsb_done(&cap), f), f);
            break;
        }
        case N_FILTER_BLOCK: {
            jsb cap;
            render_capture(c, s->c, f, &cap);
            jv v = jv_to_str(c, apply_filter_chain(c, s, jsb_done(&cap), f));
            emit(c, v.u.s.p, v.u.s.n);
            break;
        }
        case N_MACRO: {
            jfunc *fn = mkfunc(c, s->name, NULL, jv_none());
            fn->macro = s;
            fn->closure = f;
            frame_set(c, f, s->name, s->name_len, fnval(fn));
            break;
        }
        case N_CALL_BLOCK: {
            jfunc *caller = mkfunc(c, "caller", NULL, jv_none());
            caller->macro = s; /* params in names/kwitems, body in c: same layout as N_MACRO */
            caller->closure = f;
            const jnode *call = s->a;
            jv fn = jinja_eval(c, call->a, f), *args, *kwv0;
            const char **kwn0;
            eval_args(c, call, f, &args, &kwn0, &kwv0);
            const char **kwn = ja_alloc(c, (call->nkw + 1) * sizeof(char *));
            jv *kwv = ja_alloc(c, (call->nkw + 1) * sizeof(jv));
            for (size_t i = 0; i < call->nkw; i++) {
                kwn[i] = kwn0[i];
                kwv[i] = kwv0[i];
            }
            kwn[call->nkw] = "caller";
            kwv[call->nkw] = fnval(caller);
            jv v = jv_to_str(c, jinja_call_value(c, fn, args, (int)call->nitems, kwn, kwv, (int)call->nkw + 1, call));
            emit(c, v.u.s.p, v.u.s.n);
            break;
        }
        default: {
            jv v = jv_to_str(c, jinja_eval(c, s, f));
            emit(c, v.u.s.p, v.u.s.n);
        }
        }
    }
    c->depth--;
}

void jinja_install_globals(jctx *c, jframe *root) {
    frame_set(c, root, "raise_exception", 15, fnval(mkfunc(c, "raise_exception", g_raise_exception, jv_none())));
    frame_set(c, root, "strftime_now", 12, fnval(mkfunc(c, "strftime_now", g_strftime_now, jv_none())));
    frame_set(c, root, "namespace", 9, fnval(mkfunc(c, "namespace", g_namespace, jv_none())));
    frame_set(c, root, "range", 5, fnval(mkfunc(c, "range", g_range, jv_none())));
    frame_set(c, root, "dict", 4, fnval(mkfunc(c, "dict", g_dict, jv_none())));
}
