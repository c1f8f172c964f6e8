/* --reader-cost (decode_cost.c) does work, not change data: a reader with
 * 3 rounds of DCT per sample hands out the same batches, bit for bit, as
 * one with none (augmented training split and plain test split, with and
 * without the prefetch thread, on shapes whose sides are and are not
 * multiples of 8); decode_cost_sample leaves its sample untouched; a cost
 * outside [0, READER_MAX_COST] is refused. That it costs time is measured
 * in bench/readers, not here. */
#include "reader/reader.h"

#include "core/error.h"
#include "fixtures.h"
#include "testing.h"

static char dir[512];

static ReaderConfig config(const char *path, const char *split, int prefetch, int cost)
{
    ReaderConfig c = {.path = path, .split = split, .seed = 31, .global_batch = 12, .rank = 1, .world = 2,
                      .shuffle = !strcmp(split, "train"), .drop_last = !strcmp(split, "train"),
                      .prefetch = prefetch, .augment = "crop:2,flip", .decode_cost = cost};
    return c;
}

/* Steps of the two readers, compared value by value (as bytes). */
static void check_same_batches(const char *path, const char *split, int prefetch)
{
    Reader *a = NULL, *b = NULL;
    ReaderConfig ca = config(path, split, prefetch, 0), cb = config(path, split, prefetch, 3);
    EXPECT(reader_open(&ca, &a) == BASIN_OK, "%s: open without cost", split);
    EXPECT(reader_open(&cb, &b) == BASIN_OK, "%s: open with cost 3", split);
    if (!a || !b) goto out;
    const DatasetInfo *info = reader_info(a);
    size_t per = (size_t)info->c * (size_t)info->h * (size_t)info->w;
    size_t steps = 2 * reader_steps_per_epoch(a) + 1; /* into a third epoch */
    for (size_t s = 0; s < steps; s++) {
        Batch x, y;
        int ra = reader_next(a, &x), rb = reader_next(b, &y);
        EXPECT(ra == BASIN_OK && rb == BASIN_OK, "%s step %zu: reads %d %d", split, s, ra, rb);
        if (ra || rb) break;
        EXPECT(x.n == y.n, "%s step %zu: %zu and %zu samples", split, s, x.n, y.n);
        if (x.n != y.n) break;
        EXPECT(!memcmp(x.images, y.images, x.n * per * sizeof(float)), "%s step %zu (prefetch %d): images differ",
               split, s, prefetch);
        EXPECT(!memcmp(x.labels, y.labels, x.n * sizeof(int32_t)), "%s step %zu: labels differ", split, s);
        EXPECT(!memcmp(x.index, y.index, x.n * sizeof(uint64_t)), "%s step %zu: indices differ", split, s);
    }
out:
    reader_close(a);
    reader_close(b);
}

static void check_sample_untouched(void)
{
    DatasetInfo info = {.count = 1, .c = 3, .h = 13, .w = 9, .classes = 2};
    size_t n = 3 * 13 * 9;
    float *img = malloc(n * sizeof *img), *copy = malloc(n * sizeof *copy);
    for (size_t i = 0; i < n; i++) img[i] = (float)((i * 37) % 101) / 7.0f - 5.0f;
    memcpy(copy, img, n * sizeof *img);
    decode_cost_sample(&info, 5, img);
    EXPECT(!memcmp(img, copy, n * sizeof *img), "decode_cost_sample changed its sample");
    free(img);
    free(copy);
}

static void check_refused(const char *path)
{
    for (int cost = -1; cost <= READER_MAX_COST + 1; cost += READER_MAX_COST + 2) {
        ReaderConfig c = config(path, "train", 0, cost);
        Reader *r = NULL;
        FxCapture cap;
        fx_capture_begin(&cap, dir);
        int rc = reader_open(&c, &r);
        int lines = 0;
        char *err = fx_capture_end(&cap, &lines);
        EXPECT(rc == BASIN_ERR_USAGE && !r, "cost %d: open returned %d", cost, rc);
        EXPECT(lines == 1 && err && strstr(err, "not in [0, 1000]"), "cost %d: said '%s'", cost, err ? err : "");
        free(err);
        reader_close(r);
    }
}

int main(void)
{
    fx_make_tmpdir(dir, sizeof dir, "cost");
    /* 1x28x28 (Fashion-MNIST: the last blocks padded) and 3x16x8 (whole blocks). */
    static const int shapes[2][3] = {{1, 28, 28}, {3, 16, 8}};
    for (int k = 0; k < 2; k++) {
        char path[600];
        snprintf(path, sizeof path, "%s/data%d.h5", dir, k);
        FxSpec s = fx_spec(60, shapes[k][0], shapes[k][1], shapes[k][2]);
        fx_write_dataset_file(path, &s);
        FxSpec t = fx_spec(25, shapes[k][0], shapes[k][1], shapes[k][2]);
        t.split = "test", t.append = 1;
        fx_write_dataset_file(path, &t);
        for (int prefetch = 0; prefetch <= 1; prefetch++) {
            check_same_batches(path, "train", prefetch);
            check_same_batches(path, "test", prefetch);
        }
        if (k == 0) check_refused(path);
    }
    check_sample_untouched();
    fx_remove_tree(dir);
    return test_finish("test_reader_cost");
}
