/* Checkpoints: the replicated training state in one HDF5 file, written
 * atomically, verified by checksums when read. FORMAT.md specifies the file.
 *
 * The module stores what it is handed: it knows nothing of networks, MPI or
 * the training loop. One rank (rank 0) writes; every rank may read.
 */
#ifndef BASIN_CHECKPOINT_H
#define BASIN_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

/* The version this build writes; it reads this one and every older one
 * down to CHECKPOINT_FORMAT_OLDEST (FORMAT.md, "Versions"). */
#define CHECKPOINT_FORMAT_VERSION 2
#define CHECKPOINT_FORMAT_OLDEST 1

/* What a checkpoint holds. Nothing in it depends on the number of ranks
 * except the record of world_size at save time. */
typedef struct {
    /* identity and configuration */
    const char *model_spec;    /* resolved layer spec (models.h) */
    const char *config_text;   /* the full training configuration, one line */
    uint64_t config_hash;      /* hash of the options that must match to resume */
    uint64_t seed;             /* the run's seed: with the counter-based RNG, this
                                  and next_step are the whole RNG state */
    uint64_t global_batch;
    uint32_t world_size;       /* ranks at save time (informational) */
    uint64_t train_samples;    /* size of the training set the order is over */
    int32_t in_c, in_h, in_w, classes;

    /* position */
    uint64_t next_step;        /* global step to run next (0-based) */
    uint64_t epoch;            /* epoch of next_step (0-based) */
    uint64_t step_in_epoch;    /* step of next_step within its epoch */
    uint64_t samples_seen;     /* next_step * global_batch: the sample cursor */
    double elapsed_s;          /* training time so far */

    /* buffers (n_params floats each) */
    size_t n_params;
    const float *params;
    const float *momentum;

    /* Since version 2. State of the model that is not a parameter (batch
     * norm's running mean and variance): n_state floats, 0 and NULL when the
     * model has none. The layer table (FORMAT.md, "Layer table"): JSON text
     * describing every layer and where its tensors lie in params and state;
     * NULL or "" when the writer has none. A version-1 file read back has
     * neither (0, NULL, NULL). */
    size_t n_state;
    const float *state;
    const char *layer_table;

    /* Version 2, optional: the optimizer's second moment (--optimizer adam
     * or adamw), n_moment2 = n_params floats; 0 and NULL for an optimizer
     * without one, and in files written before it existed. */
    size_t n_moment2;
    const float *moment2;

    /* Version 2, optional: each trainer rank's samples per global batch at
     * next_step under --balance (text, FORMAT.md "Balance"); NULL or "" for
     * none, as in files written before it existed. */
    const char *balance;
} CheckpointState;

/* A checkpoint read back: the same fields, owning its memory. */
typedef struct {
    CheckpointState st;        /* pointers below alias into this */
    uint32_t format_version;   /* of the file: CHECKPOINT_FORMAT_OLDEST .. CHECKPOINT_FORMAT_VERSION */
    char *model_spec, *config_text, *layer_table, *balance;
    float *params, *momentum, *state, *moment2;
    char path[4096];
} Checkpoint;

/* Write st, in format version CHECKPOINT_FORMAT_VERSION, as
 * <dir>/ckpt-<next_step, 10 digits>.h5: to a temporary file in
 * dir, fsync, rename over the final name, fsync dir; then delete all but the
 * newest `keep` checkpoints of dir (keep 0: delete none). On any failure
 * (disk full, permission) one clear line, the temporary file removed, every
 * earlier checkpoint intact, BASIN_ERR_RUNTIME. The written path goes to
 * path_out when non-NULL. Creates dir when missing. */
int checkpoint_write(const char *dir, const CheckpointState *st, int keep, char *path_out, size_t path_len);

/* Read and verify path: format version (any from CHECKPOINT_FORMAT_OLDEST to
 * CHECKPOINT_FORMAT_VERSION), every dataset and attribute of that version
 * present with the right type and size, every buffer's checksum. A file that
 * fails any of this gets one line naming path and the problem and
 * BASIN_ERR_USAGE. */
int checkpoint_read(const char *path, Checkpoint *out);
void checkpoint_free(Checkpoint *c);

/* The newest checkpoint of dir (by next_step) that verifies, read into out.
 * Newer ones that fail verification are reported (one line each) and
 * skipped. Returns BASIN_OK with *found = 0 when dir has none (or does not
 * exist). */
int checkpoint_latest(const char *dir, Checkpoint *out, int *found);

/* Delete the unfinished files (".ckpt-<step>.h5.tmp.<pid>") that writers
 * killed while writing left in dir, saying so in one line. Only while no
 * other writer can be at work there (the trainer holds the folder's lock,
 * core/runlock.h). Returns how many were removed, or -1 after an error line. */
int checkpoint_remove_unfinished(const char *dir);

#endif
