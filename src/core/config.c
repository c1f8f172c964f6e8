#include "core/config.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

void config_defaults(TrainConfig *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->model = "cnn";
    cfg->data = "data/fashion-mnist.h5";
    cfg->output_dir = "out";
    cfg->epochs = 15;
    cfg->batch = 64;
    cfg->lr = 0.02;
    cfg->schedule = SCHEDULE_COSINE;
    cfg->warmup_epochs = 0.0;
    cfg->lr_step_epochs = 5.0;
    cfg->lr_gamma = 0.1;
    cfg->momentum = 0.9;
    cfg->weight_decay = 5e-4;
    cfg->seed = 42;
    cfg->eval_every = 1;
    cfg->log_every = 100;
    cfg->threads = 1;
    cfg->device = "cpu";
    cfg->prefetch = 1;
    cfg->allreduce = "auto";
    cfg->bucket_mb = 4.0;
    cfg->overlap = 1;
    cfg->sharded_update = 1;
    cfg->collective_timeout = 300.0;
    cfg->check_every = 100;
    cfg->checkpoint_seconds = 60.0;
    cfg->keep_checkpoints = 3;
    cfg->grace_seconds = 60.0;
}

void config_usage(const char *prog, const char *algorithms)
{
    printf("Usage: %s [options]\n"
           "Train a network with synchronous data parallelism: run under mpirun, one\n"
           "process per worker (launch/train.sh does that for you).\n\n"
           "Model and data\n"
           "  --model NAME|SPEC       mlp, cnn, cnn-small, or a layer spec such as\n"
           "                          'conv:32:5,relu,pool:2,flatten,fc:10' (default cnn)\n"
           "  --data PATH             dataset file from basin-data (default data/fashion-mnist.h5)\n"
           "  --limit-train N         use only the first N training samples\n"
           "  --limit-test N          use only the first N test samples\n"
           "Optimisation\n"
           "  --epochs N              passes over the training set (default 15)\n"
           "  --batch N               global batch size over all ranks (default 64)\n"
           "  --lr X                  peak learning rate (default 0.02)\n"
           "  --schedule KIND         constant, step or cosine (default cosine)\n"
           "  --warmup-epochs X       linear warm-up length in epochs (default 0)\n"
           "  --lr-step-epochs X      step schedule: decay every X epochs (default 5)\n"
           "  --lr-gamma X            step schedule: decay factor (default 0.1)\n"
           "  --momentum X            SGD momentum, 0 for none (default 0.9)\n"
           "  --nesterov              Nesterov momentum\n"
           "  --weight-decay X        decoupled weight decay, not on biases (default 5e-4)\n"
           "  --seed N                initial weights, sample order, dropout (default 42)\n"
           "  --max-steps N           stop after N steps in all\n"
           "Output\n"
           "  --output-dir DIR        where outputs go (default out)\n"
           "  --metrics PATH          JSON-lines metrics (default DIR/metrics.jsonl)\n"
           "  --log-every N           progress line every N steps (default 100)\n"
           "  --eval-every N          test-set evaluation every N epochs, 0: never (default 1)\n"
           "  --eval-batch N          global batch of evaluation (default: --batch)\n"
           "Data parallelism\n"
           "  --allreduce ALGO        gradient all-reduce: %s; with --device\n"
           "                          cuda: auto, hier (NCCL in the supernode) or nccl (default auto)\n"
           "  --bucket-mb X           gradient bucket size in MiB (default 4)\n"
           "  --no-overlap            reduce gradients after backward, not during it\n"
           "  --no-sharded-update     every rank runs the optimizer on every parameter, instead\n"
           "                          of each rank of a supernode on the part it reduced\n"
           "  --supernode-size K      ranks per supernode (default: ranks sharing a host)\n"
           "  --collective-timeout S  abort the job when a collective waits S seconds (default 300)\n"
           "  --scale-lr              linear scaling rule: lr = lr * batch / 256\n"
           "  --check-every N         compare replica checksums every N steps, 0: only at the\n"
           "                          end (default 100)\n"
           "  --trace FILE            Chrome trace per rank in FILE.rank<R>.json\n"
           "Checkpoints and preemption\n"
           "  --checkpoint-dir DIR    where checkpoints go (default DIR/checkpoints of --output-dir)\n"
           "  --checkpoint-steps N    checkpoint every N steps (default 0: off)\n"
           "  --checkpoint-seconds T  checkpoint every T seconds of training, 0: off (default 60);\n"
           "                          always at the end and when preempted\n"
           "  --keep-checkpoints K    keep the newest K, 0: all (default 3)\n"
           "  --checkpoint-failure continue|stop  after a failed write (default continue)\n"
           "  --resume auto|PATH      continue from the newest good checkpoint of the\n"
           "                          checkpoint dir (a fresh start when there is none) or PATH\n"
           "  --grace-seconds S       on SIGTERM/SIGUSR1: checkpoint and exit %d within S\n"
           "                          seconds (default 60)\n"
           "  --status-file PATH      rank 0 writes the job's outcome there at exit, one line:\n"
           "                          exit=C step=S checkpoint_step=K lost=L checkpoint=FILE\n"
           "Machine\n"
           "  --threads N             BLAS threads per rank (default 1)\n"
           "  --device cpu|cuda       where the network runs: OpenBLAS, or the GPU of this rank's\n"
           "                          index on its host (default cpu)\n"
           "  --no-prefetch           read batches on the training thread\n"
           "  --check[=RANKS]         validate options, data and model as if on RANKS ranks\n"
           "                          (default: as started); write nothing\n"
           "  --help                  this text\n",
           prog, algorithms, BASIN_EXIT_PREEMPTED);
}

static int bad_value(const char *opt, const char *val, const char *want)
{
    return basin_error(BASIN_ERR_USAGE, "--%s '%s': %s", opt, val, want);
}

static int parse_long(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) {
        char want[96];
        snprintf(want, sizeof want, "expected an integer in [%ld, %ld]", lo, hi);
        return bad_value(opt, s, want);
    }
    *out = v;
    return BASIN_OK;
}

static int parse_double(const char *opt, const char *s, double lo, double hi, int lo_open, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v) || v < lo || v > hi || (lo_open && v == lo)) {
        char want[96];
        snprintf(want, sizeof want, "expected a number %s %g and <= %g", lo_open ? ">" : ">=", lo, hi);
        return bad_value(opt, s, want);
    }
    *out = v;
    return BASIN_OK;
}

enum {
    OPT_MODEL = 256, OPT_DATA, OPT_LIMIT_TRAIN, OPT_LIMIT_TEST, OPT_EPOCHS, OPT_BATCH, OPT_LR,
    OPT_SCHEDULE, OPT_WARMUP, OPT_STEP_EPOCHS, OPT_GAMMA, OPT_MOMENTUM, OPT_NESTEROV, OPT_WD,
    OPT_SEED, OPT_MAX_STEPS, OPT_OUTDIR, OPT_METRICS, OPT_LOG_EVERY, OPT_EVAL_EVERY,
    OPT_EVAL_BATCH, OPT_THREADS, OPT_DEVICE, OPT_NO_PREFETCH, OPT_CHECK, OPT_HELP, OPT_ALLREDUCE, OPT_BUCKET,
    OPT_NO_OVERLAP, OPT_NO_SHARDED, OPT_SUPERNODE, OPT_TIMEOUT, OPT_SCALE_LR, OPT_CHECK_EVERY, OPT_TRACE,
    OPT_CKPT_DIR, OPT_CKPT_STEPS, OPT_CKPT_SECONDS, OPT_KEEP, OPT_CKPT_FAILURE, OPT_RESUME, OPT_GRACE,
    OPT_STATUS,
};

static const struct option long_options[] = {
    {"model", required_argument, NULL, OPT_MODEL},
    {"data", required_argument, NULL, OPT_DATA},
    {"limit-train", required_argument, NULL, OPT_LIMIT_TRAIN},
    {"limit-test", required_argument, NULL, OPT_LIMIT_TEST},
    {"epochs", required_argument, NULL, OPT_EPOCHS},
    {"batch", required_argument, NULL, OPT_BATCH},
    {"lr", required_argument, NULL, OPT_LR},
    {"schedule", required_argument, NULL, OPT_SCHEDULE},
    {"warmup-epochs", required_argument, NULL, OPT_WARMUP},
    {"lr-step-epochs", required_argument, NULL, OPT_STEP_EPOCHS},
    {"lr-gamma", required_argument, NULL, OPT_GAMMA},
    {"momentum", required_argument, NULL, OPT_MOMENTUM},
    {"nesterov", no_argument, NULL, OPT_NESTEROV},
    {"weight-decay", required_argument, NULL, OPT_WD},
    {"seed", required_argument, NULL, OPT_SEED},
    {"max-steps", required_argument, NULL, OPT_MAX_STEPS},
    {"output-dir", required_argument, NULL, OPT_OUTDIR},
    {"metrics", required_argument, NULL, OPT_METRICS},
    {"log-every", required_argument, NULL, OPT_LOG_EVERY},
    {"eval-every", required_argument, NULL, OPT_EVAL_EVERY},
    {"eval-batch", required_argument, NULL, OPT_EVAL_BATCH},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"no-prefetch", no_argument, NULL, OPT_NO_PREFETCH},
    {"check", optional_argument, NULL, OPT_CHECK},
    {"help", no_argument, NULL, OPT_HELP},
    {"allreduce", required_argument, NULL, OPT_ALLREDUCE},
    {"bucket-mb", required_argument, NULL, OPT_BUCKET},
    {"no-overlap", no_argument, NULL, OPT_NO_OVERLAP},
    {"no-sharded-update", no_argument, NULL, OPT_NO_SHARDED},
    {"supernode-size", required_argument, NULL, OPT_SUPERNODE},
    {"collective-timeout", required_argument, NULL, OPT_TIMEOUT},
    {"scale-lr", no_argument, NULL, OPT_SCALE_LR},
    {"check-every", required_argument, NULL, OPT_CHECK_EVERY},
    {"trace", required_argument, NULL, OPT_TRACE},
    {"checkpoint-dir", required_argument, NULL, OPT_CKPT_DIR},
    {"checkpoint-steps", required_argument, NULL, OPT_CKPT_STEPS},
    {"checkpoint-seconds", required_argument, NULL, OPT_CKPT_SECONDS},
    {"keep-checkpoints", required_argument, NULL, OPT_KEEP},
    {"checkpoint-failure", required_argument, NULL, OPT_CKPT_FAILURE},
    {"resume", required_argument, NULL, OPT_RESUME},
    {"grace-seconds", required_argument, NULL, OPT_GRACE},
    {"status-file", required_argument, NULL, OPT_STATUS},
    {NULL, 0, NULL, 0},
};

int config_parse(TrainConfig *cfg, int argc, char **argv)
{
    optind = 1;
    opterr = 0;
    long v = 0;
    double d = 0;
    for (;;) {
        int idx = -1;
        int c = getopt_long(argc, argv, ":", long_options, &idx);
        if (c == -1) break;
        const char *name = idx >= 0 ? long_options[idx].name : "";
        switch (c) {
        case OPT_MODEL: cfg->model = optarg; break;
        case OPT_DATA: cfg->data = optarg; break;
        case OPT_LIMIT_TRAIN: TRY(parse_long(name, optarg, 1, 1L << 40, &v)); cfg->limit_train = (size_t)v; break;
        case OPT_LIMIT_TEST: TRY(parse_long(name, optarg, 1, 1L << 40, &v)); cfg->limit_test = (size_t)v; break;
        case OPT_EPOCHS: TRY(parse_long(name, optarg, 1, 1000000, &v)); cfg->epochs = (int)v; break;
        case OPT_BATCH: TRY(parse_long(name, optarg, 1, 1L << 24, &v)); cfg->batch = (size_t)v; break;
        case OPT_EVAL_BATCH: TRY(parse_long(name, optarg, 1, 1L << 24, &v)); cfg->eval_batch = (size_t)v; break;
        case OPT_LR: TRY(parse_double(name, optarg, 0.0, 1e6, 1, &cfg->lr)); break;
        case OPT_SCHEDULE:
            if (strcmp(optarg, "constant") == 0) cfg->schedule = SCHEDULE_CONSTANT;
            else if (strcmp(optarg, "step") == 0) cfg->schedule = SCHEDULE_STEP;
            else if (strcmp(optarg, "cosine") == 0) cfg->schedule = SCHEDULE_COSINE;
            else return bad_value(name, optarg, "expected constant, step or cosine");
            break;
        case OPT_WARMUP: TRY(parse_double(name, optarg, 0.0, 1e6, 0, &cfg->warmup_epochs)); break;
        case OPT_STEP_EPOCHS: TRY(parse_double(name, optarg, 0.0, 1e6, 1, &cfg->lr_step_epochs)); break;
        case OPT_GAMMA: TRY(parse_double(name, optarg, 0.0, 1.0, 1, &cfg->lr_gamma)); break;
        case OPT_MOMENTUM:
            TRY(parse_double(name, optarg, 0.0, 1.0, 0, &d));
            if (d >= 1.0) return bad_value(name, optarg, "expected a number in [0, 1)");
            cfg->momentum = d;
            break;
        case OPT_NESTEROV: cfg->nesterov = 1; break;
        case OPT_WD: TRY(parse_double(name, optarg, 0.0, 1.0, 0, &cfg->weight_decay)); break;
        case OPT_SEED: TRY(parse_long(name, optarg, 0, 0x7fffffffffffffffL, &v)); cfg->seed = (uint64_t)v; break;
        case OPT_MAX_STEPS: TRY(parse_long(name, optarg, 1, 0x7fffffffffffffffL, &v)); cfg->max_steps = v; break;
        case OPT_OUTDIR:
            if (!*optarg) return bad_value(name, optarg, "expected a directory");
            cfg->output_dir = optarg;
            break;
        case OPT_METRICS:
            if (!*optarg) return bad_value(name, optarg, "expected a file path");
            cfg->metrics = optarg;
            break;
        case OPT_LOG_EVERY: TRY(parse_long(name, optarg, 1, 1L << 30, &v)); cfg->log_every = (int)v; break;
        case OPT_EVAL_EVERY: TRY(parse_long(name, optarg, 0, 1L << 30, &v)); cfg->eval_every = (int)v; break;
        case OPT_THREADS: TRY(parse_long(name, optarg, 1, 1024, &v)); cfg->threads = (int)v; break;
        case OPT_DEVICE:
            if (strcmp(optarg, "cpu") && strcmp(optarg, "cuda")) return bad_value(name, optarg, "expected cpu or cuda");
            cfg->device = optarg;
            break;
        case OPT_NO_PREFETCH: cfg->prefetch = 0; break;
        case OPT_CHECK:
            cfg->check_only = 1;
            if (optarg) {
                TRY(parse_long(name, optarg, 1, 1 << 24, &v));
                cfg->check_ranks = (int)v;
            }
            break;
        case OPT_HELP: cfg->help = 1; return BASIN_OK;
        case OPT_ALLREDUCE:
            /* The name is checked where the all-reduce is set up
             * (trainer_setup.c), from the algorithm table. */
            if (!*optarg) return bad_value(name, optarg, "expected an all-reduce algorithm");
            cfg->allreduce = optarg;
            break;
        case OPT_BUCKET: TRY(parse_double(name, optarg, 0.0, 65536.0, 1, &cfg->bucket_mb)); break;
        case OPT_NO_OVERLAP: cfg->overlap = 0; break;
        case OPT_NO_SHARDED: cfg->sharded_update = 0; break;
        case OPT_SUPERNODE: TRY(parse_long(name, optarg, 1, 1 << 20, &v)); cfg->supernode_size = (int)v; break;
        case OPT_TIMEOUT: TRY(parse_double(name, optarg, 0.0, 1e7, 1, &cfg->collective_timeout)); break;
        case OPT_SCALE_LR: cfg->scale_lr = 1; break;
        case OPT_CHECK_EVERY: TRY(parse_long(name, optarg, 0, 1L << 30, &v)); cfg->check_every = (int)v; break;
        case OPT_TRACE:
            if (!*optarg) return bad_value(name, optarg, "expected a file path");
            cfg->trace = optarg;
            break;
        case OPT_CKPT_DIR:
            if (!*optarg) return bad_value(name, optarg, "expected a directory");
            cfg->checkpoint_dir = optarg;
            break;
        case OPT_CKPT_STEPS: TRY(parse_long(name, optarg, 0, 1L << 40, &v)); cfg->checkpoint_steps = v; break;
        case OPT_CKPT_SECONDS: TRY(parse_double(name, optarg, 0.0, 1e9, 0, &cfg->checkpoint_seconds)); break;
        case OPT_KEEP: TRY(parse_long(name, optarg, 0, 1000000, &v)); cfg->keep_checkpoints = (int)v; break;
        case OPT_CKPT_FAILURE:
            if (strcmp(optarg, "continue") == 0) cfg->checkpoint_fail_stop = 0;
            else if (strcmp(optarg, "stop") == 0) cfg->checkpoint_fail_stop = 1;
            else return bad_value(name, optarg, "expected continue or stop");
            break;
        case OPT_RESUME:
            if (!*optarg) return bad_value(name, optarg, "expected auto or a checkpoint file");
            cfg->resume = optarg;
            break;
        case OPT_GRACE: TRY(parse_double(name, optarg, 0.0, 1e7, 1, &cfg->grace_seconds)); break;
        case OPT_STATUS:
            if (!*optarg) return bad_value(name, optarg, "expected a file path");
            cfg->status_file = optarg;
            break;
        case ':':
            return basin_error(BASIN_ERR_USAGE, "option %s needs a value (see --help)", argv[optind - 1]);
        default:
            return basin_error(BASIN_ERR_USAGE, "unknown option '%s' (see --help)", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return basin_error(BASIN_ERR_USAGE, "unexpected argument '%s' (options start with --; see --help)",
                           argv[optind]);
    return BASIN_OK;
}

/* The shortest text that reads back as exactly v. */
static void format_exact(double v, char *buf, size_t len)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}

void config_describe(const TrainConfig *cfg, char *buf, size_t len)
{
    char lr[32], warm[32], step[32], gamma[32], mom[32], wd[32];
    format_exact(cfg->lr, lr, sizeof lr);
    format_exact(cfg->warmup_epochs, warm, sizeof warm);
    format_exact(cfg->lr_step_epochs, step, sizeof step);
    format_exact(cfg->lr_gamma, gamma, sizeof gamma);
    format_exact(cfg->momentum, mom, sizeof mom);
    format_exact(cfg->weight_decay, wd, sizeof wd);
    snprintf(buf, len,
             "model=%s data=%s epochs=%d max_steps=%ld batch=%zu lr=%s scale_lr=%d schedule=%s warmup=%s "
             "lr_step_epochs=%s lr_gamma=%s momentum=%s nesterov=%d weight_decay=%s seed=%llu limit_train=%zu",
             cfg->model, cfg->data, cfg->epochs, cfg->max_steps > 0 ? cfg->max_steps : 0L, cfg->batch, lr,
             cfg->scale_lr, schedule_name(cfg->schedule), warm, step, gamma, mom, cfg->nesterov, wd,
             (unsigned long long)cfg->seed, cfg->limit_train);
}

/* The value of `key` in a config_describe text, or NULL. Values hold no
 * spaces, except a model spec, which comes first and is not looked up. */
const char *config_describe_value(const char *text, const char *key, char *buf, size_t len)
{
    size_t k = strlen(key);
    for (const char *p = text; (p = strstr(p, key)) != NULL; p += k) {
        if ((p != text && p[-1] != ' ') || p[k] != '=') continue;
        const char *v = p + k + 1;
        size_t n = strcspn(v, " ");
        if (n >= len) n = len - 1;
        memcpy(buf, v, n);
        buf[n] = '\0';
        return buf;
    }
    return NULL;
}

int config_resume_check(const char *saved, const TrainConfig *cfg, const char *ckpt_path)
{
    /* The options that define the update of every step. Checkpoints of
     * earlier versions recorded fewer of them, with 6 significant digits:
     * those compare to that precision, and a missing key is not compared. */
    static const struct { const char *key, *option; int numeric; } keys[] = {
        {"lr", "--lr", 1}, {"scale_lr", "--scale-lr", 1}, {"schedule", "--schedule", 0},
        {"warmup", "--warmup-epochs", 1}, {"lr_step_epochs", "--lr-step-epochs", 1},
        {"lr_gamma", "--lr-gamma", 1}, {"momentum", "--momentum", 1}, {"nesterov", "--nesterov", 1},
        {"weight_decay", "--weight-decay", 1},
    };
    if (!saved || !*saved) return BASIN_OK;
    char now[4096];
    config_describe(cfg, now, sizeof now);
    int old_style = strstr(saved, " lr_gamma=") == NULL;
    char diff[1024] = "";
    size_t used = 0;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        char a[256], b[256];
        const char *was = config_describe_value(saved, keys[i].key, a, sizeof a);
        if (!was && strcmp(keys[i].key, "nesterov") == 0 && old_style)
            was = strstr(saved, "(nesterov)") ? "1" : "0";
        if (!was) continue;
        const char *is = config_describe_value(now, keys[i].key, b, sizeof b);
        if (!is) continue;
        /* The step schedule's options mean nothing to the others. */
        if ((strcmp(keys[i].key, "lr_step_epochs") == 0 || strcmp(keys[i].key, "lr_gamma") == 0) &&
            cfg->schedule != SCHEDULE_STEP)
            continue;
        int same;
        if (keys[i].numeric) {
            double x = strtod(was, NULL), y = strtod(is, NULL);
            double tol = old_style ? 5e-6 * fabs(x) : 0.0;
            same = fabs(x - y) <= tol;
        } else {
            same = strcmp(was, is) == 0;
        }
        /* On/off options read as such: "--nesterov on (was off)". */
        int flag = !strcmp(keys[i].key, "nesterov") || !strcmp(keys[i].key, "scale_lr");
        if (flag) {
            is = strtod(is, NULL) != 0 ? "on" : "off";
            was = strtod(was, NULL) != 0 ? "on" : "off";
        }
        if (!same && used < sizeof diff)
            used += (size_t)snprintf(diff + used, sizeof diff - used, "%s%s %s (was %s)", used ? ", " : "",
                                     keys[i].option, is, was);
    }
    if (used)
        return basin_error(BASIN_ERR_USAGE,
                           "checkpoint %s was trained with other optimizer options: %s; resume with the "
                           "checkpoint's values, or train the new ones with another --output-dir",
                           ckpt_path, diff);
    return BASIN_OK;
}

uint64_t config_hash(const TrainConfig *cfg)
{
    /* Everything that changes the arithmetic or the collectives; not the
     * output paths or the logging cadence, which may differ between hosts. */
    char buf[8192];
    int n = snprintf(buf, sizeof buf,
                     "%s|%s|%d|%zu|%zu|%.17g|%d|%.17g|%.17g|%.17g|%.17g|%d|%.17g|%llu|%d|%zu|%zu|%ld|%s|"
                     "%.17g|%d|%d|%d|%d|%d|%s",
                     cfg->model, cfg->data, cfg->epochs, cfg->batch, cfg->eval_batch, cfg->lr,
                     (int)cfg->schedule, cfg->warmup_epochs, cfg->lr_step_epochs, cfg->lr_gamma,
                     cfg->momentum, cfg->nesterov, cfg->weight_decay, (unsigned long long)cfg->seed,
                     cfg->eval_every, cfg->limit_train, cfg->limit_test, cfg->max_steps, cfg->allreduce,
                     cfg->bucket_mb, cfg->overlap, cfg->supernode_size, cfg->scale_lr, cfg->check_every, cfg->sharded_update, cfg->device);
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (int i = 0; i < n && i < (int)sizeof buf; i++) {
        h ^= (unsigned char)buf[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
