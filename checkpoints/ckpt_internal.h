/* Shared by the files of checkpoints/ (not part of the API, checkpoint.h):
 *
 *   ckpt_format.c  the numeric fields and the header checksum
 *   ckpt_image.c   the in-memory HDF5 image: HDF5 writes the metadata into
 *                  memory through a small virtual file driver
 *   ckpt_write.c   writing a checkpoint: pwrite around the image, fsync,
 *                  atomic rename, rotation
 *   ckpt_list.c    the checkpoints of a folder: listing, choosing the newest
 *                  good one, removing unfinished files of dead writers
 *   ckpt_read.c    reading and verifying one file (in a guarded child first)
 */
#ifndef BASIN_CKPT_INTERNAL_H
#define BASIN_CKPT_INTERNAL_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

#include "checkpoints/checkpoint.h"
#include "reader/h5check.h" /* h5check_reason: HDF5's reason for a failure */

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoints are written from host memory as little-endian data: little-endian hosts only"
#endif

#define CKPT_MAGIC "basin-checkpoint"
#define CKPT_MAX_STRING 60000            /* v1 object headers cap one attribute below 64 KiB */
#define CKPT_MAX_TABLE ((size_t)16 << 20) /* bytes of a layer table: thousands of layers */
#define CKPT_MAX_META ((size_t)96 << 20) /* metadata and the layer table; the buffers never go through HDF5 */
#define CKPT_IO_CHUNK ((size_t)1 << 30)

/* ---- the numeric fields, in the order of the header checksum (ckpt_format.c) */

enum { F_U64, F_U32, F_I32, F_F64 };

typedef struct {
    const char *name;
    int kind;
    size_t offset; /* in CheckpointState */
} Field;

extern const Field ckpt_fields[14];
#define CKPT_N_FIELDS (sizeof ckpt_fields / sizeof ckpt_fields[0])

/* The raw buffers, in the order of their checksums in the header checksum:
 * params, momentum and (version 2) state and the optional second moment. */
enum { CKPT_PARAMS, CKPT_MOMENTUM, CKPT_STATE, CKPT_MOMENT2, CKPT_N_BUFFERS };
extern const char *const ckpt_buffer_names[CKPT_N_BUFFERS];

size_t ckpt_kind_bytes(int kind);
hid_t ckpt_kind_file_type(int kind);
hid_t ckpt_kind_mem_type(int kind);
const char *ckpt_kind_name(int kind);
static inline const char *ckpt_str(const char *s) { return s ? s : ""; }
/* XXH64 of the canonical encoding of every field and string of format
 * `version` (FORMAT.md), given the buffers' checksums (xxh[CKPT_STATE] is
 * not used for version 1). */
int ckpt_header_hash(const CheckpointState *st, uint32_t version, const uint64_t xxh[CKPT_N_BUFFERS], uint64_t *out);
/* The length and start of buffer b of st (n_state may be 0: no /state;
 * n_moment2 0: no /moment2). */
size_t ckpt_buffer_count(const CheckpointState *st, int b);
const float *ckpt_buffer_data(const CheckpointState *st, int b);

/* ---- the in-memory image (ckpt_image.c) ------------------------------------ */

typedef struct {
    haddr_t addr;
    size_t size;
    unsigned char *bytes;
} CkptExtent;

/* Everything HDF5 wrote, in order (a later extent overrides an earlier one). */
typedef struct {
    CkptExtent *ext;
    size_t n, cap, total;
    haddr_t eoa;
} CkptSink;

/* HDF5's part of the file for st in format `version` with the given
 * checksums, into sink (the layer table's bytes included); the byte offsets
 * of the buffers' datasets through off (HADDR_UNDEF for one not stored: the
 * state when n_state is 0, or in version 1). */
int ckpt_build_metadata(const CheckpointState *st, uint32_t version, const uint64_t xxh[CKPT_N_BUFFERS],
                        uint64_t header_xxh, CkptSink *sink, haddr_t off[CKPT_N_BUFFERS]);
void ckpt_sink_free(CkptSink *s);

/* ---- writing (ckpt_write.c) ----------------------------------------------- */

/* checkpoint_write in format `version` (CHECKPOINT_FORMAT_OLDEST to
 * CHECKPOINT_FORMAT_VERSION): the tests write version-1 files this way. A
 * state or layer table that `version` cannot hold is a usage error. */
int ckpt_write_version(const char *dir, const CheckpointState *st, uint32_t version, int keep, char *path_out,
                       size_t path_len);

/* ---- a folder (ckpt_list.c) ------------------------------------------------ */

typedef struct {
    uint64_t step;
    char name[64];
} CkptEntry;

/* The checkpoints of dir sorted by step (oldest first); *n = 0 when dir is
 * missing. */
int ckpt_list(const char *dir, CkptEntry **out, size_t *n);
/* Delete all but the newest keep checkpoints, never written_name. */
void ckpt_rotate(const char *dir, int keep, const char *written_name);

/* ---- reading (ckpt_read.c) ------------------------------------------------- */

/* Read and verify path into out: BASIN_ERR_USAGE with the reason in why for
 * a bad file (nothing printed); BASIN_ERR_RUNTIME (printed) otherwise. */
int ckpt_read_verified(const char *path, Checkpoint *out, char *why, size_t why_len);

#endif
