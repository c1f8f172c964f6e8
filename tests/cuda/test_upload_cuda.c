/* Double-buffered uploads with no host synchronisation in the steps (what a
 * rank with an empty batch does: no softmax_xent_fwd, so nothing waits for
 * the stream), and the device timer.
 *
 * Step s fills slot s % 2: its pinned buffer on the host, then
 * ops_cuda_upload into the slot's device matrix A (n x n, every element
 * s + 1), then R gemms C = A * ones read A and the last C is copied to
 * result s. The host never waits, so it runs steps ahead of the device:
 * without ops_cuda_upload_begin's ordering, the copy of step s + 2 into the
 * same slot lands while step s's gemms still read it (or the host rewrites
 * the pinned buffer before its copy has left), and result s holds
 * n (s + 3) instead of n (s + 1). Every value is a small integer, exact in
 * float: the check is equality.
 *
 * Exits 77 (skipped) without a CUDA device. */
#include <stdint.h>
#include <string.h>

#include "core/ops.h"
#include "ops_cuda.h"
#include "cuda_device.h"
#include "testing.h"

enum { N = 512, REPEATS = 24, STEPS = 12, SLOTS = 2 };

int main(void)
{
    require_cuda_device();
    const Ops *o = &ops_cuda;
    size_t nn = (size_t)N * N;
    float *a[SLOTS], *pin[SLOTS];
    float *ones = o->alloc(nn * sizeof(float)), *c = o->alloc(nn * sizeof(float));
    float *res = o->alloc((size_t)STEPS * N * sizeof(float)); /* row 0 of each step's C */
    float *host = malloc(nn * sizeof(float));
    EXPECT(ones && c && res && host, "allocation failed");
    if (!ones || !c || !res || !host) return test_finish("test_upload_cuda");
    for (size_t i = 0; i < nn; i++) host[i] = 1.0f;
    o->to_device(ones, host, nn * sizeof(float));
    for (int k = 0; k < SLOTS; k++) {
        a[k] = o->alloc(nn * sizeof(float));
        pin[k] = ops_cuda_host_alloc(nn * sizeof(float));
        if (!a[k] || !pin[k]) TEST_SKIP("cannot allocate %zu bytes of device or pinned memory", nn * 4);
    }

    for (int s = 0; s < STEPS; s++) {
        int k = s % SLOTS;
        ops_cuda_upload_begin(k);
        for (size_t i = 0; i < nn; i++) pin[k][i] = (float)(s + 1);
        ops_cuda_upload(a[k], pin[k], nn * sizeof(float));
        ops_cuda_time_mark(0);
        for (int r = 0; r < REPEATS; r++)
            o->gemm(0, 0, N, N, N, 1.0f, a[k], N, ones, N, 0.0f, c, N);
        ops_cuda_time_mark(1);
        o->copy(res + (size_t)s * N, c, N * sizeof(float));
        ops_cuda_time_mark(2);
        ops_cuda_time_step(3);
    }
    o->sync();

    float *got = malloc((size_t)STEPS * N * sizeof(float));
    if (!got) return 1;
    o->to_host(got, res, (size_t)STEPS * N * sizeof(float));
    int wrong = 0;
    for (int s = 0; s < STEPS; s++) {
        float want = (float)N * (float)(s + 1);
        for (int j = 0; j < N; j++)
            if (got[(size_t)s * N + j] != want) {
                if (!wrong++) fprintf(stderr, "step %d: C[0][%d] = %g, want %g (another step's batch)\n", s, j,
                                      (double)got[(size_t)s * N + j], (double)want);
            }
    }
    EXPECT(wrong == 0, "%d wrong elements: a slot was refilled while still read", wrong);

    /* The device timer: the gemms took device time; the sums are cleared. */
    double t[2] = {0, 0}, again[2] = {0, 0};
    ops_cuda_time_take(t, 3);
    ops_cuda_time_take(again, 3);
    EXPECT(t[0] > 0.0, "the gemms' device time is %g s", t[0]);
    EXPECT(t[1] >= 0.0, "the copies' device time is %g s", t[1]);
    EXPECT(again[0] == 0.0 && again[1] == 0.0, "a second take returned %g, %g s", again[0], again[1]);

    free(got);
    free(host);
    for (int k = 0; k < SLOTS; k++) {
        o->free(a[k]);
        ops_cuda_host_free(pin[k]);
    }
    o->free(ones);
    o->free(c);
    o->free(res);
    return test_finish("test_upload_cuda");
}
