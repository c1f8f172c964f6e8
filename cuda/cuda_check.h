/* The one report of a failed CUDA runtime call, for the backend's ops
 * (which then abort: see ops_cuda.cu) and the GPU all-reduce (which
 * returns the status): one line naming the call, its place and CUDA's
 * reason. A non-sticky error is cleared, so that the next call does not
 * report it again. C and C++. */
#ifndef BASIN_CUDA_CHECK_H
#define BASIN_CUDA_CHECK_H

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "core/error.h"
#ifdef __cplusplus
}
#endif

static inline int basin_cuda_fail(cudaError_t e, const char *call, const char *file, int line)
{
    (void)cudaGetLastError();
    return basin_error_at(BASIN_ERR_RUNTIME, file, line, "%s failed: %s: %s", call, cudaGetErrorName(e),
                          cudaGetErrorString(e));
}

#endif
