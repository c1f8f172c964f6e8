/* --balance static:W0,W1,...: unequal shares of the global batch change how
 * the per-sample gradients are grouped before the all-reduce, nothing else
 * (the gradient scale 1 / batch makes the sum the mean over the batch, and
 * the global order is unchanged). So W ranks with shares 3:1 (2 ranks) or
 * 3:1:2 (3 ranks) reach the parameters of equal shares and of 1 rank within
 * the bound of test_equivalence (2e-5 + 1e-3 |p| after 12 steps of SGD with
 * momentum; a wrong slice or scale moves them by 1e-3 and more), and every
 * replica holds the same bits. On 3 ranks, 1 reader feeding 2 trainers with
 * shares 3:1 trains the same bits as those 2 trainers reading themselves.
 * The metrics' step lines show every rank's share and busy time. Refusals:
 * a share of 0 samples, a weight count that is not the ranks'. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/trainer.h"
#include "replicas.h"
#include "testing.h"

static int rank, world;

static void config(TrainConfig *cfg, const char *data, const char *out, const char *dropout_model)
{
    config_defaults(cfg);
    cfg->model = dropout_model ? dropout_model : "mlp";
    cfg->data = data;
    cfg->output_dir = out;
    cfg->epochs = 1;
    cfg->max_steps = 12;
    cfg->batch = 60;
    cfg->lr = 0.05;
    cfg->limit_train = 1200;
    cfg->eval_every = 0;
    cfg->log_every = 1000;
    cfg->check_every = 4;
    cfg->keep_params = 1;
}

static void set_weights(TrainConfig *cfg, const uint32_t *w, int n)
{
    cfg->balance_n = n;
    for (int i = 0; i < n; i++) cfg->balance_w[i] = w[i];
}

static void run_case(const char *data, const char *out, const char *model)
{
    static const uint32_t weights[3] = {3, 1, 2};
    TrainConfig cfg;
    TrainResult one = {0}, eq = {0}, bal = {0};
    config(&cfg, data, out, model);
    if (rank == 0) EXPECT(trainer_run(&cfg, MPI_COMM_SELF, &one) == 0, "1-rank run failed");
    EXPECT(trainer_run(&cfg, MPI_COMM_WORLD, &eq) == 0, "%d ranks, equal shares: failed", world);
    set_weights(&cfg, weights, world);
    /* Each rank logs its samples: its slices must be its share. */
    char prefix[4096], path[4200];
    snprintf(prefix, sizeof prefix, "%s/samples-%d", out, world);
    snprintf(path, sizeof path, "%s.rank%d", prefix, rank);
    if (rank == 0) {
        char cmd[4300];
        snprintf(cmd, sizeof cmd, "mkdir -p '%s'", out);
        if (system(cmd) != 0) fprintf(stderr, "cannot create %s\n", out);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    remove(path);
    setenv("BASIN_TEST_SAMPLES", prefix, 1);
    EXPECT(trainer_run(&cfg, MPI_COMM_WORLD, &bal) == 0, "%d ranks, static shares: failed", world);
    unsetenv("BASIN_TEST_SAMPLES");
    uint32_t sum = 0, before = 0;
    for (int r = 0; r < world; r++) sum += weights[r], before += r < rank ? weights[r] : 0;
    size_t want = (size_t)(60 * (before + weights[rank]) / sum - 60 * before / sum);
    FILE *f = fopen(path, "r");
    size_t fields = 0, lines = 0;
    int c, prev = ' ';
    while (f && (c = fgetc(f)) != EOF) {
        if (c == '\n') lines++;
        else if (c != ' ' && prev == ' ') fields++;
        prev = c == '\n' ? ' ' : c;
    }
    if (f) fclose(f);
    /* each line: the step, then the rank's sample indices */
    EXPECT(lines == 12 && fields == 12 * (want + 1), "rank %d: %zu lines, %zu fields in %s; want 12 steps of %zu samples",
           rank, lines, fields, path, want);
    size_t n = bal.n_params;
    EXPECT(n > 0 && n == eq.n_params, "%zu parameters, %zu with equal shares", n, eq.n_params);
    EXPECT(n > 0 && replicas_equal(bal.params, n, MPI_COMM_WORLD), "replicas differ with static shares");
    if (rank == 0) {
        /* The step line of the metrics shows every rank's share and busy time. */
        char mpath[4200], line[16384] = "", want_shares[64];
        snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", out);
        snprintf(want_shares, sizeof want_shares, "\"shares\":[45,15]");
        if (world == 3) snprintf(want_shares, sizeof want_shares, "\"shares\":[30,10,20]");
        FILE *mf = fopen(mpath, "r");
        int found = 0;
        while (mf && fgets(line, sizeof line, mf))
            found |= strstr(line, want_shares) && strstr(line, "\"busy_s\":[");
        if (mf) fclose(mf);
        EXPECT(found, "%s: no step line with %s and busy_s", mpath, want_shares);
    }
    if (rank == 0 && n > 0 && n == one.n_params) {
        double w_eq, w_one;
        size_t far_eq = count_far(eq.params, bal.params, n, 2e-5, 1e-3, &w_eq);
        size_t far_one = count_far(one.params, bal.params, n, 2e-5, 1e-3, &w_one);
        EXPECT(far_eq == 0, "%s: %zu of %zu parameters differ between static and equal shares (max %.3g)", cfg.model,
               far_eq, n, w_eq);
        EXPECT(far_one == 0, "%s: %zu of %zu parameters differ between static shares and 1 rank (max %.3g)",
               cfg.model, far_one, n, w_one);
        printf("%s on %d ranks, shares %u:%u%s: max |static - equal| %.3g, max |static - 1 rank| %.3g\n", cfg.model,
               world, weights[0], weights[1], world > 2 ? ":2" : "", w_eq, w_one);
    }
    free(one.params);
    free(eq.params);
    free(bal.params);
}

/* 1 reader, 2 trainers with shares 3:1 against the 2 trainers alone. */
static void readers_case(const char *data, const char *out)
{
    static const uint32_t weights[2] = {3, 1};
    TrainConfig cfg;
    config(&cfg, data, out, NULL);
    cfg.augment = "crop:2,flip";
    set_weights(&cfg, weights, 2);
    TrainResult ref = {0}, got = {0};
    MPI_Comm sub;
    MPI_Comm_split(MPI_COMM_WORLD, rank < 2 ? 0 : MPI_UNDEFINED, rank, &sub);
    if (rank < 2) {
        EXPECT(trainer_run(&cfg, sub, &ref) == 0, "2 trainers with shares 3:1 failed");
        MPI_Comm_free(&sub);
    }
    cfg.readers = 1;
    EXPECT(trainer_run(&cfg, MPI_COMM_WORLD, &got) == 0, "rank %d: 1 reader, 2 trainers, shares 3:1 failed", rank);
    if (rank < 2)
        EXPECT(ref.params && got.params && ref.n_params == got.n_params &&
                   memcmp(ref.params, got.params, ref.n_params * sizeof(float)) == 0,
               "trainer %d: shares 3:1 fed by a reader differ from reading in-process", rank);
    if (rank == 0) printf("1 reader feeding 2 trainers with shares 3:1: %s\n", test_failures_ ? "FAILED" : "same bits");
    free(ref.params);
    free(got.params);
}

static void refused(const char *data, const char *out, const uint32_t *w, int n, const char *what)
{
    TrainConfig cfg;
    config(&cfg, data, out, NULL);
    set_weights(&cfg, w, n);
    int rc = trainer_run(&cfg, MPI_COMM_WORLD, NULL);
    EXPECT(rc == BASIN_ERR_USAGE, "rank %d: %s: returned %d, not 2", rank, what, rc);
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
    run_case(argv[1], argv[2], NULL);
    /* Dropout masks follow the global sample position (sample_offset). */
    run_case(argv[1], argv[2], "conv:8:5,relu,pool:2,flatten,fc:32,relu,dropout:0.3,fc:10");
    if (world == 3) readers_case(argv[1], argv[2]);
    static const uint32_t zero_share[3] = {1, 1000, 1000}, three[3] = {1, 2, 3};
    refused(argv[1], argv[2], zero_share, world, "a rank with 0 samples");
    refused(argv[1], argv[2], three, world == 3 ? 2 : 3, "weights for another number of ranks");
    int rc = test_finish("test_balance");
    MPI_Finalize();
    return rc;
}
