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

const char *const ckpt_buffer_names[CKPT_N_BUFFERS] = {"params", "momentum", "state", "moment2"};

size_t ckpt_buffer_count(const CheckpointState *st, int b)
{
    return b == CKPT_STATE ? st->n_state : b == CKPT_MOMENT2 ? st->n_moment2 : st->n_params;
}

const float *ckpt_buffer_data(const CheckpointState *st, int b)
{
    return b == CKPT_PARAMS     ? st->params
           : b == CKPT_MOMENTUM ? st->momentum
           : b == CKPT_STATE    ? st->state
                                : st->moment2;
}

static unsigned char *put_u64(unsigned char *p, uint64_t v)
{
    memcpy(p, &v, 8);
    return p + 8;
}

static unsigned char *put_text(unsigned char *p, const char *s, size_t len)
{
    p = put_u64(p, len);
    memcpy(p, s, len);
    return p + len;
}

/* XXH64 of the canonical encoding of every field and string (FORMAT.md,
 * "Checksums"). The host is little-endian, so memcpy is the encoding. */
int ckpt_header_hash(const CheckpointState *st, uint32_t version, const uint64_t xxh[CKPT_N_BUFFERS], uint64_t *out)
{
    const char *spec = ckpt_str(st->model_spec), *conf = ckpt_str(st->config_text);
    const char *table = version >= 2 ? ckpt_str(st->layer_table) : "";
    size_t spec_len = strlen(spec), conf_len = strlen(conf), table_len = strlen(table);
    size_t bytes = 4 + 3 * 8 + 8 + spec_len + 8 + conf_len;
    if (version >= 2) bytes += 2 * 8 + 8 + table_len;
    int moment2 = version >= 2 && st->n_moment2 > 0;
    if (moment2) bytes += 2 * 8;
    const char *balance = version >= 2 ? ckpt_str(st->balance) : "";
    size_t balance_len = strlen(balance);
    if (balance_len) bytes += 8 + balance_len;
    for (size_t i = 0; i < CKPT_N_FIELDS; i++) bytes += ckpt_kind_bytes(ckpt_fields[i].kind);
    unsigned char *buf = basin_malloc(bytes);
    if (!buf) return BASIN_ERR_RUNTIME;
    unsigned char *p = buf;
    memcpy(p, &version, 4), p += 4;
    for (size_t i = 0; i < CKPT_N_FIELDS; i++) {
        size_t k = ckpt_kind_bytes(ckpt_fields[i].kind);
        memcpy(p, (const char *)st + ckpt_fields[i].offset, k), p += k;
    }
    p = put_u64(p, st->n_params);
    p = put_u64(p, xxh[CKPT_PARAMS]);
    p = put_u64(p, xxh[CKPT_MOMENTUM]);
    if (version >= 2) {
        p = put_u64(p, st->n_state);
        p = put_u64(p, xxh[CKPT_STATE]);
    }
    /* Only when present, so that files without it hash as before. */
    if (moment2) {
        p = put_u64(p, st->n_moment2);
        p = put_u64(p, xxh[CKPT_MOMENT2]);
    }
    p = put_text(p, spec, spec_len);
    p = put_text(p, conf, conf_len);
    if (version >= 2) p = put_text(p, table, table_len);
    if (balance_len) p = put_text(p, balance, balance_len); /* only when present, as the second moment */
    *out = xxh64(buf, (size_t)(p - buf), 0);
    free(buf);
    return BASIN_OK;
}
