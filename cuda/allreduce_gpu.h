/* All-reduce of float buffers in GPU memory: every rank ends with the
 * element-wise sum over all ranks, the same bits on every rank.
 *
 * Algorithms ("auto" picks nccl on one supernode, hier otherwise):
 *   nccl  ncclAllReduce over all ranks (one NCCL communicator over world):
 *         the GPU baseline.
 *   hier  NCCL reduce-scatter inside the supernode (one NCCL communicator
 *         per supernode), recursive halving/doubling (basin's CPU rhd)
 *         across supernodes on each owner's shard, staged through pinned
 *         host memory in 1 MiB chunks (Open MPI here is not CUDA-aware),
 *         NCCL all-gather inside the supernode. One rank per supernode:
 *         the host-staged rhd alone, no NCCL at all.
 * Wire (ALLREDUCE_WIRE_BF16 / _FP16, allreduce.h): hier's rhd across
 * supernodes sends 16-bit values and adds in fp32 on the host, exactly as
 * the CPU hier does between supernodes (same rounding, same error bound,
 * fp16's scale agreed per 1 MiB chunk); NCCL inside the supernode stays
 * fp32. nccl has no step between supernodes to narrow: it refuses a 16-bit
 * wire (BASIN_ERR_USAGE), and auto resolving to nccl (one supernode) runs
 * fp32, as the CPU hier does in one supernode.
 * Shards follow src/allreduce/hier.c: the vector is cut into
 * min_local_size shards; local rank j < min_local_size owns shard j in
 * every supernode; larger supernodes' extra local ranks contribute and
 * receive but own nothing.
 *
 * NCCL refuses two ranks on one GPU. When the chosen algorithm needs an
 * NCCL communicator that two ranks on the same GPU would join (nccl: any
 * two ranks of a host; hier: two local ranks of a supernode),
 * gpu_allreduce_create fails with one clear line (BASIN_ERR_USAGE) on every
 * rank instead of hanging. hier with one rank per supernode
 * (--supernode-size 1) runs with any number of ranks on one GPU.
 *
 * Watchdog. When timeout_s > 0, a host-side wait on the GPU (a staged chunk,
 * the end of the run) that lasts longer than timeout_s prints one line
 *   basin: rank 1: error: gpu all-reduce watchdog: run #4 (hier, 1000
 *   floats) waited 300.0 s for the final stream sync; aborting
 * and calls MPI_Abort(world, ALLREDUCE_WATCHDOG_EXIT), as the CPU
 * all-reduce does (a hung NCCL kernel cannot be cancelled from here). The
 * host-staged rhd carries the CPU all-reduce's own watchdog.
 *
 * Threads: hier across supernodes uses an AllreduceComm, which needs MPI
 * initialized with MPI_THREAD_MULTIPLE. Call every function of one
 * GpuAllreduce from one thread. Collective calls (every rank of world, same
 * order, same arguments): create, free, and every run.
 */
#ifndef BASIN_ALLREDUCE_GPU_H
#define BASIN_ALLREDUCE_GPU_H

#include <mpi.h>
#include <stddef.h>

#include "allreduce/allreduce.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct GpuAllreduce GpuAllreduce;

/* Collective over world. topo: from allreduce_topology() of an
 * AllreduceComm on the same world (node, nodes, local_rank, local_size,
 * min_local_size). algo: "auto", "hier", "nccl" (NULL: auto). wire: 0
 * (fp32), ALLREDUCE_WIRE_BF16 or ALLREDUCE_WIRE_FP16 (allreduce_wire_parse).
 * max_count: the largest count any run will use (sizes the pinned staging
 * buffer: max_count / min_local_size floats, rounded up, on owners when
 * there are several supernodes). timeout_s: bound on host-side waits
 * (<= 0: none). The CUDA device must already be selected
 * (ops_cuda_select). Unknown algo -> BASIN_ERR_USAGE with one clear line. */
int gpu_allreduce_create(MPI_Comm world, const AllreduceTopology *topo, const char *algo, unsigned wire,
                         size_t max_count, double timeout_s, GpuAllreduce **out);

/* Sum count floats at dev (device memory) in place over all ranks, after the
 * work already queued on `stream` (a cudaStream_t passed as void*; NULL is
 * the legacy default stream). Returns once dev holds the result (the stream
 * has been synchronized). count <= max_count, else BASIN_ERR_USAGE. */
int gpu_allreduce_run(GpuAllreduce *g, float *dev, size_t count, void *stream);

/* Non-blocking use, for gradient buckets during backward. start queues the
 * sum of dev[0, count) on the all-reduce's own stream, ordered after the
 * work queued on `stream` so far (an event), and returns at once: backward
 * goes on queueing kernels while NCCL sums. join makes the work queued on
 * `stream` afterwards (the optimizer) wait for every sum started since the
 * last join. dev must not be written until then. Where a sum has a host
 * step (hier across supernodes: staged through host memory) start joins and
 * runs it blocking instead (gpu_allreduce_run). Collective, like run: the
 * same starts in the same order on every rank. */
int gpu_allreduce_start(GpuAllreduce *g, float *dev, size_t count, void *stream);
int gpu_allreduce_join(GpuAllreduce *g, void *stream);

/* The algorithm that runs ("auto" resolved): "hier" or "nccl". */
const char *gpu_allreduce_algorithm(const GpuAllreduce *g);
/* The values between supernodes: "fp32", "bf16" or "fp16" ("fp32" for nccl). */
const char *gpu_allreduce_wire(const GpuAllreduce *g);

/* Collective. NULL is allowed. */
void gpu_allreduce_free(GpuAllreduce *g);

#ifdef __cplusplus
}
#endif

#endif
