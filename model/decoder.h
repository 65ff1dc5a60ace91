/* decoder.h - internal to model/: the one place that knows a decoder layer's structure. Inference
 * (model_batch.c: scoring, generation and batched serving) and training (model_train.c) both run their layers
 * through lf_decoder_layer_forward; they differ only in the two hooks: how a linear is applied (the base weight
 * plus the caller's adapter policy: grouped per segment, or with dropout and saved LoRA activations) and how
 * attention reads K/V (a paged cache with the new rows scattered into it, or the sequence itself with the
 * log-sum-exp kept for the backward).
 *
 * Layer (Llama family, HF names): xn1 = input_layernorm(x); q, k, v = lin(xn1); [Qwen3: q = q_norm(q),
 * k = k_norm(k), RMSNorm over each head's D]; RoPE(q, k); att = attend(q, k, v); xmid = x + o_proj(att);
 * xn2 = post_attention_layernorm(xmid); h = silu(gate(xn2)) * up(xn2); x_out = xmid + down(h).
 * Optional parts are present when the layer's weight is (lf_layer.qn/kn non-NULL).
 *
 * Buffers: the caller owns every buffer of lf_layer_acts (backend memory, activations of one dtype). Aliases
 * the forward allows, and inference uses to keep one scratch set: xmid == x_in == x_out (in-place residuals),
 * xn2 == xn1, h == g, qp == q, kp == k. Training keeps them apart (its backward reads them). */
#ifndef LF_MODEL_DECODER_H
#define LF_MODEL_DECODER_H

#include "model/model_int.h"

typedef struct lf_layer_acts {
    lf_act xn1;       /* [T, C]   normed input of the attention block */
    lf_act qp, kp;    /* [T, H*D], [T, KH*D] q and k projections before q_norm/k_norm (unused without them) */
    lf_act q, k, v;   /* [T, H*D], [T, KH*D] x2 (after the norms and RoPE) */
    lf_act att;       /* [T, H*D] attention output */
    lf_act tmp;       /* [T, C]   o_proj / down_proj output before its residual */
    lf_act xmid;      /* [T, C]   residual stream after attention */
    lf_act xn2;       /* [T, C]   normed input of the MLP */
    lf_act g, up, h;  /* [T, FF]  gate, up, silu(gate) * up */
} lf_layer_acts;

typedef struct lf_decoder_hooks {
    /* out[T, OC] = linear (l, mod) of x[T, C], adapter included. */
    lf_status (*linear)(void *ctx, int64_t l, int mod, lf_act out, lf_act x, int64_t T, lf_err *err);
    /* a->att from a->q, a->k, a->v of layer l (positions as given to lf_decoder_layer_forward). */
    lf_status (*attend)(void *ctx, int64_t l, const lf_layer_acts *a, int64_t T, lf_err *err);
    void *ctx;
} lf_decoder_hooks;

/* x_out[T, C] = layer l of m applied to x_in[T, C] at positions pos[T] (backend memory), through the hooks. */
lf_status lf_decoder_layer_forward(const lf_model *m, int64_t l, lf_act x_in, lf_act x_out, const lf_layer_acts *a,
                                   const int32_t *pos, int64_t T, const lf_decoder_hooks *h, lf_err *err);

#endif
