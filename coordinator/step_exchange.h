/* step_exchange.h — one step of the distributed loop, over the workers.
 *
 * The scheduler names, for every sequence that steps, each model it needs:
 * the worker (a link), the model (base, or ARM name and version), the tokens
 * to feed and how the row should come back. The exchange groups them into one
 * StepRequest per (worker, model), sends them all, and gathers the replies
 * from every worker at once (never one after another): a reply is read as
 * soon as it is there, and a worker that fails costs only its own sequences
 * at once — a dropped connection (socket monitor) fails its requests the
 * moment it is seen, a worker that neither answers nor answers heartbeats for
 * liveness_ms is declared stalled, and the step deadline bounds the rest.
 *
 * Rows come dense (F32, or F16/BF16 with their rounding) or SPARSE: a
 * worker's top-k candidates plus bounds on the rest (row_select.h), so a step
 * moves a few kilobytes per sequence instead of 4 bytes per vocabulary entry.
 * The draw (draw.h) certifies a sparse step or says what it lacks; the
 * exchange then fetches exactly that (the missing values, else whole rows)
 * from the rows the workers keep, and the draw runs again. Per (sequence,
 * model) the candidate count adapts: it grows when the tail was what stopped
 * a draw, shrinks after a run of draws certified at once, and rows that stay
 * too flat to certify get dense rows for a while; new sequences of the same
 * kind of job start where the last one got to.
 *
 * Links: one DEALER per worker endpoint, shared by every model on it and
 * every sequence; requests and heartbeats are told apart by request id.
 * Workers on this host are reached over ipc:// when they offer it (the
 * caller passes the endpoint to use).
 *
 * Thread-safety: one thread (the scheduler's). */
#ifndef GN_STEP_EXCHANGE_H
#define GN_STEP_EXCHANGE_H

#include <stddef.h>
#include <stdint.h>

#include "gn_err.h"
#include "metrics.h"

struct dseq;

/* How rows come back. */
typedef enum gn_rows_policy {
    GN_ROWS_SPARSE = 0, /* sparse rows, certified within epsilon, fetched when not (default) */
    GN_ROWS_F32 = 1,    /* dense float32 rows: exact */
    GN_ROWS_F16 = 2,    /* dense float16: log-probs near -20 off by up to ~0.008 */
    GN_ROWS_BF16 = 3,   /* dense bfloat16: off by up to ~0.06 */
} gn_rows_policy;

/* Parses "sparse", "f32", "f16", "bf16". 0 or GN_EINVAL. */
int gn_rows_policy_parse(const char *s, gn_rows_policy *out);

/* How one sequence's rows come now (every model of it alike), adapted step
 * by step. */
typedef struct gn_row_mode {
    uint32_t k;     /* candidates to ask for; 0 = a dense row */
    int streak;     /* sparse steps certified at once in a row at this k */
    int dense_left; /* dense steps to go before trying sparse rows again */
    uint32_t k_fail; /* the largest k whose draw needed a fetch lately: k stays above it */
} gn_row_mode;

typedef struct gn_exchange_params {
    const char *base_endpoint; /* required */
    int n_vocab;               /* columns of every row */
    int max_batch;             /* sequences per step */
    int max_arms;              /* ARMs per sequence */
    int step_timeout_ms;       /* longest wait for any reply, default 30000 */
    int liveness_ms;           /* a worker with a request pending that answers neither it nor a
                                  heartbeat for this long is stalled, default 1000 */
    gn_rows_policy rows;       /* default GN_ROWS_SPARSE */
    uint32_t k_first;          /* candidates a new sparse row starts with, default 64 */
    uint32_t k_max;            /* most candidates before dense rows, default 2048 (at most a
                                  quarter of the vocabulary: beyond, dense rows are smaller) */
    gn_coord_metrics *metrics; /* optional (borrowed) */
} gn_exchange_params;

gn_exchange_params gn_exchange_default_params(void);

typedef struct gn_exchange gn_exchange;
typedef struct gn_xlink gn_xlink; /* a worker endpoint */

gn_exchange *gn_exchange_create(const gn_exchange_params *p, gn_err *err);
void gn_exchange_free(gn_exchange *x); /* NULL is a no-op */

/* The base worker's link. */
gn_xlink *gn_exchange_base(gn_exchange *x);
/* The link to endpoint, connected on first use (owned by x). NULL with err. */
gn_xlink *gn_exchange_link(gn_exchange *x, const char *endpoint, gn_err *err);
/* 1 when the link is known dead: its connection was up, dropped and has not
 * come back. Jobs are placed elsewhere (or wait for a worker). */
int gn_xlink_down(gn_exchange *x, gn_xlink *l);

/* The first row mode of a new sequence of a kind of job (a hash of its ARMs
 * and sampling settings): the mode the last sequence of that kind ended a
 * step with, else the policy's first. */
gn_row_mode gn_exchange_first_mode(gn_exchange *x, uint64_t kind);

/* ---- one step ------------------------------------------------------------- */

/* Starts a step (forgets the previous one's requests and replies). */
void gn_exchange_begin(gn_exchange *x);

/* Adds model mi of sequence s to the step: feed n tokens starting at
 * start_pos to model (name "" = base, version) on link l, asking for a row
 * as s->m[mi].mode says. tokens must stay valid until gn_exchange_end.
 * GN_ENOMEM, or GN_ERANGE past max_batch sequences or 1 + max_batch x max_arms
 * distinct (worker, model version) pairs in one step (a batch of at most
 * max_batch sequences with at most max_arms ARMs each never gets there). */
int gn_exchange_add(gn_exchange *x, struct dseq *s, int mi, gn_xlink *l, const char *name,
                    uint32_t version, uint32_t start_pos, const int32_t *tokens, int n);

/* Sends every request, then gathers the replies until each is answered or
 * failed. For each added (s, mi): s->m[mi].has_row and .row (dense or sparse,
 * pointing into the reply) and .held on success; .err_code and
 * .err_msg when the worker refused that sequence (ERROR_CAPACITY, ...);
 * when the whole request failed (worker dead, stalled, unreachable, an error
 * reply) every sequence of it gets err_code ERROR_INTERNAL with a message
 * naming the worker and why. */
void gn_exchange_run(gn_exchange *x);

/* Called by a draw (any thread, touching only s) right after gn_draw
 * answered NEED_VALUES for s: copies the ids it lacks (drawer scratch, soon
 * overwritten) into s's own row buffers, after the listed ones, for
 * gn_exchange_fetch. 0 or GN_ENOMEM. */
int gn_exchange_keep_missing(struct dseq *s);

/* Fetch rounds in one step at most (values, then whole rows). */
#define GN_EXCHANGE_MAX_FETCH_ROUNDS 2

/* After the draws: for every stepped sequence whose draw said NEED_VALUES or
 * NEED_ROWS (s->draw.status), asks the workers for exactly that (one RowFetch
 * per (worker, model)) and puts what comes back into the sequences' rows
 * (values appended to a sparse row; a whole row makes it dense), then adapts
 * each pair's row mode. Returns the number of sequences that got something to
 * draw again (0: nothing was needed). A sequence whose fetch failed gets
 * draw_rc set with a message naming the worker. */
int gn_exchange_fetch(gn_exchange *x);

/* Ends the step: the row modes of sequences certified at once adapt, the
 * replies are freed (rows pointing into them become invalid). Returns the
 * step's model compute (the slowest worker's forward passes, seconds) and
 * adds the wait (first send to last reply) to *wait_s. */
double gn_exchange_end(gn_exchange *x, double *wait_s);

/* ---- outside steps ---------------------------------------------------------- */

/* Releases sequence ids on model (name, version) of link l (fire and forget). */
void gn_exchange_release(gn_exchange *x, gn_xlink *l, const char *name, uint32_t version,
                         const uint64_t *ids, int n);

/* Between steps (idle too): reads stray replies, pings the base worker about
 * once a second (its heartbeat feeds kv_cache_usage_perc). */
void gn_exchange_idle(gn_exchange *x);

#endif
