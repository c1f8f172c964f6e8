#include "core/layers.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"
#include "core/winograd.h"

const char *layer_kind_name(LayerKind kind)
{
    switch (kind) {
    case LAYER_LINEAR: return "fc";
    case LAYER_CONV: return "conv";
    case LAYER_MAXPOOL: return "pool";
    case LAYER_RELU: return "relu";
    case LAYER_FLATTEN: return "flatten";
    case LAYER_DROPOUT: return "dropout";
    case LAYER_BATCHNORM: return "bn";
    case LAYER_ADD: return "add";
    case LAYER_AVGPOOL: return "avgpool";
    case LAYER_GAP: return "gap";
    }
    return "?";
}

static int setup_window(Layer *l, Shape in, int k, int stride, int pad)
{
    Window *g = &l->win;
    g->c = in.c, g->h = in.h, g->w = in.w;
    g->kh = g->kw = k;
    g->stride = stride, g->pad = pad;
    g->oh = window_out(in.h, k, stride, pad);
    g->ow = window_out(in.w, k, stride, pad);
    if (g->oh <= 0 || g->ow <= 0)
        return basin_error(BASIN_ERR_USAGE,
                           "model: layer %d (%s) with window %d, stride %d, padding %d does not fit "
                           "its %dx%dx%d input",
                           l->index + 1, layer_kind_name(l->kind), k, stride, pad, in.c, in.h, in.w);
    return BASIN_OK;
}

int layer_setup(Layer *l, int index, const LayerSpec *spec, Shape in)
{
    memset(l, 0, sizeof *l);
    l->kind = spec->kind;
    l->index = index;
    l->spec = *spec;
    l->in = in;
    l->need_dx = index > 0;
    switch (spec->kind) {
    case LAYER_LINEAR:
        l->out = (Shape){spec->units, 1, 1};
        l->w_count = (size_t)spec->units * shape_size(in);
        l->b_count = spec->no_bias ? 0 : (size_t)spec->units;
        break;
    case LAYER_CONV:
        TRY(setup_window(l, in, spec->k, spec->stride, spec->pad));
        l->out = (Shape){spec->units, l->win.oh, l->win.ow};
        l->w_count = (size_t)spec->units * (size_t)in.c * (size_t)spec->k * (size_t)spec->k;
        l->b_count = spec->no_bias ? 0 : (size_t)spec->units;
        break;
    case LAYER_MAXPOOL:
    case LAYER_AVGPOOL:
        TRY(setup_window(l, in, spec->k, spec->stride, spec->pad));
        l->out = (Shape){in.c, l->win.oh, l->win.ow};
        break;
    case LAYER_GAP:
        l->out = (Shape){in.c, 1, 1};
        break;
    case LAYER_BATCHNORM:
        /* Per channel of a conv output, per feature of a flat one. */
        l->out = in;
        l->w_count = l->b_count = (size_t)in.c;
        l->s_count = 2 * (size_t)in.c;
        if (l->spec.bn_momentum == 0.0f) l->spec.bn_momentum = LAYER_BN_MOMENTUM_DEFAULT;
        if (l->spec.bn_eps == 0.0f) l->spec.bn_eps = LAYER_BN_EPS_DEFAULT;
        break;
    case LAYER_FLATTEN:
        l->out = (Shape){(int)shape_size(in), 1, 1};
        break;
    case LAYER_RELU:
    case LAYER_DROPOUT:
    case LAYER_ADD: /* the second input's shape is checked by the network */
        l->out = in;
        break;
    }
    return BASIN_OK;
}

/* Winograd for this conv layer (*use)? See LAYER_CONV_ENV in layers.h. A
 * value of the variable other than im2col or winograd is BASIN_ERR_USAGE. */
static int conv_uses_winograd(const Layer *l, const Ops *ops, int *use)
{
    const char *env = getenv(LAYER_CONV_ENV);
    if (env && *env && strcmp(env, "im2col") && strcmp(env, "winograd"))
        return basin_error(BASIN_ERR_USAGE, "%s='%s': expected im2col or winograd", LAYER_CONV_ENV, env);
    *use = 0;
    if (!ops->host_memory || !winograd_supported(&l->win)) return BASIN_OK;
    *use = env && *env ? strcmp(env, "winograd") == 0 : winograd_pays(&l->win);
    return BASIN_OK;
}

/* A 1x1 convolution at stride 1 without padding: a plain matrix product
 * per sample, with no im2col. */
static int conv_pointwise(const Layer *l)
{
    const Window *g = &l->win;
    return g->kh == 1 && g->kw == 1 && g->stride == 1 && g->pad == 0;
}

int layer_alloc(Layer *l, const Ops *ops, size_t max_batch)
{
    size_t out = shape_size(l->out);
    int winograd = 0;
    if (l->kind == LAYER_CONV) TRY(conv_uses_winograd(l, ops, &winograd));
    if (l->kind == LAYER_BATCHNORM) {
        size_t c = (size_t)l->in.c;
        l->bn_mean = ops->alloc(c * sizeof(float));
        l->bn_invstd = ops->alloc(c * sizeof(float));
        l->bn_sums = ops->alloc(4 * c * sizeof(double));
        if (!l->bn_mean || !l->bn_invstd || !l->bn_sums)
            return BASIN_FAIL(BASIN_ERR_RUNTIME, "cannot allocate batch-norm statistics");
    } else if (l->kind == LAYER_DROPOUT) {
        l->mask = ops->alloc(max_batch * out * sizeof(float));
        if (!l->mask) return BASIN_FAIL(BASIN_ERR_RUNTIME, "cannot allocate dropout mask");
    } else if (l->kind == LAYER_MAXPOOL) {
        l->arg = ops->alloc(max_batch * out * sizeof(int32_t));
        if (!l->arg) return BASIN_FAIL(BASIN_ERR_RUNTIME, "cannot allocate pooling indices");
    } else if (l->kind == LAYER_CONV && winograd) {
        l->wino = basin_calloc(1, sizeof *l->wino);
        if (!l->wino) return BASIN_ERR_RUNTIME;
        TRY(winograd_plan(l->wino, ops, &l->win, l->spec.units, max_batch));
    } else if (l->kind == LAYER_CONV && conv_pointwise(l)) {
        /* 1x1, stride 1, no padding: a sample is its own im2col */
    } else if (l->kind == LAYER_CONV) {
        size_t rows = (size_t)l->win.c * (size_t)l->win.kh * (size_t)l->win.kw;
        size_t bytes = rows * (size_t)l->win.oh * (size_t)l->win.ow * sizeof(float);
        l->col = ops->alloc(bytes);
        if (!l->col) return BASIN_FAIL(BASIN_ERR_RUNTIME, "cannot allocate im2col buffer");
        /* Backward needs every sample's im2col again: keep them when they fit. */
        if (max_batch * bytes <= LAYER_COL_CACHE_BYTES) {
            l->cols = ops->alloc(max_batch * bytes);
            if (!l->cols) return BASIN_FAIL(BASIN_ERR_RUNTIME, "cannot allocate im2col cache");
        }
    }
    return BASIN_OK;
}

void layer_free(Layer *l, const Ops *ops)
{
    ops->free(l->mask);
    ops->free(l->arg);
    ops->free(l->col);
    ops->free(l->cols);
    ops->free(l->bn_mean);
    ops->free(l->bn_invstd);
    ops->free(l->bn_sums);
    l->bn_mean = l->bn_invstd = NULL, l->bn_sums = NULL;
    if (l->wino) winograd_free(l->wino, ops);
    free(l->wino);
    l->mask = NULL, l->arg = NULL, l->col = NULL, l->cols = NULL, l->wino = NULL;
}

void layer_init_params(const Layer *l, uint64_t seed, int relu_follows, float *w, float *b)
{
    if (!l->w_count) return;
    if (l->kind == LAYER_BATCHNORM) { /* the identity: gamma 1, beta 0 */
        for (size_t i = 0; i < l->w_count; i++) w[i] = 1.0f;
        memset(b, 0, l->b_count * sizeof *b);
        return;
    }
    size_t units = (size_t)l->spec.units;
    size_t fan_in = l->w_count / units;
    size_t fan_out = units;
    if (l->kind == LAYER_CONV) fan_out = units * (size_t)l->win.kh * (size_t)l->win.kw;
    uint64_t stream = rng_stream(RNG_STREAM_INIT, (uint32_t)l->index);
    if (relu_follows) {
        /* He et al. 2015: keeps the activations' variance through ReLUs. */
        float sd = sqrtf(2.0f / (float)fan_in);
        for (size_t i = 0; i < l->w_count; i++) w[i] = sd * rng_normal(seed, stream, i);
    } else {
        /* Glorot & Bengio 2010, uniform. */
        float a = sqrtf(6.0f / (float)(fan_in + fan_out));
        for (size_t i = 0; i < l->w_count; i++) w[i] = a * (2.0f * rng_uniform(seed, stream, i) - 1.0f);
    }
    if (l->b_count) memset(b, 0, l->b_count * sizeof *b);
}

void layer_init_state(const Layer *l, float *state)
{
    if (l->kind != LAYER_BATCHNORM) return;
    size_t c = (size_t)l->in.c; /* running mean 0, running variance 1 */
    for (size_t i = 0; i < c; i++) state[i] = 0.0f, state[c + i] = 1.0f;
}

void layer_forward(Layer *l, const Ops *ops, const float *x, float *y, size_t n,
                   const ForwardCtx *ctx)
{
    size_t in = shape_size(l->in), out = shape_size(l->out);
    switch (l->kind) {
    case LAYER_LINEAR:
        /* y (n, out) = x (n, in) W^T (in, out) */
        ops->gemm(0, 1, n, out, in, 1.0f, x, in, l->w, in, 0.0f, y, out);
        if (l->b_count) ops->add_bias_rows(y, l->b, n, out);
        break;
    case LAYER_CONV: {
        if (l->wino) {
            winograd_forward(l->wino, ops, l->w, l->b_count ? l->b : NULL, x, y, n);
            break;
        }
        const Window *g = &l->win;
        size_t k = in / ((size_t)g->h * g->w) * (size_t)g->kh * g->kw; /* C_in K K */
        size_t p = (size_t)g->oh * g->ow;
        int pointwise = conv_pointwise(l);
        for (size_t i = 0; i < n; i++) {
            /* y_i (C_out, OH OW) = W (C_out, C_in K K) col (C_in K K, OH OW) */
            const float *col = x + i * in;
            if (!pointwise) {
                float *c = l->cols ? l->cols + i * k * p : l->col;
                ops->im2col(g, x + i * in, c);
                col = c;
            }
            ops->gemm(0, 0, (size_t)l->spec.units, p, k, 1.0f, l->w, k, col, p, 0.0f, y + i * out, p);
        }
        if (l->b_count) ops->add_bias_channels(y, l->b, n, (size_t)l->spec.units, p);
        break;
    }
    case LAYER_MAXPOOL:
        ops->maxpool_fwd(&l->win, n, x, y, l->arg);
        break;
    case LAYER_AVGPOOL:
        ops->avgpool_fwd(&l->win, n, x, y);
        break;
    case LAYER_GAP:
        ops->gap_fwd(x, y, n, (size_t)l->in.c, (size_t)l->in.h * (size_t)l->in.w);
        break;
    case LAYER_ADD: /* the network calls layer_forward_add */
        break;
    case LAYER_BATCHNORM: {
        size_t c = (size_t)l->in.c, hw = (size_t)l->in.h * (size_t)l->in.w;
        if (ctx->train) {
            /* Batch statistics: this rank's sums, or every rank's (sync). */
            double *sum = l->bn_sums, *sumsq = l->bn_sums + c;
            ops->bn_moments(x, n, c, hw, sum, sumsq);
            l->bn_count = (double)n * (double)hw;
            if (ctx->stats_sum) {
                ctx->stats_sum(ctx->stats_arg, l->bn_sums, 2 * c);
                l->bn_count = (double)ctx->stats_batch * (double)hw;
            }
            if (l->bn_count > 0.0)
                ops->bn_finalize(sum, sumsq, c, l->bn_count, l->spec.bn_eps, l->spec.bn_momentum,
                                 l->bn_mean, l->bn_invstd, l->state, l->state + c);
        } else {
            ops->bn_eval_stats(l->state, l->state + c, c, l->spec.bn_eps, l->bn_mean, l->bn_invstd);
        }
        if (n) ops->bn_fwd(x, y, n, c, hw, l->bn_mean, l->bn_invstd, l->w, l->b);
        break;
    }
    case LAYER_RELU:
        ops->relu_fwd(x, y, n * out);
        break;
    case LAYER_DROPOUT:
        if (ctx->train && l->spec.p > 0.0f) {
            uint64_t stream = rng_stream(RNG_STREAM_DROPOUT, (uint32_t)l->index);
            ops->dropout_fwd(x, y, l->mask, n * out, l->spec.p, ctx->seed, stream,
                             ctx->sample_offset * out);
        } else {
            ops->copy(y, x, n * out * sizeof(float));
        }
        break;
    case LAYER_FLATTEN:
        ops->copy(y, x, n * out * sizeof(float));
        break;
    }
}

void layer_backward(Layer *l, const Ops *ops, const float *x, const float *y,
                    const float *dy, float *dx, size_t n, const ForwardCtx *ctx)
{
    size_t in = shape_size(l->in), out = shape_size(l->out);
    switch (l->kind) {
    case LAYER_LINEAR:
        /* dW (out, in) = dy^T (out, n) x (n, in); db = column sums of dy */
        ops->gemm(1, 0, out, in, n, 1.0f, dy, out, x, in, 0.0f, l->dw, in);
        if (l->b_count) {
            ops->zero(l->db, out);
            ops->bias_grad_rows(l->db, dy, n, out);
        }
        /* dx (n, in) = dy (n, out) W (out, in) */
        if (l->need_dx) ops->gemm(0, 0, n, in, out, 1.0f, dy, out, l->w, in, 0.0f, dx, in);
        break;
    case LAYER_CONV: {
        const Window *g = &l->win;
        size_t co = (size_t)l->spec.units;
        size_t k = (size_t)g->c * g->kh * g->kw;
        size_t p = (size_t)g->oh * g->ow;
        if (l->b_count) {
            ops->zero(l->db, co);
            ops->bias_grad_channels(l->db, dy, n, co, p);
        }
        if (l->wino) { /* uses the transforms its forward kept */
            winograd_backward(l->wino, ops, dy, l->dw, l->need_dx ? dx : NULL, n);
            break;
        }
        if (n == 0) ops->zero(l->dw, l->w_count);
        int pointwise = conv_pointwise(l);
        for (size_t i = 0; i < n; i++) {
            const float *dyi = dy + i * out;
            /* dW (C_out, K') += dy_i (C_out, P) col_i^T (P, K'); col_i from
             * forward when it was kept */
            const float *col = pointwise ? x + i * in : l->cols ? l->cols + i * k * p : l->col;
            if (!pointwise && !l->cols) ops->im2col(g, x + i * in, l->col);
            ops->gemm(0, 1, co, k, p, 1.0f, dyi, p, col, p, i ? 1.0f : 0.0f, l->dw, k);
            if (l->need_dx && pointwise) {
                /* dx_i (C_in, P) = W^T (C_in, C_out) dy_i (C_out, P) */
                ops->gemm(1, 0, k, p, co, 1.0f, l->w, k, dyi, p, 0.0f, dx + i * in, p);
            } else if (l->need_dx) {
                /* dcol (K', P) = W^T (K', C_out) dy_i (C_out, P); dx_i = col2im(dcol) */
                ops->gemm(1, 0, k, p, co, 1.0f, l->w, k, dyi, p, 0.0f, l->col, p);
                ops->zero(dx + i * in, in);
                ops->col2im(g, l->col, dx + i * in);
            }
        }
        break;
    }
    case LAYER_MAXPOOL:
        if (l->need_dx) ops->maxpool_bwd(&l->win, n, dy, l->arg, dx);
        break;
    case LAYER_AVGPOOL:
        if (l->need_dx) ops->avgpool_bwd(&l->win, n, dy, dx);
        break;
    case LAYER_GAP:
        if (l->need_dx) ops->gap_bwd(dy, dx, n, (size_t)l->in.c, (size_t)l->in.h * (size_t)l->in.w);
        break;
    case LAYER_ADD: /* the network routes dy to both inputs */
        break;
    case LAYER_BATCHNORM: {
        size_t c = (size_t)l->in.c, hw = (size_t)l->in.h * (size_t)l->in.w;
        double *sdy = l->bn_sums + 2 * c, *sdyxhat = l->bn_sums + 3 * c;
        ops->bn_bwd_sums(dy, x, n, c, hw, l->bn_mean, l->bn_invstd, sdy, sdyxhat);
        /* This rank's share of dgamma, dbeta: the all-reduce sums them. */
        ops->bn_param_grads(sdy, sdyxhat, c, l->dw, l->db);
        if (!l->need_dx) break;
        /* dx needs the sums over the batch the statistics came from. */
        if (ctx && ctx->stats_sum) ctx->stats_sum(ctx->stats_arg, sdy, 2 * c);
        if (n) ops->bn_bwd_dx(dy, x, n, c, hw, l->bn_mean, l->bn_invstd, l->w, sdy, sdyxhat,
                              l->bn_count, dx);
        break;
    }
    case LAYER_RELU:
        if (l->need_dx) ops->relu_bwd(y, dy, dx, n * out);
        break;
    case LAYER_DROPOUT:
        if (!l->need_dx) break;
        if (l->spec.p > 0.0f)
            ops->dropout_bwd(dy, l->mask, dx, n * out);
        else
            ops->copy(dx, dy, n * out * sizeof(float));
        break;
    case LAYER_FLATTEN:
        if (l->need_dx) ops->copy(dx, dy, n * out * sizeof(float));
        break;
    }
    (void)x;
}

double layer_forward_macs(const Layer *l)
{
    switch (l->kind) {
    case LAYER_LINEAR: return (double)l->w_count;
    case LAYER_CONV: return (double)l->w_count * l->win.oh * l->win.ow;
    case LAYER_BATCHNORM: return 2.0 * (double)shape_size(l->out); /* normalise, scale */
    default: return 0.0;
    }
}
