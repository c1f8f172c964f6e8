/* Host execution: the runtime API is cuda_runtime.h's C part. */
#ifndef BASIN_HOST_CUDA_RUNTIME_API_H
#define BASIN_HOST_CUDA_RUNTIME_API_H
#include "cuda_runtime.h"
#endif
