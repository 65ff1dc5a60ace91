/* jinja.h - internal to the chat-template interpreter (model/jinja_*.c, model/chat_template.c): values,
 * the growable arena they live in, tokens, the AST, and the entry points of lexer, parser and evaluator.
 *
 * Invariants: every value, string and node is carved from a jarena and freed with it, never one by one
 * (the public handle owns the compile arena; each render owns its own arena). Errors anywhere below the
 * public API longjmp to the jctx's jmp_buf with the message already in ctx->err; nothing allocated
 * outside the arenas is live across a call that can fail, except ctx->out, which the entry point frees. */
#ifndef LF_MODEL_JINJA_H
#define LF_MODEL_JINJA_H

#include <jansson.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

/* ---- arena ---- */
typedef struct jchunk jchunk;
typedef struct jarena {
    jchunk *head;
    size_t used_total; /* bytes handed out, all chunks */
    size_t limit;      /* 0 = unlimited; over it -> jctx error */
} jarena;

/* ---- values ---- */
typedef enum jv_type {
    JV_UNDEF = 0, /* u.s holds a hint for the error message ("'x' is undefined"), may be empty */
    JV_NONE,
    JV_BOOL,
    JV_INT,
    JV_FLOAT,
    JV_STR,
    JV_LIST, /* also tuples */
    JV_DICT, /* also namespace() objects (d->is_ns) and the loop object */
    JV_FUNC, /* builtin global, bound method or macro */
} jv_type;

typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jfunc jfunc;

typedef struct jv {
    jv_type t;
    union {
        int b;
        int64_t i;
        double f;
        struct {
            const char *p; /* not NUL-terminated in general */
            size_t n;      /* bytes */
        } s;
        jlist *l;
        jdict *d;
        jfunc *fn;
    } u;
} jv;

struct jlist {
    size_t n, cap;
    jv *v;
    int is_tuple; /* repr as (a, b) */
};

struct jdict {
    size_t n, cap;
    jv *k; /* keys: strings (or ints) */
    jv *v;
    int is_ns; /* namespace(): attribute assignment allowed */
};

struct jnode;
struct jframe;
typedef struct jctx jctx;
typedef jv (*jbuiltin_fn)(jctx *c, jv self, const char *name, jv *args, int nargs, const char **kwn, jv *kwv,
                          int nkw, const struct jnode *at);

struct jfunc {
    const char *name;        /* for messages */
    jbuiltin_fn fn;          /* builtin / bound method; NULL for a macro */
    jv self;                 /* bound receiver */
    const struct jnode *macro; /* N_MACRO node */
    struct jframe *closure;  /* frame the macro was defined in */
    jv caller;               /* `caller` of a {% call %} block (JV_UNDEF when none) */
};

/* ---- tokens ---- */
typedef enum jtok_type {
    T_DATA, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END, T_NAME, T_STRING, T_INT, T_FLOAT, T_OP, T_EOF
} jtok_type;

typedef struct jtok {
    jtok_type t;
    const char *p; /* DATA/NAME/OP: text; STRING: decoded value */
    size_t n;
    int64_t i;
    double f;
    int line, col;
} jtok;

/* ---- AST ---- */
typedef enum jnode_kind {
    /* statements */
    N_BODY, N_DATA, N_OUTPUT, N_IF, N_FOR, N_SET, N_SET_BLOCK, N_MACRO, N_CALL_BLOCK, N_FILTER_BLOCK,
    /* expressions */
    N_CONST, N_NAME, N_GETATTR, N_GETITEM, N_SLICE, N_CALL, N_FILTER, N_TEST, N_BINOP, N_NEG, N_POS, N_NOT,
    N_AND, N_OR, N_COMPARE, N_COND, N_LIST, N_TUPLE, N_DICT, N_CONCAT,
} jnode_kind;

typedef struct jnode {
    jnode_kind kind;
    int line, col;
    const char *name; /* NAME / GETATTR attribute / FILTER, TEST, MACRO name / BINOP+COMPARE op */
    size_t name_len;
    jv cval;          /* N_CONST */
    int neg;          /* N_TEST: `is not` */
    struct jnode *a, *b, *c, *d, *e; /* children; meaning per kind (see jinja_parse.c) */
    struct jnode **items; /* list items, call args, body statements, compare operands */
    size_t nitems;
    const char **names;   /* kwarg names (parallel to kwitems), macro param names, compare ops */
    struct jnode **kwitems; /* kwarg values, macro param defaults (NULL = none), dict values */
    size_t nkw;
} jnode;

/* ---- context ---- */
typedef struct jframe {
    struct jframe *parent;
    jdict *vars;
} jframe;

struct jctx {
    jarena *arena;
    lf_err *err;
    jmp_buf jb;
    /* render state */
    struct jsb *sink; /* where output goes (arena buffer; swapped while capturing macro / set-block output) */
    jframe *root;
    int depth;     /* C recursion now: parser nesting, or eval + statement + value (repr/==/<) recursion */
    int64_t steps; /* statements run + loop iterations */
    int64_t work;  /* work units spent (see JINJA_MAX_WORK) */
    /* this render's limits (lf_chat_template_limits with the defaults filled in) */
    size_t max_output;
    int64_t max_steps, max_work;
    /* lexer/parser state */
    const char *src;
    jtok *toks;
    size_t ntoks, tpos;
};

/* Bounds. A template is untrusted input: every one of these ends the compile or render with an error status
 * and a message (LF_EFORMAT at compile, LF_EINVAL / LF_ENOMEM at render), never a crash or a hang.
 * Steps, output, arena and work are the defaults of lf_chat_template_limits; the depths are fixed (they
 * protect the C stack). */
#define JINJA_MAX_DEPTH 200          /* parser nesting (each '(' costs 3) and macro / caller() call depth */
#define JINJA_MAX_EVAL_DEPTH 512     /* render recursion: expressions + blocks + macros + nested values; at
                                      * the limit a render uses < 0.5 MiB of stack (< 1.5 MiB with ASan -O0) */
#define JINJA_MAX_STEPS 5000000LL    /* loop iterations + statements per render */
#define JINJA_MAX_RANGE 100000       /* range() length, as jinja2's sandbox MAX_RANGE */
#define JINJA_MAX_OUTPUT (64u << 20) /* bytes of rendered text (and of any one captured macro / set block) */
#define JINJA_ARENA_LIMIT ((size_t)256 << 20) /* bytes allocated per compile / per render */
/* Work that allocates nothing (scans, compares, dict probes; what allocates is bounded by the arena) is
 * charged in units: one per element compared or dictionary key probed, one per 4 bytes scanned with
 * memcmp / memchr / UTF-8 counting, one per byte of a code-point-by-code-point membership test. The limit
 * is about a second of CPU; rendering a 6 MiB conversation with the shipped templates spends < 3% of it. */
#define JINJA_MAX_WORK 100000000LL

/* arena */
void jarena_free(jarena *a);
void *ja_alloc(jctx *c, size_t n); /* zeroed; longjmps on failure/limit */
char *ja_strndup(jctx *c, const char *s, size_t n);

/* errors: set ctx->err and longjmp */
_Noreturn void jfail(jctx *c, lf_status code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
_Noreturn void jfail_at(jctx *c, const jnode *at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
_Noreturn void jwork_exceeded(jctx *c);
/* charge units of work (see JINJA_MAX_WORK) */
static inline void jwork(jctx *c, uint64_t units) {
    c->work += (int64_t)(units < (uint64_t)c->max_work ? units : (uint64_t)c->max_work);
    if (c->work > c->max_work) jwork_exceeded(c);
}
/* one more level of value recursion (repr, ==, <, JSON import); the caller decrements c->depth */
void jdeep(jctx *c);

/* values (jinja_value.c) */
jv jv_undef(const char *hint);
jv jv_none(void);
jv jv_bool(int b);
jv jv_int(int64_t i);
jv jv_float(double f);
jv jv_str(const char *p, size_t n);
jv jv_cstr(const char *p);
jv jv_strdup(jctx *c, const char *p, size_t n);
jv jv_list_new(jctx *c, size_t cap);
void jv_list_push(jctx *c, jv list, jv item);
jv jv_dict_new(jctx *c);
void jv_dict_set(jctx *c, jv dict, jv key, jv val);
void jdict_set_str(jctx *c, jdict *d, const char *key, jv val);
void jdict_append_str(jctx *c, jdict *d, const char *key, jv val); /* key known to be absent: no scan */
int jdict_get(jctx *c, const jdict *d, jv key, jv *out);
int jdict_get_str(jctx *c, const jdict *d, const char *key, size_t n, jv *out);
int jv_truthy(jv v);
int jv_equal(jctx *c, jv a, jv b);
int jv_is_str(jv v, const char *s);
int jv_compare(jctx *c, jv a, jv b, const jnode *at); /* <0, 0, >0; type errors fail */
const char *jv_type_name(jv v);
jv jv_from_json(jctx *c, const json_t *j);
/* str(v) as Python/Jinja prints it; undefined -> "" */
jv jv_to_str(jctx *c, jv v);
/* repr(v) appended to sb */
typedef struct jsb jsb;
struct jsb {
    jctx *c;
    char *p;
    size_t n, cap;
};
void jsb_init(jsb *b, jctx *c);
void jsb_put(jsb *b, const char *s, size_t n);
void jsb_puts(jsb *b, const char *s);
void jsb_putc(jsb *b, char ch);
jv jsb_done(jsb *b);
void jv_repr(jsb *b, jv v);
void jv_float_repr(char *buf, size_t cap, double d);
/* json.dumps(v, ensure_ascii, indent (NULL = none), separators, sort_keys) */
void jv_tojson(jctx *c, jsb *b, jv v, int ensure_ascii, const char *indent, const char *item_sep,
               const char *key_sep, int sort_keys, int level, const jnode *at);
/* UTF-8 helpers */
size_t ju_len(const char *p, size_t n); /* code points */
size_t ju_offset(const char *p, size_t n, size_t cp); /* byte offset of code point cp (clamped to n) */
int ju_decode(const char *p, size_t n, size_t *adv); /* one code point; invalid byte -> that byte */
int ju_is_space(int cp); /* Python str.isspace */

/* lexer + parser (jinja_parse.c): returns the N_BODY root; failures longjmp with LF_EFORMAT */
jnode *jinja_parse(jctx *c, const char *src);
int jinja_filter_known(const char *name, size_t n);
int jinja_test_known(const char *name, size_t n);

/* evaluator (jinja_eval.c) */
void jinja_render_body(jctx *c, const jnode *body, jframe *f);
jv jinja_eval(jctx *c, const jnode *e, jframe *f);
jv jinja_call_value(jctx *c, jv fn, jv *args, int nargs, const char **kwn, jv *kwv, int nkw, const jnode *at);
void jinja_install_globals(jctx *c, jframe *root);
/* filters + tests (jinja_filters.c) */
jv jinja_apply_filter(jctx *c, const char *name, size_t nlen, jv v, jv *args, int nargs, const char **kwn, jv *kwv,
                      int nkw, jframe *f, const jnode *at);
int jinja_apply_test(jctx *c, const char *name, size_t nlen, jv v, jv *args, int nargs, const jnode *at);
jv jinja_getattr(jctx *c, jv obj, const char *name, size_t n, const jnode *at);
jv jinja_getitem(jctx *c, jv obj, jv key, const jnode *at);
struct jlist *jinja_iter(jctx *c, jv v, const jnode *at); /* Python iteration: list items, dict keys, chars */
jv jinja_strip(jctx *c, jv s, jv chars, int left, int right); /* chars not a string = Unicode whitespace */
/* first (last = 0) or last occurrence of nd in h, NULL if none; work is charged to c */
const char *jinja_find(jctx *c, const char *h, size_t hn, const char *nd, size_t nn, int last);
jv jinja_replace(jctx *c, jv s, jv old, jv new_, int64_t count);
jv jinja_case(jctx *c, jv s, int mode); /* 0 lower, 1 upper, 2 Python str.title, 3 capitalize, 4 Jinja title */

#endif
