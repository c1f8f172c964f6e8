#include "core/rng.h"

#include <math.h>

float rng_normal(uint64_t key, uint64_t stream, uint64_t i)
{
    Philox4x32 r = philox4x32(key, stream, i);
    /* u1 in (0, 1] so that log(u1) is finite. */
    double u1 = ((double)(r.v[0] >> 8) + 1.0) * (1.0 / 16777216.0);
    double u2 = (double)(r.v[1] >> 8) * (1.0 / 16777216.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
