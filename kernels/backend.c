/* backend.c - backend-independent parts of the op table: op names and arities, the capability check,
 * lf_backend_free, and the CUDA entry points of a build without CUDA (kernels/cuda/backend_cuda.cu defines
 * them when LF_WITH_CUDA is set). */
#include "kernels/backend.h"

static const struct {
    const char *name;
    int n_act;
} OPS[LF_OP_COUNT] = {
    [LF_OP_EMBEDDING] = {"embedding", 1},
    [LF_OP_RMSNORM] = {"rmsnorm", 2},
    [LF_OP_MATMUL] = {"matmul", 2},
    [LF_OP_ROPE] = {"rope", 1},
    [LF_OP_ATTENTION] = {"attention", 4},
    [LF_OP_SWIGLU] = {"swiglu", 3},
    [LF_OP_RESIDUAL] = {"residual", 3},
    [LF_OP_SOFTMAX] = {"softmax", 2},
    [LF_OP_MATMUL_Q4] = {"matmul_q4", 2},
    [LF_OP_ATTENTION_PAGED] = {"attention_paged", 4},
    [LF_OP_ADD_SCALED] = {"add_scaled", 2},
    [LF_OP_DORA_COMBINE] = {"dora_combine", 2},
    [LF_OP_CONVERT] = {"convert", 2},
    [LF_OP_MATMUL_BACKWARD] = {"matmul_backward", 0},
    [LF_OP_MATMUL_Q4_BACKWARD] = {"matmul_q4_backward", 0},
    [LF_OP_RMSNORM_BACKWARD] = {"rmsnorm_backward", 0},
    [LF_OP_ROPE_BACKWARD] = {"rope_backward", 0},
    [LF_OP_ATTENTION_TRAIN] = {"attention_train", 0},
    [LF_OP_ATTENTION_BACKWARD] = {"attention_backward", 0},
    [LF_OP_SWIGLU_BACKWARD] = {"swiglu_backward", 0},
    [LF_OP_AXPY] = {"axpy", 0},
    [LF_OP_CROSSENTROPY] = {"crossentropy", 0},
};

const char *lf_op_name(lf_op op) { return (int)op >= 0 && op < LF_OP_COUNT ? OPS[op].name : "?"; }
int lf_op_n_act(lf_op op) { return (int)op >= 0 && op < LF_OP_COUNT ? OPS[op].n_act : 0; }

int lf_backend_supports(const lf_backend *be, lf_op op, lf_dtype dt) {
    if (!be || !be->ops->supports_op || (int)op < 0 || op >= LF_OP_COUNT) return 0;
    lf_dtype d[4] = {dt, dt, dt, dt};
    return be->ops->supports_op(be, op, d, OPS[op].n_act);
}

void lf_backend_free(lf_backend *be) {
    if (!be) return;
    be->ops->destroy(be); /* frees ctx and be itself */
}

#ifndef LF_WITH_CUDA
lf_backend *lf_backend_cuda_create(int ordinal, lf_err *err) {
    (void)ordinal;
    lf_err_set(err, LF_EUNSUPPORTED, "loraforge was built without CUDA (LF_CUDA=OFF or no nvcc at build time)");
    return NULL;
}

int lf_backend_cuda_built(void) { return 0; }
#endif
