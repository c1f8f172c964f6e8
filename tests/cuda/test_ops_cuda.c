/* Every op of the CUDA table against the CPU table (tested on its own
 * against a double-precision reference in tests/core/test_ops.c), on random
 * inputs from a fixed seed: odd shapes, the layer shapes of mlp and cnn,
 * stride and padding variants. Exits 77 (skipped) without a CUDA device.
 *
 * Tolerances. FLT_EPSILON is 2^-23, twice the unit roundoff u of a float
 * operation. Where both backends compute a sum in different orders, each is
 * within the worst-case rounding bound of test_ops.c of the exact result,
 * so they are within twice that bound of each other: the bounds below are
 * the test_ops bounds doubled, scaled by the sum of the magnitudes involved.
 * The ops that perform the same float operations in the same order on both
 * devices (see cuda/ops_cuda.cu) are compared EXACTLY: a difference there
 * is a bug, not rounding. */
#include <cuda_runtime_api.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/ops.h"
#include "core/rng.h"
#include "ops_cuda.h"
#include "gen.h"
#include "cuda_device.h"
#include "testing.h"

static const Ops *const CPU = &ops_cpu;
static const Ops *const GPU = &ops_cuda;

/* ---- inputs -------------------------------------------------------------------- */

static void fill_value(float *x, size_t n, float v)
{
    for (size_t i = 0; i < n; i++) x[i] = v;
}

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test_ops_cuda: out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

static float *new_f(size_t n)
{
    return xmalloc(n * sizeof(float));
}

/* ---- device buffers -------------------------------------------------------------- */

static void *dev_alloc(size_t bytes)
{
    void *d = GPU->alloc(bytes);
    if (!d) {
        fprintf(stderr, "test_ops_cuda: device allocation of %zu bytes failed\n", bytes);
        exit(1);
    }
    return d;
}

/* A device copy of n host floats. */
static float *up(const float *h, size_t n)
{
    float *d = dev_alloc(n * sizeof(float));
    GPU->to_device(d, h, n * sizeof(float));
    return d;
}

static int32_t *up_i32(const int32_t *h, size_t n)
{
    int32_t *d = dev_alloc(n * sizeof(int32_t));
    GPU->to_device(d, h, n * sizeof(int32_t));
    return d;
}

/* A host copy of n device floats. */
static float *down(const float *d, size_t n)
{
    float *h = new_f(n);
    GPU->to_host(h, d, n * sizeof(float));
    return h;
}

/* ---- comparison: count the bad elements, report the first ------------------------- */

typedef struct {
    size_t n, bad, first;
    double got, want, tol;
} Cmp;

static void cmp_add(Cmp *c, double got, double want, double tol)
{
    /* Equal values pass even when infinite; NaN fails. */
    if (!(got == want || fabs(got - want) <= tol)) {
        if (!c->bad) c->first = c->n, c->got = got, c->want = want, c->tol = tol;
        c->bad++;
    }
    c->n++;
}

/* Exact: the same bits (so +0 and -0 differ, and NaN equals NaN). */
static void cmp_bits(Cmp *c, float got, float want)
{
    if (memcmp(&got, &want, sizeof got) != 0) {
        if (!c->bad) c->first = c->n, c->got = got, c->want = want, c->tol = 0.0;
        c->bad++;
    }
    c->n++;
}

static void cmp_bits_n(Cmp *c, const float *got, const float *want, size_t n)
{
    for (size_t i = 0; i < n; i++) cmp_bits(c, got[i], want[i]);
}

#define EXPECT_CMP(c, ...)                                                                    \
    do {                                                                                      \
        char what_[200];                                                                      \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                           \
        EXPECT((c).bad == 0, "%s: %zu of %zu wrong, first [%zu] got %.9g want %.9g tol %.3g", \
               what_, (c).bad, (c).n, (c).first, (c).got, (c).want, (c).tol);                 \
    } while (0)

/* ---- memory ------------------------------------------------------------------------- */

static void test_memory(void)
{
    static const size_t counts[] = {1, 3, 16, 1000, 4097, (1u << 20) + 3};
    Gen g = {1};
    for (size_t t = 0; t < sizeof counts / sizeof counts[0]; t++) {
        size_t n = counts[t], bytes = n * sizeof(float);
        float *src = new_f(n), *back = new_f(n);
        fill_normal(&g, src, n, 1.0f);
        float *a = GPU->alloc(bytes), *b = GPU->alloc(bytes);
        EXPECT(a && b, "alloc(%zu) failed", bytes);
        if (!a || !b) continue;
        EXPECT((uintptr_t)a % 64 == 0 && (uintptr_t)b % 64 == 0, "alloc(%zu) not 64-byte aligned",
               bytes);
        GPU->to_device(a, src, bytes);
        GPU->copy(b, a, bytes);
        GPU->sync();
        GPU->to_host(back, b, bytes);
        EXPECT(memcmp(src, back, bytes) == 0, "to_device/copy/to_host changed %zu bytes", bytes);
        GPU->zero(b, n);
        GPU->to_host(back, b, bytes);
        size_t nonzero = 0;
        for (size_t i = 0; i < n; i++) nonzero += back[i] != 0.0f || signbit(back[i]);
        EXPECT(nonzero == 0, "zero(%zu) left %zu elements other than +0", n, nonzero);
        GPU->free(a);
        GPU->free(b);
        free(src);
        free(back);
    }
    GPU->free(NULL); /* like free(NULL): nothing */
    EXPECT(GPU->name && strcmp(GPU->name, "cuda") == 0, "table name is %s",
           GPU->name ? GPU->name : "NULL");
}

/* ---- gemm ------------------------------------------------------------------------------- */

static void check_gemm(Gen *g, int ta, int tb, size_t m, size_t n, size_t k, float alpha,
                       float beta)
{
    /* Row strides larger than the rows, so a wrong leading dimension in the
     * row-major -> column-major mapping reads the wrong elements. */
    size_t a_rows = ta ? k : m, a_cols = ta ? m : k, lda = a_cols + 3;
    size_t b_rows = tb ? n : k, b_cols = tb ? k : n, ldb = b_cols + 5;
    size_t ldc = n + 2;
    size_t na = a_rows * lda + 1, nb = b_rows * ldb + 1, nc = m * ldc + 1;
    float *a = new_f(na), *b = new_f(nb), *c = new_f(nc), *c0 = new_f(nc);
    float *aa = new_f(na), *ab = new_f(nb), *mag = new_f(nc);
    fill_normal(g, a, na, 1.0f);
    fill_normal(g, b, nb, 1.0f);
    fill_normal(g, c, nc, 1.0f);
    /* beta = 0 must not read C: NaN there must not reach the result. */
    if (beta == 0.0f) fill_value(c, m * ldc, NAN);
    /* The gap columns between rows of C must stay as they are. */
    for (size_t i = 0; i < m; i++) c[i * ldc + n] = c[i * ldc + n + 1] = 1234.5f;
    memcpy(c0, c, nc * sizeof(float));

    float *da = up(a, na), *db = up(b, nb), *dc = up(c, nc);
    GPU->gemm(ta, tb, m, n, k, alpha, da, lda, db, ldb, beta, dc, ldc);
    float *got = down(dc, nc);
    CPU->gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);

    /* mag[i][j] = sum_l |op(A)[i][l] op(B)[l][j]|, as a float gemm of the
     * absolute values: itself within a relative k u of the exact sum, which
     * the factor 1.01 below covers for every k here. */
    for (size_t i = 0; i < na; i++) aa[i] = fabsf(a[i]);
    for (size_t i = 0; i < nb; i++) ab[i] = fabsf(b[i]);
    CPU->gemm(ta, tb, m, n, k, 1.0f, aa, lda, ab, ldb, 0.0f, mag, ldc);

    Cmp cm = {0}, gap = {0};
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < n; j++) {
            double cin = beta == 0.0f ? 0.0 : fabs((double)beta * c0[i * ldc + j]);
            /* Each backend is within (k + 2) FLT_EPSILON (|alpha| mag +
             * |beta c|) of the exact value (test_ops.c): twice that apart. */
            double tol = 1.01 * 2.0 * (double)(k + 2) * FLT_EPSILON *
                         (fabs(alpha) * mag[i * ldc + j] + cin);
            cmp_add(&cm, got[i * ldc + j], c[i * ldc + j], tol);
        }
        cmp_bits(&gap, got[i * ldc + n], 1234.5f);
        cmp_bits(&gap, got[i * ldc + n + 1], 1234.5f);
    }
    cmp_bits(&gap, got[m * ldc], c0[m * ldc]);
    EXPECT_CMP(cm, "gemm ta=%d tb=%d m=%zu n=%zu k=%zu alpha=%g beta=%g", ta, tb, m, n, k,
               (double)alpha, (double)beta);
    EXPECT_CMP(gap, "gemm wrote outside C: ta=%d tb=%d m=%zu n=%zu k=%zu", ta, tb, m, n, k);
    GPU->free(da);
    GPU->free(db);
    GPU->free(dc);
    free(a);
    free(b);
    free(c);
    free(c0);
    free(aa);
    free(ab);
    free(mag);
    free(got);
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

    /* The calls the layers make (core/layers.c), batch 32 for linear
     * layers: ta, tb, m, n, k. beta = 1 as in the conv dW accumulation. */
    static const size_t layer[][5] = {
        {0, 1, 32, 1024, 784},  {1, 0, 1024, 784, 32},  {0, 0, 32, 784, 1024}, /* mlp fc1/fc2 */
        {0, 1, 32, 10, 1024},   {1, 0, 10, 1024, 32},   {0, 0, 32, 1024, 10},  /* fc:10 */
        {0, 0, 32, 784, 25},    {0, 1, 32, 25, 784},                           /* cnn conv1 */
        {0, 0, 64, 196, 800},   {0, 1, 64, 800, 196},   {1, 0, 800, 196, 64},  /* cnn conv2 */
        {0, 1, 32, 1024, 3136}, {1, 0, 1024, 3136, 32}, {0, 0, 32, 3136, 1024}, /* cnn fc */
    };
    for (size_t s = 0; s < sizeof layer / sizeof layer[0]; s++)
        for (int q = 0; q < 2; q++)
            check_gemm(&g, (int)layer[s][0], (int)layer[s][1], layer[s][2], layer[s][3],
                       layer[s][4], 1.0f, q ? 1.0f : 0.0f);

    /* k = 0: C = beta C (exactly: one multiply or none); beta = 0 over NaN
     * gives zeros. m = 0 or n = 0 touches nothing, even through NULL. */
    float c[6] = {1, 2, 3, 4, 5, 6}, back[6];
    float *dc = up(c, 6), *dummy = dev_alloc(sizeof(float));
    GPU->gemm(0, 0, 2, 3, 0, 1.0f, dummy, 0, dummy, 3, 0.5f, dc, 3);
    GPU->to_host(back, dc, sizeof back);
    EXPECT(back[0] == 0.5f && back[5] == 3.0f, "gemm k=0 beta=0.5 gave %g %g", (double)back[0],
           (double)back[5]);
    fill_value(c, 6, NAN);
    GPU->to_device(dc, c, sizeof c);
    GPU->gemm(1, 1, 2, 3, 0, 1.0f, dummy, 0, dummy, 0, 0.0f, dc, 3);
    GPU->to_host(back, dc, sizeof back);
    EXPECT(back[0] == 0.0f && back[5] == 0.0f, "gemm k=0 beta=0 over NaN gave %g %g",
           (double)back[0], (double)back[5]);
    GPU->gemm(0, 0, 0, 3, 4, 1.0f, NULL, 4, NULL, 3, 0.0f, NULL, 3);
    GPU->gemm(0, 0, 3, 0, 4, 1.0f, NULL, 4, NULL, 1, 0.0f, NULL, 1);
    GPU->sync();
    GPU->free(dc);
    GPU->free(dummy);
}

/* ---- bias ---------------------------------------------------------------------------------- */

static void test_bias(void)
{
    static const size_t rows_[] = {1, 3, 64, 256}, cols_[] = {1, 7, 13, 100, 1024};
    Gen g = {3};
    for (size_t ri = 0; ri < 4; ri++) {
        for (size_t ci = 0; ci < 5; ci++) {
            size_t rows = rows_[ri], cols = cols_[ci], len = rows * cols;
            float *y = new_f(len), *b = new_f(cols), *db = new_f(cols), *dy = new_f(len);
            float *mag = new_f(cols);
            fill_normal(&g, y, len, 1.0f);
            fill_normal(&g, b, cols, 1.0f);
            fill_normal(&g, db, cols, 1.0f);
            fill_normal(&g, dy, len, 1.0f);
            float *dy_ = up(y, len), *db_ = up(b, cols), *ddb = up(db, cols), *ddy = up(dy, len);

            /* One float addition per element on both: exact. */
            GPU->add_bias_rows(dy_, db_, rows, cols);
            CPU->add_bias_rows(y, b, rows, cols);
            float *got = down(dy_, len);
            Cmp c = {0};
            cmp_bits_n(&c, got, y, len);
            EXPECT_CMP(c, "add_bias_rows rows=%zu cols=%zu", rows, cols);
            free(got);

            /* A sum of rows + 1 terms in two orders: 2 (rows + 1) FLT_EPSILON
             * of the sum of magnitudes. */
            for (size_t j = 0; j < cols; j++) mag[j] = fabsf(db[j]);
            for (size_t r = 0; r < rows; r++)
                for (size_t j = 0; j < cols; j++) mag[j] += fabsf(dy[r * cols + j]);
            GPU->bias_grad_rows(ddb, ddy, rows, cols);
            CPU->bias_grad_rows(db, dy, rows, cols);
            got = down(ddb, cols);
            Cmp d = {0};
            for (size_t j = 0; j < cols; j++)
                cmp_add(&d, got[j], db[j], 2.0 * (double)(rows + 1) * FLT_EPSILON * mag[j]);
            EXPECT_CMP(d, "bias_grad_rows rows=%zu cols=%zu", rows, cols);
            free(got);
            GPU->free(dy_);
            GPU->free(db_);
            GPU->free(ddb);
            GPU->free(ddy);
            free(y);
            free(b);
            free(db);
            free(dy);
            free(mag);
        }
    }

    static const size_t ns[] = {1, 3, 16}, cs[] = {1, 5, 32, 64}, hws[] = {1, 7, 196, 784};
    for (size_t a = 0; a < 3; a++)
        for (size_t bi = 0; bi < 4; bi++)
            for (size_t h = 0; h < 4; h++) {
                size_t n = ns[a], c = cs[bi], hw = hws[h], len = n * c * hw;
                float *y = new_f(len), *bias = new_f(c), *db = new_f(c), *mag = new_f(c);
                fill_normal(&g, y, len, 1.0f);
                fill_normal(&g, bias, c, 1.0f);
                fill_normal(&g, db, c, 1.0f);
                float *dy_ = up(y, len), *dbias = up(bias, c), *ddb = up(db, c);

                /* The gradient first, with y as dy, before y changes. */
                for (size_t ch = 0; ch < c; ch++) mag[ch] = fabsf(db[ch]);
                for (size_t s = 0; s < n; s++)
                    for (size_t ch = 0; ch < c; ch++)
                        for (size_t i = 0; i < hw; i++) mag[ch] += fabsf(y[(s * c + ch) * hw + i]);
                GPU->bias_grad_channels(ddb, dy_, n, c, hw);
                CPU->bias_grad_channels(db, y, n, c, hw);
                float *got = down(ddb, c);
                Cmp d = {0};
                /* A sum of n hw + 1 terms in two orders. */
                for (size_t ch = 0; ch < c; ch++)
                    cmp_add(&d, got[ch], db[ch], 2.0 * (double)(n * hw + 1) * FLT_EPSILON * mag[ch]);
                EXPECT_CMP(d, "bias_grad_channels n=%zu c=%zu hw=%zu", n, c, hw);
                free(got);

                GPU->add_bias_channels(dy_, dbias, n, c, hw);
                CPU->add_bias_channels(y, bias, n, c, hw);
                got = down(dy_, len);
                Cmp e = {0};
                cmp_bits_n(&e, got, y, len); /* one addition: exact */
                EXPECT_CMP(e, "add_bias_channels n=%zu c=%zu hw=%zu", n, c, hw);
                free(got);
                GPU->free(dy_);
                GPU->free(dbias);
                GPU->free(ddb);
                free(y);
                free(bias);
                free(db);
                free(mag);
            }
}

/* ---- im2col / col2im ------------------------------------------------------------------------- */

static Window make_window(int c, int h, int w, int kh, int kw, int s, int p)
{
    Window g = {c, h, w, kh, kw, s, p, window_out(h, kh, s, p), window_out(w, kw, s, p)};
    return g;
}

static void check_im2col(Gen *gen, const Window *g)
{
    size_t nin = (size_t)g->c * g->h * g->w;
    size_t ncol = (size_t)g->c * g->kh * g->kw * g->oh * g->ow;
    const size_t guard = 16;
    float *x = new_f(nin), *col = new_f(ncol + guard), *c = new_f(ncol), *dx = new_f(nin);
    fill_normal(gen, x, nin, 1.0f);
    fill_normal(gen, c, ncol, 1.0f);
    fill_normal(gen, dx, nin, 1.0f);
    /* NaN where im2col must write, a guard value after the end. */
    fill_value(col, ncol, NAN);
    fill_value(col + ncol, guard, -777.0f);
    float *dx_ = up(x, nin), *dcol = up(col, ncol + guard), *dc = up(c, ncol), *ddx = up(dx, nin);

    /* Data movement: exact, padding included, nothing past the end. */
    GPU->im2col(g, dx_, dcol);
    CPU->im2col(g, x, col);
    float *got = down(dcol, ncol + guard);
    Cmp e = {0};
    cmp_bits_n(&e, got, col, ncol + guard);
    EXPECT_CMP(e, "im2col c=%d h=%d w=%d k=%dx%d s=%d p=%d", g->c, g->h, g->w, g->kh, g->kw,
               g->stride, g->pad);
    free(got);

    /* col2im accumulates onto dx. Both add each pixel's col entries onto
     * its old value one by one in (ki, kj) order: exact. */
    GPU->col2im(g, dc, ddx);
    CPU->col2im(g, c, dx);
    got = down(ddx, nin);
    Cmp b = {0};
    cmp_bits_n(&b, got, dx, nin);
    EXPECT_CMP(b, "col2im c=%d h=%d w=%d k=%dx%d s=%d p=%d", g->c, g->h, g->w, g->kh, g->kw,
               g->stride, g->pad);
    free(got);
    GPU->free(dx_);
    GPU->free(dcol);
    GPU->free(dc);
    GPU->free(ddx);
    free(x);
    free(col);
    free(c);
    free(dx);
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
    Window geo[] = {make_window(1, 28, 28, 5, 5, 1, 2), make_window(32, 14, 14, 5, 5, 1, 2),
                    make_window(3, 7, 9, 3, 3, 2, 1), make_window(2, 13, 11, 5, 3, 3, 2),
                    make_window(8, 28, 28, 3, 3, 2, 1)};
    for (size_t i = 0; i < sizeof geo / sizeof geo[0]; i++) check_im2col(&gen, &geo[i]);
}

/* ---- relu ----------------------------------------------------------------------------------------- */

static void test_relu(void)
{
    const size_t n = 100003;
    Gen g = {5};
    float *x = new_f(n), *y = new_f(n), *dy = new_f(n), *dx = new_f(n);
    fill_normal(&g, x, n, 1.0f);
    fill_normal(&g, dy, n, 1.0f);
    x[0] = 0.0f, x[1] = -0.0f, x[2] = FLT_MIN, x[3] = -FLT_MIN, x[4] = INFINITY, x[5] = -INFINITY;
    float *dx_ = up(x, n), *dy_ = up(y, n), *ddy = up(dy, n), *ddx = up(dx, n);
    /* A select per element: exact. */
    GPU->relu_fwd(dx_, dy_, n);
    CPU->relu_fwd(x, y, n);
    float *got = down(dy_, n);
    Cmp f = {0}, b = {0}, ip = {0};
    cmp_bits_n(&f, got, y, n);
    EXPECT_CMP(f, "relu_fwd");
    free(got);
    GPU->relu_bwd(dy_, ddy, ddx, n);
    CPU->relu_bwd(y, dy, dx, n);
    got = down(ddx, n);
    cmp_bits_n(&b, got, dx, n);
    EXPECT_CMP(b, "relu_bwd");
    free(got);
    /* In place: dx is dy. */
    GPU->relu_bwd(dy_, ddy, ddy, n);
    got = down(ddy, n);
    cmp_bits_n(&ip, got, dx, n);
    EXPECT_CMP(ip, "relu_bwd in place");
    free(got);
    GPU->free(dx_);
    GPU->free(dy_);
    GPU->free(ddy);
    GPU->free(ddx);
    free(x);
    free(y);
    free(dy);
    free(dx);
}

/* ---- max pooling ------------------------------------------------------------------------------------ */

static void check_maxpool(Gen *gen, const Window *g, size_t n, int ties)
{
    size_t in_n = n * g->c * g->h * g->w, out_n = n * g->c * g->oh * g->ow;
    float *x = new_f(in_n), *y = new_f(out_n), *dy = new_f(out_n), *dx = new_f(in_n);
    int32_t *arg = xmalloc(out_n * sizeof(int32_t)), *garg = xmalloc(out_n * sizeof(int32_t));
    if (ties)
        fill_ints(gen, x, in_n);
    else
        fill_normal(gen, x, in_n, 1.0f);
    fill_normal(gen, dy, out_n, 1.0f);
    fill_value(dx, in_n, NAN); /* backward must clear dx itself */
    float *dx_ = up(x, in_n), *dy_ = up(y, out_n), *ddy = up(dy, out_n), *ddx = up(dx, in_n);
    int32_t *darg = dev_alloc(out_n * sizeof(int32_t));

    /* The same scan of each window: values and argmax exact, ties to the
     * first in row order. */
    GPU->maxpool_fwd(g, n, dx_, dy_, darg);
    CPU->maxpool_fwd(g, n, x, y, arg);
    float *got = down(dy_, out_n);
    GPU->to_host(garg, darg, out_n * sizeof(int32_t));
    Cmp fy = {0};
    cmp_bits_n(&fy, got, y, out_n);
    size_t bad_arg = 0, first = 0;
    for (size_t i = 0; i < out_n; i++)
        if (garg[i] != arg[i] && !bad_arg++) first = i;
    EXPECT_CMP(fy, "maxpool_fwd values c=%d h=%d w=%d k=%d s=%d p=%d ties=%d", g->c, g->h, g->w,
               g->kh, g->stride, g->pad, ties);
    EXPECT(bad_arg == 0, "maxpool_fwd argmax c=%d h=%d k=%d s=%d p=%d ties=%d: %zu differ, first [%zu] %d vs %d",
           g->c, g->h, g->kh, g->stride, g->pad, ties, bad_arg, first,
           bad_arg ? (int)garg[first] : 0, bad_arg ? (int)arg[first] : 0);
    free(got);

    /* Backward from the CPU's argmax on both. Each input adds the dy of
     * the windows that chose it in output order on both devices: exact. */
    int32_t *darg_cpu = up_i32(arg, out_n);
    GPU->maxpool_bwd(g, n, ddy, darg_cpu, ddx);
    CPU->maxpool_bwd(g, n, dy, arg, dx);
    got = down(ddx, in_n);
    Cmp b = {0};
    cmp_bits_n(&b, got, dx, in_n);
    EXPECT_CMP(b, "maxpool_bwd c=%d h=%d w=%d k=%d s=%d p=%d ties=%d", g->c, g->h, g->w, g->kh,
               g->stride, g->pad, ties);
    free(got);
    GPU->free(dx_);
    GPU->free(dy_);
    GPU->free(ddy);
    GPU->free(ddx);
    GPU->free(darg);
    GPU->free(darg_cpu);
    free(x);
    free(y);
    free(dy);
    free(dx);
    free(arg);
    free(garg);
}

static void test_maxpool(void)
{
    /* c, h, w, k, stride, pad, batch */
    static const int geo[][7] = {
        {32, 28, 28, 2, 2, 0, 4}, /* the CNN's pools */
        {64, 14, 14, 2, 2, 0, 4},
        {2, 7, 7, 2, 2, 0, 3},    /* odd size: last row and column dropped */
        {2, 13, 13, 3, 2, 1, 3},  /* overlapping windows with padding */
        {1, 7, 9, 3, 2, 0, 3},    /* overlapping, no padding */
        {2, 6, 6, 3, 1, 1, 3},    /* stride 1: up to 9 windows share an input */
        {1, 13, 13, 2, 3, 0, 3},  /* gaps between windows */
        {1, 5, 5, 3, 3, 1, 3},
        {2, 1, 1, 1, 1, 0, 3},
        {1, 3, 7, 2, 2, 1, 3},    /* 2x2 stride 2 with padding */
        {3, 4, 4, 2, 1, 2, 2},    /* pad 2 of a 2x2 window: corner windows see only padding */
    };
    Gen gen = {6};
    for (size_t i = 0; i < sizeof geo / sizeof geo[0]; i++) {
        const int *q = geo[i];
        Window g = make_window(q[0], q[1], q[2], q[3], q[3], q[4], q[5]);
        for (int ties = 0; ties < 2; ties++) check_maxpool(&gen, &g, (size_t)q[6], ties);
    }
}

/* ---- dropout -------------------------------------------------------------------------------------------- */

static void test_dropout(void)
{
    const size_t n = 100003;
    static const float ps[] = {0.0f, 0.1f, 0.25f, 0.5f, 0.9f};
    /* Offsets across the 32-bit boundary of the counter's low word too. */
    static const uint64_t offsets[] = {0, 777, (1ull << 32) - 5000, 0x123456789ABCull};
    static const uint64_t seeds[] = {1234, 0xDEADBEEFCAFEF00Dull};
    Gen g = {7};
    float *x = new_f(n), *y = new_f(n), *m = new_f(n), *dy = new_f(n), *dx = new_f(n);
    fill_normal(&g, x, n, 1.0f);
    fill_normal(&g, dy, n, 1.0f);
    float *dx_ = up(x, n), *dy_ = dev_alloc(n * sizeof(float)), *dm = dev_alloc(n * sizeof(float));
    float *ddy = up(dy, n), *ddx = dev_alloc(n * sizeof(float));
    for (size_t si = 0; si < 2; si++)
        for (size_t oi = 0; oi < 4; oi++)
            for (size_t t = 0; t < sizeof ps / sizeof ps[0]; t++) {
                const float p = ps[t];
                const uint64_t stream = rng_stream(RNG_STREAM_DROPOUT, (uint32_t)(3 + oi));
                /* The same Philox draws, the same float factor, one product:
                 * masks and outputs exactly equal. */
                GPU->dropout_fwd(dx_, dy_, dm, n, p, seeds[si], stream, offsets[oi]);
                CPU->dropout_fwd(x, y, m, n, p, seeds[si], stream, offsets[oi]);
                float *gm = down(dm, n), *gy = down(dy_, n);
                Cmp cm = {0}, cy = {0};
                cmp_bits_n(&cm, gm, m, n);
                cmp_bits_n(&cy, gy, y, n);
                EXPECT_CMP(cm, "dropout mask p=%g seed=%llu offset=%llu", (double)p,
                           (unsigned long long)seeds[si], (unsigned long long)offsets[oi]);
                EXPECT_CMP(cy, "dropout output p=%g seed=%llu offset=%llu", (double)p,
                           (unsigned long long)seeds[si], (unsigned long long)offsets[oi]);
                /* Backward from the CPU's mask: one product, exact. */
                float *dmc = up(m, n);
                GPU->dropout_bwd(ddy, dmc, ddx, n);
                CPU->dropout_bwd(dy, m, dx, n);
                float *gdx = down(ddx, n);
                Cmp cb = {0};
                cmp_bits_n(&cb, gdx, dx, n);
                EXPECT_CMP(cb, "dropout_bwd p=%g", (double)p);
                GPU->free(dmc);
                free(gm);
                free(gy);
                free(gdx);
            }
    GPU->free(dx_);
    GPU->free(dy_);
    GPU->free(dm);
    GPU->free(ddy);
    GPU->free(ddx);
    free(x);
    free(y);
    free(m);
    free(dy);
    free(dx);
}

/* ---- softmax cross-entropy ------------------------------------------------------------------------------ */

static void check_softmax(const float *logits, const int32_t *labels, size_t b, size_t k,
                          float scale, const char *what)
{
    float *probs = new_f(b * k), *d = new_f(b * k);
    float *dl = up(logits, b * k), *dp = dev_alloc(b * k * sizeof(float));
    float *dd = dev_alloc(b * k * sizeof(float));
    int32_t *dlab = up_i32(labels, b);
    double gloss = NAN, closs = NAN;
    size_t gcorrect = (size_t)-1, ccorrect = (size_t)-2;
    GPU->softmax_xent_fwd(dl, dlab, b, k, dp, &gloss, &gcorrect);
    CPU->softmax_xent_fwd(logits, labels, b, k, probs, &closs, &ccorrect);
    float *gp = down(dp, b * k);

    /* Both exponentiate the same float x - max. CUDA's expf is within 2 ulp
     * and glibc's within 1: the exponentials differ by at most 3 ulp, i.e.
     * 3 FLT_EPSILON relative, and so do the double row sums. float(1/sum)
     * and the product round by half an ulp on each side: 1 FLT_EPSILON
     * each. 8 FLT_EPSILON in all, 10 with a margin; FLT_MIN absorbs
     * probabilities below the float range. */
    Cmp pc = {0};
    for (size_t i = 0; i < b * k; i++)
        cmp_add(&pc, gp[i], probs[i], 10.0 * FLT_EPSILON * fabs(probs[i]) + FLT_MIN);
    EXPECT_CMP(pc, "softmax_xent_fwd probs %s b=%zu k=%zu", what, b, k);
    /* A row's loss is log(sum) - (x[label] - max) in double, the second
     * part the same on both; log(sum) moves by the relative difference of
     * the sums, at most 3 FLT_EPSILON (above): 4 FLT_EPSILON per row with a
     * margin, plus double rounding. */
    EXPECT(isfinite(gloss), "softmax_xent_fwd %s: loss %g not finite", what, gloss);
    EXPECT_NEAR(gloss, closs, 4.0 * FLT_EPSILON * (double)b, 1e-14, what);
    /* The argmax of the same floats: equal. */
    EXPECT(gcorrect == ccorrect, "softmax_xent_fwd %s: correct %zu, CPU %zu", what, gcorrect,
           ccorrect);

    /* Backward from the CPU's probabilities on both: a subtraction and a
     * product, the same on both devices: exact. */
    float *dpc = up(probs, b * k);
    GPU->softmax_xent_bwd(dpc, dlab, b, k, scale, dd);
    CPU->softmax_xent_bwd(probs, labels, b, k, scale, d);
    float *gd = down(dd, b * k);
    Cmp dc = {0};
    cmp_bits_n(&dc, gd, d, b * k);
    EXPECT_CMP(dc, "softmax_xent_bwd %s b=%zu k=%zu", what, b, k);
    GPU->free(dl);
    GPU->free(dp);
    GPU->free(dd);
    GPU->free(dpc);
    GPU->free(dlab);
    free(probs);
    free(d);
    free(gp);
    free(gd);
}

static void test_softmax(void)
{
    static const size_t shapes[][2] = {{1, 1},   {1, 2},    {3, 10},  {64, 10}, {7, 13},
                                       {5, 1000}, {1024, 10}, {33, 37}, {256, 64}};
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

    /* Huge logits, exact ties (the first wins), a label at -1e4. */
    enum { B = 6, K = 10 };
    float x[B * K];
    int32_t labels[B] = {3, 1, 0, 5, 2, 9};
    Gen h = {9};
    for (size_t j = 0; j < K; j++) {
        x[0 * K + j] = 1e4f + (float)j * 0.5f;
        x[1 * K + j] = j % 2 ? -1e4f : 1e4f;
        x[2 * K + j] = 7.0f;
        x[3 * K + j] = 7.0f;
        x[4 * K + j] = -1e4f + gen_normal(&h);
        x[5 * K + j] = j == 9 ? 1e4f : -1e4f;
    }
    check_softmax(x, labels, B, K, 0.5f, "huge logits");

    /* An empty batch: loss 0, correct 0, nothing launched. */
    double loss = NAN;
    size_t correct = 7;
    GPU->softmax_xent_fwd(NULL, NULL, 0, 10, NULL, &loss, &correct);
    EXPECT(loss == 0.0 && correct == 0, "softmax_xent_fwd b=0 gave loss %g correct %zu", loss,
           correct);
}

/* ---- sgd ---------------------------------------------------------------------------------------------- */

static void test_sgd(void)
{
    static const size_t sizes[] = {1003, (1u << 20) + 7};
    Gen g = {10};
    for (size_t si = 0; si < 2; si++) {
        const size_t n = sizes[si];
        float *p = new_f(n), *gr = new_f(n), *v = new_f(n);
        for (int mi = 0; mi < 2; mi++)
            for (int nest = 0; nest < 2; nest++)
                for (int wi = 0; wi < 2; wi++) {
                    if (mi == 0 && nest) continue;
                    SgdStep st = {.lr = 0.1f, .momentum = mi ? 0.9f : 0.0f,
                                  .weight_decay = wi ? 0.05f : 0.0f, .nesterov = nest};
                    fill_normal(&g, p, n, 1.0f);
                    fill_normal(&g, v, n, 1.0f);
                    float *dp = up(p, n), *dv = up(v, n), *dg = dev_alloc(n * sizeof(float));
                    /* Three steps from the same state on both: the GPU kernel
                     * performs the CPU's roundings in the CPU's order (no
                     * FMA), so parameters and momentum stay bit-identical. */
                    for (int step = 0; step < 3; step++) {
                        fill_normal(&g, gr, n, 1.0f);
                        GPU->to_device(dg, gr, n * sizeof(float));
                        /* mom is unused without momentum: NULL proves it. */
                        GPU->sgd_step(dp, dg, mi ? dv : NULL, n, &st);
                        CPU->sgd_step(p, gr, mi ? v : NULL, n, &st);
                        float *gp = down(dp, n), *gv = down(dv, n);
                        Cmp cp = {0}, cv = {0};
                        cmp_bits_n(&cp, gp, p, n);
                        cmp_bits_n(&cv, gv, v, n);
                        EXPECT_CMP(cp, "sgd params n=%zu mu=%g nesterov=%d wd=%g step %d", n,
                                   (double)st.momentum, nest, (double)st.weight_decay, step);
                        EXPECT_CMP(cv, "sgd momentum n=%zu mu=%g nesterov=%d wd=%g step %d", n,
                                   (double)st.momentum, nest, (double)st.weight_decay, step);
                        free(gp);
                        free(gv);
                    }
                    GPU->free(dp);
                    GPU->free(dv);
                    GPU->free(dg);
                }
        free(p);
        free(gr);
        free(v);
    }
}

/* ---- adam, lars, sumsq -------------------------------------------------------------------------------------- */

/* Three steps from the same state on both backends: every rounding in the
 * CPU's order, so parameters and both moments stay bit-identical. */
static void test_adam(void)
{
    static const size_t sizes[] = {1003, (1u << 20) + 7};
    Gen g = {21};
    for (size_t si = 0; si < 2; si++)
        for (int dec = 0; dec < 2; dec++)
            for (int wi = 0; wi < 2; wi++) {
                const size_t n = sizes[si];
                float *p = new_f(n), *gr = new_f(n), *m = new_f(n), *v = new_f(n);
                fill_normal(&g, p, n, 1.0f);
                fill_value(m, n, 0.0f);
                fill_value(v, n, 0.0f);
                float *dp = up(p, n), *dm = up(m, n), *dv = up(v, n), *dg = dev_alloc(n * sizeof(float));
                for (int step = 0; step < 3; step++) {
                    double t = step + 1.0;
                    AdamStep st = {.lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                                   .weight_decay = wi ? 0.05f : 0.0f, .decoupled = dec,
                                   .bc1 = (float)(1.0 - pow(0.9, t)), .bc2 = (float)(1.0 - pow(0.999, t))};
                    fill_normal(&g, gr, n, 1.0f);
                    GPU->to_device(dg, gr, n * sizeof(float));
                    GPU->adam_step(dp, dg, dm, dv, n, &st);
                    CPU->adam_step(p, gr, m, v, n, &st);
                    float *gp = down(dp, n), *gm = down(dm, n), *gv = down(dv, n);
                    Cmp cp = {0}, cm = {0}, cv = {0};
                    cmp_bits_n(&cp, gp, p, n);
                    cmp_bits_n(&cm, gm, m, n);
                    cmp_bits_n(&cv, gv, v, n);
                    EXPECT_CMP(cp, "adam params n=%zu decoupled=%d wd=%g step %d", n, dec, (double)st.weight_decay, step);
                    EXPECT_CMP(cm, "adam m n=%zu decoupled=%d step %d", n, dec, step);
                    EXPECT_CMP(cv, "adam v n=%zu decoupled=%d step %d", n, dec, step);
                    free(gp);
                    free(gm);
                    free(gv);
                }
                GPU->free(dp);
                GPU->free(dm);
                GPU->free(dv);
                GPU->free(dg);
                free(p);
                free(gr);
                free(m);
                free(v);
            }
}

static void test_lars(void)
{
    static const size_t sizes[] = {1003, (1u << 20) + 7};
    Gen g = {22};
    for (size_t si = 0; si < 2; si++)
        for (int mi = 0; mi < 2; mi++)
            for (int nest = 0; nest < 2; nest++) {
                if (!mi && nest) continue;
                const size_t n = sizes[si];
                float *p = new_f(n), *gr = new_f(n), *v = new_f(n);
                fill_normal(&g, p, n, 1.0f);
                fill_normal(&g, v, n, 1.0f);
                float *dp = up(p, n), *dv = up(v, n), *dg = dev_alloc(n * sizeof(float));
                SgdStep st = {.lr = 0.1f, .momentum = mi ? 0.9f : 0.0f, .weight_decay = 0.01f, .nesterov = nest};
                for (int step = 0; step < 3; step++) {
                    fill_normal(&g, gr, n, 1.0f);
                    GPU->to_device(dg, gr, n * sizeof(float));
                    GPU->lars_step(dp, dg, mi ? dv : NULL, n, &st, 0.37f);
                    CPU->lars_step(p, gr, mi ? v : NULL, n, &st, 0.37f);
                    float *gp = down(dp, n), *gv = down(dv, n);
                    Cmp cp = {0}, cv = {0};
                    cmp_bits_n(&cp, gp, p, n);
                    cmp_bits_n(&cv, gv, v, n);
                    EXPECT_CMP(cp, "lars params n=%zu mu=%g nesterov=%d step %d", n, (double)st.momentum, nest, step);
                    EXPECT_CMP(cv, "lars momentum n=%zu mu=%g nesterov=%d step %d", n, (double)st.momentum, nest, step);
                    free(gp);
                    free(gv);
                }
                GPU->free(dp);
                GPU->free(dv);
                GPU->free(dg);
                free(p);
                free(gr);
                free(v);
            }
    /* Sums of squares: both in double, summed in other orders; and 0 for none. */
    static const size_t lens[] = {0, 1, 255, 100019, (1u << 22) + 3};
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        const size_t n = lens[li];
        float *x = new_f(n ? n : 1);
        fill_normal(&g, x, n, 2.0f);
        float *dx = up(x, n ? n : 1);
        double want = 0.0;
        for (size_t i = 0; i < n; i++) want += (double)x[i] * x[i];
        double got = GPU->sumsq(dx, n), cpu = CPU->sumsq(x, n);
        EXPECT_NEAR(got, want, 1e-12, 1e-12, "sumsq (cuda)");
        EXPECT_NEAR(cpu, want, 1e-12, 1e-12, "sumsq (cpu)");
        GPU->free(dx);
        free(x);
    }
}

/* ---- scale ------------------------------------------------------------------------------------------------ */

static void test_scale(void)
{
    const size_t n = 100019;
    Gen g = {11};
    float *x = new_f(n);
    fill_normal(&g, x, n, 1.0f);
    float *dx = up(x, n);
    GPU->scale(dx, n, -0.3f);
    CPU->scale(x, n, -0.3f);
    float *got = down(dx, n);
    Cmp c = {0};
    cmp_bits_n(&c, got, x, n); /* one product: exact */
    EXPECT_CMP(c, "scale");
    GPU->free(dx);
    free(x);
    free(got);
}

/* ---- batch normalization ---------------------------------------------------------------------------------- */

static double *new_d(size_t n)
{
    return xmalloc(n * sizeof(double));
}

static double *up_d(const double *h, size_t n)
{
    double *d = dev_alloc(n * sizeof(double));
    GPU->to_device(d, h, n * sizeof(double));
    return d;
}

static double *down_d(const double *d, size_t n)
{
    double *h = new_d(n);
    GPU->to_host(h, d, n * sizeof(double));
    return h;
}

/* Normal values around a per-channel mean in [-2, 2]. */
static void fill_channels(Gen *g, float *x, size_t n, size_t c, size_t hw, float sd)
{
    for (size_t s = 0; s < n; s++)
        for (size_t ch = 0; ch < c; ch++) {
            const float shift = c > 1 ? -2.0f + 4.0f * (float)ch / (float)(c - 1) : 1.5f;
            for (size_t i = 0; i < hw; i++) x[(s * c + ch) * hw + i] = shift + sd * gen_normal(g);
        }
}

static void fill_uniform(Gen *g, float *x, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * (float)gen_unit(g);
}

/* Every op of a training and an evaluation step of batch norm on one batch,
 * each from the same inputs on both devices: the statistics and sums that
 * an op reads are the CPU's, uploaded, so each op is compared alone. */
static void check_bn(Gen *g, size_t n, size_t c, size_t hw)
{
    const size_t len = n * c * hw;
    const double count = (double)(n * hw);
    const float eps = 1e-5f, mom = 0.1f;
    float *x = new_f(len), *dy = new_f(len), *y = new_f(len), *dx = new_f(len);
    float *gamma = new_f(c), *beta = new_f(c), *mean = new_f(c), *invstd = new_f(c);
    float *rm = new_f(c), *rv = new_f(c), *dgamma = new_f(c), *dbeta = new_f(c);
    double *sum = new_d(c), *sumsq = new_d(c), *sdy = new_d(c), *sdyxhat = new_d(c);
    double *mag1 = new_d(c), *mag2 = new_d(c);
    fill_channels(g, x, n, c, hw, 1.5f);
    fill_normal(g, dy, len, 1.0f);
    fill_normal(g, gamma, c, 1.0f);
    fill_normal(g, beta, c, 1.0f);
    fill_uniform(g, rm, c, -1.0f, 1.0f);
    fill_uniform(g, rv, c, 0.5f, 2.0f);
    float *d_x = up(x, len), *d_dy = up(dy, len), *d_y = dev_alloc(len * sizeof(float));
    float *d_dx = dev_alloc(len * sizeof(float)), *d_gamma = up(gamma, c), *d_beta = up(beta, c);
    float *d_rm = up(rm, c), *d_rv = up(rv, c);
    float *d_mean = dev_alloc(c * sizeof(float)), *d_invstd = dev_alloc(c * sizeof(float));
    double *d_a = dev_alloc(c * sizeof(double)), *d_b = dev_alloc(c * sizeof(double));

    /* Moments: double sums of m = n hw exact terms in two orders, each
     * within m u of the sum of magnitudes: 2 m u apart, m DBL_EPSILON. */
    GPU->bn_moments(d_x, n, c, hw, d_a, d_b);
    CPU->bn_moments(x, n, c, hw, sum, sumsq);
    double *ga = down_d(d_a, c), *gb = down_d(d_b, c);
    for (size_t ch = 0; ch < c; ch++) mag1[ch] = 0.0, mag2[ch] = 0.0;
    for (size_t s = 0; s < n; s++)
        for (size_t ch = 0; ch < c; ch++)
            for (size_t i = 0; i < hw; i++) {
                const double v = x[(s * c + ch) * hw + i];
                mag1[ch] += fabs(v);
                mag2[ch] += v * v;
            }
    Cmp ms = {0}, mq = {0};
    for (size_t ch = 0; ch < c; ch++) {
        cmp_add(&ms, ga[ch], sum[ch], (count + 1.0) * DBL_EPSILON * mag1[ch]);
        cmp_add(&mq, gb[ch], sumsq[ch], (count + 1.0) * DBL_EPSILON * mag2[ch]);
    }
    EXPECT_CMP(ms, "bn_moments sum n=%zu c=%zu hw=%zu", n, c, hw);
    EXPECT_CMP(mq, "bn_moments sumsq n=%zu c=%zu hw=%zu", n, c, hw);
    free(ga);
    free(gb);

    /* Finalize from the CPU's sums: the same double operations on both
     * (the kernel keeps nvcc from fusing them), then one rounding to float:
     * one float ulp (FLT_EPSILON of the value) is all the difference allowed. */
    GPU->to_device(d_a, sum, c * sizeof(double));
    GPU->to_device(d_b, sumsq, c * sizeof(double));
    GPU->bn_finalize(d_a, d_b, c, count, eps, mom, d_mean, d_invstd, d_rm, d_rv);
    CPU->bn_finalize(sum, sumsq, c, count, eps, mom, mean, invstd, rm, rv);
    float *gm = down(d_mean, c), *gi = down(d_invstd, c), *grm = down(d_rm, c), *grv = down(d_rv, c);
    Cmp fm = {0}, fi = {0}, frm = {0}, frv = {0};
    for (size_t ch = 0; ch < c; ch++) {
        cmp_add(&fm, gm[ch], mean[ch], FLT_EPSILON * fabs(mean[ch]));
        cmp_add(&fi, gi[ch], invstd[ch], FLT_EPSILON * fabs(invstd[ch]));
        cmp_add(&frm, grm[ch], rm[ch], FLT_EPSILON * fabs(rm[ch]));
        cmp_add(&frv, grv[ch], rv[ch], FLT_EPSILON * fabs(rv[ch]));
    }
    EXPECT_CMP(fm, "bn_finalize mean n=%zu c=%zu hw=%zu", n, c, hw);
    EXPECT_CMP(fi, "bn_finalize invstd n=%zu c=%zu hw=%zu", n, c, hw);
    EXPECT_CMP(frm, "bn_finalize running_mean n=%zu c=%zu hw=%zu", n, c, hw);
    EXPECT_CMP(frv, "bn_finalize running_var n=%zu c=%zu hw=%zu", n, c, hw);
    free(gm);
    free(gi);
    free(grm);
    free(grv);

    /* Evaluation statistics from the CPU's running statistics: a copy, and
     * a double sum, root and quotient (each correctly rounded on both)
     * rounded to float: exact. */
    float *d_rm2 = up(rm, c), *d_rv2 = up(rv, c), *em = new_f(c), *ei = new_f(c);
    GPU->bn_eval_stats(d_rm2, d_rv2, c, eps, d_mean, d_invstd);
    CPU->bn_eval_stats(rm, rv, c, eps, em, ei);
    gm = down(d_mean, c);
    gi = down(d_invstd, c);
    Cmp es = {0};
    cmp_bits_n(&es, gm, em, c);
    cmp_bits_n(&es, gi, ei, c);
    EXPECT_CMP(es, "bn_eval_stats c=%zu", c);
    free(gm);
    free(gi);
    free(em);
    free(ei);
    GPU->free(d_rm2);
    GPU->free(d_rv2);

    /* Forward with the CPU's batch statistics. Each side is within 2
     * FLT_EPSILON (|p| + |beta|) of the exact value, p = gamma (x - mean)
     * invstd (test_ops_bn.c; the GPU may fuse the last multiply-add, which
     * only removes a rounding): 4 FLT_EPSILON apart. */
    GPU->to_device(d_mean, mean, c * sizeof(float));
    GPU->to_device(d_invstd, invstd, c * sizeof(float));
    GPU->bn_fwd(d_x, d_y, n, c, hw, d_mean, d_invstd, d_gamma, d_beta);
    CPU->bn_fwd(x, y, n, c, hw, mean, invstd, gamma, beta);
    float *got = down(d_y, len);
    Cmp f = {0};
    for (size_t s = 0; s < n; s++)
        for (size_t ch = 0; ch < c; ch++)
            for (size_t i = 0; i < hw; i++) {
                const size_t k = (s * c + ch) * hw + i;
                const double p = (double)gamma[ch] * ((double)x[k] - mean[ch]) * invstd[ch];
                cmp_add(&f, got[k], y[k], 4.0 * FLT_EPSILON * (fabs(p) + fabs(beta[ch])));
            }
    EXPECT_CMP(f, "bn_fwd n=%zu c=%zu hw=%zu", n, c, hw);
    /* In place (y is x) on the GPU: its own out-of-place bits. */
    float *d_t = up(x, len);
    GPU->bn_fwd(d_t, d_t, n, c, hw, d_mean, d_invstd, d_gamma, d_beta);
    float *got2 = down(d_t, len);
    Cmp fi2 = {0};
    cmp_bits_n(&fi2, got2, got, len);
    EXPECT_CMP(fi2, "bn_fwd in place n=%zu c=%zu hw=%zu", n, c, hw);
    free(got);
    free(got2);

    /* Backward sums with the CPU's statistics: double sums of m terms,
     * each term within 3 roundings, in two orders. */
    GPU->bn_bwd_sums(d_dy, d_x, n, c, hw, d_mean, d_invstd, d_a, d_b);
    CPU->bn_bwd_sums(dy, x, n, c, hw, mean, invstd, sdy, sdyxhat);
    ga = down_d(d_a, c);
    gb = down_d(d_b, c);
    for (size_t ch = 0; ch < c; ch++) mag1[ch] = 0.0, mag2[ch] = 0.0;
    for (size_t s = 0; s < n; s++)
        for (size_t ch = 0; ch < c; ch++)
            for (size_t i = 0; i < hw; i++) {
                const size_t k = (s * c + ch) * hw + i;
                mag1[ch] += fabs(dy[k]);
                mag2[ch] += fabs((double)dy[k] * ((double)x[k] - mean[ch]) * invstd[ch]);
            }
    Cmp bs = {0}, bx = {0};
    for (size_t ch = 0; ch < c; ch++) {
        cmp_add(&bs, ga[ch], sdy[ch], (count + 1.0) * DBL_EPSILON * mag1[ch]);
        cmp_add(&bx, gb[ch], sdyxhat[ch], (count + 4.0) * DBL_EPSILON * mag2[ch]);
    }
    EXPECT_CMP(bs, "bn_bwd_sums sdy n=%zu c=%zu hw=%zu", n, c, hw);
    EXPECT_CMP(bx, "bn_bwd_sums sdyxhat n=%zu c=%zu hw=%zu", n, c, hw);
    free(ga);
    free(gb);

    /* Parameter gradients from the CPU's sums: a rounding each, exact. */
    float *d_dg = dev_alloc(c * sizeof(float)), *d_db = dev_alloc(c * sizeof(float));
    GPU->to_device(d_a, sdy, c * sizeof(double));
    GPU->to_device(d_b, sdyxhat, c * sizeof(double));
    GPU->bn_param_grads(d_a, d_b, c, d_dg, d_db);
    CPU->bn_param_grads(sdy, sdyxhat, c, dgamma, dbeta);
    float *gdg = down(d_dg, c), *gdb = down(d_db, c);
    Cmp pg = {0};
    cmp_bits_n(&pg, gdg, dgamma, c);
    cmp_bits_n(&pg, gdb, dbeta, c);
    EXPECT_CMP(pg, "bn_param_grads c=%zu", c);
    free(gdg);
    free(gdb);
    GPU->free(d_dg);
    GPU->free(d_db);

    /* dx from the CPU's sums: each side within 4 FLT_EPSILON |gamma
     * invstd| (|dy| + |sdy / count| + |xhat sdyxhat / count|) of the exact
     * value (test_ops_bn.c): 8 FLT_EPSILON apart. */
    GPU->bn_bwd_dx(d_dy, d_x, n, c, hw, d_mean, d_invstd, d_gamma, d_a, d_b, count, d_dx);
    CPU->bn_bwd_dx(dy, x, n, c, hw, mean, invstd, gamma, sdy, sdyxhat, count, dx);
    got = down(d_dx, len);
    Cmp d = {0};
    for (size_t s = 0; s < n; s++)
        for (size_t ch = 0; ch < c; ch++)
            for (size_t i = 0; i < hw; i++) {
                const size_t k = (s * c + ch) * hw + i;
                const double xhat = ((double)x[k] - mean[ch]) * invstd[ch];
                const double t = fabs(dy[k]) + fabs(sdy[ch] / count) + fabs(xhat * sdyxhat[ch] / count);
                cmp_add(&d, got[k], dx[k], 8.0 * FLT_EPSILON * fabs((double)gamma[ch] * invstd[ch]) * t);
            }
    EXPECT_CMP(d, "bn_bwd_dx n=%zu c=%zu hw=%zu", n, c, hw);
    /* In place (dx is dy) on the GPU: its own out-of-place bits. */
    GPU->to_device(d_t, dy, len * sizeof(float));
    GPU->bn_bwd_dx(d_t, d_x, n, c, hw, d_mean, d_invstd, d_gamma, d_a, d_b, count, d_t);
    got2 = down(d_t, len);
    Cmp di = {0};
    cmp_bits_n(&di, got2, got, len);
    EXPECT_CMP(di, "bn_bwd_dx in place n=%zu c=%zu hw=%zu", n, c, hw);
    free(got);
    free(got2);

    GPU->free(d_x);
    GPU->free(d_dy);
    GPU->free(d_y);
    GPU->free(d_dx);
    GPU->free(d_gamma);
    GPU->free(d_beta);
    GPU->free(d_rm);
    GPU->free(d_rv);
    GPU->free(d_mean);
    GPU->free(d_invstd);
    GPU->free(d_a);
    GPU->free(d_b);
    GPU->free(d_t);
    free(x);
    free(dy);
    free(y);
    free(dx);
    free(gamma);
    free(beta);
    free(mean);
    free(invstd);
    free(rm);
    free(rv);
    free(dgamma);
    free(dbeta);
    free(sum);
    free(sumsq);
    free(sdy);
    free(sdyxhat);
    free(mag1);
    free(mag2);
}

static void test_bn(void)
{
    /* n, c, hw. The per-channel sums split a channel into parts when there
     * are few channels and many values: one part ({64, 2048, 1}, {3, 2048,
     * 49}), several with planes longer than a block ({16, 8, 3136}, {8, 3,
     * 12544}, {2, 1, 100000}), as long as a block ({64, 4, 256}), shorter
     * ({4096, 4, 7}), and fc features ({20000, 3, 1}). */
    static const size_t shapes[][3] = {
        {1, 3, 1},      {7, 5, 1},     {256, 10, 1},   {64, 2048, 1}, {2, 3, 7},
        {4, 16, 49},    {5, 3, 1031},  {16, 8, 3136},  {8, 3, 12544}, {2, 1, 100000},
        {64, 4, 256},   {4096, 4, 7},  {20000, 3, 1},  {3, 2048, 49}, {32, 64, 196},
    };
    Gen g = {12};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++)
        check_bn(&g, shapes[t][0], shapes[t][1], shapes[t][2]);

    /* n = 0: zero sums, like the CPU. */
    double nan2[2] = {NAN, NAN}, back[2];
    double *d_a = up_d(nan2, 2), *d_b = up_d(nan2, 2);
    float *d_x = dev_alloc(sizeof(float));
    GPU->bn_moments(d_x, 0, 2, 5, d_a, d_b);
    GPU->to_host(back, d_a, sizeof back);
    EXPECT(back[0] == 0.0 && back[1] == 0.0, "bn_moments n=0: sum %g %g", back[0], back[1]);
    GPU->to_host(back, d_b, sizeof back);
    EXPECT(back[0] == 0.0 && back[1] == 0.0, "bn_moments n=0: sumsq %g %g", back[0], back[1]);
    GPU->free(d_a);
    GPU->free(d_b);
    GPU->free(d_x);
}

/* ---- residual add, average pooling --------------------------------------------------------------------------- */

static void test_add(void)
{
    const size_t n = 100003;
    Gen g = {13};
    float *a = new_f(n), *b = new_f(n), *y = new_f(n);
    fill_normal(&g, a, n, 1.0f);
    fill_normal(&g, b, n, 3.0f);
    float *da = up(a, n), *db = up(b, n), *dy = dev_alloc(n * sizeof(float));
    /* One addition per element: exact, in place too. */
    GPU->add(da, db, dy, n);
    CPU->add(a, b, y, n);
    float *got = down(dy, n);
    Cmp c = {0}, ia = {0}, ib = {0};
    cmp_bits_n(&c, got, y, n);
    EXPECT_CMP(c, "add");
    free(got);
    GPU->add(da, db, da, n); /* y is a */
    got = down(da, n);
    cmp_bits_n(&ia, got, y, n);
    EXPECT_CMP(ia, "add in place (y is a)");
    free(got);
    GPU->to_device(da, a, n * sizeof(float));
    GPU->add(da, db, db, n); /* y is b */
    got = down(db, n);
    cmp_bits_n(&ib, got, y, n);
    EXPECT_CMP(ib, "add in place (y is b)");
    free(got);
    GPU->free(da);
    GPU->free(db);
    GPU->free(dy);
    free(a);
    free(b);
    free(y);
}

static void check_avgpool(Gen *gen, const Window *g, size_t n)
{
    size_t in_n = n * g->c * g->h * g->w, out_n = n * g->c * g->oh * g->ow;
    float *x = new_f(in_n), *y = new_f(out_n), *dy = new_f(out_n), *dx = new_f(in_n);
    fill_normal(gen, x, in_n, 1.0f);
    fill_normal(gen, dy, out_n, 1.0f);
    fill_value(dx, in_n, NAN); /* backward must overwrite dx */
    float *d_x = up(x, in_n), *d_y = dev_alloc(out_n * sizeof(float)), *d_dy = up(dy, out_n);
    float *d_dx = up(dx, in_n);
    /* Forward: the window's inputs added from 0 in row order, then one
     * division, on both: exact. */
    GPU->avgpool_fwd(g, n, d_x, d_y);
    CPU->avgpool_fwd(g, n, x, y);
    float *got = down(d_y, out_n);
    Cmp f = {0};
    cmp_bits_n(&f, got, y, out_n);
    EXPECT_CMP(f, "avgpool_fwd c=%d h=%d w=%d k=%dx%d s=%d p=%d", g->c, g->h, g->w, g->kh, g->kw,
               g->stride, g->pad);
    free(got);
    /* Backward: each input adds dy / area of its windows in the CPU's
     * scatter order on both (cuda/kernels_cuda.cu): exact. */
    GPU->avgpool_bwd(g, n, d_dy, d_dx);
    CPU->avgpool_bwd(g, n, dy, dx);
    got = down(d_dx, in_n);
    Cmp b = {0};
    cmp_bits_n(&b, got, dx, in_n);
    EXPECT_CMP(b, "avgpool_bwd c=%d h=%d w=%d k=%dx%d s=%d p=%d", g->c, g->h, g->w, g->kh, g->kw,
               g->stride, g->pad);
    free(got);
    GPU->free(d_x);
    GPU->free(d_y);
    GPU->free(d_dy);
    GPU->free(d_dx);
    free(x);
    free(y);
    free(dy);
    free(dx);
}

static void test_avgpool(void)
{
    /* c, h, w, kh, kw, stride, pad, batch */
    static const int geo[][8] = {
        {16, 32, 32, 2, 2, 2, 0, 4}, /* the usual 2x2/2 */
        {2, 7, 7, 2, 2, 2, 0, 3},    /* odd size */
        {2, 7, 9, 3, 3, 2, 1, 3},    /* overlapping windows with padding */
        {2, 6, 6, 3, 3, 1, 1, 3},    /* stride 1: up to 9 windows share an input */
        {1, 13, 11, 3, 2, 3, 1, 3},  /* rectangular window, gaps */
        {2, 5, 5, 1, 1, 1, 0, 3},    /* 1x1 */
        {8, 14, 14, 1, 1, 2, 0, 3},  /* 1x1 stride 2 */
        {64, 7, 7, 7, 7, 1, 0, 4},   /* global window */
        {2, 4, 5, 4, 5, 1, 0, 3},    /* global rectangular window */
        {3, 4, 4, 2, 2, 1, 2, 2},    /* corner windows over padding only */
        {1, 9, 9, 5, 5, 3, 2, 3},
        {2, 3, 7, 2, 2, 2, 1, 3},
    };
    Gen gen = {14};
    for (size_t i = 0; i < sizeof geo / sizeof geo[0]; i++) {
        const int *q = geo[i];
        Window g = make_window(q[0], q[1], q[2], q[3], q[4], q[5], q[6]);
        check_avgpool(&gen, &g, (size_t)q[7]);
    }
}

static void test_gap(void)
{
    static const size_t shapes[][3] = {{1, 1, 1},  {3, 5, 1},   {2, 4, 49},  {3, 7, 13},
                                       {32, 512, 49}, {4, 64, 64}, {2, 8, 3136}, {1, 2, 100000}};
    Gen gen = {15};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        const size_t n = shapes[t][0], c = shapes[t][1], hw = shapes[t][2];
        const size_t planes = n * c, len = planes * hw;
        float *x = new_f(len), *y = new_f(planes), *dy = new_f(planes), *dx = new_f(len);
        fill_channels(&gen, x, n, c, hw, 1.0f);
        fill_normal(&gen, dy, planes, 1.0f);
        float *d_x = up(x, len), *d_y = dev_alloc(planes * sizeof(float)), *d_dy = up(dy, planes);
        float *d_dx = dev_alloc(len * sizeof(float));
        /* Float sums of hw terms in two orders, then one division: each
         * within (hw + 1) u of sum |x| / hw of the exact mean. */
        GPU->gap_fwd(d_x, d_y, n, c, hw);
        CPU->gap_fwd(x, y, n, c, hw);
        float *got = down(d_y, planes);
        Cmp f = {0};
        for (size_t p = 0; p < planes; p++) {
            double mag = 0.0;
            for (size_t i = 0; i < hw; i++) mag += fabs(x[p * hw + i]);
            cmp_add(&f, got[p], y[p], ((double)hw + 1.0) * FLT_EPSILON * mag / (double)hw);
        }
        EXPECT_CMP(f, "gap_fwd n=%zu c=%zu hw=%zu", n, c, hw);
        free(got);
        /* One division per element: exact. */
        GPU->gap_bwd(d_dy, d_dx, n, c, hw);
        CPU->gap_bwd(dy, dx, n, c, hw);
        got = down(d_dx, len);
        Cmp b = {0};
        cmp_bits_n(&b, got, dx, len);
        EXPECT_CMP(b, "gap_bwd n=%zu c=%zu hw=%zu", n, c, hw);
        free(got);
        GPU->free(d_x);
        GPU->free(d_y);
        GPU->free(d_dy);
        GPU->free(d_dx);
        free(x);
        free(y);
        free(dy);
        free(dx);
    }
}

int main(void)
{
    require_cuda_device();
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
    test_adam();
    test_lars();
    test_bn();
    test_add();
    test_avgpool();
    test_gap();
    GPU->sync();
    return test_finish("test_ops_cuda");
}
