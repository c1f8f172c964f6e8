/* Malformed and damaged data files (faults.h) are refused by dataset_open and
 * reader_open (what basin-train --check and basin-data info call) with
 * BASIN_ERR_USAGE and one line that names the file and the fault, before
 * anything is allocated for what the file only declares.
 *
 * Against the reader before the storage checks this test fails on every
 * fault marked new in faults.h (checked by building this test against that
 * reader): the 2^31-sample file and the unwritten or partly written datasets
 * were accepted (their reads return HDF5 fill values), the 4 GiB sample was
 * accepted, truncated files and a split that is not a group were exit-1
 * failures of H5Fopen or H5Lexists, a float `classes` was truncated to an
 * integer, and a chunk of 128 MiB was accepted. */
#include "reader/reader.h"

#include "core/error.h"
#include "faults.h"
#include "testing.h"

static char dir[512];

/* One refusal: rc, the line count, the path and the needle. If dataset_open
 * accepts the file, reader_open (which refuses an empty split) gets a try,
 * unless the file was accepted with more declared bytes than it holds: then
 * the test has failed already and reading on could take minutes. */
static void check_fault(const Fault *f)
{
    char path[700];
    snprintf(path, sizeof path, "%s/%s.h5", dir, f->name);
    f->make(path);
    struct stat st;
    stat(path, &st);

    FxCapture cap;
    fx_capture_begin(&cap, dir);
    Dataset *d = NULL;
    int rc = dataset_open(path, "train", 0, &d);
    int overclaimed = 0;
    if (rc == BASIN_OK) {
        const DatasetInfo *in = dataset_info(d);
        overclaimed = (double)in->count * in->c * in->h * in->w > (double)st.st_size;
        dataset_close(d);
        if (!overclaimed) {
            ReaderConfig rcfg = {.path = path, .split = "train", .seed = 1, .global_batch = 1, .rank = 0,
                                 .world = 1, .shuffle = 1, .drop_last = 1, .prefetch = 0};
            Reader *r = NULL;
            rc = reader_open(&rcfg, &r);
            reader_close(r);
        }
    }
    int lines;
    char *text = fx_capture_end(&cap, &lines);
    EXPECT(!overclaimed, "%s: accepted with more declared data than its %lld bytes", f->name,
           (long long)st.st_size);
    EXPECT(rc == BASIN_ERR_USAGE, "%s: returned %d, want BASIN_ERR_USAGE (%s)", f->name, rc, text);
    EXPECT(lines == 1, "%s: printed %d lines: %s", f->name, lines, text);
    EXPECT(strstr(text, path) != NULL, "%s: the line does not name the file: %s", f->name, text);
    EXPECT(strstr(text, f->needle) != NULL, "%s: the line does not say '%s': %s", f->name, f->needle, text);
    free(text);
}

/* The 2^31-sample file with a limit: the declared extent is checked all the
 * same (a limit must not make fill values trainable). */
static void check_limited(void)
{
    char path[700];
    snprintf(path, sizeof path, "%s/declared-2e31-limit.h5", dir);
    fq_declared_2e31(path);
    FxCapture cap;
    fx_capture_begin(&cap, dir);
    Dataset *d = NULL;
    int rc = dataset_open(path, "train", 100, &d);
    int lines;
    free(fx_capture_end(&cap, &lines));
    EXPECT(rc == BASIN_ERR_USAGE && d == NULL, "2^31 samples with limit 100: returned %d", rc);
    dataset_close(d);
}

int main(void)
{
    fx_make_tmpdir(dir, sizeof dir, "faults");
    /* The control: the good file the truncations start from opens. */
    char good[700];
    snprintf(good, sizeof good, "%s/good.h5", dir);
    fq_good(good);
    Dataset *d = NULL;
    EXPECT(dataset_open(good, "train", 0, &d) == BASIN_OK, "the good file is refused");
    dataset_close(d);

    for (size_t i = 0; i < N_FAULTS; i++) check_fault(&FAULTS[i]);
    check_limited();
    fx_remove_tree(dir);
    return test_finish("test_reader_faults");
}
