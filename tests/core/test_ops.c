/* Every op of the CPU table against an independent double-precision
 * reference written here: explicit loops for gemm, direct convolution for
 * im2col/col2im, a direct scan for pooling, the formulas of core/ops.h for
 * the rest. Inputs come from a fixed seed, so a run is reproducible.
 *
 * Tolerances. FLT_EPSILON is 2^-23, twice the unit roundoff u = 2^-24 of a
 * float operation. Each bound below is the textbook worst-case rounding
 * bound of the float computation, stated per element and scaled by the sum
 * of the magnitudes involved (so cancellation cannot make it meaningless),
 * with FLT_EPSILON in place of u as a factor-2 margin. Ops that only move
 * data (im2col, relu, pooling forward, dropout masks, scale) are compared
 * exactly. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/ops.h"
#include "core/rng.h"
#include "gen.h"
#include "testing.h"

/* ---- inputs ------------------------------------------------------------------ */

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test_ops: out of memory (%zu bytes)\n", bytes);
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

#define EXPECT_CMP(c, ...)                                                                    \
    do {                                                                                      \
        char what_[160];                                                                      \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                           \
        EXPECT((c).bad == 0, "%s: %zu of %zu wrong, first [%zu] got %.9g want %.9g tol %.3g", \
               what_, (c).bad, (c).n, (c).first, (c).got, (c).want, (c).tol);                 \
    } while (0)

/* ---- memory --------------------------------------------------------------------- */

static void test_memory(void)
{
    const Ops *o = &ops_cpu;
    static const size_t counts[] = {1, 3, 16, 1000, 4097};
    Gen g = {1};
    for (size_t t = 0; t < sizeof counts / sizeof counts[0]; t++) {
        size_t n = counts[t], bytes = n * sizeof(float);
        float *src = new_f(n), *back = new_f(n);
        fill_normal(&g, src, n, 1.0f);
        float *a = o->alloc(bytes), *b = o->alloc(bytes);
        EXPECT(a && b, "alloc(%zu) failed", bytes);
        if (!a || !b) continue;
        EXPECT((uintptr_t)a % 64 == 0 && (uintptr_t)b % 64 == 0, "alloc(%zu) not 64-byte aligned",
               bytes);
        o->to_device(a, src, bytes);
        o->copy(b, a, bytes);
        o->sync();
        o->to_host(back, b, bytes);
        EXPECT(memcmp(src, back, bytes) == 0, "to_device/copy/to_host changed %zu bytes", bytes);
        o->zero(b, n);
        o->to_host(back, b, bytes);
        size_t nonzero = 0;
        for (size_t i = 0; i < n; i++) nonzero += back[i] != 0.0f;
        EXPECT(nonzero == 0, "zero(%zu) left %zu non-zero", n, nonzero);
        o->free(a);
        o->free(b);
        free(src);
        free(back);
    }
    EXPECT(o->name && strcmp(o->name, "cpu") == 0, "table name is %s", o->name ? o->name : "NULL");
}

/* ---- gemm ------------------------------------------------------------------------ */

/* op(A)[i][l] of a row-major A stored with row stride ld. */
static double elem(const float *a, size_t ld, int trans, size_t i, size_t l)
{
    return trans ? a[l * ld + i] : a[i * ld + l];
}

static void check_gemm(Gen *g, int ta, int tb, size_t m, size_t n, size_t k, float alpha,
                       float beta)
{
    const Ops *o = &ops_cpu;
    /* Row strides larger than the rows, so a kernel that assumes packed
     * storage reads the wrong elements. */
    size_t a_rows = ta ? k : m, a_cols = ta ? m : k, lda = a_cols + 3;
    size_t b_rows = tb ? n : k, b_cols = tb ? k : n, ldb = b_cols + 5;
    size_t ldc = n + 2;
    float *a = new_f(a_rows * lda + 1), *b = new_f(b_rows * ldb + 1), *c = new_f(m * ldc + 1);
    float *c0 = new_f(m * ldc + 1);
    fill_normal(g, a, a_rows * lda + 1, 1.0f);
    fill_normal(g, b, b_rows * ldb + 1, 1.0f);
    fill_normal(g, c, m * ldc + 1, 1.0f);
    /* beta = 0 must not read C: NaN there must not reach the result. */
    if (beta == 0.0f) fill_value(c, m * ldc, NAN);
    /* The gap columns between rows of C must stay as they are. */
    for (size_t i = 0; i < m; i++) c[i * ldc + n] = c[i * ldc + n + 1] = 1234.5f;
    memcpy(c0, c, (m * ldc + 1) * sizeof(float));

    o->gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);

    Cmp cm = {0}, gap = {0};
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < n; j++) {
            double acc = 0.0, mag = 0.0;
            for (size_t l = 0; l < k; l++) {
                double p = elem(a, lda, ta, i, l) * elem(b, ldb, tb, l, j);
                acc += p;
                mag += fabs(p);
            }
            double cin = beta == 0.0f ? 0.0 : (double)c0[i * ldc + j];
            double want = (double)alpha * acc + (double)beta * cin;
            /* A float dot product of length k errs by at most k u sum|a b|;
             * alpha and beta add two roundings: (k + 2) FLT_EPSILON covers
             * it with a factor-2 margin, FMA or not, in any summation order. */
            double tol = (double)(k + 2) * FLT_EPSILON *
                         (fabs(alpha) * mag + fabs((double)beta * cin));
            cmp_add(&cm, c[i * ldc + j], want, tol);
        }
        cmp_add(&gap, c[i * ldc + n], 1234.5, 0.0);
        cmp_add(&gap, c[i * ldc + n + 1], 1234.5, 0.0);
    }
    cmp_add(&gap, c[m * ldc], c0[m * ldc], 0.0);
    EXPECT_CMP(cm, "gemm ta=%d tb=%d m=%zu n=%zu k=%zu alpha=%g beta=%g", ta, tb, m, n, k,
               (double)alpha, (double)beta);
    EXPECT_CMP(gap, "gemm wrote outside C: ta=%d tb=%d m=%zu n=%zu k=%zu", ta, tb, m, n, k);
    free(a);
    free(b);
    free(c);
    free(c0);
}

static void test_gemm(void)
{
    static const size_t shapes[][3] = {{1, 1, 1},   {1, 7, 3},    {3, 7, 13},   {13, 1, 7},
                                       {7, 13, 1},  {16, 16, 16}, {33, 65, 17}, {64, 10, 100},
                                       {67, 129, 300}};
    static const float ab[][2] = {{1.0f, 0.0f}, {0.75f, 1.0f}, {-1.25f, 0.5f}};
    Gen g = {2};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (size_t q = 0; q < sizeof ab / sizeof ab[0]; q++)
                    check_gemm(&g, ta, tb, shapes[s][0], shapes[s][1], shapes[s][2], ab[q][0],
                               ab[q][1]);

    /* k = 0: nothing to multiply, C = beta C (exactly: one multiply or none). */
    const Ops *o = &ops_cpu;
    float c[6] = {1, 2, 3, 4, 5, 6}, dummy = 0.0f;
    o->gemm(0, 0, 2, 3, 0, 1.0f, &dummy, 0, &dummy, 3, 0.5f, c, 3);
    EXPECT(c[0] == 0.5f && c[5] == 3.0f, "gemm k=0 beta=0.5 gave %g %g", (double)c[0],
           (double)c[5]);
    fill_value(c, 6, NAN);
    o->gemm(1, 1, 2, 3, 0, 1.0f, &dummy, 0, &dummy, 0, 0.0f, c, 3);
    EXPECT(c[0] == 0.0f && c[5] == 0.0f, "gemm k=0 beta=0 over NaN gave %g %g", (double)c[0],
           (double)c[5]);
    /* m = 0 or n = 0: no element to touch. */
    o->gemm(0, 0, 0, 3, 4, 1.0f, NULL, 4, NULL, 3, 0.0f, NULL, 3);
    o->gemm(0, 0, 3, 0, 4, 1.0f, NULL, 4, NULL, 1, 0.0f, NULL, 1);
}

/* ---- bias -------------------------------------------------------------------------- */

static void test_bias(void)
{
    const Ops *o = &ops_cpu;
    static const size_t rows_[] = {1, 3, 64}, cols_[] = {1, 7, 13, 100};
    Gen g = {3};
    for (size_t ri = 0; ri < 3; ri++) {
        for (size_t ci = 0; ci < 4; ci++) {
            size_t rows = rows_[ri], cols = cols_[ci];
            float *y = new_f(rows * cols), *y0 = new_f(rows * cols), *b = new_f(cols);
            float *db = new_f(cols), *db0 = new_f(cols);
            fill_normal(&g, y, rows * cols, 1.0f);
            fill_normal(&g, b, cols, 1.0f);
            fill_normal(&g, db, cols, 1.0f);
            memcpy(y0, y, rows * cols * sizeof(float));
            memcpy(db0, db, cols * sizeof(float));

            o->add_bias_rows(y, b, rows, cols);
            Cmp c = {0};
            /* One float addition: one rounding, at most u |y0 + b|. */
            for (size_t r = 0; r < rows; r++)
                for (size_t j = 0; j < cols; j++) {
                    double want = (double)y0[r * cols + j] + b[j];
                    cmp_add(&c, y[r * cols + j], want, FLT_EPSILON * fabs(want));
                }
            EXPECT_CMP(c, "add_bias_rows rows=%zu cols=%zu", rows, cols);

            /* dy = y0; db accumulates onto its old value. */
            o->bias_grad_rows(db, y0, rows, cols);
            Cmp d = {0};
            for (size_t j = 0; j < cols; j++) {
                double want = db0[j], mag = fabs(db0[j]);
                for (size_t r = 0; r < rows; r++) {
                    want += y0[r * cols + j];
                    mag += fabs(y0[r * cols + j]);
                }
                /* A float sum of rows + 1 terms: at most (rows + 1) u sum|terms|. */
                cmp_add(&d, db[j], want, (double)(rows + 1) * FLT_EPSILON * mag);
            }
            EXPECT_CMP(d, "bias_grad_rows rows=%zu cols=%zu", rows, cols);
            free(y);
            free(y0);
            free(b);
            free(db);
            free(db0);
        }
    }

    static const size_t ns[] = {1, 3}, cs[] = {1, 5, 32}, hws[] = {1, 7, 196};
    for (size_t a = 0; a < 2; a++)
        for (size_t bi = 0; bi < 3; bi++)
            for (size_t h = 0; h < 3; h++) {
                size_t n = ns[a], c = cs[bi], hw = hws[h], len = n * c * hw;
                float *y = new_f(len), *y0 = new_f(len), *bias = new_f(c);
                float *db = new_f(c), *db0 = new_f(c);
                fill_normal(&g, y, len, 1.0f);
                fill_normal(&g, bias, c, 1.0f);
                fill_normal(&g, db, c, 1.0f);
                memcpy(y0, y, len * sizeof(float));
                memcpy(db0, db, c * sizeof(float));

                o->add_bias_channels(y, bias, n, c, hw);
                Cmp e = {0};
                for (size_t s = 0; s < n; s++)
                    for (size_t ch = 0; ch < c; ch++)
                        for (size_t i = 0; i < hw; i++) {
                            size_t at = (s * c + ch) * hw + i;
                            double want = (double)y0[at] + bias[ch];
                            cmp_add(&e, y[at], want, FLT_EPSILON * fabs(want));
                        }
                EXPECT_CMP(e, "add_bias_channels n=%zu c=%zu hw=%zu", n, c, hw);

                o->bias_grad_channels(db, y0, n, c, hw);
                Cmp d = {0};
                for (size_t ch = 0; ch < c; ch++) {
                    double want = db0[ch], mag = fabs(db0[ch]);
                    for (size_t s = 0; s < n; s++)
                        for (size_t i = 0; i < hw; i++) {
                            want += y0[(s * c + ch) * hw + i];
                            mag += fabs(y0[(s * c + ch) * hw + i]);
                        }
                    /* n * hw + 1 terms summed in float in some order. */
                    cmp_add(&d, db[ch], want, (double)(n * hw + 1) * FLT_EPSILON * mag);
                }
                EXPECT_CMP(d, "bias_grad_channels n=%zu c=%zu hw=%zu", n, c, hw);
                free(y);
                free(y0);
                free(bias);
                free(db);
                free(db0);
            }
}

/* ---- im2col / col2im ------------------------------------------------------------------ */

static Window make_window(int c, int h, int w, int kh, int kw, int stride, int pad)
{
    Window g = {.c = c, .h = h, .w = w, .kh = kh, .kw = kw, .stride = stride, .pad = pad};
    g.oh = window_out(h, kh, stride, pad);
    g.ow = window_out(w, kw, stride, pad);
    return g;
}

static size_t col_rows(const Window *g)
{
    return (size_t)g->c * (size_t)g->kh * (size_t)g->kw;
}

static size_t col_cols(const Window *g)
{
    return (size_t)g->oh * (size_t)g->ow;
}

static size_t in_size(const Window *g)
{
    return (size_t)g->c * (size_t)g->h * (size_t)g->w;
}

/* Input index that col entry (row, col) reads, or -1 for padding: the
 * definition of im2col, written with explicit bounds checks. */
static long col_source(const Window *g, size_t row, size_t col)
{
    int kj = (int)(row % (size_t)g->kw), ki = (int)(row / (size_t)g->kw % (size_t)g->kh);
    int ci = (int)(row / ((size_t)g->kw * (size_t)g->kh));
    int ox = (int)(col % (size_t)g->ow), oy = (int)(col / (size_t)g->ow);
    int iy = oy * g->stride - g->pad + ki, ix = ox * g->stride - g->pad + kj;
    if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w) return -1;
    return ((long)ci * g->h + iy) * g->w + ix;
}

static void check_im2col(Gen *gen, const Window *g)
{
    const Ops *o = &ops_cpu;
    size_t rows = col_rows(g), cols = col_cols(g), nin = in_size(g), ncol = rows * cols;
    const size_t guard = 16;
    float *x = new_f(nin), *col = new_f(ncol + guard), *c = new_f(ncol);
    float *dx = new_f(nin), *dx0 = new_f(nin), *dz = new_f(nin);
    double *ref = new_d(nin), *mag = new_d(nin);
    fill_normal(gen, x, nin, 1.0f);
    fill_normal(gen, c, ncol, 1.0f);
    /* NaN where im2col must write (so a skipped zero shows), a guard value
     * after it (so a write past the end shows). */
    fill_value(col, ncol, NAN);
    fill_value(col + ncol, guard, -777.0f);

    o->im2col(g, x, col);
    Cmp e = {0};
    for (size_t r = 0; r < rows; r++)
        for (size_t q = 0; q < cols; q++) {
            long src = col_source(g, r, q);
            cmp_add(&e, col[r * cols + q], src < 0 ? 0.0 : (double)x[src], 0.0);
        }
    for (size_t i = 0; i < guard; i++) cmp_add(&e, col[ncol + i], -777.0, 0.0);
    EXPECT_CMP(e, "im2col c=%d h=%d w=%d k=%dx%d s=%d p=%d", g->c, g->h, g->w, g->kh, g->kw,
               g->stride, g->pad);

    /* col2im accumulates onto dx0, checked against a direct scatter. */
    fill_normal(gen, dx0, nin, 1.0f);
    memcpy(dx, dx0, nin * sizeof(float));
    o->col2im(g, c, dx);
    for (size_t i = 0; i < nin; i++) ref[i] = dx0[i], mag[i] = fabs(dx0[i]);
    for (size_t r = 0; r < rows; r++)
        for (size_t q = 0; q < cols; q++) {
            long src = col_source(g, r, q);
            if (src >= 0) ref[src] += c[r * cols + q], mag[src] += fabs(c[r * cols + q]);
        }
    Cmp b = {0};
    /* Each pixel sums at most kh kw col entries plus its old value. */
    double terms = (double)(g->kh * g->kw + 1);
    for (size_t i = 0; i < nin; i++) cmp_add(&b, dx[i], ref[i], terms * FLT_EPSILON * mag[i]);
    EXPECT_CMP(b, "col2im c=%d h=%d w=%d k=%dx%d s=%d p=%d", g->c, g->h, g->w, g->kh, g->kw,
               g->stride, g->pad);

    /* Adjoint: <im2col(x), c> == <x, col2im(c)>, both sides in double. The
     * left side is exact up to double rounding; the right side carries the
     * float sums of col2im, each at most kh kw u times its magnitude, so the
     * gap is at most kh kw u <|im2col(x)|, |c|>. */
    memset(dz, 0, nin * sizeof(float));
    o->col2im(g, c, dz);
    double lhs = 0.0, rhs = 0.0, absdot = 0.0;
    for (size_t i = 0; i < ncol; i++) {
        lhs += (double)col[i] * c[i];
        absdot += fabs((double)col[i] * c[i]);
    }
    for (size_t i = 0; i < nin; i++) rhs += (double)x[i] * dz[i];
    EXPECT_NEAR(rhs, lhs, terms * FLT_EPSILON * absdot + 1e-12, 0.0, "col2im adjoint of im2col");
    free(x);
    free(col);
    free(c);
    free(dx);
    free(dx0);
    free(dz);
    free(ref);
    free(mag);
}

/* A convolution layer as the layers build it, forward (gemm of the weights
 * with im2col) and backward to the input (col2im of W^T dy), against the
 * direct convolution loops in double. */
static void check_conv(Gen *gen, const Window *g, int out_c)
{
    const Ops *o = &ops_cpu;
    size_t rows = col_rows(g), cols = col_cols(g), nin = in_size(g);
    size_t nout = (size_t)out_c * cols;
    float *x = new_f(nin), *wt = new_f((size_t)out_c * rows), *col = new_f(rows * cols);
    float *y = new_f(nout), *dy = new_f(nout), *dcol = new_f(rows * cols), *dx = new_f(nin);
    double *dref = new_d(nin), *dmag = new_d(nin);
    fill_normal(gen, x, nin, 1.0f);
    fill_normal(gen, wt, (size_t)out_c * rows, 0.2f);
    fill_normal(gen, dy, nout, 1.0f);

    o->im2col(g, x, col);
    o->gemm(0, 0, (size_t)out_c, cols, rows, 1.0f, wt, rows, col, cols, 0.0f, y, cols);
    o->gemm(1, 0, rows, cols, (size_t)out_c, 1.0f, wt, rows, dy, cols, 0.0f, dcol, cols);
    memset(dx, 0, nin * sizeof(float));
    o->col2im(g, dcol, dx);

    for (size_t i = 0; i < nin; i++) dref[i] = 0.0, dmag[i] = 0.0;
    Cmp f = {0};
    for (int oc = 0; oc < out_c; oc++)
        for (int oy = 0; oy < g->oh; oy++)
            for (int ox = 0; ox < g->ow; ox++) {
                double acc = 0.0, mag = 0.0;
                double gy = dy[((size_t)oc * g->oh + oy) * g->ow + ox];
                for (int ci = 0; ci < g->c; ci++)
                    for (int ki = 0; ki < g->kh; ki++)
                        for (int kj = 0; kj < g->kw; kj++) {
                            int iy = oy * g->stride - g->pad + ki;
                            int ix = ox * g->stride - g->pad + kj;
                            if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w) continue;
                            double wv = wt[(((size_t)oc * g->c + ci) * g->kh + ki) * g->kw + kj];
                            size_t xi = ((size_t)ci * g->h + iy) * g->w + ix;
                            acc += wv * x[xi];
                            mag += fabs(wv * x[xi]);
                            dref[xi] += wv * gy;
                            dmag[xi] += fabs(wv * gy);
                        }
                /* A dot product of length c kh kw. */
                cmp_add(&f, y[((size_t)oc * g->oh + oy) * g->ow + ox], acc,
                        (double)(rows + 2) * FLT_EPSILON * mag);
            }
    EXPECT_CMP(f, "conv forward c=%d h=%d k=%d s=%d p=%d out=%d", g->c, g->h, g->kh, g->stride,
               g->pad, out_c);
    Cmp b = {0};
    /* dcol entries are dot products of length out_c, then col2im sums at
     * most kh kw of them: (out_c + kh kw + 2) u of the magnitude. */
    double terms = (double)(out_c + g->kh * g->kw + 2);
    for (size_t i = 0; i < nin; i++) cmp_add(&b, dx[i], dref[i], terms * FLT_EPSILON * dmag[i]);
    EXPECT_CMP(b, "conv backward to input c=%d h=%d k=%d s=%d p=%d out=%d", g->c, g->h, g->kh,
               g->stride, g->pad, out_c);
    free(x);
    free(wt);
    free(col);
    free(y);
    free(dy);
    free(dcol);
    free(dx);
    free(dref);
    free(dmag);
}

static void test_im2col(void)
{
    static const int hw[][2] = {{1, 1}, {3, 3}, {7, 7}, {13, 13}, {5, 9}, {14, 14}};
    static const int ks[][2] = {{1, 1}, {2, 2}, {3, 3}, {5, 5}, {3, 2}, {1, 4}};
    Gen gen = {4};
    size_t checked = 0;
    for (int c = 1; c <= 3; c += 2)
        for (size_t a = 0; a < sizeof hw / sizeof hw[0]; a++)
            for (size_t b = 0; b < sizeof ks / sizeof ks[0]; b++)
                for (int s = 1; s <= 3; s++)
                    for (int p = 0; p <= 2; p++) {
                        Window g = make_window(c, hw[a][0], hw[a][1], ks[b][0], ks[b][1], s, p);
                        if (g.oh <= 0 || g.ow <= 0) continue;
                        check_im2col(&gen, &g);
                        checked++;
                    }
    EXPECT(checked > 300, "only %zu im2col geometries checked", checked);

    /* The CNN's two convolutions, and odd ones with stride and padding. */
    Window conv1 = make_window(1, 28, 28, 5, 5, 1, 2);
    Window conv2 = make_window(32, 14, 14, 5, 5, 1, 2);
    Window odd1 = make_window(3, 7, 9, 3, 3, 2, 1);
    Window odd2 = make_window(2, 13, 11, 5, 3, 3, 2);
    check_conv(&gen, &conv1, 32);
    check_conv(&gen, &conv2, 64);
    check_conv(&gen, &odd1, 5);
    check_conv(&gen, &odd2, 7);
}

/* ---- relu ---------------------------------------------------------------------------- */

static void test_relu(void)
{
    const Ops *o = &ops_cpu;
    const size_t n = 1031;
    Gen g = {5};
    float *x = new_f(n), *y = new_f(n), *dy = new_f(n), *dx = new_f(n);
    fill_normal(&g, x, n, 1.0f);
    fill_normal(&g, dy, n, 1.0f);
    x[0] = 0.0f, x[1] = -0.0f, x[2] = FLT_MIN, x[3] = -FLT_MIN;
    o->relu_fwd(x, y, n);
    Cmp f = {0}, b = {0}, ip = {0};
    for (size_t i = 0; i < n; i++) cmp_add(&f, y[i], x[i] > 0.0f ? x[i] : 0.0, 0.0);
    EXPECT_CMP(f, "relu_fwd");
    o->relu_bwd(y, dy, dx, n);
    for (size_t i = 0; i < n; i++) cmp_add(&b, dx[i], y[i] > 0.0f ? dy[i] : 0.0, 0.0);
    EXPECT_CMP(b, "relu_bwd");
    /* In place: dx is dy. */
    memcpy(dx, dy, n * sizeof(float));
    o->relu_bwd(y, dx, dx, n);
    for (size_t i = 0; i < n; i++) cmp_add(&ip, dx[i], y[i] > 0.0f ? dy[i] : 0.0, 0.0);
    EXPECT_CMP(ip, "relu_bwd in place");
    free(x);
    free(y);
    free(dy);
    free(dx);
}

/* ---- max pooling ---------------------------------------------------------------------- */

static void check_maxpool(Gen *gen, const Window *g, size_t n, int ties)
{
    const Ops *o = &ops_cpu;
    size_t in_s = in_size(g), out_s = (size_t)g->c * col_cols(g);
    float *x = new_f(n * in_s), *y = new_f(n * out_s), *dy = new_f(n * out_s);
    float *dx = new_f(n * in_s);
    int32_t *arg = xmalloc(n * out_s * sizeof(int32_t));
    int32_t *rarg = xmalloc(n * out_s * sizeof(int32_t));
    double *dref = new_d(n * in_s), *dmag = new_d(n * in_s);
    if (ties)
        fill_ints(gen, x, n * in_s);
    else
        fill_normal(gen, x, n * in_s, 1.0f);
    fill_normal(gen, dy, n * out_s, 1.0f);

    o->maxpool_fwd(g, n, x, y, arg);
    Cmp fy = {0}, fa = {0};
    for (size_t s = 0; s < n; s++)
        for (int ci = 0; ci < g->c; ci++)
            for (int oy = 0; oy < g->oh; oy++)
                for (int ox = 0; ox < g->ow; ox++) {
                    /* Scan the window in row order; padding never wins and
                     * strict > keeps the first of equal values. */
                    double best = -INFINITY;
                    long at = -1;
                    for (int ki = 0; ki < g->kh; ki++)
                        for (int kj = 0; kj < g->kw; kj++) {
                            int iy = oy * g->stride - g->pad + ki;
                            int ix = ox * g->stride - g->pad + kj;
                            if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w) continue;
                            long idx = ((long)ci * g->h + iy) * g->w + ix;
                            if (x[s * in_s + (size_t)idx] > best)
                                best = x[s * in_s + (size_t)idx], at = idx;
                        }
                    size_t oi = s * out_s + ((size_t)ci * g->oh + oy) * g->ow + ox;
                    rarg[oi] = (int32_t)at;
                    cmp_add(&fy, y[oi], best, 0.0);
                    cmp_add(&fa, arg[oi], (double)at, 0.0);
                }
    EXPECT_CMP(fy, "maxpool_fwd values c=%d h=%d w=%d k=%d s=%d p=%d ties=%d", g->c, g->h, g->w,
               g->kh, g->stride, g->pad, ties);
    EXPECT_CMP(fa, "maxpool_fwd argmax c=%d h=%d w=%d k=%d s=%d p=%d ties=%d", g->c, g->h, g->w,
               g->kh, g->stride, g->pad, ties);

    /* Backward must clear dx itself: start from NaN. */
    fill_value(dx, n * in_s, NAN);
    o->maxpool_bwd(g, n, dy, arg, dx);
    for (size_t i = 0; i < n * in_s; i++) dref[i] = 0.0, dmag[i] = 0.0;
    for (size_t s = 0; s < n; s++)
        for (size_t i = 0; i < out_s; i++) {
            size_t to = s * in_s + (size_t)rarg[s * out_s + i];
            dref[to] += dy[s * out_s + i];
            dmag[to] += fabs(dy[s * out_s + i]);
        }
    Cmp b = {0};
    /* An input is the argmax of at most ceil(kh/s) ceil(kw/s) <= kh kw
     * overlapping windows; an input that is no window's argmax has
     * magnitude 0, so its tolerance is 0 and its gradient must be exactly 0. */
    double terms = (double)(g->kh * g->kw);
    for (size_t i = 0; i < n * in_s; i++) cmp_add(&b, dx[i], dref[i], terms * FLT_EPSILON * dmag[i]);
    EXPECT_CMP(b, "maxpool_bwd c=%d h=%d w=%d k=%d s=%d p=%d ties=%d", g->c, g->h, g->w, g->kh,
               g->stride, g->pad, ties);
    free(x);
    free(y);
    free(dy);
    free(dx);
    free(arg);
    free(rarg);
    free(dref);
    free(dmag);
}

static void test_maxpool(void)
{
    /* c, h, w, k, stride, pad */
    static const int geo[][6] = {
        {3, 28, 28, 2, 2, 0}, /* the CNN's pools (2x2 fast path) */
        {4, 14, 14, 2, 2, 0},
        {2, 7, 7, 2, 2, 0},   /* odd size: last row and column dropped */
        {2, 13, 13, 3, 2, 1}, /* overlapping windows with padding */
        {1, 7, 9, 3, 2, 0},   /* overlapping, no padding */
        {2, 6, 6, 3, 1, 1},   /* stride 1: up to 9 windows share an input */
        {1, 13, 13, 2, 3, 0}, /* gaps between windows */
        {1, 5, 5, 3, 3, 1},
        {2, 1, 1, 1, 1, 0},
        {1, 3, 7, 2, 2, 1},   /* 2x2 stride 2 with padding: not the fast path */
    };
    Gen gen = {6};
    for (size_t i = 0; i < sizeof geo / sizeof geo[0]; i++) {
        const int *q = geo[i];
        Window g = make_window(q[0], q[1], q[2], q[3], q[3], q[4], q[5]);
        for (int ties = 0; ties < 2; ties++) check_maxpool(&gen, &g, 3, ties);
    }
}

/* ---- dropout ---------------------------------------------------------------------------- */

static void test_dropout(void)
{
    const Ops *o = &ops_cpu;
    const size_t n = 100003;
    const uint64_t seed = 1234, stream = rng_stream(RNG_STREAM_DROPOUT, 3), offset = 777;
    static const float ps[] = {0.0f, 0.1f, 0.5f, 0.9f};
    Gen g = {7};
    float *x = new_f(n), *y = new_f(n), *m = new_f(n), *m2 = new_f(n), *y2 = new_f(n);
    float *dy = new_f(n), *dx = new_f(n);
    fill_normal(&g, x, n, 1.0f);
    fill_normal(&g, dy, n, 1.0f);
    for (size_t t = 0; t < sizeof ps / sizeof ps[0]; t++) {
        const float p = ps[t];
        const float keep = 1.0f / (1.0f - p);
        o->dropout_fwd(x, y, m, n, p, seed, stream, offset);
        size_t kept = 0, bad_value = 0, bad_rule = 0, bad_y = 0;
        for (size_t i = 0; i < n; i++) {
            bad_value += !(m[i] == 0.0f || m[i] == keep);
            /* The keep rule of core/ops.h, which a GPU backend reproduces. */
            int want_keep = rng_uniform(seed, stream, offset + i) >= p;
            bad_rule += want_keep != (m[i] != 0.0f);
            bad_y += y[i] != x[i] * m[i];
            kept += m[i] != 0.0f;
        }
        EXPECT(bad_value == 0, "dropout p=%g: %zu mask values not 0 or 1/(1-p)", (double)p,
               bad_value);
        EXPECT(bad_rule == 0, "dropout p=%g: %zu keep decisions differ from rng_uniform >= p",
               (double)p, bad_rule);
        EXPECT(bad_y == 0, "dropout p=%g: %zu outputs differ from x * mask", (double)p, bad_y);
        /* kept ~ Binomial(n, 1 - p): within 5 standard deviations (plus one
         * for p = 0, where the deviation is 0). A fair mask misses this with
         * probability below 1e-6, and the seed is fixed anyway; keeping with
         * probability p instead of 1 - p misses it by far for p != 0.5. */
        double mean = (double)n * (1.0 - p), sd = sqrt((double)n * p * (1.0 - p));
        EXPECT(fabs((double)kept - mean) <= 5.0 * sd + 1.0,
               "dropout p=%g kept %zu of %zu, expected %.0f +- %.0f", (double)p, kept, n, mean,
               5.0 * sd);

        /* Same arguments, same mask. */
        o->dropout_fwd(x, y2, m2, n, p, seed, stream, offset);
        EXPECT(memcmp(m, m2, n * sizeof(float)) == 0 && memcmp(y, y2, n * sizeof(float)) == 0,
               "dropout p=%g: same seed gave a different mask", (double)p);
        /* The mask is a function of offset + i: shifting the offset by one
         * shifts the mask by one element. */
        o->dropout_fwd(x, y2, m2, n, p, seed, stream, offset + 1);
        size_t shifted_bad = 0, differ = 0;
        for (size_t i = 0; i + 1 < n; i++) shifted_bad += m2[i] != m[i + 1];
        for (size_t i = 0; i < n; i++) differ += m2[i] != m[i];
        EXPECT(shifted_bad == 0, "dropout p=%g: offset+1 is not the mask shifted by one (%zu)",
               (double)p, shifted_bad);
        if (p > 0.0f) {
            EXPECT(differ > 0, "dropout p=%g: a different offset gave the same mask", (double)p);
            o->dropout_fwd(x, y2, m2, n, p, seed + 1, stream, offset);
            differ = 0;
            for (size_t i = 0; i < n; i++) differ += m2[i] != m[i];
            EXPECT(differ > 0, "dropout p=%g: a different seed gave the same mask", (double)p);
        }

        o->dropout_bwd(dy, m, dx, n);
        size_t bad_dx = 0;
        for (size_t i = 0; i < n; i++) bad_dx += dx[i] != dy[i] * m[i];
        EXPECT(bad_dx == 0, "dropout_bwd p=%g: %zu elements differ from dy * mask", (double)p,
               bad_dx);
    }
    free(x);
    free(y);
    free(m);
    free(m2);
    free(y2);
    free(dy);
    free(dx);
}

/* ---- softmax cross-entropy ------------------------------------------------------------- */

static void check_softmax(const float *logits, const int32_t *labels, size_t b, size_t k,
                          float scale, const char *what)
{
    const Ops *o = &ops_cpu;
    float *probs = new_f(b * k), *d = new_f(b * k);
    double loss = NAN;
    size_t correct = (size_t)-1;
    o->softmax_xent_fwd(logits, labels, b, k, probs, &loss, &correct);

    double want_loss = 0.0, loss_tol = 0.0;
    size_t want_correct = 0;
    Cmp pc = {0};
    for (size_t r = 0; r < b; r++) {
        const float *x = logits + r * k;
        double m = x[0];
        size_t best = 0;
        for (size_t j = 1; j < k; j++)
            if (x[j] > m) m = x[j], best = j;
        double sum = 0.0;
        for (size_t j = 0; j < k; j++) sum += exp((double)x[j] - m);
        double lse = m + log(sum);
        want_loss += lse - x[labels[r]];
        want_correct += best == (size_t)labels[r];
        /* The row sum is at least 1 and its float terms err by u (d + 2) at
         * distance d = max - x from the max, weighted by e^-d <= 1/(e d):
         * at most 3 u in the sum, hence 3 u in the log, doubled. The rest
         * of the row loss is double arithmetic, good to 1e-15 of its size. */
        loss_tol += 3.0 * FLT_EPSILON + 1e-15 * fabs(lse - x[labels[r]]);
        for (size_t j = 0; j < k; j++) {
            double dist = m - x[j];
            double want = exp((double)x[j] - lse);
            /* float(x - max) errs by u d, exp by u, the sum by 3 u, the
             * reciprocal and the product by u each: u (d + 7); FLT_MIN
             * absorbs probabilities below the float range. */
            cmp_add(&pc, probs[r * k + j], want, FLT_EPSILON * (dist + 8.0) * want + FLT_MIN);
        }
    }
    EXPECT_CMP(pc, "softmax_xent_fwd probs %s b=%zu k=%zu", what, b, k);
    EXPECT(isfinite(loss), "softmax_xent_fwd %s: loss %g not finite", what, loss);
    EXPECT_NEAR(loss, want_loss, loss_tol, 0.0, what);
    EXPECT(correct == want_correct, "softmax_xent_fwd %s: correct %zu want %zu", what, correct,
           want_correct);

    o->softmax_xent_bwd(probs, labels, b, k, scale, d);
    Cmp dc = {0};
    for (size_t r = 0; r < b; r++)
        for (size_t j = 0; j < k; j++) {
            double p = probs[r * k + j], want = (double)scale * (p - ((size_t)labels[r] == j));
            /* One subtraction and one product: two roundings. */
            cmp_add(&dc, d[r * k + j], want, FLT_EPSILON * fabs(scale) * (p + 1.0));
        }
    EXPECT_CMP(dc, "softmax_xent_bwd %s b=%zu k=%zu", what, b, k);
    free(probs);
    free(d);
}

static void test_softmax(void)
{
    static const size_t shapes[][2] = {{1, 1}, {1, 2}, {3, 10}, {64, 10}, {7, 13}, {5, 1000}};
    Gen g = {8};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        size_t b = shapes[s][0], k = shapes[s][1];
        float *x = new_f(b * k);
        int32_t *labels = xmalloc(b * sizeof(int32_t));
        fill_normal(&g, x, b * k, 3.0f);
        for (size_t r = 0; r < b; r++) labels[r] = (int32_t)(gen_u64(&g) % k);
        check_softmax(x, labels, b, k, 1.0f / (float)b, "random logits");
        free(x);
        free(labels);
    }

    /* Logits of magnitude 1e4: exp of them overflows float, exp(-2e4) is 0;
     * the loss of a label at -1e4 when the max is 1e4 is 2e4, finite. */
    enum { B = 6, K = 10 };
    float x[B * K];
    int32_t labels[B] = {3, 1, 0, 5, 2, 9};
    Gen h = {9};
    for (size_t j = 0; j < K; j++) {
        x[0 * K + j] = 1e4f + (float)j * 0.5f;          /* all huge, close */
        x[1 * K + j] = j % 2 ? -1e4f : 1e4f;            /* label at -1e4 */
        x[2 * K + j] = 7.0f;                            /* all equal: tie, first wins */
        x[3 * K + j] = 7.0f;                            /* tie, label not first */
        x[4 * K + j] = -1e4f + gen_normal(&h);          /* all hugely negative */
        x[5 * K + j] = j == 9 ? 1e4f : -1e4f;           /* one-hot extreme, label right */
    }
    check_softmax(x, labels, B, K, 0.5f, "huge logits");
}

/* ---- sgd ---------------------------------------------------------------------------------- */

static void test_sgd(void)
{
    const Ops *o = &ops_cpu;
    const size_t n = 1003;
    Gen g = {10};
    float *p = new_f(n), *gr = new_f(n), *v = new_f(n), *p0 = new_f(n), *v0 = new_f(n);
    for (int mi = 0; mi < 2; mi++)
        for (int nest = 0; nest < 2; nest++)
            for (int wi = 0; wi < 2; wi++) {
                if (mi == 0 && nest) continue; /* nesterov means nothing without momentum */
                /* lr and wd large enough that dropping a term moves p by far
                 * more than the tolerance (lr wd = 5e-3 of p). */
                SgdStep st = {.lr = 0.1f, .momentum = mi ? 0.9f : 0.0f,
                              .weight_decay = wi ? 0.05f : 0.0f, .nesterov = nest};
                const double lr = st.lr, mu = st.momentum, wd = st.weight_decay;
                fill_normal(&g, p, n, 1.0f);
                fill_normal(&g, v, n, 1.0f);
                /* Three steps, each checked against the formula applied to
                 * the float state before it. */
                for (int step = 0; step < 3; step++) {
                    fill_normal(&g, gr, n, 1.0f);
                    memcpy(p0, p, n * sizeof(float));
                    memcpy(v0, v, n * sizeof(float));
                    /* mom is unused without momentum: NULL proves it. */
                    o->sgd_step(p, gr, mi ? v : NULL, n, &st);
                    Cmp cp = {0}, cv = {0};
                    for (size_t i = 0; i < n; i++) {
                        double pi = p0[i], gi = gr[i], vi = v0[i], u, vn = 0.0, tol_v = 0.0;
                        if (mi) {
                            vn = mu * vi + gi;
                            /* A product and a sum, each rounding by at
                             * most u (mu |v| + |g|): 2 u, doubled. */
                            tol_v = 2.0 * FLT_EPSILON * (mu * fabs(vi) + fabs(gi));
                            cmp_add(&cv, v[i], vn, tol_v);
                            u = nest ? gi + mu * vn : vn;
                        } else {
                            u = gi;
                        }
                        double want = pi - lr * wd * pi - lr * u;
                        /* At most seven roundings, each at most u times
                         * one of |p|, |lr wd p|, |lr g|, |lr mu v|, |lr u|:
                         * 6 u over their sum covers them twice over; the
                         * momentum's own error enters through lr (1 + mu). */
                        double tol = 3.0 * FLT_EPSILON *
                                         (fabs(pi) + lr * wd * fabs(pi) +
                                          lr * (fabs(gi) + mu * fabs(vn) + fabs(u))) +
                                     lr * (1.0 + mu) * tol_v;
                        cmp_add(&cp, p[i], want, tol);
                    }
                    EXPECT_CMP(cp, "sgd params mu=%g nesterov=%d wd=%g step %d", mu, nest, wd, step);
                    if (mi) EXPECT_CMP(cv, "sgd momentum mu=%g nesterov=%d wd=%g step %d", mu, nest, wd, step);
                }
            }
    free(p);
    free(gr);
    free(v);
    free(p0);
    free(v0);
}

/* ---- scale ---------------------------------------------------------------------------------- */

static void test_scale(void)
{
    const Ops *o = &ops_cpu;
    const size_t n = 1029;
    const float a = -0.3f;
    Gen g = {11};
    float *x = new_f(n), *x0 = new_f(n);
    fill_normal(&g, x, n, 1.0f);
    memcpy(x0, x, n * sizeof(float));
    o->scale(x, n, a);
    Cmp c = {0};
    /* The product of two floats is exact in double, so rounding it to float
     * once is the float product: compared exactly. */
    for (size_t i = 0; i < n; i++) cmp_add(&c, x[i], (float)((double)x0[i] * a), 0.0);
    EXPECT_CMP(c, "scale");
    free(x);
    free(x0);
}

int main(void)
{
    ops_cpu_set_threads(1);
    test_memory();
    test_gemm();
    test_bias();
    test_im2col();
    test_relu();
    test_maxpool();
    test_dropout();
    test_softmax();
    test_sgd();
    test_scale();
    return test_finish("test_ops");
}
