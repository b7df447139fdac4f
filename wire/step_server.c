/* step_server.c — the worker's ROUTER front and batching point (see
 * step_server.h).
 *
 * Two threads share one mutex-guarded state: the I/O thread (owns the socket)
 * appends validated requests to the inbound queue and signals a condition
 * variable; the compute thread (the caller of gn_step_server_run) takes them,
 * runs the handlers, encodes each reply into a gn_malloc'd buffer and appends
 * it to the outbound queue, then wakes the I/O thread through an eventfd that
 * zmq_poll watches beside the socket. The encoded buffer goes to ZeroMQ as
 * is (zmq_msg_init_data with a free callback): a reply is never copied. */
#define _GNU_SOURCE
#include "step_server.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "gn_alloc.h"

#define MAX_PARTS 3   /* identity, optional empty delimiter, envelope */
#define IDENT_MAX 256 /* ROUTER routing ids are at most 255 bytes */
#define QUEUE_MAX_JOBS 4096
#define RECV_BURST 64

/* One request on its way: decoded and validated by the I/O thread, served by
 * the compute thread, then the same struct carries the encoded reply back. */
typedef struct job {
    struct job *next;
    uint8_t ident[IDENT_MAX];
    size_t ident_len;
    int with_delim;
    gn_wire_env *env; /* the request (NULL once answered) */
    uint64_t request_id; /* its id, kept for an Error reply when its reply cannot be encoded */
    size_t frame_bytes;
    uint8_t *reply;   /* the encoded reply (gn_malloc'd), handed to ZeroMQ */
    size_t reply_len;
    int64_t recv_us;  /* when the I/O thread received it (monotonic) */
} job;

/* How fast a peer comes back: the time from posting its step's reply to
 * receiving its next step (its round trip plus its own work), smoothed. The
 * gather window waits for a peer about twice that, not a fixed time: a
 * coordinator on a busy machine is waited for longer, one on a quiet machine
 * briefly, and one that left costs one short wait. */
#define PEER_STATS 64
typedef struct peer_stat {
    uint8_t ident[IDENT_MAX];
    size_t len;
    int64_t reply_us;   /* its last step reply posted, 0 = none pending */
    int64_t turn_us;    /* smoothed turnaround, 0 = not measured yet */
    uint64_t stamp;     /* last use, for replacement */
} peer_stat;

typedef struct jobq {
    job *head, *tail;
    int n;
} jobq;

struct gn_step_server {
    gn_step_server_params p;
    gn_step_handlers h;
    void *ctx;
    void *sock;
    char endpoint[512];
    char endpoints[2048];
    char worker_id[128];
    char comp[64];
    int efd; /* compute -> I/O: replies are waiting, or stop */

    pthread_mutex_t mu; /* guards everything down to io_err */
    pthread_cond_t cv;  /* I/O -> compute: a request arrived, or the I/O thread failed */
    jobq in, out;
    size_t in_bytes;
    int draining; /* set by the compute thread on stop: nothing more is queued */
    int io_stop;  /* the compute thread is done: flush, drain, exit */
    int io_failed;
    char io_err[256];
    int mu_ok, cv_ok;

    pthread_mutex_t load_mu;
    gn_step_load load;
    gn_step_load io_load; /* the I/O thread's copy while it answers a Heartbeat */
    int load_mu_ok;

    _Atomic uint64_t n_requests, n_errors, n_batches, n_batched, n_gather_waits, gather_us_total,
        last_gather_us;

    /* Compute-thread scratch, sized once for max_batch_seqs requests. */
    job **batch;
    const gn_wire_step_req **reqs;
    gn_wire_step_resp *resps;
    gn_wire_step_resp **resp_ptrs;
    int *codes;
    gn_err *errs;
    job **after; /* releases that wait for the batch */
    uint8_t (*peers)[IDENT_MAX]; /* peers served in the previous batch */
    size_t *peer_len;
    int n_peers;
    peer_stat pstat[PEER_STATS];
    uint64_t pstat_clock;
};

int64_t gn_wire_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint64_t unix_ms(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

gn_step_server_params gn_step_server_default_params(void) {
    gn_step_server_params p = {
        .endpoint = NULL,
        .worker_id = "worker",
        .log_comp = "step_server",
        .tick_ms = 100,
        .drain_ms = 500,
        .linger_ms = 1000,
        .gather_us = 10000,
        .max_batch_seqs = 256,
        .limits = gn_wire_default_limits(),
    };
    return p;
}

/* ---- queues (callers hold s->mu) ------------------------------------------- */

static void q_push(jobq *q, job *j) {
    j->next = NULL;
    if (q->tail) q->tail->next = j;
    else q->head = j;
    q->tail = j;
    q->n++;
}

/* Unlinks j, whose predecessor is prev (NULL: j is the head). */
static void q_unlink(jobq *q, job *prev, job *j) {
    if (prev) prev->next = j->next;
    else q->head = j->next;
    if (q->tail == j) q->tail = prev;
    q->n--;
    j->next = NULL;
}

static void job_free(job *j) {
    if (!j) return;
    gn_wire_env_free(j->env);
    gn_free(j->reply);
    gn_free(j);
}

/* ---- create / free ------------------------------------------------------------ */

/* Binds every comma-separated endpoint of list; records what was bound. */
static int bind_all(gn_step_server *s, const char *list, gn_err *err) {
    size_t off = 0;
    const char *p = list;
    int n = 0;
    while (*p) {
        while (*p == ' ' || *p == ',') p++;
        if (!*p) break;
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        while (len && p[len - 1] == ' ') len--;
        char ep[512];
        if (len >= sizeof ep)
            return gn_errf(err, GN_EINVAL, "endpoint \"%.40s...\" is too long", p);
        memcpy(ep, p, len);
        ep[len] = 0;
        if (zmq_bind(s->sock, ep) != 0)
            return gn_errf(err, GN_EIO, "bind %s: %s", ep, zmq_strerror(errno));
        char got[512];
        size_t glen = sizeof got;
        if (zmq_getsockopt(s->sock, ZMQ_LAST_ENDPOINT, got, &glen) != 0)
            snprintf(got, sizeof got, "%s", ep);
        if (n == 0) snprintf(s->endpoint, sizeof s->endpoint, "%s", got);
        int w = snprintf(s->endpoints + off, sizeof s->endpoints - off, "%s%s", n ? "," : "", got);
        if (w < 0 || (size_t)w >= sizeof s->endpoints - off)
            return gn_errf(err, GN_ERANGE, "too many endpoints");
        off += (size_t)w;
        n++;
        p += end ? (size_t)(end - p) : strlen(p);
    }
    if (n == 0) return gn_errf(err, GN_EINVAL, "no endpoint to bind in \"%s\"", list);
    return 0;
}

gn_step_server *gn_step_server_create(const gn_step_server_params *p, const gn_step_handlers *h,
                                      gn_err *err) {
    if (!p || !p->endpoint || !h || !h->step || !h->release) {
        gn_errf(err, GN_EINVAL, "step server: endpoint, step and release handlers are required");
        return NULL;
    }
    gn_step_server *s = gn_calloc(1, sizeof *s);
    if (!s) {
        gn_errf(err, GN_ENOMEM, "step server: out of memory");
        return NULL;
    }
    s->efd = -1;
    s->p = *p;
    s->h = *h;
    if (s->p.tick_ms <= 0) s->p.tick_ms = 100;
    if (s->p.gather_us < 0) s->p.gather_us = 0;
    if (s->p.max_batch_seqs <= 0) s->p.max_batch_seqs = 256;
    snprintf(s->worker_id, sizeof s->worker_id, "%s", p->worker_id ? p->worker_id : "worker");
    snprintf(s->comp, sizeof s->comp, "%s", p->log_comp ? p->log_comp : "step_server");
    s->p.worker_id = s->worker_id;
    s->p.log_comp = s->comp;
    s->p.endpoint = NULL; /* not kept: the caller's string */

    size_t nb = (size_t)s->p.max_batch_seqs;
    s->batch = gn_calloc(nb, sizeof *s->batch);
    s->reqs = gn_calloc(nb, sizeof *s->reqs);
    s->resps = gn_calloc(nb, sizeof *s->resps);
    s->resp_ptrs = gn_calloc(nb, sizeof *s->resp_ptrs);
    s->codes = gn_calloc(nb, sizeof *s->codes);
    s->errs = gn_calloc(nb, sizeof *s->errs);
    s->after = gn_calloc(QUEUE_MAX_JOBS, sizeof *s->after);
    s->peers = gn_calloc(nb, sizeof *s->peers);
    s->peer_len = gn_calloc(nb, sizeof *s->peer_len);
    if (!s->batch || !s->reqs || !s->resps || !s->resp_ptrs || !s->codes || !s->errs || !s->after ||
        !s->peers || !s->peer_len) {
        gn_errf(err, GN_ENOMEM, "step server: out of memory");
        goto fail;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    s->cv_ok = pthread_cond_init(&s->cv, &ca) == 0;
    pthread_condattr_destroy(&ca);
    s->mu_ok = pthread_mutex_init(&s->mu, NULL) == 0;
    s->load_mu_ok = pthread_mutex_init(&s->load_mu, NULL) == 0;
    if (!s->cv_ok || !s->mu_ok || !s->load_mu_ok) {
        gn_errf(err, GN_EIO, "step server: pthread init failed");
        goto fail;
    }
    if ((s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        gn_errf(err, GN_EIO, "eventfd: %s", strerror(errno));
        goto fail;
    }
    if (!(s->ctx = zmq_ctx_new())) {
        gn_errf(err, GN_EIO, "zmq_ctx_new: %s", zmq_strerror(errno));
        goto fail;
    }
    if (!(s->sock = zmq_socket(s->ctx, ZMQ_ROUTER))) {
        gn_errf(err, GN_EIO, "zmq_socket(ROUTER): %s", zmq_strerror(errno));
        goto fail;
    }
    int linger = s->p.linger_ms;
    /* Oversized messages are cut by ZeroMQ itself (the peer is disconnected)
     * before they use our memory; smaller-than-that but over-limit frames get
     * an ERROR_TOO_LARGE reply from gn_wire_decode. */
    int64_t maxmsg = (int64_t)s->p.limits.max_frame_bytes * 2 + 4096;
    zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if (bind_all(s, p->endpoint, err) != 0) goto fail;
    return s;
fail:
    gn_step_server_free(s);
    return NULL;
}

const char *gn_step_server_endpoint(const gn_step_server *s) { return s->endpoint; }
const char *gn_step_server_endpoints(const gn_step_server *s) { return s->endpoints; }

void gn_step_server_publish_load(gn_step_server *s, const gn_step_load *load) {
    pthread_mutex_lock(&s->load_mu);
    s->load = *load;
    if (s->load.n_models < 0) s->load.n_models = 0;
    if (s->load.n_models > GN_STEP_LOAD_MAX_MODELS) s->load.n_models = GN_STEP_LOAD_MAX_MODELS;
    pthread_mutex_unlock(&s->load_mu);
}

void gn_step_server_stats_get(const gn_step_server *s, gn_step_server_stats *out) {
    out->requests = atomic_load(&s->n_requests);
    out->errors = atomic_load(&s->n_errors);
    out->batches = atomic_load(&s->n_batches);
    out->batched_requests = atomic_load(&s->n_batched);
    out->gather_waits = atomic_load(&s->n_gather_waits);
    out->gather_us_total = atomic_load(&s->gather_us_total);
    out->last_gather_us = atomic_load(&s->last_gather_us);
}

static void free_list(job *j) {
    while (j) {
        job *n = j->next;
        job_free(j);
        j = n;
    }
}

void gn_step_server_free(gn_step_server *s) {
    if (!s) return;
    if (s->sock) zmq_close(s->sock);
    if (s->ctx) zmq_ctx_term(s->ctx);
    if (s->efd >= 0) close(s->efd);
    free_list(s->in.head);
    free_list(s->out.head);
    if (s->cv_ok) pthread_cond_destroy(&s->cv);
    if (s->mu_ok) pthread_mutex_destroy(&s->mu);
    if (s->load_mu_ok) pthread_mutex_destroy(&s->load_mu);
    gn_free(s->batch);
    gn_free(s->reqs);
    gn_free(s->resps);
    gn_free(s->resp_ptrs);
    gn_free(s->codes);
    gn_free(s->errs);
    gn_free(s->after);
    gn_free(s->peers);
    gn_free(s->peer_len);
    gn_free(s);
}

/* ---- the I/O thread ------------------------------------------------------------ */

static void free_buf(void *data, void *hint) {
    (void)hint;
    gn_free(data);
}

/* Sends [identity][""?][payload]; takes ownership of payload (gn_malloc'd).
 * Never blocks: a peer whose queue is full loses the reply (logged). */
static void send_reply(gn_step_server *s, const uint8_t *ident, size_t ident_len, int with_delim,
                       uint8_t *payload, size_t len) {
    if (zmq_send(s->sock, ident, ident_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        gn_free(payload);
        gn_wire_log("warn", s->comp, "event=reply_dropped reason=\"%s\"", zmq_strerror(errno));
        return;
    }
    if (with_delim) zmq_send(s->sock, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    zmq_msg_t body;
    if (zmq_msg_init_data(&body, payload, len, free_buf, NULL) != 0) {
        gn_free(payload);
        zmq_send(s->sock, "", 0, ZMQ_DONTWAIT); /* terminate the multipart message */
        return;
    }
    if (zmq_msg_send(&body, s->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&body);
        gn_wire_log("warn", s->comp, "event=reply_dropped reason=\"%s\"", zmq_strerror(errno));
    }
}

static int encode(gn_step_server *s, const gn_wire_env *env, uint8_t **buf, size_t *len) {
    gn_err e = {0};
    if (gn_wire_encode(env, buf, len, &e) != 0) {
        gn_wire_log("error", s->comp, "event=encode_failed msg=\"%s\"", e.msg);
        return -1;
    }
    return 0;
}

static void make_error(gn_step_server *s, gn_wire_env *env, Genarm__V1__Error *er, uint64_t request_id,
                       int code, const char *msg) {
    gn_wire_env_init(env, request_id);
    Genarm__V1__Error e0 = GENARM__V1__ERROR__INIT;
    *er = e0;
    er->code = (Genarm__V1__ErrorCode)code;
    er->message = (char *)msg;
    env->body_case = GENARM__V1__ENVELOPE__BODY_ERROR;
    env->error = er;
    atomic_fetch_add(&s->n_errors, 1);
    gn_wire_log("warn", s->comp, "event=error_reply request_id=%llu code=%s msg=\"%s\"",
                (unsigned long long)request_id, gn_wire_code_name(code), msg);
}

/* An Error reply straight from the I/O thread. */
static void io_reply_error(gn_step_server *s, const uint8_t *ident, size_t ident_len, int with_delim,
                           uint64_t request_id, int code, const char *msg) {
    gn_wire_env env;
    Genarm__V1__Error er;
    make_error(s, &env, &er, request_id, code, msg);
    uint8_t *buf;
    size_t len;
    if (encode(s, &env, &buf, &len) == 0) send_reply(s, ident, ident_len, with_delim, buf, len);
}

/* A Heartbeat reply from the load the compute side last published. */
static void io_reply_heartbeat(gn_step_server *s, const uint8_t *ident, size_t ident_len, int with_delim,
                               uint64_t request_id, int draining) {
    gn_step_load *ld = &s->io_load; /* the I/O thread's copy (5 KB, off the stack) */
    pthread_mutex_lock(&s->load_mu);
    *ld = s->load;
    pthread_mutex_unlock(&s->load_mu);
    Genarm__V1__ModelRef refs[GN_STEP_LOAD_MAX_MODELS], *ptrs[GN_STEP_LOAD_MAX_MODELS];
    for (int i = 0; i < ld->n_models; i++) {
        Genarm__V1__ModelRef r = GENARM__V1__MODEL_REF__INIT;
        ld->models[i].name[sizeof ld->models[i].name - 1] = 0;
        r.name = ld->models[i].name;
        r.version = ld->models[i].version;
        refs[i] = r;
        ptrs[i] = &refs[i];
    }
    Genarm__V1__Heartbeat hb = GENARM__V1__HEARTBEAT__INIT;
    hb.worker_id = s->worker_id;
    hb.unix_ms = unix_ms();
    hb.active_seqs = ld->active_seqs;
    hb.max_seqs = ld->max_seqs;
    hb.kv_used_blocks = ld->kv_used_blocks;
    hb.kv_total_blocks = ld->kv_total_blocks;
    hb.models = ptrs;
    hb.n_models = (size_t)ld->n_models;
    hb.draining = draining != 0;
    hb.forward_passes = ld->forward_passes;
    hb.pass_seqs_total = ld->pass_seqs_total;
    gn_wire_env env;
    gn_wire_env_init(&env, request_id);
    env.body_case = GENARM__V1__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    uint8_t *buf;
    size_t len;
    if (encode(s, &env, &buf, &len) == 0) send_reply(s, ident, ident_len, with_delim, buf, len);
}

/* Sends every reply the compute thread has queued. */
static void io_flush(gn_step_server *s) {
    uint64_t v;
    while (read(s->efd, &v, sizeof v) > 0) {
    }
    pthread_mutex_lock(&s->mu);
    job *j = s->out.head;
    s->out.head = s->out.tail = NULL;
    s->out.n = 0;
    pthread_mutex_unlock(&s->mu);
    while (j) {
        job *n = j->next;
        if (j->reply)
            send_reply(s, j->ident, j->ident_len, j->with_delim, j->reply, j->reply_len);
        else /* neither the reply nor an Error could be encoded there: try once more here */
            io_reply_error(s, j->ident, j->ident_len, j->with_delim, j->request_id,
                           GENARM__V1__ERROR_CODE__ERROR_INTERNAL, "worker could not encode its reply");
        j->reply = NULL; /* ZeroMQ owns it now */
        job_free(j);
        j = n;
    }
}

/* Validates a decoded request and either answers it here or queues it for
 * the compute thread. Takes ownership of env. */
static void io_route(gn_step_server *s, const zmq_msg_t *ident, int with_delim, gn_wire_env *env,
                     size_t frame_bytes) {
    const uint8_t *id = zmq_msg_data((zmq_msg_t *)ident);
    size_t id_len = zmq_msg_size((zmq_msg_t *)ident);
    gn_err e = {0};
    int code = 0;
    pthread_mutex_lock(&s->mu);
    int draining = s->draining;
    pthread_mutex_unlock(&s->mu);
    if (env->body_case == GENARM__V1__ENVELOPE__BODY_HEARTBEAT) {
        io_reply_heartbeat(s, id, id_len, with_delim, env->request_id, draining);
        gn_wire_env_free(env);
        return;
    }
    if (draining) {
        io_reply_error(s, id, id_len, with_delim, env->request_id, GENARM__V1__ERROR_CODE__ERROR_SHUTTING_DOWN,
                       "worker is shutting down");
        gn_wire_env_free(env);
        return;
    }
    switch (env->body_case) {
    case GENARM__V1__ENVELOPE__BODY_STEP:
        gn_wire_step_check(env->step, &s->p.limits, &code, &e);
        break;
    case GENARM__V1__ENVELOPE__BODY_FETCH:
        if (!s->h.fetch) {
            code = GENARM__V1__ERROR_CODE__ERROR_UNSUPPORTED;
            gn_errf(&e, GN_EUNSUP, "%s does not serve row fetches", s->worker_id);
        } else {
            gn_wire_fetch_check(env->fetch, &s->p.limits, &code, &e);
        }
        break;
    case GENARM__V1__ENVELOPE__BODY_RELEASE:
        break;
    case GENARM__V1__ENVELOPE__BODY_LOAD:
    case GENARM__V1__ENVELOPE__BODY_UNLOAD:
    case GENARM__V1__ENVELOPE__BODY_PROMOTE:
        if (!s->h.command) {
            code = GENARM__V1__ERROR_CODE__ERROR_UNSUPPORTED;
            gn_errf(&e, GN_EUNSUP, "%s does not load, unload or promote models", s->worker_id);
        }
        break;
    default:
        code = GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST;
        gn_errf(&e, GN_EINVAL, "envelope body %d is not a request", (int)env->body_case);
        break;
    }
    if (code) {
        io_reply_error(s, id, id_len, with_delim, env->request_id, code, e.msg[0] ? e.msg : "bad request");
        gn_wire_env_free(env);
        return;
    }
    job *j = id_len <= IDENT_MAX ? gn_calloc(1, sizeof *j) : NULL;
    if (!j) {
        io_reply_error(s, id, id_len, with_delim, env->request_id, GENARM__V1__ERROR_CODE__ERROR_INTERNAL,
                       "worker out of memory");
        gn_wire_env_free(env);
        return;
    }
    memcpy(j->ident, id, id_len);
    j->ident_len = id_len;
    j->with_delim = with_delim;
    j->env = env;
    j->request_id = env->request_id;
    j->frame_bytes = frame_bytes;
    j->recv_us = now_us();
    pthread_mutex_lock(&s->mu);
    /* Bounded: a flood of requests gets CAPACITY instead of unbounded memory
     * (one frame is always taken, however large). */
    size_t cap_bytes = s->p.limits.max_frame_bytes * 4;
    int full = s->draining || s->in.n >= QUEUE_MAX_JOBS || (s->in.n > 0 && s->in_bytes + frame_bytes > cap_bytes);
    int was_draining = s->draining;
    if (!full) {
        q_push(&s->in, j);
        s->in_bytes += frame_bytes;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    if (full) {
        io_reply_error(s, id, id_len, with_delim, env->request_id,
                       was_draining ? GENARM__V1__ERROR_CODE__ERROR_SHUTTING_DOWN : GENARM__V1__ERROR_CODE__ERROR_CAPACITY,
                       was_draining ? "worker is shutting down" : "worker queue is full");
        job_free(j);
    }
}

/* Receives one whole multipart message (non-blocking) and routes it.
 * Returns 1 when a message was handled, 0 when none was waiting, < 0 on a
 * socket error. */
static int io_recv_one(gn_step_server *s) {
    zmq_msg_t parts[MAX_PARTS];
    int n = 0, extra = 0;
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s->sock, n == 0 && extra == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            int en = errno;
            zmq_msg_close(&m);
            for (int i = 0; i < n; i++) zmq_msg_close(&parts[i]);
            if (n == 0 && (en == EAGAIN || en == EINTR)) return 0;
            return GN_EIO;
        }
        int more = zmq_msg_more(&m);
        if (n < MAX_PARTS) parts[n++] = m;
        else {
            zmq_msg_close(&m);
            extra++;
        }
        if (!more) break;
    }
    atomic_fetch_add(&s->n_requests, 1);
    /* Layout: [id][env] from DEALER, [id][""][env] from REQ. */
    int with_delim = n >= 2 && zmq_msg_size(&parts[1]) == 0;
    zmq_msg_t *payload = NULL;
    if (!extra && n == 2 && !with_delim) payload = &parts[1];
    else if (!extra && n == 3 && with_delim) payload = &parts[2];
    const uint8_t *id = zmq_msg_data(&parts[0]);
    size_t id_len = zmq_msg_size(&parts[0]);
    if (n < 2) {
        /* No payload at all: a bare identity cannot be answered meaningfully. */
    } else if (!payload) {
        char msg[96];
        snprintf(msg, sizeof msg, "expected one envelope part, got %d parts", n - 1 - with_delim + extra);
        io_reply_error(s, id, id_len, with_delim, 0, GENARM__V1__ERROR_CODE__ERROR_BAD_FRAME, msg);
    } else {
        gn_err e = {0};
        gn_wire_env *req = NULL;
        int code;
        uint64_t rid;
        size_t len = zmq_msg_size(payload);
        if (gn_wire_decode(zmq_msg_data(payload), len, &s->p.limits, &req, &code, &rid, &e) != 0)
            io_reply_error(s, id, id_len, with_delim, rid, code, e.msg);
        else
            io_route(s, &parts[0], with_delim, req, len);
    }
    for (int i = 0; i < n; i++) zmq_msg_close(&parts[i]);
    return 1;
}

static void io_fail(gn_step_server *s, const char *what) {
    pthread_mutex_lock(&s->mu);
    s->io_failed = 1;
    snprintf(s->io_err, sizeof s->io_err, "%s: %s", what, zmq_strerror(errno));
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void *io_main(void *arg) {
    gn_step_server *s = arg;
    for (;;) {
        zmq_pollitem_t it[2] = {{s->sock, 0, ZMQ_POLLIN, 0}, {NULL, s->efd, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(it, 2, s->p.tick_ms);
        if (rc < 0 && errno != EINTR) {
            io_fail(s, "zmq_poll");
            return NULL;
        }
        if (rc > 0 && (it[1].revents & ZMQ_POLLIN)) io_flush(s);
        if (rc > 0 && (it[0].revents & ZMQ_POLLIN)) {
            /* A bounded burst, so queued replies go out between bursts. */
            for (int i = 0; i < RECV_BURST; i++) {
                int got = io_recv_one(s);
                if (got < 0) {
                    io_fail(s, "receive");
                    return NULL;
                }
                if (got == 0) break;
            }
        }
        pthread_mutex_lock(&s->mu);
        int stop = s->io_stop;
        pthread_mutex_unlock(&s->mu);
        if (stop) break;
    }
    /* Drain: the compute thread has answered what was queued; send it, then
     * answer what still arrives with SHUTTING_DOWN until a quiet spell. */
    io_flush(s);
    int64_t until = gn_wire_now_ms() + (s->p.drain_ms > 0 ? s->p.drain_ms : 0);
    while (gn_wire_now_ms() < until) {
        zmq_pollitem_t it = {s->sock, 0, ZMQ_POLLIN, 0};
        int left = (int)(until - gn_wire_now_ms());
        int rc = zmq_poll(&it, 1, left > 50 ? 50 : (left > 0 ? left : 0));
        if (rc <= 0) break;
        if (io_recv_one(s) <= 0) break;
    }
    return NULL;
}

/* ---- the compute thread ---------------------------------------------------------- */

/* Encodes env as j's reply (j->env is freed here, after the encode: replies
 * may point into their request). A reply that cannot be encoded (out of
 * memory) becomes a small Error(ERROR_INTERNAL); when even that fails,
 * j->reply stays NULL and io_flush answers the Error itself. The client is
 * answered either way instead of waiting out its timeout. */
static void set_reply(gn_step_server *s, job *j, const gn_wire_env *env) {
    uint8_t *buf = NULL;
    size_t len = 0;
    if (encode(s, env, &buf, &len) != 0) {
        gn_wire_env ee;
        Genarm__V1__Error er;
        make_error(s, &ee, &er, j->request_id, GENARM__V1__ERROR_CODE__ERROR_INTERNAL,
                   "worker could not encode its reply");
        if (encode(s, &ee, &buf, &len) != 0) buf = NULL;
    }
    j->reply = buf;
    j->reply_len = buf ? len : 0;
    gn_wire_env_free(j->env);
    j->env = NULL;
}

static void set_error(gn_step_server *s, job *j, int code, const char *msg) {
    gn_wire_env env;
    Genarm__V1__Error er;
    if (code <= 0) code = GENARM__V1__ERROR_CODE__ERROR_INTERNAL;
    make_error(s, &env, &er, j->env->request_id, code, msg && msg[0] ? msg : "request failed");
    set_reply(s, j, &env);
}

/* Hands answered jobs to the I/O thread and wakes it. */
static void post(gn_step_server *s, job **js, int n) {
    if (n <= 0) return;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < n; i++) q_push(&s->out, js[i]);
    pthread_mutex_unlock(&s->mu);
    uint64_t one = 1;
    if (write(s->efd, &one, sizeof one) < 0) {
        /* EAGAIN: the counter is saturated, the I/O thread is woken anyway */
    }
}

/* Serves one non-step request (Release, RowFetch, command) on this thread. */
static void serve_other(gn_step_server *s, job *j) {
    const gn_wire_env *req = j->env;
    gn_err e = {0};
    gn_wire_env out;
    gn_wire_env_init(&out, req->request_id);
    int code = 0;
    switch (req->body_case) {
    case GENARM__V1__ENVELOPE__BODY_RELEASE: {
        Genarm__V1__ReleaseResult rr = GENARM__V1__RELEASE_RESULT__INIT;
        if ((code = s->h.release(s->h.ud, req->release, &rr.released, &e)) == 0) {
            out.body_case = GENARM__V1__ENVELOPE__BODY_RELEASE_RESULT;
            out.release_result = &rr;
            set_reply(s, j, &out);
        }
        break;
    }
    case GENARM__V1__ENVELOPE__BODY_FETCH: {
        Genarm__V1__RowFetchResult fr = GENARM__V1__ROW_FETCH_RESULT__INIT;
        if ((code = s->h.fetch(s->h.ud, req->fetch, &fr, &e)) == 0) {
            out.body_case = GENARM__V1__ENVELOPE__BODY_FETCH_RESULT;
            out.fetch_result = &fr;
            set_reply(s, j, &out);
        }
        break;
    }
    default: { /* LoadModel / UnloadModel / PromoteModel (checked by the I/O thread) */
        Genarm__V1__CommandResult cr = GENARM__V1__COMMAND_RESULT__INIT;
        if ((code = s->h.command(s->h.ud, req, &cr, &e)) == 0) {
            out.body_case = GENARM__V1__ENVELOPE__BODY_COMMAND_RESULT;
            out.command_result = &cr;
            set_reply(s, j, &out);
        }
        break;
    }
    }
    if (code) set_error(s, j, code, e.msg);
    post(s, &j, 1);
}

static int same_peer(const uint8_t *a, size_t al, const uint8_t *b, size_t bl) {
    return al == bl && memcmp(a, b, al) == 0;
}

/* 1 when a Release names a sequence that a step already in the batch steps. */
static int release_hits_batch(gn_step_server *s, int n_batch, const Genarm__V1__Release *rel) {
    for (int b = 0; b < n_batch; b++) {
        const gn_wire_step_req *r = s->batch[b]->env->step;
        for (size_t i = 0; i < r->n_seqs; i++)
            for (size_t k = 0; k < rel->n_seq_ids; k++)
                if (r->seqs[i]->seq_id == rel->seq_ids[k]) return 1;
    }
    return 0;
}

/* The statistics of a peer when the table has them (a lookup: nothing is
 * added, replaced or stamped), else NULL. */
static const peer_stat *peer_find(const gn_step_server *s, const uint8_t *ident, size_t len) {
    for (int i = 0; i < PEER_STATS; i++)
        if (s->pstat[i].stamp && same_peer(s->pstat[i].ident, s->pstat[i].len, ident, len)) return &s->pstat[i];
    return NULL;
}

/* The statistics of a peer (a slot replaced when it is new and the table is
 * full: the least recently used). */
static peer_stat *peer_stats(gn_step_server *s, const uint8_t *ident, size_t len) {
    peer_stat *old = &s->pstat[0];
    for (int i = 0; i < PEER_STATS; i++) {
        peer_stat *p = &s->pstat[i];
        if (p->stamp && same_peer(p->ident, p->len, ident, len)) {
            p->stamp = ++s->pstat_clock;
            return p;
        }
        if (p->stamp < old->stamp) old = p;
    }
    memset(old, 0, sizeof *old);
    memcpy(old->ident, ident, len);
    old->len = len;
    old->stamp = ++s->pstat_clock;
    return old;
}

/* A step of a peer joined the batch: its turnaround since its last reply. */
static void peer_came_back(gn_step_server *s, const job *j) {
    peer_stat *p = peer_stats(s, j->ident, j->ident_len);
    if (p->reply_us > 0 && j->recv_us >= p->reply_us) {
        int64_t t = j->recv_us - p->reply_us;
        p->turn_us = p->turn_us ? (3 * p->turn_us + t) / 4 : t;
    }
    p->reply_us = 0;
}

/* How long to wait for the peers served in the previous batch that have no
 * request in this one yet: twice the slowest one's turnaround plus 0.5 ms,
 * at most gather_us (the whole window for a peer never measured). Returns 0
 * when none is missing. */
static int64_t missing_wait_us(gn_step_server *s, int n_batch) {
    int64_t wait = 0;
    for (int p = 0; p < s->n_peers; p++) {
        int here = 0;
        for (int b = 0; b < n_batch && !here; b++)
            here = same_peer(s->peers[p], s->peer_len[p], s->batch[b]->ident, s->batch[b]->ident_len);
        if (here) continue;
        const peer_stat *st = peer_find(s, s->peers[p], s->peer_len[p]);
        int64_t w = st && st->turn_us > 0 ? 2 * st->turn_us + 500 : s->p.gather_us;
        if (w > wait) wait = w;
    }
    return wait < s->p.gather_us ? wait : s->p.gather_us;
}

/* Runs the handler over the batch and posts every reply. */
static void run_batch(gn_step_server *s, int n) {
    for (int i = 0; i < n; i++) {
        gn_wire_step_resp r0 = GENARM__V1__STEP_RESPONSE__INIT;
        s->resps[i] = r0;
        s->resp_ptrs[i] = &s->resps[i];
        s->reqs[i] = s->batch[i]->env->step;
        s->codes[i] = 0;
        s->errs[i].code = 0;
        s->errs[i].msg[0] = 0;
    }
    atomic_fetch_add(&s->n_batches, 1);
    atomic_fetch_add(&s->n_batched, (uint64_t)n);
    s->h.step(s->h.ud, s->reqs, n, s->resp_ptrs, s->codes, s->errs);
    for (int i = 0; i < n; i++) {
        job *j = s->batch[i];
        if (s->codes[i]) {
            set_error(s, j, s->codes[i], s->errs[i].msg);
            continue;
        }
        gn_wire_env out;
        gn_wire_env_init(&out, j->env->request_id);
        out.body_case = GENARM__V1__ENVELOPE__BODY_STEP_RESULT;
        out.step_result = &s->resps[i];
        set_reply(s, j, &out);
    }
    /* The peers to wait for before the next batch: this batch's (recorded
     * before the jobs go to the I/O thread, which frees them), and when their
     * replies left. */
    int64_t posted = now_us();
    for (int i = 0; i < n; i++) peer_stats(s, s->batch[i]->ident, s->batch[i]->ident_len)->reply_us = posted;
    s->n_peers = 0;
    for (int i = 0; i < n; i++) {
        int seen = 0;
        for (int p = 0; p < s->n_peers && !seen; p++)
            seen = same_peer(s->peers[p], s->peer_len[p], s->batch[i]->ident, s->batch[i]->ident_len);
        if (!seen && s->n_peers < s->p.max_batch_seqs) {
            memcpy(s->peers[s->n_peers], s->batch[i]->ident, s->batch[i]->ident_len);
            s->peer_len[s->n_peers++] = s->batch[i]->ident_len;
        }
    }
    post(s, s->batch, n);
}

/* One round: takes steps into a batch in arrival order (RowFetch and Release
 * are served on the way), waits for expected peers within the gather window,
 * runs the batch, then the releases that had to wait for it. A command at the
 * head of the queue runs alone. */
static void serve_round(gn_step_server *s, volatile sig_atomic_t *stop) {
    int n_batch = 0, n_seqs = 0, n_after = 0;
    int64_t deadline = -1, waited_us = 0;
    for (;;) {
        job *now_list = NULL, **now_tail = &now_list;
        job *cmd = NULL;
        int full = 0;
        pthread_mutex_lock(&s->mu);
        job *prev = NULL, *j = s->in.head; /* every job passed is unlinked: prev stays NULL */
        while (j) {
            job *next = j->next;
            int bc = j->env->body_case;
            if (bc == GENARM__V1__ENVELOPE__BODY_STEP) {
                int k = (int)j->env->step->n_seqs;
                if (n_batch > 0 && (n_batch == s->p.max_batch_seqs || n_seqs + k > s->p.max_batch_seqs)) {
                    full = 1;
                    break;
                }
                q_unlink(&s->in, prev, j);
                s->in_bytes -= j->frame_bytes;
                s->batch[n_batch++] = j;
                n_seqs += k;
                peer_came_back(s, j);
            } else if (bc == GENARM__V1__ENVELOPE__BODY_FETCH || bc == GENARM__V1__ENVELOPE__BODY_RELEASE) {
                q_unlink(&s->in, prev, j);
                s->in_bytes -= j->frame_bytes;
                if (bc == GENARM__V1__ENVELOPE__BODY_RELEASE && n_after < QUEUE_MAX_JOBS &&
                    release_hits_batch(s, n_batch, j->env->release)) {
                    s->after[n_after++] = j;
                } else {
                    *now_tail = j;
                    now_tail = &j->next;
                }
            } else { /* a command: a barrier */
                if (n_batch == 0) {
                    q_unlink(&s->in, prev, j);
                    s->in_bytes -= j->frame_bytes;
                    cmd = j;
                }
                full = 1;
                break;
            }
            j = next; /* j was unlinked: prev stays */
        }
        pthread_mutex_unlock(&s->mu);
        while (now_list) { /* before the batch */
            job *n = now_list->next;
            now_list->next = NULL;
            serve_other(s, now_list);
            now_list = n;
        }
        if (cmd) {
            serve_other(s, cmd);
            return;
        }
        if (n_batch == 0) break;
        if (full || s->p.gather_us == 0 || *stop) break;
        int64_t t = now_us(), wait = missing_wait_us(s, n_batch);
        if (wait == 0) break;
        if (deadline < 0) deadline = t + wait;
        if (t >= deadline) break;
        /* Wait for a new request (or the end of the window). */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t ns = (int64_t)ts.tv_nsec + (deadline - t) * 1000;
        ts.tv_sec += (time_t)(ns / 1000000000);
        ts.tv_nsec = (long)(ns % 1000000000);
        pthread_mutex_lock(&s->mu);
        int have = s->in.n, failed = s->io_failed;
        if (!have && !failed) pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        pthread_mutex_unlock(&s->mu);
        waited_us += now_us() - t;
        if (failed) break; /* nothing more will arrive: no spinning to the deadline */
    }
    if (n_batch > 0) {
        atomic_store(&s->last_gather_us, (uint64_t)waited_us);
        if (waited_us > 0) {
            atomic_fetch_add(&s->n_gather_waits, 1);
            atomic_fetch_add(&s->gather_us_total, (uint64_t)waited_us);
        }
        run_batch(s, n_batch);
    }
    for (int i = 0; i < n_after; i++) serve_other(s, s->after[i]);
}

/* Stop: answers everything still queued with SHUTTING_DOWN and lets the I/O
 * thread drain. */
static void shut_down(gn_step_server *s) {
    pthread_mutex_lock(&s->mu);
    s->draining = 1;
    job *j = s->in.head;
    s->in.head = s->in.tail = NULL;
    s->in.n = 0;
    s->in_bytes = 0;
    pthread_mutex_unlock(&s->mu);
    while (j) {
        job *n = j->next;
        j->next = NULL;
        set_error(s, j, GENARM__V1__ERROR_CODE__ERROR_SHUTTING_DOWN, "worker is shutting down");
        post(s, &j, 1);
        j = n;
    }
    pthread_mutex_lock(&s->mu);
    s->io_stop = 1;
    pthread_mutex_unlock(&s->mu);
    uint64_t one = 1;
    if (write(s->efd, &one, sizeof one) < 0) {
    }
}

int gn_step_server_run(gn_step_server *s, volatile sig_atomic_t *stop, gn_err *err) {
    gn_wire_log("info", s->comp, "event=serving endpoints=%s worker_id=%s gather_us=%d max_batch_seqs=%d",
                s->endpoints, s->worker_id, s->p.gather_us, s->p.max_batch_seqs);
    /* The I/O thread takes no signals: they land on this thread, whose
     * waits are all bounded by tick_ms, so *stop is seen promptly. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_t io;
    int prc = pthread_create(&io, NULL, io_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (prc != 0) return gn_errf(err, GN_EIO, "step server: cannot start the I/O thread: %s", strerror(prc));
    int64_t next_tick = gn_wire_now_ms() + s->p.tick_ms;
    int rc = 0;
    while (!*stop) {
        pthread_mutex_lock(&s->mu);
        if (s->io_failed) {
            rc = gn_errf(err, GN_EIO, "%s", s->io_err);
            pthread_mutex_unlock(&s->mu);
            break;
        }
        if (s->in.n == 0) {
            int64_t left = next_tick - gn_wire_now_ms();
            if (left > 0) {
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                int64_t ns = (int64_t)ts.tv_nsec + left * 1000000;
                ts.tv_sec += (time_t)(ns / 1000000000);
                ts.tv_nsec = (long)(ns % 1000000000);
                pthread_cond_timedwait(&s->cv, &s->mu, &ts);
            }
        }
        int have = s->in.n;
        pthread_mutex_unlock(&s->mu);
        if (have && !*stop) serve_round(s, stop);
        int64_t now = gn_wire_now_ms();
        if (now >= next_tick) {
            next_tick = now + s->p.tick_ms;
            if (s->h.tick) s->h.tick(s->h.ud, now);
        }
    }
    gn_wire_log("info", s->comp, "event=draining drain_ms=%d", s->p.drain_ms);
    shut_down(s);
    pthread_join(io, NULL);
    gn_step_server_stats st;
    gn_step_server_stats_get(s, &st);
    gn_wire_log("info", s->comp, "event=stopped requests=%llu errors=%llu batches=%llu batched_requests=%llu",
                (unsigned long long)st.requests, (unsigned long long)st.errors,
                (unsigned long long)st.batches, (unsigned long long)st.batched_requests);
    return rc;
}
