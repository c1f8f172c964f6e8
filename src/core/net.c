#include "core/net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/error.h"

/* Input layer of layer i along `back` (-1: the data), or -2 when it would
 * lie before the data. */
static int input_of(int i, int back) { return i - 1 - back < -1 ? -2 : i - 1 - back; }

static int plan_layers(Layer *layers, const LayerSpec *specs, int n, Shape in, size_t *count,
                       size_t *state_count)
{
    for (int i = 0; i < n; i++) {
        Layer *l = &layers[i];
        int src = input_of(i, specs[i].back);
        int src2 = specs[i].kind == LAYER_ADD ? input_of(i, specs[i].back2) : -1;
        if (src < -1 || src2 < -1)
            return basin_error(BASIN_ERR_USAGE, "model: layer %d (%s) reads an input before the data",
                               i + 1, layer_kind_name(specs[i].kind));
        TRY(layer_setup(l, i, &specs[i], src < 0 ? in : layers[src].out));
        l->src = src;
        l->src2 = src2;
        if (specs[i].kind == LAYER_ADD) {
            Shape a = l->in, b = src2 < 0 ? in : layers[src2].out;
            if (a.c != b.c || a.h != b.h || a.w != b.w)
                return basin_error(BASIN_ERR_USAGE,
                                   "model: layer %d (add) sums outputs of different shapes, "
                                   "%dx%dx%d (layer %d) and %dx%dx%d (layer %d)",
                                   i + 1, a.c, a.h, a.w, src + 1, b.c, b.h, b.w, src2 + 1);
        }
    }
    /* Reverse layer order: the last layer's parameters (and state) first. */
    size_t off = 0, soff = 0;
    for (int i = n - 1; i >= 0; i--) {
        Layer *l = &layers[i];
        l->w_off = off;
        off += l->w_count;
        l->b_off = off;
        off += l->b_count;
        l->s_off = soff;
        soff += l->s_count;
    }
    *count = off;
    if (state_count) *state_count = soff;
    return BASIN_OK;
}

int net_param_count(const LayerSpec *specs, int n, Shape in, size_t *count)
{
    Layer *layers = basin_calloc((size_t)n, sizeof *layers);
    if (!layers) return BASIN_ERR_RUNTIME;
    int rc = plan_layers(layers, specs, n, in, count, NULL);
    free(layers);
    return rc;
}

/* The layer whose memory holds layer i's output: flatten aliases its input. */
static int home_of(const Net *net, int i)
{
    while (i >= 0 && net->layers[i].kind == LAYER_FLATTEN) i = net->layers[i].src;
    return i;
}

/* Which layers backward visits, whose input gradients it needs, and which
 * slot holds each output's gradient: an output's gradient is live from the
 * backward of its last reader until its own backward, and slots are handed
 * out greedily over that order (a sequential network needs two). */
static int plan_backward(Net *net, int *scratch)
{
    *scratch = 0;
    int n = net->n_layers;
    for (int i = 0; i < n; i++) {
        Layer *l = &net->layers[i];
        int up = l->w_count > 0;
        if (l->src >= 0 && net->up[l->src]) up = 1;
        if (l->src2 >= 0 && net->up[l->src2]) up = 1;
        net->up[i] = up;
        /* dx is wanted when the input it goes to leads to parameters. */
        l->need_dx = (l->src >= 0 && net->up[l->src]) || (l->src2 >= 0 && net->up[l->src2]);
        net->dslot_of[i] = -1;
    }
    int *busy = basin_calloc((size_t)n + 2, sizeof *busy);
    if (!busy) return BASIN_ERR_RUNTIME;
    int slots = 0;
#define TAKE_SLOT(var)                                                          \
    do {                                                                        \
        int k_ = 0;                                                             \
        while (k_ < slots && busy[k_]) k_++;                                    \
        if (k_ == slots) slots++;                                               \
        busy[k_] = 1;                                                           \
        (var) = k_;                                                             \
    } while (0)
    TAKE_SLOT(net->dslot_of[n - 1]);
    for (int i = n - 1; i >= 0; i--) {
        Layer *l = &net->layers[i];
        if (l->kind == LAYER_FLATTEN || !net->up[i]) continue;
        int in[2] = {home_of(net, l->src), l->kind == LAYER_ADD ? home_of(net, l->src2) : -1};
        /* A layer (not add, which sums in place) whose input's gradient a
         * later reader already holds writes its dx to the scratch buffer. */
        if (l->kind != LAYER_ADD && l->need_dx && in[0] >= 0 && net->dslot_of[in[0]] >= 0) *scratch = 1;
        for (int k = 0; k < 2; k++)
            if (in[k] >= 0 && net->up[in[k]] && net->dslot_of[in[k]] < 0) TAKE_SLOT(net->dslot_of[in[k]]);
        if (net->dslot_of[i] >= 0) busy[net->dslot_of[i]] = 0;
    }
#undef TAKE_SLOT
    free(busy);
    net->n_dslots = slots < 2 ? 2 : slots;
    return BASIN_OK;
}

static void set_views(Net *net)
{
    for (int i = 0; i < net->n_layers; i++) {
        Layer *l = &net->layers[i];
        l->state = l->s_count ? net->state + l->s_off : NULL;
        if (!l->w_count) continue;
        l->w = net->params + l->w_off;
        l->b = net->params + l->b_off;
        if (net->grads) {
            l->dw = net->grads + l->w_off;
            l->db = net->grads + l->b_off;
        }
    }
}

int net_create(const LayerSpec *specs, int n, Shape in, int classes, const Ops *ops,
               size_t max_batch, Net **out)
{
    *out = NULL;
    if (n <= 0) return basin_error(BASIN_ERR_USAGE, "model: no layers");
    Net *net = basin_calloc(1, sizeof *net);
    if (!net) return BASIN_ERR_RUNTIME;
    net->ops = ops;
    net->in = in;
    net->classes = classes;
    net->max_batch = max_batch;
    net->n_layers = n;
    int rc = BASIN_ERR_RUNTIME;
    net->layers = basin_calloc((size_t)n, sizeof *net->layers);
    net->act = basin_calloc((size_t)n, sizeof *net->act);
    net->up = basin_calloc((size_t)n, sizeof *net->up);
    net->dslot_of = basin_calloc((size_t)n, sizeof *net->dslot_of);
    net->dwritten = basin_calloc((size_t)n, 1);
    if (!net->layers || !net->act || !net->up || !net->dslot_of || !net->dwritten) goto fail;
    rc = plan_layers(net->layers, specs, n, in, &net->n_params, &net->n_state);
    if (rc) goto fail;
    int scratch = 0;
    rc = plan_backward(net, &scratch);
    if (rc) goto fail;
    const Layer *last = &net->layers[n - 1];
    if (last->kind != LAYER_LINEAR || shape_size(last->out) != (size_t)classes) {
        rc = basin_error(BASIN_ERR_USAGE,
                         "model: the last layer must be fc:%d (one output per class), not %s "
                         "with %zu outputs",
                         classes, layer_kind_name(last->kind), shape_size(last->out));
        goto fail;
    }
    if (net->n_params == 0) {
        rc = basin_error(BASIN_ERR_USAGE, "model: no trainable parameters");
        goto fail;
    }

    rc = BASIN_ERR_RUNTIME;
    size_t pbytes = net->n_params * sizeof(float);
    net->params = net->own_params = ops->alloc(pbytes);
    net->mom = net->own_mom = ops->alloc(pbytes);
    if (!net->params || !net->mom) goto fail;
    if (net->n_state) {
        net->state = ops->alloc(net->n_state * sizeof(float));
        if (!net->state) goto fail;
    }
    size_t max_act = shape_size(in);
    for (int i = 0; i < n; i++) {
        Layer *l = &net->layers[i];
        size_t sz = shape_size(l->out);
        if (sz > max_act) max_act = sz;
        if (l->kind == LAYER_FLATTEN) {
            net->act[i] = NULL; /* aliases its input: see act_of() */
        } else {
            net->act[i] = ops->alloc(max_batch * sz * sizeof(float));
            if (!net->act[i]) goto fail;
        }
        int st = layer_alloc(l, ops, max_batch);
        if (st) {
            rc = st;
            goto fail;
        }
    }
    net->dslot = basin_calloc((size_t)net->n_dslots, sizeof *net->dslot);
    if (!net->dslot) goto fail;
    for (int k = 0; k < net->n_dslots; k++) {
        net->dslot[k] = ops->alloc(max_batch * max_act * sizeof(float));
        if (!net->dslot[k]) goto fail;
    }
    net->dbuf[0] = net->dslot[0];
    net->dbuf[1] = net->dslot[1];
    if (scratch) {
        net->dscratch = ops->alloc(max_batch * max_act * sizeof(float));
        if (!net->dscratch) goto fail;
    }
    net->probs = ops->alloc(max_batch * (size_t)classes * sizeof(float));
    if (!net->probs) goto fail;
    if (net_bind_grads(net, NULL)) goto fail;
    *out = net;
    return BASIN_OK;
fail:
    if (rc == BASIN_ERR_RUNTIME) BASIN_FAIL(rc, "cannot allocate the network (%zu parameters)", net->n_params);
    net_destroy(net);
    return rc;
}

int net_bind_grads(Net *net, float *grads)
{
    if (net->owns_grads) net->ops->free(net->grads);
    net->owns_grads = 0;
    net->grads = grads;
    if (!grads) {
        net->grads = net->ops->alloc(net->n_params * sizeof(float));
        if (!net->grads) return BASIN_FAIL(BASIN_ERR_RUNTIME, "cannot allocate gradients");
        net->owns_grads = 1;
        net->ops->zero(net->grads, net->n_params);
    }
    set_views(net);
    return BASIN_OK;
}

void net_bind_state(Net *net, float *params, float *mom)
{
    if (!params) params = net->own_params;
    if (!mom) mom = net->own_mom;
    size_t bytes = net->n_params * sizeof(float);
    if (params != net->params) net->ops->copy(params, net->params, bytes);
    if (mom != net->mom) net->ops->copy(mom, net->mom, bytes);
    net->params = params;
    net->mom = mom;
    set_views(net);
}

void net_destroy(Net *net)
{
    if (!net) return;
    const Ops *ops = net->ops;
    for (int i = 0; i < net->n_layers && net->layers; i++) {
        layer_free(&net->layers[i], ops);
        if (net->act) ops->free(net->act[i]);
    }
    for (int k = 0; net->dslot && k < net->n_dslots; k++) ops->free(net->dslot[k]);
    ops->free(net->dscratch);
    ops->free(net->state);
    ops->free(net->probs);
    ops->free(net->own_params);
    ops->free(net->own_mom);
    if (net->owns_grads) ops->free(net->grads);
    free(net->act);
    free(net->dslot);
    free(net->up);
    free(net->dslot_of);
    free(net->dwritten);
    free(net->layers);
    free(net);
}

int net_init_params(Net *net, uint64_t seed)
{
    size_t nf = net->n_params > net->n_state ? net->n_params : net->n_state;
    float *host = basin_malloc(nf * sizeof(float));
    if (!host) return BASIN_ERR_RUNTIME;
    for (int i = 0; i < net->n_layers; i++) {
        const Layer *l = &net->layers[i];
        if (!l->w_count) continue;
        /* A ReLU directly after (or after a pool/dropout that keeps signs). */
        int relu_follows = 0;
        for (int j = i + 1; j < net->n_layers; j++) {
            LayerKind k = net->layers[j].kind;
            if (k == LAYER_RELU) relu_follows = 1;
            if (k != LAYER_MAXPOOL && k != LAYER_DROPOUT && k != LAYER_FLATTEN &&
                k != LAYER_BATCHNORM)
                break;
        }
        layer_init_params(l, seed, relu_follows, host + l->w_off, host + l->b_off);
        if (net->zero_init_residual && l->kind == LAYER_BATCHNORM && l->spec.block_last)
            memset(host + l->w_off, 0, l->w_count * sizeof(float));
    }
    net->ops->to_device(net->params, host, net->n_params * sizeof(float));
    net->ops->zero(net->mom, net->n_params);
    if (net->n_state) {
        for (int i = 0; i < net->n_layers; i++) layer_init_state(&net->layers[i], host + net->layers[i].s_off);
        net->ops->to_device(net->state, host, net->n_state * sizeof(float));
    }
    free(host);
    return BASIN_OK;
}

const float *net_output(const Net *net, int i, const float *x)
{
    i = home_of(net, i);
    return i < 0 ? x : net->act[i];
}

static void timed(Net *net, int layer, int backward, double t0)
{
    net->ops->sync();
    net->on_layer(net->on_layer_arg, layer, backward, t0, basin_clock());
}

void net_forward_layer(Net *net, int i, const float *x, size_t n, const ForwardCtx *ctx)
{
    Layer *l = &net->layers[i];
    if (l->kind == LAYER_FLATTEN) return;
    const float *in = net_output(net, l->src, x);
    if (l->kind == LAYER_ADD)
        net->ops->add(in, net_output(net, l->src2, x), net->act[i], n * shape_size(l->out));
    else
        layer_forward(l, net->ops, in, net->act[i], n, ctx);
}

void net_forward(Net *net, const float *x, const int32_t *labels, size_t n,
                 const ForwardCtx *ctx, double *loss_sum, size_t *correct)
{
    net->ctx = *ctx;
    for (int i = 0; i < net->n_layers; i++) {
        if (!net->act[i]) continue;
        double t0 = net->on_layer ? basin_clock() : 0.0;
        net_forward_layer(net, i, x, n, ctx);
        if (net->on_layer) timed(net, i, 0, t0);
    }
    double loss = 0.0;
    size_t ok = 0;
    net->ops->softmax_xent_fwd(net->act[net->n_layers - 1], labels, n, (size_t)net->classes,
                               net->probs, &loss, &ok);
    *loss_sum += loss;
    *correct += ok;
}

void net_loss_backward(Net *net, const int32_t *labels, size_t n, float scale)
{
    memset(net->dwritten, 0, (size_t)net->n_layers);
    int last = net->n_layers - 1;
    net->ops->softmax_xent_bwd(net->probs, labels, n, (size_t)net->classes, scale,
                               net->dslot[net->dslot_of[last]]);
    net->dwritten[last] = 1;
}

/* Where a layer writes the gradient for its input `in` (a layer index):
 * straight into in's slot when it is the first to, else into the scratch
 * buffer, which add_pending then sums into the slot. */
static float *dx_target(Net *net, int in)
{
    return net->dwritten[in] ? net->dscratch : net->dslot[net->dslot_of[in]];
}

static void add_pending(Net *net, int in, size_t count)
{
    float *slot = net->dslot[net->dslot_of[in]];
    if (net->dwritten[in]) net->ops->add(slot, net->dscratch, slot, count);
    net->dwritten[in] = 1;
}

void net_backward_layer(Net *net, int i, const float *x, size_t n)
{
    Layer *l = &net->layers[i];
    if (l->kind == LAYER_FLATTEN || !net->up[i]) return;
    const Ops *ops = net->ops;
    const float *dy = net->dslot[net->dslot_of[i]];
    size_t count = n * shape_size(l->in);
    if (l->kind == LAYER_ADD) {
        int in[2] = {home_of(net, l->src), home_of(net, l->src2)};
        for (int k = 0; k < 2; k++) {
            if (in[k] < 0 || !net->up[in[k]]) continue;
            if (net->dwritten[in[k]]) {
                float *slot = net->dslot[net->dslot_of[in[k]]];
                ops->add(slot, dy, slot, count);
            } else {
                ops->copy(net->dslot[net->dslot_of[in[k]]], dy, count * sizeof(float));
                net->dwritten[in[k]] = 1;
            }
        }
        return;
    }
    int in = home_of(net, l->src);
    float *dx = l->need_dx ? dx_target(net, in) : NULL;
    layer_backward(l, ops, net_output(net, l->src, x), net->act[i], dy, dx, n, &net->ctx);
    if (l->need_dx) add_pending(net, in, count);
}

void net_backward(Net *net, const float *x, const int32_t *labels, size_t n, float scale,
                  GradsReadyFn ready, void *ready_arg)
{
    net_loss_backward(net, labels, n, scale);
    for (int i = net->n_layers - 1; i >= 0; i--) {
        Layer *l = &net->layers[i];
        if (!net->act[i] || !net->up[i]) continue;
        double t0 = net->on_layer ? basin_clock() : 0.0;
        net_backward_layer(net, i, x, n);
        if (net->on_layer) timed(net, i, 1, t0);
        if (l->w_count && ready) ready(ready_arg, l->b_off + l->b_count);
    }
}

double net_forward_macs(const Net *net)
{
    double macs = 0.0;
    for (int i = 0; i < net->n_layers; i++) macs += layer_forward_macs(&net->layers[i]);
    return macs;
}

void net_describe(const Net *net, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < net->n_layers && used < len; i++) {
        const Layer *l = &net->layers[i];
        int w = snprintf(buf + used, len - used, "  %2d %-8s -> %4d x %2d x %2d  %10zu params\n",
                         i + 1, layer_kind_name(l->kind), l->out.c, l->out.h, l->out.w,
                         l->w_count + l->b_count);
        if (w < 0) break;
        used += (size_t)w;
    }
}
