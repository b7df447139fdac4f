/* http_server.c — libmicrohttpd front of the coordinator (http_server.h).
 *
 * One thread per connection. A generation request's state (struct conn) is
 * shared by three parties, each holding a reference: the connection (released
 * when MHD reports the request completed), the backend (released by done())
 * and, for streams, the callback response (released by its free callback).
 * The backend thread only appends to the state under its mutex; the
 * connection thread waits on the condition variable and polls the socket so a
 * vanished client cancels its job. */
#define _GNU_SOURCE
#include "http_server.h"

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "gn_alloc.h"
#include "gn_time.h"

enum { ROUTE_NONE, ROUTE_COMPLETIONS, ROUTE_CHAT, ROUTE_MODELS, ROUTE_HEALTH, ROUTE_READY, ROUTE_METRICS };

struct gn_coord_server {
    gn_coord_server_params p;
    struct MHD_Daemon *d;
    gn_coord_metrics *metrics;
    int own_metrics;
    int port;
    pthread_mutex_t mu;
    int draining, stopping;
    int inflight;
    struct conn *live; /* submitted, done() not yet seen */
    uint64_t next_id;
    unsigned tag;
};

/* One reported token: texts packed after the struct (token, then tops). */
typedef struct lp_rec {
    float lp;
    int n_top;
    size_t len;
    size_t top_len[GN_OAI_MAX_TOP];
    float top_lp[GN_OAI_MAX_TOP];
    char data[];
} lp_rec;

typedef struct conn {
    gn_coord_sink sink; /* first member: the backend's handle */
    gn_coord_server *srv;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    int route;
    /* body */
    char *body;
    size_t len, cap;
    int too_large;
    /* the job */
    gn_oai_request req;
    int have_req;
    char tenant[GN_CTL_ID_MAX];
    gn_coord_job job;
    int submitted, done, cancelled;
    char rid[64];
    int64_t created;
    int fd;
    double t_arrival, t_first, t_last;
    int n_pieces;
    /* stream output (pending SSE bytes) */
    char *out;
    size_t out_len, out_cap, out_off;
    int first_sent[GN_OAI_MAX_N];
    /* logprobs requests: every token reported so far, per choice */
    struct lp_rec **lp[GN_OAI_MAX_N];
    int n_lp[GN_OAI_MAX_N], cap_lp[GN_OAI_MAX_N], lp_sent[GN_OAI_MAX_N];
    size_t lp_off[GN_OAI_MAX_N]; /* token text bytes already streamed */
    /* non-stream answer */
    int status;
    char *answer;
    size_t answer_len;
    struct conn *next_live;
} conn;

gn_coord_server_params gn_coord_server_default_params(void) {
    gn_coord_server_params p;
    memset(&p, 0, sizeof p);
    p.bind_addr = "127.0.0.1";
    p.max_body = 1u << 20;
    p.default_max_tokens = 256;
    p.max_connections = 256;
    return p;
}

/* ---- connection state ------------------------------------------------------ */

static void conn_unref(conn *c) {
    pthread_mutex_lock(&c->mu);
    int left = --c->refs;
    pthread_mutex_unlock(&c->mu);
    if (left) return;
    if (c->have_req) gn_oai_request_free(&c->req);
    for (int i = 0; i < GN_OAI_MAX_N; i++) {
        for (int k = 0; k < c->n_lp[i]; k++) gn_free(c->lp[i][k]);
        gn_free(c->lp[i]);
    }
    gn_free(c->body);
    gn_free(c->out);
    gn_free(c->answer);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    gn_free(c);
}

/* Appends to the stream buffer; called with c->mu held. Drops on OOM (the
 * stream then ends early with what it has). */
static void out_append(conn *c, const char *s, size_t n) {
    if (c->out_len + n + 1 > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 1024;
        while (cap < c->out_len + n + 1) cap *= 2;
        char *q = gn_realloc(c->out, cap);
        if (!q) return;
        c->out = q;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, s, n);
    c->out_len += n;
}

static void live_remove(gn_coord_server *s, conn *c) {
    pthread_mutex_lock(&s->mu);
    for (conn **pp = &s->live; *pp; pp = &(*pp)->next_live)
        if (*pp == c) {
            *pp = c->next_live;
            s->inflight--;
            break;
        }
    pthread_mutex_unlock(&s->mu);
}

static void set_answer_error(conn *c, const gn_oai_error *e) {
    gn_free(c->answer);
    c->status = e->status;
    c->answer = gn_oai_format_error(e, &c->answer_len);
}

/* Backend error code -> OpenAI error. */
static void error_from_rc(int rc, const gn_err *err, gn_oai_error *e) {
    const char *msg = err && err->msg[0] ? err->msg : gn_strerror(rc);
    if (rc == GN_ENOTFOUND)
        gn_oai_errf(e, 404, "not_found_error", "reward_models", "reward_model_not_found", "%s", msg);
    else if (rc == GN_EINVAL || rc == GN_ERANGE || rc == GN_EMISMATCH)
        gn_oai_errf(e, 400, "invalid_request_error", NULL, rc == GN_ERANGE ? "context_length_exceeded" : "invalid_value",
                    "%s", msg);
    else
        gn_oai_errf(e, 500, "server_error", NULL, NULL, "%s", msg);
}

static void sink_token(gn_coord_sink *sk, int index, const gn_oai_logprob *l) {
    conn *c = (conn *)sk;
    if (index < 0 || index >= GN_OAI_MAX_N) return;
    int nt = l->n_top < GN_OAI_MAX_TOP ? l->n_top : GN_OAI_MAX_TOP;
    size_t bytes = sizeof(lp_rec) + l->tok.len;
    for (int k = 0; k < nt; k++) bytes += l->top[k].len;
    lp_rec *r = gn_malloc(bytes);
    if (!r) return; /* OOM: the token is missing from logprobs, generation goes on */
    r->lp = l->tok.logprob;
    r->n_top = nt;
    r->len = l->tok.len;
    memcpy(r->data, l->tok.text, l->tok.len);
    size_t off = l->tok.len;
    for (int k = 0; k < nt; k++) {
        r->top_len[k] = l->top[k].len;
        r->top_lp[k] = l->top[k].logprob;
        memcpy(r->data + off, l->top[k].text, l->top[k].len);
        off += l->top[k].len;
    }
    pthread_mutex_lock(&c->mu);
    if (c->n_lp[index] == c->cap_lp[index]) {
        int cap = c->cap_lp[index] ? 2 * c->cap_lp[index] : 64;
        lp_rec **q = gn_realloc(c->lp[index], (size_t)cap * sizeof *q);
        if (!q) {
            pthread_mutex_unlock(&c->mu);
            gn_free(r);
            return;
        }
        c->lp[index] = q;
        c->cap_lp[index] = cap;
    }
    c->lp[index][c->n_lp[index]++] = r;
    pthread_mutex_unlock(&c->mu);
}

/* Points ch's logprobs at tokens [lp_sent, n_lp) of choice idx and marks them
 * sent. *scratch (gn_free it after formatting) holds the arrays. Called with
 * c->mu held. */
static void take_logprobs(conn *c, int idx, gn_oai_choice *ch, void **scratch) {
    *scratch = NULL;
    if (c->req.logprobs < 0 || idx < 0 || idx >= GN_OAI_MAX_N) return;
    int from = c->lp_sent[idx], n = c->n_lp[idx] - from, n_top = 0;
    for (int i = 0; i < n; i++) n_top += c->lp[idx][from + i]->n_top;
    ch->with_logprobs = 1;
    ch->offset0 = c->lp_off[idx];
    if (n == 0) return;
    gn_oai_logprob *v = gn_malloc((size_t)n * sizeof *v + (size_t)n_top * sizeof(gn_oai_top));
    if (!v) return;
    gn_oai_top *tops = (gn_oai_top *)(v + n);
    for (int i = 0; i < n; i++) {
        lp_rec *r = c->lp[idx][from + i];
        v[i].tok = (gn_oai_top){r->data, r->len, r->lp};
        v[i].n_top = r->n_top;
        v[i].top = tops;
        size_t off = r->len;
        for (int k = 0; k < r->n_top; k++) {
            *tops++ = (gn_oai_top){r->data + off, r->top_len[k], r->top_lp[k]};
            off += r->top_len[k];
        }
        c->lp_off[idx] += r->len;
    }
    ch->lp = v;
    ch->n_lp = n;
    c->lp_sent[idx] = c->n_lp[idx];
    *scratch = v;
}

static void sink_text(gn_coord_sink *sk, int index, const char *text, size_t len, int n_tokens) {
    conn *c = (conn *)sk;
    gn_coord_metrics *m = c->srv->metrics;
    double t = gn_mono_s();
    pthread_mutex_lock(&c->mu);
    if (c->n_pieces == 0) {
        c->t_first = t;
        gn_metric_observe(m->ttft, NULL, t - c->t_arrival);
    } else {
        gn_metric_observe(m->itl, NULL, t - c->t_last);
    }
    c->t_last = t;
    c->n_pieces++;
    if (c->req.stream && index >= 0 && index < GN_OAI_MAX_N) {
        gn_oai_choice ch = {.index = index, .text = text, .text_len = len};
        void *scratch;
        take_logprobs(c, index, &ch, &scratch);
        size_t n = 0;
        char *s = gn_oai_format_chunk(c->req.kind, c->rid, c->created, c->req.model, &ch,
                                      !c->first_sent[index], NULL, &n, NULL);
        gn_free(scratch);
        if (s) {
            out_append(c, s, n);
            c->first_sent[index] = 1;
            gn_free(s);
        }
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
}

static void sink_done(gn_coord_sink *sk, const gn_coord_result *r) {
    conn *c = (conn *)sk;
    gn_coord_server *s = c->srv;
    gn_coord_metrics *m = s->metrics;
    double t = gn_mono_s();
    int gen = 0;
    for (int i = 0; i < r->n_choices; i++) {
        gen += r->choices[i].n_tokens;
        gn_metric_inc(m->request_success, r->choices[i].finish_reason, 1);
        gn_metric_observe(m->generation_tokens_hist, NULL, r->choices[i].n_tokens);
    }
    if (r->rc == 0) {
        gn_metric_inc(m->prompt_tokens, NULL, r->prompt_tokens);
        gn_metric_inc(m->generation_tokens, NULL, gen);
        gn_metric_observe(m->prompt_tokens_hist, NULL, r->prompt_tokens);
        gn_metric_observe(m->queue_time, NULL, r->queue_s);
        gn_metric_observe(m->e2e_latency, NULL, t - c->t_arrival);
    }
    pthread_mutex_lock(&c->mu);
    if (r->rc == 0 && gen > 1 && c->n_pieces) gn_metric_observe(m->tpot, NULL, (t - c->t_first) / (gen - 1));
    gn_oai_usage u = {r->prompt_tokens, gen};
    if (c->req.stream) {
        if (r->rc) {
            gn_oai_error e;
            error_from_rc(r->rc, &r->err, &e);
            size_t n = 0;
            char *j = gn_oai_format_error(&e, &n);
            if (j) {
                out_append(c, "data: ", 6);
                out_append(c, j, n);
                out_append(c, "\n\n", 2);
                gn_free(j);
            }
        } else {
            for (int i = 0; i < r->n_choices; i++) {
                gn_oai_choice ch = {.index = i, .text = "", .finish_reason = r->choices[i].finish_reason};
                void *scratch;
                take_logprobs(c, i, &ch, &scratch);
                size_t n = 0;
                char *sj = gn_oai_format_chunk(c->req.kind, c->rid, c->created, c->req.model, &ch,
                                               i < GN_OAI_MAX_N && !c->first_sent[i], NULL, &n, NULL);
                gn_free(scratch);
                if (sj) out_append(c, sj, n);
                gn_free(sj);
            }
            if (c->req.include_usage) {
                size_t n = 0;
                char *sj = gn_oai_format_chunk(c->req.kind, c->rid, c->created, c->req.model, NULL, 0, &u, &n, NULL);
                if (sj) out_append(c, sj, n);
                gn_free(sj);
            }
        }
        out_append(c, GN_OAI_SSE_DONE, strlen(GN_OAI_SSE_DONE));
    } else if (r->rc) {
        gn_oai_error e;
        error_from_rc(r->rc, &r->err, &e);
        set_answer_error(c, &e);
    } else {
        gn_oai_choice ch[GN_OAI_MAX_N];
        void *scratch[GN_OAI_MAX_N];
        int n = r->n_choices < GN_OAI_MAX_N ? r->n_choices : GN_OAI_MAX_N;
        for (int i = 0; i < n; i++) {
            ch[i] = (gn_oai_choice){.index = i, .text = r->choices[i].text, .text_len = r->choices[i].text_len,
                                    .finish_reason = r->choices[i].finish_reason};
            take_logprobs(c, i, &ch[i], &scratch[i]);
        }
        gn_err fe = {0};
        c->answer = gn_oai_format_response(c->req.kind, c->rid, c->created, c->req.model, ch, n, &u,
                                           &c->answer_len, &fe);
        for (int i = 0; i < n; i++) gn_free(scratch[i]);
        c->status = 200;
        if (!c->answer) {
            gn_oai_error e;
            gn_oai_errf(&e, 500, "server_error", NULL, NULL, "formatting the response: %s", fe.msg);
            set_answer_error(c, &e);
        }
    }
    c->done = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    live_remove(s, c);
    conn_unref(c); /* the backend's reference */
}

static void conn_cancel(conn *c) {
    pthread_mutex_lock(&c->mu);
    int go = c->submitted && !c->done && !c->cancelled;
    c->cancelled = 1;
    pthread_mutex_unlock(&c->mu);
    if (go) c->srv->p.backend.cancel(c->srv->p.backend.impl, c->job.id);
}

/* 1 when the peer has closed its side (or the socket failed). */
static int peer_gone(int fd) {
    if (fd < 0) return 0;
    struct pollfd pfd = {fd, POLLRDHUP, 0};
    if (poll(&pfd, 1, 0) <= 0) return 0;
    return (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

/* ---- responses ------------------------------------------------------------ */

static enum MHD_Result reply(struct MHD_Connection *mc, gn_coord_server *s, int status,
                             const char *ctype, const char *body, size_t len) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", ctype);
    enum MHD_Result ok = MHD_queue_response(mc, (unsigned)status, r);
    MHD_destroy_response(r);
    char code[8];
    snprintf(code, sizeof code, "%d", status);
    gn_metric_inc(s->metrics->http_requests, code, 1);
    return ok;
}

static enum MHD_Result reply_error(struct MHD_Connection *mc, gn_coord_server *s, const gn_oai_error *e) {
    size_t n = 0;
    char *j = gn_oai_format_error(e, &n);
    if (!j) return MHD_NO;
    enum MHD_Result ok = reply(mc, s, e->status, "application/json", j, n);
    gn_free(j);
    return ok;
}

static enum MHD_Result reply_errf(struct MHD_Connection *mc, gn_coord_server *s, int status,
                                  const char *type, const char *param, const char *code,
                                  const char *msg) {
    gn_oai_error e;
    gn_oai_errf(&e, status, type, param, code, "%s", msg);
    return reply_error(mc, s, &e);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    conn *c = cls;
    (void)pos;
    pthread_mutex_lock(&c->mu);
    while (c->out_off == c->out_len && !c->done) {
        if (c->srv->stopping || peer_gone(c->fd)) {
            pthread_mutex_unlock(&c->mu);
            conn_cancel(c);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&c->cv, &c->mu, &ts);
    }
    ssize_t n;
    if (c->out_off < c->out_len) {
        size_t k = c->out_len - c->out_off;
        if (k > max) k = max;
        memcpy(buf, c->out + c->out_off, k);
        c->out_off += k;
        n = (ssize_t)k;
    } else {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    }
    pthread_mutex_unlock(&c->mu);
    return n;
}

static void stream_free(void *cls) {
    conn *c = cls;
    conn_cancel(c); /* no-op when it finished */
    conn_unref(c);
}

/* ---- request handling ------------------------------------------------------ */

static int route_of(const char *url) {
    if (strcmp(url, "/v1/completions") == 0) return ROUTE_COMPLETIONS;
    if (strcmp(url, "/v1/chat/completions") == 0) return ROUTE_CHAT;
    if (strcmp(url, "/v1/models") == 0) return ROUTE_MODELS;
    if (strcmp(url, "/health") == 0) return ROUTE_HEALTH;
    if (strcmp(url, "/ready") == 0) return ROUTE_READY;
    if (strcmp(url, "/metrics") == 0) return ROUTE_METRICS;
    return ROUTE_NONE;
}

/* Bearer key -> tenant. 0, or an error already queued (returns the MHD result
 * through *res). */
static int authenticate(struct MHD_Connection *mc, gn_coord_server *s, char tenant[GN_CTL_ID_MAX],
                        enum MHD_Result *res) {
    if (!s->p.auth) {
        snprintf(tenant, GN_CTL_ID_MAX, "anonymous");
        return 0;
    }
    const char *h = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0 || !h[7]) {
        *res = reply_errf(mc, s, 401, "authentication_error", NULL, "invalid_api_key",
                          "missing bearer API key (Authorization: Bearer <key>)");
        return -1;
    }
    const char *key = h + 7;
    while (*key == ' ') key++;
    gn_err err = {0};
    int rc = s->p.auth->lookup_key(s->p.auth->impl, key, tenant, &err);
    if (rc == GN_ENOTFOUND || (rc == GN_EINVAL)) {
        *res = reply_errf(mc, s, 401, "authentication_error", NULL, "invalid_api_key", "incorrect API key provided");
        return -1;
    }
    if (rc) {
        *res = reply_errf(mc, s, 503, "server_error", NULL, "control_plane_unavailable", err.msg);
        return -1;
    }
    return 0;
}

/* Resolves profile / reward_models / defaults into c->job. 0 or an error
 * already queued. */
static int build_job(struct MHD_Connection *mc, gn_coord_server *s, conn *c, enum MHD_Result *res) {
    gn_coord_job *j = &c->job;
    const gn_oai_request *r = &c->req;
    memset(j, 0, sizeof *j);
    j->req = r;
    j->tenant = c->tenant;
    j->beta = 1.0;
    j->temperature = 1.0;
    j->top_p = 1.0;
    j->max_tokens = s->p.default_max_tokens;
    if (r->profile[0]) {
        gn_ctl_profile pr;
        gn_err err = {0};
        int rc = s->p.auth ? s->p.auth->get_profile(s->p.auth->impl, c->tenant, r->profile, &pr, &err)
                           : GN_ENOTFOUND;
        if (rc == GN_ENOTFOUND) {
            char msg[160];
            snprintf(msg, sizeof msg, "profile '%s' does not exist for this API key", r->profile);
            *res = reply_errf(mc, s, 404, "not_found_error", "profile", "profile_not_found", msg);
            return -1;
        }
        if (rc) {
            *res = reply_errf(mc, s, 503, "server_error", "profile", "control_plane_unavailable", err.msg);
            return -1;
        }
        j->n_arms = pr.n_arms < GN_OAI_MAX_ARMS ? pr.n_arms : GN_OAI_MAX_ARMS;
        for (int i = 0; i < j->n_arms; i++) {
            snprintf(j->arm_names[i], sizeof j->arm_names[i], "%s", pr.arms[i].name);
            j->weights[i] = pr.arms[i].weight;
        }
        j->beta = pr.beta;
        if (pr.has & GN_CTL_HAS_TEMPERATURE) j->temperature = pr.temperature;
        if (pr.has & GN_CTL_HAS_TOP_P) j->top_p = pr.top_p;
        if (pr.has & GN_CTL_HAS_TOP_K) j->top_k = pr.top_k;
        if (pr.has & GN_CTL_HAS_MIN_P) j->min_p = pr.min_p;
        if (pr.has & GN_CTL_HAS_MAX_TOKENS) j->max_tokens = pr.max_tokens;
    } else if (r->n_arms) {
        j->n_arms = r->n_arms;
        for (int i = 0; i < r->n_arms; i++) {
            memcpy(j->arm_names[i], r->arms[i].name, sizeof j->arm_names[i]);
            j->weights[i] = r->arms[i].weight;
        }
    }
    if (r->has & GN_OAI_HAS_BETA) j->beta = r->beta;
    if (r->has & GN_OAI_HAS_TEMPERATURE) j->temperature = r->temperature;
    if (r->has & GN_OAI_HAS_TOP_P) j->top_p = r->top_p;
    if (r->has & GN_OAI_HAS_TOP_K) j->top_k = r->top_k;
    if (r->has & GN_OAI_HAS_MIN_P) j->min_p = r->min_p;
    if (r->has & GN_OAI_HAS_MAX_TOKENS) j->max_tokens = r->max_tokens;
    j->n = r->n;
    j->body = c->body;
    j->body_len = c->len;
    pthread_mutex_lock(&s->mu);
    j->id = ++s->next_id;
    pthread_mutex_unlock(&s->mu);
    if (r->has & GN_OAI_HAS_SEED) {
        j->seed = r->seed;
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        j->seed = ((uint64_t)ts.tv_sec * 1000000007ull) ^ (uint64_t)ts.tv_nsec ^ (j->id << 32) ^ s->tag;
    }
    snprintf(c->rid, sizeof c->rid, "%s-%08x%016llx", r->kind == GN_OAI_CHAT ? "chatcmpl" : "cmpl", s->tag,
             (unsigned long long)j->id);
    c->created = (int64_t)time(NULL);
    return 0;
}

static enum MHD_Result handle_generate(struct MHD_Connection *mc, gn_coord_server *s, conn *c) {
    enum MHD_Result res = MHD_NO;
    if (c->too_large) {
        char msg[128];
        snprintf(msg, sizeof msg, "request body exceeds the limit of %zu bytes", s->p.max_body);
        return reply_errf(mc, s, 413, "invalid_request_error", NULL, "body_too_large", msg);
    }
    if (authenticate(mc, s, c->tenant, &res)) return res;
    pthread_mutex_lock(&s->mu);
    int draining = s->draining || s->stopping;
    pthread_mutex_unlock(&s->mu);
    if (draining)
        return reply_errf(mc, s, 503, "server_error", NULL, "draining", "the server is shutting down");
    gn_oai_error oe;
    int rc = c->route == ROUTE_CHAT ? gn_oai_parse_chat(c->body, c->len, &c->req, &oe)
                                    : gn_oai_parse_completion(c->body, c->len, &c->req, &oe);
    if (rc) return reply_error(mc, s, &oe);
    c->have_req = 1;
    if (strcmp(c->req.model, s->p.backend.model_id) != 0) {
        char msg[256];
        snprintf(msg, sizeof msg, "the model '%.100s' does not exist (this server serves '%.100s')", c->req.model,
                 s->p.backend.model_id);
        return reply_errf(mc, s, 404, "not_found_error", "model", "model_not_found", msg);
    }
    if (build_job(mc, s, c, &res)) return res;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    c->fd = ci ? ci->connect_fd : -1;
    c->t_arrival = gn_mono_s();
    /* The backend's reference, and the live list (for stop()). */
    pthread_mutex_lock(&c->mu);
    c->refs++;
    c->submitted = 1;
    pthread_mutex_unlock(&c->mu);
    pthread_mutex_lock(&s->mu);
    c->next_live = s->live;
    s->live = c;
    s->inflight++;
    pthread_mutex_unlock(&s->mu);
    gn_err err = {0};
    rc = s->p.backend.submit(s->p.backend.impl, &c->job, &c->sink, &err);
    if (rc) {
        live_remove(s, c);
        pthread_mutex_lock(&c->mu);
        c->submitted = 0;
        c->refs--; /* never reaches 0 here: the connection holds one */
        pthread_mutex_unlock(&c->mu);
        gn_oai_error e;
        error_from_rc(rc, &err, &e);
        return reply_error(mc, s, &e);
    }
    if (c->req.stream) {
        pthread_mutex_lock(&c->mu);
        c->refs++; /* the response's */
        pthread_mutex_unlock(&c->mu);
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, c, stream_free);
        if (!r) {
            stream_free(c);
            return MHD_NO;
        }
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        MHD_add_response_header(r, "X-Request-Id", c->rid);
        res = MHD_queue_response(mc, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        gn_metric_inc(s->metrics->http_requests, "200", 1);
        return res;
    }
    /* Not streamed: wait here (this connection's own thread), watching the peer. */
    pthread_mutex_lock(&c->mu);
    while (!c->done) {
        if (!c->cancelled && (s->stopping || peer_gone(c->fd))) {
            pthread_mutex_unlock(&c->mu);
            conn_cancel(c);
            pthread_mutex_lock(&c->mu);
            continue;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&c->cv, &c->mu, &ts);
    }
    int cancelled = c->cancelled;
    pthread_mutex_unlock(&c->mu);
    if (cancelled) return MHD_NO; /* the client is gone */
    if (!c->answer) return MHD_NO;
    return reply(mc, s, c->status, "application/json", c->answer, c->answer_len);
}

static enum MHD_Result handle_get(struct MHD_Connection *mc, gn_coord_server *s, int route) {
    enum MHD_Result res = MHD_NO;
    switch (route) {
    case ROUTE_HEALTH:
        return reply(mc, s, 200, "application/json", "{\"status\":\"ok\"}", 15);
    case ROUTE_READY: {
        pthread_mutex_lock(&s->mu);
        int draining = s->draining || s->stopping;
        pthread_mutex_unlock(&s->mu);
        int ok = !draining && (!s->p.backend.ready || s->p.backend.ready(s->p.backend.impl));
        return ok ? reply(mc, s, 200, "application/json", "{\"status\":\"ready\"}", 18)
                  : reply(mc, s, 503, "application/json", "{\"status\":\"not ready\"}", 22);
    }
    case ROUTE_METRICS: {
        char *txt = NULL;
        size_t n = 0;
        if (gn_metrics_render(s->metrics->reg, &txt, &n, NULL)) return MHD_NO;
        res = reply(mc, s, 200, "text/plain; version=0.0.4; charset=utf-8", txt, n);
        gn_free(txt);
        return res;
    }
    case ROUTE_MODELS: {
        char tenant[GN_CTL_ID_MAX];
        if (authenticate(mc, s, tenant, &res)) return res;
        char buf[512];
        int n = snprintf(buf, sizeof buf,
                         "{\"object\":\"list\",\"data\":[{\"id\":\"%s\",\"object\":\"model\",\"created\":0,"
                         "\"owned_by\":\"genarm\"}]}",
                         s->p.backend.model_id);
        return reply(mc, s, 200, "application/json", buf, (size_t)n);
    }
    default:
        return MHD_NO;
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    gn_coord_server *s = cls;
    (void)version;
    conn *c = *con_cls;
    if (!c) {
        int route = route_of(url);
        int is_post = strcmp(method, "POST") == 0;
        int is_get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
        if (route == ROUTE_NONE)
            return reply_errf(mc, s, 404, "not_found_error", NULL, "unknown_url", "no such route");
        int gen = route == ROUTE_COMPLETIONS || route == ROUTE_CHAT;
        if ((gen && !is_post) || (!gen && !is_get))
            return reply_errf(mc, s, 405, "invalid_request_error", NULL, "method_not_allowed",
                              gen ? "use POST" : "use GET");
        if (!gen) return handle_get(mc, s, route);
        /* A declared body over the limit is refused before it is read. */
        const char *cl = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > s->p.max_body) {
            char msg[128];
            snprintf(msg, sizeof msg, "request body exceeds the limit of %zu bytes", s->p.max_body);
            return reply_errf(mc, s, 413, "invalid_request_error", NULL, "body_too_large", msg);
        }
        if (!(c = gn_calloc(1, sizeof *c))) return MHD_NO;
        c->sink.text = sink_text;
        c->sink.done = sink_done;
        c->sink.token = sink_token;
        c->srv = s;
        c->refs = 1;
        c->route = route;
        c->fd = -1;
        pthread_mutex_init(&c->mu, NULL);
        pthread_cond_init(&c->cv, NULL);
        *con_cls = c;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (c->too_large || c->len + n > s->p.max_body) {
            c->too_large = 1;
            return MHD_YES;
        }
        if (c->len + n + 1 > c->cap) {
            size_t cap = c->cap ? c->cap : 4096;
            while (cap < c->len + n + 1) cap *= 2;
            char *q = gn_realloc(c->body, cap);
            if (!q) return MHD_NO;
            c->body = q;
            c->cap = cap;
        }
        memcpy(c->body + c->len, upload_data, n);
        c->len += n;
        return MHD_YES;
    }
    if (c->submitted || c->answer) return MHD_NO; /* called again after we answered */
    return handle_generate(mc, s, c);
}

static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)cls;
    (void)mc;
    conn *c = *con_cls;
    if (!c) return;
    *con_cls = NULL;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) conn_cancel(c);
    conn_unref(c);
}

/* ---- lifecycle ------------------------------------------------------------- */

gn_coord_server *gn_coord_server_start(const gn_coord_server_params *p, gn_err *err) {
    if (!p || !p->backend.submit || !p->backend.cancel || !p->backend.model_id) {
        gn_errf(err, GN_EINVAL, "coordinator server: a backend with submit, cancel and model_id is required");
        return NULL;
    }
    gn_coord_server *s = gn_calloc(1, sizeof *s);
    if (!s) {
        gn_errf(err, GN_ENOMEM, "coordinator server: out of memory");
        return NULL;
    }
    s->p = *p;
    if (!s->p.bind_addr) s->p.bind_addr = "127.0.0.1";
    if (!s->p.max_body || s->p.max_body > GN_OAI_BODY_MAX) s->p.max_body = GN_OAI_BODY_MAX;
    if (s->p.default_max_tokens <= 0) s->p.default_max_tokens = 256;
    if (s->p.max_connections <= 0) s->p.max_connections = 256;
    pthread_mutex_init(&s->mu, NULL);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    s->tag = (unsigned)(ts.tv_nsec ^ (ts.tv_sec << 8) ^ (getpid() << 16));
    if (p->metrics) {
        s->metrics = p->metrics;
    } else {
        if (!(s->metrics = gn_coord_metrics_create(err))) goto fail;
        s->own_metrics = 1;
    }
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)p->port);
    if (inet_pton(AF_INET, s->p.bind_addr, &sa.sin_addr) != 1) {
        gn_errf(err, GN_EINVAL, "coordinator server: bad IPv4 bind address '%s'", s->p.bind_addr);
        goto fail;
    }
    s->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                                MHD_USE_ERROR_LOG,
                            (uint16_t)p->port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, &sa,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_CONNECTION_LIMIT,
                            (unsigned)s->p.max_connections, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600,
                            MHD_OPTION_END);
    if (!s->d) {
        gn_errf(err, GN_EIO, "coordinator server: cannot listen on %s:%d", s->p.bind_addr, p->port);
        goto fail;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : p->port;
    return s;
fail:
    if (s->own_metrics) gn_coord_metrics_free(s->metrics);
    pthread_mutex_destroy(&s->mu);
    gn_free(s);
    return NULL;
}

int gn_coord_server_port(const gn_coord_server *s) { return s->port; }

gn_coord_metrics *gn_coord_server_metrics(gn_coord_server *s) { return s->metrics; }

int gn_coord_server_drain(gn_coord_server *s) {
    pthread_mutex_lock(&s->mu);
    s->draining = 1;
    int n = s->inflight;
    pthread_mutex_unlock(&s->mu);
    return n;
}

int gn_coord_server_inflight(gn_coord_server *s) {
    pthread_mutex_lock(&s->mu);
    int n = s->inflight;
    pthread_mutex_unlock(&s->mu);
    return n;
}

void gn_coord_server_stop(gn_coord_server *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    uint64_t ids[1024];
    int n = 0;
    for (conn *c = s->live; c && n < 1024; c = c->next_live) ids[n++] = c->job.id;
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < n; i++) s->p.backend.cancel(s->p.backend.impl, ids[i]);
    MHD_stop_daemon(s->d); /* joins every connection thread */
    /* Jobs cancelled above still owe a done(); wait for them (they hold refs). */
    for (int i = 0; i < 600 && gn_coord_server_inflight(s) > 0; i++) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (s->own_metrics) gn_coord_metrics_free(s->metrics);
    pthread_mutex_destroy(&s->mu);
    gn_free(s);
}
