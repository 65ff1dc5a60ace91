/* test_data.c - unit tests of finetune/data: every row format and file type (.json array, .jsonl, .json.gz,
 * .jsonl.gz, directories), dataset_info.json columns/tags, token layout and label masks (train_on_prompt,
 * mask_history, EOS rule), LLaMA-Factory truncation, bad rows counted with file:line, zero-usable-rows and
 * malformed-JSON errors, val_size split, packing (greedy knapsack, positions, label boundaries), iterator
 * determinism by seed, rank sharding, and resume from a saved position.
 *
 * The tokenizer is written here: byte-level BPE without merges, so every byte is one token (id = byte value
 * through the ByteLevel alphabet) and the added tokens are 256..263; expected ids are computed independently
 * by ref_tok(). Random parts (lengths for packing/iteration) use LF_TEST_SEED or the time, printed.
 * Prints "N passed, M failed"; exit 1 on failure. */
#define _XOPEN_SOURCE 700
#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "core/fileio.h"
#include "core/log.h"
#include "core/rng.h"
#include "finetune/data.h"
#include "finetune/data_int.h"

static int passed, failed;
#define CHECK(cond, ...)                                \
    do {                                                \
        if (cond) {                                     \
            passed++;                                   \
        } else {                                        \
            failed++;                                   \
            printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            printf(__VA_ARGS__);                        \
            printf("\n");                               \
        }                                               \
    } while (0)

static char tmp[256];
static lf_tokenizer *tok;
static lf_rng rng;

static const char *const SPECIALS[] = {"<s>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                       "<|eot_id|>", "<|im_start|>", "<|im_end|>", "</s>", NULL};
#define EOS_ID 263 /* "</s>" = 256 + 7 */

/* ---- files ---- */

static void path_of(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", tmp, name); }

static void write_file(const char *name, const char *text) {
    char p[512];
    path_of(p, sizeof p, name);
    FILE *f = fopen(p, "wb");
    if (!f) {
        printf("cannot write %s\n", p);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
}

static void write_gz(const char *name, const char *text) {
    char p[512];
    path_of(p, sizeof p, name);
    gzFile g = gzopen(p, "wb");
    if (!g) {
        printf("cannot write %s\n", p);
        exit(1);
    }
    gzwrite(g, text, (unsigned)strlen(text));
    gzclose(g);
}

static void make_dir(const char *name) {
    char p[512];
    path_of(p, sizeof p, name);
    lf_mkdirs(p, NULL);
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

/* ---- the byte tokenizer ---- */

static int utf8_put(char *o, unsigned cp) {
    if (cp < 0x80) return o[0] = (char)cp, 1;
    o[0] = (char)(0xC0 | (cp >> 6));
    o[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

static void make_tokenizer(void) {
    json_t *vocab = json_object();
    int n = 0;
    for (unsigned b = 0; b < 256; b++) { /* GPT-2 bytes_to_unicode */
        unsigned cp = ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174)) ? b : 256 + (unsigned)n++;
        char s[4];
        int k = utf8_put(s, cp);
        json_object_set_new(vocab, (s[k] = 0, s), json_integer(b));
    }
    json_t *added = json_array();
    for (int i = 0; SPECIALS[i]; i++)
        json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 256 + i, "content", SPECIALS[i],
                                               "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1));
    json_t *t = json_pack("{s:s, s:n, s:n, s:o, s:n, s:{s:s, s:b, s:b, s:b}, s:n, s:{s:s, s:b, s:b, s:b},"
                          " s:{s:s, s:n, s:n, s:n, s:n, s:b, s:b, s:b, s:o, s:[]}}",
                          "version", "1.0", "truncation", "padding", "added_tokens", added, "normalizer",
                          "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 0,
                          "post_processor", "decoder", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1,
                          "use_regex", 1, "model", "type", "BPE", "dropout", "unk_token", "continuing_subword_prefix",
                          "end_of_word_suffix", "fuse_unk", 0, "byte_fallback", 0, "ignore_merges", 0, "vocab", vocab,
                          "merges");
    make_dir("tok");
    char p[512];
    path_of(p, sizeof p, "tok/tokenizer.json");
    json_dump_file(t, p, 0);
    json_decref(t);
    write_file("tok/tokenizer_config.json", "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}");
    path_of(p, sizeof p, "tok");
    lf_err err = {0};
    if (lf_tokenizer_load(p, &tok, &err) != LF_OK) {
        printf("tokenizer: %s\n", err.msg);
        exit(1);
    }
}

/* Independent reference: specials by longest match, every other byte = its id. */
static int64_t ref_tok(const char *s, int32_t *out) {
    int64_t n = 0;
    while (*s) {
        int hit = -1;
        size_t hl = 0;
        for (int i = 0; SPECIALS[i]; i++) {
            size_t l = strlen(SPECIALS[i]);
            if (l > hl && !strncmp(s, SPECIALS[i], l)) hit = i, hl = l;
        }
        if (hit >= 0) out[n++] = 256 + hit, s += hl;
        else out[n++] = (unsigned char)*s++;
    }
    return n;
}

/* Expected example from alternating segments; trained[i] says whether segment i carries labels. */
typedef struct {
    int32_t ids[8192], labels[8192];
    int64_t n;
} expect_t;
static expect_t X;

static void expect_begin(void) { X.n = 0; }
static void expect_seg(const char *text, int trained) {
    int64_t k = ref_tok(text, X.ids + X.n);
    for (int64_t i = 0; i < k; i++) X.labels[X.n + i] = trained ? X.ids[X.n + i] : LF_DATA_IGNORE;
    X.n += k;
}
static void expect_ids(const int32_t *ids, int64_t n, int trained) {
    for (int64_t i = 0; i < n; i++) X.ids[X.n + i] = ids[i], X.labels[X.n + i] = trained ? ids[i] : LF_DATA_IGNORE;
    X.n += n;
}

static void check_example(const lf_dataset *ds, int64_t e, const char *what) {
    if (!ds || e >= ds->n_examples) {
        CHECK(0, "%s: example %lld missing", what, (long long)e);
        return;
    }
    int64_t s = ds->offsets[e], n = ds->offsets[e + 1] - s;
    int ok = n == X.n;
    int64_t bad = -1;
    for (int64_t i = 0; ok && i < n; i++)
        if (ds->input_ids[s + i] != X.ids[i] || ds->labels[s + i] != X.labels[i]) ok = 0, bad = i;
    CHECK(ok, "%s: example %lld differs (len %lld want %lld, first bad %lld: id %d/%d label %d/%d)", what, (long long)e,
          (long long)n, (long long)X.n, (long long)bad, bad >= 0 ? ds->input_ids[s + bad] : 0, bad >= 0 ? X.ids[bad] : 0,
          bad >= 0 ? ds->labels[s + bad] : 0, bad >= 0 ? X.labels[bad] : 0);
}

/* ---- loading helpers ---- */

static lf_chat_template *builtin(const char *name) {
    lf_chat_template *t = NULL;
    lf_err err = {0};
    if (lf_chat_template_compile(lf_chat_template_builtin(name), &t, &err)) printf("compile %s: %s\n", name, err.msg);
    return t;
}

static lf_chat_template *compile(const char *src) {
    lf_chat_template *t = NULL;
    lf_err err = {0};
    if (lf_chat_template_compile(src, &t, &err)) printf("compile: %s\n", err.msg);
    return t;
}

static void opts_for(lf_data_options *o, const char *dataset) {
    lf_data_default_options(o);
    o->dataset = dataset;
    o->dataset_dir = tmp;
}

static lf_status load(const lf_data_options *o, const lf_chat_template *t, lf_dataset **tr, lf_dataset **ev,
                      lf_data_report *rep, lf_err *err) {
    lf_err_clear(err);
    return lf_data_load(o, tok, t, tr, ev, rep, err);
}

static int report_has(const lf_data_report *r, const char *needle) {
    for (int i = 0; i < r->n_msgs; i++)
        if (strstr(r->msgs[i], needle)) return 1;
    return 0;
}

#define LLAMA3_USER(x) "<|start_header_id|>user<|end_header_id|>\n\n" x "<|eot_id|>"
#define LLAMA3_ASSIST "<|start_header_id|>assistant<|end_header_id|>\n\n"
#define QWEN_SYS "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"

/* ---- tests ---- */

static void test_alpaca_json(void) {
    write_file("alpaca.json", "[{\"instruction\": \"Do X\", \"input\": \"with Y\", \"output\": \"Done\"},\n"
                              " {\"instruction\": \"Only\", \"input\": \"\", \"output\": \"Ok\"},\n"
                              " {\"instruction\": \"S\", \"output\": \"R\", \"system\": \"Sys\"},\n"
                              " {\"input\": \"just input\", \"output\": \"I\"}]");
    lf_chat_template *t = builtin("llama3");
    lf_data_options o;
    opts_for(&o, "alpaca.json");
    lf_dataset *tr = NULL;
    lf_data_report rep;
    lf_err err;
    lf_status st = load(&o, t, &tr, NULL, &rep, &err);
    CHECK(st == LF_OK, "alpaca.json: %s", err.msg);
    CHECK(tr && tr->n_examples == 4 && rep.rows_read == 4 && rep.rows_skipped == 0, "alpaca.json: %lld examples",
          tr ? (long long)tr->n_examples : -1);
    expect_begin();
    expect_seg("<s>" LLAMA3_USER("Do X\nwith Y") LLAMA3_ASSIST, 0);
    expect_seg("Done<|eot_id|>", 1);
    check_example(tr, 0, "alpaca instruction+input");
    expect_begin();
    expect_seg("<s>" LLAMA3_USER("Only") LLAMA3_ASSIST, 0);
    expect_seg("Ok<|eot_id|>", 1);
    check_example(tr, 1, "alpaca empty input");
    expect_begin();
    expect_seg("<s><|start_header_id|>system<|end_header_id|>\n\nSys<|eot_id|>" LLAMA3_USER("S") LLAMA3_ASSIST, 0);
    expect_seg("R<|eot_id|>", 1);
    check_example(tr, 2, "alpaca system");
    expect_begin();
    expect_seg("<s>" LLAMA3_USER("just input") LLAMA3_ASSIST, 0);
    expect_seg("I<|eot_id|>", 1);
    check_example(tr, 3, "alpaca input only");
    lf_dataset_free(tr);
    lf_chat_template_free(t);
}

static void test_history_masks(void) {
    write_file("hist.jsonl", "{\"instruction\": \"q2\", \"output\": \"a2\", \"history\": [[\"q1\", \"a1\"]]}\n");
    lf_chat_template *t = builtin("qwen");
    const char *s1 = QWEN_SYS "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\n", *t1 = "a1<|im_end|>\n",
               *s2 = "<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n", *t2 = "a2<|im_end|>\n";
    for (int mode = 0; mode < 3; mode++) {
        lf_data_options o;
        opts_for(&o, "hist.jsonl");
        o.mask_history = mode == 1;
        o.train_on_prompt = mode == 2;
        lf_dataset *tr = NULL;
        lf_err err;
        lf_status st = load(&o, t, &tr, NULL, NULL, &err);
        CHECK(st == LF_OK, "history mode %d: %s", mode, err.msg);
        expect_begin();
        expect_seg(s1, mode == 2);
        expect_seg(t1, mode != 1);
        expect_seg(s2, mode == 2);
        expect_seg(t2, 1);
        check_example(tr, 0, mode == 0 ? "history default" : mode == 1 ? "mask_history" : "train_on_prompt");
        lf_dataset_free(tr);
    }
    lf_chat_template_free(t);
}

static void test_sharegpt_openai(void) {
    write_file("sg.jsonl",
               "{\"conversations\": [{\"from\": \"system\", \"value\": \"S\"}, {\"from\": \"human\", \"value\": \"h1\"},"
               " {\"from\": \"gpt\", \"value\": \"g1\"}, {\"from\": \"human\", \"value\": \"h2\"}, {\"from\": \"gpt\", \"value\": \"g2\"}]}\n"
               "{\"conversations\": [{\"from\": \"human\", \"value\": \"call\"}, {\"from\": \"function_call\", \"value\": \"f()\"},"
               " {\"from\": \"observation\", \"value\": \"42\"}, {\"from\": \"gpt\", \"value\": \"It is 42\"}]}\n"
               "{\"conversations\": [{\"from\": \"user\", \"value\": \"u\"}, {\"from\": \"assistant\", \"value\": \"a\"}]}\n"
               "{\"system\": \"SC\", \"conversations\": [{\"from\": \"human\", \"value\": \"u\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}\n");
    write_gz("oa.jsonl.gz", "{\"messages\": [{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", \"content\": \"u\"},"
                            " {\"role\": \"assistant\", \"content\": \"a\"}]}\n");
    lf_chat_template *t = builtin("llama3");
    lf_data_options o;
    opts_for(&o, "sg.jsonl, oa.jsonl.gz");
    lf_dataset *tr = NULL;
    lf_data_report rep;
    lf_err err;
    lf_status st = load(&o, t, &tr, NULL, &rep, &err);
    CHECK(st == LF_OK && tr && tr->n_examples == 5, "sharegpt+openai: %s (%lld examples)", err.msg,
          tr ? (long long)tr->n_examples : -1);
    CHECK(rep.n_files == 2, "sharegpt+openai: %lld files", (long long)rep.n_files);
    const char *sys = "<s><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>";
    expect_begin();
    char buf[512];
    snprintf(buf, sizeof buf, "%s" LLAMA3_USER("h1") LLAMA3_ASSIST, sys);
    expect_seg(buf, 0);
    expect_seg("g1<|eot_id|>", 1);
    expect_seg(LLAMA3_USER("h2") LLAMA3_ASSIST, 0);
    expect_seg("g2<|eot_id|>", 1);
    check_example(tr, 0, "sharegpt system + 2 turns");
    expect_begin();
    expect_seg("<s>" LLAMA3_USER("call") LLAMA3_ASSIST, 0);
    expect_seg("f()<|eot_id|>", 1);
    expect_seg("<|start_header_id|>tool<|end_header_id|>\n\n42<|eot_id|>" LLAMA3_ASSIST, 0);
    expect_seg("It is 42<|eot_id|>", 1);
    check_example(tr, 1, "sharegpt function_call/observation");
    expect_begin();
    expect_seg("<s>" LLAMA3_USER("u") LLAMA3_ASSIST, 0);
    expect_seg("a<|eot_id|>", 1);
    check_example(tr, 2, "sharegpt user/assistant synonyms");
    expect_begin();
    expect_seg("<s><|start_header_id|>system<|end_header_id|>\n\nSC<|eot_id|>" LLAMA3_USER("u") LLAMA3_ASSIST, 0);
    expect_seg("a<|eot_id|>", 1);
    check_example(tr, 3, "sharegpt system column");
    expect_begin();
    snprintf(buf, sizeof buf, "%s" LLAMA3_USER("u") LLAMA3_ASSIST, sys);
    expect_seg(buf, 0);
    expect_seg("a<|eot_id|>", 1);
    check_example(tr, 4, "openai messages .jsonl.gz");
    lf_dataset_free(tr);
    lf_chat_template_free(t);
}

static void test_tokenized(void) {
    write_gz("tk.json.gz", "[{\"input_ids\": [1, 2, 3, 4], \"attention_mask\": [1, 1, 1, 0]},\n"
                           " {\"input_ids\": [5, 6, 7], \"labels\": [-100, 6, 7]},\n"
                           " {\"input_ids\": [1, 999999]},\n"
                           " {\"input_ids\": [8, 9], \"labels\": [-100, -100]},\n"
                           " {\"input_ids\": [10, 11, 12, 13, 14, 15], \"labels\": [-100, -100, 12, 13, 14, 15]}]");
    lf_data_options o;
    opts_for(&o, "tk.json.gz");
    o.cutoff_len = 4;
    lf_dataset *tr = NULL;
    lf_data_report rep;
    lf_err err;
    lf_status st = load(&o, NULL, &tr, NULL, &rep, &err); /* no template needed */
    CHECK(st == LF_OK && tr && tr->n_examples == 3, "tokenized: %s", err.msg);
    static const int32_t a[] = {1, 2, 3}, b[] = {5, 6, 7}, c[] = {10, 11, 12, 13};
    expect_begin();
    expect_ids(a, 3, 1);
    check_example(tr, 0, "tokenized, mask drops padding, labels = ids");
    expect_begin();
    expect_ids(b, 1, 0);
    expect_ids(b + 1, 2, 1);
    check_example(tr, 1, "tokenized with labels");
    expect_begin();
    expect_ids(c, 2, 0);
    expect_ids(c + 2, 2, 1);
    check_example(tr, 2, "tokenized cut to cutoff_len");
    CHECK(rep.rows_skipped == 2 && report_has(&rep, "tk.json.gz[2]: 'input_ids'[1] = 999999 is outside") &&
              report_has(&rep, "tk.json.gz[3]: nothing to train"),
          "tokenized bad rows: %lld skipped, first '%s'", (long long)rep.rows_skipped, rep.msgs[0]);
    CHECK(rep.rows_truncated == 1, "tokenized truncated %lld", (long long)rep.rows_truncated);
    lf_dataset_free(tr);
}

static void test_directory(void) {
    make_dir("dir");
    write_file("dir/b.jsonl", "{\"instruction\": \"i\", \"output\": \"B1\"}\n");
    write_file("dir/a.json", "[{\"instruction\": \"i\", \"output\": \"A1\"}, {\"instruction\": \"i\", \"output\": \"A2\"}]");
    write_gz("dir/c.json.gz", "{\"instruction\": \"i\", \"output\": \"C1\"}\n{\"instruction\": \"i\", \"output\": \"C2\"}\n");
    write_file("dir/notes.txt", "not data");
    lf_chat_template *t = builtin("llama3");
    lf_data_options o;
    opts_for(&o, "dir");
    lf_dataset *tr = NULL;
    lf_data_report rep;
    lf_err err;
    lf_status st = load(&o, t, &tr, NULL, &rep, &err);
    CHECK(st == LF_OK && tr && tr->n_examples == 5 && rep.n_files == 3, "directory: %s", err.msg);
    const char *outs[] = {"A1", "A2", "B1", "C1", "C2"}; /* name order: a.json, b.jsonl, c.json.gz */
    for (int i = 0; i < 5; i++) {
        char tg[64];
        snprintf(tg, sizeof tg, "%s<|eot_id|>", outs[i]);
        expect_begin();
        expect_seg("<s>" LLAMA3_USER("i") LLAMA3_ASSIST, 0);
        expect_seg(tg, 1);
        check_example(tr, i, "directory order");
    }
    lf_dataset_free(tr);
    /* .json holding JSON lines, and a .json holding one pretty-printed object */
    write_file("jl.json", "{\"instruction\": \"i\", \"output\": \"J1\"}\n{\"instruction\": \"i\", \"output\": \"J2\"}\n");
    write_file("one.json", "{\n  \"instruction\": \"i\",\n  \"output\": \"O1\"\n}\n");
    opts_for(&o, "jl.json,one.json");
    st = load(&o, t, &tr, NULL, &rep, &err);
    CHECK(st == LF_OK && tr && tr->n_examples == 3, "JSON lines / single object in .json: %s", err.msg);
    const char *outs2[] = {"J1", "J2", "O1"};
    for (int i = 0; i < 3; i++) {
        char tg[64];
        snprintf(tg, sizeof tg, "%s<|eot_id|>", outs2[i]);
        expect_begin();
        expect_seg("<s>" LLAMA3_USER("i") LLAMA3_ASSIST, 0);
        expect_seg(tg, 1);
        check_example(tr, i, ".json variants");
    }
    lf_dataset_free(tr);
    /* max_samples: first N rows of the dataset, across its files */
    opts_for(&o, "dir");
    o.max_samples = 3;
    st = load(&o, t, &tr, NULL, &rep, &err);
    CHECK(st == LF_OK && tr && tr->n_examples == 3 && rep.rows_read == 3, "max_samples=3: %lld", tr ? (long long)tr->n_examples : -1);
    lf_dataset_free(tr);
    lf_chat_template_free(t);
}

static void test_dataset_info(void) {
    make_dir("info");
    write_file("info/dataset_info.json",
               "{\"mine\": {\"file_name\": \"mine.json\", \"columns\": {\"prompt\": \"q\", \"query\": \"ctx\", \"response\": \"a\","
               " \"system\": \"sys\", \"history\": \"hist\"}},\n"
               " \"conv\": {\"file_name\": \"conv.jsonl\", \"formatting\": \"sharegpt\", \"columns\": {\"messages\": \"turns\"},"
               " \"tags\": {\"role_tag\": \"r\", \"content_tag\": \"text\", \"user_tag\": \"U\", \"assistant_tag\": \"A\", \"system_tag\": \"S\"}},\n"
               " \"remote\": {\"hf_hub_url\": \"org/set\"},\n"
               " \"auto\": {\"file_name\": \"../sg.jsonl\"},\n"
               " \"pref\": {\"file_name\": \"mine.json\", \"ranking\": true},\n"
               " \"badfmt\": {\"file_name\": \"mine.json\", \"formatting\": \"csv\"}}");
    write_file("info/mine.json", "[{\"q\": \"Q\", \"ctx\": \"C\", \"a\": \"A\", \"sys\": \"Y\", \"hist\": [[\"h\", \"r\"]],"
                                 " \"instruction\": \"ignored\", \"output\": \"ignored\"}]");
    write_file("info/conv.jsonl", "{\"turns\": [{\"r\": \"S\", \"text\": \"sy\"}, {\"r\": \"U\", \"text\": \"u\"}, {\"r\": \"A\", \"text\": \"a\"}]}\n"
                                  "{\"turns\": [{\"r\": \"human\", \"text\": \"u\"}, {\"r\": \"A\", \"text\": \"a\"}]}\n");
    write_file("info/plain.jsonl", "{\"instruction\": \"p\", \"output\": \"P\"}\n");
    char dir[512];
    path_of(dir, sizeof dir, "info");
    lf_chat_template *t = builtin("llama3");
    lf_data_options o;
    lf_data_default_options(&o);
    o.dataset_dir = dir;
    o.dataset = "mine, conv,plain.jsonl,auto";
    lf_dataset *tr = NULL;
    lf_data_report rep;
    lf_err err;
    lf_status st = load(&o, t, &tr, NULL, &rep, &err);
    CHECK(st == LF_OK && tr && tr->n_examples == 7, "dataset_info: %s (%lld examples)", err.msg,
          tr ? (long long)tr->n_examples : -1); /* 1 + 1 + 1 + 4 (auto-detected sharegpt) */
    expect_begin();
    expect_seg("<s><|start_header_id|>system<|end_header_id|>\n\nY<|eot_id|>" LLAMA3_USER("h") LLAMA3_ASSIST, 0);
    expect_seg("r<|eot_id|>", 1);
    expect_seg(LLAMA3_USER("Q\nC") LLAMA3_ASSIST, 0);
    expect_seg("A<|eot_id|>", 1);
    check_example(tr, 0, "dataset_info alpaca columns");
    expect_begin();
    expect_seg("<s><|start_header_id|>system<|end_header_id|>\n\nsy<|eot_id|>" LLAMA3_USER("u") LLAMA3_ASSIST, 0);
    expect_seg("a<|eot_id|>", 1);
    check_example(tr, 1, "dataset_info sharegpt tags");
    CHECK(rep.rows_skipped == 1 && report_has(&rep, "conv.jsonl:2: 'turns'[0]: unknown role 'human'"),
          "explicit tags are strict: %s", rep.n_msgs ? rep.msgs[0] : "(no message)");
    lf_dataset_free(tr);
    struct {
        const char *ds;
        lf_status code;
        const char *msg;
    } bad[] = {{"remote", LF_EUNSUPPORTED, "\"hf_hub_url\" is not supported"},
               {"pref", LF_EUNSUPPORTED, "ranking"},
               {"badfmt", LF_EINVAL, "formatting \"csv\""},
               {"nope", LF_ENOTFOUND, "not an entry of"},
               {"", LF_EINVAL, "required"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o.dataset = bad[i].ds;
        st = load(&o, t, &tr, NULL, NULL, &err);
        CHECK(st == bad[i].code && strstr(err.msg, bad[i].msg) && tr == NULL, "dataset '%s': %s: %s", bad[i].ds,
              lf_status_name(st), err.msg);
    }
    lf_chat_template_free(t);
}

static void test_bad_rows(void) {
    write_file("bad.jsonl", "{\"instruction\": \"a\", \"output\": \"ok\"}\n"
                            "{\"instruction\": \"a\"}\n"
                            "\n"
                            "{\"instruction\": \"a\", \"output\": 5}\r\n"
                            "{\"instruction\": \"a\", \"output\": \"\"}\n"
                            "[1, 2]\n"
                            "{\"instruction\": \"a\", \"output\": \"ok2\"}\n"
                            "{\"foo\": 1}\n");
    write_file("bad.json", "[{\"instruction\": \"a\", \"output\": \"ok\"}, {\"instruction\": 3, \"output\": \"x\"}]");
    write_file("badsg.jsonl", "{\"conversations\": [{\"from\": \"human\", \"value\": \"u\"}]}\n"
                              "{\"conversations\": [{\"from\": \"gpt\", \"value\": \"a\"}, {\"from\": \"human\", \"value\": \"u\"}]}\n"
                              "{\"conversations\": [{\"from\": \"human\", \"value\": \"u\"}, {\"from\": \"system\", \"value\": \"s\"}]}\n"
                              "{\"conversations\": \"text\"}\n"
                              "{\"conversations\": [{\"from\": \"human\", \"value\": \"u\"}, {\"from\": \"gpt\", \"value\": \"\"}]}\n"
                              "{\"conversations\": [{\"from\": \"human\", \"value\": \"u\"}, {\"from\": \"gpt\", \"value\": \"fine\"}]}\n"
                              "{\"conversations\": [{\"from\": \"human\", \"value\": \"u\"}, {\"from\": \"gpt\", \"value\": [1]}]}\n");
    lf_chat_template *t = builtin("llama3");
    lf_data_options o;
    opts_for(&o, "bad.jsonl,bad.json,badsg.jsonl");
    lf_dataset *tr = NULL;
    lf_data_report rep;
    lf_err err;
    lf_status st = load(&o, t, &tr, NULL, &rep, &err);
    CHECK(st == LF_OK && tr && tr->n_examples == 4, "bad rows: %s (%lld examples)", err.msg, tr ? (long long)tr->n_examples : -1);
    CHECK(rep.rows_read == 16 && rep.rows_skipped == 12, "bad rows: read %lld skipped %lld", (long long)rep.rows_read,
          (long long)rep.rows_skipped);
    const char *want[] = {"bad.jsonl:2: missing 'output'", "bad.jsonl:4: 'output' must be a string, got an integer",
                          "bad.jsonl:5: empty response", "bad.jsonl:6: row is a list, not an object",
                          "bad.jsonl:8: missing 'instruction'", "bad.json[1]: 'instruction' must be a string",
                          "badsg.jsonl:1: 'conversations' must end with an assistant turn",
                          "badsg.jsonl:2: 'conversations'[0]: expected a user turn, got 'gpt'",
                          "badsg.jsonl:3: 'conversations'[1]: a system turn is only allowed first",
                          "badsg.jsonl:4: 'conversations' must be a list", "badsg.jsonl:5: empty response",
                          "badsg.jsonl:7: 'conversations'[1]: 'value' must be a string"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECK(report_has(&rep, want[i]), "report lacks \"%s\"", want[i]);
    lf_dataset_free(tr);

    /* zero usable rows: LF_EINVAL naming the file and the first reason */
    write_file("allbad.jsonl", "{\"instruction\": \"a\"}\n{\"output\": 1}\n");
    opts_for(&o, "allbad.jsonl");
    st = load(&o, t, &tr, NULL, &rep, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "no usable rows") && strstr(err.msg, "allbad.jsonl") &&
              strstr(err.msg, "allbad.jsonl:1: missing 'output'") && tr == NULL,
          "zero usable rows: %s: %s", lf_status_name(st), err.msg);
    write_file("empty.jsonl", "\n\n");
    opts_for(&o, "empty.jsonl");
    st = load(&o, t, &tr, NULL, &rep, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "no rows in") && strstr(err.msg, "empty.jsonl"), "empty file: %s", err.msg);

    /* malformed JSON: file, line, column */
    write_file("mal.jsonl", "{\"instruction\": \"a\", \"output\": \"ok\"}\n{\"instruction\": \"a\", \"output\": }\n");
    opts_for(&o, "mal.jsonl");
    st = load(&o, t, &tr, NULL, &rep, &err);
    CHECK(st == LF_EFORMAT && strstr(err.msg, "mal.jsonl:2:32: invalid JSON"), "malformed jsonl: %s: %s", lf_status_name(st),
          err.msg);
    write_file("mal.json", "[\n  {\"instruction\": \"a\", \"output\": \"ok\"},\n  {oops}\n]");
    opts_for(&o, "mal.json");
    st = load(&o, t, &tr, NULL, &rep, &err);
    CHECK(st == LF_EFORMAT && strstr(err.msg, "mal.json:3:7: invalid JSON"), "malformed json: %s", err.msg);
    /* truncated gzip */
    write_gz("trunc.jsonl.gz", "{\"instruction\": \"a\", \"output\": \"ok\"}\n{\"instruction\": \"b\", \"output\": \"ok\"}\n");
    char p[512];
    path_of(p, sizeof p, "trunc.jsonl.gz");
    FILE *f = fopen(p, "rb");
    char gz[4096];
    size_t n = fread(gz, 1, sizeof gz, f);
    fclose(f);
    f = fopen(p, "wb");
    fwrite(gz, 1, n - 12, f);
    fclose(f);
    opts_for(&o, "trunc.jsonl.gz");
    st = load(&o, t, &tr, NULL, &rep, &err);
    CHECK(st == LF_EFORMAT && strstr(err.msg, "trunc.jsonl.gz"), "truncated gzip: %s: %s", lf_status_name(st), err.msg);
    write_file("data.csv", "a,b\n");
    opts_for(&o, "data.csv");
    st = load(&o, t, &tr, NULL, &rep, &err);
    CHECK(st == LF_EUNSUPPORTED && strstr(err.msg, "data.csv"), "csv: %s", err.msg);
    lf_chat_template_free(t);
}

static void test_truncation(void) {
    static const int64_t cases[][5] = {/* source, target, cutoff -> source', target' (LLaMA-Factory infer_seqlen) */
                                       {10, 5, 100, 10, 5},  {100, 10, 50, 40, 10}, {10, 100, 50, 10, 40},
                                       {60, 40, 50, 30, 20}, {100, 10, 5, 5, 0},    {0, 0, 7, 0, 0},
                                       {30, 30, 40, 20, 20}, {7, 9, 16, 7, 9}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t s, t;
        lf_data_infer_seqlen(cases[i][0], cases[i][1], cases[i][2], &s, &t);
        CHECK(s == cases[i][3] && t == cases[i][4], "infer_seqlen(%lld, %lld, %lld) = (%lld, %lld) want (%lld, %lld)",
              (long long)cases[i][0], (long long)cases[i][1], (long long)cases[i][2], (long long)s, (long long)t,
              (long long)cases[i][3], (long long)cases[i][4]);
    }
    /* two turns under a budget: turn 1 takes what infer_seqlen gives, turn 2 the rest */
    char row[2048], longq[401], longa[201];
    memset(longq, 'q', 400), longq[400] = 0;
    memset(longa, 'a', 200), longa[200] = 0;
    snprintf(row, sizeof row, "{\"instruction\": \"%s\", \"output\": \"%s\", \"history\": [[\"x\", \"yy\"]]}\n", longq, longa);
    write_file("long.jsonl", row);
    lf_chat_template *t = builtin("qwen");
    int32_t s1[600], t1[600], s2[600], t2[600];
    char buf[1024];
    int64_t ns1 = ref_tok(QWEN_SYS "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n", s1);
    int64_t nt1 = ref_tok("yy<|im_end|>\n", t1);
    snprintf(buf, sizeof buf, "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n", longq);
    int64_t ns2 = ref_tok(buf, s2);
    snprintf(buf, sizeof buf, "%s<|im_end|>\n", longa);
    int64_t nt2 = ref_tok(buf, t2);
    for (int mh = 0; mh < 2; mh++) {
        lf_data_options o;
        opts_for(&o, "long.jsonl");
        o.cutoff_len = 300;
        o.mask_history = mh;
        lf_dataset *tr = NULL;
        lf_data_report rep;
        lf_err err;
        lf_status st = load(&o, t, &tr, NULL, &rep, &err);
        CHECK(st == LF_OK && rep.rows_truncated == 1, "truncation: %s", err.msg);
        int64_t a, b, c, d, used = 0;
        expect_begin();
        if (!mh) {
            lf_data_infer_seqlen(ns1, nt1, 300, &a, &b);
            used = a + b;
            lf_data_infer_seqlen(ns2, nt2, 300 - used, &c, &d);
            expect_ids(s1, a, 0), expect_ids(t1, b, 1), expect_ids(s2, c, 0), expect_ids(t2, d, 1);
        } else { /* last turn first; the first turn gets what is left */
            lf_data_infer_seqlen(ns2, nt2, 300, &c, &d);
            used = c + d;
            if (used < 300) {
                lf_data_infer_seqlen(ns1, nt1, 300 - used, &a, &b);
                expect_ids(s1, a, 0), expect_ids(t1, b, 0);
            }
            expect_ids(s2, c, 0), expect_ids(t2, d, 1);
        }
        check_example(tr, 0, mh ? "truncation mask_history" : "truncation per turn");
        CHECK(tr && tr->n_tokens <= 300, "truncated length %lld > 300", tr ? (long long)tr->n_tokens : -1);
        lf_dataset_free(tr);
    }
    /* nothing left to train */
    snprintf(row, sizeof row, "{\"instruction\": \"%s\", \"output\": \"abcdefghij\"}\n", longq);
    write_file("nothing.jsonl", row);
    lf_data_options o;
    opts_for(&o, "nothing.jsonl,tk.json.gz");
    o.cutoff_len = 5;
    lf_dataset *tr = NULL;
    lf_data_report rep;
    lf_err err;
    lf_status st = load(&o, t, &tr, NULL, &rep, &err);
    CHECK(st == LF_OK && report_has(&rep, "nothing.jsonl:1: nothing to train after truncation to cutoff_len=5"),
          "nothing to train: %s %s", err.msg, rep.n_msgs ? rep.msgs[0] : "");
    CHECK(tr && tr->n_examples == 3 && tr->max_unit_len <= 5, "cutoff 5: max len %lld", tr ? (long long)tr->max_unit_len : -1);
    lf_dataset_free(tr);
    lf_chat_template_free(t);
}

static void test_eos_and_templates(void) {
    write_file("plain.jsonl", "{\"instruction\": \"q\", \"output\": \"a\"}\n");
    lf_chat_template *t = compile("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                                  "{% if add_generation_prompt %}assistant: {% endif %}");
    int32_t eos = EOS_ID;
    for (int never = 0; never < 2; never++) {
        lf_data_options o;
        opts_for(&o, "plain.jsonl");
        o.eos_mode = never ? LF_DATA_EOS_NEVER : LF_DATA_EOS_AUTO;
        lf_dataset *tr = NULL;
        lf_err err;
        lf_status st = load(&o, t, &tr, NULL, NULL, &err);
        CHECK(st == LF_OK, "eos: %s", err.msg);
        expect_begin();
        expect_seg("user: q\nassistant: ", 0);
        expect_seg("a\n", 1);
        if (!never) expect_ids(&eos, 1, 1);
        check_example(tr, 0, never ? "EOS never" : "EOS appended");
        lf_dataset_free(tr);
    }
    lf_chat_template_free(t);
    /* a template that already writes eos_token: nothing appended */
    t = builtin("default");
    lf_data_options o;
    opts_for(&o, "plain.jsonl");
    lf_dataset *tr = NULL;
    lf_err err;
    lf_status st = load(&o, t, &tr, NULL, NULL, &err);
    CHECK(st == LF_OK, "default template: %s", err.msg);
    expect_begin();
    expect_seg("Human: q\nAssistant:", 0);
    expect_seg(" a</s>\n", 1);
    check_example(tr, 0, "default template with eos_token");
    lf_dataset_free(tr);
    lf_chat_template_free(t);

    /* a template whose earlier turns depend on later ones: rows skipped naming the template */
    t = compile("{% for m in messages %}{% if loop.last %}[{{ m.content }}]{% else %}{{ m.content }}{% endif %}{% endfor %}");
    opts_for(&o, "plain.jsonl");
    o.template_name = "weird";
    lf_data_report rep;
    st = load(&o, t, &tr, NULL, &rep, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "template 'weird' is not incremental") && strstr(err.msg, "plain.jsonl:1"),
          "non-incremental template: %s", err.msg);
    lf_chat_template_free(t);

    /* raise_exception in the template skips the row with its message */
    write_file("obs.jsonl", "{\"conversations\": [{\"from\": \"human\", \"value\": \"u\"}, {\"from\": \"function_call\", \"value\": \"f\"},"
                            " {\"from\": \"observation\", \"value\": \"o\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}\n"
                            "{\"conversations\": [{\"from\": \"human\", \"value\": \"u\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}\n");
    t = builtin("mistral");
    opts_for(&o, "obs.jsonl");
    o.template_name = "mistral";
    st = load(&o, t, &tr, NULL, &rep, &err);
    CHECK(st == LF_OK && tr && tr->n_examples == 1 &&
              report_has(&rep, "obs.jsonl:1: template 'mistral': mistral template: only user and assistant roles"),
          "raise_exception row: %s / %s", err.msg, rep.n_msgs ? rep.msgs[0] : "");
    lf_dataset_free(tr);
    lf_chat_template_free(t);

    /* tools column reaches the template as a list */
    write_file("tools.jsonl",
               "{\"conversations\": [{\"from\": \"human\", \"value\": \"u\"}, {\"from\": \"gpt\", \"value\": \"a\"}],"
               " \"tools\": \"[{\\\"name\\\": \\\"f\\\"}, {\\\"name\\\": \\\"g\\\"}]\"}\n"
               "{\"conversations\": [{\"from\": \"human\", \"value\": \"u\"}, {\"from\": \"gpt\", \"value\": \"a\"}], \"tools\": \"[oops\"}\n");
    t = compile("{% if tools %}T{{ tools|length }}{{ tools[1].name }}|{% endif %}{% for m in messages %}{{ m.role }}:{{ m.content }};"
                "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}");
    opts_for(&o, "tools.jsonl");
    o.eos_mode = LF_DATA_EOS_NEVER;
    st = load(&o, t, &tr, NULL, &rep, &err);
    CHECK(st == LF_OK && tr && tr->n_examples == 1 && rep.rows_skipped == 1 && report_has(&rep, "'tools' is not valid JSON"),
          "tools: %s", err.msg);
    expect_begin();
    expect_seg("T2g|user:u;assistant:", 0);
    expect_seg("a;", 1);
    check_example(tr, 0, "tools");
    lf_dataset_free(tr);
    lf_chat_template_free(t);
}

/* ---- random datasets for split / packing / iteration ---- */

static int rand_int(int lo, int hi) { return lo + (int)(lf_rng_next(&rng) % (uint64_t)(hi - lo + 1)); }

/* n alpaca rows with distinct outputs "R<i>:" + random-length padding; returns the file name */
static void write_random_rows(const char *name, int n, int maxlen) {
    size_t cap = (size_t)n * (size_t)(maxlen + 64) + 16, len = 0;
    char *s = malloc(cap);
    for (int i = 0; i < n; i++) {
        int L = rand_int(1, maxlen);
        len += (size_t)snprintf(s + len, cap - len, "{\"instruction\": \"x\", \"output\": \"R%d:", i);
        for (int k = 0; k < L; k++) s[len++] = (char)('a' + k % 26);
        len += (size_t)snprintf(s + len, cap - len, "\"}\n");
    }
    s[len] = 0;
    write_file(name, s);
    free(s);
}

/* The row index an example came from (its "R<i>:" tag); -1 when absent. */
static int example_row(const lf_dataset *ds, int64_t e) {
    int64_t s = ds->offsets[e], n = ds->offsets[e + 1] - s;
    for (int64_t i = 0; i + 1 < n; i++)
        if (ds->input_ids[s + i] == 'R' && ds->labels[s + i] != LF_DATA_IGNORE) {
            int v = 0;
            for (int64_t k = i + 1; k < n && ds->input_ids[s + k] >= '0' && ds->input_ids[s + k] <= '9'; k++)
                v = v * 10 + ds->input_ids[s + k] - '0';
            return v;
        }
    return -1;
}

static void test_split(void) {
    write_random_rows("split.jsonl", 40, 10);
    write_random_rows("evalset.jsonl", 7, 10);
    lf_chat_template *t = builtin("qwen");
    int seen_eval[2][40];
    for (int run = 0; run < 3; run++) {
        lf_data_options o;
        opts_for(&o, "split.jsonl");
        o.val_size = 0.25;
        o.seed = run == 2 ? 1234 : 42;
        lf_dataset *tr = NULL, *ev = NULL;
        lf_data_report rep;
        lf_err err;
        lf_status st = load(&o, t, &tr, &ev, &rep, &err);
        CHECK(st == LF_OK && tr && ev && tr->n_examples == 30 && ev->n_examples == 10 && rep.n_eval == 10,
              "val_size 0.25: %s", err.msg);
        if (!tr || !ev) continue;
        int rows[40] = {0}, is_eval[40] = {0}, ok = 1, prev = -1;
        for (int64_t e = 0; e < tr->n_examples; e++) {
            int r = example_row(tr, e);
            ok &= r >= 0 && r < 40 && r > prev; /* train keeps file order */
            if (r >= 0 && r < 40) rows[r]++, prev = r;
        }
        for (int64_t e = 0; e < ev->n_examples; e++) {
            int r = example_row(ev, e);
            if (r >= 0 && r < 40) rows[r]++, is_eval[r] = 1;
        }
        for (int r = 0; r < 40; r++) ok &= rows[r] == 1;
        CHECK(ok, "split: every row exactly once, train in file order");
        if (run < 2) memcpy(seen_eval[run], is_eval, sizeof is_eval);
        else CHECK(memcmp(seen_eval[0], is_eval, sizeof is_eval) != 0, "another seed gives another split (C(40,10) ways)");
        lf_dataset_free(tr);
        lf_dataset_free(ev);
    }
    CHECK(memcmp(seen_eval[0], seen_eval[1], sizeof seen_eval[0]) == 0, "same seed, same split");
    lf_data_options o;
    opts_for(&o, "split.jsonl");
    lf_dataset *tr = NULL, *ev = NULL;
    lf_err err;
    o.val_size = 3;
    lf_status st = load(&o, t, &tr, &ev, NULL, &err);
    CHECK(st == LF_OK && ev && ev->n_examples == 3 && tr->n_examples == 37, "val_size 3: %s", err.msg);
    lf_dataset_free(tr), lf_dataset_free(ev);
    o.val_size = 0.999; /* ceil(39.96) = 40 leaves nothing */
    st = load(&o, t, &tr, &ev, NULL, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "leaving none to train"), "val_size too big: %s", err.msg);
    o.val_size = 2.5;
    st = load(&o, t, &tr, &ev, NULL, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "val_size"), "val_size 2.5: %s", err.msg);
    o.val_size = 0.1;
    st = load(&o, t, &tr, NULL, NULL, &err);
    CHECK(st == LF_EINVAL, "val_size without an eval output: %s", err.msg);
    o.eval_dataset = "evalset.jsonl";
    st = load(&o, t, &tr, &ev, NULL, &err);
    CHECK(st == LF_EINVAL && strstr(err.msg, "eval_dataset"), "val_size + eval_dataset: %s", err.msg);
    o.val_size = 0;
    st = load(&o, t, &tr, &ev, NULL, &err);
    CHECK(st == LF_OK && tr && ev && tr->n_examples == 40 && ev->n_examples == 7, "eval_dataset: %s", err.msg);
    lf_dataset_free(tr), lf_dataset_free(ev);
    lf_chat_template_free(t);
}

/* LLaMA-Factory greedy_knapsack on lengths, written the slow obvious way. Returns number of units; unit k's
 * lengths (descending, as picked) go to out[k][], with counts in cnt[k]. */
static int64_t knapsack_ref(const int64_t *len, int64_t n, int64_t cap, int64_t *flat, int64_t *off) {
    int64_t *v = malloc((size_t)n * sizeof *v), m = n, u = 0, k = 0;
    memcpy(v, len, (size_t)n * sizeof *v);
    for (int64_t i = 1; i < m; i++) /* insertion sort ascending */
        for (int64_t j = i; j > 0 && v[j - 1] > v[j]; j--) {
            int64_t t = v[j];
            v[j] = v[j - 1], v[j - 1] = t;
        }
    off[0] = 0;
    while (m > 0) {
        int64_t rem = cap;
        for (;;) {
            int64_t idx = -1; /* bisect_right(v, rem) - 1 */
            for (int64_t j = 0; j < m && v[j] <= rem; j++) idx = j;
            if (idx < 0) break;
            rem -= v[idx];
            flat[k++] = v[idx];
            memmove(v + idx, v + idx + 1, (size_t)(m - idx - 1) * sizeof *v);
            m--;
        }
        off[++u] = k;
    }
    free(v);
    return u;
}

static void check_unit_stream(const lf_dataset *ds, int64_t u, const int32_t *tok_, const int32_t *tgt, const int32_t *pos,
                              int64_t n, const char *what) {
    int ok = n == lf_dataset_unit_len(ds, u);
    int64_t at = 0;
    for (int64_t k = ds->unit_offsets[u]; ok && k < ds->unit_offsets[u + 1]; k++) {
        int64_t e = ds->unit_members[k], s = ds->offsets[e], len = ds->offsets[e + 1] - s;
        for (int64_t t = 0; ok && t < len; t++) {
            ok &= tok_[at + t] == ds->input_ids[s + t] && pos[at + t] == t;
            ok &= tgt[at + t] == (t + 1 < len ? ds->labels[s + t + 1] : LF_DATA_IGNORE); /* never crosses examples */
        }
        at += len;
    }
    CHECK(ok, "%s: unit %lld tokens/targets/pos wrong", what, (long long)u);
}

static void test_packing(void) {
    write_random_rows("pack.jsonl", 120, 60);
    lf_chat_template *t = builtin("llama3");
    lf_data_options o;
    opts_for(&o, "pack.jsonl");
    o.cutoff_len = 128;
    lf_dataset *plain = NULL, *packed = NULL;
    lf_err err;
    lf_status st = load(&o, t, &plain, NULL, NULL, &err);
    o.packing = 1;
    if (st == LF_OK) st = load(&o, t, &packed, NULL, NULL, &err);
    CHECK(st == LF_OK && plain && packed, "packing load: %s", err.msg);
    if (!plain || !packed) return;
    CHECK(plain->n_units == plain->n_examples && packed->n_examples == plain->n_examples &&
              packed->n_tokens == plain->n_tokens && !memcmp(packed->input_ids, plain->input_ids, (size_t)plain->n_tokens * 4),
          "packing keeps the examples");
    CHECK(packed->n_units < packed->n_examples && packed->max_unit_len <= 128, "packing: %lld units for %lld examples, max %lld",
          (long long)packed->n_units, (long long)packed->n_examples, (long long)packed->max_unit_len);
    int64_t n = packed->n_examples, *len = malloc((size_t)n * 8), *flat = malloc((size_t)n * 8), *off = malloc((size_t)(n + 1) * 8);
    char *seen = calloc((size_t)n, 1);
    for (int64_t e = 0; e < n; e++) len[e] = packed->offsets[e + 1] - packed->offsets[e];
    int64_t units = knapsack_ref(len, n, 128, flat, off);
    int ok = units == packed->n_units, once = 1;
    for (int64_t u = 0; ok && u < units; u++) {
        ok &= off[u + 1] - off[u] == packed->unit_offsets[u + 1] - packed->unit_offsets[u];
        for (int64_t k = 0; ok && k < off[u + 1] - off[u]; k++) ok &= flat[off[u] + k] == len[packed->unit_members[packed->unit_offsets[u] + k]];
    }
    for (int64_t k = 0; k < n; k++) {
        int64_t e = packed->unit_members[k];
        once &= e >= 0 && e < n && !seen[e];
        if (e >= 0 && e < n) seen[e] = 1;
    }
    CHECK(ok, "packing equals LLaMA-Factory greedy_knapsack (%lld vs %lld units)", (long long)units, (long long)packed->n_units);
    CHECK(once, "packing: every example in exactly one unit");
    /* iterator over packed units: positions restart per example, targets never cross */
    lf_data_iter *it = NULL;
    st = lf_data_iter_create(packed, 7, 0, 0, 1, &it, &err);
    CHECK(st == LF_OK, "iter: %s", err.msg);
    int32_t tk[128], tg[128], ps[128];
    for (int64_t u = 0; it && u < packed->n_units; u++) {
        int64_t m = 0;
        st = lf_data_iter_next(it, 128, tk, tg, ps, &m, &err);
        check_unit_stream(packed, u, tk, tg, ps, m, "packed unshuffled");
    }
    lf_data_position p = it ? lf_data_iter_tell(it) : (lf_data_position){0, 0};
    CHECK(p.epoch == 1 && p.index == 0, "after one epoch position is (%lld, %lld)", (long long)p.epoch, (long long)p.index);
    int64_t m = 0;
    CHECK(it && lf_data_iter_next(it, 127, tk, tg, ps, &m, &err) == LF_EINVAL, "short buffer rejected");
    lf_data_iter_free(it);
    free(len), free(flat), free(off), free(seen);
    lf_dataset_free(plain);
    lf_dataset_free(packed);
    lf_chat_template_free(t);
}

/* unit index of the stream output (units differ by their first example's row tag) */
static int64_t which_unit(const lf_dataset *ds, const int32_t *tk, int64_t n) {
    for (int64_t u = 0; u < ds->n_units; u++) {
        int64_t e = ds->unit_members[ds->unit_offsets[u]], s = ds->offsets[e], len = ds->offsets[e + 1] - s;
        if (len <= n && !memcmp(tk, ds->input_ids + s, (size_t)len * 4) && lf_dataset_unit_len(ds, u) == n) return u;
    }
    return -1;
}

static void test_iterator(void) {
    write_random_rows("iter.jsonl", 37, 12);
    lf_chat_template *t = builtin("qwen");
    lf_data_options o;
    opts_for(&o, "iter.jsonl");
    lf_dataset *ds = NULL;
    lf_err err;
    lf_status st = load(&o, t, &ds, NULL, NULL, &err);
    CHECK(st == LF_OK && ds && ds->n_units == 37, "iter load: %s", err.msg);
    if (!ds) return;
    int64_t N = ds->n_units, cap = ds->max_unit_len;
    int32_t *tk = malloc((size_t)cap * 4), *tg = malloc((size_t)cap * 4), *ps = malloc((size_t)cap * 4);
    int64_t stream[3][3 * 37];
    uint64_t seeds[3] = {11, 11, 12};
    for (int r = 0; r < 3; r++) {
        lf_data_iter *it = NULL;
        lf_data_iter_create(ds, seeds[r], 1, 0, 1, &it, &err);
        int ok = 1;
        for (int64_t i = 0; i < 3 * N; i++) {
            int64_t n = 0;
            lf_data_iter_next(it, cap, tk, tg, ps, &n, &err);
            stream[r][i] = which_unit(ds, tk, n);
            ok &= stream[r][i] >= 0;
            if (stream[r][i] >= 0) check_unit_stream(ds, stream[r][i], tk, tg, ps, n, "shuffled stream");
        }
        CHECK(ok, "stream outputs are units");
        for (int ep = 0; ep < 3; ep++) { /* each epoch is a permutation */
            char seen[37] = {0};
            int perm = 1;
            for (int64_t i = 0; i < N; i++) {
                int64_t u = stream[r][ep * N + i];
                perm &= u >= 0 && !seen[u];
                if (u >= 0) seen[u] = 1;
            }
            CHECK(perm, "seed %llu epoch %d is a permutation", (unsigned long long)seeds[r], ep);
        }
        lf_data_iter_free(it);
    }
    CHECK(!memcmp(stream[0], stream[1], sizeof stream[0]), "same seed, same order");
    CHECK(memcmp(stream[0], stream[2], N * sizeof(int64_t)) != 0, "another seed, another order (37! orders)");
    CHECK(memcmp(stream[0], stream[0] + N, N * sizeof(int64_t)) != 0, "epochs are reshuffled");
    /* resume: save after k units, restore in a fresh iterator, continue identically */
    int64_t ks[] = {0, 5, 36, 37, 50};
    for (size_t q = 0; q < sizeof ks / sizeof ks[0]; q++) {
        lf_data_iter *a = NULL, *b = NULL;
        lf_data_iter_create(ds, 11, 1, 0, 1, &a, &err);
        int64_t n;
        for (int64_t i = 0; i < ks[q]; i++) lf_data_iter_next(a, cap, tk, tg, ps, &n, &err);
        lf_data_position p = lf_data_iter_tell(a);
        lf_data_iter_create(ds, 11, 1, 0, 1, &b, &err);
        st = lf_data_iter_seek(b, p, &err);
        int same = st == LF_OK && p.epoch == ks[q] / N && p.index == ks[q] % N;
        for (int64_t i = 0; i < 40; i++) {
            lf_data_iter_next(b, cap, tk, tg, ps, &n, &err);
            same &= which_unit(ds, tk, n) == stream[0][ks[q] + i];
        }
        CHECK(same, "resume after %lld units (position %lld/%lld)", (long long)ks[q], (long long)p.epoch, (long long)p.index);
        lf_data_position badp = {0, N + 1};
        CHECK(lf_data_iter_seek(b, badp, &err) == LF_EINVAL, "seek outside the epoch rejected");
        lf_data_iter_free(a), lf_data_iter_free(b);
    }
    /* ranks: each takes every world-th unit of the same permutation; together they cover the epoch */
    int world = 3;
    char cover[37] = {0};
    int64_t per = 0;
    for (int r = 0; r < world; r++) {
        lf_data_iter *it = NULL;
        lf_data_iter_create(ds, 11, 1, r, world, &it, &err);
        per = lf_data_iter_epoch_len(it);
        int ok = 1;
        for (int64_t i = 0; i < per; i++) {
            int64_t n;
            lf_data_iter_next(it, cap, tk, tg, ps, &n, &err);
            int64_t u = which_unit(ds, tk, n);
            int64_t g = (i * world + r) % N;
            ok &= u == stream[0][g];
            if (u >= 0) cover[u] = 1;
        }
        CHECK(ok, "rank %d takes units r, r+world, ... of the shuffled order", r);
        lf_data_iter_free(it);
    }
    int all = per == (N + world - 1) / world;
    for (int64_t u = 0; u < N; u++) all &= cover[u];
    CHECK(all, "ranks cover every unit (%lld per rank)", (long long)per);
    lf_data_iter *bad = NULL;
    CHECK(lf_data_iter_create(ds, 1, 1, 3, 3, &bad, &err) == LF_EINVAL && !bad, "rank >= world rejected");
    /* batches: rows padded with pad_id, targets -100, pos restarting */
    lf_data_iter *it = NULL;
    lf_data_iter_create(ds, 11, 1, 0, 1, &it, &err);
    int64_t B = 4, T = cap + 5, lens[4];
    int32_t *btk = malloc((size_t)(B * T) * 4), *btg = malloc((size_t)(B * T) * 4), *bps = malloc((size_t)(B * T) * 4);
    st = lf_data_iter_next_batch(it, B, T, 0, btk, btg, bps, lens, &err);
    int ok = st == LF_OK;
    for (int64_t b = 0; ok && b < B; b++) {
        int64_t u = which_unit(ds, btk + b * T, lens[b]);
        ok &= u == stream[0][b];
        if (u >= 0) check_unit_stream(ds, u, btk + b * T, btg + b * T, bps + b * T, lens[b], "batch row");
        for (int64_t t2 = lens[b]; t2 < T; t2++)
            ok &= btk[b * T + t2] == 0 && btg[b * T + t2] == LF_DATA_IGNORE && bps[b * T + t2] == t2 - lens[b];
    }
    CHECK(ok, "batch rows follow the stream and are padded");
    CHECK(lf_data_iter_next_batch(it, B, cap - 1, 0, btk, btg, bps, lens, &err) == LF_EINVAL, "T too small rejected");
    lf_data_iter_free(it);
    it = NULL;
    lf_data_iter_create(ds, 11, 0, 0, 1, &it, &err); /* no shuffle: file order */
    ok = 1;
    for (int64_t i = 0; i < N; i++) {
        int64_t n;
        lf_data_iter_next(it, cap, tk, tg, ps, &n, &err);
        ok &= which_unit(ds, tk, n) == i;
    }
    CHECK(ok, "shuffle=0 keeps unit order");
    lf_data_iter_free(it);
    free(btk), free(btg), free(bps), free(tk), free(tg), free(ps);
    lf_dataset_free(ds);
    lf_chat_template_free(t);
}

/* ---- inputs found by tests/fuzz (docs/fuzzing.md) ---- */

/* Stream-decode ids[n]; 1 when the pieces add up to lf_tokenizer_decode's text (tokenizer.h's contract). */
static int stream_matches(const lf_tokenizer *t, const int32_t *ids, int64_t n, char *got, size_t cap) {
    lf_err err;
    char *want = NULL;
    size_t wl = 0, at = 0;
    lf_tokenizer_stream *s = NULL;
    if (lf_tokenizer_decode(t, ids, n, 0, &want, &wl, &err) || lf_tokenizer_stream_create(t, 0, &s, &err)) return 0;
    got[0] = '\0';
    for (int64_t i = 0; i <= n; i++) {
        const char *piece;
        size_t pl;
        lf_status st = i < n ? lf_tokenizer_stream_push(s, ids[i], &piece, &pl, &err)
                             : lf_tokenizer_stream_flush(s, &piece, &pl, &err);
        if (st || at + pl >= cap) break;
        memcpy(got + at, piece, pl);
        got[at += pl] = '\0';
    }
    int ok = at == wl && memcmp(got, want, wl) == 0;
    lf_tokenizer_stream_free(s);
    free(want);
    return ok;
}

/* fuzz_tokenizer: with a ByteFallback decoder, "<0x47>" alone decodes to "G" but "<0x47><0xFF>" to two U+FFFD
 * (a byte run that is not UTF-8 is replaced token by token), so the stream emitted "G" and then the two U+FFFD:
 * three characters where decode has two. The stream now holds a byte run back until a non-byte token ends it. */
static void test_fuzz_stream_byte_fallback(void) {
    make_dir("tokbf");
    write_file("tokbf/tokenizer.json",
               "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":5,\"content\":\"<s>\",\"single_word\":false,"
               "\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true}],\"normalizer\":null,"
               "\"pre_tokenizer\":null,\"post_processor\":null,\"decoder\":{\"type\":\"Sequence\",\"decoders\":["
               "{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"}]},\"model\":{\"type\":\"BPE\",\"dropout\":null,"
               "\"unk_token\":\"<unk>\",\"byte_fallback\":true,\"vocab\":{\"<unk>\":0,\"<0x47>\":1,\"<0xFF>\":2,"
               "\"<0xC3>\":3,\"x\":4,\"<0xA9>\":6},\"merges\":[]}}");
    char p[512], got[256];
    path_of(p, sizeof p, "tokbf");
    lf_tokenizer *t = NULL;
    lf_err err = {0};
    if (lf_tokenizer_load(p, &t, &err) != LF_OK) {
        CHECK(0, "byte-fallback tokenizer: %s", err.msg);
        return;
    }
    static const int32_t cases[][5] = {
        {1, 2, -1},       /* G then an invalid byte: decode is two U+FFFD */
        {1, 2, 4, -1},    /* ... closed by a normal token */
        {3, 6, 1, 2, -1}, /* "é" then "G" + invalid byte in the same run */
        {1, 5, 2, -1},    /* a special token inside the run (kept: skip_special 0) */
        {4, 1, 4, 3, -1}, /* runs between normal tokens, a trailing incomplete byte */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int64_t n = 0;
        while (cases[c][n] >= 0) n++;
        CHECK(stream_matches(t, cases[c], n, got, sizeof got), "byte-fallback stream case %zu: got '%s'", c, got);
    }
    lf_tokenizer_free(t);
}

int main(void) {
    const char *env = getenv("LF_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    printf("test_data: seed %llu (set LF_TEST_SEED to repeat)\n", (unsigned long long)seed);
    lf_rng_seed(&rng, seed);
    lf_log_set_level(LF_LOG_ERROR); /* skipped-row warnings are expected here */
    snprintf(tmp, sizeof tmp, "/tmp/lf_test_data_XXXXXX");
    if (!mkdtemp(tmp)) {
        printf("mkdtemp failed\n");
        return 1;
    }
    make_tokenizer();
    test_alpaca_json();
    test_history_masks();
    test_sharegpt_openai();
    test_tokenized();
    test_directory();
    test_dataset_info();
    test_bad_rows();
    test_truncation();
    test_eos_and_templates();
    test_split();
    test_packing();
    test_iterator();
    test_fuzz_stream_byte_fallback();
    lf_tokenizer_free(tok);
    nftw(tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
