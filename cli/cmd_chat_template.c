/* cmd_chat_template.c - `loraforge chat-template`: render a conversation with a model's chat template, a
 * built-in one or a template file, printing exactly the text transformers' apply_chat_template(...,
 * tokenize=False) returns (no newline added). Exit 0 ok, 1 bad input or template error, 2 usage error. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"               // defines: lf_cli_error, lf_cli_need_value, lf_cli_unknown_option
#include "core/fileio.h"           // defines: lf_file_read_all
#include "core/json.h"             // defines: lf_json_load_file
#include "model/chat_template.h"   // defines: lf_chat_template_*

static const char *CMD = "chat-template";
static const char *const FLAGS[] = {"--model", "--template", "--template-file", "--messages", "--extra", "--bos-token",
                                    "--eos-token", "--add-generation-prompt", NULL};

static void chat_template_usage(FILE *out) {
    fprintf(out,
            "usage: loraforge chat-template (--model DIR | --template NAME | --template-file F) --messages FILE.json\n"
            "                               [--add-generation-prompt] [--extra FILE.json]\n"
            "                               [--bos-token S] [--eos-token S]\n"
            "\n"
            "Render a conversation with a Jinja chat template, byte-identical to transformers'\n"
            "apply_chat_template(messages, tokenize=False). The text is printed as is (no newline added).\n"
            "\n"
            "--model DIR              template and special tokens (bos_token, eos_token, ...) from DIR's\n"
            "                         tokenizer_config.json or chat_template.jinja (DIR may also be the\n"
            "                         tokenizer_config.json file)\n"
            "--template NAME          built-in template:");
    for (const char *const *n = lf_chat_template_builtin_names(); *n; n++) fprintf(out, " %s", *n);
    fprintf(out,
            "\n"
            "--template-file F        Jinja template file\n"
            "--messages FILE.json     a JSON array of {\"role\", \"content\", ...}, or an object with \"messages\"\n"
            "                         whose other keys become template variables (tools, enable_thinking, ...)\n"
            "--add-generation-prompt  append the assistant header\n"
            "--extra FILE.json        JSON object of more template variables\n"
            "--bos-token S, --eos-token S  set bos_token / eos_token (override --model)\n"
            "--help                   show this help\n");
}

static int merge_into(json_t *dst, json_t *src) {
    const char *k;
    json_t *v;
    json_object_foreach(src, k, v) {
        if (json_object_set(dst, k, v) != 0) return -1;
    }
    return 0;
}

int lf_cmd_chat_template(int argc, char **argv) {
    const char *model = NULL, *tname = NULL, *tfile = NULL, *msgs_path = NULL, *extra_path = NULL;
    const char *bos = NULL, *eos = NULL;
    int add_gen = 0, rc = 1;
    char *source = NULL, *text = NULL;
    json_t *doc = NULL, *extra = NULL, *more = NULL;
    lf_chat_template *tpl = NULL;
    lf_err err = {0};

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            chat_template_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--add-generation-prompt")) {
            add_gen = 1;
        } else if (!strcmp(a, "--model") || !strcmp(a, "--template") || !strcmp(a, "--template-file") ||
                   !strcmp(a, "--messages") || !strcmp(a, "--extra") || !strcmp(a, "--bos-token") ||
                   !strcmp(a, "--eos-token")) {
            if (lf_cli_need_value(CMD, argc, argv, i)) return 2;
            const char *v = argv[++i];
            if (!strcmp(a, "--model")) model = v;
            else if (!strcmp(a, "--template")) tname = v;
            else if (!strcmp(a, "--template-file")) tfile = v;
            else if (!strcmp(a, "--messages")) msgs_path = v;
            else if (!strcmp(a, "--extra")) extra_path = v;
            else if (!strcmp(a, "--bos-token")) bos = v;
            else eos = v;
        } else {
            return lf_cli_unknown_option(CMD, a, FLAGS);
        }
    }
    if ((model != NULL) + (tname != NULL) + (tfile != NULL) != 1) {
        lf_cli_error(CMD, "give exactly one of --model, --template, --template-file (see loraforge %s --help)", CMD);
        return 2;
    }
    if (!msgs_path) {
        lf_cli_error(CMD, "--messages FILE.json is required (see loraforge %s --help)", CMD);
        return 2;
    }

    /* template source + base variables */
    extra = json_object();
    if (!extra) {
        lf_cli_error(CMD, "out of memory");
        goto done;
    }
    if (model) {
        json_t *tok = NULL;
        if (lf_chat_template_from_model(model, &source, &err) != LF_OK ||
            lf_chat_template_special_tokens(model, &tok, &err) != LF_OK) {
            lf_cli_error(CMD, "%s", err.msg);
            goto done;
        }
        merge_into(extra, tok);
        json_decref(tok);
    } else if (tname) {
        const char *src = lf_chat_template_builtin(tname);
        if (!src) {
            lf_cli_error(CMD, "unknown template '%s' (built-ins: see loraforge %s --help)", tname, CMD);
            rc = 2;
            goto done;
        }
        source = strdup(src);
        if (!source) {
            lf_cli_error(CMD, "out of memory");
            goto done;
        }
    } else {
        size_t n;
        if (lf_file_read_all(tfile, &source, &n, &err) != LF_OK) {
            lf_cli_error(CMD, "%s", err.msg);
            goto done;
        }
        if (strlen(source) != n) {
            lf_cli_error(CMD, "%s: template contains a NUL byte", tfile);
            goto done;
        }
    }

    /* messages (+ variables from an object-form messages file) */
    if (lf_json_load_file(msgs_path, &doc, &err) != LF_OK) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    json_t *messages = doc;
    if (json_is_object(doc)) {
        messages = json_object_get(doc, "messages");
        if (!json_is_array(messages)) {
            lf_cli_error(CMD, "%s: expected \"messages\" to be an array", msgs_path);
            goto done;
        }
        const char *k;
        json_t *v;
        json_object_foreach(doc, k, v) {
            if (strcmp(k, "messages") != 0) json_object_set(extra, k, v);
        }
    } else if (!json_is_array(doc)) {
        lf_cli_error(CMD, "%s: expected a JSON array of messages or an object with \"messages\"", msgs_path);
        goto done;
    }
    if (extra_path) {
        if (lf_json_load_file(extra_path, &more, &err) != LF_OK) {
            lf_cli_error(CMD, "%s", err.msg);
            goto done;
        }
        if (!json_is_object(more)) {
            lf_cli_error(CMD, "%s: expected a JSON object of template variables", extra_path);
            goto done;
        }
        merge_into(extra, more);
    }
    if (bos) json_object_set_new(extra, "bos_token", json_string(bos));
    if (eos) json_object_set_new(extra, "eos_token", json_string(eos));

    if (lf_chat_template_compile(source, &tpl, &err) != LF_OK) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    size_t len = 0;
    if (lf_chat_template_render_len(tpl, messages, add_gen, extra, &text, &len, &err) != LF_OK) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    if (fwrite(text, 1, len, stdout) != len || fflush(stdout) != 0) {
        lf_cli_error(CMD, "writing output failed");
        goto done;
    }
    rc = 0;
done:
    free(text);
    free(source);
    lf_chat_template_free(tpl);
    json_decref(doc);
    json_decref(extra);
    json_decref(more);
    return rc;
}
