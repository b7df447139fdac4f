/* token_report.c — a draw's log-probs, decoded, to a sink (token_report.h). */
#include "token_report.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "gn_alloc.h"
#include "tokenizer.h"

/* JSON has no -Infinity: a probability-0 token gets a very negative number. */
static float finite_lp(float v) { return isfinite(v) ? v : -9999.0f; }

/* "token_id:<id>" (return_tokens_as_token_ids), gn_malloc'd. */
static int id_text(int32_t id, char **text, size_t *len) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "token_id:%d", (int)id);
    if (!(*text = gn_malloc((size_t)n + 1))) return GN_ENOMEM;
    memcpy(*text, buf, (size_t)n + 1);
    *len = (size_t)n;
    return 0;
}

void gn_token_report(gn_coord_sink *sink, int index, const struct gn_tokenizer *tok, int as_ids,
                     const gn_draw_result *r) {
    if (!sink || !sink->token || !r || r->status != GN_DRAW_DONE || r->token < 0)
        return;
    int nt = r->n_top;
    if (nt > GN_OAI_MAX_TOP)
        nt = GN_OAI_MAX_TOP;
    if (nt > GN_DRAW_MAX_TOP)
        nt = GN_DRAW_MAX_TOP;
    if (nt < 0)
        nt = 0;
    char *texts[GN_DRAW_MAX_TOP + 1] = {0};
    size_t lens[GN_DRAW_MAX_TOP + 1] = {0};
    gn_oai_top tops[GN_DRAW_MAX_TOP];
    gn_err err;
    for (int i = 0; i <= nt; i++) {
        int32_t id = i == 0 ? r->token : r->top_ids[i - 1];
        if (as_ids ? id_text(id, &texts[i], &lens[i]) : gn_tok_decode(tok, &id, 1, 0, &texts[i], &lens[i], &err)) {
            texts[i] = NULL;
            lens[i] = 0;
        }
    }
    for (int i = 0; i < nt; i++)
        tops[i] = (gn_oai_top){texts[i + 1] ? texts[i + 1] : "", lens[i + 1],
                               finite_lp(r->top_logprobs[i])};
    gn_oai_logprob lp = {{texts[0] ? texts[0] : "", lens[0], finite_lp(r->logprob)}, nt, tops};
    sink->token(sink, index, &lp);
    for (int i = 0; i <= nt; i++)
        gn_free(texts[i]);
}
