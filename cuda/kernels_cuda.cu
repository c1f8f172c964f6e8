/* The ops of the CUDA backend: cuBLAS for gemm, one plain kernel per other
 * op (see ops_cuda.cu for the determinism each keeps, and core/ops.h for
 * the contract of each). */
#include <climits>
#include <cmath>

#include "ops_cuda_internal.h"

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

void cuda_gemm(int trans_a, int trans_b, size_t m, size_t n, size_t k, float alpha,
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

void cuda_add_bias_rows(float *y, const float *bias, size_t rows, size_t cols)
{
    if (!rows || !cols) return;
    LAUNCH(k_add_bias_rows, blocks_for(rows * cols), THREADS, y, bias, rows, cols);
}

__global__ void k_add_bias_channels(float *y, const float *bias, size_t n, size_t c, size_t hw)
{
    GRID_STRIDE(i, n * c * hw) y[i] += bias[(i / hw) % c];
}

void cuda_add_bias_channels(float *y, const float *bias, size_t n, size_t c, size_t hw)
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

void cuda_bias_grad_rows(float *db, const float *dy, size_t rows, size_t cols)
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

void cuda_bias_grad_channels(float *db, const float *dy, size_t n, size_t c, size_t hw)
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

void cuda_im2col(const Window *g, const float *x, float *col)
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

void cuda_col2im(const Window *g, const float *col, float *dx)
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

void cuda_relu_fwd(const float *x, float *y, size_t n)
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

void cuda_relu_bwd(const float *y, const float *dy, float *dx, size_t n)
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

void cuda_maxpool_fwd(const Window *g, size_t n, const float *x, float *y, int32_t *arg)
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

void cuda_maxpool_bwd(const Window *g, size_t n, const float *dy, const int32_t *arg,
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

void cuda_dropout_fwd(const float *x, float *y, float *mask, size_t n, float p,
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

void cuda_dropout_bwd(const float *dy, const float *mask, float *dx, size_t n)
{
    if (n) LAUNCH(k_dropout_bwd, blocks_for(n), THREADS, dy, mask, dx, n);
}

/* ---- batch normalization ------------------------------------------------------------------------ */

/* The per-channel sums (bn_moments, bn_bwd_sums) run on a grid of (channel,
 * part) blocks. A channel's n * hw values, taken in (sample, pixel) order,
 * are cut into `parts` contiguous ranges, one per block; thread t of a block
 * takes values t, t + BN_THREADS, ... of its range, so that neighbouring
 * threads read neighbouring pixels. Each thread sums in double, the block
 * adds its threads' sums in a fixed tree, and the parts, when there is more
 * than one, are added in part order by k_bn_combine: the same bits on every
 * run, without atomics. A channel gets several parts only when there are
 * few channels and many values (the early layers of a CNN), so that the
 * grid still fills the GPU; c * parts stays within BN_MAX_PARTS, the size
 * of the partial-sum buffer. */
enum { BN_THREADS = 256, BN_PART_MIN = 8192 };

/* The walk of one thread over its values of channel blockIdx.x: off is the
 * value's offset in the batch. The pixel index i is carried along, so the
 * step needs no division. */
struct ChannelWalk {
    size_t j, end;       /* index within the channel's n * hw values; end of the part */
    size_t i, off;       /* pixel of j, offset of the value */
    size_t di, step;     /* BN_THREADS % hw, and the offset step without a wrap */
    size_t hw, wrap;     /* pixels per plane; the offset step of a wrap to the next sample */

    __device__ ChannelWalk(size_t n, size_t c, size_t hw_, unsigned parts)
    {
        const size_t m = n * hw_, chunk = (m + parts - 1) / parts;
        const size_t j0 = (size_t)blockIdx.y * chunk, sample = c * hw_;
        hw = hw_;
        j = j0 + threadIdx.x;
        end = j0 + chunk < m ? j0 + chunk : m;
        i = j % hw;
        off = (size_t)blockIdx.x * hw + j / hw * sample + i;
        di = BN_THREADS % hw;
        step = BN_THREADS / hw * sample + di;
        wrap = sample - hw;
    }
    __device__ bool more() const { return j < end; }
    __device__ void next()
    {
        j += BN_THREADS;
        i += di;
        off += step;
        if (i >= hw) i -= hw, off += wrap;
    }
};

/* The sums of a and b over the block, in a fixed order, in thread 0. Every
 * thread of the block calls it. */
__device__ static void block_sum2(double &a, double &b)
{
    __shared__ double sa[BN_THREADS / 32], sb[BN_THREADS / 32];
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int d = 16; d > 0; d /= 2) {
        a += __shfl_down_sync(0xffffffffu, a, d);
        b += __shfl_down_sync(0xffffffffu, b, d);
    }
    if (lane == 0) sa[warp] = a, sb[warp] = b;
    __syncthreads();
    if (warp == 0) {
        a = lane < BN_THREADS / 32 ? sa[lane] : 0.0;
        b = lane < BN_THREADS / 32 ? sb[lane] : 0.0;
        for (int d = 16; d > 0; d /= 2) {
            a += __shfl_down_sync(0xffffffffu, a, d);
            b += __shfl_down_sync(0xffffffffu, b, d);
        }
    }
}

/* Thread 0's result of a (channel, part) block: the channel's sums when it
 * has one part (b times scale_b[ch] when scale_b is given), else the part's
 * slot in the partial-sum buffer. */
__device__ static void put_sums(unsigned parts, double a, double b, const float *scale_b,
                                double *out_a, double *out_b, double *part)
{
    if (threadIdx.x != 0) return;
    const size_t ch = blockIdx.x;
    if (parts == 1) {
        out_a[ch] = a;
        out_b[ch] = scale_b ? b * (double)scale_b[ch] : b;
    } else {
        double *slot = part + 2 * (ch * parts + blockIdx.y);
        slot[0] = a;
        slot[1] = b;
    }
}

/* One thread per channel adds its parts in part order. */
__global__ void k_bn_combine(const double *part, size_t c, unsigned parts, const float *scale_b,
                             double *out_a, double *out_b)
{
    GRID_STRIDE(ch, c)
    {
        const double *p = part + 2 * ch * parts;
        double a = 0.0, b = 0.0;
        for (unsigned k = 0; k < parts; k++) a += p[2 * k], b += p[2 * k + 1];
        out_a[ch] = a;
        out_b[ch] = scale_b ? b * (double)scale_b[ch] : b;
    }
}

__global__ void k_bn_moments(const float *x, size_t n, size_t c, size_t hw, unsigned parts,
                             double *sum, double *sumsq, double *part)
{
    double a = 0.0, b = 0.0;
    for (ChannelWalk w(n, c, hw, parts); w.more(); w.next()) {
        const double v = x[w.off];
        a += v;
        b += v * v;
    }
    block_sum2(a, b);
    put_sums(parts, a, b, NULL, sum, sumsq, part);
}

/* sdyxhat = invstd * sum dy (x - mean), the invstd factor once per channel
 * at the end, as on the CPU. */
__global__ void k_bn_bwd_sums(const float *dy, const float *x, size_t n, size_t c, size_t hw,
                              unsigned parts, const float *mean, const float *invstd, double *sdy,
                              double *sdyxhat, double *part)
{
    const double m = mean[blockIdx.x];
    double a = 0.0, b = 0.0;
    for (ChannelWalk w(n, c, hw, parts); w.more(); w.next()) {
        const double g = dy[w.off];
        a += g;
        b += g * ((double)x[w.off] - m);
    }
    block_sum2(a, b);
    put_sums(parts, a, b, invstd, sdy, sdyxhat, part);
}

/* Parts per channel: enough blocks of at least BN_PART_MIN values to fill
 * the GPU, within the partial-sum buffer. */
static unsigned bn_parts(size_t c, size_t m)
{
    const size_t by_size = (m + BN_PART_MIN - 1) / BN_PART_MIN;
    const size_t by_room = BN_MAX_PARTS / c;
    const size_t p = by_size < by_room ? by_size : by_room;
    return p < 1 ? 1u : (unsigned)p;
}

/* Launch of a per-channel reduction; with n or hw 0 the sums are 0. */
static void zero_doubles(double *a, double *b, size_t c)
{
    CudaState *s = st();
    CUDA_CHECK(cudaMemsetAsync(a, 0, c * sizeof *a, s->stream)); /* all-zero bits = +0.0 */
    CUDA_CHECK(cudaMemsetAsync(b, 0, c * sizeof *b, s->stream));
}

void cuda_bn_moments(const float *x, size_t n, size_t c, size_t hw, double *sum, double *sumsq)
{
    if (!c) return;
    if (!n || !hw) return zero_doubles(sum, sumsq, c);
    if (c > (size_t)INT_MAX) FATAL("bn_moments: more channels than a grid holds");
    CudaState *s = st();
    const unsigned parts = bn_parts(c, n * hw);
    LAUNCH(k_bn_moments, dim3((unsigned)c, parts), BN_THREADS, x, n, c, hw, parts, sum, sumsq,
           s->bn_part);
    if (parts > 1)
        LAUNCH(k_bn_combine, blocks_for(c), THREADS, s->bn_part, c, parts, (const float *)NULL, sum,
               sumsq);
}

void cuda_bn_bwd_sums(const float *dy, const float *x, size_t n, size_t c, size_t hw,
                      const float *mean, const float *invstd, double *sdy, double *sdyxhat)
{
    if (!c) return;
    if (!n || !hw) return zero_doubles(sdy, sdyxhat, c);
    if (c > (size_t)INT_MAX) FATAL("bn_bwd_sums: more channels than a grid holds");
    CudaState *s = st();
    const unsigned parts = bn_parts(c, n * hw);
    LAUNCH(k_bn_bwd_sums, dim3((unsigned)c, parts), BN_THREADS, dy, x, n, c, hw, parts, mean,
           invstd, sdy, sdyxhat, s->bn_part);
    if (parts > 1)
        LAUNCH(k_bn_combine, blocks_for(c), THREADS, s->bn_part, c, parts, invstd, sdy, sdyxhat);
}

/* The CPU's double operations, one by one (the _rn intrinsics keep nvcc
 * from fusing them into FMAs), so the statistics are the CPU's from the
 * same sums. */
__global__ void k_bn_finalize(const double *sum, const double *sumsq, size_t c, double count,
                              float eps, float momentum, float *mean, float *invstd,
                              float *running_mean, float *running_var)
{
    const double mom = momentum, keep = 1.0 - mom;
    const double unbias = count > 1.0 ? count / (count - 1.0) : 1.0;
    GRID_STRIDE(ch, c)
    {
        const double m = sum[ch] / count;
        double var = __dsub_rn(sumsq[ch] / count, __dmul_rn(m, m));
        var = var < 0.0 ? 0.0 : var; /* rounding can take it below 0; NaN stays NaN */
        mean[ch] = (float)m;
        invstd[ch] = (float)(1.0 / sqrt(var + (double)eps));
        if (running_mean) {
            running_mean[ch] =
                (float)__dadd_rn(__dmul_rn(keep, (double)running_mean[ch]), __dmul_rn(mom, m));
            running_var[ch] = (float)__dadd_rn(__dmul_rn(keep, (double)running_var[ch]),
                                               __dmul_rn(mom, __dmul_rn(var, unbias)));
        }
    }
}

void cuda_bn_finalize(const double *sum, const double *sumsq, size_t c, double count, float eps,
                      float momentum, float *mean, float *invstd, float *running_mean,
                      float *running_var)
{
    if (c)
        LAUNCH(k_bn_finalize, blocks_for(c), THREADS, sum, sumsq, c, count, eps, momentum, mean,
               invstd, running_mean, running_var);
}

__global__ void k_bn_eval_stats(const float *running_mean, const float *running_var, size_t c,
                                float eps, float *mean, float *invstd)
{
    GRID_STRIDE(ch, c)
    {
        mean[ch] = running_mean[ch];
        invstd[ch] = (float)(1.0 / sqrt((double)running_var[ch] + (double)eps));
    }
}

void cuda_bn_eval_stats(const float *running_mean, const float *running_var, size_t c, float eps,
                        float *mean, float *invstd)
{
    if (c)
        LAUNCH(k_bn_eval_stats, blocks_for(c), THREADS, running_mean, running_var, c, eps, mean,
               invstd);
}

__global__ void k_bn_param_grads(const double *sdy, const double *sdyxhat, size_t c,
                                 float *dgamma, float *dbeta)
{
    GRID_STRIDE(ch, c)
    {
        dgamma[ch] = (float)sdyxhat[ch];
        dbeta[ch] = (float)sdy[ch];
    }
}

void cuda_bn_param_grads(const double *sdy, const double *sdyxhat, size_t c, float *dgamma,
                         float *dbeta)
{
    if (c) LAUNCH(k_bn_param_grads, blocks_for(c), THREADS, sdy, sdyxhat, c, dgamma, dbeta);
}

/* Element-wise kernels that need each element's channel (i / hw % c) or
 * plane (i / hw): with index type I = uint32_t whenever the batch has at
 * most INT32_MAX elements (the grid-stride step, at most 2^24, cannot wrap
 * it then), since 64-bit divisions cost several times more. */
#define GRID_STRIDE_I(i, n) \
    for (I i = (I)(blockIdx.x * blockDim.x + threadIdx.x); i < (n); i += (I)(gridDim.x * blockDim.x))

#define LAUNCH_INDEXED(kernel, total, ...)                                                         \
    do {                                                                                           \
        if ((total) <= (size_t)INT32_MAX)                                                          \
            LAUNCH(kernel<uint32_t>, blocks_for(total), THREADS, (uint32_t)(total), __VA_ARGS__); \
        else                                                                                       \
            LAUNCH(kernel<size_t>, blocks_for(total), THREADS, (size_t)(total), __VA_ARGS__);     \
    } while (0)

/* y = (x - mean) (gamma invstd) + beta, as the CPU writes it; y may be x. */
template <typename I>
__global__ void k_bn_fwd(I total, I hw, I c, const float *x, float *y, const float *mean,
                         const float *invstd, const float *gamma, const float *beta)
{
    GRID_STRIDE_I(i, total)
    {
        const I ch = i / hw % c;
        y[i] = (x[i] - mean[ch]) * (gamma[ch] * invstd[ch]) + beta[ch];
    }
}

void cuda_bn_fwd(const float *x, float *y, size_t n, size_t c, size_t hw, const float *mean,
                 const float *invstd, const float *gamma, const float *beta)
{
    const size_t total = n * c * hw;
    if (total) LAUNCH_INDEXED(k_bn_fwd, total, hw, c, x, y, mean, invstd, gamma, beta);
}

/* dx = a ((dy - mdy) - (x - mean) invstd k), a = gamma invstd, mdy = sdy /
 * count, k = sdyxhat / count, as the CPU writes it; dx may be dy. */
template <typename I>
__global__ void k_bn_bwd_dx(I total, I hw, I c, const float *dy, const float *x,
                            const float *mean, const float *invstd, const float *gamma,
                            const double *sdy, const double *sdyxhat, double inv_count, float *dx)
{
    GRID_STRIDE_I(i, total)
    {
        const I ch = i / hw % c;
        const float is = invstd[ch], a = gamma[ch] * is;
        const float mdy = (float)(sdy[ch] * inv_count), k = (float)(sdyxhat[ch] * inv_count);
        const float g = dy[i];
        dx[i] = a * ((g - mdy) - (x[i] - mean[ch]) * is * k);
    }
}

void cuda_bn_bwd_dx(const float *dy, const float *x, size_t n, size_t c, size_t hw,
                    const float *mean, const float *invstd, const float *gamma, const double *sdy,
                    const double *sdyxhat, double count, float *dx)
{
    const size_t total = n * c * hw;
    const double inv_count = 1.0 / count; /* as the CPU computes it */
    if (total)
        LAUNCH_INDEXED(k_bn_bwd_dx, total, hw, c, dy, x, mean, invstd, gamma, sdy, sdyxhat,
                       inv_count, dx);
}

/* ---- residual add, average pooling ----------------------------------------------------------------- */

/* y may be a or b: each thread reads its elements before writing. */
__global__ void k_add(const float *a, const float *b, float *y, size_t n)
{
    GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}

void cuda_add(const float *a, const float *b, float *y, size_t n)
{
    if (n) LAUNCH(k_add, blocks_for(n), THREADS, a, b, y, n);
}

/* One thread per output: the window's inputs inside the image added from
 * 0 in row order, then divided by the area -- the CPU's additions in the
 * CPU's order, so the CPU's bits. */
__global__ void k_avgpool_fwd(Window g, size_t n, const float *x, float *y)
{
    const size_t out_plane = (size_t)g.oh * g.ow, in_plane = (size_t)g.h * g.w;
    const float area = (float)(g.kh * g.kw);
    GRID_STRIDE(i, n * g.c * out_plane)
    {
        const int ox = (int)(i % g.ow), oy = (int)(i / g.ow % g.oh);
        const float *xp = x + i / out_plane * in_plane;
        const int y0 = oy * g.stride - g.pad, x0 = ox * g.stride - g.pad;
        const int ya = y0 < 0 ? 0 : y0, yb = y0 + g.kh > g.h ? g.h : y0 + g.kh;
        const int xa = x0 < 0 ? 0 : x0, xb = x0 + g.kw > g.w ? g.w : x0 + g.kw;
        float acc = 0.0f;
        for (int iy = ya; iy < yb; iy++)
            for (int ix = xa; ix < xb; ix++) acc += xp[iy * g.w + ix];
        y[i] = acc / area;
    }
}

void cuda_avgpool_fwd(const Window *g, size_t n, const float *x, float *y)
{
    size_t outs = n * (size_t)g->c * g->oh * g->ow;
    if (outs) LAUNCH(k_avgpool_fwd, blocks_for(outs), THREADS, *g, n, x, y);
}

/* Backward as a gather: one thread per input adds dy / area of every output
 * whose window covers it, writing every dx element without atomics. The
 * order is the CPU's scatter order for that input (output rows ascending,
 * and within a row the window columns ascending, i.e. the output columns
 * descending), so the sums are the CPU's bits. */
__global__ void k_avgpool_bwd(Window g, size_t n, const float *dy, float *dx)
{
    const size_t out_plane = (size_t)g.oh * g.ow, in_plane = (size_t)g.h * g.w;
    const float area = (float)(g.kh * g.kw);
    GRID_STRIDE(i, n * g.c * in_plane)
    {
        const int ix = (int)(i % g.w), iy = (int)(i / g.w % g.h);
        /* Windows oy with oy*s - pad <= iy < oy*s - pad + kh, and so for x. */
        const int ly = iy + g.pad - g.kh + 1, lx = ix + g.pad - g.kw + 1;
        const int oy0 = ly <= 0 ? 0 : (ly + g.stride - 1) / g.stride;
        const int ox0 = lx <= 0 ? 0 : (lx + g.stride - 1) / g.stride;
        const int oy1 = min((iy + g.pad) / g.stride, g.oh - 1);
        const int ox1 = min((ix + g.pad) / g.stride, g.ow - 1);
        const float *dyp = dy + i / in_plane * out_plane;
        float acc = 0.0f;
        for (int oy = oy0; oy <= oy1; oy++)
            for (int ox = ox1; ox >= ox0; ox--) acc += dyp[(size_t)oy * g.ow + ox] / area;
        dx[i] = acc;
    }
}

void cuda_avgpool_bwd(const Window *g, size_t n, const float *dy, float *dx)
{
    size_t ins = n * (size_t)g->c * g->h * g->w;
    if (ins) LAUNCH(k_avgpool_bwd, blocks_for(ins), THREADS, *g, n, dy, dx);
}

/* One warp per (sample, channel) plane: lanes sum a stride of the plane,
 * then a shuffle tree adds the lanes. Every lane of a warp runs the same
 * planes, so the full-mask shuffles are safe. */
__global__ void k_gap_fwd(const float *x, float *y, size_t planes, size_t hw, float div)
{
    const unsigned lane = threadIdx.x % 32;
    const size_t warps = (size_t)gridDim.x * blockDim.x / 32;
    for (size_t p = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; p < planes; p += warps) {
        const float *xp = x + p * hw;
        float acc = 0.0f;
        for (size_t i = lane; i < hw; i += 32) acc += xp[i];
        for (int d = 16; d > 0; d /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, d);
        if (lane == 0) y[p] = acc / div;
    }
}

void cuda_gap_fwd(const float *x, float *y, size_t n, size_t c, size_t hw)
{
    const size_t planes = n * c;
    if (!planes) return;
    LAUNCH(k_gap_fwd, blocks_for(planes * 32), THREADS, x, y, planes, hw, (float)hw);
}

/* dx = dy / hw, one division per element, as on the CPU. */
template <typename I>
__global__ void k_gap_bwd(I total, I hw, const float *dy, float *dx, float div)
{
    GRID_STRIDE_I(i, total) dx[i] = dy[i / hw] / div;
}

void cuda_gap_bwd(const float *dy, float *dx, size_t n, size_t c, size_t hw)
{
    const size_t total = n * c * hw;
    if (total) LAUNCH_INDEXED(k_gap_bwd, total, hw, dy, dx, (float)hw);
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

void cuda_softmax_xent_fwd(const float *logits, const int32_t *labels, size_t b, size_t k,
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

void cuda_softmax_xent_bwd(const float *probs, const int32_t *labels, size_t b, size_t k,
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

void cuda_sgd_step(float *params, const float *grads, float *mom, size_t n,
                          const SgdStep *s)
{
    if (!n) return;
    /* lr * wd in float on the host, as the CPU computes it. */
    const float lr_wd = s->lr * s->weight_decay;
    LAUNCH(k_sgd_step, blocks_for(n), THREADS, params, grads, mom, n, s->lr, lr_wd, s->momentum,
           s->nesterov);
}

/* Adam: the CPU's operations in its order, each rounded alone. */
__global__ void k_adam_step(float *p, const float *g, float *m, float *v, size_t n, float b1, float b2,
                            float c1, float c2, float wd, float lr, float lr_wd, float bc1, float bc2, float eps)
{
    GRID_STRIDE(i, n)
    {
        const float pi = p[i];
        const float gi = wd != 0.0f ? __fadd_rn(g[i], __fmul_rn(wd, pi)) : g[i];
        const float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(c1, gi));
        const float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(c2, gi), gi));
        m[i] = mi;
        v[i] = vi;
        const float den = __fadd_rn(__fsqrt_rn(__fdiv_rn(vi, bc2)), eps);
        p[i] = __fsub_rn(__fsub_rn(pi, __fmul_rn(lr_wd, pi)), __fmul_rn(lr, __fdiv_rn(__fdiv_rn(mi, bc1), den)));
    }
}

void cuda_adam_step(float *params, const float *grads, float *m, float *v, size_t n, const AdamStep *s)
{
    if (!n) return;
    /* The float constants as the CPU rounds them. */
    const float c1 = 1.0f - s->beta1, c2 = 1.0f - s->beta2;
    const float wd = s->decoupled ? 0.0f : s->weight_decay;
    const float lr_wd = s->decoupled ? s->lr * s->weight_decay : 0.0f;
    LAUNCH(k_adam_step, blocks_for(n), THREADS, params, grads, m, v, n, s->beta1, s->beta2, c1, c2, wd, s->lr,
           lr_wd, s->bc1, s->bc2, s->eps);
}

/* Sum of squares: SUMSQ_BLOCKS blocks each leave one double in bn_part
 * (a tree in shared memory, fixed order); the host adds them in block order. */
enum { SUMSQ_BLOCKS = 256 };

__global__ void k_sumsq(const float *x, size_t n, double *part)
{
    __shared__ double sh[THREADS];
    double a = 0.0;
    GRID_STRIDE(i, n) a += (double)x[i] * (double)x[i];
    sh[threadIdx.x] = a;
    __syncthreads();
    for (unsigned d = THREADS / 2; d > 0; d /= 2) {
        if (threadIdx.x < d) sh[threadIdx.x] += sh[threadIdx.x + d];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.x] = sh[0];
}

double cuda_sumsq(const float *x, size_t n)
{
    if (!n) return 0.0;
    CudaState *s = st();
    LAUNCH(k_sumsq, SUMSQ_BLOCKS, THREADS, x, n, s->bn_part);
    double part[SUMSQ_BLOCKS];
    CUDA_CHECK(cudaMemcpyAsync(part, s->bn_part, sizeof part, cudaMemcpyDeviceToHost, s->stream));
    CUDA_CHECK(cudaStreamSynchronize(s->stream));
    double sum = 0.0;
    for (int b = 0; b < SUMSQ_BLOCKS; b++) sum += part[b];
    return sum;
}

__global__ void k_lars_step(float *p, const float *g, float *v, size_t n, float lr, float wd, float mu,
                            int nesterov, float ratio)
{
    GRID_STRIDE(i, n)
    {
        const float pi = p[i];
        const float u = __fmul_rn(ratio, __fadd_rn(g[i], __fmul_rn(wd, pi)));
        float step = u;
        if (mu != 0.0f) {
            const float vi = __fadd_rn(__fmul_rn(mu, v[i]), u);
            v[i] = vi;
            step = nesterov ? __fadd_rn(u, __fmul_rn(mu, vi)) : vi;
        }
        p[i] = __fsub_rn(pi, __fmul_rn(lr, step));
    }
}

void cuda_lars_step(float *params, const float *grads, float *mom, size_t n, const SgdStep *s, float ratio)
{
    if (!n) return;
    LAUNCH(k_lars_step, blocks_for(n), THREADS, params, grads, mom, n, s->lr, s->weight_decay, s->momentum,
           s->nesterov, ratio);
}

__global__ void k_scale(float *x, size_t n, float a)
{
    GRID_STRIDE(i, n) x[i] *= a;
}

void cuda_scale(float *x, size_t n, float a)
{
    if (n) LAUNCH(k_scale, blocks_for(n), THREADS, x, n, a);
}

