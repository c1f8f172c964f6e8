/* Host execution of the CUDA backend (BASIN_CUDA_HOST=ON): the part of the
 * CUDA runtime, and of its kernel language, that cuda/ uses, implemented on
 * the CPU so that the backend's own sources (ops_cuda.cu, kernels_cuda.cu,
 * device_cuda.c, allreduce_gpu.c) are compiled by the host compiler and run,
 * with their tests, on a machine without a GPU. cuda/host/README.md says
 * what it checks and what only a GPU can.
 *
 * One device (BASIN_HOST_CUDA_DEVICES of them, 0 to 64: the same memory
 * under their own indices and PCI bus ids), whose memory is host memory.
 * Work on a stream waits in the stream's queue until the host needs it
 * done (a synchronisation, or an event another stream waits on), the
 * latest that CUDA allows, so a missing event wait or a pinned buffer
 * refilled too soon gives wrong results here. What a GPU would refuse is
 * refused too: a copy whose kind does not match where its pointers point,
 * a copy or memset past the end of an allocation, a launch with an empty
 * grid or more than 1024 threads a block, a free of what cudaMalloc did
 * not give.
 * C and C++; the kernel language (threads, blocks, shared memory,
 * __syncthreads, warp shuffles, launches) is C++ only. */
#ifndef BASIN_HOST_CUDA_RUNTIME_H
#define BASIN_HOST_CUDA_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The real runtime's numbers, so that a message reads the same. */
typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorLaunchFailure = 719
} cudaError_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
};

enum cudaMemoryType {
    cudaMemoryTypeUnregistered = 0,
    cudaMemoryTypeHost = 1,
    cudaMemoryTypeDevice = 2,
    cudaMemoryTypeManaged = 3
};

struct cudaPointerAttributes {
    enum cudaMemoryType type;
    int device;
    void *devicePointer;
    void *hostPointer;
};

typedef struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    int major, minor;
    int multiProcessorCount;
} cudaDeviceProp;

typedef struct HostCudaStream *cudaStream_t;
typedef struct HostCudaEvent *cudaEvent_t;

#define cudaStreamDefault 0x00u
#define cudaStreamNonBlocking 0x01u
#define cudaEventDefault 0x00u
#define cudaEventDisableTiming 0x02u

const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);

cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t cudaDeviceGetPCIBusId(char *bus, int len, int device);
cudaError_t cudaDeviceSynchronize(void);

cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *attr, const void *p);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t stream);
cudaError_t cudaMemset(void *p, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t stream);

cudaError_t cudaStreamCreate(cudaStream_t *s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamQuery(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags);

cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);

#ifdef __cplusplus
}

/* ---- the kernel language -------------------------------------------------------------------- */

#include <cstring>
#include <memory>
#include <tuple>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
/* A block's threads run one after another on one host thread (see
 * launch below), so a function's static is the block's shared memory. */
#define __shared__ static thread_local

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

extern thread_local uint3 threadIdx, blockIdx;
extern thread_local dim3 blockDim, gridDim;

namespace host_cuda {
/* Queues on stream a run of body(arg) for every thread of every block (arg
 * is kept alive by hold until then). A kernel's first launch runs each
 * thread as a fiber, so that __syncthreads and the warp shuffles can
 * suspend it; a kernel that never waited then runs as plain calls (a wait
 * in that mode stops the process with a message). */
void launch(const void *kernel, const char *name, dim3 grid, dim3 block, cudaStream_t stream,
            std::shared_ptr<void> hold, void (*body)(void *), void *arg);
void syncthreads(void);
/* mode 0: from lane + delta (own value past the warp's end); 1: from lane ^ delta */
void shuffle(unsigned mask, const void *in, void *out, size_t size, int mode, unsigned delta);
} // namespace host_cuda

inline void __syncthreads(void)
{
    host_cuda::syncthreads();
}

template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta)
{
    T out;
    host_cuda::shuffle(mask, &v, &out, sizeof v, 0, delta);
    return out;
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask)
{
    T out;
    host_cuda::shuffle(mask, &v, &out, sizeof v, 1, (unsigned)lane_mask);
    return out;
}

/* The integer min and max of CUDA's device library. */
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }

/* Rounded as written: no contraction into fused multiply-adds. */
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fdiv_rn(float a, float b) { volatile float r = a / b; return r; }
inline float __fsqrt_rn(float a) { return __builtin_sqrtf(a); }
inline double __dadd_rn(double a, double b) { volatile double r = a + b; return r; }
inline double __dsub_rn(double a, double b) { volatile double r = a - b; return r; }
inline double __dmul_rn(double a, double b) { volatile double r = a * b; return r; }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }

/* kernel<<<grid, block, 0, stream>>>(args...): the arguments are taken
 * (converted to the parameters' types) when the launch is queued, and each
 * thread gets its own copies of them, as on a GPU. */
template <typename... P, typename... A>
inline void host_cuda_launch(void (*kernel)(P...), const char *name, dim3 grid, dim3 block, cudaStream_t stream,
                             A &&...args)
{
    struct Call {
        void (*kernel)(P...);
        std::tuple<P...> params;
        static void run(void *p)
        {
            const Call *c = static_cast<const Call *>(p);
            std::apply(c->kernel, c->params);
        }
    };
    std::shared_ptr<Call> call(new Call{kernel, std::tuple<P...>(std::forward<A>(args)...)});
    void *arg = call.get();
    host_cuda::launch(reinterpret_cast<const void *>(kernel), name, grid, block, stream, std::move(call), &Call::run,
                      arg);
}
#endif /* __cplusplus */

#endif
