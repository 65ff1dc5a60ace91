/* chat_template.c - public API of the chat-template engine: compile (lex + parse into an arena owned by the
 * handle), render (a fresh arena per call, globals as transformers 4.44 passes them), and reading a model's
 * template and special tokens from tokenizer_config.json / chat_template.jinja. */
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "core/json.h"
#include "model/chat_template.h"
#include "model/jinja.h"

struct lf_chat_template {
    jarena arena; /* owns the AST and its strings */
    jnode *root;
    lf_chat_template_limits lim; /* 0 = default */
};

void lf_chat_template_set_limits(lf_chat_template *t, const lf_chat_template_limits *limits) {
    if (!t) return;
    if (limits) t->lim = *limits;
    else memset(&t->lim, 0, sizeof t->lim);
}

lf_status lf_chat_template_compile(const char *source, lf_chat_template **out, lf_err *err) {
    *out = NULL;
    if (!source) return lf_err_set(err, LF_EINVAL, "chat template: source is NULL");
    lf_chat_template *t = calloc(1, sizeof *t);
    if (!t) return lf_err_set(err, LF_ENOMEM, "chat template: out of memory");
    t->arena.limit = JINJA_ARENA_LIMIT;
    jctx c;
    memset(&c, 0, sizeof c);
    c.arena = &t->arena;
    c.err = err;
    c.max_output = JINJA_MAX_OUTPUT;
    c.max_steps = JINJA_MAX_STEPS;
    c.max_work = JINJA_MAX_WORK;
    int code = setjmp(c.jb);
    if (code != 0) {
        jarena_free(&t->arena);
        free(t);
        return (lf_status)code;
    }
    t->root = jinja_parse(&c, source);
    *out = t;
    return LF_OK;
}

void lf_chat_template_free(lf_chat_template *t) {
    if (!t) return;
    jarena_free(&t->arena);
    free(t);
}

lf_status lf_chat_template_render_len(const lf_chat_template *t, const json_t *messages, int add_generation_prompt,
                                      const json_t *extra, char **out, size_t *out_len, lf_err *err) {
    *out = NULL;
    if (out_len) *out_len = 0;
    if (!t) return lf_err_set(err, LF_EINVAL, "chat template: template is NULL");
    if (messages && !json_is_array(messages)) return lf_err_set(err, LF_EINVAL, "chat template: messages must be a JSON array");
    if (extra && !json_is_object(extra)) return lf_err_set(err, LF_EINVAL, "chat template: extra variables must be a JSON object");
    jarena arena = {.limit = t->lim.max_memory ? t->lim.max_memory : JINJA_ARENA_LIMIT};
    jctx c;
    memset(&c, 0, sizeof c);
    c.arena = &arena;
    c.err = err;
    c.max_output = t->lim.max_output ? t->lim.max_output : JINJA_MAX_OUTPUT;
    c.max_steps = t->lim.max_steps > 0 ? t->lim.max_steps : JINJA_MAX_STEPS;
    c.max_work = t->lim.max_work > 0 ? t->lim.max_work : JINJA_MAX_WORK;
    int code = setjmp(c.jb);
    if (code != 0) {
        jarena_free(&arena);
        return (lf_status)code;
    }
    jsb sink;
    jsb_init(&sink, &c);
    c.sink = &sink;
    jframe *root = ja_alloc(&c, sizeof(jframe));
    root->vars = ja_alloc(&c, sizeof(jdict));
    c.root = root;
    jinja_install_globals(&c, root);
    jdict_set_str(&c, root->vars, "tools", jv_none());
    jdict_set_str(&c, root->vars, "documents", jv_none());
    if (extra) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)extra, k, v) jdict_set_str(&c, root->vars, k, jv_from_json(&c, v));
    }
    jdict_set_str(&c, root->vars, "messages", messages ? jv_from_json(&c, messages) : jv_list_new(&c, 0));
    jdict_set_str(&c, root->vars, "add_generation_prompt", jv_bool(add_generation_prompt));
    /* the template runs in a child frame so top-level `set` shadows globals without touching them */
    jframe *top = ja_alloc(&c, sizeof(jframe));
    top->parent = root;
    top->vars = ja_alloc(&c, sizeof(jdict));
    jinja_render_body(&c, t->root, top);
    char *res = malloc(sink.n + 1);
    if (!res) {
        jarena_free(&arena);
        return lf_err_set(err, LF_ENOMEM, "chat template: out of memory for %zu bytes of output", sink.n);
    }
    if (sink.n) memcpy(res, sink.p, sink.n);
    res[sink.n] = '\0';
    if (out_len) *out_len = sink.n;
    *out = res;
    jarena_free(&arena);
    return LF_OK;
}

lf_status lf_chat_template_render(const lf_chat_template *t, const json_t *messages, int add_generation_prompt,
                                  const json_t *extra, char **out, lf_err *err) {
    return lf_chat_template_render_len(t, messages, add_generation_prompt, extra, out, NULL, err);
}

/* ---- model files ---- */

/* config path + directory for path (a directory or a tokenizer_config.json file) */
static lf_status model_paths(const char *path, char *cfg, char *dir, size_t cap, lf_err *err) {
    if (lf_path_is_dir(path)) {
        if (snprintf(dir, cap, "%s", path) >= (int)cap) return lf_err_set(err, LF_EINVAL, "path too long: %s", path);
        return lf_path_join(cfg, cap, path, "tokenizer_config.json", err);
    }
    if (snprintf(cfg, cap, "%s", path) >= (int)cap) return lf_err_set(err, LF_EINVAL, "path too long: %s", path);
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, cap, ".");
    else snprintf(dir, cap, "%.*s", (int)(slash - path), path);
    if (!dir[0]) snprintf(dir, cap, "/");
    return LF_OK;
}

/* tokenizer_config.json may hold integers jansson cannot represent (gemma's model_max_length = 1e30):
 * read every integer as a real; we only take strings from this file. */
static lf_status load_config(const char *path, json_t **out, lf_err *err) {
    json_error_t je;
    *out = json_load_file(path, JSON_DECODE_INT_AS_REAL, &je);
    if (!*out) return lf_err_set(err, LF_EFORMAT, "%s: invalid JSON at line %d column %d: %s", path, je.line, je.column, je.text);
    return LF_OK;
}

lf_status lf_chat_template_from_model(const char *path, char **source_out, lf_err *err) {
    char cfg[4096], dir[4096], jinja[4096];
    json_t *root = NULL;
    lf_status st = LF_ENOMEM; /* LF_CHECK_ALLOC jumps to fail without setting st */
    *source_out = NULL;
    LF_TRY(model_paths(path, cfg, dir, sizeof cfg, err));
    if (lf_path_exists(cfg)) {
        LF_TRY(load_config(cfg, &root, err));
        json_t *ct = json_object_get(root, "chat_template");
        const char *src = NULL;
        if (json_is_string(ct)) src = json_string_value(ct);
        else if (json_is_array(ct)) {
            size_t i;
            json_t *e;
            json_array_foreach(ct, i, e) {
                json_t *nm = json_object_get(e, "name"), *tp = json_object_get(e, "template");
                if (json_is_string(nm) && !strcmp(json_string_value(nm), "default") && json_is_string(tp))
                    src = json_string_value(tp);
            }
            if (!src) {
                st = lf_err_set(err, LF_ENOTFOUND, "%s: chat_template is a list without a \"default\" entry", cfg);
                goto fail;
            }
        } else if (ct && !json_is_null(ct)) {
            st = lf_err_set(err, LF_EFORMAT, "%s: chat_template must be a string or a list of {name, template}", cfg);
            goto fail;
        }
        if (src) {
            *source_out = strdup(src);
            LF_CHECK_ALLOC(*source_out, err);
            json_decref(root);
            return LF_OK;
        }
        json_decref(root);
        root = NULL;
    }
    LF_TRY(lf_path_join(jinja, sizeof jinja, dir, "chat_template.jinja", err));
    if (lf_path_exists(jinja)) {
        size_t n;
        return lf_file_read_all(jinja, source_out, &n, err);
    }
    return lf_err_set(err, LF_ENOTFOUND, "%s: no chat_template in %s and no chat_template.jinja (pick a built-in with --template)",
                      path, cfg);
fail:
    json_decref(root);
    return st;
}

static const char *token_content(const json_t *v) {
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_object(v)) {
        json_t *c = json_object_get(v, "content");
        if (json_is_string(c)) return json_string_value(c);
    }
    return NULL;
}

lf_status lf_chat_template_special_tokens(const char *path, json_t **vars_out, lf_err *err) {
    static const char *const keys[] = {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                                       "mask_token", NULL};
    char cfg[4096], dir[4096];
    json_t *root = NULL, *vars = NULL;
    lf_status st = LF_ENOMEM; /* LF_CHECK_ALLOC jumps to fail without setting st */
    *vars_out = NULL;
    LF_TRY(model_paths(path, cfg, dir, sizeof cfg, err));
    vars = json_object();
    LF_CHECK_ALLOC(vars, err);
    if (lf_path_exists(cfg)) {
        LF_TRY(load_config(cfg, &root, err));
        for (int k = 0; keys[k]; k++) {
            const char *s = token_content(json_object_get(root, keys[k]));
            if (s) json_object_set_new(vars, keys[k], json_string(s));
        }
        json_t *add = json_object_get(root, "additional_special_tokens");
        if (json_is_array(add)) {
            json_t *l = json_array();
            LF_CHECK_ALLOC(l, err);
            size_t i;
            json_t *e;
            json_array_foreach(add, i, e) {
                const char *s = token_content(e);
                if (s) json_array_append_new(l, json_string(s));
            }
            json_object_set_new(vars, "additional_special_tokens", l);
        }
        json_decref(root);
    }
    *vars_out = vars;
    return LF_OK;
fail:
    json_decref(root);
    json_decref(vars);
    return st;
}
