/* arena.c - bump allocator over one aligned_alloc'd block. */
#include "core/arena.h"

#include <stdlib.h>
#include <string.h>

lf_status lf_arena_init(lf_arena *a, size_t cap, lf_err *err) {
    size_t c = (cap + 63) / 64 * 64;
    if (c == 0) c = 64;
    a->base = aligned_alloc(64, c);
    if (!a->base) return lf_err_set(err, LF_ENOMEM, "arena: cannot allocate %zu bytes", c);
    memset(a->base, 0, c);
    a->cap = c;
    a->used = 0;
    return LF_OK;
}

void *lf_arena_alloc(lf_arena *a, size_t n, size_t align) {
    if (align == 0) align = 1;
    size_t off = (a->used + align - 1) & ~(align - 1);
    if (off > a->cap || n > a->cap - off) return NULL;
    a->used = off + n;
    return a->base + off;
}

void lf_arena_reset(lf_arena *a) { a->used = 0; }

void lf_arena_free(lf_arena *a) {
    free(a->base);
    a->base = NULL;
    a->cap = a->used = 0;
}
