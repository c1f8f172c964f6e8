/* --reader-cost N (reader.h): the work of decoding a compressed image, done
 * for every sample read and thrown away.
 *
 * A JPEG decoder's inner loop is the 8x8 inverse DCT of every block of
 * every channel; here each round is a forward DCT-II and its inverse
 * DCT-III (orthonormal, separable: 2 x 2 x 8 x 8 x 8 multiply-adds per
 * block), the second round transforming the first's output, and so on. The
 * blocks live on the stack: the sample is only read, so the data trained on
 * is the same bit for bit at any N. What the rounds computed is summed and
 * stored to a volatile, which the compiler must perform, so it cannot drop
 * the work. */
#include "reader/reader.h"

#include <math.h>

/* c[u][x] = a(u) cos((2x + 1) u pi / 16), a(0) = sqrt(1/8), else sqrt(2/8). */
static void dct_table(float c[8][8])
{
    const double pi = 3.14159265358979323846;
    for (int u = 0; u < 8; u++)
        for (int x = 0; x < 8; x++)
            c[u][x] = (float)((u ? sqrt(0.25) : sqrt(0.125)) * cos((2 * x + 1) * u * pi / 16));
}

/* out = m in (trans 0) or m^T in (trans 1), applied to each column of in. */
static void apply(const float c[8][8], int trans, const float in[64], float out[64])
{
    for (int u = 0; u < 8; u++)
        for (int col = 0; col < 8; col++) {
            float s = 0.0f;
            for (int x = 0; x < 8; x++) s += (trans ? c[x][u] : c[u][x]) * in[x * 8 + col];
            out[u * 8 + col] = s;
        }
}

static void transpose(float b[64])
{
    for (int i = 0; i < 8; i++)
        for (int j = i + 1; j < 8; j++) {
            float t = b[i * 8 + j];
            b[i * 8 + j] = b[j * 8 + i];
            b[j * 8 + i] = t;
        }
}

/* One round on block b: F = C b C^T, then b = C^T F C. */
static void round_trip(const float c[8][8], float b[64])
{
    float t[64];
    apply(c, 0, b, t); /* t = C b */
    transpose(t);
    apply(c, 0, t, b); /* b = C (C b)^T = F^T */
    apply(c, 1, b, t); /* t = C^T F^T */
    transpose(t);
    apply(c, 1, t, b); /* b = C^T F C, the block again up to rounding */
}

/* Block (by, bx) of a plane of h x w, edges repeated past its end. */
static void load_block(const float *plane, int h, int w, int by, int bx, float b[64])
{
    for (int y = 0; y < 8; y++) {
        int yy = by * 8 + y < h ? by * 8 + y : h - 1;
        for (int x = 0; x < 8; x++) {
            int xx = bx * 8 + x < w ? bx * 8 + x : w - 1;
            b[y * 8 + x] = plane[(size_t)yy * (size_t)w + (size_t)xx];
        }
    }
}

void decode_cost_sample(const DatasetInfo *info, int rounds, const float *image)
{
    if (rounds <= 0) return;
    float c[8][8];
    dct_table(c);
    float sum = 0.0f;
    size_t plane = (size_t)info->h * (size_t)info->w;
    for (int ch = 0; ch < info->c; ch++)
        for (int by = 0; by < (info->h + 7) / 8; by++)
            for (int bx = 0; bx < (info->w + 7) / 8; bx++) {
                float b[64];
                load_block(image + (size_t)ch * plane, info->h, info->w, by, bx, b);
                for (int r = 0; r < rounds; r++) round_trip(c, b);
                for (int i = 0; i < 64; i++) sum += b[i];
            }
    volatile float sink = sum;
    (void)sink;
}
