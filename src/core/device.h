/* Where the network runs: the op table of a backend (core/ops.h) and what
 * the trainer needs of a device beyond it: picking the GPU of a rank, pinned
 * host memory and asynchronous uploads of batches, and timers on the
 * device's stream. The CPU has none of those (the members are NULL: batches
 * are used where the reader put them, and host clocks time the step); the
 * GPU's are in cuda/device_cuda.c. */
#ifndef BASIN_DEVICE_H
#define BASIN_DEVICE_H

#include <stddef.h>

#include "core/ops.h"

typedef struct Device {
    const char *name;
    const Ops *ops;
    /* Use the GPU of this local rank (rank -> GPU by index on its host). */
    int (*select)(int local_rank);
    /* Pinned host memory for upload; NULL on failure. */
    void *(*host_alloc)(size_t bytes);
    void (*host_free)(void *p);
    /* Double-buffered uploads: begin(slot) before refilling slot's pinned
     * buffers, then upload (asynchronous) into its device buffers. */
    void (*upload_begin)(int slot);
    void (*upload)(void *dst, const void *host_src, size_t bytes);
    /* Device time: marks 0..n-1 of a step on the device's stream, step(n)
     * closes the step, take adds the time between consecutive marks. */
    void (*time_mark)(int i);
    void (*time_step)(int n);
    void (*time_take)(double *out, int n);
    /* The device's stream, for code that orders its own work after the ops. */
    void *(*stream)(void);
} Device;

extern const Device device_cpu;

/* The device of --device NAME, or NULL when this build has no such backend. */
const Device *device_find(const char *name);

#endif
