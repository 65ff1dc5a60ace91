/* stop.h - incremental stop-sequence matcher over streamed text pieces: finds stop strings that span token
 * boundaries and says how much text is safe to send now.
 *
 * Invariants: the text emitted so far never contains the start of a stop string that could still complete
 * (a suffix that is a proper prefix of some stop string is held back), and never ends inside an incomplete
 * UTF-8 sequence (up to 3 trailing bytes of a multi-byte character are held back until the rest arrives).
 * The held text is always shorter than max(longest stop string, 4) bytes. The stop string that completes
 * first in the text wins (ties: the longest, then the first listed), so the result does not depend on how
 * the text is split into pieces.
 * Ownership: the matcher copies the stop strings; the emit pointers it returns point into its own buffer
 * and stay valid until the next call on the same matcher. Not thread-safe (one matcher per sequence). */
#ifndef LF_SERVE_STOP_H
#define LF_SERVE_STOP_H

#include <stddef.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lf_stop_matcher lf_stop_matcher;

/* stops[n]: stop strings (lens[i] bytes each, or strlen when lens is NULL); empty strings are LF_EINVAL.
 * n = 0 is allowed (the matcher then only holds back incomplete UTF-8). include_stop: emitted text ends
 * after the stop string instead of before it (TGI keeps it, OpenAI/vLLM drop it). */
lf_status lf_stop_create(const char *const *stops, const size_t *lens, size_t n, int include_stop,
                         lf_stop_matcher **out, lf_err *err);
/* NULL is a no-op. */
void lf_stop_free(lf_stop_matcher *m);
/* Forget held text and a previous match (reuse for a new sequence). */
void lf_stop_reset(lf_stop_matcher *m);

/* Feed one piece of generated text. *emit / *emit_len: the text safe to send now (may be empty).
 * *stopped = 1 when a stop string completed: *emit then ends at the stop (see include_stop), the rest of
 * the piece is dropped, and later feeds emit nothing and keep *stopped = 1. LF_ENOMEM only on
 * allocation failure (the internal buffer grows to the longest piece seen plus the held text). */
lf_status lf_stop_feed(lf_stop_matcher *m, const char *piece, size_t len, const char **emit, size_t *emit_len,
                       int *stopped, lf_err *err);
/* End of generation for another reason (length, EOS): the held-back text, to be sent as is. Empty after
 * a stop. */
void lf_stop_flush(lf_stop_matcher *m, const char **emit, size_t *emit_len);

/* Index of the stop string that matched, or -1. */
int lf_stop_which(const lf_stop_matcher *m);
/* Bytes currently held back. */
size_t lf_stop_held(const lf_stop_matcher *m);

/* Length of the incomplete UTF-8 sequence at the end of s[0..n): 0..3 (0 when s ends on a character
 * boundary or with bytes that can never become valid). */
size_t lf_stop_utf8_tail(const char *s, size_t n);

#ifdef __cplusplus
}
#endif
#endif
