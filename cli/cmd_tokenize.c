/* cmd_tokenize.c - `loraforge tokenize` (UTF-8 text -> ids) and `loraforge detokenize` (ids -> text) over a
 * Hugging Face tokenizer.json, plus JSON-lines batch modes used by the parity tests. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "model/tokenizer.h"

static void help_tokenize(void) {
    printf("usage: loraforge tokenize --model DIR|tokenizer.json [--add-special] [--jsonl]\n\n"
           "Reads UTF-8 text from stdin and prints the token ids on one line, separated by single spaces.\n"
           "Invalid UTF-8 is accepted: each invalid byte sequence becomes U+FFFD before encoding.\n\n"
           "  --model PATH     model directory (tokenizer.json [+ tokenizer_config.json]) or a tokenizer.json\n"
           "  --add-special    apply the post-processor (e.g. prepend BOS), like add_special_tokens=True\n"
           "  --jsonl          batch mode: every stdin line is one JSON string; prints one JSON array of ids per line\n");
}

static void help_detokenize(void) {
    printf("usage: loraforge detokenize --model DIR|tokenizer.json [--skip-special] [--stream] [--jsonl]\n\n"
           "Reads token ids from stdin (separated by spaces or newlines) and prints the decoded text, with no\n"
           "newline added.\n\n"
           "  --model PATH     model directory (tokenizer.json [+ tokenizer_config.json]) or a tokenizer.json\n"
           "  --skip-special   drop special tokens (skip_special_tokens=True)\n"
           "  --stream         decode incrementally, one id at a time (the text is written as it completes)\n"
           "  --jsonl          batch mode: every stdin line is one JSON array of ids; prints one JSON string per\n"
           "                   line, or with --stream one JSON array of the streamed pieces (last one: the flush)\n");
}

static int read_stdin(const char *cmd, char **out, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf) goto oom;
    for (;;) {
        if (n == cap) {
            char *q = realloc(buf, cap *= 2);
            if (!q) goto oom;
            buf = q;
        }
        size_t r = fread(buf + n, 1, cap - n, stdin);
        n += r;
        if (r == 0) break;
    }
    if (ferror(stdin)) {
        lf_cli_error(cmd, "cannot read stdin");
        free(buf);
        return 1;
    }
    *out = buf;
    *len = n;
    return 0;
oom:
    free(buf);
    lf_cli_error(cmd, "out of memory reading stdin");
    return 1;
}

/* Common flags. Returns -1 to continue, else the exit code. */
static int parse_flags(const char *cmd, int argc, char **argv, const char **model, int *flag_a, const char *name_a,
                       int *stream, int *jsonl, void (*help)(void)) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help();
            return 0;
        }
        if (!strcmp(a, name_a)) *flag_a = 1;
        else if (!strcmp(a, "--jsonl")) *jsonl = 1;
        else if (stream && !strcmp(a, "--stream")) *stream = 1;
        else if (!strcmp(a, "--model")) {
            if (lf_cli_need_value(cmd, argc, argv, i)) return 2;
            *model = argv[++i];
        } else {
            const char *known[] = {"--model", name_a, "--jsonl", stream ? "--stream" : NULL, NULL};
            return lf_cli_unknown_option(cmd, a, known);
        }
    }
    if (!*model) {
        lf_cli_error(cmd, "--model is required (see --help)");
        return 2;
    }
    return -1;
}

static int print_ids(FILE *f, const int32_t *ids, int64_t n, int json) {
    if (json) fputc('[', f);
    for (int64_t i = 0; i < n; i++) fprintf(f, i ? (json ? ",%d" : " %d") : "%d", ids[i]);
    if (json) fputc(']', f);
    fputc('\n', f);
    return 0;
}

int lf_cmd_tokenize(int argc, char **argv) {
    const char *CMD = "tokenize", *model = NULL;
    int add_special = 0, jsonl = 0;
    int rc = parse_flags(CMD, argc, argv, &model, &add_special, "--add-special", NULL, &jsonl, help_tokenize);
    if (rc >= 0) return rc;
    lf_err err = {0};
    lf_tokenizer *t = NULL;
    char *in = NULL;
    size_t inlen = 0;
    int32_t *ids = NULL;
    int64_t n = 0;
    rc = 1;
    if (lf_tokenizer_load(model, &t, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    if (read_stdin(CMD, &in, &inlen)) goto done;
    if (!jsonl) {
        if (lf_tokenizer_encode(t, in, inlen, add_special, &ids, &n, &err)) {
            lf_cli_error(CMD, "%s", err.msg);
            goto done;
        }
        print_ids(stdout, ids, n, 0);
        rc = 0;
        goto done;
    }
    size_t line_no = 0;
    for (size_t pos = 0; pos < inlen; line_no++) {
        const char *nl = memchr(in + pos, '\n', inlen - pos);
        size_t ll = nl ? (size_t)(nl - (in + pos)) : inlen - pos;
        json_error_t je;
        json_t *j = json_loadb(in + pos, ll, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        pos += ll + 1;
        if (!j || !json_is_string(j)) {
            lf_cli_error(CMD, "stdin line %zu: expected a JSON string%s%s", line_no + 1, j ? "" : ": ", j ? "" : je.text);
            json_decref(j);
            goto done;
        }
        free(ids);
        ids = NULL;
        if (lf_tokenizer_encode(t, json_string_value(j), json_string_length(j), add_special, &ids, &n, &err)) {
            json_decref(j);
            lf_cli_error(CMD, "stdin line %zu: %s", line_no + 1, err.msg);
            goto done;
        }
        json_decref(j);
        print_ids(stdout, ids, n, 1);
    }
    rc = 0;
done:
    if (fflush(stdout)) rc = 1;
    free(ids);
    free(in);
    lf_tokenizer_free(t);
    return rc;
}

/* Parse ids separated by whitespace (or JSON array punctuation when json). */
static int parse_ids(const char *cmd, const char *s, size_t n, int32_t **out, int64_t *count) {
    size_t cap = 64;
    int64_t k = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) {
        lf_cli_error(cmd, "out of memory");
        return 1;
    }
    size_t i = 0;
    while (i < n) {
        char c = s[i];
        if (c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == ',' || c == '[' || c == ']') {
            i++;
            continue;
        }
        char tmp[32];
        size_t j = 0;
        while (i + j < n && j < sizeof tmp - 1 && !strchr(" \n\t\r,[]", s[i + j])) tmp[j] = s[i + j], j++;
        tmp[j] = '\0';
        char *end;
        errno = 0;
        long long v = strtoll(tmp, &end, 10);
        if (!j || *end || errno || v < 0 || v > INT32_MAX) {
            lf_cli_error(cmd, "'%s' is not a token id (expected non-negative integers separated by spaces)", tmp);
            free(ids);
            return 1;
        }
        if ((size_t)k == cap) {
            int32_t *q = realloc(ids, (cap *= 2) * sizeof *q);
            if (!q) {
                free(ids);
                lf_cli_error(cmd, "out of memory");
                return 1;
            }
            ids = q;
        }
        ids[k++] = (int32_t)v;
        i += j;
    }
    *out = ids;
    *count = k;
    return 0;
}

static int write_all(FILE *f, const char *s, size_t n) { return fwrite(s, 1, n, f) != n; }

/* Decode ids either at once or streamed; the result is appended to pieces (json array) or written to stdout. */
static int detok_one(const char *cmd, const lf_tokenizer *t, const int32_t *ids, int64_t n, int skip, int stream, int jsonl) {
    lf_err err = {0};
    if (!stream) {
        char *text = NULL;
        size_t len = 0;
        if (lf_tokenizer_decode(t, ids, n, skip, &text, &len, &err)) {
            lf_cli_error(cmd, "%s", err.msg);
            return 1;
        }
        int bad = 0;
        if (jsonl) {
            json_t *js = json_stringn(text, len);
            char *d = js ? json_dumps(js, JSON_ENCODE_ANY | JSON_ENSURE_ASCII) : NULL;
            bad = !d || printf("%s\n", d) < 0;
            free(d);
            json_decref(js);
        } else {
            bad = write_all(stdout, text, len);
        }
        free(text);
        return bad;
    }
    lf_tokenizer_stream *s = NULL;
    json_t *arr = jsonl ? json_array() : NULL;
    int rc = 1;
    if (lf_tokenizer_stream_create(t, skip, &s, &err)) goto fail;
    for (int64_t i = 0; i <= n; i++) {
        const char *p;
        size_t pl;
        if (i < n ? lf_tokenizer_stream_push(s, ids[i], &p, &pl, &err) : lf_tokenizer_stream_flush(s, &p, &pl, &err)) goto fail;
        if (arr) {
            if (pl || i == n) json_array_append_new(arr, json_stringn(p, pl));
        } else {
            if (write_all(stdout, p, pl)) goto done;
            fflush(stdout);
        }
    }
    if (arr) {
        char *d = json_dumps(arr, JSON_ENCODE_ANY | JSON_ENSURE_ASCII);
        if (!d || printf("%s\n", d) < 0) {
            free(d);
            goto done;
        }
        free(d);
    }
    rc = 0;
    goto done;
fail:
    lf_cli_error(cmd, "%s", err.msg);
done:
    json_decref(arr);
    lf_tokenizer_stream_free(s);
    return rc;
}

int lf_cmd_detokenize(int argc, char **argv) {
    const char *CMD = "detokenize", *model = NULL;
    int skip = 0, stream = 0, jsonl = 0;
    int rc = parse_flags(CMD, argc, argv, &model, &skip, "--skip-special", &stream, &jsonl, help_detokenize);
    if (rc >= 0) return rc;
    lf_err err = {0};
    lf_tokenizer *t = NULL;
    char *in = NULL;
    size_t inlen = 0;
    int32_t *ids = NULL;
    int64_t n = 0;
    rc = 1;
    if (lf_tokenizer_load(model, &t, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    if (read_stdin(CMD, &in, &inlen)) goto done;
    if (!jsonl) {
        if (parse_ids(CMD, in, inlen, &ids, &n)) goto done;
        rc = detok_one(CMD, t, ids, n, skip, stream, 0);
        goto done;
    }
    for (size_t pos = 0; pos < inlen;) {
        const char *nl = memchr(in + pos, '\n', inlen - pos);
        size_t ll = nl ? (size_t)(nl - (in + pos)) : inlen - pos;
        free(ids);
        ids = NULL;
        if (parse_ids(CMD, in + pos, ll, &ids, &n)) goto done;
        pos += ll + 1;
        if (detok_one(CMD, t, ids, n, skip, stream, 1)) goto done;
    }
    rc = 0;
done:
    if (fflush(stdout)) rc = 1;
    free(ids);
    free(in);
    lf_tokenizer_free(t);
    return rc;
}
