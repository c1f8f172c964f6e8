/* The GPU all-reduce: nccl (the baseline) and hier (NCCL inside the
 * supernode, host-staged rhd across supernodes). Plain C against the CUDA
 * runtime and NCCL headers: it launches no kernel of its own.
 *
 * hier, on a vector of n floats, L local ranks per supernode (Lmin in the
 * smallest), S supernodes:
 *
 *   supernode A (2 GPUs)               supernode B (2 GPUs)
 *   a0 [s0 s1]  a1 [s0 s1]             b0 [s0 s1]  b1 [s0 s1]
 *    1: NCCL reduce-scatter: a0 holds s0 summed over A, a1 s1 (same in B)
 *    2: a0 <-- host-staged rhd on s0 --> b0,  a1 <-- ... on s1 --> b1
 *       chunk k:  D2H (copy stream) | rhd on pinned memory | H2D (stream)
 *                 k+1 copies down while k is on the network
 *    3: NCCL all-gather: a0 gets s1 from a1, a1 gets s0 from a0 (same in B)
 *
 * Shards (as src/allreduce/hier.c): n is cut into Lmin shards,
 * shard j = [part(j), part(j+1)), part(j) = (n / Lmin) j + min(j, n % Lmin);
 * local rank j < Lmin owns shard j in every supernode, so the ranks with
 * local index j (one per supernode) form the cross communicator of shard j.
 * Local ranks >= Lmin own nothing: they contribute in step 1 and receive in
 * step 3.
 *
 * Step 1 and 3 inside the supernode, two ways:
 *   - L == Lmin and L divides n: ncclReduceScatter / ncclAllGather in place
 *     (the shards are then n/L each, exactly the part() shards);
 *   - otherwise (uneven shards, or uneven supernodes, where L shards would
 *     not match the Lmin shards the other supernodes cut): one ncclReduce
 *     to owner j per shard, then one ncclBroadcast from owner j per shard,
 *     each batch inside ncclGroupStart/End. A ring reduce of m bytes moves
 *     about m bytes per link, so Lmin reduces of n/Lmin cost about what a
 *     reduce-scatter costs (n against (L-1)/L n), with more launches; no
 *     padding, no scratch buffer, no copy of the vector.
 *
 * Step 2 (S > 1): Open MPI here is not CUDA-aware, so each owner copies its
 * shard to pinned host memory in 1 MiB chunks on a second stream (all
 * chunks are queued at once, one event each), sums chunk k with basin's rhd
 * across supernodes (an AllreduceComm on the cross communicator with
 * supernode_size 1: no shared memory, the CPU watchdog) while chunks k+1...
 * are still being copied down, and queues chunk k's copy back on the
 * caller's stream, where it overlaps with the rhd of chunk k+1 and precedes
 * step 3. 1 MiB: large enough that the rhd's 2 log S latencies per chunk
 * stay small next to its transfer at network speed (~1 ms per MiB at
 * 10 Gbit/s), small enough that the first copy down (~40 us at PCIe 4)
 * and the last copy up are short before and after the network part.
 * rhd plans are per chunk count: the full chunk is planned at create, other
 * (tail) counts on first use and kept in a small cache (plan once, run many
 * for a trainer's fixed buckets; rhd planning sends no message).
 *
 * 16-bit wire (ALLREDUCE_WIRE_BF16 / _FP16): the rhd plans of step 2 are
 * made with the wire flag, so the messages between supernodes carry 16-bit
 * values and the host adds them in fp32 (src/allreduce/wire.c); each chunk
 * is one rhd run, so fp16's scale is agreed per 1 MiB chunk (one MPI_MAX of
 * a float across supernodes). Steps 1 and 3 (NCCL, NVLink) and the PCIe
 * copies stay fp32: only the network, the slowest link, carries half the
 * bytes.
 *
 * Same bits everywhere: each element is summed once by NCCL on its owner
 * (deterministic for a fixed communicator and count), once per rhd block
 * across supernodes (rhd reduces each block on one rank and copies it),
 * and then only copied (all-gather / broadcast, rhd's all-gather, H2D).
 *
 * Cost per rank (β_nv NVLink, β_pcie PCIe, β_net network, per float):
 *   step 1, 3   (L-1)/L n β_nv each (ring), L-1 α_nv each
 *   step 2      n/L (β_pcie down + up, overlapped with the network) +
 *               2 (S-1)/S n/L β_net + 2 log S α per chunk
 * Memory: pinned host staging of ceil(max_count / Lmin) floats on owners
 * (only when S > 1), one event per 1 MiB chunk of it, rhd scratch of half a
 * chunk per cached plan.
 */
#include "allreduce_gpu.h"

#include <cuda_runtime_api.h>
#include <limits.h>
#include <nccl.h>
#include <sched.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/error.h"
#include "core/mpi_check.h"
#include "cuda_check.h"

enum {
    CHUNK_COUNT = 1 << 18, /* floats per staged chunk: 1 MiB */
    PLAN_CACHE = 8,        /* rhd plans kept: slot 0 the full chunk, the rest tails */
    BUS_ID_LEN = 32,       /* "0000:3b:00.0" and room to spare */
};

enum { ALGO_NCCL, ALGO_HIER };

typedef struct PlanSlot {
    size_t count;
    AllreducePlan *plan;
} PlanSlot;

struct GpuAllreduce {
    MPI_Comm world;         /* a duplicate of the caller's */
    int algo;               /* ALGO_NCCL or ALGO_HIER */
    unsigned wire;          /* ALLREDUCE_WIRE_* of the rhd across supernodes, or 0 */
    AllreduceTopology topo; /* a copy */
    size_t max_count;
    double timeout_s;
    unsigned long long seq; /* runs so far, for the watchdog line */
    ncclComm_t nccl;        /* nccl: over world; hier: over the supernode when L > 1; else NULL */
    /* hier across supernodes, owners only (local_rank < min_local_size, nodes > 1) */
    AllreduceComm *cross;
    PlanSlot plans[PLAN_CACHE];
    unsigned next_evict;
    float *host;             /* (max_shard) pinned staging */
    size_t max_shard;
    cudaStream_t copy;       /* the copies down */
    cudaEvent_t ready;       /* step 1 done on the caller's stream */
    cudaEvent_t *chunk_done; /* (max_chunks) chunk k is on the host */
    size_t max_chunks;
    /* gpu_allreduce_start / join (made on the first start) */
    cudaStream_t side;       /* the queued sums run here */
    cudaEvent_t handed;      /* the caller's stream reached a start */
    cudaEvent_t summed;      /* the side stream reached a join */
    int pending;             /* sums queued on side since the last join */
};

/* ---- checks -------------------------------------------------------------------------------- */

static int nccl_fail(ncclResult_t r, ncclComm_t comm, const char *call, const char *file, int line)
{
    const char *last = ncclGetLastError(comm);
    return basin_error_at(BASIN_ERR_RUNTIME, file, line, "%s failed: %s%s%s%s", call, ncclGetErrorString(r),
                          last && *last ? " (" : "", last && *last ? last : "", last && *last ? ")" : "");
}

#define CU(call)                                                                       \
    do {                                                                               \
        cudaError_t cu_e_ = (call);                                                    \
        if (cu_e_ != cudaSuccess) return basin_cuda_fail(cu_e_, #call, __FILE__, __LINE__);  \
    } while (0)
#define CU_GOTO(st, call, label)                                                       \
    do {                                                                               \
        cudaError_t cu_e_ = (call);                                                    \
        if (cu_e_ != cudaSuccess) {                                                    \
            (st) = basin_cuda_fail(cu_e_, #call, __FILE__, __LINE__);                        \
            goto label;                                                                \
        }                                                                              \
    } while (0)
/* Cleanup paths: report and go on freeing the rest. */
#define CU_WARN(call)                                                                  \
    do {                                                                               \
        cudaError_t cu_e_ = (call);                                                    \
        if (cu_e_ != cudaSuccess) (void)basin_cuda_fail(cu_e_, #call, __FILE__, __LINE__);   \
    } while (0)
#define NC(comm, call)                                                                          \
    do {                                                                                        \
        ncclResult_t nc_r_ = (call);                                                            \
        if (nc_r_ != ncclSuccess) return nccl_fail(nc_r_, (comm), #call, __FILE__, __LINE__);  \
    } while (0)
#define NC_WARN(comm, call)                                                                     \
    do {                                                                                        \
        ncclResult_t nc_r_ = (call);                                                            \
        if (nc_r_ != ncclSuccess) (void)nccl_fail(nc_r_, (comm), #call, __FILE__, __LINE__);   \
    } while (0)
/* Every rank returns the worst status of all: a step that failed on one
 * rank must not leave the others waiting in the next collective. */
static int agree(MPI_Comm world, int st)
{
    int worst = st;
    BASIN_MPI(MPI_Allreduce(&st, &worst, 1, MPI_INT, MPI_MAX, world));
    return worst;
}

static const char *algo_name(int algo)
{
    return algo == ALGO_NCCL ? "nccl" : "hier";
}

/* Wait until ev (or, when ev is NULL, all of stream) has completed. With a
 * timeout or an NCCL communicator it polls: past timeout_s it reports and
 * aborts the job (a hung NCCL kernel cannot be cancelled), and an
 * asynchronous NCCL error (a peer that died) ends the wait with that error. */
static int wait_gpu(GpuAllreduce *g, cudaEvent_t ev, cudaStream_t stream, size_t count, const char *what)
{
    if (g->timeout_s <= 0 && !g->nccl) {
        if (ev) CU(cudaEventSynchronize(ev));
        else CU(cudaStreamSynchronize(stream));
        return BASIN_OK;
    }
    const double t0 = basin_clock();
    for (unsigned long polls = 0;; polls++) {
        cudaError_t e = ev ? cudaEventQuery(ev) : cudaStreamQuery(stream);
        if (e == cudaSuccess) return BASIN_OK;
        if (e != cudaErrorNotReady)
            return basin_cuda_fail(e, ev ? "cudaEventQuery(chunk event)" : "cudaStreamQuery(stream)", __FILE__, __LINE__);
        if (g->nccl && polls % 64 == 0) {
            ncclResult_t async = ncclSuccess;
            NC(g->nccl, ncclCommGetAsyncError(g->nccl, &async));
            if (async != ncclSuccess && async != ncclInProgress)
                return nccl_fail(async, g->nccl, "NCCL (asynchronous error while waiting)", __FILE__, __LINE__);
        }
        double waited = basin_clock() - t0;
        if (g->timeout_s > 0 && waited > g->timeout_s) {
            basin_error(BASIN_ERR_RUNTIME, "gpu all-reduce watchdog: run #%llu (%s, %zu floats) waited %.1f s for %s; "
                        "aborting", g->seq, algo_name(g->algo), count, waited, what);
            MPI_Abort(g->world, ALLREDUCE_WATCHDOG_EXIT);
            return BASIN_ERR_RUNTIME;
        }
        if (polls < 1000) {
            sched_yield();
        } else {
            struct timespec ts = {0, 50 * 1000}; /* 50 us: long waits need not spin */
            nanosleep(&ts, NULL);
        }
    }
}

/* ---- create / free ---------------------------------------------------------------------- */

static void destroy(GpuAllreduce *g, int clean)
{
    if (!g) return;
    for (int i = 0; i < PLAN_CACHE; i++) allreduce_plan_free(g->plans[i].plan);
    allreduce_comm_free(g->cross); /* collective over the cross communicator */
    if (g->chunk_done)
        for (size_t k = 0; k < g->max_chunks; k++)
            if (g->chunk_done[k]) CU_WARN(cudaEventDestroy(g->chunk_done[k]));
    free(g->chunk_done);
    if (g->ready) CU_WARN(cudaEventDestroy(g->ready));
    if (g->handed) CU_WARN(cudaEventDestroy(g->handed));
    if (g->summed) CU_WARN(cudaEventDestroy(g->summed));
    if (g->side) {
        CU_WARN(cudaStreamSynchronize(g->side));
        CU_WARN(cudaStreamDestroy(g->side));
    }
    if (g->copy) CU_WARN(cudaStreamDestroy(g->copy));
    if (g->host) CU_WARN(cudaFreeHost(g->host));
    if (g->nccl) {
        if (clean) {
            NC_WARN(g->nccl, ncclCommFinalize(g->nccl));
            NC_WARN(NULL, ncclCommDestroy(g->nccl));
        } else {
            /* after a failed create the peers may not all hold this
             * communicator: abort is local, finalize might wait for them */
            NC_WARN(NULL, ncclCommAbort(g->nccl));
        }
    }
    if (g->world != MPI_COMM_NULL) MPI_Comm_free(&g->world);
    free(g);
}

void gpu_allreduce_free(GpuAllreduce *g)
{
    destroy(g, 1);
}

/* *shared = 1 on every rank of g->world when two ranks of comm on one host
 * use the same GPU (by PCI bus id); one line names them. */
static int find_shared_gpu(GpuAllreduce *g, MPI_Comm comm, const char *scope, int *shared)
{
    *shared = 0;
    int dev = -1, rank = 0, st = BASIN_OK;
    char bus[BUS_ID_LEN] = {0};
    BASIN_MPI(MPI_Comm_rank(g->world, &rank));
    /* A failed CUDA call still takes part in the collectives below (with a
     * bus id no other rank has), so no peer waits in a mismatched one. */
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetPCIBusId(bus, BUS_ID_LEN, dev);
    if (e != cudaSuccess) {
        st = basin_cuda_fail(e, "cudaDeviceGetPCIBusId(bus, len, cudaGetDevice())", __FILE__, __LINE__);
        snprintf(bus, sizeof bus, "unknown-%d", rank);
    }

    MPI_Comm host;
    BASIN_MPI(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &host));
    int hsize = 0, hrank = 0;
    MPI_Comm_size(host, &hsize);
    MPI_Comm_rank(host, &hrank);
    char *buses = calloc((size_t)hsize, BUS_ID_LEN);
    int *ranks = calloc((size_t)hsize, sizeof *ranks);
    int a = -1, b = -1;
    if (!buses || !ranks) {
        st = basin_error(BASIN_ERR_RUNTIME, "gpu all-reduce: out of memory gathering %d PCI bus ids", hsize);
        goto done; /* a peer then waits in the gather: rare enough to leave to the watchdog of the job */
    }
    int rc = MPI_Allgather(bus, BUS_ID_LEN, MPI_CHAR, buses, BUS_ID_LEN, MPI_CHAR, host);
    if (rc == MPI_SUCCESS) rc = MPI_Allgather(&rank, 1, MPI_INT, ranks, 1, MPI_INT, host);
    if (rc != MPI_SUCCESS) {
        st = basin_mpi_fail(rc, "MPI_Allgather(PCI bus ids)", __FILE__, __LINE__);
        goto done;
    }
    for (int i = 0; i < hsize && a < 0; i++)
        for (int j = i + 1; j < hsize; j++)
            if (!strncmp(buses + (size_t)i * BUS_ID_LEN, buses + (size_t)j * BUS_ID_LEN, BUS_ID_LEN)) {
                a = i;
                b = j;
                break;
            }
done:;
    /* The lowest world rank that saw a pair reports it; all agree on the answer. */
    int mine = a >= 0 && hrank == 0 ? rank : INT_MAX, reporter = INT_MAX;
    int rc2 = MPI_Allreduce(&mine, &reporter, 1, MPI_INT, MPI_MIN, g->world);
    if (rc2 != MPI_SUCCESS && !st) st = basin_mpi_fail(rc2, "MPI_Allreduce(shared GPU check)", __FILE__, __LINE__);
    if (!st && reporter != INT_MAX) {
        *shared = 1;
        if (reporter == rank)
            basin_error(BASIN_ERR_USAGE,
                        "gpu all-reduce '%s': ranks %d and %d %s use the same GPU (PCI %s), and NCCL needs one GPU "
                        "per rank: start at most one rank per GPU, or use hier with one rank per supernode "
                        "(supernode size 1), which needs no NCCL",
                        algo_name(g->algo), ranks[a], ranks[b], scope, buses + (size_t)a * BUS_ID_LEN);
    }
    free(buses);
    free(ranks);
    MPI_Comm_free(&host);
    return st;
}

/* One NCCL communicator over comm (rank 0 makes the id, MPI spreads it). */
static int nccl_init(GpuAllreduce *g, MPI_Comm comm)
{
    int rank, size;
    BASIN_MPI(MPI_Comm_rank(comm, &rank));
    BASIN_MPI(MPI_Comm_size(comm, &size));
    struct {
        int status;
        ncclUniqueId id;
    } msg;
    memset(&msg, 0, sizeof msg);
    if (rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&msg.id);
        if (r != ncclSuccess) msg.status = nccl_fail(r, NULL, "ncclGetUniqueId(&id)", __FILE__, __LINE__);
    }
    BASIN_MPI(MPI_Bcast(&msg, (int)sizeof msg, MPI_BYTE, 0, comm));
    if (msg.status) return msg.status;
    NC(NULL, ncclCommInitRank(&g->nccl, size, msg.id, rank));
    return BASIN_OK;
}

/* hier across supernodes: the cross AllreduceComm, pinned staging, the copy
 * stream and its events, the full-chunk rhd plan. Owners only. */
static int cross_init(GpuAllreduce *g, MPI_Comm cross_comm)
{
    AllreduceConfig cfg;
    allreduce_config_default(&cfg);
    cfg.supernode_size = 1; /* one rank per supernode: rhd alone, no shared window */
    cfg.timeout_s = g->timeout_s;
    TRY(allreduce_comm_create(cross_comm, &cfg, &g->cross));
    size_t Lm = (size_t)g->topo.min_local_size;
    g->max_shard = g->max_count / Lm + (g->max_count % Lm ? 1 : 0);
    if (!g->max_shard) return BASIN_OK;
    g->max_chunks = (g->max_shard + CHUNK_COUNT - 1) / CHUNK_COUNT;
    CU(cudaMallocHost((void **)&g->host, g->max_shard * sizeof(float)));
    CU(cudaStreamCreateWithFlags(&g->copy, cudaStreamNonBlocking));
    CU(cudaEventCreateWithFlags(&g->ready, cudaEventDisableTiming));
    g->chunk_done = calloc(g->max_chunks, sizeof *g->chunk_done);
    if (!g->chunk_done)
        return basin_error(BASIN_ERR_RUNTIME, "gpu all-reduce: out of memory for %zu chunk events", g->max_chunks);
    for (size_t k = 0; k < g->max_chunks; k++) CU(cudaEventCreateWithFlags(&g->chunk_done[k], cudaEventDisableTiming));
    if (g->max_shard >= CHUNK_COUNT) {
        TRY(allreduce_plan(g->cross, "rhd", CHUNK_COUNT, g->wire, &g->plans[0].plan));
        g->plans[0].count = CHUNK_COUNT;
    }
    return BASIN_OK;
}

static int hier_init(GpuAllreduce *g)
{
    const AllreduceTopology *t = &g->topo;
    MPI_Comm node = MPI_COMM_NULL, cross = MPI_COMM_NULL;
    int st = BASIN_OK, shared = 0, node_size = 0;
    int rc = MPI_Comm_split(g->world, t->node, t->local_rank, &node);
    if (rc != MPI_SUCCESS) return basin_mpi_fail(rc, "MPI_Comm_split(world, node, local_rank)", __FILE__, __LINE__);
    MPI_Comm_size(node, &node_size);
    if (node_size != t->local_size)
        st = basin_error(BASIN_ERR_USAGE, "gpu_allreduce_create: supernode %d has %d ranks, the topology says %d "
                         "(pass allreduce_topology() of an AllreduceComm on the same world)",
                         t->node, node_size, t->local_size);
    if ((st = agree(g->world, st))) goto out;
    /* Every rank takes part (the answer is agreed over world); a
     * supernode of one rank finds nothing. */
    if ((st = agree(g->world, find_shared_gpu(g, node, "of one supernode", &shared)))) goto out;
    if (shared) {
        st = BASIN_ERR_USAGE;
        goto out;
    }
    /* Every rank reaches here: the supernodes' NCCL communicators are
     * independent, but the status is agreed over world. */
    if ((st = agree(g->world, t->local_size > 1 ? nccl_init(g, node) : BASIN_OK))) goto out;
    if (t->nodes > 1) {
        rc = MPI_Comm_split(g->world, t->local_rank, t->node, &cross);
        if (rc != MPI_SUCCESS) {
            st = basin_mpi_fail(rc, "MPI_Comm_split(world, local_rank, node)", __FILE__, __LINE__);
            goto out;
        }
        st = agree(g->world, t->local_rank < t->min_local_size ? cross_init(g, cross) : BASIN_OK);
    }
out:
    if (cross != MPI_COMM_NULL) MPI_Comm_free(&cross);
    if (node != MPI_COMM_NULL) MPI_Comm_free(&node);
    return st;
}

int gpu_allreduce_create(MPI_Comm world, const AllreduceTopology *topo, const char *algo, unsigned wire,
                         size_t max_count, double timeout_s, GpuAllreduce **out)
{
    *out = NULL;
    const char *name = algo ? algo : "auto";
    if (!topo)
        return basin_error(BASIN_ERR_USAGE, "gpu_allreduce_create: no topology (pass allreduce_topology() of an "
                                            "AllreduceComm on the same world)");
    int kind;
    if (!strcmp(name, "nccl"))
        kind = ALGO_NCCL;
    else if (!strcmp(name, "hier"))
        kind = ALGO_HIER;
    else if (!strcmp(name, "auto"))
        kind = topo->nodes == 1 ? ALGO_NCCL : ALGO_HIER;
    else
        return basin_error(BASIN_ERR_USAGE, "unknown GPU all-reduce algorithm '%s' (choose auto, hier, nccl)", name);
    if (wire & ~(unsigned)(ALLREDUCE_WIRE_BF16 | ALLREDUCE_WIRE_FP16) ||
        (wire & ALLREDUCE_WIRE_BF16 && wire & ALLREDUCE_WIRE_FP16))
        return basin_error(BASIN_ERR_USAGE, "gpu_allreduce_create: wire flags %#x are not one of 0, "
                                            "ALLREDUCE_WIRE_BF16, ALLREDUCE_WIRE_FP16", wire);
    if (wire && !strcmp(name, "nccl"))
        return basin_error(BASIN_ERR_USAGE, "gpu all-reduce: nccl sends fp32 only; a 16-bit wire between "
                                            "supernodes needs hier (or auto)");

    int rank, size, dev = -1, st = BASIN_OK;
    BASIN_MPI(MPI_Comm_rank(world, &rank));
    BASIN_MPI(MPI_Comm_size(world, &size));
    if (topo->world_rank != rank || topo->world_size != size || topo->nodes < 1 || topo->node < 0 ||
        topo->node >= topo->nodes || topo->local_size < 1 || topo->local_rank < 0 ||
        topo->local_rank >= topo->local_size || topo->min_local_size < 1 || topo->min_local_size > topo->local_size)
        st = basin_error(BASIN_ERR_USAGE, "gpu_allreduce_create: the topology (rank %d of %d) is not of this world "
                         "(rank %d of %d); pass allreduce_topology() of an AllreduceComm on it",
                         topo->world_rank, topo->world_size, rank, size);
    cudaError_t e = cudaGetDevice(&dev);
    if (!st && e != cudaSuccess) {
        (void)cudaGetLastError();
        st = basin_error(BASIN_ERR_USAGE, "gpu all-reduce: no CUDA device is usable (%s); select one with "
                         "ops_cuda_select first", cudaGetErrorString(e));
    }
    TRY(agree(world, st));

    GpuAllreduce *g = calloc(1, sizeof *g);
    st = agree(world, g ? BASIN_OK : basin_error(BASIN_ERR_RUNTIME, "gpu all-reduce: out of memory"));
    if (st) {
        free(g);
        return st;
    }
    g->world = MPI_COMM_NULL;
    g->algo = kind;
    g->wire = kind == ALGO_HIER ? wire : 0;
    g->topo = *topo;
    g->max_count = max_count;
    g->timeout_s = timeout_s;
    int rc = MPI_Comm_dup(world, &g->world);
    if (rc != MPI_SUCCESS) {
        st = basin_mpi_fail(rc, "MPI_Comm_dup(world)", __FILE__, __LINE__);
        goto fail;
    }
    if (kind == ALGO_NCCL) {
        int shared = 0;
        if ((st = agree(g->world, find_shared_gpu(g, g->world, "of one host", &shared)))) goto fail;
        if (shared) {
            st = BASIN_ERR_USAGE;
            goto fail;
        }
        if ((st = agree(g->world, nccl_init(g, g->world)))) goto fail;
    } else {
        if ((st = hier_init(g))) goto fail;
    }
    *out = g;
    return BASIN_OK;
fail:
    destroy(g, 0);
    return st;
}

const char *gpu_allreduce_algorithm(const GpuAllreduce *g)
{
    return algo_name(g->algo);
}

const char *gpu_allreduce_wire(const GpuAllreduce *g)
{
    return g->wire & ALLREDUCE_WIRE_BF16 ? "bf16" : g->wire & ALLREDUCE_WIRE_FP16 ? "fp16" : "fp32";
}

/* ---- run ------------------------------------------------------------------------------------ */

/* The rhd plan for n floats across supernodes (cached). */
static int plan_for(GpuAllreduce *g, size_t n, AllreducePlan **out)
{
    for (int i = 0; i < PLAN_CACHE; i++)
        if (g->plans[i].plan && g->plans[i].count == n) {
            *out = g->plans[i].plan;
            return BASIN_OK;
        }
    PlanSlot *s = &g->plans[1 + g->next_evict++ % (PLAN_CACHE - 1)];
    allreduce_plan_free(s->plan);
    s->plan = NULL;
    TRY(allreduce_plan(g->cross, "rhd", n, g->wire, &s->plan));
    s->count = n;
    *out = s->plan;
    return BASIN_OK;
}

/* Step 1 (reduce == 1) or 3 (reduce == 0) inside the supernode. */
static int intra(GpuAllreduce *g, float *dev, size_t count, cudaStream_t stream, int reduce)
{
    const int L = g->topo.local_size, l = g->topo.local_rank, Lm = g->topo.min_local_size;
    if (L == Lm && count % (size_t)L == 0) {
        size_t n = count / (size_t)L; /* in place: this rank's shard is dev + l n */
        if (reduce)
            NC(g->nccl, ncclReduceScatter(dev, dev + (size_t)l * n, n, ncclFloat, ncclSum, g->nccl, stream));
        else
            NC(g->nccl, ncclAllGather(dev + (size_t)l * n, dev, n, ncclFloat, g->nccl, stream));
        return BASIN_OK;
    }
    NC(g->nccl, ncclGroupStart());
    ncclResult_t r = ncclSuccess;
    for (int j = 0; j < Lm && r == ncclSuccess; j++) {
        size_t lo = allreduce_part_start(count, (size_t)Lm, (size_t)j), hi = allreduce_part_start(count, (size_t)Lm, (size_t)j + 1);
        if (hi == lo) continue; /* count < Lm: the same empty shards on every rank */
        if (reduce)
            r = ncclReduce(dev + lo, dev + lo, hi - lo, ncclFloat, ncclSum, j, g->nccl, stream);
        else
            r = ncclBroadcast(dev + lo, dev + lo, hi - lo, ncclFloat, j, g->nccl, stream);
    }
    ncclResult_t r_end = ncclGroupEnd();
    if (r != ncclSuccess)
        return nccl_fail(r, g->nccl, reduce ? "ncclReduce(shard j to local rank j)" : "ncclBroadcast(shard j from local rank j)",
                         __FILE__, __LINE__);
    if (r_end != ncclSuccess) return nccl_fail(r_end, g->nccl, "ncclGroupEnd()", __FILE__, __LINE__);
    return BASIN_OK;
}

/* Step 2: d[0, n) (this owner's shard, already reduced inside the supernode
 * on `stream`) summed across supernodes through pinned memory, chunk by
 * chunk; the copies back are queued on `stream`. */
static int cross_run(GpuAllreduce *g, float *d, size_t n, size_t count, cudaStream_t stream)
{
    int st = BASIN_OK;
    const size_t nchunks = (n + CHUNK_COUNT - 1) / CHUNK_COUNT; /* <= max_chunks: n <= max_shard */
    CU(cudaEventRecord(g->ready, stream));
    CU(cudaStreamWaitEvent(g->copy, g->ready, 0));
    for (size_t k = 0; k < nchunks; k++) {
        size_t off = k * CHUNK_COUNT, m = n - off < CHUNK_COUNT ? n - off : CHUNK_COUNT;
        CU_GOTO(st, cudaMemcpyAsync(g->host + off, d + off, m * sizeof(float), cudaMemcpyDeviceToHost, g->copy), drain);
        CU_GOTO(st, cudaEventRecord(g->chunk_done[k], g->copy), drain);
    }
    for (size_t k = 0; k < nchunks; k++) {
        size_t off = k * CHUNK_COUNT, m = n - off < CHUNK_COUNT ? n - off : CHUNK_COUNT;
        AllreducePlan *p;
        if ((st = wait_gpu(g, g->chunk_done[k], NULL, count, "a chunk's copy to the host"))) goto drain;
        if ((st = plan_for(g, m, &p))) goto drain;
        if ((st = allreduce_run(p, g->host + off, g->host + off))) goto drain;
        CU_GOTO(st, cudaMemcpyAsync(d + off, g->host + off, m * sizeof(float), cudaMemcpyHostToDevice, stream), drain);
    }
    return BASIN_OK;
drain:
    /* no copy may still write the staging buffer once this returns */
    (void)cudaStreamSynchronize(g->copy);
    (void)cudaGetLastError();
    return st;
}

int gpu_allreduce_run(GpuAllreduce *g, float *dev, size_t count, void *stream_arg)
{
    if (!g) return basin_error(BASIN_ERR_USAGE, "gpu_allreduce_run: no GpuAllreduce (create one first)");
    if (count > g->max_count)
        return basin_error(BASIN_ERR_USAGE, "gpu_allreduce_run: %zu floats, more than the max_count %zu given at create",
                           count, g->max_count);
    if (count == 0) return BASIN_OK;
    struct cudaPointerAttributes attr;
    memset(&attr, 0, sizeof attr);
    CU(cudaPointerGetAttributes(&attr, dev));
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
        return basin_error(BASIN_ERR_USAGE, "gpu_allreduce_run: %p is not device memory", (void *)dev);
    cudaStream_t stream = (cudaStream_t)stream_arg;
    g->seq++;
    if (g->algo == ALGO_NCCL) {
        NC(g->nccl, ncclAllReduce(dev, dev, count, ncclFloat, ncclSum, g->nccl, stream));
        return wait_gpu(g, NULL, stream, count, "ncclAllReduce");
    }
    const AllreduceTopology *t = &g->topo;
    const int l = t->local_rank, Lm = t->min_local_size;
    if (t->local_size > 1) TRY(intra(g, dev, count, stream, 1));
    if (t->nodes > 1 && l < Lm) {
        size_t lo = allreduce_part_start(count, (size_t)Lm, (size_t)l), hi = allreduce_part_start(count, (size_t)Lm, (size_t)l + 1);
        if (hi > lo) TRY(cross_run(g, dev + lo, hi - lo, count, stream));
    }
    if (t->local_size > 1) TRY(intra(g, dev, count, stream, 0));
    return wait_gpu(g, NULL, stream, count, "the end of the run (stream sync)");
}

/* ---- non-blocking: start / join ------------------------------------------------------------- */

/* The sum needs no host step (nothing staged through host memory): NCCL alone. */
static int device_only(const GpuAllreduce *g)
{
    return g->algo == ALGO_NCCL || g->topo.nodes == 1;
}

int gpu_allreduce_start(GpuAllreduce *g, float *dev, size_t count, void *stream_arg)
{
    if (!g) return basin_error(BASIN_ERR_USAGE, "gpu_allreduce_start: no GpuAllreduce (create one first)");
    cudaStream_t stream = (cudaStream_t)stream_arg;
    if (!device_only(g)) {
        /* A host step in the middle: queue nothing behind the caller's
         * back. Earlier queued sums first (same order on every rank). */
        TRY(gpu_allreduce_join(g, stream_arg));
        return gpu_allreduce_run(g, dev, count, stream_arg);
    }
    if (count > g->max_count)
        return basin_error(BASIN_ERR_USAGE, "gpu_allreduce_start: %zu floats, more than the max_count %zu given at "
                           "create", count, g->max_count);
    if (count == 0) return BASIN_OK;
    if (!g->side) {
        CU(cudaStreamCreateWithFlags(&g->side, cudaStreamNonBlocking));
        CU(cudaEventCreateWithFlags(&g->handed, cudaEventDisableTiming));
        CU(cudaEventCreateWithFlags(&g->summed, cudaEventDisableTiming));
    }
    g->seq++;
    /* The side stream waits for what the caller queued so far (the
     * gradients of this bucket), then sums while the caller goes on. */
    CU(cudaEventRecord(g->handed, stream));
    CU(cudaStreamWaitEvent(g->side, g->handed, 0));
    if (g->algo == ALGO_NCCL) {
        NC(g->nccl, ncclAllReduce(dev, dev, count, ncclFloat, ncclSum, g->nccl, g->side));
    } else if (g->topo.local_size > 1) {
        TRY(intra(g, dev, count, g->side, 1));
        TRY(intra(g, dev, count, g->side, 0));
    }
    g->pending = 1;
    return BASIN_OK;
}

int gpu_allreduce_join(GpuAllreduce *g, void *stream_arg)
{
    if (!g) return basin_error(BASIN_ERR_USAGE, "gpu_allreduce_join: no GpuAllreduce (create one first)");
    if (!g->pending) return BASIN_OK;
    CU(cudaEventRecord(g->summed, g->side));
    CU(cudaStreamWaitEvent((cudaStream_t)stream_arg, g->summed, 0));
    g->pending = 0;
    return BASIN_OK;
}
