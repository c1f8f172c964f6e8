/* Host execution of the CUDA backend: the runtime, the kernel launches,
 * cuBLAS and NCCL of the headers beside this file, on the CPU (see cuda_runtime.h
 * and README.md). */
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

extern "C" {
#include <cblas.h>
}

#include "cublas_v2.h"
#include "cuda_runtime.h"
#include "nccl.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define HOST_CUDA_ASAN 1
#else
#define HOST_CUDA_ASAN 0
#endif

/* ---- reports ------------------------------------------------------------------------------ */

static void vsay(const char *fmt, va_list ap)
{
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    fprintf(stderr, "host cuda: %s\n", line);
}

/* What the real runtime would only call "invalid argument", said in full. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
}

/* A kernel that cannot go on (a deadlock, a shuffle of a part of a warp):
 * on a GPU it would hang or fault; here the process stops with the reason. */
[[noreturn]] static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
    abort();
}

static thread_local cudaError_t t_last = cudaSuccess;

static cudaError_t fail(cudaError_t e)
{
    t_last = e;
    return e;
}

/* The errors this runtime returns: name and text, as the real one's. */
static const struct {
    cudaError_t e;
    const char *name, *text;
} k_errors[] = {
    {cudaSuccess, "cudaSuccess", "no error"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory"},
    {cudaErrorInvalidConfiguration, "cudaErrorInvalidConfiguration", "invalid configuration argument"},
    {cudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected"},
    {cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal"},
    {cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle", "invalid resource handle"},
    {cudaErrorNotReady, "cudaErrorNotReady", "device not ready"},
    {cudaErrorLaunchFailure, "cudaErrorLaunchFailure", "unspecified launch failure"},
};

extern "C" const char *cudaGetErrorName(cudaError_t e)
{
    for (const auto &k : k_errors)
        if (k.e == e) return k.name;
    return "cudaErrorUnknown";
}

extern "C" const char *cudaGetErrorString(cudaError_t e)
{
    for (const auto &k : k_errors)
        if (k.e == e) return k.text;
    return "unknown error";
}

extern "C" cudaError_t cudaGetLastError(void)
{
    cudaError_t e = t_last;
    t_last = cudaSuccess;
    return e;
}

extern "C" cudaError_t cudaPeekAtLastError(void)
{
    return t_last;
}

/* ---- the devices ------------------------------------------------------------------------------ */

/* One device, or BASIN_HOST_CUDA_DEVICES of them (0..64): each is the same
 * host memory under its own index and PCI bus id, so that ranks of one
 * host take different ones (rank -> device by local rank) and may share
 * an NCCL communicator. 0 is a machine without a GPU. */
static int device_count(void)
{
    static int count = 0;
    static std::once_flag once;
    std::call_once(once, [] {
        const char *e = getenv("BASIN_HOST_CUDA_DEVICES");
        char *end = NULL;
        long v = e && *e ? strtol(e, &end, 10) : 1;
        if (e && *e && (*end || v < 0 || v > 64)) {
            say("BASIN_HOST_CUDA_DEVICES=%s: not a count from 0 to 64", e);
            exit(2);
        }
        count = (int)v;
    });
    return count;
}

static thread_local int t_device = 0;

extern "C" cudaError_t cudaGetDeviceCount(int *count)
{
    if (!count) return fail(cudaErrorInvalidValue);
    *count = device_count();
    return *count ? cudaSuccess : fail(cudaErrorNoDevice);
}

extern "C" cudaError_t cudaSetDevice(int device)
{
    if (device < 0 || device >= device_count()) return fail(cudaErrorInvalidDevice);
    t_device = device;
    return cudaSuccess;
}

extern "C" cudaError_t cudaGetDevice(int *device)
{
    if (!device) return fail(cudaErrorInvalidValue);
    *device = t_device;
    return cudaSuccess;
}

extern "C" cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device)
{
    if (!prop) return fail(cudaErrorInvalidValue);
    if (device < 0 || device >= device_count()) return fail(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "host execution (no GPU)");
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    prop->totalGlobalMem = pages > 0 && page > 0 ? (size_t)pages * (size_t)page : 0;
    prop->major = 9;
    prop->minor = 0;
    prop->multiProcessorCount = 1;
    return cudaSuccess;
}

extern "C" cudaError_t cudaDeviceGetPCIBusId(char *bus, int len, int device)
{
    if (!bus || len <= 0) return fail(cudaErrorInvalidValue);
    if (device < 0 || device >= device_count()) return fail(cudaErrorInvalidDevice);
    snprintf(bus, (size_t)len, "0000:%02x:00.0", device + 1);
    return cudaSuccess;
}

/* ---- memory ------------------------------------------------------------------------------------ */

/* Every allocation of cudaMalloc (device) and cudaMallocHost (pinned), by
 * start address. */
namespace {
struct Block {
    size_t bytes;
    int device; /* 1: cudaMalloc, 0: cudaMallocHost */
};
std::mutex g_mem_lock;
std::map<uintptr_t, Block> g_mem;

/* The allocation holding [p, p + bytes), of the given kind, or NULL. */
const Block *find_block(const void *p, size_t bytes, int device, uintptr_t *start)
{
    const uintptr_t a = (uintptr_t)p;
    auto it = g_mem.upper_bound(a);
    if (it == g_mem.begin()) return NULL;
    --it;
    if (it->second.device != device || a - it->first > it->second.bytes ||
        bytes > it->second.bytes - (a - it->first))
        return NULL;
    if (start) *start = it->first;
    return &it->second;
}

int is_device(const void *p, size_t bytes)
{
    std::lock_guard<std::mutex> hold(g_mem_lock);
    return find_block(p, bytes, 1, NULL) != NULL;
}

/* Whether p points into any device allocation at all. */
int touches_device(const void *p)
{
    return is_device(p, 0);
}

cudaError_t alloc(void **p, size_t bytes, int device)
{
    if (!p) return fail(cudaErrorInvalidValue);
    *p = NULL;
    void *m = NULL;
    /* Exactly the bytes asked, so that a sanitizer sees the first one past
     * the end; 256-byte alignment, as cudaMalloc gives. */
    if (posix_memalign(&m, 256, bytes ? bytes : 1)) return fail(cudaErrorMemoryAllocation);
    /* A GPU's fresh memory holds whatever was there: here all-ones bytes
     * (NaN as floats), so that a read before the first write shows. */
    memset(m, 0xff, bytes);
    std::lock_guard<std::mutex> hold(g_mem_lock);
    g_mem[(uintptr_t)m] = Block{bytes, device};
    *p = m;
    return cudaSuccess;
}

cudaError_t release(void *p, int device, const char *call)
{
    if (!p) return cudaSuccess;
    {
        std::lock_guard<std::mutex> hold(g_mem_lock);
        auto it = g_mem.find((uintptr_t)p);
        if (it == g_mem.end() || it->second.device != device) {
            say("%s(%p): not an allocation of %s", call, p, device ? "cudaMalloc" : "cudaMallocHost");
            return fail(cudaErrorInvalidValue);
        }
        g_mem.erase(it);
    }
    free(p);
    return cudaSuccess;
}
} // namespace

/* ---- stream queues ---------------------------------------------------------------------------- */

/* Work on a stream waits in its queue until the host needs it done: a
 * synchronisation of the stream, of an event recorded on it, of the
 * device, or a wait of another stream's work on such an event. So device
 * work runs as late as CUDA allows, which shows what a GPU would only show
 * now and then: a host that reuses a pinned buffer before its copy has
 * left it, or a stream that reads what another writes without waiting for
 * it. The legacy default stream (NULL) runs everything queued, then its
 * own work at once. */
struct HostCudaStream {
    std::deque<std::function<void()>> queue;
    uint64_t queued, done; /* items queued so far, run so far */
    int destroyed;         /* kept: events may still name it */
};

namespace {
std::recursive_mutex g_work; /* one runner at a time, for every host thread */
/* Every stream made, never freed (so never destroyed before the leak check
 * at exit either). */
std::vector<HostCudaStream *> &g_streams = *new std::vector<HostCudaStream *>;

/* Run s's work up to its item upto (1-based), in order. */
void run_until(HostCudaStream *s, uint64_t upto)
{
    std::lock_guard<std::recursive_mutex> hold(g_work);
    while (s->done < upto && !s->queue.empty()) {
        std::function<void()> f = std::move(s->queue.front());
        s->queue.pop_front();
        s->done++;
        f();
    }
}

void run_stream(HostCudaStream *s);

void run_all(void)
{
    std::lock_guard<std::recursive_mutex> hold(g_work);
    for (HostCudaStream *s : g_streams) run_stream(s);
}

void run_stream(HostCudaStream *s)
{
    if (!s) {
        run_all();
        return;
    }
    std::lock_guard<std::recursive_mutex> hold(g_work);
    run_until(s, s->queued);
}

void enqueue(cudaStream_t s, std::function<void()> f)
{
    std::lock_guard<std::recursive_mutex> hold(g_work);
    if (!s) {
        run_all();
        f();
        return;
    }
    s->queue.push_back(std::move(f));
    s->queued++;
}
} // namespace

extern "C" cudaError_t cudaMalloc(void **p, size_t bytes)
{
    return alloc(p, bytes, 1);
}

/* Both wait for the device, as CUDA's do. */
extern "C" cudaError_t cudaFree(void *p)
{
    run_all();
    return release(p, 1, "cudaFree");
}

extern "C" cudaError_t cudaMallocHost(void **p, size_t bytes)
{
    return alloc(p, bytes, 0);
}

extern "C" cudaError_t cudaFreeHost(void *p)
{
    run_all();
    return release(p, 0, "cudaFreeHost");
}

extern "C" cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *attr, const void *p)
{
    if (!attr) return fail(cudaErrorInvalidValue);
    memset(attr, 0, sizeof *attr);
    std::lock_guard<std::mutex> hold(g_mem_lock);
    if (find_block(p, 0, 1, NULL)) {
        attr->type = cudaMemoryTypeDevice;
        attr->devicePointer = (void *)p;
    } else if (find_block(p, 0, 0, NULL)) {
        attr->type = cudaMemoryTypeHost;
        attr->devicePointer = attr->hostPointer = (void *)p;
    } else {
        attr->type = cudaMemoryTypeUnregistered;
        attr->device = -2;
    }
    return cudaSuccess;
}

static const char *kind_name(enum cudaMemcpyKind k)
{
    switch (k) {
    case cudaMemcpyHostToHost: return "HostToHost";
    case cudaMemcpyHostToDevice: return "HostToDevice";
    case cudaMemcpyDeviceToHost: return "DeviceToHost";
    case cudaMemcpyDeviceToDevice: return "DeviceToDevice";
    case cudaMemcpyDefault: return "Default";
    }
    return "?";
}

/* One side of a copy: on the device it must lie inside one allocation; on
 * the host it must not point into one. */
static int side_ok(const void *p, size_t bytes, int device)
{
    return device ? is_device(p, bytes) : !touches_device(p);
}

/* The checks of a copy: pointers where the kind says, inside their
 * allocations, ranges apart. */
static cudaError_t copy_ok(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, const char *call)
{
    if (!dst || !src) {
        say("%s: NULL pointer (dst %p, src %p, %zu bytes)", call, dst, src, bytes);
        return fail(cudaErrorInvalidValue);
    }
    int src_dev = -1, dst_dev = -1; /* -1: either */
    switch (kind) {
    case cudaMemcpyHostToHost: src_dev = dst_dev = 0; break;
    case cudaMemcpyHostToDevice: src_dev = 0, dst_dev = 1; break;
    case cudaMemcpyDeviceToHost: src_dev = 1, dst_dev = 0; break;
    case cudaMemcpyDeviceToDevice: src_dev = dst_dev = 1; break;
    case cudaMemcpyDefault: break;
    default: return fail(cudaErrorInvalidValue);
    }
    if ((src_dev >= 0 && !side_ok(src, bytes, src_dev)) || (dst_dev >= 0 && !side_ok(dst, bytes, dst_dev)) ||
        (src_dev < 0 && touches_device(src) && !is_device(src, bytes)) ||
        (dst_dev < 0 && touches_device(dst) && !is_device(dst, bytes))) {
        say("%s(%p <- %p, %zu bytes, %s): %s", call, dst, src, bytes, kind_name(kind),
            "a pointer is not where the kind says, or the bytes run past its allocation");
        return fail(cudaErrorInvalidValue);
    }
    const uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
    if (d != s && d < s + bytes && s < d + bytes) {
        say("%s(%p <- %p, %zu bytes): the ranges overlap", call, dst, src, bytes);
        return fail(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}

/* Host memory that cudaMallocHost did not give (pageable). */
static int pageable(const void *p)
{
    std::lock_guard<std::mutex> hold(g_mem_lock);
    return !find_block(p, 0, 1, NULL) && !find_block(p, 0, 0, NULL);
}

extern "C" cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind)
{
    if (!bytes) return cudaSuccess;
    cudaError_t e = copy_ok(dst, src, bytes, kind, "cudaMemcpy");
    if (e != cudaSuccess) return e;
    run_all();
    if (dst != src) memcpy(dst, src, bytes);
    return cudaSuccess;
}

/* As CUDA: from pageable memory the bytes are taken before the call
 * returns; into pageable memory the call waits for the copy; between
 * device and pinned memory it is queued. */
extern "C" cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                                       cudaStream_t stream)
{
    if (!bytes) return cudaSuccess;
    cudaError_t e = copy_ok(dst, src, bytes, kind, "cudaMemcpyAsync");
    if (e != cudaSuccess || dst == src) return e;
    if (pageable(src)) {
        auto taken = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char *>(src),
                                                                  static_cast<const unsigned char *>(src) + bytes);
        enqueue(stream, [dst, taken] { memcpy(dst, taken->data(), taken->size()); });
    } else if (pageable(dst)) {
        run_stream(stream);
        memcpy(dst, src, bytes);
    } else {
        enqueue(stream, [dst, src, bytes] { memcpy(dst, src, bytes); });
    }
    return cudaSuccess;
}

static cudaError_t set_ok(void *p, int value, size_t bytes, const char *call)
{
    if (!is_device(p, bytes)) {
        say("%s(%p, %d, %zu bytes): not inside one device allocation", call, p, value, bytes);
        return fail(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}

extern "C" cudaError_t cudaMemset(void *p, int value, size_t bytes)
{
    if (!bytes) return cudaSuccess;
    cudaError_t e = set_ok(p, value, bytes, "cudaMemset");
    if (e != cudaSuccess) return e;
    run_all();
    memset(p, value, bytes);
    return cudaSuccess;
}

extern "C" cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t stream)
{
    if (!bytes) return cudaSuccess;
    cudaError_t e = set_ok(p, value, bytes, "cudaMemsetAsync");
    if (e != cudaSuccess) return e;
    enqueue(stream, [p, value, bytes] { memset(p, value, bytes); });
    return cudaSuccess;
}

/* ---- streams and events ------------------------------------------------------------------------ */

/* An event is the position of its last record in its stream's queue, and
 * the host time at which the work reached it. */
struct HostCudaEvent {
    unsigned flags;
    HostCudaStream *stream; /* of the last record; NULL: none, or the legacy stream */
    uint64_t seq;
    int recorded;
    std::shared_ptr<double> ms;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
}

extern "C" cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags)
{
    if (!s) return fail(cudaErrorInvalidValue);
    (void)flags; /* non-blocking or not: no stream waits for the legacy one here */
    HostCudaStream *n = new HostCudaStream{{}, 0, 0, 0};
    std::lock_guard<std::recursive_mutex> hold(g_work);
    g_streams.push_back(n);
    *s = n;
    return cudaSuccess;
}

extern "C" cudaError_t cudaStreamCreate(cudaStream_t *s)
{
    return cudaStreamCreateWithFlags(s, cudaStreamDefault);
}

/* Its work still runs (as CUDA's does), now. */
extern "C" cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    if (!s || s->destroyed) return fail(cudaErrorInvalidResourceHandle);
    run_stream(s);
    s->destroyed = 1;
    return cudaSuccess;
}

extern "C" cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    run_stream(s);
    return cudaSuccess;
}

/* A query finishes the work: a caller that polls is waiting for it. */
extern "C" cudaError_t cudaStreamQuery(cudaStream_t s)
{
    run_stream(s);
    return cudaSuccess;
}

extern "C" cudaError_t cudaDeviceSynchronize(void)
{
    run_all();
    return cudaSuccess;
}

/* The work queued on s from now on waits for e's last record (as CUDA:
 * a later record does not move the wait). */
extern "C" cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags)
{
    (void)flags;
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    HostCudaStream *on = e->stream;
    const uint64_t seq = e->seq;
    if (on) enqueue(s, [on, seq] { run_until(on, seq); });
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags)
{
    if (!e) return fail(cudaErrorInvalidValue);
    *e = new HostCudaEvent{flags, NULL, 0, 0, std::make_shared<double>(0.0)};
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventCreate(cudaEvent_t *e)
{
    return cudaEventCreateWithFlags(e, cudaEventDefault);
}

extern "C" cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    delete e;
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s)
{
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    std::lock_guard<std::recursive_mutex> hold(g_work);
    std::shared_ptr<double> ms = std::make_shared<double>(0.0);
    e->ms = ms;
    e->recorded = 1;
    e->stream = s;
    enqueue(s, [ms] { *ms = now_ms(); });
    e->seq = s ? s->queued : 0;
    return cudaSuccess;
}

static void event_wait(cudaEvent_t e)
{
    if (e->stream) run_until(e->stream, e->seq);
}

extern "C" cudaError_t cudaEventQuery(cudaEvent_t e)
{
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    event_wait(e);
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventSynchronize(cudaEvent_t e)
{
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    event_wait(e);
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end)
{
    if (!ms || !start || !end) return fail(cudaErrorInvalidValue);
    if ((start->flags | end->flags) & cudaEventDisableTiming) {
        say("cudaEventElapsedTime: an event was made with cudaEventDisableTiming");
        return fail(cudaErrorInvalidResourceHandle);
    }
    if (!start->recorded || !end->recorded) {
        say("cudaEventElapsedTime: an event was never recorded");
        return fail(cudaErrorInvalidResourceHandle);
    }
    event_wait(start);
    event_wait(end);
    *ms = (float)(*end->ms - *start->ms);
    return cudaSuccess;
}

/* ---- kernels ------------------------------------------------------------------------------------------ */

thread_local uint3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;

/* A thread of a block is a fiber: its own stack and saved registers. On
 * x86-64 the switch is a few instructions (callee-saved registers and the
 * floating-point control words); elsewhere ucontext, which also saves the
 * signal mask with a system call per switch. */
#if defined(__x86_64__)
extern "C" void host_cuda_switch(void **save_sp, void *next_sp);
__asm__(".text\n"
        ".globl host_cuda_switch\n"
        ".type host_cuda_switch,@function\n"
        "host_cuda_switch:\n"
        "  pushq %rbp\n"
        "  pushq %rbx\n"
        "  pushq %r12\n"
        "  pushq %r13\n"
        "  pushq %r14\n"
        "  pushq %r15\n"
        "  subq $8, %rsp\n"
        "  stmxcsr (%rsp)\n"
        "  fnstcw 4(%rsp)\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rsi, %rsp\n"
        "  ldmxcsr (%rsp)\n"
        "  fldcw 4(%rsp)\n"
        "  addq $8, %rsp\n"
        "  popq %r15\n"
        "  popq %r14\n"
        "  popq %r13\n"
        "  popq %r12\n"
        "  popq %rbx\n"
        "  popq %rbp\n"
        "  ret\n"
        ".size host_cuda_switch, .-host_cuda_switch\n");

namespace {
struct Context {
    void *sp;
};

/* A stack that host_cuda_switch enters at entry: the control words of this
 * thread, six zero registers, entry as the return address and a zero one
 * above it (entry never returns), 16-byte aligned as after a call. */
void ctx_make(Context *c, char *stack, size_t bytes, void (*entry)(void))
{
    uintptr_t top = ((uintptr_t)stack + bytes) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)top;
    *--sp = 0;
    *--sp = (uint64_t)(uintptr_t)entry;
    for (int i = 0; i < 6; i++) *--sp = 0;
    uint32_t words[2];
    __asm__ volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(words[0]), "=m"(words[1]));
    *--sp = (uint64_t)words[0] | (uint64_t)(words[1] & 0xffffu) << 32;
    c->sp = sp;
}

void ctx_switch(Context *from, Context *to)
{
    host_cuda_switch(&from->sp, to->sp);
}
} // namespace
#else
namespace {
struct Context {
    ucontext_t uc;
};

void ctx_make(Context *c, char *stack, size_t bytes, void (*entry)(void))
{
    if (getcontext(&c->uc)) die("getcontext: %s", strerror(errno));
    c->uc.uc_stack.ss_sp = stack;
    c->uc.uc_stack.ss_size = bytes;
    c->uc.uc_link = NULL;
    makecontext(&c->uc, entry, 0);
}

void ctx_switch(Context *from, Context *to)
{
    if (swapcontext(&from->uc, &to->uc)) die("swapcontext: %s", strerror(errno));
}
} // namespace
#endif

namespace {
enum FiberState { RUNNABLE, AT_BARRIER, AT_SHUFFLE, DONE };

struct Fiber {
    Context ctx;
    FiberState state;
    unsigned parity; /* which of the two shuffle slot rows this thread uses next */
    uint3 tid;
    char *stack;
    void *fake_stack; /* ASan's, while switched away */
};

/* One block of a kernel run as fibers, on the launching host thread. */
struct BlockRun {
    const char *name;
    void (*body)(void *);
    void *arg;
    unsigned nthreads;
    std::vector<Fiber> fibers;
    Fiber *cur;
    Context sched;
    const void *sched_bottom; /* the launching thread's stack, for ASan */
    size_t sched_size;
    std::vector<uint64_t> slots[2]; /* a value per thread, for the shuffles */
    int waited;                     /* a thread reached __syncthreads or a shuffle */
};

thread_local BlockRun *t_run;   /* set while a block runs as fibers */
thread_local int t_direct;      /* set while a kernel runs as plain calls */
thread_local const char *t_kernel;

/* Stacks of the fibers, kept for the next block: 1024 threads at most. */
constexpr size_t STACK_BYTES = 256 * 1024;
thread_local std::vector<char *> t_stacks;

char *stack_for(size_t i)
{
    while (t_stacks.size() <= i) {
        void *m = mmap(NULL, STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (m == MAP_FAILED) die("cannot map a fiber stack: %s", strerror(errno));
        /* a guard page below: an overflow faults instead of writing on */
        if (mprotect(m, (size_t)sysconf(_SC_PAGESIZE), PROT_NONE)) die("mprotect: %s", strerror(errno));
        t_stacks.push_back(static_cast<char *>(m));
    }
    return t_stacks[i];
}

void asan_start(void **fake, const void *bottom, size_t size)
{
#if HOST_CUDA_ASAN
    __sanitizer_start_switch_fiber(fake, bottom, size);
#else
    (void)fake, (void)bottom, (void)size;
#endif
}

void asan_finish(void *fake, const void **bottom, size_t *size)
{
#if HOST_CUDA_ASAN
    __sanitizer_finish_switch_fiber(fake, bottom, size);
#else
    (void)fake, (void)bottom, (void)size;
#endif
}

void fiber_main(void)
{
    BlockRun *r = t_run;
    asan_finish(NULL, &r->sched_bottom, &r->sched_size);
    r->body(r->arg);
    Fiber *f = r->cur;
    f->state = DONE;
    asan_start(NULL, r->sched_bottom, r->sched_size); /* NULL: this fiber ends */
    ctx_switch(&f->ctx, &r->sched);
    die("kernel %s: a finished thread was resumed", r->name);
}

/* From a fiber back to the block's scheduler, until released. */
void suspend(Fiber *f, FiberState why)
{
    BlockRun *r = t_run;
    f->state = why;
    r->waited = 1;
    asan_start(&f->fake_stack, r->sched_bottom, r->sched_size);
    ctx_switch(&f->ctx, &r->sched);
    asan_finish(f->fake_stack, &r->sched_bottom, &r->sched_size);
}

unsigned linear(uint3 t)
{
    return t.x + blockDim.x * (t.y + blockDim.y * t.z);
}

void run_block_fibers(BlockRun *r)
{
    const unsigned n = r->nthreads;
    r->fibers.assign(n, Fiber{});
    r->slots[0].assign(n, 0);
    r->slots[1].assign(n, 0);
    unsigned i = 0;
    for (unsigned z = 0; z < blockDim.z; z++)
        for (unsigned y = 0; y < blockDim.y; y++)
            for (unsigned x = 0; x < blockDim.x; x++, i++) {
                Fiber *f = &r->fibers[i];
                f->tid = uint3{x, y, z};
                f->state = RUNNABLE;
                f->stack = stack_for(i);
                ctx_make(&f->ctx, f->stack, STACK_BYTES, fiber_main);
            }
    const long page = sysconf(_SC_PAGESIZE);
    for (;;) {
        for (Fiber &f : r->fibers) {
            if (f.state != RUNNABLE) continue;
            r->cur = &f;
            threadIdx = f.tid;
            void *fake = NULL;
            asan_start(&fake, f.stack + page, STACK_BYTES - (size_t)page);
            ctx_switch(&r->sched, &f.ctx);
            asan_finish(fake, NULL, NULL);
        }
        /* Nobody can run: release a whole warp at a shuffle, else the
         * block at a barrier once every live thread is there. */
        unsigned done = 0, at_barrier = 0;
        int released = 0;
        for (unsigned w = 0; w * 32 < n; w++) {
            unsigned lanes = n - w * 32 < 32 ? n - w * 32 : 32, shuffling = 0;
            for (unsigned l = 0; l < lanes; l++) shuffling += r->fibers[w * 32 + l].state == AT_SHUFFLE;
            if (!shuffling) continue;
            if (lanes != 32)
                die("kernel %s: a shuffle in a warp of %u threads (a block of %u): only whole warps shuffle "
                    "with a full mask", r->name, lanes, n);
            if (shuffling == 32) {
                for (unsigned l = 0; l < 32; l++) r->fibers[w * 32 + l].state = RUNNABLE;
                released = 1;
            }
        }
        if (released) continue;
        for (const Fiber &f : r->fibers) done += f.state == DONE, at_barrier += f.state == AT_BARRIER;
        if (done == n) return;
        if (done + at_barrier == n) {
            for (Fiber &f : r->fibers)
                if (f.state == AT_BARRIER) f.state = RUNNABLE;
            continue;
        }
        die("kernel %s, block (%u,%u,%u): deadlock: %u of %u threads wait at __syncthreads, %u at a shuffle "
            "whose warp never completes, %u have finished", r->name, blockIdx.x, blockIdx.y, blockIdx.z,
            at_barrier, n, n - done - at_barrier, done);
    }
}

/* Kernels known not to wait (a fiber run in which no thread did). */
std::mutex g_plain_lock;
std::unordered_map<const void *, int> g_plain;

int valid_geometry(dim3 g, dim3 b)
{
    const unsigned long long threads = (unsigned long long)b.x * b.y * b.z;
    return g.x >= 1 && g.x <= 0x7fffffffu && g.y >= 1 && g.y <= 65535 && g.z >= 1 && g.z <= 65535 &&
           b.x >= 1 && b.y >= 1 && b.z >= 1 && b.x <= 1024 && b.y <= 1024 && b.z <= 64 && threads <= 1024;
}
} // namespace

/* One launch, when its stream runs it. */
static void run_grid(const void *kernel, const char *name, dim3 grid, dim3 block, void (*body)(void *), void *arg)
{
    if (t_run || t_direct) die("launch of %s from inside kernel %s", name, t_kernel);
    int plain;
    {
        std::lock_guard<std::mutex> hold(g_plain_lock);
        auto it = g_plain.find(kernel);
        plain = it != g_plain.end() && it->second;
    }
    gridDim = grid;
    blockDim = block;
    t_kernel = name;
    if (plain) {
        t_direct = 1;
        for (unsigned bz = 0; bz < grid.z; bz++)
            for (unsigned by = 0; by < grid.y; by++)
                for (unsigned bx = 0; bx < grid.x; bx++) {
                    blockIdx = uint3{bx, by, bz};
                    for (unsigned z = 0; z < block.z; z++)
                        for (unsigned y = 0; y < block.y; y++)
                            for (unsigned x = 0; x < block.x; x++) {
                                threadIdx = uint3{x, y, z};
                                body(arg);
                            }
                }
        t_direct = 0;
        return;
    }
    BlockRun r;
    r.name = name;
    r.body = body;
    r.arg = arg;
    r.nthreads = block.x * block.y * block.z;
    r.cur = NULL;
    r.sched_bottom = NULL;
    r.sched_size = 0;
    r.waited = 0;
    t_run = &r;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                blockIdx = uint3{bx, by, bz};
                run_block_fibers(&r);
            }
    t_run = NULL;
    std::lock_guard<std::mutex> hold(g_plain_lock);
    g_plain[kernel] = !r.waited;
}

void host_cuda::launch(const void *kernel, const char *name, dim3 grid, dim3 block, cudaStream_t stream,
                       std::shared_ptr<void> hold, void (*body)(void *), void *arg)
{
    if (!valid_geometry(grid, block)) {
        say("launch of %s: grid (%u,%u,%u), block (%u,%u,%u): invalid configuration", name, grid.x, grid.y,
            grid.z, block.x, block.y, block.z);
        t_last = cudaErrorInvalidConfiguration;
        return;
    }
    enqueue(stream, [kernel, name, grid, block, hold, body, arg] { run_grid(kernel, name, grid, block, body, arg); });
}

void host_cuda::syncthreads(void)
{
    if (t_direct)
        die("kernel %s called __syncthreads in a launch run as plain calls (an earlier launch never waited): "
            "a kernel must wait on every launch or on none", t_kernel);
    if (!t_run) die("__syncthreads outside a kernel");
    suspend(t_run->cur, AT_BARRIER);
}

void host_cuda::shuffle(unsigned mask, const void *in, void *out, size_t size, int mode, unsigned delta)
{
    if (t_direct)
        die("kernel %s shuffled in a launch run as plain calls (an earlier launch never waited): a kernel "
            "must wait on every launch or on none", t_kernel);
    if (!t_run) die("a warp shuffle outside a kernel");
    if (mask != 0xffffffffu) die("kernel %s: a shuffle with mask %#x: only full warps are run", t_kernel, mask);
    if (size > sizeof(uint64_t) || delta >= 32) die("kernel %s: a shuffle of %zu bytes by %u", t_kernel, size, delta);
    BlockRun *r = t_run;
    Fiber *f = r->cur;
    const unsigned me = linear(f->tid), lane = me % 32, base = me - lane;
    std::vector<uint64_t> &row = r->slots[f->parity];
    uint64_t v = 0;
    memcpy(&v, in, size);
    row[me] = v;
    suspend(f, AT_SHUFFLE);
    unsigned src = mode == 0 ? lane + delta : lane ^ delta;
    if (src >= 32) src = lane; /* __shfl_down_sync past the warp's end: the thread's own value */
    memcpy(out, &row[base + src], size);
    f->parity ^= 1;
}

/* ---- cuBLAS ---------------------------------------------------------------------------------------------- */

struct HostCublas {
    cudaStream_t stream;
};

extern "C" cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    if (!h) return CUBLAS_STATUS_INVALID_VALUE;
    *h = new HostCublas{NULL};
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s)
{
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode)
{
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    (void)mode;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" const char *cublasGetStatusString(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

/* A column-major rows x cols matrix with leading dimension ld spans
 * ld (cols - 1) + rows elements. */
static int matrix_ok(const char *which, const float *p, int rows, int cols, int ld)
{
    if (ld < (rows > 1 ? rows : 1)) {
        say("cublasSgemm: %s is %d x %d (column-major) with leading dimension %d < %d", which, rows, cols, ld,
            rows > 1 ? rows : 1);
        return 0;
    }
    if (rows == 0 || cols == 0) return 1;
    const size_t span = (size_t)ld * (size_t)(cols - 1) + (size_t)rows;
    if (!is_device(p, span * sizeof(float))) {
        say("cublasSgemm: %s (%d x %d, ld %d: %zu floats from %p) is not inside one device allocation", which, rows,
            cols, ld, span, (const void *)p);
        return 0;
    }
    return 1;
}

extern "C" cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                      int k, const float *alpha, const float *a, int lda, const float *b, int ldb,
                                      const float *beta, float *c, int ldc)
{
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (m < 0 || n < 0 || k < 0 || !alpha || !beta || (ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) ||
        (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T)) {
        say("cublasSgemm: m %d, n %d, k %d, ops %d/%d: invalid", m, n, k, (int)ta, (int)tb);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    /* op(A) is m x k, op(B) k x n, C m x n, all column-major. */
    const int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
    const int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
    if (!matrix_ok("C", c, m, n, ldc)) return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    if (k > 0 && (!matrix_ok("A", a, ar, ac, lda) || !matrix_ok("B", b, br, bc, ldb)))
        return CUBLAS_STATUS_INVALID_VALUE;
    /* alpha and beta are read now (host pointers), the matrices when the
     * stream runs the gemm */
    const float al = *alpha, be = *beta;
    enqueue(h->stream, [=] {
        if (k == 0 || al == 0.0f) {
            for (int j = 0; j < n; j++)
                for (int i = 0; i < m; i++) {
                    float *e = c + (size_t)j * (size_t)ldc + (size_t)i;
                    *e = be == 0.0f ? 0.0f : be * *e;
                }
            return;
        }
        cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                    tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, al, a, lda, b, ldb, be, c, ldc);
    });
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- NCCL ------------------------------------------------------------------------------------------------ */

/* A communicator of several ranks (processes of one host) meets in a POSIX
 * shared-memory segment named by its unique id: a barrier and a 1 MiB slot
 * per rank. A collective goes slot-sized piece by piece: every rank puts
 * its piece in its slot, all wait, each reads what it needs, all wait. Sums
 * add the ranks' values in rank order, so every rank gets the same bits. A
 * rank that waits more than HOST_NCCL_TIMEOUT_S for a peer fails the call
 * (ncclSystemError) and the communicator. */
enum { HOST_NCCL_SLOT = 1 << 20 };
static const double HOST_NCCL_TIMEOUT_S = 120.0;
static const uint64_t HOST_NCCL_MAGIC = 0x6c63636e74736f68ull;

namespace {
struct NcclShm {
    uint64_t magic;
    int nranks;
    std::atomic<int> ready;
    std::atomic<int> arrived;
    std::atomic<unsigned> generation;
    alignas(64) unsigned char slots[1]; /* nranks * HOST_NCCL_SLOT */
};
} // namespace

struct HostNcclComm {
    char last[256];
    int nranks, rank;
    int broken; /* a peer was lost: every later call fails */
    NcclShm *shm;
    size_t map_bytes;
};
static thread_local char t_nccl_last[256];

static ncclResult_t nccl_refuse(ncclComm_t comm, ncclResult_t r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static ncclResult_t nccl_refuse(ncclComm_t comm, ncclResult_t r, const char *fmt, ...)
{
    char *dst = comm ? comm->last : t_nccl_last;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, sizeof t_nccl_last, fmt, ap);
    va_end(ap);
    return r;
}

extern "C" const char *ncclGetErrorString(ncclResult_t r)
{
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    }
    return "unknown result code";
}

extern "C" const char *ncclGetLastError(ncclComm_t comm)
{
    return comm ? comm->last : t_nccl_last;
}

static size_t shm_bytes(int nranks)
{
    return offsetof(NcclShm, slots) + (size_t)nranks * HOST_NCCL_SLOT;
}

static unsigned char *slot(ncclComm_t c, int r)
{
    return c->shm->slots + (size_t)r * HOST_NCCL_SLOT;
}

/* All ranks of the communicator meet; 0 when they did, else the call fails
 * and so does every later one. */
static int meet(ncclComm_t c, const char *call)
{
    if (c->nranks == 1) return 0;
    NcclShm *h = c->shm;
    const unsigned gen = h->generation.load(std::memory_order_acquire);
    if (h->arrived.fetch_add(1, std::memory_order_acq_rel) == c->nranks - 1) {
        h->arrived.store(0, std::memory_order_relaxed);
        h->generation.store(gen + 1, std::memory_order_release);
        return 0;
    }
    const double t0 = now_ms();
    for (unsigned long spins = 0; h->generation.load(std::memory_order_acquire) == gen; spins++) {
        if (spins < 1000) {
            sched_yield();
            continue;
        }
        struct timespec ts = {0, 100 * 1000};
        nanosleep(&ts, NULL);
        if (now_ms() - t0 > 1e3 * HOST_NCCL_TIMEOUT_S) {
            c->broken = 1;
            nccl_refuse(c, ncclSystemError, "%s: rank %d of %d waited %.0f s for its peers", call, c->rank,
                        c->nranks, HOST_NCCL_TIMEOUT_S);
            return 1;
        }
    }
    return 0;
}

extern "C" ncclResult_t ncclGetUniqueId(ncclUniqueId *id)
{
    static std::atomic<unsigned> made{0};
    if (!id) return nccl_refuse(NULL, ncclInvalidArgument, "ncclGetUniqueId: NULL");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    memset(id, 0, sizeof *id);
    snprintf(id->internal, sizeof id->internal, "/basin-nccl-%ld-%u-%lx", (long)getpid(), made++,
             (unsigned long)ts.tv_nsec);
    return ncclSuccess;
}

static void unmap(ncclComm_t c)
{
    if (c && c->shm) munmap(c->shm, c->map_bytes);
}

extern "C" ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank)
{
    if (!comm) return nccl_refuse(NULL, ncclInvalidArgument, "ncclCommInitRank: NULL");
    *comm = NULL;
    if (nranks < 1 || rank < 0 || rank >= nranks)
        return nccl_refuse(NULL, ncclInvalidArgument, "ncclCommInitRank: rank %d of %d", rank, nranks);
    HostNcclComm *c = new HostNcclComm{};
    c->nranks = nranks;
    c->rank = rank;
    if (nranks == 1) {
        *comm = c;
        return ncclSuccess;
    }
    const char *name = id.internal;
    if (name[0] != '/' || !memchr(id.internal, 0, sizeof id.internal)) {
        delete c;
        return nccl_refuse(NULL, ncclInvalidArgument, "ncclCommInitRank: not an id of ncclGetUniqueId");
    }
    c->map_bytes = shm_bytes(nranks);
    int fd = -1;
    const double t0 = now_ms();
    if (rank == 0) {
        fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
        if (fd >= 0 && ftruncate(fd, (off_t)c->map_bytes)) {
            close(fd);
            shm_unlink(name);
            fd = -1;
        }
    } else {
        /* rank 0 may not have made it yet */
        for (;;) {
            fd = shm_open(name, O_RDWR, 0600);
            struct stat sb;
            if (fd >= 0 && fstat(fd, &sb) == 0 && (size_t)sb.st_size == c->map_bytes) break;
            if (fd >= 0) close(fd);
            fd = -1;
            if (now_ms() - t0 > 1e3 * HOST_NCCL_TIMEOUT_S) break;
            struct timespec ts = {0, 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    if (fd < 0) {
        delete c;
        return nccl_refuse(NULL, ncclSystemError, "ncclCommInitRank: rank %d of %d: shared memory %s: %s", rank,
                           nranks, name, errno ? strerror(errno) : "not made in time");
    }
    void *m = mmap(NULL, c->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        if (rank == 0) shm_unlink(name);
        delete c;
        return nccl_refuse(NULL, ncclSystemError, "ncclCommInitRank: mmap: %s", strerror(errno));
    }
    c->shm = static_cast<NcclShm *>(m);
    NcclShm *h = c->shm;
    if (rank == 0) {
        h->magic = HOST_NCCL_MAGIC;
        h->nranks = nranks;
        new (&h->arrived) std::atomic<int>(0);
        new (&h->generation) std::atomic<unsigned>(0);
        new (&h->ready) std::atomic<int>(0);
        h->ready.store(1, std::memory_order_release);
    } else {
        while (h->ready.load(std::memory_order_acquire) != 1) {
            if (now_ms() - t0 > 1e3 * HOST_NCCL_TIMEOUT_S) break;
            sched_yield();
        }
        if (h->ready.load(std::memory_order_acquire) != 1 || h->magic != HOST_NCCL_MAGIC || h->nranks != nranks) {
            unmap(c);
            delete c;
            return nccl_refuse(NULL, ncclInvalidUsage, "ncclCommInitRank: rank %d of %d: the communicator's "
                               "segment is not ready or was made for another size", rank, nranks);
        }
    }
    const int lost = meet(c, "ncclCommInitRank");
    if (rank == 0) shm_unlink(name); /* everyone has it mapped, or nobody will come */
    if (lost) {
        unmap(c);
        delete c;
        return nccl_refuse(NULL, ncclSystemError, "ncclCommInitRank: rank %d of %d: the other ranks never came",
                           rank, nranks);
    }
    *comm = c;
    return ncclSuccess;
}

extern "C" ncclResult_t ncclCommFinalize(ncclComm_t comm)
{
    return comm ? ncclSuccess : nccl_refuse(NULL, ncclInvalidArgument, "ncclCommFinalize: NULL");
}

extern "C" ncclResult_t ncclCommDestroy(ncclComm_t comm)
{
    unmap(comm);
    delete comm;
    return ncclSuccess;
}

extern "C" ncclResult_t ncclCommAbort(ncclComm_t comm)
{
    unmap(comm);
    delete comm;
    return ncclSuccess;
}

extern "C" ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async)
{
    if (!comm || !async) return nccl_refuse(comm, ncclInvalidArgument, "ncclCommGetAsyncError: NULL");
    *async = comm->broken ? ncclSystemError : ncclSuccess;
    return ncclSuccess;
}

/* A collective runs when it is called, after the work queued before it on
 * its stream: run later, at a synchronisation, one rank could wait for
 * its peers while they wait for it in MPI. Calls in a group run as they
 * come: every rank makes the same calls in the same order, which is all
 * that running them at once needs. */
extern "C" ncclResult_t ncclGroupStart(void)
{
    return ncclSuccess;
}

extern "C" ncclResult_t ncclGroupEnd(void)
{
    return ncclSuccess;
}

static size_t type_bytes(ncclDataType_t t)
{
    switch (t) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    }
    return 0;
}

/* What every collective checks: the communicator, the type (and, for a
 * reduction, float sums: the only kind cuda/ asks for), the root, and that
 * both buffers are device memory of the given sizes. */
static ncclResult_t check(const char *call, ncclComm_t comm, ncclDataType_t type, int reduces, ncclRedOp_t op,
                          int root, const void *send, size_t send_n, const void *recv, size_t recv_n)
{
    if (!comm) return nccl_refuse(NULL, ncclInvalidArgument, "%s: no communicator", call);
    if (comm->broken) return nccl_refuse(comm, ncclSystemError, "%s: a peer was lost earlier", call);
    const size_t size = type_bytes(type);
    if (!size) return nccl_refuse(comm, ncclInvalidArgument, "%s: data type %d", call, (int)type);
    if (reduces && (type != ncclFloat32 || op != ncclSum))
        return nccl_refuse(comm, ncclInvalidArgument, "%s: host execution sums floats only (type %d, op %d)", call,
                           (int)type, (int)op);
    if (root < 0 || root >= comm->nranks)
        return nccl_refuse(comm, ncclInvalidArgument, "%s: root %d of %d ranks", call, root, comm->nranks);
    if ((send_n && !is_device(send, send_n * size)) || (recv_n && !is_device(recv, recv_n * size)))
        return nccl_refuse(comm, ncclInvalidArgument,
                           "%s: %zu elements at %p -> %zu at %p: not inside device allocations", call, send_n, send,
                           recv_n, recv);
    return ncclSuccess;
}

/* dst[i] = the sum over ranks, in rank order, of slot r's i-th float. */
static void sum_slots(ncclComm_t c, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float s = reinterpret_cast<const float *>(slot(c, 0))[i];
        for (int r = 1; r < c->nranks; r++) s += reinterpret_cast<const float *>(slot(c, r))[i];
        dst[i] = s;
    }
}

static const size_t SLOT_FLOATS = HOST_NCCL_SLOT / sizeof(float);

/* reduce: the sum to root alone (root -1: to every rank). */
static ncclResult_t reduce(const char *call, const float *send, float *recv, size_t count, int root, ncclComm_t c)
{
    for (size_t o = 0; o < count; o += SLOT_FLOATS) {
        const size_t n = count - o < SLOT_FLOATS ? count - o : SLOT_FLOATS;
        memcpy(slot(c, c->rank), send + o, n * sizeof(float));
        if (meet(c, call)) return ncclSystemError;
        if (root < 0 || root == c->rank) sum_slots(c, recv + o, n);
        if (meet(c, call)) return ncclSystemError;
    }
    return ncclSuccess;
}

extern "C" ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type,
                                      ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream)
{
    ncclResult_t r = check("ncclAllReduce", comm, type, 1, op, 0, send, count, recv, count);
    if (r != ncclSuccess || !count) return r;
    run_stream(stream);
    if (comm->nranks == 1) {
        if (send != recv) memmove(recv, send, count * sizeof(float));
        return ncclSuccess;
    }
    return reduce("ncclAllReduce", static_cast<const float *>(send), static_cast<float *>(recv), count, -1, comm);
}

extern "C" ncclResult_t ncclReduce(const void *send, void *recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                                   int root, ncclComm_t comm, cudaStream_t stream)
{
    const int at_root = comm && comm->rank == root;
    ncclResult_t r = check("ncclReduce", comm, type, 1, op, root, send, count, recv, at_root ? count : 0);
    if (r != ncclSuccess || !count) return r;
    run_stream(stream);
    if (comm->nranks == 1) {
        if (send != recv) memmove(recv, send, count * sizeof(float));
        return ncclSuccess;
    }
    return reduce("ncclReduce", static_cast<const float *>(send), static_cast<float *>(recv), count, root, comm);
}

extern "C" ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count, ncclDataType_t type, int root,
                                      ncclComm_t comm, cudaStream_t stream)
{
    const int at_root = comm && comm->rank == root;
    ncclResult_t r = check("ncclBroadcast", comm, type, 0, ncclSum, root, send, at_root ? count : 0, recv, count);
    if (r != ncclSuccess || !count) return r;
    run_stream(stream);
    const size_t size = type_bytes(type), bytes = count * size;
    if (comm->nranks == 1) {
        if (send != recv) memmove(recv, send, bytes);
        return ncclSuccess;
    }
    for (size_t o = 0; o < bytes; o += HOST_NCCL_SLOT) {
        const size_t n = bytes - o < HOST_NCCL_SLOT ? bytes - o : (size_t)HOST_NCCL_SLOT;
        if (at_root) memcpy(slot(comm, root), static_cast<const unsigned char *>(send) + o, n);
        if (meet(comm, "ncclBroadcast")) return ncclSystemError;
        memcpy(static_cast<unsigned char *>(recv) + o, slot(comm, root), n);
        if (meet(comm, "ncclBroadcast")) return ncclSystemError;
    }
    return ncclSuccess;
}

extern "C" ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t recv_count, ncclDataType_t type,
                                          ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream)
{
    const size_t ranks = comm ? (size_t)comm->nranks : 1;
    ncclResult_t r = check("ncclReduceScatter", comm, type, 1, op, 0, send, recv_count * ranks, recv, recv_count);
    if (r != ncclSuccess || !recv_count) return r;
    run_stream(stream);
    const float *in = static_cast<const float *>(send);
    float *out = static_cast<float *>(recv);
    if (comm->nranks == 1) {
        if (in != out) memmove(out, in, recv_count * sizeof(float));
        return ncclSuccess;
    }
    /* rank d's share, piece by piece, d in order (in place, recv is send's
     * share of this rank, read into the slot before it is written) */
    for (int d = 0; d < comm->nranks; d++)
        for (size_t o = 0; o < recv_count; o += SLOT_FLOATS) {
            const size_t n = recv_count - o < SLOT_FLOATS ? recv_count - o : SLOT_FLOATS;
            memcpy(slot(comm, comm->rank), in + (size_t)d * recv_count + o, n * sizeof(float));
            if (meet(comm, "ncclReduceScatter")) return ncclSystemError;
            if (d == comm->rank) sum_slots(comm, out + o, n);
            if (meet(comm, "ncclReduceScatter")) return ncclSystemError;
        }
    return ncclSuccess;
}

extern "C" ncclResult_t ncclAllGather(const void *send, void *recv, size_t send_count, ncclDataType_t type,
                                      ncclComm_t comm, cudaStream_t stream)
{
    const size_t ranks = comm ? (size_t)comm->nranks : 1;
    ncclResult_t r = check("ncclAllGather", comm, type, 0, ncclSum, 0, send, send_count, recv, send_count * ranks);
    if (r != ncclSuccess || !send_count) return r;
    run_stream(stream);
    const size_t size = type_bytes(type), bytes = send_count * size;
    if (comm->nranks == 1) {
        if (send != recv) memmove(recv, send, bytes);
        return ncclSuccess;
    }
    for (size_t o = 0; o < bytes; o += HOST_NCCL_SLOT) {
        const size_t n = bytes - o < HOST_NCCL_SLOT ? bytes - o : (size_t)HOST_NCCL_SLOT;
        memcpy(slot(comm, comm->rank), static_cast<const unsigned char *>(send) + o, n);
        if (meet(comm, "ncclAllGather")) return ncclSystemError;
        for (int q = 0; q < comm->nranks; q++)
            memcpy(static_cast<unsigned char *>(recv) + (size_t)q * bytes + o, slot(comm, q), n);
        if (meet(comm, "ncclAllGather")) return ncclSystemError;
    }
    return ncclSuccess;
}
