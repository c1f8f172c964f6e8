/* One training step on the GPU equals the CPU step: the same network, the
 * same initial weights, batch and dropout draws, forward + backward + SGD
 * (net_forward, net_backward, sgd_step_range) through ops_cuda and through
 * ops_cpu, twice in a row. Also: the GPU step gives the same bits when it is
 * repeated from the same state. Exits 77 (skipped) without a CUDA device.
 *
 * Tolerance. The ops are tested one by one in test_ops_cuda.c; here the
 * differences are the float rounding of gemm and of the reductions
 * propagated through the layers. A gradient element is a sum of up to
 * ~25,000 products (dW of a conv layer over batch x pixels) after three or
 * four such stages, so elementwise relative bounds are meaningless where
 * terms cancel; the comparison is normwise per tensor instead:
 *   ||gpu - cpu||_2 <= 1e-3 ||cpu||_2 + 1e-6
 * Random float rounding of k terms grows like sqrt(k) u ~ 1e-5 of the
 * norm; 1e-3 leaves two orders of magnitude for worst cases (and for a
 * ReLU input within rounding of zero, which flips one term), while a wrong
 * op (a transposed gemm, a lost bias, a shifted mask) moves the norm by
 * O(1). The loss, a sum of n row losses of size ~2.3 that depend on logits
 * agreeing to ~1e-5, is compared to 1e-4 per row. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/net.h"
#include "core/optim.h"
#include "models/models.h"
#include "ops_cuda.h"
#include "gen.h"
#include "cuda_device.h"
#include "testing.h"

static float *host_floats(size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) {
        fprintf(stderr, "test_step_cuda: out of memory\n");
        exit(1);
    }
    return p;
}

/* ||a - b||_2 <= rtol ||b||_2 + atol over n elements; reports the ratio. */
static void expect_close_norm(const float *a, const float *b, size_t n, double rtol, double atol,
                              const char *what, const char *model, int step, int layer)
{
    double d2 = 0.0, b2 = 0.0;
    size_t nan = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        if (isnan(d)) nan++;
        d2 += d * d;
        b2 += (double)b[i] * b[i];
    }
    double dn = sqrt(d2), bn = sqrt(b2);
    EXPECT(nan == 0 && dn <= rtol * bn + atol,
           "%s step %d layer %d %s: ||gpu - cpu|| = %.3g, ||cpu|| = %.3g (ratio %.3g, bound %.3g), "
           "%zu NaN",
           model, step, layer, what, dn, bn, bn > 0 ? dn / bn : dn, rtol, nan);
}

static float *to_host(const Ops *o, const float *d, size_t n)
{
    float *h = host_floats(n);
    o->to_host(h, d, n * sizeof(float));
    return h;
}

static void check_model(const char *name, size_t batch)
{
    LayerSpec specs[MODEL_MAX_LAYERS];
    int n_layers = 0;
    const Shape in = {1, 28, 28};
    EXPECT(model_parse(name, in, specs, MODEL_MAX_LAYERS, &n_layers) == 0, "%s: parse", name);
    Net *cpu = NULL, *gpu = NULL;
    EXPECT(net_create(specs, n_layers, in, 10, &ops_cpu, batch, &cpu) == 0, "%s: cpu net", name);
    EXPECT(net_create(specs, n_layers, in, 10, &ops_cuda, batch, &gpu) == 0, "%s: gpu net", name);
    if (!cpu || !gpu) {
        net_destroy(cpu);
        net_destroy(gpu);
        return;
    }
    const size_t np = cpu->n_params, in_n = batch * shape_size(in);
    EXPECT(np == gpu->n_params, "%s: %zu vs %zu parameters", name, np, gpu->n_params);
    net_init_params(cpu, 42);
    net_init_params(gpu, 42);
    float *p0 = to_host(&ops_cuda, gpu->params, np);
    EXPECT(memcmp(p0, cpu->params, np * sizeof(float)) == 0,
           "%s: initial parameters differ (they are drawn on the host)", name);

    /* A batch of pixels in [0, 1) and labels in [0, 10), in host memory for
     * the CPU and copied to the device for the GPU. */
    Gen g = {99};
    float *x = host_floats(in_n);
    int32_t *labels = malloc(batch * sizeof *labels);
    for (size_t i = 0; i < in_n; i++) x[i] = (float)(gen_u64(&g) >> 40) * (1.0f / 16777216.0f);
    for (size_t i = 0; i < batch; i++) labels[i] = (int32_t)(gen_u64(&g) % 10);
    float *dx = ops_cuda.alloc(in_n * sizeof(float));
    int32_t *dlabels = ops_cuda.alloc(batch * sizeof(int32_t));
    EXPECT(dx && dlabels, "%s: device batch", name);
    if (!dx || !dlabels) return;
    ops_cuda.to_device(dx, x, in_n * sizeof(float));
    ops_cuda.to_device(dlabels, labels, batch * sizeof(int32_t));

    const SgdConfig cfg = {.momentum = 0.9f, .weight_decay = 5e-4f, .nesterov = 0};
    const float lr = 0.05f;
    float *grads0 = NULL; /* the GPU's gradients of step 0, for the repeat */
    for (int step = 0; step < 2; step++) {
        ForwardCtx ctx = {.train = 1, .seed = 7, .sample_offset = 1000 + (uint64_t)step * batch};
        double closs = 0.0, gloss = 0.0;
        size_t ccorrect = 0, gcorrect = 0;
        net_forward(cpu, x, labels, batch, &ctx, &closs, &ccorrect);
        net_forward(gpu, dx, dlabels, batch, &ctx, &gloss, &gcorrect);
        EXPECT(isfinite(gloss) && fabs(gloss - closs) <= 1e-4 * (double)batch,
               "%s step %d: loss %.9g on the GPU, %.9g on the CPU", name, step, gloss, closs);
        /* The argmax of logits that agree to ~1e-5: equal unless two logits
         * of a row are that close, which these fixed inputs avoid. */
        EXPECT(gcorrect == ccorrect, "%s step %d: %zu correct on the GPU, %zu on the CPU", name,
               step, gcorrect, ccorrect);
        /* Dropout draws the same mask on both devices. */
        for (int i = 0; i < n_layers; i++) {
            const Layer *l = &cpu->layers[i];
            if (l->kind != LAYER_DROPOUT || !l->mask) continue;
            size_t mn = batch * shape_size(l->out);
            float *gm = to_host(&ops_cuda, gpu->layers[i].mask, mn);
            EXPECT(memcmp(gm, l->mask, mn * sizeof(float)) == 0,
                   "%s step %d: dropout mask of layer %d differs", name, step, i);
            free(gm);
        }

        const float scale = 1.0f / (float)batch;
        net_backward(cpu, x, labels, batch, scale, NULL, NULL);
        net_backward(gpu, dx, dlabels, batch, scale, NULL, NULL);
        float *gg = to_host(&ops_cuda, gpu->grads, np);
        for (int i = 0; i < n_layers; i++) {
            const Layer *l = &cpu->layers[i];
            if (!l->w_count) continue;
            expect_close_norm(gg + l->w_off, cpu->grads + l->w_off, l->w_count, 1e-3, 1e-6,
                              "weight gradient", name, step, i);
            expect_close_norm(gg + l->b_off, cpu->grads + l->b_off, l->b_count, 1e-3, 1e-6,
                              "bias gradient", name, step, i);
        }
        if (cpu->n_state) { /* batch norm's running statistics after this step */
            float *gs = to_host(&ops_cuda, gpu->state, cpu->n_state);
            expect_close_norm(gs, cpu->state, cpu->n_state, 1e-4, 1e-7, "running statistics", name, step, -1);
            free(gs);
        }
        if (step == 0) {
            grads0 = gg;
        } else {
            free(gg);
        }

        /* The update: compare p - p_before, not p, whose size hides it. */
        float *cb = host_floats(np);
        memcpy(cb, cpu->params, np * sizeof(float));
        float *gb = to_host(&ops_cuda, gpu->params, np);
        sgd_step_range(cpu, &cfg, lr, 0, np);
        sgd_step_range(gpu, &cfg, lr, 0, np);
        float *ga = to_host(&ops_cuda, gpu->params, np);
        for (size_t i = 0; i < np; i++) {
            ga[i] -= gb[i];
            cb[i] = cpu->params[i] - cb[i];
        }
        expect_close_norm(ga, cb, np, 1e-3, 1e-7, "parameter update", name, step, -1);
        free(cb);
        free(gb);
        free(ga);
    }

    /* Determinism: the same state and batch again give the same bits. */
    net_init_params(gpu, 42);
    ForwardCtx ctx = {.train = 1, .seed = 7, .sample_offset = 1000};
    double loss = 0.0;
    size_t correct = 0;
    net_forward(gpu, dx, dlabels, batch, &ctx, &loss, &correct);
    net_backward(gpu, dx, dlabels, batch, 1.0f / (float)batch, NULL, NULL);
    float *again = to_host(&ops_cuda, gpu->grads, np);
    EXPECT(grads0 && memcmp(again, grads0, np * sizeof(float)) == 0,
           "%s: the GPU step repeated from the same state gave other gradients", name);
    free(again);
    free(grads0);

    ops_cuda.free(dx);
    ops_cuda.free(dlabels);
    free(x);
    free(labels);
    free(p0);
    net_destroy(cpu);
    net_destroy(gpu);
}

int main(void)
{
    require_cuda_device();
    /* A small net with every layer kind, a stride/padding conv and an
     * overlapping pool; then the two presets at their real geometry. */
    check_model("conv:8:5,relu,pool:2,conv:16:3:2:1,relu,pool:3:2,flatten,fc:32,relu,"
                "dropout:0.25,fc:10",
                16);
    check_model("cnn", 8);
    check_model("mlp", 32);
    /* Residual networks: batch norm (conv and fc), identity and projection
     * shortcuts, a bottleneck, padded max and average pooling, global
     * average pooling; then the resnet20 preset. */
    check_model("conv:8:3:2:1,bn,relu,pool:3:2:1,basic:8,bottleneck:4:2,avgpool:3:1:1,gap,fc:16,bn,relu,fc:10", 8);
    check_model("resnet20", 8);
    ops_cuda.sync();
    return test_finish("test_step_cuda");
}
