/* The GPU tests' start: skip (ctest's code 77) without a CUDA device, else
 * select device 0 and keep the CPU reference on one BLAS thread. */
#ifndef BASIN_TEST_CUDA_DEVICE_H
#define BASIN_TEST_CUDA_DEVICE_H

#include <cuda_runtime_api.h>
#ifndef BASIN_NO_MPI
#include <mpi.h>
#endif
#include <stdio.h>
#include <stdlib.h>

#include "core/ops.h"
#include "ops_cuda.h"
#include "testing.h"

static inline void require_cuda_device(void)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) TEST_SKIP("no CUDA device: cudaGetDeviceCount failed: %s", cudaGetErrorString(e));
    if (count == 0) TEST_SKIP("no CUDA device: cudaGetDeviceCount reports 0 devices");
    if (ops_cuda_select(0)) exit(1);
    ops_cpu_set_threads(1);
}

#ifndef BASIN_NO_MPI
/* Under mpirun: skip on every rank unless every rank sees a device. The
 * ranks agree first, so each prints its skip line before any exits (mpirun
 * kills the others as soon as one ends with a non-zero code, and passes 77
 * on). Call after MPI_Init; selects no device. */
static inline void require_cuda_device_on_every_rank(void)
{
    int ndev = 0, none, any_none = 0, rank = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    none = e != cudaSuccess || ndev == 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (MPI_Allreduce(&none, &any_none, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS) exit(1);
    if (!any_none) return;
    fprintf(stderr, "SKIPPED: rank %d: no CUDA device: %s\n", rank,
            e != cudaSuccess ? cudaGetErrorString(e)
                             : ndev == 0 ? "cudaGetDeviceCount reports 0 devices" : "another rank has none");
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Finalize();
    exit(77);
}
#endif

#endif
