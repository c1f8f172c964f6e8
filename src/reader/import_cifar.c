/* Import of CIFAR-10, binary version, into one dataset file (layout in
 * reader.h).
 *
 * Source: data_batch_1.bin .. data_batch_5.bin (train, in that order) and
 * test_batch.bin (test), each a sequence of 3073-byte records: one label byte
 * in [0, 10), then 3072 pixel bytes, the 1024 of red, green and blue in turn,
 * each row-major 32 x 32. A record's pixels are already in C, H, W order, so
 * they are copied as they are. The published files hold 10000 records each;
 * any number is accepted (small generated files in the tests).
 *
 * Every file is read and checked before anything is written; the output is
 * then written by import_write (import_common.c), with the mean and std of
 * each channel of the training pixels.
 */
#include "reader/reader.h"
#include "reader/import_internal.h"

#include "core/error.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CIFAR_SIDE 32
#define CIFAR_CHANNELS 3
#define CIFAR_PIXELS (CIFAR_CHANNELS * CIFAR_SIDE * CIFAR_SIDE)
#define CIFAR_RECORD (1 + CIFAR_PIXELS)
#define CIFAR_CLASSES 10
#define CIFAR_TRAIN_FILES 5
#define CIFAR_MAX_RECORDS 1000000u /* per file: far above the 10000 published; bounds allocations */

static const char *const CLASS_NAMES[CIFAR_CLASSES] = {
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
};

/* The number of records of one batch file, after checking its size. */
static int batch_records(const char *path, size_t *records)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return basin_error(BASIN_ERR_USAGE, "%s: %s%s", path, strerror(errno),
                           errno == ENOENT ? " (the CIFAR-10 binary version has data_batch_1.bin .. "
                                             "data_batch_5.bin and test_batch.bin)" : "");
    if (!S_ISREG(st.st_mode)) return basin_error(BASIN_ERR_USAGE, "%s: not a regular file", path);
    uint64_t size = (uint64_t)st.st_size;
    if (size == 0) return basin_error(BASIN_ERR_USAGE, "%s: empty file", path);
    if (size % CIFAR_RECORD)
        return basin_error(BASIN_ERR_USAGE, "%s: %llu bytes is not a whole number of %d-byte records (1 label "
                           "byte + %d pixel bytes): the file is truncated or not a CIFAR-10 binary batch", path,
                           (unsigned long long)size, CIFAR_RECORD, CIFAR_PIXELS);
    if (size / CIFAR_RECORD > CIFAR_MAX_RECORDS)
        return basin_error(BASIN_ERR_USAGE, "%s: %llu records, more than the %u a batch file may have", path,
                           (unsigned long long)(size / CIFAR_RECORD), CIFAR_MAX_RECORDS);
    *records = (size_t)(size / CIFAR_RECORD);
    return BASIN_OK;
}

/* Append the `records` records of path to s at sample s->n. */
static int read_batch(const char *path, size_t records, ImportSplit *s)
{
    int rc = BASIN_OK;
    uint8_t *rec = basin_malloc(CIFAR_RECORD);
    FILE *f = fopen(path, "rb");
    if (!rec) return BASIN_ERR_RUNTIME;
    if (!f) {
        free(rec);
        return basin_error(BASIN_ERR_USAGE, "%s: cannot open: %s", path, strerror(errno));
    }
    for (size_t i = 0; i < records; i++) {
        if (fread(rec, 1, CIFAR_RECORD, f) != CIFAR_RECORD) {
            rc = ferror(f) ? basin_error(BASIN_ERR_RUNTIME, "%s: read failed at record %zu: %s", path, i, strerror(errno))
                           : basin_error(BASIN_ERR_USAGE, "%s: ends in record %zu of %zu (changed while read?)",
                                         path, i, records);
            break;
        }
        if (rec[0] >= CIFAR_CLASSES) {
            rc = basin_error(BASIN_ERR_USAGE, "%s: record %zu has label %u, expected < %d: not a CIFAR-10 binary "
                             "batch (CIFAR-100's have 2 label bytes)", path, i, rec[0], CIFAR_CLASSES);
            break;
        }
        s->labels[s->n] = rec[0];
        memcpy(s->images + s->n * CIFAR_PIXELS, rec + 1, CIFAR_PIXELS);
        s->n++;
    }
    if (fclose(f) != 0 && !rc) rc = basin_error(BASIN_ERR_USAGE, "%s: close failed: %s", path, strerror(errno));
    free(rec);
    return rc;
}

/* Read the batch files names[0..count) into one split. */
static int read_split(const char *src_dir, const char *const *names, int count, ImportSplit *s)
{
    char path[CIFAR_TRAIN_FILES][PATH_MAX];
    size_t records[CIFAR_TRAIN_FILES], total = 0;
    for (int k = 0; k < count; k++) {
        if (snprintf(path[k], sizeof path[k], "%s/%s", src_dir, names[k]) >= (int)sizeof path[k])
            return basin_error(BASIN_ERR_USAGE, "%s: path too long", src_dir);
        TRY(batch_records(path[k], &records[k]));
        total += records[k];
    }
    s->c = CIFAR_CHANNELS;
    s->h = s->w = CIFAR_SIDE;
    s->n = 0;
    s->images = basin_malloc(total * CIFAR_PIXELS);
    s->labels = basin_malloc(total);
    if (!s->images || !s->labels) return BASIN_ERR_RUNTIME;
    for (int k = 0; k < count; k++) TRY(read_batch(path[k], records[k], s));
    return BASIN_OK;
}

int import_cifar10(const char *src_dir, const char *out_path)
{
    static const char *const train_files[CIFAR_TRAIN_FILES] = {
        "data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin",
    };
    static const char *const test_files[1] = {"test_batch.bin"};
    static const ImportMeta meta = {CIFAR_CLASSES, CLASS_NAMES, 1};
    char tmp[PATH_MAX];
    TRY(import_prepare(src_dir, out_path, " (pass --source DIR: the folder of the CIFAR-10 binary version's "
                       "data_batch_*.bin and test_batch.bin)", tmp, sizeof tmp));
    /* Every input is read and checked before anything is written. */
    ImportSplit train = {0}, test = {0};
    int rc = read_split(src_dir, train_files, CIFAR_TRAIN_FILES, &train);
    if (!rc) rc = read_split(src_dir, test_files, 1, &test);
    if (!rc) rc = import_write(out_path, tmp, &train, &test, &meta);
    import_split_free(&train);
    import_split_free(&test);
    return rc;
}
