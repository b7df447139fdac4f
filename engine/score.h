/* score.h — guided scoring: how likely a given response is under GenARM's
 * guided distribution, token by token, with the most likely alternatives.
 *
 * For a prompt x and a response y (shared token ids), position t's guided
 * log-prob is, at temperature 1 and with no filters,
 *
 *     logp_t = log_softmax(s_t)(y_t),   s_t = base_lp_t + sum_i (w_i / beta) * arm_lp_i,t
 *
 * where each model's lp_t = log p_m(. | x_m, y_<t) and s_t is the float row
 * gn_guidance_combine makes of them (guidance.h); log_softmax is taken in
 * double over that float row. The top alternatives are the n_top largest
 * log-probs of the same row, ties going to the lower id.
 *
 * This is the reference for the log-probs the service reports (OpenAI
 * `logprobs` / `top_logprobs`, which are these numbers for the tokens it
 * generated), computed by an independent path: every model scores the whole
 * sequence (all_logits rows over the response, in chunks, as gn_score_ids
 * does) instead of running the decode loop. The two paths agree to float
 * rounding (batched versus one-token forward passes): about 1e-5.
 *
 * Thread-safety: as the runners (one thread at a time per runner). */
#ifndef GN_SCORE_H
#define GN_SCORE_H

#include <stdint.h>

#include "draw.h"
#include "gn_err.h"
#include "guidance.h"
#include "model.h"
#include "runner.h"

typedef struct gn_guided_score {
    int n_tokens;     /* response positions scored (= n_resp) */
    double *logp;     /* (n_tokens) logp_t of the response token; -inf when its score is -inf */
    double total;     /* sum of logp (in double) */
    int n_top;        /* alternatives per position: min(n_top asked, n_vocab) */
    int32_t *top_ids; /* (n_tokens * n_top) row t at [t * n_top]: most likely first,
                         ties: lower id first; NULL when n_top = 0 */
    double *top_logp; /* (n_tokens * n_top) their log-probs */
} gn_guided_score;

/* Scores resp[0..n_resp) after each model's prompt. Models are indexed
 * 0 = base, 1 + i = ARM i (i < g->n_arms), as gn_generator_runner does:
 * models[m] with its runner runners[m] (borrowed; a fresh sequence is used on
 * each runner and freed), prompt_ids[m] with n_prompt[m] >= 1 ids (models
 * may tokenize their prompts differently; the response ids are shared).
 * ARMs whose alpha (weight / beta) is 0 are not run (their entries may be
 * NULL), as gn_guidance_combine ignores them. n_top in [0, GN_DRAW_MAX_TOP].
 *
 * Fills *out (free with gn_guided_score_free). Returns 0, or a negative GN_E*
 * code with err: GN_EINVAL (bad arguments, an invalid guidance, a response
 * id outside [0, n_vocab), a combined row with a NaN or no finite score),
 * GN_EMISMATCH (models of different output widths), GN_ENOMEM, or the
 * runner's error (context overflow, KV pool exhausted) prefixed with the
 * model's directory; then *out holds nothing. Memory: one chunk of rows per
 * model run (at most 64 positions, fewer for wide vocabularies and many
 * models: about 256 MiB in all) and one combined row. */
int gn_score_guided(gn_model *const *models, gn_runner *const *runners, const gn_guidance *g,
                    const int32_t *const *prompt_ids, const int *n_prompt, const int32_t *resp,
                    int n_resp, int n_top, gn_guided_score *out, gn_err *err);

/* Frees what s owns and zeroes it (NULL is a no-op). */
void gn_guided_score_free(gn_guided_score *s);

#endif
