/* metrics.c - Prometheus counters and histograms for the server, rendered as text exposition format 0.0.4.
 *
 * State: a table of routes (each with its request-duration histogram and a small list of (code, count)),
 * a table of rejection reasons, scalar counters, and two unlabelled histograms (TTFT, TPOT). Histograms keep
 * per-bucket (non-cumulative) counts; render accumulates them. Everything sits behind one mutex; the
 * tables grow by doubling (an allocation failure drops that one observation: metrics never fail a request).
 * Bucket bounds follow vLLM's (vllm/engine/metrics.py) so dashboards built for it read ours. */
#include "serve/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* vLLM's histogram buckets (seconds). */
static const double TTFT_BUCKETS[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                                      1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
static const double TPOT_BUCKETS[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                                      0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
static const double E2E_BUCKETS[] = {0.3,  0.5,  0.8,  1.0,  1.5,  2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
                                     30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
#define NB_TTFT (sizeof TTFT_BUCKETS / sizeof TTFT_BUCKETS[0])
#define NB_TPOT (sizeof TPOT_BUCKETS / sizeof TPOT_BUCKETS[0])
#define NB_E2E (sizeof E2E_BUCKETS / sizeof E2E_BUCKETS[0])
#define NB_MAX 32
_Static_assert(NB_TTFT <= NB_MAX && NB_TPOT <= NB_MAX && NB_E2E <= NB_MAX, "hist.n holds NB_MAX+1 buckets");

#define LABEL_MAX 64 /* route / reason labels are cut to this many bytes */

typedef struct hist {
    uint64_t n[NB_MAX + 1]; /* [nb + 1]: observations in (bound[i-1], bound[i]]; the last is (bound[nb-1], +Inf) */
    double sum;
    uint64_t count;
} hist;

typedef struct code_count {
    int code;
    uint64_t n;
} code_count;

typedef struct route_stat {
    char name[LABEL_MAX + 1];
    code_count *codes; /* owned [n_codes] */
    size_t n_codes, cap_codes;
    hist dur;          /* request duration of this route */
} route_stat;

typedef struct reason_stat {
    char name[LABEL_MAX + 1];
    uint64_t n;
} reason_stat;

struct lf_metrics {
    pthread_mutex_t mu;
    route_stat *routes; /* owned [n_routes] */
    size_t n_routes, cap_routes;
    reason_stat *reasons; /* owned [n_reasons] */
    size_t n_reasons, cap_reasons;
    uint64_t prompt_tokens, generated_tokens, preemptions;
    hist ttft, tpot;
};

lf_metrics *lf_metrics_create(void) {
    lf_metrics *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    if (pthread_mutex_init(&m->mu, NULL)) {
        free(m);
        return NULL;
    }
    return m;
}

void lf_metrics_free(lf_metrics *m) {
    if (!m) return;
    for (size_t i = 0; i < m->n_routes; i++) free(m->routes[i].codes);
    free(m->routes);
    free(m->reasons);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

/* Grow *arr (elements of size sz) so that one more fits; 0 on success. */
static int grow(void **arr, size_t *cap, size_t n, size_t sz) {
    if (n < *cap) return 0;
    size_t nc = *cap ? *cap * 2 : 8;
    void *p = realloc(*arr, nc * sz);
    if (!p) return 1;
    *arr = p;
    *cap = nc;
    return 0;
}

/* dst [LABEL_MAX + 1] = src cut to LABEL_MAX bytes, never inside a UTF-8 sequence. */
static void label_copy(char *dst, const char *src) {
    if (!src || !*src) src = "other";
    size_t n = strlen(src);
    if (n > LABEL_MAX) {
        n = LABEL_MAX;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80) n--; /* src[n] would start the dropped part */
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static void hist_observe(hist *h, const double *bounds, size_t nb, double x) {
    if (isnan(x)) return;
    if (x < 0) x = 0; /* clock steps: a duration is never negative */
    size_t i = 0;
    while (i < nb && x > bounds[i]) i++; /* Prometheus buckets are upper-inclusive (le) */
    h->n[i]++;
    h->sum += x;
    h->count++;
}

void lf_metrics_request(lf_metrics *m, const char *route, int status, double seconds) {
    if (!m) return;
    char key[LABEL_MAX + 1];
    label_copy(key, route);
    pthread_mutex_lock(&m->mu);
    route_stat *r = NULL;
    for (size_t i = 0; i < m->n_routes && !r; i++)
        if (!strcmp(m->routes[i].name, key)) r = &m->routes[i];
    if (!r) {
        if (grow((void **)&m->routes, &m->cap_routes, m->n_routes, sizeof *m->routes)) goto done;
        r = &m->routes[m->n_routes++];
        memset(r, 0, sizeof *r);
        memcpy(r->name, key, sizeof key);
    }
    code_count *c = NULL;
    for (size_t i = 0; i < r->n_codes && !c; i++)
        if (r->codes[i].code == status) c = &r->codes[i];
    if (!c) {
        if (grow((void **)&r->codes, &r->cap_codes, r->n_codes, sizeof *r->codes)) goto done;
        c = &r->codes[r->n_codes++];
        c->code = status;
        c->n = 0;
    }
    c->n++;
    if (seconds >= 0) hist_observe(&r->dur, E2E_BUCKETS, NB_E2E, seconds);
done:
    pthread_mutex_unlock(&m->mu);
}

void lf_metrics_tokens(lf_metrics *m, int64_t prompt_tokens, int64_t generated_tokens) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    if (prompt_tokens > 0) m->prompt_tokens += (uint64_t)prompt_tokens;
    if (generated_tokens > 0) m->generated_tokens += (uint64_t)generated_tokens;
    pthread_mutex_unlock(&m->mu);
}

void lf_metrics_ttft(lf_metrics *m, double seconds) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    hist_observe(&m->ttft, TTFT_BUCKETS, NB_TTFT, seconds);
    pthread_mutex_unlock(&m->mu);
}

void lf_metrics_tpot(lf_metrics *m, double seconds) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    hist_observe(&m->tpot, TPOT_BUCKETS, NB_TPOT, seconds);
    pthread_mutex_unlock(&m->mu);
}

void lf_metrics_preemption(lf_metrics *m, int64_t n) {
    if (!m || n <= 0) return;
    pthread_mutex_lock(&m->mu);
    m->preemptions += (uint64_t)n;
    pthread_mutex_unlock(&m->mu);
}

void lf_metrics_rejected(lf_metrics *m, const char *reason) {
    if (!m) return;
    char key[LABEL_MAX + 1];
    label_copy(key, reason);
    pthread_mutex_lock(&m->mu);
    reason_stat *r = NULL;
    for (size_t i = 0; i < m->n_reasons && !r; i++)
        if (!strcmp(m->reasons[i].name, key)) r = &m->reasons[i];
    if (!r) {
        if (grow((void **)&m->reasons, &m->cap_reasons, m->n_reasons, sizeof *m->reasons)) goto done;
        r = &m->reasons[m->n_reasons++];
        memcpy(r->name, key, sizeof key);
        r->n = 0;
    }
    r->n++;
done:
    pthread_mutex_unlock(&m->mu);
}

/* ---------------------------------------------------------------------------------------------------- */
/* rendering                                                                                             */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t nc = b->cap * 2;
        while (nc - b->len <= (size_t)n) nc *= 2;
        char *q = realloc(b->p, nc);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = nc;
    }
}

/* Label value with the exposition format's escapes (backslash, double quote, newline). */
static void sb_label(sbuf *b, const char *s) {
    for (; *s; s++) {
        if (*s == '\\') sb_printf(b, "\\\\");
        else if (*s == '"') sb_printf(b, "\\\"");
        else if (*s == '\n') sb_printf(b, "\\n");
        else sb_printf(b, "%c", *s);
    }
}

/* A float as Python's client prints it (repr): the shortest digits that read back exactly, positional for
 * 1e-4 <= |x| < 1e16 with ".0" on integral values ("0.001", "10.0", "2560.0"), else exponent form ("1e-05");
 * "+Inf"/"-Inf"/"NaN". */
static void fmt_float(char *buf, size_t cap, double x) {
    if (isnan(x)) {
        snprintf(buf, cap, "NaN");
        return;
    }
    if (isinf(x)) {
        snprintf(buf, cap, x > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (x == 0) {
        snprintf(buf, cap, signbit(x) ? "-0.0" : "0.0");
        return;
    }
    int prec = 1;
    for (; prec < 17; prec++) {
        snprintf(buf, cap, "%.*e", prec - 1, x);
        if (strtod(buf, NULL) == x) break;
    }
    snprintf(buf, cap, "%.*e", prec - 1, x);
    const char *e = strchr(buf, 'e');
    int exp10 = e ? atoi(e + 1) : 0;
    if (exp10 >= -4 && exp10 < 16) {
        int decimals = prec - 1 - exp10;
        snprintf(buf, cap, "%.*f", decimals > 0 ? decimals : 0, x);
        if (!strchr(buf, '.')) {
            size_t l = strlen(buf);
            if (l + 3 <= cap) memcpy(buf + l, ".0", 3);
        }
    } else {
        snprintf(buf, cap, "%.*g", prec, x);
    }
}

static void head(sbuf *b, const char *name, const char *type, const char *help) {
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Samples of one histogram; labels: "" or `route="x",` style prefix (already escaped, ending with ','). */
static void hist_samples(sbuf *b, const char *name, const char *labels, const hist *h, const double *bounds,
                         size_t nb) {
    uint64_t cum = 0;
    char f[40];
    for (size_t i = 0; i <= nb; i++) {
        cum += h->n[i];
        fmt_float(f, sizeof f, i < nb ? bounds[i] : INFINITY);
        sb_printf(b, "%s_bucket{%sle=\"%s\"} %llu\n", name, labels, f, (unsigned long long)cum);
    }
    fmt_float(f, sizeof f, h->sum);
    size_t ll = strlen(labels);
    if (ll) { /* drop the trailing ',' for _sum / _count */
        sb_printf(b, "%s_sum{%.*s} %s\n", name, (int)(ll - 1), labels, f);
        sb_printf(b, "%s_count{%.*s} %llu\n", name, (int)(ll - 1), labels, (unsigned long long)h->count);
    } else {
        sb_printf(b, "%s_sum %s\n", name, f);
        sb_printf(b, "%s_count %llu\n", name, (unsigned long long)h->count);
    }
}

static int cmp_route(const void *a, const void *b) {
    return strcmp(((const route_stat *)a)->name, ((const route_stat *)b)->name);
}
static int cmp_reason(const void *a, const void *b) {
    return strcmp(((const reason_stat *)a)->name, ((const reason_stat *)b)->name);
}
static int cmp_code(const void *a, const void *b) {
    int x = ((const code_count *)a)->code, y = ((const code_count *)b)->code;
    return (x > y) - (x < y);
}

char *lf_metrics_render(lf_metrics *m, const lf_metrics_gauges *g, size_t *len) {
    if (len) *len = 0;
    if (!m) return NULL;
    sbuf b = {malloc(8192), 0, 8192, 0};
    if (!b.p) return NULL;
    b.p[0] = '\0';
    pthread_mutex_lock(&m->mu);
    /* sorted output: stable across scrapes (tables keep insertion order, so sort in place: cheap, tiny) */
    if (m->n_routes) qsort(m->routes, m->n_routes, sizeof *m->routes, cmp_route);
    for (size_t i = 0; i < m->n_routes; i++)
        if (m->routes[i].n_codes) qsort(m->routes[i].codes, m->routes[i].n_codes, sizeof *m->routes[i].codes, cmp_code);
    if (m->n_reasons) qsort(m->reasons, m->n_reasons, sizeof *m->reasons, cmp_reason);

    head(&b, "loraforge_requests_total", "counter", "HTTP requests answered, by route and status code.");
    for (size_t i = 0; i < m->n_routes; i++) {
        const route_stat *r = &m->routes[i];
        for (size_t j = 0; j < r->n_codes; j++) {
            sb_printf(&b, "loraforge_requests_total{route=\"");
            sb_label(&b, r->name);
            sb_printf(&b, "\",code=\"%d\"} %llu\n", r->codes[j].code, (unsigned long long)r->codes[j].n);
        }
    }
    head(&b, "loraforge_prompt_tokens_total", "counter", "Prompt tokens processed.");
    sb_printf(&b, "loraforge_prompt_tokens_total %llu\n", (unsigned long long)m->prompt_tokens);
    head(&b, "loraforge_generation_tokens_total", "counter", "Tokens generated.");
    sb_printf(&b, "loraforge_generation_tokens_total %llu\n", (unsigned long long)m->generated_tokens);
    head(&b, "loraforge_preemptions_total", "counter",
         "Sequences preempted (KV cache full) and later recomputed.");
    sb_printf(&b, "loraforge_preemptions_total %llu\n", (unsigned long long)m->preemptions);
    head(&b, "loraforge_rejected_total", "counter", "Requests rejected before generation, by reason.");
    for (size_t i = 0; i < m->n_reasons; i++) {
        sb_printf(&b, "loraforge_rejected_total{reason=\"");
        sb_label(&b, m->reasons[i].name);
        sb_printf(&b, "\"} %llu\n", (unsigned long long)m->reasons[i].n);
    }

    if (g) {
        head(&b, "loraforge_queue_depth", "gauge", "Sequences waiting for admission.");
        sb_printf(&b, "loraforge_queue_depth %lld\n", (long long)g->queue_depth);
        head(&b, "loraforge_running_sequences", "gauge", "Sequences in the running batch.");
        sb_printf(&b, "loraforge_running_sequences %lld\n", (long long)g->running);
        head(&b, "loraforge_kv_blocks_used", "gauge", "KV cache blocks in use.");
        sb_printf(&b, "loraforge_kv_blocks_used %lld\n", (long long)g->kv_blocks_used);
        head(&b, "loraforge_kv_blocks_free", "gauge", "KV cache blocks free.");
        sb_printf(&b, "loraforge_kv_blocks_free %lld\n", (long long)g->kv_blocks_free);
        head(&b, "loraforge_adapters_loaded", "gauge", "LoRA adapters loaded.");
        sb_printf(&b, "loraforge_adapters_loaded %lld\n", (long long)g->adapters_loaded);
        head(&b, "loraforge_ready", "gauge", "1 once the model is loaded and the server answers requests.");
        sb_printf(&b, "loraforge_ready %d\n", g->ready ? 1 : 0);
    }

    head(&b, "loraforge_time_to_first_token_seconds", "histogram", "Time from arrival to the first generated token.");
    hist_samples(&b, "loraforge_time_to_first_token_seconds", "", &m->ttft, TTFT_BUCKETS, NB_TTFT);
    head(&b, "loraforge_time_per_output_token_seconds", "histogram",
         "Mean time per generated token after the first, per sequence.");
    hist_samples(&b, "loraforge_time_per_output_token_seconds", "", &m->tpot, TPOT_BUCKETS, NB_TPOT);
    head(&b, "loraforge_request_duration_seconds", "histogram", "Time from arrival to the last byte, by route.");
    for (size_t i = 0; i < m->n_routes; i++) {
        const route_stat *r = &m->routes[i];
        if (!r->dur.count) continue;
        sbuf lab = {malloc(2 * LABEL_MAX + 16), 0, 2 * LABEL_MAX + 16, 0};
        if (!lab.p) {
            b.oom = 1;
            break;
        }
        sb_printf(&lab, "route=\"");
        sb_label(&lab, r->name);
        sb_printf(&lab, "\",");
        if (lab.oom) b.oom = 1;
        else hist_samples(&b, "loraforge_request_duration_seconds", lab.p, &r->dur, E2E_BUCKETS, NB_E2E);
        free(lab.p);
    }
    pthread_mutex_unlock(&m->mu);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    if (len) *len = b.len;
    return b.p;
}
