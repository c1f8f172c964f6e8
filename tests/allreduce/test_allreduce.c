/* All-reduce under mpirun: one launch per world size runs every algorithm,
 * supernode layout, count and buffer placement in-process.
 *
 *   mpirun -np P test_allreduce [--big-count N] [--layouts K,K,...]
 *                               [--expect-nodes S] [--only exact,bits,chunks,async,update]
 *
 * --layouts lists the supernode sizes to test (default 0,1,2,3; 0 = ranks
 * sharing a host). The first layout runs every algorithm, the others hier
 * and auto.
 *
 * exact   inputs are small integers, so every summation order gives the
 *         same exact result: the number of wrong elements must be 0.
 * bits    random floats: every rank must end with the same bits, and the
 *         sum must be within the float rounding bound of a double sum.
 * chunks  max_message_count lowered so every message is split into many
 *         MPI calls.
 * async   many overlapping slices started at once complete in order.
 * update  the sharded update (reduce-scatter, update on the owner,
 *         all-gather of the parameters) and the gather of owned state.
 */
#include "allreduce/allreduce.h"
#include "core/error.h"
#include "exact.h"
#include "testing.h"

#include <float.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

typedef struct Ctx {
    int rank, size;
    size_t big_count;
    int layouts[8]; /* supernode sizes to test; 0 = ranks sharing a host */
    int nlayouts;
    int expect_nodes; /* > 0: supernodes layout 0 must find (distinct hosts) */
} Ctx;

static const char *const ALGOS[] = {"rhd", "ring", "hier", "mpi", "auto"};
enum { NALGO = sizeof ALGOS / sizeof ALGOS[0] };

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static float random_value(uint64_t seed, int rank, size_t i)
{
    uint64_t h = mix64(seed ^ mix64(((uint64_t)rank << 40) ^ i));
    return (float)((double)(h >> 40) / (double)(1ull << 24) * 2.0 - 1.0); /* [-1, 1), 24 bits */
}

static uint64_t hash_floats(const float *x, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    const unsigned char *b = (const unsigned char *)x;
    for (size_t i = 0; i < n * sizeof(float); i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
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

/* Buffer placements: where send and recv live. */
enum { IN_PRIVATE, IN_WINDOW, OUT_PRIV_PRIV, OUT_PRIV_WIN, OUT_WIN_PRIV, NPLACE };
static const char *const PLACE[] = {"in-place private", "in-place window", "out private->private",
                                    "out private->window", "out window->private"};

typedef struct Buffers {
    float *priv_a, *priv_b; /* (cap) */
    float *win;             /* (2 cap + 16) from allreduce_buffer_alloc */
    size_t cap;
} Buffers;

static void buffers_make(AllreduceComm *c, Buffers *b, size_t cap)
{
    b->cap = cap;
    b->priv_a = basin_aligned_alloc((cap ? cap : 1) * sizeof(float));
    b->priv_b = basin_aligned_alloc((cap ? cap : 1) * sizeof(float));
    b->win = allreduce_buffer_alloc(c, 2 * cap + 16);
    if (!b->priv_a || !b->priv_b || !b->win) MPI_Abort(MPI_COMM_WORLD, 1);
}

static void buffers_free(AllreduceComm *c, Buffers *b)
{
    free(b->priv_a);
    free(b->priv_b);
    allreduce_buffer_free(c, b->win);
}

/* Slices at odd offsets so that nothing relies on alignment. */
static void placement(Buffers *b, int place, float **send, float **recv)
{
    float *win_a = b->win + 3, *win_b = b->win + b->cap + 9;
    switch (place) {
    case IN_PRIVATE: *send = *recv = b->priv_a; break;
    case IN_WINDOW: *send = *recv = win_a; break;
    case OUT_PRIV_PRIV: *send = b->priv_a, *recv = b->priv_b; break;
    case OUT_PRIV_WIN: *send = b->priv_a, *recv = win_b; break;
    default: *send = win_a, *recv = b->priv_b; break;
    }
}

/* Sum exact inputs with one plan in every placement; returns wrong elements. */
static size_t check_exact(const Ctx *x, AllreducePlan *p, Buffers *b, const char *what)
{
    size_t n = allreduce_plan_count(p), wrong_total = 0;
    for (int place = 0; place < NPLACE; place++) {
        float *send, *recv;
        placement(b, place, &send, &recv);
        for (size_t i = 0; i < n; i++) send[i] = exact_value(x->rank, i);
        if (send != recv)
            for (size_t i = 0; i < n; i++) recv[i] = -12345.0f;
        int st = allreduce_run(p, send, recv);
        EXPECT(st == BASIN_OK, "%s %s: status %d", what, PLACE[place], st);
        size_t wrong = 0, first = 0;
        for (size_t i = 0; i < n; i++)
            if (recv[i] != exact_sum(x->size, i) && wrong++ == 0) first = i;
        if (send != recv)
            for (size_t i = 0; i < n; i++)
                if (send[i] != exact_value(x->rank, i) && wrong++ == 0) first = i;
        EXPECT(wrong == 0, "%s %s: %zu wrong elements, first at %zu (got %g want %g)", what, PLACE[place], wrong,
               first, n ? (double)recv[first] : 0.0, n ? (double)exact_sum(x->size, first) : 0.0);
        wrong_total += wrong;
    }
    return wrong_total;
}

/* The counts every part runs; returns the largest. */
static size_t counts_for(const Ctx *x, size_t *counts, int *ncounts)
{
    int k = 0;
    counts[k++] = 0;
    counts[k++] = 1;
    counts[k++] = (size_t)x->size - 1;
    counts[k++] = (size_t)x->size + 1;
    counts[k++] = 10007; /* prime */
    if (x->big_count) counts[k++] = x->big_count;
    *ncounts = k;
    size_t cap = 0;
    for (int i = 0; i < k; i++)
        if (counts[i] > cap) cap = counts[i];
    return cap;
}

static void test_exact(const Ctx *x)
{
    /* Supernode layouts (default 0 = per host, then K = 1, 2, 3); with P not
     * a multiple of K the last supernode is smaller (uneven). Algorithms other
     * than hier and auto ignore the layout, so they run with the first only. */
    const int *layouts = x->layouts;
    size_t counts[8];
    int ncounts;
    size_t cap = counts_for(x, counts, &ncounts);
    size_t cases = 0, wrong = 0;
    for (int li = 0; li < x->nlayouts; li++) {
        AllreduceComm *c = make_comm(layouts[li], 0);
        const AllreduceTopology *t = allreduce_topology(c);
        if (layouts[li] == 0 && x->expect_nodes)
            EXPECT(t->nodes == x->expect_nodes, "found %d supernodes (hosts), expected %d", t->nodes,
                   x->expect_nodes);
        Buffers b;
        buffers_make(c, &b, cap);
        for (int a = 0; a < NALGO; a++) {
            if (li > 0 && strcmp(ALGOS[a], "hier") && strcmp(ALGOS[a], "auto")) continue;
            for (int ci = 0; ci < ncounts; ci++) {
                AllreducePlan *p = NULL;
                int st = allreduce_plan(c, ALGOS[a], counts[ci], 0, &p);
                EXPECT(st == BASIN_OK && p, "plan %s count %zu", ALGOS[a], counts[ci]);
                if (!p) continue;
                char what[160];
                snprintf(what, sizeof what, "P=%d supernodes=%d (K=%d, local %d/%d) %s(%s) count=%zu", x->size,
                         t->nodes, layouts[li], t->local_rank, t->local_size, ALGOS[a],
                         allreduce_plan_algorithm(p), counts[ci]);
                wrong += check_exact(x, p, &b, what);
                cases += NPLACE;
                allreduce_plan_free(p);
            }
        }
        /* hier planned for window buffers only: a slice in place, no staging. */
        if (cap) {
            AllreducePlan *p = NULL;
            size_t n = cap / 2 + 1;
            EXPECT(allreduce_plan(c, "hier", n, ALLREDUCE_WINDOW_ONLY, &p) == BASIN_OK, "plan window-only");
            float *slice = b.win + 17;
            for (size_t i = 0; i < n; i++) slice[i] = exact_value(x->rank, i);
            EXPECT(allreduce_run(p, slice, slice) == BASIN_OK, "window-only run");
            size_t bad = 0;
            for (size_t i = 0; i < n; i++) bad += slice[i] != exact_sum(x->size, i);
            EXPECT(bad == 0, "window-only hier K=%d: %zu wrong", layouts[li], bad);
            wrong += bad;
            cases++;
            allreduce_plan_free(p);
        }
        buffers_free(c, &b);
        allreduce_comm_free(c);
    }
    if (x->rank == 0)
        printf("exact: P=%d: %zu runs (algorithms x layouts x counts x placements), %zu wrong elements\n", x->size,
               cases, wrong);
}

static void test_bits(const Ctx *x)
{
    const int *layouts = x->layouts;
    size_t n = x->big_count ? x->big_count : 100003;
    float *send = basin_aligned_alloc(n * sizeof(float)), *recv = basin_aligned_alloc(n * sizeof(float));
    uint64_t *hashes = calloc((size_t)x->size, sizeof *hashes);
    int runs = 0;
    for (int li = 0; li < x->nlayouts; li++) {
        AllreduceComm *c = make_comm(layouts[li], 0);
        for (int a = 0; a < NALGO; a++) {
            if (li > 0 && strcmp(ALGOS[a], "hier") && strcmp(ALGOS[a], "auto")) continue;
            AllreducePlan *p = NULL;
            if (allreduce_plan(c, ALGOS[a], n, 0, &p)) MPI_Abort(MPI_COMM_WORLD, 1);
            for (size_t i = 0; i < n; i++) send[i] = random_value(42, x->rank, i);
            EXPECT(allreduce_run(p, send, recv) == BASIN_OK, "run %s", ALGOS[a]);
            uint64_t h = hash_floats(recv, n);
            MPI_Allgather(&h, 1, MPI_UINT64_T, hashes, 1, MPI_UINT64_T, MPI_COMM_WORLD);
            int same = 1;
            for (int r = 0; r < x->size; r++) same &= hashes[r] == hashes[0];
            EXPECT(same, "P=%d K=%d %s: ranks ended with different bits", x->size, layouts[li], ALGOS[a]);
            /* Each float sum of P terms in [-1, 1) rounds P-1 times, each by at
             * most half an ulp of a partial sum <= P: bound (P-1) * P * eps/2. */
            double tol = (double)(x->size - 1) * x->size * FLT_EPSILON / 2 + 1e-30;
            size_t bad = 0;
            for (size_t i = 0; i < n; i += 97) {
                double ref = 0;
                for (int r = 0; r < x->size; r++) ref += random_value(42, r, i);
                bad += fabs(recv[i] - ref) > tol;
            }
            EXPECT(bad == 0, "P=%d %s: %zu sums off by more than %g", x->size, ALGOS[a], bad, tol);
            runs++;
            allreduce_plan_free(p);
        }
        allreduce_comm_free(c);
    }
    free(send);
    free(recv);
    free(hashes);
    if (x->rank == 0) printf("bits: P=%d: %d runs of %zu random floats, identical across ranks checked\n", x->size, runs, n);
}

static void test_chunks(const Ctx *x)
{
    /* 10007 floats in messages of at most 97: every path splits its messages. */
    AllreduceComm *c = make_comm(x->layouts[x->nlayouts - 1], 97);
    Buffers b;
    buffers_make(c, &b, 10007);
    size_t wrong = 0;
    for (int a = 0; a < NALGO; a++) {
        AllreducePlan *p = NULL;
        if (allreduce_plan(c, ALGOS[a], 10007, 0, &p)) MPI_Abort(MPI_COMM_WORLD, 1);
        char what[96];
        snprintf(what, sizeof what, "P=%d chunked %s", x->size, ALGOS[a]);
        wrong += check_exact(x, p, &b, what);
        allreduce_plan_free(p);
    }
    buffers_free(c, &b);
    allreduce_comm_free(c);
    if (x->rank == 0) printf("chunks: P=%d: messages split at 97 floats, %zu wrong elements\n", x->size, wrong);
}

static void test_async(const Ctx *x)
{
    enum { NSLICE = 48 };
    const int layouts[] = {x->layouts[0], x->layouts[x->nlayouts - 1]};
    for (size_t li = 0; li < 2; li++) {
        AllreduceComm *c = make_comm(layouts[li], 0);
        size_t off[NSLICE + 1];
        off[0] = 0;
        for (int s = 0; s < NSLICE; s++) off[s + 1] = off[s] + (s % 7 == 3 ? 0 : (size_t)(s * s * 37 % 5003) + 1);
        size_t total = off[NSLICE];
        float *win = allreduce_buffer_alloc(c, total);
        float *priv = basin_aligned_alloc(total * sizeof(float));
        AllreducePlan *plans[NSLICE];
        for (int s = 0; s < NSLICE; s++)
            if (allreduce_plan(c, ALGOS[s % NALGO], off[s + 1] - off[s], 0, &plans[s])) MPI_Abort(MPI_COMM_WORLD, 1);
        size_t order_errors = 0, wrong = 0;
        for (int round = 0; round < 3; round++) {
            for (size_t i = 0; i < total; i++) win[i] = priv[i] = exact_value(x->rank, i + (size_t)round);
            AllreduceTicket tk[NSLICE];
            for (int s = 0; s < NSLICE; s++) {
                /* Odd slices go out-of-place from the window into private memory. */
                float *send = win + off[s], *recv = s % 2 ? priv + off[s] : win + off[s];
                EXPECT(allreduce_start(plans[s], send, recv, &tk[s]) == BASIN_OK, "start slice %d", s);
            }
            /* Poll newest first: once a slice is seen done, every earlier one,
             * tested afterwards, must be done too. */
            for (int done_all = 0; !done_all;) {
                int later_done = 0;
                done_all = 1;
                for (int s = NSLICE - 1; s >= 0; s--) {
                    int d = 0;
                    EXPECT(allreduce_test(c, tk[s], &d) == BASIN_OK, "test");
                    if (later_done && !d) order_errors++;
                    later_done |= d;
                    done_all &= d;
                }
                if (round == 1) break; /* round 1 waits instead, newest first */
                /* Leave the cores to the progress threads: a poller that
                 * only calls sched_yield keeps its core under CFS. */
                nanosleep(&(struct timespec){0, 50000}, NULL);
            }
            if (round == 1) {
                EXPECT(allreduce_wait(c, tk[NSLICE - 1]) == BASIN_OK, "wait last");
                for (int s = 0; s < NSLICE; s++) {
                    int d = 0;
                    allreduce_test(c, tk[s], &d);
                    if (!d) order_errors++;
                }
            }
            if (round == 2) {
                /* A blocking run while the engine is up goes through the queue. */
                AllreducePlan *p = NULL;
                float one = 1.0f, sum = 0.0f;
                if (allreduce_plan(c, "rhd", 1, 0, &p)) MPI_Abort(MPI_COMM_WORLD, 1);
                EXPECT(allreduce_run(p, &one, &sum) == BASIN_OK && sum == (float)x->size, "blocking run: %g", sum);
                allreduce_plan_free(p);
            }
            for (int s = 0; s < NSLICE; s++) EXPECT(allreduce_wait(c, tk[s]) == BASIN_OK, "wait slice %d", s);
            for (int s = 0; s < NSLICE; s++) {
                const float *res = s % 2 ? priv : win;
                for (size_t i = off[s]; i < off[s + 1]; i++) wrong += res[i] != exact_sum(x->size, i + (size_t)round);
            }
        }
        EXPECT(order_errors == 0, "async K=%d: %zu slices completed before an earlier one", layouts[li], order_errors);
        EXPECT(wrong == 0, "async K=%d: %zu wrong elements", layouts[li], wrong);
        if (x->rank == 0)
            printf("async: P=%d K=%d: %d slices x 3 rounds (%zu floats), out-of-order %zu, wrong %zu\n", x->size,
                   layouts[li], NSLICE, total, order_errors, wrong);
        for (int s = 0; s < NSLICE; s++) allreduce_plan_free(plans[s]);
        free(priv);
        allreduce_buffer_free(c, win);
        allreduce_comm_free(c);
    }
}

/* ---- update: reduce-scatter, update on the owner, all-gather ------------ */

typedef struct UpdateArg {
    float *grads, *params, *mom;
    size_t n, touched, bad_ranges;
    unsigned char *seen; /* (n) elements this rank's fn updated */
} UpdateArg;

/* A stand-in optimizer: p -= 0.5 g, mom = g. Exact on exact inputs. */
static void update_fn(void *arg, size_t lo, size_t hi)
{
    UpdateArg *u = arg;
    if (lo >= hi || hi > u->n) {
        u->bad_ranges++;
        return;
    }
    for (size_t i = lo; i < hi; i++) {
        if (u->seen[i]++) u->bad_ranges++; /* updated twice */
        u->params[i] -= 0.5f * u->grads[i];
        u->mom[i] = u->grads[i];
    }
    u->touched += hi - lo;
}

static void test_update(const Ctx *x)
{
    size_t counts[8];
    int ncounts;
    size_t cap = counts_for(x, counts, &ncounts);
    size_t cases = 0, wrong_p = 0, wrong_m = 0, bad = 0, cover = 0, sharded = 0;
    unsigned char *seen = calloc(cap ? cap : 1, 1);
    for (int li = 0; li < x->nlayouts; li++) {
        AllreduceComm *c = make_comm(x->layouts[li], 0);
        const AllreduceTopology *t = allreduce_topology(c);
        float *win = allreduce_buffer_alloc(c, 3 * cap + 32);
        if (!win || !seen) MPI_Abort(MPI_COMM_WORLD, 1);
        /* Three disjoint slices at odd offsets. */
        float *grads = win + 3, *params = win + cap + 11, *mom = win + 2 * cap + 21;
        for (int a = 0; a < NALGO; a++) {
            for (int ci = 0; ci < ncounts; ci++) {
                size_t n = counts[ci];
                AllreducePlan *p = NULL;
                if (allreduce_plan(c, ALGOS[a], n, ALLREDUCE_WINDOW_ONLY, &p)) MPI_Abort(MPI_COMM_WORLD, 1);
                for (int async = 0; async < 2; async++) {
                    for (size_t i = 0; i < n; i++) {
                        grads[i] = exact_value(x->rank, i);
                        params[i] = (float)(i % 17);                /* replicated */
                        mom[i] = (float)(1000 + x->rank);           /* stale everywhere */
                        seen[i] = 0;
                    }
                    UpdateArg u = {grads, params, mom, n, 0, 0, seen};
                    if (async) {
                        AllreduceTicket tk;
                        EXPECT(allreduce_start_update(p, grads, params, update_fn, &u, &tk) == BASIN_OK, "start");
                        EXPECT(allreduce_wait(c, tk) == BASIN_OK, "wait");
                    } else {
                        EXPECT(allreduce_run_update(p, grads, params, update_fn, &u) == BASIN_OK, "run_update");
                    }
                    EXPECT(allreduce_gather_owned(p, mom) == BASIN_OK, "gather");
                    for (size_t i = 0; i < n; i++) {
                        float s = exact_sum(x->size, i);
                        wrong_p += params[i] != (float)(i % 17) - 0.5f * s;
                        wrong_m += mom[i] != s;
                    }
                    bad += u.bad_ranges;
                    /* Every element updated once per supernode when hier
                     * shards, once per rank otherwise. */
                    unsigned long long total = u.touched;
                    MPI_Allreduce(MPI_IN_PLACE, &total, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
                    int shards = !strcmp(allreduce_plan_algorithm(p), "hier");
                    unsigned long long want = (unsigned long long)n * (unsigned long long)(shards ? t->nodes : x->size);
                    if (total != want) cover++;
                    if (shards && t->local_size > 1 && n >= (size_t)t->local_size && u.touched < n) sharded++;
                    cases++;
                }
                allreduce_plan_free(p);
            }
        }
        /* A sharded update needs window buffers. */
        if (t->local_size > 1 && cap) {
            AllreducePlan *p = NULL;
            float *priv = basin_aligned_alloc(cap * sizeof(float));
            if (allreduce_plan(c, "hier", cap, 0, &p) || !priv) MPI_Abort(MPI_COMM_WORLD, 1);
            UpdateArg u = {priv, params, mom, cap, 0, 0, seen};
            EXPECT(allreduce_run_update(p, priv, params, update_fn, &u) == BASIN_ERR_USAGE,
                   "hier update on private memory must be refused");
            allreduce_plan_free(p);
            free(priv);
        }
        allreduce_buffer_free(c, win);
        allreduce_comm_free(c);
    }
    free(seen);
    unsigned long long any_sharded = sharded;
    MPI_Allreduce(MPI_IN_PLACE, &any_sharded, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    EXPECT(wrong_p == 0, "update: %zu wrong parameters", wrong_p);
    EXPECT(wrong_m == 0, "update: %zu wrong gathered momenta", wrong_m);
    EXPECT(bad == 0, "update: %zu bad or repeated ranges", bad);
    EXPECT(cover == 0, "update: %zu runs did not update each element once per supernode (hier) or rank", cover);
    if (x->size > 1) EXPECT(any_sharded > 0, "update: hier never split the work between local ranks");
    if (x->rank == 0)
        printf("update: P=%d: %zu runs, wrong params %zu, wrong momenta %zu, sharded runs (all ranks) %llu\n",
               x->size, cases, wrong_p, wrong_m, any_sharded);
}

/* Is name one of the comma-separated words of list? */
static int list_has(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncmp(p, name, n)) return 1;
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int provided;
    if (allreduce_mpi_init(&argc, &argv, &provided) != MPI_SUCCESS) return 1;
    Ctx x = {0};
    MPI_Comm_rank(MPI_COMM_WORLD, &x.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &x.size);
    const char *only = NULL;
    const int default_layouts[] = {0, 1, 2, 3};
    memcpy(x.layouts, default_layouts, sizeof default_layouts);
    x.nlayouts = 4;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--big-count") && i + 1 < argc)
            x.big_count = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--expect-nodes") && i + 1 < argc)
            x.expect_nodes = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--layouts") && i + 1 < argc) {
            x.nlayouts = 0;
            for (char *tok = strtok(argv[++i], ","); tok && x.nlayouts < 8; tok = strtok(NULL, ","))
                x.layouts[x.nlayouts++] = atoi(tok);
        }
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else {
            if (x.rank == 0) fprintf(stderr, "usage: test_allreduce [--big-count N] [--layouts K,K,...] [--expect-nodes S]\n"
                                "                      [--only exact,bits,chunks,async,update]\n");
            MPI_Finalize();
            return 2;
        }
    }
    double t0 = MPI_Wtime();
    struct {
        const char *name;
        void (*fn)(const Ctx *);
    } parts[] = {{"exact", test_exact}, {"bits", test_bits}, {"chunks", test_chunks}, {"async", test_async}, {"update", test_update}};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if (only && !list_has(only, parts[i].name)) continue;
        double t = MPI_Wtime();
        parts[i].fn(&x);
        if (x.rank == 0) printf("  (%s: %.1f s)\n", parts[i].name, MPI_Wtime() - t);
    }
    int fails = 0;
    MPI_Allreduce(&test_failures_, &fails, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (x.rank == 0) printf("P=%d: %.1f s\n", x.size, MPI_Wtime() - t0);
    MPI_Finalize();
    if (fails) {
        if (x.rank == 0) fprintf(stderr, "test_allreduce P=%d: %d check(s) failed over all ranks\n", x.size, fails);
        return 1;
    }
    return x.rank == 0 ? test_finish("test_allreduce") : 0;
}
