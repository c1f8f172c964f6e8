/* basin-bench-step: throughput of one training step on one process.
 *
 * A step is what the training loop does per batch, minus reading data and
 * the all-reduce: net_forward (training mode, dropout on), net_backward with
 * scale 1/batch, and sgd_step_range over the whole flat buffer. Inputs and
 * labels are random (fixed seed) and built once, outside the timed loop.
 *
 * Reported: the median over repeats of images/s, the achieved GFLOP/s, and
 * the same process's single-core SGEMM rate for reference:
 *
 *   FLOPs/sample = 2 * (forward MACs + backward MACs)
 *   backward MACs = sum over fc/conv layers of
 *                   MACs for dW (= the layer's forward MACs)
 *                 + MACs for dx (the same again), except the first fc/conv
 *                   layer, whose input gradient nobody needs
 *
 * so GFLOP/s counts the useful arithmetic of a step, not what an
 * implementation happens to do. Every rate comes twice: by the wall clock
 * and by the process's CPU time. They agree on an idle core; on a shared
 * machine the CPU-time rate still measures the code, not the scheduler's
 * share. The last line of output is one JSON object
 * for scripts (bench/step/run.sh).
 *
 * --profile adds a per-layer breakdown: the same step, layer by layer as
 * net_forward / net_backward run them, each layer timed on its own.
 * --profile-json FILE also writes it for basin-plan calibrate: one JSON
 * object with model, batch, n_params, per layer (every layer of the
 * network, forward order) kind, fwd_ms and bwd_ms (CPU ms per step; 0 for
 * a layer the step skips), and loss_fwd_ms, loss_bwd_ms, sgd_ms.
 *
 * --device cuda runs the step through the CUDA backend (GPU 0) instead:
 * then every timed step also copies its batch from host memory to the
 * device first, as the trainer does, and the copy and the compute (forward,
 * backward, SGD, up to a stream synchronisation) are timed apart, and
 * CUDA events split the compute into forward, backward and SGD in device
 * time. Wall-time rates are the ones that count there.
 */
#include <cblas.h>
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/error.h"
#include "core/layers.h"
#include "core/net.h"
#include "core/ops.h"
#include "core/optim.h"
#include "core/rng.h"
#include "core/winograd.h"
#include "models/models.h"

#ifdef BASIN_HAVE_CUDA
#include "ops_cuda.h"
#endif

#define INPUT_SHAPE ((Shape){1, 28, 28}) /* --input default */
#define CLASSES 10                       /* --classes default */
#define INPUT_MAX_FLOATS ((size_t)1 << 24) /* --input: at most this many values per sample */
#define DATA_SEED 1234u
#define INIT_SEED 42u
#define LR 0.01f
#define MOMENTUM 0.9f
#define WEIGHT_DECAY 5e-4f
#define SGEMM_SQUARE 1024
#define SGEMM_RUNS 7
#define SGEMM_MIN_S 0.02 /* each timed SGEMM run lasts at least this long */

typedef struct {
    const char *model;
    const char *device;
    int batch, steps, repeats, warmup, threads;
    int profile;
    const char *profile_json; /* --profile-json FILE, or NULL */
    Shape in;    /* per-sample input shape (--input) */
    int classes; /* --classes */
    const char *wino_gemm; /* --wino-gemm NAME, or NULL: the plan's choice */
} Options;

typedef struct {
    float *x;        /* (batch, C, H, W) */
    int32_t *labels; /* (batch) */
    float *host_x;   /* the same in host memory */
    int32_t *host_labels;
} Data;

/* A rate measured by the wall clock and by the process's CPU time; the two
 * agree on an idle machine with one BLAS thread. */
typedef struct {
    double wall, cpu;
} Rate;

/* The single gemm call of a layer's forward pass, as layers.c issues it. */
typedef struct {
    int layer; /* index in the network, -1 when none */
    int trans_a, trans_b;
    size_t m, n, k;
} GemmShape;

/* ---- command line ---------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: basin-bench-step [options]\n"
            "Time full training steps (forward + backward + SGD) of a model on one process.\n"
            "\n"
            "  --model NAME|SPEC  preset (mlp, cnn, cnn-small, resnet20, resnet56, resnet50)\n"
            "                     or layer spec (default mlp)\n"
            "  --input CxHxW      shape of one input image (default 1x28x28)\n"
            "  --classes N        classes, the last fc layer's width (default 10; resnet50\n"
            "                     wants 1000)\n"
            "  --batch N          samples per step (default 64)\n"
            "  --steps N          timed steps per repeat (default 20)\n"
            "  --repeats R        timed repeats; the median is reported (default 5)\n"
            "  --warmup N         untimed steps first (default 3)\n"
            "  --threads N        BLAS threads (default 1; with more, the CPU-time rates\n"
            "                     divide by the CPU seconds of all threads)\n"
            "  --profile          also print a per-layer forward/backward breakdown (cpu)\n"
            "  --profile-json F   --profile, and write it to F as JSON (basin-plan calibrate)\n"
            "  --device cpu|cuda  backend: OpenBLAS, or the CUDA backend on GPU 0 with the\n"
            "                     batch copied from host memory every step (default cpu)\n"
            "  --wino-gemm K      the gemms of Winograd convs: auto (the plan's choice for\n"
            "                     this CPU, default), blas (the op table's), avx512 or avx2\n"
            "  --help             this text\n"
            "\n"
            "The last line of output is one JSON object with the results.\n");
}

/* "CxHxW", each a positive integer, at most INPUT_MAX_FLOATS values in all;
 * or -1 after one line naming the option. */
static int parse_shape(const char *s, Shape *out)
{
    long v[3];
    const char *p = s;
    for (int i = 0; i < 3; i++) {
        char *end;
        errno = 0;
        if (*p < '0' || *p > '9') goto bad;
        v[i] = strtol(p, &end, 10);
        if (errno || v[i] < 1 || v[i] > 65536) goto bad;
        if (i < 2 && *end != 'x') goto bad;
        if (i == 2 && *end) goto bad;
        p = end + 1;
    }
    if ((size_t)v[0] * (size_t)v[1] * (size_t)v[2] > INPUT_MAX_FLOATS) {
        basin_error(BASIN_ERR_USAGE, "--input %s: more than %zu values per image", s,
                    INPUT_MAX_FLOATS);
        return -1;
    }
    *out = (Shape){(int)v[0], (int)v[1], (int)v[2]};
    return 0;
bad:
    basin_error(BASIN_ERR_USAGE, "--input wants CxHxW with positive integers (e.g. 3x32x32), not '%s'",
                s);
    return -1;
}

/* A whole-string integer in [lo, hi], or -1 after one line naming the option. */
static int parse_count(const char *opt, const char *s, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) {
        basin_error(BASIN_ERR_USAGE, "--%s wants an integer in [%ld, %ld], not '%s'", opt, lo, hi,
                    s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_args(int argc, char **argv, Options *o)
{
    *o = (Options){.model = "mlp", .device = "cpu", .batch = 64, .steps = 20, .repeats = 5, .warmup = 3,
                   .threads = 1, .in = INPUT_SHAPE, .classes = CLASSES};
    enum { OPT_PROFILE = 256, OPT_INPUT, OPT_CLASSES, OPT_PROFILE_JSON, OPT_WINO_GEMM };
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'},   {"batch", required_argument, NULL, 'b'},
        {"steps", required_argument, NULL, 's'},   {"repeats", required_argument, NULL, 'r'},
        {"warmup", required_argument, NULL, 'w'},  {"threads", required_argument, NULL, 't'},
        {"profile", no_argument, NULL, OPT_PROFILE}, {"help", no_argument, NULL, 'h'},
        {"profile-json", required_argument, NULL, OPT_PROFILE_JSON},
        {"device", required_argument, NULL, 'd'},
        {"input", required_argument, NULL, OPT_INPUT}, {"classes", required_argument, NULL, OPT_CLASSES},
        {"wino-gemm", required_argument, NULL, OPT_WINO_GEMM},
        {NULL, 0, NULL, 0},
    };
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        const char *name = optind > 0 && optind <= argc ? argv[optind - 1] : "?";
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'b': if (parse_count("batch", optarg, 1, 1 << 16, &o->batch)) return -1; break;
        case 's': if (parse_count("steps", optarg, 1, 1 << 20, &o->steps)) return -1; break;
        case 'r': if (parse_count("repeats", optarg, 1, 1000, &o->repeats)) return -1; break;
        case 'w': if (parse_count("warmup", optarg, 0, 1 << 20, &o->warmup)) return -1; break;
        case 't': if (parse_count("threads", optarg, 1, 1024, &o->threads)) return -1; break;
        case OPT_PROFILE: o->profile = 1; break;
        case OPT_PROFILE_JSON:
            o->profile = 1;
            o->profile_json = optarg;
            break;
        case OPT_INPUT: if (parse_shape(optarg, &o->in)) return -1; break;
        case OPT_CLASSES: if (parse_count("classes", optarg, 2, 1 << 20, &o->classes)) return -1; break;
        case OPT_WINO_GEMM: {
            const WinogradGemm *k;
            if (winograd_gemm_by_name(optarg, &k)) {
                basin_error(BASIN_ERR_USAGE,
                            "--wino-gemm wants auto, blas, avx512 or avx2 (one this CPU runs), not '%s'",
                            optarg);
                return -1;
            }
            o->wino_gemm = optarg;
            break;
        }
        case 'd':
            if (strcmp(optarg, "cpu") && strcmp(optarg, "cuda")) {
                basin_error(BASIN_ERR_USAGE, "--device wants cpu or cuda, not '%s'", optarg);
                return -1;
            }
            o->device = optarg;
            break;
        case 'h': usage(stdout); exit(0);
        case ':':
            basin_error(BASIN_ERR_USAGE, "option %s needs a value (see --help)", name);
            return -1;
        default:
            basin_error(BASIN_ERR_USAGE, "unknown option %s (see --help)", name);
            return -1;
        }
    }
    if (optind < argc) {
        basin_error(BASIN_ERR_USAGE, "unexpected argument '%s' (see --help)", argv[optind]);
        return -1;
    }
    return 0;
}

/* ---- helpers ------------------------------------------------------------------ */

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU seconds of this process: on a shared machine, the time it actually
 * ran, whatever else the scheduler gave the core to. */
static double cpu_s(void)
{
    return clock_s(CLOCK_PROCESS_CPUTIME_ID);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of n values (sorts them). */
static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int is_gemm_layer(const Layer *l)
{
    return l->kind == LAYER_LINEAR || l->kind == LAYER_CONV;
}

/* Useful FLOPs of one sample's step (see the top of the file). */
static double flops_per_sample(const Net *net)
{
    double fwd = 0.0, bwd = 0.0;
    int first = 1;
    for (int i = 0; i < net->n_layers; i++) {
        const Layer *l = &net->layers[i];
        if (!is_gemm_layer(l)) continue;
        double macs = layer_forward_macs(l);
        fwd += macs;
        bwd += first ? macs : 2.0 * macs;
        first = 0;
    }
    return 2.0 * (fwd + bwd);
}

/* The forward gemm of the layer with the most forward MACs, at this batch. */
static GemmShape largest_gemm(const Net *net, size_t batch)
{
    GemmShape g = {.layer = -1};
    double best = 0.0;
    for (int i = 0; i < net->n_layers; i++) {
        const Layer *l = &net->layers[i];
        double macs = layer_forward_macs(l);
        if (!is_gemm_layer(l) || macs <= best) continue;
        best = macs;
        if (l->kind == LAYER_LINEAR) {
            /* y (n, out) = x (n, in) W^T */
            g = (GemmShape){i, 0, 1, batch, shape_size(l->out), shape_size(l->in)};
        } else {
            /* y_i (C_out, OH OW) = W (C_out, C_in K K) col (C_in K K, OH OW), per sample */
            g = (GemmShape){i, 0, 0, (size_t)l->spec.units, (size_t)l->win.oh * l->win.ow,
                            (size_t)l->win.c * l->win.kh * l->win.kw};
        }
    }
    return g;
}

/* GFLOP/s of C = op(A) op(B) through the backend's gemm, the median of
 * SGEMM_RUNS timed runs, by the wall clock and by this process's CPU time.
 * Each run repeats the call until it has taken SGEMM_MIN_S of CPU time, so
 * small shapes are timed as precisely as large ones. Returns -1 when out of
 * memory. */
static int sgemm_rate(const Ops *ops, int ta, int tb, size_t m, size_t n, size_t k, Rate *out)
{
    size_t a_rows = ta ? k : m, a_cols = ta ? m : k;
    size_t b_rows = tb ? n : k, b_cols = tb ? k : n;
    float *a = ops->alloc(a_rows * a_cols * sizeof(float));
    float *b = ops->alloc(b_rows * b_cols * sizeof(float));
    float *c = ops->alloc(m * n * sizeof(float));
    int rc = -1;
    if (!a || !b || !c) goto done;
    for (size_t i = 0; i < a_rows * a_cols; i++) a[i] = rng_uniform(DATA_SEED, 11, i) - 0.5f;
    for (size_t i = 0; i < b_rows * b_cols; i++) b[i] = rng_uniform(DATA_SEED, 12, i) - 0.5f;
    ops->gemm(ta, tb, m, n, k, 1.0f, a, a_cols, b, b_cols, 0.0f, c, n); /* warm-up */
    double wall[SGEMM_RUNS], cpu[SGEMM_RUNS];
    const double flop = 2.0 * (double)m * (double)n * (double)k;
    for (int r = 0; r < SGEMM_RUNS; r++) {
        long calls = 0;
        double w0 = basin_clock(), c0 = cpu_s(), ct;
        do {
            ops->gemm(ta, tb, m, n, k, 1.0f, a, a_cols, b, b_cols, 0.0f, c, n);
            ops->sync();
            calls++;
            ct = cpu_s() - c0;
        } while (ct < SGEMM_MIN_S);
        wall[r] = flop * (double)calls / (basin_clock() - w0) * 1e-9;
        cpu[r] = flop * (double)calls / ct * 1e-9;
    }
    out->wall = median(wall, SGEMM_RUNS);
    out->cpu = median(cpu, SGEMM_RUNS);
    rc = 0;
done:
    ops->free(a);
    ops->free(b);
    ops->free(c);
    return rc;
}

/* ---- the step ----------------------------------------------------------------- */

static int data_create(const Ops *ops, size_t batch, Shape shape, int classes, Data *d)
{
    size_t in = shape_size(shape);
    float *x = d->host_x = basin_malloc(batch * in * sizeof(float));
    int32_t *y = d->host_labels = basin_malloc(batch * sizeof(int32_t));
    d->x = ops->alloc(batch * in * sizeof(float));
    d->labels = ops->alloc(batch * sizeof(int32_t));
    int rc = BASIN_ERR_RUNTIME;
    if (!x || !y || !d->x || !d->labels) goto done;
    /* Pixel-like values in [0, 1), labels uniform over the classes. */
    for (size_t i = 0; i < batch * in; i++) x[i] = rng_uniform(DATA_SEED, 1, i);
    for (size_t i = 0; i < batch; i++) y[i] = (int32_t)(rng_u64(DATA_SEED, 2, i) % (uint64_t)classes);
    ops->to_device(d->x, x, batch * in * sizeof(float));
    ops->to_device(d->labels, y, batch * sizeof(int32_t));
    rc = BASIN_OK;
done:
    return rc;
}

static void data_destroy(const Ops *ops, Data *d)
{
    ops->free(d->x);
    ops->free(d->labels);
    free(d->host_x);
    free(d->host_labels);
}

/* --device cuda: the batch's copy from host memory, as the trainer makes it. */
static void data_upload(const Ops *ops, const Data *d, size_t batch, Shape shape)
{
    ops->to_device(d->x, d->host_x, batch * shape_size(shape) * sizeof(float));
    ops->to_device(d->labels, d->host_labels, batch * sizeof(int32_t));
    ops->sync();
}

/* --device cuda: mark i of a step on the backend's stream (CUDA events):
 * 0 forward 1 backward 2 SGD 3, so the split is device time. */
static void device_mark(const Net *net, int i)
{
#ifdef BASIN_HAVE_CUDA
    if (net->ops != &ops_cuda) return;
    ops_cuda_time_mark(i);
    if (i == 3) ops_cuda_time_step(4);
#else
    (void)net;
    (void)i;
#endif
}

/* One training step, as the trainer runs it for a batch. */
static double train_step(Net *net, const Data *d, size_t batch, uint64_t step,
                         const SgdConfig *sgd)
{
    ForwardCtx ctx = {.train = 1, .seed = INIT_SEED, .sample_offset = step * batch};
    double loss = 0.0;
    size_t correct = 0;
    device_mark(net, 0);
    net_forward(net, d->x, d->labels, batch, &ctx, &loss, &correct);
    device_mark(net, 1);
    net_backward(net, d->x, d->labels, batch, 1.0f / (float)batch, NULL, NULL);
    device_mark(net, 2);
    sgd_step_range(net, sgd, LR, 0, net->n_params);
    device_mark(net, 3);
    net->ops->sync();
    return loss;
}

/* ---- per-layer profile ----------------------------------------------------- */

/* CPU seconds of each part of a step, summed over the profiled steps. */
typedef struct {
    double *fwd, *bwd; /* (n_layers) */
    double loss_fwd, loss_bwd, sgd;
} Profile;

/* One step in the order net_forward / net_backward / sgd_step_range run it,
 * adding each part's seconds to p. */
static void profiled_step(Net *net, const Data *d, size_t n, uint64_t step, const SgdConfig *sgd,
                          Profile *p)
{
    const Ops *ops = net->ops;
    ForwardCtx ctx = {.train = 1, .seed = INIT_SEED, .sample_offset = step * n};
    net->ctx = ctx;
    double t;
    for (int i = 0; i < net->n_layers; i++) {
        if (!net->act[i]) continue;
        t = cpu_s();
        net_forward_layer(net, i, d->x, n, &ctx);
        ops->sync();
        p->fwd[i] += cpu_s() - t;
    }
    double loss = 0.0;
    size_t ok = 0;
    t = cpu_s();
    ops->softmax_xent_fwd(net->act[net->n_layers - 1], d->labels, n, (size_t)net->classes,
                          net->probs, &loss, &ok);
    p->loss_fwd += cpu_s() - t;

    t = cpu_s();
    net_loss_backward(net, d->labels, n, 1.0f / (float)n);
    p->loss_bwd += cpu_s() - t;
    for (int i = net->n_layers - 1; i >= 0; i--) {
        if (!net->act[i]) continue;
        t = cpu_s();
        net_backward_layer(net, i, d->x, n);
        ops->sync();
        p->bwd[i] += cpu_s() - t;
    }
    t = cpu_s();
    sgd_step_range(net, sgd, LR, 0, net->n_params);
    ops->sync();
    p->sgd += cpu_s() - t;
}

/* The parts of a conv layer that runs as Winograd F(2x2, rxr): the CPU time
 * of each of its stages (core/winograd.h), measured inside layer_forward /
 * layer_backward; dy and dx as in conv_detail. Overwrites the layer's
 * gradients: run it after the measurements. */
static void winograd_detail(Net *net, int li, const float *x, size_t n, int reps)
{
    const Ops *ops = net->ops;
    Layer *l = &net->layers[li];
    Winograd *wg = l->wino;
    const float *dy = net->act[li];
    WinogradProfile prof = {0};
    ForwardCtx ctx = {.train = 1, .seed = 1, .sample_offset = 0};
    wg->profile = &prof;
    for (int r = 0; r < reps; r++) {
        layer_forward(l, ops, x, net->dbuf[1], n, &ctx);
        layer_backward(l, ops, x, net->dbuf[1], dy, net->dbuf[0], n, &ctx);
    }
    wg->profile = NULL;
    const double ms = 1e3 / reps;
    const double gf = 2e-6 * wg->tt * (double)wg->k * wg->win.c * (double)(n * wg->tiles);
    printf("  conv %d (winograd F(2x2,%dx%d): %d gemms %dx%zux%d per step, in chunks of %zu "
           "columns), CPU ms per step:\n",
           li + 1, wg->r, wg->r, wg->tt, wg->k, n * wg->tiles, wg->win.c,
           wg->chunk_rows * (size_t)wg->tw * wg->group);
    for (int part = 0; part < 2; part++) {
        int lo = part ? WINOGRAD_PACK_DY : 0, hi = part ? WINOGRAD_STAGES : WINOGRAD_PACK_DY;
        printf("    %s:", part ? "backward" : "forward ");
        for (int s = lo; s < hi; s++) {
            if (s == WINOGRAD_GEMM_DV && !l->need_dx) continue;
            printf("%s %s %.3f", s == lo ? "" : ",", winograd_stage_names[s], prof.s[s] * ms);
            if (s == WINOGRAD_GEMM || s == WINOGRAD_GEMM_DU || s == WINOGRAD_GEMM_DV)
                printf(" (%.1f GF/s)", gf / (prof.s[s] * ms));
        }
        printf("\n");
    }
}

/* The parts of one conv layer's forward and backward, timed one op at a
 * time. The calls are those of layer_forward / layer_backward (layers.c) for
 * a conv layer; the values do not matter for the timing, so the layer's last
 * output stands in for dy and dbuf[0] takes dx. Overwrites the layer's
 * gradients: run it after the measurements. */
static void conv_detail(Net *net, int li, const float *x, size_t n, int reps)
{
    const Ops *ops = net->ops;
    Layer *l = &net->layers[li];
    if (l->wino) {
        winograd_detail(net, li, x, n, reps);
        return;
    }
    const Window *g = &l->win;
    const size_t in = shape_size(l->in), out = shape_size(l->out);
    const size_t co = (size_t)l->spec.units, k = (size_t)g->c * g->kh * g->kw;
    const size_t p = (size_t)g->oh * g->ow;
    const float *dy = net->act[li];
    float *dx = net->dbuf[0];
    enum { F_IM2COL, F_GEMM, F_BIAS, B_BIAS, B_IM2COL, B_DW, B_DX, B_ZERO, B_COL2IM, N_PARTS };
    double t[N_PARTS] = {0}, t0;
#define TIMED(part, call) (t0 = cpu_s(), (call), ops->sync(), t[part] += cpu_s() - t0)
    for (int r = 0; r < reps; r++) {
        for (size_t i = 0; i < n; i++) {
            TIMED(F_IM2COL, ops->im2col(g, x + i * in, l->col));
            TIMED(F_GEMM, ops->gemm(0, 0, co, p, k, 1.0f, l->w, k, l->col, p, 0.0f,
                                    net->dbuf[1] + i * out, p));
        }
        if (l->b_count) { /* a conv followed by bn has no bias */
            TIMED(F_BIAS, ops->add_bias_channels(net->dbuf[1], l->b, n, co, p));
            TIMED(B_BIAS, (ops->zero(l->db, co), ops->bias_grad_channels(l->db, dy, n, co, p)));
        }
        for (size_t i = 0; i < n; i++) {
            const float *dyi = dy + i * out;
            TIMED(B_IM2COL, ops->im2col(g, x + i * in, l->col));
            TIMED(B_DW, ops->gemm(0, 1, co, k, p, 1.0f, dyi, p, l->col, p, i ? 1.0f : 0.0f,
                                  l->dw, k));
            if (l->need_dx) {
                TIMED(B_DX, ops->gemm(1, 0, k, p, co, 1.0f, l->w, k, dyi, p, 0.0f, l->col, p));
                TIMED(B_ZERO, ops->zero(dx + i * in, in));
                TIMED(B_COL2IM, ops->col2im(g, l->col, dx + i * in));
            }
        }
    }
#undef TIMED
    const double ms = 1e3 / reps, gf = 2e-6 * (double)(co * p * k) * (double)n;
    printf("  conv %d (%dx%d stride %d, gemm %zux%zux%zu per sample%s), CPU ms per step:\n", li + 1,
           g->kh, g->kw, g->stride, co, p, k,
           l->cols ? "; the step's backward reuses forward's im2col" : "");
    printf("    forward : im2col %.3f, gemm %.3f (%.1f GF/s)", t[F_IM2COL] * ms, t[F_GEMM] * ms,
           gf / (t[F_GEMM] * ms));
    if (l->b_count) printf(", bias %.3f", t[F_BIAS] * ms);
    printf("\n    backward: ");
    if (l->b_count) printf("db %.3f, ", t[B_BIAS] * ms);
    printf("im2col %.3f, dW gemm %.3f (%.1f GF/s)", t[B_IM2COL] * ms, t[B_DW] * ms,
           gf / (t[B_DW] * ms));
    if (l->need_dx)
        printf(", dx gemm %.3f (%.1f GF/s), zero dx %.3f, col2im %.3f", t[B_DX] * ms,
               gf / (t[B_DX] * ms), t[B_ZERO] * ms, t[B_COL2IM] * ms);
    printf("\n");
}

/* --profile-json: the profile of run_profile as one JSON object. */
static int write_profile_json(const char *path, const char *model, const Net *net, size_t batch, const Profile *p,
                              double scale)
{
    FILE *f = fopen(path, "w");
    if (!f) return BASIN_FAIL(BASIN_ERR_RUNTIME, "--profile-json %s: cannot write", path);
    fprintf(f, "{\"format\": \"basin-bench-step-profile\", \"model\": \"");
    for (const char *c = model; *c; c++) {
        if (*c == '"' || *c == '\\') fputc('\\', f);
        if ((unsigned char)*c >= 0x20) fputc(*c, f);
    }
    fprintf(f, "\", \"batch\": %zu, \"n_params\": %zu,\n \"layers\": [", batch, net->n_params);
    for (int i = 0; i < net->n_layers; i++)
        fprintf(f, "%s\n  {\"index\": %d, \"kind\": \"%s\", \"fwd_ms\": %.6f, \"bwd_ms\": %.6f}", i ? "," : "", i,
                layer_kind_name(net->layers[i].kind), net->act[i] ? p->fwd[i] * scale : 0.0,
                net->act[i] ? p->bwd[i] * scale : 0.0);
    fprintf(f, "\n ], \"loss_fwd_ms\": %.6f, \"loss_bwd_ms\": %.6f, \"sgd_ms\": %.6f}\n", p->loss_fwd * scale,
            p->loss_bwd * scale, p->sgd * scale);
    if (fclose(f) != 0) return BASIN_FAIL(BASIN_ERR_RUNTIME, "--profile-json %s: write failed", path);
    return BASIN_OK;
}

static int run_profile(Net *net, const Data *d, size_t batch, int steps, uint64_t first_step,
                       const SgdConfig *sgd, double step_s, const char *model, const char *json_path)
{
    Profile p = {0};
    p.fwd = basin_calloc((size_t)net->n_layers, sizeof *p.fwd);
    p.bwd = basin_calloc((size_t)net->n_layers, sizeof *p.bwd);
    if (!p.fwd || !p.bwd) {
        free(p.fwd);
        free(p.bwd);
        return BASIN_ERR_RUNTIME;
    }
    for (int s = 0; s < steps; s++) profiled_step(net, d, batch, first_step + (uint64_t)s, sgd, &p);

    double scale = 1e3 / steps; /* ms per step */
    double total = 0.0;
    printf("\nper-layer profile (CPU ms per step, mean of %d steps; GF/s of the layer's gemm work)\n",
           steps);
    printf("  %-3s %-8s %-14s %9s %8s %9s %8s %8s\n", "#", "layer", "output", "fwd ms", "GF/s",
           "bwd ms", "GF/s", "% step");
    int first_gemm = 1;
    for (int i = 0; i < net->n_layers; i++) {
        const Layer *l = &net->layers[i];
        if (!net->act[i]) continue;
        double f = p.fwd[i] * scale, b = p.bwd[i] * scale;
        total += f + b;
        char shape[32];
        snprintf(shape, sizeof shape, "%dx%dx%d", l->out.c, l->out.h, l->out.w);
        double macs = layer_forward_macs(l) * (double)batch;
        if (is_gemm_layer(l)) {
            /* backward does dW, and dx when the layer computes it */
            double bmacs = macs * (l->need_dx ? 2.0 : 1.0);
            printf("  %-3d %-8s %-14s %9.3f %8.1f %9.3f %8.1f %7.1f%%%s\n", i + 1,
                   layer_kind_name(l->kind), shape, f, 2e-6 * macs / f, b, 2e-6 * bmacs / b,
                   100.0 * (f + b) / (step_s * 1e3),
                   first_gemm && l->need_dx ? "  (computes an unused dx)" : "");
            first_gemm = 0;
        } else {
            printf("  %-3d %-8s %-14s %9.3f %8s %9.3f %8s %7.1f%%\n", i + 1,
                   layer_kind_name(l->kind), shape, f, "", b, "", 100.0 * (f + b) / (step_s * 1e3));
        }
    }
    double lf = p.loss_fwd * scale, lb = p.loss_bwd * scale, sg = p.sgd * scale;
    total += lf + lb + sg;
    printf("  %-3s %-8s %-14s %9.3f %8s %9.3f %8s %7.1f%%\n", "", "softmax", "", lf, "", lb, "",
           100.0 * (lf + lb) / (step_s * 1e3));
    printf("  %-3s %-8s %-14s %9s %8s %9.3f %8s %7.1f%%\n", "", "sgd", "", "", "", sg, "",
           100.0 * sg / (step_s * 1e3));
    printf("  sum of parts %.3f ms; unprofiled step (median, CPU time) %.3f ms\n", total,
           step_s * 1e3);
    for (int i = 0; i < net->n_layers; i++) {
        /* im2col convs only: a pointwise conv (1x1, stride 1, no padding)
         * has no im2col buffer, its step is the gemm the profile shows. */
        if (net->layers[i].kind == LAYER_CONV && (net->layers[i].col || net->layers[i].wino))
            conv_detail(net, i, net_output(net, net->layers[i].src, d->x), batch, steps);
    }
    int rc = json_path ? write_profile_json(json_path, model, net, batch, &p, scale) : BASIN_OK;
    free(p.fwd);
    free(p.bwd);
    return rc;
}

/* ---- main ------------------------------------------------------------------- */

/* Median, min and max of n values (sorts them). */
typedef struct {
    double med, lo, hi;
} Spread;

static Spread spread(double *v, int n)
{
    double med = median(v, n);
    return (Spread){med, v[0], v[n - 1]};
}

int main(int argc, char **argv)
{
    Options o;
    if (parse_args(argc, argv, &o)) return 2;
    ops_cpu_set_threads(o.threads);
    const Ops *ops = &ops_cpu;
    const int gpu = !strcmp(o.device, "cuda");
    if (gpu) {
#ifdef BASIN_HAVE_CUDA
        if (o.profile) return basin_error(BASIN_ERR_USAGE, "--profile times host code: not with --device cuda"), 2;
        if (ops_cuda_select(0)) return 2;
        ops = &ops_cuda;
#else
        return basin_error(BASIN_ERR_USAGE, "--device cuda: this build has no CUDA backend"), 2;
#endif
    }

    LayerSpec specs[MODEL_MAX_LAYERS];
    int n_layers = 0;
    if (model_parse(o.model, o.in, specs, MODEL_MAX_LAYERS, &n_layers)) return 2;
    Net *net = NULL;
    int rc = net_create(specs, n_layers, o.in, o.classes, ops, (size_t)o.batch, &net);
    if (rc) return rc == BASIN_ERR_USAGE ? 2 : 1;
    if (o.wino_gemm) /* checked by parse_args */
        for (int i = 0; i < net->n_layers; i++)
            if (net->layers[i].wino) winograd_gemm_by_name(o.wino_gemm, &net->layers[i].wino->gemm);
    Data d = {0};
    double *wall = basin_calloc((size_t)o.repeats, sizeof *wall);
    double *cpu = basin_calloc((size_t)o.repeats, sizeof *cpu);
    if (!wall || !cpu || net_init_params(net, INIT_SEED) || data_create(ops, (size_t)o.batch, o.in, o.classes, &d)) {
        rc = 1;
        goto done;
    }

    const size_t batch = (size_t)o.batch;
    const SgdConfig sgd = {.momentum = MOMENTUM, .weight_decay = WEIGHT_DECAY, .nesterov = 0};
    uint64_t step = 0;
    double loss = 0.0;
    for (int w = 0; w < o.warmup; w++) loss = train_step(net, &d, batch, step++, &sgd);
    double dev[3] = {0, 0, 0}; /* device seconds of forward, backward, SGD (--device cuda) */
#ifdef BASIN_HAVE_CUDA
    if (gpu) ops_cuda_time_take(dev, 4); /* forget the warm-up's */
    dev[0] = dev[1] = dev[2] = 0;
#endif
    double copy_s = 0.0, compute_s = 0.0;
    for (int r = 0; r < o.repeats; r++) {
        double w0 = basin_clock(), c0 = cpu_s();
        for (int s = 0; s < o.steps; s++) {
            double t0 = basin_clock();
            if (gpu) data_upload(ops, &d, batch, o.in);
            double t1 = basin_clock();
            loss = train_step(net, &d, batch, step++, &sgd);
            copy_s += t1 - t0;
            compute_s += basin_clock() - t1;
        }
        double images = (double)o.steps * (double)batch;
        cpu[r] = images / (cpu_s() - c0);
        wall[r] = images / (basin_clock() - w0);
    }
#ifdef BASIN_HAVE_CUDA
    if (gpu) ops_cuda_time_take(dev, 4);
#endif
    const Spread iw = spread(wall, o.repeats), ic = spread(cpu, o.repeats);
    const double flops = flops_per_sample(net);
    const Rate img = {iw.med, ic.med};
    const Rate gf = {img.wall * flops * 1e-9, img.cpu * flops * 1e-9};

    Rate sq = {0}, lg_rate = {0};
    const GemmShape lg = largest_gemm(net, batch);
    if (sgemm_rate(ops, 0, 0, SGEMM_SQUARE, SGEMM_SQUARE, SGEMM_SQUARE, &sq) ||
        (lg.layer >= 0 && sgemm_rate(ops, lg.trans_a, lg.trans_b, lg.m, lg.n, lg.k, &lg_rate))) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "cannot allocate the SGEMM reference matrices");
        goto done;
    }

    static char desc[1 << 16]; /* resnet50's ~180 layers take ~10 KB */
    net_describe(net, desc, sizeof desc);
    printf("basin-bench-step: model %s, input %dx%dx%d, %d classes, batch %d, %d BLAS threads, %s\n",
           o.model, o.in.c, o.in.h, o.in.w, o.classes, o.batch, o.threads, openblas_get_config());
    printf("%s", desc);
    printf("parameters %zu; forward %.3f MMAC/sample; useful step %.3f MFLOP/sample\n",
           net->n_params, 1e-6 * net_forward_macs(net), 1e-6 * flops);
    printf("warm-up %d steps, then %d repeats of %d steps; medians (min..max):\n", o.warmup,
           o.repeats, o.steps);
    printf("  by CPU time  %9.1f img/s (%.1f..%.1f), %.3f ms/step, %.2f GFLOP/s\n", ic.med, ic.lo,
           ic.hi, 1e3 * (double)batch / img.cpu, gf.cpu);
    printf("  by wall time %9.1f img/s (%.1f..%.1f), %.3f ms/step, %.2f GFLOP/s\n", iw.med, iw.lo,
           iw.hi, 1e3 * (double)batch / img.wall, gf.wall);
    printf("SGEMM %dx%dx%d: %.2f GFLOP/s by CPU time (%.2f by wall) -> step achieves %.3f of "
           "SGEMM (%.3f by wall)\n",
           SGEMM_SQUARE, SGEMM_SQUARE, SGEMM_SQUARE, sq.cpu, sq.wall, gf.cpu / sq.cpu,
           gf.wall / sq.wall);
    if (lg.layer >= 0)
        printf("largest layer (%d, %s) forward gemm %c%c m=%zu n=%zu k=%zu: %.2f GFLOP/s by CPU "
               "time\n",
               lg.layer + 1, layer_kind_name(net->layers[lg.layer].kind), lg.trans_a ? 'T' : 'N',
               lg.trans_b ? 'T' : 'N', lg.m, lg.n, lg.k, lg_rate.cpu);
    printf("last loss %.4f\n", loss / (double)batch);
    const double per_step = 1e3 / ((double)o.repeats * (double)o.steps);
    printf("device %s: per step (wall) copy %.3f ms, compute %.3f ms\n", o.device, copy_s * per_step,
           compute_s * per_step);
    if (gpu)
        printf("device time per step (CUDA events): forward %.3f ms, backward %.3f ms, SGD %.3f ms\n",
               dev[0] * per_step, dev[1] * per_step, dev[2] * per_step);

    if (o.profile) {
        rc = run_profile(net, &d, batch, o.steps, step, &sgd, (double)batch / img.cpu, o.model, o.profile_json);
        if (rc) goto done;
    }

    printf("{\"bench\":\"step\",\"impl\":\"basin\",\"device\":\"%s\",\"copy_ms\":%.4f,\"compute_ms\":%.4f,"
           "\"device_forward_ms\":%.4f,\"device_backward_ms\":%.4f,\"device_sgd_ms\":%.4f,"
           "\"model\":\"%s\",\"input\":\"%dx%dx%d\",\"classes\":%d,\"params\":%zu,"
           "\"batch\":%d,\"threads\":%d,"
           "\"warmup\":%d,\"steps\":%d,\"repeats\":%d,\"flop_per_sample\":%.0f,"
           "\"img_s_cpu\":%.3f,\"img_s_wall\":%.3f,\"gflops_cpu\":%.4f,\"gflops_wall\":%.4f,"
           "\"sgemm_gflops_cpu\":%.4f,\"sgemm_gflops_wall\":%.4f,\"sgemm_fraction_cpu\":%.4f,"
           "\"sgemm_fraction_wall\":%.4f,\"layer_gemm\":[%zu,%zu,%zu],"
           "\"layer_gemm_gflops_cpu\":%.4f}\n",
           o.device, copy_s * per_step, compute_s * per_step, dev[0] * per_step, dev[1] * per_step,
           dev[2] * per_step, o.model, o.in.c, o.in.h, o.in.w, o.classes, net->n_params, o.batch,
           o.threads, o.warmup,
           o.steps, o.repeats, flops, img.cpu, img.wall,
           gf.cpu, gf.wall, sq.cpu, sq.wall, gf.cpu / sq.cpu, gf.wall / sq.wall, lg.m, lg.n, lg.k,
           lg_rate.cpu);
    rc = 0;
done:
    free(wall);
    free(cpu);
    data_destroy(ops, &d);
    net_destroy(net);
    return rc;
}
