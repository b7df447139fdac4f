/* gn_test.h — the tiny assertion kit every test executable uses.
 *
 * CHECK(cond, fmt, ...) records a pass or a failure (with file:line and the
 * message) and goes on; GN_TEST_MAIN_END prints "N passed, N failed" and
 * returns non-zero on any failure. GN_TEST_SKIP() exits 77 (ctest: skipped). */
#ifndef GN_TEST_H
#define GN_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int gn_t_pass, gn_t_fail;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (cond) {                                                        \
            gn_t_pass++;                                                   \
        } else {                                                           \
            gn_t_fail++;                                                   \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
        }                                                                  \
    } while (0)

/* Compares n floats with |got - want| <= atol + rtol*|want|; on mismatch prints
 * the worst element. Counts as one check. */
static inline int gn_t_close(const char *what, const float *got, const float *want, size_t n,
                             float atol, float rtol) {
    size_t worst = 0;
    double worst_excess = -1e30;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double tol = atol + rtol * fabs((double)want[i]);
        double d = fabs((double)got[i] - (double)want[i]);
        if (!(d <= tol)) bad++;
        double excess = (d != d) ? 1e30 : d - tol;
        if (excess > worst_excess) {
            worst_excess = excess;
            worst = i;
        }
    }
    if (bad) {
        gn_t_fail++;
        fprintf(stderr, "FAIL %s: %d of %zu elements out of tolerance (atol %g rtol %g); worst [%zu] got %.7g want %.7g\n",
                what, bad, n, atol, rtol, worst, got[worst], want[worst]);
        return 0;
    }
    gn_t_pass++;
    return 1;
}

#define GN_TEST_SKIP(why)                     \
    do {                                      \
        printf("skipped: %s\n", why);         \
        exit(77);                             \
    } while (0)

#define GN_TEST_MAIN_END()                                  \
    do {                                                    \
        printf("%d passed, %d failed\n", gn_t_pass, gn_t_fail); \
        return gn_t_fail ? 1 : 0;                           \
    } while (0)

/* Path of a file under the source tree (GN_SOURCE_DIR is set by ctest). */
static inline const char *gn_t_src(char *buf, size_t cap, const char *rel) {
    const char *root = getenv("GN_SOURCE_DIR");
    snprintf(buf, cap, "%s/%s", root ? root : ".", rel);
    return buf;
}

#endif
