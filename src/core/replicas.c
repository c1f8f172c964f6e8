/* Ranks agree: on their options when the job starts (a hash of the
 * configuration), and on their parameters every --check-every steps (a
 * checksum). A difference stops the job naming the ranks. */
#include <stdio.h>
#include <stdlib.h>

#include "core/error.h"
#include "core/trainer_internal.h"

/* Do all ranks hold the same h? Every rank learns it (*differ); when they do
 * not, rank 0 gathers the values and lists the ranks whose value differs
 * from its own ("1, 3") in list. */
static int compare_ranks(Trainer *t, unsigned long long h, int *differ, char *list, size_t len)
{
    unsigned long long lo = h, hi = h;
    BASIN_MPI(MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, t->comm));
    BASIN_MPI(MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, t->comm));
    *differ = lo != hi;
    list[0] = '\0';
    if (!*differ) return BASIN_OK;
    /* Every rank learns whether rank 0 could hold the values. */
    unsigned long long *all = NULL;
    int ok = 1;
    if (t->rank == 0) {
        all = basin_calloc((size_t)t->world, sizeof *all);
        ok = all != NULL;
    }
    BASIN_MPI(MPI_Bcast(&ok, 1, MPI_INT, 0, t->comm));
    if (!ok) return BASIN_ERR_RUNTIME;
    int rc = MPI_Gather(&h, 1, MPI_UNSIGNED_LONG_LONG, all, 1, MPI_UNSIGNED_LONG_LONG, 0, t->comm);
    if (rc != MPI_SUCCESS) {
        free(all);
        return basin_mpi_fail(rc, "MPI_Gather(hashes)", __FILE__, __LINE__);
    }
    size_t used = 0;
    for (int r = 1; all && r < t->world && used + 16 < len; r++)
        if (all[r] != all[0]) used += (size_t)snprintf(list + used, len - used, "%s%d", used ? ", " : "", r);
    free(all);
    return BASIN_OK;
}

int replicas_check_config(Trainer *t)
{
    int differ = 0;
    char list[512];
    TRY(compare_ranks(t, config_hash(t->cfg), &differ, list, sizeof list));
    if (!differ) return BASIN_OK;
    if (t->rank == 0)
        basin_error(BASIN_ERR_USAGE, "ranks were started with different options: rank %s's differ from rank 0's",
                    list);
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
    int differ = 0;
    char list[512];
    unsigned long long h = checksum(trainer_host_state(t, t->net->params, 0), t->net->n_params);
    if (t->net->n_state) { /* batch-norm running statistics, averaged before this */
        t->net->ops->to_host(t->state_host, t->net->state, t->net->n_state * sizeof(float));
        h ^= checksum(t->state_host, t->net->n_state) * 0x9e3779b97f4a7c15ull;
    }
    TRY(compare_ranks(t, h, &differ, list, sizeof list));
    if (!differ) return BASIN_OK;
    if (t->rank == 0)
        basin_error(BASIN_ERR_RUNTIME,
                    "replicas diverged at step %llu: the parameters of rank(s) %s differ from rank 0's",
                    (unsigned long long)step, list);
    return BASIN_ERR_RUNTIME;
}
