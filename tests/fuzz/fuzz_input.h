/* A fuzz input as a file: HDF5 opens files by name, and the readers under
 * test stat the file, compare sizes with it and pread from it, so each input
 * is written to a file in a private folder on tmpfs (/dev/shm when there is
 * one) rather than handed to HDF5's core driver as a file image, which would
 * skip those paths. */
#ifndef BASIN_FUZZ_INPUT_H
#define BASIN_FUZZ_INPUT_H

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The input file's path, made once per process. */
static const char *fuzz_input_path(void)
{
    static char path[512];
    if (!path[0]) {
        struct stat st;
        const char *base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : getenv("TMPDIR");
        char dir[400];
        snprintf(dir, sizeof dir, "%s/basin-fuzz-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(dir)) {
            perror("mkdtemp");
            abort();
        }
        snprintf(path, sizeof path, "%s/input.h5", dir);
    }
    return path;
}

static void fuzz_remove_input(void)
{
    const char *path = fuzz_input_path();
    unlink(path);
    char dir[512];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0', rmdir(dir);
}

/* Write data[0..size) as the whole input file; its path. */
static const char *fuzz_write_input(const uint8_t *data, size_t size)
{
    static int registered;
    const char *path = fuzz_input_path();
    if (!registered) registered = atexit(fuzz_remove_input) == 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        perror(path);
        abort();
    }
    while (size > 0) {
        ssize_t n = write(fd, data, size);
        if (n <= 0) {
            perror(path);
            abort();
        }
        data += n, size -= (size_t)n;
    }
    close(fd);
    return path;
}

#endif
