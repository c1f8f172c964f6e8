#include "core/preempt.h"

#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"

/* A signal handler may only touch lock-free atomics and volatile
 * sig_atomic_t of static storage, and call async-signal-safe functions
 * (write, open, rename, _exit): this file's state is all of that kind. */
static volatile sig_atomic_t pending;

static char grace_line[1024];
static char grace_status[1024];
static char grace_status_path[4096];
static char grace_status_tmp[4112];
static volatile sig_atomic_t grace_code = BASIN_EXIT_PREEMPTED_UNSAVED;

static void on_stop(int sig) { pending = sig; }

static void write_all(int fd, const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

static void on_grace_expired(int sig)
{
    (void)sig;
    if (grace_line[0]) write_all(2, grace_line);
    if (grace_status_path[0]) {
        int fd = open(grace_status_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
        if (fd >= 0) {
            write_all(fd, grace_status);
            if (close(fd) == 0) (void)rename(grace_status_tmp, grace_status_path);
        }
    }
    _exit(grace_code);
}

/* Set `handler` for sig unless it is already there (MPI start-up may have
 * put its own). */
static int ensure(int sig, void (*handler)(int), int flags)
{
    struct sigaction cur, sa;
    if (sigaction(sig, NULL, &cur) == 0 && cur.sa_handler == handler) return BASIN_OK;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    if (sigaction(sig, &sa, NULL) != 0) return BASIN_FAIL(BASIN_ERR_RUNTIME, "sigaction(%d) failed", sig);
    return BASIN_OK;
}

int preempt_install(void)
{
    TRY(ensure(SIGTERM, on_stop, SA_RESTART));
    TRY(ensure(SIGUSR1, on_stop, SA_RESTART));
    return ensure(SIGALRM, on_grace_expired, 0);
}

int preempt_pending(void) { return pending; }

void preempt_clear(void) { pending = 0; }

void preempt_arm_grace(double seconds, int code, const char *line, const char *status_path, const char *status)
{
    alarm(0);
    if (!(seconds > 0)) return;
    grace_code = code;
    snprintf(grace_line, sizeof grace_line, "%s", line ? line : "");
    grace_status_path[0] = grace_status_tmp[0] = '\0';
    if (status_path && status) {
        snprintf(grace_status_path, sizeof grace_status_path, "%s", status_path);
        snprintf(grace_status_tmp, sizeof grace_status_tmp, "%s.tmp", status_path);
        snprintf(grace_status, sizeof grace_status, "%s", status);
    }
    alarm((unsigned)ceil(seconds));
}
