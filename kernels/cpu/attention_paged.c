/* attention_paged.c - causal grouped-query attention of one sequence's new queries over a paged KV cache.
 *
 * q[T,H,D]; kpool, vpool [NB,BS,KH,D]; block_table[n_blocks]; out[T,H,D]. Logical position j of the sequence
 * is pool row r(j) = block_table[j / BS] * BS + j % BS. Query t of head h (kv head g = h / (H/KH)) at
 * position p = pos[t] attends j in [lo, p], lo = max(0, p - window + 1) when window > 0, else 0:
 *   s_j = scale * (q . k_r(j)),  out = sum_j softmax(s)_j v_r(j).
 * Same math as attention.c with one more indirection; the caller guarantees block ids < NB (see cpu_paged.h).
 *
 * The ref is two passes in double, row by row through the block table. The fast path is attention.c's one
 * pass of online softmax over chunks of ATT_BK keys: a chunk's pool row offsets are resolved once (walking
 * block/slot, no division per key), used for both its K and V rows, so blocks of any BS (1 included) cost
 * the same. Only acc[D], the chunk's scores and offsets live on the stack. Work items (t, h) are split over
 * the backend pool, h fastest so heads sharing a kv head run together. */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_paged.h"

#define ATT_BK 32 /* keys per online-softmax chunk */

static inline int64_t pa_lo(int64_t p, int64_t window) {
    if (window <= 0) return 0;
    int64_t lo = p - window + 1;
    return lo < 0 ? 0 : lo;
}

/* Checks the block ids of blocks [b0, b1] are >= 0. */
static lf_status pa_check_ids(const int32_t *bt, int64_t b0, int64_t b1, int64_t t, lf_err *err) {
    for (int64_t b = b0; b <= b1; b++)
        if (bt[b] < 0)
            return lf_err_set(err, LF_EINVAL,
                              "attention_paged: block_table[%lld] = %d (negative) is attended by query %lld",
                              (long long)b, (int)bt[b], (long long)t);
    return LF_OK;
}

/* Sizes, positions against n_blocks * BS, and the ids of every attended block. The blocks attended by the
 * queries seen so far are tracked as one interval [clo, chi], so sorted or chunked positions cost
 * O(T + n_blocks) and a block outside every query's window (e.g. freed and set to -1) is never read. */
lf_status lf_cpu_attention_paged_check(const int32_t *bt, int64_t n_blocks, int64_t BS, const int32_t *pos, int64_t T, int64_t H,
                          int64_t KH, int64_t D, int64_t window, lf_err *err) {
    if (T < 0 || n_blocks < 0 || BS < 1 || H < 1 || KH < 1 || D < 1)
        return lf_err_set(err, LF_EINVAL,
                          "attention_paged: bad size T=%lld n_blocks=%lld BS=%lld H=%lld KH=%lld D=%lld", (long long)T,
                          (long long)n_blocks, (long long)BS, (long long)H, (long long)KH, (long long)D);
    if (H % KH != 0)
        return lf_err_set(err, LF_EINVAL, "attention_paged: H=%lld is not a multiple of KH=%lld", (long long)H,
                          (long long)KH);
    if (D % 2 != 0 || D > LF_CPU_MAX_HEAD_DIM)
        return lf_err_set(err, LF_EINVAL, "attention_paged: head dim D=%lld must be even and <= %d", (long long)D,
                          LF_CPU_MAX_HEAD_DIM);
    if (T > 0 && (n_blocks == 0 || !bt))
        return lf_err_set(err, LF_EINVAL, "attention_paged: %lld queries but an empty block table (n_blocks=%lld)",
                          (long long)T, (long long)n_blocks);
    const int64_t S = n_blocks * BS;
    int64_t clo = 0, chi = -1; /* blocks already checked; empty */
    for (int64_t t = 0; t < T; t++) {
        const int64_t p = pos[t];
        if (p < 0 || p >= S)
            return lf_err_set(err, LF_EINVAL,
                              "attention_paged: pos[%lld]=%lld is outside the sequence's slots [0, n_blocks*BS=%lld)",
                              (long long)t, (long long)p, (long long)S);
        const int64_t a = pa_lo(p, window) / BS, b = p / BS;
        lf_status st;
        if (chi < clo || b + 1 < clo || a > chi + 1) { /* disjoint from (and not adjacent to) the checked run */
            if ((st = pa_check_ids(bt, a, b, t, err)) != LF_OK) return st;
            clo = a, chi = b;
            continue;
        }
        if (a < clo && (st = pa_check_ids(bt, a, clo - 1, t, err)) != LF_OK) return st;
        if (b > chi && (st = pa_check_ids(bt, chi + 1, b, t, err)) != LF_OK) return st;
        if (a < clo) clo = a;
        if (b > chi) chi = b;
    }
    return LF_OK;
}

/* ==== reference ==== */

lf_status lf_cpu_attention_paged_forward_ref(float *out, const float *q, const float *kpool, const float *vpool,
                                             const int32_t *block_table, int64_t n_blocks, int64_t BS,
                                             const int32_t *pos, int64_t T, int64_t H, int64_t KH, int64_t D,
                                             int64_t window, float scale, lf_err *err) {
    lf_status st = lf_cpu_attention_paged_check(block_table, n_blocks, BS, pos, T, H, KH, D, window, err);
    if (st != LF_OK) return st;
    const int64_t group = H / KH;
    double acc[LF_CPU_MAX_HEAD_DIM];
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            const float *qv = q + (t * H + h) * D;
            const int64_t g = h / group, p = pos[t], lo = (window > 0 && p - window + 1 > 0) ? p - window + 1 : 0;
            double m = -INFINITY;
            for (int64_t j = lo; j <= p; j++) {
                const int64_t row = (int64_t)block_table[j / BS] * BS + j % BS;
                const float *kv = kpool + (row * KH + g) * D;
                double s = 0.0;
                for (int64_t d = 0; d < D; d++) s += (double)qv[d] * (double)kv[d];
                s *= (double)scale;
                if (s > m) m = s;
            }
            double l = 0.0;
            for (int64_t d = 0; d < D; d++) acc[d] = 0.0;
            for (int64_t j = lo; j <= p; j++) {
                const int64_t row = (int64_t)block_table[j / BS] * BS + j % BS;
                const float *kv = kpool + (row * KH + g) * D, *vv = vpool + (row * KH + g) * D;
                double s = 0.0;
                for (int64_t d = 0; d < D; d++) s += (double)qv[d] * (double)kv[d];
                double e = exp(s * (double)scale - m);
                l += e;
                for (int64_t d = 0; d < D; d++) acc[d] += e * (double)vv[d];
            }
            for (int64_t d = 0; d < D; d++) out[(t * H + h) * D + d] = (float)(acc[d] / l);
        }
    return LF_OK;
}

/* ==== fast path ==== */

typedef struct {
    float *out;
    const float *q, *k, *v;
    const int32_t *bt, *pos;
    int64_t BS, H, KH, D, window;
    float scale;
} pa_job;

/* Float offsets into kpool/vpool of the rows of kv head g for the n keys j0 .. j0+n-1. */
static inline void pa_offsets(const pa_job *J, int64_t j0, int64_t n, int64_t g, int64_t *off) {
    const int64_t BS = J->BS, KHD = J->KH * J->D;
    int64_t b = j0 / BS, s = j0 - b * BS;
    int64_t row = (int64_t)J->bt[b] * BS + s;
    const int64_t goff = g * J->D;
    for (int64_t jj = 0; jj < n; jj++) {
        off[jj] = row * KHD + goff;
        row++;
        if (++s == BS && jj + 1 < n) { /* next key is in the next block: read its id only then */
            s = 0;
            row = (int64_t)J->bt[++b] * BS;
        }
    }
}

#ifdef LF_CPU_X86
static LF_CPU_AVX2 void pa_item_avx2(const pa_job *J, int64_t t, int64_t h) {
    const int64_t D = J->D, g = h / (J->H / J->KH), p = J->pos[t], lo = pa_lo(p, J->window);
    const int64_t D8 = D & ~(int64_t)7;
    const float *qv = J->q + (t * J->H + h) * D;
    float acc[LF_CPU_MAX_HEAD_DIM] __attribute__((aligned(32)));
    float sc[ATT_BK] __attribute__((aligned(32)));
    int64_t off[ATT_BK];
    for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int64_t j0 = lo; j0 <= p; j0 += ATT_BK) {
        const int64_t n = (p + 1 - j0) < ATT_BK ? (p + 1 - j0) : ATT_BK;
        pa_offsets(J, j0, n, g, off);
        float bm = -INFINITY;
        for (int64_t jj = 0; jj < n; jj++) {
            const float *kv = J->k + off[jj];
            float s = lf_cpu_att_dot(qv, kv, D, D8) * J->scale;
            sc[jj] = s;
            if (s > bm) bm = s;
        }
        /* rescale what was accumulated under the old max, then exponentiate the chunk's scores */
        lf_cpu_att_rescale(acc, D, D8, &m, &l, bm);
        lf_cpu_att_exp_shift(sc, n, m);
        for (int64_t jj = 0; jj < n; jj++) {
            const float e = sc[jj];
            const float *vv = J->v + off[jj];
            const __m256 ev = _mm256_set1_ps(e);
            l += e;
            int64_t d = 0;
            for (; d < D8; d += 8)
                _mm256_store_ps(acc + d, _mm256_fmadd_ps(ev, _mm256_loadu_ps(vv + d), _mm256_load_ps(acc + d)));
            for (; d < D; d++) acc[d] += e * vv[d];
        }
    }
    float *o = J->out + (t * J->H + h) * D;
    const float inv = 1.0f / l;
    for (int64_t d = 0; d < D; d++) o[d] = acc[d] * inv;
}
#endif

static void pa_item_port(const pa_job *J, int64_t t, int64_t h) {
    const int64_t D = J->D, g = h / (J->H / J->KH), p = J->pos[t], lo = pa_lo(p, J->window);
    const float *qv = J->q + (t * J->H + h) * D;
    float acc[LF_CPU_MAX_HEAD_DIM], sc[ATT_BK];
    int64_t off[ATT_BK];
    for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int64_t j0 = lo; j0 <= p; j0 += ATT_BK) {
        const int64_t n = (p + 1 - j0) < ATT_BK ? (p + 1 - j0) : ATT_BK;
        pa_offsets(J, j0, n, g, off);
        float bm = -INFINITY;
        for (int64_t jj = 0; jj < n; jj++) {
            const float *kv = J->k + off[jj];
            float s4[4] = {0};
            int64_t d = 0;
            for (; d + 4 <= D; d += 4)
                for (int i = 0; i < 4; i++) s4[i] += qv[d + i] * kv[d + i];
            float s = (s4[0] + s4[1]) + (s4[2] + s4[3]);
            for (; d < D; d++) s += qv[d] * kv[d];
            s *= J->scale;
            sc[jj] = s;
            if (s > bm) bm = s;
        }
        if (bm > m) {
            float corr = expf(m - bm);
            for (int64_t d = 0; d < D; d++) acc[d] *= corr;
            l *= corr;
            m = bm;
        }
        for (int64_t jj = 0; jj < n; jj++) {
            const float e = expf(sc[jj] - m);
            const float *vv = J->v + off[jj];
            l += e;
            for (int64_t d = 0; d < D; d++) acc[d] += e * vv[d];
        }
    }
    float *o = J->out + (t * J->H + h) * D;
    const float inv = 1.0f / l;
    for (int64_t d = 0; d < D; d++) o[d] = acc[d] * inv;
}

typedef struct {
    const pa_job *job;
    int simd;
} pa_run;

static void pa_chunk(void *vrun, int64_t b, int64_t e, int tid) {
    (void)tid;
    const pa_run *r = (const pa_run *)vrun;
    for (int64_t it = b; it < e; it++) {
        int64_t t = it / r->job->H, h = it % r->job->H;
#ifdef LF_CPU_X86
        if (r->simd) {
            pa_item_avx2(r->job, t, h);
            continue;
        }
#endif
        pa_item_port(r->job, t, h);
    }
}

lf_status lf_cpu_attention_paged_forward(lf_backend *be, float *out, const float *q, const float *kpool,
                                         const float *vpool, const int32_t *block_table, int64_t n_blocks,
                                         int64_t BS, const int32_t *pos, int64_t T, int64_t H, int64_t KH,
                                         int64_t D, int64_t window, float scale) {
    lf_status st = lf_cpu_attention_paged_check(block_table, n_blocks, BS, pos, T, H, KH, D, window, &be->err);
    if (st != LF_OK) return st;
    if (T == 0) return LF_OK;
    pa_job job = {.out = out,
                  .q = q,
                  .k = kpool,
                  .v = vpool,
                  .bt = block_table,
                  .pos = pos,
                  .BS = BS,
                  .H = H,
                  .KH = KH,
                  .D = D,
                  .window = window,
                  .scale = scale};
    pa_run run = {.job = &job, .simd = lf_cpu_simd()};
    int64_t S = n_blocks * BS, span = (window > 0 && window < S) ? window : S; /* keys per query, at most */
    lf_cpu_parallel_for(be, T * H, lf_cpu_grain(span * D * 4, 1 << 15), pa_chunk, &run);
    return LF_OK;
}
