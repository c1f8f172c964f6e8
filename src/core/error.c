#include "core/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int basin_env_rank(void)
{
    const char *vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return atoi(v);
    }
    return -1;
}

/* Held lines: only the holding thread's, so no lock is needed. */
static _Thread_local int held;
static _Thread_local char held_text[4096];
static _Thread_local size_t held_len;

void basin_errors_hold(void)
{
    held = 1;
    held_len = 0;
    held_text[0] = '\0';
}

void basin_errors_release(int print)
{
    held = 0;
    if (print && held_len) {
        fputs(held_text, stderr);
        fflush(stderr);
    }
    held_len = 0;
}

static void vreport(const char *kind, const char *file, int line, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    int rank = basin_env_rank();
    char where[256] = "";
    if (file) snprintf(where, sizeof where, " (%s:%d)", file, line);
    if (held) {
        if (held_len < sizeof held_text) {
            int n = rank >= 0 ? snprintf(held_text + held_len, sizeof held_text - held_len,
                                         "basin: rank %d: %s: %s%s\n", rank, kind, msg, where)
                              : snprintf(held_text + held_len, sizeof held_text - held_len, "basin: %s: %s%s\n",
                                         kind, msg, where);
            if (n > 0) held_len += (size_t)n;
            if (held_len > sizeof held_text) held_len = sizeof held_text;
        }
        return;
    }
    if (rank >= 0)
        fprintf(stderr, "basin: rank %d: %s: %s%s\n", rank, kind, msg, where);
    else
        fprintf(stderr, "basin: %s: %s%s\n", kind, msg, where);
    fflush(stderr);
}

int basin_error(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport("error", NULL, 0, fmt, ap);
    va_end(ap);
    return code;
}

int basin_error_at(int code, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport("error", file, line, fmt, ap);
    va_end(ap);
    return code;
}

void basin_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport("warning", NULL, 0, fmt, ap);
    va_end(ap);
}

static int info_speaker = -1;

void basin_info_speaker(int speaks)
{
    info_speaker = speaks;
}

void basin_info(const char *fmt, ...)
{
    if (info_speaker == 0 || (info_speaker < 0 && basin_env_rank() > 0)) return;
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

void *basin_malloc_at(size_t bytes, const char *file, int line)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) basin_error_at(BASIN_ERR_RUNTIME, file, line, "out of memory allocating %zu bytes", bytes);
    return p;
}

void *basin_calloc_at(size_t n, size_t size, const char *file, int line)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) basin_error_at(BASIN_ERR_RUNTIME, file, line, "out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

void *basin_aligned_alloc_at(size_t bytes, const char *file, int line)
{
    void *p = NULL;
    size_t rounded = (bytes + 63) / 64 * 64;
    if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0) {
        basin_error_at(BASIN_ERR_RUNTIME, file, line, "out of memory allocating %zu bytes", bytes);
        return NULL;
    }
    return p;
}
