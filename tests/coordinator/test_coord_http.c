#define _GNU_SOURCE
/* test_coord_http.c — the coordinator's HTTP front end to end: a private
 * redis-server (tenants, hashed keys, profiles), tiny random models written by
 * engine/model_maker.h, the in-process generation backend (real GenARM
 * decoding on the CPU) and the libmicrohttpd server on a random loopback
 * port, spoken to over a plain socket (HTTP/1.1, chunked bodies decoded here).
 *
 * Checks: a greedy completion through HTTP is identical to gn_generate in
 * process with the same models and profile; the stream's pieces concatenate to
 * the same text and end in data: [DONE]; chat (the models' own chat template);
 * n = 2; 401 / 404 / 400 / 405 / 413 with OpenAI error objects; tenant
 * isolation of profiles; /metrics parses (and passes promtool when installed);
 * a client that disconnects mid-stream or mid-request gets its job aborted;
 * draining. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "auth_redis.h"
#include "control.h"
#include "control/redis_harness.h"
#include "generate.h"
#include "gn_alloc.h"
#include "gn_test.h"
#include "http_server.h"
#include "inproc_backend.h"
#include "model_maker.h"
#include "promtool.h"
#include "tokenizer.h"

static int g_port;
static char g_key1[GN_CTL_KEY_LEN + 1], g_key2[GN_CTL_KEY_LEN + 1];

typedef struct http_resp {
    int status;
    char *headers;
    char *body;
    size_t body_len;
} http_resp;

static void resp_free(http_resp *r) {
    free(r->headers);
    free(r->body);
    memset(r, 0, sizeof *r);
}

static int connect_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    struct timeval tv = {60, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static int send_request(int fd, const char *method, const char *path, const char *key, const char *body,
                        size_t body_len) {
    char head[1024];
    int n = snprintf(head, sizeof head,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s%s"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                     method, path, key ? "Authorization: Bearer " : "", key ? key : "", key ? "\r\n" : "",
                     body ? body_len : 0);
    if (write(fd, head, (size_t)n) != n) return -1;
    size_t off = 0;
    while (body && off < body_len) {
        ssize_t w = write(fd, body + off, body_len - off);
        if (w <= 0) return -1;
        off += (size_t)w;
    }
    return 0;
}

/* Decodes a chunked body in place; returns the new length. */
static size_t dechunk(char *b, size_t n) {
    size_t in = 0, out = 0;
    while (in < n) {
        char *end;
        unsigned long sz = strtoul(b + in, &end, 16);
        char *crlf = strstr(b + in, "\r\n");
        if (!crlf || end > crlf) break;
        in = (size_t)(crlf - b) + 2;
        if (sz == 0 || in + sz > n) break;
        memmove(b + out, b + in, sz);
        out += sz;
        in += sz + 2;
    }
    b[out] = 0;
    return out;
}

static int http(const char *method, const char *path, const char *key, const char *body, http_resp *r) {
    memset(r, 0, sizeof *r);
    int fd = connect_to(g_port);
    if (fd < 0) return -1;
    if (send_request(fd, method, path, key, body, body ? strlen(body) : 0)) {
        close(fd);
        return -1;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 4096 + 1 > cap) buf = realloc(buf, cap *= 2);
        ssize_t k = read(fd, buf + len, cap - len - 1);
        if (k <= 0) break;
        len += (size_t)k;
    }
    close(fd);
    buf[len] = 0;
    char *sep = strstr(buf, "\r\n\r\n");
    if (!sep || sscanf(buf, "HTTP/1.%*d %d", &r->status) != 1) {
        free(buf);
        return -1;
    }
    r->headers = strndup(buf, (size_t)(sep - buf));
    size_t blen = len - (size_t)(sep + 4 - buf);
    r->body = malloc(blen + 1);
    memcpy(r->body, sep + 4, blen);
    r->body[blen] = 0;
    r->body_len = blen;
    if (strcasestr(r->headers, "transfer-encoding: chunked")) r->body_len = dechunk(r->body, blen);
    free(buf);
    return 0;
}

static json_t *body_json(const http_resp *r) { return json_loadb(r->body, r->body_len, 0, NULL); }

/* The error object's param and code (NULL -> ""). */
static void check_error(const http_resp *r, int status, const char *param, const char *code, const char *what) {
    CHECK(r->status == status, "%s: status %d want %d (%s)", what, r->status, status, r->body);
    json_t *j = body_json(r);
    json_t *e = j ? json_object_get(j, "error") : NULL;
    CHECK(e && json_is_string(json_object_get(e, "message")) && json_is_string(json_object_get(e, "type")),
          "%s: OpenAI error object: %s", what, r->body);
    if (e) {
        json_t *p = json_object_get(e, "param"), *c = json_object_get(e, "code");
        const char *ps = json_is_string(p) ? json_string_value(p) : "";
        const char *cs = json_is_string(c) ? json_string_value(c) : "";
        CHECK(json_object_get(e, "param") && json_object_get(e, "code"), "%s: param/code present", what);
        CHECK(strcmp(ps, param) == 0, "%s: param '%s' want '%s'", what, ps, param);
        CHECK(strcmp(cs, code) == 0, "%s: code '%s' want '%s'", what, cs, code);
    }
    json_decref(j);
}

/* Splits an SSE body into its data payloads; returns the count. Checks the
 * framing on the way. */
static int sse_events(const char *body, char ***out) {
    int n = 0, cap = 16;
    char **ev = malloc(sizeof *ev * (size_t)cap);
    const char *p = body;
    while (*p) {
        const char *end = strstr(p, "\n\n");
        if (!end || strncmp(p, "data: ", 6) != 0) {
            n = -1;
            break;
        }
        if (n == cap) ev = realloc(ev, sizeof *ev * (size_t)(cap *= 2));
        ev[n++] = strndup(p + 6, (size_t)(end - p - 6));
        p = end + 2;
    }
    *out = ev;
    return n;
}

static double metric_value(const char *text, const char *series) {
    const char *p = text;
    size_t n = strlen(series);
    while ((p = strstr(p, series))) {
        if ((p == text || p[-1] == '\n') && p[n] == ' ') return atof(p + n + 1);
        p += n;
    }
    return -1;
}

static double get_metric(const char *series) {
    http_resp r;
    if (http("GET", "/metrics", NULL, NULL, &r)) return -1;
    double v = metric_value(r.body, series);
    resp_free(&r);
    return v;
}

/* ---- fixtures --------------------------------------------------------------- */

static char g_dir[64];

static void make_models(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/gn_coord_XXXXXX");
    if (!mkdtemp(g_dir)) exit(1);
    const char *names[3] = {"base", "hh", "safe"};
    for (int i = 0; i < 3; i++) {
        gn_make_model_params p = gn_make_model_default_params();
        p.seed = (uint64_t)(11 + i);
        p.max_pos = 2048;
        p.init_std = 0.2f; /* peaked distributions: the ARMs visibly steer */
        char d[128];
        snprintf(d, sizeof d, "%s/%s", g_dir, names[i]);
        gn_err e = {0};
        if (gn_make_model(&p, d, &e)) {
            fprintf(stderr, "make model: %s\n", e.msg);
            exit(1);
        }
    }
}

static void rm_models(void) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (g_dir[0] && system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
}

static void setup_redis(const char *tok_hash) {
    gn_err e = {0};
    gn_ctl *c = gn_ctl_connect("127.0.0.1", gn_redis_port, 2000, &e);
    CHECK(c != NULL, "connect: %s", e.msg);
    if (!c) exit(1);
    char path[128];
    int ok = gn_ctl_tenant_add(c, "t1", NULL, &e) == 0 && gn_ctl_tenant_add(c, "t2", NULL, &e) == 0 &&
             gn_ctl_key_create(c, "t1", g_key1, NULL, &e) == 0 && gn_ctl_key_create(c, "t2", g_key2, NULL, &e) == 0;
    snprintf(path, sizeof path, "%s/hh", g_dir);
    ok = ok && gn_ctl_arm_register(c, "hh", "v1", path, tok_hash, &e) == 0;
    snprintf(path, sizeof path, "%s/safe", g_dir);
    ok = ok && gn_ctl_arm_register(c, "safe", "v1", path, tok_hash, &e) == 0;
    gn_ctl_profile p;
    gn_ctl_profile_init(&p);
    snprintf(p.name, sizeof p.name, "helpful");
    p.n_arms = 1;
    snprintf(p.arms[0].name, sizeof p.arms[0].name, "hh");
    p.arms[0].weight = 1.0;
    p.beta = 0.5;
    p.has = GN_CTL_HAS_TEMPERATURE;
    p.temperature = 0; /* greedy by default */
    ok = ok && gn_ctl_profile_set(c, "t1", &p, &e) == 0;
    CHECK(ok, "redis setup: %s", e.msg);
    gn_ctl_free(c);
}

/* The same generation in process: greedy, guidance {hh: 1, safe: 0}, β 0.5. */
static char *direct_generate(const char *prompt, int max_tokens) {
    gn_err e = {0};
    gn_backend *be = gn_backend_create("cpu", &(gn_backend_params){1}, &e);
    gn_model_params mp = gn_model_default_params();
    mp.load_tokenizer = 1;
    char d[3][128];
    gn_model *m[3];
    const char *names[3] = {"base", "hh", "safe"};
    for (int i = 0; i < 3; i++) {
        snprintf(d[i], sizeof d[i], "%s/%s", g_dir, names[i]);
        m[i] = gn_model_load(d[i], be, &mp, &e);
    }
    gn_guidance g = gn_guidance_default();
    g.n_arms = 2;
    g.weights[0] = 1;
    g.weights[1] = 0;
    g.beta = 0.5f;
    gn_generator *gen = gn_generator_create(m[0], m + 1, 2, &g, NULL, &e);
    char *text = NULL;
    if (gen) {
        gn_gen_request q = gn_gen_default_request();
        q.prompt = prompt;
        q.max_tokens = max_tokens;
        q.sampling.temperature = 0;
        gn_gen_result res;
        if (gn_generate(gen, &q, 1, &res, NULL, &e) == 0) {
            text = strndup(res.text, res.text_len);
            gn_gen_result_free(&res);
        }
    }
    if (!text) fprintf(stderr, "direct generation: %s\n", e.msg);
    gn_generator_free(gen);
    for (int i = 0; i < 3; i++) gn_model_free(m[i]);
    gn_backend_free(be);
    return text;
}

/* ---- the tests ---------------------------------------------------------------- */

static void test_routes(const char *model_id) {
    http_resp r;
    CHECK(http("GET", "/health", NULL, NULL, &r) == 0 && r.status == 200, "/health");
    resp_free(&r);
    CHECK(http("GET", "/ready", NULL, NULL, &r) == 0 && r.status == 200, "/ready");
    resp_free(&r);
    CHECK(http("GET", "/v1/models", g_key1, NULL, &r) == 0 && r.status == 200, "/v1/models");
    json_t *j = body_json(&r);
    json_t *m0 = json_array_get(json_object_get(j, "data"), 0);
    CHECK(m0 && strcmp(json_string_value(json_object_get(m0, "id")), model_id) == 0, "models list: %s", r.body);
    json_decref(j);
    resp_free(&r);
    http("GET", "/v1/models", NULL, NULL, &r);
    check_error(&r, 401, "", "invalid_api_key", "models without key");
    resp_free(&r);
    http("GET", "/nope", NULL, NULL, &r);
    check_error(&r, 404, "", "unknown_url", "unknown route");
    resp_free(&r);
    http("GET", "/v1/completions", g_key1, NULL, &r);
    check_error(&r, 405, "", "method_not_allowed", "GET completions");
    resp_free(&r);
}

static void test_errors(void) {
    http_resp r;
    const char *ok = "{\"model\":\"tiny\",\"prompt\":\"Hi\",\"max_tokens\":2}";
    http("POST", "/v1/completions", "gnk_0000000000000000000000000000000000000000000000000000000000000000", ok, &r);
    check_error(&r, 401, "", "invalid_api_key", "bad key");
    resp_free(&r);
    http("POST", "/v1/completions", NULL, ok, &r);
    check_error(&r, 401, "", "invalid_api_key", "no key");
    resp_free(&r);
    http("POST", "/v1/completions", g_key1, "{\"model\":\"tiny\",\"prompt\":\"Hi\",\"profile\":\"nope\"}", &r);
    check_error(&r, 404, "profile", "profile_not_found", "unknown profile");
    resp_free(&r);
    /* t2 cannot use t1's profile. */
    http("POST", "/v1/completions", g_key2, "{\"model\":\"tiny\",\"prompt\":\"Hi\",\"profile\":\"helpful\"}", &r);
    check_error(&r, 404, "profile", "profile_not_found", "another tenant's profile");
    resp_free(&r);
    http("POST", "/v1/completions", g_key1, "{\"model\":\"other\",\"prompt\":\"Hi\"}", &r);
    check_error(&r, 404, "model", "model_not_found", "unknown model");
    resp_free(&r);
    http("POST", "/v1/completions", g_key1,
         "{\"model\":\"tiny\",\"prompt\":\"Hi\",\"reward_models\":[{\"name\":\"ghost\",\"weight\":1}]}", &r);
    check_error(&r, 404, "reward_models", "reward_model_not_found", "unknown reward model");
    resp_free(&r);
    http("POST", "/v1/completions", g_key1, "{\"model\":\"tiny\",\"prompt\":", &r);
    check_error(&r, 400, "", "invalid_json", "malformed JSON");
    resp_free(&r);
    http("POST", "/v1/completions", g_key1, "{\"model\":\"tiny\",\"prompt\":\"Hi\",\"max_tokens\":-1}", &r);
    check_error(&r, 400, "max_tokens", "invalid_value", "bad max_tokens");
    resp_free(&r);
    http("POST", "/v1/chat/completions", g_key1, "{\"model\":\"tiny\",\"messages\":[{\"role\":\"x\",\"content\":\"a\"}]}", &r);
    check_error(&r, 400, "messages[0].role", "invalid_value", "bad role");
    resp_free(&r);
    size_t big = 100 * 1024;
    char *b = malloc(big + 64);
    memset(b, ' ', big + 63);
    memcpy(b, "{\"model\":\"tiny\",\"prompt\":\"", 25);
    b[big + 60] = '"';
    b[big + 61] = '}';
    b[big + 62] = 0;
    http("POST", "/v1/completions", g_key1, b, &r);
    check_error(&r, 413, "", "body_too_large", "body over the limit");
    resp_free(&r);
    /* The same body sent chunked (no Content-Length): read, discarded, 413. */
    int fd = connect_to(g_port);
    char head[512];
    int hn = snprintf(head, sizeof head,
                      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer %s\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n%zx\r\n",
                      g_key1, strlen(b));
    int sent = fd >= 0 && write(fd, head, (size_t)hn) == hn && write(fd, b, strlen(b)) == (ssize_t)strlen(b) &&
               write(fd, "\r\n0\r\n\r\n", 7) == 7;
    char rb[2048];
    ssize_t got = 0, k;
    while (fd >= 0 && (k = read(fd, rb + got, sizeof rb - 1 - (size_t)got)) > 0) got += k;
    rb[got > 0 ? got : 0] = 0;
    if (fd >= 0) close(fd);
    CHECK(sent && strncmp(rb, "HTTP/1.1 413", 12) == 0 && strstr(rb, "body_too_large"), "chunked body over the limit: %s", rb);
    free(b);
}

static void test_completion(void) {
    const char *prompt = "Once upon a time";
    char body[512];
    snprintf(body, sizeof body, "{\"model\":\"tiny\",\"prompt\":\"%s\",\"max_tokens\":12,\"profile\":\"helpful\"}", prompt);
    http_resp r;
    CHECK(http("POST", "/v1/completions", g_key1, body, &r) == 0 && r.status == 200, "completion: %d %s", r.status,
          r.body);
    json_t *j = body_json(&r);
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    const char *text = json_string_value(json_object_get(c0, "text"));
    json_t *u = json_object_get(j, "usage");
    int pt = (int)json_integer_value(json_object_get(u, "prompt_tokens"));
    int ct = (int)json_integer_value(json_object_get(u, "completion_tokens"));
    CHECK(j && strcmp(json_string_value(json_object_get(j, "object")), "text_completion") == 0, "object");
    CHECK(text != NULL, "choice text");
    CHECK(pt > 0 && ct > 0 && ct <= 12 && json_integer_value(json_object_get(u, "total_tokens")) == pt + ct,
          "usage %d %d", pt, ct);
    const char *fr = json_string_value(json_object_get(c0, "finish_reason"));
    CHECK(fr && (strcmp(fr, "length") == 0 || strcmp(fr, "stop") == 0), "finish_reason %s", fr ? fr : "null");
    CHECK(strstr(r.headers, "application/json") != NULL, "content type");

    char *want = direct_generate(prompt, 12);
    printf("completion (%d prompt + %d generated tokens): '%s'\n", pt, ct, text ? text : "(null)");
    CHECK(want && text && strcmp(want, text) == 0, "HTTP output equals in-process gn_generate:\n  http   '%s'\n  direct '%s'",
          text ? text : "(null)", want ? want : "(null)");

    /* Without the profile (base model alone, greedy) the text differs: the
     * profile's ARM really steered. */
    snprintf(body, sizeof body, "{\"model\":\"tiny\",\"prompt\":\"%s\",\"max_tokens\":12,\"temperature\":0}", prompt);
    http_resp b0;
    http("POST", "/v1/completions", g_key1, body, &b0);
    json_t *jb = body_json(&b0);
    const char *base_text = json_string_value(json_object_get(json_array_get(json_object_get(jb, "choices"), 0), "text"));
    CHECK(b0.status == 200 && base_text && text && strcmp(base_text, text) != 0,
          "base-only output differs from the guided one: '%s'", base_text ? base_text : "(null)");
    json_decref(jb);
    resp_free(&b0);

    /* Streamed: the same text in pieces, then [DONE]. */
    snprintf(body, sizeof body,
             "{\"model\":\"tiny\",\"prompt\":\"%s\",\"max_tokens\":12,\"profile\":\"helpful\",\"stream\":true,"
             "\"stream_options\":{\"include_usage\":true}}",
             prompt);
    http_resp s;
    CHECK(http("POST", "/v1/completions", g_key1, body, &s) == 0 && s.status == 200, "stream status %d", s.status);
    CHECK(strstr(s.headers, "text/event-stream") != NULL, "SSE content type");
    char **ev = NULL;
    int n = sse_events(s.body, &ev);
    CHECK(n >= 3, "SSE framing (%d events): %s", n, s.body);
    if (n >= 3) {
        CHECK(strcmp(ev[n - 1], "[DONE]") == 0, "last event is [DONE]");
        char acc[4096] = "";
        int finish_seen = 0, usage_seen = 0, bad = 0;
        for (int i = 0; i < n - 1; i++) {
            json_t *e = json_loads(ev[i], 0, NULL);
            if (!e) {
                bad++;
                continue;
            }
            CHECK(strcmp(json_string_value(json_object_get(e, "object")), "text_completion") == 0, "chunk object");
            json_t *ch = json_array_get(json_object_get(e, "choices"), 0);
            if (ch) {
                strncat(acc, json_string_value(json_object_get(ch, "text")), sizeof acc - strlen(acc) - 1);
                if (json_is_string(json_object_get(ch, "finish_reason"))) finish_seen++;
            } else if (json_object_get(e, "usage")) {
                usage_seen = json_integer_value(json_object_get(json_object_get(e, "usage"), "completion_tokens")) == ct;
            }
            json_decref(e);
        }
        CHECK(bad == 0, "every chunk is JSON");
        CHECK(finish_seen == 1, "one finish_reason chunk (%d)", finish_seen);
        CHECK(usage_seen, "usage chunk with the same completion_tokens");
        CHECK(text && strcmp(acc, text) == 0, "stream text equals non-stream text:\n '%s'\n '%s'", acc, text ? text : "");
    }
    for (int i = 0; i < n; i++) free(ev[i]);
    free(ev);
    free(want);
    json_decref(j);
    resp_free(&r);
    resp_free(&s);

    /* n = 2 with sampling, explicit reward_models. */
    http("POST", "/v1/completions", g_key2,
         "{\"model\":\"tiny\",\"prompt\":\"Hi\",\"max_tokens\":5,\"n\":2,\"seed\":7,\"temperature\":1,"
         "\"reward_models\":[{\"name\":\"hh\",\"weight\":0.5},{\"name\":\"safe\",\"weight\":0.5}],\"beta\":2}",
         &r);
    j = body_json(&r);
    json_t *chs = json_object_get(j, "choices");
    CHECK(r.status == 200 && json_array_size(chs) == 2 &&
              json_integer_value(json_object_get(json_array_get(chs, 1), "index")) == 1,
          "n = 2: %s", r.body);
    json_decref(j);
    resp_free(&r);
}

/* Text of choice i of a non-streamed completion (malloc'd), or NULL. */
static char *completion_text(const char *key, const char *body, int i, const char **finish) {
    http_resp r;
    if (http("POST", "/v1/completions", key, body, &r) || r.status != 200) {
        fprintf(stderr, "completion failed: %d %s\n", r.status, r.body ? r.body : "");
        resp_free(&r);
        return NULL;
    }
    json_t *j = body_json(&r);
    json_t *c = json_array_get(json_object_get(j, "choices"), (size_t)i);
    const char *t = json_string_value(json_object_get(c, "text"));
    char *out = t ? strdup(t) : NULL;
    static char fr[16];
    snprintf(fr, sizeof fr, "%s", json_is_string(json_object_get(c, "finish_reason"))
                                      ? json_string_value(json_object_get(c, "finish_reason")) : "");
    if (finish) *finish = fr;
    json_decref(j);
    resp_free(&r);
    return out;
}

static void test_sampling(void) {
    const char *b = "{\"model\":\"tiny\",\"prompt\":\"The sea\",\"max_tokens\":16,\"temperature\":1,\"seed\":%d,"
                    "\"profile\":\"helpful\"}";
    char body[256];
    snprintf(body, sizeof body, b, 42);
    char *a1 = completion_text(g_key1, body, 0, NULL), *a2 = completion_text(g_key1, body, 0, NULL);
    snprintf(body, sizeof body, b, 43);
    char *a3 = completion_text(g_key1, body, 0, NULL);
    CHECK(a1 && a2 && strcmp(a1, a2) == 0, "same seed, same text");
    CHECK(a1 && a3 && strcmp(a1, a3) != 0, "another seed, another text");
    /* A stop string taken from the greedy output: the text ends right before it. */
    char *g = completion_text(g_key1, "{\"model\":\"tiny\",\"prompt\":\"The sea\",\"max_tokens\":16,\"profile\":\"helpful\"}", 0, NULL);
    size_t at_i = 0;
    for (size_t i = 1; g && i + 3 <= strlen(g) && !at_i; i++)
        if ((unsigned char)g[i] < 0x80 && (unsigned char)g[i + 1] < 0x80 && (unsigned char)g[i + 2] < 0x80 &&
            g[i] > ' ')
            at_i = i;
    if (at_i) {
        char stop[8];
        memcpy(stop, g + at_i, 3);
        stop[3] = 0;
        json_t *sj = json_pack("{s:s,s:s,s:i,s:s,s:[s]}", "model", "tiny", "prompt", "The sea", "max_tokens", 16,
                               "profile", "helpful", "stop", stop);
        char *sb = sj ? json_dumps(sj, JSON_COMPACT) : NULL;
        CHECK(sb != NULL, "stop request body");
        const char *fr = NULL;
        char *st = sb ? completion_text(g_key1, sb, 0, &fr) : NULL;
        const char *at = strstr(g, stop);
        CHECK(st && at && strlen(st) == (size_t)(at - g) && strncmp(st, g, strlen(st)) == 0 && strcmp(fr, "stop") == 0,
              "stop string '%s': '%s' from '%s' (%s)", stop, st ? st : "(null)", g, fr ? fr : "");
        free(st);
        free(sb);
        json_decref(sj);
    } else {
        CHECK(0, "greedy output has 3 ASCII bytes for a stop-string test: '%s'", g ? g : "(null)");
    }
    free(g);
    free(a1);
    free(a2);
    free(a3);
    /* n = 2 streamed: chunks of both indices, one finish each. */
    http_resp s;
    http("POST", "/v1/completions", g_key1,
         "{\"model\":\"tiny\",\"prompt\":\"Hi\",\"max_tokens\":4,\"n\":2,\"stream\":true,\"ignore_eos\":true}", &s);
    char **ev = NULL;
    int n = sse_events(s.body, &ev), fin[2] = {0, 0};
    for (int i = 0; i < n - 1; i++) {
        json_t *e = json_loads(ev[i], 0, NULL);
        json_t *c = json_array_get(json_object_get(e, "choices"), 0);
        int idx = (int)json_integer_value(json_object_get(c, "index"));
        if (idx >= 0 && idx < 2 && json_is_string(json_object_get(c, "finish_reason"))) fin[idx]++;
        json_decref(e);
    }
    CHECK(s.status == 200 && n > 2 && strcmp(ev[n - 1], "[DONE]") == 0 && fin[0] == 1 && fin[1] == 1,
          "n = 2 streamed: %d events, finishes %d %d", n, fin[0], fin[1]);
    for (int i = 0; i < n; i++) free(ev[i]);
    free(ev);
    resp_free(&s);
}

static void test_logprobs(void) {
    /* Greedy: the chosen token is the most likely one, so its log-prob equals
     * the first alternative's; offsets follow the token texts. */
    http_resp r;
    http("POST", "/v1/completions", g_key1,
         "{\"model\":\"tiny\",\"prompt\":\"Hi\",\"max_tokens\":6,\"temperature\":0,\"logprobs\":3,\"ignore_eos\":true}", &r);
    json_t *j = body_json(&r);
    json_t *lo = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs");
    json_t *toks = json_object_get(lo, "tokens"), *lps = json_object_get(lo, "token_logprobs"),
           *tops = json_object_get(lo, "top_logprobs"), *offs = json_object_get(lo, "text_offset");
    int ct = (int)json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens"));
    CHECK(r.status == 200 && ct == 6 && json_array_size(toks) == 6 && json_array_size(lps) == 6 &&
              json_array_size(tops) == 6 && json_array_size(offs) == 6,
          "completion logprobs shape: %s", r.body);
    int ok = 1;
    for (size_t i = 0; i < json_array_size(toks); i++) {
        double lp = json_real_value(json_array_get(lps, i));
        json_t *m = json_array_get(tops, i);
        double best = -1e30;
        const char *k;
        json_t *v;
        json_object_foreach(m, k, v) if (json_real_value(v) > best) best = json_real_value(v);
        if (!(lp <= 0 && fabs(best - lp) < 1e-6 && json_object_size(m) >= 1 && json_object_size(m) <= 3)) ok = 0;
        if (i + 1 < json_array_size(toks) &&
            json_integer_value(json_array_get(offs, i + 1)) - json_integer_value(json_array_get(offs, i)) !=
                (json_int_t)json_string_length(json_array_get(toks, i)))
            ok = 0;
    }
    CHECK(ok, "greedy logprobs: chosen = best alternative, offsets follow tokens: %s", r.body);
    json_decref(j);
    resp_free(&r);
    /* Chat, streamed: every token's entry arrives, with top_logprobs alternatives. */
    http("POST", "/v1/chat/completions", g_key1,
         "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":5,"
         "\"temperature\":0.8,\"seed\":3,\"logprobs\":true,\"top_logprobs\":4,\"ignore_eos\":true,\"stream\":true}", &r);
    char **ev = NULL;
    int n = sse_events(r.body, &ev), entries = 0, bad = 0;
    for (int i = 0; i < n - 1; i++) {
        json_t *e = json_loads(ev[i], 0, NULL);
        json_t *c = json_object_get(json_object_get(json_array_get(json_object_get(e, "choices"), 0), "logprobs"), "content");
        for (size_t k = 0; k < json_array_size(c); k++) {
            json_t *x = json_array_get(c, k);
            entries++;
            if (json_array_size(json_object_get(x, "top_logprobs")) != 4 ||
                json_array_size(json_object_get(x, "bytes")) != json_string_length(json_object_get(x, "token")) ||
                !(json_real_value(json_object_get(x, "logprob")) <= 0))
                bad++;
        }
        json_decref(e);
    }
    CHECK(r.status == 200 && n >= 2 && strcmp(ev[n - 1], "[DONE]") == 0 && entries == 5 && bad == 0,
          "streamed chat logprobs: %d entries, %d bad: %s", entries, bad, r.body);
    for (int i = 0; i < n; i++) free(ev[i]);
    free(ev);
    resp_free(&r);
}

/* A prompt longer than the context (2048 positions): 400 when not streamed;
 * streamed, the error arrives as an SSE error event before [DONE]. */
static void test_too_long(void) {
    size_t n = 40000;
    char *b = malloc(n + 200);
    int k = snprintf(b, 200, "{\"model\":\"tiny\",\"prompt\":\"");
    for (size_t i = 0; i < n; i++) b[k + i] = "abcdefghij "[i % 11];
    snprintf(b + k + n, 200, "\",\"max_tokens\":4%s}", "");
    http_resp r;
    http("POST", "/v1/completions", g_key1, b, &r);
    check_error(&r, 400, "", "context_length_exceeded", "prompt longer than the context");
    resp_free(&r);
    snprintf(b + k + n, 200, "\",\"max_tokens\":4,\"stream\":true}");
    http("POST", "/v1/completions", g_key1, b, &r);
    char **ev = NULL;
    int ne = sse_events(r.body, &ev);
    json_t *e = ne >= 2 ? json_loads(ev[ne - 2], 0, NULL) : NULL;
    json_t *code = json_object_get(json_object_get(e, "error"), "code");
    CHECK(r.status == 200 && ne == 2 && strcmp(ev[1], "[DONE]") == 0 && json_is_string(code) &&
              strcmp(json_string_value(code), "context_length_exceeded") == 0,
          "streamed error event: %s", r.body);
    json_decref(e);
    for (int i = 0; i < ne; i++) free(ev[i]);
    free(ev);
    resp_free(&r);
    free(b);
}

static void test_chat(void) {
    const char *body = "{\"model\":\"tiny\",\"messages\":[{\"role\":\"system\",\"content\":\"Be kind.\"},"
                       "{\"role\":\"user\",\"content\":\"Tell me a story\"}],\"max_tokens\":6,\"temperature\":0,"
                       "\"reward_models\":[{\"name\":\"safe\",\"weight\":1}]}";
    http_resp r;
    CHECK(http("POST", "/v1/chat/completions", g_key2, body, &r) == 0 && r.status == 200, "chat: %d %s", r.status,
          r.body);
    json_t *j = body_json(&r);
    json_t *msg = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message");
    const char *content = json_string_value(json_object_get(msg, "content"));
    CHECK(j && strcmp(json_string_value(json_object_get(j, "object")), "chat.completion") == 0 &&
              strcmp(json_string_value(json_object_get(msg, "role")), "assistant") == 0 && content,
          "chat.completion shape: %s", r.body);
    /* The prompt is the chat template's rendering: longer than the raw text. */
    int pt = (int)json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens"));
    CHECK(pt > 5, "templated prompt tokens %d", pt);
    printf("chat (%d prompt tokens): '%s'\n", pt, content ? content : "(null)");
    /* Streamed chat: role in the first delta, same content. */
    char sbody[1024];
    snprintf(sbody, sizeof sbody, "%.*s,\"stream\":true}", (int)strlen(body) - 1, body);
    http_resp s;
    http("POST", "/v1/chat/completions", g_key2, sbody, &s);
    char **ev = NULL;
    int n = sse_events(s.body, &ev);
    CHECK(s.status == 200 && n >= 2 && strcmp(ev[n - 1], "[DONE]") == 0, "chat stream: %s", s.body);
    char acc[4096] = "";
    int role_first = 0;
    for (int i = 0; i < n - 1; i++) {
        json_t *e = json_loads(ev[i], 0, NULL);
        json_t *d = json_object_get(json_array_get(json_object_get(e, "choices"), 0), "delta");
        if (i == 0) role_first = json_is_string(json_object_get(d, "role"));
        if (json_is_string(json_object_get(d, "content")))
            strncat(acc, json_string_value(json_object_get(d, "content")), sizeof acc - strlen(acc) - 1);
        CHECK(e && strcmp(json_string_value(json_object_get(e, "object")), "chat.completion.chunk") == 0, "chunk type");
        json_decref(e);
    }
    CHECK(role_first, "first delta carries the role");
    CHECK(content && strcmp(acc, content) == 0, "chat stream content equals non-stream: '%s' vs '%s'", acc,
          content ? content : "");
    for (int i = 0; i < n; i++) free(ev[i]);
    free(ev);
    json_decref(j);
    resp_free(&r);
    resp_free(&s);
}

static int wait_metric(const char *series, double want, int ms) {
    for (int t = 0; t < ms; t += 50) {
        if (get_metric(series) >= want) return 1;
        gn_sleep_ms(50);
    }
    return 0;
}

static void test_disconnect(gn_coord_server *srv) {
    double aborts0 = get_metric("genarm:request_success_total{finished_reason=\"abort\"}");
    if (aborts0 < 0) aborts0 = 0;
    /* Mid-stream: read the first bytes of the stream, then hang up. */
    const char *body = "{\"model\":\"tiny\",\"prompt\":\"Go\",\"max_tokens\":2000,\"ignore_eos\":true,"
                       "\"temperature\":1,\"stream\":true}";
    int fd = connect_to(g_port);
    CHECK(fd >= 0 && send_request(fd, "POST", "/v1/completions", g_key1, body, strlen(body)) == 0, "send");
    char buf[512];
    ssize_t k = read(fd, buf, sizeof buf - 1);
    CHECK(k > 0, "got the stream's first bytes");
    buf[k > 0 ? k : 0] = 0;
    CHECK(strstr(buf, "200") != NULL, "stream started: %s", buf);
    close(fd);
    CHECK(wait_metric("genarm:request_success_total{finished_reason=\"abort\"}", aborts0 + 1, 10000),
          "disconnect mid-stream aborted the job");
    /* Not streamed: hang up right after sending. */
    body = "{\"model\":\"tiny\",\"prompt\":\"Go\",\"max_tokens\":2000,\"ignore_eos\":true,\"temperature\":1}";
    fd = connect_to(g_port);
    CHECK(fd >= 0 && send_request(fd, "POST", "/v1/completions", g_key1, body, strlen(body)) == 0, "send 2");
    gn_sleep_ms(30);
    close(fd);
    CHECK(wait_metric("genarm:request_success_total{finished_reason=\"abort\"}", aborts0 + 2, 10000),
          "disconnect while waiting aborted the job");
    for (int t = 0; t < 100 && gn_coord_server_inflight(srv); t++) gn_sleep_ms(50);
    CHECK(gn_coord_server_inflight(srv) == 0, "nothing left in flight");
}

static void test_metrics(void) {
    http_resp r;
    CHECK(http("GET", "/metrics", NULL, NULL, &r) == 0 && r.status == 200, "/metrics");
    CHECK(strstr(r.headers, "text/plain") != NULL, "metrics content type");
    /* Every sample line: name[{labels}] value. */
    int bad = 0, samples = 0;
    char *save = NULL;
    char *copy = strdup(r.body);
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#') continue;
        char *sp = strrchr(line, ' ');
        char *end;
        if (!sp) {
            bad++;
            continue;
        }
        strtod(sp + 1, &end);
        if (*end && strcmp(sp + 1, "+Inf") != 0) bad++;
        samples++;
    }
    free(copy);
    CHECK(bad == 0 && samples > 50, "metrics lines parse (%d samples, %d bad)", samples, bad);
    CHECK(metric_value(r.body, "genarm:generation_tokens_total") > 10, "generation tokens counted");
    CHECK(metric_value(r.body, "genarm:prompt_tokens_total") > 0, "prompt tokens counted");
    CHECK(metric_value(r.body, "genarm:time_to_first_token_seconds_count") >= 4, "TTFT observed");
    CHECK(metric_value(r.body, "genarm:http_requests_total{code=\"401\"}") >= 2, "401s counted");
    int pr = promtool_check(r.body);
    if (pr >= 0) CHECK(pr == 0, "promtool check metrics on the live /metrics");
    resp_free(&r);
}

static void test_drain(gn_coord_server *srv) {
    gn_coord_server_drain(srv);
    http_resp r;
    http("GET", "/ready", NULL, NULL, &r);
    CHECK(r.status == 503, "/ready while draining: %d", r.status);
    resp_free(&r);
    http("POST", "/v1/completions", g_key1, "{\"model\":\"tiny\",\"prompt\":\"Hi\"}", &r);
    check_error(&r, 503, "", "draining", "request while draining");
    resp_free(&r);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    gn_redis_start();
    make_models();
    atexit(rm_models);
    gn_err e = {0};
    gn_coord_metrics *cm = gn_coord_metrics_create(&e);
    gn_inproc_params ip = {0};
    char bd[128], a1[128], a2[128];
    snprintf(bd, sizeof bd, "%s/base", g_dir);
    snprintf(a1, sizeof a1, "%s/hh", g_dir);
    snprintf(a2, sizeof a2, "%s/safe", g_dir);
    ip.base_dir = bd;
    ip.arm_dirs[0] = a1;
    ip.arm_dirs[1] = a2;
    ip.arm_names[0] = "hh";
    ip.arm_names[1] = "safe";
    ip.n_arms = 2;
    ip.n_threads = 1;
    ip.model_id = "tiny";
    ip.metrics = cm;
    gn_inproc *x = gn_inproc_create(&ip, &e);
    CHECK(x != NULL, "inproc backend: %s", e.msg);
    if (!x) GN_TEST_MAIN_END();
    setup_redis(gn_inproc_tokenizer_hash(x));
    gn_auth_redis *ar = gn_auth_redis_create("127.0.0.1", gn_redis_port, 2000, &e);
    CHECK(ar != NULL, "auth: %s", e.msg);
    gn_coord_auth auth = gn_auth_redis_iface(ar);
    gn_coord_server_params sp = gn_coord_server_default_params();
    sp.backend = gn_inproc_backend(x);
    sp.auth = &auth;
    sp.metrics = cm;
    sp.max_body = 64 * 1024;
    gn_coord_server *srv = gn_coord_server_start(&sp, &e);
    CHECK(srv != NULL, "server: %s", e.msg);
    if (!srv) GN_TEST_MAIN_END();
    g_port = gn_coord_server_port(srv);
    CHECK(g_port > 0, "port");

    test_routes("tiny");
    test_errors();
    test_completion();
    test_sampling();
    test_logprobs();
    test_too_long();
    test_chat();
    test_disconnect(srv);
    test_metrics();
    test_drain(srv);

    gn_coord_server_stop(srv);
    gn_inproc_free(x);
    gn_auth_redis_free(ar);
    gn_coord_metrics_free(cm);
    GN_TEST_MAIN_END();
}
