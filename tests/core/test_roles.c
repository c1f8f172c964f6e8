/* basin-train --roles (core/roles.h) without MPI: reading hostfiles (Open
 * MPI's syntax with basin's role comments, and every refusal), matching a
 * host line to a host by name or by address, and the rank lists of the
 * log. The job-wide part (which ranks read) runs in tests/e2e/roles_cli.sh
 * and, across simulated hosts, tests/e2e/roles_simcluster.sh. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/roles.h"
#include "testing.h"

static void check_good(void)
{
    const char *text = "# a cluster\n"
                       "\n"
                       "node01 slots=8 max_slots=16\n"
                       "node02.example.org slots = 4   # basin:reader\n"
                       "   user@node03\tslots=2 #basin:trainer\n"
                       "10.77.0.4 # spare, not a role\n"
                       "[fe80::1] slots=1 #  basin: reader  \r\n"
                       "node01 slots=2\n"
                       "node05";
    RolesFile f;
    char why[512] = "";
    EXPECT(roles_parse(text, &f, why, sizeof why) == 0, "refused: %s", why);
    static const struct { const char *host; int line, reader; } want[] = {
        {"node01", 3, 0}, {"node02.example.org", 4, 1}, {"node03", 5, 0}, {"10.77.0.4", 6, 0},
        {"fe80::1", 7, 1}, {"node01", 8, 0}, {"node05", 9, 0},
    };
    int n = (int)(sizeof want / sizeof want[0]);
    EXPECT(f.n == n && f.readers == 2, "%d hosts, %d readers", f.n, f.readers);
    for (int i = 0; i < n && i < f.n; i++)
        EXPECT(!strcmp(f.hosts[i].host, want[i].host) && f.hosts[i].line == want[i].line &&
                   f.hosts[i].reader == want[i].reader,
               "host %d: %s line %d reader %d", i, f.hosts[i].host, f.hosts[i].line, f.hosts[i].reader);
    roles_free(&f);
}

static void check_refused(void)
{
    static const struct { const char *text, *want; } bad[] = {
        {"node01 slots=4 # basin:writer\n", "line 1: role 'writer': expected"},
        {"node01\nnode02 # basin:Reader\n", "line 2: role 'Reader'"},
        {"node01 # basin:reader trainer\n", "role 'reader trainer'"},
        {"node01 # basin:\n", "role ''"},
        {"node01 slots=4 extra\n", "line 1: 'extra' is not a host's field"},
        {"node01 slots=\n", "'slots=' is not a host's field"},
        {"node01 =4\n", "'=4' is not a host's field"},
        {"node01 slots==4\n", "is not a host's field"},
        {"node/01 slots=4\n", "line 1: 'node/01' is not a host name"},
        {"user@ slots=4\n", "'user@' is not a host name"},
        {"node01\n   # basin:reader\n", "line 2: a role without a host"},
        {"node01 # basin:reader\nNODE01 slots=2\n", "host node01 is a reader on line 1 and a trainer on line 2"},
        {"", "no host line"},
        {"# only comments\n\n", "no host line"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        RolesFile f;
        char why[512] = "";
        int rc = roles_parse(bad[k].text, &f, why, sizeof why);
        EXPECT(rc == -1 && strstr(why, bad[k].want), "'%s': %d, '%s' (want '%s')", bad[k].text, rc, why,
               bad[k].want);
        EXPECT(f.n == 0 && f.hosts == NULL, "'%s': hosts left after a refusal", bad[k].text);
    }
    /* A line longer than the limit. */
    size_t n = 5000;
    char *longline = malloc(n + 1);
    memset(longline, 'a', n);
    longline[n] = '\0';
    RolesFile f;
    char why[512] = "";
    EXPECT(roles_parse(longline, &f, why, sizeof why) == -1 && strstr(why, "longer than"), "long line: '%s'", why);
    free(longline);
}

static void check_matching(void)
{
    const char *addrs[] = {"10.77.0.2", "127.0.0.1", "fe80::2"};
    RolesSelf *s = NULL;
    EXPECT(roles_self_make("basin-sim-h2.cluster.example", addrs, 3, &s) == BASIN_OK && s, "identity");
    if (!s) return;
    static const struct { const char *host; int want; } cases[] = {
        {"basin-sim-h2.cluster.example", 1}, /* the full name */
        {"basin-sim-h2", 1},                 /* the short name */
        {"BASIN-SIM-H2", 1},                 /* names ignore case */
        {"10.77.0.2", 1},                    /* an interface's address */
        {"fe80::2", 1},
        {"localhost", 1},                    /* resolves to 127.0.0.1 */
        {"10.77.0.1", 0},
        {"10.77.0.20", 0},
        {"fe80::3", 0},
        {"127.0.0.2", 0},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        EXPECT(roles_is_self(s, cases[k].host) == cases[k].want, "%s: want %d", cases[k].host, cases[k].want);
    roles_self_close(s);
    EXPECT(roles_self_make("x", (const char *[]){"not-an-address"}, 1, &s) != BASIN_OK && !s,
           "a name taken as an address");

    /* This process knows itself by its own hostname and its loopback. */
    RolesSelf *me = NULL;
    EXPECT(roles_self_open(&me) == BASIN_OK && me, "roles_self_open");
    if (me) {
        EXPECT(roles_is_self(me, "127.0.0.1"), "127.0.0.1 is not this host");
        roles_self_close(me);
    }
}

static void check_rank_text(void)
{
    char buf[128];
    static const struct { int ranks[8], n; const char *want; } cases[] = {
        {{2}, 1, "2"}, {{1, 3}, 2, "1,3"}, {{0, 1}, 2, "0,1"}, {{4, 5, 6, 7}, 4, "4-7"},
        {{0, 2, 3, 4, 9, 10}, 6, "0,2-4,9,10"}, {{0}, 0, ""},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        roles_rank_text(cases[k].ranks, cases[k].n, buf, sizeof buf);
        EXPECT(!strcmp(buf, cases[k].want), "'%s', want '%s'", buf, cases[k].want);
    }
}

int main(void)
{
    check_good();
    check_refused();
    check_matching();
    check_rank_text();
    return test_finish("test_roles");
}
