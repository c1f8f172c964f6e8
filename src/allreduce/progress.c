/* The progress engine: one thread per AllreduceComm that runs started
 * all-reduces one after the other, in submission order, so the caller's
 * thread can keep computing (backward) while buckets are reduced.
 *
 * The engine thread makes every MPI call of the requests it runs; the
 * caller's thread only queues and waits. A blocking allreduce_run issued
 * while the engine is running goes through the queue too, so two threads
 * never drive collectives on the same communicators at once.
 * After a request fails, the ones behind it are not run (the peers are in an
 * unknown state) and fail with the same status.
 */
#include "allreduce/internal.h"

#include <stdlib.h>

int ar_engine_init(AllreduceComm *c, int capacity)
{
    ArEngine *e = &c->engine;
    e->queue = basin_calloc((size_t)capacity, sizeof *e->queue);
    if (!e->queue) return BASIN_ERR_RUNTIME;
    e->cap = capacity;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv_work, NULL);
    pthread_cond_init(&e->cv_done, NULL);
    atomic_init(&e->completed, 0);
    atomic_init(&e->error, 0);
    e->submitted = 0;
    e->failed_at = 0;
    return BASIN_OK;
}

static _Thread_local int on_engine_thread;

int ar_on_engine_thread(void)
{
    return on_engine_thread;
}

static void *engine_main(void *arg)
{
    AllreduceComm *c = arg;
    ArEngine *e = &c->engine;
    on_engine_thread = 1;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        uint64_t done = atomic_load(&e->completed);
        if (done == e->submitted) {
            if (e->stop) break;
            pthread_cond_wait(&e->cv_work, &e->mu);
            continue;
        }
        ArJob job = e->queue[done % (uint64_t)e->cap];
        pthread_mutex_unlock(&e->mu);
        int st = atomic_load(&e->error);
        if (!st) st = ar_run_job(&job);
        pthread_mutex_lock(&e->mu);
        if (st && !e->failed_at) {
            e->failed_at = done + 1;
            atomic_store(&e->error, st);
        }
        atomic_store(&e->completed, done + 1);
        pthread_cond_broadcast(&e->cv_done);
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

void ar_engine_stop(AllreduceComm *c)
{
    ArEngine *e = &c->engine;
    if (!e->queue) return;
    if (e->started) {
        pthread_mutex_lock(&e->mu);
        e->stop = 1;
        pthread_cond_signal(&e->cv_work);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
        e->started = 0;
    }
    pthread_cond_destroy(&e->cv_work);
    pthread_cond_destroy(&e->cv_done);
    pthread_mutex_destroy(&e->mu);
    free(e->queue);
    e->queue = NULL;
}

int ar_engine_submit(const ArJob *job, AllreduceTicket *ticket)
{
    AllreduceComm *c = job->plan->comm;
    ArEngine *e = &c->engine;
    pthread_mutex_lock(&e->mu);
    if (!e->started) {
        e->stop = 0;
        if (pthread_create(&e->thread, NULL, engine_main, c) != 0) {
            pthread_mutex_unlock(&e->mu);
            return BASIN_FAIL(BASIN_ERR_RUNTIME, "pthread_create failed for the all-reduce progress thread");
        }
        e->started = 1;
    }
    while (e->submitted - atomic_load(&e->completed) >= (uint64_t)e->cap) pthread_cond_wait(&e->cv_done, &e->mu);
    e->queue[e->submitted % (uint64_t)e->cap] = *job;
    *ticket = ++e->submitted;
    pthread_cond_signal(&e->cv_work);
    pthread_mutex_unlock(&e->mu);
    return BASIN_OK;
}

int allreduce_test(AllreduceComm *c, AllreduceTicket t, int *done)
{
    ArEngine *e = &c->engine;
    if (t == 0 || t > e->submitted) return basin_error(BASIN_ERR_USAGE, "allreduce_test: ticket %llu was never started",
                                                       (unsigned long long)t);
    *done = atomic_load(&e->completed) >= t;
    return BASIN_OK;
}

int allreduce_wait(AllreduceComm *c, AllreduceTicket t)
{
    ArEngine *e = &c->engine;
    if (t == 0 || t > e->submitted) return basin_error(BASIN_ERR_USAGE, "allreduce_wait: ticket %llu was never started",
                                                       (unsigned long long)t);
    pthread_mutex_lock(&e->mu);
    while (atomic_load(&e->completed) < t) pthread_cond_wait(&e->cv_done, &e->mu);
    int st = e->failed_at && t >= e->failed_at ? atomic_load(&e->error) : BASIN_OK;
    pthread_mutex_unlock(&e->mu);
    return st;
}

int allreduce_wait_all(AllreduceComm *c)
{
    ArEngine *e = &c->engine;
    if (!e->queue || e->submitted == 0) return BASIN_OK;
    return allreduce_wait(c, e->submitted);
}
