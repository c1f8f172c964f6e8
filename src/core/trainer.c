#include "core/trainer.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "allreduce/allreduce.h"
#include "checkpoints/checkpoint.h"
#include "core/error.h"
#include "core/files.h"
#include "core/metrics.h"
#include "core/net.h"
#include "core/optim.h"
#include "core/preempt.h"
#include "core/runlock.h"
#include "core/trace.h"
#include "models/models.h"
#include "reader/reader.h"

#ifdef BASIN_HAVE_CUDA
#include "allreduce_gpu.h"
#include "ops_cuda.h"
#endif

struct Trainer;

/* A contiguous slice of the flat gradient buffer, reduced as one request. */
typedef struct {
    struct Trainer *t;
    size_t lo, hi;
    AllreducePlan *plan;
    AllreduceTicket ticket;
    int started, done;
    double t_start, t_done;
} Bucket;

/* Per-step time split, seconds (in the order of StepRecord.timing_*). */
enum { T_DATA, T_FORWARD, T_BACKWARD, T_COMM, T_OPTIM, T_COUNT };

typedef struct Trainer {
    const TrainConfig *cfg;
    MPI_Comm comm;
    int rank, world;
    Reader *train, *test;
    Net *net;
    LayerSpec specs[MODEL_MAX_LAYERS];
    int n_specs;
    size_t rank_batch;
    uint64_t steps_per_epoch, total_steps;
    int epochs;                      /* epochs this run reaches (--max-steps may cut it) */
    Schedule schedule;
    SgdConfig sgd;
    Metrics metrics;
    Trace trace;
    double t_start;

    AllreduceComm *ar;
    float *window;        /* gradient buffer inside the shared window */
    float *state_window;  /* sharded update: params and momentum, 2 n_params floats */
    int sharded;          /* buckets run allreduce_start_update */
    const Ops *ops;       /* the network's backend: ops_cpu, or ops_cuda with --device cuda */
    int on_gpu;           /* the network's buffers are device memory */
    float *d_images[2];   /* --device cuda: the batch on the device, and in pinned host */
    int32_t *d_labels[2]; /* memory on its way there; two of each, so that one step's */
    float *p_images[2];   /* upload overlaps the previous step's kernels */
    int32_t *p_labels[2];
    int slot;
    float *host;          /* --device cuda: 2 n_params floats of host staging */
    void *gar;            /* --device cuda, several ranks: the GPU all-reduce (GpuAllreduce) */
    int gar_status;       /* the first failed gpu_allreduce_start of this step */
    float lr;             /* this step's learning rate, for the update in the progress thread */
    Bucket *buckets;
    int n_buckets, next_bucket;

    long corrupt_rank, corrupt_step; /* test hook: BASIN_TEST_CORRUPT=RANK:STEP */
    long signal_rank, signal_step;   /* test hook: BASIN_TEST_SIGNAL=RANK:STEP raises SIGTERM */
    double stall_s;                  /* test hook: BASIN_TEST_CKPT_STALL=S, a checkpoint write takes S s more */
    FILE *samples_log;               /* test hook: BASIN_TEST_SAMPLES=PREFIX */

    char ckpt_dir[4096];
    RunLock lock;                    /* rank 0: the output and checkpoint folders */
    Checkpoint resume;               /* rank 0: the checkpoint resumed from */
    int resuming;                    /* every rank: resume.st is being used */
    uint64_t start_step;
    double elapsed_before;           /* training seconds of earlier runs */
    double last_ckpt;                /* clock of the last checkpoint */
    long long good_step;             /* step of the newest checkpoint written or resumed from; -1: none */
    char good_path[4096];            /* rank 0: its file */
    uint64_t steps_done;             /* steps completed, for the outcome */
} Trainer;

static int gather_momentum(Trainer *t);

#define CHECK_MPI(call)                                                            \
    do {                                                                           \
        int mpi_rc_ = (call);                                                      \
        if (mpi_rc_ != MPI_SUCCESS) {                                              \
            char mpi_msg_[MPI_MAX_ERROR_STRING];                                   \
            int mpi_len_ = 0;                                                      \
            MPI_Error_string(mpi_rc_, mpi_msg_, &mpi_len_);                        \
            return BASIN_FAIL(BASIN_ERR_RUNTIME, "%s failed: %s", #call, mpi_msg_); \
        }                                                                          \
    } while (0)

static int sum_doubles(Trainer *t, double *v, int n)
{
    CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, t->comm));
    return BASIN_OK;
}

static void format_eta(double s, char *buf, size_t len)
{
    if (!(s >= 0) || s > 1e7) {
        snprintf(buf, len, "?");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, len, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else if (t >= 60) snprintf(buf, len, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, len, "%lds", t);
}

/* ---- checkpoints ------------------------------------------------------------ */

/* Rank 0 finds and checks the checkpoint to resume from; every rank learns
 * the outcome. A checkpoint that does not fit this run is a usage error,
 * found before anything is written. */
static int resume_check(Trainer *t, const Checkpoint *ck)
{
    const CheckpointState *st = &ck->st;
    const DatasetInfo *info = reader_info(t->train);
    const char *spec = model_resolve(t->cfg->model);
    if (strcmp(st->model_spec, spec) != 0)
        return basin_error(BASIN_ERR_USAGE, "checkpoint %s is of another model (%s), not %s: resume it "
                           "with that model, or train this one with another --output-dir", ck->path,
                           st->model_spec, spec);
    if (st->n_params != t->net->n_params || st->classes != info->classes || st->in_c != info->c ||
        st->in_h != info->h || st->in_w != info->w)
        return basin_error(BASIN_ERR_USAGE, "checkpoint %s does not fit this model and data (%zu parameters, "
                           "%dx%dx%d inputs, %d classes)", ck->path, st->n_params, st->in_c, st->in_h,
                           st->in_w, st->classes);
    if (st->global_batch != t->cfg->batch)
        return basin_error(BASIN_ERR_USAGE, "checkpoint %s was trained with --batch %llu, not %zu: the global "
                           "batch must stay the same", ck->path, (unsigned long long)st->global_batch,
                           t->cfg->batch);
    if (st->seed != t->cfg->seed)
        return basin_error(BASIN_ERR_USAGE, "checkpoint %s was trained with --seed %llu, not %llu", ck->path,
                           (unsigned long long)st->seed, (unsigned long long)t->cfg->seed);
    if (st->train_samples != info->count)
        return basin_error(BASIN_ERR_USAGE, "checkpoint %s was trained on %llu samples, this run has %zu",
                           ck->path, (unsigned long long)st->train_samples, info->count);
    TRY(config_resume_check(st->config_text, t->cfg, ck->path));
    /* A new length is allowed (--epochs, --max-steps); the cosine schedule
     * spans the run, so its learning rates change from here on. */
    char e[64], m[64];
    if (t->cfg->schedule == SCHEDULE_COSINE && config_describe_value(st->config_text, "epochs", e, sizeof e)) {
        uint64_t was = strtoull(e, NULL, 10) * t->steps_per_epoch;
        unsigned long long ms = config_describe_value(st->config_text, "max_steps", m, sizeof m) ?
                                    strtoull(m, NULL, 10) : 0;
        if (ms > 0 && ms < was) was = ms;
        if (was != t->total_steps)
            basin_info("basin: note: the run now ends at step %llu, not %llu: the cosine schedule is stretched to "
                       "it, so from step %llu on the learning rate differs from the original run's",
                       (unsigned long long)t->total_steps, (unsigned long long)was,
                       (unsigned long long)st->next_step);
    }
    return BASIN_OK;
}

static int resume_setup(Trainer *t)
{
    const TrainConfig *cfg = t->cfg;
    if (!cfg->resume) return BASIN_OK;
    int found = 0, rc = BASIN_OK;
    if (t->rank == 0) {
        if (strcmp(cfg->resume, "auto") == 0) {
            rc = checkpoint_latest(t->ckpt_dir, &t->resume, &found);
            if (!rc && !found) basin_info("basin: no checkpoint in %s: starting from step 0", t->ckpt_dir);
        } else {
            rc = checkpoint_read(cfg->resume, &t->resume);
            found = rc == BASIN_OK;
        }
        if (!rc && found) rc = resume_check(t, &t->resume);
    }
    int msg[2] = {rc, found};
    CHECK_MPI(MPI_Bcast(msg, 2, MPI_INT, 0, t->comm));
    TRY(msg[0]);
    t->resuming = msg[1];
    if (!t->resuming) return BASIN_OK;
    uint64_t pos[2] = {t->resume.st.next_step, 0};
    double el = t->resume.st.elapsed_s;
    CHECK_MPI(MPI_Bcast(pos, 2, MPI_UINT64_T, 0, t->comm));
    CHECK_MPI(MPI_Bcast(&el, 1, MPI_DOUBLE, 0, t->comm));
    t->start_step = pos[0];
    t->elapsed_before = el;
    t->good_step = (long long)pos[0];
    if (t->rank == 0) snprintf(t->good_path, sizeof t->good_path, "%s", t->resume.path);
    return BASIN_OK;
}

/* Broadcast a float buffer from rank 0 in pieces MPI's int count can hold. */
static int bcast_floats(Trainer *t, float *buf, size_t n)
{
    const size_t chunk = (size_t)1 << 28;
    for (size_t off = 0; off < n; off += chunk) {
        size_t c = n - off < chunk ? n - off : chunk;
        CHECK_MPI(MPI_Bcast(buf + off, (int)c, MPI_FLOAT, 0, t->comm));
    }
    return BASIN_OK;
}

/* The parameters (which = 0) or the momentum (1) in host memory: the buffer
 * itself on the CPU, a copy in t->host on the GPU. */
static const float *host_state(Trainer *t, const float *buf, int which)
{
    if (!t->on_gpu) return buf;
    float *h = t->host + (size_t)which * t->net->n_params;
    t->ops->to_host(h, buf, t->net->n_params * sizeof(float));
    return h;
}

/* Load the resumed state into the network on every rank, and place the
 * reader at the step to run next. */
static int resume_apply(Trainer *t)
{
    Net *net = t->net;
    size_t n = net->n_params;
    /* MPI moves host memory: on the GPU the state goes through t->host. */
    float *p = t->on_gpu ? t->host : net->params, *m = t->on_gpu ? t->host + n : net->mom;
    if (t->rank == 0) {
        memcpy(p, t->resume.st.params, n * sizeof(float));
        memcpy(m, t->resume.st.momentum, n * sizeof(float));
    }
    TRY(bcast_floats(t, p, n));
    TRY(bcast_floats(t, m, n));
    if (t->on_gpu) {
        t->ops->to_device(net->params, p, n * sizeof(float));
        t->ops->to_device(net->mom, m, n * sizeof(float));
    }
    uint64_t spe = t->steps_per_epoch;
    TRY(reader_seek(t->train, t->start_step / spe, t->start_step % spe));
    basin_info("basin: resumed from %s at step %llu (epoch %llu)", t->rank == 0 ? t->resume.path : "",
               (unsigned long long)t->start_step, (unsigned long long)(t->start_step / spe + 1));
    return BASIN_OK;
}

/* Where a resume would start from now, for the lines that say what was
 * lost: "step 100 (out/checkpoints/ckpt-100.h5)" or "step 0 (no checkpoint
 * yet)". */
static void describe_good(const Trainer *t, char *buf, size_t len)
{
    if (t->good_step < 0) snprintf(buf, len, "step 0 (no checkpoint yet)");
    else snprintf(buf, len, "step %lld (%s)", t->good_step, t->good_path);
}

static unsigned long long steps_lost(const Trainer *t, uint64_t step)
{
    long long good = t->good_step < 0 ? 0 : t->good_step;
    return step > (uint64_t)good ? (unsigned long long)(step - (uint64_t)good) : 0ull;
}

/* The outcome as --status-file records it (one line, keys as documented). */
static void format_status(const Trainer *t, int code, uint64_t step, char *buf, size_t len)
{
    snprintf(buf, len, "exit=%d step=%llu checkpoint_step=%lld lost=%llu checkpoint=%s\n", code,
             (unsigned long long)step, t->good_step, steps_lost(t, step), t->good_step < 0 ? "" : t->good_path);
}

/* Rank 0 writes the replicated state; every rank learns whether it worked.
 * A failure is one line, printed by the writer. */
static int write_checkpoint(Trainer *t, uint64_t next_step, const char *why)
{
    const TrainConfig *cfg = t->cfg;
    int rc = BASIN_OK;
    double t0 = net_clock();
    char path[4096] = "";
    TRY(gather_momentum(t));
    if (t->rank == 0) {
        const DatasetInfo *info = reader_info(t->train);
        char text[4096];
        config_describe(cfg, text, sizeof text);
        CheckpointState st = {
            .model_spec = model_resolve(cfg->model), .config_text = text, .config_hash = config_hash(cfg),
            .seed = cfg->seed, .global_batch = cfg->batch, .world_size = (uint32_t)t->world,
            .train_samples = info->count, .in_c = info->c, .in_h = info->h, .in_w = info->w,
            .classes = info->classes, .next_step = next_step, .epoch = next_step / t->steps_per_epoch,
            .step_in_epoch = next_step % t->steps_per_epoch, .samples_seen = next_step * cfg->batch,
            .elapsed_s = t->elapsed_before + (t0 - t->t_start), .n_params = t->net->n_params,
            .params = host_state(t, t->net->params, 0), .momentum = host_state(t, t->net->mom, 1),
        };
        if (t->stall_s > 0) nanosleep(&(struct timespec){(time_t)t->stall_s, (long)(fmod(t->stall_s, 1.0) * 1e9)}, NULL);
        rc = checkpoint_write(t->ckpt_dir, &st, cfg->keep_checkpoints, path, sizeof path);
    }
    CHECK_MPI(MPI_Bcast(&rc, 1, MPI_INT, 0, t->comm));
    t->last_ckpt = net_clock();
    trace_event(&t->trace, "checkpoint", "checkpoint", 0, t0, t->last_ckpt);
    if (rc != BASIN_OK) return rc;
    t->good_step = (long long)next_step;
    if (t->rank == 0) snprintf(t->good_path, sizeof t->good_path, "%s", path);
    basin_info("basin: checkpoint (%s) at step %llu: %s in %.2f s", why, (unsigned long long)next_step, path,
               t->last_ckpt - t0);
    return BASIN_OK;
}

/* A periodic or timed checkpoint failed: go on, or stop with 74. */
static int periodic_checkpoint(Trainer *t, uint64_t step, const char *why)
{
    if (write_checkpoint(t, step, why) == BASIN_OK) return BASIN_OK;
    char good[4200];
    describe_good(t, good, sizeof good);
    if (t->cfg->checkpoint_fail_stop) {
        basin_info("basin: stopped after step %llu because its checkpoint failed (--checkpoint-failure stop): "
                   "exit %d; resuming starts from %s: %llu step(s) lost", (unsigned long long)step,
                   BASIN_EXIT_CHECKPOINT_FAILED, good, steps_lost(t, step));
        return BASIN_EXIT_CHECKPOINT_FAILED;
    }
    basin_info("basin: training goes on after the failed checkpoint of step %llu; a resume would start from %s "
               "(--checkpoint-failure stop ends the run instead)", (unsigned long long)step, good);
    return BASIN_OK;
}

/* Stop at this step boundary for a signal: a checkpoint of `done` steps
 * within --grace-seconds, then 75; 76 when it could not be written. */
static int preempted_stop(Trainer *t, uint64_t done)
{
    const TrainConfig *cfg = t->cfg;
    double s0 = net_clock();
    char good[4200], line[8400], status[8400];
    describe_good(t, good, sizeof good);
    preempt_clear();
    snprintf(line, sizeof line,
             "basin: error: the grace period (--grace-seconds %g) ran out before the checkpoint of step %llu was "
             "written: exit %d; resuming starts from %s: %llu step(s) lost\n", cfg->grace_seconds,
             (unsigned long long)done, BASIN_EXIT_PREEMPTED_UNSAVED, good, steps_lost(t, done));
    format_status(t, BASIN_EXIT_PREEMPTED_UNSAVED, done, status, sizeof status);
    /* Rank 0 speaks; the others wait for it a little longer, so that their
     * exit does not get it killed before it has said what happened. */
    preempt_arm_grace(t->rank == 0 ? cfg->grace_seconds : cfg->grace_seconds + 2.0, BASIN_EXIT_PREEMPTED_UNSAVED,
                      t->rank == 0 ? line : NULL, t->rank == 0 ? cfg->status_file : NULL, status);
    int rc = write_checkpoint(t, done, "preempted");
    t->steps_done = done;
    if (rc == BASIN_ERR_RUNTIME || rc == BASIN_ERR_USAGE) {
        /* The checkpoint failed (the error line is out): every rank exits 76. */
        describe_good(t, good, sizeof good);
        basin_info("basin: preempted after step %llu, but its checkpoint failed: exit %d; resuming starts from "
                   "%s: %llu step(s) lost", (unsigned long long)done, BASIN_EXIT_PREEMPTED_UNSAVED, good,
                   steps_lost(t, done));
        return BASIN_EXIT_PREEMPTED_UNSAVED;
    }
    if (rc) return rc;
    /* Written: the time that is left may only end in 75. */
    format_status(t, BASIN_EXIT_PREEMPTED, done, status, sizeof status);
    double left = cfg->grace_seconds - (net_clock() - s0);
    preempt_arm_grace(left > 1.0 ? left : 1.0, BASIN_EXIT_PREEMPTED, NULL, t->rank == 0 ? cfg->status_file : NULL,
                      status);
    basin_info("basin: preempted after step %llu; checkpoint written, stopped in %.2f s; exit %d (resumable, 0 "
               "steps lost)", (unsigned long long)done, net_clock() - s0, BASIN_EXIT_PREEMPTED);
    return BASIN_EXIT_PREEMPTED;
}

/* ---- set-up: everything a user can get wrong, before any file is written -- */

/* --device: the backend of the network, and the GPU of this rank (by its
 * index among the ranks of its host). */
static int select_device(Trainer *t)
{
    const TrainConfig *cfg = t->cfg;
    int gpu = !strcmp(cfg->device, "cuda");
    int nccl = !strcmp(cfg->allreduce, "nccl");
    if (!gpu) {
        if (nccl) return basin_error(BASIN_ERR_USAGE, "--allreduce nccl needs --device cuda");
        t->ops = &ops_cpu;
        return BASIN_OK;
    }
#ifdef BASIN_HAVE_CUDA
    if (strcmp(cfg->allreduce, "auto") && strcmp(cfg->allreduce, "hier") && !nccl)
        return basin_error(BASIN_ERR_USAGE, "--allreduce %s runs on host memory: with --device cuda use auto, "
                                            "hier or nccl", cfg->allreduce);
    MPI_Comm host;
    int local = 0;
    CHECK_MPI(MPI_Comm_split_type(t->comm, MPI_COMM_TYPE_SHARED, t->rank, MPI_INFO_NULL, &host));
    int mrc = MPI_Comm_rank(host, &local);
    MPI_Comm_free(&host);
    CHECK_MPI(mrc);
    TRY(ops_cuda_select(local));
    t->ops = &ops_cuda;
    t->on_gpu = 1;
    return BASIN_OK;
#else
    return basin_error(BASIN_ERR_USAGE, "--device cuda: this build has no CUDA backend (nvcc, cuBLAS or NCCL were "
                                        "not found when it was configured)");
#endif
}

static int trainer_setup(Trainer *t)
{
    const TrainConfig *cfg = t->cfg;
    if (cfg->checkpoint_dir) snprintf(t->ckpt_dir, sizeof t->ckpt_dir, "%s", cfg->checkpoint_dir);
    else snprintf(t->ckpt_dir, sizeof t->ckpt_dir, "%s/checkpoints", cfg->output_dir);
    if (cfg->supernode_size > t->world)
        return basin_error(BASIN_ERR_USAGE, "--supernode-size %d is larger than the %d rank(s) of the job: use a "
                           "divisor of the ranks per host, or leave it out for one supernode per host",
                           cfg->supernode_size, t->world);
    if (cfg->batch % (size_t)t->world)
        return basin_error(BASIN_ERR_USAGE,
                           "--batch %zu is not divisible by the %d ranks: use a multiple of %d",
                           cfg->batch, t->world, t->world);
    t->rank_batch = cfg->batch / (size_t)t->world;
    TRY(model_parse(cfg->model, t->specs, MODEL_MAX_LAYERS, &t->n_specs));

    ReaderConfig rc = {
        .path = cfg->data, .split = "train", .limit = cfg->limit_train, .seed = cfg->seed,
        .global_batch = cfg->batch, .rank = t->rank, .world = t->world,
        .shuffle = 1, .drop_last = 1, .prefetch = cfg->prefetch,
    };
    TRY(reader_open(&rc, &t->train));
    const DatasetInfo *info = reader_info(t->train);
    if ((size_t)t->world > info->count)
        return basin_error(BASIN_ERR_USAGE, "%d ranks but only %zu training samples", t->world, info->count);
    t->steps_per_epoch = reader_steps_per_epoch(t->train);
    if (t->steps_per_epoch == 0)
        return basin_error(BASIN_ERR_USAGE, "--batch %zu is larger than the %zu training samples",
                           cfg->batch, info->count);

    size_t eval_batch = cfg->eval_batch ? cfg->eval_batch : cfg->batch;
    size_t max_batch = t->rank_batch;
    if (cfg->eval_every > 0) {
        ReaderConfig ec = rc;
        ec.split = "test", ec.limit = cfg->limit_test, ec.global_batch = eval_batch;
        ec.shuffle = 0, ec.drop_last = 0;
        TRY(reader_open(&ec, &t->test));
        const DatasetInfo *ti = reader_info(t->test);
        if (ti->c != info->c || ti->h != info->h || ti->w != info->w || ti->classes != info->classes)
            return basin_error(BASIN_ERR_USAGE, "%s: test and train samples differ in shape or classes",
                               cfg->data);
        size_t eval_rank = (eval_batch + (size_t)t->world - 1) / (size_t)t->world;
        if (eval_rank > max_batch) max_batch = eval_rank;
    }
    Shape in = {info->c, info->h, info->w};
    TRY(select_device(t));
    TRY(net_create(t->specs, t->n_specs, in, info->classes, t->ops, max_batch, &t->net));
    if (t->on_gpu) {
#ifdef BASIN_HAVE_CUDA
        size_t xb = max_batch * shape_size(in) * sizeof(float), yb = max_batch * sizeof(int32_t);
        for (int k = 0; k < 2; k++) {
            t->d_images[k] = t->ops->alloc(xb);
            t->d_labels[k] = t->ops->alloc(yb);
            t->p_images[k] = ops_cuda_host_alloc(xb);
            t->p_labels[k] = ops_cuda_host_alloc(yb);
            if (!t->d_images[k] || !t->d_labels[k] || !t->p_images[k] || !t->p_labels[k])
                return BASIN_FAIL(BASIN_ERR_RUNTIME, "cannot allocate the batch buffers of the device");
        }
#endif
        t->host = basin_malloc(2 * t->net->n_params * sizeof(float));
        if (!t->host) return BASIN_ERR_RUNTIME;
    }

    uint64_t spe = t->steps_per_epoch;
    t->total_steps = (uint64_t)cfg->epochs * spe;
    if (cfg->max_steps > 0 && (uint64_t)cfg->max_steps < t->total_steps) t->total_steps = (uint64_t)cfg->max_steps;
    t->epochs = (int)((t->total_steps + spe - 1) / spe);
    t->schedule = (Schedule){
        .kind = cfg->schedule,
        .base_lr = cfg->scale_lr ? cfg->lr * (double)cfg->batch / 256.0 : cfg->lr,
        .warmup_steps = (uint64_t)llround(cfg->warmup_epochs * (double)spe),
        .total_steps = t->total_steps,
        .step_every = (uint64_t)llround(cfg->lr_step_epochs * (double)spe),
        .gamma = cfg->lr_gamma,
    };
    t->sgd = (SgdConfig){(float)cfg->momentum, (float)cfg->weight_decay, cfg->nesterov};

    /* Test hooks, read from the environment so that they never appear
     * among the options a user sees. */
    const char *hook = getenv("BASIN_TEST_CORRUPT");
    t->corrupt_rank = t->corrupt_step = -1;
    if (hook && sscanf(hook, "%ld:%ld", &t->corrupt_rank, &t->corrupt_step) != 2)
        return basin_error(BASIN_ERR_USAGE, "BASIN_TEST_CORRUPT='%s': expected RANK:STEP", hook);
    hook = getenv("BASIN_TEST_SIGNAL");
    t->signal_rank = t->signal_step = -1;
    if (hook && sscanf(hook, "%ld:%ld", &t->signal_rank, &t->signal_step) != 2)
        return basin_error(BASIN_ERR_USAGE, "BASIN_TEST_SIGNAL='%s': expected RANK:STEP", hook);
    hook = getenv("BASIN_TEST_CKPT_STALL");
    if (hook && (sscanf(hook, "%lf", &t->stall_s) != 1 || !(t->stall_s >= 0)))
        return basin_error(BASIN_ERR_USAGE, "BASIN_TEST_CKPT_STALL='%s': expected seconds", hook);
    return BASIN_OK;
}

/* Every rank must run the same configuration: compare a hash of it. */
static int check_same_config(Trainer *t)
{
    unsigned long long h = config_hash(t->cfg), lo = h, hi = h;
    CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, t->comm));
    CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, t->comm));
    if (lo == hi) return BASIN_OK;
    unsigned long long mine[1] = {h}, *all = t->rank == 0 ? calloc((size_t)t->world, sizeof *all) : NULL;
    CHECK_MPI(MPI_Gather(mine, 1, MPI_UNSIGNED_LONG_LONG, all, 1, MPI_UNSIGNED_LONG_LONG, 0, t->comm));
    if (t->rank == 0) {
        int other = 0;
        for (int r = 1; r < t->world && all; r++)
            if (all[r] != all[0]) {
                other = r;
                break;
            }
        basin_error(BASIN_ERR_USAGE, "ranks were started with different options: rank %d's differ from rank 0's",
                    other);
        free(all);
    }
    return BASIN_ERR_USAGE;
}

/* ---- gradient buckets ---------------------------------------------------- */

static int buckets_setup(Trainer *t)
{
    if (t->world == 1) return BASIN_OK;
    const TrainConfig *cfg = t->cfg;
    AllreduceConfig ac;
    allreduce_config_default(&ac);
    ac.supernode_size = cfg->supernode_size;
    ac.timeout_s = cfg->collective_timeout;
    TRY(allreduce_comm_create(t->comm, &ac, &t->ar));
    size_t n = t->net->n_params;
    if (t->on_gpu) {
#ifdef BASIN_HAVE_CUDA
        GpuAllreduce *g = NULL;
        TRY(gpu_allreduce_create(t->comm, allreduce_topology(t->ar), cfg->allreduce, n, cfg->collective_timeout, &g));
        t->gar = g;
#endif
    } else {
        t->window = allreduce_buffer_alloc(t->ar, n);
        if (!t->window) return BASIN_FAIL(BASIN_ERR_RUNTIME, "cannot allocate the shared gradient buffer");
        TRY(net_bind_grads(t->net, t->window));
        if (cfg->sharded_update) {
            /* The owners hand out parameters: peers read them from the
             * window, and the momentum of each part lives with its owner. */
            t->state_window = allreduce_buffer_alloc(t->ar, 2 * n);
            if (!t->state_window)
                return BASIN_FAIL(BASIN_ERR_RUNTIME, "cannot allocate the shared parameter buffer");
            net_bind_state(t->net, t->state_window, t->state_window + n);
            t->sharded = 1;
        }
    }

    size_t per = (size_t)(cfg->bucket_mb * 1048576.0 / sizeof(float));
    if (per == 0) per = 1;
    t->n_buckets = (int)((n + per - 1) / per);
    t->buckets = basin_calloc((size_t)t->n_buckets, sizeof *t->buckets);
    if (!t->buckets) return BASIN_ERR_RUNTIME;
    for (int k = 0; k < t->n_buckets; k++) {
        Bucket *b = &t->buckets[k];
        b->t = t;
        b->lo = (size_t)k * per;
        b->hi = b->lo + per < n ? b->lo + per : n;
        if (!t->on_gpu) TRY(allreduce_plan(t->ar, cfg->allreduce, b->hi - b->lo, ALLREDUCE_WINDOW_ONLY, &b->plan));
    }
    return BASIN_OK;
}

static void buckets_free(Trainer *t)
{
#ifdef BASIN_HAVE_CUDA
    gpu_allreduce_free(t->gar);
    t->gar = NULL;
#endif
    if (!t->ar) return;
    allreduce_wait_all(t->ar);
    for (int k = 0; k < t->n_buckets; k++) allreduce_plan_free(t->buckets[k].plan);
    free(t->buckets);
    if (t->net) net_bind_grads(t->net, NULL);
    if (t->net) net_bind_state(t->net, NULL, NULL);
    if (t->window) allreduce_buffer_free(t->ar, t->window);
    if (t->state_window) allreduce_buffer_free(t->ar, t->state_window);
    allreduce_comm_free(t->ar);
    t->ar = NULL;
}

/* The optimizer on the part [lo, hi) of bucket b this rank owns, in the
 * progress thread once that part is summed. Backward is done with every
 * layer the bucket covers, so nothing else touches these elements now. */
static void bucket_update(void *arg, size_t lo, size_t hi)
{
    Bucket *b = arg;
    sgd_step_range(b->t->net, &b->t->sgd, b->t->lr, b->lo + lo, b->lo + hi);
}

static int bucket_start(Trainer *t, Bucket *b)
{
    b->t_start = net_clock();
    b->started = 1;
    b->done = 0;
    float *g = t->net->grads + b->lo;
#ifdef BASIN_HAVE_CUDA
    if (t->gar) {
        /* Queued after the kernels that wrote the bucket; sums while
         * backward queues the earlier layers. */
        int st = gpu_allreduce_start(t->gar, g, b->hi - b->lo, ops_cuda_stream());
        if (st && !t->gar_status) t->gar_status = st;
        return st;
    }
#endif
    if (t->sharded) return allreduce_start_update(b->plan, g, t->net->params + b->lo, bucket_update, b, &b->ticket);
    return allreduce_start(b->plan, g, g, &b->ticket);
}

/* Sharded update: make the momentum whole on every rank (before rank 0
 * writes it to a checkpoint). */
static int gather_momentum(Trainer *t)
{
    if (!t->sharded) return BASIN_OK;
    for (int k = 0; k < t->n_buckets; k++)
        TRY(allreduce_gather_owned(t->buckets[k].plan, t->net->mom + t->buckets[k].lo));
    return BASIN_OK;
}

/* Backward tells us the final prefix of the gradients grew: start every
 * bucket that now lies inside it, and note buckets that finished. */
static void on_grads_ready(void *arg, size_t ready)
{
    Trainer *t = arg;
    while (t->next_bucket < t->n_buckets && t->buckets[t->next_bucket].hi <= ready) {
        /* A failed start is reported again by the wait that follows. */
        (void)bucket_start(t, &t->buckets[t->next_bucket]);
        t->next_bucket++;
    }
    for (int k = 0; k < t->next_bucket && !t->gar; k++) {
        Bucket *b = &t->buckets[k];
        int done = 0;
        if (!b->done && allreduce_test(t->ar, b->ticket, &done) == BASIN_OK && done) {
            b->done = 1;
            b->t_done = net_clock();
        }
    }
}

static void on_layer(void *arg, int layer, int backward, double t0, double t1)
{
    Trainer *t = arg;
    char name[64];
    snprintf(name, sizeof name, "%s %d %s", backward ? "backward" : "forward", layer + 1,
             layer_kind_name(t->net->layers[layer].kind));
    trace_event(&t->trace, name, backward ? "backward" : "forward", 0, t0, t1);
}

/* ---- replica consistency --------------------------------------------------- */

static uint64_t checksum(const float *x, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ull;
    const uint32_t *w = (const uint32_t *)x;
    for (size_t i = 0; i < n; i++) {
        h ^= w[i] + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
        h *= 0xff51afd7ed558ccdull;
    }
    return h;
}

static int check_replicas(Trainer *t, uint64_t step)
{
    if (t->world == 1) return BASIN_OK;
    unsigned long long h = checksum(host_state(t, t->net->params, 0), t->net->n_params), lo = h, hi = h;
    CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, t->comm));
    CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, t->comm));
    if (lo == hi) return BASIN_OK;
    unsigned long long *all = t->rank == 0 ? calloc((size_t)t->world, sizeof *all) : NULL;
    CHECK_MPI(MPI_Gather(&h, 1, MPI_UNSIGNED_LONG_LONG, all, 1, MPI_UNSIGNED_LONG_LONG, 0, t->comm));
    if (t->rank == 0 && all) {
        char list[512] = "";
        size_t used = 0;
        for (int r = 1; r < t->world && used < sizeof list - 16; r++)
            if (all[r] != all[0]) used += (size_t)snprintf(list + used, sizeof list - used, "%s%d", used ? ", " : "", r);
        basin_error(BASIN_ERR_RUNTIME,
                    "replicas diverged at step %llu: the parameters of rank(s) %s differ from rank 0's",
                    (unsigned long long)step, list);
    }
    free(all);
    return BASIN_ERR_RUNTIME;
}

/* ---- the loop ---------------------------------------------------------------- */

/* On the GPU, send the batch to the device through pinned memory and point
 * b at it. The copy runs on the backend's upload stream while the kernels
 * of the previous step (backward, SGD) still run; the next kernels wait for
 * it. Buffers alternate between two slots: ops_cuda_upload_begin waits for
 * the slot's last copy to leave its pinned buffer, and makes the new copies
 * wait on the device for the ops of the slot's previous batch. No stream
 * synchronisation in the step is needed for that: a rank with an empty
 * batch (an eval batch smaller than the world) has none. */
static void batch_to_device(Trainer *t, Batch *b)
{
    if (!t->on_gpu) return;
#ifdef BASIN_HAVE_CUDA
    size_t per = (size_t)t->net->in.c * (size_t)t->net->in.h * (size_t)t->net->in.w;
    size_t xb = b->n * per * sizeof(float), yb = b->n * sizeof(int32_t);
    int k = t->slot ^= 1;
    ops_cuda_upload_begin(k);
    memcpy(t->p_images[k], b->images, xb);
    memcpy(t->p_labels[k], b->labels, yb);
    ops_cuda_upload(t->d_images[k], t->p_images[k], xb);
    ops_cuda_upload(t->d_labels[k], t->p_labels[k], yb);
    b->images = t->d_images[k];
    b->labels = t->d_labels[k];
#else
    (void)b;
#endif
}

static int evaluate(Trainer *t, int epoch, uint64_t step, TrainResult *res)
{
    double t0 = net_clock();
    TRY(reader_seek(t->test, 0, 0));
    size_t steps = reader_steps_per_epoch(t->test);
    ForwardCtx ctx = {.train = 0, .seed = t->cfg->seed};
    double acc[3] = {0, 0, 0}; /* loss sum, correct, samples */
    LayerTimeFn keep = t->net->on_layer;
    t->net->on_layer = NULL;
    for (size_t s = 0; s < steps; s++) {
        Batch b;
        TRY(reader_next(t->test, &b));
        size_t correct = 0;
        batch_to_device(t, &b);
        net_forward(t->net, b.images, b.labels, b.n, &ctx, &acc[0], &correct);
        acc[1] += (double)correct;
        acc[2] += (double)b.n;
    }
    t->net->on_layer = keep;
    TRY(sum_doubles(t, acc, 3));
    double loss = acc[0] / acc[2], accuracy = acc[1] / acc[2];
    double secs = net_clock() - t0;
    basin_info("epoch %d/%d  test loss %.4f  test acc %.2f%%  (%.0f images, %.1f s)", epoch,
               t->epochs, loss, 100.0 * accuracy, acc[2], secs);
    metrics_eval(&t->metrics, epoch, step, loss, accuracy, net_clock() - t->t_start);
    trace_event(&t->trace, "evaluation", "eval", 0, t0, net_clock());
    res->test_loss = loss;
    res->test_accuracy = accuracy;
    return BASIN_OK;
}

/* --device cuda: the host returns from backward long before the device has
 * run it, so host clocks would put backward, the all-reduce and the
 * optimizer in the next step's forward (its loss waits for the stream).
 * Marks on the backend's stream give the split in device time instead:
 * 0 forward 1 backward 2 exposed all-reduce 3 optimizer 4. */
static void gpu_mark(Trainer *t, int i)
{
#ifdef BASIN_HAVE_CUDA
    if (t->on_gpu) {
        ops_cuda_time_mark(i);
        if (i == 4) ops_cuda_time_step(5);
    }
#else
    (void)t;
    (void)i;
#endif
}

/* Replace the interval's forward, backward, comm and optimizer seconds by
 * the device's (waits for the last step's marks). */
static void gpu_device_times(Trainer *t, double tm[T_COUNT])
{
#ifdef BASIN_HAVE_CUDA
    if (!t->on_gpu) return;
    double d[4] = {0, 0, 0, 0};
    ops_cuda_time_take(d, 5);
    tm[T_FORWARD] = d[0];
    tm[T_BACKWARD] = d[1];
    tm[T_COMM] = d[2];
    tm[T_OPTIM] = d[3];
#else
    (void)t;
    (void)tm;
#endif
}

/* One training step on this rank's slice: forward, backward with buckets
 * reduced as they fill, and the optimizer on each bucket once it is summed. */
static int train_step(Trainer *t, uint64_t gs, double *loss_sum, size_t *correct, size_t *n_rank,
                      size_t *n_global, double tm[T_COUNT])
{
    const TrainConfig *cfg = t->cfg;
    Net *net = t->net;
    Batch b;
    double c0 = net_clock();
    TRY(reader_next(t->train, &b));
    reader_take_wait_seconds(t->train);
    tm[T_DATA] += net_clock() - c0; /* the wait for the prefetch and the hand-over */
    size_t first, count;
    order_rank_slice(b.global_n, t->rank, t->world, &first, &count);
    if (t->samples_log) {
        fprintf(t->samples_log, "%llu", (unsigned long long)gs);
        for (size_t i = 0; i < b.n; i++) fprintf(t->samples_log, " %llu", (unsigned long long)b.index[i]);
        fputc('\n', t->samples_log);
    }
    ForwardCtx ctx = {.train = 1, .seed = cfg->seed, .sample_offset = gs * cfg->batch + first};
    float lr = (float)schedule_lr(&t->schedule, gs);
    t->lr = lr;
    batch_to_device(t, &b);

    double c1 = net_clock();
    gpu_mark(t, 0);
    net_forward(net, b.images, b.labels, b.n, &ctx, loss_sum, correct);
    gpu_mark(t, 1);
    double c2 = net_clock();
    t->next_bucket = 0;
    int overlap = t->ar && cfg->overlap;
    t->gar_status = BASIN_OK;
    net_backward(net, b.images, b.labels, b.n, 1.0f / (float)b.global_n, overlap ? on_grads_ready : NULL, t);
    gpu_mark(t, 2);
    double c3 = net_clock();
    tm[T_FORWARD] += c2 - c1;
    tm[T_BACKWARD] += c3 - c2;
    trace_event(&t->trace, "data", "data", 0, c0, c1);

    if (!t->ar) {
        gpu_mark(t, 3);
        sgd_step_range(net, &t->sgd, lr, 0, net->n_params);
        gpu_mark(t, 4);
        tm[T_OPTIM] += net_clock() - c3;
    } else if (t->gar) {
#ifdef BASIN_HAVE_CUDA
        /* GPU: the buckets were queued during backward (or are now); the
         * optimizer's kernels wait for their sums on the device. */
        if (!overlap) on_grads_ready(t, net->n_params);
        TRY(t->gar_status);
        TRY(gpu_allreduce_join(t->gar, ops_cuda_stream()));
        gpu_mark(t, 3);
        double w1 = net_clock();
        tm[T_COMM] += w1 - c3;
        trace_event(&t->trace, "all-reduce (queued)", "allreduce", 1, c3, w1);
        sgd_step_range(net, &t->sgd, lr, 0, net->n_params);
        gpu_mark(t, 4);
        tm[T_OPTIM] += net_clock() - w1;
#endif
    } else {
        if (!overlap) on_grads_ready(t, net->n_params);
        for (int k = 0; k < t->n_buckets; k++) {
            Bucket *bk = &t->buckets[k];
            double w0 = net_clock();
            TRY(allreduce_wait(t->ar, bk->ticket));
            double w1 = net_clock();
            if (!bk->done) bk->t_done = w1;
            tm[T_COMM] += w1 - w0;
            char name[48];
            snprintf(name, sizeof name, "all-reduce bucket %d", k);
            trace_event(&t->trace, name, "allreduce", 1, bk->t_start, bk->t_done);
            if (t->sharded) continue; /* updated inside the request */
            sgd_step_range(net, &t->sgd, lr, bk->lo, bk->hi);
            tm[T_OPTIM] += net_clock() - w1;
        }
    }
    trace_event(&t->trace, "step", "step", 2, c0, net_clock());
    if ((long)gs == t->corrupt_step && t->rank == t->corrupt_rank) {
        float p0;
        t->ops->to_host(&p0, net->params, sizeof p0);
        p0 += 1.0f;
        t->ops->to_device(net->params, &p0, sizeof p0);
    }
    *n_rank = b.n;
    *n_global = b.global_n;
    return BASIN_OK;
}

/* Reduce this interval's timings: mean and max over ranks, and the slowest. */
static int report_interval(Trainer *t, StepRecord *r, const double tm[T_COUNT], uint64_t steps)
{
    double mean[T_COUNT], max[T_COUNT];
    for (int i = 0; i < T_COUNT; i++) mean[i] = max[i] = tm[i] / (double)steps;
    CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, mean, T_COUNT, MPI_DOUBLE, MPI_SUM, t->comm));
    CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, max, T_COUNT, MPI_DOUBLE, MPI_MAX, t->comm));
    struct { double v; int rank; } busy = {tm[T_DATA] + tm[T_FORWARD] + tm[T_BACKWARD] + tm[T_OPTIM], t->rank};
    CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &busy, 1, MPI_DOUBLE_INT, MPI_MAXLOC, t->comm));
    for (int i = 0; i < T_COUNT; i++) {
        r->timing_mean[i] = mean[i] / t->world;
        r->timing_max[i] = max[i];
    }
    r->straggler = busy.rank;
    r->data_wait_s = r->timing_mean[T_DATA];
    r->compute_s = r->timing_mean[T_FORWARD] + r->timing_mean[T_BACKWARD] + r->timing_mean[T_OPTIM];
    r->comm_s = r->timing_mean[T_COMM];
    return BASIN_OK;
}

static int train_loop(Trainer *t, TrainResult *res)
{
    const TrainConfig *cfg = t->cfg;
    uint64_t spe = t->steps_per_epoch;
    double run_t0 = net_clock(), interval_t0 = run_t0, train_time = 0.0;
    double iv[3] = {0, 0, 0};    /* loss sum, correct, samples over the interval */
    double tm[T_COUNT] = {0};
    uint64_t iv_steps = 0, images = 0;
    res->test_loss = res->test_accuracy = NAN;
    reader_take_wait_seconds(t->train);

    t->last_ckpt = net_clock();
    if (t->start_step >= t->total_steps) {
        basin_info("basin: the checkpoint is at step %llu of %llu: nothing left to train (raise --epochs "
                   "to go on, or use another --output-dir for a new run)",
                   (unsigned long long)t->start_step, (unsigned long long)t->total_steps);
        res->steps = t->start_step;
        return BASIN_OK;
    }
    /* A signal during start-up (MPI, data, model): stop before the first
     * step. The state is the one resumed from, or the initial one: nothing
     * new to save, and no checkpoint is written over a good one. */
    int early = preempt_pending() ? 1 : 0;
    CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &early, 1, MPI_INT, MPI_BOR, t->comm));
    t->steps_done = t->start_step;
    if (early) {
        char good[4200];
        describe_good(t, good, sizeof good);
        preempt_clear();
        res->steps = t->start_step;
        basin_info("basin: stopped by a signal before the first step; nothing new to save: exit %d (resumable "
                   "from %s, 0 steps lost)", BASIN_EXIT_PREEMPTED, good);
        return BASIN_EXIT_PREEMPTED;
    }
    for (uint64_t gs = t->start_step; gs < t->total_steps; gs++) {
        int epoch = (int)(gs / spe) + 1;
        size_t correct = 0, n_rank = 0, n_global = 0;
        TRY(train_step(t, gs, &iv[0], &correct, &n_rank, &n_global, tm));
        if ((long)gs == t->signal_step && t->rank == t->signal_rank) raise(SIGTERM);
        iv[1] += (double)correct;
        iv[2] += (double)n_rank;
        iv_steps++;
        images += n_global;

        uint64_t done = gs + 1;
        t->steps_done = done;
        int end_of_epoch = done % spe == 0 || done == t->total_steps;
        if ((cfg->check_every > 0 && done % (uint64_t)cfg->check_every == 0) || done == t->total_steps)
            TRY(check_replicas(t, done));

        /* Step boundary: ranks agree whether any was told to stop, and follow
         * rank 0's clock for timed checkpoints (one tiny all-reduce). */
        int flags = preempt_pending() ? 1 : 0;
        if (t->rank == 0 && cfg->checkpoint_seconds > 0 && net_clock() - t->last_ckpt >= cfg->checkpoint_seconds)
            flags |= 2;
        CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &flags, 1, MPI_INT, MPI_BOR, t->comm));
        if (flags & 1) {
            res->steps = done;
            return preempted_stop(t, done);
        }
        if (done < t->total_steps &&
            ((flags & 2) || (cfg->checkpoint_steps > 0 && done % (uint64_t)cfg->checkpoint_steps == 0)))
            TRY(periodic_checkpoint(t, done, (flags & 2) ? "timed" : "periodic"));
        if (done % (uint64_t)cfg->log_every == 0 || end_of_epoch) {
            TRY(sum_doubles(t, iv, 3));
            double tnow = net_clock(), dt = tnow - interval_t0;
            train_time += dt;
            double step_time = train_time / (double)done;
            char eta[32];
            format_eta(step_time * (double)(t->total_steps - done), eta, sizeof eta);
            float lr = (float)schedule_lr(&t->schedule, gs);
            StepRecord r = {
                .epoch = epoch, .step = done, .loss = iv[0] / iv[2], .accuracy = iv[1] / iv[2],
                .lr = lr, .images_per_s = iv[2] / dt, .time_s = tnow - t->t_start,
            };
            gpu_device_times(t, tm);
            TRY(report_interval(t, &r, tm, iv_steps));
            res->train_loss = r.loss;
            basin_info("epoch %d/%d  step %6llu/%llu  loss %.4f  acc %5.1f%%  %7.0f img/s  lr %.4g  ETA %s",
                       epoch, t->epochs, (unsigned long long)done, (unsigned long long)t->total_steps,
                       r.loss, 100.0 * r.accuracy, r.images_per_s, (double)lr, eta);
            metrics_step(&t->metrics, &r);
            memset(iv, 0, sizeof iv);
            memset(tm, 0, sizeof tm);
            iv_steps = 0;
            if (end_of_epoch && t->test && ((epoch % cfg->eval_every) == 0 || done == t->total_steps))
                TRY(evaluate(t, epoch, done, res));
            interval_t0 = net_clock();
        }
    }
    res->steps = t->total_steps;
    if (write_checkpoint(t, t->total_steps, "final") != BASIN_OK) {
        char good[4200];
        describe_good(t, good, sizeof good);
        basin_info("basin: trained %llu steps, but the final checkpoint failed: exit %d; resuming starts from %s: "
                   "%llu step(s) lost", (unsigned long long)t->total_steps, BASIN_EXIT_CHECKPOINT_FAILED, good,
                   steps_lost(t, t->total_steps));
        return BASIN_EXIT_CHECKPOINT_FAILED;
    }
    res->seconds = net_clock() - run_t0;
    res->images_per_s = train_time > 0 ? (double)images / train_time : 0.0;
    return BASIN_OK;
}

static int open_outputs(Trainer *t, char *metrics_path, size_t len)
{
    const TrainConfig *cfg = t->cfg;
    int rc = BASIN_OK;
    if (cfg->metrics) snprintf(metrics_path, len, "%s", cfg->metrics);
    else snprintf(metrics_path, len, "%s/metrics.jsonl", cfg->output_dir);
    if (t->rank == 0) {
        rc = basin_make_dirs(cfg->output_dir);
        if (!rc) rc = metrics_open(&t->metrics, metrics_path, t->resuming);
    }
    const char *samples = getenv("BASIN_TEST_SAMPLES");
    if (!rc && samples) {
        char path[4096];
        snprintf(path, sizeof path, "%s.rank%d", samples, t->rank);
        t->samples_log = fopen(path, "a");
        if (!t->samples_log) rc = basin_error(BASIN_ERR_RUNTIME, "cannot write %s", path);
    }
    if (!rc && cfg->trace) {
        char path[4096];
        size_t n = strlen(cfg->trace);
        int stem = n > 5 && strcmp(cfg->trace + n - 5, ".json") == 0 ? (int)n - 5 : (int)n;
        snprintf(path, sizeof path, "%.*s.rank%d.json", stem, cfg->trace, t->rank);
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = '\0';
            rc = basin_make_dirs(dir); /* every rank: its host may not share rank 0's disk */
        }
        if (!rc) rc = trace_open(&t->trace, path, t->rank, t->t_start);
        if (!rc) {
            t->net->on_layer = on_layer;
            t->net->on_layer_arg = t;
        }
    }
    return rc;
}

/* Rank 0 takes the output and checkpoint folders for this run, before it
 * reads a checkpoint to resume from, and removes what writers that died
 * left there; every rank learns the outcome. */
static int lock_outputs(Trainer *t)
{
    int rc = BASIN_OK;
    if (t->rank == 0) {
        rc = runlock_acquire(&t->lock, t->cfg->output_dir, "--output-dir");
        if (!rc) rc = runlock_acquire(&t->lock, t->ckpt_dir, "--checkpoint-dir");
        if (!rc && runlock_remove_unfinished(t->ckpt_dir) < 0) rc = BASIN_ERR_RUNTIME;
    }
    CHECK_MPI(MPI_Bcast(&rc, 1, MPI_INT, 0, t->comm));
    return rc;
}

/* --status-file: rank 0 records the outcome, replacing the file atomically
 * (a reader sees the old line or the new one, never a part). */
static void write_status(const Trainer *t, int code)
{
    const char *path = t->cfg->status_file;
    if (!path || t->rank != 0 || t->cfg->check_only) return;
    char line[8400], tmp[4200];
    format_status(t, code, t->steps_done, line, sizeof line);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    int ok = f && fputs(line, f) >= 0;
    if (f && fclose(f) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        basin_warn("cannot write the status file %s: %s", path, strerror(errno));
        unlink(tmp);
    }
}

int trainer_run(const TrainConfig *cfg, MPI_Comm comm, TrainResult *result)
{
    Trainer t = {.cfg = cfg, .comm = comm, .lock = RUNLOCK_INIT, .good_step = -1};
    TrainResult res = {0};
    res.test_loss = res.test_accuracy = NAN;
    int rc;
    CHECK_MPI(MPI_Comm_rank(comm, &t.rank));
    CHECK_MPI(MPI_Comm_size(comm, &t.world));
    if (cfg->check_only && cfg->check_ranks > 0) t.world = cfg->check_ranks, t.rank = 0;
    ops_cpu_set_threads(cfg->threads);
    /* basin-train installed them before MPI started; a library caller gets
     * them here. */
    rc = preempt_install();
    if (rc) return rc;

    basin_errors_hold();
    rc = trainer_setup(&t);
    /* A rank whose set-up failed (a file missing on its host) must not leave
     * the others waiting in the first collective: agree on the outcome. The
     * lowest rank that failed says why, so that a mistake every rank finds
     * is one line. */
    int worst = rc, speaker = rc ? t.rank : INT_MAX;
    if (MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS ||
        MPI_Allreduce(MPI_IN_PLACE, &speaker, 1, MPI_INT, MPI_MIN, comm) != MPI_SUCCESS) {
        worst = BASIN_ERR_RUNTIME;
        speaker = t.rank;
    }
    basin_errors_release(speaker == t.rank);
    if (!worst && !cfg->check_only) worst = check_same_config(&t);
    if (!worst && !cfg->check_only) worst = lock_outputs(&t);
    if (!worst) worst = resume_setup(&t);
    if (worst) {
        rc = worst;
        goto done;
    }
    const DatasetInfo *info = reader_info(t.train);
    char desc[4096];
    config_describe(cfg, desc, sizeof desc);
    if (cfg->check_only) {
        basin_info("basin: configuration OK: %d rank(s), %zu parameters, %llu steps; %s", t.world,
                   t.net->n_params, (unsigned long long)t.total_steps, desc);
        goto done;
    }

    rc = buckets_setup(&t);
    if (rc) goto done;
    char metrics_path[4096];
    t.t_start = net_clock();
    rc = open_outputs(&t, metrics_path, sizeof metrics_path);
    /* Every rank learns whether the outputs could be created anywhere. */
    worst = rc;
    if (MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS) worst = BASIN_ERR_RUNTIME;
    if (worst) {
        rc = worst;
        goto done;
    }

    rc = net_init_params(t.net, cfg->seed);
    if (!rc && t.resuming) rc = resume_apply(&t);
    if (rc) goto done;
    basin_info("basin: %d rank(s); %s", t.world, desc);
#ifdef BASIN_HAVE_CUDA
    if (t.gar)
        basin_info("basin: %d supernode(s); GPU all-reduce %s in %d bucket(s) of up to %.1f MiB, overlap %s",
                   allreduce_topology(t.ar)->nodes, gpu_allreduce_algorithm(t.gar), t.n_buckets, cfg->bucket_mb,
                   cfg->overlap ? "on" : "off");
#endif
    if (t.ar && !t.gar) {
        const AllreduceTopology *topo = allreduce_topology(t.ar);
        basin_info("basin: %d supernode(s); all-reduce %s in %d bucket(s) of up to %.1f MiB, overlap %s, "
                   "sharded update %s",
                   topo->nodes, allreduce_plan_algorithm(t.buckets[0].plan), t.n_buckets, cfg->bucket_mb,
                   cfg->overlap ? "on" : "off", t.sharded ? "on" : "off");
    }
    basin_info("basin: %zu training and %zu test samples of %dx%dx%d, %d classes; %llu steps of %zu "
               "(%zu per rank), %llu per epoch",
               info->count, t.test ? reader_info(t.test)->count : (size_t)0, info->c, info->h, info->w,
               info->classes, (unsigned long long)t.total_steps, cfg->batch, t.rank_batch,
               (unsigned long long)t.steps_per_epoch);
    net_describe(t.net, desc, sizeof desc);
    basin_info("basin: %zu parameters, %.1f MFLOP per sample forward\n%s", t.net->n_params,
               2e-6 * net_forward_macs(t.net), desc);
    rc = train_loop(&t, &res);
    if (rc == BASIN_OK && t.start_step < t.total_steps)
        basin_info("basin: trained %llu steps in %.1f s (%.0f images/s); metrics in %s%s%s",
                   (unsigned long long)res.steps, res.seconds, res.images_per_s, metrics_path,
                   cfg->trace ? ", traces in " : "", cfg->trace ? cfg->trace : "");
    if ((rc == BASIN_OK || rc == BASIN_EXIT_PREEMPTED) && cfg->keep_params) {
        res.params = malloc(t.net->n_params * sizeof(float));
        if (res.params) {
            t.ops->to_host(res.params, t.net->params, t.net->n_params * sizeof(float));
            res.n_params = t.net->n_params;
        }
    }
done:
    write_status(&t, rc);
    if (t.samples_log) fclose(t.samples_log);
    if (t.rank == 0) checkpoint_free(&t.resume);
    metrics_close(&t.metrics);
    trace_close(&t.trace);
    buckets_free(&t);
    for (int k = 0; k < 2 && t.ops; k++) {
        if (t.ops->sync) t.ops->sync(); /* no upload may still read pinned memory */
        t.ops->free(t.d_images[k]);
        t.ops->free(t.d_labels[k]);
#ifdef BASIN_HAVE_CUDA
        ops_cuda_host_free(t.p_images[k]);
        ops_cuda_host_free(t.p_labels[k]);
#endif
    }
    free(t.host);
    net_destroy(t.net);
    if (t.test) reader_close(t.test);
    if (t.train) reader_close(t.train);
    runlock_release(&t.lock);
    if (result) *result = res;
    return rc;
}
