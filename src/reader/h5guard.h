/* A child process parses an untrusted HDF5 file before this process does.
 *
 * libhdf5 1.10.8 (Debian 12's) trusts the lengths and offsets in a file's
 * metadata: on a damaged file it reads past its buffers, uses freed memory,
 * or mallocs a corrupted length and writes through the NULL it gets, inside
 * H5Fopen, H5Aexists, H5Dopen2 (tests/fuzz/hdf5-known). basin cannot bound
 * those decoders, so before the data-set reader or the checkpoint reader
 * opens a file, h5guard_run forks a child that runs the same validation the
 * caller runs next (every object, attribute and storage check it will touch)
 * and _exit()s with its verdict:
 *
 *   parent                                   child
 *   h5guard_run(check) -- fork ------------> silence, limits, alarm
 *     waitpid (EINTR-safe)                   check(arg): open, walk, close
 *     <------------------------------------- _exit(0 | 10 | 11)  or a crash
 *   exit 0/10/11: go on, and validate again in this process (deterministic:
 *     a refusal prints the child's message, once);
 *   killed by a crash signal or the alarm, or any other exit status (ASan
 *     and UBSan exit 1 after a report): one line, BASIN_ERR_USAGE.
 *
 * The child:
 *   - prints nothing (stdout and stderr go to /dev/null, the sanitizers'
 *     death callback -- libFuzzer's, which writes a crash file -- is cleared),
 *     writes no file (read-only opens, no core dump), calls nothing of MPI
 *     and leaves by _exit, so no atexit handler or finalizer runs;
 *   - RLIMIT_AS: its address space at fork plus 1 GiB plus the file's size,
 *     so a corrupted length handed to malloc fails at once instead of taking
 *     the host's memory (the validation itself allocates at most about the
 *     file's size: labels, or a checkpoint's buffers);
 *   - alarm(): 60 s plus 1 s per 64 MiB of file (a checkpoint's checksums
 *     read all of it), so a file that makes HDF5 loop cannot hang the job;
 *     running out is reported as damage too.
 *
 * HDF5 is built thread-safe on Debian: one global lock. The prefetch thread
 * of another split may be inside HDF5 when this thread forks, and a child
 * born while another thread holds that lock would wait for it forever. So
 * the fork happens inside an HDF5 callback (the create callback of a private
 * property-list class), where this thread holds the lock: the child's only
 * thread owns it (it is recursive) and the parent releases it right after
 * fork returns.
 *
 * Header-only (static functions), like h5check.h, so that checkpoints/ needs
 * no link to the reader library. Compiled with BASIN_H5GUARD_IN_PROCESS (the
 * fuzz targets' *_inproc builds only), there is no child. Cost: a fork plus a second parse of the
 * metadata (bench numbers in the commit that added it).
 */
#ifndef BASIN_READER_H5GUARD_H
#define BASIN_READER_H5GUARD_H

#include "core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* The child's verdicts; any other status is a crash. */
#define H5GUARD_EXIT_ACCEPTED 0
#define H5GUARD_EXIT_REFUSED 10 /* the check found the file bad (BASIN_ERR_USAGE) */
#define H5GUARD_EXIT_FAILED 11  /* the check failed otherwise (out of memory, ...) */

/* Present when a sanitizer runtime is linked; the child turns their reports
 * into an exit status and nothing else. */
extern void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));
extern void __sanitizer_set_report_fd(void *fd) __attribute__((weak));

/* The validation the child runs: BASIN_OK, BASIN_ERR_USAGE or another code. */
typedef int (*H5GuardCheck)(void *arg);

typedef struct {
    H5GuardCheck check;
    void *arg;
    uint64_t file_bytes;
    pid_t pid;
    int fork_errno;
} H5Guard;

/* Bytes of address space this process maps now (/proc/self/statm), 0 when
 * unknown. */
static inline uint64_t h5guard_address_space(void)
{
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char buf[64];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    unsigned long long pages = 0;
    if (sscanf(buf, "%llu", &pages) != 1) return 0;
    long page = sysconf(_SC_PAGESIZE);
    return (uint64_t)pages * (uint64_t)(page > 0 ? page : 4096);
}

static inline void h5guard_child(const H5Guard *g) __attribute__((noreturn));
static inline void h5guard_child(const H5Guard *g)
{
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, STDOUT_FILENO);
        dup2(null, STDERR_FILENO);
    }
    if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(NULL);
    if (__sanitizer_set_report_fd && null >= 0) __sanitizer_set_report_fd((void *)(intptr_t)null);

    /* A crash ends the child by its signal, through no inherited handler
     * (the sanitizers' and libFuzzer's report and write files; basin's own
     * SIGALRM handler writes a status file). */
    static const int crash_signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS, SIGALRM};
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigset_t unblock;
    sigemptyset(&unblock);
    for (size_t i = 0; i < sizeof crash_signals / sizeof crash_signals[0]; i++) {
        sigaction(crash_signals[i], &dfl, NULL);
        sigaddset(&unblock, crash_signals[i]);
    }
    sigprocmask(SIG_UNBLOCK, &unblock, NULL);

    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none);
    uint64_t as = h5guard_address_space();
    if (as > 0) {
        uint64_t extra = ((uint64_t)1 << 30) + g->file_bytes;
        struct rlimit lim = {(rlim_t)(as + extra), (rlim_t)(as + extra)};
        struct rlimit cur;
        if (getrlimit(RLIMIT_AS, &cur) == 0 && (cur.rlim_max == RLIM_INFINITY || cur.rlim_max >= lim.rlim_max))
            setrlimit(RLIMIT_AS, &lim);
    }
    alarm((unsigned)(60 + (g->file_bytes >> 26)));

    int rc = g->check(g->arg);
    _exit(rc == BASIN_OK ? H5GUARD_EXIT_ACCEPTED : rc == BASIN_ERR_USAGE ? H5GUARD_EXIT_REFUSED : H5GUARD_EXIT_FAILED);
}

/* The create callback of the private class: runs with HDF5's lock held. */
static inline herr_t h5guard_fork_locked(hid_t plist, void *data)
{
    (void)plist;
    H5Guard *g = data;
    pid_t pid = fork();
    if (pid == 0) h5guard_child(g);
    g->pid = pid;
    g->fork_errno = pid < 0 ? errno : 0;
    return 0;
}

/* Run check(arg) in a child first. BASIN_OK: the child finished, and
 * *verdict (when not NULL) is what check returned there (BASIN_OK,
 * BASIN_ERR_USAGE, or BASIN_ERR_RUNTIME for anything else); the caller goes
 * on with its own validation. BASIN_ERR_USAGE: HDF5 crashed, failed or hung
 * on the file, and why holds "damaged HDF5 file: ..." to follow the path in
 * the caller's one line. BASIN_ERR_RUNTIME: no verdict (fork failed, the
 * child was killed from outside), with the reason in why. Prints nothing. */
static inline int h5guard_run(uint64_t file_bytes, H5GuardCheck check, void *arg, int *verdict, char *why,
                              size_t why_len)
{
    H5Guard g = {check, arg, file_bytes, -1, 0};
#ifdef BASIN_H5GUARD_IN_PROCESS
    /* Only for the in-process fuzz targets (tests/fuzz), which look for
     * libhdf5's own crashes: no child, the caller parses the file itself. */
    (void)g, (void)why, (void)why_len;
    if (verdict) *verdict = BASIN_OK;
    return BASIN_OK;
#endif
    if (verdict) *verdict = BASIN_ERR_RUNTIME;

    /* With SIGCHLD ignored the kernel reaps the child and its status is lost. */
    struct sigaction old_chld, dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    int restore_chld = sigaction(SIGCHLD, NULL, &old_chld) == 0 && old_chld.sa_handler == SIG_IGN &&
                       sigaction(SIGCHLD, &dfl, NULL) == 0;

    hid_t cls = H5Pcreate_class(H5P_ROOT, "basin-h5guard", h5guard_fork_locked, &g, NULL, NULL, NULL, NULL);
    hid_t plist = cls < 0 ? H5I_INVALID_HID : H5Pcreate(cls);
    if (plist >= 0) H5Pclose(plist);
    if (cls >= 0) H5Pclose_class(cls);

    int rc = BASIN_OK, status = 0;
    if (g.pid < 0) {
        snprintf(why, why_len, "cannot check the file in a child process: %s",
                 g.fork_errno ? strerror(g.fork_errno) : "HDF5 could not create a property list");
        rc = BASIN_ERR_RUNTIME;
        goto done;
    }
    pid_t w;
    do {
        w = waitpid(g.pid, &status, 0);
    } while (w < 0 && errno == EINTR);
    if (w < 0) {
        snprintf(why, why_len, "cannot check the file in a child process: waitpid: %s", strerror(errno));
        rc = BASIN_ERR_RUNTIME;
        goto done;
    }
    if (WIFEXITED(status)) {
        int code = WEXITSTATUS(status);
        if (code == H5GUARD_EXIT_ACCEPTED || code == H5GUARD_EXIT_REFUSED || code == H5GUARD_EXIT_FAILED) {
            if (verdict)
                *verdict = code == H5GUARD_EXIT_ACCEPTED ? BASIN_OK
                           : code == H5GUARD_EXIT_REFUSED ? BASIN_ERR_USAGE : BASIN_ERR_RUNTIME;
            goto done;
        }
        snprintf(why, why_len, "damaged HDF5 file: the HDF5 library crashed reading its metadata (exit status %d)",
                 code);
        rc = BASIN_ERR_USAGE;
        goto done;
    }
    int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    switch (sig) {
    case SIGSEGV: case SIGBUS: case SIGILL: case SIGFPE: case SIGABRT: case SIGTRAP: case SIGSYS:
        snprintf(why, why_len, "damaged HDF5 file: the HDF5 library crashed reading its metadata (signal %d, %s)",
                 sig, strsignal(sig));
        rc = BASIN_ERR_USAGE;
        break;
    case SIGALRM:
        snprintf(why, why_len, "damaged HDF5 file: the HDF5 library did not finish reading its metadata in %u s",
                 (unsigned)(60 + (file_bytes >> 26)));
        rc = BASIN_ERR_USAGE;
        break;
    default:
        snprintf(why, why_len, "the check of the file in a child process was stopped (%s %d)",
                 sig ? "signal" : "status", sig ? sig : status);
        rc = BASIN_ERR_RUNTIME;
    }

done:
    if (restore_chld) sigaction(SIGCHLD, &old_chld, NULL);
    return rc;
}

#endif
