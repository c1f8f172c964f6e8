/* The small products of the Winograd convolution: see core/winograd_gemm.h
 * for the two forms and why they are not BLAS calls.
 *
 * nn: c (m, n) = a (m, k) b (k, n). A block of c, NN_MR rows by NN_NV
 * vectors of columns, lives in registers for the whole k loop: each step
 * loads NN_NV vectors of one row of b (contiguous) and, for each of the
 * rows, broadcasts one element of a from memory into NN_NV FMAs. That is
 * NN_MR + NN_NV loads for NN_MR NN_NV FMAs, and NN_MR NN_NV independent
 * accumulator chains, more than the FMA latency times the FMA ports asks
 * for. Blocks go column panel by column panel, and within a panel over
 * the rows of c, so the panel of b (k x NN_NV vectors: 8 KiB for k = 64
 * with AVX-512) stays in L1 while every row block reads it. The last panel
 * masks its last vector (AVX-512 masks, AVX2 maskload); the last row block
 * has fewer rows (one copy of the block per row count, so the accumulators
 * stay registers).
 *
 * nt: c (m, n) = a (m, k) b (n, k)^T, dot products along k. A block of
 * NT_MR rows of a by NT_NR rows of b keeps one vector accumulator per pair
 * (NT_MR + NT_NR loads for NT_MR NT_NR FMAs per vector of k); at the end a
 * transposing add tree turns the NT_MR NT_NR accumulators into one vector
 * of their sums (lane i NT_NR + j for the pair (i, j)), which is one
 * horizontal sum per element of c at the cost of about 3 instructions
 * (shuffles and adds), against k / width FMAs. The tail of k is a masked
 * load with zeros. For dU, b is V, which forward left in memory: that
 * read bounds nt on thin layers (resnet20's 16-channel convs: dU at about
 * 65 GFLOP/s in a step, about 85 with V in cache, where nn runs at 145).
 *
 * Every sum runs in an order fixed by the shapes: lane by lane along k,
 * then the fixed tree (nt); one FMA per step of p in order (nn). Loads are
 * unaligned from the first element, so neither alignment nor the data
 * moves a rounding. */
#include "core/winograd_gemm.h"

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_WINOGRAD_GEMM_X86 1
#endif

#ifdef HAVE_WINOGRAD_GEMM_X86

/* Unrolled loops over register blocks: the accumulators must be registers,
 * so the loops over them go away at every optimization level that
 * unrolls (and at -O0 the code is slow but right). */
#define UNROLL _Pragma("GCC unroll 16")

/* ---- AVX-512 ---------------------------------------------------------------------- */

#define T512 __attribute__((target("avx512f,fma")))
#define T512_INLINE static inline __attribute__((always_inline, target("avx512f,fma")))

/* 8 rows x 2 vectors (32 columns): 16 accumulators, 2 + 8 loads per 16
 * FMAs; 8 divides the channel counts of the usual models, 32 columns
 * leave small edges on chunks of ~200. */
#define NN512_MR 8
#define NN512_NV 2
/* 4 x 4 rows: 16 accumulators, 8 loads per 16 FMAs, one 16-lane tree. */
#define NT512_MR 4
#define NT512_NR 4

T512_INLINE __mmask16 mask16(size_t n) /* the first n < 16 lanes, or all for n >= 16 */
{
    return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
}

/* One block of nn: mr rows, nv vectors, the last masked by `tail` when
 * masked. mr, nv and masked are constants where it is inlined. */
T512_INLINE void nn512_block(const int mr, const int nv, const int masked, __mmask16 tail,
                             size_t k, const float *a, size_t ars, size_t acs,
                             const float *restrict b, size_t ldb, float *restrict c, size_t ldc)
{
    __m512 acc[NN512_MR][NN512_NV];
    UNROLL for (int i = 0; i < mr; i++)
        UNROLL for (int j = 0; j < nv; j++) acc[i][j] = _mm512_setzero_ps();
    for (size_t p = 0; p < k; p++) {
        const float *bp = b + p * ldb, *ap = a + p * acs;
        __m512 bv[NN512_NV];
        UNROLL for (int j = 0; j < nv; j++)
            bv[j] = masked && j == nv - 1 ? _mm512_maskz_loadu_ps(tail, bp + 16 * j)
                                          : _mm512_loadu_ps(bp + 16 * j);
        UNROLL for (int i = 0; i < mr; i++) {
            const __m512 av = _mm512_set1_ps(ap[(size_t)i * ars]);
            UNROLL for (int j = 0; j < nv; j++) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
        }
    }
    UNROLL for (int i = 0; i < mr; i++)
        UNROLL for (int j = 0; j < nv; j++) {
            float *ci = c + (size_t)i * ldc + 16 * j;
            if (masked && j == nv - 1)
                _mm512_mask_storeu_ps(ci, tail, acc[i][j]);
            else
                _mm512_storeu_ps(ci, acc[i][j]);
        }
}

/* The block for a run-time row count. */
T512_INLINE void nn512_rows(int mr, const int nv, const int masked, __mmask16 tail, size_t k,
                            const float *a, size_t ars, size_t acs, const float *b, size_t ldb,
                            float *c, size_t ldc)
{
    switch (mr) {
#define NN512_CASE(R) \
    case R: nn512_block(R, nv, masked, tail, k, a, ars, acs, b, ldb, c, ldc); break;
        NN512_CASE(8) NN512_CASE(7) NN512_CASE(6) NN512_CASE(5)
        NN512_CASE(4) NN512_CASE(3) NN512_CASE(2) NN512_CASE(1)
#undef NN512_CASE
    default: break;
    }
}

T512 static void nn_avx512(size_t m, size_t n, size_t k, const float *a, size_t ars, size_t acs,
                           const float *b, size_t ldb, float *c, size_t ldc)
{
    const size_t panel = 16 * NN512_NV;
    for (size_t j0 = 0; j0 < n; j0 += panel) {
        const size_t nc = n - j0 < panel ? n - j0 : panel;
        for (size_t i0 = 0; i0 < m; i0 += NN512_MR) {
            const int mr = (int)(m - i0 < NN512_MR ? m - i0 : NN512_MR);
            const float *ai = a + i0 * ars, *bj = b + j0;
            float *cij = c + i0 * ldc + j0;
            if (nc == panel)
                nn512_rows(mr, 2, 0, 0, k, ai, ars, acs, bj, ldb, cij, ldc);
            else if (nc > 16)
                nn512_rows(mr, 2, 1, mask16(nc - 16), k, ai, ars, acs, bj, ldb, cij, ldc);
            else
                nn512_rows(mr, 1, 1, mask16(nc), k, ai, ars, acs, bj, ldb, cij, ldc);
        }
    }
}

/* The 16 accumulators of a 4 x 4 block to one vector: lane q = sum of the
 * lanes of v[q]. Pairs are added across unpacks (within 128-bit lanes),
 * then across the four 128-bit lanes: 15 adds, 30 shuffles. */
T512_INLINE __m512 sum16x16(const __m512 v[16])
{
    __m512 s8[8], s4[4], s2[2];
    /* per 128-bit lane: (v0 lanes 0+2, v1 0+2, v0 1+3, v1 1+3) */
    UNROLL for (int q = 0; q < 8; q++)
        s8[q] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * q], v[2 * q + 1]),
                              _mm512_unpackhi_ps(v[2 * q], v[2 * q + 1]));
    /* per 128-bit lane: the lane's sums of v[4q .. 4q + 3] */
    UNROLL for (int q = 0; q < 4; q++) {
        const __m512d x = _mm512_castps_pd(s8[2 * q]), y = _mm512_castps_pd(s8[2 * q + 1]);
        s4[q] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                              _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    /* 128-bit lanes (0 + 1, 2 + 3) of s4[2q], then of s4[2q + 1] */
    UNROLL for (int q = 0; q < 2; q++)
        s2[q] = _mm512_add_ps(_mm512_shuffle_f32x4(s4[2 * q], s4[2 * q + 1], 0x88),
                              _mm512_shuffle_f32x4(s4[2 * q], s4[2 * q + 1], 0xDD));
    /* 128-bit lane L: the whole sums of v[4L .. 4L + 3] */
    return _mm512_add_ps(_mm512_shuffle_f32x4(s2[0], s2[1], 0x88),
                         _mm512_shuffle_f32x4(s2[0], s2[1], 0xDD));
}

/* One block of nt: mr rows of a by nr rows of b (constants where inlined). */
T512_INLINE void nt512_block(const int mr, const int nr, size_t k, const float *a, size_t lda,
                             const float *b, size_t ldb, float *c, size_t ldc, int acc)
{
    __m512 s[NT512_MR * NT512_NR];
    UNROLL for (int q = 0; q < NT512_MR * NT512_NR; q++) s[q] = _mm512_setzero_ps();
    size_t p = 0;
    for (; p + 16 <= k; p += 16) {
        __m512 av[NT512_MR];
        UNROLL for (int i = 0; i < mr; i++) {
            av[i] = _mm512_loadu_ps(a + (size_t)i * lda + p);
            /* a register, not 4 memory operands: GCC folds the load into
             * every FMA that uses it, which makes 20 loads a step, not 8,
             * and the loop load-bound (dU at 66 GFLOP/s, not ~150) */
            __asm__("" : "+v"(av[i]));
        }
        UNROLL for (int j = 0; j < nr; j++) {
            const __m512 bv = _mm512_loadu_ps(b + (size_t)j * ldb + p);
            UNROLL for (int i = 0; i < mr; i++)
                s[i * NT512_NR + j] = _mm512_fmadd_ps(av[i], bv, s[i * NT512_NR + j]);
        }
    }
    if (p < k) {
        const __mmask16 tail = mask16(k - p);
        __m512 av[NT512_MR];
        UNROLL for (int i = 0; i < mr; i++)
            av[i] = _mm512_maskz_loadu_ps(tail, a + (size_t)i * lda + p);
        UNROLL for (int j = 0; j < nr; j++) {
            const __m512 bv = _mm512_maskz_loadu_ps(tail, b + (size_t)j * ldb + p);
            UNROLL for (int i = 0; i < mr; i++)
                s[i * NT512_NR + j] = _mm512_fmadd_ps(av[i], bv, s[i * NT512_NR + j]);
        }
    }
    const __m512 r = sum16x16(s);
    if (mr == NT512_MR && nr == NT512_NR) { /* rows of 4: one 128-bit lane each */
        UNROLL for (int i = 0; i < NT512_MR; i++) {
            float *ci = c + (size_t)i * ldc;
            __m128 row;
            switch (i) { /* the lane index must be a constant */
            case 0: row = _mm512_extractf32x4_ps(r, 0); break;
            case 1: row = _mm512_extractf32x4_ps(r, 1); break;
            case 2: row = _mm512_extractf32x4_ps(r, 2); break;
            default: row = _mm512_extractf32x4_ps(r, 3); break;
            }
            _mm_storeu_ps(ci, acc ? _mm_add_ps(_mm_loadu_ps(ci), row) : row);
        }
    } else {
        float out[16];
        _mm512_storeu_ps(out, r);
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nr; j++) {
                float *cij = c + (size_t)i * ldc + (size_t)j;
                *cij = acc ? *cij + out[i * NT512_NR + j] : out[i * NT512_NR + j];
            }
    }
}

T512 static void nt_avx512(size_t m, size_t n, size_t k, const float *a, size_t lda,
                           const float *b, size_t ldb, float *c, size_t ldc, int acc)
{
    for (size_t i0 = 0; i0 < m; i0 += NT512_MR) {
        const int mr = (int)(m - i0 < NT512_MR ? m - i0 : NT512_MR);
        for (size_t j0 = 0; j0 < n; j0 += NT512_NR) {
            const int nr = (int)(n - j0 < NT512_NR ? n - j0 : NT512_NR);
            const float *ai = a + i0 * lda, *bj = b + j0 * ldb;
            float *cij = c + i0 * ldc + j0;
            switch (mr * NT512_NR + nr) { /* one copy per edge shape */
#define NT512_CASE(R, N) \
    case R * NT512_NR + N: nt512_block(R, N, k, ai, lda, bj, ldb, cij, ldc, acc); break;
                NT512_CASE(4, 4) NT512_CASE(4, 3) NT512_CASE(4, 2) NT512_CASE(4, 1)
                NT512_CASE(3, 4) NT512_CASE(3, 3) NT512_CASE(3, 2) NT512_CASE(3, 1)
                NT512_CASE(2, 4) NT512_CASE(2, 3) NT512_CASE(2, 2) NT512_CASE(2, 1)
                NT512_CASE(1, 4) NT512_CASE(1, 3) NT512_CASE(1, 2) NT512_CASE(1, 1)
#undef NT512_CASE
            default: break;
            }
        }
    }
}

static const WinogradGemm gemm_avx512 = {"avx512", nn_avx512, nt_avx512};

/* ---- AVX2 + FMA ------------------------------------------------------------------- */

#define T256 __attribute__((target("avx2,fma")))
#define T256_INLINE static inline __attribute__((always_inline, target("avx2,fma")))

/* 16 registers: 6 rows x 2 vectors (16 columns) is 12 accumulators, 2 for
 * b and 1 broadcast. */
#define NN256_MR 6
#define NN256_NV 2
/* 4 rows of a x 2 of b: 8 accumulators, 2 of b, 1 of a. */
#define NT256_MR 4
#define NT256_NR 2

/* lanes 0 .. n - 1 of a maskload mask (n <= 8) */
T256_INLINE __m256i mask8(size_t n)
{
    static const int32_t bits[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256((const __m256i *)(bits + 8 - (n < 8 ? n : 8)));
}

T256_INLINE void nn256_block(const int mr, const int nv, const int masked, __m256i tail, size_t k,
                             const float *a, size_t ars, size_t acs, const float *restrict b,
                             size_t ldb, float *restrict c, size_t ldc)
{
    __m256 acc[NN256_MR][NN256_NV];
    UNROLL for (int i = 0; i < mr; i++)
        UNROLL for (int j = 0; j < nv; j++) acc[i][j] = _mm256_setzero_ps();
    for (size_t p = 0; p < k; p++) {
        const float *bp = b + p * ldb, *ap = a + p * acs;
        __m256 bv[NN256_NV];
        UNROLL for (int j = 0; j < nv; j++)
            bv[j] = masked && j == nv - 1 ? _mm256_maskload_ps(bp + 8 * j, tail)
                                          : _mm256_loadu_ps(bp + 8 * j);
        UNROLL for (int i = 0; i < mr; i++) {
            const __m256 av = _mm256_broadcast_ss(ap + (size_t)i * ars);
            UNROLL for (int j = 0; j < nv; j++) acc[i][j] = _mm256_fmadd_ps(av, bv[j], acc[i][j]);
        }
    }
    UNROLL for (int i = 0; i < mr; i++)
        UNROLL for (int j = 0; j < nv; j++) {
            float *ci = c + (size_t)i * ldc + 8 * j;
            if (masked && j == nv - 1)
                _mm256_maskstore_ps(ci, tail, acc[i][j]);
            else
                _mm256_storeu_ps(ci, acc[i][j]);
        }
}

T256_INLINE void nn256_rows(int mr, const int nv, const int masked, __m256i tail, size_t k,
                            const float *a, size_t ars, size_t acs, const float *b, size_t ldb,
                            float *c, size_t ldc)
{
    switch (mr) {
#define NN256_CASE(R) \
    case R: nn256_block(R, nv, masked, tail, k, a, ars, acs, b, ldb, c, ldc); break;
        NN256_CASE(6) NN256_CASE(5) NN256_CASE(4) NN256_CASE(3) NN256_CASE(2) NN256_CASE(1)
#undef NN256_CASE
    default: break;
    }
}

T256 static void nn_avx2(size_t m, size_t n, size_t k, const float *a, size_t ars, size_t acs,
                         const float *b, size_t ldb, float *c, size_t ldc)
{
    const size_t panel = 8 * NN256_NV;
    for (size_t j0 = 0; j0 < n; j0 += panel) {
        const size_t nc = n - j0 < panel ? n - j0 : panel;
        for (size_t i0 = 0; i0 < m; i0 += NN256_MR) {
            const int mr = (int)(m - i0 < NN256_MR ? m - i0 : NN256_MR);
            const float *ai = a + i0 * ars, *bj = b + j0;
            float *cij = c + i0 * ldc + j0;
            if (nc == panel)
                nn256_rows(mr, 2, 0, _mm256_setzero_si256(), k, ai, ars, acs, bj, ldb, cij, ldc);
            else if (nc > 8)
                nn256_rows(mr, 2, 1, mask8(nc - 8), k, ai, ars, acs, bj, ldb, cij, ldc);
            else
                nn256_rows(mr, 1, 1, mask8(nc), k, ai, ars, acs, bj, ldb, cij, ldc);
        }
    }
}

/* 8 accumulators to one vector, lane q = sum of the lanes of v[q]: two
 * rounds of horizontal adds within 128-bit lanes, then the two halves. */
T256_INLINE __m256 sum8x8(const __m256 v[8])
{
    const __m256 h0 = _mm256_hadd_ps(v[0], v[1]), h1 = _mm256_hadd_ps(v[2], v[3]);
    const __m256 h2 = _mm256_hadd_ps(v[4], v[5]), h3 = _mm256_hadd_ps(v[6], v[7]);
    const __m256 q0 = _mm256_hadd_ps(h0, h1), q1 = _mm256_hadd_ps(h2, h3);
    return _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
}

T256_INLINE void nt256_block(const int mr, const int nr, size_t k, const float *a, size_t lda,
                             const float *b, size_t ldb, float *c, size_t ldc, int acc)
{
    __m256 s[NT256_MR * NT256_NR];
    UNROLL for (int q = 0; q < NT256_MR * NT256_NR; q++) s[q] = _mm256_setzero_ps();
    size_t p = 0;
    for (; p + 8 <= k; p += 8) {
        __m256 bv[NT256_NR];
        UNROLL for (int j = 0; j < nr; j++) {
            bv[j] = _mm256_loadu_ps(b + (size_t)j * ldb + p);
            __asm__("" : "+x"(bv[j])); /* a register (see nt512_block) */
        }
        UNROLL for (int i = 0; i < mr; i++) {
            __m256 av = _mm256_loadu_ps(a + (size_t)i * lda + p);
            __asm__("" : "+x"(av));
            UNROLL for (int j = 0; j < nr; j++)
                s[i * NT256_NR + j] = _mm256_fmadd_ps(av, bv[j], s[i * NT256_NR + j]);
        }
    }
    if (p < k) {
        const __m256i tail = mask8(k - p);
        __m256 bv[NT256_NR];
        UNROLL for (int j = 0; j < nr; j++) bv[j] = _mm256_maskload_ps(b + (size_t)j * ldb + p, tail);
        UNROLL for (int i = 0; i < mr; i++) {
            const __m256 av = _mm256_maskload_ps(a + (size_t)i * lda + p, tail);
            UNROLL for (int j = 0; j < nr; j++)
                s[i * NT256_NR + j] = _mm256_fmadd_ps(av, bv[j], s[i * NT256_NR + j]);
        }
    }
    float out[8];
    _mm256_storeu_ps(out, sum8x8(s));
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) {
            float *cij = c + (size_t)i * ldc + (size_t)j;
            *cij = acc ? *cij + out[i * NT256_NR + j] : out[i * NT256_NR + j];
        }
}

T256 static void nt_avx2(size_t m, size_t n, size_t k, const float *a, size_t lda, const float *b,
                         size_t ldb, float *c, size_t ldc, int acc)
{
    for (size_t i0 = 0; i0 < m; i0 += NT256_MR) {
        const int mr = (int)(m - i0 < NT256_MR ? m - i0 : NT256_MR);
        for (size_t j0 = 0; j0 < n; j0 += NT256_NR) {
            const int nr = (int)(n - j0 < NT256_NR ? n - j0 : NT256_NR);
            const float *ai = a + i0 * lda, *bj = b + j0 * ldb;
            float *cij = c + i0 * ldc + j0;
            switch (mr * NT256_NR + nr) {
#define NT256_CASE(R, N) \
    case R * NT256_NR + N: nt256_block(R, N, k, ai, lda, bj, ldb, cij, ldc, acc); break;
                NT256_CASE(4, 2) NT256_CASE(4, 1) NT256_CASE(3, 2) NT256_CASE(3, 1)
                NT256_CASE(2, 2) NT256_CASE(2, 1) NT256_CASE(1, 2) NT256_CASE(1, 1)
#undef NT256_CASE
            default: break;
            }
        }
    }
}

static const WinogradGemm gemm_avx2 = {"avx2", nn_avx2, nt_avx2};

#endif /* HAVE_WINOGRAD_GEMM_X86 */

/* ---- selection ---------------------------------------------------------------------- */

static const WinogradGemm *kernel_named(const char *name)
{
#ifdef HAVE_WINOGRAD_GEMM_X86
    if (strcmp(name, "avx512") == 0)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma") ? &gemm_avx512
                                                                                   : NULL;
    if (strcmp(name, "avx2") == 0)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? &gemm_avx2 : NULL;
#else
    (void)name;
#endif
    return NULL;
}

const WinogradGemm *winograd_gemm_select(void)
{
    /* AVX-512 where the CPU has it: resnet20's Winograd gemms, batch 64 on
     * one core, took 42 ms a step against 78 ms through OpenBLAS's Haswell
     * kernels (M = U V 1.9x, dV 2.0x, dU 1.6x faster; dU reads V back
     * from memory, which bounds it).
     * Not the AVX2 kernels: on the same machine they took 74 ms against
     * BLAS's 78 (nn 10-15 % faster, nt 4 % slower), within the noise of
     * the measurement, so BLAS stays the path of AVX2-only CPUs. */
    return kernel_named("avx512");
}

int winograd_gemm_by_name(const char *name, const WinogradGemm **gemm)
{
    if (strcmp(name, "blas") == 0) {
        *gemm = NULL;
        return 0;
    }
    if (strcmp(name, "auto") == 0) {
        *gemm = winograd_gemm_select();
        return 0;
    }
    *gemm = kernel_named(name);
    return *gemm ? 0 : -1;
}
