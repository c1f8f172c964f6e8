#include "core/rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static inline void mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo)
{
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}

Philox4x32 philox4x32(uint64_t key, uint64_t stream, uint64_t index)
{
    uint32_t c0 = (uint32_t)index, c1 = (uint32_t)(index >> 32);
    uint32_t c2 = (uint32_t)stream, c3 = (uint32_t)(stream >> 32);
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    for (int r = 0; r < 10; r++) {
        uint32_t hi0, lo0, hi1, lo1;
        mulhilo(PHILOX_M0, c0, &hi0, &lo0);
        mulhilo(PHILOX_M1, c2, &hi1, &lo1);
        uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0, c1 = n1, c2 = n2, c3 = n3;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    Philox4x32 r = {{c0, c1, c2, c3}};
    return r;
}

float rng_uniform(uint64_t key, uint64_t stream, uint64_t i)
{
    Philox4x32 r = philox4x32(key, stream, i);
    return (float)(r.v[0] >> 8) * (1.0f / 16777216.0f);
}

float rng_normal(uint64_t key, uint64_t stream, uint64_t i)
{
    Philox4x32 r = philox4x32(key, stream, i);
    /* u1 in (0, 1] so that log(u1) is finite. */
    double u1 = ((double)(r.v[0] >> 8) + 1.0) * (1.0 / 16777216.0);
    double u2 = (double)(r.v[1] >> 8) * (1.0 / 16777216.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint64_t rng_u64(uint64_t key, uint64_t stream, uint64_t i)
{
    Philox4x32 r = philox4x32(key, stream, i);
    return ((uint64_t)r.v[1] << 32) | r.v[0];
}
