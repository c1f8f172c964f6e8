/* The machine-readable metrics file: one JSON object per line.
 *
 *   {"event":"step","epoch":1,"step":100,"loss":0.52,"accuracy":0.81,"lr":0.05,
 *    "images_per_s":7421.3,"time_s":8.6,"data_wait_s":0.0001,"compute_s":0.0081,
 *    "comm_s":0.0004}
 *   {"event":"eval","epoch":1,"step":937,"test_loss":0.41,"test_accuracy":0.853,"time_s":9.1}
 *
 * With reader processes (--readers) a step line also has "readers",
 * "batches_ready", "reader_images_per_s", "reader_busy" and
 * "reader_credit_wait_s" (StepRecord); with --balance, "shares" and
 * "busy_s", one number per rank.
 *
 * epoch is 1-based in the file (the epoch being trained), step counts global
 * steps from 1. Timings are means per step over the logging interval.
 */
#ifndef BASIN_METRICS_H
#define BASIN_METRICS_H

#include <stdint.h>
#include <stdio.h>

typedef struct {
    FILE *f;
} Metrics;

/* Create or truncate path, or append to it (its directory must exist). */
int metrics_open(Metrics *m, const char *path, int append);
void metrics_close(Metrics *m);

typedef struct {
    int epoch;
    uint64_t step;
    double loss, accuracy, lr, images_per_s, time_s;
    double data_wait_s, compute_s, comm_s;
    /* Per-step seconds over ranks: data_wait, forward, backward,
     * comm_exposed, optimizer; and the rank with the most busy time. */
    double timing_mean[5], timing_max[5];
    int straggler;
    /* --readers N > 0 only (written when readers > 0): the mean number of
     * batches a trainer found already received when it asked for one, the
     * samples the readers read per second of the interval (all of them),
     * the fraction of the interval they spent reading, and the seconds per
     * step a reader waited for credits (its trainers were behind). */
    int readers;
    double batches_ready, reader_images_per_s, reader_busy, reader_credit_wait_s;
    /* --balance only (written when n_ranks > 0): every trainer rank's samples
     * per step ("shares") and busy seconds per step ("busy_s": data wait,
     * forward, backward, optimizer), rank order. */
    int n_ranks;
    const uint32_t *shares;
    const double *busy;
} StepRecord;

void metrics_step(Metrics *m, const StepRecord *r);
void metrics_eval(Metrics *m, int epoch, uint64_t step, double loss, double accuracy, double time_s);


#endif
