/* Synthetic data ("synthetic:CxHxW:CLASSES[:N]") through the Dataset and
 * Reader calls: the spec's bounds and refusals (one line each), the split
 * sizes, samples recomputed from the formula of synthetic.c, the same
 * samples on every open and at 1, 2 and 3 ranks, values of mean 0 and std 1,
 * labels in range, and augmentation padding with 0. */
#include "reader/reader.h"

#include "core/error.h"
#include "core/rng.h"
#include "fixtures.h"
#include "testing.h"

static char dir[512];

/* Sample i of a split from the formula, written out here. */
static void reference(int c, int h, int w, int classes, int test, uint64_t i, float *img, int32_t *label)
{
    size_t values = (size_t)c * h * w;
    uint64_t blocks = 1 + (values + 3) / 4, stream = ((uint64_t)RNG_STREAM_SYNTHETIC << 32) | (uint64_t)test;
    Philox4x32 r = philox4x32(0x5EEDDA7A5EEDDA7Aull, stream, i * blocks);
    *label = (int32_t)(((uint64_t)r.v[0] * (uint64_t)classes) >> 32);
    for (size_t k = 0; k < values; k++) {
        r = philox4x32(0x5EEDDA7A5EEDDA7Aull, stream, i * blocks + 1 + k / 4);
        img[k] = (float)(r.v[k % 4] >> 8) * (3.4641016151377546f / 16777216.0f) - 1.7320508075688772f;
    }
}

static int open_captured(const char *spec, const char *split, Dataset **d, char *msg, size_t len, int *lines)
{
    FxCapture cap;
    fx_capture_begin(&cap, dir);
    int rc = dataset_open(spec, split, 0, d);
    char *text = fx_capture_end(&cap, lines);
    snprintf(msg, len, "%s", text);
    free(text);
    return rc;
}

static void check_specs(void)
{
    static const struct { const char *spec; int c, h, w, classes; size_t train, test; } good[] = {
        {"synthetic:3x224x224:1000", 3, 224, 224, 1000, 1281167, 50000},
        {"synthetic:1x28x28:10:600", 1, 28, 28, 10, 600, 600},
        {"synthetic:3x32x32:10:100000", 3, 32, 32, 10, 100000, 50000},
        {"synthetic:64x1x1:1000000:1", 64, 1, 1, 1000000, 1, 1},
        {"synthetic:1x4096x4096:2:7", 1, 4096, 4096, 2, 7, 7}, /* 64 MiB of floats: the most a sample may have */
    };
    char msg[1024];
    int lines;
    for (size_t k = 0; k < sizeof good / sizeof good[0]; k++) {
        for (int t = 0; t < 2; t++) {
            Dataset *d = NULL;
            int rc = open_captured(good[k].spec, t ? "test" : "train", &d, msg, sizeof msg, &lines);
            EXPECT(rc == BASIN_OK && d, "%s refused: %s", good[k].spec, msg);
            if (!d) continue;
            const DatasetInfo *i = dataset_info(d);
            EXPECT(i->synthetic && i->c == good[k].c && i->h == good[k].h && i->w == good[k].w &&
                       i->classes == good[k].classes && i->count == (t ? good[k].test : good[k].train),
                   "%s %s: %zu of [%d, %d, %d], %d classes", good[k].spec, t ? "test" : "train", i->count, i->c, i->h,
                   i->w, i->classes);
            for (int c = 0; c < i->c; c++) EXPECT(i->mean[c] == 0.0f && i->std[c] == 1.0f, "normalisation");
            dataset_close(d);
        }
        EXPECT(dataset_has_split(good[k].spec, "train") && dataset_has_split(good[k].spec, "test") &&
                   !dataset_has_split(good[k].spec, "val"), "%s: splits", good[k].spec);
    }
    static const struct { const char *spec, *needle; } bad[] = {
        {"synthetic:0x32x32:10", "0 channels"},
        {"synthetic:3x0x32:10", "[1, 65536]"},
        {"synthetic:3x32x0:10", "[1, 65536]"},
        {"synthetic:3x32x32:0", "0 classes"},
        {"synthetic:3x32x32:10:0", "0 samples"},
        {"synthetic:65x2x2:10", "65 channels"},
        {"synthetic:3x100000x1:10", "[1, 65536]"},
        {"synthetic:3x4096x4096:10", "64 MiB"},
        {"synthetic:2x4096x4097:10", "64 MiB"},
        {"synthetic:3x32x32:1000001", "1000001 classes"},
        {"synthetic:3x32x32:10:100000001", "100000001 samples"},
        {"synthetic:3x32x32:10:99999999999999999999999", "expected synthetic:CxHxW"},
        {"synthetic:3x32:10", "expected synthetic:CxHxW"},
        {"synthetic:3x32x32", "expected synthetic:CxHxW"},
        {"synthetic:3x32x32:10:", "expected synthetic:CxHxW"},
        {"synthetic:3x32x32:10:5:1", "expected synthetic:CxHxW"},
        {"synthetic:-3x32x32:10", "expected synthetic:CxHxW"},
        {"synthetic:3x32x32:ten", "expected synthetic:CxHxW"},
        {"synthetic:", "expected synthetic:CxHxW"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        Dataset *d = NULL;
        int rc = open_captured(bad[k].spec, "train", &d, msg, sizeof msg, &lines);
        EXPECT(rc == BASIN_ERR_USAGE && !d && lines == 1 && strstr(msg, bad[k].spec) && strstr(msg, bad[k].needle),
               "%s: rc %d, %d lines: %s", bad[k].spec, rc, lines, msg);
        dataset_close(d);
    }
    Dataset *d = NULL;
    int rc = open_captured("synthetic:3x8x8:10", "val", &d, msg, sizeof msg, &lines);
    EXPECT(rc == BASIN_ERR_USAGE && lines == 1 && strstr(msg, "train and test"), "split val: %s", msg);
}

static void check_samples(void)
{
    enum { C = 3, H = 6, W = 5, PER = C * H * W, K = 10 };
    const char *spec = "synthetic:3x6x5:7:300";
    for (int t = 0; t < 2; t++) {
        Dataset *a = NULL, *b = NULL;
        if (dataset_open(spec, t ? "test" : "train", 0, &a) || dataset_open(spec, t ? "test" : "train", 0, &b)) {
            EXPECT(0, "open %s", spec);
            dataset_close(a);
            return;
        }
        uint64_t idx[K] = {299, 0, 17, 17, 150, 3, 298, 1, 2, 200};
        float x[K * PER], y[K * PER], want[PER];
        int32_t lx[K], ly[K], lw;
        EXPECT(dataset_read(a, idx, K, x, lx) == BASIN_OK, "read");
        uint64_t rev[K];
        for (int k = 0; k < K; k++) rev[k] = idx[K - 1 - k];
        EXPECT(dataset_read(b, rev, K, y, ly) == BASIN_OK, "read");
        size_t bad = 0;
        for (int k = 0; k < K; k++) {
            reference(C, H, W, 7, t, idx[k], want, &lw);
            bad += lx[k] != lw || memcmp(x + k * PER, want, sizeof want) != 0;
            bad += ly[K - 1 - k] != lx[k] || memcmp(y + (K - 1 - k) * PER, x + k * PER, sizeof want) != 0;
        }
        EXPECT(bad == 0, "%s: %zu samples differ from the formula or between reads", t ? "test" : "train", bad);
        uint64_t out = 300;
        if (t == 0) {
            FxCapture cap;
            fx_capture_begin(&cap, dir);
            int rc = dataset_read(a, &out, 1, x, lx);
            int lines;
            free(fx_capture_end(&cap, &lines));
            EXPECT(rc != BASIN_OK, "sample 300 of 300 read");
        }
        dataset_close(a);
        dataset_close(b);
    }
    /* Train and test are different samples; statistics of many values. */
    Dataset *tr = NULL, *te = NULL;
    if (dataset_open("synthetic:3x32x32:10:2000", "train", 0, &tr) ||
        dataset_open("synthetic:3x32x32:10:2000", "test", 0, &te)) {
        EXPECT(0, "open");
        dataset_close(tr);
        return;
    }
    enum { M = 200, P = 3 * 32 * 32 };
    float *x = malloc((size_t)M * P * sizeof *x), *y = malloc((size_t)M * P * sizeof *y);
    int32_t lx[M], ly[M];
    uint64_t idx[M];
    for (int k = 0; k < M; k++) idx[k] = (uint64_t)k * 7;
    dataset_read(tr, idx, M, x, lx);
    dataset_read(te, idx, M, y, ly);
    EXPECT(memcmp(x, y, (size_t)M * P * sizeof *x) != 0, "train and test samples are the same");
    double sum = 0, sq = 0, lo = 1e9, hi = -1e9;
    size_t hist[10] = {0}, out_of_range = 0;
    for (size_t k = 0; k < (size_t)M * P; k++) {
        sum += x[k], sq += (double)x[k] * x[k];
        lo = x[k] < lo ? x[k] : lo, hi = x[k] > hi ? x[k] : hi;
    }
    for (int k = 0; k < M; k++) {
        if (lx[k] < 0 || lx[k] >= 10) out_of_range++;
        else hist[lx[k]]++;
    }
    double n = (double)M * P, mean = sum / n, std = sqrt(sq / n - mean * mean);
    EXPECT(fabs(mean) < 0.01 && fabs(std - 1.0) < 0.01, "values: mean %.4f std %.4f, want 0 and 1", mean, std);
    EXPECT(lo >= -1.7320509 && hi < 1.7320509 && lo < -1.7 && hi > 1.7, "values in [%.4f, %.4f]", lo, hi);
    EXPECT(out_of_range == 0, "%zu labels out of range", out_of_range);
    for (int c = 0; c < 10; c++) EXPECT(hist[c] > 5, "label %d drawn %zu times in %d", c, hist[c], M);
    free(x), free(y);
    dataset_close(tr);
    dataset_close(te);
}

/* Through the Reader at 1, 2 and 3 ranks, with augmentation: each sample of
 * each epoch is the same image everywhere; padding is 0. */
static void check_ranks(void)
{
    enum { N = 48, PER = 2 * 4 * 4, EPOCHS = 2 };
    const char *spec = "synthetic:2x4x4:5:48";
    float *ref = calloc((size_t)EPOCHS * N * PER, sizeof *ref), *got = calloc((size_t)EPOCHS * N * PER, sizeof *got);
    int32_t labels[EPOCHS * N];
    size_t zeros = 0;
    for (int world = 1; world <= 3; world++) {
        Reader *r[3] = {0};
        int ok = 1;
        for (int k = 0; k < world; k++) {
            ReaderConfig c = {.path = spec, .split = "train", .seed = 5, .global_batch = 12, .rank = k, .world = world,
                              .shuffle = 1, .drop_last = 1, .prefetch = k % 2, .augment = "crop:1,flip"};
            if (reader_open(&c, &r[k])) ok = 0;
        }
        EXPECT(ok, "W=%d: reader_open", world);
        size_t seen = 0, bad_label = 0;
        for (int e = 0; ok && e < EPOCHS; e++) {
            for (size_t s = 0; s < reader_steps_per_epoch(r[0]); s++) {
                for (int k = 0; k < world; k++) {
                    Batch b;
                    if (reader_next(r[k], &b)) {
                        ok = 0;
                        break;
                    }
                    for (size_t j = 0; j < b.n; j++, seen++) {
                        size_t at = (size_t)e * N + b.index[j];
                        memcpy((world == 1 ? ref : got) + at * PER, b.images + j * PER, PER * sizeof(float));
                        if (world == 1) labels[at] = b.labels[j];
                        else bad_label += labels[at] != b.labels[j];
                        if (world == 1)
                            for (int v = 0; v < PER; v++) zeros += b.images[j * PER + v] == 0.0f;
                    }
                }
            }
        }
        EXPECT(ok && seen == (size_t)EPOCHS * N, "W=%d: %zu samples handed out", world, seen);
        if (world > 1)
            EXPECT(bad_label == 0 && !memcmp(ref, got, (size_t)EPOCHS * N * PER * sizeof *ref),
                   "W=%d: samples differ from W=1", world);
        for (int k = 0; k < world; k++) reader_close(r[k]);
    }
    /* Generated values are never exactly 0 in practice; crop padding is. */
    EXPECT(zeros > 0, "no zero padding in %d augmented samples", EPOCHS * N);
    free(ref), free(got);
}

int main(void)
{
    fx_make_tmpdir(dir, sizeof dir, "synthetic");
    check_specs();
    check_samples();
    check_ranks();
    fx_remove_tree(dir);
    return test_finish("test_reader_synthetic");
}
