/* test_http_parse.c - the HTTP/1.x head parser and chunked decoder (serve/http_parse.h): random valid heads
 * fed byte by byte (incomplete until the blank line, then every field as sent), decoding of paths and query
 * arguments, each rejection with its status, limits (414, 431), and chunked bodies with random chunk sizes,
 * extensions, trailers and split points decoded to the same bytes, stopping exactly at the end of the body.
 * Seed from LF_TEST_SEED or time, printed. Last line "N passed, M failed". */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve/http_parse.h"

static int g_pass, g_fail;
#define CHECK(cond, ...)                                         \
    do {                                                         \
        if (cond) {                                              \
            g_pass++;                                            \
        } else {                                                 \
            g_fail++;                                            \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);          \
            printf(__VA_ARGS__);                                 \
            printf("\n");                                        \
        }                                                        \
    } while (0)

static uint64_t g_rng;
static uint32_t rnd(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 11);
}

static int64_t parse(const char *text, lf_http_head *h, int *st, char *msg) {
    static char buf[1 << 18];
    size_t n = strlen(text);
    memcpy(buf, text, n + 1);
    return lf_http_parse_head(buf, n, 8192, 65536, h, st, msg, 160);
}

static void test_valid_heads(void) {
    for (int it = 0; it < 300; it++) {
        char req[4096], name[16][24], val[16][64];
        int nf = (int)(rnd() % 8);
        const char *methods[] = {"GET", "POST", "DELETE", "HEAD", "PUT"};
        const char *m = methods[rnd() % 5];
        int minor = (int)(rnd() % 2);
        int n = snprintf(req, sizeof req, "%s%s /p%u/x?a=%u&b=c+d&flag HTTP/1.%d\r\n", rnd() % 4 ? "" : "\r\n", m,
                         rnd() % 1000, rnd() % 100, minor);
        for (int i = 0; i < nf; i++) {
            snprintf(name[i], sizeof name[i], "X-F%d", i);
            int vl = (int)(rnd() % 20);
            for (int k = 0; k < vl; k++) val[i][k] = (char)('a' + rnd() % 26);
            val[i][vl] = '\0';
            n += snprintf(req + n, sizeof req - (size_t)n, "%s:%s%s%s\r\n", name[i], rnd() % 2 ? " " : "", val[i],
                          rnd() % 2 ? " \t" : "");
        }
        n += snprintf(req + n, sizeof req - (size_t)n, "\r\nBODY");
        size_t head_len = (size_t)n - 4;
        /* every prefix before the blank line is "need more" */
        int incomplete_ok = 1;
        for (size_t k = 0; k < head_len; k += 1 + rnd() % 7) {
            char tmp[4096];
            memcpy(tmp, req, k);
            lf_http_head h;
            int st = 0;
            char msg[160];
            if (lf_http_parse_head(tmp, k, 8192, 65536, &h, &st, msg, sizeof msg) != 0) incomplete_ok = 0;
        }
        CHECK(incomplete_ok, "prefixes of a valid head are incomplete (case %d)", it);
        lf_http_head h;
        int st = 0;
        char msg[160] = "";
        int64_t r = parse(req, &h, &st, msg);
        CHECK(r == (int64_t)head_len, "head length %lld want %zu (%s)", (long long)r, head_len, msg);
        if (r <= 0) continue;
        CHECK(strcmp(h.method, m) == 0 && h.minor == minor, "method %s minor %d", h.method, h.minor);
        CHECK(strncmp(h.path, "/p", 2) == 0 && strstr(h.path, "/x") && !strchr(h.path, '?'), "path %s", h.path);
        CHECK(h.narg == 3 && strcmp(h.arg[1].value, "c d") == 0 && strcmp(h.arg[2].name, "flag") == 0 &&
                  strcmp(h.arg[2].value, "") == 0,
              "query args (%zu)", h.narg);
        int fields_ok = h.nfield == (size_t)nf;
        for (int i = 0; fields_ok && i < nf; i++) {
            const char *v = lf_http_head_field(&h, name[i]);
            fields_ok = v && strcmp(v, val[i]) == 0;
        }
        CHECK(fields_ok, "fields as sent, trimmed (case %d)", it);
        CHECK(h.keep_alive == (minor == 1) && h.content_length == -1 && !h.chunked, "defaults");
    }
}

static void test_fields(void) {
    lf_http_head h;
    int st;
    char msg[160];
    CHECK(parse("GET /a%20b%2Fc HTTP/1.1\r\ncontent-length: 12\r\nConnection: keep-alive, Close\r\n"
                "Expect: 100-Continue\r\n\r\n", &h, &st, msg) > 0 &&
              strcmp(h.path, "/a b/c") == 0 && h.content_length == 12 && !h.keep_alive && h.expect_continue,
          "decoded path, case-insensitive names, Connection token list");
    CHECK(parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", &h, &st, msg) > 0 && h.chunked, "chunked");
    CHECK(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &h, &st, msg) > 0 && h.keep_alive, "1.0 keep-alive");
    CHECK(parse("GET http://host:80/x/y?q=1 HTTP/1.1\r\n\r\n", &h, &st, msg) > 0 && strcmp(h.path, "/x/y") == 0 &&
              h.narg == 1,
          "absolute-form");
    CHECK(parse("GET http://host HTTP/1.1\r\n\r\n", &h, &st, msg) > 0 && strcmp(h.path, "/") == 0, "absolute-form, no path");
    CHECK(parse("GET /x HTTP/1.1\nHost: y\n\n", &h, &st, msg) > 0 && strcmp(lf_http_head_field(&h, "host"), "y") == 0,
          "bare LF line ends");
    CHECK(parse("GET /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", &h, &st, msg) > 0 &&
              h.content_length == 5,
          "repeated equal Content-Length");
}

static void test_rejects(void) {
    static const struct {
        const char *in;
        int status;
    } bad[] = {
        {"GET\r\n\r\n", 400},
        {"GET /x\r\n\r\n", 400},
        {"G(T /x HTTP/1.1\r\n\r\n", 400},
        {"GET x HTTP/1.1\r\n\r\n", 400},
        {"GET /x HTTP/1.1 junk\r\n\r\n", 400},
        {"GET /x HTTP/2.0\r\n\r\n", 505},
        {"GET /x HTTX/1.1\r\n\r\n", 400},
        {"GET /%zz HTTP/1.1\r\n\r\n", 400},
        {"GET /%00 HTTP/1.1\r\n\r\n", 400},
        {"GET /x HTTP/1.1\r\n folded\r\n\r\n", 400},
        {"GET /x HTTP/1.1\r\nNo colon\r\n\r\n", 400},
        {"GET /x HTTP/1.1\r\nBad Name: v\r\n\r\n", 400},
        {"GET /x HTTP/1.1\r\n: v\r\n\r\n", 400},
        {"GET /x HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400},
        {"POST /x HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400},
        {"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400},
        {"POST /x HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 400},
        {"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400},
        {"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
        {"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501},
        {"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400},
        {"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lf_http_head h;
        int st = 0;
        char msg[160] = "";
        int64_t r = parse(bad[i].in, &h, &st, msg);
        CHECK(r == -1 && st == bad[i].status && msg[0], "reject %zu: r %lld status %d want %d (%s)", i, (long long)r, st,
              bad[i].status, msg);
    }
    /* limits, also while the head is still incomplete */
    static char big[80000];
    memset(big, 'a', sizeof big - 1);
    memcpy(big, "GET /", 5);
    lf_http_head h;
    int st = 0;
    char msg[160];
    CHECK(lf_http_parse_head(big, 9000, 8192, 65536, &h, &st, msg, sizeof msg) == -1 && st == 414, "414 incomplete");
    memcpy(big, "GET / HTTP/1.1\r\nX: ", 19);
    CHECK(lf_http_parse_head(big, 70000, 8192, 65536, &h, &st, msg, sizeof msg) == -1 && st == 431, "431 incomplete");
    char many[8192];
    size_t n = (size_t)snprintf(many, sizeof many, "GET / HTTP/1.1\r\n");
    for (int i = 0; i <= LF_HTTP_MAX_HEADERS; i++) n += (size_t)snprintf(many + n, sizeof many - n, "X-%d: 1\r\n", i);
    snprintf(many + n, sizeof many - n, "\r\n");
    CHECK(parse(many, &h, &st, msg) == -1 && st == 431, "431: more than %d fields", LF_HTTP_MAX_HEADERS);
}

typedef struct sink {
    char buf[1 << 16];
    size_t len;
} sink;

static void sink_out(void *u, const char *d, size_t n) {
    sink *s = u;
    if (s->len + n <= sizeof s->buf) memcpy(s->buf + s->len, d, n);
    s->len += n;
}

static void test_chunked(void) {
    for (int it = 0; it < 400; it++) {
        char body[8192], enc[20000];
        size_t bl = rnd() % 4000, en = 0;
        for (size_t i = 0; i < bl; i++) body[i] = (char)(rnd() & 0xff);
        for (size_t off = 0; off < bl;) {
            size_t c = 1 + rnd() % 700;
            if (c > bl - off) c = bl - off;
            en += (size_t)snprintf(enc + en, sizeof enc - en, rnd() % 2 ? "%zx" : "%zX", c);
            if (rnd() % 4 == 0) en += (size_t)snprintf(enc + en, sizeof enc - en, ";ext=%u", rnd() % 9);
            en += (size_t)snprintf(enc + en, sizeof enc - en, "\r\n");
            memcpy(enc + en, body + off, c);
            en += c;
            en += (size_t)snprintf(enc + en, sizeof enc - en, "\r\n");
            off += c;
        }
        en += (size_t)snprintf(enc + en, sizeof enc - en, "0\r\n");
        if (rnd() % 3 == 0) en += (size_t)snprintf(enc + en, sizeof enc - en, "X-Trailer: %u\r\n", rnd() % 99);
        en += (size_t)snprintf(enc + en, sizeof enc - en, "\r\n");
        size_t total = en;
        en += (size_t)snprintf(enc + en, sizeof enc - en, "GET /next");
        /* feed in random pieces */
        lf_http_chunked c;
        memset(&c, 0, sizeof c);
        static sink s;
        s.len = 0;
        size_t pos = 0;
        int err = 0;
        while (pos < en && !c.done) {
            size_t piece = 1 + rnd() % 300;
            if (piece > en - pos) piece = en - pos;
            char msg[160];
            int64_t k = lf_http_chunked_feed(&c, enc + pos, piece, sink_out, &s, msg, sizeof msg);
            if (k < 0) {
                err = 1;
                printf("  decode error: %s\n", msg);
                break;
            }
            pos += (size_t)k;
            if ((size_t)k < piece && !c.done) {
                err = 1;
                break;
            }
        }
        CHECK(!err && c.done && pos == total && s.len == bl && memcmp(s.buf, body, bl) == 0,
              "chunked case %d: done %d consumed %zu/%zu decoded %zu/%zu", it, c.done, pos, total, s.len, bl);
    }
    static const char *bad[] = {"zz\r\n", "\r\n", "5\r\nabcdeXX", "5\r\nabcde\r\r", "ffffffffffffffff\r\n",
                                "0\r\nX\rY"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lf_http_chunked c;
        memset(&c, 0, sizeof c);
        char msg[160] = "";
        int64_t k = lf_http_chunked_feed(&c, bad[i], strlen(bad[i]), NULL, NULL, msg, sizeof msg);
        CHECK(k == -1 && msg[0], "bad chunked %zu rejected (%lld)", i, (long long)k);
    }
}

int main(void) {
    const char *env = getenv("LF_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    printf("test_http_parse: seed %llu (LF_TEST_SEED to reproduce)\n", (unsigned long long)seed);
    g_rng = seed * 2654435761u + 88172645463325252ull;
    if (!g_rng) g_rng = 1;
    test_valid_heads();
    test_fields();
    test_rejects();
    test_chunked();
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
