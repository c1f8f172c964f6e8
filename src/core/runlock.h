/* One run per output folder.
 *
 * Rank 0 holds an fcntl write lock on "<folder>/.basin.lock" of its output
 * folder and of its checkpoint folder for the life of the job. The kernel
 * (or the NFS lock manager) releases it when the process ends, however it
 * ends, so a lock never outlives its run and needs no cleaning. A second run
 * given the same folder is refused with one line naming the host, process
 * and start time of the holder, which the holder writes into the file. */
#ifndef BASIN_RUNLOCK_H
#define BASIN_RUNLOCK_H

typedef struct {
    int fd[2];
    int n;
} RunLock;

#define RUNLOCK_INIT {{-1, -1}, 0}

/* Create `dir` if needed and lock it for this process; `what` names it in
 * the message ("--output-dir", "--checkpoint-dir"). The same folder twice
 * is locked once. BASIN_ERR_USAGE, after one line, when another run holds
 * it. At most two folders. */
int runlock_acquire(RunLock *l, const char *dir, const char *what);
void runlock_release(RunLock *l);


#endif
