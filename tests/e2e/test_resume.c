/* Bit-exact resume: K steps straight, or K/2 steps stopped by SIGTERM (on
 * one rank), then resumed from the checkpoint for the rest, end with the
 * same parameter bits on the same number of ranks. The first model has
 * dropout, so the random state (seed + step) must come back too; the second
 * has batch norm and residual blocks and trains on augmented data, so the
 * running statistics (the checkpoint's state buffer) and the augmentation
 * must come back as well. With --sync-bn every rank holds the same running
 * statistics at every step, and those come back bit-exactly too; without
 * it each rank keeps its own, averaged when a checkpoint is written, so
 * after a resume from a checkpoint the straight run never wrote (the
 * preemption's) they agree to float rounding (1e-6 relative), while the
 * parameters, which they never enter, are still bit-exact. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/trainer.h"
#include "testing.h"

static void run_case(const char *data, const char *out, const char *name, const char *model, const char *augment,
                     int sync_bn)
{
    int rank, world;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    char straight[4096], broken[4096];
    snprintf(straight, sizeof straight, "%s/%s-straight", out, name);
    snprintf(broken, sizeof broken, "%s/%s-interrupted", out, name);
    if (rank == 0) {
        char cmd[9000];
        snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", straight, broken);
        if (system(cmd) != 0) fprintf(stderr, "could not clear %s\n", out);
    }
    MPI_Barrier(MPI_COMM_WORLD);

    TrainConfig cfg;
    config_defaults(&cfg);
    cfg.model = model;
    cfg.augment = augment;
    cfg.sync_bn = sync_bn;
    cfg.data = data;
    cfg.epochs = 2;
    cfg.batch = 32;
    cfg.limit_train = 384; /* 12 steps per epoch, 24 in all */
    cfg.limit_test = 200;
    cfg.log_every = 5;
    cfg.check_every = 4;
    cfg.keep_params = 1;

    cfg.output_dir = straight;
    TrainResult a = {0};
    EXPECT(trainer_run(&cfg, MPI_COMM_WORLD, &a) == BASIN_OK, "%s: straight run failed", name);

    /* The last rank is sent SIGTERM during step 10 (0-based): all stop after it. */
    char hook[32];
    snprintf(hook, sizeof hook, "%d:10", world - 1);
    setenv("BASIN_TEST_SIGNAL", hook, 1);
    cfg.output_dir = broken;
    TrainResult b = {0};
    int rc = trainer_run(&cfg, MPI_COMM_WORLD, &b);
    EXPECT(rc == BASIN_EXIT_PREEMPTED, "%s: interrupted run returned %d, not %d", name, rc, BASIN_EXIT_PREEMPTED);
    EXPECT(b.steps == 11, "%s: stopped after %llu steps, not 11", name, (unsigned long long)b.steps);
    unsetenv("BASIN_TEST_SIGNAL");

    cfg.resume = "auto";
    TrainResult c = {0};
    EXPECT(trainer_run(&cfg, MPI_COMM_WORLD, &c) == BASIN_OK, "%s: resumed run failed", name);
    EXPECT(c.steps == 24, "%s: resumed run ended at step %llu", name, (unsigned long long)c.steps);
    EXPECT(a.params && c.params && a.n_params == c.n_params &&
               memcmp(a.params, c.params, a.n_params * sizeof(float)) == 0,
           "%s: resumed parameters differ from the uninterrupted run's", name);
    EXPECT(a.n_state == c.n_state, "%s: %zu vs %zu state values", name, a.n_state, c.n_state);
    if (a.n_state && a.n_state == c.n_state) {
        int exact = world == 1 || sync_bn;
        size_t far = 0;
        for (size_t i = 0; i < a.n_state; i++)
            far += exact ? a.state[i] != c.state[i]
                         : fabs((double)a.state[i] - c.state[i]) > 1e-6 * fabs((double)a.state[i]) + 1e-7;
        EXPECT(far == 0, "%s: %zu of %zu running statistics differ (%s)", name, far, a.n_state,
               exact ? "bit for bit" : "beyond 1e-6");
        /* The state is the checkpoint's: running statistics of the resumed
         * run moved away from their initial values (mean 0, variance 1). */
        size_t moved = 0;
        for (size_t i = 0; i < c.n_state; i++) moved += c.state[i] != 0.0f && c.state[i] != 1.0f;
        EXPECT(moved > c.n_state / 2, "%s: only %zu of %zu running statistics moved", name, moved, c.n_state);
    }
    if (world == 1 || sync_bn)
        EXPECT(a.test_accuracy == c.test_accuracy, "%s: test accuracy %.6f vs %.6f", name, a.test_accuracy,
               c.test_accuracy);
    if (rank == 0)
        printf("%s: straight and resumed runs: test accuracy %.4f and %.4f\n", name, a.test_accuracy,
               c.test_accuracy);
    free(a.params), free(b.params), free(c.params);
    free(a.state), free(b.state), free(c.state);
}

int main(int argc, char **argv)
{
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    if (argc < 3) {
        fprintf(stderr, "usage: %s DATA.h5 OUTPUT_DIR\n", argv[0]);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    run_case(argv[1], argv[2], "dropout", "conv:4:5,relu,pool:2,flatten,fc:32,relu,dropout:0.3,fc:10", "none", 0);
    const char *res = "conv:4:3,bn,relu,basic:4,basic:8:2,gap,fc:10";
    run_case(argv[1], argv[2], "bn", res, "crop:2,flip", 0);
    int world;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (world > 1) run_case(argv[1], argv[2], "sync-bn", res, "crop:2,flip", 1);
    int rc = test_finish("test_resume");
    MPI_Finalize();
    return rc;
}
