/* typed.c - the CPU op table's typed entries (kernels/backend.h): each takes lf_act activations (F32, BF16,
 * F16), sends an all-f32 call to the fast f32 kernel of its family (embedding.c, rmsnorm.c, matmul.c, ...)
 * and any other dtype combination to a plain typed reference written here.
 *
 * The typed references are the spec every other backend's bf16/f16 result is compared with (tests/unit/
 * test_backend_ops.c): every input element is widened to f32, sums run in double (attention: an online
 * softmax in double), and each output element is rounded once to its dtype (round to nearest even). They
 * check their arguments with the f32 path's own checks, so a bad call fails the same way in every dtype.
 * Speed is not their goal: matmul and attention are threaded over rows on the backend's pool, the rest are
 * single loops. In-place use (out == inp) is allowed where backend.h allows it, with the same dtype. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_paged.h"
#include "quant/quant.h"
#include "quant/quant_block.h"

/* ---- element access ---- */
static inline float ld(lf_act a, int64_t i) {
    switch (a.dt) {
    case LF_DTYPE_BF16: return lf_bf16_to_f32(((const uint16_t *)a.p)[i]);
    case LF_DTYPE_F16: return lf_f16_to_f32(((const uint16_t *)a.p)[i]);
    default: return ((const float *)a.p)[i];
    }
}

static inline void st(lf_act a, int64_t i, float v) {
    switch (a.dt) {
    case LF_DTYPE_BF16: ((uint16_t *)a.p)[i] = lf_f32_to_bf16(v); break;
    case LF_DTYPE_F16: ((uint16_t *)a.p)[i] = lf_f32_to_f16(v); break;
    default: ((float *)a.p)[i] = v; break;
    }
}

static inline float ldt(const lf_tensor *w, int64_t i) { /* a weight element (F32/BF16/F16) */
    switch (w->dtype) {
    case LF_DTYPE_BF16: return lf_bf16_to_f32(((const uint16_t *)w->data)[i]);
    case LF_DTYPE_F16: return lf_f16_to_f32(((const uint16_t *)w->data)[i]);
    default: return ((const float *)w->data)[i];
    }
}

/* 1 when every activation is f32 (the fast path); LF_EUNSUPPORTED into be->err for a non-activation dtype. */
static int all_f32(const lf_act *a, int n) {
    for (int i = 0; i < n; i++)
        if (a[i].dt != LF_DTYPE_F32) return 0;
    return 1;
}

static lf_status check_dt(lf_backend *be, const char *op, const lf_act *a, int n) {
    for (int i = 0; i < n; i++)
        if (!lf_act_dtype_ok(a[i].dt))
            return lf_err_set(&be->err, LF_EUNSUPPORTED, "%s: activation %d has dtype %s (F32, BF16 or F16)", op, i,
                              lf_dtype_name(a[i].dt));
    return LF_OK;
}

static int overlap(lf_act a, int64_t na, lf_act b, int64_t nb) {
    const char *pa = (const char *)a.p, *pb = (const char *)b.p;
    size_t ba = lf_act_bytes(a.dt, na), bb = lf_act_bytes(b.dt, nb);
    return ba && bb && pa < pb + bb && pb < pa + ba;
}

/* ---- embedding ---- */
lf_status lf_cpu_op_embedding(lf_backend *be, lf_act out, const int32_t *tokens, const lf_tensor *wte, int64_t T) {
    lf_status s = check_dt(be, "embedding", &out, 1);
    if (s) return s;
    if (out.dt == LF_DTYPE_F32) return lf_cpu_embedding_forward(be, (float *)out.p, tokens, wte, T);
    if ((s = lf_cpu_embedding_check(tokens, wte, T, &be->err))) return s;
    const int64_t C = wte->shape[1];
    for (int64_t t = 0; t < T; t++) {
        const int64_t row = (int64_t)tokens[t] * C;
        if (wte->dtype == out.dt) /* same 16-bit type: a copy */
            memcpy((uint16_t *)out.p + t * C, (const uint16_t *)wte->data + row, (size_t)C * 2);
        else
            for (int64_t c = 0; c < C; c++) st(out, t * C + c, ldt(wte, row + c));
    }
    return LF_OK;
}

/* ---- rmsnorm ---- */
lf_status lf_cpu_op_rmsnorm(lf_backend *be, lf_act out, lf_act inp, const float *weight, int64_t T, int64_t C,
                           float eps) {
    lf_act a[2] = {out, inp};
    lf_status s = check_dt(be, "rmsnorm", a, 2);
    if (s) return s;
    if (all_f32(a, 2)) return lf_cpu_rmsnorm_forward(be, (float *)out.p, (const float *)inp.p, weight, T, C, eps);
    if (T < 0 || C < 1) return lf_err_set(&be->err, LF_EINVAL, "rmsnorm: bad size T=%lld C=%lld", (long long)T, (long long)C);
    for (int64_t t = 0; t < T; t++) {
        double ss = 0.0;
        for (int64_t c = 0; c < C; c++) {
            double x = ld(inp, t * C + c);
            ss += x * x;
        }
        const float r = 1.0f / sqrtf((float)(ss / (double)C) + eps);
        for (int64_t c = 0; c < C; c++) st(out, t * C + c, weight[c] * (ld(inp, t * C + c) * r));
    }
    return LF_OK;
}

/* ---- matmul (dense and 4-bit) ---- */
typedef struct {
    lf_act out, inp;
    const lf_tensor *w;
    const lf_quant_state *q;
    const float *codes; /* 4-bit code table */
    const float *bias;
    int64_t C, OC;
} mm_job;

static void mm_rows(void *vj, int64_t b, int64_t e, int tid) {
    (void)tid;
    const mm_job *j = (const mm_job *)vj;
    const int64_t C = j->C, OC = j->OC;
    for (int64_t it = b; it < e; it++) { /* it = t * OC + o */
        const int64_t t = it / OC, o = it % OC;
        double acc = 0.0;
        if (j->q) {
            const int64_t B = j->q->blocksize, base = o * C;
            for (int64_t c = 0; c < C; c++) {
                const int64_t ei = base + c;
                const float w = j->codes[LF_QUANT_NIBBLE(j->q->packed, ei)] * lf_quant_state_absmax(j->q, ei / B);
                acc += (double)w * (double)ld(j->inp, t * C + c);
            }
        } else {
            for (int64_t c = 0; c < C; c++) acc += (double)ldt(j->w, o * C + c) * (double)ld(j->inp, t * C + c);
        }
        if (j->bias) acc += j->bias[o];
        st(j->out, it, (float)acc);
    }
}

lf_status lf_cpu_op_matmul(lf_backend *be, lf_act out, lf_act inp, const lf_tensor *weight, const float *bias,
                          int64_t T, int64_t C, int64_t OC) {
    lf_act a[2] = {out, inp};
    lf_status s = check_dt(be, "matmul", a, 2);
    if (s) return s;
    if (all_f32(a, 2))
        return lf_cpu_matmul_forward(be, (float *)out.p, (const float *)inp.p, weight, bias, T, C, OC);
    if ((s = lf_cpu_matmul_check(weight, T, C, OC, &be->err))) return s;
    if (overlap(out, T * OC, inp, T * C)) return lf_err_set(&be->err, LF_EINVAL, "matmul: out must not alias inp");
    if (T == 0 || OC == 0) return LF_OK;
    mm_job j = {.out = out, .inp = inp, .w = weight, .bias = bias, .C = C, .OC = OC};
    lf_cpu_parallel_for(be, T * OC, lf_cpu_grain(C, 1 << 15), mm_rows, &j);
    return LF_OK;
}

lf_status lf_cpu_op_matmul_q4(lf_backend *be, lf_act out, lf_act inp, const lf_quant_state *w, const float *bias,
                             int64_t T, int64_t C, int64_t OC) {
    lf_act a[2] = {out, inp};
    lf_status s = check_dt(be, "matmul_q4", a, 2);
    if (s) return s;
    if (all_f32(a, 2))
        return lf_cpu_matmul_q4_forward(be, (float *)out.p, (const float *)inp.p, w, bias, T, C, OC);
    if (T < 0 || C < 0 || OC < 0)
        return lf_err_set(&be->err, LF_EINVAL, "matmul_q4_forward: negative size T=%lld C=%lld OC=%lld", (long long)T,
                          (long long)C, (long long)OC);
    if (!w || !w->packed) return lf_err_set(&be->err, LF_EINVAL, "matmul_q4_forward: the 4-bit weight is NULL or empty");
    if (w->rows != OC || w->cols != C)
        return lf_err_set(&be->err, LF_EINVAL, "matmul_q4_forward: 4-bit weight is [%lld, %lld], want [OC=%lld, C=%lld]",
                          (long long)w->rows, (long long)w->cols, (long long)OC, (long long)C);
    if (overlap(out, T * OC, inp, T * C))
        return lf_err_set(&be->err, LF_EINVAL, "matmul_q4_forward: out must not alias inp");
    if (T == 0 || OC == 0) return LF_OK;
    mm_job j = {.out = out, .inp = inp, .q = w, .codes = lf_quant_code_table(w->type), .bias = bias, .C = C, .OC = OC};
    lf_cpu_parallel_for(be, T * OC, lf_cpu_grain(C * 2, 1 << 15), mm_rows, &j);
    return LF_OK;
}

/* ---- rope ---- */
lf_status lf_cpu_op_rope(lf_backend *be, lf_act x, const int32_t *pos, const float *inv_freq, int64_t T, int64_t NH,
                        int64_t D) {
    lf_status s = check_dt(be, "rope", &x, 1);
    if (s) return s;
    if (x.dt == LF_DTYPE_F32) return lf_cpu_rope_forward(be, (float *)x.p, pos, inv_freq, T, NH, D);
    if (T < 0 || NH < 1 || D < 2 || D % 2 != 0 || D > LF_CPU_MAX_HEAD_DIM)
        return lf_err_set(&be->err, LF_EINVAL, "rope: bad size T=%lld NH=%lld D=%lld (D must be even, 2..%d)",
                          (long long)T, (long long)NH, (long long)D, LF_CPU_MAX_HEAD_DIM);
    const int64_t half = D / 2;
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < half; i++) { /* the f32 path's arithmetic (rope.c), on widened elements */
            const float ang = (float)pos[t] * inv_freq[i], c = cosf(ang), sn = sinf(ang);
            for (int64_t h = 0; h < NH; h++) {
                const int64_t b = (t * NH + h) * D;
                const float x0 = ld(x, b + i), x1 = ld(x, b + i + half);
                st(x, b + i, x0 * c - x1 * sn);
                st(x, b + i + half, x1 * c + x0 * sn);
            }
        }
    return LF_OK;
}

/* ---- attention (contiguous and paged): one online softmax in double per (t, h) ---- */
typedef struct {
    lf_act out, q, k, v;
    const int32_t *pos, *bt; /* bt NULL: contiguous rows j */
    int64_t BS, H, KH, D, window;
    float scale;
} att_job;

static void att_rows(void *vj, int64_t b, int64_t e, int tid) {
    (void)tid;
    const att_job *j = (const att_job *)vj;
    const int64_t H = j->H, KH = j->KH, D = j->D, group = H / KH;
    double acc[LF_CPU_MAX_HEAD_DIM];
    for (int64_t it = b; it < e; it++) {
        const int64_t t = it / H, h = it % H, g = h / group, p = j->pos[t];
        const int64_t lo = (j->window > 0 && p - j->window + 1 > 0) ? p - j->window + 1 : 0;
        double m = -INFINITY, l = 0.0;
        for (int64_t d = 0; d < D; d++) acc[d] = 0.0;
        for (int64_t pj = lo; pj <= p; pj++) {
            const int64_t row = j->bt ? (int64_t)j->bt[pj / j->BS] * j->BS + pj % j->BS : pj;
            const int64_t kb = (row * KH + g) * D, qb = (t * H + h) * D;
            double sc = 0.0;
            for (int64_t d = 0; d < D; d++) sc += (double)ld(j->q, qb + d) * (double)ld(j->k, kb + d);
            sc *= (double)j->scale;
            if (sc > m) {
                const double corr = exp(m - sc); /* 0 when m = -inf */
                for (int64_t d = 0; d < D; d++) acc[d] *= corr;
                l *= corr;
                m = sc;
            }
            const double w = exp(sc - m);
            l += w;
            for (int64_t d = 0; d < D; d++) acc[d] += w * (double)ld(j->v, kb + d);
        }
        for (int64_t d = 0; d < D; d++) st(j->out, (t * H + h) * D + d, (float)(acc[d] / l));
    }
}

lf_status lf_cpu_op_attention(lf_backend *be, lf_act out, lf_act q, lf_act k, lf_act v, const int32_t *pos, int64_t T,
                             int64_t S, int64_t H, int64_t KH, int64_t D, int64_t window, float scale) {
    lf_act a[4] = {out, q, k, v};
    lf_status s = check_dt(be, "attention", a, 4);
    if (s) return s;
    if (all_f32(a, 4))
        return lf_cpu_attention_forward(be, (float *)out.p, (const float *)q.p, (const float *)k.p, (const float *)v.p,
                                        pos, T, S, H, KH, D, window, scale);
    if ((s = lf_cpu_attention_check(pos, T, S, H, KH, D, &be->err))) return s;
    att_job j = {.out = out, .q = q, .k = k, .v = v, .pos = pos, .H = H, .KH = KH, .D = D, .window = window,
                 .scale = scale};
    lf_cpu_parallel_for(be, T * H, lf_cpu_grain(S * D, 1 << 15), att_rows, &j);
    return LF_OK;
}

lf_status lf_cpu_op_attention_paged(lf_backend *be, lf_act out, lf_act q, lf_act kpool, lf_act vpool,
                                   const int32_t *block_table, int64_t n_blocks, int64_t BS, const int32_t *pos,
                                   int64_t T, int64_t H, int64_t KH, int64_t D, int64_t window, float scale) {
    lf_act a[4] = {out, q, kpool, vpool};
    lf_status s = check_dt(be, "attention_paged", a, 4);
    if (s) return s;
    if (all_f32(a, 4))
        return lf_cpu_attention_paged_forward(be, (float *)out.p, (const float *)q.p, (const float *)kpool.p,
                                              (const float *)vpool.p, block_table, n_blocks, BS, pos, T, H, KH, D,
                                              window, scale);
    if ((s = lf_cpu_attention_paged_check(block_table, n_blocks, BS, pos, T, H, KH, D, window, &be->err))) return s;
    if (T == 0) return LF_OK;
    att_job j = {.out = out, .q = q, .k = kpool, .v = vpool, .pos = pos, .bt = block_table, .BS = BS, .H = H,
                 .KH = KH, .D = D, .window = window, .scale = scale};
    lf_cpu_parallel_for(be, T * H, lf_cpu_grain(n_blocks * BS * D, 1 << 15), att_rows, &j);
    return LF_OK;
}

/* ---- elementwise ---- */
static lf_status bad_n(lf_backend *be, const char *op, int64_t N) {
    return lf_err_set(&be->err, LF_EINVAL, "%s: negative N=%lld", op, (long long)N);
}

lf_status lf_cpu_op_swiglu(lf_backend *be, lf_act out, lf_act gate, lf_act up, int64_t N) {
    lf_act a[3] = {out, gate, up};
    lf_status s = check_dt(be, "swiglu", a, 3);
    if (s) return s;
    if (all_f32(a, 3)) return lf_cpu_swiglu_forward(be, (float *)out.p, (const float *)gate.p, (const float *)up.p, N);
    if (N < 0) return bad_n(be, "swiglu", N);
    for (int64_t i = 0; i < N; i++) {
        const double g = ld(gate, i);
        st(out, i, (float)(g / (1.0 + exp(-g)) * (double)ld(up, i)));
    }
    return LF_OK;
}

lf_status lf_cpu_op_residual(lf_backend *be, lf_act out, lf_act x, lf_act y, int64_t N) {
    lf_act a[3] = {out, x, y};
    lf_status s = check_dt(be, "residual", a, 3);
    if (s) return s;
    if (all_f32(a, 3)) return lf_cpu_residual_forward(be, (float *)out.p, (const float *)x.p, (const float *)y.p, N);
    if (N < 0) return bad_n(be, "residual", N);
    for (int64_t i = 0; i < N; i++) st(out, i, ld(x, i) + ld(y, i));
    return LF_OK;
}

lf_status lf_cpu_op_add_scaled(lf_backend *be, lf_act y, lf_act x, float alpha, int64_t N) {
    lf_act a[2] = {y, x};
    lf_status s = check_dt(be, "add_scaled", a, 2);
    if (s) return s;
    if (all_f32(a, 2)) return lf_cpu_axpy(be, (float *)y.p, (const float *)x.p, alpha, N);
    if (N < 0) return bad_n(be, "add_scaled", N);
    for (int64_t i = 0; i < N; i++) st(y, i, ld(y, i) + alpha * ld(x, i));
    return LF_OK;
}

lf_status lf_cpu_op_softmax(lf_backend *be, lf_act out, lf_act inp, int64_t R, int64_t V) {
    lf_act a[2] = {out, inp};
    lf_status s = check_dt(be, "softmax", a, 2);
    if (s) return s;
    if (all_f32(a, 2)) return lf_cpu_softmax_forward(be, (float *)out.p, (const float *)inp.p, R, V);
    if (R < 0 || V < 1) return lf_err_set(&be->err, LF_EINVAL, "softmax: bad size R=%lld V=%lld", (long long)R, (long long)V);
    for (int64_t r = 0; r < R; r++) {
        double m = -INFINITY, sum = 0.0;
        for (int64_t i = 0; i < V; i++) m = fmax(m, (double)ld(inp, r * V + i));
        for (int64_t i = 0; i < V; i++) sum += exp((double)ld(inp, r * V + i) - m);
        for (int64_t i = 0; i < V; i++) st(out, r * V + i, (float)(exp((double)ld(inp, r * V + i) - m) / sum));
    }
    return LF_OK;
}

/* DoRA combine: no fast f32 kernel of its own; this loop is the op on the CPU for every dtype. */
lf_status lf_cpu_op_dora_combine(lf_backend *be, lf_act out, lf_act lo, const float *mag, const float *wn,
                                const float *bias, float scale, int64_t T, int64_t OC) {
    lf_act a[2] = {out, lo};
    lf_status s = check_dt(be, "dora_combine", a, 2);
    if (s) return s;
    if (T < 0 || OC < 0)
        return lf_err_set(&be->err, LF_EINVAL, "dora_combine: negative size T=%lld OC=%lld", (long long)T, (long long)OC);
    if ((T && OC) && (!mag || !wn)) return lf_err_set(&be->err, LF_EINVAL, "dora_combine: magnitude or norm is NULL");
    for (int64_t t = 0; t < T; t++)
        for (int64_t o = 0; o < OC; o++) {
            const float mns = mag[o] / wn[o], y = ld(out, t * OC + o), bnb = y - (bias ? bias[o] : 0.0f);
            st(out, t * OC + o, y + ((mns - 1.0f) * bnb + mns * scale * ld(lo, t * OC + o)));
        }
    return LF_OK;
}

lf_status lf_cpu_op_convert(lf_backend *be, lf_act dst, lf_act src, int64_t N) {
    lf_act a[2] = {dst, src};
    lf_status s = check_dt(be, "convert", a, 2);
    if (s) return s;
    if (N < 0) return bad_n(be, "convert", N);
    if (dst.p == src.p && dst.dt == src.dt) return LF_OK;
    if (overlap(dst, N, src, N)) return lf_err_set(&be->err, LF_EINVAL, "convert: dst overlaps src");
    if (dst.dt == src.dt) {
        memcpy(dst.p, src.p, lf_act_bytes(dst.dt, N));
        return LF_OK;
    }
    if (src.dt == LF_DTYPE_F32 && dst.dt == LF_DTYPE_BF16) {
        lf_f32_to_bf16_n((uint16_t *)dst.p, (const float *)src.p, N);
        return LF_OK;
    }
    if (dst.dt == LF_DTYPE_F32) return lf_to_f32_n((float *)dst.p, src.p, src.dt, N, &be->err);
    for (int64_t i = 0; i < N; i++) st(dst, i, ld(src, i));
    return LF_OK;
}

int lf_cpu_op_supports(const lf_backend *be, lf_op op, const lf_dtype *dt, int n) {
    (void)be;
    if ((int)op < 0 || op >= LF_OP_COUNT || n != lf_op_n_act(op)) return 0;
    for (int i = 0; i < n; i++)
        if (!lf_act_dtype_ok(dt[i])) return 0;
    return 1;
}
