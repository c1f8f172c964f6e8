/* guard_cost DATA_FILE CHECKPOINT [N]: median and minimum wall time of
 * dataset_open + dataset_close of DATA_FILE's train split and of
 * checkpoint_read + checkpoint_free of CHECKPOINT, over N (20) rounds after
 * one warm-up (the median, as other work on the host adds outliers). Built
 * twice: guard_cost with the child-process guard (reader/h5guard.h), and
 * guard_cost_inproc without it; the difference is the guard's cost per
 * open. Not a test: a measurement, run by hand. */
#include "checkpoints/checkpoint.h"
#include "reader/reader.h"

#include "core/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: guard_cost DATA_FILE CHECKPOINT [N]\n");
        return 2;
    }
    int n = argc > 3 ? atoi(argv[3]) : 20;
    if (n < 1) n = 1;
    double *data_s = calloc((size_t)n, sizeof *data_s), *ckpt_s = calloc((size_t)n, sizeof *ckpt_s);
    if (!data_s || !ckpt_s) return 1;
    for (int i = 0; i <= n; i++) {
        double t0 = now_s();
        Dataset *d = NULL;
        if (dataset_open(argv[1], "train", 0, &d) != BASIN_OK) return 1;
        dataset_close(d);
        double t1 = now_s();
        Checkpoint c;
        if (checkpoint_read(argv[2], &c) != BASIN_OK) return 1;
        checkpoint_free(&c);
        double t2 = now_s();
        if (i > 0) data_s[i - 1] = t1 - t0, ckpt_s[i - 1] = t2 - t1;
    }
    qsort(data_s, (size_t)n, sizeof *data_s, cmp_double);
    qsort(ckpt_s, (size_t)n, sizeof *ckpt_s, cmp_double);
    printf("%s: dataset_open+close median %.2f ms (min %.2f), checkpoint_read+free median %.2f ms (min %.2f), "
           "%d rounds\n", argv[0], 1e3 * data_s[n / 2], 1e3 * data_s[0], 1e3 * ckpt_s[n / 2], 1e3 * ckpt_s[0], n);
    free(data_s);
    free(ckpt_s);
    return 0;
}
