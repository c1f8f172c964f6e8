/* Checkpoints of the training loop, and resuming from them: rank 0 writes
 * and reads, every rank learns the outcome. Also the stop on a signal (75,
 * or 76 when its checkpoint fails; preempt.c has the signals), the lock of
 * the output folders and the --status-file line. Each failure is one line,
 * and every line that ends a run says from which step a resume starts. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/error.h"
#include "core/files.h"
#include "core/net_table.h"
#include "core/preempt.h"
#include "core/trainer_internal.h"

/* Rank 0 finds and checks the checkpoint to resume from; every rank learns
 * the outcome. A checkpoint that does not fit this run is a usage error,
 * found before anything is written. */
static int resume_check(Trainer *t, const Checkpoint *ck)
{
    const CheckpointState *st = &ck->st;
    const DatasetInfo *info = &t->train_info;
    const char *spec = model_resolve(t->cfg->model);
    if (strcmp(st->model_spec, spec) != 0)
        return basin_error(BASIN_ERR_USAGE, "checkpoint %s is of another model (%s), not %s: resume it "
                           "with that model, or train this one with another --output-dir", ck->path,
                           st->model_spec, spec);
    if (st->n_params != t->net->n_params || st->classes != info->classes || st->in_c != info->c ||
        st->in_h != info->h || st->in_w != info->w)
        return basin_error(BASIN_ERR_USAGE, "checkpoint %s does not fit this model and data (%zu parameters, "
                           "%dx%dx%d inputs, %d classes)", ck->path, st->n_params, st->in_c, st->in_h,
                           st->in_w, st->classes);
    /* The same model spec gives the same layer table; the state must fit it.
     * A version-1 file has no state: running statistics start over. */
    if (ck->format_version >= 2 && st->n_state != t->net->n_state)
        return basin_error(BASIN_ERR_USAGE, "checkpoint %s holds %zu state values, but this model has %zu",
                           ck->path, st->n_state, t->net->n_state);
    if (ck->format_version < 2 && t->net->n_state > 0)
        basin_warn("checkpoint %s (format version %u) holds no batch-norm running statistics: they start again "
                   "from their initial values", ck->path, ck->format_version);
    if (st->global_batch != t->cfg->batch)
        return basin_error(BASIN_ERR_USAGE, "checkpoint %s was trained with --batch %llu, not %zu: the global "
                           "batch must stay the same", ck->path, (unsigned long long)st->global_batch,
                           t->cfg->batch);
    if (st->seed != t->cfg->seed)
        return basin_error(BASIN_ERR_USAGE, "checkpoint %s was trained with --seed %llu, not %llu", ck->path,
                           (unsigned long long)st->seed, (unsigned long long)t->cfg->seed);
    if (st->train_samples != info->count)
        return basin_error(BASIN_ERR_USAGE, "checkpoint %s was trained on %llu samples, this run has %zu",
                           ck->path, (unsigned long long)st->train_samples, info->count);
    TRY(config_resume_check(st->config_text, t->cfg, ck->path));
    /* A new length is allowed (--epochs, --max-steps); the cosine schedule
     * spans the run, so its learning rates change from here on. */
    char e[64], m[64];
    if (t->cfg->schedule == SCHEDULE_COSINE && config_describe_value(st->config_text, "epochs", e, sizeof e)) {
        uint64_t was = strtoull(e, NULL, 10) * t->steps_per_epoch;
        unsigned long long ms = config_describe_value(st->config_text, "max_steps", m, sizeof m) ?
                                    strtoull(m, NULL, 10) : 0;
        if (ms > 0 && ms < was) was = ms;
        if (was != t->total_steps)
            basin_info("basin: note: the run now ends at step %llu, not %llu: the cosine schedule is stretched to "
                       "it, so from step %llu on the learning rate differs from the original run's",
                       (unsigned long long)t->total_steps, (unsigned long long)was,
                       (unsigned long long)st->next_step);
    }
    return BASIN_OK;
}

int ckpt_resume_setup(Trainer *t)
{
    const TrainConfig *cfg = t->cfg;
    if (!cfg->resume) return BASIN_OK;
    int found = 0, rc = BASIN_OK;
    if (t->rank == 0) {
        if (strcmp(cfg->resume, "auto") == 0) {
            rc = checkpoint_latest(t->ckpt_dir, &t->resume, &found);
            if (!rc && !found) basin_info("basin: no checkpoint in %s: starting from step 0", t->ckpt_dir);
        } else {
            rc = checkpoint_read(cfg->resume, &t->resume);
            found = rc == BASIN_OK;
        }
        if (!rc && found) rc = resume_check(t, &t->resume);
    }
    int msg[2] = {rc, found};
    BASIN_MPI(MPI_Bcast(msg, 2, MPI_INT, 0, t->comm));
    TRY(msg[0]);
    t->resuming = msg[1];
    if (!t->resuming) return BASIN_OK;
    /* Every rank learns the position, and how much state the checkpoint
     * holds (t->resume.st.n_state: read on rank 0, told to the others). */
    uint64_t pos[3] = {t->resume.st.next_step, t->resume.st.n_state, t->resume.st.n_moment2};
    double el = t->resume.st.elapsed_s;
    BASIN_MPI(MPI_Bcast(pos, 3, MPI_UINT64_T, 0, t->comm));
    BASIN_MPI(MPI_Bcast(&el, 1, MPI_DOUBLE, 0, t->comm));
    t->resume.st.n_state = (size_t)pos[1];
    t->resume.st.n_moment2 = (size_t)pos[2];
    t->start_step = pos[0];
    t->elapsed_before = el;
    t->good_step = (long long)pos[0];
    if (t->rank == 0) snprintf(t->good_path, sizeof t->good_path, "%s", t->resume.path);
    return BASIN_OK;
}

/* Broadcast a float buffer from rank 0 in pieces MPI's int count can hold. */
static int bcast_floats(Trainer *t, float *buf, size_t n)
{
    const size_t chunk = (size_t)1 << 28;
    for (size_t off = 0; off < n; off += chunk) {
        size_t c = n - off < chunk ? n - off : chunk;
        BASIN_MPI(MPI_Bcast(buf + off, (int)c, MPI_FLOAT, 0, t->comm));
    }
    return BASIN_OK;
}

/* The parameters (which = 0) or the momentum (1) in host memory: the buffer
 * itself on the CPU, a copy in t->host on the GPU. */
const float *trainer_host_state(Trainer *t, const float *buf, int which)
{
    if (!t->on_gpu) return buf;
    float *h = t->host + (size_t)which * t->net->n_params;
    t->ops->to_host(h, buf, t->net->n_params * sizeof(float));
    return h;
}

/* Load the resumed state into the network on every rank, and place the
 * reader at the step to run next. */
int ckpt_resume_apply(Trainer *t)
{
    Net *net = t->net;
    size_t n = net->n_params;
    /* MPI moves host memory: on the GPU the state goes through t->host. */
    float *p = t->on_gpu ? t->host : net->params, *m = t->on_gpu ? t->host + n : net->mom;
    if (t->rank == 0) {
        memcpy(p, t->resume.st.params, n * sizeof(float));
        memcpy(m, t->resume.st.momentum, n * sizeof(float));
    }
    TRY(bcast_floats(t, p, n));
    TRY(bcast_floats(t, m, n));
    if (t->on_gpu) {
        t->ops->to_device(net->params, p, n * sizeof(float));
        t->ops->to_device(net->mom, m, n * sizeof(float));
    }
    /* The state (batch norm's running statistics), when the checkpoint has
     * one (resume_check made sure it fits): rank 0's copy on every rank. */
    size_t ns = t->resume.st.n_state;
    if (ns > 0) {
        float *s = t->on_gpu ? basin_malloc(ns * sizeof(float)) : net->state;
        if (!s) return BASIN_ERR_RUNTIME;
        if (t->rank == 0) memcpy(s, t->resume.st.state, ns * sizeof(float));
        int rc = bcast_floats(t, s, ns);
        if (!rc && t->on_gpu) t->ops->to_device(net->state, s, ns * sizeof(float));
        if (t->on_gpu) free(s);
        TRY(rc);
    }
    /* Adam's second moment: rank 0's copy on every rank; a checkpoint
     * without one (written before the optimizer kept it) starts it at 0. */
    if (t->sgd.adam_v) {
        if (t->resume.st.n_moment2 == n) {
            float *v = t->on_gpu ? t->host : t->sgd.adam_v;
            if (t->rank == 0) memcpy(v, t->resume.st.moment2, n * sizeof(float));
            TRY(bcast_floats(t, v, n));
            if (t->on_gpu) t->ops->to_device(t->sgd.adam_v, v, n * sizeof(float));
        } else {
            basin_warn("checkpoint %s holds no second moment for --optimizer %s: it starts again from 0",
                       t->rank == 0 ? t->resume.path : "", optim_name(t->sgd.kind));
        }
    }
    uint64_t spe = t->steps_per_epoch;
    /* Reader processes are told the start step when the loop starts. */
    if (t->train) TRY(reader_seek(t->train, t->start_step / spe, t->start_step % spe));
    /* --balance auto goes on with the checkpoint's shares (and its readers). */
    TRY(balance_resume(t, t->rank == 0 ? t->resume.st.balance : NULL));
    basin_info("basin: resumed from %s at step %llu (epoch %llu)", t->rank == 0 ? t->resume.path : "",
               (unsigned long long)t->start_step, (unsigned long long)(t->start_step / spe + 1));
    return BASIN_OK;
}

/* Where a resume would start from now, for the lines that say what was
 * lost: "step 100 (out/checkpoints/ckpt-100.h5)" or "step 0 (no checkpoint
 * yet)". */
static void describe_good(const Trainer *t, char *buf, size_t len)
{
    if (t->good_step < 0) snprintf(buf, len, "step 0 (no checkpoint yet)");
    else snprintf(buf, len, "step %lld (%s)", t->good_step, t->good_path);
}

static unsigned long long steps_lost(const Trainer *t, uint64_t step)
{
    long long good = t->good_step < 0 ? 0 : t->good_step;
    return step > (uint64_t)good ? (unsigned long long)(step - (uint64_t)good) : 0ull;
}

/* The outcome as --status-file records it (one line, keys as documented). */
static void format_status(const Trainer *t, int code, uint64_t step, char *buf, size_t len)
{
    snprintf(buf, len, "exit=%d step=%llu checkpoint_step=%lld lost=%llu checkpoint=%s\n", code,
             (unsigned long long)step, t->good_step, steps_lost(t, step), t->good_step < 0 ? "" : t->good_path);
}

/* The network's state buffer (batch norm's running statistics) in host
 * memory: the buffer itself on the CPU, a copy in *copy (the caller frees
 * it) on the GPU; NULL when the network has none. */
static int host_net_state(Trainer *t, const float **out, float **copy)
{
    const Net *net = t->net;
    *out = NULL, *copy = NULL;
    if (net->n_state == 0) return BASIN_OK;
    if (!t->on_gpu) {
        *out = net->state;
        return BASIN_OK;
    }
    *copy = basin_malloc(net->n_state * sizeof(float));
    if (!*copy) return BASIN_ERR_RUNTIME;
    t->ops->to_host(*copy, net->state, net->n_state * sizeof(float));
    *out = *copy;
    return BASIN_OK;
}

/* Rank 0 writes the replicated state; every rank learns whether it worked.
 * A failure is one line, printed by the writer. */
static int write_checkpoint(Trainer *t, uint64_t next_step, const char *why)
{
    const TrainConfig *cfg = t->cfg;
    int rc = BASIN_OK;
    double t0 = basin_clock();
    char path[4096] = "";
    TRY(grads_gather_momentum(t));
    if (t->rank == 0) {
        const DatasetInfo *info = &t->train_info;
        char text[4096];
        config_describe(cfg, text, sizeof text);
        /* The layer table and the state: a failure here (out of memory,
         * one line said so) is the checkpoint's failure, like a failed
         * write. */
        char *table = net_layer_table(t->net);
        char *balance = t->bw ? balance_text(t) : NULL;
        const float *state = NULL;
        float *state_copy = NULL;
        /* Adam's second moment (whole after grads_gather_momentum). */
        size_t n2 = t->sgd.adam_v ? t->net->n_params : 0;
        float *moment2_copy = n2 && t->on_gpu ? basin_malloc(n2 * sizeof(float)) : NULL;
        const float *moment2 = t->on_gpu ? moment2_copy : t->sgd.adam_v;
        if (moment2_copy) t->ops->to_host(moment2_copy, t->sgd.adam_v, n2 * sizeof(float));
        if (!table || (t->bw && !balance) || (n2 && !moment2) || host_net_state(t, &state, &state_copy) != BASIN_OK) {
            free(table);
            free(balance);
            free(moment2_copy);
            rc = BASIN_ERR_RUNTIME;
            goto told;
        }
        CheckpointState st = {
            .model_spec = model_resolve(cfg->model), .config_text = text, .config_hash = config_hash(cfg),
            .seed = cfg->seed, .global_batch = cfg->batch, .world_size = (uint32_t)t->world,
            .train_samples = info->count, .in_c = info->c, .in_h = info->h, .in_w = info->w,
            .classes = info->classes, .next_step = next_step, .epoch = next_step / t->steps_per_epoch,
            .step_in_epoch = next_step % t->steps_per_epoch, .samples_seen = next_step * cfg->batch,
            .elapsed_s = t->elapsed_before + (t0 - t->t_start), .n_params = t->net->n_params,
            .params = trainer_host_state(t, t->net->params, 0), .momentum = trainer_host_state(t, t->net->mom, 1),
            .n_state = t->net->n_state, .state = state, .layer_table = table,
            .n_moment2 = n2, .moment2 = moment2, .balance = balance,
        };
        if (t->stall_s > 0) nanosleep(&(struct timespec){(time_t)t->stall_s, (long)(fmod(t->stall_s, 1.0) * 1e9)}, NULL);
        rc = checkpoint_write(t->ckpt_dir, &st, cfg->keep_checkpoints, path, sizeof path);
        free(table);
        free(balance);
        free(state_copy);
        free(moment2_copy);
    }
told:
    BASIN_MPI(MPI_Bcast(&rc, 1, MPI_INT, 0, t->comm));
    t->last_ckpt = basin_clock();
    trace_event(&t->trace, "checkpoint", "checkpoint", 0, t0, t->last_ckpt);
    if (rc != BASIN_OK) return rc;
    t->good_step = (long long)next_step;
    if (t->rank == 0) snprintf(t->good_path, sizeof t->good_path, "%s", path);
    basin_info("basin: checkpoint (%s) at step %llu: %s in %.2f s", why, (unsigned long long)next_step, path,
               t->last_ckpt - t0);
    return BASIN_OK;
}

/* A periodic or timed checkpoint failed: go on, or stop with 74. */
int ckpt_periodic(Trainer *t, uint64_t step, const char *why)
{
    if (write_checkpoint(t, step, why) == BASIN_OK) return BASIN_OK;
    char good[4200];
    describe_good(t, good, sizeof good);
    if (t->cfg->checkpoint_fail_stop) {
        basin_info("basin: stopped after step %llu because its checkpoint failed (--checkpoint-failure stop): "
                   "exit %d; resuming starts from %s: %llu step(s) lost", (unsigned long long)step,
                   BASIN_EXIT_CHECKPOINT_FAILED, good, steps_lost(t, step));
        return BASIN_EXIT_CHECKPOINT_FAILED;
    }
    basin_info("basin: training goes on after the failed checkpoint of step %llu; a resume would start from %s "
               "(--checkpoint-failure stop ends the run instead)", (unsigned long long)step, good);
    return BASIN_OK;
}

/* Stop at this step boundary for a signal: a checkpoint of `done` steps
 * within --grace-seconds, then 75; 76 when it could not be written. */
int ckpt_preempted_stop(Trainer *t, uint64_t done)
{
    const TrainConfig *cfg = t->cfg;
    double s0 = basin_clock();
    char good[4200], line[8400], status[8400];
    describe_good(t, good, sizeof good);
    preempt_clear();
    snprintf(line, sizeof line,
             "basin: error: the grace period (--grace-seconds %g) ran out before the checkpoint of step %llu was "
             "written: exit %d; resuming starts from %s: %llu step(s) lost\n", cfg->grace_seconds,
             (unsigned long long)done, BASIN_EXIT_PREEMPTED_UNSAVED, good, steps_lost(t, done));
    format_status(t, BASIN_EXIT_PREEMPTED_UNSAVED, done, status, sizeof status);
    /* Rank 0 speaks; the others wait for it a little longer, so that their
     * exit does not get it killed before it has said what happened. */
    preempt_arm_grace(t->rank == 0 ? cfg->grace_seconds : cfg->grace_seconds + 2.0, BASIN_EXIT_PREEMPTED_UNSAVED,
                      t->rank == 0 ? line : NULL, t->rank == 0 ? cfg->status_file : NULL, status);
    int rc = write_checkpoint(t, done, "preempted");
    t->steps_done = done;
    if (rc == BASIN_ERR_RUNTIME || rc == BASIN_ERR_USAGE) {
        /* The checkpoint failed (the error line is out): every rank exits 76. */
        describe_good(t, good, sizeof good);
        basin_info("basin: preempted after step %llu, but its checkpoint failed: exit %d; resuming starts from "
                   "%s: %llu step(s) lost", (unsigned long long)done, BASIN_EXIT_PREEMPTED_UNSAVED, good,
                   steps_lost(t, done));
        return BASIN_EXIT_PREEMPTED_UNSAVED;
    }
    if (rc) return rc;
    /* Written: the time that is left may only end in 75. */
    format_status(t, BASIN_EXIT_PREEMPTED, done, status, sizeof status);
    double left = cfg->grace_seconds - (basin_clock() - s0);
    preempt_arm_grace(left > 1.0 ? left : 1.0, BASIN_EXIT_PREEMPTED, NULL, t->rank == 0 ? cfg->status_file : NULL,
                      status);
    basin_info("basin: preempted after step %llu; checkpoint written, stopped in %.2f s; exit %d (resumable, 0 "
               "steps lost)", (unsigned long long)done, basin_clock() - s0, BASIN_EXIT_PREEMPTED);
    return BASIN_EXIT_PREEMPTED;
}

/* Rank 0 takes the output and checkpoint folders for this run, before it
 * reads a checkpoint to resume from, and removes what writers that died
 * left there; every rank learns the outcome. */
int ckpt_lock_outputs(Trainer *t)
{
    int rc = BASIN_OK;
    if (t->rank == 0) {
        /* --status-file is written at exit: its folder must be writable now,
         * not found wanting after the run (one line, and no status then). */
        const char *sf = t->cfg->status_file;
        if (sf) {
            char dir[4096];
            snprintf(dir, sizeof dir, "%s", sf);
            char *slash = strrchr(dir, '/');
            if (slash == dir) dir[1] = '\0';
            else if (slash) *slash = '\0';
            else snprintf(dir, sizeof dir, ".");
            basin_errors_hold(); /* its own line below names the option */
            int made = basin_make_dirs(dir);
            basin_errors_release(0);
            if (made || access(dir, W_OK | X_OK) != 0)
                rc = basin_error(BASIN_ERR_USAGE, "--status-file %s: cannot write in %s: %s", sf, dir,
                                 made ? "not a folder and cannot be made one" : strerror(errno));
        }
        if (!rc) rc = runlock_acquire(&t->lock, t->cfg->output_dir, "--output-dir");
        if (!rc) rc = runlock_acquire(&t->lock, t->ckpt_dir, "--checkpoint-dir");
        if (!rc && checkpoint_remove_unfinished(t->ckpt_dir) < 0) rc = BASIN_ERR_RUNTIME;
    }
    BASIN_MPI(MPI_Bcast(&rc, 1, MPI_INT, 0, t->comm));
    return rc;
}

/* --status-file: rank 0 records the outcome, replacing the file atomically
 * (a reader sees the old line or the new one, never a part). */
void ckpt_write_status(const Trainer *t, int code)
{
    const char *path = t->cfg->status_file;
    /* A refused run (2) has nothing to record, and its error may be about
     * this very file. */
    if (!path || t->rank != 0 || t->cfg->check_only || code == BASIN_ERR_USAGE) return;
    char line[8400], tmp[4200];
    format_status(t, code, t->steps_done, line, sizeof line);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    int ok = f && fputs(line, f) >= 0;
    if (f && fclose(f) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        basin_warn("cannot write the status file %s: %s", path, strerror(errno));
        unlink(tmp);
    }
}

int ckpt_final(Trainer *t)
{
    if (write_checkpoint(t, t->total_steps, "final") == BASIN_OK) return BASIN_OK;
    char good[4200];
    describe_good(t, good, sizeof good);
    basin_info("basin: trained %llu steps, but the final checkpoint failed: exit %d; resuming starts from %s: "
               "%llu step(s) lost", (unsigned long long)t->total_steps, BASIN_EXIT_CHECKPOINT_FAILED, good,
               steps_lost(t, t->total_steps));
    return BASIN_EXIT_CHECKPOINT_FAILED;
}

int ckpt_early_stop(Trainer *t)
{
    char good[4200];
    describe_good(t, good, sizeof good);
    preempt_clear();
    basin_info("basin: stopped by a signal before the first step; nothing new to save: exit %d (resumable "
               "from %s, 0 steps lost)", BASIN_EXIT_PREEMPTED, good);
    return BASIN_EXIT_PREEMPTED;
}
