/* XXH64 (seed 0 in the checkpoint format): the 64-bit xxHash of Yann Collet,
 * as specified in xxHash's doc/xxhash_spec.md. Chosen over zlib's crc32 for
 * speed: it runs at memory bandwidth, several times faster than crc32, so
 * checksumming a large buffer costs a small fraction of writing it.
 *
 * Inputs are read as little-endian 64/32-bit words; basin builds only for
 * little-endian hosts (ckpt_internal.h refuses others at compile time). */
#ifndef BASIN_XXH64_H
#define BASIN_XXH64_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define XXH64_P1 0x9E3779B185EBCA87ull
#define XXH64_P2 0xC2B2AE3D27D4EB4Full
#define XXH64_P3 0x165667B19E3779F9ull
#define XXH64_P4 0x85EBCA77C2B2AE63ull
#define XXH64_P5 0x27D4EB2F165667C5ull

static inline uint64_t xxh64_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t xxh64_read64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint32_t xxh64_read32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint64_t xxh64_round(uint64_t acc, uint64_t input)
{
    acc += input * XXH64_P2;
    acc = xxh64_rotl(acc, 31);
    return acc * XXH64_P1;
}

static inline uint64_t xxh64_merge(uint64_t acc, uint64_t val)
{
    acc ^= xxh64_round(0, val);
    return acc * XXH64_P1 + XXH64_P4;
}

static inline uint64_t xxh64(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = data, *end = p + len;
    uint64_t h;
    if (len >= 32) {
        uint64_t v1 = seed + XXH64_P1 + XXH64_P2, v2 = seed + XXH64_P2, v3 = seed, v4 = seed - XXH64_P1;
        const unsigned char *limit = end - 32;
        do {
            v1 = xxh64_round(v1, xxh64_read64(p));
            v2 = xxh64_round(v2, xxh64_read64(p + 8));
            v3 = xxh64_round(v3, xxh64_read64(p + 16));
            v4 = xxh64_round(v4, xxh64_read64(p + 24));
            p += 32;
        } while (p <= limit);
        h = xxh64_rotl(v1, 1) + xxh64_rotl(v2, 7) + xxh64_rotl(v3, 12) + xxh64_rotl(v4, 18);
        h = xxh64_merge(h, v1);
        h = xxh64_merge(h, v2);
        h = xxh64_merge(h, v3);
        h = xxh64_merge(h, v4);
    } else {
        h = seed + XXH64_P5;
    }
    h += (uint64_t)len;
    while (end - p >= 8) {
        h ^= xxh64_round(0, xxh64_read64(p));
        h = xxh64_rotl(h, 27) * XXH64_P1 + XXH64_P4;
        p += 8;
    }
    if (end - p >= 4) {
        h ^= (uint64_t)xxh64_read32(p) * XXH64_P1;
        h = xxh64_rotl(h, 23) * XXH64_P2 + XXH64_P3;
        p += 4;
    }
    while (p < end) {
        h ^= (uint64_t)(*p) * XXH64_P5;
        h = xxh64_rotl(h, 11) * XXH64_P1;
        p++;
    }
    h ^= h >> 33;
    h *= XXH64_P2;
    h ^= h >> 29;
    h *= XXH64_P3;
    h ^= h >> 32;
    return h;
}

#endif
