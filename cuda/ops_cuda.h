/* The CUDA backend of the op table (core/ops.h): cuBLAS for gemm, one small
 * kernel per other op. Every pointer an op of ops_cuda takes is device
 * memory (from ops_cuda.alloc), except the two host pointers through which
 * softmax_xent_fwd returns its loss sum and correct count, and the host side
 * of to_device/to_host.
 *
 * All work is queued on one stream owned by the backend, in call order, so
 * ops need no synchronisation between them; to_host, softmax_xent_fwd and
 * sync wait for the stream. A failed CUDA or cuBLAS call inside an op prints
 * the call, file:line and CUDA's error string and aborts (ops return void,
 * and a device fault in the middle of a step leaves the replica in an
 * unknown state that no caller could repair). alloc returns NULL instead.
 *
 * Pick the device with ops_cuda_select BEFORE the first op: the stream and
 * the cuBLAS handle are created on first use, on the device current then.
 */
#ifndef BASIN_OPS_CUDA_H
#define BASIN_OPS_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

#include "core/ops.h"

extern const Ops ops_cuda;

/* Number of CUDA devices this process sees; 0 when there are none or the
 * driver cannot be loaded. Never fails. */
int ops_cuda_device_count(void);

/* Use GPU local_rank % count for this process (rank -> GPU by local rank on
 * its host). Returns BASIN_ERR_USAGE after one clear line when no device is
 * present, BASIN_ERR_RUNTIME when the device cannot be selected or the
 * backend already runs on another device. */
int ops_cuda_select(int local_rank);

/* Pinned host memory (cudaMallocHost) for ops_cuda_upload; NULL on failure. */
void *ops_cuda_host_alloc(size_t bytes);
void ops_cuda_host_free(void *p);

/* Copy bytes from pinned host memory to device memory on the backend's
 * upload stream, without waiting: ops queued before it keep running
 * alongside the copy (the previous step's tail), ops queued after it wait
 * for it. host_src and dst must stay untouched until the stream has passed
 * the ops queued after it (double-buffer them). */
void ops_cuda_upload(void *dst, const void *host_src, size_t bytes);

/* Double-buffered batches. Slots (0..OPS_CUDA_SLOTS-1) name the pinned and
 * device buffers of one batch; call ops_cuda_upload_begin(k) before filling
 * slot k's pinned buffers, then ops_cuda_upload into its device buffers. It
 * returns once the slot's previous copies have read the pinned memory, and
 * orders the slot's new copies after every op queued before the NEXT begin
 * that followed the slot's last one (the ops of the slot's last batch):
 *
 *   begin(0) upload(d0) step s | begin(1) upload(d1) step s+1 | begin(0) ...
 *                               ^ slot 0 released here: the copies of
 *                                 step s+2 into d0 wait for it on the device
 *
 * The order then holds without any host synchronisation in the step (an
 * empty batch has none). */
enum { OPS_CUDA_SLOTS = 4 };
void ops_cuda_upload_begin(int slot);

/* Device time of steps, from CUDA events on the backend's stream: mark i
 * (0..OPS_CUDA_MARKS-1) is recorded after the work queued so far, a step's
 * marks are 0..n-1 in order, ops_cuda_time_step(n) closes the step (never
 * waits), and ops_cuda_time_take adds to out[i] (i < n-1) the seconds from
 * mark i to mark i+1 summed over the steps closed since the last take, and
 * clears them; it waits for the device to pass those marks. Work that other
 * streams join into the backend's stream (the GPU all-reduce) counts where
 * it is joined. */
enum { OPS_CUDA_MARKS = 8 };
void ops_cuda_time_mark(int i);
void ops_cuda_time_step(int n);
void ops_cuda_time_take(double *out, int n);

/* The backend's stream (a cudaStream_t), for code that orders its own work
 * (copies, NCCL) after the ops with events. Creates it on first use. */
void *ops_cuda_stream(void);

#ifdef __cplusplus
}
#endif

#endif
