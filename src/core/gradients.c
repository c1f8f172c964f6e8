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
 *
 * LARS needs the norms of whole layers before any element of them can move,
 * while a bucket (and, sharded, an owner's part of it) may cut a layer in
 * two. So with LARS the buckets only sum (sharded: the owners note the parts
 * they own), and after the last one:
 *   sharded: the owners' summed gradients are gathered inside the supernode
 *     (allreduce_gather_owned: a shared-memory copy of the gradient buffer,
 *     no network traffic), every rank computes the same trust ratios from
 *     whole layers in the same order, each owner updates its parts, and the
 *     new parameters are gathered again: two intra-supernode copies of
 *     n_params floats per step beside the sharded SGD's one;
 *   otherwise: the trust ratios and the update run on the whole buffer.
 * Adam and AdamW are element-wise and run in the buckets as SGD does; the
 * second moment lives in the shared window beside the momentum when sharded.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/error.h"
#include "core/trainer_internal.h"

#ifdef BASIN_HAVE_CUDA
#include "allreduce_gpu.h"
#endif

/* The optimizer on [lo, hi) of the flat buffers. */
static void apply_update(Trainer *t, size_t lo, size_t hi)
{
    optim_step_range(t->net, &t->sgd, t->lr, lo, hi);
}

/* The step the optimizer takes now: set lazily, since a resume sets
 * start_step after grads_setup; advanced by grads_finish. */
static void note_step(Trainer *t)
{
    if (t->sgd.step_known) return;
    t->sgd.step = t->start_step;
    t->sgd.step_known = 1;
}

/* Sharded LARS: the parts of each bucket this rank owns, noted by
 * bucket_update in the progress thread (adjacent parts merged) and read by
 * grads_finish after the bucket's wait. */
typedef struct {
    size_t *range; /* lo, hi pairs */
    int n, cap;
    int failed;    /* an allocation failed */
} OwnedParts;
static OwnedParts *owned_parts; /* one per bucket; the trainer's only */

/* The optimizer's own buffers: the second moment (Adam) and the trust
 * ratios (LARS). shared: inside the supernode's window (sharded update). */
static int optim_state_setup(Trainer *t, int shared)
{
    Net *net = t->net;
    size_t n = net->n_params;
    if (t->sgd.kind == OPTIM_ADAM || t->sgd.kind == OPTIM_ADAMW) {
        if (shared) {
            t->sgd.adam_v = allreduce_buffer_alloc(t->ar, n);
            if (!t->sgd.adam_v) return BASIN_FAIL(BASIN_ERR_RUNTIME, "cannot allocate the shared second moment");
            memset(t->sgd.adam_v, 0, n * sizeof(float));
        } else {
            t->sgd.adam_v = t->ops->alloc(n * sizeof(float));
            if (!t->sgd.adam_v) return BASIN_FAIL(BASIN_ERR_RUNTIME, "cannot allocate the second moment");
            t->ops->zero(t->sgd.adam_v, n);
        }
    }
    if (t->sgd.kind == OPTIM_LARS) {
        t->sgd.trust = basin_calloc((size_t)net->n_layers + 1, sizeof(float));
        if (!t->sgd.trust) return BASIN_ERR_RUNTIME;
    }
    return BASIN_OK;
}

static void optim_state_free(Trainer *t)
{
    if (t->sgd.adam_v) {
        if (t->sharded && t->ar) allreduce_buffer_free(t->ar, t->sgd.adam_v);
        else t->ops->free(t->sgd.adam_v);
    }
    t->sgd.adam_v = NULL;
    free(t->sgd.trust);
    t->sgd.trust = NULL;
    for (int k = 0; owned_parts && k < t->n_buckets; k++) free(owned_parts[k].range);
    free(owned_parts);
    owned_parts = NULL;
}

/* The all-reduce plan flags of --wire. */
static int wire_flags(const TrainConfig *cfg, unsigned *wire)
{
    if (allreduce_wire_parse(cfg->wire, wire))
        return basin_error(BASIN_ERR_USAGE, "--wire '%s': expected fp32, bf16 or fp16", cfg->wire);
    return BASIN_OK;
}

/* The GPU all-reduce: created over the supernodes the CPU one found. */
static int gpu_setup(Trainer *t, size_t n)
{
#ifdef BASIN_HAVE_CUDA
    GpuAllreduce *g = NULL;
    unsigned wire = 0;
    TRY(wire_flags(t->cfg, &wire));
    TRY(gpu_allreduce_create(t->comm, allreduce_topology(t->ar), t->cfg->allreduce, wire, n,
                             t->cfg->collective_timeout, &g));
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
    if (t->world == 1) return optim_state_setup(t, 0);
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
    TRY(optim_state_setup(t, t->sharded));

    size_t per = (size_t)(cfg->bucket_mb * 1048576.0 / sizeof(float));
    if (per == 0) per = 1;
    t->n_buckets = (int)((n + per - 1) / per);
    t->buckets = basin_calloc((size_t)t->n_buckets, sizeof *t->buckets);
    if (!t->buckets) return BASIN_ERR_RUNTIME;
    unsigned wire = 0;
    TRY(wire_flags(cfg, &wire));
    for (int k = 0; k < t->n_buckets; k++) {
        Bucket *b = &t->buckets[k];
        b->t = t;
        b->lo = (size_t)k * per;
        b->hi = b->lo + per < n ? b->lo + per : n;
        if (!t->on_gpu) TRY(allreduce_plan(t->ar, cfg->allreduce, b->hi - b->lo, ALLREDUCE_WINDOW_ONLY | wire, &b->plan));
    }
    if (t->sharded && !optim_elementwise(&t->sgd)) {
        owned_parts = basin_calloc((size_t)t->n_buckets, sizeof *owned_parts);
        if (!owned_parts) return BASIN_ERR_RUNTIME;
    }
    return BASIN_OK;
}

void grads_free(Trainer *t)
{
#ifdef BASIN_HAVE_CUDA
    gpu_allreduce_free(t->gar);
#endif
    t->gar = NULL;
    if (!t->ar) {
        optim_state_free(t);
        return;
    }
    allreduce_wait_all(t->ar);
    optim_state_free(t);
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
        const char *wire = gpu_allreduce_wire(t->gar);
        const int narrow = strcmp(wire, "fp32") != 0;
        basin_info("basin: %d supernode(s); GPU all-reduce %s in %d bucket(s) of up to %.1f MiB, overlap %s%s%s",
                   topo->nodes, gpu_allreduce_algorithm(t->gar), t->n_buckets, cfg->bucket_mb,
                   cfg->overlap ? "on" : "off", narrow ? ", wire between supernodes " : "", narrow ? wire : "");
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
    if (optim_elementwise(&b->t->sgd)) {
        apply_update(b->t, b->lo + lo, b->lo + hi);
        return;
    }
    /* LARS: the update waits for whole layers (grads_finish). */
    OwnedParts *o = &owned_parts[b - b->t->buckets];
    if (o->n && o->range[2 * o->n - 1] == b->lo + lo) {
        o->range[2 * o->n - 1] = b->lo + hi;
        return;
    }
    if (o->n == o->cap) {
        int cap = o->cap ? 2 * o->cap : 4;
        size_t *r = realloc(o->range, 2 * (size_t)cap * sizeof *r);
        if (!r) {
            o->failed = 1;
            return;
        }
        o->range = r;
        o->cap = cap;
    }
    o->range[2 * o->n] = b->lo + lo;
    o->range[2 * o->n + 1] = b->lo + hi;
    o->n++;
}

/* Sharded LARS after every bucket is summed (see the top of the file). */
static int lars_sharded_update(Trainer *t)
{
    Net *net = t->net;
    for (int k = 0; k < t->n_buckets; k++) {
        if (owned_parts[k].failed) return BASIN_FAIL(BASIN_ERR_RUNTIME, "LARS: out of memory noting owned parts");
        TRY(allreduce_gather_owned(t->buckets[k].plan, net->grads + t->buckets[k].lo));
    }
    lars_trust_ratios(net, &t->sgd);
    for (int k = 0; k < t->n_buckets; k++) {
        OwnedParts *o = &owned_parts[k];
        for (int j = 0; j < o->n; j++) apply_update(t, o->range[2 * j], o->range[2 * j + 1]);
        o->n = 0;
    }
    for (int k = 0; k < t->n_buckets; k++)
        TRY(allreduce_gather_owned(t->buckets[k].plan, net->params + t->buckets[k].lo));
    return BASIN_OK;
}

static int bucket_start(Trainer *t, Bucket *b)
{
    b->t_start = basin_clock();
    b->started = 1;
    b->done = 0;
    float *g = t->net->grads + b->lo;
    note_step(t);
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
    for (int k = 0; k < t->n_buckets; k++) {
        TRY(allreduce_gather_owned(t->buckets[k].plan, t->net->mom + t->buckets[k].lo));
        if (t->sgd.adam_v) TRY(allreduce_gather_owned(t->buckets[k].plan, t->sgd.adam_v + t->buckets[k].lo));
    }
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
    lars_trust_ratios(t->net, &t->sgd);
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

static int grads_finish_step(Trainer *t, double c3, double tm[T_COUNT])
{
    Net *net = t->net;
    note_step(t);
    if (!t->ar) {
        trainer_mark(t, 3);
        lars_trust_ratios(net, &t->sgd);
        apply_update(t, 0, net->n_params);
        trainer_mark(t, 4);
        tm[T_OPTIM] += basin_clock() - c3;
        return BASIN_OK;
    }
    if (!t->cfg->overlap) grads_ready(t, net->n_params);
    if (t->gar) return gpu_finish(t, c3, tm);
    int whole = !optim_elementwise(&t->sgd);
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
        if (t->sharded || whole) continue; /* updated inside the request, or below */
        apply_update(t, bk->lo, bk->hi);
        tm[T_OPTIM] += basin_clock() - w1;
    }
    if (whole) {
        double w1 = basin_clock();
        if (t->sharded) {
            TRY(lars_sharded_update(t));
        } else {
            lars_trust_ratios(net, &t->sgd);
            apply_update(t, 0, net->n_params);
        }
        tm[T_OPTIM] += basin_clock() - w1;
    }
    return BASIN_OK;
}

int grads_finish(Trainer *t, double c3, double tm[T_COUNT])
{
    int rc = grads_finish_step(t, c3, tm);
    t->sgd.step++;
    return rc;
}
