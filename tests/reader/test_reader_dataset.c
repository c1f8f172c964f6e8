/* dataset_open and dataset_read on small files whose every byte is known:
 * arbitrary index sets match a naive whole-file reference, and each kind of
 * bad file is refused with BASIN_ERR_USAGE and exactly one line naming it. */
#include "reader/reader.h"

#include "core/error.h"
#include "fixtures.h"
#include "testing.h"

static char dir[512];

/* Everything the naive reference needs: the whole split, read in one call. */
typedef struct {
    size_t n, per;
    uint8_t *images, *labels;
} Whole;

static Whole read_whole(const char *path, const char *split)
{
    Whole w = {0};
    char name[64];
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    fx_check(f, "H5Fopen");
    snprintf(name, sizeof name, "/%s/images", split);
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    fx_check(d, "H5Dopen2");
    hid_t sp = H5Dget_space(d);
    hsize_t dims[4];
    H5Sget_simple_extent_dims(sp, dims, NULL);
    w.n = dims[0];
    w.per = dims[1] * dims[2] * dims[3];
    w.images = malloc(w.n * w.per);
    fx_check(H5Dread(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, w.images), "H5Dread");
    H5Sclose(sp);
    H5Dclose(d);
    snprintf(name, sizeof name, "/%s/labels", split);
    d = H5Dopen2(f, name, H5P_DEFAULT);
    w.labels = malloc(w.n);
    fx_check(H5Dread(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, w.labels), "H5Dread");
    H5Dclose(d);
    H5Fclose(f);
    return w;
}

/* Read idx through dataset_read and compare every value with the reference.
 * The reference applies the same float expression to the same byte, so the
 * results agree to rounding; 1e-6 absolute is far below the 1/255/std = 0.0078
 * step between neighbouring byte values, so a wrong byte cannot pass. */
static void check_read(Dataset *d, const Whole *w, const uint64_t *idx, size_t n, const char *what)
{
    const DatasetInfo *info = dataset_info(d);
    float *img = malloc((n * w->per + 1) * sizeof *img);
    int32_t *lab = malloc((n + 1) * sizeof *lab);
    int rc = dataset_read(d, idx, n, img, lab);
    EXPECT(rc == BASIN_OK, "%s: dataset_read returned %d", what, rc);
    size_t bad_img = 0, bad_lab = 0;
    for (size_t i = 0; i < n && rc == BASIN_OK; i++) {
        for (size_t j = 0; j < w->per; j++) {
            float want = ((float)w->images[idx[i] * w->per + j] / 255.0f - info->mean[0]) / info->std[0];
            if (!(fabsf(img[i * w->per + j] - want) <= 1e-6f)) bad_img++;
        }
        if (lab[i] != w->labels[idx[i]]) bad_lab++;
    }
    EXPECT(bad_img == 0, "%s: %zu image values differ from the reference", what, bad_img);
    EXPECT(bad_lab == 0, "%s: %zu labels differ from the reference", what, bad_lab);
    free(img);
    free(lab);
}

/* chunked = 0: contiguous images, read straight from the file at the
 * dataset's offset; 1: chunked and compressed, read through HDF5. */
static void test_reads(int chunked)
{
    char path[600];
    snprintf(path, sizeof path, "%s/good%d.h5", dir, chunked);
    FxSpec s = fx_spec(3000, 3, 4, 5);
    s.images_chunked = chunked;
    s.mean = 0.3f;
    s.std = 0.7f;
    fx_write_dataset_file(path, &s);
    Whole w = read_whole(path, "train");

    Dataset *d = NULL;
    int rc = dataset_open(path, "train", 0, &d);
    EXPECT(rc == BASIN_OK && d, "dataset_open(good file) returned %d", rc);
    if (!d) return;
    const DatasetInfo *info = dataset_info(d);
    EXPECT(info->count == 3000, "count %zu", info->count);
    EXPECT(info->c == 3 && info->h == 4 && info->w == 5, "shape %d x %d x %d", info->c, info->h, info->w);
    EXPECT(info->classes == 10, "classes %d", info->classes);
    EXPECT(info->mean[0] == 0.3f && info->std[0] == 0.7f, "mean %g std %g", (double)info->mean[0], (double)info->std[0]);

    uint64_t one[1] = {2999};
    check_read(d, &w, one, 1, "last sample");
    uint64_t first[1] = {0};
    check_read(d, &w, first, 1, "first sample");
    uint64_t unsorted[] = {17, 3, 2999, 4, 5, 6, 1000, 3, 3, 0, 18, 16, 2998, 17, 1};
    check_read(d, &w, unsorted, sizeof unsorted / sizeof unsorted[0], "unsorted with duplicates");
    uint64_t run[256];
    for (size_t i = 0; i < 256; i++) run[i] = 2000 + 255 - i; /* one reversed run */
    check_read(d, &w, run, 256, "reversed run");
    /* Random sets of several sizes, duplicates allowed. */
    uint64_t state = 88172645463325252ull;
    static uint64_t many[5000];
    const size_t counts[] = {2, 64, 777, 5000};
    for (size_t k = 0; k < 4; k++) {
        for (size_t i = 0; i < counts[k]; i++) {
            state ^= state << 13, state ^= state >> 7, state ^= state << 17;
            many[i] = state % 3000;
        }
        char what[64];
        snprintf(what, sizeof what, "%zu random indices", counts[k]);
        check_read(d, &w, many, counts[k], what);
    }
    for (size_t i = 0; i < 3000; i++) many[i] = i;
    check_read(d, &w, many, 3000, "the whole split in order");

    EXPECT(dataset_read(d, many, 0, NULL, NULL) == BASIN_OK, "reading zero samples failed");
    float img[60];
    int32_t lab[1];
    uint64_t past[1] = {3000};
    FxCapture cap;
    fx_capture_begin(&cap, dir);
    rc = dataset_read(d, past, 1, img, lab);
    int lines;
    free(fx_capture_end(&cap, &lines));
    EXPECT(rc != BASIN_OK, "reading sample 3000 of 3000 succeeded");
    dataset_close(d);

    /* limit: only the first samples exist. */
    rc = dataset_open(path, "train", 100, &d);
    EXPECT(rc == BASIN_OK && d && dataset_info(d)->count == 100, "limit 100: rc %d count %zu", rc,
           d ? dataset_info(d)->count : 0);
    if (d) {
        uint64_t idx[3] = {99, 0, 50};
        check_read(d, &w, idx, 3, "limited split");
        uint64_t beyond[1] = {100};
        fx_capture_begin(&cap, dir);
        rc = dataset_read(d, beyond, 1, img, lab);
        free(fx_capture_end(&cap, &lines));
        EXPECT(rc != BASIN_OK, "limit 100: reading sample 100 succeeded");
        dataset_close(d);
    }
    rc = dataset_open(path, "train", 5000, &d);
    EXPECT(rc == BASIN_OK && d && dataset_info(d)->count == 3000, "limit above N: rc %d", rc);
    dataset_close(d);
    free(w.images);
    free(w.labels);
}

/* Write a bad file with `s` (or take `path` as it is), open it, and expect
 * one usage line that names the path and says `needle`. */
static void expect_refused(const char *path, const char *split, const char *needle, const char *what)
{
    Dataset *d = (Dataset *)&d; /* must be reset to NULL */
    FxCapture cap;
    fx_capture_begin(&cap, dir);
    int rc = dataset_open(path, split, 0, &d);
    int lines;
    char *text = fx_capture_end(&cap, &lines);
    EXPECT(rc == BASIN_ERR_USAGE, "%s: dataset_open returned %d, want BASIN_ERR_USAGE", what, rc);
    EXPECT(d == NULL, "%s: *out not NULL after failure", what);
    EXPECT(lines == 1, "%s: printed %d lines: %s", what, lines, text);
    EXPECT(strstr(text, path) != NULL, "%s: message does not name %s: %s", what, path, text);
    EXPECT(strstr(text, needle) != NULL, "%s: message does not say '%s': %s", what, needle, text);
    if (rc == BASIN_OK) dataset_close(d);
    free(text);
}

static void test_bad_files(void)
{
    char path[600];
    FxSpec s;

    snprintf(path, sizeof path, "%s/missing.h5", dir);
    expect_refused(path, "train", "No such file", "missing file");

    snprintf(path, sizeof path, "%s/text.h5", dir);
    fx_write_bytes(path, "hello, not hdf5\n", 16);
    expect_refused(path, "train", "not an HDF5 file", "text file");

    snprintf(path, sizeof path, "%s/nosplit.h5", dir);
    s = fx_spec(10, 1, 2, 2);
    fx_write_dataset_file(path, &s);
    expect_refused(path, "test", "/test", "missing split");

    snprintf(path, sizeof path, "%s/nolabels.h5", dir);
    s = fx_spec(10, 1, 2, 2);
    s.no_labels = 1;
    fx_write_dataset_file(path, &s);
    expect_refused(path, "train", "/train/labels", "missing labels");

    snprintf(path, sizeof path, "%s/float.h5", dir);
    s = fx_spec(10, 1, 2, 2);
    s.images_float = 1;
    fx_write_dataset_file(path, &s);
    expect_refused(path, "train", "uint8", "float images");

    snprintf(path, sizeof path, "%s/rank3.h5", dir);
    s = fx_spec(10, 1, 2, 2);
    s.images_rank = 3;
    fx_write_dataset_file(path, &s);
    expect_refused(path, "train", "dimensions", "rank-3 images");

    snprintf(path, sizeof path, "%s/label10.h5", dir);
    s = fx_spec(10, 1, 2, 2);
    s.bad_label_at = 7;
    fx_write_dataset_file(path, &s);
    expect_refused(path, "train", "labels[7] = 10", "label 10 of 10 classes");

    snprintf(path, sizeof path, "%s/mismatch.h5", dir);
    s = fx_spec(10, 1, 2, 2);
    s.n_labels = 9;
    fx_write_dataset_file(path, &s);
    expect_refused(path, "train", "9", "N mismatch");

    snprintf(path, sizeof path, "%s/nomean.h5", dir);
    s = fx_spec(10, 1, 2, 2);
    s.no_mean = 1;
    fx_write_dataset_file(path, &s);
    expect_refused(path, "train", "'mean'", "missing mean attribute");

    snprintf(path, sizeof path, "%s/zerostd.h5", dir);
    s = fx_spec(10, 1, 2, 2);
    s.std = 0.0f;
    fx_write_dataset_file(path, &s);
    expect_refused(path, "train", "std", "std = 0");

    expect_refused(dir, "train", "not a regular file", "a folder");
}

int main(void)
{
    fx_make_tmpdir(dir, sizeof dir, "dataset");
    test_reads(0);
    test_reads(1);
    test_bad_files();
    fx_remove_tree(dir);
    return test_finish("test_reader_dataset");
}
