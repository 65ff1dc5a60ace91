/* sample.h - the serving sampler: next token from one logits row with Hugging Face generate's processing
 * order (repetition_penalty over the sequence so far, then temperature, top-k, top-p, min-p, typical-p), the
 * OpenAI/vLLM presence and frequency penalties, seeded per sequence, plus the log-probabilities the API reports.
 *
 * Semantics (transformers 4.44 logits processors/warpers, vLLM's penalties, torch CPU f32 arithmetic):
 *   NaN logits are -inf everywhere (processing, log-probs, top alternatives).
 *   repetition_penalty p != 1: for every DISTINCT token id in history (prompt and generated), logit < 0 ?
 *   logit * p : logit / p, in f32 with p rounded to f32 (as torch's tensor-by-scalar ops); applied to the raw
 *   logit once per id.
 *   frequency_penalty f / presence_penalty r (vLLM's apply_penalties, after the repetition penalty, OpenAI's
 *   definition): for every distinct id generated so far (history[n_prompt..n_hist), the prompt does not
 *   count), logit = (logit - f32(f) * count) - f32(r), in f32, count = how often the id was generated.
 *   greedy (do_sample 0, or temperature 0 / rounding to 0 in f32): argmax of the penalised logits (lowest id
 *   on ties); top-k, top-p, min-p and typical-p do not apply.
 *   sampling: logits / f32(temperature) in f32; top_k > 0 keeps the k largest (ties at the k-th value kept,
 *   as torch.topk's threshold; k >= V: off); top_p < 1 keeps the smallest set of highest-probability tokens
 *   whose cumulative probability reaches top_p (HF TopPWarper: sort ascending, drop tokens whose ascending
 *   cumulative sum is <= 1 - top_p, always keep the most likely; the comparison is f32(cum) <= f32(1 - top_p)
 *   as torch compares an f32 tensor with a Python float). Order among equal processed logits: ascending id in
 *   the ascending sort (torch.sort(stable=True); HF's own CPU sort is stable for V <= 16 and unspecified
 *   among ties above), so a tie class cut by top_p keeps its highest ids.
 *   min_p > 0 (HF MinPLogitsWarper, vLLM _apply_min_p; after top-p): of the tokens kept so far, drop those
 *   whose weight relative to the most likely one, exp(x - max), is below f32(min_p) (prob < min_p * max prob;
 *   top-k and top-p never remove the most likely token, so the order between them and min-p only matters for
 *   top-p, which sees the distribution before min-p).
 *   typical_p in (0, 1) (HF TypicalLogitsWarper, after min-p): over the tokens kept so far, with p their
 *   renormalised probabilities and H = -sum p log p, sort by |-log p - H| ascending, find the first position
 *   where the cumulative probability reaches f32(typical_p) (f32(cum) < f32(typical_p) counts the positions
 *   before it; clamped to the last), keep every token whose score is <= the score there (f32 scores). log p
 *   and H in f64. Only the tokens of non-zero weight take part (the others cannot be drawn).
 *   Then one draw u in [0,1) from the
 *   sequence's rng and inverse CDF over the kept tokens in descending order (the reverse of that ascending
 *   order: processed logit descending, id descending on ties): the first token whose running weight sum
 *   exceeds u * (total kept weight). Weights exp(x - max) in f32 (our own ~1-ulp exp, the same bits on every
 *   machine; 0 below e^-87, as f32 underflows), sums and normalisation in f64.
 *   +inf processed logits: the limit, uniform over the +inf tokens (typical-p then keeps them all). If every
 *   processed logit is -inf the token is 0.
 *   log_prob / top alternatives: log_softmax of the RAW logits (the model's distribution, as vLLM and OpenAI
 *   report them), not of the processed ones; +inf raw logits share the mass equally.
 * Same params + same seed + same logits -> same token, on every machine (no threads, fixed order).
 *
 * Ownership: lf_sample_scratch owns O(V) buffers allocated at create; lf_sample_token never allocates and
 * does not modify logits. One scratch per thread (the engine thread). */
#ifndef LF_SERVE_SAMPLE_H
#define LF_SERVE_SAMPLE_H

#include <stdint.h>

#include "core/rng.h"
#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LF_SAMPLE_MAX_TOP 20 /* OpenAI's top_logprobs upper bound */

typedef struct lf_sample_params {
    int do_sample;             /* 0: greedy */
    double temperature;        /* > 0 when do_sample; 0 means greedy */
    int64_t top_k;             /* <= 0: off */
    double top_p;              /* (0, 1]; 1: off */
    double repetition_penalty; /* > 0; 1: off */
    int n_top;                 /* 0..LF_SAMPLE_MAX_TOP alternatives to report */
    double presence_penalty;   /* [-2, 2]; 0: off */
    double frequency_penalty;  /* [-2, 2]; 0: off */
    double min_p;              /* [0, 1]; 0: off */
    double typical_p;          /* [0, 1]; 0 or 1: off */
    int64_t n_prompt;          /* >= 0: history[0..n_prompt) is the prompt (presence/frequency penalties count
                                * only history[n_prompt..n_hist), the generated tokens) */
} lf_sample_params;

typedef struct lf_sample_result {
    int32_t id;
    float log_prob;                          /* log_softmax(raw logits)[id] */
    int n_top;                               /* = min(params.n_top, V) */
    int32_t top_id[LF_SAMPLE_MAX_TOP];       /* highest raw log-probs, descending, lowest id on ties */
    float top_log_prob[LF_SAMPLE_MAX_TOP];
} lf_sample_result;

typedef struct lf_sample_scratch lf_sample_scratch;

/* V: the largest vocabulary the scratch serves (1..INT32_MAX); calls may pass any V in 1..this. */
lf_status lf_sample_scratch_create(int64_t V, lf_sample_scratch **out, lf_err *err);
void lf_sample_scratch_free(lf_sample_scratch *s); /* NULL is a no-op */

/* LF_EINVAL for params out of range (names the parameter): do_sample not 0/1, temperature negative or not
 * finite, top_p outside (0, 1], repetition_penalty <= 0 or not finite, n_top outside 0..LF_SAMPLE_MAX_TOP,
 * presence_penalty / frequency_penalty outside [-2, 2], min_p or typical_p outside [0, 1], n_prompt < 0. */
lf_status lf_sample_params_check(const lf_sample_params *p, lf_err *err);

/* Pick the next token from logits[V] (not modified). history[n_hist]: every token of the sequence so far
 * (prompt + generated; the first p->n_prompt are the prompt) for the penalties; ids outside [0, V) are ignored. rng: the sequence's
 * generator, advanced by exactly one draw when sampling (none when greedy). NaN logits are treated as
 * -inf; if every logit is -inf/NaN the result is token 0 with log_prob -inf (never a crash).
 * Cost: a few O(V) passes; top-k by selection (heap or quickselect); top-p and the draw sort only the tokens
 * near the cut / the draw (a log-space histogram of the weights finds them), falling back to sorting the
 * candidates when the histogram cannot place the cut; min_p / typical_p gather and sort the tokens still kept
 * (typical_p twice: by score, then for the draw); presence/frequency penalties cost O(generated tokens). */
lf_status lf_sample_token(lf_sample_scratch *s, const lf_sample_params *p, lf_rng *rng, const float *logits,
                          int64_t V, const int32_t *history, int64_t n_hist, lf_sample_result *out, lf_err *err);

/* The scalar reference: same contract, written plainly (sorting the full vocabulary, f64 sums; the processing
 * and the weight function are shared with the fast path, the raw log-softmax uses libm exp in f64). Used by the
 * tests; the fast path must pick the same token and agree on log-probs within 1e-5 absolute. Allocates. */
lf_status lf_sample_token_ref(const lf_sample_params *p, lf_rng *rng, const float *logits, int64_t V,
                              const int32_t *history, int64_t n_hist, lf_sample_result *out, lf_err *err);

/* For tests and oracles: probs[V] = the distribution lf_sample_token draws from with these arguments (the
 * renormalised probabilities of the kept tokens, f64 rounded to f32; 0 for tokens removed by top-k/top-p or
 * with zero weight). Greedy parameters, or every processed logit -inf: 1 at the token lf_sample_token returns,
 * 0 elsewhere. Uses no rng; never allocates. */
lf_status lf_sample_distribution(lf_sample_scratch *s, const lf_sample_params *p, const float *logits, int64_t V,
                                 const int32_t *history, int64_t n_hist, float *probs, lf_err *err);

#ifdef __cplusplus
}
#endif
#endif
