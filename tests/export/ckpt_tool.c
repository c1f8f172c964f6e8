/* ckpt_tool: checkpoints that the trainer no longer writes, for the export
 * tests, made from one it wrote.
 *
 *   ckpt_tool v1 IN DIR           IN again, as format version 1 (no layer
 *                                 table, no state: a state is dropped, as
 *                                 a build before version 2 wrote it) in DIR
 *   ckpt_tool table IN DIR FILE   IN again (version 2) with FILE's text as
 *                                 its layer table, checksums made anew
 *
 * Prints the written path. Exit 0, or 1 after a line on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoint.h"
#include "checkpoints/ckpt_internal.h"

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0, got;
    char chunk[65536];
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + got + 1 > cap) {
            cap = 2 * (len + got + 1);
            char *b = realloc(buf, cap);
            if (!b) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = b;
        }
        memcpy(buf + len, chunk, got);
        len += got;
    }
    fclose(f);
    if (!buf) buf = calloc(1, 1);
    else buf[len] = '\0';
    return buf;
}

int main(int argc, char **argv)
{
    int v1 = argc == 4 && strcmp(argv[1], "v1") == 0, table = argc == 5 && strcmp(argv[1], "table") == 0;
    if (!v1 && !table) {
        fprintf(stderr, "usage: ckpt_tool v1 IN DIR | ckpt_tool table IN DIR FILE\n");
        return 1;
    }
    Checkpoint c;
    if (checkpoint_read(argv[2], &c) != 0) return 1;
    CheckpointState st = c.st;
    char *text = NULL;
    if (v1) {
        st.layer_table = NULL;
        st.n_state = 0, st.state = NULL;
    } else {
        text = slurp(argv[4]);
        if (!text) {
            fprintf(stderr, "ckpt_tool: cannot read %s\n", argv[4]);
            checkpoint_free(&c);
            return 1;
        }
        st.layer_table = text;
    }
    char path[4096];
    int rc = ckpt_write_version(argv[3], &st, v1 ? 1 : CHECKPOINT_FORMAT_VERSION, 0, path, sizeof path);
    if (!rc) printf("%s\n", path);
    free(text);
    checkpoint_free(&c);
    return rc ? 1 : 0;
}
