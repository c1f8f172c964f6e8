/* The exit codes of basin-train, launch/train.sh and launch/slurm.sbatch:
 * the one table. The launchers and the tests read it from this file (one
 * "#define BASIN_EXIT_<NAME> <code>" a line, the meaning in the comment), and
 * a test checks that the README's table says the same.
 *
 * Every code that is not 0 means some part of the work was not done; none
 * claims more than happened. "Resumable" means the newest good checkpoint
 * holds every step that ran. */
#ifndef BASIN_EXIT_CODES_H
#define BASIN_EXIT_CODES_H

/* Finished: every step ran and the final checkpoint is written (or the
 * checkpoint resumed from had nothing left to train). */
#define BASIN_EXIT_OK 0
/* Failed: a rank died or aborted, a collective timed out, replicas diverged,
 * a file could not be read. The launcher restarts from the newest good
 * checkpoint (up to --max-restarts). */
#define BASIN_EXIT_FAILED 1
/* Refused: bad options or input, a checkpoint that does not fit, or another
 * run holds the output folder. Nothing was written; no restart helps. */
#define BASIN_EXIT_USAGE 2
/* A checkpoint could not be written and the run stopped: the final one, or
 * any with --checkpoint-failure stop. The steps after the newest good
 * checkpoint are not saved; the launcher does not restart (free the disk,
 * then run the same command). */
#define BASIN_EXIT_CHECKPOINT_FAILED 74
/* Preempted: stopped by SIGTERM/SIGUSR1 at a step boundary after writing a
 * checkpoint of that step (or before the first step, with nothing to save).
 * Resumable: 0 steps lost. */
#define BASIN_EXIT_PREEMPTED 75
/* Preempted, but the checkpoint of the stop failed (disk full, read-only
 * folder, or the grace period ran out). Resuming starts from the previous
 * good checkpoint; the stop's line says how many steps are lost. */
#define BASIN_EXIT_PREEMPTED_UNSAVED 76

#endif
