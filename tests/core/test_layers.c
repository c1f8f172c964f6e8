/* Every layer's backward pass against central finite differences of an
 * independent double-precision forward, and the float forward against that
 * same reference; then a whole small network's gradients the same way.
 *
 * Method: for a random upstream gradient g, J(theta) = <g, f(theta)>. The
 * layer's backward with dy = g must give dJ/dx, dJ/dW, dJ/db. The reference
 * J is computed in double with step h = 1e-4 on smooth pieces, so the
 * central difference is exact to ~1e-8; the float analytic gradient carries
 * float rounding (~1e-6 relative per accumulation), hence the tolerances
 * below: |analytic - fd| <= 2e-4 + 2e-3 |fd|.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/layers.h"
#include "core/net.h"
#include "core/ops.h"
#include "core/rng.h"
#include "models/models.h"
#include "testing.h"

#define ATOL 2e-4
#define RTOL 2e-3
#define H 1e-4

static uint64_t draw_counter;
static double urand(double lo, double hi)
{
    return lo + (hi - lo) * rng_uniform(7, 99, draw_counter++);
}

/* ---- double-precision reference forwards (independent of the op table) ---- */

static void ref_linear(const double *x, const double *w, const double *b, size_t n, size_t in,
                       size_t out, double *y)
{
    for (size_t s = 0; s < n; s++)
        for (size_t o = 0; o < out; o++) {
            double acc = b ? b[o] : 0.0;
            for (size_t i = 0; i < in; i++) acc += w[o * in + i] * x[s * in + i];
            y[s * out + o] = acc;
        }
}

static void ref_conv(const Layer *l, const double *x, const double *w, const double *b, size_t n,
                     double *y)
{
    const Window *g = &l->win;
    int co = l->spec.units;
    for (size_t s = 0; s < n; s++)
        for (int o = 0; o < co; o++)
            for (int oy = 0; oy < g->oh; oy++)
                for (int ox = 0; ox < g->ow; ox++) {
                    double acc = l->b_count ? b[o] : 0.0;
                    for (int c = 0; c < g->c; c++)
                        for (int ky = 0; ky < g->kh; ky++)
                            for (int kx = 0; kx < g->kw; kx++) {
                                int iy = oy * g->stride - g->pad + ky, ix = ox * g->stride - g->pad + kx;
                                if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w) continue;
                                acc += w[((o * g->c + c) * g->kh + ky) * g->kw + kx] *
                                       x[((s * g->c + c) * g->h + iy) * g->w + ix];
                            }
                    y[((s * co + o) * g->oh + oy) * g->ow + ox] = acc;
                }
}

static void ref_pool(const Layer *l, const double *x, size_t n, double *y)
{
    const Window *g = &l->win;
    for (size_t s = 0; s < n; s++)
        for (int c = 0; c < g->c; c++)
            for (int oy = 0; oy < g->oh; oy++)
                for (int ox = 0; ox < g->ow; ox++) {
                    double m = -INFINITY;
                    for (int ky = 0; ky < g->kh; ky++)
                        for (int kx = 0; kx < g->kw; kx++) {
                            int iy = oy * g->stride - g->pad + ky, ix = ox * g->stride - g->pad + kx;
                            if (iy < 0 || ix < 0 || iy >= g->h || ix >= g->w) continue;
                            double v = x[((s * g->c + c) * g->h + iy) * g->w + ix];
                            if (v > m) m = v;
                        }
                    y[((s * g->c + c) * g->oh + oy) * g->ow + ox] = m;
                }
}

/* Average pooling: every window divides by kh kw, padding counting as 0. */
static void ref_avgpool(const Layer *l, const double *x, size_t n, double *y)
{
    const Window *g = &l->win;
    for (size_t s = 0; s < n; s++)
        for (int c = 0; c < g->c; c++)
            for (int oy = 0; oy < g->oh; oy++)
                for (int ox = 0; ox < g->ow; ox++) {
                    double acc = 0;
                    for (int ky = 0; ky < g->kh; ky++)
                        for (int kx = 0; kx < g->kw; kx++) {
                            int iy = oy * g->stride - g->pad + ky, ix = ox * g->stride - g->pad + kx;
                            if (iy < 0 || ix < 0 || iy >= g->h || ix >= g->w) continue;
                            acc += x[((s * g->c + c) * g->h + iy) * g->w + ix];
                        }
                    y[((s * g->c + c) * g->oh + oy) * g->ow + ox] = acc / (g->kh * g->kw);
                }
}

/* Batch norm in training: each channel normalised with the mean and the
 * biased variance of the batch (n samples x hw values), then scaled and
 * shifted. */
static void ref_bn(const Layer *l, const double *x, const double *gamma, const double *beta, size_t n,
                   double *y)
{
    size_t c = (size_t)l->in.c, hw = (size_t)l->in.h * (size_t)l->in.w;
    for (size_t ch = 0; ch < c; ch++) {
        double m = 0, v = 0;
        for (size_t s = 0; s < n; s++)
            for (size_t i = 0; i < hw; i++) m += x[(s * c + ch) * hw + i];
        m /= (double)(n * hw);
        for (size_t s = 0; s < n; s++)
            for (size_t i = 0; i < hw; i++) v += pow(x[(s * c + ch) * hw + i] - m, 2);
        v /= (double)(n * hw);
        double inv = 1.0 / sqrt(v + l->spec.bn_eps);
        for (size_t s = 0; s < n; s++)
            for (size_t i = 0; i < hw; i++) {
                size_t k = (s * c + ch) * hw + i;
                y[k] = gamma[ch] * (x[k] - m) * inv + beta[ch];
            }
    }
}

/* Reference forward of any layer; mask: the dropout factors the float forward
 * drew (the random draw itself is checked in the op tests). */
static void ref_forward(const Layer *l, const double *x, const double *w, const double *b,
                        const float *mask, size_t n, double *y)
{
    size_t in = shape_size(l->in), out = shape_size(l->out);
    switch (l->kind) {
    case LAYER_LINEAR: ref_linear(x, w, l->b_count ? b : NULL, n, in, out, y); break;
    case LAYER_CONV: ref_conv(l, x, w, b, n, y); break;
    case LAYER_MAXPOOL: ref_pool(l, x, n, y); break;
    case LAYER_AVGPOOL: ref_avgpool(l, x, n, y); break;
    case LAYER_BATCHNORM: ref_bn(l, x, w, b, n, y); break;
    case LAYER_GAP: {
        size_t hw = (size_t)l->in.h * (size_t)l->in.w;
        for (size_t i = 0; i < n * (size_t)l->in.c; i++) {
            double acc = 0;
            for (size_t j = 0; j < hw; j++) acc += x[i * hw + j];
            y[i] = acc / (double)hw;
        }
        break;
    }
    case LAYER_ADD: /* the network's: see ref_net_loss */
        break;
    case LAYER_RELU:
        for (size_t i = 0; i < n * out; i++) y[i] = x[i] > 0 ? x[i] : 0;
        break;
    case LAYER_DROPOUT:
        for (size_t i = 0; i < n * out; i++) y[i] = x[i] * (mask ? mask[i] : 1.0);
        break;
    case LAYER_FLATTEN:
        memcpy(y, x, n * out * sizeof *y);
        break;
    }
}

static double dot(const double *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static double *to_double(const float *x, size_t n)
{
    double *d = malloc((n ? n : 1) * sizeof *d);
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

/* Inputs for piecewise-linear layers are kept away from their kinks: ReLU
 * inputs from 0, pooling windows from ties, by more than H. */
static void fill_input(LayerKind kind, float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        double v;
        do v = urand(-1, 1);
        while (kind == LAYER_RELU && fabs(v) < 0.01);
        x[i] = (float)v;
    }
    if (kind == LAYER_MAXPOOL) /* distinct values 0.01 apart: no ties */
        for (size_t i = 0; i < n; i++) x[i] = (float)(0.01 * (double)((i * 7919) % n) - 0.5);
}

static void check_layer_cache(const char *what, LayerSpec spec, Shape in, size_t n, int first, int keep_cols)
{
    Layer l;
    if (layer_setup(&l, first ? 0 : 1, &spec, in)) {
        EXPECT(0, "%s: layer_setup failed", what);
        return;
    }
    layer_alloc(&l, &ops_cpu, n);
    if (!keep_cols) { /* the path of batches too large for the im2col cache */
        ops_cpu.free(l.cols);
        l.cols = NULL;
    }
    size_t nin = shape_size(l.in) * n, nout = shape_size(l.out) * n;
    float *x = calloc(nin, sizeof *x), *y = calloc(nout, sizeof *y), *g = calloc(nout, sizeof *g);
    float *dx = calloc(nin, sizeof *dx);
    float *w = calloc(l.w_count + 1, sizeof *w), *b = calloc(l.b_count + 1, sizeof *b);
    float *dw = calloc(l.w_count + 1, sizeof *dw), *db = calloc(l.b_count + 1, sizeof *db);
    fill_input(spec.kind, x, nin);
    for (size_t i = 0; i < l.w_count; i++) w[i] = (float)urand(-0.5, 0.5);
    for (size_t i = 0; i < l.b_count; i++) b[i] = (float)urand(-0.5, 0.5);
    for (size_t i = 0; i < nout; i++) g[i] = (float)urand(-1, 1);
    /* Garbage in the outputs: backward must overwrite, not accumulate. */
    for (size_t i = 0; i < l.w_count; i++) dw[i] = 123.0f;
    for (size_t i = 0; i < l.b_count; i++) db[i] = -77.0f;
    for (size_t i = 0; i < nin; i++) dx[i] = 55.0f;
    l.w = w, l.b = b, l.dw = dw, l.db = db;
    float *state = calloc(l.s_count + 1, sizeof *state);
    layer_init_state(&l, state);
    l.state = l.s_count ? state : NULL;

    ForwardCtx ctx = {.train = 1, .seed = 3, .sample_offset = 10};
    layer_forward(&l, &ops_cpu, x, y, n, &ctx);
    layer_backward(&l, &ops_cpu, x, y, g, dx, n, &ctx);
    const float *mask = spec.kind == LAYER_DROPOUT && spec.p > 0 ? l.mask : NULL;

    double *xd = to_double(x, nin), *wd = to_double(w, l.w_count), *bd = to_double(b, l.b_count);
    double *yd = malloc(nout * sizeof *yd);
    ref_forward(&l, xd, wd, bd, mask, n, yd);
    for (size_t i = 0; i < nout; i++) EXPECT_NEAR(y[i], yd[i], 1e-5, 1e-4, what);

    /* Central differences over every input, weight and bias. */
    struct { double *v; const float *grad; size_t count; const char *name; } sets[] = {
        {xd, dx, first ? 0 : nin, "dx"}, {wd, dw, l.w_count, "dW"}, {bd, db, l.b_count, "db"}};
    for (int s = 0; s < 3; s++) {
        for (size_t i = 0; i < sets[s].count; i++) {
            double keep = sets[s].v[i];
            sets[s].v[i] = keep + H;
            ref_forward(&l, xd, wd, bd, mask, n, yd);
            double jp = dot(yd, g, nout);
            sets[s].v[i] = keep - H;
            ref_forward(&l, xd, wd, bd, mask, n, yd);
            double jm = dot(yd, g, nout);
            sets[s].v[i] = keep;
            char label[128];
            snprintf(label, sizeof label, "%s %s[%zu]", what, sets[s].name, i);
            EXPECT_NEAR(sets[s].grad[i], (jp - jm) / (2 * H), ATOL, RTOL, label);
        }
    }
    if (first) /* the first layer leaves dx alone: nobody needs it */
        for (size_t i = 0; i < nin; i++) EXPECT(dx[i] == 55.0f, "%s: first layer wrote dx", what);
    layer_free(&l, &ops_cpu);
    free(x), free(y), free(g), free(dx), free(w), free(b), free(dw), free(db);
    if (spec.kind == LAYER_BATCHNORM) {
        /* Running statistics after one step from (0, 1): momentum times the
         * batch mean, and 1 - m + m times the unbiased batch variance. */
        size_t c = (size_t)l.in.c, hw = (size_t)l.in.h * (size_t)l.in.w, cnt = n * hw;
        double m = l.spec.bn_momentum;
        for (size_t ch = 0; ch < c; ch++) {
            double mean = 0, var = 0;
            for (size_t s = 0; s < n; s++)
                for (size_t i = 0; i < hw; i++) mean += xd[(s * c + ch) * hw + i];
            mean /= (double)cnt;
            for (size_t s = 0; s < n; s++)
                for (size_t i = 0; i < hw; i++) var += pow(xd[(s * c + ch) * hw + i] - mean, 2);
            var /= (double)(cnt > 1 ? cnt - 1 : 1);
            EXPECT_NEAR(state[ch], m * mean, 1e-6, 1e-5, "running mean");
            EXPECT_NEAR(state[c + ch], 1 - m + m * var, 1e-6, 1e-5, "running var");
        }
    }
    free(state);
    free(xd), free(wd), free(bd), free(yd);
}

static void check_layer(const char *what, LayerSpec spec, Shape in, size_t n, int first)
{
    check_layer_cache(what, spec, in, n, first, 1);
}

static LayerSpec S(LayerKind kind, int units, int k, int stride, int pad, float p)
{
    return (LayerSpec){kind, units, k, stride, pad, p, 0, 0, 0, 0.0f, 0.0f, 0};
}

/* ---- whole network: softmax cross-entropy on top of a stack of layers ---- */

static double ref_net_loss(Net *net, double **params_d, const double *x, const int32_t *labels,
                           size_t n, float **masks)
{
    /* Every layer's output kept: residual blocks read earlier ones. */
    double **out = calloc((size_t)net->n_layers, sizeof *out);
    for (int i = 0; i < net->n_layers; i++) {
        const Layer *l = &net->layers[i];
        const double *in = l->src < 0 ? x : out[l->src];
        out[i] = malloc(n * shape_size(l->out) * sizeof **out);
        if (l->kind == LAYER_ADD) {
            const double *in2 = l->src2 < 0 ? x : out[l->src2];
            for (size_t k = 0; k < n * shape_size(l->out); k++) out[i][k] = in[k] + in2[k];
        } else {
            ref_forward(l, in, params_d[0] + l->w_off, params_d[0] + l->b_off, masks[i], n, out[i]);
        }
    }
    const double *a = out[net->n_layers - 1];
    double loss = 0;
    size_t k = (size_t)net->classes;
    for (size_t s = 0; s < n; s++) {
        double m = -INFINITY, z = 0;
        for (size_t j = 0; j < k; j++) m = fmax(m, a[s * k + j]);
        for (size_t j = 0; j < k; j++) z += exp(a[s * k + j] - m);
        loss += log(z) + m - a[s * k + (size_t)labels[s]];
    }
    for (int i = 0; i < net->n_layers; i++) free(out[i]);
    free(out);
    return loss;
}

static void check_net(const char *what, const char *spec, Shape in, int classes, size_t n)
{
    LayerSpec specs[MODEL_MAX_LAYERS];
    int nl = 0;
    if (model_parse(spec, in, specs, MODEL_MAX_LAYERS, &nl)) {
        EXPECT(0, "%s: model_parse failed", what);
        return;
    }
    Net *net = NULL;
    if (net_create(specs, nl, in, classes, &ops_cpu, n, &net)) {
        EXPECT(0, "%s: net_create failed", what);
        return;
    }
    net_init_params(net, 11);
    /* Batch-norm parameters away from the identity, so that their
     * gradients matter. */
    for (int i = 0; i < nl; i++) {
        Layer *l = &net->layers[i];
        if (l->kind != LAYER_BATCHNORM) continue;
        for (size_t k = 0; k < l->w_count; k++) l->w[k] = (float)urand(0.5, 1.5), l->b[k] = (float)urand(-0.3, 0.3);
    }
    size_t nx = n * shape_size(in);
    float *x = malloc(nx * sizeof *x);
    int32_t labels[64];
    for (size_t i = 0; i < nx; i++) x[i] = (float)urand(-1, 1);
    for (size_t i = 0; i < n; i++) labels[i] = (int32_t)(i % (size_t)classes);
    ForwardCtx ctx = {.train = 1, .seed = 5, .sample_offset = 0};
    double loss = 0;
    size_t correct = 0;
    net_forward(net, x, labels, n, &ctx, &loss, &correct);
    net_backward(net, x, labels, n, 1.0f, NULL, NULL);

    float **masks = calloc((size_t)nl, sizeof *masks);
    for (int i = 0; i < nl; i++) masks[i] = net->layers[i].kind == LAYER_DROPOUT ? net->layers[i].mask : NULL;
    double *pd = to_double(net->params, net->n_params), *xd = to_double(x, nx);
    EXPECT_NEAR(loss, ref_net_loss(net, &pd, xd, labels, n, masks), 1e-4, 1e-4, "net loss");
    /* Every parameter would be slow for the conv nets; a fixed stride covers
     * all layers and both weights and biases. */
    size_t stride = net->n_params > 400 ? 7 : 1;
    int bad = 0;
    size_t kinks = 0, checked = 0;
    for (size_t i = 0; i < net->n_params; i += stride) {
        double fd = 0, fd_fine = 0;
        for (int pass = 0; pass < 2; pass++) {
            double h = pass ? H / 8 : H, keep = pd[i];
            pd[i] = keep + h;
            double jp = ref_net_loss(net, &pd, xd, labels, n, masks);
            pd[i] = keep - h;
            double jm = ref_net_loss(net, &pd, xd, labels, n, masks);
            pd[i] = keep;
            *(pass ? &fd_fine : &fd) = (jp - jm) / (2 * h);
            if (!pass && fabs(net->grads[i] - fd) <= ATOL + RTOL * fabs(fd)) break;
        }
        checked++;
        if (fd_fine != 0 && fabs(fd_fine - fd) > ATOL + RTOL * fabs(fd)) {
            /* The two steps disagree: a ReLU input lies within H of its kink,
             * where no finite difference is the derivative. */
            kinks++;
            continue;
        }
        if (!(fabs(net->grads[i] - fd) <= ATOL + RTOL * fabs(fd)) && bad++ < 5) {
            test_failures_++;
            fprintf(stderr, "%s: grad[%zu] = %.7g, finite difference %.7g\n", what, i, net->grads[i], fd);
        }
    }
    EXPECT(bad == 0, "%s: %d gradients off", what, bad);
    EXPECT(kinks * 20 <= checked, "%s: %zu of %zu parameters next to a kink", what, kinks, checked);
    free(masks);
    free(pd), free(xd), free(x);
    net_destroy(net);
}

int main(void)
{
    Shape img = {2, 7, 6}, flat = {13, 1, 1};
    check_layer("linear", S(LAYER_LINEAR, 5, 0, 0, 0, 0), flat, 3, 0);
    check_layer("linear (first)", S(LAYER_LINEAR, 4, 0, 0, 0, 0), flat, 2, 1);
    check_layer("linear on image", S(LAYER_LINEAR, 3, 0, 0, 0, 0), img, 2, 0);
    check_layer("conv k3 s1 p1", S(LAYER_CONV, 3, 3, 1, 1, 0), img, 2, 0);
    check_layer("conv k5 s1 p2", S(LAYER_CONV, 4, 5, 1, 2, 0), img, 2, 0);
    check_layer_cache("conv k3 s1 p1 (im2col recomputed)", S(LAYER_CONV, 3, 3, 1, 1, 0), img, 3, 0, 0);
    check_layer("conv k3 s2 p0", S(LAYER_CONV, 2, 3, 2, 0, 0), img, 3, 0);
    check_layer("conv k2 s3 p1", S(LAYER_CONV, 2, 2, 3, 1, 0), img, 1, 0);
    check_layer("conv k1 s1 p0 (first)", S(LAYER_CONV, 3, 1, 1, 0, 0), img, 2, 1);
    check_layer("pool k2 s2", S(LAYER_MAXPOOL, 0, 2, 2, 0, 0), img, 2, 0);
    check_layer("pool k3 s2 (overlapping)", S(LAYER_MAXPOOL, 0, 3, 2, 0, 0), img, 2, 0);
    check_layer("pool k3 s3 (ragged edge)", S(LAYER_MAXPOOL, 0, 3, 3, 0, 0), img, 1, 0);
    check_layer("relu", S(LAYER_RELU, 0, 0, 0, 0, 0), img, 2, 0);
    check_layer("flatten", S(LAYER_FLATTEN, 0, 0, 0, 0, 0), img, 2, 0);
    check_layer("dropout 0.3", S(LAYER_DROPOUT, 0, 0, 0, 0, 0.3f), img, 2, 0);
    check_layer("dropout 0", S(LAYER_DROPOUT, 0, 0, 0, 0, 0.0f), flat, 2, 0);

    check_layer("pool k3 s2 p1", S(LAYER_MAXPOOL, 0, 3, 2, 1, 0), img, 2, 0);
    check_layer("avgpool k2 s2", S(LAYER_AVGPOOL, 0, 2, 2, 0, 0), img, 2, 0);
    check_layer("avgpool k3 s2 p1", S(LAYER_AVGPOOL, 0, 3, 2, 1, 0), img, 2, 0);
    check_layer("gap", S(LAYER_GAP, 0, 0, 0, 0, 0), img, 3, 0);
    check_layer("bn (conv)", S(LAYER_BATCHNORM, 0, 0, 0, 0, 0), img, 3, 0);
    check_layer("bn (fc)", S(LAYER_BATCHNORM, 0, 0, 0, 0, 0), flat, 4, 0);
    check_layer("bn (first)", S(LAYER_BATCHNORM, 0, 0, 0, 0, 0), img, 2, 1);
    LayerSpec nb = S(LAYER_CONV, 3, 3, 2, 1, 0);
    nb.no_bias = 1;
    check_layer("conv k3 s2 p1 without bias", nb, img, 2, 0);
    nb = S(LAYER_CONV, 4, 1, 2, 0, 0);
    nb.no_bias = 1;
    check_layer("conv k1 s2 p0 without bias", nb, img, 2, 0);

    check_net("mlp", "flatten,fc:6,relu,fc:5,relu,fc:4", (Shape){1, 3, 3}, 4, 5);
    check_net("cnn", "conv:3:3:1:1,relu,pool:2,conv:4:3:1:1,relu,flatten,fc:6,relu,dropout:0.25,fc:3",
              (Shape){2, 6, 6}, 3, 3);
    /* Residual blocks: identity and projection shortcuts, a bottleneck,
     * batch norm on conv and fc outputs, average and global pooling. */
    check_net("resnet", "conv:4:3,bn,relu,basic:4,basic:6:2,avgpool:2:1:1,gap,fc:5,bn,fc:3",
              (Shape){2, 6, 6}, 3, 4);
    /* The same without ReLUs: smooth everywhere, every parameter checked. */
    check_net("resnet (smooth)", "conv:4:3,bn,res(conv:4:3,bn,conv:4:3,bn),res(conv:6:3:2,bn,conv:6:3,bn),"
              "avgpool:2:1:1,gap,fc:5,bn,fc:3", (Shape){2, 6, 6}, 3, 4);
    check_net("bottleneck", "conv:4:3,bn,relu,bottleneck:2:2,res(bn,relu),gap,fc:3", (Shape){3, 5, 5}, 3, 3);
    return test_finish("test_layers");
}
