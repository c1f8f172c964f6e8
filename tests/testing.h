/* Minimal test support: failures are counted and reported, and the test's
 * exit code is the verdict (0 pass, 1 fail, 77 skipped). */
#ifndef BASIN_TESTING_H
#define BASIN_TESTING_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int test_failures_;

#define EXPECT(cond, ...)                                                   \
    do {                                                                    \
        if (!(cond)) {                                                      \
            test_failures_++;                                               \
            fprintf(stderr, "%s:%d: FAILED: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                   \
            fputc('\n', stderr);                                            \
        }                                                                   \
    } while (0)

/* |got - want| <= atol + rtol * |want| */
#define EXPECT_NEAR(got, want, atol, rtol, what)                            \
    do {                                                                    \
        double g_ = (got), w_ = (want);                                     \
        if (!(fabs(g_ - w_) <= (atol) + (rtol) * fabs(w_))) {               \
            test_failures_++;                                               \
            fprintf(stderr, "%s:%d: FAILED: %s: got %.9g want %.9g\n",      \
                    __FILE__, __LINE__, (what), g_, w_);                    \
        }                                                                   \
    } while (0)

#define TEST_SKIP(...)                                                      \
    do {                                                                    \
        fprintf(stderr, "SKIPPED: ");                                       \
        fprintf(stderr, __VA_ARGS__);                                       \
        fputc('\n', stderr);                                                \
        exit(77);                                                           \
    } while (0)

static inline int test_finish(const char *name)
{
    if (test_failures_) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, test_failures_);
        return 1;
    }
    printf("%s: all checks passed\n", name);
    return 0;
}

#endif
