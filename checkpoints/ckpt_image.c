/* The in-memory HDF5 image of a checkpoint's metadata. HDF5 never touches
 * the disk when a checkpoint is written: when one of its own writes fails
 * (disk full, file-size limit), HDF5 1.10 cannot close the file and crashes
 * at exit. So HDF5 produces the metadata (superblock, object headers,
 * attributes) through a small write-only virtual file driver that keeps
 * every byte it writes in memory (a few KB, and the layer table), and the
 * buffers' datasets (params, momentum, state) are created contiguous with
 * their space allocated and never written through HDF5: H5Dget_offset gives
 * their byte ranges (ckpt_write.c fills them). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/ckpt_internal.h"
#include "reader/h5attr.h"
#include "core/error.h"

/* ---- the in-memory metadata driver ---------------------------------------- */

typedef struct {
    CkptSink *sink;
} MemFapl;

typedef struct {
    H5FD_t pub; /* must come first */
    CkptSink *sink;
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
    const CkptSink *s = ((MemFile *)file)->sink;
    memset(buf, 0, size);
    for (size_t i = 0; i < s->n; i++) {
        const CkptExtent *e = &s->ext[i];
        haddr_t lo = e->addr > addr ? e->addr : addr;
        haddr_t hi = e->addr + e->size < addr + size ? e->addr + e->size : addr + size;
        if (lo < hi) memcpy((unsigned char *)buf + (lo - addr), e->bytes + (lo - e->addr), (size_t)(hi - lo));
    }
    return 0;
}

static herr_t mem_write(H5FD_t *file, H5FD_mem_t type, hid_t dxpl, haddr_t addr, size_t size, const void *buf)
{
    MemFile *f = (MemFile *)file;
    CkptSink *s = f->sink;
    if (size > CKPT_MAX_META - s->total) return -1;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 32;
        CkptExtent *e = realloc(s->ext, cap * sizeof *e);
        if (!e) return -1;
        s->ext = e;
        s->cap = cap;
    }
    unsigned char *copy = malloc(size ? size : 1);
    if (!copy) return -1;
    memcpy(copy, buf, size);
    s->ext[s->n++] = (CkptExtent){addr, size, copy};
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

void ckpt_sink_free(CkptSink *s)
{
    for (size_t i = 0; i < s->n; i++) free(s->ext[i].bytes);
    free(s->ext);
    memset(s, 0, sizeof *s);
}

/* ---- building the metadata ------------------------------------------------ */

static int put_attr(hid_t obj, const char *name, hid_t file_type, hid_t mem_type, const void *value)
{
    return h5attr_write(obj, "checkpoint", name, file_type, mem_type, value);
}

/* A fixed-length, NUL-terminated ASCII/UTF-8 string of strlen + 1 bytes. */
static int put_string_attr(hid_t obj, const char *name, const char *value)
{
    char why[256];
    hid_t type = H5Tcopy(H5T_C_S1);
    if (type < 0 || H5Tset_size(type, strlen(value) + 1) < 0 || H5Tset_strpad(type, H5T_STR_NULLTERM) < 0 ||
        H5Tset_cset(type, H5T_CSET_UTF8) < 0) {
        if (type >= 0) H5Tclose(type);
        return BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Tcopy/H5Tset_size(string %s) failed: %s", name, h5check_reason(why));
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
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Screate_simple(%s) failed: %s", name, h5check_reason(why));
        goto cleanup;
    }
    /* Space allocated now, never filled: we write the bytes ourselves. No
     * times: the same state gives the same file. */
    dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (dcpl < 0 || H5Pset_layout(dcpl, H5D_CONTIGUOUS) < 0 || H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY) < 0 ||
        H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) < 0 || H5Pset_obj_track_times(dcpl, 0) < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Pcreate/H5Pset_*(%s, contiguous, early) failed: %s", name,
                        h5check_reason(why));
        goto cleanup;
    }
    ds = H5Dcreate2(file, name, H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (ds < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Dcreate2(%s) failed: %s", name, h5check_reason(why));
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

/* The layer table: one fixed-length UTF-8 string (strlen + 1 bytes) in a
 * scalar, contiguous dataset, written by HDF5 into the image like the
 * metadata (it is small). */
static int put_table(hid_t file, const char *text)
{
    int rc = BASIN_OK;
    char why[256];
    hid_t type = H5I_INVALID_HID, space = H5I_INVALID_HID, dcpl = H5I_INVALID_HID, ds = H5I_INVALID_HID;
    type = H5Tcopy(H5T_C_S1);
    if (type < 0 || H5Tset_size(type, strlen(text) + 1) < 0 || H5Tset_strpad(type, H5T_STR_NULLTERM) < 0 ||
        H5Tset_cset(type, H5T_CSET_UTF8) < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Tcopy/H5Tset_size(layer_table) failed: %s", h5check_reason(why));
        goto cleanup;
    }
    space = H5Screate(H5S_SCALAR);
    dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (space < 0 || dcpl < 0 || H5Pset_layout(dcpl, H5D_CONTIGUOUS) < 0 || H5Pset_obj_track_times(dcpl, 0) < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Screate/H5Pset_*(layer_table) failed: %s", h5check_reason(why));
        goto cleanup;
    }
    ds = H5Dcreate2(file, "layer_table", type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (ds < 0 || H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, text) < 0)
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Dcreate2/H5Dwrite(layer_table) failed: %s", h5check_reason(why));

cleanup:
    if (ds >= 0 && H5Dclose(ds) < 0 && !rc) rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Dclose(layer_table) failed");
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return rc;
}

/* HDF5's part of the file, into sink; the byte offsets of the buffers'
 * datasets. */
int ckpt_build_metadata(const CheckpointState *st, uint32_t version, const uint64_t xxh[CKPT_N_BUFFERS],
                        uint64_t header_xxh, CkptSink *sink, haddr_t off[CKPT_N_BUFFERS])
{
    int rc = BASIN_OK;
    char why[256];
    hid_t drv = H5I_INVALID_HID, fapl = H5I_INVALID_HID, file = H5I_INVALID_HID;
    MemFapl fa = {sink};
    for (int b = 0; b < CKPT_N_BUFFERS; b++) off[b] = HADDR_UNDEF;

    drv = H5FDregister(&MEM_DRIVER);
    if (drv < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5FDregister(in-memory metadata driver) failed: %s", h5check_reason(why));
        goto cleanup;
    }
    fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0 || H5Pset_driver(fapl, drv, &fa) < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Pset_driver(in-memory metadata driver) failed: %s", h5check_reason(why));
        goto cleanup;
    }
    file = H5Fcreate("checkpoint-in-memory", H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (file < 0) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Fcreate(in memory) failed: %s", h5check_reason(why));
        goto cleanup;
    }
    uint64_t n = st->n_params, n_state = st->n_state, n_moment2 = st->n_moment2;
    if ((rc = put_string_attr(file, "format", CKPT_MAGIC))) goto cleanup;
    if ((rc = put_attr(file, "format_version", H5T_STD_U32LE, H5T_NATIVE_UINT32, &version))) goto cleanup;
    if ((rc = put_string_attr(file, "model_spec", ckpt_str(st->model_spec)))) goto cleanup;
    if ((rc = put_string_attr(file, "config_text", ckpt_str(st->config_text)))) goto cleanup;
    for (size_t i = 0; i < CKPT_N_FIELDS; i++) {
        const Field *f = &ckpt_fields[i];
        if ((rc = put_attr(file, f->name, ckpt_kind_file_type(f->kind), ckpt_kind_mem_type(f->kind),
                           (const char *)st + f->offset)))
            goto cleanup;
    }
    if ((rc = put_attr(file, "n_params", H5T_STD_U64LE, H5T_NATIVE_UINT64, &n))) goto cleanup;
    if (version >= 2 && (rc = put_attr(file, "n_state", H5T_STD_U64LE, H5T_NATIVE_UINT64, &n_state))) goto cleanup;
    if (version >= 2 && n_moment2 > 0 &&
        (rc = put_attr(file, "n_moment2", H5T_STD_U64LE, H5T_NATIVE_UINT64, &n_moment2)))
        goto cleanup;
    if (version >= 2 && *ckpt_str(st->balance) && (rc = put_string_attr(file, "balance", st->balance))) goto cleanup;
    if ((rc = put_attr(file, "header_xxh64", H5T_STD_U64LE, H5T_NATIVE_UINT64, &header_xxh))) goto cleanup;
    for (int b = 0; b < CKPT_N_BUFFERS; b++) {
        if (b == CKPT_STATE && (version < 2 || st->n_state == 0)) continue;
        if (b == CKPT_MOMENT2 && (version < 2 || st->n_moment2 == 0)) continue;
        if ((rc = put_dataset(file, ckpt_buffer_names[b], ckpt_buffer_count(st, b), xxh[b], &off[b]))) goto cleanup;
    }
    if (version >= 2 && (rc = put_table(file, ckpt_str(st->layer_table)))) goto cleanup;

cleanup:
    /* Closing flushes the last metadata into the sink; it cannot fail on I/O. */
    if (file >= 0 && H5Fclose(file) < 0 && !rc)
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Fclose(in memory) failed: %s", h5check_reason(why));
    if (fapl >= 0) H5Pclose(fapl);
    if (drv >= 0) H5FDunregister(drv);
    return rc;
}
