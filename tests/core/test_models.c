/* Model specs: presets, syntax, defaults, and one clear error line naming
 * the offending token for each kind of mistake. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "models/models.h"
#include "testing.h"

/* Parse spec with stderr captured; returns the status, the message in msg. */
static int parse_capture(const char *spec, LayerSpec *out, int *n, char *msg, size_t len)
{
    fflush(stderr);
    int saved = dup(2);
    FILE *tmp = tmpfile();
    dup2(fileno(tmp), 2);
    int rc = model_parse(spec, out, MODEL_MAX_LAYERS, n);
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
    EXPECT(model_parse("mlp", l, MODEL_MAX_LAYERS, &n) == 0 && n == 6, "mlp: n=%d", n);
    EXPECT(l[1].kind == LAYER_LINEAR && l[1].units == 1024 && l[5].units == 10, "mlp layers");
    EXPECT(model_parse("cnn", l, MODEL_MAX_LAYERS, &n) == 0 && n == 11, "cnn: n=%d", n);
    EXPECT(l[0].kind == LAYER_CONV && l[0].units == 32 && l[0].k == 5 && l[0].stride == 1 && l[0].pad == 2,
           "cnn conv defaults");
    EXPECT(l[2].kind == LAYER_MAXPOOL && l[2].k == 2 && l[2].stride == 2, "pool stride defaults to window");
    EXPECT(l[9].kind == LAYER_DROPOUT && l[9].p == 0.5f, "dropout p");
    EXPECT(model_parse("conv:8:3:2:0,pool:3:2,relu,fc:10", l, MODEL_MAX_LAYERS, &n) == 0 && n == 4, "explicit");
    EXPECT(l[0].stride == 2 && l[0].pad == 0 && l[1].k == 3 && l[1].stride == 2, "explicit fields");
    EXPECT(strcmp(model_resolve("cnn"), model_presets[1].spec) == 0, "resolve preset");
    EXPECT(strcmp(model_resolve("fc:10"), "fc:10") == 0, "resolve spec");

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
