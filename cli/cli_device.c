/* cli_device.c - --device parsing and the backend factory behind it (see cli_device.h). Invariant: a
 * command only ever gets a backend the model can run on; every other request is a clear one-line error. */
#include "cli/cli_device.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

int lf_cli_device_parse(const char *cmd, const char *value, lf_cli_device *out) {
    memset(out, 0, sizeof *out);
    if (!value || !strcmp(value, "auto")) {
        out->kind = 2;
        return 0;
    }
    if (!strcmp(value, "cpu")) return 0;
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
    lf_cli_error(cmd, "--device '%s': expected cpu, cuda, cuda:N or auto", value);
    return 2;
}

int lf_cli_device_backend(const char *cmd, const lf_cli_device *d, int threads, lf_backend **out) {
    *out = NULL;
    if (d->kind == 1) {
        if (!lf_backend_cuda_built()) {
            lf_cli_error(cmd, "--device cuda: no CUDA device: this binary was built without CUDA (rebuild with nvcc "
                              "installed, or use --device cpu)");
            return 1;
        }
        lf_err err = {0};
        lf_backend *be = lf_backend_cuda_create(d->ordinal, &err);
        if (!be) {
            if (strstr(err.msg, "CUDA device")) lf_cli_error(cmd, "--device cuda:%d: %s", d->ordinal, err.msg);
            else lf_cli_error(cmd, "--device cuda:%d: no CUDA device: %s", d->ordinal, err.msg);
            return 1;
        }
        /* The device is there, but the decoder still runs only on the CPU backend (docs/architecture.md). */
        lf_backend_free(be);
        lf_cli_error(cmd, "--device cuda:%d: the model does not run on the CUDA backend yet; use --device cpu",
                     d->ordinal);
        return 1;
    }
    /* cpu, and auto until the model runs on CUDA */
    lf_backend *be = lf_backend_cpu_create(threads);
    if (!be) {
        lf_cli_error(cmd, "cannot create the cpu backend (out of memory?)");
        return 1;
    }
    *out = be;
    return 0;
}
