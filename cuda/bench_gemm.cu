/* GEMM throughput of the layer shapes of mlp and cnn through ops_cuda.gemm,
 * against one large square cuBLAS sgemm (the practical float peak of this
 * GPU, TF32 off like the backend).
 *
 *   basin-bench-gemm [--batch B]...   (default: --batch 256 --batch 1024)
 *
 * Each shape is the exact call a layer makes (core/layers.c): linear layers
 * run one gemm per batch, convolutions one per sample (so their shapes do not
 * depend on the batch). Timed with CUDA events on the backend's stream after
 * warm-up; the operands are random, and one result is checked for NaN so a
 * broken run cannot print a fast number. Exits 77 without a GPU. */
#include "ops_cuda.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#define CHECK(call)                                                                       \
    do {                                                                                  \
        cudaError_t e_ = (call);                                                          \
        if (e_ != cudaSuccess) {                                                          \
            fprintf(stderr, "basin-bench-gemm: %s failed: %s (%s:%d)\n", #call,            \
                    cudaGetErrorString(e_), __FILE__, __LINE__);                          \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

#define CHECK_BLAS(call)                                                                  \
    do {                                                                                  \
        cublasStatus_t s_ = (call);                                                       \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                \
            fprintf(stderr, "basin-bench-gemm: %s failed: %s (%s:%d)\n", #call,            \
                    cublasGetStatusString(s_), __FILE__, __LINE__);                       \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

struct Shape {
    const char *model, *layer, *pass;
    int ta, tb;
    size_t m, n, k;
    int per_sample; /* 1: convolution, one call per sample */
};

/* The calls of core/layers.c for a batch of b. */
static std::vector<Shape> shapes_for(size_t b)
{
    std::vector<Shape> s = {
        /* mlp: flatten, fc:1024, relu, fc:1024, relu, fc:10 */
        {"mlp", "fc1 784->1024", "fwd", 0, 1, b, 1024, 784, 0},
        {"mlp", "fc1 784->1024", "dW", 1, 0, 1024, 784, b, 0},
        {"mlp", "fc2 1024->1024", "fwd", 0, 1, b, 1024, 1024, 0},
        {"mlp", "fc2 1024->1024", "dW", 1, 0, 1024, 1024, b, 0},
        {"mlp", "fc2 1024->1024", "dx", 0, 0, b, 1024, 1024, 0},
        {"mlp", "fc3 1024->10", "fwd", 0, 1, b, 10, 1024, 0},
        {"mlp", "fc3 1024->10", "dW", 1, 0, 10, 1024, b, 0},
        {"mlp", "fc3 1024->10", "dx", 0, 0, b, 1024, 10, 0},
        /* cnn: conv:32:5, relu, pool:2, conv:64:5, relu, pool:2, flatten,
         * fc:1024, relu, dropout:0.5, fc:10 */
        {"cnn", "conv1 1x28x28 k5 ->32", "fwd", 0, 0, 32, 784, 25, 1},
        {"cnn", "conv1 1x28x28 k5 ->32", "dW", 0, 1, 32, 25, 784, 1},
        {"cnn", "conv2 32x14x14 k5 ->64", "fwd", 0, 0, 64, 196, 800, 1},
        {"cnn", "conv2 32x14x14 k5 ->64", "dW", 0, 1, 64, 800, 196, 1},
        {"cnn", "conv2 32x14x14 k5 ->64", "dcol", 1, 0, 800, 196, 64, 1},
        {"cnn", "fc 3136->1024", "fwd", 0, 1, b, 1024, 3136, 0},
        {"cnn", "fc 3136->1024", "dW", 1, 0, 1024, 3136, b, 0},
        {"cnn", "fc 3136->1024", "dx", 0, 0, b, 3136, 1024, 0},
        {"cnn", "fc 1024->10", "fwd", 0, 1, b, 10, 1024, 0},
        {"cnn", "fc 1024->10", "dW", 1, 0, 10, 1024, b, 0},
        {"cnn", "fc 1024->10", "dx", 0, 0, b, 1024, 10, 0},
    };
    return s;
}

static float *device_random(size_t n, unsigned seed)
{
    std::vector<float> h(n);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        h[i] = (float)(seed >> 8) * (1.0f / 16777216.0f) - 0.5f;
    }
    float *d = (float *)ops_cuda.alloc(n * sizeof(float));
    if (!d) exit(1);
    ops_cuda.to_device(d, h.data(), n * sizeof(float));
    return d;
}

/* Seconds per call of fn, timed on stream: warm-up, a probe to size the
 * loop to about 50 ms, then the loop. */
template <typename F> static double time_calls(cudaStream_t stream, F fn)
{
    cudaEvent_t t0, t1;
    CHECK(cudaEventCreate(&t0));
    CHECK(cudaEventCreate(&t1));
    for (int i = 0; i < 3; i++) fn();
    CHECK(cudaEventRecord(t0, stream));
    fn();
    CHECK(cudaEventRecord(t1, stream));
    CHECK(cudaEventSynchronize(t1));
    float ms = 0.0f;
    CHECK(cudaEventElapsedTime(&ms, t0, t1));
    int reps = ms > 0.0f ? (int)(50.0f / ms) : 1000;
    if (reps < 10) reps = 10;
    if (reps > 10000) reps = 10000;
    CHECK(cudaEventRecord(t0, stream));
    for (int i = 0; i < reps; i++) fn();
    CHECK(cudaEventRecord(t1, stream));
    CHECK(cudaEventSynchronize(t1));
    CHECK(cudaEventElapsedTime(&ms, t0, t1));
    CHECK(cudaEventDestroy(t0));
    CHECK(cudaEventDestroy(t1));
    return (double)ms / 1e3 / reps;
}

static int check_finite(const float *d, size_t n)
{
    std::vector<float> h(n);
    ops_cuda.to_host(h.data(), d, n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        if (!(h[i] == h[i])) return 0;
    return 1;
}

int main(int argc, char **argv)
{
    std::vector<size_t> batches;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc) {
            long b = atol(argv[++i]);
            if (b <= 0) {
                fprintf(stderr, "basin-bench-gemm: --batch needs a positive number\n");
                return 2;
            }
            batches.push_back((size_t)b);
        } else if (strcmp(argv[i], "--help") == 0) {
            printf("usage: basin-bench-gemm [--batch B]...   (default 256 and 1024)\n");
            return 0;
        } else {
            fprintf(stderr, "basin-bench-gemm: unknown argument %s (try --help)\n", argv[i]);
            return 2;
        }
    }
    if (batches.empty()) batches = {256, 1024};
    if (ops_cuda_device_count() == 0) {
        fprintf(stderr, "basin-bench-gemm: no CUDA device: nothing to measure\n");
        return 77;
    }
    if (ops_cuda_select(0)) return 2;
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    cudaStream_t stream = (cudaStream_t)ops_cuda_stream();

    /* The reference: an 8192^3 sgemm straight through cuBLAS, FP32 math. */
    const size_t sq = 8192;
    float *a = device_random(sq * sq, 1), *b = device_random(sq * sq, 2);
    float *c = device_random(sq * sq, 3);
    cublasHandle_t h;
    CHECK_BLAS(cublasCreate(&h));
    CHECK_BLAS(cublasSetStream(h, stream));
    CHECK_BLAS(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
    const float one = 1.0f, zero = 0.0f;
    double t_sq = time_calls(stream, [&] {
        CHECK_BLAS(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, (int)sq, (int)sq, (int)sq, &one, a,
                               (int)sq, b, (int)sq, &zero, c, (int)sq));
    });
    const double peak = 2.0 * sq * sq * sq / t_sq / 1e12;
    int ok = check_finite(c, 1024);
    CHECK_BLAS(cublasDestroy(h));

    printf("GPU: %s (sm_%d%d), FP32 (TF32 off)\n", prop.name, prop.major, prop.minor);
    printf("reference: cublasSgemm %zux%zux%zu: %.1f TFLOP/s\n\n", sq, sq, sq, peak);
    printf("%-5s %-24s %-5s %6s %6s %6s %6s %10s %9s %8s\n", "model", "layer", "pass", "batch",
           "m", "n", "k", "time_us", "TFLOP/s", "of_ref");
    for (size_t bi = 0; bi < batches.size(); bi++) {
        for (const Shape &s : shapes_for(batches[bi])) {
            /* Row-major operands as the layer stores them, packed. */
            const size_t lda = s.ta ? s.m : s.k, ldb = s.tb ? s.k : s.n, ldc = s.n;
            const float *pa = a, *pb = b;
            float *pc = c; /* every shape here fits in 8192^2 floats */
            double t = time_calls(stream, [&] {
                ops_cuda.gemm(s.ta, s.tb, s.m, s.n, s.k, 1.0f, pa, lda, pb, ldb, 0.0f, pc, ldc);
            });
            ok &= check_finite(pc, s.m * s.n < 1024 ? s.m * s.n : 1024);
            const double tf = 2.0 * s.m * s.n * s.k / t / 1e12;
            printf("%-5s %-24s %-5s %6zu %6zu %6zu %6zu %10.2f %9.2f %7.0f%%%s\n", s.model, s.layer,
                   s.pass, batches[bi], s.m, s.n, s.k, t * 1e6, tf, 100.0 * tf / peak,
                   s.per_sample ? "  (per sample)" : "");
        }
    }
    ops_cuda.free(a);
    ops_cuda.free(b);
    ops_cuda.free(c);
    if (!ok) {
        fprintf(stderr, "basin-bench-gemm: a result held NaN: the numbers above are void\n");
        return 1;
    }
    return 0;
}
