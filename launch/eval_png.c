/* A minimal PNG writer: signature, IHDR, one IDAT (zlib), IEND. Every row
 * uses filter 0 (none); zlib's deflate does the rest, so a block of equal
 * pixels costs a few bytes. */
#include "eval_png.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "core/error.h"

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}

/* One chunk: length, type, data, CRC of type and data. */
static int put_chunk(FILE *f, const char *type, const unsigned char *data, uint32_t len)
{
    unsigned char head[8], tail[4];
    put_u32(head, len);
    memcpy(head + 4, type, 4);
    uLong crc = crc32(0L, (const Bytef *)type, 4);
    if (len) crc = crc32(crc, data, len);
    put_u32(tail, (uint32_t)crc);
    if (fwrite(head, 1, 8, f) != 8) return -1;
    if (len && fwrite(data, 1, len, f) != len) return -1;
    return fwrite(tail, 1, 4, f) == 4 ? 0 : -1;
}

int eval_png_write(const char *path, const uint64_t *counts, int classes)
{
    /* About 320 pixels a side for 10 classes; at least one pixel a cell. */
    int cell = classes <= 10 ? 32 : classes >= 512 ? 1 : 512 / classes;
    size_t side = (size_t)classes * (size_t)cell, stride = side + 1; /* filter byte + pixels */
    size_t raw_bytes = side * stride;
    uLong packed_cap = compressBound((uLong)raw_bytes);
    unsigned char *raw = malloc(raw_bytes), *packed = malloc(packed_cap);
    char tmp[4200];
    FILE *f = NULL;
    int rc = BASIN_OK;
    if (!raw || !packed) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "cannot allocate %zu bytes for the plot", raw_bytes);
        goto done;
    }
    for (int t = 0; t < classes; t++) {
        uint64_t row = 0;
        for (int p = 0; p < classes; p++) row += counts[(size_t)t * classes + p];
        unsigned char *line = raw + (size_t)t * cell * stride;
        line[0] = 0;
        for (int p = 0; p < classes; p++) {
            double share = row ? (double)counts[(size_t)t * classes + p] / (double)row : 0.0;
            memset(line + 1 + (size_t)p * cell, (int)(255.0 * share + 0.5), (size_t)cell);
        }
        for (int k = 1; k < cell; k++) memcpy(line + (size_t)k * stride, line, stride);
    }
    uLongf packed_bytes = packed_cap;
    if (compress2(packed, &packed_bytes, raw, (uLong)raw_bytes, 9) != Z_OK || packed_bytes > 0x7fffffffu) {
        rc = BASIN_FAIL(BASIN_ERR_RUNTIME, "zlib could not compress the plot");
        goto done;
    }
    unsigned char ihdr[13];
    put_u32(ihdr, (uint32_t)side);
    put_u32(ihdr + 4, (uint32_t)side);
    ihdr[8] = 8;  /* bits per sample */
    ihdr[9] = 0;  /* grayscale */
    ihdr[10] = ihdr[11] = ihdr[12] = 0; /* deflate, adaptive filters, no interlace */
    static const unsigned char signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    f = fopen(tmp, "wb");
    if (!f) {
        rc = basin_error(BASIN_ERR_USAGE, "--plot %s: cannot write %s: %s", path, tmp, strerror(errno));
        goto done;
    }
    int bad = fwrite(signature, 1, 8, f) != 8 || put_chunk(f, "IHDR", ihdr, 13) ||
              put_chunk(f, "IDAT", packed, (uint32_t)packed_bytes) || put_chunk(f, "IEND", NULL, 0);
    int err = errno;
    if (fclose(f) != 0 && !bad) bad = 1, err = errno;
    f = NULL;
    if (bad || rename(tmp, path) != 0) {
        if (!bad) err = errno;
        remove(tmp);
        rc = basin_error(BASIN_ERR_USAGE, "--plot %s: cannot write it: %s", path, strerror(err));
    }
done:
    free(raw);
    free(packed);
    return rc;
}
