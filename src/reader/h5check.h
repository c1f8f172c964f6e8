/* Is the data an HDF5 dataset declares really in the file? Shared by the data
 * set reader and the checkpoint reader, so that neither allocates or reads
 * for a size that only the metadata claims.
 *
 * HDF5 trusts a dataset's declared extent: a chunked dataset of 2^31 samples
 * that was never written is a few KB on disk, and reads of it return fill
 * values. Here every declared byte must be backed by storage inside the file:
 *   - contiguous: an address, and [address, address + bytes) within the file;
 *   - compact: the stored size is the declared size (it lives in the header);
 *   - chunked: every chunk of the extent is allocated, each lies inside the
 *     file, unfiltered chunks have exactly the chunk's size, and no chunk is
 *     larger than H5CHECK_MAX_CHUNK_BYTES (reading one sample decompresses
 *     its whole chunk). The chunks are looked up by coordinate
 *     (H5Dget_chunk_info_by_coord, HDF5 >= 1.10.5: one index lookup each);
 *     their number is first compared with the file size and with
 *     H5Dget_num_chunks, which walks only the chunks that exist, so a huge
 *     declared extent costs nothing before it is refused;
 *   - external files and virtual datasets are refused.
 *
 * Header-only (static functions) so that checkpoints/ needs no link to the
 * reader library. Every HDF5 return code is checked; a call that fails on a
 * file that opened is reported as damage, in the caller's one line.
 */
#ifndef BASIN_READER_H5CHECK_H
#define BASIN_READER_H5CHECK_H

#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>

#define H5CHECK_MAX_CHUNK_BYTES ((uint64_t)64 << 20)

/* The innermost message on HDF5's error stack of this thread. */
static inline herr_t h5check_walk_first(unsigned n, const H5E_error2_t *err, void *data)
{
    char *msg = data;
    if (n == 0 && err->desc) snprintf(msg, 256, "%s", err->desc);
    return 0;
}

static inline const char *h5check_reason(char msg[256])
{
    msg[0] = '\0';
    if (H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, h5check_walk_first, msg) < 0 || !msg[0])
        snprintf(msg, 256, "no detail from HDF5");
    return msg;
}

/* a * b into *out; 0 when it overflows. */
static inline int h5check_mul(uint64_t a, uint64_t b, uint64_t *out)
{
    if (b != 0 && a > UINT64_MAX / b) return 0;
    *out = a * b;
    return 1;
}

/* Chunked storage: every chunk of dims allocated and inside the file. */
static inline int h5check_chunks(hid_t ds, hid_t space, hid_t dcpl, int nd, const hsize_t *dims, uint64_t elem_bytes,
                          uint64_t file_bytes, char *why, size_t why_len)
{
    char h5[256];
    hsize_t cdims[H5S_MAX_RANK];
    if (H5Pget_chunk(dcpl, nd, cdims) != nd) {
        snprintf(why, why_len, "damaged chunk layout (%s)", h5check_reason(h5));
        return 1;
    }
    uint64_t chunk_bytes = elem_bytes, n_chunks = 1;
    for (int i = 0; i < nd; i++) {
        if (cdims[i] == 0) {
            snprintf(why, why_len, "damaged chunk layout (a chunk extent is 0)");
            return 1;
        }
        if (!h5check_mul(chunk_bytes, cdims[i], &chunk_bytes) || chunk_bytes > H5CHECK_MAX_CHUNK_BYTES) {
            snprintf(why, why_len, "has chunks of more than %llu MiB (re-write it with smaller chunks)",
                     (unsigned long long)(H5CHECK_MAX_CHUNK_BYTES >> 20));
            return 1;
        }
        uint64_t along = dims[i] / cdims[i] + (dims[i] % cdims[i] != 0);
        if (!h5check_mul(n_chunks, along, &n_chunks)) n_chunks = UINT64_MAX;
    }
    int nfilters = H5Pget_nfilters(dcpl);
    if (nfilters < 0) {
        snprintf(why, why_len, "damaged filter pipeline (%s)", h5check_reason(h5));
        return 1;
    }
    /* Each stored chunk takes at least a byte of the file. */
    if (n_chunks > file_bytes) {
        snprintf(why, why_len, "declares %llu chunks, more than a file of %llu bytes can store: "
                 "its data was never written", (unsigned long long)n_chunks, (unsigned long long)file_bytes);
        return 1;
    }
    hsize_t stored = 0;
    if (H5Dget_num_chunks(ds, space, &stored) < 0) {
        snprintf(why, why_len, "damaged chunk index (%s)", h5check_reason(h5));
        return 1;
    }
    if (stored < n_chunks) {
        snprintf(why, why_len, "only %llu of its %llu chunks are stored: the file was not completely written",
                 (unsigned long long)stored, (unsigned long long)n_chunks);
        return 1;
    }
    hsize_t at[H5S_MAX_RANK] = {0};
    for (uint64_t k = 0; k < n_chunks; k++) {
        unsigned mask = 0;
        haddr_t addr = HADDR_UNDEF;
        hsize_t size = 0;
        if (H5Dget_chunk_info_by_coord(ds, at, &mask, &addr, &size) < 0) {
            snprintf(why, why_len, "damaged chunk index (%s)", h5check_reason(h5));
            return 1;
        }
        if (addr == HADDR_UNDEF || size == 0) {
            snprintf(why, why_len, "the chunk at [%llu, ...] is not stored: the file was not completely written",
                     (unsigned long long)at[0]);
            return 1;
        }
        if ((uint64_t)addr > file_bytes || size > file_bytes - (uint64_t)addr) {
            snprintf(why, why_len, "the chunk at [%llu, ...] lies past the end of the file (%llu bytes at %llu, "
                     "file of %llu): truncated or damaged", (unsigned long long)at[0], (unsigned long long)size,
                     (unsigned long long)addr, (unsigned long long)file_bytes);
            return 1;
        }
        if (nfilters == 0 && size != chunk_bytes) {
            snprintf(why, why_len, "the chunk at [%llu, ...] holds %llu bytes, not %llu: damaged",
                     (unsigned long long)at[0], (unsigned long long)size, (unsigned long long)chunk_bytes);
            return 1;
        }
        for (int i = nd - 1; i >= 0; i--) { /* next chunk, last dimension fastest */
            at[i] += cdims[i];
            if (at[i] < dims[i]) break;
            at[i] = 0;
        }
    }
    return 0;
}

/* 0 when every byte ds declares (its extent times elem_bytes) is stored
 * inside a file of file_bytes bytes; else 1 with the reason in why (to follow
 * the dataset's name in the caller's line). */
static inline int h5check_storage(hid_t ds, uint64_t elem_bytes, uint64_t file_bytes, char *why, size_t why_len)
{
    char h5[256];
    int bad = 0;
    hid_t space = H5Dget_space(ds), dcpl = H5I_INVALID_HID;
    hsize_t dims[H5S_MAX_RANK];
    int nd = space < 0 ? -1 : H5Sget_simple_extent_ndims(space);
    if (nd < 0 || nd > H5S_MAX_RANK || H5Sget_simple_extent_dims(space, dims, NULL) != nd) {
        snprintf(why, why_len, "damaged dataspace (%s)", h5check_reason(h5));
        bad = 1;
        goto cleanup;
    }
    uint64_t bytes = elem_bytes;
    for (int i = 0; i < nd; i++) {
        if (!h5check_mul(bytes, dims[i], &bytes)) {
            snprintf(why, why_len, "declares more than 2^64 bytes of data");
            bad = 1;
            goto cleanup;
        }
    }
    dcpl = H5Dget_create_plist(ds);
    H5D_layout_t layout = dcpl < 0 ? H5D_LAYOUT_ERROR : H5Pget_layout(dcpl);
    int external = layout == H5D_LAYOUT_ERROR ? -1 : H5Pget_external_count(dcpl);
    if (layout == H5D_LAYOUT_ERROR || external < 0) {
        snprintf(why, why_len, "damaged storage layout (%s)", h5check_reason(h5));
        bad = 1;
        goto cleanup;
    }
    if (external > 0 || layout == H5D_VIRTUAL) {
        snprintf(why, why_len, "keeps its data in other files (%s): not supported",
                 external > 0 ? "external storage" : "a virtual dataset");
        bad = 1;
        goto cleanup;
    }
    if (bytes == 0) goto cleanup;
    if (layout == H5D_CONTIGUOUS) {
        haddr_t off = H5Dget_offset(ds);
        if (off == HADDR_UNDEF) {
            snprintf(why, why_len, "declares %llu bytes but none are stored: its data was never written",
                     (unsigned long long)bytes);
            bad = 1;
        } else if ((uint64_t)off > file_bytes || bytes > file_bytes - (uint64_t)off) {
            snprintf(why, why_len, "declares %llu bytes at byte %llu, past the end of the file (%llu bytes): "
                     "truncated or damaged", (unsigned long long)bytes, (unsigned long long)off,
                     (unsigned long long)file_bytes);
            bad = 1;
        }
    } else if (layout == H5D_COMPACT) {
        hsize_t stored = H5Dget_storage_size(ds);
        if (stored < bytes) {
            snprintf(why, why_len, "declares %llu bytes but stores %llu: damaged", (unsigned long long)bytes,
                     (unsigned long long)stored);
            bad = 1;
        }
    } else if (layout == H5D_CHUNKED) {
        bad = h5check_chunks(ds, space, dcpl, nd, dims, elem_bytes, file_bytes, why, why_len);
    } else {
        snprintf(why, why_len, "has an unknown storage layout (%d)", (int)layout);
        bad = 1;
    }

cleanup:
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    return bad;
}

#endif
