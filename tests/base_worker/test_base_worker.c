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
 *  (d) SIGTERM drains and exits 0;
 * and the worker as the batching point (a bigger tiny model, a gather window):
 *  (e) three DEALER clients stepping at the same time share one forward pass
 *      (pass_seqs == 3), and every row equals, bit for bit, the row of the
 *      same sequence stepped alone;
 *  (f) a lone client is not delayed by the window (the gather-wait metric
 *      stays ~0; medians of step times against a worker without a window);
 *  (g) sparse rows == the top-K of the dense row (ids, values, floor, row_min,
 *      tail_lse); fetches of listed ids and of the full row == the dense row;
 *      ROW_GONE after the next step or a release; TOKEN_RANGE;
 *  (h) a Heartbeat sent during a long prefill is answered long before it ends;
 *  (i) GET /metrics serves the worker families (promtool-clean), /health;
 *  (j) malformed RowFetch and sparse requests get Error replies, the worker
 *      keeps serving; a second bind endpoint (ipc://) serves too.
 * Children are killed on every exit path (atexit, fatal signals) and get
 * PR_SET_PDEATHSIG so they die with the test even on SIGKILL. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <sys/socket.h>
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
#include "coordinator/promtool.h"
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
static char g_big[512]; /* a bigger tiny model: passes long enough to measure */
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
    else if (rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT && rep->step_result->n_errors)
        snprintf(buf, sizeof buf, "step result with %zu errors, first seq %llu %s: %s", rep->step_result->n_errors,
                 (unsigned long long)rep->step_result->errors[0]->seq_id,
                 gn_wire_code_name(rep->step_result->errors[0]->code), rep->step_result->errors[0]->message);
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
            gn_step_seq x = {base + (uint64_t)s, 0, toks[s], lens[s], s == 2, 0, 0};
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
            gn_step_seq x = {base + (uint64_t)s, (uint32_t)lens[s], &toks[s][lens[s]], 1, 0, 0, 0};
            q2[s] = x;
        }
        gn_step_seq x4 = {base + 3, 0, toks[3], lens[3], 1, 0, 0};
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
            gn_step_seq rw = {base + 1, (uint32_t)lens[1] - 1, &other, 1, 0, 0, 0};
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
    gn_step_seq q = {9000, 0, toks, 40, 0, 0, 0};
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
        gn_step_seq x = {5000 + (uint64_t)i, 0, toks, 1, 0, 0, 0};
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
    for (int i = 0; big && i < N_BIG; i++) big[i] = (gn_step_seq){9000 + (uint64_t)i, 0, toks, 1, 0, 0, 0};
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
    gn_step_seq mix[3] = {{6000, 0, toks, 3, 0, 0, 0}, {6001, 0, bad, 2, 0, 0, 0}, {6002, 4, toks, 1, 0, 0, 0}};
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
    gn_step_seq ahead = {6000, 5, toks, 1, 0, 1, 0};
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
    gn_step_seq one = {7000, 0, toks, 1, 0, 1, 0};
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
    gn_step_seq p = {8000, 0, toks, 5, 0, 0, 0};
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
    gn_step_seq d = {8000, 5, &toks[5], 1, 0, 0, 0};
    rep = step(c, &d, 1, GN_F32);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT && rep->step_result->n_errors == 1 &&
              rep->step_result->errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_SEQ,
          "decode after release: %s", describe(rep));
    gn_wire_env_free(rep);
    gn_step_seq again = {8000, 0, &toks[5], 2, 0, 1, 0}; /* restart from 0: a new sequence, freed after */
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
    gn_step_seq p = {1, 0, toks, 4, 0, 0, 0};
    gn_wire_env *rep = step(c, &p, 1, GN_BF16);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT, "prefill: %s", describe(rep));
    gn_wire_env_free(rep);
    Genarm__V1__Heartbeat hb;
    CHECK(alive(c, &hb) && hb.active_seqs == 1 && hb.kv_used_blocks > 0, "held: %u", hb.active_seqs);
    usleep(1000 * 1000);
    CHECK(alive(c, &hb) && hb.active_seqs == 0 && hb.kv_used_blocks == 0, "expired after idling: %u",
          hb.active_seqs);
    gn_step_seq d = {1, 4, toks, 1, 0, 0, 0};
    rep = step(c, &d, 1, GN_BF16);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT && rep->step_result->n_errors == 1 &&
              rep->step_result->errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_SEQ,
          "decode after expiry: %s", describe(rep));
    gn_wire_env_free(rep);
    /* Capacity: 4 live sequences at most. */
    gn_step_seq four[5];
    for (int i = 0; i < 5; i++) {
        gn_step_seq x = {100 + (uint64_t)i, 0, toks, 1, 0, 0, 0};
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
        gn_step_seq x = {200 + (uint64_t)i, 0, toks, 4, 1, 1, 0};
        CHECK(gn_step_client_step_send(c, NULL, 0, &x, 1, GN_F32, &ids[i], &e) == 0, "queue %d", i);
    }
    kill(w.pid, SIGTERM);
    /* Replies come in any order: those the I/O thread answers itself
     * (SHUTTING_DOWN once draining) may overtake those of the compute thread. */
    int answered = 0, shut = 0, seen[NQ] = {0};
    for (int got = 0; got < NQ; got++) {
        rep = NULL;
        uint64_t rid = 0;
        if (gn_step_client_recv_any(c, TIMEOUT_MS, &rep, &rid, &e) != 0 || !rep) {
            gn_wire_env_free(rep);
            break;
        }
        int k = -1;
        for (int i = 0; i < NQ; i++)
            if (ids[i] == rid && !seen[i]) k = i;
        if (k >= 0) {
            seen[k] = 1;
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

/* ---- the batching point ------------------------------------------------------ */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The value after `key` (up to a space) in the worker's log, e.g. its
 * metrics address from the ready line. */
static int log_field(const char *name, const char *key, char *out, size_t cap) {
    char path[600], line[4096];
    snprintf(path, sizeof path, "%s/%s.log", g_root, name);
    FILE *f = fopen(path, "r");
    int found = 0;
    while (f && fgets(line, sizeof line, f)) {
        char *p = strstr(line, key);
        if (!p) continue;
        p += strlen(key);
        size_t n = strcspn(p, " \n");
        if (n < cap) {
            memcpy(out, p, n);
            out[n] = 0;
            found = 1;
        }
    }
    if (f) fclose(f);
    return found ? 0 : -1;
}

/* GET path from addr ("127.0.0.1:PORT"); the body (after the headers) into
 * out. Returns the HTTP status, or -1. */
static int http_get(const char *addr, const char *path, char *out, size_t cap) {
    char host[64];
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof host) return -1;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = 0;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) return -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    char req[256];
    int rl = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr);
    if (write(fd, req, (size_t)rl) != rl) {
        close(fd);
        return -1;
    }
    size_t got = 0;
    ssize_t k;
    char *buf = malloc(1 << 20);
    while (buf && got < (1u << 20) - 1 && (k = read(fd, buf + got, (1u << 20) - 1 - got)) > 0) got += (size_t)k;
    close(fd);
    if (!buf) return -1;
    buf[got] = 0;
    int status = -1;
    if (sscanf(buf, "HTTP/%*s %d", &status) != 1) status = -1;
    char *body = strstr(buf, "\r\n\r\n");
    snprintf(out, cap, "%s", body ? body + 4 : "");
    free(buf);
    return status;
}

/* The value of a series line "name{worker="id"} v" in a metrics text; -1 when absent. */
static double metric(const char *text, const char *series) {
    const char *p = text;
    size_t n = strlen(series);
    while ((p = strstr(p, series))) {
        if ((p == text || p[-1] == '\n') && p[n] == ' ') return atof(p + n + 1);
        p += n;
    }
    return -1;
}

/* Sends one step for sequences on client c (no wait). */
static uint64_t send_step(gn_step_client *c, const gn_step_seq *seqs, int n) {
    gn_err e = {0};
    uint64_t id = 0;
    CHECK(gn_step_client_step_send(c, NULL, 0, seqs, n, GN_F32, &id, &e) == 0, "step send: %s", e.msg);
    return id;
}

static gn_wire_env *recv_reply(gn_step_client *c, uint64_t id) {
    gn_err e = {0};
    gn_wire_env *rep = NULL;
    if (gn_step_client_recv(c, id, 30000, &rep, &e) != 0) CHECK(0, "reply %llu: %s", (unsigned long long)id, e.msg);
    return rep;
}

static int ok_step(const gn_wire_env *rep) {
    return rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT && rep->step_result->n_errors == 0 &&
           rep->step_result->n_results >= 1;
}

/* (e) Three clients, one pass; rows == alone. Then (f) a lone client. */
static void test_batching(const char *endpoint, const char *name, int *nout_big) {
    enum { NC = 3, ROUNDS = 4 };
    gn_err e = {0};
    gn_step_client *cl[NC + 1];
    for (int i = 0; i <= NC; i++) cl[i] = gn_step_client_create(endpoint, NULL, &e);
    for (int i = 0; i <= NC; i++)
        if (!cl[i]) {
            CHECK(0, "clients: %s", e.msg);
            return;
        }
    int32_t toks[NC][64];
    for (int c = 0; c < NC; c++)
        for (int t = 0; t < 64; t++) toks[c][t] = rand_tok() % 500;
    static int32_t longp[1024];
    for (int t = 0; t < 1024; t++) longp[t] = rand_tok() % 500;
    float *rows[NC][ROUNDS];
    memset(rows, 0, sizeof rows);
    int n_out = 0;
    uint32_t pass_seqs[ROUNDS][NC];
    int plen[NC] = {5, 9, 3};
    /* Round 0: client 3 holds the compute thread with a long prefill while
     * the three send their prefills: those queue and form one batch (after
     * a gather wait for client 3, which does not come back). Rounds 1..:
     * the three decode at the same time; the worker waits for the peers of
     * the previous batch, so they share a pass again. */
    gn_step_seq blk = {900, 0, longp, 1024, 0, 0, 0};
    uint64_t bid = send_step(cl[NC], &blk, 1);
    usleep(50000); /* the long pass (~0.5 s here) has started: the three queue behind it */
    for (int r = 0; r < ROUNDS; r++) {
        uint64_t ids[NC];
        gn_step_seq q[NC];
        for (int c = 0; c < NC; c++) {
            uint32_t pos = r == 0 ? 0 : (uint32_t)(plen[c] + r - 1);
            gn_step_seq x = {10 + (uint64_t)c, pos, r == 0 ? toks[c] : &toks[c][pos], r == 0 ? plen[c] : 1, 0, 0, 0};
            q[c] = x;
        }
        for (int c = 0; c < NC; c++) ids[c] = send_step(cl[c], &q[c], 1);
        if (r == 0) {
            gn_wire_env *b = recv_reply(cl[NC], bid);
            CHECK(ok_step(b) && b->step_result->pass_seqs == 1, "the long prefill ran alone: %s", describe(b));
            gn_wire_env_free(b);
        }
        for (int c = 0; c < NC; c++) {
            gn_wire_env *rep = recv_reply(cl[c], ids[c]);
            pass_seqs[r][c] = ok_step(rep) ? rep->step_result->pass_seqs : 0;
            if (ok_step(rep)) {
                n_out = (int)rep->step_result->logprobs->cols;
                rows[c][r] = malloc((size_t)n_out * sizeof(float));
                memcpy(rows[c][r], rep->step_result->logprobs->data.data, (size_t)n_out * sizeof(float));
            } else {
                CHECK(0, "round %d client %d: %s", r, c, describe(rep));
            }
            gn_wire_env_free(rep);
        }
    }
    int all3 = 1;
    for (int r = 0; r < ROUNDS; r++)
        for (int c = 0; c < NC; c++) all3 &= pass_seqs[r][c] == NC;
    CHECK(all3, "every round in one pass of 3 (round 0: %u %u %u, round 1: %u %u %u)", pass_seqs[0][0],
          pass_seqs[0][1], pass_seqs[0][2], pass_seqs[1][0], pass_seqs[1][1], pass_seqs[1][2]);
    fprintf(stderr, "batching: sequences per pass, rounds 0..%d: %u %u %u %u\n", ROUNDS - 1, pass_seqs[0][0],
            pass_seqs[1][0], pass_seqs[2][0], pass_seqs[3][0]);
    /* The same sequences alone, on one client, one after another. */
    int same = n_out > 0;
    for (int c = 0; c < NC && same; c++)
        for (int r = 0; r < ROUNDS && same; r++) {
            uint32_t pos = r == 0 ? 0 : (uint32_t)(plen[c] + r - 1);
            gn_step_seq x = {20 + (uint64_t)c, pos, r == 0 ? toks[c] : &toks[c][pos], r == 0 ? plen[c] : 1, 0, 0, 0};
            gn_wire_env *rep = recv_reply(cl[0], send_step(cl[0], &x, 1));
            same = ok_step(rep) && rep->step_result->pass_seqs == 1 && rows[c][r] &&
                   memcmp(rep->step_result->logprobs->data.data, rows[c][r], (size_t)n_out * sizeof(float)) == 0;
            gn_wire_env_free(rep);
        }
    CHECK(same, "every batched row == the same sequence stepped alone (bit for bit)");
    *nout_big = n_out;
    for (int c = 0; c < NC; c++)
        for (int r = 0; r < ROUNDS; r++) free(rows[c][r]);
    uint64_t rel[7] = {10, 11, 12, 20, 21, 22, 900}, rid;
    gn_wire_env *rep = NULL;
    CHECK(gn_step_client_release_send(cl[0], NULL, 0, rel, 7, &rid, &e) == 0 &&
              gn_step_client_recv(cl[0], rid, TIMEOUT_MS, &rep, &e) == 0 && rep &&
              rep->body_case == GENARM__V1__ENVELOPE__BODY_RELEASE_RESULT && rep->release_result->released == 7,
          "release: %s", describe(rep));
    gn_wire_env_free(rep);

    /* Metrics so far: passes, the gather wait for client 3 (once). */
    char addr[128], *text = malloc(1 << 20);
    CHECK(log_field(name, "metrics=", addr, sizeof addr) == 0, "metrics address in the ready line");
    CHECK(http_get(addr, "/metrics", text, 1 << 20) == 200, "GET /metrics");
    char series[200];
    snprintf(series, sizeof series, "genarm:worker_gather_wait_seconds_sum{worker=\"%s\"}", name);
    double wait0 = metric(text, series);
    fprintf(stderr, "batching: gather wait so far %.1f ms\n", wait0 * 1e3);
    /* Two waits: the whole 50 ms window for client 3 after round 0 (it did
     * not come back, and was never measured), then for clients 1 and 2 when
     * client 0 went on alone only about twice their turnaround (they came
     * back within a millisecond or so every round) plus 0.5 ms. */
    CHECK(wait0 >= 0.045 && wait0 < 0.09, "one whole window, then a short wait: %.3f s", wait0);

    /* (f) A lone client: after one step (the peers of the last batch are
     * waited for once), its steps go straight through. */
    gn_step_seq lone = {30, 0, toks[0], 4, 0, 0, 0};
    gn_wire_env_free(recv_reply(cl[0], send_step(cl[0], &lone, 1)));
    CHECK(http_get(addr, "/metrics", text, 1 << 20) == 200, "GET /metrics");
    double w1 = metric(text, series);
    enum { NL = 15 };
    double t_win[NL];
    for (int i = 0; i < NL; i++) {
        gn_step_seq d = {30, (uint32_t)(4 + i), &toks[0][4 + i], 1, 0, 0, 0};
        double t0 = now_s();
        gn_wire_env *r2 = recv_reply(cl[0], send_step(cl[0], &d, 1));
        t_win[i] = now_s() - t0;
        CHECK(ok_step(r2), "lone step %d", i);
        gn_wire_env_free(r2);
    }
    CHECK(http_get(addr, "/metrics", text, 1 << 20) == 200, "GET /metrics");
    double w2 = metric(text, series);
    fprintf(stderr, "batching: lone client, gather wait over %d steps: %.3f ms\n", NL, (w2 - w1) * 1e3);
    CHECK(w2 - w1 < 0.002, "a lone client is not waited for: %.4f s over %d steps", w2 - w1, NL);
    for (int i = 0; i <= NC; i++) gn_step_client_free(cl[i]);
    /* The same steps on a worker without a window: medians within slack. */
    worker w0;
    const char *extra[] = {"--model", g_big, "--gather-us", "0", NULL};
    if (start_worker(&w0, "bw-nowin", extra) == 0) {
        gn_step_client *c0 = gn_step_client_create(w0.endpoint, NULL, &e);
        double t_no[NL];
        gn_wire_env_free(recv_reply(c0, send_step(c0, &lone, 1)));
        for (int i = 0; i < NL; i++) {
            gn_step_seq d = {30, (uint32_t)(4 + i), &toks[0][4 + i], 1, 0, 0, 0};
            double t0 = now_s();
            gn_wire_env_free(recv_reply(c0, send_step(c0, &d, 1)));
            t_no[i] = now_s() - t0;
        }
        gn_step_client_free(c0);
        CHECK(stop_worker(&w0, 5000) == 0, "no-window worker exits 0");
        /* medians (insertion sort of NL values) */
        for (int i = 1; i < NL; i++)
            for (int j = i; j > 0 && t_win[j] < t_win[j - 1]; j--) {
                double x = t_win[j];
                t_win[j] = t_win[j - 1];
                t_win[j - 1] = x;
            }
        for (int i = 1; i < NL; i++)
            for (int j = i; j > 0 && t_no[j] < t_no[j - 1]; j--) {
                double x = t_no[j];
                t_no[j] = t_no[j - 1];
                t_no[j - 1] = x;
            }
        fprintf(stderr, "batching: lone step median %.2f ms with a 50 ms window, %.2f ms without\n",
                t_win[NL / 2] * 1e3, t_no[NL / 2] * 1e3);
        CHECK(t_win[NL / 2] < t_no[NL / 2] + 0.025, "the window adds no delay to a lone client (%.1f vs %.1f ms)",
              t_win[NL / 2] * 1e3, t_no[NL / 2] * 1e3);
    } else {
        CHECK(0, "start the no-window worker");
    }
    free(text);
}

/* Reference top-k ordering: larger first, ties by lower id. */
static const float *g_cmp_row;
static int cmp_top(const void *a, const void *b) {
    int ia = *(const int *)a, ib = *(const int *)b;
    if (g_cmp_row[ia] != g_cmp_row[ib]) return g_cmp_row[ia] > g_cmp_row[ib] ? -1 : 1;
    return ia < ib ? -1 : 1;
}

static gn_wire_env *fetch(gn_step_client *c, const gn_fetch_seq *fs, int n) {
    gn_err e = {0};
    uint64_t id;
    gn_wire_env *rep = NULL;
    if (gn_step_client_fetch_send(c, NULL, 0, fs, n, &id, &e) != 0 ||
        gn_step_client_recv(c, id, TIMEOUT_MS, &rep, &e) != 0)
        CHECK(0, "fetch round trip: %s", e.msg);
    return rep;
}

static int fetch_code(const gn_wire_env *rep) {
    if (!rep || rep->body_case != GENARM__V1__ENVELOPE__BODY_FETCH_RESULT || rep->fetch_result->n_errors != 1)
        return -1;
    return (int)rep->fetch_result->errors[0]->code;
}

/* (g) Sparse rows and fetches on the main worker. */
static void test_sparse_fetch(gn_step_client *c) {
    enum { K = 10 };
    int32_t toks[8];
    for (int i = 0; i < 8; i++) toks[i] = rand_tok();
    /* The same tokens twice in one request: one dense row, one sparse. */
    gn_step_seq q[2] = {{7100, 0, toks, 6, 0, 0, 0}, {7101, 0, toks, 6, 0, 0, K}};
    gn_wire_env *rep = step(c, q, 2, GN_BF16);
    CHECK(ok_step(rep) && rep->step_result->n_results == 2 && rep->step_result->logprobs->rows == 1 &&
              rep->step_result->results[1]->n_rows == 0 && rep->step_result->results[1]->n_cand == K,
          "a dense and a sparse row: %s", describe(rep));
    float *dense = NULL;
    if (ok_step(rep)) {
        gn_err e = {0};
        const gn_wire_step_resp *r = rep->step_result;
        const Genarm__V1__SeqResult *sr = r->results[1];
        const int32_t *ids;
        const float *vals;
        int32_t si[K];
        float sv[K];
        CHECK(gn_wire_sparse_row(r, sr, si, sv, K, &ids, &vals, &e) == 0, "sparse row: %s", e.msg);
        /* the full F32 row (the dense one above is BF16) */
        gn_fetch_seq full = {7101, 6, NULL, 0, 1};
        gn_wire_env *fr = fetch(c, &full, 1);
        const float *fv = NULL;
        float *scratch = malloc((size_t)g_nout * sizeof(float));
        CHECK(fr && fr->body_case == GENARM__V1__ENVELOPE__BODY_FETCH_RESULT && fr->fetch_result->n_results == 1 &&
                  fr->fetch_result->results[0]->n == (uint32_t)g_nout &&
                  gn_wire_fetch_values(fr->fetch_result, fr->fetch_result->results[0], scratch, (size_t)g_nout, &fv,
                                       &e) == 0,
              "full row fetched: %s", describe(fr));
        if (fv) {
            dense = malloc((size_t)g_nout * sizeof(float));
            memcpy(dense, fv, (size_t)g_nout * sizeof(float));
        }
        gn_wire_env_free(fr);
        free(scratch);
        if (dense) {
            float *bf = malloc((size_t)g_nout * sizeof(float));
            gn_wire_unpack_f32(r->logprobs->data.data, r->logprobs->data.len, GN_BF16, (size_t)g_nout, bf, &e);
            int eq = 1;
            for (int v = 0; v < g_nout; v++) eq &= bf[v] == gn_bf16_to_f32(gn_f32_to_bf16(dense[v]));
            CHECK(eq, "the kept row == the dense row of the same step (its bf16 rounding)");
            free(bf);
            int *ord = malloc((size_t)g_nout * sizeof *ord);
            for (int v = 0; v < g_nout; v++) ord[v] = v;
            g_cmp_row = dense;
            qsort(ord, (size_t)g_nout, sizeof *ord, cmp_top);
            int top = 1;
            for (int j = 0; j < K; j++) top &= ids[j] == ord[j] && memcmp(&vals[j], &dense[ord[j]], 4) == 0;
            CHECK(top, "candidates == the top-%d of the dense row (ids and values, bit for bit)", K);
            float mn = dense[0];
            double tail = 0;
            for (int v = 0; v < g_nout; v++) mn = dense[v] < mn ? dense[v] : mn;
            for (int j = K; j < g_nout; j++) tail += exp((double)dense[ord[j]]);
            CHECK(sr->cand_floor == dense[ord[K]] && sr->row_min == mn, "floor %g (%g), row_min %g (%g)",
                  sr->cand_floor, dense[ord[K]], sr->row_min, mn);
            CHECK(sr->tail_lse >= log(tail) - 1e-6 && sr->tail_lse <= log(tail) + 1e-4, "tail_lse %.7f vs %.7f",
                  sr->tail_lse, log(tail));
            /* Another sequence's pass writes the pass output where the row
             * was: the row of 7101 (not stepped) must have been kept. */
            int32_t other[5] = {toks[3], toks[2], toks[1], toks[0], toks[5]};
            gn_step_seq o = {7102, 0, other, 5, 0, 0, 0};
            gn_wire_env *orep = step(c, &o, 1, GN_F32);
            CHECK(ok_step(orep) && orep->step_result->logprobs->rows == 1, "another sequence's pass: %s",
                  describe(orep));
            gn_wire_env_free(orep);
            /* listed and unlisted ids */
            int32_t want[4] = {ord[0], ord[K + 3], ord[g_nout - 1], 0};
            gn_fetch_seq some = {7101, 6, want, 4, 0};
            gn_wire_env *f2 = fetch(c, &some, 1);
            int ok = f2 && f2->body_case == GENARM__V1__ENVELOPE__BODY_FETCH_RESULT &&
                     f2->fetch_result->n_results == 1 && f2->fetch_result->values.len == 16;
            for (int j = 0; ok && j < 4; j++) ok = memcmp(f2->fetch_result->values.data + 4 * j, &dense[want[j]], 4) == 0;
            CHECK(ok, "after another sequence's pass, listed and unlisted ids == the dense row: %s", describe(f2));
            gn_wire_env_free(f2);
            free(ord);
        }
    }
    gn_wire_env_free(rep);
    /* Out of range; another seq_len; a dense sequence. */
    int32_t bad[2] = {3, g_nout};
    gn_fetch_seq fb = {7101, 6, bad, 2, 0};
    gn_wire_env *f3 = fetch(c, &fb, 1);
    CHECK(fetch_code(f3) == GENARM__V1__ERROR_CODE__ERROR_TOKEN_RANGE, "an id past the row: TOKEN_RANGE");
    gn_wire_env_free(f3);
    gn_fetch_seq fl[2] = {{7101, 5, bad, 1, 0}, {7100, 6, bad, 1, 0}};
    f3 = fetch(c, fl, 2);
    CHECK(f3 && f3->body_case == GENARM__V1__ENVELOPE__BODY_FETCH_RESULT && f3->fetch_result->n_errors == 2 &&
              f3->fetch_result->errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_ROW_GONE &&
              f3->fetch_result->errors[1]->code == GENARM__V1__ERROR_CODE__ERROR_ROW_GONE,
          "another seq_len, a dense step: ROW_GONE: %s", describe(f3));
    gn_wire_env_free(f3);
    /* The next step (sparse again) drops the row of 6; release drops 7. */
    gn_step_seq nx = {7101, 6, &toks[6], 1, 0, 0, K};
    rep = step(c, &nx, 1, GN_F32);
    CHECK(ok_step(rep) && rep->step_result->results[0]->n_cand == K && rep->step_result->results[0]->seq_len == 7,
          "next sparse step: %s", describe(rep));
    gn_wire_env_free(rep);
    gn_fetch_seq old = {7101, 6, NULL, 0, 1}, cur = {7101, 7, bad, 1, 0};
    f3 = fetch(c, &old, 1);
    CHECK(fetch_code(f3) == GENARM__V1__ERROR_CODE__ERROR_ROW_GONE, "after the next step: ROW_GONE");
    gn_wire_env_free(f3);
    f3 = fetch(c, &cur, 1);
    CHECK(f3 && f3->body_case == GENARM__V1__ENVELOPE__BODY_FETCH_RESULT && f3->fetch_result->n_results == 1,
          "the new row is held");
    gn_wire_env_free(f3);
    uint64_t rel[3] = {7100, 7101, 7102}, rid;
    gn_err e = {0};
    gn_wire_env *rr = NULL;
    CHECK(gn_step_client_release_send(c, NULL, 0, rel, 3, &rid, &e) == 0 &&
              gn_step_client_recv(c, rid, TIMEOUT_MS, &rr, &e) == 0,
          "release");
    gn_wire_env_free(rr);
    f3 = fetch(c, &cur, 1);
    CHECK(fetch_code(f3) == GENARM__V1__ERROR_CODE__ERROR_ROW_GONE, "after release: ROW_GONE");
    gn_wire_env_free(f3);
    free(dense);
}

/* Sends a RowFetch envelope built by hand and expects an Error with code. */
static void expect_fetch_error(gn_step_client *c, const char *what, Genarm__V1__RowFetch *rf, int code) {
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    env.body_case = GENARM__V1__ENVELOPE__BODY_FETCH;
    env.fetch = rf;
    gn_wire_env *rep = NULL;
    gn_err e = {0};
    CHECK(gn_step_client_call(c, &env, TIMEOUT_MS, &rep, &e) == 0 && is_error(rep, code), "%s: want %s, got %s", what,
          gn_wire_code_name(code), describe(rep));
    gn_wire_env_free(rep);
    CHECK(alive(c, NULL), "%s: worker still answers", what);
}

/* (j) Malformed RowFetch and sparse requests. */
static void test_bad_fetches(gn_step_client *c) {
    Genarm__V1__RowFetch rf = GENARM__V1__ROW_FETCH__INIT;
    expect_fetch_error(c, "fetch without sequences", &rf, GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST);
    enum { N = 257 };
    static Genarm__V1__FetchSeq fs[N];
    static Genarm__V1__FetchSeq *fp[N];
    for (int i = 0; i < N; i++) {
        Genarm__V1__FetchSeq x = GENARM__V1__FETCH_SEQ__INIT;
        x.seq_id = (uint64_t)i;
        fs[i] = x;
        fp[i] = &fs[i];
    }
    rf.seqs = fp;
    rf.n_seqs = N;
    expect_fetch_error(c, "fetch of 257 sequences", &rf, GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE);
    static int32_t many[70000];
    fs[0].ids = many;
    fs[0].n_ids = 70000;
    rf.n_seqs = 1;
    expect_fetch_error(c, "fetch of 70000 ids", &rf, GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE);
    fs[0].n_ids = 1;
    Genarm__V1__ModelRef mr = GENARM__V1__MODEL_REF__INIT;
    mr.name = "helpful";
    rf.model = &mr;
    expect_fetch_error(c, "fetch for a named model", &rf, GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL);
    /* a truncated RowFetch frame */
    rf.model = NULL;
    fs[0].n_ids = 40;
    gn_wire_env env;
    gn_wire_env_init(&env, 5);
    env.body_case = GENARM__V1__ENVELOPE__BODY_FETCH;
    env.fetch = &rf;
    uint8_t *buf;
    size_t len;
    gn_err e = {0};
    CHECK(gn_wire_encode(&env, &buf, &len, &e) == 0, "encode fetch");
    expect_raw_error(c, "truncated RowFetch", buf, len - 7, GENARM__V1__ERROR_CODE__ERROR_BAD_FRAME);
    gn_free(buf);
    /* top_k with all_logits */
    int32_t t[2] = {1, 2};
    gn_step_seq sp = {7200, 0, t, 2, 1, 0, 5};
    gn_wire_env *rep = step(c, &sp, 1, GN_F32);
    CHECK(is_error(rep, GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST) && strstr(rep->error->message, "7200"),
          "top_k with all_logits refused: %s", describe(rep));
    gn_wire_env_free(rep);
    CHECK(alive(c, NULL), "alive after the malformed fetches");
}

/* (h) A Heartbeat during a long forward pass. */
static void test_heartbeat_during_pass(const char *endpoint) {
    gn_err e = {0};
    gn_step_client *a = gn_step_client_create(endpoint, NULL, &e), *b = gn_step_client_create(endpoint, NULL, &e);
    if (!a || !b) {
        CHECK(0, "clients: %s", e.msg);
        gn_step_client_free(a);
        gn_step_client_free(b);
        return;
    }
    CHECK(alive(b, NULL), "b connected");
    static int32_t longp[3000];
    for (int t = 0; t < 3000; t++) longp[t] = rand_tok() % 500;
    gn_step_seq blk = {950, 0, longp, 3000, 0, 1, 0};
    double t0 = now_s();
    uint64_t id = send_step(a, &blk, 1);
    usleep(30000); /* the pass has started */
    double h0 = now_s();
    Genarm__V1__Heartbeat hb;
    int ok = alive(b, &hb);
    double hb_s = now_s() - h0;
    gn_wire_env *rep = recv_reply(a, id);
    double step_s = now_s() - t0;
    CHECK(ok && ok_step(rep), "heartbeat and long step answered: %s", describe(rep));
    double pass_s = ok_step(rep) ? (double)rep->step_result->compute_us / 1e6 : 0;
    fprintf(stderr, "heartbeat during a %.0f ms pass answered in %.1f ms\n", pass_s * 1e3, hb_s * 1e3);
    CHECK(pass_s > 0.1, "the pass is long enough to tell (%.0f ms)", pass_s * 1e3);
    CHECK(hb_s < 0.5 * pass_s && hb_s < step_s - 0.03, "heartbeat answered during the pass (%.1f ms of a %.0f ms pass)",
          hb_s * 1e3, pass_s * 1e3);
    CHECK(alive(b, &hb) && hb.forward_passes > 0 && hb.pass_seqs_total >= hb.forward_passes,
          "heartbeat counts passes: %llu passes, %llu sequences", (unsigned long long)hb.forward_passes,
          (unsigned long long)hb.pass_seqs_total);
    gn_wire_env_free(rep);
    gn_step_client_free(a);
    gn_step_client_free(b);
}

/* (i) The metrics endpoint. */
static void test_metrics(const char *name) {
    char addr[128], *text = malloc(1 << 20);
    CHECK(log_field(name, "metrics=", addr, sizeof addr) == 0, "metrics address");
    CHECK(http_get(addr, "/health", text, 1 << 20) == 200 && !strcmp(text, "ok\n"), "GET /health: %s", text);
    CHECK(http_get(addr, "/nope", text, 1 << 20) == 404, "unknown path: 404");
    CHECK(http_get(addr, "/metrics", text, 1 << 20) == 200, "GET /metrics");
    static const char *const fam[] = {"forward_passes_total", "pass_sequences", "step_requests_total",
                                      "batch_requests", "rows_bytes_sent_total", "fetches_total",
                                      "rows_gone_total", "gather_wait_seconds"};
    for (size_t i = 0; i < sizeof fam / sizeof fam[0]; i++) {
        char tl[160];
        snprintf(tl, sizeof tl, "# TYPE genarm:worker_%s ", fam[i]);
        CHECK(strstr(text, tl) != NULL, "family genarm:worker_%s", fam[i]);
    }
    char s1[200], s2[200];
    snprintf(s1, sizeof s1, "genarm:worker_forward_passes_total{worker=\"%s\"}", name);
    snprintf(s2, sizeof s2, "genarm:worker_pass_sequences_count{worker=\"%s\"}", name);
    CHECK(metric(text, s1) > 0 && metric(text, s1) == metric(text, s2), "passes %g, pass histogram count %g",
          metric(text, s1), metric(text, s2));
    snprintf(s1, sizeof s1, "genarm:worker_fetches_total{worker=\"%s\"}", name);
    snprintf(s2, sizeof s2, "genarm:worker_rows_gone_total{worker=\"%s\"}", name);
    CHECK(metric(text, s1) >= 1 && metric(text, s2) >= 1, "fetches %g, rows gone %g", metric(text, s1),
          metric(text, s2));
    int pt = promtool_check(text);
    CHECK(pt <= 0, "promtool check metrics: %d problems", pt);
    free(text);
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
    char ipc[300], bind[400];
    snprintf(ipc, sizeof ipc, "ipc://%s/bw-main.sock", g_root);
    snprintf(bind, sizeof bind, "tcp://127.0.0.1:*,%s", ipc);
    const char *extra[] = {"--max-seqs", "8", "--bind", bind, "--metrics-listen", "127.0.0.1:0", NULL};
    if (g_r && start_worker(&w, "bw-main", extra) == 0) {
        gn_step_client *c = gn_step_client_create(w.endpoint, NULL, &e);
        CHECK(c != NULL, "client: %s", e.msg);
        CHECK(!strncmp(w.endpoint, "tcp://127.0.0.1:", 16), "ready file: the first endpoint (%s)", w.endpoint);
        gn_step_client *ci = gn_step_client_create(ipc, NULL, &e);
        CHECK(ci && alive(ci, NULL), "the ipc endpoint serves too");
        gn_step_client_free(ci);
        if (c) {
            CHECK(alive(c, NULL), "heartbeat");
            test_logprobs(c);
            test_bad_frames(c, w.endpoint);
            test_sparse_fetch(c);
            test_bad_fetches(c);
            test_release_and_idle(c);
            test_metrics("bw-main");
            gn_step_client_free(c);
        }
        CHECK(stop_worker(&w, 5000) == 0, "SIGTERM: drains and exits 0");
        test_timeout(w.endpoint);
    } else {
        CHECK(0, "start base_worker");
    }
    test_idle_timeout();

    /* The batching point, on a bigger tiny model (passes long enough to
     * see), with a 50 ms gather window. */
    snprintf(g_big, sizeof g_big, "%s/big", g_root);
    gn_make_model_params bm = gn_make_model_default_params();
    bm.arch = "llama";
    bm.dim = 256;
    bm.n_layers = 4;
    bm.n_heads = 8;
    bm.n_kv_heads = 4;
    bm.ffn_dim = 768;
    bm.max_pos = 4096;
    bm.init_std = 0.05f;
    CHECK(gn_make_model(&bm, g_big, &e) == 0, "make big model: %s", e.msg);
    worker wb;
    const char *bextra[] = {"--model", g_big, "--gather-us", "50000", "--metrics-listen", "127.0.0.1:0",
                            "--max-ctx", "4096", NULL};
    if (start_worker(&wb, "bw-batch", bextra) == 0) {
        int nout_big = 0;
        test_batching(wb.endpoint, "bw-batch", &nout_big);
        test_heartbeat_during_pass(wb.endpoint);
        CHECK(stop_worker(&wb, 5000) == 0, "batch worker exits 0");
    } else {
        CHECK(0, "start the batch worker");
    }

    gn_runner_free(g_r);
    gn_model_free(g_m);
    gn_backend_free(g_be);
    GN_TEST_MAIN_END();
}
