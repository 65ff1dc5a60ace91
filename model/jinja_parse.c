/* jinja_parse.c - lexer and recursive-descent parser for the Jinja2 subset chat templates use.
 *
 * The lexer follows jinja2/lexer.py (3.1) with transformers' environment: trim_blocks=True (one newline after
 * a block or comment tag is dropped), lstrip_blocks=True (spaces/tabs from the line start up to a block or
 * comment tag are dropped), "{%-"/"-%}" strip all whitespace, "+" disables both, one trailing newline of the
 * source is dropped (keep_trailing_newline=False) and \r\n / \r become \n. The parser follows
 * jinja2/parser.py's precedence: condexpr < or < and < not < compare < +,- < ~ < *,/,//,% < ** < unary,
 * with filters ("|f") and tests ("is t") binding to the unary operand.
 *
 * AST field use per kind: IF a=cond b=body c=else; FOR a=target b=iter c=body d=else e=filter-cond;
 * SET a=target b=value; SET_BLOCK a=target c=body items=filters; MACRO name, names/kwitems=params/defaults,
 * c=body; CALL_BLOCK a=call names/kwitems=caller params c=body; FILTER_BLOCK items=filters c=body;
 * GETATTR a.name; GETITEM a[b]; SLICE a[b:c:d]; CALL a(items, names=kwitems); FILTER/TEST a|name(items);
 * BINOP a name b; COMPARE a (names[i] items[i])*; COND b if a else c; DICT items:kwitems. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "model/jinja.h"

/* ======================================================================================= lexer */

typedef struct lexer {
    jctx *c;
    const char *s;
    size_t n, pos;
    /* location cache: line of loc_pos; column (code points) of loc_col_pos on that line */
    size_t loc_pos;
    int loc_line;
    size_t loc_line_start;
    size_t loc_col_pos, loc_col;
    /* tokens */
    jtok *toks;
    size_t ntoks, cap;
} lexer;

/* Tokens come in source order, so both caches only move forward (O(n) per template, not O(n * line)). */
static void lx_loc(lexer *L, size_t pos, int *line, int *col) {
    if (pos > L->n) pos = L->n;
    if (pos < L->loc_pos) {
        L->loc_pos = 0;
        L->loc_line = 1;
        L->loc_line_start = 0;
    }
    for (; L->loc_pos < pos; L->loc_pos++)
        if (L->s[L->loc_pos] == '\n') {
            L->loc_line++;
            L->loc_line_start = L->loc_pos + 1;
        }
    if (L->loc_col_pos < L->loc_line_start || L->loc_col_pos > pos) {
        L->loc_col_pos = L->loc_line_start;
        L->loc_col = 0;
    }
    L->loc_col += ju_len(L->s + L->loc_col_pos, pos - L->loc_col_pos);
    L->loc_col_pos = pos;
    *line = L->loc_line;
    *col = L->loc_col < (size_t)INT32_MAX ? (int)L->loc_col + 1 : INT32_MAX;
}

_Noreturn static void lx_fail(lexer *L, size_t pos, const char *msg) {
    int line, col;
    lx_loc(L, pos, &line, &col);
    jfail(L->c, LF_EFORMAT, "syntax error at line %d, column %d: %s", line, col, msg);
}

static jtok *lx_push(lexer *L, jtok_type t, const char *p, size_t n, size_t pos) {
    if (L->ntoks == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 256;
        jtok *nt = ja_alloc(L->c, cap * sizeof(jtok));
        if (L->ntoks) memcpy(nt, L->toks, L->ntoks * sizeof(jtok));
        L->toks = nt;
        L->cap = cap;
    }
    jtok *t_ = &L->toks[L->ntoks++];
    memset(t_, 0, sizeof *t_);
    t_->t = t;
    t_->p = p;
    t_->n = n;
    lx_loc(L, pos, &t_->line, &t_->col);
    return t_;
}

/* Python's \s at s[i]: returns byte length of the whitespace code point, 0 if none. */
static size_t ws_at(const char *s, size_t n, size_t i) {
    if (i >= n) return 0;
    size_t adv;
    int cp = ju_decode(s + i, n - i, &adv);
    return ju_is_space(cp) ? adv : 0;
}

static size_t skip_ws(const char *s, size_t n, size_t i) {
    size_t k;
    while ((k = ws_at(s, n, i)) > 0) i += k;
    return i;
}

/* Length of text after rstrip() of Unicode whitespace. */
static size_t rstrip_len(const char *s, size_t n) {
    size_t end = n;
    while (end > 0) {
        size_t st = end - 1;
        while (st > 0 && ((unsigned char)s[st] & 0xC0) == 0x80) st--;
        size_t adv;
        int cp = ju_decode(s + st, end - st, &adv);
        if (!ju_is_space(cp) || st + adv != end) break;
        end = st;
    }
    return end;
}

/* Emit data text s[a, b) ahead of a tag with strip sign `sign` ('-', '+' or 0); lstrip applies to block and
 * comment tags only. */
static void lx_data(lexer *L, size_t a, size_t b, char sign, int lstrip_ok, int line_starting) {
    const char *t = L->s + a;
    size_t n = b - a;
    if (sign == '-') n = rstrip_len(t, n);
    else if (sign != '+' && lstrip_ok) {
        size_t l_pos = 0;
        for (size_t k = n; k > 0; k--)
            if (t[k - 1] == '\n') {
                l_pos = k;
                break;
            }
        if ((l_pos > 0 || line_starting) && l_pos < n && skip_ws(t, n, l_pos) == n) n = l_pos;
    }
    if (n) lx_push(L, T_DATA, t, n, a);
}

static int is_name_start(unsigned char ch) { return isalpha(ch) || ch == '_' || ch >= 0x80; }
static int is_name_char(unsigned char ch) { return isalnum(ch) || ch == '_' || ch >= 0x80; }

/* Python "unicode-escape" decoding of a string literal body (jinja2 lexer); non-ASCII passes through. */
static void lx_string(lexer *L, size_t start, size_t end) {
    jsb b;
    jsb_init(&b, L->c);
    const char *s = L->s;
    for (size_t i = start; i < end; i++) {
        char ch = s[i];
        if (ch != '\\' || i + 1 >= end) {
            jsb_putc(&b, ch);
            continue;
        }
        char e = s[++i];
        unsigned cp = 0;
        int nhex = 0;
        switch (e) {
        case '\n': break;
        case '\\': jsb_putc(&b, '\\'); break;
        case '\'': jsb_putc(&b, '\''); break;
        case '"': jsb_putc(&b, '"'); break;
        case 'a': jsb_putc(&b, '\a'); break;
        case 'b': jsb_putc(&b, '\b'); break;
        case 'f': jsb_putc(&b, '\f'); break;
        case 'n': jsb_putc(&b, '\n'); break;
        case 'r': jsb_putc(&b, '\r'); break;
        case 't': jsb_putc(&b, '\t'); break;
        case 'v': jsb_putc(&b, '\v'); break;
        case 'x': nhex = 2; break;
        case 'u': nhex = 4; break;
        case 'U': nhex = 8; break;
        default:
            if (e >= '0' && e <= '7') {
                cp = (unsigned)(e - '0');
                for (int k = 0; k < 2 && i + 1 < end && s[i + 1] >= '0' && s[i + 1] <= '7'; k++)
                    cp = cp * 8 + (unsigned)(s[++i] - '0');
                nhex = -1;
            } else {
                jsb_putc(&b, '\\');
                jsb_putc(&b, e);
            }
        }
        if (nhex > 0) {
            for (int k = 0; k < nhex; k++) {
                if (i + 1 >= end || !isxdigit((unsigned char)s[i + 1])) lx_fail(L, i, "truncated \\x/\\u escape in string");
                char hx = s[++i];
                cp = cp * 16 + (unsigned)(isdigit((unsigned char)hx) ? hx - '0' : (tolower((unsigned char)hx) - 'a' + 10));
            }
        }
        if (nhex != 0) {
            if (cp > 0x10FFFF) lx_fail(L, i, "illegal Unicode character in string escape");
            char u[4];
            size_t un;
            if (cp < 0x80) { u[0] = (char)cp; un = 1; }
            else if (cp < 0x800) { u[0] = (char)(0xC0 | (cp >> 6)); u[1] = (char)(0x80 | (cp & 0x3F)); un = 2; }
            else if (cp < 0x10000) {
                u[0] = (char)(0xE0 | (cp >> 12)); u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
                u[2] = (char)(0x80 | (cp & 0x3F)); un = 3;
            } else {
                u[0] = (char)(0xF0 | (cp >> 18)); u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
                u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); u[3] = (char)(0x80 | (cp & 0x3F)); un = 4;
            }
            jsb_put(&b, u, un);
        }
    }
    jv v = jsb_done(&b);
    lx_push(L, T_STRING, v.u.s.p, v.u.s.n, start - 1);
}

static const char *const OPS2[] = {"**", "//", "==", "!=", ">=", "<=", NULL};
static const char OPS1[] = "+-/*%~[](){}><=.:|,;";

/* Tokens inside {{ }} or {% %}; returns position after the end tag and sets *line_starting. */
static size_t lx_inside(lexer *L, size_t pos, int block, int *line_starting) {
    const char *s = L->s;
    size_t n = L->n;
    char stack[256];
    int depth = 0;
    for (;;) {
        if (pos >= n) lx_fail(L, pos, block ? "unexpected end of template, expected '%}'" : "unexpected end of template, expected '}}'");
        if (depth == 0) {
            size_t end = 0;
            if (block) {
                if (s[pos] == '+' && pos + 2 < n && s[pos + 1] == '%' && s[pos + 2] == '}') end = pos + 3;
                else if (s[pos] == '-' && pos + 2 < n && s[pos + 1] == '%' && s[pos + 2] == '}') end = skip_ws(s, n, pos + 3);
                else if (s[pos] == '%' && pos + 1 < n && s[pos + 1] == '}') end = pos + 2 + (pos + 2 < n && s[pos + 2] == '\n');
            } else {
                if (s[pos] == '-' && pos + 2 < n && s[pos + 1] == '}' && s[pos + 2] == '}') end = skip_ws(s, n, pos + 3);
                else if (s[pos] == '}' && pos + 1 < n && s[pos + 1] == '}') end = pos + 2;
            }
            if (end) {
                lx_push(L, block ? T_BLOCK_END : T_VAR_END, s + pos, end - pos, pos);
                *line_starting = s[end - 1] == '\n';
                return end;
            }
        }
        size_t w = ws_at(s, n, pos);
        if (w) {
            pos += w;
            continue;
        }
        unsigned char ch = (unsigned char)s[pos];
        if (isdigit(ch)) {
            size_t e = pos;
            while (e < n && (isdigit((unsigned char)s[e]) || s[e] == '_')) e++;
            int is_float = 0;
            if (e + 1 < n && s[e] == '.' && isdigit((unsigned char)s[e + 1])) {
                is_float = 1;
                e++;
                while (e < n && (isdigit((unsigned char)s[e]) || s[e] == '_')) e++;
            }
            if (e < n && (s[e] == 'e' || s[e] == 'E')) {
                size_t k = e + 1;
                if (k < n && (s[k] == '+' || s[k] == '-')) k++;
                if (k < n && isdigit((unsigned char)s[k])) {
                    is_float = 1;
                    e = k;
                    while (e < n && isdigit((unsigned char)s[e])) e++;
                }
            }
            char buf[64];
            size_t bl = 0;
            for (size_t k = pos; k < e && bl < sizeof buf - 1; k++)
                if (s[k] != '_') buf[bl++] = s[k];
            buf[bl] = '\0';
            jtok *t = lx_push(L, is_float ? T_FLOAT : T_INT, s + pos, e - pos, pos);
            if (is_float) t->f = strtod(buf, NULL);
            else t->i = strtoll(buf, NULL, 10);
            pos = e;
            continue;
        }
        if (is_name_start(ch)) {
            size_t e = pos;
            while (e < n && is_name_char((unsigned char)s[e])) e++;
            lx_push(L, T_NAME, s + pos, e - pos, pos);
            pos = e;
            continue;
        }
        if (ch == '\'' || ch == '"') {
            size_t e = pos + 1;
            while (e < n && s[e] != (char)ch) e += (s[e] == '\\') ? 2 : 1;
            if (e >= n) lx_fail(L, pos, "unexpected end of string literal");
            lx_string(L, pos + 1, e);
            pos = e + 1;
            continue;
        }
        size_t oplen = 0;
        for (int k = 0; OPS2[k]; k++)
            if (pos + 1 < n && s[pos] == OPS2[k][0] && s[pos + 1] == OPS2[k][1]) oplen = 2;
        if (!oplen && strchr(OPS1, ch) && ch) oplen = 1;
        if (!oplen) {
            char msg[64];
            snprintf(msg, sizeof msg, "unexpected char '%c'", ch);
            lx_fail(L, pos, msg);
        }
        if (oplen == 1 && (ch == '(' || ch == '[' || ch == '{')) {
            if (depth >= (int)sizeof stack) lx_fail(L, pos, "brackets nested too deeply");
            stack[depth++] = ch == '(' ? ')' : ch == '[' ? ']' : '}';
        } else if (oplen == 1 && (ch == ')' || ch == ']' || ch == '}')) {
            char msg[64];
            if (depth == 0) {
                snprintf(msg, sizeof msg, "unexpected '%c'", ch);
                lx_fail(L, pos, msg);
            }
            if (stack[depth - 1] != (char)ch) {
                snprintf(msg, sizeof msg, "unexpected '%c', expected '%c'", ch, stack[depth - 1]);
                lx_fail(L, pos, msg);
            }
            depth--;
        }
        lx_push(L, T_OP, s + pos, oplen, pos);
        pos += oplen;
    }
}

/* {% raw %}: returns 1 and the position after the opening tag when s[pos] starts one. */
static int lx_raw_begin(lexer *L, size_t pos, size_t *after) {
    const char *s = L->s;
    size_t n = L->n, i = pos + 2;
    if (i < n && (s[i] == '-' || s[i] == '+')) i++;
    i = skip_ws(s, n, i);
    if (i + 3 > n || memcmp(s + i, "raw", 3) != 0) return 0;
    i = skip_ws(s, n, i + 3);
    if (i + 2 < n + 1 && i + 3 <= n && s[i] == '-' && s[i + 1] == '%' && s[i + 2] == '}') {
        *after = skip_ws(s, n, i + 3);
        return 1;
    }
    if (i + 2 <= n && s[i] == '%' && s[i + 1] == '}') {
        *after = i + 2;
        return 1;
    }
    return 0;
}

static void lex(lexer *L) {
    const char *s = L->s;
    size_t n = L->n, pos = 0;
    int line_starting = 1;
    while (pos < n) {
        size_t i = pos;
        while (i + 1 < n && !(s[i] == '{' && (s[i + 1] == '{' || s[i + 1] == '%' || s[i + 1] == '#'))) i++;
        if (i + 1 >= n) {
            lx_push(L, T_DATA, s + pos, n - pos, pos);
            return;
        }
        char kind = s[i + 1];
        char sign = (i + 2 < n && (s[i + 2] == '-' || s[i + 2] == '+')) ? s[i + 2] : 0;
        size_t after_raw;
        if (kind == '%' && lx_raw_begin(L, i, &after_raw)) {
            lx_data(L, pos, i, sign, 1, line_starting);
            /* find {%[-+]? \s* endraw \s* (+%}|-%}\s*|%}\n?) */
            size_t j = after_raw;
            for (;; j++) {
                if (j + 1 >= n) lx_fail(L, i, "Missing end of raw directive");
                if (s[j] != '{' || s[j + 1] != '%') continue;
                size_t k = j + 2;
                char esign = (k < n && (s[k] == '-' || s[k] == '+')) ? s[k] : 0;
                if (esign) k++;
                k = skip_ws(s, n, k);
                if (k + 6 > n || memcmp(s + k, "endraw", 6) != 0) continue;
                k = skip_ws(s, n, k + 6);
                size_t end = 0;
                if (k + 3 <= n && s[k] == '+' && s[k + 1] == '%' && s[k + 2] == '}') end = k + 3;
                else if (k + 3 <= n && s[k] == '-' && s[k + 1] == '%' && s[k + 2] == '}') end = skip_ws(s, n, k + 3);
                else if (k + 2 <= n && s[k] == '%' && s[k + 1] == '}') end = k + 2 + (k + 2 < n && s[k + 2] == '\n');
                if (!end) continue;
                lx_data(L, after_raw, j, esign, 1, 0);
                pos = end;
                line_starting = s[end - 1] == '\n';
                break;
            }
            continue;
        }
        lx_data(L, pos, i, sign, kind != '{', line_starting);
        pos = i + 2 + (sign ? 1 : 0);
        if (kind == '#') {
            size_t j = pos, end = 0;
            for (; j + 1 < n; j++) {
                if (s[j] == '+' && j + 2 < n && s[j + 1] == '#' && s[j + 2] == '}') { end = j + 3; break; }
                if (s[j] == '-' && j + 2 < n && s[j + 1] == '#' && s[j + 2] == '}') { end = skip_ws(s, n, j + 3); break; }
                if (s[j] == '#' && s[j + 1] == '}') { end = j + 2 + (j + 2 < n && s[j + 2] == '\n'); break; }
            }
            if (!end) lx_fail(L, i, "Missing end of comment tag");
            pos = end;
            line_starting = s[end - 1] == '\n';
        } else {
            lx_push(L, kind == '{' ? T_VAR_BEGIN : T_BLOCK_BEGIN, s + i, pos - i, i);
            pos = lx_inside(L, pos, kind == '%', &line_starting);
        }
    }
}

/* ======================================================================================= parser */

typedef struct parser {
    jctx *c;
    lexer *L;
    jtok *t;
    size_t n, i;
    int depth;
} parser;

typedef struct nvec {
    jnode **v;
    size_t n, cap;
    const char **names;
    jnode **kw;
    size_t nkw, kwcap;
} nvec;

static void nv_push(jctx *c, nvec *v, jnode *x) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 8;
        jnode **nv = ja_alloc(c, cap * sizeof(jnode *));
        if (v->n) memcpy(nv, v->v, v->n * sizeof(jnode *));
        v->v = nv;
        v->cap = cap;
    }
    v->v[v->n++] = x;
}

static void nv_push_kw(jctx *c, nvec *v, const char *name, jnode *x) {
    if (v->nkw == v->kwcap) {
        size_t cap = v->kwcap ? v->kwcap * 2 : 8;
        jnode **nk = ja_alloc(c, cap * sizeof(jnode *));
        const char **nn = ja_alloc(c, cap * sizeof(char *));
        if (v->nkw) {
            memcpy(nk, v->kw, v->nkw * sizeof(jnode *));
            memcpy(nn, v->names, v->nkw * sizeof(char *));
        }
        v->kw = nk;
        v->names = nn;
        v->kwcap = cap;
    }
    v->names[v->nkw] = name;
    v->kw[v->nkw++] = x;
}

static const jtok *cur(parser *P) { return &P->t[P->i]; }
static const jtok *peek(parser *P, size_t k) { return &P->t[P->i + k < P->n ? P->i + k : P->n - 1]; }
static void adv(parser *P) {
    if (P->i + 1 < P->n) P->i++;
}

static int tok_is(const jtok *t, jtok_type ty, const char *s) {
    return t->t == ty && (!s || (t->n == strlen(s) && memcmp(t->p, s, t->n) == 0));
}
static int is_op(parser *P, const char *s) { return tok_is(cur(P), T_OP, s); }
static int is_name(parser *P, const char *s) { return tok_is(cur(P), T_NAME, s); }

static const char *tok_desc(const jtok *t, char *buf, size_t cap) {
    switch (t->t) {
    case T_EOF: return "end of template";
    case T_VAR_END: return "end of print statement";
    case T_BLOCK_END: return "end of statement block";
    case T_STRING: return "string";
    case T_DATA: return "template data";
    case T_VAR_BEGIN: return "begin of print statement";
    case T_BLOCK_BEGIN: return "begin of statement block";
    default:
        snprintf(buf, cap, "'%.*s'", (int)(t->n < 40 ? t->n : 40), t->p);
        return buf;
    }
}

_Noreturn static void pfail(parser *P, const char *fmt, const char *arg) {
    const jtok *t = cur(P);
    char msg[512];
    snprintf(msg, sizeof msg, fmt, arg);
    jfail(P->c, LF_EFORMAT, "syntax error at line %d, column %d: %s", t->line, t->col, msg);
}

static void expect_op(parser *P, const char *op) {
    if (!is_op(P, op)) {
        char buf[64], want[80];
        snprintf(want, sizeof want, "expected '%s', got %%s", op);
        pfail(P, want, tok_desc(cur(P), buf, sizeof buf));
    }
    adv(P);
}

static void expect_type(parser *P, jtok_type ty, const char *what) {
    if (cur(P)->t != ty) {
        char buf[64], want[96];
        snprintf(want, sizeof want, "expected %s, got %%s", what);
        pfail(P, want, tok_desc(cur(P), buf, sizeof buf));
    }
    adv(P);
}

static jnode *mk(parser *P, jnode_kind k, const jtok *at) {
    jnode *x = ja_alloc(P->c, sizeof(jnode));
    x->kind = k;
    x->line = at ? at->line : 0;
    x->col = at ? at->col : 0;
    return x;
}

static jnode *parse_expression(parser *P, int with_condexpr);
static jnode *parse_tuple(parser *P, int with_condexpr, const char *extra_end, int explicit_parens);
static jnode *parse_unary(parser *P, int with_filter);
static jnode *parse_postfix(parser *P, jnode *node);
static jnode *parse_primary(parser *P);

static void enter(parser *P) {
    if (++P->depth > JINJA_MAX_DEPTH) pfail(P, "%s", "expression nested too deeply");
}

static char *tok_name(parser *P, const jtok *t) { return ja_strndup(P->c, t->p, t->n); }

/* (args, name=value, ...) after '(' has been seen at cur. */
static void parse_call_args(parser *P, jnode *call) {
    nvec v = {0};
    expect_op(P, "(");
    while (!is_op(P, ")")) {
        if (v.n || v.nkw) {
            expect_op(P, ",");
            if (is_op(P, ")")) break;
        }
        if (is_op(P, "*") || is_op(P, "**")) pfail(P, "%s", "*args / **kwargs in calls are not supported");
        if (cur(P)->t == T_NAME && tok_is(peek(P, 1), T_OP, "=")) {
            const char *name = tok_name(P, cur(P));
            adv(P);
            adv(P);
            nv_push_kw(P->c, &v, name, parse_expression(P, 1));
        } else {
            if (v.nkw) pfail(P, "%s", "positional argument follows keyword argument");
            nv_push(P->c, &v, parse_expression(P, 1));
        }
    }
    adv(P);
    call->items = v.v;
    call->nitems = v.n;
    call->names = v.names;
    call->kwitems = v.kw;
    call->nkw = v.nkw;
}

static jnode *parse_filter_one(parser *P, jnode *operand) {
    const jtok *t = cur(P);
    expect_type(P, T_NAME, "filter name");
    jnode *f = mk(P, N_FILTER, t);
    f->a = operand;
    size_t nl = t->n;
    const char *nm = t->p;
    while (is_op(P, ".") && peek(P, 1)->t == T_NAME) { /* dotted filter names */
        adv(P);
        nl = (size_t)(cur(P)->p + cur(P)->n - nm);
        adv(P);
    }
    f->name = ja_strndup(P->c, nm, nl);
    f->name_len = nl;
    if (!jinja_filter_known(f->name, nl)) {
        char msg[160];
        snprintf(msg, sizeof msg, "No filter named '%.*s'.", (int)(nl < 80 ? nl : 80), nm);
        jfail(P->c, LF_EFORMAT, "syntax error at line %d, column %d: %s", t->line, t->col, msg);
    }
    if (is_op(P, "(")) parse_call_args(P, f);
    return f;
}

static jnode *parse_test(parser *P, jnode *operand) {
    const jtok *at = cur(P);
    adv(P); /* is */
    int neg = 0;
    if (is_name(P, "not")) {
        neg = 1;
        adv(P);
    }
    const jtok *t = cur(P);
    expect_type(P, T_NAME, "test name");
    jnode *x = mk(P, N_TEST, at);
    x->a = operand;
    x->neg = neg;
    size_t nl = t->n;
    const char *nm = t->p;
    while (is_op(P, ".") && peek(P, 1)->t == T_NAME) {
        adv(P);
        nl = (size_t)(cur(P)->p + cur(P)->n - nm);
        adv(P);
    }
    x->name = ja_strndup(P->c, nm, nl);
    x->name_len = nl;
    if (!jinja_test_known(x->name, nl)) {
        char msg[160];
        snprintf(msg, sizeof msg, "No test named '%.*s'.", (int)(nl < 80 ? nl : 80), nm);
        jfail(P->c, LF_EFORMAT, "syntax error at line %d, column %d: %s", t->line, t->col, msg);
    }
    const jtok *c = cur(P);
    if (is_op(P, "(")) parse_call_args(P, x);
    else if ((c->t == T_NAME || c->t == T_STRING || c->t == T_INT || c->t == T_FLOAT ||
              tok_is(c, T_OP, "(") || tok_is(c, T_OP, "[") || tok_is(c, T_OP, "{")) &&
             !tok_is(c, T_NAME, "else") && !tok_is(c, T_NAME, "or") && !tok_is(c, T_NAME, "and")) {
        if (tok_is(c, T_NAME, "is")) pfail(P, "%s", "You cannot chain multiple tests with is");
        jnode *arg = parse_postfix(P, parse_primary(P));
        x->items = ja_alloc(P->c, sizeof(jnode *));
        x->items[0] = arg;
        x->nitems = 1;
    }
    return x;
}

static jnode *parse_filter_expr(parser *P, jnode *node) {
    for (;;) {
        if (is_op(P, "|")) {
            adv(P);
            node = parse_filter_one(P, node);
        } else if (is_name(P, "is")) node = parse_test(P, node);
        else if (is_op(P, "(")) {
            jnode *call = mk(P, N_CALL, cur(P));
            call->a = node;
            parse_call_args(P, call);
            node = call;
        } else return node;
    }
}

static jnode *parse_subscribed(parser *P) {
    jnode *args[3] = {NULL, NULL, NULL};
    const jtok *at = cur(P);
    if (is_op(P, ":")) adv(P);
    else {
        jnode *node = parse_expression(P, 1);
        if (!is_op(P, ":")) return node;
        adv(P);
        args[0] = node;
    }
    if (!is_op(P, ":") && !is_op(P, "]") && !is_op(P, ",")) args[1] = parse_expression(P, 1);
    if (is_op(P, ":")) {
        adv(P);
        if (!is_op(P, "]") && !is_op(P, ",")) args[2] = parse_expression(P, 1);
    }
    jnode *s = mk(P, N_SLICE, at);
    s->b = args[0];
    s->c = args[1];
    s->d = args[2];
    return s;
}

static jnode *parse_postfix(parser *P, jnode *node) {
    for (;;) {
        const jtok *t = cur(P);
        if (is_op(P, ".")) {
            adv(P);
            const jtok *a = cur(P);
            if (a->t == T_NAME) {
                jnode *g = mk(P, N_GETATTR, t);
                g->a = node;
                g->name = tok_name(P, a);
                g->name_len = a->n;
                adv(P);
                node = g;
            } else if (a->t == T_INT) {
                jnode *g = mk(P, N_GETITEM, t);
                g->a = node;
                g->b = mk(P, N_CONST, a);
                g->b->cval = jv_int(a->i);
                adv(P);
                node = g;
            } else pfail(P, "%s", "expected name or number after '.'");
        } else if (is_op(P, "[")) {
            /* jinja2's parse_subscript: items separated by ',' (no trailing one); several items (or none) are
             * a tuple key. A slice is only valid alone: jinja2 turns x[a:b, c] into Python source that does not
             * compile, so it fails at compile time, and so do we (such a slice has no object to slice). */
            adv(P);
            nvec v = {0};
            while (!is_op(P, "]")) {
                if (v.n) expect_op(P, ",");
                nv_push(P->c, &v, parse_subscribed(P));
            }
            adv(P);
            jnode *key;
            if (v.n == 1) key = v.v[0];
            else {
                for (size_t k = 0; k < v.n; k++)
                    if (v.v[k]->kind == N_SLICE)
                        jfail(P->c, LF_EFORMAT,
                              "syntax error at line %d, column %d: a slice (':') is not allowed in a subscript with "
                              "several items, as in x[a:b, c]",
                              v.v[k]->line, v.v[k]->col);
                key = mk(P, N_TUPLE, t);
                key->items = v.v;
                key->nitems = v.n;
            }
            if (key->kind == N_SLICE) {
                key->a = node;
                node = key;
            } else {
                jnode *g = mk(P, N_GETITEM, t);
                g->a = node;
                g->b = key;
                node = g;
            }
        } else if (is_op(P, "(")) {
            jnode *call = mk(P, N_CALL, t);
            call->a = node;
            parse_call_args(P, call);
            node = call;
        } else return node;
    }
}

static jnode *parse_primary(parser *P) {
    const jtok *t = cur(P);
    jnode *x;
    char buf[64];
    enter(P);
    switch (t->t) {
    case T_NAME:
        x = mk(P, N_CONST, t);
        if (tok_is(t, T_NAME, "true") || tok_is(t, T_NAME, "True")) x->cval = jv_bool(1);
        else if (tok_is(t, T_NAME, "false") || tok_is(t, T_NAME, "False")) x->cval = jv_bool(0);
        else if (tok_is(t, T_NAME, "none") || tok_is(t, T_NAME, "None")) x->cval = jv_none();
        else {
            x->kind = N_NAME;
            x->name = tok_name(P, t);
            x->name_len = t->n;
        }
        adv(P);
        break;
    case T_STRING: {
        x = mk(P, N_CONST, t);
        jsb b;
        jsb_init(&b, P->c);
        while (cur(P)->t == T_STRING) {
            jsb_put(&b, cur(P)->p, cur(P)->n);
            adv(P);
        }
        x->cval = jsb_done(&b);
        break;
    }
    case T_INT:
        x = mk(P, N_CONST, t);
        x->cval = jv_int(t->i);
        adv(P);
        break;
    case T_FLOAT:
        x = mk(P, N_CONST, t);
        x->cval = jv_float(t->f);
        adv(P);
        break;
    case T_OP:
        if (is_op(P, "(")) {
            adv(P);
            x = parse_tuple(P, 1, NULL, 1);
            expect_op(P, ")");
            break;
        }
        if (is_op(P, "[")) {
            x = mk(P, N_LIST, t);
            adv(P);
            nvec v = {0};
            while (!is_op(P, "]")) {
                if (v.n) {
                    expect_op(P, ",");
                    if (is_op(P, "]")) break;
                }
                nv_push(P->c, &v, parse_expression(P, 1));
            }
            adv(P);
            x->items = v.v;
            x->nitems = v.n;
            break;
        }
        if (is_op(P, "{")) {
            x = mk(P, N_DICT, t);
            adv(P);
            nvec v = {0};
            while (!is_op(P, "}")) {
                if (v.n) {
                    expect_op(P, ",");
                    if (is_op(P, "}")) break;
                }
                jnode *k = parse_expression(P, 1);
                expect_op(P, ":");
                nv_push(P->c, &v, k);
                nv_push_kw(P->c, &v, NULL, parse_expression(P, 1));
            }
            adv(P);
            x->items = v.v;
            x->nitems = v.n;
            x->kwitems = v.kw;
            x->nkw = v.nkw;
            break;
        }
        /* fallthrough */
    default: pfail(P, "unexpected %s", tok_desc(t, buf, sizeof buf));
    }
    P->depth--;
    return x;
}

static jnode *parse_unary(parser *P, int with_filter) {
    const jtok *t = cur(P);
    jnode *node;
    enter(P);
    if (is_op(P, "-") || is_op(P, "+")) {
        adv(P);
        node = mk(P, t->p[0] == '-' ? N_NEG : N_POS, t);
        node->a = parse_unary(P, 0);
    } else node = parse_primary(P);
    node = parse_postfix(P, node);
    if (with_filter) node = parse_filter_expr(P, node);
    P->depth--;
    return node;
}

static jnode *binop(parser *P, const jtok *t, const char *op, jnode *a, jnode *b) {
    jnode *x = mk(P, N_BINOP, t);
    x->name = op;
    x->name_len = strlen(op);
    x->a = a;
    x->b = b;
    return x;
}

static jnode *parse_pow(parser *P) {
    jnode *left = parse_unary(P, 1);
    while (is_op(P, "**")) {
        const jtok *t = cur(P);
        adv(P);
        left = binop(P, t, "**", left, parse_unary(P, 1));
    }
    return left;
}

static jnode *parse_math2(parser *P) {
    jnode *left = parse_pow(P);
    for (;;) {
        const jtok *t = cur(P);
        const char *op = is_op(P, "*") ? "*" : is_op(P, "/") ? "/" : is_op(P, "//") ? "//" : is_op(P, "%") ? "%" : NULL;
        if (!op) return left;
        adv(P);
        left = binop(P, t, op, left, parse_pow(P));
    }
}

static jnode *parse_concat(parser *P) {
    const jtok *t = cur(P);
    jnode *first = parse_math2(P);
    if (!is_op(P, "~")) return first;
    nvec v = {0};
    nv_push(P->c, &v, first);
    while (is_op(P, "~")) {
        adv(P);
        nv_push(P->c, &v, parse_math2(P));
    }
    jnode *x = mk(P, N_CONCAT, t);
    x->items = v.v;
    x->nitems = v.n;
    return x;
}

static jnode *parse_math1(parser *P) {
    jnode *left = parse_concat(P);
    for (;;) {
        const jtok *t = cur(P);
        const char *op = is_op(P, "+") ? "+" : is_op(P, "-") ? "-" : NULL;
        if (!op) return left;
        adv(P);
        left = binop(P, t, op, left, parse_concat(P));
    }
}

static jnode *parse_compare(parser *P) {
    const jtok *t0 = cur(P);
    jnode *expr = parse_math1(P);
    nvec v = {0};
    for (;;) {
        const char *op = NULL;
        static const char *const cmp[] = {"==", "!=", "<", "<=", ">", ">=", NULL};
        for (int k = 0; cmp[k]; k++)
            if (is_op(P, cmp[k])) op = cmp[k];
        if (op) adv(P);
        else if (is_name(P, "in")) {
            op = "in";
            adv(P);
        } else if (is_name(P, "not") && tok_is(peek(P, 1), T_NAME, "in")) {
            op = "notin";
            adv(P);
            adv(P);
        } else break;
        nv_push_kw(P->c, &v, op, NULL);
        nv_push(P->c, &v, parse_math1(P));
    }
    if (!v.n) return expr;
    jnode *x = mk(P, N_COMPARE, t0);
    x->a = expr;
    x->items = v.v;
    x->nitems = v.n;
    x->names = v.names;
    return x;
}

static jnode *parse_not(parser *P) {
    if (is_name(P, "not")) {
        const jtok *t = cur(P);
        adv(P);
        enter(P);
        jnode *x = mk(P, N_NOT, t);
        x->a = parse_not(P);
        P->depth--;
        return x;
    }
    return parse_compare(P);
}

static jnode *parse_and(parser *P) {
    jnode *left = parse_not(P);
    while (is_name(P, "and")) {
        const jtok *t = cur(P);
        adv(P);
        jnode *x = mk(P, N_AND, t);
        x->a = left;
        x->b = parse_not(P);
        left = x;
    }
    return left;
}

static jnode *parse_or(parser *P) {
    jnode *left = parse_and(P);
    while (is_name(P, "or")) {
        const jtok *t = cur(P);
        adv(P);
        jnode *x = mk(P, N_OR, t);
        x->a = left;
        x->b = parse_and(P);
        left = x;
    }
    return left;
}

static jnode *parse_condexpr(parser *P) {
    enter(P);
    jnode *expr1 = parse_or(P);
    while (is_name(P, "if")) {
        const jtok *t = cur(P);
        adv(P);
        jnode *x = mk(P, N_COND, t);
        x->b = expr1;
        x->a = parse_or(P);
        if (is_name(P, "else")) {
            adv(P);
            x->c = parse_condexpr(P);
        }
        expr1 = x;
    }
    P->depth--;
    return expr1;
}

static jnode *parse_expression(parser *P, int with_condexpr) {
    return with_condexpr ? parse_condexpr(P) : parse_or(P);
}

static int is_tuple_end(parser *P, const char *extra_end) {
    const jtok *t = cur(P);
    if (t->t == T_VAR_END || t->t == T_BLOCK_END || t->t == T_EOF || tok_is(t, T_OP, ")")) return 1;
    if (extra_end && tok_is(t, T_NAME, extra_end)) return 1;
    return 0;
}

static jnode *parse_tuple(parser *P, int with_condexpr, const char *extra_end, int explicit_parens) {
    const jtok *t = cur(P);
    nvec v = {0};
    int is_tuple = 0;
    for (;;) {
        if (v.n) expect_op(P, ",");
        if (is_tuple_end(P, extra_end)) break;
        nv_push(P->c, &v, parse_expression(P, with_condexpr));
        if (is_op(P, ",")) is_tuple = 1;
        else break;
    }
    if (!is_tuple) {
        if (v.n) return v.v[0];
        if (!explicit_parens) {
            char buf[64];
            pfail(P, "Expected an expression, got %s", tok_desc(cur(P), buf, sizeof buf));
        }
    }
    jnode *x = mk(P, N_TUPLE, t);
    x->items = v.v;
    x->nitems = v.n;
    return x;
}

/* Assignment target: name, name.attr (with_ns), or a tuple of names. */
static jnode *parse_assign_target(parser *P, int with_ns, const char *extra_end) {
    const jtok *t = cur(P);
    if (with_ns && t->t == T_NAME && tok_is(peek(P, 1), T_OP, ".") && peek(P, 2)->t == T_NAME) {
        jnode *nm = mk(P, N_NAME, t);
        nm->name = tok_name(P, t);
        nm->name_len = t->n;
        adv(P);
        adv(P);
        jnode *g = mk(P, N_GETATTR, t);
        g->a = nm;
        g->name = tok_name(P, cur(P));
        g->name_len = cur(P)->n;
        adv(P);
        return g;
    }
    nvec v = {0};
    int is_tuple = 0, parens = 0;
    if (is_op(P, "(")) {
        parens = 1;
        adv(P);
    }
    for (;;) {
        if (v.n) expect_op(P, ",");
        if (parens ? is_op(P, ")") : is_tuple_end(P, extra_end) || is_op(P, "=")) break;
        const jtok *nt = cur(P);
        if (nt->t != T_NAME) pfail(P, "%s", "can't assign to this expression");
        jnode *nm = mk(P, N_NAME, nt);
        nm->name = tok_name(P, nt);
        nm->name_len = nt->n;
        adv(P);
        nv_push(P->c, &v, nm);
        if (is_op(P, ",")) is_tuple = 1;
        else break;
    }
    if (parens) expect_op(P, ")");
    if (!v.n) pfail(P, "%s", "expected an assignment target");
    if (!is_tuple && !parens) return v.v[0];
    if (!is_tuple && v.n == 1) return v.v[0];
    jnode *x = mk(P, N_TUPLE, t);
    x->items = v.v;
    x->nitems = v.n;
    return x;
}

static jnode *subparse(parser *P, const char *const *end_tokens);

/* After "{% name": true when the block's tag name is one of ends (cur is at that name). */
static int at_end_tag(parser *P, const char *const *ends) {
    if (!ends) return 0;
    for (int k = 0; ends[k]; k++)
        if (is_name(P, ends[k])) return 1;
    return 0;
}

static void expect_block_end(parser *P) { expect_type(P, T_BLOCK_END, "end of statement block"); }

static void expect_end_tag(parser *P, const char *name) {
    if (!is_name(P, name)) {
        char msg[96];
        snprintf(msg, sizeof msg, "expected '%s'", name);
        pfail(P, "%s", msg);
    }
    adv(P);
    expect_block_end(P);
}

static void parse_params(parser *P, jnode *x) {
    nvec v = {0};
    expect_op(P, "(");
    while (!is_op(P, ")")) {
        if (v.nkw) expect_op(P, ",");
        const jtok *t = cur(P);
        expect_type(P, T_NAME, "parameter name");
        jnode *def = NULL;
        if (is_op(P, "=")) {
            adv(P);
            def = parse_expression(P, 1);
        }
        nv_push_kw(P->c, &v, tok_name(P, t), def);
    }
    adv(P);
    x->names = v.names;
    x->kwitems = v.kw;
    x->nkw = v.nkw;
}

static jnode *parse_statement(parser *P) {
    const jtok *t = cur(P);
    char buf[64];
    if (t->t != T_NAME) pfail(P, "tag name expected, got %s", tok_desc(t, buf, sizeof buf));
    if (tok_is(t, T_NAME, "for")) {
        static const char *const e1[] = {"endfor", "else", NULL}, *const e2[] = {"endfor", NULL};
        adv(P);
        jnode *x = mk(P, N_FOR, t);
        x->a = parse_assign_target(P, 0, "in");
        if (!is_name(P, "in")) pfail(P, "%s", "expected 'in'");
        adv(P);
        x->b = parse_tuple(P, 0, "recursive", 0);
        if (is_name(P, "if")) {
            adv(P);
            x->e = parse_expression(P, 1);
        }
        if (is_name(P, "recursive")) pfail(P, "%s", "recursive for loops are not supported");
        expect_block_end(P);
        x->c = subparse(P, e1);
        if (is_name(P, "else")) {
            adv(P);
            expect_block_end(P);
            x->d = subparse(P, e2);
        }
        expect_end_tag(P, "endfor");
        return x;
    }
    if (tok_is(t, T_NAME, "if")) {
        static const char *const e1[] = {"elif", "else", "endif", NULL}, *const e2[] = {"endif", NULL};
        adv(P);
        jnode *top = mk(P, N_IF, t), *x = top;
        x->a = parse_tuple(P, 0, NULL, 0);
        expect_block_end(P);
        x->b = subparse(P, e1);
        for (;;) {
            if (is_name(P, "elif")) {
                const jtok *et = cur(P);
                adv(P);
                jnode *y = mk(P, N_IF, et);
                y->a = parse_tuple(P, 0, NULL, 0);
                expect_block_end(P);
                y->b = subparse(P, e1);
                jnode *body = mk(P, N_BODY, et);
                body->items = ja_alloc(P->c, sizeof(jnode *));
                body->items[0] = y;
                body->nitems = 1;
                x->c = body;
                x = y;
            } else if (is_name(P, "else")) {
                adv(P);
                expect_block_end(P);
                x->c = subparse(P, e2);
                expect_end_tag(P, "endif");
                return top;
            } else {
                expect_end_tag(P, "endif");
                return top;
            }
        }
    }
    if (tok_is(t, T_NAME, "set")) {
        static const char *const e1[] = {"endset", NULL};
        adv(P);
        jnode *target = parse_assign_target(P, 1, NULL);
        if (is_op(P, "=")) {
            adv(P);
            jnode *x = mk(P, N_SET, t);
            x->a = target;
            x->b = parse_tuple(P, 1, NULL, 0);
            expect_block_end(P);
            return x;
        }
        jnode *x = mk(P, N_SET_BLOCK, t);
        x->a = target;
        nvec v = {0};
        while (is_op(P, "|")) {
            adv(P);
            nv_push(P->c, &v, parse_filter_one(P, NULL));
        }
        x->items = v.v;
        x->nitems = v.n;
        expect_block_end(P);
        x->c = subparse(P, e1);
        expect_end_tag(P, "endset");
        return x;
    }
    if (tok_is(t, T_NAME, "macro")) {
        static const char *const e1[] = {"endmacro", NULL};
        adv(P);
        const jtok *nt = cur(P);
        expect_type(P, T_NAME, "macro name");
        jnode *x = mk(P, N_MACRO, t);
        x->name = tok_name(P, nt);
        x->name_len = nt->n;
        parse_params(P, x);
        expect_block_end(P);
        x->c = subparse(P, e1);
        expect_end_tag(P, "endmacro");
        return x;
    }
    if (tok_is(t, T_NAME, "call")) {
        static const char *const e1[] = {"endcall", NULL};
        adv(P);
        jnode *x = mk(P, N_CALL_BLOCK, t);
        if (is_op(P, "(")) parse_params(P, x);
        x->a = parse_expression(P, 1);
        if (x->a->kind != N_CALL) pfail(P, "%s", "expected call");
        expect_block_end(P);
        x->c = subparse(P, e1);
        expect_end_tag(P, "endcall");
        return x;
    }
    if (tok_is(t, T_NAME, "filter")) {
        static const char *const e1[] = {"endfilter", NULL};
        adv(P);
        jnode *x = mk(P, N_FILTER_BLOCK, t);
        nvec v = {0};
        nv_push(P->c, &v, parse_filter_one(P, NULL));
        while (is_op(P, "|")) {
            adv(P);
            nv_push(P->c, &v, parse_filter_one(P, NULL));
        }
        x->items = v.v;
        x->nitems = v.n;
        expect_block_end(P);
        x->c = subparse(P, e1);
        expect_end_tag(P, "endfilter");
        return x;
    }
    if (tok_is(t, T_NAME, "generation")) { /* transformers' AssistantTracker: renders its body */
        static const char *const e1[] = {"endgeneration", NULL};
        adv(P);
        expect_block_end(P);
        jnode *body = subparse(P, e1);
        expect_end_tag(P, "endgeneration");
        return body;
    }
    char msg[160];
    snprintf(msg, sizeof msg, "Encountered unknown tag '%.*s'.", (int)(t->n < 60 ? t->n : 60), t->p);
    pfail(P, "%s", msg);
}

static jnode *subparse(parser *P, const char *const *ends) {
    jnode *body = mk(P, N_BODY, cur(P));
    nvec v = {0};
    enter(P);
    for (;;) {
        const jtok *t = cur(P);
        if (t->t == T_EOF) {
            if (ends) {
                char msg[256];
                size_t o = (size_t)snprintf(msg, sizeof msg, "Unexpected end of template. Jinja was looking for the following tags: ");
                for (int k = 0; ends[k] && o < sizeof msg; k++)
                    o += (size_t)snprintf(msg + o, sizeof msg - o, "%s'%s'", k ? " or " : "", ends[k]);
                if (o < sizeof msg) snprintf(msg + o, sizeof msg - o, ".");
                pfail(P, "%s", msg);
            }
            break;
        }
        if (t->t == T_DATA) {
            jnode *x = mk(P, N_DATA, t);
            x->name = t->p;
            x->name_len = t->n;
            nv_push(P->c, &v, x);
            adv(P);
        } else if (t->t == T_VAR_BEGIN) {
            adv(P);
            jnode *x = mk(P, N_OUTPUT, t);
            x->a = parse_tuple(P, 1, NULL, 0);
            expect_type(P, T_VAR_END, "end of print statement");
            nv_push(P->c, &v, x);
        } else if (t->t == T_BLOCK_BEGIN) {
            adv(P);
            if (at_end_tag(P, ends)) break;
            nv_push(P->c, &v, parse_statement(P));
        } else {
            char buf[64];
            pfail(P, "unexpected %s", tok_desc(t, buf, sizeof buf));
        }
    }
    P->depth--;
    body->items = v.v;
    body->nitems = v.n;
    return body;
}

jnode *jinja_parse(jctx *c, const char *src) {
    /* normalize newlines and drop one trailing newline (keep_trailing_newline=False) */
    size_t sn = strlen(src);
    char *s = ja_alloc(c, sn + 1);
    size_t n = 0;
    for (size_t i = 0; i < sn; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < sn && src[i + 1] == '\n') i++;
        } else s[n++] = src[i];
    }
    if (n && s[n - 1] == '\n') n--;
    s[n] = '\0';
    lexer L = {.c = c, .s = s, .n = n, .loc_line = 1};
    lex(&L);
    lx_push(&L, T_EOF, s + n, 0, n);
    parser P = {.c = c, .L = &L, .t = L.toks, .n = L.ntoks};
    jnode *root = subparse(&P, NULL);
    return root;
}
