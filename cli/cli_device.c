/* cli_device.c - --device parsing and the backend factory behind it (see cli_device.h). Invariant: every
 * request that cannot be met is a clear one-line error (exit 1), never a crash; whether the model's ops run on
 * the backend for the compute dtype is checked when its session or batch is created. */
#include "cli/cli_device.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/log.h"

int lf_cli_device_parse(const char *cmd, const char *value, lf_cli_device *out) {
    memset(out, 0, sizeof *out);
    if (!value || !strcmp(value, "auto")) {
        out->kind = 2;
        return 0;
    }
    if (!strcmp(value, "cpu")) return 0;
    if (!strcmp(value, "cpu-checked")) {
        out->kind = 3;
        return 0;
    }
    if (!strncmp(value, "cuda", 4) && (value[4] == '\0' || value[4] == ':')) {
        out->kind = 1;
        if (value[4] == ':') {
            char *end = NULL;
            errno = 0;
            long n = strtol(value + 5, &end, 10);
            if (errno || end == value + 5 || *end || n < 0 || n > 255) {
                lf_cli_error(cmd, "--device '%s': expected cuda:N with N a device number 0..255", value);
                return 2;
            }
            out->ordinal = (int)n;
        }
        return 0;
    }
    lf_cli_error(cmd, "--device '%s': expected cpu, cuda, cuda:N, auto or cpu-checked", value);
    return 2;
}

int lf_cli_device_backend(const char *cmd, const lf_cli_device *d, int threads, lf_backend **out) {
    *out = NULL;
    if (d->kind == 3) { /* the checked cpu backend: a device stand-in for tests (kernels/backend.h) */
        *out = lf_backend_cpu_checked_create(threads);
        if (!*out) {
            lf_cli_error(cmd, "cannot create the cpu-checked backend (out of memory?)");
            return 1;
        }
        return 0;
    }
    if (d->kind == 1 || (d->kind == 2 && lf_backend_cuda_built())) {
        if (!lf_backend_cuda_built()) {
            lf_cli_error(cmd, "--device cuda: no CUDA device: this binary was built without CUDA (rebuild with nvcc "
                              "installed, or use --device cpu)");
            return 1;
        }
        lf_err err = {0};
        lf_backend *be = lf_backend_cuda_create(d->ordinal, &err);
        if (be) {
            *out = be;
            return 0;
        }
        if (d->kind == 1) {
            if (strstr(err.msg, "CUDA device")) lf_cli_error(cmd, "--device cuda:%d: %s", d->ordinal, err.msg);
            else lf_cli_error(cmd, "--device cuda:%d: no CUDA device: %s", d->ordinal, err.msg);
            return 1;
        }
        LF_LOG(LF_LOG_DEBUG, "%s: --device auto: no usable CUDA device (%s): using the cpu", cmd, err.msg);
    }
    /* cpu, and auto without a usable CUDA device */
    lf_backend *be = lf_backend_cpu_create(threads);
    if (!be) {
        lf_cli_error(cmd, "cannot create the cpu backend (out of memory?)");
        return 1;
    }
    *out = be;
    return 0;
}
