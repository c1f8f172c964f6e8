/* Training with --device cuda, through trainer_run, against the CPU:
 *
 *  1. The same short run (a conv net with pooling and dropout, 40 steps,
 *     checkpoints at steps 20 and 40) on both devices: the training loss of
 *     the last interval within 0.05 + 5 %, the test accuracy within 3
 *     points, and the checkpoints of step 20 hold parameters and momentum
 *     within 1e-3 of each other (normwise). Rounding differs between cuBLAS
 *     and OpenBLAS by ~1e-7 per operation; 20 steps of SGD keep that far
 *     below 1e-3, while a wrong op or a state that never reached the host
 *     (zeros, stale values) is off by O(1).
 *  2. Checkpoints move between devices. From each step-20 checkpoint, one
 *     more step runs on the GPU and on the CPU (--resume PATH,
 *     --max-steps 21); the two step-21 checkpoints must agree within 2e-3
 *     normwise. The momentum enters that step with weight 0.9, so a
 *     momentum or parameter buffer not carried onto the device (or back)
 *     is off by O(1).
 *
 * One rank; exits 77 (skipped) without a CUDA device. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoint.h"
#include "core/error.h"
#include "core/trainer.h"
#include "cuda_device.h"
#include "testing.h"

static const char *data_path;
static char out_root[2048];

static void run(const char *device, const char *dir, long max_steps, const char *resume, TrainResult *res)
{
    TrainConfig cfg;
    config_defaults(&cfg);
    cfg.model = "conv:8:5,relu,pool:2,flatten,fc:32,relu,dropout:0.3,fc:10";
    cfg.data = data_path;
    cfg.device = device;
    cfg.epochs = 2;
    cfg.batch = 32;
    cfg.lr = 0.05;
    cfg.limit_train = 640; /* 20 steps per epoch */
    cfg.limit_test = 500;
    cfg.log_every = 10;
    cfg.checkpoint_steps = 20;
    cfg.checkpoint_seconds = 0;
    cfg.keep_checkpoints = 0;
    cfg.max_steps = max_steps;
    cfg.resume = resume;
    char out[4096];
    snprintf(out, sizeof out, "%s/%s", out_root, dir);
    cfg.output_dir = out;
    memset(res, 0, sizeof *res);
    int rc = trainer_run(&cfg, MPI_COMM_WORLD, res);
    EXPECT(rc == BASIN_OK, "%s run %s returned %d", device, dir, rc);
}

static void ckpt_path(char *buf, size_t len, const char *dir, int step)
{
    snprintf(buf, len, "%s/%s/checkpoints/ckpt-%010d.h5", out_root, dir, step);
}

/* ||a - b|| <= rtol ||b|| for params and momentum of two checkpoints. */
static void compare(const char *dir_a, const char *dir_b, int step, double rtol)
{
    char pa[4096], pb[4096];
    ckpt_path(pa, sizeof pa, dir_a, step);
    ckpt_path(pb, sizeof pb, dir_b, step);
    Checkpoint a = {0}, b = {0};
    int ok = checkpoint_read(pa, &a) == BASIN_OK;
    ok &= checkpoint_read(pb, &b) == BASIN_OK;
    EXPECT(ok, "cannot read %s or %s", pa, pb);
    if (ok && a.st.n_params == b.st.n_params) {
        const float *x[2] = {a.params, a.momentum}, *y[2] = {b.params, b.momentum};
        const char *name[2] = {"parameters", "momentum"};
        for (int k = 0; k < 2; k++) {
            double d2 = 0, y2 = 0;
            for (size_t i = 0; i < a.st.n_params; i++) {
                double d = (double)x[k][i] - y[k][i];
                d2 += d * d;
                y2 += (double)y[k][i] * y[k][i];
            }
            double rel = sqrt(d2) / (sqrt(y2) + 1e-30);
            EXPECT(rel <= rtol && y2 > 0, "step %d, %s vs %s: %s differ by %.3g of their norm (bound %.3g)",
                   step, dir_a, dir_b, name[k], rel, rtol);
            printf("step %d %s vs %s: %s differ by %.3g of their norm\n", step, dir_a, dir_b, name[k], rel);
        }
    } else if (ok) {
        EXPECT(0, "%s and %s hold %zu and %zu parameters", pa, pb, a.st.n_params, b.st.n_params);
    }
    checkpoint_free(&a);
    checkpoint_free(&b);
}

int main(int argc, char **argv)
{
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    if (argc < 3) {
        fprintf(stderr, "usage: %s DATA.h5 OUTPUT_DIR\n", argv[0]);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    require_cuda_device();
    data_path = argv[1];
    snprintf(out_root, sizeof out_root, "%s", argv[2]);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", out_root);
    if (system(cmd) != 0) fprintf(stderr, "could not clear %s\n", out_root);

    TrainResult cpu, gpu;
    run("cpu", "cpu", 0, NULL, &cpu);
    run("cuda", "gpu", 0, NULL, &gpu);
    EXPECT(cpu.steps == 40 && gpu.steps == 40, "steps %llu (cpu) and %llu (gpu), want 40",
           (unsigned long long)cpu.steps, (unsigned long long)gpu.steps);
    EXPECT(fabs(cpu.train_loss - gpu.train_loss) <= 0.05 + 0.05 * cpu.train_loss,
           "training loss %.4f (cpu) vs %.4f (gpu)", cpu.train_loss, gpu.train_loss);
    EXPECT(fabs(cpu.test_accuracy - gpu.test_accuracy) <= 0.03, "test accuracy %.4f (cpu) vs %.4f (gpu)",
           cpu.test_accuracy, gpu.test_accuracy);
    EXPECT(gpu.train_loss < 2.0, "the GPU run did not learn: loss %.4f", gpu.train_loss);
    printf("40 steps: loss %.4f (cpu) %.4f (gpu), test accuracy %.4f (cpu) %.4f (gpu)\n", cpu.train_loss,
           gpu.train_loss, cpu.test_accuracy, gpu.test_accuracy);
    compare("gpu", "cpu", 20, 1e-3);

    /* One step on each device from each device's checkpoint. */
    const char *from[2] = {"cpu", "gpu"};
    for (int k = 0; k < 2; k++) {
        char path[4096], dg[64], dc[64];
        ckpt_path(path, sizeof path, from[k], 20);
        snprintf(dg, sizeof dg, "from-%s-on-gpu", from[k]);
        snprintf(dc, sizeof dc, "from-%s-on-cpu", from[k]);
        TrainResult r;
        run("cuda", dg, 21, path, &r);
        EXPECT(r.steps == 21, "%s ended at step %llu, not 21", dg, (unsigned long long)r.steps);
        run("cpu", dc, 21, path, &r);
        compare(dg, dc, 21, 2e-3);
    }
    free(cpu.params);
    free(gpu.params);
    int rc = test_finish("test_train_cuda");
    MPI_Finalize();
    return rc;
}
