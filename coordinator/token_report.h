/* token_report.h — one generated token's log-probs, as text, to a sink.
 *
 * Both backends end a step with a gn_draw_result (draw.h): the token, its
 * log-prob under log_softmax(score) at temperature 1 and the most likely
 * alternatives. A client that asked for logprobs wants them as token texts;
 * this decodes the ids with the base model's tokenizer and hands one
 * gn_oai_logprob to the sink's token() callback. One function, so that the
 * in-process and the distributed backends report the same JSON.
 *
 * Thread-safety: as the sink's (one call at a time per sink); tok is only read. */
#ifndef GN_TOKEN_REPORT_H
#define GN_TOKEN_REPORT_H

#include "coord_backend.h"
#include "draw.h"

struct gn_tokenizer;

/* Calls sink->token(sink, index, lp) with r's token and its n_top
 * alternatives decoded by tok (special tokens included, as the model emits
 * them; an id that does not decode gives ""), or with as_ids written
 * "token_id:<id>" (the request's return_tokens_as_token_ids). Log-probs that are not finite
 * (a token of probability 0) are reported as -9999, which JSON can carry.
 * Does nothing when sink->token is NULL or r is not a DONE draw. */
void gn_token_report(gn_coord_sink *sink, int index, const struct gn_tokenizer *tok, int as_ids,
                     const gn_draw_result *r);

#endif
