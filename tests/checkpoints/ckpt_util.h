/* Shared helpers of the checkpoint tests: scratch folders, a state with
 * awkward float bits, stderr capture, byte-level file surgery. */
#ifndef BASIN_TEST_CKPT_UTIL_H
#define BASIN_TEST_CKPT_UTIL_H

#include "checkpoints/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <hdf5.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A fresh folder under $TMPDIR (or /tmp). */
static inline void make_scratch(char *dir, size_t len, const char *tag)
{
    const char *base = getenv("TMPDIR");
    snprintf(dir, len, "%s/basin-%s-XXXXXX", base && *base ? base : "/tmp", tag);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
}

static inline void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    char path[PATH_MAX + 256];
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

/* Buffers whose bits a careless round trip would change: NaN payloads,
 * negative zero, denormals, infinities. */
typedef struct {
    CheckpointState st;
    float *params, *momentum, *state;
} TestState;

/* A layer table as the checkpoint module sees it: text it stores and
 * checksums, whatever it says. */
#define TEST_LAYER_TABLE "{\"table_version\": 1, \"layers\": [{\"index\": 0, \"kind\": \"fc\", \"marker\": \"layer-table-bytes\"}]}"

static inline float bits_to_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline void test_state_init(TestState *t, size_t n, uint64_t step, uint32_t salt)
{
    size_t n_state = n / 10; /* none for small n: the state is optional */
    t->params = malloc(n * sizeof(float));
    t->momentum = malloc(n * sizeof(float));
    t->state = malloc((n_state ? n_state : 1) * sizeof(float));
    if (!t->params || !t->momentum || !t->state) exit(1);
    uint32_t x = 0x9E3779B9u ^ salt;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        t->params[i] = bits_to_float(x);
        t->momentum[i] = bits_to_float(x * 2654435761u + (uint32_t)i);
    }
    const uint32_t special[] = {0x7FC00001u, 0xFFFFFFFFu, 0x80000000u, 0x00000001u, 0x7F800000u, 0xFF800000u};
    for (size_t i = 0; i < sizeof special / sizeof special[0] && i < n; i++) t->params[i] = bits_to_float(special[i]);
    for (size_t i = 0; i < n_state; i++) t->state[i] = bits_to_float(special[i % 6] ^ (uint32_t)i);
    memset(&t->st, 0, sizeof t->st);
    t->st.model_spec = "conv(32,3)-relu-pool(2)-conv(64,3)-relu-pool(2)-fc(128)-relu-fc(10)";
    t->st.config_text = "model=cnn lr=0.05 momentum=0.9 batch=256 seed=7 epochs=3";
    t->st.config_hash = 0xDEADBEEFCAFEF00Dull ^ salt;
    t->st.seed = 7;
    t->st.global_batch = 256;
    t->st.world_size = 4;
    t->st.train_samples = 60000;
    t->st.in_c = 1, t->st.in_h = 28, t->st.in_w = 28, t->st.classes = 10;
    t->st.next_step = step;
    t->st.epoch = step / 234;
    t->st.step_in_epoch = step % 234;
    t->st.samples_seen = step * 256;
    t->st.elapsed_s = 12.5 + (double)step * 0.125;
    t->st.n_params = n;
    t->st.params = t->params;
    t->st.momentum = t->momentum;
    t->st.n_state = n_state;
    t->st.state = n_state ? t->state : NULL;
    t->st.layer_table = TEST_LAYER_TABLE;
}

static inline void test_state_free(TestState *t)
{
    free(t->params);
    free(t->momentum);
    free(t->state);
}

/* Everything written to stderr between the two calls, echoed and kept. */
typedef struct {
    int saved;
    char path[PATH_MAX];
    char text[8192];
} Capture;

static inline void capture_begin(Capture *c, const char *dir)
{
    fflush(stderr);
    snprintf(c->path, sizeof c->path, "%s.stderr", dir);
    int fd = open(c->path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    c->saved = dup(2);
    if (fd < 0 || c->saved < 0) exit(1);
    dup2(fd, 2);
    close(fd);
}

static inline const char *capture_end(Capture *c)
{
    fflush(stderr);
    dup2(c->saved, 2);
    close(c->saved);
    c->text[0] = '\0';
    FILE *f = fopen(c->path, "r");
    if (f) {
        size_t got = fread(c->text, 1, sizeof c->text - 1, f);
        c->text[got] = '\0';
        fclose(f);
    }
    unlink(c->path);
    fputs(c->text, stderr);
    return c->text;
}

static inline int read_whole(const char *path, unsigned char **buf, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *buf = malloc(n > 0 ? (size_t)n : 1);
    *len = *buf ? fread(*buf, 1, (size_t)n, f) : 0;
    fclose(f);
    return *buf && *len == (size_t)n ? 0 : -1;
}

static inline int flip_byte(const char *path, uint64_t offset)
{
    int fd = open(path, O_RDWR);
    if (fd < 0) return -1;
    unsigned char b;
    int ok = pread(fd, &b, 1, (off_t)offset) == 1;
    b ^= 0x10;
    ok = ok && pwrite(fd, &b, 1, (off_t)offset) == 1;
    close(fd);
    return ok ? 0 : -1;
}

/* Byte offset of dataset name's data in the file (H5Dget_offset). */
static inline uint64_t data_offset(const char *path, const char *name)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = f >= 0 ? H5Dopen2(f, name, H5P_DEFAULT) : -1;
    haddr_t off = d >= 0 ? H5Dget_offset(d) : HADDR_UNDEF;
    if (d >= 0) H5Dclose(d);
    if (f >= 0) H5Fclose(f);
    return off == HADDR_UNDEF ? UINT64_MAX : (uint64_t)off;
}

static inline int copy_file(const char *from, const char *to)
{
    unsigned char *buf;
    size_t len;
    if (read_whole(from, &buf, &len) != 0) return -1;
    FILE *f = fopen(to, "wb");
    int ok = f && fwrite(buf, 1, len, f) == len;
    if (f) fclose(f);
    free(buf);
    return ok ? 0 : -1;
}

/* Names in dir that start with prefix. */
static inline int count_prefixed(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (!strncmp(de->d_name, prefix, strlen(prefix))) n++;
    closedir(d);
    return n;
}

#endif
