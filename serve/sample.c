/* sample.c - the serving sampler (see sample.h for the contract).
 *
 * Fast path, per call, all in the scratch buffers made at create:
 *   1. x[V] = processed logits (NaN -> -inf, repetition penalty, frequency/presence penalties counted in a
 *      zeroed per-id buffer that is zeroed again after use, temperature), f32 as torch.
 *   2. greedy: argmax. Sampling: candidates = every id (top_k: x >= the k-th largest, found with a size-k
 *      min-heap for k <= LF_SAMPLE_SMALL, else by quickselect on a copy), weights e = wexp(x - max) in f32
 *      (a branch-free exp the compiler vectorises), Z = their f64 sum.
 *   3. top_p: a histogram of the weights over d = max - x (LF_SAMPLE_BPU bins per nat) finds the bin b where
 *      the descending mass crosses the cut; only bins b-1..b+1 are sorted, the HF rule runs on them with the
 *      mass below added first, the bins above are kept whole (checked: the top of the sorted part is kept)
 *      and the bins below dropped (checked: their mass is under the cut); else every candidate is sorted.
 *      Small candidate sets are sorted outright.
 *   3b. min_p / typical_p: the kept tokens are gathered into one list, filtered (min_p: by weight; typical_p:
 *      sorted by its score, cut, sorted back into walk order); the draw then walks that list.
 *   4. the draw: u * S is located bin by bin over the unsorted kept bins (histogram masses), only the bin
 *      holding it is sorted and walked, then the sorted part.
 * The reference sorts the whole vocabulary and sums in f64 in the obvious order. Both share the processing
 * (step 1) and the weight function; they differ only in the order of f64 sums, so a token or a top-p cut can
 * differ only when a sum lands within f64 rounding of a boundary. */
#include "serve/sample.h"

#include <math.h>

/* Token choices must not depend on the compiler: no fused multiply-adds in wexp (GCC does not contract in ISO
 * C mode, which the build uses; clang contracts unless told). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
#include <stdlib.h>
#include <string.h>

#define LF_SAMPLE_BPU 64                         /* histogram bins per nat of d = max - x */
#define LF_SAMPLE_DMAX 32                        /* d >= 32 nats (weight < 1.3e-14): the overflow bin */
#define LF_SAMPLE_NB (LF_SAMPLE_DMAX * LF_SAMPLE_BPU) /* bins 0..NB-1, bin NB = overflow */
#define LF_SAMPLE_SMALL 1024                     /* candidate sets this small are sorted outright */

typedef struct {
    float x;    /* processed logit */
    int32_t id;
} sitem;

struct lf_sample_scratch {
    int64_t V;
    float *x;       /* [V] processed logits */
    float *sel;     /* [V] quickselect work copy */
    float *e;       /* [V] weights wexp(x - max) by id (valid for the current candidates) */
    int32_t *list;  /* [V] candidate ids, index order */
    sitem *it;      /* [V + 1] candidates being sorted (walk order) */
    int32_t *cnt;   /* [V] generated-token counts for the frequency/presence penalties; all 0 between calls */
    double hmass[LF_SAMPLE_NB + 1]; /* histogram of the candidates: weight per bin */
    int64_t hcnt[LF_SAMPLE_NB + 1]; /* and count per bin */
    int hmax;                       /* the last non-empty bin */
};

/* ---------------------------------------------------------------- shared semantics */

static inline float nan_to_ninf(float v) { return isnan(v) ? -INFINITY : v; }

/* Walk order (descending): larger processed logit first; equal logits: larger id first (the reverse of the
 * stable ascending sort HF's top-p uses). A strict total order: ids are distinct. */
static inline int before(sitem a, sitem b) { return a.x > b.x || (a.x == b.x && a.id > b.id); }

/* e^d for d <= 0 (d = x - max; -inf and NaN give 0), in f32, branch-free so loops over it vectorise:
 * Cephes' expf (range reduction by ln 2 in two parts, degree-6 polynomial, 2^n through the exponent bits),
 * relative error about 1 ulp; 0 below -87 (probabilities under FLT_MIN, where torch's f32 softmax underflows
 * too). Plain IEEE f32 arithmetic (no libm), so every machine computes the same bits. */
static inline float wexp(float d) {
    uint32_t u, cu, vu;
    memcpy(&u, &d, sizeof u);
    /* all ones for +0 or a negative d >= -87 (bits 0x80000000..0xC2AE0000); 0 below, for -inf and NaN. Bit
     * masks rather than ?: on floats: under -ftrapping-math GCC will not vectorise float selects */
    uint32_t ok = -(uint32_t)((u == 0) | (u - 0x80000000u <= 0x42AE0000u));
    cu = (u & ok) | (0xC2AE0000u & ~ok); /* clamp to -87 */
    float c;
    memcpy(&c, &cu, sizeof c);
    float n = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest integer */
    float r = c - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float q = 1.9875691500e-4f;
    q = q * r + 1.3981999507e-3f;
    q = q * r + 8.3334519073e-3f;
    q = q * r + 4.1665795894e-2f;
    q = q * r + 1.6666665459e-1f;
    q = q * r + 5.0000001201e-1f;
    q = q * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) * (1 << 23); /* n in [-126, 0]: 2^n normal */
    float sc, v;
    memcpy(&sc, &bits, sizeof sc);
    v = q * sc;
    memcpy(&vu, &v, sizeof vu);
    vu &= ok;
    memcpy(&v, &vu, sizeof v);
    return v;
}

/* Weight of a processed logit relative to the maximum m (m > -inf). +inf maximum: the limit, 1 for each
 * +inf token, 0 for the rest. */
static inline float weight(float x, float m) {
    if (m == INFINITY) return x == INFINITY ? 1.0f : 0.0f;
    return wexp(x - m);
}

static int counts_on(const lf_sample_params *p) { return p->presence_penalty != 0 || p->frequency_penalty != 0; }

/* x[V] = NaN-free logits, penalised once per distinct history id (from the raw value, so duplicates are
 * idempotent), then the frequency/presence penalties over the generated ids (history[n_prompt..nh); cnt[V]
 * all zero on entry and on return), divided by tf when tf > 0 (tf = f32 temperature; 0: greedy, not
 * applied). */
static void process(float *x, const float *logits, int64_t V, const int32_t *hist, int64_t nh,
                    const lf_sample_params *p, float tf, int32_t *cnt) {
    for (int64_t i = 0; i < V; i++) x[i] = nan_to_ninf(logits[i]);
    if (p->repetition_penalty != 1.0) {
        float pf = (float)p->repetition_penalty;
        for (int64_t j = 0; j < nh; j++) {
            int32_t id = hist[j];
            if (id < 0 || (int64_t)id >= V) continue;
            float v = nan_to_ninf(logits[id]);
            x[id] = v < 0 ? v * pf : v / pf;
        }
    }
    if (counts_on(p)) {
        /* vLLM: logits -= frequency * counts; logits -= presence * (counts > 0); f32 tensors */
        int64_t g0 = p->n_prompt < nh ? p->n_prompt : nh;
        float ff = (float)p->frequency_penalty, pf = (float)p->presence_penalty;
        for (int64_t j = g0; j < nh; j++)
            if (hist[j] >= 0 && (int64_t)hist[j] < V) cnt[hist[j]]++;
        for (int64_t j = g0; j < nh; j++) {
            int32_t id = hist[j];
            if (id < 0 || (int64_t)id >= V || cnt[id] == 0) continue;
            x[id] = (x[id] - ff * (float)cnt[id]) - pf;
            cnt[id] = 0; /* applied once per distinct id; the buffer is clean again afterwards */
        }
    }
    if (tf > 0 && tf != 1.0f)
        for (int64_t i = 0; i < V; i++) x[i] = nan_to_ninf(x[i] / tf); /* tf > 0: no NaN, kept for safety */
}

/* max of x[0..n) ignoring NaN (-inf when none); 8 independent lanes, so 8 maxss chains run in parallel (max
 * ignoring NaN is order-independent, so the lanes change nothing but the speed). */
static float max_skip_nan(const float *x, int64_t n) {
    float l[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) l[k] = x[i + k] > l[k] ? x[i + k] : l[k];
    float m = -INFINITY;
    for (int k = 0; k < 8; k++) m = l[k] > m ? l[k] : m;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

static int64_t argmax_lowest(const float *x, int64_t V) {
    int64_t best = 0;
    for (int64_t i = 1; i < V; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Log-softmax of the raw logits: max m, log of sum exp(x - m) (finite m), count of +inf logits. */
typedef struct {
    float m;
    double logz;
    int64_t ninf;
} raw_stats;

static double raw_lp(float v, const raw_stats *r) {
    v = nan_to_ninf(v);
    if (r->m == -INFINITY) return -INFINITY;
    if (r->m == INFINITY) return v == INFINITY ? -log((double)r->ninf) : -INFINITY;
    return ((double)v - (double)r->m) - r->logz;
}

static int sampling_on(const lf_sample_params *p) { return p->do_sample && (float)p->temperature > 0.0f; }

static int topk_on(const lf_sample_params *p, int64_t V) { return p->top_k > 0 && p->top_k < V; }

static int minp_on(const lf_sample_params *p) { return p->min_p > 0; }

static int typical_on(const lf_sample_params *p) { return p->typical_p > 0 && p->typical_p < 1; }

/* min_p or typical_p: the kept set is gathered and filtered after top-k / top-p. */
static int post_on(const lf_sample_params *p) { return minp_on(p) || typical_on(p); }

lf_status lf_sample_params_check(const lf_sample_params *p, lf_err *err) {
    if (!p) return lf_err_set(err, LF_EINVAL, "sample params: NULL");
    if (p->do_sample != 0 && p->do_sample != 1)
        return lf_err_set(err, LF_EINVAL, "do_sample must be 0 or 1, got %d", p->do_sample);
    if (!isfinite(p->temperature) || p->temperature < 0)
        return lf_err_set(err, LF_EINVAL, "temperature must be a finite number >= 0 (0 = greedy), got %g",
                          p->temperature);
    if (!(p->top_p > 0 && p->top_p <= 1))
        return lf_err_set(err, LF_EINVAL, "top_p must be in (0, 1], got %g", p->top_p);
    if (!isfinite(p->repetition_penalty) || !(p->repetition_penalty > 0))
        return lf_err_set(err, LF_EINVAL, "repetition_penalty must be a finite number > 0, got %g",
                          p->repetition_penalty);
    if (p->n_top < 0 || p->n_top > LF_SAMPLE_MAX_TOP)
        return lf_err_set(err, LF_EINVAL, "n_top (top_logprobs) must be in 0..%d, got %d", LF_SAMPLE_MAX_TOP,
                          p->n_top);
    if (!(p->presence_penalty >= -2.0 && p->presence_penalty <= 2.0))
        return lf_err_set(err, LF_EINVAL, "presence_penalty must be in [-2, 2], got %g", p->presence_penalty);
    if (!(p->frequency_penalty >= -2.0 && p->frequency_penalty <= 2.0))
        return lf_err_set(err, LF_EINVAL, "frequency_penalty must be in [-2, 2], got %g", p->frequency_penalty);
    if (!(p->min_p >= 0.0 && p->min_p <= 1.0))
        return lf_err_set(err, LF_EINVAL, "min_p must be in [0, 1], got %g", p->min_p);
    if (!(p->typical_p >= 0.0 && p->typical_p <= 1.0))
        return lf_err_set(err, LF_EINVAL, "typical_p must be in [0, 1] (0 or 1: off), got %g", p->typical_p);
    if (p->n_prompt < 0)
        return lf_err_set(err, LF_EINVAL, "n_prompt must be >= 0, got %lld", (long long)p->n_prompt);
    return LF_OK;
}

static lf_status check_call(const lf_sample_params *p, int64_t V, int64_t maxV, const float *logits,
                            const int32_t *history, int64_t n_hist, const void *out, lf_err *err) {
    lf_status st = lf_sample_params_check(p, err);
    if (st) return st;
    if (V < 1 || V > maxV)
        return lf_err_set(err, LF_EINVAL, "sample: vocabulary size V=%lld outside 1..%lld", (long long)V,
                          (long long)maxV);
    if (!logits || !out) return lf_err_set(err, LF_EINVAL, "sample: NULL logits or output");
    if (n_hist < 0 || (n_hist > 0 && !history))
        return lf_err_set(err, LF_EINVAL, "sample: bad history (n_hist=%lld, history %s)", (long long)n_hist,
                          history ? "set" : "NULL");
    return LF_OK;
}

/* ---------------------------------------------------------------- sorting / selection (no allocation) */

static void items_insertion(sitem *a, int64_t n) {
    for (int64_t i = 1; i < n; i++) {
        sitem t = a[i];
        int64_t j = i;
        while (j > 0 && before(t, a[j - 1])) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = t;
    }
}

static void items_sift(sitem *a, int64_t n, int64_t i) { /* heap whose root comes last in walk order */
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) return;
        if (c + 1 < n && before(a[c], a[c + 1])) c++;
        if (!before(a[i], a[c])) return;
        sitem t = a[i];
        a[i] = a[c];
        a[c] = t;
        i = c;
    }
}

static void items_heapsort(sitem *a, int64_t n) {
    for (int64_t i = n / 2 - 1; i >= 0; i--) items_sift(a, n, i);
    for (int64_t end = n - 1; end > 0; end--) {
        sitem t = a[0];
        a[0] = a[end];
        a[end] = t;
        items_sift(a, end, 0);
    }
}

static inline void items_swap(sitem *a, int64_t i, int64_t j) {
    sitem t = a[i];
    a[i] = a[j];
    a[j] = t;
}

/* Introsort into walk order: quicksort (median of 3, Hoare), heapsort past the depth limit, insertion
 * sort for short ranges. */
static void items_sort(sitem *a, int64_t n) {
    int depth = 0;
    for (int64_t m = n; m > 1; m >>= 1) depth += 2;
    while (n > 16) {
        if (depth-- == 0) {
            items_heapsort(a, n);
            return;
        }
        int64_t mid = n / 2;
        if (before(a[mid], a[0])) items_swap(a, mid, 0);
        if (before(a[n - 1], a[0])) items_swap(a, n - 1, 0);
        if (before(a[n - 1], a[mid])) items_swap(a, n - 1, mid);
        sitem piv = a[mid];
        int64_t i = -1, j = n;
        for (;;) {
            do i++;
            while (before(a[i], piv));
            do j--;
            while (before(piv, a[j]));
            if (i >= j) break;
            items_swap(a, i, j);
        }
        /* [0, j] and [j+1, n): recurse into the smaller, loop on the larger */
        int64_t nl = j + 1, nr = n - nl;
        if (nl < nr) {
            items_sort(a, nl);
            a += nl;
            n = nr;
        } else {
            items_sort(a + nl, nr);
            n = nl;
        }
    }
    items_insertion(a, n);
}

static void floats_sift_min(float *a, int64_t n, int64_t i) { /* min-heap */
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) return;
        if (c + 1 < n && a[c + 1] < a[c]) c++;
        if (!(a[c] < a[i])) return;
        float t = a[i];
        a[i] = a[c];
        a[c] = t;
        i = c;
    }
}

static void floats_sort_desc(float *a, int64_t n) { /* heapsort with a min-heap: smallest to the end */
    for (int64_t i = n / 2 - 1; i >= 0; i--) floats_sift_min(a, n, i);
    for (int64_t end = n - 1; end > 0; end--) {
        float t = a[0];
        a[0] = a[end];
        a[end] = t;
        floats_sift_min(a, end, 0);
    }
}

static inline float med3(float a, float b, float c) {
    if (a < b) return b < c ? b : (a < c ? c : a);
    return a < c ? a : (b < c ? c : b);
}

/* The value at position k (0-based) of a[0..n) sorted descending (no NaN); reorders a. Quickselect with a
 * 3-way partition (ties cost nothing), heapsort of the remaining range after 64 rounds. */
static float kth_largest(float *a, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n;
    for (int round = 0; hi - lo > 16; round++) {
        if (round == 64) {
            floats_sort_desc(a + lo, hi - lo);
            return a[k];
        }
        float p = med3(a[lo], a[lo + (hi - lo) / 2], a[hi - 1]);
        int64_t lt = lo, i = lo, gt = hi; /* [lo,lt) > p, [lt,i) == p, [gt,hi) < p */
        while (i < gt) {
            float v = a[i];
            if (v > p) {
                a[i++] = a[lt];
                a[lt++] = v;
            } else if (v < p) {
                a[i] = a[--gt];
                a[gt] = v;
            } else {
                i++;
            }
        }
        if (k < lt) hi = lt;
        else if (k < gt) return p;
        else lo = gt;
    }
    floats_sort_desc(a + lo, hi - lo);
    return a[k];
}

/* The k-th largest (1-based) of x[0..n) (no NaN) for small k: a size-k min-heap in h[k]; after it fills, an
 * element enters only when larger than the root, so random rows cost about one compare per element. */
static float kth_largest_heap(const float *x, int64_t n, int64_t k, float *h) {
    for (int64_t i = 0; i < k; i++) h[i] = x[i];
    for (int64_t i = k / 2 - 1; i >= 0; i--) floats_sift_min(h, k, i);
    for (int64_t i = k; i < n; i++) {
        if (x[i] > h[0]) {
            h[0] = x[i];
            floats_sift_min(h, k, 0);
        }
    }
    return h[0];
}

/* ---------------------------------------------------------------- min_p / typical_p (both paths) */

/* f64 sum of the weights of a[0..n) in order. */
static double items_mass(const sitem *a, int64_t n, float m) {
    double S = 0;
    for (int64_t j = 0; j < n; j++) S += weight(a[j].x, m);
    return S;
}

/* Keep the tokens of a[0..n) with a non-zero weight and, with min_p, a weight >= f32(min_p) (HF and vLLM
 * remove prob < min_p * max prob: the weight is prob / max prob); the order is kept. Returns the count. */
static int64_t minp_filter(sitem *a, int64_t n, float m, const lf_sample_params *p) {
    float thr = minp_on(p) ? (float)p->min_p : 0.0f;
    int64_t k = 0;
    for (int64_t j = 0; j < n; j++) {
        float w = weight(a[j].x, m);
        if (w > 0 && w >= thr) a[k++] = a[j];
    }
    return k;
}

/* HF TypicalLogitsWarper over a[0..n) (walk order, non-zero weights): the kept count, a[0..k) in walk order
 * again. p = weight / S, log p = (x - m) - log S and H = -sum p log p in f64; score |-log p - H| in f32, sorted
 * ascending (held negated in .x, so the walk-order sort does it); the cut is the first position where the
 * cumulative probability reaches f32(mass) (clamped to the last); every token whose score is <= the score
 * there stays (so the order among equal scores does not matter). x[id]: the processed logits (.x restored
 * from them). A +inf maximum: uniform over the +inf tokens, all kept. */
static int64_t typical_filter(sitem *a, int64_t n, float m, double mass, const float *x) {
    if (n <= 1 || m == INFINITY) return n;
    double S = items_mass(a, n, m), logS = log(S), H = 0;
    for (int64_t j = 0; j < n; j++) {
        double lp = ((double)a[j].x - (double)m) - logS;
        H -= (weight(a[j].x, m) / S) * lp;
    }
    for (int64_t j = 0; j < n; j++) {
        double lp = ((double)a[j].x - (double)m) - logS;
        a[j].x = -(float)fabs(-lp - H);
    }
    items_sort(a, n); /* .x descending = score ascending */
    float mf = (float)mass;
    double cum = 0;
    int64_t last = n - 1;
    for (int64_t j = 0; j < n; j++) {
        cum += weight(x[a[j].id], m) / S;
        if (!((float)cum < mf)) {
            last = j;
            break;
        }
    }
    float cut = a[last].x;
    int64_t k = 0;
    while (k < n && a[k].x >= cut) k++; /* score <= the score at the cut */
    for (int64_t j = 0; j < k; j++) a[j].x = x[a[j].id];
    items_sort(a, k);
    return k;
}

/* ---------------------------------------------------------------- scratch */

lf_status lf_sample_scratch_create(int64_t V, lf_sample_scratch **out, lf_err *err) {
    lf_sample_scratch *s = NULL;
    if (!out) return lf_err_set(err, LF_EINVAL, "sample scratch: NULL out");
    *out = NULL;
    if (V < 1 || V > INT32_MAX)
        return lf_err_set(err, LF_EINVAL, "sample scratch: vocabulary size %lld outside 1..%d", (long long)V,
                          INT32_MAX);
    s = calloc(1, sizeof *s);
    LF_CHECK_ALLOC(s, err);
    s->V = V;
    s->x = malloc((size_t)V * sizeof *s->x);
    LF_CHECK_ALLOC(s->x, err);
    s->sel = malloc((size_t)V * sizeof *s->sel);
    LF_CHECK_ALLOC(s->sel, err);
    s->e = malloc((size_t)V * sizeof *s->e);
    LF_CHECK_ALLOC(s->e, err);
    s->list = malloc((size_t)V * sizeof *s->list);
    LF_CHECK_ALLOC(s->list, err);
    s->it = malloc((size_t)(V + 1) * sizeof *s->it); /* +1: gather_sorted's branch-free store */
    LF_CHECK_ALLOC(s->it, err);
    s->cnt = calloc((size_t)V, sizeof *s->cnt);
    LF_CHECK_ALLOC(s->cnt, err);
    *out = s;
    return LF_OK;
fail:
    lf_sample_scratch_free(s);
    return LF_ENOMEM;
}

void lf_sample_scratch_free(lf_sample_scratch *s) {
    if (!s) return;
    free(s->x);
    free(s->sel);
    free(s->e);
    free(s->list);
    free(s->it);
    free(s->cnt);
    free(s);
}

/* ---------------------------------------------------------------- fast path */

/* Histogram bin of a candidate: d = m - x in f32 (monotone in x, so bins never break the walk order),
 * LF_SAMPLE_BPU bins per nat, bin NB for d >= DMAX (and for everything but +inf under a +inf maximum). */
static inline int bin_of(float x, float m) {
    if (m == INFINITY) return x == INFINITY ? 0 : LF_SAMPLE_NB;
    float d = m - x, dmax = (float)LF_SAMPLE_DMAX;
    d = d < dmax ? d : dmax; /* minss: -inf tokens (d = +inf) land in the overflow bin; no branch */
    return (int)(d * (float)LF_SAMPLE_BPU);
}

/* The candidates: every id when all, else s->list[0..n) (index order). */
typedef struct {
    int all;
    int64_t n;
} cands;

static inline int32_t cand_id(const lf_sample_scratch *s, const cands *c, int64_t j) {
    return c->all ? (int32_t)j : s->list[j];
}

static void hist_build(lf_sample_scratch *s, const cands *c, float m) {
    memset(s->hmass, 0, sizeof s->hmass);
    memset(s->hcnt, 0, sizeof s->hcnt);
    int hmax = 0;
    for (int64_t j = 0; j < c->n; j++) {
        int32_t id = cand_id(s, c, j);
        int b = bin_of(s->x[id], m);
        s->hmass[b] += s->e[id];
        s->hcnt[b]++;
        hmax = b > hmax ? b : hmax;
    }
    s->hmax = hmax;
}

/* The kept set after top-k / top-p: the candidates in histogram bins < hb (unsorted; their masses are the
 * histogram's), then s->it[0..n) in walk order (all in bins >= hb). hb = 0: only the sorted list; hb = NB + 1
 * with n = 0: every candidate. */
typedef struct {
    cands c;    /* the top-k candidates */
    int hb;     /* candidates in bins < hb are kept */
    int hist;   /* s->hmass / s->hcnt hold the histogram of c */
    int64_t n;  /* s->it[0..n): the sorted part */
    double S;   /* total weight of the kept set (the draw's scale) */
    float m;    /* max processed logit (> -inf) */
} kept_set;

/* Sort the candidates with bin in [bmin, bmax] into s->it + at (branch-free compaction: the bins of a
 * flat distribution interleave at random; it stores one slot past the last kept item, at + count <= V, hence
 * it[V + 1]); returns their count. The tokens already in s->it[0..at) are outside [bmin, bmax]. */
static int64_t gather_sorted(lf_sample_scratch *s, const cands *c, float m, int bmin, int bmax, int64_t at) {
    int64_t k = 0;
    sitem *it = s->it + at;
    uint32_t span = (uint32_t)(bmax - bmin);
    if (bmin == 0 && bmax >= LF_SAMPLE_NB) {
        for (int64_t j = 0; j < c->n; j++) {
            int32_t id = cand_id(s, c, j);
            it[j].x = s->x[id];
            it[j].id = id;
        }
        k = c->n;
    } else {
        for (int64_t j = 0; j < c->n; j++) {
            int32_t id = cand_id(s, c, j);
            float xv = s->x[id];
            it[k].x = xv;
            it[k].id = id;
            k += (uint32_t)(bin_of(xv, m) - bmin) <= span;
        }
    }
    items_sort(it, k);
    return k;
}

/* HF top-p over the sorted it[0..c) with mass tail below it (as fractions of Z): the kept prefix length, or -1
 * when the cut is not inside it[0..c): a token below (cumulative <= tail) would be kept, or, when tokens
 * above it[0] exist (!has_top), it[0] itself is removed. has_top: it[0] is the most likely token (always kept). */
static int64_t top_p_cut(const lf_sample_scratch *s, int64_t c, double tail, double Z, float thr, int has_top) {
    if (c == 0) return -1;
    if (tail > 0 && !((float)tail <= thr)) return -1;
    double cum = tail;
    int64_t keep = c;
    for (int64_t j = c - 1; j >= (has_top ? 1 : 0); j--) {
        cum += s->e[s->it[j].id] / Z;
        if ((float)cum <= thr) keep = j;
        else break;
    }
    return keep == 0 ? -1 : keep;
}

/* f64 sum of w[0..n) with 4 accumulators (fixed order: the same bits on every machine). */
static double sum4(const float *w, int64_t n) {
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a0 += w[i];
        a1 += w[i + 1];
        a2 += w[i + 2];
        a3 += w[i + 3];
    }
    for (; i < n; i++) a0 += w[i];
    return (a0 + a1) + (a2 + a3);
}

/* Steps 2-3 of the fast path on s->x (processed, sampling). Returns 0 when every processed logit is -inf. */
static int fast_kept(lf_sample_scratch *s, const lf_sample_params *p, int64_t V, kept_set *k) {
    const float *x = s->x;
    float *e = s->e;
    float m = max_skip_nan(x, V);
    if (m == -INFINITY) return 0;
    k->m = m;
    k->hist = 0;
    cands *c = &k->c;
    double Z = 0;
    if (topk_on(p, V)) {
        float thr;
        if (p->top_k <= LF_SAMPLE_SMALL) {
            thr = kth_largest_heap(x, V, p->top_k, s->sel);
        } else {
            memcpy(s->sel, x, (size_t)V * sizeof *x);
            thr = kth_largest(s->sel, V, p->top_k - 1);
        }
        int64_t n = 0;
        for (int64_t i = 0; i < V; i++)
            if (x[i] >= thr && x[i] > -INFINITY) s->list[n++] = (int32_t)i;
        c->all = 0;
        c->n = n;
        for (int64_t j = 0; j < n; j++) {
            int32_t id = s->list[j];
            e[id] = weight(x[id], m);
            Z += e[id];
        }
    } else {
        c->all = 1;
        c->n = V;
        if (m == INFINITY) {
            for (int64_t i = 0; i < V; i++) e[i] = x[i] == INFINITY ? 1.0f : 0.0f;
        } else {
            for (int64_t i = 0; i < V; i++) e[i] = wexp(x[i] - m); /* vectorised */
        }
        Z = sum4(e, V);
    }
    if (p->top_p < 1.0) {
        float thr = (float)(1.0 - p->top_p);
        int64_t n = -1, keep = -1;
        k->hb = 0;
        if (c->n > LF_SAMPLE_SMALL) {
            /* the kept mass is about Z * (1 - thr): find the bin b where the descending mass passes it (with a
             * margin); sort bins b-1..b+1 only, keep the bins above whole, check the bins below are dropped */
            hist_build(s, c, m);
            k->hist = 1;
            double need = Z * (1.0 - (double)thr) * (1.0 + 1e-6), acc = 0;
            int b = 0;
            for (; b < LF_SAMPLE_NB; b++) {
                acc += s->hmass[b];
                if (acc >= need && acc > 0) break;
            }
            if (b < LF_SAMPLE_NB) {
                int b0 = b > 0 ? b - 1 : 0, b1 = b + 1;
                double tail = 0;
                for (int i = b1 + 1; i <= LF_SAMPLE_NB; i++) tail += s->hmass[i];
                tail /= Z;
                n = gather_sorted(s, c, m, b0, b1, 0);
                keep = top_p_cut(s, n, tail, Z, thr, b0 == 0);
                if (keep >= 0) k->hb = b0;
            }
        }
        if (keep < 0) { /* small set, or the cut was not inside the gathered bins: sort every candidate */
            n = gather_sorted(s, c, m, 0, LF_SAMPLE_NB, 0);
            keep = top_p_cut(s, n, 0.0, Z, thr, 1);
            k->hb = 0;
        }
        double S = 0;
        for (int b = 0; b < k->hb; b++) S += s->hmass[b];
        for (int64_t j = 0; j < keep; j++) S += e[s->it[j].id];
        k->n = keep;
        k->S = S;
        return 1;
    }
    k->S = Z;
    if (!c->all && c->n <= LF_SAMPLE_SMALL) { /* small top-k set: sort it, the draw walks it directly */
        k->n = gather_sorted(s, c, m, 0, LF_SAMPLE_NB, 0);
        k->hb = 0;
    } else {
        k->n = 0;
        k->hb = LF_SAMPLE_NB + 1;
    }
    return 1;
}

/* Step 3b: min_p / typical_p on the kept set of fast_kept: the sorted part (in place) and the unsorted head
 * bins (appended after it) gathered into s->it, filtered, sorted into walk order; k becomes that list alone
 * (hb = 0). Capacity: the kept tokens are distinct candidates, so at most V. */
static void fast_post(lf_sample_scratch *s, const lf_sample_params *p, kept_set *k) {
    /* minp_filter's rule on the weights already in s->e (e[id] == weight(x[id], m) for every candidate), applied
     * while gathering, before the sort: usually leaves few tokens */
    const float thr = minp_on(p) ? (float)p->min_p : 0.0f, *e = s->e;
    int64_t n = 0;
    for (int64_t j = 0; j < k->n; j++) {
        float w = e[s->it[j].id];
        if (w > 0 && w >= thr) s->it[n++] = s->it[j];
    }
    if (k->hb > 0) {
        const int all = k->hb > LF_SAMPLE_NB;
        for (int64_t j = 0; j < k->c.n; j++) {
            int32_t id = cand_id(s, &k->c, j);
            float w = e[id];
            if (w > 0 && w >= thr && (all || bin_of(s->x[id], k->m) < k->hb)) s->it[n++] = (sitem){s->x[id], id};
        }
    }
    items_sort(s->it, n);
    if (typical_on(p)) n = typical_filter(s->it, n, k->m, p->typical_p, s->x);
    k->n = n;
    k->hb = 0;
    k->S = items_mass(s->it, n, k->m);
}

/* Step 4: the inverse-CDF draw of target = u * S over the kept set in walk order. The unsorted head is
 * crossed bin by bin with the histogram's masses; the bin holding the target is sorted (after the sorted part,
 * in s->it + n) and walked; when f64 rounding leaves the target past a bin's end the walk goes on. */
static int32_t fast_draw(lf_sample_scratch *s, kept_set *k, double u) {
    double target = u * k->S, acc = 0;
    int32_t last = -1;
    int walking = 0;
    if (k->hb > 0) {
        if (!k->hist) {
            hist_build(s, &k->c, k->m);
            k->hist = 1;
        }
        /* with no sorted part, the last non-empty bin is walked whatever the bin sums say */
        int hb = k->hb <= LF_SAMPLE_NB ? k->hb : LF_SAMPLE_NB + 1, lastb = k->n == 0 ? s->hmax : -1;
        for (int b = 0; b < hb; b++) {
            if (s->hcnt[b] == 0) continue;
            if (!walking && !(acc + s->hmass[b] > target) && b != lastb) {
                acc += s->hmass[b];
                continue;
            }
            walking = 1;
            int64_t c = gather_sorted(s, &k->c, k->m, b, b, k->n);
            for (int64_t j = 0; j < c; j++) {
                const sitem *t = &s->it[k->n + j];
                double w = s->e[t->id];
                acc += w;
                if (w > 0) last = t->id;
                if (target < acc) return t->id;
            }
        }
    }
    for (int64_t j = 0; j < k->n; j++) {
        double w = s->e[s->it[j].id];
        acc += w;
        if (w > 0) last = s->it[j].id;
        if (target < acc) return s->it[j].id;
    }
    return last;
}

/* Raw log-softmax statistics: weights through wexp in chunks (vectorised), summed in f64 with sum4. */
static void fast_raw(const float *logits, int64_t V, raw_stats *r) {
    float m = max_skip_nan(logits, V);
    r->m = m;
    r->ninf = 0;
    r->logz = 0;
    if (m == -INFINITY) return;
    if (m == INFINITY) {
        for (int64_t i = 0; i < V; i++) r->ninf += logits[i] == INFINITY;
        return;
    }
    float w[512];
    double z = 0;
    for (int64_t i0 = 0; i0 < V; i0 += 512) {
        int64_t n = V - i0 < 512 ? V - i0 : 512;
        for (int64_t i = 0; i < n; i++) w[i] = wexp(logits[i0 + i] - m); /* NaN -> 0; vectorised */
        z += sum4(w, n);
    }
    r->logz = log(z);
}

/* n = min(n_top, V) highest raw logits (NaN = -inf), descending, lowest id on ties: one pass, insertion. */
static int fast_top(const float *logits, int64_t V, int n_top, const raw_stats *r, lf_sample_result *out) {
    int n = (int64_t)n_top < V ? n_top : (int)V, c = 0;
    float tv[LF_SAMPLE_MAX_TOP];
    for (int64_t i = 0; i < V && n > 0; i++) {
        float v = nan_to_ninf(logits[i]);
        if (c == n && !(v > tv[n - 1])) continue;
        int j = c < n ? c++ : n - 1;
        while (j > 0 && tv[j - 1] < v) {
            tv[j] = tv[j - 1];
            out->top_id[j] = out->top_id[j - 1];
            j--;
        }
        tv[j] = v;
        out->top_id[j] = (int32_t)i;
    }
    for (int j = 0; j < n; j++) out->top_log_prob[j] = (float)raw_lp(tv[j], r);
    return n;
}

lf_status lf_sample_token(lf_sample_scratch *s, const lf_sample_params *p, lf_rng *rng, const float *logits,
                          int64_t V, const int32_t *history, int64_t n_hist, lf_sample_result *out, lf_err *err) {
    if (!s) return lf_err_set(err, LF_EINVAL, "sample: NULL scratch");
    lf_status st = check_call(p, V, s->V, logits, history, n_hist, out, err);
    if (st) return st;
    int samp = sampling_on(p);
    if (samp && !rng) return lf_err_set(err, LF_EINVAL, "sample: sampling needs an rng");
    process(s->x, logits, V, history, n_hist, p, samp ? (float)p->temperature : 0.0f, s->cnt);
    int64_t id;
    if (!samp) {
        id = argmax_lowest(s->x, V);
    } else {
        double u = lf_rng_uniform_f64(rng); /* exactly one draw per sampled token */
        kept_set k;
        if (!fast_kept(s, p, V, &k)) {
            id = 0;
        } else {
            if (post_on(p)) fast_post(s, p, &k);
            id = fast_draw(s, &k, u);
        }
        if (id < 0) id = (int32_t)argmax_lowest(s->x, V); /* unreachable: the maximum has weight 1 */
    }
    raw_stats r;
    fast_raw(logits, V, &r);
    out->id = (int32_t)id;
    out->log_prob = (float)raw_lp(logits[id], &r);
    out->n_top = fast_top(logits, V, p->n_top, &r, out);
    return LF_OK;
}

lf_status lf_sample_distribution(lf_sample_scratch *s, const lf_sample_params *p, const float *logits, int64_t V,
                                 const int32_t *history, int64_t n_hist, float *probs, lf_err *err) {
    if (!s) return lf_err_set(err, LF_EINVAL, "sample: NULL scratch");
    lf_status st = check_call(p, V, s->V, logits, history, n_hist, probs, err);
    if (st) return st;
    int samp = sampling_on(p);
    process(s->x, logits, V, history, n_hist, p, samp ? (float)p->temperature : 0.0f, s->cnt);
    memset(probs, 0, (size_t)V * sizeof *probs);
    kept_set k;
    if (!samp || !fast_kept(s, p, V, &k)) {
        probs[samp ? 0 : argmax_lowest(s->x, V)] = 1.0f;
        return LF_OK;
    }
    if (post_on(p)) fast_post(s, p, &k);
    if (k.hb > 0) {
        for (int64_t j = 0; j < k.c.n; j++) {
            int32_t id = cand_id(s, &k.c, j);
            if (k.hb > LF_SAMPLE_NB || bin_of(s->x[id], k.m) < k.hb) probs[id] = (float)(s->e[id] / k.S);
        }
    }
    for (int64_t j = 0; j < k.n; j++) probs[s->it[j].id] = (float)(s->e[s->it[j].id] / k.S);
    return LF_OK;
}

/* ---------------------------------------------------------------- reference */

static int cmp_walk(const void *a, const void *b) {
    sitem x = *(const sitem *)a, y = *(const sitem *)b;
    return before(x, y) ? -1 : before(y, x) ? 1 : 0;
}

static int cmp_top(const void *a, const void *b) { /* raw value descending, lowest id first */
    sitem x = *(const sitem *)a, y = *(const sitem *)b;
    if (x.x != y.x) return x.x > y.x ? -1 : 1;
    return (x.id > y.id) - (x.id < y.id);
}

lf_status lf_sample_token_ref(const lf_sample_params *p, lf_rng *rng, const float *logits, int64_t V,
                              const int32_t *history, int64_t n_hist, lf_sample_result *out, lf_err *err) {
    lf_status st = check_call(p, V, INT32_MAX, logits, history, n_hist, out, err);
    if (st) return st;
    int samp = sampling_on(p);
    if (samp && !rng) return lf_err_set(err, LF_EINVAL, "sample_ref: sampling needs an rng");
    float *x = malloc((size_t)V * sizeof *x);
    sitem *a = malloc((size_t)V * sizeof *a);
    int32_t *cnt = counts_on(p) ? calloc((size_t)V, sizeof *cnt) : NULL;
    LF_CHECK_ALLOC(x, err);
    LF_CHECK_ALLOC(a, err);
    if (counts_on(p)) LF_CHECK_ALLOC(cnt, err);
    process(x, logits, V, history, n_hist, p, samp ? (float)p->temperature : 0.0f, cnt);

    int64_t id = 0;
    if (!samp) {
        for (int64_t i = 1; i < V; i++)
            if (x[i] > x[id]) id = i;
    } else {
        double u = lf_rng_uniform_f64(rng);
        for (int64_t i = 0; i < V; i++) a[i] = (sitem){x[i], (int32_t)i};
        qsort(a, (size_t)V, sizeof *a, cmp_walk); /* descending; equal logits: larger id first */
        float m = a[0].x;
        if (m > -INFINITY) {
            /* top-k: everything >= the k-th largest value */
            float kth = topk_on(p, V) ? a[p->top_k - 1].x : -INFINITY;
            int64_t nk = 0;
            while (nk < V && a[nk].x >= kth) nk++;
            double Z = 0;
            for (int64_t i = 0; i < V; i++)
                if (x[i] >= kth) Z += weight(x[i], m);
            double S = Z;
            if (p->top_p < 1.0) {
                /* HF: ascending cumulative sum of the softmax, drop while f32(cum) <= f32(1 - top_p), keep
                 * the most likely */
                float thr = (float)(1.0 - p->top_p);
                double cum = 0;
                int64_t keep = nk;
                for (int64_t j = nk - 1; j >= 1; j--) {
                    cum += weight(a[j].x, m) / Z;
                    if ((float)cum <= thr) keep = j;
                    else break;
                }
                nk = keep;
                S = 0;
                for (int64_t j = 0; j < nk; j++) S += weight(a[j].x, m);
            }
            if (post_on(p)) { /* min_p, then typical_p, on the kept prefix */
                nk = minp_filter(a, nk, m, p);
                if (typical_on(p)) nk = typical_filter(a, nk, m, p->typical_p, x);
                S = items_mass(a, nk, m);
            }
            double target = u * S, acc = 0;
            int64_t last = -1, pick = -1;
            for (int64_t j = 0; j < nk; j++) {
                double w = weight(a[j].x, m);
                acc += w;
                if (w > 0) last = a[j].id;
                if (target < acc) {
                    pick = a[j].id;
                    break;
                }
            }
            id = pick >= 0 ? pick : last >= 0 ? last : 0;
        }
    }

    /* raw log-softmax, f64 */
    raw_stats r = {-INFINITY, 0.0, 0};
    for (int64_t i = 0; i < V; i++) {
        float v = nan_to_ninf(logits[i]);
        if (v > r.m) r.m = v;
        if (v == INFINITY) r.ninf++;
    }
    if (r.m > -INFINITY && r.m < INFINITY) {
        double z = 0;
        for (int64_t i = 0; i < V; i++) z += exp((double)nan_to_ninf(logits[i]) - (double)r.m);
        r.logz = log(z);
    }
    out->id = (int32_t)id;
    out->log_prob = (float)raw_lp(logits[id], &r);
    for (int64_t i = 0; i < V; i++) a[i] = (sitem){nan_to_ninf(logits[i]), (int32_t)i};
    qsort(a, (size_t)V, sizeof *a, cmp_top);
    out->n_top = (int64_t)p->n_top < V ? p->n_top : (int)V;
    for (int j = 0; j < out->n_top; j++) {
        out->top_id[j] = a[j].id;
        out->top_log_prob[j] = (float)raw_lp(a[j].x, &r);
    }
    free(x);
    free(a);
    free(cnt);
    return LF_OK;
fail:
    free(x);
    free(a);
    free(cnt);
    return LF_ENOMEM;
}
