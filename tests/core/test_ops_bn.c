/* Batch normalization, the residual add and average pooling of the CPU op
 * table (core/ops.h) against independent references written here in
 * double precision: the formulas of core/ops.h evaluated directly, two-pass
 * statistics, direct window scans. Backward ops are checked twice: against
 * the double reference, and as adjoints of their forward op or against
 * central finite differences of a double-precision loss. Inputs come from a
 * fixed seed, so a run is reproducible.
 *
 * Tolerances. FLT_EPSILON (2^-23) and DBL_EPSILON (2^-52) are twice the
 * unit roundoff of a float or double operation. Each bound below is the
 * worst-case rounding bound of the computation, per element, scaled by the
 * sum of the magnitudes involved (so cancellation cannot make it
 * meaningless), with the epsilon in place of the unit roundoff as a
 * factor-2 margin. Ops that only move data or perform one correctly rounded
 * operation per element are compared exactly. The finite-difference checks
 * of the composed training-mode batch norm use a relative tolerance of
 * 1e-4 of the gradient's largest element: the float pipeline is good to a
 * few 1e-7 of it and the double central differences to about 1e-9, while a
 * wrong term (a missing mean or variance path, count - 1 for count) moves
 * some element by 1 / count of the scale or more (count <= 60 here). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/ops.h"
#include "gen.h"
#include "testing.h"

static const Ops *const O = &ops_cpu;

/* ---- inputs -------------------------------------------------------------------- */

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test_ops_bn: out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

static float *new_f(size_t n)
{
    return xmalloc(n * sizeof(float));
}

static double *new_d(size_t n)
{
    return xmalloc(n * sizeof(double));
}

static void fill_value(float *x, size_t n, float v)
{
    for (size_t i = 0; i < n; i++) x[i] = v;
}

static void fill_dvalue(double *x, size_t n, double v)
{
    for (size_t i = 0; i < n; i++) x[i] = v;
}

/* Normal values of standard deviation sd around a per-channel mean in
 * [-2, 2]: statistics that are far from 0 and differ between channels. */
static void fill_channels(Gen *g, float *x, size_t n, size_t c, size_t hw, float sd)
{
    for (size_t s = 0; s < n; s++)
        for (size_t ch = 0; ch < c; ch++) {
            const float shift = c > 1 ? -2.0f + 4.0f * (float)ch / (float)(c - 1) : 1.5f;
            for (size_t i = 0; i < hw; i++) x[(s * c + ch) * hw + i] = shift + sd * gen_normal(g);
        }
}

/* Uniform in [lo, hi). */
static void fill_uniform(Gen *g, float *x, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * (float)gen_unit(g);
}

static size_t at3(size_t s, size_t ch, size_t i, size_t c, size_t hw)
{
    return (s * c + ch) * hw + i;
}

/* ---- comparison: count the bad elements, report the first -------------------- */

typedef struct {
    size_t n, bad, first;
    double got, want, tol;
} Cmp;

static void cmp_add(Cmp *c, double got, double want, double tol)
{
    if (!(fabs(got - want) <= tol)) { /* NaN fails too */
        if (!c->bad) c->first = c->n, c->got = got, c->want = want, c->tol = tol;
        c->bad++;
    }
    c->n++;
}

/* Exact: the same bits. */
static void cmp_bits(Cmp *c, float got, float want)
{
    if (memcmp(&got, &want, sizeof got) != 0) {
        if (!c->bad) c->first = c->n, c->got = got, c->want = want, c->tol = 0.0;
        c->bad++;
    }
    c->n++;
}

#define EXPECT_CMP(c, ...)                                                                    \
    do {                                                                                      \
        char what_[200];                                                                      \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                           \
        EXPECT((c).bad == 0, "%s: %zu of %zu wrong, first [%zu] got %.9g want %.9g tol %.3g", \
               what_, (c).bad, (c).n, (c).first, (c).got, (c).want, (c).tol);                 \
    } while (0)

/* Batch shapes: n, c, hw. hw = 1 is a fully connected layer's features;
 * hw 1031 has a remainder after the 8-wide partial sums. */
static const size_t SHAPES[][3] = {{1, 3, 1},  {7, 5, 1},  {64, 10, 1}, {2, 3, 7},  {3, 4, 13},
                                   {4, 16, 49}, {2, 5, 100}, {1, 2, 9},  {5, 3, 1031}};
#define NSHAPES (sizeof SHAPES / sizeof SHAPES[0])

/* ---- bn_moments ------------------------------------------------------------------ */

static void test_bn_moments(void)
{
    Gen g = {101};
    for (size_t t = 0; t < NSHAPES; t++) {
        const size_t n = SHAPES[t][0], c = SHAPES[t][1], hw = SHAPES[t][2], len = n * c * hw;
        float *x = new_f(len);
        double *sum = new_d(c), *sumsq = new_d(c);
        fill_channels(&g, x, n, c, hw, 1.5f);
        /* The op overwrites: NaN must not survive. */
        fill_dvalue(sum, c, NAN);
        fill_dvalue(sumsq, c, NAN);
        O->bn_moments(x, n, c, hw, sum, sumsq);
        Cmp a = {0}, b = {0};
        const double m = (double)(n * hw);
        for (size_t ch = 0; ch < c; ch++) {
            double s1 = 0.0, s2 = 0.0, mag = 0.0;
            for (size_t s = 0; s < n; s++)
                for (size_t i = 0; i < hw; i++) {
                    const double v = x[at3(s, ch, i, c, hw)];
                    s1 += v;
                    s2 += v * v;
                    mag += fabs(v);
                }
            /* Terms and squares of floats are exact in double; a sum of m
             * of them in any order errs by at most m u sum|terms|. */
            cmp_add(&a, sum[ch], s1, m * DBL_EPSILON * mag);
            cmp_add(&b, sumsq[ch], s2, m * DBL_EPSILON * s2);
        }
        EXPECT_CMP(a, "bn_moments sum n=%zu c=%zu hw=%zu", n, c, hw);
        EXPECT_CMP(b, "bn_moments sumsq n=%zu c=%zu hw=%zu", n, c, hw);
        free(x);
        free(sum);
        free(sumsq);
    }
    /* n = 0: zero sums. */
    double sum[2] = {NAN, NAN}, sumsq[2] = {NAN, NAN};
    float dummy = 0.0f;
    O->bn_moments(&dummy, 0, 2, 5, sum, sumsq);
    EXPECT(sum[0] == 0.0 && sum[1] == 0.0 && sumsq[0] == 0.0 && sumsq[1] == 0.0,
           "bn_moments n=0 gave %g %g %g %g", sum[0], sum[1], sumsq[0], sumsq[1]);
}

/* ---- bn_finalize, bn_eval_stats ---------------------------------------------------- */

static void test_bn_finalize(void)
{
    const float eps = 1e-5f, mom = 0.1f;
    Gen g = {102};
    for (size_t t = 0; t < NSHAPES; t++) {
        const size_t n = SHAPES[t][0], c = SHAPES[t][1], hw = SHAPES[t][2], len = n * c * hw;
        const double count = (double)(n * hw);
        float *x = new_f(len), *mean = new_f(c), *invstd = new_f(c), *rm = new_f(c), *rv = new_f(c);
        float *rm0 = new_f(c), *rv0 = new_f(c), *mean2 = new_f(c), *invstd2 = new_f(c);
        double *sum = new_d(c), *sumsq = new_d(c);
        fill_channels(&g, x, n, c, hw, 1.5f);
        fill_uniform(&g, rm0, c, -1.0f, 1.0f);
        fill_uniform(&g, rv0, c, 0.5f, 2.0f);
        memcpy(rm, rm0, c * sizeof(float));
        memcpy(rv, rv0, c * sizeof(float));
        O->bn_moments(x, n, c, hw, sum, sumsq);
        O->bn_finalize(sum, sumsq, c, count, eps, mom, mean, invstd, rm, rv);

        Cmp cm = {0}, ci = {0}, crm = {0}, crv = {0};
        for (size_t ch = 0; ch < c; ch++) {
            /* Two-pass statistics of the data in double. */
            double mu = 0.0, ss = 0.0, sq = 0.0;
            for (size_t s = 0; s < n; s++)
                for (size_t i = 0; i < hw; i++) mu += x[at3(s, ch, i, c, hw)];
            mu /= count;
            for (size_t s = 0; s < n; s++)
                for (size_t i = 0; i < hw; i++) {
                    const double d = x[at3(s, ch, i, c, hw)] - mu;
                    ss += d * d;
                    sq += (double)x[at3(s, ch, i, c, hw)] * x[at3(s, ch, i, c, hw)];
                }
            const double var = ss / count; /* biased */
            const double unbiased = count > 1.0 ? ss / (count - 1.0) : var;
            const double is = 1.0 / sqrt(var + (double)eps);
            /* The op's sums of count values err by at most count u of the
             * sums of magnitudes; mean^2 then by 2 count u of (sum |x| /
             * count)^2 <= sumsq / count, and the one-pass variance sumsq /
             * count - mean^2 by (3 count + 4) u of sumsq / count in all
             * (cancellation included). Then one rounding to float. */
            const double var_err = (3.0 * count + 4.0) * DBL_EPSILON * sq / count;
            const double mean_err = (count + 1.0) * DBL_EPSILON * sqrt(sq / count);
            cmp_add(&cm, mean[ch], mu, FLT_EPSILON * fabs(mu) + mean_err);
            /* d(invstd) = invstd^3 / 2 d(var). */
            cmp_add(&ci, invstd[ch], is, FLT_EPSILON * is + 0.5 * is * is * is * var_err);
            const double want_rm = (1.0 - mom) * rm0[ch] + (double)mom * mu;
            const double want_rv = (1.0 - mom) * rv0[ch] + (double)mom * unbiased;
            cmp_add(&crm, rm[ch], want_rm,
                    2.0 * FLT_EPSILON * ((1.0 - mom) * fabs(rm0[ch]) + mom * fabs(mu)) +
                        mom * mean_err);
            cmp_add(&crv, rv[ch], want_rv,
                    2.0 * FLT_EPSILON * ((1.0 - mom) * rv0[ch] + mom * unbiased) +
                        mom * count / (count > 1.0 ? count - 1.0 : 1.0) * var_err);
        }
        EXPECT_CMP(cm, "bn_finalize mean n=%zu c=%zu hw=%zu", n, c, hw);
        EXPECT_CMP(ci, "bn_finalize invstd n=%zu c=%zu hw=%zu", n, c, hw);
        EXPECT_CMP(crm, "bn_finalize running_mean n=%zu c=%zu hw=%zu", n, c, hw);
        EXPECT_CMP(crv, "bn_finalize running_var (unbiased) n=%zu c=%zu hw=%zu", n, c, hw);

        /* Without running statistics: the same mean and invstd. */
        O->bn_finalize(sum, sumsq, c, count, eps, mom, mean2, invstd2, NULL, NULL);
        Cmp same = {0};
        for (size_t ch = 0; ch < c; ch++) {
            cmp_bits(&same, mean2[ch], mean[ch]);
            cmp_bits(&same, invstd2[ch], invstd[ch]);
        }
        EXPECT_CMP(same, "bn_finalize without running statistics n=%zu c=%zu hw=%zu", n, c, hw);

        /* Evaluation from the running statistics just formed. */
        O->bn_eval_stats(rm, rv, c, eps, mean2, invstd2);
        Cmp em = {0}, ei = {0};
        for (size_t ch = 0; ch < c; ch++) {
            cmp_bits(&em, mean2[ch], rm[ch]);
            const double want = 1.0 / sqrt((double)rv[ch] + (double)eps);
            /* Double sum, root and quotient: one float rounding in all. */
            cmp_add(&ei, invstd2[ch], want, FLT_EPSILON * want);
        }
        EXPECT_CMP(em, "bn_eval_stats mean c=%zu", c);
        EXPECT_CMP(ei, "bn_eval_stats invstd c=%zu", c);
        free(x);
        free(mean);
        free(invstd);
        free(rm);
        free(rv);
        free(rm0);
        free(rv0);
        free(mean2);
        free(invstd2);
        free(sum);
        free(sumsq);
    }

    /* Rounding below zero: sumsq / count < mean^2 gives var 0, invstd
     * 1 / sqrt(eps). count 1 uses the (zero) variance for running_var. */
    double sum[1] = {3.0}, sumsq[1] = {8.999999};
    float mean[1], invstd[1], rm[1] = {0.5f}, rv[1] = {2.0f};
    O->bn_finalize(sum, sumsq, 1, 1.0, 0.25f, 0.5f, mean, invstd, rm, rv);
    EXPECT(mean[0] == 3.0f && invstd[0] == 2.0f, "bn_finalize negative variance: mean %g invstd %g",
           (double)mean[0], (double)invstd[0]);
    EXPECT(rm[0] == 1.75f && rv[0] == 1.0f, "bn_finalize count 1: running mean %g var %g (want 1.75 1)",
           (double)rm[0], (double)rv[0]);
    /* count 4, values {1, 2, 3, 6}: mean 3, biased var 3.5, unbiased 14/3. */
    double sum4[1] = {12.0}, sumsq4[1] = {50.0};
    rm[0] = 0.0f, rv[0] = 0.0f;
    O->bn_finalize(sum4, sumsq4, 1, 4.0, 0.5f, 1.0f, mean, invstd, rm, rv);
    EXPECT(mean[0] == 3.0f && invstd[0] == 0.5f && rm[0] == 3.0f &&
               fabs(rv[0] - 14.0 / 3.0) <= FLT_EPSILON * 14.0 / 3.0,
           "bn_finalize {1,2,3,6}: mean %g invstd %g running %g %g (want 3 0.5 3 4.6667)",
           (double)mean[0], (double)invstd[0], (double)rm[0], (double)rv[0]);
}

/* ---- bn_fwd ------------------------------------------------------------------------ */

static void test_bn_fwd(void)
{
    Gen g = {103};
    for (size_t t = 0; t < NSHAPES; t++) {
        const size_t n = SHAPES[t][0], c = SHAPES[t][1], hw = SHAPES[t][2], len = n * c * hw;
        float *x = new_f(len), *y = new_f(len), *yi = new_f(len);
        float *mean = new_f(c), *invstd = new_f(c), *gamma = new_f(c), *beta = new_f(c);
        fill_channels(&g, x, n, c, hw, 1.5f);
        fill_normal(&g, mean, c, 1.0f);
        fill_uniform(&g, invstd, c, 0.3f, 3.0f);
        fill_normal(&g, gamma, c, 1.0f);
        fill_normal(&g, beta, c, 1.0f);
        fill_value(y, len, NAN);
        O->bn_fwd(x, y, n, c, hw, mean, invstd, gamma, beta);
        Cmp f = {0};
        for (size_t s = 0; s < n; s++)
            for (size_t ch = 0; ch < c; ch++)
                for (size_t i = 0; i < hw; i++) {
                    const size_t k = at3(s, ch, i, c, hw);
                    const double p = (double)gamma[ch] * ((double)x[k] - mean[ch]) * invstd[ch];
                    /* x - mean, gamma invstd, their product (3 u of |p|),
                     * plus beta (u of the sum). */
                    cmp_add(&f, y[k], p + beta[ch], 2.0 * FLT_EPSILON * (fabs(p) + fabs(beta[ch])));
                }
        EXPECT_CMP(f, "bn_fwd n=%zu c=%zu hw=%zu", n, c, hw);
        /* In place: y is x, the same bits. */
        memcpy(yi, x, len * sizeof(float));
        O->bn_fwd(yi, yi, n, c, hw, mean, invstd, gamma, beta);
        Cmp ip = {0};
        for (size_t k = 0; k < len; k++) cmp_bits(&ip, yi[k], y[k]);
        EXPECT_CMP(ip, "bn_fwd in place n=%zu c=%zu hw=%zu", n, c, hw);
        free(x);
        free(y);
        free(yi);
        free(mean);
        free(invstd);
        free(gamma);
        free(beta);
    }
}

/* ---- bn_bwd_sums, bn_param_grads, bn_bwd_dx ------------------------------------------ */

static void test_bn_bwd_ops(void)
{
    Gen g = {104};
    for (size_t t = 0; t < NSHAPES; t++) {
        const size_t n = SHAPES[t][0], c = SHAPES[t][1], hw = SHAPES[t][2], len = n * c * hw;
        const double count = (double)(n * hw);
        float *x = new_f(len), *dy = new_f(len), *dx = new_f(len), *dxi = new_f(len);
        float *mean = new_f(c), *invstd = new_f(c), *gamma = new_f(c);
        float *dgamma = new_f(c), *dbeta = new_f(c);
        double *sdy = new_d(c), *sdyxhat = new_d(c);
        fill_channels(&g, x, n, c, hw, 1.5f);
        fill_normal(&g, dy, len, 1.0f);
        fill_normal(&g, mean, c, 1.0f);
        fill_uniform(&g, invstd, c, 0.3f, 3.0f);
        fill_normal(&g, gamma, c, 1.0f);

        fill_dvalue(sdy, c, NAN);
        fill_dvalue(sdyxhat, c, NAN);
        O->bn_bwd_sums(dy, x, n, c, hw, mean, invstd, sdy, sdyxhat);
        Cmp a = {0}, b = {0};
        const double m = count;
        for (size_t ch = 0; ch < c; ch++) {
            double s1 = 0.0, s2 = 0.0, mag1 = 0.0, mag2 = 0.0;
            for (size_t s = 0; s < n; s++)
                for (size_t i = 0; i < hw; i++) {
                    const size_t k = at3(s, ch, i, c, hw);
                    const double v = (double)dy[k] * ((double)x[k] - mean[ch]) * invstd[ch];
                    s1 += dy[k];
                    mag1 += fabs(dy[k]);
                    s2 += v;
                    mag2 += fabs(v);
                }
            /* Double sums of m terms, each term within 3 roundings. */
            cmp_add(&a, sdy[ch], s1, m * DBL_EPSILON * mag1);
            cmp_add(&b, sdyxhat[ch], s2, (m + 3.0) * DBL_EPSILON * mag2);
        }
        EXPECT_CMP(a, "bn_bwd_sums sdy n=%zu c=%zu hw=%zu", n, c, hw);
        EXPECT_CMP(b, "bn_bwd_sums sdyxhat n=%zu c=%zu hw=%zu", n, c, hw);

        /* Parameter gradients: one rounding of each double to float. */
        fill_value(dgamma, c, NAN);
        fill_value(dbeta, c, NAN);
        O->bn_param_grads(sdy, sdyxhat, c, dgamma, dbeta);
        Cmp pg = {0};
        for (size_t ch = 0; ch < c; ch++) {
            cmp_bits(&pg, dgamma[ch], (float)sdyxhat[ch]);
            cmp_bits(&pg, dbeta[ch], (float)sdy[ch]);
        }
        EXPECT_CMP(pg, "bn_param_grads c=%zu", c);

        /* dx from these sums. */
        fill_value(dx, len, NAN);
        O->bn_bwd_dx(dy, x, n, c, hw, mean, invstd, gamma, sdy, sdyxhat, count, dx);
        Cmp d = {0};
        for (size_t s = 0; s < n; s++)
            for (size_t ch = 0; ch < c; ch++)
                for (size_t i = 0; i < hw; i++) {
                    const size_t k = at3(s, ch, i, c, hw);
                    const double xhat = ((double)x[k] - mean[ch]) * invstd[ch];
                    const double t1 = dy[k], t2 = sdy[ch] / count, t3 = xhat * sdyxhat[ch] / count;
                    const double ga = (double)gamma[ch] * invstd[ch];
                    /* At most 8 float roundings, each of one of the terms
                     * times |gamma invstd|. */
                    cmp_add(&d, dx[k], ga * (t1 - t2 - t3),
                            4.0 * FLT_EPSILON * fabs(ga) * (fabs(t1) + fabs(t2) + fabs(t3)));
                }
        EXPECT_CMP(d, "bn_bwd_dx n=%zu c=%zu hw=%zu", n, c, hw);
        /* In place: dx is dy, the same bits. */
        memcpy(dxi, dy, len * sizeof(float));
        O->bn_bwd_dx(dxi, x, n, c, hw, mean, invstd, gamma, sdy, sdyxhat, count, dxi);
        Cmp ip = {0};
        for (size_t k = 0; k < len; k++) cmp_bits(&ip, dxi[k], dx[k]);
        EXPECT_CMP(ip, "bn_bwd_dx in place n=%zu c=%zu hw=%zu", n, c, hw);
        free(x);
        free(dy);
        free(dx);
        free(dxi);
        free(mean);
        free(invstd);
        free(gamma);
        free(dgamma);
        free(dbeta);
        free(sdy);
        free(sdyxhat);
    }
}

/* ---- training-mode batch norm composed from the ops, against finite differences ---- */

/* L = sum r y of batch norm in training mode, entirely in double: two-pass
 * batch statistics (biased variance), y = gamma (x - mean) / sqrt(var +
 * eps) + beta. Optionally writes y. */
static double bn_train_loss(const double *x, const double *gamma, const double *beta,
                            const double *r, size_t n, size_t c, size_t hw, double eps, double *y)
{
    const double count = (double)(n * hw);
    double loss = 0.0;
    for (size_t ch = 0; ch < c; ch++) {
        double mu = 0.0, ss = 0.0;
        for (size_t s = 0; s < n; s++)
            for (size_t i = 0; i < hw; i++) mu += x[at3(s, ch, i, c, hw)];
        mu /= count;
        for (size_t s = 0; s < n; s++)
            for (size_t i = 0; i < hw; i++) {
                const double d = x[at3(s, ch, i, c, hw)] - mu;
                ss += d * d;
            }
        const double is = 1.0 / sqrt(ss / count + eps);
        for (size_t s = 0; s < n; s++)
            for (size_t i = 0; i < hw; i++) {
                const size_t k = at3(s, ch, i, c, hw);
                const double v = gamma[ch] * (x[k] - mu) * is + beta[ch];
                if (y) y[k] = v;
                loss += r[k] * v;
            }
    }
    return loss;
}

static double max_abs(const double *v, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) m = fabs(v[i]) > m ? fabs(v[i]) : m;
    return m;
}

/* The ops' training step for one batch: forward to y, backward from dy to
 * dx, dgamma, dbeta; mean and invstd out for the caller. */
static void bn_train_ops(const float *x, const float *gamma, const float *beta, const float *dy,
                         size_t n, size_t c, size_t hw, float eps, float *y, float *dx,
                         float *dgamma, float *dbeta, float *rm, float *rv)
{
    const double count = (double)(n * hw);
    float *mean = new_f(c), *invstd = new_f(c);
    double *sum = new_d(c), *sumsq = new_d(c), *sdy = new_d(c), *sdyxhat = new_d(c);
    O->bn_moments(x, n, c, hw, sum, sumsq);
    O->bn_finalize(sum, sumsq, c, count, eps, 0.1f, mean, invstd, rm, rv);
    O->bn_fwd(x, y, n, c, hw, mean, invstd, gamma, beta);
    O->bn_bwd_sums(dy, x, n, c, hw, mean, invstd, sdy, sdyxhat);
    O->bn_param_grads(sdy, sdyxhat, c, dgamma, dbeta);
    O->bn_bwd_dx(dy, x, n, c, hw, mean, invstd, gamma, sdy, sdyxhat, count, dx);
    free(mean);
    free(invstd);
    free(sum);
    free(sumsq);
    free(sdy);
    free(sdyxhat);
}

/* The same step with the batch split between two "ranks" (--sync-bn): the
 * per-rank sums are added before the statistics are formed, and count is
 * the whole batch's. Must agree with the one-batch step. */
static void bn_train_ops_split(const float *x, const float *gamma, const float *beta,
                               const float *dy, size_t n, size_t n1, size_t c, size_t hw,
                               float eps, float *y, float *dx, float *dgamma, float *dbeta)
{
    const double count = (double)(n * hw);
    const size_t off = n1 * c * hw, n2 = n - n1;
    float *mean = new_f(c), *invstd = new_f(c);
    double *s1 = new_d(c), *q1 = new_d(c), *s2 = new_d(c), *q2 = new_d(c);
    O->bn_moments(x, n1, c, hw, s1, q1);
    O->bn_moments(x + off, n2, c, hw, s2, q2);
    for (size_t ch = 0; ch < c; ch++) s1[ch] += s2[ch], q1[ch] += q2[ch];
    O->bn_finalize(s1, q1, c, count, eps, 0.1f, mean, invstd, NULL, NULL);
    O->bn_fwd(x, y, n1, c, hw, mean, invstd, gamma, beta);
    O->bn_fwd(x + off, y + off, n2, c, hw, mean, invstd, gamma, beta);
    O->bn_bwd_sums(dy, x, n1, c, hw, mean, invstd, s1, q1);
    O->bn_bwd_sums(dy + off, x + off, n2, c, hw, mean, invstd, s2, q2);
    for (size_t ch = 0; ch < c; ch++) s1[ch] += s2[ch], q1[ch] += q2[ch];
    O->bn_param_grads(s1, q1, c, dgamma, dbeta);
    O->bn_bwd_dx(dy, x, n1, c, hw, mean, invstd, gamma, s1, q1, count, dx);
    O->bn_bwd_dx(dy + off, x + off, n2, c, hw, mean, invstd, gamma, s1, q1, count, dx + off);
    free(mean);
    free(invstd);
    free(s1);
    free(q1);
    free(s2);
    free(q2);
}

static void check_bn_train(Gen *g, size_t n, size_t c, size_t hw)
{
    const size_t len = n * c * hw;
    const float eps = 1e-5f;
    float *x = new_f(len), *r = new_f(len), *y = new_f(len), *dx = new_f(len);
    float *gamma = new_f(c), *beta = new_f(c), *dgamma = new_f(c), *dbeta = new_f(c);
    float *rm = new_f(c), *rv = new_f(c);
    float *y2 = new_f(len), *dx2 = new_f(len), *dgamma2 = new_f(c), *dbeta2 = new_f(c);
    double *xd = new_d(len), *rd = new_d(len), *yd = new_d(len), *gd = new_d(c), *bd = new_d(c);
    double *fdx = new_d(len), *fdg = new_d(c), *fdb = new_d(c);
    fill_channels(g, x, n, c, hw, 1.5f);
    fill_normal(g, r, len, 1.0f);
    for (size_t ch = 0; ch < c; ch++) {
        gamma[ch] = 0.5f + (float)gen_unit(g);
        beta[ch] = gen_normal(g);
        rm[ch] = 0.0f, rv[ch] = 1.0f;
    }
    for (size_t k = 0; k < len; k++) xd[k] = x[k], rd[k] = r[k];
    for (size_t ch = 0; ch < c; ch++) gd[ch] = gamma[ch], bd[ch] = beta[ch];

    /* dL/dy = r. */
    bn_train_ops(x, gamma, beta, r, n, c, hw, eps, y, dx, dgamma, dbeta, rm, rv);

    /* Forward against the double forward. */
    bn_train_loss(xd, gd, bd, rd, n, c, hw, eps, yd);
    Cmp fy = {0};
    const double ymax = max_abs(yd, len);
    /* float mean and invstd (one rounding each) and the forward's own
     * roundings: a few float epsilons of the output's scale. */
    for (size_t k = 0; k < len; k++) cmp_add(&fy, y[k], yd[k], 16.0 * FLT_EPSILON * ymax);
    EXPECT_CMP(fy, "batch norm train forward n=%zu c=%zu hw=%zu", n, c, hw);

    /* Central differences of L through the batch statistics. The step is
     * relative to the values' scale (about 1.5); h^2 truncation and 1e-16 /
     * h cancellation are both far below the tolerance. */
    const double h = 1e-4;
    for (size_t k = 0; k < len; k++) {
        const double keep = xd[k];
        xd[k] = keep + h;
        const double lp = bn_train_loss(xd, gd, bd, rd, n, c, hw, eps, NULL);
        xd[k] = keep - h;
        const double lm = bn_train_loss(xd, gd, bd, rd, n, c, hw, eps, NULL);
        xd[k] = keep;
        fdx[k] = (lp - lm) / (2.0 * h);
    }
    for (size_t ch = 0; ch < c; ch++) {
        const double kg = gd[ch], kb = bd[ch];
        gd[ch] = kg + h;
        double lp = bn_train_loss(xd, gd, bd, rd, n, c, hw, eps, NULL);
        gd[ch] = kg - h;
        double lm = bn_train_loss(xd, gd, bd, rd, n, c, hw, eps, NULL);
        gd[ch] = kg;
        fdg[ch] = (lp - lm) / (2.0 * h);
        bd[ch] = kb + h;
        lp = bn_train_loss(xd, gd, bd, rd, n, c, hw, eps, NULL);
        bd[ch] = kb - h;
        lm = bn_train_loss(xd, gd, bd, rd, n, c, hw, eps, NULL);
        bd[ch] = kb;
        fdb[ch] = (lp - lm) / (2.0 * h);
    }
    Cmp cx = {0}, cg = {0}, cb = {0};
    const double tx = 1e-4 * max_abs(fdx, len), tg = 1e-4 * max_abs(fdg, c), tb = 1e-4 * max_abs(fdb, c);
    for (size_t k = 0; k < len; k++) cmp_add(&cx, dx[k], fdx[k], tx);
    for (size_t ch = 0; ch < c; ch++) {
        cmp_add(&cg, dgamma[ch], fdg[ch], tg);
        cmp_add(&cb, dbeta[ch], fdb[ch], tb);
    }
    EXPECT_CMP(cx, "batch norm train dx vs finite differences n=%zu c=%zu hw=%zu", n, c, hw);
    EXPECT_CMP(cg, "batch norm train dgamma vs finite differences n=%zu c=%zu hw=%zu", n, c, hw);
    EXPECT_CMP(cb, "batch norm train dbeta vs finite differences n=%zu c=%zu hw=%zu", n, c, hw);

    /* The batch split over two ranks, sums added: the same step. The sums
     * are added in another order, so the statistics may differ in their
     * last bit: 1e-6 of each output's scale. */
    if (n >= 2) {
        bn_train_ops_split(x, gamma, beta, r, n, n / 2, c, hw, eps, y2, dx2, dgamma2, dbeta2);
        Cmp sy = {0}, sx = {0}, sg = {0};
        for (size_t k = 0; k < len; k++) {
            cmp_add(&sy, y2[k], y[k], 1e-6 * ymax);
            cmp_add(&sx, dx2[k], dx[k], 1e-6 * max_abs(fdx, len));
        }
        for (size_t ch = 0; ch < c; ch++) {
            cmp_add(&sg, dgamma2[ch], dgamma[ch], 1e-6 * (fabs(dgamma[ch]) + 1.0));
            cmp_add(&sg, dbeta2[ch], dbeta[ch], 1e-6 * (fabs(dbeta[ch]) + 1.0));
        }
        EXPECT_CMP(sy, "batch norm split over ranks: y n=%zu c=%zu hw=%zu", n, c, hw);
        EXPECT_CMP(sx, "batch norm split over ranks: dx n=%zu c=%zu hw=%zu", n, c, hw);
        EXPECT_CMP(sg, "batch norm split over ranks: dgamma, dbeta n=%zu c=%zu hw=%zu", n, c, hw);
    }
    free(x);
    free(r);
    free(y);
    free(dx);
    free(gamma);
    free(beta);
    free(dgamma);
    free(dbeta);
    free(rm);
    free(rv);
    free(y2);
    free(dx2);
    free(dgamma2);
    free(dbeta2);
    free(xd);
    free(rd);
    free(yd);
    free(gd);
    free(bd);
    free(fdx);
    free(fdg);
    free(fdb);
}

static void test_bn_train(void)
{
    /* n, c, hw: images, fc features (hw = 1), one channel, odd sizes. */
    static const size_t shapes[][3] = {{3, 2, 5}, {6, 3, 1}, {2, 2, 7}, {4, 1, 3}, {12, 2, 1}, {5, 2, 12}};
    Gen g = {105};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++)
        check_bn_train(&g, shapes[t][0], shapes[t][1], shapes[t][2]);
}

/* ---- add ------------------------------------------------------------------------------- */

static void test_add(void)
{
    const size_t n = 1031;
    Gen g = {106};
    float *a = new_f(n), *b = new_f(n), *y = new_f(n), *t = new_f(n);
    fill_normal(&g, a, n, 1.0f);
    fill_normal(&g, b, n, 3.0f);
    fill_value(y, n, NAN);
    O->add(a, b, y, n);
    /* One float addition: the correctly rounded sum of the doubles. */
    Cmp c = {0}, ia = {0}, ib = {0};
    for (size_t i = 0; i < n; i++) cmp_bits(&c, y[i], (float)((double)a[i] + b[i]));
    EXPECT_CMP(c, "add");
    memcpy(t, a, n * sizeof(float));
    O->add(t, b, t, n); /* y is a */
    for (size_t i = 0; i < n; i++) cmp_bits(&ia, t[i], y[i]);
    EXPECT_CMP(ia, "add in place (y is a)");
    memcpy(t, b, n * sizeof(float));
    O->add(a, t, t, n); /* y is b */
    for (size_t i = 0; i < n; i++) cmp_bits(&ib, t[i], y[i]);
    EXPECT_CMP(ib, "add in place (y is b)");
    free(a);
    free(b);
    free(y);
    free(t);
}

/* ---- average pooling --------------------------------------------------------------------- */

static Window make_window(int c, int h, int w, int kh, int kw, int stride, int pad)
{
    Window g = {.c = c, .h = h, .w = w, .kh = kh, .kw = kw, .stride = stride, .pad = pad};
    g.oh = window_out(h, kh, stride, pad);
    g.ow = window_out(w, kw, stride, pad);
    return g;
}

static void check_avgpool(Gen *gen, const Window *g, size_t n)
{
    const size_t in_s = (size_t)g->c * g->h * g->w, out_s = (size_t)g->c * g->oh * g->ow;
    const double area = (double)g->kh * g->kw;
    float *x = new_f(n * in_s), *y = new_f(n * out_s), *dy = new_f(n * out_s);
    float *dx = new_f(n * in_s);
    double *dref = new_d(n * in_s), *dmag = new_d(n * in_s);
    fill_normal(gen, x, n * in_s, 1.0f);
    fill_normal(gen, dy, n * out_s, 1.0f);
    fill_value(y, n * out_s, NAN);
    O->avgpool_fwd(g, n, x, y);
    for (size_t i = 0; i < n * in_s; i++) dref[i] = 0.0, dmag[i] = 0.0;

    Cmp f = {0};
    size_t pad_only = 0, pad_only_bad = 0;
    double lhs = 0.0, absdot = 0.0;
    for (size_t s = 0; s < n; s++)
        for (int ci = 0; ci < g->c; ci++)
            for (int oy = 0; oy < g->oh; oy++)
                for (int ox = 0; ox < g->ow; ox++) {
                    const size_t oi = s * out_s + ((size_t)ci * g->oh + oy) * g->ow + ox;
                    double acc = 0.0, mag = 0.0;
                    int inside = 0;
                    for (int ki = 0; ki < g->kh; ki++)
                        for (int kj = 0; kj < g->kw; kj++) {
                            const int iy = oy * g->stride - g->pad + ki;
                            const int ix = ox * g->stride - g->pad + kj;
                            if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w) continue;
                            const size_t xi = s * in_s + ((size_t)ci * g->h + iy) * g->w + ix;
                            inside++;
                            acc += x[xi];
                            mag += fabs(x[xi]);
                            dref[xi] += dy[oi] / area;
                            dmag[xi] += fabs(dy[oi]) / area;
                            absdot += fabs((double)x[xi] * dy[oi]) / area;
                        }
                    /* A float sum of at most kh kw terms and one division. */
                    cmp_add(&f, y[oi], acc / area, (area + 1.0) * FLT_EPSILON * mag / area);
                    if (!inside) pad_only++, pad_only_bad += y[oi] != 0.0f;
                    lhs += (double)y[oi] * dy[oi];
                }
    EXPECT_CMP(f, "avgpool_fwd c=%d h=%d w=%d k=%dx%d s=%d p=%d", g->c, g->h, g->w, g->kh, g->kw,
               g->stride, g->pad);
    EXPECT(pad_only_bad == 0, "avgpool_fwd: %zu of %zu windows over padding only are not 0",
           pad_only_bad, pad_only);

    /* Backward must overwrite dx: start from NaN. */
    fill_value(dx, n * in_s, NAN);
    O->avgpool_bwd(g, n, dy, dx);
    Cmp b = {0};
    /* An input is in at most kh kw windows: that many float terms, each
     * a division (one more rounding). */
    for (size_t i = 0; i < n * in_s; i++)
        cmp_add(&b, dx[i], dref[i], (area + 1.0) * FLT_EPSILON * dmag[i]);
    EXPECT_CMP(b, "avgpool_bwd c=%d h=%d w=%d k=%dx%d s=%d p=%d", g->c, g->h, g->w, g->kh, g->kw,
               g->stride, g->pad);

    /* Adjoint: <avgpool_fwd(x), dy> == <x, avgpool_bwd(dy)>, in double over
     * the float results: each side within (kh kw + 1) u of sum |x dy| / area. */
    double rhs = 0.0;
    for (size_t i = 0; i < n * in_s; i++) rhs += (double)x[i] * dx[i];
    EXPECT_NEAR(rhs, lhs, 2.0 * (area + 1.0) * FLT_EPSILON * absdot + 1e-12, 0.0,
                "avgpool_bwd adjoint of avgpool_fwd");
    free(x);
    free(y);
    free(dy);
    free(dx);
    free(dref);
    free(dmag);
}

static void test_avgpool(void)
{
    /* c, h, w, kh, kw, stride, pad */
    static const int geo[][7] = {
        {3, 8, 8, 2, 2, 2, 0},   /* the usual 2x2/2 */
        {2, 7, 7, 2, 2, 2, 0},   /* odd size: last row and column dropped */
        {2, 7, 9, 3, 3, 2, 1},   /* overlapping windows with padding */
        {2, 6, 6, 3, 3, 1, 1},   /* stride 1: up to 9 windows share an input */
        {1, 13, 11, 3, 2, 3, 1}, /* rectangular window, gaps between windows */
        {2, 5, 5, 1, 1, 1, 0},   /* 1x1: the identity */
        {2, 7, 7, 1, 1, 2, 0},   /* 1x1 stride 2: subsampling */
        {3, 7, 7, 7, 7, 1, 0},   /* global window */
        {2, 4, 5, 4, 5, 1, 0},   /* global rectangular window */
        {2, 4, 4, 2, 2, 1, 2},   /* pad 2 of a 2x2 window: corner windows see only padding */
        {1, 1, 1, 1, 1, 1, 0},
        {2, 5, 5, 3, 3, 2, 1},
        {1, 9, 9, 5, 5, 3, 2},
        {2, 3, 7, 2, 2, 2, 1},   /* 2x2 stride 2 with padding */
    };
    Gen gen = {107};
    for (size_t i = 0; i < sizeof geo / sizeof geo[0]; i++) {
        const int *q = geo[i];
        Window g = make_window(q[0], q[1], q[2], q[3], q[4], q[5], q[6]);
        check_avgpool(&gen, &g, 3);
    }
}

/* ---- global average pooling ---------------------------------------------------------------- */

static void test_gap(void)
{
    static const size_t shapes[][3] = {{1, 1, 1}, {3, 5, 1}, {2, 4, 49}, {3, 7, 13}, {2, 3, 64},
                                       {1, 2, 1000}};
    Gen gen = {108};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        const size_t n = shapes[t][0], c = shapes[t][1], hw = shapes[t][2];
        const size_t planes = n * c, len = planes * hw;
        float *x = new_f(len), *y = new_f(planes), *dy = new_f(planes), *dx = new_f(len);
        fill_channels(&gen, x, n, c, hw, 1.0f);
        fill_normal(&gen, dy, planes, 1.0f);
        fill_value(y, planes, NAN);
        O->gap_fwd(x, y, n, c, hw);
        Cmp f = {0};
        double lhs = 0.0, absdot = 0.0;
        for (size_t p = 0; p < planes; p++) {
            double acc = 0.0, mag = 0.0;
            for (size_t i = 0; i < hw; i++) {
                acc += x[p * hw + i];
                mag += fabs(x[p * hw + i]);
                absdot += fabs((double)x[p * hw + i] * dy[p]) / (double)hw;
            }
            /* A float sum of hw terms and one division. */
            cmp_add(&f, y[p], acc / (double)hw, ((double)hw + 1.0) * FLT_EPSILON * mag / (double)hw);
            lhs += (double)y[p] * dy[p];
        }
        EXPECT_CMP(f, "gap_fwd n=%zu c=%zu hw=%zu", n, c, hw);

        fill_value(dx, len, NAN);
        O->gap_bwd(dy, dx, n, c, hw);
        /* One correctly rounded division per element: exact. */
        Cmp b = {0};
        double rhs = 0.0;
        for (size_t p = 0; p < planes; p++)
            for (size_t i = 0; i < hw; i++) {
                cmp_bits(&b, dx[p * hw + i], (float)((double)dy[p] / (double)hw));
                rhs += (double)x[p * hw + i] * dx[p * hw + i];
            }
        EXPECT_CMP(b, "gap_bwd n=%zu c=%zu hw=%zu", n, c, hw);
        /* Adjoint: <gap_fwd(x), dy> == <x, gap_bwd(dy)>. */
        EXPECT_NEAR(rhs, lhs, 2.0 * ((double)hw + 2.0) * FLT_EPSILON * absdot + 1e-12, 0.0,
                    "gap_bwd adjoint of gap_fwd");
        free(x);
        free(y);
        free(dy);
        free(dx);
    }
}

int main(void)
{
    ops_cpu_set_threads(1);
    EXPECT(O->bn_moments && O->bn_finalize && O->bn_eval_stats && O->bn_fwd && O->bn_bwd_sums &&
               O->bn_param_grads && O->bn_bwd_dx && O->add && O->avgpool_fwd && O->avgpool_bwd &&
               O->gap_fwd && O->gap_bwd,
           "the CPU table lacks an op");
    if (test_failures_) return test_finish("test_ops_bn");
    test_bn_moments();
    test_bn_finalize();
    test_bn_fwd();
    test_bn_bwd_ops();
    test_bn_train();
    test_add();
    test_avgpool();
    test_gap();
    return test_finish("test_ops_bn");
}
