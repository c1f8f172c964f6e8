/* libFuzzer target: the checkpoint reader. Every input must end in BASIN_OK
 * (a verified checkpoint, whose buffers are then read through) or
 * BASIN_ERR_USAGE (refused with one line). */
#include "fuzz_input.h"
#include "checkpoints/checkpoint.h"

#include "core/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write_input(data, size);
    Checkpoint c;
    int rc = checkpoint_read(path, &c);
    if (rc != BASIN_OK && rc != BASIN_ERR_USAGE) abort();
    if (rc == BASIN_OK) {
        volatile float sum = 0.0f;
        for (size_t i = 0; i < c.st.n_params; i++) sum += c.params[i] + c.momentum[i];
        (void)sum;
        checkpoint_free(&c);
    }
    return 0;
}
