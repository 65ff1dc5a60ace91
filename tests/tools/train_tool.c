/* train_tool.c - test helper for the PEFT/torch-autograd gradient oracle (tests/oracle/test_lora_grads.py).
 *
 *   train_tool --model DIR --adapter DIR --tokens "ids" --targets "ids|-100" --pos "p" --out FILE
 *              [--quantization-bit 4] [--dscale X] [--checkpointing] [--threads N] [--seqs K]
 *
 * Runs lf_trainer_model_step (forward + backward) on the sequence and writes FILE (safetensors):
 *   "loss_sum" F32 [1], "n_tokens" F32 [1], and for every adapter tensor its gradient under the tensor's PEFT
 *   name (base_model.model.model.layers.N.<parent>.<module>.lora_A.weight, ...). With --seqs K the same
 *   sequence is stepped K times (gradients accumulate: K x one step). Exit 0 ok, 1 error, 2 usage. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/peft_io.h"
#include "bench/bench_args.h" // defines: lf_args_parse
#include "core/safetensors.h"
#include "model/model.h"
#include "model/model_train.h"

static int parse_ids(const char *s, int32_t **out, int64_t *n) {
    int64_t cap = 16, k = 0;
    int32_t *v = malloc((size_t)cap * sizeof *v);
    if (!v) return 1;
    while (*s) {
        while (*s == ' ' || *s == ',') s++;
        if (!*s) break;
        char *end;
        errno = 0;
        long x = strtol(s, &end, 10);
        if (end == s || errno) {
            free(v);
            return 1;
        }
        if (k == cap) {
            int32_t *nv = realloc(v, (size_t)(cap *= 2) * sizeof *v);
            if (!nv) {
                free(v);
                return 1;
            }
            v = nv;
        }
        v[k++] = (int32_t)x;
        s = end;
    }
    *out = v;
    *n = k;
    return 0;
}

static const char USAGE[] =
    "usage: train_tool --model DIR --adapter DIR --tokens IDS --targets IDS --pos P --out FILE\n"
    "                  [--quantization-bit 4] [--dscale X] [--checkpointing] [--threads N] [--seqs K]\n";

int main(int argc, char **argv) {
    const char *model = NULL, *adapter = NULL, *toks = NULL, *tgts = NULL, *poss = NULL, *out = NULL;
    double dscale = 1.0;
    int ckpt = 0, threads = 0, seqs = 1;
    lf_model_options mo = lf_model_default_options();
    const lf_arg_spec flags[] = {LF_FLAG_STR("--model", &model),
                                 LF_FLAG_STR("--adapter", &adapter),
                                 LF_FLAG_STR("--tokens", &toks),
                                 LF_FLAG_STR("--targets", &tgts),
                                 LF_FLAG_STR("--pos", &poss),
                                 LF_FLAG_STR("--out", &out),
                                 LF_FLAG_F64("--dscale", &dscale, -1e30, 1e30),
                                 LF_FLAG_INT("--threads", &threads, 0, 4096),
                                 LF_FLAG_INT("--seqs", &seqs, 1, 1 << 20),
                                 LF_FLAG_INT("--quantization-bit", &mo.quant_bits, 0, 4),
                                 LF_FLAG_BOOL("--checkpointing", &ckpt),
                                 LF_FLAG_END};
    int arc = lf_args_parse("train_tool", USAGE, argc, argv, 1, flags, NULL, 0, NULL);
    if (arc >= 0) return arc;
    if (!model || !adapter || !toks || !tgts || !poss || !out) {
        fprintf(stderr, "train_tool: --model, --adapter, --tokens, --targets, --pos and --out are required\n%s", USAGE);
        return 2;
    }
    int32_t *tok = NULL, *tgt = NULL, *pos = NULL;
    int64_t T = 0, T2 = 0, T3 = 0;
    if (parse_ids(toks, &tok, &T) || parse_ids(tgts, &tgt, &T2) || parse_ids(poss, &pos, &T3) || T != T2 || T != T3) {
        fprintf(stderr, "train_tool: bad --tokens/--targets/--pos (lengths %lld %lld %lld)\n", (long long)T,
                (long long)T2, (long long)T3);
        return 2;
    }
    int rc = 1;
    lf_err err = {0};
    lf_backend *be = lf_backend_cpu_create(threads);
    lf_model *m = NULL;
    lf_lora_adapter *ad = NULL;
    lf_trainer_model *tm = NULL;
    lf_lora_view *views = NULL;
    lf_st_writer *w = NULL;
    char (*names)[256] = NULL;
    if (!be) goto done;
    if (lf_model_load_opts(model, be, &mo, &m, &err) || lf_peft_load(adapter, lf_model_get_config(m), &ad, &err) ||
        lf_lora_alloc_grads(ad, 0, &err))
        goto done;
    const lf_model_config *c = lf_model_get_config(m);
    int64_t NV = c->L * LF_MOD_COUNT;
    views = calloc((size_t)NV, sizeof *views);
    names = calloc((size_t)NV * 3, sizeof *names);
    if (!views || !names) goto done;
    for (int64_t i = 0; i < NV; i++) {
        const lf_lora_slot *s = lf_lora_get(ad, i / LF_MOD_COUNT, (lf_module)(i % LF_MOD_COUNT));
        if (!s) continue;
        views[i] = (lf_lora_view){s->A, s->B, s->mag, ad->grad + s->off_A, ad->grad + s->off_B,
                                  s->mag ? ad->grad + s->off_mag : NULL, s->R, (float)s->scaling};
    }
    lf_train_options to = {T, (float)ad->cfg.dropout, ckpt, 1234, 0};
    to.dropout = 0.0f; /* gradients are compared without dropout (a random mask has no oracle) */
    if (lf_trainer_model_create(m, views, &to, &tm, &err)) goto done;
    double ls = 0;
    int64_t nt = 0;
    for (int k = 0; k < seqs; k++)
        if (lf_trainer_model_step(tm, tok, tgt, pos, T, (float)dscale, 1, 0, (uint64_t)k, &ls, &nt, &err)) goto done;
    w = lf_st_writer_create();
    if (!w) goto done;
    float lsf = (float)ls, ntf = (float)nt;
    int64_t one = 1;
    if (lf_st_writer_add(w, "loss_sum", LF_DTYPE_F32, 1, &one, &lsf, &err) ||
        lf_st_writer_add(w, "n_tokens", LF_DTYPE_F32, 1, &one, &ntf, &err))
        goto done;
    for (int64_t i = 0; i < NV; i++) {
        const lf_lora_slot *s = lf_lora_get(ad, i / LF_MOD_COUNT, (lf_module)(i % LF_MOD_COUNT));
        if (!s) continue;
        int64_t sa[2] = {s->R, s->IN}, sb[2] = {s->OC, s->R}, sm[1] = {s->OC};
        lf_peft_tensor_name(names[3 * i], 256, i / LF_MOD_COUNT, (lf_module)(i % LF_MOD_COUNT), LF_PEFT_A);
        lf_peft_tensor_name(names[3 * i + 1], 256, i / LF_MOD_COUNT, (lf_module)(i % LF_MOD_COUNT), LF_PEFT_B);
        if (lf_st_writer_add(w, names[3 * i], LF_DTYPE_F32, 2, sa, ad->grad + s->off_A, &err) ||
            lf_st_writer_add(w, names[3 * i + 1], LF_DTYPE_F32, 2, sb, ad->grad + s->off_B, &err))
            goto done;
        if (s->mag) {
            lf_peft_tensor_name(names[3 * i + 2], 256, i / LF_MOD_COUNT, (lf_module)(i % LF_MOD_COUNT), LF_PEFT_MAG);
            if (lf_st_writer_add(w, names[3 * i + 2], LF_DTYPE_F32, 1, sm, ad->grad + s->off_mag, &err)) goto done;
        }
    }
    if (lf_st_writer_write(w, out, &err)) goto done;
    rc = 0;
done:
    if (rc) fprintf(stderr, "train_tool: %s\n", err.msg[0] ? err.msg : "out of memory");
    lf_st_writer_free(w);
    free(names);
    free(views);
    lf_trainer_model_free(tm);
    lf_lora_free(ad);
    lf_model_free(m);
    lf_backend_free(be);
    free(tok);
    free(tgt);
    free(pos);
    return rc;
}
