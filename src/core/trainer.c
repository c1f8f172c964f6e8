/* The training loop: a step (forward, backward while the gradients are
 * summed, the optimizer), evaluation, the progress line and the metrics,
 * and trainer_run, which sets it all up and tears it down. The files beside
 * this one hold the rest (trainer_internal.h lists them). */
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/error.h"
#include "core/preempt.h"
#include "core/roles.h"
#include "core/trainer_internal.h"

static int sum_doubles(Trainer *t, double *v, int n)
{
    BASIN_MPI(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, t->comm));
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

/* On the GPU, send the batch to the device through pinned memory and point
 * b at it. The copy runs on the backend's upload stream while the kernels
 * of the previous step (backward, SGD) still run; the next kernels wait for
 * it. Buffers alternate between two slots: the device's upload_begin waits for
 * the slot's last copy to leave its pinned buffer, and makes the new copies
 * wait on the device for the ops of the slot's previous batch. No stream
 * synchronisation in the step is needed for that: a rank with an empty
 * batch (an eval batch smaller than the world) has none. */
static void batch_to_device(Trainer *t, Batch *b)
{
    if (!t->on_gpu) return;
    size_t per = (size_t)t->net->in.c * (size_t)t->net->in.h * (size_t)t->net->in.w;
    size_t xb = b->n * per * sizeof(float), yb = b->n * sizeof(int32_t);
    int k = t->slot ^= 1;
    t->dev->upload_begin(k);
    memcpy(t->p_images[k], b->images, xb);
    memcpy(t->p_labels[k], b->labels, yb);
    t->dev->upload(t->d_images[k], t->p_images[k], xb);
    t->dev->upload(t->d_labels[k], t->p_labels[k], yb);
    b->images = t->d_images[k];
    b->labels = t->d_labels[k];
}

static int evaluate(Trainer *t, int epoch, uint64_t step, TrainResult *res)
{
    double t0 = basin_clock();
    TRY(bn_average_state(t)); /* every replica evaluates the same network */
    if (t->feed) TRY(remote_feed_eval_begin(t->feed)); /* the reader sends the split's slices */
    else TRY(reader_seek(t->test, 0, 0));
    size_t steps = t->test_steps;
    ForwardCtx ctx = {.train = 0, .seed = t->cfg->seed};
    double acc[3] = {0, 0, 0}; /* loss sum, correct, samples */
    LayerTimeFn keep = t->net->on_layer;
    t->net->on_layer = NULL;
    for (size_t s = 0; s < steps; s++) {
        Batch b;
        if (t->feed) TRY(remote_feed_eval_next(t->feed, s, &b));
        else TRY(reader_next(t->test, &b));
        size_t correct = 0;
        batch_to_device(t, &b);
        net_forward(t->net, b.images, b.labels, b.n, &ctx, &acc[0], &correct);
        acc[1] += (double)correct;
        acc[2] += (double)b.n;
    }
    t->net->on_layer = keep;
    TRY(sum_doubles(t, acc, 3));
    double loss = acc[0] / acc[2], accuracy = acc[1] / acc[2];
    double secs = basin_clock() - t0;
    basin_info("epoch %d/%d  test loss %.4f  test acc %.2f%%  (%.0f images, %.1f s)", epoch,
               t->epochs, loss, 100.0 * accuracy, acc[2], secs);
    metrics_eval(&t->metrics, epoch, step, loss, accuracy, basin_clock() - t->t_start);
    trace_event(&t->trace, "evaluation", "eval", 0, t0, basin_clock());
    res->test_loss = loss;
    res->test_accuracy = accuracy;
    return BASIN_OK;
}

/* --device cuda: the host returns from backward long before the device has
 * run it, so host clocks would put backward, the all-reduce and the
 * optimizer in the next step's forward (its loss waits for the stream).
 * Marks on the device's stream (trainer_mark) give the split in device time
 * instead: this replaces the interval's forward, backward, comm and
 * optimizer seconds by the device's (waits for the last step's marks). */
static void device_times(Trainer *t, double tm[T_COUNT])
{
    if (!t->on_gpu) return;
    double d[4] = {0, 0, 0, 0};
    t->dev->time_take(d, 5);
    tm[T_FORWARD] = d[0];
    tm[T_BACKWARD] = d[1];
    tm[T_COMM] = d[2];
    tm[T_OPTIM] = d[3];
}

/* One training step on this rank's slice: forward, backward with buckets
 * reduced as they fill, and the optimizer on each bucket once it is summed. */
static int train_step(Trainer *t, uint64_t gs, double *loss_sum, size_t *correct, size_t *n_rank,
                      size_t *n_global, double tm[T_COUNT])
{
    const TrainConfig *cfg = t->cfg;
    Net *net = t->net;
    Batch b;
    double c0 = basin_clock();
    if (t->feed) {
        TRY(remote_feed_next(t->feed, &b, NULL));
    } else {
        TRY(reader_next(t->train, &b));
        reader_take_wait_seconds(t->train);
    }
    tm[T_DATA] += basin_clock() - c0; /* the wait for the prefetch (or the reader process) and the hand-over */
    size_t first, count;
    order_share_slice(b.global_n, t->rank, t->world, balance_weights(t), &first, &count);
    if (count != b.n)
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "step %llu: a slice of %zu samples where the shares give %zu",
                          (unsigned long long)gs, b.n, count);
    if (t->samples_log) {
        fprintf(t->samples_log, "%llu", (unsigned long long)gs);
        for (size_t i = 0; i < b.n; i++) fprintf(t->samples_log, " %llu", (unsigned long long)b.index[i]);
        fputc('\n', t->samples_log);
    }
    ForwardCtx ctx = {.train = 1, .seed = cfg->seed, .sample_offset = gs * cfg->batch + first};
    if (cfg->sync_bn && t->world > 1 && net->n_state)
        ctx.stats_sum = bn_stats_sum, ctx.stats_arg = t, ctx.stats_batch = b.global_n;
    t->bn_status = BASIN_OK;
    float lr = (float)schedule_lr(&t->schedule, gs);
    t->lr = lr;
    batch_to_device(t, &b);

    double c1 = basin_clock();
    trainer_mark(t, 0);
    net_forward(net, b.images, b.labels, b.n, &ctx, loss_sum, correct);
    trainer_mark(t, 1);
    double c2 = basin_clock();
    t->next_bucket = 0;
    t->gar_status = BASIN_OK;
    net_backward(net, b.images, b.labels, b.n, 1.0f / (float)b.global_n, t->ar && cfg->overlap ? grads_ready : NULL,
                 t);
    trainer_mark(t, 2);
    double c3 = basin_clock();
    tm[T_FORWARD] += c2 - c1;
    tm[T_BACKWARD] += c3 - c2;
    if (t->bw) balance_account(t, c3 - c0, b.n); /* what grows with the share: data, forward, backward */
    trace_event(&t->trace, "data", "data", 0, c0, c1);

    TRY(grads_finish(t, c3, tm));
    if (t->bn_status) return t->bn_status;
    trace_event(&t->trace, "step", "step", 2, c0, basin_clock());
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
    BASIN_MPI(MPI_Allreduce(MPI_IN_PLACE, mean, T_COUNT, MPI_DOUBLE, MPI_SUM, t->comm));
    BASIN_MPI(MPI_Allreduce(MPI_IN_PLACE, max, T_COUNT, MPI_DOUBLE, MPI_MAX, t->comm));
    struct { double v; int rank; } busy = {tm[T_DATA] + tm[T_FORWARD] + tm[T_BACKWARD] + tm[T_OPTIM], t->rank};
    BASIN_MPI(MPI_Allreduce(MPI_IN_PLACE, &busy, 1, MPI_DOUBLE_INT, MPI_MAXLOC, t->comm));
    for (int i = 0; i < T_COUNT; i++) {
        r->timing_mean[i] = mean[i] / t->world;
        r->timing_max[i] = max[i];
    }
    r->straggler = busy.rank;
    if (t->bw) {
        /* --balance: every rank's share and busy time, for rank 0's line. */
        double own = (tm[T_DATA] + tm[T_FORWARD] + tm[T_BACKWARD] + tm[T_OPTIM]) / (double)steps;
        BASIN_MPI(MPI_Gather(&own, 1, MPI_DOUBLE, t->busy_all, 1, MPI_DOUBLE, 0, t->comm));
        r->n_ranks = t->world;
        r->shares = t->bw;
        r->busy = t->busy_all;
    }
    r->data_wait_s = r->timing_mean[T_DATA];
    r->compute_s = r->timing_mean[T_FORWARD] + r->timing_mean[T_BACKWARD] + r->timing_mean[T_OPTIM];
    r->comm_s = r->timing_mean[T_COMM];
    return BASIN_OK;
}

/* --readers: the readers' part of a step record, over the interval since
 * *last (the feed's counters then). One trainer speaks for each reader (the
 * reader's counters ride in the batches it sends). */
static int reader_interval(Trainer *t, StepRecord *r, RemoteFeedStats *last, double dt, uint64_t steps)
{
    RemoteFeedStats now;
    remote_feed_stats(t->feed, &now);
    double v[4] = {0, 0, 0, 0};
    uint64_t nb = now.batches - last->batches;
    v[0] = nb ? (now.ready_sum - last->ready_sum) / (double)nb : 0.0;
    if (t->rank < t->cfg->readers) { /* trainer t is reader t's first */
        v[1] = (double)(now.reader_samples - last->reader_samples);
        v[2] = now.reader_busy_s - last->reader_busy_s;
        v[3] = now.reader_idle_s - last->reader_idle_s;
    }
    *last = now;
    BASIN_MPI(MPI_Allreduce(MPI_IN_PLACE, v, 4, MPI_DOUBLE, MPI_SUM, t->comm));
    int n = t->cfg->readers;
    r->readers = n;
    r->batches_ready = v[0] / t->world;
    r->reader_images_per_s = dt > 0 ? v[1] / dt : 0.0;
    r->reader_busy = dt > 0 ? v[2] / (n * dt) : 0.0;
    r->reader_credit_wait_s = steps ? v[3] / n / (double)steps : 0.0;
    return BASIN_OK;
}

static int train_loop(Trainer *t, TrainResult *res)
{
    const TrainConfig *cfg = t->cfg;
    uint64_t spe = t->steps_per_epoch;
    double run_t0 = basin_clock(), interval_t0 = run_t0, train_time = 0.0;
    double iv[3] = {0, 0, 0};    /* loss sum, correct, samples over the interval */
    double tm[T_COUNT] = {0};
    uint64_t iv_steps = 0, images = 0;
    RemoteFeedStats feed_last = {0};
    res->test_loss = res->test_accuracy = NAN;
    if (t->train) reader_take_wait_seconds(t->train);

    t->last_ckpt = basin_clock();
    if (t->start_step >= t->total_steps) {
        /* Say which limit ended the run: --max-steps when it cut the epochs. */
        const char *limit = cfg->max_steps > 0 && (uint64_t)cfg->max_steps < (uint64_t)cfg->epochs * spe
                                ? "--max-steps" : "--epochs";
        basin_info("basin: the checkpoint is at step %llu of %llu: nothing left to train (raise %s to go on, "
                   "or use another --output-dir for a new run)",
                   (unsigned long long)t->start_step, (unsigned long long)t->total_steps, limit);
        res->steps = t->start_step;
        return BASIN_OK;
    }
    /* A signal during start-up (MPI, data, model): stop before the first
     * step. The state is the one resumed from, or the initial one: nothing
     * new to save, and no checkpoint is written over a good one. */
    int early = preempt_pending() ? 1 : 0;
    BASIN_MPI(MPI_Allreduce(MPI_IN_PLACE, &early, 1, MPI_INT, MPI_BOR, t->comm));
    t->steps_done = t->start_step;
    if (early) {
        res->steps = t->start_step;
        return ckpt_early_stop(t);
    }
    /* Reader processes continue the sample stream where this run starts. */
    if (t->feed) TRY(remote_feed_start(t->feed, t->start_step, t->total_steps));
    for (uint64_t gs = t->start_step; gs < t->total_steps; gs++) {
        int epoch = (int)(gs / spe) + 1;
        size_t correct = 0, n_rank = 0, n_global = 0;
        balance_step_begin(t, gs);
        TRY(train_step(t, gs, &iv[0], &correct, &n_rank, &n_global, tm));
        if ((long)gs == t->signal_step && t->rank == t->signal_rank) raise(SIGTERM);
        iv[1] += (double)correct;
        iv[2] += (double)n_rank;
        iv_steps++;
        images += n_global;

        uint64_t done = gs + 1;
        t->steps_done = done;
        int end_of_epoch = done % spe == 0 || done == t->total_steps;
        if ((cfg->check_every > 0 && done % (uint64_t)cfg->check_every == 0) || done == t->total_steps) {
            TRY(bn_average_state(t));
            TRY(replicas_check(t, done));
        }
        if (done < t->total_steps) TRY(balance_after_step(t, done));

        /* Step boundary: ranks agree whether any was told to stop, and follow
         * rank 0's clock for timed checkpoints (one tiny all-reduce). */
        int flags = preempt_pending() ? 1 : 0;
        if (t->rank == 0 && cfg->checkpoint_seconds > 0 && basin_clock() - t->last_ckpt >= cfg->checkpoint_seconds)
            flags |= 2;
        BASIN_MPI(MPI_Allreduce(MPI_IN_PLACE, &flags, 1, MPI_INT, MPI_BOR, t->comm));
        if (flags & 1) {
            res->steps = done;
            TRY(bn_average_state(t));
            return ckpt_preempted_stop(t, done);
        }
        if (done < t->total_steps &&
            ((flags & 2) || (cfg->checkpoint_steps > 0 && done % (uint64_t)cfg->checkpoint_steps == 0))) {
            TRY(bn_average_state(t));
            TRY(ckpt_periodic(t, done, (flags & 2) ? "timed" : "periodic"));
        }
        if (done % (uint64_t)cfg->log_every == 0 || end_of_epoch) {
            TRY(sum_doubles(t, iv, 3));
            double tnow = basin_clock(), dt = tnow - interval_t0;
            train_time += dt;
            double step_time = train_time / (double)done;
            char eta[32];
            format_eta(step_time * (double)(t->total_steps - done), eta, sizeof eta);
            float lr = (float)schedule_lr(&t->schedule, gs);
            StepRecord r = {
                .epoch = epoch, .step = done, .loss = iv[0] / iv[2], .accuracy = iv[1] / iv[2],
                .lr = lr, .images_per_s = iv[2] / dt, .time_s = tnow - t->t_start,
            };
            device_times(t, tm);
            TRY(report_interval(t, &r, tm, iv_steps));
            if (t->feed) TRY(reader_interval(t, &r, &feed_last, dt, iv_steps));
            res->train_loss = r.loss;
            basin_info("epoch %d/%d  step %6llu/%llu  loss %.4f  acc %5.1f%%  %7.0f img/s  lr %.4g  ETA %s",
                       epoch, t->epochs, (unsigned long long)done, (unsigned long long)t->total_steps,
                       r.loss, 100.0 * r.accuracy, r.images_per_s, (double)lr, eta);
            metrics_step(&t->metrics, &r);
            memset(iv, 0, sizeof iv);
            memset(tm, 0, sizeof tm);
            iv_steps = 0;
            if (end_of_epoch && t->test_steps && ((epoch % cfg->eval_every) == 0 || done == t->total_steps))
                TRY(evaluate(t, epoch, done, res));
            interval_t0 = basin_clock();
        }
    }
    res->steps = t->total_steps;
    TRY(bn_average_state(t));
    TRY(ckpt_final(t));
    res->seconds = basin_clock() - run_t0;
    res->images_per_s = train_time > 0 ? (double)images / train_time : 0.0;
    return BASIN_OK;
}

/* The job's rank of reader r (lay->comm numbers trainers first). */
static int reader_job_rank(const RemoteLayout *lay, int r)
{
    return lay->job_rank ? lay->job_rank[lay->trainers + r] : lay->trainers + r;
}

/* --readers: one line per reader process at the end of a run, from its
 * counters in the last batch its first trainer received, and the mean number
 * of batches that were already there when a trainer asked for one. */
static int report_readers(Trainer *t, const RemoteLayout *lay)
{
    int n = t->cfg->readers;
    double *v = basin_calloc((size_t)n * 3 + 1, sizeof *v);
    if (!v) return BASIN_ERR_RUNTIME;
    RemoteFeedStats st;
    remote_feed_stats(t->feed, &st);
    if (t->rank < n) {
        v[3 * t->rank] = st.reader_busy_s;
        v[3 * t->rank + 1] = st.reader_idle_s;
        v[3 * t->rank + 2] = (double)st.reader_samples;
    }
    v[3 * n] = st.batches ? st.ready_sum / (double)st.batches : 0.0;
    int mrc = MPI_Allreduce(MPI_IN_PLACE, v, 3 * n, MPI_DOUBLE, MPI_MAX, t->comm);
    if (mrc == MPI_SUCCESS) mrc = MPI_Allreduce(MPI_IN_PLACE, v + 3 * n, 1, MPI_DOUBLE, MPI_SUM, t->comm);
    if (mrc != MPI_SUCCESS) {
        free(v);
        return basin_mpi_fail(mrc, "MPI_Allreduce(reader counters)", __FILE__, __LINE__);
    }
    for (int r = 0; r < n; r++)
        basin_info("basin: reader rank %d: %.0f samples read in %.1f s (%.0f images/s while reading), "
                   "%.1f s waiting for credits", reader_job_rank(lay, r), v[3 * r + 2], v[3 * r],
                   v[3 * r] > 0 ? v[3 * r + 2] / v[3 * r] : 0.0, v[3 * r + 1]);
    basin_info("basin: trainers found %.2f of at most %d batches already received when they asked for one "
               "(mean)", v[3 * n] / t->world, t->cfg->reader_prefetch);
    free(v);
    return BASIN_OK;
}

/* One trainer rank. comm: the trainers; lay: the reader processes, or NULL
 * when this rank reads its own data; agree: where the outcome of the set-up
 * is agreed (comm, or the whole job, readers included). */
static int run_trainer(const TrainConfig *cfg, MPI_Comm comm, const RemoteLayout *lay, MPI_Comm agree,
                       TrainResult *result)
{
    Trainer t = {.cfg = cfg, .comm = comm, .lock = RUNLOCK_INIT, .good_step = -1, .bn_comm = MPI_COMM_NULL};
    TrainResult res = {0};
    res.test_loss = res.test_accuracy = NAN;
    int rc;
    BASIN_MPI(MPI_Comm_rank(comm, &t.rank));
    BASIN_MPI(MPI_Comm_size(comm, &t.world));
    if (cfg->check_only && cfg->check_ranks > 0) t.world = cfg->check_ranks, t.rank = 0;
    ops_cpu_set_threads(cfg->threads);
    /* basin-train installed them before MPI started; a library caller gets
     * them here. */
    rc = preempt_install();
    if (rc) return rc;

    basin_errors_hold();
    int reader_failed = 0;
    rc = BASIN_OK;
    if (lay) {
        /* The reader process's set-up message first: it says what the data
         * is, or that the reader failed (then its own line says why). */
        int rs = BASIN_OK;
        rc = remote_feed_open(lay, t.rank, &t.feed, &rs);
        if (!rc && rs) rc = rs, reader_failed = 1;
    }
    if (!rc) rc = trainer_setup(&t);
    /* A rank whose set-up failed (a file missing on its host) must not leave
     * the others waiting in the first collective: agree on the outcome. The
     * lowest rank that failed says why, so that a mistake every rank finds
     * is one line. With reader processes they agree too (trainers are ranks
     * 0..T-1 of agree, as of comm). */
    int worst = rc, speaker = rc && !reader_failed ? t.rank : INT_MAX;
    if (MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_INT, MPI_MAX, agree) != MPI_SUCCESS ||
        MPI_Allreduce(MPI_IN_PLACE, &speaker, 1, MPI_INT, MPI_MIN, agree) != MPI_SUCCESS) {
        worst = BASIN_ERR_RUNTIME;
        speaker = t.rank;
    }
    basin_errors_release(speaker == t.rank);
    if (!worst && t.feed) remote_feed_engage(t.feed); /* from now on the readers wait for our STOP */
    if (!worst && !cfg->check_only) worst = replicas_check_config(&t);
    if (!worst && !cfg->check_only) worst = ckpt_lock_outputs(&t);
    if (!worst) worst = ckpt_resume_setup(&t);
    if (worst) {
        rc = worst;
        goto done;
    }
    const DatasetInfo *info = &t.train_info;
    char desc[4096];
    config_describe(cfg, desc, sizeof desc);
    if (cfg->check_only) {
        basin_info("basin: configuration OK: %d rank(s), %zu parameters, %llu steps; %s", t.world,
                   t.net->n_params, (unsigned long long)t.total_steps, desc);
        goto done;
    }

    rc = grads_setup(&t);
    if (!rc) rc = bn_sync_setup(&t);
    if (rc) goto done;
    char metrics_path[4096];
    t.t_start = basin_clock();
    rc = trainer_open_outputs(&t, metrics_path, sizeof metrics_path);
    /* Every rank learns whether the outputs could be created anywhere. */
    worst = rc;
    if (MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS) worst = BASIN_ERR_RUNTIME;
    if (worst) {
        rc = worst;
        goto done;
    }

    t.net->zero_init_residual = cfg->zero_init_residual;
    rc = net_init_params(t.net, cfg->seed);
    if (!rc && t.resuming) rc = ckpt_resume_apply(&t);
    if (rc) goto done;
    basin_info("basin: %d rank(s); %s", t.world, desc);
    balance_log_start(&t);
    if (t.feed) {
        int ranks[64], k = 0;
        for (; k < cfg->readers && k < 64; k++) ranks[k] = reader_job_rank(lay, k);
        char list[512];
        roles_rank_text(ranks, k, list, sizeof list);
        basin_info("basin: %d reader process(es), rank(s) %s%s, read the training data for the %d trainer ranks "
                   "(at most %d batches in flight per trainer), and the test split",
                   cfg->readers, list, k < cfg->readers ? ",..." : "", t.world, cfg->reader_prefetch);
    }
    grads_describe(&t);
    basin_info("basin: %zu training and %zu test samples of %dx%dx%d, %d classes; %llu steps of %zu "
               "(%zu per rank), %llu per epoch",
               info->count, t.test_count, info->c, info->h, info->w,
               info->classes, (unsigned long long)t.total_steps, cfg->batch,
               t.bw ? (size_t)t.bw[t.rank] : cfg->batch / (size_t)t.world,
               (unsigned long long)t.steps_per_epoch);
    char layers[32768];
    net_describe(t.net, layers, sizeof layers);
    basin_info("basin: %zu parameters, %.1f MFLOP per sample forward\n%s", t.net->n_params,
               2e-6 * net_forward_macs(t.net), layers);
    rc = train_loop(&t, &res);
    if (rc == BASIN_OK && t.feed && t.start_step < t.total_steps) rc = report_readers(&t, lay);
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
        if (t.net->n_state) {
            res.state = malloc(t.net->n_state * sizeof(float));
            if (res.state) {
                t.ops->to_host(res.state, t.net->state, t.net->n_state * sizeof(float));
                res.n_state = t.net->n_state;
            }
        }
    }
done:
    if (t.feed) {
        /* STOP to the reader with the run's outcome (its exit code). */
        int frc = remote_feed_close(t.feed, rc);
        t.feed = NULL;
        if (!rc) rc = frc;
    }
    ckpt_write_status(&t, rc);
    if (t.samples_log) fclose(t.samples_log);
    balance_free(&t);
    if (t.rank == 0) checkpoint_free(&t.resume);
    metrics_close(&t.metrics);
    trace_close(&t.trace);
    grads_free(&t);
    bn_sync_free(&t);
    trainer_free_device(&t);
    net_destroy(t.net);
    if (t.test) reader_close(t.test);
    if (t.train) reader_close(t.train);
    runlock_release(&t.lock);
    if (result) *result = res;
    return rc;
}

static void reader_trace_event(void *arg, const char *name, int tid, double t_begin, double t_end)
{
    trace_event(arg, name, "reader", tid, t_begin, t_end);
}

/* A reader process: its set-up, the job's agreement on everybody's set-up,
 * then batches until every trainer it serves has stopped. With --trace it
 * writes its own file (its reads, and its waits for credits). */
static int reader_role(const TrainConfig *cfg, const RemoteLayout *lay, int index, MPI_Comm agree)
{
    int rank;
    BASIN_MPI(MPI_Comm_rank(agree, &rank));
    ReaderConfig base, test;
    /* Rank and world are the served trainer's (remote_server_open); the
     * world here sizes --balance auto's largest share. */
    trainer_train_reader_config(cfg, 0, lay->trainers, &base);
    trainer_test_reader_config(cfg, 0, lay->trainers, &test);
    basin_errors_hold();
    RemoteServer *srv = NULL;
    int rc = remote_server_open(&base, cfg->eval_every > 0 ? &test : NULL, lay, index, &srv);
    Trace trace = {0};
    if (!rc && cfg->trace) {
        rc = trainer_trace_open(cfg, rank, basin_clock(), &trace);
        if (!rc) remote_server_on_event(srv, reader_trace_event, &trace);
    }
    int worst = rc, speaker = rc ? rank : INT_MAX;
    if (MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_INT, MPI_MAX, agree) != MPI_SUCCESS ||
        MPI_Allreduce(MPI_IN_PLACE, &speaker, 1, MPI_INT, MPI_MIN, agree) != MPI_SUCCESS) {
        worst = BASIN_ERR_RUNTIME;
        speaker = rank;
    }
    basin_errors_release(speaker == rank);
    rc = worst ? worst : remote_server_run(srv);
    /* After an error the job is aborted: sends that will never be received
     * are not waited for. */
    if (rc != BASIN_ERR_RUNTIME) remote_server_close(srv);
    trace_close(&trace);
    return rc;
}

/* --roles: whether this rank reads (*reader) and how many ranks do (*n),
 * from the hostfile's reader hosts; desc for the log. Under --check=RANKS
 * no rank's host is known: the file is only read and checked, and *n stays
 * --readers'. */
static int take_roles(const TrainConfig *cfg, MPI_Comm comm, int rank, int *reader, int *n, char *desc, size_t len)
{
    if (cfg->check_only && cfg->check_ranks > 0) return roles_check_file(cfg->roles, comm, desc, len);
    int found = 0;
    TRY(roles_assign(cfg->roles, comm, reader, &found, desc, len));
    if (cfg->readers > 0 && found != cfg->readers) {
        if (rank == 0)
            basin_error(BASIN_ERR_USAGE, "--roles %s puts %d rank(s) on reader hosts but --readers says %d: give "
                        "the count the file makes, or leave --readers out", cfg->roles, found, cfg->readers);
        return BASIN_ERR_USAGE; /* every rank found it */
    }
    *n = found;
    return BASIN_OK;
}

/* The refusals of a layout of n readers among size ranks (src: the option
 * that made it), in why; empty when it can run. */
static void check_layout(const TrainConfig *cfg, const char *src, int n, int size, char *why, size_t len)
{
    int trainers = size - n;
    if (n >= size)
        snprintf(why, len, "--readers %d: the job has %d rank(s), so no trainer would be left (the last %d "
                 "ranks read; start at least %d)", n, size, n, n + 1);
    else if (n > trainers)
        snprintf(why, len, "%s: only %d trainer rank(s) would be left, and each reader serves at "
                 "least one (use at most %d readers on %d ranks)", src, trainers, size / 2, size);
    else if (cfg->balance_n && cfg->balance_n != trainers)
        snprintf(why, len, "--balance static: %d weights for %d trainer ranks: give one per trainer (readers "
                 "take no share)", cfg->balance_n, trainers);
    else if (synthetic_is(cfg->data))
        snprintf(why, len, "%s with --data %s: synthetic data is generated, not read; run without %s", src,
                 cfg->data, cfg->roles ? "--roles" : "--readers");
}

/* The readers and trainers, each on their communicators: job orders the
 * ranks of comm trainers first (each group in comm's order), as remote.h's
 * layout wants; data is its duplicate for the batches; sub holds this
 * rank's group; job_rank[i] is comm's rank of job's rank i. */
static int split_roles(MPI_Comm comm, int reader, MPI_Comm *job, MPI_Comm *data, MPI_Comm *sub, int **job_rank)
{
    int rank, size;
    BASIN_MPI(MPI_Comm_rank(comm, &rank));
    BASIN_MPI(MPI_Comm_size(comm, &size));
    *job = *data = *sub = MPI_COMM_NULL;
    *job_rank = basin_malloc((size_t)size * sizeof **job_rank);
    if (!*job_rank) return BASIN_ERR_RUNTIME;
    int mrc = MPI_Comm_split(comm, 0, reader ? size + rank : rank, job);
    if (mrc == MPI_SUCCESS) mrc = MPI_Comm_dup(*job, data);
    if (mrc == MPI_SUCCESS) mrc = MPI_Comm_split(*job, reader, rank, sub);
    if (mrc == MPI_SUCCESS) mrc = MPI_Allgather(&rank, 1, MPI_INT, *job_rank, 1, MPI_INT, *job);
    if (mrc != MPI_SUCCESS) return basin_mpi_fail(mrc, "MPI_Comm_split(trainers, readers)", __FILE__, __LINE__);
    return BASIN_OK;
}

/* --readers N or --roles FILE: some ranks of comm read (the last N, or those
 * on the file's reader hosts), the others train on a communicator of their
 * own (the all-reduce, supernodes, replica checks and checkpoints never see
 * a reader). */
static int run_with_readers(const TrainConfig *cfg, MPI_Comm comm, TrainResult *result)
{
    int rank, size;
    BASIN_MPI(MPI_Comm_rank(comm, &rank));
    BASIN_MPI(MPI_Comm_size(comm, &size));
    if (cfg->check_only && cfg->check_ranks > 0) size = cfg->check_ranks; /* checked as on that many */
    int reader = 0, n = cfg->readers;
    char roles[2048] = "";
    if (cfg->roles) TRY(take_roles(cfg, comm, rank, &reader, &n, roles, sizeof roles));
    else reader = rank >= size - n;
    if (roles[0]) basin_info("basin: %s", roles);
    if (n == 0) return run_trainer(cfg, comm, NULL, comm, result); /* no host is marked reader */
    char src[300], why[1024] = "";
    if (cfg->roles) snprintf(src, sizeof src, "--roles %s (%d reader rank(s))", cfg->roles, n);
    else snprintf(src, sizeof src, "--readers %d", n);
    check_layout(cfg, src, n, size, why, sizeof why);
    if (why[0]) {
        if (rank == 0) basin_error(BASIN_ERR_USAGE, "%s", why);
        return BASIN_ERR_USAGE; /* every rank found it */
    }
    /* The trainers' own view: the readers' count, and under --check=RANKS
     * a check of the ranks that would train. */
    TrainConfig c = *cfg;
    c.readers = n;
    if (c.check_only && c.check_ranks > 0) c.check_ranks = size - n;
    if (c.check_only) return run_trainer(&c, comm, NULL, comm, result); /* reads no batch */
    int rc = preempt_install();
    if (rc) return rc;
    MPI_Comm job, data, sub;
    int *job_rank = NULL, pos = 0;
    rc = split_roles(comm, reader, &job, &data, &sub, &job_rank);
    if (!rc && MPI_Comm_rank(job, &pos) != MPI_SUCCESS) rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "MPI_Comm_rank failed");
    if (rc) {
        free(job_rank);
        return rc; /* the job is aborted */
    }
    int trainers = size - n;
    RemoteLayout lay = {.comm = data, .trainers = trainers, .readers = n, .prefetch = cfg->reader_prefetch,
                        .timeout_s = cfg->collective_timeout, .job_rank = job_rank};
    basin_info_speaker(pos == 0); /* the first trainer, wherever --roles put it */
    if (!reader) {
        rc = run_trainer(&c, sub, &lay, job, result);
    } else {
        rc = reader_role(&c, &lay, pos - trainers, job);
        if (result) {
            *result = (TrainResult){0};
            result->test_loss = result->test_accuracy = NAN;
        }
    }
    basin_info_speaker(-1);
    free(job_rank);
    if (rc == BASIN_ERR_RUNTIME) return rc; /* being aborted: no collective frees */
    int mrc = MPI_Comm_free(&sub);
    if (mrc == MPI_SUCCESS) mrc = MPI_Comm_free(&data);
    if (mrc == MPI_SUCCESS) mrc = MPI_Comm_free(&job);
    if (mrc != MPI_SUCCESS) return basin_mpi_fail(mrc, "MPI_Comm_free(readers)", __FILE__, __LINE__);
    return rc;
}

int trainer_run(const TrainConfig *cfg, MPI_Comm comm, TrainResult *result)
{
    if (cfg->readers > 0 || cfg->roles) return run_with_readers(cfg, comm, result);
    return run_trainer(cfg, comm, NULL, comm, result);
}
