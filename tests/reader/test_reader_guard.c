/* The child-process guard of dataset_open (reader/h5guard.h) in the
 * situations a training process puts it in:
 *   - another thread is inside HDF5 (the prefetch thread of the other split)
 *     whenever this one forks: the child must not wait for HDF5's lock,
 *     so every open succeeds, and quickly (a child stuck on the lock would
 *     be killed by the guard's alarm after 60 s and the file refused);
 *   - SIGCHLD is ignored (the kernel would reap the child): opens succeed;
 *   - the child writes nothing: the folder of the file is unchanged;
 *   - prefetching readers of both splits at once, as the trainer opens them. */
#include "reader/reader.h"

#include "core/error.h"
#include "reader/faults.h"
#include "testing.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
    const char *path;
    atomic_int stop;
    long calls;
} Busy;

/* HDF5 calls back to back: the library lock is held most of the time. */
static void *busy_hdf5(void *arg)
{
    Busy *b = arg;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    while (!atomic_load(&b->stop)) {
        hid_t f = H5Fopen(b->path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f >= 0) {
            H5Lexists(f, "/train/images", H5P_DEFAULT);
            H5Aexists(f, "classes");
            H5Fclose(f);
        }
        b->calls++;
    }
    return NULL;
}

static int open_once(const char *path, double *took)
{
    double t0 = now_s();
    Dataset *d = NULL;
    int rc = dataset_open(path, "train", 0, &d);
    *took = now_s() - t0;
    dataset_close(d);
    return rc;
}

int main(void)
{
    char dir[4096], path[4200];
    fx_make_tmpdir(dir, sizeof dir, "reader-guard");
    snprintf(path, sizeof path, "%s/good.h5", dir);
    fq_good(path);

    /* Opens while another thread keeps entering HDF5. */
    Busy b = {path, 0, 0};
    pthread_t th;
    EXPECT(pthread_create(&th, NULL, busy_hdf5, &b) == 0, "pthread_create failed");
    double worst = 0;
    int bad = 0;
    for (int i = 0; i < 40; i++) {
        double took = 0;
        if (open_once(path, &took) != BASIN_OK) bad++;
        if (took > worst) worst = took;
    }
    atomic_store(&b.stop, 1);
    pthread_join(th, NULL);
    EXPECT(bad == 0, "%d of 40 opens failed while another thread was inside HDF5", bad);
    EXPECT(worst < 20.0, "the slowest open took %.1f s while another thread was inside HDF5", worst);
    EXPECT(b.calls > 0, "the busy thread made no HDF5 call");

    /* SIGCHLD ignored. */
    struct sigaction ign, old;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGCHLD, &ign, &old);
    double took = 0;
    EXPECT(open_once(path, &took) == BASIN_OK, "dataset_open failed with SIGCHLD ignored");
    struct sigaction after;
    sigaction(SIGCHLD, NULL, &after);
    EXPECT(after.sa_handler == SIG_IGN, "the guard did not restore SIGCHLD's disposition");
    sigaction(SIGCHLD, &old, NULL);

    /* The child writes nothing (the capture file of stderr is the only new entry). */
    EXPECT(fx_count_entries(dir, "") == 1, "%d entries in the folder, expected only good.h5",
           fx_count_entries(dir, ""));

    /* Two prefetching readers, as the trainer has: the second opened while
     * the first one's thread reads chunked images through HDF5. */
    char chunked[4300], test[4300];
    snprintf(chunked, sizeof chunked, "%s/chunked.h5", dir);
    snprintf(test, sizeof test, "%s/test.h5", dir);
    FxSpec cs = fx_spec(2000, 1, 28, 28);
    cs.images_chunked = 1;
    fx_write_dataset_file(chunked, &cs);
    FxSpec ts = fx_spec(200, 1, 28, 28);
    ts.split = "test";
    fx_write_dataset_file(test, &ts);
    ReaderConfig rc = {.path = chunked, .split = "train", .seed = 1, .global_batch = 10, .rank = 0, .world = 1,
                       .shuffle = 1, .drop_last = 1, .prefetch = 1};
    Reader *tr = NULL, *te = NULL;
    EXPECT(reader_open(&rc, &tr) == BASIN_OK, "reader_open(train) failed");
    ReaderConfig ec = rc;
    ec.path = test, ec.split = "test", ec.shuffle = 0, ec.drop_last = 0;
    EXPECT(reader_open(&ec, &te) == BASIN_OK, "reader_open(test) failed while train prefetches");
    Batch batch;
    for (int i = 0; tr && i < 5; i++) EXPECT(reader_next(tr, &batch) == BASIN_OK, "reader_next(train) failed");
    reader_close(te);
    reader_close(tr);

    fx_remove_tree(dir);
    return test_finish("test_reader_guard");
}
