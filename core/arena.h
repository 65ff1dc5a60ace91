/* arena.h - one allocation carved into aligned pieces; freed all at once (llm.c's malloc_and_point). */
#ifndef LF_CORE_ARENA_H
#define LF_CORE_ARENA_H

#include <stddef.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lf_arena {
    char *base;     /* owned: one aligned allocation */
    size_t cap;
    size_t used;
} lf_arena;

/* Reserve cap bytes (64-byte aligned, zeroed). */
lf_status lf_arena_init(lf_arena *a, size_t cap, lf_err *err);
/* Carve n bytes aligned to `align` (power of two <= 64); NULL when the arena is full. */
void *lf_arena_alloc(lf_arena *a, size_t n, size_t align);
/* Forget every piece (memory kept). */
void lf_arena_reset(lf_arena *a);
/* Release the allocation; safe on a zeroed or freed arena. */
void lf_arena_free(lf_arena *a);

#ifdef __cplusplus
}
#endif
#endif
