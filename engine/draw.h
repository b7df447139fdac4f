/* draw.h — THE draw of the next token, for every backend.
 *
 * One step of GenARM decoding ends here, whether the rows came from runners in
 * this process (generate.h) or from workers over the network (the
 * coordinator): the models' next-token log-prob rows are combined
 * (guidance.h), filtered and drawn from (sampler.h), and the log-probs a client
 * asked for are reported. Each model's row is either DENSE (all n_vocab
 * values) or SPARSE (row_select.h: the largest values, plus bounds on all the
 * others).
 *
 * Dense rows: exactly gn_guidance_combine then gn_sampler_sample — the same
 * tokens, bit for bit, as before this module existed ("exact mode").
 *
 * Sparse rows: the draw is CERTIFIED. With c_0 = 1 for the base and
 * c_i = weight_i / beta for ARM i (the float alpha of guidance.h; models with
 * c = 0 are ignored), the score is s(v) = sum_m c_m x_m(v) and the exact
 * distribution P is the sampler's: p(v) ∝ exp(s(v)/T) over the tokens that
 * top-k, top-p and min-p keep (sampler.h's semantics and order), computed in
 * float64 from the models' F32 rows. The candidates C are the union of the
 * listed tokens; K ⊆ C those listed by every model (their score is known
 * exactly); every other token v has an upper bound ub(v) on s(v): c_m x_m(v)
 * summed over the models that list it, plus, per model m that does not, the
 * largest c_m x over m's unlisted values (c_m · floor_m for c_m > 0,
 * c_m · row_min_m for c_m < 0; no lower bound is needed). The tail
 * R = V \ C (no model lists it) has its mass bounded by the smallest of
 *   |R| · exp(ub_R / T), and, for each model j with c_j > 0 (carrier),
 *   S_j · prod_{m != j} exp(e_m · (e_m > 0 ? floor_m : row_min_m)),  e_m = c_m / T,
 *     S_j = exp(tail_lse_j) · exp((e_j - 1) · floor_j)      when e_j >= 1,
 *     S_j = |R|^(1 - e_j) · exp(e_j · tail_lse_j)            when 0 < e_j < 1
 * (Hölder / power-mean bounds: the tail's exact mass under model j is at most
 * exp(tail_lse_j)). The draw samples from Q: the same filters applied to K
 * alone (float64, candidates walked in id order with the one uniform the
 * sampler would use). It goes ahead only when it can prove
 *   TV(P, Q) <= bound <= epsilon,   bound = M / (Z + M),
 * where Z is the kept known mass and M bounds the mass of unknown tokens that
 * could be kept:
 *   - no filter: M = all unknown mass;
 *   - top-k: the k-th largest known score must exceed every ub (then no
 *     unknown token is kept: M = 0), else not certified;
 *   - top-p: with the known tokens in the sampler's order and b the boundary
 *     of the known-only nucleus (cumulative c_b reaches p·Z_K first):
 *     p·Z_K - c_{b-1} > (1 - p)·M_all and c_b >= p·(Z_K + M_all) make the
 *     exact nucleus {k_1..k_b} plus unknown tokens ranked before k_b
 *     (M counts those: ub >= s(k_b));
 *   - min-p: the largest known score must be >= every ub still in play
 *     after top-k / top-p (the max is then exact: the tokens those cut rank
 *     below a kept known one), unknown tokens below the threshold are
 *     dropped from M;
 *   - greedy (T = 0): the largest known score, combined in float exactly as
 *     gn_guidance_combine does, must exceed every ub by a rounding margin; the
 *     token is then the one exact mode picks.
 * Reported log-probs (temperature 1, no filters, like exact mode) are
 * certified to logprob_tol, and the top alternatives only when no unknown
 * token could rank among them. Sparse log-probs are s(v) - S - log Z_K (the
 * known tokens' mass at T = 1): the truth lies at most log(1 + M_1 / Z_K)
 * <= logprob_tol below them. When something cannot be proved the result
 * says what would settle it: the values some models lack for listed tokens
 * (NEED_VALUES, cheap to fetch; every such value, so that once they are
 * appended to the rows the answer is never NEED_VALUES again), else whole
 * rows (NEED_ROWS; also when the missing values would outnumber 2 n_vocab,
 * and when the tail R alone would still stop the proof whatever values the
 * listed tokens turn out to have, so that a fetch of values would be wasted).
 * Nothing is drawn then and the rng is untouched, so asking again after the
 * fetch gives the same draw as if the values had been there at once.
 *
 * A dense row mixed with sparse rows (weight != 0) is NEED_ROWS for the sparse
 * ones: a step is either all dense or all sparse.
 *
 * Memory: a gn_drawer holds scratch for n_vocab columns (the combined score
 * row, the sampler, the candidate tables), allocated once; gn_draw never
 * allocates. One thread at a time; any number of sequences (their state is
 * the caller's gn_rng). */
#ifndef GN_DRAW_H
#define GN_DRAW_H

#include <stdint.h>

#include "gn_err.h"
#include "guidance.h"
#include "row_select.h"
#include "sampler.h"

/* Most alternatives reported per token, by a draw and by guided scoring
 * (score.h): OpenAI's top_logprobs limit. */
#define GN_DRAW_MAX_TOP 20
#define GN_DRAW_MAX_MODELS (1 + GN_GUIDANCE_MAX_ARMS)

/* One model's next-token log-probs. */
typedef struct gn_row_view {
    const float *dense;    /* n_vocab values, or NULL for a sparse row */
    const int32_t *ids;    /* sparse: n listed tokens, distinct, in [0, n_vocab), any order */
    const float *vals;     /* sparse: their exact values */
    int n;
    gn_row_tail tail;      /* sparse: bounds on every token not listed */
} gn_row_view;

typedef struct gn_draw_params {
    gn_guidance guidance;       /* weights and beta (gn_guidance_validate'd) */
    gn_sampler_params sampling; /* temperature, top_k, top_p, min_p (seed unused: the rng is the caller's) */
    double epsilon;             /* sparse: largest TV distance allowed, default 1e-6 */
    int want_logprob;           /* 1: report the drawn token's log-prob */
    int n_top;                  /* 0..GN_DRAW_MAX_TOP most likely alternatives to report */
    double logprob_tol;         /* sparse: largest error of a reported log-prob (nats), default 1e-4 */
} gn_draw_params;

/* No ARMs, the sampler's defaults, epsilon 1e-6, no log-probs, tolerance 1e-4. */
gn_draw_params gn_draw_default_params(void);

enum {
    GN_DRAW_DONE = 0,        /* a token was drawn */
    GN_DRAW_NEED_VALUES = 1, /* sparse: missing values of listed tokens would settle it */
    GN_DRAW_NEED_ROWS = 2,   /* sparse: only whole rows settle it */
};

typedef struct gn_draw_result {
    int status;                          /* GN_DRAW_* */
    int32_t token;                       /* DONE: the token drawn */
    float logprob;                       /* want_logprob: log_softmax(score)(token) at T = 1 */
    int n_top;                           /* alternatives reported (<= n_top asked, <= n_vocab) */
    int32_t top_ids[GN_DRAW_MAX_TOP];    /* most likely first, ties: lower id first */
    float top_logprobs[GN_DRAW_MAX_TOP];
    double bound;                        /* sparse DONE: the certified TV bound; dense and
                                            greedy: 0 (greedy draws exact mode's token) */
    /* NEED_VALUES: model m (0 = base, 1 + i = ARM i) lacks the values of the
     * n_missing[m] tokens in missing[m] (drawer scratch, valid until the next
     * call on the drawer). */
    int n_missing[GN_DRAW_MAX_MODELS];
    const int32_t *missing[GN_DRAW_MAX_MODELS];
    /* NEED_ROWS: need_rows[m] = 1 for each model whose whole row is wanted. */
    unsigned char need_rows[GN_DRAW_MAX_MODELS];
} gn_draw_result;

typedef struct gn_drawer gn_drawer;

/* Scratch for n_vocab columns. NULL and err on failure. */
gn_drawer *gn_drawer_create(int n_vocab, gn_err *err);
void gn_drawer_free(gn_drawer *d); /* NULL is a no-op */

/* The combined score row (n_vocab floats) of the last dense draw on d (for
 * observers of the single-process loop); valid until the next call on d. */
const float *gn_drawer_scores(const gn_drawer *d);

/* Draws the next token from rows[0] (base) and rows[1 + i] (ARM i, for
 * i < p->guidance.n_arms; rows of weight 0 are not read). On DONE the rng has
 * advanced exactly as gn_sampler_sample advances it (one draw, none when
 * greedy). Returns 0 with out->status set, or a negative GN_E* code with err
 * (invalid parameters, an id out of range, a NaN or a row without any finite
 * score), as gn_sampler_sample does. */
int gn_draw(gn_drawer *d, const gn_draw_params *p, const gn_row_view *rows, gn_rng *rng,
            gn_draw_result *out, gn_err *err);

/* log_softmax over a float score row s[0..n) in double, as dense draws and
 * gn_score_guided report it: returns lse = max + log Σ exp(s[v] - max) (the
 * log-prob of v is s[v] - lse) and writes the min(n_top, n) most likely ids
 * to top_ids (largest score first, ties: lower id first), *n_out of them.
 * n_top in [0, GN_DRAW_MAX_TOP]; s without NaN. */
double gn_draw_lse_top(const float *s, int n, int n_top, int32_t *top_ids, int *n_out);

/* The distribution gn_draw would draw from now (tests): dense rows give the
 * sampler's (gn_sampler_dist); certified sparse rows give Q. *ids and *probs
 * point into the drawer's scratch (valid until its next call), *n_out
 * entries; out->status says whether a draw would happen (only DONE fills the
 * distribution). */
int gn_draw_dist(gn_drawer *d, const gn_draw_params *p, const gn_row_view *rows,
                 const int32_t **ids, const double **probs, int *n_out, gn_draw_result *out,
                 gn_err *err);

#endif
