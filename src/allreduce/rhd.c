/* rhd: Rabenseifner's all-reduce — reduce-scatter by recursive halving, then
 * all-gather by recursive doubling.
 *
 * Needs: a commutative sum (floats: a + b == b + a bit for bit); any count,
 * including count < p (some blocks are empty, their messages are skipped).
 *
 * Non-power-of-two p: let p' be the largest power of two <= p and r = p - p'.
 * The first 2r ranks pair up: each even rank sends its whole vector to the
 * odd rank above it and sits out; the odd rank adds it. p' ranks remain and
 * run the power-of-two algorithm; at the end each odd rank sends the result
 * back. This costs 2 extra messages of n floats on the folded pairs (about
 * 2α + 2nβ + nγ), which is simpler than binary blocks and never worse than a
 * factor ~2 in bandwidth, paid only when p is not a power of two.
 *
 * Cost (n floats, p' = 2^k ranks, α latency, β time per float sent,
 * γ time per float added):
 *   reduce-scatter  k α + (p'-1)/p' n β + (p'-1)/p' n γ
 *   all-gather      k α + (p'-1)/p' n β
 *   folding (r > 0) 2 α + 2 n β + n γ
 * Memory: one scratch buffer of n/2 floats (n when this rank folds), and
 * the MPI requests for chunked messages, all allocated at plan time.
 *
 * The vector is cut into p' blocks. Step i (mask 2^i, distance doubling)
 * exchanges half of the current block range with rank ^ mask and keeps the
 * other half, so the largest messages go to the nearest ranks (usually the
 * same host). After k steps each rank owns one fully reduced block, whose
 * every element was added by exactly one rank; the all-gather replays the
 * steps backwards and only copies, so every rank ends with the same bits.
 *
 *   p' = 4, blocks B0..B3        step 0 (mask 1)      step 1 (mask 2)
 *   r0 [B0 B1 B2 B3]  <-> r1     r0 keeps B0 B1       r0 keeps B0  <-> r2
 *   r1 [B0 B1 B2 B3]             r1 keeps B2 B3       r1 keeps B2  <-> r3
 *   r2 [B0 B1 B2 B3]  <-> r3     r2 keeps B0 B1       r2 keeps B1
 *   r3 [B0 B1 B2 B3]             r3 keeps B2 B3       r3 keeps B3
 */
#include "allreduce/internal.h"

#include <stdlib.h>
#include <string.h>

enum { TAG_FOLD = 0x4201, TAG_RS = 0x4202, TAG_AG = 0x4203, TAG_UNFOLD = 0x4204 };
enum { ROLE_PLAIN, ROLE_FOLD_SEND, ROLE_FOLD_RECV };

typedef struct RhdStep {
    int peer, peer_world;
    size_t keep_off, keep_cnt; /* the half this rank reduces */
    size_t send_off, send_cnt; /* the half the peer reduces */
} RhdStep;

struct ArRhd {
    MPI_Comm comm;
    size_t count;
    int size;
    int role, fold_peer, fold_peer_world;
    int nsteps;
    RhdStep *steps; /* (nsteps) */
    float *tmp;     /* scratch for received halves */
    MPI_Request *reqs;
    ArWire wire;     /* message format */
    uint16_t *w_send, *w_recv; /* (count) 16-bit messages, when the wire is */
};

void ar_rhd_free_on(ArRhd *r)
{
    if (!r) return;
    free(r->steps);
    free(r->tmp);
    free(r->reqs);
    free(r->w_send);
    free(r->w_recv);
    free(r);
}

int ar_rhd_plan_on(AllreduceComm *c, MPI_Comm comm, const int *world_of, size_t n, int wire, ArRhd **out)
{
    int rank, size;
    BASIN_MPI(MPI_Comm_rank(comm, &rank));
    BASIN_MPI(MPI_Comm_size(comm, &size));
    ArRhd *r = basin_calloc(1, sizeof *r);
    if (!r) return BASIN_ERR_RUNTIME;
    r->comm = comm;
    r->count = n;
    r->size = size;
    r->wire.kind = wire;
    int pof2 = 1;
    while (pof2 * 2 <= size) pof2 *= 2;
    int extra = size - pof2, newrank;
    if (rank < 2 * extra) {
        r->role = rank % 2 == 0 ? ROLE_FOLD_SEND : ROLE_FOLD_RECV;
        r->fold_peer = rank % 2 == 0 ? rank + 1 : rank - 1;
        r->fold_peer_world = world_of ? world_of[r->fold_peer] : r->fold_peer;
        newrank = rank % 2 == 0 ? -1 : rank / 2;
    } else {
        r->role = ROLE_PLAIN;
        newrank = rank - extra;
    }
    size_t tmp_count = r->role == ROLE_FOLD_RECV ? n : 0;
    if (newrank >= 0) {
        int k = 0;
        while ((1 << k) < pof2) k++;
        r->nsteps = k;
        r->steps = basin_calloc((size_t)(k ? k : 1), sizeof *r->steps);
        if (!r->steps) goto oom;
        size_t lo = 0, hi = (size_t)pof2;
        for (int i = 0; i < k; i++) {
            int mask = 1 << i, pn = newrank ^ mask;
            RhdStep *s = &r->steps[i];
            s->peer = pn < extra ? 2 * pn + 1 : pn + extra;
            s->peer_world = world_of ? world_of[s->peer] : s->peer;
            size_t mid = lo + (hi - lo) / 2, klo, khi, slo, shi;
            if (newrank & mask) {
                klo = mid, khi = hi, slo = lo, shi = mid;
            } else {
                klo = lo, khi = mid, slo = mid, shi = hi;
            }
            s->keep_off = allreduce_part_start(n, (size_t)pof2, klo);
            s->keep_cnt = allreduce_part_start(n, (size_t)pof2, khi) - s->keep_off;
            s->send_off = allreduce_part_start(n, (size_t)pof2, slo);
            s->send_cnt = allreduce_part_start(n, (size_t)pof2, shi) - s->send_off;
            if (s->keep_cnt > tmp_count) tmp_count = s->keep_cnt;
            lo = klo, hi = khi;
        }
    }
    r->tmp = basin_aligned_alloc(tmp_count * sizeof(float));
    r->reqs = basin_calloc(2 * ar_chunks(c, n) + 2, sizeof *r->reqs);
    if (!r->tmp || !r->reqs) goto oom;
    if (wire != AR_WIRE_FP32 && size > 1 && n > 0) {
        r->w_send = basin_aligned_alloc(n * sizeof(uint16_t));
        r->w_recv = basin_aligned_alloc(n * sizeof(uint16_t));
        if (!r->w_send || !r->w_recv) goto oom;
    }
    *out = r;
    return BASIN_OK;
oom:
    ar_rhd_free_on(r);
    return BASIN_ERR_RUNTIME;
}

/* The same schedule with 16-bit messages: partial sums travel rounded and
 * are added in fp32; after the reduce-scatter each rank rounds the block it
 * owns once, in place, so the all-gather (exact: the values are already
 * representable) hands every rank the owner's bits. */
static int rhd_run_wire(AllreduceComm *c, ArRhd *r, const float *send, float *recv)
{
    size_t n = r->count;
    MPI_Comm comm = r->comm;
    ArWire *w = &r->wire;
    uint16_t *ws = r->w_send, *wr = r->w_recv;
    TRY(ar_wire_scale(c, comm, r->size, send, n, w));
    if (r->role == ROLE_FOLD_SEND) {
        ar_wire_pack(w, ws, send, n);
        TRY(ar_exchange_typed(c, comm, ws, n, r->fold_peer, NULL, 0, r->fold_peer, TAG_FOLD, MPI_UINT16_T,
                              sizeof *ws, r->reqs, r->fold_peer_world, "fold", 0));
        TRY(ar_exchange_typed(c, comm, NULL, 0, r->fold_peer, wr, n, r->fold_peer, TAG_UNFOLD, MPI_UINT16_T,
                              sizeof *wr, r->reqs, r->fold_peer_world, "unfold", 0));
        ar_wire_unpack(w, recv, wr, n);
        return BASIN_OK;
    }
    const float *src = send;
    if (r->role == ROLE_FOLD_RECV) {
        TRY(ar_exchange_typed(c, comm, NULL, 0, r->fold_peer, wr, n, r->fold_peer, TAG_FOLD, MPI_UINT16_T,
                              sizeof *wr, r->reqs, r->fold_peer_world, "fold", 0));
        ar_wire_add(w, recv, send, wr, n);
        src = recv;
    }
    for (int i = 0; i < r->nsteps; i++) {
        const RhdStep *s = &r->steps[i];
        ar_wire_pack(w, ws, src + s->send_off, s->send_cnt);
        TRY(ar_exchange_typed(c, comm, ws, s->send_cnt, s->peer, wr, s->keep_cnt, s->peer, TAG_RS, MPI_UINT16_T,
                              sizeof *ws, r->reqs, s->peer_world, "reduce-scatter", i));
        ar_wire_add(w, recv + s->keep_off, src + s->keep_off, wr, s->keep_cnt);
        src = recv;
    }
    if (r->nsteps > 0) {
        const RhdStep *s = &r->steps[r->nsteps - 1];
        ar_wire_round(w, recv + s->keep_off, s->keep_cnt);
    } else {
        if (src != recv) memcpy(recv, src, n * sizeof(float));
        ar_wire_round(w, recv, n);
    }
    for (int i = r->nsteps - 1; i >= 0; i--) {
        const RhdStep *s = &r->steps[i];
        ar_wire_pack(w, ws, recv + s->keep_off, s->keep_cnt);
        TRY(ar_exchange_typed(c, comm, ws, s->keep_cnt, s->peer, wr, s->send_cnt, s->peer, TAG_AG, MPI_UINT16_T,
                              sizeof *ws, r->reqs, s->peer_world, "all-gather", i));
        ar_wire_unpack(w, recv + s->send_off, wr, s->send_cnt);
    }
    if (r->role == ROLE_FOLD_RECV) {
        ar_wire_pack(w, ws, recv, n);
        TRY(ar_exchange_typed(c, comm, ws, n, r->fold_peer, NULL, 0, r->fold_peer, TAG_UNFOLD, MPI_UINT16_T,
                              sizeof *ws, r->reqs, r->fold_peer_world, "unfold", 0));
    }
    return BASIN_OK;
}

int ar_rhd_run_on(AllreduceComm *c, ArRhd *r, const float *send, float *recv)
{
    size_t n = r->count;
    if (n == 0) return BASIN_OK;
    if (r->size == 1) {
        if (send != recv) memcpy(recv, send, n * sizeof(float));
        return BASIN_OK;
    }
    if (r->wire.kind != AR_WIRE_FP32) return rhd_run_wire(c, r, send, recv);
    MPI_Comm comm = r->comm;
    if (r->role == ROLE_FOLD_SEND) {
        TRY(ar_exchange(c, comm, send, n, r->fold_peer, NULL, 0, r->fold_peer, TAG_FOLD, r->reqs,
                        r->fold_peer_world, "fold", 0));
        return ar_exchange(c, comm, NULL, 0, r->fold_peer, recv, n, r->fold_peer, TAG_UNFOLD, r->reqs,
                           r->fold_peer_world, "unfold", 0);
    }
    /* The first addition reads send, so out-of-place needs no copy-in. */
    const float *src = send;
    if (r->role == ROLE_FOLD_RECV) {
        TRY(ar_exchange(c, comm, NULL, 0, r->fold_peer, r->tmp, n, r->fold_peer, TAG_FOLD, r->reqs,
                        r->fold_peer_world, "fold", 0));
        ar_add3(recv, send, r->tmp, n);
        src = recv;
    }
    for (int i = 0; i < r->nsteps; i++) {
        const RhdStep *s = &r->steps[i];
        TRY(ar_exchange(c, comm, src + s->send_off, s->send_cnt, s->peer, r->tmp, s->keep_cnt, s->peer,
                        TAG_RS, r->reqs, s->peer_world, "reduce-scatter", i));
        ar_add3(recv + s->keep_off, src + s->keep_off, r->tmp, s->keep_cnt);
        src = recv;
    }
    for (int i = r->nsteps - 1; i >= 0; i--) {
        const RhdStep *s = &r->steps[i];
        TRY(ar_exchange(c, comm, recv + s->keep_off, s->keep_cnt, s->peer, recv + s->send_off, s->send_cnt,
                        s->peer, TAG_AG, r->reqs, s->peer_world, "all-gather", i));
    }
    if (r->role == ROLE_FOLD_RECV)
        TRY(ar_exchange(c, comm, recv, n, r->fold_peer, NULL, 0, r->fold_peer, TAG_UNFOLD, r->reqs,
                        r->fold_peer_world, "unfold", 0));
    return BASIN_OK;
}

static int rhd_plan(AllreduceComm *c, size_t count, unsigned flags, void **state)
{
    ArRhd *r = NULL;
    TRY(ar_rhd_plan_on(c, c->world, NULL, count, ar_wire_kind(flags), &r));
    *state = r;
    return BASIN_OK;
}

static int rhd_run(AllreduceComm *c, void *state, const float *send, float *recv)
{
    return ar_rhd_run_on(c, state, send, recv);
}

static void rhd_free(void *state)
{
    ar_rhd_free_on(state);
}

const AllreduceAlgo ar_algo_rhd = {.name = "rhd", .plan = rhd_plan, .run = rhd_run, .free = rhd_free};
