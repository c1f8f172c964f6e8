/* Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
 *
 * A draw is a pure function of (key, counter): no state to carry, to save in
 * a checkpoint or to keep in step between ranks and devices. basin uses
 *   key     = the run's seed
 *   counter = (stream, index) where stream names the purpose (a layer's
 *             initial weights, a dropout mask of one step, an epoch's order)
 * so that initial weights depend only on the seed and a CUDA kernel can draw
 * the same numbers as the CPU for the same element.
 */
#ifndef BASIN_RNG_H
#define BASIN_RNG_H

#include <stdint.h>

typedef struct {
    uint32_t v[4];
} Philox4x32;

/* Streams: the high 32 bits say what the numbers are for. */
enum {
    RNG_STREAM_INIT = 1,    /* low bits: layer index */
    RNG_STREAM_DROPOUT = 2, /* low bits: layer index; index: step * n + element */
    RNG_STREAM_ORDER = 3,   /* low bits: epoch */
};

static inline uint64_t rng_stream(uint32_t purpose, uint32_t which)
{
    return ((uint64_t)purpose << 32) | which;
}

/* Inline: dropout draws one block per element in its inner loop. */
static inline Philox4x32 philox4x32(uint64_t key, uint64_t stream, uint64_t index)
{
    uint32_t c0 = (uint32_t)index, c1 = (uint32_t)(index >> 32);
    uint32_t c2 = (uint32_t)stream, c3 = (uint32_t)(stream >> 32);
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    Philox4x32 out = {{c0, c1, c2, c3}};
    return out;
}

/* Uniform in [0, 1) with 24 random bits, the i-th of a (key, stream) sequence. */
static inline float rng_uniform(uint64_t key, uint64_t stream, uint64_t i)
{
    return (float)(philox4x32(key, stream, i).v[0] >> 8) * (1.0f / 16777216.0f);
}

/* 64 random bits, the i-th of a sequence. */
static inline uint64_t rng_u64(uint64_t key, uint64_t stream, uint64_t i)
{
    Philox4x32 r = philox4x32(key, stream, i);
    return ((uint64_t)r.v[1] << 32) | r.v[0];
}

/* Standard normal (Box-Muller over one Philox block), the i-th of a sequence. */
float rng_normal(uint64_t key, uint64_t stream, uint64_t i);

/* Streams of the data reader (reader.h). */
enum {
    RNG_STREAM_AUGMENT = 4,   /* low bits: epoch; index: global sample index */
    RNG_STREAM_SYNTHETIC = 5, /* low bits: split (0 train, 1 test); index: sample * blocks + block */
};

#endif
