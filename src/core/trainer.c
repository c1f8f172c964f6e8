#include "core/trainer.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "core/metrics.h"
#include "core/net.h"
#include "core/optim.h"
#include "models/models.h"
#include "reader/reader.h"

typedef struct {
    const TrainConfig *cfg;
    MPI_Comm comm;
    int rank, world;
    Reader *train, *test;
    Net *net;
    LayerSpec specs[MODEL_MAX_LAYERS];
    int n_specs;
    size_t rank_batch;
    uint64_t steps_per_epoch, total_steps;
    Schedule schedule;
    SgdConfig sgd;
    Metrics metrics;
    double t_start;
} Trainer;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

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

/* Sum a float buffer over all ranks, in chunks that fit MPI's int count. */
static int sum_over_ranks(Trainer *t, float *buf, size_t count)
{
    const size_t chunk = (size_t)INT_MAX / 2;
    for (size_t off = 0; off < count; off += chunk) {
        size_t n = count - off < chunk ? count - off : chunk;
        CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)n, MPI_FLOAT, MPI_SUM, t->comm));
    }
    return BASIN_OK;
}

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

/* Everything a user can get wrong is checked here, before any file is written. */
static int trainer_setup(Trainer *t)
{
    const TrainConfig *cfg = t->cfg;
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
    TRY(net_create(t->specs, t->n_specs, in, info->classes, &ops_cpu, max_batch, &t->net));

    uint64_t spe = t->steps_per_epoch;
    t->total_steps = (uint64_t)cfg->epochs * spe;
    if (cfg->max_steps > 0 && (uint64_t)cfg->max_steps < t->total_steps) t->total_steps = (uint64_t)cfg->max_steps;
    t->schedule = (Schedule){
        .kind = cfg->schedule,
        .base_lr = cfg->lr,
        .warmup_steps = (uint64_t)llround(cfg->warmup_epochs * (double)spe),
        .total_steps = t->total_steps,
        .step_every = (uint64_t)llround(cfg->lr_step_epochs * (double)spe),
        .gamma = cfg->lr_gamma,
    };
    t->sgd = (SgdConfig){(float)cfg->momentum, (float)cfg->weight_decay, cfg->nesterov};
    return BASIN_OK;
}

static int evaluate(Trainer *t, int epoch, uint64_t step, TrainResult *res)
{
    double t0 = now_s();
    TRY(reader_seek(t->test, 0, 0));
    size_t steps = reader_steps_per_epoch(t->test);
    ForwardCtx ctx = {.train = 0, .seed = t->cfg->seed};
    double acc[3] = {0, 0, 0}; /* loss sum, correct, samples */
    for (size_t s = 0; s < steps; s++) {
        Batch b;
        TRY(reader_next(t->test, &b));
        size_t correct = 0;
        net_forward(t->net, b.images, b.labels, b.n, &ctx, &acc[0], &correct);
        acc[1] += (double)correct;
        acc[2] += (double)b.n;
    }
    TRY(sum_doubles(t, acc, 3));
    double loss = acc[0] / acc[2], accuracy = acc[1] / acc[2];
    double secs = now_s() - t0;
    basin_info("epoch %d/%d  test loss %.4f  test acc %.2f%%  (%.0f images, %.1f s)", epoch,
               t->cfg->epochs, loss, 100.0 * accuracy, acc[2], secs);
    metrics_eval(&t->metrics, epoch, step, loss, accuracy, now_s() - t->t_start);
    res->test_loss = loss;
    res->test_accuracy = accuracy;
    return BASIN_OK;
}

static int train_loop(Trainer *t, TrainResult *res)
{
    const TrainConfig *cfg = t->cfg;
    Net *net = t->net;
    uint64_t spe = t->steps_per_epoch;
    double run_t0 = now_s(), interval_t0 = run_t0, train_time = 0.0;
    double iv[3] = {0, 0, 0}; /* loss sum, correct, samples over the interval */
    double tm[3] = {0, 0, 0}; /* data wait, compute, comm over the interval */
    uint64_t iv_steps = 0, images = 0;
    res->test_loss = res->test_accuracy = NAN;
    reader_take_wait_seconds(t->train);

    for (uint64_t gs = 0; gs < t->total_steps; gs++) {
        int epoch = (int)(gs / spe) + 1;
        double s0 = now_s();
        Batch b;
        TRY(reader_next(t->train, &b));
        double wait = reader_take_wait_seconds(t->train);
        size_t first, count;
        order_rank_slice(b.global_n, t->rank, t->world, &first, &count);
        ForwardCtx ctx = {.train = 1, .seed = cfg->seed, .sample_offset = gs * cfg->batch + first};
        float lr = (float)schedule_lr(&t->schedule, gs);
        size_t correct = 0;
        net_forward(net, b.images, b.labels, b.n, &ctx, &iv[0], &correct);
        net_backward(net, b.images, b.labels, b.n, 1.0f / (float)b.global_n, NULL, NULL);
        double s1 = now_s();
        if (t->world > 1) TRY(sum_over_ranks(t, net->grads, net->n_params));
        double s2 = now_s();
        sgd_step_range(net, &t->sgd, lr, 0, net->n_params);
        double s3 = now_s();
        iv[1] += (double)correct;
        iv[2] += (double)b.n;
        tm[0] += wait;
        tm[1] += (s1 - s0 - wait) + (s3 - s2);
        tm[2] += s2 - s1;
        iv_steps++;
        images += b.global_n;

        uint64_t done = gs + 1;
        int end_of_epoch = done % spe == 0 || done == t->total_steps;
        if (done % (uint64_t)cfg->log_every == 0 || end_of_epoch) {
            TRY(sum_doubles(t, iv, 3));
            double tnow = now_s(), dt = tnow - interval_t0;
            train_time += dt;
            double ips = iv[2] / dt;
            double step_time = train_time / (double)done;
            char eta[32];
            format_eta(step_time * (double)(t->total_steps - done), eta, sizeof eta);
            res->train_loss = iv[0] / iv[2];
            basin_info("epoch %d/%d  step %6llu/%llu  loss %.4f  acc %5.1f%%  %7.0f img/s  lr %.4g  ETA %s",
                       epoch, cfg->epochs, (unsigned long long)done,
                       (unsigned long long)t->total_steps, res->train_loss, 100.0 * iv[1] / iv[2], ips,
                       (double)lr, eta);
            StepRecord r = {
                .epoch = epoch, .step = done, .loss = res->train_loss, .accuracy = iv[1] / iv[2],
                .lr = lr, .images_per_s = ips, .time_s = tnow - t->t_start,
                .data_wait_s = tm[0] / (double)iv_steps, .compute_s = tm[1] / (double)iv_steps,
                .comm_s = tm[2] / (double)iv_steps,
            };
            metrics_step(&t->metrics, &r);
            memset(iv, 0, sizeof iv);
            memset(tm, 0, sizeof tm);
            iv_steps = 0;
            if (end_of_epoch && t->test &&
                ((epoch % cfg->eval_every) == 0 || done == t->total_steps)) {
                TRY(evaluate(t, epoch, done, res));
            }
            interval_t0 = now_s();
        }
    }
    res->steps = t->total_steps;
    res->seconds = now_s() - run_t0;
    res->images_per_s = train_time > 0 ? (double)images / train_time : 0.0;
    return BASIN_OK;
}

int trainer_run(const TrainConfig *cfg, MPI_Comm comm, TrainResult *result)
{
    Trainer t = {.cfg = cfg, .comm = comm};
    TrainResult res = {0};
    int rc;
    CHECK_MPI(MPI_Comm_rank(comm, &t.rank));
    CHECK_MPI(MPI_Comm_size(comm, &t.world));
    if (cfg->check_only && cfg->check_ranks > 0) t.world = cfg->check_ranks, t.rank = 0;
    ops_cpu_set_threads(cfg->threads);

    rc = trainer_setup(&t);
    /* A rank whose setup failed (a file missing on its host) must not leave
     * the others waiting in the first collective: agree on the outcome. */
    int worst = rc;
    if (MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS) worst = BASIN_ERR_RUNTIME;
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

    char metrics_path[4096];
    if (cfg->metrics)
        snprintf(metrics_path, sizeof metrics_path, "%s", cfg->metrics);
    else
        snprintf(metrics_path, sizeof metrics_path, "%s/metrics.jsonl", cfg->output_dir);
    if (t.rank == 0) {
        rc = make_dirs(cfg->output_dir);
        if (!rc) rc = metrics_open(&t.metrics, metrics_path);
    }
    /* Every rank learns whether rank 0 could create its outputs. */
    int any = rc;
    if (MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS) any = BASIN_ERR_RUNTIME;
    if (any) {
        rc = any;
        goto done;
    }

    rc = net_init_params(t.net, cfg->seed);
    if (rc) goto done;
    basin_info("basin: %d rank(s); %s", t.world, desc);
    basin_info("basin: %zu training and %zu test samples of %dx%dx%d, %d classes; %llu steps of %zu "
               "(%zu per rank), %llu per epoch",
               info->count, t.test ? reader_info(t.test)->count : (size_t)0, info->c, info->h, info->w,
               info->classes, (unsigned long long)t.total_steps, cfg->batch, t.rank_batch,
               (unsigned long long)t.steps_per_epoch);
    net_describe(t.net, desc, sizeof desc);
    basin_info("basin: %zu parameters, %.1f MFLOP per sample forward\n%s", t.net->n_params,
               2e-6 * net_forward_macs(t.net), desc);
    t.t_start = now_s();
    rc = train_loop(&t, &res);
    if (!rc) {
        basin_info("basin: trained %llu steps in %.1f s (%.0f images/s); metrics in %s",
                   (unsigned long long)res.steps, res.seconds, res.images_per_s, metrics_path);
    }
done:
    metrics_close(&t.metrics);
    net_destroy(t.net);
    if (t.test) reader_close(t.test);
    if (t.train) reader_close(t.train);
    if (result) *result = res;
    return rc;
}
