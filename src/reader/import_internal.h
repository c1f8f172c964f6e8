/* Shared by the importers (not part of reader.h):
 *   import_common.c  checks of the paths, pixel statistics, the HDF5 file
 *                    built in memory and its atomic write
 *   import_idx.c     Fashion-MNIST's gzip IDX files
 *   import_cifar.c   CIFAR-10's binary batches
 */
#ifndef BASIN_IMPORT_INTERNAL_H
#define BASIN_IMPORT_INTERNAL_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

/* One split as read from the source files. */
typedef struct {
    size_t n;
    int c, h, w;
    uint8_t *images; /* (n, c, h, w) */
    uint8_t *labels; /* (n) */
} ImportSplit;

typedef struct {
    int classes;
    const char *const *class_names; /* (classes) */
    int per_channel;                /* 1: mean and std as arrays of C numbers; 0: one number each */
} ImportMeta;

void import_split_free(ImportSplit *s);

/* Checks before any source is read: the paths (src_dir must be a folder,
 * out_path not one); tmp receives the temporary file's name. missing_hint
 * follows the "no such directory" line. */
int import_prepare(const char *src_dir, const char *out_path, const char *missing_hint, char *tmp, size_t tmp_len);

/* Mean and standard deviation of the pixels of s scaled to [0, 1], per
 * channel (mean[0..c), std[0..c)), or of all pixels at once into mean[0] and
 * std[0] when per_channel is 0. Sums of bytes are exact in 64-bit integers, so
 * the result does not depend on the order. */
void import_pixel_stats(const ImportSplit *s, int per_channel, float *mean, float *std);

/* Write train and test into out_path: the HDF5 file is built in memory, its
 * bytes written to tmp, fsynced and renamed over out_path (whose folder is
 * made first and fsynced after). The splits' buffers are freed once in the
 * file image. A failure leaves no temporary file and any old out_path as it
 * was. */
int import_write(const char *out_path, const char *tmp, ImportSplit *train, ImportSplit *test,
                 const ImportMeta *meta);

#endif
