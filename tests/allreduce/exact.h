/* Inputs whose sum over ranks is exact in float whatever the order of the
 * additions (small integers), so any all-reduce must reproduce it bit for
 * bit. Shared by the all-reduce tests and the benchmark's correctness check. */
#ifndef BASIN_TEST_ALLREDUCE_EXACT_H
#define BASIN_TEST_ALLREDUCE_EXACT_H

#include <stddef.h>

/* Element i of rank `rank`: an integer in [-9, 9]. */
static inline float exact_value(int rank, size_t i)
{
    return (float)((int)((i * 7 + (size_t)rank * 13) % 19) - 9);
}

/* The sum of element i over ranks 0..size-1. */
static inline float exact_sum(int size, size_t i)
{
    int s = 0;
    for (int r = 0; r < size; r++) s += (int)((i * 7 + (size_t)r * 13) % 19) - 9;
    return (float)s;
}

#endif
