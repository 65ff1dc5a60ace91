/* cmd_make_tiny.c - `loraforge make-tiny`: a random-init Hugging Face model directory (config.json,
 * generation_config.json, model.safetensors or shards + index, tokenizer files) that transformers loads
 * unchanged. Weights ~ N(0, init_std); norm weights ~ 1 + 0.1 N(0,1) so tests notice a misapplied norm.
 * Same seed and flags -> byte-identical files. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/fileio.h"
#include "core/json.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "core/tensor.h"

static const char *CMD = "make-tiny";
static const char *const FLAGS[] = {"--arch", "--out", "--dtype", "--tokenizer", "--rope-scaling", "--seed", "--hidden",
                                    "--layers", "--heads", "--kv-heads", "--head-dim", "--intermediate", "--vocab",
                                    "--max-pos", "--sliding-window", "--shard-size", "--init-std", "--rope-theta",
                                    "--tie-embeddings", "--attention-bias", NULL};

static void help(void) {
    printf("usage: loraforge make-tiny --arch llama|mistral|qwen2|qwen3 --out DIR [options]\n\n"
           "Writes a random-init Hugging Face model directory.\n\n"
           "  --arch A              llama | mistral | qwen2 | qwen3 (required; qwen3 has per-head q/k norms)\n"
           "  --out DIR             output directory (created)\n"
           "  --seed N              RNG seed (default 0)\n"
           "  --hidden N            hidden_size (default 64)\n"
           "  --layers N            num_hidden_layers (default 2)\n"
           "  --heads N             num_attention_heads (default 4)\n"
           "  --kv-heads N          num_key_value_heads (default 2)\n"
           "  --head-dim N          head_dim (default hidden/heads; written to config.json when set, and always\n"
           "                        for qwen3)\n"
           "  --intermediate N      intermediate_size (default 128)\n"
           "  --vocab N             vocab_size (default: the tokenizer's size, else 512)\n"
           "  --max-pos N           max_position_embeddings (default 2048; 131072 with --rope-scaling)\n"
           "  --dtype D             f32 | bf16 | f16 (default f32)\n"
           "  --init-std X          std of the random weights (default 0.02)\n"
           "  --rope-theta X        rope_theta (default 10000; qwen2, qwen3 1000000)\n"
           "  --rope-scaling llama3 add a Llama-3.1 rope_scaling block (factor 8, low 1, high 4, original 8192)\n"
           "  --sliding-window N    sliding_window (mistral; qwen2/qwen3 also set use_sliding_window)\n"
           "  --tie-embeddings      tie lm_head to embed_tokens (no lm_head.weight written)\n"
           "  --attention-bias      llama, qwen3: q/k/v/o biases (qwen2 always has q/k/v biases)\n"
           "  --shard-size BYTES    write model-0000x-of-0000y.safetensors shards + index when larger\n"
           "  --tokenizer PATH      tokenizer.json or a directory with tokenizer files to copy in\n");
}

typedef struct {
    const char *arch, *out, *dtype, *tokenizer, *rope_scaling;
    int64_t seed, hidden, layers, heads, kv_heads, head_dim, inter, vocab, max_pos, sliding, shard_size;
    double init_std, rope_theta;
    int tie, attn_bias;
} opts;

/* Highest token id + 1 in a tokenizer.json (model.vocab and added_tokens). */
static int64_t tokenizer_vocab_size(const char *path, int64_t *bos, int64_t *eos) {
    json_t *root = NULL;
    lf_err err;
    if (lf_json_load_file(path, &root, &err)) return -1;
    int64_t mx = -1;
    json_t *vocab = json_object_get(json_object_get(root, "model"), "vocab");
    const char *k;
    json_t *v;
    json_object_foreach(vocab, k, v) if (json_is_integer(v) && json_integer_value(v) > mx) mx = json_integer_value(v);
    size_t i;
    json_array_foreach(json_object_get(root, "added_tokens"), i, v) {
        int64_t id = json_integer_value(json_object_get(v, "id"));
        const char *content = json_string_value(json_object_get(v, "content"));
        if (id > mx) mx = id;
        if (content && (!strcmp(content, "<s>") || !strcmp(content, "<|begin_of_text|>") || !strcmp(content, "<|endoftext|>")) && *bos < 0) *bos = id;
        if (content && (!strcmp(content, "</s>") || !strcmp(content, "<|end_of_text|>") || !strcmp(content, "<|endoftext|>") || !strcmp(content, "<|im_end|>"))) *eos = id;
    }
    json_decref(root);
    return mx + 1;
}

/* Split a legacy "a b" merge whose tokens may hold spaces (Llama-2's file has "   " = " " + "  "): the only
 * space when there is one, else the first split where a, b and a+b are all in the vocab (what
 * model/tokenizer_bpe.c reads). 0 when no split works. */
static int split_merge(const json_t *vocab, const char *s, size_t n, size_t *at) {
    const char *sp = memchr(s, ' ', n);
    if (sp && !memchr(sp + 1, ' ', n - (size_t)(sp - s) - 1)) {
        *at = (size_t)(sp - s);
        return 1;
    }
    char *joined = malloc(n + 1);
    if (!joined) return 0;
    int found = 0;
    for (size_t i = 1; i + 1 < n && !found; i++) {
        if (s[i] != ' ') continue;
        memcpy(joined, s, i);
        memcpy(joined + i, s + i + 1, n - i - 1);
        joined[n - 1] = '\0';
        found = json_object_getn(vocab, s, i) && json_object_getn(vocab, s + i + 1, n - i - 1) &&
                json_object_getn(vocab, joined, n - 1);
        if (found) *at = i;
    }
    free(joined);
    return found;
}

/* Copy tokenizer.json. A legacy merges list in which some "a b" string has more than one space is ambiguous to
 * Hugging Face tokenizers (AutoTokenizer fails on it, and so does llama.cpp's converter): such a file is
 * rewritten with every merge in the pair form ["a", "b"] (tokenizers >= 0.20 reads it). Other files are copied
 * byte for byte. */
static int write_tokenizer_json(const char *from, const char *to) {
    lf_err err;
    json_t *root = NULL;
    if (lf_json_load_file(from, &root, &err)) {
        lf_cli_error(CMD, "--tokenizer: %s", err.msg);
        return 1;
    }
    json_t *model = json_object_get(root, "model"), *merges = json_object_get(model, "merges");
    const json_t *vocab = json_object_get(model, "vocab");
    int ambiguous = 0, rc = 1;
    size_t i;
    json_t *m;
    json_array_foreach(merges, i, m) {
        if (!json_is_string(m)) continue;
        const char *sp = memchr(json_string_value(m), ' ', json_string_length(m));
        if (sp && memchr(sp + 1, ' ', json_string_length(m) - (size_t)(sp - json_string_value(m)) - 1)) ambiguous = 1;
    }
    if (!ambiguous) {
        json_decref(root);
        if (lf_file_copy(from, to, &err)) {
            lf_cli_error(CMD, "%s", err.msg);
            return 1;
        }
        return 0;
    }
    json_t *pairs = json_array();
    if (!pairs) goto oom;
    json_array_foreach(merges, i, m) {
        const char *str = json_string_value(m);
        size_t n = json_string_length(m), at = 0;
        if (!str || !json_is_object(vocab) || !split_merge(vocab, str, n, &at)) {
            lf_cli_error(CMD, "--tokenizer %s: model.merges[%zu] is not a merge of two vocabulary tokens", from, i);
            json_decref(pairs);
            goto done;
        }
        if (json_array_append_new(pairs, json_pack("[s#, s#]", str, (int)at, str + at + 1, (int)(n - at - 1)))) {
            json_decref(pairs);
            goto oom;
        }
    }
    json_object_set_new(model, "merges", pairs);
    if (lf_json_write_file(to, root, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    rc = 0;
    goto done;
oom:
    lf_cli_error(CMD, "out of memory rewriting %s", from);
done:
    json_decref(root);
    return rc;
}

static int copy_tokenizer(const char *src, const char *out) {
    static const char *files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"};
    char from[4096], to[4096];
    lf_err err;
    if (!lf_path_is_dir(src)) {
        snprintf(to, sizeof to, "%s/tokenizer.json", out);
        return write_tokenizer_json(src, to);
    }
    int copied = 0;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(from, sizeof from, "%s/%s", src, files[i]);
        if (!lf_path_exists(from)) continue;
        snprintf(to, sizeof to, "%s/%s", out, files[i]);
        if (i == 0 ? write_tokenizer_json(from, to) : lf_file_copy(from, to, &err) ? (lf_cli_error(CMD, "%s", err.msg), 1) : 0)
            return 1;
        copied++;
    }
    if (!copied) {
        lf_cli_error(CMD, "--tokenizer %s: no tokenizer.json in that directory", src);
        return 1;
    }
    return 0;
}

typedef struct {
    char name[128];
    int ndim;
    int64_t shape[2];
    void *data; /* owned */
    size_t nbytes;
} wtensor;

static int add_tensor(wtensor *ts, int *n, lf_rng *rng, const char *name, int ndim, int64_t r, int64_t c, int kind,
                      double std, lf_dtype dt) {
    /* kind: 0 = N(0, std), 1 = norm (1 + 0.1 N) */
    wtensor *t = &ts[(*n)++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = r;
    t->shape[1] = c;
    int64_t numel = ndim == 1 ? r : r * c;
    t->nbytes = (size_t)lf_dtype_nbytes(dt, numel);
    t->data = malloc(t->nbytes ? t->nbytes : 1);
    if (!t->data) return 1;
    for (int64_t i = 0; i < numel; i++) {
        float v = kind == 1 ? 1.0f + 0.1f * lf_rng_normal(rng) : (float)std * lf_rng_normal(rng);
        if (dt == LF_DTYPE_F32) ((float *)t->data)[i] = v;
        else if (dt == LF_DTYPE_BF16) ((uint16_t *)t->data)[i] = lf_f32_to_bf16(v);
        else ((uint16_t *)t->data)[i] = lf_f32_to_f16(v);
    }
    return 0;
}

static json_t *config_json(const opts *o, int64_t vocab, int64_t bos, int64_t eos, int64_t head_dim) {
    const char *arch = !strcmp(o->arch, "llama")     ? "LlamaForCausalLM"
                       : !strcmp(o->arch, "mistral") ? "MistralForCausalLM"
                       : !strcmp(o->arch, "qwen2")   ? "Qwen2ForCausalLM"
                                                     : "Qwen3ForCausalLM";
    const int qwen3 = !strcmp(o->arch, "qwen3");
    const char *tdt = !strcmp(o->dtype, "f32") ? "float32" : !strcmp(o->dtype, "bf16") ? "bfloat16" : "float16";
    json_t *c = json_object();
    json_object_set_new(c, "architectures", json_pack("[s]", arch));
    json_object_set_new(c, "model_type", json_string(o->arch));
    json_object_set_new(c, "hidden_size", json_integer(o->hidden));
    json_object_set_new(c, "intermediate_size", json_integer(o->inter));
    json_object_set_new(c, "num_hidden_layers", json_integer(o->layers));
    json_object_set_new(c, "num_attention_heads", json_integer(o->heads));
    json_object_set_new(c, "num_key_value_heads", json_integer(o->kv_heads));
    if (o->head_dim > 0 || qwen3) json_object_set_new(c, "head_dim", json_integer(head_dim));
    json_object_set_new(c, "vocab_size", json_integer(vocab));
    json_object_set_new(c, "max_position_embeddings", json_integer(o->max_pos));
    json_object_set_new(c, "rms_norm_eps", json_real(1e-6));
    json_object_set_new(c, "rope_theta", json_real(o->rope_theta));
    json_object_set_new(c, "hidden_act", json_string("silu"));
    json_object_set_new(c, "initializer_range", json_real(o->init_std));
    json_object_set_new(c, "tie_word_embeddings", json_boolean(o->tie));
    json_object_set_new(c, "torch_dtype", json_string(tdt));
    json_object_set_new(c, "attention_dropout", json_real(0.0));
    json_object_set_new(c, "use_cache", json_true());
    json_object_set_new(c, "bos_token_id", json_integer(bos));
    json_object_set_new(c, "eos_token_id", json_integer(eos));
    if (!strcmp(o->arch, "llama")) {
        json_object_set_new(c, "attention_bias", json_boolean(o->attn_bias));
        json_object_set_new(c, "mlp_bias", json_false());
        json_object_set_new(c, "pretraining_tp", json_integer(1));
    } else {
        if (qwen3) json_object_set_new(c, "attention_bias", json_boolean(o->attn_bias));
        json_object_set_new(c, "sliding_window", o->sliding > 0 ? json_integer(o->sliding) : json_null());
    }
    if (!strcmp(o->arch, "qwen2") || qwen3) {
        json_object_set_new(c, "use_sliding_window", json_boolean(o->sliding > 0));
        json_object_set_new(c, "max_window_layers", json_integer(o->layers));
    }
    if (o->rope_scaling)
        json_object_set_new(c, "rope_scaling",
                            json_pack("{s:s, s:f, s:f, s:f, s:i}", "rope_type", "llama3", "factor", 8.0, "low_freq_factor", 1.0,
                                      "high_freq_factor", 4.0, "original_max_position_embeddings", 8192));
    return c;
}

static int write_weights(const opts *o, wtensor *ts, int n, lf_dtype dt) {
    lf_err err;
    char path[4096];
    size_t total = 0;
    for (int i = 0; i < n; i++) total += ts[i].nbytes;
    int nshards = 1;
    if (o->shard_size > 0 && (int64_t)total > o->shard_size) { /* greedy: start a new shard when full */
        size_t cur = 0;
        for (int i = 0; i < n; i++) {
            if (cur > 0 && cur + ts[i].nbytes > (size_t)o->shard_size) {
                nshards++;
                cur = 0;
            }
            cur += ts[i].nbytes;
        }
    }
    json_t *weight_map = json_object();
    int rc = 1, i = 0;
    for (int s = 0; s < nshards; s++) {
        char fname[128];
        if (nshards == 1) snprintf(fname, sizeof fname, "model.safetensors");
        else snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, nshards);
        lf_st_writer *w = lf_st_writer_create();
        if (!w) goto done;
        if (lf_st_writer_set_meta(w, "format", "pt", &err)) {
            lf_cli_error(CMD, "%s", err.msg);
            lf_st_writer_free(w);
            goto done;
        }
        size_t cur = 0;
        for (; i < n && (cur == 0 || nshards == 1 || cur + ts[i].nbytes <= (size_t)o->shard_size); i++) {
            if (lf_st_writer_add(w, ts[i].name, dt, ts[i].ndim, ts[i].shape, ts[i].data, &err)) {
                lf_cli_error(CMD, "%s", err.msg);
                lf_st_writer_free(w);
                goto done;
            }
            json_object_set_new(weight_map, ts[i].name, json_string(fname));
            cur += ts[i].nbytes;
        }
        snprintf(path, sizeof path, "%s/%s", o->out, fname);
        lf_status st = lf_st_writer_write(w, path, &err);
        lf_st_writer_free(w);
        if (st) {
            lf_cli_error(CMD, "%s", err.msg);
            goto done;
        }
    }
    if (nshards > 1) {
        json_t *idx = json_pack("{s:{s:I}, s:O}", "metadata", "total_size", (json_int_t)total, "weight_map", weight_map);
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", o->out);
        lf_status st = lf_json_write_file(path, idx, &err);
        json_decref(idx);
        if (st) {
            lf_cli_error(CMD, "%s", err.msg);
            goto done;
        }
    }
    rc = 0;
done:
    json_decref(weight_map);
    return rc;
}

int lf_cmd_make_tiny(int argc, char **argv) {
    opts o = {.arch = NULL, .out = NULL, .dtype = "f32", .seed = 0, .hidden = 64, .layers = 2, .heads = 4, .kv_heads = 2,
              .inter = 128, .vocab = 0, .max_pos = 2048, .init_std = 0.02, .rope_theta = 0};
    int max_pos_set = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help();
            return 0;
        }
        if (!strcmp(a, "--tie-embeddings")) { o.tie = 1; continue; }
        if (!strcmp(a, "--attention-bias")) { o.attn_bias = 1; continue; }
        if (strncmp(a, "--", 2) != 0) {
            lf_cli_error(CMD, "unexpected argument '%s' (see --help)", a);
            return 2;
        }
        const char *v = lf_cli_flag_value(CMD, argc, argv, &i, FLAGS);
        if (!v) return 2;
        int bad = 0;
        if (!strcmp(a, "--arch")) o.arch = v;
        else if (!strcmp(a, "--out")) o.out = v;
        else if (!strcmp(a, "--dtype")) o.dtype = v;
        else if (!strcmp(a, "--tokenizer")) o.tokenizer = v;
        else if (!strcmp(a, "--rope-scaling")) o.rope_scaling = v;
        else if (!strcmp(a, "--seed")) bad = lf_cli_parse_i64(CMD, a, v, 0, INT64_MAX, &o.seed);
        else if (!strcmp(a, "--hidden")) bad = lf_cli_parse_i64(CMD, a, v, 1, 1 << 16, &o.hidden);
        else if (!strcmp(a, "--layers")) bad = lf_cli_parse_i64(CMD, a, v, 1, 512, &o.layers);
        else if (!strcmp(a, "--heads")) bad = lf_cli_parse_i64(CMD, a, v, 1, 1024, &o.heads);
        else if (!strcmp(a, "--kv-heads")) bad = lf_cli_parse_i64(CMD, a, v, 1, 1024, &o.kv_heads);
        else if (!strcmp(a, "--head-dim")) bad = lf_cli_parse_i64(CMD, a, v, 2, 512, &o.head_dim);
        else if (!strcmp(a, "--intermediate")) bad = lf_cli_parse_i64(CMD, a, v, 1, 1 << 18, &o.inter);
        else if (!strcmp(a, "--vocab")) bad = lf_cli_parse_i64(CMD, a, v, 1, 1 << 24, &o.vocab);
        else if (!strcmp(a, "--max-pos")) bad = lf_cli_parse_i64(CMD, a, v, 1, 1 << 24, &o.max_pos), max_pos_set = 1;
        else if (!strcmp(a, "--sliding-window")) bad = lf_cli_parse_i64(CMD, a, v, 1, 1 << 24, &o.sliding);
        else if (!strcmp(a, "--shard-size")) bad = lf_cli_parse_i64(CMD, a, v, 1, INT64_MAX, &o.shard_size);
        else if (!strcmp(a, "--init-std")) bad = lf_cli_parse_f64(CMD, a, v, 0.0, 10.0, &o.init_std);
        else if (!strcmp(a, "--rope-theta")) bad = lf_cli_parse_f64(CMD, a, v, 1.0, 1e12, &o.rope_theta);
        else return lf_cli_unknown_option(CMD, a, FLAGS);
        if (bad) return 2;
    }
    if (!o.arch || !o.out) {
        lf_cli_error(CMD, "--arch and --out are required (see --help)");
        return 2;
    }
    if (strcmp(o.arch, "llama") && strcmp(o.arch, "mistral") && strcmp(o.arch, "qwen2") && strcmp(o.arch, "qwen3")) {
        lf_cli_error(CMD, "--arch: unknown architecture '%s' (llama, mistral, qwen2, qwen3)", o.arch);
        return 2;
    }
    lf_dtype dt = !strcmp(o.dtype, "f32") ? LF_DTYPE_F32 : !strcmp(o.dtype, "bf16") ? LF_DTYPE_BF16 : !strcmp(o.dtype, "f16") ? LF_DTYPE_F16 : LF_DTYPE_INVALID;
    if (dt == LF_DTYPE_INVALID) {
        lf_cli_error(CMD, "--dtype: '%s' is not one of f32, bf16, f16", o.dtype);
        return 2;
    }
    if (o.rope_scaling && strcmp(o.rope_scaling, "llama3")) {
        lf_cli_error(CMD, "--rope-scaling: only 'llama3' is offered");
        return 2;
    }
    if (o.heads % o.kv_heads) {
        lf_cli_error(CMD, "--heads %lld must be a multiple of --kv-heads %lld", (long long)o.heads, (long long)o.kv_heads);
        return 2;
    }
    int64_t D = o.head_dim > 0 ? o.head_dim : o.hidden / o.heads;
    if (o.head_dim <= 0 && (o.hidden % o.heads || D % 2)) {
        lf_cli_error(CMD, "--hidden %lld / --heads %lld must give an even head dim (or pass --head-dim)", (long long)o.hidden, (long long)o.heads);
        return 2;
    }
    if (o.rope_scaling && !max_pos_set) o.max_pos = 131072; /* transformers wants original (8192) < max */
    const int qwen3 = !strcmp(o.arch, "qwen3");
    if (o.rope_theta == 0) o.rope_theta = !strcmp(o.arch, "qwen2") || qwen3 ? 1000000.0 : 10000.0;

    int64_t bos = -1, eos = -1;
    char tokpath[4096] = "";
    if (o.tokenizer) {
        snprintf(tokpath, sizeof tokpath, lf_path_is_dir(o.tokenizer) ? "%s/tokenizer.json" : "%s", o.tokenizer);
        int64_t tv = tokenizer_vocab_size(tokpath, &bos, &eos);
        if (tv <= 0) {
            lf_cli_error(CMD, "--tokenizer: cannot read a vocabulary from %s", tokpath);
            return 1;
        }
        if (o.vocab == 0) o.vocab = tv;
        else if (o.vocab < tv) {
            lf_cli_error(CMD, "--vocab %lld is smaller than the tokenizer's %lld tokens", (long long)o.vocab, (long long)tv);
            return 2;
        }
    }
    if (o.vocab == 0) o.vocab = 512;
    if (bos < 0) bos = o.vocab > 1 ? 1 : 0;
    if (eos < 0) eos = o.vocab > 2 ? 2 : 0;

    lf_err err;
    if (lf_mkdirs(o.out, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        return 1;
    }
    int qkv_bias = !strcmp(o.arch, "qwen2") || o.attn_bias;
    int nmax = 3 + (int)o.layers * 16; /* per layer at most 15 tensors (4 norms, 7 matrices, 4 biases) */
    wtensor *ts = calloc((size_t)nmax, sizeof *ts);
    int n = 0, rc = 1;
    if (!ts) {
        lf_cli_error(CMD, "out of memory");
        return 1;
    }
    lf_rng rng;
    lf_rng_seed(&rng, (uint64_t)o.seed);
    char name[128];
    int64_t C = o.hidden, H = o.heads, KH = o.kv_heads, FF = o.inter, V = o.vocab;
    double sd = o.init_std;
#define ADD(nd, r, c, kind) do { if (add_tensor(ts, &n, &rng, name, nd, r, c, kind, sd, dt)) goto oom; } while (0)
    snprintf(name, sizeof name, "model.embed_tokens.weight");
    ADD(2, V, C, 0);
    for (int64_t l = 0; l < o.layers; l++) {
#define L(s) snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)l, s)
        L("input_layernorm.weight"); ADD(1, C, 0, 1);
        L("self_attn.q_proj.weight"); ADD(2, H * D, C, 0);
        L("self_attn.k_proj.weight"); ADD(2, KH * D, C, 0);
        L("self_attn.v_proj.weight"); ADD(2, KH * D, C, 0);
        if (qkv_bias) {
            L("self_attn.q_proj.bias"); ADD(1, H * D, 0, 0);
            L("self_attn.k_proj.bias"); ADD(1, KH * D, 0, 0);
            L("self_attn.v_proj.bias"); ADD(1, KH * D, 0, 0);
        }
        if (qwen3) {
            L("self_attn.q_norm.weight"); ADD(1, D, 0, 1);
            L("self_attn.k_norm.weight"); ADD(1, D, 0, 1);
        }
        L("self_attn.o_proj.weight"); ADD(2, C, H * D, 0);
        if (o.attn_bias && (!strcmp(o.arch, "llama") || qwen3)) { L("self_attn.o_proj.bias"); ADD(1, C, 0, 0); }
        L("post_attention_layernorm.weight"); ADD(1, C, 0, 1);
        L("mlp.gate_proj.weight"); ADD(2, FF, C, 0);
        L("mlp.up_proj.weight"); ADD(2, FF, C, 0);
        L("mlp.down_proj.weight"); ADD(2, C, FF, 0);
#undef L
    }
    snprintf(name, sizeof name, "model.norm.weight");
    ADD(1, C, 0, 1);
    if (!o.tie) {
        snprintf(name, sizeof name, "lm_head.weight");
        ADD(2, V, C, 0);
    }
#undef ADD
    if (write_weights(&o, ts, n, dt)) goto done;

    char path[4096];
    json_t *cfg = config_json(&o, V, bos, eos, D);
    snprintf(path, sizeof path, "%s/config.json", o.out);
    lf_status st = lf_json_write_file(path, cfg, &err);
    json_decref(cfg);
    if (st) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    json_t *gen = json_pack("{s:I, s:I, s:s}", "bos_token_id", (json_int_t)bos, "eos_token_id", (json_int_t)eos,
                            "transformers_version", "4.44.2");
    snprintf(path, sizeof path, "%s/generation_config.json", o.out);
    st = lf_json_write_file(path, gen, &err);
    json_decref(gen);
    if (st) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    if (o.tokenizer && copy_tokenizer(o.tokenizer, o.out)) goto done;
    int64_t params = 0;
    for (int i = 0; i < n; i++) params += ts[i].ndim == 1 ? ts[i].shape[0] : ts[i].shape[0] * ts[i].shape[1];
    fprintf(stderr, "loraforge make-tiny: wrote %s (%s, %lld parameters, %s)\n", o.out, o.arch, (long long)params, o.dtype);
    rc = 0;
    goto done;
oom:
    lf_cli_error(CMD, "out of memory allocating %s", name);
done:
    for (int i = 0; i < n; i++) free(ts[i].data);
    free(ts);
    return rc;
}
