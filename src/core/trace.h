/* Chrome trace files (the JSON array format that chrome://tracing and
 * Perfetto open): one file per rank, complete events ("ph":"X") with
 * microsecond timestamps relative to the trace's start. */
#ifndef BASIN_TRACE_H
#define BASIN_TRACE_H

#include <stdio.h>

typedef struct {
    FILE *f;
    double t0;   /* clock value of timestamp 0 */
    int pid;     /* the rank */
    int first;
} Trace;

/* path: the file to create. t0: the clock origin. */
int trace_open(Trace *t, const char *path, int rank, double t0);
/* An event named name (category cat) on track tid from t_begin to t_end. */
void trace_event(Trace *t, const char *name, const char *cat, int tid, double t_begin, double t_end);
void trace_close(Trace *t);

#endif
