/* guidance.c — the GenARM combination rule.
 *
 * GenARM (Xu et al., ICLR 2025) trains an autoregressive reward model π_r whose
 * reward is a sum of token log-probs, r(x, y) = Σ_t log π_r(y_t | x, y_<t).
 * The KL-regularised optimum π*(y|x) ∝ π_base(y|x) · exp(r(x, y) / β) then
 * factorises over tokens, so at step t
 *
 *     log π*(v | x, y_<t) = log π_base(v | ·) + (1/β) · log π_r(v | ·) + const.
 *
 * With several ARMs combined by weights w_i (multi-objective alignment) the
 * reward is Σ_i w_i r_i, which gives the rule implemented here:
 *
 *     score(v) = base_lp(v) + Σ_i α_i · arm_lp_i(v),   α_i = w_i / β.
 *
 * The constant does not matter: the sampler takes softmax(score / T), which is
 * invariant to adding a constant. With T = 1 and one ARM this is exactly
 * π_base · π_arm^{1/β}, renormalised. */
#include "guidance.h"

#include <math.h>

gn_guidance gn_guidance_default(void) {
    gn_guidance g;
    g.n_arms = 0;
    for (int i = 0; i < GN_GUIDANCE_MAX_ARMS; i++)
        g.weights[i] = 1.0f;
    g.beta = 1.0f;
    return g;
}

int gn_guidance_validate(const gn_guidance *g, gn_err *err) {
    if (!g)
        return gn_errf(err, GN_EINVAL, "guidance: no profile");
    if (g->n_arms < 0 || g->n_arms > GN_GUIDANCE_MAX_ARMS)
        return gn_errf(err, GN_EINVAL, "guidance: %d ARMs (at most %d)", g->n_arms,
                       GN_GUIDANCE_MAX_ARMS);
    if (!(g->beta > 0.0f) || !isfinite(g->beta))
        return gn_errf(err, GN_EINVAL, "beta must be > 0 and finite (got %g)", (double)g->beta);
    for (int i = 0; i < g->n_arms; i++)
        if (!isfinite(g->weights[i]))
            return gn_errf(err, GN_EINVAL, "ARM %d: weight must be finite (got %g)", i,
                           (double)g->weights[i]);
    return 0;
}

void gn_guidance_alphas(const gn_guidance *g, float *alpha) {
    for (int i = 0; i < g->n_arms; i++)
        alpha[i] = g->weights[i] / g->beta;
}

/* One fused pass: score[v] = ((base[v] + a0·x0[v]) + a1·x1[v]) + …, each
 * product and each sum rounded to float on its own (no FMA), which is what
 * the plain loop gives on x86-64, so the AVX2 path below and the plain path
 * agree bit for bit (test_guidance checks it). The earlier code made one pass
 * per ARM over the score row; fusing reads every row once and writes once. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
static void combine_ref(const float *base, const float *const *x, const float *a, int na,
                        float *y, int n) {
#ifdef __clang__
#pragma clang fp contract(off)
#endif
    for (int v = 0; v < n; v++) {
        float acc = base[v];
        for (int i = 0; i < na; i++)
            acc = acc + a[i] * x[i][v];
        y[v] = acc;
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* AVX2 without "fma" on purpose: the compiler cannot fuse the multiply and
 * the add, so each rounds as in combine_ref. */
__attribute__((target("avx2"))) static void combine_avx2(const float *base, const float *const *x,
                                                         const float *a, int na, float *y,
                                                         int n) {
    int v = 0;
    for (; v + 16 <= n; v += 16) {
        __m256 acc0 = _mm256_loadu_ps(base + v), acc1 = _mm256_loadu_ps(base + v + 8);
        for (int i = 0; i < na; i++) {
            __m256 ai = _mm256_set1_ps(a[i]);
            acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(ai, _mm256_loadu_ps(x[i] + v)));
            acc1 = _mm256_add_ps(acc1, _mm256_mul_ps(ai, _mm256_loadu_ps(x[i] + v + 8)));
        }
        _mm256_storeu_ps(y + v, acc0);
        _mm256_storeu_ps(y + v + 8, acc1);
    }
    if (v < n) {
        const float *xt[GN_GUIDANCE_MAX_ARMS];
        for (int i = 0; i < na; i++)
            xt[i] = x[i] + v;
        combine_ref(base + v, xt, a, na, y + v, n - v);
    }
}

static int have_avx2(void) { return __builtin_cpu_supports("avx2"); } /* libgcc inits at load */
#endif

void gn_guidance_combine(const gn_guidance *g, const float *base_lp, const float *const *arm_lp,
                         float *score, int n) {
    const float *x[GN_GUIDANCE_MAX_ARMS];
    float a[GN_GUIDANCE_MAX_ARMS];
    int na = 0;
    for (int i = 0; i < g->n_arms; i++) {
        float alpha = g->weights[i] / g->beta;
        if (alpha == 0.0f)
            continue; /* weight 0: exactly base-only decoding (and no 0 * -inf) */
        x[na] = arm_lp[i];
        a[na++] = alpha;
    }
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_avx2()) {
        combine_avx2(base_lp, x, a, na, score, n);
        return;
    }
#endif
    combine_ref(base_lp, x, a, na, score, n);
}
