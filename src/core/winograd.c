/* Winograd F(2x2, rxr) convolution on the CPU: see core/winograd.h for the
 * algorithm and the layouts.
 *
 * Matrices. Correlation by F(2, r) is the transpose of the Toom-Cook linear
 * convolution of a 2-term by an r-term polynomial (product of t = r + 1
 * terms), evaluated at t points and interpolated back. With points written
 * homogeneously, (p : q), q = 0 for infinity, and for every point xi
 *
 *   N_xi(x, y) = prod_{j != xi} (q_j x - p_j y)      (degree t - 1)
 *   D_xi       = N_xi(p_xi, q_xi) = prod_{j != xi} (q_j p_xi - p_j q_xi)
 *
 * the rows are
 *
 *   B^T[xi][i] = coefficient of x^i y^(t-1-i) in N_xi     (t x t)
 *   G[xi][u]   = p_xi^u q_xi^(r-1-u) / D_xi               (t x r)
 *   A^T[a][xi] = (q_xi, p_xi)[a]                          (2 x t)
 *
 * Lagrange's 1/D_xi goes into G, so B and A are integer for integer points
 * and only the filter transform (once per step, not per tile) divides. The
 * sign of D_xi moves into B^T so that G's denominators are positive.
 *
 * Points: r = 3: 0, 1, -1, inf (Lavin & Gray's F(2x2, 3x3), up to signs).
 * r = 5: 0, 1, -1, 1/2, -2, inf. For the last pair, the largest error over
 * test_winograd's r = 5 cases (max |err| / max |ref| of y, dx, dW) was
 * 1.4e-5 with +-2, 1.6e-5 with +-1/2, 5.6e-6 with 2, -1/2 and 4.4e-6 with
 * 1/2, -2.
 * Scaling a point's row of G by a power of 2 and its row of B^T by the
 * inverse changes no float result, so only the points matter.
 *
 * Transforms. Each is a pass over the columns of the tiles (the t input
 * rows of a tile row at once) and one over their rows, and every pass is a
 * few linear combinations (comb_run) of contiguous vectors whose elements
 * are the images of a group and, where the pass allows, the tiles of a tile
 * row: loops the compiler vectorizes, with the zeros of the matrices
 * skipped and no gather. That takes the input of a group in a layout where
 * what the tiles of a tile row read is contiguous: pack_input puts the image
 * innermost and splits the padded columns into even and odd ones (tile tx
 * reads padded column 2 tx + j: parity j % 2, index tx + j / 2, contiguous
 * in tx). The output and dy use the same split. */
#include "core/winograd.h"

#include <assert.h>
#include <math.h>
#include <string.h>
#include <time.h>

#include "core/error.h"

/* Images per group: the innermost vector dimension of the transforms; a
 * multiple of the SIMD width. */
#define GROUP_IMAGES 16
/* Columns of a chunk, about: enough for the gemms to run near their peak,
 * few enough that a chunk's M (t*t K columns floats) stays in L2. */
#define CHUNK_COLUMNS 224

const char *const winograd_stage_names[WINOGRAD_STAGES] = {
    "filter transform", "pack x", "input transform", "gemm", "output transform", "unpack y",
    "pack dy", "output adjoint", "dU gemm", "filter adjoint", "dV gemm", "input adjoint",
    "unpack dx",
};

typedef struct {
    double p, q; /* the point p / q; (1, 0) is infinity */
} Point;
static const Point points_r3[4] = {{0, 1}, {1, 1}, {-1, 1}, {1, 0}};
static const Point points_r5[6] = {{0, 1}, {1, 1}, {-1, 1}, {1, 2}, {-2, 1}, {1, 0}};

/* ---- matrices ------------------------------------------------------------------ */

static void matrices_from_points(int r, const Point *pts, double *at, double *bt, double *g)
{
    const int t = r + 1;
    for (int xi = 0; xi < t; xi++) {
        const double p = pts[xi].p, q = pts[xi].q;
        /* N_xi, coefficient c[i] of x^i y^(deg - i), built one factor at a time */
        double c[WINOGRAD_MAX_T] = {1.0};
        int deg = 0;
        double d = 1.0;
        for (int j = 0; j < t; j++) {
            if (j == xi) continue;
            const double a = pts[j].q, b = -pts[j].p; /* factor a x + b y */
            for (int i = deg + 1; i >= 0; i--)
                c[i] = (i > 0 ? a * c[i - 1] : 0.0) + (i <= deg ? b * c[i] : 0.0);
            deg++;
            d *= a * p + b * q;
        }
        const double sign = d < 0 ? -1.0 : 1.0;
        for (int i = 0; i < t; i++) bt[xi * t + i] = sign * c[i] + 0.0; /* no -0 */
        for (int u = 0; u < r; u++) g[xi * r + u] = pow(p, u) * pow(q, r - 1 - u) / fabs(d);
        at[0 * t + xi] = q;
        at[1 * t + xi] = p;
    }
}

int winograd_matrices(int r, double *at, double *bt, double *g)
{
    if (r == 3)
        matrices_from_points(3, points_r3, at, bt, g);
    else if (r == 5)
        matrices_from_points(5, points_r5, at, bt, g);
    else
        return -1;
    return 0;
}

/* Row `row` of the (rows x cols) matrix m, or column `row` when by_col, as a
 * sparse combination. */
static WinogradComb comb_of(const double *m, int rows, int cols, int row, int by_col)
{
    WinogradComb c = {0};
    int len = by_col ? rows : cols;
    for (int i = 0; i < len; i++) {
        double v = by_col ? m[i * cols + row] : m[row * cols + i];
        if (v == 0.0) continue;
        c.idx[c.n] = i;
        c.coef[c.n] = (float)v;
        c.n++;
    }
    return c;
}

/* ---- the vector kernel of every transform ---------------------------------------- */

/* out[v] (=, or += when acc) sum_q coef[q] * in_q[v] for v < len, where
 * in_q = base + off[idx[q]]. out overlaps no input. Inlined into one copy
 * per instruction set below. */
static inline __attribute__((always_inline)) void
comb_kernel(const WinogradComb *c, const float *base, const size_t *off, float *restrict out,
            size_t len, int acc)
{
    /* Unused terms (q >= n) point at base with coefficient 0: never read. */
    const float *restrict p0 = base + off[c->idx[0]], *restrict p1 = base + off[c->idx[1]];
    const float *restrict p2 = base + off[c->idx[2]], *restrict p3 = base + off[c->idx[3]];
    const float *restrict p4 = base + off[c->idx[4]], *restrict p5 = base + off[c->idx[5]];
    const float a0 = c->coef[0], a1 = c->coef[1], a2 = c->coef[2];
    const float a3 = c->coef[3], a4 = c->coef[4], a5 = c->coef[5];
#define LOOP(expr)                                                    \
    do {                                                              \
        if (acc)                                                      \
            for (size_t v = 0; v < len; v++) out[v] += (expr);        \
        else                                                          \
            for (size_t v = 0; v < len; v++) out[v] = (expr);         \
    } while (0)
    switch (c->n) {
    case 0:
        if (!acc) memset(out, 0, len * sizeof *out);
        break;
    case 1: LOOP(a0 * p0[v]); break;
    case 2: LOOP(a0 * p0[v] + a1 * p1[v]); break;
    case 3: LOOP((a0 * p0[v] + a1 * p1[v]) + a2 * p2[v]); break;
    case 4: LOOP((a0 * p0[v] + a1 * p1[v]) + (a2 * p2[v] + a3 * p3[v])); break;
    case 5: LOOP((a0 * p0[v] + a1 * p1[v]) + (a2 * p2[v] + a3 * p3[v]) + a4 * p4[v]); break;
    case 6:
        LOOP((a0 * p0[v] + a1 * p1[v]) + (a2 * p2[v] + a3 * p3[v]) + (a4 * p4[v] + a5 * p5[v]));
        break;
    default: assert(0 && "a transform row has at most WINOGRAD_MAX_T terms");
    }
#undef LOOP
}

/* The build's instruction set (SSE2 on x86-64: 4 floats a vector) ... */
static void comb_base(const WinogradComb *c, const float *base, const size_t *off,
                      float *restrict out, size_t len, int acc)
{
    comb_kernel(c, base, off, out, len, acc);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_COMB_AVX2 1
/* ... and AVX2 (8 floats a vector) where the CPU has it: the transforms take
 * 1.2-1.4x less time (measured on the cnn model). Same operations in the
 * same order, and no FMA (not in the target), so the same bits. */
__attribute__((target("avx2"))) static void comb_avx2(const WinogradComb *c, const float *base,
                                                      const size_t *off, float *restrict out,
                                                      size_t len, int acc)
{
    comb_kernel(c, base, off, out, len, acc);
}
#endif

const CombFn winograd_comb_portable = comb_base;

static CombFn comb_select(void)
{
#ifdef HAVE_COMB_AVX2
    if (__builtin_cpu_supports("avx2")) return comb_avx2;
#endif
    return comb_base;
}

static void comb_run(const Winograd *wg, const WinogradComb *c, const float *base, const size_t *off,
                     float *out, size_t len, int acc)
{
    wg->comb(c, base, off, out, len, acc);
}

/* The same with in_q = base + idx[q] * stride. */
static void comb_strided(const Winograd *wg, const WinogradComb *c, const float *base,
                         size_t stride, float *out, size_t len, int acc)
{
    size_t off[WINOGRAD_MAX_T];
    for (int i = 0; i < WINOGRAD_MAX_T; i++) off[i] = (size_t)i * stride;
    wg->comb(c, base, off, out, len, acc);
}

/* ---- stage timing (bench/step --profile) ------------------------------------------- */

static double stage_clock(const Winograd *wg)
{
    if (!wg->profile) return 0.0;
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Adds the time since *t0 to the stage and restarts *t0. */
static void stage_done(Winograd *wg, WinogradStage stage, double *t0)
{
    if (!wg->profile) return;
    double t = stage_clock(wg);
    wg->profile->s[stage] += t - *t0;
    *t0 = t;
}

/* ---- plan ---------------------------------------------------------------------- */

int winograd_supported(const Window *g)
{
    return g->stride == 1 && g->kh == g->kw && (g->kh == 3 || g->kh == 5);
}

int winograd_pays(const Window *g)
{
    return winograd_supported(g) && g->c >= (g->kh == 3 ? 16 : 8);
}

int winograd_plan(Winograd *wg, const Ops *ops, const Window *g, int k, size_t max_batch)
{
    memset(wg, 0, sizeof *wg);
    assert(winograd_supported(g) && ops->host_memory);
    const int r = g->kh, t = r + 1;
    wg->r = r, wg->t = t, wg->tt = t * t;
    wg->win = *g;
    wg->k = k;
    wg->th = (g->oh + 1) / 2;
    wg->tw = (g->ow + 1) / 2;
    wg->hp = 2 * wg->th + t - 2;
    wg->wh = wg->tw + t / 2 - 1;
    wg->tiles = (size_t)wg->th * (size_t)wg->tw;
    wg->max_batch = max_batch;
    wg->group = max_batch < GROUP_IMAGES ? (max_batch ? max_batch : 1) : GROUP_IMAGES;
    size_t row_cols = (size_t)wg->tw * wg->group;
    wg->chunk_rows = CHUNK_COLUMNS / row_cols ? CHUNK_COLUMNS / row_cols : 1;
    if (wg->chunk_rows > (size_t)wg->th) wg->chunk_rows = (size_t)wg->th;

    wg->comb = comb_select();
    wg->gemm = winograd_gemm_select();
    winograd_matrices(r, wg->at, wg->bt, wg->g);
    for (int xi = 0; xi < t; xi++) {
        wg->bt_rows[xi] = comb_of(wg->bt, t, t, xi, 0);
        wg->a_rows[xi] = comb_of(wg->at, 2, t, xi, 1);
        wg->g_rows[xi] = comb_of(wg->g, t, r, xi, 0);
        wg->b_rows[xi] = comb_of(wg->bt, t, t, xi, 1);
    }
    for (int a = 0; a < 2; a++) wg->at_rows[a] = comb_of(wg->at, 2, t, a, 0);
    for (int u = 0; u < r; u++) wg->gt_rows[u] = comb_of(wg->g, t, r, u, 1);

    const size_t tt = (size_t)wg->tt, C = (size_t)g->c, K = (size_t)k, kc = K * C;
    const size_t grp = wg->group, cols = wg->chunk_rows * (size_t)wg->tw * grp;
    const size_t wp = 2 * (size_t)wg->wh, tw = (size_t)wg->tw;
    const size_t floats[] = {
        tt * kc,                                     /* u */
        tt * kc,                                     /* du */
        tt * C * max_batch * wg->tiles,              /* v */
        tt * K * cols,                               /* m */
        tt * C * cols,                               /* dv */
        C * (size_t)wg->hp * wp * grp,               /* xs */
        K * 2 * (size_t)wg->th * 2 * tw * grp,       /* ys */
        (size_t)t * wp * grp,                        /* rows */
        2 * (size_t)t * tw * grp,                    /* tmp */
        (size_t)(r * r + t * r) * kc,                /* wscratch */
    };
    float **bufs[] = {&wg->u, &wg->du, &wg->v, &wg->m, &wg->dv, &wg->xs, &wg->ys, &wg->rows,
                      &wg->tmp, &wg->wscratch};
    size_t total = 0;
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) total += floats[i];
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        *bufs[i] = ops->alloc((floats[i] ? floats[i] : 1) * sizeof(float));
        if (!*bufs[i]) {
            winograd_free(wg, ops);
            return BASIN_FAIL(BASIN_ERR_RUNTIME,
                              "cannot allocate the Winograd workspace (%zu MiB for %zu images)",
                              (total * sizeof(float)) >> 20, max_batch);
        }
    }
    return BASIN_OK;
}

void winograd_free(Winograd *wg, const Ops *ops)
{
    float **bufs[] = {&wg->u, &wg->du, &wg->v, &wg->m, &wg->dv, &wg->xs, &wg->ys, &wg->rows,
                      &wg->tmp, &wg->wscratch};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        ops->free(*bufs[i]);
        *bufs[i] = NULL;
    }
}

/* ---- filter transform and its adjoint (vectors over the K C filters) ------------- */

static void filter_transform(Winograd *wg, const float *w)
{
    const int r = wg->r, t = wg->t, rr = r * r;
    const size_t kc = (size_t)wg->k * (size_t)wg->win.c;
    float *wt = wg->wscratch;                    /* (r r, K C): w transposed */
    float *tmp = wg->wscratch + (size_t)rr * kc; /* (t r, K C): G w */
    for (size_t f = 0; f < kc; f++)
        for (int uv = 0; uv < rr; uv++) wt[(size_t)uv * kc + f] = w[f * (size_t)rr + (size_t)uv];
    for (int xi = 0; xi < t; xi++)
        for (int v = 0; v < r; v++)
            comb_strided(wg, &wg->g_rows[xi], wt + (size_t)v * kc, (size_t)r * kc,
                         tmp + (size_t)(xi * r + v) * kc, kc, 0);
    for (int xi = 0; xi < t; xi++)
        for (int xj = 0; xj < t; xj++)
            comb_strided(wg, &wg->g_rows[xj], tmp + (size_t)(xi * r) * kc, kc,
                         wg->u + (size_t)(xi * t + xj) * kc, kc, 0);
}

static void filter_adjoint(Winograd *wg, float *dw)
{
    const int r = wg->r, t = wg->t, rr = r * r;
    const size_t kc = (size_t)wg->k * (size_t)wg->win.c;
    float *dwt = wg->wscratch;                   /* (r r, K C) */
    float *tmp = wg->wscratch + (size_t)rr * kc; /* (r t, K C): G^T dU */
    for (int u = 0; u < r; u++)
        for (int xj = 0; xj < t; xj++)
            comb_strided(wg, &wg->gt_rows[u], wg->du + (size_t)xj * kc, (size_t)t * kc,
                         tmp + (size_t)(u * t + xj) * kc, kc, 0);
    for (int u = 0; u < r; u++)
        for (int v = 0; v < r; v++)
            comb_strided(wg, &wg->gt_rows[v], tmp + (size_t)(u * t) * kc, kc,
                         dwt + (size_t)(u * r + v) * kc, kc, 0);
    for (size_t f = 0; f < kc; f++)
        for (int uv = 0; uv < rr; uv++) dw[f * (size_t)rr + (size_t)uv] = dwt[(size_t)uv * kc + f];
}

/* ---- a group's layouts -------------------------------------------------------------- */

/* Each of these moves one row at a time between the images' layout (a row
 * of each image, images chw floats apart) and the group's (for each column,
 * the g images contiguous): a transpose of g x W, done in 8 x 8 blocks with
 * AVX2 where the CPU has it. Column ix of the row goes to (or comes from)
 * position pos(ix) = (q & 1) half + (q >> 1), q = ix + shift, of the
 * group's row. Only copies (and, for the output, the bias added to each
 * value once), so every instruction set gives the same bits. */
typedef struct {
    size_t w;     /* columns of the images' row */
    size_t shift; /* q = ix + shift (the padding, for the input) */
    size_t half;  /* positions of one parity */
    size_t g;     /* images */
    size_t chw;   /* floats between one image and the next */
} RowMove;

static inline size_t row_pos(const RowMove *m, size_t ix)
{
    const size_t q = ix + m->shift;
    return ((q & 1) * m->half + (q >> 1)) * m->g;
}

/* dst (group's row)[pos(ix) + s] = src[s chw + ix], s < g, ix < w */
static void to_group_base(const RowMove *m, const float *src, float *restrict dst, size_t s0,
                          size_t ix0)
{
    for (size_t ix = ix0; ix < m->w; ix++) {
        float *d = dst + row_pos(m, ix);
        for (size_t s = s0; s < m->g; s++) d[s] = src[s * m->chw + ix];
    }
}

/* dst[s chw + ix] = src (group's row)[pos(ix) + s] (+ bias when add) */
static void from_group_base(const RowMove *m, const float *restrict src, float *dst, float bias,
                            int add, size_t s0, size_t ix0)
{
    for (size_t s = s0; s < m->g; s++) {
        float *d = dst + s * m->chw;
        if (add)
            for (size_t ix = ix0; ix < m->w; ix++) d[ix] = src[row_pos(m, ix) + s] + bias;
        else
            for (size_t ix = ix0; ix < m->w; ix++) d[ix] = src[row_pos(m, ix) + s];
    }
}

static void to_group_portable(const RowMove *m, const float *src, float *dst)
{
    to_group_base(m, src, dst, 0, 0);
}

static void from_group_portable(const RowMove *m, const float *src, float *dst, float bias, int add)
{
    from_group_base(m, src, dst, bias, add, 0, 0);
}

#if defined(HAVE_COMB_AVX2)
#include <immintrin.h>

/* r[j] (8 rows of 8) -> r[j] = column j */
__attribute__((target("avx2"))) static inline void transpose8(__m256 r[8])
{
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int j = 0; j < 4; j++) {
        r[j] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x20);
        r[j + 4] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x31);
    }
}

__attribute__((target("avx2"))) static void to_group_avx2(const RowMove *m, const float *src,
                                                          float *dst)
{
    const size_t g8 = m->g & ~(size_t)7, w8 = m->w & ~(size_t)7;
    for (size_t s = 0; s < g8; s += 8)
        for (size_t ix = 0; ix < w8; ix += 8) {
            __m256 r[8];
            for (int j = 0; j < 8; j++) r[j] = _mm256_loadu_ps(src + (s + (size_t)j) * m->chw + ix);
            transpose8(r);
            for (int j = 0; j < 8; j++) _mm256_storeu_ps(dst + row_pos(m, ix + (size_t)j) + s, r[j]);
        }
    if (w8 < m->w && m->w >= 8) { /* the last 8 columns again: some written twice, alike */
        const size_t ix = m->w - 8;
        for (size_t s = 0; s < g8; s += 8) {
            __m256 r[8];
            for (int j = 0; j < 8; j++) r[j] = _mm256_loadu_ps(src + (s + (size_t)j) * m->chw + ix);
            transpose8(r);
            for (int j = 0; j < 8; j++) _mm256_storeu_ps(dst + row_pos(m, ix + (size_t)j) + s, r[j]);
        }
    } else if (w8 < m->w) { /* fewer than 8 columns */
        for (size_t ix = w8; ix < m->w; ix++) {
            float *d = dst + row_pos(m, ix);
            for (size_t s = 0; s < g8; s++) d[s] = src[s * m->chw + ix];
        }
    }
    if (g8 < m->g) to_group_base(m, src, dst, g8, 0);
}

__attribute__((target("avx2"))) static void from_group_avx2(const RowMove *m, const float *src,
                                                            float *dst, float bias, int add)
{
    const size_t g8 = m->g & ~(size_t)7, w8 = m->w & ~(size_t)7;
    const __m256 vb = _mm256_set1_ps(bias);
    for (size_t s = 0; s < g8; s += 8)
        for (size_t ix = 0; ix < w8; ix += 8) {
            __m256 r[8];
            for (int j = 0; j < 8; j++) r[j] = _mm256_loadu_ps(src + row_pos(m, ix + (size_t)j) + s);
            transpose8(r);
            for (int j = 0; j < 8; j++)
                _mm256_storeu_ps(dst + (s + (size_t)j) * m->chw + ix,
                                 add ? _mm256_add_ps(r[j], vb) : r[j]);
        }
    if (w8 < m->w && m->w >= 8) { /* the last 8 columns again: some written twice, alike */
        const size_t ix = m->w - 8;
        for (size_t s = 0; s < g8; s += 8) {
            __m256 r[8];
            for (int j = 0; j < 8; j++) r[j] = _mm256_loadu_ps(src + row_pos(m, ix + (size_t)j) + s);
            transpose8(r);
            for (int j = 0; j < 8; j++)
                _mm256_storeu_ps(dst + (s + (size_t)j) * m->chw + ix,
                                 add ? _mm256_add_ps(r[j], vb) : r[j]);
        }
    } else if (w8 < m->w) { /* fewer than 8 columns */
        for (size_t s = 0; s < g8; s++) {
            float *d = dst + s * m->chw;
            for (size_t ix = w8; ix < m->w; ix++)
                d[ix] = add ? src[row_pos(m, ix) + s] + bias : src[row_pos(m, ix) + s];
        }
    }
    if (g8 < m->g) from_group_base(m, src, dst, bias, add, g8, 0);
}
#endif

static void to_group(const RowMove *m, const float *src, float *dst)
{
#if defined(HAVE_COMB_AVX2)
    if (__builtin_cpu_supports("avx2")) {
        to_group_avx2(m, src, dst);
        return;
    }
#endif
    to_group_portable(m, src, dst);
}

static void from_group(const RowMove *m, const float *src, float *dst, float bias, int add)
{
#if defined(HAVE_COMB_AVX2)
    if (__builtin_cpu_supports("avx2")) {
        from_group_avx2(m, src, dst, bias, add);
        return;
    }
#endif
    from_group_portable(m, src, dst, bias, add);
}

/* xs (C, hp, 2, wh, g): x of images s0 .. s0 + g, padded row q = iy + pad,
 * padded column 2 u + parity = ix + pad; zero where that is padding. */
static void pack_input(Winograd *wg, const float *x, size_t s0, size_t g)
{
    const Window *w = &wg->win;
    const size_t C = (size_t)w->c, H = (size_t)w->h, W = (size_t)w->w, wh = (size_t)wg->wh;
    const size_t pad = (size_t)w->pad, chw = C * H * W, hp = (size_t)wg->hp, rowlen = 2 * wh * g;
    const RowMove mv = {W, pad, wh, g, chw};
    for (size_t c = 0; c < C; c++) {
        float *plane = wg->xs + c * hp * rowlen;
        /* padding rows above and below, and the padded columns of each row */
        memset(plane, 0, pad * rowlen * sizeof(float));
        memset(plane + (pad + H) * rowlen, 0, (hp - pad - H) * rowlen * sizeof(float));
        for (size_t iy = 0; iy < H; iy++) {
            float *restrict dst = plane + (iy + pad) * rowlen;
            for (size_t q = 0; q < 2 * wh; q++)
                if (q < pad || q >= pad + W) memset(dst + ((q & 1) * wh + (q >> 1)) * g, 0, g * sizeof(float));
            to_group(&mv, x + s0 * chw + (c * H + iy) * W, dst);
        }
    }
}

/* dx of images s0 .. s0 + g out of xs, dropping the padding */
static void unpack_input(const Winograd *wg, float *dx, size_t s0, size_t g)
{
    const Window *w = &wg->win;
    const size_t C = (size_t)w->c, H = (size_t)w->h, W = (size_t)w->w, wh = (size_t)wg->wh;
    const size_t pad = (size_t)w->pad, chw = C * H * W;
    const RowMove mv = {W, pad, wh, g, chw};
    for (size_t c = 0; c < C; c++)
        for (size_t iy = 0; iy < H; iy++)
            from_group(&mv, wg->xs + (c * (size_t)wg->hp + iy + pad) * 2 * wh * g,
                       dx + s0 * chw + (c * H + iy) * W, 0.0f, 0);
}

/* ys (K, 2 th, 2, tw, g) -> y of images s0 .. s0 + g, plus bias (b NULL: none) */
static void unpack_output(const Winograd *wg, const float *b, float *y, size_t s0, size_t g)
{
    const Window *w = &wg->win;
    const size_t K = (size_t)wg->k, OH = (size_t)w->oh, OW = (size_t)w->ow, tw = (size_t)wg->tw;
    const size_t rows = 2 * (size_t)wg->th, khw = K * OH * OW;
    const RowMove mv = {OW, 0, tw, g, khw};
    for (size_t k = 0; k < K; k++) {
        const float bias = b ? b[k] : 0.0f;
        for (size_t oy = 0; oy < OH; oy++)
            from_group(&mv, wg->ys + (k * rows + oy) * 2 * tw * g, y + s0 * khw + (k * OH + oy) * OW,
                       bias, 1);
    }
}

/* dy of images s0 .. s0 + g -> ys, zero past OH, OW */
static void pack_output(Winograd *wg, const float *dy, size_t s0, size_t g)
{
    const Window *w = &wg->win;
    const size_t K = (size_t)wg->k, OH = (size_t)w->oh, OW = (size_t)w->ow, tw = (size_t)wg->tw;
    const size_t rows = 2 * (size_t)wg->th, khw = K * OH * OW;
    const RowMove mv = {OW, 0, tw, g, khw};
    if (OH < rows || OW < 2 * tw) memset(wg->ys, 0, K * rows * 2 * tw * g * sizeof(float));
    for (size_t k = 0; k < K; k++)
        for (size_t oy = 0; oy < OH; oy++)
            to_group(&mv, dy + s0 * khw + (k * OH + oy) * OW, wg->ys + (k * rows + oy) * 2 * tw * g);
}

/* ---- one chunk: tile rows ty0 .. ty1 of a group of g images ------------------------ */

/* V[xi][c][gcol + (ty tw + tx) g + s] for the chunk's tile rows */
static void input_transform(Winograd *wg, size_t g, int ty0, int ty1, size_t T, size_t gcol)
{
    const int t = wg->t;
    const size_t C = (size_t)wg->win.c, wp = 2 * (size_t)wg->wh, rowlen = wp * g;
    const size_t len = (size_t)wg->tw * g; /* one tile row */
    size_t off[WINOGRAD_MAX_T];            /* tile column j within a pass row */
    for (int j = 0; j < t; j++) off[j] = ((size_t)(j & 1) * (size_t)wg->wh + (size_t)(j >> 1)) * g;
    for (size_t c = 0; c < C; c++)
        for (int ty = ty0; ty < ty1; ty++) {
            /* columns: rows[xi] = sum_i BT[xi][i] (padded row 2 ty + i) */
            const float *in = wg->xs + (c * (size_t)wg->hp + 2 * (size_t)ty) * rowlen;
            for (int xi = 0; xi < t; xi++)
                comb_strided(wg, &wg->bt_rows[xi], in, rowlen, wg->rows + (size_t)xi * rowlen, rowlen, 0);
            /* rows: V[xi t + xj] = sum_j BT[xj][j] rows[xi] at tile column j */
            float *v = wg->v + c * T + gcol + (size_t)ty * len;
            for (int xi = 0; xi < t; xi++)
                for (int xj = 0; xj < t; xj++)
                    comb_run(wg, &wg->bt_rows[xj], wg->rows + (size_t)xi * rowlen, off,
                             v + (size_t)(xi * t + xj) * C * T, len, 0);
        }
}

/* xs (the group's dx, zeroed before its first chunk) += adjoint input
 * transform of the chunk's dV (t*t, C, cols) */
static void input_adjoint(Winograd *wg, size_t g, int ty0, int ty1, size_t cols)
{
    const int t = wg->t;
    const size_t C = (size_t)wg->win.c, wp = 2 * (size_t)wg->wh, rowlen = wp * g;
    const size_t len = (size_t)wg->tw * g, plane = C * cols;
    size_t off[WINOGRAD_MAX_T];
    for (int j = 0; j < t; j++) off[j] = ((size_t)(j & 1) * (size_t)wg->wh + (size_t)(j >> 1)) * g;
    for (size_t c = 0; c < C; c++)
        for (int ty = ty0; ty < ty1; ty++) {
            const float *dv = wg->dv + c * cols + (size_t)(ty - ty0) * len;
            /* rows, adjoint: rows[xi] at tile column j += sum_xj BT[xj][j] dV[xi t + xj] */
            memset(wg->rows, 0, (size_t)t * rowlen * sizeof(float));
            for (int xi = 0; xi < t; xi++)
                for (int j = 0; j < t; j++)
                    comb_strided(wg, &wg->b_rows[j], dv + (size_t)(xi * t) * plane, plane,
                                 wg->rows + (size_t)xi * rowlen + off[j], len, 1);
            /* columns, adjoint: padded row 2 ty + i += sum_xi BT[xi][i] rows[xi] */
            float *dx = wg->xs + (c * (size_t)wg->hp + 2 * (size_t)ty) * rowlen;
            for (int i = 0; i < t; i++)
                comb_strided(wg, &wg->b_rows[i], wg->rows, rowlen, dx + (size_t)i * rowlen, rowlen, 1);
        }
}

/* ys rows 2 ty, 2 ty + 1 = A^T M A for the chunk's M (t*t, K, cols) */
static void output_transform(Winograd *wg, size_t g, int ty0, int ty1, size_t cols)
{
    const int t = wg->t;
    const size_t K = (size_t)wg->k, len = (size_t)wg->tw * g, plane = K * cols;
    const size_t yrow = 2 * len; /* one output row of ys: both parities */
    for (size_t k = 0; k < K; k++)
        for (int ty = ty0; ty < ty1; ty++) {
            const float *m = wg->m + k * cols + (size_t)(ty - ty0) * len;
            /* columns: tmp[a t + xj] = sum_xi AT[a][xi] M[xi t + xj] */
            for (int a = 0; a < 2; a++)
                for (int xj = 0; xj < t; xj++)
                    comb_strided(wg, &wg->at_rows[a], m + (size_t)xj * plane, (size_t)t * plane,
                                 wg->tmp + (size_t)(a * t + xj) * len, len, 0);
            /* rows: output (2 ty + a, parity b) = sum_xj AT[b][xj] tmp[a t + xj] */
            float *y = wg->ys + (k * 2 * (size_t)wg->th + 2 * (size_t)ty) * yrow;
            for (int a = 0; a < 2; a++)
                for (int b = 0; b < 2; b++)
                    comb_strided(wg, &wg->at_rows[b], wg->tmp + (size_t)(a * t) * len, len,
                                 y + (size_t)a * yrow + (size_t)b * len, len, 0);
        }
}

/* the chunk's dM (t*t, K, cols) = A dY A^T from ys (the group's dy) */
static void output_adjoint(Winograd *wg, size_t g, int ty0, int ty1, size_t cols)
{
    const int t = wg->t;
    const size_t K = (size_t)wg->k, len = (size_t)wg->tw * g, plane = K * cols;
    const size_t yrow = 2 * len;
    for (size_t k = 0; k < K; k++)
        for (int ty = ty0; ty < ty1; ty++) {
            const float *dy = wg->ys + (k * 2 * (size_t)wg->th + 2 * (size_t)ty) * yrow;
            /* columns: tmp[xi 2 + b] = sum_a AT[a][xi] dY(2 ty + a, parity b) */
            for (int xi = 0; xi < t; xi++)
                for (int b = 0; b < 2; b++)
                    comb_strided(wg, &wg->a_rows[xi], dy + (size_t)b * len, yrow,
                                 wg->tmp + (size_t)(xi * 2 + b) * len, len, 0);
            /* rows: dM[xi t + xj] = sum_b AT[b][xj] tmp[xi 2 + b] */
            float *dm = wg->m + k * cols + (size_t)(ty - ty0) * len;
            for (int xi = 0; xi < t; xi++)
                for (int xj = 0; xj < t; xj++)
                    comb_strided(wg, &wg->a_rows[xj], wg->tmp + (size_t)(xi * 2) * len, len,
                                 dm + (size_t)(xi * t + xj) * plane, len, 0);
        }
}

/* ---- forward, backward ------------------------------------------------------------ */

/* c (m, n; rows n apart) = op(U) (m, k) b (k, n; rows ldb apart), op(U) = U
 * (K, C) or, with trans, U^T (C, K): on the plan's kernel, or the op
 * table's gemm. */
static void gemm_u(const Winograd *wg, const Ops *ops, int trans, size_t m, size_t n, size_t k,
                   const float *u, const float *b, size_t ldb, float *c)
{
    const size_t ldu = trans ? m : k; /* C, U's row length */
    if (wg->gemm)
        wg->gemm->nn(m, n, k, u, trans ? 1 : ldu, trans ? ldu : 1, b, ldb, c, n);
    else
        ops->gemm(trans, 0, m, n, k, 1.0f, u, ldu, b, ldb, 0.0f, c, n);
}

void winograd_forward(Winograd *wg, const Ops *ops, const float *w, const float *b,
                      const float *x, float *y, size_t n)
{
    assert(n <= wg->max_batch);
    const size_t K = (size_t)wg->k, C = (size_t)wg->win.c, T = n * wg->tiles;
    double t0 = stage_clock(wg);
    filter_transform(wg, w);
    stage_done(wg, WINOGRAD_FILTER, &t0);
    for (size_t s0 = 0; s0 < n; s0 += wg->group) {
        const size_t g = n - s0 < wg->group ? n - s0 : wg->group;
        const size_t gcol = s0 * wg->tiles; /* the group's first column */
        pack_input(wg, x, s0, g);
        stage_done(wg, WINOGRAD_PACK, &t0);
        for (int ty0 = 0; ty0 < wg->th; ty0 += (int)wg->chunk_rows) {
            const int ty1 = ty0 + (int)wg->chunk_rows < wg->th ? ty0 + (int)wg->chunk_rows : wg->th;
            const size_t col0 = gcol + (size_t)ty0 * (size_t)wg->tw * g;
            const size_t cols = (size_t)(ty1 - ty0) * (size_t)wg->tw * g;
            input_transform(wg, g, ty0, ty1, T, gcol);
            stage_done(wg, WINOGRAD_INPUT, &t0);
            for (int xi = 0; xi < wg->tt; xi++) /* M[xi] (K, cols) = U[xi] (K, C) V[xi] (C, cols) */
                gemm_u(wg, ops, 0, K, cols, C, wg->u + (size_t)xi * K * C, wg->v + (size_t)xi * C * T + col0,
                       T, wg->m + (size_t)xi * K * cols);
            stage_done(wg, WINOGRAD_GEMM, &t0);
            output_transform(wg, g, ty0, ty1, cols);
            stage_done(wg, WINOGRAD_OUTPUT, &t0);
        }
        unpack_output(wg, b, y, s0, g);
        stage_done(wg, WINOGRAD_UNPACK, &t0);
    }
}

void winograd_backward(Winograd *wg, const Ops *ops, const float *dy, float *dw, float *dx,
                       size_t n)
{
    assert(n <= wg->max_batch);
    const size_t K = (size_t)wg->k, C = (size_t)wg->win.c, T = n * wg->tiles;
    double t0 = stage_clock(wg);
    if (n == 0) memset(wg->du, 0, (size_t)wg->tt * K * C * sizeof(float));
    for (size_t s0 = 0; s0 < n; s0 += wg->group) {
        const size_t g = n - s0 < wg->group ? n - s0 : wg->group;
        const size_t gcol = s0 * wg->tiles;
        pack_output(wg, dy, s0, g);
        if (dx) memset(wg->xs, 0, C * (size_t)wg->hp * 2 * (size_t)wg->wh * g * sizeof(float));
        stage_done(wg, WINOGRAD_PACK_DY, &t0);
        for (int ty0 = 0; ty0 < wg->th; ty0 += (int)wg->chunk_rows) {
            const int ty1 = ty0 + (int)wg->chunk_rows < wg->th ? ty0 + (int)wg->chunk_rows : wg->th;
            const size_t col0 = gcol + (size_t)ty0 * (size_t)wg->tw * g;
            const size_t cols = (size_t)(ty1 - ty0) * (size_t)wg->tw * g;
            output_adjoint(wg, g, ty0, ty1, cols);
            stage_done(wg, WINOGRAD_OUTPUT_ADJ, &t0);
            const float beta = col0 ? 1.0f : 0.0f; /* dU sums over every chunk */
            for (int xi = 0; xi < wg->tt; xi++) { /* dU[xi] (K, C) += dM[xi] (K, cols) V[xi]^T */
                const float *dm = wg->m + (size_t)xi * K * cols, *v = wg->v + (size_t)xi * C * T + col0;
                float *du = wg->du + (size_t)xi * K * C;
                if (wg->gemm)
                    wg->gemm->nt(K, C, cols, dm, cols, v, T, du, C, col0 != 0);
                else
                    ops->gemm(0, 1, K, C, cols, 1.0f, dm, cols, v, T, beta, du, C);
            }
            stage_done(wg, WINOGRAD_GEMM_DU, &t0);
            if (!dx) continue;
            for (int xi = 0; xi < wg->tt; xi++) /* dV[xi] (C, cols) = U[xi]^T (C, K) dM[xi] */
                gemm_u(wg, ops, 1, C, cols, K, wg->u + (size_t)xi * K * C, wg->m + (size_t)xi * K * cols, cols,
                       wg->dv + (size_t)xi * C * cols);
            stage_done(wg, WINOGRAD_GEMM_DV, &t0);
            input_adjoint(wg, g, ty0, ty1, cols);
            stage_done(wg, WINOGRAD_INPUT_ADJ, &t0);
        }
        if (dx) unpack_input(wg, dx, s0, g);
        stage_done(wg, WINOGRAD_UNPACK_DX, &t0);
    }
    filter_adjoint(wg, dw);
    stage_done(wg, WINOGRAD_FILTER_ADJ, &t0);
}
