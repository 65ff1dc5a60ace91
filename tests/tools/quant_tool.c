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

#include "bench/bench_args.h" // defines: lf_args_parse, lf_args_i64
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

static const char USAGE[] = "usage: quant_tool map OUT.f32\n"
                            "       quant_tool quant IN.f32 ROWS COLS BLOCKSIZE nf4|fp4 DQ OUTPREFIX\n";

int main(int argc, char **argv) {
    const char *a[8];
    int npos = 0, arc = lf_args_parse("quant_tool", USAGE, argc, argv, 1, NULL, a, 8, &npos);
    if (arc >= 0) return arc;
    if (npos == 2 && strcmp(a[0], "map") == 0) {
        float map[LF_QUANT_DYN_MAP_SIZE];
        lf_quant_dynamic_map_signed(map);
        return write_file(a[1], "", map, sizeof(map));
    }
    if (npos != 8 || strcmp(a[0], "quant") != 0) {
        fputs(USAGE, stderr);
        return 2;
    }
    /* sizes: any integer (lf_quant_quantize validates them); DQ 0 or 1; the type nf4 or fp4 */
    int64_t rows = 0, cols = 0, B = 0, dq = 0;
    if (lf_args_i64("quant_tool", "ROWS", a[2], INT64_MIN, INT64_MAX, &rows) ||
        lf_args_i64("quant_tool", "COLS", a[3], INT64_MIN, INT64_MAX, &cols) ||
        lf_args_i64("quant_tool", "BLOCKSIZE", a[4], INT64_MIN, INT64_MAX, &B) ||
        lf_args_i64("quant_tool", "DQ", a[6], 0, 1, &dq))
        return 2;
    if (strcmp(a[5], "nf4") != 0 && strcmp(a[5], "fp4") != 0) {
        fprintf(stderr, "quant_tool: type '%s': accepted values are nf4 or fp4\n", a[5]);
        return 2;
    }
    lf_quant_type type = strcmp(a[5], "fp4") == 0 ? LF_QUANT_FP4 : LF_QUANT_NF4;
    const char *pre = a[7];
    char *buf = NULL;
    size_t len = 0;
    lf_err err;
    if (lf_file_read_all(a[1], &buf, &len, &err)) {
        fprintf(stderr, "quant_tool: %s\n", err.msg);
        return 1;
    }
    if ((int64_t)(len / 4) != rows * cols) {
        fprintf(stderr, "quant_tool: %s has %zu bytes, shape [%lld, %lld] needs %lld\n", a[1], len, (long long)rows,
                (long long)cols, (long long)(rows * cols * 4));
        free(buf);
        return 1;
    }
    lf_quant_state st;
    if (lf_quant_quantize(&st, buf, LF_DTYPE_F32, rows, cols, B, type, (int)dq, &err)) {
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
