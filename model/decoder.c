/* decoder.c - the decoder layer, written once (see decoder.h for the structure, the hooks and the aliases it
 * allows). Every op goes through the model's backend; a failure leaves be->err in err with the op named. */
#include "model/decoder.h"

#define OP(call)                                                                                            \
    do {                                                                                                    \
        if ((call) != LF_OK) {                                                                              \
            st = lf_err_set(err, be->err.code ? be->err.code : LF_EINVAL, "layer %lld: %s", (long long)l,     \
                            be->err.msg);                                                                   \
            goto fail;                                                                                      \
        }                                                                                                   \
    } while (0)

lf_status lf_decoder_layer_forward(const lf_model *m, int64_t l, lf_act x_in, lf_act x_out, const lf_layer_acts *a,
                                   const int32_t *pos, int64_t T, const lf_decoder_hooks *h, lf_err *err) {
    lf_status st = LF_OK;
    lf_backend *be = m->be;
    const lf_backend_ops *ops = be->ops;
    const lf_model_config *c = &m->cfg;
    const lf_layer *ly = &m->fl[l];
    const int64_t C = c->C, H = c->H, KH = c->KH, D = c->D, FF = c->FF;
    /* attention block */
    OP(ops->rmsnorm_forward(be, a->xn1, x_in, ly->ln1, T, C, c->rms_eps));
    LF_TRY(h->linear(h->ctx, l, LF_MOD_Q, ly->qn ? a->qp : a->q, a->xn1, T, err));
    LF_TRY(h->linear(h->ctx, l, LF_MOD_K, ly->kn ? a->kp : a->k, a->xn1, T, err));
    LF_TRY(h->linear(h->ctx, l, LF_MOD_V, a->v, a->xn1, T, err));
    if (ly->qn) OP(ops->rmsnorm_forward(be, a->q, a->qp, ly->qn, T * H, D, c->rms_eps)); /* rows = heads */
    if (ly->kn) OP(ops->rmsnorm_forward(be, a->k, a->kp, ly->kn, T * KH, D, c->rms_eps));
    OP(ops->rope_forward(be, a->q, pos, m->finv_freq, T, H, D));
    OP(ops->rope_forward(be, a->k, pos, m->finv_freq, T, KH, D));
    LF_TRY(h->attend(h->ctx, l, a, T, err));
    LF_TRY(h->linear(h->ctx, l, LF_MOD_O, a->tmp, a->att, T, err));
    OP(ops->residual_forward(be, a->xmid, x_in, a->tmp, T * C));
    /* MLP block */
    OP(ops->rmsnorm_forward(be, a->xn2, a->xmid, ly->ln2, T, C, c->rms_eps));
    LF_TRY(h->linear(h->ctx, l, LF_MOD_GATE, a->g, a->xn2, T, err));
    LF_TRY(h->linear(h->ctx, l, LF_MOD_UP, a->up, a->xn2, T, err));
    OP(ops->swiglu_forward(be, a->h, a->g, a->up, T * FF));
    LF_TRY(h->linear(h->ctx, l, LF_MOD_DOWN, a->tmp, a->h, T, err));
    OP(ops->residual_forward(be, x_out, a->xmid, a->tmp, T * C));
    return LF_OK;
fail:
    return st;
}
