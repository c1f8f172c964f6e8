/* Reader processes and the trainers' end of them (remote.h has the protocol).
 *
 * A reader is single-threaded: it reads one slice at a time with reader.c
 * (no prefetch thread: several Readers of one process never enter HDF5 at
 * once), hands it to MPI_Isend and reads the next while the send proceeds.
 * The K buffers of a trainer form a ring: batch j goes out of buffer j mod K,
 * whose previous send (batch j - K) was received before the credit that
 * allowed batch j came back. A trainer posts its receives in the same order,
 * so batch j lands in its buffer j mod K (MPI keeps the order of the messages
 * of one sender and tag).
 *
 * Waiting is polled with short sleeps, never spun on: readers and trainers
 * may share cores. */
#include "reader/remote.h"

#include "core/clock.h"
#include "core/error.h"
#include "core/mpi_check.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { TAG_HELLO = 7101, TAG_CTRL = 7102, TAG_BATCH = 7103, TAG_EVAL = 7104 };
enum { CTRL_START = 1, CTRL_CREDIT = 2, CTRL_STOP = 3, CTRL_EVAL = 4, CTRL_WEIGHTS = 5 };
enum { KIND_BATCH = 1, KIND_END = 2 };

typedef struct {
    int64_t status;
    DatasetInfo info;
    uint64_t steps, max_n;
    int64_t has_test;          /* the readers serve the test split too */
    DatasetInfo test_info;
    uint64_t test_steps, test_max_n;
} Hello;

typedef struct {
    int64_t kind, status;
    uint64_t gstep, epoch, step, global_n, n;
    double busy_s, idle_s;
    uint64_t samples;
} Head;

#define HEAD_BYTES 128

/* Where the parts of one batch message lie in its buffer. */
typedef struct {
    size_t max_n, sf;               /* the largest slice, floats per sample */
    size_t off_index, off_images, off_labels, bytes;
} Layout;

static int layout_make(size_t max_n, size_t sf, Layout *l)
{
    l->max_n = max_n;
    l->sf = sf;
    l->off_index = HEAD_BYTES;
    l->off_images = (HEAD_BYTES + max_n * sizeof(uint64_t) + 63) / 64 * 64;
    l->off_labels = l->off_images + max_n * sf * sizeof(float);
    l->bytes = l->off_labels + max_n * sizeof(int32_t);
    if (l->bytes > (size_t)INT_MAX)
        return basin_error(BASIN_ERR_USAGE, "--readers: a slice of %zu samples is %zu bytes, more than one MPI "
                           "message holds (2 GiB): use a smaller --batch or more trainer ranks", max_n, l->bytes);
    return BASIN_OK;
}

static void nap(long *ns)
{
    struct timespec ts = {0, *ns};
    nanosleep(&ts, NULL);
    if (*ns < 250000) *ns *= 2;
}

/* ============================== reader side ============================== */

typedef struct {
    int trainer;          /* its rank on the layout's comm */
    Reader *r;
    Reader *test;         /* the test split's slices of this trainer, or NULL */
    unsigned char *eval_buf;
    unsigned char **ring; /* K buffers */
    MPI_Request *req;     /* K sends */
    uint64_t sent;
    int64_t credits;      /* receives posted by the trainer and not yet sent to */
    int state;            /* 0: before START, 1: streaming, 2: stopped */
    uint64_t next, end;   /* the next step to send, the end of the run */
} Served;

struct RemoteServer {
    RemoteLayout lay;
    int index;
    Served *sv;
    int n;
    Layout lo, eval_lo;
    size_t test_steps;
    double busy_s, idle_s;
    uint64_t samples;
    int code, code_set;
    int64_t *ctrl;        /* one control message: 3 + trainers numbers at most */
    uint32_t *weights;    /* CTRL_WEIGHTS's, as the readers take them */
    RemoteEventFn on_event;
    void *event_arg;
    /* Test hook BASIN_TEST_READER=stall:STEP or die:STEP (environment only,
     * never an option): before reading global step STEP, reader 0 stops
     * answering for good, or kills itself. */
    int hook_kind;        /* 0 none, 1 stall, 2 die */
    long hook_step;
};

void remote_server_on_event(RemoteServer *s, RemoteEventFn fn, void *arg)
{
    s->on_event = fn;
    s->event_arg = arg;
}

int remote_server_open(const ReaderConfig *base, const ReaderConfig *test, const RemoteLayout *lay, int index,
                       RemoteServer **out)
{
    *out = NULL;
    RemoteServer *s = basin_calloc(1, sizeof *s);
    if (!s) return BASIN_ERR_RUNTIME;
    s->lay = *lay;
    s->index = index;
    const char *hook = getenv("BASIN_TEST_READER");
    if (hook) {
        char kind[16] = "";
        int ok = sscanf(hook, "%15[a-z]:%ld", kind, &s->hook_step) == 2;
        s->hook_kind = !ok ? -1 : !strcmp(kind, "stall") ? 1 : !strcmp(kind, "die") ? 2 : -1;
    }
    for (int t = index; t < lay->trainers; t += lay->readers) s->n++;
    s->sv = basin_calloc((size_t)(s->n ? s->n : 1), sizeof *s->sv);
    s->ctrl = basin_malloc((3 + (size_t)lay->trainers) * sizeof *s->ctrl);
    s->weights = basin_malloc((size_t)lay->trainers * sizeof *s->weights);
    int rc = s->sv && s->ctrl && s->weights ? BASIN_OK : BASIN_ERR_RUNTIME;
    if (s->hook_kind < 0)
        rc = basin_error(BASIN_ERR_USAGE, "BASIN_TEST_READER='%s': expected stall:STEP or die:STEP", hook);
    Hello h;
    memset(&h, 0, sizeof h);
    for (int i = 0; i < s->n && !rc; i++) {
        Served *v = &s->sv[i];
        v->trainer = index + i * lay->readers;
        ReaderConfig rc_i = *base;
        rc_i.rank = v->trainer;
        rc_i.world = lay->trainers;
        rc_i.prefetch = 0;
        rc = reader_open(&rc_i, &v->r);
        if (!rc && test) {
            ReaderConfig tc = *test;
            tc.rank = v->trainer;
            tc.world = lay->trainers;
            tc.prefetch = 0;
            rc = reader_open(&tc, &v->test);
        }
    }
    if (!rc && s->n) {
        h.info = *reader_info(s->sv[0].r);
        h.steps = reader_steps_per_epoch(s->sv[0].r);
        size_t N = h.info.count, B = base->global_batch, first, max_n;
        if ((size_t)lay->trainers > N) {
            rc = basin_error(BASIN_ERR_USAGE, "%s: %d trainer ranks but only %zu training samples", base->path,
                             lay->trainers, N);
        } else {
            order_rank_slice(B < N ? B : N, 0, lay->trainers, &first, &max_n);
            for (int t = 0; base->weights && t < lay->trainers; t++) { /* --balance: the largest share */
                size_t c;
                order_share_slice(B < N ? B : N, t, lay->trainers, base->weights, &first, &c);
                if (t == 0 || c > max_n) max_n = c;
            }
            size_t cap = B < N ? B : N; /* --balance auto: room for the largest share it may give */
            if (base->max_share > max_n) max_n = base->max_share < cap ? base->max_share : cap;
            h.max_n = max_n;
            rc = layout_make(max_n, (size_t)h.info.c * (size_t)h.info.h * (size_t)h.info.w, &s->lo);
        }
    }
    if (!rc && s->n && test) {
        const DatasetInfo *ti = reader_info(s->sv[0].test);
        if (ti->c != h.info.c || ti->h != h.info.h || ti->w != h.info.w || ti->classes != h.info.classes) {
            rc = basin_error(BASIN_ERR_USAGE, "%s: test and train samples differ in shape or classes", base->path);
        } else {
            size_t N = ti->count, B = test->global_batch, first, max_n;
            order_rank_slice(B < N ? B : N, 0, lay->trainers, &first, &max_n);
            h.has_test = 1;
            h.test_info = *ti;
            h.test_steps = s->test_steps = reader_steps_per_epoch(s->sv[0].test);
            h.test_max_n = max_n;
            rc = layout_make(max_n, (size_t)ti->c * (size_t)ti->h * (size_t)ti->w, &s->eval_lo);
        }
    }
    for (int i = 0; i < s->n && !rc; i++) {
        Served *v = &s->sv[i];
        v->ring = basin_calloc((size_t)lay->prefetch, sizeof *v->ring);
        v->req = basin_malloc((size_t)lay->prefetch * sizeof *v->req);
        if (!v->ring || !v->req) {
            free(v->req);
            v->req = NULL;
            rc = BASIN_ERR_RUNTIME;
            break;
        }
        for (int k = 0; k < lay->prefetch; k++) v->req[k] = MPI_REQUEST_NULL;
        for (int k = 0; k < lay->prefetch; k++) {
            v->ring[k] = basin_aligned_alloc(s->lo.bytes);
            if (!v->ring[k]) {
                rc = BASIN_ERR_RUNTIME;
                break;
            }
        }
        if (!rc && v->test && !(v->eval_buf = basin_aligned_alloc(s->eval_lo.bytes))) rc = BASIN_ERR_RUNTIME;
    }
    /* Every trainer hears the outcome, so that none waits for a reader that
     * failed: it then fails the job's agreement with this reader's line. */
    h.status = rc;
    for (int t = index; t < lay->trainers; t += lay->readers) {
        int mrc = MPI_Send(&h, (int)sizeof h, MPI_BYTE, t, TAG_HELLO, lay->comm);
        if (mrc != MPI_SUCCESS && !rc) rc = basin_mpi_fail(mrc, "MPI_Send(hello)", __FILE__, __LINE__);
    }
    *out = s;
    return rc;
}

static int send_end(RemoteServer *s, Served *v)
{
    Head h;
    memset(&h, 0, sizeof h);
    h.kind = KIND_END;
    for (; v->credits > 0; v->credits--)
        BASIN_MPI(MPI_Send(&h, (int)sizeof h, MPI_BYTE, v->trainer, TAG_BATCH, s->lay.comm));
    return BASIN_OK;
}

static int serve_eval(RemoteServer *s, Served *v);

/* msg: kind, two numbers, and for CTRL_WEIGHTS msg[2] = the trainers' weights
 * after them (count numbers in all). */
static int handle_ctrl(RemoteServer *s, const int64_t *msg, int count, int source)
{
    Served *v = NULL;
    for (int i = 0; i < s->n; i++)
        if (s->sv[i].trainer == source) v = &s->sv[i];
    if (!v) return BASIN_FAIL(BASIN_ERR_RUNTIME, "reader %d: a message from rank %d, which it does not serve",
                              s->index, source);
    switch (msg[0]) {
    case CTRL_START:
        if (v->state != 0)
            return BASIN_FAIL(BASIN_ERR_RUNTIME, "reader %d: trainer %d started twice", s->index, source);
        v->state = 1;
        v->credits = s->lay.prefetch;
        v->next = (uint64_t)msg[1];
        v->end = (uint64_t)msg[2];
        return reader_seek(v->r, 0, v->next);
    case CTRL_CREDIT:
        v->credits++;
        return BASIN_OK;
    case CTRL_EVAL:
        return serve_eval(s, v);
    case CTRL_WEIGHTS:
        if (msg[2] != s->lay.trainers || count != 3 + s->lay.trainers)
            return BASIN_FAIL(BASIN_ERR_RUNTIME, "reader %d: %lld weights from rank %d for %d trainers", s->index,
                              (long long)msg[2], source, s->lay.trainers);
        for (int k = 0; k < s->lay.trainers; k++) s->weights[k] = (uint32_t)msg[3 + k];
        /* The trainer sent it before the credit for the step K before
         * msg[1]: nothing at or after msg[1] has been read for it. */
        return reader_set_weights(v->r, s->weights, (uint64_t)msg[1]);
    case CTRL_STOP:
        if (!s->code_set) s->code = (int)msg[1], s->code_set = 1;
        TRY(send_end(s, v));
        v->state = 2;
        return BASIN_OK;
    default:
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "reader %d: unknown message %lld from rank %d", s->index,
                          (long long)msg[0], source);
    }
}

/* Take the control messages that have arrived; with block, wait for one. */
static int poll_ctrl(RemoteServer *s, int block)
{
    long ns = 20000;
    double t0 = basin_clock();
    for (;;) {
        int flag = 0;
        MPI_Status st;
        BASIN_MPI(MPI_Iprobe(MPI_ANY_SOURCE, TAG_CTRL, s->lay.comm, &flag, &st));
        if (flag) {
            int count = 0;
            BASIN_MPI(MPI_Get_count(&st, MPI_INT64_T, &count));
            if (count < 3 || count > 3 + s->lay.trainers)
                return BASIN_FAIL(BASIN_ERR_RUNTIME, "reader %d: a control message of %d numbers from rank %d",
                                  s->index, count, st.MPI_SOURCE);
            BASIN_MPI(MPI_Recv(s->ctrl, count, MPI_INT64_T, st.MPI_SOURCE, TAG_CTRL, s->lay.comm,
                               MPI_STATUS_IGNORE));
            TRY(handle_ctrl(s, s->ctrl, count, st.MPI_SOURCE));
            block = 0; /* got one: take the rest without waiting */
            continue;
        }
        if (!block) break;
        nap(&ns);
    }
    double t1 = basin_clock();
    s->idle_s += t1 - t0;
    if (s->on_event && t1 - t0 > 1e-4) s->on_event(s->event_arg, "wait for credits", 1, t0, t1);
    return BASIN_OK;
}

/* Read r's next batch into buf (layout lo) with its header; the status of
 * the read. */
static int pack(RemoteServer *s, Reader *r, const Layout *lo, uint64_t gstep, unsigned char *buf)
{
    double t0 = basin_clock();
    Batch b;
    int rc = reader_next(r, &b);
    double t1 = basin_clock();
    s->busy_s += t1 - t0;
    if (s->on_event) s->on_event(s->event_arg, "read", 0, t0, t1);
    Head h;
    memset(&h, 0, sizeof h);
    h.kind = KIND_BATCH;
    h.status = rc;
    h.gstep = gstep;
    if (!rc) {
        if (b.n > lo->max_n)
            return BASIN_FAIL(BASIN_ERR_RUNTIME, "reader %d: a slice of %zu samples, more than %zu", s->index, b.n,
                              lo->max_n);
        s->samples += b.n;
        h.epoch = b.epoch, h.step = b.step, h.global_n = b.global_n, h.n = b.n;
        memcpy(buf + lo->off_index, b.index, b.n * sizeof(uint64_t));
        memcpy(buf + lo->off_images, b.images, b.n * lo->sf * sizeof(float));
        memcpy(buf + lo->off_labels, b.labels, b.n * sizeof(int32_t));
    }
    h.busy_s = s->busy_s, h.idle_s = s->idle_s, h.samples = s->samples;
    memcpy(buf, &h, sizeof h);
    return rc;
}

/* The whole test split of trainer v's slices, in order, each sent when the
 * trainer has posted its receive (evaluation is rare; no prefetch). */
static int serve_eval(RemoteServer *s, Served *v)
{
    if (!v->test) return BASIN_FAIL(BASIN_ERR_RUNTIME, "reader %d: evaluation asked without a test split", s->index);
    TRY(reader_seek(v->test, 0, 0));
    for (size_t step = 0; step < s->test_steps; step++) {
        int rc = pack(s, v->test, &s->eval_lo, step, v->eval_buf);
        int bytes = rc ? (int)sizeof(Head) : (int)s->eval_lo.bytes;
        BASIN_MPI(MPI_Send(v->eval_buf, bytes, MPI_BYTE, v->trainer, TAG_EVAL, s->lay.comm));
        if (rc) return rc;
    }
    return BASIN_OK;
}

/* Read v's next step and send it against one credit. */
static int produce(RemoteServer *s, Served *v)
{
    int K = s->lay.prefetch, k = (int)(v->sent % (uint64_t)K);
    if (s->hook_kind > 0 && s->index == 0 && (long)v->next == s->hook_step) {
        if (s->hook_kind == 2) raise(SIGKILL);
        for (;;) {
            struct timespec ts = {1, 0};
            nanosleep(&ts, NULL);
        }
    }
    BASIN_MPI(MPI_Wait(&v->req[k], MPI_STATUS_IGNORE));
    unsigned char *buf = v->ring[k];
    int rc = pack(s, v->r, &s->lo, v->next, buf);
    /* A failed read still goes out (its header says so): the trainer stops
     * with an error instead of waiting for the batch. */
    int bytes = rc ? (int)sizeof(Head) : (int)s->lo.bytes;
    BASIN_MPI(MPI_Isend(buf, bytes, MPI_BYTE, v->trainer, TAG_BATCH, s->lay.comm, &v->req[k]));
    v->sent++;
    v->credits--;
    v->next++;
    return rc;
}

int remote_server_run(RemoteServer *s)
{
    for (;;) {
        int waiting = 0, progress = 0;
        /* One step of every trainer that may have it, in trainer order. */
        for (int i = 0; i < s->n; i++) {
            Served *v = &s->sv[i];
            if (v->state != 2) waiting = 1;
            if (v->state != 1 || v->next >= v->end || v->credits <= 0) continue;
            TRY(produce(s, v));
            progress = 1;
            TRY(poll_ctrl(s, 0)); /* also moves the sends on */
        }
        if (!waiting) break;
        if (!progress) TRY(poll_ctrl(s, 1));
    }
    return s->code;
}

void remote_server_close(RemoteServer *s)
{
    if (!s) return;
    for (int i = 0; i < s->n && s->sv; i++) {
        Served *v = &s->sv[i];
        for (int k = 0; v->req && k < s->lay.prefetch; k++) {
            if (v->req[k] != MPI_REQUEST_NULL && MPI_Wait(&v->req[k], MPI_STATUS_IGNORE) != MPI_SUCCESS)
                basin_warn("reader %d: a send to trainer %d did not complete", s->index, v->trainer);
        }
        for (int k = 0; v->ring && k < s->lay.prefetch; k++) free(v->ring[k]);
        free(v->ring);
        free(v->req);
        if (v->r) reader_close(v->r);
        if (v->test) reader_close(v->test);
        free(v->eval_buf);
    }
    free(s->sv);
    free(s->ctrl);
    free(s->weights);
    free(s);
}

/* ============================== trainer side ============================= */

struct RemoteFeed {
    RemoteLayout lay;
    int trainer, reader;
    DatasetInfo info;
    size_t steps;
    Layout lo;
    int has_test;
    DatasetInfo test_info;
    size_t test_steps;
    Layout eval_lo;
    unsigned char *eval_buf;
    unsigned char **ring;
    MPI_Request *req;
    int *done;            /* receive k completed and not yet used */
    uint64_t first;       /* the step of the first batch */
    uint64_t got;         /* batches handed out */
    int held;             /* buffer the caller holds, or -1 */
    int engaged, started;
    RemoteFeedStats st;
};

/* The reader's rank as the job numbers it (--roles places readers anywhere). */
static int reader_name(const RemoteFeed *f)
{
    return f->lay.job_rank ? f->lay.job_rank[f->reader] : f->reader;
}

/* Wait for req, polling; past the layout's timeout, an error naming the reader. */
static int wait_timed(RemoteFeed *f, MPI_Request *req, const char *what)
{
    int flag = 0;
    BASIN_MPI(MPI_Test(req, &flag, MPI_STATUS_IGNORE));
    long ns = 10000;
    double t0 = basin_clock();
    while (!flag) {
        if (f->lay.timeout_s > 0 && basin_clock() - t0 > f->lay.timeout_s)
            return basin_error(BASIN_ERR_RUNTIME, "trainer %d: no %s from reader rank %d within %.0f s "
                               "(--collective-timeout): the reader is stalled or gone", f->trainer, what,
                               reader_name(f), f->lay.timeout_s);
        nap(&ns);
        BASIN_MPI(MPI_Test(req, &flag, MPI_STATUS_IGNORE));
    }
    return BASIN_OK;
}

int remote_feed_open(const RemoteLayout *lay, int trainer, RemoteFeed **out, int *reader_status)
{
    *out = NULL;
    *reader_status = BASIN_OK;
    RemoteFeed *f = basin_calloc(1, sizeof *f);
    if (!f) return BASIN_ERR_RUNTIME;
    f->lay = *lay;
    f->trainer = trainer;
    f->reader = lay->trainers + trainer % lay->readers;
    f->held = -1;
    Hello h;
    MPI_Request req;
    int rc = BASIN_OK, mrc = MPI_Irecv(&h, (int)sizeof h, MPI_BYTE, f->reader, TAG_HELLO, lay->comm, &req);
    if (mrc != MPI_SUCCESS) rc = basin_mpi_fail(mrc, "MPI_Irecv(hello)", __FILE__, __LINE__);
    if (!rc) rc = wait_timed(f, &req, "set-up message");
    if (!rc && h.status) *reader_status = (int)h.status;
    if (!rc && !h.status) {
        f->info = h.info;
        f->steps = h.steps;
        rc = layout_make(h.max_n, (size_t)h.info.c * (size_t)h.info.h * (size_t)h.info.w, &f->lo);
        if (!rc && h.has_test) {
            f->has_test = 1;
            f->test_info = h.test_info;
            f->test_steps = h.test_steps;
            rc = layout_make(h.test_max_n, (size_t)h.info.c * (size_t)h.info.h * (size_t)h.info.w, &f->eval_lo);
            if (!rc && !(f->eval_buf = basin_aligned_alloc(f->eval_lo.bytes))) rc = BASIN_ERR_RUNTIME;
        }
    }
    if (!rc && !h.status) {
        int K = lay->prefetch;
        f->ring = basin_calloc((size_t)K, sizeof *f->ring);
        f->req = basin_malloc((size_t)K * sizeof *f->req);
        f->done = basin_calloc((size_t)K, sizeof *f->done);
        if (!f->ring || !f->req || !f->done) {
            free(f->req);
            f->req = NULL;
            rc = BASIN_ERR_RUNTIME;
        }
        for (int k = 0; !rc && k < K; k++) f->req[k] = MPI_REQUEST_NULL;
        for (int k = 0; !rc && k < K; k++) {
            f->ring[k] = basin_aligned_alloc(f->lo.bytes);
            if (!f->ring[k]) rc = BASIN_ERR_RUNTIME;
        }
    }
    if (rc || *reader_status) {
        remote_feed_close(f, rc);
        return rc;
    }
    *out = f;
    return BASIN_OK;
}

const DatasetInfo *remote_feed_info(const RemoteFeed *f)
{
    return &f->info;
}

size_t remote_feed_steps_per_epoch(const RemoteFeed *f)
{
    return f->steps;
}

const DatasetInfo *remote_feed_test_info(const RemoteFeed *f)
{
    return f->has_test ? &f->test_info : NULL;
}

size_t remote_feed_test_steps(const RemoteFeed *f)
{
    return f->test_steps;
}

int remote_feed_eval_begin(RemoteFeed *f)
{
    if (!f->has_test) return BASIN_FAIL(BASIN_ERR_RUNTIME, "remote_feed_eval_begin: the readers have no test split");
    int64_t msg[3] = {CTRL_EVAL, 0, 0};
    BASIN_MPI(MPI_Send(msg, 3, MPI_INT64_T, f->reader, TAG_CTRL, f->lay.comm));
    return BASIN_OK;
}

int remote_feed_eval_next(RemoteFeed *f, uint64_t step, Batch *out)
{
    MPI_Request req;
    BASIN_MPI(MPI_Irecv(f->eval_buf, (int)f->eval_lo.bytes, MPI_BYTE, f->reader, TAG_EVAL, f->lay.comm, &req));
    TRY(wait_timed(f, &req, "evaluation batch"));
    Head h;
    memcpy(&h, f->eval_buf, sizeof h);
    if (h.status)
        return basin_error(BASIN_ERR_RUNTIME, "trainer %d: reader rank %d could not read test step %llu (its line "
                           "says why)", f->trainer, reader_name(f), (unsigned long long)step);
    if (h.kind != KIND_BATCH || h.gstep != step || h.n > f->eval_lo.max_n)
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "trainer %d: reader rank %d sent test step %llu, expected %llu",
                          f->trainer, reader_name(f), (unsigned long long)h.gstep, (unsigned long long)step);
    out->epoch = h.epoch;
    out->step = h.step;
    out->global_n = h.global_n;
    out->n = h.n;
    out->images = (float *)(f->eval_buf + f->eval_lo.off_images);
    out->labels = (int32_t *)(f->eval_buf + f->eval_lo.off_labels);
    out->index = (const uint64_t *)(f->eval_buf + f->eval_lo.off_index);
    return BASIN_OK;
}

int remote_feed_reader_rank(const RemoteFeed *f)
{
    return f->reader;
}

void remote_feed_engage(RemoteFeed *f)
{
    f->engaged = 1;
}

static int send_ctrl(RemoteFeed *f, int64_t kind, int64_t a, int64_t b)
{
    int64_t msg[3] = {kind, a, b};
    BASIN_MPI(MPI_Send(msg, 3, MPI_INT64_T, f->reader, TAG_CTRL, f->lay.comm));
    return BASIN_OK;
}

static int post(RemoteFeed *f, int k)
{
    f->done[k] = 0;
    BASIN_MPI(MPI_Irecv(f->ring[k], (int)f->lo.bytes, MPI_BYTE, f->reader, TAG_BATCH, f->lay.comm, &f->req[k]));
    return BASIN_OK;
}

int remote_feed_set_weights(RemoteFeed *f, const uint32_t *weights, uint64_t from)
{
    int W = f->lay.trainers;
    int64_t *msg = basin_malloc((3 + (size_t)W) * sizeof *msg);
    if (!msg) return BASIN_ERR_RUNTIME;
    msg[0] = CTRL_WEIGHTS, msg[1] = (int64_t)from, msg[2] = W;
    for (int k = 0; k < W; k++) msg[3 + k] = weights[k];
    int mrc = MPI_Send(msg, 3 + W, MPI_INT64_T, f->reader, TAG_CTRL, f->lay.comm);
    free(msg);
    if (mrc != MPI_SUCCESS) return basin_mpi_fail(mrc, "MPI_Send(weights)", __FILE__, __LINE__);
    return BASIN_OK;
}

int remote_feed_start(RemoteFeed *f, uint64_t start, uint64_t end)
{
    if (f->started) return BASIN_FAIL(BASIN_ERR_RUNTIME, "remote_feed_start called twice");
    for (int k = 0; k < f->lay.prefetch; k++) TRY(post(f, k));
    f->started = 1;
    f->first = start;
    return send_ctrl(f, CTRL_START, (int64_t)start, (int64_t)end);
}

int remote_feed_next(RemoteFeed *f, Batch *out, double *wait_s)
{
    if (!f->started) return BASIN_FAIL(BASIN_ERR_RUNTIME, "remote_feed_next before remote_feed_start");
    if (f->held >= 0) {
        /* The caller is done with the batch it had: its buffer takes the
         * batch K steps on, and the reader may send one more. */
        TRY(post(f, f->held));
        f->held = -1;
        TRY(send_ctrl(f, CTRL_CREDIT, 0, 0));
    }
    int K = f->lay.prefetch, k = (int)(f->got % (uint64_t)K), ready = 0;
    for (int j = 0; j < K; j++) {
        if (!f->done[j] && f->req[j] != MPI_REQUEST_NULL)
            BASIN_MPI(MPI_Test(&f->req[j], &f->done[j], MPI_STATUS_IGNORE));
        ready += f->done[j];
    }
    f->st.ready_sum += ready;
    double t0 = basin_clock();
    if (!f->done[k]) TRY(wait_timed(f, &f->req[k], "batch"));
    if (wait_s) *wait_s += basin_clock() - t0;
    f->done[k] = 0;
    Head h;
    memcpy(&h, f->ring[k], sizeof h);
    uint64_t want = f->first + f->got;
    if (h.kind != KIND_BATCH)
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "trainer %d: reader rank %d ended the stream before step %llu",
                          f->trainer, reader_name(f), (unsigned long long)want);
    if (h.status)
        return basin_error(BASIN_ERR_RUNTIME, "trainer %d: reader rank %d could not read step %llu (its line says why)",
                           f->trainer, reader_name(f), (unsigned long long)want);
    if (h.gstep != want || h.n > f->lo.max_n)
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "trainer %d: reader rank %d sent step %llu (%llu samples), expected "
                          "step %llu", f->trainer, reader_name(f), (unsigned long long)h.gstep,
                          (unsigned long long)h.n, (unsigned long long)want);
    f->held = k;
    f->got++;
    f->st.batches++;
    f->st.reader_busy_s = h.busy_s;
    f->st.reader_idle_s = h.idle_s;
    f->st.reader_samples = h.samples;
    out->epoch = h.epoch;
    out->step = h.step;
    out->global_n = h.global_n;
    out->n = h.n;
    out->images = (float *)(f->ring[k] + f->lo.off_images);
    out->labels = (int32_t *)(f->ring[k] + f->lo.off_labels);
    out->index = (const uint64_t *)(f->ring[k] + f->lo.off_index);
    return BASIN_OK;
}

void remote_feed_stats(const RemoteFeed *f, RemoteFeedStats *out)
{
    *out = f->st;
}

int remote_feed_close(RemoteFeed *f, int code)
{
    if (!f) return BASIN_OK;
    int rc = BASIN_OK;
    if (code == BASIN_ERR_RUNTIME && f->started) {
        /* The job is being aborted (basin-train's MPI_Abort): a reader that
         * failed or stalled will not fill the posted receives, so neither
         * wait for them nor free the memory they may still write. */
        if (f->engaged) send_ctrl(f, CTRL_STOP, code, 0);
        return BASIN_OK;
    }
    if (f->engaged) rc = send_ctrl(f, CTRL_STOP, code, 0);
    /* The reader answers STOP by filling every receive still posted (with
     * batches already on their way, or END), so each completes. */
    for (int k = 0; !rc && f->req && k < f->lay.prefetch; k++)
        if (f->req[k] != MPI_REQUEST_NULL && !f->done[k]) rc = wait_timed(f, &f->req[k], "last message");
    for (int k = 0; f->ring && k < f->lay.prefetch; k++) free(f->ring[k]);
    free(f->ring);
    free(f->req);
    free(f->done);
    free(f->eval_buf);
    free(f);
    return rc;
}
