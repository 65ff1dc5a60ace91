/* cli_util.c - flag value parsing shared by the subcommands; every failure names the flag and the value. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

void lf_cli_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "loraforge %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int lf_cli_need_value(const char *cmd, int argc, char **argv, int i) {
    if (i + 1 >= argc) {
        lf_cli_error(cmd, "%s needs a value (see loraforge %s --help)", argv[i], cmd);
        return 1;
    }
    return 0;
}

int lf_cli_parse_i64(const char *cmd, const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end != '\0') {
        lf_cli_error(cmd, "%s: '%s' is not an integer", flag, s);
        return 1;
    }
    if (v < lo || v > hi) {
        lf_cli_error(cmd, "%s: %lld is out of range [%lld, %lld]", flag, v, (long long)lo, (long long)hi);
        return 1;
    }
    *out = v;
    return 0;
}

int lf_cli_parse_f64(const char *cmd, const char *flag, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || v != v) {
        lf_cli_error(cmd, "%s: '%s' is not a number", flag, s);
        return 1;
    }
    if (v < lo || v > hi) {
        lf_cli_error(cmd, "%s: %g is out of range [%g, %g]", flag, v, lo, hi);
        return 1;
    }
    *out = v;
    return 0;
}

int lf_cli_parse_tokens(const char *cmd, const char *s, int32_t **out, int64_t *n) {
    size_t cap = 16, len = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) {
        lf_cli_error(cmd, "out of memory");
        return 1;
    }
    const char *p = s;
    while (*p) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || (*end && *end != ' ' && *end != ',' && *end != '\t' && *end != '\n')) {
            lf_cli_error(cmd, "--tokens: '%.*s' is not a token id (expected non-negative integers separated by spaces)",
                         (int)strcspn(p, " ,\t\n"), p);
            free(ids);
            return 1;
        }
        if (len == cap) {
            int32_t *t = realloc(ids, (cap *= 2) * sizeof *ids);
            if (!t) {
                free(ids);
                lf_cli_error(cmd, "out of memory");
                return 1;
            }
            ids = t;
        }
        ids[len++] = (int32_t)v;
        p = end;
    }
    if (len == 0) {
        free(ids);
        lf_cli_error(cmd, "--tokens: no token ids given");
        return 1;
    }
    *out = ids;
    *n = (int64_t)len;
    return 0;
}
