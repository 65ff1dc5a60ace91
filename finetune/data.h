/* data.h - supervised fine-tuning data: LLaMA-Factory-style datasets -> tokenized examples -> training sequences.
 *
 * Input (LLaMA-Factory semantics and key names):
 *   formats   alpaca     {instruction, input, output, system?, history?: [[user, assistant], ...]}
 *                        -> history turns, then user = instruction + "\n" + input (input non-empty), assistant = output
 *             sharegpt   {conversations: [{from, value}, ...], system?, tools?}; from: human|user -> user,
 *                        gpt|assistant -> assistant, system (first turn only) -> system, observation|tool -> "tool",
 *                        function_call -> assistant (the call text as content). Turns alternate user-side
 *                        (user|observation) / assistant-side (assistant|function_call) and end on the assistant side.
 *             openai     {messages: [{role, content}, ...]} (roles system|user|assistant|tool), same rules.
 *             tokenized  {input_ids: [...], attention_mask?: [...], labels?: [...]}: positions whose attention_mask
 *                        is 0 are dropped; without labels, labels = input_ids; truncated to cutoff_len (head kept).
 *   files     .json (a JSON array, or JSON lines), .jsonl, .json.gz, .jsonl.gz (zlib), a file or a directory of
 *             such files (name order; other files ignored). Files are read whole (decompressed) into memory.
 *   selection dataset_dir/dataset_info.json when present: `dataset` = "name1,name2" picks entries {file_name,
 *             formatting: alpaca|sharegpt (extensions: openai|tokenized), columns: {prompt, query, response,
 *             history, messages, system, tools}, tags: {role_tag, content_tag, user_tag, assistant_tag,
 *             observation_tag, function_tag, system_tag}}. An entry without formatting and columns, and a name
 *             that is not in dataset_info.json but is a path (relative to dataset_dir, or absolute), are
 *             auto-detected per file from the first row with a known key (input_ids, conversations, messages,
 *             instruction/output). max_samples keeps the first N rows of each dataset (bad rows included).
 *
 * Token layout (LLaMA-Factory's supervised processor): the conversation is rendered with the chat template
 * incrementally. For each assistant message k: P_k = render(msgs[:k], add_generation_prompt=1),
 * F_k = render(msgs[:k+1], add_generation_prompt=0); F_{k-1} must be a prefix of P_k and P_k of F_k (else the
 * row is skipped with a message naming the template). source_k = P_k - F_{k-1}, target_k = F_k - P_k (the
 * response plus the template's end of turn, e.g. "<|eot_id|>" or "<|im_end|>\n"). Each segment is tokenized on
 * its own with add_special=0 (special tokens written by the template match as added tokens); ids are
 * concatenated, as LLaMA-Factory encodes its template slots. So input_ids equal transformers'
 * apply_chat_template(tokenize=True) except where a pre-token or an added token's lstrip/rstrip spans a segment
 * boundary, e.g. a reply starting with "\n" after "<|im_start|>assistant\n" ("\n\n" is one Qwen2 token in the
 * whole text) or with spaces after Phi-3's rstrip "<|assistant|>" (tests/oracle/test_data_templates.py).
 * EOS (eos_mode LF_DATA_EOS_AUTO): a target that contains neither the tokenizer's EOS id nor any special added
 * token gets the EOS id appended (trained), so every response teaches the model to stop.
 * Labels: -100 on sources unless train_on_prompt; with mask_history only the last turn's target is trained.
 * cutoff_len: LLaMA-Factory's infer_seqlen per turn (in order; with mask_history from the last turn back):
 *   budget = cutoff_len - used; stop when used >= cutoff_len;
 *   max_target = budget if 2*target < budget, else budget - source if 2*source < budget,
 *                else floor(budget * target / (source + target));
 *   target' = min(max_target, target); source' = min(budget - target', source); heads of both are kept.
 * A row is unusable (skipped, counted, reported as file:line for .jsonl / file[index] for JSON arrays) when a
 * field is missing or of the wrong type, the roles are out of order, the last response is empty, the template
 * raises or is not incremental, or nothing is left to train after truncation. Zero usable rows is LF_EINVAL
 * naming the files; malformed JSON is LF_EFORMAT with file, line and column.
 *
 * Split, packing, order: val_size in (0,1) is a fraction (ceil), >= 1 an integer count of usable examples taken
 * for eval by a seeded permutation (the rest stays in file order); eval_dataset instead loads a separate set
 * (both is an error, as in LLaMA-Factory). A training unit is one example, or with packing a group of whole
 * examples totalling <= cutoff_len chosen by LLaMA-Factory's greedy_knapsack (largest length that still fits,
 * fixed at load); examples are never split across units, and next_batch pads each row to T (pad tokens have
 * target -100 and their own positions), so with T = cutoff_len every packed row is exactly cutoff_len long.
 * An iterator walks the units in a per-epoch permutation (xoshiro256** seeded from seed and
 * epoch), optionally sharded over ranks (DistributedSampler: per-rank length ceil(units/world), wrapping).
 *
 * Shift convention: an example's labels[t] is aligned with input_ids[t] (Hugging Face); HF's loss compares
 * logits[t] with labels[t+1]. The iterator emits targets already shifted: targets[t] = labels[t+1] when token
 * t+1 belongs to the same example, else -100; pos[t] restarts at 0 at the first token of every example (and of a
 * padding run), so attention limited to the run of positions ending at pos 0 never crosses examples.
 *
 * Ownership: options strings and template_vars are borrowed for the call; lf_dataset and lf_data_iter are
 * owned by the caller (lf_dataset_free / lf_data_iter_free); an iterator borrows its dataset. */
#ifndef LF_FINETUNE_DATA_H
#define LF_FINETUNE_DATA_H

#include <jansson.h>
#include <stdint.h>

#include "core/status.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LF_DATA_IGNORE (-100) /* label of a token that is not trained */

typedef enum lf_data_eos_mode {
    LF_DATA_EOS_AUTO = 0,  /* append EOS to a target without EOS or a special end-of-turn token */
    LF_DATA_EOS_NEVER = 1, /* ids exactly as the template renders them */
} lf_data_eos_mode;

typedef struct lf_data_options {
    const char *dataset;         /* "name1,name2" (dataset_info.json keys) or a file/dir path; required */
    const char *eval_dataset;    /* same, or NULL */
    const char *dataset_dir;     /* default "data" */
    const char *template_name;   /* names the template in messages; default "chat template" */
    int64_t cutoff_len;          /* max tokens per example (and per packed unit); default 2048 */
    int64_t max_samples;         /* first N rows per dataset; 0 = all */
    double val_size;             /* 0 = no split; (0,1) fraction; >= 1 integer count */
    uint64_t seed;               /* val split and shuffling; default 42 */
    int train_on_prompt;         /* default 0 */
    int mask_history;            /* default 0 */
    int packing;                 /* default 0 */
    lf_data_eos_mode eos_mode;   /* default LF_DATA_EOS_AUTO */
    const json_t *template_vars; /* extra render variables (bos_token, eos_token, ...); NULL: bos_token and
                                    eos_token from the tokenizer's ids */
} lf_data_options;

void lf_data_default_options(lf_data_options *o);

/* Tokenized examples back to back, plus the training units over them. Read-only for users. */
typedef struct lf_dataset {
    int64_t n_examples;
    int64_t n_tokens;
    int32_t *input_ids;    /* [n_tokens] */
    int32_t *labels;       /* [n_tokens] aligned with input_ids (HF); LF_DATA_IGNORE = no loss */
    int64_t *offsets;      /* [n_examples + 1]: example i is tokens offsets[i] .. offsets[i+1]-1 */
    int64_t n_units;       /* training sequences: one example each, or packed groups */
    int64_t *unit_members; /* [n_examples]: example indices in unit order */
    int64_t *unit_offsets; /* [n_units + 1]: unit u is unit_members[unit_offsets[u] .. unit_offsets[u+1]-1] */
    int64_t max_unit_len;  /* longest unit in tokens (<= cutoff_len) */
    int64_t n_label_tokens; /* labels != LF_DATA_IGNORE */
} lf_dataset;

void lf_dataset_free(lf_dataset *ds); /* NULL is a no-op */
/* Tokens in unit u. */
int64_t lf_dataset_unit_len(const lf_dataset *ds, int64_t u);

#define LF_DATA_REPORT_MSGS 16
#define LF_DATA_REPORT_MSG_LEN 320

typedef struct lf_data_report {
    int64_t rows_read;      /* rows seen (after max_samples), train and eval sets */
    int64_t rows_skipped;   /* unusable rows */
    int64_t rows_truncated; /* examples shortened by cutoff_len */
    int64_t n_train, n_eval;             /* examples */
    int64_t n_train_units, n_eval_units; /* sequences */
    int64_t n_files;
    int n_msgs; /* first LF_DATA_REPORT_MSGS skip reasons, "file:line: why" */
    char msgs[LF_DATA_REPORT_MSGS][LF_DATA_REPORT_MSG_LEN];
} lf_data_report;

/* Load, tokenize, split and pack. tok: required unless every row is tokenized (then ids are only checked >= 0);
 * tmpl: required for conversational rows. *train: new dataset; *eval: new dataset or NULL when there is no eval
 * set (eval may be NULL when the caller wants none: then val_size/eval_dataset must be unset). rep may be NULL.
 * Skipped rows are also logged (LF_LOG_WARN, the first few). */
lf_status lf_data_load(const lf_data_options *opts, const lf_tokenizer *tok, const lf_chat_template *tmpl,
                       lf_dataset **train, lf_dataset **eval, lf_data_report *rep, lf_err *err);

/* ---- iteration ---- */

typedef struct lf_data_position {
    int64_t epoch; /* 0-based */
    int64_t index; /* next unit within the epoch on this rank, 0 .. epoch_len-1 */
} lf_data_position;

typedef struct lf_data_iter lf_data_iter;

/* shuffle: permute units per epoch (train); 0 keeps unit order (eval). rank in [0, world). Borrows ds. */
lf_status lf_data_iter_create(const lf_dataset *ds, uint64_t seed, int shuffle, int rank, int world, lf_data_iter **out,
                              lf_err *err);
void lf_data_iter_free(lf_data_iter *it); /* NULL is a no-op */
/* Units per epoch on this rank: ceil(n_units / world). */
int64_t lf_data_iter_epoch_len(const lf_data_iter *it);
/* The next unit: tokens[*n], targets[*n] (shifted, see above), pos[*n]; cap = buffer length (>= max_unit_len).
 * Advances the position, rolling over to the next epoch after epoch_len units. Never allocates. */
lf_status lf_data_iter_next(lf_data_iter *it, int64_t cap, int32_t *tokens, int32_t *targets, int32_t *pos, int64_t *n,
                            lf_err *err);
/* B units into rows of T: tokens[B*T], targets[B*T], pos[B*T], lens[B] (real tokens per row); the rest of a row
 * is pad_id with target LF_DATA_IGNORE and pos restarting at 0. T must be >= max_unit_len. */
lf_status lf_data_iter_next_batch(lf_data_iter *it, int64_t B, int64_t T, int32_t pad_id, int32_t *tokens,
                                  int32_t *targets, int32_t *pos, int64_t *lens, lf_err *err);
/* Checkpoint position: restoring it with seek (same dataset, seed, rank, world) continues the same stream. */
lf_data_position lf_data_iter_tell(const lf_data_iter *it);
lf_status lf_data_iter_seek(lf_data_iter *it, lf_data_position p, lf_err *err);

#ifdef __cplusplus
}
#endif
#endif
