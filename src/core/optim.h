/* The optimizers over the flat buffers, and the learning-rate schedule.
 *
 * sgd    momentum SGD (the default).
 * lars   You et al. 2017: conv and fc weights take a layer-wise trust ratio
 *        r = eta * ||w|| / (||g|| + wd * ||w||) (r = 1 when ||w|| or ||g|| is 0),
 *        u = r * (g + wd * w) enters the momentum; batch norm's gamma and beta
 *        and all biases take the plain SGD step with momentum. The norms are
 *        of whole layers, so the update of one element needs its whole layer's
 *        summed gradient (optim_elementwise is 0).
 * adam   Kingma & Ba, L2 weight decay added to the gradient; adamw: decoupled
 *        decay (Loshchilov & Hutter). First moment in the momentum buffer,
 *        second moment in SgdConfig.adam_v; bias correction with t = step + 1.
 *
 * Weight decay is decoupled (Loshchilov & Hutter, "Decoupled Weight Decay
 * Regularization", 2019): p -= lr * wd * p is applied beside the gradient
 * step and never enters the momentum. It applies to conv and fc weights, not
 * to biases nor to batch norm's gamma and beta.
 */
#ifndef BASIN_OPTIM_H
#define BASIN_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "core/net.h"

typedef enum { SCHEDULE_CONSTANT, SCHEDULE_STEP, SCHEDULE_COSINE } ScheduleKind;

typedef struct {
    ScheduleKind kind;
    double base_lr;        /* peak learning rate (after warm-up) */
    uint64_t warmup_steps; /* linear ramp from base_lr / warmup_steps up to base_lr */
    uint64_t total_steps;  /* cosine: decays to 0 at total_steps */
    uint64_t step_every;   /* step: multiply by gamma every step_every steps */
    double gamma;
} Schedule;

/* Learning rate of (0-based) global step `step`. */
double schedule_lr(const Schedule *s, uint64_t step);
const char *schedule_name(ScheduleKind kind);

typedef enum { OPTIM_SGD, OPTIM_LARS, OPTIM_ADAM, OPTIM_ADAMW } OptimKind;

const char *optim_name(OptimKind kind);
/* "sgd", "lars", "adam", "adamw"; -1 when unknown. */
int optim_parse(const char *name, OptimKind *out);

typedef struct {
    float momentum;
    float weight_decay;
    int nesterov;
    OptimKind kind;
    float lars_eta;
    float beta1, beta2, eps;
    /* State kept by the trainer (gradients.c): */
    float *adam_v;      /* adam/adamw: second moment, n_params floats, backend memory */
    float *trust;       /* lars: trust ratio of each layer's weights (n_layers, host) */
    uint64_t step;      /* 0-based global step being taken (bias correction) */
    int step_known;
} SgdConfig;

/* 1: the update of an element reads only that element (sgd, adam, adamw). */
int optim_elementwise(const SgdConfig *cfg);

/* LARS: the trust ratio of every layer from the whole params and grads
 * (cfg->trust; other kinds: nothing). Run before the range updates of a step. */
void lars_trust_ratios(Net *net, const SgdConfig *cfg);

/* The configured optimizer on [lo, hi) of the flat buffers, at learning rate
 * lr (LARS: after lars_trust_ratios of this step). */
void optim_step_range(Net *net, const SgdConfig *cfg, float lr, size_t lo, size_t hi);

/* One SGD step on the parameters of the slice [lo, hi) of the flat buffers
 * (a bucket of gradients, or everything: lo = 0, hi = n_params). Slices of
 * one step must not overlap. */
void sgd_step_range(Net *net, const SgdConfig *cfg, float lr, size_t lo, size_t hi);

#endif
