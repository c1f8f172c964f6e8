/* Reduced-precision wire (ALLREDUCE_WIRE_BF16 / _FP16) under mpirun:
 *
 *   mpirun -np P test_wire [--layouts K,K,...]
 *
 * For bf16 and fp16, every algorithm that takes a wire (rhd, ring, hier,
 * auto) and every supernode layout (0 = per host, K = 1, 2, 3: uneven
 * when K does not divide P):
 *
 * exact   inputs k 2^j (k an integer in [-9, 9], j in [-2, 2]) whose partial
 *         sums are all representable in bf16 (8 bits) and fp16: the result
 *         must equal the exact sum, in place and out of place, with messages
 *         split (max_message_count 97), and with shards large enough for the
 *         ring's several pieces;
 * range   fp16 only: the same inputs times 2^-24 (1.5e-8 to 2.1e-6, around
 *         fp16's smallest step 5.96e-8) and times 2^12 (up to 147456, sums
 *         to 737280, far above fp16's 65504): exact, which only the scale
 *         can give (without it the tiny ones flush, the large ones overflow);
 * bound   random inputs in [-1, 1): every rank ends with the same bits, and
 *         per element |result - sum| <= (R + 1) u sum_r |x_r| + P^2 eps_32,
 *         u = 2^-8 (bf16) or 2^-11 (fp16), R the messages a partial sum
 *         travels (allreduce.h); and where the wire is crossed at all, some
 *         results must differ from the fp32 all-reduce (the 16-bit path ran);
 * update  the sharded update and its asynchronous form on exact inputs.
 * refuse  mpi with a 16-bit wire is BASIN_ERR_USAGE.
 */
#include "allreduce/allreduce.h"
#include "core/error.h"
#include "exact.h"
#include "testing.h"

#include <float.h>
#include <stdint.h>
#include <string.h>

#define MPI_OK(call)                                                                                  \
    do {                                                                                              \
        if ((call) != MPI_SUCCESS) {                                                                  \
            fprintf(stderr, "%s:%d: %s failed\n", __FILE__, __LINE__, #call);                         \
            MPI_Abort(MPI_COMM_WORLD, 1);                                                             \
        }                                                                                             \
    } while (0)

typedef struct Ctx {
    int rank, size;
    int layouts[8];
    int nlayouts;
} Ctx;

static const char *const ALGOS[] = {"rhd", "ring", "hier", "auto"};
enum { NALGO = sizeof ALGOS / sizeof ALGOS[0] };
static const struct {
    const char *name;
    unsigned flag;
    double u;
} WIRES[] = {{"bf16", ALLREDUCE_WIRE_BF16, 0x1p-8}, {"fp16", ALLREDUCE_WIRE_FP16, 0x1p-11}};

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static float random_value(int rank, size_t i)
{
    uint64_t h = mix64(7 ^ mix64(((uint64_t)rank << 40) ^ i));
    return (float)((double)(h >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

/* k 2^j times a global power of two `scale`. */
static float value(int rank, size_t i, float scale)
{
    return exact_value(rank, i) * (float)(1 << (i % 5)) * 0.25f * scale;
}

static float sum_of(int size, size_t i, float scale)
{
    return exact_sum(size, i) * (float)(1 << (i % 5)) * 0.25f * scale;
}

static AllreduceComm *make_comm(int supernode_size, size_t max_msg)
{
    AllreduceConfig cfg;
    allreduce_config_default(&cfg);
    cfg.supernode_size = supernode_size;
    cfg.timeout_s = 120;
    if (max_msg) cfg.max_message_count = max_msg;
    AllreduceComm *c = NULL;
    if (allreduce_comm_create(MPI_COMM_WORLD, &cfg, &c)) MPI_Abort(MPI_COMM_WORLD, 1);
    return c;
}

/* One plan, in place in the window and out of place private -> private;
 * returns wrong elements. */
static size_t run_exact(const Ctx *x, AllreduceComm *c, const char *algo, unsigned flag, size_t n, float scale,
                        float *win, float *pa, float *pb, const char *what)
{
    AllreducePlan *p = NULL;
    int st = allreduce_plan(c, algo, n, flag, &p);
    EXPECT(st == BASIN_OK && p, "%s: plan: status %d", what, st);
    if (!p) return 1;
    size_t wrong = 0;
    for (int place = 0; place < 2; place++) {
        float *send = place ? pa : win, *recv = place ? pb : win;
        for (size_t i = 0; i < n; i++) send[i] = value(x->rank, i, scale);
        if (send != recv)
            for (size_t i = 0; i < n; i++) recv[i] = -1.0f;
        EXPECT(allreduce_run(p, send, recv) == BASIN_OK, "%s: run", what);
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < n; i++)
            if (recv[i] != sum_of(x->size, i, scale) && bad++ == 0) first = i;
        EXPECT(bad == 0, "%s %s: %zu wrong, first at %zu: got %.9g want %.9g", what,
               place ? "out of place" : "in place", bad, first, n ? (double)recv[first] : 0.0,
               n ? (double)sum_of(x->size, first, scale) : 0.0);
        wrong += bad;
    }
    allreduce_plan_free(p);
    return wrong;
}

static void test_exact(const Ctx *x)
{
    const size_t big = 700001; /* ring pieces of 128 Ki floats: several per block */
    const size_t counts[] = {0, 1, (size_t)x->size + 1, 10007, big};
    float *pa = basin_aligned_alloc(big * sizeof(float)), *pb = basin_aligned_alloc(big * sizeof(float));
    size_t runs = 0, wrong = 0;
    for (int li = 0; li < x->nlayouts; li++) {
        for (int chunked = 0; chunked < 2; chunked++) {
            if (chunked && li != x->nlayouts - 1) continue;
            AllreduceComm *c = make_comm(x->layouts[li], chunked ? 97 : 0);
            const AllreduceTopology *t = allreduce_topology(c);
            float *win = allreduce_buffer_alloc(c, big + 8);
            if (!win || !pa || !pb) MPI_Abort(MPI_COMM_WORLD, 1);
            for (size_t w = 0; w < sizeof WIRES / sizeof WIRES[0]; w++)
                for (int a = 0; a < NALGO; a++) {
                    /* Only hier and auto read the layout. */
                    if (li > 0 && strcmp(ALGOS[a], "hier") && strcmp(ALGOS[a], "auto")) continue;
                    for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
                        size_t n = counts[ci];
                        if (chunked && n > 10007) continue;
                        char what[160];
                        snprintf(what, sizeof what, "P=%d K=%d (%d supernodes, local %d/%d) %s %s%s count=%zu",
                                 x->size, x->layouts[li], t->nodes, t->local_rank, t->local_size, WIRES[w].name,
                                 ALGOS[a], chunked ? " chunked" : "", n);
                        wrong += run_exact(x, c, ALGOS[a], WIRES[w].flag, n, 1.0f, win + 5, pa, pb, what);
                        runs++;
                        if (WIRES[w].flag == ALLREDUCE_WIRE_FP16 && n == 10007 && !chunked) {
                            /* Both ends of fp16's range. */
                            wrong += run_exact(x, c, ALGOS[a], WIRES[w].flag, n, 0x1p-24f, win + 5, pa, pb, what);
                            wrong += run_exact(x, c, ALGOS[a], WIRES[w].flag, n, 0x1p12f, win + 5, pa, pb, what);
                            runs += 2;
                        }
                    }
                }
            allreduce_buffer_free(c, win);
            allreduce_comm_free(c);
        }
    }
    free(pa);
    free(pb);
    if (x->rank == 0) printf("exact: P=%d: %zu plans x 2 placements, %zu wrong elements\n", x->size, runs, wrong);
}

static int ilog2(int v)
{
    int k = 0;
    while ((2 << k) <= v) k++;
    return k;
}

/* Messages a partial sum travels (allreduce.h). */
static int roundings(const char *algo, int P, int S, int ring_across)
{
    if (!strcmp(algo, "ring")) return P - 1;
    if (!strcmp(algo, "rhd")) return ilog2(P) + ((P & (P - 1)) != 0);
    if (S == 1) return 0;
    if (ring_across) return S - 1;
    return ilog2(S) + ((S & (S - 1)) != 0);
}

static void test_bound(const Ctx *x)
{
    const size_t n = 100003;
    float *send = basin_aligned_alloc(n * sizeof(float)), *recv = basin_aligned_alloc(n * sizeof(float));
    float *ref32 = basin_aligned_alloc(n * sizeof(float));
    uint64_t *hashes = calloc((size_t)x->size, sizeof *hashes);
    if (!send || !recv || !ref32 || !hashes) MPI_Abort(MPI_COMM_WORLD, 1);
    for (size_t i = 0; i < n; i++) send[i] = random_value(x->rank, i);
    int runs = 0;
    double worst = 0;
    for (int li = 0; li < x->nlayouts; li++) {
        AllreduceComm *c = make_comm(x->layouts[li], 0);
        const AllreduceTopology *t = allreduce_topology(c);
        for (int a = 0; a < NALGO; a++) {
            if (li > 0 && strcmp(ALGOS[a], "hier") && strcmp(ALGOS[a], "auto")) continue;
            AllreducePlan *p32 = NULL;
            if (allreduce_plan(c, ALGOS[a], n, 0, &p32)) MPI_Abort(MPI_COMM_WORLD, 1);
            EXPECT(allreduce_run(p32, send, ref32) == BASIN_OK, "fp32 run");
            const char *resolved = allreduce_plan_algorithm(p32);
            allreduce_plan_free(p32);
            for (size_t w = 0; w < sizeof WIRES / sizeof WIRES[0]; w++) {
                AllreducePlan *p = NULL;
                if (allreduce_plan(c, ALGOS[a], n, WIRES[w].flag, &p)) MPI_Abort(MPI_COMM_WORLD, 1);
                EXPECT(!strcmp(allreduce_plan_wire(p), WIRES[w].name), "plan wire %s", allreduce_plan_wire(p));
                EXPECT(allreduce_run(p, send, recv) == BASIN_OK, "run");
                uint64_t h = 1469598103934665603ull;
                const unsigned char *b = (const unsigned char *)recv;
                for (size_t i = 0; i < n * sizeof(float); i++) h = (h ^ b[i]) * 1099511628211ull;
                MPI_OK(MPI_Allgather(&h, 1, MPI_UINT64_T, hashes, 1, MPI_UINT64_T, MPI_COMM_WORLD));
                int same = 1;
                for (int r = 0; r < x->size; r++) same &= hashes[r] == hashes[0];
                EXPECT(same, "P=%d K=%d %s %s: ranks ended with different bits", x->size, x->layouts[li],
                       WIRES[w].name, ALGOS[a]);
                /* hier's shards of 100003 / L floats are below 1 MiB: rhd across. */
                int R = roundings(resolved, x->size, t->nodes, 0);
                size_t bad = 0, differ = 0;
                for (size_t i = 0; i < n; i++) {
                    double ref = 0, mag = 0;
                    for (int r = 0; r < x->size; r++) {
                        double v = random_value(r, i);
                        ref += v;
                        mag += fabs(v);
                    }
                    double tol = (R + 1) * WIRES[w].u * mag + (double)x->size * x->size * FLT_EPSILON;
                    double err = fabs(recv[i] - ref);
                    if (err > tol && bad++ == 0)
                        fprintf(stderr, "P=%d K=%d %s %s: element %zu off by %g > %g\n", x->size, x->layouts[li],
                                WIRES[w].name, ALGOS[a], i, err, tol);
                    if (mag > 0 && err / mag > worst) worst = err / mag;
                    differ += recv[i] != ref32[i];
                }
                EXPECT(bad == 0, "P=%d K=%d %s %s: %zu elements beyond the bound", x->size, x->layouts[li],
                       WIRES[w].name, ALGOS[a], bad);
                int crossed = strcmp(resolved, "hier") || t->nodes > 1;
                if (crossed)
                    EXPECT(differ > n / 10, "P=%d K=%d %s %s: only %zu of %zu results differ from fp32: no 16-bit "
                           "rounding?", x->size, x->layouts[li], WIRES[w].name, ALGOS[a], differ, n);
                else
                    EXPECT(differ == 0, "P=%d K=%d %s hier in one supernode: %zu results differ from fp32",
                           x->size, x->layouts[li], WIRES[w].name, differ);
                runs++;
                allreduce_plan_free(p);
            }
        }
        allreduce_comm_free(c);
    }
    free(send);
    free(recv);
    free(ref32);
    free(hashes);
    if (x->rank == 0)
        printf("bound: P=%d: %d runs of %zu random floats, same bits on every rank, worst error / sum|x| %.3g\n",
               x->size, runs, n, worst);
}

typedef struct UpdateArg {
    float *grads, *params;
    size_t n;
} UpdateArg;

static void update_fn(void *arg, size_t lo, size_t hi)
{
    UpdateArg *u = arg;
    for (size_t i = lo; i < hi && i < u->n; i++) u->params[i] -= 0.5f * u->grads[i];
}

static void test_update(const Ctx *x)
{
    const size_t n = 300007;
    size_t wrong = 0, runs = 0;
    for (int li = 0; li < x->nlayouts; li++) {
        AllreduceComm *c = make_comm(x->layouts[li], 0);
        float *win = allreduce_buffer_alloc(c, 2 * n + 16);
        if (!win) MPI_Abort(MPI_COMM_WORLD, 1);
        float *grads = win + 1, *params = win + n + 7;
        for (size_t w = 0; w < sizeof WIRES / sizeof WIRES[0]; w++)
            for (int a = 0; a < NALGO; a++) {
                AllreducePlan *p = NULL;
                if (allreduce_plan(c, ALGOS[a], n, ALLREDUCE_WINDOW_ONLY | WIRES[w].flag, &p))
                    MPI_Abort(MPI_COMM_WORLD, 1);
                for (int async = 0; async < 2; async++) {
                    for (size_t i = 0; i < n; i++) {
                        grads[i] = value(x->rank, i, 1.0f);
                        params[i] = (float)(i % 17);
                    }
                    UpdateArg u = {grads, params, n};
                    if (async) {
                        AllreduceTicket tk;
                        EXPECT(allreduce_start_update(p, grads, params, update_fn, &u, &tk) == BASIN_OK, "start");
                        EXPECT(allreduce_wait(c, tk) == BASIN_OK, "wait");
                    } else {
                        EXPECT(allreduce_run_update(p, grads, params, update_fn, &u) == BASIN_OK, "update");
                    }
                    size_t bad = 0;
                    for (size_t i = 0; i < n; i++) bad += params[i] != (float)(i % 17) - 0.5f * sum_of(x->size, i, 1.0f);
                    EXPECT(bad == 0, "P=%d K=%d %s %s%s update: %zu wrong parameters", x->size, x->layouts[li],
                           WIRES[w].name, ALGOS[a], async ? " async" : "", bad);
                    wrong += bad;
                    runs++;
                }
                allreduce_plan_free(p);
            }
        allreduce_buffer_free(c, win);
        allreduce_comm_free(c);
    }
    /* mpi cannot send 16 bits; unknown names are refused. */
    AllreduceComm *c = make_comm(0, 0);
    AllreducePlan *p = NULL;
    EXPECT(allreduce_plan(c, "mpi", 10, ALLREDUCE_WIRE_BF16, &p) == BASIN_ERR_USAGE && !p, "mpi with bf16 accepted");
    EXPECT(allreduce_plan(c, "rhd", 10, ALLREDUCE_WIRE_BF16 | ALLREDUCE_WIRE_FP16, &p) == BASIN_ERR_USAGE && !p,
           "two wire formats accepted");
    unsigned f = 99;
    EXPECT(allreduce_wire_parse("fp32", &f) == 0 && f == 0, "parse fp32");
    EXPECT(allreduce_wire_parse("bf16", &f) == 0 && f == ALLREDUCE_WIRE_BF16, "parse bf16");
    EXPECT(allreduce_wire_parse("fp16", &f) == 0 && f == ALLREDUCE_WIRE_FP16, "parse fp16");
    EXPECT(allreduce_wire_parse("fp8", &f) == -1, "parse fp8");
    allreduce_comm_free(c);
    if (x->rank == 0) printf("update: P=%d: %zu runs, %zu wrong parameters\n", x->size, runs, wrong);
}

int main(int argc, char **argv)
{
    int provided;
    MPI_OK(allreduce_mpi_init(&argc, &argv, &provided));
    Ctx x = {0};
    MPI_OK(MPI_Comm_rank(MPI_COMM_WORLD, &x.rank));
    MPI_OK(MPI_Comm_size(MPI_COMM_WORLD, &x.size));
    const int default_layouts[] = {0, 1, 2, 3};
    memcpy(x.layouts, default_layouts, sizeof default_layouts);
    x.nlayouts = 4;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--layouts") && i + 1 < argc) {
            x.nlayouts = 0;
            for (char *tok = strtok(argv[++i], ","); tok && x.nlayouts < 8; tok = strtok(NULL, ","))
                x.layouts[x.nlayouts++] = atoi(tok);
        } else {
            if (x.rank == 0) fprintf(stderr, "usage: test_wire [--layouts K,K,...]\n");
            MPI_Finalize();
            return 2;
        }
    }
    double t0 = MPI_Wtime();
    test_exact(&x);
    test_bound(&x);
    test_update(&x);
    int fails = 0;
    MPI_OK(MPI_Allreduce(&test_failures_, &fails, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD));
    if (x.rank == 0) printf("P=%d: %.1f s\n", x.size, MPI_Wtime() - t0);
    MPI_Finalize();
    if (fails) {
        if (x.rank == 0) fprintf(stderr, "test_wire P=%d: %d check(s) failed over all ranks\n", x.size, fails);
        return 1;
    }
    return x.rank == 0 ? test_finish("test_wire") : 0;
}
