/* Bit-exact resume with each --optimizer: LARS (momentum only), Adam and
 * AdamW (momentum as the first moment, and the second moment), with the
 * sharded update on several ranks. K steps straight, or stopped by SIGTERM
 * after step 6 and resumed from the checkpoint for the rest, end with the
 * same parameter bits; the bias correction must continue from the global
 * step, and the second moment must come back whole. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoint.h"
#include "core/error.h"
#include "core/trainer.h"
#include "testing.h"

static void run_case(const char *data, const char *dir, OptimKind kind, int sharded)
{
    int rank, world;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    char straight[4096], broken[4096];
    snprintf(straight, sizeof straight, "%s/%s-%d/straight", dir, optim_name(kind), sharded);
    snprintf(broken, sizeof broken, "%s/%s-%d/interrupted", dir, optim_name(kind), sharded);
    if (rank == 0) {
        char cmd[9000];
        snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", straight, broken);
        if (system(cmd) != 0) fprintf(stderr, "could not clear %s\n", dir);
    }
    MPI_Barrier(MPI_COMM_WORLD);

    TrainConfig cfg;
    config_defaults(&cfg);
    cfg.model = "conv:4:5,relu,pool:2,flatten,fc:32,relu,fc:10";
    cfg.data = data;
    cfg.epochs = 1;
    cfg.batch = 32;
    cfg.limit_train = 480; /* 15 steps */
    cfg.eval_every = 0;
    cfg.log_every = 100;
    cfg.check_every = 4;
    cfg.keep_params = 1;
    cfg.bucket_mb = 0.01; /* buckets (and owners' parts) that cut layers */
    cfg.sharded_update = sharded;
    cfg.optimizer = kind;
    cfg.lr = kind == OPTIM_LARS ? 0.5 : 0.002;
    cfg.lars_eta = 0.01;

    cfg.output_dir = straight;
    TrainResult a = {0};
    EXPECT(trainer_run(&cfg, MPI_COMM_WORLD, &a) == BASIN_OK, "%s: straight run failed", optim_name(kind));

    /* The final checkpoint holds the second moment exactly for Adam. */
    if (rank == 0) {
        char path[8192];
        snprintf(path, sizeof path, "%s/checkpoints/ckpt-0000000015.h5", straight);
        Checkpoint ck;
        memset(&ck, 0, sizeof ck);
        EXPECT(checkpoint_read(path, &ck) == BASIN_OK, "%s: cannot read %s", optim_name(kind), path);
        size_t want = kind == OPTIM_LARS ? 0 : ck.st.n_params;
        EXPECT(ck.st.n_moment2 == want && (want == 0) == (ck.st.moment2 == NULL),
               "%s: checkpoint holds %zu second-moment values, not %zu", optim_name(kind), ck.st.n_moment2, want);
        checkpoint_free(&ck);
    }

    char hook[32];
    snprintf(hook, sizeof hook, "%d:6", world - 1);
    setenv("BASIN_TEST_SIGNAL", hook, 1);
    cfg.output_dir = broken;
    TrainResult b = {0};
    int rc = trainer_run(&cfg, MPI_COMM_WORLD, &b);
    unsetenv("BASIN_TEST_SIGNAL");
    EXPECT(rc == BASIN_EXIT_PREEMPTED, "%s: interrupted run returned %d", optim_name(kind), rc);

    cfg.resume = "auto";
    TrainResult c = {0};
    EXPECT(trainer_run(&cfg, MPI_COMM_WORLD, &c) == BASIN_OK, "%s: resumed run failed", optim_name(kind));
    EXPECT(a.params && c.params && a.n_params == c.n_params &&
               memcmp(a.params, c.params, a.n_params * sizeof(float)) == 0,
           "%s (sharded update %d, %d ranks): resumed parameters differ from the uninterrupted run's",
           optim_name(kind), sharded, world);
    free(a.params), free(b.params), free(c.params);
}

/* /moment2 round-trips bit for bit, and one flipped bit of it is refused. */
static void moment2_file_case(const char *dir)
{
    enum { N = 1000 };
    static float p[N], m[N], v[N];
    for (int i = 0; i < N; i++) p[i] = 0.001f * (float)i, m[i] = -0.5f * (float)i, v[i] = 12345.0f + (float)i;
    CheckpointState st = {.model_spec = "mlp", .config_text = "optimizer=adam", .next_step = 3, .n_params = N,
                          .params = p, .momentum = m, .n_moment2 = N, .moment2 = v};
    char sub[8192], path[8192];
    snprintf(sub, sizeof sub, "%s/moment2-file", dir);
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", sub);
    if (system(cmd) != 0) fprintf(stderr, "could not clear %s\n", sub);
    EXPECT(checkpoint_write(sub, &st, 0, path, sizeof path) == BASIN_OK, "write with /moment2");
    Checkpoint ck;
    memset(&ck, 0, sizeof ck);
    EXPECT(checkpoint_read(path, &ck) == BASIN_OK && ck.st.n_moment2 == N && ck.moment2 &&
               memcmp(ck.moment2, v, sizeof v) == 0,
           "/moment2 does not round-trip");
    checkpoint_free(&ck);
    /* A second moment of the wrong length is refused before anything is written. */
    st.n_moment2 = N - 1;
    EXPECT(checkpoint_write(sub, &st, 0, NULL, 0) == BASIN_ERR_USAGE, "short second moment written");
    /* Flip one bit inside /moment2's data (found by its first values). */
    FILE *f = fopen(path, "r+b");
    EXPECT(f != NULL, "cannot open %s", path);
    if (!f) return;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    unsigned char *bytes = malloc((size_t)size);
    fseek(f, 0, SEEK_SET);
    EXPECT(bytes && fread(bytes, 1, (size_t)size, f) == (size_t)size, "cannot read %s", path);
    long at = -1;
    for (long i = 0; bytes && i + (long)(4 * sizeof(float)) <= size && at < 0; i++)
        if (memcmp(bytes + i, v, 4 * sizeof(float)) == 0) at = i;
    EXPECT(at >= 0, "/moment2 data not found in %s", path);
    if (at >= 0) {
        unsigned char b = bytes[at + 9] ^ 0x10;
        fseek(f, at + 9, SEEK_SET);
        fwrite(&b, 1, 1, f);
    }
    fclose(f);
    free(bytes);
    memset(&ck, 0, sizeof ck);
    EXPECT(checkpoint_read(path, &ck) == BASIN_ERR_USAGE, "a flipped bit in /moment2 was accepted");
    checkpoint_free(&ck);
}

int main(int argc, char **argv)
{
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    if (argc < 3) {
        fprintf(stderr, "usage: %s DATA.h5 OUTPUT_DIR\n", argv[0]);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    int world, rank;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) moment2_file_case(argv[2]);
    static const OptimKind kinds[] = {OPTIM_LARS, OPTIM_ADAM, OPTIM_ADAMW};
    for (int k = 0; k < 3; k++) {
        run_case(argv[1], argv[2], kinds[k], 1);
        if (world > 1) run_case(argv[1], argv[2], kinds[k], 0);
    }
    int rc = test_finish("test_resume_optim");
    MPI_Finalize();
    return rc;
}
