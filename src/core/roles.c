/* basin-train --roles FILE (roles.h): the hostfile's reader hosts, and which
 * ranks of the job run on them. */
#include "core/roles.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/error.h"
#include "core/mpi_check.h"

#define ROLES_MAX_LINE 4096

/* ------------------------------ the file -------------------------------- */

static const char *skip_space(const char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\r') s++;
    return s;
}

static int is_field_char(int c)
{
    return isalnum(c) || c == '_' || c == '-';
}

/* The role a comment gives: -1 none (not "basin:..."), 0 trainer, 1 reader,
 * -2 an unknown word (why says it). */
static int parse_role(const char *comment, int line, char *why, size_t len)
{
    const char *s = skip_space(comment);
    if (strncmp(s, "basin:", 6) != 0) return -1;
    s = skip_space(s + 6);
    size_t n = strcspn(s, " \t\r");
    int rest = *skip_space(s + n) != '\0';
    if (!rest && n == 6 && !strncmp(s, "reader", 6)) return 1;
    if (!rest && n == 7 && !strncmp(s, "trainer", 7)) return 0;
    snprintf(why, len, "line %d: role '%.*s': expected '# basin:reader' or '# basin:trainer'", line,
             (int)strcspn(s, "\r"), s);
    return -2;
}

/* The host of a line's first token: without user@, without [ ] around an
 * IPv6 address; 0, or -1 when it holds characters no host name has. */
static int take_host(const char *tok, size_t n, char *out, size_t cap)
{
    const char *at = memchr(tok, '@', n);
    while (at) { /* the last '@' ends the user part */
        n -= (size_t)(at + 1 - tok);
        tok = at + 1;
        at = memchr(tok, '@', n);
    }
    if (n >= 2 && tok[0] == '[' && tok[n - 1] == ']') tok++, n -= 2;
    if (n == 0 || n >= cap) return -1;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)tok[i]) && !strchr(".-_:%", tok[i])) return -1;
    memcpy(out, tok, n);
    out[n] = '\0';
    return 0;
}

/* Open MPI's fields after the host: KEY=VALUE (spaces around '=' allowed).
 * 0, or -1 with the first token that is not one in why. */
static int check_fields(const char *s, int line, char *why, size_t len)
{
    for (s = skip_space(s); *s; s = skip_space(s)) {
        const char *tok = s, *k = s;
        while (is_field_char((unsigned char)*k)) k++;
        const char *eq = skip_space(k);
        const char *v = *eq == '=' ? skip_space(eq + 1) : eq;
        const char *end = v;
        while (*end && *end != ' ' && *end != '\t' && *end != '\r' && *end != '=') end++;
        if (k == tok || *eq != '=' || end == v) {
            snprintf(why, len, "line %d: '%.*s' is not a host's field (expected KEY=VALUE, such as slots=4)", line,
                     (int)strcspn(tok, " \t\r"), tok);
            return -1;
        }
        s = end;
    }
    return 0;
}

static int add_host(RolesFile *f, const char *host, int line, int reader)
{
    if (f->n % 64 == 0) {
        RolesHost *h = realloc(f->hosts, (size_t)(f->n + 64) * sizeof *h);
        if (!h) return -1;
        f->hosts = h;
    }
    size_t n = strlen(host) + 1;
    char *copy = malloc(n);
    if (!copy) return -1;
    memcpy(copy, host, n);
    f->hosts[f->n++] = (RolesHost){.host = copy, .line = line, .reader = reader};
    f->readers += reader;
    return 0;
}

/* One line (its comment cut off by the caller's copy). */
static int parse_line(char *buf, int line, RolesFile *f, char *why, size_t len)
{
    char *hash = strchr(buf, '#');
    int role = -1;
    if (hash) {
        *hash = '\0';
        role = parse_role(hash + 1, line, why, len);
        if (role == -2) return -1;
    }
    const char *s = skip_space(buf);
    if (!*s) {
        if (role < 0) return 0; /* blank or a comment */
        snprintf(why, len, "line %d: a role without a host (the mark goes at the end of the host's line)", line);
        return -1;
    }
    size_t n = strcspn(s, " \t\r");
    char host[256];
    if (take_host(s, n, host, sizeof host)) {
        snprintf(why, len, "line %d: '%.*s' is not a host name or address", line, (int)n, s);
        return -1;
    }
    if (check_fields(s + n, line, why, len)) return -1;
    if (add_host(f, host, line, role == 1)) {
        snprintf(why, len, "out of memory");
        return -1;
    }
    return 0;
}

/* A host written twice (Open MPI adds up its slots) must have one role. */
static int check_conflicts(const RolesFile *f, char *why, size_t len)
{
    for (int i = 0; i < f->n; i++)
        for (int j = i + 1; j < f->n; j++)
            if (f->hosts[i].reader != f->hosts[j].reader && !strcasecmp(f->hosts[i].host, f->hosts[j].host)) {
                const RolesHost *r = f->hosts[i].reader ? &f->hosts[i] : &f->hosts[j];
                const RolesHost *t = f->hosts[i].reader ? &f->hosts[j] : &f->hosts[i];
                snprintf(why, len, "host %s is a reader on line %d and a trainer on line %d: give it one role",
                         r->host, r->line, t->line);
                return -1;
            }
    return 0;
}

int roles_parse(const char *text, RolesFile *out, char *why, size_t len)
{
    memset(out, 0, sizeof *out);
    int line = 0;
    for (const char *p = text; *p;) {
        line++;
        size_t n = strcspn(p, "\n");
        if (n >= ROLES_MAX_LINE) {
            snprintf(why, len, "line %d: longer than %d characters", line, ROLES_MAX_LINE - 1);
            roles_free(out);
            return -1;
        }
        char buf[ROLES_MAX_LINE];
        memcpy(buf, p, n);
        buf[n] = '\0';
        p += n + (p[n] == '\n');
        if (parse_line(buf, line, out, why, len)) {
            roles_free(out);
            return -1;
        }
    }
    if (out->n == 0) snprintf(why, len, "no host line");
    if (out->n == 0 || check_conflicts(out, why, len)) {
        roles_free(out);
        return -1;
    }
    return 0;
}

void roles_free(RolesFile *f)
{
    for (int i = 0; i < f->n; i++) free(f->hosts[i].host);
    free(f->hosts);
    memset(f, 0, sizeof *f);
}

/* ------------------------------ the host -------------------------------- */

typedef struct {
    int family;
    unsigned char bytes[16];
} Address;

struct RolesSelf {
    char name[256], short_name[256];
    Address *addr;
    int n;
};

/* The address part of a socket address (1), or 0 for another family. */
static int address_of(const struct sockaddr *sa, Address *out)
{
    memset(out, 0, sizeof *out);
    out->family = sa->sa_family;
    if (sa->sa_family == AF_INET) {
        memcpy(out->bytes, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
        return 1;
    }
    if (sa->sa_family == AF_INET6) {
        memcpy(out->bytes, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
        return 1;
    }
    return 0;
}

static void set_name(RolesSelf *s, const char *name)
{
    snprintf(s->name, sizeof s->name, "%s", name);
    snprintf(s->short_name, sizeof s->short_name, "%.*s", (int)strcspn(name, "."), name);
}

int roles_self_open(RolesSelf **out)
{
    *out = NULL;
    RolesSelf *s = basin_calloc(1, sizeof *s);
    if (!s) return BASIN_ERR_RUNTIME;
    char name[256];
    if (gethostname(name, sizeof name) != 0) {
        int e = errno;
        free(s);
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "gethostname failed: %s", strerror(e));
    }
    name[sizeof name - 1] = '\0';
    set_name(s, name);
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) != 0) {
        int e = errno;
        free(s);
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "getifaddrs failed: %s", strerror(e));
    }
    int n = 0;
    for (struct ifaddrs *i = ifs; i; i = i->ifa_next) n += i->ifa_addr != NULL;
    s->addr = basin_calloc((size_t)(n ? n : 1), sizeof *s->addr);
    if (!s->addr) {
        freeifaddrs(ifs);
        free(s);
        return BASIN_ERR_RUNTIME;
    }
    for (struct ifaddrs *i = ifs; i; i = i->ifa_next)
        if (i->ifa_addr && address_of(i->ifa_addr, &s->addr[s->n])) s->n++;
    freeifaddrs(ifs);
    *out = s;
    return BASIN_OK;
}

int roles_self_make(const char *hostname, const char *const *addresses, int n, RolesSelf **out)
{
    *out = NULL;
    RolesSelf *s = basin_calloc(1, sizeof *s);
    if (!s) return BASIN_ERR_RUNTIME;
    s->addr = basin_calloc((size_t)(n > 0 ? n : 1), sizeof *s->addr);
    if (!s->addr) {
        free(s);
        return BASIN_ERR_RUNTIME;
    }
    set_name(s, hostname);
    for (int i = 0; i < n; i++) {
        Address *a = &s->addr[s->n];
        if (inet_pton(AF_INET, addresses[i], a->bytes) == 1) a->family = AF_INET, s->n++;
        else if (inet_pton(AF_INET6, addresses[i], a->bytes) == 1) a->family = AF_INET6, s->n++;
    }
    if (s->n != n) {
        roles_self_close(s);
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "roles_self_make: an address that is not numeric");
    }
    *out = s;
    return BASIN_OK;
}

void roles_self_close(RolesSelf *s)
{
    if (!s) return;
    free(s->addr);
    free(s);
}

int roles_is_self(const RolesSelf *s, const char *host)
{
    if (!strcasecmp(host, s->name) || (s->short_name[0] && !strcasecmp(host, s->short_name))) return 1;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM; /* one entry per address, not one per socket type */
    if (getaddrinfo(host, NULL, &hints, &res) != 0) return 0;
    int found = 0;
    for (struct addrinfo *ai = res; ai && !found; ai = ai->ai_next) {
        Address a;
        if (!ai->ai_addr || !address_of(ai->ai_addr, &a)) continue;
        for (int i = 0; i < s->n && !found; i++)
            found = s->addr[i].family == a.family && !memcmp(s->addr[i].bytes, a.bytes, sizeof a.bytes);
    }
    freeaddrinfo(res);
    return found;
}

/* ------------------------------ the job --------------------------------- */

/* The file's text into *text (NUL-terminated); -1 with why when it cannot
 * be read or is too large to be a hostfile. */
static long read_text(const char *path, char **text, char *why, size_t len)
{
    *text = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(why, len, "cannot read it: %s", strerror(errno));
        return -1;
    }
    char *buf = malloc((size_t)ROLES_MAX_BYTES + 2);
    size_t n = buf ? fread(buf, 1, (size_t)ROLES_MAX_BYTES + 1, f) : 0;
    int bad = !buf || ferror(f);
    int e = errno;
    fclose(f);
    if (bad) {
        snprintf(why, len, "cannot read it: %s", buf ? strerror(e) : "out of memory");
        free(buf);
        return -1;
    }
    if (n > (size_t)ROLES_MAX_BYTES || memchr(buf, '\0', n)) {
        snprintf(why, len, "not a hostfile (%s)", n > (size_t)ROLES_MAX_BYTES ? "larger than 1 MiB" : "a NUL byte");
        free(buf);
        return -1;
    }
    buf[n] = '\0';
    *text = buf;
    return (long)n;
}

/* Rank 0's reading of path, parsed on every rank of comm; a refusal is one
 * line from rank 0, BASIN_ERR_USAGE everywhere. */
static int load_shared(const char *path, MPI_Comm comm, RolesFile *f)
{
    int rank;
    BASIN_MPI(MPI_Comm_rank(comm, &rank));
    char why[1024] = "", *text = NULL;
    long n = rank == 0 ? read_text(path, &text, why, sizeof why) : 0;
    BASIN_MPI(MPI_Bcast(&n, 1, MPI_LONG, 0, comm));
    if (n < 0) {
        if (rank == 0) basin_error(BASIN_ERR_USAGE, "--roles %s: %s", path, why);
        return BASIN_ERR_USAGE;
    }
    /* Out of memory here ends the job (basin-train aborts on a runtime
     * error), so rank 0 is not left in the broadcast for long. */
    if (rank != 0 && !(text = basin_malloc((size_t)n + 1))) return BASIN_ERR_RUNTIME;
    int mrc = MPI_Bcast(text, (int)n, MPI_CHAR, 0, comm);
    if (mrc != MPI_SUCCESS) {
        free(text);
        return basin_mpi_fail(mrc, "MPI_Bcast(--roles file)", __FILE__, __LINE__);
    }
    text[n] = '\0';
    int bad = roles_parse(text, f, why, sizeof why) != 0;
    free(text);
    if (bad && rank == 0) basin_error(BASIN_ERR_USAGE, "--roles %s: %s", path, why);
    return bad ? BASIN_ERR_USAGE : BASIN_OK;
}

void roles_rank_text(const int *ranks, int n, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && used < len; i++) {
        int j = i;
        while (j + 1 < n && ranks[j + 1] == ranks[j] + 1) j++;
        const char *sep = used ? "," : "";
        if (j > i + 1) used += (size_t)snprintf(buf + used, len - used, "%s%d-%d", sep, ranks[i], ranks[j]);
        else if (j == i + 1) used += (size_t)snprintf(buf + used, len - used, "%s%d,%d", sep, ranks[i], ranks[j]);
        else used += (size_t)snprintf(buf + used, len - used, "%s%d", sep, ranks[i]);
        i = j;
    }
}

/* "a (line 2), b (line 5)": the reader hosts. */
static void reader_hosts(const RolesFile *f, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < f->n && used < len; i++)
        if (f->hosts[i].reader)
            used += (size_t)snprintf(buf + used, len - used, "%s%s (line %d)", used ? ", " : "", f->hosts[i].host,
                                     f->hosts[i].line);
}

/* Which reader hosts this rank is on (hit[i]), and whether it is on any. */
static int match_self(const RolesFile *f, int *hit, int *reader)
{
    RolesSelf *self;
    TRY(roles_self_open(&self));
    *reader = 0;
    for (int i = 0; i < f->n; i++) {
        hit[i] = f->hosts[i].reader && roles_is_self(self, f->hosts[i].host);
        *reader |= hit[i];
    }
    roles_self_close(self);
    return BASIN_OK;
}

/* The refusals once every rank has matched: all read, or a reader host that
 * runs no rank. */
static int check_placement(const RolesFile *f, const int *hit, int readers, int size, char *why, size_t len)
{
    if (readers == size) {
        char hosts[512];
        reader_hosts(f, hosts, sizeof hosts);
        snprintf(why, len, "every rank of the job runs on a reader host (%s): a hostfile role that names no "
                 "trainer; mark fewer hosts '# basin:reader'", hosts);
        return -1;
    }
    for (int i = 0; i < f->n; i++)
        if (f->hosts[i].reader && !hit[i]) {
            snprintf(why, len, "line %d: reader host %s runs no rank of this job (no rank has that hostname or an "
                     "address it resolves to): start ranks there, or remove its mark", f->hosts[i].line,
                     f->hosts[i].host);
            return -1;
        }
    return 0;
}

int roles_assign(const char *path, MPI_Comm comm, int *reader, int *readers, char *desc, size_t len)
{
    *reader = *readers = 0;
    desc[0] = '\0';
    int rank, size;
    BASIN_MPI(MPI_Comm_rank(comm, &rank));
    BASIN_MPI(MPI_Comm_size(comm, &size));
    RolesFile f;
    TRY(load_shared(path, comm, &f));
    if (f.readers == 0) {
        snprintf(desc, len, "--roles %s: no host is marked '# basin:reader': every rank trains", path);
        roles_free(&f);
        return BASIN_OK;
    }
    int *hit = basin_calloc((size_t)f.n + (size_t)size, sizeof *hit), *flags = hit + f.n;
    if (!hit) {
        roles_free(&f);
        return BASIN_ERR_RUNTIME; /* the job is aborted */
    }
    int rc = match_self(&f, hit, reader);
    /* A rank whose matching failed still takes part in the collectives and
     * fails the job after them. */
    int mrc = MPI_Allreduce(MPI_IN_PLACE, hit, f.n, MPI_INT, MPI_MAX, comm);
    if (mrc == MPI_SUCCESS) mrc = MPI_Allgather(reader, 1, MPI_INT, flags, 1, MPI_INT, comm);
    if (mrc != MPI_SUCCESS) {
        free(hit);
        roles_free(&f);
        return basin_mpi_fail(mrc, "MPI_Allreduce(--roles hosts)", __FILE__, __LINE__);
    }
    for (int r = 0; !rc && r < size; r++) *readers += flags[r];
    char why[1024];
    if (!rc && check_placement(&f, hit, *readers, size, why, sizeof why)) {
        if (rank == 0) basin_error(BASIN_ERR_USAGE, "--roles %s: %s", path, why);
        rc = BASIN_ERR_USAGE;
    }
    if (!rc) {
        char ranks[512], hosts[512];
        int k = 0;
        for (int r = 0; r < size; r++) /* the flags become the list of reader ranks */
            if (flags[r]) flags[k++] = r;
        roles_rank_text(flags, k, ranks, sizeof ranks);
        reader_hosts(&f, hosts, sizeof hosts);
        snprintf(desc, len, "--roles %s: rank(s) %s read (reader hosts %s), the other %d train", path, ranks, hosts,
                 size - *readers);
    }
    free(hit);
    roles_free(&f);
    return rc;
}

int roles_check_file(const char *path, MPI_Comm comm, char *desc, size_t len)
{
    desc[0] = '\0';
    RolesFile f;
    TRY(load_shared(path, comm, &f));
    char hosts[512];
    reader_hosts(&f, hosts, sizeof hosts);
    if (f.readers) snprintf(desc, len, "--roles %s: the ranks on %s will read (which ranks is decided at start)",
                            path, hosts);
    else snprintf(desc, len, "--roles %s: no host is marked '# basin:reader': every rank trains", path);
    roles_free(&f);
    return BASIN_OK;
}
