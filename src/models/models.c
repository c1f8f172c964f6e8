#include "models/models.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

const ModelPreset model_presets[] = {
    {"mlp", "flatten,fc:1024,relu,fc:1024,relu,fc:10",
     "multi-layer perceptron 784-1024-1024-10"},
    {"cnn", "conv:32:5,relu,pool:2,conv:64:5,relu,pool:2,flatten,fc:1024,relu,dropout:0.5,fc:10",
     "two 5x5 conv + 2x2 max-pool blocks (32, 64 channels), fc 1024, dropout 0.5"},
    {"cnn-small", "conv:16:5,relu,pool:2,conv:32:5,relu,pool:2,flatten,fc:256,relu,fc:10",
     "a quarter of cnn's arithmetic: 16 and 32 channels, fc 256"},
    {"resnet20", "conv:16:3,bn,relu,3*basic:16,basic:32:2,2*basic:32,basic:64:2,2*basic:64,gap,fc:10",
     "He et al. 2016 CIFAR ResNet-20: 3 stages of 3 basic blocks, 16/32/64 channels"},
    {"resnet56", "conv:16:3,bn,relu,9*basic:16,basic:32:2,8*basic:32,basic:64:2,8*basic:64,gap,fc:10",
     "He et al. 2016 CIFAR ResNet-56: 3 stages of 9 basic blocks, 16/32/64 channels"},
    {"resnet50",
     "conv:64:7:2:3,bn,relu,pool:3:2:1,3*bottleneck:64,bottleneck:128:2,3*bottleneck:128,"
     "bottleneck:256:2,5*bottleneck:256,bottleneck:512:2,2*bottleneck:512,gap,fc:1000",
     "He et al. 2016 ImageNet ResNet-50 (torchvision's layout: stride on the 3x3 conv), "
     "1000 classes"},
    {NULL, NULL, NULL},
};

const char *model_resolve(const char *name_or_spec)
{
    for (const ModelPreset *p = model_presets; p->name; p++)
        if (strcmp(p->name, name_or_spec) == 0) return p->spec;
    return name_or_spec;
}

/* Parse a strictly positive (or non-negative when allow_zero) int field. */
static int parse_int(const char *s, int allow_zero, int *out)
{
    if (!*s) return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*end || errno || v < (allow_zero ? 0 : 1) || v > 1 << 20) return -1;
    *out = (int)v;
    return 0;
}

static int parse_float(const char *s, double lo, double hi, float *out)
{
    if (!*s) return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || errno || !(v >= lo && v < hi)) return -1;
    *out = (float)v;
    return 0;
}

static int bad(const char *tok, const char *why)
{
    return basin_error(BASIN_ERR_USAGE, "model: bad layer '%s': %s", tok, why);
}

static const char *const kinds_text =
    "fc, conv, pool, avgpool, gap, bn, relu, dropout, flatten, res(...), basic, bottleneck";

/* One plain layer token (no blocks), fields split on ':'. */
static int parse_token(char *tok, LayerSpec *l)
{
    char copy[128];
    snprintf(copy, sizeof copy, "%s", tok);
    char *field[6] = {0};
    int nf = 0;
    for (char *save = NULL, *f = strtok_r(tok, ":", &save); f; f = strtok_r(NULL, ":", &save)) {
        if (nf == 6) return bad(copy, "too many fields");
        field[nf++] = f;
    }
    if (nf == 0) return bad(copy, "empty layer");
    memset(l, 0, sizeof *l);
    const char *kind = field[0];
    if (strcmp(kind, "fc") == 0) {
        l->kind = LAYER_LINEAR;
        if (nf != 2 || parse_int(field[1], 0, &l->units)) return bad(copy, "expected fc:N with N >= 1");
    } else if (strcmp(kind, "conv") == 0) {
        l->kind = LAYER_CONV;
        if (nf < 3 || nf > 5) return bad(copy, "expected conv:C:K[:S[:P]]");
        if (parse_int(field[1], 0, &l->units)) return bad(copy, "channels must be an integer >= 1");
        if (parse_int(field[2], 0, &l->k)) return bad(copy, "kernel size must be an integer >= 1");
        l->stride = 1;
        l->pad = (l->k - 1) / 2;
        if (nf > 3 && parse_int(field[3], 0, &l->stride)) return bad(copy, "stride must be an integer >= 1");
        if (nf > 4 && parse_int(field[4], 1, &l->pad)) return bad(copy, "padding must be an integer >= 0");
        if (l->pad >= l->k) return bad(copy, "padding must be smaller than the kernel");
    } else if (strcmp(kind, "pool") == 0 || strcmp(kind, "avgpool") == 0) {
        l->kind = kind[0] == 'p' ? LAYER_MAXPOOL : LAYER_AVGPOOL;
        if (nf < 2 || nf > 4) return bad(copy, "expected pool:K[:S[:P]] or avgpool:K[:S[:P]]");
        if (parse_int(field[1], 0, &l->k)) return bad(copy, "window must be an integer >= 1");
        l->stride = l->k;
        if (nf > 2 && parse_int(field[2], 0, &l->stride)) return bad(copy, "stride must be an integer >= 1");
        if (nf > 3 && parse_int(field[3], 1, &l->pad)) return bad(copy, "padding must be an integer >= 0");
        if (2 * l->pad > l->k) return bad(copy, "padding must be at most half the window");
    } else if (strcmp(kind, "relu") == 0 || strcmp(kind, "flatten") == 0 || strcmp(kind, "gap") == 0) {
        l->kind = kind[0] == 'r' ? LAYER_RELU : kind[0] == 'f' ? LAYER_FLATTEN : LAYER_GAP;
        if (nf != 1) return bad(copy, "takes no arguments");
    } else if (strcmp(kind, "bn") == 0) {
        l->kind = LAYER_BATCHNORM;
        if (nf > 3) return bad(copy, "expected bn[:MOMENTUM[:EPS]]");
        if (nf > 1 && parse_float(field[1], 1e-9, 1.0 + 1e-9, &l->bn_momentum))
            return bad(copy, "momentum must be a number in (0, 1]");
        if (nf > 2 && parse_float(field[2], 1e-30, 1.0, &l->bn_eps))
            return bad(copy, "epsilon must be a number in (0, 1)");
    } else if (strcmp(kind, "dropout") == 0) {
        l->kind = LAYER_DROPOUT;
        if (nf != 2 || parse_float(field[1], 0.0, 1.0, &l->p)) return bad(copy, "expected dropout:P with P in [0, 1)");
    } else {
        char why[256];
        snprintf(why, sizeof why, "unknown layer kind (%s) or model name (", kinds_text);
        size_t used = strlen(why);
        for (const ModelPreset *p = model_presets; p->name && used < sizeof why; p++) {
            snprintf(why + used, sizeof why - used, "%s%s", p == model_presets ? "" : ", ", p->name);
            used = strlen(why);
        }
        if (used < sizeof why - 1) why[used++] = ')', why[used] = '\0';
        return bad(copy, why);
    }
    return BASIN_OK;
}

/* The spec being built: layers so far and each one's output shape. */
typedef struct {
    LayerSpec *out;
    Shape *shape;
    int cap, n, depth;
    Shape in;
} Builder;

static Shape shape_of(const Builder *b, int i) { return i < 0 ? b->in : b->shape[i]; }

/* Append l, its input `back` layers before the previous one. */
static int emit(Builder *b, const LayerSpec *l)
{
    if (b->n == b->cap) return basin_error(BASIN_ERR_USAGE, "model: more than %d layers", b->cap);
    Layer tmp;
    int src = b->n - 1 - l->back;
    TRY(layer_setup(&tmp, b->n, l, shape_of(b, src)));
    b->out[b->n] = tmp.spec;
    b->shape[b->n] = tmp.out;
    b->n++;
    return BASIN_OK;
}

static int parse_seq(Builder *b, const char **p, char end);

/* A layer `kind` with no input other than the previous one. */
static int emit_simple(Builder *b, LayerKind kind)
{
    LayerSpec l = {.kind = kind};
    return emit(b, &l);
}

/* res(BODY): out = BODY(x) + shortcut(x), where the shortcut is x itself
 * when BODY keeps its shape, else a 1x1 convolution (no bias) and batch
 * norm with the stride that maps x's size onto BODY's. *p is past "res(". */
static int parse_block(Builder *b, const char **p)
{
    int block_in = b->n - 1;
    Shape x = shape_of(b, block_in);
    int first = b->n;
    if (**p == ')') return basin_error(BASIN_ERR_USAGE, "model: res() needs at least one layer");
    if (++b->depth > 8) return basin_error(BASIN_ERR_USAGE, "model: blocks nested more than 8 deep");
    TRY(parse_seq(b, p, ')'));
    b->depth--;
    if (b->n == first) return basin_error(BASIN_ERR_USAGE, "model: res() needs at least one layer");
    int body = b->n - 1;
    for (int i = body; i >= first; i--)
        if (b->out[i].kind == LAYER_BATCHNORM) {
            b->out[i].block_last = 1;
            break;
        }
    Shape y = b->shape[body];
    LayerSpec add = {.kind = LAYER_ADD};
    if (x.c == y.c && x.h == y.h && x.w == y.w) {
        add.back2 = b->n - 1 - block_in;
        return emit(b, &add);
    }
    int stride = 0;
    for (int s = 1; s <= x.h && s <= x.w && !stride; s++)
        if (window_out(x.h, 1, s, 0) == y.h && window_out(x.w, 1, s, 0) == y.w) stride = s;
    if (!stride)
        return basin_error(BASIN_ERR_USAGE,
                           "model: the residual block of layers %d-%d turns %dx%dx%d into %dx%dx%d, "
                           "which no 1x1 projection shortcut can match",
                           first + 1, body + 1, x.c, x.h, x.w, y.c, y.h, y.w);
    LayerSpec proj = {.kind = LAYER_CONV, .units = y.c, .k = 1, .stride = stride, .pad = 0,
                      .no_bias = 1, .back = b->n - 1 - block_in};
    TRY(emit(b, &proj));
    TRY(emit_simple(b, LAYER_BATCHNORM));
    add.back2 = b->n - 1 - body;
    return emit(b, &add);
}

/* Expand a named block into its layers (the README's grammar). */
static int parse_macro(Builder *b, const char *tok, int *done)
{
    char kind[32];
    int c = 0, s = 1;
    char extra;
    *done = 0;
    int got = sscanf(tok, "%31[a-z]:%d:%d%c", kind, &c, &s, &extra);
    if (got < 1 || (strcmp(kind, "basic") && strcmp(kind, "bottleneck"))) return BASIN_OK;
    *done = 1;
    if (got < 2 || got > 3 || c < 1 || c > 1 << 16 || s < 1 || s > 64)
        return bad(tok, "expected basic:C[:S] or bottleneck:C[:S] (C channels, S stride)");
    /* the token must be exactly kind:C or kind:C:S */
    char canon[64];
    if (got == 2) snprintf(canon, sizeof canon, "%s:%d", kind, c);
    else snprintf(canon, sizeof canon, "%s:%d:%d", kind, c, s);
    if (strcmp(canon, tok)) return bad(tok, "expected basic:C[:S] or bottleneck:C[:S] (C channels, S stride)");
    char body[256];
    if (kind[1] == 'a')
        snprintf(body, sizeof body, "res(conv:%d:3:%d,bn,relu,conv:%d:3,bn),relu", c, s, c);
    else
        snprintf(body, sizeof body, "res(conv:%d:1,bn,relu,conv:%d:3:%d,bn,relu,conv:%d:1,bn),relu", c, c,
                 s, 4 * c);
    const char *q = body;
    return parse_seq(b, &q, '\0');
}

/* One item: [N*]layer, [N*]res(...), [N*]basic/bottleneck. */
static int parse_item(Builder *b, const char **p)
{
    const char *q = *p;
    int repeat = 1;
    const char *star = q;
    while (*star >= '0' && *star <= '9') star++;
    if (star > q && *star == '*') {
        char num[16];
        size_t len = (size_t)(star - q);
        if (len >= sizeof num) return basin_error(BASIN_ERR_USAGE, "model: repeat count too long");
        memcpy(num, q, len);
        num[len] = '\0';
        if (parse_int(num, 0, &repeat) || repeat > 1000)
            return basin_error(BASIN_ERR_USAGE, "model: bad repeat count '%s'", num);
        q = star + 1;
    }
    const char *item = q;
    const char *after = NULL;
    for (int r = 0; r < repeat; r++) {
        q = item;
        if (strncmp(q, "res(", 4) == 0) {
            q += 4;
            TRY(parse_block(b, &q));
            if (*q != ')') return basin_error(BASIN_ERR_USAGE, "model: res( without its closing parenthesis");
            q++;
        } else {
            size_t len = strcspn(q, ",()");
            if (q[len] == '(')
                return basin_error(BASIN_ERR_USAGE, "model: '(' after '%.*s': only res( opens a block",
                                   (int)(len > 60 ? 60 : len), q);
            if (len >= 100) return basin_error(BASIN_ERR_USAGE, "model: layer %d is too long", b->n + 1);
            char tok[128];
            memcpy(tok, q, len);
            tok[len] = '\0';
            q += len;
            int done = 0;
            TRY(parse_macro(b, tok, &done));
            if (!done) {
                LayerSpec l;
                TRY(parse_token(tok, &l));
                TRY(emit(b, &l));
            }
        }
        after = q;
    }
    *p = after;
    return BASIN_OK;
}

/* Items separated by ',' up to `end` ('\0' or ')'), which is not consumed. */
static int parse_seq(Builder *b, const char **p, char end)
{
    for (;;) {
        if (**p == end || **p == ',' || (**p == ')' && end != ')'))
            return basin_error(BASIN_ERR_USAGE, "model: bad layer '': an empty item at layer %d%s", b->n + 1,
                               **p == ')' ? " (or an unmatched ')')" : "");
        TRY(parse_item(b, p));
        if (**p == ',') {
            (*p)++;
            continue;
        }
        if (**p == end) return BASIN_OK;
        if (**p == ')') return basin_error(BASIN_ERR_USAGE, "model: unmatched ')' after layer %d", b->n);
        return basin_error(BASIN_ERR_USAGE, "model: res( without its closing parenthesis");
    }
}

int model_parse(const char *name_or_spec, Shape in, LayerSpec *out, int cap, int *n)
{
    const char *spec = model_resolve(name_or_spec);
    *n = 0;
    if (strlen(spec) == 0) return basin_error(BASIN_ERR_USAGE, "model: empty model spec");
    Builder b = {.out = out, .cap = cap, .in = in};
    b.shape = basin_calloc((size_t)cap, sizeof *b.shape);
    if (!b.shape) return BASIN_ERR_RUNTIME;
    const char *p = spec;
    int rc = parse_seq(&b, &p, '\0');
    free(b.shape);
    if (rc) return rc;
    /* A conv or fc whose output goes straight into batch norm needs no bias:
     * bn subtracts the mean. */
    for (int i = 0; i + 1 < b.n; i++)
        if ((out[i].kind == LAYER_CONV || out[i].kind == LAYER_LINEAR) &&
            out[i + 1].kind == LAYER_BATCHNORM && out[i + 1].back == 0)
            out[i].no_bias = 1;
    *n = b.n;
    return BASIN_OK;
}
