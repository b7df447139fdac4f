/* step_client.c — DEALER client with request ids and timeouts (see step_client.h). */
#include "step_client.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <zmq.h>

#include "gn_alloc.h"
#include "step_server.h" /* gn_wire_now_ms */

struct gn_step_client {
    gn_step_client_params p;
    void *ctx;
    int own_ctx;
    void *sock;
    void *mon; /* PAIR socket receiving the socket monitor's events, or NULL */
    uint64_t next_id;
    gn_step_link link;
    char endpoint[256];
};

gn_step_client_params gn_step_client_default_params(void) {
    gn_step_client_params p = {
        .send_timeout_ms = 1000,
        .reconnect_ivl_ms = 100,
        .reconnect_ivl_max_ms = 2000,
        .limits = gn_wire_default_limits(),
    };
    return p;
}

void *gn_step_context_new(void) { return zmq_ctx_new(); }

void gn_step_context_free(void *ctx) {
    if (ctx)
        zmq_ctx_term(ctx);
}

/* Watches the connection of c->sock: the monitor publishes events on an
 * inproc PAIR that gn_step_clients_wait reads. Without it (monitor setup
 * failed) the client still works; only dead peers are then found by timeouts. */
static void monitor_start(gn_step_client *c) {
    char addr[64];
    snprintf(addr, sizeof addr, "inproc://gn-step-mon-%p", (void *)c);
    if (zmq_socket_monitor(c->sock, addr, ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_CLOSED) != 0)
        return;
    void *m = zmq_socket(c->ctx, ZMQ_PAIR);
    int linger = 0;
    if (m && zmq_setsockopt(m, ZMQ_LINGER, &linger, sizeof linger) == 0 && zmq_connect(m, addr) == 0) {
        c->mon = m;
        return;
    }
    if (m)
        zmq_close(m);
    zmq_socket_monitor(c->sock, NULL, 0);
}

/* Reads every pending monitor event into c->link. */
static void monitor_drain(gn_step_client *c) {
    while (c->mon) {
        zmq_msg_t ev;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, c->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            return;
        }
        uint16_t event = 0;
        if (zmq_msg_size(&ev) >= 2)
            memcpy(&event, zmq_msg_data(&ev), 2); /* host order: the monitor's own layout */
        int more = zmq_msg_more(&ev);
        zmq_msg_close(&ev);
        while (more) { /* the second frame: the endpoint */
            zmq_msg_t x;
            zmq_msg_init(&x);
            if (zmq_msg_recv(&x, c->mon, 0) < 0) {
                zmq_msg_close(&x);
                break;
            }
            more = zmq_msg_more(&x);
            zmq_msg_close(&x);
        }
        if (event == ZMQ_EVENT_CONNECTED && !c->link.connected) {
            c->link.connected = 1;
            c->link.since_ms = gn_wire_now_ms();
        } else if ((event == ZMQ_EVENT_DISCONNECTED || event == ZMQ_EVENT_CLOSED) && c->link.connected) {
            c->link.connected = 0;
            c->link.disconnects++;
            c->link.since_ms = gn_wire_now_ms();
        }
    }
}

gn_step_client *gn_step_client_create(const char *endpoint, const gn_step_client_params *p,
                                      gn_err *err) {
    gn_step_client *c = gn_calloc(1, sizeof *c);
    if (!c) {
        gn_errf(err, GN_ENOMEM, "step client: out of memory");
        return NULL;
    }
    c->p = p ? *p : gn_step_client_default_params();
    snprintf(c->endpoint, sizeof c->endpoint, "%s", endpoint);
    c->link.since_ms = gn_wire_now_ms();
    /* Request ids start at a clock-derived value so a restarted client does
     * not collide with replies still in flight for its predecessor. */
    c->next_id = ((uint64_t)gn_wire_now_ms() << 20) | 1;
    c->ctx = c->p.zmq_ctx;
    if (!c->ctx) {
        c->ctx = zmq_ctx_new();
        c->own_ctx = 1;
    }
    if (!c->ctx || !(c->sock = zmq_socket(c->ctx, ZMQ_DEALER))) {
        gn_errf(err, GN_EIO, "zmq socket: %s", zmq_strerror(errno));
        gn_step_client_free(c);
        return NULL;
    }
    monitor_start(c);
    int linger = 0;
    int64_t maxmsg = (int64_t)c->p.limits.max_frame_bytes;
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(c->sock, ZMQ_SNDTIMEO, &c->p.send_timeout_ms, sizeof(int));
    zmq_setsockopt(c->sock, ZMQ_RECONNECT_IVL, &c->p.reconnect_ivl_ms, sizeof(int));
    zmq_setsockopt(c->sock, ZMQ_RECONNECT_IVL_MAX, &c->p.reconnect_ivl_max_ms, sizeof(int));
    zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if (zmq_connect(c->sock, endpoint) != 0) {
        gn_errf(err, GN_EIO, "connect %s: %s", endpoint, zmq_strerror(errno));
        gn_step_client_free(c);
        return NULL;
    }
    return c;
}

void gn_step_client_free(gn_step_client *c) {
    if (!c)
        return;
    if (c->mon) {
        zmq_socket_monitor(c->sock, NULL, 0);
        zmq_close(c->mon);
    }
    if (c->sock)
        zmq_close(c->sock);
    if (c->ctx && c->own_ctx)
        zmq_ctx_term(c->ctx);
    gn_free(c);
}

const char *gn_step_client_endpoint(const gn_step_client *c) { return c->endpoint; }

void gn_step_client_link(gn_step_client *c, gn_step_link *out) {
    monitor_drain(c);
    *out = c->link;
}

int gn_step_clients_wait(gn_step_client *const *cs, int n, int timeout_ms, unsigned char *readable,
                         gn_err *err) {
    enum { MAXC = 256 };
    if (n < 0 || n > MAXC)
        return gn_errf(err, GN_EINVAL, "step clients: %d to wait for (at most %d)", n, MAXC);
    zmq_pollitem_t it[2 * MAXC];
    int idx[2 * MAXC], ni = 0;
    for (int i = 0; i < n; i++) {
        readable[i] = 0;
        it[ni] = (zmq_pollitem_t){cs[i]->sock, 0, ZMQ_POLLIN, 0};
        idx[ni++] = i;
        if (cs[i]->mon) {
            it[ni] = (zmq_pollitem_t){cs[i]->mon, 0, ZMQ_POLLIN, 0};
            idx[ni++] = -1 - i;
        }
    }
    int rc = zmq_poll(it, ni, timeout_ms < 0 ? 0 : timeout_ms);
    if (rc < 0 && errno != EINTR)
        return gn_errf(err, GN_EIO, "poll: %s", zmq_strerror(errno));
    int got = 0;
    for (int k = 0; rc > 0 && k < ni; k++) {
        if (!(it[k].revents & ZMQ_POLLIN))
            continue;
        if (idx[k] >= 0) {
            readable[idx[k]] = 1;
            got++;
        } else {
            monitor_drain(cs[-1 - idx[k]]);
        }
    }
    return got;
}

int gn_step_client_send_raw(gn_step_client *c, const void *buf, size_t len, gn_err *err) {
    if (zmq_send(c->sock, buf, len, 0) < 0)
        return gn_errf(err, GN_EIO, "send: %s", errno == EAGAIN ? "timeout (queue full)"
                                                                : zmq_strerror(errno));
    return 0;
}

int gn_step_client_send(gn_step_client *c, gn_wire_env *env, uint64_t *request_id, gn_err *err) {
    env->protocol_version = GN_WIRE_PROTOCOL_VERSION;
    env->request_id = c->next_id++;
    uint8_t *buf;
    size_t len;
    int rc = gn_wire_encode(env, &buf, &len, err);
    if (rc)
        return rc;
    rc = gn_step_client_send_raw(c, buf, len, err);
    gn_free(buf);
    if (rc == 0 && request_id)
        *request_id = env->request_id;
    return rc;
}

/* Waits for one frame until the absolute monotonic deadline. 0 with *m
 * filled, or GN_EIO. */
static int recv_frame(gn_step_client *c, int64_t deadline, zmq_msg_t *m, gn_err *err) {
    for (;;) {
        int64_t left = deadline - gn_wire_now_ms();
        if (left < 0)
            left = 0;
        zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&it, 1, (long)left);
        if (rc < 0 && errno != EINTR)
            return gn_errf(err, GN_EIO, "poll: %s", zmq_strerror(errno));
        if (rc > 0) {
            zmq_msg_init(m);
            if (zmq_msg_recv(m, c->sock, ZMQ_DONTWAIT) >= 0) {
                /* A REQ-style delimiter never comes to a DEALER from our
                 * server, but skip one rather than misread it. */
                if (zmq_msg_size(m) == 0 && zmq_msg_more(m)) {
                    zmq_msg_close(m);
                    continue;
                }
                /* Drop trailing parts: our protocol has one part. */
                while (zmq_msg_more(m)) {
                    zmq_msg_t x;
                    zmq_msg_init(&x);
                    zmq_msg_recv(&x, c->sock, 0);
                    int more = zmq_msg_more(&x);
                    zmq_msg_close(&x);
                    if (!more)
                        break;
                }
                return 0;
            }
            zmq_msg_close(m);
            if (errno != EAGAIN && errno != EINTR)
                return gn_errf(err, GN_EIO, "receive: %s", zmq_strerror(errno));
        }
        if (gn_wire_now_ms() >= deadline)
            return gn_errf(err, GN_EIO, "timeout: no reply within the deadline");
    }
}

int gn_step_client_recv_raw(gn_step_client *c, int timeout_ms, uint8_t **buf, size_t *len,
                            gn_err *err) {
    zmq_msg_t m;
    int rc = recv_frame(c, gn_wire_now_ms() + timeout_ms, &m, err);
    if (rc)
        return rc;
    size_t n = zmq_msg_size(&m);
    *buf = gn_malloc(n ? n : 1);
    if (!*buf) {
        zmq_msg_close(&m);
        return gn_errf(err, GN_ENOMEM, "out of memory");
    }
    memcpy(*buf, zmq_msg_data(&m), n);
    *len = n;
    zmq_msg_close(&m);
    return 0;
}

/* Decodes frame m (closed here) and validates a StepResponse or
 * RowFetchResult body. Returns 0 with *out; else *out = NULL, *rid = the
 * frame's request id when it parsed (else 0), and either gn_wire_decode's
 * code (*bad_body 0) or GN_EFORMAT for a body that failed its check (*bad_body
 * 1, err prefixed with the request id). */
static int decode_checked(gn_step_client *c, zmq_msg_t *m, gn_wire_env **out, uint64_t *rid, int *bad_body,
                          gn_err *err) {
    *out = NULL;
    *bad_body = 0;
    gn_wire_env *env = NULL;
    int code;
    int rc = gn_wire_decode(zmq_msg_data(m), zmq_msg_size(m), &c->p.limits, &env, &code, rid, err);
    zmq_msg_close(m);
    if (rc)
        return rc;
    if ((env->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT &&
         gn_wire_step_resp_check(env->step_result, err) != 0) ||
        (env->body_case == GENARM__V1__ENVELOPE__BODY_FETCH_RESULT &&
         gn_wire_fetch_result_check(env->fetch_result, err) != 0)) {
        gn_wire_env_free(env);
        gn_err_prefix(err, "reply to request %llu: ", (unsigned long long)*rid);
        *bad_body = 1;
        return GN_EFORMAT;
    }
    *out = env;
    return 0;
}

int gn_step_client_recv(gn_step_client *c, uint64_t request_id, int timeout_ms,
                        gn_wire_env **reply, gn_err *err) {
    *reply = NULL;
    int64_t deadline = gn_wire_now_ms() + timeout_ms;
    for (;;) {
        zmq_msg_t m;
        int rc = recv_frame(c, deadline, &m, err);
        if (rc)
            return rc;
        gn_wire_env *env = NULL;
        uint64_t rid;
        int bad_body;
        rc = decode_checked(c, &m, &env, &rid, &bad_body, err);
        if (rc != 0 && rid != request_id)
            continue; /* garbage for someone else's (timed-out) request: drop */
        if (rc != 0)
            return bad_body ? rc : gn_err_prefix(err, "reply to request %llu: ", (unsigned long long)request_id);
        if (env->request_id != request_id) {
            gn_wire_env_free(env); /* a late reply to a request that timed out */
            continue;
        }
        *reply = env;
        return 0;
    }
}

int gn_step_client_recv_any(gn_step_client *c, int timeout_ms, gn_wire_env **reply,
                            uint64_t *request_id, gn_err *err) {
    *reply = NULL;
    *request_id = 0;
    zmq_msg_t m;
    int rc = recv_frame(c, gn_wire_now_ms() + timeout_ms, &m, err);
    if (rc)
        return rc;
    int bad_body;
    rc = decode_checked(c, &m, reply, request_id, &bad_body, err);
    return rc ? GN_EFORMAT : 0;
}

int gn_step_client_call(gn_step_client *c, gn_wire_env *env, int timeout_ms, gn_wire_env **reply,
                        gn_err *err) {
    uint64_t id;
    *reply = NULL;
    int rc = gn_step_client_send(c, env, &id, err);
    if (rc)
        return rc;
    return gn_step_client_recv(c, id, timeout_ms, reply, err);
}

int gn_step_client_step_send(gn_step_client *c, const char *model_name, uint32_t model_version,
                             const gn_step_seq *seqs, int n, gn_dtype dtype, uint64_t *request_id,
                             gn_err *err) {
    if (n < 0)
        return gn_errf(err, GN_EINVAL, "negative sequence count");
    Genarm__V1__SeqStep *steps = gn_calloc(n ? (size_t)n : 1, sizeof *steps);
    Genarm__V1__SeqStep **ptrs = gn_calloc(n ? (size_t)n : 1, sizeof *ptrs);
    int rc;
    if (!steps || !ptrs) {
        rc = gn_errf(err, GN_ENOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        Genarm__V1__SeqStep s = GENARM__V1__SEQ_STEP__INIT;
        s.seq_id = seqs[i].seq_id;
        s.start_pos = seqs[i].start_pos;
        s.n_tokens = seqs[i].n_tokens > 0 ? (size_t)seqs[i].n_tokens : 0;
        s.tokens = (int32_t *)seqs[i].tokens;
        s.all_logits = seqs[i].all_logits != 0;
        s.release_after = seqs[i].release_after != 0;
        s.top_k = seqs[i].top_k;
        steps[i] = s;
        ptrs[i] = &steps[i];
    }
    Genarm__V1__ModelRef mr = GENARM__V1__MODEL_REF__INIT;
    mr.name = (char *)(model_name ? model_name : "");
    mr.version = model_version;
    gn_wire_step_req req = GENARM__V1__STEP_REQUEST__INIT;
    req.model = &mr;
    req.n_seqs = (size_t)n;
    req.seqs = ptrs;
    req.dtype = gn_wire_dtype_to_proto(dtype);
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    env.body_case = GENARM__V1__ENVELOPE__BODY_STEP;
    env.step = &req;
    rc = gn_step_client_send(c, &env, request_id, err);
out:
    gn_free(steps);
    gn_free(ptrs);
    return rc;
}

int gn_step_client_fetch_send(gn_step_client *c, const char *model_name, uint32_t model_version,
                              const gn_fetch_seq *seqs, int n, uint64_t *request_id, gn_err *err) {
    if (n < 0)
        return gn_errf(err, GN_EINVAL, "negative sequence count");
    Genarm__V1__FetchSeq *fs = gn_calloc(n ? (size_t)n : 1, sizeof *fs);
    Genarm__V1__FetchSeq **ptrs = gn_calloc(n ? (size_t)n : 1, sizeof *ptrs);
    int rc;
    if (!fs || !ptrs) {
        rc = gn_errf(err, GN_ENOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        Genarm__V1__FetchSeq f = GENARM__V1__FETCH_SEQ__INIT;
        f.seq_id = seqs[i].seq_id;
        f.seq_len = seqs[i].seq_len;
        f.full_row = seqs[i].full_row != 0;
        if (!f.full_row) {
            f.n_ids = seqs[i].n_ids > 0 ? (size_t)seqs[i].n_ids : 0;
            f.ids = (int32_t *)seqs[i].ids;
        }
        fs[i] = f;
        ptrs[i] = &fs[i];
    }
    Genarm__V1__ModelRef mr = GENARM__V1__MODEL_REF__INIT;
    mr.name = (char *)(model_name ? model_name : "");
    mr.version = model_version;
    Genarm__V1__RowFetch req = GENARM__V1__ROW_FETCH__INIT;
    req.model = &mr;
    req.n_seqs = (size_t)n;
    req.seqs = ptrs;
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    env.body_case = GENARM__V1__ENVELOPE__BODY_FETCH;
    env.fetch = &req;
    rc = gn_step_client_send(c, &env, request_id, err);
out:
    gn_free(fs);
    gn_free(ptrs);
    return rc;
}

int gn_step_client_release_send(gn_step_client *c, const char *model_name,
                                uint32_t model_version, const uint64_t *seq_ids, int n,
                                uint64_t *request_id, gn_err *err) {
    Genarm__V1__ModelRef mr = GENARM__V1__MODEL_REF__INIT;
    mr.name = (char *)(model_name ? model_name : "");
    mr.version = model_version;
    Genarm__V1__Release rel = GENARM__V1__RELEASE__INIT;
    rel.model = &mr;
    rel.n_seq_ids = n > 0 ? (size_t)n : 0;
    rel.seq_ids = (uint64_t *)seq_ids;
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    env.body_case = GENARM__V1__ENVELOPE__BODY_RELEASE;
    env.release = &rel;
    return gn_step_client_send(c, &env, request_id, err);
}

int gn_step_resp_logprobs_view(const gn_wire_step_resp *resp, float *dst, size_t dst_cap,
                               const float **out, uint64_t *rows, uint64_t *cols, gn_err *err) {
    gn_dtype dt;
    if (gn_wire_tensor_check(resp->logprobs, &dt, err) != 0)
        return GN_EFORMAT;
    const Genarm__V1__Tensor *t = resp->logprobs;
    if (dt == GN_F32 && GN_WIRE_HOST_LE && ((uintptr_t)t->data.data % _Alignof(float)) == 0) {
        *rows = t->rows;
        *cols = t->cols;
        *out = (const float *)(const void *)t->data.data;
        return 0;
    }
    *out = dst;
    return gn_step_resp_logprobs_f32(resp, dst, dst_cap, rows, cols, err);
}

int gn_step_resp_logprobs_f32(const gn_wire_step_resp *resp, float *dst, size_t dst_cap,
                              uint64_t *rows, uint64_t *cols, gn_err *err) {
    gn_dtype dt;
    if (gn_wire_tensor_check(resp->logprobs, &dt, err) != 0)
        return GN_EFORMAT;
    const Genarm__V1__Tensor *t = resp->logprobs;
    size_t n = (size_t)t->rows * (size_t)t->cols; /* checked by gn_wire_tensor_check */
    if (n > dst_cap)
        return gn_errf(err, GN_ERANGE, "log-probs: %zu values, room for %zu", n, dst_cap);
    *rows = t->rows;
    *cols = t->cols;
    return gn_wire_unpack_f32(t->data.data, t->data.len, dt, n, dst, err);
}
