/* The GPU tests' start: skip (ctest's code 77) without a CUDA device, else
 * select device 0 and keep the CPU reference on one BLAS thread. */
#ifndef BASIN_TEST_CUDA_DEVICE_H
#define BASIN_TEST_CUDA_DEVICE_H

#include <cuda_runtime_api.h>
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

#endif
