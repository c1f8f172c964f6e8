/* ring: reduce-scatter around a ring, then all-gather around it, pipelined.
 *
 * Needs: a commutative sum; any p and any count (empty pieces are sent as
 * empty messages, which keeps the matching simple).
 *
 * Cost (n floats, p ranks, C pieces per block):
 *   2(p-1) α (+ 2(p-1)(C-1) α of extra messages, overlapped with transfers)
 *   + 2 (p-1)/p n β + (p-1)/p n γ.
 * Bandwidth-optimal like rhd, with p-1 latencies per phase instead of log p,
 * so it is the large-message option. Every rank sends to its right
 * neighbour and receives from its left one only: each connection carries
 * data one way, which suits links where each host has one path (on the
 * simulated 1 Gbit/s cluster rhd's two-way exchanges reached about half the
 * link rate, this ring ~95%).
 *
 * Pipelining. Each block is cut into C pieces and the 2(p-1) steps become
 * one stream of 2(p-1)C pieces from the left and one to the right. Piece i
 * of the outgoing stream (i >= C) is exactly piece i - C of the incoming one
 * once reduced (reduce-scatter) or received (all-gather), so it is sent as
 * soon as that piece is in: there is no barrier between steps, the addition
 * of one piece overlaps the transfer of the next, and a slow neighbour
 * delays only the pieces that depend on it. Up to W receives are posted in
 * advance so that the data of large (rendezvous) messages can flow at once.
 *
 * Memory: W = max(C, 2) landing slots of one piece (about one block,
 * ceil(n/p) floats; two when a block is a single piece) and one request per
 * piece sent, all allocated at plan time; a 16-bit wire adds W 16-bit
 * landing slots and 2W 16-bit outgoing ones.
 *
 * Block b is reduced along the ring ending at rank b-1, which adds the last
 * contribution; that rank owns it and the all-gather only copies it, so all
 * ranks hold the same bits whatever C is (pieces change where messages are
 * cut, never which additions are made or their order).
 *
 *   p = 3, step 0 of the reduce-scatter      after p-1 steps
 *   r0 --B0--> r1 --B1--> r2 --B2--> r0      r0 owns B1, r1 owns B2, r2 owns B0
 *
 *   pieces of step k+1 follow pieces of step k as they arrive:
 *   from left   [k0 k1 k2 k3][k+1 0 ...
 *   to right          [k+1 0][k+1 1][k+1 2] ...
 */
#include "allreduce/internal.h"

#include <stdlib.h>
#include <string.h>

enum { TAG_RING = 0x4301 };

/* Pieces of about this size: large enough that the per-message cost (a
 * rendezvous handshake on TCP) is small against the transfer, small enough
 * that reduction and transfer overlap and several are in flight. */
enum { RING_PIECE_BYTES = 512 << 10, RING_MAX_PIECES = 64 };

struct ArRing {
    MPI_Comm comm;
    size_t count;
    int rank, size, left, right, left_world, right_world;
    int pieces;          /* C: pieces per block */
    int window;          /* W: receives posted ahead */
    int nstream;         /* 2 (p-1) C */
    size_t *off;         /* (size + 1) block b is [off[b], off[b+1]) */
    size_t slot_count;   /* floats per landing slot: the largest piece */
    float *tmp;          /* (window * slot_count) landing slots */
    MPI_Request *sreq;   /* (nstream) one per piece sent */
    MPI_Request *rreq;   /* (window) one per landing slot */
    ArWire wire;         /* message format */
    uint16_t *w_send;    /* 16-bit wire: (2 window * slot_count) outgoing pieces */
    uint16_t *w_recv;    /* (window * slot_count) landing slots */
};

void ar_ring_free_on(ArRing *r)
{
    if (!r) return;
    free(r->off);
    free(r->tmp);
    free(r->sreq);
    free(r->rreq);
    free(r->w_send);
    free(r->w_recv);
    free(r);
}

int ar_ring_plan_on(AllreduceComm *c, MPI_Comm comm, const int *world_of, size_t n, int wire, ArRing **out)
{
    int rank, size;
    BASIN_MPI(MPI_Comm_rank(comm, &rank));
    BASIN_MPI(MPI_Comm_size(comm, &size));
    ArRing *r = basin_calloc(1, sizeof *r);
    if (!r) return BASIN_ERR_RUNTIME;
    r->comm = comm;
    r->count = n;
    r->wire.kind = wire;
    r->rank = rank;
    r->size = size;
    r->left = (rank + size - 1) % size;
    r->right = (rank + 1) % size;
    r->left_world = world_of ? world_of[r->left] : r->left;
    r->right_world = world_of ? world_of[r->right] : r->right;
    size_t p = (size_t)size, block = (n + p - 1) / p;
    size_t piece = RING_PIECE_BYTES / sizeof(float);
    size_t C = (block + piece - 1) / piece;
    if (C > RING_MAX_PIECES) C = RING_MAX_PIECES;
    /* Every piece must fit one MPI call. */
    if (C < (block + c->max_msg - 1) / c->max_msg) C = (block + c->max_msg - 1) / c->max_msg;
    if (C < 1) C = 1;
    if (C > (size_t)INT32_MAX / (4 * p)) {
        free(r);
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "ring: %zu floats in messages of %zu is too many pieces", n,
                          c->max_msg);
    }
    r->pieces = (int)C;
    r->nstream = 2 * (size - 1) * r->pieces;
    r->window = r->pieces < 2 ? 2 : r->pieces;
    r->slot_count = (block + C - 1) / C;
    r->off = basin_calloc(p + 1, sizeof *r->off);
    r->tmp = basin_aligned_alloc((size_t)r->window * r->slot_count * sizeof(float));
    r->sreq = basin_calloc((size_t)(r->nstream ? r->nstream : 1), sizeof *r->sreq);
    r->rreq = basin_calloc((size_t)r->window, sizeof *r->rreq);
    if (!r->off || !r->tmp || !r->sreq || !r->rreq) {
        ar_ring_free_on(r);
        return BASIN_ERR_RUNTIME;
    }
    if (wire != AR_WIRE_FP32 && size > 1) {
        size_t slots = (size_t)r->window * r->slot_count;
        r->w_send = basin_aligned_alloc((slots ? 2 * slots : 1) * sizeof(uint16_t));
        r->w_recv = basin_aligned_alloc((slots ? slots : 1) * sizeof(uint16_t));
        if (!r->w_send || !r->w_recv) {
            ar_ring_free_on(r);
            return BASIN_ERR_RUNTIME;
        }
    }
    for (size_t b = 0; b <= p; b++) r->off[b] = allreduce_part_start(n, p, b);
    *out = r;
    return BASIN_OK;
}

/* Piece i of a stream: block b, floats [*lo, *lo + *cnt). */
static void piece_of(const ArRing *r, int b, int j, size_t *lo, size_t *cnt)
{
    size_t len = r->off[b + 1] - r->off[b], C = (size_t)r->pieces;
    size_t a = allreduce_part_start(len, C, (size_t)j), e = allreduce_part_start(len, C, (size_t)j + 1);
    *lo = r->off[b] + a;
    *cnt = e - a;
}

/* Stream piece i: reduce-scatter for i < (p-1)C, then all-gather; step k,
 * piece j; the block sent to the right and the block received from the left. */
static void stream_pos(const ArRing *r, int i, int *rs, int *k, int *j, int *sblock, int *rblock)
{
    int p = r->size, half = (p - 1) * r->pieces;
    *rs = i < half;
    int m = *rs ? i : i - half;
    *k = m / r->pieces;
    *j = m % r->pieces;
    int shift = *rs ? 0 : 1;
    *sblock = ((r->rank + shift - *k) % p + p) % p;
    *rblock = ((r->rank + shift - *k - 1) % p + p) % p;
}

static int wait_req(AllreduceComm *c, MPI_Request *req, const char *phase, int step, int peer_world)
{
    int done = 0;
    BASIN_MPI(MPI_Test(req, &done, MPI_STATUS_IGNORE));
    if (done) return BASIN_OK;
    ar_watch_begin(c, phase, step, peer_world);
    int rc = ar_waitall(c, 1, req);
    ar_watch_end(c);
    if (rc != MPI_SUCCESS) return basin_mpi_fail(rc, "MPI_Testall", __FILE__, __LINE__);
    return BASIN_OK;
}

static int post_send(AllreduceComm *c, ArRing *r, const float *send, float *recv, int i)
{
    int rs, k, j, sb, rb;
    stream_pos(r, i, &rs, &k, &j, &sb, &rb);
    size_t lo, cnt;
    piece_of(r, sb, j, &lo, &cnt);
    const float *src = (rs && k == 0 ? send : recv) + lo;
    if (r->wire.kind != AR_WIRE_FP32) {
        /* The piece is rounded into slot i % 2W, free once send i - 2W is
         * out. Send i is posted when piece i - C has arrived, so with W = C
         * slots it would wait for the send C pieces back, which may still
         * be in the network while the left neighbour is ahead: 2W slots
         * (the bytes of W fp32 slots) keep the sends from waiting. */
        const int slots = 2 * r->window;
        if (i >= slots) TRY(wait_req(c, &r->sreq[i - slots], "ring send", k, r->right_world));
        uint16_t *w = r->w_send + (size_t)(i % slots) * r->slot_count;
        ar_wire_pack(&r->wire, w, src, cnt);
        BASIN_MPI(MPI_Isend(w, (int)cnt, MPI_UINT16_T, r->right, TAG_RING, r->comm, &r->sreq[i]));
        return BASIN_OK;
    }
    /* cnt <= slot_count <= max_msg <= INT_MAX (plan), so the int is exact. */
    BASIN_MPI(MPI_Isend(src, (int)cnt, MPI_FLOAT, r->right, TAG_RING, r->comm, &r->sreq[i]));
    return BASIN_OK;
}

/* Post receive i. An all-gather piece lands in recv, where the same piece
 * was sent (reduce-scatter step k sends block rank-k, all-gather step k
 * receives it): that send must be complete first. */
static int post_recv(AllreduceComm *c, ArRing *r, float *recv, int i)
{
    int rs, k, j, sb, rb;
    stream_pos(r, i, &rs, &k, &j, &sb, &rb);
    size_t lo, cnt;
    piece_of(r, rb, j, &lo, &cnt);
    float *dst = recv + lo;
    if (r->wire.kind != AR_WIRE_FP32) {
        /* Every piece lands in a 16-bit slot, never in recv. */
        uint16_t *w = r->w_recv + (size_t)(i % r->window) * r->slot_count;
        BASIN_MPI(MPI_Irecv(w, (int)cnt, MPI_UINT16_T, r->left, TAG_RING, r->comm, &r->rreq[i % r->window]));
        return BASIN_OK;
    }
    if (rs) {
        dst = r->tmp + (size_t)(i % r->window) * r->slot_count;
    } else {
        int twin = i - (r->size - 1) * r->pieces;
        TRY(wait_req(c, &r->sreq[twin], "ring reduce-scatter send", k, r->right_world));
    }
    BASIN_MPI(MPI_Irecv(dst, (int)cnt, MPI_FLOAT, r->left, TAG_RING, r->comm, &r->rreq[i % r->window]));
    return BASIN_OK;
}

int ar_ring_run_on(AllreduceComm *c, ArRing *r, const float *send, float *recv)
{
    size_t n = r->count;
    int p = r->size, C = r->pieces, N = r->nstream;
    if (n == 0) return BASIN_OK;
    if (p == 1) {
        if (send != recv) memcpy(recv, send, n * sizeof(float));
        return BASIN_OK;
    }
    /* Own contributions are read from send, partial sums live in recv, so
     * out-of-place needs no copy-in. Sends are posted before receives so
     * that the send an all-gather receive waits for (post_recv) is out:
     * receive i needs send i - (p-1)C, and W <= pC keeps it behind. */
    int sent = 0, posted = 0, wire = r->wire.kind != AR_WIRE_FP32;
    if (wire) TRY(ar_wire_scale(c, r->comm, p, send, n, &r->wire));
    for (; sent < C; sent++) TRY(post_send(c, r, send, recv, sent));
    for (; posted < N && posted < r->window; posted++) TRY(post_recv(c, r, recv, posted));
    for (int i = 0; i < N; i++) {
        int rs, k, j, sb, rb;
        stream_pos(r, i, &rs, &k, &j, &sb, &rb);
        TRY(wait_req(c, &r->rreq[i % r->window], rs ? "ring reduce-scatter" : "ring all-gather", k, r->left_world));
        if (wire) {
            /* 16-bit pieces are added (or copied) in fp32; the last step of
             * the reduce-scatter completes the block this rank owns, which
             * it rounds once so the all-gather hands out its exact bits. */
            size_t lo, cnt;
            piece_of(r, rb, j, &lo, &cnt);
            const uint16_t *w = r->w_recv + (size_t)(i % r->window) * r->slot_count;
            if (rs) {
                ar_wire_add(&r->wire, recv + lo, send + lo, w, cnt);
                if (k == p - 2) ar_wire_round(&r->wire, recv + lo, cnt);
            } else {
                ar_wire_unpack(&r->wire, recv + lo, w, cnt);
            }
        } else if (rs) {
            size_t lo, cnt;
            piece_of(r, rb, j, &lo, &cnt);
            ar_add3(recv + lo, send + lo, r->tmp + (size_t)(i % r->window) * r->slot_count, cnt);
        }
        if (sent < N) TRY(post_send(c, r, send, recv, sent++));
        if (posted < N) TRY(post_recv(c, r, recv, posted++));
    }
    for (int i = 0; i < N; i++) TRY(wait_req(c, &r->sreq[i], "ring send", -1, r->right_world));
    return BASIN_OK;
}

static int ring_plan(AllreduceComm *c, size_t n, unsigned flags, void **state)
{
    ArRing *r = NULL;
    TRY(ar_ring_plan_on(c, c->world, NULL, n, ar_wire_kind(flags), &r));
    *state = r;
    return BASIN_OK;
}

static int ring_run(AllreduceComm *c, void *state, const float *send, float *recv)
{
    return ar_ring_run_on(c, state, send, recv);
}

static void ring_free(void *state)
{
    ar_ring_free_on(state);
}

const AllreduceAlgo ar_algo_ring = {.name = "ring", .plan = ring_plan, .run = ring_run, .free = ring_free};
