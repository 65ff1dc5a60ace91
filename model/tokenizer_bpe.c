/* tokenizer_bpe.c - the BPE model of tokenizer.json, merged exactly like tokenizers 0.19 (models/bpe).
 *
 * merge_word: one symbol per char (continuing_subword_prefix on non-first chars, end_of_word_suffix on the
 * last), unknown chars become <0xXX> byte tokens (byte_fallback) or unk (fused when fuse_unk); then
 * merge_all: a binary min-heap of (rank, position) candidate merges over a doubly linked symbol list, stale
 * entries skipped when popped - O(n log n) per word. Words are cached per encode call. */
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer_int.h"

/* ---------------------------------------------------------------- merges map */
static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static int merge_get(const tk_bpe *b, int32_t a, int32_t c, int32_t *rank, int32_t *new_id) {
    if (!b->mcap) return 0;
    uint64_t key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)c) + 1;
    size_t mask = b->mcap - 1, i = (size_t)mix64(key) & mask;
    for (;;) {
        if (b->mkeys[i] == 0) return 0;
        if (b->mkeys[i] == key) {
            *rank = b->mrank[i];
            *new_id = b->mnew[i];
            return 1;
        }
        i = (i + 1) & mask;
    }
}

static void merge_put(tk_bpe *b, int32_t a, int32_t c, int32_t rank, int32_t new_id) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)c) + 1;
    size_t mask = b->mcap - 1, i = (size_t)mix64(key) & mask;
    while (b->mkeys[i] != 0 && b->mkeys[i] != key) i = (i + 1) & mask;
    b->mkeys[i] = key; /* a later duplicate overwrites, like the HashMap collect in tokenizers */
    b->mrank[i] = rank;
    b->mnew[i] = new_id;
}

/* ---------------------------------------------------------------- load */
static lf_status opt_str(const json_t *m, const char *key, char **out, size_t *len, const char *ctx, lf_err *err) {
    const json_t *v = json_object_get(m, key);
    *out = NULL;
    if (len) *len = 0;
    if (!v || json_is_null(v)) return LF_OK;
    if (!json_is_string(v)) return lf_err_set(err, LF_EFORMAT, "%s: model.%s must be a string or null", ctx, key);
    size_t n = json_string_length(v);
    *out = malloc(n + 1);
    if (!*out) return lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
    memcpy(*out, json_string_value(v), n + 1);
    if (len) *len = n;
    return LF_OK;
}

static int opt_bool(const json_t *m, const char *key, int def) {
    const json_t *v = json_object_get(m, key);
    if (!v || json_is_null(v)) return def;
    return json_is_true(v);
}

lf_status tk_bpe_parse(const json_t *model, tk_bpe *b, const char *ctx, lf_err *err) {
    lf_status st = LF_OK;
    memset(b, 0, sizeof *b);
    for (int i = 0; i < 256; i++) b->byte_ids[i] = -1;
    const json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout)) {
        if (!json_is_number(dropout)) return lf_err_set(err, LF_EFORMAT, "%s: model.dropout must be a number or null", ctx);
        if (json_number_value(dropout) != 0.0)
            return lf_err_set(err, LF_EUNSUPPORTED, "%s: BPE dropout %g is not supported (must be null or 0)", ctx,
                              json_number_value(dropout));
    }
    LF_TRY(opt_str(model, "unk_token", &b->unk_token, NULL, ctx, err));
    LF_TRY(opt_str(model, "continuing_subword_prefix", &b->prefix, &b->prefix_len, ctx, err));
    LF_TRY(opt_str(model, "end_of_word_suffix", &b->suffix, &b->suffix_len, ctx, err));
    b->fuse_unk = opt_bool(model, "fuse_unk", 0);
    b->byte_fallback = opt_bool(model, "byte_fallback", 0);
    b->ignore_merges = opt_bool(model, "ignore_merges", 0);

    const json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab)) {
        st = lf_err_set(err, LF_EFORMAT, "%s: model.vocab must be an object", ctx);
        goto fail;
    }
    const char *key;
    const json_t *val;
    int64_t max_id = -1;
    json_object_foreach((json_t *)vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) > INT32_MAX - 1) {
            st = lf_err_set(err, LF_EFORMAT, "%s: model.vocab[\"%s\"] must be a non-negative 32-bit integer", ctx, key);
            goto fail;
        }
        int64_t id = json_integer_value(val);
        if (id > max_id) max_id = id;
        LF_TRY(tk_smap_set(&b->vocab, key, strlen(key), (int32_t)id));
        b->vocab_count++;
    }
    b->n_ids = (int32_t)(max_id + 1);
    if (b->n_ids > 0) {
        b->id_off = calloc((size_t)b->n_ids, sizeof *b->id_off);
        b->id_len = malloc((size_t)b->n_ids * sizeof *b->id_len);
        LF_CHECK_ALLOC(b->id_off, err);
        LF_CHECK_ALLOC(b->id_len, err);
        for (int32_t i = 0; i < b->n_ids; i++) b->id_len[i] = UINT32_MAX;
        for (size_t i = 0; i < b->vocab.cap; i++) {
            const tk_smap_ent *e = &b->vocab.slots[i];
            if (!e->hash) continue;
            b->id_off[e->val] = e->off;
            b->id_len[e->val] = e->len;
        }
    }
    for (int i = 0; i < 256; i++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", i);
        const int32_t *id = tk_smap_get(&b->vocab, name, 6);
        if (id) b->byte_ids[i] = *id;
    }

    const json_t *merges = json_object_get(model, "merges");
    if (merges && !json_is_null(merges) && !json_is_array(merges)) {
        st = lf_err_set(err, LF_EFORMAT, "%s: model.merges must be an array", ctx);
        goto fail;
    }
    size_t nm = merges ? json_array_size(merges) : 0;
    b->mcap = 16;
    while (b->mcap < nm * 2 + 16) b->mcap *= 2;
    b->mkeys = calloc(b->mcap, sizeof *b->mkeys);
    b->mrank = malloc(b->mcap * sizeof *b->mrank);
    b->mnew = malloc(b->mcap * sizeof *b->mnew);
    LF_CHECK_ALLOC(b->mkeys, err);
    LF_CHECK_ALLOC(b->mrank, err);
    LF_CHECK_ALLOC(b->mnew, err);
    tk_buf joined = {0};
    for (size_t i = 0; i < nm; i++) {
        const json_t *m = json_array_get(merges, i);
        const char *a, *c;
        size_t alen, clen;
        if (json_is_string(m)) {
            const char *s = json_string_value(m);
            size_t n = json_string_length(m);
            if (n >= 8 && !strncmp(s, "#version", 8)) continue;
            /* "a b"; tokens may themselves contain spaces (the llama2 file has "   " = " " + " "): take the only
             * space when there is one, else the first split where a, b and a+b are all in the vocab. */
            const char *sp = memchr(s, ' ', n), *pick = NULL;
            if (sp && !memchr(sp + 1, ' ', n - (size_t)(sp - s) - 1)) pick = sp;
            for (const char *q = sp; q && !pick; q = memchr(q + 1, ' ', n - (size_t)(q - s) - 1)) {
                size_t al = (size_t)(q - s), cl = n - al - 1;
                joined.len = 0;
                if (tk_buf_put(&joined, s, al) || tk_buf_put(&joined, q + 1, cl)) break;
                if (al && cl && tk_smap_get(&b->vocab, s, al) && tk_smap_get(&b->vocab, q + 1, cl) &&
                    tk_smap_get(&b->vocab, joined.data, joined.len))
                    pick = q;
                if (q + 1 >= s + n) break;
            }
            if (!pick) {
                tk_buf_free(&joined);
                st = lf_err_set(err, LF_EFORMAT, "%s: model.merges[%zu] \"%s\" is not \"a b\"", ctx, i, s);
                goto fail;
            }
            a = s, alen = (size_t)(pick - s), c = pick + 1, clen = n - alen - 1;
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0)), alen = json_string_length(json_array_get(m, 0));
            c = json_string_value(json_array_get(m, 1)), clen = json_string_length(json_array_get(m, 1));
        } else {
            tk_buf_free(&joined);
            st = lf_err_set(err, LF_EFORMAT, "%s: model.merges[%zu] must be \"a b\" or [\"a\", \"b\"]", ctx, i);
            goto fail;
        }
        const int32_t *ida = tk_smap_get(&b->vocab, a, alen), *idc = tk_smap_get(&b->vocab, c, clen);
        if (!ida || !idc || clen < b->prefix_len) {
            st = lf_err_set(err, LF_EFORMAT, "%s: model.merges[%zu]: token \"%.*s\" is not in the vocab", ctx, i,
                            (int)(ida ? clen : alen), ida ? c : a);
            tk_buf_free(&joined);
            goto fail;
        }
        joined.len = 0;
        if (tk_buf_put(&joined, a, alen) || tk_buf_put(&joined, c + b->prefix_len, clen - b->prefix_len)) {
            tk_buf_free(&joined);
            st = lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
            goto fail;
        }
        const int32_t *idn = tk_smap_get(&b->vocab, joined.data, joined.len);
        if (!idn) {
            st = lf_err_set(err, LF_EFORMAT, "%s: model.merges[%zu]: merged token \"%.*s\" is not in the vocab", ctx, i,
                            (int)joined.len, joined.data);
            tk_buf_free(&joined);
            goto fail;
        }
        merge_put(b, *ida, *idc, (int32_t)i, *idn);
    }
    tk_buf_free(&joined);
    return LF_OK;
fail:
    tk_bpe_free(b);
    if (!st) st = LF_ENOMEM; /* LF_CHECK_ALLOC jumps here with the message set */
    if (st == LF_ENOMEM && err && !err->msg[0]) lf_err_set(err, LF_ENOMEM, "%s: out of memory", ctx);
    return st;
}

void tk_bpe_free(tk_bpe *b) {
    tk_smap_free(&b->vocab);
    free(b->id_off);
    free(b->id_len);
    free(b->mkeys);
    free(b->mrank);
    free(b->mnew);
    free(b->unk_token);
    free(b->prefix);
    free(b->suffix);
    memset(b, 0, sizeof *b);
}

/* ---------------------------------------------------------------- merge_word / merge_all */
typedef struct sym {
    int32_t id;
    int32_t prev, next; /* -1 = none */
    uint32_t len;       /* bytes of the original word covered; 0 = merged away */
} sym;

typedef struct hent {
    int32_t rank, pos, new_id;
} hent;

static int hless(const hent *x, const hent *y) { return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos); }

static void heap_push(hent *h, size_t *n, hent e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!hless(&e, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static hent heap_pop(hent *h, size_t *n) {
    hent top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const hent *best = &last;
        if (l < *n && hless(&h[l], best)) m = l, best = &h[l];
        if (r < *n && hless(&h[r], best)) m = r;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (*n) h[i] = last;
    return top;
}

static lf_status grow(void **p, size_t *cap, size_t need, size_t elt, lf_err *err) {
    if (need <= *cap) return LF_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elt);
    if (!q) return lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory (BPE word of %zu symbols)", need);
    *p = q;
    *cap = c;
    return LF_OK;
}

static lf_status ids_push(int32_t **ids, int64_t *n, size_t *cap, int32_t id, lf_err *err) {
    if ((size_t)*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        int32_t *q = realloc(*ids, c * sizeof *q);
        if (!q) return lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory for token ids");
        *ids = q;
        *cap = c;
    }
    (*ids)[(*n)++] = id;
    return LF_OK;
}

/* Symbols of word s -> sc->sym; returns count. */
static lf_status merge_word(const tk_bpe *b, const char *s, size_t n, tk_bpe_scratch *sc, size_t *nsym, lf_err *err) {
    lf_status st;
    size_t ns = 0;
    int32_t unk_id = -1;
    uint32_t unk_len = 0;
    int have_unk = 0;
    if ((st = grow(&sc->sym, &sc->symcap, n + 1, sizeof(sym), err))) return st;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        int cl = tk_utf8_next(s, n, i, &cp);
        int is_first = i == 0, is_last = i + (size_t)cl == n;
        const char *tok = s + i;
        size_t tlen = (size_t)cl;
        if ((!is_first && b->prefix) || (is_last && b->suffix)) {
            sc->tmp.len = 0;
            if ((!is_first && b->prefix && tk_buf_put(&sc->tmp, b->prefix, b->prefix_len)) ||
                tk_buf_put(&sc->tmp, s + i, (size_t)cl) || (is_last && b->suffix && tk_buf_put(&sc->tmp, b->suffix, b->suffix_len)))
                return lf_err_set(err, LF_ENOMEM, "tokenizer: out of memory");
            tok = sc->tmp.data, tlen = sc->tmp.len;
        }
        const int32_t *id = tk_smap_get(&b->vocab, tok, tlen);
        if (id) {
            if (have_unk) {
                ((sym *)sc->sym)[ns++] = (sym){unk_id, -1, -1, unk_len};
                have_unk = 0;
            }
            ((sym *)sc->sym)[ns++] = (sym){*id, -1, -1, (uint32_t)cl};
        } else {
            int done = 0;
            if (b->byte_fallback) {
                int ok = 1;
                for (size_t k = 0; k < tlen; k++)
                    if (b->byte_ids[(uint8_t)tok[k]] < 0) ok = 0;
                if (ok) {
                    if ((st = grow(&sc->sym, &sc->symcap, ns + tlen + (n - i) + 1, sizeof(sym), err))) return st;
                    for (size_t k = 0; k < tlen; k++) ((sym *)sc->sym)[ns++] = (sym){b->byte_ids[(uint8_t)tok[k]], -1, -1, 1};
                    done = 1;
                }
            }
            if (!done && b->unk_token) {
                const int32_t *uid = tk_smap_get(&b->vocab, b->unk_token, strlen(b->unk_token));
                if (!uid)
                    return lf_err_set(err, LF_EFORMAT, "tokenizer: unk_token \"%s\" is not in the vocab", b->unk_token);
                if (have_unk && b->fuse_unk) {
                    unk_len += (uint32_t)cl;
                } else {
                    if (have_unk) ((sym *)sc->sym)[ns++] = (sym){unk_id, -1, -1, unk_len};
                    unk_id = *uid, unk_len = (uint32_t)cl, have_unk = 1;
                }
            }
        }
        i += (size_t)cl;
    }
    if (have_unk) ((sym *)sc->sym)[ns++] = (sym){unk_id, -1, -1, unk_len};
    sym *v = sc->sym;
    for (size_t k = 0; k < ns; k++) {
        v[k].prev = (int32_t)k - 1;
        v[k].next = k + 1 < ns ? (int32_t)k + 1 : -1;
    }
    /* merge_all */
    if ((st = grow(&sc->heap, &sc->heapcap, ns * 2 + 8, sizeof(hent), err))) return st;
    hent *h = sc->heap;
    size_t hn = 0;
    for (size_t k = 0; k + 1 < ns; k++) {
        int32_t rank, nid;
        if (merge_get(b, v[k].id, v[k + 1].id, &rank, &nid)) heap_push(h, &hn, (hent){rank, (int32_t)k, nid});
    }
    while (hn) {
        hent top = heap_pop(h, &hn);
        sym *cur = &v[top.pos];
        if (cur->len == 0 || cur->next < 0) continue;
        sym *right = &v[cur->next];
        int32_t rank, nid;
        if (!merge_get(b, cur->id, right->id, &rank, &nid) || nid != top.new_id) continue;
        cur->id = top.new_id;
        cur->len += right->len;
        int32_t rnext = right->next;
        right->len = 0;
        cur->next = rnext;
        if (rnext >= 0) v[rnext].prev = top.pos;
        /* the heap can grow past 2n with stale entries; keep room */
        if (hn + 2 > sc->heapcap) {
            if ((st = grow(&sc->heap, &sc->heapcap, hn + 2, sizeof(hent), err))) return st;
            h = sc->heap;
        }
        if (cur->prev >= 0 && merge_get(b, v[cur->prev].id, cur->id, &rank, &nid))
            heap_push(h, &hn, (hent){rank, cur->prev, nid});
        if (cur->next >= 0 && merge_get(b, cur->id, v[cur->next].id, &rank, &nid))
            heap_push(h, &hn, (hent){rank, top.pos, nid});
    }
    *nsym = ns;
    return LF_OK;
}

lf_status tk_bpe_tokenize(const tk_bpe *b, const char *s, size_t n, tk_bpe_scratch *sc, int32_t **ids, int64_t *nids,
                          size_t *cap, lf_err *err) {
    lf_status st;
    if (n == 0) return LF_OK;
    if (b->ignore_merges) {
        const int32_t *id = tk_smap_get(&b->vocab, s, n);
        if (id) return ids_push(ids, nids, cap, *id, err);
    }
    const int32_t *hit = tk_smap_get(&sc->cache, s, n);
    if (hit) {
        int64_t off = sc->cspan[2 * *hit], cnt = sc->cspan[2 * *hit + 1];
        for (int64_t k = 0; k < cnt; k++)
            if ((st = ids_push(ids, nids, cap, sc->cids[off + k], err))) return st;
        return LF_OK;
    }
    size_t ns = 0;
    if ((st = merge_word(b, s, n, sc, &ns, err))) return st;
    const sym *v = sc->sym;
    size_t before = (size_t)*nids;
    for (size_t k = 0; k < ns; k++)
        if (v[k].len) {
            if ((st = ids_push(ids, nids, cap, v[k].id, err))) return st;
        }
    /* cache the word */
    size_t cnt = (size_t)*nids - before;
    if ((st = grow((void **)&sc->cids, &sc->capcids, sc->ncids + cnt, sizeof(int32_t), err))) return st;
    if ((st = grow((void **)&sc->cspan, &sc->capcspan, 2 * (sc->ncspan + 1), sizeof(int64_t), err))) return st;
    if (cnt) memcpy(sc->cids + sc->ncids, *ids + before, cnt * sizeof(int32_t));
    sc->cspan[2 * sc->ncspan] = (int64_t)sc->ncids;
    sc->cspan[2 * sc->ncspan + 1] = (int64_t)cnt;
    sc->ncids += cnt;
    if ((st = tk_smap_set(&sc->cache, s, n, (int32_t)sc->ncspan))) return lf_err_set(err, st, "tokenizer: out of memory");
    sc->ncspan++;
    return LF_OK;
}

void tk_bpe_scratch_free(tk_bpe_scratch *s) {
    tk_smap_free(&s->cache);
    free(s->cspan);
    free(s->cids);
    free(s->sym);
    free(s->heap);
    tk_buf_free(&s->tmp);
    memset(s, 0, sizeof *s);
}
