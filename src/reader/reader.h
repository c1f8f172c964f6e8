/* Reading training data: an HDF5 dataset file, the global sample order, and
 * a prefetching batch reader.
 *
 * File layout (written by `basin-data import`, see import_idx.c):
 *   /<split>/images  uint8 [N, C, H, W]   split is "train" or "test"
 *   /<split>/labels  uint8 [N]            values in [0, classes)
 *   attributes on the root group: classes (int), mean, std (float, of the
 *   training pixels scaled to [0, 1]); optional class_names (strings).
 *
 * The reader knows nothing of models: it hands out normalised float images
 * (x / 255 - mean) / std and int32 labels.
 */
#ifndef BASIN_READER_H
#define BASIN_READER_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    size_t count;      /* N samples in the split (after any limit) */
    int c, h, w;       /* sample shape */
    int classes;
    float mean, std;   /* normalisation, from the file's attributes */
} DatasetInfo;

/* ---- one split of a dataset file ------------------------------------------ */
typedef struct Dataset Dataset;

/* Open and validate path's split: datasets present, ranks, dtypes, N equal in
 * images and labels, labels in range, attributes present. A file or layout the
 * user got wrong returns BASIN_ERR_USAGE after one clear line naming the path
 * and the problem. limit > 0 uses only the first `limit` samples. */
int dataset_open(const char *path, const char *split, size_t limit, Dataset **out);
/* 0 when path is an HDF5 file without a /split link; 1 when it has one, or
 * when dataset_open should say what is wrong with it. libhdf5 reads the file
 * in a child process only (reader/h5guard.h), so a damaged file cannot crash
 * the caller here. */
int dataset_has_split(const char *path, const char *split);
const DatasetInfo *dataset_info(const Dataset *d);
/* Read samples idx[0..n) (any order, any indices < count) normalised into
 * images (n, c, h, w) and labels (n). Reads only those samples (coalesced
 * contiguous hyperslabs), never the whole file. */
int dataset_read(Dataset *d, const uint64_t *idx, size_t n, float *images, int32_t *labels);
void dataset_close(Dataset *d);

/* ---- global sample order --------------------------------------------------- */
/* perm[0..n) = the sample order of `epoch`: a permutation of [0, n) that
 * depends only on (seed, epoch, n) -- never on the number of ranks. */
void order_epoch(uint64_t seed, uint64_t epoch, uint64_t n, uint64_t *perm);

/* This rank's contiguous slice [*first, *first + *count) of a global batch of
 * global_n samples split over world ranks (as even as possible, lower ranks
 * never smaller than higher ones). */
void order_rank_slice(size_t global_n, int rank, int world, size_t *first, size_t *count);

/* ---- prefetching batch reader ------------------------------------------------ */
typedef struct {
    const char *path;
    const char *split;     /* "train" or "test" */
    size_t limit;          /* 0: all samples of the split; else the first `limit` */
    uint64_t seed;
    size_t global_batch;   /* samples per step, over all ranks */
    int rank, world;
    int shuffle;           /* 1: order_epoch(seed, epoch); 0: file order */
    int drop_last;         /* 1: an epoch has floor(N / B) steps; 0: ceil, last one short */
    int prefetch;          /* 1: read the next batch on a background thread */
} ReaderConfig;

typedef struct {
    uint64_t epoch;        /* 0-based */
    uint64_t step;         /* 0-based step within the epoch */
    size_t global_n;       /* samples in this global batch (all ranks) */
    size_t n;              /* samples of this rank */
    float *images;         /* (n, c, h, w), owned by the reader: valid until the next call */
    int32_t *labels;       /* (n) */
    const uint64_t *index; /* (n) global sample indices, in slice order */
} Batch;

typedef struct Reader Reader;

int reader_open(const ReaderConfig *cfg, Reader **out);
const DatasetInfo *reader_info(const Reader *r);
size_t reader_steps_per_epoch(const Reader *r);
/* The next batch reader_next returns is (epoch, step); a step past the end of
 * an epoch carries into the following ones. Restarts prefetch. */
int reader_seek(Reader *r, uint64_t epoch, uint64_t step);
/* Hand out the next batch, moving on to the next epoch after the last step.
 * With prefetch, the batch after it is read while the caller computes. */
int reader_next(Reader *r, Batch *out);
/* Seconds reader_next spent blocked waiting for data since the last call of
 * this function (the data-wait time of a training step). */
double reader_take_wait_seconds(Reader *r);
void reader_close(Reader *r);

/* ---- importer ------------------------------------------------------------------ */
/* Convert the four gzip-compressed IDX files of Fashion-MNIST (or MNIST) in
 * src_dir into one dataset file at out_path. Writes a temporary file beside
 * out_path and renames it only when complete, so a failure never leaves a
 * partial file nor touches an existing one. */
int import_fashion_mnist(const char *src_dir, const char *out_path);

#endif
