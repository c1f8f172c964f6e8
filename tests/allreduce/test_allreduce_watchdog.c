/* Watchdog: the last rank never joins the collective; the others must abort
 * the job within the timeout, naming it. This program is expected to FAIL
 * (exit code ALLREDUCE_WATCHDOG_EXIT through mpirun); expect_watchdog.sh
 * checks the exit code, the message and the time taken.
 *
 *   mpirun -np P test_allreduce_watchdog ALGO [--async] [--supernode-size K]
 */
#include "allreduce/allreduce.h"
#include "core/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv)
{
    int provided, rank, size;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const char *algo = argc > 1 ? argv[1] : "rhd";
    int async = 0;
    AllreduceConfig cfg;
    allreduce_config_default(&cfg);
    cfg.timeout_s = 2.0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--async"))
            async = 1;
        else if (!strcmp(argv[i], "--supernode-size") && i + 1 < argc)
            cfg.supernode_size = atoi(argv[++i]);
    }
    AllreduceComm *c = NULL;
    AllreducePlan *p = NULL;
    if (allreduce_comm_create(MPI_COMM_WORLD, &cfg, &c) || allreduce_plan(c, algo, 100000, 0, &p))
        MPI_Abort(MPI_COMM_WORLD, 1);
    float *buf = calloc(100000, sizeof(float));
    /* One collective everyone joins, so the failure is in the second. */
    if (allreduce_run(p, buf, buf)) MPI_Abort(MPI_COMM_WORLD, 1);
    if (rank == size - 1) {
        fprintf(stderr, "rank %d: not joining collective #2\n", rank);
        struct timespec ts = {120, 0};
        nanosleep(&ts, NULL);
    } else if (async) {
        AllreduceTicket t;
        if (allreduce_start(p, buf, buf, &t) || allreduce_wait(c, t)) MPI_Abort(MPI_COMM_WORLD, 1);
    } else {
        if (allreduce_run(p, buf, buf)) MPI_Abort(MPI_COMM_WORLD, 1);
    }
    /* Reaching this is the failure the test looks for. */
    fprintf(stderr, "rank %d: collective finished although rank %d never joined\n", rank, size - 1);
    free(buf);
    allreduce_plan_free(p);
    allreduce_comm_free(c);
    MPI_Finalize();
    return 0;
}
