/* --balance: each trainer rank's share of the global batch.
 *
 * The global sample order never changes: rank r takes a contiguous slice of
 * every global batch (order_share_slice), and the gradient is scaled by
 * 1 / global batch whatever the slice, so the summed update is the mean over
 * the global batch for any shares.
 *
 *   equal        order_rank_slice's slices (the default)
 *   static:W...  fixed weights, one per rank
 *   auto[:K]     starts even (or at the checkpoint's shares) and, every K
 *                steps, gives each rank a share proportional to its measured
 *                samples per second over the steps since the last change
 *
 * Auto, in detail. A rank's speed is its samples over its busy seconds (data
 * wait, forward and backward of its own slice: what grows with the slice;
 * the all-reduce and the update do not). Every rank gathers every rank's
 * (busy, samples) and computes the same new shares from the same numbers: no
 * broadcast, no disagreement. A change is made only when it is predicted to
 * shorten the slowest rank's busy time by more than BALANCE_MIN_GAIN (so
 * noise does not churn the shares), and no share goes below 1 sample or
 * above the cap (BALANCE_CAP_FACTOR times the even share, and the batch).
 *
 * A change decided after step s takes effect at step s + 1 + K, K the reader
 * processes' batches in flight (--reader-prefetch, default 2), also without
 * reader processes (the prefetch thread reads only 1 ahead), so that a run
 * with readers trains the bits of one without. No slice at that step has
 * been read yet, so nothing is read twice; the
 * readers are told first (reader_set_weights, or a WEIGHTS message sent
 * before the credit that would let the reader read that step). Both the
 * current shares and a change still waiting go into every checkpoint
 * (FORMAT.md, "Balance"), so a resumed run continues with them. */
#include "core/trainer_internal.h"

#include "core/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A rank never gets more than this many times the even share. */
#define BALANCE_CAP_FACTOR 4
/* A change must cut the predicted step's slowest busy time by this much. */
#define BALANCE_MIN_GAIN 0.03

static size_t even_share(size_t batch, int world)
{
    return (batch + (size_t)world - 1) / (size_t)world;
}

size_t balance_share_cap(const TrainConfig *cfg, int world)
{
    if (!cfg->balance_every || world < 1) return 0;
    size_t cap = BALANCE_CAP_FACTOR * even_share(cfg->batch, world);
    return cap < cfg->batch ? cap : cfg->batch;
}

/* w[r] = rank r's samples per step under weights (NULL: even). */
static void shares_of(size_t batch, int world, const uint32_t *weights, uint32_t *w)
{
    for (int r = 0; r < world; r++) {
        size_t first, n;
        order_share_slice(batch, r, world, weights, &first, &n);
        w[r] = (uint32_t)n;
    }
}

int balance_setup(Trainer *t)
{
    const TrainConfig *cfg = t->cfg;
    if (cfg->balance_n && cfg->balance_n != t->world)
        return basin_error(BASIN_ERR_USAGE, "--balance static: %d weights for %d trainer ranks: give one per rank",
                           cfg->balance_n, t->world);
    if (!cfg->balance_n && !cfg->balance_every) {
        if (cfg->batch % (size_t)t->world)
            return basin_error(BASIN_ERR_USAGE, "--batch %zu is not divisible by the %d ranks: use a multiple of %d",
                               cfg->batch, t->world, t->world);
        t->rank_batch = cfg->batch / (size_t)t->world;
        return BASIN_OK;
    }
    if (cfg->balance_every && !strcmp(cfg->device, "cuda"))
        return basin_error(BASIN_ERR_USAGE, "--balance auto measures the host's busy time, which a GPU's queued "
                           "kernels do not show: use --balance static with --device cuda");
    if (cfg->balance_every && cfg->batch < (size_t)t->world)
        return basin_error(BASIN_ERR_USAGE, "--balance auto: --batch %zu gives %d ranks less than one sample each",
                           cfg->batch, t->world);
    size_t W = (size_t)t->world;
    t->busy_all = basin_calloc(W, sizeof *t->busy_all);
    t->bw = basin_calloc(W, sizeof *t->bw);
    t->bw_next = basin_calloc(W, sizeof *t->bw_next);
    t->bal_all = basin_calloc(2 * W, sizeof *t->bal_all);
    t->bal_w = basin_calloc(2 * W, sizeof *t->bal_w);
    if (!t->busy_all || !t->bw || !t->bw_next || !t->bal_all || !t->bal_w) return BASIN_ERR_RUNTIME;
    shares_of(cfg->batch, t->world, cfg->balance_n ? cfg->balance_w : NULL, t->bw);
    for (int r = 0; r < t->world; r++)
        if (t->bw[r] == 0)
            return basin_error(BASIN_ERR_USAGE, "--balance static: rank %d would get 0 of the %zu samples of "
                               "a batch: raise its weight or --batch", r, cfg->batch);
    /* Test hook BASIN_TEST_BALANCE_COST=C0,C1,... (environment only, never
     * an option): rank r's busy time is C_r seconds per sample instead of
     * its clock's, so that auto's decisions are the same in every run. */
    const char *hook = getenv("BASIN_TEST_BALANCE_COST");
    if (hook && cfg->balance_every) {
        const char *p = hook;
        for (int r = 0; r < t->world; r++) {
            char *e;
            double c = strtod(p, &e);
            if (e == p || !(c > 0) || (r + 1 < t->world ? *e != ',' : *e != 0))
                return basin_error(BASIN_ERR_USAGE, "BASIN_TEST_BALANCE_COST='%s': expected %d positive seconds "
                                   "per sample, comma-separated", hook, t->world);
            if (r == t->rank) t->bal_fake_cost = c;
            p = e + 1;
        }
    }
    /* Buffers for the largest share auto may give. */
    size_t cap = balance_share_cap(cfg, t->world);
    t->rank_batch = cap > t->bw[t->rank] ? cap : t->bw[t->rank];
    return BASIN_OK;
}

void balance_free(Trainer *t)
{
    free(t->busy_all);
    free(t->bw);
    free(t->bw_next);
    free(t->bal_all);
    free(t->bal_w);
    t->busy_all = NULL, t->bw = t->bw_next = t->bal_w = NULL, t->bal_all = NULL;
}

const uint32_t *balance_weights(const Trainer *t)
{
    return t->bw;
}

/* Tell whoever reads this rank's data that the slices from step `from` on
 * follow w. */
static int tell_readers(Trainer *t, const uint32_t *w, uint64_t from)
{
    if (t->feed) return remote_feed_set_weights(t->feed, w, from);
    if (t->train) return reader_set_weights(t->train, w, from);
    return BASIN_OK;
}

/* "A:B:C" into w (world numbers summing to the batch); 0 when it parses. */
static int parse_shares(const char *s, int world, size_t batch, uint32_t *w, const char **end)
{
    size_t sum = 0;
    for (int r = 0; r < world; r++) {
        char *e;
        unsigned long v = strtoul(s, &e, 10);
        if (e == s || v == 0 || v > batch || (r + 1 < world && *e != ':')) return -1;
        w[r] = (uint32_t)v;
        sum += v;
        s = r + 1 < world ? e + 1 : e;
    }
    *end = s;
    return sum == batch ? 0 : -1;
}

static void format_shares(const uint32_t *w, int world, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = 0;
    for (int r = 0; r < world && used < len; r++)
        used += (size_t)snprintf(buf + used, len - used, "%s%u", r ? ":" : "", w[r]);
}

void balance_log_start(const Trainer *t)
{
    if (!t->bw) return;
    char shares[4096];
    format_shares(t->bw, t->world, shares, sizeof shares);
    if (t->cfg->balance_every)
        basin_info("basin: --balance auto: samples per rank %s of %zu to start, re-measured every %d steps", shares,
                   t->cfg->batch, t->cfg->balance_every);
    else
        basin_info("basin: --balance static: samples per rank %s of %zu", shares, t->cfg->batch);
}

char *balance_text(const Trainer *t)
{
    if (!t->bw) return NULL;
    size_t len = (size_t)t->world * 24 + 64;
    char *s = basin_malloc(len);
    if (!s) return NULL;
    memcpy(s, "shares ", 8);
    format_shares(t->bw, t->world, s + 7, len - 7);
    if (t->bw_pending) {
        size_t used = strlen(s);
        used += (size_t)snprintf(s + used, len - used, " from %llu ", (unsigned long long)t->bw_from);
        format_shares(t->bw_next, t->world, s + used, len - used);
    }
    return s;
}

int balance_resume(Trainer *t, const char *text)
{
    /* Every rank gets rank 0's text (only rank 0 read the checkpoint). */
    long long n = text ? (long long)strlen(text) + 1 : 0;
    BASIN_MPI(MPI_Bcast(&n, 1, MPI_LONG_LONG, 0, t->comm));
    if (!t->cfg->balance_every || n <= 1) return BASIN_OK; /* equal and static: the options decide */
    char *buf = basin_malloc((size_t)n);
    if (!buf) return BASIN_ERR_RUNTIME;
    if (t->rank == 0) memcpy(buf, text, (size_t)n);
    int mrc = MPI_Bcast(buf, (int)n, MPI_CHAR, 0, t->comm);
    if (mrc != MPI_SUCCESS) {
        free(buf);
        return basin_mpi_fail(mrc, "MPI_Bcast(balance)", __FILE__, __LINE__);
    }
    size_t B = t->cfg->batch, cap = balance_share_cap(t->cfg, t->world);
    uint32_t *cur = t->bal_w, *next = t->bal_w + t->world;
    const char *p = buf;
    unsigned long long from = 0;
    int ok = !strncmp(p, "shares ", 7) && !parse_shares(p + 7, t->world, B, cur, &p);
    int pending = ok && *p ? 1 : 0;
    if (pending) {
        int used = 0;
        ok = sscanf(p, " from %llu %n", &from, &used) == 1 && used > 0 &&
             !parse_shares(p + used, t->world, B, next, &p) && !*p;
    }
    if (ok && pending && from <= t->start_step) { /* the change was due at the step the run resumes at */
        memcpy(cur, next, (size_t)t->world * sizeof *cur);
        pending = 0;
    }
    for (int r = 0; ok && r < t->world; r++)
        if (cur[r] > cap || (pending && next[r] > cap)) ok = 0;
    if (!ok) {
        if (t->rank == 0)
            basin_info("basin: --balance auto: the checkpoint's shares '%s' do not fit %d ranks and a batch of %zu; "
                       "starting from even shares", buf, t->world, B);
        free(buf);
        return BASIN_OK;
    }
    free(buf);
    memcpy(t->bw, cur, (size_t)t->world * sizeof *t->bw);
    TRY(tell_readers(t, t->bw, t->start_step));
    if (pending) {
        memcpy(t->bw_next, next, (size_t)t->world * sizeof *t->bw_next);
        t->bw_from = from;
        t->bw_pending = 1;
        TRY(tell_readers(t, t->bw_next, from));
    }
    return BASIN_OK;
}

void balance_step_begin(Trainer *t, uint64_t gs)
{
    if (!t->bw_pending || gs < t->bw_from) return;
    memcpy(t->bw, t->bw_next, (size_t)t->world * sizeof *t->bw);
    t->bw_pending = 0;
    t->bal_busy = 0.0, t->bal_samples = 0, t->bal_steps = 0; /* measure the new shares afresh */
}

void balance_account(Trainer *t, double busy_s, size_t samples)
{
    t->bal_busy += t->bal_fake_cost > 0 ? t->bal_fake_cost * (double)samples : busy_s;
    t->bal_samples += samples;
    t->bal_steps++;
}

/* New shares proportional to rate[], each in [1, cap], summing to B: the
 * largest remainders get the samples left over, rank order breaking ties.
 * rem: world doubles of scratch. */
static void proportional(const double *rate, int world, size_t B, size_t cap, uint32_t *w, double *rem)
{
    double sum = 0.0;
    for (int r = 0; r < world; r++) sum += rate[r];
    size_t given = 0;
    for (int r = 0; r < world; r++) {
        double ideal = (double)B * rate[r] / sum;
        size_t n = (size_t)floor(ideal);
        n = n < 1 ? 1 : n > cap ? cap : n;
        w[r] = (uint32_t)n;
        given += n;
        rem[r] = ideal - (double)n;
    }
    /* One sample at a time to (or from) the rank whose ideal is furthest
     * above (below) its share, within [1, cap]. */
    while (given != B) {
        int more = given < B, best = -1;
        for (int r = 0; r < world; r++)
            if ((more ? w[r] < cap : w[r] > 1) &&
                (best < 0 || (more ? rem[r] > rem[best] : rem[r] < rem[best])))
                best = r;
        if (best < 0) break; /* cannot happen: 1 <= B / world <= cap */
        w[best] += more ? 1 : -1;
        rem[best] -= more ? 1.0 : -1.0;
        given = more ? given + 1 : given - 1;
    }
}

int balance_after_step(Trainer *t, uint64_t done)
{
    const TrainConfig *cfg = t->cfg;
    int K = cfg->balance_every;
    if (!K || t->world < 2 || done % (uint64_t)K != 0 || t->bw_pending || t->bal_steps < (uint64_t)K / 2)
        return BASIN_OK;
    double mine[2] = {t->bal_busy, (double)t->bal_samples};
    BASIN_MPI(MPI_Allgather(mine, 2, MPI_DOUBLE, t->bal_all, 2, MPI_DOUBLE, t->comm));
    int W = t->world;
    double *rate = basin_calloc(2 * (size_t)W, sizeof *rate); /* and the remainders' scratch */
    if (!rate) return BASIN_ERR_RUNTIME;
    int usable = 1;
    for (int r = 0; r < W; r++) {
        double busy = t->bal_all[2 * r], n = t->bal_all[2 * r + 1];
        if (!(busy > 0.0) || !(n > 0.0)) usable = 0;
        else rate[r] = n / busy;
    }
    uint32_t *w = t->bal_w;
    double old_t = 0.0, new_t = 0.0;
    if (usable) {
        proportional(rate, W, cfg->batch, balance_share_cap(cfg, W), w, rate + W);
        for (int r = 0; r < W; r++) {
            old_t = fmax(old_t, t->bw[r] / rate[r]);
            new_t = fmax(new_t, w[r] / rate[r]);
        }
    }
    int rc = BASIN_OK;
    if (usable && new_t < (1.0 - BALANCE_MIN_GAIN) * old_t) {
        /* The same lag with and without reader processes, so that both
         * train the same bits (the prefetch thread needs only 1). */
        uint64_t lag = (uint64_t)cfg->reader_prefetch;
        memcpy(t->bw_next, w, (size_t)W * sizeof *w);
        t->bw_from = done + lag;
        t->bw_pending = 1;
        rc = tell_readers(t, t->bw_next, t->bw_from);
        if (t->rank == 0 && !rc) {
            char from[4096], to[4096], ms[4096] = "";
            format_shares(t->bw, W, from, sizeof from);
            format_shares(w, W, to, sizeof to);
            size_t used = 0;
            for (int r = 0; r < W && used < sizeof ms; r++)
                used += (size_t)snprintf(ms + used, sizeof ms - used, "%s%.3f", r ? ":" : "", 1e3 / rate[r]);
            basin_info("basin: --balance auto: samples per rank %s -> %s from step %llu (measured ms per sample %s; "
                       "predicted slowest busy time %.1f -> %.1f ms)", from, to, (unsigned long long)t->bw_from, ms,
                       1e3 * old_t, 1e3 * new_t);
        }
    }
    free(rate);
    /* A new window either way: the next decision looks at fresh steps. */
    t->bal_busy = 0.0, t->bal_samples = 0, t->bal_steps = 0;
    return rc;
}
