/* test_reward_worker.c — reward_worker as real processes on random loopback
 * ports against a real redis-server, driven through the real step client:
 *  (a) log-probs over the wire == the in-process runner for an ARM (fp32
 *      bit-identical for the same batches);
 *  (b) two ARMs held at once, the second loaded on demand from the ARM
 *      registry (a step for a registered ARM the worker does not hold);
 *  (c) an ARM whose tokenizer differs from the hash the registry recorded is
 *      refused with a clear error (on demand and by LoadModel); unknown ARMs,
 *      bad versions and garbage frames get Error replies; the worker serves on;
 *  (d) hot swap: 4 sequences start on v1, v2 (a different random model) is
 *      promoted in the registry; one mixed request continues the old 4 (rows
 *      == v1 in process) and starts 2 new ones (rows == v2 in process); the
 *      registry shows both versions while draining and only v2 after the old
 *      sequences are released;
 *  (e) Unload/Load/Promote commands over ZeroMQ; SIGTERM drains, exits 0 and
 *      deregisters; a SIGKILLed worker's registry entry expires (short TTL);
 *  (f) batching: three clients stepping help@1, help@2 and help@1 at the same
 *      time get one forward pass per version (pass_seqs 2, 1, 2), two clients
 *      stepping two LoRA adapters of one backbone share one pass; every row
 *      == the in-process reference; sparse rows on both versions and fetches
 *      routed to the version that served them; the record carries host and
 *      ipc endpoint; GET /metrics serves the worker families.
 * Children (workers, redis-server) are killed on every exit path (atexit,
 * fatal signals) and get PR_SET_PDEATHSIG. */
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

#include "backend.h"
#include "control.h"
#include "control/redis_harness.h"
#include <jansson.h>

#include "gn_alloc.h"
#include "gn_test.h"
#include "lora.h"
#include "worker_proc.h"
#include "model.h"
#include "model_maker.h"
#include "runner.h"
#include "step_client.h"
#include "step_server.h"
#include "tokenizer.h"
#include "wire.h"

#define TIMEOUT_MS 15000
#define MAX_CHILDREN 4

static char g_root[256];
static char g_bin[512];
static pid_t g_children[MAX_CHILDREN];
static gn_ctl *g_ctl;

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
    if (gn_redis_pid > 0)
        kill(gn_redis_pid, SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void cleanup(void) {
    kill_children();
    if (g_root[0])
        gn_t_finish_dir(g_root, gn_t_fail || getenv("GN_TEST_VERBOSE"), 80);
}

typedef struct worker {
    pid_t pid;
    int slot;
    char endpoint[256];
} worker;

/* Starts reward_worker with these args (plus bind/redis/id/ready-file) and
 * waits for its ready file. Returns 0 or -1. */
static int start_worker(worker *w, const char *id, const char *const *extra) {
    char ready[600], log[600], redis[64];
    snprintf(ready, sizeof ready, "%s/%s.ready", g_root, id);
    snprintf(log, sizeof log, "%s/%s.log", g_root, id);
    snprintf(redis, sizeof redis, "127.0.0.1:%d", gn_redis_port);
    unlink(ready);
    const char *argv[40];
    int n = 0;
    argv[n++] = g_bin;
    argv[n++] = "--bind";
    argv[n++] = "tcp://127.0.0.1:*";
    argv[n++] = "--redis";
    argv[n++] = redis;
    argv[n++] = "--worker-id";
    argv[n++] = id;
    argv[n++] = "--threads";
    argv[n++] = "1";
    argv[n++] = "--ready-file";
    argv[n++] = ready;
    for (int i = 0; extra && extra[i] && n < 38; i++) argv[n++] = extra[i];
    argv[n] = NULL;
    int slot = -1;
    for (int i = 0; i < MAX_CHILDREN && slot < 0; i++)
        if (g_children[i] == 0)
            slot = i;
    if (slot < 0)
        return -1;
    pid_t pid = gn_t_spawn(g_bin, argv, log);
    if (pid < 0)
        return -1;
    g_children[slot] = pid;
    w->pid = pid;
    w->slot = slot;
    int rc = gn_t_wait_ready(pid, ready, log, id, w->endpoint, sizeof w->endpoint);
    if (rc == -2)
        g_children[slot] = 0; /* reaped */
    return rc == 0 ? 0 : -1;
}

static int stop_worker(worker *w, int sig, int timeout_ms) {
    int rc = gn_t_stop(w->pid, sig, timeout_ms);
    g_children[w->slot] = 0;
    return rc;
}

/* ---- registry helpers ----------------------------------------------------------- */

/* The worker's registry record as "a@1,b@2" (sorted as listed), or "" when it
 * has none (expired or removed). Returns 1 when present. */
static int registry_arms(const char *id, char *out, size_t cap) {
    gn_ctl_worker *ws = NULL;
    size_t n = 0;
    gn_err e = {0};
    out[0] = 0;
    if (gn_ctl_worker_list(g_ctl, &ws, &n, &e) != 0)
        return 0;
    int found = 0;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(ws[i].id, id)) {
            found = 1;
            for (int j = 0; j < ws[i].n_arms; j++) {
                size_t l = strlen(out);
                snprintf(out + l, cap - l, "%s%s", j ? "," : "", ws[i].arms[j]);
            }
        }
    gn_free(ws);
    return found;
}

/* 1 when the record's ARM set contains every ref of want (comma-separated)
 * and nothing else. */
static int arms_equal(const char *have, const char *want) {
    char a[1024], b[1024];
    snprintf(a, sizeof a, ",%s,", have);
    snprintf(b, sizeof b, "%s", want);
    int n_want = 0;
    for (char *tok = strtok(b, ","); tok; tok = strtok(NULL, ",")) {
        char pat[200];
        snprintf(pat, sizeof pat, ",%s,", tok);
        if (!strstr(a, pat))
            return 0;
        n_want++;
    }
    int n_have = have[0] ? 1 : 0;
    for (const char *p = have; *p; p++) n_have += *p == ',';
    return n_have == n_want;
}

/* Waits up to ms for the record of id to hold exactly `want`. */
static int wait_registry(const char *id, const char *want, int ms, char *last, size_t cap) {
    for (int t = 0; t <= ms; t += 50) {
        if (registry_arms(id, last, cap) && arms_equal(last, want))
            return 1;
        usleep(50000);
    }
    return 0;
}

/* ---- in-process reference ------------------------------------------------------------ */

typedef struct ref_model {
    gn_model *m;
    gn_runner *r;
    char dir[600];
    char hash[65];
} ref_model;

static gn_backend *g_be;
static int g_nout;

static int make_ref(ref_model *rm, const char *name, uint64_t seed, int tok_merges) {
    snprintf(rm->dir, sizeof rm->dir, "%s/%s", g_root, name);
    gn_make_model_params mp = gn_make_model_default_params();
    mp.arch = "llama";
    mp.init_std = 0.15f;
    mp.seed = seed;
    if (tok_merges)
        mp.tok_merges = tok_merges;
    gn_err e = {0};
    if (gn_make_model(&mp, rm->dir, &e) != 0) {
        CHECK(0, "make %s: %s", name, e.msg);
        return -1;
    }
    gn_model_params lp = gn_model_default_params();
    lp.load_tokenizer = 1;
    if (!(rm->m = gn_model_load(rm->dir, g_be, &lp, &e))) {
        CHECK(0, "load %s: %s", name, e.msg);
        return -1;
    }
    snprintf(rm->hash, sizeof rm->hash, "%s", gn_tok_hash(gn_model_tokenizer(rm->m)));
    gn_runner_params rp = gn_runner_default_params();
    rp.max_seqs = 16;
    if (!(rm->r = gn_runner_create(rm->m, &rp, &e))) {
        CHECK(0, "runner %s: %s", name, e.msg);
        return -1;
    }
    return 0;
}

static void free_ref(ref_model *rm) {
    gn_runner_free(rm->r);
    gn_model_free(rm->m);
}

/* Runs seqs in process on rs (one gn_seq per step seq); returns rows (caller frees). */
static float *ref_step(ref_model *rm, gn_seq **rs, const gn_step_seq *seqs, int n, int *rows_out) {
    gn_step_item it[16];
    for (int i = 0; i < n; i++) {
        gn_step_item x = {rs[i], seqs[i].tokens, seqs[i].n_tokens, seqs[i].all_logits};
        it[i] = x;
    }
    int rows = gn_runner_step_rows(it, n);
    float *out = malloc((size_t)rows * (size_t)g_nout * sizeof(float) + 1);
    gn_err e = {0};
    CHECK(gn_runner_step(rm->r, it, n, out, &e) == 0, "reference step: %s", e.msg);
    *rows_out = rows;
    return out;
}

/* ---- wire helpers ------------------------------------------------------------------ */

static const char *describe(const gn_wire_env *rep) {
    static char buf[600];
    if (!rep)
        return "no reply";
    if (rep->body_case == GENARM__V1__ENVELOPE__BODY_ERROR)
        snprintf(buf, sizeof buf, "error %s: %s", gn_wire_code_name(rep->error->code),
                 rep->error->message);
    else if (rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT && rep->step_result->n_errors)
        snprintf(buf, sizeof buf, "step result with %zu errors, first %s: %s",
                 rep->step_result->n_errors, gn_wire_code_name(rep->step_result->errors[0]->code),
                 rep->step_result->errors[0]->message);
    else
        snprintf(buf, sizeof buf, "body %d", (int)rep->body_case);
    return buf;
}

static int is_error(const gn_wire_env *rep, int code) {
    return rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_ERROR && (int)rep->error->code == code;
}

static gn_wire_env *step(gn_step_client *c, const char *arm, uint32_t ver, const gn_step_seq *seqs,
                         int n) {
    gn_err e = {0};
    uint64_t id;
    gn_wire_env *rep = NULL;
    if (gn_step_client_step_send(c, arm, ver, seqs, n, GN_F32, &id, &e) != 0 ||
        gn_step_client_recv(c, id, TIMEOUT_MS, &rep, &e) != 0) {
        CHECK(0, "step round trip: %s", e.msg);
        return NULL;
    }
    return rep;
}

static int alive(gn_step_client *c, Genarm__V1__Heartbeat *out_copy, char *models, size_t cap) {
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    Genarm__V1__Heartbeat hb = GENARM__V1__HEARTBEAT__INIT;
    env.body_case = GENARM__V1__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    gn_wire_env *rep = NULL;
    gn_err e = {0};
    int ok = gn_step_client_call(c, &env, TIMEOUT_MS, &rep, &e) == 0 && rep &&
             rep->body_case == GENARM__V1__ENVELOPE__BODY_HEARTBEAT;
    if (ok && out_copy)
        out_copy->active_seqs = rep->heartbeat->active_seqs;
    if (ok && models) {
        models[0] = 0;
        for (size_t i = 0; i < rep->heartbeat->n_models; i++) {
            size_t l = strlen(models);
            snprintf(models + l, cap - l, "%s%s@%u", i ? "," : "", rep->heartbeat->models[i]->name,
                     rep->heartbeat->models[i]->version);
        }
    }
    gn_wire_env_free(rep);
    return ok;
}

/* Checks a step reply against expected rows: results in order (seq ids, row
 * offsets, lengths), every row bit-identical to want[i] (the expected rows of
 * sequence i, one row each unless all_logits). */
static void compare(const char *what, const gn_wire_env *rep, const gn_step_seq *seqs, int n,
                    float *const *want, uint32_t want_version) {
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT && !rep->step_result->n_errors,
          "%s: %s", what, describe(rep));
    if (!rep || rep->body_case != GENARM__V1__ENVELOPE__BODY_STEP_RESULT)
        return;
    const gn_wire_step_resp *r = rep->step_result;
    CHECK(r->n_results == (size_t)n, "%s: %zu results", what, r->n_results);
    if (want_version)
        CHECK(r->model && r->model->version == want_version, "%s: served by version %u, want %u", what,
              r->model ? r->model->version : 0, want_version);
    uint64_t rows = 0;
    for (int i = 0; i < n; i++) rows += seqs[i].all_logits ? (uint64_t)seqs[i].n_tokens : 1;
    size_t nv = (size_t)rows * (size_t)g_nout;
    float *got = malloc(nv * sizeof(float) + 1);
    uint64_t gr, gc;
    gn_err e = {0};
    if (gn_step_resp_logprobs_f32(r, got, nv, &gr, &gc, &e) != 0 || gr != rows || gc != (uint64_t)g_nout) {
        CHECK(0, "%s: tensor: %s (%llu x %llu)", what, e.msg, (unsigned long long)gr,
              (unsigned long long)gc);
        free(got);
        return;
    }
    uint64_t row = 0;
    for (int i = 0; i < n && (size_t)i < r->n_results; i++) {
        const Genarm__V1__SeqResult *sr = r->results[i];
        uint32_t nr = seqs[i].all_logits ? (uint32_t)seqs[i].n_tokens : 1;
        CHECK(sr->seq_id == seqs[i].seq_id && sr->row_offset == row && sr->n_rows == nr &&
                  sr->seq_len == seqs[i].start_pos + (uint32_t)seqs[i].n_tokens,
              "%s: result %d (seq %llu off %llu rows %u len %u)", what, i,
              (unsigned long long)sr->seq_id, (unsigned long long)sr->row_offset, sr->n_rows,
              sr->seq_len);
        CHECK(memcmp(got + row * (size_t)g_nout, want[i], (size_t)nr * (size_t)g_nout * sizeof(float)) == 0,
              "%s: seq %llu rows bit-identical to the in-process runner", what,
              (unsigned long long)seqs[i].seq_id);
        row += nr;
    }
    free(got);
}

static gn_wire_env *command(gn_step_client *c, int body, const char *name, uint32_t ver,
                            const char *path) {
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    Genarm__V1__ModelRef mr = GENARM__V1__MODEL_REF__INIT;
    mr.name = (char *)name;
    mr.version = ver;
    Genarm__V1__LoadModel lm = GENARM__V1__LOAD_MODEL__INIT;
    Genarm__V1__UnloadModel um = GENARM__V1__UNLOAD_MODEL__INIT;
    Genarm__V1__PromoteModel pm = GENARM__V1__PROMOTE_MODEL__INIT;
    env.body_case = (Genarm__V1__Envelope__BodyCase)body;
    if (body == GENARM__V1__ENVELOPE__BODY_LOAD) {
        lm.model = &mr;
        lm.path = (char *)(path ? path : "");
        env.load = &lm;
    } else if (body == GENARM__V1__ENVELOPE__BODY_UNLOAD) {
        um.model = &mr;
        env.unload = &um;
    } else {
        pm.model = &mr;
        env.promote = &pm;
    }
    gn_wire_env *rep = NULL;
    gn_err e = {0};
    if (gn_step_client_call(c, &env, TIMEOUT_MS, &rep, &e) != 0)
        CHECK(0, "command round trip: %s", e.msg);
    return rep;
}

static int release(gn_step_client *c, const char *arm, uint32_t ver, const uint64_t *ids, int n) {
    gn_err e = {0};
    uint64_t id;
    gn_wire_env *rep = NULL;
    int got = -1;
    if (gn_step_client_release_send(c, arm, ver, ids, n, &id, &e) == 0 &&
        gn_step_client_recv(c, id, TIMEOUT_MS, &rep, &e) == 0 && rep &&
        rep->body_case == GENARM__V1__ENVELOPE__BODY_RELEASE_RESULT)
        got = (int)rep->release_result->released;
    gn_wire_env_free(rep);
    return got;
}

/* ---- the tests ------------------------------------------------------------------------ */

/* Points rows[i] at sequence i's first row in want (rows in request order). */
static void row_ptrs(float *want, const gn_step_seq *seqs, int n, float **rows) {
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        rows[i] = want + off * (size_t)g_nout;
        off += seqs[i].all_logits ? (size_t)seqs[i].n_tokens : 1;
    }
}

static ref_model A1, A2, B, BAD;
static uint64_t g_rng = 4242;
static int32_t rand_tok(void) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (int32_t)((g_rng >> 33) % (uint64_t)g_nout);
}

/* (a) + (b) */
static void test_logprobs_two_arms(gn_step_client *c) {
    int32_t toks[3][12];
    for (int s = 0; s < 3; s++)
        for (int t = 0; t < 12; t++) toks[s][t] = rand_tok();
    gn_err e = {0};
    gn_seq *ra[3], *rb[3];
    for (int s = 0; s < 3; s++) {
        ra[s] = gn_seq_create(A1.r, &e);
        rb[s] = gn_seq_create(B.r, &e);
    }
    /* Prefill of 3 sequences on "help" (held since start, current = 1). */
    gn_step_seq q[3];
    for (int s = 0; s < 3; s++) {
        gn_step_seq x = {10 + (uint64_t)s, 0, toks[s], 4 + s, s == 1, 0, 0};
        q[s] = x;
    }
    int rows;
    float *want = ref_step(&A1, ra, q, 3, &rows);
    float *w3[3], *wd[3];
    row_ptrs(want, q, 3, w3);
    gn_wire_env *rep = step(c, "help", 0, q, 3);
    compare("help prefill x3", rep, q, 3, w3, 1);
    gn_wire_env_free(rep);
    free(want);
    /* Decode. */
    gn_step_seq d[3];
    for (int s = 0; s < 3; s++) {
        gn_step_seq x = {10 + (uint64_t)s, (uint32_t)(4 + s), &toks[s][4 + s], 1, 0, 0, 0};
        d[s] = x;
    }
    want = ref_step(&A1, ra, d, 3, &rows);
    row_ptrs(want, d, 3, wd);
    rep = step(c, "help", 1, d, 3); /* explicit version 1 */
    compare("help decode x3 (explicit v1)", rep, d, 3, wd, 1);
    gn_wire_env_free(rep);
    free(want);

    /* "harm" is registered but not held: loaded on demand from the registry. */
    char last[1024];
    CHECK(wait_registry("rw1", "help@1", 3000, last, sizeof last), "registry before: %s", last);
    want = ref_step(&B, rb, q, 3, &rows);
    row_ptrs(want, q, 3, w3);
    rep = step(c, "harm", 0, q, 3); /* the same seq ids: scoped per ARM */
    compare("harm prefill (loaded on demand)", rep, q, 3, w3, 1);
    gn_wire_env_free(rep);
    free(want);
    want = ref_step(&B, rb, d, 3, &rows);
    row_ptrs(want, d, 3, wd);
    rep = step(c, "harm", 0, d, 3);
    compare("harm decode", rep, d, 3, wd, 1);
    gn_wire_env_free(rep);
    free(want);
    CHECK(wait_registry("rw1", "help@1,harm@1", 3000, last, sizeof last),
          "registry lists both ARMs: %s", last);
    char models[512];
    CHECK(alive(c, NULL, models, sizeof models) && arms_equal(models, "help@1,harm@1"),
          "heartbeat lists both ARMs: %s", models);
    /* help's sequences are untouched by harm's. */
    gn_step_seq d2 = {11, 6, &toks[1][6], 1, 0, 0, 0};
    want = ref_step(&A1, &ra[1], &d2, 1, &rows);
    float *w1[1] = {want};
    rep = step(c, "help", 0, &d2, 1);
    compare("help continues beside harm", rep, &d2, 1, w1, 1);
    gn_wire_env_free(rep);
    free(want);
    uint64_t ids[3] = {10, 11, 12};
    CHECK(release(c, "help", 0, ids, 3) == 3, "release help x3");
    CHECK(release(c, "", 0, ids, 3) == 3, "release by id on every ARM (harm x3)");
    for (int s = 0; s < 3; s++) {
        gn_seq_free(ra[s]);
        gn_seq_free(rb[s]);
    }
}

/* (c) */
static void test_refusals(gn_step_client *c, const char *endpoint) {
    int32_t toks[3] = {5, 6, 7};
    gn_step_seq one = {500, 0, toks, 3, 0, 0, 0};
    gn_wire_env *rep = step(c, "bad", 0, &one, 1);
    CHECK(is_error(rep, GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL) &&
              strstr(rep->error->message, "tokenizer mismatch"),
          "tokenizer-hash mismatch refused on demand: %s", describe(rep));
    gn_wire_env_free(rep);
    rep = command(c, GENARM__V1__ENVELOPE__BODY_LOAD, "bad", 1, BAD.dir);
    CHECK(is_error(rep, GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST) &&
              strstr(rep->error->message, "tokenizer mismatch"),
          "tokenizer-hash mismatch refused by LoadModel: %s", describe(rep));
    gn_wire_env_free(rep);
    rep = step(c, "nope", 0, &one, 1);
    CHECK(is_error(rep, GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL) &&
              strstr(rep->error->message, "not registered"),
          "unknown ARM: %s", describe(rep));
    gn_wire_env_free(rep);
    rep = step(c, "help", 99, &one, 1);
    CHECK(is_error(rep, GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL), "bad version: %s", describe(rep));
    gn_wire_env_free(rep);
    rep = step(c, "", 0, &one, 1);
    CHECK(is_error(rep, GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL), "no ARM name: %s", describe(rep));
    gn_wire_env_free(rep);
    int32_t big = 100000;
    gn_step_seq tr = {501, 0, &big, 1, 0, 0, 0};
    rep = step(c, "help", 0, &tr, 1);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT &&
              rep->step_result->n_errors == 1 &&
              rep->step_result->errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_TOKEN_RANGE,
          "token out of range: %s", describe(rep));
    gn_wire_env_free(rep);
    gn_step_seq unk = {502, 7, toks, 1, 0, 0, 0};
    rep = step(c, "help", 0, &unk, 1);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT &&
              rep->step_result->n_errors == 1 &&
              rep->step_result->errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_SEQ,
          "unknown sequence: %s", describe(rep));
    gn_wire_env_free(rep);
    /* Garbage and a wrong protocol version. */
    uint8_t junk[100];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)(i * 37 + 11);
    gn_err e = {0};
    CHECK(gn_step_client_send_raw(c, junk, sizeof junk, &e) == 0, "send garbage");
    uint8_t *rb = NULL;
    size_t rl = 0;
    gn_wire_env *r2 = NULL;
    int wc;
    uint64_t rid;
    CHECK(gn_step_client_recv_raw(c, TIMEOUT_MS, &rb, &rl, &e) == 0 &&
              gn_wire_decode(rb, rl, NULL, &r2, &wc, &rid, &e) == 0 &&
              is_error(r2, GENARM__V1__ERROR_CODE__ERROR_BAD_FRAME),
          "garbage frame: %s", describe(r2));
    gn_wire_env_free(r2);
    gn_free(rb);
    (void)endpoint;
    char models[512];
    CHECK(alive(c, NULL, models, sizeof models) && arms_equal(models, "help@1,harm@1"),
          "still serving, nothing loaded by the refusals: %s", models);
}

/* (d) */
static void test_hot_swap(gn_step_client *c) {
    enum { OLD = 4, NEW = 2 };
    int32_t toks[OLD + NEW][10];
    for (int s = 0; s < OLD + NEW; s++)
        for (int t = 0; t < 10; t++) toks[s][t] = rand_tok();
    gn_err e = {0};
    gn_seq *r1[OLD], *r2[NEW];
    for (int s = 0; s < OLD; s++) r1[s] = gn_seq_create(A1.r, &e);
    for (int s = 0; s < NEW; s++) r2[s] = gn_seq_create(A2.r, &e);
    /* 4 sequences start on v1 (version 0 = current = 1). */
    gn_step_seq q[OLD];
    for (int s = 0; s < OLD; s++) {
        gn_step_seq x = {1000 + (uint64_t)s, 0, toks[s], 3, 0, 0, 0};
        q[s] = x;
    }
    int rows;
    float *want = ref_step(&A1, r1, q, OLD, &rows);
    float *wq[OLD];
    for (int s = 0; s < OLD; s++) wq[s] = want + (size_t)s * (size_t)g_nout;
    gn_wire_env *rep = step(c, "help", 0, q, OLD);
    compare("4 sequences start on v1", rep, q, OLD, wq, 1);
    gn_wire_env_free(rep);
    free(want);

    /* Promote v2 in the registry (what `genarm-admin arm promote` does). */
    char prev[GN_CTL_ID_MAX] = "";
    CHECK(gn_ctl_arm_promote(g_ctl, "help", "2", prev, &e) == 0 && !strcmp(prev, "1"),
          "promote help 2: %s (previous %s)", e.msg, prev);
    char last[1024];
    CHECK(wait_registry("rw1", "help@1,help@2,harm@1", 5000, last, sizeof last),
          "registry shows both versions while draining: %s", last);

    /* One mixed request: the 4 old sequences continue (v1), 2 new ones start (v2). */
    gn_step_seq m[OLD + NEW];
    for (int s = 0; s < OLD; s++) {
        gn_step_seq x = {1000 + (uint64_t)s, 3, &toks[s][3], 1 + (s & 1), s == 3, 0, 0};
        m[s] = x;
    }
    for (int s = 0; s < NEW; s++) {
        gn_step_seq x = {2000 + (uint64_t)s, 0, toks[OLD + s], 4, 0, 0, 0};
        m[OLD + s] = x;
    }
    float *want1 = ref_step(&A1, r1, m, OLD, &rows);
    float *want2 = ref_step(&A2, r2, m + OLD, NEW, &rows);
    float *wm[OLD + NEW];
    size_t off = 0;
    for (int s = 0; s < OLD; s++) {
        wm[s] = want1 + off * (size_t)g_nout;
        off += m[s].all_logits ? (size_t)m[s].n_tokens : 1;
    }
    for (int s = 0; s < NEW; s++) wm[OLD + s] = want2 + (size_t)s * (size_t)g_nout;
    rep = step(c, "help", 0, m, OLD + NEW);
    compare("after promote: old on v1, new on v2, one request", rep, m, OLD + NEW, wm, 0);
    if (rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT &&
        rep->step_result->n_results == OLD + NEW)
        for (int s = 0; s < OLD + NEW; s++)
            CHECK(rep->step_result->results[s]->model_version == (s < OLD ? 1u : 2u),
                  "seq %d reports model_version %u", s, rep->step_result->results[s]->model_version);
    gn_wire_env_free(rep);
    /* The two versions really differ (else this test proves nothing). */
    CHECK(memcmp(wm[0], wm[OLD], (size_t)g_nout * sizeof(float)) != 0, "v1 and v2 rows differ");
    float *v2_on_old = NULL;
    {
        /* Sanity: v2 would have given other rows for an old sequence's step. */
        gn_seq *probe = gn_seq_create(A2.r, &e);
        gn_step_seq pq[2] = {{0, 0, toks[0], 3, 0, 0, 0}, {0, 3, &toks[0][3], 1, 0, 0, 0}};
        gn_step_item it = {probe, pq[0].tokens, 3, 0};
        float *tmp = malloc((size_t)g_nout * sizeof(float));
        gn_runner_step(A2.r, &it, 1, tmp, &e);
        gn_step_item it2 = {probe, pq[1].tokens, 1, 0};
        v2_on_old = malloc((size_t)g_nout * sizeof(float));
        gn_runner_step(A2.r, &it2, 1, v2_on_old, &e);
        CHECK(memcmp(v2_on_old, wm[0], (size_t)g_nout * sizeof(float)) != 0,
              "an old sequence's row on v2 would differ from v1's");
        free(tmp);
        gn_seq_free(probe);
        free(v2_on_old);
    }
    free(want1);
    free(want2);

    /* Old sequences continue on v1 alone (version 0 and explicit 1). */
    gn_step_seq o[OLD];
    for (int s = 0; s < OLD; s++) {
        uint32_t len = 3 + (uint32_t)(1 + (s & 1));
        gn_step_seq x = {1000 + (uint64_t)s, len, &toks[s][len], 1, 0, 0, 0};
        o[s] = x;
    }
    want = ref_step(&A1, r1, o, OLD, &rows);
    for (int s = 0; s < OLD; s++) wq[s] = want + (size_t)s * (size_t)g_nout;
    rep = step(c, "help", 0, o, OLD);
    compare("old sequences still on v1", rep, o, OLD, wq, 1);
    gn_wire_env_free(rep);
    free(want);
    /* A new sequence addressed explicitly to the draining v1 is refused. */
    gn_step_seq nv1 = {3000, 0, toks[0], 2, 0, 0, 0};
    rep = step(c, "help", 1, &nv1, 1);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT &&
              rep->step_result->n_errors == 1 &&
              rep->step_result->errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL &&
              strstr(rep->step_result->errors[0]->message, "draining"),
          "new sequence on draining v1 refused: %s", describe(rep));
    gn_wire_env_free(rep);

    /* Release the old ones: v1 is unloaded, the registry shows only v2. */
    uint64_t old_ids[OLD] = {1000, 1001, 1002, 1003};
    CHECK(release(c, "help", 0, old_ids, 2) == 2, "release 2 old");
    CHECK(wait_registry("rw1", "help@1,help@2,harm@1", 500, last, sizeof last),
          "v1 stays while 2 sequences remain: %s", last);
    CHECK(release(c, "help", 0, old_ids + 2, 2) == 2, "release the last 2 old");
    CHECK(wait_registry("rw1", "help@2,harm@1", 3000, last, sizeof last),
          "after the last v1 sequence: registry shows only v2: %s", last);
    char models[512];
    CHECK(alive(c, NULL, models, sizeof models) && arms_equal(models, "help@2,harm@1"),
          "heartbeat: v1 unloaded: %s", models);
    /* The new sequences continue on v2. */
    gn_step_seq n2[NEW];
    for (int s = 0; s < NEW; s++) {
        gn_step_seq x = {2000 + (uint64_t)s, 4, &toks[OLD + s][4], 1, 0, 1, 0};
        n2[s] = x;
    }
    want = ref_step(&A2, r2, n2, NEW, &rows);
    float *wn[NEW] = {want, want + g_nout};
    rep = step(c, "help", 0, n2, NEW);
    compare("new sequences continue on v2", rep, n2, NEW, wn, 2);
    gn_wire_env_free(rep);
    free(want);
    /* A released old sequence cannot continue anywhere (never re-pinned to v2). */
    gn_step_seq gone = {1000, 6, toks[0], 1, 0, 0, 0};
    rep = step(c, "help", 0, &gone, 1);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT &&
              rep->step_result->n_errors == 1 &&
              rep->step_result->errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_SEQ,
          "released v1 sequence is unknown: %s", describe(rep));
    gn_wire_env_free(rep);
    for (int s = 0; s < OLD; s++) gn_seq_free(r1[s]);
    for (int s = 0; s < NEW; s++) gn_seq_free(r2[s]);
}

/* (e) commands over ZeroMQ */
static void test_commands(gn_step_client *c) {
    char last[1024];
    gn_wire_env *rep = command(c, GENARM__V1__ENVELOPE__BODY_UNLOAD, "harm", 0, NULL);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_COMMAND_RESULT && rep->command_result->ok,
          "unload harm: %s", describe(rep));
    gn_wire_env_free(rep);
    CHECK(wait_registry("rw1", "help@2", 3000, last, sizeof last), "harm unloaded: %s", last);
    /* Load by registry (no path), then by path with an explicit version. */
    rep = command(c, GENARM__V1__ENVELOPE__BODY_LOAD, "harm", 0, NULL);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_COMMAND_RESULT && rep->command_result->ok,
          "load harm from the registry: %s", describe(rep));
    gn_wire_env_free(rep);
    rep = command(c, GENARM__V1__ENVELOPE__BODY_LOAD, "help", 1, A1.dir);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_COMMAND_RESULT && rep->command_result->ok,
          "load help@1 by path: %s", describe(rep));
    gn_wire_env_free(rep);
    CHECK(wait_registry("rw1", "help@1,help@2,harm@1", 3000, last, sizeof last), "three held: %s", last);
    /* Promote help 1 back over ZeroMQ: v2 (no sequences) is unloaded at once. */
    rep = command(c, GENARM__V1__ENVELOPE__BODY_PROMOTE, "help", 1, NULL);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_COMMAND_RESULT && rep->command_result->ok,
          "promote help@1 by command: %s", describe(rep));
    gn_wire_env_free(rep);
    CHECK(wait_registry("rw1", "help@1,harm@1", 3000, last, sizeof last), "v2 drained at once: %s", last);
    int32_t toks[2] = {3, 4};
    gn_step_seq s = {4000, 0, toks, 2, 0, 1, 0};
    rep = step(c, "help", 0, &s, 1);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT && rep->step_result->n_results == 1 &&
              rep->step_result->model->version == 1,
          "new sequence after command promote goes to v1: %s", describe(rep));
    gn_wire_env_free(rep);
    rep = command(c, GENARM__V1__ENVELOPE__BODY_PROMOTE, "help", 0, NULL);
    CHECK(is_error(rep, GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST), "promote without version: %s",
          describe(rep));
    gn_wire_env_free(rep);
    rep = command(c, GENARM__V1__ENVELOPE__BODY_UNLOAD, "nope", 0, NULL);
    CHECK(is_error(rep, GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL), "unload unknown: %s", describe(rep));
    gn_wire_env_free(rep);
}

/* A draining version whose last sequence idles out is unloaded too. */
static void test_idle_drain(void) {
    worker w;
    const char *extra[] = {"--arm", "help@1", "--idle-timeout-s", "1", "--heartbeat-ms", "200", NULL};
    if (start_worker(&w, "rw3", extra) != 0) {
        CHECK(0, "start rw3");
        return;
    }
    gn_err e = {0};
    gn_step_client *c = gn_step_client_create(w.endpoint, NULL, &e);
    if (!c) {
        CHECK(0, "client: %s", e.msg);
        return;
    }
    int32_t toks[3] = {7, 8, 9};
    gn_step_seq s = {1, 0, toks, 3, 0, 0, 0};
    gn_wire_env *rep = step(c, "help", 0, &s, 1);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT && rep->step_result->n_results == 1 &&
              rep->step_result->results[0]->model_version == 1,
          "rw3: a sequence on v1: %s", describe(rep));
    gn_wire_env_free(rep);
    rep = command(c, GENARM__V1__ENVELOPE__BODY_PROMOTE, "help", 2, NULL);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_COMMAND_RESULT && rep->command_result->ok,
          "rw3: promote help@2 by command (loaded from the registry): %s", describe(rep));
    gn_wire_env_free(rep);
    char last[1024];
    CHECK(registry_arms("rw3", last, sizeof last) && arms_equal(last, "help@1,help@2"),
          "rw3: both versions while the v1 sequence lives: %s", last);
    CHECK(wait_registry("rw3", "help@2", 6000, last, sizeof last),
          "rw3: v1 unloaded once its sequence idled out: %s", last);
    gn_step_seq d = {1, 3, toks, 1, 0, 0, 0};
    rep = step(c, "help", 0, &d, 1);
    CHECK(rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT && rep->step_result->n_errors == 1 &&
              rep->step_result->errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_SEQ,
          "rw3: the expired sequence is unknown (not moved to v2): %s", describe(rep));
    gn_wire_env_free(rep);
    /* A coordinator parks a request for an ARM no worker holds: rw3 loads it
     * and hands the request back to the stream. */
    CHECK(gn_ctl_arm_register(g_ctl, "solo", "1", B.dir, B.hash, &e) == 0, "register solo: %s", e.msg);
    CHECK(gn_ctl_wait_push(g_ctl, "solo", "1", "req-1", 5, &e) == 0, "park a request: %s", e.msg);
    CHECK(wait_registry("rw3", "help@2,solo@1", 5000, last, sizeof last),
          "rw3 loaded the ARM a request waits for: %s", last);
    long waiting = -1;
    for (int t = 0; t < 3000 && waiting != 0; t += 50) {
        waiting = gn_ctl_wait_count(g_ctl, &e);
        usleep(50000);
    }
    long queued = -1, pending = -1;
    CHECK(waiting == 0 && gn_ctl_queue_depth(g_ctl, &queued, &pending, &e) == 0 && queued + pending == 1,
          "parked request moved back to the stream (waiting %ld, queued %ld, pending %ld: %s)", waiting,
          queued, pending, e.msg);
    gn_step_client_free(c);
    CHECK(stop_worker(&w, SIGTERM, 10000) == 0, "rw3 exits 0");
}

static void test_ttl_expiry(void) {
    worker w;
    const char *extra[] = {"--arm", "harm@1", "--heartbeat-ms", "200", NULL}; /* TTL 600 ms */
    if (start_worker(&w, "rw2", extra) != 0) {
        CHECK(0, "start rw2");
        return;
    }
    char last[1024];
    CHECK(wait_registry("rw2", "harm@1", 3000, last, sizeof last), "rw2 registered with harm@1: %s", last);
    usleep(1500 * 1000); /* several TTLs: the heartbeat keeps it alive */
    CHECK(registry_arms("rw2", last, sizeof last), "rw2 still registered after 2.5 TTLs (heartbeats)");
    CHECK(stop_worker(&w, SIGKILL, 5000) == 128 + SIGKILL, "SIGKILL rw2");
    int gone = 0;
    for (int t = 0; t < 3000 && !gone; t += 50) {
        gone = !registry_arms("rw2", last, sizeof last);
        usleep(50000);
    }
    CHECK(gone, "rw2's registry entry expired after SIGKILL");
}

/* Command-line errors exit 2; an ARM that cannot be loaded at start exits 1
 * and leaves no registry record. */
static void test_cli(void) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "'%s' --bind tcp://127.0.0.1:* >/dev/null 2>&1", g_bin);
    int st = system(cmd);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 2, "missing --redis/--worker-id: exit 2 (%d)", st);
    snprintf(cmd, sizeof cmd,
             "'%s' --bind tcp://127.0.0.1:* --redis 127.0.0.1:%d --worker-id x --arm help@v2 "
             ">/dev/null 2>&1", g_bin, gn_redis_port);
    st = system(cmd);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 2, "--arm help@v2: exit 2 (%d)", st);
    snprintf(cmd, sizeof cmd,
             "timeout 30 '%s' --bind tcp://127.0.0.1:* --redis 127.0.0.1:%d --worker-id rw-bad "
             "--threads 1 --arm nope >/dev/null 2>&1", g_bin, gn_redis_port);
    st = system(cmd);
    char last[256];
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1 && !registry_arms("rw-bad", last, sizeof last),
          "--arm of an unregistered ARM: exit 1, not registered (%d)", st);
}

/* ---- batching across ARM versions and adapters ---------------------------------- */

/* The first-step row of toks on the backbone bb with the adapter ad (in
 * process). */
static int lora_row(const char *bb, const char *ad, const int32_t *toks, int n, float *out) {
    gn_err e = {0};
    gn_model_params lp = gn_model_default_params();
    lp.load_tokenizer = 1;
    gn_model *m = gn_model_load(bb, g_be, &lp, &e);
    gn_lora_adapter *a = m ? gn_lora_adapter_load(m, ad, &e) : NULL;
    gn_runner *r = a ? gn_runner_create(m, NULL, &e) : NULL;
    gn_seq *q = r ? gn_seq_create(r, &e) : NULL;
    int rc = -1;
    if (q && gn_seq_set_adapter(q, a, &e) == 0) {
        gn_step_item it = {q, toks, n, 0};
        rc = gn_runner_step(r, &it, 1, out, &e);
    }
    if (rc) CHECK(0, "LoRA reference row: %s", e.msg);
    gn_seq_free(q);
    gn_runner_free(r);
    gn_lora_adapter_free(a);
    gn_model_free(m);
    return rc;
}

static uint64_t send_step(gn_step_client *c, const char *arm, uint32_t ver, const gn_step_seq *q, int n) {
    gn_err e = {0};
    uint64_t id = 0;
    CHECK(gn_step_client_step_send(c, arm, ver, q, n, GN_F32, &id, &e) == 0, "send: %s", e.msg);
    return id;
}

static gn_wire_env *recv_id(gn_step_client *c, uint64_t id) {
    gn_err e = {0};
    gn_wire_env *rep = NULL;
    if (gn_step_client_recv(c, id, TIMEOUT_MS, &rep, &e) != 0) CHECK(0, "recv: %s", e.msg);
    return rep;
}

static int step_ok(const gn_wire_env *rep) {
    return rep && rep->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT && rep->step_result->n_errors == 0 &&
           rep->step_result->n_results >= 1;
}

/* The value after key in the worker's log (e.g. its metrics address). */
static int log_field(const char *id, const char *key, char *out, size_t cap) {
    char path[600], line[4096];
    snprintf(path, sizeof path, "%s/%s.log", g_root, id);
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

static void test_batching(void) {
    gn_err e = {0};
    /* Two LoRA adapters on one backbone, registered as ARMs p and q. */
    char bb[300], ad1[300], ad2[300];
    snprintf(bb, sizeof bb, "%s/backbone", g_root);
    snprintf(ad1, sizeof ad1, "%s/adapter_p", g_root);
    snprintf(ad2, sizeof ad2, "%s/adapter_q", g_root);
    gn_make_model_params mp = gn_make_model_default_params();
    mp.arch = "llama";
    mp.init_std = 0.15f;
    mp.seed = 11; /* help_v1's tokenizer */
    mp.lora_out = ad1;
    CHECK(gn_make_model(&mp, bb, &e) == 0, "backbone + adapter: %s", e.msg);
    char cmd[1000];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s'/* '%s'/", ad2, ad1, ad2);
    CHECK(system(cmd) == 0, "copy adapter");
    char cfgp[400];
    snprintf(cfgp, sizeof cfgp, "%s/adapter_config.json", ad2);
    json_t *cfg = json_load_file(cfgp, 0, NULL);
    CHECK(cfg && json_object_set_new(cfg, "lora_alpha", json_integer(40)) == 0 && json_dump_file(cfg, cfgp, 0) == 0,
          "adapter q config");
    json_decref(cfg);
    CHECK(gn_ctl_arm_register(g_ctl, "p", "1", ad1, A1.hash, &e) == 0 &&
              gn_ctl_arm_register(g_ctl, "q", "1", ad2, A1.hash, &e) == 0,
          "register the adapters: %s", e.msg);

    worker w;
    char ipc[300], bind[400];
    snprintf(ipc, sizeof ipc, "ipc://%s/rwb.sock", g_root);
    snprintf(bind, sizeof bind, "tcp://127.0.0.1:*,%s", ipc);
    const char *extra[] = {"--arm",       "help@1",    "--arm",      "help@2", "--arm",          "p",
                           "--arm",       "q",         "--bind",     bind,     "--gather-us",    "100000",
                           "--capacity",  "16",        "--metrics-listen", "127.0.0.1:0", NULL};
    if (start_worker(&w, "rwb", extra) != 0) {
        CHECK(0, "start rwb");
        return;
    }
    gn_ctl_worker rec;
    CHECK(gn_ctl_worker_find_arm(g_ctl, "p", "1", &rec, &e) == 0 && !strcmp(rec.id, "rwb") &&
              !strcmp(rec.ipc, ipc) && rec.host[0] && !strncmp(rec.endpoint, "tcp://", 6),
          "record: endpoint %s, host %s, ipc %s", rec.endpoint, rec.host, rec.ipc);
    enum { NC = 3 };
    gn_step_client *cl[NC + 1];
    for (int i = 0; i <= NC; i++) cl[i] = gn_step_client_create(i == 1 ? ipc : w.endpoint, NULL, &e);
    for (int i = 0; i <= NC; i++)
        if (!cl[i]) {
            CHECK(0, "client: %s", e.msg);
            return;
        }
    for (int i = 0; i <= NC; i++) CHECK(alive(cl[i], NULL, NULL, 0), "client %d connected (1 over ipc)", i);
    int32_t toks[NC][8];
    for (int c = 0; c < NC; c++)
        for (int t = 0; t < 8; t++) toks[c][t] = rand_tok();
    static int32_t longp[4000];
    for (int t = 0; t < 4000; t++) longp[t] = rand_tok();
    /* Client 3 holds the compute thread (a long prefill on harm) while the
     * three send: help@1, help@2, help@1. */
    const char *arm[NC] = {"help", "help", "help"};
    uint32_t ver[NC] = {1, 2, 1};
    ref_model *ref[NC] = {&A1, &A2, &A1};
    gn_step_seq blk = {800, 0, longp, 4000, 0, 1, 0};
    uint64_t bid = send_step(cl[NC], "help", 1, &blk, 1);
    usleep(40000); /* the long pass has started: the three queue behind it */
    uint64_t ids[NC];
    gn_step_seq q[NC];
    for (int c = 0; c < NC; c++) {
        gn_step_seq x = {600 + (uint64_t)c, 0, toks[c], 3 + c, 0, 0, 0};
        q[c] = x;
        ids[c] = send_step(cl[c], arm[c], ver[c], &q[c], 1);
    }
    gn_wire_env *b = recv_id(cl[NC], bid);
    CHECK(step_ok(b), "the long prefill: %s", describe(b));
    if (step_ok(b))
        fprintf(stderr, "batching: the long prefill took %.0f ms\n", (double)b->step_result->compute_us / 1e3);
    gn_wire_env_free(b);
    uint32_t ps[NC] = {0};
    for (int c = 0; c < NC; c++) {
        gn_wire_env *rep = recv_id(cl[c], ids[c]);
        if (!step_ok(rep)) {
            CHECK(0, "client %d: %s", c, describe(rep));
            gn_wire_env_free(rep);
            continue;
        }
        ps[c] = rep->step_result->pass_seqs;
        gn_seq *rs = gn_seq_create(ref[c]->r, &e);
        int rows;
        float *want = ref_step(ref[c], &rs, &q[c], 1, &rows);
        CHECK(rep->step_result->results[0]->model_version == ver[c] &&
                  !memcmp(rep->step_result->logprobs->data.data, want, (size_t)g_nout * sizeof(float)),
              "client %d: help@%u's row == in process (bit for bit)", c, ver[c]);
        free(want);
        gn_seq_free(rs);
        gn_wire_env_free(rep);
    }
    fprintf(stderr, "batching: pass_seqs of help@1, help@2, help@1: %u %u %u\n", ps[0], ps[1], ps[2]);
    CHECK(ps[0] == 2 && ps[1] == 1 && ps[2] == 2, "one pass per version: pass_seqs %u %u %u", ps[0], ps[1], ps[2]);

    /* Two adapters of one backbone, at the same time: one pass of two. The
     * peers of the last batch were 0, 1 and 2: 2 does not come back, so the
     * first round waits for it once; the second goes straight through. */
    float *wp = malloc((size_t)g_nout * sizeof(float)), *wq = malloc((size_t)g_nout * sizeof(float));
    CHECK(lora_row(bb, ad1, toks[0], 4, wp) == 0 && lora_row(bb, ad2, toks[0], 4, wq) == 0, "LoRA references");
    for (int round = 0; round < 2; round++) {
        gn_step_seq x = {700 + (uint64_t)round, 0, toks[0], 4, 0, 1, 0};
        uint64_t i0 = send_step(cl[0], "p", 0, &x, 1), i1 = send_step(cl[1], "q", 0, &x, 1);
        gn_wire_env *r0 = recv_id(cl[0], i0), *r1 = recv_id(cl[1], i1);
        CHECK(step_ok(r0) && step_ok(r1) && r0->step_result->pass_seqs == 2 && r1->step_result->pass_seqs == 2,
              "round %d: p and q in one pass (%u, %u): %s", round, step_ok(r0) ? r0->step_result->pass_seqs : 0,
              step_ok(r1) ? r1->step_result->pass_seqs : 0, describe(step_ok(r0) ? r1 : r0));
        CHECK(step_ok(r0) && step_ok(r1) &&
                  !memcmp(r0->step_result->logprobs->data.data, wp, (size_t)g_nout * sizeof(float)) &&
                  !memcmp(r1->step_result->logprobs->data.data, wq, (size_t)g_nout * sizeof(float)),
              "round %d: each adapter's row == backbone + adapter in process", round);
        gn_wire_env_free(r0);
        gn_wire_env_free(r1);
    }
    free(wp);
    free(wq);

    /* Sparse rows on both versions (the same seq id on each), fetched back
     * from the version that served them. */
    gn_step_seq sp = {650, 0, toks[2], 5, 0, 0, 6};
    uint64_t s1 = send_step(cl[0], "help", 1, &sp, 1), s2 = send_step(cl[1], "help", 2, &sp, 1);
    gn_wire_env *r1 = recv_id(cl[0], s1), *r2 = recv_id(cl[1], s2);
    CHECK(step_ok(r1) && step_ok(r2) && r1->step_result->results[0]->n_cand == 6 &&
              r2->step_result->results[0]->n_cand == 6 && r1->step_result->results[0]->model_version == 1 &&
              r2->step_result->results[0]->model_version == 2,
          "sparse on help@1 and help@2: %s", describe(step_ok(r1) ? r2 : r1));
    gn_wire_env_free(r1);
    gn_wire_env_free(r2);
    for (int v = 1; v <= 2; v++) {
        ref_model *rm = v == 1 ? &A1 : &A2;
        gn_seq *rs = gn_seq_create(rm->r, &e);
        int rows;
        float *want = ref_step(rm, &rs, &sp, 1, &rows);
        gn_fetch_seq fs = {650, 5, NULL, 0, 1};
        uint64_t fid;
        gn_wire_env *fr = NULL;
        CHECK(gn_step_client_fetch_send(cl[2], "help", (uint32_t)v, &fs, 1, &fid, &e) == 0 &&
                  gn_step_client_recv(cl[2], fid, TIMEOUT_MS, &fr, &e) == 0 && fr &&
                  fr->body_case == GENARM__V1__ENVELOPE__BODY_FETCH_RESULT && fr->fetch_result->n_results == 1 &&
                  fr->fetch_result->values.len == (size_t)g_nout * 4 &&
                  !memcmp(fr->fetch_result->values.data, want, (size_t)g_nout * 4),
              "fetch from help@%d == its own row: %s", v, describe(fr));
        gn_wire_env_free(fr);
        free(want);
        gn_seq_free(rs);
    }
    {
        gn_fetch_seq fs = {650, 5, NULL, 0, 1};
        uint64_t fid;
        gn_wire_env *fr = NULL;
        CHECK(gn_step_client_fetch_send(cl[2], "help", 7, &fs, 1, &fid, &e) == 0 &&
                  gn_step_client_recv(cl[2], fid, TIMEOUT_MS, &fr, &e) == 0 &&
                  is_error(fr, GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL),
              "fetch from a version not held: %s", describe(fr));
        gn_wire_env_free(fr);
    }
    /* Heartbeats count the passes; /metrics serves the worker families. */
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    Genarm__V1__Heartbeat hq = GENARM__V1__HEARTBEAT__INIT;
    env.body_case = GENARM__V1__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hq;
    gn_wire_env *hb = NULL;
    CHECK(gn_step_client_call(cl[0], &env, TIMEOUT_MS, &hb, &e) == 0 && hb &&
              hb->body_case == GENARM__V1__ENVELOPE__BODY_HEARTBEAT && hb->heartbeat->forward_passes >= 6 &&
              hb->heartbeat->pass_seqs_total > hb->heartbeat->forward_passes && hb->heartbeat->kv_total_blocks > 0,
          "heartbeat load: %llu passes, %llu sequences",
          hb ? (unsigned long long)hb->heartbeat->forward_passes : 0ull,
          hb ? (unsigned long long)hb->heartbeat->pass_seqs_total : 0ull);
    gn_wire_env_free(hb);
    char addr[128];
    CHECK(log_field("rwb", "metrics=", addr, sizeof addr) == 0, "metrics address in the ready line");
    char url[800];
    snprintf(url, sizeof url, "curl -sf http://%s/metrics > '%s/rwb.metrics'", addr, g_root);
    if (access("/usr/bin/curl", X_OK) == 0) {
        CHECK(system(url) == 0, "GET /metrics");
        char path[400], *text = malloc(1 << 20);
        snprintf(path, sizeof path, "%s/rwb.metrics", g_root);
        FILE *f = fopen(path, "r");
        size_t n = f ? fread(text, 1, (1 << 20) - 1, f) : 0;
        if (f) fclose(f);
        text[n] = 0;
        CHECK(strstr(text, "genarm:worker_forward_passes_total{worker=\"rwb\"}") &&
                  strstr(text, "genarm:worker_pass_sequences_bucket{worker=\"rwb\"") &&
                  strstr(text, "genarm:worker_fetches_total{worker=\"rwb\"} 3"),
              "reward worker metrics");
        free(text);
    }
    for (int i = 0; i <= NC; i++) gn_step_client_free(cl[i]);
    CHECK(stop_worker(&w, SIGTERM, 10000) == 0, "rwb exits 0");
}

int main(void) {
    const char *bdir = getenv("GN_BUILD_DIR");
    snprintf(g_bin, sizeof g_bin, "%s/reward_worker/reward_worker", bdir ? bdir : ".");
    if (access(g_bin, X_OK) != 0)
        GN_TEST_SKIP("reward_worker binary not built");
    gn_redis_start(); /* exits 77 without redis-server */
    snprintf(g_root, sizeof g_root, "/tmp/gn_test_rw_XXXXXX");
    if (!mkdtemp(g_root)) {
        g_root[0] = 0;
        CHECK(0, "mkdtemp");
        GN_TEST_MAIN_END();
    }
    atexit(cleanup);
    gn_t_catch_fatal(on_fatal);

    gn_err e = {0};
    gn_backend_params bp = gn_backend_default_params();
    bp.n_threads = 1;
    g_be = gn_backend_create("cpu", &bp, &e);
    CHECK(g_be != NULL, "backend: %s", e.msg);
    if (!g_be || make_ref(&A1, "help_v1", 11, 0) || make_ref(&A2, "help_v2", 22, 0) ||
        make_ref(&B, "harm_v1", 33, 0) || make_ref(&BAD, "bad_v1", 44, 200))
        GN_TEST_MAIN_END();
    g_nout = gn_model_n_out(A1.m);
    CHECK(!strcmp(A1.hash, A2.hash) && !strcmp(A1.hash, B.hash) && strcmp(A1.hash, BAD.hash),
          "same tokenizer for help/harm, another for bad");

    if (!(g_ctl = gn_ctl_connect("127.0.0.1", gn_redis_port, 2000, &e))) {
        CHECK(0, "redis connect: %s", e.msg);
        GN_TEST_MAIN_END();
    }
    CHECK(gn_ctl_queue_init(g_ctl, &e) == 0, "queue init: %s", e.msg);
    CHECK(gn_ctl_base_set(g_ctl, A1.dir, A1.hash, &e) == 0, "base set: %s", e.msg);
    CHECK(gn_ctl_arm_register(g_ctl, "help", "1", A1.dir, A1.hash, &e) == 0, "register help 1: %s", e.msg);
    CHECK(gn_ctl_arm_register(g_ctl, "help", "2", A2.dir, A2.hash, &e) == 0, "register help 2: %s", e.msg);
    CHECK(gn_ctl_arm_register(g_ctl, "harm", "1", B.dir, B.hash, &e) == 0, "register harm 1: %s", e.msg);
    /* "bad" claims the base's tokenizer but its files carry another one. */
    CHECK(gn_ctl_arm_register(g_ctl, "bad", "1", BAD.dir, A1.hash, &e) == 0, "register bad 1: %s", e.msg);

    worker w;
    const char *extra[] = {"--arm", "help", "--capacity", "16", "--heartbeat-ms", "200", NULL};
    if (start_worker(&w, "rw1", extra) == 0) {
        gn_step_client *c = gn_step_client_create(w.endpoint, NULL, &e);
        CHECK(c != NULL, "client: %s", e.msg);
        if (c) {
            CHECK(alive(c, NULL, NULL, 0), "heartbeat");
            test_logprobs_two_arms(c);
            test_refusals(c, w.endpoint);
            test_hot_swap(c);
            test_commands(c);
            gn_step_client_free(c);
        }
        char last[1024];
        CHECK(registry_arms("rw1", last, sizeof last), "rw1 registered before SIGTERM");
        CHECK(stop_worker(&w, SIGTERM, 10000) == 0, "SIGTERM: drains and exits 0");
        CHECK(!registry_arms("rw1", last, sizeof last), "rw1 deregistered on a clean exit");
    } else {
        CHECK(0, "start reward_worker rw1");
    }
    test_batching();
    test_idle_drain();
    test_ttl_expiry();
    test_cli();

    gn_ctl_free(g_ctl);
    free_ref(&A1);
    free_ref(&A2);
    free_ref(&B);
    free_ref(&BAD);
    gn_backend_free(g_be);
    GN_TEST_MAIN_END();
}
