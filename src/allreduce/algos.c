/* The table of algorithms, the MPI baseline, "auto", and plan/run. */
#include "allreduce/internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- mpi: MPI_Allreduce -------------------------------------------------- */
/* The library's own choice (Open MPI 4.1: coll/tuned). Messages above
 * max_message_count floats are reduced as several MPI_Allreduce calls.
 * The watchdog covers it but cannot name a peer: MPI hides who it waits on. */

typedef struct MpiState {
    size_t count;
} MpiState;

static int mpi_plan(AllreduceComm *c, size_t count, unsigned flags, void **state)
{
    MpiState *m = basin_calloc(1, sizeof *m);
    if (!m) return BASIN_ERR_RUNTIME;
    m->count = count;
    *state = m;
    return BASIN_OK;
}

/* On the progress engine's thread the baseline waits like every other
 * algorithm (MPI_Iallreduce, then ar_waitall: spin briefly, then sleep).
 * Inside MPI_Allreduce Open MPI polls without ever sleeping, and on a host
 * with more runnable threads than cores the polling progress threads of
 * ranks already in the next collective kept the ranks they waited for off
 * the cores: on the simulated cluster (2 cores, 2 busy loops beside it)
 * about half of the async test runs stalled for 5 s to over 120 s. A
 * caller's own blocking run keeps MPI_Allreduce, the benchmark's baseline. */
static int mpi_run(AllreduceComm *c, void *state, const float *send, float *recv)
{
    size_t n = ((MpiState *)state)->count;
    int step = 0, nonblocking = ar_on_engine_thread();
    for (size_t off = 0; off < n; off += c->max_msg, step++) {
        size_t k = n - off < c->max_msg ? n - off : c->max_msg; /* <= INT_MAX */
        const void *sbuf = send == recv ? MPI_IN_PLACE : (const void *)(send + off);
        ar_watch_begin(c, nonblocking ? "MPI_Iallreduce" : "MPI_Allreduce", step, -1);
        int rc;
        if (nonblocking) {
            MPI_Request req;
            rc = MPI_Iallreduce(sbuf, recv + off, (int)k, MPI_FLOAT, MPI_SUM, c->world, &req);
            if (rc == MPI_SUCCESS) rc = ar_waitall(c, 1, &req);
        } else {
            rc = MPI_Allreduce(sbuf, recv + off, (int)k, MPI_FLOAT, MPI_SUM, c->world);
        }
        ar_watch_end(c);
        if (rc != MPI_SUCCESS)
            return basin_mpi_fail(rc, nonblocking ? "MPI_Iallreduce" : "MPI_Allreduce", __FILE__, __LINE__);
    }
    return BASIN_OK;
}

static void mpi_free(void *state)
{
    free(state);
}

const AllreduceAlgo ar_algo_mpi = {.name = "mpi", .plan = mpi_plan, .run = mpi_run, .free = mpi_free};

/* ---- the table ----------------------------------------------------------- */

static const AllreduceAlgo *const table[] = {&ar_algo_rhd, &ar_algo_ring, &ar_algo_hier, &ar_algo_mpi};
enum { N_ALGOS = sizeof table / sizeof table[0] };

/* "auto", then the table's names: the one list (usage text, option checks
 * and messages all read it). */
static const char *names[N_ALGOS + 2];

const char *const *allreduce_algorithms(void)
{
    if (!names[0]) {
        for (int i = 0; i < N_ALGOS; i++) names[i + 1] = table[i]->name;
        names[0] = "auto";
    }
    return names;
}

void allreduce_algorithms_text(char *buf, size_t len, const char *last_word)
{
    const char *const *n = allreduce_algorithms();
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; n[i] && used < len; i++) {
        if (i > 0 && !n[i + 1] && last_word)
            used += (size_t)snprintf(buf + used, len - used, " %s %s", last_word, n[i]);
        else
            used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? ", " : "", n[i]);
    }
}

/* ---- auto ---------------------------------------------------------------- */
/* Chosen from bench/allreduce (bench/results/allreduce.md; 2 cores shared
 * with other jobs, so single points are noisy, the trends below are not):
 *  - one supernode: hier at every size. Reducing straight out of the peers'
 *    memory beat MPI_Allreduce from 4 KiB to 256 MiB with window buffers
 *    (no copy, no message: 4-10x at >= 16 MiB), and also with private
 *    buffers, where hier copies in once;
 *  - several supernodes (4 simulated hosts x 2 ranks, 1 Gbit/s): hier at
 *    every size. For shards below 1 MiB (2 MiB buffers with 2 ranks per
 *    host) it runs rhd across supernodes (fewest latency terms), above
 *    that the pipelined ring (hier.c), which kept the links at
 *    ~95% of TCP's rate: 0.073-0.077 GB/s algbw at >= 16 MiB against
 *    0.064-0.067 GB/s for the world ring and 0.04-0.05 for MPI_Allreduce. The
 *    world ring moves 2 (P-1)/P of the buffer through every host link
 *    instead of 2 (S-1)/S, so it never caught up;
 *  - one rank per supernode: hier is rhd or ring across supernodes then.
 * The choice depends only on the count and the topology, which every rank
 * sees alike, so all ranks choose the same algorithm. */
static const AllreduceAlgo *auto_choose(const AllreduceComm *c, size_t count, unsigned flags)
{
    (void)count;
    (void)flags;
    if (c->topo.world_size == 1) return &ar_algo_rhd;
    return &ar_algo_hier;
}

/* ---- plan / run ---------------------------------------------------------- */

static int run_blocking(const ArJob *job);

int allreduce_plan(AllreduceComm *c, const char *algo, size_t count, unsigned flags, AllreducePlan **out)
{
    *out = NULL;
    const AllreduceAlgo *a = NULL;
    if (!algo || !strcmp(algo, "auto")) {
        a = auto_choose(c, count, flags);
    } else {
        for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
            if (!strcmp(algo, table[i]->name)) a = table[i];
    }
    if (!a) {
        char list[128];
        allreduce_algorithms_text(list, sizeof list, NULL);
        return basin_error(BASIN_ERR_USAGE, "unknown all-reduce algorithm '%s' (choose %s)", algo, list);
    }
    if ((flags & ALLREDUCE_WIRE_BF16) && (flags & ALLREDUCE_WIRE_FP16))
        return basin_error(BASIN_ERR_USAGE, "all-reduce: choose one wire format, bf16 or fp16");
    if (ar_wire_kind(flags) != AR_WIRE_FP32 && a == &ar_algo_mpi)
        return basin_error(BASIN_ERR_USAGE, "all-reduce mpi sends fp32 only; --wire %s needs hier, rhd or ring",
                           ar_wire_name(ar_wire_kind(flags)));
    /* Planning may create shared windows: not while requests are in flight. */
    TRY(allreduce_wait_all(c));
    AllreducePlan *p = basin_calloc(1, sizeof *p);
    if (!p) return BASIN_ERR_RUNTIME;
    p->comm = c;
    p->algo = a;
    p->count = count;
    p->flags = flags;
    int st = a->plan(c, count, flags, &p->state);
    if (st) {
        free(p);
        return st;
    }
    *out = p;
    return BASIN_OK;
}

const char *allreduce_plan_algorithm(const AllreducePlan *p)
{
    return p->algo->name;
}

size_t allreduce_plan_count(const AllreducePlan *p)
{
    return p->count;
}

const char *allreduce_plan_wire(const AllreducePlan *p)
{
    return ar_wire_name(ar_wire_kind(p->flags));
}

int ar_wire_kind(unsigned flags)
{
    if (flags & ALLREDUCE_WIRE_BF16) return AR_WIRE_BF16;
    if (flags & ALLREDUCE_WIRE_FP16) return AR_WIRE_FP16;
    return AR_WIRE_FP32;
}

int allreduce_wire_parse(const char *name, unsigned *flags)
{
    if (!name) return -1;
    if (!strcmp(name, "fp32")) *flags = 0;
    else if (!strcmp(name, "bf16")) *flags = ALLREDUCE_WIRE_BF16;
    else if (!strcmp(name, "fp16")) *flags = ALLREDUCE_WIRE_FP16;
    else return -1;
    return 0;
}

void allreduce_plan_free(AllreducePlan *p)
{
    if (!p) return;
    allreduce_wait_all(p->comm);
    p->algo->free(p->state);
    free(p);
}

int ar_check_buffers(const AllreducePlan *p, const float *send, float *recv)
{
    if (!p) return basin_error(BASIN_ERR_USAGE, "all-reduce: no plan");
    if (p->count == 0) return BASIN_OK;
    if (!send || !recv) return basin_error(BASIN_ERR_USAGE, "all-reduce: NULL buffer for %zu floats", p->count);
    uintptr_t s = (uintptr_t)send, r = (uintptr_t)recv, bytes = p->count * sizeof(float);
    if (s != r && s < r + bytes && r < s + bytes)
        return basin_error(BASIN_ERR_USAGE, "all-reduce: send and recv overlap without being the same buffer");
    return BASIN_OK;
}

int ar_run_now(AllreducePlan *p, const float *send, float *recv)
{
    ArJob job = {.plan = p, .kind = AR_JOB_SUM, .send = send, .recv = recv};
    return ar_run_job(&job);
}

int ar_run_job(const ArJob *job)
{
    AllreducePlan *p = job->plan;
    AllreduceComm *c = p->comm;
    const AllreduceAlgo *a = p->algo;
    /* Every rank runs the same jobs, so every rank numbers them alike. */
    c->seq++;
    ar_watch_op(c, c->seq, a->name, p->count);
    switch (job->kind) {
    case AR_JOB_UPDATE:
        if (a->run_update) return a->run_update(c, p->state, job->recv, job->params, job->fn, job->arg);
        /* No sharding: sum everything, update everything, on every rank. */
        TRY(a->run(c, p->state, job->recv, job->recv));
        if (p->count) job->fn(job->arg, 0, p->count);
        return BASIN_OK;
    case AR_JOB_GATHER:
        return a->gather ? a->gather(c, p->state, job->recv) : BASIN_OK;
    case AR_JOB_SUM:
        break;
    }
    return a->run(c, p->state, job->send, job->recv);
}

/* Blocking: through the queue while the engine runs, so requests stay in order. */
static int run_blocking(const ArJob *job)
{
    if (job->plan->comm->engine.started) {
        AllreduceTicket t;
        TRY(ar_engine_submit(job, &t));
        return allreduce_wait(job->plan->comm, t);
    }
    return ar_run_job(job);
}

static int check_update(const AllreducePlan *p, const float *grads, const float *params, AllreduceUpdateFn fn)
{
    TRY(ar_check_buffers(p, grads, (float *)params));
    if (p->count && grads == params)
        return basin_error(BASIN_ERR_USAGE, "all-reduce update: grads and params are the same buffer");
    if (p->count && !fn) return basin_error(BASIN_ERR_USAGE, "all-reduce update: no update function");
    return BASIN_OK;
}

int allreduce_run_update(AllreducePlan *p, float *grads, float *params, AllreduceUpdateFn fn, void *arg)
{
    TRY(check_update(p, grads, params, fn));
    ArJob job = {.plan = p, .kind = AR_JOB_UPDATE, .recv = grads, .params = params, .fn = fn, .arg = arg};
    return run_blocking(&job);
}

int allreduce_start(AllreducePlan *p, const float *send, float *recv, AllreduceTicket *ticket)
{
    TRY(ar_check_buffers(p, send, recv));
    ArJob job = {.plan = p, .kind = AR_JOB_SUM, .send = send, .recv = recv};
    return ar_engine_submit(&job, ticket);
}

int allreduce_start_update(AllreducePlan *p, float *grads, float *params, AllreduceUpdateFn fn, void *arg,
                           AllreduceTicket *ticket)
{
    TRY(check_update(p, grads, params, fn));
    ArJob job = {.plan = p, .kind = AR_JOB_UPDATE, .recv = grads, .params = params, .fn = fn, .arg = arg};
    return ar_engine_submit(&job, ticket);
}

int allreduce_gather_owned(AllreducePlan *p, float *buf)
{
    TRY(ar_check_buffers(p, buf, buf));
    ArJob job = {.plan = p, .kind = AR_JOB_GATHER, .send = buf, .recv = buf};
    return run_blocking(&job);
}

int allreduce_run(AllreducePlan *p, const float *send, float *recv)
{
    TRY(ar_check_buffers(p, send, recv));
    ArJob job = {.plan = p, .kind = AR_JOB_SUM, .send = send, .recv = recv};
    return run_blocking(&job);
}
