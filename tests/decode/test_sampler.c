/* test_sampler.c — greedy, seeds, the top-k / top-p / min-p support sets
 * against a direct computation written the way Hugging Face's warpers are
 * (top-p with an ascending cumulative sum), empirical frequencies against the
 * distribution (chi-square, fixed seed: deterministic), the float exp against
 * exp(), and the AVX2 kernels against the plain-C ones bit for bit. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gn_alloc.h"
#include "gn_test.h"
#include "sampler.h"

#define NV 300

static uint64_t rs = 0x2545F4914F6CDD1Dull;
static double urand(void) { /* xorshift64, independent of the library's RNG */
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (double)(rs >> 11) * 0x1.0p-53;
}

/* ---- the direct computation -------------------------------------------- */

typedef struct {
    double z;
    int id;
} zid;

static int cmp_asc(const void *pa, const void *pb) { /* ascending z, ties: higher id first */
    const zid *a = pa, *b = pb;
    if (a->z != b->z)
        return a->z < b->z ? -1 : 1;
    return b->id - a->id;
}

/* keep[v] = 1 for the support, want[v] = probability; HF warper order. */
static void direct(const float *score, int n, const gn_sampler_params *p, int *keep, double *want) {
    double z[NV];
    for (int v = 0; v < n; v++) {
        z[v] = (double)score[v] / p->temperature;
        keep[v] = isfinite(score[v]) ? 1 : 0;
    }
    if (p->top_k > 0) { /* scores < k-th largest value are removed */
        double s[NV];
        int m = 0;
        for (int v = 0; v < n; v++)
            if (keep[v])
                s[m++] = z[v];
        if (p->top_k < m) {
            zid t[NV];
            for (int i = 0; i < m; i++)
                t[i] = (zid){s[i], i};
            qsort(t, (size_t)m, sizeof *t, cmp_asc);
            double kth = t[m - p->top_k].z;
            for (int v = 0; v < n; v++)
                if (z[v] < kth)
                    keep[v] = 0;
        }
    }
    if (p->top_p < 1.0f) { /* HF: sort ascending, remove cumprobs <= 1 - top_p, keep the last */
        zid t[NV];
        int m = 0;
        double mx = -INFINITY, tot = 0.0;
        for (int v = 0; v < n; v++)
            if (keep[v] && z[v] > mx)
                mx = z[v];
        for (int v = 0; v < n; v++)
            if (keep[v]) {
                t[m++] = (zid){z[v], v};
                tot += exp(z[v] - mx);
            }
        qsort(t, (size_t)m, sizeof *t, cmp_asc);
        double cum = 0.0;
        for (int i = 0; i < m; i++) {
            cum += exp(t[i].z - mx) / tot;
            if (cum <= 1.0 - (double)p->top_p && i < m - 1)
                keep[t[i].id] = 0;
        }
    }
    if (p->min_p > 0.0f) { /* probs < min_p * max prob removed */
        double mx = -INFINITY, tot = 0.0;
        for (int v = 0; v < n; v++)
            if (keep[v] && z[v] > mx)
                mx = z[v];
        for (int v = 0; v < n; v++)
            if (keep[v])
                tot += exp(z[v] - mx);
        for (int v = 0; v < n; v++)
            if (keep[v] && exp(z[v] - mx) / tot < (double)p->min_p * (1.0 / tot))
                keep[v] = 0;
    }
    double mx = -INFINITY, tot = 0.0;
    for (int v = 0; v < n; v++)
        if (keep[v] && z[v] > mx)
            mx = z[v];
    for (int v = 0; v < n; v++)
        want[v] = keep[v] ? exp(z[v] - mx) : 0.0;
    for (int v = 0; v < n; v++)
        tot += want[v];
    for (int v = 0; v < n; v++)
        want[v] /= tot;
}

static void random_row(float *row, int n, double scale) {
    for (int v = 0; v < n; v++)
        row[v] = (float)((urand() * 2.0 - 1.0) * scale);
}

/* ---- tests --------------------------------------------------------------- */

static void test_rng(void) {
    gn_rng r;
    gn_rng_seed(&r, 0);
    /* SplitMix64(0) and xoshiro256** reference outputs */
    CHECK(r.s[0] == 0xe220a8397b1dcdafull, "splitmix64 state %llx", (unsigned long long)r.s[0]);
    CHECK(gn_rng_next(&r) == 0x99ec5f36cb75f2b4ull, "xoshiro256** first output");
    CHECK(gn_rng_next(&r) == 0xbf6e1f784956452aull, "xoshiro256** second output");
    CHECK(gn_rng_next(&r) == 0x1a5f849d4933e6e0ull, "xoshiro256** third output");
    double lo = 1.0, hi = 0.0;
    for (int i = 0; i < 100000; i++) {
        double u = gn_rng_uniform(&r);
        if (u < lo)
            lo = u;
        if (u > hi)
            hi = u;
    }
    CHECK(lo >= 0.0 && lo < 1e-3 && hi < 1.0 && hi > 1.0 - 1e-3, "uniform range [%g, %g]", lo, hi);
}

static void test_greedy(gn_sampler *s) {
    float row[NV];
    random_row(row, NV, 5.0);
    row[17] = 9.0f;
    row[230] = 9.0f; /* tie: lowest id wins */
    gn_sampler_params p = gn_sampler_default_params();
    p.temperature = 0.0f;
    p.top_k = 3;
    p.top_p = 0.2f;
    gn_rng r, r0;
    gn_rng_seed(&r, 5);
    r0 = r;
    gn_err err = {0};
    CHECK(gn_sampler_sample(s, &p, &r, row, NV, &err) == 17, "greedy argmax, lowest id on tie");
    CHECK(memcmp(&r, &r0, sizeof r) == 0, "greedy consumes no randomness");
    row[5] = 9.5f;
    CHECK(gn_sampler_sample(s, &p, &r, row, NV, &err) == 5, "greedy argmax");
    row[0] = -INFINITY;
    CHECK(gn_sampler_sample(s, &p, &r, row, NV, &err) == 5, "-inf entries fine");
    const int32_t *ids;
    const double *probs;
    int m;
    CHECK(gn_sampler_dist(s, &p, row, NV, &ids, &probs, &m, &err) == 0 && m == 1 && ids[0] == 5 &&
              probs[0] == 1.0,
          "greedy distribution is one token");
    /* tiny temperature converges to greedy */
    p.temperature = 1e-4f;
    p.top_k = 0;
    p.top_p = 1.0f;
    int all5 = 1;
    for (int i = 0; i < 50; i++)
        if (gn_sampler_sample(s, &p, &r, row, NV, &err) != 5)
            all5 = 0;
    CHECK(all5, "T = 1e-4 behaves greedily here");
}

static void test_seeds(gn_sampler *s) {
    float row[NV];
    random_row(row, NV, 2.0);
    gn_sampler_params p = gn_sampler_default_params();
    p.temperature = 1.3f;
    p.top_p = 0.95f;
    int a[64], b[64], c[64];
    gn_rng ra, rb, rc;
    gn_rng_seed(&ra, 1234);
    gn_rng_seed(&rb, 1234);
    gn_rng_seed(&rc, 1235);
    gn_err err = {0};
    for (int i = 0; i < 64; i++) {
        a[i] = gn_sampler_sample(s, &p, &ra, row, NV, &err);
        b[i] = gn_sampler_sample(s, &p, &rb, row, NV, &err);
        c[i] = gn_sampler_sample(s, &p, &rc, row, NV, &err);
    }
    CHECK(memcmp(a, b, sizeof a) == 0, "same seed, same tokens");
    CHECK(memcmp(a, c, sizeof a) != 0, "different seeds, different tokens");
    int in_range = 1;
    for (int i = 0; i < 64; i++)
        if (a[i] < 0 || a[i] >= NV)
            in_range = 0;
    CHECK(in_range, "tokens in range");
}

/* Support sets and probabilities equal the direct computation. */
static void test_filters_vs_direct(gn_sampler *s) {
    const float temps[] = {0.5f, 1.0f, 2.0f};
    const int ks[] = {0, 1, 5, 40, NV};
    const float ps[] = {1.0f, 0.05f, 0.5f, 0.9f, 0.999f};
    const float mps[] = {0.0f, 0.01f, 0.2f, 1.0f};
    int cases = 0, bad_support = 0, bad_prob = 0;
    double worst = 0.0;
    for (int rep = 0; rep < 5; rep++) {
        float row[NV];
        /* rep 3: very peaked; rep 4: nearly flat (top-p needs several levels) */
        random_row(row, NV, rep == 3 ? 12.0 : rep == 4 ? 1e-3 : 3.0);
        if (rep == 2) { /* ties and masked tokens */
            for (int v = 0; v < NV; v += 7)
                row[v] = 1.25f;
            for (int v = 3; v < NV; v += 11)
                row[v] = -INFINITY;
        }
        for (size_t ti = 0; ti < 3; ti++)
            for (size_t ki = 0; ki < 5; ki++)
                for (size_t pi = 0; pi < 5; pi++)
                    for (size_t mi = 0; mi < 4; mi++) {
                        gn_sampler_params p = gn_sampler_default_params();
                        p.temperature = temps[ti];
                        p.top_k = ks[ki];
                        p.top_p = ps[pi];
                        p.min_p = mps[mi];
                        int keep[NV];
                        double want[NV], got[NV] = {0};
                        direct(row, NV, &p, keep, want);
                        const int32_t *ids;
                        const double *probs;
                        int m;
                        gn_err err = {0};
                        if (gn_sampler_dist(s, &p, row, NV, &ids, &probs, &m, &err)) {
                            CHECK(0, "dist: %s", err.msg);
                            return;
                        }
                        int gotkeep[NV] = {0};
                        for (int i = 0; i < m; i++) {
                            gotkeep[ids[i]]++;
                            got[ids[i]] = probs[i];
                        }
                        int diff = 0;
                        for (int v = 0; v < NV; v++)
                            if (gotkeep[v] != keep[v])
                                diff++;
                        if (diff) {
                            bad_support++;
                            fprintf(stderr,
                                    "support differs in %d ids: rep %d T %g k %d p %g min_p %g\n",
                                    diff, rep, (double)p.temperature, p.top_k, (double)p.top_p,
                                    (double)p.min_p);
                        }
                        /* weights are float (E(d), d = (score - max) / T in
                         * float): relative error about 1e-7 * (1 + |d|) */
                        int bad = 0;
                        for (int v = 0; v < NV; v++) {
                            double e = fabs(got[v] - want[v]) / (want[v] + 1e-300);
                            if (want[v] > 0.0 && e > worst)
                                worst = e;
                            if (fabs(got[v] - want[v]) > 1e-5 * want[v] + 1e-12)
                                bad = 1;
                        }
                        bad_prob += bad;
                        cases++;
                    }
    }
    CHECK(cases == 5 * 3 * 5 * 5 * 4, "cases %d", cases);
    CHECK(bad_support == 0, "%d cases with a support set unlike the direct one", bad_support);
    CHECK(bad_prob == 0, "%d cases with probabilities unlike the direct ones (worst rel %.3g)",
          bad_prob, worst);
    printf("filters vs direct: worst relative probability error %.3g\n", worst);
}

/* Bit v set when token v is in the support. */
static int set_of(gn_sampler *s, const gn_sampler_params *p, const float *row, int n,
                  const int32_t **ids, const double **probs, int *m) {
    gn_err err = {0};
    if (gn_sampler_dist(s, p, row, n, ids, probs, m, &err))
        return -1;
    int set = 0;
    for (int i = 0; i < *m; i++)
        set |= 1 << (*ids)[i];
    return set;
}

/* Hand-checkable sets. */
static void test_filters_small(gn_sampler *s) {
    /* probs at T=1: ln of 0.4, 0.3, 0.2, 0.1 -> ids 2, 0, 3, 1 by rank */
    float row[4] = {logf(0.3f), logf(0.1f), logf(0.4f), logf(0.2f)};
    gn_sampler_params p = gn_sampler_default_params();
    const int32_t *ids;
    const double *probs;
    int m;
    int set;
#define SET_OF() (set = set_of(s, &p, row, 4, &ids, &probs, &m))
    p.top_k = 2;
    CHECK(SET_OF() == ((1 << 2) | (1 << 0)), "top-2 = {2, 0}, got %x", set);
    p.top_k = 0;
    p.top_p = 0.65f; /* 0.4 + 0.3 = 0.7 >= 0.65 */
    CHECK(SET_OF() == ((1 << 2) | (1 << 0)), "top-p 0.65 = {2, 0}, got %x", set);
    p.top_p = 0.35f; /* 0.4 alone */
    CHECK(SET_OF() == (1 << 2), "top-p 0.35 = {2}, got %x", set);
    p.top_p = 0.75f;
    CHECK(SET_OF() == ((1 << 2) | (1 << 0) | (1 << 3)), "top-p 0.75 = {2, 0, 3}, got %x", set);
    p.top_p = 1.0f;
    p.min_p = 0.6f; /* keep p >= 0.24: 0.4, 0.3 */
    CHECK(SET_OF() == ((1 << 2) | (1 << 0)), "min-p 0.6 = {2, 0}, got %x", set);
    p.min_p = 0.45f; /* keep p >= 0.18: 0.4, 0.3, 0.2 */
    CHECK(SET_OF() == ((1 << 2) | (1 << 0) | (1 << 3)), "min-p 0.45, got %x", set);
    /* order matters: top-k 3 -> {0.4, 0.3, 0.2} renormalised to 4/9, 3/9, 2/9;
     * then top-p 0.7: 4/9 = 0.444 < 0.7, + 3/9 = 0.777 >= 0.7 -> {2, 0} */
    p.min_p = 0.0f;
    p.top_k = 3;
    p.top_p = 0.7f;
    CHECK(SET_OF() == ((1 << 2) | (1 << 0)), "top-k then top-p, got %x", set);
    int ok = 1;
    for (int i = 0; i < m; i++)
        if (fabs(probs[i] - (ids[i] == 2 ? 4.0 / 7.0 : 3.0 / 7.0)) > 1e-6)
            ok = 0;
    CHECK(ok, "renormalised over the kept set");
    /* temperature before top-p: T = 0.5 squares the ratios: 16:9:4:1 of 30 */
    p.top_k = 0;
    p.temperature = 0.5f;
    p.top_p = 0.55f; /* 16/30 = 0.533 < 0.55 -> needs the second token */
    CHECK(SET_OF() == ((1 << 2) | (1 << 0)), "temperature applies before top-p, got %x", set);
    p.top_p = 0.5f;
    CHECK(SET_OF() == (1 << 2), "T 0.5, top-p 0.5 = {2}, got %x", set);
#undef SET_OF
}

/* Pearson chi-square of n draws against the sampler's own distribution
 * (which test_filters_vs_direct ties to the direct computation). */
static void test_frequencies(gn_sampler *s) {
    enum { K = 12, DRAWS = 200000 };
    float row[K];
    random_row(row, K, 1.5);
    const struct {
        float t, p, mp;
        int k;
    } cases[] = {{1.0f, 1.0f, 0.0f, 0},
                 {0.7f, 1.0f, 0.0f, 8},
                 {1.4f, 0.8f, 0.0f, 0},
                 {1.0f, 1.0f, 0.3f, 0},
                 {0.9f, 0.9f, 0.05f, 10}};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        gn_sampler_params p = gn_sampler_default_params();
        p.temperature = cases[ci].t;
        p.top_p = cases[ci].p;
        p.min_p = cases[ci].mp;
        p.top_k = cases[ci].k;
        p.seed = 42 + ci;
        const int32_t *ids;
        const double *probs;
        int m;
        gn_err err = {0};
        double want[K] = {0};
        CHECK(gn_sampler_dist(s, &p, row, K, &ids, &probs, &m, &err) == 0, "%s", err.msg);
        for (int i = 0; i < m; i++)
            want[ids[i]] = probs[i];
        long count[K] = {0};
        gn_rng r;
        gn_rng_seed(&r, p.seed);
        for (int i = 0; i < DRAWS; i++) {
            int t = gn_sampler_sample(s, &p, &r, row, K, &err);
            if (t >= 0 && t < K)
                count[t]++;
        }
        double chi2 = 0.0;
        int outside = 0;
        for (int v = 0; v < K; v++) {
            if (want[v] == 0.0) {
                if (count[v])
                    outside++;
                continue;
            }
            double e = want[v] * DRAWS;
            chi2 += (count[v] - e) * (count[v] - e) / e;
        }
        /* df <= 11; P(chi2 > 31.3) = 0.001 at df 11 */
        CHECK(outside == 0, "case %zu: draws outside the support", ci);
        CHECK(chi2 < 31.3, "case %zu: chi-square %.2f over %d tokens", ci, chi2, m);
    }
}

static void test_errors(gn_sampler *s) {
    float row[NV];
    random_row(row, NV, 1.0);
    gn_sampler_params p = gn_sampler_default_params();
    gn_rng r;
    gn_rng_seed(&r, 1);
    gn_err err = {0};
    CHECK(gn_sampler_sample(s, &p, &r, row, NV + 1, &err) == GN_ERANGE, "row longer than scratch");
    CHECK(gn_sampler_sample(s, &p, &r, row, 0, &err) == GN_ERANGE, "empty row");
    row[9] = NAN;
    CHECK(gn_sampler_sample(s, &p, &r, row, NV, &err) == GN_EINVAL, "NaN score");
    CHECK(strstr(err.msg, "token 9") != NULL, "message names the token: %s", err.msg);
    for (int v = 0; v < NV; v++)
        row[v] = -INFINITY;
    CHECK(gn_sampler_sample(s, &p, &r, row, NV, &err) == GN_EINVAL, "all -inf");
    random_row(row, NV, 1.0);
    row[4] = INFINITY;
    CHECK(gn_sampler_sample(s, &p, &r, row, NV, &err) == GN_EINVAL, "+inf score");
    random_row(row, NV, 1.0);
    p.temperature = -1.0f;
    CHECK(gn_sampler_sample(s, &p, &r, row, NV, &err) == GN_EINVAL, "negative temperature");
    p = gn_sampler_default_params();
    p.top_p = 0.0f;
    CHECK(gn_sampler_validate_params(&p, &err) == GN_EINVAL, "top_p 0");
    p.top_p = 1.5f;
    CHECK(gn_sampler_validate_params(&p, &err) == GN_EINVAL && strstr(err.msg, "top_p"),
          "top_p 1.5: %s", err.msg);
    p = gn_sampler_default_params();
    p.top_k = -2;
    CHECK(gn_sampler_validate_params(&p, &err) == GN_EINVAL, "top_k < 0");
    p = gn_sampler_default_params();
    p.min_p = 1.5f;
    CHECK(gn_sampler_validate_params(&p, &err) == GN_EINVAL, "min_p > 1");
    p = gn_sampler_default_params();
    CHECK(p.temperature == 1.0f && p.top_k == 0 && p.top_p == 1.0f && p.min_p == 0.0f, "defaults");
    CHECK(gn_sampler_create(0, &err) == NULL, "n_vocab 0 refused");
    /* allocation failure at create is reported and leaks nothing */
    for (long k = 0; k < 4; k++) {
        gn_alloc_fail_after(k);
        gn_sampler *t = gn_sampler_create(100, &err);
        gn_alloc_fail_after(-1);
        if (t) {
            gn_sampler_free(t);
        } else {
            CHECK(err.code == GN_ENOMEM, "alloc failure %ld -> ENOMEM", k);
        }
    }
}

/* E(x), the float exp the weights use, against exp(): a two-token row
 * {0, x} at T = 1 has p1 / p0 = E(x) exactly (d = x - 0). */
static void test_exp_accuracy(gn_sampler *s) {
    double worst = 0.0, worst_x = 0.0;
    int dropped_ok = 1, ok = 1;
    gn_sampler_params p = gn_sampler_default_params();
    for (int i = 0; i <= 40000; i++) {
        float row[2] = {0.0f, (float)(-87.0 * i / 40000.0)};
        if (i % 97 == 0) /* and some x with every mantissa bit set */
            row[1] = -(float)urand() * 87.0f;
        const int32_t *ids;
        const double *probs;
        int m;
        gn_err err = {0};
        if (gn_sampler_dist(s, &p, row, 2, &ids, &probs, &m, &err) || m != 2 || ids[0] != 0) {
            ok = 0;
            continue;
        }
        double e = fabs(probs[1] / probs[0] / exp((double)row[1]) - 1.0);
        if (e > worst) {
            worst = e;
            worst_x = row[1];
        }
    }
    for (int i = 1; i <= 200; i++) { /* below -87 (and -inf): weight 0, token dropped */
        float row[2] = {0.0f, -87.0f - 0.5f * (float)i};
        if (i == 200)
            row[1] = -INFINITY;
        const int32_t *ids;
        const double *probs;
        int m;
        gn_err err = {0};
        if (gn_sampler_dist(s, &p, row, 2, &ids, &probs, &m, &err) || m != 1 || ids[0] != 0 ||
            probs[0] != 1.0)
            dropped_ok = 0;
    }
    CHECK(ok, "two-token rows");
    CHECK(worst < 2.5e-7, "E(x) max relative error %.3g at x = %.9g", worst, worst_x);
    CHECK(dropped_ok, "d < -87 gives weight 0");
    printf("E(x) on [-87, 0]: max relative error vs exp() %.3g (x = %.7g)\n", worst, worst_x);
}

/* Frequencies against float64 probabilities computed here, on a row long
 * enough to span several blocks and groups of the draw walk. */
static void test_frequencies_big(void) {
    enum { N = 5000, TOP = 24, DRAWS = 200000 };
    gn_err err = {0};
    gn_sampler *s = gn_sampler_create(N, &err);
    float *row = malloc(sizeof(float) * N);
    CHECK(s && row, "sampler");
    if (!s || !row) {
        gn_sampler_free(s);
        free(row);
        return;
    }
    for (int v = 0; v < N; v++) /* a long tail, and TOP likely tokens spread over the row */
        row[v] = (float)(-14.0 + 3.0 * urand());
    for (int i = 0; i < TOP; i++)
        row[(i * 2083 + 11) % N] = (float)(-1.0 - 2.0 * urand());
    const float temps[2] = {1.0f, 0.7f};
    for (int ti = 0; ti < 2; ti++) {
        double want[N], tot = 0.0, mx = -INFINITY;
        for (int v = 0; v < N; v++)
            mx = fmax(mx, (double)row[v] / temps[ti]);
        for (int v = 0; v < N; v++)
            tot += (want[v] = exp((double)row[v] / temps[ti] - mx));
        long *count = calloc(N, sizeof *count);
        gn_sampler_params p = gn_sampler_default_params();
        p.temperature = temps[ti];
        gn_rng r;
        gn_rng_seed(&r, 99 + ti);
        for (int i = 0; i < DRAWS && count; i++) {
            int t = gn_sampler_sample(s, &p, &r, row, N, &err);
            if (t >= 0 && t < N)
                count[t]++;
        }
        /* bins: each likely token, and the tail as one bin */
        double chi2 = 0.0, tail_e = 0.0, tail_o = 0.0;
        int bins = 0;
        for (int v = 0; v < N && count; v++) {
            double e = want[v] / tot * DRAWS;
            if (e >= 20.0) {
                chi2 += (count[v] - e) * (count[v] - e) / e;
                bins++;
            } else {
                tail_e += e;
                tail_o += (double)count[v];
            }
        }
        chi2 += (tail_o - tail_e) * (tail_o - tail_e) / tail_e;
        /* df = bins (<= 25); P(chi2 > 52.6) = 0.001 at df 25 */
        CHECK(chi2 < 52.6, "T %g: chi-square %.2f over %d bins", (double)temps[ti], chi2, bins + 1);
        free(count);
    }
    gn_sampler_free(s);
    free(row);
}

/* A row of the kind the kernels must agree on: random scales, ties, -inf,
 * one finite token, huge and tiny values. */
static void hard_row(float *row, int n, int kind) {
    random_row(row, n, kind % 4 == 0 ? 1e-3 : kind % 4 == 1 ? 3.0 : kind % 4 == 2 ? 30.0 : 300.0);
    switch (kind % 8) {
    case 1: /* ties, some with the max */
        for (int v = 0; v < n; v += 3)
            row[v] = 1.25f;
        break;
    case 2: /* masked tokens */
        for (int v = 1; v < n; v += 2)
            row[v] = -INFINITY;
        break;
    case 3: /* all -inf but one */
        for (int v = 0; v < n; v++)
            row[v] = -INFINITY;
        row[(int)(urand() * n)] = -3.0f;
        break;
    case 4: /* log-probs with a long tail and a few likely tokens */
        for (int v = 0; v < n; v++)
            row[v] = (float)(-20.0 + 8.0 * urand() + (urand() < 0.01 ? 15.0 : 0.0));
        break;
    case 5: /* few distinct values */
        for (int v = 0; v < n; v++)
            row[v] = (float)(int)(urand() * 4.0);
        break;
    case 6: /* weights over the whole float range: the sums round (order matters) */
        for (int v = 0; v < n; v++)
            row[v] = (float)(-86.0 * urand());
        break;
    case 7: /* a big weight per block and tail weights near 2^-53 of it (used at T = 1):
             * the double sums round, so their order shows in the total */
        for (int v = 0; v < n; v++)
            row[v] = v >= 16 ? -INFINITY : (float)(-35.5 - 1.0 * urand());
        row[0] = n > 1 ? 0.0f : row[0];
        if (n > 1)
            row[1] = 1.0f; /* the max; the tail weights e^-36.5 .. e^-37.5 round in the sum */
        break;
    default:
        break;
    }
}

/* The same rows for every kernel set compared. */
static void urand_seed_for_kernels(void) { rs = 0x853c49e6748fea9bull; }

/* Compares one row under both kernel sets: bit 0 = distributions differ,
 * bit 1 = draws differ. */
static int compare_kernels(gn_sampler *ref, gn_sampler *fast, const float *row, int n,
                           const gn_sampler_params *pp, uint64_t seed) {
    gn_sampler_params p = *pp;
    int bad = 0;
    const int32_t *ia, *ib;
    const double *pa, *pb;
    int ma, mb;
    gn_err ea = {0}, eb = {0};
    int ra = gn_sampler_dist(ref, &p, row, n, &ia, &pa, &ma, &ea);
    int rb = gn_sampler_dist(fast, &p, row, n, &ib, &pb, &mb, &eb);
    if (ra != rb || (ra == 0 && (ma != mb || memcmp(ia, ib, sizeof *ia * (size_t)ma) ||
                                 memcmp(pa, pb, sizeof *pa * (size_t)ma)))) {
        bad |= 1;
        fprintf(stderr, "dist differs: n %d T %g k %d p %g min_p %g\n", n, (double)p.temperature,
                p.top_k, (double)p.top_p, (double)p.min_p);
    }
    gn_rng r1, r2;
    gn_rng_seed(&r1, seed);
    gn_rng_seed(&r2, seed);
    for (int i = 0; i < 16; i++)
        if (gn_sampler_sample(ref, &p, &r1, row, n, &ea) !=
            gn_sampler_sample(fast, &p, &r2, row, n, &eb)) {
            bad |= 2;
            break;
        }
    return bad;
}

/* The AVX2 kernels against the plain-C reference, bit for bit: the same
 * distribution (ids, probabilities) and the same tokens from the same seed. */
static void test_kernels_agree(void) {
    gn_err err = {0};
    enum { MAXN = 4200 };
    gn_sampler *ref = gn_sampler_create(MAXN, &err), *fast = gn_sampler_create(MAXN, &err);
    float *row = malloc(sizeof(float) * MAXN);
    CHECK(ref && fast && row, "samplers");
    if (!ref || !fast || !row)
        goto out;
    CHECK(gn_sampler_set_kernels(ref, GN_SAMPLER_KERNELS_REF, &err) == 0 &&
              gn_sampler_kernels(ref) == GN_SAMPLER_KERNELS_REF,
          "reference kernels");
    CHECK(gn_sampler_set_kernels(ref, 99, &err) == GN_EINVAL, "unknown kernel set refused");
    const int sets[2] = {GN_SAMPLER_KERNELS_AVX2, GN_SAMPLER_KERNELS_AVX512};
    for (int ki = 0; ki < 2; ki++) {
        if (gn_sampler_set_kernels(fast, sets[ki], &err)) {
            printf("kernel set %d not on this CPU: its comparison is skipped (%s)\n", sets[ki],
                   err.msg);
            continue;
        }
        urand_seed_for_kernels();
        const float temps[] = {1e-30f, 1e-4f, 0.3f, 0.7f, 1.0f, 2.0f, 1e4f, 1e30f};
        const float tps[] = {1.0f, 0.05f, 0.5f, 0.9f, 0.95f, 0.999f};
        const float mps[] = {0.0f, 0.05f, 0.5f, 1.0f};
        const int sizes[] = {1,   2,   7,    8,    15,   16,   17,   31,
                             33,  100, 257,  1023, 1024, 1025, 4100, MAXN};
        int cases = 0, bad_dist = 0, bad_draw = 0;
        for (int rep = 0; rep < 700; rep++) {
            int n = sizes[rep % (int)(sizeof sizes / sizeof *sizes)];
            hard_row(row, n, rep / 3);
            gn_sampler_params p = gn_sampler_default_params();
            p.temperature = rep % 11 == 0 ? 0.0f : temps[(int)(urand() * 8)];
            if ((rep / 3) % 8 == 7)
                p.temperature = 1.0f;
            int ks[] = {0, 0, 1, 3, 50, n - 1, n};
            p.top_k = ks[(int)(urand() * 7)];
            p.top_p = tps[(int)(urand() * 6)];
            p.min_p = mps[(int)(urand() * 4)];
            int bad = compare_kernels(ref, fast, row, n, &p, (uint64_t)rep);
            bad_dist += bad & 1;
            bad_draw += (bad >> 1) & 1;
            cases++;
        }
        for (int rep = 0; rep < 300; rep++) { /* sums that round: the tree order must match */
            int n = 16 + rep % 20;
            hard_row(row, n, 7);
            gn_sampler_params p = gn_sampler_default_params();
            p.top_p = rep % 2 ? 1.0f : 0.999f;
            int bad = compare_kernels(ref, fast, row, n, &p, (uint64_t)rep);
            bad_dist += bad & 1;
            bad_draw += (bad >> 1) & 1;
            cases++;
        }
        CHECK(bad_dist == 0, "kernels %d: %d of %d rows with a different distribution", sets[ki],
              bad_dist, cases);
        CHECK(bad_draw == 0, "kernels %d: %d of %d rows with different draws", sets[ki], bad_draw,
              cases);
        /* the same errors, NaN anywhere (vector part and tail) */
        int nan_ok = 1;
        for (int pos = 0; pos < 40; pos++) {
            int n = 37;
            random_row(row, n, 1.0);
            row[pos % n] = NAN;
            gn_rng r1, r2;
            gn_rng_seed(&r1, 1);
            gn_rng_seed(&r2, 1);
            gn_sampler_params p = gn_sampler_default_params();
            gn_err ea = {0}, eb = {0};
            int ta = gn_sampler_sample(ref, &p, &r1, row, n, &ea);
            int tb = gn_sampler_sample(fast, &p, &r2, row, n, &eb);
            if (ta != GN_EINVAL || tb != GN_EINVAL || strcmp(ea.msg, eb.msg))
                nan_ok = 0;
        }
        CHECK(nan_ok, "NaN rejected the same way by both kernel sets");
    }
out:
    gn_sampler_free(ref);
    gn_sampler_free(fast);
    free(row);
}

/* No allocation per token, and a vocabulary-sized row is fast enough. */
static void test_no_alloc_and_speed(void) {
    enum { BIG = 152064 };
    gn_err err = {0};
    gn_sampler *s = gn_sampler_create(BIG, &err);
    float *row = malloc(sizeof(float) * BIG);
    CHECK(s && row, "big sampler");
    if (!s || !row) {
        gn_sampler_free(s);
        free(row);
        return;
    }
    for (int v = 0; v < BIG; v++) /* LM-like: a few likely tokens, a long tail */
        row[v] = (float)(-12.0 + 4.0 * urand() + (v % 997 == 0 ? 10.0 : 0.0));
    gn_sampler_params p = gn_sampler_default_params();
    p.top_p = 0.95f;
    p.top_k = 0;
    gn_rng r;
    gn_rng_seed(&r, 3);
    gn_alloc_fail_after(-1);
    int ok = 1;
    clock_t t0 = clock();
    for (int i = 0; i < 50; i++) {
        p.min_p = (i & 1) ? 0.05f : 0.0f;
        p.top_k = (i % 3 == 0) ? 50 : 0;
        if (gn_sampler_sample(s, &p, &r, row, BIG, &err) < 0)
            ok = 0;
    }
    double ms = (double)(clock() - t0) * 1000.0 / CLOCKS_PER_SEC / 50;
    /* a nearly flat row (an untrained model): top-p keeps most of the vocabulary */
    for (int v = 0; v < BIG; v++)
        row[v] = (float)(-11.9 + 0.01 * urand());
    p.top_k = 0;
    p.min_p = 0.0f;
    p.top_p = 0.9f;
    t0 = clock();
    for (int i = 0; i < 20; i++)
        if (gn_sampler_sample(s, &p, &r, row, BIG, &err) < 0)
            ok = 0;
    double ms_flat = (double)(clock() - t0) * 1000.0 / CLOCKS_PER_SEC / 20;
    long allocs = gn_alloc_fail_after(-1);
    CHECK(ok, "sampling a %d-token row: %s", BIG, err.msg);
    CHECK(allocs == 0, "%ld allocations while sampling", allocs);
    printf("sampling a %d-token row: %.2f ms per token (peaked), %.2f ms (flat, top-p 0.9)\n", BIG,
           ms, ms_flat);
    gn_sampler_free(s);
    free(row);
}

int main(void) {
    gn_err err = {0};
    gn_sampler *s = gn_sampler_create(NV, &err);
    CHECK(s != NULL, "%s", err.msg);
    if (!s)
        GN_TEST_MAIN_END();
    test_rng();
    test_greedy(s);
    test_seeds(s);
    test_filters_small(s);
    test_filters_vs_direct(s);
    test_frequencies(s);
    test_errors(s);
    test_exp_accuracy(s);
    gn_sampler_free(s);
    test_frequencies_big();
    test_kernels_agree();
    test_no_alloc_and_speed();
    GN_TEST_MAIN_END();
}
