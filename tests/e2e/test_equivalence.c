/* Data parallelism changes nothing but speed: W ranks with a global batch B
 * reach the parameters that 1 rank reaches with the same B, and all W
 * replicas hold identical bits.
 *
 * Rank 0 first trains alone (on MPI_COMM_SELF), then all ranks train
 * together; the runs see the same samples in the same steps (global order)
 * and the same dropout masks (drawn by global sample position). They differ
 * only in how the per-sample gradients are summed: inside one GEMM on one
 * rank, as W partial sums plus an all-reduce on W. That reordering moves a
 * float sum by ~1e-7 relative per step; over 12 steps of SGD with momentum
 * the parameters stay within 2e-5 + 1e-3 |p| of each other, which is the
 * bound checked (a wrong scale, a missing or doubled bucket, or a wrong
 * sample slice moves them by 1e-3 and more). The sharded update (each rank
 * of a supernode updates the part it reduced) runs with hier and auto, and
 * is turned off once to check the plain path. One case also evaluates with
 * a global eval batch of 1, smaller than the world, so that every rank but
 * one has empty batches (on the GPU: uploads with no forward to wait for):
 * the test loss and accuracy must equal the 1-rank run's.
 *
 * The same holds for every --optimizer: LARS (whose trust ratios need whole
 * layers, gathered after the sharded buckets), Adam and AdamW (whose second
 * moment is sharded with the momentum), with and without the sharded update,
 * with buckets that cut layers in two, and with batch norm (--sync-bn, so
 * that W ranks normalise as 1 rank does). */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/trainer.h"
#include "testing.h"

#ifdef BASIN_TEST_CUDA
/* Built a second time for the GPU (tests/cuda): --device cuda, one rank per
 * supernode (so several ranks may share one GPU: the GPU all-reduce's
 * host-staged path, no NCCL) and the all-reduce choices that run there. */
#include "cuda/cuda_device.h"
static const char *const device = "cuda";
static const int supernode_size = 1;
#else
static const char *const device = "cpu";
static const int supernode_size = 0;
#endif

/* The optimizer of the next cases, and its learning rate (0: 0.05). */
static OptimKind optimizer = OPTIM_SGD;
static double case_lr = 0.0;
static int case_sync_bn = 0;
/* Adam divides each gradient by the root of its own second moment, so an
 * element whose summed gradient is near 0 (or changes sign) in one run and
 * not the other moves by up to lr per step however small the reordering:
 * Adam cases allow a few such elements (this fraction of all), each within
 * 2 lr per step. A missing bucket or slice moves far more of them. */
static double case_outliers = 0.0;

static void run_case(const char *data, const char *out, const char *model, int overlap, double bucket_mb,
                     const char *algo, int sharded, size_t eval_batch)
{
    int rank, world;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    TrainConfig cfg;
    config_defaults(&cfg);
    cfg.model = model;
    cfg.data = data;
    cfg.output_dir = out;
    cfg.epochs = 1;
    cfg.max_steps = 12;
    cfg.batch = 60; /* divisible by 2, 3, 4 */
    cfg.lr = case_lr > 0 ? case_lr : 0.05;
    cfg.optimizer = optimizer;
    cfg.lars_eta = 0.01;
    cfg.sync_bn = case_sync_bn;
    cfg.limit_train = 1200;
    cfg.eval_every = 0;
    cfg.log_every = 1000;
    cfg.overlap = overlap;
    cfg.bucket_mb = bucket_mb;
    cfg.allreduce = algo;
    cfg.sharded_update = sharded;
    cfg.device = device;
    cfg.supernode_size = supernode_size;
    cfg.keep_params = 1;
    cfg.check_every = 5;
    if (eval_batch) {
        cfg.eval_every = 1;
        cfg.eval_batch = eval_batch;
        cfg.limit_test = 7;
    }

    TrainResult one = {0}, many = {0};
    if (rank == 0) EXPECT(trainer_run(&cfg, MPI_COMM_SELF, &one) == 0, "1-rank run failed");
    EXPECT(trainer_run(&cfg, MPI_COMM_WORLD, &many) == 0, "%d-rank run failed", world);
    size_t n = many.n_params;
    MPI_Bcast(&n, sizeof n, MPI_BYTE, 0, MPI_COMM_WORLD);

    /* Bit-identical replicas: every rank against rank 0's parameters. */
    float *p0 = malloc(n * sizeof *p0);
    if (rank == 0) memcpy(p0, many.params, n * sizeof *p0);
    MPI_Bcast(p0, (int)n, MPI_FLOAT, 0, MPI_COMM_WORLD);
    int same = many.params && many.n_params == n && memcmp(p0, many.params, n * sizeof *p0) == 0;
    int all_same = 0;
    MPI_Allreduce(&same, &all_same, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    EXPECT(all_same, "%s (%s, %s, sharded update %d): replicas differ after training on %d ranks", model,
           optim_name(optimizer), algo, sharded, world);

    if (rank == 0 && one.params && many.params) {
        size_t bad = 0;
        double worst = 0;
        for (size_t i = 0; i < n; i++) {
            double d = fabs((double)one.params[i] - many.params[i]);
            if (d > worst) worst = d;
            if (d > 2e-5 + 1e-3 * fabs((double)one.params[i])) bad++;
        }
        size_t allowed = (size_t)(case_outliers * (double)n);
        if (allowed) EXPECT(worst <= 2.0 * cfg.lr * 12, "%s: an Adam step moved by %.3g", model, worst);
        EXPECT(bad <= allowed, "%s (%s, overlap %d, bucket %.2f MiB, %s, sharded update %d): %zu of %zu parameters "
               "(%zu allowed) differ from the 1-rank run (max |diff| %.3g)", model, optim_name(optimizer), overlap, bucket_mb,
               algo, sharded, bad, n, allowed, worst);
        if (eval_batch) {
            /* Per-sample losses summed in another order: 1e-6 relative. */
            EXPECT(fabs(one.test_loss - many.test_loss) <= 1e-6 * fabs(one.test_loss) + 1e-6 &&
                       one.test_accuracy == many.test_accuracy,
                   "%s: evaluation with a global batch of %zu on %d ranks: loss %.9g, accuracy %.6f; 1 rank: "
                   "%.9g, %.6f", model, eval_batch, world, many.test_loss, many.test_accuracy, one.test_loss,
                   one.test_accuracy);
            EXPECT(isfinite(many.test_loss) && many.test_loss > 0, "%s: test loss %g", model, many.test_loss);
        }
        printf("%s, %s on %d ranks, overlap %d, bucket %.2f MiB, %s, sharded update %d: max |p1 - pW| = %.3g\n",
               model, optim_name(optimizer), world, overlap, bucket_mb, algo, sharded, worst);
    }
    free(p0);
    free(one.params);
    free(many.params);
}

/* LARS, Adam and AdamW; gpu: the all-reduce choices that run there. */
static void optimizer_cases(const char *data, const char *out, int gpu)
{
    const char *bn = "conv:8:5,bn,relu,pool:2,flatten,fc:32,bn,relu,fc:10";
    const char *sh = gpu ? "auto" : "hier";
    optimizer = OPTIM_LARS;
    case_lr = 0.5;
    run_case(data, out, "mlp", 1, 4.0, "auto", !gpu, 0);
    run_case(data, out, "mlp", 1, 0.05, sh, 0, 0);
    case_sync_bn = 1;
    run_case(data, out, bn, 1, 0.01, sh, !gpu, 0);
    case_sync_bn = 0;
    if (!gpu) run_case(data, out, "mlp", 0, 0.05, "mpi", 1, 0);
    optimizer = OPTIM_ADAM;
    case_lr = 0.002;
    case_outliers = 1e-5;
    run_case(data, out, "mlp", 1, 0.05, "auto", !gpu, 0);
    if (!gpu) run_case(data, out, "mlp", 1, 0.05, "ring", 0, 0);
    optimizer = OPTIM_ADAMW;
    case_sync_bn = 1;
    run_case(data, out, bn, 1, 0.01, sh, !gpu, 0);
    case_sync_bn = 0;
    if (!gpu) run_case(data, out, "mlp", 0, 1.0, "rhd", 1, 0);
    optimizer = OPTIM_SGD;
    case_lr = 0.0;
    case_outliers = 0.0;
}

int main(int argc, char **argv)
{
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    if (argc < 3) {
        fprintf(stderr, "usage: %s DATA.h5 OUTPUT_DIR\n", argv[0]);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    const char *conv = "conv:8:5,relu,pool:2,flatten,fc:32,relu,dropout:0.3,fc:10";
#ifdef BASIN_TEST_CUDA
    require_cuda_device_on_every_rank();
    run_case(argv[1], argv[2], "mlp", 1, 4.0, "auto", 0, 0);
    run_case(argv[1], argv[2], "mlp", 0, 1.0, "hier", 0, 0);
    run_case(argv[1], argv[2], conv, 1, 0.01, "auto", 0, 1);
    optimizer_cases(argv[1], argv[2], 1);
    int rc_gpu = test_finish("test_equivalence (cuda)");
    MPI_Finalize();
    return rc_gpu;
#endif
    run_case(argv[1], argv[2], "mlp", 1, 4.0, "auto", 1, 0);
    run_case(argv[1], argv[2], "mlp", 1, 4.0, "auto", 0, 0);
    run_case(argv[1], argv[2], "mlp", 0, 1.0, "rhd", 1, 0);
    run_case(argv[1], argv[2], "mlp", 1, 0.25, "hier", 1, 0);
    run_case(argv[1], argv[2], conv, 1, 0.01, "hier", 1, 1);
    run_case(argv[1], argv[2], conv, 1, 0.01, "ring", 0, 0);
    run_case(argv[1], argv[2], conv, 0, 0.01, "mpi", 1, 0);
    optimizer_cases(argv[1], argv[2], 0);
    int rc = test_finish("test_equivalence");
    MPI_Finalize();
    return rc;
}
