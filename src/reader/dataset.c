/* One split of a dataset file: opening and validation (dataset_read.c reads
 * arbitrary sample sets from it).
 *
 * The file and dataset handles stay open for the life of the Dataset. The
 * labels of the split (one byte per sample) are read and range-checked once at
 * open and served from memory; images are read per call, only the samples
 * asked for.
 *
 * HDF5 keeps its error stack per thread, and its default is to print the whole
 * stack; every entry point here silences it for the calling thread and reports
 * one line of its own instead.
 *
 * Nothing is allocated or read for a size the metadata only claims: before
 * the labels are read, the declared extents of images and labels must be
 * stored inside the file (h5check.h), and a sample is at most
 * MAX_SAMPLE_BYTES. A file that HDF5 cannot open, or whose structure fails a
 * call once open, is a bad input like any other: one line, BASIN_ERR_USAGE.
 *
 * libhdf5 itself may crash on damaged metadata, so a child process runs the
 * whole validation first (h5guard.h); a file that crashes it is refused with
 * one line before this process lets HDF5 parse it.
 */
#include "reader/dataset_internal.h"

#include "core/error.h"
#include "reader/h5attr.h"
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

void dataset_quiet_hdf5(void)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

static char *dup_string(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = basin_malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* One line for an HDF5 call that failed on a file that opened: its structure
 * is damaged. Returns BASIN_ERR_USAGE. */
int dataset_damaged(const char *path, const char *fmt, ...)
{
    char what[320], h5[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return basin_error(BASIN_ERR_USAGE, "%s: damaged HDF5 file: %s failed (%s)", path, what, h5check_reason(h5));
}

/* 1: the link exists, 0: it does not, <0: HDF5 failed. */
static int link_exists(hid_t file, const char *name)
{
    htri_t e = H5Lexists(file, name, H5P_DEFAULT);
    return e > 0 ? 1 : e == 0 ? 0 : -1;
}

/* Open /split/name after checking it exists and is a uint8 dataset of `rank`
 * dimensions; dims receives its extent. */
static int open_u8_dataset(const char *path, hid_t file, const char *split, const char *name,
                           int rank, hsize_t *dims, hid_t *out)
{
    char full[256];
    snprintf(full, sizeof full, "/%s/%s", split, name);
    int rc = BASIN_OK;
    hid_t ds = H5I_INVALID_HID, space = H5I_INVALID_HID, type = H5I_INVALID_HID;

    int e = link_exists(file, full);
    if (e < 0) {
        rc = dataset_damaged(path, "H5Lexists(%s)", full);
        goto cleanup;
    }
    if (e == 0) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: missing dataset %s", path, full);
        goto cleanup;
    }
    ds = H5Dopen2(file, full, H5P_DEFAULT);
    if (ds < 0) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: %s is not a dataset", path, full);
        goto cleanup;
    }
    type = H5Dget_type(ds);
    if (type < 0) {
        rc = dataset_damaged(path, "H5Dget_type(%s)", full);
        goto cleanup;
    }
    H5T_class_t cls = H5Tget_class(type);
    size_t tsize = H5Tget_size(type);
    H5T_sign_t sign = cls == H5T_INTEGER ? H5Tget_sign(type) : H5T_SGN_ERROR;
    if (cls == H5T_NO_CLASS || tsize == 0) {
        rc = dataset_damaged(path, "H5Tget_class/H5Tget_size(%s)", full);
        goto cleanup;
    }
    if (cls != H5T_INTEGER || tsize != 1 || sign != H5T_SGN_NONE) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: %s must hold uint8 values (found %s of %zu bytes)", path,
                         full, cls == H5T_INTEGER ? (sign == H5T_SGN_NONE ? "unsigned integers" : "signed integers")
                         : cls == H5T_FLOAT ? "floats" : "non-numeric values", tsize);
        goto cleanup;
    }
    space = H5Dget_space(ds);
    if (space < 0) {
        rc = dataset_damaged(path, "H5Dget_space(%s)", full);
        goto cleanup;
    }
    int nd = H5Sget_simple_extent_ndims(space);
    if (nd < 0) {
        rc = dataset_damaged(path, "H5Sget_simple_extent_ndims(%s)", full);
        goto cleanup;
    }
    if (nd != rank) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: %s has %d dimensions, expected %d (%s)", path, full, nd,
                         rank, rank == 4 ? "N, C, H, W" : "N");
        goto cleanup;
    }
    if (H5Sget_simple_extent_dims(space, dims, NULL) < 0) {
        rc = dataset_damaged(path, "H5Sget_simple_extent_dims(%s)", full);
        goto cleanup;
    }
    *out = ds;
    ds = H5I_INVALID_HID;

cleanup:
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    if (ds >= 0) H5Dclose(ds);
    return rc;
}

/* The float nearest v, infinities for values beyond float's range. */
static float to_float(double v) { return isnan(v) ? NAN : fabs(v) <= FLT_MAX ? (float)v : v > 0 ? INFINITY : -INFINITY; }

/* Open the root attribute `name`, with its type class and number of values;
 * one line and BASIN_ERR_USAGE when it is missing or damaged. The caller
 * closes a, after a failure too. */
static int open_root_attr(const char *path, hid_t file, const char *name, H5Attr *a, H5T_class_t *cls,
                          hssize_t *npoints)
{
    char why[512];
    int st = h5attr_open(file, name, a, why, sizeof why);
    if (st < 0) return basin_error(BASIN_ERR_USAGE, "%s: damaged HDF5 file: %s", path, why);
    if (st > 0) return basin_error(BASIN_ERR_USAGE, "%s: missing root attribute '%s'", path, name);
    *cls = H5Tget_class(a->type);
    *npoints = H5Sget_simple_extent_npoints(a->space);
    if (*cls == H5T_NO_CLASS || *npoints < 0)
        return dataset_damaged(path, "H5Tget_class/H5Sget_simple_extent_npoints(%s)", name);
    return BASIN_OK;
}

/* Read the scalar numeric root attribute `name` converted to mem_type; with
 * integer, it must be stored as an integer (a float would be truncated). */
static int read_root_attr(const char *path, hid_t file, const char *name, int integer, hid_t mem_type, void *value)
{
    H5Attr a;
    H5T_class_t cls;
    hssize_t npoints;
    int rc = open_root_attr(path, file, name, &a, &cls, &npoints);
    if (rc) goto cleanup;
    if ((cls != H5T_INTEGER && cls != H5T_FLOAT) || npoints != 1) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: root attribute '%s' must be a single number", path, name);
        goto cleanup;
    }
    if (integer && cls != H5T_INTEGER) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: root attribute '%s' must be an integer, not a float", path, name);
        goto cleanup;
    }
    /* A value out of the memory type's range would be clipped (or, for a
     * float's NaN, made up): HDF5 reports it only through a conversion
     * exception, so read in double and range-check here. */
    double v = 0.0;
    if (H5Aread(a.attr, H5T_NATIVE_DOUBLE, &v) < 0) {
        rc = dataset_damaged(path, "H5Aread(%s)", name);
        goto cleanup;
    }
    if (mem_type == H5T_NATIVE_INT) {
        if (!(v >= (double)INT_MIN && v <= (double)INT_MAX)) {
            rc = basin_error(BASIN_ERR_USAGE, "%s: root attribute '%s' = %g is out of range", path, name, v);
            goto cleanup;
        }
        *(int *)value = (int)v;
    } else {
        *(float *)value = to_float(v);
    }

cleanup:
    h5attr_close(&a);
    return rc;
}

/* Read the float root attribute `name` of the c channels into vals[0..c):
 * a single number is every channel's value, an array of c numbers one per
 * channel. *stored receives how many the file holds (1 or c). */
static int read_channel_attr(const char *path, hid_t file, const char *name, int c, float *vals, int *stored)
{
    H5Attr a;
    H5T_class_t cls;
    hssize_t npoints;
    int rc = open_root_attr(path, file, name, &a, &cls, &npoints);
    if (rc) goto cleanup;
    if ((cls != H5T_INTEGER && cls != H5T_FLOAT) || (npoints != 1 && npoints != c)) {
        if (c == 1)
            rc = basin_error(BASIN_ERR_USAGE, "%s: root attribute '%s' must be a single number", path, name);
        else
            rc = basin_error(BASIN_ERR_USAGE, "%s: root attribute '%s' must be a single number or %d numbers, "
                             "one per channel (found %lld %s)", path, name, c, (long long)npoints,
                             cls == H5T_INTEGER || cls == H5T_FLOAT ? "numbers" : "non-numeric values");
        goto cleanup;
    }
    /* Read in double and range-check here (see read_root_attr). npoints <= c
     * <= BASIN_MAX_CHANNELS. */
    double v[BASIN_MAX_CHANNELS];
    if (H5Aread(a.attr, H5T_NATIVE_DOUBLE, v) < 0) {
        rc = dataset_damaged(path, "H5Aread(%s)", name);
        goto cleanup;
    }
    for (int k = 0; k < c; k++) {
        double x = v[npoints == 1 ? 0 : k];
        vals[k] = to_float(x);
    }
    *stored = (int)npoints;

cleanup:
    h5attr_close(&a);
    return rc;
}

/* Read labels [0, count) of the split into d->labels and check their range. */
static int load_labels(Dataset *d, hid_t labels_ds)
{
    int rc = BASIN_OK;
    hid_t fspace = H5I_INVALID_HID, mspace = H5I_INVALID_HID;
    size_t count = d->info.count;

    d->labels = basin_malloc(count);
    if (!d->labels) return BASIN_ERR_RUNTIME;
    if (count == 0) return BASIN_OK;

    hsize_t start = 0, n = count;
    fspace = H5Dget_space(labels_ds);
    if (fspace < 0) {
        rc = dataset_damaged(d->path, "H5Dget_space(/%s/labels)", d->split);
        goto cleanup;
    }
    if (H5Sselect_hyperslab(fspace, H5S_SELECT_SET, &start, NULL, &n, NULL) < 0) {
        rc = dataset_damaged(d->path, "H5Sselect_hyperslab(/%s/labels)", d->split);
        goto cleanup;
    }
    mspace = H5Screate_simple(1, &n, NULL);
    if (mspace < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Screate_simple(%zu) failed", count);
        goto cleanup;
    }
    if (H5Dread(labels_ds, H5T_NATIVE_UINT8, mspace, fspace, H5P_DEFAULT, d->labels) < 0) {
        rc = dataset_damaged(d->path, "H5Dread(/%s/labels)", d->split);
        goto cleanup;
    }
    for (size_t i = 0; i < count; i++) {
        if (d->labels[i] >= d->info.classes) {
            rc = basin_error(BASIN_ERR_USAGE, "%s: /%s/labels[%zu] = %u is out of range [0, %d)", d->path,
                             d->split, i, d->labels[i], d->info.classes);
            goto cleanup;
        }
    }

cleanup:
    if (mspace >= 0) H5Sclose(mspace);
    if (fspace >= 0) H5Sclose(fspace);
    return rc;
}

static int open_checked(const char *path, const char *split, size_t limit, Dataset **out)
{
    *out = NULL;
    dataset_quiet_hdf5();
    int rc = BASIN_OK;
    hid_t labels_ds = H5I_INVALID_HID;
    Dataset *d = basin_calloc(1, sizeof *d);
    if (!d) return BASIN_ERR_RUNTIME;
    d->file = d->images = d->fspace = H5I_INVALID_HID;
    d->fd = -1;

    if (!path || !*path || !split || !*split || strchr(split, '/') || strlen(split) > 64) {
        rc = basin_error(BASIN_ERR_USAGE, "dataset: need a file path and a split name such as 'train' "
                                          "(got path '%s', split '%s')", path ? path : "", split ? split : "");
        goto cleanup;
    }
    d->path = dup_string(path);
    d->split = dup_string(split);
    if (!d->path || !d->split) {
        rc = BASIN_ERR_RUNTIME;
        goto cleanup;
    }

    struct stat st;
    if (stat(path, &st) != 0) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: %s%s", path, strerror(errno),
                         errno == ENOENT ? " (create it with: basin-data import fashion-mnist)" : "");
        goto cleanup;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: not a regular file", path);
        goto cleanup;
    }
    if (access(path, R_OK) != 0) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: %s", path, strerror(errno));
        goto cleanup;
    }
    htri_t is_h5 = H5Fis_hdf5(path);
    if (is_h5 <= 0) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: not an HDF5 file", path);
        goto cleanup;
    }
    d->file_bytes = (uint64_t)st.st_size;
    d->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (d->file < 0) {
        char h5[256];
        rc = basin_error(BASIN_ERR_USAGE, "%s: damaged or truncated HDF5 file (%s)", path, h5check_reason(h5));
        goto cleanup;
    }

    char group[80];
    snprintf(group, sizeof group, "/%s", split);
    int e = link_exists(d->file, group);
    if (e < 0) {
        rc = dataset_damaged(path, "H5Lexists(%s)", group);
        goto cleanup;
    }
    if (e == 0) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: missing split %s", path, group);
        goto cleanup;
    }
    hid_t g = H5Gopen2(d->file, group, H5P_DEFAULT);
    if (g < 0) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: %s is not a group of images and labels", path, group);
        goto cleanup;
    }
    if (H5Gclose(g) < 0) {
        rc = dataset_damaged(path, "H5Gclose(%s)", group);
        goto cleanup;
    }

    hsize_t idims[4], ldims[1];
    if ((rc = open_u8_dataset(path, d->file, split, "images", 4, idims, &d->images))) goto cleanup;
    if ((rc = open_u8_dataset(path, d->file, split, "labels", 1, ldims, &labels_ds))) goto cleanup;
    if (idims[0] != ldims[0]) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: /%s/images has %llu samples but /%s/labels has %llu", path,
                         split, (unsigned long long)idims[0], split, (unsigned long long)ldims[0]);
        goto cleanup;
    }
    for (int i = 1; i < 4; i++) {
        if (idims[i] == 0 || idims[i] > 65536) {
            rc = basin_error(BASIN_ERR_USAGE, "%s: /%s/images has sample shape [%llu, %llu, %llu], "
                             "each extent must be in [1, 65536]", path, split, (unsigned long long)idims[1],
                             (unsigned long long)idims[2], (unsigned long long)idims[3]);
            goto cleanup;
        }
    }
    if ((uint64_t)idims[1] * idims[2] * idims[3] > MAX_SAMPLE_BYTES) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: /%s/images has samples of [%llu, %llu, %llu] = %llu bytes, more "
                         "than the %zu MiB a sample may have", path, split, (unsigned long long)idims[1],
                         (unsigned long long)idims[2], (unsigned long long)idims[3],
                         (unsigned long long)(idims[1] * idims[2] * idims[3]), MAX_SAMPLE_BYTES >> 20);
        goto cleanup;
    }
    /* Declared extents must be backed by stored bytes before anything is
     * read or allocated for them. */
    char why[320];
    if (h5check_storage(d->images, 1, d->file_bytes, why, sizeof why)) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: /%s/images %s", path, split, why);
        goto cleanup;
    }
    if (h5check_storage(labels_ds, 1, d->file_bytes, why, sizeof why)) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: /%s/labels %s", path, split, why);
        goto cleanup;
    }

    if (idims[1] > BASIN_MAX_CHANNELS) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: /%s/images has %llu channels, more than the %d a sample may have",
                         path, split, (unsigned long long)idims[1], BASIN_MAX_CHANNELS);
        goto cleanup;
    }
    const int C = (int)idims[1];
    int classes = 0, mean_n = 0, std_n = 0;
    float *mean = d->info.mean, *std = d->info.std;
    if ((rc = read_root_attr(path, d->file, "classes", 1, H5T_NATIVE_INT, &classes))) goto cleanup;
    if ((rc = read_channel_attr(path, d->file, "mean", C, mean, &mean_n))) goto cleanup;
    if ((rc = read_channel_attr(path, d->file, "std", C, std, &std_n))) goto cleanup;
    if (classes < 1 || classes > 256) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: attribute classes = %d, must be in [1, 256] for uint8 labels",
                         path, classes);
        goto cleanup;
    }
    for (int k = 0; k < C; k++) {
        if (isfinite(mean[k]) && isfinite(std[k]) && std[k] > 0.0f) continue;
        if (mean_n == 1 && std_n == 1)
            rc = basin_error(BASIN_ERR_USAGE, "%s: attributes mean = %g, std = %g: need finite values, std > 0",
                             path, (double)mean[k], (double)std[k]);
        else
            rc = basin_error(BASIN_ERR_USAGE, "%s: attributes mean[%d] = %g, std[%d] = %g: need finite values, "
                             "std > 0", path, k, (double)mean[k], k, (double)std[k]);
        goto cleanup;
    }

    size_t n_file = (size_t)idims[0];
    d->info.count = limit > 0 && limit < n_file ? limit : n_file;
    d->info.c = (int)idims[1];
    d->info.h = (int)idims[2];
    d->info.w = (int)idims[3];
    d->info.classes = classes;
    d->sample_bytes = (size_t)idims[1] * (size_t)idims[2] * (size_t)idims[3];
    for (int k = 0; k < C; k++)
        for (int v = 0; v < 256; v++) d->lut[k][v] = ((float)v / 255.0f - mean[k]) / std[k];

    if ((rc = load_labels(d, labels_ds))) goto cleanup;

    d->fspace = H5Dget_space(d->images);
    if (d->fspace < 0) {
        rc = dataset_damaged(path, "H5Dget_space(/%s/images)", split);
        goto cleanup;
    }
    if ((rc = dataset_enable_direct_reads(d))) goto cleanup;

cleanup:
    if (labels_ds >= 0) H5Dclose(labels_ds);
    if (rc) {
        dataset_close(d);
        return rc;
    }
    *out = d;
    return BASIN_OK;
}

typedef struct {
    const char *path, *split;
    size_t limit;
} GuardArgs;

/* In the guard's child: the same validation, then the same close. */
static int check_in_child(void *arg)
{
    const GuardArgs *a = arg;
    Dataset *d = NULL;
    int rc = open_checked(a->path, a->split, a->limit, &d);
    dataset_close(d);
    return rc;
}

/* Generated data (synthetic.c): no file, nothing for HDF5 to parse. */
static int open_synthetic(const char *path, const char *split, size_t limit, Dataset **out)
{
    SyntheticSpec spec;
    TRY(synthetic_parse(path, &spec));
    int test = split && !strcmp(split, "test");
    if (!split || (!test && strcmp(split, "train")))
        return basin_error(BASIN_ERR_USAGE, "%s: synthetic data has the splits train and test, not '%s'", path,
                           split ? split : "");
    Dataset *d = basin_calloc(1, sizeof *d);
    if (!d) return BASIN_ERR_RUNTIME;
    d->file = d->images = d->fspace = H5I_INVALID_HID;
    d->fd = -1;
    d->path = dup_string(path);
    d->split = dup_string(split);
    if (!d->path || !d->split) {
        dataset_close(d);
        return BASIN_ERR_RUNTIME;
    }
    d->syn = spec;
    d->syn_test = test;
    size_t n = synthetic_count(&spec, test);
    d->info.count = limit > 0 && limit < n ? limit : n;
    d->info.c = spec.c;
    d->info.h = spec.h;
    d->info.w = spec.w;
    d->info.classes = spec.classes;
    for (int k = 0; k < spec.c; k++) {
        d->info.mean[k] = 0.0f;
        d->info.std[k] = 1.0f;
    }
    d->info.synthetic = 1;
    d->sample_bytes = (size_t)spec.c * (size_t)spec.h * (size_t)spec.w;
    *out = d;
    return BASIN_OK;
}

int dataset_open(const char *path, const char *split, size_t limit, Dataset **out)
{
    *out = NULL;
    if (synthetic_is(path)) return open_synthetic(path, split, limit, out);
    dataset_quiet_hdf5();
    /* Only a readable regular file reaches HDF5; open_checked words every
     * other case. */
    struct stat st;
    if (path && *path && split && stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, R_OK) == 0) {
        GuardArgs a = {path, split, limit};
        char why[320];
        int rc = h5guard_run((uint64_t)st.st_size, check_in_child, &a, NULL, why, sizeof why);
        if (rc) return basin_error(rc, "%s: %s", path, why);
    }
    return open_checked(path, split, limit, out);
}

/* In the guard's child: BASIN_ERR_USAGE only when the file opens and has
 * no such link. */
static int split_absent_in_child(void *arg)
{
    const GuardArgs *a = arg;
    char group[80];
    snprintf(group, sizeof group, "/%s", a->split);
    if (H5Fis_hdf5(a->path) <= 0) return BASIN_OK;
    hid_t file = H5Fopen(a->path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) return BASIN_OK;
    int e = link_exists(file, group);
    H5Fclose(file);
    return e == 0 ? BASIN_ERR_USAGE : BASIN_OK;
}

int dataset_has_split(const char *path, const char *split)
{
    if (synthetic_is(path)) return split && (!strcmp(split, "train") || !strcmp(split, "test"));
    dataset_quiet_hdf5();
    struct stat st;
    if (!path || !*path || !split || !*split || strchr(split, '/') || strlen(split) > 64 || stat(path, &st) != 0 ||
        !S_ISREG(st.st_mode) || access(path, R_OK) != 0)
        return 1;
    GuardArgs a = {path, split, 0};
    char why[320];
    int verdict = BASIN_OK;
    if (h5guard_run((uint64_t)st.st_size, split_absent_in_child, &a, &verdict, why, sizeof why)) return 1;
    return verdict != BASIN_ERR_USAGE;
}

