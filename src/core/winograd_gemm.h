/* The small matrix products of the Winograd convolution (core/winograd.h),
 * written for their shapes.
 *
 * Every chunk of a Winograd conv multiplies t*t pairs of matrices whose
 * sides are the channel counts (16 to a few hundred) and whose long side is
 * the chunk's columns (about 200). A general BLAS sgemm packs both operands
 * into its own panels before it multiplies, and at these sizes the packing
 * and the edges cost as much as the arithmetic (OpenBLAS's Haswell kernels
 * ran them at 65-120 GFLOP/s where its large products reach 130). These
 * kernels read the operands where they lie, with no packing: every operand
 * of the three products is already laid out so that one of the two vector
 * loops is contiguous.
 *
 * Two forms cover the three products of winograd.c:
 *
 *   nn  c (m, n) = a (m, k) b (k, n)          forward  M  = U V
 *                                             backward dV = U^T dM
 *       a's element (i, p) at a[i ars + p acs] (U or U^T, read by scalar
 *       broadcasts), b's rows ldb apart and contiguous (V or dM, read by
 *       vectors along n), c's rows ldc apart; c is overwritten.
 *   nt  c (m, n) (=, or += when acc) a (m, k) b (n, k)^T
 *                                             backward dU += dM V^T
 *       a's rows lda apart, b's rows ldb apart, both contiguous along k
 *       (dot products over the columns of the chunk).
 *
 * Results are deterministic: the order of every sum depends only on the
 * shapes (not on alignment, the data or anything else), so a step gives
 * the same bits every time and on every replica with the same kernel. The
 * kernels do not give the same bits as each other or as BLAS (another
 * order of the same sums); a run keeps the one picked at plan time. */
#ifndef BASIN_WINOGRAD_GEMM_H
#define BASIN_WINOGRAD_GEMM_H

#include <stddef.h>

typedef void (*WinogradGemmNN)(size_t m, size_t n, size_t k, const float *a, size_t ars,
                               size_t acs, const float *b, size_t ldb, float *c, size_t ldc);
typedef void (*WinogradGemmNT)(size_t m, size_t n, size_t k, const float *a, size_t lda,
                               const float *b, size_t ldb, float *c, size_t ldc, int acc);

typedef struct WinogradGemm {
    const char *name; /* "avx512", "avx2" */
    WinogradGemmNN nn;
    WinogradGemmNT nt;
} WinogradGemm;

/* The kernels for this CPU, or NULL when the op table's gemm (BLAS) is the
 * faster path here (no kernel for its instruction set, or one measured
 * slower than BLAS). */
const WinogradGemm *winograd_gemm_select(void);

/* By name: "avx512" or "avx2" (NULL when the CPU or the build lacks it),
 * "blas" or "auto"; *gemm is the kernel, NULL for BLAS, and for "auto" what
 * winograd_gemm_select picks. Returns 0, or -1 for an unknown name or a
 * kernel this CPU cannot run (for tests and benchmarks). */
int winograd_gemm_by_name(const char *name, const WinogradGemm **gemm);

#endif
