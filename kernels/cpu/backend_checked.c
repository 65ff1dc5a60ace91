/* backend_checked.c - the checked CPU backend (kernels/backend.h lf_backend_cpu_checked_create): a device
 * stand-in for machines without one. It owns an ordinary CPU backend and forwards every op to it, after
 * checking that every pointer argument, with the whole extent the op reads or writes, lies inside one
 * allocation made by this backend's alloc. A host pointer (an mmapped weight, a host array of an adapter, a
 * stack buffer) is LF_EINVAL "<op>: <argument> is not in the backend's memory", which is what a CUDA device
 * would turn into a fault or garbage.
 *
 * Invariants: allocations are tracked in a sorted array under a mutex (the registry may upload adapters from
 * another thread while the engine runs ops); upload's source and download's destination must be host memory
 * NOT in the table; the training ops are not offered (supports_op says 0, their entries are NULL): training
 * reads host memory by design (model_train.c). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_ops.h"
#include "quant/quant.h"

typedef struct {
    uintptr_t p;
    size_t n;
} chk_range;

typedef struct {
    lf_backend *cpu; /* owned: does the work */
    pthread_mutex_t mu;
    chk_range *r;    /* sorted by p */
    size_t n, cap;
} chk_ctx;

static chk_ctx *cx(const lf_backend *be) { return (chk_ctx *)be->ctx; }

/* index of the range holding p, or -1 */
static int64_t find(const chk_ctx *c, uintptr_t p) {
    int64_t lo = 0, hi = (int64_t)c->n - 1;
    while (lo <= hi) {
        int64_t mid = (lo + hi) / 2;
        if (p < c->r[mid].p) hi = mid - 1;
        else if (p >= c->r[mid].p + (c->r[mid].n ? c->r[mid].n : 1)) lo = mid + 1;
        else return mid;
    }
    return -1;
}

/* 1 when [p, p + n) lies inside one allocation (n = 0: p may be anything, nothing is touched). */
static int inside(lf_backend *be, const void *p, size_t n) {
    if (n == 0) return 1;
    chk_ctx *c = cx(be);
    pthread_mutex_lock(&c->mu);
    int64_t i = find(c, (uintptr_t)p);
    int ok = i >= 0 && (uintptr_t)p + n <= c->r[i].p + c->r[i].n;
    pthread_mutex_unlock(&c->mu);
    return ok;
}

#define NEED(ptr, bytes, op, what)                                                                              \
    do {                                                                                                        \
        if (!inside(be, (ptr), (bytes)))                                                                        \
            return lf_err_set(&be->err, LF_EINVAL, "%s: %s (%p, %zu bytes) is not in the backend's memory", op, \
                              what, (const void *)(ptr), (size_t)(bytes));                                      \
    } while (0)

/* forward the inner backend's result (and message) */
static lf_status fwd(lf_backend *be, lf_status st) {
    if (st != LF_OK) be->err = cx(be)->cpu->err;
    return st;
}

static size_t ab(lf_act a, int64_t n) { return n > 0 ? lf_act_bytes(a.dt, n) : 0; }
static size_t tb(const lf_tensor *w) { return w ? lf_tensor_nbytes(w) : 0; }

/* the arrays of a 4-bit state */
static lf_status need_q4(lf_backend *be, const lf_quant_state *w, const char *op) {
    if (!w) return LF_OK;
    NEED(w->packed, (size_t)((w->n + 1) / 2), op, "4-bit packed codes");
    if (w->nested) {
        NEED(w->absmax_q, (size_t)w->nblocks, op, "4-bit nested absmax codes");
        NEED(w->nested_absmax, (size_t)w->n_nested * 4, op, "4-bit nested absmax");
    } else {
        NEED(w->absmax, (size_t)w->nblocks * 4, op, "4-bit absmax");
    }
    return LF_OK;
}

/* ---- memory ---- */
static void *c_alloc(lf_backend *be, size_t nbytes) {
    chk_ctx *c = cx(be);
    void *p = c->cpu->ops->alloc(c->cpu, nbytes);
    if (!p) {
        be->err = c->cpu->err;
        return NULL;
    }
    pthread_mutex_lock(&c->mu);
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 64;
        chk_range *r = realloc(c->r, cap * sizeof *r);
        if (!r) {
            pthread_mutex_unlock(&c->mu);
            c->cpu->ops->free(c->cpu, p);
            lf_err_set(&be->err, LF_ENOMEM, "cpu-checked: out of memory for the allocation table");
            return NULL;
        }
        c->r = r, c->cap = cap;
    }
    size_t i = c->n;
    while (i > 0 && c->r[i - 1].p > (uintptr_t)p) i--;
    memmove(c->r + i + 1, c->r + i, (c->n - i) * sizeof *c->r);
    c->r[i].p = (uintptr_t)p;
    c->r[i].n = nbytes;
    c->n++;
    pthread_mutex_unlock(&c->mu);
    return p;
}

static void c_free(lf_backend *be, void *ptr) {
    if (!ptr) return;
    chk_ctx *c = cx(be);
    pthread_mutex_lock(&c->mu);
    int64_t i = find(c, (uintptr_t)ptr);
    int ok = i >= 0 && c->r[i].p == (uintptr_t)ptr;
    if (ok) {
        memmove(c->r + i, c->r + i + 1, (c->n - (size_t)i - 1) * sizeof *c->r);
        c->n--;
    }
    pthread_mutex_unlock(&c->mu);
    LF_ASSERT(ok && "cpu-checked: free of a pointer this backend did not allocate");
    c->cpu->ops->free(c->cpu, ptr);
}

static lf_status c_upload(lf_backend *be, void *dst, const void *src, size_t n) {
    NEED(dst, n, "upload", "destination");
    if (n && inside(be, src, 1)) return lf_err_set(&be->err, LF_EINVAL, "upload: source is backend memory (use copy)");
    return fwd(be, cx(be)->cpu->ops->upload(cx(be)->cpu, dst, src, n));
}

static lf_status c_download(lf_backend *be, void *dst, const void *src, size_t n) {
    NEED(src, n, "download", "source");
    if (n && inside(be, dst, 1)) return lf_err_set(&be->err, LF_EINVAL, "download: destination is backend memory (use copy)");
    return fwd(be, cx(be)->cpu->ops->download(cx(be)->cpu, dst, src, n));
}

static lf_status c_copy(lf_backend *be, void *dst, const void *src, size_t n) {
    NEED(dst, n, "copy", "destination");
    NEED(src, n, "copy", "source");
    return fwd(be, cx(be)->cpu->ops->copy(cx(be)->cpu, dst, src, n));
}

static lf_status c_sync(lf_backend *be) { return fwd(be, cx(be)->cpu->ops->synchronize(cx(be)->cpu)); }

static void c_destroy(lf_backend *be) {
    if (!be) return;
    chk_ctx *c = cx(be);
    if (c) {
        lf_backend_free(c->cpu);
        pthread_mutex_destroy(&c->mu);
        free(c->r);
        free(c);
    }
    free(be);
}

/* ---- ops: check, then forward ---- */
#define INNER (cx(be)->cpu)

static lf_status c_embedding(lf_backend *be, lf_act out, const int32_t *tokens, const lf_tensor *wte, int64_t T) {
    const int64_t C = wte ? wte->shape[1] : 0;
    NEED(out.p, ab(out, T * C), "embedding", "out");
    NEED(tokens, (size_t)(T > 0 ? T : 0) * 4, "embedding", "tokens");
    NEED(wte ? wte->data : NULL, tb(wte), "embedding", "wte");
    return fwd(be, INNER->ops->embedding_forward(INNER, out, tokens, wte, T));
}

static lf_status c_rmsnorm(lf_backend *be, lf_act out, lf_act inp, const float *w, int64_t T, int64_t C, float eps) {
    NEED(out.p, ab(out, T * C), "rmsnorm", "out");
    NEED(inp.p, ab(inp, T * C), "rmsnorm", "inp");
    NEED(w, (size_t)(C > 0 ? C : 0) * 4, "rmsnorm", "weight");
    return fwd(be, INNER->ops->rmsnorm_forward(INNER, out, inp, w, T, C, eps));
}

static lf_status c_matmul(lf_backend *be, lf_act out, lf_act inp, const lf_tensor *w, const float *bias, int64_t T,
                          int64_t C, int64_t OC) {
    NEED(out.p, ab(out, T * OC), "matmul", "out");
    NEED(inp.p, ab(inp, T * C), "matmul", "inp");
    NEED(w ? w->data : NULL, tb(w), "matmul", "weight");
    if (bias) NEED(bias, (size_t)(OC > 0 ? OC : 0) * 4, "matmul", "bias");
    return fwd(be, INNER->ops->matmul_forward(INNER, out, inp, w, bias, T, C, OC));
}

static lf_status c_matmul_q4(lf_backend *be, lf_act out, lf_act inp, const lf_quant_state *w, const float *bias,
                             int64_t T, int64_t C, int64_t OC) {
    NEED(out.p, ab(out, T * OC), "matmul_q4", "out");
    NEED(inp.p, ab(inp, T * C), "matmul_q4", "inp");
    lf_status st = need_q4(be, w, "matmul_q4");
    if (st) return st;
    if (bias) NEED(bias, (size_t)(OC > 0 ? OC : 0) * 4, "matmul_q4", "bias");
    return fwd(be, INNER->ops->matmul_q4_forward(INNER, out, inp, w, bias, T, C, OC));
}

static lf_status c_rope(lf_backend *be, lf_act x, const int32_t *pos, const float *inv_freq, int64_t T, int64_t NH,
                        int64_t D) {
    NEED(x.p, ab(x, T * NH * D), "rope", "x");
    NEED(pos, (size_t)(T > 0 ? T : 0) * 4, "rope", "pos");
    NEED(inv_freq, (size_t)(D > 0 ? D / 2 : 0) * 4, "rope", "inv_freq");
    return fwd(be, INNER->ops->rope_forward(INNER, x, pos, inv_freq, T, NH, D));
}

static lf_status c_attention(lf_backend *be, lf_act out, lf_act q, lf_act k, lf_act v, const int32_t *pos, int64_t T,
                             int64_t S, int64_t H, int64_t KH, int64_t D, int64_t window, float scale) {
    NEED(out.p, ab(out, T * H * D), "attention", "out");
    NEED(q.p, ab(q, T * H * D), "attention", "q");
    NEED(k.p, ab(k, S * KH * D), "attention", "k");
    NEED(v.p, ab(v, S * KH * D), "attention", "v");
    NEED(pos, (size_t)(T > 0 ? T : 0) * 4, "attention", "pos");
    return fwd(be, INNER->ops->attention_forward(INNER, out, q, k, v, pos, T, S, H, KH, D, window, scale));
}

static lf_status c_attention_paged(lf_backend *be, lf_act out, lf_act q, lf_act kp, lf_act vp, const int32_t *bt,
                                   int64_t n_blocks, int64_t BS, const int32_t *pos, int64_t T, int64_t H, int64_t KH,
                                   int64_t D, int64_t window, float scale) {
    NEED(out.p, ab(out, T * H * D), "attention_paged", "out");
    NEED(q.p, ab(q, T * H * D), "attention_paged", "q");
    NEED(bt, (size_t)(n_blocks > 0 ? n_blocks : 0) * 4, "attention_paged", "block_table");
    NEED(pos, (size_t)(T > 0 ? T : 0) * 4, "attention_paged", "pos");
    /* the pool's size is not passed: each block the table names must be inside (one block per check) */
    const size_t blk = ab(kp, BS * KH * D);
    for (int64_t b = 0; b < n_blocks && blk; b++) {
        if (bt[b] < 0) continue; /* the op itself refuses an attended negative id */
        NEED((const char *)kp.p + (size_t)bt[b] * blk, blk, "attention_paged", "a K block");
        NEED((const char *)vp.p + (size_t)bt[b] * blk, blk, "attention_paged", "a V block");
    }
    return fwd(be, INNER->ops->attention_paged_forward(INNER, out, q, kp, vp, bt, n_blocks, BS, pos, T, H, KH, D,
                                                       window, scale));
}

static lf_status c_swiglu(lf_backend *be, lf_act out, lf_act g, lf_act u, int64_t N) {
    NEED(out.p, ab(out, N), "swiglu", "out");
    NEED(g.p, ab(g, N), "swiglu", "gate");
    NEED(u.p, ab(u, N), "swiglu", "up");
    return fwd(be, INNER->ops->swiglu_forward(INNER, out, g, u, N));
}

static lf_status c_residual(lf_backend *be, lf_act out, lf_act a, lf_act b, int64_t N) {
    NEED(out.p, ab(out, N), "residual", "out");
    NEED(a.p, ab(a, N), "residual", "a");
    NEED(b.p, ab(b, N), "residual", "b");
    return fwd(be, INNER->ops->residual_forward(INNER, out, a, b, N));
}

static lf_status c_softmax(lf_backend *be, lf_act out, lf_act inp, int64_t R, int64_t V) {
    NEED(out.p, ab(out, R * V), "softmax", "out");
    NEED(inp.p, ab(inp, R * V), "softmax", "inp");
    return fwd(be, INNER->ops->softmax_forward(INNER, out, inp, R, V));
}

static lf_status c_add_scaled(lf_backend *be, lf_act y, lf_act x, float alpha, int64_t N) {
    NEED(y.p, ab(y, N), "add_scaled", "y");
    NEED(x.p, ab(x, N), "add_scaled", "x");
    return fwd(be, INNER->ops->add_scaled_forward(INNER, y, x, alpha, N));
}

static lf_status c_dora(lf_backend *be, lf_act out, lf_act lo, const float *mag, const float *wn, const float *bias,
                        float scale, int64_t T, int64_t OC) {
    const size_t vb = (size_t)(OC > 0 ? OC : 0) * 4;
    NEED(out.p, ab(out, T * OC), "dora_combine", "out");
    NEED(lo.p, ab(lo, T * OC), "dora_combine", "lo");
    NEED(mag, vb, "dora_combine", "magnitude");
    NEED(wn, vb, "dora_combine", "weight norm");
    if (bias) NEED(bias, vb, "dora_combine", "bias");
    return fwd(be, INNER->ops->dora_combine_forward(INNER, out, lo, mag, wn, bias, scale, T, OC));
}

static lf_status c_convert(lf_backend *be, lf_act dst, lf_act src, int64_t N) {
    NEED(dst.p, ab(dst, N), "convert", "dst");
    NEED(src.p, ab(src, N), "convert", "src");
    return fwd(be, INNER->ops->convert(INNER, dst, src, N));
}

static int c_supports(const lf_backend *be, lf_op op, const lf_dtype *dt, int n) {
    if (lf_op_n_act(op) == 0) return 0; /* training ops: not offered */
    return lf_cpu_op_supports(be, op, dt, n);
}

static const lf_backend_ops checked_ops = {
    .destroy = c_destroy,
    .alloc = c_alloc,
    .free = c_free,
    .upload = c_upload,
    .download = c_download,
    .copy = c_copy,
    .synchronize = c_sync,
    .embedding_forward = c_embedding,
    .rmsnorm_forward = c_rmsnorm,
    .matmul_forward = c_matmul,
    .rope_forward = c_rope,
    .attention_forward = c_attention,
    .swiglu_forward = c_swiglu,
    .residual_forward = c_residual,
    .softmax_forward = c_softmax,
    .matmul_q4_forward = c_matmul_q4,
    .attention_paged_forward = c_attention_paged,
    .add_scaled_forward = c_add_scaled,
    .dora_combine_forward = c_dora,
    .convert = c_convert,
    .supports_op = c_supports,
};

lf_backend *lf_backend_cpu_checked_create(int n_threads) {
    lf_backend *be = calloc(1, sizeof *be);
    chk_ctx *c = calloc(1, sizeof *c);
    if (!be || !c) goto fail;
    c->cpu = lf_backend_cpu_create(n_threads);
    if (!c->cpu) goto fail;
    pthread_mutex_init(&c->mu, NULL);
    be->name = "cpu-checked";
    be->device = LF_DEVICE_CPU;
    be->host_memory = 0;
    be->ops = &checked_ops;
    be->ctx = c;
    lf_err_clear(&be->err);
    return be;
fail:
    if (c) lf_backend_free(c->cpu);
    free(c);
    free(be);
    return NULL;
}
