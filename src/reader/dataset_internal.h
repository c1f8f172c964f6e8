/* Shared by the two files of a Dataset (not part of reader.h):
 *   dataset.c       opening and validating a split (in a guarded child first)
 *   dataset_read.c  reading arbitrary sample sets, as one coalesced selection
 *                   or with pread where the images are contiguous, or
 *                   generating them (synthetic data, synthetic.c)
 */
#ifndef BASIN_DATASET_INTERNAL_H
#define BASIN_DATASET_INTERNAL_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

#include "reader/reader.h"

/* One sample's bytes: 64 MiB is a 4096 x 4096 RGBA image; more is a damaged
 * or mistaken file, and the reader keeps a few batches of samples in memory. */
#define MAX_SAMPLE_BYTES ((size_t)64 << 20)

typedef struct {
    uint64_t idx; /* sample index in the file */
    size_t pos;   /* position in the caller's request */
} IdxPos;

struct Dataset {
    char *path;
    char *split;
    uint64_t file_bytes;        /* size of the file at open */
    hid_t file, images, fspace; /* fspace: images' file space, reselected per read */
    DatasetInfo info;
    size_t sample_bytes;        /* c * h * w */
    uint8_t *labels;            /* (count) validated at open */
    float lut[BASIN_MAX_CHANNELS][256]; /* channel, byte value -> normalised float */
    SyntheticSpec syn;          /* info.synthetic: the generated data (synthetic.c) */
    int syn_test;               /* ... of its test split */
    /* scratch of dataset_read, grown on demand */
    size_t cap;
    IdxPos *sorted;             /* (cap) */
    size_t *slot;               /* (cap) request position -> row of raw */
    uint8_t *raw;               /* (cap, c, h, w) */
    /* Contiguous, unfiltered images are read with pread at their offset in
     * the file, several times faster than hyperslab reads of single samples;
     * fd < 0 reads through HDF5 (chunked or compressed files). */
    int fd;
    uint64_t images_offset;
};

/* HDF5 prints nothing for this thread; we report one line of our own. */
void dataset_quiet_hdf5(void);
/* One line for an HDF5 call that failed on a file that opened: its structure
 * is damaged. Returns BASIN_ERR_USAGE. */
int dataset_damaged(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Contiguous, unfiltered images: read them with pread (dataset_read.c). */
int dataset_enable_direct_reads(Dataset *d);

#endif
