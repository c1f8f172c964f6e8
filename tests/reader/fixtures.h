/* Fixtures of the reader tests: a private temp folder, small dataset files
 * whose every byte is known, gzip IDX files, and capture of stderr. */
#ifndef BASIN_TEST_READER_FIXTURES_H
#define BASIN_TEST_READER_FIXTURES_H

#include <dirent.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* ---- temp folder ------------------------------------------------------------- */

static inline void fx_make_tmpdir(char *dir, size_t size, const char *tag)
{
    const char *base = getenv("TMPDIR");
    snprintf(dir, size, "%s/basin-%s-XXXXXX", base && *base ? base : "/tmp", tag);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
}

/* rm -r of a folder this test made (no links inside). */
static inline void fx_remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path) continue;
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
            fx_remove_tree(path);
        else
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

/* Number of entries of dir whose name contains `part`. */
static inline int fx_count_entries(const char *dir, const char *part)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strstr(e->d_name, part)) n++;
    closedir(d);
    return n;
}

/* Whole file into a malloc'd buffer; NULL if unreadable. */
static inline uint8_t *fx_slurp(const char *path, size_t *bytes)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *bytes = (size_t)n;
    return buf;
}

static inline void fx_write_bytes(const char *path, const void *data, size_t bytes)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, bytes, f) != bytes) {
        perror(path);
        exit(1);
    }
    fclose(f);
}

/* ---- stderr capture: how many lines a call printed, and what ---------------- */

typedef struct {
    int saved_fd;
    char path[4200];
} FxCapture;

static inline void fx_capture_begin(FxCapture *c, const char *dir)
{
    snprintf(c->path, sizeof c->path, "%s/stderr.txt", dir);
    fflush(stderr);
    c->saved_fd = dup(2);
    int fd = open(c->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (c->saved_fd < 0 || fd < 0) {
        perror("capture stderr");
        exit(1);
    }
    dup2(fd, 2);
    close(fd);
}

/* Restores stderr; returns the captured text (malloc'd) and its line count. */
static inline char *fx_capture_end(FxCapture *c, int *lines)
{
    fflush(stderr);
    dup2(c->saved_fd, 2);
    close(c->saved_fd);
    size_t n = 0;
    uint8_t *raw = fx_slurp(c->path, &n);
    char *text = malloc(n + 1);
    if (raw) memcpy(text, raw, n);
    text[n] = '\0';
    free(raw);
    *lines = 0;
    for (size_t i = 0; i < n; i++) *lines += text[i] == '\n';
    unlink(c->path);
    return text;
}

/* ---- dataset files ------------------------------------------------------------- */

/* Byte j of sample i: the first two bytes spell the index, so any sample
 * read back names itself; the rest vary with both. */
static inline uint8_t fx_pixel(uint64_t i, size_t j)
{
    if (j == 0) return (uint8_t)(i & 255);
    if (j == 1) return (uint8_t)((i >> 8) & 255);
    return (uint8_t)((i * 131 + j * 29 + 7) & 255);
}

static inline uint8_t fx_label(uint64_t i, int classes)
{
    return (uint8_t)((i * 7 + 3) % (uint64_t)classes);
}

typedef struct {
    size_t n_images, n_labels;
    int c, h, w;
    int classes;
    float mean, std;
    int images_float;     /* store images as float32 */
    int images_rank;      /* 4 unless testing a wrong rank (3: drop C) */
    int no_labels;        /* leave out /split/labels */
    int no_mean;          /* leave out the mean attribute */
    long bad_label_at;    /* >= 0: this sample's label is `classes` */
    const char *split;
    int images_chunked;   /* chunked, deflate-compressed images (read through HDF5) */
    const float *mean_c;  /* non-NULL: mean and std as arrays of n_stats values */
    const float *std_c;
    int n_stats;
    int append;           /* add this split to an existing file (no attributes) */
} FxSpec;

static inline FxSpec fx_spec(size_t n, int c, int h, int w)
{
    FxSpec s = {n, n, c, h, w, 10, 0.25f, 0.5f, 0, 4, 0, 0, -1, "train", 0, NULL, NULL, 0, 0};
    return s;
}

static inline void fx_check(herr_t e, const char *what)
{
    if (e < 0) {
        fprintf(stderr, "fixture: %s failed\n", what);
        exit(1);
    }
}

static inline void fx_attr(hid_t file, const char *name, hid_t type, const void *v)
{
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(file, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
    fx_check(a, "H5Acreate2");
    fx_check(H5Awrite(a, type, v), "H5Awrite");
    H5Aclose(a);
    H5Sclose(sp);
}

/* A 1-D float attribute of n values. */
static inline void fx_attr_array(hid_t file, const char *name, const float *v, int n)
{
    hsize_t dims = (hsize_t)n;
    hid_t sp = H5Screate_simple(1, &dims, NULL);
    hid_t a = H5Acreate2(file, name, H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    fx_check(a, "H5Acreate2");
    fx_check(H5Awrite(a, H5T_NATIVE_FLOAT, v), "H5Awrite");
    H5Aclose(a);
    H5Sclose(sp);
}

static inline void fx_write_dataset_file(const char *path, const FxSpec *s)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    size_t per = (size_t)s->c * s->h * s->w;
    hid_t f = s->append ? H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT) : H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    fx_check(f, "H5Fcreate");
    char name[128];
    snprintf(name, sizeof name, "/%s", s->split);
    hid_t g = H5Gcreate2(f, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    fx_check(g, "H5Gcreate2");
    H5Gclose(g);

    uint8_t *img = malloc(s->n_images * per + 1);
    for (size_t i = 0; i < s->n_images; i++)
        for (size_t j = 0; j < per; j++) img[i * per + j] = fx_pixel(i, j);
    hsize_t dims4[4] = {s->n_images, (hsize_t)s->c, (hsize_t)s->h, (hsize_t)s->w};
    hsize_t dims3[3] = {s->n_images, (hsize_t)s->h, (hsize_t)s->w * s->c};
    hid_t sp = s->images_rank == 3 ? H5Screate_simple(3, dims3, NULL) : H5Screate_simple(4, dims4, NULL);
    snprintf(name, sizeof name, "/%s/images", s->split);
    hid_t d;
    if (s->images_float) {
        float *fimg = malloc(s->n_images * per * sizeof(float) + 1);
        for (size_t k = 0; k < s->n_images * per; k++) fimg[k] = img[k] / 255.0f;
        d = H5Dcreate2(f, name, H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        fx_check(d, "H5Dcreate2(images)");
        fx_check(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, fimg), "H5Dwrite(images)");
        free(fimg);
    } else {
        hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
        if (s->images_chunked) {
            hsize_t chunk[4] = {s->n_images < 64 ? s->n_images : 64, (hsize_t)s->c, (hsize_t)s->h, (hsize_t)s->w};
            fx_check(H5Pset_chunk(dcpl, 4, chunk), "H5Pset_chunk");
            fx_check(H5Pset_deflate(dcpl, 1), "H5Pset_deflate");
        }
        d = H5Dcreate2(f, name, H5T_STD_U8LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
        H5Pclose(dcpl);
        fx_check(d, "H5Dcreate2(images)");
        fx_check(H5Dwrite(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, img), "H5Dwrite(images)");
    }
    H5Dclose(d);
    H5Sclose(sp);
    free(img);

    if (!s->no_labels) {
        uint8_t *lab = malloc(s->n_labels + 1);
        for (size_t i = 0; i < s->n_labels; i++) lab[i] = fx_label(i, s->classes);
        if (s->bad_label_at >= 0) lab[s->bad_label_at] = (uint8_t)s->classes;
        hsize_t ld = s->n_labels;
        sp = H5Screate_simple(1, &ld, NULL);
        snprintf(name, sizeof name, "/%s/labels", s->split);
        d = H5Dcreate2(f, name, H5T_STD_U8LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        fx_check(d, "H5Dcreate2(labels)");
        fx_check(H5Dwrite(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, lab), "H5Dwrite(labels)");
        H5Dclose(d);
        H5Sclose(sp);
        free(lab);
    }
    if (s->append) {
        fx_check(H5Fclose(f), "H5Fclose");
        return;
    }
    fx_attr(f, "classes", H5T_NATIVE_INT, &s->classes);
    if (s->mean_c) {
        fx_attr_array(f, "mean", s->mean_c, s->n_stats);
        fx_attr_array(f, "std", s->std_c, s->n_stats);
    } else {
        if (!s->no_mean) fx_attr(f, "mean", H5T_NATIVE_FLOAT, &s->mean);
        fx_attr(f, "std", H5T_NATIVE_FLOAT, &s->std);
    }
    fx_check(H5Fclose(f), "H5Fclose");
}

/* ---- gzip IDX files ------------------------------------------------------------ */

static inline void fx_put_be32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)(v >> 24);
    b[1] = (uint8_t)(v >> 16);
    b[2] = (uint8_t)(v >> 8);
    b[3] = (uint8_t)v;
}

/* dims: 1 for labels (n), 3 for images (n, rows, cols). */
static inline void fx_write_idx_gz(const char *path, uint32_t magic, int ndims, const uint32_t *dims, const uint8_t *data,
                            size_t bytes)
{
    gzFile f = gzopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    uint8_t head[16];
    fx_put_be32(head, magic);
    for (int i = 0; i < ndims; i++) fx_put_be32(head + 4 + 4 * i, dims[i]);
    if (gzwrite(f, head, (unsigned)(4 + 4 * ndims)) <= 0 || (bytes && gzwrite(f, data, (unsigned)bytes) <= 0)) {
        fprintf(stderr, "fixture: gzwrite(%s) failed\n", path);
        exit(1);
    }
    gzclose(f);
}

#endif
