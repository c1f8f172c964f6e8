/* All-reduce: every rank ends with the element-wise sum of all ranks' float
 * buffers, with the same bits on every rank.
 *
 * Topology. An AllreduceComm holds three communicators:
 *   world      a duplicate of the communicator it was created on;
 *   supernode  ranks sharing a host (MPI_Comm_split_type SHARED), or, when
 *              AllreduceConfig.supernode_size = K > 0, consecutive world ranks
 *              in groups of K (the last group may be smaller);
 *   cross      ranks with the same local index in different supernodes.
 * Supernodes may differ in size (3 + 2 ranks works).
 *
 * Algorithms, chosen by name (allreduce_algorithms() lists them):
 *   rhd   Rabenseifner: reduce-scatter by recursive halving, all-gather by
 *         recursive doubling; non-power-of-two worlds fold the extra ranks.
 *   ring  ring reduce-scatter + ring all-gather, pipelined in pieces.
 *   hier  shared-memory reduce-scatter inside the supernode, rhd (small
 *         shards) or a pipelined ring (large ones) across supernodes on
 *         each local rank's shard in parallel, shared-memory all-gather.
 *         Zero-copy when the buffer comes from allreduce_buffer_alloc.
 *   mpi   MPI_Allreduce (the baseline); MPI_Iallreduce on the progress thread,
 *         which waits by sleeping like the other algorithms.
 *   auto  hier, on every size and topology measured so far (algos.c says why);
 *         hier itself takes rhd or a ring across supernodes by shard size.
 * Every algorithm reduces each element exactly once, on its owner, in a
 * fixed order, and then copies the result, so all ranks hold the same bits.
 *
 * Plan once, run many: allreduce_plan computes every peer, offset and count
 * and allocates every buffer; allreduce_run only communicates and adds.
 *
 * Threads. The caller must initialize MPI with
 *     MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided)
 * and allreduce_comm_create refuses a lower level (BASIN_ERR_USAGE): the
 * progress thread (start/test/wait) makes MPI calls while the caller's thread
 * may make its own, and the watchdog thread calls MPI_Abort. All functions
 * of one AllreduceComm must be called from one thread (the trainer's).
 *
 * Collective calls (every rank of the world, same order, same arguments):
 * allreduce_comm_create/free, allreduce_buffer_alloc/free, allreduce_plan,
 * allreduce_plan_free, and every run/start.
 *
 * Watchdog. Every collective carries a sequence number. When one wait on a
 * peer (a message, a shared-memory barrier, MPI_Allreduce) lasts longer than
 * AllreduceConfig.timeout_s, the rank prints one line
 *   basin: rank 2: error: all-reduce watchdog: collective #7 (rhd, 1000
 *   floats) waited 5.0 s on rank 3 in reduce-scatter step 1; aborting
 * and calls MPI_Abort(world, ALLREDUCE_WATCHDOG_EXIT).
 */
#ifndef BASIN_ALLREDUCE_H
#define BASIN_ALLREDUCE_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

/* Exit code of a job aborted by the watchdog. */
#define ALLREDUCE_WATCHDOG_EXIT 3

typedef struct AllreduceComm AllreduceComm;
typedef struct AllreducePlan AllreducePlan;

typedef struct AllreduceConfig {
    int supernode_size;       /* 0: ranks sharing a host; K > 0: groups of K consecutive world ranks */
    double timeout_s;         /* watchdog limit on one wait; <= 0 turns the watchdog off */
    size_t max_message_count; /* most floats per MPI call (0: INT_MAX); larger messages are split */
    int queue_capacity;       /* requests in flight for allreduce_start (0: 256) */
} AllreduceConfig;

typedef struct AllreduceTopology {
    int world_rank, world_size;
    int node, nodes;           /* this rank's supernode index, number of supernodes */
    int local_rank, local_size; /* place inside the supernode */
    int min_local_size;        /* smallest supernode: the number of hier shards */
} AllreduceTopology;

/* MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, provided), returning its
 * code, after setting the transport defaults these algorithms are measured
 * with. Open MPI only, unless the environment already sets it (an
 * OMPI_MCA_ variable, which mpirun --mca and -x also set):
 *   btl_tcp_eager_limit = ALLREDUCE_TCP_EAGER_BYTES (1 MiB). Open MPI's
 *   default, 64 KiB, makes every larger message a rendezvous: the first
 *   fragment, an answer from the receiver's next MPI call, then the rest.
 *   The ring's 512 KiB pieces (and hier's ring between supernodes) waited on
 *   that answer once per piece: 8 simulated hosts at 1 Gbit/s reached
 *   84-86 % of the link bound at 16 MiB with 64 KiB and 91-93 % with 1 MiB,
 *   the rate of one bare TCP stream there (bench/results/allreduce-hosts.md).
 *   Receives are posted before the pieces arrive, so eager data lands
 *   without an extra copy; the cost is Open MPI's TCP fragment lists of
 *   1 MiB entries, only when TCP is in use (basin-bench-allreduce across 2
 *   simulated hosts: peak memory 42-43 MiB per process against 38-39).
 * A value in an Open MPI parameter file is overridden by these defaults; set
 * it with mpirun --mca or in the environment instead. */
enum { ALLREDUCE_TCP_EAGER_BYTES = 1 << 20 };
int allreduce_mpi_init(int *argc, char ***argv, int *provided);

/* Defaults: host supernodes, 300 s watchdog, INT_MAX messages, 256 requests. */
void allreduce_config_default(AllreduceConfig *cfg);

/* Collective over world. cfg may be NULL for the defaults. */
int allreduce_comm_create(MPI_Comm world, const AllreduceConfig *cfg, AllreduceComm **out);
/* Collective. Waits for outstanding requests and stops the threads; free the
 * plans and buffers made with it first. NULL is allowed. */
void allreduce_comm_free(AllreduceComm *c);
const AllreduceTopology *allreduce_topology(const AllreduceComm *c);

/* Collective: a buffer of count floats inside the supernode's shared-memory
 * window, 64-byte aligned. hier reduces (slices of) it in place without any
 * copy; other algorithms treat it as ordinary memory. NULL on failure. */
float *allreduce_buffer_alloc(AllreduceComm *c, size_t count);
/* Collective. */
void allreduce_buffer_free(AllreduceComm *c, float *buf);

/* NULL-terminated list of algorithm names. */
const char *const *allreduce_algorithms(void);
/* The same as text for messages: "auto, rhd, ring, hier, mpi", or with
 * last_word "or" (or "and"): "auto, rhd, ring, hier or mpi". */
void allreduce_algorithms_text(char *buf, size_t len, const char *last_word);

/* Balanced split of n elements into parts (hier's shards, rhd's halves, the
 * GPU all-reduce's shards): part i is [allreduce_part_start(n, parts, i),
 * allreduce_part_start(n, parts, i + 1)). */
static inline size_t allreduce_part_start(size_t n, size_t parts, size_t i)
{
    return (n / parts) * i + (i < n % parts ? i : n % parts);
}

/* Plan flags. */
enum {
    /* The caller promises to pass only in-place buffers (slices) from
     * allreduce_buffer_alloc: hier then allocates no staging copy, and a run
     * on other memory fails with BASIN_ERR_USAGE. */
    ALLREDUCE_WINDOW_ONLY = 1u,
    /* Reduced precision on the wire: the messages between ranks carry
     * 16-bit values, added in fp32 (ALLREDUCE_WIRE_* below). */
    ALLREDUCE_WIRE_BF16 = 2u,
    ALLREDUCE_WIRE_FP16 = 4u,
};

/* Wire formats (plan flags ALLREDUCE_WIRE_BF16 / _FP16; neither: fp32).
 *
 * Which messages: hier's step between supernodes (rhd or ring on each
 * shard) only; inside a supernode (shared memory) everything stays fp32.
 * rhd and ring have no supernode level: all their messages are 16-bit,
 * also between ranks of one host. mpi refuses a 16-bit wire
 * (BASIN_ERR_USAGE). Halves the bytes on the links between supernodes.
 *
 * Arithmetic: values are rounded to nearest, ties to even, when packed into
 * a message; received values are widened and added in fp32. Each element is
 * rounded at most once per message it travels in, and the rank that owns a
 * finished sum rounds it once and keeps the rounded value itself, so the
 * all-gather moves exact 16-bit values and every rank ends with the same
 * bits. Error per element: |result - exact sum| <= (R + 1) u sum_r |x_r|
 * plus fp32's own, with u = 2^-8 for bf16 and 2^-11 for fp16, and R the
 * number of messages a partial sum travels over P ranks on the wire:
 * rhd log2 P' (+1 when P is not a power of two P'), ring P - 1 (hier: the
 * same over its S supernodes). Inputs whose partial sums are all
 * representable in the format come out exact.
 *
 * fp16 scale: dynamic, per collective (per bucket). The ranks first agree on
 * M = max |value| over all their inputs (one MPI_MAX of one float on the
 * communicator of the wire step), then every message carries x * 2^e with
 * 2^e the power of two such that P M 2^e < 2^15: no partial sum can
 * overflow (fp16's maximum is 65504), the largest values keep fp16's full
 * precision, and gradients of any magnitude (1e-8 or 1e5) scale into range.
 * Values below about M P 2^-39 flush to zero. The scaling is exact (a power
 * of two). bf16 has fp32's exponent range and needs no scale. */
/* 0 and *flags set (0, ALLREDUCE_WIRE_BF16 or _FP16) for "fp32", "bf16",
 * "fp16"; -1 otherwise. */
int allreduce_wire_parse(const char *name, unsigned *flags);

/* Collective: plan a sum of count floats with algorithm algo ("auto" picks).
 * An unknown name is BASIN_ERR_USAGE. */
int allreduce_plan(AllreduceComm *c, const char *algo, size_t count, unsigned flags,
                   AllreducePlan **out);
/* The algorithm that runs ("auto" resolved). */
const char *allreduce_plan_algorithm(const AllreducePlan *p);
size_t allreduce_plan_count(const AllreducePlan *p);
/* "fp32", "bf16" or "fp16". */
const char *allreduce_plan_wire(const AllreducePlan *p);
void allreduce_plan_free(AllreducePlan *p);

/* Blocking sum: recv[i] = sum over ranks of send[i], i < count.
 * send == recv is in place; otherwise the two must not overlap. Either may be
 * a slice of an allreduce_buffer_alloc buffer or any other memory. */
int allreduce_run(AllreducePlan *p, const float *send, float *recv);

/* Sharded update: reduce-scatter, update, all-gather.
 *
 * An optimizer that updates each element from its summed gradient alone
 * (SGD with momentum) need not run on every rank over every element: the
 * owner of a part, which has just summed it, can update it and hand out the
 * new parameters instead of the sums. allreduce_run_update sums grads,
 * calls fn(arg, lo, hi) for each part [lo, hi) (offsets into the plan's
 * count) that this rank owns, once grads[lo, hi) holds the sum, and then
 * copies every other part of params from its owner. fn must write
 * params[lo, hi) (and any state it keeps for those elements) from
 * grads[lo, hi) and params[lo, hi) only.
 *
 * Afterwards params holds the owners' results, the same bits on every rank;
 * grads holds the sum on the owned parts only. hier shards the work inside
 * the supernode: each of its L local ranks updates 1/L of the buffer
 * (the shard it reduced), and the all-gather moves parameters instead of
 * sums, so each rank touches 1/L of the optimizer state. The other
 * algorithms, and hier with one rank per supernode, sum everything and call
 * fn once on [0, count) on every rank.
 *
 * grads and params must not overlap; with hier and more than one rank per
 * supernode both must lie in allreduce_buffer_alloc buffers
 * (BASIN_ERR_USAGE otherwise). fn runs on the thread that runs the request
 * (the progress thread for allreduce_start_update). */
typedef void (*AllreduceUpdateFn)(void *arg, size_t lo, size_t hi);
int allreduce_run_update(AllreducePlan *p, float *grads, float *params, AllreduceUpdateFn fn, void *arg);

/* Collective: copy every part of buf this rank does not own (in the sense of
 * allreduce_run_update) from its owner, so per-element optimizer state kept
 * by fn (momentum) is whole on every rank, e.g. before a checkpoint. A no-op
 * where the plan does not shard. Same buffer rules as grads above. */
int allreduce_gather_owned(AllreducePlan *p, float *buf);

/* Non-blocking use, driven by one progress thread per AllreduceComm.
 * Requests run and complete in submission order; a ticket t is complete when
 * every ticket before it is. send/recv must stay untouched until complete.
 * start blocks only while queue_capacity requests are in flight. */
typedef uint64_t AllreduceTicket;
int allreduce_start(AllreducePlan *p, const float *send, float *recv, AllreduceTicket *ticket);
/* allreduce_run_update as a request; the same ordering rules. */
int allreduce_start_update(AllreducePlan *p, float *grads, float *params, AllreduceUpdateFn fn, void *arg,
                           AllreduceTicket *ticket);
/* *done = 1 when t has completed (never blocks). */
int allreduce_test(AllreduceComm *c, AllreduceTicket t, int *done);
/* Block until t completes; its status (a failed request fails every later one). */
int allreduce_wait(AllreduceComm *c, AllreduceTicket t);
/* Block until every started request completes. */
int allreduce_wait_all(AllreduceComm *c);

#endif
