/* Winograd F(2x2, rxr) convolution (core/winograd.h) against a direct
 * convolution in double written here: forward y, and backward dx and dW for
 * a random dy, over r = 3 and 5, padding 0..2, odd and even sizes down to a
 * 1x1 input, 1..32 input and 1..64 output channels, batches of 1 and 5
 * (also smaller than the plan's max_batch) and of several groups, and
 * images of several chunks. Also: the 1-D matrices reproduce correlation
 * exactly (in double); a transform coefficient off by 1% fails these
 * tolerances; the portable transform kernel gives the same bits as the one
 * picked for the CPU; every gemm path this CPU runs (the op table's BLAS
 * and each of core/winograd_gemm.h's kernels) meets the same tolerances
 * and gives the same bits when run again; and the conv layer with BASIN_CONV=winograd agrees
 * with BASIN_CONV=im2col, while unset it is exactly one of them, as
 * winograd_pays decides.
 *
 * Error measure: per tensor, max |got - ref| / max |ref|. Tolerances.
 * A float computation of the same sums by im2col + gemm is off by ~1e-6 of
 * that scale. Winograd adds the rounding of its transforms, whose entries
 * exceed 1 and whose terms partly cancel, so the error grows with the size
 * of the entries of A, B, G: seen here up to ~1e-6 for r = 3 and ~5e-6 for
 * r = 5. The bounds, 1e-4 (r = 3) and 5e-4 (r = 5), leave a margin of 100x
 * over that, yet a transform coefficient off by 1% moves the result by
 * 2e-3 or more (checked below), and a wrong matrix by O(1). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/layers.h"
#include "core/ops.h"
#include "core/winograd.h"
#include "gen.h"
#include "testing.h"

static double tol_of(int r)
{
    return r == 3 ? 1e-4 : 5e-4;
}

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test_winograd: out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

static float *uniform(Gen *g, size_t n)
{
    float *x = xmalloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = (float)(2.0 * gen_unit(g) - 1.0);
    return x;
}

/* max |got - ref| / max |ref| */
static double rel_err(const float *got, const double *ref, size_t n)
{
    double d = 0.0, m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= d)) d = e; /* NaN sticks */
        if (fabs(ref[i]) > m) m = fabs(ref[i]);
    }
    return m > 0.0 ? d / m : d;
}

/* ---- 1-D: the matrices against correlation, in double ------------------------- */

static void check_matrices(int r)
{
    const int t = r + 1;
    double at[2 * WINOGRAD_MAX_T], bt[WINOGRAD_MAX_T * WINOGRAD_MAX_T], g[WINOGRAD_MAX_T * WINOGRAD_MAX_T];
    EXPECT(winograd_matrices(r, at, bt, g) == 0, "winograd_matrices(%d) failed", r);
    Gen gen = {(uint64_t)r};
    double worst = 0.0;
    for (int trial = 0; trial < 100; trial++) {
        double d[WINOGRAD_MAX_T], f[WINOGRAD_MAX_T];
        for (int i = 0; i < t; i++) d[i] = 2.0 * gen_unit(&gen) - 1.0;
        for (int i = 0; i < r; i++) f[i] = 2.0 * gen_unit(&gen) - 1.0;
        double prod[WINOGRAD_MAX_T];
        for (int xi = 0; xi < t; xi++) {
            double gf = 0.0, bd = 0.0;
            for (int u = 0; u < r; u++) gf += g[xi * r + u] * f[u];
            for (int i = 0; i < t; i++) bd += bt[xi * t + i] * d[i];
            prod[xi] = gf * bd;
        }
        for (int a = 0; a < 2; a++) {
            double y = 0.0, ref = 0.0;
            for (int xi = 0; xi < t; xi++) y += at[a * t + xi] * prod[xi];
            for (int u = 0; u < r; u++) ref += f[u] * d[a + u];
            if (fabs(y - ref) > worst) worst = fabs(y - ref);
        }
    }
    printf("F(2,%d) 1-D identity in double: max error %.2e\n", r, worst);
    EXPECT(worst <= 1e-12, "F(2,%d): A^T[(G g) . (B^T d)] is not the correlation (error %.3g)", r,
           worst);
}

/* ---- 2-D: direct convolution in double ---------------------------------------- */

typedef struct {
    int r, n, c, k, h, w, pad;
    size_t max_batch;
} Case;

typedef struct {
    Window win;
    size_t nx, ny, nw; /* element counts of x, y, w */
    float *x, *w, *b, *dy;
    double *y, *dx, *dw; /* reference */
} Problem;

static Problem problem_new(const Case *cs, uint64_t seed)
{
    Problem p = {0};
    Window *g = &p.win;
    g->c = cs->c, g->h = cs->h, g->w = cs->w, g->kh = g->kw = cs->r, g->stride = 1, g->pad = cs->pad;
    g->oh = window_out(cs->h, cs->r, 1, cs->pad);
    g->ow = window_out(cs->w, cs->r, 1, cs->pad);
    const size_t n = (size_t)cs->n, C = (size_t)cs->c, K = (size_t)cs->k, r = (size_t)cs->r;
    const size_t hw = (size_t)g->h * (size_t)g->w, ohw = (size_t)g->oh * (size_t)g->ow;
    p.nx = n * C * hw, p.ny = n * K * ohw, p.nw = K * C * r * r;
    Gen gen = {seed};
    p.x = uniform(&gen, p.nx), p.w = uniform(&gen, p.nw), p.b = uniform(&gen, K);
    p.dy = uniform(&gen, p.ny);
    p.y = calloc(p.ny ? p.ny : 1, sizeof *p.y);
    p.dx = calloc(p.nx ? p.nx : 1, sizeof *p.dx);
    p.dw = calloc(p.nw ? p.nw : 1, sizeof *p.dw);
    if (!p.y || !p.dx || !p.dw) {
        fprintf(stderr, "test_winograd: out of memory\n");
        exit(1);
    }
    for (size_t s = 0; s < n; s++)
        for (size_t k = 0; k < K; k++)
            for (int oy = 0; oy < g->oh; oy++)
                for (int ox = 0; ox < g->ow; ox++) {
                    const size_t yi = (s * K + k) * ohw + (size_t)oy * (size_t)g->ow + (size_t)ox;
                    double acc = p.b[k];
                    const double gy = p.dy[yi];
                    for (size_t c = 0; c < C; c++)
                        for (int u = 0; u < cs->r; u++) {
                            int iy = oy - cs->pad + u;
                            if (iy < 0 || iy >= g->h) continue;
                            for (int v = 0; v < cs->r; v++) {
                                int ix = ox - cs->pad + v;
                                if (ix < 0 || ix >= g->w) continue;
                                const size_t xi = (s * C + c) * hw + (size_t)iy * (size_t)g->w + (size_t)ix;
                                const size_t wi = ((k * C + c) * r + (size_t)u) * r + (size_t)v;
                                acc += (double)p.w[wi] * p.x[xi];
                                p.dx[xi] += (double)p.w[wi] * gy;
                                p.dw[wi] += (double)p.x[xi] * gy;
                            }
                        }
                    p.y[yi] = acc;
                }
    return p;
}

static void problem_free(Problem *p)
{
    free(p->x), free(p->w), free(p->b), free(p->dy);
    free(p->y), free(p->dx), free(p->dw);
}

typedef struct {
    double y, dx, dw;
} Errors;

/* Forward and backward through a plan; NaN garbage in the outputs first, so
 * a missed element shows. */
typedef struct {
    float *y, *dx, *dw;
} Outputs;

static Outputs outputs_run(Winograd *wg, const Problem *p, size_t n)
{
    Outputs o = {xmalloc(p->ny * sizeof(float)), xmalloc(p->nx * sizeof(float)),
                 xmalloc(p->nw * sizeof(float))};
    for (size_t i = 0; i < p->ny; i++) o.y[i] = NAN;
    for (size_t i = 0; i < p->nx; i++) o.dx[i] = NAN;
    for (size_t i = 0; i < p->nw; i++) o.dw[i] = NAN;
    winograd_forward(wg, &ops_cpu, p->w, p->b, p->x, o.y, n);
    winograd_backward(wg, &ops_cpu, p->dy, o.dw, o.dx, n);
    return o;
}

static void outputs_free(Outputs *o)
{
    free(o->y), free(o->dx), free(o->dw);
}

static Errors run_plan(Winograd *wg, const Problem *p, size_t n)
{
    Outputs o = outputs_run(wg, p, n);
    Errors e = {rel_err(o.y, p->y, p->ny), rel_err(o.dx, p->dx, p->nx), rel_err(o.dw, p->dw, p->nw)};
    outputs_free(&o);
    return e;
}

static double worst_of(Errors e)
{
    double m = e.y;
    if (!(e.dx <= m)) m = e.dx;
    if (!(e.dw <= m)) m = e.dw;
    return m;
}

static void check_case(const Case *cs, uint64_t seed, double *worst)
{
    Problem p = problem_new(cs, seed);
    Winograd wg;
    char what[160];
    snprintf(what, sizeof what, "r=%d n=%d (max %zu) C_in=%d C_out=%d %dx%d pad %d -> %dx%d", cs->r,
             cs->n, cs->max_batch, cs->c, cs->k, cs->h, cs->w, cs->pad, p.win.oh, p.win.ow);
    if (winograd_plan(&wg, &ops_cpu, &p.win, cs->k, cs->max_batch)) {
        EXPECT(0, "%s: winograd_plan failed", what);
        problem_free(&p);
        return;
    }
    Outputs o = outputs_run(&wg, &p, (size_t)cs->n);
    Errors e = {rel_err(o.y, p.y, p.ny), rel_err(o.dx, p.dx, p.nx), rel_err(o.dw, p.dw, p.nw)};
    const double tol = tol_of(cs->r);
    printf("  %-52s y %.2e  dx %.2e  dW %.2e\n", what, e.y, e.dx, e.dw);
    EXPECT(e.y <= tol, "%s: forward y off by %.3g (tolerance %.0e)", what, e.y, tol);
    EXPECT(e.dx <= tol, "%s: dx off by %.3g (tolerance %.0e)", what, e.dx, tol);
    EXPECT(e.dw <= tol, "%s: dW off by %.3g (tolerance %.0e)", what, e.dw, tol);
    if (!(worst_of(e) <= *worst)) *worst = worst_of(e);

    /* The backward without dx gives the same dW. */
    float *dw = xmalloc(p.nw * sizeof *dw);
    winograd_backward(&wg, &ops_cpu, p.dy, dw, NULL, (size_t)cs->n);
    EXPECT(memcmp(dw, o.dw, p.nw * sizeof *dw) == 0, "%s: dW without dx differs", what);
    free(dw);

    /* The kernel for the build's instruction set gives the same bits as the
     * one picked for this CPU (the same operations in the same order). */
    if (wg.comb != winograd_comb_portable) {
        wg.comb = winograd_comb_portable;
        Outputs q = outputs_run(&wg, &p, (size_t)cs->n);
        EXPECT(memcmp(q.y, o.y, p.ny * sizeof(float)) == 0 &&
                   memcmp(q.dx, o.dx, p.nx * sizeof(float)) == 0 &&
                   memcmp(q.dw, o.dw, p.nw * sizeof(float)) == 0,
               "%s: the portable transform kernel gives other results", what);
        outputs_free(&q);
    }
    EXPECT(wg.gemm == winograd_gemm_select(), "%s: the plan's gemm is not winograd_gemm_select()",
           what);

    /* Every gemm path: within the tolerance, and the same bits again. */
    static const char *const gemms[] = {"blas", "avx512", "avx2"};
    for (size_t i = 0; i < sizeof gemms / sizeof gemms[0]; i++) {
        if (winograd_gemm_by_name(gemms[i], &wg.gemm) != 0) continue;
        Outputs q = outputs_run(&wg, &p, (size_t)cs->n), q2 = outputs_run(&wg, &p, (size_t)cs->n);
        const Errors eg = {rel_err(q.y, p.y, p.ny), rel_err(q.dx, p.dx, p.nx), rel_err(q.dw, p.dw, p.nw)};
        EXPECT(worst_of(eg) <= tol, "%s, gemm %s: off by y %.3g, dx %.3g, dW %.3g (tolerance %.0e)",
               what, gemms[i], eg.y, eg.dx, eg.dw, tol);
        EXPECT(memcmp(q.y, q2.y, p.ny * sizeof(float)) == 0 &&
                   memcmp(q.dx, q2.dx, p.nx * sizeof(float)) == 0 &&
                   memcmp(q.dw, q2.dw, p.nw * sizeof(float)) == 0,
               "%s, gemm %s: a second run gives other bits", what, gemms[i]);
        if (!(worst_of(eg) <= *worst)) *worst = worst_of(eg);
        outputs_free(&q), outputs_free(&q2);
    }
    outputs_free(&o);
    winograd_free(&wg, &ops_cpu);
    problem_free(&p);
}

/* A coefficient of one transform off by 1% must fail the tolerance: the
 * test would notice a wrong matrix. */
static void check_sensitivity(int r)
{
    const Case cs = {r, 2, 4, 5, 8, 7, r / 2, 2};
    Problem p = problem_new(&cs, 99);
    Winograd wg;
    if (winograd_plan(&wg, &ops_cpu, &p.win, cs.k, cs.max_batch)) {
        EXPECT(0, "sensitivity r=%d: winograd_plan failed", r);
        problem_free(&p);
        return;
    }
    const double tol = tol_of(r);
    EXPECT(worst_of(run_plan(&wg, &p, 2)) <= tol, "sensitivity r=%d: unperturbed plan fails", r);
    struct {
        WinogradComb *comb;
        const char *name;
    } combs[] = {{&wg.bt_rows[1], "B^T (input transform)"}, {&wg.b_rows[1], "B (dx)"},
                 {&wg.at_rows[1], "A^T (output transform)"}, {&wg.a_rows[1], "A (dM)"},
                 {&wg.g_rows[1], "G (filter transform)"}, {&wg.gt_rows[1], "G^T (dW)"}};
    for (size_t i = 0; i < sizeof combs / sizeof combs[0]; i++) {
        float keep = combs[i].comb->coef[0];
        combs[i].comb->coef[0] = keep * 1.01f;
        double e = worst_of(run_plan(&wg, &p, 2));
        combs[i].comb->coef[0] = keep;
        printf("  r=%d, one entry of %-24s 1%% off: worst error %.2e\n", r, combs[i].name, e);
        EXPECT(e > tol, "r=%d: an entry of %s 1%% off passes (error %.3g, tolerance %.0e)", r,
               combs[i].name, e, tol);
    }
    winograd_free(&wg, &ops_cpu);
    problem_free(&p);
}

/* ---- the conv layer: Winograd (default) against BASIN_CONV=im2col ------------- */

typedef struct {
    float *y, *dx, *dw, *db;
    int winograd;
} LayerRun;

static LayerRun run_layer(const LayerSpec *spec, Shape in, int index, size_t n, const char *env,
                          int drop_cols, const float *x, const float *w, const float *b, const float *dy)
{
    LayerRun out = {0};
    if (env)
        setenv(LAYER_CONV_ENV, env, 1);
    else
        unsetenv(LAYER_CONV_ENV);
    Layer l;
    if (layer_setup(&l, index, spec, in) || layer_alloc(&l, &ops_cpu, n)) {
        EXPECT(0, "layer setup/alloc failed (%s)", env ? env : "default");
        return out;
    }
    unsetenv(LAYER_CONV_ENV);
    if (drop_cols) { /* the im2col path that recomputes its columns in backward */
        ops_cpu.free(l.cols);
        l.cols = NULL;
    }
    const size_t nin = shape_size(l.in) * n, nout = shape_size(l.out) * n;
    out.y = xmalloc(nout * sizeof(float)), out.dx = xmalloc(nin * sizeof(float));
    out.dw = xmalloc(l.w_count * sizeof(float)), out.db = xmalloc(l.b_count * sizeof(float));
    for (size_t i = 0; i < nin; i++) out.dx[i] = 55.0f; /* must stay for the first layer */
    for (size_t i = 0; i < l.w_count; i++) out.dw[i] = NAN;
    l.w = (float *)w, l.b = (float *)b, l.dw = out.dw, l.db = out.db;
    ForwardCtx ctx = {.train = 1, .seed = 1, .sample_offset = 0};
    layer_forward(&l, &ops_cpu, x, out.y, n, &ctx);
    layer_backward(&l, &ops_cpu, x, out.y, dy, out.dx, n, &ctx);
    out.winograd = l.wino != NULL;
    layer_free(&l, &ops_cpu);
    return out;
}

static void run_free(LayerRun *r)
{
    free(r->y), free(r->dx), free(r->dw), free(r->db);
}

/* max |a - b| / max |b| in float */
static double rel_errf(const float *a, const float *b, size_t n)
{
    double d = 0.0, m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - (double)b[i]);
        if (!(e <= d)) d = e;
        if (fabs((double)b[i]) > m) m = fabs((double)b[i]);
    }
    return m > 0.0 ? d / m : d;
}

/* Forced Winograd (BASIN_CONV=winograd) against BASIN_CONV=im2col within the
 * tolerance; the default (unset) is bitwise one of the two, Winograd when
 * default_winograd. */
static void check_layer(const char *what, int units, int k, int pad, Shape in, size_t n, int first,
                        int default_winograd)
{
    const LayerSpec spec = {.kind = LAYER_CONV, .units = units, .k = k, .stride = 1, .pad = pad};
    Layer probe;
    if (layer_setup(&probe, first ? 0 : 1, &spec, in)) {
        EXPECT(0, "%s: layer_setup failed", what);
        return;
    }
    const size_t nin = shape_size(probe.in) * n, nout = shape_size(probe.out) * n;
    Gen gen = {(uint64_t)(k * 1000 + units)};
    float *x = uniform(&gen, nin), *w = uniform(&gen, probe.w_count);
    float *b = uniform(&gen, probe.b_count), *dy = uniform(&gen, nout);

    LayerRun ref = run_layer(&spec, in, probe.index, n, "im2col", 0, x, w, b, dy);
    LayerRun rec = run_layer(&spec, in, probe.index, n, "im2col", 1, x, w, b, dy);
    LayerRun win = run_layer(&spec, in, probe.index, n, "winograd", 0, x, w, b, dy);
    LayerRun def = run_layer(&spec, in, probe.index, n, NULL, 0, x, w, b, dy);
    if (!ref.y || !rec.y || !win.y || !def.y) goto done;
    EXPECT(!ref.winograd && !rec.winograd, "%s: BASIN_CONV=im2col still uses winograd", what);
    EXPECT(win.winograd, "%s: BASIN_CONV=winograd does not use winograd", what);
    EXPECT(def.winograd == default_winograd, "%s: the default path is %s, expected %s", what,
           def.winograd ? "winograd" : "im2col", default_winograd ? "winograd" : "im2col");

    const double tol = tol_of(k);
    const Errors e = {rel_errf(win.y, ref.y, nout), first ? 0.0 : rel_errf(win.dx, ref.dx, nin),
                      rel_errf(win.dw, ref.dw, probe.w_count)};
    const double edb = rel_errf(win.db, ref.db, probe.b_count);
    printf("  %-44s winograd vs im2col: y %.2e  dx %.2e  dW %.2e  db %.2e\n", what, e.y, e.dx, e.dw,
           edb);
    EXPECT(e.y <= tol && e.dx <= tol && e.dw <= tol && edb == 0.0,
           "%s: winograd and im2col differ (y %.3g, dx %.3g, dW %.3g, db %.3g; tolerance %.0e)", what,
           e.y, e.dx, e.dw, edb, tol);
    const LayerRun *same = default_winograd ? &win : &ref;
    EXPECT(rel_errf(def.y, same->y, nout) == 0.0 && rel_errf(def.dx, same->dx, nin) == 0.0 &&
               rel_errf(def.dw, same->dw, probe.w_count) == 0.0,
           "%s: the default path differs from BASIN_CONV=%s", what,
           default_winograd ? "winograd" : "im2col");
    /* im2col with its columns recomputed in backward is the same arithmetic */
    EXPECT(rel_errf(rec.y, ref.y, nout) == 0.0 && rel_errf(rec.dw, ref.dw, probe.w_count) == 0.0 &&
               rel_errf(rec.dx, ref.dx, nin) == 0.0,
           "%s: im2col with recomputed columns differs", what);
    if (first)
        for (size_t i = 0; i < nin; i++)
            if (win.dx[i] != 55.0f || def.dx[i] != 55.0f) {
                EXPECT(0, "%s: the first layer wrote dx", what);
                break;
            }
done:
    run_free(&ref), run_free(&rec), run_free(&win), run_free(&def);
    free(x), free(w), free(b), free(dy);
}

int main(void)
{
    check_matrices(3);
    check_matrices(5);

    const Case cases[] = {
        /* r  n  C_in C_out  H   W  pad  max_batch */
        {3, 1, 1, 1, 5, 5, 1, 1},
        {3, 5, 3, 8, 7, 9, 0, 5},
        {3, 5, 3, 8, 7, 9, 1, 8},
        {3, 1, 3, 1, 1, 1, 1, 1},
        {3, 1, 32, 64, 14, 14, 1, 1},
        {3, 5, 32, 8, 14, 14, 2, 5},
        {3, 5, 1, 64, 6, 5, 0, 5},
        {3, 5, 8, 3, 9, 7, 2, 6},
        {3, 5, 3, 8, 30, 30, 1, 5},   /* 15 tile rows: several chunks */
        {5, 1, 1, 1, 5, 5, 2, 1},
        {5, 5, 3, 8, 7, 9, 0, 5},
        {5, 5, 3, 8, 7, 9, 1, 5},
        {5, 1, 3, 8, 1, 1, 2, 3},
        {5, 5, 32, 64, 14, 14, 2, 5}, /* the cnn model's second conv */
        {5, 1, 1, 32, 28, 28, 2, 1},  /* ... and its first */
        {5, 5, 32, 1, 5, 5, 2, 5},
        {5, 1, 8, 64, 9, 6, 1, 4},
        {5, 5, 1, 8, 28, 28, 2, 5},   /* 14 tile rows: several chunks, the last partial */
        {3, 20, 3, 4, 6, 5, 1, 20},   /* two groups of images, the second partial */
        {5, 35, 2, 3, 7, 8, 2, 40},   /* three groups, the plan's batch larger */
        {3, 19, 4, 5, 13, 11, 1, 19}, /* 8 x 8 blocks of the layout moves and their edges */
        {3, 16, 17, 33, 9, 9, 1, 16}, /* the gemm kernels' row and column edges */
        {3, 3, 64, 64, 7, 7, 1, 3},   /* resnet20's last stage */
        {3, 4, 16, 16, 28, 28, 1, 4}, /* resnet20.s first stage */
    };
    double worst[2] = {0.0, 0.0};
    printf("Winograd against direct convolution in double (max |err| / max |ref|):\n");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_case(&cases[i], 1000 + i, &worst[cases[i].r == 5]);
    printf("worst error: r=3 %.2e (tolerance %.0e), r=5 %.2e (tolerance %.0e)\n", worst[0],
           tol_of(3), worst[1], tol_of(5));

    printf("perturbed transforms:\n");
    check_sensitivity(3);
    check_sensitivity(5);

    printf("conv layer:\n");
    check_layer("conv k3 p1 16->8 on 9x7, batch 3", 8, 3, 1, (Shape){16, 9, 7}, 3, 0, 1);
    check_layer("conv k3 p1 8->16 on 9x7, batch 3", 16, 3, 1, (Shape){8, 9, 7}, 3, 0, 0);
    check_layer("conv k5 p2 32->64 on 14x14, batch 18", 64, 5, 2, (Shape){32, 14, 14}, 18, 0, 1);
    check_layer("conv k5 p2 8->4 on 6x7 (first), batch 2", 4, 5, 2, (Shape){8, 6, 7}, 2, 1, 1);
    check_layer("conv k5 p2 1->32 on 28x28 (first), batch 2", 32, 5, 2, (Shape){1, 28, 28}, 2, 1, 0);
    check_layer("conv k3 p0 3->5 on 6x8 (first), batch 2", 5, 3, 0, (Shape){3, 6, 8}, 2, 1, 0);
    return test_finish("test_winograd");
}
