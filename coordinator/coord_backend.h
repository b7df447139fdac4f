/* coord_backend.h — the two seams of the HTTP front: where generation happens
 * (gn_coord_backend: submit a job, get its text through a sink, cancel it) and
 * who the caller is (gn_coord_auth: API key -> tenant, tenant's profiles).
 *
 * Implementations: inproc_backend.h runs engine/generate.h in this process
 * (real guided generation on CPU, one job at a time); the distributed
 * step loop over ZeroMQ replaces it. auth_redis.h resolves keys and profiles
 * through the Redis control plane (control/control.h). */
#ifndef GN_COORD_BACKEND_H
#define GN_COORD_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "control.h"
#include "gn_err.h"
#include "openai.h"

/* One request as the backend sees it: the parsed body plus what the server
 * resolved (tenant, guidance from the profile or reward_models, sampling with
 * the profile's defaults applied). */
typedef struct gn_coord_job {
    uint64_t id;                /* unique within the server; the handle for cancel */
    const gn_oai_request *req;  /* borrowed until the sink's done() returns */
    const char *tenant;         /* borrowed likewise */
    const char *body;           /* the JSON body req was parsed from (body_len bytes), borrowed
                                   likewise; NULL when the job did not come from a body (then it
                                   cannot be shared with other coordinators) */
    size_t body_len;
    int n_arms;                 /* 0: the base model alone */
    char arm_names[GN_OAI_MAX_ARMS][GN_OAI_ID_MAX];
    double weights[GN_OAI_MAX_ARMS];
    double beta;                /* > 0 */
    double temperature, top_p, min_p;
    int top_k;
    uint64_t seed;              /* choice i uses seed + i */
    int max_tokens;             /* >= 1 */
    int n;                      /* choices, 1..GN_OAI_MAX_N */
} gn_coord_job;

typedef struct gn_coord_choice_result {
    const char *text; /* the whole text of the choice, text_len bytes */
    size_t text_len;
    const char *finish_reason; /* "stop", "length" or "abort" */
    int n_tokens;              /* generated tokens */
} gn_coord_choice_result;

typedef struct gn_coord_result {
    int rc;     /* 0, or a GN_E* code when the job failed (err says why) */
    gn_err err;
    int n_choices;
    const gn_coord_choice_result *choices; /* n_choices entries (valid during done()) */
    int prompt_tokens;                     /* the base model's prompt length */
    double queue_s;                        /* submit to start of generation */
} gn_coord_result;

/* Where a job's output goes. Implemented by the server. The backend calls
 * text() any number of times, then done() exactly once, both from any thread
 * but never concurrently for one sink; after done() it must not touch the
 * sink (or the job's borrowed pointers) again. */
typedef struct gn_coord_sink gn_coord_sink;
struct gn_coord_sink {
    /* Text of choice `index` that became final (len > 0), in order; n_tokens:
     * tokens generated for that choice so far. */
    void (*text)(gn_coord_sink *s, int index, const char *text, size_t len, int n_tokens);
    void (*done)(gn_coord_sink *s, const gn_coord_result *r);
    /* Only when the request asks for logprobs (req->logprobs >= 0): each
     * generated token of choice `index` in order, as soon as it is sampled
     * (before the text it releases reaches text()), with its log-probability
     * under the guided distribution at temperature 1, log_softmax(score), and
     * the top max(req->logprobs, req->top_logprobs) alternatives. Pointers are
     * valid during the call only. */
    void (*token)(gn_coord_sink *s, int index, const gn_oai_logprob *lp);
};

/* Ends a job that produced no text: done() with n (1..GN_OAI_MAX_N) choices
 * finished "abort", and rc/err (rc 0: cancelled; err may be NULL then). */
static inline void gn_coord_sink_end(gn_coord_sink *s, int n, int rc, const gn_err *err, double queue_s) {
    gn_coord_choice_result ch[GN_OAI_MAX_N];
    if (n < 1 || n > GN_OAI_MAX_N) n = 1;
    for (int i = 0; i < n; i++) ch[i] = (gn_coord_choice_result){"", 0, "abort", 0};
    gn_coord_result res = {.rc = rc, .n_choices = n, .choices = ch, .queue_s = queue_s};
    if (rc && err) res.err = *err;
    res.err.code = rc;
    s->done(s, &res);
}

typedef struct gn_coord_backend {
    void *impl;
    const char *model_id; /* the served model name (GET /v1/models, request "model") */
    /* Accepts a job. 0: accepted, done() will follow (also after cancel).
     * Negative: refused now and the sink is never called; GN_ENOTFOUND names
     * an unknown reward model, GN_EINVAL a request it cannot run, GN_ERANGE a
     * too long prompt, anything else is a server error. Thread-safe. */
    int (*submit)(void *impl, const gn_coord_job *job, gn_coord_sink *sink, gn_err *err);
    /* Asks the job to stop soon (its choices end with "abort"); unknown or
     * finished ids are ignored. Thread-safe, does not block on generation. */
    void (*cancel)(void *impl, uint64_t id);
    /* 1 when it can take work (GET /ready). Thread-safe. */
    int (*ready)(void *impl);
} gn_coord_backend;

typedef struct gn_coord_auth {
    void *impl;
    /* Raw bearer key -> tenant id (GN_CTL_ID_MAX bytes). GN_ENOTFOUND for an
     * unknown key; other negatives are failures (answered 503). Thread-safe. */
    int (*lookup_key)(void *impl, const char *raw_key, char tenant[GN_CTL_ID_MAX], gn_err *err);
    /* The tenant's own profile `name`; GN_ENOTFOUND when it has none of that
     * name. Thread-safe. */
    int (*get_profile)(void *impl, const char *tenant, const char *name, gn_ctl_profile *out,
                       gn_err *err);
} gn_coord_auth;

#endif
