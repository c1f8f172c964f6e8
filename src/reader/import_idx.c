/* Import of Fashion-MNIST (or MNIST) from its gzip-compressed IDX files into
 * one dataset file (layout in reader.h).
 *
 * IDX: a big-endian header, magic 0x00000803 for uint8 images [N, rows, cols]
 * or 0x00000801 for uint8 labels [N], followed by the raw bytes.
 *
 * All four inputs are read and checked before anything is written. The HDF5
 * file is then built in memory, written to "<out>.tmp.<pid>", fsynced and
 * renamed over out_path, so a reader sees either the old file or the complete
 * new one, and a failure leaves no temp file behind. Images are stored contiguous (no chunks, no filters): a sample is a
 * plain byte range, and a batch of random samples costs one seek per sample.
 */
#include "reader/reader.h"

#include "core/error.h"
#include "reader/h5attr.h"
#include "core/files.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define IDX_MAGIC_IMAGES 0x00000803u
#define IDX_MAGIC_LABELS 0x00000801u
#define IMPORT_SIDE 28
#define IMPORT_CLASSES 10
#define IMPORT_MAX_SAMPLES 100000000u /* far above any IDX set; bounds allocations */

static const char *const CLASS_NAMES[IMPORT_CLASSES] = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
};

typedef struct {
    size_t n;
    uint8_t *images; /* (n, 1, 28, 28) */
    uint8_t *labels; /* (n) */
} Split;

/* Read exactly `bytes` from f; a short read is a damaged or truncated file. */
static int gz_read_exact(gzFile f, const char *path, void *buf, size_t bytes)
{
    uint8_t *p = buf;
    while (bytes > 0) {
        unsigned chunk = bytes > (1u << 30) ? (1u << 30) : (unsigned)bytes;
        int got = gzread(f, p, chunk);
        if (got <= 0) {
            int zerr = Z_OK;
            const char *msg = gzerror(f, &zerr);
            if (got < 0 || (zerr != Z_OK && zerr != Z_STREAM_END))
                return basin_error(BASIN_ERR_USAGE, "%s: damaged gzip data (%s)", path, msg);
            return basin_error(BASIN_ERR_USAGE, "%s: truncated (ends %zu bytes early)", path, bytes);
        }
        p += got;
        bytes -= (size_t)got;
    }
    return BASIN_OK;
}

static uint32_t be32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* Read one IDX file: images (magic 0x803, dims n x 28 x 28) when `images` is
 * set, else labels (magic 0x801, dims n). *data receives a malloc'd buffer. */
static int read_idx(const char *path, int images, size_t *n_out, uint8_t **data)
{
    *data = NULL;
    int rc = BASIN_OK;
    uint8_t *buf = NULL;
    gzFile f = NULL;

    if (access(path, R_OK) != 0) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: %s%s", path, strerror(errno),
                         errno == ENOENT ? " (install the dataset-fashion-mnist package or pass --source DIR)" : "");
        goto cleanup;
    }
    f = gzopen(path, "rb");
    if (!f) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: cannot open: %s", path, errno ? strerror(errno) : "out of memory");
        goto cleanup;
    }
    uint8_t head[16];
    size_t head_bytes = images ? 16 : 8;
    if ((rc = gz_read_exact(f, path, head, head_bytes))) goto cleanup;
    uint32_t magic = be32(head), want = images ? IDX_MAGIC_IMAGES : IDX_MAGIC_LABELS;
    if (magic != want) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: not an IDX %s file (magic 0x%08x, expected 0x%08x)", path,
                         images ? "image" : "label", magic, want);
        goto cleanup;
    }
    size_t n = be32(head + 4);
    if (n == 0 || n > IMPORT_MAX_SAMPLES) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: implausible sample count %zu", path, n);
        goto cleanup;
    }
    size_t per = 1;
    if (images) {
        uint32_t rows = be32(head + 8), cols = be32(head + 12);
        if (rows != IMPORT_SIDE || cols != IMPORT_SIDE) {
            rc = basin_error(BASIN_ERR_USAGE, "%s: images are %ux%u, expected %dx%d", path, rows, cols,
                             IMPORT_SIDE, IMPORT_SIDE);
            goto cleanup;
        }
        per = IMPORT_SIDE * IMPORT_SIDE;
    }
    buf = basin_malloc(n * per);
    if (!buf) {
        rc = BASIN_ERR_RUNTIME;
        goto cleanup;
    }
    if ((rc = gz_read_exact(f, path, buf, n * per))) goto cleanup;
    uint8_t extra;
    int more = gzread(f, &extra, 1);
    if (more != 0) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: %s after the %zu samples its header announces", path,
                         more > 0 ? "data continues" : "damaged gzip data", n);
        goto cleanup;
    }
    *n_out = n;
    *data = buf;
    buf = NULL;

cleanup:
    if (f) gzclose(f);
    free(buf);
    return rc;
}

static void split_free(Split *s)
{
    free(s->images);
    free(s->labels);
    s->images = s->labels = NULL;
}

/* Read <prefix>-images-idx3-ubyte.gz and <prefix>-labels-idx1-ubyte.gz. */
static int read_split(const char *src_dir, const char *prefix, Split *s)
{
    char ipath[PATH_MAX], lpath[PATH_MAX];
    snprintf(ipath, sizeof ipath, "%s/%s-images-idx3-ubyte.gz", src_dir, prefix);
    snprintf(lpath, sizeof lpath, "%s/%s-labels-idx1-ubyte.gz", src_dir, prefix);
    size_t ni = 0, nl = 0;
    TRY(read_idx(ipath, 1, &ni, &s->images));
    TRY(read_idx(lpath, 0, &nl, &s->labels));
    if (ni != nl)
        return basin_error(BASIN_ERR_USAGE, "%s has %zu images but %s has %zu labels", ipath, ni, lpath, nl);
    for (size_t i = 0; i < nl; i++) {
        if (s->labels[i] >= IMPORT_CLASSES)
            return basin_error(BASIN_ERR_USAGE, "%s: label %zu is %u, expected < %d", lpath, i, s->labels[i],
                               IMPORT_CLASSES);
    }
    s->n = ni;
    return BASIN_OK;
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

static int write_split(hid_t file, const char *split, const Split *s, const char *path)
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
    hsize_t idims[4] = {s->n, 1, IMPORT_SIDE, IMPORT_SIDE}, ldims[1] = {s->n};
    snprintf(name, sizeof name, "%s/images", gname);
    TRY(write_u8_dataset(file, name, 4, idims, s->images, path));
    snprintf(name, sizeof name, "%s/labels", gname);
    TRY(write_u8_dataset(file, name, 1, ldims, s->labels, path));
    return BASIN_OK;
}

static int write_class_names(hid_t file, const char *path)
{
    int rc = BASIN_OK;
    hsize_t n = IMPORT_CLASSES;
    hid_t type = H5I_INVALID_HID, space = H5I_INVALID_HID, attr = H5I_INVALID_HID;
    type = H5Tcopy(H5T_C_S1);
    if (type < 0 || H5Tset_size(type, H5T_VARIABLE) < 0 || H5Tset_cset(type, H5T_CSET_UTF8) < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Tcopy/H5Tset_size(variable string) failed");
        goto cleanup;
    }
    space = H5Screate_simple(1, &n, NULL);
    if (space < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Screate_simple(%d) failed", IMPORT_CLASSES);
        goto cleanup;
    }
    attr = H5Acreate2(file, "class_names", type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Acreate2(%s, class_names) failed", path);
        goto cleanup;
    }
    if (H5Awrite(attr, type, CLASS_NAMES) < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Awrite(%s, class_names) failed", path);
        goto cleanup;
    }

cleanup:
    if (attr >= 0 && H5Aclose(attr) < 0 && !rc) rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Aclose(class_names) failed");
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return rc;
}

/* Mean and standard deviation of all pixels of s scaled to [0, 1]. Sums of
 * bytes are exact in 64-bit integers, so the result does not depend on order. */
static void pixel_stats(const Split *s, float *mean, float *std)
{
    size_t total = s->n * IMPORT_SIDE * IMPORT_SIDE;
    uint64_t hist[256] = {0};
    for (size_t i = 0; i < total; i++) hist[s->images[i]]++;
    uint64_t sum = 0, sum_sq = 0;
    for (uint64_t v = 0; v < 256; v++) {
        sum += v * hist[v];
        sum_sq += v * v * hist[v];
    }
    double m = (double)sum / (double)total;
    double var = (double)sum_sq / (double)total - m * m;
    *mean = (float)(m / 255.0);
    *std = (float)(sqrt(var > 0.0 ? var : 0.0) / 255.0);
}

/* Build the whole HDF5 file in memory (core driver, no backing store) and
 * hand back its bytes. HDF5 then never writes to disk itself: a full disk
 * shows up as a failed write() of ours, not as a half-closed HDF5 file. */
static int build_file_image(const char *label, const Split *train, const Split *test, uint8_t **image,
                            size_t *image_bytes)
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
    float mean, std;
    pixel_stats(train, &mean, &std);
    int classes = IMPORT_CLASSES;
    if ((rc = write_split(file, "train", train, label))) goto cleanup;
    if ((rc = write_split(file, "test", test, label))) goto cleanup;
    if ((rc = h5attr_write(file, label, "classes", H5T_STD_I32LE, H5T_NATIVE_INT, &classes))) goto cleanup;
    if ((rc = h5attr_write(file, label, "mean", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, &mean))) goto cleanup;
    if ((rc = h5attr_write(file, label, "std", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, &std))) goto cleanup;
    if ((rc = write_class_names(file, label))) goto cleanup;
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

int import_fashion_mnist(const char *src_dir, const char *out_path)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (!src_dir || !*src_dir || !out_path || !*out_path)
        return basin_error(BASIN_ERR_USAGE, "import: need a source directory and an output path");

    int rc = BASIN_OK, tmp_made = 0;
    Split train = {0}, test = {0};
    uint8_t *image = NULL;
    size_t image_bytes = 0;
    char tmp[PATH_MAX], dir[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out_path, (long)getpid()) >= (int)sizeof tmp) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: path too long", out_path);
        goto cleanup;
    }
    struct stat st;
    if (stat(src_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: no such directory (install the dataset-fashion-mnist package "
                         "or pass --source DIR)", src_dir);
        goto cleanup;
    }
    if (stat(out_path, &st) == 0 && S_ISDIR(st.st_mode)) {
        rc = basin_error(BASIN_ERR_USAGE, "%s: is a directory, expected a file path", out_path);
        goto cleanup;
    }

    /* Every input is read and checked before anything is written. */
    if ((rc = read_split(src_dir, "train", &train))) goto cleanup;
    if ((rc = read_split(src_dir, "t10k", &test))) goto cleanup;
    if ((rc = basin_make_parent_dirs(out_path))) goto cleanup;

    if ((rc = build_file_image(out_path, &train, &test, &image, &image_bytes))) goto cleanup;
    split_free(&train);
    split_free(&test);
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
    split_free(&train);
    split_free(&test);
    return rc;
}
