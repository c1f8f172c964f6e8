#include "core/files.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"

int basin_make_dirs(const char *dir)
{
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf)
        return basin_error(BASIN_ERR_USAGE, "%s: path too long", dir);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return basin_error(BASIN_ERR_USAGE, "cannot create directory %s: %s", buf, strerror(errno));
            *p = c;
            if (c == '\0') break;
        }
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return basin_error(BASIN_ERR_USAGE, "%s is not a directory", dir);
    return BASIN_OK;
}

int basin_make_parent_dirs(const char *path)
{
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir)
        return basin_error(BASIN_ERR_USAGE, "%s: path too long", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return BASIN_OK;
    *slash = '\0';
    return basin_make_dirs(dir);
}

int basin_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return BASIN_FAIL(BASIN_ERR_RUNTIME, "open(%s) for fsync failed: %s", dir, strerror(errno));
    int rc = BASIN_OK;
    /* Some file systems cannot fsync a folder; that loses nothing here. */
    if (fsync(fd) != 0 && errno != EINVAL && errno != EROFS)
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "fsync(%s) failed: %s", dir, strerror(errno));
    close(fd);
    return rc;
}
