/* Checkpoints that must be refused, each with a message that names the file
 * and the problem: flipped data bytes, a flipped string byte, a changed
 * field, truncation, a missing dataset or attribute, another format version,
 * the wrong dtype, files that are not HDF5 or not checkpoints; the state
 * buffer and the layer table of version 2 included. */
#include "ckpt_util.h"
#include "checkpoints/ckpt_internal.h"
#include "core/error.h"
#include "testing.h"

static char g_dir[PATH_MAX];

/* A fresh copy of the good checkpoint to damage. */
static void fresh_copy(const char *good, char *path, size_t len, const char *name)
{
    snprintf(path, len, "%s/%s", g_dir, name);
    if (copy_file(good, path) != 0) {
        fprintf(stderr, "cannot copy %s\n", good);
        exit(1);
    }
}

/* checkpoint_read(path) must fail with BASIN_ERR_USAGE and print one line
 * that names path and contains want. */
static void expect_refused(const char *path, const char *want, const char *what)
{
    Capture cap;
    Checkpoint c;
    capture_begin(&cap, path);
    int rc = checkpoint_read(path, &c);
    const char *msg = capture_end(&cap);
    EXPECT(rc == BASIN_ERR_USAGE, "%s: checkpoint_read returned %d, want %d", what, rc, BASIN_ERR_USAGE);
    if (rc == BASIN_OK) checkpoint_free(&c);
    EXPECT(strstr(msg, path) != NULL, "%s: message does not name the file: %s", what, msg);
    EXPECT(strstr(msg, want) != NULL, "%s: message lacks \"%s\": %s", what, want, msg);
    const char *nl = strchr(msg, '\n');
    EXPECT(nl && nl[1] == '\0', "%s: want exactly one line, got: %s", what, msg);
}

/* Rewrite a scalar attribute of the root group in place. */
static int set_root_attr(const char *path, const char *name, hid_t mem_type, const void *value)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = f >= 0 ? H5Aopen(f, name, H5P_DEFAULT) : -1;
    int ok = a >= 0 && H5Awrite(a, mem_type, value) >= 0;
    if (a >= 0) H5Aclose(a);
    if (f >= 0) ok = H5Fclose(f) >= 0 && ok;
    return ok ? 0 : -1;
}

/* The first byte offset of needle in the file. */
static uint64_t find_bytes(const char *path, const char *needle)
{
    unsigned char *buf;
    size_t len, nl = strlen(needle);
    if (read_whole(path, &buf, &len) != 0) return UINT64_MAX;
    uint64_t at = UINT64_MAX;
    for (size_t i = 0; i + nl <= len; i++)
        if (memcmp(buf + i, needle, nl) == 0) {
            at = i;
            break;
        }
    free(buf);
    return at;
}

int main(void)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    make_scratch(g_dir, sizeof g_dir, "ckpt-bad");
    TestState t;
    test_state_init(&t, 20000, 4242, 5);
    char good[PATH_MAX], p[PATH_MAX + 64];
    if (checkpoint_write(g_dir, &t.st, 0, good, sizeof good) != BASIN_OK) {
        fprintf(stderr, "cannot write the good checkpoint\n");
        return 1;
    }
    Checkpoint c;
    EXPECT(checkpoint_read(good, &c) == BASIN_OK, "the good checkpoint does not read");
    checkpoint_free(&c);

    /* One flipped bit in each buffer's data, found through H5Dget_offset. */
    fresh_copy(good, p, sizeof p, "flip-params.h5");
    uint64_t off = data_offset(p, "params");
    EXPECT(off != UINT64_MAX && flip_byte(p, off + 4 * 12345 + 1) == 0, "cannot flip a params byte");
    expect_refused(p, "dataset /params fails its checksum", "flipped params byte");

    fresh_copy(good, p, sizeof p, "flip-momentum.h5");
    off = data_offset(p, "momentum");
    EXPECT(off != UINT64_MAX && flip_byte(p, off + 4 * 19999 + 3) == 0, "cannot flip a momentum byte");
    expect_refused(p, "dataset /momentum fails its checksum", "flipped momentum byte");

    fresh_copy(good, p, sizeof p, "flip-state.h5");
    off = data_offset(p, "state");
    EXPECT(off != UINT64_MAX && flip_byte(p, off + 4 * 1999 + 2) == 0, "cannot flip a state byte");
    expect_refused(p, "dataset /state fails its checksum", "flipped state byte");

    /* The layer table is covered by the header checksum. */
    fresh_copy(good, p, sizeof p, "flip-table.h5");
    off = find_bytes(p, "layer-table-bytes");
    EXPECT(off != UINT64_MAX && flip_byte(p, off + 3) == 0, "cannot flip a layer table byte");
    expect_refused(p, "header checksum mismatch", "flipped layer table byte");

    /* A flipped byte inside a string, and a changed field value: the header
     * checksum catches what the buffers' checksums cannot. */
    fresh_copy(good, p, sizeof p, "flip-spec.h5");
    off = find_bytes(p, "conv(64,3)");
    EXPECT(off != UINT64_MAX && flip_byte(p, off + 5) == 0, "cannot flip a model_spec byte");
    expect_refused(p, "header checksum mismatch", "flipped model_spec byte");

    fresh_copy(good, p, sizeof p, "changed-step.h5");
    uint64_t step = 4243;
    EXPECT(set_root_attr(p, "next_step", H5T_NATIVE_UINT64, &step) == 0, "cannot rewrite next_step");
    expect_refused(p, "header checksum mismatch", "changed next_step");

    /* Truncated: in the momentum data, and right after the superblock. */
    fresh_copy(good, p, sizeof p, "truncated.h5");
    struct stat sb;
    stat(p, &sb);
    EXPECT(truncate(p, sb.st_size - 1000) == 0, "cannot truncate");
    expect_refused(p, "truncated", "truncated file");
    fresh_copy(good, p, sizeof p, "truncated-head.h5");
    EXPECT(truncate(p, 100) == 0, "cannot truncate");
    expect_refused(p, "truncated", "file truncated to 100 bytes");

    /* Cut in the momentum data with the superblock's end-of-file address
     * (version 0 superblock: byte 40) set to the cut: HDF5 opens the file,
     * and the data's byte range runs past its end. Refused before the
     * n_params floats are allocated, as past the end of the file. */
    fresh_copy(good, p, sizeof p, "past-eof.h5");
    uint64_t mom = data_offset(p, "momentum");
    unsigned char *head = NULL;
    size_t head_len = 0;
    EXPECT(read_whole(p, &head, &head_len) == 0 && head_len > 48 && head[8] == 0,
           "the checkpoint's superblock is not version 0");
    free(head);
    uint64_t cut = mom + 20000 * sizeof(float) / 2;
    int fd = open(p, O_WRONLY);
    EXPECT(mom != UINT64_MAX && truncate(p, (off_t)cut) == 0 && fd >= 0 && pwrite(fd, &cut, 8, 40) == 8,
           "cannot cut the momentum data");
    if (fd >= 0) close(fd);
    expect_refused(p, "dataset /momentum declares 80000 bytes", "data past the end of the file");

    /* Missing dataset; missing attribute. */
    fresh_copy(good, p, sizeof p, "no-momentum.h5");
    hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    EXPECT(f >= 0 && H5Ldelete(f, "momentum", H5P_DEFAULT) >= 0 && H5Fclose(f) >= 0, "cannot delete /momentum");
    expect_refused(p, "dataset /momentum is missing", "missing dataset");

    fresh_copy(good, p, sizeof p, "no-epoch.h5");
    f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    EXPECT(f >= 0 && H5Adelete(f, "epoch") >= 0 && H5Fclose(f) >= 0, "cannot delete attribute epoch");
    expect_refused(p, "attribute 'epoch' is missing", "missing attribute");

    fresh_copy(good, p, sizeof p, "no-state.h5");
    f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    EXPECT(f >= 0 && H5Ldelete(f, "state", H5P_DEFAULT) >= 0 && H5Fclose(f) >= 0, "cannot delete /state");
    expect_refused(p, "dataset /state is missing", "missing state");

    fresh_copy(good, p, sizeof p, "no-table.h5");
    f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    EXPECT(f >= 0 && H5Ldelete(f, "layer_table", H5P_DEFAULT) >= 0 && H5Fclose(f) >= 0, "cannot delete /layer_table");
    expect_refused(p, "dataset /layer_table is missing", "missing layer table");

    fresh_copy(good, p, sizeof p, "no-n-state.h5");
    f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    EXPECT(f >= 0 && H5Adelete(f, "n_state") >= 0 && H5Fclose(f) >= 0, "cannot delete attribute n_state");
    expect_refused(p, "attribute 'n_state' is missing", "missing n_state");

    /* Other format versions: a future one; and relabelling cannot pass a
     * version-2 file off as version 1 (the header checksum differs), nor a
     * version-1 file as version 2 (it lacks n_state). */
    fresh_copy(good, p, sizeof p, "version3.h5");
    uint32_t v = CHECKPOINT_FORMAT_VERSION + 1;
    EXPECT(set_root_attr(p, "format_version", H5T_NATIVE_UINT32, &v) == 0, "cannot rewrite format_version");
    expect_refused(p, "format version 3, but this build reads versions 1 to 2 (written by a newer basin)",
                   "newer format version");
    fresh_copy(good, p, sizeof p, "relabelled-v1.h5");
    v = 1;
    EXPECT(set_root_attr(p, "format_version", H5T_NATIVE_UINT32, &v) == 0, "cannot rewrite format_version");
    expect_refused(p, "header checksum mismatch", "version 2 relabelled as 1");
    {
        CheckpointState v1 = t.st;
        v1.n_state = 0, v1.state = NULL, v1.layer_table = NULL, v1.next_step = 1;
        char v1_path[PATH_MAX];
        EXPECT(ckpt_write_version(g_dir, &v1, 1, 0, v1_path, sizeof v1_path) == BASIN_OK, "v1 write failed");
        fresh_copy(v1_path, p, sizeof p, "relabelled-v2.h5");
        v = 2;
        EXPECT(set_root_attr(p, "format_version", H5T_NATIVE_UINT32, &v) == 0, "cannot rewrite format_version");
        expect_refused(p, "attribute 'n_state' is missing", "version 1 relabelled as 2");
    }
    fresh_copy(good, p, sizeof p, "version0.h5");
    v = 0;
    EXPECT(set_root_attr(p, "format_version", H5T_NATIVE_UINT32, &v) == 0, "cannot rewrite format_version");
    expect_refused(p, "format version 0", "older format version");

    /* /params as float64 with the right shape and checksum attribute. */
    fresh_copy(good, p, sizeof p, "float64.h5");
    f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    int ok = f >= 0 && H5Ldelete(f, "params", H5P_DEFAULT) >= 0;
    hsize_t dims[1] = {20000};
    hid_t space = H5Screate_simple(1, dims, NULL);
    hid_t ds = ok ? H5Dcreate2(f, "params", H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1;
    double *d64 = calloc(20000, sizeof(double));
    ok = ds >= 0 && H5Dwrite(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, d64) >= 0;
    hid_t s1 = H5Screate(H5S_SCALAR);
    hid_t a = ds >= 0 ? H5Acreate2(ds, "xxh64", H5T_STD_U64LE, s1, H5P_DEFAULT, H5P_DEFAULT) : -1;
    uint64_t zero = 0;
    ok = ok && a >= 0 && H5Awrite(a, H5T_NATIVE_UINT64, &zero) >= 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(s1);
    if (ds >= 0) H5Dclose(ds);
    H5Sclose(space);
    free(d64);
    if (f >= 0) ok = H5Fclose(f) >= 0 && ok;
    EXPECT(ok, "cannot replace /params with float64");
    expect_refused(p, "dataset /params has the wrong type (expected float32 little-endian", "float64 params");

    /* A field stored with another integer type. */
    fresh_copy(good, p, sizeof p, "int-type.h5");
    f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    ok = f >= 0 && H5Adelete(f, "world_size") >= 0;
    s1 = H5Screate(H5S_SCALAR);
    a = ok ? H5Acreate2(f, "world_size", H5T_STD_I64LE, s1, H5P_DEFAULT, H5P_DEFAULT) : -1;
    int64_t ws = 4;
    ok = ok && a >= 0 && H5Awrite(a, H5T_NATIVE_INT64, &ws) >= 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(s1);
    if (f >= 0) ok = H5Fclose(f) >= 0 && ok;
    EXPECT(ok, "cannot retype world_size");
    expect_refused(p, "attribute 'world_size' has the wrong type (expected uint32", "int64 world_size");

    /* Not HDF5 at all; empty; an HDF5 file that is not a checkpoint; missing. */
    snprintf(p, sizeof p, "%s/text.h5", g_dir);
    FILE *tf = fopen(p, "w");
    if (tf) fputs("model=cnn lr=0.05\nthis is not an HDF5 file\n", tf), fclose(tf);
    expect_refused(p, "not an HDF5 file", "text file");
    snprintf(p, sizeof p, "%s/empty.h5", g_dir);
    tf = fopen(p, "w");
    if (tf) fclose(tf);
    expect_refused(p, "not an HDF5 file (it is empty)", "empty file");
    snprintf(p, sizeof p, "%s/other.h5", g_dir);
    f = H5Fcreate(p, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    EXPECT(f >= 0 && H5Fclose(f) >= 0, "cannot create an empty HDF5 file");
    expect_refused(p, "not a basin checkpoint", "HDF5 file of something else");
    snprintf(p, sizeof p, "%s/absent.h5", g_dir);
    expect_refused(p, "No such file", "missing file");

    /* None of the refusals touched the good file. */
    EXPECT(checkpoint_read(good, &c) == BASIN_OK, "the good checkpoint stopped reading");
    checkpoint_free(&c);

    test_state_free(&t);
    remove_tree(g_dir);
    return test_finish("test_checkpoint_corrupt");
}
