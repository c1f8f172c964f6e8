/* Philox4x32-10 against the known-answer vectors of its authors' Random123
 * distribution, and the derived uniform/normal draws' basic statistics. */
#include <math.h>

#include "core/rng.h"
#include "testing.h"

static void kat(uint64_t key, uint64_t stream, uint64_t index, const uint32_t want[4])
{
    Philox4x32 r = philox4x32(key, stream, index);
    for (int i = 0; i < 4; i++)
        EXPECT(r.v[i] == want[i], "word %d: got %08x want %08x", i, r.v[i], want[i]);
}

int main(void)
{
    /* counter (c0..c3) = (index lo, index hi, stream lo, stream hi), key = (lo, hi) */
    kat(0, 0, 0, (const uint32_t[]){0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8});
    kat(0xffffffffffffffffull, 0xffffffffffffffffull, 0xffffffffffffffffull,
        (const uint32_t[]){0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd});
    kat(0x299f31d0a4093822ull, 0x0370734413198a2eull, 0x85a308d3243f6a88ull,
        (const uint32_t[]){0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1});

    /* 1e6 draws: mean and variance within ~5 standard errors of the truth. */
    const int n = 1000000;
    double su = 0, su2 = 0, sn = 0, sn2 = 0;
    float umin = 1, umax = 0;
    for (int i = 0; i < n; i++) {
        float u = rng_uniform(42, rng_stream(RNG_STREAM_INIT, 3), (uint64_t)i);
        float z = rng_normal(42, rng_stream(RNG_STREAM_INIT, 4), (uint64_t)i);
        su += u, su2 += (double)u * u, sn += z, sn2 += (double)z * z;
        if (u < umin) umin = u;
        if (u > umax) umax = u;
    }
    EXPECT(umin >= 0.0f && umax < 1.0f, "uniform outside [0, 1): %g %g", umin, umax);
    EXPECT_NEAR(su / n, 0.5, 5 * 0.2887 / sqrt(n), 0, "uniform mean");
    EXPECT_NEAR(su2 / n - (su / n) * (su / n), 1.0 / 12, 5 * 0.0745 / sqrt(n), 0, "uniform variance");
    EXPECT_NEAR(sn / n, 0.0, 5.0 / sqrt(n), 0, "normal mean");
    EXPECT_NEAR(sn2 / n, 1.0, 5 * sqrt(2.0) / sqrt(n), 0, "normal variance");
    /* Pure function of (key, stream, index); streams differ. */
    EXPECT(rng_u64(1, 2, 3) == rng_u64(1, 2, 3), "not deterministic");
    EXPECT(rng_u64(1, 2, 3) != rng_u64(1, 3, 3), "streams collide");
    EXPECT(rng_u64(1, 2, 3) != rng_u64(2, 2, 3), "keys collide");
    return test_finish("test_rng");
}
