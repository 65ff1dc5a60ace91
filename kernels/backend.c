/* backend.c - backend-independent parts of the op table: lf_backend_free, and the CUDA entry points of a
 * build without CUDA (kernels/cuda/backend_cuda.cu defines them when LF_WITH_CUDA is set). */
#include "kernels/backend.h"

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
