/* Training with --augment crop:4,flip resumes bit-exactly: K steps straight,
 * or stopped by SIGTERM (on the last rank) after step 10 and resumed from
 * its checkpoint, end with the same parameter bits and test accuracy. The
 * same run without augmentation ends elsewhere (the augmentation is applied),
 * and a resume with another --augment is refused with one line naming both
 * values. Small generated data: 3 x 12 x 12, per-channel mean and std. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/trainer.h"
#include "fixtures.h"
#include "testing.h"

static const float MEAN[3] = {0.45f, 0.5f, 0.55f}, STD[3] = {0.3f, 0.28f, 0.29f};

int main(int argc, char **argv)
{
    int provided, rank, world;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (argc < 2) {
        fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    char data[4096], straight[4096], broken[4096], plain[4096], mine[4096];
    snprintf(data, sizeof data, "%s/data.h5", argv[1]);
    snprintf(straight, sizeof straight, "%s/straight", argv[1]);
    snprintf(broken, sizeof broken, "%s/interrupted", argv[1]);
    snprintf(plain, sizeof plain, "%s/plain", argv[1]);
    snprintf(mine, sizeof mine, "%s/rank%d", argv[1], rank);
    if (rank == 0) {
        char cmd[20000];
        snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", argv[1], argv[1]);
        if (system(cmd) != 0) fprintf(stderr, "could not clear %s\n", argv[1]);
        FxSpec s = fx_spec(384, 3, 12, 12);
        s.mean_c = MEAN, s.std_c = STD, s.n_stats = 3;
        fx_write_dataset_file(data, &s);
        FxSpec t = fx_spec(100, 3, 12, 12);
        t.split = "test", t.append = 1;
        fx_write_dataset_file(data, &t);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    mkdir(mine, 0700);

    TrainConfig cfg;
    config_defaults(&cfg);
    cfg.model = "conv:4:3,relu,pool:2,flatten,fc:16,relu,fc:10";
    cfg.data = data;
    cfg.augment = "crop:4,flip";
    cfg.epochs = 2;
    cfg.batch = 32; /* 12 steps per epoch, 24 in all */
    cfg.log_every = 6;
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

    /* A resume with other augmentation is refused before anything runs. */
    cfg.resume = "auto";
    cfg.augment = "flip";
    FxCapture cap;
    fx_capture_begin(&cap, mine);
    TrainResult r = {0};
    rc = trainer_run(&cfg, MPI_COMM_WORLD, &r);
    int lines = 0;
    char *text = fx_capture_end(&cap, &lines);
    EXPECT(rc == BASIN_ERR_USAGE, "resume with --augment flip returned %d, not %d", rc, BASIN_ERR_USAGE);
    if (rank == 0)
        EXPECT(lines == 1 && strstr(text, "--augment crop:4,flip") && strstr(text, "not flip"),
               "refusal of another --augment: %d lines: %s", lines, text);
    free(text);
    free(r.params);

    cfg.augment = "crop:4,flip";
    TrainResult c = {0};
    EXPECT(trainer_run(&cfg, MPI_COMM_WORLD, &c) == BASIN_OK, "resumed run failed");
    EXPECT(c.steps == 24, "resumed run ended at step %llu", (unsigned long long)c.steps);
    EXPECT(a.params && c.params && a.n_params == c.n_params &&
               memcmp(a.params, c.params, a.n_params * sizeof(float)) == 0,
           "resumed parameters differ from the uninterrupted run's");
    EXPECT(a.test_accuracy == c.test_accuracy, "test accuracy %.6f vs %.6f", a.test_accuracy, c.test_accuracy);

    /* Without augmentation the same run ends elsewhere. */
    cfg.augment = "none";
    cfg.resume = NULL;
    cfg.output_dir = plain;
    TrainResult d = {0};
    EXPECT(trainer_run(&cfg, MPI_COMM_WORLD, &d) == BASIN_OK, "run without augmentation failed");
    EXPECT(a.params && d.params && a.n_params == d.n_params &&
               memcmp(a.params, d.params, a.n_params * sizeof(float)) != 0,
           "--augment crop:4,flip trained the same parameters as none");
    if (rank == 0)
        printf("augmented straight and resumed runs: test accuracy %.4f and %.4f; without augmentation %.4f\n",
               a.test_accuracy, c.test_accuracy, d.test_accuracy);
    free(a.params), free(b.params), free(c.params), free(d.params);
    rc = test_finish("test_reader_augment_resume");
    MPI_Finalize();
    return rc;
}
