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

/* One pass per ARM over contiguous rows: the inner loop is a plain
 * multiply-add that the compiler vectorises (restrict: no aliasing). */
static void axpy(float *restrict y, const float *restrict x, float a, int n) {
    for (int v = 0; v < n; v++)
        y[v] += a * x[v];
}

void gn_guidance_combine(const gn_guidance *g, const float *base_lp, const float *const *arm_lp,
                         float *score, int n) {
    if (score != base_lp)
        for (int v = 0; v < n; v++)
            score[v] = base_lp[v];
    for (int i = 0; i < g->n_arms; i++) {
        float alpha = g->weights[i] / g->beta;
        if (alpha == 0.0f)
            continue; /* weight 0: exactly base-only decoding */
        axpy(score, arm_lp[i], alpha, n);
    }
}
