/* plot.h - training_loss.svg: a self-contained SVG line plot of the training loss over steps (raw curve, the
 * LLaMA-Factory smoothed curve) and, when given, the eval loss; axes with "nice" ticks, tick labels, axis
 * titles ("step", "loss"), legend (in the corner the data crosses least) and title.
 *
 * Invariants:
 *   - non-finite values (NaN, +-inf) are skipped (not drawn, not in the axis range, not smoothed); the plot says
 *     how many were skipped. 0 points draw empty axes with "no data"; 1 point draws a marker.
 *   - any finite range works (up to +-DBL_MAX, or a constant series); when every loss is > 0 and max/min >=
 *     1e4 the y axis is logarithmic (decade ticks) and titled "loss (log scale)".
 *   - steps are plotted in the order given (the trainer gives them ascending).
 *   - the file is written atomically (core/fileio.h): complete or absent.
 * Ownership: every input array is borrowed for the call; lf_plot_loss_svg_render returns a malloc'd buffer the
 * caller frees. */
#ifndef LF_FINETUNE_PLOT_H
#define LF_FINETUNE_PLOT_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h" // defines: lf_status, lf_err

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lf_plot_loss_data {
    const char *title;        /* NULL = "training loss"; XML-escaped on output */
    const int64_t *steps;     /* [n] global step of each training-loss log line */
    const double *loss;       /* [n] */
    int64_t n;
    const int64_t *eval_steps; /* [n_eval] (may be NULL when n_eval == 0) */
    const double *eval_loss;   /* [n_eval] */
    int64_t n_eval;
} lf_plot_loss_data;

/* LLaMA-Factory's smooth() (extras/ploting.py, a TensorBoard-style EMA):
 *     weight = 1.8 * (1 / (1 + exp(-0.05 * n)) - 0.5);  last = x[0];
 *     out[i] = last * weight + (1 - weight) * x[i];  last = out[i]
 * in that f64 operation order. in [n], out [n] (may alias). n == 0 is a no-op. Callers pass finite values only
 * (the plot smooths the finite subsequence). */
void lf_plot_smooth(const double *in, double *out, int64_t n);

/* Render the SVG (640 x 480, like matplotlib's default figure) into a malloc'd NUL-terminated buffer *out of
 * *len bytes (excluding the NUL). LF_EINVAL for negative counts or NULL arrays with a count > 0. */
lf_status lf_plot_loss_svg_render(const lf_plot_loss_data *d, char **out, size_t *len, lf_err *err);

/* Render and write to path atomically. */
lf_status lf_plot_loss_svg(const char *path, const lf_plot_loss_data *d, lf_err *err);

#ifdef __cplusplus
}
#endif
#endif
