/* The GPU as a Device (core/device.h): the CUDA backend's op table and its
 * pinned memory, uploads, timers and stream. */
#include "core/device.h"
#include "ops_cuda.h"

const Device device_cuda = {
    .name = "cuda",
    .ops = &ops_cuda,
    .select = ops_cuda_select,
    .host_alloc = ops_cuda_host_alloc,
    .host_free = ops_cuda_host_free,
    .upload_begin = ops_cuda_upload_begin,
    .upload = ops_cuda_upload,
    .time_mark = ops_cuda_time_mark,
    .time_step = ops_cuda_time_step,
    .time_take = ops_cuda_time_take,
    .stream = ops_cuda_stream,
};
