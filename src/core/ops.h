/* The backend op table.
 *
 * Layers call every piece of arithmetic through an Ops table, so a layer is
 * written once and runs on any backend: ops_cpu.c (OpenBLAS) here,
 * cuda/ops_cuda.cu on GPUs. Every pointer an op takes lives in the backend's
 * memory (host memory for the CPU table, device memory for CUDA).
 *
 * Conventions
 *   - All matrices are row-major. gemm follows cblas_sgemm's row-major meaning.
 *   - Images are NCHW; a batch of B samples of shape (C, H, W) is contiguous.
 *   - Sizes are size_t; kernel geometry (channels, height, kernel size) is int.
 *   - Ops never allocate and never fail on valid arguments; geometry is
 *     validated when a layer is built, not per call.
 */
#ifndef BASIN_OPS_H
#define BASIN_OPS_H

#include <stddef.h>
#include <stdint.h>

/* Geometry of one 2-D convolution or pooling window. */
typedef struct {
    int c, h, w;        /* input channels, height, width (per sample) */
    int kh, kw;         /* window */
    int stride, pad;    /* same in both directions; zero padding */
    int oh, ow;         /* output height, width: (h + 2 pad - kh) / stride + 1 */
} Window;

/* Arguments of one SGD step over a contiguous slice of the flat buffers. */
typedef struct {
    float lr;           /* learning rate of this step (schedule applied) */
    float momentum;     /* mu; 0 disables the momentum buffer */
    float weight_decay; /* decoupled: p -= lr * wd * p, never enters the momentum */
    int nesterov;       /* 1: p -= lr * (g + mu * v); 0: p -= lr * v */
} SgdStep;

/* Arguments of one Adam / AdamW step over a contiguous slice. */
typedef struct {
    float lr;           /* learning rate of this step (schedule applied) */
    float beta1, beta2; /* moment decay rates */
    float eps;
    float weight_decay; /* 0: none on this slice */
    int decoupled;      /* 1 (AdamW): p -= lr * wd * p; 0 (Adam): g += wd * p */
    float bc1, bc2;     /* bias corrections 1 - beta1^t, 1 - beta2^t (t = step + 1) */
} AdamStep;

typedef struct Ops {
    const char *name;

    /* ---- memory ------------------------------------------------------- */
    void *(*alloc)(size_t bytes);          /* 64-byte aligned; NULL on failure */
    void (*free)(void *p);
    void (*to_device)(void *dst, const void *host_src, size_t bytes);
    void (*to_host)(void *host_dst, const void *src, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes);
    void (*zero)(float *x, size_t n);
    void (*sync)(void);                    /* wait for all queued work */

    /* ---- dense algebra ------------------------------------------------ */
    /* C (M x N) = alpha * op(A) * op(B) + beta * C, row-major, op = transpose
     * when trans_* is non-zero; lda/ldb/ldc are row strides of A, B, C as
     * stored. */
    void (*gemm)(int trans_a, int trans_b, size_t m, size_t n, size_t k, float alpha,
                 const float *a, size_t lda, const float *b, size_t ldb, float beta,
                 float *c, size_t ldc);
    /* y[r][j] += bias[j] for r < rows, j < cols */
    void (*add_bias_rows)(float *y, const float *bias, size_t rows, size_t cols);
    /* y[n][c][i] += bias[c] for a batch of n samples of c channels of hw pixels */
    void (*add_bias_channels)(float *y, const float *bias, size_t n, size_t c, size_t hw);
    /* db[j] += sum_r dy[r][j] */
    void (*bias_grad_rows)(float *db, const float *dy, size_t rows, size_t cols);
    /* db[c] += sum over n, i of dy[n][c][i] */
    void (*bias_grad_channels)(float *db, const float *dy, size_t n, size_t c, size_t hw);

    /* ---- convolution helpers (one sample) ----------------------------- */
    /* col (c*kh*kw, oh*ow) from x (c, h, w); padded positions are 0. */
    void (*im2col)(const Window *g, const float *x, float *col);
    /* dx (c, h, w) += col2im(col): the adjoint of im2col (accumulates). */
    void (*col2im)(const Window *g, const float *col, float *dx);

    /* ---- activations, pooling, dropout -------------------------------- */
    void (*relu_fwd)(const float *x, float *y, size_t n);
    /* dx = dy where y > 0, else 0 (y is the forward output; dx may be dy) */
    void (*relu_bwd)(const float *y, const float *dy, float *dx, size_t n);
    /* Max pooling of n samples; arg[i] is the index within the sample's input
     * (c*h*w) of the max chosen for output i; ties pick the first. */
    void (*maxpool_fwd)(const Window *g, size_t n, const float *x, float *y, int32_t *arg);
    /* dx = 0, then dx[arg[i]] += dy[i] within each sample */
    void (*maxpool_bwd)(const Window *g, size_t n, const float *dy, const int32_t *arg, float *dx);
    /* Inverted dropout: keep element i with probability 1 - p, scaled by
     * 1/(1 - p). The keep decision for element i is
     *   rng_uniform(seed, stream, offset + i) >= p
     * (core/rng.h), so every backend draws the same mask. mask[i] holds the
     * factor applied (0 or 1/(1-p)). */
    void (*dropout_fwd)(const float *x, float *y, float *mask, size_t n, float p,
                        uint64_t seed, uint64_t stream, uint64_t offset);
    /* dx = dy * mask */
    void (*dropout_bwd)(const float *dy, const float *mask, float *dx, size_t n);

    /* ---- batch normalization ------------------------------------------- */
    /* Per channel, over a batch of n samples of c channels of hw values each
     * (an fc output is c = features, hw = 1). Sums are accumulated in double
     * so that per-rank sums can be added across ranks (--sync-bn) before the
     * statistics are formed. All vectors are (c), in backend memory.
     *
     * sum[ch] = sum_{s,i} x[s][ch][i];  sumsq[ch] = sum_{s,i} x[s][ch][i]^2 */
    void (*bn_moments)(const float *x, size_t n, size_t c, size_t hw, double *sum,
                       double *sumsq);
    /* From sums over `count` values per channel:
     *   mean = sum / count,  var = max(sumsq / count - mean^2, 0)  (biased)
     *   invstd = 1 / sqrt(var + eps)
     * and, when running_mean is not NULL, the running statistics:
     *   running_mean = (1 - momentum) running_mean + momentum mean
     *   running_var  = (1 - momentum) running_var + momentum var * count / (count - 1)
     * (the unbiased variance, as PyTorch; count 1 uses var). */
    void (*bn_finalize)(const double *sum, const double *sumsq, size_t c, double count, float eps,
                        float momentum, float *mean, float *invstd, float *running_mean,
                        float *running_var);
    /* Evaluation: mean = running_mean, invstd = 1 / sqrt(running_var + eps). */
    void (*bn_eval_stats)(const float *running_mean, const float *running_var, size_t c, float eps,
                          float *mean, float *invstd);
    /* y = gamma[ch] * (x - mean[ch]) * invstd[ch] + beta[ch]  (y may be x) */
    void (*bn_fwd)(const float *x, float *y, size_t n, size_t c, size_t hw, const float *mean,
                   const float *invstd, const float *gamma, const float *beta);
    /* Backward sums: sdy[ch] = sum dy;  sdyxhat[ch] = sum dy * (x - mean) * invstd */
    void (*bn_bwd_sums)(const float *dy, const float *x, size_t n, size_t c, size_t hw,
                        const float *mean, const float *invstd, double *sdy, double *sdyxhat);
    /* dgamma[ch] = sdyxhat[ch], dbeta[ch] = sdy[ch] (overwriting, as floats) */
    void (*bn_param_grads)(const double *sdy, const double *sdyxhat, size_t c, float *dgamma,
                           float *dbeta);
    /* dx = gamma * invstd * (dy - sdy / count - xhat * sdyxhat / count),
     * xhat = (x - mean) * invstd; count is the number of values the
     * statistics were formed over (all ranks' with --sync-bn). dx may be dy. */
    void (*bn_bwd_dx)(const float *dy, const float *x, size_t n, size_t c, size_t hw,
                      const float *mean, const float *invstd, const float *gamma,
                      const double *sdy, const double *sdyxhat, double count, float *dx);

    /* ---- residual add, average pooling ---------------------------------- */
    /* y = a + b over n elements (y may be a or b) */
    void (*add)(const float *a, const float *b, float *y, size_t n);
    /* Average pooling of n samples; every output divides by kh * kw, padded
     * positions counting as zeros (PyTorch's count_include_pad). */
    void (*avgpool_fwd)(const Window *g, size_t n, const float *x, float *y);
    /* dx = the adjoint of avgpool_fwd applied to dy (dx overwritten) */
    void (*avgpool_bwd)(const Window *g, size_t n, const float *dy, float *dx);
    /* Global average pooling: y[s][ch] = mean over i of x[s][ch][i] (hw values) */
    void (*gap_fwd)(const float *x, float *y, size_t n, size_t c, size_t hw);
    /* dx[s][ch][i] = dy[s][ch] / hw (dx overwritten) */
    void (*gap_bwd)(const float *dy, float *dx, size_t n, size_t c, size_t hw);

    /* ---- loss ------------------------------------------------------------ */
    /* Softmax cross-entropy of b rows of k logits, numerically stable
     * (log-sum-exp around the row max). Writes probs (b x k); returns through
     * the host pointers the SUM of the b losses (double) and the number of
     * rows whose argmax equals the label. Labels are in [0, k). */
    void (*softmax_xent_fwd)(const float *logits, const int32_t *labels, size_t b, size_t k,
                             float *probs, double *loss_sum, size_t *correct);
    /* dlogits = scale * (probs - onehot(labels)) */
    void (*softmax_xent_bwd)(const float *probs, const int32_t *labels, size_t b, size_t k,
                             float scale, float *dlogits);

    /* ---- optimizer ------------------------------------------------------- */
    /* One SGD step over n elements of params/grads/mom (mom unused when
     * momentum is 0):
     *   v = mu * v + g
     *   p = p - lr * wd * p - lr * (nesterov ? g + mu * v : v)   (mu > 0)
     *   p = p - lr * wd * p - lr * g                               (mu = 0)
     * The decay term uses p before this step's update. */
    void (*sgd_step)(float *params, const float *grads, float *mom, size_t n, const SgdStep *s);
    /* x *= a */
    void (*scale)(float *x, size_t n, float a);

    /* ---- optimizers for large batches ---------------------------------- */
    /* One Adam step over n elements (all float arithmetic, in this order):
     *   g' = decoupled ? g : g + wd * p
     *   m = beta1 * m + (1 - beta1) * g'
     *   v = beta2 * v + (1 - beta2) * g' * g'
     *   p = p - (decoupled ? lr * wd : 0) * p - lr * (m / bc1) / (sqrt(v / bc2) + eps)
     * (1 - beta1, 1 - beta2 and lr * wd are rounded to float first). */
    void (*adam_step)(float *params, const float *grads, float *m, float *v, size_t n, const AdamStep *s);
    /* sum of x[i]^2 over n elements, in double, returned to the host */
    double (*sumsq)(const float *x, size_t n);
    /* One LARS step over n elements of one layer with trust ratio r:
     *   u = r * (g + wd * p)
     *   v = mu * v + u;  p = p - lr * (nesterov ? u + mu * v : v)   (mu > 0)
     *   p = p - lr * u                                              (mu = 0) */
    void (*lars_step)(float *params, const float *grads, float *mom, size_t n, const SgdStep *s, float ratio);

    /* ---- properties (last: tables that do not name them leave them 0) ---- */
    /* 1: every pointer of this backend is host memory, so code outside the
     * table may loop over it directly (the Winograd convolution,
     * core/winograd.h, does its transforms so and only its gemms here). */
    int host_memory;
} Ops;

extern const Ops ops_cpu;

/* Output size of a window along one axis; 0 when the window does not fit. */
static inline int window_out(int in, int k, int stride, int pad)
{
    int span = in + 2 * pad - k;
    return span < 0 ? 0 : span / stride + 1;
}

/* One BLAS thread per rank unless the user asked otherwise; call once at start. */
void ops_cpu_set_threads(int threads);

#endif
