/* fuzz_tokenizer.c - libFuzzer target: tokenizer.json + tokenizer_config.json + special_tokens_map.json
 * loading (model/tokenizer*.c), then encode/decode/stream-decode of fuzz text. The first byte picks the mode
 * (bit 0), add_special for the encode (bit 1) and, in the odd mode, the tokenizer (bits 2-4):
 *   even: the rest is tokenizer.json LF_FUZZ_SEP tokenizer_config.json LF_FUZZ_SEP special_tokens_map.json
 *         LF_FUZZ_SEP text (missing parts are absent files / a fixed text); a tokenizer that loads encodes and
 *         decodes the text;
 *   odd:  the rest is text (first 1 KiB), encoded and decoded by one of the small valid tokenizers loaded once
 *         at start (tests/fuzz/data/tokenizer-*: trimmed copies of the real files in ../shared/data/tokenizers,
 *         made by tests/fuzz/make_seeds.py), picked by bits 2-4 of the first byte modulo their count, plus ids
 *         taken from the same bytes decoded. (All five per input made an execution about 5x slower for the same
 *         coverage per tokenizer.)
 * Invariants (a violation traps): a failed load has a message; encode succeeds on any bytes and every id is in
 * [0, vocab_size); decode succeeds, is NUL-terminated valid UTF-8 of the reported length; stream pieces
 * concatenate to decode's text; token_to_id(id_to_token(id)) names a token with the same text.
 * sources: model/tokenizer*.c core/json.c core/fileio.c core/status.c
 * pkg: jansson libpcre2-8 libutf8proc
 * Build and run: scripts/fuzz.sh [SECONDS] tokenizer (docs/fuzzing.md). */
#include <dirent.h>
#include <stdint.h>
#include <string.h>

#include "model/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

#ifndef LF_FUZZ_ROOT
#define LF_FUZZ_ROOT "." /* scripts/fuzz.sh passes the repository root */
#endif

#define MAX_STATIC 8
static lf_tokenizer *fixed[MAX_STATIC];
static int n_fixed;
static char dir_load[512];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    lf_fuzz_subdir(dir_load, sizeof dir_load, "tok");
    const char *base = LF_FUZZ_ROOT "/tests/fuzz/data";
    DIR *d = opendir(base);
    if (d) {
        struct dirent *e;
        char p[1024];
        while ((e = readdir(d)) != NULL && n_fixed < MAX_STATIC) {
            if (strncmp(e->d_name, "tokenizer-", 10) != 0) continue;
            snprintf(p, sizeof p, "%s/%s", base, e->d_name);
            lf_err err;
            if (lf_tokenizer_load(p, &fixed[n_fixed], &err) != LF_OK) {
                fprintf(stderr, "fuzz_tokenizer: %s does not load: %s\n", p, err.msg);
                abort();
            }
            n_fixed++;
        }
        closedir(d);
    }
    if (n_fixed == 0) {
        fprintf(stderr, "fuzz_tokenizer: no tokenizer under %s (run from the repository root)\n", base);
        abort();
    }
    return 0;
}

static int utf8_valid(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k;
        unsigned cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) k = 1, cp = c & 0x1F, min = 0x80;
        else if ((c & 0xF0) == 0xE0) k = 2, cp = c & 0x0F, min = 0x800;
        else if ((c & 0xF8) == 0xF0) k = 3, cp = c & 0x07, min = 0x10000;
        else return 0;
        if (n - i <= k) return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += k + 1;
    }
    return 1;
}

/* decode ids[n] both ways, and stream-decode them: the pieces must add up to the decoded text */
static void check_decode(const lf_tokenizer *t, const int32_t *ids, int64_t n) {
    lf_err err;
    if (n > 24) n = 24; /* the stream re-decodes its window each push (quadratic while held): keep it short */
    for (int skip = 0; skip < 2; skip++) {
        char *text = NULL;
        size_t len = 0;
        REQUIRE(lf_tokenizer_decode(t, ids, n, skip, &text, &len, &err) == LF_OK);
        REQUIRE(text && strlen(text) <= len && text[len] == '\0' && utf8_valid((unsigned char *)text, len));
        lf_tokenizer_stream *s = NULL;
        REQUIRE(lf_tokenizer_stream_create(t, skip, &s, &err) == LF_OK);
        size_t at = 0;
        for (int64_t i = 0; i <= n; i++) {
            const char *piece;
            size_t pl;
            if (i < n) REQUIRE(lf_tokenizer_stream_push(s, ids[i], &piece, &pl, &err) == LF_OK);
            else REQUIRE(lf_tokenizer_stream_flush(s, &piece, &pl, &err) == LF_OK);
            if (at + pl > len || (pl > 0 && memcmp(text + at, piece, pl) != 0)) {
                fprintf(stderr, "stream piece %lld (id %d, skip %d) at %zu: '%.*s' is not in decode's '%s'\n",
                        (long long)i, i < n ? ids[i] : -1, skip, at, (int)pl, piece, text);
                __builtin_trap();
            }
            at += pl;
        }
        if (at != len) {
            fprintf(stderr, "stream gave %zu bytes, decode %zu ('%s', skip %d)\n", at, len, text, skip);
            __builtin_trap();
        }
        lf_tokenizer_stream_free(s);
        free(text);
    }
}

static void check_tokenizer(const lf_tokenizer *t, const uint8_t *text, size_t len, int special) {
    lf_err err;
    int64_t V = lf_tokenizer_vocab_size(t);
    REQUIRE(V >= 0);
    {
        int32_t *ids = NULL;
        int64_t n = -1;
        REQUIRE(lf_tokenizer_encode(t, (const char *)text, len, special, &ids, &n, &err) == LF_OK);
        REQUIRE(ids != NULL && n >= 0);
        for (int64_t i = 0; i < n; i++) REQUIRE(ids[i] >= 0 && ids[i] < V);
        check_decode(t, ids, n);
        free(ids);
    }
    /* a few ids straight from the bytes, unknown ones included */
    int32_t raw[64];
    int64_t n = 0;
    for (size_t i = 0; i + 1 < len && n < 64; i += 2)
        raw[n++] = (int32_t)(((uint32_t)text[i] << 8 | text[i + 1]) % (uint32_t)(V + 8)) - 4;
    check_decode(t, raw, n);
    for (int64_t i = 0; i < n; i++) {
        size_t tl = 0;
        const char *tok = lf_tokenizer_id_to_token(t, raw[i], &tl);
        if (!tok) continue;
        int32_t back = lf_tokenizer_token_to_id(t, tok, tl);
        REQUIRE(back >= 0);
        size_t bl = 0;
        const char *bt = lf_tokenizer_id_to_token(t, back, &bl);
        REQUIRE(bt && bl == tl && memcmp(bt, tok, tl) == 0);
        (void)lf_tokenizer_is_special(t, raw[i]);
    }
    (void)lf_tokenizer_bos_id(t);
    (void)lf_tokenizer_eos_id(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int mode = data[0] & 1, special = (data[0] >> 1) & 1;
    data++, size--;
    if (mode == 1) {
        if (size > 1024) size = 1024;
        check_tokenizer(fixed[((data[-1] >> 2) & 7) % n_fixed], data, size, special);
        return 0;
    }
    const uint8_t *part[4];
    size_t len[4];
    char path[1024];
    int np = lf_fuzz_split(data, size, part, len, 4);
    static const char *const names[3] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"};
    for (int i = 0; i < 3; i++) {
        if (i < np) lf_fuzz_write(dir_load, names[i], part[i], len[i], path, sizeof path);
        else lf_fuzz_unlink(dir_load, names[i]);
    }
    lf_tokenizer *t = NULL;
    lf_err err;
    err.msg[0] = '\0';
    if (lf_tokenizer_load(dir_load, &t, &err) != LF_OK) {
        REQUIRE(t == NULL && err.msg[0] != '\0');
        return 0;
    }
    static const char fallback[] = "Hello, world! <s>  12345 caf\xc3\xa9 \xe2\x96\x81x\n\t</s>\xff";
    if (np == 4) check_tokenizer(t, part[3], len[3] < 1024 ? len[3] : 1024, special);
    else check_tokenizer(t, (const uint8_t *)fallback, sizeof fallback - 1, special);
    lf_tokenizer_free(t);
    return 0;
}
