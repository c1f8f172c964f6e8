/* allreduce_mpi_init's transport defaults: with no btl_tcp_eager_limit in
 * the environment, Open MPI's TCP transport runs with
 * ALLREDUCE_TCP_EAGER_BYTES; with one, the user's value stays. The value is
 * read back from Open MPI itself (an MPI_T control variable).
 *
 *   test_mpi_init EXPECTED   (EXPECTED: a byte count, or "default")
 *
 * Exit 77 (skip) with another MPI than Open MPI. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allreduce/allreduce.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test_mpi_init EXPECTED|default\n");
        return 2;
    }
#ifndef OPEN_MPI
    fprintf(stderr, "test_mpi_init: not Open MPI, nothing to check\n");
    return 77;
#else
    unsigned long long want = strcmp(argv[1], "default") == 0 ? (unsigned long long)ALLREDUCE_TCP_EAGER_BYTES
                                                              : strtoull(argv[1], NULL, 10);
    int provided = 0;
    if (allreduce_mpi_init(&argc, &argv, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "FAIL: allreduce_mpi_init\n");
        return 1;
    }
    int fails = 0;
    if (provided < MPI_THREAD_MULTIPLE) {
        fprintf(stderr, "FAIL: thread level %d < MPI_THREAD_MULTIPLE\n", provided);
        fails++;
    }
    int tp = 0, idx = -1, count = 0;
    MPI_T_cvar_handle h;
    MPI_Datatype type;
    char name[128];
    int name_len = sizeof name, verbosity = 0, bind = 0, scope = 0;
    MPI_T_enum enumtype;
    if (MPI_T_init_thread(MPI_THREAD_SINGLE, &tp) != MPI_SUCCESS ||
        MPI_T_cvar_get_index("btl_tcp_eager_limit", &idx) != MPI_SUCCESS ||
        MPI_T_cvar_get_info(idx, name, &name_len, &verbosity, &type, &enumtype, NULL, NULL, &bind, &scope) !=
            MPI_SUCCESS ||
        MPI_T_cvar_handle_alloc(idx, NULL, &h, &count) != MPI_SUCCESS || count != 1) {
        fprintf(stderr, "FAIL: Open MPI has no readable btl_tcp_eager_limit (is the tcp btl excluded?)\n");
        MPI_Finalize();
        return 1;
    }
    /* an unsigned integer of 4 or 8 bytes, in this machine's order */
    unsigned long long got = 0;
    unsigned char raw[8] = {0};
    int type_size = 0;
    if (MPI_Type_size(type, &type_size) != MPI_SUCCESS || (type_size != 4 && type_size != 8)) {
        fprintf(stderr, "FAIL: btl_tcp_eager_limit has a %d-byte type\n", type_size);
        fails++;
    } else if (MPI_T_cvar_read(h, raw) != MPI_SUCCESS) {
        fprintf(stderr, "FAIL: cannot read btl_tcp_eager_limit\n");
        fails++;
    } else if (type_size == 8) {
        uint64_t v;
        memcpy(&v, raw, 8);
        got = v;
    } else {
        uint32_t v;
        memcpy(&v, raw, 4);
        got = v;
    }
    if (!fails && got != want) {
        fprintf(stderr, "FAIL: btl_tcp_eager_limit is %llu, expected %llu\n", got, want);
        fails++;
    }
    MPI_T_cvar_handle_free(&h);
    MPI_T_finalize();
    MPI_Finalize();
    if (!fails) printf("test_mpi_init: btl_tcp_eager_limit = %llu as expected\n", got);
    return fails ? 1 : 0;
#endif
}
