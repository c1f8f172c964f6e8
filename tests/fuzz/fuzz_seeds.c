/* fuzz_seeds DIR: the seed corpora of the fuzz targets, in DIR/dataset and
 * DIR/checkpoint.
 *   dataset:    a small real data file (the first samples of Fashion-MNIST,
 *               when Debian's dataset-fashion-mnist is installed, else
 *               synthetic pixels) written by basin's importer, and every
 *               malformed file of tests/reader/faults.h;
 *   checkpoint: checkpoints written by checkpoint_write (two sizes), and
 *               damaged copies (truncated, a flipped data byte, a flipped
 *               header byte).
 * The regression inputs in tests/fuzz/regress are a third corpus the runs
 * read as they are. */
#include "checkpoints/checkpoint.h"
#include "core/error.h"
#include "reader/faults.h"
#include "reader/reader.h"

#define REAL_SRC "/usr/share/datasets/fashion-mnist"
#define N_TRAIN 24
#define N_TEST 8

/* The first n samples of one IDX file pair, real when readable. */
static void small_idx(const char *src, const char *stem, const char *out_dir, uint32_t n)
{
    char ipath[4200], lpath[4200];
    uint8_t *img = malloc((size_t)n * 784), *lab = malloc(n);
    snprintf(ipath, sizeof ipath, "%s/%s-images-idx3-ubyte.gz", src, stem);
    snprintf(lpath, sizeof lpath, "%s/%s-labels-idx1-ubyte.gz", src, stem);
    gzFile gi = gzopen(ipath, "rb"), gl = gzopen(lpath, "rb");
    uint8_t head[16];
    int real = gi && gl && gzread(gi, head, 16) == 16 && gzread(gi, img, n * 784) == (int)(n * 784) &&
               gzread(gl, head, 8) == 8 && gzread(gl, lab, n) == (int)n;
    if (gi) gzclose(gi);
    if (gl) gzclose(gl);
    for (uint32_t i = 0; !real && i < n; i++) {
        for (size_t j = 0; j < 784; j++) img[i * 784 + j] = fx_pixel(i, j);
        lab[i] = fx_label(i, 10);
    }
    uint32_t idims[3] = {n, 28, 28}, ldims[1] = {n};
    snprintf(ipath, sizeof ipath, "%s/%s-images-idx3-ubyte.gz", out_dir, stem);
    snprintf(lpath, sizeof lpath, "%s/%s-labels-idx1-ubyte.gz", out_dir, stem);
    fx_write_idx_gz(ipath, 0x803, 3, idims, img, (size_t)n * 784);
    fx_write_idx_gz(lpath, 0x801, 1, ldims, lab, n);
    free(img);
    free(lab);
}

static void checkpoint_seeds(const char *dir)
{
    char ck_dir[4200], path[4200];
    snprintf(ck_dir, sizeof ck_dir, "%s/checkpoint", dir);
    static const size_t sizes[] = {16, 300};
    for (size_t k = 0; k < 2; k++) {
        size_t n = sizes[k];
        float *p = malloc(n * sizeof *p), *m = malloc(n * sizeof *m);
        for (size_t i = 0; i < n; i++) p[i] = 0.01f * (float)i, m[i] = -0.5f * (float)i;
        CheckpointState st = {.model_spec = "flatten,fc:10", .config_text = "model=mlp batch=8 seed=1",
                              .config_hash = 0x1234 + k, .seed = 1, .global_batch = 8, .world_size = 1,
                              .train_samples = N_TRAIN, .in_c = 1, .in_h = 28, .in_w = 28, .classes = 10,
                              .next_step = 3 + k, .epoch = 1, .step_in_epoch = k, .samples_seen = 24,
                              .elapsed_s = 1.5, .n_params = n, .params = p, .momentum = m};
        if (checkpoint_write(ck_dir, &st, 0, path, sizeof path) != BASIN_OK) exit(1);
        free(p);
        free(m);
        size_t bytes = 0;
        uint8_t *buf = fx_slurp(path, &bytes);
        if (!buf) exit(1);
        char out[4300];
        snprintf(out, sizeof out, "%s-truncated.h5", path);
        fx_write_bytes(out, buf, bytes * 2 / 3);
        buf[bytes - 3] ^= 0x40; /* in /momentum, the last dataset */
        snprintf(out, sizeof out, "%s-flipped-data.h5", path);
        fx_write_bytes(out, buf, bytes);
        buf[bytes - 3] ^= 0x40;
        buf[200] ^= 0x01;
        snprintf(out, sizeof out, "%s-flipped-header.h5", path);
        fx_write_bytes(out, buf, bytes);
        free(buf);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_seeds DIR\n");
        return 2;
    }
    char sub[4200], idx[4200], path[4300];
    snprintf(sub, sizeof sub, "%s/dataset", argv[1]);
    snprintf(idx, sizeof idx, "%s/idx", argv[1]);
    mkdir(argv[1], 0700);
    mkdir(sub, 0700);
    mkdir(idx, 0700);
    small_idx(REAL_SRC, "train", idx, N_TRAIN);
    small_idx(REAL_SRC, "t10k", idx, N_TEST);
    snprintf(path, sizeof path, "%s/real-small.h5", sub);
    if (import_fashion_mnist(idx, path) != BASIN_OK) return 1;
    fx_remove_tree(idx);
    for (size_t i = 0; i < N_FAULTS; i++) {
        snprintf(path, sizeof path, "%s/%s.h5", sub, FAULTS[i].name);
        FAULTS[i].make(path);
    }
    checkpoint_seeds(argv[1]);
    return 0;
}
