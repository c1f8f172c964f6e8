/* Shared by the two files of the CUDA backend (C++ only):
 *   ops_cuda.cu      the backend's state (stream, cuBLAS, events), memory,
 *                    device selection, uploads, device timers, the op table;
 *   kernels_cuda.cu  the ops themselves: cuBLAS gemm and one kernel each.
 */
#ifndef BASIN_OPS_CUDA_INTERNAL_H
#define BASIN_OPS_CUDA_INTERNAL_H

#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "ops_cuda.h"

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
static inline void cuda_check(cudaError_t e, const char *call, const char *file, int line)
{
    if (e == cudaSuccess) return;
    basin_cuda_fail(e, call, file, line);
    abort();
}

static inline void cublas_check(cublasStatus_t s, const char *call, const char *file, int line)
{
    if (s == CUBLAS_STATUS_SUCCESS) return;
    basin_error_at(BASIN_ERR_RUNTIME, file, line, "%s failed: %s", call, cublasGetStatusString(s));
    abort();
}

#define CUDA_CHECK(call) cuda_check((call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(call) cublas_check((call), #call, __FILE__, __LINE__)

/* An argument no kernel of this file can handle (a size past int for
 * cuBLAS): a bug in the caller, reported like a failed call. */
static inline void fatal_at(const char *what, const char *file, int line)
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
    /* Device memory, 2 * BN_MAX_PARTS doubles: the per-part sums of the
     * per-channel reductions (bn_moments, bn_bwd_sums) before they are
     * added up. Only ops on the stream use it, one after another. */
    double *bn_part;
};

/* Most (channel, part) blocks of one per-channel reduction that write
 * partial sums (kernels_cuda.cu splits a channel into parts only while
 * c * parts stays within this). */
enum { BN_MAX_PARTS = 2048 };

/* The state of this process, created on first use (ops_cuda.cu). */
CudaState *ops_cuda_state(void);
static inline CudaState *st(void) { return ops_cuda_state(); }

/* Launch geometry: grid-stride loops cover any n with a bounded grid. */
enum { THREADS = 256 };

static inline unsigned blocks_for(size_t n)
{
    size_t b = (n + THREADS - 1) / THREADS;
    const size_t cap = 65536; /* 16.7 M threads, plenty to fill any GPU */
    return (unsigned)(b < cap ? b : cap);
}

#ifdef BASIN_CUDA_HOST
/* Host execution (cuda/host): the same launch, run on the CPU. */
#define LAUNCH(kernel, grid, block, ...)                                                   \
    do {                                                                                   \
        host_cuda_launch(kernel, #kernel, dim3(grid), dim3(block), st()->stream, __VA_ARGS__); \
        cuda_check(cudaGetLastError(), "launch of " #kernel, __FILE__, __LINE__);          \
    } while (0)
#else
#define LAUNCH(kernel, grid, block, ...)                                                   \
    do {                                                                                   \
        kernel<<<(grid), (block), 0, st()->stream>>>(__VA_ARGS__);                         \
        cuda_check(cudaGetLastError(), "launch of " #kernel, __FILE__, __LINE__);          \
    } while (0)
#endif

#define GRID_STRIDE(i, n)                                                                  \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);              \
         i += (size_t)gridDim.x * blockDim.x)

/* The ops of the table, in kernels_cuda.cu (core/ops.h says what each does). */
void cuda_gemm(int trans_a, int trans_b, size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc);
void cuda_add_bias_rows(float *y, const float *bias, size_t rows, size_t cols);
void cuda_add_bias_channels(float *y, const float *bias, size_t n, size_t c, size_t hw);
void cuda_bias_grad_rows(float *db, const float *dy, size_t rows, size_t cols);
void cuda_bias_grad_channels(float *db, const float *dy, size_t n, size_t c, size_t hw);
void cuda_im2col(const Window *g, const float *x, float *col);
void cuda_col2im(const Window *g, const float *col, float *dx);
void cuda_relu_fwd(const float *x, float *y, size_t n);
void cuda_relu_bwd(const float *y, const float *dy, float *dx, size_t n);
void cuda_maxpool_fwd(const Window *g, size_t n, const float *x, float *y, int32_t *arg);
void cuda_maxpool_bwd(const Window *g, size_t n, const float *dy, const int32_t *arg, float *dx);
void cuda_dropout_fwd(const float *x, float *y, float *mask, size_t n, float p, uint64_t seed, uint64_t stream, uint64_t offset);
void cuda_dropout_bwd(const float *dy, const float *mask, float *dx, size_t n);
void cuda_bn_moments(const float *x, size_t n, size_t c, size_t hw, double *sum, double *sumsq);
void cuda_bn_finalize(const double *sum, const double *sumsq, size_t c, double count, float eps, float momentum, float *mean, float *invstd, float *running_mean, float *running_var);
void cuda_bn_eval_stats(const float *running_mean, const float *running_var, size_t c, float eps, float *mean, float *invstd);
void cuda_bn_fwd(const float *x, float *y, size_t n, size_t c, size_t hw, const float *mean, const float *invstd, const float *gamma, const float *beta);
void cuda_bn_bwd_sums(const float *dy, const float *x, size_t n, size_t c, size_t hw, const float *mean, const float *invstd, double *sdy, double *sdyxhat);
void cuda_bn_param_grads(const double *sdy, const double *sdyxhat, size_t c, float *dgamma, float *dbeta);
void cuda_bn_bwd_dx(const float *dy, const float *x, size_t n, size_t c, size_t hw, const float *mean, const float *invstd, const float *gamma, const double *sdy, const double *sdyxhat, double count, float *dx);
void cuda_add(const float *a, const float *b, float *y, size_t n);
void cuda_avgpool_fwd(const Window *g, size_t n, const float *x, float *y);
void cuda_avgpool_bwd(const Window *g, size_t n, const float *dy, float *dx);
void cuda_gap_fwd(const float *x, float *y, size_t n, size_t c, size_t hw);
void cuda_gap_bwd(const float *dy, float *dx, size_t n, size_t c, size_t hw);
void cuda_softmax_xent_fwd(const float *logits, const int32_t *labels, size_t b, size_t k, float *probs, double *loss_sum, size_t *correct);
void cuda_softmax_xent_bwd(const float *probs, const int32_t *labels, size_t b, size_t k, float scale, float *dlogits);
void cuda_sgd_step(float *params, const float *grads, float *mom, size_t n, const SgdStep *s);
void cuda_scale(float *x, size_t n, float a);
void cuda_adam_step(float *params, const float *grads, float *m, float *v, size_t n, const AdamStep *s);
double cuda_sumsq(const float *x, size_t n);
void cuda_lars_step(float *params, const float *grads, float *mom, size_t n, const SgdStep *s, float ratio);

#endif
