/* Ranks agree: on their options when the job starts (a hash of the
 * configuration), and on their parameters every --check-every steps (a
 * checksum). A difference stops the job naming the ranks. */
#include <stdio.h>
#include <stdlib.h>

#include "core/error.h"
#include "core/trainer_internal.h"

/* Rank 0 gathers one value per rank, to name the ones that differ. Every
 * rank learns whether rank 0 could hold them. */
static int gather_hashes(Trainer *t, unsigned long long h, unsigned long long **all)
{
    *all = NULL;
    int ok = 1;
    if (t->rank == 0) {
        *all = basin_calloc((size_t)t->world, sizeof **all);
        ok = *all != NULL;
    }
    BASIN_MPI(MPI_Bcast(&ok, 1, MPI_INT, 0, t->comm));
    if (!ok) return BASIN_ERR_RUNTIME;
    BASIN_MPI(MPI_Gather(&h, 1, MPI_UNSIGNED_LONG_LONG, *all, 1, MPI_UNSIGNED_LONG_LONG, 0, t->comm));
    return BASIN_OK;
}

/* Every rank learns whether all ranks hold the same h. */
static int all_equal(Trainer *t, unsigned long long h, int *equal)
{
    unsigned long long lo = h, hi = h;
    BASIN_MPI(MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, t->comm));
    BASIN_MPI(MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, t->comm));
    *equal = lo == hi;
    return BASIN_OK;
}

int replicas_check_config(Trainer *t)
{
    unsigned long long h = config_hash(t->cfg);
    int equal = 0;
    TRY(all_equal(t, h, &equal));
    if (equal) return BASIN_OK;
    unsigned long long *all;
    TRY(gather_hashes(t, h, &all));
    if (t->rank == 0) {
        int other = 0;
        for (int r = 1; r < t->world; r++)
            if (all[r] != all[0]) {
                other = r;
                break;
            }
        basin_error(BASIN_ERR_USAGE, "ranks were started with different options: rank %d's differ from rank 0's",
                    other);
    }
    free(all);
    return BASIN_ERR_USAGE;
}

static uint64_t checksum(const float *x, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ull;
    const uint32_t *w = (const uint32_t *)x;
    for (size_t i = 0; i < n; i++) {
        h ^= w[i] + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
        h *= 0xff51afd7ed558ccdull;
    }
    return h;
}

int replicas_check(Trainer *t, uint64_t step)
{
    if (t->world == 1) return BASIN_OK;
    unsigned long long h = checksum(trainer_host_state(t, t->net->params, 0), t->net->n_params);
    int equal = 0;
    TRY(all_equal(t, h, &equal));
    if (equal) return BASIN_OK;
    unsigned long long *all;
    TRY(gather_hashes(t, h, &all));
    if (t->rank == 0) {
        char list[512] = "";
        size_t used = 0;
        for (int r = 1; r < t->world && used < sizeof list - 16; r++)
            if (all[r] != all[0]) used += (size_t)snprintf(list + used, sizeof list - used, "%s%d", used ? ", " : "", r);
        basin_error(BASIN_ERR_RUNTIME,
                    "replicas diverged at step %llu: the parameters of rank(s) %s differ from rank 0's",
                    (unsigned long long)step, list);
    }
    free(all);
    return BASIN_ERR_RUNTIME;
}
