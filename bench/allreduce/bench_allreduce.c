/* All-reduce bandwidth, nccl-tests style.
 *
 *   mpirun -np P basin-bench-allreduce [--min-bytes B] [--max-bytes B]
 *       [--algos auto,rhd,ring,hier,mpi] [--runs R] [--supernode-size K]
 *       [--placement window|private] [--wire fp32|bf16|fp16] [--csv FILE]
 *       [--samples FILE]
 *
 * For each size and algorithm: a correctness run on exact inputs (outside the
 * timed loop; #wrong counts wrong elements over all ranks and fails the run),
 * warm-up, then R timed runs of enough iterations to last ~20 ms; a run's
 * time is the slowest rank's, the table shows the median run; --samples
 * writes every run (algo,bytes,run,time_us,algbw_gbs), to see the spread.
 *   algbw = bytes / time, busbw = algbw * 2(P-1)/P.
 * The buffer is reduced in place; with --placement window (default) it comes
 * from allreduce_buffer_alloc, as the trainer's gradient buffer does, and the
 * plans are made with ALLREDUCE_WINDOW_ONLY.
 * --wire bf16|fp16 sends 16-bit values between supernodes (allreduce.h);
 * bytes and bandwidths still count the fp32 buffer, so the gain shows as a
 * higher algbw. mpi cannot send 16 bits: it stays fp32, the baseline. The
 * exact inputs stay exact in bf16 up to 28 ranks (sums of 9 P < 2^8).
 */
#include "allreduce/allreduce.h"
#include "core/error.h"
#include "allreduce/exact.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct Opts {
    size_t min_bytes, max_bytes;
    char algos[256];
    int runs, supernode_size, window;
    unsigned wire; /* ALLREDUCE_WIRE_* plan flag, 0: fp32 */
    const char *wire_name;
    const char *csv;
    const char *samples;
} Opts;

static void usage(FILE *f)
{
    fprintf(f, "usage: basin-bench-allreduce [--min-bytes B] [--max-bytes B] [--algos a,b,...] [--runs R]\n"
               "         [--supernode-size K] [--placement window|private] [--wire fp32|bf16|fp16]\n"
               "         [--csv FILE] [--samples FILE]\n"
               "  sizes double from min to max (default 4096 .. 268435456); algorithms from\n"
               "  auto, rhd, ring, hier, mpi (default all); R timed runs per point (default 5)\n");
}

static int parse(int argc, char **argv, Opts *o)
{
    o->min_bytes = 4096;
    o->max_bytes = 256u << 20;
    snprintf(o->algos, sizeof o->algos, "auto,rhd,ring,hier,mpi");
    o->runs = 5;
    o->supernode_size = 0;
    o->window = 1;
    o->csv = NULL;
    o->samples = NULL;
    o->wire = 0;
    o->wire_name = "fp32";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        }
        if (!v) return basin_error(BASIN_ERR_USAGE, "option %s needs a value (see --help)", a);
        i++;
        if (!strcmp(a, "--min-bytes"))
            o->min_bytes = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--max-bytes"))
            o->max_bytes = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--algos"))
            snprintf(o->algos, sizeof o->algos, "%s", v);
        else if (!strcmp(a, "--runs"))
            o->runs = atoi(v);
        else if (!strcmp(a, "--supernode-size"))
            o->supernode_size = atoi(v);
        else if (!strcmp(a, "--placement") && (!strcmp(v, "window") || !strcmp(v, "private")))
            o->window = !strcmp(v, "window");
        else if (!strcmp(a, "--wire")) {
            if (allreduce_wire_parse(v, &o->wire))
                return basin_error(BASIN_ERR_USAGE, "--wire '%s': expected fp32, bf16 or fp16", v);
            o->wire_name = v;
        } else if (!strcmp(a, "--csv"))
            o->csv = v;
        else if (!strcmp(a, "--samples"))
            o->samples = v;
        else
            return basin_error(BASIN_ERR_USAGE, "unknown option or value: %s %s (see --help)", a, v);
    }
    if (o->min_bytes < 4 || o->max_bytes < o->min_bytes || o->runs < 1)
        return basin_error(BASIN_ERR_USAGE, "need 4 <= --min-bytes <= --max-bytes and --runs >= 1");
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Slowest rank's time per iteration for iters iterations. */
static double timed(AllreducePlan *p, float *buf, int iters)
{
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++)
        if (allreduce_run(p, buf, buf)) MPI_Abort(MPI_COMM_WORLD, 1);
    double t = (MPI_Wtime() - t0) / iters, tmax = 0;
    MPI_Allreduce(&t, &tmax, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return tmax;
}

typedef struct Row {
    size_t bytes;
    double time, algbw, busbw;
    long long wrong;
} Row;

int main(int argc, char **argv)
{
    int provided, rank, size;
    if (allreduce_mpi_init(&argc, &argv, &provided) != MPI_SUCCESS)
        return basin_error(BASIN_ERR_RUNTIME, "MPI_Init_thread failed");
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    Opts o;
    int st = parse(argc, argv, &o);
    if (st) {
        MPI_Finalize();
        return st == 1 ? 0 : BASIN_ERR_USAGE;
    }
    /* --samples is opened before anything is measured: a path that cannot
     * be written stops the job with one line (rank 0's), exit 2. */
    FILE *sf = NULL;
    int no_samples = 0;
    if (rank == 0 && o.samples) {
        if ((sf = fopen(o.samples, "w")))
            fprintf(sf, "algo,bytes,run,time_us,algbw_gbs\n");
        else
            no_samples = 1, basin_error(BASIN_ERR_USAGE, "--samples: cannot write %s", o.samples);
    }
    if (MPI_Bcast(&no_samples, 1, MPI_INT, 0, MPI_COMM_WORLD) != MPI_SUCCESS || no_samples) {
        MPI_Finalize();
        return BASIN_ERR_USAGE;
    }
    AllreduceConfig cfg;
    allreduce_config_default(&cfg);
    cfg.supernode_size = o.supernode_size;
    AllreduceComm *c = NULL;
    if ((st = allreduce_comm_create(MPI_COMM_WORLD, &cfg, &c))) {
        MPI_Finalize();
        return st;
    }
    const AllreduceTopology *t = allreduce_topology(c);
    size_t maxn = o.max_bytes / sizeof(float);
    float *buf = o.window ? allreduce_buffer_alloc(c, maxn) : basin_aligned_alloc(maxn * sizeof(float));
    if (!buf) MPI_Abort(MPI_COMM_WORLD, 1);

    char *algos[16];
    int nalgo = 0;
    for (char *s = strtok(o.algos, ","); s && nalgo < 16; s = strtok(NULL, ",")) algos[nalgo++] = s;
    int nsizes = 0;
    for (size_t b = o.min_bytes; b <= o.max_bytes; b *= 2) nsizes++;
    Row *rows = calloc((size_t)(nalgo * nsizes), sizeof *rows);
    char (*chosen)[8] = calloc((size_t)(nalgo * nsizes), sizeof *chosen);
    double *samples = calloc((size_t)o.runs, sizeof *samples);
    long long total_wrong = 0;
    int write_failed = 0;

    if (rank == 0)
        printf("# basin all-reduce benchmark: %d ranks, %d supernode(s) of %d..%d ranks, %s buffers, "
               "median of %d runs, time = slowest rank, wire %s\n",
               size, t->nodes, t->min_local_size, t->local_size, o.window ? "shared-window" : "private", o.runs,
               o.wire_name);
    for (int a = 0; a < nalgo; a++) {
        if (rank == 0) {
            printf("\n### %s\n\n", algos[a]);
            printf("| size (B) | count (floats) | algo | time (us) | algbw (GB/s) | busbw (GB/s) | #wrong |\n");
            printf("|---:|---:|:--|---:|---:|---:|---:|\n");
        }
        int si = 0;
        for (size_t bytes = o.min_bytes; bytes <= o.max_bytes; bytes *= 2, si++) {
            size_t n = bytes / sizeof(float);
            AllreducePlan *p = NULL;
            /* Window buffers are what the trainer reduces: promise it (auto uses it). */
            unsigned flags = o.window ? ALLREDUCE_WINDOW_ONLY : 0;
            if (strcmp(algos[a], "mpi")) flags |= o.wire;
            if ((st = allreduce_plan(c, algos[a], n, flags, &p))) MPI_Abort(MPI_COMM_WORLD, st);
            /* correctness, outside the timed loop */
            for (size_t i = 0; i < n; i++) buf[i] = exact_value(rank, i);
            if (allreduce_run(p, buf, buf)) MPI_Abort(MPI_COMM_WORLD, 1);
            long long wrong = 0, wrong_all = 0;
            for (size_t i = 0; i < n; i++) wrong += buf[i] != exact_sum(size, i);
            MPI_Allreduce(&wrong, &wrong_all, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
            total_wrong += wrong_all;
            /* warm-up, and enough iterations per run for ~20 ms */
            double tw = timed(p, buf, 2);
            int iters = tw > 0 ? (int)(0.02 / tw) : 1000;
            if (iters < 1) iters = 1;
            if (iters > 2000) iters = 2000;
            for (int r = 0; r < o.runs; r++) {
                samples[r] = timed(p, buf, iters);
                if (sf) fprintf(sf, "%s,%zu,%d,%.3f,%.4f\n", algos[a], bytes, r, samples[r] * 1e6,
                                (double)bytes / samples[r] / 1e9);
            }
            qsort(samples, (size_t)o.runs, sizeof *samples, cmp_double);
            Row *row = &rows[a * nsizes + si];
            row->bytes = bytes;
            row->time = samples[o.runs / 2];
            row->algbw = (double)bytes / row->time / 1e9;
            row->busbw = row->algbw * 2.0 * (size - 1) / size;
            row->wrong = wrong_all;
            snprintf(chosen[a * nsizes + si], sizeof chosen[0], "%s", allreduce_plan_algorithm(p));
            if (rank == 0) {
                printf("| %zu | %zu | %s | %.1f | %.3f | %.3f | %lld |\n", bytes, n, chosen[a * nsizes + si],
                       row->time * 1e6, row->algbw, row->busbw, row->wrong);
                fflush(stdout);
            }
            allreduce_plan_free(p);
        }
    }
    if (rank == 0) {
        printf("\n### algbw (GB/s) side by side\n\n| size (B) |");
        for (int a = 0; a < nalgo; a++) printf(" %s |", algos[a]);
        int mpi_col = -1, auto_col = -1;
        for (int a = 0; a < nalgo; a++) {
            if (!strcmp(algos[a], "mpi")) mpi_col = a;
            if (!strcmp(algos[a], "auto")) auto_col = a;
        }
        if (mpi_col >= 0 && auto_col >= 0) printf(" auto/mpi |");
        printf("\n|---:|");
        for (int a = 0; a <= nalgo - (mpi_col >= 0 && auto_col >= 0 ? 0 : 1); a++) printf("---:|");
        printf("\n");
        for (int s = 0; s < nsizes; s++) {
            printf("| %zu |", rows[s].bytes);
            for (int a = 0; a < nalgo; a++) printf(" %.3f |", rows[a * nsizes + s].algbw);
            if (mpi_col >= 0 && auto_col >= 0)
                printf(" %.2f (%s) |", rows[auto_col * nsizes + s].algbw / rows[mpi_col * nsizes + s].algbw,
                       chosen[auto_col * nsizes + s]);
            printf("\n");
        }
        printf("\n#wrong over all points: %lld\n", total_wrong);
        if (o.csv) {
            FILE *f = fopen(o.csv, "w");
            if (!f) {
                basin_error(BASIN_ERR_RUNTIME, "cannot write %s", o.csv);
                write_failed = 1;
            } else {
                fprintf(f, "algo,chosen,ranks,bytes,count,time_us,algbw_gbs,busbw_gbs,wrong\n");
                for (int a = 0; a < nalgo; a++)
                    for (int s = 0; s < nsizes; s++) {
                        Row *r = &rows[a * nsizes + s];
                        fprintf(f, "%s,%s,%d,%zu,%zu,%.3f,%.4f,%.4f,%lld\n", algos[a], chosen[a * nsizes + s], size,
                                r->bytes, r->bytes / sizeof(float), r->time * 1e6, r->algbw, r->busbw, r->wrong);
                    }
                if (fclose(f)) {
                    basin_error(BASIN_ERR_RUNTIME, "cannot write %s", o.csv);
                    write_failed = 1;
                }
            }
        }
        if (sf && fclose(sf)) {
            basin_error(BASIN_ERR_RUNTIME, "cannot write %s", o.samples);
            write_failed = 1;
        }
    }
    free(rows);
    free(chosen);
    free(samples);
    if (o.window)
        allreduce_buffer_free(c, buf);
    else
        free(buf);
    allreduce_comm_free(c);
    if (MPI_Bcast(&write_failed, 1, MPI_INT, 0, MPI_COMM_WORLD) != MPI_SUCCESS) write_failed = 1;
    MPI_Finalize();
    return total_wrong || write_failed ? 1 : 0;
}
