/* Model specs: presets, syntax, defaults, and one clear error line naming
 * the offending token for each kind of mistake. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/net.h"
#include "models/models.h"
#include "testing.h"

static const Shape IN28 = {1, 28, 28};

/* Parse spec with stderr captured; returns the status, the message in msg. */
static int parse_capture(const char *spec, LayerSpec *out, int *n, char *msg, size_t len)
{
    fflush(stderr);
    int saved = dup(2);
    FILE *tmp = tmpfile();
    dup2(fileno(tmp), 2);
    int rc = model_parse(spec, IN28, out, MODEL_MAX_LAYERS, n);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(tmp);
    size_t got = fread(msg, 1, len - 1, tmp);
    msg[got] = '\0';
    fclose(tmp);
    return rc;
}

static void expect_bad(const char *spec, const char *token)
{
    LayerSpec l[MODEL_MAX_LAYERS];
    int n = -1;
    char msg[512];
    int rc = parse_capture(spec, l, &n, msg, sizeof msg);
    EXPECT(rc == 2, "'%s' accepted (rc %d)", spec, rc);
    EXPECT(strstr(msg, token) != NULL, "message for '%s' does not name '%s': %s", spec, token, msg);
    int lines = 0;
    for (const char *p = msg; *p; p++) lines += *p == '\n';
    EXPECT(lines == 1, "'%s': %d lines of error", spec, lines);
    EXPECT(n == 0, "'%s': layers reported after an error", spec);
}

int main(void)
{
    LayerSpec l[MODEL_MAX_LAYERS];
    int n = 0;
    EXPECT(model_parse("mlp", IN28, l, MODEL_MAX_LAYERS, &n) == 0 && n == 6, "mlp: n=%d", n);
    EXPECT(l[1].kind == LAYER_LINEAR && l[1].units == 1024 && l[5].units == 10, "mlp layers");
    EXPECT(model_parse("cnn", IN28, l, MODEL_MAX_LAYERS, &n) == 0 && n == 11, "cnn: n=%d", n);
    EXPECT(l[0].kind == LAYER_CONV && l[0].units == 32 && l[0].k == 5 && l[0].stride == 1 && l[0].pad == 2,
           "cnn conv defaults");
    EXPECT(l[2].kind == LAYER_MAXPOOL && l[2].k == 2 && l[2].stride == 2, "pool stride defaults to window");
    EXPECT(l[9].kind == LAYER_DROPOUT && l[9].p == 0.5f, "dropout p");
    EXPECT(model_parse("conv:8:3:2:0,pool:3:2,relu,fc:10", IN28, l, MODEL_MAX_LAYERS, &n) == 0 && n == 4, "explicit");
    EXPECT(l[0].stride == 2 && l[0].pad == 0 && l[1].k == 3 && l[1].stride == 2, "explicit fields");
    EXPECT(strcmp(model_resolve("cnn"), model_presets[1].spec) == 0, "resolve preset");
    EXPECT(strcmp(model_resolve("fc:10"), "fc:10") == 0, "resolve spec");

    /* Residual presets: parameter counts of the same networks built with
     * torch.nn (projection shortcuts, convs before bn without bias);
     * resnet50 is torchvision.models.resnet50's 25,557,032. */
    struct { const char *name; Shape in; size_t params; } nets[] = {
        {"resnet20", {1, 28, 28}, 272186}, {"resnet20", {3, 32, 32}, 272474},
        {"resnet56", {3, 32, 32}, 855770}, {"resnet50", {3, 224, 224}, 25557032},
    };
    for (size_t i = 0; i < sizeof nets / sizeof nets[0]; i++) {
        EXPECT(model_parse(nets[i].name, nets[i].in, l, MODEL_MAX_LAYERS, &n) == 0, "%s: parse", nets[i].name);
        size_t count = 0;
        EXPECT(net_param_count(l, n, nets[i].in, &count) == 0 && count == nets[i].params,
               "%s on %dx%dx%d: %zu parameters, expected %zu", nets[i].name, nets[i].in.c, nets[i].in.h,
               nets[i].in.w, count, nets[i].params);
    }
    /* A block's layout: body, projection conv (1x1, stride 2, no bias) + bn,
     * then add of the shortcut and the body's end; identity blocks add the
     * block's input. */
    EXPECT(model_parse("conv:4:3,basic:8:2,fc:10", IN28, l, MODEL_MAX_LAYERS, &n) == 0 && n == 11, "basic: n=%d", n);
    EXPECT(l[1].kind == LAYER_CONV && l[1].stride == 2 && l[1].no_bias && l[2].kind == LAYER_BATCHNORM,
           "basic: first conv");
    EXPECT(l[5].kind == LAYER_BATCHNORM && l[5].block_last, "basic: last bn marked");
    EXPECT(l[6].kind == LAYER_CONV && l[6].k == 1 && l[6].stride == 2 && l[6].no_bias && l[6].back == 5,
           "basic: projection reads the block input (back %d)", l[6].back);
    EXPECT(l[8].kind == LAYER_ADD && l[8].back == 0 && l[8].back2 == 2, "basic: add inputs %d %d", l[8].back,
           l[8].back2);
    EXPECT(l[9].kind == LAYER_RELU && l[10].kind == LAYER_LINEAR && !l[10].no_bias, "basic: tail");
    EXPECT(model_parse("conv:4:3,2*res(conv:4:3,bn:0.2:0.001),fc:10", IN28, l, MODEL_MAX_LAYERS, &n) == 0 && n == 8,
           "identity blocks: n=%d", n);
    EXPECT(l[3].kind == LAYER_ADD && l[3].back == 0 && l[3].back2 == 2 && l[6].back2 == 2, "identity add");
    EXPECT(l[2].bn_momentum == 0.2f && l[2].bn_eps == 0.001f, "bn options");
    EXPECT(model_parse("conv:4:3,bn,fc:10", IN28, l, MODEL_MAX_LAYERS, &n) == 0 && l[1].bn_momentum == 0.1f &&
           l[1].bn_eps == 1e-5f && l[0].no_bias, "bn defaults");

    expect_bad("conv:4:3,res(),fc:10", "res()");
    expect_bad("conv:4:3,res(conv:4:3,fc:10", "closing");
    expect_bad("conv:4:3,relu),fc:10", "')'");
    expect_bad("conv:4:3,res(conv:4:3:1:0),fc:10", "no 1x1 projection");
    expect_bad("conv:4:31:1:0,fc:10", "does not fit");
    expect_bad("conv:4:3:64:0,conv:4:3:1:0,fc:10", "does not fit");
    expect_bad("basic:0", "basic:0");
    expect_bad("basic:4:2:1", "basic:4:2:1");
    expect_bad("0*relu,fc:10", "repeat");
    expect_bad("bn:0,fc:10", "bn:0");
    expect_bad("bn:0.1:2,fc:10", "bn:0.1:2");
    expect_bad("avgpool:2:2:3", "avgpool:2:2:3");
    expect_bad("relu(fc:3)", "only res(");
    expect_bad("fc:10,relu,bogus:3", "bogus:3");
    expect_bad("fc:0", "fc:0");
    expect_bad("fc:ten", "fc:ten");
    expect_bad("fc", "fc");
    expect_bad("conv:32", "conv:32");
    expect_bad("conv:32:5:0", "conv:32:5:0");
    expect_bad("conv:32:3:1:3", "conv:32:3:1:3");
    expect_bad("pool:2:2:2", "pool:2:2:2");
    expect_bad("dropout:1.0", "dropout:1.0");
    expect_bad("dropout:-0.1", "dropout:-0.1");
    expect_bad("relu:2", "relu:2");
    expect_bad("fc:10,,relu", "''");
    expect_bad("", "empty");
    expect_bad("mlpp", "mlpp");
    return test_finish("test_models");
}
