/* openai.h — the OpenAI API shapes the coordinator speaks: parsing and
 * validating request bodies of POST /v1/completions and
 * /v1/chat/completions, and formatting completion objects, streaming chunks
 * (Server-Sent Events) and error objects.
 *
 * Parsers are pure: (body, len) in, a gn_oai_request out, no I/O. Every
 * member's type and range is checked; a refusal fills a gn_oai_error whose
 * `param` names the offending member the way OpenAI does ("max_tokens",
 * "stop[1]", "messages[0].role", "reward_models[2].weight") and whose `code`
 * says why:
 *   "invalid_json"               the body is not a JSON object
 *   "missing_required_parameter" a required member is absent
 *   "invalid_type"               a member has the wrong JSON type
 *   "invalid_value"              right type, out of range / bad syntax
 *   "unknown_parameter"          a member this API does not know
 *   "unsupported_value"          a valid OpenAI value this server cannot honour
 *   "body_too_large"             more than GN_OAI_BODY_MAX bytes (status 413)
 *
 * GenARM extensions: `profile` (a tenant's preference profile by name) or
 * `reward_models: [{"name","weight"}]` with an optional `beta` (also allowed
 * with a profile, where it overrides the profile's β); `top_k`, `min_p` and
 * `ignore_eos` and `return_tokens_as_token_ids` as in vLLM.
 *
 * Thread-safety: every function is reentrant (jansson is thread-safe). */
#ifndef GN_OPENAI_H
#define GN_OPENAI_H

#include <stddef.h>
#include <stdint.h>

#include "gn_err.h"

#define GN_OAI_BODY_MAX (8u << 20) /* bytes; the server may set a lower limit */
#define GN_OAI_MAX_STOP 4          /* stop strings, as OpenAI */
#define GN_OAI_MAX_N 16            /* choices per request */
#define GN_OAI_MAX_ARMS 16         /* reward_models entries (= GN_CTL_PROFILE_MAX_ARMS) */
#define GN_OAI_MAX_TOKENS_CAP (1 << 20)
#define GN_OAI_ID_MAX 65           /* profile / ARM names: 1..64 of [A-Za-z0-9._-] + NUL */

enum { GN_OAI_COMPLETION = 0, GN_OAI_CHAT = 1 };

enum { /* gn_oai_request.has: which optional members the body set */
    GN_OAI_HAS_TEMPERATURE = 1u << 0,
    GN_OAI_HAS_TOP_P = 1u << 1,
    GN_OAI_HAS_TOP_K = 1u << 2,
    GN_OAI_HAS_MIN_P = 1u << 3,
    GN_OAI_HAS_MAX_TOKENS = 1u << 4,
    GN_OAI_HAS_SEED = 1u << 5,
    GN_OAI_HAS_BETA = 1u << 6,
};

typedef struct gn_oai_message {
    char *role;    /* "system", "user", "assistant", "tool" or "developer" */
    char *content; /* text (parts of type "text" concatenated); "" for null content */
} gn_oai_message;

typedef struct gn_oai_arm {
    char name[GN_OAI_ID_MAX];
    double weight; /* finite */
} gn_oai_arm;

/* A validated request. Strings are gn_malloc'd and owned by the request;
 * release everything with gn_oai_request_free. */
typedef struct gn_oai_request {
    int kind;        /* GN_OAI_COMPLETION or GN_OAI_CHAT */
    char *model;     /* required, non-empty */
    char *prompt;    /* completions: the prompt text (non-empty); NULL for chat */
    size_t prompt_len;
    gn_oai_message *messages; /* chat: n_messages >= 1; NULL for completions */
    int n_messages;
    unsigned has;       /* GN_OAI_HAS_* */
    int max_tokens;     /* 1..GN_OAI_MAX_TOKENS_CAP when HAS_MAX_TOKENS (chat: also
                           max_completion_tokens) */
    double temperature; /* [0, 10]; 0 = greedy */
    double top_p;       /* (0, 1] */
    int top_k;          /* >= 0, 0 = off (-1 is accepted and means 0, as vLLM) */
    double min_p;       /* [0, 1] */
    uint64_t seed;      /* any JSON integer, taken modulo 2^64 */
    int n;              /* 1..GN_OAI_MAX_N, default 1 */
    char **stop;        /* n_stop non-empty strings */
    int n_stop;
    int logprobs;       /* completions: 0..5 alternatives (-1 = not asked);
                           chat: 0 (logprobs:true, top_logprobs 0..20 in top_logprobs) or -1 */
    int top_logprobs;   /* chat only, 0..20 */
    int stream;         /* 0/1 */
    int include_usage;  /* stream_options.include_usage */
    int ignore_eos;     /* extension */
    int token_ids;      /* return_tokens_as_token_ids (as vLLM): each logprobs token, and each
                           alternative, is written "token_id:<id>" instead of its text */
    char *user;         /* NULL when absent; <= 256 bytes */
    char profile[GN_OAI_ID_MAX]; /* "" when absent */
    gn_oai_arm arms[GN_OAI_MAX_ARMS]; /* reward_models */
    int n_arms;                       /* 0 when absent */
    double beta;        /* > 0, finite, when HAS_BETA */
} gn_oai_request;

/* An OpenAI error object plus the HTTP status that carries it. */
typedef struct gn_oai_error {
    int status;       /* 400, 401, 404, 413, 429, 500, 503 */
    const char *type; /* static: "invalid_request_error", "authentication_error",
                         "not_found_error", "server_error" */
    char param[96];   /* "" = null */
    char code[48];    /* "" = null */
    char message[GN_ERR_MSG_MAX];
} gn_oai_error;

/* Fills e (status, type, param and code may be NULL for null) and returns
 * GN_EINVAL, so a caller can `return gn_oai_errf(e, 400, ...)`. */
int gn_oai_errf(gn_oai_error *e, int status, const char *type, const char *param,
                const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Parse a body of len bytes (need not be NUL-terminated). On success 0 and
 * *out filled (free with gn_oai_request_free). On failure GN_EINVAL (or
 * GN_ENOMEM) with *e filled and *out left zeroed (nothing to free). */
int gn_oai_parse_completion(const char *body, size_t len, gn_oai_request *out, gn_oai_error *e);
int gn_oai_parse_chat(const char *body, size_t len, gn_oai_request *out, gn_oai_error *e);

/* Frees what r owns and zeroes it; NULL is a no-op. */
void gn_oai_request_free(gn_oai_request *r);

/* ---- formatting ----------------------------------------------------------- */

#define GN_OAI_MAX_TOP 20 /* top_logprobs alternatives at most */

/* One alternative of a generated token: its text and log-probability. */
typedef struct gn_oai_top {
    const char *text; /* UTF-8 */
    size_t len;
    float logprob;
} gn_oai_top;

/* One generated token with its log-probability and the n_top most likely
 * alternatives at that step (most likely first). */
typedef struct gn_oai_logprob {
    gn_oai_top tok;
    int n_top;
    const gn_oai_top *top;
} gn_oai_logprob;

typedef struct gn_oai_choice {
    int index;
    const char *text; /* UTF-8 (may contain NUL bytes), text_len bytes */
    size_t text_len;
    const char *finish_reason; /* "stop", "length", "abort"... or NULL (null) */
    /* logprobs: with_logprobs 0 writes "logprobs": null; 1 writes the
     * completions object {tokens, token_logprobs, top_logprobs, text_offset}
     * or the chat object {content: [{token, logprob, bytes, top_logprobs}]}
     * over lp[0..n_lp). text_offset counts from offset0 (bytes of text before
     * lp[0] in the choice). */
    int with_logprobs;
    const gn_oai_logprob *lp;
    int n_lp;
    size_t offset0;
} gn_oai_choice;

typedef struct gn_oai_usage {
    int prompt_tokens;
    int completion_tokens; /* total_tokens is the sum */
} gn_oai_usage;

/* The SSE terminator every stream ends with. */
#define GN_OAI_SSE_DONE "data: [DONE]\n\n"

/* A whole "text_completion" (kind COMPLETION) or "chat.completion" object with
 * choices[0..n) and usage. Returns a gn_malloc'd NUL-terminated JSON string
 * (*len bytes, len may be NULL) or NULL with err (GN_EINVAL for text that is
 * not valid UTF-8, GN_ENOMEM). */
char *gn_oai_format_response(int kind, const char *id, int64_t created, const char *model,
                             const gn_oai_choice *choices, int n, const gn_oai_usage *usage,
                             size_t *len, gn_err *err);

/* One streaming chunk as an SSE event "data: {...}\n\n": "text_completion"
 * with choices[{index, text, finish_reason}] or "chat.completion.chunk" with
 * choices[{index, delta:{role?, content?}, finish_reason}]. with_role adds
 * "role":"assistant" to the chat delta (first chunk of a choice). usage
 * non-NULL: a usage chunk (choices [] plus usage; c is ignored). Same
 * ownership and failure as gn_oai_format_response. */
char *gn_oai_format_chunk(int kind, const char *id, int64_t created, const char *model,
                          const gn_oai_choice *c, int with_role, const gn_oai_usage *usage,
                          size_t *len, gn_err *err);

/* {"error":{"message","type","param","code"}}; gn_malloc'd; NULL only on
 * allocation failure. */
char *gn_oai_format_error(const gn_oai_error *e, size_t *len);

#endif
