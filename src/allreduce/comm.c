/* Communicators, shared-memory windows, the watchdog and the message helpers. */
#include "allreduce/internal.h"

#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void allreduce_config_default(AllreduceConfig *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->supernode_size = 0;
    cfg->timeout_s = 300.0;
    cfg->max_message_count = INT_MAX;
    cfg->queue_capacity = 256;
}

int allreduce_mpi_init(int *argc, char ***argv, int *provided)
{
#ifdef OPEN_MPI
    char eager[32];
    snprintf(eager, sizeof eager, "%d", (int)ALLREDUCE_TCP_EAGER_BYTES);
    /* overwrite = 0: the user's value wins. */
    if (setenv("OMPI_MCA_btl_tcp_eager_limit", eager, 0) != 0) return MPI_ERR_OTHER;
#endif
    return MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, provided);
}

const AllreduceTopology *allreduce_topology(const AllreduceComm *c)
{
    return &c->topo;
}

/* ---- watchdog ----------------------------------------------------------- */

static void *watch_main(void *arg)
{
    AllreduceComm *c = arg;
    ArWatch *w = &c->watch;
    double period = w->timeout_s / 10.0;
    if (period > 0.2) period = 0.2;
    if (period < 0.005) period = 0.005;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        long ns = ts.tv_nsec + (long)(period * 1e9);
        ts.tv_sec += ns / 1000000000L;
        ts.tv_nsec = ns % 1000000000L;
        pthread_cond_timedwait(&w->cv, &w->mu, &ts);
        if (w->stop || !w->armed) continue;
        double waited = basin_clock() - w->since;
        if (waited <= w->timeout_s) continue;
        ArWatch snap = *w;
        pthread_mutex_unlock(&w->mu);
        char peer[64];
        if (snap.peer >= 0)
            snprintf(peer, sizeof peer, "rank %d", snap.peer);
        else
            snprintf(peer, sizeof peer, "an unknown rank");
        char step[32] = "";
        if (snap.step >= 0) snprintf(step, sizeof step, " step %d", snap.step);
        basin_error(ALLREDUCE_WATCHDOG_EXIT,
                    "all-reduce watchdog: collective #%llu (%s, %zu floats) waited %.1f s on %s in %s%s; "
                    "aborting (timeout %.1f s)",
                    (unsigned long long)snap.seq, snap.algo ? snap.algo : "?", snap.count, waited, peer,
                    snap.phase ? snap.phase : "?", step, snap.timeout_s);
        /* Ranks stuck behind this one time out a moment later; give them two
         * watchdog periods to report too, so the job's output names the rank
         * that holds everyone up, then stop the job. */
        struct timespec grace = {0, (long)(2.5 * period * 1e9)};
        nanosleep(&grace, NULL);
        MPI_Abort(c->world, ALLREDUCE_WATCHDOG_EXIT);
        _exit(ALLREDUCE_WATCHDOG_EXIT); /* MPI_Abort does not return; be sure */
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

void ar_watch_op(AllreduceComm *c, uint64_t seq, const char *algo, size_t count)
{
    ArWatch *w = &c->watch;
    if (!w->running) return;
    pthread_mutex_lock(&w->mu);
    w->seq = seq;
    w->algo = algo;
    w->count = count;
    pthread_mutex_unlock(&w->mu);
}

void ar_watch_begin(AllreduceComm *c, const char *phase, int step, int peer)
{
    ArWatch *w = &c->watch;
    if (!w->running) return;
    double now = basin_clock();
    pthread_mutex_lock(&w->mu);
    w->phase = phase;
    w->step = step;
    w->peer = peer;
    w->since = now;
    w->armed = 1;
    pthread_mutex_unlock(&w->mu);
}

void ar_watch_end(AllreduceComm *c)
{
    ArWatch *w = &c->watch;
    if (!w->running) return;
    pthread_mutex_lock(&w->mu);
    w->armed = 0;
    pthread_mutex_unlock(&w->mu);
}

static int watch_start(AllreduceComm *c, double timeout_s)
{
    ArWatch *w = &c->watch;
    w->timeout_s = timeout_s;
    if (timeout_s <= 0) return BASIN_OK;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, &attr);
    pthread_condattr_destroy(&attr);
    if (pthread_create(&w->thread, NULL, watch_main, c) != 0) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "pthread_create failed for the all-reduce watchdog");
    }
    w->running = 1;
    return BASIN_OK;
}

static void watch_stop(AllreduceComm *c)
{
    ArWatch *w = &c->watch;
    if (!w->running) return;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    w->running = 0;
}

/* ---- messages ----------------------------------------------------------- */

/* Waiting ranks must not hold a core: on an oversubscribed or shared host
 * (8 ranks on 2 cores in the simulated cluster) a spinning rank takes CPU
 * time from the ranks that move data, and sched_yield gives little of it
 * back under CFS (spinning waits cost hier 10-20% of its bandwidth on the
 * simulated cluster). A wait first spins (yielding now and then) for
 * AllreduceComm.spin_ns, then sleeps, from BACKOFF_FIRST_NS doubling to
 * BACKOFF_CAP_NS. The cap bounds the delay a sleeper adds after its wait
 * ends: on the simulated cluster (hier, 4 KiB to 64 KiB) a 100 us cap took
 * ~2 ms, a 1 ms cap 5-9 ms, and spinning 1 ms before sleeping 10-27 ms, with
 * the same bandwidth at >= 16 MiB. With several supernodes the long waits
 * are behind network transfers, so the spin is short (SPIN_NODES_NS); with
 * one supernode every wait is on a peer's memory, which takes microseconds
 * unless the peer lost its core, so the spin is long (SPIN_HOST_NS) and
 * small all-reduces on one host never pay a sleep's wake-up delay. */
enum {
    SPIN_NODES_NS = 20000,
    SPIN_HOST_NS = 1000000,
    BACKOFF_FIRST_NS = 10000,
    BACKOFF_CAP_NS = 100000,
};

long ar_spin_ns(const AllreduceTopology *t)
{
    return t->nodes > 1 ? SPIN_NODES_NS : SPIN_HOST_NS;
}

void ar_backoff_init(ArBackoff *b, long spin_ns)
{
    b->start = 0;
    b->spin_s = 1e-9 * (double)spin_ns;
    b->sleep_ns = 0;
    b->polls = 0;
}

void ar_backoff_pause(ArBackoff *b)
{
    if (b->sleep_ns == 0) {
        /* The clock is read (and the core offered) every 64 polls only, so
         * the spin reacts as fast as a bare loop. */
        if ((++b->polls & 63) != 0) return;
        double now = basin_clock();
        if (b->start == 0) b->start = now;
        if (now - b->start < b->spin_s) {
            sched_yield();
            return;
        }
        b->sleep_ns = BACKOFF_FIRST_NS;
    }
    struct timespec ts = {0, b->sleep_ns};
    nanosleep(&ts, NULL);
    b->sleep_ns = b->sleep_ns * 2 < BACKOFF_CAP_NS ? b->sleep_ns * 2 : BACKOFF_CAP_NS;
}

int ar_waitall(AllreduceComm *c, int n, MPI_Request *reqs)
{
    ArBackoff b;
    ar_backoff_init(&b, c->spin_ns);
    for (;;) {
        int done = 0;
        int rc = MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS || done) return rc;
        ar_backoff_pause(&b);
    }
}

size_t ar_chunks(const AllreduceComm *c, size_t count)
{
    return (count + c->max_msg - 1) / c->max_msg;
}

int ar_exchange_typed(AllreduceComm *c, MPI_Comm comm, const void *sbuf, size_t scount, int dst, void *rbuf,
                      size_t rcount, int src, int tag, MPI_Datatype type, size_t esize, MPI_Request *reqs,
                      int src_world, const char *phase, int step)
{
    int n = 0;
    /* Each chunk is at most max_msg <= INT_MAX elements, so its int count is exact. */
    for (size_t off = 0; off < rcount; off += c->max_msg) {
        size_t k = rcount - off < c->max_msg ? rcount - off : c->max_msg;
        BASIN_MPI(MPI_Irecv((char *)rbuf + off * esize, (int)k, type, src, tag, comm, &reqs[n++]));
    }
    for (size_t off = 0; off < scount; off += c->max_msg) {
        size_t k = scount - off < c->max_msg ? scount - off : c->max_msg;
        BASIN_MPI(MPI_Isend((const char *)sbuf + off * esize, (int)k, type, dst, tag, comm, &reqs[n++]));
    }
    if (n == 0) return BASIN_OK;
    ar_watch_begin(c, phase, step, rcount ? src_world : -1);
    int rc = ar_waitall(c, n, reqs);
    ar_watch_end(c);
    if (rc != MPI_SUCCESS) return basin_mpi_fail(rc, "MPI_Testall", __FILE__, __LINE__);
    return BASIN_OK;
}

int ar_exchange(AllreduceComm *c, MPI_Comm comm, const float *sbuf, size_t scount, int dst,
                float *rbuf, size_t rcount, int src, int tag, MPI_Request *reqs,
                int src_world, const char *phase, int step)
{
    return ar_exchange_typed(c, comm, sbuf, scount, dst, rbuf, rcount, src, tag, MPI_FLOAT, sizeof(float), reqs,
                             src_world, phase, step);
}

void ar_add(float *restrict dst, const float *restrict src, size_t n)
{
    for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

static void add3(float *restrict dst, const float *restrict a, const float *restrict b, size_t n)
{
    for (size_t i = 0; i < n; i++) dst[i] = a[i] + b[i];
}

void ar_add3(float *dst, const float *a, const float *restrict b, size_t n)
{
    if (dst == a)
        ar_add(dst, b, n);
    else
        add3(dst, a, b, n);
}

/* ---- shared memory ------------------------------------------------------ */

void ar_node_barrier(AllreduceComm *c, const char *phase)
{
    int L = c->topo.local_size, me = c->topo.local_rank;
    if (L == 1) return;
    uint64_t e = ++c->epoch;
    atomic_store_explicit(&c->slots[me]->arrived, e, memory_order_release);
    for (int j = 0; j < L; j++) {
        if (j == me) continue;
        _Atomic uint64_t *a = &c->slots[j]->arrived;
        if (atomic_load_explicit(a, memory_order_acquire) >= e) continue;
        ar_watch_begin(c, phase, -1, c->node_world[j]);
        ArBackoff b;
        ar_backoff_init(&b, c->spin_ns);
        while (atomic_load_explicit(a, memory_order_acquire) < e) ar_backoff_pause(&b);
        ar_watch_end(c);
    }
}

int ar_window_of(const AllreduceComm *c, const float *p, size_t count, size_t *offset)
{
    uintptr_t a = (uintptr_t)p, bytes = count * sizeof(float);
    for (int i = 1; i < c->nwins; i++) {
        const ArWindow *w = &c->wins[i];
        if (!w->in_use) continue;
        uintptr_t b = (uintptr_t)w->base[c->topo.local_rank];
        if (a >= b && a - b <= w->count * sizeof(float) && bytes <= w->count * sizeof(float) - (a - b)) {
            if ((a - b) % sizeof(float)) return -1;
            *offset = (a - b) / sizeof(float);
            return i;
        }
    }
    return -1;
}

int ar_window_create(AllreduceComm *c, size_t count, int *index)
{
    int st = BASIN_OK, idx = -1;
    for (int i = 0; i < c->nwins; i++)
        if (!c->wins[i].in_use) {
            idx = i;
            break;
        }
    if (idx < 0) {
        if (c->nwins == c->capwins) {
            int cap = c->capwins ? 2 * c->capwins : 8;
            ArWindow *nw = realloc(c->wins, (size_t)cap * sizeof *nw);
            if (!nw) return BASIN_FAIL(BASIN_ERR_RUNTIME, "out of memory growing the window table");
            c->wins = nw;
            c->capwins = cap;
        }
        idx = c->nwins++;
        memset(&c->wins[idx], 0, sizeof c->wins[idx]);
    }
    ArWindow *w = &c->wins[idx];
    int L = c->topo.local_size;
    w->base = basin_calloc((size_t)L, sizeof *w->base);
    if (!w->base) return BASIN_ERR_RUNTIME;
    size_t bytes = (count * sizeof(float) + 63) / 64 * 64;
    if (bytes == 0) bytes = 64;
    if (bytes > ((~(size_t)0) >> 2)) {
        free(w->base);
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "shared window of %zu floats is too large", count);
    }
    MPI_Info info = MPI_INFO_NULL;
    void *mine = NULL;
    BASIN_MPI_GOTO(st, MPI_Info_create(&info), fail);
    /* One segment per rank, each in its owner's NUMA-local pages. */
    BASIN_MPI_GOTO(st, MPI_Info_set(info, "alloc_shared_noncontig", "true"), fail);
    BASIN_MPI_GOTO(st, MPI_Win_allocate_shared((MPI_Aint)(bytes + 64), (int)sizeof(float), info, c->node, &mine, &w->win),
                fail);
    BASIN_MPI_GOTO(st, MPI_Win_set_errhandler(w->win, MPI_ERRORS_RETURN), fail_win);
    int *model = NULL, flag = 0;
    BASIN_MPI_GOTO(st, MPI_Win_get_attr(w->win, MPI_WIN_MODEL, &model, &flag), fail_win);
    if (!flag || *model != MPI_WIN_UNIFIED) {
        st = BASIN_FAIL(BASIN_ERR_RUNTIME, "shared window is not in the unified memory model");
        goto fail_win;
    }
    for (int j = 0; j < L; j++) {
        MPI_Aint sz;
        int disp;
        void *p = NULL;
        BASIN_MPI_GOTO(st, MPI_Win_shared_query(w->win, j, &sz, &disp, &p), fail_win);
        /* Segments are mapped at page granularity, so rounding up to 64 bytes
         * lands on the same byte of the segment in every process. */
        uintptr_t a = ((uintptr_t)p + 63) & ~(uintptr_t)63;
        if (sz < 0 || (size_t)sz < a - (uintptr_t)p + bytes) {
            st = BASIN_FAIL(BASIN_ERR_RUNTIME, "shared window segment of local rank %d is too small", j);
            goto fail_win;
        }
        w->base[j] = (float *)a;
    }
    w->count = bytes / sizeof(float);
    w->in_use = 1;
    MPI_Info_free(&info);
    *index = idx;
    return BASIN_OK;
fail_win:
    MPI_Win_free(&w->win);
fail:
    if (info != MPI_INFO_NULL) MPI_Info_free(&info);
    free(w->base);
    w->base = NULL;
    return st;
}

void ar_window_release(AllreduceComm *c, int index)
{
    if (index < 0 || index >= c->nwins || !c->wins[index].in_use) return;
    ArWindow *w = &c->wins[index];
    int rc = MPI_Win_free(&w->win);
    if (rc != MPI_SUCCESS) basin_mpi_fail(rc, "MPI_Win_free", __FILE__, __LINE__);
    free(w->base);
    w->base = NULL;
    w->in_use = 0;
}

float *allreduce_buffer_alloc(AllreduceComm *c, size_t count)
{
    if (allreduce_wait_all(c)) return NULL;
    int idx;
    if (ar_window_create(c, count, &idx)) return NULL;
    return c->wins[idx].base[c->topo.local_rank];
}

void allreduce_buffer_free(AllreduceComm *c, float *buf)
{
    if (!c || !buf) return;
    allreduce_wait_all(c);
    for (int i = 1; i < c->nwins; i++)
        if (c->wins[i].in_use && c->wins[i].base[c->topo.local_rank] == buf) {
            ar_window_release(c, i);
            return;
        }
    basin_warn("allreduce_buffer_free: %p was not handed out by allreduce_buffer_alloc", (void *)buf);
}

/* ---- communicators ------------------------------------------------------ */

static void comm_destroy(AllreduceComm *c)
{
    watch_stop(c);
    for (int i = c->nwins - 1; i >= 0; i--) ar_window_release(c, i);
    free(c->wins);
    free(c->slots);
    free(c->node_world);
    free(c->cross_world);
    if (c->cross != MPI_COMM_NULL) MPI_Comm_free(&c->cross);
    if (c->node != MPI_COMM_NULL) MPI_Comm_free(&c->node);
    if (c->world != MPI_COMM_NULL) MPI_Comm_free(&c->world);
    free(c);
}

static int make_node_comm(AllreduceComm *c, int K)
{
    int rank = c->topo.world_rank;
    if (K <= 0) {
        BASIN_MPI(MPI_Comm_split_type(c->world, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &c->node));
        return BASIN_OK;
    }
    BASIN_MPI(MPI_Comm_split(c->world, rank / K, rank, &c->node));
    /* A supernode must share memory: refuse a K that spans hosts, on every rank. */
    MPI_Comm shm;
    int size, shm_size;
    BASIN_MPI(MPI_Comm_split_type(c->node, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &shm));
    MPI_Comm_size(c->node, &size);
    MPI_Comm_size(shm, &shm_size);
    MPI_Comm_free(&shm);
    int bad = shm_size != size, any_bad = 0;
    BASIN_MPI(MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_LOR, c->world));
    if (any_bad)
        return basin_error(BASIN_ERR_USAGE, "supernode size %d groups ranks of different hosts; use a divisor of "
                                            "the ranks per host, or leave --supernode-size out for one "
                                            "supernode per host", K);
    return BASIN_OK;
}

int allreduce_comm_create(MPI_Comm world, const AllreduceConfig *cfg_in, AllreduceComm **out)
{
    AllreduceConfig cfg;
    if (cfg_in)
        cfg = *cfg_in;
    else
        allreduce_config_default(&cfg);
    *out = NULL;
    int provided = MPI_THREAD_SINGLE;
    BASIN_MPI(MPI_Query_thread(&provided));
    if (provided < MPI_THREAD_MULTIPLE)
        return basin_error(BASIN_ERR_USAGE, "the all-reduce module needs MPI_Init_thread(..., MPI_THREAD_MULTIPLE, ...)");
    if (cfg.supernode_size < 0) return basin_error(BASIN_ERR_USAGE, "supernode size must be >= 0");

    AllreduceComm *c = basin_calloc(1, sizeof *c);
    if (!c) return BASIN_ERR_RUNTIME;
    c->world = c->node = c->cross = MPI_COMM_NULL;
    c->max_msg = cfg.max_message_count && cfg.max_message_count < INT_MAX ? cfg.max_message_count : INT_MAX;
    int st = BASIN_OK;
    AllreduceTopology *t = &c->topo;

    BASIN_MPI_GOTO(st, MPI_Comm_dup(world, &c->world), fail);
    BASIN_MPI_GOTO(st, MPI_Comm_set_errhandler(c->world, MPI_ERRORS_RETURN), fail);
    MPI_Comm_rank(c->world, &t->world_rank);
    MPI_Comm_size(c->world, &t->world_size);
    if ((st = make_node_comm(c, cfg.supernode_size))) goto fail;
    BASIN_MPI_GOTO(st, MPI_Comm_set_errhandler(c->node, MPI_ERRORS_RETURN), fail);
    MPI_Comm_rank(c->node, &t->local_rank);
    MPI_Comm_size(c->node, &t->local_size);
    BASIN_MPI_GOTO(st, MPI_Comm_split(c->world, t->local_rank, t->world_rank, &c->cross), fail);
    BASIN_MPI_GOTO(st, MPI_Comm_set_errhandler(c->cross, MPI_ERRORS_RETURN), fail);
    MPI_Comm_rank(c->cross, &c->cross_rank);
    MPI_Comm_size(c->cross, &c->cross_size);

    /* Local rank 0's cross communicator has one member per supernode. */
    int id[2] = {c->cross_rank, c->cross_size};
    BASIN_MPI_GOTO(st, MPI_Bcast(id, 2, MPI_INT, 0, c->node), fail);
    t->node = id[0];
    t->nodes = id[1];
    c->spin_ns = ar_spin_ns(t);
    BASIN_MPI_GOTO(st, MPI_Allreduce(&t->local_size, &t->min_local_size, 1, MPI_INT, MPI_MIN, c->world), fail);

    c->node_world = basin_calloc((size_t)t->local_size, sizeof(int));
    c->cross_world = basin_calloc((size_t)c->cross_size, sizeof(int));
    c->slots = basin_calloc((size_t)t->local_size, sizeof *c->slots);
    if (!c->node_world || !c->cross_world || !c->slots) {
        st = BASIN_ERR_RUNTIME;
        goto fail;
    }
    BASIN_MPI_GOTO(st, MPI_Allgather(&t->world_rank, 1, MPI_INT, c->node_world, 1, MPI_INT, c->node), fail);
    BASIN_MPI_GOTO(st, MPI_Allgather(&t->world_rank, 1, MPI_INT, c->cross_world, 1, MPI_INT, c->cross), fail);

    int idx;
    if ((st = ar_window_create(c, sizeof(ArSlot) / sizeof(float), &idx))) goto fail;
    for (int j = 0; j < t->local_size; j++) c->slots[j] = (ArSlot *)c->wins[idx].base[j];
    ArSlot *mine = c->slots[t->local_rank];
    memset((char *)mine + sizeof mine->arrived, 0, sizeof *mine - sizeof mine->arrived);
    atomic_store_explicit(&mine->arrived, 0, memory_order_relaxed);
    mine->win = -1;
    BASIN_MPI_GOTO(st, MPI_Barrier(c->node), fail);

    if ((st = watch_start(c, cfg.timeout_s))) goto fail;
    if ((st = ar_engine_init(c, cfg.queue_capacity > 0 ? cfg.queue_capacity : 256))) goto fail;
    *out = c;
    return BASIN_OK;
fail:
    comm_destroy(c);
    return st;
}

void allreduce_comm_free(AllreduceComm *c)
{
    if (!c) return;
    ar_engine_stop(c);
    comm_destroy(c);
}
