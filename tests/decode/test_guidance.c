/* test_guidance.c — the GenARM combination rule against a direct computation.
 *
 * For random log-softmax rows (base + several ARMs) the distribution the
 * sampler draws from after gn_guidance_combine must equal softmax(score / T)
 * computed here independently in double, and for T = 1 with one ARM it must
 * equal π_base · π_arm^{1/β}, renormalised, computed from probabilities (not
 * log-probs). The combined row must also equal, bit for bit, the rule
 * evaluated here in plain float arithmetic (each product and sum rounded on
 * its own), whichever kernel (AVX2 or plain C) the library picks. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "gn_test.h"
#include "guidance.h"
#include "sampler.h"

#define NV 97
#define MAXA 4

static uint64_t rs = 88172645463325252ull;
static double urand(void) { /* xorshift64, independent of the library's RNG */
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (double)(rs >> 11) * 0x1.0p-53;
}

/* A random log-softmax row (double logits of spread `scale`, normalised in
 * double, stored as float like the runner's output). */
static void random_logprobs(float *row, int n, double scale) {
    double x[NV], m = -INFINITY, s = 0.0;
    for (int v = 0; v < n; v++) {
        x[v] = (urand() * 2.0 - 1.0) * scale;
        if (x[v] > m)
            m = x[v];
    }
    for (int v = 0; v < n; v++)
        s += exp(x[v] - m);
    double lse = m + log(s);
    for (int v = 0; v < n; v++)
        row[v] = (float)(x[v] - lse);
}

/* Max |a - b| over the full vocabulary, where the sampler's support (ids,
 * probs) is scattered into a dense vector first. */
static double dist_diff(const int32_t *ids, const double *probs, int m, const double *want, int n) {
    double dense[NV] = {0}, worst = 0.0;
    for (int i = 0; i < m; i++)
        dense[ids[i]] += probs[i];
    for (int v = 0; v < n; v++) {
        double d = fabs(dense[v] - want[v]);
        if (d > worst)
            worst = d;
    }
    return worst;
}

static void test_combined_distribution(gn_sampler *smp) {
    float base[NV], arms[MAXA][NV], score[NV];
    const float *armp[MAXA];
    const int n_arms_cases[] = {0, 1, 2, 3, 4};
    const float betas[] = {0.25f, 0.5f, 1.0f, 2.0f, 7.5f};
    const float temps[] = {0.3f, 0.7f, 1.0f, 1.5f};
    int cases = 0;
    for (size_t ai = 0; ai < sizeof n_arms_cases / sizeof *n_arms_cases; ai++) {
        for (size_t bi = 0; bi < sizeof betas / sizeof *betas; bi++) {
            for (size_t ti = 0; ti < sizeof temps / sizeof *temps; ti++) {
                gn_guidance g = gn_guidance_default();
                g.n_arms = n_arms_cases[ai];
                g.beta = betas[bi];
                random_logprobs(base, NV, 4.0);
                for (int i = 0; i < g.n_arms; i++) {
                    random_logprobs(arms[i], NV, 3.0);
                    armp[i] = arms[i];
                    g.weights[i] = (float)(urand() * 2.0 - 0.5); /* some negative */
                }
                gn_err err = {0};
                CHECK(gn_guidance_validate(&g, &err) == 0, "%s", err.msg);
                gn_guidance_combine(&g, base, armp, score, NV);

                /* direct: score in double, softmax(score / T) */
                double want[NV], m = -INFINITY, s = 0.0;
                for (int v = 0; v < NV; v++) {
                    double sc = base[v];
                    for (int i = 0; i < g.n_arms; i++)
                        sc += ((double)g.weights[i] / (double)g.beta) * arms[i][v];
                    want[v] = sc / temps[ti];
                    if (want[v] > m)
                        m = want[v];
                    /* the combined row itself, element by element */
                    if (fabs(score[v] - sc) > 1e-4 * (1.0 + fabs(sc))) {
                        CHECK(0, "score[%d] = %g, direct %g", v, score[v], sc);
                        return;
                    }
                }
                for (int v = 0; v < NV; v++)
                    s += (want[v] = exp(want[v] - m));
                for (int v = 0; v < NV; v++)
                    want[v] /= s;

                gn_sampler_params sp = gn_sampler_default_params();
                sp.temperature = temps[ti];
                const int32_t *ids;
                const double *probs;
                int nm;
                CHECK(gn_sampler_dist(smp, &sp, score, NV, &ids, &probs, &nm, &err) == 0, "%s",
                      err.msg);
                /* no filter: every token the draw could ever pick is in the
                 * support; the sampler drops only weights below e^-87 of the
                 * max (probability < 1.7e-38, float underflow) */
                int need = 0, have = 1;
                for (int v = 0; v < NV; v++)
                    if (want[v] > 1e-30) {
                        need++;
                        int in = 0;
                        for (int i = 0; i < nm; i++)
                            in |= ids[i] == v;
                        have &= in;
                    }
                CHECK(have && nm >= need && nm <= NV, "no filter: full support (%d of %d)", nm,
                      need);
                double d = dist_diff(ids, probs, nm, want, NV);
                CHECK(d < 2e-5, "arms %d beta %g T %g: max |p - direct| = %g", g.n_arms,
                      (double)g.beta, (double)temps[ti], d);
                cases++;
            }
        }
    }
    CHECK(cases == 100, "cases %d", cases);
}

/* T = 1, one ARM: p ∝ π_base(v) · π_arm(v)^{1/β}, from probabilities. */
static void test_one_arm_product(gn_sampler *smp) {
    const float betas[] = {0.1f, 0.5f, 1.0f, 3.0f};
    for (size_t bi = 0; bi < sizeof betas / sizeof *betas; bi++) {
        float base[NV], arm[NV], score[NV];
        random_logprobs(base, NV, 3.0);
        random_logprobs(arm, NV, 3.0);
        gn_guidance g = gn_guidance_default();
        g.n_arms = 1;
        g.weights[0] = 1.0f;
        g.beta = betas[bi];
        const float *armp[1] = {arm};
        gn_guidance_combine(&g, base, armp, score, NV);

        double want[NV], s = 0.0;
        for (int v = 0; v < NV; v++) {
            double pb = exp((double)base[v]), pa = exp((double)arm[v]);
            want[v] = pb * pow(pa, 1.0 / betas[bi]);
            s += want[v];
        }
        for (int v = 0; v < NV; v++)
            want[v] /= s;
        gn_sampler_params sp = gn_sampler_default_params();
        const int32_t *ids;
        const double *probs;
        int nm;
        gn_err err = {0};
        CHECK(gn_sampler_dist(smp, &sp, score, NV, &ids, &probs, &nm, &err) == 0, "%s", err.msg);
        double d = dist_diff(ids, probs, nm, want, NV);
        CHECK(d < 2e-5, "beta %g: max |p - base*arm^(1/beta)| = %g", (double)betas[bi], d);
    }
}

/* Weight 0: the score is bit-for-bit the base row, even when the ignored ARM
 * row holds -inf (0 * -inf would be NaN). */
static void test_weight_zero(void) {
    float base[NV], arm[NV], score[NV];
    random_logprobs(base, NV, 5.0);
    random_logprobs(arm, NV, 5.0);
    arm[3] = -INFINITY;
    gn_guidance g = gn_guidance_default();
    g.n_arms = 2;
    g.weights[0] = 0.0f;
    g.weights[1] = 0.0f;
    g.beta = 0.3f;
    const float *armp[2] = {arm, NULL};
    gn_guidance_combine(&g, base, armp, score, NV);
    CHECK(memcmp(score, base, sizeof score) == 0, "weight 0 must give the base row exactly");

    /* in place: score aliases base (the ARM row is a separate copy) */
    float inplace[NV], want[NV], base_copy[NV];
    g.n_arms = 1;
    g.weights[0] = 2.0f;
    g.beta = 4.0f;
    const float *armq[1] = {base};
    gn_guidance_combine(&g, base, armq, want, NV);
    memcpy(inplace, base, sizeof base);
    memcpy(base_copy, base, sizeof base);
    const float *armr[1] = {base_copy};
    gn_guidance_combine(&g, inplace, armr, inplace, NV);
    CHECK(memcmp(inplace, want, sizeof want) == 0, "in-place combine equals out-of-place");
    /* ARM == base, weight w: score = (1 + w/beta) base */
    int ok = 1;
    for (int v = 0; v < NV; v++)
        if (fabsf(want[v] - 1.5f * base[v]) > 1e-5f * (1.0f + fabsf(base[v])))
            ok = 0;
    CHECK(ok, "ARM == base gives (1 + w/beta) * base");

    float alpha[2];
    g.n_arms = 2;
    g.weights[0] = 1.0f;
    g.weights[1] = -3.0f;
    g.beta = 0.5f;
    gn_guidance_alphas(&g, alpha);
    CHECK(alpha[0] == 2.0f && alpha[1] == -6.0f, "alphas %g %g", (double)alpha[0],
          (double)alpha[1]);
}

/* The fused kernel against the rule in plain float, bit for bit: any n (the
 * vector body and the tail), 0 to 4 ARMs with some weights 0, -inf entries. */
static void test_combine_exact(void) {
    enum { BIG = 3000 };
    static float base[BIG], arms[MAXA][BIG], score[BIG], want[BIG];
    const int sizes[] = {1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 97, 1000, BIG};
    int bad = 0, cases = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        int n = sizes[si];
        for (int na = 0; na <= MAXA; na++) {
            gn_guidance g = gn_guidance_default();
            g.n_arms = na;
            g.beta = (float)(0.2 + urand());
            const float *armp[MAXA];
            for (int v = 0; v < n; v++)
                base[v] = (float)(-20.0 * urand());
            base[n / 2] = -INFINITY;
            for (int i = 0; i < na; i++) {
                for (int v = 0; v < n; v++)
                    arms[i][v] = (float)(-20.0 * urand());
                armp[i] = arms[i];
                g.weights[i] = (i == 1) ? 0.0f : (float)(urand() * 3.0 - 1.0);
            }
            if (na > 1)
                arms[1][0] = -INFINITY; /* weight 0: ignored, no NaN */
            for (int v = 0; v < n; v++) {
                float acc = base[v];
                for (int i = 0; i < na; i++) {
                    float a = g.weights[i] / g.beta;
                    if (a == 0.0f)
                        continue;
                    volatile float prod = a * arms[i][v]; /* rounded on its own */
                    acc = acc + prod;
                }
                want[v] = acc;
            }
            gn_guidance_combine(&g, base, armp, score, n);
            if (memcmp(score, want, sizeof(float) * (size_t)n)) {
                bad++;
                fprintf(stderr, "combine differs: n %d, %d ARMs\n", n, na);
            }
            cases++;
        }
    }
    CHECK(bad == 0, "%d of %d combined rows differ from the plain-float rule", bad, cases);
}

static void test_validate(void) {
    gn_err err = {0};
    gn_guidance g = gn_guidance_default();
    CHECK(g.beta == 1.0f && g.n_arms == 0 && g.weights[0] == 1.0f, "defaults");
    CHECK(gn_guidance_validate(&g, &err) == 0, "default profile valid");
    g.beta = 0.0f;
    CHECK(gn_guidance_validate(&g, &err) == GN_EINVAL, "beta 0 rejected");
    CHECK(strstr(err.msg, "beta must be > 0") != NULL, "message: %s", err.msg);
    g.beta = -1.0f;
    CHECK(gn_guidance_validate(&g, &err) == GN_EINVAL, "beta < 0 rejected");
    g.beta = NAN;
    CHECK(gn_guidance_validate(&g, &err) == GN_EINVAL, "beta NaN rejected");
    g.beta = INFINITY;
    CHECK(gn_guidance_validate(&g, &err) == GN_EINVAL, "beta inf rejected");
    g.beta = 1.0f;
    g.n_arms = 2;
    g.weights[1] = INFINITY;
    CHECK(gn_guidance_validate(&g, &err) == GN_EINVAL, "inf weight rejected");
    CHECK(strstr(err.msg, "ARM 1") != NULL, "message names the ARM: %s", err.msg);
    g.weights[1] = NAN;
    CHECK(gn_guidance_validate(&g, &err) == GN_EINVAL, "NaN weight rejected");
    g.weights[1] = -2.0f;
    CHECK(gn_guidance_validate(&g, &err) == 0, "negative weight allowed");
    g.n_arms = GN_GUIDANCE_MAX_ARMS + 1;
    CHECK(gn_guidance_validate(&g, &err) == GN_EINVAL, "too many ARMs");
    g.n_arms = -1;
    CHECK(gn_guidance_validate(&g, &err) == GN_EINVAL, "negative ARM count");
    CHECK(gn_guidance_validate(NULL, &err) == GN_EINVAL, "NULL profile");
}

int main(void) {
    gn_err err = {0};
    gn_sampler *smp = gn_sampler_create(NV, &err);
    CHECK(smp != NULL, "%s", err.msg);
    if (!smp)
        GN_TEST_MAIN_END();
    test_combined_distribution(smp);
    test_one_arm_product(smp);
    test_weight_zero();
    test_combine_exact();
    test_validate();
    gn_sampler_free(smp);
    GN_TEST_MAIN_END();
}
