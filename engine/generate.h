/* generate.h — GenARM guided generation in one process, and ARM scoring.
 *
 * A gn_generator ties a frozen base model to any number of autoregressive
 * reward models (ARMs). Each model has its own gn_runner and, per sequence,
 * its own gn_seq (KV cache) and its own prompt tokens (every model tokenizes
 * the prompt with its own tokenizer, and may be given its own prompt text,
 * e.g. its own chat template); all models share the generated continuation.
 * One decoding step is
 *
 *     for every model m: lp_m = gn_runner_step(m, new tokens)   (log-probs)
 *     score = lp_base + Σ_i (w_i / β) · lp_arm_i               (guidance.h)
 *     token = sample(score; T, top-k, top-p, min-p, rng)        (sampler.h)
 *     append token to every model's sequence
 *
 * where the middle two lines are one gn_draw on dense rows (draw.h: the same
 * draw every backend makes, which also reports the log-probs asked for)
 *
 * run for a batch of sequences at once (each runner step carries every active
 * sequence). Models are stepped one after another here; the per-model steps
 * are independent, which is what the distributed service fans out.
 *
 * Stops: max_tokens ("length"), an EOS id of the base model ("stop"), a stop
 * string in the decoded text ("stop": the text ends before the stop string),
 * the context limit ("length").
 *
 * Thread-safety: a generator is used by one thread at a time. The models are
 * borrowed read-only and may be shared with other generators. */
#ifndef GN_GENERATE_H
#define GN_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "draw.h"
#include "gn_err.h"
#include "guidance.h"
#include "model.h"
#include "runner.h"
#include "sampler.h"

struct gn_tokenizer;

/* ---- streaming text with stop strings ------------------------------------ */

/* Turns generated tokens into the text a client may see: incremental UTF-8
 * decoding (gn_tok_stream, special tokens skipped), stop strings matched on the
 * decoded text, and hold-back of any tail that could still become a stop
 * string. Reusable by the coordinator's own step loop. Not thread-safe. */
typedef struct gn_gen_text gn_gen_text;

/* stop[0..n_stop): non-empty UTF-8 strings, copied. t is borrowed. NULL and
 * err on failure (empty stop string: GN_EINVAL). */
gn_gen_text *gn_gen_text_create(const struct gn_tokenizer *t, const char *const *stop, int n_stop,
                                gn_err *err);
void gn_gen_text_free(gn_gen_text *x); /* NULL is a no-op */

/* Feeds one generated token. On success (*out, *out_len) is the text that just
 * became final (possibly empty; valid until the next call on x) and *stopped
 * is 1 when a stop string appeared: the text before it has been emitted, the
 * stop string and anything after it never will be, and x takes no more tokens
 * (push and finish then return 0 with empty output). */
int gn_gen_text_push(gn_gen_text *x, int32_t token, const char **out, size_t *out_len, int *stopped,
                     gn_err *err);

/* End of generation for another reason (EOS, length): emits what was held back
 * (an incomplete UTF-8 tail becomes U+FFFD). *stopped as for push (the flushed
 * tail may complete a stop string). */
int gn_gen_text_finish(gn_gen_text *x, const char **out, size_t *out_len, int *stopped,
                       gn_err *err);

/* All text emitted so far (NUL-terminated, owned by x, valid until the next
 * call on x). */
const char *gn_gen_text_str(const gn_gen_text *x, size_t *len);

/* ---- guided generation ---------------------------------------------------- */

typedef struct gn_generator gn_generator;

/* Creates a generator over base and arms[0..n_arms) (all borrowed, must
 * outlive the generator; every model must have been loaded with its
 * tokenizer). Creates one runner per model with *rp (NULL: defaults).
 * `profile` is the default guidance (NULL: every weight 1, β 1); its n_arms
 * must equal n_arms.
 * Refuses (GN_EMISMATCH) an ARM whose tokenizer hash (gn_tok_hash) or output
 * width (gn_model_n_out) differs from the base's, naming both directories.
 * NULL and err on failure. */
gn_generator *gn_generator_create(gn_model *base, gn_model *const *arms, int n_arms,
                                  const gn_guidance *profile, const gn_runner_params *rp,
                                  gn_err *err);
void gn_generator_free(gn_generator *g); /* NULL is a no-op */

/* Columns of every log-prob / score row (the shared vocabulary size). */
int gn_generator_n_vocab(const gn_generator *g);
/* The base model's tokenizer. */
const struct gn_tokenizer *gn_generator_tokenizer(const gn_generator *g);
/* Runner of model mi: 0 = base, 1 + i = ARM i (e.g. for gn_score_ids). */
gn_runner *gn_generator_runner(gn_generator *g, int mi);

typedef struct gn_gen_request {
    const char *prompt;         /* UTF-8 text every model tokenizes with its own tokenizer */
    const char *const *prompts; /* optional per-model text, (1 + n_arms) entries: [0] base,
                                   [1 + i] ARM i; a NULL entry (or NULL array) uses prompt */
    const int32_t *prompt_ids;  /* instead of text: ids fed to every model as they are */
    int n_prompt_ids;
    int add_special;            /* text prompts: add BOS etc. as HF encode() does; default 1 */
    gn_sampler_params sampling; /* temperature, top-k/p, min-p, seed */
    int max_tokens;             /* >= 0 generated tokens at most; default 256 */
    const char *const *stop;    /* stop strings, n_stop of them (non-empty) */
    int n_stop;
    int ignore_eos;              /* 1: EOS ids do not stop generation */
    const gn_guidance *guidance; /* this request's weights and β (n_arms must match the
                                    generator's); NULL = the generator's profile */
    int want_logprob;            /* 1: each step's draw reports the token's log-prob (T = 1,
                                    log_softmax(score)); default 0 */
    int n_top;                   /* 0..GN_DRAW_MAX_TOP most likely alternatives to report per
                                    step (on_step's info->draw); default 0 */
} gn_gen_request;

gn_gen_request gn_gen_default_request(void);

typedef struct gn_gen_result {
    int32_t *tokens; /* generated ids, the final EOS included (gn_malloc'd) */
    int n_tokens;
    char *text; /* decoded output + NUL, without EOS or stop string; text_len
                   bytes (a NUL byte token can put NULs inside) */
    size_t text_len;
    const char *finish_reason; /* "stop", "length" or "abort" (static string) */
    int n_prompt_tokens;       /* the base model's prompt length */
    double ttft_ms;            /* start of gn_generate to this sequence's first token */
    double total_ms;           /* start of gn_generate to this sequence's end */
} gn_gen_result;

/* Frees what r owns and zeroes it (NULL is a no-op). */
void gn_gen_result_free(gn_gen_result *r);

/* What a step observer sees (all pointers valid during the call only). */
typedef struct gn_gen_step_info {
    int seq;                    /* index of the request */
    int step;                   /* 0 for the first generated token */
    int32_t token;              /* the token sampled from score */
    int n_vocab;                /* columns of every row */
    const float *score;         /* combined score row (guidance.h) */
    const float *base_lp;       /* the base model's log-probs */
    const float *const *arm_lp; /* each ARM's log-probs, n_arms rows */
    int n_arms;
    const gn_draw_result *draw; /* the step's draw: token, and the log-prob and top
                                   alternatives when the request asked for them */
} gn_gen_step_info;

typedef struct gn_gen_callbacks {
    /* Text of sequence `seq` that just became final (UTF-8, len > 0), in order;
     * the concatenation is the result's text. `token` is the token that
     * released it, or -1 at the end. Return non-zero to end this sequence
     * ("abort"). May be NULL. */
    int (*on_text)(void *ud, int seq, int32_t token, const char *text, size_t len);
    /* Called once per generated token after sampling. May be NULL. */
    void (*on_step)(void *ud, const gn_gen_step_info *info);
    void *ud;
} gn_gen_callbacks;

/* Generates for reqs[0..n) as one batch (split into groups of the runner's
 * max_seqs), writing res[0..n) (caller-owned array; each filled result is freed
 * with gn_gen_result_free). cb may be NULL. Buffers (log-prob rows, token
 * arrays) are sized once per call; per token only the output text may grow
 * (amortised doubling). Returns 0, or a negative GN_E* code with err set
 * (bad request: GN_EINVAL naming the request; prompt longer than the context:
 * GN_ERANGE; runner failure) — then no result is left allocated. */
int gn_generate(gn_generator *g, const gn_gen_request *reqs, int n, gn_gen_result *res,
                const gn_gen_callbacks *cb, gn_err *err);

/* ---- scoring: the ARM reward of a response --------------------------------- */

/* r(x, y) = Σ_t log π(y_t | x, y_<t) under model m on runner r (m's runner;
 * borrowed). prompt_ids: n_prompt >= 1 ids; resp: n_resp >= 1 ids. Writes the
 * per-token log-probs to logp (n_resp floats) and the sum (in double) to
 * *total. Uses a fresh sequence on r and frees it. */
int gn_score_ids(gn_model *m, gn_runner *r, const int32_t *prompt_ids, int n_prompt,
                 const int32_t *resp, int n_resp, float *logp, double *total, gn_err *err);

typedef struct gn_score_result {
    int32_t *tokens; /* response ids (gn_malloc'd) */
    float *logp;     /* log π(y_t | x, y_<t) per response token (gn_malloc'd) */
    int n_tokens;
    int n_prompt_tokens;
    double total; /* Σ logp: the reward */
} gn_score_result;

/* Tokenizes prompt (with BOS etc., add_special = 1) and response (without,
 * plus the tokenizer's EOS when add_eos) separately with m's tokenizer, as
 * reward-model training does, and scores. Fills *out (free with
 * gn_score_result_free). */
int gn_score_text(gn_model *m, gn_runner *r, const char *prompt, const char *response, int add_eos,
                  gn_score_result *out, gn_err *err);
void gn_score_result_free(gn_score_result *r); /* NULL is a no-op */

#endif
