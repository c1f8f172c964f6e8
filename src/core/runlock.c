#include "core/runlock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/error.h"
#include "core/files.h"

/* The holder's own words, for the refusal: "process P on host H since T". */
static void describe_holder(int fd, char *buf, size_t len)
{
    char text[512];
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    if (n > 0) {
        text[n] = '\0';
        text[strcspn(text, "\n")] = '\0';
        snprintf(buf, len, "%s", text);
        return;
    }
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK && fl.l_pid > 0)
        snprintf(buf, len, "process %ld", (long)fl.l_pid);
    else
        snprintf(buf, len, "a process that has not said who it is");
}

int runlock_acquire(RunLock *l, const char *dir, const char *what)
{
    if (l->n >= 2) return BASIN_FAIL(BASIN_ERR_RUNTIME, "runlock: at most two folders");
    TRY(basin_make_dirs(dir));
    char path[4096];
    if (snprintf(path, sizeof path, "%s/.basin.lock", dir) >= (int)sizeof path)
        return basin_error(BASIN_ERR_USAGE, "%s %s: path too long", what, dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0)
        return basin_error(BASIN_ERR_USAGE, "%s %s: cannot create %s: %s", what, dir, path, strerror(errno));
    /* The same file as a folder already locked (--checkpoint-dir equal to
     * --output-dir): a second descriptor would release the lock when closed. */
    struct stat st, other;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "fstat(%s) failed: %s", path, strerror(e));
    }
    for (int i = 0; i < l->n; i++)
        if (fstat(l->fd[i], &other) == 0 && other.st_dev == st.st_dev && other.st_ino == st.st_ino) {
            close(fd);
            return BASIN_OK;
        }
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (fcntl(fd, F_SETLK, &fl) != 0) {
        int e = errno;
        int rc;
        if (e == EACCES || e == EAGAIN) {
            char holder[512];
            describe_holder(fd, holder, sizeof holder);
            rc = basin_error(BASIN_ERR_USAGE,
                             "%s %s is in use by another run (%s): wait for it to end or stop it, or give "
                             "this run another %s", what, dir, holder, what);
        } else {
            rc = basin_error(BASIN_ERR_USAGE, "%s %s: cannot lock %s: %s", what, dir, path, strerror(e));
        }
        close(fd);
        return rc;
    }
    char host[256] = "?", since[64] = "?", text[512];
    if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "?");
    host[sizeof host - 1] = '\0';
    time_t now = time(NULL);
    struct tm tm;
    if (gmtime_r(&now, &tm)) strftime(since, sizeof since, "%Y-%m-%d %H:%M:%S UTC", &tm);
    int n = snprintf(text, sizeof text, "process %ld on host %s since %s\n", (long)getpid(), host, since);
    if (ftruncate(fd, 0) != 0 || pwrite(fd, text, (size_t)n, 0) != n) {
        int e = errno;
        close(fd);
        return basin_error(BASIN_ERR_USAGE, "%s %s: cannot write %s: %s", what, dir, path, strerror(e));
    }
    l->fd[l->n++] = fd;
    return BASIN_OK;
}

void runlock_release(RunLock *l)
{
    for (int i = 0; i < l->n; i++) close(l->fd[i]);
    l->n = 0;
    l->fd[0] = l->fd[1] = -1;
}
