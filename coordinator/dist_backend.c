/* dist_backend.c — the distributed step loop (dist_backend.h). */
#include "dist_backend.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "control.h"
#include "generate.h"
#include "gn_alloc.h"
#include "gn_threadpool.h"
#include "guidance.h"
#include "hf_config.h"
#include "job_share.h"
#include "model_config.h"
#include "prompt_model.h"
#include "sampler.h"
#include "step_client.h"
#include "tokenizer.h"
#include "wire.h"

#define N_MODELS_MAX (1 + GN_OAI_MAX_ARMS)
#define MAX_MINFO 64
#define MAX_CLIENTS 128
#define MAX_EOS_IDS 16

/* ---- models as the coordinator sees them: tokenizer + chat template -------- */

typedef gn_prompt_model minfo; /* prompt_model.h */

/* ---- jobs and sequences -------------------------------------------------------- */

typedef struct djob djob;

typedef struct dseq {
    djob *jb;
    int index;
    uint64_t id;
    int active; /* in the running batch */
    int done;
    uint32_t held[N_MODELS_MAX]; /* tokens each worker holds for it */
    int32_t *tokens;             /* generated (cap entries) */
    int n_tokens;
    gn_rng rng;
    gn_gen_text *text;
    const char *finish;
    int row[N_MODELS_MAX]; /* this step's row in its group's tensor, -1 = none */
    int failed;
    int repin; /* no token this step (prefill refused by a superseded ARM version, a worker at
                  capacity, or not stepped): rewind what the workers hold by one token */
    double wait_until; /* a worker was at capacity: not stepped before this time */
    double wait_since; /* first capacity refusal of the current wait, 0 = none */
    int slot;     /* index in the active list this step */
    int draw;     /* the token drawn this step */
    int draw_rc;  /* 0, or why the draw failed (draw_err) */
    gn_err draw_err;
} dseq;

struct djob {
    gn_coord_job j;
    gn_coord_sink *sink;
    atomic_int cancelled;
    double t_submit, t_start;
    int n_arms;
    char arm_ver[GN_OAI_MAX_ARMS][GN_CTL_ID_MAX];
    uint32_t arm_vnum[GN_OAI_MAX_ARMS];
    gn_step_client *arm_client[GN_OAI_MAX_ARMS]; /* resolved by the scheduler */
    int arm_parked[GN_OAI_MAX_ARMS];
    int need_resolve; /* running, but an ARM version must be re-pinned first */
    int repins;
    double arm_deadline;
    int32_t *prompt[N_MODELS_MAX];
    int n_prompt[N_MODELS_MAX];
    gn_guidance g;
    gn_sampler_params sp;
    int cap;
    int admitted;
    int n_left;
    int rc;
    gn_err err;
    dseq seqs[GN_OAI_MAX_N];
    djob *next;                 /* in the submit queue, pending or running list */
    djob *all_prev, *all_next;  /* every live job, under gn_dist.mu (for cancel) */
};

typedef struct client_ent {
    char key[GN_CTL_PATH_MAX + GN_CTL_REF_MAX + 2];
    gn_step_client *c;
} client_ent;

/* One StepRequest of a step: a worker + model, and the sequences it carries. */
typedef struct group {
    gn_step_client *c;
    const char *worker;  /* the endpoint c reaches (worker_len bytes; "" for the base worker) */
    size_t worker_len;
    const char *name;
    uint32_t version;
    char label[GN_CTL_REF_MAX];
    int n;
    dseq **seqs;    /* (max_batch) */
    int *mi;        /* model index of each sequence in its job */
    gn_step_seq *ss;
    int32_t **own;  /* feed buffers to free */
    uint64_t rid;
    int failed;
    gn_err err;
    float *rows;         /* (max_batch, n_vocab): the reply's rows when they need converting */
    const float *rowp;   /* this step's rows: into rep (F32, read in place) or rows */
    gn_wire_env *rep;    /* this step's reply, freed after the draws */
    uint64_t compute_us; /* the worker's forward-pass time for this step (StepResponse.compute_us) */
} group;

struct gn_dist {
    gn_dist_params p;
    char model_id[256];
    char coord_id[GN_CTL_ID_MAX];
    gn_coord_metrics *metrics;
    /* models */
    minfo base;
    minfo arms[MAX_MINFO];
    int n_minfo;
    int n_vocab;
    int ctx_limit;
    int eos[MAX_EOS_IDS];
    int n_eos;
    /* control plane: one connection for submit (under mu_ctl), one for the scheduler */
    gn_ctl *ctl_submit;
    gn_ctl *ctl_sched;
    pthread_mutex_t mu_ctl;
    /* data plane (scheduler thread only) */
    gn_step_client *base_client;
    client_ent clients[MAX_CLIENTS];
    int n_clients;
    gn_sampler **samplers; /* one per sampling thread */
    float **scores;
    int n_samplers;
    gn_pool *pool; /* NULL: sample on the scheduler thread */
    dseq **draw_list;
    group *groups;
    int n_groups_max;
    dseq **active;
    int n_active;
    group *(*where)[N_MODELS_MAX]; /* (max_batch): each active sequence's group per model */
    djob *all;                     /* every live job (under mu) */
    djob *running; /* admitted jobs (linked) */
    djob *pending; /* accepted, not admitted yet (FIFO, linked) */
    /* submit queue */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    djob *in_head, *in_tail;
    int n_in;
    int quit;
    pthread_t thread;
    int thread_started;
    uint64_t next_seq;
    gn_dist_stats stats;
    gn_metric *m_steps, *m_step_s, *m_wait_s, *m_compute_s, *m_tokens; /* NULL without metrics */
    /* sharing with other coordinators (NULL: off) */
    gn_share *share;
    atomic_int load;        /* sequences of the jobs handed to the scheduler and not retired */
    atomic_int draining;    /* stop taking from the shared queue */
    double next_take;       /* scheduler: when to look at the shared queue again */
    double next_depth;      /* scheduler: when to refresh the queue-depth gauge */
    double next_observe;    /* scheduler: when to sample the base worker's KV use and swap reports */
    char swap_after[GN_CTL_STREAM_ID_MAX]; /* last swap report read */
    gn_step_client *hb_client; /* heartbeats to the base worker, apart from the steps */
    uint64_t hb_rid;           /* the heartbeat in flight, 0 = none */
    int parked_any;         /* parked a request: acknowledge the tokens that come back on the stream */
    double parked_drain_t;  /* last time the stream was read */
    double parked_last;     /* last time a token was parked or taken back */
    int queue_ready;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

gn_dist_params gn_dist_default_params(void) {
    gn_dist_params p;
    memset(&p, 0, sizeof p);
    p.redis_timeout_ms = 2000;
    p.step_timeout_ms = 30000;
    p.arm_wait_ms = 30000;
    p.capacity_wait_ms = 60000;
    p.max_batch = 64;
    return p;
}

/* ---- model info ------------------------------------------------------------------ */

/* The ARM at `path` (under mu_ctl): its tokenizer and chat template, loaded
 * once. Falls back to the base model's when the directory cannot be read here
 * (the registry's hash guarantees the same tokenizer; only the template could
 * differ). */
static const minfo *arm_minfo(gn_dist *d, const char *path) {
    for (int i = 0; i < d->n_minfo; i++)
        if (strcmp(d->arms[i].path, path) == 0) return &d->arms[i];
    if (d->n_minfo == MAX_MINFO) return &d->base;
    gn_err e = {0};
    minfo *m = &d->arms[d->n_minfo];
    if (gn_prompt_model_load(m, path, &e)) {
        gn_wire_log("warn", "coordinator", "event=arm_tokenizer_unreadable path=\"%s\" msg=\"%s\"", path, e.msg);
        return &d->base;
    }
    d->n_minfo++;
    return m;
}

/* The prompt tokens of model mi for job jb (m: its tokenizer/template). */
static int job_prompt(gn_dist *d, djob *jb, int mi, const minfo *m, gn_err *err) {
    int rc = gn_prompt_tokens(m, jb->j.req, &jb->prompt[mi], &jb->n_prompt[mi], err);
    if (rc) return rc;
    if (jb->n_prompt[mi] > d->ctx_limit)
        return gn_errf(err, GN_ERANGE, "prompt of %d tokens exceeds the context limit of %d", jb->n_prompt[mi],
                       d->ctx_limit);
    return 0;
}

/* ---- jobs --------------------------------------------------------------------------- */

static void job_free(int n_models, djob *jb) {
    for (int mi = 0; mi < n_models && mi < N_MODELS_MAX; mi++) gn_free(jb->prompt[mi]);
    for (int i = 0; i < GN_OAI_MAX_N; i++) {
        gn_free(jb->seqs[i].tokens);
        gn_gen_text_free(jb->seqs[i].text);
    }
    gn_free(jb);
}

/* Hands a finished job to its sink and frees it (scheduler thread). */
static void job_retire(gn_dist *d, djob *jb);

static void gauges(gn_dist *d) {
    if (!d->metrics) return;
    int run = 0, wait = 0;
    for (djob *j = d->running; j; j = j->next) run++;
    for (djob *j = d->pending; j; j = j->next) wait++;
    pthread_mutex_lock(&d->mu);
    wait += d->n_in;
    pthread_mutex_unlock(&d->mu);
    int parked = 0;
    for (djob *j = d->pending; j; j = j->next)
        for (int k = 0; k < j->n_arms; k++)
            if (j->arm_parked[k] && !j->arm_client[k]) {
                parked++;
                break;
            }
    gn_metric_set(d->metrics->requests_running, NULL, run);
    gn_metric_set(d->metrics->requests_waiting, NULL, wait);
    gn_metric_set(d->metrics->requests_waiting_for_arm, NULL, parked);
}

static int is_eos(const gn_dist *d, int32_t t) {
    for (int i = 0; i < d->n_eos; i++)
        if (d->eos[i] == t) return 1;
    return 0;
}

static void seq_log_done(djob *jb, dseq *s) {
    char arms[512] = "";
    size_t off = 0;
    for (int k = 0; k < jb->n_arms && off < sizeof arms; k++)
        off += (size_t)snprintf(arms + off, sizeof arms - off, "%s%s@%s", k ? "," : "", jb->j.arm_names[k],
                                jb->arm_ver[k]);
    gn_wire_log("info", "coordinator", "event=seq_done job=%llu seq=%llu index=%d tokens=%d finish=%s arms=%s",
                (unsigned long long)jb->j.id, (unsigned long long)s->id, s->index, s->n_tokens,
                s->finish ? s->finish : "error", arms[0] ? arms : "-");
}

/* Sends Release for s to every worker that holds it. */
static void seq_release(gn_dist *d, dseq *s) {
    djob *jb = s->jb;
    gn_err e = {0};
    uint64_t rid;
    if (s->held[0] > 0 || s->active) gn_step_client_release_send(d->base_client, "", 0, &s->id, 1, &rid, &e);
    for (int k = 0; k < jb->n_arms; k++)
        if (jb->arm_client[k] && jb->g.weights[k] != 0)
            gn_step_client_release_send(jb->arm_client[k], jb->j.arm_names[k], jb->arm_vnum[k], &s->id, 1, &rid,
                                        &e);
}

/* Ends sequence s with reason (NULL = failed). Flushes held-back text. */
static void seq_finish(gn_dist *d, dseq *s, const char *reason) {
    if (s->done) return;
    djob *jb = s->jb;
    if (reason && strcmp(reason, "abort") != 0) {
        const char *out;
        size_t n;
        int stopped;
        gn_err e = {0};
        if (gn_gen_text_finish(s->text, &out, &n, &stopped, &e) == 0) {
            if (stopped) reason = "stop";
            if (n) jb->sink->text(jb->sink, s->index, out, n, s->n_tokens);
        }
    }
    s->finish = reason;
    s->failed = reason == NULL;
    s->done = 1;
    if (s->active) seq_release(d, s);
    s->active = 0;
    jb->n_left--;
    seq_log_done(jb, s);
}

static void job_fail(gn_dist *d, djob *jb, int rc, const gn_err *e) {
    if (!jb->rc) {
        jb->rc = rc;
        jb->err = *e;
        jb->err.code = rc;
        gn_wire_log("warn", "coordinator", "event=job_failed job=%llu code=%d msg=\"%s\"",
                    (unsigned long long)jb->j.id, rc, e->msg);
    }
    for (int i = 0; i < jb->j.n; i++)
        if (!jb->seqs[i].done) seq_finish(d, &jb->seqs[i], jb->seqs[i].failed ? NULL : "abort");
}

static void job_done(gn_dist *d, djob *jb) {
    (void)d;
    gn_coord_result res;
    memset(&res, 0, sizeof res);
    gn_coord_choice_result ch[GN_OAI_MAX_N];
    res.rc = jb->rc;
    res.err = jb->err;
    res.queue_s = (jb->t_start > 0 ? jb->t_start : now_s()) - jb->t_submit;
    res.prompt_tokens = jb->n_prompt[0];
    for (int i = 0; i < jb->j.n; i++) {
        size_t len = 0;
        const char *t = jb->seqs[i].text ? gn_gen_text_str(jb->seqs[i].text, &len) : "";
        ch[i] = (gn_coord_choice_result){t, len, jb->seqs[i].finish ? jb->seqs[i].finish : "abort",
                                         jb->seqs[i].n_tokens};
    }
    res.n_choices = jb->j.n;
    res.choices = ch;
    jb->sink->done(jb->sink, &res);
}

static void job_retire(gn_dist *d, djob *jb) {
    atomic_fetch_sub(&d->load, jb->j.n);
    pthread_mutex_lock(&d->mu);
    if (jb->all_prev)
        jb->all_prev->all_next = jb->all_next;
    else
        d->all = jb->all_next;
    if (jb->all_next) jb->all_next->all_prev = jb->all_prev;
    pthread_mutex_unlock(&d->mu);
    job_done(d, jb);
    job_free(N_MODELS_MAX, jb);
}

/* ---- clients -------------------------------------------------------------------------- */

/* One DEALER per (endpoint, ARM version): a step client matches one reply at a
 * time, so two requests in flight to one worker need two sockets. */
static gn_step_client *get_client(gn_dist *d, const char *endpoint, const char *name, const char *ver,
                                  gn_err *err) {
    char key[sizeof d->clients[0].key];
    snprintf(key, sizeof key, "%s|%s@%s", endpoint, name, ver);
    for (int i = 0; i < d->n_clients; i++)
        if (strcmp(d->clients[i].key, key) == 0) return d->clients[i].c;
    if (d->n_clients == MAX_CLIENTS) {
        gn_errf(err, GN_ERANGE, "too many worker connections");
        return NULL;
    }
    gn_step_client *c = gn_step_client_create(endpoint, NULL, err);
    if (!c) return NULL;
    snprintf(d->clients[d->n_clients].key, sizeof key, "%s", key);
    d->clients[d->n_clients++].c = c;
    return c;
}

/* The endpoint client c reaches (the prefix of its key, *len bytes), or ""
 * for the base worker's own client. */
static const char *client_worker(const gn_dist *d, const gn_step_client *c, size_t *len) {
    for (int i = 0; i < d->n_clients; i++)
        if (d->clients[i].c == c) {
            *len = strcspn(d->clients[i].key, "|");
            return d->clients[i].key;
        }
    *len = 0;
    return "";
}

/* ---- admission ------------------------------------------------------------------------- */

/* Resolves the reward workers of jb's ARMs. 1: all resolved; 0: waiting;
 * negative: failed (err). */
static int job_resolve(gn_dist *d, djob *jb, gn_err *err) {
    int all = 1;
    for (int k = 0; k < jb->n_arms; k++) {
        if (jb->arm_client[k] || jb->g.weights[k] == 0) continue;
        gn_ctl_worker w;
        gn_err e = {0};
        /* pin to the version current NOW (the job may have waited since submit) */
        gn_ctl_arm_version v;
        if (gn_ctl_arm_get(d->ctl_sched, jb->j.arm_names[k], NULL, &v, &e) == 0 &&
            strcmp(v.version, jb->arm_ver[k]) != 0) {
            char *end = NULL;
            unsigned long vn = strtoul(v.version, &end, 10);
            if (end && !*end && vn > 0 && vn <= 0xffffffffUL) {
                snprintf(jb->arm_ver[k], sizeof jb->arm_ver[k], "%s", v.version);
                jb->arm_vnum[k] = (uint32_t)vn;
                jb->arm_parked[k] = 0;
            }
        }
        int rc = gn_ctl_worker_find_arm(d->ctl_sched, jb->j.arm_names[k], jb->arm_ver[k], &w, &e);
        if (rc == 0) {
            if (!(jb->arm_client[k] = get_client(d, w.endpoint, jb->j.arm_names[k], jb->arm_ver[k], err)))
                return err->code ? err->code : GN_EIO;
            if (jb->arm_parked[k])
                gn_wire_log("info", "coordinator", "event=arm_available job=%llu arm=%s@%s worker=%s",
                            (unsigned long long)jb->j.id, jb->j.arm_names[k], jb->arm_ver[k], w.id);
            continue;
        }
        all = 0;
        if (rc == GN_ENOTFOUND && !jb->arm_parked[k]) {
            char payload[256];
            int n = snprintf(payload, sizeof payload, "{\"coordinator\":\"%s\",\"job\":%llu,\"parked\":true}",
                             d->coord_id, (unsigned long long)jb->j.id);
            if (gn_ctl_wait_push(d->ctl_sched, jb->j.arm_names[k], jb->arm_ver[k], payload, (size_t)n, &e) == 0) {
                jb->arm_parked[k] = 1;
                d->parked_any = 1;
                d->parked_last = now_s();
                gn_wire_log("info", "coordinator", "event=arm_wait job=%llu arm=%s@%s", (unsigned long long)jb->j.id,
                            jb->j.arm_names[k], jb->arm_ver[k]);
            }
        }
        if (now_s() > jb->arm_deadline) {
            if (jb->arm_parked[k]) { /* take the parked token back (acknowledged from the stream later) */
                gn_ctl_wait_release(d->ctl_sched, jb->j.arm_names[k], jb->arm_ver[k], &e);
                d->parked_last = now_s();
            }
            return gn_errf(err, GN_EIO, "no reward worker holds ARM %s@%s (waited %.1f s)%s%s", jb->j.arm_names[k],
                           jb->arm_ver[k], d->p.arm_wait_ms / 1000.0, rc == GN_ENOTFOUND ? "" : ": ",
                           rc == GN_ENOTFOUND ? "" : e.msg);
        }
    }
    return all;
}

static int job_activate(gn_dist *d, djob *jb, gn_err *err) {
    for (int i = 0; i < jb->j.n; i++) {
        dseq *s = &jb->seqs[i];
        s->jb = jb;
        s->index = i;
        s->id = d->next_seq++;
        s->tokens = gn_malloc((size_t)(jb->cap > 0 ? jb->cap : 1) * sizeof *s->tokens);
        if (!s->tokens) return gn_errf(err, GN_ENOMEM, "out of memory");
        s->text = gn_gen_text_create(d->base.tok, (const char *const *)jb->j.req->stop, jb->j.req->n_stop, err);
        if (!s->text) return err->code;
        gn_rng_seed(&s->rng, jb->j.seed + (uint64_t)i);
    }
    jb->admitted = 1;
    jb->t_start = now_s();
    jb->n_left = jb->j.n;
    for (int i = 0; i < jb->j.n; i++) {
        dseq *s = &jb->seqs[i];
        if (jb->cap == 0) {
            seq_finish(d, s, "length");
            continue;
        }
        s->active = 1;
        d->active[d->n_active++] = s;
    }
    return 0;
}

/* ---- one step ------------------------------------------------------------------------ */

static group *group_for(gn_dist *d, int *n_groups, gn_step_client *c, const char *name, uint32_t ver) {
    for (int i = 0; i < *n_groups; i++)
        if (d->groups[i].c == c && d->groups[i].version == ver && strcmp(d->groups[i].name, name) == 0)
            return &d->groups[i];
    if (*n_groups == d->n_groups_max) return NULL;
    group *g = &d->groups[(*n_groups)++];
    g->c = c;
    g->worker = client_worker(d, c, &g->worker_len);
    g->name = name;
    g->version = ver;
    g->n = 0;
    g->failed = 0;
    g->compute_us = 0;
    memset(&g->err, 0, sizeof g->err);
    if (*name)
        snprintf(g->label, sizeof g->label, "%s@%u", name, ver);
    else
        snprintf(g->label, sizeof g->label, "base");
    return g;
}

static int group_add(group *g, dseq *s, int mi) {
    djob *jb = s->jb;
    uint32_t held = s->held[mi];
    uint32_t total = (uint32_t)jb->n_prompt[mi] + (uint32_t)s->n_tokens;
    int n = (int)(total - held);
    const int32_t *feed;
    int32_t *own = NULL;
    if (held == (uint32_t)jb->n_prompt[mi] + (uint32_t)s->n_tokens - 1 && s->n_tokens > 0) {
        feed = &s->tokens[s->n_tokens - 1];
    } else if (s->n_tokens == 0) {
        feed = jb->prompt[mi] + held;
    } else {
        own = gn_malloc((size_t)n * sizeof *own);
        if (!own) return GN_ENOMEM;
        for (int i = 0; i < n; i++) {
            uint32_t pos = held + (uint32_t)i;
            own[i] = pos < (uint32_t)jb->n_prompt[mi] ? jb->prompt[mi][pos] : s->tokens[pos - jb->n_prompt[mi]];
        }
        feed = own;
    }
    int k = g->n++;
    g->seqs[k] = s;
    g->mi[k] = mi;
    g->own[k] = own;
    g->ss[k] = (gn_step_seq){s->id, held, feed, n, 0, 0};
    return 0;
}

static void fail_seq(gn_dist *d, dseq *s, int rc, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void fail_seq(gn_dist *d, dseq *s, int rc, const char *fmt, ...) {
    gn_err e = {0};
    char msg[GN_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    gn_errf(&e, rc, "%s", msg);
    s->failed = 1;
    job_fail(d, s->jb, rc, &e);
}

/* A worker at capacity refused sequence s (a new sequence while all its
 * slots are taken, or its KV pool exhausted): s waits and retries, with
 * backoff, until the worker has room — for at most capacity_wait_ms. */
static void seq_capacity_wait(gn_dist *d, dseq *s, const char *label, const char *why) {
    double t = now_s();
    if (!s->wait_since) {
        s->wait_since = t;
        gn_wire_log("info", "coordinator", "event=capacity_wait job=%llu seq=%llu worker=%s msg=\"%s\"",
                    (unsigned long long)s->jb->j.id, (unsigned long long)s->id, label, why);
    }
    if (t - s->wait_since > d->p.capacity_wait_ms / 1000.0) {
        fail_seq(d, s, GN_EIO, "%s: at capacity for %.1f s: %s", label, t - s->wait_since, why);
        return;
    }
    double backoff = 0.02 + 0.25 * (t - s->wait_since);
    s->wait_until = t + (backoff < 0.5 ? backoff : 0.5);
    s->repin = 1;
}

/* A superseded ARM version refused the prefill of a job's sequences (a
 * promotion raced their start): re-pin that ARM to the current version and
 * redo the step for the job (the other models rewind by one token). */
static void job_repin(djob *jb, int k, const char *label) {
    if (jb->arm_client[k]) {
        gn_wire_log("info", "coordinator", "event=arm_repin job=%llu from=%s", (unsigned long long)jb->j.id, label);
        jb->arm_client[k] = NULL;
        jb->repins++;
    }
    jb->need_resolve = 1;
    jb->arm_deadline = now_s() + 30.0;
    for (int i = 0; i < jb->j.n; i++) jb->seqs[i].repin = 1;
}

/* Reads a group's reply (kept in g->rep, rows in g->rowp) and the sequences'
 * row indices. */
static void group_gather(gn_dist *d, group *g, double deadline) {
    int left = (int)((deadline - now_s()) * 1000.0);
    if (left < 1) left = 1;
    gn_wire_env *rep = NULL;
    int rc = gn_step_client_recv(g->c, g->rid, left, &rep, &g->err);
    if (rc) {
        g->failed = rc;
        return;
    }
    if (rep->body_case == GENARM__V1__ENVELOPE__BODY_ERROR) {
        g->failed = GN_EIO;
        gn_errf(&g->err, GN_EIO, "%s: %s", gn_wire_code_name(rep->error->code),
                rep->error->message ? rep->error->message : "");
        gn_wire_env_free(rep);
        return;
    }
    if (rep->body_case != GENARM__V1__ENVELOPE__BODY_STEP_RESULT) {
        g->failed = GN_EFORMAT;
        gn_errf(&g->err, GN_EFORMAT, "unexpected reply");
        gn_wire_env_free(rep);
        return;
    }
    const gn_wire_step_resp *r = rep->step_result;
    g->compute_us = r->compute_us;
    uint64_t rows = 0, cols = 0;
    rc = gn_step_resp_logprobs_view(r, g->rows, (size_t)g->n * (size_t)d->n_vocab, &g->rowp, &rows, &cols,
                                    &g->err);
    if (!rc && cols != (uint64_t)d->n_vocab)
        rc = gn_errf(&g->err, GN_EMISMATCH, "rows of %llu columns, the base vocabulary has %d",
                     (unsigned long long)cols, d->n_vocab);
    if (rc) {
        g->failed = rc;
        gn_wire_env_free(rep);
        return;
    }
    for (size_t i = 0; i < r->n_results; i++) {
        const Genarm__V1__SeqResult *sr = r->results[i];
        for (int k = 0; k < g->n; k++) {
            dseq *s = g->seqs[k];
            if (s->id != sr->seq_id) continue;
            if (sr->n_rows != 1 || sr->row_offset >= rows) break;
            if (*g->name && sr->model_version != g->version) {
                fail_seq(d, s, GN_EMISMATCH, "%s: served by version %u, the sequence is pinned to %u", g->label,
                         sr->model_version, g->version);
                break;
            }
            s->row[g->mi[k]] = (int)sr->row_offset;
            s->held[g->mi[k]] = sr->seq_len;
            break;
        }
    }
    for (size_t i = 0; i < r->n_errors; i++) {
        const Genarm__V1__Error *er = r->errors[i];
        if (!er->has_seq) continue;
        for (int k = 0; k < g->n; k++)
            if (g->seqs[k]->id == er->seq_id && !g->seqs[k]->done) {
                dseq *s = g->seqs[k];
                if (*g->name && er->code == GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL && s->n_tokens == 0 &&
                    s->jb->repins < 3) {
                    job_repin(s->jb, g->mi[k] - 1, g->label);
                    break;
                }
                if (er->code == GENARM__V1__ERROR_CODE__ERROR_CAPACITY) {
                    seq_capacity_wait(d, s, g->label, er->message ? er->message : "");
                    break;
                }
                fail_seq(d, g->seqs[k], GN_EIO, "%s: %s", g->label, er->message ? er->message : "");
                break;
            }
    }
    g->rep = rep; /* the rows may point into it: freed after the draws */
}

/* Combines and draws sequence s's next token into s->draw (or s->draw_rc
 * with s->draw_err). Touches only s and the per-thread scratch (sampler,
 * score row), so sequences are drawn in parallel. */
static void draw_seq(gn_dist *d, dseq *s, group **mg, gn_sampler *smp, float *score) {
    djob *jb = s->jb;
    s->draw_rc = 0;
    if (s->row[0] < 0) {
        s->draw_rc = gn_errf(&s->draw_err, GN_EIO, "the base worker returned no row for the sequence");
        return;
    }
    const float *base = mg[0]->rowp + (size_t)s->row[0] * (size_t)d->n_vocab;
    const float *arm[GN_OAI_MAX_ARMS] = {0};
    for (int k = 0; k < jb->n_arms; k++) {
        if (jb->g.weights[k] == 0) continue;
        if (s->row[1 + k] < 0) {
            s->draw_rc = gn_errf(&s->draw_err, GN_EIO, "reward worker for %s returned no row", jb->j.arm_names[k]);
            return;
        }
        arm[k] = mg[1 + k]->rowp + (size_t)s->row[1 + k] * (size_t)d->n_vocab;
    }
    gn_guidance_combine(&jb->g, base, arm, score, d->n_vocab);
    int tok = gn_sampler_sample(smp, &jb->sp, &s->rng, score, d->n_vocab, &s->draw_err);
    if (tok < 0)
        s->draw_rc = tok;
    else
        s->draw = tok;
}

typedef struct draw_ctx {
    gn_dist *d;
    dseq **seqs;
    int n;
} draw_ctx;

static void draw_task(void *ctx, int task, int thread) {
    draw_ctx *c = ctx;
    gn_dist *d = c->d;
    int nt = d->n_samplers;
    for (int i = task; i < c->n; i += nt) {
        dseq *s = c->seqs[i];
        draw_seq(d, s, d->where[s->slot], d->samplers[thread], d->scores[thread]);
    }
}

/* Appends the drawn token: EOS, text, stop strings, length (scheduler thread). */
static void apply_seq(gn_dist *d, dseq *s) {
    djob *jb = s->jb;
    if (s->draw_rc) {
        s->failed = 1;
        job_fail(d, jb, s->draw_rc, &s->draw_err);
        return;
    }
    int tok = s->draw;
    s->tokens[s->n_tokens++] = tok;
    pthread_mutex_lock(&d->mu);
    d->stats.tokens++;
    pthread_mutex_unlock(&d->mu);
    if (d->m_tokens) gn_metric_inc(d->m_tokens, NULL, 1);
    if (!jb->j.req->ignore_eos && is_eos(d, tok)) {
        seq_finish(d, s, "stop");
        return;
    }
    const char *out;
    size_t len;
    int stopped;
    gn_err e = {0};
    if (gn_gen_text_push(s->text, tok, &out, &len, &stopped, &e)) {
        s->failed = 1;
        job_fail(d, jb, e.code ? e.code : GN_EINVAL, &e);
        return;
    }
    if (len) jb->sink->text(jb->sink, s->index, out, len, s->n_tokens);
    if (stopped)
        seq_finish(d, s, "stop");
    else if (s->n_tokens >= jb->cap)
        seq_finish(d, s, "length");
}

/* One step; returns the number of sequences it sent to the workers. */
static int run_step(gn_dist *d) {
    double t0 = now_s();
    int ng = 0, n_stepped = 0;
    /* which group each (sequence, model) went to */
    group *(*where)[N_MODELS_MAX] = d->where;
    group *bg = group_for(d, &ng, d->base_client, "", 0);
    for (int a = 0; a < d->n_active; a++) {
        dseq *s = d->active[a];
        djob *jb = s->jb;
        for (int mi = 0; mi < N_MODELS_MAX; mi++) {
            s->row[mi] = -1;
            where[a][mi] = NULL;
        }
        if (jb->need_resolve || s->wait_until > t0) {
            s->repin = 1; /* not stepped, nothing to rewind */
            continue;
        }
        n_stepped++;
        if (group_add(bg, s, 0)) {
            fail_seq(d, s, GN_ENOMEM, "out of memory");
            continue;
        }
        where[a][0] = bg;
        for (int k = 0; k < jb->n_arms; k++) {
            if (jb->g.weights[k] == 0) continue;
            group *g = group_for(d, &ng, jb->arm_client[k], jb->j.arm_names[k], jb->arm_vnum[k]);
            if (!g || group_add(g, s, 1 + k)) {
                fail_seq(d, s, GN_ENOMEM, "too many ARM groups in one step");
                break;
            }
            where[a][1 + k] = g;
        }
    }
    /* fan out */
    for (int i = 0; i < ng; i++) {
        group *g = &d->groups[i];
        if (g->n == 0) continue;
        int rc = gn_step_client_step_send(g->c, g->name, g->version, g->ss, g->n, GN_F32, &g->rid, &g->err);
        if (rc) g->failed = rc;
    }
    double t_sent = now_s();
    double deadline = t_sent + d->p.step_timeout_ms / 1000.0;
    for (int i = 0; i < ng; i++) {
        group *g = &d->groups[i];
        if (g->n == 0 || g->failed) continue;
        double tg = now_s();
        group_gather(d, g, deadline);
        if (d->metrics) gn_metric_observe(d->metrics->step_exchange, *g->name ? "reward" : "base", now_s() - tg);
    }
    double t_recv = now_s();
    for (int i = 0; i < ng; i++) {
        group *g = &d->groups[i];
        for (int k = 0; k < g->n; k++) {
            gn_free(g->own[k]);
            g->own[k] = NULL;
        }
        if (!g->failed) continue;
        gn_wire_log("warn", "coordinator", "event=worker_failed model=%s code=%d msg=\"%s\" seqs=%d", g->label,
                    g->failed, g->err.msg, g->n);
        for (int k = 0; k < g->n; k++)
            if (!g->seqs[k]->done) {
                g->seqs[k]->failed = 1;
                gn_err e = g->err;
                gn_err_prefix(&e, "%s worker: ", g->label);
                job_fail(d, g->seqs[k]->jb, GN_EIO, &e);
            }
    }
    int n_draw = 0;
    for (int a = 0; a < d->n_active; a++) {
        dseq *s = d->active[a];
        if (s->done) continue;
        if (s->repin) { /* no token this step: each model recomputes its last row next time */
            s->repin = 0;
            for (int mi = 0; mi < N_MODELS_MAX; mi++) {
                uint32_t total = (uint32_t)s->jb->n_prompt[mi] + (uint32_t)s->n_tokens;
                if (s->held[mi] > 0 && s->held[mi] > total - 1) s->held[mi] = total - 1;
            }
            for (int k = 0; k < s->jb->n_arms; k++)
                if (!s->jb->arm_client[k]) s->held[1 + k] = 0;
            continue;
        }
        s->slot = a;
        s->wait_since = 0;
        d->draw_list[n_draw++] = s;
    }
    draw_ctx dc = {d, d->draw_list, n_draw};
    if (d->pool && n_draw >= 4)
        gn_pool_run(d->pool, draw_task, &dc, d->n_samplers);
    else
        for (int i = 0; i < n_draw; i++) draw_seq(d, d->draw_list[i], where[d->draw_list[i]->slot], d->samplers[0],
                                                  d->scores[0]);
    for (int i = 0; i < ng; i++) {
        gn_wire_env_free(d->groups[i].rep);
        d->groups[i].rep = NULL;
    }
    for (int i = 0; i < n_draw; i++)
        if (!d->draw_list[i]->done) apply_seq(d, d->draw_list[i]);
    double t1 = now_s();
    /* model compute of the step: the slowest worker's forward pass (the
     * workers run in parallel; groups sharing one worker run in turn) */
    double compute = 0;
    for (int i = 0; i < ng; i++) {
        const group *g = &d->groups[i];
        double c = 0;
        for (int j = 0; j < ng; j++) {
            const group *h = &d->groups[j];
            if (h->c == g->c || (g->worker_len && h->worker_len == g->worker_len &&
                                 !memcmp(h->worker, g->worker, g->worker_len)))
                c += h->compute_us * 1e-6;
        }
        if (c > compute) compute = c;
    }
    pthread_mutex_lock(&d->mu);
    d->stats.steps++;
    d->stats.step_s += t1 - t0;
    d->stats.wait_s += t_recv - t_sent;
    d->stats.compute_s += compute;
    pthread_mutex_unlock(&d->mu);
    if (d->m_steps) {
        gn_metric_inc(d->m_steps, NULL, 1);
        gn_metric_inc(d->m_step_s, NULL, t1 - t0);
        gn_metric_inc(d->m_wait_s, NULL, t_recv - t_sent);
        gn_metric_inc(d->m_compute_s, NULL, compute);
    }
    return n_stepped;
}

/* ---- the scheduler thread ----------------------------------------------------------- */

static void compact_active(gn_dist *d) {
    int k = 0;
    for (int a = 0; a < d->n_active; a++)
        if (!d->active[a]->done) d->active[k++] = d->active[a];
    d->n_active = k;
}

static void reap_jobs(gn_dist *d) {
    for (djob **pp = &d->running; *pp;) {
        djob *jb = *pp;
        if (jb->n_left > 0) {
            pp = &jb->next;
            continue;
        }
        *pp = jb->next;
        job_retire(d, jb);
    }
}

static void admit(gn_dist *d) {
    for (djob **pp = &d->pending; *pp;) {
        djob *jb = *pp;
        gn_err e = {0};
        int r = 0;
        if (atomic_load(&jb->cancelled) || d->quit) {
            r = -1;
            e.code = 0;
        } else if (d->n_active + jb->j.n > d->p.max_batch) {
            break; /* FIFO: wait for room */
        } else {
            r = job_resolve(d, jb, &e);
            if (r == 0) {
                pp = &jb->next;
                continue;
            }
            if (r == 1 && (r = job_activate(d, jb, &e)) == 0) {
                *pp = jb->next;
                jb->next = d->running;
                d->running = jb;
                continue;
            }
        }
        /* cancelled or failed before it ran */
        *pp = jb->next;
        jb->n_left = 0;
        if (r < 0 && e.code) {
            jb->rc = e.code;
            jb->err = e;
            gn_wire_log("warn", "coordinator", "event=job_failed job=%llu code=%d msg=\"%s\"",
                        (unsigned long long)jb->j.id, e.code, e.msg);
        }
        for (int i = 0; i < jb->j.n; i++) {
            jb->seqs[i].finish = "abort";
            jb->seqs[i].done = 1;
        }
        job_retire(d, jb);
    }
}

/* A parked request comes back onto the request stream (genarm:requests) when
 * a reward worker has loaded its ARM (gn_ctl_wait_release). This coordinator
 * polls the worker registry instead, so those entries are only tokens:
 * acknowledge them so the stream (and its depth metric) does not grow. */
static void drain_parked_tokens(gn_dist *d) {
    double t = now_s();
    if (!d->parked_any || t - d->parked_drain_t < 0.5) return;
    d->parked_drain_t = t;
    if (!d->parked_last) d->parked_last = t;
    gn_err e = {0};
    if (!d->queue_ready) {
        if (gn_ctl_queue_init(d->ctl_sched, &e)) return;
        d->queue_ready = 1;
    }
    int got = 0;
    for (int i = 0; i < 64; i++) {
        gn_ctl_msg m;
        memset(&m, 0, sizeof m);
        int r = gn_ctl_queue_read(d->ctl_sched, d->coord_id, 0, &m, &e);
        if (r != 1) break;
        got++;
        if (m.payload && strstr(m.payload, "\"parked\":true"))
            gn_ctl_queue_ack(d->ctl_sched, m.id, &e);
        else
            gn_wire_log("warn", "coordinator", "event=queue_entry_ignored id=%s", m.id);
        gn_ctl_msg_clear(&m);
    }
    if (got) return;
    for (djob *j = d->pending; j; j = j->next)
        for (int k = 0; k < j->n_arms; k++)
            if (j->arm_parked[k]) return;
    if (t - d->parked_last > 5.0) d->parked_any = 0; /* nothing parked, nothing came back for a while */
}

static int job_prepare(gn_dist *d, const gn_coord_job *j, gn_coord_sink *sink, djob **out, gn_err *err);
static int job_enqueue(gn_dist *d, djob *jb, gn_err *err);
static void dist_cancel(void *impl, uint64_t id);

/* Ends a taken job that cannot run here: done() with the error. */
static void taken_fail(const gn_share_taken *tk, int rc, const gn_err *e) {
    gn_wire_log("warn", "coordinator", "event=job_failed job=%llu code=%d msg=\"%s\"",
                (unsigned long long)tk->job->id, rc, e->msg);
    gn_coord_sink_end(tk->sink, tk->job->n, rc, e, 0);
}

/* Takes requests from the shared queue while this coordinator has room
 * (scheduler thread), and keeps the taken ones' origins informed. */
static void take_shared(gn_dist *d, int quit) {
    if (!d->share) return;
    gn_share_poll(d->share, dist_cancel, d);
    double t = now_s();
    if (t >= d->next_depth) {
        d->next_depth = t + 1.0;
        gn_share_queue_depth(d->share);
    }
    if (quit || atomic_load(&d->draining) || t < d->next_take) return;
    while (atomic_load(&d->load) < d->p.max_batch) {
        gn_share_taken tk;
        gn_err e = {0};
        int r = gn_share_take(d->share, &tk, &e);
        if (r <= 0) {
            if (r < 0) gn_wire_log("warn", "coordinator", "event=queue_read_failed msg=\"%s\"", e.msg);
            d->next_take = now_s() + (r < 0 ? 1.0 : 0.05);
            return;
        }
        djob *jb = NULL;
        int rc = job_prepare(d, tk.job, tk.sink, &jb, &e);
        if (!rc && (rc = job_enqueue(d, jb, &e))) job_free(N_MODELS_MAX, jb);
        if (rc) taken_fail(&tk, rc, &e);
    }
}

/* Once a second (scheduler thread, between steps): the base worker's KV-cache
 * use (its heartbeat) and the reward workers' swap reports, for /metrics. */
static void observe_workers(gn_dist *d) {
    double t = now_s();
    if (!d->metrics || t < d->next_observe) return;
    d->next_observe = t + 1.0;
    /* the reply to last second's heartbeat (never waited for: the worker may be busy) */
    gn_err e = {0};
    gn_wire_env *rep = NULL;
    if (d->hb_rid && gn_step_client_recv(d->hb_client, d->hb_rid, 0, &rep, &e) == 0 &&
        rep->body_case == GENARM__V1__ENVELOPE__BODY_HEARTBEAT && rep->heartbeat->kv_total_blocks > 0)
        gn_metric_set(d->metrics->kv_cache_usage, NULL,
                      (double)rep->heartbeat->kv_used_blocks / (double)rep->heartbeat->kv_total_blocks);
    gn_wire_env_free(rep);
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    Genarm__V1__Heartbeat hb = GENARM__V1__HEARTBEAT__INIT;
    env.body_case = GENARM__V1__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    if (gn_step_client_send(d->hb_client, &env, &d->hb_rid, &e)) d->hb_rid = 0;
    for (int i = 0; i < 64; i++) {
        gn_ctl_swap_report r;
        int rc = gn_ctl_swap_report_next(d->ctl_sched, d->swap_after, &r, &e);
        if (r.id[0]) snprintf(d->swap_after, sizeof d->swap_after, "%s", r.id); /* a bad one is skipped */
        if (rc == 1) gn_metric_observe(d->metrics->arm_swap, NULL, (double)r.swap_ms / 1000.0);
        if (rc <= 0 && !(rc < 0 && r.id[0])) break;
    }
}

static void *scheduler(void *arg) {
    gn_dist *d = arg;
    for (;;) {
        pthread_mutex_lock(&d->mu);
        int sharing = d->share != NULL; /* look at the shared queue now and then */
        while (!d->in_head && !d->quit && d->n_active == 0 && !d->pending && !d->parked_any && !sharing)
            pthread_cond_wait(&d->cv, &d->mu);
        if (!d->in_head && !d->quit && d->n_active == 0) { /* idle, jobs waiting for ARMs, or tokens to collect */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += (d->pending || sharing ? 50 : 250) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&d->cv, &d->mu, &ts);
        }
        djob *in = d->in_head;
        d->in_head = d->in_tail = NULL;
        d->n_in = 0;
        int quit = d->quit;
        pthread_mutex_unlock(&d->mu);
        /* append to pending, FIFO */
        djob **tail = &d->pending;
        while (*tail) tail = &(*tail)->next;
        *tail = in;
        if (quit)
            for (djob *j = d->running; j; j = j->next) atomic_store(&j->cancelled, 1);
        for (djob *j = d->running; j; j = j->next)
            if (atomic_load(&j->cancelled))
                for (int i = 0; i < j->j.n; i++)
                    if (!j->seqs[i].done) seq_finish(d, &j->seqs[i], "abort");
        take_shared(d, quit);
        admit(d);
        int stepping = 0;
        for (djob *j = d->running; j; j = j->next) {
            if (j->need_resolve && j->n_left > 0) {
                gn_err e = {0};
                int r = job_resolve(d, j, &e);
                if (r == 1) j->need_resolve = 0;
                if (r < 0) job_fail(d, j, r, &e);
            }
            if (!j->need_resolve) stepping += j->n_left;
        }
        compact_active(d);
        if (d->n_active > 0 && stepping > 0) {
            if (run_step(d) == 0) usleep(5000); /* every sequence waits for a worker with room */
        } else if (d->n_active > 0)
            usleep(20000); /* only jobs waiting for an ARM version */
        compact_active(d);
        reap_jobs(d);
        gauges(d);
        observe_workers(d);
        if (!d->share) drain_parked_tokens(d); /* else gn_share_take acknowledges them */
        if (quit && !d->running && !d->pending) break;
    }
    return NULL;
}

/* ---- the interface -------------------------------------------------------------------- */

/* Checks job j and prepares it for this scheduler: every model's prompt
 * tokenized, every ARM pinned to its current version. */
static int job_prepare(gn_dist *d, const gn_coord_job *j, gn_coord_sink *sink, djob **out, gn_err *err) {
    *out = NULL;
    if (j->n < 1 || j->n > GN_OAI_MAX_N || j->max_tokens < 1)
        return gn_errf(err, GN_EINVAL, "n must be in 1..%d and max_tokens >= 1", GN_OAI_MAX_N);
    if (j->n > d->p.max_batch)
        return gn_errf(err, GN_EINVAL, "n = %d exceeds the batch limit of %d", j->n, d->p.max_batch);
    if (j->n_arms < 0 || j->n_arms > GN_OAI_MAX_ARMS) return gn_errf(err, GN_EINVAL, "too many reward models");
    djob *jb = gn_calloc(1, sizeof *jb);
    if (!jb) return gn_errf(err, GN_ENOMEM, "out of memory");
    jb->j = *j;
    jb->sink = sink;
    jb->t_submit = now_s();
    atomic_init(&jb->cancelled, 0);
    jb->n_arms = j->n_arms;
    jb->g = gn_guidance_default();
    jb->g.n_arms = j->n_arms;
    jb->g.beta = (float)j->beta;
    for (int k = 0; k < j->n_arms; k++) jb->g.weights[k] = (float)j->weights[k];
    int rc = gn_guidance_validate(&jb->g, err);
    jb->sp = gn_sampler_default_params();
    jb->sp.temperature = (float)j->temperature;
    jb->sp.top_p = (float)j->top_p;
    jb->sp.top_k = j->top_k;
    jb->sp.min_p = (float)j->min_p;
    if (!rc) rc = gn_sampler_validate_params(&jb->sp, err);
    if (rc) {
        job_free(0, jb);
        return GN_EINVAL;
    }
    if ((rc = job_prompt(d, jb, 0, &d->base, err))) goto fail;
    int room = d->ctx_limit - jb->n_prompt[0];
    /* pin every ARM to the registry's current version, now */
    pthread_mutex_lock(&d->mu_ctl);
    for (int k = 0; k < j->n_arms && !rc; k++) {
        gn_ctl_arm_version v;
        rc = gn_ctl_arm_get(d->ctl_submit, j->arm_names[k], NULL, &v, err);
        if (rc == GN_ENOTFOUND) {
            gn_errf(err, GN_ENOTFOUND, "reward model '%s' is not registered", j->arm_names[k]);
            break;
        }
        if (rc) break;
        char *end = NULL;
        unsigned long vn = strtoul(v.version, &end, 10);
        if (!end || *end || vn == 0 || vn > 0xffffffffUL) {
            rc = gn_errf(err, GN_EINVAL, "ARM %s: version '%s' is not a number >= 1", j->arm_names[k], v.version);
            break;
        }
        snprintf(jb->arm_ver[k], sizeof jb->arm_ver[k], "%s", v.version);
        jb->arm_vnum[k] = (uint32_t)vn;
        const minfo *m = arm_minfo(d, v.path);
        if ((rc = job_prompt(d, jb, 1 + k, m, err))) break;
        if (d->ctx_limit - jb->n_prompt[1 + k] < room) room = d->ctx_limit - jb->n_prompt[1 + k];
    }
    pthread_mutex_unlock(&d->mu_ctl);
    if (rc) goto fail;
    jb->cap = j->max_tokens < room + 1 ? j->max_tokens : room + 1;
    jb->arm_deadline = now_s() + d->p.arm_wait_ms / 1000.0;
    *out = jb;
    return 0;
fail:
    job_free(N_MODELS_MAX, jb);
    return rc;
}

/* Hands a prepared job to the scheduler (any thread). On failure the caller
 * still owns jb. */
static int job_enqueue(gn_dist *d, djob *jb, gn_err *err) {
    pthread_mutex_lock(&d->mu);
    if (d->quit) {
        pthread_mutex_unlock(&d->mu);
        return gn_errf(err, GN_EIO, "the backend is shutting down");
    }
    atomic_fetch_add(&d->load, jb->j.n);
    if (d->in_tail)
        d->in_tail->next = jb;
    else
        d->in_head = jb;
    d->in_tail = jb;
    d->n_in++;
    jb->all_next = d->all;
    if (d->all) d->all->all_prev = jb;
    d->all = jb;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
    return 0;
}

static int dist_submit(void *impl, const gn_coord_job *j, gn_coord_sink *sink, gn_err *err) {
    gn_dist *d = impl;
    djob *jb;
    int rc = job_prepare(d, j, sink, &jb, err);
    if (rc) return rc;
    if (d->share && j->body && !atomic_load(&d->draining) && atomic_load(&d->load) + j->n > d->p.max_batch) {
        gn_err e = {0};
        if (gn_share_export(d->share, j, sink, &e) == 0) {
            job_free(N_MODELS_MAX, jb);
            return 0;
        }
        gn_wire_log("warn", "coordinator", "event=queue_unavailable job=%llu msg=\"%s\" action=run_here",
                    (unsigned long long)j->id, e.msg);
    }
    if ((rc = job_enqueue(d, jb, err))) job_free(N_MODELS_MAX, jb);
    return rc;
}

static void dist_cancel(void *impl, uint64_t id) {
    gn_dist *d = impl;
    if (d->share && gn_share_cancel(d->share, id)) return;
    pthread_mutex_lock(&d->mu);
    for (djob *jb = d->all; jb; jb = jb->all_next)
        if (jb->j.id == id) atomic_store(&jb->cancelled, 1);
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

static int dist_ready(void *impl) {
    gn_dist *d = impl;
    pthread_mutex_lock(&d->mu);
    int ok = !d->quit;
    pthread_mutex_unlock(&d->mu);
    return ok;
}

gn_coord_backend gn_dist_backend(gn_dist *d) {
    gn_coord_backend b = {d, d->model_id, dist_submit, dist_cancel, dist_ready};
    return b;
}

void gn_dist_drain(gn_dist *d) {
    atomic_store(&d->draining, 1);
}

int gn_dist_peer_jobs(gn_dist *d) {
    return d->share ? gn_share_remote_running(d->share) : 0;
}

void gn_dist_get_stats(gn_dist *d, gn_dist_stats *out) {
    pthread_mutex_lock(&d->mu);
    *out = d->stats;
    pthread_mutex_unlock(&d->mu);
}

/* ---- lifecycle ----------------------------------------------------------------------- */

gn_dist *gn_dist_create(const gn_dist_params *p, gn_err *err) {
    if (!p || !p->base_endpoint || !p->base_model_dir || !p->redis_host || !*p->redis_host || p->redis_port <= 0 ||
        p->redis_port > 65535) {
        gn_errf(err, GN_EINVAL, "dist backend: base_endpoint, base_model_dir and redis required");
        return NULL;
    }
    gn_dist *d = gn_calloc(1, sizeof *d);
    if (!d) {
        gn_errf(err, GN_ENOMEM, "dist backend: out of memory");
        return NULL;
    }
    pthread_mutex_init(&d->mu, NULL);
    pthread_mutex_init(&d->mu_ctl, NULL);
    pthread_cond_init(&d->cv, NULL);
    d->p = *p;
    gn_dist_params def = gn_dist_default_params();
    if (d->p.redis_timeout_ms <= 0) d->p.redis_timeout_ms = def.redis_timeout_ms;
    if (d->p.step_timeout_ms <= 0) d->p.step_timeout_ms = def.step_timeout_ms;
    if (d->p.arm_wait_ms <= 0) d->p.arm_wait_ms = def.arm_wait_ms;
    if (d->p.capacity_wait_ms <= 0) d->p.capacity_wait_ms = def.capacity_wait_ms;
    if (d->p.max_batch <= 0) d->p.max_batch = def.max_batch;
    if (d->p.max_batch > 256) d->p.max_batch = 256;
    d->metrics = p->metrics;
    if (p->coordinator_id) {
        snprintf(d->coord_id, sizeof d->coord_id, "%s", p->coordinator_id);
    } else { /* unique among coordinators sharing one queue */
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = 0;
        for (char *c = host; *c; c++)
            if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-'))
                *c = '-';
        snprintf(d->coord_id, sizeof d->coord_id, "coord-%.40s-%d", host, (int)getpid());
    }
    atomic_init(&d->load, 0);
    { /* swap reports from now on */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        snprintf(d->swap_after, sizeof d->swap_after, "%lld-0",
                 (long long)ts.tv_sec * 1000 + (long long)(ts.tv_nsec / 1000000));
    }
    atomic_init(&d->draining, 0);
    d->next_seq = ((uint64_t)getpid() << 40) ^ ((uint64_t)time(NULL) << 20) ^ 1;
    if (p->model_id) {
        snprintf(d->model_id, sizeof d->model_id, "%s", p->model_id);
    } else {
        const char *b = strrchr(p->base_model_dir, '/');
        snprintf(d->model_id, sizeof d->model_id, "%s", b && b[1] ? b + 1 : p->base_model_dir);
    }
    if (gn_prompt_model_load(&d->base, p->base_model_dir, err)) {
        gn_err_prefix(err, "base model %s: ", p->base_model_dir);
        goto fail;
    }
    gn_model_config cfg;
    if (gn_hf_config_load(p->base_model_dir, &cfg, err)) goto fail;
    d->n_vocab = cfg.n_vocab;
    d->ctx_limit = 4096;
    if (cfg.max_pos > 0 && cfg.max_pos < d->ctx_limit) d->ctx_limit = cfg.max_pos;
    for (int i = 0; i < cfg.n_eos && d->n_eos < MAX_EOS_IDS; i++)
        if (cfg.eos_token_ids[i] >= 0 && cfg.eos_token_ids[i] < d->n_vocab) d->eos[d->n_eos++] = cfg.eos_token_ids[i];
    int te = gn_tok_eos(d->base.tok);
    if (te >= 0 && te < d->n_vocab && !is_eos(d, te) && d->n_eos < MAX_EOS_IDS) d->eos[d->n_eos++] = te;
    if (!(d->ctl_submit = gn_ctl_connect(p->redis_host, p->redis_port, d->p.redis_timeout_ms, err))) goto fail;
    if (!(d->ctl_sched = gn_ctl_connect(p->redis_host, p->redis_port, d->p.redis_timeout_ms, err))) goto fail;
    if (!(d->base_client = gn_step_client_create(p->base_endpoint, NULL, err))) goto fail;
    if (d->metrics && !(d->hb_client = gn_step_client_create(p->base_endpoint, NULL, err))) goto fail;
    if (!p->no_share) {
        gn_share_params sp = gn_share_default_params();
        sp.coordinator_id = d->coord_id;
        if (p->peer_bind) sp.bind = p->peer_bind;
        sp.advertise = p->peer_advertise;
        sp.redis_host = p->redis_host;
        sp.redis_port = p->redis_port;
        sp.redis_timeout_ms = d->p.redis_timeout_ms;
        if (p->peer_timeout_ms > 0) sp.peer_timeout_ms = p->peer_timeout_ms;
        sp.metrics = p->metrics;
        if (!(d->share = gn_share_create(&sp, err))) goto fail;
    }
    int mb = d->p.max_batch;
    d->n_samplers = d->p.sample_threads > 1 ? d->p.sample_threads : 1;
    if (d->n_samplers > 64) d->n_samplers = 64;
    d->samplers = gn_calloc((size_t)d->n_samplers, sizeof *d->samplers);
    d->scores = gn_calloc((size_t)d->n_samplers, sizeof *d->scores);
    d->draw_list = gn_calloc((size_t)mb, sizeof *d->draw_list);
    if (!d->samplers || !d->scores || !d->draw_list) goto oom;
    for (int i = 0; i < d->n_samplers; i++) {
        if (!(d->samplers[i] = gn_sampler_create(d->n_vocab, err))) goto fail;
        if (!(d->scores[i] = gn_malloc((size_t)d->n_vocab * sizeof(float)))) goto oom;
    }
    if (d->n_samplers > 1 && !(d->pool = gn_pool_create(d->n_samplers))) goto oom;
    d->n_groups_max = 1 + GN_OAI_MAX_ARMS * 4;
    d->active = gn_calloc((size_t)mb, sizeof *d->active);
    d->where = gn_calloc((size_t)mb, sizeof *d->where);
    d->groups = gn_calloc((size_t)d->n_groups_max, sizeof *d->groups);
    if (!d->active || !d->where || !d->groups) goto oom;
    for (int i = 0; i < d->n_groups_max; i++) {
        group *g = &d->groups[i];
        g->seqs = gn_calloc((size_t)mb, sizeof *g->seqs);
        g->mi = gn_calloc((size_t)mb, sizeof *g->mi);
        g->ss = gn_calloc((size_t)mb, sizeof *g->ss);
        g->own = gn_calloc((size_t)mb, sizeof *g->own);
        g->rows = gn_malloc((size_t)mb * (size_t)d->n_vocab * sizeof(float));
        if (!g->seqs || !g->mi || !g->ss || !g->own || !g->rows) goto oom;
    }
    if (d->metrics) {
        gn_metrics *reg = d->metrics->reg;
        if (!(d->m_steps = gn_metrics_add(reg, GN_METRIC_COUNTER, "genarm:coordinator_steps_total",
                                          "Batched decoding steps run by the scheduler.", NULL, NULL, 0, err)) ||
            !(d->m_step_s = gn_metrics_add(reg, GN_METRIC_COUNTER, "genarm:coordinator_step_seconds_total",
                                           "Wall time of the steps (build, fan-out, gather, combine, sample).", NULL,
                                           NULL, 0, err)) ||
            !(d->m_wait_s = gn_metrics_add(reg, GN_METRIC_COUNTER, "genarm:coordinator_step_wait_seconds_total",
                                           "Part of the steps spent waiting for worker replies (last send to last "
                                           "reply).",
                                           NULL, NULL, 0, err)) ||
            !(d->m_compute_s = gn_metrics_add(reg, GN_METRIC_COUNTER,
                                              "genarm:coordinator_step_compute_seconds_total",
                                              "Part of the steps that was model compute on the workers (their "
                                              "forward passes; the slowest worker per step).",
                                              NULL, NULL, 0, err)) ||
            !(d->m_tokens = gn_metrics_add(reg, GN_METRIC_COUNTER, "genarm:coordinator_sampled_tokens_total",
                                           "Tokens sampled by the scheduler.", NULL, NULL, 0, err)))
            goto fail;
    }
    if (pthread_create(&d->thread, NULL, scheduler, d)) {
        gn_errf(err, GN_EIO, "dist backend: cannot start the scheduler thread");
        goto fail;
    }
    d->thread_started = 1;
    return d;
oom:
    gn_errf(err, GN_ENOMEM, "dist backend: out of memory");
fail:
    gn_dist_free(d);
    return NULL;
}

void gn_dist_free(gn_dist *d) {
    if (!d) return;
    if (d->thread_started) {
        pthread_mutex_lock(&d->mu);
        d->quit = 1;
        for (djob *jb = d->in_head; jb; jb = jb->next) atomic_store(&jb->cancelled, 1);
        pthread_cond_broadcast(&d->cv);
        pthread_mutex_unlock(&d->mu);
        pthread_join(d->thread, NULL);
    }
    gn_share_free(d->share); /* after the scheduler: taken jobs have ended */
    if (d->groups)
        for (int i = 0; i < d->n_groups_max; i++) {
            group *g = &d->groups[i];
            gn_free(g->seqs);
            gn_free(g->mi);
            gn_free(g->ss);
            gn_free(g->own);
            gn_free(g->rows);
        }
    gn_free(d->groups);
    gn_free(d->active);
    gn_free(d->where);
    gn_pool_free(d->pool);
    for (int i = 0; d->samplers && i < d->n_samplers; i++) gn_sampler_free(d->samplers[i]);
    for (int i = 0; d->scores && i < d->n_samplers; i++) gn_free(d->scores[i]);
    gn_free(d->samplers);
    gn_free(d->scores);
    gn_free(d->draw_list);
    for (int i = 0; i < d->n_clients; i++) gn_step_client_free(d->clients[i].c);
    gn_step_client_free(d->base_client);
    gn_step_client_free(d->hb_client);
    gn_ctl_free(d->ctl_sched);
    gn_ctl_free(d->ctl_submit);
    for (int i = 0; i < d->n_minfo; i++) gn_prompt_model_clear(&d->arms[i]);
    gn_prompt_model_clear(&d->base);
    pthread_cond_destroy(&d->cv);
    pthread_mutex_destroy(&d->mu);
    pthread_mutex_destroy(&d->mu_ctl);
    gn_free(d);
}
