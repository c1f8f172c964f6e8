/* The network's flat buffers: views cover each buffer exactly once, in
 * reverse layer order; the grads-ready prefix only grows and ends at the
 * whole buffer; initial weights depend only on the seed and have the
 * intended scale. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/net.h"
#include "models/models.h"
#include "testing.h"

typedef struct {
    size_t last, calls;
    int shrank;
} ReadyLog;

static void on_ready(void *arg, size_t ready)
{
    ReadyLog *log = arg;
    if (ready < log->last) log->shrank = 1;
    log->last = ready;
    log->calls++;
}

static void check_model(const char *name)
{
    LayerSpec specs[MODEL_MAX_LAYERS];
    int n = 0;
    EXPECT(model_parse(name, (Shape){1, 28, 28}, specs, MODEL_MAX_LAYERS, &n) == 0, "%s: parse", name);
    Net *net = NULL;
    EXPECT(net_create(specs, n, (Shape){1, 28, 28}, 10, &ops_cpu, 4, &net) == 0, "%s: create", name);
    if (!net) return;

    /* Coverage: every element of [0, n_params) belongs to exactly one view. */
    unsigned char *owner = calloc(net->n_params, 1);
    size_t prev_off = (size_t)-1;
    int with_params = 0;
    for (int i = 0; i < net->n_layers; i++) {
        const Layer *l = &net->layers[i];
        if (!l->w_count) continue;
        with_params++;
        EXPECT(l->w == net->params + l->w_off && l->b == net->params + l->b_off, "%s: param view", name);
        EXPECT(l->dw == net->grads + l->w_off && l->db == net->grads + l->b_off, "%s: grad view", name);
        /* Reverse order: a later layer sits at a lower offset. */
        EXPECT(prev_off == (size_t)-1 || l->w_off < prev_off, "%s: layer %d not in reverse order", name, i);
        prev_off = l->w_off;
        for (size_t k = 0; k < l->w_count; k++) owner[l->w_off + k]++;
        for (size_t k = 0; k < l->b_count; k++) owner[l->b_off + k]++;
    }
    size_t wrong = 0;
    for (size_t k = 0; k < net->n_params; k++) wrong += owner[k] != 1;
    EXPECT(wrong == 0, "%s: %zu elements covered 0 or 2+ times", name, wrong);
    EXPECT(net->layers[net->n_layers - 1].w_off == 0, "%s: last layer not first in the buffer", name);
    free(owner);

    size_t count = 0;
    net_param_count(specs, n, (Shape){1, 28, 28}, &count);
    EXPECT(count == net->n_params, "%s: net_param_count %zu != %zu", name, count, net->n_params);

    /* Initial weights: a function of the seed only; He scale for ReLU layers. */
    net_init_params(net, 7);
    float *a = malloc(net->n_params * sizeof *a);
    memcpy(a, net->params, net->n_params * sizeof *a);
    net_init_params(net, 7);
    EXPECT(memcmp(a, net->params, net->n_params * sizeof *a) == 0, "%s: same seed, other weights", name);
    net_init_params(net, 8);
    EXPECT(memcmp(a, net->params, net->n_params * sizeof *a) != 0, "%s: other seed, same weights", name);
    const Layer *l0 = &net->layers[0];
    /* Sample variance of N normals has relative sd sqrt(2/N): with N >= 20000
     * that is <= 1%, so the 10% bound fails only on a wrong scale. */
    if ((l0->kind == LAYER_LINEAR || l0->kind == LAYER_CONV) && l0->w_count >= 20000) {
        double s2 = 0;
        for (size_t k = 0; k < l0->w_count; k++) s2 += (double)l0->w[k] * l0->w[k];
        double fan_in = (double)(l0->w_count / l0->b_count);
        EXPECT_NEAR(s2 / (double)l0->w_count, 2.0 / fan_in, 0, 0.1, "He variance of layer 1");
    }
    for (size_t k = 0; k < l0->b_count; k++) EXPECT(l0->b[k] == 0.0f, "%s: bias not zero", name);
    free(a);

    /* Backward announces a growing prefix that ends at n_params. */
    float x[4 * 784];
    int32_t labels[4] = {0, 1, 2, 3};
    for (int i = 0; i < 4 * 784; i++) x[i] = (float)((i * 37) % 101) / 101.0f;
    ForwardCtx ctx = {.train = 1, .seed = 1};
    double loss = 0;
    size_t correct = 0;
    net_forward(net, x, labels, 4, &ctx, &loss, &correct);
    EXPECT(isfinite(loss) && loss > 0, "%s: loss %g", name, loss);
    ReadyLog log = {0};
    net_backward(net, x, labels, 4, 0.25f, on_ready, &log);
    EXPECT(!log.shrank, "%s: ready prefix shrank", name);
    EXPECT(log.last == net->n_params, "%s: ready ends at %zu, not %zu", name, log.last, net->n_params);
    EXPECT(log.calls == (size_t)with_params, "%s: %zu ready calls for %d layers", name, log.calls, with_params);
    net_destroy(net);
}

int main(void)
{
    check_model("mlp");
    check_model("cnn");
    check_model("cnn-small");
    check_model("conv:4:3:2:1,relu,pool:3:2,dropout:0.1,fc:7,relu,fc:10");

    /* An external gradient buffer is adopted, views follow it. */
    LayerSpec specs[4];
    int n;
    model_parse("fc:5,relu,fc:10", (Shape){3, 1, 1}, specs, 4, &n);
    Net *net = NULL;
    net_create(specs, n, (Shape){3, 1, 1}, 10, &ops_cpu, 2, &net);
    float *ext = calloc(net->n_params, sizeof *ext);
    net_bind_grads(net, ext);
    EXPECT(net->grads == ext && net->layers[0].dw == ext + net->layers[0].w_off, "external grads not used");
    net_destroy(net);
    free(ext);

    /* A last layer that is not fc:<classes> is refused. */
    model_parse("fc:5,relu,fc:3", (Shape){3, 1, 1}, specs, 4, &n);
    EXPECT(net_create(specs, n, (Shape){3, 1, 1}, 10, &ops_cpu, 2, &net) == 2, "wrong class count accepted");
    EXPECT(model_parse("conv:4:9:1:0,fc:10", (Shape){1, 5, 5}, specs, 4, &n) == 2, "oversized kernel accepted");
    return test_finish("test_net");
}
