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

static int bad(const char *tok, const char *why)
{
    return basin_error(BASIN_ERR_USAGE, "model: bad layer '%s': %s", tok, why);
}

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
    } else if (strcmp(kind, "pool") == 0) {
        l->kind = LAYER_MAXPOOL;
        if (nf < 2 || nf > 3) return bad(copy, "expected pool:K[:S]");
        if (parse_int(field[1], 0, &l->k)) return bad(copy, "window must be an integer >= 1");
        l->stride = l->k;
        if (nf > 2 && parse_int(field[2], 0, &l->stride)) return bad(copy, "stride must be an integer >= 1");
    } else if (strcmp(kind, "relu") == 0 || strcmp(kind, "flatten") == 0) {
        l->kind = kind[0] == 'r' ? LAYER_RELU : LAYER_FLATTEN;
        if (nf != 1) return bad(copy, "takes no arguments");
    } else if (strcmp(kind, "dropout") == 0) {
        l->kind = LAYER_DROPOUT;
        char *end;
        if (nf != 2) return bad(copy, "expected dropout:P");
        errno = 0;
        double p = strtod(field[1], &end);
        if (*end || errno || !(p >= 0.0 && p < 1.0)) return bad(copy, "P must be a number in [0, 1)");
        l->p = (float)p;
    } else {
        return bad(copy, "unknown layer kind (fc, conv, pool, relu, dropout, flatten) or model name "
                         "(mlp, cnn, cnn-small)");
    }
    return BASIN_OK;
}

int model_parse(const char *name_or_spec, LayerSpec *out, int cap, int *n)
{
    const char *spec = model_resolve(name_or_spec);
    *n = 0;
    size_t len = strlen(spec);
    if (len == 0) return basin_error(BASIN_ERR_USAGE, "model: empty model spec");
    char *buf = basin_malloc(len + 1);
    if (!buf) return BASIN_ERR_RUNTIME;
    memcpy(buf, spec, len + 1);
    int rc = BASIN_OK;
    /* Split on ',' by hand: strtok would skip empty tokens like "fc:10,,relu". */
    char *tok = buf;
    for (;;) {
        char *comma = strchr(tok, ',');
        if (comma) *comma = '\0';
        if (*n == cap) {
            rc = basin_error(BASIN_ERR_USAGE, "model: more than %d layers", cap);
            break;
        }
        if (strlen(tok) >= 100) {
            rc = basin_error(BASIN_ERR_USAGE, "model: layer %d is too long", *n + 1);
            break;
        }
        rc = parse_token(tok, &out[*n]);
        if (rc) break;
        (*n)++;
        if (!comma) break;
        tok = comma + 1;
    }
    free(buf);
    if (rc) *n = 0;
    return rc;
}
