/* Checkpoints: the hash, round trip (with and without a state buffer),
 * version-1 files, keep-K rotation, atomic replace, a full disk
 * (RLIMIT_FSIZE in a child), and the choice of the latest good file. */
#include "ckpt_util.h"
#include "checkpoints/ckpt_internal.h"
#include "checkpoints/xxh64.h"
#include "core/error.h"
#include "testing.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

static void test_xxh64_vectors(void)
{
    /* Reference values of XXH64 with seed 0. */
    static const struct {
        const char *s;
        uint64_t h;
    } v[] = {
        {"", 0xef46db3751d8e999ull},
        {"a", 0xd24ec4f1a98c6e5bull},
        {"abc", 0x44bc2cf5ad770999ull},
        {"1234", 0xd8316e61d84f6ba4ull},
        {"12345678", 0xd2d02f08cf7cfd4aull},
        {"123456789012345", 0xc377d78ade001a3cull},
        {"1234567890123456", 0xb61c33dc6c59f270ull},
        {"1234567890123456789012345678901", 0x8f367cb873a5376eull},
        {"12345678901234567890123456789012", 0x40fd1aa52d98274cull},
        {"The quick brown fox jumps over the lazy dog", 0x0b242d361fda71bcull},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        uint64_t h = xxh64(v[i].s, strlen(v[i].s), 0);
        EXPECT(h == v[i].h, "xxh64(\"%s\") = %016llx, want %016llx", v[i].s, (unsigned long long)h,
               (unsigned long long)v[i].h);
    }
}

static int state_equal(const CheckpointState *a, const CheckpointState *b)
{
    int bad = 0;
#define SAME(f) if (a->f != b->f) { fprintf(stderr, "field " #f " differs\n"); bad++; }
    SAME(config_hash) SAME(seed) SAME(global_batch) SAME(world_size) SAME(train_samples) SAME(in_c) SAME(in_h)
    SAME(in_w) SAME(classes) SAME(next_step) SAME(epoch) SAME(step_in_epoch) SAME(samples_seen) SAME(n_params)
    SAME(n_state)
#undef SAME
    const char *ta = a->layer_table ? a->layer_table : "", *tb = b->layer_table ? b->layer_table : "";
    if (strcmp(ta, tb) != 0) bad++, fprintf(stderr, "layer_table differs\n");
    if (a->n_state == b->n_state && a->n_state && memcmp(a->state, b->state, a->n_state * sizeof(float)) != 0)
        bad++, fprintf(stderr, "state differs\n");
    if (memcmp(&a->elapsed_s, &b->elapsed_s, sizeof a->elapsed_s) != 0) bad++, fprintf(stderr, "elapsed_s differs\n");
    if (strcmp(a->model_spec, b->model_spec) != 0) bad++, fprintf(stderr, "model_spec differs\n");
    if (strcmp(a->config_text, b->config_text) != 0) bad++, fprintf(stderr, "config_text differs\n");
    if (a->n_params == b->n_params) {
        if (memcmp(a->params, b->params, a->n_params * sizeof(float)) != 0) bad++, fprintf(stderr, "params differ\n");
        if (memcmp(a->momentum, b->momentum, a->n_params * sizeof(float)) != 0)
            bad++, fprintf(stderr, "momentum differs\n");
    }
    return bad == 0;
}

static void test_round_trip(void)
{
    char dir[PATH_MAX], sub[PATH_MAX + 16], path[PATH_MAX];
    make_scratch(dir, sizeof dir, "ckpt-rt");
    snprintf(sub, sizeof sub, "%s/a/b", dir); /* created on demand */
    const size_t sizes[] = {1, 7, 1000, 300001};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        TestState t;
        test_state_init(&t, sizes[k], 1234 + k, (uint32_t)k);
        if (k == 1) t.st.config_text = ""; /* empty strings survive too */
        if (k == 2) t.st.layer_table = NULL; /* stored as "" */
        int rc = checkpoint_write(sub, &t.st, 0, path, sizeof path);
        EXPECT(rc == BASIN_OK, "checkpoint_write(n=%zu) returned %d", sizes[k], rc);
        char want[PATH_MAX + 64];
        snprintf(want, sizeof want, "%s/ckpt-%010llu.h5", sub, (unsigned long long)t.st.next_step);
        EXPECT(strcmp(path, want) == 0, "path_out is %s, want %s", path, want);
        Checkpoint c;
        rc = checkpoint_read(path, &c);
        EXPECT(rc == BASIN_OK, "checkpoint_read(n=%zu) returned %d", sizes[k], rc);
        if (rc == BASIN_OK) {
            EXPECT(state_equal(&t.st, &c.st), "round trip of n=%zu changed something", sizes[k]);
            EXPECT(strcmp(c.path, path) == 0, "Checkpoint.path is %s", c.path);
            EXPECT(c.st.params == c.params && c.st.momentum == c.momentum && c.st.state == c.state &&
                       c.st.layer_table == c.layer_table, "st does not alias the owned buffers");
            EXPECT(c.format_version == CHECKPOINT_FORMAT_VERSION, "read back as version %u", c.format_version);
            EXPECT((c.state != NULL) == (sizes[k] >= 10), "n=%zu: state %s", sizes[k], c.state ? "present" : "absent");
            checkpoint_free(&c);
        }
        test_state_free(&t);
    }
    /* The same state gives the same bytes (no times in the file). */
    TestState t;
    test_state_init(&t, 1000, 77, 3);
    char p1[PATH_MAX], p2[PATH_MAX];
    EXPECT(checkpoint_write(dir, &t.st, 0, p1, sizeof p1) == BASIN_OK, "first write failed");
    unsigned char *b1 = NULL, *b2 = NULL;
    size_t l1 = 0, l2 = 0;
    read_whole(p1, &b1, &l1);
    EXPECT(checkpoint_write(dir, &t.st, 0, p2, sizeof p2) == BASIN_OK, "second write failed");
    read_whole(p2, &b2, &l2);
    EXPECT(l1 == l2 && l1 > 8000 && b1 && b2 && memcmp(b1, b2, l1) == 0, "two writes of one state differ");
    free(b1);
    free(b2);
    /* Refused before anything is written. */
    char small[8];
    EXPECT(checkpoint_write(dir, &t.st, 0, small, sizeof small) == BASIN_ERR_USAGE, "tiny path_out accepted");
    t.st.n_params = 0;
    EXPECT(checkpoint_write(dir, &t.st, 0, NULL, 0) == BASIN_ERR_USAGE, "n_params 0 accepted");
    test_state_free(&t);
    remove_tree(sub); /* dir/a/b */
    snprintf(sub, sizeof sub, "%s/a", dir);
    remove_tree(sub);
    remove_tree(dir);
}

/* Dataset name exists in the file at path. */
static int has_link(const char *path, const char *name)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    int yes = f >= 0 && H5Lexists(f, name, H5P_DEFAULT) > 0;
    if (f >= 0) H5Fclose(f);
    return yes;
}

static int has_root_attr(const char *path, const char *name)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    int yes = f >= 0 && H5Aexists(f, name) > 0;
    if (f >= 0) H5Fclose(f);
    return yes;
}

/* Version-1 files (no state, no layer table) are still read; a version-1
 * file cannot hold a state or a table; a version-2 file without a state
 * has no /state dataset. */
static void test_versions(void)
{
    char dir[PATH_MAX], path[PATH_MAX];
    make_scratch(dir, sizeof dir, "ckpt-v1");
    TestState t;
    test_state_init(&t, 5000, 77, 3);
    EXPECT(t.st.n_state == 500, "the test state has %zu state values", t.st.n_state);
    Capture cap;
    capture_begin(&cap, dir);
    int rc = ckpt_write_version(dir, &t.st, 1, 0, path, sizeof path);
    const char *msg = capture_end(&cap);
    EXPECT(rc == BASIN_ERR_USAGE && strstr(msg, "format version 1 holds no state"), "v1 with a state: rc %d, %s",
           rc, msg);
    t.st.n_state = 0, t.st.state = NULL, t.st.layer_table = NULL;
    EXPECT(ckpt_write_version(dir, &t.st, 1, 0, path, sizeof path) == BASIN_OK, "v1 write failed");
    EXPECT(!has_link(path, "layer_table") && !has_link(path, "state") && !has_root_attr(path, "n_state"),
           "a version-1 file has version-2 objects");
    Checkpoint c;
    rc = checkpoint_read(path, &c);
    EXPECT(rc == BASIN_OK, "the version-1 file does not read (%d)", rc);
    if (rc == BASIN_OK) {
        EXPECT(c.format_version == 1, "read as version %u", c.format_version);
        EXPECT(state_equal(&t.st, &c.st), "version-1 round trip changed something");
        EXPECT(c.st.layer_table == NULL && c.st.state == NULL && c.st.n_state == 0, "version 1 read a table or state");
        checkpoint_free(&c);
    }
    /* Version 2 without a state: no /state, n_state 0; with a table. */
    t.st.layer_table = TEST_LAYER_TABLE;
    t.st.next_step = 78;
    EXPECT(checkpoint_write(dir, &t.st, 0, path, sizeof path) == BASIN_OK, "v2 write without state failed");
    EXPECT(has_link(path, "layer_table") && !has_link(path, "state") && has_root_attr(path, "n_state"),
           "version 2 without a state: wrong objects");
    rc = checkpoint_read(path, &c);
    EXPECT(rc == BASIN_OK, "the version-2 file without state does not read (%d)", rc);
    if (rc == BASIN_OK) {
        EXPECT(state_equal(&t.st, &c.st), "version-2 round trip without state changed something");
        checkpoint_free(&c);
    }
    /* Only versions this build knows are written. */
    capture_begin(&cap, dir);
    rc = ckpt_write_version(dir, &t.st, CHECKPOINT_FORMAT_VERSION + 1, 0, NULL, 0);
    capture_end(&cap);
    EXPECT(rc == BASIN_ERR_USAGE, "a future version was written (%d)", rc);
    t.st.n_state = 10, t.st.state = NULL;
    capture_begin(&cap, dir);
    rc = checkpoint_write(dir, &t.st, 0, NULL, 0);
    capture_end(&cap);
    EXPECT(rc == BASIN_ERR_USAGE, "n_state without a state buffer accepted (%d)", rc);
    test_state_free(&t);
    remove_tree(dir);
}

static void test_rotation(void)
{
    char dir[PATH_MAX], path[PATH_MAX + 32];
    make_scratch(dir, sizeof dir, "ckpt-rot");
    TestState t;
    test_state_init(&t, 100, 0, 1);
    for (uint64_t s = 1; s <= 5; s++) {
        t.st.next_step = s * 100;
        EXPECT(checkpoint_write(dir, &t.st, 2, NULL, 0) == BASIN_OK, "write of step %llu failed",
               (unsigned long long)s * 100);
    }
    EXPECT(count_prefixed(dir, "ckpt-") == 2, "keep=2 left %d checkpoints", count_prefixed(dir, "ckpt-"));
    for (uint64_t s = 1; s <= 5; s++) {
        snprintf(path, sizeof path, "%s/ckpt-%010llu.h5", dir, (unsigned long long)s * 100);
        int want = s >= 4;
        EXPECT((access(path, F_OK) == 0) == want, "%s should %s", path, want ? "exist" : "be deleted");
    }
    /* Files that are not checkpoints are left alone; keep=0 deletes nothing. */
    snprintf(path, sizeof path, "%s/notes.txt", dir);
    FILE *f = fopen(path, "w");
    if (f) fclose(f);
    for (uint64_t s = 6; s <= 8; s++) {
        t.st.next_step = s * 100;
        EXPECT(checkpoint_write(dir, &t.st, 0, NULL, 0) == BASIN_OK, "write failed");
    }
    EXPECT(count_prefixed(dir, "ckpt-") == 5, "keep=0 left %d checkpoints, want 5", count_prefixed(dir, "ckpt-"));
    t.st.next_step = 900;
    EXPECT(checkpoint_write(dir, &t.st, 1, NULL, 0) == BASIN_OK, "write failed");
    EXPECT(count_prefixed(dir, "ckpt-") == 1, "keep=1 left %d", count_prefixed(dir, "ckpt-"));
    EXPECT(access(path, F_OK) == 0, "notes.txt was deleted");
    EXPECT(count_prefixed(dir, ".ckpt-") == 0, "a temporary file is left");
    test_state_free(&t);
    remove_tree(dir);
}

/* checkpoint_write in a child under a file-size limit of limit_bytes (SIGXFSZ
 * ignored, so write() fails with EFBIG as it would with ENOSPC). Returns the
 * child's exit code, or -1 if it died of a signal. */
static int write_limited(const char *dir, const CheckpointState *st, rlim_t limit_bytes, char *err, size_t err_len)
{
    /* A pipe, not a file, for the child's stderr: the limit applies to files. */
    int fds[2];
    if (pipe(fds) != 0) return -2;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return -2;
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        close(fds[1]);
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl;
        getrlimit(RLIMIT_FSIZE, &rl);
        rl.rlim_cur = limit_bytes;
        setrlimit(RLIMIT_FSIZE, &rl);
        int rc = checkpoint_write(dir, st, 2, NULL, 0);
        exit(rc); /* through exit(): HDF5's own cleanup at exit must survive too */
    }
    close(fds[1]);
    size_t got = 0;
    ssize_t r;
    while (got < err_len - 1 && (r = read(fds[0], err + got, err_len - 1 - got)) > 0) got += (size_t)r;
    err[got] = '\0';
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    fputs(err, stderr);
    if (WIFSIGNALED(status)) fprintf(stderr, "child died of signal %d\n", WTERMSIG(status));
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_disk_full_keeps_previous(void)
{
    char dir[PATH_MAX], path[PATH_MAX], err[4096];
    make_scratch(dir, sizeof dir, "ckpt-full");
    TestState old, neu;
    test_state_init(&old, 250000, 500, 11); /* 2 MB of buffers */
    test_state_init(&neu, 250000, 500, 12);
    EXPECT(checkpoint_write(dir, &old.st, 2, path, sizeof path) == BASIN_OK, "first write failed");
    unsigned char *before = NULL, *after = NULL;
    size_t nb = 0, na = 0;
    EXPECT(read_whole(path, &before, &nb) == 0, "cannot read %s", path);

    /* Limits that cut the write at its first bytes, inside the first buffer,
     * inside the second buffer. The new
     * checkpoint has the old one's name, so a non-atomic write would damage
     * it. */
    const rlim_t limits[] = {100, 600000, 1500000};
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
        int code = write_limited(dir, &neu.st, limits[i], err, sizeof err);
        EXPECT(code == BASIN_ERR_RUNTIME, "limit %llu: child exited with %d, want %d", (unsigned long long)limits[i],
               code, BASIN_ERR_RUNTIME);
        EXPECT(strstr(err, "File too large") && strstr(err, "checkpoint not written"),
               "limit %llu: unclear error: %s", (unsigned long long)limits[i], err);
        EXPECT(read_whole(path, &after, &na) == 0 && na == nb && memcmp(before, after, nb) == 0,
               "limit %llu: the previous checkpoint changed", (unsigned long long)limits[i]);
        free(after);
        after = NULL;
        EXPECT(count_prefixed(dir, ".ckpt-") == 0, "limit %llu: a temporary file is left",
               (unsigned long long)limits[i]);
        EXPECT(count_prefixed(dir, "ckpt-") == 1, "limit %llu: %d checkpoints, want 1",
               (unsigned long long)limits[i], count_prefixed(dir, "ckpt-"));
    }
    /* A new step under the limit: no file appears, and with keep=2 the old
     * one must not be rotated away by the failed attempt. */
    neu.st.next_step = 600;
    int code = write_limited(dir, &neu.st, 300000, err, sizeof err);
    EXPECT(code == BASIN_ERR_RUNTIME, "new step: child exited with %d", code);
    EXPECT(count_prefixed(dir, "ckpt-") == 1 && count_prefixed(dir, ".ckpt-") == 0,
           "new step: files changed after a failed write");
    Checkpoint c;
    EXPECT(checkpoint_read(path, &c) == BASIN_OK, "previous checkpoint no longer reads");
    if (c.params) {
        EXPECT(state_equal(&old.st, &c.st), "previous checkpoint's contents changed");
        checkpoint_free(&c);
    }
    /* Without a limit the same write succeeds (the failures were the limit). */
    code = write_limited(dir, &neu.st, RLIM_INFINITY, err, sizeof err);
    EXPECT(code == 0, "unlimited: child exited with %d", code);
    EXPECT(count_prefixed(dir, "ckpt-") == 2, "unlimited: %d checkpoints, want 2", count_prefixed(dir, "ckpt-"));
    free(before);
    test_state_free(&old);
    test_state_free(&neu);
    remove_tree(dir);
}

static void test_latest(void)
{
    char dir[PATH_MAX], p10[PATH_MAX], p20[PATH_MAX], p30[PATH_MAX];
    make_scratch(dir, sizeof dir, "ckpt-latest");
    Checkpoint c;
    int found = -1;

    char missing[PATH_MAX + 16];
    snprintf(missing, sizeof missing, "%s/none", dir);
    EXPECT(checkpoint_latest(missing, &c, &found) == BASIN_OK && found == 0, "missing dir: found=%d", found);
    found = -1;
    EXPECT(checkpoint_latest(dir, &c, &found) == BASIN_OK && found == 0, "empty dir: found=%d", found);

    TestState t;
    test_state_init(&t, 5000, 10, 21);
    EXPECT(checkpoint_write(dir, &t.st, 0, p10, sizeof p10) == BASIN_OK, "write 10 failed");
    t.st.next_step = 20, t.params[5] = 2.0f;
    EXPECT(checkpoint_write(dir, &t.st, 0, p20, sizeof p20) == BASIN_OK, "write 20 failed");
    t.st.next_step = 30, t.params[5] = 3.0f;
    EXPECT(checkpoint_write(dir, &t.st, 0, p30, sizeof p30) == BASIN_OK, "write 30 failed");

    found = 0;
    EXPECT(checkpoint_latest(dir, &c, &found) == BASIN_OK && found == 1, "all good: found=%d", found);
    if (found) {
        EXPECT(c.st.next_step == 30 && c.params[5] == 3.0f, "all good: got step %llu",
               (unsigned long long)c.st.next_step);
        checkpoint_free(&c);
    }

    /* Newest corrupt: reported, and the one before it is taken. */
    uint64_t off = data_offset(p30, "params");
    EXPECT(off != UINT64_MAX && flip_byte(p30, off + 4 * 100 + 2) == 0, "cannot corrupt %s", p30);
    Capture cap;
    capture_begin(&cap, dir);
    int rc = checkpoint_latest(dir, &c, &found);
    const char *msg = capture_end(&cap);
    EXPECT(rc == BASIN_OK && found == 1, "corrupt newest: rc=%d found=%d", rc, found);
    if (found) {
        EXPECT(c.st.next_step == 20 && c.params[5] == 2.0f, "corrupt newest: got step %llu",
               (unsigned long long)c.st.next_step);
        EXPECT(strcmp(c.path, p20) == 0, "corrupt newest: path %s", c.path);
        checkpoint_free(&c);
    }
    EXPECT(strstr(msg, "ckpt-0000000030.h5") && strstr(msg, "checksum"), "corrupt newest not reported: %s", msg);

    /* The next one truncated as well: both reported, the oldest taken. */
    EXPECT(truncate(p20, 3000) == 0, "cannot truncate %s", p20);
    capture_begin(&cap, dir);
    rc = checkpoint_latest(dir, &c, &found);
    msg = capture_end(&cap);
    EXPECT(rc == BASIN_OK && found == 1, "two bad: rc=%d found=%d", rc, found);
    if (found) {
        EXPECT(c.st.next_step == 10, "two bad: got step %llu", (unsigned long long)c.st.next_step);
        checkpoint_free(&c);
    }
    EXPECT(strstr(msg, "ckpt-0000000030.h5") && strstr(msg, "ckpt-0000000020.h5") && strstr(msg, "truncated"),
           "two bad not both reported: %s", msg);

    /* None good: an error, not a silent start from scratch. */
    EXPECT(truncate(p10, 0) == 0, "cannot truncate %s", p10);
    capture_begin(&cap, dir);
    rc = checkpoint_latest(dir, &c, &found);
    msg = capture_end(&cap);
    EXPECT(rc == BASIN_ERR_USAGE && found == 0, "none good: rc=%d found=%d", rc, found);
    EXPECT(strstr(msg, "none of its 3 checkpoints"), "none good: unclear message: %s", msg);

    test_state_free(&t);
    remove_tree(dir);
}

int main(void)
{
    test_xxh64_vectors();
    test_round_trip();
    test_versions();
    test_rotation();
    test_disk_full_keeps_previous();
    test_latest();
    return test_finish("test_checkpoint");
}
