/* hier: hierarchical all-reduce over supernodes.
 *
 *   1. reduce-scatter inside the supernode through shared memory: local
 *      rank l adds shard l of every local rank's buffer, reading the peers'
 *      memory directly (MPI-3 shared window), into its own buffer;
 *   2. an all-reduce across supernodes on shard l, among the ranks with
 *      local index l (every local rank drives its own share of the
 *      inter-host traffic, in parallel): rhd for shards below
 *      HIER_RING_SHARD_BYTES, the pipelined ring (ring.c) from there on;
 *   3. all-gather inside the supernode: each rank copies every other shard
 *      straight from its owner's buffer.
 *
 *   supernode A (2 ranks)            supernode B (2 ranks)
 *   a0 [s0 s1]  a1 [s0 s1]           b0 [s0 s1]  b1 [s0 s1]
 *    1: a0 sums s0, a1 sums s1        b0 sums s0, b1 sums s1
 *    2: a0 <--rhd/ring on s0--> b0    a1 <--rhd/ring on s1--> b1
 *    3: a0 copies s1 from a1, a1 copies s0 from a0 (same in B)
 *
 * Shard ownership with uneven supernodes: the vector is cut into
 * Lmin = min over supernodes of the supernode size shards, and shard j is
 * owned by local rank j in every supernode. Every supernode has a local rank
 * j < Lmin, so the cross communicator of local index j has one member per
 * supernode and step 2 is well defined. Local ranks >= Lmin (which exist
 * only in the larger supernodes, where no peer with their index exists in
 * the smaller ones) own no shard: they contribute their data in step 1 and
 * copy the result in step 3. One supernode (step 2 skipped) and one rank per
 * supernode (steps 1 and 3 skipped: plain rhd or ring) are the two ends of
 * this.
 *
 * rhd or ring across supernodes. Both send 2 (S-1)/S of the shard; rhd
 * needs 2 log S latencies, the ring 2 (S-1), so rhd wins on small shards.
 * On large ones the ring wins by far: each rank sends only to its right
 * neighbour and receives from its left one (one-way traffic per
 * connection), and its pieces flow without a barrier between steps. On the
 * simulated cluster (4 hosts x 2 ranks, 1 Gbit/s, bench/results/allreduce.md)
 * hier with rhd across reached 0.045-0.053 GB/s at >= 16 MiB and with the
 * ring 0.073-0.077 GB/s (the link allows ~0.079 at TCP's 118 MB/s); rhd was
 * faster up to 512 KiB messages (256 KiB shards), the two were even at
 * 1-2 MiB, and the ring led from 4 MiB. Hence 1 MiB shards.
 *
 * Needs: commutative sum, ranks of a supernode on one host (comm.c checks).
 * Cost (n floats, L ranks per supernode, S supernodes, intra-host copies at
 * memory bandwidth, βm per float touched):
 *   step 1  (L+1) n/L βm + (L-1) n/L γ, no messages
 *   step 2  on n/L floats over S ranks, 2 (S-1)/S n/L β + (S-1)/S n/L γ and
 *           rhd: 2 log S α (+ folding when S is not a power of two), or
 *           ring: 2 (S-1) α, the pieces' extra messages overlapped
 *   step 3  2 (L-1)/L n βm
 *   plus three shared-memory barriers (entry, after 2, exit).
 * Each host moves 2 (S-1)/S n floats over its link, the minimum.
 * Memory: zero-copy when the buffer (or slice) is in-place in an
 * allreduce_buffer_alloc buffer; otherwise the plan holds an n-float staging
 * segment in a shared window (skipped with ALLREDUCE_WINDOW_ONLY) and the
 * data is copied in once; the result is written straight to recv in step 3.
 *
 * Same bits everywhere: each element is summed once in step 1 by its shard
 * owner in local-rank order, once per rhd block in step 2, then only copied.
 *
 * Reduced-precision wire (ALLREDUCE_WIRE_BF16/FP16): only step 2 changes.
 * Its messages between supernodes carry 16-bit values, added in fp32, and
 * each cross-step owner rounds its block once before the all-gather (rhd.c,
 * ring.c); steps 1 and 3 stay fp32 in shared memory, so the result is the
 * fp32 sum of each supernode's fp32 sums, rounded on the way between
 * supernodes, and the same bits on every rank. Each host then moves
 * 2 (S-1)/S n 16-bit values over its link: half the bytes.
 */
#include "allreduce/internal.h"

#include <stdlib.h>
#include <string.h>

/* Shards of at least this many bytes go around the ring across supernodes. */
enum { HIER_RING_SHARD_BYTES = 1 << 20 };

typedef struct Hier {
    size_t count;
    int L, l, nshard, S;
    size_t *off;          /* (nshard + 1) shard j is [off[j], off[j+1]) */
    ArRhd *cross;         /* across supernodes on this rank's shard: rhd, */
    ArRing *cross_ring;   /* or the ring (one of the two, or neither) */
    int staging;          /* window index of the copy-in segment, or -1 */
    const float **src;    /* (L) scratch: the peers' shard pointers */
} Hier;

static void hier_free_state(AllreduceComm *c, Hier *h)
{
    if (!h) return;
    if (h->staging >= 0) ar_window_release(c, h->staging);
    ar_rhd_free_on(h->cross);
    ar_ring_free_on(h->cross_ring);
    free(h->off);
    free(h->src);
    free(h);
}

/* hier_free has no AllreduceComm argument in the shared signature, so the
 * state keeps one. */
typedef struct HierState {
    AllreduceComm *c;
    Hier *h;
} HierState;

static void hier_free(void *state)
{
    HierState *s = state;
    if (!s) return;
    hier_free_state(s->c, s->h);
    free(s);
}

static int hier_plan(AllreduceComm *c, size_t n, unsigned flags, void **state)
{
    int st = BASIN_ERR_RUNTIME;
    HierState *s = basin_calloc(1, sizeof *s);
    Hier *h = basin_calloc(1, sizeof *h);
    if (!s || !h) {
        free(s);
        free(h);
        return BASIN_ERR_RUNTIME;
    }
    s->c = c;
    s->h = h;
    h->count = n;
    h->L = c->topo.local_size;
    h->l = c->topo.local_rank;
    h->nshard = c->topo.min_local_size;
    h->S = c->topo.nodes;
    h->staging = -1;
    h->off = basin_calloc((size_t)h->nshard + 1, sizeof *h->off);
    h->src = basin_calloc((size_t)h->L, sizeof *h->src);
    if (!h->off || !h->src) goto fail;
    for (int j = 0; j <= h->nshard; j++) h->off[j] = allreduce_part_start(n, (size_t)h->nshard, (size_t)j);
    if (h->l < h->nshard && h->S > 1) {
        /* Every member of this cross communicator has the same shard count,
         * so all choose alike. */
        size_t cnt = h->off[h->l + 1] - h->off[h->l];
        if (cnt * sizeof(float) >= HIER_RING_SHARD_BYTES)
            st = ar_ring_plan_on(c, c->cross, c->cross_world, cnt, ar_wire_kind(flags), &h->cross_ring);
        else
            st = ar_rhd_plan_on(c, c->cross, c->cross_world, cnt, ar_wire_kind(flags), &h->cross);
        if (st) goto fail;
    }
    if (h->L > 1 && !(flags & ALLREDUCE_WINDOW_ONLY))
        if ((st = ar_window_create(c, n, &h->staging))) goto fail;
    *state = s;
    return BASIN_OK;
fail:
    hier_free(s);
    return st;
}

enum { BLOCK = 1024 };

/* dst = src[0] + src[1] + ... + src[L-1], in that order, element by element.
 * dst may be one of the sources (the same elements), never partly. */
static void reduce_sources(float *dst, const float *const *src, int L, size_t n)
{
    if (L == 2) {
        if (dst == src[0])
            ar_add(dst, src[1], n);
        else if (dst == src[1])
            ar_add(dst, src[0], n); /* a + b == b + a, bit for bit */
        else
            ar_add3(dst, src[0], src[1], n);
        return;
    }
    float acc[BLOCK];
    for (size_t b = 0; b < n; b += BLOCK) {
        size_t m = n - b < BLOCK ? n - b : BLOCK;
        const float *s0 = src[0] + b, *s1 = src[1] + b;
        for (size_t i = 0; i < m; i++) acc[i] = s0[i] + s1[i];
        for (int j = 2; j < L; j++) {
            const float *sj = src[j] + b;
            for (size_t i = 0; i < m; i++) acc[i] += sj[i];
        }
        memcpy(dst + b, acc, m * sizeof(float));
    }
}

/* Step 2 on this rank's shard. */
static int cross_run(AllreduceComm *c, Hier *h, const float *send, float *recv)
{
    if (h->cross_ring) return ar_ring_run_on(c, h->cross_ring, send, recv);
    return ar_rhd_run_on(c, h->cross, send, recv);
}

static const float *peer_data(AllreduceComm *c, int j)
{
    const ArSlot *s = c->slots[j];
    return c->wins[s->win].base[j] + s->offset;
}

/* Publish where this rank's data (and params) live, wait for the supernode,
 * and check that every local rank runs the same collective. */
static int hier_enter(AllreduceComm *c, Hier *h, int win, size_t offset, int pwin, size_t poffset)
{
    ArSlot *mine = c->slots[h->l];
    mine->win = win;
    mine->offset = offset;
    mine->pwin = pwin;
    mine->poffset = poffset;
    mine->count = h->count;
    mine->seq = c->seq;
    ar_node_barrier(c, "hier entry barrier");
    for (int j = 0; j < h->L; j++)
        if (c->slots[j]->count != h->count || c->slots[j]->seq != c->seq)
            return BASIN_FAIL(BASIN_ERR_RUNTIME,
                              "hier: local rank %d runs collective #%llu on %llu floats, this rank #%llu on %zu",
                              j, (unsigned long long)c->slots[j]->seq, (unsigned long long)c->slots[j]->count,
                              (unsigned long long)c->seq, h->count);
    return BASIN_OK;
}

/* Step 1 on data[lo, hi): the sum of every local rank's elements. */
static void reduce_range(AllreduceComm *c, Hier *h, float *data, size_t lo, size_t hi)
{
    for (int j = 0; j < h->L; j++) h->src[j] = j == h->l ? data + lo : peer_data(c, j) + lo;
    reduce_sources(data + lo, h->src, h->L, hi - lo);
}

/* Step 1 and 2 on this rank's shard of data; its [lo, hi) through *lo, *hi
 * (empty when it owns none). */
static int reduce_own_shard(AllreduceComm *c, Hier *h, float *data, size_t *lo_out, size_t *hi_out)
{
    *lo_out = *hi_out = 0;
    if (h->l >= h->nshard) return BASIN_OK;
    size_t lo = h->off[h->l], cnt = h->off[h->l + 1] - lo;
    if (!cnt) return BASIN_OK;
    reduce_range(c, h, data, lo, lo + cnt);
    if (h->S > 1) TRY(cross_run(c, h, data + lo, data + lo));
    *lo_out = lo;
    *hi_out = lo + cnt;
    return BASIN_OK;
}

/* Step 3: copy every shard this rank does not own from its owner's buffer
 * (window slot fields win/offset, or pwin/poffset when params is set). */
static void gather_shards(AllreduceComm *c, Hier *h, float *dst, int params)
{
    for (int j = 0; j < h->nshard; j++) {
        size_t lo = h->off[j], cnt = h->off[j + 1] - lo;
        if (!cnt || j == h->l) continue;
        const ArSlot *s = c->slots[j];
        const float *src = params ? c->wins[s->pwin].base[j] + s->poffset : peer_data(c, j);
        memcpy(dst + lo, src + lo, cnt * sizeof(float));
    }
}

static int hier_run(AllreduceComm *c, void *state, const float *send, float *recv)
{
    Hier *h = ((HierState *)state)->h;
    size_t n = h->count;
    if (n == 0) return BASIN_OK;
    if (h->L == 1) {
        if (h->S == 1) {
            if (send != recv) memcpy(recv, send, n * sizeof(float));
            return BASIN_OK;
        }
        return cross_run(c, h, send, recv);
    }

    /* Where this rank's data lives for the peers to read. */
    size_t offset = 0;
    int win = ar_window_of(c, recv, n, &offset);
    float *data;
    if (win >= 0) {
        data = recv;
        if (send != recv) memcpy(recv, send, n * sizeof(float));
    } else {
        if (h->staging < 0)
            return basin_error(BASIN_ERR_USAGE, "hier planned with ALLREDUCE_WINDOW_ONLY ran on a buffer that is "
                                                "not in place in an allreduce_buffer_alloc buffer");
        win = h->staging;
        offset = 0;
        data = c->wins[win].base[h->l];
        memcpy(data, send, n * sizeof(float));
    }
    TRY(hier_enter(c, h, win, offset, -1, 0));
    size_t lo, hi;
    TRY(reduce_own_shard(c, h, data, &lo, &hi));
    ar_node_barrier(c, "hier all-gather barrier");
    if (data != recv && hi > lo) memcpy(recv + lo, data + lo, (hi - lo) * sizeof(float));
    gather_shards(c, h, recv, 0);
    ar_node_barrier(c, "hier exit barrier");
    return BASIN_OK;
}

static int window_of_both(AllreduceComm *c, Hier *h, const float *grads, const float *params, int *win,
                          size_t *offset, int *pwin, size_t *poffset)
{
    *win = ar_window_of(c, grads, h->count, offset);
    *pwin = params ? ar_window_of(c, params, h->count, poffset) : -1;
    if (*win < 0 || (params && *pwin < 0))
        return basin_error(BASIN_ERR_USAGE, "hier: a sharded update needs its buffers in place in "
                                            "allreduce_buffer_alloc buffers");
    return BASIN_OK;
}

/* Floats summed per call of the update function inside one supernode. */
enum { UPDATE_BLOCK = 8192 };

static int hier_run_update(AllreduceComm *c, void *state, float *grads, float *params, AllreduceUpdateFn fn,
                           void *arg)
{
    Hier *h = ((HierState *)state)->h;
    size_t n = h->count;
    if (n == 0) return BASIN_OK;
    if (h->L == 1) {
        if (h->S > 1) TRY(cross_run(c, h, grads, grads));
        fn(arg, 0, n);
        return BASIN_OK;
    }
    int win, pwin;
    size_t offset, poffset;
    TRY(window_of_both(c, h, grads, params, &win, &offset, &pwin, &poffset));
    TRY(hier_enter(c, h, win, offset, pwin, poffset));
    if (h->S == 1 && h->l < h->nshard) {
        /* One supernode: sum and update block by block, so the update reads
         * each sum while it is still in cache. */
        size_t lo = h->off[h->l], hi = h->off[h->l + 1];
        for (size_t b = lo; b < hi; b += UPDATE_BLOCK) {
            size_t e = hi - b < UPDATE_BLOCK ? hi : b + UPDATE_BLOCK;
            reduce_range(c, h, grads, b, e);
            fn(arg, b, e);
        }
    } else {
        size_t lo, hi;
        TRY(reduce_own_shard(c, h, grads, &lo, &hi));
        if (hi > lo) fn(arg, lo, hi);
    }
    ar_node_barrier(c, "hier all-gather barrier");
    gather_shards(c, h, params, 1);
    ar_node_barrier(c, "hier exit barrier");
    return BASIN_OK;
}

static int hier_gather(AllreduceComm *c, void *state, float *buf)
{
    Hier *h = ((HierState *)state)->h;
    if (h->count == 0 || h->L == 1) return BASIN_OK;
    int win, pwin;
    size_t offset, poffset;
    TRY(window_of_both(c, h, buf, NULL, &win, &offset, &pwin, &poffset));
    TRY(hier_enter(c, h, win, offset, -1, 0));
    gather_shards(c, h, buf, 0);
    ar_node_barrier(c, "hier exit barrier");
    return BASIN_OK;
}

const AllreduceAlgo ar_algo_hier = {.name = "hier",
                                    .plan = hier_plan,
                                    .run = hier_run,
                                    .free = hier_free,
                                    .run_update = hier_run_update,
                                    .gather = hier_gather};
