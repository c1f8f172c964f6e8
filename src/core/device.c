#include "core/device.h"

#include <string.h>

const Device device_cpu = {.name = "cpu", .ops = &ops_cpu};

#ifdef BASIN_HAVE_CUDA
extern const Device device_cuda; /* cuda/device_cuda.c */
#endif

const Device *device_find(const char *name)
{
    if (strcmp(name, "cpu") == 0) return &device_cpu;
#ifdef BASIN_HAVE_CUDA
    if (strcmp(name, "cuda") == 0) return &device_cuda;
#endif
    return NULL;
}
