/* Checkpoint files (FORMAT.md specifies them).
 *
 * Writing. HDF5 never touches the disk here: when one of its own writes fails
 * (disk full, file-size limit), HDF5 1.10 cannot close the file and crashes
 * at exit. So the file is built in two parts:
 *   - the metadata (superblock, object headers, attributes) is produced by
 *     HDF5 through a small write-only "virtual file driver" that keeps every
 *     byte HDF5 writes in memory — a few KB;
 *   - the two datasets are created contiguous with their space allocated at
 *     creation and never written through HDF5; H5Dget_offset gives their byte
 *     ranges, and we pwrite the caller's buffers there ourselves.
 * Every byte that reaches the disk goes through our own pwrite, straight from
 * the caller's buffers (no copy), into "<dir>/.ckpt-<step>.h5.tmp.<pid>",
 * followed by fsync, rename over the final name and an fsync of the folder.
 * A failure anywhere removes the temporary file and leaves every earlier
 * checkpoint as it was.
 *
 * Reading goes through HDF5's default (sec2) driver, read-only. Nothing is
 * allocated for a buffer before its declared bytes are known to be stored
 * inside the file (reader/h5check.h) and the header checksum holds. libhdf5
 * may crash on damaged metadata, so a child process reads and verifies the
 * file first (reader/h5guard.h): a file that crashes it is refused with one
 * line, like any other damage, and checkpoint_latest skips it.
 */
#include "checkpoints/checkpoint.h"
#include "checkpoints/xxh64.h"

#include "core/error.h"
#include "core/files.h"
#include "reader/h5check.h"
#include "reader/h5guard.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoints are written from host memory as little-endian data: little-endian hosts only"
#endif

#define CKPT_MAGIC "basin-checkpoint"
#define CKPT_MAX_STRING 60000            /* v1 object headers cap one attribute below 64 KiB */
#define CKPT_MAX_META ((size_t)64 << 20) /* far above any metadata; raw data never goes through HDF5 */
#define CKPT_IO_CHUNK ((size_t)1 << 30)

/* ---- the numeric fields, in the order of the header checksum ------------- */

enum { F_U64, F_U32, F_I32, F_F64 };

typedef struct {
    const char *name;
    int kind;
    size_t offset; /* in CheckpointState */
} Field;

static const Field FIELDS[] = {
    {"config_hash", F_U64, offsetof(CheckpointState, config_hash)},
    {"seed", F_U64, offsetof(CheckpointState, seed)},
    {"global_batch", F_U64, offsetof(CheckpointState, global_batch)},
    {"world_size", F_U32, offsetof(CheckpointState, world_size)},
    {"train_samples", F_U64, offsetof(CheckpointState, train_samples)},
    {"in_c", F_I32, offsetof(CheckpointState, in_c)},
    {"in_h", F_I32, offsetof(CheckpointState, in_h)},
    {"in_w", F_I32, offsetof(CheckpointState, in_w)},
    {"classes", F_I32, offsetof(CheckpointState, classes)},
    {"next_step", F_U64, offsetof(CheckpointState, next_step)},
    {"epoch", F_U64, offsetof(CheckpointState, epoch)},
    {"step_in_epoch", F_U64, offsetof(CheckpointState, step_in_epoch)},
    {"samples_seen", F_U64, offsetof(CheckpointState, samples_seen)},
    {"elapsed_s", F_F64, offsetof(CheckpointState, elapsed_s)},
};
#define N_FIELDS (sizeof FIELDS / sizeof FIELDS[0])

static size_t kind_bytes(int kind) { return kind == F_U32 || kind == F_I32 ? 4 : 8; }

static hid_t kind_file_type(int kind)
{
    switch (kind) {
    case F_U64: return H5T_STD_U64LE;
    case F_U32: return H5T_STD_U32LE;
    case F_I32: return H5T_STD_I32LE;
    default: return H5T_IEEE_F64LE;
    }
}

static hid_t kind_mem_type(int kind)
{
    switch (kind) {
    case F_U64: return H5T_NATIVE_UINT64;
    case F_U32: return H5T_NATIVE_UINT32;
    case F_I32: return H5T_NATIVE_INT32;
    default: return H5T_NATIVE_DOUBLE;
    }
}

static const char *kind_name(int kind)
{
    switch (kind) {
    case F_U64: return "uint64 little-endian";
    case F_U32: return "uint32 little-endian";
    case F_I32: return "int32 little-endian";
    default: return "float64 little-endian";
    }
}

static const char *str_or_empty(const char *s) { return s ? s : ""; }

/* XXH64 of the canonical encoding of every field and string (FORMAT.md,
 * "Header checksum"). The host is little-endian, so memcpy is the encoding. */
static int header_hash(const CheckpointState *st, uint64_t params_xxh, uint64_t momentum_xxh, uint64_t *out)
{
    const char *spec = str_or_empty(st->model_spec), *conf = str_or_empty(st->config_text);
    size_t spec_len = strlen(spec), conf_len = strlen(conf);
    size_t bytes = 4 + 4 * 8 + 8 + spec_len + 8 + conf_len;
    for (size_t i = 0; i < N_FIELDS; i++) bytes += kind_bytes(FIELDS[i].kind);
    unsigned char *buf = basin_malloc(bytes);
    if (!buf) return BASIN_ERR_RUNTIME;
    unsigned char *p = buf;
    uint32_t version = CHECKPOINT_FORMAT_VERSION;
    memcpy(p, &version, 4), p += 4;
    for (size_t i = 0; i < N_FIELDS; i++) {
        size_t k = kind_bytes(FIELDS[i].kind);
        memcpy(p, (const char *)st + FIELDS[i].offset, k), p += k;
    }
    uint64_t n = st->n_params, sl = spec_len, cl = conf_len;
    memcpy(p, &n, 8), p += 8;
    memcpy(p, &params_xxh, 8), p += 8;
    memcpy(p, &momentum_xxh, 8), p += 8;
    memcpy(p, &sl, 8), p += 8;
    memcpy(p, spec, spec_len), p += spec_len;
    memcpy(p, &cl, 8), p += 8;
    memcpy(p, conf, conf_len), p += conf_len;
    *out = xxh64(buf, (size_t)(p - buf), 0);
    free(buf);
    return BASIN_OK;
}

/* The most specific message on HDF5's error stack, for our one-line reports. */
static herr_t h5_walk_first(unsigned n, const H5E_error2_t *err, void *data)
{
    char *msg = data;
    if (n == 0 && err->desc) snprintf(msg, 256, "%s", err->desc);
    return 0;
}

static const char *h5_reason(char msg[256])
{
    msg[0] = '\0';
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, h5_walk_first, msg);
    if (!msg[0]) snprintf(msg, 256, "no detail from HDF5");
    return msg;
}

/* ---- the in-memory metadata driver ---------------------------------------- */

typedef struct {
    haddr_t addr;
    size_t size;
    unsigned char *bytes;
} MemExtent;

/* Everything HDF5 wrote, in order (a later extent overrides an earlier one). */
typedef struct {
    MemExtent *ext;
    size_t n, cap, total;
    haddr_t eoa;
} MemSink;

typedef struct {
    MemSink *sink;
} MemFapl;

typedef struct {
    H5FD_t pub; /* must come first */
    MemSink *sink;
    haddr_t eof;
} MemFile;

static H5FD_t *mem_open(const char *name, unsigned flags, hid_t fapl, haddr_t maxaddr)
{
    const MemFapl *fa = H5Pget_driver_info(fapl);
    if (!fa || !fa->sink) return NULL;
    MemFile *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->sink = fa->sink;
    return &f->pub;
}

static herr_t mem_close(H5FD_t *file)
{
    free(file);
    return 0;
}

static int mem_cmp(const H5FD_t *a, const H5FD_t *b)
{
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return x < y ? -1 : x > y;
}

static herr_t mem_query(const H5FD_t *file, unsigned long *flags)
{
    *flags = H5FD_FEAT_AGGREGATE_METADATA | H5FD_FEAT_ACCUMULATE_METADATA | H5FD_FEAT_AGGREGATE_SMALLDATA;
    return 0;
}

static haddr_t mem_get_eoa(const H5FD_t *file, H5FD_mem_t type) { return ((const MemFile *)file)->sink->eoa; }

static herr_t mem_set_eoa(H5FD_t *file, H5FD_mem_t type, haddr_t addr)
{
    ((MemFile *)file)->sink->eoa = addr;
    return 0;
}

static haddr_t mem_get_eof(const H5FD_t *file, H5FD_mem_t type) { return ((const MemFile *)file)->eof; }

static herr_t mem_read(H5FD_t *file, H5FD_mem_t type, hid_t dxpl, haddr_t addr, size_t size, void *buf)
{
    const MemSink *s = ((MemFile *)file)->sink;
    memset(buf, 0, size);
    for (size_t i = 0; i < s->n; i++) {
        const MemExtent *e = &s->ext[i];
        haddr_t lo = e->addr > addr ? e->addr : addr;
        haddr_t hi = e->addr + e->size < addr + size ? e->addr + e->size : addr + size;
        if (lo < hi) memcpy((unsigned char *)buf + (lo - addr), e->bytes + (lo - e->addr), (size_t)(hi - lo));
    }
    return 0;
}

static herr_t mem_write(H5FD_t *file, H5FD_mem_t type, hid_t dxpl, haddr_t addr, size_t size, const void *buf)
{
    MemFile *f = (MemFile *)file;
    MemSink *s = f->sink;
    if (size > CKPT_MAX_META - s->total) return -1;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 32;
        MemExtent *e = realloc(s->ext, cap * sizeof *e);
        if (!e) return -1;
        s->ext = e;
        s->cap = cap;
    }
    unsigned char *copy = malloc(size ? size : 1);
    if (!copy) return -1;
    memcpy(copy, buf, size);
    s->ext[s->n++] = (MemExtent){addr, size, copy};
    s->total += size;
    if (addr + size > f->eof) f->eof = addr + size;
    return 0;
}

static herr_t mem_truncate(H5FD_t *file, hid_t dxpl, hbool_t closing)
{
    MemFile *f = (MemFile *)file;
    f->eof = f->sink->eoa;
    return 0;
}

static const H5FD_class_t MEM_DRIVER = {
    .name = "basin_ckpt_meta",
    .maxaddr = (haddr_t)INT64_MAX,
    .fc_degree = H5F_CLOSE_WEAK,
    .fapl_size = sizeof(MemFapl),
    .open = mem_open,
    .close = mem_close,
    .cmp = mem_cmp,
    .query = mem_query,
    .get_eoa = mem_get_eoa,
    .set_eoa = mem_set_eoa,
    .get_eof = mem_get_eof,
    .read = mem_read,
    .write = mem_write,
    .truncate = mem_truncate,
    .fl_map = H5FD_FLMAP_DICHOTOMY,
};

static void sink_free(MemSink *s)
{
    for (size_t i = 0; i < s->n; i++) free(s->ext[i].bytes);
    free(s->ext);
    memset(s, 0, sizeof *s);
}

/* ---- building the metadata ------------------------------------------------ */

static int put_attr(hid_t obj, const char *name, hid_t file_type, hid_t mem_type, const void *value)
{
    int rc = BASIN_OK;
    char why[256];
    hid_t space = H5Screate(H5S_SCALAR), attr = H5I_INVALID_HID;
    if (space < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Screate(scalar) failed: %s", h5_reason(why));
        goto cleanup;
    }
    attr = H5Acreate2(obj, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Acreate2(%s) failed: %s", name, h5_reason(why));
        goto cleanup;
    }
    if (H5Awrite(attr, mem_type, value) < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Awrite(%s) failed: %s", name, h5_reason(why));
        goto cleanup;
    }

cleanup:
    if (attr >= 0 && H5Aclose(attr) < 0 && !rc) rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Aclose(%s) failed", name);
    if (space >= 0) H5Sclose(space);
    return rc;
}

/* A fixed-length, NUL-terminated ASCII/UTF-8 string of strlen + 1 bytes. */
static int put_string_attr(hid_t obj, const char *name, const char *value)
{
    char why[256];
    hid_t type = H5Tcopy(H5T_C_S1);
    if (type < 0 || H5Tset_size(type, strlen(value) + 1) < 0 || H5Tset_strpad(type, H5T_STR_NULLTERM) < 0 ||
        H5Tset_cset(type, H5T_CSET_UTF8) < 0) {
        if (type >= 0) H5Tclose(type);
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Tcopy/H5Tset_size(string %s) failed: %s", name, h5_reason(why));
    }
    int rc = put_attr(obj, name, type, type, value);
    H5Tclose(type);
    return rc;
}

static int put_dataset(hid_t file, const char *name, size_t n, uint64_t xxh, haddr_t *offset)
{
    int rc = BASIN_OK;
    char why[256];
    hsize_t dims[1] = {n};
    hid_t space = H5I_INVALID_HID, dcpl = H5I_INVALID_HID, ds = H5I_INVALID_HID;
    space = H5Screate_simple(1, dims, NULL);
    if (space < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Screate_simple(%s) failed: %s", name, h5_reason(why));
        goto cleanup;
    }
    /* Space allocated now, never filled: we write the bytes ourselves. No
     * times: the same state gives the same file. */
    dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (dcpl < 0 || H5Pset_layout(dcpl, H5D_CONTIGUOUS) < 0 || H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY) < 0 ||
        H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) < 0 || H5Pset_obj_track_times(dcpl, 0) < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Pcreate/H5Pset_*(%s, contiguous, early) failed: %s", name,
                        h5_reason(why));
        goto cleanup;
    }
    ds = H5Dcreate2(file, name, H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (ds < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Dcreate2(%s) failed: %s", name, h5_reason(why));
        goto cleanup;
    }
    if ((rc = put_attr(ds, "xxh64", H5T_STD_U64LE, H5T_NATIVE_UINT64, &xxh))) goto cleanup;
    *offset = H5Dget_offset(ds);
    if (*offset == HADDR_UNDEF) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Dget_offset(%s) gave no address", name);
        goto cleanup;
    }

cleanup:
    if (ds >= 0 && H5Dclose(ds) < 0 && !rc) rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Dclose(%s) failed", name);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    return rc;
}

/* HDF5's part of the file, into sink; the byte offsets of the two datasets. */
static int build_metadata(const CheckpointState *st, uint64_t params_xxh, uint64_t momentum_xxh,
                          uint64_t header_xxh, MemSink *sink, haddr_t *params_off, haddr_t *momentum_off)
{
    int rc = BASIN_OK;
    char why[256];
    hid_t drv = H5I_INVALID_HID, fapl = H5I_INVALID_HID, file = H5I_INVALID_HID;
    MemFapl fa = {sink};

    drv = H5FDregister(&MEM_DRIVER);
    if (drv < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5FDregister(in-memory metadata driver) failed: %s", h5_reason(why));
        goto cleanup;
    }
    fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0 || H5Pset_driver(fapl, drv, &fa) < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Pset_driver(in-memory metadata driver) failed: %s", h5_reason(why));
        goto cleanup;
    }
    file = H5Fcreate("checkpoint-in-memory", H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (file < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Fcreate(in memory) failed: %s", h5_reason(why));
        goto cleanup;
    }
    uint32_t version = CHECKPOINT_FORMAT_VERSION;
    uint64_t n = st->n_params;
    if ((rc = put_string_attr(file, "format", CKPT_MAGIC))) goto cleanup;
    if ((rc = put_attr(file, "format_version", H5T_STD_U32LE, H5T_NATIVE_UINT32, &version))) goto cleanup;
    if ((rc = put_string_attr(file, "model_spec", str_or_empty(st->model_spec)))) goto cleanup;
    if ((rc = put_string_attr(file, "config_text", str_or_empty(st->config_text)))) goto cleanup;
    for (size_t i = 0; i < N_FIELDS; i++) {
        const Field *f = &FIELDS[i];
        if ((rc = put_attr(file, f->name, kind_file_type(f->kind), kind_mem_type(f->kind),
                           (const char *)st + f->offset)))
            goto cleanup;
    }
    if ((rc = put_attr(file, "n_params", H5T_STD_U64LE, H5T_NATIVE_UINT64, &n))) goto cleanup;
    if ((rc = put_attr(file, "header_xxh64", H5T_STD_U64LE, H5T_NATIVE_UINT64, &header_xxh))) goto cleanup;
    if ((rc = put_dataset(file, "params", st->n_params, params_xxh, params_off))) goto cleanup;
    if ((rc = put_dataset(file, "momentum", st->n_params, momentum_xxh, momentum_off))) goto cleanup;

cleanup:
    /* Closing flushes the last metadata into the sink; it cannot fail on I/O. */
    if (file >= 0 && H5Fclose(file) < 0 && !rc)
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Fclose(in memory) failed: %s", h5_reason(why));
    if (fapl >= 0) H5Pclose(fapl);
    if (drv >= 0) H5FDunregister(drv);
    return rc;
}

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

/* The checksums of the two buffers, computed on a second thread while the
 * first one writes them: hashing 800 MB costs ~0.13 s, which would otherwise
 * add to the write time. */
typedef struct {
    const CheckpointState *st;
    uint64_t params_xxh, momentum_xxh;
} HashJob;

static void *hash_buffers(void *arg)
{
    HashJob *job = arg;
    size_t bytes = job->st->n_params * sizeof(float);
    job->params_xxh = xxh64(job->st->params, bytes, 0);
    job->momentum_xxh = xxh64(job->st->momentum, bytes, 0);
    return NULL;
}

/* HDF5's part of the file for st with its checksums (FORMAT.md). */
static int build_final_metadata(const CheckpointState *st, uint64_t params_xxh, uint64_t momentum_xxh,
                                MemSink *sink, haddr_t *params_off, haddr_t *momentum_off)
{
    uint64_t header_xxh;
    TRY(header_hash(st, params_xxh, momentum_xxh, &header_xxh));
    return build_metadata(st, params_xxh, momentum_xxh, header_xxh, sink, params_off, momentum_off);
}

/* The whole checkpoint at tmp, fsynced. The layout does not depend on the
 * checksum values (fixed-size attributes), so it is built once with zeros to
 * learn where the datasets go, the buffers are written there while their
 * checksums are computed, and the metadata is built again with the real
 * values and written around them. */
static int write_file(const char *tmp, const CheckpointState *st)
{
    uint64_t bytes = (uint64_t)st->n_params * sizeof(float);
    MemSink probe = {0}, sink = {0};
    haddr_t params_off = HADDR_UNDEF, momentum_off = HADDR_UNDEF, p2 = HADDR_UNDEF, m2 = HADDR_UNDEF;
    int rc = build_final_metadata(st, 0, 0, &probe, &params_off, &momentum_off);
    if (rc) goto done;
    if (params_off + bytes > probe.eoa || momentum_off + bytes > probe.eoa ||
        regions_overlap(params_off, bytes, momentum_off, bytes)) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "HDF5 laid out the datasets outside the file (%llu, %llu, eoa %llu)",
                        (unsigned long long)params_off, (unsigned long long)momentum_off,
                        (unsigned long long)probe.eoa);
        goto done;
    }

    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "open(%s) for writing failed: %s; checkpoint not written", tmp,
                        strerror(errno));
        goto done;
    }
    HashJob job = {st, 0, 0};
    pthread_t thread;
    int threaded = pthread_create(&thread, NULL, hash_buffers, &job) == 0;
    /* In file order: the first dataset, then the second. */
    const float *first = st->params, *second = st->momentum;
    uint64_t first_off = params_off, second_off = momentum_off;
    if (momentum_off < params_off) {
        first = st->momentum, second = st->params;
        first_off = momentum_off, second_off = params_off;
    }
    rc = pwrite_all(fd, first, (size_t)bytes, first_off, tmp);
    if (!rc) rc = pwrite_all(fd, second, (size_t)bytes, second_off, tmp);
    if (threaded) pthread_join(thread, NULL);
    else if (!rc) hash_buffers(&job);

    if (!rc) rc = build_final_metadata(st, job.params_xxh, job.momentum_xxh, &sink, &p2, &m2);
    if (!rc && (p2 != params_off || m2 != momentum_off || sink.eoa != probe.eoa))
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "HDF5 changed the file layout between two identical builds");
    for (size_t i = 0; i < sink.n && !rc; i++) {
        const MemExtent *e = &sink.ext[i];
        if (regions_overlap(e->addr, e->size, params_off, bytes) ||
            regions_overlap(e->addr, e->size, momentum_off, bytes))
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
    sink_free(&probe);
    sink_free(&sink);
    return rc;
}

/* ---- the checkpoints of a folder ------------------------------------------ */

typedef struct {
    uint64_t step;
    char name[64];
} Entry;

/* "ckpt-<digits>.h5" -> step. */
static int parse_name(const char *name, uint64_t *step)
{
    if (strncmp(name, "ckpt-", 5) != 0) return 0;
    const char *d = name + 5;
    size_t nd = strspn(d, "0123456789");
    if (nd == 0 || nd > 19 || strcmp(d + nd, ".h5") != 0) return 0;
    *step = strtoull(d, NULL, 10);
    return 1;
}

static int entry_cmp(const void *a, const void *b)
{
    const Entry *x = a, *y = b;
    if (x->step != y->step) return x->step < y->step ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* The checkpoints of dir sorted by step (oldest first); *n = 0 when dir is
 * missing. */
static int list_checkpoints(const char *dir, Entry **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return BASIN_OK;
        return basin_error(BASIN_ERR_USAGE, "cannot list checkpoint directory %s: %s", dir, strerror(errno));
    }
    Entry *list = NULL;
    size_t cap = 0;
    int rc = BASIN_OK;
    struct dirent *de;
    while ((de = readdir(d))) {
        uint64_t step;
        if (!parse_name(de->d_name, &step)) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            Entry *e = realloc(list, cap * sizeof *e);
            if (!e) {
                rc = basin_error(BASIN_ERR_RUNTIME, "out of memory listing %s", dir);
                break;
            }
            list = e;
        }
        list[*n].step = step;
        memcpy(list[*n].name, de->d_name, strlen(de->d_name) + 1); /* parse_name bounds it to 27 bytes */
        (*n)++;
    }
    closedir(d);
    if (rc) {
        free(list);
        *n = 0;
        return rc;
    }
    if (*n) qsort(list, *n, sizeof *list, entry_cmp);
    *out = list;
    return BASIN_OK;
}

/* Delete all but the newest `keep` checkpoints, never the one just written.
 * The new checkpoint is safe already, so a failed delete is only a warning. */
static void rotate(const char *dir, int keep, const char *written_name)
{
    Entry *list = NULL;
    size_t n = 0;
    if (keep <= 0 || list_checkpoints(dir, &list, &n) != BASIN_OK) return;
    for (size_t i = 0; i + (size_t)keep < n; i++) {
        if (strcmp(list[i].name, written_name) == 0) continue;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, list[i].name);
        if (unlink(path) != 0 && errno != ENOENT) basin_warn("cannot delete old checkpoint %s: %s", path, strerror(errno));
    }
    free(list);
}

int checkpoint_write(const char *dir, const CheckpointState *st, int keep, char *path_out, size_t path_len)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (!dir || !*dir) return basin_error(BASIN_ERR_USAGE, "checkpoint: no directory given");
    if (!st || !st->params || !st->momentum || st->n_params == 0)
        return basin_error(BASIN_ERR_USAGE, "checkpoint: no parameters to write");
    if (keep < 0) return basin_error(BASIN_ERR_USAGE, "checkpoint: keep must be >= 0 (0 keeps all), got %d", keep);
    if (st->n_params > SIZE_MAX / 2 / sizeof(float))
        return basin_error(BASIN_ERR_USAGE, "checkpoint: %zu parameters is too many", st->n_params);
    if (strlen(str_or_empty(st->model_spec)) > CKPT_MAX_STRING ||
        strlen(str_or_empty(st->config_text)) > CKPT_MAX_STRING)
        return basin_error(BASIN_ERR_USAGE, "checkpoint: model spec or configuration longer than %d bytes",
                           CKPT_MAX_STRING);

    char name[64], path[PATH_MAX], tmp[PATH_MAX];
    snprintf(name, sizeof name, "ckpt-%010llu.h5", (unsigned long long)st->next_step);
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof(((Checkpoint *)0)->path) ||
        snprintf(tmp, sizeof tmp, "%s/.%s.tmp.%ld", dir, name, (long)getpid()) >= (int)sizeof tmp)
        return basin_error(BASIN_ERR_USAGE, "%s: checkpoint path too long", dir);
    if (path_out && strlen(path) >= path_len)
        return basin_error(BASIN_ERR_USAGE, "checkpoint: path buffer of %zu bytes too small for %s", path_len, path);
    if (basin_make_dirs(dir)) return BASIN_ERR_RUNTIME;

    TRY(write_file(tmp, st));
    if (rename(tmp, path) != 0) {
        int rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "rename(%s, %s) failed: %s; checkpoint not written", tmp, path,
                        strerror(errno));
        unlink(tmp);
        return rc;
    }
    TRY(basin_fsync_dir(dir));
    rotate(dir, keep, name);
    if (path_out) snprintf(path_out, path_len, "%s", path);
    return BASIN_OK;
}

/* ---- reading -------------------------------------------------------------- */

#define BAD(...) (snprintf(why, why_len, __VA_ARGS__), BASIN_ERR_USAGE)

/* A scalar attribute of exactly file type `want`, read as mem_type. */
static int get_attr(hid_t obj, const char *name, hid_t want, const char *want_name, hid_t mem_type, void *value,
                    char *why, size_t why_len)
{
    char h5[256];
    htri_t exists = H5Aexists(obj, name);
    if (exists < 0) return BAD("cannot look up attribute '%s': %s", name, h5_reason(h5));
    if (exists == 0) return BAD("attribute '%s' is missing", name);
    int rc = BASIN_OK;
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT), type = H5I_INVALID_HID, space = H5I_INVALID_HID;
    if (attr < 0) {
        rc = BAD("cannot open attribute '%s': %s", name, h5_reason(h5));
        goto cleanup;
    }
    type = H5Aget_type(attr);
    space = H5Aget_space(attr);
    if (type < 0 || space < 0) {
        rc = BAD("cannot read the type of attribute '%s': %s", name, h5_reason(h5));
        goto cleanup;
    }
    if (H5Sget_simple_extent_type(space) != H5S_SCALAR) {
        rc = BAD("attribute '%s' is not a scalar", name);
        goto cleanup;
    }
    if (H5Tequal(type, want) <= 0) {
        rc = BAD("attribute '%s' has the wrong type (expected %s)", name, want_name);
        goto cleanup;
    }
    if (H5Aread(attr, mem_type, value) < 0) rc = BAD("cannot read attribute '%s': %s", name, h5_reason(h5));

cleanup:
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    if (attr >= 0) H5Aclose(attr);
    return rc;
}

/* A fixed-length string attribute, malloc'd into *out. */
static int get_string_attr(hid_t obj, const char *name, char **out, char *why, size_t why_len)
{
    char h5[256];
    *out = NULL;
    htri_t exists = H5Aexists(obj, name);
    if (exists < 0) return BAD("cannot look up attribute '%s': %s", name, h5_reason(h5));
    if (exists == 0) return BAD("attribute '%s' is missing", name);
    int rc = BASIN_OK;
    char *buf = NULL;
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT), type = H5I_INVALID_HID, space = H5I_INVALID_HID;
    if (attr < 0) {
        rc = BAD("cannot open attribute '%s': %s", name, h5_reason(h5));
        goto cleanup;
    }
    type = H5Aget_type(attr);
    space = H5Aget_space(attr);
    if (type < 0 || space < 0) {
        rc = BAD("cannot read the type of attribute '%s': %s", name, h5_reason(h5));
        goto cleanup;
    }
    size_t size = H5Tget_size(type);
    if (H5Sget_simple_extent_type(space) != H5S_SCALAR || H5Tget_class(type) != H5T_STRING ||
        H5Tis_variable_str(type) != 0 || size == 0 || size > CKPT_MAX_STRING + 1) {
        rc = BAD("attribute '%s' has the wrong type (expected a fixed-length string)", name);
        goto cleanup;
    }
    buf = basin_malloc(size + 1);
    if (!buf) {
        rc = BASIN_ERR_RUNTIME;
        goto cleanup;
    }
    if (H5Aread(attr, type, buf) < 0) {
        rc = BAD("cannot read attribute '%s': %s", name, h5_reason(h5));
        goto cleanup;
    }
    buf[size] = '\0';
    *out = buf;
    buf = NULL;

cleanup:
    free(buf);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    if (attr >= 0) H5Aclose(attr);
    return rc;
}

/* /name: float32 little-endian, shape (n), stored inside a file of
 * file_bytes, with its "xxh64" attribute. */
static int check_dataset(hid_t file, const char *name, size_t n, uint64_t file_bytes, uint64_t *stored_xxh,
                         char *why, size_t why_len)
{
    char h5[256];
    htri_t exists = H5Lexists(file, name, H5P_DEFAULT);
    if (exists < 0) return BAD("cannot look up dataset /%s: %s", name, h5_reason(h5));
    if (exists == 0) return BAD("dataset /%s is missing", name);
    int rc = BASIN_OK;
    hid_t ds = H5Dopen2(file, name, H5P_DEFAULT), type = H5I_INVALID_HID, space = H5I_INVALID_HID;
    if (ds < 0) {
        rc = BAD("/%s is not a readable dataset: %s", name, h5_reason(h5));
        goto cleanup;
    }
    type = H5Dget_type(ds);
    space = H5Dget_space(ds);
    if (type < 0 || space < 0) {
        rc = BAD("cannot read the type of dataset /%s: %s", name, h5_reason(h5));
        goto cleanup;
    }
    if (H5Tequal(type, H5T_IEEE_F32LE) <= 0) {
        rc = BAD("dataset /%s has the wrong type (expected float32 little-endian, found %s of %zu bytes)", name,
                 H5Tget_class(type) == H5T_FLOAT ? "a float" : "a non-float", H5Tget_size(type));
        goto cleanup;
    }
    hsize_t dims[1] = {0};
    if (H5Sget_simple_extent_ndims(space) != 1 || H5Sget_simple_extent_dims(space, dims, NULL) != 1 ||
        dims[0] != n) {
        rc = BAD("dataset /%s has the wrong shape (expected (%zu), as n_params says)", name, n);
        goto cleanup;
    }
    char stored[320];
    if (h5check_storage(ds, sizeof(float), file_bytes, stored, sizeof stored)) {
        rc = BAD("dataset /%s %s", name, stored);
        goto cleanup;
    }
    rc = get_attr(ds, "xxh64", H5T_STD_U64LE, "uint64 little-endian", H5T_NATIVE_UINT64, stored_xxh, why, why_len);
    if (rc == BASIN_ERR_USAGE) {
        char inner[256];
        snprintf(inner, sizeof inner, "%s", why);
        snprintf(why, why_len, "dataset /%s: %s", name, inner);
    }

cleanup:
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    if (ds >= 0) H5Dclose(ds);
    return rc;
}

/* Read /name (checked by check_dataset) into a fresh buffer whose XXH64 must
 * be stored_xxh. */
static int read_dataset(hid_t file, const char *name, size_t n, uint64_t stored_xxh, float **out, char *why,
                        size_t why_len)
{
    char h5[256];
    *out = NULL;
    float *buf = basin_aligned_alloc(n * sizeof(float));
    if (!buf) return BASIN_ERR_RUNTIME;
    int rc = BASIN_OK;
    hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
    if (ds < 0 || H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
        rc = BAD("cannot read dataset /%s: %s", name, h5_reason(h5));
        goto cleanup;
    }
    uint64_t got = xxh64(buf, n * sizeof(float), 0);
    if (got != stored_xxh) {
        rc = BAD("dataset /%s fails its checksum (stored xxh64 %016llx, computed %016llx): the data is corrupt",
                 name, (unsigned long long)stored_xxh, (unsigned long long)got);
        goto cleanup;
    }
    *out = buf;
    buf = NULL;

cleanup:
    free(buf);
    if (ds >= 0) H5Dclose(ds);
    return rc;
}

/* Read and verify path (a regular file of sb's size) into out; with
 * meta_only, every check but reading the buffers and their checksums.
 * BASIN_ERR_USAGE with the reason in why for a bad file (nothing printed);
 * BASIN_ERR_RUNTIME (printed) when memory ran out. */
static int read_checked(const char *path, const struct stat *st_file, int meta_only, Checkpoint *out, char *why,
                        size_t why_len)
{
    char h5[256];
    const struct stat sb = *st_file;
    htri_t is_h5 = H5Fis_hdf5(path);
    if (is_h5 <= 0) return BAD("not an HDF5 file%s", sb.st_size == 0 ? " (it is empty)" : "");

    int rc = BASIN_OK;
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS), file = H5I_INVALID_HID;
    if (fapl < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Pcreate(file access) failed: %s", h5_reason(h5));
        goto cleanup;
    }
#if (H5_VERS_MAJOR == 1 && H5_VERS_MINOR == 10 && H5_VERS_RELEASE >= 7) || \
    (H5_VERS_MAJOR == 1 && H5_VERS_MINOR == 12 && H5_VERS_RELEASE >= 1) || (H5_VERS_MAJOR == 1 && H5_VERS_MINOR > 12)
    /* Files are replaced by rename, never modified in place: no locks needed,
     * and some network file systems refuse them. */
    H5Pset_file_locking(fapl, 0, 1);
#endif
    file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    if (file < 0) {
        rc = BAD("damaged or truncated HDF5 file (%s)", h5_reason(h5));
        goto cleanup;
    }

    char *magic = NULL;
    rc = get_string_attr(file, "format", &magic, why, why_len);
    if (rc == BASIN_ERR_USAGE) snprintf(why, why_len, "not a basin checkpoint (no valid 'format' attribute)");
    int is_ckpt = magic && strcmp(magic, CKPT_MAGIC) == 0;
    free(magic);
    if (rc) goto cleanup;
    if (!is_ckpt) {
        rc = BAD("not a basin checkpoint ('format' attribute is not \"%s\")", CKPT_MAGIC);
        goto cleanup;
    }
    uint32_t version = 0;
    if ((rc = get_attr(file, "format_version", H5T_STD_U32LE, "uint32 little-endian", H5T_NATIVE_UINT32, &version,
                       why, why_len)))
        goto cleanup;
    if (version != CHECKPOINT_FORMAT_VERSION) {
        rc = BAD("format version %u, but this build reads version %d%s", version, CHECKPOINT_FORMAT_VERSION,
                 version > CHECKPOINT_FORMAT_VERSION ? " (written by a newer basin)" : "");
        goto cleanup;
    }

    CheckpointState *st = &out->st;
    for (size_t i = 0; i < N_FIELDS; i++) {
        const Field *f = &FIELDS[i];
        if ((rc = get_attr(file, f->name, kind_file_type(f->kind), kind_name(f->kind), kind_mem_type(f->kind),
                           (char *)st + f->offset, why, why_len)))
            goto cleanup;
    }
    uint64_t n = 0, header_xxh = 0, params_xxh = 0, momentum_xxh = 0;
    if ((rc = get_attr(file, "n_params", H5T_STD_U64LE, "uint64 little-endian", H5T_NATIVE_UINT64, &n, why,
                       why_len)))
        goto cleanup;
    if ((rc = get_attr(file, "header_xxh64", H5T_STD_U64LE, "uint64 little-endian", H5T_NATIVE_UINT64,
                       &header_xxh, why, why_len)))
        goto cleanup;
    if ((rc = get_string_attr(file, "model_spec", &out->model_spec, why, why_len))) goto cleanup;
    if ((rc = get_string_attr(file, "config_text", &out->config_text, why, why_len))) goto cleanup;
    if (n == 0 || n > SIZE_MAX / 2 / sizeof(float)) {
        rc = BAD("implausible n_params %llu", (unsigned long long)n);
        goto cleanup;
    }
    st->n_params = (size_t)n;
    st->model_spec = out->model_spec;
    st->config_text = out->config_text;

    /* The buffers' stored checksums are part of the header checksum, so check
     * the datasets' metadata first; their data is read once the header is
     * sound. */
    uint64_t file_bytes = (uint64_t)sb.st_size;
    if ((rc = check_dataset(file, "params", st->n_params, file_bytes, &params_xxh, why, why_len))) goto cleanup;
    if ((rc = check_dataset(file, "momentum", st->n_params, file_bytes, &momentum_xxh, why, why_len)))
        goto cleanup;
    uint64_t want = 0;
    if ((rc = header_hash(st, params_xxh, momentum_xxh, &want))) goto cleanup;
    if (want != header_xxh) {
        rc = BAD("header checksum mismatch (stored xxh64 %016llx, computed %016llx): a field or string is corrupt",
                 (unsigned long long)header_xxh, (unsigned long long)want);
        goto cleanup;
    }
    if (meta_only) goto cleanup;
    if ((rc = read_dataset(file, "params", st->n_params, params_xxh, &out->params, why, why_len))) goto cleanup;
    if ((rc = read_dataset(file, "momentum", st->n_params, momentum_xxh, &out->momentum, why, why_len)))
        goto cleanup;
    st->params = out->params;
    st->momentum = out->momentum;

cleanup:
    if (file >= 0 && H5Fclose(file) < 0 && !rc) rc = BAD("H5Fclose failed: %s", h5_reason(h5));
    if (fapl >= 0) H5Pclose(fapl);
    if (rc) checkpoint_free(out);
    return rc;
}

/* The guard's child verifies the checksums too when that reads at most this
 * much; a larger file gets every metadata read (all that HDF5 parses), and
 * its buffers are read once, by the caller. */
#define CKPT_GUARD_FULL_BYTES ((uint64_t)256 << 20)

typedef struct {
    const char *path;
    const struct stat *sb;
} GuardArgs;

static int check_in_child(void *arg)
{
    const GuardArgs *a = arg;
    Checkpoint c;
    char why[512];
    memset(&c, 0, sizeof c);
    int rc = read_checked(a->path, a->sb, (uint64_t)a->sb->st_size > CKPT_GUARD_FULL_BYTES, &c, why, sizeof why);
    checkpoint_free(&c);
    return rc;
}

/* Read and verify path into out: in a child process first (h5guard.h), since
 * libhdf5 may crash on damaged metadata, then here. BASIN_ERR_USAGE with the
 * reason in why for a bad file (nothing printed); BASIN_ERR_RUNTIME (printed)
 * when memory ran out or no child could check it. */
static int read_verified(const char *path, Checkpoint *out, char *why, size_t why_len)
{
    memset(out, 0, sizeof *out);
    if (snprintf(out->path, sizeof out->path, "%s", path) >= (int)sizeof out->path) return BAD("path too long");
    struct stat sb;
    if (stat(path, &sb) != 0) return BAD("%s", strerror(errno));
    if (!S_ISREG(sb.st_mode)) return BAD("not a regular file");
    GuardArgs a = {path, &sb};
    int rc = h5guard_run((uint64_t)sb.st_size, check_in_child, &a, NULL, why, why_len);
    if (rc == BASIN_ERR_RUNTIME) return basin_error(rc, "checkpoint %s: %s", path, why);
    if (rc) return rc;
    return read_checked(path, &sb, 0, out, why, why_len);
}

int checkpoint_read(const char *path, Checkpoint *out)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    char why[512];
    if (!path || !*path || !out) return basin_error(BASIN_ERR_USAGE, "checkpoint: no path given");
    int rc = read_verified(path, out, why, sizeof why);
    if (rc == BASIN_ERR_USAGE) basin_error(rc, "checkpoint %s: %s", path, why);
    return rc;
}

void checkpoint_free(Checkpoint *c)
{
    if (!c) return;
    free(c->model_spec);
    free(c->config_text);
    free(c->params);
    free(c->momentum);
    c->model_spec = c->config_text = NULL;
    c->params = c->momentum = NULL;
    memset(&c->st, 0, sizeof c->st);
}

int checkpoint_latest(const char *dir, Checkpoint *out, int *found)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    *found = 0;
    if (!dir || !*dir) return basin_error(BASIN_ERR_USAGE, "checkpoint: no directory given");
    memset(out, 0, sizeof *out);
    Entry *list = NULL;
    size_t n = 0;
    TRY(list_checkpoints(dir, &list, &n));
    int rc = BASIN_OK;
    for (size_t i = n; i-- > 0;) {
        char path[PATH_MAX], why[512];
        snprintf(path, sizeof path, "%s/%s", dir, list[i].name);
        rc = read_verified(path, out, why, sizeof why);
        if (rc == BASIN_OK) {
            *found = 1;
            break;
        }
        if (rc != BASIN_ERR_USAGE) break;
        basin_warn("skipping checkpoint %s: %s", path, why);
        rc = BASIN_OK;
    }
    /* Starting over silently would throw away the run: refuse instead. */
    if (!rc && !*found && n > 0)
        rc = basin_error(BASIN_ERR_USAGE, "%s: none of its %zu checkpoints verifies (see above)", dir, n);
    free(list);
    return rc;
}
