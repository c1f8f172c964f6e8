/* Bit-exact resume: K steps straight, or K/2 steps stopped by SIGTERM (on
 * one rank), then resumed from the checkpoint for the rest, end with the
 * same parameter bits on the same number of ranks. The model has dropout, so
 * the random state (seed + step) must come back too. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/trainer.h"
#include "testing.h"

int main(int argc, char **argv)
{
    int provided, rank, world;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (argc < 3) {
        fprintf(stderr, "usage: %s DATA.h5 OUTPUT_DIR\n", argv[0]);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    char straight[4096], broken[4096];
    snprintf(straight, sizeof straight, "%s/straight", argv[2]);
    snprintf(broken, sizeof broken, "%s/interrupted", argv[2]);
    if (rank == 0) {
        char cmd[9000];
        snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", straight, broken);
        if (system(cmd) != 0) fprintf(stderr, "could not clear %s\n", argv[2]);
    }
    MPI_Barrier(MPI_COMM_WORLD);

    TrainConfig cfg;
    config_defaults(&cfg);
    cfg.model = "conv:4:5,relu,pool:2,flatten,fc:32,relu,dropout:0.3,fc:10";
    cfg.data = argv[1];
    cfg.epochs = 2;
    cfg.batch = 32;
    cfg.limit_train = 384; /* 12 steps per epoch, 24 in all */
    cfg.limit_test = 200;
    cfg.log_every = 5;
    cfg.check_every = 4;
    cfg.keep_params = 1;

    cfg.output_dir = straight;
    TrainResult a = {0};
    EXPECT(trainer_run(&cfg, MPI_COMM_WORLD, &a) == BASIN_OK, "straight run failed");

    /* The last rank is sent SIGTERM during step 10 (0-based): all stop after it. */
    char hook[32];
    snprintf(hook, sizeof hook, "%d:10", world - 1);
    setenv("BASIN_TEST_SIGNAL", hook, 1);
    cfg.output_dir = broken;
    TrainResult b = {0};
    int rc = trainer_run(&cfg, MPI_COMM_WORLD, &b);
    EXPECT(rc == BASIN_EXIT_PREEMPTED, "interrupted run returned %d, not %d", rc, BASIN_EXIT_PREEMPTED);
    EXPECT(b.steps == 11, "stopped after %llu steps, not 11", (unsigned long long)b.steps);
    unsetenv("BASIN_TEST_SIGNAL");

    cfg.resume = "auto";
    TrainResult c = {0};
    EXPECT(trainer_run(&cfg, MPI_COMM_WORLD, &c) == BASIN_OK, "resumed run failed");
    EXPECT(c.steps == 24, "resumed run ended at step %llu", (unsigned long long)c.steps);
    EXPECT(a.params && c.params && a.n_params == c.n_params &&
               memcmp(a.params, c.params, a.n_params * sizeof(float)) == 0,
           "resumed parameters differ from the uninterrupted run's");
    EXPECT(a.test_accuracy == c.test_accuracy, "test accuracy %.6f vs %.6f", a.test_accuracy, c.test_accuracy);
    if (rank == 0) printf("straight and resumed runs: test accuracy %.4f and %.4f\n", a.test_accuracy, c.test_accuracy);
    free(a.params), free(b.params), free(c.params);
    rc = test_finish("test_resume");
    MPI_Finalize();
    return rc;
}
