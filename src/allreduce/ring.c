/* ring: reduce-scatter around a ring, then all-gather around it.
 *
 * Needs: a commutative sum; any p and any count (empty blocks send nothing).
 *
 * Cost (n floats, p ranks): 2(p-1) α + 2 (p-1)/p n β + (p-1)/p n γ.
 * Bandwidth-optimal like rhd but with p-1 latencies per phase instead of
 * log p, so it is a large-message option; every rank sends to one neighbour
 * only, which suits links where each host has one fixed path.
 * Memory: one scratch block of ceil(n/p) floats, allocated at plan time.
 *
 * Block b is reduced along the ring ending at rank b-1, which adds the last
 * contribution; that rank owns it and the all-gather only copies it, so all
 * ranks hold the same bits.
 *
 *   p = 3, step 0 of the reduce-scatter      after p-1 steps
 *   r0 --B0--> r1 --B1--> r2 --B2--> r0      r0 owns B1, r1 owns B2, r2 owns B0
 */
#include "allreduce/internal.h"

#include <stdlib.h>
#include <string.h>

enum { TAG_RING_RS = 0x4301, TAG_RING_AG = 0x4302 };

typedef struct Ring {
    size_t count;
    int rank, size, left, right, left_world;
    size_t *off; /* (size + 1) block b is [off[b], off[b+1]) */
    float *tmp;
    MPI_Request *reqs;
} Ring;

static void ring_free(void *state)
{
    Ring *r = state;
    if (!r) return;
    free(r->off);
    free(r->tmp);
    free(r->reqs);
    free(r);
}

static int ring_plan(AllreduceComm *c, size_t n, unsigned flags, void **state)
{
    Ring *r = basin_calloc(1, sizeof *r);
    if (!r) return BASIN_ERR_RUNTIME;
    r->count = n;
    r->rank = c->topo.world_rank;
    r->size = c->topo.world_size;
    r->left = (r->rank + r->size - 1) % r->size;
    r->right = (r->rank + 1) % r->size;
    r->left_world = r->left;
    size_t p = (size_t)r->size, block = (n + p - 1) / p;
    r->off = basin_calloc(p + 1, sizeof *r->off);
    r->tmp = basin_aligned_alloc(block * sizeof(float));
    r->reqs = basin_calloc(2 * ar_chunks(c, block) + 2, sizeof *r->reqs);
    if (!r->off || !r->tmp || !r->reqs) {
        ring_free(r);
        return BASIN_ERR_RUNTIME;
    }
    for (size_t b = 0; b <= p; b++) r->off[b] = ar_part_start(n, p, b);
    *state = r;
    return BASIN_OK;
}

static int ring_run(AllreduceComm *c, void *state, const float *send, float *recv)
{
    Ring *r = state;
    size_t n = r->count;
    int p = r->size;
    if (n == 0) return BASIN_OK;
    if (p == 1) {
        if (send != recv) memcpy(recv, send, n * sizeof(float));
        return BASIN_OK;
    }
    /* Own contributions are read from send, partial sums live in recv, so
     * out-of-place needs no copy-in. */
    for (int k = 0; k < p - 1; k++) {
        int sb = (r->rank - k + p) % p, rb = (r->rank - k - 1 + 2 * p) % p;
        const float *sbuf = (k == 0 ? send : recv) + r->off[sb];
        size_t scnt = r->off[sb + 1] - r->off[sb], rcnt = r->off[rb + 1] - r->off[rb];
        TRY(ar_exchange(c, c->world, sbuf, scnt, r->right, r->tmp, rcnt, r->left, TAG_RING_RS, r->reqs,
                        r->left_world, "ring reduce-scatter", k));
        ar_add3(recv + r->off[rb], send + r->off[rb], r->tmp, rcnt);
    }
    for (int k = 0; k < p - 1; k++) {
        int sb = (r->rank + 1 - k + p) % p, rb = (r->rank - k + p) % p;
        TRY(ar_exchange(c, c->world, recv + r->off[sb], r->off[sb + 1] - r->off[sb], r->right,
                        recv + r->off[rb], r->off[rb + 1] - r->off[rb], r->left, TAG_RING_AG, r->reqs,
                        r->left_world, "ring all-gather", k));
    }
    return BASIN_OK;
}

const AllreduceAlgo ar_algo_ring = {"ring", ring_plan, ring_run, ring_free};
