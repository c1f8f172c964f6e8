/* libFuzzer target: the data-set validator (dataset_open) and, on a file it
 * accepts, reads of the first, middle and last samples, for both splits.
 * dataset_open must answer BASIN_OK or BASIN_ERR_USAGE (a bad input), and
 * leave *out NULL when it refuses; the reads of an accepted file may fail
 * (a damaged compressed chunk is only seen when read) but never crash, and
 * hand out labels in [0, classes) only. */
#include "fuzz_input.h"
#include "reader/reader.h"

#include "core/error.h"

static void read_some(Dataset *d)
{
    const DatasetInfo *in = dataset_info(d);
    size_t per = (size_t)in->c * (size_t)in->h * (size_t)in->w;
    uint64_t idx[3] = {0, in->count / 2, in->count - 1};
    size_t n = in->count == 0 ? 0 : per > ((size_t)1 << 20) ? 1 : 3;
    float *img = malloc((n ? n : 1) * per * sizeof *img);
    int32_t lab[3];
    if (!img) abort();
    int rc = dataset_read(d, idx, n, img, lab);
    for (size_t i = 0; rc == BASIN_OK && i < n; i++)
        if (lab[i] < 0 || lab[i] >= in->classes) abort(); /* validated labels only */
    free(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write_input(data, size);
    static const char *splits[] = {"train", "test"};
    for (int s = 0; s < 2; s++) {
        Dataset *d = NULL;
        int rc = dataset_open(path, splits[s], s == 0 ? 0 : 2, &d);
        if (rc != BASIN_OK && rc != BASIN_ERR_USAGE) abort(); /* only "bad input" is an answer */
        if (rc == BASIN_OK) {
            read_some(d);
            dataset_close(d);
        } else if (d) {
            abort(); /* *out must stay NULL after a refusal */
        }
    }
    return 0;
}
