/* The trainer's state, shared by the files of the training loop and private
 * to them (trainer.h is the public face):
 *
 *   trainer.c             the loop: step, evaluation, logging, trainer_run
 *   trainer_setup.c       everything a user can get wrong, found before any
 *                         file is written; the device; the outputs
 *   gradients.c           where a gradient goes from backward to the
 *                         optimizer: buckets, the all-reduce (CPU and GPU),
 *                         the sharded update
 *   trainer_checkpoint.c  checkpoints, resume, the stop on preemption, the
 *                         folder lock and the status file
 *   replicas.c            ranks agree on options and on their parameters
 *   preempt.c             the signals that ask for a stop
 */
#ifndef BASIN_TRAINER_INTERNAL_H
#define BASIN_TRAINER_INTERNAL_H

#include <stdint.h>
#include <stdio.h>

#include "allreduce/allreduce.h"
#include "checkpoints/checkpoint.h"
#include "core/config.h"
#include "core/device.h"
#include "core/metrics.h"
#include "core/mpi_check.h"
#include "core/net.h"
#include "core/optim.h"
#include "core/runlock.h"
#include "core/trace.h"
#include "core/trainer.h"
#include "models/models.h"
#include "reader/reader.h"
#include "reader/remote.h"

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
    Reader *train, *test;            /* train: NULL when reader processes feed this rank */
    RemoteFeed *feed;                /* --readers: the stream of this rank's reader process */
    DatasetInfo train_info;          /* of the training split (its own reader's, or the feed's) */
    size_t test_count, test_steps;   /* the test split (evaluation), from test or the feed */
    /* --balance (balance.c); all NULL with equal shares. */
    double *busy_all;                /* rank 0: every rank's busy seconds per step */
    uint32_t *bw;                    /* the shares of this step, as weights of order_share_slice */
    uint32_t *bw_next;               /* auto: the shares from step bw_from on, when bw_pending */
    int bw_pending;
    uint64_t bw_from;
    uint32_t *bal_w;                 /* scratch of 2 world shares */
    double *bal_all;                 /* every rank's (busy seconds, samples) of a window */
    double bal_busy;                 /* auto: this rank's busy seconds and samples since the */
    size_t bal_samples;              /* shares last changed or were last measured */
    uint64_t bal_steps;
    double bal_fake_cost;            /* test hook: seconds per sample instead of the clock's */
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

    /* The device (trainer_setup.c). */
    const Device *dev;    /* --device: device_cpu, or the GPU's */
    const Ops *ops;       /* dev->ops: the network's backend */
    int on_gpu;           /* the network's buffers are device memory */
    float *d_images[2];   /* --device cuda: the batch on the device, and in pinned host */
    int32_t *d_labels[2]; /* memory on its way there; two of each, so that one step's */
    float *p_images[2];   /* upload overlaps the previous step's kernels */
    int32_t *p_labels[2];
    int slot;
    float *host;          /* --device cuda: 2 n_params floats of host staging */

    /* The gradient path (gradients.c). */
    AllreduceComm *ar;
    float *window;        /* gradient buffer inside the shared window */
    float *state_window;  /* sharded update: params and momentum, 2 n_params floats */
    int sharded;          /* buckets run allreduce_start_update */
    void *gar;            /* --device cuda, several ranks: the GPU all-reduce (GpuAllreduce) */
    int gar_status;       /* the first failed start of the GPU all-reduce in this step */
    float lr;             /* this step's learning rate, for the update in the progress thread */
    Bucket *buckets;
    int n_buckets, next_bucket;

    /* Batch norm across ranks (bn_sync.c). */
    MPI_Comm bn_comm;     /* its own communicator; MPI_COMM_NULL: none needed */
    int bn_status;        /* the first failure of a --sync-bn sum in this step */
    double *bn_host, *bn_all;   /* staging of one layer's sums, and every rank's */
    float *state_host, *state_all; /* staging of the state, and every rank's */

    /* Test hooks, read once in trainer_setup.c from the environment, so that
     * they never appear among the options a user sees. */
    long corrupt_rank, corrupt_step; /* BASIN_TEST_CORRUPT=RANK:STEP */
    long signal_rank, signal_step;   /* BASIN_TEST_SIGNAL=RANK:STEP raises SIGTERM */
    double stall_s;                  /* BASIN_TEST_CKPT_STALL=S: a checkpoint write takes S s more */
    const char *samples_prefix;      /* BASIN_TEST_SAMPLES=PREFIX: each rank logs its samples */
    FILE *samples_log;

    /* Checkpoints and resume (trainer_checkpoint.c). */
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

/* trainer_setup.c */
/* The training split's reader as trainer `rank` of `world` reads it (also
 * what a reader process opens for the trainers it serves). */
void trainer_train_reader_config(const TrainConfig *cfg, int rank, int world, ReaderConfig *out);
/* The same for the test split (evaluation: file order, no augmentation). */
void trainer_test_reader_config(const TrainConfig *cfg, int rank, int world, ReaderConfig *out);
int trainer_setup(Trainer *t);
int trainer_open_outputs(Trainer *t, char *metrics_path, size_t len);
/* --trace: this rank's file, <trace>.rank<R>.json (its folder made). */
int trainer_trace_open(const TrainConfig *cfg, int rank, double t0, Trace *trace);
void trainer_free_device(Trainer *t);

/* gradients.c */
int grads_setup(Trainer *t);
void grads_free(Trainer *t);
/* net_backward's callback: the final prefix [0, ready) of the gradients. */
void grads_ready(void *trainer, size_t ready);
/* After backward: sum every bucket and run the optimizer (c3: the clock
 * when backward returned); adds to tm[T_COMM] and tm[T_OPTIM]. */
int grads_finish(Trainer *t, double c3, double tm[T_COUNT]);
/* Sharded update: make the momentum whole on every rank. */
int grads_gather_momentum(Trainer *t);
/* One line on the all-reduce set-up, for the start of the log. */
void grads_describe(const Trainer *t);

/* bn_sync.c */
int bn_sync_setup(Trainer *t);
void bn_sync_free(Trainer *t);
/* StatsSumFn of --sync-bn (arg: the Trainer). */
void bn_stats_sum(void *arg, double *buf, size_t n);
/* Without --sync-bn: replace every rank's running statistics by their mean
 * over the ranks (before checkpoints, evaluations and replica checks). */
int bn_average_state(Trainer *t);

/* balance.c */
/* Shares from the options; rank_batch the largest this rank may get. */
int balance_setup(Trainer *t);
void balance_free(Trainer *t);
/* --balance auto: the largest share (buffers are this big); 0 otherwise. */
size_t balance_share_cap(const TrainConfig *cfg, int world);
/* This step's weights for order_share_slice (NULL: even). */
const uint32_t *balance_weights(const Trainer *t);
/* Collective on comm, every rank: with auto, continue with the shares of a
 * checkpoint's "balance" text (rank 0's; NULL or "": none). */
int balance_resume(Trainer *t, const char *text);
/* The shares at the start, one line (rank 0's log). */
void balance_log_start(const Trainer *t);
/* For a checkpoint: the shares and a change waiting, malloc'd; NULL: none. */
char *balance_text(const Trainer *t);
/* Before step gs: a change that comes due takes effect. */
void balance_step_begin(Trainer *t, uint64_t gs);
/* After each step: this rank's busy seconds (data, forward, backward) and samples. */
void balance_account(Trainer *t, double busy_s, size_t samples);
/* Collective on comm after step done - 1: with auto, every K steps, measure
 * and maybe decide new shares (they take effect a few steps later). */
int balance_after_step(Trainer *t, uint64_t done);

/* trainer_checkpoint.c */
int ckpt_lock_outputs(Trainer *t);
int ckpt_resume_setup(Trainer *t);
int ckpt_resume_apply(Trainer *t);
/* The checkpoints of the loop: periodic/timed (goes on or stops with 74 as
 * --checkpoint-failure says), the final one (74 when it fails), and the stop
 * on a signal (75, or 76 when its checkpoint fails). */
int ckpt_periodic(Trainer *t, uint64_t step, const char *why);
int ckpt_final(Trainer *t);
int ckpt_preempted_stop(Trainer *t, uint64_t done);
/* A signal arrived before the first step: 75, nothing written. */
int ckpt_early_stop(Trainer *t);
void ckpt_write_status(const Trainer *t, int code);
/* The parameters (which = 0) or the momentum (1) in host memory. */
const float *trainer_host_state(Trainer *t, const float *buf, int which);

/* replicas.c */
int replicas_check_config(Trainer *t);
int replicas_check(Trainer *t, uint64_t step);

/* Device time marks of a step (no-ops on the CPU): 0 forward 1 backward
 * 2 exposed all-reduce 3 optimizer 4. */
static inline void trainer_mark(const Trainer *t, int i)
{
    if (!t->on_gpu) return;
    t->dev->time_mark(i);
    if (i == 4) t->dev->time_step(5);
}

#endif
