/* SGD with momentum over the flat buffers, and the learning-rate schedule.
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

typedef struct {
    float momentum;
    float weight_decay;
    int nesterov;
} SgdConfig;

/* One SGD step on the parameters of the slice [lo, hi) of the flat buffers
 * (a bucket of gradients, or everything: lo = 0, hi = n_params). Slices of
 * one step must not overlap. */
void sgd_step_range(Net *net, const SgdConfig *cfg, float lr, size_t lo, size_t hi);

#endif
