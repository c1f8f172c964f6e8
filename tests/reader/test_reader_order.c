/* The global sample order: order_epoch is a permutation that depends only on
 * (seed, epoch, n), and order_rank_slice splits a batch into contiguous,
 * near-equal slices with lower ranks never smaller. */
#include "reader/reader.h"
#include "testing.h"

#include <stdint.h>
#include <string.h>

/* 1 if perm[0..n) holds every value of [0, n) exactly once. */
static int is_permutation(const uint64_t *perm, uint64_t n)
{
    uint8_t *seen = calloc(n ? n : 1, 1);
    int ok = 1;
    for (uint64_t i = 0; i < n && ok; i++) {
        if (perm[i] >= n || seen[perm[i]]) ok = 0;
        else seen[perm[i]] = 1;
    }
    free(seen);
    return ok;
}

static void test_permutations(void)
{
    const uint64_t sizes[] = {0, 1, 2, 3, 7, 64, 1000, 60000};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        uint64_t n = sizes[k];
        uint64_t *a = malloc((n + 1) * sizeof *a), *b = malloc((n + 1) * sizeof *b);
        /* A guard element past the end must survive. */
        a[n] = b[n] = 0xDEADBEEFull;
        order_epoch(42, 0, n, a);
        EXPECT(is_permutation(a, n), "order_epoch(42, 0, %llu) is not a permutation", (unsigned long long)n);
        EXPECT(a[n] == 0xDEADBEEFull, "order_epoch wrote past n = %llu", (unsigned long long)n);
        order_epoch(42, 0, n, b);
        EXPECT(memcmp(a, b, n * sizeof *a) == 0, "same (seed, epoch, n = %llu) gave two orders",
               (unsigned long long)n);
        if (n >= 7) {
            order_epoch(42, 1, n, b);
            EXPECT(is_permutation(b, n), "epoch 1, n = %llu: not a permutation", (unsigned long long)n);
            EXPECT(memcmp(a, b, n * sizeof *a) != 0, "epochs 0 and 1 gave the same order (n = %llu)",
                   (unsigned long long)n);
            order_epoch(43, 0, n, b);
            EXPECT(memcmp(a, b, n * sizeof *a) != 0, "seeds 42 and 43 gave the same order (n = %llu)",
                   (unsigned long long)n);
            size_t fixed = 0;
            for (uint64_t i = 0; i < n; i++) fixed += a[i] == i;
            /* A uniform shuffle leaves ~1 fixed point; identity (or a no-op) leaves n. */
            EXPECT(fixed < n / 2 + 1, "n = %llu: %zu of the samples stayed in place", (unsigned long long)n,
                   fixed);
        }
        free(a);
        free(b);
    }
    /* Epochs 2^32 apart must not share an order. */
    uint64_t a[100], b[100];
    order_epoch(9, 5, 100, a);
    order_epoch(9, 5 + (1ull << 32), 100, b);
    EXPECT(memcmp(a, b, sizeof a) != 0, "epochs 5 and 5 + 2^32 gave the same order");
}

/* Every position of a 4-element shuffle is uniform: 24 orders over many
 * epochs, each first element seen ~1/4 of the time. */
static void test_uniformity(void)
{
    enum { N = 4, EPOCHS = 40000 };
    int first[N] = {0}, last[N] = {0};
    uint64_t p[N];
    for (uint64_t e = 0; e < EPOCHS; e++) {
        order_epoch(7, e, N, p);
        first[p[0]]++;
        last[p[N - 1]]++;
    }
    /* Binomial(40000, 1/4): sd ~ 87; 6 sd allows a ~1e-9 chance of a false failure. */
    for (int v = 0; v < N; v++) {
        EXPECT(abs(first[v] - EPOCHS / N) < 520, "value %d first %d times of %d", v, first[v], EPOCHS);
        EXPECT(abs(last[v] - EPOCHS / N) < 520, "value %d last %d times of %d", v, last[v], EPOCHS);
    }
}

static void test_slices(void)
{
    const size_t sizes[] = {0, 1, 2, 3, 5, 7, 63, 64, 65, 1000};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        for (int world = 1; world <= 9; world++) {
            size_t next = 0, prev_count = (size_t)-1, lo = (size_t)-1, hi = 0;
            for (int r = 0; r < world; r++) {
                size_t first = 12345, count = 12345;
                order_rank_slice(n, r, world, &first, &count);
                EXPECT(first == next, "n=%zu W=%d rank %d starts at %zu, expected %zu", n, world, r, first, next);
                EXPECT(count <= prev_count, "n=%zu W=%d rank %d has %zu > rank %d's %zu", n, world, r, count,
                       r - 1, prev_count);
                next = first + count;
                prev_count = count;
                if (count < lo) lo = count;
                if (count > hi) hi = count;
            }
            EXPECT(next == n, "n=%zu W=%d: slices cover %zu samples", n, world, next);
            EXPECT(hi - lo <= 1, "n=%zu W=%d: slice sizes range %zu..%zu", n, world, lo, hi);
        }
    }
    size_t first = 1, count = 1;
    order_rank_slice(10, 3, 3, &first, &count);
    EXPECT(count == 0, "rank 3 of 3 got %zu samples", count);
}

int main(void)
{
    test_permutations();
    test_uniformity();
    test_slices();
    return test_finish("test_reader_order");
}
