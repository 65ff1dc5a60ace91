/* cli_device.h - `--device cpu|cuda[:N]|auto` for every command that runs the model: one parser and one
 * backend factory, so each command answers the same way (exit 2 for a malformed value, exit 1 with
 * "no CUDA device" when CUDA is asked for and none is usable; never a crash). */
#ifndef LF_CLI_DEVICE_H
#define LF_CLI_DEVICE_H

#include "kernels/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LF_CLI_DEVICE_HELP                                                                                   \
    "  --device D            cpu, cuda, cuda:N or auto (default auto: cuda:0 where the binary has CUDA and a\n" \
    "                        device is present, else cpu); cpu-checked: the cpu with device-style memory\n"     \
    "                        checks (every op argument must be backend memory), for tests\n"

typedef struct lf_cli_device {
    int kind;    /* 0 cpu, 1 cuda, 2 auto, 3 cpu-checked */
    int ordinal; /* cuda:N */
} lf_cli_device;

/* Parse a --device value (or the environment's LF_DEVICE). 0 ok, 2 after printing a usage error. */
int lf_cli_device_parse(const char *cmd, const char *value, lf_cli_device *out);
/* Make the backend for d (threads: CPU threads, <= 0 all). 0 ok (*out owned by the caller), 1 after printing
 * the reason (no CUDA in this build, no usable device, the model cannot run there yet). */
int lf_cli_device_backend(const char *cmd, const lf_cli_device *d, int threads, lf_backend **out);

#ifdef __cplusplus
}
#endif
#endif
