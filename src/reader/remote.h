/* Reader processes (basin-train --readers N): batches read, augmented and
 * normalised on ranks of their own and sent to the trainers over MPI.
 *
 * Layout. On a communicator of T + N ranks (a duplicate of the job's), ranks
 * 0..T-1 train and ranks T..T+N-1 read. Trainer t is served by reader
 * t mod N; a reader opens one Reader (reader.h) per trainer it serves, with
 * that trainer's rank among the T trainers, so each slice is the very slice
 * the trainer's own reader would have produced: the sample order, the
 * augmentation and the normalisation are reader.c's, bit for bit.
 *
 * Messages (point to point, on the duplicate, so no tag can meet the
 * trainers' own traffic):
 *   reader  -> trainer  HELLO  once: the status of the reader's set-up, the
 *                              data set's shape and normalisation, the steps
 *                              of an epoch and the largest slice
 *   trainer -> reader   START  the first step and the end of the run (a
 *                              resumed run starts at its checkpoint's step)
 *                       CREDIT the trainer posted one more receive
 *                       STOP   the run ended, with the job's exit code
 *                       EVAL   send the test split's slices (an evaluation)
 *                       WEIGHTS  --balance auto: every trainer's share of the
 *                              batches from a given step on (sent before
 *                              the credit that would let the reader read
 *                              that step, so it is never read twice)
 *   reader  -> trainer  BATCH  one step's slice: a header (step, epoch, sizes,
 *                              the reader's counters), the images, the labels
 *                              and the sample indices, in one message
 *                       END    fills a receive the trainer posted but will
 *                              not use, after its STOP
 *                       TEST   one test step's slice, answering EVAL (a tag
 *                              of its own, one at a time: no prefetch)
 * Flow control is by credits: a trainer posts K receives (--reader-prefetch)
 * at START and one more each time it is done with a batch, telling its reader
 * with a CREDIT; a reader sends a batch only against a credit, so at most K
 * batches per trainer are ever in flight, and every message lands in a
 * receive posted for it (no unexpected-message buffering in MPI).
 *
 * The ranks must share one binary layout (the HELLO and the header are sent
 * as bytes), as the ranks of one job do. */
#ifndef BASIN_READER_REMOTE_H
#define BASIN_READER_REMOTE_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "reader/reader.h"

typedef struct {
    MPI_Comm comm;      /* trainers 0..trainers-1, then the readers */
    int trainers, readers;
    int prefetch;       /* K: batches in flight per trainer, >= 1 */
    double timeout_s;   /* a trainer waits at most this long for a batch; <= 0: forever */
    const int *job_rank;/* the job's rank of each rank of comm, for messages (NULL: the
                           same); must outlive the server or feed */
} RemoteLayout;

/* ---- reader side ------------------------------------------------------------ */
typedef struct RemoteServer RemoteServer;

/* Open reader `index`'s data (base: the training split's ReaderConfig, test:
 * the test split's or NULL when there is no evaluation; their rank, world and
 * prefetch are set here) and send every trainer it serves a HELLO carrying
 * the outcome, also on failure (so no trainer waits for it). Returns the
 * set-up's status (a usage error after one line). */
int remote_server_open(const ReaderConfig *base, const ReaderConfig *test, const RemoteLayout *lay, int index,
                       RemoteServer **out);
/* Called for each batch read (name "read", tid 0) and each wait for
 * credits ("wait for credits", tid 1): the reader's trace. */
typedef void (*RemoteEventFn)(void *arg, const char *name, int tid, double t_begin, double t_end);
void remote_server_on_event(RemoteServer *s, RemoteEventFn fn, void *arg);
/* Serve batches until every trainer of this reader has sent STOP; returns the
 * code the trainers stopped with (0, 2, 74, 75, 76), or an error of the
 * reader itself. */
int remote_server_run(RemoteServer *s);
/* Wait for the sends still in flight (after run) and free everything. */
void remote_server_close(RemoteServer *s);

/* ---- trainer side ----------------------------------------------------------- */
typedef struct RemoteFeed RemoteFeed;

/* Receive the HELLO of trainer `trainer`'s reader. *reader_status: the
 * reader's set-up status (its own line says why); BASIN_OK when it opened.
 * Returns an error of this call (MPI, memory, timeout). */
int remote_feed_open(const RemoteLayout *lay, int trainer, RemoteFeed **out, int *reader_status);
const DatasetInfo *remote_feed_info(const RemoteFeed *f);
size_t remote_feed_steps_per_epoch(const RemoteFeed *f);
/* The test split as the readers serve it (NULL: no evaluation), and its
 * steps. Evaluation: remote_feed_eval_begin asks the reader for the whole
 * split (EVAL), then remote_feed_eval_next(step) for step = 0, 1, ... takes
 * this trainer's slices in order (valid until the next call; the reader
 * sends each when its receive is posted). */
const DatasetInfo *remote_feed_test_info(const RemoteFeed *f);
size_t remote_feed_test_steps(const RemoteFeed *f);
int remote_feed_eval_begin(RemoteFeed *f);
int remote_feed_eval_next(RemoteFeed *f, uint64_t step, Batch *out);
/* The reader's world rank on lay->comm. */
int remote_feed_reader_rank(const RemoteFeed *f);
/* Every rank agreed to train: from now on remote_feed_close sends STOP. */
void remote_feed_engage(RemoteFeed *f);
/* --balance auto: the slices from global step `from` on follow weights (one
 * per trainer). Before START: the stream starts with them (from = the start
 * step). While streaming: from must be at least the step this trainer
 * releases next plus K (--reader-prefetch): the reader has read nothing that
 * far yet. */
int remote_feed_set_weights(RemoteFeed *f, const uint32_t *weights, uint64_t from);
/* Start the stream at global step `start`; the reader stops reading at `end`. */
int remote_feed_start(RemoteFeed *f, uint64_t start, uint64_t end);
/* The next step's slice (valid until the next call); the seconds spent
 * waiting for it are added to *wait_s. */
int remote_feed_next(RemoteFeed *f, Batch *out, double *wait_s);

typedef struct {
    uint64_t batches;       /* batches this trainer received */
    double ready_sum;       /* sum over them of the batches already there when asked */
    double reader_busy_s;   /* the reader's reading seconds so far (its counters in the last header) */
    double reader_idle_s;   /* its seconds waiting for credits */
    uint64_t reader_samples;/* samples it read for all its trainers */
} RemoteFeedStats;
void remote_feed_stats(const RemoteFeed *f, RemoteFeedStats *out);
/* Send STOP with the run's code when engaged, wait for the receives still
 * posted, free everything. Returns an MPI error, if any. */
int remote_feed_close(RemoteFeed *f, int code);

#endif
