/* Malformed data files, one generator each: the inputs of test_reader_faults,
 * of bench/faults/data_inputs.sh (through gen_data_faults) and seeds of the
 * data-set fuzz target.
 *
 * Each fault names the words its refusal must contain and says whether the
 * reader before the storage checks already refused it (`new` = 0) or not:
 * test_reader_faults fails on that reader through every `new` fault. */
#ifndef BASIN_TEST_READER_FAULTS_H
#define BASIN_TEST_READER_FAULTS_H

#include "fixtures.h"

#include <math.h>

/* A uint8 dataset /name of `rank` dims. chunk_n > 0: chunked with chunk_n
 * samples per chunk (the other extents whole); else contiguous. Space is
 * allocated when written (HDF5's default), so write_n = 0 leaves none; the
 * first write_n samples get fx_pixel/fx_label values. */
static inline void fq_u8(hid_t f, const char *name, int rank, const hsize_t *dims, hsize_t chunk_n, hsize_t write_n,
                         int classes)
{
    hid_t sp = H5Screate_simple(rank, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    fx_check(sp, "H5Screate_simple");
    fx_check(dcpl, "H5Pcreate");
    if (chunk_n > 0) {
        hsize_t chunk[4] = {chunk_n, rank > 1 ? dims[1] : 1, rank > 2 ? dims[2] : 1, rank > 3 ? dims[3] : 1};
        fx_check(H5Pset_chunk(dcpl, rank, chunk), "H5Pset_chunk");
    }
    fx_check(H5Pset_alloc_time(dcpl, chunk_n > 0 ? H5D_ALLOC_TIME_INCR : H5D_ALLOC_TIME_LATE), "H5Pset_alloc_time");
    hid_t d = H5Dcreate2(f, name, H5T_STD_U8LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    fx_check(d, "H5Dcreate2");
    if (write_n > 0) {
        size_t per = 1;
        for (int i = 1; i < rank; i++) per *= (size_t)dims[i];
        uint8_t *buf = malloc((size_t)write_n * per);
        for (size_t i = 0; i < write_n; i++)
            for (size_t j = 0; j < per; j++) buf[i * per + j] = rank == 1 ? fx_label(i, classes) : fx_pixel(i, j);
        hsize_t start[4] = {0, 0, 0, 0}, count[4] = {write_n, rank > 1 ? dims[1] : 1, rank > 2 ? dims[2] : 1,
                                                     rank > 3 ? dims[3] : 1};
        hid_t fs = H5Dget_space(d);
        hid_t ms = H5Screate_simple(rank, count, NULL);
        fx_check(H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL), "H5Sselect_hyperslab");
        fx_check(H5Dwrite(d, H5T_NATIVE_UINT8, ms, fs, H5P_DEFAULT, buf), "H5Dwrite");
        H5Sclose(ms);
        H5Sclose(fs);
        free(buf);
    }
    H5Dclose(d);
    H5Pclose(dcpl);
    H5Sclose(sp);
}

/* A file of /train with images (n, c, h, w) and labels (n), laid out as asked,
 * and the three root attributes. */
typedef struct {
    hsize_t n, c, h, w;
    hsize_t chunk_n, write_n;       /* images: see fq_u8 */
    hsize_t labels_chunk_n, labels_write_n;
} FqLayout;

static inline void fq_file(const char *path, const FqLayout *l)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    fx_check(f, "H5Fcreate");
    hid_t g = H5Gcreate2(f, "/train", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    fx_check(g, "H5Gcreate2");
    H5Gclose(g);
    hsize_t dims[4] = {l->n, l->c, l->h, l->w};
    fq_u8(f, "/train/images", 4, dims, l->chunk_n, l->write_n, 10);
    fq_u8(f, "/train/labels", 1, dims, l->labels_chunk_n, l->labels_write_n, 10);
    int classes = 10;
    float mean = 0.25f, std = 0.5f;
    fx_attr(f, "classes", H5T_NATIVE_INT, &classes);
    fx_attr(f, "mean", H5T_NATIVE_FLOAT, &mean);
    fx_attr(f, "std", H5T_NATIVE_FLOAT, &std);
    fx_check(H5Fclose(f), "H5Fclose");
}

/* A good small file: 300 samples of 1 x 28 x 28, contiguous. */
static inline void fq_good(const char *path)
{
    FxSpec s = fx_spec(300, 1, 28, 28);
    fx_write_dataset_file(path, &s);
}

/* Superblock version 0 (HDF5's default), 8-byte addresses: the end-of-file
 * address is at byte 40. Sets it, so HDF5 opens a file cut to that size. */
static inline void fq_set_stored_eof(const char *path, uint64_t eof)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0 || pwrite(fd, &eof, 8, 40) != 8) {
        perror(path);
        exit(1);
    }
    close(fd);
}

/* ---- the faults ------------------------------------------------------------ */

static inline void fq_declared_2e31(const char *path)
{
    /* 2^31 samples of 28 x 28 declared, chunked, nothing written: ~3 KB. */
    FqLayout l = {(hsize_t)1 << 31, 1, 28, 28, 64, 0, 1 << 16, 0};
    fq_file(path, &l);
}

static inline void fq_truncate_at(const char *path, double frac)
{
    fq_good(path);
    struct stat st;
    if (stat(path, &st) != 0 || truncate(path, (off_t)((double)st.st_size * frac)) != 0) {
        perror(path);
        exit(1);
    }
}
static inline void fq_truncated_1(const char *path) { fq_truncate_at(path, 0.01); }
static inline void fq_truncated_10(const char *path) { fq_truncate_at(path, 0.10); }
static inline void fq_truncated_50(const char *path) { fq_truncate_at(path, 0.50); }
static inline void fq_truncated_99(const char *path) { fq_truncate_at(path, 0.99); }

static inline void fq_past_eof(const char *path)
{
    /* The images are written last; the file is cut in the middle of their
     * bytes and the superblock says that is the whole file: HDF5 opens it,
     * and the images' byte range runs past the end. */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    fx_check(f, "H5Fcreate");
    hid_t g = H5Gcreate2(f, "/train", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    fx_check(g, "H5Gcreate2");
    H5Gclose(g);
    int classes = 10;
    float mean = 0.25f, std = 0.5f;
    fx_attr(f, "classes", H5T_NATIVE_INT, &classes);
    fx_attr(f, "mean", H5T_NATIVE_FLOAT, &mean);
    fx_attr(f, "std", H5T_NATIVE_FLOAT, &std);
    hsize_t dims[4] = {300, 1, 28, 28};
    fq_u8(f, "/train/labels", 1, dims, 0, 300, 10);
    fq_u8(f, "/train/images", 4, dims, 0, 300, 10);
    hid_t d = H5Dopen2(f, "/train/images", H5P_DEFAULT);
    fx_check(d, "H5Dopen2");
    haddr_t off = H5Dget_offset(d);
    H5Dclose(d);
    fx_check(H5Fclose(f), "H5Fclose");
    struct stat st;
    uint64_t cut = (uint64_t)off + 300 * 784 / 2;
    if (off == HADDR_UNDEF || stat(path, &st) != 0 || (uint64_t)st.st_size < (uint64_t)off + 300 * 784 ||
        truncate(path, (off_t)cut) != 0) {
        fprintf(stderr, "fixture: cannot cut %s in its images\n", path);
        exit(1);
    }
    fq_set_stored_eof(path, cut);
}

static inline void fq_contiguous_unwritten(const char *path)
{
    FqLayout l = {1000, 1, 28, 28, 0, 0, 0, 1000};
    fq_file(path, &l);
}

static inline void fq_chunks_missing(const char *path)
{
    FqLayout l = {1000, 1, 28, 28, 100, 100, 0, 1000}; /* 1 of 10 chunks written */
    fq_file(path, &l);
}

static inline void fq_labels_unwritten(const char *path)
{
    FqLayout l = {1000, 1, 28, 28, 0, 1000, 100, 0};
    fq_file(path, &l);
}

static inline void fq_huge_hw(const char *path)
{
    FqLayout l = {1, 1, 65536, 65536, 0, 0, 0, 1}; /* 4 GiB a sample */
    fq_file(path, &l);
}

static inline void fq_huge_chunk(const char *path)
{
    FqLayout l = {64, 4, 1024, 1024, 32, 0, 0, 64}; /* 4 MiB samples, 128 MiB chunks */
    fq_file(path, &l);
}

static inline void fq_split_is_dataset(const char *path)
{
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    fx_check(f, "H5Fcreate");
    hsize_t n = 10;
    fq_u8(f, "/train", 1, &n, 0, 10, 10);
    int classes = 10;
    float mean = 0.25f, std = 0.5f;
    fx_attr(f, "classes", H5T_NATIVE_INT, &classes);
    fx_attr(f, "mean", H5T_NATIVE_FLOAT, &mean);
    fx_attr(f, "std", H5T_NATIVE_FLOAT, &std);
    fx_check(H5Fclose(f), "H5Fclose");
}

/* The good file with one root attribute replaced. */
static inline void fq_with_attr(const char *path, const char *name, hid_t type, const void *v)
{
    fq_good(path);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    fx_check(f, "H5Fopen");
    fx_check(H5Adelete(f, name), "H5Adelete");
    fx_attr(f, name, type, v);
    fx_check(H5Fclose(f), "H5Fclose");
}

static inline void fq_classes_float(const char *path)
{
    float v = 10.5f;
    fq_with_attr(path, "classes", H5T_NATIVE_FLOAT, &v);
}

static inline void fq_mean_nan(const char *path)
{
    float v = NAN;
    fq_with_attr(path, "mean", H5T_NATIVE_FLOAT, &v);
}

static inline void fq_std_huge(const char *path)
{
    double v = 1e300; /* beyond float: must not become a clipped or undefined float */
    fq_with_attr(path, "std", H5T_NATIVE_DOUBLE, &v);
}

static inline void fq_spec_file(const char *path, FxSpec s) { fx_write_dataset_file(path, &s); }
static inline void fq_zero_samples(const char *path) { fq_spec_file(path, fx_spec(0, 1, 28, 28)); }
static inline void fq_label_ge_classes(const char *path)
{
    FxSpec s = fx_spec(300, 1, 28, 28);
    s.bad_label_at = 299;
    fq_spec_file(path, s);
}
static inline void fq_count_mismatch(const char *path)
{
    FxSpec s = fx_spec(300, 1, 28, 28);
    s.n_labels = 299;
    fq_spec_file(path, s);
}
static inline void fq_float_images(const char *path)
{
    FxSpec s = fx_spec(300, 1, 28, 28);
    s.images_float = 1;
    fq_spec_file(path, s);
}
static inline void fq_missing_mean(const char *path)
{
    FxSpec s = fx_spec(300, 1, 28, 28);
    s.no_mean = 1;
    fq_spec_file(path, s);
}

typedef struct {
    const char *name;   /* file name stem */
    const char *fault;  /* in words, for the faults table */
    const char *needle; /* the refusal's line contains this */
    int is_new;         /* 1: the reader before the storage checks did not refuse it with exit 2 */
    void (*make)(const char *path);
} Fault;

static const Fault FAULTS[] = {
    {"declared-2e31", "2^31 samples declared, chunked, never written (3 KB file)", "never written", 1,
     fq_declared_2e31},
    {"truncated-1pct", "valid file truncated to 1 % of its size", "truncated", 1, fq_truncated_1},
    {"truncated-10pct", "valid file truncated to 10 %", "truncated", 1, fq_truncated_10},
    {"truncated-50pct", "valid file truncated to 50 % (in the images)", "truncated", 1, fq_truncated_50},
    {"truncated-99pct", "valid file truncated to 99 % (in the labels)", "truncated", 1, fq_truncated_99},
    {"past-eof", "contiguous images past the end of the file (truncated, superblock patched)", "past the end", 1,
     fq_past_eof},
    {"contiguous-unwritten", "contiguous images declared, never written", "never written", 1,
     fq_contiguous_unwritten},
    {"chunks-missing", "chunked images, 1 of 10 chunks written", "not completely written", 1, fq_chunks_missing},
    {"labels-unwritten", "chunked labels, never written", "not completely written", 1, fq_labels_unwritten},
    {"huge-hw", "sample of 1 x 65536 x 65536 (4 GiB)", "MiB a sample may have", 1, fq_huge_hw},
    {"huge-chunk", "chunks of 128 MiB", "chunks of more than 64 MiB", 1, fq_huge_chunk},
    {"split-is-dataset", "/train is a dataset, not a group", "not a group", 1, fq_split_is_dataset},
    {"classes-float", "attribute classes = 10.5 (float)", "must be an integer", 1, fq_classes_float},
    {"std-1e300", "attribute std = 1e300 (float64, beyond float)", "std", 0, fq_std_huge},
    {"mean-nan", "attribute mean = NaN", "mean = nan", 0, fq_mean_nan},
    {"zero-samples", "0 samples", "no samples", 0, fq_zero_samples},
    {"label-ge-classes", "label 10 with classes = 10", "out of range", 0, fq_label_ge_classes},
    {"count-mismatch", "300 images, 299 labels", "299", 0, fq_count_mismatch},
    {"float-images", "images stored as float32", "uint8", 0, fq_float_images},
    {"missing-mean", "root attribute mean missing", "'mean'", 0, fq_missing_mean},
};
#define N_FAULTS (sizeof FAULTS / sizeof FAULTS[0])

#endif
