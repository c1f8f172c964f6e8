/* The optimizers for large batches (optim.h): LARS, Adam and AdamW over the
 * flat buffers of a small network with a convolution, batch norm and a fully
 * connected layer, several steps against a double-precision reference of each
 * formula; weight decay on and off; LARS leaves batch norm and biases to the
 * plain momentum step and takes ratio 1 on a layer whose weights are all 0;
 * any split into slices equals one step over everything; sgd stays the
 * momentum SGD of sgd_step_range, bit for bit. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/error.h"
#include "core/optim.h"
#include "models/models.h"
#include "testing.h"

static const Shape IN = {2, 5, 5};

static Net *make_net(void)
{
    LayerSpec specs[8];
    int n = 0;
    if (model_parse("conv:4:3,bn,relu,flatten,fc:10", IN, specs, 8, &n)) return NULL;
    Net *net = NULL;
    if (net_create(specs, n, IN, 10, &ops_cpu, 1, &net)) return NULL;
    net_init_params(net, 7);
    /* gamma and beta away from 1 and 0, so that decay on them would show */
    for (int i = 0; i < net->n_layers; i++)
        if (net->layers[i].kind == LAYER_BATCHNORM)
            for (size_t j = 0; j < net->layers[i].w_count; j++) {
                net->layers[i].w[j] = 0.5f + 0.1f * (float)j;
                net->layers[i].b[j] = 0.2f - 0.05f * (float)j;
            }
    return net;
}

static uint64_t rng_state = 12345;
static float rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

/* Which kind of parameter element i is: 0 conv/fc weight, 1 bn gamma, 2 bias or beta; layer in *li. */
static int role(const Net *net, size_t i, int *li)
{
    for (int k = 0; k < net->n_layers; k++) {
        const Layer *l = &net->layers[k];
        *li = k;
        if (l->w_count && i >= l->w_off && i < l->w_off + l->w_count) return l->kind == LAYER_BATCHNORM ? 1 : 0;
        if (l->b_count && i >= l->b_off && i < l->b_off + l->b_count) return 2;
    }
    return -1;
}

static int check_close(const float *got, const double *want, size_t n, double tol, const char *what)
{
    int bad = 0;
    for (size_t i = 0; i < n && !bad; i++)
        if (!(fabs((double)got[i] - want[i]) <= tol * (1.0 + fabs(want[i])))) {
            EXPECT(0, "%s: element %zu is %.9g, reference %.9g", what, i, (double)got[i], want[i]);
            bad = 1;
        }
    return bad;
}

static void adam_case(OptimKind kind, float wd)
{
    Net *net = make_net();
    size_t n = net->n_params;
    double *p = malloc(n * sizeof *p), *m = calloc(n, sizeof *m), *v = calloc(n, sizeof *v);
    for (size_t i = 0; i < n; i++) p[i] = net->params[i];
    memset(net->mom, 0, n * sizeof(float));
    SgdConfig cfg = {.momentum = 0.9f, .weight_decay = wd, .nesterov = 0};
    cfg.kind = kind;
    cfg.beta1 = 0.9f, cfg.beta2 = 0.99f, cfg.eps = 1e-8f;
    cfg.adam_v = calloc(n, sizeof(float));
    const double lr = 0.01;
    for (int step = 0; step < 5; step++) {
        for (size_t i = 0; i < n; i++) net->grads[i] = 0.1f * rnd();
        cfg.step = (uint64_t)step;
        optim_step_range(net, &cfg, (float)lr, 0, n);
        double t = step + 1.0;
        for (size_t i = 0; i < n; i++) {
            int li;
            int r = role(net, i, &li);
            double d = r == 0 ? wd : 0.0;
            double g = net->grads[i] + (kind == OPTIM_ADAM ? d * p[i] : 0.0);
            m[i] = 0.9 * m[i] + 0.1 * g;
            v[i] = 0.99 * v[i] + 0.01 * g * g;
            double mh = m[i] / (1.0 - pow(0.9, t)), vh = v[i] / (1.0 - pow(0.99, t));
            p[i] = p[i] - (kind == OPTIM_ADAMW ? lr * d * p[i] : 0.0) - lr * mh / (sqrt(vh) + 1e-8);
        }
        char what[64];
        snprintf(what, sizeof what, "%s wd %g step %d params", optim_name(kind), (double)wd, step);
        if (check_close(net->params, p, n, 2e-5, what)) break;
        snprintf(what, sizeof what, "%s wd %g step %d second moment", optim_name(kind), (double)wd, step);
        if (check_close(cfg.adam_v, v, n, 1e-4, what)) break;
    }
    free(p), free(m), free(v), free(cfg.adam_v);
    net_destroy(net);
}

/* LARS against the reference; zero_fc: the fc weights start at 0. */
static void lars_case(float wd, float mu, int zero_fc)
{
    Net *net = make_net();
    size_t n = net->n_params;
    int fc = -1;
    for (int k = 0; k < net->n_layers; k++)
        if (net->layers[k].kind == LAYER_LINEAR) fc = k;
    EXPECT(fc >= 0, "no fc layer");
    if (fc < 0) return;
    if (zero_fc) memset(net->layers[fc].w, 0, net->layers[fc].w_count * sizeof(float));
    double *p = malloc(n * sizeof *p), *vel = calloc(n, sizeof *vel);
    for (size_t i = 0; i < n; i++) p[i] = net->params[i];
    memset(net->mom, 0, n * sizeof(float));
    SgdConfig cfg = {.momentum = mu, .weight_decay = wd, .nesterov = 0};
    cfg.kind = OPTIM_LARS;
    cfg.lars_eta = 0.02f;
    cfg.trust = calloc((size_t)net->n_layers, sizeof(float));
    const double lr = 0.1;
    for (int step = 0; step < 4; step++) {
        for (size_t i = 0; i < n; i++) net->grads[i] = 0.1f * rnd();
        lars_trust_ratios(net, &cfg);
        double ratio[64];
        for (int k = 0; k < net->n_layers; k++) {
            const Layer *l = &net->layers[k];
            ratio[k] = 1.0;
            if (!l->w_count || l->kind == LAYER_BATCHNORM) continue;
            double wn = 0, gn = 0;
            for (size_t j = 0; j < l->w_count; j++) {
                wn += p[l->w_off + j] * p[l->w_off + j];
                gn += (double)net->grads[l->w_off + j] * net->grads[l->w_off + j];
            }
            wn = sqrt(wn), gn = sqrt(gn);
            if (wn > 0 && gn > 0) ratio[k] = 0.02 * wn / (gn + wd * wn);
            EXPECT_NEAR(cfg.trust[k], ratio[k], 0, 1e-5, "trust ratio");
        }
        if (zero_fc && step == 0) EXPECT(cfg.trust[fc] == 1.0f, "zero-norm layer: ratio %g, not 1", (double)cfg.trust[fc]);
        optim_step_range(net, &cfg, (float)lr, 0, n);
        for (size_t i = 0; i < n; i++) {
            int li;
            int r = role(net, i, &li);
            double u = r == 0 ? ratio[li] * (net->grads[i] + wd * p[i]) : net->grads[i];
            double s = u;
            if (mu != 0.0f) {
                vel[i] = mu * vel[i] + u;
                s = vel[i];
            }
            p[i] -= lr * s;
        }
        char what[64];
        snprintf(what, sizeof what, "lars wd %g mu %g zero %d step %d", (double)wd, (double)mu, zero_fc, step);
        if (check_close(net->params, p, n, 2e-5, what)) break;
    }
    free(p), free(vel), free(cfg.trust);
    net_destroy(net);
}

/* Slices cutting through layers give the bits of one step over everything. */
static void sliced_case(OptimKind kind)
{
    Net *a = make_net(), *b = make_net();
    size_t n = a->n_params;
    SgdConfig cfg = {.momentum = 0.9f, .weight_decay = 0.01f, .nesterov = kind == OPTIM_SGD};
    cfg.kind = kind;
    cfg.lars_eta = 0.01f, cfg.beta1 = 0.9f, cfg.beta2 = 0.999f, cfg.eps = 1e-8f;
    SgdConfig cb = cfg;
    cfg.adam_v = calloc(n, sizeof(float)), cb.adam_v = calloc(n, sizeof(float));
    cfg.trust = calloc((size_t)a->n_layers, sizeof(float)), cb.trust = calloc((size_t)a->n_layers, sizeof(float));
    size_t cuts[] = {0, 5, 40, 41, n / 2, n - 7, n};
    for (int step = 0; step < 3; step++) {
        for (size_t i = 0; i < n; i++) a->grads[i] = b->grads[i] = 0.1f * rnd();
        cfg.step = cb.step = (uint64_t)step;
        lars_trust_ratios(a, &cfg);
        lars_trust_ratios(b, &cb);
        optim_step_range(a, &cfg, 0.05f, 0, n);
        for (int j = 0; j < 6; j++) optim_step_range(b, &cb, 0.05f, cuts[j], cuts[j + 1]);
    }
    EXPECT(memcmp(a->params, b->params, n * sizeof(float)) == 0, "%s: sliced step differs", optim_name(kind));
    EXPECT(memcmp(a->mom, b->mom, n * sizeof(float)) == 0, "%s: sliced momentum differs", optim_name(kind));
    EXPECT(memcmp(cfg.adam_v, cb.adam_v, n * sizeof(float)) == 0, "%s: sliced second moment", optim_name(kind));
    free(cfg.adam_v), free(cb.adam_v), free(cfg.trust), free(cb.trust);
    net_destroy(a);
    net_destroy(b);
}

/* --optimizer and its options: parsed, described, and a resume with other
 * values refused (while the options of an optimizer not in use are not compared). */
static void config_case(void)
{
    TrainConfig a, b;
    config_defaults(&a);
    EXPECT(a.optimizer == OPTIM_SGD, "default optimizer");
    char *argv[] = {"basin-train", "--optimizer", "adamw", "--adam-beta1", "0.8", "--adam-beta2", "0.99",
                    "--adam-eps", "1e-6", "--lars-eta", "0.02", NULL};
    EXPECT(config_parse(&a, 11, argv) == BASIN_OK, "parse");
    EXPECT(a.optimizer == OPTIM_ADAMW && a.adam_beta1 == 0.8 && a.adam_beta2 == 0.99 && a.adam_eps == 1e-6 &&
               a.lars_eta == 0.02, "parsed values");
    char *bad[] = {"basin-train", "--optimizer", "rmsprop", NULL};
    config_defaults(&b);
    EXPECT(config_parse(&b, 3, bad) == BASIN_ERR_USAGE, "unknown optimizer accepted");
    char *bad2[] = {"basin-train", "--adam-beta2", "1", NULL};
    EXPECT(config_parse(&b, 3, bad2) == BASIN_ERR_USAGE, "beta2 1 accepted");
    char saved[4096];
    config_describe(&a, saved, sizeof saved);
    EXPECT(strstr(saved, " optimizer=adamw ") && strstr(saved, " adam_beta1=0.8 "), "describe: %s", saved);
    EXPECT(config_resume_check(saved, &a, "ck") == BASIN_OK, "same options refused");
    config_defaults(&b);
    b.optimizer = OPTIM_ADAMW, b.adam_beta1 = 0.8, b.adam_beta2 = 0.99, b.adam_eps = 1e-6, b.lars_eta = 0.5;
    EXPECT(config_resume_check(saved, &b, "ck") == BASIN_OK, "lars_eta compared for adamw");
    b.adam_beta2 = 0.999;
    EXPECT(config_resume_check(saved, &b, "ck") == BASIN_ERR_USAGE, "other beta2 accepted");
    b.adam_beta2 = 0.99, b.optimizer = OPTIM_SGD;
    EXPECT(config_resume_check(saved, &b, "ck") == BASIN_ERR_USAGE, "other optimizer accepted");
    /* A checkpoint from before --optimizer was plain SGD: its text lacks the key. */
    config_defaults(&b);
    char old[4096];
    config_describe(&b, old, sizeof old);
    *strstr(old, " optimizer=") = '\0';
    EXPECT(config_resume_check(old, &b, "ck") == BASIN_OK, "old checkpoint refused");
    b.optimizer = OPTIM_LARS;
    EXPECT(config_resume_check(old, &b, "ck") == BASIN_ERR_USAGE, "old (sgd) checkpoint resumed with lars");
}

int main(void)
{
    config_case();
    OptimKind k;
    EXPECT(optim_parse("lars", &k) == 0 && k == OPTIM_LARS, "parse lars");
    EXPECT(optim_parse("adamw", &k) == 0 && k == OPTIM_ADAMW, "parse adamw");
    EXPECT(optim_parse("Adam", &k) != 0, "parse is exact");
    EXPECT(strcmp(optim_name(OPTIM_SGD), "sgd") == 0, "sgd name");
    EXPECT(optim_elementwise(&(SgdConfig){.kind = OPTIM_ADAM}) && !optim_elementwise(&(SgdConfig){.kind = OPTIM_LARS}),
           "elementwise");

    /* sgd through optim_step_range is sgd_step_range */
    Net *a = make_net(), *b = make_net();
    for (size_t i = 0; i < a->n_params; i++) a->grads[i] = b->grads[i] = 0.1f * rnd();
    SgdConfig sgd = {.momentum = 0.9f, .weight_decay = 0.01f, .nesterov = 1};
    sgd_step_range(a, &sgd, 0.1f, 0, a->n_params);
    optim_step_range(b, &sgd, 0.1f, 0, b->n_params);
    EXPECT(memcmp(a->params, b->params, a->n_params * sizeof(float)) == 0, "sgd differs from sgd_step_range");
    net_destroy(a);
    net_destroy(b);

    adam_case(OPTIM_ADAM, 0.0f);
    adam_case(OPTIM_ADAM, 0.05f);
    adam_case(OPTIM_ADAMW, 0.0f);
    adam_case(OPTIM_ADAMW, 0.05f);
    lars_case(0.0f, 0.9f, 0);
    lars_case(0.01f, 0.9f, 0);
    lars_case(0.01f, 0.0f, 0);
    lars_case(0.01f, 0.9f, 1);
    sliced_case(OPTIM_SGD);
    sliced_case(OPTIM_LARS);
    sliced_case(OPTIM_ADAM);
    sliced_case(OPTIM_ADAMW);
    return test_finish("test_optim_large");
}
