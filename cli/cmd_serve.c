/* cmd_serve.c - `loraforge serve`: the SageMaker-compatible inference endpoint. Listens first (GET /ping
 * answers 503 while the model loads), loads the base model (bf16/f32 or 4-bit), tokenizer, chat template
 * and adapters, starts the engine, then answers until SIGTERM/SIGINT: drain, let in-flight requests finish
 * for up to 25 s, cancel the rest, free everything, exit 0. Exit 1 on a runtime error, 2 on a usage error. */
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli/cli.h"               // defines: lf_cli_error, lf_cli_parse_i64, lf_cli_model_option
#include "core/log.h"              // defines: LF_LOG
#include "cli/cli_device.h"        // defines: lf_cli_device_*
#include "kernels/backend.h"       // defines: lf_backend_free
#include "model/chat_template.h"   // defines: lf_chat_template_*
#include "model/model.h"           // defines: lf_model_load_opts
#include "model/tokenizer.h"       // defines: lf_tokenizer_load
#include "serve/engine.h"          // defines: lf_engine_*
#include "serve/metrics.h"         // defines: lf_metrics_*
#include "serve/registry.h"        // defines: lf_registry_*
#include "serve/server.h"          // defines: lf_server_*

static const char *CMD = "serve";

#define MAX_LIST 64                /* --adapter / --adapter-root entries */
#define SHUTDOWN_DEADLINE_MS 25000 /* SageMaker sends SIGKILL 30 s after SIGTERM */

static void help(void) {
    printf("usage: loraforge serve [--model DIR] [--adapter NAME=DIR ...] [options]\n\n"
           "A SageMaker-compatible endpoint: GET /ping, POST /invocations (LMI/TGI generate body or OpenAI chat\n"
           "body), POST /v1/chat/completions, adapters (POST/GET /adapters, GET/DELETE /adapters/NAME), the\n"
           "multi-model API (POST/GET /models, GET/DELETE /models/NAME, POST /models/NAME/invoke), GET /metrics.\n"
           "GET /ping answers 503 while the model loads and 200 once it serves. SIGTERM/SIGINT: stop accepting,\n"
           "finish in-flight requests for up to 25 s, cancel the rest, exit 0.\n\n"
           "  --model DIR             Hugging Face model directory (default /opt/ml/model); its adapters/NAME/\n"
           "                          subdirectories are preloaded as adapters NAME\n"
           "  --adapter NAME=DIR      preload a PEFT LoRA/DoRA adapter under NAME (repeatable)\n"
           "  --adapter-root DIR      directory that POST /adapters and POST /models sources must lie in\n"
           "                          (repeatable; default: the model directory and /opt/ml)\n"
           "  --host H                bind address (default 0.0.0.0)\n"
           "  --port N                port (default $SAGEMAKER_BIND_TO_PORT, else 8080)\n"
           "  --max-batch-size N      sequences running at once (default 32)\n"
           "  --max-batch-tokens N    tokens per forward step, decodes + prefill chunks (default 256)\n"
           "  --max-model-len N       prompt + generated tokens per sequence (default: the model's\n"
           "                          max_position_embeddings, capped at 4096); also bounds max_new_tokens\n"
           "  --max-queue N           waiting sequences before requests get 429 (default 256)\n"
           "  --kv-cache-memory SIZE  KV cache pool: bytes or with a suffix K/M/G, KiB/MiB/GiB, KB/MB/GB\n"
           "                          (default: 2 x max-batch-size full-length sequences, <= 25%% of RAM)\n"
           "  --block-size N          KV cache tokens per block (default 16)\n"
           "  --max-loras N           adapters loaded at once; 0 = unlimited (default 0)\n"
           "  --max-lora-rank N       largest adapter rank accepted (default 64)\n"
           "  --threads N             CPU threads (default: all cores)\n"
           "  --tgi-compat            TGI response shapes: non-stream answers are lists, streams are SSE\n"
           "  --stream-format F       jsonlines (default; SSE when Accept asks for text/event-stream) or sse\n"
           "  --served-model-name S   \"model\" reported in chat answers (default: the model directory's name)\n"
           "  --max-connections N     HTTP connections served in full (default 1024); up to N/2 (at least 256)\n"
           "                          more are still answered: /ping served, other requests 503\n"
           "  --header-timeout S      seconds a request head may take to arrive before 408 (default 10)\n"
           "  --body-timeout S        seconds a request body may take to arrive before 408 (default 60)\n"
           "  --idle-timeout S        seconds an idle keep-alive connection is kept (default 75)\n"
           "  --http-threads N        handler threads, started on demand (default 256); /ping never needs one\n"
           LF_CLI_MODEL_OPTIONS_HELP
           LF_CLI_COMPUTE_HELP
           LF_CLI_DEVICE_HELP
           "\nEnvironment (flags win): SAGEMAKER_BIND_TO_PORT (port), OPTION_MAX_LORAS or SM_VLLM_MAX_LORAS,\n"
           "OPTION_MAX_LORA_RANK or SM_VLLM_MAX_LORA_RANK, OPTION_MAX_MODEL_LEN or SM_VLLM_MAX_MODEL_LEN,\n"
           "OPTION_MAX_ROLLING_BATCH_SIZE (max batch size), OPTION_TGI_COMPAT=true|false,\n"
           "OPTION_OUTPUT_FORMATTER=jsonlines|sse, OPTION_QUANTIZE=nf4|fp4|bitsandbytes4 (4-bit on load),\n"
           "OPTION_DTYPE=auto|fp32|bf16|fp16 (LMI's spelling of --compute-dtype),\n"
           "OPTION_MAX_CONNECTIONS, OPTION_HEADER_TIMEOUT, OPTION_BODY_TIMEOUT, OPTION_IDLE_TIMEOUT,\n"
           "OPTION_HTTP_THREADS (as the flags of the same names).\n");
}

/* "123", "1.5GiB", "512MiB", "2G", "100MB" -> bytes. 0 ok, 1 bad. */
static int parse_size(const char *s, size_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v >= 0)) return 1;
    static const struct {
        const char *suf;
        double mul;
    } sfx[] = {{"", 1}, {"B", 1}, {"K", 1024.0}, {"KiB", 1024.0}, {"KB", 1e3}, {"M", 1048576.0}, {"MiB", 1048576.0},
               {"MB", 1e6}, {"G", 1073741824.0}, {"GiB", 1073741824.0}, {"GB", 1e9}, {"T", 1099511627776.0},
               {"TiB", 1099511627776.0}, {"TB", 1e12}};
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        if (strcasecmp(end, sfx[i].suf) != 0) continue;
        double b = v * sfx[i].mul;
        if (b > 1.8e19 || b < 1) return 1;
        *out = (size_t)b;
        return 0;
    }
    return 1;
}

/* Environment integer: 0 unset/ok (*set tells), 1 invalid (error printed, naming the variable). */
static int env_i64(const char *name, int64_t lo, int64_t hi, int64_t *out, int *set) {
    const char *v = getenv(name);
    if (!v || !*v) return 0;
    if (lf_cli_parse_i64(CMD, name, v, lo, hi, out)) return 1;
    *set = 1;
    return 0;
}

static int env_bool(const char *name, int *out) {
    const char *v = getenv(name);
    if (!v || !*v) return 0;
    if (!strcasecmp(v, "true") || !strcmp(v, "1") || !strcasecmp(v, "yes")) *out = 1;
    else if (!strcasecmp(v, "false") || !strcmp(v, "0") || !strcasecmp(v, "no")) *out = 0;
    else {
        lf_cli_error(CMD, "%s='%s': expected true or false", name, v);
        return 1;
    }
    return 0;
}

typedef struct serve_cfg {
    const char *model_dir, *host, *served_name;
    int64_t port;
    const char *adapters[MAX_LIST]; /* "NAME=DIR" */
    int n_adapters;
    const char *roots[MAX_LIST];
    int n_roots;
    lf_engine_params ep;
    int64_t max_loras, max_lora_rank, threads;
    int tgi_compat, sse;
    int64_t max_connections, header_timeout_s, body_timeout_s, idle_timeout_s, http_threads;
    lf_cli_device device;
    lf_model_options mopt;
} serve_cfg;

/* Settings from the environment, applied before the flags (which win). 0 ok, 2 usage error. */
static int read_env(serve_cfg *c) {
    int set = 0;
    int64_t v = 0;
    const char *port = getenv("SAGEMAKER_BIND_TO_PORT");
    if (port && *port && lf_cli_parse_i64(CMD, "SAGEMAKER_BIND_TO_PORT", port, 1, 65535, &c->port)) return 2;
    const char *pairs[][2] = {{"OPTION_MAX_LORAS", "SM_VLLM_MAX_LORAS"},
                              {"OPTION_MAX_LORA_RANK", "SM_VLLM_MAX_LORA_RANK"},
                              {"OPTION_MAX_MODEL_LEN", "SM_VLLM_MAX_MODEL_LEN"},
                              {"OPTION_MAX_ROLLING_BATCH_SIZE", NULL}};
    int64_t *dst[] = {&c->max_loras, &c->max_lora_rank, &c->ep.max_model_len, &c->ep.max_batch_size};
    const int64_t lo[] = {0, 1, 2, 1}, hi[] = {1 << 20, 1 << 16, 1 << 24, 1 << 16};
    for (int i = 0; i < 4; i++) {
        for (int k = 0; k < 2; k++) {
            if (!pairs[i][k]) continue;
            set = 0;
            if (env_i64(pairs[i][k], lo[i], hi[i], &v, &set)) return 2;
            if (set) {
                *dst[i] = v;
                break; /* the OPTION_ name wins over the SM_VLLM_ one */
            }
        }
    }
    const struct {
        const char *name;
        int64_t lo, hi, *dst;
    } http_env[] = {{"OPTION_MAX_CONNECTIONS", 1, 1000000, &c->max_connections},
                    {"OPTION_HEADER_TIMEOUT", 1, 86400, &c->header_timeout_s},
                    {"OPTION_BODY_TIMEOUT", 1, 86400, &c->body_timeout_s},
                    {"OPTION_IDLE_TIMEOUT", 1, 86400, &c->idle_timeout_s},
                    {"OPTION_HTTP_THREADS", 1, 65536, &c->http_threads}};
    for (size_t i = 0; i < sizeof http_env / sizeof http_env[0]; i++) {
        int seen = 0;
        if (env_i64(http_env[i].name, http_env[i].lo, http_env[i].hi, http_env[i].dst, &seen)) return 2;
    }
    if (env_bool("OPTION_TGI_COMPAT", &c->tgi_compat)) return 2;
    const char *fmt = getenv("OPTION_OUTPUT_FORMATTER");
    if (fmt && *fmt) {
        if (!strcasecmp(fmt, "sse")) c->sse = 1;
        else if (!strcasecmp(fmt, "jsonlines") || !strcasecmp(fmt, "json")) c->sse = 0;
        else {
            lf_cli_error(CMD, "OPTION_OUTPUT_FORMATTER='%s': supported values are jsonlines, json and sse", fmt);
            return 2;
        }
    }
    const char *dt = getenv("OPTION_DTYPE");
    if (dt && *dt && lf_cli_parse_compute_dtype(CMD, "OPTION_DTYPE", dt, &c->mopt.compute_dtype)) return 2;
    const char *q = getenv("OPTION_QUANTIZE");
    if (q && *q) {
        if (!strcasecmp(q, "nf4") || !strcasecmp(q, "bitsandbytes4")) {
            c->mopt.quant_bits = 4;
            c->mopt.quant_type = 0;
        } else if (!strcasecmp(q, "fp4")) {
            c->mopt.quant_bits = 4;
            c->mopt.quant_type = 1;
        } else if (!strcasecmp(q, "none")) {
            c->mopt.quant_bits = 0;
        } else {
            lf_cli_error(CMD, "OPTION_QUANTIZE='%s': supported values are nf4, fp4, bitsandbytes4 (4-bit on load) and none", q);
            return 2;
        }
    }
    return 0;
}

/* 0 ok, 2 usage error; *help_shown = 1 after --help. */
static int parse_args(serve_cfg *c, int argc, char **argv, int *help_shown) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help();
            *help_shown = 1;
            return 0;
        }
        if (!strcmp(a, "--tgi-compat")) {
            c->tgi_compat = 1;
            continue;
        }
        int mo = lf_cli_model_option(CMD, argc, argv, &i, &c->mopt, 0);
        if (mo < 0) return 2;
        if (mo) continue;
        if (strncmp(a, "--", 2) != 0) {
            lf_cli_error(CMD, "unexpected argument '%s' (see --help)", a);
            return 2;
        }
        static const char *const known[] = {"--model", "--adapter", "--adapter-root", "--host", "--port",
                                            "--max-batch-size", "--max-batch-tokens", "--max-model-len", "--max-queue",
                                            "--kv-cache-memory", "--block-size", "--max-loras", "--max-lora-rank",
                                            "--threads", "--stream-format", "--served-model-name",
                                            "--max-connections", "--header-timeout", "--body-timeout",
                                            "--idle-timeout", "--http-threads", "--device"};
        int k = -1;
        for (int j = 0; j < (int)(sizeof known / sizeof known[0]); j++)
            if (!strcmp(a, known[j])) k = j;
        if (k < 0) {
            lf_cli_error(CMD, "unknown option '%s' (see --help)", a);
            return 2;
        }
        if (lf_cli_need_value(CMD, argc, argv, i)) return 2;
        const char *v = argv[++i];
        int bad = 0;
        if (!strcmp(a, "--model")) c->model_dir = v;
        else if (!strcmp(a, "--adapter") || !strcmp(a, "--adapter-root")) {
            int is_root = !strcmp(a, "--adapter-root");
            const char *eq = strchr(v, '=');
            if (!is_root && (!eq || eq == v || !eq[1])) {
                lf_cli_error(CMD, "--adapter '%s': expected NAME=DIR", v);
                return 2;
            }
            if ((is_root ? c->n_roots : c->n_adapters) >= MAX_LIST) {
                lf_cli_error(CMD, "%s: at most %d may be given", a, MAX_LIST);
                return 2;
            }
            if (is_root) c->roots[c->n_roots++] = v;
            else c->adapters[c->n_adapters++] = v;
        } else if (!strcmp(a, "--host")) c->host = v;
        else if (!strcmp(a, "--port")) bad = lf_cli_parse_i64(CMD, a, v, 0, 65535, &c->port);
        else if (!strcmp(a, "--max-batch-size")) bad = lf_cli_parse_i64(CMD, a, v, 1, 1 << 16, &c->ep.max_batch_size);
        else if (!strcmp(a, "--max-batch-tokens")) bad = lf_cli_parse_i64(CMD, a, v, 1, 1 << 24, &c->ep.max_batch_tokens);
        else if (!strcmp(a, "--max-model-len")) bad = lf_cli_parse_i64(CMD, a, v, 2, 1 << 24, &c->ep.max_model_len);
        else if (!strcmp(a, "--max-queue")) bad = lf_cli_parse_i64(CMD, a, v, 1, 1 << 24, &c->ep.max_queue);
        else if (!strcmp(a, "--block-size")) bad = lf_cli_parse_i64(CMD, a, v, 1, 1 << 16, &c->ep.block_size);
        else if (!strcmp(a, "--max-loras")) bad = lf_cli_parse_i64(CMD, a, v, 0, 1 << 20, &c->max_loras);
        else if (!strcmp(a, "--max-lora-rank")) bad = lf_cli_parse_i64(CMD, a, v, 1, 1 << 16, &c->max_lora_rank);
        else if (!strcmp(a, "--threads")) bad = lf_cli_parse_i64(CMD, a, v, 0, 4096, &c->threads);
        else if (!strcmp(a, "--served-model-name")) c->served_name = v;
        else if (!strcmp(a, "--max-connections")) bad = lf_cli_parse_i64(CMD, a, v, 1, 1000000, &c->max_connections);
        else if (!strcmp(a, "--header-timeout")) bad = lf_cli_parse_i64(CMD, a, v, 1, 86400, &c->header_timeout_s);
        else if (!strcmp(a, "--body-timeout")) bad = lf_cli_parse_i64(CMD, a, v, 1, 86400, &c->body_timeout_s);
        else if (!strcmp(a, "--idle-timeout")) bad = lf_cli_parse_i64(CMD, a, v, 1, 86400, &c->idle_timeout_s);
        else if (!strcmp(a, "--http-threads")) bad = lf_cli_parse_i64(CMD, a, v, 1, 65536, &c->http_threads);
        else if (!strcmp(a, "--device")) bad = lf_cli_device_parse(CMD, v, &c->device) != 0;
        else if (!strcmp(a, "--kv-cache-memory")) {
            if (parse_size(v, &c->ep.kv_cache_bytes)) {
                lf_cli_error(CMD, "--kv-cache-memory '%s': expected a size such as 536870912, 512MiB or 4GiB", v);
                return 2;
            }
        } else if (!strcmp(a, "--stream-format")) {
            if (!strcmp(v, "sse")) c->sse = 1;
            else if (!strcmp(v, "jsonlines")) c->sse = 0;
            else {
                lf_cli_error(CMD, "--stream-format '%s': expected jsonlines or sse", v);
                return 2;
            }
        }
        if (bad) return 2;
    }
    return 0;
}

/* The name under the last path component of dir ("/opt/ml/model/" -> "model"). */
static void dir_basename(const char *dir, char *out, size_t cap) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && dir[b - 1] != '/') b--;
    size_t len = n - b < cap - 1 ? n - b : cap - 1;
    memcpy(out, dir + b, len);
    out[len] = '\0';
    if (!out[0]) snprintf(out, cap, "loraforge");
}

int lf_cmd_serve(int argc, char **argv) {
    serve_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.device.kind = 2; /* auto */
    cfg.model_dir = "/opt/ml/model";
    cfg.host = "0.0.0.0";
    cfg.port = 8080;
    cfg.ep = lf_engine_default_params();
    cfg.ep.max_model_len = 0;
    cfg.max_loras = 0;
    cfg.max_lora_rank = cfg.ep.max_lora_rank > 0 ? cfg.ep.max_lora_rank : 64;
    cfg.mopt = lf_model_default_options();
    int help_shown = 0;
    int rc = read_env(&cfg);
    if (rc) return rc;
    rc = parse_args(&cfg, argc, argv, &help_shown);
    if (rc || help_shown) return rc;
    cfg.ep.max_lora_rank = cfg.max_lora_rank;

    /* Signals: blocked here, before any thread exists, so every thread inherits the mask and only sigwait
     * below receives SIGTERM/SIGINT; SIGPIPE stays blocked (a vanished client is an EPIPE, not a death). */
    sigset_t sigs, blocked;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    blocked = sigs;
    sigaddset(&blocked, SIGPIPE);
    if (pthread_sigmask(SIG_BLOCK, &blocked, NULL) != 0) {
        lf_cli_error(CMD, "cannot block signals");
        return 1;
    }

    rc = 1;
    lf_err err = {0};
    lf_metrics *metrics = NULL;
    lf_server *srv = NULL;
    lf_backend *be = NULL;
    lf_model *m = NULL;
    lf_tokenizer *tok = NULL;
    lf_chat_template *tpl = NULL;
    json_t *tpl_vars = NULL;
    lf_registry *reg = NULL;
    lf_engine *eng = NULL;
    char *tpl_src = NULL;
    char served[256];
    dir_basename(cfg.model_dir, served, sizeof served);

    metrics = lf_metrics_create();
    if (!metrics) {
        lf_cli_error(CMD, "out of memory");
        goto done;
    }
    lf_server_options so = lf_server_default_options();
    so.host = cfg.host;
    so.port = (int)cfg.port;
    so.tgi_compat = cfg.tgi_compat;
    so.force_sse = cfg.sse;
    so.served_model_name = cfg.served_name ? cfg.served_name : served;
    if (cfg.max_connections) so.max_connections = (unsigned)cfg.max_connections;
    if (cfg.header_timeout_s) so.header_timeout_ms = (int)(cfg.header_timeout_s * 1000);
    if (cfg.body_timeout_s) so.body_timeout_ms = (int)(cfg.body_timeout_s * 1000);
    if (cfg.idle_timeout_s) so.idle_timeout_s = (unsigned)cfg.idle_timeout_s;
    if (cfg.http_threads) so.http_threads = (unsigned)cfg.http_threads;
    /* the backend first: a device that cannot be used is an error before anything listens */
    if (lf_cli_device_backend(CMD, &cfg.device, (int)cfg.threads, &be)) goto done;
    if (lf_server_create(&so, metrics, &srv, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    fprintf(stderr, "loraforge serve: listening on http://%s:%d (GET /ping answers 503 while loading %s)\n", cfg.host,
            lf_server_port(srv), cfg.model_dir);

    /* the model, its tokenizer and chat template */
    if (lf_model_load_opts(cfg.model_dir, be, &cfg.mopt, &m, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    lf_cli_report_memory(CMD, m);
    if (lf_tokenizer_load(cfg.model_dir, &tok, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    lf_status ts = lf_chat_template_from_model(cfg.model_dir, &tpl_src, &err);
    if (ts == LF_OK) {
        if (lf_chat_template_compile(tpl_src, &tpl, &err) ||
            lf_chat_template_special_tokens(cfg.model_dir, &tpl_vars, &err)) {
            lf_cli_error(CMD, "chat template of %s: %s", cfg.model_dir, err.msg);
            goto done;
        }
    } else if (ts == LF_ENOTFOUND) {
        fprintf(stderr, "loraforge serve: %s has no chat template: chat requests (\"messages\") will answer 422\n",
                cfg.model_dir);
    } else {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }

    /* adapters: the model's adapters/ directory, then every --adapter */
    const char *roots[MAX_LIST + 2];
    size_t n_roots = 0;
    if (cfg.n_roots) {
        for (int i = 0; i < cfg.n_roots; i++) roots[n_roots++] = cfg.roots[i];
    } else {
        roots[n_roots++] = cfg.model_dir;
        roots[n_roots++] = "/opt/ml";
    }
    lf_registry_limits lim = {cfg.max_loras, cfg.max_lora_rank};
    if (lf_registry_create(m, roots, n_roots, &lim, &reg, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    {
        char adir[4096];
        int n_pre = 0;
        snprintf(adir, sizeof adir, "%s/adapters", cfg.model_dir);
        if (lf_registry_preload_dir(reg, adir, &n_pre, &err)) {
            lf_cli_error(CMD, "%s", err.msg);
            goto done;
        }
        if (n_pre) fprintf(stderr, "loraforge serve: preloaded %d adapter(s) from %s\n", n_pre, adir);
    }
    for (int i = 0; i < cfg.n_adapters; i++) {
        const char *eq = strchr(cfg.adapters[i], '=');
        char name[LF_REGISTRY_NAME_MAX + 2];
        size_t nl = (size_t)(eq - cfg.adapters[i]);
        if (nl > LF_REGISTRY_NAME_MAX) nl = LF_REGISTRY_NAME_MAX + 1; /* too long: the registry rejects it */
        memcpy(name, cfg.adapters[i], nl);
        name[nl] = '\0';
        int hs = 0;
        if (lf_registry_load(reg, name, eq + 1, 0, &hs, &err)) {
            lf_cli_error(CMD, "--adapter %s: %s", cfg.adapters[i], err.msg);
            goto done;
        }
        fprintf(stderr, "loraforge serve: adapter '%s' loaded from %s\n", name, eq + 1);
    }

    /* the engine, then open the doors */
    if (lf_engine_create(m, tok, &cfg.ep, metrics, &eng, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    if (lf_server_attach(srv, m, tok, tpl, tpl_vars, eng, reg, &err)) {
        lf_cli_error(CMD, "%s", err.msg);
        goto done;
    }
    lf_server_set_ready(srv);
    fprintf(stderr, "loraforge serve: ready on http://%s:%d\n", cfg.host, lf_server_port(srv));
    fflush(stderr);

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0) {
    }
    fprintf(stderr, "loraforge serve: %s received: draining (in-flight requests get up to %d s)\n",
            sig == SIGTERM ? "SIGTERM" : "SIGINT", SHUTDOWN_DEADLINE_MS / 1000);
    lf_server_stop(srv, SHUTDOWN_DEADLINE_MS);
    lf_engine_cancel_all(eng, "server shutting down");
    fprintf(stderr, "loraforge serve: stopped\n");
    rc = 0;
done:
    lf_server_stop(srv, 0); /* no-op after a clean stop; on a load failure: close the port first */
    lf_engine_free(eng);
    lf_server_free(srv);
    lf_registry_free(reg);
    json_decref(tpl_vars);
    lf_chat_template_free(tpl);
    free(tpl_src);
    lf_tokenizer_free(tok);
    lf_model_free(m);
    lf_backend_free(be);
    lf_metrics_free(metrics);
    return rc;
}
