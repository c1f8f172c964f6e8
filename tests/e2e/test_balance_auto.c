/* --balance auto: shares follow each rank's measured speed. The test hook
 * BASIN_TEST_BALANCE_COST gives every rank a fixed cost per sample instead
 * of its clock's (1:3 on 2 ranks, 1:3:2 on 3), so the decisions are the same
 * in every run and can be checked exactly:
 *
 *   - after the first window (K = 4 steps) the shares become proportional to
 *     the speeds: 45:15 of 60 on 2 ranks, 33:11:16 on 3 (largest remainders),
 *     shown in the metrics' step lines and in the checkpoint's "balance";
 *   - the parameters are those of 1 rank within the bound of test_balance
 *     (2e-5 + 1e-3 |p| after 24 steps), and every replica holds the same bits;
 *   - a change decided after 4 steps applies from step 6 (0-based:
 *     --reader-prefetch, 2, steps later); a run stopped by SIGTERM after 6
 *     steps (the change due at the resumed step) or after 5 (with a reader:
 *     the change still waiting) and resumed with --resume auto ends with the bits of the
 *     uninterrupted run: the checkpoint carried the shares and the change;
 *   - on 3 ranks, 1 reader feeding 2 trainers trains the same bits as the 2
 *     trainers reading themselves, the reader told of every change;
 *   - refused: a batch smaller than the ranks. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoint.h"
#include "core/error.h"
#include "core/exit_codes.h"
#include "core/trainer.h"
#include "replicas.h"
#include "testing.h"

static int rank, world;

static void config(TrainConfig *cfg, const char *data, const char *out)
{
    config_defaults(cfg);
    cfg->model = "mlp";
    cfg->data = data;
    cfg->output_dir = out;
    cfg->epochs = 2;
    cfg->batch = 60;
    cfg->lr = 0.05;
    cfg->limit_train = 720; /* 12 steps per epoch, 24 in all */
    cfg->eval_every = 0;
    cfg->log_every = 4;
    cfg->check_every = 4;
    cfg->keep_params = 1;
    cfg->balance_every = 4;
}

static void clear(const char *dir, MPI_Comm comm)
{
    int r;
    MPI_Comm_rank(comm, &r);
    if (r == 0) {
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "could not clear %s\n", dir);
    }
    MPI_Barrier(comm);
}

/* The metrics of out have a step line with these shares. */
static int metrics_show(const char *out, const char *shares)
{
    char path[4400], line[16384], want[256];
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    snprintf(want, sizeof want, "\"shares\":[%s]", shares);
    FILE *f = fopen(path, "r");
    int found = 0;
    while (f && fgets(line, sizeof line, f)) found |= strstr(line, want) != NULL;
    if (f) fclose(f);
    return found;
}

/* Straight, and stopped after step 5 then resumed: the same bits. Returns
 * the straight run's result. comm: the job (with readers, trainers first). */
static TrainResult straight_and_resumed(TrainConfig *cfg, const char *out, const char *name, MPI_Comm comm,
                                        int trainers, int stop_after)
{
    int r;
    MPI_Comm_rank(comm, &r);
    char straight[4200], broken[4200];
    snprintf(straight, sizeof straight, "%s/%s-straight", out, name);
    snprintf(broken, sizeof broken, "%s/%s-interrupted", out, name);
    clear(straight, comm);
    clear(broken, comm);
    cfg->output_dir = straight;
    TrainResult a = {0}, b = {0}, c = {0};
    EXPECT(trainer_run(cfg, comm, &a) == BASIN_OK, "%s: straight run failed", name);

    char hook[32];
    snprintf(hook, sizeof hook, "%d:%d", trainers - 1, stop_after - 1);
    setenv("BASIN_TEST_SIGNAL", hook, 1);
    cfg->output_dir = broken;
    int rc = trainer_run(cfg, comm, &b);
    unsetenv("BASIN_TEST_SIGNAL");
    EXPECT(rc == BASIN_EXIT_PREEMPTED, "%s: interrupted run returned %d, not %d", name, rc, BASIN_EXIT_PREEMPTED);
    cfg->resume = "auto";
    EXPECT(trainer_run(cfg, comm, &c) == BASIN_OK, "%s: resumed run failed", name);
    cfg->resume = NULL;
    if (r < trainers)
        EXPECT(a.params && c.params && a.n_params == c.n_params &&
                   memcmp(a.params, c.params, a.n_params * sizeof(float)) == 0,
               "%s, rank %d: the resumed parameters differ from the uninterrupted run's", name, r);
    if (r == 0) {
        /* The stop's checkpoint holds the shares and the change due. */
        char path[4300];
        snprintf(path, sizeof path, "%s/checkpoints/ckpt-%010d.h5", broken, stop_after);
        Checkpoint ck = {0};
        EXPECT(checkpoint_read(path, &ck) == BASIN_OK, "%s: cannot read %s", name, path);
        EXPECT(ck.st.balance && !strncmp(ck.st.balance, "shares ", 7), "%s: %s has no shares (balance '%s')", name,
               path, ck.st.balance ? ck.st.balance : "(none)");
        printf("%s: the stop's checkpoint says '%s'; resumed run %s\n", name, ck.st.balance ? ck.st.balance : "",
               test_failures_ ? "FAILED" : "ends with the same bits");
        checkpoint_free(&ck);
    }
    free(b.params);
    free(c.params);
    free(b.state);
    free(c.state);
    return a;
}

static void auto_case(const char *data, const char *out)
{
    static const char *costs[4] = {"", "", "0.001,0.003", "0.001,0.003,0.002"};
    static const char *want[4] = {"", "", "45,15", "33,11,16"};
    TrainConfig cfg;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/one", out);
    config(&cfg, data, dir);
    cfg.balance_every = 0;
    TrainResult one = {0};
    if (rank == 0) {
        clear(dir, MPI_COMM_SELF);
        EXPECT(trainer_run(&cfg, MPI_COMM_SELF, &one) == 0, "1-rank run failed");
    }
    config(&cfg, data, out);
    setenv("BASIN_TEST_BALANCE_COST", costs[world], 1);
    TrainResult a = straight_and_resumed(&cfg, out, "auto", MPI_COMM_WORLD, world, 6);
    unsetenv("BASIN_TEST_BALANCE_COST");
    size_t n = a.n_params;
    EXPECT(n > 0 && replicas_equal(a.params, n, MPI_COMM_WORLD), "replicas differ with auto shares");
    if (rank == 0) {
        snprintf(dir, sizeof dir, "%s/auto-straight", out);
        EXPECT(metrics_show(dir, want[world]), "%s: no step line with shares [%s]", dir, want[world]);
        char path[4300];
        snprintf(path, sizeof path, "%s/checkpoints/ckpt-0000000024.h5", dir);
        Checkpoint ck = {0};
        char text[64];
        snprintf(text, sizeof text, "shares %s", want[world]);
        for (char *p = text; *p; p++) *p = *p == ',' ? ':' : *p;
        EXPECT(checkpoint_read(path, &ck) == BASIN_OK && ck.st.balance && !strcmp(ck.st.balance, text),
               "%s: balance '%s', want '%s'", path, ck.st.balance ? ck.st.balance : "(none)", text);
        checkpoint_free(&ck);
        if (n > 0 && n == one.n_params) {
            double worst;
            size_t far = count_far(one.params, a.params, n, 2e-5, 1e-3, &worst);
            EXPECT(far == 0, "%zu of %zu parameters differ between auto shares and 1 rank (max %.3g)", far, n, worst);
            printf("auto on %d ranks, shares [%s]: max |auto - 1 rank| %.3g\n", world, want[world], worst);
        }
    }
    free(one.params);
    free(a.params);
    free(a.state);
}

/* 1 reader, 2 trainers with auto shares against the 2 trainers alone. */
static void readers_case(const char *data, const char *out)
{
    TrainConfig cfg;
    config(&cfg, data, out);
    cfg.augment = "crop:2,flip";
    setenv("BASIN_TEST_BALANCE_COST", "0.001,0.003", 1);
    TrainResult ref = {0};
    MPI_Comm sub;
    MPI_Comm_split(MPI_COMM_WORLD, rank < 2 ? 0 : MPI_UNDEFINED, rank, &sub);
    if (rank < 2) {
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/in-process", out);
        clear(dir, sub);
        cfg.output_dir = dir;
        EXPECT(trainer_run(&cfg, sub, &ref) == 0, "2 trainers with auto shares failed");
        MPI_Comm_free(&sub);
    }
    cfg.readers = 1;
    TrainResult got = straight_and_resumed(&cfg, out, "readers", MPI_COMM_WORLD, 2, 5);
    unsetenv("BASIN_TEST_BALANCE_COST");
    if (rank < 2)
        EXPECT(ref.params && got.params && ref.n_params == got.n_params &&
                   memcmp(ref.params, got.params, ref.n_params * sizeof(float)) == 0,
               "trainer %d: auto shares fed by a reader differ from reading in-process", rank);
    if (rank == 0) printf("1 reader feeding 2 trainers with auto shares: %s\n", test_failures_ ? "FAILED" : "same bits");
    free(ref.params);
    free(got.params);
    free(ref.state);
    free(got.state);
}

int main(int argc, char **argv)
{
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    if (argc < 3) {
        fprintf(stderr, "usage: %s DATA.h5 OUTPUT_DIR\n", argv[0]);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (world < 2 || world > 3) TEST_SKIP("runs on 2 or 3 ranks");
    auto_case(argv[1], argv[2]);
    if (world == 3) readers_case(argv[1], argv[2]);
    TrainConfig cfg;
    config(&cfg, argv[1], argv[2]);
    cfg.batch = 1;
    EXPECT(trainer_run(&cfg, MPI_COMM_WORLD, NULL) == BASIN_ERR_USAGE, "rank %d: auto with a batch of 1 on %d ranks "
           "was not refused", rank, world);
    int rc = test_finish("test_balance_auto");
    MPI_Finalize();
    return rc;
}
