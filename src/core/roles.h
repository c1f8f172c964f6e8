/* basin-train --roles FILE: which ranks are reader processes (remote.h),
 * decided by the hosts they run on.
 *
 * FILE is the Open MPI hostfile the job is started with (mpirun --hostfile
 * FILE): one host a line, then Open MPI's KEY=VALUE fields (slots=8,
 * max_slots=16, ...); '#' starts a comment. A comment "basin:reader" at the
 * end of a host's line makes it a reader host; mpirun ignores comments, so
 * one file serves both:
 *
 *     node01 slots=8
 *     node02 slots=4   # basin:reader
 *
 * Every rank running on a reader host reads, all others train.
 * "basin:trainer" says the default aloud; any other word after "basin:" is
 * refused, as is a line that is not HOST [KEY=VALUE ...].
 *
 * A rank runs on a host line when the line's host is its hostname, full or
 * up to the first dot (case ignored), or resolves (getaddrinfo) to an
 * address of one of its interfaces (getifaddrs): hostfiles often name hosts
 * by address, and a host's name in DNS need not be what it calls itself. */
#ifndef BASIN_CORE_ROLES_H
#define BASIN_CORE_ROLES_H

#include <mpi.h>
#include <stddef.h>

typedef struct {
    char *host;  /* as written, without a user@ prefix or IPv6 brackets */
    int line;    /* 1-based */
    int reader;  /* 1: "# basin:reader" */
} RolesHost;

typedef struct {
    RolesHost *hosts;
    int n;
    int readers; /* host lines marked reader */
} RolesFile;

/* The most bytes a hostfile may have. */
#define ROLES_MAX_BYTES (1 << 20)

/* Parse a hostfile's text. 0, or -1 with the reason in why (nothing is
 * printed): a line that is not HOST [KEY=VALUE ...], a role word other than
 * reader and trainer, a role on a line without a host, one host given both
 * roles, no host at all. */
int roles_parse(const char *text, RolesFile *out, char *why, size_t len);
void roles_free(RolesFile *f);

/* What a process is known by: its hostname and its interfaces' addresses. */
typedef struct RolesSelf RolesSelf;

/* This process's identity (BASIN_ERR_RUNTIME after a line when the system
 * calls fail). */
int roles_self_open(RolesSelf **out);
/* An identity of the given hostname and numeric addresses (IPv4 or IPv6),
 * for tests. */
int roles_self_make(const char *hostname, const char *const *addresses, int n, RolesSelf **out);
void roles_self_close(RolesSelf *s);
/* 1 when a hostfile's host names the host of identity s. */
int roles_is_self(const RolesSelf *s, const char *host);

/* Collective over comm. Rank 0 reads path and sends its text to every rank
 * (the other hosts need not have the file); each rank matches its own host.
 * *reader: 1 when this rank reads; *readers: how many ranks of comm read
 * (0 when no line is marked reader). desc gets a line for the log naming
 * the reader ranks and hosts. Refused with one line from rank 0 and
 * BASIN_ERR_USAGE on every rank: the file cannot be read or does not parse,
 * every rank would read, a reader host runs no rank of comm. */
int roles_assign(const char *path, MPI_Comm comm, int *reader, int *readers, char *desc, size_t len);
/* --check=RANKS, where the ranks' hosts are not known: every rank reads and
 * parses path (the refusals above that need no ranks, one line from rank 0
 * of comm), and desc names its reader hosts. */
int roles_check_file(const char *path, MPI_Comm comm, char *desc, size_t len);

/* "1,3,5-8": ranks (ascending) as text, runs of three or more as ranges. */
void roles_rank_text(const int *ranks, int n, char *buf, size_t len);

#endif
