/* The CUDA backend of the op table: cuBLAS for gemm, one plain kernel per
 * other op. See core/ops.h for the contract of each op and cuda/ops_cuda.h
 * for what this backend adds to it (device pointers, one stream, abort on a
 * failed call).
 *
 * Determinism: every kernel here gives the same bits for the same inputs on
 * every run. No op uses atomics; reductions run in a fixed order (col2im and
 * the max-pool backward gather per input instead of scattering per output).
 * Several ops also give exactly the CPU's bits, because they perform the same
 * float operations in the same order: im2col, col2im, relu, max-pool
 * (values, argmax and backward), dropout (the same Philox draws), the bias
 * additions, scale, softmax backward and the SGD step (written with _rn
 * intrinsics so that nvcc cannot contract them into FMAs). gemm, the bias
 * gradients and the softmax forward sum in another order than the CPU and
 * agree with it to float rounding.
 */
#include "ops_cuda.h"

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <atomic>
#include <pthread.h>

extern "C" {
#include "core/error.h"
}
#include "cuda_check.h"

/* ---- checks ---------------------------------------------------------------- */

/* Ops return void and a failed CUDA call mid-step (a fault, a lost device,
 * a launch with bad arguments) leaves the parameters in an unknown state that
 * no caller could repair: print the call, its place and CUDA's reason, then
 * abort so that mpirun takes the job down instead of letting other ranks
 * wait in the next all-reduce. */
static void cuda_check(cudaError_t e, const char *call, const char *file, int line)
{
    if (e == cudaSuccess) return;
    basin_cuda_fail(e, call, file, line);
    abort();
}

static void cublas_check(cublasStatus_t s, const char *call, const char *file, int line)
{
    if (s == CUBLAS_STATUS_SUCCESS) return;
    basin_error_at(BASIN_ERR_RUNTIME, file, line, "%s failed: %s", call, cublasGetStatusString(s));
    abort();
}

#define CUDA_CHECK(call) cuda_check((call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(call) cublas_check((call), #call, __FILE__, __LINE__)

/* An argument no kernel of this file can handle (a size past int for
 * cuBLAS): a bug in the caller, reported like a failed call. */
static void fatal_at(const char *what, const char *file, int line)
{
    basin_error_at(BASIN_ERR_RUNTIME, file, line, "ops_cuda: %s", what);
    abort();
}
#define FATAL(what) fatal_at((what), __FILE__, __LINE__)

/* ---- backend state ------------------------------------------------------------ */

/* What softmax_xent_fwd reduces on the device and copies back. */
struct XentResult {
    double loss;
    unsigned long long correct;
    unsigned long long bad_labels;
};

/* The stream, the cuBLAS handle and a small result buffer of this process.
 * They live in a file-level static because the op table is a constant
 * struct of plain function pointers: an op takes no context argument, so
 * there is nowhere else to keep them. One process drives one GPU (rank ->
 * GPU by local rank), so one set per process is all there is to hold. They
 * are created once, on first use, on the device current at that moment, and
 * live until the process exits (the driver releases them then). */
struct CudaState {
    int device;
    cudaStream_t stream;
    cudaStream_t upload;     /* ops_cuda_upload's copies */
    cudaEvent_t uploaded;    /* the last of them */
    /* Double-buffered uploads (ops_cuda_upload_begin): per slot, the end of
     * its last use on the stream, and the end of its last copy. */
    int slot;                /* the slot being filled; -1 before the first begin */
    cudaEvent_t released[OPS_CUDA_SLOTS];
    cudaEvent_t copied[OPS_CUDA_SLOTS];
    unsigned char released_set[OPS_CUDA_SLOTS], copied_set[OPS_CUDA_SLOTS];
    cublasHandle_t blas;
    XentResult *result; /* device memory, one XentResult */
};

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
    g_ready.store(1, std::memory_order_release);
}

static CudaState *st(void)
{
    pthread_once(&g_once, state_init);
    return &g_state;
}

/* Launch geometry: grid-stride loops cover any n with a bounded grid. */
enum { THREADS = 256 };

static unsigned blocks_for(size_t n)
{
    size_t b = (n + THREADS - 1) / THREADS;
    const size_t cap = 65536; /* 16.7 M threads, plenty to fill any GPU */
    return (unsigned)(b < cap ? b : cap);
}

#define LAUNCH(kernel, grid, block, ...)                                                   \
    do {                                                                                   \
        kernel<<<(grid), (block), 0, st()->stream>>>(__VA_ARGS__);                         \
        cuda_check(cudaGetLastError(), "launch of " #kernel, __FILE__, __LINE__);          \
    } while (0)

#define GRID_STRIDE(i, n)                                                                  \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);              \
         i += (size_t)gridDim.x * blockDim.x)

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

/* ---- dense algebra ------------------------------------------------------------------- */

/* C = beta C over an m x n block; beta = 0 writes zeros without reading C. */
__global__ void k_scale_block(size_t m, size_t n, float beta, float *c, size_t ldc)
{
    GRID_STRIDE(i, m * n)
    {
        float *e = c + (i / n) * ldc + i % n;
        *e = beta == 0.0f ? 0.0f : beta * *e;
    }
}

static int fits_int(size_t v)
{
    return v <= (size_t)INT_MAX;
}

/* The one place where row-major meets cuBLAS's column-major. A row-major
 * matrix with row stride ld is, read column-major with the same ld, its
 * transpose. So the row-major C (m x n) = op(A) op(B) is the column-major
 * C^T (n x m) = op(B)^T op(A)^T: cuBLAS gets B first, with B's transpose
 * flag, then A with A's, and the sizes n, m, k. */
static void gemm_rowmajor(cublasHandle_t h, int trans_a, int trans_b, size_t m, size_t n,
                          size_t k, float alpha, const float *a, size_t lda, const float *b,
                          size_t ldb, float beta, float *c, size_t ldc)
{
    if (!fits_int(m) || !fits_int(n) || !fits_int(k) || !fits_int(lda) || !fits_int(ldb) ||
        !fits_int(ldc))
        FATAL("gemm size or stride above INT_MAX: cuBLAS takes int");
    CUBLAS_CHECK(cublasSgemm(h, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                             trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, (int)n, (int)m, (int)k, &alpha,
                             b, (int)ldb, a, (int)lda, &beta, c, (int)ldc));
}

static void cuda_gemm(int trans_a, int trans_b, size_t m, size_t n, size_t k, float alpha,
                      const float *a, size_t lda, const float *b, size_t ldb, float beta,
                      float *c, size_t ldc)
{
    if (m == 0 || n == 0) return;
    /* k = 0 leaves nothing to multiply, and cuBLAS rejects the lda = 0 that
     * a caller naturally passes for an empty A (as the CPU backend does). */
    if (k == 0) {
        if (beta != 1.0f) LAUNCH(k_scale_block, blocks_for(m * n), THREADS, m, n, beta, c, ldc);
        return;
    }
    gemm_rowmajor(st()->blas, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

__global__ void k_add_bias_rows(float *y, const float *bias, size_t rows, size_t cols)
{
    GRID_STRIDE(i, rows * cols) y[i] += bias[i % cols];
}

static void cuda_add_bias_rows(float *y, const float *bias, size_t rows, size_t cols)
{
    if (!rows || !cols) return;
    LAUNCH(k_add_bias_rows, blocks_for(rows * cols), THREADS, y, bias, rows, cols);
}

__global__ void k_add_bias_channels(float *y, const float *bias, size_t n, size_t c, size_t hw)
{
    GRID_STRIDE(i, n * c * hw) y[i] += bias[(i / hw) % c];
}

static void cuda_add_bias_channels(float *y, const float *bias, size_t n, size_t c, size_t hw)
{
    if (!n || !c || !hw) return;
    LAUNCH(k_add_bias_channels, blocks_for(n * c * hw), THREADS, y, bias, n, c, hw);
}

/* One thread per column, summing down the rows in order: neighbouring
 * threads read neighbouring addresses, and the order is fixed. */
__global__ void k_bias_grad_rows(float *db, const float *dy, size_t rows, size_t cols)
{
    GRID_STRIDE(j, cols)
    {
        float acc = 0.0f;
        for (size_t r = 0; r < rows; r++) acc += dy[r * cols + j];
        db[j] += acc;
    }
}

static void cuda_bias_grad_rows(float *db, const float *dy, size_t rows, size_t cols)
{
    if (!rows || !cols) return;
    LAUNCH(k_bias_grad_rows, blocks_for(cols), THREADS, db, dy, rows, cols);
}

/* One block per channel: each thread sums a fixed stride of the channel's
 * n * hw values, then a tree in shared memory adds the partial sums. */
enum { CH_THREADS = 256 };

__global__ void k_bias_grad_channels(float *db, const float *dy, size_t n, size_t c, size_t hw)
{
    __shared__ float part[CH_THREADS];
    const size_t ch = blockIdx.x;
    float acc = 0.0f;
    for (size_t s = 0; s < n; s++) {
        const float *p = dy + (s * c + ch) * hw;
        for (size_t i = threadIdx.x; i < hw; i += CH_THREADS) acc += p[i];
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned half = CH_THREADS / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) db[ch] += part[0];
}

static void cuda_bias_grad_channels(float *db, const float *dy, size_t n, size_t c, size_t hw)
{
    if (!n || !c || !hw) return;
    if (c > (size_t)INT_MAX) FATAL("bias_grad_channels: more channels than a grid holds");
    LAUNCH(k_bias_grad_channels, (unsigned)c, CH_THREADS, db, dy, n, c, hw);
}

/* ---- convolution helpers --------------------------------------------------------------- */

/* One thread per col entry: row (ci, ki, kj), column (oy, ox). */
__global__ void k_im2col(Window g, const float *x, float *col)
{
    const size_t plane = (size_t)g.oh * g.ow;
    GRID_STRIDE(i, (size_t)g.c * g.kh * g.kw * plane)
    {
        const size_t r = i / plane, q = i % plane;
        const int kj = (int)(r % g.kw), ki = (int)(r / g.kw % g.kh), ci = (int)(r / g.kw / g.kh);
        const int oy = (int)(q / g.ow), ox = (int)(q % g.ow);
        const int iy = oy * g.stride - g.pad + ki, ix = ox * g.stride - g.pad + kj;
        const bool inside = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
        col[i] = inside ? x[((size_t)ci * g.h + iy) * g.w + ix] : 0.0f;
    }
}

static void cuda_im2col(const Window *g, const float *x, float *col)
{
    size_t n = (size_t)g->c * g->kh * g->kw * g->oh * g->ow;
    if (!n) return;
    LAUNCH(k_im2col, blocks_for(n), THREADS, *g, x, col);
}

/* The adjoint of im2col as a gather: one thread per input pixel adds every
 * col entry that im2col read from it, in (ki, kj) order -- the order in
 * which the CPU's scatter adds them, so the sums are the CPU's bits. No two
 * threads write the same pixel: no atomics, same result every run. */
__global__ void k_col2im(Window g, const float *col, float *dx)
{
    const size_t plane = (size_t)g.oh * g.ow;
    GRID_STRIDE(i, (size_t)g.c * g.h * g.w)
    {
        const int ix = (int)(i % g.w), iy = (int)(i / g.w % g.h), ci = (int)(i / g.w / g.h);
        float acc = dx[i];
        for (int ki = 0; ki < g.kh; ki++) {
            const int ty = iy + g.pad - ki; /* oy * stride for the window row ki */
            if (ty < 0) break;               /* and for every larger ki */
            if (ty % g.stride) continue;
            const int oy = ty / g.stride;
            if (oy >= g.oh) continue;
            for (int kj = 0; kj < g.kw; kj++) {
                const int tx = ix + g.pad - kj;
                if (tx < 0) break;
                if (tx % g.stride) continue;
                const int ox = tx / g.stride;
                if (ox >= g.ow) continue;
                acc += col[(((size_t)ci * g.kh + ki) * g.kw + kj) * plane + (size_t)oy * g.ow + ox];
            }
        }
        dx[i] = acc;
    }
}

static void cuda_col2im(const Window *g, const float *col, float *dx)
{
    size_t n = (size_t)g->c * g->h * g->w;
    if (!n) return;
    LAUNCH(k_col2im, blocks_for(n), THREADS, *g, col, dx);
}

/* ---- activations --------------------------------------------------------------------------- */

__global__ void k_relu_fwd(const float *x, float *y, size_t n)
{
    GRID_STRIDE(i, n) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

static void cuda_relu_fwd(const float *x, float *y, size_t n)
{
    if (n) LAUNCH(k_relu_fwd, blocks_for(n), THREADS, x, y, n);
}

/* dx may be dy: each thread reads its element before writing it. */
__global__ void k_relu_bwd(const float *y, const float *dy, float *dx, size_t n)
{
    GRID_STRIDE(i, n)
    {
        const float g = dy[i];
        dx[i] = y[i] > 0.0f ? g : 0.0f;
    }
}

static void cuda_relu_bwd(const float *y, const float *dy, float *dx, size_t n)
{
    if (n) LAUNCH(k_relu_bwd, blocks_for(n), THREADS, y, dy, dx, n);
}

/* ---- pooling ---------------------------------------------------------------------------------- */

/* One thread per output, scanning its window in row order like the CPU:
 * padding never wins, strict > keeps the first of equal values, and a
 * window over padding only gives 0 and arg -1. */
__global__ void k_maxpool_fwd(Window g, size_t n, const float *x, float *y, int32_t *arg)
{
    const size_t out_plane = (size_t)g.oh * g.ow, in_plane = (size_t)g.h * g.w;
    GRID_STRIDE(i, n * g.c * out_plane)
    {
        const int ox = (int)(i % g.ow), oy = (int)(i / g.ow % g.oh);
        const size_t p = i / out_plane; /* sample * c + channel */
        const int ch = (int)(p % g.c);
        const float *xp = x + p * in_plane;
        const int32_t base = (int32_t)((size_t)ch * in_plane);
        const int y0 = oy * g.stride - g.pad, x0 = ox * g.stride - g.pad;
        const int ya = y0 < 0 ? 0 : y0, yb = y0 + g.kh > g.h ? g.h : y0 + g.kh;
        const int xa = x0 < 0 ? 0 : x0, xb = x0 + g.kw > g.w ? g.w : x0 + g.kw;
        float m = 0.0f;
        int32_t a = -1;
        for (int iy = ya; iy < yb; iy++) {
            for (int ix = xa; ix < xb; ix++) {
                const float v = xp[iy * g.w + ix];
                if (a < 0 || v > m) m = v, a = base + iy * g.w + ix;
            }
        }
        y[i] = m;
        arg[i] = a;
    }
}

static void cuda_maxpool_fwd(const Window *g, size_t n, const float *x, float *y, int32_t *arg)
{
    size_t outs = n * (size_t)g->c * g->oh * g->ow;
    if (outs) LAUNCH(k_maxpool_fwd, blocks_for(outs), THREADS, *g, n, x, y, arg);
}

/* Backward as a gather, for every geometry: one thread per input visits the
 * outputs whose window covers it, in (oy, ox) order, and adds dy where the
 * output's argmax is this input. It writes every dx element (the clearing
 * comes free), needs no atomics even for overlapping windows, adds in the
 * CPU's order (so the result is the CPU's bits) and reads at most
 * ceil(kh/s) ceil(kw/s) outputs per input: one for the usual 2x2/2 pool. */
__global__ void k_maxpool_bwd(Window g, size_t n, const float *dy, const int32_t *arg, float *dx)
{
    const size_t out_plane = (size_t)g.oh * g.ow, in_plane = (size_t)g.h * g.w;
    GRID_STRIDE(i, n * g.c * in_plane)
    {
        const int ix = (int)(i % g.w), iy = (int)(i / g.w % g.h);
        const size_t p = i / in_plane; /* sample * c + channel */
        const int ch = (int)(p % g.c);
        const int32_t self = (int32_t)((size_t)ch * in_plane + (size_t)iy * g.w + ix);
        /* Windows oy with oy*s - pad <= iy < oy*s - pad + kh. */
        const int ly = iy + g.pad - g.kh + 1, lx = ix + g.pad - g.kw + 1;
        const int oy0 = ly <= 0 ? 0 : (ly + g.stride - 1) / g.stride;
        const int ox0 = lx <= 0 ? 0 : (lx + g.stride - 1) / g.stride;
        const int oy1 = min((iy + g.pad) / g.stride, g.oh - 1);
        const int ox1 = min((ix + g.pad) / g.stride, g.ow - 1);
        const float *dyp = dy + p * out_plane;
        const int32_t *ap = arg + p * out_plane;
        float acc = 0.0f;
        for (int oy = oy0; oy <= oy1; oy++) {
            for (int ox = ox0; ox <= ox1; ox++) {
                const size_t o = (size_t)oy * g.ow + ox;
                if (ap[o] == self) acc += dyp[o];
            }
        }
        dx[i] = acc;
    }
}

static void cuda_maxpool_bwd(const Window *g, size_t n, const float *dy, const int32_t *arg,
                             float *dx)
{
    size_t ins = n * (size_t)g->c * g->h * g->w;
    if (ins) LAUNCH(k_maxpool_bwd, blocks_for(ins), THREADS, *g, n, dy, arg, dx);
}

/* ---- dropout ----------------------------------------------------------------------------------- */

/* Philox4x32-10, word for word the CPU's (core/rng.c): same constants, same
 * round, same counter and key layout, so the i-th draw is the same number on
 * both devices. */
__device__ static float philox_uniform(uint64_t key, uint64_t stream, uint64_t index)
{
    uint32_t c0 = (uint32_t)index, c1 = (uint32_t)(index >> 32);
    uint32_t c2 = (uint32_t)stream, c3 = (uint32_t)(stream >> 32);
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    for (int r = 0; r < 10; r++) {
        const uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0, c1 = n1, c2 = n2, c3 = n3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    /* 24 bits to float and a power-of-two scale: both exact. */
    return (float)(c0 >> 8) * (1.0f / 16777216.0f);
}

__global__ void k_dropout_fwd(const float *x, float *y, float *mask, size_t n, float p,
                              float keep_scale, uint64_t seed, uint64_t stream, uint64_t offset)
{
    GRID_STRIDE(i, n)
    {
        const float m = philox_uniform(seed, stream, offset + i) >= p ? keep_scale : 0.0f;
        mask[i] = m;
        y[i] = x[i] * m;
    }
}

static void cuda_dropout_fwd(const float *x, float *y, float *mask, size_t n, float p,
                             uint64_t seed, uint64_t stream, uint64_t offset)
{
    if (!n) return;
    /* The CPU's factor, computed the CPU's way (in float, on the host). */
    const float keep_scale = 1.0f / (1.0f - p);
    LAUNCH(k_dropout_fwd, blocks_for(n), THREADS, x, y, mask, n, p, keep_scale, seed, stream,
           offset);
}

__global__ void k_dropout_bwd(const float *dy, const float *mask, float *dx, size_t n)
{
    GRID_STRIDE(i, n) dx[i] = dy[i] * mask[i];
}

static void cuda_dropout_bwd(const float *dy, const float *mask, float *dx, size_t n)
{
    if (n) LAUNCH(k_dropout_bwd, blocks_for(n), THREADS, dy, mask, dx, n);
}

/* ---- loss ------------------------------------------------------------------------------------------ */

/* One block for the whole batch, one warp per row (rows strided over the
 * warps). A warp finds the row's max and first argmax, sums exp(x - max) in
 * double like the CPU, writes the probabilities and, in lane 0, adds the
 * row's loss to the warp's total. The warps' totals are added in warp order
 * at the end: the loss sum and correct count are the same bits every run,
 * without atomics. A batch is at most a few thousand rows of a few logits,
 * so one block is not the bottleneck of a step. */
enum { XENT_WARPS = 16 };

__global__ void k_softmax_xent_fwd(const float *logits, const int32_t *labels, size_t b, size_t k,
                                   float *probs, XentResult *out)
{
    __shared__ double s_loss[XENT_WARPS];
    __shared__ unsigned long long s_hits[XENT_WARPS], s_bad[XENT_WARPS];
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    double loss = 0.0;
    unsigned long long hits = 0, bad = 0;
    for (size_t r = warp; r < b; r += XENT_WARPS) {
        const float *x = logits + r * k;
        float *pr = probs + r * k;
        /* Max and the first index that holds it: each lane scans its stride
         * keeping its first max, then the warp keeps the larger value, or
         * the lower index of equal ones. */
        float mx = -INFINITY;
        size_t best = SIZE_MAX;
        for (size_t j = lane; j < k; j += 32) {
            if (best == SIZE_MAX || x[j] > mx) mx = x[j], best = j;
        }
        for (int d = 16; d > 0; d /= 2) {
            const float om = __shfl_xor_sync(0xffffffffu, mx, d);
            const unsigned long long ob = __shfl_xor_sync(0xffffffffu, (unsigned long long)best, d);
            if (om > mx || (om == mx && ob < best)) mx = om, best = (size_t)ob;
        }
        /* exp of x - max <= 0 cannot overflow; the row sum is at least 1. */
        double sum = 0.0;
        for (size_t j = lane; j < k; j += 32) {
            const float e = expf(x[j] - mx);
            pr[j] = e;
            sum += e;
        }
        for (int d = 16; d > 0; d /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, d);
        const float inv = (float)(1.0 / sum);
        for (size_t j = lane; j < k; j += 32) pr[j] *= inv;
        if (lane == 0) {
            const int32_t label = labels[r];
            if (label < 0 || (size_t)label >= k) {
                bad++;
            } else {
                /* -log softmax[label] = log(sum) - (x[label] - max) */
                loss += log(sum) - ((double)x[label] - (double)mx);
                hits += best == (size_t)label;
            }
        }
    }
    if (lane == 0) s_loss[warp] = loss, s_hits[warp] = hits, s_bad[warp] = bad;
    __syncthreads();
    if (threadIdx.x == 0) {
        XentResult res = {0.0, 0, 0};
        for (int w = 0; w < XENT_WARPS; w++) {
            res.loss += s_loss[w];
            res.correct += s_hits[w];
            res.bad_labels += s_bad[w];
        }
        *out = res;
    }
}

static void cuda_softmax_xent_fwd(const float *logits, const int32_t *labels, size_t b, size_t k,
                                  float *probs, double *loss_sum, size_t *correct)
{
    *loss_sum = 0.0;
    *correct = 0;
    if (!b) return;
    CudaState *s = st();
    LAUNCH(k_softmax_xent_fwd, 1, XENT_WARPS * 32, logits, labels, b, k, probs, s->result);
    XentResult res;
    CUDA_CHECK(cudaMemcpyAsync(&res, s->result, sizeof res, cudaMemcpyDeviceToHost, s->stream));
    CUDA_CHECK(cudaStreamSynchronize(s->stream));
    /* The CPU asserts labels in [0, k); here the check costs nothing, since
     * the result comes back anyway. A label out of range is a corrupt
     * dataset or a model with the wrong class count: stop. */
    if (res.bad_labels) {
        basin_error_at(BASIN_ERR_RUNTIME, __FILE__, __LINE__,
                       "softmax_xent_fwd: %llu of %zu labels outside [0, %zu)", res.bad_labels, b,
                       k);
        abort();
    }
    *loss_sum = res.loss;
    *correct = (size_t)res.correct;
}

/* dlogits = scale * (probs - onehot): the CPU's two roundings. A label out
 * of range (reported by the forward pass) subtracts nothing. */
__global__ void k_softmax_xent_bwd(const float *probs, const int32_t *labels, size_t b, size_t k,
                                   float scale, float *dlogits)
{
    GRID_STRIDE(i, b * k)
    {
        const float p = probs[i];
        const bool hot = (size_t)(int64_t)labels[i / k] == i % k;
        dlogits[i] = hot ? scale * (p - 1.0f) : scale * p;
    }
}

static void cuda_softmax_xent_bwd(const float *probs, const int32_t *labels, size_t b, size_t k,
                                  float scale, float *dlogits)
{
    if (b && k) LAUNCH(k_softmax_xent_bwd, blocks_for(b * k), THREADS, probs, labels, b, k, scale, dlogits);
}

/* ---- optimizer ----------------------------------------------------------------------------------------- */

/* The whole update in one pass over the flat buffers. Every operation is an
 * explicit _rn intrinsic in the CPU's order, so nvcc cannot fuse a multiply
 * and an add into an FMA: the same inputs give the CPU's bits. */
__global__ void k_sgd_step(float *p, const float *g, float *v, size_t n, float lr, float lr_wd,
                           float mu, int nesterov)
{
    GRID_STRIDE(i, n)
    {
        const float pi = p[i], gi = g[i];
        float u = gi;
        if (mu != 0.0f) {
            const float vi = __fadd_rn(__fmul_rn(mu, v[i]), gi);
            v[i] = vi;
            u = nesterov ? __fadd_rn(gi, __fmul_rn(mu, vi)) : vi;
        }
        p[i] = __fsub_rn(__fsub_rn(pi, __fmul_rn(lr_wd, pi)), __fmul_rn(lr, u));
    }
}

static void cuda_sgd_step(float *params, const float *grads, float *mom, size_t n,
                          const SgdStep *s)
{
    if (!n) return;
    /* lr * wd in float on the host, as the CPU computes it. */
    const float lr_wd = s->lr * s->weight_decay;
    LAUNCH(k_sgd_step, blocks_for(n), THREADS, params, grads, mom, n, s->lr, lr_wd, s->momentum,
           s->nesterov);
}

__global__ void k_scale(float *x, size_t n, float a)
{
    GRID_STRIDE(i, n) x[i] *= a;
}

static void cuda_scale(float *x, size_t n, float a)
{
    if (n) LAUNCH(k_scale, blocks_for(n), THREADS, x, n, a);
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
    /* softmax_xent_fwd */ cuda_softmax_xent_fwd,
    /* softmax_xent_bwd */ cuda_softmax_xent_bwd,
    /* sgd_step */ cuda_sgd_step,
    /* scale */ cuda_scale,
    /* host_memory */ 0,
};
