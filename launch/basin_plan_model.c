/* basin-plan-model: the layer table basin-plan works from, computed by
 * basin's own model code (model_parse, net_create, layer_forward_macs).
 *
 *   basin-plan-model --model NAME|SPEC [--input CxHxW] [--classes N]
 *
 * Prints one JSON object: the model, the input shape, n_params, and per
 * layer (in forward order) its kind, forward multiply-adds per sample, the
 * parameter count (weights + biases), the end of its parameters in the flat
 * gradient buffer (b_off + b_count: what backward reports as ready after the
 * layer; the buffer holds the last layer first), and whether backward
 * computes the gradient with respect to its input. Bad input: one line, exit 2.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/net.h"
#include "core/ops.h"
#include "models/models.h"

static int parse_shape(const char *s, Shape *out)
{
    int c, h, w;
    char tail;
    if (sscanf(s, "%dx%dx%d%c", &c, &h, &w, &tail) != 3 || c < 1 || h < 1 || w < 1 || c > 65536 || h > 65536 ||
        w > 65536)
        return -1;
    *out = (Shape){c, h, w};
    return 0;
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') putchar('\\');
        if ((unsigned char)*s < 0x20) continue;
        putchar(*s);
    }
    putchar('"');
}

int main(int argc, char **argv)
{
    const char *model = NULL;
    Shape in = {1, 28, 28};
    int classes = 10, classes_set = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help")) {
            printf("usage: basin-plan-model --model NAME|SPEC [--input CxHxW] [--classes N]\n");
            return 0;
        }
        if (!v) return basin_error(BASIN_ERR_USAGE, "basin-plan-model: %s needs a value", a), 2;
        if (!strcmp(a, "--model")) {
            model = v;
        } else if (!strcmp(a, "--input")) {
            if (parse_shape(v, &in))
                return basin_error(BASIN_ERR_USAGE, "basin-plan-model: --input wants CxHxW, not '%s'", v), 2;
        } else if (!strcmp(a, "--classes")) {
            char *end;
            long k = strtol(v, &end, 10);
            if (*end || k < 1 || k > 1000000)
                return basin_error(BASIN_ERR_USAGE, "basin-plan-model: --classes wants a positive integer, not '%s'",
                                   v),
                       2;
            classes = (int)k;
            classes_set = 1;
        } else {
            return basin_error(BASIN_ERR_USAGE, "basin-plan-model: unknown option %s", a), 2;
        }
        i++;
    }
    if (!model) return basin_error(BASIN_ERR_USAGE, "basin-plan-model: --model is required"), 2;
    if (!strcmp(model, "resnet50")) {
        /* The ImageNet network: its input and classes unless given. */
        if (in.c == 1 && in.h == 28 && in.w == 28) in = (Shape){3, 224, 224};
        if (!classes_set) classes = 1000;
    }
    LayerSpec specs[MODEL_MAX_LAYERS];
    int n = 0;
    if (model_parse(model, in, specs, MODEL_MAX_LAYERS, &n)) return 2;
    Net *net = NULL;
    int rc = net_create(specs, n, in, classes, &ops_cpu, 1, &net);
    if (rc) return rc == BASIN_ERR_USAGE ? 2 : 1;
    printf("{\"model\": ");
    json_str(model);
    printf(", \"input\": [%d, %d, %d], \"classes\": %d, \"n_params\": %zu, \"forward_macs\": %.0f,\n \"layers\": [",
           in.c, in.h, in.w, classes, net->n_params, net_forward_macs(net));
    for (int i = 0; i < net->n_layers; i++) {
        const Layer *l = &net->layers[i];
        printf("%s\n  {\"index\": %d, \"kind\": ", i ? "," : "", i);
        json_str(layer_kind_name(l->kind));
        printf(", \"macs\": %.0f, \"params\": %zu, \"ready\": %zu, \"need_dx\": %d, \"out\": %zu}",
               layer_forward_macs(l), (size_t)(l->w_count + l->b_count), (size_t)(l->b_off + l->b_count),
               l->need_dx, (size_t)l->out.c * l->out.h * l->out.w);
    }
    printf("\n]}\n");
    net_destroy(net);
    return 0;
}
