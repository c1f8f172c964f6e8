/* The CUDA backend of the op table: its state, memory, device selection,
 * uploads, device timers and the table; the ops are in kernels_cuda.cu
 * (cuBLAS for gemm, one plain kernel per other op). See core/ops.h for the
 * contract of each op and cuda/ops_cuda.h for what this backend adds to it
 * (device pointers, one stream, abort on a failed call).
 *
 * Determinism: every kernel here gives the same bits for the same inputs on
 * every run. No op uses atomics; reductions run in a fixed order (col2im and
 * the max- and average-pool backward gather per input instead of scattering
 * per output; the batch-norm sums add per-thread, per-block and per-part
 * sums in a fixed tree and order).
 * Several ops also give exactly the CPU's bits, because they perform the same
 * float operations in the same order: im2col, col2im, relu, max-pool
 * (values, argmax and backward), average pooling (forward and backward),
 * dropout (the same Philox draws), the bias additions, add, scale, the
 * global-average-pool backward, softmax backward, the batch-norm evaluation
 * statistics and parameter gradients, and the SGD step (written with _rn
 * intrinsics so that nvcc cannot contract them into FMAs; bn_finalize is
 * written so too). gemm, the bias gradients, the softmax forward, the
 * batch-norm sums and the global-average-pool forward sum in another order
 * than the CPU, and bn_fwd and bn_bwd_dx may be contracted into FMAs: they
 * agree with the CPU to rounding.
 */
#include <atomic>
#include <pthread.h>

#include "ops_cuda_internal.h"

static CudaState g_state;
/* Set (release) once g_state is complete, inside g_once; read (acquire) by
 * ops_cuda_select outside it. */
static std::atomic<int> g_ready{0};
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void state_init(void)
{
    CudaState *s = &g_state;
    CUDA_CHECK(cudaGetDevice(&s->device));
    /* Non-blocking: the stream does not wait for the legacy default stream,
     * so a later copy or NCCL stream can overlap with it. */
    CUDA_CHECK(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaStreamCreateWithFlags(&s->upload, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&s->uploaded, cudaEventDisableTiming));
    s->slot = -1;
    for (int k = 0; k < OPS_CUDA_SLOTS; k++) {
        CUDA_CHECK(cudaEventCreateWithFlags(&s->released[k], cudaEventDisableTiming));
        CUDA_CHECK(cudaEventCreateWithFlags(&s->copied[k], cudaEventDisableTiming));
    }
    CUBLAS_CHECK(cublasCreate(&s->blas));
    CUBLAS_CHECK(cublasSetStream(s->blas, s->stream));
    /* Full float precision: no TF32 tensor-core shortcut, so gemm agrees
     * with the CPU to float rounding. */
    CUBLAS_CHECK(cublasSetMathMode(s->blas, CUBLAS_DEFAULT_MATH));
    CUDA_CHECK(cudaMalloc((void **)&s->result, sizeof *s->result));
    CUDA_CHECK(cudaMalloc((void **)&s->bn_part, 2 * BN_MAX_PARTS * sizeof *s->bn_part));
    g_ready.store(1, std::memory_order_release);
}

CudaState *ops_cuda_state(void)
{
    pthread_once(&g_once, state_init);
    return &g_state;
}

/* ---- memory ----------------------------------------------------------------------- */

static void *cuda_alloc(size_t bytes)
{
    void *p = NULL;
    /* cudaMalloc returns 256-byte aligned memory, more than the 64 asked. */
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        basin_error_at(BASIN_ERR_RUNTIME, __FILE__, __LINE__,
                       "cudaMalloc of %zu bytes failed: %s: %s", bytes, cudaGetErrorName(e),
                       cudaGetErrorString(e));
        (void)cudaGetLastError(); /* out of memory is not sticky: clear it */
        return NULL;
    }
    return p;
}

static void cuda_free(void *p)
{
    if (p) CUDA_CHECK(cudaFree(p));
}

/* Both directions wait for the copy: the caller may reuse or free its host
 * buffer as soon as the op returns, pinned or not. ops_cuda_upload (below)
 * is the asynchronous way in, for batches. */
static void cuda_to_device(void *dst, const void *host_src, size_t bytes)
{
    if (!bytes) return;
    CudaState *s = st();
    CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, s->stream));
    CUDA_CHECK(cudaStreamSynchronize(s->stream));
}

static void cuda_to_host(void *host_dst, const void *src, size_t bytes)
{
    if (!bytes) return;
    CudaState *s = st();
    CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, s->stream));
    CUDA_CHECK(cudaStreamSynchronize(s->stream));
}

static void cuda_copy(void *dst, const void *src, size_t bytes)
{
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st()->stream));
}

static void cuda_zero(float *x, size_t n)
{
    if (!n) return;
    CUDA_CHECK(cudaMemsetAsync(x, 0, n * sizeof *x, st()->stream)); /* all-zero bits = +0.0f */
}

static void cuda_sync(void)
{
    CUDA_CHECK(cudaStreamSynchronize(st()->stream));
}

/* ---- device selection ------------------------------------------------------------------------------------ */

extern "C" int ops_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" int ops_cuda_select(int local_rank)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        (void)cudaGetLastError();
        return basin_error(BASIN_ERR_USAGE, "--device cuda: no CUDA device is visible (%s); use --device cpu",
                           e != cudaSuccess ? cudaGetErrorString(e) : "the driver reports 0 devices");
    }
    const int dev = (local_rank < 0 ? 0 : local_rank) % n;
    if (g_ready.load(std::memory_order_acquire) && g_state.device != dev)
        return BASIN_FAIL(BASIN_ERR_RUNTIME,
                          "ops_cuda_select(%d): the CUDA backend already runs on device %d, not %d "
                          "(select the device before the first op)",
                          local_rank, g_state.device, dev);
    e = cudaSetDevice(dev);
    if (e != cudaSuccess)
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "cudaSetDevice(%d) failed: %s: %s", dev,
                          cudaGetErrorName(e), cudaGetErrorString(e));
    return BASIN_OK;
}

extern "C" void *ops_cuda_host_alloc(size_t bytes)
{
    void *p = NULL;
    cudaError_t e = cudaMallocHost(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    return p;
}

extern "C" void ops_cuda_host_free(void *p)
{
    if (p) CUDA_CHECK(cudaFreeHost(p));
}

extern "C" void ops_cuda_upload(void *dst, const void *host_src, size_t bytes)
{
    if (!bytes) return;
    CudaState *s = st();
    CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, s->upload));
    CUDA_CHECK(cudaEventRecord(s->uploaded, s->upload));
    CUDA_CHECK(cudaStreamWaitEvent(s->stream, s->uploaded, 0));
    if (s->slot >= 0) {
        CUDA_CHECK(cudaEventRecord(s->copied[s->slot], s->upload));
        s->copied_set[s->slot] = 1;
    }
}

/* The slot begun before this one has had every op that reads it queued by
 * now (the caller begins a slot per batch, after the previous batch's step):
 * its release is the stream's current end. The slot to fill may still be
 * read twice over: on the host side by its last copy (wait for it here, the
 * caller is about to overwrite the pinned buffer), on the device side by the
 * ops of its last batch (the copies wait for them on the device). Nothing
 * else orders them: an empty batch queues no softmax_xent_fwd, hence no
 * stream synchronisation. */
extern "C" void ops_cuda_upload_begin(int slot)
{
    CudaState *s = st();
    if (slot < 0 || slot >= OPS_CUDA_SLOTS) {
        basin_error_at(BASIN_ERR_RUNTIME, __FILE__, __LINE__, "ops_cuda_upload_begin(%d): slots are 0..%d",
                       slot, OPS_CUDA_SLOTS - 1);
        abort();
    }
    if (s->slot >= 0) {
        CUDA_CHECK(cudaEventRecord(s->released[s->slot], s->stream));
        s->released_set[s->slot] = 1;
    }
    if (s->copied_set[slot]) CUDA_CHECK(cudaEventSynchronize(s->copied[slot]));
    if (s->released_set[slot]) CUDA_CHECK(cudaStreamWaitEvent(s->upload, s->released[slot], 0));
    s->slot = slot;
}

/* ---- device time ------------------------------------------------------------------ */

/* Marks of the last TIMER_RING steps not yet summed; a step older than that
 * is summed when the ring is full (its events are long past by then, so the
 * wait is nothing). One timer per process, as the stream. */
enum { TIMER_RING = 64 };
struct TimerStep {
    cudaEvent_t ev[OPS_CUDA_MARKS];
    int n;
};
struct DeviceTimer {
    TimerStep ring[TIMER_RING];
    int head, count;               /* the step being marked; closed steps before it */
    double sum[OPS_CUDA_MARKS - 1];
    int ready;
};
static DeviceTimer g_timer;

static void timer_fold(DeviceTimer *d, TimerStep *t)
{
    CUDA_CHECK(cudaEventSynchronize(t->ev[t->n - 1]));
    for (int i = 0; i + 1 < t->n; i++) {
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, t->ev[i], t->ev[i + 1]));
        d->sum[i] += 1e-3 * (double)ms;
    }
}

extern "C" void ops_cuda_time_mark(int i)
{
    DeviceTimer *d = &g_timer;
    CudaState *s = st();
    if (!d->ready) {
        for (int k = 0; k < TIMER_RING; k++)
            for (int m = 0; m < OPS_CUDA_MARKS; m++) CUDA_CHECK(cudaEventCreate(&d->ring[k].ev[m]));
        d->ready = 1;
    }
    if (i < 0 || i >= OPS_CUDA_MARKS) {
        basin_error_at(BASIN_ERR_RUNTIME, __FILE__, __LINE__, "ops_cuda_time_mark(%d): marks are 0..%d", i,
                       OPS_CUDA_MARKS - 1);
        abort();
    }
    CUDA_CHECK(cudaEventRecord(d->ring[d->head].ev[i], s->stream));
}

extern "C" void ops_cuda_time_step(int n)
{
    DeviceTimer *d = &g_timer;
    if (!d->ready || n < 2 || n > OPS_CUDA_MARKS) return;
    d->ring[d->head].n = n;
    d->head = (d->head + 1) % TIMER_RING;
    if (d->count == TIMER_RING - 1) timer_fold(d, &d->ring[d->head]); /* the oldest, overwritten next */
    else d->count++;
}

extern "C" void ops_cuda_time_take(double *out, int n)
{
    DeviceTimer *d = &g_timer;
    if (!d->ready) return;
    for (int c = d->count; c > 0; c--) timer_fold(d, &d->ring[(d->head - c + TIMER_RING) % TIMER_RING]);
    d->count = 0;
    for (int i = 0; i + 1 < n && i + 1 < OPS_CUDA_MARKS; i++) {
        out[i] += d->sum[i];
        d->sum[i] = 0.0;
    }
}

extern "C" void *ops_cuda_stream(void)
{
    return (void *)st()->stream;
}

/* ---- the table ----------------------------------------------------------------------------------------------- */

/* Positional, in the order of struct Ops (C++17 has no designated
 * initializers); each line names the member it fills. */
extern "C" const Ops ops_cuda = {
    /* name */ "cuda",
    /* alloc */ cuda_alloc,
    /* free */ cuda_free,
    /* to_device */ cuda_to_device,
    /* to_host */ cuda_to_host,
    /* copy */ cuda_copy,
    /* zero */ cuda_zero,
    /* sync */ cuda_sync,
    /* gemm */ cuda_gemm,
    /* add_bias_rows */ cuda_add_bias_rows,
    /* add_bias_channels */ cuda_add_bias_channels,
    /* bias_grad_rows */ cuda_bias_grad_rows,
    /* bias_grad_channels */ cuda_bias_grad_channels,
    /* im2col */ cuda_im2col,
    /* col2im */ cuda_col2im,
    /* relu_fwd */ cuda_relu_fwd,
    /* relu_bwd */ cuda_relu_bwd,
    /* maxpool_fwd */ cuda_maxpool_fwd,
    /* maxpool_bwd */ cuda_maxpool_bwd,
    /* dropout_fwd */ cuda_dropout_fwd,
    /* dropout_bwd */ cuda_dropout_bwd,
    /* bn_moments */ cuda_bn_moments,
    /* bn_finalize */ cuda_bn_finalize,
    /* bn_eval_stats */ cuda_bn_eval_stats,
    /* bn_fwd */ cuda_bn_fwd,
    /* bn_bwd_sums */ cuda_bn_bwd_sums,
    /* bn_param_grads */ cuda_bn_param_grads,
    /* bn_bwd_dx */ cuda_bn_bwd_dx,
    /* add */ cuda_add,
    /* avgpool_fwd */ cuda_avgpool_fwd,
    /* avgpool_bwd */ cuda_avgpool_bwd,
    /* gap_fwd */ cuda_gap_fwd,
    /* gap_bwd */ cuda_gap_bwd,
    /* softmax_xent_fwd */ cuda_softmax_xent_fwd,
    /* softmax_xent_bwd */ cuda_softmax_xent_bwd,
    /* sgd_step */ cuda_sgd_step,
    /* scale */ cuda_scale,
    /* adam_step */ cuda_adam_step,
    /* sumsq */ cuda_sumsq,
    /* lars_step */ cuda_lars_step,
    /* host_memory */ 0,
};

