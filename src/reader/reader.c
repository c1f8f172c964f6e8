/* The batch reader: this rank's slice of each global batch, in the global
 * order, optionally read one batch ahead on a background thread.
 *
 * Double buffer. Two slots: the caller holds one (the batch last returned,
 * valid until its next call) while the prefetch thread fills the other with
 * the batch after it. The thread never runs more than one batch ahead:
 *
 *   caller:  |-- compute on s --|next|-- compute on s+1 --|next|
 *   thread:  |-- read s+1 --|   wait  |-- read s+2 --|    wait
 *
 * reader_next blocks only when the thread has not finished the next batch,
 * and counts that time as data wait.
 *
 * Augmentation (augment.c) runs where the batch is read, on the prefetch
 * thread when there is one, sample by sample after normalisation; only the
 * train split is augmented. The decoding work of --reader-cost
 * (decode_cost.c) follows it there, on every split: reader processes and
 * the prefetch thread pay it alike.
 *
 * Serial HDF5 is not to be entered from two threads at once on the same file:
 * while prefetch is on, the Dataset (and the epoch permutation) belong to the
 * thread alone, from its start to its join. reader_seek and reader_close stop
 * and join it before anything else touches them.
 */
#include "reader/reader.h"

#include "core/clock.h"
#include "core/error.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    float *images;   /* (max_n, c, h, w) */
    int32_t *labels; /* (max_n) */
    uint64_t *index; /* (max_n) */
    uint64_t epoch, step;
    size_t global_n, n;
    int status;      /* of the read that filled it */
} Slot;

struct Reader {
    ReaderConfig cfg; /* path and split point at our own copies */
    char *path, *split;
    Dataset *ds;
    DatasetInfo info;
    size_t steps;     /* per epoch */
    size_t max_n;     /* the most samples this rank gets in one batch */
    size_t sample_floats;
    Augment aug;      /* none unless the split is "train" */
    float *aug_scratch; /* (sample_floats) of the reading thread */

    uint64_t *perm;   /* (count) order of perm_epoch, when shuffling */
    uint64_t perm_epoch;
    int perm_valid;

    Slot slot[2];
    uint64_t epoch, step; /* the next batch to read */
    uint32_t *w;          /* the weights of the slices being read, or NULL (even) */
    uint32_t *w_next[2];  /* --balance auto: the weights from global step w_from[i] on */
    double wait_s;        /* caller side only */

    /* prefetch; everything below is guarded by mu */
    int thread_on;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int sync_init;        /* mu and cv initialised */
    int stop;
    int held;             /* slot held by the caller, or -1 */
    int ready;            /* slot read and not yet handed out, or -1 */
    int failed;           /* first error of the thread; it stops after one */
    int w_pending;        /* changes waiting, in step order: w_next[0..w_pending) */
    uint64_t w_from[2];
};

static char *dup_string(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = basin_malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static void advance(uint64_t *epoch, uint64_t *step, size_t steps)
{
    if (++*step >= steps) {
        *step = 0;
        ++*epoch;
    }
}

/* weights, or the even slices of a global batch of B as weights. */
static void copy_weights(const Reader *r, const uint32_t *weights, size_t B, uint32_t *out)
{
    for (int k = 0; k < r->cfg.world; k++) {
        size_t first, n;
        order_rank_slice(B, k, r->cfg.world, &first, &n);
        out[k] = weights ? weights[k] : (uint32_t)n;
    }
}

/* A weight change that has come due at the batch about to be read (under mu
 * with prefetch). */
static void take_weights(Reader *r)
{
    while (r->w_pending && r->epoch * r->steps + r->step >= r->w_from[0]) {
        uint32_t *w = r->w;
        r->w = r->w_next[0];
        r->w_next[0] = r->w_next[1];
        r->w_next[1] = w;
        r->w_from[0] = r->w_from[1];
        r->w_pending--;
    }
}

/* Read batch (epoch, step) of this rank into slot s. Runs on the prefetch
 * thread when there is one, else on the caller's. */
static int fill_slot(Reader *r, Slot *s, uint64_t epoch, uint64_t step)
{
    size_t count = r->info.count, B = r->cfg.global_batch;
    if (r->cfg.shuffle && (!r->perm_valid || r->perm_epoch != epoch)) {
        order_epoch(r->cfg.seed, epoch, count, r->perm);
        r->perm_epoch = epoch;
        r->perm_valid = 1;
    }
    size_t start = (size_t)step * B;
    size_t end = count - start < B ? count : start + B;
    size_t first, n;
    order_share_slice(end - start, r->cfg.rank, r->cfg.world, r->w, &first, &n);
    for (size_t k = 0; k < n; k++) {
        size_t pos = start + first + k;
        s->index[k] = r->cfg.shuffle ? r->perm[pos] : pos;
    }
    s->epoch = epoch;
    s->step = step;
    s->global_n = end - start;
    s->n = n;
    int rc = dataset_read(r->ds, s->index, n, s->images, s->labels);
    if (rc) return rc;
    for (size_t k = 0; r->aug_scratch && k < n; k++)
        augment_sample(&r->aug, &r->info, r->cfg.seed, epoch, s->index[k], s->images + k * r->sample_floats,
                       r->aug_scratch);
    for (size_t k = 0; r->cfg.decode_cost > 0 && k < n; k++)
        decode_cost_sample(&r->info, r->cfg.decode_cost, s->images + k * r->sample_floats);
    return BASIN_OK;
}

static void *prefetch_main(void *arg)
{
    Reader *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->stop && r->ready >= 0) pthread_cond_wait(&r->cv, &r->mu);
        if (r->stop) break;
        int s = r->held == 0 ? 1 : 0;
        take_weights(r);
        uint64_t epoch = r->epoch, step = r->step;
        advance(&r->epoch, &r->step, r->steps);
        pthread_mutex_unlock(&r->mu);

        int rc = fill_slot(r, &r->slot[s], epoch, step);

        pthread_mutex_lock(&r->mu);
        r->slot[s].status = rc;
        r->ready = s;
        pthread_cond_broadcast(&r->cv);
        if (rc) {
            r->failed = rc;
            break;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static int start_prefetch(Reader *r)
{
    r->stop = 0;
    r->held = -1;
    r->ready = -1;
    r->failed = 0;
    int e = pthread_create(&r->thread, NULL, prefetch_main, r);
    if (e) return BASIN_FAIL(BASIN_ERR_RUNTIME, "pthread_create(prefetch) failed: %s", strerror(e));
    r->thread_on = 1;
    return BASIN_OK;
}

static void stop_prefetch(Reader *r)
{
    if (!r->thread_on) return;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    r->thread_on = 0;
}

int reader_open(const ReaderConfig *cfg, Reader **out)
{
    *out = NULL;
    if (!cfg || !cfg->path || !cfg->split)
        return basin_error(BASIN_ERR_USAGE, "reader: a data file and a split are required");
    if (cfg->world < 1 || cfg->rank < 0 || cfg->rank >= cfg->world)
        return basin_error(BASIN_ERR_USAGE, "reader: rank %d is not in a world of %d", cfg->rank, cfg->world);
    if (cfg->global_batch == 0) return basin_error(BASIN_ERR_USAGE, "reader: the global batch size must be >= 1");
    if (cfg->decode_cost < 0 || cfg->decode_cost > READER_MAX_COST)
        return basin_error(BASIN_ERR_USAGE, "reader: a decoding cost of %d rounds is not in [0, %d]", cfg->decode_cost,
                           READER_MAX_COST);

    Augment aug;
    char why[256];
    if (augment_parse(cfg->augment, &aug, why, sizeof why))
        return basin_error(BASIN_ERR_USAGE, "--augment '%s': %s", cfg->augment, why);

    int rc = BASIN_OK;
    Reader *r = basin_calloc(1, sizeof *r);
    if (!r) return BASIN_ERR_RUNTIME;
    r->cfg = *cfg;
    r->cfg.augment = NULL; /* not kept: r->aug holds it, */
    r->cfg.weights = NULL; /* nor these: r->w */
    if (!strcmp(cfg->split, "train")) r->aug = aug;
    r->path = dup_string(cfg->path);
    r->split = dup_string(cfg->split);
    if (!r->path || !r->split) {
        rc = BASIN_ERR_RUNTIME;
        goto cleanup;
    }
    r->cfg.path = r->path;
    r->cfg.split = r->split;
    r->held = r->ready = -1;

    if ((rc = dataset_open(cfg->path, cfg->split, cfg->limit, &r->ds))) goto cleanup;
    r->info = *dataset_info(r->ds);
    size_t N = r->info.count, B = cfg->global_batch;
    if (N == 0) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: split '%s' has no samples", cfg->path, cfg->split);
        goto cleanup;
    }
    r->steps = cfg->drop_last ? N / B : N / B + (N % B != 0);
    if (r->steps == 0) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: global batch %zu is larger than the %zu samples of split '%s' "
                         "(with drop_last an epoch would have no steps)", cfg->path, B, N, cfg->split);
        goto cleanup;
    }
    size_t first;
    order_rank_slice(B < N ? B : N, 0, cfg->world, &first, &r->max_n);
    if (cfg->weights || cfg->max_share) {
        /* Every batch of a weighted reader is whole (drop_last): its own share of B. */
        if (cfg->weights) order_share_slice(B < N ? B : N, cfg->rank, cfg->world, cfg->weights, &first, &r->max_n);
        if (cfg->max_share > r->max_n) r->max_n = cfg->max_share < B ? cfg->max_share : B;
        if (!cfg->drop_last) {
            rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "reader: weighted slices need drop_last");
            goto cleanup;
        }
        r->w = basin_malloc((size_t)cfg->world * sizeof *r->w);
        r->w_next[0] = basin_malloc((size_t)cfg->world * sizeof *r->w);
        r->w_next[1] = basin_malloc((size_t)cfg->world * sizeof *r->w);
        if (!r->w || !r->w_next[0] || !r->w_next[1]) {
            rc = BASIN_ERR_RUNTIME;
            goto cleanup;
        }
        copy_weights(r, cfg->weights, B < N ? B : N, r->w);
    }
    r->sample_floats = (size_t)r->info.c * (size_t)r->info.h * (size_t)r->info.w;

    if (r->aug.crop || r->aug.flip) {
        r->aug_scratch = basin_malloc(r->sample_floats * sizeof *r->aug_scratch);
        if (!r->aug_scratch) {
            rc = BASIN_ERR_RUNTIME;
            goto cleanup;
        }
    }
    if (cfg->shuffle) {
        r->perm = basin_malloc(N * sizeof *r->perm);
        if (!r->perm) {
            rc = BASIN_ERR_RUNTIME;
            goto cleanup;
        }
    }
    int nslots = cfg->prefetch ? 2 : 1;
    for (int i = 0; i < nslots; i++) {
        Slot *s = &r->slot[i];
        s->images = basin_aligned_alloc(r->max_n * r->sample_floats * sizeof(float));
        s->labels = basin_malloc(r->max_n * sizeof *s->labels);
        s->index = basin_malloc(r->max_n * sizeof *s->index);
        if (!s->images || !s->labels || !s->index) {
            rc = BASIN_ERR_RUNTIME;
            goto cleanup;
        }
    }

    if (cfg->prefetch) {
        int e = pthread_mutex_init(&r->mu, NULL);
        if (e) {
            rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "pthread_mutex_init failed: %s", strerror(e));
            goto cleanup;
        }
        e = pthread_cond_init(&r->cv, NULL);
        if (e) {
            pthread_mutex_destroy(&r->mu);
            rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "pthread_cond_init failed: %s", strerror(e));
            goto cleanup;
        }
        r->sync_init = 1;
        if ((rc = start_prefetch(r))) goto cleanup;
    }

cleanup:
    if (rc) {
        reader_close(r);
        return rc;
    }
    *out = r;
    return BASIN_OK;
}

const DatasetInfo *reader_info(const Reader *r)
{
    return &r->info;
}

size_t reader_steps_per_epoch(const Reader *r)
{
    return r->steps;
}

int reader_seek(Reader *r, uint64_t epoch, uint64_t step)
{
    /* A step past the end of an epoch (a resume with another batch size, or
     * "after the last step") continues in the epochs after it. */
    epoch += step / r->steps;
    step %= r->steps;
    if (!r->cfg.prefetch) {
        r->epoch = epoch;
        r->step = step;
        return BASIN_OK;
    }
    stop_prefetch(r);
    r->epoch = epoch;
    r->step = step;
    return start_prefetch(r);
}

static void fill_batch(const Slot *s, Batch *out)
{
    out->epoch = s->epoch;
    out->step = s->step;
    out->global_n = s->global_n;
    out->n = s->n;
    out->images = s->images;
    out->labels = s->labels;
    out->index = s->index;
}

int reader_next(Reader *r, Batch *out)
{
    if (!r->cfg.prefetch) {
        double t0 = basin_clock();
        take_weights(r);
        int rc = fill_slot(r, &r->slot[0], r->epoch, r->step);
        r->wait_s += basin_clock() - t0;
        if (rc) return rc;
        advance(&r->epoch, &r->step, r->steps);
        fill_batch(&r->slot[0], out);
        return BASIN_OK;
    }
    if (!r->thread_on) return BASIN_FAIL(BASIN_ERR_RUNTIME, "reader_next: the prefetch thread is not running");

    pthread_mutex_lock(&r->mu);
    r->held = -1; /* the caller is done with the batch it had */
    if (r->ready < 0 && !r->failed) {
        double t0 = basin_clock();
        while (r->ready < 0 && !r->failed) pthread_cond_wait(&r->cv, &r->mu);
        r->wait_s += basin_clock() - t0;
    }
    int rc = BASIN_OK, s = r->ready;
    if (s < 0) {
        rc = r->failed;
    } else {
        r->ready = -1;
        r->held = s;
        rc = r->slot[s].status;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    if (rc) return rc;
    fill_batch(&r->slot[s], out);
    return BASIN_OK;
}

double reader_take_wait_seconds(Reader *r)
{
    double w = r->wait_s;
    r->wait_s = 0.0;
    return w;
}

int reader_set_weights(Reader *r, const uint32_t *weights, uint64_t from)
{
    int W = r->cfg.world;
    if (!r->w) return BASIN_FAIL(BASIN_ERR_RUNTIME, "reader_set_weights: the reader was opened without weights");
    size_t B = r->cfg.global_batch < r->info.count ? r->cfg.global_batch : r->info.count;
    for (int k = 0; weights && k < W; k++) {
        size_t first, n;
        order_share_slice(B, k, W, weights, &first, &n);
        if (n > r->max_n)
            return BASIN_FAIL(BASIN_ERR_RUNTIME, "reader_set_weights: rank %d's share %zu is above the %zu a batch "
                              "holds", k, n, r->max_n);
    }
    if (r->cfg.prefetch) pthread_mutex_lock(&r->mu);
    int read_ahead = r->epoch * r->steps + r->step > from, full = 0;
    if (r->w_pending && r->w_from[r->w_pending - 1] >= from) r->w_pending--; /* replaced by this one */
    if (r->w_pending < 2) {
        copy_weights(r, weights, B, r->w_next[r->w_pending]);
        r->w_from[r->w_pending++] = from;
    } else {
        full = 1;
    }
    if (r->cfg.prefetch) pthread_mutex_unlock(&r->mu);
    if (full) return BASIN_FAIL(BASIN_ERR_RUNTIME, "reader_set_weights: two changes are already waiting");
    if (!read_ahead) return BASIN_OK;
    /* A batch at or after `from` was read with the old weights: drop it and
     * start again there (reader_seek stops the thread first). */
    return reader_seek(r, from / r->steps, from % r->steps);
}

void reader_close(Reader *r)
{
    if (!r) return;
    stop_prefetch(r);
    if (r->sync_init) {
        pthread_cond_destroy(&r->cv);
        pthread_mutex_destroy(&r->mu);
    }
    for (int i = 0; i < 2; i++) {
        free(r->slot[i].images);
        free(r->slot[i].labels);
        free(r->slot[i].index);
    }
    free(r->perm);
    free(r->w);
    free(r->w_next[0]);
    free(r->w_next[1]);
    free(r->aug_scratch);
    dataset_close(r->ds);
    free(r->split);
    free(r->path);
    free(r);
}
