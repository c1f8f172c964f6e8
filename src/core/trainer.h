/* The training loop: the one place that wires the reader, the model, the
 * gradient all-reduce and (later) checkpoints together. */
#ifndef BASIN_TRAINER_H
#define BASIN_TRAINER_H

#include <mpi.h>
#include <stdint.h>

#include "core/config.h"

typedef struct {
    uint64_t steps;              /* global steps taken */
    double train_loss;           /* mean loss of the last logging interval */
    double test_loss;            /* last evaluation; NAN when none ran */
    double test_accuracy;        /* in [0, 1]; NAN when none ran */
    double images_per_s;         /* training throughput over the run, all ranks */
    double seconds;              /* wall time of the training loop */
    float *params;               /* with cfg->keep_params: a malloc'd copy of the final
                                    parameters (the caller frees it) */
    size_t n_params;
    float *state;                /* with cfg->keep_params: the final state (batch-norm
                                    running statistics; NULL when the model has none) */
    size_t n_state;
} TrainResult;

/* Train as configured on the ranks of comm (every rank calls it). Returns
 * BASIN_OK, or BASIN_ERR_USAGE after one clear line (before any file is
 * written), or BASIN_ERR_RUNTIME. */
int trainer_run(const TrainConfig *cfg, MPI_Comm comm, TrainResult *result);

#endif
