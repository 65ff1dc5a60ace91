/* test_metrics.c - serve/metrics: the rendered text parses as Prometheus exposition format 0.0.4 (every line
 * a HELP, TYPE or well-formed sample; each family typed once before its samples; no duplicate series),
 * histogram buckets are cumulative and end at +Inf == _count, label escaping round-trips, and counts are
 * exact after concurrent updates from 4 threads (checked against counts computed here from the same
 * seeded values). Seed from LF_TEST_SEED or time, printed. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/rng.h"
#include "serve/metrics.h"

static int passed, failed;
#define CHECK(cond, ...)                                \
    do {                                                \
        if (cond) {                                     \
            passed++;                                   \
        } else {                                        \
            failed++;                                   \
            printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            printf(__VA_ARGS__);                        \
            printf("\n");                               \
        }                                               \
    } while (0)

/* ---- a small exposition-format parser ---- */

#define MAX_SAMPLES 4096
#define MAX_FAMILIES 64

typedef struct sample {
    char name[128];
    char labels[512]; /* "k=v;" pairs in order, unescaped, le left out */
    char all_labels[512];
    int has_le;
    double le;
    double value;
} sample;

typedef struct family {
    char name[128];
    char type[16];
    int has_help;
} family;

typedef struct parsed {
    sample s[MAX_SAMPLES];
    int n;
    family f[MAX_FAMILIES];
    int nf;
    int errors;
} parsed;

static int name_char(char c, int first) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || (!first && c >= '0' && c <= '9');
}

/* Parse a metric or label name at *p into out; 0 when malformed. */
static int parse_name(const char **p, char *out, size_t cap, int metric) {
    size_t n = 0;
    const char *q = *p;
    if (!name_char(*q, 1) || (!metric && *q == ':')) return 0;
    while (name_char(*q, 0) && (metric || *q != ':')) {
        if (n + 1 >= cap) return 0;
        out[n++] = *q++;
    }
    out[n] = '\0';
    *p = q;
    return 1;
}

static int parse_value(const char *s, double *v) {
    if (!strcmp(s, "+Inf")) return *v = INFINITY, 1;
    if (!strcmp(s, "-Inf")) return *v = -INFINITY, 1;
    if (!strcmp(s, "NaN")) return *v = NAN, 1;
    char *end = NULL;
    *v = strtod(s, &end);
    return end != s && *end == '\0' && !strpbrk(s, "iInN");
}

static family *find_family(parsed *P, const char *name) {
    for (int i = 0; i < P->nf; i++)
        if (!strcmp(P->f[i].name, name)) return &P->f[i];
    return NULL;
}

/* The family a sample belongs to: its own name, or the histogram base of _bucket/_sum/_count. */
static family *family_of(parsed *P, const char *name, int *is_bucket) {
    *is_bucket = 0;
    family *f = find_family(P, name);
    if (f && strcmp(f->type, "histogram")) return f;
    static const char *suf[] = {"_bucket", "_sum", "_count"};
    for (int k = 0; k < 3; k++) {
        size_t n = strlen(name), l = strlen(suf[k]);
        if (n > l && !strcmp(name + n - l, suf[k])) {
            char base[128];
            snprintf(base, sizeof base, "%.*s", (int)(n - l), name);
            family *g = find_family(P, base);
            if (g && !strcmp(g->type, "histogram")) {
                *is_bucket = k == 0;
                return g;
            }
        }
    }
    return NULL;
}

static int QUIET; /* 1 while feeding the parser text that must fail */
#define PERR(...)                                      \
    do {                                               \
        P->errors++;                                   \
        if (QUIET) break;                              \
        printf("  parse error line %d: ", lineno);     \
        printf(__VA_ARGS__);                           \
        printf("\n");                                  \
    } while (0)

static void parse(const char *text, size_t len, parsed *P) {
    memset(P, 0, sizeof *P);
    int lineno = 0;
    if (len == 0 || text[len - 1] != '\n') {
        P->errors++;
        if (!QUIET) printf("  parse error: text does not end with a newline\n");
    }
    if (strlen(text) != len) PERR("length %zu but strlen %zu", len, strlen(text));
    const char *p = text;
    while (*p) {
        lineno++;
        const char *eol = strchr(p, '\n');
        if (!eol) eol = p + strlen(p);
        char line[2048];
        size_t ll = (size_t)(eol - p);
        if (ll >= sizeof line) {
            PERR("line too long");
            break;
        }
        memcpy(line, p, ll);
        line[ll] = '\0';
        p = *eol ? eol + 1 : eol;
        if (ll == 0) {
            PERR("empty line");
            continue;
        }
        if (line[0] == '#') {
            char kind[8], name[128];
            const char *q = line;
            if (!strncmp(q, "# HELP ", 7)) snprintf(kind, sizeof kind, "HELP"), q += 7;
            else if (!strncmp(q, "# TYPE ", 7)) snprintf(kind, sizeof kind, "TYPE"), q += 7;
            else {
                PERR("comment that is neither HELP nor TYPE: %s", line);
                continue;
            }
            if (!parse_name(&q, name, sizeof name, 1) || *q != ' ' || !q[1]) {
                PERR("bad %s line: %s", kind, line);
                continue;
            }
            q++;
            family *f = find_family(P, name);
            if (!f) {
                if (P->nf == MAX_FAMILIES) {
                    PERR("too many families");
                    continue;
                }
                f = &P->f[P->nf++];
                snprintf(f->name, sizeof f->name, "%s", name);
            }
            if (!strcmp(kind, "HELP")) {
                if (f->has_help) PERR("second HELP for %s", name);
                f->has_help = 1;
            } else {
                if (f->type[0]) PERR("second TYPE for %s", name);
                if (strcmp(q, "counter") && strcmp(q, "gauge") && strcmp(q, "histogram") && strcmp(q, "summary") &&
                    strcmp(q, "untyped"))
                    PERR("unknown type '%s'", q);
                for (int i = 0; i < P->n; i++) {
                    int b;
                    if (!strcmp(P->s[i].name, name) || (family_of(P, P->s[i].name, &b) == f)) PERR("TYPE after samples of %s", name);
                }
                snprintf(f->type, sizeof f->type, "%s", q);
            }
            continue;
        }
        if (P->n == MAX_SAMPLES) {
            PERR("too many samples");
            break;
        }
        sample *s = &P->s[P->n];
        memset(s, 0, sizeof *s);
        const char *q = line;
        if (!parse_name(&q, s->name, sizeof s->name, 1)) {
            PERR("bad metric name: %s", line);
            continue;
        }
        if (*q == '{') {
            q++;
            int first = 1;
            while (*q != '}') {
                if (!first) {
                    if (*q != ',') break;
                    q++;
                }
                first = 0;
                char ln[128], lv[512];
                size_t n = 0;
                if (!parse_name(&q, ln, sizeof ln, 0) || *q != '=' || q[1] != '"') break;
                q += 2;
                while (*q && *q != '"') {
                    char c = *q++;
                    if (c == '\\') {
                        c = *q++;
                        if (c == 'n') c = '\n';
                        else if (c != '\\' && c != '"') {
                            n = sizeof lv;
                            break;
                        }
                    }
                    if (n + 1 >= sizeof lv) break;
                    lv[n++] = c;
                }
                if (*q != '"' || n + 1 >= sizeof lv) break;
                lv[n] = '\0';
                q++;
                size_t al = strlen(s->all_labels);
                snprintf(s->all_labels + al, sizeof s->all_labels - al, "%s=%s;", ln, lv);
                if (!strcmp(ln, "le")) {
                    if (s->has_le || !parse_value(lv, &s->le)) PERR("bad le '%s'", lv);
                    s->has_le = 1;
                } else {
                    size_t l2 = strlen(s->labels);
                    snprintf(s->labels + l2, sizeof s->labels - l2, "%s=%s;", ln, lv);
                }
            }
            if (*q != '}') {
                PERR("bad label set: %s", line);
                continue;
            }
            q++;
        }
        if (*q != ' ') {
            PERR("no space before the value: %s", line);
            continue;
        }
        q++;
        if (!parse_value(q, &s->value)) {
            PERR("bad value '%s': %s", q, line);
            continue;
        }
        int is_bucket = 0;
        family *f = family_of(P, s->name, &is_bucket);
        if (!f || !f->type[0]) PERR("sample %s has no TYPE before it", s->name);
        else if (is_bucket != s->has_le) PERR("le label %s on %s", s->has_le ? "unexpected" : "missing", s->name);
        for (int i = 0; i < P->n; i++)
            if (!strcmp(P->s[i].name, s->name) && !strcmp(P->s[i].all_labels, s->all_labels))
                PERR("duplicate series %s{%s}", s->name, s->all_labels);
        P->n++;
    }
}

/* Value of series name{labels} (labels as "k=v;" without le; le NAN = not a bucket), or NAN when absent. */
static double get(const parsed *P, const char *name, const char *labels, double le) {
    for (int i = 0; i < P->n; i++) {
        const sample *s = &P->s[i];
        if (strcmp(s->name, name) || strcmp(s->labels, labels)) continue;
        if (isnan(le) ? s->has_le : (!s->has_le || s->le != le)) continue;
        return s->value;
    }
    return NAN;
}

/* Every histogram series: le strictly increasing, counts non-decreasing, ends at +Inf equal to _count. */
static void check_histograms(const parsed *P, int *n_series) {
    *n_series = 0;
    for (int fi = 0; fi < P->nf; fi++) {
        const family *f = &P->f[fi];
        if (strcmp(f->type, "histogram")) continue;
        char bname[160], cname[160], sname[160];
        snprintf(bname, sizeof bname, "%s_bucket", f->name);
        snprintf(cname, sizeof cname, "%s_count", f->name);
        snprintf(sname, sizeof sname, "%s_sum", f->name);
        for (int i = 0; i < P->n; i++) {
            const sample *s = &P->s[i];
            if (strcmp(s->name, cname)) continue;
            (*n_series)++;
            double prev_le = -INFINITY, prev_v = 0;
            int nb = 0, order_ok = 1, last_inf = 0;
            for (int j = 0; j < P->n; j++) {
                const sample *b = &P->s[j];
                if (strcmp(b->name, bname) || strcmp(b->labels, s->labels)) continue;
                nb++;
                if (!(b->le > prev_le) || b->value < prev_v) order_ok = 0;
                prev_le = b->le;
                prev_v = b->value;
                last_inf = isinf(b->le) && b->le > 0;
            }
            CHECK(nb >= 2 && order_ok && last_inf, "%s{%s}: %d buckets, increasing le and cumulative counts %d, "
                  "+Inf last %d", f->name, s->labels, nb, order_ok, last_inf);
            CHECK(prev_v == s->value, "%s{%s}: +Inf bucket %g != _count %g", f->name, s->labels, prev_v, s->value);
            CHECK(!isnan(get(P, sname, s->labels, NAN)), "%s{%s}: no _sum", f->name, s->labels);
        }
    }
}

/* ---- tests ---- */

static const double TTFT_B[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                                1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
static const double E2E_B[] = {0.3,  0.5,  0.8,  1.0,  1.5,  2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
                               30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

static parsed P; /* large: static */

static void test_empty_and_gauges(void) {
    lf_metrics *m = lf_metrics_create();
    CHECK(m != NULL, "create");
    size_t len = 0;
    char *t = lf_metrics_render(m, NULL, &len);
    CHECK(t && len == strlen(t), "render empty");
    parse(t, len, &P);
    CHECK(P.errors == 0, "empty render parses (%d errors)", P.errors);
    CHECK(get(&P, "loraforge_prompt_tokens_total", "", NAN) == 0, "prompt tokens 0");
    CHECK(find_family(&P, "loraforge_queue_depth") == NULL, "no gauges without a snapshot");
    int ns;
    check_histograms(&P, &ns);
    CHECK(ns == 2, "ttft + tpot series without requests: %d", ns);
    CHECK(get(&P, "loraforge_time_to_first_token_seconds_bucket", "", INFINITY) == 0, "empty +Inf bucket 0");
    free(t);

    lf_metrics_gauges g = {.queue_depth = 3, .running = 7, .kv_blocks_used = 100, .kv_blocks_free = 28,
                           .adapters_loaded = 2, .ready = 1};
    t = lf_metrics_render(m, &g, &len);
    parse(t, len, &P);
    CHECK(P.errors == 0, "gauge render parses");
    const char *names[] = {"loraforge_queue_depth", "loraforge_running_sequences", "loraforge_kv_blocks_used",
                           "loraforge_kv_blocks_free", "loraforge_adapters_loaded", "loraforge_ready"};
    const double want[] = {3, 7, 100, 28, 2, 1};
    for (int i = 0; i < 6; i++) {
        family *f = find_family(&P, names[i]);
        CHECK(f && !strcmp(f->type, "gauge") && f->has_help, "%s typed gauge with help", names[i]);
        CHECK(get(&P, names[i], "", NAN) == want[i], "%s = %g want %g", names[i], get(&P, names[i], "", NAN), want[i]);
    }
    const char *counters[] = {"loraforge_requests_total", "loraforge_prompt_tokens_total",
                              "loraforge_generation_tokens_total", "loraforge_preemptions_total",
                              "loraforge_rejected_total"};
    for (int i = 0; i < 5; i++) {
        family *f = find_family(&P, counters[i]);
        CHECK(f && !strcmp(f->type, "counter") && f->has_help, "%s typed counter with help", counters[i]);
    }
    const char *hists[] = {"loraforge_time_to_first_token_seconds", "loraforge_time_per_output_token_seconds",
                           "loraforge_request_duration_seconds"};
    for (int i = 0; i < 3; i++) {
        family *f = find_family(&P, hists[i]);
        CHECK(f && !strcmp(f->type, "histogram") && f->has_help, "%s typed histogram with help", hists[i]);
    }
    free(t);
    lf_metrics_free(m);
    lf_metrics_free(NULL);
}

static void test_edges(void) {
    lf_metrics *m = lf_metrics_create();
    /* label escaping: quote, backslash, newline; long labels cut to 64 bytes; NULL -> "other" */
    lf_metrics_request(m, "we\"ird\\ro\nute", 200, 0.25);
    char longr[200];
    memset(longr, 'r', sizeof longr - 1);
    longr[sizeof longr - 1] = '\0';
    lf_metrics_request(m, longr, 500, -1.0); /* no duration */
    lf_metrics_request(m, NULL, 404, 0.3);   /* exactly on a bound: le is inclusive */
    lf_metrics_rejected(m, "queue_full");
    /* 63 ASCII bytes then a 2-byte UTF-8 letter: the cut at 64 must not split it */
    char utf[80];
    memset(utf, 'u', 63);
    memcpy(utf + 63, "\xc3\xa9xyz", 6);
    lf_metrics_rejected(m, utf);
    lf_metrics_ttft(m, NAN);  /* ignored */
    lf_metrics_ttft(m, -5.0); /* counted as 0 */
    lf_metrics_ttft(m, 1e9);  /* beyond every bound: only +Inf */
    lf_metrics_tpot(m, 0.1 + 0.2);                 /* 0.30000000000000004: _sum must read back exactly */
    lf_metrics_request(m, "tiny", 200, 1e-5);       /* exponent form "1e-05" */
    lf_metrics_tokens(m, -3, 4);
    lf_metrics_preemption(m, 0);
    size_t len;
    char *t = lf_metrics_render(m, NULL, &len);
    parse(t, len, &P);
    CHECK(P.errors == 0, "edge render parses (%d errors)", P.errors);
    CHECK(get(&P, "loraforge_requests_total", "route=we\"ird\\ro\nute;code=200;", NAN) == 1, "escaped label round-trips");
    char lab[256];
    snprintf(lab, sizeof lab, "route=%.64s;code=500;", longr);
    CHECK(get(&P, "loraforge_requests_total", lab, NAN) == 1, "long route cut to 64 bytes");
    CHECK(get(&P, "loraforge_requests_total", "route=other;code=404;", NAN) == 1, "NULL route is 'other'");
    snprintf(lab, sizeof lab, "route=%.64s;", longr);
    CHECK(isnan(get(&P, "loraforge_request_duration_seconds_count", lab, NAN)), "no duration series for seconds < 0");
    CHECK(get(&P, "loraforge_request_duration_seconds_bucket", "route=other;", 0.3) == 1, "0.3 falls in le=0.3");
    CHECK(get(&P, "loraforge_time_to_first_token_seconds_count", "", NAN) == 2, "NaN ignored: count %g",
          get(&P, "loraforge_time_to_first_token_seconds_count", "", NAN));
    CHECK(get(&P, "loraforge_time_to_first_token_seconds_bucket", "", 0.001) == 1, "negative counts as 0");
    CHECK(get(&P, "loraforge_time_to_first_token_seconds_bucket", "", 2560.0) == 1 &&
          get(&P, "loraforge_time_to_first_token_seconds_bucket", "", INFINITY) == 2, "huge value only in +Inf");
    CHECK(get(&P, "loraforge_prompt_tokens_total", "", NAN) == 0 && get(&P, "loraforge_generation_tokens_total", "", NAN) == 4,
          "negative token counts ignored");
    CHECK(get(&P, "loraforge_rejected_total", "reason=queue_full;", NAN) == 1, "rejected by reason");
    snprintf(lab, sizeof lab, "reason=%.63s;", utf);
    CHECK(get(&P, "loraforge_rejected_total", lab, NAN) == 1, "label cut before a UTF-8 sequence");
    /* the le bounds as printed: "0.001", "1.0", "+Inf" (Go/Python client style) */
    CHECK(strstr(t, "le=\"0.001\"") && strstr(t, "le=\"1.0\"") && strstr(t, "le=\"+Inf\"") && strstr(t, "le=\"2560.0\""),
          "le formatting");
    CHECK(get(&P, "loraforge_time_per_output_token_seconds_sum", "", NAN) == 0.1 + 0.2, "sum printed round-trips");
    CHECK(get(&P, "loraforge_request_duration_seconds_sum", "route=tiny;", NAN) == 1e-5, "small sum round-trips");
    int ns;
    check_histograms(&P, &ns);
    CHECK(ns == 5, "histogram series %d (ttft, tpot, 3 routes with durations)", ns);
    free(t);
    lf_metrics_free(m);
}

/* Concurrent updates: every thread records the same seeded value arrays (offset by thread). */
#define NT 4
#define NITER 3000
static double VALS[NITER];
static const char *ROUTES[3] = {"invocations", "ping", "adapters"};
static const int CODES[4] = {200, 400, 429, 503};
static const char *REASONS[2] = {"queue_full", "too_long"};
static lf_metrics *SHARED;

static void *worker(void *arg) {
    int t = (int)(intptr_t)arg;
    for (int i = 0; i < NITER; i++) {
        int k = i + t; /* different interleavings of the same multiset per thread offset */
        lf_metrics_request(SHARED, ROUTES[k % 3], CODES[k % 4], VALS[i] * 100.0);
        lf_metrics_tokens(SHARED, 3, 5);
        lf_metrics_ttft(SHARED, VALS[i]);
        lf_metrics_tpot(SHARED, VALS[i] * 0.1);
        lf_metrics_preemption(SHARED, 1);
        lf_metrics_rejected(SHARED, REASONS[k % 2]);
        if (i % 500 == 0) { /* renders race with updates */
            size_t len;
            free(lf_metrics_render(SHARED, NULL, &len));
        }
    }
    return NULL;
}

static void test_concurrent(lf_rng *rng) {
    for (int i = 0; i < NITER; i++) VALS[i] = exp(lf_rng_normal(rng) * 2.0 - 3.0); /* spans ~1e-4 .. 10 s */
    SHARED = lf_metrics_create();
    pthread_t th[NT];
    for (int t = 0; t < NT; t++) CHECK(!pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t), "thread %d", t);
    for (int t = 0; t < NT; t++) pthread_join(th[t], NULL);
    size_t len;
    lf_metrics_gauges g = {0};
    char *txt = lf_metrics_render(SHARED, &g, &len);
    parse(txt, len, &P);
    CHECK(P.errors == 0, "concurrent render parses (%d errors)", P.errors);
    int ns;
    check_histograms(&P, &ns);
    CHECK(ns == 2 + 3, "histogram series: %d", ns);
    /* expected (route, code) counts */
    double want_rc[3][4] = {{0}};
    double want_reason[2] = {0};
    for (int t = 0; t < NT; t++)
        for (int i = 0; i < NITER; i++) {
            want_rc[(i + t) % 3][(i + t) % 4] += 1;
            want_reason[(i + t) % 2] += 1;
        }
    double total = 0;
    for (int a = 0; a < 3; a++)
        for (int c = 0; c < 4; c++) {
            char lab[128];
            snprintf(lab, sizeof lab, "route=%s;code=%d;", ROUTES[a], CODES[c]);
            double v = get(&P, "loraforge_requests_total", lab, NAN);
            if (want_rc[a][c] == 0) CHECK(isnan(v), "no series for %s", lab);
            else CHECK(v == want_rc[a][c], "requests %s = %g want %g", lab, v, want_rc[a][c]);
            total += isnan(v) ? 0 : v;
        }
    CHECK(total == NT * NITER, "requests total %g", total);
    for (int k = 0; k < 2; k++) {
        char lab[64];
        snprintf(lab, sizeof lab, "reason=%s;", REASONS[k]);
        CHECK(get(&P, "loraforge_rejected_total", lab, NAN) == want_reason[k], "rejected %s", REASONS[k]);
    }
    CHECK(get(&P, "loraforge_prompt_tokens_total", "", NAN) == 3.0 * NT * NITER, "prompt tokens");
    CHECK(get(&P, "loraforge_generation_tokens_total", "", NAN) == 5.0 * NT * NITER, "generation tokens");
    CHECK(get(&P, "loraforge_preemptions_total", "", NAN) == (double)NT * NITER, "preemptions");
    /* TTFT buckets against counts computed here (le inclusive) */
    int bad = 0;
    double sum = 0;
    for (int i = 0; i < NITER; i++) sum += VALS[i];
    for (size_t b = 0; b < sizeof TTFT_B / sizeof TTFT_B[0]; b++) {
        double want = 0;
        for (int i = 0; i < NITER; i++) want += VALS[i] <= TTFT_B[b];
        want *= NT;
        double got = get(&P, "loraforge_time_to_first_token_seconds_bucket", "", TTFT_B[b]);
        if (got != want) {
            bad++;
            printf("  ttft le=%g: %g want %g\n", TTFT_B[b], got, want);
        }
    }
    CHECK(bad == 0, "ttft buckets: %d wrong", bad);
    CHECK(get(&P, "loraforge_time_to_first_token_seconds_count", "", NAN) == (double)NT * NITER, "ttft count");
    /* sum: same values added in another order; relative 1e-12 covers 12000 additions of doubles (~1e-16 each) */
    double gs = get(&P, "loraforge_time_to_first_token_seconds_sum", "", NAN);
    CHECK(fabs(gs - NT * sum) <= 1e-12 * NT * sum + 1e-12, "ttft sum %.17g want %.17g", gs, NT * sum);
    /* request duration per route */
    bad = 0;
    for (int a = 0; a < 3; a++) {
        char lab[64];
        snprintf(lab, sizeof lab, "route=%s;", ROUTES[a]);
        for (size_t b = 0; b < sizeof E2E_B / sizeof E2E_B[0]; b++) {
            double want = 0;
            for (int t = 0; t < NT; t++)
                for (int i = 0; i < NITER; i++) want += (i + t) % 3 == a && VALS[i] * 100.0 <= E2E_B[b];
            double got = get(&P, "loraforge_request_duration_seconds_bucket", lab, E2E_B[b]);
            if (got != want) {
                bad++;
                printf("  duration %s le=%g: %g want %g\n", lab, E2E_B[b], got, want);
            }
        }
    }
    CHECK(bad == 0, "request duration buckets: %d wrong", bad);
    free(txt);
    lf_metrics_free(SHARED);
}

/* The parser itself rejects malformed text (so the checks above can fail). */
static void test_parser_rejects(void) {
    const char *bad[] = {
        "# TYPE x counter\nx 1", /* no final newline */
        "x 1\n",                 /* no TYPE */
        "# TYPE x counter\nx{a=\"1\" 1\n",
        "# TYPE x counter\nx{a=\"1\"} one\n",
        "# TYPE x counter\n# TYPE x gauge\nx 1\n",
        "# TYPE x counter\nx 1\nx 2\n",
        "# TYPE h histogram\nh_bucket 1\n",
        "# TYPE 1x counter\n",
        "# BOGUS x\n",
    };
    QUIET = 1;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        parse(bad[i], strlen(bad[i]), &P);
        CHECK(P.errors > 0, "parser accepted bad case %zu", i);
    }
    QUIET = 0;
}

int main(void) {
    const char *env = getenv("LF_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    printf("test_metrics: seed %llu (LF_TEST_SEED)\n", (unsigned long long)seed);
    lf_rng rng;
    lf_rng_seed(&rng, seed);
    test_parser_rejects();
    test_empty_and_gauges();
    test_edges();
    test_concurrent(&rng);
    printf("test_metrics: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
