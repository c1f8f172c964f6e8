#include "core/optim.h"

#include <math.h>
#include <string.h>

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

const char *optim_name(OptimKind kind)
{
    switch (kind) {
    case OPTIM_SGD: return "sgd";
    case OPTIM_LARS: return "lars";
    case OPTIM_ADAM: return "adam";
    case OPTIM_ADAMW: return "adamw";
    }
    return "?";
}

int optim_parse(const char *name, OptimKind *out)
{
    static const OptimKind all[] = {OPTIM_SGD, OPTIM_LARS, OPTIM_ADAM, OPTIM_ADAMW};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(name, optim_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    return -1;
}

int optim_elementwise(const SgdConfig *cfg)
{
    return cfg->kind != OPTIM_LARS;
}

/* LARS scales conv and fc weights; batch norm's gamma is not one. */
static int lars_layer(const Layer *l)
{
    return l->w_count && l->kind != LAYER_BATCHNORM;
}

void lars_trust_ratios(Net *net, const SgdConfig *cfg)
{
    if (cfg->kind != OPTIM_LARS) return;
    for (int i = 0; i < net->n_layers; i++) {
        const Layer *l = &net->layers[i];
        cfg->trust[i] = 1.0f;
        if (!lars_layer(l)) continue;
        double wn = sqrt(net->ops->sumsq(net->params + l->w_off, l->w_count));
        double gn = sqrt(net->ops->sumsq(net->grads + l->w_off, l->w_count));
        if (wn > 0.0 && gn > 0.0)
            cfg->trust[i] = (float)((double)cfg->lars_eta * wn / (gn + (double)cfg->weight_decay * wn));
    }
}

static void adam_segment(Net *net, const AdamStep *st, size_t off, size_t count, size_t lo, size_t hi,
                         float *v)
{
    size_t a = off > lo ? off : lo;
    size_t b = off + count < hi ? off + count : hi;
    if (a >= b) return;
    net->ops->adam_step(net->params + a, net->grads + a, net->mom + a, v + a, b - a, st);
}

static void lars_segment(Net *net, const SgdStep *st, float ratio, size_t off, size_t count, size_t lo,
                         size_t hi)
{
    size_t a = off > lo ? off : lo;
    size_t b = off + count < hi ? off + count : hi;
    if (a >= b) return;
    net->ops->lars_step(net->params + a, net->grads + a, net->mom + a, b - a, st, ratio);
}

void optim_step_range(Net *net, const SgdConfig *cfg, float lr, size_t lo, size_t hi)
{
    if (cfg->kind == OPTIM_SGD) {
        sgd_step_range(net, cfg, lr, lo, hi);
        return;
    }
    if (cfg->kind == OPTIM_LARS) {
        SgdStep weights = {lr, cfg->momentum, cfg->weight_decay, cfg->nesterov};
        SgdStep plain = weights;
        plain.weight_decay = 0.0f;
        for (int i = 0; i < net->n_layers; i++) {
            const Layer *l = &net->layers[i];
            if (!l->w_count) continue;
            if (lars_layer(l)) lars_segment(net, &weights, cfg->trust[i], l->w_off, l->w_count, lo, hi);
            else step_segment(net, &plain, l->w_off, l->w_count, lo, hi);
            step_segment(net, &plain, l->b_off, l->b_count, lo, hi);
        }
        return;
    }
    double t = (double)cfg->step + 1.0;
    AdamStep weights = {
        .lr = lr, .beta1 = cfg->beta1, .beta2 = cfg->beta2, .eps = cfg->eps,
        .weight_decay = cfg->weight_decay, .decoupled = cfg->kind == OPTIM_ADAMW,
        .bc1 = (float)(1.0 - pow((double)cfg->beta1, t)), .bc2 = (float)(1.0 - pow((double)cfg->beta2, t)),
    };
    AdamStep plain = weights;
    plain.weight_decay = 0.0f;
    for (int i = 0; i < net->n_layers; i++) {
        const Layer *l = &net->layers[i];
        if (!l->w_count) continue;
        adam_segment(net, l->kind == LAYER_BATCHNORM ? &plain : &weights, l->w_off, l->w_count, lo, hi,
                     cfg->adam_v);
        adam_segment(net, &plain, l->b_off, l->b_count, lo, hi, cfg->adam_v);
    }
}
