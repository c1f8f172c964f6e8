/* Reading a checkpoint. HDF5's default (sec2) driver, read-only. Nothing is
 * allocated for a buffer before its declared bytes are known to be stored
 * inside the file (reader/h5check.h) and the header checksum holds. libhdf5
 * may crash on damaged metadata, so a child process reads and verifies the
 * file first (reader/h5guard.h): a file that crashes it is refused with one
 * line, like any other damage, and checkpoint_latest skips it. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoints/ckpt_internal.h"
#include "checkpoints/xxh64.h"
#include "core/error.h"
#include "reader/h5attr.h"
#include "reader/h5check.h"
#include "reader/h5guard.h"

/* ---- reading -------------------------------------------------------------- */

#define BAD(...) (snprintf(why, why_len, __VA_ARGS__), BASIN_ERR_USAGE)

/* A scalar attribute of exactly file type `want`, read as mem_type. */
static int get_attr(hid_t obj, const char *name, hid_t want, const char *want_name, hid_t mem_type, void *value,
                    char *why, size_t why_len)
{
    char h5[256];
    H5Attr a;
    int rc = BASIN_OK, st = h5attr_open(obj, name, &a, why, why_len);
    if (st > 0) rc = BAD("attribute '%s' is missing", name);
    else if (st < 0) rc = BASIN_ERR_USAGE; /* why says which call */
    else if (H5Sget_simple_extent_type(a.space) != H5S_SCALAR) rc = BAD("attribute '%s' is not a scalar", name);
    else if (H5Tequal(a.type, want) <= 0) rc = BAD("attribute '%s' has the wrong type (expected %s)", name, want_name);
    else if (H5Aread(a.attr, mem_type, value) < 0)
        rc = BAD("cannot read attribute '%s': %s", name, h5check_reason(h5));
    h5attr_close(&a);
    return rc;
}

/* A fixed-length string attribute, malloc'd into *out. */
static int get_string_attr(hid_t obj, const char *name, char **out, char *why, size_t why_len)
{
    char h5[256];
    *out = NULL;
    H5Attr a;
    int rc = BASIN_OK, st = h5attr_open(obj, name, &a, why, why_len);
    char *buf = NULL;
    if (st > 0) {
        rc = BAD("attribute '%s' is missing", name);
        goto cleanup;
    }
    if (st < 0) {
        rc = BASIN_ERR_USAGE;
        goto cleanup;
    }
    size_t size = H5Tget_size(a.type);
    if (H5Sget_simple_extent_type(a.space) != H5S_SCALAR || H5Tget_class(a.type) != H5T_STRING ||
        H5Tis_variable_str(a.type) != 0 || size == 0 || size > CKPT_MAX_STRING + 1) {
        rc = BAD("attribute '%s' has the wrong type (expected a fixed-length string)", name);
        goto cleanup;
    }
    buf = basin_malloc(size + 1);
    if (!buf) {
        rc = BASIN_ERR_RUNTIME;
        goto cleanup;
    }
    if (H5Aread(a.attr, a.type, buf) < 0) {
        rc = BAD("cannot read attribute '%s': %s", name, h5check_reason(h5));
        goto cleanup;
    }
    buf[size] = '\0';
    *out = buf;
    buf = NULL;

cleanup:
    free(buf);
    h5attr_close(&a);
    return rc;
}

/* /name: float32 little-endian, shape (n) (n as count_name says), stored
 * inside a file of file_bytes, with its "xxh64" attribute. */
static int check_dataset(hid_t file, const char *name, size_t n, const char *count_name, uint64_t file_bytes,
                         uint64_t *stored_xxh, char *why, size_t why_len)
{
    char h5[256];
    htri_t exists = H5Lexists(file, name, H5P_DEFAULT);
    if (exists < 0) return BAD("cannot look up dataset /%s: %s", name, h5check_reason(h5));
    if (exists == 0) return BAD("dataset /%s is missing", name);
    int rc = BASIN_OK;
    hid_t ds = H5Dopen2(file, name, H5P_DEFAULT), type = H5I_INVALID_HID, space = H5I_INVALID_HID;
    if (ds < 0) {
        rc = BAD("/%s is not a readable dataset: %s", name, h5check_reason(h5));
        goto cleanup;
    }
    type = H5Dget_type(ds);
    space = H5Dget_space(ds);
    if (type < 0 || space < 0) {
        rc = BAD("cannot read the type of dataset /%s: %s", name, h5check_reason(h5));
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
        rc = BAD("dataset /%s has the wrong shape (expected (%zu), as %s says)", name, n, count_name);
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
        rc = BAD("cannot read dataset /%s: %s", name, h5check_reason(h5));
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

/* /layer_table (version 2): a scalar fixed-length string of at most
 * CKPT_MAX_TABLE bytes stored inside the file, malloc'd into *out. Its bytes
 * are covered by the header checksum. */
static int read_table(hid_t file, uint64_t file_bytes, char **out, char *why, size_t why_len)
{
    char h5[256];
    *out = NULL;
    htri_t exists = H5Lexists(file, "layer_table", H5P_DEFAULT);
    if (exists < 0) return BAD("cannot look up dataset /layer_table: %s", h5check_reason(h5));
    if (exists == 0) return BAD("dataset /layer_table is missing");
    int rc = BASIN_OK;
    char *buf = NULL;
    hid_t ds = H5Dopen2(file, "layer_table", H5P_DEFAULT), type = H5I_INVALID_HID, space = H5I_INVALID_HID;
    if (ds < 0) {
        rc = BAD("/layer_table is not a readable dataset: %s", h5check_reason(h5));
        goto cleanup;
    }
    type = H5Dget_type(ds);
    space = H5Dget_space(ds);
    if (type < 0 || space < 0) {
        rc = BAD("cannot read the type of dataset /layer_table: %s", h5check_reason(h5));
        goto cleanup;
    }
    size_t size = H5Tget_size(type);
    if (H5Sget_simple_extent_type(space) != H5S_SCALAR || H5Tget_class(type) != H5T_STRING ||
        H5Tis_variable_str(type) != 0 || size == 0 || size > CKPT_MAX_TABLE + 1) {
        rc = BAD("dataset /layer_table has the wrong type (expected a scalar fixed-length string of at most %zu "
                 "bytes)", CKPT_MAX_TABLE + 1);
        goto cleanup;
    }
    char stored[320];
    if (h5check_storage(ds, size, file_bytes, stored, sizeof stored)) {
        rc = BAD("dataset /layer_table %s", stored);
        goto cleanup;
    }
    buf = basin_malloc(size + 1);
    if (!buf) {
        rc = BASIN_ERR_RUNTIME;
        goto cleanup;
    }
    if (H5Dread(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
        rc = BAD("cannot read dataset /layer_table: %s", h5check_reason(h5));
        goto cleanup;
    }
    buf[size] = '\0';
    *out = buf;
    buf = NULL;

cleanup:
    free(buf);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
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
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "H5Pcreate(file access) failed: %s", h5check_reason(h5));
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
        rc = BAD("damaged or truncated HDF5 file (%s)", h5check_reason(h5));
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
    if (version < CHECKPOINT_FORMAT_OLDEST || version > CHECKPOINT_FORMAT_VERSION) {
        rc = BAD("format version %u, but this build reads versions %d to %d%s", version, CHECKPOINT_FORMAT_OLDEST,
                 CHECKPOINT_FORMAT_VERSION, version > CHECKPOINT_FORMAT_VERSION ? " (written by a newer basin)" : "");
        goto cleanup;
    }
    out->format_version = version;

    CheckpointState *st = &out->st;
    for (size_t i = 0; i < CKPT_N_FIELDS; i++) {
        const Field *f = &ckpt_fields[i];
        if ((rc = get_attr(file, f->name, ckpt_kind_file_type(f->kind), ckpt_kind_name(f->kind), ckpt_kind_mem_type(f->kind),
                           (char *)st + f->offset, why, why_len)))
            goto cleanup;
    }
    uint64_t n = 0, n_state = 0, n_moment2 = 0, header_xxh = 0, xxh[CKPT_N_BUFFERS] = {0};
    if ((rc = get_attr(file, "n_params", H5T_STD_U64LE, "uint64 little-endian", H5T_NATIVE_UINT64, &n, why,
                       why_len)))
        goto cleanup;
    if (version >= 2 && (rc = get_attr(file, "n_state", H5T_STD_U64LE, "uint64 little-endian", H5T_NATIVE_UINT64,
                                       &n_state, why, why_len)))
        goto cleanup;
    /* Optional: only files with a second moment have it. */
    if (version >= 2 && H5Aexists(file, "n_moment2") > 0 &&
        (rc = get_attr(file, "n_moment2", H5T_STD_U64LE, "uint64 little-endian", H5T_NATIVE_UINT64, &n_moment2,
                       why, why_len)))
        goto cleanup;
    if ((rc = get_attr(file, "header_xxh64", H5T_STD_U64LE, "uint64 little-endian", H5T_NATIVE_UINT64,
                       &header_xxh, why, why_len)))
        goto cleanup;
    if ((rc = get_string_attr(file, "model_spec", &out->model_spec, why, why_len))) goto cleanup;
    if ((rc = get_string_attr(file, "config_text", &out->config_text, why, why_len))) goto cleanup;
    /* Optional: only files of a run with --balance have it. */
    if (version >= 2 && H5Aexists(file, "balance") > 0 &&
        (rc = get_string_attr(file, "balance", &out->balance, why, why_len)))
        goto cleanup;
    st->balance = out->balance;
    if (n == 0 || n > SIZE_MAX / 2 / sizeof(float)) {
        rc = BAD("implausible n_params %llu", (unsigned long long)n);
        goto cleanup;
    }
    if (n_state > SIZE_MAX / 2 / sizeof(float)) {
        rc = BAD("implausible n_state %llu", (unsigned long long)n_state);
        goto cleanup;
    }
    if (n_moment2 != 0 && n_moment2 != n) {
        rc = BAD("n_moment2 %llu is neither 0 nor n_params %llu", (unsigned long long)n_moment2,
                 (unsigned long long)n);
        goto cleanup;
    }
    st->n_params = (size_t)n;
    st->n_state = (size_t)n_state;
    st->n_moment2 = (size_t)n_moment2;
    st->model_spec = out->model_spec;
    st->config_text = out->config_text;

    /* The buffers' stored checksums are part of the header checksum, so check
     * the datasets' metadata first; their data is read once the header is
     * sound. The state of version 2 is stored only when n_state > 0; its
     * checksum is then that of no bytes. */
    uint64_t file_bytes = (uint64_t)sb.st_size;
    xxh[CKPT_STATE] = xxh64("", 0, 0);
    for (int b = 0; b < CKPT_N_BUFFERS; b++) {
        size_t count = ckpt_buffer_count(st, b);
        if (b == CKPT_STATE && (version < 2 || count == 0)) continue;
        if (b == CKPT_MOMENT2 && count == 0) continue;
        if ((rc = check_dataset(file, ckpt_buffer_names[b], count,
                                b == CKPT_STATE ? "n_state" : b == CKPT_MOMENT2 ? "n_moment2" : "n_params",
                                file_bytes, &xxh[b], why, why_len)))
            goto cleanup;
    }
    if (version >= 2) {
        if ((rc = read_table(file, file_bytes, &out->layer_table, why, why_len))) goto cleanup;
        st->layer_table = out->layer_table;
    }
    uint64_t want = 0;
    if ((rc = ckpt_header_hash(st, version, xxh, &want))) goto cleanup;
    if (want != header_xxh) {
        rc = BAD("header checksum mismatch (stored xxh64 %016llx, computed %016llx): a field, string or the layer "
                 "table is corrupt", (unsigned long long)header_xxh, (unsigned long long)want);
        goto cleanup;
    }
    if (meta_only) goto cleanup;
    if ((rc = read_dataset(file, "params", st->n_params, xxh[CKPT_PARAMS], &out->params, why, why_len))) goto cleanup;
    if ((rc = read_dataset(file, "momentum", st->n_params, xxh[CKPT_MOMENTUM], &out->momentum, why, why_len)))
        goto cleanup;
    if (st->n_state > 0 &&
        (rc = read_dataset(file, "state", st->n_state, xxh[CKPT_STATE], &out->state, why, why_len)))
        goto cleanup;
    if (st->n_moment2 > 0 &&
        (rc = read_dataset(file, "moment2", st->n_moment2, xxh[CKPT_MOMENT2], &out->moment2, why, why_len)))
        goto cleanup;
    st->params = out->params;
    st->momentum = out->momentum;
    st->state = out->state;
    st->moment2 = out->moment2;

cleanup:
    if (file >= 0 && H5Fclose(file) < 0 && !rc) rc = BAD("H5Fclose failed: %s", h5check_reason(h5));
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
int ckpt_read_verified(const char *path, Checkpoint *out, char *why, size_t why_len)
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
    int rc = ckpt_read_verified(path, out, why, sizeof why);
    if (rc == BASIN_ERR_USAGE) basin_error(rc, "checkpoint %s: %s", path, why);
    return rc;
}

void checkpoint_free(Checkpoint *c)
{
    if (!c) return;
    free(c->model_spec);
    free(c->config_text);
    free(c->layer_table);
    free(c->params);
    free(c->momentum);
    free(c->state);
    free(c->moment2);
    free(c->balance);
    c->model_spec = c->config_text = c->layer_table = c->balance = NULL;
    c->params = c->momentum = c->state = c->moment2 = NULL;
    c->format_version = 0;
    memset(&c->st, 0, sizeof c->st);
}

