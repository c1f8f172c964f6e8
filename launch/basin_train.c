/* basin-train: one worker of a synchronous data-parallel training job.
 * Start it under mpirun (launch/train.sh does); it parses options and hands
 * them to the training loop. */
#include <mpi.h>
#include <stdio.h>

#include "allreduce/allreduce.h"
#include "core/config.h"
#include "core/error.h"
#include "core/preempt.h"
#include "core/trainer.h"

int main(int argc, char **argv)
{
    /* First thing: a SIGTERM while MPI starts is a stop request (exit 75
     * before the first step), not death by signal. */
    if (preempt_install()) return BASIN_EXIT_FAILED;
    TrainConfig cfg;
    config_defaults(&cfg);
    int rc = config_parse(&cfg, argc, argv);
    if (rc) return rc;
    if (cfg.help) {
        char algorithms[128];
        allreduce_algorithms_text(algorithms, sizeof algorithms, NULL);
        config_usage("basin-train", algorithms);
        return 0;
    }
    int provided = 0;
    if (allreduce_mpi_init(&argc, &argv, &provided) != MPI_SUCCESS) {
        return basin_error(BASIN_ERR_RUNTIME, "MPI_Init_thread failed");
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    TrainResult res;
    rc = trainer_run(&cfg, MPI_COMM_WORLD, &res);
    /* 0, 2, 74, 75 and 76 are agreed by every rank (exit_codes.h). */
    if (rc == BASIN_ERR_RUNTIME) {
        /* Other ranks may be waiting in a collective: end the whole job. */
        MPI_Abort(MPI_COMM_WORLD, rc);
    }
    MPI_Finalize();
    return rc;
}
