/* Reader processes (--readers) change where batches are read, not what is
 * trained: with R readers and T trainers, the trainers reach the same bits
 * (parameters, batch-norm running statistics and momentum, with --augment
 * crop:2,flip) and the same evaluation (the readers serve the test split
 * too) as T ranks that read their own data. Cases: every (R, T) with
 * R in {1, 2}, T in {2, 3} and R + T the ranks of the job.
 *
 * Also: a run stopped by a signal (exit 75 on every rank, readers included)
 * and resumed with --resume auto ends with the same bits (the readers take
 * the start step from the trainers; --sync-bn, one batch in flight), and the refusals (exit 2 on every rank):
 * no trainer left, more readers than trainers, synthetic data, a data set too
 * small for the slices. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoint.h"
#include "core/error.h"
#include "core/trainer.h"
#include "testing.h"

static int rank, world;

static void config(TrainConfig *cfg, const char *data, const char *out)
{
    config_defaults(cfg);
    cfg->model = "conv:8:3,bn,relu,pool:2,flatten,fc:32,bn,relu,fc:10";
    cfg->data = data;
    cfg->output_dir = out;
    cfg->epochs = 1;
    cfg->max_steps = 12;
    cfg->batch = 60; /* divisible by 2 and 3 */
    cfg->lr = 0.05;
    cfg->limit_train = 1200;
    /* Evaluation at the end, read by the readers too: 101 samples in
     * batches of 40, so slices are uneven and the last batch is short. */
    cfg->eval_every = 1;
    cfg->limit_test = 101;
    cfg->eval_batch = 40;
    cfg->log_every = 1000;
    cfg->check_every = 5;
    cfg->augment = "crop:2,flip";
    cfg->keep_params = 1;
}

static void fresh_dir(const char *dir)
{
    if (rank == 0) {
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", dir);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

/* The momentum of the newest checkpoint in <out>/checkpoints (NULL: none). */
static float *momentum_of(const char *out, size_t *n)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/checkpoints", out);
    Checkpoint ck;
    memset(&ck, 0, sizeof ck);
    int found = 0;
    if (checkpoint_latest(dir, &ck, &found) || !found) return NULL;
    float *m = malloc(ck.st.n_params * sizeof *m);
    if (m) memcpy(m, ck.st.momentum, ck.st.n_params * sizeof *m);
    *n = ck.st.n_params;
    checkpoint_free(&ck);
    return m;
}

/* The whole text of a file (NULL: unreadable). */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0, n;
    char chunk[4096];
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + n + 1 > cap) {
            cap = 2 * (len + n + 1);
            char *nb = realloc(buf, cap);
            if (!nb) break;
            buf = nb;
        }
        memcpy(buf + len, chunk, n);
        len += n;
    }
    fclose(f);
    if (buf) buf[len] = '\0';
    return buf;
}

static int same_floats(const float *a, size_t na, const float *b, size_t nb)
{
    return a && b && na == nb && memcmp(a, b, na * sizeof *a) == 0;
}

static void run_case(const char *data, const char *root, int readers, int resume)
{
    int trainers = world - readers;
    char ref_out[4096], rdr_out[4096];
    snprintf(ref_out, sizeof ref_out, "%s/ref-%d", root, trainers);
    snprintf(rdr_out, sizeof rdr_out, "%s/readers-%d-%d%s", root, readers, trainers, resume ? "-resume" : "");
    fresh_dir(ref_out);
    fresh_dir(rdr_out);
    /* Each trainer logs the sample indices of its slices (BASIN_TEST_SAMPLES):
     * the same slices must reach the same trainer, step by step. */
    char ref_samples[4200], rdr_samples[4200];
    snprintf(ref_samples, sizeof ref_samples, "%s/samples", ref_out);
    snprintf(rdr_samples, sizeof rdr_samples, "%s/samples", rdr_out);
    if (rank == 0) {
        char cmd[9000];
        snprintf(cmd, sizeof cmd, "mkdir -p '%s' '%s'", ref_out, rdr_out);
        if (system(cmd) != 0) fprintf(stderr, "cannot create %s\n", rdr_out);
    }
    MPI_Barrier(MPI_COMM_WORLD);

    /* The reference: the first T ranks read their own data. */
    TrainConfig cfg;
    config(&cfg, data, ref_out);
    /* Without --sync-bn the running statistics are averaged over the ranks
     * at every checkpoint, so a run stopped at step 6 holds other ones than
     * a run that was not, readers or not: the resumed case uses --sync-bn,
     * whose statistics are the same on every rank. */
    cfg.sync_bn = resume;
    MPI_Comm sub;
    MPI_Comm_split(MPI_COMM_WORLD, rank < trainers ? 0 : MPI_UNDEFINED, rank, &sub);
    TrainResult ref = {0}, got = {0};
    setenv("BASIN_TEST_SAMPLES", ref_samples, 1);
    if (rank < trainers) {
        EXPECT(trainer_run(&cfg, sub, &ref) == 0, "the %d-rank reference run failed", trainers);
        MPI_Comm_free(&sub);
    }
    MPI_Barrier(MPI_COMM_WORLD);

    setenv("BASIN_TEST_SAMPLES", rdr_samples, 1);
    config(&cfg, data, rdr_out);
    cfg.sync_bn = resume;
    cfg.readers = readers;
    cfg.reader_prefetch = resume ? 1 : 2;
    if (resume) {
        /* Trainer 0 gets SIGTERM after step 5: every rank stops with 75 and
         * a checkpoint at step 6; the next run resumes from it. */
        setenv("BASIN_TEST_SIGNAL", "0:5", 1);
        TrainResult stopped = {0};
        int rc = trainer_run(&cfg, MPI_COMM_WORLD, &stopped);
        unsetenv("BASIN_TEST_SIGNAL");
        EXPECT(rc == BASIN_EXIT_PREEMPTED, "rank %d (%s): the signalled run returned %d, not %d", rank,
               rank < trainers ? "trainer" : "reader", rc, BASIN_EXIT_PREEMPTED);
        EXPECT(rank >= trainers || stopped.steps == 6, "rank %d stopped after %llu steps, not 6", rank,
               (unsigned long long)stopped.steps);
        free(stopped.params);
        free(stopped.state);
        cfg.resume = "auto";
    }
    int rc = trainer_run(&cfg, MPI_COMM_WORLD, &got);
    unsetenv("BASIN_TEST_SAMPLES");
    EXPECT(rc == 0, "rank %d (%s): the run with %d reader(s) returned %d", rank,
           rank < trainers ? "trainer" : "reader", readers, rc);

    if (rank < trainers) {
        char a[4300], b[4300];
        snprintf(a, sizeof a, "%s.rank%d", ref_samples, rank);
        snprintf(b, sizeof b, "%s.rank%d", rdr_samples, rank);
        char *sa = slurp(a), *sb = slurp(b);
        EXPECT(sa && sb && strlen(sa) > 0 && strcmp(sa, sb) == 0,
               "%d reader(s), %d trainers%s: trainer %d's samples (%s) differ from the in-process reader's (%s)",
               readers, trainers, resume ? ", stopped and resumed" : "", rank, b, a);
        free(sa);
        free(sb);
        EXPECT(ref.test_loss == got.test_loss && ref.test_accuracy == got.test_accuracy,
               "%d reader(s), %d trainers%s: evaluation loss %.9g accuracy %.6f, in-process %.9g %.6f", readers,
               trainers, resume ? ", stopped and resumed" : "", got.test_loss, got.test_accuracy, ref.test_loss,
               ref.test_accuracy);
        EXPECT(got.test_loss > 0, "rank %d: no evaluation (test loss %g)", rank, got.test_loss);
        EXPECT(got.steps == 12, "rank %d: %llu steps", rank, (unsigned long long)got.steps);
        EXPECT(same_floats(ref.params, ref.n_params, got.params, got.n_params),
               "%d reader(s), %d trainers%s: trainer %d's parameters differ from the in-process reader's", readers,
               trainers, resume ? ", stopped and resumed" : "", rank);
        EXPECT(same_floats(ref.state, ref.n_state, got.state, got.n_state),
               "%d reader(s), %d trainers%s: trainer %d's batch-norm statistics differ", readers, trainers,
               resume ? ", stopped and resumed" : "", rank);
    } else {
        EXPECT(got.params == NULL, "reader rank %d returned parameters", rank);
    }
    if (rank == 0) {
        /* The step lines of the metrics say what the readers did. */
        char path[4200];
        snprintf(path, sizeof path, "%s/metrics.jsonl", rdr_out);
        char *m = slurp(path);
        EXPECT(m && strstr(m, "\"batches_ready\":") && strstr(m, "\"reader_images_per_s\":"),
               "%s: no reader metrics in the step lines", path);
        free(m);
        size_t na = 0, nb = 0;
        float *ma = momentum_of(ref_out, &na), *mb = momentum_of(rdr_out, &nb);
        EXPECT(same_floats(ma, na, mb, nb), "%d reader(s), %d trainers%s: the final checkpoints' momentum differs",
               readers, trainers, resume ? ", stopped and resumed" : "");
        free(ma);
        free(mb);
        printf("%d reader(s) feeding %d trainers%s: parameters, statistics and momentum bit-identical: %s\n", readers,
               trainers, resume ? " (stopped at step 6 and resumed)" : "", test_failures_ ? "NO" : "yes");
    }
    free(ref.params);
    free(ref.state);
    free(got.params);
    free(got.state);
}

/* A configuration every rank must refuse with 2 (one line, from rank 0). */
static void refused(const char *data, const char *root, int readers, size_t limit, const char *what)
{
    char out[4096];
    snprintf(out, sizeof out, "%s/refused", root);
    TrainConfig cfg;
    config(&cfg, data, out);
    cfg.readers = readers;
    if (limit) cfg.limit_train = limit;
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
    if (world < 3) TEST_SKIP("needs 3 or more ranks (1 reader, 2 trainers)");
    int cases = 0;
    for (int readers = 1; readers <= 2; readers++) {
        int trainers = world - readers;
        if (trainers < 2 || trainers > 3) continue;
        run_case(argv[1], argv[2], readers, 0);
        cases++;
    }
    EXPECT(cases > 0, "no case for %d ranks (3, 4 or 5 expected)", world);
    /* Stop and resume once, with the readers of the first case. */
    run_case(argv[1], argv[2], world - 2 <= 3 && world - 2 >= 2 && world > 3 ? 2 : 1, 1);

    refused(argv[1], argv[2], world, 0, "--readers as many as the ranks");
    refused(argv[1], argv[2], world - 1, 0, "more readers than trainers");
    refused("synthetic:1x8x8:10:600", argv[2], 1, 0, "--readers with synthetic data");
    refused(argv[1], argv[2], 1, 30, "a data set smaller than the global batch");
    int rc = test_finish("test_readers");
    MPI_Finalize();
    return rc;
}
