#include "core/optim.h"

#include <math.h>

const char *schedule_name(ScheduleKind kind)
{
    switch (kind) {
    case SCHEDULE_CONSTANT: return "constant";
    case SCHEDULE_STEP: return "step";
    case SCHEDULE_COSINE: return "cosine";
    }
    return "?";
}

double schedule_lr(const Schedule *s, uint64_t step)
{
    if (step < s->warmup_steps)
        return s->base_lr * (double)(step + 1) / (double)s->warmup_steps;
    uint64_t t = step - s->warmup_steps;
    switch (s->kind) {
    case SCHEDULE_CONSTANT:
        return s->base_lr;
    case SCHEDULE_STEP:
        return s->step_every ? s->base_lr * pow(s->gamma, (double)(step / s->step_every))
                             : s->base_lr;
    case SCHEDULE_COSINE: {
        uint64_t span = s->total_steps > s->warmup_steps ? s->total_steps - s->warmup_steps : 1;
        double f = t >= span ? 1.0 : (double)t / (double)span;
        return s->base_lr * 0.5 * (1.0 + cos(3.14159265358979323846 * f));
    }
    }
    return s->base_lr;
}

static void step_segment(Net *net, const SgdStep *st, size_t off, size_t count, size_t lo, size_t hi)
{
    size_t a = off > lo ? off : lo;
    size_t b = off + count < hi ? off + count : hi;
    if (a >= b) return;
    net->ops->sgd_step(net->params + a, net->grads + a, net->mom + a, b - a, st);
}

void sgd_step_range(Net *net, const SgdConfig *cfg, float lr, size_t lo, size_t hi)
{
    SgdStep weights = {lr, cfg->momentum, cfg->weight_decay, cfg->nesterov};
    SgdStep biases = weights;
    biases.weight_decay = 0.0f;
    for (int i = 0; i < net->n_layers; i++) {
        const Layer *l = &net->layers[i];
        if (!l->w_count) continue;
        /* Decay shrinks conv and fc weights; batch norm's scale is not one. */
        step_segment(net, l->kind == LAYER_BATCHNORM ? &biases : &weights, l->w_off, l->w_count, lo, hi);
        step_segment(net, &biases, l->b_off, l->b_count, lo, hi);
    }
}
