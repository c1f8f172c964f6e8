/* One training-mode forward and backward of a network, written out for the
 * PyTorch comparison (torch_compare.py): the layer table, the parameters,
 * the input and labels, and then the logits, the loss, the parameter
 * gradients and the batch-norm running statistics after the step.
 *
 *   torch_dump SPEC CxHxW BATCH CLASSES DIR
 *
 * Files in DIR: layers.txt (one line per layer: index kind src src2 in_c
 * in_h in_w out_c out_h out_w units k stride pad w_off w_count b_off b_count
 * s_off s_count bn_momentum bn_eps), and float32 little-endian arrays
 * params.bin, x.bin, labels.bin (int32), logits.bin, grads.bin,
 * state0.bin (before), state.bin (after), loss.txt, and relu<I>.bin, the
 * forward output of each relu layer I (which side of the kink basin took). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/net.h"
#include "core/rng.h"
#include "models/models.h"

static int write_file(const char *dir, const char *name, const void *p, size_t bytes)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, bytes, f) != bytes || fclose(f)) {
        fprintf(stderr, "torch_dump: cannot write %s\n", path);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s SPEC CxHxW BATCH CLASSES DIR\n", argv[0]);
        return 2;
    }
    Shape in;
    if (sscanf(argv[2], "%dx%dx%d", &in.c, &in.h, &in.w) != 3) return 2;
    size_t n = (size_t)atol(argv[3]);
    int classes = atoi(argv[4]);
    const char *dir = argv[5];
    LayerSpec *specs = calloc(MODEL_MAX_LAYERS, sizeof *specs);
    int nl = 0;
    Net *net = NULL;
    if (!specs || model_parse(argv[1], in, specs, MODEL_MAX_LAYERS, &nl) ||
        net_create(specs, nl, in, classes, &ops_cpu, n, &net) || net_init_params(net, 5))
        return 1;
    /* Batch norm away from the identity, running statistics away from
     * (0, 1), so that every term is exercised. */
    for (int i = 0; i < nl; i++) {
        Layer *l = &net->layers[i];
        if (l->kind != LAYER_BATCHNORM) continue;
        for (size_t k = 0; k < l->w_count; k++) {
            l->w[k] = 0.5f + rng_uniform(9, 1, l->w_off + k);
            l->b[k] = rng_uniform(9, 2, l->b_off + k) - 0.5f;
        }
        for (size_t k = 0; k < l->s_count; k++) l->state[k] = 0.5f + rng_uniform(9, 3, l->s_off + k);
    }
    size_t nx = n * shape_size(in);
    float *x = malloc(nx * sizeof *x);
    int32_t *labels = malloc(n * sizeof *labels);
    for (size_t i = 0; i < nx; i++) x[i] = 2.0f * rng_uniform(9, 4, i) - 1.0f;
    for (size_t i = 0; i < n; i++) labels[i] = (int32_t)(i % (size_t)classes);

    char path[4096];
    snprintf(path, sizeof path, "%s/layers.txt", dir);
    FILE *f = fopen(path, "w");
    if (!f) return 1;
    for (int i = 0; i < nl; i++) {
        const Layer *l = &net->layers[i];
        fprintf(f, "%d %s %d %d %d %d %d %d %d %d %d %d %d %d %zu %zu %zu %zu %zu %zu %.9g %.9g\n", i,
                layer_kind_name(l->kind), l->src, l->src2, l->in.c, l->in.h, l->in.w, l->out.c, l->out.h,
                l->out.w, l->spec.units, l->spec.k, l->spec.stride, l->spec.pad, l->w_off, l->w_count, l->b_off,
                l->b_count, l->s_off, l->s_count, (double)l->spec.bn_momentum, (double)l->spec.bn_eps);
    }
    if (fclose(f)) return 1;
    int rc = write_file(dir, "params.bin", net->params, net->n_params * sizeof(float)) ||
             write_file(dir, "state0.bin", net->state, net->n_state * sizeof(float)) ||
             write_file(dir, "x.bin", x, nx * sizeof(float)) ||
             write_file(dir, "labels.bin", labels, n * sizeof(int32_t));

    ForwardCtx ctx = {.train = 1, .seed = 1};
    double loss = 0;
    size_t correct = 0;
    net_forward(net, x, labels, n, &ctx, &loss, &correct);
    rc = rc || write_file(dir, "logits.bin", net->act[nl - 1], n * (size_t)classes * sizeof(float));
    for (int i = 0; i < nl && !rc; i++) {
        const Layer *l = &net->layers[i];
        if (l->kind != LAYER_RELU) continue;
        char name[64];
        snprintf(name, sizeof name, "relu%d.bin", i);
        rc = write_file(dir, name, net->act[i], n * shape_size(l->out) * sizeof(float));
    }
    net_backward(net, x, labels, n, 1.0f / (float)n, NULL, NULL);
    rc = rc || write_file(dir, "grads.bin", net->grads, net->n_params * sizeof(float)) ||
         write_file(dir, "state.bin", net->state, net->n_state * sizeof(float));
    snprintf(path, sizeof path, "%s/loss.txt", dir);
    f = fopen(path, "w");
    if (!f || fprintf(f, "%.17g\n", loss / (double)n) < 0 || fclose(f)) rc = 1;
    net_destroy(net);
    free(specs), free(x), free(labels);
    return rc;
}
