/* Writing a checkpoint (FORMAT.md). Every byte that reaches the disk goes
 * through our own pwrite, straight from the caller's buffers (no copy):
 * the HDF5 image of the metadata and the layer table (ckpt_image.c) and the
 * buffers (params, momentum, state) at the offsets HDF5 gave them, into "<dir>/.ckpt-<step>.h5.tmp.<pid>", then
 * fsync, rename over the final name and an fsync of the folder. A failure
 * anywhere removes the temporary file and leaves every earlier checkpoint as
 * it was. The buffers' checksums are computed on a second thread while
 * they are written. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoints/ckpt_internal.h"
#include "checkpoints/xxh64.h"
#include "core/error.h"
#include "core/files.h"

/* ---- writing the file ----------------------------------------------------- */

static int pwrite_all(int fd, const void *buf, size_t n, uint64_t off, const char *path)
{
    const unsigned char *p = buf;
    size_t done = 0;
    while (done < n) {
        size_t chunk = n - done < CKPT_IO_CHUNK ? n - done : CKPT_IO_CHUNK;
        ssize_t w = pwrite(fd, p + done, chunk, (off_t)(off + done));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0)
            return BASIN_FAIL(BASIN_ERR_RUNTIME, "write(%s) failed at byte %llu: %s; checkpoint not written",
                              path, (unsigned long long)(off + done), w < 0 ? strerror(errno) : "no progress");
        done += (size_t)w;
    }
    return BASIN_OK;
}

static int regions_overlap(uint64_t a, uint64_t an, uint64_t b, uint64_t bn) { return a < b + bn && b < a + an; }

/* The checksums of the buffers, computed on a second thread while the
 * first one writes them: hashing 800 MB costs ~0.13 s, which would otherwise
 * add to the write time. */
typedef struct {
    const CheckpointState *st;
    uint64_t xxh[CKPT_N_BUFFERS];
} HashJob;

static void *hash_buffers(void *arg)
{
    HashJob *job = arg;
    for (int b = 0; b < CKPT_N_BUFFERS; b++) {
        size_t n = ckpt_buffer_count(job->st, b);
        job->xxh[b] = xxh64(n ? (const void *)ckpt_buffer_data(job->st, b) : "", n * sizeof(float), 0);
    }
    return NULL;
}

/* HDF5's part of the file for st with its checksums (FORMAT.md). */
static int build_final_metadata(const CheckpointState *st, uint32_t version, const uint64_t xxh[CKPT_N_BUFFERS],
                                CkptSink *sink, haddr_t off[CKPT_N_BUFFERS])
{
    uint64_t header_xxh;
    TRY(ckpt_header_hash(st, version, xxh, &header_xxh));
    return ckpt_build_metadata(st, version, xxh, header_xxh, sink, off);
}

/* The whole checkpoint at tmp, fsynced. The layout does not depend on the
 * checksum values (fixed-size attributes), so it is built once with zeros to
 * learn where the datasets go, the buffers are written there while their
 * checksums are computed, and the metadata is built again with the real
 * values and written around them. */
static int write_file(const char *tmp, const CheckpointState *st, uint32_t version)
{
    CkptSink probe = {0}, sink = {0};
    haddr_t off[CKPT_N_BUFFERS], off2[CKPT_N_BUFFERS];
    uint64_t bytes[CKPT_N_BUFFERS], zero[CKPT_N_BUFFERS] = {0};
    for (int b = 0; b < CKPT_N_BUFFERS; b++) bytes[b] = (uint64_t)ckpt_buffer_count(st, b) * sizeof(float);
    int rc = build_final_metadata(st, version, zero, &probe, off);
    if (rc) goto done;
    for (int b = 0; b < CKPT_N_BUFFERS && !rc; b++) {
        if (off[b] == HADDR_UNDEF) continue;
        int bad = off[b] + bytes[b] > probe.eoa;
        for (int c = 0; c < b; c++)
            if (off[c] != HADDR_UNDEF && regions_overlap(off[b], bytes[b], off[c], bytes[c])) bad = 1;
        if (bad)
            rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "HDF5 laid out dataset /%s outside the file or over another "
                            "(%llu, eoa %llu)", ckpt_buffer_names[b], (unsigned long long)off[b],
                            (unsigned long long)probe.eoa);
    }
    if (rc) goto done;

    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "open(%s) for writing failed: %s; checkpoint not written", tmp,
                        strerror(errno));
        goto done;
    }
    HashJob job = {st, {0}};
    pthread_t thread;
    int threaded = pthread_create(&thread, NULL, hash_buffers, &job) == 0;
    /* In file order. */
    int order[CKPT_N_BUFFERS], n_order = 0;
    for (int b = 0; b < CKPT_N_BUFFERS; b++)
        if (off[b] != HADDR_UNDEF) order[n_order++] = b;
    for (int i = 1; i < n_order; i++)
        for (int j = i; j > 0 && off[order[j]] < off[order[j - 1]]; j--) {
            int x = order[j];
            order[j] = order[j - 1], order[j - 1] = x;
        }
    for (int i = 0; i < n_order && !rc; i++)
        rc = pwrite_all(fd, ckpt_buffer_data(st, order[i]), (size_t)bytes[order[i]], off[order[i]], tmp);
    if (threaded) pthread_join(thread, NULL);
    else if (!rc) hash_buffers(&job);

    if (!rc) rc = build_final_metadata(st, version, job.xxh, &sink, off2);
    if (!rc && (memcmp(off, off2, sizeof off) != 0 || sink.eoa != probe.eoa))
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "HDF5 changed the file layout between two identical builds");
    for (size_t i = 0; i < sink.n && !rc; i++) {
        const CkptExtent *e = &sink.ext[i];
        for (int b = 0; b < CKPT_N_BUFFERS && !rc; b++)
            if (off[b] != HADDR_UNDEF && regions_overlap(e->addr, e->size, off[b], bytes[b]))
                rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "HDF5 wrote metadata inside a dataset's data (%llu+%zu)",
                                (unsigned long long)e->addr, e->size);
    }
    /* In order: a later extent overrides an earlier one. */
    for (size_t i = 0; i < sink.n && !rc; i++)
        rc = pwrite_all(fd, sink.ext[i].bytes, sink.ext[i].size, sink.ext[i].addr, tmp);
    /* HDF5 refuses a file shorter than its end-of-allocation address. */
    if (!rc && ftruncate(fd, (off_t)sink.eoa) != 0)
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "ftruncate(%s, %llu) failed: %s; checkpoint not written", tmp,
                        (unsigned long long)sink.eoa, strerror(errno));
    if (!rc && fsync(fd) != 0)
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "fsync(%s) failed: %s; checkpoint not written", tmp, strerror(errno));
    if (close(fd) != 0 && !rc)
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "close(%s) failed: %s; checkpoint not written", tmp, strerror(errno));
    if (rc) unlink(tmp);

done:
    ckpt_sink_free(&probe);
    ckpt_sink_free(&sink);
    return rc;
}

int checkpoint_write(const char *dir, const CheckpointState *st, int keep, char *path_out, size_t path_len)
{
    return ckpt_write_version(dir, st, CHECKPOINT_FORMAT_VERSION, keep, path_out, path_len);
}

int ckpt_write_version(const char *dir, const CheckpointState *st, uint32_t version, int keep, char *path_out,
                       size_t path_len)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (!dir || !*dir) return basin_error(BASIN_ERR_USAGE, "checkpoint: no directory given");
    if (!st || !st->params || !st->momentum || st->n_params == 0)
        return basin_error(BASIN_ERR_USAGE, "checkpoint: no parameters to write");
    if (keep < 0) return basin_error(BASIN_ERR_USAGE, "checkpoint: keep must be >= 0 (0 keeps all), got %d", keep);
    if (st->n_params > SIZE_MAX / 2 / sizeof(float))
        return basin_error(BASIN_ERR_USAGE, "checkpoint: %zu parameters is too many", st->n_params);
    if (strlen(ckpt_str(st->model_spec)) > CKPT_MAX_STRING ||
        strlen(ckpt_str(st->config_text)) > CKPT_MAX_STRING || strlen(ckpt_str(st->balance)) > CKPT_MAX_STRING)
        return basin_error(BASIN_ERR_USAGE, "checkpoint: model spec or configuration longer than %d bytes",
                           CKPT_MAX_STRING);
    if (version < CHECKPOINT_FORMAT_OLDEST || version > CHECKPOINT_FORMAT_VERSION)
        return basin_error(BASIN_ERR_USAGE, "checkpoint: cannot write format version %u", version);
    if (st->n_state > 0 && !st->state) return basin_error(BASIN_ERR_USAGE, "checkpoint: no state to write");
    if (st->n_state > SIZE_MAX / 2 / sizeof(float))
        return basin_error(BASIN_ERR_USAGE, "checkpoint: %zu state values is too many", st->n_state);
    if (strlen(ckpt_str(st->layer_table)) > CKPT_MAX_TABLE)
        return basin_error(BASIN_ERR_USAGE, "checkpoint: layer table longer than %zu bytes", CKPT_MAX_TABLE);
    if (st->n_moment2 != 0 && st->n_moment2 != st->n_params)
        return basin_error(BASIN_ERR_USAGE, "checkpoint: a second moment of %zu values for %zu parameters",
                           st->n_moment2, st->n_params);
    if (st->n_moment2 > 0 && !st->moment2) return basin_error(BASIN_ERR_USAGE, "checkpoint: no second moment to write");
    if (version < 2 && st->n_moment2 > 0)
        return basin_error(BASIN_ERR_USAGE, "checkpoint: format version %u holds no second moment", version);
    if (version < 2 && (st->n_state > 0 || *ckpt_str(st->layer_table) || *ckpt_str(st->balance)))
        return basin_error(BASIN_ERR_USAGE, "checkpoint: format version %u holds no state or layer table", version);

    char name[64], path[PATH_MAX], tmp[PATH_MAX];
    snprintf(name, sizeof name, "ckpt-%010llu.h5", (unsigned long long)st->next_step);
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof(((Checkpoint *)0)->path) ||
        snprintf(tmp, sizeof tmp, "%s/.%s.tmp.%ld", dir, name, (long)getpid()) >= (int)sizeof tmp)
        return basin_error(BASIN_ERR_USAGE, "%s: checkpoint path too long", dir);
    if (path_out && strlen(path) >= path_len)
        return basin_error(BASIN_ERR_USAGE, "checkpoint: path buffer of %zu bytes too small for %s", path_len, path);
    if (basin_make_dirs(dir)) return BASIN_ERR_RUNTIME;

    TRY(write_file(tmp, st, version));
    if (rename(tmp, path) != 0) {
        int rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "rename(%s, %s) failed: %s; checkpoint not written", tmp, path,
                        strerror(errno));
        unlink(tmp);
        return rc;
    }
    TRY(basin_fsync_dir(dir));
    ckpt_rotate(dir, keep, name);
    if (path_out) snprintf(path_out, path_len, "%s", path);
    return BASIN_OK;
}

