/* A network over flat buffers.
 *
 * The layers are listed in an order where every layer comes after its
 * inputs. Most read the previous layer's output; a residual block's layers
 * name theirs (LayerSpec.back), and an add layer sums two, so one list
 * expresses sequential and residual networks alike. Backward visits the
 * layers in reverse order; an output read by two layers (a block's input)
 * receives the sum of both gradients.
 *
 * All parameters live in ONE contiguous buffer, the gradients in another and
 * the optimizer's momentum in a third, each of n_params floats; layers hold
 * views into them. The layout is in REVERSE layer order (the last layer's
 * weights at offset 0), so that backward fills the gradient buffer from the
 * front: after the backward pass of layer i, the prefix [0, ready) is final
 * and can be reduced while backward continues on earlier layers.
 *
 *   params: | layer L-1: W b | layer L-2: W b | ... | layer 0: W b |
 *
 * (a batch-norm layer's W is gamma and its b beta; a conv or fc layer
 * without a bias has no b). What is neither a parameter nor a gradient,
 * batch norm's running statistics, lives in a fourth buffer, the state
 * (n_state floats, same reverse order): it is never all-reduced as a
 * gradient, and the trainer averages it across ranks where replicas must
 * agree (core/trainer.h).
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
    size_t n_state;      /* floats of state (batch-norm running statistics) */
    float *state;        /* (n_state) backend memory; NULL when n_state is 0 */
    int zero_init_residual; /* set before net_init_params: the last bn of each
                               residual block starts with gamma 0 */
    float *params;       /* (n_params) backend memory */
    float *grads;        /* (n_params) backend memory, maybe not ours */
    float *mom;          /* (n_params) backend memory */
    int owns_grads;
    float *own_params, *own_mom; /* the buffers net_create allocated */

    float **act;         /* act[i]: output of layer i, (max_batch, out_i);
                            NULL for flatten (see net_output) */
    int *up;             /* up[i]: layer i or one of its inputs, transitively,
                            has parameters (backward visits only those) */
    int *dslot_of;       /* dslot_of[i]: the slot holding d(loss)/d(output i) */
    int n_dslots;
    float **dslot;       /* gradients w.r.t. outputs, (max_batch, max_out) each,
                            shared by outputs whose gradients are never live
                            at once */
    float *dscratch;     /* a second consumer's dx before it is added */
    unsigned char *dwritten; /* per pass: dslot_of[i] holds a gradient yet */
    float *dbuf[2];      /* dslot[0], dslot[1]: scratch for benchmarks */
    ForwardCtx ctx;      /* of the last net_forward, for its backward */
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
 * momentum, set the state to its initial values. */
int net_init_params(Net *net, uint64_t seed);

/* Output of layer i (-1: the data x); flatten layers alias their input. */
const float *net_output(const Net *net, int i, const float *x);
/* Forward of layer i alone, reading its inputs' outputs (net_forward runs
 * these in order; benchmarks time them one by one). */
void net_forward_layer(Net *net, int i, const float *x, size_t n, const ForwardCtx *ctx);
/* Backward of layer i alone, in net_backward's order (after the loss's
 * backward has filled the last layer's slot: net_loss_backward). Layers
 * that net_backward skips (no parameters at or before them) do nothing. */
void net_backward_layer(Net *net, int i, const float *x, size_t n);
/* The loss's backward: the last layer's output gradient, and a new pass. */
void net_loss_backward(Net *net, const int32_t *labels, size_t n, float scale);

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
