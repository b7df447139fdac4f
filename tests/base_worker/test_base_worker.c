/* test_base_worker.c — base_worker as a real process on a random loopback
 * port, driven through the real step client (wire/step_client.h):
 *  (a) log-probs over the wire == in-process gn_runner_step for the same
 *      batches (fp32 bit-exact; fp16/bf16 == the same rounding of those);
 *      batched multi-sequence requests mixing prefill and decode; rewind;
 *  (b) garbage frames, truncated protobuf, wrong version, huge claimed sizes,
 *      bad dtype, bad multipart layout, out-of-range tokens, unknown model and
 *      unsupported commands get Error replies and the worker keeps answering;
 *  (c) release frees (a later decode is UNKNOWN_SEQ, a restart from 0 is a new
 *      sequence), release_after, and the idle timeout frees;
 *  (d) SIGTERM drains and exits 0.
 * Children are killed on every exit path (atexit, fatal signals) and get
 * PR_SET_PDEATHSIG so they die with the test even on SIGKILL. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "backend.h"
#include "gn_alloc.h"
#include "gn_half.h"
#include "gn_test.h"
#include "worker_proc.h"
#include "model.h"
#include "model_maker.h"
#include "runner.h"
#include "step_client.h"
#include "step_server.h"
#include "wire.h"

#define TIMEOUT_MS 10000
#define MAX_CHILDREN 4

static char g_root[256];
static char g_model[512];
static char g_bin[512];
static pid_t g_children[MAX_CHILDREN];

static void kill_children(void) {
    for (int i = 0; i < MAX_CHILDREN; i++)
        if (g_children[i] > 0) {
            kill(g_children[i], SIGKILL);
            waitpid(g_children[i], NULL, 0);
            g_children[i] = 0;
        }
}

static void on_fatal(int sig) {
    kill_children();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void cleanup(void) {
    kill_children();
    if (g_root[0])
        gn_t_finish_dir(g_root, gn_t_fail, 40);
}

typedef struct worker {
    pid_t pid;
    int slot;
    char endpoint[256];
} worker;

/* Starts base_worker with extra args on tcp://127.0.0.1:* and waits for its
 * ready file (the endpoint it bound). Returns 0 or -1. */
static int start_worker(worker *w, const char *name, const char *const *extra) {
    char ready[600], log[600];
    snprintf(ready, sizeof ready, "%s/%s.ready", g_root, name);
    snprintf(log, sizeof log, "%s/%s.log", g_root, name);
    unlink(ready);
    const char *argv[32];
    int n = 0;
    argv[n++] = g_bin;
    argv[n++] = "--model";
    argv[n++] = g_model;
    argv[n++] = "--bind";
    argv[n++] = "tcp://127.0.0.1:*";
    argv[n++] = "--device";
    argv[n++] = "cpu";
    argv[n++] = "--threads";
    argv[n++] = "1";
    argv[n++] = "--ready-file";
    argv[n++] = ready;
    argv[n++] = "--worker-id";
    argv[n++] = name;
    for (int i = 0; extra && extra[i]; i++) argv[n++] = extra[i];
    argv[n] = NULL;
    int slot = -1;
    for (int i = 0; i < MAX_CHILDREN; i++)
        if (g_children[i] == 0) {
            slot = i;
            break;
        }
    if (slot < 0)
        return -1;
    pid_t pid = gn_t_spawn(g_bin, argv, log);
    if (pid < 0)
        return -1;
    g_children[slot] = pid;
    w->pid = pid;
    w->slot = slot;
    int rc = gn_t_wait_ready(pid, ready, log, "base_worker", w->endpoint, sizeof w->endpoint);
    if (rc == -2)
        g_children[slot] = 0; /* reaped */
    return rc == 0 ? 0 : -1;
}

/* SIGTERM, then waits up to timeout_ms. Returns the exit status, or -1
 * (killed) when it did not exit in time. */
static int stop_worker(worker *w, int timeout_ms) {
    int rc = gn_t_stop(w->pid, SIGTERM, timeout_ms);
    g_children[w->slot] = 0;
    return rc;
}

/* ---- in-process reference --------------------------------------------------- */

static gn_backend *g_be;
static gn_model *g_m;
static gn_runner *g_r;
static int g_nout, g_nvocab;

static uint64_t g_rng = 777;
static int32_t rand_tok(void) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (int32_t)((g_rng >> 33) % (uint64_t)g_nvocab);
}

/* Sends one step and returns the reply (caller frees), NULL on failure. */
static gn_wire_env *step(gn_step_client *c, const gn_step_seq *seqs, int n, gn_dtype dt) {
    gn_err e = {0};
    uint64_t id;
    gn_wire_env *rep = NULL;
    if (gn_step_client_step_send(c, NULL, 0, seqs, n, dt, &id, &e) != 0 ||
        gn_step_client_recv(c, id, TIMEOUT_MS, &rep, &e) != 0) {
        CHECK(0, "step round trip: %s", e.msg);
        return NULL;
    }
    return rep;
}

static int is_error(const gn_wire_env *rep, int code) {
    return rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_ERROR && (int)rep->error->code == code;
}

static const char *describe(const gn_wire_env *rep) {
    static char buf[300];
    if (!rep)
        return "no reply";
    if (rep->body_case == GENARM__V1__ENVELOPE__BODY_ERROR)
        snprintf(buf, sizeof buf, "error %s: %s", gn_wire_code_name(rep->error->code), rep->error->message);
    else
        snprintf(buf, sizeof buf, "body %d", (int)rep->body_case);
    return buf;
}

/* A heartbeat round trip: the worker is alive and answering. */
static int alive(gn_step_client *c, Genarm__V1__Heartbeat *out) {
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    Genarm__V1__Heartbeat hb = GENARM__V1__HEARTBEAT__INIT;
    env.body_case = GENARM__V1__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    gn_wire_env *rep = NULL;
    gn_err e = {0};
    int ok = gn_step_client_call(c, &env, TIMEOUT_MS, &rep, &e) == 0 && rep &&
             rep->body_case == GENARM__V1__ENVELOPE__BODY_HEARTBEAT;
    if (ok && out) {
        *out = *rep->heartbeat;
        out->worker_id = NULL;
        out->n_models = 0;
        out->models = NULL;
    }
    gn_wire_env_free(rep);
    return ok;
}

/* Compares the step reply's log-probs with the in-process result for the
 * same items, rows in order. */
static void compare(const char *what, const gn_wire_env *rep, const gn_step_seq *seqs, int n,
                    const float *want, int want_rows, gn_dtype dt) {
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT, "%s: %s", what, describe(rep));
    if (!rep || rep->body_case != GENARM__V1__ENVELOPE__BODY_STEP_RESULT)
        return;
    const gn_wire_step_resp *r = rep->step_result;
    CHECK(r->n_errors == 0, "%s: %zu sequence errors (%s)", what, r->n_errors,
          r->n_errors ? r->errors[0]->message : "");
    CHECK(r->n_results == (size_t)n, "%s: %zu results", what, r->n_results);
    CHECK(r->compute_us > 0 && r->compute_us < 60000000u, "%s: compute_us %llu", what,
          (unsigned long long)r->compute_us);
    CHECK(r->logprobs && r->logprobs->rows == (uint64_t)want_rows && r->logprobs->cols == (uint64_t)g_nout &&
              (int)r->logprobs->dtype == (int)gn_wire_dtype_to_proto(dt),
          "%s: tensor shape/dtype", what);
    uint64_t row = 0;
    for (int i = 0; i < n && (size_t)i < r->n_results; i++) {
        int nr = seqs[i].all_logits ? seqs[i].n_tokens : 1;
        CHECK(r->results[i]->seq_id == seqs[i].seq_id && r->results[i]->row_offset == row &&
                  r->results[i]->n_rows == (uint32_t)nr &&
                  r->results[i]->seq_len == seqs[i].start_pos + (uint32_t)seqs[i].n_tokens,
              "%s: result %d (seq %llu, offset %llu, rows %u, len %u)", what, i,
              (unsigned long long)r->results[i]->seq_id, (unsigned long long)r->results[i]->row_offset,
              r->results[i]->n_rows, r->results[i]->seq_len);
        row += (uint64_t)nr;
    }
    size_t nv = (size_t)want_rows * (size_t)g_nout;
    float *got = malloc(nv * sizeof(float) + 1);
    uint64_t rows, cols;
    gn_err e = {0};
    CHECK(gn_step_resp_logprobs_f32(r, got, nv, &rows, &cols, &e) == 0, "%s: unpack: %s", what, e.msg);
    const float *view = NULL;
    uint64_t vr, vc;
    float *scratch = malloc(nv * sizeof(float) + 1);
    CHECK(gn_step_resp_logprobs_view(r, scratch, nv, &view, &vr, &vc, &e) == 0 && vr == rows && vc == cols &&
              memcmp(view, got, nv * sizeof(float)) == 0 && (dt == GN_F32) == (view != scratch),
          "%s: the in-place view equals the copy (read in place for F32 only)", what);
    free(scratch);
    if (dt == GN_F32) {
        CHECK(memcmp(got, want, nv * sizeof(float)) == 0, "%s: fp32 log-probs bit-identical", what);
    } else {
        float *w2 = malloc(nv * sizeof(float) + 1);
        for (size_t i = 0; i < nv; i++)
            w2[i] = dt == GN_F16 ? gn_f16_to_f32(gn_f32_to_f16(want[i])) : gn_bf16_to_f32(gn_f32_to_bf16(want[i]));
        CHECK(memcmp(got, w2, nv * sizeof(float)) == 0, "%s: == the same rounding of the fp32 rows", what);
        gn_t_close(what, got, want, nv, 1e-6f, dt == GN_F16 ? 1.0f / 2048 : 1.0f / 256);
        free(w2);
    }
    free(got);
}

/* Runs the same items in process on fresh or continuing reference sequences. */
static float *ref_step(gn_seq **rs, const gn_step_seq *seqs, int n, int *rows_out) {
    gn_step_item it[16];
    for (int i = 0; i < n; i++) {
        gn_step_item x = {rs[i], seqs[i].tokens, seqs[i].n_tokens, seqs[i].all_logits};
        it[i] = x;
    }
    int rows = gn_runner_step_rows(it, n);
    float *out = malloc((size_t)rows * (size_t)g_nout * sizeof(float));
    gn_err e = {0};
    CHECK(gn_runner_step(g_r, it, n, out, &e) == 0, "reference step: %s", e.msg);
    *rows_out = rows;
    return out;
}

/* (a) */
static void test_logprobs(gn_step_client *c) {
    enum { NS = 4 };
    static const int lens[NS] = {1, 6, 11, 3};
    int32_t toks[NS][16];
    for (int s = 0; s < NS; s++)
        for (int t = 0; t < 16; t++) toks[s][t] = rand_tok();
    for (int d = 0; d < 3; d++) {
        gn_dtype dt = (gn_dtype)d;
        char what[64];
        gn_err e = {0};
        gn_seq *rs[NS];
        for (int s = 0; s < NS; s++) rs[s] = gn_seq_create(g_r, &e);
        uint64_t base = 100 * (uint64_t)(d + 1);
        /* Step 1: prefill of three sequences, one wanting every row. */
        gn_step_seq q[NS];
        for (int s = 0; s < 3; s++) {
            gn_step_seq x = {base + (uint64_t)s, 0, toks[s], lens[s], s == 2, 0};
            q[s] = x;
        }
        int rows;
        float *want = ref_step(rs, q, 3, &rows);
        gn_wire_env *rep = step(c, q, 3, dt);
        snprintf(what, sizeof what, "%s prefill x3", gn_dtype_name(dt));
        compare(what, rep, q, 3, want, rows, dt);
        gn_wire_env_free(rep);
        free(want);
        /* Step 2: decode the three, and prefill a fourth in the same message. */
        gn_step_seq q2[NS];
        for (int s = 0; s < 3; s++) {
            gn_step_seq x = {base + (uint64_t)s, (uint32_t)lens[s], &toks[s][lens[s]], 1, 0, 0};
            q2[s] = x;
        }
        gn_step_seq x4 = {base + 3, 0, toks[3], lens[3], 1, 0};
        q2[3] = x4;
        want = ref_step(rs, q2, NS, &rows);
        rep = step(c, q2, NS, dt);
        snprintf(what, sizeof what, "%s decode x3 + prefill", gn_dtype_name(dt));
        compare(what, rep, q2, NS, want, rows, dt);
        gn_wire_env_free(rep);
        free(want);
        /* Step 3 (fp32 only): rewind sequence 1 by two tokens and append a
         * different token: == the same truncation in process. */
        if (dt == GN_F32) {
            int32_t other = (toks[1][lens[1] - 1] + 1) % g_nvocab;
            gn_step_seq rw = {base + 1, (uint32_t)lens[1] - 1, &other, 1, 0, 0};
            gn_seq_truncate(rs[1], lens[1] - 1);
            want = ref_step(&rs[1], &rw, 1, &rows);
            rep = step(c, &rw, 1, dt);
            compare("rewind by two tokens", rep, &rw, 1, want, rows, dt);
            gn_wire_env_free(rep);
            free(want);
        }
        for (int s = 0; s < NS; s++) gn_seq_free(rs[s]);
        /* Free them on the worker too. */
        uint64_t ids[NS] = {base, base + 1, base + 2, base + 3}, id;
        CHECK(gn_step_client_release_send(c, NULL, 0, ids, NS, &id, &e) == 0, "release send");
        CHECK(gn_step_client_recv(c, id, TIMEOUT_MS, &rep, &e) == 0 && rep &&
                  rep->body_case == GENARM__V1__ENVELOPE__BODY_RELEASE_RESULT && rep->release_result->released == NS,
              "release of %d: %s", NS, describe(rep));
        gn_wire_env_free(rep);
    }
    Genarm__V1__Heartbeat hb;
    CHECK(alive(c, &hb) && hb.active_seqs == 0 && hb.kv_used_blocks == 0 && hb.max_seqs == 8,
          "all released: %u seqs, %u blocks", hb.active_seqs, hb.kv_used_blocks);
}

/* Sends raw bytes and expects an Error reply with that code. */
static void expect_raw_error(gn_step_client *c, const char *what, const void *buf, size_t len, int code) {
    gn_err e = {0};
    CHECK(gn_step_client_send_raw(c, buf, len, &e) == 0, "%s: send: %s", what, e.msg);
    uint8_t *rb = NULL;
    size_t rl = 0;
    if (gn_step_client_recv_raw(c, TIMEOUT_MS, &rb, &rl, &e) != 0) {
        CHECK(0, "%s: no reply: %s", what, e.msg);
        return;
    }
    gn_wire_env *rep = NULL;
    int wc;
    uint64_t rid;
    CHECK(gn_wire_decode(rb, rl, NULL, &rep, &wc, &rid, &e) == 0, "%s: reply decodes: %s", what, e.msg);
    CHECK(is_error(rep, code), "%s: want %s, got %s", what, gn_wire_code_name(code), describe(rep));
    gn_wire_env_free(rep);
    gn_free(rb);
    CHECK(alive(c, NULL), "%s: worker still answers", what);
}

/* (b) */
static void test_bad_frames(gn_step_client *c, const char *endpoint) {
    uint8_t junk[300];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)(i * 131 + 7);
    expect_raw_error(c, "garbage", junk, sizeof junk, GENARM__V1__ERROR_CODE__ERROR_BAD_FRAME);
    expect_raw_error(c, "empty frame", "", 0, GENARM__V1__ERROR_CODE__ERROR_BAD_FRAME);

    /* A valid step frame, truncated in the middle of its token array. */
    int32_t toks[40];
    for (int i = 0; i < 40; i++) toks[i] = rand_tok();
    gn_step_seq q = {9000, 0, toks, 40, 0, 0};
    Genarm__V1__SeqStep ss = GENARM__V1__SEQ_STEP__INIT;
    ss.seq_id = q.seq_id;
    ss.tokens = toks;
    ss.n_tokens = 40;
    Genarm__V1__SeqStep *sp = &ss;
    gn_wire_step_req req = GENARM__V1__STEP_REQUEST__INIT;
    req.n_seqs = 1;
    req.seqs = &sp;
    req.dtype = GENARM__V1__DTYPE__DTYPE_F32;
    gn_wire_env env;
    gn_wire_env_init(&env, 77);
    env.body_case = GENARM__V1__ENVELOPE__BODY_STEP;
    env.step = &req;
    uint8_t *buf;
    size_t len;
    gn_err e = {0};
    CHECK(gn_wire_encode(&env, &buf, &len, &e) == 0, "encode");
    expect_raw_error(c, "truncated protobuf", buf, len - 20, GENARM__V1__ERROR_CODE__ERROR_BAD_FRAME);
    gn_free(buf);

    env.protocol_version = 2;
    CHECK(gn_wire_encode(&env, &buf, &len, &e) == 0, "encode v2");
    expect_raw_error(c, "protocol version 2", buf, len, GENARM__V1__ERROR_CODE__ERROR_BAD_VERSION);
    gn_free(buf);
    env.protocol_version = GN_WIRE_PROTOCOL_VERSION;

    static const uint8_t huge[] = {0x08, 0x01, 0x10, 0x07, 0x52, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 0x0a};
    expect_raw_error(c, "claimed 2^40-byte body", huge, sizeof huge, GENARM__V1__ERROR_CODE__ERROR_BAD_FRAME);
    static const uint8_t huge_tok[] = {0x08, 0x01, 0x52, 0x0a, 0x12, 0x08, 0x08, 0x01,
                                       0x1a, 0x80, 0x80, 0x80, 0x80, 0x08};
    expect_raw_error(c, "claimed 2^31-byte token array", huge_tok, sizeof huge_tok,
                     GENARM__V1__ERROR_CODE__ERROR_BAD_FRAME);

    /* Well-formed but invalid requests, through the normal path. */
    gn_wire_env *rep = NULL;
    req.dtype = 9;
    CHECK(gn_step_client_call(c, &env, TIMEOUT_MS, &rep, &e) == 0 &&
              is_error(rep, GENARM__V1__ERROR_CODE__ERROR_BAD_DTYPE) && rep->request_id == env.request_id,
          "bad dtype: %s", describe(rep));
    gn_wire_env_free(rep);
    req.dtype = GENARM__V1__DTYPE__DTYPE_UNSPECIFIED;
    CHECK(gn_step_client_call(c, &env, TIMEOUT_MS, &rep, &e) == 0 &&
              is_error(rep, GENARM__V1__ERROR_CODE__ERROR_BAD_DTYPE),
          "unspecified dtype: %s", describe(rep));
    gn_wire_env_free(rep);
    req.dtype = GENARM__V1__DTYPE__DTYPE_F32;

    /* More new sequences than --max-seqs (8): the ninth gets ERROR_CAPACITY
     * (the coordinator retries it), the others are served. */
    gn_step_seq many[9];
    for (int i = 0; i < 9; i++) {
        gn_step_seq x = {5000 + (uint64_t)i, 0, toks, 1, 0, 0};
        many[i] = x;
    }
    rep = step(c, many, 9, GN_F32);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT && rep->step_result->n_results == 8 &&
              rep->step_result->n_errors == 1 && rep->step_result->errors[0]->seq_id == 5008 &&
              rep->step_result->errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_CAPACITY,
          "9 new seqs on 8 slots: %s", describe(rep));
    gn_wire_env_free(rep);
    {
        uint64_t rid, ids[8];
        for (int i = 0; i < 8; i++) ids[i] = 5000 + (uint64_t)i;
        CHECK(gn_step_client_release_send(c, NULL, 0, ids, 8, &rid, &e) == 0 &&
                  gn_step_client_recv(c, rid, TIMEOUT_MS, &rep, &e) == 0 && rep->release_result->released == 8,
              "release the 8");
        gn_wire_env_free(rep);
    }
    /* More than the wire limit in one request: refused whole. */
    enum { N_BIG = 257 };
    gn_step_seq *big = gn_malloc(N_BIG * sizeof *big);
    for (int i = 0; big && i < N_BIG; i++) big[i] = (gn_step_seq){9000 + (uint64_t)i, 0, toks, 1, 0, 0};
    rep = big ? step(c, big, N_BIG, GN_F32) : NULL;
    CHECK(is_error(rep, GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE), "257 seqs: %s", describe(rep));
    gn_wire_env_free(rep);
    gn_free(big);
    /* Duplicate ids. */
    many[1].seq_id = many[0].seq_id;
    rep = step(c, many, 2, GN_F32);
    CHECK(is_error(rep, GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST), "duplicate: %s", describe(rep));
    gn_wire_env_free(rep);

    /* One bad sequence does not sink the others. */
    int32_t bad[2] = {1, g_nvocab + 5};
    gn_step_seq mix[3] = {{6000, 0, toks, 3, 0, 0}, {6001, 0, bad, 2, 0, 0}, {6002, 4, toks, 1, 0, 0}};
    rep = step(c, mix, 3, GN_F32);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT, "mixed: %s", describe(rep));
    if (rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT) {
        const gn_wire_step_resp *r = rep->step_result;
        CHECK(r->n_results == 1 && r->results[0]->seq_id == 6000 && r->results[0]->seq_len == 3,
              "the good sequence ran");
        CHECK(r->n_errors == 2 && r->errors[0]->has_seq && r->errors[0]->seq_id == 6001 &&
                  r->errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_TOKEN_RANGE && r->errors[1]->seq_id == 6002 &&
                  r->errors[1]->code == GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_SEQ,
              "per-sequence errors");
    }
    gn_wire_env_free(rep);
    /* A position ahead of what the worker holds. */
    gn_step_seq ahead = {6000, 5, toks, 1, 0, 1};
    rep = step(c, &ahead, 1, GN_F32);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT && rep->step_result->n_errors == 1 &&
              rep->step_result->errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_POS_MISMATCH,
          "start_pos ahead: %s", describe(rep));
    gn_wire_env_free(rep);
    uint64_t id, rel = 6000;
    CHECK(gn_step_client_release_send(c, NULL, 0, &rel, 1, &id, &e) == 0 &&
              gn_step_client_recv(c, id, TIMEOUT_MS, &rep, &e) == 0 && rep->release_result->released == 1,
          "release 6000");
    gn_wire_env_free(rep);

    /* An ARM name on the base worker, and a model command. */
    gn_step_seq one = {7000, 0, toks, 1, 0, 1};
    CHECK(gn_step_client_step_send(c, "helpful", 2, &one, 1, GN_F32, &id, &e) == 0 &&
              gn_step_client_recv(c, id, TIMEOUT_MS, &rep, &e) == 0 &&
              is_error(rep, GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL),
          "named model: %s", describe(rep));
    gn_wire_env_free(rep);
    Genarm__V1__LoadModel lm = GENARM__V1__LOAD_MODEL__INIT;
    gn_wire_env cmd;
    gn_wire_env_init(&cmd, 0);
    cmd.body_case = GENARM__V1__ENVELOPE__BODY_LOAD;
    cmd.load = &lm;
    CHECK(gn_step_client_call(c, &cmd, TIMEOUT_MS, &rep, &e) == 0 &&
              is_error(rep, GENARM__V1__ERROR_CODE__ERROR_UNSUPPORTED),
          "load on base worker: %s", describe(rep));
    gn_wire_env_free(rep);
    /* A reply-type body sent as a request. */
    Genarm__V1__ReleaseResult rr = GENARM__V1__RELEASE_RESULT__INIT;
    cmd.body_case = GENARM__V1__ENVELOPE__BODY_RELEASE_RESULT;
    cmd.release_result = &rr;
    CHECK(gn_step_client_call(c, &cmd, TIMEOUT_MS, &rep, &e) == 0 &&
              is_error(rep, GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST),
          "reply body as request: %s", describe(rep));
    gn_wire_env_free(rep);

    /* Two envelope parts in one message (a DEALER of our own), and a REQ
     * client (delimiter frame) that must get its reply in REQ shape. */
    void *ctx = zmq_ctx_new();
    void *d = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, tmo = TIMEOUT_MS;
    zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(d, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    CHECK(zmq_connect(d, endpoint) == 0, "connect dealer");
    zmq_send(d, "ab", 2, ZMQ_SNDMORE);
    zmq_send(d, "cd", 2, 0);
    uint8_t rb[4096];
    int n = zmq_recv(d, rb, sizeof rb, 0);
    gn_wire_env *r2 = NULL;
    int wc;
    uint64_t rid;
    CHECK(n > 0 && gn_wire_decode(rb, (size_t)n, NULL, &r2, &wc, &rid, &e) == 0 &&
              is_error(r2, GENARM__V1__ERROR_CODE__ERROR_BAD_FRAME),
          "two parts: %s", describe(r2));
    gn_wire_env_free(r2);
    zmq_close(d);
    void *rq = zmq_socket(ctx, ZMQ_REQ);
    zmq_setsockopt(rq, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(rq, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    CHECK(zmq_connect(rq, endpoint) == 0, "connect req");
    Genarm__V1__Heartbeat hb = GENARM__V1__HEARTBEAT__INIT;
    gn_wire_env_init(&cmd, 31337);
    cmd.body_case = GENARM__V1__ENVELOPE__BODY_HEARTBEAT;
    cmd.heartbeat = &hb;
    CHECK(gn_wire_encode(&cmd, &buf, &len, &e) == 0, "encode hb");
    zmq_send(rq, buf, len, 0);
    gn_free(buf);
    n = zmq_recv(rq, rb, sizeof rb, 0);
    CHECK(n > 0 && gn_wire_decode(rb, (size_t)n, NULL, &r2, &wc, &rid, &e) == 0 && r2 &&
              r2->body_case == GENARM__V1__ENVELOPE__BODY_HEARTBEAT && r2->request_id == 31337 &&
              !strcmp(r2->heartbeat->worker_id, "bw-main"),
          "REQ client heartbeat: %s", describe(r2));
    gn_wire_env_free(r2);
    zmq_close(rq);
    zmq_ctx_term(ctx);

    CHECK(alive(c, NULL), "worker alive after the bad frames");
}

/* (c) */
static void test_release_and_idle(gn_step_client *c) {
    int32_t toks[8];
    for (int i = 0; i < 8; i++) toks[i] = rand_tok();
    gn_wire_env *rep;
    gn_step_seq p = {8000, 0, toks, 5, 0, 0};
    rep = step(c, &p, 1, GN_F32);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT && rep->step_result->n_results == 1,
          "prefill: %s", describe(rep));
    gn_wire_env_free(rep);
    gn_err e = {0};
    uint64_t id, sid = 8000;
    CHECK(gn_step_client_release_send(c, NULL, 0, &sid, 1, &id, &e) == 0 &&
              gn_step_client_recv(c, id, TIMEOUT_MS, &rep, &e) == 0 && rep &&
              rep->body_case == GENARM__V1__ENVELOPE__BODY_RELEASE_RESULT && rep->release_result->released == 1,
          "release");
    gn_wire_env_free(rep);
    CHECK(gn_step_client_release_send(c, NULL, 0, &sid, 1, &id, &e) == 0 &&
              gn_step_client_recv(c, id, TIMEOUT_MS, &rep, &e) == 0 && rep->release_result->released == 0,
          "second release frees nothing");
    gn_wire_env_free(rep);
    gn_step_seq d = {8000, 5, &toks[5], 1, 0, 0};
    rep = step(c, &d, 1, GN_F32);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT && rep->step_result->n_errors == 1 &&
              rep->step_result->errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_SEQ,
          "decode after release: %s", describe(rep));
    gn_wire_env_free(rep);
    gn_step_seq again = {8000, 0, &toks[5], 2, 0, 1}; /* restart from 0: a new sequence, freed after */
    rep = step(c, &again, 1, GN_F32);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT && rep->step_result->n_results == 1 &&
              rep->step_result->results[0]->seq_len == 2,
          "restart after release is a new sequence: %s", describe(rep));
    gn_wire_env_free(rep);
    Genarm__V1__Heartbeat hb;
    CHECK(alive(c, &hb) && hb.active_seqs == 0 && hb.kv_used_blocks == 0, "release_after freed it (%u seqs)",
          hb.active_seqs);
}

static void test_idle_timeout(void) {
    worker w;
    const char *extra[] = {"--idle-timeout-s", "0.3", "--max-seqs", "4", NULL};
    if (start_worker(&w, "bw-idle", extra) != 0) {
        CHECK(0, "start idle worker");
        return;
    }
    gn_err e = {0};
    gn_step_client *c = gn_step_client_create(w.endpoint, NULL, &e);
    CHECK(c != NULL, "client: %s", e.msg);
    if (!c)
        return;
    int32_t toks[4] = {1, 2, 3, 4};
    gn_step_seq p = {1, 0, toks, 4, 0, 0};
    gn_wire_env *rep = step(c, &p, 1, GN_BF16);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT, "prefill: %s", describe(rep));
    gn_wire_env_free(rep);
    Genarm__V1__Heartbeat hb;
    CHECK(alive(c, &hb) && hb.active_seqs == 1 && hb.kv_used_blocks > 0, "held: %u", hb.active_seqs);
    usleep(1000 * 1000);
    CHECK(alive(c, &hb) && hb.active_seqs == 0 && hb.kv_used_blocks == 0, "expired after idling: %u",
          hb.active_seqs);
    gn_step_seq d = {1, 4, toks, 1, 0, 0};
    rep = step(c, &d, 1, GN_BF16);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT && rep->step_result->n_errors == 1 &&
              rep->step_result->errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_SEQ,
          "decode after expiry: %s", describe(rep));
    gn_wire_env_free(rep);
    /* Capacity: 4 live sequences at most. */
    gn_step_seq four[5];
    for (int i = 0; i < 5; i++) {
        gn_step_seq x = {100 + (uint64_t)i, 0, toks, 1, 0, 0};
        four[i] = x;
    }
    rep = step(c, four, 4, GN_F32);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT && rep->step_result->n_results == 4,
          "four live: %s", describe(rep));
    gn_wire_env_free(rep);
    rep = step(c, &four[4], 1, GN_F32);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT && rep->step_result->n_errors == 1 &&
              rep->step_result->errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_CAPACITY,
          "a fifth: CAPACITY: %s", describe(rep));
    gn_wire_env_free(rep);
    /* Drain: requests queued when SIGTERM lands are each answered (a result
     * or SHUTTING_DOWN), then the worker exits 0. */
    enum { NQ = 6 };
    uint64_t ids[NQ];
    for (int i = 0; i < NQ; i++) {
        gn_step_seq x = {200 + (uint64_t)i, 0, toks, 4, 1, 1};
        CHECK(gn_step_client_step_send(c, NULL, 0, &x, 1, GN_F32, &ids[i], &e) == 0, "queue %d", i);
    }
    kill(w.pid, SIGTERM);
    int answered = 0, shut = 0;
    for (int i = 0; i < NQ; i++) {
        rep = NULL;
        if (gn_step_client_recv(c, ids[i], TIMEOUT_MS, &rep, &e) == 0 && rep) {
            if (rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT)
                answered++;
            else if (is_error(rep, GENARM__V1__ERROR_CODE__ERROR_SHUTTING_DOWN))
                shut++;
        }
        gn_wire_env_free(rep);
    }
    CHECK(answered + shut == NQ, "every queued request answered on SIGTERM (%d results, %d shutting down)",
          answered, shut);
    gn_step_client_free(c);
    CHECK(stop_worker(&w, 5000) == 0, "idle worker exits 0 on SIGTERM");
}

/* A client whose worker is gone times out instead of hanging. */
static void test_timeout(const char *endpoint) {
    gn_err e = {0};
    gn_step_client *c = gn_step_client_create(endpoint, NULL, &e);
    if (!c) {
        CHECK(0, "client: %s", e.msg);
        return;
    }
    Genarm__V1__Heartbeat hb = GENARM__V1__HEARTBEAT__INIT;
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    env.body_case = GENARM__V1__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    gn_wire_env *rep = NULL;
    int64_t t0 = gn_wire_now_ms();
    int rc = gn_step_client_call(c, &env, 300, &rep, &e);
    int64_t dt = gn_wire_now_ms() - t0;
    CHECK(rc == GN_EIO && rep == NULL && dt < 3000, "no worker: rc %d after %lld ms (%s)", rc, (long long)dt, e.msg);
    gn_step_client_free(c);
}

int main(void) {
    const char *bdir = getenv("GN_BUILD_DIR");
    snprintf(g_bin, sizeof g_bin, "%s/base_worker/base_worker", bdir ? bdir : ".");
    if (access(g_bin, X_OK) != 0)
        GN_TEST_SKIP("base_worker binary not built");
    snprintf(g_root, sizeof g_root, "/tmp/gn_test_bw_XXXXXX");
    if (!mkdtemp(g_root)) {
        g_root[0] = 0;
        CHECK(0, "mkdtemp");
        GN_TEST_MAIN_END();
    }
    atexit(cleanup);
    gn_t_catch_fatal(on_fatal);

    snprintf(g_model, sizeof g_model, "%s/model", g_root);
    gn_make_model_params mp = gn_make_model_default_params();
    mp.arch = "llama";
    mp.init_std = 0.15f;
    mp.n_vocab = 520; /* 8 padding rows past the tokenizer: rows are cut to n_out */
    gn_err e = {0};
    CHECK(gn_make_model(&mp, g_model, &e) == 0, "make model: %s", e.msg);
    gn_backend_params bp = gn_backend_default_params();
    bp.n_threads = 1;
    g_be = gn_backend_create("cpu", &bp, &e);
    gn_model_params lp = gn_model_default_params();
    lp.load_tokenizer = 1;
    g_m = g_be ? gn_model_load(g_model, g_be, &lp, &e) : NULL;
    CHECK(g_m != NULL, "load: %s", e.msg);
    if (!g_m)
        GN_TEST_MAIN_END();
    g_nout = gn_model_n_out(g_m);
    g_nvocab = gn_model_cfg(g_m)->n_vocab;
    CHECK(g_nout == 512 && g_nvocab == 520, "n_out %d n_vocab %d", g_nout, g_nvocab);
    gn_runner_params rp = gn_runner_default_params();
    rp.max_seqs = 8;
    g_r = gn_runner_create(g_m, &rp, &e);
    CHECK(g_r != NULL, "runner: %s", e.msg);

    worker w;
    const char *extra[] = {"--max-seqs", "8", NULL};
    if (g_r && start_worker(&w, "bw-main", extra) == 0) {
        gn_step_client *c = gn_step_client_create(w.endpoint, NULL, &e);
        CHECK(c != NULL, "client: %s", e.msg);
        if (c) {
            CHECK(alive(c, NULL), "heartbeat");
            test_logprobs(c);
            test_bad_frames(c, w.endpoint);
            test_release_and_idle(c);
            gn_step_client_free(c);
        }
        CHECK(stop_worker(&w, 5000) == 0, "SIGTERM: drains and exits 0");
        test_timeout(w.endpoint);
    } else {
        CHECK(0, "start base_worker");
    }
    test_idle_timeout();

    gn_runner_free(g_r);
    gn_model_free(g_m);
    gn_backend_free(g_be);
    GN_TEST_MAIN_END();
}
