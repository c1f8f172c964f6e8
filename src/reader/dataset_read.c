/* Reading samples of an open Dataset (dataset.c opens and validates it):
 * the indices asked for are sorted and read as one coalesced hyperslab
 * selection, or with pread at their offset where the images are contiguous
 * and unfiltered, then put back in the caller's order and normalised per
 * channel. Synthetic data is generated instead (synthetic.c). */
#include "reader/dataset_internal.h"

#include "core/error.h"
#include "reader/h5check.h"
#include "reader/h5guard.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <stdarg.h>
#include <hdf5.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const DatasetInfo *dataset_info(const Dataset *d)
{
    return &d->info;
}

static int cmp_idxpos(const void *a, const void *b)
{
    const IdxPos *x = a, *y = b;
    if (x->idx != y->idx) return x->idx < y->idx ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static int grow_scratch(Dataset *d, size_t n)
{
    if (n <= d->cap) return BASIN_OK;
    size_t cap = n > 2 * d->cap ? n : 2 * d->cap;
    if (cap > SIZE_MAX / (d->sample_bytes ? d->sample_bytes : 1))
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "dataset_read: %zu samples overflow a buffer size", n);
    IdxPos *sorted = realloc(d->sorted, cap * sizeof *sorted);
    if (sorted) d->sorted = sorted;
    size_t *slot = realloc(d->slot, cap * sizeof *slot);
    if (slot) d->slot = slot;
    uint8_t *raw = realloc(d->raw, cap * d->sample_bytes);
    if (raw) d->raw = raw;
    if (!sorted || !slot || !raw)
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "out of memory growing read buffers to %zu samples", cap);
    d->cap = cap;
    return BASIN_OK;
}

/* Runs of consecutive samples per H5Dread. HDF5 1.10 builds a union of
 * hyperslabs in time that grows faster than linearly with the number of
 * blocks: measured on Fashion-MNIST (random batches, 784-byte samples), one
 * union of 1024 runs took ~3.5x as long as reading the runs one by one, while
 * unions of up to 32 runs cost the same per sample as single reads and fewer
 * calls. */
#define RUNS_PER_READ 32

/* Read the rows of one union selection (already made in d->fspace) into raw.
 * A failure at open means the file is damaged (a bad input); later, it is a
 * failed read. */
static int read_rows(Dataset *d, uint8_t *raw, size_t rows, int at_open)
{
    int rc = BASIN_OK;
    hsize_t melems = (hsize_t)rows * d->sample_bytes;
    hid_t mspace = H5Screate_simple(1, &melems, NULL);
    if (mspace < 0)
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Screate_simple(%llu) failed", (unsigned long long)melems);
    if (H5Dread(d->images, H5T_NATIVE_UINT8, mspace, d->fspace, H5P_DEFAULT, raw) < 0)
        rc = at_open ? dataset_damaged(d->path, "H5Dread(/%s/images, %zu samples)", d->split, rows)
                     : BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Dread(%s, /%s/images, %zu samples) failed", d->path,
                                  d->split, rows);
    if (H5Sclose(mspace) < 0 && !rc) rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Sclose(memory space) failed");
    return rc;
}

static int pread_full(const Dataset *d, uint8_t *buf, size_t bytes, uint64_t offset)
{
    while (bytes > 0) {
        ssize_t got = pread(d->fd, buf, bytes, (off_t)offset);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0)
            return BASIN_FAIL(BASIN_ERR_RUNTIME, "pread(%s, /%s/images at byte %llu) failed: %s", d->path,
                              d->split, (unsigned long long)offset, got < 0 ? strerror(errno) : "end of file");
        buf += got, bytes -= (size_t)got, offset += (uint64_t)got;
    }
    return BASIN_OK;
}

/* Use pread when the images are stored contiguously and unfiltered, which
 * HDF5 tells by giving their address (chunked or compressed data has none).
 * The address is trusted only after it reads the same first and last sample
 * as HDF5 does; otherwise reads stay with HDF5. */
int dataset_enable_direct_reads(Dataset *d)
{
    haddr_t off = H5Dget_offset(d->images);
    if (off == HADDR_UNDEF || d->info.count == 0) return BASIN_OK;
    int fd = open(d->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return BASIN_OK;
    TRY(grow_scratch(d, 4));
    size_t sb = d->sample_bytes;
    uint64_t last = d->info.count - 1;
    hsize_t count[4] = {1, (hsize_t)d->info.c, (hsize_t)d->info.h, (hsize_t)d->info.w};
    hsize_t start0[4] = {0, 0, 0, 0}, start1[4] = {last, 0, 0, 0};
    int rc = BASIN_OK;
    if (H5Sselect_hyperslab(d->fspace, H5S_SELECT_SET, start0, NULL, count, NULL) < 0 ||
        H5Sselect_hyperslab(d->fspace, H5S_SELECT_OR, start1, NULL, count, NULL) < 0)
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Sselect_hyperslab(%s, /%s/images) failed", d->path, d->split);
    if (!rc) rc = read_rows(d, d->raw, last == 0 ? 1 : 2, 1);
    if (rc) {
        close(fd);
        return rc;
    }
    d->fd = fd;
    d->images_offset = (uint64_t)off;
    if (pread_full(d, d->raw + 2 * sb, sb, d->images_offset) ||
        pread_full(d, d->raw + 3 * sb, sb, d->images_offset + last * sb) ||
        memcmp(d->raw, d->raw + 2 * sb, sb) != 0 || memcmp(d->raw + (last == 0 ? 0 : sb), d->raw + 3 * sb, sb) != 0) {
        close(fd);
        d->fd = -1;
    }
    return BASIN_OK;
}

/* Read the unique samples of sorted[0..n) into raw, one row each, in index
 * order, and note in d->slot which row serves each request position. Each run
 * of consecutive indices is one hyperslab block: adjacent samples are adjacent
 * bytes in contiguous storage, so HDF5 reads a run as one range. */
static int read_sorted(Dataset *d, const IdxPos *sorted, size_t n)
{
    size_t row = 0, group_first_row = 0, runs = 0;
    size_t i = 0;
    while (i < n) {
        uint64_t first = sorted[i].idx, next = first + 1;
        d->slot[sorted[i].pos] = row++;
        size_t j = i + 1;
        for (; j < n; j++) {
            if (sorted[j].idx == next - 1) { /* a duplicate shares the row */
                d->slot[sorted[j].pos] = row - 1;
            } else if (sorted[j].idx == next) {
                d->slot[sorted[j].pos] = row++;
                next++;
            } else {
                break;
            }
        }
        if (d->fd >= 0) {
            size_t rows = (size_t)(next - first);
            TRY(pread_full(d, d->raw + (row - rows) * d->sample_bytes, rows * d->sample_bytes,
                           d->images_offset + first * d->sample_bytes));
            i = j;
            continue;
        }
        hsize_t start[4] = {first, 0, 0, 0};
        hsize_t count[4] = {next - first, (hsize_t)d->info.c, (hsize_t)d->info.h, (hsize_t)d->info.w};
        if (H5Sselect_hyperslab(d->fspace, runs == 0 ? H5S_SELECT_SET : H5S_SELECT_OR, start, NULL, count, NULL) < 0)
            return BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Sselect_hyperslab(%s, /%s/images, rows %llu..%llu) failed",
                              d->path, d->split, (unsigned long long)first, (unsigned long long)next);
        i = j;
        if (++runs == RUNS_PER_READ || i == n) {
            TRY(read_rows(d, d->raw + group_first_row * d->sample_bytes, row - group_first_row, 0));
            group_first_row = row;
            runs = 0;
        }
    }
    return BASIN_OK;
}

int dataset_read(Dataset *d, const uint64_t *idx, size_t n, float *images, int32_t *labels)
{
    if (n == 0) return BASIN_OK;
    dataset_quiet_hdf5();
    for (size_t i = 0; i < n; i++) {
        if (idx[i] >= d->info.count)
            return BASIN_FAIL(BASIN_ERR_RUNTIME, "dataset_read: sample %llu out of range (%s /%s has %zu)",
                              (unsigned long long)idx[i], d->path, d->split, d->info.count);
    }
    if (d->info.synthetic) {
        for (size_t i = 0; i < n; i++)
            synthetic_sample(&d->syn, d->syn_test, idx[i], images + i * d->sample_bytes, &labels[i]);
        return BASIN_OK;
    }
    TRY(grow_scratch(d, n));
    for (size_t i = 0; i < n; i++) {
        d->sorted[i].idx = idx[i];
        d->sorted[i].pos = i;
    }
    qsort(d->sorted, n, sizeof *d->sorted, cmp_idxpos);
    TRY(read_sorted(d, d->sorted, n));

    /* Scatter into the caller's order, normalising through each channel's
     * table. */
    const size_t sb = d->sample_bytes, plane = (size_t)d->info.h * (size_t)d->info.w;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *src = d->raw + d->slot[i] * sb;
        float *dst = images + i * sb;
        for (int c = 0; c < d->info.c; c++) {
            const float *lut = d->lut[c];
            const uint8_t *s = src + (size_t)c * plane;
            float *o = dst + (size_t)c * plane;
            for (size_t k = 0; k < plane; k++) o[k] = lut[s[k]];
        }
        labels[i] = d->labels[idx[i]];
    }
    return BASIN_OK;
}

void dataset_close(Dataset *d)
{
    if (!d) return;
    dataset_quiet_hdf5();
    if (d->fd >= 0) close(d->fd);
    if (d->fspace >= 0) H5Sclose(d->fspace);
    if (d->images >= 0) H5Dclose(d->images);
    if (d->file >= 0 && H5Fclose(d->file) < 0) basin_warn("H5Fclose(%s) failed", d->path ? d->path : "");
    free(d->raw);
    free(d->slot);
    free(d->sorted);
    free(d->labels);
    free(d->split);
    free(d->path);
    free(d);
}

