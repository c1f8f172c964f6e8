/* The parts of the format that writing and reading share: the numeric
 * fields and their types, and the header checksum. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/ckpt_internal.h"
#include "checkpoints/xxh64.h"
#include "core/error.h"

/* ---- the numeric fields, in the order of the header checksum ------------- */

const Field ckpt_fields[] = {
    {"config_hash", F_U64, offsetof(CheckpointState, config_hash)},
    {"seed", F_U64, offsetof(CheckpointState, seed)},
    {"global_batch", F_U64, offsetof(CheckpointState, global_batch)},
    {"world_size", F_U32, offsetof(CheckpointState, world_size)},
    {"train_samples", F_U64, offsetof(CheckpointState, train_samples)},
    {"in_c", F_I32, offsetof(CheckpointState, in_c)},
    {"in_h", F_I32, offsetof(CheckpointState, in_h)},
    {"in_w", F_I32, offsetof(CheckpointState, in_w)},
    {"classes", F_I32, offsetof(CheckpointState, classes)},
    {"next_step", F_U64, offsetof(CheckpointState, next_step)},
    {"epoch", F_U64, offsetof(CheckpointState, epoch)},
    {"step_in_epoch", F_U64, offsetof(CheckpointState, step_in_epoch)},
    {"samples_seen", F_U64, offsetof(CheckpointState, samples_seen)},
    {"elapsed_s", F_F64, offsetof(CheckpointState, elapsed_s)},
};

size_t ckpt_kind_bytes(int kind) { return kind == F_U32 || kind == F_I32 ? 4 : 8; }

hid_t ckpt_kind_file_type(int kind)
{
    switch (kind) {
    case F_U64: return H5T_STD_U64LE;
    case F_U32: return H5T_STD_U32LE;
    case F_I32: return H5T_STD_I32LE;
    default: return H5T_IEEE_F64LE;
    }
}

hid_t ckpt_kind_mem_type(int kind)
{
    switch (kind) {
    case F_U64: return H5T_NATIVE_UINT64;
    case F_U32: return H5T_NATIVE_UINT32;
    case F_I32: return H5T_NATIVE_INT32;
    default: return H5T_NATIVE_DOUBLE;
    }
}

const char *ckpt_kind_name(int kind)
{
    switch (kind) {
    case F_U64: return "uint64 little-endian";
    case F_U32: return "uint32 little-endian";
    case F_I32: return "int32 little-endian";
    default: return "float64 little-endian";
    }
}

/* XXH64 of the canonical encoding of every field and string (FORMAT.md,
 * "Header checksum"). The host is little-endian, so memcpy is the encoding. */
int ckpt_header_hash(const CheckpointState *st, uint64_t params_xxh, uint64_t momentum_xxh, uint64_t *out)
{
    const char *spec = ckpt_str(st->model_spec), *conf = ckpt_str(st->config_text);
    size_t spec_len = strlen(spec), conf_len = strlen(conf);
    size_t bytes = 4 + 4 * 8 + 8 + spec_len + 8 + conf_len;
    for (size_t i = 0; i < CKPT_N_FIELDS; i++) bytes += ckpt_kind_bytes(ckpt_fields[i].kind);
    unsigned char *buf = basin_malloc(bytes);
    if (!buf) return BASIN_ERR_RUNTIME;
    unsigned char *p = buf;
    uint32_t version = CHECKPOINT_FORMAT_VERSION;
    memcpy(p, &version, 4), p += 4;
    for (size_t i = 0; i < CKPT_N_FIELDS; i++) {
        size_t k = ckpt_kind_bytes(ckpt_fields[i].kind);
        memcpy(p, (const char *)st + ckpt_fields[i].offset, k), p += k;
    }
    uint64_t n = st->n_params, sl = spec_len, cl = conf_len;
    memcpy(p, &n, 8), p += 8;
    memcpy(p, &params_xxh, 8), p += 8;
    memcpy(p, &momentum_xxh, 8), p += 8;
    memcpy(p, &sl, 8), p += 8;
    memcpy(p, spec, spec_len), p += spec_len;
    memcpy(p, &cl, 8), p += 8;
    memcpy(p, conf, conf_len), p += conf_len;
    *out = xxh64(buf, (size_t)(p - buf), 0);
    free(buf);
    return BASIN_OK;
}
