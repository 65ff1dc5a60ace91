/* dtype_tool.c - test helper: `dtype_tool IN.f32 OUT.bf16 OUT.f16 OUT.back` converts raw little-endian f32
 * values to bf16 and f16 with core/tensor.h, and writes f16->f32 of the f16 result, for the torch oracle. */
#include <stdio.h>
#include <stdlib.h>

#include "bench/bench_args.h" // defines: lf_args_parse
#include "core/fileio.h"
#include "core/tensor.h"

static const char USAGE[] = "usage: dtype_tool IN.f32 OUT.bf16 OUT.f16 OUT.back\n";

int main(int argc, char **argv) {
    const char *pos[4];
    int npos = 0, arc = lf_args_parse("dtype_tool", USAGE, argc, argv, 1, NULL, pos, 4, &npos);
    if (arc >= 0) return arc;
    if (npos != 4) {
        fputs(USAGE, stderr);
        return 2;
    }
    char *buf = NULL;
    size_t len = 0;
    lf_err err;
    if (lf_file_read_all(pos[0], &buf, &len, &err)) {
        fprintf(stderr, "dtype_tool: %s\n", err.msg);
        return 1;
    }
    int64_t n = (int64_t)(len / 4);
    uint16_t *b = malloc((size_t)n * 2 + 2), *h = malloc((size_t)n * 2 + 2);
    float *back = malloc((size_t)n * 4 + 4);
    if (!b || !h || !back) return 1;
    lf_f32_to_bf16_n(b, (const float *)buf, n);
    lf_f32_to_f16_n(h, (const float *)buf, n);
    lf_f16_to_f32_n(back, h, n);
    int rc = lf_file_write_atomic(pos[1], b, (size_t)n * 2, &err) || lf_file_write_atomic(pos[2], h, (size_t)n * 2, &err) ||
             lf_file_write_atomic(pos[3], back, (size_t)n * 4, &err);
    if (rc) fprintf(stderr, "dtype_tool: %s\n", err.msg);
    free(buf);
    free(b);
    free(h);
    free(back);
    return rc;
}
