/* Errors and logging.
 *
 * Library code returns a status (BASIN_OK, BASIN_ERR_USAGE, BASIN_ERR_RUNTIME);
 * only a program's main decides to exit. Every message is one line that names
 * the rank (from the launcher's environment, so this file needs no MPI), the
 * failed call and its place:
 *
 *   basin: rank 3: error: H5Dread failed (src/reader/dataset.c:88): ...
 */
#ifndef BASIN_ERROR_H
#define BASIN_ERROR_H

#include <stdarg.h>
#include <stddef.h>

#include "core/exit_codes.h"

enum {
    BASIN_OK = 0,
    BASIN_ERR_RUNTIME = 1, /* a call failed: I/O, MPI, HDF5, out of memory */
    BASIN_ERR_USAGE = 2,   /* the user asked for something wrong */
};

/* Rank of this process as the launcher (mpirun) announced it, or -1. */
int basin_env_rank(void);

/* Print "basin[: rank R]: error: <msg>" and return code. */
int basin_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The same with " (file:line)" appended: for failed calls, not user mistakes. */
int basin_error_at(int code, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void basin_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Informational line on stdout, printed by rank 0 (or a rank-less process). */
void basin_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Who prints basin_info's lines: 1 this process, 0 not this one, -1 (the
 * default) the launcher's rank 0. A job whose rank 0 does not train (a
 * reader placed by --roles) hands the lines to its first trainer. */
void basin_info_speaker(int speaks);

/* One line per job, not per rank: between basin_errors_hold() and
 * basin_errors_release(), this thread's error and warning lines are kept
 * instead of printed. The ranks then agree which one speaks (the lowest that
 * failed) and pass print = 1 there only, so a mistake that every rank finds
 * is printed once, and a mistake one rank finds (a file missing on its host)
 * still is. */
void basin_errors_hold(void);
void basin_errors_release(int print);

#define BASIN_FAIL(code, ...) basin_error_at((code), __FILE__, __LINE__, __VA_ARGS__)

/* Propagate a non-zero status to the caller. */
#define TRY(expr)                      \
    do {                               \
        int basin_try_rc_ = (expr);    \
        if (basin_try_rc_) return basin_try_rc_; \
    } while (0)

/* Allocation that reports its size and place on failure. */
void *basin_malloc_at(size_t bytes, const char *file, int line);
void *basin_calloc_at(size_t n, size_t size, const char *file, int line);
#define basin_malloc(bytes) basin_malloc_at((bytes), __FILE__, __LINE__)
#define basin_calloc(n, size) basin_calloc_at((n), (size), __FILE__, __LINE__)
/* 64-byte aligned memory for the flat buffers and activations. */
void *basin_aligned_alloc_at(size_t bytes, const char *file, int line);
#define basin_aligned_alloc(bytes) basin_aligned_alloc_at((bytes), __FILE__, __LINE__)

#endif
