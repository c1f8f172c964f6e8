/* A sequential network over flat buffers.
 *
 * All parameters live in ONE contiguous buffer, the gradients in another and
 * the optimizer's momentum in a third, each of n_params floats; layers hold
 * views into them. The layout is in REVERSE layer order (the last layer's
 * weights at offset 0), so that backward fills the gradient buffer from the
 * front: after the backward pass of layer i, the prefix [0, ready) is final
 * and can be reduced while backward continues on earlier layers.
 *
 *   params: | layer L-1: W b | layer L-2: W b | ... | layer 0: W b |
 */
#ifndef BASIN_NET_H
#define BASIN_NET_H

#include <stddef.h>
#include <stdint.h>

#include "core/layers.h"
#include "core/ops.h"

/* Called during backward each time the final prefix of the gradient buffer
 * grows: grads[0, ready) will not be written again in this pass. */
typedef void (*GradsReadyFn)(void *arg, size_t ready);

/* Optional observer of every layer's forward or backward pass (for traces):
 * told the layer index, the pass, and its start and end (seconds, monotonic
 * clock) after the layer's ops have been issued and synchronized. */
typedef void (*LayerTimeFn)(void *arg, int layer, int backward, double t0, double t1);

typedef struct Net {
    const Ops *ops;
    int n_layers;
    Layer *layers;
    Shape in;
    int classes;
    size_t max_batch;

    size_t n_params;
    float *params;       /* (n_params) backend memory */
    float *grads;        /* (n_params) backend memory, maybe not ours */
    float *mom;          /* (n_params) backend memory */
    int owns_grads;
    float *own_params, *own_mom; /* the buffers net_create allocated */

    float **act;         /* act[i]: output of layer i, (max_batch, out_i) */
    float *dbuf[2];      /* gradients w.r.t. activations, ping-pong */
    float *probs;        /* (max_batch, classes) softmax output */

    LayerTimeFn on_layer; /* NULL: no per-layer timing */
    void *on_layer_arg;
} Net;

/* Build a network of n layers for inputs of shape `in`, with its own
 * gradient buffer (net_bind_grads can swap in another). Returns
 * BASIN_ERR_USAGE for a spec that does not fit the input or whose last layer
 * does not produce `classes` outputs. */
int net_create(const LayerSpec *specs, int n, Shape in, int classes, const Ops *ops,
               size_t max_batch, Net **out);
/* Parameters a network of these specs would have, without building it. */
int net_param_count(const LayerSpec *specs, int n, Shape in, size_t *count);
/* Use grads, an external buffer of n_params floats (e.g. inside the shared
 * memory window of the all-reduce), or allocate one when grads is NULL. */
int net_bind_grads(Net *net, float *grads);
/* Move the parameters and the momentum into external buffers of n_params
 * floats each (e.g. shared-memory windows, for a sharded update), contents
 * copied; NULL, NULL moves them back into the network's own buffers. The
 * caller keeps the external buffers alive until then. */
void net_bind_state(Net *net, float *params, float *mom);
void net_destroy(Net *net);

/* Fill parameters from the seed (weights depend only on the seed), zero the
 * momentum. */
int net_init_params(Net *net, uint64_t seed);

/* Forward n <= max_batch samples x (n, in) in backend memory, then the
 * softmax cross-entropy against labels: adds the SUM of the losses to
 * *loss_sum and the number of correct predictions to *correct. */
void net_forward(Net *net, const float *x, const int32_t *labels, size_t n,
                 const ForwardCtx *ctx, double *loss_sum, size_t *correct);
/* Backward of the last net_forward: grads = scale * d(sum of losses)/dparams
 * (scale = 1/global batch gives the mean over all ranks once summed).
 * ready (may be NULL) is told as the final prefix of grads grows. */
void net_backward(Net *net, const float *x, const int32_t *labels, size_t n, float scale,
                  GradsReadyFn ready, void *ready_arg);

/* Multiply-adds of one sample's forward pass. */
double net_forward_macs(const Net *net);
/* One line per layer: kind, output shape, parameters. */
void net_describe(const Net *net, char *buf, size_t len);

#endif
