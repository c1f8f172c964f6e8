/* Import of Fashion-MNIST (or MNIST) from its gzip-compressed IDX files into
 * one dataset file (layout in reader.h).
 *
 * IDX: a big-endian header, magic 0x00000803 for uint8 images [N, rows, cols]
 * or 0x00000801 for uint8 labels [N], followed by the raw bytes.
 *
 * All four inputs are read and checked before anything is written; the
 * file is then written by import_write (import_common.c): built in memory,
 * written to a temporary file and renamed, images contiguous. The mean and
 * std attributes are single numbers (one channel).
 */
#include "reader/reader.h"
#include "reader/import_internal.h"

#include "core/error.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* Read <prefix>-images-idx3-ubyte.gz and <prefix>-labels-idx1-ubyte.gz. */
static int read_split(const char *src_dir, const char *prefix, ImportSplit *s)
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

int import_fashion_mnist(const char *src_dir, const char *out_path)
{
    static const ImportMeta meta = {IMPORT_CLASSES, CLASS_NAMES, 0};
    char tmp[PATH_MAX];
    TRY(import_prepare(src_dir, out_path, " (install the dataset-fashion-mnist package or pass --source DIR)", tmp,
                       sizeof tmp));
    /* Every input is read and checked before anything is written. */
    ImportSplit train = {0, 1, IMPORT_SIDE, IMPORT_SIDE, NULL, NULL}, test = train;
    int rc = read_split(src_dir, "train", &train);
    if (!rc) rc = read_split(src_dir, "t10k", &test);
    if (!rc) rc = import_write(out_path, tmp, &train, &test, &meta);
    import_split_free(&train);
    import_split_free(&test);
    return rc;
}
