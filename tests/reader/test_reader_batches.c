/* The batch reader: ranks' slices put together are exactly the global batch
 * of the global order, whatever the world size; prefetching returns the same
 * batches as synchronous reads, across epoch boundaries and after seeks. */
#include "reader/reader.h"

#include "core/error.h"
#include "fixtures.h"
#include "testing.h"

enum { N = 1000, C = 1, H = 2, W = 3, PER = C * H * W };

static char dir[512], path[600];

static ReaderConfig config(size_t batch, int rank, int world, int prefetch)
{
    ReaderConfig c = {.path = path, .split = "train", .seed = 1234, .global_batch = batch, .rank = rank,
                      .world = world, .shuffle = 1, .prefetch = prefetch};
    return c;
}

/* The batch's images and labels are those of the samples its index names
 * (each image spells its own index in its first two bytes). */
static size_t batch_mismatches(const Batch *b, const DatasetInfo *info)
{
    size_t bad = 0;
    for (size_t k = 0; k < b->n; k++) {
        uint64_t i = b->index[k];
        if (b->labels[k] != fx_label(i, 10)) bad++;
        for (size_t j = 0; j < PER; j++) {
            float want = ((float)fx_pixel(i, j) / 255.0f - info->mean[0]) / info->std[0];
            if (!(fabsf(b->images[k * PER + j] - want) <= 1e-6f)) { bad++; break; }
        }
    }
    return bad;
}

/* Run `epochs` epochs with W readers side by side (one per rank) and compare
 * the concatenated slices with order_epoch directly. *seq receives the global
 * sample sequence (epochs * N entries). */
static void run_world(int world, size_t batch, int drop_last, int epochs, uint64_t *seq)
{
    Reader *r[8] = {0};
    for (int k = 0; k < world; k++) {
        ReaderConfig c = config(batch, k, world, k % 2); /* mix prefetching and synchronous ranks */
        c.drop_last = drop_last;
        int rc = reader_open(&c, &r[k]);
        EXPECT(rc == BASIN_OK, "W=%d rank %d: reader_open returned %d", world, k, rc);
        if (rc) return;
    }
    size_t steps = reader_steps_per_epoch(r[0]);
    size_t want_steps = drop_last ? N / batch : (N + batch - 1) / batch;
    EXPECT(steps == want_steps, "B=%zu drop_last=%d: %zu steps per epoch, expected %zu", batch, drop_last, steps,
           want_steps);
    uint64_t *perm = malloc(N * sizeof *perm);
    size_t pos = 0, wrong_sample = 0, wrong_meta = 0, wrong_data = 0;
    for (int e = 0; e < epochs; e++) {
        order_epoch(1234, (uint64_t)e, N, perm);
        uint8_t seen[N] = {0};
        size_t dup = 0;
        for (size_t s = 0; s < steps; s++) {
            size_t start = s * batch, global_n = N - start < batch ? N - start : batch, got = 0;
            for (int k = 0; k < world; k++) {
                Batch b;
                int rc = reader_next(r[k], &b);
                EXPECT(rc == BASIN_OK, "W=%d rank %d epoch %d step %zu: reader_next returned %d", world, k, e,
                       s, rc);
                if (rc) goto done;
                size_t first, count;
                order_rank_slice(global_n, k, world, &first, &count);
                if (b.epoch != (uint64_t)e || b.step != s || b.global_n != global_n || b.n != count) wrong_meta++;
                for (size_t i = 0; i < b.n && got + i < global_n; i++) {
                    if (b.index[i] != perm[start + got + i]) wrong_sample++;
                    if (b.index[i] < N && seen[b.index[i]]++) dup++;
                    seq[(size_t)e * N + start + got + i] = b.index[i];
                }
                wrong_data += batch_mismatches(&b, reader_info(r[k]));
                got += b.n;
            }
            EXPECT(got == global_n, "W=%d epoch %d step %zu: ranks got %zu samples of %zu", world, e, s, got,
                   global_n);
            pos += got;
        }
        EXPECT(dup == 0, "W=%d epoch %d: %zu samples handed out twice", world, e, dup);
        size_t covered = 0;
        for (size_t i = 0; i < N; i++) covered += seen[i] != 0;
        EXPECT(covered == (drop_last ? steps * batch : N), "W=%d epoch %d: %zu distinct samples", world, e,
               covered);
    }
done:
    EXPECT(wrong_sample == 0, "W=%d B=%zu: %zu samples differ from the global order", world, batch, wrong_sample);
    EXPECT(wrong_meta == 0, "W=%d B=%zu: %zu batches with wrong epoch/step/counts", world, batch, wrong_meta);
    EXPECT(wrong_data == 0, "W=%d B=%zu: %zu samples with wrong images or labels", world, batch, wrong_data);
    free(perm);
    for (int k = 0; k < world; k++) reader_close(r[k]);
}

static void test_sharding(void)
{
    const size_t batches[] = {64, 7};
    uint64_t *seq1 = malloc(2 * N * sizeof *seq1), *seqw = malloc(2 * N * sizeof *seqw);
    for (size_t bi = 0; bi < 2; bi++) {
        for (int drop = 0; drop <= 1; drop++) {
            memset(seq1, 0xff, 2 * N * sizeof *seq1);
            run_world(1, batches[bi], drop, 2, seq1);
            for (int world = 2; world <= 5; world++) {
                memset(seqw, 0xff, 2 * N * sizeof *seqw);
                run_world(world, batches[bi], drop, 2, seqw);
                EXPECT(memcmp(seq1, seqw, 2 * N * sizeof *seq1) == 0,
                       "B=%zu drop_last=%d: W=%d read another sample sequence than W=1", batches[bi], drop, world);
            }
        }
    }
    free(seq1);
    free(seqw);
}

static int same_batch(const Batch *a, const Batch *b)
{
    return a->epoch == b->epoch && a->step == b->step && a->global_n == b->global_n && a->n == b->n &&
           memcmp(a->index, b->index, a->n * sizeof *a->index) == 0 &&
           memcmp(a->labels, b->labels, a->n * sizeof *a->labels) == 0 &&
           memcmp(a->images, b->images, a->n * PER * sizeof *a->images) == 0;
}

/* Step both readers `count` times and count the batches that differ, or
 * whose (epoch, step) is not the expected continuation. */
static size_t compare_run(Reader *pre, Reader *syn, int count, uint64_t *epoch, uint64_t *step, size_t steps)
{
    size_t diff = 0;
    for (int i = 0; i < count; i++) {
        Batch a, b;
        int ra = reader_next(pre, &a), rb = reader_next(syn, &b);
        if (ra || rb) return diff + (size_t)(count - i);
        if (!same_batch(&a, &b) || a.epoch != *epoch || a.step != *step) diff++;
        if (++*step == steps) *step = 0, ++*epoch;
    }
    return diff;
}

static void test_prefetch_matches_sync(void)
{
    for (int world = 1; world <= 3; world += 2) {
        for (int rank = 0; rank < world; rank++) {
            ReaderConfig cp = config(96, rank, world, 1), cs = config(96, rank, world, 0);
            Reader *pre = NULL, *syn = NULL;
            int rc = reader_open(&cp, &pre);
            EXPECT(rc == BASIN_OK, "reader_open(prefetch) returned %d", rc);
            rc = reader_open(&cs, &syn);
            EXPECT(rc == BASIN_OK, "reader_open(sync) returned %d", rc);
            if (!pre || !syn) {
                reader_close(pre);
                reader_close(syn);
                return;
            }
            size_t steps = reader_steps_per_epoch(pre); /* 11, the last one short */
            uint64_t e = 0, s = 0;
            size_t d = compare_run(pre, syn, (int)(2 * steps + 3), &e, &s, steps);
            EXPECT(d == 0, "W=%d rank %d: %zu batches differ across epoch boundaries", world, rank, d);

            /* Seek back, forward, and to "one past the last step". */
            const uint64_t seeks[][2] = {{0, 5}, {3, 10}, {1, 0}, {2, 11}, {0, 0}};
            for (size_t k = 0; k < sizeof seeks / sizeof seeks[0]; k++) {
                EXPECT(reader_seek(pre, seeks[k][0], seeks[k][1]) == BASIN_OK, "reader_seek(prefetch) failed");
                EXPECT(reader_seek(syn, seeks[k][0], seeks[k][1]) == BASIN_OK, "reader_seek(sync) failed");
                e = seeks[k][0] + seeks[k][1] / steps;
                s = seeks[k][1] % steps;
                d = compare_run(pre, syn, 4, &e, &s, steps);
                EXPECT(d == 0, "W=%d rank %d: %zu batches differ after seek (%llu, %llu)", world, rank, d,
                       (unsigned long long)seeks[k][0], (unsigned long long)seeks[k][1]);
            }
            /* Seek right after open, before any batch, and twice in a row. */
            EXPECT(reader_seek(pre, 4, 2) == BASIN_OK && reader_seek(pre, 4, 3) == BASIN_OK, "double seek failed");
            EXPECT(reader_seek(syn, 4, 3) == BASIN_OK, "seek failed");
            e = 4, s = 3;
            d = compare_run(pre, syn, 3, &e, &s, steps);
            EXPECT(d == 0, "W=%d rank %d: %zu batches differ after a double seek", world, rank, d);

            double w1 = reader_take_wait_seconds(pre), w2 = reader_take_wait_seconds(pre);
            EXPECT(w1 >= 0.0 && w1 < 60.0, "wait seconds %g", w1);
            EXPECT(w2 == 0.0, "wait seconds not reset by the first take: %g", w2);
            double ws = reader_take_wait_seconds(syn);
            EXPECT(ws > 0.0, "synchronous reads counted no wait time (%g)", ws);
            reader_close(pre);
            reader_close(syn);
        }
    }
    /* Closing a prefetching reader that never handed out a batch. */
    ReaderConfig c = config(96, 0, 1, 1);
    Reader *r = NULL;
    EXPECT(reader_open(&c, &r) == BASIN_OK, "reader_open failed");
    reader_close(r);
}

static void test_file_order(void)
{
    ReaderConfig c = config(100, 1, 2, 1);
    c.shuffle = 0;
    c.limit = 250;
    Reader *r = NULL;
    int rc = reader_open(&c, &r);
    EXPECT(rc == BASIN_OK, "reader_open(shuffle 0, limit 250) returned %d", rc);
    if (!r) return;
    EXPECT(reader_steps_per_epoch(r) == 3, "%zu steps for 250 samples at 100", reader_steps_per_epoch(r));
    /* rank 1 of 2: [50, 100) of each batch; the last batch of 50 gives it [225, 250) */
    const uint64_t first[] = {50, 150, 225, 50};
    const size_t count[] = {50, 50, 25, 50};
    for (int i = 0; i < 4; i++) {
        Batch b;
        rc = reader_next(r, &b);
        EXPECT(rc == BASIN_OK && b.n == count[i] && b.index[0] == first[i] && b.index[b.n - 1] == first[i] + b.n - 1,
               "file order step %d: n %zu, index %llu..", i, b.n, (unsigned long long)b.index[0]);
        EXPECT(batch_mismatches(&b, reader_info(r)) == 0, "file order step %d: wrong data", i);
    }
    reader_close(r);
}

static void expect_open_refused(ReaderConfig c, const char *needle, const char *what)
{
    Reader *r = NULL;
    FxCapture cap;
    fx_capture_begin(&cap, dir);
    int rc = reader_open(&c, &r);
    int lines;
    char *text = fx_capture_end(&cap, &lines);
    EXPECT(rc == BASIN_ERR_USAGE && r == NULL, "%s: reader_open returned %d", what, rc);
    EXPECT(lines == 1 && strstr(text, needle), "%s: want one line saying '%s', got: %s", what, needle, text);
    reader_close(r);
    free(text);
}

static void test_bad_configs(void)
{
    expect_open_refused(config(0, 0, 1, 1), "batch", "batch 0");
    expect_open_refused(config(10, 3, 3, 1), "rank 3", "rank 3 of 3");
    ReaderConfig c = config(2000, 0, 1, 1);
    c.drop_last = 1;
    expect_open_refused(c, "larger than", "batch above N with drop_last");
    c = config(10, 0, 1, 0);
    c.split = "validation";
    expect_open_refused(c, "/validation", "unknown split");
}

int main(void)
{
    fx_make_tmpdir(dir, sizeof dir, "batches");
    snprintf(path, sizeof path, "%s/data.h5", dir);
    FxSpec s = fx_spec(N, C, H, W);
    fx_write_dataset_file(path, &s);
    test_sharding();
    test_prefetch_matches_sync();
    test_file_order();
    test_bad_configs();
    fx_remove_tree(dir);
    return test_finish("test_reader_batches");
}
