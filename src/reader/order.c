/* The global sample order and its split over ranks.
 *
 * An epoch's order is a Fisher-Yates shuffle whose draws come from the
 * counter-based RNG keyed by the seed, on the stream of that epoch: the same
 * (seed, epoch, n) gives the same permutation on every rank, whatever the
 * number of ranks, with no generator state to carry or checkpoint.
 */
#include "reader/reader.h"

#include "core/rng.h"

/* Uniform in [0, bound), bound >= 1, without modulo bias (Lemire, "Fast Random
 * Integer Generation in an Interval", 2019): the 128-bit product's high word is
 * the draw; the rare low words below 2^64 mod bound are rejected and redrawn.
 * *ctr is the index of the next draw of the stream. */
static uint64_t bounded(uint64_t seed, uint64_t stream, uint64_t *ctr, uint64_t bound)
{
    unsigned __int128 m = (unsigned __int128)rng_u64(seed, stream, (*ctr)++) * bound;
    uint64_t low = (uint64_t)m;
    if (low < bound) {
        uint64_t threshold = (0 - bound) % bound;
        while (low < threshold) {
            m = (unsigned __int128)rng_u64(seed, stream, (*ctr)++) * bound;
            low = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

void order_epoch(uint64_t seed, uint64_t epoch, uint64_t n, uint64_t *perm)
{
    for (uint64_t i = 0; i < n; i++) perm[i] = i;
    uint64_t stream = rng_stream(RNG_STREAM_ORDER, (uint32_t)epoch);
    /* Epochs past 2^32 would reuse a stream; fold their high bits into the key. */
    uint64_t key = seed ^ ((epoch >> 32) * 0x9E3779B97F4A7C15ull);
    uint64_t ctr = 0;
    for (uint64_t i = n; i > 1; i--) {
        uint64_t j = bounded(key, stream, &ctr, i);
        uint64_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
}

void order_share_slice(size_t global_n, int rank, int world, const uint32_t *weights, size_t *first,
                       size_t *count)
{
    if (!weights || world < 1 || rank < 0 || rank >= world) {
        order_rank_slice(global_n, rank, world, first, count);
        return;
    }
    /* Weights <= 1e6 and world <= 2^20 keep C_r below 2^40; a product with
     * global_n stays exact in 128 bits. */
    unsigned __int128 sum = 0, before = 0;
    for (int k = 0; k < world; k++) {
        if (k == rank) before = sum;
        sum += weights[k];
    }
    if (sum == 0) {
        *first = *count = 0;
        return;
    }
    unsigned __int128 n = global_n;
    size_t lo = (size_t)(n * before / sum), hi = (size_t)(n * (before + weights[rank]) / sum);
    *first = lo;
    *count = hi - lo;
}

void order_rank_slice(size_t global_n, int rank, int world, size_t *first, size_t *count)
{
    if (world < 1 || rank < 0 || rank >= world) {
        *first = 0;
        *count = 0;
        return;
    }
    size_t w = (size_t)world, r = (size_t)rank;
    size_t base = global_n / w, extra = global_n % w;
    /* The first `extra` ranks take one sample more. */
    *first = r * base + (r < extra ? r : extra);
    *count = base + (r < extra ? 1 : 0);
}
