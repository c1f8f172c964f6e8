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

Philox4x32 philox4x32(uint64_t key, uint64_t stream, uint64_t index);

/* Uniform in [0, 1) with 24 random bits, the i-th of a (key, stream) sequence. */
float rng_uniform(uint64_t key, uint64_t stream, uint64_t i);
/* Standard normal (Box-Muller over one Philox block), the i-th of a sequence. */
float rng_normal(uint64_t key, uint64_t stream, uint64_t i);
/* 64 random bits, the i-th of a sequence. */
uint64_t rng_u64(uint64_t key, uint64_t stream, uint64_t i);

#endif
