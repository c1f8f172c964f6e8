/* Preemption signals: SIGTERM or SIGUSR1 asks the job to stop at the next
 * step boundary with a checkpoint of that step (exit_codes.h: 75).
 *
 * basin-train installs the handlers first thing in main, before MPI starts,
 * so that a signal in the first instant of a run is a request like any other
 * and not the default action (death, exit 143). The request stays pending
 * until the training loop acts on it, at its first step boundary or before
 * its first step. */
#ifndef BASIN_PREEMPT_H
#define BASIN_PREEMPT_H

/* Install the handlers of SIGTERM, SIGUSR1 and SIGALRM (the grace timer),
 * or put them back where something replaced them. A pending request
 * survives it. */
int preempt_install(void);
/* The signal of a pending stop request, or 0. */
int preempt_pending(void);
/* The request was acted upon: forget it. */
void preempt_clear(void);
/* Arm the grace timer: if the process is still running after `seconds`, it
 * prints `line` (rank 0 passes one; other ranks NULL), writes `status` to
 * `status_path` when both are given, and exits with `code`. Everything is
 * formatted here, in advance, because the handler may only make
 * async-signal-safe calls. seconds <= 0 disarms it. */
void preempt_arm_grace(double seconds, int code, const char *line, const char *status_path, const char *status);

#endif
