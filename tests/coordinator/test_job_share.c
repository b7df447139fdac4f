/* test_job_share.c — coordinators sharing requests (coordinator/job_share.h):
 * the QueuedJob codec with malformed payloads, then two gn_share instances on
 * a private redis-server and real ZeroMQ sockets: a request exported by A and
 * run by B streams back to A's sink; A takes its own back; cancellation
 * reaches the executor; a silent executor gets its request re-queued; an
 * origin that goes away cancels its requests; bad entries are dropped or
 * answered with an error. */
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "control/redis_harness.h"
#include "gn_alloc.h"
#include "gn_test.h"
#include "job_share.h"

typedef struct tsink {
    gn_coord_sink base;
    pthread_mutex_t mu;
    char text[1024];
    size_t len;
    int n_text, n_tokens, n_token_events;
    int done, rc, n_choices, prompt_tokens;
    char msg[GN_ERR_MSG_MAX];
    char finish[16];
    char done_text[256];
} tsink;

static void t_text(gn_coord_sink *s, int index, const char *text, size_t len, int n_tokens) {
    tsink *t = (tsink *)s;
    (void)index;
    pthread_mutex_lock(&t->mu);
    if (t->len + len < sizeof t->text) {
        memcpy(t->text + t->len, text, len);
        t->len += len;
        t->text[t->len] = 0;
    }
    t->n_text++;
    t->n_tokens = n_tokens;
    pthread_mutex_unlock(&t->mu);
}

static void t_token(gn_coord_sink *s, int index, const gn_oai_logprob *lp) {
    tsink *t = (tsink *)s;
    (void)index;
    (void)lp;
    pthread_mutex_lock(&t->mu);
    t->n_token_events++;
    pthread_mutex_unlock(&t->mu);
}

static void t_done(gn_coord_sink *s, const gn_coord_result *r) {
    tsink *t = (tsink *)s;
    pthread_mutex_lock(&t->mu);
    t->done++;
    t->rc = r->rc;
    snprintf(t->msg, sizeof t->msg, "%s", r->rc ? r->err.msg : "");
    t->n_choices = r->n_choices;
    t->prompt_tokens = r->prompt_tokens;
    if (r->n_choices > 0) {
        snprintf(t->finish, sizeof t->finish, "%s", r->choices[0].finish_reason);
        snprintf(t->done_text, sizeof t->done_text, "%.*s", (int)r->choices[0].text_len, r->choices[0].text);
    }
    pthread_mutex_unlock(&t->mu);
}

static void tsink_init(tsink *t) {
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->mu, NULL);
    t->base.text = t_text;
    t->base.done = t_done;
    t->base.token = t_token;
}

static int tsink_done(tsink *t) {
    pthread_mutex_lock(&t->mu);
    int d = t->done;
    pthread_mutex_unlock(&t->mu);
    return d;
}

/* A request: body + parsed request + job. */
typedef struct treq {
    char body[512];
    gn_oai_request req;
    gn_coord_job job;
} treq;

static int treq_make(treq *r, uint64_t id, const char *body) {
    memset(r, 0, sizeof *r);
    snprintf(r->body, sizeof r->body, "%s", body);
    gn_oai_error oe;
    if (gn_oai_parse_completion(r->body, strlen(r->body), &r->req, &oe)) return -1;
    gn_coord_job *j = &r->job;
    j->id = id;
    j->req = &r->req;
    j->tenant = "acme";
    j->body = r->body;
    j->body_len = strlen(r->body);
    j->n_arms = 2;
    snprintf(j->arm_names[0], sizeof j->arm_names[0], "helpful");
    snprintf(j->arm_names[1], sizeof j->arm_names[1], "harmless.v2");
    j->weights[0] = 1.0;
    j->weights[1] = -0.25;
    j->beta = 0.5;
    j->temperature = 0.7;
    j->top_p = 0.9;
    j->min_p = 0.05;
    j->top_k = 40;
    j->seed = 0xfedcba9876543210ull;
    j->max_tokens = 12;
    j->n = 1;
    return 0;
}

static const char *BODY = "{\"model\":\"m\",\"prompt\":\"Hello there\",\"max_tokens\":12}";

/* ---------------------------------------------------------------- codec */

static void test_roundtrip(void) {
    treq r;
    CHECK(treq_make(&r, 42, BODY) == 0, "parse");
    uint8_t *buf = NULL;
    size_t len = 0;
    gn_err e = {0};
    CHECK(gn_share_encode(&r.job, "coord-a", "tcp://127.0.0.1:5999", 1234, &buf, &len, &e) == 0, "%s", e.msg);
    gn_share_job sj;
    int rc = gn_share_decode(buf, len, &sj, &e);
    CHECK(rc == 0, "decode: %s", e.msg);
    if (rc == 0) {
        CHECK(strcmp(sj.origin_id, "coord-a") == 0 && strcmp(sj.origin_endpoint, "tcp://127.0.0.1:5999") == 0,
              "origin %s %s", sj.origin_id, sj.origin_endpoint);
        CHECK(sj.origin_job_id == 42 && sj.job.id == 42 && sj.enqueued_unix_ms == 1234, "ids");
        CHECK(strcmp(sj.job.tenant, "acme") == 0, "tenant");
        CHECK(sj.job.n_arms == 2 && strcmp(sj.job.arm_names[1], "harmless.v2") == 0 && sj.job.weights[1] == -0.25,
              "arms");
        CHECK(sj.job.beta == 0.5 && sj.job.temperature == 0.7 && sj.job.top_p == 0.9 && sj.job.min_p == 0.05 &&
                  sj.job.top_k == 40 && sj.job.seed == 0xfedcba9876543210ull && sj.job.max_tokens == 12 &&
                  sj.job.n == 1,
              "sampling fields");
        CHECK(sj.job.req == &sj.req && sj.req.kind == GN_OAI_COMPLETION && strcmp(sj.req.prompt, "Hello there") == 0,
              "request re-parsed");
        CHECK(sj.job.body_len == strlen(BODY) && memcmp(sj.job.body, BODY, sj.job.body_len) == 0, "body");
        gn_share_job_clear(&sj);
    }
    gn_free(buf);
    gn_oai_request_free(&r.req);

    /* a chat request keeps its kind */
    const char *chat = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    treq c;
    memset(&c, 0, sizeof c);
    snprintf(c.body, sizeof c.body, "%s", chat);
    gn_oai_error oe;
    CHECK(gn_oai_parse_chat(c.body, strlen(c.body), &c.req, &oe) == 0, "chat parse");
    c.job = (gn_coord_job){.id = 7, .req = &c.req, .tenant = "acme", .body = c.body, .body_len = strlen(c.body),
                           .beta = 1, .temperature = 0, .top_p = 1, .max_tokens = 3, .n = 2};
    CHECK(gn_share_encode(&c.job, "coord-a", "ipc:///tmp/x", 0, &buf, &len, &e) == 0, "%s", e.msg);
    CHECK(gn_share_decode(buf, len, &sj, &e) == 0, "chat decode: %s", e.msg);
    CHECK(sj.req.kind == GN_OAI_CHAT && sj.req.n_messages == 1 && strcmp(sj.req.messages[0].content, "hi") == 0 &&
              sj.job.n == 2 && sj.job.n_arms == 0,
          "chat fields");
    gn_share_job_clear(&sj);
    gn_free(buf);
    gn_oai_request_free(&c.req);

    /* no body: cannot be queued */
    treq nb;
    CHECK(treq_make(&nb, 1, BODY) == 0, "parse");
    nb.job.body = NULL;
    CHECK(gn_share_encode(&nb.job, "a", "tcp://127.0.0.1:1", 0, &buf, &len, &e) == GN_EINVAL, "no body refused");
    gn_oai_request_free(&nb.req);
}

/* Encodes a QueuedJob after mutate() changed it; returns the decode result. */
static int decode_mutated(void (*mutate)(Genarm__V1__QueuedJob *q), gn_share_job *sj, gn_err *e) {
    static char *names[2] = {"helpful", "harmless"};
    static double weights[2] = {1.0, 0.5};
    Genarm__V1__QueuedJob q = GENARM__V1__QUEUED_JOB__INIT;
    q.origin_id = "coord-a";
    q.origin_endpoint = "tcp://127.0.0.1:5999";
    q.job_id = 9;
    q.kind = 0;
    q.body.data = (uint8_t *)BODY;
    q.body.len = strlen(BODY);
    q.tenant = "acme";
    q.n_arm_names = 2;
    q.arm_names = names;
    q.n_arm_weights = 2;
    q.arm_weights = weights;
    q.beta = 0.5;
    q.temperature = 1;
    q.top_p = 1;
    q.max_tokens = 4;
    q.n = 1;
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    env.body_case = GENARM__V1__ENVELOPE__BODY_QUEUED_JOB;
    env.queued_job = &q;
    if (mutate) mutate(&q);
    uint8_t *buf = NULL;
    size_t len = 0;
    gn_err ee = {0};
    gn_wire_encode(&env, &buf, &len, &ee);
    int rc = gn_share_decode(buf, len, sj, e);
    gn_free(buf);
    return rc;
}

static void m_n0(Genarm__V1__QueuedJob *q) { q->n = 0; }
static void m_n17(Genarm__V1__QueuedJob *q) { q->n = 17; }
static void m_weights(Genarm__V1__QueuedJob *q) { q->n_arm_weights = 1; }
static void m_name(Genarm__V1__QueuedJob *q) {
    static char *bad[2] = {"helpful", "no spaces!"};
    q->arm_names = bad;
}
static void m_nan(Genarm__V1__QueuedJob *q) {
    static double w[2] = {1.0, NAN};
    q->arm_weights = w;
}
static void m_beta(Genarm__V1__QueuedJob *q) { q->beta = 0; }
static void m_temp(Genarm__V1__QueuedJob *q) { q->temperature = -1; }
static void m_topp(Genarm__V1__QueuedJob *q) { q->top_p = 0; }
static void m_maxtok(Genarm__V1__QueuedJob *q) { q->max_tokens = 0; }
static void m_kind(Genarm__V1__QueuedJob *q) { q->kind = 7; }
static void m_tenant(Genarm__V1__QueuedJob *q) { q->tenant = ""; }
static void m_json(Genarm__V1__QueuedJob *q) {
    q->body.data = (uint8_t *)"{\"model\":";
    q->body.len = 9;
}
static void m_unknown(Genarm__V1__QueuedJob *q) {
    static const char b[] = "{\"model\":\"m\",\"prompt\":\"x\",\"bogus\":1}";
    q->body.data = (uint8_t *)b;
    q->body.len = sizeof b - 1;
}
static void m_empty_body(Genarm__V1__QueuedJob *q) { q->body.len = 0; }
static void m_origin_ep(Genarm__V1__QueuedJob *q) { q->origin_endpoint = "http://127.0.0.1:1"; }
static void m_origin_id(Genarm__V1__QueuedJob *q) { q->origin_id = ""; }

static void test_malformed(void) {
    struct {
        void (*m)(Genarm__V1__QueuedJob *);
        const char *want; /* in the message */
        int origin_kept;
    } cases[] = {
        {m_n0, "n 0", 1},           {m_n17, "n 17", 1},         {m_weights, "arm_weights", 1},
        {m_name, "arm_names[1]", 1}, {m_nan, "arm_weights[1]", 1}, {m_beta, "beta", 1},
        {m_temp, "temperature", 1},  {m_topp, "top_p", 1},       {m_maxtok, "max_tokens", 1},
        {m_kind, "kind 7", 1},       {m_tenant, "tenant", 1},    {m_json, "body", 1},
        {m_unknown, "bogus", 1},     {m_empty_body, "body of 0", 1}, {m_origin_ep, "origin_endpoint", 0},
        {m_origin_id, "origin_id", 0},
    };
    gn_share_job sj;
    gn_err e = {0};
    CHECK(decode_mutated(NULL, &sj, &e) == 0, "the unmutated job decodes: %s", e.msg);
    gn_share_job_clear(&sj);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memset(&e, 0, sizeof e);
        int rc = decode_mutated(cases[i].m, &sj, &e);
        CHECK(rc < 0, "case %zu decoded", i);
        CHECK(strstr(e.msg, cases[i].want) != NULL, "case %zu: '%s' lacks '%s'", i, e.msg, cases[i].want);
        CHECK(cases[i].origin_kept ? sj.origin_job_id == 9 && strcmp(sj.origin_endpoint, "tcp://127.0.0.1:5999") == 0
                                   : sj.origin_endpoint[0] == 0,
              "case %zu: origin %s", i, sj.origin_endpoint);
        CHECK(sj.body == NULL && sj.req.model == NULL, "case %zu: nothing left to free", i);
    }
    /* not a QueuedJob, not protobuf, truncated, another version */
    const uint8_t junk[] = "definitely not a protobuf frame \xff\xff\xff";
    CHECK(gn_share_decode(junk, sizeof junk, &sj, &e) < 0, "junk");
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    Genarm__V1__Heartbeat hb = GENARM__V1__HEARTBEAT__INIT;
    env.body_case = GENARM__V1__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    uint8_t *buf;
    size_t len;
    gn_wire_encode(&env, &buf, &len, &e);
    CHECK(gn_share_decode(buf, len, &sj, &e) == GN_EFORMAT && strstr(e.msg, "not a QueuedJob"), "%s", e.msg);
    gn_free(buf);
    treq r;
    treq_make(&r, 5, BODY);
    gn_share_encode(&r.job, "coord-a", "tcp://127.0.0.1:5999", 0, &buf, &len, &e);
    int refused = 0;
    for (size_t cut = 1; cut < len; cut += 3) refused += gn_share_decode(buf, cut, &sj, &e) < 0;
    size_t tried = (len - 1 + 2) / 3;
    CHECK(refused == (int)tried, "every truncation refused (%d of %zu)", refused, tried);
    gn_free(buf);
    gn_oai_request_free(&r.req);
}

/* ---------------------------------------------------------------- live */

static uint64_t g_cancelled[16];
static int g_n_cancelled;

static void on_cancel(void *ctx, uint64_t id) {
    (void)ctx;
    if (g_n_cancelled < 16) g_cancelled[g_n_cancelled++] = id;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Polls the executor (and waits) until t is done or secs pass. */
static int wait_done(tsink *t, gn_share *exec, double secs) {
    double end = now_s() + secs;
    while (now_s() < end) {
        if (exec) gn_share_poll(exec, on_cancel, NULL);
        if (tsink_done(t)) return 1;
        usleep(10000);
    }
    return tsink_done(t);
}

/* Takes the next entry on s, waiting up to secs. */
static int take_wait(gn_share *s, gn_share_taken *tk, double secs) {
    double end = now_s() + secs;
    gn_err e = {0};
    while (now_s() < end) {
        int r = gn_share_take(s, tk, &e);
        if (r != 0) return r;
        usleep(10000);
    }
    return 0;
}

static int wait_cancel(gn_share *exec, uint64_t id, double secs) {
    double end = now_s() + secs;
    while (now_s() < end) {
        gn_share_poll(exec, on_cancel, NULL);
        for (int i = 0; i < g_n_cancelled; i++)
            if (g_cancelled[i] == id) return 1;
        usleep(10000);
    }
    return 0;
}

static gn_share *make(const char *id, gn_err *e) {
    gn_share_params p = gn_share_default_params();
    p.coordinator_id = id;
    p.redis_host = "127.0.0.1";
    p.redis_port = gn_redis_port;
    p.peer_timeout_ms = 700;
    p.claim_idle_ms = 400;
    return gn_share_create(&p, e);
}

static void finish_ok(gn_coord_sink *sink, const char *text) {
    gn_coord_choice_result ch = {text, strlen(text), "stop", 2};
    gn_coord_result res;
    memset(&res, 0, sizeof res);
    res.n_choices = 1;
    res.choices = &ch;
    res.prompt_tokens = 3;
    sink->done(sink, &res);
}

static void finish_abort(gn_coord_sink *sink) {
    gn_coord_choice_result ch = {"", 0, "abort", 0};
    gn_coord_result res;
    memset(&res, 0, sizeof res);
    res.n_choices = 1;
    res.choices = &ch;
    sink->done(sink, &res);
}

static void test_live(void) {
    gn_err e = {0};
    gn_share *a = make("coord-a", &e);
    CHECK(a != NULL, "create a: %s", e.msg);
    gn_share *b = make("coord-b", &e);
    CHECK(b != NULL, "create b: %s", e.msg);
    if (!a || !b) return;
    CHECK(strncmp(gn_share_endpoint(a), "tcp://127.0.0.1:", 16) == 0, "endpoint %s", gn_share_endpoint(a));

    /* 1. exported by A, run by B, streamed back to A's sink */
    treq r1;
    tsink s1;
    tsink_init(&s1);
    treq_make(&r1, 101, BODY);
    CHECK(gn_share_export(a, &r1.job, &s1.base, &e) == 0, "export: %s", e.msg);
    CHECK(gn_share_exported(a) == 1, "one exported");
    CHECK(gn_share_queue_depth(b) == 1, "queue depth 1");
    gn_share_taken tk;
    CHECK(take_wait(b, &tk, 3) == 1, "b takes");
    CHECK(tk.remote == 1 && tk.job->id != 101 && strcmp(tk.job->req->prompt, "Hello there") == 0 &&
              tk.job->weights[1] == -0.25 && strcmp(tk.job->tenant, "acme") == 0,
          "the taken job is A's request");
    CHECK(gn_share_remote_running(b) == 1, "b runs one");
    CHECK(gn_share_queue_depth(b) == 0, "queue empty once taken");
    tk.sink->text(tk.sink, 0, "Hel", 3, 1);
    gn_oai_top top[2] = {{"lo", 2, -0.5f}, {"p", 1, -1.5f}};
    gn_oai_logprob lp = {{"lo", 2, -0.5f}, 2, top};
    tk.sink->token(tk.sink, 0, &lp);
    tk.sink->text(tk.sink, 0, "lo", 2, 2);
    finish_ok(tk.sink, "Hello");
    CHECK(gn_share_remote_running(b) == 0, "b's job ended");
    CHECK(wait_done(&s1, b, 5), "A's sink got done()");
    CHECK(strcmp(s1.text, "Hello") == 0 && s1.n_text == 2 && s1.n_tokens == 2, "streamed text '%s'", s1.text);
    CHECK(s1.n_token_events == 1, "token events %d", s1.n_token_events);
    CHECK(s1.rc == 0 && strcmp(s1.finish, "stop") == 0 && strcmp(s1.done_text, "Hello") == 0 && s1.prompt_tokens == 3,
          "result rc=%d finish=%s text=%s", s1.rc, s1.finish, s1.done_text);
    CHECK(s1.done == 1 && gn_share_exported(a) == 0, "done once, nothing exported");

    /* 2. A takes its own export back: the same job and sink */
    treq r2;
    tsink s2;
    tsink_init(&s2);
    treq_make(&r2, 102, BODY);
    CHECK(gn_share_export(a, &r2.job, &s2.base, &e) == 0, "export 2");
    CHECK(take_wait(a, &tk, 3) == 1 && tk.remote == 0 && tk.job == &r2.job && tk.sink == &s2.base, "taken back");
    CHECK(gn_share_exported(a) == 0, "no longer exported");
    finish_ok(tk.sink, "x");
    CHECK(s2.done == 1, "own sink done");

    /* 3. the client cancels while B runs it */
    treq r3;
    tsink s3;
    tsink_init(&s3);
    treq_make(&r3, 103, BODY);
    gn_share_export(a, &r3.job, &s3.base, &e);
    CHECK(take_wait(b, &tk, 3) == 1 && tk.remote, "b takes 3");
    CHECK(gn_share_cancel(a, 103) == 1 && gn_share_cancel(a, 99999) == 0, "cancel known/unknown");
    CHECK(wait_cancel(b, tk.job->id, 3), "the cancel reaches B");
    finish_abort(tk.sink);
    CHECK(wait_done(&s3, b, 3) && strcmp(s3.finish, "abort") == 0, "A's sink aborted (%s)", s3.finish);

    /* 4. cancelled while still queued: done() at once, the entry is dropped */
    treq r4;
    tsink s4;
    tsink_init(&s4);
    treq_make(&r4, 104, BODY);
    gn_share_export(a, &r4.job, &s4.base, &e);
    gn_share_cancel(a, 104);
    CHECK(wait_done(&s4, NULL, 3) && strcmp(s4.finish, "abort") == 0, "queued cancel");
    CHECK(gn_share_take(a, &tk, &e) == 0, "the cancelled entry is not handed out");
    CHECK(take_wait(b, &tk, 0.3) == 0, "nor to B");

    /* 5. B takes it and falls silent: A queues it again, A takes it back, B's
     * late JobAlive is answered with a cancel */
    treq r5;
    tsink s5;
    tsink_init(&s5);
    treq_make(&r5, 105, BODY);
    gn_share_export(a, &r5.job, &s5.base, &e);
    gn_share_taken tk_b;
    CHECK(take_wait(b, &tk_b, 3) == 1 && tk_b.remote, "b takes 5");
    usleep(300000); /* B says nothing more */
    gn_share_taken tk_a;
    CHECK(take_wait(a, &tk_a, 5) == 1 && tk_a.remote == 0 && tk_a.job == &r5.job, "re-queued and taken back by A");
    g_n_cancelled = 0;
    CHECK(wait_cancel(b, tk_b.job->id, 3), "B is told to stop its stale copy");
    finish_ok(tk_b.sink, "stale"); /* ignored by A */
    finish_ok(tk_a.sink, "fresh");
    usleep(200000);
    CHECK(s5.done == 1 && strcmp(s5.done_text, "fresh") == 0, "done once, from the run that counts (%d, %s)", s5.done,
          s5.done_text);

    /* 6. a body the executor refuses: A hears the error */
    treq r6;
    tsink s6;
    tsink_init(&s6);
    treq_make(&r6, 106, BODY);
    r6.job.body = "{\"model\":\"m\",\"prompt\":\"x\",\"bogus\":1}";
    r6.job.body_len = strlen(r6.job.body);
    gn_share_export(a, &r6.job, &s6.base, &e);
    CHECK(take_wait(b, &tk, 1) == 0, "B does not run it");
    CHECK(wait_done(&s6, b, 3) && s6.rc < 0 && strstr(s6.msg, "bogus"), "error reached A: rc=%d %s", s6.rc, s6.msg);

    /* 7. entries that are not requests are dropped */
    gn_ctl *c = gn_ctl_connect("127.0.0.1", gn_redis_port, 2000, &e);
    CHECK(c && gn_ctl_queue_push(c, "\x01\x02garbage", 9, NULL, &e) == 0, "push garbage");
    CHECK(c && gn_ctl_queue_push(c, "{\"parked\":true}", 15, NULL, &e) == 0, "push token");
    CHECK(take_wait(b, &tk, 0.5) == 0, "nothing to run");
    CHECK(gn_share_queue_depth(b) == 0, "both dropped");
    gn_ctl_free(c);

    /* 8. the origin goes away: its running request is cancelled on B */
    treq r8;
    tsink s8;
    tsink_init(&s8);
    treq_make(&r8, 108, BODY);
    gn_share_export(a, &r8.job, &s8.base, &e);
    CHECK(take_wait(b, &tk, 3) == 1 && tk.remote, "b takes 8");
    gn_share_poll(b, on_cancel, NULL); /* JobAccept answered */
    usleep(100000);
    gn_share_free(a);
    CHECK(s8.done == 1 && strcmp(s8.finish, "abort") == 0, "A ended its client's request");
    g_n_cancelled = 0;
    CHECK(wait_cancel(b, tk.job->id, 3), "B stops it");
    finish_abort(tk.sink);
    CHECK(gn_share_remote_running(b) == 0, "nothing left on B");
    gn_share_free(b);
    treq *all[] = {&r1, &r2, &r3, &r4, &r5, &r6, &r8};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) gn_oai_request_free(&all[i]->req);
}

int main(void) {
    test_roundtrip();
    test_malformed();
    gn_redis_start();
    test_live();
    GN_TEST_MAIN_END();
}
