/* basin-data: prepare and inspect dataset files.
 *
 *   basin-data import fashion-mnist [--source DIR] [--output PATH]
 *   basin-data info PATH
 *
 * Exit codes: 0 done, 1 a call failed, 2 a usage mistake (one line says which).
 */
#include "reader/reader.h"

#include "core/error.h"

#include <getopt.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_SOURCE "/usr/share/datasets/fashion-mnist"
#define DEFAULT_OUTPUT "data/fashion-mnist.h5"

static void usage(FILE *to)
{
    fprintf(to,
            "usage: basin-data import fashion-mnist [--source DIR] [--output PATH]\n"
            "       basin-data info PATH\n"
            "\n"
            "import   convert Fashion-MNIST's gzip IDX files into one HDF5 dataset file\n"
            "           --source DIR   folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz\n"
            "                          (default " DEFAULT_SOURCE ",\n"
            "                          from Debian's dataset-fashion-mnist package)\n"
            "           --output PATH  file to write (default " DEFAULT_OUTPUT ");\n"
            "                          replaced only once the new file is complete\n"
            "info     print the splits of a dataset file: samples, shape, classes, mean and std\n"
            "\n"
            "  -h, --help   show this help\n");
}

static int usage_error(const char *what)
{
    basin_error(BASIN_ERR_USAGE, "%s (see basin-data --help)", what);
    return BASIN_ERR_USAGE;
}

/* getopt_long over argv[0..argc) where argv[0] names the command. Returns 0
 * and fills the options, -1 after printing help, or a usage status. */
static int parse_import(int argc, char **argv, const char **source, const char **output)
{
    static const struct option opts[] = {
        {"source", required_argument, NULL, 's'},
        {"output", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char msg[256];
    opterr = 0;
    optind = 1;
    for (;;) {
        int c = getopt_long(argc, argv, ":h", opts, NULL);
        if (c == -1) break;
        switch (c) {
        case 's': *source = optarg; break;
        case 'o': *output = optarg; break;
        case 'h': usage(stdout); return -1;
        case ':':
            snprintf(msg, sizeof msg, "option '%s' needs a value", argv[optind - 1]);
            return usage_error(msg);
        default:
            snprintf(msg, sizeof msg, "unknown option '%s'", argv[optind - 1]);
            return usage_error(msg);
        }
    }
    if (optind >= argc) return usage_error("import: name the dataset to import (fashion-mnist)");
    if (strcmp(argv[optind], "fashion-mnist") != 0) {
        snprintf(msg, sizeof msg, "import: unknown dataset '%s' (known: fashion-mnist)", argv[optind]);
        return usage_error(msg);
    }
    if (optind + 1 < argc) {
        snprintf(msg, sizeof msg, "import: unexpected argument '%s'", argv[optind + 1]);
        return usage_error(msg);
    }
    if (!**source) return usage_error("--source needs a folder");
    if (!**output) return usage_error("--output needs a file path");
    return 0;
}

/* 1 when the file has a top-level group of this name. */
static int info(const char *path)
{
    const char *splits[] = {"train", "test"};
    int shown = 0;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    for (size_t i = 0; i < sizeof splits / sizeof splits[0]; i++) {
        if (!dataset_has_split(path, splits[i])) continue;
        Dataset *d = NULL;
        int rc = dataset_open(path, splits[i], 0, &d);
        if (rc) return rc;
        const DatasetInfo *di = dataset_info(d);
        if (!shown) {
            printf("%s\n", path);
            printf("  classes %d, mean %.6f, std %.6f (of training pixels in [0, 1])\n", di->classes,
                   (double)di->mean, (double)di->std);
        }
        printf("  %-5s  %zu samples of shape [%d, %d, %d]\n", splits[i], di->count, di->c, di->h, di->w);
        shown++;
        dataset_close(d);
    }
    if (!shown) return basin_error(BASIN_ERR_USAGE, "%s: has neither a /train nor a /test split", path);
    return BASIN_OK;
}

int main(int argc, char **argv)
{
    if (argc < 2) return usage_error("give a command: import or info");
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "import")) {
        const char *source = DEFAULT_SOURCE, *output = DEFAULT_OUTPUT;
        int rc = parse_import(argc - 1, argv + 1, &source, &output);
        if (rc < 0) return 0;
        if (rc) return rc;
        rc = import_fashion_mnist(source, output);
        if (rc) return rc;
        basin_info("basin-data: wrote %s", output);
        return 0;
    }
    if (!strcmp(cmd, "info")) {
        if (argc == 3 && (!strcmp(argv[2], "-h") || !strcmp(argv[2], "--help"))) {
            usage(stdout);
            return 0;
        }
        if (argc != 3 || argv[2][0] == '-') {
            if (argc >= 3 && argv[2][0] == '-') {
                char msg[256];
                snprintf(msg, sizeof msg, "info: unknown option '%s'", argv[2]);
                return usage_error(msg);
            }
            return usage_error("info: give exactly one dataset file");
        }
        return info(argv[2]);
    }
    char msg[256];
    snprintf(msg, sizeof msg, "%s '%s'", cmd[0] == '-' ? "unknown option" : "unknown command", cmd);
    return usage_error(msg);
}
