/* plot.c - training_loss.svg renderer: finite-point filtering, LLaMA-Factory smoothing, nice/log axes, SVG text.
 *
 * Coordinates: the figure is 640 x 480 px; the plot area is [PX0, PX1] x [PY0, PY1] (y grows downward). Data
 * values map linearly (or through log10) with half-scaled differences, (v/2 - lo/2) / (hi/2 - lo/2), so no
 * intermediate overflows for any finite input. */
#include "finetune/plot.h"

#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h" // defines: lf_file_write_atomic

#define FIG_W 640
#define FIG_H 480
#define PX0 80.0
#define PX1 610.0
#define PY0 50.0
#define PY1 410.0
#define MAX_TICKS 32
#define COLOR_TRAIN "#1f77b4" /* matplotlib C0, as LLaMA-Factory */
#define COLOR_EVAL "#ff7f0e"  /* matplotlib C1 */

void lf_plot_smooth(const double *in, double *out, int64_t n) {
    if (n <= 0) return;
    /* weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(scalars))) - 0.5) */
    double e = exp(-0.05 * (double)n);
    double sig = 1.0 / (1.0 + e);
    double weight = 1.8 * (sig - 0.5);
    double omw = 1.0 - weight;
    double last = in[0];
    for (int64_t i = 0; i < n; i++) {
        double a = last * weight; /* smoothed_val = last * weight + (1 - weight) * next_val */
        double b = omw * in[i];
        double s = a + b;
        out[i] = s;
        last = s;
    }
}

/* ---- growable text buffer; oom sticks ---- */
typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = 1;
        return;
    }
    if (b->p && (size_t)n < b->cap - b->len) {
        b->len += (size_t)n;
        return;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + (size_t)n + 1) cap *= 2;
    char *np = realloc(b->p, cap);
    if (!np) {
        b->oom = 1;
        return;
    }
    b->p = np;
    b->cap = cap;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void sb_escaped(sbuf *b, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '&': sb_printf(b, "&amp;"); break;
        case '<': sb_printf(b, "&lt;"); break;
        case '>': sb_printf(b, "&gt;"); break;
        case '"': sb_printf(b, "&quot;"); break;
        case '\'': sb_printf(b, "&apos;"); break;
        default:
            /* XML 1.0 forbids most control characters: drop them */
            if ((unsigned char)*s >= 0x20 || *s == '\t' || *s == '\n') sb_printf(b, "%c", *s);
        }
    }
}

/* ---- axes ---- */
typedef struct axis {
    double lo, hi;            /* data range shown (log10 of the data when log) */
    int log;                  /* values are log10(data) */
    int integer;              /* ticks at whole numbers only (steps) */
    int nticks;
    double tick[MAX_TICKS];   /* in axis units */
    char label[MAX_TICKS][40];
} axis;

static double clamp_finite(double x) { return x > DBL_MAX ? DBL_MAX : (x < -DBL_MAX ? -DBL_MAX : x); }

/* 1, 2, 5 x 10^k at or above raw (raw > 0, finite) */
static double nice_step(double raw) {
    double mag = pow(10.0, floor(log10(raw)));
    if (!(mag > 0.0) || isinf(mag)) return raw;
    double r = raw / mag;
    double m = r <= 1.0 ? 1.0 : r <= 2.0 ? 2.0 : r <= 5.0 ? 5.0 : 10.0;
    double s = m * mag;
    return isfinite(s) ? s : raw;
}

static void axis_setup(axis *a, double lo, double hi, int have_data) {
    if (!have_data) {
        lo = 0.0;
        hi = 1.0;
    }
    double mid = lo * 0.5 + hi * 0.5;
    double half = hi * 0.5 - lo * 0.5;
    if (!(half > fabs(mid) * 1e-9) || half == 0.0) { /* constant (or numerically constant) series */
        double pad = fabs(mid) * 0.05;
        if (a->integer && pad < 1.0) pad = 1.0;
        if (!(pad > 0.0)) pad = a->log ? 0.5 : 1.0;
        lo = clamp_finite(mid - pad);
        hi = clamp_finite(mid + pad);
    } else { /* 5% margins, as matplotlib */
        double pad = half * 0.1;
        lo = clamp_finite(lo - pad);
        hi = clamp_finite(hi + pad);
    }
    a->lo = lo;
    a->hi = hi;
    half = hi * 0.5 - lo * 0.5;
    double step = nice_step(half / 3.0); /* ~6 intervals over the span */
    if ((a->integer || a->log) && step < 1.0) step = 1.0;
    a->nticks = 0;
    if (!(step > 0.0) || !isfinite(step)) return; /* a span of a few subnormals: no ticks */
    double k0 = ceil(lo / step), k1 = floor(hi / step);
    double top = fmax(fabs(lo), fabs(hi));
    int digits = (int)(floor(log10(top)) - floor(log10(step))) + 1;
    if (digits < 1) digits = 1;
    if (digits > 17) digits = 17;
    for (int i = 0; i < MAX_TICKS; i++) {
        double k = k0 + (double)i;
        if (k > k1) break;
        double v = k * step;
        if (fabs(v) < step * 1e-9) v = 0.0; /* no "-2.7e-17" for zero */
        if (v < lo || v > hi) continue;
        char *lab = a->label[a->nticks];
        if (a->log) snprintf(lab, sizeof a->label[0], "%g", pow(10.0, v));
        else if (a->integer && fabs(v) < 1e15) snprintf(lab, sizeof a->label[0], "%.0f", v);
        else snprintf(lab, sizeof a->label[0], "%.*g", digits, v);
        a->tick[a->nticks++] = v;
    }
}

/* axis units -> fraction of the axis length in [0, 1] */
static double axis_frac(const axis *a, double v) {
    double den = a->hi * 0.5 - a->lo * 0.5;
    return (v * 0.5 - a->lo * 0.5) / den;
}
static double map_x(const axis *a, double v) { return PX0 + axis_frac(a, v) * (PX1 - PX0); }
static double map_y(const axis *a, double v) { return PY1 - axis_frac(a, v) * (PY1 - PY0); }
static double ytrans(const axis *a, double v) { return a->log ? log10(v) : v; }

/* ---- series ---- */
static void path(sbuf *b, const axis *ax, const axis *ay, const double *x, const double *y, int64_t n, const char *color,
                 double opacity, double width, const char *cls) {
    if (n <= 0) return;
    sb_printf(b, "<path class=\"%s\" clip-path=\"url(#plotarea)\" fill=\"none\" stroke=\"%s\" stroke-opacity=\"%g\" "
              "stroke-width=\"%g\" stroke-linejoin=\"round\" d=\"", cls, color, opacity, width);
    for (int64_t i = 0; i < n; i++)
        sb_printf(b, "%s%.2f %.2f", i ? " L" : "M", map_x(ax, x[i]), map_y(ay, ytrans(ay, y[i])));
    sb_printf(b, "\"/>\n");
}

static void markers(sbuf *b, const axis *ax, const axis *ay, const double *x, const double *y, int64_t n, const char *color,
                    const char *cls) {
    for (int64_t i = 0; i < n; i++)
        sb_printf(b, "<circle class=\"%s\" cx=\"%.2f\" cy=\"%.2f\" r=\"3\" fill=\"%s\"/>\n", cls, map_x(ax, x[i]),
                  map_y(ay, ytrans(ay, y[i])), color);
}

/* How much of a series falls inside box [x0, x1] x [y0, y1] (pixels): points, plus 3 samples inside each segment
 * while the series is short enough that segments are long. */
static int64_t box_hits(const axis *ax, const axis *ay, const double *x, const double *y, int64_t n, double x0, double x1,
                        double y0, double y1) {
    int64_t hits = 0;
    double px_prev = 0, py_prev = 0;
    for (int64_t i = 0; i < n; i++) {
        double px = map_x(ax, x[i]), py = map_y(ay, ytrans(ay, y[i]));
        int samples = (i > 0 && n <= 2000) ? 4 : 1;
        for (int k = 1; k <= samples; k++) {
            double f = (double)k / samples;
            double qx = px_prev + (px - px_prev) * f, qy = py_prev + (py - py_prev) * f;
            if (samples == 1) qx = px, qy = py;
            hits += qx >= x0 && qx <= x1 && qy >= y0 && qy <= y1;
        }
        px_prev = px, py_prev = py;
    }
    return hits;
}

/* keep the finite (x, y) pairs; returns how many were dropped */
static int64_t finite_pairs(const int64_t *steps, const double *vals, int64_t n, double *x, double *y, int64_t *kept) {
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(vals[i])) continue;
        x[k] = (double)steps[i];
        y[k] = vals[i];
        k++;
    }
    *kept = k;
    return n - k;
}

lf_status lf_plot_loss_svg_render(const lf_plot_loss_data *d, char **out, size_t *len, lf_err *err) {
    lf_status st = LF_OK;
    sbuf b = {0};
    double *tx = NULL, *ty = NULL, *ts = NULL, *ex = NULL, *ey = NULL;
    if (!d || !out || !len) return lf_err_set(err, LF_EINVAL, "plot: NULL argument");
    *out = NULL;
    *len = 0;
    if (d->n < 0 || d->n_eval < 0 || (d->n > 0 && (!d->steps || !d->loss)) ||
        (d->n_eval > 0 && (!d->eval_steps || !d->eval_loss)))
        return lf_err_set(err, LF_EINVAL, "plot: bad series (n = %" PRId64 ", n_eval = %" PRId64 ", or NULL arrays)", d->n,
                          d->n_eval);
    size_t nt_cap = (size_t)(d->n > 0 ? d->n : 1), ne_cap = (size_t)(d->n_eval > 0 ? d->n_eval : 1);
    tx = malloc(nt_cap * sizeof *tx);
    ty = malloc(nt_cap * sizeof *ty);
    ts = malloc(nt_cap * sizeof *ts);
    ex = malloc(ne_cap * sizeof *ex);
    ey = malloc(ne_cap * sizeof *ey);
    if (!tx || !ty || !ts || !ex || !ey) {
        st = lf_err_set(err, LF_ENOMEM, "plot: out of memory for %" PRId64 " + %" PRId64 " points", d->n, d->n_eval);
        goto fail;
    }
    int64_t nt, ne;
    int64_t skipped = finite_pairs(d->steps, d->loss, d->n, tx, ty, &nt);
    skipped += finite_pairs(d->eval_steps, d->eval_loss, d->n_eval, ex, ey, &ne);
    lf_plot_smooth(ty, ts, nt);

    /* ranges */
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    for (int64_t i = 0; i < nt; i++) {
        xlo = fmin(xlo, tx[i]), xhi = fmax(xhi, tx[i]);
        ylo = fmin(ylo, ty[i]), yhi = fmax(yhi, ty[i]);
    }
    for (int64_t i = 0; i < ne; i++) {
        xlo = fmin(xlo, ex[i]), xhi = fmax(xhi, ex[i]);
        ylo = fmin(ylo, ey[i]), yhi = fmax(yhi, ey[i]);
    }
    int have = nt + ne > 0;
    axis ax = {.integer = 1}, ay = {0};
    ay.log = have && ylo > 0.0 && yhi / ylo >= 1e4;
    axis_setup(&ax, xlo, xhi, have);
    if (ay.log) axis_setup(&ay, log10(ylo), log10(yhi), have);
    else axis_setup(&ay, ylo, yhi, have);

    /* document */
    sb_printf(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    sb_printf(&b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
              "font-family=\"DejaVu Sans, Arial, Helvetica, sans-serif\" font-size=\"12\">\n", FIG_W, FIG_H, FIG_W, FIG_H);
    sb_printf(&b, "<title>");
    sb_escaped(&b, d->title ? d->title : "training loss");
    sb_printf(&b, "</title>\n");
    sb_printf(&b, "<defs><clipPath id=\"plotarea\"><rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/></clipPath></defs>\n",
              PX0, PY0, PX1 - PX0, PY1 - PY0);
    sb_printf(&b, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    sb_printf(&b, "<text class=\"title\" x=\"%.1f\" y=\"30\" text-anchor=\"middle\" font-size=\"15\">", (PX0 + PX1) / 2);
    sb_escaped(&b, d->title ? d->title : "training loss");
    sb_printf(&b, "</text>\n");

    /* grid + ticks + labels */
    sb_printf(&b, "<g class=\"grid\" stroke=\"#e0e0e0\" stroke-width=\"1\">\n");
    for (int i = 0; i < ax.nticks; i++) {
        double x = map_x(&ax, ax.tick[i]);
        sb_printf(&b, "<line x1=\"%.2f\" y1=\"%.1f\" x2=\"%.2f\" y2=\"%.1f\"/>\n", x, PY0, x, PY1);
    }
    for (int i = 0; i < ay.nticks; i++) {
        double y = map_y(&ay, ay.tick[i]);
        sb_printf(&b, "<line x1=\"%.1f\" y1=\"%.2f\" x2=\"%.1f\" y2=\"%.2f\"/>\n", PX0, y, PX1, y);
    }
    sb_printf(&b, "</g>\n");
    sb_printf(&b, "<g class=\"xaxis\" stroke=\"black\" stroke-width=\"1\">\n");
    for (int i = 0; i < ax.nticks; i++) {
        double x = map_x(&ax, ax.tick[i]);
        sb_printf(&b, "<line x1=\"%.2f\" y1=\"%.1f\" x2=\"%.2f\" y2=\"%.1f\"/>\n", x, PY1, x, PY1 + 5);
        sb_printf(&b, "<text x=\"%.2f\" y=\"%.1f\" text-anchor=\"middle\" stroke=\"none\">%s</text>\n", x, PY1 + 19,
                  ax.label[i]);
    }
    sb_printf(&b, "</g>\n<g class=\"yaxis\" stroke=\"black\" stroke-width=\"1\">\n");
    for (int i = 0; i < ay.nticks; i++) {
        double y = map_y(&ay, ay.tick[i]);
        sb_printf(&b, "<line x1=\"%.1f\" y1=\"%.2f\" x2=\"%.1f\" y2=\"%.2f\"/>\n", PX0 - 5, y, PX0, y);
        sb_printf(&b, "<text x=\"%.1f\" y=\"%.2f\" text-anchor=\"end\" dy=\"0.35em\" stroke=\"none\">%s</text>\n", PX0 - 8,
                  y, ay.label[i]);
    }
    sb_printf(&b, "</g>\n");
    sb_printf(&b, "<rect class=\"frame\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"black\"/>\n",
              PX0, PY0, PX1 - PX0, PY1 - PY0);
    sb_printf(&b, "<text class=\"xlabel\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"13\">step</text>\n",
              (PX0 + PX1) / 2, PY1 + 45);
    sb_printf(&b, "<text class=\"ylabel\" x=\"22\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"13\" "
              "transform=\"rotate(-90 22 %.1f)\">%s</text>\n", (PY0 + PY1) / 2, (PY0 + PY1) / 2,
              ay.log ? "loss (log scale)" : "loss");

    /* data */
    if (!have) {
        sb_printf(&b, "<text class=\"nodata\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#808080\" "
                  "font-size=\"14\">no data</text>\n", (PX0 + PX1) / 2, (PY0 + PY1) / 2);
    }
    path(&b, &ax, &ay, tx, ty, nt, COLOR_TRAIN, 0.4, 1.5, "original");
    path(&b, &ax, &ay, tx, ts, nt, COLOR_TRAIN, 1.0, 2.0, "smoothed");
    if (nt == 1) markers(&b, &ax, &ay, tx, ty, nt, COLOR_TRAIN, "original-marker");
    path(&b, &ax, &ay, ex, ey, ne, COLOR_EVAL, 1.0, 1.5, "eval");
    if (ne <= 200) markers(&b, &ax, &ay, ex, ey, ne, COLOR_EVAL, "eval-marker");

    /* legend (top right, inside the plot area) */
    int entries = (nt > 0 ? 2 : 0) + (ne > 0 ? 1 : 0);
    if (entries) {
        /* the corner the data crosses least (matplotlib's loc="best" in spirit); top right on ties */
        const double bw = 120, bh = 8 + 18 * entries;
        const double cx[4] = {PX1 - 8 - bw, PX0 + 8, PX1 - 8 - bw, PX0 + 8}, cy[4] = {PY0 + 8, PY0 + 8, PY1 - 8 - bh, PY1 - 8 - bh};
        int best = 0;
        int64_t best_hits = -1;
        for (int c = 0; c < 4; c++) {
            int64_t h = box_hits(&ax, &ay, tx, ty, nt, cx[c], cx[c] + bw, cy[c], cy[c] + bh) +
                        box_hits(&ax, &ay, tx, ts, nt, cx[c], cx[c] + bw, cy[c], cy[c] + bh) +
                        box_hits(&ax, &ay, ex, ey, ne, cx[c], cx[c] + bw, cy[c], cy[c] + bh);
            if (best_hits < 0 || h < best_hits) best = c, best_hits = h;
        }
        double lx = cx[best], ly = cy[best];
        sb_printf(&b, "<g class=\"legend\">\n<rect x=\"%.1f\" y=\"%.1f\" width=\"%.0f\" height=\"%.0f\" fill=\"white\" "
                  "fill-opacity=\"0.85\" stroke=\"#c0c0c0\" rx=\"3\"/>\n", lx, ly, bw, bh);
        int row = 0;
        const char *names[3] = {"original", "smoothed", "eval"};
        const char *colors[3] = {COLOR_TRAIN, COLOR_TRAIN, COLOR_EVAL};
        const double op[3] = {0.4, 1.0, 1.0};
        for (int e = 0; e < 3; e++) {
            if ((e < 2 && nt == 0) || (e == 2 && ne == 0)) continue;
            double y = ly + 13 + 18 * row++;
            sb_printf(&b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-opacity=\"%g\" "
                      "stroke-width=\"2\"/>\n", lx + 8, y, lx + 36, y, colors[e], op[e]);
            sb_printf(&b, "<text x=\"%.1f\" y=\"%.1f\" dy=\"0.35em\">%s</text>\n", lx + 44, y, names[e]);
        }
        sb_printf(&b, "</g>\n");
    }
    if (skipped > 0)
        sb_printf(&b, "<text class=\"note\" x=\"8\" y=\"%d\" font-size=\"11\" fill=\"#a00000\">%" PRId64
                  " non-finite value%s not plotted</text>\n", FIG_H - 8, skipped, skipped == 1 ? "" : "s");
    sb_printf(&b, "</svg>\n");
    if (b.oom) {
        st = lf_err_set(err, LF_ENOMEM, "plot: out of memory rendering %" PRId64 " points", d->n + d->n_eval);
        goto fail;
    }
    free(tx), free(ty), free(ts), free(ex), free(ey);
    *out = b.p;
    *len = b.len;
    return LF_OK;
fail:
    free(tx), free(ty), free(ts), free(ex), free(ey);
    free(b.p);
    return st;
}

lf_status lf_plot_loss_svg(const char *path, const lf_plot_loss_data *d, lf_err *err) {
    lf_status st = LF_OK;
    char *svg = NULL;
    size_t len = 0;
    if (!path) return lf_err_set(err, LF_EINVAL, "plot: NULL path");
    LF_TRY(lf_plot_loss_svg_render(d, &svg, &len, err));
    LF_TRY(lf_file_write_atomic(path, svg, len, err));
    free(svg);
    return LF_OK;
fail:
    free(svg);
    return lf_err_wrap(err, st, "%s: writing loss plot", path);
}
