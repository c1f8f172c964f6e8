/* Learning-rate schedules at their defining points, and the SGD step over
 * flat buffers: weight decay on weights only, any split into slices equal to
 * one step over everything. The per-element formula itself is checked
 * against a double reference in test_ops. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/optim.h"
#include "models/models.h"
#include "testing.h"

int main(void)
{
    Schedule c = {SCHEDULE_CONSTANT, 0.1, 0, 100, 0, 0.1};
    EXPECT_NEAR(schedule_lr(&c, 0), 0.1, 0, 1e-12, "constant");
    EXPECT_NEAR(schedule_lr(&c, 99), 0.1, 0, 1e-12, "constant end");
    Schedule w = {SCHEDULE_CONSTANT, 0.4, 4, 100, 0, 0.1};
    EXPECT_NEAR(schedule_lr(&w, 0), 0.1, 0, 1e-12, "warm-up step 0");
    EXPECT_NEAR(schedule_lr(&w, 1), 0.2, 0, 1e-12, "warm-up step 1");
    EXPECT_NEAR(schedule_lr(&w, 3), 0.4, 0, 1e-12, "warm-up end");
    EXPECT_NEAR(schedule_lr(&w, 50), 0.4, 0, 1e-12, "after warm-up");
    Schedule s = {SCHEDULE_STEP, 1.0, 0, 100, 10, 0.5};
    EXPECT_NEAR(schedule_lr(&s, 9), 1.0, 0, 1e-12, "step before");
    EXPECT_NEAR(schedule_lr(&s, 10), 0.5, 0, 1e-12, "step 1");
    EXPECT_NEAR(schedule_lr(&s, 35), 0.125, 0, 1e-12, "step 3");
    Schedule k = {SCHEDULE_COSINE, 2.0, 10, 110, 0, 0};
    EXPECT_NEAR(schedule_lr(&k, 9), 2.0, 0, 1e-12, "cosine after warm-up");
    EXPECT_NEAR(schedule_lr(&k, 10), 2.0, 0, 1e-12, "cosine start");
    EXPECT_NEAR(schedule_lr(&k, 60), 1.0, 0, 1e-12, "cosine middle");
    EXPECT_NEAR(schedule_lr(&k, 110), 0.0, 1e-12, 0, "cosine end");
    for (uint64_t t = 10; t < 110; t++)
        EXPECT(schedule_lr(&k, t + 1) <= schedule_lr(&k, t), "cosine rises at %llu", (unsigned long long)t);

    LayerSpec specs[8];
    int n;
    model_parse("fc:7,relu,fc:10", (Shape){5, 1, 1}, specs, 8, &n);
    Net *a = NULL, *b = NULL;
    net_create(specs, n, (Shape){5, 1, 1}, 10, &ops_cpu, 1, &a);
    net_create(specs, n, (Shape){5, 1, 1}, 10, &ops_cpu, 1, &b);
    net_init_params(a, 1);
    net_init_params(b, 1);
    for (size_t i = 0; i < a->n_params; i++) a->grads[i] = b->grads[i] = 0.01f * (float)((i % 13) - 6);
    SgdConfig cfg = {.momentum = 0.9f, .weight_decay = 0.1f, .nesterov = 1};
    for (int it = 0; it < 3; it++) {
        sgd_step_range(a, &cfg, 0.5f, 0, a->n_params);
        /* Odd slices that cut through layers and weight/bias boundaries. */
        size_t cuts[] = {0, 3, 71, 72, 90, b->n_params};
        for (int j = 0; j < 5; j++) sgd_step_range(b, &cfg, 0.5f, cuts[j], cuts[j + 1]);
    }
    EXPECT(memcmp(a->params, b->params, a->n_params * sizeof(float)) == 0, "sliced step differs");
    EXPECT(memcmp(a->mom, b->mom, a->n_params * sizeof(float)) == 0, "sliced momentum differs");

    /* With zero gradients only decay moves parameters, and never biases. */
    net_init_params(a, 2);
    for (int i = 0; i < a->n_layers; i++)
        if (a->layers[i].b_count)
            for (size_t j = 0; j < a->layers[i].b_count; j++) a->layers[i].b[j] = 1.0f;
    memset(a->grads, 0, a->n_params * sizeof(float));
    float w0 = a->layers[0].w[0];
    SgdConfig decay = {.momentum = 0.0f, .weight_decay = 0.1f, .nesterov = 0};
    sgd_step_range(a, &decay, 0.5f, 0, a->n_params);
    EXPECT_NEAR(a->layers[0].w[0], w0 * (1 - 0.5 * 0.1), 1e-7, 1e-6, "weight decayed");
    EXPECT(a->layers[0].b[0] == 1.0f && a->layers[2].b[0] == 1.0f, "bias decayed");
    net_destroy(a);
    net_destroy(b);
    return test_finish("test_optim");
}
