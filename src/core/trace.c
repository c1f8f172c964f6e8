#include "core/trace.h"

#include <errno.h>
#include <string.h>

#include "core/error.h"

int trace_open(Trace *t, const char *path, int rank, double t0)
{
    memset(t, 0, sizeof *t);
    t->f = fopen(path, "w");
    if (!t->f) return basin_error(BASIN_ERR_RUNTIME, "cannot write trace %s: %s", path, strerror(errno));
    t->t0 = t0;
    t->pid = rank;
    t->first = 1;
    fprintf(t->f, "[\n{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"args\":{\"name\":\"rank %d\"}}", rank, rank);
    fprintf(t->f, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":0,\"args\":{\"name\":\"compute\"}}", rank);
    fprintf(t->f, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":1,\"args\":{\"name\":\"all-reduce\"}}", rank);
    return BASIN_OK;
}

void trace_event(Trace *t, const char *name, const char *cat, int tid, double t_begin, double t_end)
{
    if (!t->f) return;
    fprintf(t->f, ",\n{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":%d,\"tid\":%d,\"ts\":%.1f,\"dur\":%.1f}",
            name, cat, t->pid, tid, 1e6 * (t_begin - t->t0), 1e6 * (t_end - t_begin));
}

void trace_close(Trace *t)
{
    if (!t->f) return;
    fprintf(t->f, "\n]\n");
    fclose(t->f);
    t->f = NULL;
}
