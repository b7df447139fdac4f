/* score.c — guided scoring over whole sequences (score.h). Every model runs
 * its prompt, then the response in chunks with a row for every position
 * (all_logits), all models in lockstep chunk by chunk; each position's rows
 * are combined by gn_guidance_combine and normalised in double. */
#include "score.h"

#include <math.h>
#include <string.h>

#include "gn_alloc.h"

#define SCORE_CHUNK 64                /* positions per runner step */
#define SCORE_ROW_BYTES (256ul << 20) /* at most this much of log-prob rows */

void gn_guided_score_free(gn_guided_score *s) {
    if (!s)
        return;
    gn_free(s->logp);
    gn_free(s->top_ids);
    gn_free(s->top_logp);
    memset(s, 0, sizeof *s);
}

/* Position pos of the combined row s[0..nv): the log-prob of tok and the
 * n_top most likely tokens, log_softmax in double (gn_draw_lse_top, as the
 * dense draw reports them). */
static int row_logprobs(const float *s, int nv, int32_t tok, int n_top, int pos, double *logp,
                        int32_t *top_ids, double *top_logp, gn_err *err) {
    float mx = -INFINITY;
    for (int v = 0; v < nv; v++) {
        if (s[v] != s[v])
            return gn_errf(err, GN_EINVAL, "score: position %d: the combined score of token %d is NaN",
                           pos, v);
        mx = s[v] > mx ? s[v] : mx;
    }
    if (!isfinite(mx))
        return gn_errf(err, GN_EINVAL, "score: position %d: %s", pos,
                       mx > 0 ? "a combined score is +inf" : "no token has a finite combined score");
    int m;
    const double lse = gn_draw_lse_top(s, nv, n_top, top_ids, &m);
    *logp = (double)s[tok] - lse;
    for (int j = 0; j < m; j++)
        top_logp[j] = (double)s[top_ids[j]] - lse;
    return 0;
}

static const char *role(int m) { return m == 0 ? "base model" : "ARM"; }

int gn_score_guided(gn_model *const *models, gn_runner *const *runners, const gn_guidance *g,
                    const int32_t *const *prompt_ids, const int *n_prompt, const int32_t *resp,
                    int n_resp, int n_top, gn_guided_score *out, gn_err *err) {
    if (!out)
        return gn_errf(err, GN_EINVAL, "score: bad arguments");
    memset(out, 0, sizeof *out);
    if (!models || !runners || !g || !prompt_ids || !n_prompt || !resp)
        return gn_errf(err, GN_EINVAL, "score: bad arguments");
    int rc = gn_guidance_validate(g, err);
    if (rc)
        return rc;
    if (n_resp < 1)
        return gn_errf(err, GN_EINVAL, "score: the response has no tokens");
    if (n_top < 0 || n_top > GN_DRAW_MAX_TOP)
        return gn_errf(err, GN_EINVAL, "score: n_top must be in [0, %d] (got %d)", GN_DRAW_MAX_TOP,
                       n_top);
    const int nm = 1 + g->n_arms;
    float alpha[GN_GUIDANCE_MAX_ARMS];
    gn_guidance_alphas(g, alpha);
    int active[1 + GN_GUIDANCE_MAX_ARMS], n_active = 0;
    for (int m = 0; m < nm; m++) {
        active[m] = m == 0 || alpha[m - 1] != 0.0f;
        if (!active[m])
            continue;
        n_active++;
        if (!models[m] || !runners[m] || !prompt_ids[m])
            return gn_errf(err, GN_EINVAL, "score: model %d (%s) has no model, runner or prompt", m,
                           role(m));
        if (n_prompt[m] < 1)
            return gn_errf(err, GN_EINVAL, "score: %s %s: the prompt has no tokens", role(m),
                           gn_model_dir(models[m]));
    }
    const int nv = gn_model_n_out(models[0]);
    for (int m = 1; m < nm; m++)
        if (active[m] && gn_model_n_out(models[m]) != nv)
            return gn_errf(err, GN_EMISMATCH,
                           "score: ARM %s has %d output columns but the base model %s has %d",
                           gn_model_dir(models[m]), gn_model_n_out(models[m]),
                           gn_model_dir(models[0]), nv);
    for (int t = 0; t < n_resp; t++)
        if (resp[t] < 0 || resp[t] >= nv)
            return gn_errf(err, GN_EINVAL, "score: response token %d is %d, outside [0, %d)", t,
                           resp[t], nv);
    long chunk = n_resp - 1 < SCORE_CHUNK ? n_resp - 1 : SCORE_CHUNK;
    long fit = (long)(SCORE_ROW_BYTES / ((size_t)n_active * (size_t)nv * sizeof(float)));
    chunk = chunk < fit ? chunk : fit;
    chunk = chunk > 1 ? chunk : 1;

    float *rows[1 + GN_GUIDANCE_MAX_ARMS] = {0};
    gn_seq *seqs[1 + GN_GUIDANCE_MAX_ARMS] = {0};
    const float *arm_rows[GN_GUIDANCE_MAX_ARMS] = {0};
    float *score = gn_malloc((size_t)nv * sizeof *score);
    const int kt = n_top < nv ? n_top : nv;
    out->n_tokens = n_resp;
    out->n_top = kt;
    out->logp = gn_malloc((size_t)n_resp * sizeof *out->logp);
    if (kt > 0) {
        out->top_ids = gn_malloc((size_t)n_resp * (size_t)kt * sizeof *out->top_ids);
        out->top_logp = gn_malloc((size_t)n_resp * (size_t)kt * sizeof *out->top_logp);
    }
    if (!score || !out->logp || (kt > 0 && (!out->top_ids || !out->top_logp))) {
        rc = gn_errf(err, GN_ENOMEM, "score: out of memory for %d positions", n_resp);
        goto done;
    }
    for (int m = 0; m < nm; m++) {
        if (!active[m])
            continue;
        rows[m] = gn_malloc((size_t)chunk * (size_t)nv * sizeof *rows[m]);
        if (!rows[m]) {
            rc = gn_errf(err, GN_ENOMEM, "score: out of memory for %ld log-prob rows", chunk);
            goto done;
        }
        if (!(seqs[m] = gn_seq_create(runners[m], err))) {
            rc = err && err->code ? err->code : GN_ENOMEM;
            goto done;
        }
    }
    /* The prompt's last row predicts y_0; each response token's row then
     * predicts the next (the last response token is never fed). */
    for (int t = -1; t + 1 < n_resp;) {
        int c = 1;
        for (int m = 0; m < nm; m++) {
            if (!active[m])
                continue;
            gn_step_item it = {seqs[m], prompt_ids[m], n_prompt[m], 0};
            if (t >= 0) {
                c = n_resp - 1 - t < chunk ? n_resp - 1 - t : (int)chunk;
                it.tokens = resp + t;
                it.n_tokens = c;
                it.all_logits = 1;
            }
            if ((rc = gn_runner_step(runners[m], &it, 1, rows[m], err))) {
                gn_err_prefix(err, "score: %s %s: ", role(m), gn_model_dir(models[m]));
                goto done;
            }
        }
        const int p0 = t + 1; /* the first position these rows predict */
        for (int i = 0; i < c; i++) {
            for (int a = 0; a < g->n_arms; a++)
                arm_rows[a] = active[1 + a] ? rows[1 + a] + (size_t)i * nv : NULL;
            gn_guidance_combine(g, rows[0] + (size_t)i * nv, arm_rows, score, nv);
            const int p = p0 + i;
            if ((rc = row_logprobs(score, nv, resp[p], kt, p, &out->logp[p],
                                   kt ? out->top_ids + (size_t)p * kt : NULL,
                                   kt ? out->top_logp + (size_t)p * kt : NULL, err)))
                goto done;
        }
        t = t < 0 ? 0 : t + c;
    }
    double sum = 0.0;
    for (int p = 0; p < n_resp; p++)
        sum += out->logp[p];
    out->total = sum;
done:
    for (int m = 0; m < nm; m++) {
        gn_seq_free(seqs[m]);
        gn_free(rows[m]);
    }
    gn_free(score);
    if (rc)
        gn_guided_score_free(out);
    return rc;
}
