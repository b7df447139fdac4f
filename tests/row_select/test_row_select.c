/* test_row_select.c — the sparse view of a row (row_select.h) against a
 * naive full sort: ids, values, floor and row_min exactly, tail_lse never
 * below the exact log-sum-exp of the unlisted values (long double, Kahan
 * sum) and at most 1e-5 (relative, in the sum) above it; both kernel sets,
 * bit for bit on everything but tail_lse. Rows: LM-like log-softmax rows,
 * flat rows, rows of a few tied levels (with -0 and +0), masked (-inf)
 * tokens, sorted rows, the top values on neighbouring ids, wide and far
 * tails; k from 1 to beyond n. Then the errors, allocation failures, and the
 * time per 128,256-column row (printed, not asserted). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gn_alloc.h"
#include "gn_test.h"
#include "row_select.h"

#define BIG 152064

static uint64_t rs = 0x9E3779B97F4A7C15ull;
static double urand(void) { /* xorshift64 */
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (double)(rs >> 11) * 0x1.0p-53;
}
static int irand(int n) { return (int)(urand() * n); }
static double nrand(void) { /* Box-Muller */
    double u = urand() + 1e-300, v = urand();
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* ---- the naive reference ---------------------------------------------------- */

static const float *g_row;
static int cmp_order(const void *pa, const void *pb) { /* value desc, then id asc */
    int a = *(const int *)pa, b = *(const int *)pb;
    float x = g_row[a], y = g_row[b];
    if (x > y)
        return -1;
    if (x < y)
        return 1;
    return a < b ? -1 : a > b;
}

typedef struct naive {
    int count;
    float floor, row_min;
    long double lse; /* exact log-sum-exp of the unlisted values */
} naive;

static int *g_ord; /* (BIG) */

static naive naive_select(const float *row, int n, int k) {
    naive r;
    for (int v = 0; v < n; v++)
        g_ord[v] = v;
    g_row = row;
    qsort(g_ord, (size_t)n, sizeof *g_ord, cmp_order);
    r.count = k < n ? k : n;
    r.floor = r.count < n ? row[g_ord[r.count]] + 0.0f : -INFINITY;
    r.row_min = row[g_ord[n - 1]] + 0.0f;
    long double s = 0.0L, c = 0.0L;
    for (int i = r.count; i < n; i++) {
        float x = row[g_ord[i]];
        if (x == -INFINITY)
            continue;
        long double y = expl((long double)x - (long double)r.floor) - c, t = s + y;
        c = (t - s) - y;
        s = t;
    }
    r.lse = s > 0.0L ? (long double)r.floor + logl(s) : -INFINITY;
    return r;
}

/* ---- rows ---------------------------------------------------------------------- */

static void log_softmax(const double *z, int n, float *out) {
    double mx = -INFINITY, s = 0.0;
    for (int v = 0; v < n; v++)
        mx = z[v] > mx ? z[v] : mx;
    for (int v = 0; v < n; v++)
        s += z[v] > -INFINITY ? exp(z[v] - mx) : 0.0;
    double ls = log(s);
    for (int v = 0; v < n; v++)
        out[v] = z[v] > -INFINITY ? (float)(z[v] - mx - ls) : -INFINITY;
}

static double *g_z; /* (BIG) */

/* An LM-like row: Gaussian logits, a few strong tokens, optional masking. */
static void lm_row(float *row, int n, double mask_frac) {
    double sigma = 1.0 + 3.0 * urand();
    for (int v = 0; v < n; v++)
        g_z[v] = sigma * nrand();
    int spikes = 1 + irand(8);
    for (int i = 0; i < spikes; i++)
        g_z[irand(n)] += 5.0 + 10.0 * urand();
    if (mask_frac > 0.0) {
        for (int v = 0; v < n; v++)
            if (urand() < mask_frac)
                g_z[v] = -INFINITY;
        g_z[irand(n)] = 3.0; /* at least one finite token */
    }
    log_softmax(g_z, n, row);
}

static int cmp_float_asc(const void *pa, const void *pb) {
    float a = *(const float *)pa, b = *(const float *)pb;
    return a < b ? -1 : a > b;
}

enum { R_LM, R_FLAT, R_LEVELS, R_MASKED, R_MOSTLY_MASKED, R_SORTED_UP, R_SORTED_DOWN, R_RUN,
       R_WIDE, R_FAR, R_POSITIVE, R_KINDS };
static const char *const k_kind[R_KINDS] = {"lm",     "flat",      "levels",     "masked",
                                            "mostly-masked", "sorted-up", "sorted-down", "run",
                                            "wide",   "far",       "positive"};

static void make_row(int kind, float *row, int n) {
    switch (kind) {
    case R_LM:
        lm_row(row, n, 0.0);
        break;
    case R_FLAT:
        for (int v = 0; v < n; v++)
            row[v] = (float)-log((double)n);
        break;
    case R_LEVELS: { /* a few tied levels, zero as -0 and +0 */
        static const float lv[6] = {0.0f, -0.0f, -0.5f, -2.25f, -7.0f, -INFINITY};
        int nl = 2 + irand(5);
        for (int v = 0; v < n; v++)
            row[v] = lv[irand(nl)];
        break;
    }
    case R_MASKED:
        lm_row(row, n, 0.3);
        break;
    case R_MOSTLY_MASKED:
        lm_row(row, n, 0.98);
        break;
    case R_SORTED_UP:
    case R_SORTED_DOWN:
        lm_row(row, n, 0.0);
        qsort(row, (size_t)n, sizeof *row, cmp_float_asc);
        if (kind == R_SORTED_DOWN)
            for (int i = 0; i < n / 2; i++) {
                float t = row[i];
                row[i] = row[n - 1 - i];
                row[n - 1 - i] = t;
            }
        break;
    case R_RUN: { /* the top values on neighbouring ids */
        lm_row(row, n, 0.0);
        int len = 1 + irand(n < 3000 ? n : 3000), at = irand(n - len + 1);
        for (int i = 0; i < len; i++)
            row[at + i] = -0.01f * (float)(i % 97);
        break;
    }
    case R_WIDE: /* values over [-300, 0]: many tail terms below e^-87 */
        for (int v = 0; v < n; v++)
            row[v] = (float)(-300.0 * urand());
        break;
    case R_POSITIVE: /* not log-probs: a positive floor takes the reference tail */
        for (int v = 0; v < n; v++)
            row[v] = (float)(8.0 * urand() - 3.0);
        break;
    case R_FAR: /* a few tokens near 0, the rest around -110: |tail_lse| near 100 */
        for (int v = 0; v < n; v++)
            row[v] = (float)(-100.0 - 10.0 * urand());
        for (int i = 0; i < 4; i++)
            row[irand(n)] = (float)(-0.5 * urand());
        break;
    }
}

/* ---- checks ----------------------------------------------------------------------- */

typedef struct stats {
    int rows, bad;
    double ex_min, ex_max; /* avx2: tail_lse - exact over finite tails */
    double adj_max;        /* ... less one float spacing of tail_lse (its rounding up) */
} stats;

static int g_avx2; /* the CPU runs the AVX2 kernels (else both passes use the reference) */
static int32_t *g_ids[2];
static float *g_vals[2];

/* Selects with both kernel sets and compares with the naive result. */
static void check_row(gn_row_selector *s, const float *row, int n, int k, const char *what,
                      stats *st) {
    naive want = naive_select(row, n, k);
    gn_row_tail tl[2];
    int rc[2];
    st->rows++;
    int bad = 0;
    char msg[400] = "";
    const double tol = log1p(1e-5);
    for (int ks = 0; ks < 2; ks++) {
        gn_err err = {0};
        gn_row_selector_set_kernels(
            s, ks && g_avx2 ? GN_ROW_SELECT_KERNELS_AVX2 : GN_ROW_SELECT_KERNELS_REF, NULL);
        rc[ks] = gn_row_select(s, row, n, k, g_ids[ks], g_vals[ks], &tl[ks], &err);
        const char *kn = ks ? "avx2" : "ref";
        if (rc[ks] != want.count) {
            snprintf(msg, sizeof msg, "%s: count %d want %d (%.200s)", kn, rc[ks], want.count, err.msg);
            bad = 1;
            break;
        }
        for (int i = 0; i < want.count && !bad; i++)
            if (g_ids[ks][i] != g_ord[i] ||
                memcmp(&g_vals[ks][i], &row[g_ord[i]], sizeof(float)) != 0) {
                snprintf(msg, sizeof msg, "%s: entry %d: id %d val %a, want id %d val %a", kn, i,
                         g_ids[ks][i], (double)g_vals[ks][i], g_ord[i], (double)row[g_ord[i]]);
                bad = 1;
            }
        if (!bad && (memcmp(&tl[ks].floor, &want.floor, sizeof(float)) != 0 ||
                     memcmp(&tl[ks].row_min, &want.row_min, sizeof(float)) != 0)) {
            snprintf(msg, sizeof msg, "%s: floor %a row_min %a, want %a %a", kn,
                     (double)tl[ks].floor, (double)tl[ks].row_min, (double)want.floor,
                     (double)want.row_min);
            bad = 1;
        }
        if (bad)
            break;
        long double got = tl[ks].tail_lse;
        if (want.lse == -INFINITY) {
            if (got != -INFINITY) {
                snprintf(msg, sizeof msg, "%s: tail_lse %a for an empty tail", kn, (double)got);
                bad = 1;
            }
            continue;
        }
        double ex = (double)(got - want.lse);
        double lim = fabsl(want.lse) < 128.0L ? tol : tol + (double)(nextafterf(tl[ks].tail_lse, INFINITY) - tl[ks].tail_lse);
        if (!(got >= want.lse) || !(ex <= lim)) {
            snprintf(msg, sizeof msg, "%s: tail_lse %.9g exact %.12Lg (excess %.3g)", kn,
                     (double)got, want.lse, ex);
            bad = 1;
        }
        if (ks == 1) {
            float a = fabsf(tl[ks].tail_lse);
            double adj = ex - (double)(nextafterf(a, INFINITY) - a);
            st->ex_min = ex < st->ex_min ? ex : st->ex_min;
            st->ex_max = ex > st->ex_max ? ex : st->ex_max;
            st->adj_max = adj > st->adj_max ? adj : st->adj_max;
        }
    }
    if (!bad && want.count > 0 &&
        (memcmp(g_ids[0], g_ids[1], (size_t)want.count * sizeof(int32_t)) ||
         memcmp(g_vals[0], g_vals[1], (size_t)want.count * sizeof(float)) ||
         memcmp(&tl[0].floor, &tl[1].floor, sizeof(float)) ||
         memcmp(&tl[0].row_min, &tl[1].row_min, sizeof(float)))) {
        snprintf(msg, sizeof msg, "ref and avx2 differ");
        bad = 1;
    }
    if (bad && st->bad++ < 5)
        fprintf(stderr, "row_select %s n=%d k=%d: %s\n", what, n, k, msg);
}

static int pick_k(int n) {
    switch (irand(7)) {
    case 0: return 1;
    case 1: return n > 1 ? n - 1 : 1;
    case 2: return n;
    case 3: return n + 1 + irand(5);
    case 4: return 1 + irand(n < 64 ? n : 64);
    default: return 1 + irand(n);
    }
}

static void test_random_rows(gn_row_selector *s, float *row) {
    for (int kind = 0; kind < R_KINDS; kind++) {
        stats st = {0, 0, INFINITY, -INFINITY, -INFINITY};
        for (int it = 0; it < 150; it++) {
            int n = it < 10 ? 1 + it : it < 140 ? 1 + irand(3000) : 20000 + irand(20000);
            make_row(kind, row, n);
            check_row(s, row, n, pick_k(n), k_kind[kind], &st);
        }
        /* vocabulary-sized rows with serving-sized k */
        static const int big_n[3] = {32000, 128256, BIG};
        static const int big_k[3] = {64, 1024, 4096};
        for (int i = 0; i < 3; i++) {
            make_row(kind, row, big_n[i]);
            check_row(s, row, big_n[i], big_k[i], k_kind[kind], &st);
        }
        CHECK(st.bad == 0, "%s rows: %d of %d wrong", k_kind[kind], st.bad, st.rows);
        printf("%-14s %4d rows ok; avx2 tail_lse - exact in [%.2e, %.2e], %.2e beyond rounding\n",
               k_kind[kind], st.rows - st.bad, st.ex_min, st.ex_max, st.adj_max);
    }
}

/* Rows built to stress the tail's arithmetic: a floor whose differences to
 * the other values are inexact in float, and terms down to e^-87 and below. */
static void test_tail_precision(gn_row_selector *s, float *row) {
    stats st = {0, 0, INFINITY, -INFINITY, -INFINITY};
    for (int it = 0; it < 400; it++) {
        int n = 2 + irand(4000);
        float fl = (float)(it % 2 ? -60.0 * urand() : -urand());
        double span = it % 4 == 0 ? 100.0 : it % 4 == 1 ? 10.0 : 1.0;
        row[0] = 0.0f; /* the listed token */
        row[1] = fl;
        for (int v = 2; v < n; v++)
            row[v] = fl - (float)(span * urand());
        check_row(s, row, n, 1, "tail", &st);
    }
    CHECK(st.bad == 0, "tail-precision rows: %d of %d wrong", st.bad, st.rows);
    /* the margin (4e-7) plus the kernel's own error, beyond the float rounding */
    CHECK(st.ex_min >= 0.0 && st.adj_max < 7e-7,
          "avx2 tail excess in [%.3g, %.3g], %.3g beyond the float rounding", st.ex_min,
          st.ex_max, st.adj_max);
    printf("tail precision %d rows; avx2 tail_lse - exact in [%.3e, %.3e], at most %.3e beyond "
           "the float rounding\n",
           st.rows, st.ex_min, st.ex_max, st.adj_max);
}

static void test_small_cases(gn_row_selector *s) {
    int32_t ids[8];
    float vals[8];
    gn_row_tail t;
    gn_err err = {0};
    for (int ks = 1; ks <= 2; ks++) {
        gn_row_selector_set_kernels(s, ks, NULL);
        float one = -0.25f;
        int rc = gn_row_select(s, &one, 1, 1, ids, vals, &t, &err);
        CHECK(rc == 1 && ids[0] == 0 && vals[0] == -0.25f && t.floor == -INFINITY &&
                  t.tail_lse == -INFINITY && t.row_min == -0.25f,
              "n = 1: rc %d floor %g tail %g", rc, (double)t.floor, (double)t.tail_lse);
        rc = gn_row_select(s, &one, 1, 5, ids, vals, &t, &err);
        CHECK(rc == 1 && ids[0] == 0, "n = 1, k = 5");
        /* exactly two tokens, one listed: tail_lse is the other's value */
        float two[2] = {-3.0f, -0.125f};
        rc = gn_row_select(s, two, 2, 1, ids, vals, &t, &err);
        CHECK(rc == 1 && ids[0] == 1 && t.floor == -3.0f && t.row_min == -3.0f &&
                  t.tail_lse >= -3.0f && t.tail_lse - -3.0f < 1e-5f,
              "two tokens: id %d floor %g tail %.9g", ids[0], (double)t.floor, (double)t.tail_lse);
        /* unlisted tokens all masked: floor and tail -inf */
        float m[4] = {-1.0f, -INFINITY, -0.5f, -INFINITY};
        rc = gn_row_select(s, m, 4, 2, ids, vals, &t, &err);
        CHECK(rc == 2 && ids[0] == 2 && ids[1] == 0 && t.floor == -INFINITY &&
                  t.tail_lse == -INFINITY && t.row_min == -INFINITY,
              "masked tail: floor %g tail %g", (double)t.floor, (double)t.tail_lse);
        /* ties: the lower ids first, the floor is the tied value */
        float tie[6] = {-1.0f, -2.0f, -1.0f, -1.0f, -2.0f, -1.0f};
        rc = gn_row_select(s, tie, 6, 3, ids, vals, &t, &err);
        CHECK(rc == 3 && ids[0] == 0 && ids[1] == 2 && ids[2] == 3 && t.floor == -1.0f,
              "ties: %d %d %d floor %g", ids[0], ids[1], ids[2], (double)t.floor);
    }
}

static void test_errors(gn_row_selector *s) {
    float row[100];
    int32_t ids[100];
    float vals[100];
    gn_row_tail t;
    for (int v = 0; v < 100; v++)
        row[v] = -(float)v * 0.1f;
    for (int ks = 1; ks <= 2; ks++) {
        gn_err err = {0};
        gn_row_selector_set_kernels(s, ks, NULL);
        row[37] = NAN;
        int rc = gn_row_select(s, row, 100, 5, ids, vals, &t, &err);
        CHECK(rc == GN_EINVAL && strstr(err.msg, "token 37") && strstr(err.msg, "NaN"),
              "NaN: %d %s", rc, err.msg);
        row[37] = -3.7f;
        row[91] = INFINITY;
        rc = gn_row_select(s, row, 100, 5, ids, vals, &t, &err);
        CHECK(rc == GN_EINVAL && strstr(err.msg, "token 91") && strstr(err.msg, "+inf"),
              "+inf: %d %s", rc, err.msg);
        row[91] = -9.1f;
        row[3] = INFINITY; /* at the head of a vector, and NaN later: the lowest id is named */
        row[60] = NAN;
        rc = gn_row_select(s, row, 100, 5, ids, vals, &t, &err);
        CHECK(rc == GN_EINVAL && strstr(err.msg, "token 3 "), "first bad token: %s", err.msg);
        row[3] = -0.3f;
        row[60] = -6.0f;
        CHECK(gn_row_select(s, row, 100, 0, ids, vals, &t, &err) == GN_ERANGE, "k = 0");
        CHECK(gn_row_select(s, row, 100, -3, ids, vals, &t, &err) == GN_ERANGE, "k < 0");
        CHECK(gn_row_select(s, row, 0, 5, ids, vals, &t, &err) == GN_ERANGE, "n = 0");
        CHECK(gn_row_select(s, row, BIG + 1, 5, ids, vals, &t, &err) == GN_ERANGE &&
                  strstr(err.msg, "sized for"),
              "n > capacity: %s", err.msg);
        CHECK(gn_row_select(s, NULL, 10, 5, ids, vals, &t, &err) == GN_EINVAL, "no row");
        CHECK(gn_row_select(s, row, 100, 5, ids, vals, &t, &err) == 5, "usable after errors");
    }
    gn_err err = {0};
    CHECK(gn_row_selector_create(0, &err) == NULL && err.code == GN_EINVAL, "n_cols 0");
    CHECK(gn_row_selector_set_kernels(s, 9, &err) == GN_EINVAL, "unknown kernel set");
    gn_row_selector_free(NULL);
}

static void test_alloc_failures(void) {
    int failures = 0;
    gn_row_selector *s = NULL;
    for (long i = 0; i < 20 && !s; i++) {
        gn_err err = {0};
        gn_alloc_fail_after(i);
        s = gn_row_selector_create(5000, &err);
        gn_alloc_fail_after(-1);
        if (!s) {
            failures++;
            CHECK(err.code == GN_ENOMEM && strstr(err.msg, "out of memory"),
                  "allocation %ld fails: %s", i, err.msg);
        }
    }
    CHECK(s != NULL && failures == 5, "created after %d injected failures", failures);
    if (!s)
        return;
    float *row = malloc(5000 * sizeof *row);
    int32_t *ids = malloc(5000 * sizeof *ids);
    float *vals = malloc(5000 * sizeof *vals);
    if (row && ids && vals) {
        lm_row(row, 5000, 0.0);
        gn_row_tail t;
        gn_err err = {0};
        gn_alloc_fail_after(0); /* any allocation now would fail */
        int rc = gn_row_select(s, row, 5000, 700, ids, vals, &t, &err);
        long made = gn_alloc_fail_after(-1);
        CHECK(rc == 700 && made == 0, "selecting allocates nothing (rc %d, %ld allocations)", rc,
              made);
    }
    free(row);
    free(ids);
    free(vals);
    gn_row_selector_free(s);
}

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

/* Time per 128,256-column LM-like row (informative). */
static void bench(gn_row_selector *s) {
    enum { NR = 8, N = 128256 };
    float *rows = malloc((size_t)NR * N * sizeof *rows);
    if (!rows)
        return;
    for (int r = 0; r < NR; r++)
        lm_row(rows + (size_t)r * N, N, 0.0);
    static const int ks[3] = {64, 256, 1024};
    for (int i = 0; i < 3; i++) {
        double us[2] = {0, 0};
        for (int kset = 0; kset < 2; kset++) {
            if (gn_row_selector_set_kernels(s, kset ? GN_ROW_SELECT_KERNELS_AVX2
                                                    : GN_ROW_SELECT_KERNELS_REF, NULL))
                continue;
            gn_row_tail t;
            int reps = kset ? 400 : 60;
            double best = INFINITY;
            for (int round = 0; round < 3; round++) { /* best of 3: the machine is shared */
                double t0 = now_us();
                for (int j = 0; j < reps; j++)
                    gn_row_select(s, rows + (size_t)(j % NR) * N, N, ks[i], g_ids[0], g_vals[0],
                                  &t, NULL);
                double dt = (now_us() - t0) / reps;
                best = dt < best ? dt : best;
            }
            us[kset] = best;
        }
        printf("128256 columns, k = %4d: ref %7.1f us/row, avx2 %6.1f us/row\n", ks[i], us[0],
               us[1]);
    }
    free(rows);
}

int main(void) {
    gn_err err = {0};
    gn_row_selector *s = gn_row_selector_create(BIG, &err);
    float *row = malloc(BIG * sizeof *row);
    g_z = malloc(BIG * sizeof *g_z);
    g_ord = malloc(BIG * sizeof *g_ord);
    for (int i = 0; i < 2; i++) {
        g_ids[i] = malloc((BIG + 8) * sizeof *g_ids[i]);
        g_vals[i] = malloc((BIG + 8) * sizeof *g_vals[i]);
    }
    CHECK(s && row && g_z && g_ord && g_ids[0] && g_ids[1] && g_vals[0] && g_vals[1], "setup: %s",
          err.msg);
    if (!s || !row || !g_z || !g_ord || !g_ids[0] || !g_ids[1] || !g_vals[0] || !g_vals[1])
        GN_TEST_MAIN_END();
    g_avx2 = gn_row_selector_set_kernels(s, GN_ROW_SELECT_KERNELS_AVX2, NULL) == 0;
    if (!g_avx2)
        printf("no AVX2 on this CPU: only the reference kernels are tested\n");

    test_small_cases(s);
    test_errors(s);
    test_random_rows(s, row);
    test_tail_precision(s, row);
    test_alloc_failures();
    bench(s);

    gn_row_selector_free(s);
    free(row);
    free(g_z);
    free(g_ord);
    for (int i = 0; i < 2; i++) {
        free(g_ids[i]);
        free(g_vals[i]);
    }
    GN_TEST_MAIN_END();
}
