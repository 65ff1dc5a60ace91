/* test_lora.c - adapters/lora + adapters/peft_io: module lists, slot layout, PEFT init distributions, DoRA
 * magnitudes, forward/merge/DoRA reference consistency, PEFT save/load round trips (f32 bit-exact, bf16/f16
 * rounded), target/rank/alpha pattern resolution, tensor-name spellings, Python float repr, and every error path
 * (shape mismatch, missing/extra/duplicate tensors, bad JSON, unsupported options, adapter_model.bin) plus
 * atomic writes leaving no temp files. Seed from LF_TEST_SEED or time, printed. */
#define _XOPEN_SOURCE 700 /* nftw */
#include <dirent.h>
#include <ftw.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "adapters/lora.h"
#include "adapters/peft_io.h"
#include "core/fileio.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "core/tensor.h"

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

static lf_rng rng;
static uint64_t seed;
static char tmproot[256];

static lf_model_config tiny_model(int64_t C, int64_t FF, int64_t L, int64_t H, int64_t KH, int64_t D) {
    lf_model_config mc;
    memset(&mc, 0, sizeof mc);
    mc.arch = LF_ARCH_LLAMA;
    snprintf(mc.architecture, sizeof mc.architecture, "LlamaForCausalLM");
    mc.C = C, mc.FF = FF, mc.L = L, mc.H = H, mc.KH = KH, mc.D = D, mc.V = 64;
    return mc;
}

static void randn_fill(float *p, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) p[i] = lf_rng_normal(&rng) * scale;
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void mkdir_fresh(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", tmproot, name);
    nftw(out, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    mkdir(out, 0755);
}

static void write_text(const char *dir, const char *name, const char *text) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static int count_entries(const char *dir, int *tmp_files) {
    DIR *d = opendir(dir);
    int n = 0;
    *tmp_files = 0;
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        n++;
        if (strstr(e->d_name, ".tmp.")) (*tmp_files)++;
    }
    closedir(d);
    return n;
}

/* ---- module lists, scaling, layout ---- */
static void test_config_and_layout(void) {
    lf_err err = {0};
    uint32_t mask;
    CHECK(lf_lora_parse_modules("all", &mask, &err) == LF_OK && mask == LF_LORA_ALL_MODULES, "all -> 0x%x", mask);
    CHECK(lf_lora_parse_modules(" q_proj , v_proj,down_proj ", &mask, &err) == LF_OK &&
              mask == ((1u << LF_MOD_Q) | (1u << LF_MOD_V) | (1u << LF_MOD_DOWN)), "list -> 0x%x", mask);
    CHECK(lf_lora_parse_modules("q_proj,bogus", &mask, &err) == LF_EINVAL && strstr(err.msg, "bogus"), "bogus: %s", err.msg);
    CHECK(lf_lora_parse_modules("q_proj,,v_proj", &mask, &err) == LF_EINVAL, "empty entry accepted");
    CHECK(fabs(lf_lora_scaling(16, 8, 0) - 2.0) < 1e-15 && fabs(lf_lora_scaling(16, 4, 1) - 8.0) < 1e-15, "scaling");

    lf_model_config mc = tiny_model(64, 96, 3, 4, 2, 16);
    lf_lora_config c = lf_lora_config_default();
    c.r = 4;
    c.target_mask = LF_LORA_ALL_MODULES;
    c.use_dora = 1;
    lf_lora_adapter *a = NULL;
    CHECK(lf_lora_create(&c, &mc, &a, &err) == LF_OK, "create: %s", err.msg);
    if (!a) return;
    CHECK(a->n_slots == 21, "n_slots %" PRId64, a->n_slots);
    /* layout: layer-major, lf_module order, A B mag, contiguous */
    int64_t off = 0, sum = 0;
    int ok = 1;
    for (int64_t l = 0; l < 3; l++)
        for (int m = 0; m < LF_MOD_COUNT; m++) {
            const lf_lora_slot *s = lf_lora_get(a, l, (lf_module)m);
            int64_t OC, C;
            lf_module_shape(&mc, (lf_module)m, &OC, &C);
            ok &= s && s->R == 4 && s->IN == C && s->OC == OC && s->off_A == off && s->off_B == off + 4 * C &&
                  s->off_mag == off + 4 * C + OC * 4 && s->A == a->params + s->off_A && s->mag == a->params + s->off_mag;
            off += 4 * C + OC * 4 + OC;
            sum += 4 * C + OC * 4 + OC;
        }
    CHECK(ok && a->n_params == sum, "layout: n_params %" PRId64 " sum %" PRId64, a->n_params, sum);
    CHECK(lf_lora_get(a, 3, LF_MOD_Q) == NULL && lf_lora_get(a, -1, LF_MOD_Q) == NULL, "out-of-range slot");
    CHECK(lf_lora_alloc_grads(a, 1, &err) == LF_OK && a->grad && a->adam_m && a->adam_v, "alloc grads");
    int zero = 1;
    for (int64_t i = 0; i < a->n_params; i++) zero &= a->grad[i] == 0 && a->adam_m[i] == 0 && a->adam_v[i] == 0;
    CHECK(zero, "grad buffers zeroed");
    float *g = a->grad;
    a->grad[5] = 3.0f;
    CHECK(lf_lora_alloc_grads(a, 1, &err) == LF_OK && a->grad == g && a->grad[5] == 3.0f, "alloc_grads keeps buffers");
    lf_lora_zero_grads(a);
    CHECK(a->grad[5] == 0.0f, "zero_grads");
    lf_lora_free(a);

    /* q,v only, no DoRA */
    c = lf_lora_config_default();
    CHECK(lf_lora_create(&c, &mc, &a, &err) == LF_OK, "create default: %s", err.msg);
    if (a) {
        CHECK(a->n_slots == 6 && lf_lora_get(a, 1, LF_MOD_K) == NULL && lf_lora_get(a, 1, LF_MOD_V) &&
                  lf_lora_get(a, 1, LF_MOD_V)->mag == NULL && lf_lora_get(a, 1, LF_MOD_V)->off_mag == -1,
              "default targets q,v: %" PRId64 " slots", a->n_slots);
        lf_lora_free(a);
    }
    c.r = 0;
    CHECK(lf_lora_create(&c, &mc, &a, &err) == LF_EINVAL && a == NULL && strstr(err.msg, "r = 0"), "r=0: %s", err.msg);
    c.r = 8;
    c.dropout = 1.0;
    CHECK(lf_lora_create(&c, &mc, &a, &err) == LF_EINVAL && strstr(err.msg, "dropout"), "dropout 1: %s", err.msg);
}

/* ---- targets, patterns ---- */
static void test_targets(void) {
    lf_err err = {0};
    lf_model_config mc = tiny_model(32, 48, 3, 4, 2, 8);
    lf_lora_adapter *a = NULL;
    lf_lora_config c = lf_lora_config_default();
    c.r = 4;
    snprintf(c.target_regex, sizeof c.target_regex, ".*layers\\.1\\.(self_attn\\.(q|v)_proj|mlp\\.up_proj)");
    CHECK(lf_lora_create(&c, &mc, &a, &err) == LF_OK, "regex create: %s", err.msg);
    if (a) {
        CHECK(a->n_slots == 3 && lf_lora_get(a, 1, LF_MOD_Q) && lf_lora_get(a, 1, LF_MOD_V) && lf_lora_get(a, 1, LF_MOD_UP) &&
                  !lf_lora_get(a, 0, LF_MOD_Q) && !lf_lora_get(a, 2, LF_MOD_Q) &&
                  a->cfg.target_mask == ((1u << LF_MOD_Q) | (1u << LF_MOD_V) | (1u << LF_MOD_UP)),
              "regex slots: %" PRId64, a->n_slots);
        lf_lora_free(a);
    }
    /* fullmatch, not search: "q_proj" alone matches nothing */
    snprintf(c.target_regex, sizeof c.target_regex, "q_proj");
    CHECK(lf_lora_create(&c, &mc, &a, &err) == LF_EINVAL && strstr(err.msg, "matches no"), "regex no match: %s", err.msg);
    snprintf(c.target_regex, sizeof c.target_regex, ".*(q_proj");
    CHECK(lf_lora_create(&c, &mc, &a, &err) == LF_EINVAL && strstr(err.msg, "regular expression"), "bad regex: %s",
          err.msg);
    snprintf(c.target_regex, sizeof c.target_regex, ".*");
    CHECK(lf_lora_create(&c, &mc, &a, &err) == LF_EUNSUPPORTED && strstr(err.msg, "lm_head"), ".* selects lm_head: %s",
          err.msg);
    snprintf(c.target_regex, sizeof c.target_regex, "ALL-LINEAR");
    CHECK(lf_lora_create(&c, &mc, &a, &err) == LF_OK && a && a->n_slots == 21, "all-linear: %s", err.msg);
    lf_lora_free(a);
    a = NULL;

    /* list with suffixes and a full name */
    c.target_regex[0] = '\0';
    c.n_target_names = 3;
    snprintf(c.target_names[0], LF_LORA_NAME_MAX, "model.layers.0.self_attn.k_proj");
    snprintf(c.target_names[1], LF_LORA_NAME_MAX, "o_proj");
    snprintf(c.target_names[2], LF_LORA_NAME_MAX, "mlp.gate_proj");
    CHECK(lf_lora_create(&c, &mc, &a, &err) == LF_OK, "names create: %s", err.msg);
    if (a) {
        CHECK(a->n_slots == 7 && lf_lora_get(a, 0, LF_MOD_K) && !lf_lora_get(a, 1, LF_MOD_K) && lf_lora_get(a, 2, LF_MOD_O) &&
                  lf_lora_get(a, 2, LF_MOD_GATE) && !lf_lora_get(a, 2, LF_MOD_UP),
              "names slots %" PRId64, a->n_slots);
        lf_lora_free(a);
        a = NULL;
    }
    snprintf(c.target_names[1], LF_LORA_NAME_MAX, "roj"); /* not a whole component: matches nothing */
    c.n_target_names = 2;
    CHECK(lf_lora_create(&c, &mc, &a, &err) == LF_OK && a && a->n_slots == 1, "partial component: %s", err.msg);
    lf_lora_free(a);
    a = NULL;
    c.n_target_names = 1;
    snprintf(c.target_names[0], LF_LORA_NAME_MAX, "lm_head");
    CHECK(lf_lora_create(&c, &mc, &a, &err) == LF_EUNSUPPORTED && strstr(err.msg, "lm_head"), "lm_head: %s", err.msg);
    snprintf(c.target_names[0], LF_LORA_NAME_MAX, "embed_tokens");
    CHECK(lf_lora_create(&c, &mc, &a, &err) == LF_EUNSUPPORTED && strstr(err.msg, "embed_tokens"), "embed: %s", err.msg);

    /* rank/alpha patterns: PEFT picks the FIRST matching key of rank_pattern then alpha_pattern */
    c = lf_lora_config_default();
    c.r = 4;
    c.alpha = 8;
    c.target_mask = LF_LORA_ALL_MODULES;
    c.use_rslora = 1;
    c.n_rank_pattern = 2;
    snprintf(c.rank_pattern[0].key, LF_LORA_NAME_MAX, "v_proj");
    c.rank_pattern[0].value = 16;
    snprintf(c.rank_pattern[1].key, LF_LORA_NAME_MAX, "model.layers.0.mlp.down_proj");
    c.rank_pattern[1].value = 2;
    c.n_rank_pattern = 3; /* a regex-matched key ("layers.2.mlp.down_proj") and an exact full name (fallback) */
    snprintf(c.rank_pattern[2].key, LF_LORA_NAME_MAX, "layers.2.mlp.down_proj");
    c.rank_pattern[2].value = 6;
    c.n_rank_pattern = 4; /* peft 0.21 "(.*\.)?(key)$": a regex spelling of the whole name matches too */
    snprintf(c.rank_pattern[3].key, LF_LORA_NAME_MAX, "model\\.layers\\.1\\.mlp\\.down_proj");
    c.rank_pattern[3].value = 12;
    c.n_alpha_pattern = 2;
    snprintf(c.alpha_pattern[0].key, LF_LORA_NAME_MAX, "o_proj");
    c.alpha_pattern[0].value = 32;
    snprintf(c.alpha_pattern[1].key, LF_LORA_NAME_MAX, "v_proj"); /* shadowed by rank_pattern's v_proj key: same key */
    c.alpha_pattern[1].value = 64;
    CHECK(lf_lora_create(&c, &mc, &a, &err) == LF_OK, "patterns: %s", err.msg);
    if (a) {
        const lf_lora_slot *v = lf_lora_get(a, 2, LF_MOD_V), *d0 = lf_lora_get(a, 0, LF_MOD_DOWN),
                           *d1 = lf_lora_get(a, 1, LF_MOD_DOWN), *o = lf_lora_get(a, 1, LF_MOD_O);
        CHECK(v && v->R == 16 && v->alpha == 64 && fabs(v->scaling - 64 / 4.0) < 1e-12, "v: R %" PRId64 " alpha %g", v ? v->R : -1,
              v ? v->alpha : 0);
        const lf_lora_slot *d2 = lf_lora_get(a, 2, LF_MOD_DOWN);
        CHECK(d0 && d0->R == 2 && d0->alpha == 8 && d1 && d1->R == 12 && d2 && d2->R == 6, "down: %" PRId64 " %" PRId64
              " %" PRId64, d0 ? d0->R : -1, d1 ? d1->R : -1, d2 ? d2->R : -1);
        CHECK(o && o->R == 4 && o->alpha == 32 && fabs(o->scaling - 16.0) < 1e-12, "o: R %" PRId64 " alpha %g", o ? o->R : -1,
              o ? o->alpha : 0);
        lf_lora_free(a);
        a = NULL;
    }
    c.rank_pattern[0].value = 2.5;
    CHECK(lf_lora_create(&c, &mc, &a, &err) == LF_EINVAL && strstr(err.msg, "rank_pattern"), "fractional rank: %s", err.msg);
}

/* ---- init ---- */
static void test_init(void) {
    lf_err err = {0};
    lf_model_config mc = tiny_model(64, 96, 2, 4, 2, 16);
    lf_lora_config c = lf_lora_config_default();
    c.r = 8;
    c.target_mask = LF_LORA_ALL_MODULES;
    lf_lora_adapter *a = NULL, *b = NULL;
    if (lf_lora_create(&c, &mc, &a, &err) || lf_lora_create(&c, &mc, &b, &err)) {
        CHECK(0, "create: %s", err.msg);
        lf_lora_free(a);
        return;
    }
    uint64_t s = lf_rng_next(&rng);
    lf_lora_init_peft(a, s);
    lf_lora_init_peft(b, s);
    CHECK(memcmp(a->params, b->params, (size_t)a->n_params * 4) == 0, "same seed, same adapter");
    lf_lora_init_peft(b, s + 1);
    CHECK(memcmp(a->params, b->params, (size_t)a->n_params * 4) != 0, "different seed, different adapter");
    /* A ~ U(-1/sqrt(C), 1/sqrt(C)): every value inside, normalized u = A*sqrt(C) has mean 0, var 1/3 */
    int in_bounds = 1, b_zero = 1;
    double su = 0, su2 = 0, umax = 0;
    int64_t n = 0;
    for (int64_t i = 0; i < a->L * LF_MOD_COUNT; i++) {
        const lf_lora_slot *sl = &a->slots[i];
        double bound = 1.0 / sqrt((double)sl->IN);
        for (int64_t k = 0; k < sl->R * sl->IN; k++) {
            in_bounds &= fabs(sl->A[k]) <= bound;
            double u = sl->A[k] / bound;
            su += u, su2 += u * u, n++;
            if (fabs(u) > umax) umax = fabs(u);
        }
        for (int64_t k = 0; k < sl->OC * sl->R; k++) b_zero &= sl->B[k] == 0.0f;
    }
    double mean = su / n, var = su2 / n - mean * mean;
    CHECK(in_bounds && b_zero, "A in bounds %d, B zero %d", in_bounds, b_zero);
    /* sd of the mean = sqrt(1/3/n); sd of the sample variance of U(-1,1) = sqrt((1/5-1/9)/n): 6 sigma */
    CHECK(fabs(mean) < 6 * sqrt(1.0 / 3 / n) && fabs(var - 1.0 / 3) < 6 * sqrt((0.2 - 1.0 / 9) / n) && umax > 0.99,
          "A uniform: n %" PRId64 " mean %.4g var %.4g (1/3) max|u| %.4f", n, mean, var, umax);

    /* gaussian: A ~ N(0, 1/R^2) */
    a->cfg.init = LF_LORA_INIT_GAUSSIAN;
    lf_lora_init_peft(a, s);
    su = su2 = 0;
    n = 0;
    b_zero = 1;
    for (int64_t i = 0; i < a->L * LF_MOD_COUNT; i++) {
        const lf_lora_slot *sl = &a->slots[i];
        for (int64_t k = 0; k < sl->R * sl->IN; k++) su += sl->A[k] * sl->R, su2 += (double)sl->A[k] * sl->A[k] * sl->R * sl->R, n++;
        for (int64_t k = 0; k < sl->OC * sl->R; k++) b_zero &= sl->B[k] == 0.0f;
    }
    mean = su / n, var = su2 / n - mean * mean;
    /* sd of the sample variance of N(0,1) = sqrt(2/n) */
    CHECK(b_zero && fabs(mean) < 6 / sqrt((double)n) && fabs(var - 1) < 6 * sqrt(2.0 / n), "gaussian: mean %.4g var %.4g",
          mean, var);

    /* init false: B ~ U(-1/sqrt(R), 1/sqrt(R)) too */
    a->cfg.init = LF_LORA_INIT_RANDOM;
    lf_lora_init_peft(a, s);
    int b_ok = 1, b_nonzero = 0;
    for (int64_t i = 0; i < a->L * LF_MOD_COUNT; i++) {
        const lf_lora_slot *sl = &a->slots[i];
        for (int64_t k = 0; k < sl->OC * sl->R; k++) b_ok &= fabsf(sl->B[k]) <= 1.0 / sqrt((double)sl->R), b_nonzero |= sl->B[k] != 0;
    }
    CHECK(b_ok && b_nonzero, "init false: B uniform in +-1/sqrt(R)");
    lf_lora_free(a);
    lf_lora_free(b);
}

/* ---- DoRA magnitude + reference math ---- */
typedef struct wsrc {
    float *W[LF_MOD_COUNT];
    int calls;
} wsrc;

static lf_status w_rows(void *ctx, int64_t layer, lf_module m, int64_t row0, int64_t nrows, float *dst, lf_err *err) {
    wsrc *w = ctx;
    (void)layer;
    if (!w->W[m]) return lf_err_set(err, LF_EINVAL, "no weight");
    int64_t C = m == LF_MOD_O ? 64 : m == LF_MOD_DOWN ? 96 : 64;
    memcpy(dst, w->W[m] + row0 * C, (size_t)(nrows * C) * sizeof(float));
    w->calls++;
    return LF_OK;
}

static double max_rel(const float *a, const float *b, int64_t n) {
    double m = 0, s = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > m) m = d;
        if (fabs(b[i]) > s) s = fabs(b[i]);
    }
    return m / (s > 0 ? s : 1);
}

/* y[T, OC] = x[T, C] @ W^T in double */
static void matmul_t(float *y, const float *x, const float *W, int64_t T, int64_t C, int64_t OC) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t o = 0; o < OC; o++) {
            double acc = 0;
            for (int64_t i = 0; i < C; i++) acc += (double)x[t * C + i] * W[o * C + i];
            y[t * OC + o] = (float)acc;
        }
}

static void test_math(void) {
    lf_err err = {0};
    lf_model_config mc = tiny_model(64, 96, 1, 4, 2, 16);
    lf_lora_config c = lf_lora_config_default();
    c.r = 8;
    c.alpha = 16;
    c.use_dora = 1;
    c.target_mask = (1u << LF_MOD_Q) | (1u << LF_MOD_DOWN);
    lf_lora_adapter *a = NULL;
    if (lf_lora_create(&c, &mc, &a, &err)) {
        CHECK(0, "create: %s", err.msg);
        return;
    }
    wsrc ws = {{0}, 0};
    float *Wq = malloc(64 * 64 * 4), *Wd = malloc(64 * 96 * 4);
    randn_fill(Wq, 64 * 64, 0.1f);
    randn_fill(Wd, 64 * 96, 0.1f);
    ws.W[LF_MOD_Q] = Wq;
    ws.W[LF_MOD_DOWN] = Wd;
    lf_lora_init_peft(a, lf_rng_next(&rng));
    CHECK(lf_lora_init_dora(a, w_rows, &ws, &err) == LF_OK && ws.calls == 2, "init_dora: %s (calls %d)", err.msg, ws.calls);
    /* B = 0: magnitude = ||W||_row */
    const lf_lora_slot *sq = lf_lora_get(a, 0, LF_MOD_Q), *sd = lf_lora_get(a, 0, LF_MOD_DOWN);
    double md = 0;
    for (int64_t o = 0; o < 64; o++) {
        double ss = 0;
        for (int64_t i = 0; i < 96; i++) ss += (double)Wd[o * 96 + i] * Wd[o * 96 + i];
        md = fmax(md, fabs(sd->mag[o] - sqrt(ss)) / sqrt(ss));
    }
    CHECK(md < 1e-6, "DoRA magnitude = row norm of W at init: rel err %.3g (f32 rounding of a double sum)", md);
    /* non-zero B: callback (chunked) and full-matrix versions agree bit for bit */
    lf_lora_slot *mq = lf_lora_get_mut(a, 0, LF_MOD_Q), *mdn = lf_lora_get_mut(a, 0, LF_MOD_DOWN);
    randn_fill(mq->B, mq->OC * mq->R, 0.05f);
    randn_fill(mdn->B, mdn->OC * mdn->R, 0.05f);
    CHECK(lf_lora_init_dora(a, w_rows, &ws, &err) == LF_OK, "init_dora 2: %s", err.msg);
    float *mag_cb = malloc(64 * 4);
    memcpy(mag_cb, sq->mag, 64 * 4);
    CHECK(lf_lora_init_dora_magnitude(a, 0, LF_MOD_Q, Wq, &err) == LF_OK && memcmp(mag_cb, sq->mag, 64 * 4) == 0,
          "chunked vs whole-matrix DoRA magnitude");
    CHECK(lf_lora_init_dora_magnitude(a, 0, LF_MOD_K, Wq, &err) == LF_EINVAL, "DoRA init of absent slot");
    /* perturb the magnitude so the DoRA factor is not 1 */
    for (int64_t o = 0; o < 64; o++) mq->mag[o] *= 1.0f + 0.2f * lf_rng_normal(&rng);

    /* forward_ref + DoRA combine == x @ merged^T */
    enum { T = 5 };
    float x[T * 64], y_merged[T * 64], wx[T * 64], lora[T * 64], y[T * 64], h[T * 8], norm[64];
    randn_fill(x, T * 64, 1.0f);
    float *Wm = malloc(64 * 64 * 4);
    memcpy(Wm, Wq, 64 * 64 * 4);
    CHECK(lf_lora_merge_weight(a, 0, LF_MOD_Q, Wm, &err) == LF_OK, "merge: %s", err.msg);
    matmul_t(y_merged, x, Wm, T, 64, 64);
    matmul_t(wx, x, Wq, T, 64, 64);
    memset(lora, 0, sizeof lora);
    lf_lora_forward_ref(lora, x, T, 64, 64, 8, sq->A, sq->B, sq->scaling, h);
    lf_lora_dora_norm_ref(norm, Wq, sq->A, sq->B, 64, 64, 8, sq->scaling);
    memcpy(y, wx, sizeof y);
    lf_lora_dora_combine_ref(y, wx, lora, sq->mag, norm, T, 64);
    double e = max_rel(y, y_merged, T * 64);
    /* both sides are f32 sums over 64..512 terms of O(1) values: ~1e-6 relative, 1e-5 leaves margin */
    CHECK(e < 1e-5, "DoRA: forward combine vs merged weight, rel err %.3g", e);
    /* h holds x @ A^T */
    float h_ref[T * 8];
    matmul_t(h_ref, x, sq->A, T, 64, 8);
    CHECK(max_rel(h, h_ref, T * 8) < 1e-5, "forward_ref h = x A^T");

    /* plain LoRA: x W^T + forward_ref == x (W + s B A)^T */
    memcpy(Wm, Wq, 64 * 64 * 4);
    lf_lora_merge_ref(Wm, 64, 64, 8, sq->A, sq->B, sq->scaling, NULL);
    matmul_t(y_merged, x, Wm, T, 64, 64);
    memcpy(y, wx, sizeof y);
    lf_lora_forward_ref(y, x, T, 64, 64, 8, sq->A, sq->B, sq->scaling, h);
    e = max_rel(y, y_merged, T * 64);
    CHECK(e < 1e-5, "LoRA: forward_ref vs merged weight, rel err %.3g", e);
    /* merge delta equals s * B @ A exactly computed in double */
    double dm = 0;
    for (int64_t o = 0; o < 64; o++)
        for (int64_t i = 0; i < 64; i++) {
            double d = 0;
            for (int r = 0; r < 8; r++) d += (double)sq->B[o * 8 + r] * sq->A[r * 64 + i];
            dm = fmax(dm, fabs((Wm[o * 64 + i] - Wq[o * 64 + i]) - sq->scaling * d));
        }
    CHECK(dm < 1e-5, "merge delta = scaling*B@A: max abs err %.3g", dm);
    free(Wq);
    free(Wd);
    free(Wm);
    free(mag_cb);
    lf_lora_free(a);
}

/* ---- save / load ---- */
static lf_lora_adapter *make_random(const lf_model_config *mc, lf_lora_config c) {
    lf_err err = {0};
    lf_lora_adapter *a = NULL;
    if (lf_lora_create(&c, mc, &a, &err)) {
        CHECK(0, "create: %s", err.msg);
        return NULL;
    }
    randn_fill(a->params, a->n_params, 0.3f);
    return a;
}

static void test_roundtrip(void) {
    lf_err err = {0};
    lf_model_config mc = tiny_model(32, 48, 2, 4, 2, 8);
    lf_lora_config c = lf_lora_config_default();
    c.r = 4;
    c.alpha = 16;
    c.dropout = 0.05;
    c.use_dora = 1;
    c.use_rslora = 1;
    c.target_mask = LF_LORA_ALL_MODULES;
    c.n_rank_pattern = 1;
    snprintf(c.rank_pattern[0].key, LF_LORA_NAME_MAX, "k_proj");
    c.rank_pattern[0].value = 2;
    c.n_alpha_pattern = 1;
    snprintf(c.alpha_pattern[0].key, LF_LORA_NAME_MAX, "up_proj");
    c.alpha_pattern[0].value = 2.5;
    snprintf(c.base_model_name_or_path, sizeof c.base_model_name_or_path, "tiny/caf\xc3\xa9 \"llama\"");
    lf_lora_adapter *a = make_random(&mc, c), *b = NULL;
    if (!a) return;
    char dir[512], dir2[512];
    mkdir_fresh(dir, sizeof dir, "rt");
    CHECK(lf_peft_save(a, dir, LF_DTYPE_F32, &err) == LF_OK, "save: %s", err.msg);
    int tmp = 0;
    CHECK(count_entries(dir, &tmp) == 2 && tmp == 0, "save leaves exactly 2 files, no temp files");
    CHECK(lf_peft_load(dir, &mc, &b, &err) == LF_OK, "load: %s", err.msg);
    if (b) {
        CHECK(b->n_params == a->n_params && memcmp(a->params, b->params, (size_t)a->n_params * 4) == 0,
              "f32 round trip bit-exact");
        CHECK(b->cfg.r == 4 && b->cfg.alpha == 16 && b->cfg.dropout == 0.05 && b->cfg.use_dora && b->cfg.use_rslora &&
                  b->cfg.n_rank_pattern == 1 && b->cfg.rank_pattern[0].value == 2 && b->cfg.alpha_pattern[0].value == 2.5 &&
                  !strcmp(b->cfg.base_model_name_or_path, c.base_model_name_or_path) && !strcmp(b->cfg.task_type, "CAUSAL_LM"),
              "config round trip");
        const lf_lora_slot *k = lf_lora_get(b, 1, LF_MOD_K), *u = lf_lora_get(b, 0, LF_MOD_UP);
        CHECK(k && k->R == 2 && u && u->alpha == 2.5 && fabs(u->scaling - 2.5 / 2.0) < 1e-12, "patterns survive");
        /* saving the loaded adapter again gives the same bytes */
        mkdir_fresh(dir2, sizeof dir2, "rt2");
        CHECK(lf_peft_save(b, dir2, LF_DTYPE_F32, &err) == LF_OK, "re-save: %s", err.msg);
        const char *files[2] = {LF_PEFT_WEIGHTS_NAME, LF_PEFT_CONFIG_NAME};
        for (int i = 0; i < 2; i++) {
            char p1[600], p2[600], *t1 = NULL, *t2 = NULL;
            size_t n1 = 0, n2 = 0;
            snprintf(p1, sizeof p1, "%s/%s", dir, files[i]);
            snprintf(p2, sizeof p2, "%s/%s", dir2, files[i]);
            lf_file_read_all(p1, &t1, &n1, &err);
            lf_file_read_all(p2, &t2, &n2, &err);
            CHECK(t1 && t2 && n1 == n2 && memcmp(t1, t2, n1) == 0, "re-save %s identical", files[i]);
            if (i == 1 && t1) {
                CHECK(n1 > 0 && t1[n1 - 1] == '}' && strstr(t1, "\"lora_dropout\": 0.05,") &&
                          strstr(t1, "\"alpha_pattern\": {\n    \"up_proj\": 2.5\n  },") &&
                          strstr(t1, "\"base_model_name_or_path\": \"tiny/caf\\u00e9 \\\"llama\\\"\"") &&
                          strstr(t1, "\"target_modules\": [\n    \"q_proj\",\n    \"k_proj\","),
                      "config text is Python json.dumps style:\n%s", t1);
                int keys = 0;
                for (const char *p = t1; (p = strstr(p, "\n  \"")); p++) keys++;
                CHECK(keys == 41, "41 top-level keys (peft 0.21.2), got %d", keys);
            }
            free(t1);
            free(t2);
        }
        lf_lora_free(b);
        b = NULL;
    }
    /* bf16 / f16: what loads is the rounded value */
    lf_dtype dts[2] = {LF_DTYPE_BF16, LF_DTYPE_F16};
    for (int d = 0; d < 2; d++) {
        mkdir_fresh(dir2, sizeof dir2, "rt16");
        CHECK(lf_peft_save(a, dir2, dts[d], &err) == LF_OK, "save %s: %s", lf_dtype_name(dts[d]), err.msg);
        CHECK(lf_peft_load(dir2, &mc, &b, &err) == LF_OK, "load %s: %s", lf_dtype_name(dts[d]), err.msg);
        if (!b) continue;
        int ok = 1;
        for (int64_t i = 0; i < a->n_params; i++) {
            float want = dts[d] == LF_DTYPE_BF16 ? lf_bf16_to_f32(lf_f32_to_bf16(a->params[i]))
                                                 : lf_f16_to_f32(lf_f32_to_f16(a->params[i]));
            ok &= memcmp(&want, &b->params[i], 4) == 0;
        }
        CHECK(ok, "%s round trip = rounded values", lf_dtype_name(dts[d]));
        lf_lora_free(b);
        b = NULL;
    }
    CHECK(lf_peft_save(a, dir2, LF_DTYPE_I32, &err) == LF_EINVAL, "save I32 refused");
    lf_lora_free(a);
}

/* Write an adapter dir for (mc, c) with random params and return its path in dir. */
static void make_dir(char *dir, size_t cap, const char *name, const lf_model_config *mc, lf_lora_config c) {
    lf_err err = {0};
    mkdir_fresh(dir, cap, name);
    lf_lora_adapter *a = make_random(mc, c);
    if (a && lf_peft_save(a, dir, LF_DTYPE_F32, &err)) CHECK(0, "save %s: %s", name, err.msg);
    lf_lora_free(a);
}

/* Rewrite DIR/adapter_model.safetensors, dropping tensor `drop` (may be NULL), renaming `from` -> `to`, or
 * adding a copy of `from` as `to` when add is set. */
static void rewrite_weights(const char *dir, const char *drop, const char *from, const char *to, int add) {
    lf_err err = {0};
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, LF_PEFT_WEIGHTS_NAME);
    lf_st_file *f = NULL;
    if (lf_st_open(p, &f, &err)) {
        CHECK(0, "open %s: %s", p, err.msg);
        return;
    }
    lf_st_writer *w = lf_st_writer_create();
    for (int64_t i = 0; i < lf_st_count(f); i++) {
        const lf_st_tensor *t = lf_st_at(f, i);
        if (drop && !strcmp(t->name, drop)) continue;
        const char *name = t->name;
        if (from && !strcmp(t->name, from)) {
            if (add) lf_st_writer_add(w, to, t->dtype, t->ndim, t->shape, t->data, &err);
            else name = to;
        }
        lf_st_writer_add(w, name, t->dtype, t->ndim, t->shape, t->data, &err);
    }
    lf_st_writer_set_meta(w, "format", "pt", &err);
    /* write to a side file, then replace (f maps the original) */
    char q[620];
    snprintf(q, sizeof q, "%s.new", p);
    lf_st_writer_write(w, q, &err);
    lf_st_writer_free(w);
    lf_st_close(f);
    rename(q, p);
}

static void test_load_errors(void) {
    lf_err err = {0};
    lf_model_config mc = tiny_model(32, 48, 2, 4, 2, 8), other = tiny_model(40, 48, 2, 4, 2, 10),
                    shallow = tiny_model(32, 48, 1, 4, 2, 8);
    lf_lora_config c = lf_lora_config_default();
    c.r = 4;
    c.target_mask = (1u << LF_MOD_Q) | (1u << LF_MOD_V);
    lf_lora_adapter *a = NULL;
    char dir[512], base[512];
    make_dir(base, sizeof base, "good", &mc, c);
    CHECK(lf_peft_load(base, &mc, &a, &err) == LF_OK, "good loads: %s", err.msg);
    lf_lora_free(a);
    a = NULL;

    /* adapter of another base model */
    CHECK(lf_peft_load(base, &other, &a, &err) == LF_EFORMAT && a == NULL &&
              strstr(err.msg, "base_model.model.model.layers.") && strstr(err.msg, "expected [") &&
              strstr(err.msg, "has shape ["),
          "shape mismatch: %s", err.msg);
    CHECK(lf_peft_load(base, &shallow, &a, &err) == LF_EFORMAT && strstr(err.msg, "layer 1"), "too few layers: %s", err.msg);

    /* rank in the config disagrees with the tensors */
    make_dir(dir, sizeof dir, "rank", &mc, c);
    char cfgp[600];
    snprintf(cfgp, sizeof cfgp, "%s/%s", dir, LF_PEFT_CONFIG_NAME);
    lf_lora_config c8 = c;
    c8.r = 8;
    lf_peft_config_write(&c8, cfgp, &err);
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_EFORMAT && strstr(err.msg, "r=8"), "rank mismatch: %s", err.msg);

    /* missing tensor */
    make_dir(dir, sizeof dir, "missing", &mc, c);
    rewrite_weights(dir, "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight", NULL, NULL, 0);
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_EFORMAT && strstr(err.msg, "missing tensor") &&
              strstr(err.msg, "layers.1.self_attn.v_proj.lora_B.weight"),
          "missing tensor: %s", err.msg);
    /* extra tensor of an untargeted module, an lm_head adapter, a magnitude without DoRA, duplicates */
    make_dir(dir, sizeof dir, "extra", &mc, c);
    rewrite_weights(dir, NULL, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                    "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight", 1);
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_EFORMAT && strstr(err.msg, "k_proj") && strstr(err.msg, "does not select"),
          "untargeted tensor: %s", err.msg);
    make_dir(dir, sizeof dir, "lmhead", &mc, c);
    rewrite_weights(dir, NULL, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                    "base_model.model.lm_head.lora_A.weight", 1);
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_EUNSUPPORTED && strstr(err.msg, "lm_head.lora_A"), "lm_head tensor: %s",
          err.msg);
    make_dir(dir, sizeof dir, "mag", &mc, c);
    rewrite_weights(dir, NULL, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                    "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", 1);
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_EFORMAT && strstr(err.msg, "use_dora"), "magnitude without DoRA: %s",
          err.msg);
    make_dir(dir, sizeof dir, "dup", &mc, c);
    rewrite_weights(dir, NULL, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", 1);
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_EFORMAT && strstr(err.msg, "both hold"), "duplicate: %s", err.msg);
    /* ".default" adapter-name infix and no "base_model.model." prefix are accepted */
    make_dir(dir, sizeof dir, "infix", &mc, c);
    rewrite_weights(dir, NULL, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", 0);
    rewrite_weights(dir, NULL, "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight",
                    "model.layers.1.self_attn.v_proj.lora_B.weight", 0);
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_OK, "infix/prefix variants: %s", err.msg);
    lf_lora_free(a);
    a = NULL;

    /* bad JSON, wrong types, missing files */
    make_dir(dir, sizeof dir, "badjson", &mc, c);
    write_text(dir, LF_PEFT_CONFIG_NAME, "{\"peft_type\": \"LORA\", \"r\": 4,");
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_EFORMAT && strstr(err.msg, LF_PEFT_CONFIG_NAME) && strstr(err.msg, "line"),
          "bad JSON: %s", err.msg);
    write_text(dir, LF_PEFT_CONFIG_NAME, "{\"peft_type\": \"LORA\", \"r\": \"4\", \"target_modules\": [\"q_proj\"]}");
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_EFORMAT && strstr(err.msg, "\"r\""), "r as string: %s", err.msg);
    write_text(dir, LF_PEFT_CONFIG_NAME, "{\"peft_type\": \"LORA\", \"r\": 4, \"target_modules\": [\"q_proj\", 3]}");
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_EFORMAT && strstr(err.msg, "target_modules"), "target int: %s", err.msg);
    write_text(dir, LF_PEFT_CONFIG_NAME, "{\"r\": 4}");
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_EFORMAT && strstr(err.msg, "peft_type"), "no peft_type: %s", err.msg);
    write_text(dir, LF_PEFT_CONFIG_NAME, "{\"peft_type\": \"ADALORA\", \"r\": 4}");
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_EUNSUPPORTED && strstr(err.msg, "ADALORA"), "adalora: %s", err.msg);
    /* target_modules null = q_proj, v_proj; minimal config; unknown off-valued keys ignored */
    write_text(dir, LF_PEFT_CONFIG_NAME, "{\"peft_type\": \"LORA\", \"r\": 4, \"target_modules\": null, \"lora_alpha\": 8, "
                                         "\"qalora_group_size\": 16, \"eva_config\": null, \"use_bdlora\": false, "
                                         "\"peft_version\": \"0.17.0\", \"exclude_modules\": null, \"lora_bias\": false}");
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_OK && a && a->n_slots == 4, "minimal/newer config: %s", err.msg);
    lf_lora_free(a);
    a = NULL;

    static const char *const unsup[][2] = {
        {"bias", "\"all\""},
        {"fan_in_fan_out", "true"},
        {"modules_to_save", "[\"lm_head\"]"},
        {"layers_to_transform", "[0]"},
        {"layer_replication", "[[0, 1]]"},
        {"megatron_config", "{\"tensor_model_parallel_size\": 2}"},
        {"loftq_config", "{\"loftq_bits\": 4}"},
        {"init_lora_weights", "\"pissa\""},
        {"init_lora_weights", "\"olora\""},
        {"lora_bias", "true"},
        {"exclude_modules", "[\"q_proj\"]"},
        {"use_fancy_new_thing", "true"},
        {"trainable_token_indices", "[1, 2]"},
    };
    for (size_t i = 0; i < sizeof unsup / sizeof *unsup; i++) {
        char text[512];
        snprintf(text, sizeof text, "{\"peft_type\": \"LORA\", \"r\": 4, \"target_modules\": [\"q_proj\", \"v_proj\"], "
                 "\"%s\": %s}", unsup[i][0], unsup[i][1]);
        write_text(dir, LF_PEFT_CONFIG_NAME, text);
        lf_status st = lf_peft_load(dir, &mc, &a, &err);
        CHECK(st == LF_EUNSUPPORTED && a == NULL && strstr(err.msg, unsup[i][0]), "%s = %s: %s (%s)", unsup[i][0],
              unsup[i][1], lf_status_name(st), err.msg);
    }

    /* adapter_model.bin only; no config; no dir */
    mkdir_fresh(dir, sizeof dir, "bin");
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, LF_PEFT_CONFIG_NAME);
    lf_peft_config_write(&c, p, &err);
    write_text(dir, LF_PEFT_LEGACY_WEIGHTS_NAME, "PK\x03\x04 not really a zip");
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_EUNSUPPORTED && strstr(err.msg, "adapter_model.bin") &&
              strstr(err.msg, "safetensors"),
          "adapter_model.bin: %s", err.msg);
    remove(p);
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_ENOTFOUND && strstr(err.msg, LF_PEFT_CONFIG_NAME), "no config: %s",
          err.msg);
    CHECK(lf_peft_load("/nonexistent/adapter", &mc, &a, &err) == LF_ENOTFOUND, "no dir: %s", err.msg);

    /* tests/fuzz/fuzz_adapter: ranks are bounded by the weights before anything is allocated. "r": 1e9 with
     * the good rank-4 weights used to allocate L * slots * 1e9 * (in + out) floats (hundreds of GB: ENOMEM, or
     * libFuzzer's malloc limit); a rank_pattern value of 1e300 was cast to int64_t (undefined behaviour). */
    make_dir(dir, sizeof dir, "bigrank", &mc, c);
    write_text(dir, LF_PEFT_CONFIG_NAME, "{\"peft_type\": \"LORA\", \"r\": 1000000000, \"target_modules\": [\"q_proj\", "
                                         "\"v_proj\"]}");
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_EFORMAT && a == NULL && strstr(err.msg, "r=1000000000") &&
              strstr(err.msg, "above 4"),
          "huge r: %s", err.msg);
    write_text(dir, LF_PEFT_CONFIG_NAME, "{\"peft_type\": \"LORA\", \"r\": 4, \"target_modules\": [\"q_proj\", "
                                         "\"v_proj\"], \"rank_pattern\": {\"q_proj\": 1e300}}");
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_EFORMAT && a == NULL && strstr(err.msg, "rank_pattern"),
          "rank_pattern 1e300: %s", err.msg);
    write_text(dir, LF_PEFT_CONFIG_NAME, "{\"peft_type\": \"LORA\", \"r\": 4, \"target_modules\": [\"q_proj\", "
                                         "\"v_proj\"], \"rank_pattern\": {\"v_proj\": 900000000}}");
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_EFORMAT && a == NULL && strstr(err.msg, "v_proj") &&
              strstr(err.msg, "above 4"),
          "huge rank_pattern: %s", err.msg);
    /* a huge default r that no slot uses (every module has a rank_pattern entry) still loads, and keeps r */
    write_text(dir, LF_PEFT_CONFIG_NAME, "{\"peft_type\": \"LORA\", \"r\": 900000000, \"target_modules\": "
                                         "[\"q_proj\", \"v_proj\"], \"rank_pattern\": {\"q_proj\": 4, \"v_proj\": 4}}");
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_OK && a && a->cfg.r == 900000000 && a->n_slots == 4,
          "unused huge r: %s", err.msg);
    lf_lora_free(a);
    a = NULL;

    /* tests/fuzz/fuzz_adapter: a valid file whose header length is odd leaves BF16/F16 data at odd addresses;
     * converting it read uint16_t through a misaligned pointer (UBSan). Same values as the aligned file. */
    mkdir_fresh(dir, sizeof dir, "oddheader");
    lf_lora_adapter *src = make_random(&mc, c), *b = NULL;
    CHECK(src && lf_peft_save(src, dir, LF_DTYPE_BF16, &err) == LF_OK, "save bf16: %s", err.msg);
    CHECK(lf_peft_load(dir, &mc, &b, &err) == LF_OK, "aligned bf16 load: %s", err.msg);
    char wp[600], *bytes = NULL;
    size_t blen = 0;
    snprintf(wp, sizeof wp, "%s/%s", dir, LF_PEFT_WEIGHTS_NAME);
    if (lf_file_read_all(wp, &bytes, &blen, &err) == LF_OK && blen >= 8) {
        uint64_t n = 0;
        for (int i = 0; i < 8; i++) n |= (uint64_t)(uint8_t)bytes[i] << (8 * i);
        char *odd = malloc(blen + 1);
        if (odd) {
            memcpy(odd, bytes, 8 + n);
            odd[8 + n] = ' '; /* one more byte of space padding: N + 1 is odd */
            memcpy(odd + 9 + n, bytes + 8 + n, blen - 8 - n);
            for (int i = 0; i < 8; i++) odd[i] = (char)(uint8_t)((n + 1) >> (8 * i));
            lf_file_write_atomic(wp, odd, blen + 1, &err);
            free(odd);
        }
    }
    free(bytes);
    CHECK(lf_peft_load(dir, &mc, &a, &err) == LF_OK && a && b && a->n_params == b->n_params &&
              memcmp(a->params, b->params, (size_t)a->n_params * sizeof(float)) == 0,
          "odd header length (unaligned bf16): %s", err.msg);
    lf_lora_free(a);
    lf_lora_free(b);
    lf_lora_free(src);
    a = NULL;
}

static void test_atomic_failure(void) {
    lf_err err = {0};
    lf_model_config mc = tiny_model(32, 48, 1, 4, 2, 8);
    lf_lora_adapter *a = make_random(&mc, lf_lora_config_default());
    if (!a) return;
    char dir[512], p[600];
    mkdir_fresh(dir, sizeof dir, "atomic");
    /* the config's final name is a directory: rename fails; the temp file must be gone */
    snprintf(p, sizeof p, "%s/%s", dir, LF_PEFT_CONFIG_NAME);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/%s/x", dir, LF_PEFT_CONFIG_NAME);
    write_text(dir, LF_PEFT_CONFIG_NAME "/x", "occupied");
    lf_status st = lf_peft_save(a, dir, LF_DTYPE_F32, &err);
    int tmp = 0;
    int n = count_entries(dir, &tmp);
    CHECK(st != LF_OK && n == 2 && tmp == 0, "failed save: %s, %d entries, %d temp files (%s)", lf_status_name(st), n, tmp,
          err.msg);
    lf_lora_free(a);
}

static void test_names_and_repr(void) {
    struct {
        const char *name;
        int ok;
        int64_t l;
        int m, k;
    } cases[] = {
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", 1, 0, LF_MOD_Q, LF_PEFT_A},
        {"base_model.model.model.layers.12.mlp.down_proj.lora_B.weight", 1, 12, LF_MOD_DOWN, LF_PEFT_B},
        {"base_model.model.model.layers.3.mlp.up_proj.lora_magnitude_vector", 1, 3, LF_MOD_UP, LF_PEFT_MAG},
        {"base_model.model.model.layers.3.mlp.up_proj.lora_magnitude_vector.weight", 1, 3, LF_MOD_UP, LF_PEFT_MAG},
        {"base_model.model.model.layers.3.mlp.up_proj.lora_magnitude_vector.default", 1, 3, LF_MOD_UP, LF_PEFT_MAG},
        {"base_model.model.model.layers.3.mlp.up_proj.lora_magnitude_vector.default.weight", 1, 3, LF_MOD_UP, LF_PEFT_MAG},
        {"base_model.model.model.layers.1.self_attn.o_proj.lora_A.default.weight", 1, 1, LF_MOD_O, LF_PEFT_A},
        {"model.layers.1.self_attn.v_proj.lora_B.weight", 1, 1, LF_MOD_V, LF_PEFT_B},
        {"base_model.model.model.layers.1.self_attn.v_proj.lora_B", 0, 0, 0, 0},        /* A/B need .weight */
        {"base_model.model.model.layers.1.self_attn.v_proj.lora_B.bias", 0, 0, 0, 0},
        {"base_model.model.model.layers.1.mlp.q_proj.lora_A.weight", 0, 0, 0, 0},       /* wrong parent */
        {"base_model.model.model.layers.x.self_attn.q_proj.lora_A.weight", 0, 0, 0, 0},
        {"base_model.model.lm_head.lora_A.weight", 0, 0, 0, 0},
        {"base_model.model.model.embed_tokens.lora_embedding_A", 0, 0, 0, 0},
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_AB.weight", 0, 0, 0, 0},
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.a.b.weight", 0, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int64_t l = -1;
        lf_module m = LF_MOD_COUNT;
        lf_peft_kind k = LF_PEFT_A;
        int ok = lf_peft_parse_name(cases[i].name, &l, &m, &k);
        CHECK(ok == cases[i].ok && (!ok || (l == cases[i].l && (int)m == cases[i].m && (int)k == cases[i].k)),
              "parse %s -> %d l=%" PRId64 " m=%d k=%d", cases[i].name, ok, l, (int)m, (int)k);
    }
    char buf[256];
    lf_peft_tensor_name(buf, sizeof buf, 7, LF_MOD_GATE, LF_PEFT_MAG);
    CHECK(!strcmp(buf, "base_model.model.model.layers.7.mlp.gate_proj.lora_magnitude_vector"), "name %s", buf);

    /* Python repr(float) */
    struct {
        double x;
        const char *s;
    } reprs[] = {{0.0, "0.0"},          {0.05, "0.05"},       {16.0, "16.0"},     {1e-5, "1e-05"},
                 {1e16, "1e+16"},       {1e15, "1000000000000000.0"}, {0.0001, "0.0001"}, {123.456, "123.456"},
                 {-2.5, "-2.5"},        {1.5e-7, "1.5e-07"},  {0.1 + 0.2, "0.30000000000000004"}, {1e100, "1e+100"},
                 {5e-324, "5e-324"},    {1.7976931348623157e308, "1.7976931348623157e+308"}, {-0.0, "-0.0"},
                 {120.0, "120.0"},      {1234567.0, "1234567.0"}, {0.1, "0.1"}, {1e22, "1e+22"}, {NAN, "NaN"}};
    for (size_t i = 0; i < sizeof reprs / sizeof *reprs; i++) {
        lf_peft_float_repr(reprs[i].x, buf, sizeof buf);
        CHECK(!strcmp(buf, reprs[i].s), "repr(%.17g) = %s, want %s", reprs[i].x, buf, reprs[i].s);
    }
}

int main(void) {
    const char *env = getenv("LF_TEST_SEED");
    seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    printf("seed %llu\n", (unsigned long long)seed);
    lf_rng_seed(&rng, seed);
    snprintf(tmproot, sizeof tmproot, "/tmp/lf_test_lora.XXXXXX");
    if (!mkdtemp(tmproot)) {
        printf("FAIL: mkdtemp\n0 passed, 1 failed\n");
        return 1;
    }
    test_config_and_layout();
    test_targets();
    test_init();
    test_math();
    test_roundtrip();
    test_load_errors();
    test_atomic_failure();
    test_names_and_repr();
    nftw(tmproot, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
