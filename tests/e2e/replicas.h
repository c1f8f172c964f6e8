/* Comparisons of trained replicas shared by the multi-rank tests. */
#ifndef BASIN_TEST_REPLICAS_H
#define BASIN_TEST_REPLICAS_H

#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

/* Every rank's copy of x (n floats) equals rank 0's, bit for bit. */
static inline int replicas_equal(const float *x, size_t n, MPI_Comm comm)
{
    float *x0 = malloc((n ? n : 1) * sizeof *x0);
    int r;
    MPI_Comm_rank(comm, &r);
    if (r == 0) memcpy(x0, x, n * sizeof *x0);
    MPI_Bcast(x0, (int)n, MPI_FLOAT, 0, comm);
    int same = memcmp(x0, x, n * sizeof *x0) == 0, all = 0;
    MPI_Allreduce(&same, &all, 1, MPI_INT, MPI_MIN, comm);
    free(x0);
    return all;
}

/* Elements of a and b further apart than atol + rtol |a|; *worst the largest gap. */
static inline size_t count_far(const float *a, const float *b, size_t n, double atol, double rtol, double *worst)
{
    size_t far = 0;
    *worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > *worst) *worst = d;
        far += d > atol + rtol * fabs((double)a[i]);
    }
    return far;
}

#endif
