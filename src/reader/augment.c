/* Augmentation of training samples: random crop with padding and random
 * horizontal flip (the formula is in reader.h). The reader applies it on the
 * thread that reads the batch, to normalised floats, one sample at a time.
 *
 * The choices of a sample come from one Philox block keyed by the seed, on
 * the stream of the epoch, at the sample's index in the data set: no state,
 * so a resumed run and a run on any number of ranks draw the same ones.
 * A bounded draw is the high word of a 32 x 32-bit product (Lemire's
 * multiply-shift without rejection): its bias is below (2P + 1) / 2^32,
 * immaterial for a crop offset, and it keeps the formula one line.
 */
#include "reader/reader.h"

#include "core/rng.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int augment_parse(const char *spec, Augment *out, char *why, size_t why_len)
{
    Augment a = {0, 0};
    *out = a;
    if (!spec || !strcmp(spec, "none")) return 0;
    if (!*spec) {
        snprintf(why, why_len, "expected none, or a comma list of crop:P and flip");
        return -1;
    }
    const char *p = spec;
    for (;;) {
        size_t n = strcspn(p, ",");
        char item[64];
        if (n == 0 || n >= sizeof item) {
            snprintf(why, why_len, "%s item in the list; expected crop:P or flip", n == 0 ? "an empty" : "a too long");
            return -1;
        }
        memcpy(item, p, n);
        item[n] = '\0';
        if (!strcmp(item, "flip")) {
            if (a.flip) {
                snprintf(why, why_len, "flip is given twice");
                return -1;
            }
            a.flip = 1;
        } else if (!strncmp(item, "crop:", 5)) {
            if (a.crop) {
                snprintf(why, why_len, "crop is given twice");
                return -1;
            }
            const char *num = item + 5;
            char *end;
            errno = 0;
            long v = strtol(num, &end, 10);
            if (*num < '0' || *num > '9' || *end || errno || v < 1 || v > AUGMENT_MAX_PAD) {
                snprintf(why, why_len, "crop:%s: the padding P must be an integer in [1, %d]", num, AUGMENT_MAX_PAD);
                return -1;
            }
            a.crop = (int)v;
        } else if (!strcmp(item, "none")) {
            snprintf(why, why_len, "none cannot be combined with other augmentations");
            return -1;
        } else {
            snprintf(why, why_len, "unknown augmentation '%s'; expected crop:P or flip", item);
            return -1;
        }
        if (!p[n]) break;
        p += n + 1;
        if (!*p) {
            snprintf(why, why_len, "the list ends with a comma");
            return -1;
        }
    }
    *out = a;
    return 0;
}

void augment_text(const Augment *a, char *buf, size_t len)
{
    if (a->crop && a->flip) snprintf(buf, len, "crop:%d,flip", a->crop);
    else if (a->crop) snprintf(buf, len, "crop:%d", a->crop);
    else if (a->flip) snprintf(buf, len, "flip");
    else snprintf(buf, len, "none");
}

void augment_draw(const Augment *a, uint64_t seed, uint64_t epoch, uint64_t index, int *dy, int *dx, int *flip)
{
    uint64_t key = seed ^ ((epoch >> 32) * 0x9E3779B97F4A7C15ull);
    Philox4x32 r = philox4x32(key, rng_stream(RNG_STREAM_AUGMENT, (uint32_t)epoch), index);
    uint64_t span = 2 * (uint64_t)a->crop + 1;
    *dy = (int)(((uint64_t)r.v[0] * span) >> 32);
    *dx = (int)(((uint64_t)r.v[1] * span) >> 32);
    *flip = a->flip ? (int)(r.v[2] >> 31) : 0;
}

void augment_sample(const Augment *a, const DatasetInfo *info, uint64_t seed, uint64_t epoch, uint64_t index,
                    float *image, float *scratch)
{
    if (!a->crop && !a->flip) return;
    int dy, dx, flip;
    augment_draw(a, seed, epoch, index, &dy, &dx, &flip);
    const int P = a->crop, H = info->h, W = info->w;
    if (dy == P && dx == P && !flip) return; /* the identity */
    const size_t plane = (size_t)H * (size_t)W;
    memcpy(scratch, image, plane * (size_t)info->c * sizeof *image);
    /* Source column of output column x: sx = x' + dx - P. The columns whose
     * source lies inside the image form one interval [x0, x1). */
    const int shift = dx - P;
    for (int c = 0; c < info->c; c++) {
        const float pad = (0.0f - info->mean[c]) / info->std[c];
        const float *src = scratch + (size_t)c * plane;
        float *dst = image + (size_t)c * plane;
        for (int y = 0; y < H; y++) {
            float *row = dst + (size_t)y * (size_t)W;
            int sy = y + dy - P;
            if (sy < 0 || sy >= H) {
                for (int x = 0; x < W; x++) row[x] = pad;
                continue;
            }
            const float *srow = src + (size_t)sy * (size_t)W;
            if (!flip) {
                for (int x = 0; x < W; x++) {
                    int sx = x + shift;
                    row[x] = sx >= 0 && sx < W ? srow[sx] : pad;
                }
            } else {
                for (int x = 0; x < W; x++) {
                    int sx = W - 1 - x + shift;
                    row[x] = sx >= 0 && sx < W ? srow[sx] : pad;
                }
            }
        }
    }
}
