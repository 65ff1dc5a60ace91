/* fuzz_data.c - libFuzzer target: the SFT data readers (finetune/data*.c): alpaca, sharegpt, openai and
 * tokenized rows in .json (array or JSON lines), .jsonl, .json.gz and .jsonl.gz, auto-detected or chosen by a
 * dataset_info.json; tokenized with the demo tokenizer (examples/tokenizer) and a built-in chat template,
 * split, packed and iterated.
 * Input: byte 0 = flags: bits 0-1 extension (.json .jsonl .json.gz .jsonl.gz), bit 2 for .gz: the harness
 *        gzips the bytes (else the raw bytes are the .gz file), bit 3 select through dataset_info.json,
 *        bit 4 packing, bit 5 train_on_prompt, bit 6 mask_history, bit 7 val_size 0.25;
 *        byte 1 = bits 0-5 cutoff_len 4 + 8*v, bit 6 template llama3 (else chatml), bit 7 EOS never;
 *        then the data file [LF_FUZZ_SEP dataset_info.json, used with bit 3].
 * Invariants (a violation traps): failures have a message and no dataset; a dataset's offsets, units and
 * counts are consistent, no example or unit is longer than cutoff_len, ids are >= 0 and labels are ids or
 * LF_DATA_IGNORE; the iterator fills rows of at most max_unit_len with positions restarting at 0, and targets
 * are shifted labels or LF_DATA_IGNORE.
 * sources: finetune/data*.c model/tokenizer*.c model/chat_template*.c model/jinja*.c
 * sources: core/json.c core/fileio.c core/status.c core/log.c core/rng.c
 * pkg: jansson libpcre2-8 libutf8proc zlib
 * Build and run: scripts/fuzz.sh [SECONDS] data (docs/fuzzing.md). */
#include <jansson.h>
#include <stdint.h>
#include <string.h>
#include <zlib.h>

#include "core/log.h"
#include "finetune/data.h"
#include "tests/fuzz/fuzz_util.h"

#ifndef LF_FUZZ_ROOT
#define LF_FUZZ_ROOT "." /* scripts/fuzz.sh passes the repository root */
#endif

static lf_tokenizer *tok;
static lf_chat_template *tmpl[2];
static char dir_data[512];
static int64_t V;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    lf_log_set_level(LF_LOG_OFF);
    lf_fuzz_subdir(dir_data, sizeof dir_data, "data");
    lf_err err;
    if (lf_tokenizer_load(LF_FUZZ_ROOT "/examples/tokenizer", &tok, &err) != LF_OK) {
        fprintf(stderr, "fuzz_data: %s (run from the repository root)\n", err.msg);
        abort();
    }
    V = lf_tokenizer_vocab_size(tok);
    REQUIRE(lf_chat_template_compile(lf_chat_template_builtin("chatml"), &tmpl[0], &err) == LF_OK);
    REQUIRE(lf_chat_template_compile(lf_chat_template_builtin("llama3"), &tmpl[1], &err) == LF_OK);
    return 0;
}

static void check_dataset(const lf_dataset *ds, int64_t cutoff) {
    REQUIRE(ds->n_examples > 0 && ds->offsets[0] == 0 && ds->offsets[ds->n_examples] == ds->n_tokens);
    int64_t labelled = 0;
    for (int64_t i = 0; i < ds->n_examples; i++) {
        int64_t n = ds->offsets[i + 1] - ds->offsets[i];
        REQUIRE(n > 0 && n <= cutoff);
    }
    for (int64_t t = 0; t < ds->n_tokens; t++) {
        REQUIRE(ds->input_ids[t] >= 0);
        REQUIRE(ds->labels[t] == LF_DATA_IGNORE || ds->labels[t] >= 0);
        labelled += ds->labels[t] != LF_DATA_IGNORE;
    }
    REQUIRE(labelled == ds->n_label_tokens);
    REQUIRE(ds->n_units > 0 && ds->unit_offsets[0] == 0 && ds->unit_offsets[ds->n_units] == ds->n_examples);
    char *seen = calloc((size_t)ds->n_examples, 1);
    REQUIRE(seen);
    int64_t longest = 0;
    for (int64_t u = 0; u < ds->n_units; u++) {
        REQUIRE(ds->unit_offsets[u + 1] > ds->unit_offsets[u]);
        int64_t len = lf_dataset_unit_len(ds, u);
        REQUIRE(len > 0 && len <= cutoff);
        longest = len > longest ? len : longest;
    }
    for (int64_t i = 0; i < ds->n_examples; i++) {
        int64_t e = ds->unit_members[i];
        REQUIRE(e >= 0 && e < ds->n_examples && !seen[e]);
        seen[e] = 1;
    }
    free(seen);
    REQUIRE(longest == ds->max_unit_len);

    lf_data_iter *it = NULL;
    lf_err err;
    REQUIRE(lf_data_iter_create(ds, 7, 1, 0, 1, &it, &err) == LF_OK);
    int64_t T = ds->max_unit_len, B = 2;
    int32_t *tokens = malloc((size_t)(B * T) * sizeof *tokens), *targets = malloc((size_t)(B * T) * sizeof *targets);
    int32_t *pos = malloc((size_t)(B * T) * sizeof *pos);
    int64_t lens[2];
    REQUIRE(tokens && targets && pos);
    int64_t steps = lf_data_iter_epoch_len(it) + 1;
    if (steps > 6) steps = 6;
    for (int64_t s = 0; s < steps; s++) {
        int64_t n = 0;
        REQUIRE(lf_data_iter_next(it, T, tokens, targets, pos, &n, &err) == LF_OK);
        REQUIRE(n > 0 && n <= T && pos[0] == 0);
        for (int64_t t = 0; t < n; t++) {
            REQUIRE(tokens[t] >= 0 && (targets[t] == LF_DATA_IGNORE || targets[t] >= 0));
            REQUIRE(t == 0 || pos[t] == 0 || pos[t] == pos[t - 1] + 1);
        }
        REQUIRE(targets[n - 1] == LF_DATA_IGNORE);
    }
    REQUIRE(lf_data_iter_next_batch(it, B, T, 0, tokens, targets, pos, lens, &err) == LF_OK);
    for (int64_t b = 0; b < B; b++) {
        REQUIRE(lens[b] > 0 && lens[b] <= T);
        for (int64_t t = lens[b]; t < T; t++) REQUIRE(targets[b * T + t] == LF_DATA_IGNORE);
    }
    lf_data_position p = lf_data_iter_tell(it);
    REQUIRE(lf_data_iter_seek(it, p, &err) == LF_OK);
    free(tokens);
    free(targets);
    free(pos);
    lf_data_iter_free(it);
}

static void write_gz(const char *path, const uint8_t *data, size_t size) {
    gzFile g = gzopen(path, "wb1");
    REQUIRE(g);
    if (size) REQUIRE(gzwrite(g, data, (unsigned)size) == (int)size);
    REQUIRE(gzclose(g) == Z_OK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2 || size > (1u << 20)) return 0;
    uint8_t f0 = data[0], f1 = data[1];
    data += 2, size -= 2;
    const uint8_t *part[2];
    size_t len[2];
    int np = lf_fuzz_split(data, size, part, len, 2);
    static const char *const names[4] = {"d.json", "d.jsonl", "d.json.gz", "d.jsonl.gz"};
    const char *name = names[f0 & 3];
    for (int i = 0; i < 4; i++) lf_fuzz_unlink(dir_data, names[i]);
    lf_fuzz_unlink(dir_data, "dataset_info.json");
    char path[1024];
    if ((f0 & 2) && (f0 & 4)) {
        snprintf(path, sizeof path, "%s/%s", dir_data, name);
        write_gz(path, part[0], len[0]);
    } else {
        lf_fuzz_write(dir_data, name, part[0], len[0], path, sizeof path);
    }
    lf_data_options o;
    lf_data_default_options(&o);
    o.dataset_dir = dir_data;
    if ((f0 & 8) && np == 2) {
        char ipath[1024];
        lf_fuzz_write(dir_data, "dataset_info.json", part[1], len[1], ipath, sizeof ipath);
        o.dataset = "fz";
    } else {
        o.dataset = name;
    }
    o.packing = (f0 >> 4) & 1;
    o.train_on_prompt = (f0 >> 5) & 1;
    o.mask_history = (f0 >> 6) & 1;
    if (f0 & 128) o.val_size = 0.25;
    o.cutoff_len = 4 + 8 * (f1 & 63);
    o.eos_mode = (f1 & 128) ? LF_DATA_EOS_NEVER : LF_DATA_EOS_AUTO;
    lf_dataset *train = (lf_dataset *)1, *eval = (lf_dataset *)1;
    lf_data_report rep;
    lf_err err;
    err.msg[0] = '\0';
    if (lf_data_load(&o, tok, tmpl[(f1 >> 6) & 1], &train, &eval, &rep, &err) != LF_OK) {
        REQUIRE(train == NULL && err.msg[0] != '\0');
        REQUIRE(eval == NULL || eval == (lf_dataset *)1);
        return 0;
    }
    REQUIRE(rep.n_train == train->n_examples && rep.n_msgs >= 0 && rep.n_msgs <= LF_DATA_REPORT_MSGS);
    check_dataset(train, o.cutoff_len);
    if (eval) {
        REQUIRE(o.val_size > 0);
        check_dataset(eval, o.cutoff_len);
    }
    lf_dataset_free(train);
    lf_dataset_free(eval);
    return 0;
}
