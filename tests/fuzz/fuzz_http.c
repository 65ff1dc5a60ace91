/* fuzz_http.c - libFuzzer target: the HTTP/1.x request-head parser and the chunked body decoder of the
 * serve endpoint (serve/http_parse.c), i.e. every byte a client sends before a handler runs. The input is
 * parsed as a head at every length (a prefix must be "incomplete" or an error, never read past its end);
 * what follows a complete head is fed to the chunked decoder in two pieces split by the first byte.
 * Invariants checked (a violation traps): a complete head's length is <= the input; errors carry a status
 * in {400, 414, 431, 501, 505} and a message; a parsed head has a method, a path starting with '/' (or "*")
 * without NUL, and at most LF_HTTP_MAX_HEADERS fields; the decoder never consumes more than it was given
 * and never outputs more bytes than it consumed.
 * sources: serve/http_parse.c
 * pkg:
 * Build by hand: clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -I. \
 *   tests/fuzz/fuzz_http.c serve/http_parse.c -o /tmp/fuzz_http */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "serve/http_parse.h"

#define REQUIRE(c)                  \
    do {                            \
        if (!(c)) __builtin_trap(); \
    } while (0)

static size_t g_out;
static void out(void *u, const char *d, size_t n) {
    (void)u;
    (void)d;
    g_out += n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > (1 << 17)) return 0;
    char *buf = malloc(size + 1);
    if (!buf) return 0;
    /* a short prefix first (incomplete or error), then the whole input */
    size_t cut = size ? data[0] % (size + 1) : 0;
    for (int pass = 0; pass < 2; pass++) {
        size_t n = pass ? size : cut;
        memcpy(buf, data, n);
        buf[n] = '\0';
        lf_http_head h;
        int st = 0;
        char msg[160] = "";
        int64_t r = lf_http_parse_head(buf, n, 1024, 4096, &h, &st, msg, sizeof msg);
        if (r < 0) {
            REQUIRE(msg[0] && (st == 400 || st == 414 || st == 431 || st == 501 || st == 505));
            continue;
        }
        if (r == 0) continue;
        REQUIRE((size_t)r <= n);
        REQUIRE(h.method && h.method[0] && h.path && (h.path[0] == '/' || strcmp(h.path, "*") == 0));
        REQUIRE(h.nfield <= LF_HTTP_MAX_HEADERS && h.narg <= LF_HTTP_MAX_ARGS);
        for (size_t i = 0; i < h.nfield; i++) REQUIRE(h.field[i].name[0] && h.field[i].value);
        (void)lf_http_head_field(&h, "content-length");
        if (pass) { /* the rest as a chunked body */
            const char *rest = (const char *)data + r;
            size_t rl = size - (size_t)r, first = rl ? (size_t)(uint8_t)rest[0] % (rl + 1) : 0;
            lf_http_chunked c;
            memset(&c, 0, sizeof c);
            g_out = 0;
            int64_t k1 = lf_http_chunked_feed(&c, rest, first, out, NULL, msg, sizeof msg);
            REQUIRE(k1 <= (int64_t)first);
            if (k1 >= 0 && !c.done) {
                int64_t k2 = lf_http_chunked_feed(&c, rest + k1, rl - (size_t)k1, out, NULL, msg, sizeof msg);
                REQUIRE(k2 <= (int64_t)(rl - (size_t)k1));
                if (k2 >= 0) REQUIRE(g_out <= (size_t)(k1 + k2));
            }
        }
    }
    free(buf);
    return 0;
}
