/* The training configuration and its command-line parsing. */
#ifndef BASIN_CONFIG_H
#define BASIN_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "core/optim.h"

/* The most ranks --balance static can weigh. */
#define BASIN_MAX_BALANCE 1024
/* --balance auto: steps between measurements unless auto:K says. */
#define BASIN_BALANCE_EVERY 20

typedef struct {
    const char *model;        /* preset name or spec (models.h) */
    const char *data;         /* dataset file (reader.h layout) or synthetic:CxHxW:CLASSES[:N] */
    const char *augment;      /* --augment SPEC of the training split (reader.h), "none": off */
    /* --balance static:W0,W1,...: trainer rank r takes a share W_r / sum(W) of
     * each global batch (order_share_slice); balance_n 0: equal shares. */
    int balance_n;
    uint32_t balance_w[BASIN_MAX_BALANCE];
    /* --balance auto[:K]: shares start even (or at the checkpoint's) and
     * follow each rank's measured speed, re-measured every balance_every
     * steps (balance.c); 0: off. */
    int balance_every;
    const char *output_dir;   /* metrics and, later, checkpoints go here */
    const char *metrics;      /* JSON-lines file; default <output_dir>/metrics.jsonl */
    int epochs;
    size_t batch;             /* global batch, over all ranks */
    size_t eval_batch;        /* global batch of evaluation; 0: same as batch */
    double lr;                /* peak learning rate */
    ScheduleKind schedule;
    double warmup_epochs;
    double lr_step_epochs;    /* step schedule: decay every this many epochs */
    double lr_gamma;
    double momentum;
    int nesterov;
    int sync_bn;              /* 1: batch norm normalises over the global batch (all ranks) */
    int zero_init_residual;   /* 1: the last bn of each residual block starts with gamma 0 */
    double weight_decay;
    OptimKind optimizer;      /* --optimizer: sgd (default), lars, adam, adamw (optim.h) */
    double lars_eta;          /* LARS trust coefficient */
    double adam_beta1, adam_beta2, adam_eps;
    uint64_t seed;
    int eval_every;           /* evaluate every N epochs (and after the last); 0: never */
    int log_every;            /* progress line every N steps */
    size_t limit_train;       /* 0: all training samples */
    size_t limit_test;
    long max_steps;           /* stop after this many steps in all (<= 0: no limit) */
    int threads;              /* BLAS threads per rank */
    const char *device;       /* "cpu" or "cuda" */
    const char *allreduce;    /* gradient all-reduce algorithm (allreduce.h), "auto" */
    const char *wire;         /* --wire: "fp32" (default), "bf16" or "fp16" (allreduce.h) */
    double bucket_mb;         /* gradient bucket size in MiB */
    int overlap;              /* 1: reduce buckets while backward runs */
    int sharded_update;       /* 1: each bucket's owner updates its shard (allreduce_run_update) */
    int supernode_size;       /* 0: ranks sharing a host; K: groups of K ranks */
    double collective_timeout;/* seconds a collective may wait before the job aborts */
    int scale_lr;             /* linear scaling rule: lr = lr * batch / 256 */
    int check_every;          /* replica checksum every N steps (and at the end) */
    const char *trace;        /* Chrome trace per rank: <trace>.rank<R>.json */
    const char *checkpoint_dir; /* default <output_dir>/checkpoints */
    long checkpoint_steps;    /* checkpoint every N steps (0: off) */
    double checkpoint_seconds;/* ... and every T seconds of training (0: off) */
    int keep_checkpoints;     /* newest K kept (0: all) */
    int checkpoint_fail_stop; /* 1: a failed checkpoint write stops training */
    const char *resume;       /* NULL: fresh start; "auto": newest good checkpoint; or a path */
    double grace_seconds;     /* preemption: most time from signal to exit */
    const char *status_file;  /* rank 0 writes the job's outcome here at exit (exit_codes.h) */
    int prefetch;
    int readers;              /* --readers N: the last N ranks read and send batches (reader/remote.h) */
    int reader_prefetch;      /* --reader-prefetch K: batches in flight per trainer */
    const char *roles;        /* --roles FILE: the ranks on its '# basin:reader' hosts read (roles.h) */
    int reader_cost;          /* --reader-cost N: N rounds of 8x8 DCT and inverse per sample read (reader.h) */
    int check_only;           /* validate everything, write nothing, exit */
    int check_ranks;          /* with check_only: validate as if on this many ranks (0: as run) */
    int help;
    int keep_params;          /* API only: return the final parameters in TrainResult */
} TrainConfig;

void config_defaults(TrainConfig *cfg);
/* Parse argv into cfg. Returns BASIN_OK, or BASIN_ERR_USAGE after one clear
 * line naming the bad option or value. Sets cfg->help for --help. */
int config_parse(TrainConfig *cfg, int argc, char **argv);
/* --help; algorithms: the all-reduce names as text (allreduce_algorithms_text). */
void config_usage(const char *prog, const char *algorithms);
/* One line of "key=value" pairs: every option that defines the training
 * trajectory, with exact values. For the log and for checkpoints, where
 * config_resume_check reads it back. */
void config_describe(const TrainConfig *cfg, char *buf, size_t len);
/* Resuming from a checkpoint whose config_describe text is `saved`: options
 * that would change the trajectory are refused (BASIN_ERR_USAGE, one line
 * naming each with both values); a new length of a cosine schedule is
 * allowed with a note. Model, batch, seed and data are checked elsewhere. */
/* The value of `key` in a config_describe text (into buf), or NULL. */
const char *config_describe_value(const char *text, const char *key, char *buf, size_t len);
int config_resume_check(const char *saved, const TrainConfig *cfg, const char *ckpt_path);
/* The canonical text of --augment ("none", "crop:4,flip", ...; reader.h). */
void config_augment_text(const TrainConfig *cfg, char *buf, size_t len);
/* A hash of every option that must agree between ranks. */
uint64_t config_hash(const TrainConfig *cfg);

#endif
