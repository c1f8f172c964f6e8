#include "core/net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/error.h"

static int plan_layers(Layer *layers, const LayerSpec *specs, int n, Shape in, size_t *count)
{
    Shape s = in;
    int params_before = 0;
    for (int i = 0; i < n; i++) {
        TRY(layer_setup(&layers[i], i, &specs[i], s));
        s = layers[i].out;
        /* The gradient w.r.t. a layer's input is needed only when some
         * earlier layer has parameters: never w.r.t. the data. */
        layers[i].need_dx = params_before;
        if (layers[i].w_count) params_before = 1;
    }
    /* Reverse layer order: the last layer's parameters first. */
    size_t off = 0;
    for (int i = n - 1; i >= 0; i--) {
        Layer *l = &layers[i];
        l->w_off = off;
        off += l->w_count;
        l->b_off = off;
        off += l->b_count;
    }
    *count = off;
    return BASIN_OK;
}

int net_param_count(const LayerSpec *specs, int n, Shape in, size_t *count)
{
    Layer *layers = basin_calloc((size_t)n, sizeof *layers);
    if (!layers) return BASIN_ERR_RUNTIME;
    int rc = plan_layers(layers, specs, n, in, count);
    free(layers);
    return rc;
}

static void set_views(Net *net)
{
    for (int i = 0; i < net->n_layers; i++) {
        Layer *l = &net->layers[i];
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
    if (!net->layers || !net->act) goto fail;
    rc = plan_layers(net->layers, specs, n, in, &net->n_params);
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
    for (int k = 0; k < 2; k++) {
        net->dbuf[k] = ops->alloc(max_batch * max_act * sizeof(float));
        if (!net->dbuf[k]) goto fail;
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
    ops->free(net->dbuf[0]);
    ops->free(net->dbuf[1]);
    ops->free(net->probs);
    ops->free(net->own_params);
    ops->free(net->own_mom);
    if (net->owns_grads) ops->free(net->grads);
    free(net->act);
    free(net->layers);
    free(net);
}

int net_init_params(Net *net, uint64_t seed)
{
    float *host = basin_malloc(net->n_params * sizeof(float));
    if (!host) return BASIN_ERR_RUNTIME;
    for (int i = 0; i < net->n_layers; i++) {
        const Layer *l = &net->layers[i];
        if (!l->w_count) continue;
        /* A ReLU directly after (or after a pool/dropout that keeps signs). */
        int relu_follows = 0;
        for (int j = i + 1; j < net->n_layers; j++) {
            LayerKind k = net->layers[j].kind;
            if (k == LAYER_RELU) relu_follows = 1;
            if (k != LAYER_MAXPOOL && k != LAYER_DROPOUT && k != LAYER_FLATTEN) break;
        }
        layer_init_params(l, seed, relu_follows, host + l->w_off, host + l->b_off);
    }
    net->ops->to_device(net->params, host, net->n_params * sizeof(float));
    free(host);
    net->ops->zero(net->mom, net->n_params);
    return BASIN_OK;
}

/* Output of layer i (flatten layers alias their input); i = -1 is the data. */
static const float *act_of(const Net *net, int i, const float *x)
{
    while (i >= 0 && !net->act[i]) i--;
    return i < 0 ? x : net->act[i];
}

static void timed(Net *net, int layer, int backward, double t0)
{
    net->ops->sync();
    net->on_layer(net->on_layer_arg, layer, backward, t0, basin_clock());
}

void net_forward(Net *net, const float *x, const int32_t *labels, size_t n,
                 const ForwardCtx *ctx, double *loss_sum, size_t *correct)
{
    for (int i = 0; i < net->n_layers; i++) {
        if (!net->act[i]) continue;
        double t0 = net->on_layer ? basin_clock() : 0.0;
        layer_forward(&net->layers[i], net->ops, act_of(net, i - 1, x), net->act[i], n, ctx);
        if (net->on_layer) timed(net, i, 0, t0);
    }
    double loss = 0.0;
    size_t ok = 0;
    net->ops->softmax_xent_fwd(net->act[net->n_layers - 1], labels, n, (size_t)net->classes,
                               net->probs, &loss, &ok);
    *loss_sum += loss;
    *correct += ok;
}

void net_backward(Net *net, const float *x, const int32_t *labels, size_t n, float scale,
                  GradsReadyFn ready, void *ready_arg)
{
    const Ops *ops = net->ops;
    int cur = 0;
    float *dy = net->dbuf[cur];
    ops->softmax_xent_bwd(net->probs, labels, n, (size_t)net->classes, scale, dy);
    for (int i = net->n_layers - 1; i >= 0; i--) {
        Layer *l = &net->layers[i];
        if (!net->act[i]) continue; /* flatten: the gradient passes through as is */
        float *dx = net->dbuf[cur ^ 1];
        double t0 = net->on_layer ? basin_clock() : 0.0;
        layer_backward(l, ops, act_of(net, i - 1, x), net->act[i], dy, dx, n);
        if (net->on_layer) timed(net, i, 1, t0);
        if (l->w_count && ready) ready(ready_arg, l->b_off + l->b_count);
        if (l->need_dx) {
            cur ^= 1;
            dy = dx;
        }
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
