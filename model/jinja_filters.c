/* jinja_filters.c - Jinja2 builtin filters and tests used by chat templates, with transformers' tojson
 * override (json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)).
 *
 * Names Jinja knows but we do not implement pass compilation and fail at render with LF_EUNSUPPORTED;
 * names Jinja does not know fail compilation ("No filter named 'x'."), as jinja2 does. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "model/jinja.h"

static const char *const ALL_FILTERS[] = {
    "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape",
    "filesizeformat", "first", "float", "forceescape", "format", "groupby", "indent", "int", "items", "join",
    "last", "length", "list", "lower", "map", "max", "min", "pprint", "random", "reject", "rejectattr",
    "replace", "reverse", "round", "safe", "select", "selectattr", "slice", "sort", "string", "striptags", "sum",
    "title", "tojson", "trim", "truncate", "unique", "upper", "urlencode", "urlize", "wordcount", "wordwrap",
    "xmlattr", NULL};

static const char *const ALL_TESTS[] = {
    "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false", "filter",
    "float", "ge", "gt", "greaterthan", "in", "integer", "iterable", "le", "lower", "lessthan", "lt", "mapping",
    "ne", "none", "number", "odd", "sameas", "sequence", "string", "test", "true", "undefined", "upper", "==",
    "!=", "<", "<=", ">", ">=", NULL};

static int name_in(const char *name, size_t n, const char *const *list) {
    for (int k = 0; list[k]; k++)
        if (strlen(list[k]) == n && !memcmp(list[k], name, n)) return 1;
    return 0;
}

int jinja_filter_known(const char *name, size_t n) { return name_in(name, n, ALL_FILTERS); }
int jinja_test_known(const char *name, size_t n) { return name_in(name, n, ALL_TESTS); }

/* ======================================================================================= case */

static void put_cp(jsb *b, int cp) {
    utf8proc_uint8_t buf[4];
    utf8proc_ssize_t n = utf8proc_encode_char((utf8proc_int32_t)cp, buf);
    jsb_put(b, (const char *)buf, (size_t)n);
}

static int is_cased(int cp) {
    utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)cp);
    return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
}

static int jinja_word_sep(int cp) { return cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || ju_is_space(cp); }

jv jinja_case(jctx *c, jv s, int mode) {
    jsb b;
    jsb_init(&b, c);
    size_t i = 0, adv;
    int prev_cased = 0, first = 1, prev_sep = 1;
    while (i < s.u.s.n) {
        int cp = ju_decode(s.u.s.p + i, s.u.s.n - i, &adv);
        int out;
        switch (mode) {
        case 0: out = utf8proc_tolower(cp); break;
        case 1: out = utf8proc_toupper(cp); break;
        case 2: out = prev_cased ? utf8proc_tolower(cp) : utf8proc_totitle(cp); break;
        case 3: out = first ? utf8proc_totitle(cp) : utf8proc_tolower(cp); break;
        default: out = prev_sep ? utf8proc_toupper(cp) : utf8proc_tolower(cp); break;
        }
        prev_cased = is_cased(cp);
        prev_sep = jinja_word_sep(cp);
        first = 0;
        if (cp > 0x10FFFF || (adv == 1 && (unsigned char)s.u.s.p[i] >= 0x80)) jsb_put(&b, s.u.s.p + i, adv);
        else put_cp(&b, out);
        i += adv;
    }
    return jsb_done(&b);
}

/* ======================================================================================= helpers */

static jv kw(const char **kwn, jv *kwv, int nkw, const char *name, jv *args, int nargs, int pos, jv def) {
    for (int i = 0; i < nkw; i++)
        if (!strcmp(kwn[i], name)) return kwv[i];
    if (pos >= 0 && pos < nargs) return args[pos];
    return def;
}

static int64_t len_of(jctx *c, jv v, const jnode *at) {
    switch (v.t) {
    case JV_STR: jwork(c, v.u.s.n / 4); return (int64_t)ju_len(v.u.s.p, v.u.s.n);
    case JV_LIST: return (int64_t)v.u.l->n;
    case JV_DICT: return (int64_t)v.u.d->n;
    case JV_UNDEF: return 0;
    default: jfail_at(c, at, "object of type '%s' has no len()", jv_type_name(v));
    }
}

/* Dotted attribute lookup as Jinja's make_attrgetter: "a.b" or "0". */
static jv attr_path(jctx *c, jv v, jv attr, const jnode *at) {
    if (attr.t == JV_INT) return jinja_getitem(c, v, attr, at);
    if (attr.t != JV_STR) jfail_at(c, at, "attribute must be a string");
    const char *p = attr.u.s.p, *end = p + attr.u.s.n;
    for (;;) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        if (!dot) dot = end;
        char *endp;
        char *part = ja_strndup(c, p, (size_t)(dot - p));
        long long idx = strtoll(part, &endp, 10);
        if (*part && *endp == '\0') v = jinja_getitem(c, v, jv_int(idx), at);
        else v = jinja_getitem(c, v, jv_str(part, (size_t)(dot - p)), at);
        if (v.t == JV_UNDEF || dot == end) return v;
        p = dot + 1;
    }
}

/* (int64_t)d is undefined outside the int64 range: such floats (Python would make a big int) give def */
static jv float_to_int(double d, jv def) {
    if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0)) return def; /* also NaN */
    return jv_int((int64_t)d);
}

static jv to_int(jv v, jv def) {
    switch (v.t) {
    case JV_INT: return v;
    case JV_BOOL: return jv_int(v.u.b);
    case JV_FLOAT: return float_to_int(v.u.f, def);
    case JV_STR: {
        char buf[64];
        if (v.u.s.n >= sizeof buf) return def;
        memcpy(buf, v.u.s.p, v.u.s.n);
        buf[v.u.s.n] = '\0';
        char *e;
        long long x = strtoll(buf, &e, 10);
        while (*e == ' ' || *e == '\t' || *e == '\n') e++;
        if (e != buf && *e == '\0') return jv_int(x);
        double d = strtod(buf, &e);
        while (*e == ' ' || *e == '\t' || *e == '\n') e++;
        if (e != buf && *e == '\0') return float_to_int(d, def);
        return def;
    }
    default: return def;
    }
}

static jv to_float(jv v, jv def) {
    switch (v.t) {
    case JV_INT: return jv_float((double)v.u.i);
    case JV_BOOL: return jv_float(v.u.b);
    case JV_FLOAT: return v;
    case JV_STR: {
        char buf[64];
        if (v.u.s.n >= sizeof buf) return def;
        memcpy(buf, v.u.s.p, v.u.s.n);
        buf[v.u.s.n] = '\0';
        char *e;
        double d = strtod(buf, &e);
        while (*e == ' ' || *e == '\t' || *e == '\n') e++;
        if (e != buf && *e == '\0') return jv_float(d);
        return def;
    }
    default: return def;
    }
}

static jv html_escape(jctx *c, jv s) {
    jsb b;
    jsb_init(&b, c);
    for (size_t i = 0; i < s.u.s.n; i++) {
        char ch = s.u.s.p[i];
        switch (ch) {
        case '&': jsb_puts(&b, "&amp;"); break;
        case '<': jsb_puts(&b, "&lt;"); break;
        case '>': jsb_puts(&b, "&gt;"); break;
        case '"': jsb_puts(&b, "&#34;"); break;
        case '\'': jsb_puts(&b, "&#39;"); break;
        default: jsb_putc(&b, ch);
        }
    }
    return jsb_done(&b);
}

/* Python str.splitlines() boundaries used by indent. */
static size_t line_break_at(const char *p, size_t n, size_t i) {
    unsigned char ch = (unsigned char)p[i];
    if (ch == '\r') return (i + 1 < n && p[i + 1] == '\n') ? 2 : 1;
    if (ch == '\n' || ch == '\v' || ch == '\f' || (ch >= 0x1c && ch <= 0x1e)) return 1;
    if (ch >= 0x80) {
        size_t adv;
        int cp = ju_decode(p + i, n - i, &adv);
        if (cp == 0x85 || cp == 0x2028 || cp == 0x2029) return adv;
    }
    return 0;
}

static jv do_indent(jctx *c, jv s, jv width, int first, int blank) {
    jv ind;
    if (width.t == JV_STR) ind = width;
    else {
        int64_t w = width.t == JV_INT ? width.u.i : 4;
        if (w < 0) w = 0;
        if (w > 4096) w = 4096;
        char *sp = ja_alloc(c, (size_t)w + 1);
        memset(sp, ' ', (size_t)w);
        ind = jv_str(sp, (size_t)w);
    }
    /* lines = (s + "\n").splitlines() */
    jsb src;
    jsb_init(&src, c);
    jsb_put(&src, s.u.s.p, s.u.s.n);
    jsb_putc(&src, '\n');
    jv lines = jv_list_new(c, 0);
    size_t i = 0, st = 0;
    while (i < src.n) {
        size_t lb = line_break_at(src.p, src.n, i);
        if (lb) {
            jv_list_push(c, lines, jv_str(src.p + st, i - st));
            i += lb;
            st = i;
        } else i++;
    }
    if (st < src.n) jv_list_push(c, lines, jv_str(src.p + st, src.n - st));
    jsb b;
    jsb_init(&b, c);
    if (first) jsb_put(&b, ind.u.s.p, ind.u.s.n);
    jlist *l = lines.u.l;
    for (size_t k = 0; k < l->n; k++) {
        if (k) {
            jsb_putc(&b, '\n');
            if (blank || l->v[k].u.s.n) jsb_put(&b, ind.u.s.p, ind.u.s.n);
        }
        jsb_put(&b, l->v[k].u.s.p, l->v[k].u.s.n);
    }
    return jsb_done(&b);
}

/* sort key for sort/unique/min/max: attribute + case folding */
static jv sort_key(jctx *c, jv v, jv attribute, int case_sensitive, const jnode *at) {
    if (attribute.t != JV_NONE && attribute.t != JV_UNDEF) v = attr_path(c, v, attribute, at);
    if (!case_sensitive && v.t == JV_STR) v = jinja_case(c, v, 0);
    return v;
}

typedef struct {
    jctx *c;
    const jnode *at;
    int reverse;
} sort_env;

/* merge sort (stable, like Python's sorted) over (key, value) pairs */
static void msort(jv *keys, jv *vals, jv *tk, jv *tv, size_t n, sort_env *se) {
    if (n < 2) return;
    size_t h = n / 2;
    msort(keys, vals, tk, tv, h, se);
    msort(keys + h, vals + h, tk, tv, n - h, se);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        int r = jv_compare(se->c, keys[j], keys[i], se->at);
        int take_right = se->reverse ? r > 0 : r < 0;
        if (take_right) {
            tk[k] = keys[j];
            tv[k++] = vals[j++];
        } else {
            tk[k] = keys[i];
            tv[k++] = vals[i++];
        }
    }
    while (i < h) {
        tk[k] = keys[i];
        tv[k++] = vals[i++];
    }
    while (j < n) {
        tk[k] = keys[j];
        tv[k++] = vals[j++];
    }
    memcpy(keys, tk, n * sizeof(jv));
    memcpy(vals, tv, n * sizeof(jv));
}

static jv sorted(jctx *c, jlist *l, jv attribute, int case_sensitive, int reverse, const jnode *at) {
    size_t n = l->n;
    jv *keys = ja_alloc(c, (n + 1) * sizeof(jv)), *vals = ja_alloc(c, (n + 1) * sizeof(jv));
    jv *tk = ja_alloc(c, (n + 1) * sizeof(jv)), *tv = ja_alloc(c, (n + 1) * sizeof(jv));
    for (size_t i = 0; i < n; i++) {
        vals[i] = l->v[i];
        keys[i] = sort_key(c, l->v[i], attribute, case_sensitive, at);
    }
    sort_env se = {c, at, reverse};
    msort(keys, vals, tk, tv, n, &se);
    jv out = jv_list_new(c, n);
    for (size_t i = 0; i < n; i++) jv_list_push(c, out, vals[i]);
    return out;
}

/* ======================================================================================= filters */

#define NAME_IS(s) (nlen == sizeof(s) - 1 && !memcmp(name, s, nlen))

static jv select_impl(jctx *c, jv v, jv *args, int nargs, int by_attr, int want, const jnode *at) {
    jlist *l = jinja_iter(c, v, at);
    jv out = jv_list_new(c, 0);
    int ai = 0;
    jv attr = jv_none();
    if (by_attr) {
        if (nargs < 1) jfail_at(c, at, "Missing parameter for attribute name");
        attr = args[ai++];
    }
    const char *test = NULL;
    size_t tlen = 0;
    if (ai < nargs) {
        if (args[ai].t != JV_STR) jfail_at(c, at, "test name must be a string");
        test = args[ai].u.s.p;
        tlen = args[ai].u.s.n;
        ai++;
        if (!jinja_test_known(test, tlen)) jfail_at(c, at, "No test named '%.*s'.", (int)tlen, test);
    }
    for (size_t i = 0; i < l->n; i++) {
        jv item = by_attr ? attr_path(c, l->v[i], attr, at) : l->v[i];
        int ok = test ? jinja_apply_test(c, test, tlen, item, args + ai, nargs - ai, at) : jv_truthy(item);
        if (ok == want) jv_list_push(c, out, l->v[i]);
    }
    return out;
}

jv jinja_apply_filter(jctx *c, const char *name, size_t nlen, jv v, jv *args, int nargs, const char **kwn, jv *kwv,
                      int nkw, jframe *f, const jnode *at) {
    (void)f;
    if (NAME_IS("default") || NAME_IS("d")) {
        jv def = kw(kwn, kwv, nkw, "default_value", args, nargs, 0, jv_str("", 0));
        int boolean = jv_truthy(kw(kwn, kwv, nkw, "boolean", args, nargs, 1, jv_bool(0)));
        if (v.t == JV_UNDEF || (boolean && !jv_truthy(v))) return def;
        return v;
    }
    if (NAME_IS("length") || NAME_IS("count")) return jv_int(len_of(c, v, at));
    if (NAME_IS("string")) return jv_to_str(c, v);
    if (NAME_IS("safe")) return v.t == JV_STR ? v : jv_to_str(c, v);
    if (NAME_IS("e") || NAME_IS("escape") || NAME_IS("forceescape")) return html_escape(c, jv_to_str(c, v));
    if (NAME_IS("trim")) {
        jv chars = kw(kwn, kwv, nkw, "chars", args, nargs, 0, jv_none());
        jv s = jv_to_str(c, v);
        jwork(c, s.u.s.n / 4);
        return jinja_strip(c, s, chars, 1, 1);
    }
    if (NAME_IS("upper")) return jinja_case(c, jv_to_str(c, v), 1);
    if (NAME_IS("lower")) return jinja_case(c, jv_to_str(c, v), 0);
    if (NAME_IS("title")) return jinja_case(c, jv_to_str(c, v), 4);
    if (NAME_IS("capitalize")) return jinja_case(c, jv_to_str(c, v), 3);
    if (NAME_IS("replace")) {
        if (nargs < 2) jfail_at(c, at, "replace filter needs old and new");
        jv cnt = kw(kwn, kwv, nkw, "count", args, nargs, 2, jv_none());
        int64_t k = cnt.t == JV_INT ? cnt.u.i : -1;
        return jinja_replace(c, jv_to_str(c, v), jv_to_str(c, args[0]), jv_to_str(c, args[1]), k);
    }
    if (NAME_IS("tojson")) {
        jv ea = kw(kwn, kwv, nkw, "ensure_ascii", args, nargs, 0, jv_bool(0));
        jv ind = kw(kwn, kwv, nkw, "indent", args, nargs, 1, jv_none());
        jv seps = kw(kwn, kwv, nkw, "separators", args, nargs, 2, jv_none());
        jv sk = kw(kwn, kwv, nkw, "sort_keys", args, nargs, 3, jv_bool(0));
        const char *indent = NULL;
        if (ind.t == JV_INT || ind.t == JV_BOOL) {
            int64_t w = ind.t == JV_INT ? ind.u.i : ind.u.b;
            if (w < 0) w = 0;
            if (w > 1024) jfail_at(c, at, "tojson indent too large");
            char *sp = ja_alloc(c, (size_t)w + 1);
            memset(sp, ' ', (size_t)w);
            indent = sp;
        } else if (ind.t == JV_STR) indent = ja_strndup(c, ind.u.s.p, ind.u.s.n);
        else if (ind.t != JV_NONE) jfail_at(c, at, "tojson: indent must be an int or a string");
        const char *isep = indent ? "," : ", ", *ksep = ": ";
        if (seps.t == JV_LIST && seps.u.l->n == 2 && seps.u.l->v[0].t == JV_STR && seps.u.l->v[1].t == JV_STR) {
            isep = ja_strndup(c, seps.u.l->v[0].u.s.p, seps.u.l->v[0].u.s.n);
            ksep = ja_strndup(c, seps.u.l->v[1].u.s.p, seps.u.l->v[1].u.s.n);
        } else if (seps.t != JV_NONE) jfail_at(c, at, "tojson: separators must be a pair of strings");
        jsb b;
        jsb_init(&b, c);
        jv_tojson(c, &b, v, jv_truthy(ea), indent, isep, ksep, jv_truthy(sk), 0, at);
        return jsb_done(&b);
    }
    if (NAME_IS("join")) {
        jv d = kw(kwn, kwv, nkw, "d", args, nargs, 0, jv_str("", 0));
        jv attribute = kw(kwn, kwv, nkw, "attribute", args, nargs, 1, jv_none());
        jlist *l = jinja_iter(c, v, at);
        jv sep = jv_to_str(c, d);
        jsb b;
        jsb_init(&b, c);
        for (size_t i = 0; i < l->n; i++) {
            if (i) jsb_put(&b, sep.u.s.p, sep.u.s.n);
            jv it = attribute.t != JV_NONE ? attr_path(c, l->v[i], attribute, at) : l->v[i];
            jv s = jv_to_str(c, it);
            jsb_put(&b, s.u.s.p, s.u.s.n);
        }
        return jsb_done(&b);
    }
    if (NAME_IS("first") || NAME_IS("last")) {
        if (v.t == JV_UNDEF) return jv_undef("No first item, sequence was empty.");
        jlist *l = jinja_iter(c, v, at);
        if (l->n == 0) return jv_undef(NAME_IS("first") ? "No first item, sequence was empty." : "No last item, sequence was empty.");
        return NAME_IS("first") ? l->v[0] : l->v[l->n - 1];
    }
    if (NAME_IS("list")) {
        jlist *l = jinja_iter(c, v, at);
        jv out = jv_list_new(c, l->n);
        for (size_t i = 0; i < l->n; i++) jv_list_push(c, out, l->v[i]);
        return out;
    }
    if (NAME_IS("items")) {
        if (v.t == JV_UNDEF) return jv_list_new(c, 0);
        if (v.t != JV_DICT) jfail_at(c, at, "Can only get item pairs from a mapping.");
        return jinja_call_value(c, jinja_getattr(c, v, "items", 5, at), NULL, 0, NULL, NULL, 0, at);
    }
    if (NAME_IS("int")) {
        jv def = kw(kwn, kwv, nkw, "default", args, nargs, 0, jv_int(0));
        return to_int(v, def);
    }
    if (NAME_IS("float")) {
        jv def = kw(kwn, kwv, nkw, "default", args, nargs, 0, jv_float(0.0));
        return to_float(v, def);
    }
    if (NAME_IS("abs")) {
        if (v.t == JV_INT) return v.u.i == INT64_MIN ? jv_float(-(double)v.u.i) : jv_int(v.u.i < 0 ? -v.u.i : v.u.i);
        if (v.t == JV_BOOL) return jv_int(v.u.b);
        if (v.t == JV_FLOAT) return jv_float(fabs(v.u.f));
        jfail_at(c, at, "bad operand type for abs(): '%s'", jv_type_name(v));
    }
    if (NAME_IS("round")) {
        jv prec = kw(kwn, kwv, nkw, "precision", args, nargs, 0, jv_int(0));
        jv method = kw(kwn, kwv, nkw, "method", args, nargs, 1, jv_cstr("common"));
        int64_t p = prec.t == JV_INT ? prec.u.i : 0;
        double x = v.t == JV_FLOAT ? v.u.f : v.t == JV_INT ? (double)v.u.i : v.t == JV_BOOL ? v.u.b : NAN;
        if (isnan(x) && v.t != JV_FLOAT) jfail_at(c, at, "round: expected a number, got %s", jv_type_name(v));
        double m = pow(10.0, (double)p);
        if (jv_is_str(method, "common")) {
            if (v.t != JV_FLOAT) return v.t == JV_BOOL ? jv_int(v.u.b) : v;
            return jv_float(rint(x * m) / m);
        }
        if (jv_is_str(method, "ceil")) return jv_float(ceil(x * m) / m);
        if (jv_is_str(method, "floor")) return jv_float(floor(x * m) / m);
        jfail_at(c, at, "method must be common, ceil or floor");
    }
    if (NAME_IS("indent")) {
        jv width = kw(kwn, kwv, nkw, "width", args, nargs, 0, jv_int(4));
        int first = jv_truthy(kw(kwn, kwv, nkw, "first", args, nargs, 1, jv_bool(0)));
        int blank = jv_truthy(kw(kwn, kwv, nkw, "blank", args, nargs, 2, jv_bool(0)));
        return do_indent(c, jv_to_str(c, v), width, first, blank);
    }
    if (NAME_IS("select")) return select_impl(c, v, args, nargs, 0, 1, at);
    if (NAME_IS("reject")) return select_impl(c, v, args, nargs, 0, 0, at);
    if (NAME_IS("selectattr")) return select_impl(c, v, args, nargs, 1, 1, at);
    if (NAME_IS("rejectattr")) return select_impl(c, v, args, nargs, 1, 0, at);
    if (NAME_IS("map")) {
        jlist *l = jinja_iter(c, v, at);
        jv out = jv_list_new(c, l->n);
        jv attribute = kw(kwn, kwv, nkw, "attribute", NULL, 0, -1, jv_undef(NULL));
        if (attribute.t != JV_UNDEF) {
            jv def = kw(kwn, kwv, nkw, "default", NULL, 0, -1, jv_undef(NULL));
            for (size_t i = 0; i < l->n; i++) {
                jv it = attr_path(c, l->v[i], attribute, at);
                jv_list_push(c, out, it.t == JV_UNDEF && def.t != JV_UNDEF ? def : it);
            }
            return out;
        }
        if (nargs < 1 || args[0].t != JV_STR) jfail_at(c, at, "map: expected a filter name or attribute=");
        if (!jinja_filter_known(args[0].u.s.p, args[0].u.s.n))
            jfail_at(c, at, "No filter named '%.*s'.", (int)args[0].u.s.n, args[0].u.s.p);
        /* map('map', ...) recurses through this function, whose frame is large (several KiB unoptimised with
         * ASan): a level costs 8 */
        c->depth += 8;
        if (c->depth > JINJA_MAX_EVAL_DEPTH) jfail_at(c, at, "map: filters nested too deeply");
        for (size_t i = 0; i < l->n; i++)
            jv_list_push(c, out, jinja_apply_filter(c, args[0].u.s.p, args[0].u.s.n, l->v[i], args + 1, nargs - 1, kwn,
                                                    kwv, nkw, f, at));
        c->depth -= 8;
        return out;
    }
    if (NAME_IS("attr")) {
        if (nargs < 1 || args[0].t != JV_STR) jfail_at(c, at, "attr: expected an attribute name");
        return jinja_getattr(c, v, args[0].u.s.p, args[0].u.s.n, at);
    }
    if (NAME_IS("reverse")) {
        if (v.t == JV_STR) {
            jsb b;
            jsb_init(&b, c);
            size_t e = v.u.s.n;
            while (e > 0) {
                size_t st = e - 1;
                while (st > 0 && ((unsigned char)v.u.s.p[st] & 0xC0) == 0x80) st--;
                jsb_put(&b, v.u.s.p + st, e - st);
                e = st;
            }
            return jsb_done(&b);
        }
        jlist *l = jinja_iter(c, v, at);
        jv out = jv_list_new(c, l->n);
        for (size_t i = l->n; i-- > 0;) jv_list_push(c, out, l->v[i]);
        return out;
    }
    if (NAME_IS("sort")) {
        int reverse = jv_truthy(kw(kwn, kwv, nkw, "reverse", args, nargs, 0, jv_bool(0)));
        int cs = jv_truthy(kw(kwn, kwv, nkw, "case_sensitive", args, nargs, 1, jv_bool(0)));
        jv attribute = kw(kwn, kwv, nkw, "attribute", args, nargs, 2, jv_none());
        return sorted(c, jinja_iter(c, v, at), attribute, cs, reverse, at);
    }
    if (NAME_IS("dictsort")) {
        if (v.t != JV_DICT) jfail_at(c, at, "You can only sort by either \"key\" or \"value\"");
        int cs = jv_truthy(kw(kwn, kwv, nkw, "case_sensitive", args, nargs, 0, jv_bool(0)));
        jv by = kw(kwn, kwv, nkw, "by", args, nargs, 1, jv_cstr("key"));
        int reverse = jv_truthy(kw(kwn, kwv, nkw, "reverse", args, nargs, 2, jv_bool(0)));
        jv items = jinja_call_value(c, jinja_getattr(c, v, "items", 5, at), NULL, 0, NULL, NULL, 0, at);
        return sorted(c, items.u.l, jv_int(jv_is_str(by, "value") ? 1 : 0), cs, reverse, at);
    }
    if (NAME_IS("unique")) {
        int cs = jv_truthy(kw(kwn, kwv, nkw, "case_sensitive", args, nargs, 0, jv_bool(0)));
        jv attribute = kw(kwn, kwv, nkw, "attribute", args, nargs, 1, jv_none());
        jlist *l = jinja_iter(c, v, at);
        jv out = jv_list_new(c, 0), seen = jv_list_new(c, 0);
        for (size_t i = 0; i < l->n; i++) {
            jv k = sort_key(c, l->v[i], attribute, cs, at);
            int dup = 0;
            for (size_t j = 0; j < seen.u.l->n && !dup; j++) dup = jv_equal(c, seen.u.l->v[j], k);
            if (!dup) {
                jv_list_push(c, seen, k);
                jv_list_push(c, out, l->v[i]);
            }
        }
        return out;
    }
    if (NAME_IS("min") || NAME_IS("max")) {
        int cs = jv_truthy(kw(kwn, kwv, nkw, "case_sensitive", args, nargs, 0, jv_bool(0)));
        jv attribute = kw(kwn, kwv, nkw, "attribute", args, nargs, 1, jv_none());
        jlist *l = jinja_iter(c, v, at);
        if (l->n == 0) return jv_undef(NAME_IS("min") ? "No aggregated item, sequence was empty." : "No aggregated item, sequence was empty.");
        size_t best = 0;
        jv bk = sort_key(c, l->v[0], attribute, cs, at);
        for (size_t i = 1; i < l->n; i++) {
            jv k = sort_key(c, l->v[i], attribute, cs, at);
            int r = jv_compare(c, k, bk, at);
            if (NAME_IS("min") ? r < 0 : r > 0) {
                best = i;
                bk = k;
            }
        }
        return l->v[best];
    }
    if (NAME_IS("sum")) {
        jv attribute = kw(kwn, kwv, nkw, "attribute", args, nargs, 0, jv_none());
        jv acc = kw(kwn, kwv, nkw, "start", args, nargs, 1, jv_int(0));
        jlist *l = jinja_iter(c, v, at);
        for (size_t i = 0; i < l->n; i++) {
            jv it = attribute.t != JV_NONE ? attr_path(c, l->v[i], attribute, at) : l->v[i];
            int64_t r;
            if ((acc.t == JV_INT || acc.t == JV_BOOL) && (it.t == JV_INT || it.t == JV_BOOL) &&
                !__builtin_add_overflow(acc.t == JV_INT ? acc.u.i : acc.u.b, it.t == JV_INT ? it.u.i : it.u.b, &r))
                acc = jv_int(r);
            else if ((acc.t == JV_INT || acc.t == JV_FLOAT || acc.t == JV_BOOL) &&
                     (it.t == JV_INT || it.t == JV_FLOAT || it.t == JV_BOOL)) {
                double a = acc.t == JV_FLOAT ? acc.u.f : acc.t == JV_INT ? (double)acc.u.i : acc.u.b;
                double b = it.t == JV_FLOAT ? it.u.f : it.t == JV_INT ? (double)it.u.i : it.u.b;
                acc = jv_float(a + b);
            } else jfail_at(c, at, "unsupported operand type(s) for +: '%s' and '%s'", jv_type_name(acc), jv_type_name(it));
        }
        return acc;
    }
    if (NAME_IS("wordcount")) {
        jv s = jv_to_str(c, v);
        jwork(c, s.u.s.n / 4);
        int64_t k = 0;
        int in_word = 0;
        for (size_t i = 0; i < s.u.s.n; i++) {
            unsigned char ch = (unsigned char)s.u.s.p[i];
            int w = ch >= 0x80 || ch == '_' || (ch >= '0' && ch <= '9') || ((ch | 32) >= 'a' && (ch | 32) <= 'z');
            if (w && !in_word) k++;
            in_word = w;
        }
        return jv_int(k);
    }
    jfail(c, LF_EUNSUPPORTED, "filter '%.*s' is not supported by loraforge's chat-template engine (template line %d)",
          (int)nlen, name, at ? at->line : 0);
}

/* ======================================================================================= tests */

int jinja_apply_test(jctx *c, const char *name, size_t nlen, jv v, jv *args, int nargs, const jnode *at) {
    jv a0 = nargs > 0 ? args[0] : jv_undef(NULL);
    if (NAME_IS("defined")) return v.t != JV_UNDEF;
    if (NAME_IS("undefined")) return v.t == JV_UNDEF;
    if (NAME_IS("none")) return v.t == JV_NONE;
    if (NAME_IS("boolean")) return v.t == JV_BOOL;
    if (NAME_IS("true")) return v.t == JV_BOOL && v.u.b;
    if (NAME_IS("false")) return v.t == JV_BOOL && !v.u.b;
    if (NAME_IS("integer")) return v.t == JV_INT;
    if (NAME_IS("float")) return v.t == JV_FLOAT;
    if (NAME_IS("number")) return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL;
    if (NAME_IS("string")) return v.t == JV_STR;
    if (NAME_IS("mapping")) return v.t == JV_DICT && !v.u.d->is_ns;
    if (NAME_IS("iterable")) return v.t == JV_STR || v.t == JV_LIST || v.t == JV_DICT || v.t == JV_UNDEF;
    if (NAME_IS("sequence")) return v.t == JV_STR || v.t == JV_LIST || (v.t == JV_DICT && !v.u.d->is_ns) || v.t == JV_UNDEF;
    if (NAME_IS("callable")) return v.t == JV_FUNC;
    if (NAME_IS("escaped")) return 0;
    if (NAME_IS("sameas")) {
        if (v.t != a0.t) return 0;
        if (v.t == JV_LIST) return v.u.l == a0.u.l;
        if (v.t == JV_DICT) return v.u.d == a0.u.d;
        return jv_equal(c, v, a0);
    }
    if (NAME_IS("eq") || NAME_IS("equalto") || NAME_IS("==")) return jv_equal(c, v, a0);
    if (NAME_IS("ne") || NAME_IS("!=")) return !jv_equal(c, v, a0);
    if (NAME_IS("lt") || NAME_IS("lessthan") || NAME_IS("<")) return jv_compare(c, v, a0, at) < 0;
    if (NAME_IS("le") || NAME_IS("<=")) return jv_compare(c, v, a0, at) <= 0;
    if (NAME_IS("gt") || NAME_IS("greaterthan") || NAME_IS(">")) return jv_compare(c, v, a0, at) > 0;
    if (NAME_IS("ge") || NAME_IS(">=")) return jv_compare(c, v, a0, at) >= 0;
    if (NAME_IS("in")) {
        if (a0.t == JV_STR) {
            if (v.t != JV_STR) jfail_at(c, at, "'in <string>' requires string as left operand");
            return jinja_find(c, a0.u.s.p, a0.u.s.n, v.u.s.p, v.u.s.n, 0) != NULL;
        }
        if (a0.t == JV_LIST) {
            for (size_t i = 0; i < a0.u.l->n; i++)
                if (jv_equal(c, a0.u.l->v[i], v)) return 1;
            return 0;
        }
        if (a0.t == JV_DICT) return jdict_get(c, a0.u.d, v, NULL);
        jfail_at(c, at, "argument of type '%s' is not iterable", jv_type_name(a0));
    }
    if (NAME_IS("odd") || NAME_IS("even") || NAME_IS("divisibleby")) {
        if (v.t != JV_INT && v.t != JV_BOOL) jfail_at(c, at, "%.*s test needs an integer", (int)nlen, name);
        int64_t x = v.t == JV_INT ? v.u.i : v.u.b;
        if (NAME_IS("odd")) return x % 2 != 0;
        if (NAME_IS("even")) return x % 2 == 0;
        if (a0.t != JV_INT || a0.u.i == 0) jfail_at(c, at, "divisibleby needs a non-zero integer");
        return a0.u.i == -1 || x % a0.u.i == 0; /* INT64_MIN % -1 traps */
    }
    if (NAME_IS("lower") || NAME_IS("upper")) {
        if (v.t != JV_STR) return 0;
        jv other = jinja_case(c, v, NAME_IS("lower") ? 0 : 1);
        int any = 0;
        for (size_t i = 0; i < v.u.s.n; i++) {
            unsigned char ch = (unsigned char)v.u.s.p[i];
            if (((ch | 32) >= 'a' && (ch | 32) <= 'z') || ch >= 0x80) any = 1;
        }
        return any && jv_equal(c, v, other);
    }
    if (NAME_IS("filter")) return a0.t == JV_STR && jinja_filter_known(a0.u.s.p, a0.u.s.n);
    if (NAME_IS("test")) return a0.t == JV_STR && jinja_test_known(a0.u.s.p, a0.u.s.n);
    jfail_at(c, at, "No test named '%.*s'.", (int)nlen, name);
}
