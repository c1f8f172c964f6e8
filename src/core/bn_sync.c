/* Batch normalization across ranks.
 *
 * --sync-bn: every bn layer's per-channel sums (forward: sum and sum of
 * squares; backward: the sums dx needs) are summed over the ranks each
 * step, so W ranks normalise over the global batch exactly as one rank
 * would. The sums are gathered and added in rank order on every rank, so
 * every replica gets the same bits (an MPI_Allreduce promises no order).
 *
 * Without it each rank normalises over its own samples and keeps its own
 * running statistics; the running statistics are then averaged across the
 * ranks (in double: exact when they already agree) before a checkpoint, an
 * evaluation or a replica check, so that every replica evaluates, saves and
 * checksums the same state. The running statistics never enter a training
 * step, so this changes no parameter.
 *
 * The collectives go over a communicator of their own: the gradient
 * all-reduce's progress thread may be using the others at the same time.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/trainer_internal.h"

/* Largest per-layer sum vector: 2 C doubles for the widest bn layer. */
static size_t widest_bn(const Net *net)
{
    size_t c = 0;
    for (int i = 0; i < net->n_layers; i++)
        if (net->layers[i].kind == LAYER_BATCHNORM && (size_t)net->layers[i].in.c > c)
            c = (size_t)net->layers[i].in.c;
    return 2 * c;
}

int bn_sync_setup(Trainer *t)
{
    t->bn_comm = MPI_COMM_NULL;
    if (!t->net->n_state || t->world == 1) return BASIN_OK;
    BASIN_MPI(MPI_Comm_dup(t->comm, &t->bn_comm));
    BASIN_MPI(MPI_Comm_set_errhandler(t->bn_comm, MPI_ERRORS_RETURN));
    size_t n = widest_bn(t->net), w = (size_t)t->world;
    size_t s = t->net->n_state;
    t->bn_host = basin_malloc(n * sizeof(double));
    t->bn_all = basin_malloc(n * w * sizeof(double));
    t->state_host = basin_malloc(s * sizeof(float));
    t->state_all = basin_malloc(s * w * sizeof(float));
    if (!t->bn_host || !t->bn_all || !t->state_host || !t->state_all) return BASIN_ERR_RUNTIME;
    return BASIN_OK;
}

void bn_sync_free(Trainer *t)
{
    if (t->bn_comm != MPI_COMM_NULL) MPI_Comm_free(&t->bn_comm);
    free(t->bn_host), free(t->bn_all), free(t->state_host), free(t->state_all);
    t->bn_host = t->bn_all = NULL, t->state_host = t->state_all = NULL;
}

/* StatsSumFn of --sync-bn: buf (n doubles, backend memory) becomes the sum
 * over the ranks. A failure is kept in t->bn_status for the step to return. */
void bn_stats_sum(void *arg, double *buf, size_t n)
{
    Trainer *t = arg;
    if (t->bn_status) return; /* the step fails anyway; keep the ranks' calls matched */
    const Ops *ops = t->net->ops;
    ops->to_host(t->bn_host, buf, n * sizeof(double));
    int rc = MPI_Allgather(t->bn_host, (int)n, MPI_DOUBLE, t->bn_all, (int)n, MPI_DOUBLE, t->bn_comm);
    if (rc != MPI_SUCCESS) {
        t->bn_status = basin_mpi_fail(rc, "MPI_Allgather (batch-norm statistics)", __FILE__, __LINE__);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        double s = 0.0;
        for (int r = 0; r < t->world; r++) s += t->bn_all[(size_t)r * n + i];
        t->bn_host[i] = s;
    }
    ops->to_device(buf, t->bn_host, n * sizeof(double));
}

int bn_average_state(Trainer *t)
{
    Net *net = t->net;
    if (!net->n_state || t->world == 1 || t->cfg->sync_bn) return BASIN_OK;
    size_t n = net->n_state;
    net->ops->to_host(t->state_host, net->state, n * sizeof(float));
    BASIN_MPI(MPI_Allgather(t->state_host, (int)n, MPI_FLOAT, t->state_all, (int)n, MPI_FLOAT, t->bn_comm));
    for (size_t i = 0; i < n; i++) {
        double s = 0.0;
        for (int r = 0; r < t->world; r++) s += (double)t->state_all[(size_t)r * n + i];
        t->state_host[i] = (float)(s / (double)t->world);
    }
    net->ops->to_device(net->state, t->state_host, n * sizeof(float));
    return BASIN_OK;
}
