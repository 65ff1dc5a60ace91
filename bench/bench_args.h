/* bench_args.h - strict command-line flags for the one-file programs in bench/ and tests/tools/.
 *
 * Every program declares its flags in a table and hands argv to lf_args_parse, which makes these usage errors
 * (exit 2, one stderr line naming the flag): an unknown flag ("prog: unknown option '--promptlen'; did you mean
 * '--prompt-len'?"), a flag without its value (at the end, or followed by another "--flag"; "-1" is a value),
 * and a value that is not a number, or not in range, where a number is expected. --help / -h prints the usage
 * on stdout (exit 0).
 *
 *   const char *model = NULL;
 *   int threads = 0, quick = 0;
 *   const lf_arg_spec flags[] = {LF_FLAG_STR("--model", &model), LF_FLAG_INT("--threads", &threads, 0, 4096),
 *                                LF_FLAG_BOOL("--quick", &quick), LF_FLAG_END};
 *   int rc = lf_args_parse("bench_x", USAGE, argc, argv, 1, flags, NULL, 0, NULL);
 *   if (rc >= 0) return rc;
 *
 * Header-only (static inline): these programs are single .c files linked against lfcore, and the CLI has its own
 * helpers in cli/cli_util.c. */
#ifndef LF_BENCH_BENCH_ARGS_H
#define LF_BENCH_BENCH_ARGS_H

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    LF_ARG_BOOL, /* int *: set to 1; takes no value */
    LF_ARG_STR,  /* const char **: any value not starting with "--" */
    LF_ARG_INT,  /* int *: a base-10 integer in [lo, hi] (lo == hi == 0: any int) */
    LF_ARG_I64,  /* int64_t *: a base-10 integer in [lo, hi] (lo == hi == 0: any int64) */
    LF_ARG_U64,  /* uint64_t *: a non-negative base-10 integer (seeds) */
    LF_ARG_F64,  /* double *: a number in [dlo, dhi] (dlo == dhi == 0: anything strtod reads, inf and nan too) */
} lf_arg_kind;

typedef struct lf_arg_spec {
    const char *name; /* "--threads"; NULL ends the table */
    lf_arg_kind kind;
    void *out;
    int64_t lo, hi;
    double dlo, dhi;
    int *seen; /* optional: set to 1 when the flag is given */
} lf_arg_spec;

/* Table entries; the pointer must have the kind's type (a mismatch is a compiler warning). */
#define LF_ARG_PTR_(type, p) ((void *)(1 ? (p) : (type *)0))
#define LF_FLAG_BOOL(name, p) {(name), LF_ARG_BOOL, LF_ARG_PTR_(int, p), .lo = 0}
#define LF_FLAG_STR(name, p) {(name), LF_ARG_STR, LF_ARG_PTR_(const char *, p), .lo = 0}
#define LF_FLAG_INT(name, p, lo_, hi_) {(name), LF_ARG_INT, LF_ARG_PTR_(int, p), .lo = (lo_), .hi = (hi_)}
#define LF_FLAG_I64(name, p, lo_, hi_) {(name), LF_ARG_I64, LF_ARG_PTR_(int64_t, p), .lo = (lo_), .hi = (hi_)}
#define LF_FLAG_U64(name, p) {(name), LF_ARG_U64, LF_ARG_PTR_(uint64_t, p), .lo = 0}
#define LF_FLAG_F64(name, p, lo_, hi_) {(name), LF_ARG_F64, LF_ARG_PTR_(double, p), .dlo = (lo_), .dhi = (hi_)}
#define LF_FLAG_END {.name = NULL}

/* An argument that is a flag, not a value or positional: "-x", "--x"; "-", "-1", "-.5" are not flags. */
static inline int lf_args_is_flag(const char *s) {
    return s[0] == '-' && s[1] != '\0' && !isdigit((unsigned char)s[1]) && s[1] != '.';
}

/* Levenshtein distance, strings capped at 63 characters. */
static inline int lf_args_distance(const char *a, const char *b) {
    int n = (int)strlen(a), m = (int)strlen(b), row[64];
    if (n > 63) n = 63;
    if (m > 63) m = 63;
    for (int j = 0; j <= m; j++) row[j] = j;
    for (int i = 1; i <= n; i++) {
        int diag = row[0];
        row[0] = i;
        for (int j = 1; j <= m; j++) {
            int up = row[j], v = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < v) v = up + 1;
            if (row[j - 1] + 1 < v) v = row[j - 1] + 1;
            row[j] = v;
            diag = up;
        }
    }
    return row[m];
}

/* "prog: unknown option 'arg'; did you mean '--x'? (see prog --help)" on stderr; returns 2. */
static inline int lf_args_unknown(const char *prog, const char *arg, const lf_arg_spec *specs) {
    const char *best = NULL;
    int bd = INT_MAX;
    for (const lf_arg_spec *s = specs; s && s->name; s++) {
        int d = lf_args_distance(arg, s->name), len = (int)strlen(s->name);
        if (d > 0 && d <= 4 && d * 3 <= len + 1 && d < bd) bd = d, best = s->name;
    }
    if (best) fprintf(stderr, "%s: unknown option '%s'; did you mean '%s'? (see %s --help)\n", prog, arg, best, prog);
    else fprintf(stderr, "%s: unknown option '%s' (see %s --help)\n", prog, arg, prog);
    return 2;
}

/* Number parsers: 0 ok; 2 after "prog: FLAG: 'abc' is not an integer" (or out of range) on stderr. */
static inline int lf_args_i64(const char *prog, const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end != '\0') {
        fprintf(stderr, "%s: %s: '%s' is not an integer\n", prog, flag, s);
        return 2;
    }
    if (v < lo || v > hi) {
        fprintf(stderr, "%s: %s: %lld is out of range [%lld, %lld]\n", prog, flag, v, (long long)lo, (long long)hi);
        return 2;
    }
    *out = v;
    return 0;
}

static inline int lf_args_u64(const char *prog, const char *flag, const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end != '\0' || strchr(s, '-')) {
        fprintf(stderr, "%s: %s: '%s' is not a non-negative integer\n", prog, flag, s);
        return 2;
    }
    *out = v;
    return 0;
}

static inline int lf_args_f64(const char *prog, const char *flag, const char *s, double lo, double hi, double *out) {
    char *end;
    int any = lo == 0 && hi == 0;
    errno = 0;
    double v = strtod(s, &end);
    if ((errno && !any) || end == s || *end != '\0' || (!any && isnan(v))) {
        fprintf(stderr, "%s: %s: '%s' is not a number\n", prog, flag, s);
        return 2;
    }
    if (!any && (v < lo || v > hi)) {
        fprintf(stderr, "%s: %s: %g is out of range [%g, %g]\n", prog, flag, v, lo, hi);
        return 2;
    }
    *out = v;
    return 0;
}

/* Parses argv[first..argc) against specs (NULL-terminated by name). Arguments that are not flags are
 * positionals, stored in pos[0..maxpos) (*npos counts them; more than maxpos is an error). Returns -1 when
 * the program should go on, 0 after --help (usage on stdout), 2 after a usage error (one line on stderr). */
static inline int lf_args_parse(const char *prog, const char *usage, int argc, char **argv, int first,
                                const lf_arg_spec *specs, const char **pos, int maxpos, int *npos) {
    if (npos) *npos = 0;
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        }
        if (!lf_args_is_flag(a)) {
            if (!npos || *npos >= maxpos) {
                fprintf(stderr, "%s: unexpected argument '%s' (see %s --help)\n", prog, a, prog);
                return 2;
            }
            pos[(*npos)++] = a;
            continue;
        }
        const lf_arg_spec *s = specs;
        while (s && s->name && strcmp(s->name, a)) s++;
        if (!s || !s->name) return lf_args_unknown(prog, a, specs);
        if (s->seen) *s->seen = 1;
        if (s->kind == LF_ARG_BOOL) {
            *(int *)s->out = 1;
            continue;
        }
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v || (v[0] == '-' && v[1] == '-' && v[2])) {
            fprintf(stderr, "%s: %s needs a value (see %s --help)\n", prog, a, prog);
            return 2;
        }
        i++;
        int64_t n = 0;
        int bad = 0;
        switch (s->kind) {
        case LF_ARG_STR: *(const char **)s->out = v; break;
        case LF_ARG_INT:
            bad = lf_args_i64(prog, a, v, s->lo || s->hi ? s->lo : INT_MIN, s->lo || s->hi ? s->hi : INT_MAX, &n);
            if (!bad) *(int *)s->out = (int)n;
            break;
        case LF_ARG_I64:
            bad = lf_args_i64(prog, a, v, s->lo || s->hi ? s->lo : INT64_MIN, s->lo || s->hi ? s->hi : INT64_MAX,
                              (int64_t *)s->out);
            break;
        case LF_ARG_U64: bad = lf_args_u64(prog, a, v, (uint64_t *)s->out); break;
        case LF_ARG_F64: bad = lf_args_f64(prog, a, v, s->dlo, s->dhi, (double *)s->out); break;
        case LF_ARG_BOOL: break;
        }
        if (bad) return 2;
    }
    return -1;
}

#endif
