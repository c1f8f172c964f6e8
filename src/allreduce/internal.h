/* Shared by the files of src/allreduce; not part of the public API. */
#ifndef BASIN_ALLREDUCE_INTERNAL_H
#define BASIN_ALLREDUCE_INTERNAL_H

#include "allreduce/allreduce.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/mpi_check.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

/* MPI calls are checked with BASIN_MPI / BASIN_MPI_GOTO (core/mpi_check.h):
 * MPI_ERRORS_RETURN is set on every communicator and window this module
 * owns. */

/* ---- shared-memory windows ---------------------------------------------- */

/* One MPI_Win_allocate_shared over the supernode: count floats per rank. */
typedef struct ArWindow {
    MPI_Win win;
    float **base; /* (local_size) each local rank's segment, mapped here */
    size_t count; /* floats per rank */
    int in_use;
} ArWindow;

/* Per local rank, in window 0: the barrier counter and where this rank's data
 * of the running collective lives (so peers can read it). */
typedef struct ArSlot {
    _Atomic uint64_t arrived;
    char pad0[56];
    int32_t win;     /* index into AllreduceComm.wins */
    uint32_t pad1;
    uint64_t offset; /* floats from that window's segment start */
    uint64_t count;  /* plan count, checked against peers */
    uint64_t seq;    /* collective sequence number, checked against peers */
    int32_t pwin;    /* allreduce_run_update: where params live (win, offset) */
    uint32_t pad2;
    uint64_t poffset;
    char pad3[16];
} ArSlot;

/* ---- watchdog ----------------------------------------------------------- */

typedef struct ArWatch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    int running, stop;
    double timeout_s;
    /* the wait in progress */
    int armed;
    uint64_t seq;
    const char *algo;
    size_t count;
    const char *phase;
    int step;
    int peer; /* world rank, or -1 when MPI hides it */
    double since;
} ArWatch;

/* ---- progress engine ---------------------------------------------------- */

/* One request: a sum (send -> recv), a sharded update (recv = grads, params,
 * fn, arg) or a gather of owned parts (recv = buf). */
typedef enum { AR_JOB_SUM, AR_JOB_UPDATE, AR_JOB_GATHER } ArJobKind;

typedef struct ArJob {
    AllreducePlan *plan;
    ArJobKind kind;
    const float *send;
    float *recv;
    float *params;
    AllreduceUpdateFn fn;
    void *arg;
} ArJob;

typedef struct ArEngine {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    ArJob *queue; /* (cap) ring of submitted jobs */
    int cap;
    int started, stop;
    uint64_t submitted;          /* tickets handed out: 1..submitted */
    _Atomic uint64_t completed;  /* tickets finished: 1..completed */
    _Atomic int error;           /* first failure, sticky */
    uint64_t failed_at;          /* its ticket, 0 if none */
} ArEngine;

/* ---- the communicator context ------------------------------------------- */

struct AllreduceComm {
    MPI_Comm world, node, cross;
    AllreduceTopology topo;
    int *node_world;  /* (local_size) world rank of each local rank */
    int *cross_world; /* (size of cross) world rank of each cross rank */
    int cross_size, cross_rank;
    size_t max_msg;   /* most floats per MPI call */
    ArWindow *wins;   /* wins[0] holds the ArSlots */
    int nwins, capwins;
    ArSlot **slots;   /* (local_size) */
    uint64_t epoch;   /* shared-memory barriers passed */
    uint64_t seq;     /* collectives run */
    long spin_ns;     /* a wait spins this long before it sleeps (ar_spin_ns) */
    ArWatch watch;
    ArEngine engine;
};

/* ---- algorithms: one signature, plan once, run many --------------------- */

typedef struct AllreduceAlgo {
    const char *name;
    int (*plan)(AllreduceComm *c, size_t count, unsigned flags, void **state);
    int (*run)(AllreduceComm *c, void *state, const float *send, float *recv);
    void (*free)(void *state);
    /* Sharded update and gather (allreduce.h); NULL: the algorithm does not
     * shard (run, then fn on everything; gather is a no-op). */
    int (*run_update)(AllreduceComm *c, void *state, float *grads, float *params, AllreduceUpdateFn fn, void *arg);
    int (*gather)(AllreduceComm *c, void *state, float *buf);
} AllreduceAlgo;

struct AllreducePlan {
    AllreduceComm *comm;
    const AllreduceAlgo *algo;
    size_t count;
    unsigned flags; /* ALLREDUCE_* plan flags, wire format included */
    void *state;
};

extern const AllreduceAlgo ar_algo_rhd, ar_algo_ring, ar_algo_hier, ar_algo_mpi;

/* ---- reduced-precision messages (wire.c) ------------------------------- */

enum { AR_WIRE_FP32 = 0, AR_WIRE_BF16 = 1, AR_WIRE_FP16 = 2 };

/* The format of one collective's messages and, for fp16, its scale. */
typedef struct ArWire {
    int kind;
    double scale, unscale; /* fp16: 2^e and 2^-e; 1 otherwise */
} ArWire;

/* AR_WIRE_* from plan flags. */
int ar_wire_kind(unsigned flags);
const char *ar_wire_name(int kind);
/* fp16: agree on the scale for x[0, n) over comm (size ranks; every rank
 * calls it); other kinds: scale 1, no message. */
int ar_wire_scale(AllreduceComm *c, MPI_Comm comm, int size, const float *x, size_t n, ArWire *w);
/* dst = 16-bit(src), rounded to nearest even. */
void ar_wire_pack(const ArWire *w, uint16_t *dst, const float *src, size_t n);
/* dst = fp32(src). */
void ar_wire_unpack(const ArWire *w, float *dst, const uint16_t *src, size_t n);
/* dst = a + fp32(b); dst may be a. */
void ar_wire_add(const ArWire *w, float *dst, const float *a, const uint16_t *b, size_t n);
/* x = fp32(16-bit(x)): the owner's rounding before it hands a sum out. */
void ar_wire_round(const ArWire *w, float *x, size_t n);

/* rhd on any communicator (hier runs it on the cross communicator).
 * world_of maps comm ranks to world ranks for the watchdog (NULL: identity).
 * wire: AR_WIRE_*, the format of every message. */
typedef struct ArRhd ArRhd;
int ar_rhd_plan_on(AllreduceComm *c, MPI_Comm comm, const int *world_of, size_t count, int wire, ArRhd **out);
int ar_rhd_run_on(AllreduceComm *c, ArRhd *r, const float *send, float *recv);
void ar_rhd_free_on(ArRhd *r);

/* ring on any communicator (hier runs it across supernodes for large shards). */
typedef struct ArRing ArRing;
int ar_ring_plan_on(AllreduceComm *c, MPI_Comm comm, const int *world_of, size_t count, int wire, ArRing **out);
int ar_ring_run_on(AllreduceComm *c, ArRing *r, const float *send, float *recv);
void ar_ring_free_on(ArRing *r);

/* BASIN_ERR_USAGE unless send/recv are non-NULL and equal or disjoint. */
int ar_check_buffers(const AllreducePlan *p, const float *send, float *recv);
/* Run one plan now, on the calling thread (the engine's or the caller's). */
int ar_run_now(AllreducePlan *p, const float *send, float *recv);
/* Run one request of any kind now, on the calling thread. */
int ar_run_job(const ArJob *job);
/* Queue one request (allreduce_start and friends). */
int ar_engine_submit(const ArJob *job, AllreduceTicket *ticket);
/* Non-zero on a progress engine's thread. */
int ar_on_engine_thread(void);

/* ---- helpers (comm.c) --------------------------------------------------- */

void ar_watch_begin(AllreduceComm *c, const char *phase, int step, int peer);
void ar_watch_end(AllreduceComm *c);
/* Set the collective the following waits belong to. */
void ar_watch_op(AllreduceComm *c, uint64_t seq, const char *algo, size_t count);

/* Waiting without holding a core: spin briefly (fast peers answer within
 * microseconds), then sleep with exponential backoff (comm.c says why). */
typedef struct ArBackoff {
    double start, spin_s;
    long sleep_ns;
    unsigned polls;
} ArBackoff;
/* How long a wait spins before sleeping, for this topology. */
long ar_spin_ns(const AllreduceTopology *t);
void ar_backoff_init(ArBackoff *b, long spin_ns);
void ar_backoff_pause(ArBackoff *b);
/* MPI_Waitall through MPI_Testall and ar_backoff_pause. */
int ar_waitall(AllreduceComm *c, int n, MPI_Request *reqs);

/* Number of MPI requests one message of count floats needs. */
size_t ar_chunks(const AllreduceComm *c, size_t count);
/* Send scount floats to dst and receive rcount floats from src on comm (tag),
 * splitting into chunks of at most c->max_msg; reqs holds
 * ar_chunks(scount) + ar_chunks(rcount) requests. Waits for both. */
int ar_exchange(AllreduceComm *c, MPI_Comm comm, const float *sbuf, size_t scount, int dst,
                float *rbuf, size_t rcount, int src, int tag, MPI_Request *reqs,
                int src_world, const char *phase, int step);

/* ar_exchange for elements of esize bytes of MPI type type. */
int ar_exchange_typed(AllreduceComm *c, MPI_Comm comm, const void *sbuf, size_t scount, int dst, void *rbuf,
                      size_t rcount, int src, int tag, MPI_Datatype type, size_t esize, MPI_Request *reqs,
                      int src_world, const char *phase, int step);

/* Shared-memory barrier over the supernode (watched, names the late peer). */
void ar_node_barrier(AllreduceComm *c, const char *phase);
/* Index of the window holding [p, p + count) in this rank's segment, or -1. */
int ar_window_of(const AllreduceComm *c, const float *p, size_t count, size_t *offset);
/* Collective over the supernode: a new window of count floats per rank. */
int ar_window_create(AllreduceComm *c, size_t count, int *index);
void ar_window_release(AllreduceComm *c, int index);

/* dst[i] += src[i] */
void ar_add(float *restrict dst, const float *restrict src, size_t n);
/* dst[i] = a[i] + b[i]; dst may be a (same elements), b is separate. */
void ar_add3(float *dst, const float *a, const float *restrict b, size_t n);

/* progress.c: the engine thread, started on first use. */
int ar_engine_init(AllreduceComm *c, int capacity);
void ar_engine_stop(AllreduceComm *c);


#endif
