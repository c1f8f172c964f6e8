/* The checkpoints of a folder: "ckpt-<step>.h5" files, listed by step;
 * rotation; the newest one that verifies; and the unfinished files that a
 * writer killed while writing leaves behind. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoints/ckpt_internal.h"
#include "core/error.h"

/* ---- the checkpoints of a folder ------------------------------------------ */

/* "ckpt-<digits>.h5" -> step. */
static int parse_name(const char *name, uint64_t *step)
{
    if (strncmp(name, "ckpt-", 5) != 0) return 0;
    const char *d = name + 5;
    size_t nd = strspn(d, "0123456789");
    if (nd == 0 || nd > 19 || strcmp(d + nd, ".h5") != 0) return 0;
    *step = strtoull(d, NULL, 10);
    return 1;
}

static int entry_cmp(const void *a, const void *b)
{
    const CkptEntry *x = a, *y = b;
    if (x->step != y->step) return x->step < y->step ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* The checkpoints of dir sorted by step (oldest first); *n = 0 when dir is
 * missing. */
int ckpt_list(const char *dir, CkptEntry **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return BASIN_OK;
        return basin_error(BASIN_ERR_USAGE, "cannot list checkpoint directory %s: %s", dir, strerror(errno));
    }
    CkptEntry *list = NULL;
    size_t cap = 0;
    int rc = BASIN_OK;
    struct dirent *de;
    while ((de = readdir(d))) {
        uint64_t step;
        if (!parse_name(de->d_name, &step)) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            CkptEntry *e = realloc(list, cap * sizeof *e);
            if (!e) {
                rc = basin_error(BASIN_ERR_RUNTIME, "out of memory listing %s", dir);
                break;
            }
            list = e;
        }
        list[*n].step = step;
        memcpy(list[*n].name, de->d_name, strlen(de->d_name) + 1); /* parse_name bounds it to 27 bytes */
        (*n)++;
    }
    closedir(d);
    if (rc) {
        free(list);
        *n = 0;
        return rc;
    }
    if (*n) qsort(list, *n, sizeof *list, entry_cmp);
    *out = list;
    return BASIN_OK;
}

/* Delete all but the newest `keep` checkpoints, never the one just written.
 * The new checkpoint is safe already, so a failed delete is only a warning. */
void ckpt_rotate(const char *dir, int keep, const char *written_name)
{
    CkptEntry *list = NULL;
    size_t n = 0;
    if (keep <= 0 || ckpt_list(dir, &list, &n) != BASIN_OK) return;
    for (size_t i = 0; i + (size_t)keep < n; i++) {
        if (strcmp(list[i].name, written_name) == 0) continue;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, list[i].name);
        if (unlink(path) != 0 && errno != ENOENT) basin_warn("cannot delete old checkpoint %s: %s", path, strerror(errno));
    }
    free(list);
}

int checkpoint_latest(const char *dir, Checkpoint *out, int *found)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    *found = 0;
    if (!dir || !*dir) return basin_error(BASIN_ERR_USAGE, "checkpoint: no directory given");
    memset(out, 0, sizeof *out);
    CkptEntry *list = NULL;
    size_t n = 0;
    TRY(ckpt_list(dir, &list, &n));
    int rc = BASIN_OK;
    for (size_t i = n; i-- > 0;) {
        char path[PATH_MAX], why[512];
        snprintf(path, sizeof path, "%s/%s", dir, list[i].name);
        rc = ckpt_read_verified(path, out, why, sizeof why);
        if (rc == BASIN_OK) {
            *found = 1;
            break;
        }
        if (rc != BASIN_ERR_USAGE) break;
        basin_warn("skipping checkpoint %s: %s", path, why);
        rc = BASIN_OK;
    }
    /* Starting over silently would throw away the run: refuse instead. */
    if (!rc && !*found && n > 0)
        rc = basin_error(BASIN_ERR_USAGE, "%s: none of its %zu checkpoints verifies (see above)", dir, n);
    free(list);
    return rc;
}


/* The name ckpt_write.c gives a checkpoint while it is written. */
/* ".ckpt-<digits>.h5.tmp.<digits>" */
static int is_unfinished(const char *name)
{
    const char *p = name;
    if (strncmp(p, ".ckpt-", 6) != 0) return 0;
    p += 6;
    if (*p < '0' || *p > '9') return 0;
    while (*p >= '0' && *p <= '9') p++;
    if (strncmp(p, ".h5.tmp.", 8) != 0) return 0;
    p += 8;
    if (*p < '0' || *p > '9') return 0;
    while (*p >= '0' && *p <= '9') p++;
    return *p == '\0';
}

int checkpoint_remove_unfinished(const char *ckpt_dir)
{
    DIR *d = opendir(ckpt_dir);
    if (!d) {
        if (errno == ENOENT) return 0;
        basin_error(BASIN_ERR_RUNTIME, "cannot list %s: %s", ckpt_dir, strerror(errno));
        return -1;
    }
    int removed = 0, failed = 0;
    char first[256] = "";
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!is_unfinished(e->d_name)) continue;
        char path[4096];
        if (snprintf(path, sizeof path, "%s/%s", ckpt_dir, e->d_name) >= (int)sizeof path) continue;
        if (unlink(path) == 0) {
            if (!removed++) snprintf(first, sizeof first, "%s", e->d_name);
        } else if (errno != ENOENT && !failed++) {
            basin_warn("cannot delete the unfinished checkpoint %s: %s", path, strerror(errno));
        }
    }
    closedir(d);
    if (removed)
        basin_info("basin: removed %d unfinished checkpoint file(s) of a writer that died (%s%s) from %s", removed,
                   first, removed > 1 ? ", ..." : "", ckpt_dir);
    return removed;
}
