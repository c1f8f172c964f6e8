/* import_fashion_mnist on small synthetic gzip IDX files: the output holds
 * the known bytes, counts and attributes, and a failed import leaves an
 * existing output byte-identical and no temporary file behind. */
#include "reader/reader.h"

#include "core/error.h"
#include "fixtures.h"
#include "testing.h"

#include <signal.h>
#include <sys/resource.h>

enum { NTRAIN = 50, NTEST = 20, SIDE = 28, PER = SIDE * SIDE };

static char dir[512], src[600], outdir[600];

static uint8_t idx_pixel(int split, size_t i, size_t j)
{
    return (uint8_t)((i * 7 + j * 3 + (size_t)split * 101) & 255);
}

static uint8_t idx_label(int split, size_t i)
{
    return (uint8_t)((i + (size_t)split * 3) % 10);
}

typedef struct {
    uint32_t images_magic, labels_magic;
    uint32_t rows;
    size_t n_labels_train;     /* labels written for train */
    int bad_label;             /* a train label of 10 */
} Source;

static Source good_source(void)
{
    Source s = {0x00000803u, 0x00000801u, SIDE, NTRAIN, 0};
    return s;
}

static void write_source(const Source *s)
{
    mkdir(src, 0700);
    const char *prefix[2] = {"train", "t10k"};
    for (int sp = 0; sp < 2; sp++) {
        size_t n = sp == 0 ? NTRAIN : NTEST, nl = sp == 0 ? s->n_labels_train : NTEST;
        uint8_t *img = malloc(n * PER), *lab = malloc(n + 1);
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < PER; j++) img[i * PER + j] = idx_pixel(sp, i, j);
        for (size_t i = 0; i < nl; i++) lab[i] = idx_label(sp, i);
        if (sp == 0 && s->bad_label) lab[NTRAIN / 2] = 10;
        char path[700];
        uint32_t idims[3] = {(uint32_t)n, s->rows, SIDE}, ldims[1] = {(uint32_t)nl};
        snprintf(path, sizeof path, "%s/%s-images-idx3-ubyte.gz", src, prefix[sp]);
        fx_write_idx_gz(path, s->images_magic, 3, idims, img, n * s->rows * SIDE); /* rows <= SIDE */
        snprintf(path, sizeof path, "%s/%s-labels-idx1-ubyte.gz", src, prefix[sp]);
        fx_write_idx_gz(path, s->labels_magic, 1, ldims, lab, nl);
        free(img);
        free(lab);
    }
}

static void read_raw(hid_t f, const char *name, uint8_t *buf)
{
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    fx_check(d, name);
    fx_check(H5Dread(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf), name);
    hid_t dcpl = H5Dget_create_plist(d);
    EXPECT(H5Pget_layout(dcpl) == H5D_CONTIGUOUS, "%s is not stored contiguous", name);
    H5Pclose(dcpl);
    H5Dclose(d);
}

static void check_output(const char *out)
{
    /* Through the reader: counts, shape, attributes. */
    Dataset *d = NULL;
    int rc = dataset_open(out, "train", 0, &d);
    EXPECT(rc == BASIN_OK, "dataset_open(train) of the import returned %d", rc);
    if (!d) return;
    const DatasetInfo *info = dataset_info(d);
    EXPECT(info->count == NTRAIN && info->c == 1 && info->h == SIDE && info->w == SIDE && info->classes == 10,
           "train: %zu x [%d, %d, %d], %d classes", info->count, info->c, info->h, info->w, info->classes);
    /* Mean and std of the training bytes, in double, as the importer must compute them. */
    double sum = 0, sq = 0;
    for (size_t i = 0; i < NTRAIN; i++)
        for (size_t j = 0; j < PER; j++) {
            double v = idx_pixel(0, i, j) / 255.0;
            sum += v;
            sq += v * v;
        }
    double mean = sum / (NTRAIN * PER), std = sqrt(sq / (NTRAIN * PER) - mean * mean);
    /* Stored as float: 1e-6 relative is a few float ulps. */
    EXPECT_NEAR(info->mean[0], mean, 0, 1e-6, "mean attribute");
    EXPECT_NEAR(info->std[0], std, 0, 1e-6, "std attribute");
    uint64_t idx[2] = {NTRAIN - 1, 3};
    float img[2 * PER];
    int32_t lab[2];
    rc = dataset_read(d, idx, 2, img, lab);
    EXPECT(rc == BASIN_OK && lab[0] == idx_label(0, NTRAIN - 1) && lab[1] == idx_label(0, 3),
           "labels read back %d %d", lab[0], lab[1]);
    /* Undo the normalisation of a few pixels: the byte must come back. */
    const size_t js[] = {0, 1, 27, 28, 400, PER - 1};
    for (size_t k = 0; k < sizeof js / sizeof js[0]; k++) {
        for (int s = 0; s < 2; s++) {
            double v = ((double)img[s * PER + js[k]] * info->std[0] + info->mean[0]) * 255.0;
            EXPECT(fabs(v - idx_pixel(0, idx[s], js[k])) < 0.01, "train sample %llu pixel %zu: %g, want %u",
                   (unsigned long long)idx[s], js[k], v, idx_pixel(0, idx[s], js[k]));
        }
    }
    dataset_close(d);
    rc = dataset_open(out, "test", 0, &d);
    EXPECT(rc == BASIN_OK && d && dataset_info(d)->count == NTEST, "test split: rc %d", rc);
    dataset_close(d);

    /* Byte for byte, and the attributes the reader does not use. */
    hid_t f = H5Fopen(out, H5F_ACC_RDONLY, H5P_DEFAULT);
    fx_check(f, "H5Fopen(import)");
    static uint8_t images[NTRAIN * PER], labels[NTRAIN];
    read_raw(f, "/train/images", images);
    read_raw(f, "/train/labels", labels);
    size_t bad = 0;
    for (size_t i = 0; i < NTRAIN; i++) {
        bad += labels[i] != idx_label(0, i);
        for (size_t j = 0; j < PER; j++) bad += images[i * PER + j] != idx_pixel(0, i, j);
    }
    EXPECT(bad == 0, "%zu train bytes differ from the IDX files", bad);
    read_raw(f, "/test/images", images);
    read_raw(f, "/test/labels", labels);
    bad = 0;
    for (size_t i = 0; i < NTEST; i++) {
        bad += labels[i] != idx_label(1, i);
        for (size_t j = 0; j < PER; j++) bad += images[i * PER + j] != idx_pixel(1, i, j);
    }
    EXPECT(bad == 0, "%zu test bytes differ from the IDX files", bad);

    hid_t a = H5Aopen(f, "class_names", H5P_DEFAULT);
    EXPECT(a >= 0, "no class_names attribute");
    if (a >= 0) {
        hid_t t = H5Aget_type(a); /* variable-length strings: the file type serves as memory type */
        EXPECT(H5Tget_class(t) == H5T_STRING && H5Tis_variable_str(t) > 0, "class_names are not strings");
        hid_t sp = H5Aget_space(a);
        EXPECT(H5Sget_simple_extent_npoints(sp) == 10, "class_names has %lld entries",
               (long long)H5Sget_simple_extent_npoints(sp));
        char *names[10] = {0};
        if (H5Sget_simple_extent_npoints(sp) == 10 && H5Aread(a, t, names) >= 0) {
            EXPECT(names[0] && !strcmp(names[0], "T-shirt/top"), "class 0 is '%s'", names[0] ? names[0] : "");
            EXPECT(names[9] && !strcmp(names[9], "Ankle boot"), "class 9 is '%s'", names[9] ? names[9] : "");
            H5Dvlen_reclaim(t, sp, H5P_DEFAULT, names);
        } else {
            EXPECT(0, "class_names unreadable as strings");
        }
        H5Sclose(sp);
        H5Tclose(t);
        H5Aclose(a);
    }
    H5Fclose(f);
}

/* Import from a damaged source over an existing output: usage error, one
 * line naming the bad file, output unchanged, no temp file left. */
static void expect_failed_import(const Source *s, const char *out, const uint8_t *before, size_t before_bytes,
                                 const char *needle, const char *what)
{
    write_source(s);
    FxCapture cap;
    fx_capture_begin(&cap, dir);
    int rc = import_fashion_mnist(src, out);
    int lines;
    char *text = fx_capture_end(&cap, &lines);
    EXPECT(rc == BASIN_ERR_USAGE, "%s: import returned %d, want BASIN_ERR_USAGE", what, rc);
    EXPECT(lines == 1 && strstr(text, needle), "%s: want one line saying '%s', got: %s", what, needle, text);
    size_t after_bytes = 0;
    uint8_t *after = fx_slurp(out, &after_bytes);
    EXPECT(after && after_bytes == before_bytes && memcmp(after, before, before_bytes) == 0,
           "%s: the existing output changed", what);
    EXPECT(fx_count_entries(outdir, ".tmp.") == 0, "%s: a temporary file was left behind", what);
    free(after);
    free(text);
}

int main(void)
{
    fx_make_tmpdir(dir, sizeof dir, "import");
    snprintf(src, sizeof src, "%s/src", dir);
    /* The output's parent folders do not exist yet. */
    snprintf(outdir, sizeof outdir, "%s/a/b", dir);
    char out[700];
    snprintf(out, sizeof out, "%s/fm.h5", outdir);

    Source s = good_source();
    write_source(&s);
    int rc = import_fashion_mnist(src, out);
    EXPECT(rc == BASIN_OK, "import of good files returned %d", rc);
    check_output(out);
    EXPECT(fx_count_entries(outdir, ".tmp.") == 0, "temporary file left after a good import");

    size_t before_bytes = 0;
    uint8_t *before = fx_slurp(out, &before_bytes);
    EXPECT(before != NULL && before_bytes > NTRAIN * PER, "output unreadable (%zu bytes)", before_bytes);
    if (!before) return test_finish("test_reader_import");

    /* The same inputs give the same bytes (no timestamps in the file); HDF5
     * times have one-second resolution, so let the clock move first. */
    sleep(1);
    char again[700];
    snprintf(again, sizeof again, "%s/again.h5", dir);
    rc = import_fashion_mnist(src, again);
    size_t again_bytes = 0;
    uint8_t *again_data = fx_slurp(again, &again_bytes);
    EXPECT(rc == BASIN_OK && again_data && again_bytes == before_bytes && !memcmp(again_data, before, before_bytes),
           "a second import of the same files differs (rc %d, %zu vs %zu bytes)", rc, again_bytes, before_bytes);
    free(again_data);

    /* Each damage in turn, over the good output. */
    s = good_source();
    s.images_magic = 0x00000802u;
    expect_failed_import(&s, out, before, before_bytes, "magic", "bad image magic");

    s = good_source();
    s.labels_magic = 0x00000803u;
    expect_failed_import(&s, out, before, before_bytes, "magic", "bad label magic");

    s = good_source();
    s.rows = 27;
    expect_failed_import(&s, out, before, before_bytes, "27x28", "27x28 images");

    s = good_source();
    s.n_labels_train = NTRAIN - 1;
    expect_failed_import(&s, out, before, before_bytes, "49 labels", "fewer labels than images");

    s = good_source();
    s.bad_label = 1;
    expect_failed_import(&s, out, before, before_bytes, "label 25 is 10", "label 10");

    /* A truncated .gz: the good file cut to half its compressed size. */
    s = good_source();
    write_source(&s);
    char gz[700];
    snprintf(gz, sizeof gz, "%s/train-images-idx3-ubyte.gz", src);
    size_t gz_bytes = 0;
    uint8_t *gzdata = fx_slurp(gz, &gz_bytes);
    fx_write_bytes(gz, gzdata, gz_bytes / 2);
    free(gzdata);
    FxCapture cap;
    int lines;
    fx_capture_begin(&cap, dir);
    rc = import_fashion_mnist(src, out);
    char *text = fx_capture_end(&cap, &lines);
    EXPECT(rc == BASIN_ERR_USAGE, "truncated gzip: import returned %d", rc);
    EXPECT(lines == 1 && strstr(text, gz), "truncated gzip: want one line naming %s, got: %s", gz, text);
    size_t after_bytes = 0;
    uint8_t *after = fx_slurp(out, &after_bytes);
    EXPECT(after && after_bytes == before_bytes && memcmp(after, before, before_bytes) == 0,
           "truncated gzip: the existing output changed");
    EXPECT(fx_count_entries(outdir, ".tmp.") == 0, "truncated gzip: a temporary file was left behind");
    free(after);
    free(text);

    /* A write that fails half-way (file size limit): a runtime error, the old
     * output intact, the partial temp file removed. */
    s = good_source();
    write_source(&s);
    struct rlimit old_lim;
    getrlimit(RLIMIT_FSIZE, &old_lim);
    struct rlimit lim = {before_bytes / 2, old_lim.rlim_max};
    signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &lim);
    fx_capture_begin(&cap, dir);
    rc = import_fashion_mnist(src, out);
    text = fx_capture_end(&cap, &lines);
    setrlimit(RLIMIT_FSIZE, &old_lim);
    EXPECT(rc == BASIN_ERR_RUNTIME, "write failure: import returned %d, want BASIN_ERR_RUNTIME (%s)", rc, text);
    after = fx_slurp(out, &after_bytes);
    EXPECT(after && after_bytes == before_bytes && memcmp(after, before, before_bytes) == 0,
           "write failure: the existing output changed");
    EXPECT(fx_count_entries(outdir, ".tmp.") == 0, "write failure: the partial temporary file was left behind");
    free(after);
    free(text);

    /* A missing source file. */
    unlink(gz);
    fx_capture_begin(&cap, dir);
    rc = import_fashion_mnist(src, out);
    text = fx_capture_end(&cap, &lines);
    EXPECT(rc == BASIN_ERR_USAGE && lines == 1 && strstr(text, gz),
           "missing source file: rc %d, want one line naming %s, got: %s", rc, gz, text);
    free(text);
    free(before);

    fx_remove_tree(dir);
    return test_finish("test_reader_import");
}
