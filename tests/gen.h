/* The tests' own random inputs (splitmix64), independent of core/rng so that
 * a bug there cannot hide in the data that checks it. */
#ifndef BASIN_TEST_GEN_H
#define BASIN_TEST_GEN_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t s;
} Gen;

static inline uint64_t gen_u64(Gen *g)
{
    uint64_t z = (g->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1). */
static inline double gen_unit(Gen *g)
{
    return ((double)(gen_u64(g) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static inline float gen_normal(Gen *g)
{
    double u1 = gen_unit(g), u2 = gen_unit(g);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static inline void fill_normal(Gen *g, float *x, size_t n, float sd)
{
    for (size_t i = 0; i < n; i++) x[i] = sd * gen_normal(g);
}

/* Small integers in [-3, 3]: pooling inputs with many ties. */
static inline void fill_ints(Gen *g, float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] = (float)(int)(gen_u64(g) % 7) - 3.0f;
}

#endif
