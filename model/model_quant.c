/* model_quant.c - 4-bit decoder linears: quantize on load, read and write the Hugging Face bitsandbytes
 * 4-bit checkpoint layout (formats.md section 3, "How transformers serializes bnb-4bit checkpoints").
 *
 * For each quantized linear P (e.g. model.layers.0.self_attn.q_proj) a checkpoint holds:
 *   P.weight                                  U8  [(n+1)/2, 1]  packed codes (high nibble first)
 *   P.weight.absmax                           U8  [nblocks] when nested (double quant), F32 [nblocks] otherwise
 *   P.weight.quant_map                        F32 [16]          the code table (must be bnb's nf4/fp4 table)
 *   P.weight.nested_absmax                    F32 [ceil(nblocks/256)]       (nested only)
 *   P.weight.nested_quant_map                 F32 [256]                     (nested only)
 *   P.weight.quant_state.bitsandbytes__nf4|fp4 U8 bytes of json.dumps({quant_type, blocksize, dtype, shape,
 *                                              [nested_blocksize, nested_dtype, nested_offset]})
 * and config.json a quantization_config block. Pre-quantized weights are views into the mapping (nothing is
 * copied); weights quantized on load own one allocation each (lf_quant_state). */
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "core/json.h"
#include "model/model_int.h"

static const char *const BNB_SUFFIXES[] = {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                           ".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4"};

int lf_model_is_bnb_companion(const char *name) {
    const char *w = strstr(name, ".weight.");
    if (!w) return 0;
    const char *rest = w + strlen(".weight");
    for (size_t i = 0; i < sizeof BNB_SUFFIXES / sizeof BNB_SUFFIXES[0]; i++)
        if (!strcmp(rest, BNB_SUFFIXES[i])) return 1;
    return 0;
}

static const char *st_path_of(const lf_st_file *f) { return f ? lf_st_path(f) : "?"; }

/* Find prefix+suffix; required tensors missing are an error naming both. */
static lf_status find_part(lf_model *m, const char *prefix, const char *suffix, int required,
                           const lf_st_tensor **out, const lf_st_file **file, lf_err *err) {
    char name[300];
    snprintf(name, sizeof name, "%s%s", prefix, suffix);
    *out = lf_st_model_find(m->st, name, file);
    if (!*out && required)
        return lf_err_set(err, LF_EFORMAT, "%s: 4-bit weight %s.weight: companion tensor '%s' is missing (a "
                          "bitsandbytes 4-bit checkpoint stores absmax, quant_map and quant_state beside each weight)",
                          m->dir, prefix, name);
    return LF_OK;
}

static lf_status want_dtype(const lf_st_tensor *t, const lf_st_file *f, lf_dtype dt, int64_t numel, lf_err *err) {
    if (t->dtype != dt || t->numel != numel)
        return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s' is %s with %lld elements, expected %s with %lld",
                          st_path_of(f), t->name, lf_dtype_name(t->dtype), (long long)t->numel, lf_dtype_name(dt),
                          (long long)numel);
    if (dt == LF_DTYPE_F32 && ((uintptr_t)t->data & 3u))
        return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s' is not 4-byte aligned in the file (re-save it with "
                          "safetensors)", st_path_of(f), t->name);
    return LF_OK;
}

lf_status lf_model_load_linear_q4(lf_model *m, const char *prefix, lf_linear *lin, lf_err *err) {
    lf_status st = LF_OK;
    json_t *qs = NULL;
    const lf_st_file *f = NULL, *ff = NULL;
    const lf_st_tensor *w = NULL, *state = NULL, *absmax = NULL, *qmap = NULL, *nabs = NULL, *nmap = NULL;
    LF_TRY(find_part(m, prefix, ".weight", 1, &w, &f, err));
    if (w->dtype != LF_DTYPE_U8) {
        /* a module bitsandbytes left dense (llm_int8_skip_modules): load it as stored */
        int64_t shape[2] = {lin->OC, lin->C};
        if (w->ndim != 2 || w->shape[0] != lin->OC || w->shape[1] != lin->C ||
            (w->dtype != LF_DTYPE_F32 && w->dtype != LF_DTYPE_BF16 && w->dtype != LF_DTYPE_F16))
            return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s' is %s [%lld, ...]; expected U8 packed 4-bit or a "
                              "dense F32/BF16/F16 [%lld, %lld]", st_path_of(f), w->name, lf_dtype_name(w->dtype),
                              (long long)w->shape[0], (long long)lin->OC, (long long)lin->C);
        lin->w = lf_tensor_view((void *)w->data, w->dtype, 2, shape);
        m->mem.dense_bytes += (int64_t)lf_tensor_nbytes(&lin->w);
        m->mem.n_dense++;
        return LF_OK;
    }
    int type = -1;
    LF_TRY(find_part(m, prefix, ".weight.quant_state.bitsandbytes__nf4", 0, &state, &ff, err));
    if (state) type = LF_QUANT_NF4;
    else {
        LF_TRY(find_part(m, prefix, ".weight.quant_state.bitsandbytes__fp4", 0, &state, &ff, err));
        if (state) type = LF_QUANT_FP4;
    }
    if (!state) {
        /* a quant_state key with another quant type, or none at all */
        for (int64_t i = 0; i < lf_st_model_count(m->st); i++) {
            const lf_st_tensor *t = lf_st_model_at(m->st, i, &ff);
            char want[300];
            snprintf(want, sizeof want, "%s.weight.quant_state.", prefix);
            if (!strncmp(t->name, want, strlen(want)))
                return lf_err_set(err, LF_EUNSUPPORTED, "%s: '%s': unknown 4-bit quant_state '%s' (supported: "
                                  "bitsandbytes__nf4, bitsandbytes__fp4)", st_path_of(ff), w->name,
                                  t->name + strlen(want));
        }
        return lf_err_set(err, LF_EFORMAT, "%s: '%s' is U8 (packed 4-bit) but '%s.weight.quant_state."
                          "bitsandbytes__nf4' (or __fp4) is missing, so its blocksize, shape and type are unknown",
                          st_path_of(f), w->name, prefix);
    }
    if (state->dtype != LF_DTYPE_U8 || state->ndim != 1)
        return lf_err_set(err, LF_EFORMAT, "%s: '%s' must be a 1-D U8 tensor of JSON bytes", st_path_of(ff), state->name);
    LF_TRY(lf_json_load_buffer((const char *)state->data, (size_t)state->numel, state->name, &qs, err));
    const char *qt = NULL, *dname = NULL;
    int64_t B = 0;
    LF_TRY(lf_json_str(qs, "quant_type", &qt, state->name, err));
    LF_TRY(lf_json_int(qs, "blocksize", &B, state->name, err));
    LF_TRY(lf_json_str_opt(qs, "dtype", "float32", &dname, state->name, err));
    if (strcmp(qt, type == LF_QUANT_NF4 ? "nf4" : "fp4")) {
        st = lf_err_set(err, LF_EFORMAT, "%s: quant_type \"%s\" does not match the key suffix (%s)", state->name, qt,
                        type == LF_QUANT_NF4 ? "nf4" : "fp4");
        goto fail;
    }
    if ((st = lf_quant_check_blocksize(B, err))) {
        lf_err_wrap(err, st, "%s", state->name);
        goto fail;
    }
    const json_t *shape = json_object_get(qs, "shape");
    if (!json_is_array(shape) || json_array_size(shape) != 2 || !json_is_integer(json_array_get(shape, 0)) ||
        !json_is_integer(json_array_get(shape, 1))) {
        st = lf_err_set(err, LF_EFORMAT, "%s: \"shape\" must be [out, in]", state->name);
        goto fail;
    }
    int64_t r = json_integer_value(json_array_get(shape, 0)), c = json_integer_value(json_array_get(shape, 1));
    if (r != lin->OC || c != lin->C) {
        st = lf_err_set(err, LF_EFORMAT, "%s: shape [%lld, %lld] does not match config.json's [%lld, %lld] for %s",
                        state->name, (long long)r, (long long)c, (long long)lin->OC, (long long)lin->C, prefix);
        goto fail;
    }
    int nested = json_object_get(qs, "nested_blocksize") != NULL;
    double offset = 0;
    if (nested) {
        int64_t nb = 0;
        LF_TRY(lf_json_int(qs, "nested_blocksize", &nb, state->name, err));
        LF_TRY(lf_json_num(qs, "nested_offset", &offset, state->name, err));
        if (nb != LF_QUANT_NESTED_BLOCK) {
            st = lf_err_set(err, LF_EUNSUPPORTED, "%s: nested_blocksize %lld (bitsandbytes uses %d)", state->name,
                            (long long)nb, LF_QUANT_NESTED_BLOCK);
            goto fail;
        }
    }
    int64_t n = lin->OC * lin->C, nblocks = (n + B - 1) / B, n_nested = (nblocks + 255) / 256;
    if (w->numel != (n + 1) / 2) {
        st = lf_err_set(err, LF_EFORMAT, "%s: '%s' holds %lld bytes; shape [%lld, %lld] needs %lld packed bytes",
                        st_path_of(f), w->name, (long long)w->numel, (long long)lin->OC, (long long)lin->C,
                        (long long)((n + 1) / 2));
        goto fail;
    }
    LF_TRY(find_part(m, prefix, ".weight.absmax", 1, &absmax, &ff, err));
    LF_TRY(want_dtype(absmax, ff, nested ? LF_DTYPE_U8 : LF_DTYPE_F32, nblocks, err));
    LF_TRY(find_part(m, prefix, ".weight.quant_map", 1, &qmap, &ff, err));
    LF_TRY(want_dtype(qmap, ff, LF_DTYPE_F32, LF_QUANT_CODES, err));
    const float *table = lf_quant_code_table((lf_quant_type)type);
    for (int i = 0; i < LF_QUANT_CODES; i++)
        if (((const float *)qmap->data)[i] != table[i]) {
            st = lf_err_set(err, LF_EUNSUPPORTED, "%s: '%s'[%d] = %.9g differs from bitsandbytes' %s table (%.9g); "
                            "custom code tables are not supported", st_path_of(ff), qmap->name, i,
                            (double)((const float *)qmap->data)[i], qt, (double)table[i]);
            goto fail;
        }
    if (nested) {
        LF_TRY(find_part(m, prefix, ".weight.nested_absmax", 1, &nabs, &ff, err));
        LF_TRY(want_dtype(nabs, ff, LF_DTYPE_F32, n_nested, err));
        LF_TRY(find_part(m, prefix, ".weight.nested_quant_map", 1, &nmap, &ff, err));
        LF_TRY(want_dtype(nmap, ff, LF_DTYPE_F32, LF_QUANT_DYN_MAP_SIZE, err));
    }
    st = lf_quant_state_view(&lin->q, (lf_quant_type)type, lin->OC, lin->C, B, w->data, (size_t)w->numel,
                             absmax->data, (size_t)(absmax->end - absmax->begin), nested,
                             nested ? nabs->data : NULL, nested ? (size_t)(nabs->end - nabs->begin) : 0,
                             nested ? nmap->data : NULL, (float)offset, err);
    if (st) {
        lf_err_wrap(err, st, "%s: 4-bit weight %s", m->dir, prefix);
        goto fail;
    }
    json_decref(qs);
    return LF_OK;
fail:
    json_decref(qs);
    memset(&lin->q, 0, sizeof lin->q);
    return st;
}

lf_status lf_model_quantize_linear(lf_model *m, const char *prefix, lf_linear *lin, lf_err *err) {
    lf_status st = LF_OK;
    char name[300];
    float *tmp = NULL;
    const lf_st_file *f = NULL;
    snprintf(name, sizeof name, "%s.weight", prefix);
    const lf_st_tensor *t = lf_st_model_find(m->st, name, &f);
    if (!t)
        return lf_err_set(err, LF_ENOTFOUND, "tensor '%s' is missing from the checkpoint in %s", name, m->dir);
    if (t->ndim != 2 || t->shape[0] != lin->OC || t->shape[1] != lin->C)
        return lf_err_set(err, LF_EFORMAT, "%s: tensor '%s' has shape [%lld, %lld], expected [%lld, %lld] from "
                          "config.json", st_path_of(f), name, (long long)t->shape[0],
                          (long long)(t->ndim > 1 ? t->shape[1] : 0), (long long)lin->OC, (long long)lin->C);
    const void *src = t->data;
    lf_dtype dt = t->dtype;
    if (dt == LF_DTYPE_F16) { /* quantize from the exact f32 values */
        tmp = malloc((size_t)t->numel * sizeof(float));
        LF_CHECK_ALLOC(tmp, err);
        LF_TRY(lf_to_f32_n(tmp, t->data, dt, t->numel, err));
        src = tmp;
        dt = LF_DTYPE_F32;
    } else if (dt != LF_DTYPE_F32 && dt != LF_DTYPE_BF16) {
        return lf_err_set(err, LF_EUNSUPPORTED, "%s: tensor '%s' has dtype %s; 4-bit quantization reads F32, BF16 or "
                          "F16", st_path_of(f), name, lf_dtype_name(dt));
    }
    st = lf_quant_quantize(&lin->q, src, dt, lin->OC, lin->C, m->opt.quant_blocksize,
                           (lf_quant_type)m->opt.quant_type, m->opt.double_quant, err);
    if (st) lf_err_wrap(err, st, "quantizing %s", name);
fail:
    free(tmp);
    return st;
}

/* ---------------------------------------------------------------------------------------------------- */
/* writing                                                                                               */

/* Python's repr(float): the shortest decimal that round-trips, ".0" added to integral values. */
static void py_float_repr(char *out, size_t cap, double v) {
    for (int p = 1; p <= 17; p++) {
        snprintf(out, cap, "%.*g", p, v);
        if (strtod(out, NULL) == v) break;
    }
    if (!strpbrk(out, ".einn")) strncat(out, ".0", cap - strlen(out) - 1);
}

static const char *torch_dtype_name(lf_dtype dt) {
    return dt == LF_DTYPE_BF16 ? "bfloat16" : dt == LF_DTYPE_F16 ? "float16" : "float32";
}

/* Is `name` "model.layers.N.<parent>.<module>.weight"? Sets *layer, *mod. */
static int parse_linear_name(const char *name, int64_t L, int64_t *layer, int *mod) {
    long long l = -1;
    int used = 0;
    if (sscanf(name, "model.layers.%lld.%n", &l, &used) != 1 || used == 0 || l < 0 || l >= L) return 0;
    for (int k = 0; k < LF_MOD_COUNT; k++) {
        char want[96];
        snprintf(want, sizeof want, "%s.%s.weight", lf_module_parent(k), lf_module_name(k));
        if (!strcmp(name + used, want)) {
            *layer = l;
            *mod = k;
            return 1;
        }
    }
    return 0;
}

static int skip_copy(const char *fname) {
    size_t n = strlen(fname);
    if (!strcmp(fname, "config.json") || !strcmp(fname, "model.safetensors.index.json")) return 1;
    if (n > 12 && !strcmp(fname + n - 12, ".safetensors")) return 1;
    if (strstr(fname, ".tmp.")) return 1;
    return fname[0] == '.';
}

lf_status lf_model_save_quantized(const lf_model *m, const char *out_dir, lf_err *err) {
    lf_status st = LF_OK;
    lf_st_writer *w = NULL;
    char *blobs = NULL;
    json_t *cfg = NULL;
    DIR *d = NULL;
    char path[PATH_MAX], src[PATH_MAX];
    const lf_model_config *c = &m->cfg;
    const int64_t nlin = c->L * LF_MOD_COUNT;
    const size_t BLOB = 512;
    if (c->prequant_4bit)
        return lf_err_set(err, LF_EINVAL, "%s is already a bitsandbytes 4-bit checkpoint", m->dir);
    if (m->mem.n_q4 != nlin)
        return lf_err_set(err, LF_EINVAL, "model was not quantized on load (quantization_bit 4)");
    LF_TRY(lf_mkdirs(out_dir, err));
    char rin[PATH_MAX], rout[PATH_MAX];
    if (realpath(m->dir, rin) && realpath(out_dir, rout) && !strcmp(rin, rout))
        return lf_err_set(err, LF_EINVAL, "--out %s is the model directory itself; choose another directory", out_dir);
    w = lf_st_writer_create();
    blobs = calloc((size_t)nlin, BLOB);
    if (!w || !blobs) {
        st = lf_err_set(err, LF_ENOMEM, "quantize: out of memory");
        goto fail;
    }
    LF_TRY(lf_st_writer_set_meta(w, "format", "pt", err));
    lf_dtype src_dt = LF_DTYPE_BF16;
    for (int64_t i = 0; i < lf_st_model_count(m->st); i++) {
        const lf_st_tensor *t = lf_st_model_at(m->st, i, NULL);
        int64_t l;
        int mod;
        char nm[300];
        if (!parse_linear_name(t->name, c->L, &l, &mod)) {
            LF_TRY(lf_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, err));
            continue;
        }
        src_dt = t->dtype;
        const lf_quant_state *q = &m->layers[l].lin[mod].q;
        int64_t pshape[2] = {(q->n + 1) / 2, 1}, one[1];
        LF_TRY(lf_st_writer_add(w, t->name, LF_DTYPE_U8, 2, pshape, q->packed, err));
        snprintf(nm, sizeof nm, "%s.absmax", t->name);
        one[0] = q->nblocks;
        if (q->nested) LF_TRY(lf_st_writer_add(w, nm, LF_DTYPE_U8, 1, one, q->absmax_q, err));
        else LF_TRY(lf_st_writer_add(w, nm, LF_DTYPE_F32, 1, one, q->absmax, err));
        snprintf(nm, sizeof nm, "%s.quant_map", t->name);
        one[0] = LF_QUANT_CODES;
        LF_TRY(lf_st_writer_add(w, nm, LF_DTYPE_F32, 1, one, lf_quant_code_table(q->type), err));
        char *blob = blobs + (size_t)(l * LF_MOD_COUNT + mod) * BLOB;
        int len;
        if (q->nested) {
            snprintf(nm, sizeof nm, "%s.nested_absmax", t->name);
            one[0] = q->n_nested;
            LF_TRY(lf_st_writer_add(w, nm, LF_DTYPE_F32, 1, one, q->nested_absmax, err));
            snprintf(nm, sizeof nm, "%s.nested_quant_map", t->name);
            one[0] = LF_QUANT_DYN_MAP_SIZE;
            LF_TRY(lf_st_writer_add(w, nm, LF_DTYPE_F32, 1, one, q->nested_map, err));
            char off[40];
            py_float_repr(off, sizeof off, (double)q->offset);
            len = snprintf(blob, BLOB, "{\"quant_type\": \"%s\", \"blocksize\": %lld, \"dtype\": \"%s\", \"shape\": "
                           "[%lld, %lld], \"nested_blocksize\": %d, \"nested_dtype\": \"float32\", "
                           "\"nested_offset\": %s}", lf_quant_type_name(q->type), (long long)q->blocksize,
                           torch_dtype_name(t->dtype), (long long)q->rows, (long long)q->cols,
                           LF_QUANT_NESTED_BLOCK, off);
        } else {
            len = snprintf(blob, BLOB, "{\"quant_type\": \"%s\", \"blocksize\": %lld, \"dtype\": \"%s\", \"shape\": "
                           "[%lld, %lld]}", lf_quant_type_name(q->type), (long long)q->blocksize,
                           torch_dtype_name(t->dtype), (long long)q->rows, (long long)q->cols);
        }
        snprintf(nm, sizeof nm, "%s.quant_state.bitsandbytes__%s", t->name, lf_quant_type_name(q->type));
        one[0] = len;
        LF_TRY(lf_st_writer_add(w, nm, LF_DTYPE_U8, 1, one, blob, err));
    }
    LF_TRY(lf_path_join(path, sizeof path, out_dir, "model.safetensors", err));
    LF_TRY(lf_st_writer_write(w, path, err));

    /* config.json + quantization_config */
    LF_TRY(lf_path_join(src, sizeof src, m->dir, "config.json", err));
    LF_TRY(lf_json_load_file(src, &cfg, err));
    json_t *qc = json_object();
    if (!qc) {
        st = lf_err_set(err, LF_ENOMEM, "quantize: out of memory");
        goto fail;
    }
    const lf_quant_state *q0 = &m->layers[0].lin[0].q;
    json_object_set_new(qc, "_load_in_4bit", json_true());
    json_object_set_new(qc, "_load_in_8bit", json_false());
    json_object_set_new(qc, "bnb_4bit_compute_dtype", json_string(torch_dtype_name(src_dt)));
    json_object_set_new(qc, "bnb_4bit_quant_storage", json_string("uint8"));
    json_object_set_new(qc, "bnb_4bit_quant_type", json_string(lf_quant_type_name(q0->type)));
    json_object_set_new(qc, "bnb_4bit_use_double_quant", json_boolean(q0->nested));
    json_object_set_new(qc, "llm_int8_enable_fp32_cpu_offload", json_false());
    json_object_set_new(qc, "llm_int8_has_fp16_weight", json_false());
    json_object_set_new(qc, "llm_int8_skip_modules", json_null());
    json_object_set_new(qc, "llm_int8_threshold", json_real(6.0));
    json_object_set_new(qc, "load_in_4bit", json_true());
    json_object_set_new(qc, "load_in_8bit", json_false());
    json_object_set_new(qc, "quant_method", json_string("bitsandbytes"));
    json_object_set_new(cfg, "quantization_config", qc);
    LF_TRY(lf_path_join(path, sizeof path, out_dir, "config.json", err));
    LF_TRY(lf_json_write_file(path, cfg, err));

    /* tokenizer, generation config, chat templates: every other regular file */
    d = opendir(m->dir);
    if (!d) {
        st = lf_err_set(err, LF_EIO, "cannot list %s", m->dir);
        goto fail;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (skip_copy(e->d_name)) continue;
        LF_TRY(lf_path_join(src, sizeof src, m->dir, e->d_name, err));
        if (lf_path_is_dir(src)) continue;
        LF_TRY(lf_path_join(path, sizeof path, out_dir, e->d_name, err));
        LF_TRY(lf_file_copy(src, path, err));
    }
fail:
    if (d) closedir(d);
    json_decref(cfg);
    lf_st_writer_free(w);
    free(blobs);
    return st;
}
