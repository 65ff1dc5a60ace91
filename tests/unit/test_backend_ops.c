/* test_backend_ops.c - the table-driven op test (ggml's test-backend-ops): every inference op of
 * kernels/backend.h x every activation dtype x shapes (ragged sizes, GQA, windows, packed decode positions,
 * paged tables with BS 1 and 16, in-place use), each run through the op table and compared by NMSE.
 *
 * Two comparisons per case:
 *   cpu  : the CPU backend with BF16/F16 activations against the CPU backend with F32 activations on the SAME
 *          inputs (each input rounded to its dtype first, so both see identical values). The typed reference
 *          widens every element, sums in double and rounds each output element once, so the only difference
 *          is that rounding: |err| <= u |y| per element, hence NMSE <= u^2 (bf16 u = 2^-8, f16 u = 2^-11).
 *          The tolerance is 1.1 u^2 (the 10% covers the f32 path's own ~1e-7 relative sums). Cases whose
 *          output is F32 (the lm_head's f32 logits from bf16 rows) differ only in summation order: 1e-10.
 *          All-F32 cases are the fast path itself (checked against its scalar refs by test_cpu_ops): skipped here.
 *   gpu  : with --gpu (ctest label gpu), every case also runs on the CUDA backend in the same dtype and is
 *          compared with the CPU result of that dtype. Both round once, possibly to neighbouring values, and the
 *          GPU sums in f32: tolerance 4 u^2 (two ulps), 1e-9 for f32 outputs (no TF32). An op x dtype the CUDA
 *          backend does not support (supports_op) is listed as unsupported, not failed. Without a device the
 *          gpu run prints why and exits 77 (ctest: skipped). Without --gpu the same second comparison runs on
 *          the checked CPU backend (device-style memory: every argument must be its own allocation), which must
 *          match the CPU exactly in every case, and a host pointer handed to it must be refused.
 * Random inputs from LF_TEST_SEED or the clock (printed). Last line: "N passed, M failed"; exit 1 on failure. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/tensor.h"
#include "kernels/backend.h"
#include "kernels/quant_upload.h"
#include "quant/quant.h"

static uint64_t rng_state;
static uint64_t rng_u64(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float unif(float lo, float hi) { return lo + (hi - lo) * (float)((rng_u64() >> 40) * (1.0 / 16777216.0)); }
static int64_t rnd(int64_t n) { return (int64_t)(rng_u64() % (uint64_t)n); }

static int n_pass, n_fail, n_unsup;

static void *xmalloc(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        fprintf(stderr, "test_backend_ops: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* value as stored in dtype dt */
static float round_to(float v, lf_dtype dt) {
    if (dt == LF_DTYPE_BF16) return lf_bf16_to_f32(lf_f32_to_bf16(v));
    if (dt == LF_DTYPE_F16) return lf_f16_to_f32(lf_f32_to_f16(v));
    return v;
}

/* ---- buffers on a backend (freed together after each run) ---- */
#define MAX_BUFS 16
typedef struct {
    lf_backend *be;
    void *p[MAX_BUFS];
    int n;
    lf_quant_state q;
    int has_q;
} run_ctx;

static void *dev_bytes(run_ctx *r, const void *host, size_t nbytes) {
    void *d = r->be->ops->alloc(r->be, nbytes ? nbytes : 4);
    if (!d || r->n >= MAX_BUFS) {
        fprintf(stderr, "test_backend_ops: alloc of %zu bytes on %s failed: %s\n", nbytes, r->be->name, r->be->err.msg);
        exit(1);
    }
    r->p[r->n++] = d;
    if (host && nbytes && r->be->ops->upload(r->be, d, host, nbytes)) {
        fprintf(stderr, "test_backend_ops: upload failed: %s\n", r->be->err.msg);
        exit(1);
    }
    return d;
}

/* an activation of n elements of dtype dt holding host (f32 values, already representable in dt) */
static lf_act dev_act(run_ctx *r, const float *host, int64_t n, lf_dtype dt) {
    void *tmp = xmalloc(lf_act_bytes(dt, n));
    for (int64_t i = 0; i < n; i++) {
        if (dt == LF_DTYPE_BF16) ((uint16_t *)tmp)[i] = lf_f32_to_bf16(host[i]);
        else if (dt == LF_DTYPE_F16) ((uint16_t *)tmp)[i] = lf_f32_to_f16(host[i]);
        else ((float *)tmp)[i] = host[i];
    }
    void *d = dev_bytes(r, tmp, lf_act_bytes(dt, n));
    free(tmp);
    return lf_act_of(d, dt);
}

static void read_act(run_ctx *r, lf_act a, int64_t n, float *out) {
    void *tmp = xmalloc(lf_act_bytes(a.dt, n));
    if (r->be->ops->download(r->be, tmp, a.p, lf_act_bytes(a.dt, n))) {
        fprintf(stderr, "test_backend_ops: download failed: %s\n", r->be->err.msg);
        exit(1);
    }
    lf_err err;
    if (lf_to_f32_n(out, tmp, a.dt, n, &err)) exit(1);
    free(tmp);
}

static void run_free(run_ctx *r) {
    for (int i = 0; i < r->n; i++) r->be->ops->free(r->be, r->p[i]);
    if (r->has_q) lf_quant_state_release(r->be, &r->q);
    r->n = 0;
    r->has_q = 0;
}

/* ---- cases ---- */
typedef struct {
    const char *name;
    lf_op op;
    int64_t T, C, OC, H, KH, D, S, window, BS, V;
    int inplace;
} op_case;

/* Host inputs of one case, generated once, rounded to the dtypes of the run being compared. */
typedef struct {
    float *a, *b, *c, *d;         /* up to four activation inputs (op-specific) */
    float *w;                     /* dense weight [OC, C] (stored BF16) or wte [V, C] */
    float *vec1, *vec2, *vec3;    /* f32 vectors: norm weight / bias / inv_freq / mag / wn */
    int32_t *tok, *pos, *table;
    lf_quant_state q;             /* host 4-bit weight */
    int64_t n_out, NB;
} inputs;

static float *randv(int64_t n, float lo, float hi) {
    float *x = xmalloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) x[i] = unif(lo, hi);
    return x;
}

/* Sizes of the activation arguments of a case, in lf_act order (ins[0] is the output or in/out). */
static int act_sizes(const op_case *k, int64_t *n) {
    const int64_t T = k->T, C = k->C, OC = k->OC, H = k->H, KH = k->KH, D = k->D;
    switch (k->op) {
    case LF_OP_EMBEDDING: n[0] = T * C; return 1;
    case LF_OP_RMSNORM: n[0] = n[1] = T * C; return 2;
    case LF_OP_MATMUL:
    case LF_OP_MATMUL_Q4: n[0] = T * OC, n[1] = T * C; return 2;
    case LF_OP_ROPE: n[0] = T * H * D; return 1;
    case LF_OP_ATTENTION: n[0] = n[1] = T * H * D, n[2] = n[3] = k->S * KH * D; return 4;
    case LF_OP_ATTENTION_PAGED: n[0] = n[1] = T * H * D, n[2] = n[3] = 0 /* set from NB */; return 4;
    case LF_OP_SWIGLU:
    case LF_OP_RESIDUAL: n[0] = n[1] = n[2] = T * C; return 3;
    case LF_OP_SOFTMAX: n[0] = n[1] = T * k->V; return 2;
    case LF_OP_ADD_SCALED:
    case LF_OP_CONVERT: n[0] = n[1] = T * C; return 2;
    case LF_OP_DORA_COMBINE: n[0] = n[1] = T * OC; return 2;
    default: return 0;
    }
}

static void make_inputs(const op_case *k, inputs *in) {
    memset(in, 0, sizeof *in);
    const int64_t T = k->T, C = k->C, OC = k->OC, H = k->H, KH = k->KH, D = k->D;
    int64_t n[4];
    int na = act_sizes(k, n);
    switch (k->op) {
    case LF_OP_EMBEDDING:
        in->w = randv(k->V * C, -1, 1);
        in->tok = xmalloc((size_t)T * 4);
        for (int64_t t = 0; t < T; t++) in->tok[t] = (int32_t)rnd(k->V);
        break;
    case LF_OP_RMSNORM: in->vec1 = randv(C, 0.5f, 1.5f); break;
    case LF_OP_MATMUL: in->w = randv(OC * C, -0.5f, 0.5f); in->vec1 = randv(OC, -0.1f, 0.1f); break;
    case LF_OP_MATMUL_Q4: {
        float *w = randv(OC * C, -0.5f, 0.5f);
        lf_err err;
        if (lf_quant_quantize(&in->q, w, LF_DTYPE_F32, OC, C, 64, LF_QUANT_NF4, 1, &err)) {
            fprintf(stderr, "quantize: %s\n", err.msg);
            exit(1);
        }
        free(w);
        in->vec1 = randv(OC, -0.1f, 0.1f);
        break;
    }
    case LF_OP_ROPE:
        in->pos = xmalloc((size_t)T * 4);
        for (int64_t t = 0; t < T; t++) in->pos[t] = (int32_t)rnd(4096);
        in->vec1 = xmalloc((size_t)(D / 2) * 4);
        for (int64_t i = 0; i < D / 2; i++) in->vec1[i] = powf(10000.0f, -2.0f * (float)i / (float)D);
        break;
    case LF_OP_ATTENTION:
        in->pos = xmalloc((size_t)T * 4);
        for (int64_t t = 0; t < T; t++) in->pos[t] = (int32_t)(k->S - T + t); /* the last T positions */
        break;
    case LF_OP_ATTENTION_PAGED: {
        const int64_t S = k->S, nblk = (S + k->BS - 1) / k->BS;
        in->NB = nblk + 3; /* a few blocks no table names */
        n[2] = n[3] = in->NB * k->BS * KH * D;
        in->table = xmalloc((size_t)nblk * 4);
        int32_t *perm = xmalloc((size_t)in->NB * 4);
        for (int64_t i = 0; i < in->NB; i++) perm[i] = (int32_t)i;
        for (int64_t i = in->NB - 1; i > 0; i--) {
            int64_t j = rnd(i + 1);
            int32_t t = perm[i];
            perm[i] = perm[j], perm[j] = t;
        }
        memcpy(in->table, perm, (size_t)nblk * 4);
        free(perm);
        in->pos = xmalloc((size_t)T * 4);
        for (int64_t t = 0; t < T; t++) in->pos[t] = (int32_t)(S - T + t);
        break;
    }
    case LF_OP_DORA_COMBINE:
        in->vec1 = randv(OC, 0.5f, 1.5f); /* mag */
        in->vec2 = randv(OC, 0.5f, 1.5f); /* wn */
        in->vec3 = randv(OC, -0.1f, 0.1f); /* bias */
        break;
    default: break;
    }
    float **slot[4] = {&in->a, &in->b, &in->c, &in->d};
    for (int i = 0; i < na; i++) *slot[i] = randv(n[i] ? n[i] : 1, -2, 2);
    in->n_out = n[0];
    (void)H;
}

static void free_inputs(inputs *in) {
    free(in->a), free(in->b), free(in->c), free(in->d), free(in->w);
    free(in->vec1), free(in->vec2), free(in->vec3), free(in->tok), free(in->pos), free(in->table);
    lf_quant_state_free(&in->q);
}

/* Runs case k on be with activation dtypes dt[]; inputs already rounded to dt. out: the result [n_out] f32.
 * Returns the op's status (message in be->err). */
static lf_status run(lf_backend *be, const op_case *k, const inputs *in, const lf_dtype *dt, float *out) {
    run_ctx r = {.be = be};
    const int64_t T = k->T, C = k->C, OC = k->OC, H = k->H, KH = k->KH, D = k->D;
    const lf_backend_ops *o = be->ops;
    int64_t n[4];
    act_sizes(k, n);
    if (k->op == LF_OP_ATTENTION_PAGED) n[2] = n[3] = in->NB * k->BS * KH * D;
    lf_act x[4];
    const float *src[4] = {in->a, in->b, in->c, in->d};
    int na = lf_op_n_act(k->op);
    for (int i = 0; i < na; i++) x[i] = dev_act(&r, src[i], n[i], dt[i]);
    if (k->inplace) x[0] = x[1];  /* out aliases the first input (same dtype: the case list makes sure) */
    lf_status st = LF_OK;
    float *v1 = in->vec1 ? dev_bytes(&r, in->vec1, (size_t)(k->op == LF_OP_RMSNORM ? C : k->op == LF_OP_ROPE ? D / 2 : OC) * 4) : NULL;
    switch (k->op) {
    case LF_OP_EMBEDDING: {
        int64_t sh[2] = {k->V, C};
        uint16_t *wb = xmalloc((size_t)(k->V * C) * 2);
        lf_f32_to_bf16_n(wb, in->w, k->V * C);
        lf_tensor w = lf_tensor_view(dev_bytes(&r, wb, (size_t)(k->V * C) * 2), LF_DTYPE_BF16, 2, sh);
        w.device = be->device;
        free(wb);
        st = o->embedding_forward(be, x[0], dev_bytes(&r, in->tok, (size_t)T * 4), &w, T);
        break;
    }
    case LF_OP_RMSNORM: st = o->rmsnorm_forward(be, x[0], x[1], v1, T, C, 1e-5f); break;
    case LF_OP_MATMUL: {
        int64_t sh[2] = {OC, C};
        uint16_t *wb = xmalloc((size_t)(OC * C) * 2);
        lf_f32_to_bf16_n(wb, in->w, OC * C);
        lf_tensor w = lf_tensor_view(dev_bytes(&r, wb, (size_t)(OC * C) * 2), LF_DTYPE_BF16, 2, sh);
        w.device = be->device;
        free(wb);
        st = o->matmul_forward(be, x[0], x[1], &w, v1, T, C, OC);
        break;
    }
    case LF_OP_MATMUL_Q4: {
        lf_err err;
        if (lf_quant_state_upload(be, &in->q, &r.q, &err)) {
            fprintf(stderr, "quant upload: %s\n", err.msg);
            exit(1);
        }
        r.has_q = 1;
        st = o->matmul_q4_forward(be, x[0], x[1], &r.q, v1, T, C, OC);
        break;
    }
    case LF_OP_ROPE: st = o->rope_forward(be, x[0], dev_bytes(&r, in->pos, (size_t)T * 4), v1, T, H, D); break;
    case LF_OP_ATTENTION:
        st = o->attention_forward(be, x[0], x[1], x[2], x[3], dev_bytes(&r, in->pos, (size_t)T * 4), T, k->S, H, KH,
                                  D, k->window, 1.0f / sqrtf((float)D));
        break;
    case LF_OP_ATTENTION_PAGED: {
        const int64_t nblk = (k->S + k->BS - 1) / k->BS;
        st = o->attention_paged_forward(be, x[0], x[1], x[2], x[3], dev_bytes(&r, in->table, (size_t)nblk * 4), nblk,
                                        k->BS, dev_bytes(&r, in->pos, (size_t)T * 4), T, H, KH, D, k->window,
                                        1.0f / sqrtf((float)D));
        break;
    }
    case LF_OP_SWIGLU: st = o->swiglu_forward(be, x[0], x[1], x[2], T * C); break;
    case LF_OP_RESIDUAL: st = o->residual_forward(be, x[0], x[1], x[2], T * C); break;
    case LF_OP_SOFTMAX: st = o->softmax_forward(be, x[0], x[1], T, k->V); break;
    case LF_OP_ADD_SCALED: st = o->add_scaled_forward(be, x[0], x[1], 0.75f, T * C); break;
    case LF_OP_DORA_COMBINE:
        st = o->dora_combine_forward(be, x[0], x[1], v1, dev_bytes(&r, in->vec2, (size_t)OC * 4),
                                     dev_bytes(&r, in->vec3, (size_t)OC * 4), 0.5f, T, OC);
        break;
    case LF_OP_CONVERT: st = o->convert(be, x[0], x[1], T * C); break;
    default: st = LF_EINVAL;
    }
    if (st == LF_OK && o->synchronize(be)) st = be->err.code ? be->err.code : LF_ECUDA;
    if (st == LF_OK) read_act(&r, x[0], in->n_out, out);
    run_free(&r);
    return st;
}

static double nmse(const float *a, const float *ref, int64_t n) {
    double num = 0, den = 1e-30;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(a[i]) != isnan(ref[i])) return INFINITY;
        double d = (double)a[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * (double)ref[i];
    }
    return num / den;
}

static double unit_roundoff(lf_dtype dt) {
    return dt == LF_DTYPE_BF16 ? 1.0 / 256 : dt == LF_DTYPE_F16 ? 1.0 / 2048 : 0.0;
}

/* Round the case's inputs (copies) to the activation dtypes dt[] (vectors and weights stay as they are). */
static void round_inputs(const op_case *k, const inputs *src, inputs *dst, const lf_dtype *dt) {
    *dst = *src;
    int64_t n[4];
    act_sizes(k, n);
    if (k->op == LF_OP_ATTENTION_PAGED) n[2] = n[3] = src->NB * k->BS * k->KH * k->D;
    const float *s[4] = {src->a, src->b, src->c, src->d};
    float **d[4] = {&dst->a, &dst->b, &dst->c, &dst->d};
    for (int i = 0; i < lf_op_n_act(k->op); i++) {
        *d[i] = xmalloc((size_t)(n[i] ? n[i] : 1) * 4);
        /* an in-place op's output starts as its input: round both to the input's dtype */
        lf_dtype r = (k->inplace && i == 0) ? dt[1] : dt[i];
        for (int64_t j = 0; j < n[i]; j++) (*d[i])[j] = round_to(s[i][j], r);
    }
    if (k->op == LF_OP_CONVERT) /* the source is dt[1]; the reference run converts f32 -> f32 */
        for (int64_t j = 0; j < n[1]; j++) dst->b[j] = round_to(src->b[j], dt[1]);
}

static void free_rounded(inputs *in) { free(in->a), free(in->b), free(in->c), free(in->d); }

static const char *dts(const lf_dtype *dt, int n, char *buf, size_t cap) {
    size_t o = 0;
    for (int i = 0; i < n && o < cap; i++) o += (size_t)snprintf(buf + o, cap - o, "%s%s", i ? "," : "", lf_dtype_name(dt[i]));
    return buf;
}

/* One case x dtype combination: the CPU comparison, and the GPU one when gpu != NULL. */
static void check_case(lf_backend *cpu, lf_backend *gpu, const op_case *k, const inputs *in, const lf_dtype *dt) {
    char name[64];
    const int na = lf_op_n_act(k->op);
    dts(dt, na, name, sizeof name);
    inputs ri;
    round_inputs(k, in, &ri, dt);
    float *got = xmalloc((size_t)in->n_out * 4), *ref = xmalloc((size_t)in->n_out * 4);
    lf_dtype f32s[4] = {LF_DTYPE_F32, LF_DTYPE_F32, LF_DTYPE_F32, LF_DTYPE_F32};
    /* convert's reference: the f32 source itself, rounded to the destination dtype once */
    const double u = unit_roundoff(dt[0]);
    int all_f32 = 1;
    for (int i = 0; i < na; i++) all_f32 &= dt[i] == LF_DTYPE_F32;
    lf_status s1 = run(cpu, k, &ri, dt, got);
    if (s1) {
        printf("FAIL cpu %-16s %-22s [%s]: %s\n", lf_op_name(k->op), k->name, name, cpu->err.msg);
        n_fail++;
        goto gpu_part;
    }
    if (!all_f32) {
        lf_status s2 = run(cpu, k, &ri, f32s, ref);
        double e = s2 ? INFINITY : nmse(got, ref, in->n_out);
        double tol = u > 0 ? 1.1 * u * u : 1e-10;
        int ok = e <= tol;
        printf("%s cpu %-16s %-22s [%s] nmse %.3g (tol %.3g)\n", ok ? "PASS" : "FAIL", lf_op_name(k->op), k->name, name,
               e, tol);
        ok ? n_pass++ : n_fail++;
    }
gpu_part:
    if (gpu) {
        if (!gpu->ops->supports_op || !gpu->ops->supports_op(gpu, k->op, dt, na)) {
            printf("unsupported %s %-16s [%s]\n", gpu->name, lf_op_name(k->op), name);
            n_unsup++;
        } else if (s1 == LF_OK) {
            float *g = xmalloc((size_t)in->n_out * 4);
            lf_status s3 = run(gpu, k, &ri, dt, g);
            double e = s3 ? INFINITY : nmse(g, got, in->n_out);
            /* the checked backend runs the CPU's own ops on copies: it must agree exactly */
            double tol = gpu->device == LF_DEVICE_CPU ? 0.0 : u > 0 ? 4 * u * u : 1e-9;
            int ok = e <= tol;
            printf("%s %s %-16s %-22s [%s] nmse %.3g (tol %.3g)%s%s\n", ok ? "PASS" : "FAIL", gpu->name,
                   lf_op_name(k->op), k->name, name, e, tol, s3 ? ": " : "", s3 ? gpu->err.msg : "");
            ok ? n_pass++ : n_fail++;
            free(g);
        }
    }
    free(got), free(ref);
    free_rounded(&ri);
}

int main(int argc, char **argv) {
    int want_gpu = argc > 1 && !strcmp(argv[1], "--gpu");
    const char *env = getenv("LF_TEST_SEED");
    uint64_t seed = env && *env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
    rng_state = seed;
    printf("test_backend_ops: seed %llu (set LF_TEST_SEED to repeat)%s\n", (unsigned long long)seed,
           want_gpu ? ", with the CUDA backend" : "");
    lf_backend *cpu = lf_backend_cpu_create(2), *gpu = NULL;
    if (!cpu) return 1;
    if (want_gpu) {
        lf_err err = {0};
        gpu = lf_backend_cuda_create(0, &err);
        if (!gpu) {
            printf("skipped: no CUDA device (%s)\n", err.msg);
            lf_backend_free(cpu);
            return 77;
        }
    }
    if (!gpu) { /* the checked cpu backend stands in for a device */
        gpu = lf_backend_cpu_checked_create(2);
        if (!gpu) return 1;
        float host[8] = {1, 2, 3, 4, 5, 6, 7, 8}, w[8] = {1, 1, 1, 1, 1, 1, 1, 1};
        float *dev = gpu->ops->alloc(gpu, sizeof host);
        lf_status st = gpu->ops->rmsnorm_forward(gpu, lf_f32(dev), lf_f32(host), w, 1, 8, 1e-5f);
        int ok = st == LF_EINVAL && strstr(gpu->err.msg, "rmsnorm") && strstr(gpu->err.msg, "inp") &&
                 strstr(gpu->err.msg, "not in the backend's memory");
        printf("%s cpu-checked refuses a host pointer: %s\n", ok ? "PASS" : "FAIL", gpu->err.msg);
        ok ? n_pass++ : n_fail++;
        st = gpu->ops->upload(gpu, dev, host, sizeof host + 4);
        ok = st == LF_EINVAL && strstr(gpu->err.msg, "upload");
        printf("%s cpu-checked refuses an upload past its allocation: %s\n", ok ? "PASS" : "FAIL", gpu->err.msg);
        ok ? n_pass++ : n_fail++;
        gpu->ops->free(gpu, dev);
    }
    /* ragged sizes, GQA (H/KH = 3, 1), windows, decode (T=1) and prefill, paged BS 1 / 16, in-place */
    const op_case cases[] = {
        {"T7 V50 C37", LF_OP_EMBEDDING, .T = 7, .C = 37, .V = 50},
        {"T5 C100", LF_OP_RMSNORM, .T = 5, .C = 100},
        {"T3 C64 in-place", LF_OP_RMSNORM, .T = 3, .C = 64, .inplace = 1},
        {"T1 C67 OC45", LF_OP_MATMUL, .T = 1, .C = 67, .OC = 45},
        {"T9 C128 OC33", LF_OP_MATMUL, .T = 9, .C = 128, .OC = 33},
        {"T1 C128 OC40", LF_OP_MATMUL_Q4, .T = 1, .C = 128, .OC = 40},
        {"T6 C192 OC17", LF_OP_MATMUL_Q4, .T = 6, .C = 192, .OC = 17},
        {"T4 NH3 D16", LF_OP_ROPE, .T = 4, .H = 3, .D = 16},
        {"T1 NH2 D64", LF_OP_ROPE, .T = 1, .H = 2, .D = 64},
        {"decode T1 S37 GQA3", LF_OP_ATTENTION, .T = 1, .H = 6, .KH = 2, .D = 16, .S = 37},
        {"prefill T8 S8 w3", LF_OP_ATTENTION, .T = 8, .H = 4, .KH = 4, .D = 32, .S = 8, .window = 3},
        {"T5 S40 GQA2", LF_OP_ATTENTION, .T = 5, .H = 4, .KH = 2, .D = 24, .S = 40},
        {"decode BS16 S45 GQA3", LF_OP_ATTENTION_PAGED, .T = 1, .H = 6, .KH = 2, .D = 16, .S = 45, .BS = 16},
        {"decode BS1 S13", LF_OP_ATTENTION_PAGED, .T = 1, .H = 2, .KH = 1, .D = 8, .S = 13, .BS = 1},
        {"prefill BS16 T9 S30 w7", LF_OP_ATTENTION_PAGED, .T = 9, .H = 4, .KH = 2, .D = 32, .S = 30, .BS = 16, .window = 7},
        {"N=3x41", LF_OP_SWIGLU, .T = 3, .C = 41},
        {"N=2x64 in-place", LF_OP_SWIGLU, .T = 2, .C = 64, .inplace = 1},
        {"N=5x33", LF_OP_RESIDUAL, .T = 5, .C = 33},
        {"N=4x16 in-place", LF_OP_RESIDUAL, .T = 4, .C = 16, .inplace = 1},
        {"R3 V100", LF_OP_SOFTMAX, .T = 3, .V = 100},
        {"N=3x50", LF_OP_ADD_SCALED, .T = 3, .C = 50},
        {"T4 OC29", LF_OP_DORA_COMBINE, .T = 4, .OC = 29},
        {"N=2x77", LF_OP_CONVERT, .T = 2, .C = 77},
    };
    const lf_dtype DT[3] = {LF_DTYPE_F32, LF_DTYPE_BF16, LF_DTYPE_F16};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const op_case *k = &cases[ci];
        inputs in;
        make_inputs(k, &in);
        const int na = lf_op_n_act(k->op);
        for (int d = 0; d < 3; d++) { /* every activation of the same dtype */
            lf_dtype dt[4] = {DT[d], DT[d], DT[d], DT[d]};
            check_case(cpu, gpu, k, &in, dt);
        }
        if ((k->op == LF_OP_MATMUL || k->op == LF_OP_MATMUL_Q4) && !k->inplace)
            for (int d = 1; d < 3; d++) { /* f32 output from 16-bit rows (the lm_head) */
                lf_dtype dt[4] = {LF_DTYPE_F32, DT[d], LF_DTYPE_F32, LF_DTYPE_F32};
                check_case(cpu, gpu, k, &in, dt);
            }
        if (k->op == LF_OP_CONVERT)
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++)
                    if (a != b) { /* every pair of dtypes */
                        lf_dtype dt[4] = {DT[a], DT[b], LF_DTYPE_F32, LF_DTYPE_F32};
                        check_case(cpu, gpu, k, &in, dt);
                    }
        (void)na;
        free_inputs(&in);
    }
    /* capability table: the CPU supports every op for every activation dtype */
    for (int op = 0; op < LF_OP_COUNT; op++)
        for (int d = 0; d < 3; d++)
            if (!lf_backend_supports(cpu, (lf_op)op, DT[d])) {
                printf("FAIL cpu supports_op(%s, %s) is 0\n", lf_op_name((lf_op)op), lf_dtype_name(DT[d]));
                n_fail++;
            }
    {
        lf_dtype bad[2] = {LF_DTYPE_I32, LF_DTYPE_F32};
        int ok = !cpu->ops->supports_op(cpu, LF_OP_MATMUL, bad, 2) && !cpu->ops->supports_op(cpu, LF_OP_MATMUL, bad + 1, 1);
        printf("%s cpu supports_op refuses an I32 activation and a wrong arity\n", ok ? "PASS" : "FAIL");
        ok ? n_pass++ : n_fail++;
    }
    if (gpu) printf("%d op x dtype combinations unsupported on %s\n", n_unsup, gpu->name);
    lf_backend_free(gpu);
    lf_backend_free(cpu);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
