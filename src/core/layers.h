/* Layers: the building blocks of a sequential network.
 *
 * A layer owns no parameter memory: its weights and gradients are views into
 * the network's flat buffers (net.c), and all arithmetic goes through the op
 * table, so the same layer runs on every backend. Activations are NCHW; a
 * flat feature vector is the shape (features, 1, 1).
 */
#ifndef BASIN_LAYERS_H
#define BASIN_LAYERS_H

#include <stddef.h>
#include <stdint.h>

#include "core/ops.h"

typedef struct {
    int c, h, w;
} Shape;

static inline size_t shape_size(Shape s) { return (size_t)s.c * (size_t)s.h * (size_t)s.w; }

typedef enum {
    LAYER_LINEAR,  /* fc:N            y = x W^T + b, input flattened */
    LAYER_CONV,    /* conv:C:K[:S[:P]] */
    LAYER_MAXPOOL, /* pool:K[:S] */
    LAYER_RELU,    /* relu */
    LAYER_FLATTEN, /* flatten */
    LAYER_DROPOUT, /* dropout:P */
    LAYER_BATCHNORM, /* bn: per-channel (conv) or per-feature (fc) batch normalization */
    LAYER_ADD,     /* element-wise sum of two earlier outputs (residual shortcut) */
    LAYER_AVGPOOL, /* avgpool:K[:S[:P]] */
    LAYER_GAP,     /* gap: global average pooling, (C, H, W) -> (C, 1, 1) */
} LayerKind;

/* What a model spec says about one layer (filled by src/models). */
typedef struct {
    LayerKind kind;
    int units;    /* fc outputs, conv output channels */
    int k;        /* conv/pool window (square) */
    int stride;   /* conv/pool stride */
    int pad;      /* conv zero padding */
    float p;      /* dropout probability */
    /* Inputs. A layer reads the output of layer (index - 1 - back); -1 is the
     * network's input. back = 0, the default, is the previous layer: a
     * sequential network never sets it. An add layer sums the outputs named
     * by back and back2. */
    int back, back2;
    int no_bias;  /* conv/fc without a bias (a conv followed by bn) */
    float bn_momentum, bn_eps; /* bn; 0 takes the defaults below */
    int block_last; /* bn: the last bn of a residual block's body, whose
                       gamma --zero-init-residual starts at 0 */
} LayerSpec;

#define LAYER_BN_MOMENTUM_DEFAULT 0.1f
#define LAYER_BN_EPS_DEFAULT 1e-5f

/* Sums per-channel statistics of batch normalization across the ranks that
 * share them (--sync-bn): buf holds n doubles in backend memory, replaced by
 * their sum over the ranks, identical on every rank. */
typedef void (*StatsSumFn)(void *arg, double *buf, size_t n);

typedef struct {
    int train;              /* 1: dropout active, batch norm on batch statistics */
    uint64_t seed;          /* the run's seed */
    uint64_t sample_offset; /* global position of this slice's first sample in
                               the run's sample sequence (dropout draws) */
    /* Batch norm in training: NULL normalises over this rank's samples;
     * otherwise every bn layer sums its statistics (forward) and its
     * backward sums over the ranks with stats_sum, and stats_batch is the
     * number of samples over all those ranks in this step (--sync-bn). */
    StatsSumFn stats_sum;
    void *stats_arg;
    size_t stats_batch;
} ForwardCtx;

/* Conv algorithm. On a backend whose memory is the host's (Ops.host_memory:
 * the CPU), a stride-1 conv with a 3x3 or 5x5 kernel and enough input
 * channels for it to pay (winograd_pays: C_in >= 16 for 3x3, >= 8 for 5x5)
 * runs as Winograd F(2x2, rxr) (core/winograd.h): 2.25x (3x3) or 2.78x
 * (5x5) fewer multiplications than im2col + gemm, for a workspace of
 * t*t C_in floats per output tile kept from forward to backward (t = r + 1;
 * a tile is 2x2 outputs), 14.5 MB for the cnn model's second conv at batch
 * 64. Every other conv, and every conv on other backends, is im2col + gemm
 * per sample. The environment variable BASIN_CONV, read when a layer is
 * allocated (layer_alloc), overrides the choice:
 *   BASIN_CONV=im2col    always im2col + gemm (the reference path)
 *   BASIN_CONV=winograd  Winograd wherever it applies, paying or not
 *   unset or empty       the choice above
 * Another value is a usage error (layer_alloc, so net_create, fails with
 * one line). */
#define LAYER_CONV_ENV "BASIN_CONV"

/* Largest im2col cache a conv layer keeps between forward and backward. */
#define LAYER_COL_CACHE_BYTES ((size_t)256 << 20)

typedef struct Layer {
    LayerKind kind;
    int index;              /* position in the network */
    LayerSpec spec;
    Shape in, out;          /* per sample */
    Window win;             /* conv and pool geometry */
    int need_dx;            /* 0 for the first layer: no gradient w.r.t. the data */

    /* Parameters, as offsets into the flat buffers (counts 0 when none). */
    size_t w_off, w_count;  /* linear: (out, in); conv: (C_out, C_in * K * K) */
    size_t b_off, b_count;  /* (out) or (C_out) */
    float *w, *b;           /* views into Net.params */
    float *dw, *db;         /* views into Net.grads */

    /* State that is not a parameter (batch norm's running mean and variance,
     * (C) each), as an offset into the network's state buffer. */
    size_t s_off, s_count;
    float *state;           /* view into Net.state: running mean, then running variance */

    /* Scratch owned by the layer (backend memory), sized for max_batch. */
    float *mask;            /* dropout: (max_batch, out) factors */
    int32_t *arg;           /* max-pool: (max_batch, out) argmax */
    float *col;             /* conv: (C_in K K, OH OW) im2col of one sample */
    float *cols;            /* conv: im2col of every sample of the batch, kept
                               from forward for backward (NULL when that would
                               exceed LAYER_COL_CACHE_BYTES: then recomputed) */
    struct Winograd *wino;  /* conv by Winograd (then col and cols are NULL);
                               NULL for im2col */
    float *bn_mean, *bn_invstd; /* bn: (C) statistics the forward pass used */
    double *bn_sums;        /* bn: (4 C) sum, sumsq / sdy, sdyxhat */
    double bn_count;        /* bn: values per channel the statistics cover */
    int src, src2;          /* absolute input layer indices (-1: the data) */
} Layer;

/* Fill in shapes, geometry and parameter counts from spec and the input
 * shape. Returns BASIN_ERR_USAGE (after one line naming the layer) when the
 * geometry does not fit. */
int layer_setup(Layer *l, int index, const LayerSpec *spec, Shape in);
/* Allocate scratch for batches of up to max_batch samples. */
int layer_alloc(Layer *l, const Ops *ops, size_t max_batch);
void layer_free(Layer *l, const Ops *ops);

/* Initial values of the layer's parameters (host memory w, b): He normal for
 * layers followed by a ReLU, Glorot uniform otherwise; biases zero. Draws
 * depend only on (seed, layer index, element). */
void layer_init_params(const Layer *l, uint64_t seed, int relu_follows, float *w, float *b);
/* Initial state (host memory, s_count floats): batch norm's running mean 0
 * and running variance 1. */
void layer_init_state(const Layer *l, float *state);

/* y (n, out) = layer(x (n, in)). Layers without arithmetic (flatten) are
 * aliased by the network and never called; add layers (two inputs) are the
 * network's. In training, batch norm normalises with the batch's statistics
 * and updates its running statistics; in evaluation it uses the running
 * ones. */
void layer_forward(Layer *l, const Ops *ops, const float *x, float *y, size_t n,
                   const ForwardCtx *ctx);
/* Given x, y of the forward pass and dy, write this layer's parameter
 * gradients (overwriting) and, when need_dx, dx (n, in). ctx is the one of
 * the forward pass. */
void layer_backward(Layer *l, const Ops *ops, const float *x, const float *y,
                    const float *dy, float *dx, size_t n, const ForwardCtx *ctx);

const char *layer_kind_name(LayerKind kind);
/* Multiply-adds of forward for one sample (for GFLOP/s reports). */
double layer_forward_macs(const Layer *l);

#endif
