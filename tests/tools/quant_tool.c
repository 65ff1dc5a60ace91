/* quant_tool.c - test helper for the NumPy bitsandbytes oracle (tests/oracle/test_quant_numpy.py).
 *
 *   quant_tool map OUT.f32
 *       writes the signed dynamic map (256 little-endian f32).
 *   quant_tool quant IN.f32 ROWS COLS BLOCKSIZE nf4|fp4 DQ OUTPREFIX
 *       IN.f32: ROWS*COLS raw little-endian f32. DQ: 0 or 1 (double quantization). Writes
 *       OUTPREFIX.packed        uint8 [(n+1)/2]
 *       OUTPREFIX.absmax        f32 [nblocks] (DQ=0) or uint8 [nblocks] (DQ=1)
 *       OUTPREFIX.nested_absmax f32 [ceil(nblocks/256)]   (DQ=1 only)
 *       OUTPREFIX.offset        f32 [1]                   (DQ=1 only)
 *       OUTPREFIX.dequant       f32 [n] (lf_quant_dequantize_f32)
 * Exit 0 on success, 1 on error (message on stderr), 2 on usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "quant/quant.h"

static int write_file(const char *prefix, const char *suffix, const void *data, size_t len) {
    char path[4096];
    lf_err err;
    snprintf(path, sizeof(path), "%s%s", prefix, suffix);
    if (lf_file_write_atomic(path, data, len, &err)) {
        fprintf(stderr, "quant_tool: %s\n", err.msg);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "map") == 0) {
        float map[LF_QUANT_DYN_MAP_SIZE];
        lf_quant_dynamic_map_signed(map);
        return write_file(argv[2], "", map, sizeof(map));
    }
    if (argc != 9 || strcmp(argv[1], "quant") != 0) {
        fprintf(stderr, "usage: quant_tool map OUT.f32\n"
                        "       quant_tool quant IN.f32 ROWS COLS BLOCKSIZE nf4|fp4 DQ OUTPREFIX\n");
        return 2;
    }
    int64_t rows = strtoll(argv[3], NULL, 10), cols = strtoll(argv[4], NULL, 10), B = strtoll(argv[5], NULL, 10);
    lf_quant_type type = strcmp(argv[6], "fp4") == 0 ? LF_QUANT_FP4 : LF_QUANT_NF4;
    int dq = atoi(argv[7]);
    const char *pre = argv[8];
    char *buf = NULL;
    size_t len = 0;
    lf_err err;
    if (lf_file_read_all(argv[2], &buf, &len, &err)) {
        fprintf(stderr, "quant_tool: %s\n", err.msg);
        return 1;
    }
    if ((int64_t)(len / 4) != rows * cols) {
        fprintf(stderr, "quant_tool: %s has %zu bytes, shape [%lld, %lld] needs %lld\n", argv[2], len, (long long)rows,
                (long long)cols, (long long)(rows * cols * 4));
        free(buf);
        return 1;
    }
    lf_quant_state st;
    if (lf_quant_quantize(&st, buf, LF_DTYPE_F32, rows, cols, B, type, dq, &err)) {
        fprintf(stderr, "quant_tool: %s\n", err.msg);
        free(buf);
        return 1;
    }
    float *deq = malloc((size_t)st.n * 4);
    int rc = !deq || lf_quant_dequantize_f32(deq, &st, NULL, &err) != LF_OK;
    rc = rc || write_file(pre, ".packed", st.packed, (size_t)((st.n + 1) / 2));
    rc = rc || write_file(pre, ".dequant", deq, (size_t)st.n * 4);
    if (dq) {
        rc = rc || write_file(pre, ".absmax", st.absmax_q, (size_t)st.nblocks);
        rc = rc || write_file(pre, ".nested_absmax", st.nested_absmax, (size_t)st.n_nested * 4);
        rc = rc || write_file(pre, ".offset", &st.offset, 4);
    } else {
        rc = rc || write_file(pre, ".absmax", st.absmax, (size_t)st.nblocks * 4);
    }
    free(deq);
    free(buf);
    lf_quant_state_free(&st);
    return rc;
}
