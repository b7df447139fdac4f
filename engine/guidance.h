/* guidance.h — the GenARM combination rule (ARCHITECTURE.md §1): how the base
 * model's and the autoregressive reward models' next-token log-probs become
 * one score row that the sampler draws from.
 *
 *     score(v) = base_lp(v) + Σ_i α_i · arm_lp_i(v),      α_i = weight_i / β
 *
 * Every input row is already log_softmax-normalised float32 (gn_runner_step
 * returns log-probs), so the rule is a weighted sum and nothing else; the
 * temperature and the top-k / top-p / min-p filters act on the combined score
 * afterwards (sampler.h). This is the heart of the product: keep it tiny.
 *
 * Pure functions on caller memory: thread-safe, no allocation. */
#ifndef GN_GUIDANCE_H
#define GN_GUIDANCE_H

#include "gn_err.h"

/* Most ARMs one guidance profile combines. */
#define GN_GUIDANCE_MAX_ARMS 64

/* A preference profile's numeric part: how strongly each ARM pulls, and β.
 * weights[i] belongs to the i-th ARM in the caller's ARM order. A weight may
 * be negative (steer away from an objective) or 0 (ARM ignored: the score is
 * then bit-for-bit the base row). */
typedef struct gn_guidance {
    int n_arms;                          /* 0 .. GN_GUIDANCE_MAX_ARMS */
    float weights[GN_GUIDANCE_MAX_ARMS]; /* finite */
    float beta;                          /* > 0, finite: the KL-regularisation strength */
} gn_guidance;

/* n_arms = 0, every weight 1, beta 1. */
gn_guidance gn_guidance_default(void);

/* Checks 0 <= n_arms <= max, beta > 0 and finite, every used weight finite.
 * Returns 0 or GN_EINVAL with a message such as "beta must be > 0 (got 0)". */
int gn_guidance_validate(const gn_guidance *g, gn_err *err);

/* alpha[i] = weights[i] / beta for i < n_arms. g must be valid. */
void gn_guidance_alphas(const gn_guidance *g, float *alpha);

/* Writes score[v] = base_lp[v] + Σ_i alpha_i · arm_lp[i][v] for v < n.
 * base_lp: (n) floats; arm_lp[i]: (n) floats for every i < g->n_arms (may be
 * NULL only where weights[i] == 0); score: (n) floats, may alias base_lp but
 * no arm row. ARMs whose alpha is 0 are skipped entirely (so a -inf in an
 * ignored ARM cannot turn into NaN). g must be valid (gn_guidance_validate). */
void gn_guidance_combine(const gn_guidance *g, const float *base_lp, const float *const *arm_lp,
                         float *score, int n);

#endif
