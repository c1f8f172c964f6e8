/* The all-reduce's real messages, counted per rank and per level, for
 * comparison with basin-plan's model (check_messages.py).
 *
 *   mpirun -np W count_messages [--supernode-size K] [--algos hier,rhd,ring]
 *          [--counts 3,1001,300000,600000] [--wires fp32,bf16,fp16]
 *
 * This file interposes the MPI send calls by the profiling interface
 * (PMPI): while counting is on, every MPI_Send / MPI_Isend / MPI_Issend /
 * MPI_Sendrecv is one message of count x type-size bytes to a peer, which is
 * on this rank's supernode ("intra") or another ("inter"); every
 * MPI_Iallreduce / MPI_Allreduce is a "scale" collective (fp16's scale
 * agreement). The library is not changed. For each algorithm, count and
 * wire, rank 0 prints one line per rank:
 *   algo wire count rank intra_msgs intra_bytes inter_msgs inter_bytes scale
 * Exit 1 when a run fails or its result is wrong.
 */
#include <mpi.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allreduce/allreduce.h"

static atomic_int counting;
static atomic_llong n_msgs[2], n_bytes[2], n_scale;
static int *node_of; /* world rank -> supernode index */
static int my_node;

static void count_send(int count, MPI_Datatype type, int dest, MPI_Comm comm)
{
    if (!atomic_load(&counting) || dest == MPI_PROC_NULL) return;
    MPI_Group g, wg;
    int wr = -1, size = 0;
    PMPI_Comm_group(comm, &g);
    PMPI_Comm_group(MPI_COMM_WORLD, &wg);
    PMPI_Group_translate_ranks(g, 1, &dest, wg, &wr);
    PMPI_Group_free(&g);
    PMPI_Group_free(&wg);
    PMPI_Type_size(type, &size);
    int lvl = node_of[wr] == my_node ? 0 : 1;
    atomic_fetch_add(&n_msgs[lvl], 1);
    atomic_fetch_add(&n_bytes[lvl], (long long)count * size);
}

int MPI_Send(const void *buf, int count, MPI_Datatype type, int dest, int tag, MPI_Comm comm)
{
    count_send(count, type, dest, comm);
    return PMPI_Send(buf, count, type, dest, tag, comm);
}

int MPI_Isend(const void *buf, int count, MPI_Datatype type, int dest, int tag, MPI_Comm comm, MPI_Request *req)
{
    count_send(count, type, dest, comm);
    return PMPI_Isend(buf, count, type, dest, tag, comm, req);
}

int MPI_Issend(const void *buf, int count, MPI_Datatype type, int dest, int tag, MPI_Comm comm, MPI_Request *req)
{
    count_send(count, type, dest, comm);
    return PMPI_Issend(buf, count, type, dest, tag, comm, req);
}

int MPI_Sendrecv(const void *sbuf, int scount, MPI_Datatype stype, int dest, int stag, void *rbuf, int rcount,
                 MPI_Datatype rtype, int src, int rtag, MPI_Comm comm, MPI_Status *status)
{
    count_send(scount, stype, dest, comm);
    return PMPI_Sendrecv(sbuf, scount, stype, dest, stag, rbuf, rcount, rtype, src, rtag, comm, status);
}

int MPI_Iallreduce(const void *s, void *r, int count, MPI_Datatype type, MPI_Op op, MPI_Comm comm,
                   MPI_Request *req)
{
    if (atomic_load(&counting)) atomic_fetch_add(&n_scale, 1);
    return PMPI_Iallreduce(s, r, count, type, op, comm, req);
}

int MPI_Allreduce(const void *s, void *r, int count, MPI_Datatype type, MPI_Op op, MPI_Comm comm)
{
    if (atomic_load(&counting)) atomic_fetch_add(&n_scale, 1);
    return PMPI_Allreduce(s, r, count, type, op, comm);
}

static int split(const char *s, char out[][16], int cap)
{
    int n = 0;
    const char *p = s;
    while (*p && n < cap) {
        size_t k = strcspn(p, ",");
        snprintf(out[n++], 16, "%.*s", (int)(k < 15 ? k : 15), p);
        p += k;
        if (*p == ',') p++;
    }
    return n;
}

int main(int argc, char **argv)
{
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    int rank, world;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    AllreduceConfig cfg;
    allreduce_config_default(&cfg);
    const char *algos_s = "hier,rhd,ring", *counts_s = "3,1001,300000,600000", *wires_s = "fp32,bf16,fp16";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--supernode-size")) cfg.supernode_size = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--algos")) algos_s = argv[i + 1];
        else if (!strcmp(argv[i], "--counts")) counts_s = argv[i + 1];
        else if (!strcmp(argv[i], "--wires")) wires_s = argv[i + 1];
    }
    AllreduceComm *c = NULL;
    if (allreduce_comm_create(MPI_COMM_WORLD, &cfg, &c)) MPI_Abort(MPI_COMM_WORLD, 1);
    my_node = allreduce_topology(c)->node;
    node_of = calloc((size_t)world, sizeof *node_of);
    MPI_Allgather(&my_node, 1, MPI_INT, node_of, 1, MPI_INT, MPI_COMM_WORLD);

    char algos[8][16], counts[8][16], wires[4][16];
    int na = split(algos_s, algos, 8), nc = split(counts_s, counts, 8), nw = split(wires_s, wires, 4);
    int bad = 0;
    for (int ci = 0; ci < nc; ci++) {
        size_t n = (size_t)atol(counts[ci]);
        float *buf = allreduce_buffer_alloc(c, n ? n : 1);
        for (int a = 0; a < na; a++) {
            for (int w = 0; w < nw; w++) {
                unsigned flags = 0;
                if (allreduce_wire_parse(wires[w], &flags)) MPI_Abort(MPI_COMM_WORLD, 1);
                AllreducePlan *p = NULL;
                if (allreduce_plan(c, algos[a], n, ALLREDUCE_WINDOW_ONLY | flags, &p)) MPI_Abort(MPI_COMM_WORLD, 1);
                /* small integers: exact in every wire format */
                for (size_t i = 0; i < n; i++) buf[i] = (float)((rank + (int)(i % 5)) % 4);
                MPI_Barrier(MPI_COMM_WORLD);
                for (int l = 0; l < 2; l++) atomic_store(&n_msgs[l], 0), atomic_store(&n_bytes[l], 0);
                atomic_store(&n_scale, 0);
                atomic_store(&counting, 1);
                int rc = allreduce_run(p, buf, buf);
                atomic_store(&counting, 0);
                for (size_t i = 0; i < n && !rc; i++) {
                    float want = 0;
                    for (int r = 0; r < world; r++) want += (float)((r + (int)(i % 5)) % 4);
                    if (buf[i] != want) rc = -1;
                }
                if (rc) bad = 1;
                long long mine[5] = {atomic_load(&n_msgs[0]), atomic_load(&n_bytes[0]), atomic_load(&n_msgs[1]),
                                     atomic_load(&n_bytes[1]), atomic_load(&n_scale)};
                long long *all = rank == 0 ? malloc(5 * sizeof(long long) * (size_t)world) : NULL;
                MPI_Gather(mine, 5, MPI_LONG_LONG, all, 5, MPI_LONG_LONG, 0, MPI_COMM_WORLD);
                if (rank == 0) {
                    for (int r = 0; r < world; r++)
                        printf("%s %s %zu %d %lld %lld %lld %lld %lld\n", algos[a], wires[w], n, r, all[5 * r],
                               all[5 * r + 1], all[5 * r + 2], all[5 * r + 3], all[5 * r + 4]);
                    fflush(stdout);
                }
                free(all);
                allreduce_plan_free(p);
            }
        }
        allreduce_buffer_free(c, buf);
    }
    int any = 0;
    MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_LOR, MPI_COMM_WORLD);
    if (rank == 0 && any) fprintf(stderr, "count_messages: a run failed or summed wrongly\n");
    free(node_of);
    allreduce_comm_free(c);
    MPI_Finalize();
    return any ? 1 : 0;
}
