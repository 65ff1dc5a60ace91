/* data_tool.c - dumps what finetune/data produces, as JSON, for tests/oracle/test_data_templates.py (built, not
 * run by ctest).
 *
 *   data_tool --tokenizer PATH --dataset LIST [--dataset-dir DIR] [--template NAME|model|FILE.jinja]
 *             [--eval-dataset LIST] [--cutoff-len N] [--max-samples N] [--val-size X] [--seed S]
 *             [--train-on-prompt] [--mask-history] [--packing] [--no-eos] [--stream N] [--rank R --world W]
 *
 *   --template model (the default) reads the chat template of the tokenizer's directory and passes its special
 *   tokens (lf_chat_template_special_tokens) as template variables, as transformers does; a built-in name or a
 *   .jinja file gets bos_token/eos_token from the tokenizer. --stream N also emits the first N sequences of the
 *   shuffled train iterator (seed --seed).
 *
 * Output: {"report": {rows_read, rows_skipped, rows_truncated, n_train, n_eval, n_train_units, n_eval_units,
 *   n_files, msgs: [...]}, "train": SET, "eval": SET or null, "stream": [{tokens, targets, pos}, ...]} with
 *   SET = {"examples": [{"input_ids": [...], "labels": [...]}], "units": [[example, ...], ...], "max_unit_len": N}.
 * Exit 0 on success; 1 with "data_tool: <STATUS>: <message>" on stderr when loading fails; 2 for bad usage. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_args.h" // defines: lf_args_parse
#include "core/fileio.h"
#include "core/log.h"
#include "finetune/data.h" // defines: lf_data_load, lf_dataset, lf_data_iter_*

static const char USAGE[] =
    "usage: data_tool --tokenizer PATH --dataset LIST [--dataset-dir DIR] [--template NAME|model|FILE.jinja]\n"
    "       [--eval-dataset LIST] [--cutoff-len N] [--max-samples N] [--val-size X] [--seed S]\n"
    "       [--train-on-prompt] [--mask-history] [--packing] [--no-eos] [--stream N] [--rank R --world W]\n";

static json_t *ints(const int32_t *v, int64_t n) {
    json_t *a = json_array();
    for (int64_t i = 0; i < n; i++) json_array_append_new(a, json_integer(v[i]));
    return a;
}

static json_t *dump_set(const lf_dataset *ds) {
    if (!ds) return json_null();
    json_t *ex = json_array(), *units = json_array();
    for (int64_t e = 0; e < ds->n_examples; e++) {
        int64_t s = ds->offsets[e], n = ds->offsets[e + 1] - s;
        json_array_append_new(ex, json_pack("{s:o, s:o}", "input_ids", ints(ds->input_ids + s, n), "labels",
                                            ints(ds->labels + s, n)));
    }
    for (int64_t u = 0; u < ds->n_units; u++) {
        json_t *m = json_array();
        for (int64_t k = ds->unit_offsets[u]; k < ds->unit_offsets[u + 1]; k++)
            json_array_append_new(m, json_integer(ds->unit_members[k]));
        json_array_append_new(units, m);
    }
    return json_pack("{s:o, s:o, s:I}", "examples", ex, "units", units, "max_unit_len", (json_int_t)ds->max_unit_len);
}

int main(int argc, char **argv) {
    const char *tok_path = NULL, *tmpl_arg = "model";
    int64_t stream = 0;
    int rank = 0, world = 1, no_eos = 0;
    lf_data_options o;
    lf_data_default_options(&o);
    o.dataset_dir = ".";
    /* numbers: any integer / number; finetune/data validates them (tests pass bad ones on purpose) */
    const lf_arg_spec flags[] = {LF_FLAG_STR("--tokenizer", &tok_path),
                                 LF_FLAG_STR("--dataset", &o.dataset),
                                 LF_FLAG_STR("--dataset-dir", &o.dataset_dir),
                                 LF_FLAG_STR("--template", &tmpl_arg),
                                 LF_FLAG_STR("--eval-dataset", &o.eval_dataset),
                                 LF_FLAG_I64("--cutoff-len", &o.cutoff_len, 0, 0),
                                 LF_FLAG_I64("--max-samples", &o.max_samples, 0, 0),
                                 LF_FLAG_F64("--val-size", &o.val_size, 0, 0),
                                 LF_FLAG_U64("--seed", &o.seed),
                                 LF_FLAG_I64("--stream", &stream, 0, 1 << 30),
                                 LF_FLAG_INT("--rank", &rank, 0, 0),
                                 LF_FLAG_INT("--world", &world, 0, 0),
                                 LF_FLAG_BOOL("--train-on-prompt", &o.train_on_prompt),
                                 LF_FLAG_BOOL("--mask-history", &o.mask_history),
                                 LF_FLAG_BOOL("--packing", &o.packing),
                                 LF_FLAG_BOOL("--no-eos", &no_eos),
                                 LF_FLAG_END};
    int arc = lf_args_parse("data_tool", USAGE, argc, argv, 1, flags, NULL, 0, NULL);
    if (arc >= 0) return arc;
    if (no_eos) o.eos_mode = LF_DATA_EOS_NEVER;
    if (!tok_path || !o.dataset) {
        fprintf(stderr, "data_tool: --tokenizer and --dataset are required\n%s", USAGE);
        return 2;
    }
    lf_log_set_level(LF_LOG_ERROR);

    lf_err err = {0};
    lf_status st = LF_OK;
    lf_tokenizer *tok = NULL;
    lf_chat_template *tmpl = NULL;
    lf_dataset *train = NULL, *eval = NULL;
    lf_data_iter *it = NULL;
    json_t *vars = NULL, *out = NULL;
    char *src = NULL;
    int32_t *tk = NULL, *tg = NULL, *ps = NULL;
    lf_data_report rep;
    LF_TRY(lf_tokenizer_load(tok_path, &tok, &err));
    if (!strcmp(tmpl_arg, "model")) {
        LF_TRY(lf_chat_template_from_model(tok_path, &src, &err));
        LF_TRY(lf_chat_template_special_tokens(tok_path, &vars, &err));
        o.template_vars = vars;
        o.template_name = "model";
    } else if (lf_chat_template_builtin(tmpl_arg)) {
        src = strdup(lf_chat_template_builtin(tmpl_arg));
        o.template_name = tmpl_arg;
    } else {
        size_t n;
        LF_TRY(lf_file_read_all(tmpl_arg, &src, &n, &err));
        o.template_name = tmpl_arg;
    }
    LF_TRY(lf_chat_template_compile(src, &tmpl, &err));
    int want_eval = (o.eval_dataset && o.eval_dataset[0]) || o.val_size > 0;
    LF_TRY(lf_data_load(&o, tok, tmpl, &train, want_eval ? &eval : NULL, &rep, &err));

    json_t *msgs = json_array(), *report, *seqs;
    for (int i = 0; i < rep.n_msgs; i++) json_array_append_new(msgs, json_string(rep.msgs[i]));
    report = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "rows_read", (json_int_t)rep.rows_read,
                               "rows_skipped", (json_int_t)rep.rows_skipped, "rows_truncated", (json_int_t)rep.rows_truncated,
                               "n_train", (json_int_t)rep.n_train, "n_eval", (json_int_t)rep.n_eval, "n_train_units",
                               (json_int_t)rep.n_train_units, "n_eval_units", (json_int_t)rep.n_eval_units, "n_files",
                               (json_int_t)rep.n_files, "msgs", msgs);
    seqs = json_array();
    out = json_pack("{s:o, s:o, s:o, s:o}", "report", report, "train", dump_set(train), "eval", dump_set(eval), "stream", seqs);
    if (stream > 0) {
        LF_TRY(lf_data_iter_create(train, o.seed, 1, rank, world, &it, &err));
        int64_t cap = train->max_unit_len;
        tk = malloc((size_t)cap * sizeof *tk), tg = malloc((size_t)cap * sizeof *tg), ps = malloc((size_t)cap * sizeof *ps);
        if (!tk || !tg || !ps) {
            st = lf_err_set(&err, LF_ENOMEM, "out of memory for %lld tokens", (long long)cap);
            goto fail;
        }
        for (int64_t s = 0; s < stream; s++) {
            int64_t n = 0;
            LF_TRY(lf_data_iter_next(it, cap, tk, tg, ps, &n, &err));
            json_array_append_new(seqs, json_pack("{s:o, s:o, s:o}", "tokens", ints(tk, n), "targets", ints(tg, n), "pos",
                                                  ints(ps, n)));
        }
    }
    json_dumpf(out, stdout, JSON_COMPACT);
    fputc('\n', stdout);
fail:
    if (st != LF_OK) fprintf(stderr, "data_tool: %s: %s\n", lf_status_name(st), err.msg);
    json_decref(out);
    json_decref(vars);
    free(src);
    free(tk), free(tg), free(ps);
    lf_data_iter_free(it);
    lf_dataset_free(train);
    lf_dataset_free(eval);
    lf_chat_template_free(tmpl);
    lf_tokenizer_free(tok);
    return st == LF_OK ? 0 : 1;
}
