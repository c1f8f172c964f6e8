/* The CPU backend of the op table: OpenBLAS for gemm, plain loops for the
 * rest. Every loop here runs once per layer per step, so the inner loops run
 * over contiguous memory without per-element branches and are left for the
 * compiler to vectorize (-O3). See core/ops.h for the contract of each op. */
#include "core/ops.h"

#include <assert.h>
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"

/* ---- memory ------------------------------------------------------------ */

static void *cpu_alloc(size_t bytes)
{
    return basin_aligned_alloc(bytes);
}

static void cpu_free(void *p)
{
    free(p);
}

static void cpu_memcpy(void *dst, const void *src, size_t bytes)
{
    if (bytes) memcpy(dst, src, bytes);
}

static void cpu_zero(float *x, size_t n)
{
    if (n) memset(x, 0, n * sizeof *x);
}

static void cpu_sync(void)
{
}

/* ---- dense algebra ------------------------------------------------------ */

/* C = beta * C over an m x n block, with BLAS's rule that beta = 0 does not
 * read C (so NaN garbage in an unused buffer does not survive). */
static void scale_block(size_t m, size_t n, float beta, float *c, size_t ldc)
{
    for (size_t i = 0; i < m; i++) {
        float *row = c + i * ldc;
        if (beta == 0.0f) {
            memset(row, 0, n * sizeof *row);
        } else if (beta != 1.0f) {
            for (size_t j = 0; j < n; j++) row[j] *= beta;
        }
    }
}

static void cpu_gemm(int trans_a, int trans_b, size_t m, size_t n, size_t k, float alpha,
                     const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c,
                     size_t ldc)
{
    if (m == 0 || n == 0) return;
    /* k = 0 leaves nothing to multiply, and BLAS rejects the lda = 0 that a
     * caller naturally passes for an empty A. */
    if (k == 0) {
        scale_block(m, n, beta, c, ldc);
        return;
    }
    assert(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX);
    assert(lda <= INT_MAX && ldb <= INT_MAX && ldc <= INT_MAX);
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, alpha, a, (int)lda, b,
                (int)ldb, beta, c, (int)ldc);
}

static void cpu_add_bias_rows(float *y, const float *bias, size_t rows, size_t cols)
{
    for (size_t r = 0; r < rows; r++) {
        float *restrict yr = y + r * cols;
        const float *restrict bb = bias;
        for (size_t j = 0; j < cols; j++) yr[j] += bb[j];
    }
}

static void cpu_add_bias_channels(float *y, const float *bias, size_t n, size_t c, size_t hw)
{
    for (size_t s = 0; s < n; s++) {
        for (size_t ch = 0; ch < c; ch++) {
            float *restrict yc = y + (s * c + ch) * hw;
            const float b = bias[ch];
            for (size_t i = 0; i < hw; i++) yc[i] += b;
        }
    }
}

static void cpu_bias_grad_rows(float *db, const float *dy, size_t rows, size_t cols)
{
    for (size_t r = 0; r < rows; r++) {
        float *restrict d = db;
        const float *restrict g = dy + r * cols;
        for (size_t j = 0; j < cols; j++) d[j] += g[j];
    }
}

/* Sum of n floats with 8 independent partial sums: the compiler keeps them
 * in one vector register (a single running sum cannot be vectorized without
 * -ffast-math), and the pairwise-ish order is more accurate too. */
static float sum_f32(const float *restrict x, size_t n)
{
    float acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int l = 0; l < 8; l++) acc[l] += x[i + (size_t)l];
    }
    float tail = 0.0f;
    for (; i < n; i++) tail += x[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

static void cpu_bias_grad_channels(float *db, const float *dy, size_t n, size_t c, size_t hw)
{
    for (size_t s = 0; s < n; s++) {
        for (size_t ch = 0; ch < c; ch++) db[ch] += sum_f32(dy + (s * c + ch) * hw, hw);
    }
}

/* ---- convolution helpers ----------------------------------------------- */

/* For kernel offset kj along an axis of w inputs and ow outputs, the
 * outputs [*lo, *hi) whose input ox * stride - pad + kj lies inside [0, w);
 * the rest read padding. */
static void valid_range(int kj, int w, int stride, int pad, int ow, int *lo, int *hi)
{
    int first = pad - kj; /* smallest ox * stride that lands on input column 0 */
    int l = first <= 0 ? 0 : (first + stride - 1) / stride;
    int last = w - 1 + pad - kj; /* largest ox * stride that lands inside */
    int h = last < 0 ? 0 : last / stride + 1;
    if (l > ow) l = ow;
    if (h > ow) h = ow;
    if (h < l) h = l;
    *lo = l;
    *hi = h;
}

/* Row (ci, ki, kj) of col holds, for every output pixel (oy, ox), the input
 * x[ci][oy*s - pad + ki][ox*s - pad + kj]. Output rows that read only
 * padding, and the padded ends of the others, are zeroed as whole spans
 * outside the inner loop. */
static void cpu_im2col(const Window *g, const float *x, float *col)
{
    const int c = g->c, h = g->h, w = g->w, kh = g->kh, kw = g->kw;
    const int s = g->stride, pad = g->pad, oh = g->oh, ow = g->ow;
    const size_t plane = (size_t)oh * (size_t)ow;
    float *restrict dst = col;
    for (int ci = 0; ci < c; ci++) {
        const float *restrict xc = x + (size_t)ci * (size_t)h * (size_t)w;
        for (int ki = 0; ki < kh; ki++) {
            /* Output rows whose input row oy*s - pad + ki lies inside [0, h). */
            int ylo, yhi;
            valid_range(ki, h, s, pad, oh, &ylo, &yhi);
            for (int kj = 0; kj < kw; kj++) {
                int lo, hi;
                valid_range(kj, w, s, pad, ow, &lo, &hi);
                const int shift = kj - pad; /* input column of output column 0 */
                memset(dst, 0, (size_t)ylo * (size_t)ow * sizeof *dst);
                memset(dst + (size_t)yhi * (size_t)ow, 0,
                       (size_t)(oh - yhi) * (size_t)ow * sizeof *dst);
                for (int oy = ylo; oy < yhi; oy++) {
                    float *restrict d = dst + (size_t)oy * (size_t)ow;
                    const float *restrict src = xc + (size_t)(oy * s - pad + ki) * (size_t)w;
                    for (int ox = 0; ox < lo; ox++) d[ox] = 0.0f;
                    if (s == 1) {
                        for (int ox = lo; ox < hi; ox++) d[ox] = src[ox + shift];
                    } else {
                        for (int ox = lo; ox < hi; ox++) d[ox] = src[ox * s + shift];
                    }
                    for (int ox = hi; ox < ow; ox++) d[ox] = 0.0f;
                }
                dst += plane;
            }
        }
    }
}

/* The adjoint of im2col: every col entry that im2col read from an input
 * pixel is added back to it; entries that came from padding are dropped. */
static void cpu_col2im(const Window *g, const float *col, float *dx)
{
    const int c = g->c, h = g->h, w = g->w, kh = g->kh, kw = g->kw;
    const int s = g->stride, pad = g->pad, oh = g->oh, ow = g->ow;
    const size_t plane = (size_t)oh * (size_t)ow;
    const float *restrict src = col;
    for (int ci = 0; ci < c; ci++) {
        float *restrict xc = dx + (size_t)ci * (size_t)h * (size_t)w;
        for (int ki = 0; ki < kh; ki++) {
            /* Output rows whose input row oy*s - pad + ki lies inside [0, h). */
            int ylo, yhi;
            valid_range(ki, h, s, pad, oh, &ylo, &yhi);
            for (int kj = 0; kj < kw; kj++) {
                int lo, hi;
                valid_range(kj, w, s, pad, ow, &lo, &hi);
                const int shift = kj - pad;
                for (int oy = ylo; oy < yhi; oy++) {
                    const float *restrict cs = src + (size_t)oy * (size_t)ow;
                    float *restrict d = xc + (size_t)(oy * s - pad + ki) * (size_t)w;
                    if (s == 1) {
                        for (int ox = lo; ox < hi; ox++) d[ox + shift] += cs[ox];
                    } else {
                        for (int ox = lo; ox < hi; ox++) d[ox * s + shift] += cs[ox];
                    }
                }
                src += plane;
            }
        }
    }
}

/* ---- activations ----------------------------------------------------------- */

static void cpu_relu_fwd(const float *x, float *y, size_t n)
{
    for (size_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

static void cpu_relu_bwd(const float *y, const float *dy, float *dx, size_t n)
{
    /* dx may be dy: each element is read before it is written. dy is loaded
     * unconditionally so the select has no branch and vectorizes. */
    for (size_t i = 0; i < n; i++) {
        const float g = dy[i];
        dx[i] = y[i] > 0.0f ? g : 0.0f;
    }
}

/* ---- pooling ---------------------------------------------------------------- */

/* The common 2x2 window, stride 2, no padding: four loads per output. */
static void maxpool2x2_plane(const float *restrict x, int w, int oh, int ow, float *restrict y,
                             int32_t *restrict arg, int32_t base)
{
    for (int oy = 0; oy < oh; oy++) {
        const float *r0 = x + (size_t)(2 * oy) * (size_t)w;
        const float *r1 = r0 + w;
        float *yo = y + (size_t)oy * (size_t)ow;
        int32_t *ao = arg + (size_t)oy * (size_t)ow;
        const int32_t row0 = base + 2 * oy * w;
        for (int ox = 0; ox < ow; ox++) {
            /* Strict > in scan order keeps the first of equal values. */
            float m = r0[2 * ox];
            int32_t a = row0 + 2 * ox;
            if (r0[2 * ox + 1] > m) m = r0[2 * ox + 1], a = row0 + 2 * ox + 1;
            if (r1[2 * ox] > m) m = r1[2 * ox], a = row0 + w + 2 * ox;
            if (r1[2 * ox + 1] > m) m = r1[2 * ox + 1], a = row0 + w + 2 * ox + 1;
            yo[ox] = m;
            ao[ox] = a;
        }
    }
}

/* Any window, stride and padding; padded positions never win (they are
 * -inf, as in PyTorch). A window that covers only padding, possible only
 * when pad >= the window, yields 0 and arg -1, which backward skips. */
static void maxpool_plane(const Window *g, const float *restrict x, float *restrict y,
                          int32_t *restrict arg, int32_t base)
{
    const int h = g->h, w = g->w, s = g->stride, pad = g->pad;
    for (int oy = 0; oy < g->oh; oy++) {
        const int y0 = oy * s - pad;
        const int ya = y0 < 0 ? 0 : y0;
        const int yb = y0 + g->kh > h ? h : y0 + g->kh;
        for (int ox = 0; ox < g->ow; ox++) {
            const int x0 = ox * s - pad;
            const int xa = x0 < 0 ? 0 : x0;
            const int xb = x0 + g->kw > w ? w : x0 + g->kw;
            float m = 0.0f;
            int32_t a = -1;
            for (int iy = ya; iy < yb; iy++) {
                for (int ix = xa; ix < xb; ix++) {
                    const float v = x[iy * w + ix];
                    if (a < 0 || v > m) m = v, a = base + iy * w + ix;
                }
            }
            y[oy * g->ow + ox] = m;
            arg[oy * g->ow + ox] = a;
        }
    }
}

static void cpu_maxpool_fwd(const Window *g, size_t n, const float *x, float *y, int32_t *arg)
{
    const size_t in_plane = (size_t)g->h * (size_t)g->w;
    const size_t out_plane = (size_t)g->oh * (size_t)g->ow;
    const int fast = g->kh == 2 && g->kw == 2 && g->stride == 2 && g->pad == 0;
    for (size_t s = 0; s < n; s++) {
        for (int ch = 0; ch < g->c; ch++) {
            const size_t p = s * (size_t)g->c + (size_t)ch;
            const int32_t base = (int32_t)((size_t)ch * in_plane); /* index within the sample */
            const float *xp = x + p * in_plane;
            float *yp = y + p * out_plane;
            int32_t *ap = arg + p * out_plane;
            if (fast) {
                maxpool2x2_plane(xp, g->w, g->oh, g->ow, yp, ap, base);
            } else {
                maxpool_plane(g, xp, yp, ap, base);
            }
        }
    }
}

static void cpu_maxpool_bwd(const Window *g, size_t n, const float *dy, const int32_t *arg,
                            float *dx)
{
    const size_t in_sample = (size_t)g->c * (size_t)g->h * (size_t)g->w;
    const size_t out_sample = (size_t)g->c * (size_t)g->oh * (size_t)g->ow;
    cpu_zero(dx, n * in_sample);
    for (size_t s = 0; s < n; s++) {
        float *dxs = dx + s * in_sample;
        const float *dys = dy + s * out_sample;
        const int32_t *as = arg + s * out_sample;
        for (size_t i = 0; i < out_sample; i++) {
            if (as[i] >= 0) dxs[as[i]] += dys[i];
        }
    }
}

/* ---- dropout ------------------------------------------------------------------ */

static void cpu_dropout_fwd(const float *x, float *y, float *mask, size_t n, float p,
                            uint64_t seed, uint64_t stream, uint64_t offset)
{
    /* Computed in float so that every backend gets the same factor. */
    const float keep_scale = 1.0f / (1.0f - p);
    for (size_t i = 0; i < n; i++) {
        const float m = rng_uniform(seed, stream, offset + i) >= p ? keep_scale : 0.0f;
        mask[i] = m;
        y[i] = x[i] * m;
    }
}

static void cpu_dropout_bwd(const float *dy, const float *mask, float *dx, size_t n)
{
    for (size_t i = 0; i < n; i++) dx[i] = dy[i] * mask[i];
}

/* ---- batch normalization ------------------------------------------------------- */

/* Sums of x and x^2 over n floats, in double, with BN_LANES independent
 * partial sums each, added up in lane order at the end (in this form the
 * compiler vectorizes the widening and both sums without reassociating
 * anything). 16 lanes rather than 8: with 8, each vector of partial sums
 * waits for its previous addition (the loop ran at half the speed of a
 * copy); 16 give the additions room. Compiled twice below, for the build's
 * instruction set and for AVX2 where the CPU has it: the same operations in
 * the same order and no FMA, so the same bits. */
#define BN_LANES 16

static inline __attribute__((always_inline)) void
moments_kernel(const float *restrict x, size_t n, double *s1, double *s2)
{
    double a[BN_LANES] = {0}, b[BN_LANES] = {0};
    size_t i = 0;
    for (; i + BN_LANES <= n; i += BN_LANES) {
        for (int l = 0; l < BN_LANES; l++) {
            const double v = (double)x[i + (size_t)l];
            a[l] += v;
            b[l] += v * v;
        }
    }
    double ta = 0.0, tb = 0.0;
    for (int l = 0; l < BN_LANES; l++) ta += a[l], tb += b[l];
    for (; i < n; i++) {
        const double v = (double)x[i];
        ta += v;
        tb += v * v;
    }
    *s1 = ta;
    *s2 = tb;
}

/* Sums of dy and dy * (x - m) over n values, in double, the same way. */
static inline __attribute__((always_inline)) void
dot_centered_kernel(const float *restrict dy, const float *restrict x, size_t n, double m,
                    double *s1, double *s2)
{
    double a[BN_LANES] = {0}, b[BN_LANES] = {0};
    size_t i = 0;
    for (; i + BN_LANES <= n; i += BN_LANES) {
        for (int l = 0; l < BN_LANES; l++) {
            const double g = (double)dy[i + (size_t)l];
            a[l] += g;
            b[l] += g * ((double)x[i + (size_t)l] - m);
        }
    }
    double ta = 0.0, tb = 0.0;
    for (int l = 0; l < BN_LANES; l++) ta += a[l], tb += b[l];
    for (; i < n; i++) {
        const double g = (double)dy[i];
        ta += g;
        tb += g * ((double)x[i] - m);
    }
    *s1 = ta;
    *s2 = tb;
}

static void moments_base(const float *restrict x, size_t n, double *s1, double *s2)
{
    moments_kernel(x, n, s1, s2);
}

static void dot_centered_base(const float *restrict dy, const float *restrict x, size_t n,
                              double m, double *s1, double *s2)
{
    dot_centered_kernel(dy, x, n, m, s1, s2);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_BN_AVX2 1
__attribute__((target("avx2"))) static void moments_avx2(const float *restrict x, size_t n,
                                                         double *s1, double *s2)
{
    moments_kernel(x, n, s1, s2);
}

__attribute__((target("avx2"))) static void dot_centered_avx2(const float *restrict dy,
                                                              const float *restrict x, size_t n,
                                                              double m, double *s1, double *s2)
{
    dot_centered_kernel(dy, x, n, m, s1, s2);
}
#endif

static void moments_f64(const float *restrict x, size_t n, double *s1, double *s2)
{
#ifdef HAVE_BN_AVX2
    if (__builtin_cpu_supports("avx2")) {
        moments_avx2(x, n, s1, s2);
        return;
    }
#endif
    moments_base(x, n, s1, s2);
}

static void dot_centered_f64(const float *restrict dy, const float *restrict x, size_t n, double m,
                             double *s1, double *s2)
{
#ifdef HAVE_BN_AVX2
    if (__builtin_cpu_supports("avx2")) {
        dot_centered_avx2(dy, x, n, m, s1, s2);
        return;
    }
#endif
    dot_centered_base(dy, x, n, m, s1, s2);
}

/* hw = 1 (fc features) runs along the rows, over the channels, so that the
 * inner loop is long and contiguous; otherwise one plane at a time. */
static void cpu_bn_moments(const float *x, size_t n, size_t c, size_t hw, double *sum,
                           double *sumsq)
{
    double *restrict s1 = sum, *restrict s2 = sumsq;
    for (size_t ch = 0; ch < c; ch++) s1[ch] = 0.0, s2[ch] = 0.0;
    if (hw == 1) {
        for (size_t s = 0; s < n; s++) {
            const float *restrict row = x + s * c;
            for (size_t ch = 0; ch < c; ch++) {
                const double v = row[ch];
                s1[ch] += v;
                s2[ch] += v * v;
            }
        }
        return;
    }
    for (size_t s = 0; s < n; s++) {
        for (size_t ch = 0; ch < c; ch++) {
            double a, b;
            moments_f64(x + (s * c + ch) * hw, hw, &a, &b);
            s1[ch] += a;
            s2[ch] += b;
        }
    }
}

static void cpu_bn_finalize(const double *sum, const double *sumsq, size_t c, double count,
                            float eps, float momentum, float *mean, float *invstd,
                            float *running_mean, float *running_var)
{
    const double mom = momentum, keep = 1.0 - mom;
    const double unbias = count > 1.0 ? count / (count - 1.0) : 1.0;
    for (size_t ch = 0; ch < c; ch++) {
        const double m = sum[ch] / count;
        double var = sumsq[ch] / count - m * m;
        var = var < 0.0 ? 0.0 : var; /* rounding can take it below 0; NaN stays NaN */
        mean[ch] = (float)m;
        invstd[ch] = (float)(1.0 / sqrt(var + (double)eps));
        if (running_mean) {
            running_mean[ch] = (float)(keep * running_mean[ch] + mom * m);
            running_var[ch] = (float)(keep * running_var[ch] + mom * (var * unbias));
        }
    }
}

static void cpu_bn_eval_stats(const float *running_mean, const float *running_var, size_t c,
                              float eps, float *mean, float *invstd)
{
    for (size_t ch = 0; ch < c; ch++) {
        mean[ch] = running_mean[ch];
        invstd[ch] = (float)(1.0 / sqrt((double)running_var[ch] + (double)eps));
    }
}

/* y = (x - mean) * (gamma * invstd) + beta. y may be x: every element is
 * read before it is written, in the same iteration. */
static void cpu_bn_fwd(const float *x, float *y, size_t n, size_t c, size_t hw, const float *mean,
                       const float *invstd, const float *gamma, const float *beta)
{
    if (hw == 1) {
        for (size_t s = 0; s < n; s++) {
            const float *xr = x + s * c;
            float *yr = y + s * c;
            for (size_t ch = 0; ch < c; ch++)
                yr[ch] = (xr[ch] - mean[ch]) * (gamma[ch] * invstd[ch]) + beta[ch];
        }
        return;
    }
    for (size_t s = 0; s < n; s++) {
        for (size_t ch = 0; ch < c; ch++) {
            const float m = mean[ch], a = gamma[ch] * invstd[ch], b = beta[ch];
            const float *xp = x + (s * c + ch) * hw;
            float *yp = y + (s * c + ch) * hw;
            for (size_t i = 0; i < hw; i++) yp[i] = (xp[i] - m) * a + b;
        }
    }
}

/* sdyxhat = invstd * sum dy (x - mean): the invstd factor once per channel. */
static void cpu_bn_bwd_sums(const float *dy, const float *x, size_t n, size_t c, size_t hw,
                            const float *mean, const float *invstd, double *sdy, double *sdyxhat)
{
    double *restrict s1 = sdy, *restrict s2 = sdyxhat;
    for (size_t ch = 0; ch < c; ch++) s1[ch] = 0.0, s2[ch] = 0.0;
    if (hw == 1) {
        for (size_t s = 0; s < n; s++) {
            const float *restrict gr = dy + s * c;
            const float *restrict xr = x + s * c;
            for (size_t ch = 0; ch < c; ch++) {
                const double g = gr[ch];
                s1[ch] += g;
                s2[ch] += g * ((double)xr[ch] - (double)mean[ch]);
            }
        }
    } else {
        for (size_t s = 0; s < n; s++) {
            for (size_t ch = 0; ch < c; ch++) {
                double a, b;
                const size_t at = (s * c + ch) * hw;
                dot_centered_f64(dy + at, x + at, hw, (double)mean[ch], &a, &b);
                s1[ch] += a;
                s2[ch] += b;
            }
        }
    }
    for (size_t ch = 0; ch < c; ch++) s2[ch] *= (double)invstd[ch];
}

static void cpu_bn_param_grads(const double *sdy, const double *sdyxhat, size_t c, float *dgamma,
                               float *dbeta)
{
    for (size_t ch = 0; ch < c; ch++) {
        dgamma[ch] = (float)sdyxhat[ch];
        dbeta[ch] = (float)sdy[ch];
    }
}

/* dx = a ((dy - mdy) - (x - mean) invstd k) with, per channel, a = gamma
 * invstd, mdy = sdy / count and k = sdyxhat / count (the last two in double,
 * then rounded). dx may be dy: each element is read before it is written. */
static void cpu_bn_bwd_dx(const float *dy, const float *x, size_t n, size_t c, size_t hw,
                          const float *mean, const float *invstd, const float *gamma,
                          const double *sdy, const double *sdyxhat, double count, float *dx)
{
    const double inv_count = 1.0 / count;
    if (hw == 1) {
        for (size_t s = 0; s < n; s++) {
            const float *gr = dy + s * c, *xr = x + s * c;
            float *dr = dx + s * c;
            for (size_t ch = 0; ch < c; ch++) {
                const float is = invstd[ch], a = gamma[ch] * is;
                const float mdy = (float)(sdy[ch] * inv_count), k = (float)(sdyxhat[ch] * inv_count);
                dr[ch] = a * ((gr[ch] - mdy) - (xr[ch] - mean[ch]) * is * k);
            }
        }
        return;
    }
    for (size_t s = 0; s < n; s++) {
        for (size_t ch = 0; ch < c; ch++) {
            const float m = mean[ch], is = invstd[ch], a = gamma[ch] * is;
            const float mdy = (float)(sdy[ch] * inv_count), k = (float)(sdyxhat[ch] * inv_count);
            const size_t at = (s * c + ch) * hw;
            const float *gp = dy + at, *xp = x + at;
            float *dp = dx + at;
            for (size_t i = 0; i < hw; i++) dp[i] = a * ((gp[i] - mdy) - (xp[i] - m) * is * k);
        }
    }
}

/* ---- residual add, average pooling --------------------------------------------- */

/* y may be a or b: each element is read before it is written. */
static void cpu_add(const float *a, const float *b, float *y, size_t n)
{
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

/* One plane: every output row is built as a sum of whole input row spans,
 * window row by window row and column by column (the window's row order),
 * so the inner loop runs along the output row; padding adds nothing. Then
 * each output is divided by the window's area. */
static void avgpool_plane(const Window *g, const float *restrict x, float *restrict y)
{
    const int h = g->h, w = g->w, s = g->stride, pad = g->pad, ow = g->ow;
    const float area = (float)(g->kh * g->kw);
    for (int oy = 0; oy < g->oh; oy++) {
        float *restrict yo = y + (size_t)oy * (size_t)ow;
        for (int ox = 0; ox < ow; ox++) yo[ox] = 0.0f;
        for (int ki = 0; ki < g->kh; ki++) {
            const int iy = oy * s - pad + ki;
            if (iy < 0 || iy >= h) continue;
            const float *restrict xr = x + (size_t)iy * (size_t)w;
            for (int kj = 0; kj < g->kw; kj++) {
                int lo, hi;
                valid_range(kj, w, s, pad, ow, &lo, &hi);
                const int shift = kj - pad;
                if (s == 1) {
                    for (int ox = lo; ox < hi; ox++) yo[ox] += xr[ox + shift];
                } else {
                    for (int ox = lo; ox < hi; ox++) yo[ox] += xr[ox * s + shift];
                }
            }
        }
        for (int ox = 0; ox < ow; ox++) yo[ox] /= area;
    }
}

static void cpu_avgpool_fwd(const Window *g, size_t n, const float *x, float *y)
{
    const size_t in_plane = (size_t)g->h * (size_t)g->w;
    const size_t out_plane = (size_t)g->oh * (size_t)g->ow;
    const size_t planes = n * (size_t)g->c;
    for (size_t p = 0; p < planes; p++) avgpool_plane(g, x + p * in_plane, y + p * out_plane);
}

/* The adjoint of avgpool_plane: each output's dy / area goes back to the
 * inputs of its window, as whole spans of input rows. */
static void avgpool_bwd_plane(const Window *g, const float *restrict dy, float *restrict dx)
{
    const int h = g->h, w = g->w, s = g->stride, pad = g->pad, ow = g->ow;
    const float area = (float)(g->kh * g->kw);
    memset(dx, 0, (size_t)h * (size_t)w * sizeof *dx);
    for (int oy = 0; oy < g->oh; oy++) {
        const float *restrict go = dy + (size_t)oy * (size_t)ow;
        for (int ki = 0; ki < g->kh; ki++) {
            const int iy = oy * s - pad + ki;
            if (iy < 0 || iy >= h) continue;
            float *restrict dr = dx + (size_t)iy * (size_t)w;
            for (int kj = 0; kj < g->kw; kj++) {
                int lo, hi;
                valid_range(kj, w, s, pad, ow, &lo, &hi);
                const int shift = kj - pad;
                if (s == 1) {
                    for (int ox = lo; ox < hi; ox++) dr[ox + shift] += go[ox] / area;
                } else {
                    for (int ox = lo; ox < hi; ox++) dr[ox * s + shift] += go[ox] / area;
                }
            }
        }
    }
}

static void cpu_avgpool_bwd(const Window *g, size_t n, const float *dy, float *dx)
{
    const size_t in_plane = (size_t)g->h * (size_t)g->w;
    const size_t out_plane = (size_t)g->oh * (size_t)g->ow;
    const size_t planes = n * (size_t)g->c;
    for (size_t p = 0; p < planes; p++) avgpool_bwd_plane(g, dy + p * out_plane, dx + p * in_plane);
}

static void cpu_gap_fwd(const float *x, float *y, size_t n, size_t c, size_t hw)
{
    const float div = (float)hw;
    for (size_t p = 0; p < n * c; p++) y[p] = sum_f32(x + p * hw, hw) / div;
}

static void cpu_gap_bwd(const float *dy, float *dx, size_t n, size_t c, size_t hw)
{
    const float div = (float)hw;
    for (size_t p = 0; p < n * c; p++) {
        const float v = dy[p] / div;
        float *restrict d = dx + p * hw;
        for (size_t i = 0; i < hw; i++) d[i] = v;
    }
}

/* ---- loss --------------------------------------------------------------------- */

static void cpu_softmax_xent_fwd(const float *logits, const int32_t *labels, size_t b, size_t k,
                                 float *probs, double *loss_sum, size_t *correct)
{
    double loss = 0.0;
    size_t hits = 0;
    for (size_t r = 0; r < b; r++) {
        const float *restrict x = logits + r * k;
        float *restrict pr = probs + r * k;
        const int32_t label = labels[r];
        assert(label >= 0 && (size_t)label < k);
        float mx = x[0];
        size_t best = 0;
        for (size_t j = 1; j < k; j++) {
            if (x[j] > mx) mx = x[j], best = j; /* strict: ties pick the first */
        }
        /* exp of x - max <= 0 cannot overflow; the row sum is at least 1. */
        double sum = 0.0;
        for (size_t j = 0; j < k; j++) {
            pr[j] = expf(x[j] - mx);
            sum += pr[j];
        }
        const float inv = (float)(1.0 / sum);
        for (size_t j = 0; j < k; j++) pr[j] *= inv;
        /* -log softmax[label] = log(sum) - (x[label] - max) */
        loss += log(sum) - ((double)x[label] - (double)mx);
        hits += best == (size_t)label;
    }
    *loss_sum = loss;
    *correct = hits;
}

static void cpu_softmax_xent_bwd(const float *probs, const int32_t *labels, size_t b, size_t k,
                                 float scale, float *dlogits)
{
    for (size_t r = 0; r < b; r++) {
        const float *restrict pr = probs + r * k;
        float *restrict d = dlogits + r * k;
        for (size_t j = 0; j < k; j++) d[j] = scale * pr[j];
        const int32_t label = labels[r];
        assert(label >= 0 && (size_t)label < k);
        d[label] = scale * (pr[label] - 1.0f);
    }
}

/* ---- optimizer -------------------------------------------------------------- */

static void cpu_sgd_step(float *params, const float *grads, float *mom, size_t n,
                         const SgdStep *s)
{
    float *restrict p = params;
    const float *restrict g = grads;
    const float lr = s->lr, mu = s->momentum, lr_wd = s->lr * s->weight_decay;
    if (mu == 0.0f) {
        for (size_t i = 0; i < n; i++) p[i] = p[i] - lr_wd * p[i] - lr * g[i];
        return;
    }
    float *restrict v = mom;
    if (s->nesterov) {
        for (size_t i = 0; i < n; i++) {
            const float vi = mu * v[i] + g[i];
            v[i] = vi;
            p[i] = p[i] - lr_wd * p[i] - lr * (g[i] + mu * vi);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            const float vi = mu * v[i] + g[i];
            v[i] = vi;
            p[i] = p[i] - lr_wd * p[i] - lr * vi;
        }
    }
}

static void cpu_adam_step(float *params, const float *grads, float *m, float *v, size_t n,
                          const AdamStep *s)
{
    float *restrict p = params;
    const float *restrict g = grads;
    float *restrict mm = m;
    float *restrict vv = v;
    const float b1 = s->beta1, b2 = s->beta2, c1 = 1.0f - s->beta1, c2 = 1.0f - s->beta2;
    const float wd = s->decoupled ? 0.0f : s->weight_decay;
    const float lr = s->lr, lr_wd = s->decoupled ? s->lr * s->weight_decay : 0.0f;
    const float bc1 = s->bc1, bc2 = s->bc2, eps = s->eps;
    for (size_t i = 0; i < n; i++) {
        const float pi = p[i];
        const float gi = wd != 0.0f ? g[i] + wd * pi : g[i];
        const float mi = b1 * mm[i] + c1 * gi;
        const float vi = b2 * vv[i] + (c2 * gi) * gi;
        mm[i] = mi;
        vv[i] = vi;
        const float den = sqrtf(vi / bc2) + eps;
        p[i] = pi - lr_wd * pi - lr * ((mi / bc1) / den);
    }
}

static double cpu_sumsq(const float *x, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * (double)x[i];
    return s;
}

static void cpu_lars_step(float *params, const float *grads, float *mom, size_t n, const SgdStep *s,
                          float ratio)
{
    float *restrict p = params;
    const float *restrict g = grads;
    const float lr = s->lr, mu = s->momentum, wd = s->weight_decay;
    for (size_t i = 0; i < n; i++) {
        const float pi = p[i];
        const float u = ratio * (g[i] + wd * pi);
        float step = u;
        if (mu != 0.0f) {
            const float vi = mu * mom[i] + u;
            mom[i] = vi;
            step = s->nesterov ? u + mu * vi : vi;
        }
        p[i] = pi - lr * step;
    }
}

static void cpu_scale(float *x, size_t n, float a)
{
    for (size_t i = 0; i < n; i++) x[i] *= a;
}

/* ---- the table -------------------------------------------------------------- */

void ops_cpu_set_threads(int threads)
{
    openblas_set_num_threads(threads > 0 ? threads : 1);
}

const Ops ops_cpu = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .to_device = cpu_memcpy,
    .to_host = cpu_memcpy,
    .copy = cpu_memcpy,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .gemm = cpu_gemm,
    .add_bias_rows = cpu_add_bias_rows,
    .add_bias_channels = cpu_add_bias_channels,
    .bias_grad_rows = cpu_bias_grad_rows,
    .bias_grad_channels = cpu_bias_grad_channels,
    .im2col = cpu_im2col,
    .col2im = cpu_col2im,
    .relu_fwd = cpu_relu_fwd,
    .relu_bwd = cpu_relu_bwd,
    .maxpool_fwd = cpu_maxpool_fwd,
    .maxpool_bwd = cpu_maxpool_bwd,
    .dropout_fwd = cpu_dropout_fwd,
    .dropout_bwd = cpu_dropout_bwd,
    .bn_moments = cpu_bn_moments,
    .bn_finalize = cpu_bn_finalize,
    .bn_eval_stats = cpu_bn_eval_stats,
    .bn_fwd = cpu_bn_fwd,
    .bn_bwd_sums = cpu_bn_bwd_sums,
    .bn_param_grads = cpu_bn_param_grads,
    .bn_bwd_dx = cpu_bn_bwd_dx,
    .add = cpu_add,
    .avgpool_fwd = cpu_avgpool_fwd,
    .avgpool_bwd = cpu_avgpool_bwd,
    .gap_fwd = cpu_gap_fwd,
    .gap_bwd = cpu_gap_bwd,
    .softmax_xent_fwd = cpu_softmax_xent_fwd,
    .softmax_xent_bwd = cpu_softmax_xent_bwd,
    .sgd_step = cpu_sgd_step,
    .scale = cpu_scale,
    .adam_step = cpu_adam_step,
    .sumsq = cpu_sumsq,
    .lars_step = cpu_lars_step,
    .host_memory = 1,
};
