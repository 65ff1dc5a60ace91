/* data.c - SFT data loading: dataset_info.json selection, file discovery (.json/.jsonl, gzip via zlib), row
 * parsing with file:line context, skipped-row reporting, val split, LLaMA-Factory greedy-knapsack packing, and
 * the seeded per-epoch iterator with checkpointable position. Row -> example lives in data_formats.c. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "core/fileio.h"
#include "core/json.h"
#include "core/log.h"
#include "core/rng.h"
#include "finetune/data_int.h"

#define PATH_CAP 4096

void lf_data_default_options(lf_data_options *o) {
    memset(o, 0, sizeof *o);
    o->dataset_dir = "data";
    o->template_name = "chat template";
    o->cutoff_len = 2048;
    o->seed = 42;
    o->eos_mode = LF_DATA_EOS_AUTO;
}

/* ---- dataset under construction ---- */

typedef struct builder {
    lf_i32vec ids, labels;
    int64_t *offsets; /* [n + 1] */
    int64_t n, cap;
} builder;

static void builder_free(builder *b) {
    lf_i32vec_free(&b->ids);
    lf_i32vec_free(&b->labels);
    free(b->offsets);
    memset(b, 0, sizeof *b);
}

static lf_status builder_add(builder *b, const int32_t *ids, const int32_t *labels, int64_t n, lf_err *err) {
    if (b->n + 2 > b->cap) {
        int64_t cap = b->cap ? b->cap * 2 : 1024;
        int64_t *p = realloc(b->offsets, (size_t)cap * sizeof *p);
        if (!p) return lf_err_set(err, LF_ENOMEM, "data: out of memory for %lld examples", (long long)cap);
        b->offsets = p;
        b->cap = cap;
        if (b->n == 0) b->offsets[0] = 0;
    }
    lf_status st = lf_i32vec_push(&b->ids, ids, n, err);
    if (!st) st = lf_i32vec_push(&b->labels, labels, n, err);
    if (st) return st;
    b->n++;
    b->offsets[b->n] = b->ids.n;
    return LF_OK;
}

/* ---- loader state ---- */

typedef struct loader {
    const lf_data_options *o;
    lf_dencoder enc;
    json_t *info; /* dataset_info.json or NULL */
    char info_path[PATH_CAP];
    lf_data_report *rep;
    /* the set being loaded */
    char set_files[640]; /* first file names, for the zero-usable-rows error */
    int64_t set_nfiles, set_skipped;
    char set_first_reason[LF_DATA_REPORT_MSG_LEN];
} loader;

static void note_file(loader *L, const char *path) {
    L->rep->n_files++;
    L->set_nfiles++;
    size_t used = strlen(L->set_files);
    if (L->set_nfiles <= 4) {
        snprintf(L->set_files + used, sizeof L->set_files - used, "%s%s", used ? ", " : "", path);
    } else if (L->set_nfiles == 5) {
        snprintf(L->set_files + used, sizeof L->set_files - used, ", ...");
    }
}

static void report_skip(loader *L, const char *where, const char *reason) {
    lf_data_report *r = L->rep;
    r->rows_skipped++;
    L->set_skipped++;
    if (!L->set_first_reason[0]) snprintf(L->set_first_reason, sizeof L->set_first_reason, "%s: %s", where, reason);
    if (r->n_msgs < LF_DATA_REPORT_MSGS) {
        snprintf(r->msgs[r->n_msgs], LF_DATA_REPORT_MSG_LEN, "%s: %s", where, reason);
        LF_LOG(LF_LOG_WARN, "skipped row %s: %s", where, reason);
        r->n_msgs++;
    } else if (r->n_msgs == LF_DATA_REPORT_MSGS && r->rows_skipped == LF_DATA_REPORT_MSGS + 1) {
        LF_LOG(LF_LOG_WARN, "more rows skipped; only the first %d are listed", LF_DATA_REPORT_MSGS);
    }
}

/* One file of one dataset. */
typedef struct file_ctx {
    const char *path;
    lf_dfmt fmt;       /* AUTO until the first recognizable row */
    int64_t *rows_left; /* max_samples budget of the dataset; < 0 = unlimited */
    builder *b;
} file_ctx;

static lf_status take_row(loader *L, file_ctx *fc, const json_t *row, int64_t pos, int is_index, lf_err *err) {
    char where[PATH_CAP + 32], reason[LF_DATA_REPORT_MSG_LEN];
    if (is_index) snprintf(where, sizeof where, "%s[%lld]", fc->path, (long long)pos);
    else snprintf(where, sizeof where, "%s:%lld", fc->path, (long long)pos);
    L->rep->rows_read++;
    if (*fc->rows_left > 0) (*fc->rows_left)--;
    if (fc->fmt.kind == LF_DFMT_AUTO && !lf_dfmt_detect(row, &fc->fmt)) {
        report_skip(L, where,
                    json_is_object(row) ? "unrecognized row: expected instruction/output (alpaca), conversations "
                                          "(sharegpt), messages (openai) or input_ids (tokenized)"
                                        : "row is not a JSON object");
        return LF_OK;
    }
    int truncated = 0;
    lf_status st = lf_dencode_row(&L->enc, &fc->fmt, row, reason, sizeof reason, &truncated, err);
    if (st) return lf_err_wrap(err, st, "%s", where);
    if (reason[0]) {
        report_skip(L, where, reason);
        return LF_OK;
    }
    L->rep->rows_truncated += truncated;
    return builder_add(fc->b, L->enc.ids.v, L->enc.labels.v, L->enc.ids.n, err);
}

/* Whole file, decompressed when gzip (zlib reads plain files unchanged). *out malloc'd, NUL-terminated. */
static lf_status read_file_any(const char *path, char **out, size_t *len, lf_err *err) {
    *out = NULL;
    *len = 0;
    gzFile g = gzopen(path, "rb");
    if (!g) return lf_err_set(err, LF_EIO, "%s: cannot open: %s", path, strerror(errno ? errno : ENOENT));
    gzbuffer(g, 1 << 17);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        gzclose(g);
        return lf_err_set(err, LF_ENOMEM, "%s: out of memory", path);
    }
    for (;;) {
        if (cap - n < (1u << 16) + 1) {
            char *p = realloc(buf, cap * 2);
            if (!p) {
                free(buf);
                gzclose(g);
                return lf_err_set(err, LF_ENOMEM, "%s: out of memory after %zu bytes", path, n);
            }
            buf = p;
            cap *= 2;
        }
        int r = gzread(g, buf + n, 1u << 16);
        if (r < 0) {
            int zerr;
            const char *m = gzerror(g, &zerr);
            lf_status st = lf_err_set(err, zerr == Z_ERRNO ? LF_EIO : LF_EFORMAT, "%s: read failed after %zu bytes: %s",
                                      path, n, zerr == Z_ERRNO ? strerror(errno) : m);
            free(buf);
            gzclose(g);
            return st;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    int zerr = Z_OK;
    const char *m = gzerror(g, &zerr);
    if (zerr != Z_OK) { /* Z_BUF_ERROR: the gzip stream ended early */
        lf_status st = lf_err_set(err, LF_EFORMAT, "%s: %s (truncated or corrupt gzip file?)", path, m);
        free(buf);
        gzclose(g);
        return st;
    }
    gzclose(g);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return LF_OK;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* 1: .json(.gz) (array or JSON lines), 2: .jsonl(.gz), 0: not a data file. */
static int file_kind(const char *path) {
    if (ends_with(path, ".json") || ends_with(path, ".json.gz")) return 1;
    if (ends_with(path, ".jsonl") || ends_with(path, ".jsonl.gz")) return 2;
    return 0;
}

static lf_status parse_lines(loader *L, file_ctx *fc, const char *buf, size_t len, lf_err *err) {
    size_t i = 0;
    int64_t line = 0;
    while (i < len && *fc->rows_left != 0) {
        size_t j = i;
        while (j < len && buf[j] != '\n') j++;
        line++;
        size_t e = j;
        if (e > i && buf[e - 1] == '\r') e--;
        size_t k = i;
        while (k < e && (buf[k] == ' ' || buf[k] == '\t')) k++;
        if (k < e) {
            json_error_t je;
            /* JSON_DECODE_ANY: a valid scalar line ("text", 42, null) is a row that is not an object (skipped and
             * reported like a list row), not malformed JSON */
            json_t *row = json_loadb(buf + i, e - i, JSON_ALLOW_NUL | JSON_DECODE_ANY, &je);
            if (!row)
                return lf_err_set(err, LF_EFORMAT, "%s:%lld:%d: invalid JSON: %s", fc->path, (long long)line, je.column,
                                  je.text);
            lf_status st = take_row(L, fc, row, line, 0, err);
            json_decref(row);
            if (st) return st;
        }
        i = j + 1;
    }
    return LF_OK;
}

static lf_status process_file(loader *L, file_ctx *fc, lf_err *err) {
    char *buf = NULL;
    size_t len = 0;
    lf_status st = LF_OK;
    json_t *all = NULL;
    note_file(L, fc->path);
    LF_TRY(read_file_any(fc->path, &buf, &len, err));
    const char *p = buf;
    if (len >= 3 && (unsigned char)p[0] == 0xEF && (unsigned char)p[1] == 0xBB && (unsigned char)p[2] == 0xBF) p += 3, len -= 3;
    size_t k = 0;
    while (k < len && (p[k] == ' ' || p[k] == '\t' || p[k] == '\n' || p[k] == '\r')) k++;
    if (file_kind(fc->path) == 1 && k < len && (p[k] == '[' || p[k] == '{')) {
        json_error_t je;
        all = json_loadb(p, len, JSON_ALLOW_NUL, &je);
        if (!all && p[k] == '[') {
            st = lf_err_set(err, LF_EFORMAT, "%s:%d:%d: invalid JSON: %s", fc->path, je.line, je.column, je.text);
            goto fail;
        }
        if (json_is_array(all)) {
            size_t i;
            json_t *row;
            json_array_foreach(all, i, row) {
                if (*fc->rows_left == 0) break;
                LF_TRY(take_row(L, fc, row, (int64_t)i, 1, err));
            }
            goto out;
        }
        if (json_is_object(all)) { /* one object (possibly spanning lines) */
            LF_TRY(take_row(L, fc, all, 1, 0, err));
            goto out;
        }
        /* more than one value: JSON lines in a .json file */
    }
    LF_TRY(parse_lines(L, fc, p, len, err));
out:
    json_decref(all);
    free(buf);
    return LF_OK;
fail:
    json_decref(all);
    free(buf);
    return st;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Data files of a directory, sorted by name; *names[*n] malloc'd (free each and the array). */
static lf_status list_dir(const char *dir, char ***names, size_t *n, lf_err *err) {
    *names = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return lf_err_set(err, LF_EIO, "%s: cannot open directory: %s", dir, strerror(errno));
    char **v = NULL;
    size_t cnt = 0, cap = 0;
    struct dirent *de;
    lf_status st = LF_OK;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' || !strcmp(de->d_name, "dataset_info.json")) continue;
        char path[PATH_CAP];
        if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= (int)sizeof path) continue;
        struct stat sb;
        if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        if (!file_kind(path)) {
            LF_LOG(LF_LOG_WARN, "%s: ignored (not .json, .jsonl, .json.gz or .jsonl.gz)", path);
            continue;
        }
        if (cnt == cap) {
            cap = cap ? cap * 2 : 16;
            char **nv = realloc(v, cap * sizeof *nv);
            if (!nv) goto oom;
            v = nv;
        }
        v[cnt] = strdup(path);
        if (!v[cnt]) goto oom;
        cnt++;
    }
    closedir(d);
    if (cnt) qsort(v, cnt, sizeof *v, cmp_str); /* v is NULL for a directory without data files */
    *names = v;
    *n = cnt;
    return LF_OK;
oom:
    st = lf_err_set(err, LF_ENOMEM, "%s: out of memory listing the directory", dir);
    closedir(d);
    for (size_t i = 0; i < cnt; i++) free(v[i]);
    free(v);
    return st;
}

/* ---- dataset_info.json ---- */

static lf_status entry_str(const json_t *obj, const char *key, const char **out, const char *ctx, lf_err *err) {
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return LF_OK;
    if (!json_is_string(v)) return lf_err_set(err, LF_EFORMAT, "%s: \"%s\" must be a string", ctx, key);
    *out = json_string_value(v);
    return LF_OK;
}

/* name -> path + format, from dataset_info.json or as a path. */
static lf_status resolve(loader *L, const char *name, char *path, lf_dfmt *f, lf_err *err) {
    const char *dir = L->o->dataset_dir && L->o->dataset_dir[0] ? L->o->dataset_dir : ".";
    json_t *ent = L->info ? json_object_get(L->info, name) : NULL;
    lf_dfmt_defaults(f, LF_DFMT_AUTO);
    if (!ent) {
        if (name[0] == '/') snprintf(path, PATH_CAP, "%s", name);
        else if (snprintf(path, PATH_CAP, "%s/%s", dir, name) >= PATH_CAP)
            return lf_err_set(err, LF_EINVAL, "dataset '%s': path too long", name);
        if (!lf_path_exists(path)) {
            if (L->info)
                return lf_err_set(err, LF_ENOTFOUND, "dataset '%s': not an entry of %s and no file or directory %s", name,
                                  L->info_path, path);
            return lf_err_set(err, LF_ENOTFOUND, "dataset '%s': no file or directory %s (and no %s/dataset_info.json)",
                              name, path, dir);
        }
        return LF_OK;
    }
    char ctx[2 * PATH_CAP + 32];
    snprintf(ctx, sizeof ctx, "%s: dataset '%s'", L->info_path, name);
    if (!json_is_object(ent)) return lf_err_set(err, LF_EFORMAT, "%s: entry must be an object", ctx);
    const char *file_name = NULL, *formatting = NULL;
    lf_status st = entry_str(ent, "file_name", &file_name, ctx, err);
    if (!st) st = entry_str(ent, "formatting", &formatting, ctx, err);
    if (st) return st;
    if (!file_name) {
        static const char *const remote[] = {"hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name", NULL};
        for (int i = 0; remote[i]; i++)
            if (json_object_get(ent, remote[i]))
                return lf_err_set(err, LF_EUNSUPPORTED, "%s: \"%s\" is not supported (no network); give a local \"file_name\"",
                                  ctx, remote[i]);
        return lf_err_set(err, LF_EFORMAT, "%s: missing \"file_name\"", ctx);
    }
    if (json_is_true(json_object_get(ent, "ranking")))
        return lf_err_set(err, LF_EUNSUPPORTED, "%s: preference (ranking) datasets are not supported by SFT", ctx);
    const json_t *cols = json_object_get(ent, "columns"), *tags = json_object_get(ent, "tags");
    if (cols && !json_is_object(cols)) return lf_err_set(err, LF_EFORMAT, "%s: \"columns\" must be an object", ctx);
    if (tags && !json_is_object(tags)) return lf_err_set(err, LF_EFORMAT, "%s: \"tags\" must be an object", ctx);
    lf_dfmt_kind kind;
    if (!formatting) kind = cols ? LF_DFMT_ALPACA : LF_DFMT_AUTO; /* LLaMA-Factory defaults to alpaca */
    else if (!strcmp(formatting, "alpaca")) kind = LF_DFMT_ALPACA;
    else if (!strcmp(formatting, "sharegpt")) kind = LF_DFMT_SHAREGPT;
    else if (!strcmp(formatting, "openai")) kind = LF_DFMT_OPENAI;
    else if (!strcmp(formatting, "tokenized")) kind = LF_DFMT_TOKENIZED;
    else return lf_err_set(err, LF_EINVAL, "%s: formatting \"%s\" is not alpaca, sharegpt, openai or tokenized", ctx, formatting);
    lf_dfmt_defaults(f, kind);
    f->lenient = (kind == LF_DFMT_SHAREGPT || kind == LF_DFMT_OPENAI) && !tags;
    if (cols) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)cols, k, v) {
            const char **slot = !strcmp(k, "prompt")     ? &f->prompt
                                : !strcmp(k, "query")    ? &f->query
                                : !strcmp(k, "response") ? &f->response
                                : !strcmp(k, "history")  ? &f->history
                                : !strcmp(k, "messages") ? &f->messages
                                : !strcmp(k, "system")   ? &f->system
                                : !strcmp(k, "tools")    ? &f->tools
                                                         : NULL;
            if (!slot) {
                if (!strcmp(k, "images") || !strcmp(k, "videos") || !strcmp(k, "audios") || !strcmp(k, "chosen") ||
                    !strcmp(k, "rejected") || !strcmp(k, "kto_tag"))
                    return lf_err_set(err, LF_EUNSUPPORTED, "%s: column \"%s\" is not supported (text SFT only)", ctx, k);
                LF_LOG(LF_LOG_WARN, "%s: column \"%s\" ignored", ctx, k);
                continue;
            }
            if (!json_is_string(v)) return lf_err_set(err, LF_EFORMAT, "%s: columns.%s must be a string", ctx, k);
            *slot = json_string_value(v);
        }
    }
    if (tags) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)tags, k, v) {
            const char **slot = !strcmp(k, "role_tag")          ? &f->role_tag
                                : !strcmp(k, "content_tag")     ? &f->content_tag
                                : !strcmp(k, "user_tag")        ? &f->user_tag
                                : !strcmp(k, "assistant_tag")   ? &f->assistant_tag
                                : !strcmp(k, "observation_tag") ? &f->observation_tag
                                : !strcmp(k, "function_tag")    ? &f->function_tag
                                : !strcmp(k, "system_tag")      ? &f->system_tag
                                                                : NULL;
            if (!slot) {
                LF_LOG(LF_LOG_WARN, "%s: tag \"%s\" ignored", ctx, k);
                continue;
            }
            if (!json_is_string(v)) return lf_err_set(err, LF_EFORMAT, "%s: tags.%s must be a string", ctx, k);
            *slot = json_string_value(v);
        }
    }
    if (file_name[0] == '/') snprintf(path, PATH_CAP, "%s", file_name);
    else if (snprintf(path, PATH_CAP, "%s/%s", dir, file_name) >= PATH_CAP)
        return lf_err_set(err, LF_EINVAL, "%s: path too long", ctx);
    if (!lf_path_exists(path)) return lf_err_set(err, LF_ENOTFOUND, "%s: file_name %s does not exist", ctx, path);
    return LF_OK;
}

static lf_status load_one(loader *L, const char *name, builder *b, lf_err *err) {
    char path[PATH_CAP];
    lf_dfmt f;
    char **files = NULL;
    size_t nfiles = 0;
    lf_status st = LF_OK;
    LF_TRY(resolve(L, name, path, &f, err));
    int64_t rows_left = L->o->max_samples > 0 ? L->o->max_samples : -1;
    if (lf_path_is_dir(path)) {
        LF_TRY(list_dir(path, &files, &nfiles, err));
        if (nfiles == 0) {
            st = lf_err_set(err, LF_ENOTFOUND, "dataset '%s': no .json, .jsonl, .json.gz or .jsonl.gz files in %s", name, path);
            goto fail;
        }
        for (size_t i = 0; i < nfiles && rows_left != 0; i++) {
            file_ctx fc = {.path = files[i], .fmt = f, .rows_left = &rows_left, .b = b};
            LF_TRY(process_file(L, &fc, err));
        }
    } else {
        if (!file_kind(path)) {
            st = lf_err_set(err, LF_EUNSUPPORTED, "dataset '%s': %s is not a .json, .jsonl, .json.gz or .jsonl.gz file", name,
                            path);
            goto fail;
        }
        file_ctx fc = {.path = path, .fmt = f, .rows_left = &rows_left, .b = b};
        LF_TRY(process_file(L, &fc, err));
    }
fail:
    for (size_t i = 0; i < nfiles; i++) free(files[i]);
    free(files);
    return st;
}

/* "a, b,c" -> each dataset into b; zero usable rows is an error naming the files. */
static lf_status load_set(loader *L, const char *list, const char *what, builder *b, lf_err *err) {
    L->set_files[0] = '\0';
    L->set_first_reason[0] = '\0';
    L->set_nfiles = L->set_skipped = 0;
    const char *s = list;
    int any = 0;
    while (*s) {
        while (*s == ',' || *s == ' ' || *s == '\t') s++;
        const char *e = s;
        while (*e && *e != ',') e++;
        const char *t = e;
        while (t > s && (t[-1] == ' ' || t[-1] == '\t')) t--;
        if (t > s) {
            char name[PATH_CAP];
            if ((size_t)(t - s) >= sizeof name) return lf_err_set(err, LF_EINVAL, "%s: dataset name too long", what);
            memcpy(name, s, (size_t)(t - s));
            name[t - s] = '\0';
            lf_status st = load_one(L, name, b, err);
            if (st) return st;
            any = 1;
        }
        s = e;
    }
    if (!any) return lf_err_set(err, LF_EINVAL, "%s: no dataset named in \"%s\"", what, list);
    if (b->n == 0) {
        if (L->set_skipped)
            return lf_err_set(err, LF_EINVAL, "%s \"%s\": no usable rows in %s (%lld skipped; first: %s)", what, list,
                              L->set_files, (long long)L->set_skipped, L->set_first_reason);
        return lf_err_set(err, LF_EINVAL, "%s \"%s\": no rows in %s", what, list, L->set_files);
    }
    return LF_OK;
}

/* ---- split, units ---- */

static uint64_t bounded(lf_rng *r, uint64_t n) { /* uniform in [0, n), no modulo bias */
    uint64_t lim = (uint64_t)(-n) % n, x;
    do x = lf_rng_next(r);
    while (x < lim);
    return x % n;
}

static void permute(int64_t *perm, int64_t n, uint64_t seed, int shuffle) {
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    if (!shuffle || n < 2) return;
    lf_rng r;
    lf_rng_seed(&r, seed);
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)bounded(&r, (uint64_t)i + 1);
        int64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

static lf_status split(const builder *all, const lf_data_options *o, builder *train, builder *eval, lf_err *err) {
    int64_t n = all->n, n_val = o->val_size < 1.0 ? (int64_t)ceil(o->val_size * (double)n) : (int64_t)o->val_size;
    if (n_val >= n)
        return lf_err_set(err, LF_EINVAL, "val_size=%g takes %lld of %lld usable examples, leaving none to train",
                          o->val_size, (long long)n_val, (long long)n);
    lf_status st = LF_OK;
    int64_t *perm = malloc((size_t)n * sizeof *perm);
    char *is_val = calloc((size_t)n, 1);
    LF_CHECK_ALLOC(perm, err);
    LF_CHECK_ALLOC(is_val, err);
    permute(perm, n, o->seed ^ 0x5d1a7e5ull, 1);
    for (int64_t i = 0; i < n_val; i++) is_val[perm[i]] = 1;
    for (int64_t i = 0; i < n; i++) {
        int64_t s = all->offsets[i], len = all->offsets[i + 1] - s;
        LF_TRY(builder_add(is_val[i] ? eval : train, all->ids.v + s, all->labels.v + s, len, err));
    }
fail:
    free(perm);
    free(is_val);
    return st;
}

int64_t lf_dataset_unit_len(const lf_dataset *ds, int64_t u) {
    int64_t n = 0;
    for (int64_t k = ds->unit_offsets[u]; k < ds->unit_offsets[u + 1]; k++) {
        int64_t e = ds->unit_members[k];
        n += ds->offsets[e + 1] - ds->offsets[e];
    }
    return n;
}

/* LLaMA-Factory greedy_knapsack: lengths sorted; fill each unit with the largest remaining length that fits. */
static lf_status pack(lf_dataset *ds, int64_t capacity, lf_err *err) {
    lf_status st = LF_OK;
    int64_t n = ds->n_examples, nw = capacity / 64 + 1;
    int64_t *start = calloc((size_t)capacity + 2, sizeof *start), *top = calloc((size_t)capacity + 1, sizeof *top);
    int64_t *sorted = malloc((size_t)n * sizeof *sorted);
    uint64_t *bits = calloc((size_t)nw, sizeof *bits);
    LF_CHECK_ALLOC(start, err);
    LF_CHECK_ALLOC(top, err);
    LF_CHECK_ALLOC(sorted, err);
    LF_CHECK_ALLOC(bits, err);
    for (int64_t i = 0; i < n; i++) {
        int64_t L = ds->offsets[i + 1] - ds->offsets[i];
        LF_ASSERT(L >= 1 && L <= capacity);
        start[L + 1]++;
    }
    for (int64_t L = 1; L <= capacity + 1; L++) start[L] += start[L - 1];
    for (int64_t L = 0; L <= capacity; L++) top[L] = start[L];
    for (int64_t i = 0; i < n; i++) sorted[top[ds->offsets[i + 1] - ds->offsets[i]]++] = i; /* stable by index */
    for (int64_t L = 1; L <= capacity; L++)
        if (top[L] > start[L]) bits[L >> 6] |= 1ull << (L & 63);
    int64_t left = n, m = 0, u = 0;
    ds->unit_offsets[0] = 0;
    while (left > 0) {
        int64_t rem = capacity;
        for (;;) {
            int64_t w = rem >> 6, L = -1;
            uint64_t word = bits[w] & (((rem & 63) == 63) ? ~0ull : ((1ull << ((rem & 63) + 1)) - 1));
            while (1) {
                if (word) {
                    L = w * 64 + 63 - __builtin_clzll(word);
                    break;
                }
                if (--w < 0) break;
                word = bits[w];
            }
            if (L < 1) break;
            ds->unit_members[m++] = sorted[--top[L]]; /* as LLaMA-Factory: the last index of that length */
            if (top[L] == start[L]) bits[L >> 6] &= ~(1ull << (L & 63));
            rem -= L;
            left--;
        }
        ds->unit_offsets[++u] = m;
    }
    ds->n_units = u;
fail:
    free(start);
    free(top);
    free(sorted);
    free(bits);
    return st;
}

static lf_status finish(builder *b, int packing, int64_t capacity, lf_dataset **out, lf_err *err) {
    lf_status st = LF_OK;
    lf_dataset *ds = calloc(1, sizeof *ds);
    LF_CHECK_ALLOC(ds, err);
    ds->n_examples = b->n;
    ds->n_tokens = b->ids.n;
    ds->input_ids = b->ids.v;
    ds->labels = b->labels.v;
    ds->offsets = b->offsets;
    memset(b, 0, sizeof *b); /* ownership moved */
    if (!ds->offsets) { /* no examples */
        ds->offsets = calloc(1, sizeof *ds->offsets);
        LF_CHECK_ALLOC(ds->offsets, err);
    }
    ds->unit_members = malloc(((size_t)ds->n_examples + 1) * sizeof *ds->unit_members);
    ds->unit_offsets = malloc(((size_t)ds->n_examples + 1) * sizeof *ds->unit_offsets);
    LF_CHECK_ALLOC(ds->unit_members, err);
    LF_CHECK_ALLOC(ds->unit_offsets, err);
    if (packing && ds->n_examples > 0) {
        LF_TRY(pack(ds, capacity, err));
    } else {
        for (int64_t i = 0; i <= ds->n_examples; i++) ds->unit_offsets[i] = i;
        for (int64_t i = 0; i < ds->n_examples; i++) ds->unit_members[i] = i;
        ds->n_units = ds->n_examples;
    }
    for (int64_t u = 0; u < ds->n_units; u++) {
        int64_t L = lf_dataset_unit_len(ds, u);
        if (L > ds->max_unit_len) ds->max_unit_len = L;
    }
    for (int64_t i = 0; i < ds->n_tokens; i++) ds->n_label_tokens += ds->labels[i] != LF_DATA_IGNORE;
    *out = ds;
    return LF_OK;
fail:
    lf_dataset_free(ds);
    return st;
}

void lf_dataset_free(lf_dataset *ds) {
    if (!ds) return;
    free(ds->input_ids);
    free(ds->labels);
    free(ds->offsets);
    free(ds->unit_members);
    free(ds->unit_offsets);
    free(ds);
}

/* ---- load ---- */

lf_status lf_data_load(const lf_data_options *o, const lf_tokenizer *tok, const lf_chat_template *tmpl,
                       lf_dataset **train, lf_dataset **eval, lf_data_report *rep, lf_err *err) {
    lf_status st = LF_OK;
    loader L;
    lf_data_report local_rep;
    builder all = {0}, tr = {0}, ev = {0};
    memset(&L, 0, sizeof L);
    if (train) *train = NULL;
    if (eval) *eval = NULL;
    if (!o || !train) return lf_err_set(err, LF_EINVAL, "data: options and train output are required");
    if (!o->dataset || !o->dataset[0]) return lf_err_set(err, LF_EINVAL, "data: `dataset` is required");
    if (o->cutoff_len < 1) return lf_err_set(err, LF_EINVAL, "data: cutoff_len must be >= 1, got %lld", (long long)o->cutoff_len);
    if (o->max_samples < 0) return lf_err_set(err, LF_EINVAL, "data: max_samples must be >= 0");
    if (!(o->val_size >= 0) || (o->val_size >= 1.0 && o->val_size != floor(o->val_size)))
        return lf_err_set(err, LF_EINVAL, "data: val_size must be a fraction in (0, 1) or an integer count, got %g", o->val_size);
    int has_eval_ds = o->eval_dataset && o->eval_dataset[0];
    if (has_eval_ds && o->val_size > 0)
        return lf_err_set(err, LF_EINVAL, "data: cannot specify val_size if eval_dataset is set");
    if ((has_eval_ds || o->val_size > 0) && !eval)
        return lf_err_set(err, LF_EINVAL, "data: an eval set was asked for but no eval output was given");
    L.o = o;
    L.rep = rep ? rep : &local_rep;
    memset(L.rep, 0, sizeof *L.rep);
    LF_TRY(lf_dencoder_init(&L.enc, o, tok, tmpl, err));
    const char *dir = o->dataset_dir && o->dataset_dir[0] ? o->dataset_dir : ".";
    if (snprintf(L.info_path, sizeof L.info_path, "%s/dataset_info.json", dir) >= (int)sizeof L.info_path) {
        st = lf_err_set(err, LF_EINVAL, "data: dataset_dir too long");
        goto fail;
    }
    if (lf_path_exists(L.info_path)) LF_TRY(lf_json_load_file(L.info_path, &L.info, err));
    if (L.info && !json_is_object(L.info)) {
        st = lf_err_set(err, LF_EFORMAT, "%s: must be a JSON object of dataset entries", L.info_path);
        goto fail;
    }
    LF_TRY(load_set(&L, o->dataset, "dataset", &all, err));
    if (has_eval_ds) {
        LF_TRY(load_set(&L, o->eval_dataset, "eval_dataset", &ev, err));
        tr = all;
        memset(&all, 0, sizeof all);
    } else if (o->val_size > 0) {
        LF_TRY(split(&all, o, &tr, &ev, err));
        builder_free(&all);
    } else {
        tr = all;
        memset(&all, 0, sizeof all);
    }
    L.rep->n_train = tr.n;
    L.rep->n_eval = ev.n;
    LF_TRY(finish(&tr, o->packing, o->cutoff_len, train, err));
    L.rep->n_train_units = (*train)->n_units;
    if (eval && (has_eval_ds || o->val_size > 0)) {
        LF_TRY(finish(&ev, o->packing, o->cutoff_len, eval, err));
        L.rep->n_eval_units = (*eval)->n_units;
    }
    LF_LOG(LF_LOG_INFO, "data: %lld rows read, %lld skipped, %lld truncated; train %lld examples in %lld sequences, eval %lld",
           (long long)L.rep->rows_read, (long long)L.rep->rows_skipped, (long long)L.rep->rows_truncated,
           (long long)L.rep->n_train, (long long)L.rep->n_train_units, (long long)L.rep->n_eval);
    lf_dencoder_free(&L.enc);
    json_decref(L.info);
    return LF_OK;
fail:
    builder_free(&all);
    builder_free(&tr);
    builder_free(&ev);
    lf_dencoder_free(&L.enc);
    json_decref(L.info);
    if (train && *train) lf_dataset_free(*train), *train = NULL;
    if (eval && *eval) lf_dataset_free(*eval), *eval = NULL;
    if (st == LF_OK) st = LF_ENOMEM;
    return st;
}

/* ---- iteration ---- */

struct lf_data_iter {
    const lf_dataset *ds;
    uint64_t seed;
    int shuffle, rank, world;
    int64_t epoch, index, epoch_len;
    int64_t perm_epoch; /* epoch perm[] was built for; -1 = none */
    int64_t *perm;      /* [n_units] */
};

lf_status lf_data_iter_create(const lf_dataset *ds, uint64_t seed, int shuffle, int rank, int world, lf_data_iter **out,
                              lf_err *err) {
    *out = NULL;
    if (!ds || ds->n_units < 1) return lf_err_set(err, LF_EINVAL, "data iterator: the dataset has no sequences");
    if (world < 1 || rank < 0 || rank >= world)
        return lf_err_set(err, LF_EINVAL, "data iterator: rank %d outside world size %d", rank, world);
    lf_data_iter *it = calloc(1, sizeof *it);
    if (!it) return lf_err_set(err, LF_ENOMEM, "data iterator: out of memory");
    it->perm = malloc((size_t)ds->n_units * sizeof *it->perm);
    if (!it->perm) {
        free(it);
        return lf_err_set(err, LF_ENOMEM, "data iterator: out of memory for %lld units", (long long)ds->n_units);
    }
    it->ds = ds;
    it->seed = seed;
    it->shuffle = shuffle;
    it->rank = rank;
    it->world = world;
    it->epoch_len = (ds->n_units + world - 1) / world;
    it->perm_epoch = -1;
    *out = it;
    return LF_OK;
}

void lf_data_iter_free(lf_data_iter *it) {
    if (!it) return;
    free(it->perm);
    free(it);
}

int64_t lf_data_iter_epoch_len(const lf_data_iter *it) { return it->epoch_len; }

lf_data_position lf_data_iter_tell(const lf_data_iter *it) {
    lf_data_position p = {it->epoch, it->index};
    return p;
}

lf_status lf_data_iter_seek(lf_data_iter *it, lf_data_position p, lf_err *err) {
    if (p.epoch < 0 || p.index < 0 || p.index > it->epoch_len)
        return lf_err_set(err, LF_EINVAL, "data iterator: position (epoch %lld, index %lld) outside [0, %lld]",
                          (long long)p.epoch, (long long)p.index, (long long)it->epoch_len);
    it->epoch = p.epoch;
    it->index = p.index;
    if (it->index == it->epoch_len) it->epoch++, it->index = 0;
    return LF_OK;
}

/* The unit at the current position; advances. */
static int64_t next_unit(lf_data_iter *it) {
    if (it->perm_epoch != it->epoch) {
        /* splitmix64 inside lf_rng_seed decorrelates neighbouring seeds/epochs */
        permute(it->perm, it->ds->n_units, it->seed + 0x9e3779b97f4a7c15ull * (uint64_t)(it->epoch + 1), it->shuffle);
        it->perm_epoch = it->epoch;
    }
    int64_t g = it->index * it->world + it->rank;
    int64_t u = it->perm[g % it->ds->n_units]; /* wraps to pad the last round, as DistributedSampler */
    if (++it->index == it->epoch_len) it->epoch++, it->index = 0;
    return u;
}

/* unit u -> tokens/targets/pos[len]; returns len. */
static int64_t fill_unit(const lf_dataset *ds, int64_t u, int32_t *tokens, int32_t *targets, int32_t *pos) {
    int64_t n = 0;
    for (int64_t k = ds->unit_offsets[u]; k < ds->unit_offsets[u + 1]; k++) {
        int64_t e = ds->unit_members[k], s = ds->offsets[e], len = ds->offsets[e + 1] - s;
        for (int64_t t = 0; t < len; t++) {
            tokens[n + t] = ds->input_ids[s + t];
            targets[n + t] = t + 1 < len ? ds->labels[s + t + 1] : LF_DATA_IGNORE;
            pos[n + t] = (int32_t)t;
        }
        n += len;
    }
    return n;
}

lf_status lf_data_iter_next(lf_data_iter *it, int64_t cap, int32_t *tokens, int32_t *targets, int32_t *pos, int64_t *n,
                            lf_err *err) {
    if (cap < it->ds->max_unit_len)
        return lf_err_set(err, LF_EINVAL, "data iterator: buffer of %lld tokens is shorter than the longest sequence (%lld)",
                          (long long)cap, (long long)it->ds->max_unit_len);
    *n = fill_unit(it->ds, next_unit(it), tokens, targets, pos);
    return LF_OK;
}

lf_status lf_data_iter_next_batch(lf_data_iter *it, int64_t B, int64_t T, int32_t pad_id, int32_t *tokens,
                                  int32_t *targets, int32_t *pos, int64_t *lens, lf_err *err) {
    if (B < 1 || T < it->ds->max_unit_len)
        return lf_err_set(err, LF_EINVAL, "data iterator: batch %lld x %lld cannot hold the longest sequence (%lld tokens)",
                          (long long)B, (long long)T, (long long)it->ds->max_unit_len);
    for (int64_t b = 0; b < B; b++) {
        int32_t *tk = tokens + b * T, *tg = targets + b * T, *ps = pos + b * T;
        int64_t n = fill_unit(it->ds, next_unit(it), tk, tg, ps);
        lens[b] = n;
        for (int64_t t = n; t < T; t++) {
            tk[t] = pad_id;
            tg[t] = LF_DATA_IGNORE;
            ps[t] = (int32_t)(t - n);
        }
    }
    return LF_OK;
}
