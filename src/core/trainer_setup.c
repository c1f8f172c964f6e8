/* Set-up of a training run: everything a user can get wrong is found here,
 * before any file is written (the options that need the data, the model and
 * the world), then the device and its buffers, then the outputs. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/files.h"
#include "core/trainer_internal.h"

/* --device: the backend of the network, and the GPU of this rank (by its
 * index among the ranks of its host). */
static int select_device(Trainer *t)
{
    const TrainConfig *cfg = t->cfg;
    const Device *dev = device_find(cfg->device);
    int nccl = !strcmp(cfg->allreduce, "nccl"), known = nccl; /* nccl: GPU only, checked below */
    for (const char *const *a = allreduce_algorithms(); *a; a++) known |= !strcmp(*a, cfg->allreduce);
    if (!known) {
        char list[128];
        allreduce_algorithms_text(list, sizeof list, NULL);
        return basin_error(BASIN_ERR_USAGE, "--allreduce '%s': expected %s or nccl", cfg->allreduce, list);
    }
    if (!dev)
        return basin_error(BASIN_ERR_USAGE, "--device %s: this build has no CUDA backend (nvcc, cuBLAS or NCCL "
                                            "were not found when it was configured)", cfg->device);
    if (dev->ops->host_memory) {
        if (nccl) return basin_error(BASIN_ERR_USAGE, "--allreduce nccl needs --device cuda");
        t->dev = dev;
        t->ops = dev->ops;
        return BASIN_OK;
    }
    if (strcmp(cfg->allreduce, "auto") && strcmp(cfg->allreduce, "hier") && !nccl)
        return basin_error(BASIN_ERR_USAGE, "--allreduce %s runs on host memory: with --device cuda use auto, "
                                            "hier or nccl", cfg->allreduce);
    MPI_Comm host;
    int local = 0;
    BASIN_MPI(MPI_Comm_split_type(t->comm, MPI_COMM_TYPE_SHARED, t->rank, MPI_INFO_NULL, &host));
    int mrc = MPI_Comm_rank(host, &local);
    MPI_Comm_free(&host);
    BASIN_MPI(mrc);
    TRY(dev->select(local));
    /* Only now: the clean-up of a run that stopped before this point must
     * not start the device to free nothing. */
    t->dev = dev;
    t->ops = dev->ops;
    t->on_gpu = 1;
    return BASIN_OK;
}

void trainer_train_reader_config(const TrainConfig *cfg, int rank, int world, ReaderConfig *out)
{
    *out = (ReaderConfig){
        .path = cfg->data, .split = "train", .limit = cfg->limit_train, .seed = cfg->seed,
        .global_batch = cfg->batch, .rank = rank, .world = world,
        .shuffle = 1, .drop_last = 1, .prefetch = cfg->prefetch, .augment = cfg->augment,
        .decode_cost = cfg->reader_cost,
        .weights = cfg->balance_n ? cfg->balance_w : NULL, .max_share = balance_share_cap(cfg, world),
    };
}

void trainer_test_reader_config(const TrainConfig *cfg, int rank, int world, ReaderConfig *out)
{
    trainer_train_reader_config(cfg, rank, world, out);
    out->split = "test", out->limit = cfg->limit_test;
    out->global_batch = cfg->eval_batch ? cfg->eval_batch : cfg->batch;
    out->shuffle = 0, out->drop_last = 0, out->augment = NULL; /* evaluation is never augmented */
    out->weights = NULL, out->max_share = 0;                     /* nor weighted */
}

int trainer_setup(Trainer *t)
{
    const TrainConfig *cfg = t->cfg;
    if (cfg->checkpoint_dir) snprintf(t->ckpt_dir, sizeof t->ckpt_dir, "%s", cfg->checkpoint_dir);
    else snprintf(t->ckpt_dir, sizeof t->ckpt_dir, "%s/checkpoints", cfg->output_dir);
    if (cfg->supernode_size > t->world)
        return basin_error(BASIN_ERR_USAGE, "--supernode-size %d is larger than the %d rank(s) of the job: use a "
                           "divisor of the ranks per host, or leave it out for one supernode per host",
                           cfg->supernode_size, t->world);
    TRY(balance_setup(t));

    ReaderConfig rc;
    trainer_train_reader_config(cfg, t->rank, t->world, &rc);
    if (t->feed) {
        /* Reader processes read the training split: its shape and steps
         * came with their set-up message (the reader checked the counts). */
        t->train_info = *remote_feed_info(t->feed);
        t->steps_per_epoch = remote_feed_steps_per_epoch(t->feed);
    } else {
        TRY(reader_open(&rc, &t->train));
        t->train_info = *reader_info(t->train);
        t->steps_per_epoch = reader_steps_per_epoch(t->train);
    }
    const DatasetInfo *info = &t->train_info;
    if ((size_t)t->world > info->count)
        return basin_error(BASIN_ERR_USAGE, "%d ranks but only %zu training samples", t->world, info->count);
    if (t->steps_per_epoch == 0)
        return basin_error(BASIN_ERR_USAGE, "--batch %zu is larger than the %zu training samples",
                           cfg->batch, info->count);

    size_t eval_batch = cfg->eval_batch ? cfg->eval_batch : cfg->batch;
    size_t max_batch = t->rank_batch;
    if (cfg->eval_every > 0) {
        const DatasetInfo *ti;
        if (t->feed) {
            /* The readers serve the test split too (and checked its shape). */
            ti = remote_feed_test_info(t->feed);
            if (!ti) return BASIN_FAIL(BASIN_ERR_RUNTIME, "the reader processes have no test split");
            t->test_count = ti->count;
            t->test_steps = remote_feed_test_steps(t->feed);
        } else {
            ReaderConfig ec;
            trainer_test_reader_config(cfg, t->rank, t->world, &ec);
            TRY(reader_open(&ec, &t->test));
            ti = reader_info(t->test);
            t->test_count = ti->count;
            t->test_steps = reader_steps_per_epoch(t->test);
        }
        if (ti->c != info->c || ti->h != info->h || ti->w != info->w || ti->classes != info->classes)
            return basin_error(BASIN_ERR_USAGE, "%s: test and train samples differ in shape or classes",
                               cfg->data);
        size_t eval_rank = (eval_batch + (size_t)t->world - 1) / (size_t)t->world;
        if (eval_rank > max_batch) max_batch = eval_rank;
    }
    Shape in = {info->c, info->h, info->w};
    TRY(model_parse(cfg->model, in, t->specs, MODEL_MAX_LAYERS, &t->n_specs));
    TRY(select_device(t));
    TRY(net_create(t->specs, t->n_specs, in, info->classes, t->ops, max_batch, &t->net));
    if (t->on_gpu) {
        size_t xb = max_batch * shape_size(in) * sizeof(float), yb = max_batch * sizeof(int32_t);
        for (int k = 0; k < 2; k++) {
            t->d_images[k] = t->ops->alloc(xb);
            t->d_labels[k] = t->ops->alloc(yb);
            t->p_images[k] = t->dev->host_alloc(xb);
            t->p_labels[k] = t->dev->host_alloc(yb);
            if (!t->d_images[k] || !t->d_labels[k] || !t->p_images[k] || !t->p_labels[k])
                return BASIN_FAIL(BASIN_ERR_RUNTIME, "cannot allocate the batch buffers of the device");
        }
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
    t->sgd = (SgdConfig){.momentum = (float)cfg->momentum, .weight_decay = (float)cfg->weight_decay,
                         .nesterov = cfg->nesterov, .kind = cfg->optimizer, .lars_eta = (float)cfg->lars_eta,
                         .beta1 = (float)cfg->adam_beta1, .beta2 = (float)cfg->adam_beta2,
                         .eps = (float)cfg->adam_eps};

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
    t->samples_prefix = getenv("BASIN_TEST_SAMPLES");
    return BASIN_OK;
}

static void on_layer(void *arg, int layer, int backward, double t0, double t1)
{
    Trainer *t = arg;
    char name[64];
    snprintf(name, sizeof name, "%s %d %s", backward ? "backward" : "forward", layer + 1,
             layer_kind_name(t->net->layers[layer].kind));
    trace_event(&t->trace, name, backward ? "backward" : "forward", 0, t0, t1);
}

int trainer_trace_open(const TrainConfig *cfg, int rank, double t0, Trace *trace)
{
    char path[4096];
    size_t n = strlen(cfg->trace);
    int stem = n > 5 && strcmp(cfg->trace + n - 5, ".json") == 0 ? (int)n - 5 : (int)n;
    snprintf(path, sizeof path, "%.*s.rank%d.json", stem, cfg->trace, rank);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        TRY(basin_make_dirs(dir)); /* every rank: its host may not share rank 0's disk */
    }
    return trace_open(trace, path, rank, t0);
}

int trainer_open_outputs(Trainer *t, char *metrics_path, size_t len)
{
    const TrainConfig *cfg = t->cfg;
    int rc = BASIN_OK;
    if (cfg->metrics) snprintf(metrics_path, len, "%s", cfg->metrics);
    else snprintf(metrics_path, len, "%s/metrics.jsonl", cfg->output_dir);
    if (t->rank == 0) {
        rc = basin_make_dirs(cfg->output_dir);
        if (!rc) rc = metrics_open(&t->metrics, metrics_path, t->resuming);
    }
    if (!rc && t->samples_prefix) {
        char path[4096];
        snprintf(path, sizeof path, "%s.rank%d", t->samples_prefix, t->rank);
        t->samples_log = fopen(path, "a");
        if (!t->samples_log) rc = basin_error(BASIN_ERR_RUNTIME, "cannot write %s", path);
    }
    if (!rc && cfg->trace) {
        rc = trainer_trace_open(cfg, t->rank, t->t_start, &t->trace);
        if (!rc) {
            t->net->on_layer = on_layer;
            t->net->on_layer_arg = t;
        }
    }
    return rc;
}


void trainer_free_device(Trainer *t)
{
    for (int k = 0; k < 2 && t->ops; k++) {
        if (t->ops->sync) t->ops->sync(); /* no upload may still read pinned memory */
        t->ops->free(t->d_images[k]);
        t->ops->free(t->d_labels[k]);
        if (t->on_gpu) {
            t->dev->host_free(t->p_images[k]);
            t->dev->host_free(t->p_labels[k]);
        }
    }
    free(t->host);
    t->host = NULL;
}
