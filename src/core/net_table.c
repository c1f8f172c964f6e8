/* The layer table of a network as JSON text (net_table.h). One layer a
 * line, so that the text is readable in h5dump as well as by programs. */
#include "core/net_table.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} Text;

static void put(Text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(Text *t, const char *fmt, ...)
{
    if (t->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = t->cap - t->len;
        int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? room : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
            return;
        }
        if (t->buf && (size_t)n < room) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? 2 * t->cap : 4096;
        while (cap - t->len <= (size_t)n) cap *= 2;
        char *grown = realloc(t->buf, cap);
        if (!grown) {
            t->failed = 1;
            return;
        }
        t->buf = grown;
        t->cap = cap;
    }
}

/* The shortest decimal text that reads back as exactly f (a float32). */
static void put_float(Text *t, float f)
{
    char s[32];
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(s, sizeof s, "%.*g", digits, (double)f);
        if (strtof(s, NULL) == f) break;
    }
    put(t, "%s", s);
}

static void put_shape(Text *t, Shape s) { put(t, "[%d, %d, %d]", s.c, s.h, s.w); }

/* One tensor: name, shape (dims values), offset and count in its buffer. */
static void put_tensor(Text *t, int first, const char *name, const int *dims, int n_dims, size_t off, size_t count)
{
    put(t, "%s{\"name\": \"%s\", \"shape\": [", first ? "" : ", ", name);
    for (int i = 0; i < n_dims; i++) put(t, "%s%d", i ? ", " : "", dims[i]);
    put(t, "], \"offset\": %zu, \"count\": %zu}", off, count);
}

/* The kind's hyper-parameters, after its "out_shape". */
static int put_hyper(Text *t, const Layer *l)
{
    const LayerSpec *s = &l->spec;
    switch (l->kind) {
    case LAYER_LINEAR:
        put(t, ", \"units\": %d, \"bias\": %s", s->units, l->b_count ? "true" : "false");
        return BASIN_OK;
    case LAYER_CONV:
        put(t, ", \"units\": %d, \"kernel\": %d, \"stride\": %d, \"padding\": %d, \"bias\": %s", s->units,
            l->win.kh, l->win.stride, l->win.pad, l->b_count ? "true" : "false");
        return BASIN_OK;
    case LAYER_MAXPOOL:
        put(t, ", \"kernel\": %d, \"stride\": %d, \"padding\": %d", l->win.kh, l->win.stride, l->win.pad);
        return BASIN_OK;
    case LAYER_AVGPOOL:
        put(t, ", \"kernel\": %d, \"stride\": %d, \"padding\": %d, \"count_include_pad\": true", l->win.kh,
            l->win.stride, l->win.pad);
        return BASIN_OK;
    case LAYER_DROPOUT:
        put(t, ", \"p\": ");
        put_float(t, s->p);
        return BASIN_OK;
    case LAYER_BATCHNORM:
        put(t, ", \"momentum\": ");
        put_float(t, s->bn_momentum);
        put(t, ", \"eps\": ");
        put_float(t, s->bn_eps);
        return BASIN_OK;
    case LAYER_RELU:
    case LAYER_FLATTEN:
    case LAYER_ADD:
    case LAYER_GAP:
        return BASIN_OK;
    }
    return basin_error(BASIN_ERR_RUNTIME, "layer table: layer %d has a kind (%d) it cannot describe", l->index + 1,
                       (int)l->kind);
}

/* The layer's tensors in /params: the weights (gamma for bn), then the bias
 * (beta), as stored. */
static void put_params(Text *t, const Layer *l)
{
    int dims[4], n = 0;
    if (l->kind == LAYER_LINEAR) {
        dims[0] = l->spec.units, dims[1] = (int)shape_size(l->in), n = 2;
    } else if (l->kind == LAYER_CONV) {
        dims[0] = l->spec.units, dims[1] = l->in.c, dims[2] = l->win.kh, dims[3] = l->win.kw, n = 4;
    } else {
        dims[0] = (int)l->w_count, n = 1; /* bn: (C) */
    }
    int first = 1;
    if (l->w_count) {
        put_tensor(t, first, "weight", dims, n, l->w_off, l->w_count);
        first = 0;
    }
    if (l->b_count) {
        int c = (int)l->b_count;
        put_tensor(t, first, "bias", &c, 1, l->b_off, l->b_count);
    }
}

/* Batch norm's state in /state: the running mean, then the running
 * variance, (C) each. */
static void put_state(Text *t, const Layer *l)
{
    if (!l->s_count) return;
    int c = (int)(l->s_count / 2);
    put_tensor(t, 1, "running_mean", &c, 1, l->s_off, (size_t)c);
    put_tensor(t, 0, "running_var", &c, 1, l->s_off + (size_t)c, (size_t)c);
}

char *net_layer_table(const Net *net)
{
    Text t = {0};
    put(&t, "{\"table_version\": %d, \"input_shape\": ", NET_TABLE_VERSION);
    put_shape(&t, net->in);
    put(&t, ", \"classes\": %d, \"n_params\": %zu, \"n_state\": %zu, \"layers\": [\n", net->classes, net->n_params,
        net->n_state);
    for (int i = 0; i < net->n_layers; i++) {
        const Layer *l = &net->layers[i];
        put(&t, "{\"index\": %d, \"kind\": \"%s\", \"inputs\": [%d", l->index, layer_kind_name(l->kind), l->src);
        if (l->kind == LAYER_ADD) put(&t, ", %d", l->src2);
        put(&t, "], \"in_shape\": ");
        put_shape(&t, l->in);
        put(&t, ", \"out_shape\": ");
        put_shape(&t, l->out);
        if (put_hyper(&t, l)) {
            free(t.buf);
            return NULL;
        }
        put(&t, ", \"params\": [");
        put_params(&t, l);
        put(&t, "], \"state\": [");
        put_state(&t, l);
        put(&t, "]}%s\n", i + 1 < net->n_layers ? "," : "");
    }
    put(&t, "]}\n");
    if (t.failed) {
        free(t.buf);
        basin_error(BASIN_ERR_RUNTIME, "out of memory writing the layer table");
        return NULL;
    }
    return t.buf;
}
