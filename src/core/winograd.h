/* Winograd minimal filtering F(2x2, rxr) for stride-1 convolutions, r = 3
 * or 5, on the CPU (Lavin & Gray 2016, "Fast Algorithms for Convolutional
 * Neural Networks").
 *
 * One output tile Y (2x2) from one input tile d (t x t, t = r + 1) and one
 * filter g (r x r):
 *
 *   Y = A^T [ (G g G^T) . (B^T d B) ] A        (. : elementwise)
 *
 * so a tile costs t*t multiplications per (C_in, C_out) pair instead of
 * 4 r r: 16 instead of 36 for r = 3 (2.25x fewer), 36 instead of 100 for
 * r = 5 (2.78x fewer). A (t x 2), B (t x t) and G (t x r) come from t
 * interpolation points (Cook-Toom; winograd.c builds them in double at plan
 * time and says which points).
 *
 * Stages, over the whole batch (T = n * tiles columns, tiles = th * tw =
 * ceil(OH/2) * ceil(OW/2) per image; xi is one of the t*t positions of a
 * tile):
 *
 *   forward   U[xi] (K, C)  = filter transform of W (K, C, r, r)
 *             V[xi] (C, T)  = input transform of x (n, C, H, W)
 *             M[xi] (K, T)  = U[xi] V[xi]                        t*t gemms
 *             y (n, K, OH, OW) = output transform of M, plus bias
 *   backward  dM[xi] (K, T) = adjoint output transform of dy
 *             dU[xi] (K, C) = dM[xi] V[xi]^T                     t*t gemms
 *             dW            = adjoint filter transform of dU
 *             dV[xi] (C, T) = U[xi]^T dM[xi]                     t*t gemms
 *             dx            = adjoint input transform of dV (tiles
 *                             overlap: their footprints are added)
 *
 * V is kept from forward for backward; M and dV are never whole. The batch
 * goes in groups of `group` images, each in chunks of a few tile rows: a
 * chunk is transformed, multiplied (t*t gemms of N = chunk columns, a few
 * hundred) and transformed back while its M is still in cache, so the
 * largest array, M, never travels to memory (the cnn model's second conv,
 * forward + backward at batch 64: 25.7 ms against 33.8 ms for t*t gemms
 * over the whole batch, whose M, 29 MB, went to memory and back twice).
 * Column order of V, M (the gemms do not
 * care): group, then tile row, then tile column, then image within the
 * group, so that every transform is a few linear combinations of
 * contiguous vectors of (tile columns x images) floats, with no gather.
 *
 * Edges: partial tiles at the bottom and right read zeros past the padded
 * input and drop their outputs past OH, OW.
 *
 * Every pointer is host memory: the transforms are loops here. The gemms
 * run basin's own kernels for these shapes where the CPU has them
 * (core/winograd_gemm.h, picked at plan time), otherwise the op table's
 * gemm (so BLAS threads and counts are shared).
 */
#ifndef BASIN_WINOGRAD_H
#define BASIN_WINOGRAD_H

#include <stddef.h>

#include "core/ops.h"
#include "core/winograd_gemm.h"

#define WINOGRAD_MAX_T 6 /* tile of F(2x2, 5x5) */

/* One row (or column) of a transform matrix without its zeros:
 * out = sum_q coef[q] * in[idx[q]]. */
typedef struct {
    int n;
    int idx[WINOGRAD_MAX_T];
    float coef[WINOGRAD_MAX_T];
} WinogradComb;

/* out[v] (=, or += when acc) sum_q coef[q] * in_q[v], in_q = base + off[idx[q]] */
typedef void (*CombFn)(const WinogradComb *c, const float *base, const size_t *off, float *out,
                       size_t len, int acc);

/* CPU seconds per stage, summed over calls, when Winograd.profile is set. */
typedef enum {
    WINOGRAD_FILTER,        /* forward: U from W */
    WINOGRAD_PACK,          /* x into the group's padded layout */
    WINOGRAD_INPUT,         /* V */
    WINOGRAD_GEMM,          /* M = U V */
    WINOGRAD_OUTPUT,        /* y from M */
    WINOGRAD_UNPACK,        /* y out of the group's layout, plus bias */
    WINOGRAD_PACK_DY,       /* backward: dy into the group's layout */
    WINOGRAD_OUTPUT_ADJ,    /* dM */
    WINOGRAD_GEMM_DU,       /* dU = dM V^T */
    WINOGRAD_FILTER_ADJ,    /* dW from dU */
    WINOGRAD_GEMM_DV,       /* dV = U^T dM */
    WINOGRAD_INPUT_ADJ,     /* dx (the group's layout) from dV */
    WINOGRAD_UNPACK_DX,     /* dx out of the group's layout */
    WINOGRAD_STAGES
} WinogradStage;

extern const char *const winograd_stage_names[WINOGRAD_STAGES];

typedef struct {
    double s[WINOGRAD_STAGES];
} WinogradProfile;

typedef struct Winograd {
    int r, t, tt;           /* filter size, tile size r + 1, positions t * t */
    Window win;             /* stride 1, kh == kw == r */
    int k;                  /* output channels */
    int th, tw;             /* tiles per image, down and across */
    int hp, wh;             /* padded input rows 2 th + t - 2; half the padded
                               columns, tw + t/2 - 1 */
    size_t tiles;           /* th * tw */
    size_t max_batch;
    size_t group;           /* images per group (the last may have fewer) */
    size_t chunk_rows;      /* tile rows per chunk */

    /* Transform matrices, row-major, in double. */
    double at[2 * WINOGRAD_MAX_T];                   /* A^T (2, t) */
    double bt[WINOGRAD_MAX_T * WINOGRAD_MAX_T];      /* B^T (t, t) */
    double g[WINOGRAD_MAX_T * (WINOGRAD_MAX_T - 1)]; /* G (t, r) */
    /* The same as float combinations, by the direction they are applied in. */
    WinogradComb bt_rows[WINOGRAD_MAX_T];     /* (B^T d)[xi] = sum_i  BT[xi][i] d[i]   */
    WinogradComb b_rows[WINOGRAD_MAX_T];      /* (B dV)[i]   = sum_xi BT[xi][i] dV[xi] */
    WinogradComb at_rows[2];                  /* (A^T M)[a]  = sum_xi AT[a][xi] M[xi]  */
    WinogradComb a_rows[WINOGRAD_MAX_T];      /* (A dY)[xi]  = sum_a  AT[a][xi] dY[a]  */
    WinogradComb g_rows[WINOGRAD_MAX_T];      /* (G w)[xi]   = sum_u  G[xi][u] w[u]    */
    WinogradComb gt_rows[WINOGRAD_MAX_T - 1]; /* (G^T dU)[u] = sum_xi G[xi][u] dU[xi]  */

    /* Workspace (host memory, from ops->alloc); g = group, c = chunk columns
     * = chunk_rows tw group. */
    float *u;               /* (t*t, K, C) filter transform, from forward */
    float *du;              /* (t*t, K, C) */
    float *v;               /* (t*t, C, T) input transform, kept for backward */
    float *m;               /* (t*t, K, c) one chunk's products; dM in backward */
    float *dv;              /* (t*t, C, c) one chunk's dV */
    float *xs;              /* (C, hp, 2, wh, g) one group's input, zero-padded,
                               columns split even/odd; its dx in backward */
    float *ys;              /* (K, 2 th, 2, tw, g) one group's output; dy in
                               backward; columns split even/odd */
    float *rows;            /* (t, 2, wh, g) one tile row after the column pass */
    float *tmp;             /* (2 t, tw, g) the same for the output transforms */
    float *wscratch;        /* (r*r + t*r, K C) filter transforms */

    CombFn comb;            /* the kernel of every transform, for this CPU */
    const WinogradGemm *gemm; /* the gemms' kernels for this CPU (winograd_gemm_select),
                               or NULL: ops->gemm. Tests and benchmarks may set it
                               after the plan (winograd_gemm_by_name). */
    WinogradProfile *profile; /* NULL, or where each stage adds its CPU time */
} Winograd;

/* 1 when F(2x2, rxr) applies to this geometry: stride 1, a square kernel of
 * 3 or 5. */
int winograd_supported(const Window *g);
/* 1 when it applies and is faster than im2col + gemm: with few input
 * channels the gemms are thin (inner dimension C_in) and the transforms,
 * which do not shrink with C_in, dominate. Measured on one core (fwd + bwd,
 * batch 64, 7x7 to 28x28 images, 64 outputs): break-even near C_in = 8 for
 * 5x5 and C_in = 16 for 3x3; at C_in = 1 Winograd is 3-4x slower, at 32
 * 1.4x (3x3) to 1.9x (5x5) faster. */
int winograd_pays(const Window *g);

/* Build the matrices for g (winograd_supported) with k output channels and
 * allocate the workspace for batches of up to max_batch images through
 * ops->alloc, which must hand out host memory. On failure frees what it
 * took and returns BASIN_ERR_RUNTIME. */
int winograd_plan(Winograd *wg, const Ops *ops, const Window *g, int k, size_t max_batch);
void winograd_free(Winograd *wg, const Ops *ops);

/* y (n, K, OH, OW) = conv(x (n, C, H, W), w (K, C, r, r)) + b (K). */
void winograd_forward(Winograd *wg, const Ops *ops, const float *w, const float *b,
                      const float *x, float *y, size_t n);
/* Given dy (n, K, OH, OW) of the forward just run (its V and U, same
 * weights and batch): dw (K, C, r, r) (overwritten) and, when dx is not
 * NULL, dx (n, C, H, W) (overwritten). The bias gradient is the caller's
 * (ops->bias_grad_channels). */
void winograd_backward(Winograd *wg, const Ops *ops, const float *dy, float *dw, float *dx,
                       size_t n);

/* The kernel for the build's instruction set, which Winograd.comb is unless
 * the CPU has a wider one (tests compare the two). */
extern const CombFn winograd_comb_portable;

/* The 1-D F(2, r) matrices for r in {3, 5}, row-major A^T (2, t), B^T (t, t),
 * G (t, r), in double (for tests). Returns 0, or -1 for another r. */
int winograd_matrices(int r, double *at, double *bt, double *g);

#endif
