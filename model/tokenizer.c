/* tokenizer.c - tokenizer.json loading, added-token matching, the encode pipeline, post-processors,
 * decoders and the streaming decoder. See tokenizer.h for what is supported and tokenizer_int.h for the
 * thread-safety invariant.
 *
 * encode (tokenizers 0.19 Tokenizer::encode):
 *   lossy UTF-8 -> split out non-normalized added tokens on the raw text -> normalize each remaining piece
 *   -> split out normalized added tokens -> pre-tokenize -> BPE per piece -> post-process (add_special). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "core/json.h"
#include "model/tokenizer_int.h"

/* ================================================================ added tokens + trie */
typedef struct added_tok {
    char *content;
    size_t len;
    int32_t id;
    int special, lstrip, rstrip, single_word, normalized;
} added_tok;

typedef struct trie_node {
    int32_t child;   /* first child or -1 */
    int32_t sibling; /* next sibling or -1 */
    int32_t tok;     /* index into added tokens when a pattern ends here, else -1 */
    uint8_t byte;
} trie_node;

typedef struct trie {
    trie_node *v;
    size_t n, cap;
} trie;

enum { PP_NONE, PP_TEMPLATE, PP_BYTELEVEL, PP_SEQUENCE };
enum { DEC_BYTELEVEL, DEC_METASPACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_REPLACE, DEC_BPE, DEC_SEQUENCE };

typedef struct postproc {
    int kind;
    struct postproc *children;
    size_t n_children;
    /* template: items; seq item = INT32_MIN marker, else a run of ids in ids[] */
    int32_t *ids;
    size_t n_ids; /* flattened: the single template as ids with -2 standing for $A */
} postproc;

typedef struct decoder {
    int kind;
    struct decoder *children;
    size_t n_children;
    tk_pattern pattern;
    char *content;
    size_t content_len;
    int32_t ch; /* Strip content / Metaspace replacement */
    int start, stop;
    int prepend_scheme;
} decoder;

struct lf_tokenizer {
    tk_normalizer *norm;
    tk_pretok *pre;
    tk_bpe bpe;
    added_tok *added;
    size_t n_added;
    tk_smap added_by_content; /* content -> index in added */
    int32_t *added_by_id;     /* [n_ids] index in added or -1 */
    tk_smap special_set;      /* contents of special tokens */
    trie raw_trie, norm_trie;
    postproc post;
    decoder *dec;
    int64_t n_ids;
    int32_t bos_id, eos_id;
    int split_special;
};

static lf_status trie_add(trie *t, const char *s, size_t n, int32_t tok) {
    if (t->n == 0) {
        t->cap = 64;
        t->v = malloc(t->cap * sizeof *t->v);
        if (!t->v) return LF_ENOMEM;
        t->v[t->n++] = (trie_node){-1, -1, -1, 0};
    }
    int32_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        int32_t c = t->v[cur].child;
        while (c >= 0 && t->v[c].byte != b) c = t->v[c].sibling;
        if (c < 0) {
            if (t->n == t->cap) {
                trie_node *q = realloc(t->v, t->cap * 2 * sizeof *q);
                if (!q) return LF_ENOMEM;
                t->v = q;
                t->cap *= 2;
            }
            c = (int32_t)t->n++;
            t->v[c] = (trie_node){-1, t->v[cur].child, -1, b};
            t->v[cur].child = c;
        }
        cur = c;
    }
    if (t->v[cur].tok < 0) t->v[cur].tok = tok; /* first pattern wins on duplicates */
    return LF_OK;
}

/* Longest pattern starting at s[i]; returns its length (0 = none) and token index. */
static size_t trie_longest(const trie *t, const char *s, size_t n, size_t i, int32_t *tok) {
    if (!t->n) return 0;
    int32_t cur = 0;
    size_t best = 0;
    for (size_t k = i; k < n; k++) {
        uint8_t b = (uint8_t)s[k];
        int32_t c = t->v[cur].child;
        while (c >= 0 && t->v[c].byte != b) c = t->v[c].sibling;
        if (c < 0) break;
        cur = c;
        if (t->v[cur].tok >= 0) best = k + 1 - i, *tok = t->v[cur].tok;
    }
    return best;
}

static int ends_with_word(const char *s, size_t n) {
    if (!n) return 0;
    int32_t cp;
    tk_utf8_next(s, n, n - (size_t)tk_utf8_prev_len(s, n), &cp);
    return tk_is_alnum(cp);
}

static int starts_with_word(const char *s, size_t n) {
    if (!n) return 0;
    int32_t cp;
    tk_utf8_next(s, n, 0, &cp);
    return tk_is_alnum(cp);
}

/* AddedVocabulary::find_matches + split_with_indices: split s into pieces (tokens carry their id). */
static lf_status split_added(const lf_tokenizer *t, const trie *tr, const char *s, size_t n, int first, tk_pieces *out) {
    size_t start_offset = 0;
    for (size_t i = 0; i < n;) {
        int32_t ti = -1;
        size_t ml = trie_longest(tr, s, n, i, &ti);
        if (!ml) {
            i++;
            continue;
        }
        const added_tok *a = &t->added[ti];
        size_t start = i, stop = i + ml;
        i = stop; /* the automaton resumes at the match end, whatever strip does below */
        if (t->split_special && a->special) continue;
        if (a->single_word) {
            int start_space = start == 0 || !ends_with_word(s, start);
            int stop_space = stop == n || !starts_with_word(s + stop, n - stop);
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                int k = tk_utf8_prev_len(s, ns);
                int32_t cp;
                tk_utf8_next(s, n, ns - (size_t)k, &cp);
                if (!tk_is_whitespace(cp)) break;
                ns -= (size_t)k;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip) {
            while (stop < n) {
                int32_t cp;
                int k = tk_utf8_next(s, n, stop, &cp);
                if (!tk_is_whitespace(cp)) break;
                stop += (size_t)k;
            }
        }
        if (start_offset < start && tk_pieces_push(out, s + start_offset, start - start_offset, -1, first && start_offset == 0))
            return LF_ENOMEM;
        if (tk_pieces_push(out, s + start, stop - start, a->id, first && start == 0)) return LF_ENOMEM;
        start_offset = stop;
    }
    if (start_offset < n && tk_pieces_push(out, s + start_offset, n - start_offset, -1, first && start_offset == 0))
        return LF_ENOMEM;
    return LF_OK;
}

/* ================================================================ load */
static lf_status parse_added(lf_tokenizer *t, const json_t *arr, const char *ctx, lf_err *err) {
    if (!arr || json_is_null(arr)) return LF_OK;
    if (!json_is_array(arr)) return lf_err_set(err, LF_EFORMAT, "%s: added_tokens must be an array", ctx);
    t->added = calloc(json_array_size(arr) + 1, sizeof *t->added);
    if (!t->added) return lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
    for (size_t i = 0; i < json_array_size(arr); i++) {
        const json_t *o = json_array_get(arr, i);
        const json_t *c = json_object_get(o, "content"), *id = json_object_get(o, "id");
        if (!json_is_string(c) || !json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) > INT32_MAX - 1)
            return lf_err_set(err, LF_EFORMAT, "%s: added_tokens[%zu] needs a string \"content\" and an integer \"id\"", ctx, i);
        if (json_string_length(c) == 0) continue;
        added_tok *a = &t->added[t->n_added];
        a->len = json_string_length(c);
        a->content = malloc(a->len + 1);
        if (!a->content) return lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
        memcpy(a->content, json_string_value(c), a->len + 1);
        a->id = (int32_t)json_integer_value(id);
        a->special = json_is_true(json_object_get(o, "special"));
        a->lstrip = json_is_true(json_object_get(o, "lstrip"));
        a->rstrip = json_is_true(json_object_get(o, "rstrip"));
        a->single_word = json_is_true(json_object_get(o, "single_word"));
        const json_t *nz = json_object_get(o, "normalized");
        a->normalized = nz ? json_is_true(nz) : !a->special;
        if (tk_smap_set(&t->added_by_content, a->content, a->len, (int32_t)t->n_added) ||
            (a->special && tk_smap_set(&t->special_set, a->content, a->len, 1)))
            return lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
        t->n_added++;
    }
    return LF_OK;
}

static lf_status build_tries(lf_tokenizer *t, const char *ctx, lf_err *err) {
    tk_buf nb = {0};
    lf_status st = LF_OK;
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md) return lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
    /* tokenizers builds the automata from special tokens first, then the others */
    for (int pass = 0; pass < 2 && !st; pass++)
        for (size_t i = 0; i < t->n_added && !st; i++) {
            const added_tok *a = &t->added[i];
            if (a->special != (pass == 0)) continue;
            const int32_t *last = tk_smap_get(&t->added_by_content, a->content, a->len);
            if (!last || *last != (int32_t)i) continue; /* a later duplicate replaced this one */
            if (!a->normalized) {
                if (trie_add(&t->raw_trie, a->content, a->len, (int32_t)i)) st = lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
                continue;
            }
            const char *p = a->content;
            size_t pl = a->len;
            if (t->norm) {
                if ((st = tk_normalize(t->norm, a->content, a->len, &nb, md, err))) break;
                p = nb.data, pl = nb.len;
            }
            if (pl && trie_add(&t->norm_trie, p, pl, (int32_t)i)) st = lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
        }
    tk_buf_free(&nb);
    pcre2_match_data_free(md);
    return st;
}

static int32_t lookup_special(const lf_tokenizer *t, const char *name) {
    return lf_tokenizer_token_to_id(t, name, strlen(name));
}

static lf_status parse_post(lf_tokenizer *t, const json_t *j, postproc *p, const char *ctx, lf_err *err) {
    memset(p, 0, sizeof *p);
    if (!j || json_is_null(j)) return LF_OK;
    const json_t *ty = json_object_get(j, "type");
    const char *type = json_is_string(ty) ? json_string_value(ty) : NULL;
    if (!type) return lf_err_set(err, LF_EFORMAT, "%s: post_processor without a \"type\"", ctx);
    if (!strcmp(type, "ByteLevel")) return p->kind = PP_BYTELEVEL, LF_OK;
    if (!strcmp(type, "Sequence")) {
        const json_t *a = json_object_get(j, "processors");
        if (!json_is_array(a)) return lf_err_set(err, LF_EFORMAT, "%s: post_processor Sequence needs \"processors\"", ctx);
        p->kind = PP_SEQUENCE;
        p->children = calloc(json_array_size(a) + 1, sizeof *p->children);
        if (!p->children) return lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
        for (size_t i = 0; i < json_array_size(a); i++) {
            lf_status st = parse_post(t, json_array_get(a, i), &p->children[p->n_children++], ctx, err);
            if (st) return st;
        }
        return LF_OK;
    }
    p->kind = PP_TEMPLATE;
    if (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing")) { /* single: cls $A sep */
        const json_t *cls = json_object_get(j, "cls"), *sep = json_object_get(j, "sep");
        if (!json_is_array(cls) || !json_is_array(sep) || !json_is_integer(json_array_get(cls, 1)) ||
            !json_is_integer(json_array_get(sep, 1)))
            return lf_err_set(err, LF_EFORMAT, "%s: %s needs \"cls\" and \"sep\" as [token, id]", ctx, type);
        p->ids = malloc(3 * sizeof *p->ids);
        if (!p->ids) return lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
        p->ids[0] = (int32_t)json_integer_value(json_array_get(cls, 1));
        p->ids[1] = -2;
        p->ids[2] = (int32_t)json_integer_value(json_array_get(sep, 1));
        p->n_ids = 3;
        return LF_OK;
    }
    if (strcmp(type, "TemplateProcessing"))
        return lf_err_set(err, LF_EUNSUPPORTED, "%s: post_processor type \"%s\" is not supported", ctx, type);
    const json_t *single = json_object_get(j, "single"), *specials = json_object_get(j, "special_tokens");
    if (!json_is_array(single)) return lf_err_set(err, LF_EFORMAT, "%s: TemplateProcessing needs a \"single\" array", ctx);
    size_t cap = 8;
    p->ids = malloc(cap * sizeof *p->ids);
    if (!p->ids) return lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
    for (size_t i = 0; i < json_array_size(single); i++) {
        const json_t *it = json_array_get(single, i), *v;
        if ((v = json_object_get(it, "Sequence"))) {
            const json_t *id = json_object_get(v, "id");
            if (json_is_string(id) && strcmp(json_string_value(id), "A"))
                return lf_err_set(err, LF_EUNSUPPORTED, "%s: TemplateProcessing single template uses sequence \"%s\"", ctx,
                                  json_string_value(id));
            if (p->n_ids == cap) {
                int32_t *q = realloc(p->ids, (cap *= 2) * sizeof *q);
                if (!q) return lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
                p->ids = q;
            }
            p->ids[p->n_ids++] = -2;
        } else if ((v = json_object_get(it, "SpecialToken"))) {
            const json_t *id = json_object_get(v, "id");
            const json_t *sp = json_is_string(id) ? json_object_get(specials, json_string_value(id)) : NULL;
            const json_t *ids = sp ? json_object_get(sp, "ids") : NULL;
            if (!json_is_array(ids))
                return lf_err_set(err, LF_EFORMAT, "%s: TemplateProcessing special token \"%s\" is missing from special_tokens",
                                  ctx, json_is_string(id) ? json_string_value(id) : "?");
            for (size_t k = 0; k < json_array_size(ids); k++) {
                if (p->n_ids == cap) {
                    int32_t *q = realloc(p->ids, (cap *= 2) * sizeof *q);
                    if (!q) return lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
                    p->ids = q;
                }
                p->ids[p->n_ids++] = (int32_t)json_integer_value(json_array_get(ids, k));
            }
        } else {
            return lf_err_set(err, LF_EFORMAT, "%s: TemplateProcessing item %zu is neither Sequence nor SpecialToken", ctx, i);
        }
    }
    (void)t;
    return LF_OK;
}

static void free_post(postproc *p) {
    for (size_t i = 0; i < p->n_children; i++) free_post(&p->children[i]);
    free(p->children);
    free(p->ids);
    memset(p, 0, sizeof *p);
}

static lf_status one_char(const json_t *v, int32_t def, int32_t *out, const char *ctx, const char *what, lf_err *err) {
    if (!v || json_is_null(v)) return *out = def, LF_OK;
    size_t n = json_is_string(v) ? json_string_length(v) : 0;
    const char *s = json_is_string(v) ? json_string_value(v) : "";
    if (n == 0 || n > 4 || !tk_utf8_valid(s, n) || tk_utf8_next(s, n, 0, out) != (int)n)
        return lf_err_set(err, LF_EFORMAT, "%s: %s must be a single character", ctx, what);
    return LF_OK;
}

static void free_decoder(decoder *d) {
    for (size_t i = 0; i < d->n_children; i++) free_decoder(&d->children[i]);
    free(d->children);
    tk_pattern_free(&d->pattern);
    free(d->content);
    memset(d, 0, sizeof *d);
}

static lf_status parse_decoder(const json_t *j, decoder *d, const char *ctx, lf_err *err) {
    memset(d, 0, sizeof *d);
    const json_t *ty = json_object_get(j, "type");
    const char *type = json_is_string(ty) ? json_string_value(ty) : NULL;
    if (!type) return lf_err_set(err, LF_EFORMAT, "%s: decoder without a \"type\"", ctx);
    if (!strcmp(type, "ByteLevel")) return d->kind = DEC_BYTELEVEL, LF_OK;
    if (!strcmp(type, "ByteFallback")) return d->kind = DEC_BYTEFALLBACK, LF_OK;
    if (!strcmp(type, "Fuse")) return d->kind = DEC_FUSE, LF_OK;
    if (!strcmp(type, "Metaspace")) {
        d->kind = DEC_METASPACE;
        lf_status st = one_char(json_object_get(j, "replacement"), 0x2581, &d->ch, ctx, "Metaspace replacement", err);
        if (st) return st;
        d->prepend_scheme = TK_PREPEND_ALWAYS;
        const json_t *ps = json_object_get(j, "prepend_scheme");
        if (json_is_string(ps)) {
            const char *s = json_string_value(ps);
            d->prepend_scheme = !strcmp(s, "never") ? TK_PREPEND_NEVER : !strcmp(s, "first") ? TK_PREPEND_FIRST : TK_PREPEND_ALWAYS;
        }
        if (json_is_false(json_object_get(j, "add_prefix_space"))) d->prepend_scheme = TK_PREPEND_NEVER;
        return LF_OK;
    }
    if (!strcmp(type, "Strip")) {
        d->kind = DEC_STRIP;
        lf_status st = one_char(json_object_get(j, "content"), ' ', &d->ch, ctx, "Strip content", err);
        if (st) return st;
        const json_t *a = json_object_get(j, "start"), *b = json_object_get(j, "stop");
        d->start = json_is_integer(a) ? (int)json_integer_value(a) : 0;
        d->stop = json_is_integer(b) ? (int)json_integer_value(b) : 0;
        return LF_OK;
    }
    if (!strcmp(type, "Replace")) {
        d->kind = DEC_REPLACE;
        lf_status st = tk_pattern_parse(json_object_get(j, "pattern"), &d->pattern, ctx, err);
        const json_t *c = json_object_get(j, "content");
        if (!st && !json_is_string(c)) st = lf_err_set(err, LF_EFORMAT, "%s: decoder Replace needs a string \"content\"", ctx);
        if (!st) {
            d->content_len = json_string_length(c);
            d->content = malloc(d->content_len + 1);
            if (!d->content) st = lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
            else memcpy(d->content, json_string_value(c), d->content_len + 1);
        }
        return st;
    }
    if (!strcmp(type, "BPEDecoder")) {
        d->kind = DEC_BPE;
        const json_t *c = json_object_get(j, "suffix");
        const char *s = json_is_string(c) ? json_string_value(c) : "</w>";
        d->content_len = strlen(s);
        d->content = malloc(d->content_len + 1);
        if (!d->content) return lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
        memcpy(d->content, s, d->content_len + 1);
        return LF_OK;
    }
    if (!strcmp(type, "Sequence")) {
        const json_t *a = json_object_get(j, "decoders");
        if (!json_is_array(a)) return lf_err_set(err, LF_EFORMAT, "%s: decoder Sequence needs \"decoders\"", ctx);
        d->kind = DEC_SEQUENCE;
        d->children = calloc(json_array_size(a) + 1, sizeof *d->children);
        if (!d->children) return lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
        for (size_t i = 0; i < json_array_size(a); i++) {
            lf_status st = parse_decoder(json_array_get(a, i), &d->children[d->n_children++], ctx, err);
            if (st) return st;
        }
        return LF_OK;
    }
    return lf_err_set(err, LF_EUNSUPPORTED, "%s: decoder type \"%s\" is not supported", ctx, type);
}

/* bos/eos from tokenizer_config.json: "str" or {"__type":"AddedToken","content":"str"}. */
static const char *token_str(const json_t *v) {
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_object(v) && json_is_string(json_object_get(v, "content"))) return json_string_value(json_object_get(v, "content"));
    return NULL;
}

static lf_status read_optional_json(const char *dir, const char *name, json_t **out, lf_err *err) {
    char path[4096];
    *out = NULL;
    lf_status st = lf_path_join(path, sizeof path, dir, name, err);
    if (st) return st;
    if (!lf_path_exists(path)) return LF_OK;
    /* not lf_json_load_file: model_max_length is often 1e30 written as an integer, too big for jansson ints */
    char *buf = NULL;
    size_t len = 0;
    if ((st = lf_file_read_all(path, &buf, &len, err))) return st;
    json_error_t je;
    *out = json_loadb(buf, len, JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL, &je);
    free(buf);
    if (!*out) return lf_err_set(err, LF_EFORMAT, "%s: invalid JSON at line %d column %d: %s", path, je.line, je.column, je.text);
    return LF_OK;
}

lf_status lf_tokenizer_load(const char *path_or_dir, lf_tokenizer **out, lf_err *err) {
    lf_status st = LF_OK;
    json_t *root = NULL, *cfg = NULL, *stm = NULL;
    char path[4096], dir[4096];
    *out = NULL;
    lf_tokenizer *t = calloc(1, sizeof *t);
    LF_CHECK_ALLOC(t, err);
    t->bos_id = t->eos_id = -1;
    if (lf_path_is_dir(path_or_dir)) {
        LF_TRY(lf_path_join(path, sizeof path, path_or_dir, "tokenizer.json", err));
        snprintf(dir, sizeof dir, "%s", path_or_dir);
    } else {
        snprintf(path, sizeof path, "%s", path_or_dir);
        snprintf(dir, sizeof dir, "%s", path_or_dir);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        else snprintf(dir, sizeof dir, ".");
    }
    if (!lf_path_exists(path)) {
        st = lf_err_set(err, LF_ENOTFOUND, "%s: no tokenizer.json found", path);
        goto fail;
    }
    LF_TRY(lf_json_load_file(path, &root, err));
    LF_TRY(read_optional_json(dir, "tokenizer_config.json", &cfg, err));
    LF_TRY(read_optional_json(dir, "special_tokens_map.json", &stm, err));

    const json_t *model = json_object_get(root, "model");
    const json_t *mt = json_object_get(model, "type");
    if (!json_is_object(model)) {
        st = lf_err_set(err, LF_EFORMAT, "%s: no \"model\" object", path);
        goto fail;
    }
    if (mt && !(json_is_string(mt) && !strcmp(json_string_value(mt), "BPE"))) {
        st = lf_err_set(err, LF_EUNSUPPORTED, "%s: model type \"%s\" is not supported (only BPE)", path,
                        json_is_string(mt) ? json_string_value(mt) : "?");
        goto fail;
    }
    if (!mt && !json_object_get(model, "merges")) {
        st = lf_err_set(err, LF_EUNSUPPORTED, "%s: model without \"type\" or \"merges\" is not supported (only BPE)", path);
        goto fail;
    }
    LF_TRY(tk_bpe_parse(model, &t->bpe, path, err));
    const json_t *v;
    if ((v = json_object_get(root, "normalizer")) && !json_is_null(v)) {
        t->norm = calloc(1, sizeof *t->norm);
        LF_CHECK_ALLOC(t->norm, err);
        if ((st = tk_normalizer_parse(v, t->norm, path, err))) {
            free(t->norm);
            t->norm = NULL;
            goto fail;
        }
    }
    if ((v = json_object_get(root, "pre_tokenizer")) && !json_is_null(v)) {
        t->pre = calloc(1, sizeof *t->pre);
        LF_CHECK_ALLOC(t->pre, err);
        if ((st = tk_pretok_parse(v, t->pre, path, err))) {
            free(t->pre);
            t->pre = NULL;
            goto fail;
        }
    }
    if ((v = json_object_get(root, "decoder")) && !json_is_null(v)) {
        t->dec = calloc(1, sizeof *t->dec);
        LF_CHECK_ALLOC(t->dec, err);
        LF_TRY(parse_decoder(v, t->dec, path, err));
    }
    LF_TRY(parse_added(t, json_object_get(root, "added_tokens"), path, err));
    t->n_ids = t->bpe.n_ids;
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].id + 1 > t->n_ids) t->n_ids = t->added[i].id + 1;
    t->added_by_id = malloc((size_t)(t->n_ids + 1) * sizeof *t->added_by_id);
    LF_CHECK_ALLOC(t->added_by_id, err);
    for (int64_t i = 0; i < t->n_ids; i++) t->added_by_id[i] = -1;
    for (size_t i = 0; i < t->n_added; i++) t->added_by_id[t->added[i].id] = (int32_t)i;
    LF_TRY(build_tries(t, path, err));
    LF_TRY(parse_post(t, json_object_get(root, "post_processor"), &t->post, path, err));

    /* tokenizer_config.json / special_tokens_map.json */
    const char *bos = NULL, *eos = NULL;
    if (cfg) bos = token_str(json_object_get(cfg, "bos_token")), eos = token_str(json_object_get(cfg, "eos_token"));
    if (stm && !bos) bos = token_str(json_object_get(stm, "bos_token"));
    if (stm && !eos) eos = token_str(json_object_get(stm, "eos_token"));
    if (bos) t->bos_id = lookup_special(t, bos);
    if (eos) t->eos_id = lookup_special(t, eos);
    if (cfg) {
        t->split_special = json_is_true(json_object_get(cfg, "split_special_tokens"));
        const json_t *cls = json_object_get(cfg, "tokenizer_class");
        const char *c = json_is_string(cls) ? json_string_value(cls) : "";
        if (!strncmp(c, "LlamaTokenizer", 14) || !strncmp(c, "CodeLlamaTokenizer", 18) || !strncmp(c, "GemmaTokenizer", 14)) {
            /* transformers' update_post_processor: [BOS] $A [EOS] from add_bos_token / add_eos_token */
            const json_t *ab = json_object_get(cfg, "add_bos_token"), *ae = json_object_get(cfg, "add_eos_token");
            int add_bos = ab ? json_is_true(ab) : 1, add_eos = ae ? json_is_true(ae) : 0;
            if ((add_bos && t->bos_id < 0) || (add_eos && t->eos_id < 0)) {
                st = lf_err_set(err, LF_EFORMAT, "%s/tokenizer_config.json: add_%s_token is set but the token is unknown", dir,
                                add_bos && t->bos_id < 0 ? "bos" : "eos");
                goto fail;
            }
            free_post(&t->post);
            t->post.kind = PP_TEMPLATE;
            t->post.ids = malloc(3 * sizeof *t->post.ids);
            LF_CHECK_ALLOC(t->post.ids, err);
            if (add_bos) t->post.ids[t->post.n_ids++] = t->bos_id;
            t->post.ids[t->post.n_ids++] = -2;
            if (add_eos) t->post.ids[t->post.n_ids++] = t->eos_id;
        }
    }
    json_decref(root);
    json_decref(cfg);
    json_decref(stm);
    *out = t;
    return LF_OK;
fail:
    if (!st) st = err ? err->code : LF_ENOMEM;
    if (!st) st = LF_ENOMEM;
    json_decref(root);
    json_decref(cfg);
    json_decref(stm);
    lf_tokenizer_free(t);
    return st;
}

void lf_tokenizer_free(lf_tokenizer *t) {
    if (!t) return;
    if (t->norm) tk_normalizer_free(t->norm);
    free(t->norm);
    if (t->pre) tk_pretok_free(t->pre);
    free(t->pre);
    tk_bpe_free(&t->bpe);
    for (size_t i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    tk_smap_free(&t->added_by_content);
    tk_smap_free(&t->special_set);
    free(t->added_by_id);
    free(t->raw_trie.v);
    free(t->norm_trie.v);
    free_post(&t->post);
    if (t->dec) free_decoder(t->dec);
    free(t->dec);
    free(t);
}

/* ================================================================ lookups */
int64_t lf_tokenizer_vocab_size(const lf_tokenizer *t) { return t->n_ids; }

int32_t lf_tokenizer_token_to_id(const lf_tokenizer *t, const char *tok, size_t len) {
    const int32_t *a = tk_smap_get(&t->added_by_content, tok, len);
    if (a) return t->added[*a].id;
    const int32_t *m = tk_smap_get(&t->bpe.vocab, tok, len);
    return m ? *m : -1;
}

const char *lf_tokenizer_id_to_token(const lf_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_ids) return NULL;
    int32_t a = t->added_by_id[id];
    if (a >= 0) {
        if (len) *len = t->added[a].len;
        return t->added[a].content;
    }
    if (id >= t->bpe.n_ids || t->bpe.id_len[id] == UINT32_MAX) return NULL;
    if (len) *len = t->bpe.id_len[id];
    return t->bpe.vocab.pool.data + t->bpe.id_off[id];
}

int lf_tokenizer_is_special(const lf_tokenizer *t, int32_t id) {
    size_t n;
    const char *s = lf_tokenizer_id_to_token(t, id, &n);
    return s && tk_smap_get(&t->special_set, s, n) != NULL;
}

int32_t lf_tokenizer_bos_id(const lf_tokenizer *t) { return t->bos_id; }
int32_t lf_tokenizer_eos_id(const lf_tokenizer *t) { return t->eos_id; }

/* ================================================================ encode */
static lf_status ids_append(int32_t **ids, int64_t *n, size_t *cap, int32_t id) {
    if ((size_t)*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        int32_t *q = realloc(*ids, c * sizeof *q);
        if (!q) return LF_ENOMEM;
        *ids = q;
        *cap = c;
    }
    (*ids)[(*n)++] = id;
    return LF_OK;
}

/* Apply the post-processor to ids[0..n) (in place, reallocating). */
static lf_status post_process(const postproc *p, int32_t **ids, int64_t *n, size_t *cap) {
    if (p->kind == PP_SEQUENCE) {
        for (size_t i = 0; i < p->n_children; i++)
            if (post_process(&p->children[i], ids, n, cap)) return LF_ENOMEM;
        return LF_OK;
    }
    if (p->kind != PP_TEMPLATE) return LF_OK;
    int32_t *seq = *ids;
    int64_t ns = *n;
    int32_t *o = NULL;
    int64_t no = 0;
    size_t oc = 0;
    for (size_t i = 0; i < p->n_ids; i++) {
        if (p->ids[i] == -2) {
            for (int64_t k = 0; k < ns; k++)
                if (ids_append(&o, &no, &oc, seq[k])) goto oom;
        } else if (ids_append(&o, &no, &oc, p->ids[i])) {
            goto oom;
        }
    }
    if (!o && !(o = malloc(sizeof *o))) return LF_ENOMEM;
    free(seq);
    *ids = o, *n = no, *cap = oc ? oc : 1;
    return LF_OK;
oom:
    free(o);
    return LF_ENOMEM;
}

lf_status lf_tokenizer_encode(const lf_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids_out,
                              int64_t *n_out, lf_err *err) {
    lf_status st = LF_OK;
    tk_buf clean = {0}, nb = {0};
    tk_pieces pa = {0}, pb = {0};
    tk_pieces *io = &pa, *tmp = &pb;
    tk_bpe_scratch sc = {0};
    int32_t *ids = NULL;
    int64_t n = 0;
    size_t cap = 0;
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    *ids_out = NULL;
    *n_out = 0;
    LF_CHECK_ALLOC(md, err);
    if (!tk_utf8_valid(text, len)) {
        if (tk_utf8_lossy(text, len, &clean)) goto oom;
        text = clean.data, len = clean.len;
    }
    /* 1. non-normalized added tokens on the raw text */
    if (split_added(t, &t->raw_trie, text, len, 1, tmp)) goto oom;
    /* 2. normalize the other pieces, then normalized added tokens */
    tk_pieces_reset(io);
    for (size_t i = 0; i < tmp->n; i++) {
        tk_piece pc = tmp->v[i];
        const char *s = tmp->text.data + pc.off;
        if (pc.id >= 0) {
            if (tk_pieces_push(io, s, pc.len, pc.id, pc.first)) goto oom;
            continue;
        }
        size_t sl = pc.len;
        if (t->norm) {
            if ((st = tk_normalize(t->norm, s, pc.len, &nb, md, err))) goto fail;
            s = nb.data, sl = nb.len;
        }
        if (split_added(t, &t->norm_trie, s, sl, pc.first, io)) goto oom;
    }
    /* 3. pre-tokenize */
    if (t->pre) LF_TRY(tk_pretokenize(t->pre, &io, &tmp, md, err));
    /* 4. model */
    for (size_t i = 0; i < io->n; i++) {
        tk_piece pc = io->v[i];
        if (pc.id >= 0) {
            if (ids_append(&ids, &n, &cap, pc.id)) goto oom;
            continue;
        }
        LF_TRY(tk_bpe_tokenize(&t->bpe, io->text.data + pc.off, pc.len, &sc, &ids, &n, &cap, err));
    }
    /* 5. post-process */
    if (add_special && post_process(&t->post, &ids, &n, &cap)) goto oom;
    if (!ids && !(ids = malloc(sizeof *ids))) goto oom;
    *ids_out = ids;
    *n_out = n;
    ids = NULL;
    goto done;
oom:
    st = lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory encoding %zu bytes", len);
    goto done;
fail:
    if (!st) st = LF_ENOMEM;
done:
    free(ids);
    tk_buf_free(&clean);
    tk_buf_free(&nb);
    tk_pieces_free(&pa);
    tk_pieces_free(&pb);
    tk_bpe_scratch_free(&sc);
    pcre2_match_data_free(md);
    return st;
}

/* ================================================================ decode */
static int parse_byte_token(const char *s, size_t n, uint8_t *b) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return 0;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
        if (d < 0) return 0;
        v = v * 16 + d;
    }
    *b = (uint8_t)v;
    return 1;
}

#define PUSH(o, s, n) \
    do {                                                   \
        if (tk_pieces_push((o), (s), (n), -1, 0)) goto oom; \
    } while (0)

/* One decoder step: in -> out (out reset first). */
static lf_status decode_chain(const decoder *d, tk_pieces **io, tk_pieces **tmp, pcre2_match_data *md, lf_err *err) {
    if (d->kind == DEC_SEQUENCE) {
        for (size_t i = 0; i < d->n_children; i++) {
            lf_status st = decode_chain(&d->children[i], io, tmp, md, err);
            if (st) return st;
        }
        return LF_OK;
    }
    tk_pieces *in = *io, *out = *tmp;
    tk_buf b = {0};
    tk_spans sp = {0};
    lf_status st = LF_OK;
    tk_pieces_reset(out);
    switch (d->kind) {
    case DEC_BYTELEVEL: {
        tk_buf raw = {0};
        for (size_t i = 0; i < in->n; i++) {
            const char *s = in->text.data + in->v[i].off;
            size_t n = in->v[i].len, start = raw.len;
            int ok = 1;
            for (size_t k = 0; k < n && ok;) {
                int32_t cp;
                k += (size_t)tk_utf8_next(s, n, k, &cp);
                int byte = tk_cp_to_byte(cp);
                if (byte < 0) ok = 0;
                else {
                    uint8_t c = (uint8_t)byte;
                    if (tk_buf_put(&raw, &c, 1)) ok = -1;
                }
            }
            if (ok < 0) goto oom_raw;
            if (!ok) {
                raw.len = start;
                if (tk_buf_put(&raw, s, n)) goto oom_raw;
            }
        }
        if (tk_utf8_lossy(raw.data ? raw.data : "", raw.len, &b)) goto oom_raw;
        tk_buf_free(&raw);
        PUSH(out, b.data ? b.data : "", b.len);
        break;
    oom_raw:
        tk_buf_free(&raw);
        goto oom;
    }
    case DEC_METASPACE: {
        char r[4];
        int rl = tk_utf8_put(d->ch, r);
        for (size_t i = 0; i < in->n; i++) {
            const char *s = in->text.data + in->v[i].off;
            size_t n = in->v[i].len;
            b.len = 0;
            for (size_t k = 0; k < n;) {
                int32_t cp;
                int cl = tk_utf8_next(s, n, k, &cp);
                if (cp == d->ch && (size_t)cl == (size_t)rl) {
                    if (!(i == 0 && d->prepend_scheme != TK_PREPEND_NEVER) && tk_buf_put(&b, " ", 1)) goto oom;
                } else if (tk_buf_put(&b, s + k, (size_t)cl)) {
                    goto oom;
                }
                k += (size_t)cl;
            }
            PUSH(out, b.data ? b.data : "", b.len);
        }
        break;
    }
    case DEC_BYTEFALLBACK: {
        tk_buf bytes = {0};
        for (size_t i = 0; i <= in->n; i++) {
            uint8_t byte;
            const char *s = i < in->n ? in->text.data + in->v[i].off : "";
            size_t n = i < in->n ? in->v[i].len : 0;
            if (i < in->n && parse_byte_token(s, n, &byte)) {
                if (tk_buf_put(&bytes, &byte, 1)) goto oom_bytes;
                continue;
            }
            if (bytes.len) {
                if (tk_utf8_valid(bytes.data, bytes.len)) {
                    if (tk_pieces_push(out, bytes.data, bytes.len, -1, 0)) goto oom_bytes;
                } else {
                    for (size_t k = 0; k < bytes.len; k++)
                        if (tk_pieces_push(out, "\xEF\xBF\xBD", 3, -1, 0)) goto oom_bytes;
                }
                bytes.len = 0;
            }
            if (i < in->n && tk_pieces_push(out, s, n, -1, 0)) goto oom_bytes;
        }
        tk_buf_free(&bytes);
        break;
    oom_bytes:
        tk_buf_free(&bytes);
        goto oom;
    }
    case DEC_FUSE:
        PUSH(out, in->text.data ? in->text.data : "", 0);
        for (size_t i = 0; i < in->n; i++)
            if (tk_buf_put(&out->text, in->text.data + in->v[i].off, in->v[i].len)) goto oom;
        out->v[0].len = out->text.len;
        break;
    case DEC_STRIP:
        for (size_t i = 0; i < in->n; i++) {
            const char *s = in->text.data + in->v[i].off;
            size_t n = in->v[i].len, a = 0, e = n;
            for (int k = 0; k < d->start && a < n; k++) {
                int32_t cp;
                int cl = tk_utf8_next(s, n, a, &cp);
                if (cp != d->ch) break;
                a += (size_t)cl;
            }
            for (int k = 0; k < d->stop && e > a; k++) {
                int32_t cp;
                int cl = tk_utf8_prev_len(s, e);
                tk_utf8_next(s, n, e - (size_t)cl, &cp);
                if (cp != d->ch) break;
                e -= (size_t)cl;
            }
            PUSH(out, s + a, e - a);
        }
        break;
    case DEC_REPLACE:
        for (size_t i = 0; i < in->n; i++) {
            const char *s = in->text.data + in->v[i].off;
            size_t n = in->v[i].len;
            if ((st = tk_pattern_find(&d->pattern, s, n, md, &sp, err))) goto done;
            b.len = 0;
            for (size_t k = 0; k < sp.n; k++) {
                if (sp.v[k].is_match) {
                    if (tk_buf_put(&b, d->content, d->content_len)) goto oom;
                } else if (sp.v[k].end <= n && tk_buf_put(&b, s + sp.v[k].start, sp.v[k].end - sp.v[k].start)) {
                    goto oom;
                }
            }
            PUSH(out, b.data ? b.data : "", b.len);
        }
        break;
    case DEC_BPE:
        for (size_t i = 0; i < in->n; i++) {
            const char *s = in->text.data + in->v[i].off;
            size_t n = in->v[i].len;
            b.len = 0;
            for (size_t k = 0; k < n;) {
                if (d->content_len && k + d->content_len <= n && !memcmp(s + k, d->content, d->content_len)) {
                    if (i + 1 < in->n && tk_buf_put(&b, " ", 1)) goto oom;
                    k += d->content_len;
                } else {
                    if (tk_buf_put(&b, s + k, 1)) goto oom;
                    k++;
                }
            }
            PUSH(out, b.data ? b.data : "", b.len);
        }
        break;
    }
    goto done;
oom:
    st = lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory while decoding");
done:
    tk_buf_free(&b);
    free(sp.v);
    *io = out;
    *tmp = in;
    return st;
}

lf_status lf_tokenizer_decode(const lf_tokenizer *t, const int32_t *ids, int64_t n, int skip_special, char **text,
                              size_t *len, lf_err *err) {
    lf_status st = LF_OK;
    tk_pieces pa = {0}, pb = {0};
    tk_pieces *io = &pa, *tmp = &pb;
    pcre2_match_data *md = NULL;
    tk_buf o = {0};
    *text = NULL;
    *len = 0;
    for (int64_t i = 0; i < n; i++) {
        size_t tl;
        const char *s = lf_tokenizer_id_to_token(t, ids[i], &tl);
        if (!s) continue;
        if (skip_special && tk_smap_get(&t->special_set, s, tl)) continue;
        if (tk_pieces_push(io, s, tl, -1, 0)) goto oom;
    }
    if (t->dec) {
        md = pcre2_match_data_create(1, NULL);
        if (!md) goto oom;
        if ((st = decode_chain(t->dec, &io, &tmp, md, err))) goto done;
    }
    if (tk_buf_put(&o, "", 0)) goto oom;
    for (size_t i = 0; i < io->n; i++) {
        if (i && !t->dec && tk_buf_put(&o, " ", 1)) goto oom; /* no decoder: tokens.join(" ") */
        if (tk_buf_put(&o, io->text.data + io->v[i].off, io->v[i].len)) goto oom;
    }
    *text = o.data;
    *len = o.len;
    o.data = NULL;
    goto done;
oom:
    st = lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory decoding %lld ids", (long long)n);
done:
    tk_buf_free(&o);
    tk_pieces_free(&pa);
    tk_pieces_free(&pb);
    pcre2_match_data_free(md);
    return st;
}

/* ================================================================ streaming decode */
struct lf_tokenizer_stream {
    const lf_tokenizer *t;
    int skip_special;
    int32_t *ids;
    int64_t n, cap;
    int64_t prefix, read; /* ids[prefix..read) decoded and emitted; the window starts at prefix */
    char *piece;          /* last returned piece */
};

lf_status lf_tokenizer_stream_create(const lf_tokenizer *t, int skip_special, lf_tokenizer_stream **out, lf_err *err) {
    *out = calloc(1, sizeof **out);
    if (!*out) return lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory for a stream");
    (*out)->t = t;
    (*out)->skip_special = skip_special;
    return LF_OK;
}

void lf_tokenizer_stream_free(lf_tokenizer_stream *s) {
    if (!s) return;
    free(s->ids);
    free(s->piece);
    free(s);
}

static int ends_with_fffd(const char *s, size_t n) { return n >= 3 && !memcmp(s + n - 3, "\xEF\xBF\xBD", 3); }

static int decoder_has_bytefallback(const decoder *d) {
    if (!d) return 0;
    if (d->kind == DEC_BYTEFALLBACK) return 1;
    for (size_t i = 0; i < d->n_children; i++)
        if (decoder_has_bytefallback(&d->children[i])) return 1;
    return 0;
}

/* The last id of the stream that reaches the decoder is a <0xXX> byte token: ByteFallback turns a whole run of
 * byte tokens into U+FFFD each when the run is not valid UTF-8, so a later byte may rewrite text already valid
 * ("<0x47>" is "G", "<0x47><0xFF>" is two U+FFFD): hold the run back until a non-byte token closes it. */
static int stream_in_byte_run(const lf_tokenizer_stream *s) {
    if (!decoder_has_bytefallback(s->t->dec)) return 0;
    for (int64_t i = s->n - 1; i >= s->read; i--) {
        size_t tl;
        uint8_t byte;
        const char *tok = lf_tokenizer_id_to_token(s->t, s->ids[i], &tl);
        if (!tok || (s->skip_special && tk_smap_get(&s->t->special_set, tok, tl))) continue; /* dropped by decode */
        return parse_byte_token(tok, tl, &byte);
    }
    return 0;
}

/* Emit decode(ids[prefix..n)) minus decode(ids[prefix..read)) when complete (or always when final). */
static lf_status stream_step(lf_tokenizer_stream *s, int final, const char **piece, size_t *len, lf_err *err) {
    char *a = NULL, *b = NULL;
    size_t al = 0, bl = 0;
    lf_status st;
    free(s->piece);
    s->piece = NULL;
    *piece = "";
    *len = 0;
    if (!final && stream_in_byte_run(s)) return LF_OK;
    if ((st = lf_tokenizer_decode(s->t, s->ids + s->prefix, s->read - s->prefix, s->skip_special, &a, &al, err))) return st;
    if ((st = lf_tokenizer_decode(s->t, s->ids + s->prefix, s->n - s->prefix, s->skip_special, &b, &bl, err))) {
        free(a);
        return st;
    }
    if ((bl > al && !ends_with_fffd(b, bl) && !memcmp(a, b, al)) || final) {
        size_t skip = (bl >= al && !memcmp(a, b, al)) ? al : 0;
        memmove(b, b + skip, bl - skip + 1);
        s->piece = b;
        *piece = b;
        *len = bl - skip;
        s->prefix = s->read;
        s->read = s->n;
        b = NULL;
    }
    free(a);
    free(b);
    return LF_OK;
}

lf_status lf_tokenizer_stream_push(lf_tokenizer_stream *s, int32_t id, const char **piece, size_t *len, lf_err *err) {
    if (s->n == s->cap) {
        int64_t c = s->cap ? s->cap * 2 : 64;
        int32_t *q = realloc(s->ids, (size_t)c * sizeof *q);
        if (!q) return lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory in stream");
        s->ids = q;
        s->cap = c;
    }
    s->ids[s->n++] = id;
    return stream_step(s, 0, piece, len, err);
}

lf_status lf_tokenizer_stream_flush(lf_tokenizer_stream *s, const char **piece, size_t *len, lf_err *err) {
    if (s->read == s->n) {
        free(s->piece);
        s->piece = NULL;
        *piece = "";
        *len = 0;
        return LF_OK;
    }
    return stream_step(s, 1, piece, len, err);
}
