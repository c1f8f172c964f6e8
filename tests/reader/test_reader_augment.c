/* Augmentation and per-channel normalisation through the Reader API.
 *
 * Every augmented sample is compared, value by value, with a reference
 * written here from the formula of reader.h: the crop offsets and the flip
 * drawn from Philox at (seed, epoch, sample index), the padded image built
 * explicitly, zero pixels as padding. Then: the same sample gets the same
 * image at 1, 2 and 3 ranks; the test split and "none" are never augmented;
 * a seek (a resume) gives the batches of an uninterrupted run; and the
 * mean/std attributes as arrays of one value per channel, or as the old
 * single numbers, with their refusals. */
#include "reader/reader.h"

#include "core/error.h"
#include "core/rng.h"
#include "fixtures.h"
#include "testing.h"

enum { N = 60, NT = 20, C = 3, H = 5, W = 7, PLANE = H * W, PER = C * PLANE };
static const float MEAN[C] = {0.1f, 0.5f, 0.9f}, STD[C] = {0.2f, 0.25f, 0.3f};
static const uint64_t SEED = 977;

static char dir[512], path[600];

/* The normalised value of byte j of sample i (fixtures.h). */
static float pixel(uint64_t i, int c, int y, int x)
{
    uint8_t b = fx_pixel(i, (size_t)c * PLANE + (size_t)y * W + (size_t)x);
    return ((float)b / 255.0f - MEAN[c]) / STD[c];
}

/* What the reader must hand out for training sample i in epoch e. */
static void reference(int P, int flip_on, uint64_t e, uint64_t i, float *out, int *dy_out, int *flip_out)
{
    uint64_t key = SEED ^ ((e >> 32) * 0x9E3779B97F4A7C15ull);
    Philox4x32 r = philox4x32(key, ((uint64_t)RNG_STREAM_AUGMENT << 32) | (uint32_t)e, i);
    uint64_t span = 2 * (uint64_t)P + 1;
    int dy = (int)(((uint64_t)r.v[0] * span) >> 32), dx = (int)(((uint64_t)r.v[1] * span) >> 32);
    int flip = flip_on ? (int)(r.v[2] >> 31) : 0;
    for (int c = 0; c < C; c++) {
        for (int y = 0; y < H; y++) {
            for (int x = 0; x < W; x++) {
                /* Position in the padded image, (H + 2P) x (W + 2P). */
                int py = y + dy, px = (flip ? W - 1 - x : x) + dx;
                int inside = py >= P && py < P + H && px >= P && px < P + W;
                out[(size_t)c * PLANE + (size_t)y * W + (size_t)x] =
                    inside ? pixel(i, c, py - P, px - P) : (0.0f - MEAN[c]) / STD[c];
            }
        }
    }
    if (dy_out) *dy_out = dy;
    if (flip_out) *flip_out = flip;
}

static ReaderConfig config(const char *split, size_t batch, int rank, int world, int prefetch, const char *augment)
{
    ReaderConfig c = {.path = path, .split = split, .seed = SEED, .global_batch = batch, .rank = rank,
                      .world = world, .shuffle = 1, .drop_last = 1, .prefetch = prefetch, .augment = augment};
    return c;
}

static void check_parse(void)
{
    static const struct { const char *spec, *text; } good[] = {
        {"none", "none"}, {"crop:4", "crop:4"}, {"flip", "flip"}, {"crop:4,flip", "crop:4,flip"},
        {"flip,crop:4", "crop:4,flip"}, {"crop:256", "crop:256"}, {"crop:1,flip", "crop:1,flip"},
    };
    char why[256], text[64];
    for (size_t k = 0; k < sizeof good / sizeof good[0]; k++) {
        Augment a;
        int rc = augment_parse(good[k].spec, &a, why, sizeof why);
        EXPECT(rc == 0, "'%s' refused: %s", good[k].spec, why);
        augment_text(&a, text, sizeof text);
        EXPECT(!strcmp(text, good[k].text), "'%s' reads as '%s', want '%s'", good[k].spec, text, good[k].text);
    }
    Augment a = {7, 1};
    EXPECT(augment_parse(NULL, &a, why, sizeof why) == 0 && !a.crop && !a.flip, "NULL is none");
    static const char *bad[] = {"", "crop", "crop:", "crop:0", "crop:-1", "crop:+3", "crop:257", "crop:4x",
                                "crop: 4", "flip,flip", "crop:2,crop:3", "none,flip", "flip,", ",flip",
                                "crop:4,,flip", "mirror", "Flip", "crop:99999999999999999999"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        why[0] = '\0';
        EXPECT(augment_parse(bad[k], &a, why, sizeof why) == -1 && why[0], "'%s' accepted", bad[k]);
    }
}

/* One reader over `epochs` epochs against the reference; counts what was
 * drawn so that a reader that never crops or flips fails. */
static void check_against_reference(const char *spec, int P, int flip_on, int prefetch)
{
    Reader *r = NULL;
    ReaderConfig cfg = config("train", 8, 0, 1, prefetch, spec);
    int rc = reader_open(&cfg, &r);
    EXPECT(rc == BASIN_OK, "%s: reader_open returned %d", spec, rc);
    if (rc) return;
    size_t steps = reader_steps_per_epoch(r), bad = 0, flips = 0, total = 0;
    size_t dys[2 * 9 + 1] = {0};
    float want[PER];
    for (int e = 0; e < 3; e++) {
        for (size_t s = 0; s < steps; s++) {
            Batch b;
            if ((rc = reader_next(r, &b))) break;
            for (size_t k = 0; k < b.n; k++) {
                int dy, flip;
                reference(P, flip_on, b.epoch, b.index[k], want, &dy, &flip);
                dys[dy]++, flips += (size_t)flip, total++;
                if (memcmp(b.images + k * PER, want, sizeof want) != 0 && bad++ < 3) {
                    for (int j = 0; j < PER; j++)
                        if (b.images[k * PER + j] != want[j]) {
                            fprintf(stderr, "%s: epoch %llu sample %llu value %d: %.9g, reference %.9g\n", spec,
                                    (unsigned long long)b.epoch, (unsigned long long)b.index[k], j,
                                    (double)b.images[k * PER + j], (double)want[j]);
                            break;
                        }
                }
                EXPECT(b.labels[k] == fx_label(b.index[k], 10), "%s: label of sample %llu", spec,
                       (unsigned long long)b.index[k]);
            }
        }
    }
    EXPECT(rc == BASIN_OK, "%s: reader_next returned %d", spec, rc);
    EXPECT(bad == 0, "%s (prefetch %d): %zu of %zu samples differ from the reference", spec, prefetch, bad, total);
    if (flip_on) EXPECT(flips > total / 4 && flips < 3 * total / 4, "%s: %zu flips in %zu samples", spec, flips, total);
    else EXPECT(flips == 0, "%s: flips without flip", spec);
    for (int v = 0; v <= 2 * P; v++) EXPECT(dys[v] > 0, "%s: crop offset %d never drawn in %zu samples", spec, v, total);
    reader_close(r);
}

/* The image each sample gets in each of `epochs` epochs at W ranks:
 * out[(e * N + i) * PER ...]. */
static void images_at_world(int world, const char *spec, int epochs, float *out, uint8_t *seen)
{
    Reader *r[3] = {0};
    memset(seen, 0, (size_t)epochs * N);
    for (int k = 0; k < world; k++) {
        ReaderConfig cfg = config("train", 12, k, world, k % 2, spec);
        int rc = reader_open(&cfg, &r[k]);
        EXPECT(rc == BASIN_OK, "W=%d rank %d: reader_open returned %d", world, k, rc);
        if (rc) goto done;
    }
    size_t steps = reader_steps_per_epoch(r[0]);
    for (int e = 0; e < epochs; e++) {
        for (size_t s = 0; s < steps; s++) {
            for (int k = 0; k < world; k++) {
                Batch b;
                int rc = reader_next(r[k], &b);
                EXPECT(rc == BASIN_OK && b.epoch == (uint64_t)e, "W=%d rank %d: batch %d/%zu", world, k, e, s);
                if (rc) goto done;
                for (size_t j = 0; j < b.n; j++) {
                    size_t at = (size_t)e * N + b.index[j];
                    seen[at]++;
                    memcpy(out + at * PER, b.images + j * PER, PER * sizeof *out);
                }
            }
        }
    }
done:
    for (int k = 0; k < world; k++) reader_close(r[k]);
}

static void check_rank_independence(void)
{
    enum { EPOCHS = 3 };
    float *one = malloc((size_t)EPOCHS * N * PER * sizeof *one), *many = malloc((size_t)EPOCHS * N * PER * sizeof *many);
    uint8_t seen1[EPOCHS * N], seen[EPOCHS * N];
    images_at_world(1, "crop:2,flip", EPOCHS, one, seen1);
    for (int world = 2; world <= 3; world++) {
        images_at_world(world, "crop:2,flip", EPOCHS, many, seen);
        size_t differ = 0, unseen = 0;
        for (size_t at = 0; at < (size_t)EPOCHS * N; at++) {
            if (seen[at] != seen1[at]) unseen++;
            else if (seen[at] && memcmp(one + at * PER, many + at * PER, PER * sizeof *one)) differ++;
        }
        EXPECT(unseen == 0, "W=%d: %zu (epoch, sample) pairs seen a different number of times than at W=1", world,
               unseen);
        EXPECT(differ == 0, "W=%d: %zu samples got another augmentation than at W=1", world, differ);
    }
    free(one), free(many);
}

/* The test split (and "none") hand out the samples as they are. */
static void check_not_augmented(void)
{
    float want[PER];
    const struct { const char *split, *spec; size_t n; } cases[] = {{"test", "crop:2,flip", NT}, {"train", "none", N}};
    for (size_t c = 0; c < 2; c++) {
        ReaderConfig cfg = config(cases[c].split, 5, 0, 1, 1, cases[c].spec);
        cfg.shuffle = 0, cfg.drop_last = 0;
        Reader *r = NULL;
        int rc = reader_open(&cfg, &r);
        EXPECT(rc == BASIN_OK, "%s: reader_open returned %d", cases[c].split, rc);
        if (rc) continue;
        size_t bad = 0, total = 0;
        for (int e = 0; e < 2; e++) {
            for (size_t s = 0; s < reader_steps_per_epoch(r); s++) {
                Batch b;
                if (reader_next(r, &b)) break;
                for (size_t k = 0; k < b.n; k++, total++) {
                    reference(0, 0, b.epoch, b.index[k], want, NULL, NULL);
                    bad += memcmp(b.images + k * PER, want, sizeof want) != 0;
                }
            }
        }
        EXPECT(total == 2 * cases[c].n && bad == 0, "%s with %s: %zu of %zu samples altered", cases[c].split,
               cases[c].spec, bad, total);
        reader_close(r);
    }
}

/* A reader sought to (epoch, step) -- a resume -- gives the batches of one
 * that got there step by step. */
static void check_seek(void)
{
    Reader *a = NULL, *b = NULL;
    ReaderConfig cfg = config("train", 8, 0, 1, 1, "crop:3,flip");
    if (reader_open(&cfg, &a) || reader_open(&cfg, &b)) {
        EXPECT(0, "reader_open failed");
        reader_close(a);
        return;
    }
    size_t steps = reader_steps_per_epoch(a);
    Batch x, y;
    for (size_t s = 0; s < steps + 3; s++) reader_next(a, &x); /* the next is epoch 1, step 3 */
    EXPECT(reader_seek(b, 1, 3) == BASIN_OK, "reader_seek");
    size_t bad = 0;
    for (int k = 0; k < 2 * (int)steps; k++) {
        if (reader_next(a, &x) || reader_next(b, &y)) {
            bad++;
            break;
        }
        bad += x.epoch != y.epoch || x.step != y.step || x.n != y.n ||
               memcmp(x.index, y.index, x.n * sizeof *x.index) || memcmp(x.images, y.images, x.n * PER * sizeof(float));
    }
    EXPECT(bad == 0, "after a seek, %zu batches differ from the uninterrupted reader's", bad);
    reader_close(a);
    reader_close(b);
}

/* Open path's train split with stderr captured: status and the message. */
static int open_captured(const char *file, char *msg, size_t len, int *lines)
{
    FxCapture cap;
    fx_capture_begin(&cap, dir);
    Dataset *d = NULL;
    int rc = dataset_open(file, "train", 0, &d);
    char *text = fx_capture_end(&cap, lines);
    snprintf(msg, len, "%s", text);
    free(text);
    dataset_close(d);
    return rc;
}

static void check_channel_attributes(void)
{
    char file[700], msg[1024];
    int lines = 0;
    /* Arrays: each channel its own values. */
    Dataset *d = NULL;
    EXPECT(dataset_open(path, "train", 0, &d) == BASIN_OK, "open with per-channel attributes");
    if (d) {
        const DatasetInfo *info = dataset_info(d);
        for (int c = 0; c < C; c++)
            EXPECT(info->mean[c] == MEAN[c] && info->std[c] == STD[c], "channel %d: mean %g std %g", c,
                   (double)info->mean[c], (double)info->std[c]);
        dataset_close(d);
    }
    /* A single number is every channel's value, as in files made before. */
    FxSpec s = fx_spec(10, C, H, W);
    snprintf(file, sizeof file, "%s/scalar.h5", dir);
    fx_write_dataset_file(file, &s);
    d = NULL;
    EXPECT(dataset_open(file, "train", 0, &d) == BASIN_OK, "open with single-number attributes");
    if (d) {
        const DatasetInfo *info = dataset_info(d);
        float img[PER];
        int32_t lab;
        uint64_t i = 3;
        EXPECT(dataset_read(d, &i, 1, img, &lab) == BASIN_OK, "read");
        for (int c = 0; c < C; c++) {
            EXPECT(info->mean[c] == 0.25f && info->std[c] == 0.5f, "channel %d of a single-number file", c);
            float want = ((float)fx_pixel(3, (size_t)c * PLANE + 4) / 255.0f - 0.25f) / 0.5f;
            EXPECT(img[c * PLANE + 4] == want, "channel %d: %g, want %g", c, (double)img[c * PLANE + 4], (double)want);
        }
        dataset_close(d);
    }
    /* Refusals, one line each. */
    const float two[2] = {0.5f, 0.5f}, nan3[3] = {0.5f, NAN, 0.5f}, zero3[3] = {0.2f, 0.3f, 0.0f};
    struct { const char *name, *needle; const float *mean, *std; int n, c; } bad[] = {
        {"two-of-three", "single number or 3 numbers", two, two, 2, C},
        {"nan-mean", "mean[1] = nan", nan3, STD, 3, C},
        {"zero-std", "std[2] = 0", MEAN, zero3, 3, C},
        {"65-channels", "65 channels", NULL, NULL, 0, 65},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        FxSpec b = fx_spec(4, bad[k].c, 2, 2);
        b.mean_c = bad[k].mean, b.std_c = bad[k].std, b.n_stats = bad[k].n;
        snprintf(file, sizeof file, "%s/%s.h5", dir, bad[k].name);
        fx_write_dataset_file(file, &b);
        int rc = open_captured(file, msg, sizeof msg, &lines);
        EXPECT(rc == BASIN_ERR_USAGE && lines == 1 && strstr(msg, bad[k].needle), "%s: rc %d, %d lines: %s",
               bad[k].name, rc, lines, msg);
    }
    /* A bad SPEC: one line from reader_open. */
    ReaderConfig cfg = config("train", 8, 0, 1, 0, "crop:0");
    Reader *r = NULL;
    FxCapture cap;
    fx_capture_begin(&cap, dir);
    int rc = reader_open(&cfg, &r);
    char *text = fx_capture_end(&cap, &lines);
    EXPECT(rc == BASIN_ERR_USAGE && !r && lines == 1 && strstr(text, "crop:0"), "bad SPEC: rc %d: %s", rc, text);
    free(text);
}

int main(void)
{
    fx_make_tmpdir(dir, sizeof dir, "augment");
    snprintf(path, sizeof path, "%s/data.h5", dir);
    FxSpec s = fx_spec(N, C, H, W);
    s.mean_c = MEAN, s.std_c = STD, s.n_stats = C;
    fx_write_dataset_file(path, &s);
    FxSpec t = fx_spec(NT, C, H, W);
    t.split = "test", t.append = 1;
    fx_write_dataset_file(path, &t);

    check_parse();
    check_against_reference("crop:2,flip", 2, 1, 1);
    check_against_reference("crop:2,flip", 2, 1, 0);
    check_against_reference("crop:1", 1, 0, 1);
    check_against_reference("flip", 0, 1, 0);
    check_against_reference("crop:9", 9, 0, 1); /* wider than the image: some windows are all padding */
    check_rank_independence();
    check_not_augmented();
    check_seek();
    check_channel_attributes();

    fx_remove_tree(dir);
    return test_finish("test_reader_augment");
}
