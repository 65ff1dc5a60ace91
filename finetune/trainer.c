/* trainer.c - `loraforge train`: the SFT loop (see trainer.h for the semantics and the files it writes).
 *
 * Invariants: one lf_run owns every resource of a run and is torn down by run_free whatever happened;
 * buffers for a micro-batch [B, T] are allocated once; the step loop allocates only when it logs or saves
 * (JSON and file writes). A checkpoint directory appears complete under its final name or not at all. */
#include "finetune/trainer.h"

#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "adapters/lora.h"
#include "adapters/peft_io.h"
#include "core/fileio.h"
#include "core/json.h"
#include "core/log.h"
#include "finetune/data.h"
#include "finetune/optim.h"
#include "finetune/plot.h"
#include "finetune/schedule.h"
#include "kernels/backend.h"
#include "model/chat_template.h"
#include "model/model.h"
#include "model/model_train.h"
#include "model/tokenizer.h"
#include "quant/quant.h"

static volatile sig_atomic_t g_stop = 0;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

void lf_train_install_signal_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

typedef struct lf_run {
    const lf_train_config *cfg;
    lf_backend *be;
    lf_model *m;
    lf_tokenizer *tok;
    lf_chat_template *tmpl;
    lf_dataset *train, *eval;
    lf_data_iter *it;
    lf_lora_adapter *ad;
    lf_lora_view *views;
    lf_trainer_model *tm;
    lf_adamw_cfg acfg;
    lf_sched sched;
    int64_t B, GA, T, Be, total_steps, updates_per_epoch, step;
    int64_t log_every, save_every, eval_every;
    int32_t *tok_b, *tgt_b, *pos_b;
    int64_t *len_b;
    /* logs: every log entry as a JSON object (trainer_state log_history, trainer_log.jsonl, the plot) */
    json_t *history;
    double win_loss, run_loss, last_eval;
    int64_t win_steps, run_steps, win_tokens;
    double t_start, t_win;
    char out[PATH_MAX], ckroot[PATH_MAX];
} lf_run;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- setup ---- */

typedef struct rows_ctx {
    const lf_model *m;
    int64_t layer;
    int mod;
    float *full; /* dequantized [OC, C] of (layer, mod) */
} rows_ctx;

/* lf_lora_rows_fn: rows of the (dequantized) base weight, for DoRA's initial magnitude. */
static lf_status base_rows(void *vctx, int64_t layer, lf_module mod, int64_t row0, int64_t nrows, float *dst,
                           lf_err *err) {
    rows_ctx *c = vctx;
    int64_t OC, C;
    lf_module_shape(lf_model_get_config(c->m), mod, &OC, &C);
    const lf_tensor *dense = lf_model_linear_dense(c->m, layer, (int)mod);
    if (dense) return lf_to_f32_n(dst, (const char *)dense->data + (size_t)(row0 * C) * (size_t)(lf_dtype_bits(dense->dtype) / 8),
                                  dense->dtype, nrows * C, err);
    if (!c->full || c->layer != layer || c->mod != (int)mod) {
        float *f = realloc(c->full, (size_t)(OC * C) * sizeof(float));
        if (!f) return lf_err_set(err, LF_ENOMEM, "DoRA init: out of memory");
        c->full = f;
        lf_status st = lf_quant_dequantize_f32(c->full, lf_model_linear_q4(c->m, layer, (int)mod), NULL, err);
        if (st) return st;
        c->layer = layer;
        c->mod = (int)mod;
    }
    memcpy(dst, c->full + row0 * C, (size_t)(nrows * C) * sizeof(float));
    return LF_OK;
}

static lf_status make_adapter(lf_run *r, lf_err *err) {
    lf_status st = LF_OK;
    const lf_train_config *cfg = r->cfg;
    const lf_model_config *mc = lf_model_get_config(r->m);
    if (cfg->adapter_name_or_path.n > 0) {
        const char *dir = cfg->adapter_name_or_path.items[0];
        LF_TRY(lf_peft_load(dir, mc, &r->ad, err));
        LF_LOG(LF_LOG_INFO, "continuing training of the adapter in %s (r=%lld, alpha=%g; its adapter_config.json "
               "wins over lora_* keys)", dir, (long long)r->ad->cfg.r, r->ad->cfg.alpha);
        return LF_OK;
    }
    lf_lora_config lc = lf_lora_config_default();
    lc.r = cfg->lora_rank;
    lc.alpha = (double)cfg->lora_alpha;
    lc.dropout = cfg->lora_dropout;
    lc.use_rslora = cfg->use_rslora;
    lc.use_dora = cfg->use_dora;
    lc.target_mask = cfg->lora_target_mask;
    snprintf(lc.base_model_name_or_path, sizeof lc.base_model_name_or_path, "%s", cfg->model_name_or_path);
    LF_TRY(lf_lora_config_validate(&lc, err));
    LF_TRY(lf_lora_create(&lc, mc, &r->ad, err));
    lf_lora_init_peft(r->ad, (uint64_t)cfg->seed);
    if (lc.use_dora) {
        rows_ctx rc = {r->m, -1, -1, NULL};
        st = lf_lora_init_dora(r->ad, base_rows, &rc, err);
        free(rc.full);
        if (st) return st;
    }
    return LF_OK;
fail:
    return st;
}

static lf_status make_views(lf_run *r, lf_err *err) {
    const lf_model_config *mc = lf_model_get_config(r->m);
    int64_t NV = mc->L * LF_MOD_COUNT;
    r->views = calloc((size_t)NV, sizeof *r->views);
    if (!r->views) return lf_err_set(err, LF_ENOMEM, "train: out of memory");
    lf_lora_adapter *a = r->ad;
    for (int64_t i = 0; i < NV; i++) {
        const lf_lora_slot *s = lf_lora_get(a, i / LF_MOD_COUNT, (lf_module)(i % LF_MOD_COUNT));
        if (!s) continue;
        r->views[i] = (lf_lora_view){s->A, s->B, s->mag, a->grad + s->off_A, a->grad + s->off_B,
                                     s->mag ? a->grad + s->off_mag : NULL, s->R, (float)s->scaling};
    }
    return LF_OK;
}

static lf_status load_template(lf_run *r, lf_err *err) {
    const lf_train_config *cfg = r->cfg;
    char *src = NULL;
    lf_status st;
    if (cfg->template_name && strcmp(cfg->template_name, "auto") != 0) {
        const char *b = lf_chat_template_builtin(cfg->template_name);
        if (!b) {
            char names[512] = "";
            for (const char *const *n = lf_chat_template_builtin_names(); *n; n++)
                snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", names[0] ? ", " : "", *n);
            return lf_err_set(err, LF_EINVAL, "template: '%s' does not exist; built-in templates: %s (or leave "
                              "template unset to use the model's chat template)", cfg->template_name, names);
        }
        return lf_chat_template_compile(b, &r->tmpl, err);
    }
    st = lf_chat_template_from_model(cfg->model_name_or_path, &src, err);
    if (st == LF_ENOTFOUND) { /* no template in the model: LLaMA-Factory's "default" */
        LF_LOG(LF_LOG_WARN, "%s has no chat template; using the built-in 'default' template (set template: to "
               "choose one)", cfg->model_name_or_path);
        return lf_chat_template_compile(lf_chat_template_builtin("default"), &r->tmpl, err);
    }
    if (st) return st;
    st = lf_chat_template_compile(src, &r->tmpl, err);
    free(src);
    return st;
}

static int dir_has_outputs(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int found = 0;
    while ((e = readdir(d)) && !found)
        found = !strcmp(e->d_name, LF_PEFT_WEIGHTS_NAME) || !strncmp(e->d_name, "checkpoint-", 11);
    closedir(d);
    return found;
}

static lf_status check_output_dir(lf_run *r, lf_err *err) {
    const lf_train_config *cfg = r->cfg;
    snprintf(r->out, sizeof r->out, "%s", cfg->output_dir);
    snprintf(r->ckroot, sizeof r->ckroot, "%s", cfg->checkpoint_dir ? cfg->checkpoint_dir : cfg->output_dir);
    if (dir_has_outputs(r->out) && !cfg->overwrite_output_dir && cfg->resume_mode == LF_RESUME_NONE)
        return lf_err_set(err, LF_EINVAL, "output_dir %s already holds an adapter or checkpoints; set "
                          "overwrite_output_dir: true to replace them or resume_from_checkpoint: true to continue",
                          r->out);
    lf_status st = lf_mkdirs(r->out, err);
    if (st) return lf_err_wrap(err, st, "output_dir %s is not writable", r->out);
    if ((st = lf_mkdirs(r->ckroot, err))) return lf_err_wrap(err, st, "checkpoint directory %s is not writable", r->ckroot);
    char probe[PATH_MAX + 32];
    snprintf(probe, sizeof probe, "%s/.write-test", r->out);
    if ((st = lf_file_write_atomic(probe, "ok", 2, err)))
        return lf_err_wrap(err, st, "output_dir %s is not writable", r->out);
    unlink(probe);
    return LF_OK;
}

/* ---- checkpoints ---- */

static lf_status rm_rf(const char *path, lf_err *err) {
    DIR *d = opendir(path);
    if (!d) return unlink(path) == 0 || !lf_path_exists(path) ? LF_OK : lf_err_set(err, LF_EIO, "cannot remove %s", path);
    struct dirent *e;
    char p[PATH_MAX];
    lf_status st = LF_OK;
    while ((e = readdir(d)) && !st) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        st = rm_rf(p, err);
    }
    closedir(d);
    if (!st && rmdir(path) != 0) st = lf_err_set(err, LF_EIO, "cannot remove directory %s", path);
    return st;
}

/* Step numbers of complete checkpoint-N directories in root, ascending. Returns the count (<= cap). */
static int list_checkpoints(const char *root, int64_t *steps, int cap) {
    DIR *d = opendir(root);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        long long s;
        int used = 0;
        if (sscanf(e->d_name, "checkpoint-%lld%n", &s, &used) == 1 && e->d_name[used] == '\0' && s >= 0 && n < cap)
            steps[n++] = s;
    }
    closedir(d);
    for (int i = 1; i < n; i++) /* insertion sort */
        for (int j = i; j > 0 && steps[j - 1] > steps[j]; j--) {
            int64_t t = steps[j];
            steps[j] = steps[j - 1];
            steps[j - 1] = t;
        }
    return n;
}

static json_t *state_json(const lf_run *r, lf_data_position pos) {
    return json_pack("{s:I, s:I, s:f, s:{s:I, s:I}, s:O, s:I, s:I, s:I, s:I, s:I, s:I, s:f}", "global_step",
                     (json_int_t)r->step, "max_steps", (json_int_t)r->total_steps, "epoch",
                     (double)r->step / (double)r->updates_per_epoch, "data_position", "epoch", (json_int_t)pos.epoch,
                     "index", (json_int_t)pos.index, "log_history", r->history, "logging_steps",
                     (json_int_t)r->log_every, "eval_steps", (json_int_t)r->eval_every, "save_steps",
                     (json_int_t)r->save_every, "train_batch_size", (json_int_t)r->B, "gradient_accumulation_steps",
                     (json_int_t)r->GA, "seed", (json_int_t)r->cfg->seed, "learning_rate", r->cfg->learning_rate);
}

static lf_status save_checkpoint(lf_run *r, lf_err *err) {
    lf_status st = LF_OK;
    char fin[PATH_MAX + 64], tmp[PATH_MAX + 64], p[PATH_MAX + 160];
    json_t *js = NULL;
    snprintf(fin, sizeof fin, "%s/checkpoint-%lld", r->ckroot, (long long)r->step);
    snprintf(tmp, sizeof tmp, "%s/.checkpoint-%lld.tmp.%d", r->ckroot, (long long)r->step, (int)getpid());
    if (lf_path_exists(tmp)) LF_TRY(rm_rf(tmp, err));
    LF_TRY(lf_mkdirs(tmp, err));
    LF_TRY(lf_peft_save(r->ad, tmp, LF_DTYPE_F32, err));
    snprintf(p, sizeof p, "%s/optimizer.safetensors", tmp);
    LF_TRY(lf_adamw_state_save(p, r->ad->adam_m, r->ad->adam_v, r->ad->n_params, r->step, err));
    js = state_json(r, lf_data_iter_tell(r->it));
    json_object_set_new(js, "scheduler", json_pack("{s:s, s:f, s:I, s:I}", "type", lf_sched_type_name(r->sched.type),
                                                   "base_lr", r->sched.base_lr, "warmup_steps",
                                                   (json_int_t)r->sched.warmup_steps, "training_steps",
                                                   (json_int_t)r->sched.training_steps));
    snprintf(p, sizeof p, "%s/trainer_state.json", tmp);
    LF_TRY(lf_json_write_file(p, js, err));
    if (lf_path_exists(fin)) LF_TRY(rm_rf(fin, err));
    if (rename(tmp, fin) != 0) {
        st = lf_err_set(err, LF_EIO, "cannot rename %s to %s", tmp, fin);
        goto fail;
    }
    /* save_total_limit: drop the oldest */
    if (r->cfg->save_total_limit > 0) {
        int64_t steps[4096];
        int n = list_checkpoints(r->ckroot, steps, 4096);
        for (int i = 0; i + r->cfg->save_total_limit < n; i++) {
            snprintf(p, sizeof p, "%s/checkpoint-%lld", r->ckroot, (long long)steps[i]);
            LF_TRY(rm_rf(p, err));
        }
    }
    LF_LOG(LF_LOG_INFO, "saved %s", fin);
    json_decref(js);
    return LF_OK;
fail:
    json_decref(js);
    if (lf_path_exists(tmp)) {
        lf_err e2;
        rm_rf(tmp, &e2);
    }
    return lf_err_wrap(err, st, "checkpoint at step %lld not written (the previous checkpoints are intact)",
                       (long long)r->step);
}

static lf_status resume(lf_run *r, lf_err *err) {
    lf_status st = LF_OK;
    char dir[PATH_MAX + 64], p[PATH_MAX + 160];
    lf_lora_adapter *ck = NULL;
    json_t *js = NULL;
    const lf_train_config *cfg = r->cfg;
    if (cfg->resume_mode == LF_RESUME_PATH) {
        snprintf(dir, sizeof dir, "%s", cfg->resume_from_checkpoint);
    } else {
        int64_t steps[4096];
        int n = list_checkpoints(r->ckroot, steps, 4096);
        if (n == 0) {
            LF_LOG(LF_LOG_WARN, "resume_from_checkpoint: no checkpoint-N in %s; starting from step 0", r->ckroot);
            return LF_OK;
        }
        snprintf(dir, sizeof dir, "%s/checkpoint-%lld", r->ckroot, (long long)steps[n - 1]);
    }
    LF_TRY(lf_peft_load(dir, lf_model_get_config(r->m), &ck, err));
    if (ck->n_params != r->ad->n_params) {
        st = lf_err_set(err, LF_EINVAL, "%s: adapter has %lld parameters, this run's has %lld (different lora_* "
                        "settings?)", dir, (long long)ck->n_params, (long long)r->ad->n_params);
        goto fail;
    }
    memcpy(r->ad->params, ck->params, (size_t)ck->n_params * sizeof(float));
    int64_t step = 0;
    snprintf(p, sizeof p, "%s/optimizer.safetensors", dir);
    LF_TRY(lf_adamw_state_load(p, r->ad->adam_m, r->ad->adam_v, r->ad->n_params, &step, err));
    snprintf(p, sizeof p, "%s/trainer_state.json", dir);
    LF_TRY(lf_json_load_file(p, &js, err));
    int64_t gs = 0, pe = 0, pi = 0;
    LF_TRY(lf_json_int(js, "global_step", &gs, p, err));
    const json_t *dp = json_object_get(js, "data_position");
    LF_TRY(lf_json_int(dp, "epoch", &pe, p, err));
    LF_TRY(lf_json_int(dp, "index", &pi, p, err));
    if (gs != step) {
        st = lf_err_set(err, LF_EFORMAT, "%s: global_step %lld but the optimizer is at step %lld", dir, (long long)gs,
                        (long long)step);
        goto fail;
    }
    lf_data_position pos = {pe, pi};
    LF_TRY(lf_data_iter_seek(r->it, pos, err));
    json_t *h = json_object_get(js, "log_history");
    if (json_is_array(h)) {
        json_decref(r->history);
        r->history = json_deep_copy(h);
    }
    r->step = gs;
    LF_LOG(LF_LOG_INFO, "resumed from %s at step %lld", dir, (long long)gs);
fail:
    json_decref(js);
    lf_lora_free(ck);
    return st;
}

/* ---- logs ---- */

static lf_status write_logs(lf_run *r, lf_err *err) {
    lf_status st = LF_OK;
    char p[PATH_MAX + 64];
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    int64_t n = (int64_t)json_array_size(r->history), nl = 0, ne = 0;
    int64_t *ls = calloc((size_t)n + 1, sizeof *ls), *es = calloc((size_t)n + 1, sizeof *es);
    double *lv = calloc((size_t)n + 1, sizeof *lv), *ev = calloc((size_t)n + 1, sizeof *ev);
    if (!buf || !ls || !es || !lv || !ev) {
        st = lf_err_set(err, LF_ENOMEM, "train: out of memory writing logs");
        goto fail;
    }
    for (int64_t i = 0; i < n; i++) {
        json_t *e = json_array_get(r->history, (size_t)i);
        char *line = json_dumps(e, JSON_COMPACT | JSON_REAL_PRECISION(9));
        if (!line) continue;
        size_t k = strlen(line);
        if (len + k + 2 > cap) {
            while (len + k + 2 > cap) cap *= 2;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(line);
                st = lf_err_set(err, LF_ENOMEM, "train: out of memory writing logs");
                goto fail;
            }
            buf = nb;
        }
        memcpy(buf + len, line, k);
        len += k;
        buf[len++] = '\n';
        free(line);
        int64_t s = json_integer_value(json_object_get(e, "step"));
        if (json_object_get(e, "loss")) ls[nl] = s, lv[nl++] = json_real_value(json_object_get(e, "loss"));
        if (json_object_get(e, "eval_loss")) es[ne] = s, ev[ne++] = json_real_value(json_object_get(e, "eval_loss"));
    }
    snprintf(p, sizeof p, "%s/trainer_log.jsonl", r->out);
    LF_TRY(lf_file_write_atomic(p, buf, len, err));
    lf_plot_loss_data pd = {"training loss", ls, lv, nl, es, ev, ne};
    snprintf(p, sizeof p, "%s/training_loss.svg", r->out);
    LF_TRY(lf_plot_loss_svg(p, &pd, err));
fail:
    free(buf);
    free(ls);
    free(es);
    free(lv);
    free(ev);
    return st;
}

static lf_status evaluate(lf_run *r, double *out_loss, lf_err *err) {
    lf_status st = LF_OK;
    lf_data_iter *ei = NULL;
    *out_loss = NAN;
    if (!r->eval) return LF_OK;
    LF_TRY(lf_data_iter_create(r->eval, (uint64_t)r->cfg->seed, 0, 0, 1, &ei, err));
    int64_t units = lf_data_iter_epoch_len(ei), batches = 0;
    double acc = 0;
    for (int64_t u = 0; u < units; u += r->Be) {
        int64_t nb = units - u < r->Be ? units - u : r->Be;
        double ls = 0;
        int64_t nt = 0;
        for (int64_t b = 0; b < nb; b++) {
            int64_t n = 0;
            double l1;
            int64_t t1;
            LF_TRY(lf_data_iter_next(ei, r->T, r->tok_b, r->tgt_b, r->pos_b, &n, err));
            LF_TRY(lf_trainer_model_step(r->tm, r->tok_b, r->tgt_b, r->pos_b, n, 1.0f, 0, 0, 0, &l1, &t1, err));
            ls += l1;
            nt += t1;
        }
        if (nt == 0) continue;
        acc += ls / (double)nt;
        batches++;
    }
    *out_loss = batches ? acc / (double)batches : NAN;
fail:
    lf_data_iter_free(ei);
    return st;
}

static void log_entry(lf_run *r, json_t *e) {
    double el = now_s() - r->t_start;
    json_object_set_new(e, "step", json_integer(r->step));
    json_object_set_new(e, "current_steps", json_integer(r->step));
    json_object_set_new(e, "total_steps", json_integer(r->total_steps));
    json_object_set_new(e, "epoch", json_real((double)r->step / (double)r->updates_per_epoch));
    json_object_set_new(e, "percentage", json_real(100.0 * (double)r->step / (double)r->total_steps));
    json_object_set_new(e, "elapsed", json_real(el));
    json_array_append_new(r->history, e);
}

/* ---- the run ---- */

static void run_free(lf_run *r) {
    lf_trainer_model_free(r->tm);
    free(r->views);
    lf_lora_free(r->ad);
    lf_data_iter_free(r->it);
    lf_dataset_free(r->train);
    lf_dataset_free(r->eval);
    lf_chat_template_free(r->tmpl);
    lf_tokenizer_free(r->tok);
    lf_model_free(r->m);
    lf_backend_free(r->be);
    free(r->tok_b);
    free(r->tgt_b);
    free(r->pos_b);
    free(r->len_b);
    json_decref(r->history);
}

/* The model's tokenizer files that exist, copied into output_dir. A failed copy (disk full) is an error: the
 * output would be incomplete. */
static lf_status copy_tokenizer_files(const lf_run *r, lf_err *err) {
    static const char *files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                  "tokenizer.model", "chat_template.jinja", "chat_template.json"};
    char src[PATH_MAX], dst[PATH_MAX];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        lf_err e;
        if (lf_path_join(src, sizeof src, r->cfg->model_name_or_path, files[i], &e) || !lf_path_exists(src)) continue;
        lf_status st = lf_path_join(dst, sizeof dst, r->out, files[i], err);
        if (!st) st = lf_file_copy(src, dst, err);
        if (st) return lf_err_wrap(err, st, "copying the tokenizer file %s into output_dir", src);
    }
    return LF_OK;
}

static lf_status write_final(lf_run *r, double train_runtime, lf_err *err) {
    lf_status st = LF_OK;
    char p[PATH_MAX + 64];
    json_t *all = NULL, *tr = NULL, *ev = NULL, *state = NULL, *args = NULL;
    LF_TRY(lf_peft_save(r->ad, r->out, LF_DTYPE_F32, err));
    LF_TRY(copy_tokenizer_files(r, err));
    double epoch = (double)r->step / (double)r->updates_per_epoch;
    double train_loss = r->run_steps ? r->run_loss / (double)r->run_steps : NAN;
    tr = json_pack("{s:f, s:f, s:f, s:f, s:f}", "epoch", epoch, "train_loss", train_loss, "train_runtime", train_runtime,
                   "train_samples_per_second",
                   train_runtime > 0 ? (double)(r->run_steps * r->B * r->GA) / train_runtime : 0.0,
                   "train_steps_per_second", train_runtime > 0 ? (double)r->run_steps / train_runtime : 0.0);
    all = json_deep_copy(tr);
    if (r->eval) {
        ev = json_pack("{s:f, s:f, s:f}", "epoch", epoch, "eval_loss", r->last_eval, "perplexity", exp(r->last_eval));
        json_object_update(all, ev);
        snprintf(p, sizeof p, "%s/eval_results.json", r->out);
        LF_TRY(lf_json_write_file(p, ev, err));
    }
    snprintf(p, sizeof p, "%s/train_results.json", r->out);
    LF_TRY(lf_json_write_file(p, tr, err));
    snprintf(p, sizeof p, "%s/all_results.json", r->out);
    LF_TRY(lf_json_write_file(p, all, err));
    state = state_json(r, lf_data_iter_tell(r->it));
    snprintf(p, sizeof p, "%s/trainer_state.json", r->out);
    LF_TRY(lf_json_write_file(p, state, err));
    LF_TRY(lf_config_to_json(r->cfg, &args, err));
    snprintf(p, sizeof p, "%s/training_args.json", r->out);
    LF_TRY(lf_json_write_file(p, args, err));
    LF_TRY(write_logs(r, err));
fail:
    json_decref(all);
    json_decref(tr);
    json_decref(ev);
    json_decref(state);
    json_decref(args);
    return st;
}

static void progress(const lf_run *r, double loss) {
    if (!isatty(2)) return;
    int w = 30, fill = (int)((double)w * (double)r->step / (double)r->total_steps);
    char bar[64];
    for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
    bar[w] = '\0';
    double el = now_s() - r->t_start;
    fprintf(stderr, "\r[%s] %lld/%lld loss %.4f  %.1fs", bar, (long long)r->step, (long long)r->total_steps, loss, el);
    if (r->step == r->total_steps) fputc('\n', stderr);
    fflush(stderr);
}

lf_status lf_train_run(const lf_train_config *cfg, lf_train_result *res, lf_err *err) {
    lf_status st = LF_OK;
    lf_run run, *r = &run;
    memset(r, 0, sizeof run);
    memset(res, 0, sizeof *res);
    res->eval_loss = NAN;
    r->cfg = cfg;
    r->history = json_array();
    if (!r->history) return lf_err_set(err, LF_ENOMEM, "train: out of memory");
    LF_TRY(check_output_dir(r, err));

    /* model, tokenizer, template, data */
    r->be = lf_backend_cpu_create((int)cfg->threads);
    if (!r->be) {
        st = lf_err_set(err, LF_ENOMEM, "cannot create the cpu backend");
        goto fail;
    }
    lf_model_options mo = lf_model_default_options();
    if (cfg->quantization_bit == 4) {
        mo.quant_bits = 4;
        mo.quant_type = cfg->quantization_type == LF_QTYPE_FP4 ? LF_QUANT_FP4 : LF_QUANT_NF4;
        mo.double_quant = cfg->double_quantization;
    }
    LF_TRY(lf_model_load_opts(cfg->model_name_or_path, r->be, &mo, &r->m, err));
    const lf_model_memory *mm = lf_model_get_memory(r->m);
    LF_LOG(LF_LOG_INFO, "model %s: %d 4-bit matrices (%.1f MiB), %d dense (%.1f MiB)", cfg->model_name_or_path,
           mm->n_q4, (double)mm->q4_bytes / (1 << 20), mm->n_dense, (double)mm->dense_bytes / (1 << 20));
    st = lf_tokenizer_load(cfg->model_name_or_path, &r->tok, err);
    if (st == LF_ENOTFOUND) { /* fine for pre-tokenized data: lf_data_load says so otherwise */
        LF_LOG(LF_LOG_WARN, "%s has no tokenizer: only pre-tokenized rows (input_ids) can be used", cfg->model_name_or_path);
        st = LF_OK;
        if (cfg->template_name && strcmp(cfg->template_name, "auto") != 0) /* a template that does not exist is */
            LF_TRY(load_template(r, err));                                 /* an error even when unused */
    } else if (st) {
        goto fail;
    } else {
        LF_TRY(load_template(r, err));
    }
    lf_data_options dopt;
    lf_data_default_options(&dopt);
    char dataset[4096] = "", eval_dataset[4096] = "";
    for (int i = 0; i < cfg->dataset.n; i++)
        snprintf(dataset + strlen(dataset), sizeof dataset - strlen(dataset), "%s%s", i ? "," : "", cfg->dataset.items[i]);
    for (int i = 0; i < cfg->eval_dataset.n; i++)
        snprintf(eval_dataset + strlen(eval_dataset), sizeof eval_dataset - strlen(eval_dataset), "%s%s", i ? "," : "",
                 cfg->eval_dataset.items[i]);
    dopt.dataset = dataset;
    dopt.eval_dataset = eval_dataset[0] ? eval_dataset : NULL;
    dopt.dataset_dir = cfg->dataset_dir;
    dopt.template_name = cfg->template_name;
    dopt.cutoff_len = cfg->cutoff_len;
    dopt.max_samples = cfg->max_samples > 0 ? cfg->max_samples : 0;
    dopt.val_size = cfg->val_size > 0 ? cfg->val_size : 0;
    dopt.seed = (uint64_t)cfg->seed;
    dopt.train_on_prompt = cfg->train_on_prompt;
    dopt.mask_history = cfg->mask_history;
    dopt.packing = cfg->packing;
    lf_data_report rep;
    int want_eval = dopt.eval_dataset || dopt.val_size > 0;
    LF_TRY(lf_data_load(&dopt, r->tok, r->tmpl, &r->train, want_eval ? &r->eval : NULL, &rep, err));
    LF_LOG(LF_LOG_INFO, "data: %lld rows read, %lld skipped, %lld truncated; %lld train examples in %lld sequences, "
           "%lld eval examples", (long long)rep.rows_read, (long long)rep.rows_skipped, (long long)rep.rows_truncated,
           (long long)rep.n_train, (long long)rep.n_train_units, (long long)rep.n_eval);

    /* adapter + trainer model */
    LF_TRY(make_adapter(r, err));
    LF_TRY(lf_lora_alloc_grads(r->ad, 1, err));
    LF_TRY(make_views(r, err));
    r->T = r->train->max_unit_len;
    if (r->eval && r->eval->max_unit_len > r->T) r->T = r->eval->max_unit_len;
    lf_train_options to = {r->T, (float)r->ad->cfg.dropout, cfg->use_gradient_checkpointing, (uint64_t)cfg->seed, 0};
    LF_TRY(lf_trainer_model_create(r->m, r->views, &to, &r->tm, err));
    LF_LOG(LF_LOG_INFO, "adapter: %lld trainable parameters in %lld modules; workspace %.1f MiB for %lld tokens%s",
           (long long)r->ad->n_params, (long long)r->ad->n_slots,
           (double)lf_trainer_model_workspace_bytes(r->tm) / (1 << 20), (long long)r->T,
           to.checkpointing ? " (gradient checkpointing)" : "");

    /* schedule */
    r->B = cfg->per_device_train_batch_size;
    r->GA = cfg->gradient_accumulation_steps;
    r->Be = cfg->per_device_eval_batch_size > 0 ? cfg->per_device_eval_batch_size : r->B;
    LF_TRY(lf_data_iter_create(r->train, (uint64_t)cfg->seed, 1, 0, 1, &r->it, err));
    int64_t batches = (lf_data_iter_epoch_len(r->it) + r->B - 1) / r->B;
    r->updates_per_epoch = batches / r->GA > 0 ? batches / r->GA : 1;
    r->total_steps = cfg->max_steps > 0 ? cfg->max_steps
                                        : (int64_t)ceil(cfg->num_train_epochs * (double)r->updates_per_epoch);
    if (r->total_steps < 1) r->total_steps = 1;
    const lf_config_key *sk = lf_config_find_key("lr_scheduler_type");
    lf_sched_type stype;
    LF_TRY(lf_sched_parse_type(lf_config_enum_name(sk, cfg->lr_scheduler_type), &stype, err));
    lf_sched_init(&r->sched, stype, cfg->learning_rate,
                  lf_sched_resolve_warmup(cfg->warmup_steps, cfg->warmup_ratio, r->total_steps), r->total_steps);
    LF_TRY(lf_sched_check(&r->sched, err));
    r->acfg = (lf_adamw_cfg){cfg->adam_beta1, cfg->adam_beta2, cfg->adam_epsilon, cfg->weight_decay};
    LF_TRY(lf_adamw_check(&r->acfg, err));
    r->log_every = lf_config_resolve_steps(cfg->logging_steps, r->total_steps);
    r->save_every = cfg->save_strategy == LF_STRATEGY_NO ? 0 : lf_config_resolve_steps(cfg->save_steps, r->total_steps);
    if (cfg->save_strategy == LF_STRATEGY_EPOCH) r->save_every = r->updates_per_epoch;
    r->eval_every = !r->eval || cfg->eval_strategy == LF_STRATEGY_NO ? 0
                    : cfg->eval_strategy == LF_STRATEGY_EPOCH ? r->updates_per_epoch
                                                              : lf_config_resolve_steps(cfg->eval_steps, r->total_steps);
    size_t bt = (size_t)(r->B > r->Be ? r->B : r->Be) * (size_t)r->T;
    r->tok_b = malloc(bt * sizeof(int32_t));
    r->tgt_b = malloc(bt * sizeof(int32_t));
    r->pos_b = malloc(bt * sizeof(int32_t));
    r->len_b = malloc((size_t)(r->B > r->Be ? r->B : r->Be) * sizeof(int64_t));
    if (!r->tok_b || !r->tgt_b || !r->pos_b || !r->len_b) {
        st = lf_err_set(err, LF_ENOMEM, "train: out of memory for batch buffers");
        goto fail;
    }
    if (cfg->resume_mode != LF_RESUME_NONE) LF_TRY(resume(r, err));
    if (r->ad->cfg.use_dora) LF_TRY(lf_trainer_model_refresh_dora(r->tm, err));
    printf("training: %lld steps (%lld per epoch), batch %lld x %lld accumulation, lr %g %s warmup %lld, "
           "%lld trainable parameters\n", (long long)r->total_steps, (long long)r->updates_per_epoch, (long long)r->B,
           (long long)r->GA, cfg->learning_rate, lf_sched_type_name(stype), (long long)r->sched.warmup_steps,
           (long long)r->ad->n_params);
    fflush(stdout);

    lf_pool *pool = NULL; /* AdamW and the norm are cheap next to the model: the caller thread runs them */
    r->t_start = r->t_win = now_s();
    double t0 = r->t_start;
    int32_t pad = r->tok && lf_tokenizer_eos_id(r->tok) >= 0 ? lf_tokenizer_eos_id(r->tok) : 0;
    while (r->step < r->total_steps) {
        lf_lora_zero_grads(r->ad);
        double step_loss = 0;
        for (int64_t ga = 0; ga < r->GA; ga++) {
            LF_TRY(lf_data_iter_next_batch(r->it, r->B, r->T, pad, r->tok_b, r->tgt_b, r->pos_b, r->len_b, err));
            int64_t nmb = 0;
            for (int64_t b = 0; b < r->B; b++)
                for (int64_t t = 0; t < r->len_b[b]; t++) nmb += r->tgt_b[b * r->T + t] != LF_DATA_IGNORE;
            if (nmb == 0) continue;
            double mb_loss = 0;
            for (int64_t b = 0; b < r->B; b++) {
                double ls;
                int64_t nt;
                if (r->len_b[b] == 0) continue;
                LF_TRY(lf_trainer_model_step(r->tm, r->tok_b + b * r->T, r->tgt_b + b * r->T, r->pos_b + b * r->T,
                                             r->len_b[b], (float)(1.0 / ((double)nmb * (double)r->GA)), 1,
                                             (uint64_t)r->step, (uint64_t)(ga * r->B + b), &ls, &nt, err));
                mb_loss += ls;
                r->win_tokens += r->len_b[b];
            }
            step_loss += mb_loss / (double)nmb / (double)r->GA;
        }
        float gnorm = 0, coef = 1;
        if (cfg->max_grad_norm > 0) LF_TRY(lf_grad_clip(pool, r->ad->grad, r->ad->n_params, cfg->max_grad_norm, &gnorm, &coef, err));
        else gnorm = (float)lf_grad_norm(pool, r->ad->grad, r->ad->n_params);
        double lr = lf_sched_lr(&r->sched, r->step);
        LF_TRY(lf_adamw_step(pool, &r->acfg, lr, r->step + 1, r->ad->params, r->ad->grad, r->ad->adam_m, r->ad->adam_v,
                             r->ad->n_params, err));
        if (r->ad->cfg.use_dora) LF_TRY(lf_trainer_model_refresh_dora(r->tm, err));
        r->step++;
        r->win_loss += step_loss;
        r->win_steps++;
        r->run_loss += step_loss;
        r->run_steps++;
        if (!isfinite(step_loss)) LF_LOG(LF_LOG_WARN, "step %lld: loss is %g", (long long)r->step, step_loss);
        progress(r, step_loss);
        int last = r->step == r->total_steps;
        if (r->step % r->log_every == 0 || last || (cfg->logging_first_step && r->step == 1)) {
            double dt = now_s() - r->t_win, tps = dt > 0 ? (double)r->win_tokens / dt : 0;
            double wl = r->win_loss / (double)r->win_steps;
            double lr_log = lf_sched_lr(&r->sched, r->step); /* HF logs get_last_lr(): the next step's lr */
            json_t *e = json_pack("{s:f, s:f, s:f, s:f}", "loss", wl, "lr", lr_log, "grad_norm", (double)gnorm,
                                  "tokens_per_sec", tps);
            log_entry(r, e);
            printf("step=%lld train_loss=%.4f; lr=%.6g; grad_norm=%.4f; epoch=%.3f; tokens_per_sec=%.1f;\n",
                   (long long)r->step, wl, lr_log, (double)gnorm, (double)r->step / (double)r->updates_per_epoch, tps);
            fflush(stdout);
            r->win_loss = 0;
            r->win_steps = 0;
            r->win_tokens = 0;
            r->t_win = now_s();
            LF_TRY(write_logs(r, err));
        }
        if (r->eval_every && (r->step % r->eval_every == 0 || last)) {
            LF_TRY(evaluate(r, &r->last_eval, err));
            log_entry(r, json_pack("{s:f, s:f}", "eval_loss", r->last_eval, "eval_perplexity", exp(r->last_eval)));
            printf("step=%lld eval_loss=%.4f; eval_perplexity=%.4f;\n", (long long)r->step, r->last_eval,
                   exp(r->last_eval));
            fflush(stdout);
            LF_TRY(write_logs(r, err));
        }
        if ((r->save_every && r->step % r->save_every == 0 && !last) || (g_stop && !last)) LF_TRY(save_checkpoint(r, err));
        if (g_stop && !last) {
            printf("stopping at step %lld on a signal: checkpoint written to %s/checkpoint-%lld\n", (long long)r->step,
                   r->ckroot, (long long)r->step);
            res->interrupted = 1;
            break;
        }
    }
    if (!res->interrupted) {
        if (r->eval && r->eval_every == 0) { /* evaluate at the end anyway */
            LF_TRY(evaluate(r, &r->last_eval, err));
            log_entry(r, json_pack("{s:f, s:f}", "eval_loss", r->last_eval, "eval_perplexity", exp(r->last_eval)));
            printf("step=%lld eval_loss=%.4f; eval_perplexity=%.4f;\n", (long long)r->step, r->last_eval,
                   exp(r->last_eval));
        }
        LF_TRY(write_final(r, now_s() - t0, err));
        printf("saved adapter to %s (train_loss %.4f over %lld steps)\n", r->out,
               r->run_steps ? r->run_loss / (double)r->run_steps : NAN, (long long)r->run_steps);
    } else {
        LF_TRY(write_logs(r, err));
    }
    res->steps_done = r->step;
    res->train_loss = r->run_steps ? r->run_loss / (double)r->run_steps : NAN;
    res->eval_loss = r->last_eval;
fail:
    run_free(r);
    return st;
}
