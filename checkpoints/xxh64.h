/* XXH64 (seed 0 in the checkpoint format): the 64-bit xxHash, from Debian's
 * libxxhash (libxxhash-dev), used header-only (XXH_INLINE_ALL: nothing to
 * link, and the hash inlines into the loops that call it). Chosen over
 * zlib's crc32 for speed: it runs at memory bandwidth, several times faster
 * than crc32, so checksumming a large buffer costs a small fraction of
 * writing it. tests/checkpoints/test_checkpoint.c holds reference values. */
#ifndef BASIN_XXH64_H
#define BASIN_XXH64_H

#include <stddef.h>
#include <stdint.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

static inline uint64_t xxh64(const void *data, size_t len, uint64_t seed)
{
    return (uint64_t)XXH64(data, len, (XXH64_hash_t)seed);
}

#endif
