/* Checkpoints on which libhdf5 1.10.8 itself crashes (tests/fuzz/hdf5-known,
 * given as argv[1]) are refused like any damaged checkpoint: checkpoint_read
 * answers BASIN_ERR_USAGE with one line naming the file, and
 * checkpoint_latest skips such a file when it is the newest (one line) and
 * resumes from the good one before it. Without the guard (reader/h5guard.h)
 * this test dies inside libhdf5. */
#include "ckpt_util.h"

#include "core/error.h"

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

/* One file: 0 when both checks hold. */
static int check_file(const char *known, const char *name)
{
    char path[PATH_MAX], dir[1024], newest[1100];
    snprintf(path, sizeof path, "%s/%s", known, name);
    make_scratch(dir, sizeof dir, "ckpt-hostile");
    int fails = 0;

    Capture cap;
    Checkpoint c;
    capture_begin(&cap, dir);
    int rc = checkpoint_read(path, &c);
    const char *text = capture_end(&cap);
    if (rc != BASIN_ERR_USAGE || count_lines(text) != 1 || !strstr(text, path)) {
        fprintf(stderr, "FAIL: checkpoint_read(%s): rc %d (expected %d), %d line(s) (expected 1 naming it)\n", name,
                rc, BASIN_ERR_USAGE, count_lines(text));
        fails++;
    }
    if (rc == BASIN_OK) checkpoint_free(&c);

    TestState t;
    test_state_init(&t, 1000, 40, 3);
    if (checkpoint_write(dir, &t.st, 0, NULL, 0) != BASIN_OK) {
        fprintf(stderr, "FAIL: could not write a good checkpoint into %s\n", dir);
        fails++;
        goto done;
    }
    snprintf(newest, sizeof newest, "%s/ckpt-%010llu.h5", dir, 41ull);
    if (copy_file(path, newest) != 0) {
        fprintf(stderr, "FAIL: could not copy %s to %s\n", path, newest);
        fails++;
        goto done;
    }
    int found = 0;
    capture_begin(&cap, dir);
    rc = checkpoint_latest(dir, &c, &found);
    text = capture_end(&cap);
    if (rc != BASIN_OK || !found || c.st.next_step != 40 || count_lines(text) != 1 || !strstr(text, newest)) {
        fprintf(stderr, "FAIL: checkpoint_latest with %s as the newest: rc %d, found %d, step %llu (expected the "
                "good step 40), %d line(s) (expected 1 naming it)\n", name, rc, found,
                (unsigned long long)(found ? c.st.next_step : 0), count_lines(text));
        fails++;
    }
    if (rc == BASIN_OK && found) checkpoint_free(&c);

done:
    test_state_free(&t);
    remove_tree(dir);
    return fails;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test_checkpoint_hostile KNOWN_DIR\n");
        return 1;
    }
    DIR *d = opendir(argv[1]);
    if (!d) {
        fprintf(stderr, "FAIL: cannot open %s\n", argv[1]);
        return 1;
    }
    int fails = 0, files = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "checkpoint-", 11) != 0) continue;
        files++;
        fails += check_file(argv[1], e->d_name) != 0;
    }
    closedir(d);
    if (files == 0) {
        fprintf(stderr, "FAIL: no checkpoint-* files in %s\n", argv[1]);
        return 1;
    }
    printf("test_checkpoint_hostile: %d of %d files handled wrongly\n", fails, files);
    return fails ? 1 : 0;
}
