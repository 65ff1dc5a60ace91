/* backend_cpu.c - the CPU backend: its op table, lifetime (pool + scratch sized at create time), host memory
 * (64-byte aligned malloc, memcpy transfers) and the run-time SIMD switch. The ops live one family per file
 * (typed.c holds the typed entries of the table and sends all-f32 calls to the f32 kernels:
 * embedding.c rmsnorm.c matmul.c rope.c attention.c elementwise.c softmax.c; training: matmul_backward.c,
 * attention_train.c, elementwise_backward.c), declared in cpu_ops.h. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_paged.h"

#ifdef LF_CPU_X86
#include <cpuid.h>
#endif

/* ---- run-time SIMD selection ---- */

/* -1: not decided yet; 0: portable; 1: AVX2/FMA/F16C. */
static atomic_int simd_state = -1;

/* AVX2 + FMA + F16C, and the OS saves the ymm state (OSXSAVE, XCR0 bits 1-2). cpuid directly rather than
 * __builtin_cpu_supports, whose feature names differ between compilers ("f16c" is GCC-only). */
static int cpu_has_avx2(void) {
#ifdef LF_CPU_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    if (!(fma && osxsave && avx && f16c)) return 0;
    unsigned xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    (void)xcr0_hi;
    if ((xcr0_lo & 6u) != 6u) return 0;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b >> 5) & 1; /* AVX2 */
#else
    return 0;
#endif
}

int lf_cpu_simd(void) {
    int s = atomic_load_explicit(&simd_state, memory_order_relaxed);
    if (s >= 0) return s;
    const char *env = getenv("LF_CPU_NO_SIMD");
    s = cpu_has_avx2() && !(env && strcmp(env, "1") == 0);
    atomic_store_explicit(&simd_state, s, memory_order_relaxed);
    return s;
}

int lf_cpu_set_simd(int enabled) {
    int s = enabled ? cpu_has_avx2() : 0;
    atomic_store_explicit(&simd_state, s, memory_order_relaxed);
    return s;
}

/* ---- helpers for the op files ---- */

void lf_cpu_parallel_for(lf_backend *be, int64_t n, int64_t grain, lf_pool_fn fn, void *ctx) {
    lf_cpu_ctx *c = (lf_cpu_ctx *)be->ctx;
    lf_pool_parallel_for(c->pool, n, grain, fn, ctx);
}

float *lf_cpu_scratch(lf_backend *be, int tid) {
    lf_cpu_ctx *c = (lf_cpu_ctx *)be->ctx;
    LF_ASSERT(tid >= 0 && tid < c->n_threads);
    return c->scratch + (int64_t)tid * LF_CPU_SCRATCH_FLOATS;
}

/* ---- memory ---- */

#define CPU_ALIGN 64

static void *aligned_malloc64(size_t nbytes) {
    size_t n = (nbytes + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN; /* aligned_alloc wants a multiple */
    if (n == 0) n = CPU_ALIGN;
    if (n < nbytes) return NULL; /* overflow */
    return aligned_alloc(CPU_ALIGN, n);
}

static void *cpu_alloc(lf_backend *be, size_t nbytes) {
    void *p = aligned_malloc64(nbytes);
    if (!p) lf_err_set(&be->err, LF_ENOMEM, "cpu: out of memory allocating %zu bytes", nbytes);
    return p;
}

static void cpu_free(lf_backend *be, void *ptr) {
    (void)be;
    free(ptr);
}

static lf_status cpu_upload(lf_backend *be, void *dst, const void *host_src, size_t nbytes) {
    (void)be;
    if (nbytes) memcpy(dst, host_src, nbytes);
    return LF_OK;
}

static lf_status cpu_download(lf_backend *be, void *host_dst, const void *src, size_t nbytes) {
    (void)be;
    if (nbytes) memcpy(host_dst, src, nbytes);
    return LF_OK;
}

static lf_status cpu_copy(lf_backend *be, void *dst, const void *src, size_t nbytes) {
    (void)be;
    if (nbytes && dst != src) memmove(dst, src, nbytes);
    return LF_OK;
}

static lf_status cpu_synchronize(lf_backend *be) {
    (void)be;
    return LF_OK;
}

static void cpu_destroy(lf_backend *be) {
    if (!be) return;
    lf_cpu_ctx *c = (lf_cpu_ctx *)be->ctx;
    if (c) {
        lf_pool_destroy(c->pool);
        free(c->scratch);
        free(c);
    }
    free(be);
}

/* ---- the table ---- */

static const lf_backend_ops cpu_ops = {
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .copy = cpu_copy,
    .synchronize = cpu_synchronize,
    .embedding_forward = lf_cpu_op_embedding,
    .rmsnorm_forward = lf_cpu_op_rmsnorm,
    .matmul_forward = lf_cpu_op_matmul,
    .rope_forward = lf_cpu_op_rope,
    .attention_forward = lf_cpu_op_attention,
    .swiglu_forward = lf_cpu_op_swiglu,
    .residual_forward = lf_cpu_op_residual,
    .softmax_forward = lf_cpu_op_softmax,
    .matmul_q4_forward = lf_cpu_op_matmul_q4,
    .attention_paged_forward = lf_cpu_op_attention_paged,
    .add_scaled_forward = lf_cpu_op_add_scaled,
    .dora_combine_forward = lf_cpu_op_dora_combine,
    .convert = lf_cpu_op_convert,
    .supports_op = lf_cpu_op_supports,
    .matmul_backward = lf_cpu_matmul_backward,
    .matmul_q4_backward = lf_cpu_matmul_q4_backward,
    .rmsnorm_backward = lf_cpu_rmsnorm_backward,
    .rope_backward = lf_cpu_rope_backward,
    .attention_train_forward = lf_cpu_attention_train_forward,
    .attention_backward = lf_cpu_attention_backward,
    .swiglu_backward = lf_cpu_swiglu_backward,
    .axpy = lf_cpu_axpy,
    .crossentropy_forward_backward = lf_cpu_crossentropy_forward_backward,
};

lf_backend *lf_backend_cpu_create(int n_threads) {
    lf_backend *be = calloc(1, sizeof *be);
    lf_cpu_ctx *c = calloc(1, sizeof *c);
    if (!be || !c) goto fail;
    be->name = "cpu";
    be->device = LF_DEVICE_CPU;
    be->host_memory = 1;
    be->ops = &cpu_ops;
    be->ctx = c;
    c->pool = lf_pool_create(n_threads);
    if (!c->pool) goto fail;
    c->n_threads = lf_pool_size(c->pool);
    c->scratch = aligned_malloc64((size_t)c->n_threads * (size_t)LF_CPU_SCRATCH_FLOATS * sizeof(float));
    if (!c->scratch) goto fail;
    lf_err_clear(&be->err);
    (void)lf_cpu_simd(); /* read LF_CPU_NO_SIMD and the CPU flags now, not inside the first op */
    return be;
fail:
    if (c) {
        lf_pool_destroy(c->pool);
        free(c->scratch);
        free(c);
    }
    free(be);
    return NULL;
}

int lf_backend_cpu_threads(const lf_backend *be) {
    if (!be || be->ops != &cpu_ops) return 1;
    return ((const lf_cpu_ctx *)be->ctx)->n_threads;
}
