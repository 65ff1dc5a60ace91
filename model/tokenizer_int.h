/* tokenizer_int.h - internals shared by tokenizer.c (load, added tokens, encode/decode pipeline, stream),
 * tokenizer_pre.c (strings, regex, normalizers, pre-tokenizers) and tokenizer_bpe.c (the BPE model).
 *
 * Not a public header: only the three tokenizer_*.c files include it.
 *
 * Invariant: everything reachable from lf_tokenizer is immutable after lf_tokenizer_load returns; an encode
 * or decode call keeps all its mutable state (pieces, buffers, word cache, PCRE2 match data) in per-call
 * scratch, so concurrent calls on one tokenizer are safe. Strings inside the pipeline are always valid
 * UTF-8 (input is made valid first, see tokenizer.h). */
#ifndef LF_MODEL_TOKENIZER_INT_H
#define LF_MODEL_TOKENIZER_INT_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "model/tokenizer.h"

/* ---------------------------------------------------------------- growable byte buffer */
typedef struct tk_buf {
    char *data;
    size_t len, cap;
} tk_buf;

lf_status tk_buf_reserve(tk_buf *b, size_t extra);
lf_status tk_buf_put(tk_buf *b, const void *p, size_t n);
void tk_buf_free(tk_buf *b);

/* ---------------------------------------------------------------- UTF-8 */
/* Decode the code point at s[i] of valid UTF-8; returns its byte length (1..4). */
int tk_utf8_next(const char *s, size_t n, size_t i, int32_t *cp);
/* Length of the code point ending right before s[i] (i > 0). */
int tk_utf8_prev_len(const char *s, size_t i);
/* Encode cp into out[4]; returns byte length. */
int tk_utf8_put(int32_t cp, char *out);
/* Append s with every invalid sequence replaced by U+FFFD, exactly as Rust String::from_utf8_lossy
 * (and Python bytes.decode("utf-8", "replace")): one U+FFFD per maximal invalid subpart. */
lf_status tk_utf8_lossy(const char *s, size_t n, tk_buf *out);
/* 1 when s[0..n) is valid UTF-8. */
int tk_utf8_valid(const char *s, size_t n);
/* Rust char::is_whitespace (Unicode White_Space). */
int tk_is_whitespace(int32_t cp);
/* Rust char::is_alphanumeric (approximated: L*, N*, Mc). */
int tk_is_alnum(int32_t cp);

/* ---------------------------------------------------------------- string -> int32 hash map */
typedef struct tk_smap_ent {
    uint64_t hash;  /* 0 = empty slot */
    size_t off;     /* key bytes in pool */
    uint32_t len;
    int32_t val;
} tk_smap_ent;

typedef struct tk_smap {
    tk_smap_ent *slots;
    size_t cap, n; /* cap is a power of two */
    tk_buf pool;
} tk_smap;

/* Returns a pointer to the value for key, or NULL. */
const int32_t *tk_smap_get(const tk_smap *m, const char *k, size_t n);
/* Insert or overwrite. */
lf_status tk_smap_set(tk_smap *m, const char *k, size_t n, int32_t v);
void tk_smap_free(tk_smap *m);

/* ---------------------------------------------------------------- patterns (Split, Replace) */
typedef struct tk_pattern {
    int is_regex;
    char *str; /* String pattern bytes (NUL-terminated copy) or the regex source */
    size_t len;
    pcre2_code *re;
} tk_pattern;

/* Parse {"String": s} | {"Regex": r}; ctx names the component in errors. */
lf_status tk_pattern_parse(const json_t *j, tk_pattern *p, const char *ctx, lf_err *err);
void tk_pattern_free(tk_pattern *p);

/* A match list covering a string: [start, end) with is_match. */
typedef struct tk_span {
    size_t start, end;
    int is_match;
} tk_span;

typedef struct tk_spans {
    tk_span *v;
    size_t n, cap;
} tk_spans;

/* tokenizers' Pattern::find_matches for a string/regex pattern (onig find_iter semantics). */
lf_status tk_pattern_find(const tk_pattern *p, const char *s, size_t n, pcre2_match_data *md, tk_spans *out, lf_err *err);

/* ---------------------------------------------------------------- pieces (PreTokenizedString splits) */
typedef struct tk_piece {
    size_t off, len; /* bytes in the owning tk_pieces.text */
    int32_t id;      /* >= 0: already a token (added token), never split or tokenized again */
    int first;       /* the piece starts at original offset 0 (Metaspace prepend_scheme "first") */
} tk_piece;

typedef struct tk_pieces {
    tk_buf text;
    tk_piece *v;
    size_t n, cap;
} tk_pieces;

lf_status tk_pieces_push(tk_pieces *p, const char *s, size_t n, int32_t id, int first);
void tk_pieces_reset(tk_pieces *p);
void tk_pieces_free(tk_pieces *p);

/* ---------------------------------------------------------------- normalizers */
enum {
    TK_NORM_SEQUENCE,
    TK_NORM_PREPEND,
    TK_NORM_REPLACE,
    TK_NORM_NFC,
    TK_NORM_NFD,
    TK_NORM_NFKC,
    TK_NORM_NFKD,
    TK_NORM_LOWERCASE,
    TK_NORM_STRIP,
    TK_NORM_STRIP_ACCENTS,
};

typedef struct tk_normalizer {
    int kind;
    struct tk_normalizer *children; /* Sequence */
    size_t n_children;
    tk_pattern pattern;   /* Replace */
    char *content;        /* Replace content, Prepend prepend */
    size_t content_len;
    int strip_left, strip_right;
} tk_normalizer;

lf_status tk_normalizer_parse(const json_t *j, tk_normalizer *n, const char *ctx, lf_err *err);
void tk_normalizer_free(tk_normalizer *n);
/* Normalize s[0..len) into out (reset first). md: per-call PCRE2 match data. */
lf_status tk_normalize(const tk_normalizer *n, const char *s, size_t len, tk_buf *out, pcre2_match_data *md,
                       lf_err *err);

/* ---------------------------------------------------------------- pre-tokenizers */
enum {
    TK_PRE_SEQUENCE,
    TK_PRE_SPLIT,
    TK_PRE_BYTELEVEL,
    TK_PRE_METASPACE,
    TK_PRE_DIGITS,
    TK_PRE_PUNCTUATION,
    TK_PRE_WHITESPACE,
    TK_PRE_WHITESPACE_SPLIT,
};

enum { TK_SPLIT_REMOVED, TK_SPLIT_ISOLATED, TK_SPLIT_MERGED_PREV, TK_SPLIT_MERGED_NEXT, TK_SPLIT_CONTIGUOUS };
enum { TK_PREPEND_ALWAYS, TK_PREPEND_FIRST, TK_PREPEND_NEVER };

typedef struct tk_pretok {
    int kind;
    struct tk_pretok *children;
    size_t n_children;
    tk_pattern pattern; /* Split */
    int behavior, invert;
    int add_prefix_space, use_regex; /* ByteLevel */
    int32_t replacement;             /* Metaspace */
    char repl_utf8[5];
    int repl_len;
    int prepend_scheme, split;
    int individual_digits; /* Digits */
} tk_pretok;

lf_status tk_pretok_parse(const json_t *j, tk_pretok *p, const char *ctx, lf_err *err);
void tk_pretok_free(tk_pretok *p);
/* Pre-tokenize every piece of *io without an id; *io is replaced by the result, tmp is scratch. */
lf_status tk_pretokenize(const tk_pretok *p, tk_pieces **io, tk_pieces **tmp, pcre2_match_data *md, lf_err *err);

/* The GPT-2 regex, compiled once at load (shared by ByteLevel pre-tokenizers). */
lf_status tk_regex_compile(const char *src, pcre2_code **out, const char *ctx, lf_err *err);
extern const char TK_GPT2_REGEX[];
/* ByteLevel byte -> code point table (GPT-2 bytes_to_unicode). */
int32_t tk_byte_to_cp(uint8_t b);
/* Inverse: code point -> byte, or -1. */
int tk_cp_to_byte(int32_t cp);

/* ---------------------------------------------------------------- BPE model */
typedef struct tk_bpe {
    tk_smap vocab;        /* token -> id */
    size_t *id_off;       /* [n_ids] token bytes at vocab.pool.data + id_off[i] */
    uint32_t *id_len;     /* [n_ids] byte length, UINT32_MAX for ids absent from the vocab */
    int32_t n_ids;        /* max id + 1 */
    int64_t vocab_count;  /* number of vocab entries */
    /* merges: open addressing on (a << 32 | b) -> (rank, new_id) */
    uint64_t *mkeys;      /* key + 1 (0 = empty) */
    int32_t *mrank, *mnew;
    size_t mcap;
    char *unk_token;
    char *prefix, *suffix; /* continuing_subword_prefix, end_of_word_suffix (NULL = none) */
    size_t prefix_len, suffix_len;
    int fuse_unk, byte_fallback, ignore_merges;
    int32_t byte_ids[256]; /* <0xXX> ids or -1 */
} tk_bpe;

lf_status tk_bpe_parse(const json_t *model, tk_bpe *b, const char *ctx, lf_err *err);
void tk_bpe_free(tk_bpe *b);

/* Per-call word cache + scratch for BPE. */
typedef struct tk_bpe_scratch {
    tk_smap cache;    /* word -> index into spans */
    int64_t *cspan;   /* [2 * n] (offset, count) into cids */
    size_t ncspan, capcspan;
    int32_t *cids;
    size_t ncids, capcids;
    void *sym;        /* symbols work array */
    size_t symcap;
    void *heap;
    size_t heapcap;
    tk_buf tmp;       /* prefix/suffix + char lookups */
} tk_bpe_scratch;

void tk_bpe_scratch_free(tk_bpe_scratch *s);
/* Tokenize one pre-token; appends ids to *ids (growable, *n used, *cap allocated). */
lf_status tk_bpe_tokenize(const tk_bpe *b, const char *s, size_t n, tk_bpe_scratch *sc, int32_t **ids, int64_t *nids,
                          size_t *cap, lf_err *err);

#endif
