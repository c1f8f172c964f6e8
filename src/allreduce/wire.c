/* Reduced-precision messages: bf16 and fp16 on the wire, fp32 in memory.
 *
 * Conversions round to nearest, ties to even. bf16 keeps fp32's exponent
 * range, so it needs no scale. fp16 (5 exponent bits) would overflow above
 * 65504 and flush below 2^-24, so every collective agrees on one scale
 * first: M = the largest |value| any rank of the communicator contributes
 * (one MPI_MAX of a float), and the scale is the power of two 2^e with
 * P * M * 2^e < 2^15, P the communicator's size. No partial sum can exceed
 * P * M, so none overflows, and the largest values keep fp16's full 11-bit
 * precision; values below M * P * 2^-39 flush to zero (fp16's range below
 * its top). Multiplying by a power of two is exact, so a value that is
 * representable in fp16 after scaling arrives unchanged.
 */
#include "allreduce/internal.h"

#include <math.h>
#include <string.h>

static inline uint16_t f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* NaN stays NaN */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

static inline float bf16_to_f32(uint16_t h)
{
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

static inline uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return sign | 0x7e00u;  /* NaN */
    if (x >= 0x477ff000u) return sign | 0x7c00u; /* >= 65520 rounds to infinity */
    if (x >= 0x38800000u) {                      /* >= 2^-14: normal */
        x -= 112u << 23;                         /* exponent bias 127 -> 15 */
        x += 0x0fffu + ((x >> 13) & 1u);
        return sign | (uint16_t)(x >> 13);
    }
    /* Subnormal: adding 0.5 (whose ulp is 2^-24, fp16's smallest step)
     * rounds to a multiple of 2^-24 in the current (nearest-even) mode. */
    float a;
    memcpy(&a, &x, sizeof a);
    volatile float s = a + 0.5f;
    float t = s;
    uint32_t y;
    memcpy(&y, &t, sizeof y);
    return sign | (uint16_t)(y - 0x3f000000u);
}

static inline float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    if (e == 0) {
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    if (e == 31)
        x = sign | 0x7f800000u | (m << 13);
    else
        x = sign | ((e + 112u) << 23) | (m << 13);
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

const char *ar_wire_name(int kind)
{
    return kind == AR_WIRE_BF16 ? "bf16" : kind == AR_WIRE_FP16 ? "fp16" : "fp32";
}

int ar_wire_scale(AllreduceComm *c, MPI_Comm comm, int size, const float *x, size_t n, ArWire *w)
{
    w->scale = w->unscale = 1.0;
    if (w->kind != AR_WIRE_FP16) return BASIN_OK;
    float m = 0.0f, all = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > m) m = a; /* NaN never compares greater */
    }
    MPI_Request req;
    BASIN_MPI(MPI_Iallreduce(&m, &all, 1, MPI_FLOAT, MPI_MAX, comm, &req));
    ar_watch_begin(c, "fp16 scale", 0, -1);
    int rc = ar_waitall(c, 1, &req);
    ar_watch_end(c);
    if (rc != MPI_SUCCESS) return basin_mpi_fail(rc, "MPI_Iallreduce", __FILE__, __LINE__);
    if (!(all > 0.0f) || isinf(all)) return BASIN_OK;
    int k;
    frexp((double)all * size, &k); /* P M < 2^k */
    w->scale = ldexp(1.0, 15 - k);
    w->unscale = ldexp(1.0, k - 15);
    return BASIN_OK;
}

void ar_wire_pack(const ArWire *w, uint16_t *dst, const float *src, size_t n)
{
    if (w->kind == AR_WIRE_BF16) {
        for (size_t i = 0; i < n; i++) dst[i] = f32_to_bf16(src[i]);
    } else if (w->scale == 1.0) {
        for (size_t i = 0; i < n; i++) dst[i] = f32_to_f16(src[i]);
    } else {
        /* x 2^e is exact in double; in float too unless it leaves float's
         * range, where fp16 could not hold it anyway. */
        double s = w->scale;
        for (size_t i = 0; i < n; i++) dst[i] = f32_to_f16((float)(src[i] * s));
    }
}

void ar_wire_unpack(const ArWire *w, float *dst, const uint16_t *src, size_t n)
{
    if (w->kind == AR_WIRE_BF16) {
        for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(src[i]);
    } else {
        double u = w->unscale;
        for (size_t i = 0; i < n; i++) dst[i] = (float)(f16_to_f32(src[i]) * u);
    }
}

void ar_wire_add(const ArWire *w, float *dst, const float *a, const uint16_t *b, size_t n)
{
    if (w->kind == AR_WIRE_BF16) {
        for (size_t i = 0; i < n; i++) dst[i] = a[i] + bf16_to_f32(b[i]);
    } else {
        double u = w->unscale;
        for (size_t i = 0; i < n; i++) dst[i] = a[i] + (float)(f16_to_f32(b[i]) * u);
    }
}

void ar_wire_round(const ArWire *w, float *x, size_t n)
{
    enum { B = 1024 };
    uint16_t tmp[B];
    for (size_t b = 0; b < n; b += B) {
        size_t m = n - b < B ? n - b : B;
        ar_wire_pack(w, tmp, x + b, m);
        ar_wire_unpack(w, x + b, tmp, m);
    }
}
