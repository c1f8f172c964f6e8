/* Import of the real Fashion-MNIST files from Debian's dataset-fashion-mnist
 * package (skipped when it is not installed): 60000 + 10000 samples, 6000
 * and 1000 of each class, and the well-known pixel statistics. */
#include "reader/reader.h"

#include "core/error.h"
#include "fixtures.h"
#include "testing.h"

#define SOURCE "/usr/share/datasets/fashion-mnist"

static void check_split(const char *out, const char *split, size_t want_n)
{
    Dataset *d = NULL;
    int rc = dataset_open(out, split, 0, &d);
    EXPECT(rc == BASIN_OK, "dataset_open(%s) returned %d", split, rc);
    if (!d) return;
    const DatasetInfo *info = dataset_info(d);
    EXPECT(info->count == want_n, "%s: %zu samples, want %zu", split, info->count, want_n);
    EXPECT(info->c == 1 && info->h == 28 && info->w == 28 && info->classes == 10, "%s: [%d, %d, %d], %d classes",
           split, info->c, info->h, info->w, info->classes);
    /* Labels through dataset_read, in batches of 1000 across the whole split. */
    enum { B = 1000 };
    static float img[B * 784];
    int32_t lab[B];
    uint64_t idx[B];
    size_t hist[10] = {0}, bad = 0;
    for (size_t first = 0; first < info->count; first += B) {
        size_t n = info->count - first < B ? info->count - first : B;
        for (size_t i = 0; i < n; i++) idx[i] = first + i;
        if ((rc = dataset_read(d, idx, n, img, lab))) break;
        for (size_t i = 0; i < n; i++) {
            if (lab[i] < 0 || lab[i] >= 10) bad++;
            else hist[lab[i]]++;
        }
    }
    EXPECT(rc == BASIN_OK && bad == 0, "%s: read rc %d, %zu labels out of range", split, rc, bad);
    for (int c = 0; c < 10; c++)
        EXPECT(hist[c] == want_n / 10, "%s: class %d has %zu samples, want %zu", split, c, hist[c], want_n / 10);
    dataset_close(d);
}

int main(void)
{
    char probe[256];
    snprintf(probe, sizeof probe, "%s/train-images-idx3-ubyte.gz", SOURCE);
    if (access(probe, R_OK) != 0) TEST_SKIP("%s not present (apt-get install dataset-fashion-mnist)", probe);

    char dir[512], out[600];
    fx_make_tmpdir(dir, sizeof dir, "import-real");
    snprintf(out, sizeof out, "%s/fashion-mnist.h5", dir);
    int rc = import_fashion_mnist(SOURCE, out);
    EXPECT(rc == BASIN_OK, "import of %s returned %d", SOURCE, rc);
    if (rc == BASIN_OK) {
        check_split(out, "train", 60000);
        check_split(out, "test", 10000);
        Dataset *d = NULL;
        if (dataset_open(out, "train", 0, &d) == BASIN_OK) {
            /* Published statistics of the training set: mean 0.2860, std 0.3530. */
            EXPECT_NEAR(dataset_info(d)->mean[0], 0.2860, 1e-4, 0, "training pixel mean");
            EXPECT_NEAR(dataset_info(d)->std[0], 0.3530, 1e-4, 0, "training pixel std");
            dataset_close(d);
        }
    }
    fx_remove_tree(dir);
    return test_finish("test_reader_import_real");
}
