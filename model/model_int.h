/* model_int.h - internal to model/: the layout of lf_model and its layers, shared by the inference forward
 * (model.c), the 4-bit loader (model_quant.c) and the training forward/backward.
 *
 * Invariants: every decoder linear is either dense (w: an mmapped F32/BF16/F16 view, q.packed == NULL) or
 * 4-bit (q: an lf_quant_state, owned when quantized on load, a view into the mapping when the checkpoint is
 * pre-quantized; w.data == NULL). Biases, norms and inv_freq are f32 copies carved from m->small. Host code
 * (loading, quantize, merge, DoRA norms, training) reads `layers`; the inference forward reads `fl`, which is
 * in the backend's memory (host code never dereferences it on a device backend). */
#ifndef LF_MODEL_MODEL_INT_H
#define LF_MODEL_MODEL_INT_H

#include "core/safetensors.h"
#include "model/model.h"
#include "quant/quant.h"

typedef struct lf_linear {
    lf_tensor w;       /* [OC, C] dense weight, or data == NULL when 4-bit */
    lf_quant_state q;  /* 4-bit weight when q.packed != NULL */
    float *b;          /* [OC] or NULL */
    int64_t OC, C;
} lf_linear;

typedef struct lf_layer {
    lf_linear lin[LF_MOD_COUNT]; /* q k v o gate up down (lf_module order) */
    float *ln1, *ln2;            /* [C] */
    float *qn, *kn;              /* [D] per-head q/k RMSNorm weights (cfg.qk_norm), else NULL */
} lf_layer;

struct lf_model {
    lf_model_config cfg;
    lf_model_options opt;
    lf_backend *be;      /* borrowed */
    lf_st_model *st;     /* owned: the mmapped files */
    char dir[1024];      /* model directory, for messages */
    lf_tensor wte;       /* [V, C] */
    lf_tensor lm_head;   /* [V, C] (== wte when tied) */
    float *norm_f;       /* [C] */
    float *inv_freq;     /* [D/2] */
    lf_layer *layers;    /* [L] */
    float *small;        /* owned: f32 copies of every 1-D tensor, one allocation */
    int64_t weight_bytes;
    lf_model_memory mem;
    /* inference adapter (lf_model_set_lora): NULL when none */
    struct lf_model_adapter *lora; /* owned (model_batch.h): what every session created after set_lora uses */
    /* What the forward reads (decoder.c, model_batch.c): the host views above on a backend with host memory;
     * on any other backend (cuda, cpu-checked) copies in its memory, made once at load (model.c upload). */
    lf_layer *fl;                /* [L]: == layers, or owned (dense data, biases, norms and 4-bit states on device) */
    lf_tensor fwte, flm_head;    /* [V, C] */
    float *fnorm_f, *finv_freq;  /* [C], [D/2] */
    void *dev;                   /* owned backend allocation of the dense weights and small vectors, or NULL */
};

/* out[T, OC] = inp[T, C] @ W^T + b through the backend (dense or 4-bit), activations of any dtype. */
static inline lf_status lf_linear_forward(lf_backend *be, lf_act out, lf_act inp, const lf_linear *l, int64_t T) {
    if (l->q.packed) return be->ops->matmul_q4_forward(be, out, inp, &l->q, l->b, T, l->C, l->OC);
    return be->ops->matmul_forward(be, out, inp, &l->w, l->b, T, l->C, l->OC);
}

/* model_quant.c: load a pre-quantized bitsandbytes linear named `prefix` ("model.layers.N.self_attn.q_proj"),
 * or quantize a dense one on load. */
lf_status lf_model_load_linear_q4(lf_model *m, const char *prefix, lf_linear *lin, lf_err *err);
lf_status lf_model_quantize_linear(lf_model *m, const char *prefix, lf_linear *lin, lf_err *err);
/* 1 when `name` (a tensor name of the checkpoint) is one of the bitsandbytes companions of a 4-bit weight
 * (.absmax, .quant_map, .nested_absmax, .nested_quant_map, .quant_state.bitsandbytes__*). */
int lf_model_is_bnb_companion(const char *name);

#endif
