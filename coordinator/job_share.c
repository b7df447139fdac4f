/* job_share.c — coordinators sharing requests through the Redis queue
 * (job_share.h). Three parts: the QueuedJob codec, the origin (exported
 * requests, the peer ROUTER and its thread) and the executor (requests taken
 * from the queue, their forwarding sinks and the DEALERs to their origins). */
#include "job_share.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "control.h"
#include "gn_alloc.h"
#include "gn_time.h"
#include "openai.h"

#define PEERS_MAX 64
#define ALIVE_EVERY_S 1.0
#define PEER_IDLE_CLOSE_S 60.0
#define MAX_REQUEUES 3
#define REMOTE_BIT (1ull << 63) /* ids of remote requests on their executor */

static uint64_t unix_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ================================================================ the QueuedJob codec */

int gn_share_encode(const gn_coord_job *j, const char *origin_id, const char *origin_endpoint,
                    uint64_t enqueued_unix_ms, uint8_t **out, size_t *len, gn_err *err) {
    if (!j || !j->req || !j->body || !j->body_len)
        return gn_errf(err, GN_EINVAL, "shared queue: the request has no body to queue");
    if (j->n_arms < 0 || j->n_arms > GN_OAI_MAX_ARMS)
        return gn_errf(err, GN_EINVAL, "shared queue: %d reward models", j->n_arms);
    char *names[GN_OAI_MAX_ARMS];
    double weights[GN_OAI_MAX_ARMS];
    for (int i = 0; i < j->n_arms; i++) {
        names[i] = (char *)j->arm_names[i];
        weights[i] = j->weights[i];
    }
    Genarm__V1__QueuedJob q = GENARM__V1__QUEUED_JOB__INIT;
    q.origin_id = (char *)origin_id;
    q.origin_endpoint = (char *)origin_endpoint;
    q.job_id = j->id;
    q.kind = (uint32_t)j->req->kind;
    q.body.data = (uint8_t *)j->body;
    q.body.len = j->body_len;
    q.tenant = (char *)(j->tenant ? j->tenant : "");
    q.n_arm_names = (size_t)j->n_arms;
    q.arm_names = names;
    q.n_arm_weights = (size_t)j->n_arms;
    q.arm_weights = weights;
    q.beta = j->beta;
    q.temperature = j->temperature;
    q.top_p = j->top_p;
    q.min_p = j->min_p;
    q.top_k = j->top_k;
    q.seed = j->seed;
    q.max_tokens = j->max_tokens;
    q.n = j->n;
    q.enqueued_unix_ms = enqueued_unix_ms;
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    env.body_case = GENARM__V1__ENVELOPE__BODY_QUEUED_JOB;
    env.queued_job = &q;
    return gn_wire_encode(&env, out, len, err);
}

void gn_share_job_clear(gn_share_job *j) {
    if (!j) return;
    gn_oai_request_free(&j->req);
    gn_free(j->body);
    memset(j, 0, sizeof *j);
}

static int endpoint_ok(const char *s) {
    size_t n = s ? strlen(s) : 0;
    return n > 6 && n < 256 && (strncmp(s, "tcp://", 6) == 0 || strncmp(s, "ipc://", 6) == 0);
}

static int arm_name_ok(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n >= GN_OAI_ID_MAX) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return 0;
    }
    return 1;
}

/* The request part of a QueuedJob (the origin part is already in out). */
static int decode_request(const Genarm__V1__QueuedJob *q, gn_share_job *out, gn_err *err) {
    const char *where = "queued request";
    if (q->kind != GN_OAI_COMPLETION && q->kind != GN_OAI_CHAT)
        return gn_errf(err, GN_EFORMAT, "%s: kind %u is neither completion (0) nor chat (1)", where, q->kind);
    if (q->body.len == 0 || q->body.len > GN_OAI_BODY_MAX)
        return gn_errf(err, GN_EFORMAT, "%s: body of %zu bytes (1..%u allowed)", where, q->body.len,
                       (unsigned)GN_OAI_BODY_MAX);
    if (!q->tenant || !gn_ctl_id_valid(q->tenant))
        return gn_errf(err, GN_EFORMAT, "%s: tenant is not a valid id", where);
    if (q->n_arm_names != q->n_arm_weights)
        return gn_errf(err, GN_EFORMAT, "%s: %zu arm_names but %zu arm_weights", where, q->n_arm_names,
                       q->n_arm_weights);
    if (q->n_arm_names > GN_OAI_MAX_ARMS)
        return gn_errf(err, GN_EFORMAT, "%s: %zu reward models (at most %d)", where, q->n_arm_names,
                       GN_OAI_MAX_ARMS);
    for (size_t i = 0; i < q->n_arm_names; i++) {
        if (!q->arm_names[i] || !arm_name_ok(q->arm_names[i]))
            return gn_errf(err, GN_EFORMAT, "%s: arm_names[%zu] is not a valid name", where, i);
        if (!isfinite(q->arm_weights[i]))
            return gn_errf(err, GN_EFORMAT, "%s: arm_weights[%zu] is not finite", where, i);
    }
    if (!isfinite(q->beta) || q->beta <= 0) return gn_errf(err, GN_EFORMAT, "%s: beta must be > 0", where);
    if (!isfinite(q->temperature) || q->temperature < 0 || q->temperature > 10)
        return gn_errf(err, GN_EFORMAT, "%s: temperature out of [0, 10]", where);
    if (!isfinite(q->top_p) || q->top_p <= 0 || q->top_p > 1)
        return gn_errf(err, GN_EFORMAT, "%s: top_p out of (0, 1]", where);
    if (!isfinite(q->min_p) || q->min_p < 0 || q->min_p > 1)
        return gn_errf(err, GN_EFORMAT, "%s: min_p out of [0, 1]", where);
    if (q->top_k < 0) return gn_errf(err, GN_EFORMAT, "%s: top_k < 0", where);
    if (q->max_tokens < 1 || q->max_tokens > GN_OAI_MAX_TOKENS_CAP)
        return gn_errf(err, GN_EFORMAT, "%s: max_tokens %d out of 1..%d", where, q->max_tokens,
                       GN_OAI_MAX_TOKENS_CAP);
    if (q->n < 1 || q->n > GN_OAI_MAX_N)
        return gn_errf(err, GN_EFORMAT, "%s: n %d out of 1..%d", where, q->n, GN_OAI_MAX_N);
    if (!(out->body = gn_malloc(q->body.len + 1))) return gn_errf(err, GN_ENOMEM, "%s: out of memory", where);
    memcpy(out->body, q->body.data, q->body.len);
    out->body[q->body.len] = 0;
    out->body_len = q->body.len;
    gn_oai_error oe;
    int rc = q->kind == GN_OAI_CHAT ? gn_oai_parse_chat(out->body, out->body_len, &out->req, &oe)
                                    : gn_oai_parse_completion(out->body, out->body_len, &out->req, &oe);
    if (rc)
        return gn_errf(err, rc == GN_ENOMEM ? GN_ENOMEM : GN_EINVAL, "%s: body%s%s: %s", where,
                       oe.param[0] ? " member " : "", oe.param, oe.message);
    snprintf(out->tenant, sizeof out->tenant, "%s", q->tenant);
    gn_coord_job *j = &out->job;
    memset(j, 0, sizeof *j);
    j->id = q->job_id;
    j->req = &out->req;
    j->tenant = out->tenant;
    j->body = out->body;
    j->body_len = out->body_len;
    j->n_arms = (int)q->n_arm_names;
    for (int i = 0; i < j->n_arms; i++) {
        snprintf(j->arm_names[i], sizeof j->arm_names[i], "%s", q->arm_names[i]);
        j->weights[i] = q->arm_weights[i];
    }
    j->beta = q->beta;
    j->temperature = q->temperature;
    j->top_p = q->top_p;
    j->min_p = q->min_p;
    j->top_k = q->top_k;
    j->seed = q->seed;
    j->max_tokens = q->max_tokens;
    j->n = q->n;
    return 0;
}

int gn_share_decode(const uint8_t *buf, size_t len, gn_share_job *out, gn_err *err) {
    memset(out, 0, sizeof *out);
    gn_wire_limits lim = gn_wire_default_limits();
    lim.max_frame_bytes = GN_OAI_BODY_MAX + (64u << 10);
    gn_wire_env *env = NULL;
    int wire_code;
    uint64_t rid;
    int rc = gn_wire_decode(buf, len, &lim, &env, &wire_code, &rid, err);
    if (rc) return gn_err_prefix(err, "queued request: ");
    if (env->body_case != GENARM__V1__ENVELOPE__BODY_QUEUED_JOB) {
        rc = gn_errf(err, GN_EFORMAT, "queued request: the envelope holds body %d, not a QueuedJob",
                     (int)env->body_case);
        gn_wire_env_free(env);
        return rc;
    }
    const Genarm__V1__QueuedJob *q = env->queued_job;
    if (!q->origin_id || !gn_ctl_id_valid(q->origin_id)) {
        rc = gn_errf(err, GN_EFORMAT, "queued request: origin_id is not a valid id");
    } else if (!endpoint_ok(q->origin_endpoint)) {
        rc = gn_errf(err, GN_EFORMAT, "queued request: origin_endpoint is not tcp:// or ipc:// (or too long)");
    } else {
        snprintf(out->origin_id, sizeof out->origin_id, "%s", q->origin_id);
        snprintf(out->origin_endpoint, sizeof out->origin_endpoint, "%s", q->origin_endpoint);
        out->origin_job_id = q->job_id;
        out->enqueued_unix_ms = q->enqueued_unix_ms;
        rc = decode_request(q, out, err);
    }
    gn_wire_env_free(env);
    if (rc) { /* keep the origin so it can be told */
        char id[GN_CTL_ID_MAX], ep[256];
        uint64_t jid = out->origin_job_id;
        memcpy(id, out->origin_id, sizeof id);
        memcpy(ep, out->origin_endpoint, sizeof ep);
        gn_share_job_clear(out);
        memcpy(out->origin_id, id, sizeof id);
        memcpy(out->origin_endpoint, ep, sizeof ep);
        out->origin_job_id = jid;
    }
    return rc;
}

/* ================================================================ state */

enum { X_QUEUED = 0, X_RUNNING = 1 };

/* A request this coordinator exported (origin side), under gn_share.mu. */
typedef struct xjob {
    const gn_coord_job *job; /* the caller's, valid until done() */
    gn_coord_sink *sink;
    int state;
    int pushing;   /* an XADD of it is in flight (export or requeue) */
    int gone;      /* taken back while pushing: the pusher frees it */
    int cancelled; /* by the client */
    int cancel_sent;
    int got_output;
    int requeues;
    char entry[GN_CTL_STREAM_ID_MAX]; /* its stream entry ("" while pushing) */
    uint8_t ident[256];               /* the executor's ROUTER identity */
    size_t ident_len;
    char executor[GN_CTL_ID_MAX];
    double t_export, t_accept, last_heard, last_check;
    struct xjob *next;
} xjob;

/* A connection to one origin (executor side). */
typedef struct peer {
    int used;
    char endpoint[256];
    void *sock;
    int n_jobs;
    int broken;            /* a send failed: the origin does not read */
    double waiting_since;  /* first unanswered JobAccept/JobAlive, 0 = none */
    double last_alive;
    double idle_since;
} peer;

/* A request taken from another coordinator (executor side). */
typedef struct rjob {
    gn_coord_sink sink; /* first: the forwarding sink */
    gn_share *s;
    int peer;
    int cancel_asked;
    gn_share_job sj; /* sj.job.id is the local id (REMOTE_BIT | n) */
    struct rjob *next;
} rjob;

struct gn_share {
    gn_share_params p;
    char id[GN_CTL_ID_MAX];
    char endpoint[256];
    void *zctx;
    void *router; /* the origin thread's (after create) */
    gn_ctl *ctl_origin;
    pthread_mutex_t mu_ctl; /* ctl_origin */
    pthread_mutex_t mu;     /* xjobs, quit */
    xjob *xjobs;
    int n_x;
    int quit;
    pthread_t thread;
    int thread_started;
    /* executor side: one thread */
    gn_ctl *ctl_exec;
    peer peers[PEERS_MAX];
    rjob *rjobs;
    atomic_int n_r; /* read from any thread (drain) */
    uint64_t next_local;
    double last_claim;
    gn_metric *m_shared, *m_depth;
};

gn_share_params gn_share_default_params(void) {
    gn_share_params p;
    memset(&p, 0, sizeof p);
    p.bind = "tcp://127.0.0.1:0";
    p.redis_timeout_ms = 2000;
    p.peer_timeout_ms = 10000;
    p.claim_idle_ms = 15000;
    return p;
}

/* Encodes env and sends it as one frame, or as [ident][frame] on the ROUTER. */
static int send_env(void *sock, const uint8_t *ident, size_t ident_len, gn_wire_env *env) {
    uint8_t *buf = NULL;
    size_t len = 0;
    gn_err e = {0};
    if (gn_wire_encode(env, &buf, &len, &e)) return -1;
    int rc = 0;
    if (ident && zmq_send(sock, ident, ident_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) rc = -1;
    if (!rc && zmq_send(sock, buf, len, ZMQ_DONTWAIT) < 0) rc = -1;
    gn_free(buf);
    return rc;
}

static void send_cancel(gn_share *s, const uint8_t *ident, size_t ident_len, const uint64_t *ids, size_t n) {
    Genarm__V1__JobCancel c = GENARM__V1__JOB_CANCEL__INIT;
    c.n_job_ids = n;
    c.job_ids = (uint64_t *)ids;
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    env.body_case = GENARM__V1__ENVELOPE__BODY_JOB_CANCEL;
    env.job_cancel = &c;
    send_env(s->router, ident, ident_len, &env);
}

/* ================================================================ origin */

static xjob *x_find(gn_share *s, uint64_t id) {
    for (xjob *x = s->xjobs; x; x = x->next)
        if (x->job->id == id) return x;
    return NULL;
}

static void x_unlink(gn_share *s, xjob *x) {
    for (xjob **pp = &s->xjobs; *pp; pp = &(*pp)->next)
        if (*pp == x) {
            *pp = x->next;
            s->n_x--;
            return;
        }
}

/* Ends an exported request here: done() with "abort" choices (rc 0) or the
 * error. Called without mu; x is already unlinked and is freed. */
static void x_finish(xjob *x, int rc, const char *msg) {
    gn_err e = {0};
    if (rc) gn_errf(&e, rc, "%s", msg);
    gn_coord_sink_end(x->sink, x->job->n, rc, &e, gn_mono_s() - x->t_export);
    gn_free(x);
}

/* XADDs x (again). x is linked with pushing = 1; on return it is either
 * queued with its entry, or (push failed) unlinked and finished with the
 * error, or freed because it was taken back meanwhile. */
static void x_push(gn_share *s, xjob *x, const uint8_t *buf, size_t len) {
    char entry[GN_CTL_STREAM_ID_MAX] = "";
    gn_err e = {0};
    pthread_mutex_lock(&s->mu_ctl);
    int rc = gn_ctl_queue_push(s->ctl_origin, buf, len, entry, &e);
    pthread_mutex_unlock(&s->mu_ctl);
    pthread_mutex_lock(&s->mu);
    x->pushing = 0;
    if (x->gone) {
        pthread_mutex_unlock(&s->mu);
        gn_free(x);
        return;
    }
    if (rc) {
        x_unlink(s, x);
        pthread_mutex_unlock(&s->mu);
        gn_wire_log("warn", "coordinator", "event=requeue_failed job=%llu msg=\"%s\"",
                    (unsigned long long)x->job->id, e.msg);
        x_finish(x, GN_EIO, "the request lost its coordinator and could not be queued again");
        return;
    }
    memcpy(x->entry, entry, sizeof entry);
    x->last_check = gn_mono_s();
    pthread_mutex_unlock(&s->mu);
}

int gn_share_export(gn_share *s, const gn_coord_job *job, gn_coord_sink *sink, gn_err *err) {
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = gn_share_encode(job, s->id, s->endpoint, unix_ms(), &buf, &len, err);
    if (rc) return rc;
    xjob *x = gn_calloc(1, sizeof *x);
    if (!x) {
        gn_free(buf);
        return gn_errf(err, GN_ENOMEM, "shared queue: out of memory");
    }
    x->job = job;
    x->sink = sink;
    x->t_export = gn_mono_s();
    x->pushing = 1;
    pthread_mutex_lock(&s->mu); /* linked before the push: a fast taker must find it */
    if (s->quit) {
        pthread_mutex_unlock(&s->mu);
        gn_free(x);
        gn_free(buf);
        return gn_errf(err, GN_EIO, "shared queue: shutting down");
    }
    x->next = s->xjobs;
    s->xjobs = x;
    s->n_x++;
    pthread_mutex_unlock(&s->mu);
    char entry[GN_CTL_STREAM_ID_MAX] = "";
    pthread_mutex_lock(&s->mu_ctl);
    rc = gn_ctl_queue_push(s->ctl_origin, buf, len, entry, err);
    pthread_mutex_unlock(&s->mu_ctl);
    gn_free(buf);
    pthread_mutex_lock(&s->mu);
    x->pushing = 0;
    if (x->gone) { /* taken back already (only possible after a successful push) */
        pthread_mutex_unlock(&s->mu);
        gn_free(x);
        gn_metric_inc(s->m_shared, "exported", 1);
        return 0;
    }
    if (rc) {
        x_unlink(s, x);
        pthread_mutex_unlock(&s->mu);
        gn_free(x);
        return rc;
    }
    memcpy(x->entry, entry, sizeof entry);
    x->last_check = gn_mono_s();
    pthread_mutex_unlock(&s->mu);
    gn_metric_inc(s->m_shared, "exported", 1);
    gn_wire_log("info", "coordinator", "event=request_queued job=%llu entry=%s", (unsigned long long)job->id, entry);
    return 0;
}

int gn_share_cancel(gn_share *s, uint64_t job_id) {
    pthread_mutex_lock(&s->mu);
    xjob *x = x_find(s, job_id);
    if (x) x->cancelled = 1;
    pthread_mutex_unlock(&s->mu);
    return x != NULL;
}

int gn_share_exported(gn_share *s) {
    pthread_mutex_lock(&s->mu);
    int n = s->n_x;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* The sink calls for one event of a running exported request (origin thread,
 * no lock held; x is RUNNING and only this thread touches it now). */
static void x_event(gn_share *s, xjob *x, const gn_wire_env *env) {
    const gn_coord_job *j = x->job;
    if (env->body_case == GENARM__V1__ENVELOPE__BODY_JOB_TEXT) {
        const Genarm__V1__JobText *t = env->job_text;
        if (t->index < (uint32_t)j->n && t->text.len)
            x->sink->text(x->sink, (int)t->index, (const char *)t->text.data, t->text.len, (int)t->n_tokens);
        return;
    }
    if (env->body_case == GENARM__V1__ENVELOPE__BODY_JOB_TOKEN) {
        const Genarm__V1__JobToken *t = env->job_token;
        if (t->index >= (uint32_t)j->n || !x->sink->token || t->n_top > GN_OAI_MAX_TOP) return;
        gn_oai_top top[GN_OAI_MAX_TOP];
        for (size_t i = 0; i < t->n_top; i++)
            top[i] = (gn_oai_top){(const char *)t->top[i]->text.data, t->top[i]->text.len, t->top[i]->logprob};
        gn_oai_logprob lp = {{(const char *)t->text.data, t->text.len, t->logprob}, (int)t->n_top, top};
        x->sink->token(x->sink, (int)t->index, &lp);
        return;
    }
    /* JobDone */
    const Genarm__V1__JobDone *d = env->job_done;
    gn_coord_result res;
    memset(&res, 0, sizeof res);
    gn_coord_choice_result ch[GN_OAI_MAX_N];
    int n = j->n;
    for (int i = 0; i < n; i++) {
        const Genarm__V1__ChoiceResult *c = (size_t)i < d->n_choices ? d->choices[i] : NULL;
        const char *fr = c && c->finish_reason ? c->finish_reason : "abort";
        if (strcmp(fr, "stop") != 0 && strcmp(fr, "length") != 0) fr = "abort";
        ch[i] = (gn_coord_choice_result){c ? (const char *)c->text.data : "", c ? c->text.len : 0, fr,
                                         c ? (int)c->n_tokens : 0};
        if (!ch[i].text) ch[i].text = "";
    }
    res.rc = d->rc < 0 ? d->rc : 0;
    if (res.rc) gn_errf(&res.err, res.rc, "%s", d->message && *d->message ? d->message : "failed");
    res.n_choices = n;
    res.choices = ch;
    res.prompt_tokens = (int)d->prompt_tokens;
    res.queue_s = (x->t_accept - x->t_export) + (isfinite(d->queue_s) && d->queue_s > 0 ? d->queue_s : 0);
    gn_wire_log("info", "coordinator", "event=shared_request_done job=%llu executor=%s rc=%d",
                (unsigned long long)j->id, x->executor, res.rc);
    x->sink->done(x->sink, &res);
    gn_free(x);
}

static int same_ident(const xjob *x, const uint8_t *ident, size_t len) {
    return x->ident_len == len && memcmp(x->ident, ident, len) == 0;
}

/* One message from an executor. */
static void origin_msg(gn_share *s, const uint8_t *ident, size_t ident_len, const uint8_t *buf, size_t len) {
    gn_wire_env *env = NULL;
    int wc;
    uint64_t rid;
    gn_err e = {0};
    if (gn_wire_decode(buf, len, NULL, &env, &wc, &rid, &e)) {
        gn_wire_log("warn", "coordinator", "event=peer_frame_rejected msg=\"%s\"", e.msg);
        return;
    }
    uint64_t cancel[256];
    size_t n_cancel = 0;
    int ack = 0;
    double t = gn_mono_s();
    switch (env->body_case) {
    case GENARM__V1__ENVELOPE__BODY_JOB_ACCEPT: {
        const Genarm__V1__JobAccept *a = env->job_accept;
        ack = 1;
        pthread_mutex_lock(&s->mu);
        xjob *x = x_find(s, a->job_id);
        if (x && x->state == X_QUEUED && !x->cancelled && ident_len <= sizeof x->ident) {
            x->state = X_RUNNING;
            memcpy(x->ident, ident, ident_len);
            x->ident_len = ident_len;
            snprintf(x->executor, sizeof x->executor, "%s", a->executor_id ? a->executor_id : "?");
            x->t_accept = x->last_heard = t;
            x->entry[0] = 0;
            gn_wire_log("info", "coordinator", "event=request_taken job=%llu executor=%s",
                        (unsigned long long)a->job_id, x->executor);
        } else if (!(x && x->state == X_RUNNING && same_ident(x, ident, ident_len) && !x->cancelled)) {
            cancel[n_cancel++] = a->job_id;
        }
        pthread_mutex_unlock(&s->mu);
        break;
    }
    case GENARM__V1__ENVELOPE__BODY_JOB_ALIVE: {
        const Genarm__V1__JobAlive *a = env->job_alive;
        ack = 1;
        pthread_mutex_lock(&s->mu);
        for (size_t i = 0; i < a->n_job_ids && n_cancel < 256; i++) {
            xjob *x = x_find(s, a->job_ids[i]);
            if (x && x->state == X_RUNNING && same_ident(x, ident, ident_len) && !x->cancelled)
                x->last_heard = t;
            else
                cancel[n_cancel++] = a->job_ids[i];
        }
        pthread_mutex_unlock(&s->mu);
        break;
    }
    case GENARM__V1__ENVELOPE__BODY_JOB_TEXT:
    case GENARM__V1__ENVELOPE__BODY_JOB_TOKEN:
    case GENARM__V1__ENVELOPE__BODY_JOB_DONE: {
        uint64_t id = env->body_case == GENARM__V1__ENVELOPE__BODY_JOB_TEXT    ? env->job_text->job_id
                      : env->body_case == GENARM__V1__ENVELOPE__BODY_JOB_TOKEN ? env->job_token->job_id
                                                                                : env->job_done->job_id;
        int done = env->body_case == GENARM__V1__ENVELOPE__BODY_JOB_DONE;
        pthread_mutex_lock(&s->mu);
        xjob *x = x_find(s, id);
        int mine = x && x->state == X_RUNNING && same_ident(x, ident, ident_len);
        if (mine) {
            x->last_heard = t;
            x->got_output = 1;
            if (done) x_unlink(s, x);
        }
        pthread_mutex_unlock(&s->mu);
        if (mine)
            x_event(s, x, env);
        else if (!done)
            cancel[n_cancel++] = id;
        break;
    }
    default:
        gn_wire_log("warn", "coordinator", "event=peer_frame_rejected msg=\"unexpected message %d\"",
                    (int)env->body_case);
    }
    gn_wire_env_free(env);
    if (ack || n_cancel) send_cancel(s, ident, ident_len, cancel, n_cancel);
}

typedef struct todo {
    xjob *x;     /* for what 4 (still linked, maybe taken meanwhile): only compared, never read */
    uint64_t id;
    int what; /* 0 abort, 1 fail, 2 cancel on executor, 3 requeue, 4 check entry */
    uint8_t ident[256];
    size_t ident_len;
    char entry[GN_CTL_STREAM_ID_MAX];
} todo;

/* Cancellations, silent executors, entries that vanished from the stream. */
static void origin_upkeep(gn_share *s, double *last) {
    double t = gn_mono_s();
    if (t - *last < 0.05) return;
    *last = t;
    double timeout = s->p.peer_timeout_ms / 1000.0;
    todo list[64];
    int n = 0;
    pthread_mutex_lock(&s->mu);
    for (xjob *x = s->xjobs, *next; x && n < 64; x = next) {
        next = x->next;
        if (x->pushing) continue;
        if (x->state == X_QUEUED && x->cancelled) {
            x_unlink(s, x);
            list[n++] = (todo){.x = x, .id = x->job->id, .what = 0};
        } else if (x->state == X_RUNNING && t - x->last_heard > timeout) {
            x_unlink(s, x);
            if (x->cancelled) {
                list[n++] = (todo){.x = x, .id = x->job->id, .what = 0};
            } else if (!x->got_output && x->requeues < MAX_REQUEUES) {
                x->state = X_QUEUED;
                x->requeues++;
                x->pushing = 1;
                x->next = s->xjobs; /* linked again before the push */
                s->xjobs = x;
                s->n_x++;
                list[n++] = (todo){.x = x, .id = x->job->id, .what = 3};
            } else {
                list[n++] = (todo){.x = x, .id = x->job->id, .what = 1};
            }
        } else if (x->state == X_RUNNING && x->cancelled && !x->cancel_sent) {
            x->cancel_sent = 1;
            todo *d = &list[n++];
            *d = (todo){.x = x, .id = x->job->id, .what = 2, .ident_len = x->ident_len};
            memcpy(d->ident, x->ident, x->ident_len);
        } else if (x->state == X_QUEUED && x->entry[0] && t - x->last_check > timeout) {
            x->last_check = t;
            todo *d = &list[n++];
            *d = (todo){.x = x, .id = x->job->id, .what = 4};
            memcpy(d->entry, x->entry, sizeof d->entry);
        }
    }
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < n; i++) {
        xjob *x = list[i].x;
        uint64_t id = list[i].id;
        switch (list[i].what) {
        case 0:
            x_finish(x, 0, "");
            break;
        case 1: {
            char msg[256];
            snprintf(msg, sizeof msg, "coordinator %s, which was running the request, stopped responding",
                     x->executor);
            gn_wire_log("warn", "coordinator", "event=shared_request_lost job=%llu executor=%s",
                        (unsigned long long)id, x->executor);
            x_finish(x, GN_EIO, msg);
            break;
        }
        case 2:
            send_cancel(s, list[i].ident, list[i].ident_len, &id, 1);
            break;
        case 3:
        case 4: {
            if (list[i].what == 4) {
                gn_err e = {0};
                pthread_mutex_lock(&s->mu_ctl);
                int has = gn_ctl_queue_has(s->ctl_origin, list[i].entry, &e);
                pthread_mutex_unlock(&s->mu_ctl);
                if (has != 0) break; /* still there (or Redis unreadable: look again later) */
                pthread_mutex_lock(&s->mu);
                int still = x_find(s, id) == x && x->state == X_QUEUED && !x->pushing &&
                            strcmp(x->entry, list[i].entry) == 0;
                int give_up = still && x->requeues >= MAX_REQUEUES;
                if (give_up) {
                    x_unlink(s, x);
                } else if (still) {
                    x->requeues++;
                    x->pushing = 1;
                    x->entry[0] = 0;
                }
                pthread_mutex_unlock(&s->mu);
                if (give_up) x_finish(x, GN_EIO, "no coordinator could take the request");
                if (!still || give_up) break;
            }
            gn_wire_log("info", "coordinator", "event=request_requeued job=%llu requeues=%d",
                        (unsigned long long)id, x->requeues);
            gn_metric_inc(s->m_shared, "requeued", 1);
            uint8_t *buf = NULL;
            size_t len = 0;
            gn_err e = {0};
            if (gn_share_encode(x->job, s->id, s->endpoint, unix_ms(), &buf, &len, &e) == 0) {
                x_push(s, x, buf, len);
                gn_free(buf);
            } else {
                pthread_mutex_lock(&s->mu);
                x->pushing = 0;
                x_unlink(s, x);
                pthread_mutex_unlock(&s->mu);
                x_finish(x, e.code, e.msg);
            }
            break;
        }
        }
    }
}

static void *origin_thread(void *arg) {
    gn_share *s = arg;
    double last = 0;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        int quit = s->quit;
        pthread_mutex_unlock(&s->mu);
        if (quit) break;
        zmq_pollitem_t it = {s->router, 0, ZMQ_POLLIN, 0};
        zmq_poll(&it, 1, 50);
        for (int k = 0; k < 1024; k++) {
            zmq_msg_t id, body;
            zmq_msg_init(&id);
            if (zmq_msg_recv(&id, s->router, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&id);
                break;
            }
            int parts = 1, more = zmq_msg_more(&id);
            zmq_msg_init(&body);
            while (more) { /* keep the second part, count the rest */
                zmq_msg_t m;
                zmq_msg_init(&m);
                if (zmq_msg_recv(&m, s->router, 0) < 0) {
                    zmq_msg_close(&m);
                    break;
                }
                parts++;
                more = zmq_msg_more(&m);
                if (parts == 2)
                    zmq_msg_move(&body, &m);
                zmq_msg_close(&m);
            }
            if (parts == 2)
                origin_msg(s, zmq_msg_data(&id), zmq_msg_size(&id), zmq_msg_data(&body), zmq_msg_size(&body));
            else
                gn_wire_log("warn", "coordinator", "event=peer_frame_rejected msg=\"%d message parts, want 2\"",
                            parts);
            zmq_msg_close(&body);
            zmq_msg_close(&id);
        }
        origin_upkeep(s, &last);
    }
    return NULL;
}

/* ================================================================ executor */

static peer *peer_get(gn_share *s, const char *endpoint, gn_err *err) {
    peer *free_slot = NULL;
    for (int i = 0; i < PEERS_MAX; i++) {
        peer *p = &s->peers[i];
        if (p->used && strcmp(p->endpoint, endpoint) == 0 && !p->broken) return p;
        if (!p->used && !free_slot) free_slot = p;
    }
    if (!free_slot) {
        gn_errf(err, GN_ERANGE, "connections to %d coordinators already", PEERS_MAX);
        return NULL;
    }
    void *sock = zmq_socket(s->zctx, ZMQ_DEALER);
    if (!sock) {
        gn_errf(err, GN_EIO, "zmq_socket(DEALER): %s", zmq_strerror(errno));
        return NULL;
    }
    int linger = 500, hwm = 100000;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    if (zmq_connect(sock, endpoint) != 0) {
        gn_errf(err, GN_EIO, "connect %s: %s", endpoint, zmq_strerror(errno));
        zmq_close(sock);
        return NULL;
    }
    memset(free_slot, 0, sizeof *free_slot);
    free_slot->used = 1;
    free_slot->sock = sock;
    free_slot->idle_since = gn_mono_s();
    snprintf(free_slot->endpoint, sizeof free_slot->endpoint, "%s", endpoint);
    return free_slot;
}

static void peer_close(peer *p) {
    if (p->sock) zmq_close(p->sock);
    memset(p, 0, sizeof *p);
}

/* Sends to an origin; a full queue or a socket error marks it broken (its
 * requests are then cancelled by gn_share_poll). expect_answer: a JobAccept
 * or JobAlive, which the origin must answer within peer_timeout_ms. */
static void peer_send(peer *p, gn_wire_env *env, int expect_answer) {
    if (p->broken) return;
    if (send_env(p->sock, NULL, 0, env)) {
        p->broken = 1;
        gn_wire_log("warn", "coordinator", "event=peer_send_failed origin=%s msg=\"%s\"", p->endpoint,
                    zmq_strerror(errno));
        return;
    }
    if (expect_answer && !p->waiting_since) p->waiting_since = gn_mono_s();
}

static void r_text(gn_coord_sink *sink, int index, const char *text, size_t len, int n_tokens) {
    rjob *r = (rjob *)sink;
    Genarm__V1__JobText t = GENARM__V1__JOB_TEXT__INIT;
    t.job_id = r->sj.origin_job_id;
    t.index = (uint32_t)index;
    t.text.data = (uint8_t *)text;
    t.text.len = len;
    t.n_tokens = (uint32_t)n_tokens;
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    env.body_case = GENARM__V1__ENVELOPE__BODY_JOB_TEXT;
    env.job_text = &t;
    peer_send(&r->s->peers[r->peer], &env, 0);
}

static void r_token(gn_coord_sink *sink, int index, const gn_oai_logprob *lp) {
    rjob *r = (rjob *)sink;
    Genarm__V1__JobToken t = GENARM__V1__JOB_TOKEN__INIT;
    Genarm__V1__TopLogprob top[GN_OAI_MAX_TOP], *topp[GN_OAI_MAX_TOP];
    int n = lp->n_top < GN_OAI_MAX_TOP ? lp->n_top : GN_OAI_MAX_TOP;
    for (int i = 0; i < n; i++) {
        genarm__v1__top_logprob__init(&top[i]);
        top[i].text.data = (uint8_t *)lp->top[i].text;
        top[i].text.len = lp->top[i].len;
        top[i].logprob = lp->top[i].logprob;
        topp[i] = &top[i];
    }
    t.job_id = r->sj.origin_job_id;
    t.index = (uint32_t)index;
    t.text.data = (uint8_t *)lp->tok.text;
    t.text.len = lp->tok.len;
    t.logprob = lp->tok.logprob;
    t.n_top = (size_t)n;
    t.top = topp;
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    env.body_case = GENARM__V1__ENVELOPE__BODY_JOB_TOKEN;
    env.job_token = &t;
    peer_send(&r->s->peers[r->peer], &env, 0);
}

static void send_done(peer *p, uint64_t origin_job_id, const gn_coord_result *res) {
    Genarm__V1__JobDone d = GENARM__V1__JOB_DONE__INIT;
    Genarm__V1__ChoiceResult ch[GN_OAI_MAX_N], *chp[GN_OAI_MAX_N];
    int n = res->n_choices < GN_OAI_MAX_N ? res->n_choices : GN_OAI_MAX_N;
    for (int i = 0; i < n; i++) {
        genarm__v1__choice_result__init(&ch[i]);
        ch[i].text.data = (uint8_t *)res->choices[i].text;
        ch[i].text.len = res->choices[i].text_len;
        ch[i].finish_reason = (char *)(res->choices[i].finish_reason ? res->choices[i].finish_reason : "abort");
        ch[i].n_tokens = (uint32_t)(res->choices[i].n_tokens > 0 ? res->choices[i].n_tokens : 0);
        chp[i] = &ch[i];
    }
    d.job_id = origin_job_id;
    d.rc = res->rc;
    d.message = (char *)(res->rc ? res->err.msg : "");
    d.n_choices = (size_t)n;
    d.choices = chp;
    d.prompt_tokens = (uint32_t)(res->prompt_tokens > 0 ? res->prompt_tokens : 0);
    d.queue_s = res->queue_s;
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    env.body_case = GENARM__V1__ENVELOPE__BODY_JOB_DONE;
    env.job_done = &d;
    peer_send(p, &env, 0);
}

static void r_done(gn_coord_sink *sink, const gn_coord_result *res) {
    rjob *r = (rjob *)sink;
    gn_share *s = r->s;
    peer *p = &s->peers[r->peer];
    send_done(p, r->sj.origin_job_id, res);
    gn_wire_log("info", "coordinator", "event=shared_request_finished origin=%s job=%llu rc=%d", r->sj.origin_id,
                (unsigned long long)r->sj.origin_job_id, res->rc);
    for (rjob **pp = &s->rjobs; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    atomic_fetch_sub(&s->n_r, 1);
    if (--p->n_jobs == 0) p->idle_since = gn_mono_s();
    gn_share_job_clear(&r->sj);
    gn_free(r);
}

static void send_accept(gn_share *s, peer *p, uint64_t origin_job_id, int expect_answer) {
    Genarm__V1__JobAccept a = GENARM__V1__JOB_ACCEPT__INIT;
    a.job_id = origin_job_id;
    a.executor_id = s->id;
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    env.body_case = GENARM__V1__ENVELOPE__BODY_JOB_ACCEPT;
    env.job_accept = &a;
    peer_send(p, &env, expect_answer);
}

/* Tells an origin that its request failed before it ran here. */
static void tell_origin(gn_share *s, const gn_share_job *sj, int rc, const char *msg) {
    gn_err e = {0};
    peer *p = peer_get(s, sj->origin_endpoint, &e);
    if (!p) return;
    gn_coord_result res;
    memset(&res, 0, sizeof res);
    res.rc = rc;
    gn_errf(&res.err, rc, "%s", msg);
    send_accept(s, p, sj->origin_job_id, 0); /* JobDone is only honoured after a JobAccept */
    send_done(p, sj->origin_job_id, &res);
    if (p->n_jobs == 0) p->idle_since = gn_mono_s();
}

/* One entry read from the stream: 1 with *out filled, 0 when dropped. The
 * entry is acknowledged either way. */
static int take_entry(gn_share *s, const gn_ctl_msg *m, gn_share_taken *out) {
    gn_err e = {0};
    if (m->len > 0 && m->payload[0] == '{') { /* an ARM-wait token (dist_backend.h) */
        gn_ctl_queue_ack(s->ctl_exec, m->id, &e);
        return 0;
    }
    rjob *r = gn_calloc(1, sizeof *r);
    if (!r) return 0; /* left pending: claimed again later */
    int rc = gn_share_decode((const uint8_t *)m->payload, m->len, &r->sj, &e);
    int own = strcmp(r->sj.origin_id, s->id) == 0 && strcmp(r->sj.origin_endpoint, s->endpoint) == 0;
    if (rc) {
        gn_wire_log("warn", "coordinator", "event=queue_entry_rejected id=%s origin=%s msg=\"%s\"", m->id,
                    r->sj.origin_id[0] ? r->sj.origin_id : "?", e.msg);
        if (!own && r->sj.origin_endpoint[0]) tell_origin(s, &r->sj, rc, e.msg);
    }
    if (rc || own) {
        xjob *x = NULL;
        const gn_coord_job *job = NULL;
        gn_coord_sink *sink = NULL;
        if (own) {
            pthread_mutex_lock(&s->mu);
            x = x_find(s, r->sj.origin_job_id);
            if (x && x->state == X_QUEUED && !x->cancelled) {
                job = x->job;
                sink = x->sink;
                x_unlink(s, x);
                if (x->pushing)
                    x->gone = 1;
                else
                    gn_free(x);
            } else {
                x = NULL;
            }
            pthread_mutex_unlock(&s->mu);
        }
        gn_ctl_queue_ack(s->ctl_exec, m->id, &e);
        gn_share_job_clear(&r->sj);
        gn_free(r);
        if (!x) return 0;
        out->remote = 0;
        out->job = (gn_coord_job *)job;
        out->sink = sink;
        gn_metric_inc(s->m_shared, "taken_back", 1);
        return 1;
    }
    peer *p = peer_get(s, r->sj.origin_endpoint, &e);
    if (!p) {
        gn_wire_log("warn", "coordinator", "event=queue_entry_dropped id=%s origin=%s msg=\"%s\"", m->id,
                    r->sj.origin_id, e.msg);
        gn_ctl_queue_ack(s->ctl_exec, m->id, &e); /* the origin queues it again after peer_timeout_ms */
        gn_share_job_clear(&r->sj);
        gn_free(r);
        return 0;
    }
    r->s = s;
    r->peer = (int)(p - s->peers);
    r->sj.job.id = REMOTE_BIT | ++s->next_local;
    r->sink.text = r_text;
    r->sink.done = r_done;
    r->sink.token = r_token;
    send_accept(s, p, r->sj.origin_job_id, 1); /* before the ack: a crash in between leaves the entry
                                                  pending, to be claimed by another coordinator */
    gn_ctl_queue_ack(s->ctl_exec, m->id, &e);
    p->n_jobs++;
    r->next = s->rjobs;
    s->rjobs = r;
    atomic_fetch_add(&s->n_r, 1);
    gn_metric_inc(s->m_shared, "executed", 1);
    gn_wire_log("info", "coordinator", "event=request_taken_from origin=%s job=%llu local=%llu", r->sj.origin_id,
                (unsigned long long)r->sj.origin_job_id, (unsigned long long)r->sj.job.id);
    out->remote = 1;
    out->job = &r->sj.job;
    out->sink = &r->sink;
    return 1;
}

int gn_share_take(gn_share *s, gn_share_taken *out, gn_err *err) {
    memset(out, 0, sizeof *out);
    for (int tries = 0; tries < 16; tries++) {
        gn_ctl_msg m;
        int r = gn_ctl_queue_read(s->ctl_exec, s->id, 0, &m, err);
        if (r == 0 && gn_mono_s() - s->last_claim > 1.0) {
            s->last_claim = gn_mono_s();
            r = gn_ctl_queue_claim(s->ctl_exec, s->id, s->p.claim_idle_ms, &m, err);
            if (r == 1) gn_wire_log("info", "coordinator", "event=queue_entry_claimed id=%s", m.id);
        }
        if (r <= 0) return r;
        int got = take_entry(s, &m, out);
        gn_ctl_msg_clear(&m);
        if (got) return 1;
    }
    return 0;
}

void gn_share_poll(gn_share *s, void (*cancel)(void *ctx, uint64_t job_id), void *ctx) {
    double t = gn_mono_s();
    double timeout = s->p.peer_timeout_ms / 1000.0;
    for (int i = 0; i < PEERS_MAX; i++) {
        peer *p = &s->peers[i];
        if (!p->used) continue;
        for (int k = 0; k < 256 && !p->broken; k++) { /* the origin's JobCancel answers */
            zmq_msg_t msg;
            zmq_msg_init(&msg);
            if (zmq_msg_recv(&msg, p->sock, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&msg);
                break;
            }
            gn_wire_env *env = NULL;
            int wc;
            uint64_t rid;
            gn_err e = {0};
            if (gn_wire_decode(zmq_msg_data(&msg), zmq_msg_size(&msg), NULL, &env, &wc, &rid, &e) == 0 &&
                env->body_case == GENARM__V1__ENVELOPE__BODY_JOB_CANCEL) {
                p->waiting_since = 0;
                for (size_t j = 0; j < env->job_cancel->n_job_ids; j++)
                    for (rjob *r = s->rjobs; r; r = r->next)
                        if (r->peer == i && r->sj.origin_job_id == env->job_cancel->job_ids[j] && !r->cancel_asked) {
                            r->cancel_asked = 1;
                            gn_wire_log("info", "coordinator", "event=shared_request_cancelled origin=%s job=%llu",
                                        r->sj.origin_id, (unsigned long long)r->sj.origin_job_id);
                            cancel(ctx, r->sj.job.id);
                        }
            } else {
                gn_wire_log("warn", "coordinator", "event=peer_frame_rejected origin=%s msg=\"%s\"", p->endpoint,
                            e.msg[0] ? e.msg : "not a JobCancel");
            }
            gn_wire_env_free(env);
            zmq_msg_close(&msg);
        }
        int dead = p->broken || (p->waiting_since && t - p->waiting_since > timeout);
        if (p->n_jobs > 0 && dead) {
            for (rjob *r = s->rjobs; r; r = r->next)
                if (r->peer == i && !r->cancel_asked) {
                    r->cancel_asked = 1;
                    gn_wire_log("warn", "coordinator", "event=origin_lost origin=%s job=%llu", r->sj.origin_id,
                                (unsigned long long)r->sj.origin_job_id);
                    cancel(ctx, r->sj.job.id);
                }
            continue;
        }
        if (p->n_jobs > 0 && t - p->last_alive >= ALIVE_EVERY_S) {
            p->last_alive = t;
            uint64_t ids[256];
            size_t n = 0;
            for (rjob *r = s->rjobs; r && n < 256; r = r->next)
                if (r->peer == i) ids[n++] = r->sj.origin_job_id;
            Genarm__V1__JobAlive a = GENARM__V1__JOB_ALIVE__INIT;
            a.n_job_ids = n;
            a.job_ids = ids;
            gn_wire_env env;
            gn_wire_env_init(&env, 0);
            env.body_case = GENARM__V1__ENVELOPE__BODY_JOB_ALIVE;
            env.job_alive = &a;
            peer_send(p, &env, 1);
        }
        if (p->n_jobs == 0 && (dead || t - p->idle_since > PEER_IDLE_CLOSE_S)) peer_close(p);
    }
}

int gn_share_remote_running(gn_share *s) {
    return atomic_load(&s->n_r);
}

long gn_share_queue_depth(gn_share *s) {
    long waiting = 0;
    gn_err e = {0};
    if (gn_ctl_queue_depth(s->ctl_exec, &waiting, NULL, &e)) return -1;
    gn_metric_set(s->m_depth, NULL, (double)waiting);
    return waiting;
}

/* ================================================================ lifecycle */

const char *gn_share_endpoint(const gn_share *s) {
    return s->endpoint;
}

gn_share *gn_share_create(const gn_share_params *p, gn_err *err) {
    if (!p || !p->coordinator_id || !gn_ctl_id_valid(p->coordinator_id) || !p->redis_host || p->redis_port <= 0) {
        gn_errf(err, GN_EINVAL, "shared queue: a valid coordinator id and redis are required");
        return NULL;
    }
    gn_share *s = gn_calloc(1, sizeof *s);
    if (!s) {
        gn_errf(err, GN_ENOMEM, "shared queue: out of memory");
        return NULL;
    }
    gn_share_params def = gn_share_default_params();
    s->p = *p;
    if (!s->p.bind) s->p.bind = def.bind;
    if (s->p.redis_timeout_ms <= 0) s->p.redis_timeout_ms = def.redis_timeout_ms;
    if (s->p.peer_timeout_ms <= 0) s->p.peer_timeout_ms = def.peer_timeout_ms;
    if (s->p.claim_idle_ms <= 0) s->p.claim_idle_ms = def.claim_idle_ms;
    snprintf(s->id, sizeof s->id, "%s", p->coordinator_id);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->mu_ctl, NULL);
    if (!(s->zctx = zmq_ctx_new()) || !(s->router = zmq_socket(s->zctx, ZMQ_ROUTER))) {
        gn_errf(err, GN_EIO, "shared queue: zmq: %s", zmq_strerror(errno));
        goto fail;
    }
    int linger = 200, one = 1;
    zmq_setsockopt(s->router, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    if (zmq_bind(s->router, s->p.bind) != 0) {
        gn_errf(err, GN_EIO, "shared queue: bind %s: %s", s->p.bind, zmq_strerror(errno));
        goto fail;
    }
    if (p->advertise && *p->advertise) {
        snprintf(s->endpoint, sizeof s->endpoint, "%s", p->advertise);
    } else {
        size_t len = sizeof s->endpoint;
        if (zmq_getsockopt(s->router, ZMQ_LAST_ENDPOINT, s->endpoint, &len) != 0) {
            gn_errf(err, GN_EIO, "shared queue: no bound endpoint");
            goto fail;
        }
        if (strstr(s->endpoint, "://0.0.0.0:") || strstr(s->endpoint, "://[::]:") || strstr(s->endpoint, "://*:")) {
            gn_errf(err, GN_EINVAL, "shared queue: bound to the wildcard %s: say which address others use "
                                    "(--peer-advertise)", s->endpoint);
            goto fail;
        }
    }
    if (!endpoint_ok(s->endpoint)) {
        gn_errf(err, GN_EINVAL, "shared queue: peer endpoint '%s' is not tcp:// or ipc://", s->endpoint);
        goto fail;
    }
    if (!(s->ctl_origin = gn_ctl_connect(p->redis_host, p->redis_port, s->p.redis_timeout_ms, err)) ||
        !(s->ctl_exec = gn_ctl_connect(p->redis_host, p->redis_port, s->p.redis_timeout_ms, err)) ||
        gn_ctl_queue_init(s->ctl_exec, err))
        goto fail;
    if (p->metrics) {
        gn_metrics *reg = p->metrics->reg;
        if (!(s->m_shared = gn_metrics_add(reg, GN_METRIC_COUNTER, "genarm:shared_requests_total",
                                           "Requests through the shared Redis queue, by role: exported (queued "
                                           "here), taken_back (queued and run here), executed (another "
                                           "coordinator's, run here), requeued (its executor was lost).",
                                           "role", NULL, 0, err)) ||
            !(s->m_depth = gn_metrics_add(reg, GN_METRIC_GAUGE, "genarm:request_queue_depth",
                                          "Requests waiting on the shared queue for a coordinator with room.", NULL,
                                          NULL, 0, err)))
            goto fail;
    }
    if (pthread_create(&s->thread, NULL, origin_thread, s)) {
        gn_errf(err, GN_EIO, "shared queue: cannot start the peer thread");
        goto fail;
    }
    s->thread_started = 1;
    gn_wire_log("info", "coordinator", "event=sharing_queue id=%s peer=%s", s->id, s->endpoint);
    return s;
fail:
    gn_share_free(s);
    return NULL;
}

void gn_share_free(gn_share *s) {
    if (!s) return;
    if (s->thread_started) {
        pthread_mutex_lock(&s->mu);
        s->quit = 1;
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    /* requests still exported: tell their executors, end them here */
    for (;;) {
        pthread_mutex_lock(&s->mu);
        xjob *x = s->xjobs;
        if (x) x_unlink(s, x);
        pthread_mutex_unlock(&s->mu);
        if (!x) break;
        if (x->state == X_RUNNING) {
            uint64_t id = x->job->id;
            send_cancel(s, x->ident, x->ident_len, &id, 1);
        }
        x_finish(x, 0, "");
    }
    while (s->rjobs) { /* the contract says none are left; do not leak if some are */
        rjob *r = s->rjobs;
        s->rjobs = r->next;
        gn_share_job_clear(&r->sj);
        gn_free(r);
    }
    for (int i = 0; i < PEERS_MAX; i++)
        if (s->peers[i].used) peer_close(&s->peers[i]);
    if (s->router) zmq_close(s->router);
    if (s->zctx) zmq_ctx_term(s->zctx);
    gn_ctl_free(s->ctl_origin);
    gn_ctl_free(s->ctl_exec);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->mu_ctl);
    gn_free(s);
}
