/* Where a gradient goes, from backward to the optimizer.
 *
 * Backward writes the gradients into one flat buffer, last layer first, and
 * tells grads_ready how far the final part has grown. The buffer is cut into
 * buckets (--bucket-mb); each bucket's all-reduce starts as soon as backward
 * has passed it, while backward goes on with earlier layers. Then:
 *
 *   CPU, sharded update (default): the buffer lives in a shared-memory
 *     window of the supernode; the rank that sums a part of a bucket runs
 *     the optimizer on that part in the all-reduce's progress thread
 *     (bucket_update), and the ranks copy each other's new parameters;
 *   CPU, --no-sharded-update: each bucket is summed, then every rank runs
 *     the optimizer on it (grads_finish);
 *   GPU: buckets are queued on a communication stream behind an event
 *     (cuda/allreduce_gpu.h), and the optimizer's kernels wait for the sums
 *     on the device;
 *   one rank: the optimizer runs on the whole buffer.
 *
 * apply_update is the one place the optimizer runs.
 */
#include <stdio.h>
#include <stdlib.h>

#include "core/clock.h"
#include "core/error.h"
#include "core/trainer_internal.h"

#ifdef BASIN_HAVE_CUDA
#include "allreduce_gpu.h"
#endif

/* The optimizer on [lo, hi) of the flat buffers. */
static void apply_update(Trainer *t, size_t lo, size_t hi)
{
    sgd_step_range(t->net, &t->sgd, t->lr, lo, hi);
}

/* The GPU all-reduce: created over the supernodes the CPU one found. */
static int gpu_setup(Trainer *t, size_t n)
{
#ifdef BASIN_HAVE_CUDA
    GpuAllreduce *g = NULL;
    TRY(gpu_allreduce_create(t->comm, allreduce_topology(t->ar), t->cfg->allreduce, n, t->cfg->collective_timeout,
                             &g));
    t->gar = g;
    return BASIN_OK;
#else
    (void)t;
    (void)n;
    return BASIN_FAIL(BASIN_ERR_RUNTIME, "no GPU all-reduce in this build");
#endif
}

int grads_setup(Trainer *t)
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
        TRY(gpu_setup(t, n));
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

void grads_free(Trainer *t)
{
#ifdef BASIN_HAVE_CUDA
    gpu_allreduce_free(t->gar);
#endif
    t->gar = NULL;
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

void grads_describe(const Trainer *t)
{
    const TrainConfig *cfg = t->cfg;
    if (!t->ar) return;
    const AllreduceTopology *topo = allreduce_topology(t->ar);
#ifdef BASIN_HAVE_CUDA
    if (t->gar) {
        basin_info("basin: %d supernode(s); GPU all-reduce %s in %d bucket(s) of up to %.1f MiB, overlap %s",
                   topo->nodes, gpu_allreduce_algorithm(t->gar), t->n_buckets, cfg->bucket_mb,
                   cfg->overlap ? "on" : "off");
        return;
    }
#endif
    basin_info("basin: %d supernode(s); all-reduce %s in %d bucket(s) of up to %.1f MiB, overlap %s, "
               "sharded update %s",
               topo->nodes, allreduce_plan_algorithm(t->buckets[0].plan), t->n_buckets, cfg->bucket_mb,
               cfg->overlap ? "on" : "off", t->sharded ? "on" : "off");
}

/* The optimizer on the part [lo, hi) of bucket b this rank owns, in the
 * progress thread once that part is summed. Backward is done with every
 * layer the bucket covers, so nothing else touches these elements now. */
static void bucket_update(void *arg, size_t lo, size_t hi)
{
    Bucket *b = arg;
    apply_update(b->t, b->lo + lo, b->lo + hi);
}

static int bucket_start(Trainer *t, Bucket *b)
{
    b->t_start = basin_clock();
    b->started = 1;
    b->done = 0;
    float *g = t->net->grads + b->lo;
#ifdef BASIN_HAVE_CUDA
    if (t->gar) {
        /* Queued after the kernels that wrote the bucket; sums while
         * backward queues the earlier layers. */
        int st = gpu_allreduce_start(t->gar, g, b->hi - b->lo, t->dev->stream());
        if (st && !t->gar_status) t->gar_status = st;
        return st;
    }
#endif
    if (t->sharded) return allreduce_start_update(b->plan, g, t->net->params + b->lo, bucket_update, b, &b->ticket);
    return allreduce_start(b->plan, g, g, &b->ticket);
}

int grads_gather_momentum(Trainer *t)
{
    if (!t->sharded) return BASIN_OK;
    for (int k = 0; k < t->n_buckets; k++)
        TRY(allreduce_gather_owned(t->buckets[k].plan, t->net->mom + t->buckets[k].lo));
    return BASIN_OK;
}

/* Backward tells us the final prefix of the gradients grew: start every
 * bucket that now lies inside it, and note buckets that finished. */
void grads_ready(void *trainer, size_t ready)
{
    Trainer *t = trainer;
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
            b->t_done = basin_clock();
        }
    }
}

/* GPU: the buckets were queued during backward (or are now); the
 * optimizer's kernels wait for their sums on the device. */
static int gpu_finish(Trainer *t, double c3, double tm[T_COUNT])
{
#ifdef BASIN_HAVE_CUDA
    TRY(t->gar_status);
    TRY(gpu_allreduce_join(t->gar, t->dev->stream()));
    trainer_mark(t, 3);
    double w1 = basin_clock();
    tm[T_COMM] += w1 - c3;
    trace_event(&t->trace, "all-reduce (queued)", "allreduce", 1, c3, w1);
    apply_update(t, 0, t->net->n_params);
    trainer_mark(t, 4);
    tm[T_OPTIM] += basin_clock() - w1;
    return BASIN_OK;
#else
    (void)t;
    (void)c3;
    (void)tm;
    return BASIN_FAIL(BASIN_ERR_RUNTIME, "no GPU all-reduce in this build");
#endif
}

int grads_finish(Trainer *t, double c3, double tm[T_COUNT])
{
    Net *net = t->net;
    if (!t->ar) {
        trainer_mark(t, 3);
        apply_update(t, 0, net->n_params);
        trainer_mark(t, 4);
        tm[T_OPTIM] += basin_clock() - c3;
        return BASIN_OK;
    }
    if (!t->cfg->overlap) grads_ready(t, net->n_params);
    if (t->gar) return gpu_finish(t, c3, tm);
    for (int k = 0; k < t->n_buckets; k++) {
        Bucket *bk = &t->buckets[k];
        double w0 = basin_clock();
        TRY(allreduce_wait(t->ar, bk->ticket));
        double w1 = basin_clock();
        if (!bk->done) bk->t_done = w1;
        tm[T_COMM] += w1 - w0;
        char name[48];
        snprintf(name, sizeof name, "all-reduce bucket %d", k);
        trace_event(&t->trace, name, "allreduce", 1, bk->t_start, bk->t_done);
        if (t->sharded) continue; /* updated inside the request */
        apply_update(t, bk->lo, bk->hi);
        tm[T_OPTIM] += basin_clock() - w1;
    }
    return BASIN_OK;
}
