/* test_wire_step.c — the step server and client in process, over real
 * ZeroMQ sockets on loopback (no worker, no model): a reply the server cannot
 * encode (its allocation fails) is still answered, with an Error
 * ERROR_INTERNAL, instead of leaving the client to wait out its timeout —
 * both when the small Error can be encoded in its place and when even that
 * fails and the I/O thread answers; and both receive calls of the client
 * validate a RowFetchResult (a bare ROUTER socket plays the worker). */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <zmq.h>

#include "gn_alloc.h"
#include "gn_test.h"
#include "step_client.h"
#include "step_server.h"
#include "wire.h"

#define TIMEOUT_MS 5000

static volatile sig_atomic_t g_stop;
static _Atomic int g_fail_run; /* allocations to fail right after the step handler returns */

static void on_step(void *ud, const gn_wire_step_req *const *reqs, int n, gn_wire_step_resp *const *resps,
                    int *codes, gn_err *errs) {
    (void)ud;
    (void)reqs;
    (void)resps; /* an empty StepResponse each */
    (void)errs;
    for (int i = 0; i < n; i++) codes[i] = 0;
    int k = atomic_exchange(&g_fail_run, 0);
    if (k > 0) gn_alloc_fail_run(0, k); /* the next allocations: encoding the replies */
}

static int on_release(void *ud, const Genarm__V1__Release *rel, uint32_t *released, gn_err *err) {
    (void)ud;
    (void)rel;
    (void)err;
    *released = 0;
    return 0;
}

static void *serve(void *arg) {
    gn_err e = {0};
    if (gn_step_server_run(arg, &g_stop, &e) != 0) fprintf(stderr, "serve: %s\n", e.msg);
    return NULL;
}

/* One step of one sequence; the reply (NULL on a receive failure) and the
 * time it took. */
static gn_wire_env *step(gn_step_client *c, int64_t *ms, gn_err *e) {
    int32_t tok = 1;
    gn_step_seq sq = {.seq_id = 1, .start_pos = 0, .tokens = &tok, .n_tokens = 1};
    uint64_t id = 0;
    gn_wire_env *rep = NULL;
    int64_t t0 = gn_wire_now_ms();
    if (gn_step_client_step_send(c, NULL, 0, &sq, 1, GN_F32, &id, e) == 0)
        gn_step_client_recv(c, id, TIMEOUT_MS, &rep, e);
    *ms = gn_wire_now_ms() - t0;
    return rep;
}

static int is_internal(const gn_wire_env *rep) {
    return rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_ERROR &&
           rep->error->code == GENARM__V1__ERROR_CODE__ERROR_INTERNAL && rep->error->message &&
           strstr(rep->error->message, "could not encode");
}

static void test_encode_failure(void) {
    gn_err e = {0};
    gn_step_server_params sp = gn_step_server_default_params();
    sp.endpoint = "tcp://127.0.0.1:*";
    sp.worker_id = "test";
    sp.gather_us = 0;
    sp.drain_ms = 50;
    sp.linger_ms = 0;
    gn_step_handlers hd = {.step = on_step, .release = on_release};
    gn_step_server *s = gn_step_server_create(&sp, &hd, &e);
    CHECK(s != NULL, "server: %s", e.msg);
    if (!s) return;
    gn_step_client *c = gn_step_client_create(gn_step_server_endpoint(s), NULL, &e);
    CHECK(c != NULL, "client: %s", e.msg);
    pthread_t th;
    g_stop = 0;
    int started = pthread_create(&th, NULL, serve, s) == 0;
    CHECK(started, "server thread");
    if (c && started) {
        int64_t ms;
        gn_wire_env *rep = step(c, &ms, &e);
        CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT, "a plain step is answered: %s", e.msg);
        gn_wire_env_free(rep);

        /* The reply's encode fails; the Error in its place is encoded. */
        atomic_store(&g_fail_run, 1);
        rep = step(c, &ms, &e);
        CHECK(is_internal(rep) && ms < TIMEOUT_MS / 2, "reply not encodable: an INTERNAL Error at once (%lld ms: %s)",
              (long long)ms, rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_ERROR ? rep->error->message : e.msg);
        gn_wire_env_free(rep);

        /* Both fail: the I/O thread answers. */
        atomic_store(&g_fail_run, 2);
        rep = step(c, &ms, &e);
        CHECK(is_internal(rep) && ms < TIMEOUT_MS / 2,
              "neither the reply nor the Error encodable: the I/O thread answers (%lld ms: %s)", (long long)ms,
              rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_ERROR ? rep->error->message : e.msg);
        gn_wire_env_free(rep);

        rep = step(c, &ms, &e);
        CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT, "and serves on: %s", e.msg);
        gn_wire_env_free(rep);
    }
    gn_alloc_fail_after(-1);
    if (started) {
        g_stop = 1;
        pthread_join(th, NULL);
    }
    gn_step_client_free(c);
    gn_step_server_free(s);
}

/* A worker played by a bare ROUTER socket: answers the next request with a
 * RowFetchResult whose one result lies outside its values. */
static int answer_bad_fetch(void *router) {
    zmq_msg_t id, body;
    zmq_msg_init(&id);
    zmq_msg_init(&body);
    int ok = zmq_msg_recv(&id, router, 0) >= 0 && zmq_msg_more(&id) && zmq_msg_recv(&body, router, 0) >= 0;
    gn_wire_env *req = NULL;
    int code;
    uint64_t rid = 0;
    gn_err e = {0};
    ok = ok && gn_wire_decode(zmq_msg_data(&body), zmq_msg_size(&body), NULL, &req, &code, &rid, &e) == 0;
    if (ok) {
        float v = 1.0f;
        Genarm__V1__FetchResult r = GENARM__V1__FETCH_RESULT__INIT, *rp = &r;
        r.seq_id = 1;
        r.offset = 0;
        r.n = 3; /* one value sent */
        Genarm__V1__RowFetchResult fr = GENARM__V1__ROW_FETCH_RESULT__INIT;
        fr.results = &rp;
        fr.n_results = 1;
        fr.values.data = (uint8_t *)&v;
        fr.values.len = 4;
        gn_wire_env out;
        gn_wire_env_init(&out, rid);
        out.body_case = GENARM__V1__ENVELOPE__BODY_FETCH_RESULT;
        out.fetch_result = &fr;
        uint8_t *buf = NULL;
        size_t len = 0;
        ok = gn_wire_encode(&out, &buf, &len, &e) == 0 &&
             zmq_send(router, zmq_msg_data(&id), zmq_msg_size(&id), ZMQ_SNDMORE) >= 0 &&
             zmq_send(router, buf, len, 0) >= 0;
        gn_free(buf);
    }
    gn_wire_env_free(req);
    zmq_msg_close(&id);
    zmq_msg_close(&body);
    return ok;
}

/* gn_step_client_recv validates a RowFetchResult as gn_step_client_recv_any
 * does: values outside the bytes sent are GN_EFORMAT, not handed over. */
static void test_client_checks_fetch(void) {
    void *ctx = zmq_ctx_new();
    void *router = ctx ? zmq_socket(ctx, ZMQ_ROUTER) : NULL;
    char ep[256] = "";
    size_t len = sizeof ep;
    int linger = 0;
    int ok = router && zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger) == 0 &&
             zmq_bind(router, "tcp://127.0.0.1:*") == 0 && zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, ep, &len) == 0;
    CHECK(ok, "router: %s", zmq_strerror(zmq_errno()));
    gn_err e = {0};
    gn_step_client *c = ok ? gn_step_client_create(ep, NULL, &e) : NULL;
    CHECK(!ok || c != NULL, "client: %s", e.msg);
    if (c) {
        gn_fetch_seq fs = {.seq_id = 1, .seq_len = 1, .full_row = 1};
        uint64_t id = 0;
        gn_wire_env *rep = NULL;
        CHECK(gn_step_client_fetch_send(c, NULL, 0, &fs, 1, &id, &e) == 0 && answer_bad_fetch(router), "fetch sent, answered");
        int rc = gn_step_client_recv(c, id, TIMEOUT_MS, &rep, &e);
        CHECK(rc == GN_EFORMAT && rep == NULL && strstr(e.msg, "outside"),
              "recv: a fetch result outside its values is GN_EFORMAT (rc %d: %s)", rc, e.msg);
        gn_wire_env_free(rep);
        rep = NULL;
        uint64_t rid = 0;
        CHECK(gn_step_client_fetch_send(c, NULL, 0, &fs, 1, &id, &e) == 0 && answer_bad_fetch(router), "fetch sent, answered");
        rc = gn_step_client_recv_any(c, TIMEOUT_MS, &rep, &rid, &e);
        CHECK(rc == GN_EFORMAT && rep == NULL && rid == id && strstr(e.msg, "outside"),
              "recv_any: the same (rc %d: %s)", rc, e.msg);
        gn_wire_env_free(rep);
    }
    gn_step_client_free(c);
    if (router) zmq_close(router);
    if (ctx) zmq_ctx_term(ctx);
}

int main(void) {
    test_encode_failure();
    test_client_checks_fetch();
    GN_TEST_MAIN_END();
}
