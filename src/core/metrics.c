#include "core/metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <string.h>

#include "core/error.h"

int metrics_open(Metrics *m, const char *path, int append)
{
    /* Opened without truncation, then locked, then truncated: a file that
     * another run appends to (the same --metrics, other output folders) is
     * refused before a byte of it changes. */
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
    if (fd < 0) return basin_error(BASIN_ERR_RUNTIME, "cannot write metrics file %s: %s", path, strerror(errno));
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (fcntl(fd, F_SETLK, &fl) != 0) {
        int e = errno;
        close(fd);
        if (e == EACCES || e == EAGAIN)
            return basin_error(BASIN_ERR_USAGE, "metrics file %s is being written by another run: give this run "
                               "another --metrics", path);
        return basin_error(BASIN_ERR_RUNTIME, "cannot lock metrics file %s: %s", path, strerror(e));
    }
    if (!append && ftruncate(fd, 0) != 0) {
        int e = errno;
        close(fd);
        return basin_error(BASIN_ERR_RUNTIME, "cannot truncate metrics file %s: %s", path, strerror(e));
    }
    m->f = fdopen(fd, "a");
    if (!m->f) {
        close(fd);
        return basin_error(BASIN_ERR_RUNTIME, "cannot write metrics file %s: %s", path, strerror(errno));
    }
    return BASIN_OK;
}

void metrics_close(Metrics *m)
{
    if (m->f) fclose(m->f);
    m->f = NULL;
}

void metrics_step(Metrics *m, const StepRecord *r)
{
    static const char *const names[5] = {"data_wait", "forward", "backward", "comm_exposed", "optimizer"};
    if (!m->f) return;
    fprintf(m->f,
            "{\"event\":\"step\",\"epoch\":%d,\"step\":%llu,\"loss\":%.9g,\"accuracy\":%.9g,"
            "\"lr\":%.9g,\"images_per_s\":%.1f,\"time_s\":%.3f,\"data_wait_s\":%.6f,"
            "\"compute_s\":%.6f,\"comm_s\":%.6f",
            r->epoch, (unsigned long long)r->step, r->loss, r->accuracy, r->lr, r->images_per_s,
            r->time_s, r->data_wait_s, r->compute_s, r->comm_s);
    for (int i = 0; i < 5; i++)
        fprintf(m->f, ",\"%s_mean_s\":%.6f,\"%s_max_s\":%.6f", names[i], r->timing_mean[i], names[i],
                r->timing_max[i]);
    if (r->readers > 0)
        fprintf(m->f, ",\"readers\":%d,\"batches_ready\":%.3f,\"reader_images_per_s\":%.1f,\"reader_busy\":%.4f,"
                "\"reader_credit_wait_s\":%.6f", r->readers, r->batches_ready, r->reader_images_per_s, r->reader_busy,
                r->reader_credit_wait_s);
    if (r->n_ranks > 0 && r->shares && r->busy) {
        fprintf(m->f, ",\"shares\":[");
        for (int i = 0; i < r->n_ranks; i++) fprintf(m->f, "%s%u", i ? "," : "", r->shares[i]);
        fprintf(m->f, "],\"busy_s\":[");
        for (int i = 0; i < r->n_ranks; i++) fprintf(m->f, "%s%.6f", i ? "," : "", r->busy[i]);
        fprintf(m->f, "]");
    }
    fprintf(m->f, ",\"straggler\":%d}\n", r->straggler);
    fflush(m->f);
}

void metrics_eval(Metrics *m, int epoch, uint64_t step, double loss, double accuracy, double time_s)
{
    if (!m->f) return;
    fprintf(m->f,
            "{\"event\":\"eval\",\"epoch\":%d,\"step\":%llu,\"test_loss\":%.9g,"
            "\"test_accuracy\":%.9g,\"time_s\":%.3f}\n",
            epoch, (unsigned long long)step, loss, accuracy, time_s);
    fflush(m->f);
}

