/* The Winograd convolution's own gemm kernels (core/winograd_gemm.h), each
 * one this CPU runs, against naive loops in double, in the three uses of
 * winograd.c:
 *
 *   forward   M  (K, cols) = U (K, C) V (C, cols; rows T apart)       nn
 *   backward  dU (K, C) (=, or +=) dM (K, cols) V^T                    nt
 *   backward  dV (C, cols) = U^T (C, K) dM (K, cols)                   nn
 *
 * over K, C in {1, 3, 16, 17, 33, 64} and cols in {1, 15, 17, 224, 250}:
 * every remainder of the register blocks and of the vector width (16 and
 * 8 floats), with row strides larger than the rows. Also: the elements
 * between the rows of c (row stride > columns) are never written; c is
 * overwritten where it should be (it starts as NaN); a kernel gives the
 * same bits for the same inputs at another alignment; "blas", "auto" and
 * unknown names resolve as documented.
 *
 * Bound, per element of c: |got - ref| <= (k + 2) u (|c0| + sum_p |a_ip b_pj|),
 * u = 2^-24, k the inner dimension. Any order of evaluating a sum of k
 * products with one rounding per FMA or add stays within gamma_k of the
 * absolute sum (Higham, Accuracy and Stability of Numerical Algorithms,
 * 3.1), and the += of nt is one more rounding: the bound is rigorous for
 * every summation order, so it holds for every kernel, yet a term dropped
 * or counted twice exceeds it (checked on every case: some element's
 * |a_ip b_pj| for the last p is above its bound). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/winograd_gemm.h"
#include "gen.h"
#include "testing.h"

#define GUARD 12345.0f /* between the rows of c: must stay */

static const double unit_roundoff = 1.0 / 16777216.0; /* 2^-24 */

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test_winograd_gemm: out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

/* rows x cols floats, rows ld apart, uniform in (-1, 1); the gaps too (a
 * kernel must not read them into a result: they would show) */
static float *uniform(Gen *g, size_t rows, size_t ld)
{
    float *x = xmalloc(rows * ld * sizeof *x);
    for (size_t i = 0; i < rows * ld; i++) x[i] = (float)(2.0 * gen_unit(g) - 1.0);
    return x;
}

/* The same values at another alignment (one float further), for the
 * determinism check. */
static float *shifted(const float *x, size_t n, float **block)
{
    *block = xmalloc((n + 1) * sizeof(float));
    memcpy(*block + 1, x, n * sizeof(float));
    return *block + 1;
}

typedef struct {
    double worst;   /* max |got - ref| / bound over all cases */
    int sensitive;  /* cases where a dropped term would exceed the bound */
    int cases;
} Tally;

/* c (m x n, ldc) against ref and bound; c's gaps hold GUARD. */
static void compare(const char *what, const float *c, size_t ldc, const double *ref,
                    const double *bound, const double *last_term, size_t m, size_t n, Tally *t)
{
    double worst = 0.0;
    int gaps_ok = 1, sensitive = 0;
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < n; j++) {
            const double e = fabs((double)c[i * ldc + j] - ref[i * n + j]) / bound[i * n + j];
            if (!(e <= worst)) worst = e; /* NaN sticks */
            if (last_term[i * n + j] > bound[i * n + j]) sensitive = 1;
        }
        for (size_t j = n; j < ldc; j++)
            if (c[i * ldc + j] != GUARD) gaps_ok = 0;
    }
    EXPECT(worst <= 1.0, "%s: error %.3g of the bound", what, worst);
    EXPECT(gaps_ok, "%s: wrote between the rows of c", what);
    if (!(worst <= t->worst)) t->worst = worst;
    t->sensitive += sensitive;
    t->cases++;
}

static float *fresh_c(size_t m, size_t n, size_t ldc, const float *init)
{
    float *c = xmalloc(m * ldc * sizeof *c);
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < ldc; j++)
            c[i * ldc + j] = j >= n ? GUARD : init ? init[i * ldc + j] : NAN;
    return c;
}

/* nn: c (m, n; ldc) = a (m, k) b (k, n; ldb), a(i, p) = a[i ars + p acs]
 * with a of a_rows rows of a_ld floats. */
static void check_nn(const WinogradGemm *kern, const char *use, size_t m, size_t n, size_t k,
                     int a_transposed, size_t ldb, size_t ldc, Gen *g, Tally *t)
{
    /* U is (K, C) either way: forward reads it as (m, k) = (K, C), dV's
     * product as its transpose (m, k) = (C, K). */
    const size_t a_rows = a_transposed ? k : m, a_ld = a_transposed ? m : k;
    const size_t ars = a_transposed ? 1 : a_ld, acs = a_transposed ? a_ld : 1;
    float *a = uniform(g, a_rows, a_ld), *b = uniform(g, k, ldb);
    double *ref = xmalloc(m * n * sizeof *ref), *bound = xmalloc(m * n * sizeof *bound);
    double *last = xmalloc(m * n * sizeof *last);
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double s = 0.0, abs_sum = 0.0;
            for (size_t p = 0; p < k; p++) {
                const double term = (double)a[i * ars + p * acs] * (double)b[p * ldb + j];
                s += term, abs_sum += fabs(term);
            }
            ref[i * n + j] = s;
            bound[i * n + j] = (double)(k + 2) * unit_roundoff * abs_sum;
            last[i * n + j] = k ? fabs((double)a[i * ars + (k - 1) * acs] * (double)b[(k - 1) * ldb + j]) : 0.0;
        }
    char what[160];
    snprintf(what, sizeof what, "%s %s m=%zu n=%zu k=%zu ldb=%zu ldc=%zu", kern->name, use, m, n, k,
             ldb, ldc);
    float *c = fresh_c(m, n, ldc, NULL);
    kern->nn(m, n, k, a, ars, acs, b, ldb, c, ldc);
    compare(what, c, ldc, ref, bound, last, m, n, t);

    /* the same inputs one float further: the same bits */
    float *ablock, *bblock;
    const float *a2 = shifted(a, a_rows * a_ld, &ablock), *b2 = shifted(b, k * ldb, &bblock);
    float *c2 = fresh_c(m, n, ldc, NULL);
    kern->nn(m, n, k, a2, ars, acs, b2, ldb, c2, ldc);
    EXPECT(memcmp(c, c2, m * ldc * sizeof *c) == 0, "%s: other bits at another alignment", what);
    free(ablock), free(bblock), free(c2);
    free(c), free(a), free(b), free(ref), free(bound), free(last);
}

/* nt: c (m, n; ldc) (=, or += when acc) a (m, k; lda) b (n, k; ldb)^T */
static void check_nt(const WinogradGemm *kern, size_t m, size_t n, size_t k, size_t lda, size_t ldb,
                     size_t ldc, int acc, Gen *g, Tally *t)
{
    float *a = uniform(g, m, lda), *b = uniform(g, n, ldb);
    float *c0 = uniform(g, m, ldc);
    double *ref = xmalloc(m * n * sizeof *ref), *bound = xmalloc(m * n * sizeof *bound);
    double *last = xmalloc(m * n * sizeof *last);
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double s = acc ? (double)c0[i * ldc + j] : 0.0, abs_sum = fabs(s);
            for (size_t p = 0; p < k; p++) {
                const double term = (double)a[i * lda + p] * (double)b[j * ldb + p];
                s += term, abs_sum += fabs(term);
            }
            ref[i * n + j] = s;
            bound[i * n + j] = (double)(k + 2) * unit_roundoff * abs_sum;
            last[i * n + j] = k ? fabs((double)a[i * lda + k - 1] * (double)b[j * ldb + k - 1]) : 0.0;
        }
    char what[160];
    snprintf(what, sizeof what, "%s dU%s m=%zu n=%zu k=%zu lda=%zu ldb=%zu ldc=%zu", kern->name,
             acc ? "+=" : "=", m, n, k, lda, ldb, ldc);
    float *c = fresh_c(m, n, ldc, acc ? c0 : NULL);
    kern->nt(m, n, k, a, lda, b, ldb, c, ldc, acc);
    compare(what, c, ldc, ref, bound, last, m, n, t);

    float *ablock, *bblock;
    const float *a2 = shifted(a, m * lda, &ablock), *b2 = shifted(b, n * ldb, &bblock);
    float *c2 = fresh_c(m, n, ldc, acc ? c0 : NULL);
    kern->nt(m, n, k, a2, lda, b2, ldb, c2, ldc, acc);
    EXPECT(memcmp(c, c2, m * ldc * sizeof *c) == 0, "%s: other bits at another alignment", what);
    free(ablock), free(bblock), free(c2);
    free(c), free(c0), free(a), free(b), free(ref), free(bound), free(last);
}

static void check_kernel(const WinogradGemm *kern)
{
    static const size_t chans[] = {1, 3, 16, 17, 33, 64};
    static const size_t colss[] = {1, 15, 17, 224, 250};
    const size_t nch = sizeof chans / sizeof chans[0], ncol = sizeof colss / sizeof colss[0];
    Gen g = {7};
    Tally t = {0};
    for (size_t ik = 0; ik < nch; ik++)
        for (size_t ic = 0; ic < nch; ic++)
            for (size_t in = 0; in < ncol; in++) {
                const size_t K = chans[ik], C = chans[ic], cols = colss[in];
                const size_t T = cols + 5; /* V's rows: the whole batch's columns */
                /* forward M = U V, c's rows packed as in winograd.c */
                check_nn(kern, "M=UV", K, cols, C, 0, T, cols, &g, &t);
                /* backward dV = U^T dM; c with gaps between its rows */
                check_nn(kern, "dV=U'dM", C, cols, K, 1, cols, cols + 3, &g, &t);
                /* backward dU (=, +=) dM V^T */
                check_nt(kern, K, C, cols, cols, T, C, 0, &g, &t);
                check_nt(kern, K, C, cols, cols, T, C + 2, 1, &g, &t);
            }
    printf("  %-7s %d cases, worst error %.3f of the bound; in %d cases one dropped term would "
           "exceed it\n",
           kern->name, t.cases, t.worst, t.sensitive);
    /* the bound is tight enough to see a lost term on nearly every case
     * (not on the ones whose last terms all happen to be tiny) */
    EXPECT(t.sensitive >= t.cases * 9 / 10, "%s: the bound would miss a dropped term in %d of %d cases",
           kern->name, t.cases - t.sensitive, t.cases);
}

int main(void)
{
    const WinogradGemm *k = NULL;
    EXPECT(winograd_gemm_by_name("blas", &k) == 0 && k == NULL, "\"blas\" is not the op table's gemm");
    EXPECT(winograd_gemm_by_name("auto", &k) == 0 && k == winograd_gemm_select(),
           "\"auto\" is not winograd_gemm_select()");
    EXPECT(winograd_gemm_by_name("sse9", &k) == -1, "an unknown kernel name is accepted");

    static const char *const names[] = {"avx512", "avx2"};
    int ran = 0;
    printf("kernels against double loops ((k + 2) u sum |a b| per element):\n");
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (winograd_gemm_by_name(names[i], &k) != 0) {
            printf("  %-7s not on this CPU or build: skipped\n", names[i]);
            continue;
        }
        EXPECT(strcmp(k->name, names[i]) == 0, "kernel %s calls itself %s", names[i], k->name);
        check_kernel(k);
        ran++;
    }
    if (!ran && !test_failures_) TEST_SKIP("no Winograd gemm kernel for this CPU");
    return test_finish("test_winograd_gemm");
}
