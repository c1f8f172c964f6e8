/* The one check of MPI return codes: every communicator and window basin
 * uses has MPI_ERRORS_RETURN, so a failed call comes back here and becomes
 * one line naming the call, its place and MPI's reason. */
#ifndef BASIN_MPI_CHECK_H
#define BASIN_MPI_CHECK_H

#include <mpi.h>
#include <stdio.h>

#include "core/error.h"

static inline int basin_mpi_fail(int mpirc, const char *call, const char *file, int line)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(mpirc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "MPI error %d", mpirc);
    return basin_error_at(BASIN_ERR_RUNTIME, file, line, "%s failed: %s", call, msg);
}

/* Return the failure of an MPI call. */
#define BASIN_MPI(call)                                                                   \
    do {                                                                                  \
        int basin_mpi_rc_ = (call);                                                       \
        if (basin_mpi_rc_ != MPI_SUCCESS) return basin_mpi_fail(basin_mpi_rc_, #call, __FILE__, __LINE__); \
    } while (0)

/* The same, for functions with one cleanup label. */
#define BASIN_MPI_GOTO(status, call, label)                                               \
    do {                                                                                  \
        int basin_mpi_rc_ = (call);                                                       \
        if (basin_mpi_rc_ != MPI_SUCCESS) {                                               \
            (status) = basin_mpi_fail(basin_mpi_rc_, #call, __FILE__, __LINE__);          \
            goto label;                                                                   \
        }                                                                                 \
    } while (0)

#endif
