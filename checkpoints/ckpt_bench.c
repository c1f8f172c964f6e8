/* Checkpoint write bandwidth against a plain sequential write of the same
 * bytes to the same folder.
 *
 *   basin-ckpt-bench [--dir DIR] [--runs N] [--params COUNT]...
 *
 * For each parameter count (default: the cnn's 3,274,634 and a 100M-parameter
 * MLP-sized buffer), alternately: checkpoint_write, and a plain
 * open + write(params) + write(momentum) + fsync + close + rename + fsync(dir)
 * — the same bytes and the same durability steps without HDF5 or checksums.
 * Median of N runs each (and the best run, since a shared disk is noisy);
 * the ratio is plain time / checkpoint time (1.0 means the checkpoint costs
 * no more than the bytes themselves). */
#include "checkpoints/checkpoint.h"

#include "core/clock.h"
#include "core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_SIZES 8
#define MAX_RUNS 64

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int plain_write(const char *dir, const float *a, const float *b, size_t n)
{
    char tmp[4096], fin[4096];
    snprintf(tmp, sizeof tmp, "%s/.plain.bin.tmp", dir);
    snprintf(fin, sizeof fin, "%s/plain.bin", dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (fd < 0) return basin_error(BASIN_ERR_RUNTIME, "open(%s): %s", tmp, strerror(errno));
    int bad = write_all(fd, a, n * sizeof(float)) || write_all(fd, b, n * sizeof(float)) || fsync(fd);
    bad = close(fd) || bad;
    if (bad || rename(tmp, fin) != 0) return basin_error(BASIN_ERR_RUNTIME, "plain write to %s failed", dir);
    int dfd = open(dir, O_RDONLY);
    if (dfd >= 0) fsync(dfd), close(dfd);
    return BASIN_OK;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: basin-ckpt-bench [--dir DIR] [--runs N] [--params COUNT]...\n"
               "  --dir DIR       folder to write into (default: ckpt-bench-out)\n"
               "  --runs N        runs per size and method, median reported (default 5)\n"
               "  --params COUNT  parameter count; repeatable (default 3274634 and 100000000)\n");
}

int main(int argc, char **argv)
{
    const char *dir = "ckpt-bench-out";
    int runs = 5, n_sizes = 0;
    size_t sizes[MAX_SIZES];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--dir") && v) {
            dir = v, i++;
        } else if (!strcmp(a, "--runs") && v) {
            runs = atoi(v), i++;
            if (runs < 1 || runs > MAX_RUNS) return basin_error(2, "--runs must be in 1..%d", MAX_RUNS);
        } else if (!strcmp(a, "--params") && v) {
            char *end;
            unsigned long long c = strtoull(v, &end, 10);
            if (*end || c == 0 || n_sizes == MAX_SIZES)
                return basin_error(2, "--params wants a positive count (at most %d of them)", MAX_SIZES);
            sizes[n_sizes++] = (size_t)c, i++;
        } else {
            usage(stderr);
            return basin_error(2, "unknown or incomplete option %s", a);
        }
    }
    if (n_sizes == 0) sizes[n_sizes++] = 3274634, sizes[n_sizes++] = 100000000;
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) return basin_error(2, "cannot create %s: %s", dir, strerror(errno));

    printf("%11s %8s %8s %9s %8s %9s %6s %8s %8s %6s\n", "params", "file_MB", "ckpt_s", "ckpt_MB/s", "plain_s",
           "plain_MB/s", "ratio", "best_ck", "best_pl", "ratio");
    for (int k = 0; k < n_sizes; k++) {
        size_t n = sizes[k];
        float *p = basin_aligned_alloc(n * sizeof(float)), *m = basin_aligned_alloc(n * sizeof(float));
        if (!p || !m) return 1;
        for (size_t i = 0; i < n; i++) p[i] = (float)(i % 1000) * 1e-3f, m[i] = -p[i];
        CheckpointState st = {.model_spec = "bench", .config_text = "bench", .n_params = n, .params = p,
                              .momentum = m, .next_step = 1};
        double tc[MAX_RUNS], tp[MAX_RUNS];
        char path[4096];
        for (int r = 0; r < runs; r++) {
            double t0 = basin_clock();
            if (checkpoint_write(dir, &st, 1, path, sizeof path)) return 1;
            double t1 = basin_clock();
            if (plain_write(dir, p, m, n)) return 1;
            double t2 = basin_clock();
            tc[r] = t1 - t0, tp[r] = t2 - t1;
        }
        struct stat sb;
        stat(path, &sb);
        double c = median(tc, runs), pl = median(tp, runs), mb = (double)sb.st_size / 1e6;
        double data_mb = 2.0 * (double)n * sizeof(float) / 1e6;
        double bc = tc[0], bp = tp[0]; /* sorted by median() */
        printf("%11zu %8.1f %8.4f %9.0f %8.4f %9.0f %6.2f %8.4f %8.4f %6.2f\n", n, mb, c, mb / c, pl, data_mb / pl,
               pl / c, bc, bp, bp / bc);
        fflush(stdout);
        unlink(path);
        char plain[4096];
        snprintf(plain, sizeof plain, "%s/plain.bin", dir);
        unlink(plain);
        free(p);
        free(m);
    }
    rmdir(dir);
    return 0;
}
