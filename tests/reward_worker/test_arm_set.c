/* test_arm_set.c — the hot-swap table in process (no Redis, no sockets):
 * version pinning, promote/drain/unload, split and merge of a request whose
 * sequences live on two versions (rows == each version's own rows), loads on
 * demand through the resolver, tokenizer checks, batches of several requests
 * (one forward pass per host: two versions of full models, two LoRA adapters
 * on one backbone; rows == each alone), sparse rows through a split request,
 * fetches routed to the version that served the step, the bound on one reply
 * over a split request, and every allocation failure of create + load + step
 * handled (run under ASan for leaks). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "arm_set.h"
#include "gn_alloc.h"
#include "gn_test.h"
#include "lora.h"
#include "model.h"
#include "model_maker.h"
#include "runner.h"
#include "tokenizer.h"

static char g_root[128];
static char g_dir[4][256]; /* help v1, help v2, harm v1, other tokenizer */
static char g_hash[4][65];
static int g_resolves;

static int resolve(void *ud, const char *name, uint32_t version, gn_arm_source *out, gn_err *err) {
    (void)ud;
    g_resolves++;
    int i = -1;
    if (!strcmp(name, "help") && (version == 0 || version == 2)) i = 1; /* current: 2 */
    else if (!strcmp(name, "help") && version == 1) i = 0;
    else if (!strcmp(name, "harm") && version <= 1) i = 2;
    else if (!strcmp(name, "odd") && version <= 1) i = 3;
    if (i < 0)
        return gn_errf(err, GN_ENOTFOUND, "ARM %s@%u is not registered", name, version);
    memset(out, 0, sizeof *out);
    out->version = i == 1 ? 2 : 1;
    snprintf(out->path, sizeof out->path, "%s", g_dir[i]);
    memcpy(out->tokenizer_hash, g_hash[i == 3 ? 0 : i], sizeof out->tokenizer_hash);
    out->is_current = i != 0;
    return 0;
}

static gn_wire_step_req *make_req(const char *name, uint32_t version, int n, const uint64_t *ids,
                                  const uint32_t *start, const int32_t *toks, int n_tok) {
    static Genarm__V1__ModelRef mr;
    static Genarm__V1__SeqStep ss[8], *sp[8];
    static gn_wire_step_req req;
    Genarm__V1__ModelRef m0 = GENARM__V1__MODEL_REF__INIT;
    mr = m0;
    mr.name = (char *)name;
    mr.version = version;
    gn_wire_step_req r0 = GENARM__V1__STEP_REQUEST__INIT;
    req = r0;
    req.model = &mr;
    req.dtype = GENARM__V1__DTYPE__DTYPE_F32;
    for (int i = 0; i < n; i++) {
        Genarm__V1__SeqStep s0 = GENARM__V1__SEQ_STEP__INIT;
        ss[i] = s0;
        ss[i].seq_id = ids[i];
        ss[i].start_pos = start[i];
        ss[i].tokens = (int32_t *)toks;
        ss[i].n_tokens = (size_t)n_tok;
        sp[i] = &ss[i];
    }
    req.seqs = sp;
    req.n_seqs = (size_t)n;
    return &req;
}

static int held(gn_arms *a, const char *want) {
    char buf[512] = "";
    for (int i = 0; i < gn_arms_count(a); i++) {
        gn_arm_info ai;
        gn_arms_get(a, i, &ai);
        size_t l = strlen(buf);
        snprintf(buf + l, sizeof buf - l, "%s%s@%u%s", l ? "," : "", ai.name, ai.version,
                 ai.is_current ? "*" : ai.draining ? "~" : "");
    }
    if (strcmp(buf, want))
        fprintf(stderr, "held: %s, want %s\n", buf, want);
    return !strcmp(buf, want);
}

static void test_swap(gn_backend *be) {
    gn_err e = {0};
    gn_arms_params p = gn_arms_default_params();
    p.host.max_seqs = 8;
    p.max_req_seqs = 8;
    gn_arms *a = gn_arms_create(be, &p, resolve, NULL, &e);
    CHECK(a != NULL, "create: %s", e.msg);
    if (!a)
        return;
    CHECK(gn_arms_load(a, "help", 1, g_dir[0], NULL, g_hash[0], 0, &e) == 0, "load help@1: %s", e.msg);
    CHECK(held(a, "help@1*"), "help@1 current");
    int32_t toks[4] = {1, 2, 3, 4};
    uint64_t ids[3] = {1, 2, 3};
    uint32_t zero[3] = {0, 0, 0}, four[3] = {4, 4, 4};
    gn_wire_step_resp r = GENARM__V1__STEP_RESPONSE__INIT;
    CHECK(gn_arms_step(a, make_req("help", 0, 2, ids, zero, toks, 4), 0, &r, &e) == 0 &&
              r.n_results == 2 && r.results[0]->model_version == 1 && r.model->version == 1,
          "two sequences on v1: %s", e.msg);
    /* Copy v1's rows of sequence 1's next step for comparison below. */
    size_t n_out = r.logprobs ? r.logprobs->cols : 0;
    CHECK(n_out > 0, "n_out");

    /* Load v2 (not current), then promote: v1 drains. */
    CHECK(gn_arms_load(a, "help", 2, g_dir[1], NULL, g_hash[1], 0, &e) == 0, "load help@2: %s", e.msg);
    CHECK(held(a, "help@1*,help@2"), "v2 held, v1 still current");
    CHECK(gn_arms_promote(a, "help", 2, &e) == 0 && held(a, "help@1~,help@2*"), "promote: v1 draining");

    /* A mixed request: 1 and 2 continue on v1, 3 starts on v2. */
    uint64_t mix_ids[3] = {1, 3, 2};
    uint32_t mix_start[3] = {4, 0, 4};
    gn_wire_step_resp m = GENARM__V1__STEP_RESPONSE__INIT;
    CHECK(gn_arms_step(a, make_req("help", 0, 3, mix_ids, mix_start, toks, 1), 0, &m, &e) == 0 &&
              m.n_results == 3 && m.n_errors == 0,
          "mixed step: %s", e.msg);
    float *mixed = malloc(3 * n_out * sizeof(float));
    uint32_t mv[3] = {0, 0, 0};
    for (size_t i = 0; i < m.n_results && i < 3; i++) {
        mv[i] = m.results[i]->model_version;
        CHECK(m.results[i]->seq_id == mix_ids[i] && m.results[i]->row_offset == i &&
                  m.results[i]->seq_len == mix_start[i] + 1,
              "merged result %zu in request order", i);
    }
    CHECK(mv[0] == 1 && mv[1] == 2 && mv[2] == 1, "versions 1,2,1 (got %u,%u,%u)", mv[0], mv[1], mv[2]);
    if (m.logprobs && m.logprobs->rows == 3)
        memcpy(mixed, m.logprobs->data.data, 3 * n_out * sizeof(float));
    /* The same steps again, one version at a time (after rewinding). */
    uint64_t v1_ids[2] = {1, 2};
    gn_wire_step_resp s1 = GENARM__V1__STEP_RESPONSE__INIT;
    CHECK(gn_arms_step(a, make_req("help", 1, 2, v1_ids, four, toks, 1), 0, &s1, &e) == 0 &&
              s1.n_results == 2 && s1.logprobs->rows == 2,
          "v1 alone (rewound): %s", e.msg);
    if (s1.logprobs && s1.logprobs->rows == 2) {
        CHECK(!memcmp(mixed, s1.logprobs->data.data, n_out * sizeof(float)) &&
                  !memcmp(mixed + 2 * n_out, (float *)s1.logprobs->data.data + n_out, n_out * sizeof(float)),
              "merged v1 rows == v1's own rows");
    }
    uint64_t v2_ids[1] = {3};
    gn_wire_step_resp s2 = GENARM__V1__STEP_RESPONSE__INIT;
    CHECK(gn_arms_step(a, make_req("help", 2, 1, v2_ids, zero, toks, 1), 0, &s2, &e) == 0 &&
              s2.n_results == 1,
          "v2 alone (rewound to 0): %s", e.msg);
    if (s2.logprobs && s2.logprobs->rows == 1)
        CHECK(!memcmp(mixed + n_out, s2.logprobs->data.data, n_out * sizeof(float)),
              "merged v2 row == v2's own row");
    free(mixed);

    /* Draining v1 refuses new sequences addressed to it explicitly. */
    uint64_t nid[1] = {9};
    gn_wire_step_resp d = GENARM__V1__STEP_RESPONSE__INIT;
    CHECK(gn_arms_step(a, make_req("help", 1, 1, nid, zero, toks, 1), 0, &d, &e) == 0 && d.n_errors == 1 &&
              d.errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL,
          "new sequence on draining v1 refused");
    /* Release one: v1 stays; release the other: v1 goes. */
    CHECK(gn_arms_release(a, "help", 0, &ids[0], 1) == 1 && held(a, "help@1~,help@2*"), "v1 stays");
    CHECK(gn_arms_release(a, "help", 0, &ids[1], 1) == 1 && held(a, "help@2*"), "v1 unloaded when drained");

    /* Tokenizer checks. */
    CHECK(gn_arms_load(a, "odd", 1, g_dir[3], NULL, g_hash[0], 0, &e) == GN_EMISMATCH &&
              strstr(e.msg, "tokenizer mismatch"),
          "registry hash mismatch refused: %s", e.msg);
    gn_err e1 = {0}, e2 = {0};
    CHECK(gn_arms_ensure(a, "odd", 0, 0, NULL, &e1) == GN_EMISMATCH &&
              gn_arms_ensure(a, "odd", 1, 0, NULL, &e2) == GN_EMISMATCH && !strcmp(e1.msg, e2.msg),
          "on-demand refusal remembered: %s / %s", e1.msg, e2.msg);
    CHECK(gn_arms_load(a, "help", 7, g_dir[3], NULL, NULL, 0, &e) == GN_EMISMATCH,
          "a version with another tokenizer than the held one refused: %s", e.msg);
    CHECK(held(a, "help@2*"), "nothing loaded by refusals");
    /* On demand through the resolver. */
    int before = g_resolves;
    gn_wire_step_resp h = GENARM__V1__STEP_RESPONSE__INIT;
    CHECK(gn_arms_step(a, make_req("harm", 0, 1, nid, zero, toks, 2), 0, &h, &e) == 0 && h.n_results == 1 &&
              g_resolves == before + 1,
          "harm loaded on demand: %s", e.msg);
    CHECK(held(a, "harm@1*,help@2*"), "harm held (slot order)");
    gn_wire_step_resp u = GENARM__V1__STEP_RESPONSE__INIT;
    CHECK(gn_arms_step(a, make_req("nope", 0, 1, nid, zero, toks, 2), 0, &u, &e) ==
                  GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL,
          "unknown ARM: whole-request error");
    /* Unload: freed once its last sequence goes (idle sweep). */
    CHECK(gn_arms_unload(a, "harm", 0, &e) == 1 && held(a, "harm@1~,help@2*"), "harm marked");
    CHECK(gn_arms_sweep(a, 400000) >= 1 && held(a, "help@2*"), "idle sweep frees it and unloads harm");
    gn_arms_free(a);
}

/* A first step addressed explicitly to the registry's current version, not
 * held yet, loads it and swaps right there. */
static void test_explicit_swap(gn_backend *be) {
    gn_err e = {0};
    gn_arms *a = gn_arms_create(be, NULL, resolve, NULL, &e);
    CHECK(a != NULL, "create: %s", e.msg);
    if (!a)
        return;
    CHECK(gn_arms_load(a, "help", 1, g_dir[0], NULL, g_hash[0], 0, &e) == 0 && held(a, "help@1*"),
          "help@1 current (the only one): %s", e.msg);
    int32_t toks[2] = {1, 2};
    uint64_t ids[2] = {1, 2};
    uint32_t zero[2] = {0, 0};
    gn_wire_step_resp r = GENARM__V1__STEP_RESPONSE__INIT;
    CHECK(gn_arms_step(a, make_req("help", 0, 1, ids, zero, toks, 2), 0, &r, &e) == 0 && r.n_results == 1,
          "seq 1 on v1");
    gn_wire_step_resp r2 = GENARM__V1__STEP_RESPONSE__INIT;
    CHECK(gn_arms_step(a, make_req("help", 2, 1, ids + 1, zero, toks, 2), 0, &r2, &e) == 0 &&
              r2.n_results == 1 && r2.results[0]->model_version == 2,
          "explicit v2 loads on demand: %s", e.msg);
    CHECK(held(a, "help@1~,help@2*"), "v2 current (registry says so), v1 draining with seq 1");
    gn_arms_free(a);

    /* Full: a load on demand beyond max_models is CAPACITY, nothing dropped. */
    gn_arms_params p = gn_arms_default_params();
    p.max_models = 1;
    a = gn_arms_create(be, &p, resolve, NULL, &e);
    CHECK(a && gn_arms_load(a, "help", 1, g_dir[0], NULL, NULL, 0, &e) == 0, "one slot: %s", e.msg);
    gn_wire_step_resp r3 = GENARM__V1__STEP_RESPONSE__INIT;
    CHECK(a && gn_arms_step(a, make_req("harm", 0, 1, ids, zero, toks, 2), 0, &r3, &e) ==
                   GENARM__V1__ERROR_CODE__ERROR_CAPACITY && held(a, "help@1*"),
          "harm with no free slot: CAPACITY (%s)", e.msg);
    gn_arms_free(a);
}

/* Every allocation failure in create + load + a mixed step is an error, not a
 * crash (ASan reports leaks). */
static void test_alloc_failures(gn_backend *be) {
    int ok_run = 0;
    for (long n = 0; n < 5000 && !ok_run; n++) {
        gn_err e = {0};
        gn_alloc_fail_after(n);
        gn_arms_params p = gn_arms_default_params();
        p.host.max_seqs = 4;
        p.max_req_seqs = 4;
        gn_arms *a = gn_arms_create(be, &p, resolve, NULL, &e);
        int rc = a ? 0 : -1;
        if (!rc)
            rc = gn_arms_load(a, "help", 1, g_dir[0], NULL, g_hash[0], 0, &e);
        if (!rc)
            rc = gn_arms_ensure(a, "help", 2, 1, NULL, &e);
        int32_t toks[2] = {1, 2};
        uint64_t ids[1] = {5};
        uint32_t zero[1] = {0};
        gn_wire_step_resp r = GENARM__V1__STEP_RESPONSE__INIT;
        if (!rc)
            rc = gn_arms_step(a, make_req("help", 0, 1, ids, zero, toks, 2), 0, &r, &e);
        if (!rc && r.n_errors)
            rc = -1;
        gn_arms_free(a);
        long made = gn_alloc_fail_after(-1);
        if (rc == 0 && made <= n)
            ok_run = 1;
    }
    CHECK(ok_run, "a run with no injected failure completes");
}

/* The first step's row of `toks` on the backbone with the adapter in ad_dir,
 * computed in process (the reference for the shared-backbone rows). */
static int ref_row(gn_backend *be, const char *bb_dir, const char *ad_dir, const int32_t *toks, int n,
                   float *out, size_t n_out) {
    gn_err e = {0};
    gn_model *m = gn_model_load(bb_dir, be, NULL, &e);
    gn_lora_adapter *ad = m ? gn_lora_adapter_load(m, ad_dir, &e) : NULL;
    gn_runner *r = ad ? gn_runner_create(m, NULL, &e) : NULL;
    gn_seq *q = r ? gn_seq_create(r, &e) : NULL;
    int rc = -1;
    if (q && gn_seq_set_adapter(q, ad, &e) == 0) {
        gn_step_item it = {q, toks, n, 0};
        float *rows = malloc(n_out * sizeof(float));
        if (rows && gn_runner_step(r, &it, 1, rows, &e) == 0) {
            memcpy(out, rows, n_out * sizeof(float));
            rc = 0;
        }
        free(rows);
    }
    if (rc) fprintf(stderr, "reference row: %s\n", e.msg);
    gn_seq_free(q);
    gn_runner_free(r);
    gn_lora_adapter_free(ad);
    gn_model_free(m);
    return rc;
}

/* A request of its own (make_req shares one static buffer). */
typedef struct own_req {
    Genarm__V1__ModelRef mr;
    Genarm__V1__SeqStep ss[4], *sp[4];
    gn_wire_step_req req;
} own_req;

static const gn_wire_step_req *own(own_req *o, const char *name, uint32_t version, int n, const uint64_t *ids,
                                   const uint32_t *start, const int32_t *toks, int n_tok, uint32_t top_k) {
    Genarm__V1__ModelRef m0 = GENARM__V1__MODEL_REF__INIT;
    o->mr = m0;
    o->mr.name = (char *)name;
    o->mr.version = version;
    gn_wire_step_req r0 = GENARM__V1__STEP_REQUEST__INIT;
    o->req = r0;
    o->req.model = &o->mr;
    o->req.dtype = GENARM__V1__DTYPE__DTYPE_F32;
    for (int i = 0; i < n; i++) {
        Genarm__V1__SeqStep s0 = GENARM__V1__SEQ_STEP__INIT;
        o->ss[i] = s0;
        o->ss[i].seq_id = ids[i];
        o->ss[i].start_pos = start[i];
        o->ss[i].tokens = (int32_t *)toks;
        o->ss[i].n_tokens = (size_t)n_tok;
        o->ss[i].top_k = top_k;
        o->sp[i] = &o->ss[i];
    }
    o->req.seqs = o->sp;
    o->req.n_seqs = (size_t)n;
    return &o->req;
}

/* The dense row of a new sequence of toks on name@version stepped alone
 * (then released). */
static int alone_row(gn_arms *a, const char *name, uint32_t version, uint64_t id, const int32_t *toks, int n,
                     float *out, size_t n_out) {
    own_req o;
    gn_wire_step_resp r = GENARM__V1__STEP_RESPONSE__INIT;
    gn_err e = {0};
    uint32_t zero = 0;
    int rc = gn_arms_step(a, own(&o, name, version, 1, &id, &zero, toks, n, 0), 0, &r, &e);
    if (rc || r.n_results != 1 || !r.logprobs || r.logprobs->cols != n_out) return -1;
    memcpy(out, r.logprobs->data.data, n_out * sizeof(float));
    gn_arms_release(a, name, version, &id, 1);
    return 0;
}

/* Fetches ids (or the full row) of one sequence. */
static int fetch_one(gn_arms *a, const char *name, uint32_t version, uint64_t id, uint32_t len, const int32_t *ids,
                     int n_ids, int full, Genarm__V1__RowFetchResult *res) {
    Genarm__V1__ModelRef mr = GENARM__V1__MODEL_REF__INIT;
    mr.name = (char *)name;
    mr.version = version;
    Genarm__V1__FetchSeq fs = GENARM__V1__FETCH_SEQ__INIT, *fp = &fs;
    fs.seq_id = id;
    fs.seq_len = len;
    fs.ids = (int32_t *)ids;
    fs.n_ids = (size_t)n_ids;
    fs.full_row = full;
    Genarm__V1__RowFetch rf = GENARM__V1__ROW_FETCH__INIT;
    rf.model = &mr;
    rf.seqs = &fp;
    rf.n_seqs = 1;
    Genarm__V1__RowFetchResult r0 = GENARM__V1__ROW_FETCH_RESULT__INIT;
    *res = r0;
    gn_err e = {0};
    return gn_arms_fetch(a, &rf, res, &e);
}

/* Batches over full-model versions: requests of two coordinators for
 * help@1 go into one pass, help@2 has its own; rows == each sequence alone;
 * sparse rows through a split request; fetches routed by version. */
static void test_batch_versions(gn_backend *be) {
    gn_err e = {0};
    gn_arms_params p = gn_arms_default_params();
    p.host.max_seqs = 8;
    p.max_batch_seqs = 2; /* the scratch grows for the batches below */
    gn_arms *a = gn_arms_create(be, &p, resolve, NULL, &e);
    CHECK(a != NULL, "create: %s", e.msg);
    if (!a) return;
    CHECK(gn_arms_load(a, "help", 1, g_dir[0], NULL, g_hash[0], 0, &e) == 0 &&
              gn_arms_load(a, "help", 2, g_dir[1], NULL, g_hash[1], 0, &e) == 0,
          "help@1 and help@2: %s", e.msg);
    int32_t toks[3] = {4, 9, 2};
    size_t n_out = 0;
    {
        own_req o;
        gn_wire_step_resp r = GENARM__V1__STEP_RESPONSE__INIT;
        uint64_t id = 99;
        uint32_t z = 0;
        CHECK(gn_arms_step(a, own(&o, "help", 1, 1, &id, &z, toks, 3, 0), 0, &r, &e) == 0 && r.logprobs, "probe");
        n_out = r.logprobs ? r.logprobs->cols : 0;
        gn_arms_release(a, "help", 0, &id, 1);
    }
    float *w1 = calloc(n_out + 1, sizeof(float)), *w2 = calloc(n_out + 1, sizeof(float));
    CHECK(alone_row(a, "help", 1, 50, toks, 3, w1, n_out) == 0 && alone_row(a, "help", 2, 51, toks, 3, w2, n_out) == 0,
          "rows alone");
    uint64_t p0, s0;
    gn_arms_counters(a, &p0, &s0);
    own_req o1, o2, o3;
    uint32_t z[2] = {0, 0};
    const gn_wire_step_req *reqs[3] = {own(&o1, "help", 1, 2, (uint64_t[]){1, 2}, z, toks, 3, 0),
                                       own(&o2, "help", 1, 1, (uint64_t[]){3}, z, toks, 3, 0),
                                       own(&o3, "help", 2, 1, (uint64_t[]){4}, z, toks, 3, 0)};
    gn_wire_step_resp rs[3] = {GENARM__V1__STEP_RESPONSE__INIT, GENARM__V1__STEP_RESPONSE__INIT,
                               GENARM__V1__STEP_RESPONSE__INIT};
    gn_wire_step_resp *rp[3] = {&rs[0], &rs[1], &rs[2]};
    int codes[3];
    gn_err errs[3];
    gn_arms_step_batch(a, reqs, 3, rp, codes, errs, 0);
    CHECK(!codes[0] && !codes[1] && !codes[2], "batch: %s %s %s", errs[0].msg, errs[1].msg, errs[2].msg);
    const int *ps = NULL;
    int np = gn_arms_last_passes(a, &ps);
    uint64_t p1, s1;
    gn_arms_counters(a, &p1, &s1);
    CHECK(np == 2 && ps[0] == 3 && ps[1] == 1 && p1 - p0 == 2 && s1 - s0 == 4,
          "one pass per host: %d passes (%d, %d sequences)", np, np > 0 ? ps[0] : -1, np > 1 ? ps[1] : -1);
    CHECK(rs[0].pass_seqs == 3 && rs[1].pass_seqs == 3 && rs[2].pass_seqs == 1, "pass_seqs %u %u %u",
          rs[0].pass_seqs, rs[1].pass_seqs, rs[2].pass_seqs);
    int same = rs[0].n_results == 2 && rs[1].n_results == 1 && rs[2].n_results == 1 && rs[0].logprobs->rows == 2;
    for (int r = 0; same && r < 2; r++) same = !memcmp((float *)rs[0].logprobs->data.data + r * n_out, w1, n_out * 4);
    same = same && !memcmp(rs[1].logprobs->data.data, w1, n_out * 4) && !memcmp(rs[2].logprobs->data.data, w2, n_out * 4);
    CHECK(same, "batched rows == each version's row alone (bit for bit)");
    CHECK(rs[0].results[0]->model_version == 1 && rs[2].results[0]->model_version == 2 && rs[2].model->version == 2,
          "model versions");

    /* Sparse rows: help@1 and help@2, then a version-0 request split over
     * both (7 pinned on v1, 8 on v2) with candidates merged. */
    own_req o4, o5;
    const gn_wire_step_req *sreq[2] = {own(&o4, "help", 1, 1, (uint64_t[]){7}, z, toks, 3, 6),
                                       own(&o5, "help", 2, 1, (uint64_t[]){8}, z, toks, 3, 6)};
    gn_arms_step_batch(a, sreq, 2, rp, codes, errs, 0);
    CHECK(!codes[0] && !codes[1] && rs[0].results[0]->n_cand == 6 && rs[1].results[0]->n_cand == 6 &&
              gn_wire_step_resp_check(&rs[0], &e) == 0,
          "sparse on both versions: %s", e.msg);
    Genarm__V1__RowFetchResult fr;
    CHECK(fetch_one(a, "help", 1, 7, 3, NULL, 0, 1, &fr) == 0 && fr.n_results == 1 &&
              fr.values.len == n_out * 4 && !memcmp(fr.values.data, w1, n_out * 4),
          "fetch help@1: the v1 row");
    CHECK(fetch_one(a, "help", 2, 8, 3, NULL, 0, 1, &fr) == 0 && fr.n_results == 1 &&
              !memcmp(fr.values.data, w2, n_out * 4),
          "fetch help@2: the v2 row");
    CHECK(fetch_one(a, "help", 2, 7, 3, NULL, 0, 1, &fr) == 0 && fr.n_errors == 1 &&
              fr.errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_ROW_GONE,
          "7 is not on help@2: ROW_GONE");
    int32_t two[2] = {0, 3};
    CHECK(fetch_one(a, "help", 0, 8, 3, two, 2, 0, &fr) == 0 && fr.n_results == 1 && fr.results[0]->n == 2 &&
              fr.values.len == 8 && !memcmp(fr.values.data, &w2[0], 4) && !memcmp(fr.values.data + 4, &w2[3], 4),
          "version 0: the version holding the sequence");
    CHECK(fetch_one(a, "help", 9, 8, 3, two, 2, 0, &fr) == GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL,
          "a version not held: UNKNOWN_MODEL");
    {
        /* Version 0 of a name not held at all: UNKNOWN_MODEL like a version
         * not held (full rows of it used to be sized at 2^20 floats each). */
        enum { NF = 256 };
        static Genarm__V1__FetchSeq fs[NF];
        static Genarm__V1__FetchSeq *fp[NF];
        for (int i = 0; i < NF; i++) {
            Genarm__V1__FetchSeq f0 = GENARM__V1__FETCH_SEQ__INIT;
            fs[i] = f0;
            fs[i].seq_id = (uint64_t)(1000 + i);
            fs[i].seq_len = 3;
            fs[i].full_row = 1;
            fp[i] = &fs[i];
        }
        Genarm__V1__ModelRef mr = GENARM__V1__MODEL_REF__INIT;
        mr.name = "nobody";
        Genarm__V1__RowFetch rf = GENARM__V1__ROW_FETCH__INIT;
        rf.model = &mr;
        rf.seqs = fp;
        rf.n_seqs = NF;
        Genarm__V1__RowFetchResult r0 = GENARM__V1__ROW_FETCH_RESULT__INIT;
        fr = r0;
        CHECK(gn_arms_fetch(a, &rf, &fr, &e) == GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL &&
                  strstr(e.msg, "nobody"),
              "version 0 of a name not held: UNKNOWN_MODEL (%s)", e.msg);
        CHECK(fetch_one(a, "help", 0, 8, 3, NULL, 0, 1, &fr) == 0 && fr.n_results == 1 &&
                  fr.results[0]->n == n_out && fr.values.len == n_out * 4 && !memcmp(fr.values.data, w2, n_out * 4),
              "version 0, full row: the row width of the name's versions");
    }
    own_req o6;
    int32_t nxt = 5;
    gn_wire_step_resp m = GENARM__V1__STEP_RESPONSE__INIT;
    CHECK(gn_arms_step(a, own(&o6, "help", 0, 2, (uint64_t[]){8, 7}, (uint32_t[]){3, 3}, &nxt, 1, 4), 0, &m, &e) == 0 &&
              m.n_results == 2 && m.results[0]->model_version == 2 && m.results[1]->model_version == 1 &&
              gn_wire_step_resp_check(&m, &e) == 0,
          "split sparse request: %s", e.msg);
    for (size_t i = 0; i < m.n_results && i < 2; i++) {
        const int32_t *ids;
        const float *vals;
        int32_t si[8];
        float sv[8];
        Genarm__V1__RowFetchResult f2;
        int ok = m.results[i]->n_cand == 4 && gn_wire_sparse_row(&m, m.results[i], si, sv, 8, &ids, &vals, &e) == 0 &&
                 fetch_one(a, "help", m.results[i]->model_version, m.results[i]->seq_id, 4, ids, 4, 0, &f2) == 0 &&
                 f2.n_results == 1 && !memcmp(f2.values.data, vals, 16);
        CHECK(ok, "merged candidates of seq %llu == its version's row values", (unsigned long long)m.results[i]->seq_id);
    }
    free(w1);
    free(w2);
    gn_arms_free(a);
}

/* max_reply_bytes over a whole request: a version-0 step split over two
 * versions, each part within the bound, the whole over it, is refused before
 * any pass; so is a version-0 fetch of more full rows than the bound. */
static void test_reply_bound(gn_backend *be) {
    gn_err e = {0};
    gn_model *m = gn_model_load(g_dir[0], be, NULL, &e);
    CHECK(m != NULL, "load: %s", e.msg);
    if (!m) return;
    size_t n_out = (size_t)gn_model_n_out(m);
    gn_model_free(m);
    gn_arms_params p = gn_arms_default_params();
    p.host.max_seqs = 8;
    p.host.max_reply_bytes = n_out * 4 + 64; /* one F32 row */
    gn_arms *a = gn_arms_create(be, &p, resolve, NULL, &e);
    CHECK(a != NULL, "create: %s", e.msg);
    if (!a) return;
    CHECK(gn_arms_load(a, "help", 1, g_dir[0], NULL, g_hash[0], 0, &e) == 0, "help@1: %s", e.msg);
    int32_t toks[3] = {4, 9, 2};
    uint32_t z = 0, three = 3;
    own_req o;
    gn_wire_step_resp r = GENARM__V1__STEP_RESPONSE__INIT;
    CHECK(gn_arms_step(a, own(&o, "help", 0, 1, (uint64_t[]){7}, &z, toks, 3, 0), 0, &r, &e) == 0 &&
              r.n_results == 1,
          "7 on help@1: %s", e.msg);
    CHECK(gn_arms_load(a, "help", 2, g_dir[1], NULL, g_hash[1], 1, &e) == 0 && held(a, "help@1~,help@2*"),
          "help@2 current, help@1 draining: %s", e.msg);
    uint64_t p0, s0, p1, s1;
    gn_arms_counters(a, &p0, &s0);
    int32_t nxt = 5;
    /* 7 (pinned on help@1) and 8 (new: help@2), one row each: two rows. */
    CHECK(gn_arms_step(a, own(&o, "help", 0, 2, (uint64_t[]){7, 8}, (uint32_t[]){3, 0}, &nxt, 1, 0), 0, &r, &e) ==
                  GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE &&
              strstr(e.msg, "max_reply_bytes"),
          "a split step over the bound: TOO_LARGE (%s)", e.msg);
    gn_arms_counters(a, &p1, &s1);
    CHECK(p1 == p0 && gn_arms_load_total(a) == 1, "refused before any pass: %llu passes, %d sequences",
          (unsigned long long)(p1 - p0), gn_arms_load_total(a));
    CHECK(gn_arms_step(a, own(&o, "help", 0, 1, (uint64_t[]){7}, &three, &nxt, 1, 0), 0, &r, &e) == 0 &&
              r.n_results == 1 && r.results[0]->model_version == 1,
          "one row is within it: %s", e.msg);

    Genarm__V1__FetchSeq fs[2], *fp[2];
    for (int i = 0; i < 2; i++) {
        Genarm__V1__FetchSeq f0 = GENARM__V1__FETCH_SEQ__INIT;
        fs[i] = f0;
        fs[i].seq_id = 7 + (uint64_t)i;
        fs[i].seq_len = 4;
        fs[i].full_row = 1;
        fp[i] = &fs[i];
    }
    Genarm__V1__ModelRef mr = GENARM__V1__MODEL_REF__INIT;
    mr.name = "help";
    Genarm__V1__RowFetch rf = GENARM__V1__ROW_FETCH__INIT;
    rf.model = &mr;
    rf.seqs = fp;
    rf.n_seqs = 2;
    Genarm__V1__RowFetchResult fr = GENARM__V1__ROW_FETCH_RESULT__INIT;
    CHECK(gn_arms_fetch(a, &rf, &fr, &e) == GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE && strstr(e.msg, "max_reply_bytes"),
          "version-0 fetch of two full rows: TOO_LARGE (%s)", e.msg);
    rf.n_seqs = 1;
    CHECK(gn_arms_fetch(a, &rf, &fr, &e) == 0, "one full row: %s", e.msg);
    gn_arms_free(a);
}

/* Adapters on one backbone: loaded once, shared; the same sequence id under
 * two adapters; a hot swap between two adapter versions of one ARM on the
 * same backbone (a split request through one host); freed with the last. */
static void test_shared_backbone(gn_backend *be) {
    char bb[300], ad1[300], ad2[300];
    snprintf(bb, sizeof bb, "%s/backbone", g_root);
    snprintf(ad1, sizeof ad1, "%s/adapter1", g_root);
    snprintf(ad2, sizeof ad2, "%s/adapter2", g_root);
    gn_err e = {0};
    gn_make_model_params mp = gn_make_model_default_params();
    mp.arch = "llama";
    mp.dim = 32;
    mp.n_layers = 2;
    mp.ffn_dim = 64;
    mp.init_std = 0.15f;
    mp.seed = 5;
    mp.lora_out = ad1;
    CHECK(gn_make_model(&mp, bb, &e) == 0, "make backbone + adapter: %s", e.msg);
    /* adapter 2: the same factors at twice the scale */
    char cmd[1000];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s'/* '%s'/", ad2, ad1, ad2);
    CHECK(system(cmd) == 0, "copy adapter");
    char cfgp[400];
    snprintf(cfgp, sizeof cfgp, "%s/adapter_config.json", ad2);
    json_t *cfg = json_load_file(cfgp, 0, NULL);
    CHECK(cfg && json_object_set_new(cfg, "lora_alpha", json_integer(32)) == 0 && json_dump_file(cfg, cfgp, 0) == 0,
          "adapter 2 config");
    json_decref(cfg);
    gn_arms_params p = gn_arms_default_params();
    p.host.max_seqs = 8;
    gn_arms *a = gn_arms_create(be, &p, NULL, NULL, &e);
    if (!a) return;
    CHECK(gn_arms_load(a, "p", 1, bb, ad1, NULL, 0, &e) == 0, "p@1 = adapter 1: %s", e.msg);
    CHECK(gn_arms_load(a, "q", 1, bb, ad2, NULL, 0, &e) == 0, "q@1 = adapter 2: %s", e.msg);
    CHECK(gn_arms_backbones(a) == 1 && held(a, "p@1*,q@1*"), "one backbone for both");
    int32_t toks[4] = {5, 6, 7, 8};
    uint64_t id7[1] = {7}, id8[1] = {8};
    uint32_t zero[1] = {0};
    gn_wire_step_resp rp = GENARM__V1__STEP_RESPONSE__INIT, rq = GENARM__V1__STEP_RESPONSE__INIT;
    CHECK(gn_arms_step(a, make_req("p", 0, 1, id7, zero, toks, 4), 0, &rp, &e) == 0 && rp.n_results == 1, "p: %s",
          e.msg);
    size_t n_out = rp.logprobs ? rp.logprobs->cols : 0;
    float *row_p = calloc(n_out + 1, sizeof(float)), *row_q = calloc(n_out + 1, sizeof(float));
    float *want = calloc(n_out + 1, sizeof(float));
    if (n_out) memcpy(row_p, rp.logprobs->data.data, n_out * sizeof(float));
    CHECK(gn_arms_step(a, make_req("q", 0, 1, id7, zero, toks, 4), 0, &rq, &e) == 0 && rq.n_results == 1,
          "the same sequence id under q: %s", e.msg);
    if (n_out && rq.logprobs) memcpy(row_q, rq.logprobs->data.data, n_out * sizeof(float));
    CHECK(n_out && memcmp(row_p, row_q, n_out * sizeof(float)) != 0, "the two adapters steer differently");
    CHECK(ref_row(be, bb, ad1, toks, 4, want, n_out) == 0 && !memcmp(row_p, want, n_out * sizeof(float)),
          "p's row == backbone + adapter 1 in process, bit for bit");
    CHECK(ref_row(be, bb, ad2, toks, 4, want, n_out) == 0 && !memcmp(row_q, want, n_out * sizeof(float)),
          "q's row == backbone + adapter 2 in process, bit for bit");
    /* One batch: p and q (two adapters on one backbone) in one forward pass;
     * each row == its adapter's row alone. */
    {
        own_req oa, ob;
        uint32_t z = 0;
        const gn_wire_step_req *reqs[2] = {own(&oa, "p", 0, 1, (uint64_t[]){30}, &z, toks, 4, 0),
                                           own(&ob, "q", 0, 1, (uint64_t[]){30}, &z, toks, 4, 0)};
        gn_wire_step_resp rs[2] = {GENARM__V1__STEP_RESPONSE__INIT, GENARM__V1__STEP_RESPONSE__INIT};
        gn_wire_step_resp *rp2[2] = {&rs[0], &rs[1]};
        int codes[2];
        gn_err errs[2];
        gn_arms_step_batch(a, reqs, 2, rp2, codes, errs, 0);
        const int *ps = NULL;
        int np = gn_arms_last_passes(a, &ps);
        CHECK(!codes[0] && !codes[1] && np == 1 && ps[0] == 2 && rs[0].pass_seqs == 2 && rs[1].pass_seqs == 2,
              "two adapters, one pass of 2 (%d passes): %s %s", np, errs[0].msg, errs[1].msg);
        CHECK(rs[0].n_results == 1 && rs[1].n_results == 1 && !memcmp(rs[0].logprobs->data.data, row_p, n_out * 4) &&
                  !memcmp(rs[1].logprobs->data.data, row_q, n_out * 4),
              "each adapter's row in the shared pass == alone (bit for bit)");
        uint64_t id30 = 30;
        gn_arms_release(a, NULL, 0, &id30, 1);
    }
    /* hot swap p: 1 -> 2 (adapter 2) on the same backbone; 7 stays on p@1, 8 starts on p@2 */
    CHECK(gn_arms_load(a, "p", 2, bb, ad2, NULL, 1, &e) == 0 && gn_arms_backbones(a) == 1 &&
              held(a, "p@1~,q@1*,p@2*"),
          "p@2 on the same backbone, current: %s", e.msg);
    uint64_t mix[2] = {7, 8};
    uint32_t mix_start[2] = {4, 0};
    int32_t next[4] = {9, 9, 9, 9};
    gn_wire_step_resp m = GENARM__V1__STEP_RESPONSE__INIT;
    CHECK(gn_arms_step(a, make_req("p", 0, 2, mix, mix_start, next, 1), 0, &m, &e) == 0 && m.n_results == 2 &&
              m.results[0]->seq_id == 7 && m.results[0]->model_version == 1 && m.results[1]->seq_id == 8 &&
              m.results[1]->model_version == 2,
          "split across two adapters of one host: %s", e.msg);
    float *mixed = calloc(2 * n_out + 1, sizeof(float));
    if (m.logprobs && m.logprobs->rows == 2) memcpy(mixed, m.logprobs->data.data, 2 * n_out * sizeof(float));
    int32_t t9[1] = {9};
    gn_wire_step_resp q8 = GENARM__V1__STEP_RESPONSE__INIT;
    uint64_t id9[1] = {9};
    CHECK(gn_arms_step(a, make_req("q", 0, 1, id9, zero, t9, 1), 0, &q8, &e) == 0 && q8.n_results == 1 &&
              !memcmp(mixed + m.results[1]->row_offset * n_out, q8.logprobs->data.data, n_out * sizeof(float)),
          "p@2's row for a new sequence == q's (same adapter, same token)");
    /* drain: p@1 goes with sequence 7; the backbone stays for q and p@2 */
    CHECK(gn_arms_release(a, "p", 0, id7, 1) == 1 && held(a, "q@1*,p@2*") && gn_arms_backbones(a) == 1,
          "p@1 unloaded when drained, backbone kept");
    CHECK(gn_arms_release(a, "q", 0, id7, 1) == 1, "q's sequence 7 is its own (keyed by adapter)");
    CHECK(gn_arms_unload(a, "q", 0, &e) == 1 && gn_arms_unload(a, "p", 0, &e) == 1, "unload both");
    gn_arms_release(a, NULL, 0, id8, 1);
    gn_arms_release(a, NULL, 0, id9, 1);
    CHECK(gn_arms_sweep(a, 0) >= 0 && gn_arms_count(a) == 0 && gn_arms_backbones(a) == 0,
          "the backbone goes with its last adapter (%d held, %d backbones)", gn_arms_count(a),
          gn_arms_backbones(a));
    /* an adapter whose shapes do not fit the backbone is refused, and nothing stays loaded */
    char other[300];
    snprintf(other, sizeof other, "%s/other", g_root);
    mp.dim = 48;
    mp.lora_out = NULL;
    CHECK(gn_make_model(&mp, other, &e) == 0, "other model");
    CHECK(gn_arms_load(a, "r", 1, other, ad1, NULL, 0, &e) < 0 && gn_arms_count(a) == 0 &&
              gn_arms_backbones(a) == 0,
          "mismatched adapter refused: %s", e.msg);
    free(row_p);
    free(row_q);
    free(want);
    free(mixed);
    gn_arms_free(a);
}

int main(void) {
    snprintf(g_root, sizeof g_root, "/tmp/gn_test_arms_XXXXXX");
    if (!mkdtemp(g_root))
        GN_TEST_SKIP("mkdtemp");
    gn_err e = {0};
    const uint64_t seeds[4] = {11, 22, 33, 44};
    gn_backend_params bp = gn_backend_default_params();
    bp.n_threads = 1;
    gn_backend *be = gn_backend_create("cpu", &bp, &e);
    CHECK(be != NULL, "backend: %s", e.msg);
    for (int i = 0; i < 4 && be; i++) {
        snprintf(g_dir[i], sizeof g_dir[i], "%s/m%d", g_root, i);
        gn_make_model_params mp = gn_make_model_default_params();
        mp.arch = "llama";
        mp.dim = 32;
        mp.n_layers = 1;
        mp.ffn_dim = 64;
        mp.init_std = 0.15f;
        mp.seed = seeds[i];
        if (i == 3)
            mp.tok_merges = 200;
        CHECK(gn_make_model(&mp, g_dir[i], &e) == 0, "make model %d: %s", i, e.msg);
        gn_model *m = gn_model_load(g_dir[i], be, NULL, &e);
        CHECK(m != NULL, "load %d: %s", i, e.msg);
        if (m)
            snprintf(g_hash[i], sizeof g_hash[i], "%s", gn_tok_hash(gn_model_tokenizer(m)));
        gn_model_free(m);
    }
    if (be && !gn_t_fail) {
        test_swap(be);
        test_explicit_swap(be);
        test_batch_versions(be);
        test_reply_bound(be);
        test_alloc_failures(be);
        test_shared_backbone(be);
    }
    gn_backend_free(be);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    if (system(cmd)) {
    }
    GN_TEST_MAIN_END();
}
