/* The GPU all-reduce (cuda/allreduce_gpu.h) under mpirun:
 *
 *   mpirun -np P test_allreduce_gpu [--supernode-size K]
 *
 * K > 0 groups consecutive ranks in supernodes of K (AllreduceConfig.
 * supernode_size); the default 0 puts the ranks of a host in one. For each
 * algorithm (auto, hier, nccl) and count (1, 7, 1000, 2^20 + 3, then 1000
 * again: cached plans and reused staging):
 *
 * exact   inputs are small integers, ((i*7 + rank*13) % 19) - 9, whose sum
 *         is exact in float in any order: the number of wrong elements
 *         must be 0. The inputs are copied up asynchronously (pinned memory)
 *         on the stream handed to the run, which must order itself after
 *         them; the rest of the buffer is poisoned with NaN before, and 64
 *         canary floats past the end must come back unchanged.
 * bits    random floats in [-1, 1): every rank must hold the same bits
 *         (hash, MPI MIN == MAX), and each element must be within
 *         (P-1) * FLT_EPSILON * sum |x_r| of the double sum: a sum of P
 *         floats in any order errs by at most (P-1) u sum |x_r| with
 *         u = FLT_EPSILON / 2 (plus O(u^2)); twice that leaves margin
 *         without admitting a lost or doubled term (error ~|x_r|).
 *
 * wire    hier (and auto) again with ALLREDUCE_WIRE_BF16 and _FP16: exact
 *         inputs come out exact (their partial sums are small integers,
 *         representable in both formats; fp16 through its scale); random
 *         inputs end with the same bits on every rank and within
 *         (R + 1) u sum |x_r| + P^2 FLT_EPSILON of the double sum (R the
 *         rhd roundings across S supernodes, allreduce.h; u = 2^-8, 2^-11);
 *         and across supernodes most results differ from the fp32 run (the
 *         16-bit path ran), in one supernode none does. nccl refuses a
 *         16-bit wire with BASIN_ERR_USAGE.
 *
 * Sharing a GPU. NCCL refuses two ranks on one GPU. With P ranks on one GPU
 * the algorithms that would put two of them in one NCCL communicator
 * (nccl: any two ranks of a host; hier: two ranks of one supernode) are
 * skipped with a printed reason, after checking that gpu_allreduce_create
 * refuses them with BASIN_ERR_USAGE. hier with --supernode-size 1 needs no
 * NCCL (host-staged rhd alone) and runs on one shared GPU.
 *
 * Exit: 77 on every rank without a CUDA device (each prints why), and 77
 * when every algorithm had to be skipped; otherwise 0 or 1, the same on
 * every rank. */
#include <cuda_runtime_api.h>
#include <float.h>
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allreduce/allreduce.h"
#include "allreduce/exact.h"
#include "allreduce_gpu.h"
#include "core/error.h"
#include "cuda/cuda_device.h"
#include "ops_cuda.h"
#include "testing.h"

#define CHECK_CUDA(call)                                                                                   \
    do {                                                                                                   \
        cudaError_t e_ = (call);                                                                           \
        if (e_ != cudaSuccess) {                                                                           \
            fprintf(stderr, "%s:%d: %s failed: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorName(e_), \
                    cudaGetErrorString(e_));                                                               \
            MPI_Abort(MPI_COMM_WORLD, 1);                                                                  \
        }                                                                                                  \
    } while (0)

#define CHECK_MPI(call)                                                                 \
    do {                                                                                \
        int rc_ = (call);                                                               \
        if (rc_ != MPI_SUCCESS) {                                                       \
            char msg_[MPI_MAX_ERROR_STRING];                                            \
            int len_ = 0;                                                               \
            MPI_Error_string(rc_, msg_, &len_);                                         \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call, msg_); \
            MPI_Abort(MPI_COMM_WORLD, 1);                                               \
        }                                                                               \
    } while (0)

enum { CANARY = 64, BUS_LEN = 32 };
static const size_t COUNTS[] = {1, 7, 1000, (1u << 20) + 3, 1000};
enum { NCOUNT = sizeof COUNTS / sizeof COUNTS[0] };

typedef struct Ctx {
    int rank, size;
    const AllreduceTopology *topo;
    int nccl_blocked; /* two ranks of one host on one GPU */
    int hier_blocked; /* two ranks of one supernode on one GPU */
    size_t max_count;
    cudaStream_t stream;
    float *dev;        /* (max_count + CANARY) device */
    float *hin, *hout; /* (max_count + CANARY) pinned */
    int ran;           /* algorithms that ran (not skipped) */
} Ctx;

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static float random_value(int rank, size_t i)
{
    uint64_t h = mix64(0x5eed ^ mix64(((uint64_t)rank << 40) ^ i));
    return (float)((double)(h >> 40) / (double)(1ull << 24) * 2.0 - 1.0); /* [-1, 1), 24 bits */
}

/* The double sum over the ranks of random_value(r, i); *mag the sum of their magnitudes. */
static double random_sum(const Ctx *x, size_t i, double *mag)
{
    double sum = 0.0;
    *mag = 0.0;
    for (int r = 0; r < x->size; r++) {
        double v = random_value(r, i);
        sum += v;
        *mag += fabs(v);
    }
    return sum;
}

static float canary_value(size_t j)
{
    return 1000.0f + (float)j;
}

static uint64_t hash_floats(const float *x, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    const unsigned char *b = (const unsigned char *)x;
    for (size_t i = 0; i < n * sizeof(float); i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* Which NCCL communicators would hold two ranks on one GPU: every rank
 * gathers (host, PCI bus id, supernode) of every rank. */
static void find_shared_gpus(Ctx *x)
{
    MPI_Comm host;
    int dev = -1, host_id = x->rank;
    CHECK_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, x->rank, MPI_INFO_NULL, &host));
    CHECK_MPI(MPI_Bcast(&host_id, 1, MPI_INT, 0, host)); /* lowest world rank of the host */
    MPI_Comm_free(&host);
    char bus[BUS_LEN] = {0};
    CHECK_CUDA(cudaGetDevice(&dev));
    CHECK_CUDA(cudaDeviceGetPCIBusId(bus, BUS_LEN, dev));
    int mine[2] = {host_id, x->topo->node};
    int *ids = calloc((size_t)x->size * 2, sizeof *ids);
    char *buses = calloc((size_t)x->size, BUS_LEN);
    if (!ids || !buses) {
        fprintf(stderr, "test_allreduce_gpu: out of memory\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    CHECK_MPI(MPI_Allgather(mine, 2, MPI_INT, ids, 2, MPI_INT, MPI_COMM_WORLD));
    CHECK_MPI(MPI_Allgather(bus, BUS_LEN, MPI_CHAR, buses, BUS_LEN, MPI_CHAR, MPI_COMM_WORLD));
    for (int i = 0; i < x->size; i++)
        for (int j = i + 1; j < x->size; j++) {
            if (ids[2 * i] != ids[2 * j]) continue;
            if (strncmp(buses + (size_t)i * BUS_LEN, buses + (size_t)j * BUS_LEN, BUS_LEN)) continue;
            x->nccl_blocked = 1;
            if (ids[2 * i + 1] == ids[2 * j + 1]) x->hier_blocked = 1;
        }
    free(ids);
    free(buses);
}

/* Every rank holds the same bits in hout[0, n). */
static void expect_same_bits(Ctx *x, const char *algo, const char *what, size_t n)
{
    unsigned long long h = hash_floats(x->hout, n), lo = 0, hi = 0;
    CHECK_MPI(MPI_Allreduce(&h, &lo, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, MPI_COMM_WORLD));
    CHECK_MPI(MPI_Allreduce(&h, &hi, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD));
    EXPECT(lo == hi, "%s %s count %zu: ranks hold different bits (hash %llx vs %llx)", algo, what, n, lo, hi);
}

/* Upload hin[0, n) on the stream without waiting, run, download. The rest of
 * the device buffer is NaN and CANARY canaries follow the n inputs. */
static void upload_run_download(Ctx *x, GpuAllreduce *g, const char *algo, size_t n)
{
    for (size_t j = 0; j < CANARY; j++) x->hin[n + j] = canary_value(j);
    CHECK_CUDA(cudaMemset(x->dev, 0xff, (x->max_count + CANARY) * sizeof(float))); /* NaN */
    CHECK_CUDA(cudaDeviceSynchronize());
    CHECK_CUDA(cudaMemcpyAsync(x->dev, x->hin, (n + CANARY) * sizeof(float), cudaMemcpyHostToDevice, x->stream));
    int rc = gpu_allreduce_run(g, x->dev, n, x->stream);
    EXPECT(rc == BASIN_OK, "%s count %zu: gpu_allreduce_run returned %d", algo, n, rc);
    CHECK_CUDA(cudaMemcpyAsync(x->hout, x->dev, (n + CANARY) * sizeof(float), cudaMemcpyDeviceToHost, x->stream));
    CHECK_CUDA(cudaStreamSynchronize(x->stream));
    size_t bad = 0;
    for (size_t j = 0; j < CANARY; j++) bad += x->hout[n + j] != canary_value(j);
    EXPECT(bad == 0, "%s count %zu: %zu of %d floats past the end were overwritten", algo, n, bad, CANARY);
}

static void test_exact(Ctx *x, GpuAllreduce *g, const char *algo, size_t n)
{
    for (size_t i = 0; i < n; i++) x->hin[i] = exact_value(x->rank, i);
    upload_run_download(x, g, algo, n);
    size_t wrong = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (x->hout[i] != exact_sum(x->size, i)) {
            if (!wrong) first = i;
            wrong++;
        }
    EXPECT(wrong == 0, "%s exact count %zu: %zu wrong elements, first [%zu] = %g, want %g", algo, n, wrong, first,
           (double)x->hout[first], (double)exact_sum(x->size, first));
    expect_same_bits(x, algo, "exact", n);
}

static void test_bits(Ctx *x, GpuAllreduce *g, const char *algo, size_t n)
{
    for (size_t i = 0; i < n; i++) x->hin[i] = random_value(x->rank, i);
    upload_run_download(x, g, algo, n);
    size_t wrong = 0, first = 0;
    double first_want = 0.0;
    for (size_t i = 0; i < n; i++) {
        double mag, sum = random_sum(x, i, &mag);
        if (!(fabs((double)x->hout[i] - sum) <= (x->size - 1) * (double)FLT_EPSILON * mag)) {
            if (!wrong) first = i, first_want = sum;
            wrong++;
        }
    }
    EXPECT(wrong == 0, "%s random count %zu: %zu elements off the double sum, first [%zu] = %.9g, want %.9g", algo, n,
           wrong, first, (double)x->hout[first], first_want);
    expect_same_bits(x, algo, "random", n);
}

/* start/join: three slices of one buffer started one after the other (as
 * gradient buckets during backward), then joined; the inputs are uploaded
 * on the caller's stream without waiting, so each start must order itself
 * after them, and the download after the join. */
static void test_start_join(Ctx *x, GpuAllreduce *g, const char *algo)
{
    const size_t n = 1000 < x->max_count ? 1000 : x->max_count;
    const size_t cut[4] = {0, n / 3, n / 3 + 1, n};
    for (size_t i = 0; i < n; i++) x->hin[i] = exact_value(x->rank, i);
    CHECK_CUDA(cudaMemset(x->dev, 0xff, n * sizeof(float)));
    CHECK_CUDA(cudaDeviceSynchronize());
    CHECK_CUDA(cudaMemcpyAsync(x->dev, x->hin, n * sizeof(float), cudaMemcpyHostToDevice, x->stream));
    for (int k = 0; k < 3; k++) {
        int rc = gpu_allreduce_start(g, x->dev + cut[k], cut[k + 1] - cut[k], x->stream);
        EXPECT(rc == BASIN_OK, "%s: gpu_allreduce_start of slice %d returned %d", algo, k, rc);
    }
    EXPECT(gpu_allreduce_join(g, x->stream) == BASIN_OK, "%s: gpu_allreduce_join failed", algo);
    CHECK_CUDA(cudaMemcpyAsync(x->hout, x->dev, n * sizeof(float), cudaMemcpyDeviceToHost, x->stream));
    CHECK_CUDA(cudaStreamSynchronize(x->stream));
    size_t wrong = 0;
    for (size_t i = 0; i < n; i++) wrong += x->hout[i] != exact_sum(x->size, i);
    EXPECT(wrong == 0, "%s start/join: %zu of %zu elements wrong", algo, wrong, n);
    expect_same_bits(x, algo, "start/join", n);
}

static void test_algo(Ctx *x, const char *algo)
{
    const char *want = !strcmp(algo, "auto") ? (x->topo->nodes == 1 ? "nccl" : "hier") : algo;
    int blocked = !strcmp(want, "nccl") ? x->nccl_blocked : x->hier_blocked;
    GpuAllreduce *g = NULL;
    int rc = gpu_allreduce_create(MPI_COMM_WORLD, x->topo, algo, 0, x->max_count, 120.0, &g);
    if (blocked) {
        EXPECT(rc == BASIN_ERR_USAGE, "%s: two ranks share a GPU in one NCCL communicator, but create returned %d "
               "instead of BASIN_ERR_USAGE", algo, rc);
        if (x->rank == 0)
            printf("SKIP %s (%s): two ranks that would share an NCCL communicator use one GPU; create refused it "
                   "as it should\n", algo, want);
        gpu_allreduce_free(g);
        return;
    }
    EXPECT(rc == BASIN_OK, "%s: gpu_allreduce_create returned %d", algo, rc);
    if (rc) return; /* the status is agreed over the world: every rank returns here */
    EXPECT(!strcmp(gpu_allreduce_algorithm(g), want), "%s resolved to %s, want %s", algo,
           gpu_allreduce_algorithm(g), want);
    for (int c = 0; c < NCOUNT; c++) {
        test_exact(x, g, algo, COUNTS[c]);
        test_bits(x, g, algo, COUNTS[c]);
    }
    test_start_join(x, g, algo);
    EXPECT(gpu_allreduce_run(g, x->dev, 0, x->stream) == BASIN_OK, "%s: count 0 must be a no-op", algo);
    EXPECT(gpu_allreduce_run(g, x->dev, x->max_count + 1, x->stream) == BASIN_ERR_USAGE,
           "%s: a count past max_count must be BASIN_ERR_USAGE", algo);
    gpu_allreduce_free(g);
    x->ran++;
    if (x->rank == 0) printf("ok %s (%s): %d counts, exact and random\n", algo, want, NCOUNT);
}

/* rhd's roundings of a partial sum across S supernodes (allreduce.h). */
static int rhd_roundings(int S)
{
    int lg = 0;
    while ((2 << lg) <= S) lg++;
    return S == 1 ? 0 : lg + ((S & (S - 1)) != 0);
}

static void test_wire(Ctx *x, const char *algo, unsigned wire, const char *name, double u)
{
    const char *want = !strcmp(algo, "auto") ? (x->topo->nodes == 1 ? "nccl" : "hier") : algo;
    if (!strcmp(want, "nccl") ? x->nccl_blocked : x->hier_blocked) return; /* skipped (and said so) above */
    GpuAllreduce *g = NULL, *g32 = NULL;
    int rc = gpu_allreduce_create(MPI_COMM_WORLD, x->topo, algo, wire, x->max_count, 120.0, &g);
    EXPECT(rc == BASIN_OK, "%s %s: gpu_allreduce_create returned %d", algo, name, rc);
    if (rc) return;
    const int across = x->topo->nodes > 1;
    EXPECT(!strcmp(gpu_allreduce_wire(g), across ? name : "fp32"), "%s %s: the wire is %s", algo, name,
           gpu_allreduce_wire(g));
    rc = gpu_allreduce_create(MPI_COMM_WORLD, x->topo, algo, 0, x->max_count, 120.0, &g32);
    EXPECT(rc == BASIN_OK, "%s fp32: gpu_allreduce_create returned %d", algo, rc);
    if (rc) {
        gpu_allreduce_free(g);
        return;
    }
    const size_t n = x->max_count; /* several 1 MiB chunks and a tail */
    for (int c = 0; c < NCOUNT; c++) test_exact(x, g, algo, COUNTS[c]);

    for (size_t i = 0; i < n; i++) x->hin[i] = random_value(x->rank, i);
    upload_run_download(x, g32, algo, n);
    float *ref32 = malloc(n * sizeof *ref32);
    if (!ref32) MPI_Abort(MPI_COMM_WORLD, 1);
    memcpy(ref32, x->hout, n * sizeof *ref32);
    upload_run_download(x, g, algo, n);
    expect_same_bits(x, algo, name, n);
    const int R = rhd_roundings(x->topo->nodes);
    size_t bad = 0, differ = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        double mag, sum = random_sum(x, i, &mag);
        double tol = (R + 1) * u * mag + (double)x->size * x->size * FLT_EPSILON;
        if (!(fabs((double)x->hout[i] - sum) <= tol) && bad++ == 0) first = i;
        differ += x->hout[i] != ref32[i];
    }
    EXPECT(bad == 0, "%s %s random: %zu elements beyond the bound, first [%zu] = %.9g", algo, name, bad, first,
           (double)x->hout[first]);
    if (across)
        EXPECT(differ > n / 10, "%s %s: only %zu of %zu results differ from fp32: no 16-bit rounding?", algo, name,
               differ, n);
    else
        EXPECT(differ == 0, "%s %s in one supernode: %zu results differ from fp32", algo, name, differ);
    free(ref32);
    gpu_allreduce_free(g32);
    gpu_allreduce_free(g);
    if (x->rank == 0)
        printf("ok %s (%s) wire %s: exact, bound (R = %d), %zu of %zu differ from fp32\n", algo, want, name, R,
               differ, n);
}

static void usage(const char *msg)
{
    fprintf(stderr, "test_allreduce_gpu: %s\nusage: mpirun -np P test_allreduce_gpu [--supernode-size K]\n", msg);
    exit(2);
}

int main(int argc, char **argv)
{
    int supernode_size = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help")) {
            printf("usage: mpirun -np P test_allreduce_gpu [--supernode-size K]\n"
                   "  --supernode-size K  supernodes of K consecutive ranks (0: the ranks of a host)\n");
            return 0;
        }
        if (!strcmp(argv[i], "--supernode-size") && i + 1 < argc) {
            char *end;
            long k = strtol(argv[++i], &end, 10);
            if (*end || k < 0 || k > 1 << 20) usage("--supernode-size takes an integer >= 0");
            supernode_size = (int)k;
        } else {
            usage("unknown option");
        }
    }
    int provided = 0;
    CHECK_MPI(MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided));
    if (provided < MPI_THREAD_MULTIPLE) {
        fprintf(stderr, "test_allreduce_gpu: MPI_THREAD_MULTIPLE is not available\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    Ctx x;
    memset(&x, 0, sizeof x);
    MPI_Comm_rank(MPI_COMM_WORLD, &x.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &x.size);

    require_cuda_device_on_every_rank();

    /* One GPU per rank of a host while there are enough (rank -> GPU by
     * host-local rank, as the trainer does); more ranks share them. */
    MPI_Comm host;
    int host_rank = 0;
    CHECK_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, x.rank, MPI_INFO_NULL, &host));
    MPI_Comm_rank(host, &host_rank);
    MPI_Comm_free(&host);
    if (ops_cuda_select(host_rank)) MPI_Abort(MPI_COMM_WORLD, 1);

    AllreduceConfig cfg;
    allreduce_config_default(&cfg);
    cfg.supernode_size = supernode_size;
    cfg.timeout_s = 120;
    AllreduceComm *comm = NULL;
    if (allreduce_comm_create(MPI_COMM_WORLD, &cfg, &comm)) MPI_Abort(MPI_COMM_WORLD, 1);
    x.topo = allreduce_topology(comm);
    find_shared_gpus(&x);
    if (x.rank == 0)
        printf("test_allreduce_gpu: %d ranks, %d supernodes (supernode size %d, smallest %d); shared GPU blocks "
               "nccl: %s, hier: %s\n", x.size, x.topo->nodes, supernode_size, x.topo->min_local_size,
               x.nccl_blocked ? "yes" : "no", x.hier_blocked ? "yes" : "no");

    x.max_count = (1u << 20) + 3;
    CHECK_CUDA(cudaStreamCreateWithFlags(&x.stream, cudaStreamNonBlocking));
    CHECK_CUDA(cudaMalloc((void **)&x.dev, (x.max_count + CANARY) * sizeof(float)));
    CHECK_CUDA(cudaMallocHost((void **)&x.hin, (x.max_count + CANARY) * sizeof(float)));
    CHECK_CUDA(cudaMallocHost((void **)&x.hout, (x.max_count + CANARY) * sizeof(float)));

    GpuAllreduce *bogus = NULL;
    EXPECT(gpu_allreduce_create(MPI_COMM_WORLD, x.topo, "ring", 0, x.max_count, 0, &bogus) == BASIN_ERR_USAGE &&
               !bogus,
           "an unknown algorithm must be BASIN_ERR_USAGE");
    EXPECT(gpu_allreduce_create(MPI_COMM_WORLD, x.topo, "nccl", ALLREDUCE_WIRE_BF16, x.max_count, 0, &bogus) ==
                   BASIN_ERR_USAGE && !bogus,
           "nccl with a 16-bit wire must be BASIN_ERR_USAGE");

    const char *algos[] = {"auto", "hier", "nccl"};
    for (size_t a = 0; a < sizeof algos / sizeof algos[0]; a++) test_algo(&x, algos[a]);
    for (size_t a = 0; a < 2; a++) {
        test_wire(&x, algos[a], ALLREDUCE_WIRE_BF16, "bf16", 1.0 / 256);
        test_wire(&x, algos[a], ALLREDUCE_WIRE_FP16, "fp16", 1.0 / 2048);
    }

    CHECK_CUDA(cudaFreeHost(x.hout));
    CHECK_CUDA(cudaFreeHost(x.hin));
    CHECK_CUDA(cudaFree(x.dev));
    CHECK_CUDA(cudaStreamDestroy(x.stream));
    allreduce_comm_free(comm);

    int failed = test_failures_ > 0, any_failed = 0;
    CHECK_MPI(MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
    MPI_Finalize();
    if (any_failed) {
        if (failed) return test_finish("test_allreduce_gpu");
        fprintf(stderr, "test_allreduce_gpu: rank %d: its checks passed, another rank's failed\n", x.rank);
        return 1;
    }
    if (!x.ran) {
        if (x.rank == 0)
            printf("SKIPPED: every algorithm needs NCCL with two ranks on one GPU here (the refusals were "
                   "checked); run with one GPU per rank, or --supernode-size 1\n");
        return 77;
    }
    return test_finish("test_allreduce_gpu");
}
