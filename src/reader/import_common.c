/* What the importers share (import_internal.h): the checks of the paths,
 * the pixel statistics, and the output file, built in memory by HDF5 and
 * written atomically: "<out>.tmp.<pid>", fsynced, renamed over out_path, so
 * a reader sees either the old file or the complete new one, and a failure
 * leaves no temp file behind. Images are stored contiguous (no chunks, no
 * filters): a sample is a plain byte range, and a batch of random samples
 * costs one seek per sample.
 */
#include "reader/import_internal.h"

#include "core/error.h"
#include "core/files.h"
#include "reader/h5attr.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void import_split_free(ImportSplit *s)
{
    free(s->images);
    free(s->labels);
    s->images = s->labels = NULL;
}

int import_prepare(const char *src_dir, const char *out_path, const char *missing_hint, char *tmp, size_t tmp_len)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (!src_dir || !*src_dir || !out_path || !*out_path)
        return basin_error(BASIN_ERR_USAGE, "import: need a source directory and an output path");
    if (snprintf(tmp, tmp_len, "%s.tmp.%ld", out_path, (long)getpid()) >= (int)tmp_len)
        return basin_error(BASIN_ERR_USAGE, "%s: path too long", out_path);
    struct stat st;
    if (stat(src_dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return basin_error(BASIN_ERR_USAGE, "%s: no such directory%s", src_dir, missing_hint);
    if (stat(out_path, &st) == 0 && S_ISDIR(st.st_mode))
        return basin_error(BASIN_ERR_USAGE, "%s: is a directory, expected a file path", out_path);
    return BASIN_OK;
}

void import_pixel_stats(const ImportSplit *s, int per_channel, float *mean, float *std)
{
    size_t plane = (size_t)s->h * (size_t)s->w, sample = plane * (size_t)s->c;
    int groups = per_channel ? s->c : 1;
    for (int g = 0; g < groups; g++) {
        uint64_t hist[256] = {0};
        size_t total = 0;
        for (size_t i = 0; i < s->n; i++) {
            const uint8_t *p = per_channel ? s->images + i * sample + (size_t)g * plane : s->images + i * sample;
            size_t len = per_channel ? plane : sample;
            for (size_t k = 0; k < len; k++) hist[p[k]]++;
            total += len;
        }
        uint64_t sum = 0, sum_sq = 0;
        for (uint64_t v = 0; v < 256; v++) {
            sum += v * hist[v];
            sum_sq += v * v * hist[v];
        }
        double m = (double)sum / (double)total;
        double var = (double)sum_sq / (double)total - m * m;
        mean[g] = (float)(m / 255.0);
        std[g] = (float)(sqrt(var > 0.0 ? var : 0.0) / 255.0);
    }
}

static int write_u8_dataset(hid_t file, const char *name, int rank, const hsize_t *dims, const uint8_t *data,
                            const char *path)
{
    int rc = BASIN_OK;
    hid_t space = H5I_INVALID_HID, dcpl = H5I_INVALID_HID, ds = H5I_INVALID_HID;
    space = H5Screate_simple(rank, dims, NULL);
    if (space < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Screate_simple(%s) failed", name);
        goto cleanup;
    }
    dcpl = H5Pcreate(H5P_DATASET_CREATE);
    /* No modification times: importing the same files gives the same bytes. */
    if (dcpl < 0 || H5Pset_layout(dcpl, H5D_CONTIGUOUS) < 0 || H5Pset_obj_track_times(dcpl, 0) < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Pcreate/H5Pset_layout(%s, contiguous) failed", name);
        goto cleanup;
    }
    ds = H5Dcreate2(file, name, H5T_STD_U8LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (ds < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Dcreate2(%s, %s) failed", path, name);
        goto cleanup;
    }
    if (H5Dwrite(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Dwrite(%s, %s) failed", path, name);
        goto cleanup;
    }

cleanup:
    if (ds >= 0 && H5Dclose(ds) < 0 && !rc) rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Dclose(%s, %s) failed", path, name);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    return rc;
}

static int write_split(hid_t file, const char *split, const ImportSplit *s, const char *path)
{
    char gname[32], name[64];
    snprintf(gname, sizeof gname, "/%s", split);
    hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
    if (gcpl < 0 || H5Pset_obj_track_times(gcpl, 0) < 0) {
        if (gcpl >= 0) H5Pclose(gcpl);
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Pcreate/H5Pset_obj_track_times(group) failed");
    }
    hid_t g = H5Gcreate2(file, gname, H5P_DEFAULT, gcpl, H5P_DEFAULT);
    H5Pclose(gcpl);
    if (g < 0) return BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Gcreate2(%s, %s) failed", path, gname);
    if (H5Gclose(g) < 0) return BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Gclose(%s, %s) failed", path, gname);
    hsize_t idims[4] = {s->n, (hsize_t)s->c, (hsize_t)s->h, (hsize_t)s->w}, ldims[1] = {s->n};
    snprintf(name, sizeof name, "%s/images", gname);
    TRY(write_u8_dataset(file, name, 4, idims, s->images, path));
    snprintf(name, sizeof name, "%s/labels", gname);
    TRY(write_u8_dataset(file, name, 1, ldims, s->labels, path));
    return BASIN_OK;
}

static int write_class_names(hid_t file, const char *path, const ImportMeta *meta)
{
    int rc = BASIN_OK;
    hsize_t n = (hsize_t)meta->classes;
    hid_t type = H5I_INVALID_HID, space = H5I_INVALID_HID, attr = H5I_INVALID_HID;
    type = H5Tcopy(H5T_C_S1);
    if (type < 0 || H5Tset_size(type, H5T_VARIABLE) < 0 || H5Tset_cset(type, H5T_CSET_UTF8) < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Tcopy/H5Tset_size(variable string) failed");
        goto cleanup;
    }
    space = H5Screate_simple(1, &n, NULL);
    if (space < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Screate_simple(%d) failed", meta->classes);
        goto cleanup;
    }
    attr = H5Acreate2(file, "class_names", type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Acreate2(%s, class_names) failed", path);
        goto cleanup;
    }
    if (H5Awrite(attr, type, meta->class_names) < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Awrite(%s, class_names) failed", path);
        goto cleanup;
    }

cleanup:
    if (attr >= 0 && H5Aclose(attr) < 0 && !rc) rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Aclose(class_names) failed");
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return rc;
}

/* A float32 attribute of n values: scalar when n is 1 and !array. */
static int write_floats_attr(hid_t file, const char *path, const char *name, const float *v, int n, int array)
{
    if (!array) return h5attr_write(file, path, name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, v);
    int rc = BASIN_OK;
    hsize_t dims = (hsize_t)n;
    hid_t space = H5Screate_simple(1, &dims, NULL), attr = H5I_INVALID_HID;
    if (space < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Screate_simple(%d) failed", n);
        goto cleanup;
    }
    attr = H5Acreate2(file, name, H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Acreate2(%s, %s) failed", path, name);
        goto cleanup;
    }
    if (H5Awrite(attr, H5T_NATIVE_FLOAT, v) < 0) rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Awrite(%s, %s) failed", path, name);

cleanup:
    if (attr >= 0 && H5Aclose(attr) < 0 && !rc) rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Aclose(%s) failed", name);
    if (space >= 0) H5Sclose(space);
    return rc;
}

/* Build the whole HDF5 file in memory (core driver, no backing store) and
 * hand back its bytes. HDF5 then never writes to disk itself: a full disk
 * shows up as a failed write() of ours, not as a half-closed HDF5 file. */
static int build_file_image(const char *label, const ImportSplit *train, const ImportSplit *test,
                            const ImportMeta *meta, uint8_t **image, size_t *image_bytes)
{
    int rc = BASIN_OK;
    hid_t fapl = H5I_INVALID_HID, file = H5I_INVALID_HID;
    uint8_t *buf = NULL;

    fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0 || H5Pset_fapl_core(fapl, (size_t)64 << 20, 0) < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Pset_fapl_core(in-memory file) failed");
        goto cleanup;
    }
    file = H5Fcreate(label, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (file < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Fcreate(%s, in memory) failed", label);
        goto cleanup;
    }
    float mean[64], std[64];
    int nstats = meta->per_channel ? train->c : 1;
    if (nstats > 64) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "import: %d channels", train->c);
        goto cleanup;
    }
    import_pixel_stats(train, meta->per_channel, mean, std);
    if ((rc = write_split(file, "train", train, label))) goto cleanup;
    if ((rc = write_split(file, "test", test, label))) goto cleanup;
    if ((rc = h5attr_write(file, label, "classes", H5T_STD_I32LE, H5T_NATIVE_INT, &meta->classes))) goto cleanup;
    if ((rc = write_floats_attr(file, label, "mean", mean, nstats, meta->per_channel))) goto cleanup;
    if ((rc = write_floats_attr(file, label, "std", std, nstats, meta->per_channel))) goto cleanup;
    if ((rc = write_class_names(file, label, meta))) goto cleanup;
    if (H5Fflush(file, H5F_SCOPE_GLOBAL) < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Fflush(%s) failed", label);
        goto cleanup;
    }
    ssize_t bytes = H5Fget_file_image(file, NULL, 0);
    if (bytes <= 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Fget_file_image(%s) failed", label);
        goto cleanup;
    }
    buf = basin_malloc((size_t)bytes);
    if (!buf) {
        rc = BASIN_ERR_RUNTIME;
        goto cleanup;
    }
    if (H5Fget_file_image(file, buf, (size_t)bytes) != bytes) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Fget_file_image(%s, %zd bytes) failed", label, bytes);
        goto cleanup;
    }
    *image = buf;
    *image_bytes = (size_t)bytes;
    buf = NULL;

cleanup:
    if (file >= 0 && H5Fclose(file) < 0 && !rc) rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Fclose(%s) failed", label);
    if (fapl >= 0) H5Pclose(fapl);
    free(buf);
    return rc;
}

/* Write bytes to a new file at path and fsync it. */
static int write_file_durably(const char *path, const uint8_t *bytes, size_t n)
{
    int rc = BASIN_OK;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (fd < 0) return BASIN_FAIL(BASIN_ERR_RUNTIME, "open(%s) for writing failed: %s", path, strerror(errno));
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, bytes + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "write(%s) failed after %zu of %zu bytes: %s", path, done, n,
                            w < 0 ? strerror(errno) : "no progress");
            goto cleanup;
        }
        done += (size_t)w;
    }
    if (fsync(fd) != 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "fsync(%s) failed: %s", path, strerror(errno));
        goto cleanup;
    }

cleanup:
    if (close(fd) != 0 && !rc) rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "close(%s) failed: %s", path, strerror(errno));
    return rc;
}

int import_write(const char *out_path, const char *tmp, ImportSplit *train, ImportSplit *test,
                 const ImportMeta *meta)
{
    int rc = BASIN_OK, tmp_made = 0;
    uint8_t *image = NULL;
    size_t image_bytes = 0;
    char dir[PATH_MAX];
    if ((rc = basin_make_parent_dirs(out_path))) goto cleanup;
    if ((rc = build_file_image(out_path, train, test, meta, &image, &image_bytes))) goto cleanup;
    import_split_free(train);
    import_split_free(test);
    tmp_made = 1;
    if ((rc = write_file_durably(tmp, image, image_bytes))) goto cleanup;
    if (rename(tmp, out_path) != 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "rename(%s, %s) failed: %s", tmp, out_path, strerror(errno));
        goto cleanup;
    }
    tmp_made = 0;
    /* Make the rename itself durable. */
    snprintf(dir, sizeof dir, "%s", out_path);
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == dir) dir[1] = '\0';
    else *slash = '\0';
    rc = basin_fsync_dir(dir);

cleanup:
    if (tmp_made) unlink(tmp);
    free(image);
    return rc;
}
