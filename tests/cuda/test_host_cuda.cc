/* Host execution of the CUDA backend (cuda/host), tested on its own: the
 * kernel language (threads and blocks in 3 dimensions, shared memory and
 * __syncthreads, the two warp shuffles), launches with a bad geometry, what
 * the runtime refuses (a copy whose kind does not match its pointers, one
 * past an allocation's end, a free of what cudaMalloc did not give), work on
 * streams run as late as CUDA allows (what a missing event wait shows), cuBLAS
 * gemm in its four transpose cases against a double-precision loop, its
 * leading-dimension checks, NCCL of one rank and of three (child processes
 * over shared memory), in place and not. A kernel that deadlocks
 * (a shuffle that some lanes never reach) or shuffles in a block of part of
 * a warp must stop its process (run in a child). */
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include "testing.h"

/* ---- kernels ---------------------------------------------------------------------------- */

/* Every thread writes where it is: block and thread in 3 dimensions. */
__global__ void k_where(unsigned *out)
{
    const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    out[b * threads + t] = b * 1000u + t;
}

/* A tree sum in shared memory: correct only if every __syncthreads holds
 * back every thread until all have arrived. */
enum { SUM_THREADS = 128 };
__global__ void k_block_sum(const float *x, float *out)
{
    __shared__ float part[SUM_THREADS];
    part[threadIdx.x] = x[blockIdx.x * SUM_THREADS + threadIdx.x];
    __syncthreads();
    for (unsigned half = SUM_THREADS / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = part[0];
}

/* Each thread's value after one shuffle of each kind. */
__global__ void k_shuffles(int *down, int *xr, double *down_d, unsigned delta)
{
    const int v = (int)(threadIdx.x * 3 + 1);
    down[threadIdx.x] = __shfl_down_sync(0xffffffffu, v, delta);
    xr[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, (int)delta);
    down_d[threadIdx.x] = __shfl_down_sync(0xffffffffu, 0.5 * v, delta);
}

/* Arguments are each thread's own copy: changing one changes no other's. */
__global__ void k_own_args(int *out, int base)
{
    base += (int)threadIdx.x;
    out[threadIdx.x] = base;
}

/* Half of each warp returns before a shuffle that needs all 32 lanes. */
__global__ void k_deadlock(int *out)
{
    if (threadIdx.x % 32 < 16) return;
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, (int)threadIdx.x, 1);
}

__global__ void k_part_warp(int *out)
{
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, (int)threadIdx.x, 1);
}

#define LAUNCH(k, g, b, ...) host_cuda_launch(k, #k, dim3(g), dim3(b), (cudaStream_t)NULL, __VA_ARGS__)
#define LAUNCH_ON(s, k, g, b, ...) host_cuda_launch(k, #k, dim3(g), dim3(b), s, __VA_ARGS__)

template <typename T> static T *dev_alloc(size_t n)
{
    void *p = NULL;
    EXPECT(cudaMalloc(&p, n * sizeof(T)) == cudaSuccess, "cudaMalloc %zu", n);
    return static_cast<T *>(p);
}

template <typename T> static std::vector<T> to_host(const T *d, size_t n)
{
    std::vector<T> h(n);
    EXPECT(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess, "copy back");
    return h;
}

/* The child's exit: 0 when it ended by SIGABRT (the expected stop). */
static int stops_by_abort(void (*what)(void))
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        what();
        _exit(0); /* reached only when the kernel did not stop the process */
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) return 0;
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

static void deadlock_child(void)
{
    int *d = NULL;
    if (cudaMalloc((void **)&d, 64 * sizeof *d) != cudaSuccess) _exit(3);
    LAUNCH(k_deadlock, 1, 64, d);
}

static void part_warp_child(void)
{
    int *d = NULL;
    if (cudaMalloc((void **)&d, 48 * sizeof *d) != cudaSuccess) _exit(3);
    LAUNCH(k_part_warp, 1, 48, d);
}

/* ---- the tests ---------------------------------------------------------------------------- */

static void test_geometry(void)
{
    const dim3 grid(3, 2, 2), block(4, 3, 2);
    const size_t n = 12 * 24;
    unsigned *d = dev_alloc<unsigned>(n);
    LAUNCH(k_where, grid, block, d);
    EXPECT(cudaGetLastError() == cudaSuccess, "launch");
    std::vector<unsigned> h = to_host(d, n);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += h[i] != (unsigned)(i / 24 * 1000 + i % 24);
    EXPECT(bad == 0, "%zu of %zu threads wrote the wrong place or value", bad, n);
    cudaFree(d);
}

static void test_block_sum(void)
{
    const unsigned blocks = 5;
    std::vector<float> x(blocks * SUM_THREADS);
    for (size_t i = 0; i < x.size(); i++) x[i] = (float)((i * 7919) % 23) - 11.0f;
    float *dx = dev_alloc<float>(x.size()), *dout = dev_alloc<float>(blocks);
    EXPECT(cudaMemcpy(dx, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess, "copy");
    for (int run = 0; run < 2; run++) { /* the second launch of a kernel that waits runs as fibers again */
        LAUNCH(k_block_sum, blocks, SUM_THREADS, dx, dout);
        EXPECT(cudaGetLastError() == cudaSuccess, "launch");
        std::vector<float> out = to_host(dout, blocks);
        for (unsigned b = 0; b < blocks; b++) {
            double want = 0.0;
            for (unsigned t = 0; t < SUM_THREADS; t++) want += x[b * SUM_THREADS + t];
            EXPECT(out[b] == (float)want, "run %d block %u: sum %g, want %g", run, b, (double)out[b], want);
        }
    }
    cudaFree(dx);
    cudaFree(dout);
}

static void test_shuffles(void)
{
    const unsigned threads = 64;
    int *down = dev_alloc<int>(threads), *xr = dev_alloc<int>(threads);
    double *down_d = dev_alloc<double>(threads);
    for (unsigned delta : {1u, 5u, 16u}) {
        LAUNCH(k_shuffles, 1, threads, down, xr, down_d, delta);
        std::vector<int> hd = to_host(down, threads), hx = to_host(xr, threads);
        std::vector<double> hdd = to_host(down_d, threads);
        for (unsigned t = 0; t < threads; t++) {
            const unsigned lane = t % 32, base = t - lane;
            const unsigned from_down = lane + delta < 32 ? t + delta : t, from_xor = base + (lane ^ delta);
            EXPECT(hd[t] == (int)(from_down * 3 + 1), "down by %u, thread %u: %d", delta, t, hd[t]);
            EXPECT(hx[t] == (int)(from_xor * 3 + 1), "xor %u, thread %u: %d", delta, t, hx[t]);
            EXPECT(hdd[t] == 0.5 * (from_down * 3 + 1), "down (double) by %u, thread %u: %g", delta, t, hdd[t]);
        }
    }
    int *own = dev_alloc<int>(32);
    LAUNCH(k_own_args, 1, 32, own, 100);
    std::vector<int> ho = to_host(own, 32);
    for (int t = 0; t < 32; t++) EXPECT(ho[t] == 100 + t, "own argument copy, thread %d: %d", t, ho[t]);
    cudaFree(down);
    cudaFree(xr);
    cudaFree(down_d);
    cudaFree(own);
}

static void test_bad_launches(void)
{
    unsigned *d = dev_alloc<unsigned>(4096);
    (void)cudaGetLastError();
    LAUNCH(k_where, 0, 32, d);
    EXPECT(cudaGetLastError() == cudaErrorInvalidConfiguration, "an empty grid is refused");
    LAUNCH(k_where, 1, 2048, d);
    EXPECT(cudaGetLastError() == cudaErrorInvalidConfiguration, "2048 threads a block are refused");
    LAUNCH(k_where, dim3(1, 70000), 32, d);
    EXPECT(cudaGetLastError() == cudaErrorInvalidConfiguration, "grid.y above 65535 is refused");
    EXPECT(cudaGetLastError() == cudaSuccess, "cudaGetLastError clears the error");
    cudaFree(d);
    EXPECT(stops_by_abort(deadlock_child), "a shuffle that half of the warp never reaches stops the process");
    EXPECT(stops_by_abort(part_warp_child), "a shuffle in a warp of 16 threads stops the process");
}

static void test_memory(void)
{
    float host[16] = {0}, back[16];
    float *d = dev_alloc<float>(16), *e = dev_alloc<float>(16);
    (void)cudaGetLastError();
    EXPECT(cudaMemcpy(d, host, sizeof host, cudaMemcpyHostToDevice) == cudaSuccess, "host to device");
    EXPECT(cudaMemcpy(e, d, sizeof host, cudaMemcpyDeviceToDevice) == cudaSuccess, "device to device");
    EXPECT(cudaMemcpy(back, e, sizeof back, cudaMemcpyDeviceToHost) == cudaSuccess, "device to host");
    EXPECT(cudaMemcpy(back, d, sizeof back, cudaMemcpyHostToDevice) == cudaErrorInvalidValue,
           "host to device with the pointers swapped is refused");
    EXPECT(cudaMemcpy(d, host, sizeof host, cudaMemcpyDeviceToDevice) == cudaErrorInvalidValue,
           "device to device from host memory is refused");
    EXPECT(cudaMemcpy(d + 8, host, sizeof host, cudaMemcpyHostToDevice) == cudaErrorInvalidValue,
           "a copy past the allocation's end is refused");
    EXPECT(cudaMemset(d + 1, 0, 16 * sizeof(float)) == cudaErrorInvalidValue, "a memset past the end is refused");
    EXPECT(cudaMemcpy(d + 4, d, 8 * sizeof(float), cudaMemcpyDeviceToDevice) == cudaErrorInvalidValue,
           "overlapping ranges are refused");
    EXPECT(cudaFree(host) == cudaErrorInvalidValue, "cudaFree of host memory is refused");
    EXPECT(cudaFree(d + 1) == cudaErrorInvalidValue, "cudaFree inside an allocation is refused");
    struct cudaPointerAttributes a;
    EXPECT(cudaPointerGetAttributes(&a, d + 3) == cudaSuccess && a.type == cudaMemoryTypeDevice, "device pointer");
    EXPECT(cudaPointerGetAttributes(&a, host) == cudaSuccess && a.type == cudaMemoryTypeUnregistered, "host pointer");
    /* fresh device memory is not zero: NaN where a read comes before a write */
    float *fresh = dev_alloc<float>(4);
    std::vector<float> f = to_host(fresh, 4);
    EXPECT(std::isnan(f[0]) && std::isnan(f[3]), "fresh device memory reads as NaN");
    cudaFree(fresh);
    cudaFree(d);
    cudaFree(e);
    (void)cudaGetLastError();
}

/* C (m x n) = op(A) op(B) in column-major storage, against double loops. */
static void test_gemm(void)
{
    cublasHandle_t h;
    EXPECT(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS, "cublasCreate");
    const int m = 7, n = 5, k = 6, pad = 2;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            const int ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
            const int lda = ar + pad, ldb = br + pad, ldc = m + pad;
            std::vector<float> A((size_t)lda * ac), B((size_t)ldb * bc), C((size_t)ldc * n);
            for (size_t i = 0; i < A.size(); i++) A[i] = (float)((i * 37) % 11) * 0.25f - 1.0f;
            for (size_t i = 0; i < B.size(); i++) B[i] = (float)((i * 53) % 13) * 0.125f - 0.75f;
            for (size_t i = 0; i < C.size(); i++) C[i] = (float)(i % 5) - 2.0f;
            float *dA = dev_alloc<float>(A.size()), *dB = dev_alloc<float>(B.size()), *dC = dev_alloc<float>(C.size());
            cudaMemcpy(dA, A.data(), A.size() * sizeof(float), cudaMemcpyHostToDevice);
            cudaMemcpy(dB, B.data(), B.size() * sizeof(float), cudaMemcpyHostToDevice);
            cudaMemcpy(dC, C.data(), C.size() * sizeof(float), cudaMemcpyHostToDevice);
            const float alpha = 1.5f, beta = -0.5f;
            EXPECT(cublasSgemm(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha, dA,
                               lda, dB, ldb, &beta, dC, ldc) == CUBLAS_STATUS_SUCCESS,
                   "sgemm %d%d", ta, tb);
            std::vector<float> got = to_host(dC, C.size());
            for (int j = 0; j < n; j++)
                for (int i = 0; i < m; i++) {
                    double s = 0.0;
                    for (int p = 0; p < k; p++) {
                        const double a = ta ? A[(size_t)i * lda + p] : A[(size_t)p * lda + i];
                        const double b = tb ? B[(size_t)p * ldb + j] : B[(size_t)j * ldb + p];
                        s += a * b;
                    }
                    const double want = alpha * s + beta * C[(size_t)j * ldc + i];
                    EXPECT_NEAR(got[(size_t)j * ldc + i], want, 1e-5, 1e-5, "sgemm element");
                }
            for (int j = 0; j < n; j++)
                for (int i = m; i < ldc; i++)
                    EXPECT(got[(size_t)j * ldc + i] == C[(size_t)j * ldc + i], "sgemm wrote past row %d", m);
            if (ta == 0 && tb == 0) {
                EXPECT(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, dA, m - 1, dB, ldb, &beta, dC, ldc) ==
                           CUBLAS_STATUS_INVALID_VALUE,
                       "lda below m is refused");
                EXPECT(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n + 1, k, &alpha, dA, lda, dB, ldb, &beta, dC,
                                   ldc) == CUBLAS_STATUS_INVALID_VALUE,
                       "B or C past its allocation is refused");
            }
            cudaFree(dA);
            cudaFree(dB);
            cudaFree(dC);
        }
    cublasDestroy(h);
}

static void test_nccl(void)
{
    ncclUniqueId id;
    ncclComm_t one = NULL;
    EXPECT(ncclGetUniqueId(&id) == ncclSuccess, "id");
    EXPECT(ncclCommInitRank(&one, 1, id, 0) == ncclSuccess && one, "a communicator of one rank");
    float h[8] = {1, 2, 3, 4, 5, 6, 7, 8}, back[8] = {0};
    float *a = dev_alloc<float>(8), *b = dev_alloc<float>(8);
    cudaMemcpy(a, h, sizeof h, cudaMemcpyHostToDevice);
    EXPECT(ncclAllReduce(a, b, 8, ncclFloat, ncclSum, one, NULL) == ncclSuccess, "all-reduce");
    cudaMemcpy(back, b, sizeof back, cudaMemcpyDeviceToHost);
    EXPECT(!memcmp(back, h, sizeof h), "the all-reduce of one rank copies");
    EXPECT(ncclBroadcast(a, b, 8, ncclFloat, 1, one, NULL) == ncclInvalidArgument, "root 1 of 1 rank is refused");
    EXPECT(ncclAllReduce(h, b, 8, ncclFloat, ncclSum, one, NULL) == ncclInvalidArgument,
           "host memory is refused");
    EXPECT(ncclCommDestroy(one) == ncclSuccess, "destroy");
    cudaFree(a);
    cudaFree(b);
}

__global__ void k_copy(const float *x, float *y, size_t n)
{
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) y[i] = x[i];
}

/* Work on a stream runs when the host needs it: a copy from pinned memory
 * reads it then (so a host that refills the buffer too soon is seen), and
 * a stream that reads what another writes sees it only after waiting on
 * an event. */
static void test_streams(void)
{
    const size_t n = 64;
    float *pinned = NULL, *d = dev_alloc<float>(n), *out = dev_alloc<float>(n);
    EXPECT(cudaMallocHost((void **)&pinned, n * sizeof(float)) == cudaSuccess, "cudaMallocHost");
    cudaStream_t a, b;
    cudaEvent_t ev;
    EXPECT(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking) == cudaSuccess, "stream a");
    EXPECT(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking) == cudaSuccess, "stream b");
    EXPECT(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming) == cudaSuccess, "event");
    for (size_t i = 0; i < n; i++) pinned[i] = 1.0f;
    cudaMemset(d, 0, n * sizeof(float));
    EXPECT(cudaMemcpyAsync(d, pinned, n * sizeof(float), cudaMemcpyHostToDevice, a) == cudaSuccess, "copy on a");
    for (size_t i = 0; i < n; i++) pinned[i] = 2.0f; /* too soon: the copy has not run */
    /* b reads d without waiting: it sees what was there before the copy */
    LAUNCH_ON(b, k_copy, 1, 32, d, out, n);
    cudaStreamSynchronize(b);
    std::vector<float> got = to_host(out, n);
    EXPECT(got[0] == 0.0f && got[n - 1] == 0.0f, "b without a wait read %g, not the 0 from before a's copy",
           (double)got[0]);
    /* after an event on a and a wait of b on it: the copy, of the refilled buffer */
    cudaEventRecord(ev, a);
    cudaStreamWaitEvent(b, ev, 0);
    LAUNCH_ON(b, k_copy, 1, 32, d, out, n);
    cudaStreamSynchronize(b);
    got = to_host(out, n);
    EXPECT(got[0] == 2.0f && got[n - 1] == 2.0f, "after the wait b read %g, not the 2 that the pinned buffer "
           "held when the copy ran", (double)got[0]);
    /* from pageable memory the bytes are taken at the call */
    std::vector<float> pageable(n, 3.0f);
    cudaMemcpyAsync(d, pageable.data(), n * sizeof(float), cudaMemcpyHostToDevice, a);
    pageable.assign(n, 4.0f);
    cudaStreamSynchronize(a);
    got = to_host(d, n);
    EXPECT(got[0] == 3.0f, "a pageable source is taken at the call: %g, want 3", (double)got[0]);
    cudaEventDestroy(ev);
    cudaStreamDestroy(a);
    cudaStreamDestroy(b);
    cudaFreeHost(pinned);
    cudaFree(d);
    cudaFree(out);
}

/* One rank of a 3-rank communicator, in a child process: every collective
 * against the values it must give, in place and not. The exit code is the
 * number of wrong results (0: all right). */
static int nccl_rank(ncclUniqueId id, int rank)
{
    const int P = 3;
    const size_t n = 300000; /* more than one 1 MiB slot of floats */
    ncclComm_t c = NULL;
    if (ncclCommInitRank(&c, P, id, rank) != ncclSuccess) return 100;
    int bad = 0;
    std::vector<float> h(n * P), back(n * P);
    float *a = NULL, *b = NULL;
    if (cudaMalloc((void **)&a, n * P * sizeof(float)) || cudaMalloc((void **)&b, n * P * sizeof(float))) return 101;
    auto value = [](int r, size_t i) { return (float)((i * 7 + (size_t)r * 13) % 19) - 9.0f; };
    auto sum = [&](size_t i) {
        float s = 0.0f;
        for (int r = 0; r < P; r++) s += value(r, i);
        return s;
    };
    for (size_t i = 0; i < n * P; i++) h[i] = value(rank, i);
    cudaMemcpy(a, h.data(), n * P * sizeof(float), cudaMemcpyHostToDevice);
    /* all-reduce into b, then in place in a copy */
    bad += ncclAllReduce(a, b, n, ncclFloat, ncclSum, c, NULL) != ncclSuccess;
    cudaMemcpy(back.data(), b, n * sizeof(float), cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < n; i++) bad += back[i] != sum(i);
    /* reduce-scatter in place: rank r's share of a becomes the sum of the ranks' r-th shares */
    bad += ncclReduceScatter(a, a + (size_t)rank * n, n, ncclFloat, ncclSum, c, NULL) != ncclSuccess;
    cudaMemcpy(back.data(), a + (size_t)rank * n, n * sizeof(float), cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < n; i++) bad += back[i] != sum((size_t)rank * n + i);
    /* all-gather in place: every share to every rank */
    bad += ncclAllGather(a + (size_t)rank * n, a, n, ncclFloat, c, NULL) != ncclSuccess;
    cudaMemcpy(back.data(), a, n * P * sizeof(float), cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < n * P; i++) bad += back[i] != sum(i);
    /* reduce to rank 1 and broadcast from rank 2 */
    cudaMemcpy(a, h.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    bad += ncclReduce(a, b, n, ncclFloat, ncclSum, 1, c, NULL) != ncclSuccess;
    if (rank == 1) {
        cudaMemcpy(back.data(), b, n * sizeof(float), cudaMemcpyDeviceToHost);
        for (size_t i = 0; i < n; i++) bad += back[i] != sum(i);
    }
    bad += ncclBroadcast(a, a, n, ncclFloat, 2, c, NULL) != ncclSuccess;
    cudaMemcpy(back.data(), a, n * sizeof(float), cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < n; i++) bad += back[i] != value(2, i);
    ncclCommDestroy(c);
    cudaFree(a);
    cudaFree(b);
    return bad > 99 ? 99 : bad;
}

static void test_nccl_ranks(void)
{
    ncclUniqueId id;
    EXPECT(ncclGetUniqueId(&id) == ncclSuccess, "id");
    fflush(NULL);
    pid_t pids[3];
    for (int r = 0; r < 3; r++) {
        pids[r] = fork();
        if (pids[r] == 0) _exit(nccl_rank(id, r));
    }
    for (int r = 0; r < 3; r++) {
        int status = 0;
        EXPECT(pids[r] > 0 && waitpid(pids[r], &status, 0) == pids[r] && WIFEXITED(status) &&
                   WEXITSTATUS(status) == 0,
               "NCCL rank %d of 3: exit %d (wrong results, or 100+: no communicator)", r,
               WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
}

int main(void)
{
    test_geometry();
    test_block_sum();
    test_shuffles();
    test_bad_launches();
    test_memory();
    test_gemm();
    test_streams();
    test_nccl();
    test_nccl_ranks();
    return test_finish("test_host_cuda");
}
