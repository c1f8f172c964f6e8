/* basin-eval: the loss, accuracy, per-class accuracy and confusion matrix of
 * a checkpoint on a split of a data set. Runs under mpirun on any number of
 * ranks: each evaluates a contiguous slice of the split, rank 0 prints the
 * sums. The network is rebuilt from the checkpoint's model spec by the
 * trainer's own code (models.h, net.h), so the numbers are the trainer's;
 * batch norm normalises with the running statistics the checkpoint holds
 * (its state buffer). Classes are named when the data file has a
 * class_names attribute. */
#include <getopt.h>
#include <hdf5.h>
#include <limits.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoints/checkpoint.h"
#include "core/config.h"
#include "core/device.h"
#include "core/error.h"
#include "core/mpi_check.h"
#include "core/net.h"
#include "eval_png.h"
#include "models/models.h"
#include "reader/h5attr.h"
#include "reader/h5guard.h"
#include "reader/reader.h"

#define EVAL_MAX_BATCH 65536
#define EVAL_MAX_CLASSES 4096 /* a confusion matrix of 16.7 M cells; MPI counts stay ints */
#define EVAL_NAME_MAX 40      /* bytes of a class name shown (longer ones are cut) */

typedef struct {
    const char *checkpoint, *data, *split, *device, *plot;
    size_t batch, limit;
    int json, help;
} EvalOptions;

typedef struct {
    EvalOptions opt;
    int rank, world;
    Checkpoint ckpt;
    int have_ckpt;
    char data[4096];
    Dataset *ds;
    const Device *dev;
    const Ops *ops;
    int on_gpu;
    Net *net;
    int classes;
    size_t samples, first, count; /* the split; this rank's slice [first, first + count) */
    float *images;                /* (batch, c, h, w) host */
    int32_t *labels;              /* (batch) host */
    uint64_t *idx;                /* (batch) */
    float *logits;                /* (batch, classes) host copy, GPU only */
    float *d_images;              /* (batch, c, h, w) device, GPU only */
    int32_t *d_labels;            /* (batch) device, GPU only */
    double loss_sum;
    uint64_t correct;
    uint64_t *confusion;          /* (classes, classes): [true][predicted] */
    char *names;                  /* rank 0: (classes, EVAL_NAME_MAX + 1) class names, or NULL */
} Eval;

static void eval_usage(void)
{
    printf("usage: basin-eval CHECKPOINT [options]\n"
           "Evaluate a checkpoint of basin-train on one split of a data set: loss (mean\n"
           "cross-entropy), accuracy, per-class accuracy and the confusion matrix (rows:\n"
           "true class, columns: predicted). Runs alone or under mpirun on any number of\n"
           "ranks, with the same result.\n"
           "  --data PATH      data set file (default: the data of the checkpoint's run,\n"
           "                   else data/fashion-mnist.h5)\n"
           "  --split NAME     test or train (default test)\n"
           "  --batch N        samples per forward pass on each rank, 1 to %d (default 256)\n"
           "  --limit N        evaluate only the first N samples of the split (default: all)\n"
           "  --device NAME    cpu or cuda (default cpu)\n"
           "  --json           print one JSON object instead of the tables\n"
           "  --plot FILE.png  also write the confusion matrix as a PNG heat map\n"
           "  --help           this text\n"
           "Exit status: 0 done; 1 failed (I/O, MPI); 2 bad option, checkpoint or data set\n"
           "(one line on stderr, nothing written).\n",
           EVAL_MAX_BATCH);
}

static int parse_count(const char *opt, const char *s, size_t lo, size_t hi, size_t *out)
{
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *s == '-' || *s == '+' || *end || v < lo || v > hi) {
        if (hi == SIZE_MAX) return basin_error(BASIN_ERR_USAGE, "%s '%s': expected a positive integer", opt, s);
        return basin_error(BASIN_ERR_USAGE, "%s '%s': expected an integer from %zu to %zu", opt, s, lo, hi);
    }
    *out = (size_t)v;
    return BASIN_OK;
}

static int eval_parse(EvalOptions *o, int argc, char **argv)
{
    static const struct option longs[] = {
        {"data", required_argument, NULL, 'd'},   {"split", required_argument, NULL, 's'},
        {"batch", required_argument, NULL, 'b'},  {"limit", required_argument, NULL, 'l'},
        {"device", required_argument, NULL, 'D'}, {"json", no_argument, NULL, 'j'},
        {"plot", required_argument, NULL, 'p'},   {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (EvalOptions){.split = "test", .device = "cpu", .batch = 256};
    opterr = 0;
    int c, idx;
    while ((c = getopt_long(argc, argv, ":", longs, &idx)) != -1) {
        switch (c) {
        case 'd': o->data = optarg; break;
        case 's': o->split = optarg; break;
        case 'b': TRY(parse_count("--batch", optarg, 1, EVAL_MAX_BATCH, &o->batch)); break;
        case 'l': TRY(parse_count("--limit", optarg, 1, SIZE_MAX, &o->limit)); break;
        case 'D': o->device = optarg; break;
        case 'j': o->json = 1; break;
        case 'p': o->plot = optarg; break;
        case 'h': o->help = 1; return BASIN_OK;
        case ':': return basin_error(BASIN_ERR_USAGE, "option %s needs a value (see --help)", argv[optind - 1]);
        default: return basin_error(BASIN_ERR_USAGE, "unknown option '%s' (see --help)", argv[optind - 1]);
        }
    }
    if (optind >= argc) return basin_error(BASIN_ERR_USAGE, "no checkpoint given: basin-eval CHECKPOINT [options]");
    if (optind + 1 < argc)
        return basin_error(BASIN_ERR_USAGE, "unexpected argument '%s' (one checkpoint; options start with --)",
                           argv[optind + 1]);
    o->checkpoint = argv[optind];
    if (strcmp(o->split, "test") && strcmp(o->split, "train"))
        return basin_error(BASIN_ERR_USAGE, "--split '%s': expected test or train", o->split);
    if (strcmp(o->device, "cpu") && strcmp(o->device, "cuda"))
        return basin_error(BASIN_ERR_USAGE, "--device '%s': expected cpu or cuda", o->device);
    if (o->plot && !*o->plot) return basin_error(BASIN_ERR_USAGE, "--plot needs a file name");
    return BASIN_OK;
}

/* The backend, and on the GPU the device of this rank's index on its host
 * (as the trainer picks it). */
static int eval_select_device(Eval *e)
{
    const Device *dev = device_find(e->opt.device);
    if (!dev)
        return basin_error(BASIN_ERR_USAGE, "--device %s: this build has no CUDA backend (nvcc, cuBLAS or NCCL "
                                            "were not found when it was configured)", e->opt.device);
    if (!dev->ops->host_memory) {
        MPI_Comm host;
        int local = 0;
        BASIN_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, e->rank, MPI_INFO_NULL, &host));
        int mrc = MPI_Comm_rank(host, &local);
        MPI_Comm_free(&host);
        BASIN_MPI(mrc);
        TRY(dev->select(local));
        e->on_gpu = 1;
    }
    e->dev = dev;
    e->ops = dev->ops;
    return BASIN_OK;
}

/* ---- class names: the data file's optional class_names attribute --------- */

typedef struct {
    const char *path;
    int classes;
    char *names; /* (classes, EVAL_NAME_MAX + 1), or NULL in the guard's child */
    int found;   /* 1: names read; 0: the file has none usable */
    char why[512];
} NamesJob;

/* One name, cut to EVAL_NAME_MAX bytes (at a UTF-8 character boundary) and
 * with control characters shown as '?'. */
static void keep_name(char *dst, const char *src, size_t len)
{
    if (len > EVAL_NAME_MAX) {
        len = EVAL_NAME_MAX;
        while (len > 0 && ((unsigned char)src[len] & 0xC0) == 0x80) len--;
    }
    size_t i = 0;
    for (; i < len && src[i]; i++) dst[i] = (unsigned char)src[i] < 0x20 || src[i] == 0x7F ? '?' : src[i];
    dst[i] = '\0';
}

/* Read class_names of job->path: a 1-D array of `classes` strings, fixed or
 * variable length. No attribute, or one of another shape or type: found = 0
 * (why says which, for a warning). A file HDF5 cannot read: BASIN_ERR_USAGE. */
static int names_read(void *arg)
{
    NamesJob *job = arg;
    char h5[256];
    job->found = 0;
    job->why[0] = '\0';
    int rc = BASIN_OK;
    hid_t file = H5Fopen(job->path, H5F_ACC_RDONLY, H5P_DEFAULT), mem = H5I_INVALID_HID;
    H5Attr a = {H5I_INVALID_HID, H5I_INVALID_HID, H5I_INVALID_HID};
    void *buf = NULL;
    if (file < 0) {
        snprintf(job->why, sizeof job->why, "cannot open it (%s)", h5check_reason(h5));
        return BASIN_ERR_USAGE;
    }
    int st = h5attr_open(file, "class_names", &a, job->why, sizeof job->why);
    if (st != 0) {
        rc = st < 0 ? BASIN_ERR_USAGE : BASIN_OK;
        goto done;
    }
    hsize_t dims[1] = {0};
    int var = H5Tis_variable_str(a.type);
    size_t size = H5Tget_size(a.type);
    if (H5Tget_class(a.type) != H5T_STRING || var < 0 || size == 0 || H5Sget_simple_extent_ndims(a.space) != 1 ||
        H5Sget_simple_extent_dims(a.space, dims, NULL) != 1 || dims[0] != (hsize_t)job->classes) {
        snprintf(job->why, sizeof job->why, "its class_names attribute is not a list of %d strings", job->classes);
        goto done;
    }
    /* The file's character set and padding: HDF5 converts neither. */
    H5T_cset_t cset = H5Tget_cset(a.type);
    H5T_str_t pad = H5Tget_strpad(a.type);
    mem = H5Tcopy(H5T_C_S1);
    if (cset < 0 || pad < 0 || mem < 0 || H5Tset_size(mem, var ? H5T_VARIABLE : size) < 0 ||
        H5Tset_cset(mem, cset) < 0 || H5Tset_strpad(mem, pad) < 0) {
        snprintf(job->why, sizeof job->why, "H5Tcopy/H5Tset_size failed (%s)", h5check_reason(h5));
        rc = BASIN_ERR_USAGE;
        goto done;
    }
    size_t each = var ? sizeof(char *) : size;
    buf = calloc((size_t)job->classes, each);
    if (!buf) {
        rc = BASIN_ERR_RUNTIME;
        goto done;
    }
    if (H5Aread(a.attr, mem, buf) < 0) {
        snprintf(job->why, sizeof job->why, "cannot read its class_names attribute (%s)", h5check_reason(h5));
        rc = BASIN_ERR_USAGE;
        goto done;
    }
    for (int c = 0; c < job->classes && job->names; c++) {
        char *dst = job->names + (size_t)c * (EVAL_NAME_MAX + 1);
        if (var) {
            const char *v = ((char **)buf)[c];
            keep_name(dst, v ? v : "", v ? strlen(v) : 0);
        } else {
            const char *f = (const char *)buf + (size_t)c * size;
            keep_name(dst, f, strnlen(f, size));
        }
    }
    job->found = 1;
    if (var && H5Dvlen_reclaim(mem, a.space, H5P_DEFAULT, buf) < 0) {
        snprintf(job->why, sizeof job->why, "H5Dvlen_reclaim(class_names) failed (%s)", h5check_reason(h5));
        rc = BASIN_ERR_USAGE;
    }

done:
    free(buf);
    if (mem >= 0) H5Tclose(mem);
    h5attr_close(&a);
    if (H5Fclose(file) < 0 && !rc) {
        snprintf(job->why, sizeof job->why, "H5Fclose failed (%s)", h5check_reason(h5));
        rc = BASIN_ERR_USAGE;
    }
    return rc;
}

/* The names in the guard's child: the same reads, nothing kept. */
static int names_check(void *arg)
{
    NamesJob job = *(NamesJob *)arg;
    job.names = NULL;
    return names_read(&job);
}

/* Rank 0: e->names from the data file, when it names its classes. The file
 * was validated by dataset_open; libhdf5 reads the attribute in a guarded
 * child first (reader/h5guard.h), as everywhere a file is untrusted. A data
 * set that is not a file (a synthetic spec) has no names. */
static int eval_class_names(Eval *e)
{
    struct stat sb;
    if (stat(e->data, &sb) != 0 || !S_ISREG(sb.st_mode)) return BASIN_OK;
    NamesJob job = {.path = e->data, .classes = e->classes};
    char why[512];
    int verdict = BASIN_OK;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    int rc = h5guard_run((uint64_t)sb.st_size, names_check, &job, &verdict, why, sizeof why);
    if (rc) return basin_error(rc, "%s: %s", e->data, why);
    e->names = basin_calloc((size_t)e->classes, EVAL_NAME_MAX + 1);
    if (!e->names) return BASIN_ERR_RUNTIME;
    job.names = e->names;
    rc = names_read(&job);
    if (rc == BASIN_ERR_USAGE) return basin_error(rc, "%s: %s", e->data, job.why);
    if (rc) return basin_error(rc, "%s: reading class_names failed", e->data);
    if (!job.found) {
        if (job.why[0]) basin_warn("%s: %s; classes are shown by number", e->data, job.why);
        free(e->names);
        e->names = NULL;
    }
    return BASIN_OK;
}

static const char *class_name(const Eval *e, int c)
{
    return e->names ? e->names + (size_t)c * (EVAL_NAME_MAX + 1) : NULL;
}

/* The checkpoint's state buffer (batch norm's running statistics) into the
 * network. A model with state needs it: a version-1 file has none. */
static int eval_load_state(Eval *e)
{
    const Checkpoint *ck = &e->ckpt;
    size_t want = e->net->n_state;
    if (want == 0 && ck->st.n_state == 0) return BASIN_OK;
    if (ck->st.n_state == 0)
        return basin_error(BASIN_ERR_USAGE, "%s: its model needs %zu values of batch-norm running statistics, but the "
                           "checkpoint (format version %u) holds none", e->opt.checkpoint, want, ck->format_version);
    if (ck->st.n_state != want)
        return basin_error(BASIN_ERR_USAGE, "%s: %zu state values, but its model spec needs %zu", e->opt.checkpoint,
                           ck->st.n_state, want);
    e->ops->to_device(e->net->state, ck->st.state, want * sizeof(float));
    return BASIN_OK;
}

/* Everything a user can get wrong, before any output. */
static int eval_setup(Eval *e)
{
    const EvalOptions *o = &e->opt;
    TRY(checkpoint_read(o->checkpoint, &e->ckpt));
    e->have_ckpt = 1;
    const CheckpointState *st = &e->ckpt.st;
    char recorded[4096];
    const char *data = o->data;
    if (!data && st->config_text) data = config_describe_value(st->config_text, "data", recorded, sizeof recorded);
    snprintf(e->data, sizeof e->data, "%s", data && *data ? data : "data/fashion-mnist.h5");

    LayerSpec specs[MODEL_MAX_LAYERS];
    int n_specs = 0;
    Shape in = {st->in_c, st->in_h, st->in_w};
    TRY(model_parse(st->model_spec, in, specs, MODEL_MAX_LAYERS, &n_specs));
    TRY(dataset_open(e->data, o->split, o->limit, &e->ds));
    const DatasetInfo *info = dataset_info(e->ds);
    if (info->c != st->in_c || info->h != st->in_h || info->w != st->in_w || info->classes != st->classes)
        return basin_error(BASIN_ERR_USAGE, "%s: samples of %dx%dx%d in %d classes, but %s was trained on %dx%dx%d "
                           "in %d classes", e->data, info->c, info->h, info->w, info->classes, o->checkpoint,
                           (int)st->in_c, (int)st->in_h, (int)st->in_w, (int)st->classes);
    if (info->count == 0) return basin_error(BASIN_ERR_USAGE, "%s: the %s split has no samples", e->data, o->split);
    if (st->classes > EVAL_MAX_CLASSES)
        return basin_error(BASIN_ERR_USAGE, "%s: %d classes; basin-eval shows at most %d", o->checkpoint,
                           (int)st->classes, EVAL_MAX_CLASSES);
    e->classes = st->classes;
    e->samples = info->count;
    order_rank_slice(e->samples, e->rank, e->world, &e->first, &e->count);

    TRY(eval_select_device(e));
    TRY(net_create(specs, n_specs, in, e->classes, e->ops, o->batch, &e->net));
    if (e->net->n_params != st->n_params)
        return basin_error(BASIN_ERR_USAGE, "%s: %zu parameters, but its model spec needs %zu", o->checkpoint,
                           st->n_params, e->net->n_params);
    e->ops->to_device(e->net->params, st->params, st->n_params * sizeof(float));
    TRY(eval_load_state(e));
    if (e->rank == 0) TRY(eval_class_names(e));

    size_t per = shape_size(in), b = o->batch, k = (size_t)e->classes;
    e->images = basin_malloc(b * per * sizeof(float));
    e->labels = basin_malloc(b * sizeof(int32_t));
    e->idx = basin_malloc(b * sizeof(uint64_t));
    e->confusion = basin_calloc(k * k, sizeof(uint64_t));
    if (!e->images || !e->labels || !e->idx || !e->confusion) return BASIN_ERR_RUNTIME;
    if (e->on_gpu) {
        e->logits = basin_malloc(b * k * sizeof(float));
        e->d_images = e->ops->alloc(b * per * sizeof(float));
        e->d_labels = e->ops->alloc(b * sizeof(int32_t));
        if (!e->logits || !e->d_images || !e->d_labels)
            return BASIN_FAIL(BASIN_ERR_RUNTIME, "cannot allocate the batch buffers of the device");
    }
    return BASIN_OK;
}

/* Forward over this rank's slice, in evaluation mode (no dropout). The
 * predicted class is the arg-max of the last layer's output (the logits;
 * ties pick the first), the rule by which net_forward counts correct ones. */
static int eval_run(Eval *e)
{
    ForwardCtx ctx = {.train = 0, .seed = e->ckpt.st.seed, .sample_offset = 0};
    size_t k = (size_t)e->classes;
    const float *out = e->net->act[e->net->n_layers - 1];
    for (size_t done = 0; done < e->count;) {
        size_t n = e->count - done < e->opt.batch ? e->count - done : e->opt.batch;
        for (size_t i = 0; i < n; i++) e->idx[i] = (uint64_t)(e->first + done + i);
        TRY(dataset_read(e->ds, e->idx, n, e->images, e->labels));
        const float *x = e->images;
        const int32_t *y = e->labels;
        if (e->on_gpu) {
            e->ops->to_device(e->d_images, e->images, n * shape_size(e->net->in) * sizeof(float));
            e->ops->to_device(e->d_labels, e->labels, n * sizeof(int32_t));
            x = e->d_images, y = e->d_labels;
        }
        size_t correct = 0;
        net_forward(e->net, x, y, n, &ctx, &e->loss_sum, &correct);
        e->correct += correct;
        const float *logits = out;
        if (e->on_gpu) {
            e->ops->to_host(e->logits, out, n * k * sizeof(float));
            logits = e->logits;
        }
        for (size_t i = 0; i < n; i++) {
            const float *row = logits + i * k;
            size_t best = 0;
            for (size_t j = 1; j < k; j++)
                if (row[j] > row[best]) best = j;
            e->confusion[(size_t)e->labels[i] * k + best]++;
        }
        done += n;
    }
    return BASIN_OK;
}

/* The sums of every rank, at rank 0. */
static int eval_reduce(Eval *e)
{
    int root = e->rank == 0;
    int cells = e->classes * e->classes; /* <= EVAL_MAX_CLASSES^2: fits an int */
    BASIN_MPI(MPI_Reduce(root ? MPI_IN_PLACE : &e->loss_sum, &e->loss_sum, 1, MPI_DOUBLE, MPI_SUM, 0,
                         MPI_COMM_WORLD));
    BASIN_MPI(MPI_Reduce(root ? MPI_IN_PLACE : &e->correct, &e->correct, 1, MPI_UINT64_T, MPI_SUM, 0,
                         MPI_COMM_WORLD));
    BASIN_MPI(MPI_Reduce(root ? MPI_IN_PLACE : e->confusion, e->confusion, cells, MPI_UINT64_T, MPI_SUM, 0,
                         MPI_COMM_WORLD));
    return BASIN_OK;
}

static void json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') printf("\\%c", ch);
        else if (ch < 0x20) printf("\\u%04x", ch);
        else putchar(ch);
    }
    putchar('"');
}

static void eval_print(const Eval *e)
{
    int k = e->classes;
    double n = (double)e->samples, loss = e->loss_sum / n, acc = (double)e->correct / n;
    uint64_t diag = 0;
    for (int c = 0; c < k; c++) diag += e->confusion[(size_t)c * k + c];
    if (diag != e->correct) /* both count arg-max == label: a difference is a bug here */
        basin_warn("the confusion matrix counts %llu correct, the forward pass %llu", (unsigned long long)diag,
                   (unsigned long long)e->correct);
    if (e->opt.json) {
        printf("{\"checkpoint\": ");
        json_string(e->opt.checkpoint);
        printf(", \"data\": ");
        json_string(e->data);
        printf(", \"split\": \"%s\", \"samples\": %zu, \"loss\": %.9g, \"accuracy\": %.9g, \"correct\": %llu, "
               "\"class_names\": ", e->opt.split, e->samples, loss, acc, (unsigned long long)e->correct);
        if (!e->names) printf("null");
        for (int t = 0; t < k && e->names; t++) {
            printf("%s", t ? ", " : "[");
            json_string(class_name(e, t));
        }
        printf("%s, \"per_class\": [", e->names ? "]" : "");
        for (int t = 0; t < k; t++) {
            uint64_t row = 0, hit = e->confusion[(size_t)t * k + t];
            for (int p = 0; p < k; p++) row += e->confusion[(size_t)t * k + p];
            printf("%s{\"class\": %d, ", t ? ", " : "", t);
            if (e->names) {
                printf("\"name\": ");
                json_string(class_name(e, t));
                printf(", ");
            }
            printf("\"samples\": %llu, \"correct\": %llu, \"accuracy\": ", (unsigned long long)row,
                   (unsigned long long)hit);
            if (row) printf("%.9g}", (double)hit / (double)row);
            else printf("null}");
        }
        printf("], \"confusion\": [");
        for (int t = 0; t < k; t++) {
            printf("%s[", t ? ", " : "");
            for (int p = 0; p < k; p++) printf("%s%llu", p ? ", " : "", (unsigned long long)e->confusion[(size_t)t * k + p]);
            printf("]");
        }
        printf("]}\n");
        return;
    }
    printf("checkpoint  %s\ndata        %s, split %s, %zu samples\n", e->opt.checkpoint, e->data, e->opt.split,
           e->samples);
    printf("loss        %.9g\naccuracy    %.9g  (%llu of %zu)\n\n", loss, acc, (unsigned long long)e->correct,
           e->samples);
    /* Names, when the data file has them, in a column padded to the
     * longest (in characters: UTF-8 continuation bytes take no column). */
    int nw = 0;
    for (int t = 0; t < k && e->names; t++) {
        int w = 0;
        for (const char *c = class_name(e, t); *c; c++) w += ((unsigned char)*c & 0xC0) != 0x80;
        if (w > nw) nw = w;
    }
    printf("class%s%*s  samples   correct  accuracy\n", nw ? "  name" : "", nw > 4 ? nw - 4 : 0, "");
    for (int t = 0; t < k; t++) {
        uint64_t row = 0, hit = e->confusion[(size_t)t * k + t];
        for (int p = 0; p < k; p++) row += e->confusion[(size_t)t * k + p];
        printf("%5d", t);
        if (nw) {
            const char *name = class_name(e, t);
            int w = 0;
            for (const char *c = name; *c; c++) w += ((unsigned char)*c & 0xC0) != 0x80;
            printf("  %s%*s", name, (nw > 4 ? nw : 4) - w, "");
        }
        if (row) printf(" %9llu %9llu  %8.4f\n", (unsigned long long)row, (unsigned long long)hit,
                        (double)hit / (double)row);
        else printf(" %9llu %9llu         -\n", 0ull, 0ull);
    }
    int width = 5;
    for (size_t m = e->samples; m >= 10000; m /= 10) width++;
    printf("\nconfusion matrix (rows: true class, columns: predicted class)\n%5s", "");
    for (int p = 0; p < k; p++) printf(" %*d", width, p);
    printf("\n");
    for (int t = 0; t < k; t++) {
        printf("%5d", t);
        for (int p = 0; p < k; p++) printf(" %*llu", width, (unsigned long long)e->confusion[(size_t)t * k + p]);
        printf("\n");
    }
}

static void eval_free(Eval *e)
{
    if (e->ops) {
        if (e->ops->sync) e->ops->sync();
        e->ops->free(e->d_images);
        e->ops->free(e->d_labels);
    }
    if (e->net) net_destroy(e->net);
    if (e->ds) dataset_close(e->ds);
    if (e->have_ckpt) checkpoint_free(&e->ckpt);
    free(e->images);
    free(e->labels);
    free(e->idx);
    free(e->logits);
    free(e->confusion);
    free(e->names);
}

/* Every rank agrees on the outcome of rc; the lowest rank that failed prints
 * its held line, so a mistake every rank makes is one line. When none
 * failed, rank 0 prints its held warnings (the same on every rank, or its
 * own: the class names). */
static int eval_agree(int rc, int rank)
{
    int worst = rc, speaker = rc ? rank : INT_MAX;
    if (MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS ||
        MPI_Allreduce(MPI_IN_PLACE, &speaker, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD) != MPI_SUCCESS) {
        worst = BASIN_ERR_RUNTIME;
        speaker = rank;
    }
    basin_errors_release(speaker == rank || (worst == BASIN_OK && rank == 0));
    return worst;
}

int main(int argc, char **argv)
{
    Eval e = {0};
    basin_errors_hold();
    int rc = eval_parse(&e.opt, argc, argv);
    int provided = 0;
    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
        basin_errors_release(1);
        return basin_error(BASIN_ERR_RUNTIME, "MPI_Init_thread failed");
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    if (MPI_Comm_rank(MPI_COMM_WORLD, &e.rank) != MPI_SUCCESS || MPI_Comm_size(MPI_COMM_WORLD, &e.world) != MPI_SUCCESS)
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "MPI_Comm_rank/MPI_Comm_size failed");
    if (!rc && e.opt.help) {
        basin_errors_release(0);
        if (e.rank == 0) eval_usage();
        MPI_Finalize();
        return 0;
    }
    if (!rc) rc = eval_setup(&e);
    rc = eval_agree(rc, e.rank);
    if (!rc) rc = eval_run(&e);
    if (!rc) rc = eval_reduce(&e);
    if (!rc && e.rank == 0) {
        /* The plot first: a plot that cannot be written is a usage error,
         * and then nothing is printed either. */
        if (e.opt.plot) rc = eval_png_write(e.opt.plot, e.confusion, e.classes);
        if (!rc) eval_print(&e);
        fflush(stdout);
    }
    if (rc == BASIN_ERR_RUNTIME) MPI_Abort(MPI_COMM_WORLD, rc); /* others may wait in a collective */
    /* Rank 0's outcome (the plot) is the job's. */
    if (MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD) != MPI_SUCCESS) MPI_Abort(MPI_COMM_WORLD, BASIN_ERR_RUNTIME);
    eval_free(&e);
    MPI_Finalize();
    return rc;
}
