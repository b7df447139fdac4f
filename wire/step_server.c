/* step_server.c — ROUTER loop: receive, validate, dispatch, reply (see step_server.h). */
#include "step_server.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <zmq.h>

#include "gn_alloc.h"

#define MAX_PARTS 3 /* identity, optional empty delimiter, envelope */

struct gn_step_server {
    gn_step_server_params p;
    gn_step_handlers h;
    void *ctx;
    void *sock;
    char endpoint[256];
    char worker_id[128];
    char comp[64];
    int draining;
    uint64_t n_requests, n_errors;
};

int64_t gn_wire_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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
        .limits = gn_wire_default_limits(),
    };
    return p;
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
    s->p = *p;
    s->h = *h;
    if (s->p.tick_ms <= 0)
        s->p.tick_ms = 100;
    snprintf(s->worker_id, sizeof s->worker_id, "%s", p->worker_id ? p->worker_id : "worker");
    snprintf(s->comp, sizeof s->comp, "%s", p->log_comp ? p->log_comp : "step_server");
    s->p.worker_id = s->worker_id;
    s->p.endpoint = NULL; /* not kept: the caller's string */
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
    if (zmq_bind(s->sock, p->endpoint) != 0) {
        gn_errf(err, GN_EIO, "bind %s: %s", p->endpoint, zmq_strerror(errno));
        goto fail;
    }
    size_t elen = sizeof s->endpoint;
    if (zmq_getsockopt(s->sock, ZMQ_LAST_ENDPOINT, s->endpoint, &elen) != 0)
        snprintf(s->endpoint, sizeof s->endpoint, "%s", p->endpoint);
    return s;
fail:
    gn_step_server_free(s);
    return NULL;
}

const char *gn_step_server_endpoint(const gn_step_server *s) { return s->endpoint; }

void gn_step_server_counts(const gn_step_server *s, uint64_t *requests, uint64_t *errors) {
    if (requests)
        *requests = s->n_requests;
    if (errors)
        *errors = s->n_errors;
}

void gn_step_server_free(gn_step_server *s) {
    if (!s)
        return;
    if (s->sock)
        zmq_close(s->sock);
    if (s->ctx)
        zmq_ctx_term(s->ctx);
    gn_free(s);
}

static void free_buf(void *data, void *hint) {
    (void)hint;
    gn_free(data);
}

/* Sends [identity][""?][payload]; takes ownership of payload (gn_malloc'd).
 * Never blocks: a peer whose queue is full loses the reply (logged). */
static void send_reply(gn_step_server *s, zmq_msg_t *ident, int with_delim, uint8_t *payload,
                       size_t len) {
    zmq_msg_t id, body;
    zmq_msg_init(&id);
    zmq_msg_copy(&id, ident);
    if (zmq_msg_send(&id, s->sock, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&id);
        gn_free(payload);
        gn_wire_log("warn", s->comp, "event=reply_dropped reason=\"%s\"", zmq_strerror(errno));
        return;
    }
    if (with_delim)
        zmq_send(s->sock, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT);
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

static void reply_env(gn_step_server *s, zmq_msg_t *ident, int with_delim, const gn_wire_env *env) {
    uint8_t *buf;
    size_t len;
    gn_err e = {0};
    if (gn_wire_encode(env, &buf, &len, &e) != 0) {
        gn_wire_log("error", s->comp, "event=encode_failed msg=\"%s\"", e.msg);
        return;
    }
    send_reply(s, ident, with_delim, buf, len);
}

static void reply_error(gn_step_server *s, zmq_msg_t *ident, int with_delim, uint64_t request_id,
                        int code, const char *msg) {
    gn_wire_env env;
    gn_wire_env_init(&env, request_id);
    Genarm__V1__Error er = GENARM__V1__ERROR__INIT;
    er.code = (Genarm__V1__ErrorCode)code;
    er.message = (char *)msg;
    env.body_case = GENARM__V1__ENVELOPE__BODY_ERROR;
    env.error = &er;
    s->n_errors++;
    gn_wire_log("warn", s->comp, "event=error_reply request_id=%llu code=%s msg=\"%s\"",
                (unsigned long long)request_id, gn_wire_code_name(code), msg);
    reply_env(s, ident, with_delim, &env);
}

/* Handles one decoded request envelope. */
static void dispatch(gn_step_server *s, zmq_msg_t *ident, int with_delim, const gn_wire_env *req) {
    gn_err e = {0};
    gn_wire_env out;
    gn_wire_env_init(&out, req->request_id);
    int code = 0;
    if (s->draining) {
        reply_error(s, ident, with_delim, req->request_id,
                    GENARM__V1__ERROR_CODE__ERROR_SHUTTING_DOWN, "worker is shutting down");
        return;
    }
    switch (req->body_case) {
    case GENARM__V1__ENVELOPE__BODY_STEP: {
        if (gn_wire_step_check(req->step, &s->p.limits, &code, &e) != 0)
            break;
        gn_wire_step_resp resp = GENARM__V1__STEP_RESPONSE__INIT;
        code = s->h.step(s->h.ud, req->step, &resp, &e);
        if (code == 0) {
            out.body_case = GENARM__V1__ENVELOPE__BODY_STEP_RESULT;
            out.step_result = &resp;
            reply_env(s, ident, with_delim, &out);
            return;
        }
        break;
    }
    case GENARM__V1__ENVELOPE__BODY_RELEASE: {
        Genarm__V1__ReleaseResult rr = GENARM__V1__RELEASE_RESULT__INIT;
        code = s->h.release(s->h.ud, req->release, &rr.released, &e);
        if (code == 0) {
            out.body_case = GENARM__V1__ENVELOPE__BODY_RELEASE_RESULT;
            out.release_result = &rr;
            reply_env(s, ident, with_delim, &out);
            return;
        }
        break;
    }
    case GENARM__V1__ENVELOPE__BODY_HEARTBEAT: {
        Genarm__V1__Heartbeat hb = GENARM__V1__HEARTBEAT__INIT;
        if (s->h.heartbeat)
            s->h.heartbeat(s->h.ud, &hb);
        hb.worker_id = s->worker_id;
        hb.unix_ms = unix_ms();
        hb.draining = s->draining;
        out.body_case = GENARM__V1__ENVELOPE__BODY_HEARTBEAT;
        out.heartbeat = &hb;
        reply_env(s, ident, with_delim, &out);
        return;
    }
    case GENARM__V1__ENVELOPE__BODY_LOAD:
    case GENARM__V1__ENVELOPE__BODY_UNLOAD:
    case GENARM__V1__ENVELOPE__BODY_PROMOTE: {
        if (!s->h.command) {
            code = GENARM__V1__ERROR_CODE__ERROR_UNSUPPORTED;
            gn_errf(&e, GN_EUNSUP, "%s does not load, unload or promote models", s->worker_id);
            break;
        }
        Genarm__V1__CommandResult cr = GENARM__V1__COMMAND_RESULT__INIT;
        code = s->h.command(s->h.ud, req, &cr, &e);
        if (code == 0) {
            out.body_case = GENARM__V1__ENVELOPE__BODY_COMMAND_RESULT;
            out.command_result = &cr;
            reply_env(s, ident, with_delim, &out);
            return;
        }
        break;
    }
    default:
        code = GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST;
        gn_errf(&e, GN_EINVAL, "envelope body %d is not a request", (int)req->body_case);
        break;
    }
    if (code <= 0)
        code = GENARM__V1__ERROR_CODE__ERROR_INTERNAL;
    reply_error(s, ident, with_delim, req->request_id, code, e.msg[0] ? e.msg : "request failed");
}

/* Receives one whole multipart message (non-blocking) and answers it.
 * Returns 1 when a message was handled, 0 when none was waiting, < 0 on a
 * socket error. */
static int handle_one(gn_step_server *s) {
    zmq_msg_t parts[MAX_PARTS];
    int n = 0, extra = 0;
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s->sock, n == 0 && extra == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            int en = errno;
            zmq_msg_close(&m);
            for (int i = 0; i < n; i++)
                zmq_msg_close(&parts[i]);
            if (n == 0 && (en == EAGAIN || en == EINTR))
                return 0;
            return GN_EIO;
        }
        int more = zmq_msg_more(&m);
        if (n < MAX_PARTS)
            parts[n++] = m;
        else {
            zmq_msg_close(&m);
            extra++;
        }
        if (!more)
            break;
    }
    s->n_requests++;
    /* Layout: [id][env] from DEALER, [id][""][env] from REQ. */
    int with_delim = n >= 2 && zmq_msg_size(&parts[1]) == 0;
    const zmq_msg_t *payload = NULL;
    if (!extra && n == 2 && !with_delim)
        payload = &parts[1];
    else if (!extra && n == 3 && with_delim)
        payload = &parts[2];
    if (n < 2) {
        /* No payload at all: a bare identity cannot be answered meaningfully. */
    } else if (!payload) {
        char msg[96];
        snprintf(msg, sizeof msg, "expected one envelope part, got %d parts", n - 1 - with_delim + extra);
        reply_error(s, &parts[0], with_delim, 0, GENARM__V1__ERROR_CODE__ERROR_BAD_FRAME, msg);
    } else {
        gn_err e = {0};
        gn_wire_env *req = NULL;
        int code;
        uint64_t rid;
        if (gn_wire_decode(zmq_msg_data((zmq_msg_t *)payload), zmq_msg_size((zmq_msg_t *)payload),
                           &s->p.limits, &req, &code, &rid, &e) != 0)
            reply_error(s, &parts[0], with_delim, rid, code, e.msg);
        else
            dispatch(s, &parts[0], with_delim, req);
        gn_wire_env_free(req);
    }
    for (int i = 0; i < n; i++)
        zmq_msg_close(&parts[i]);
    return 1;
}

int gn_step_server_run(gn_step_server *s, volatile sig_atomic_t *stop, gn_err *err) {
    gn_wire_log("info", s->comp, "event=serving endpoint=%s worker_id=%s", s->endpoint,
                s->worker_id);
    int64_t last_tick = gn_wire_now_ms();
    while (!*stop) {
        zmq_pollitem_t it = {s->sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&it, 1, s->p.tick_ms);
        if (rc < 0 && errno != EINTR)
            return gn_errf(err, GN_EIO, "zmq_poll: %s", zmq_strerror(errno));
        if (rc > 0 && (it.revents & ZMQ_POLLIN)) {
            /* A bounded burst, so ticks (idle sweeps) still run under load. */
            for (int i = 0; i < 64 && !*stop; i++) {
                int got = handle_one(s);
                if (got < 0)
                    return gn_errf(err, GN_EIO, "receive: %s", zmq_strerror(errno));
                if (got == 0)
                    break;
            }
        }
        int64_t now = gn_wire_now_ms();
        if (now - last_tick >= s->p.tick_ms) {
            last_tick = now;
            if (s->h.tick)
                s->h.tick(s->h.ud, now);
        }
    }
    /* Drain: answer what is already queued with SHUTTING_DOWN, then return. */
    s->draining = 1;
    gn_wire_log("info", s->comp, "event=draining drain_ms=%d", s->p.drain_ms);
    int64_t until = gn_wire_now_ms() + (s->p.drain_ms > 0 ? s->p.drain_ms : 0);
    while (gn_wire_now_ms() < until) {
        zmq_pollitem_t it = {s->sock, 0, ZMQ_POLLIN, 0};
        /* What is already queued shows up at once; stop after a short quiet spell. */
        int left = (int)(until - gn_wire_now_ms());
        int rc = zmq_poll(&it, 1, left > 50 ? 50 : (left > 0 ? left : 0));
        if (rc <= 0)
            break;
        if (handle_one(s) <= 0)
            break;
    }
    gn_wire_log("info", s->comp, "event=stopped requests=%llu errors=%llu",
                (unsigned long long)s->n_requests, (unsigned long long)s->n_errors);
    return 0;
}
