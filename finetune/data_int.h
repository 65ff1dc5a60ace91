/* data_int.h - internals shared by data.c (files, selection, split, packing, iteration) and data_formats.c
 * (row formats -> messages -> template segments -> ids/labels with truncation). Not a public API.
 *
 * Ownership: an lf_dfmt borrows its strings (static defaults or dataset_info.json, alive for the load); an
 * lf_dencoder owns its render variables and scratch vectors (lf_dencoder_free). */
#ifndef LF_FINETUNE_DATA_INT_H
#define LF_FINETUNE_DATA_INT_H

#include <stddef.h>
#include <stdint.h>

#include "finetune/data.h"

typedef enum lf_dfmt_kind {
    LF_DFMT_AUTO = 0,
    LF_DFMT_ALPACA,
    LF_DFMT_SHAREGPT,
    LF_DFMT_OPENAI,
    LF_DFMT_TOKENIZED,
} lf_dfmt_kind;

/* A row layout: LLaMA-Factory's DatasetAttr columns and tags. NULL column = not used. */
typedef struct lf_dfmt {
    lf_dfmt_kind kind;
    const char *prompt, *query, *response, *history; /* alpaca */
    const char *messages;                            /* sharegpt / openai */
    const char *system, *tools;
    const char *role_tag, *content_tag, *user_tag, *assistant_tag, *observation_tag, *function_tag, *system_tag;
    int lenient; /* also accept role/content or from/value keys and the usual role synonyms (no explicit tags) */
} lf_dfmt;

const char *lf_dfmt_name(lf_dfmt_kind k);
/* kind + LLaMA-Factory's default columns and tags for it (lenient = 0). */
void lf_dfmt_defaults(lf_dfmt *f, lf_dfmt_kind kind);
/* Auto-detection from one row: 1 and *f filled (lenient) when a known key is present, else 0. */
int lf_dfmt_detect(const json_t *row, lf_dfmt *f);

typedef struct lf_i32vec {
    int32_t *v;
    int64_t n, cap;
} lf_i32vec;

lf_status lf_i32vec_reserve(lf_i32vec *x, int64_t n, lf_err *err);
lf_status lf_i32vec_push(lf_i32vec *x, const int32_t *src, int64_t n, lf_err *err);
lf_status lf_i32vec_fill(lf_i32vec *x, int32_t value, int64_t n, lf_err *err);
void lf_i32vec_free(lf_i32vec *x);

typedef struct lf_dencoder {
    const lf_data_options *opts;
    const lf_tokenizer *tok;       /* may be NULL (tokenized rows only) */
    const lf_chat_template *tmpl;  /* may be NULL (tokenized rows only) */
    const char *tmpl_name;
    json_t *vars;                  /* render variables (owned) */
    int32_t eos_id;                /* -1 when none */
    int64_t vocab;                 /* 0 when no tokenizer */
    /* output of the last encode: one example */
    lf_i32vec ids, labels;
    /* scratch: segment ids back to back, seg_off[2*turn] = source start, [2*turn+1] = target start */
    lf_i32vec seg;
    int64_t *seg_off;
    int64_t seg_cap;
} lf_dencoder;

lf_status lf_dencoder_init(lf_dencoder *e, const lf_data_options *opts, const lf_tokenizer *tok,
                           const lf_chat_template *tmpl, lf_err *err);
void lf_dencoder_free(lf_dencoder *e);

/* Encode one row into e->ids / e->labels. LF_OK with reason[0] != 0: the row is unusable (why in reason);
 * *truncated = 1 when cutoff_len shortened it. Other statuses are fatal (out of memory, unsupported template
 * feature). */
lf_status lf_dencode_row(lf_dencoder *e, const lf_dfmt *f, const json_t *row, char *reason, size_t cap, int *truncated,
                         lf_err *err);

/* LLaMA-Factory's infer_seqlen: lengths kept of a (source, target) pair under budget cutoff. */
void lf_data_infer_seqlen(int64_t source_len, int64_t target_len, int64_t cutoff, int64_t *new_source,
                          int64_t *new_target);

#endif
