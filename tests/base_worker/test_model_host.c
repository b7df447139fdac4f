/* test_model_host.c — the step-serving core (base_worker/model_host.h) in
 * process, without sockets: sequence rules (new / unknown / rewind / ahead),
 * per-sequence errors beside successful ones, capacity, release and
 * release_after, idle expiry on an explicit clock, the packed tensor against
 * gn_runner_step; batches of several requests in one forward pass (each
 * request's rows == the same sequence stepped alone, a seq_id stepped twice in
 * one batch refused); sparse rows (candidates == the top-K of the dense row,
 * floor / row_min / tail_lse) and fetches of the kept row (listed ids, full
 * row, ROW_GONE after the next step or a release, TOKEN_RANGE); and
 * allocation-failure loops over gn_host_create, gn_host_step and
 * gn_host_step_batch (a failed step keeps no new sequence and changes no
 * length); the bound on one reply (max_reply_bytes) for steps and fetches. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "gn_alloc.h"
#include "gn_test.h"
#include "model.h"
#include "model_host.h"
#include "model_maker.h"
#include "runner.h"
#include "wire.h"

static gn_model *g_m;
static int g_nout;

typedef struct req_buf {
    Genarm__V1__SeqStep s[8];
    Genarm__V1__SeqStep *p[8];
    gn_wire_step_req r;
} req_buf;

static gn_wire_step_req *mk(req_buf *b, int n, const uint64_t *ids, const uint32_t *pos, int32_t *toks,
                            const int *ntok, gn_dtype dt) {
    for (int i = 0; i < n; i++) {
        Genarm__V1__SeqStep x = GENARM__V1__SEQ_STEP__INIT;
        x.seq_id = ids[i];
        x.start_pos = pos[i];
        x.tokens = toks;
        x.n_tokens = (size_t)ntok[i];
        b->s[i] = x;
        b->p[i] = &b->s[i];
    }
    gn_wire_step_req r = GENARM__V1__STEP_REQUEST__INIT;
    r.seqs = b->p;
    r.n_seqs = (size_t)n;
    r.dtype = gn_wire_dtype_to_proto(dt);
    b->r = r;
    return &b->r;
}

static void test_rules(void) {
    gn_err e = {0};
    gn_host_params hp = gn_host_default_params();
    hp.max_seqs = 3;
    hp.idle_timeout_ms = 1000;
    gn_host *h = gn_host_create(g_m, &hp, &e);
    CHECK(h != NULL, "host: %s", e.msg);
    if (!h)
        return;
    int32_t toks[8] = {5, 6, 7, 8, 9, 10, 11, 12};
    req_buf b;
    gn_wire_step_resp resp = GENARM__V1__STEP_RESPONSE__INIT;

    /* New sequences; the tensor == the runner's rows for the same items. */
    uint64_t ids[3] = {10, 11, 12};
    uint32_t pos0[3] = {0, 0, 0};
    int nt[3] = {4, 2, 1};
    CHECK(gn_host_step(h, mk(&b, 3, ids, pos0, toks, nt, GN_F32), 0, &resp, &e) == 0, "step: %s", e.msg);
    CHECK(resp.n_results == 3 && resp.n_errors == 0 && resp.logprobs->rows == 3 &&
              resp.logprobs->cols == (uint64_t)g_nout,
          "3 results, 3 rows");
    {
        gn_runner_params rp = gn_runner_default_params();
        rp.max_seqs = 3;
        gn_runner *r = gn_runner_create(g_m, &rp, &e);
        gn_seq *s[3];
        gn_step_item it[3];
        for (int i = 0; i < 3; i++) {
            s[i] = gn_seq_create(r, &e);
            gn_step_item x = {s[i], toks, nt[i], 0};
            it[i] = x;
        }
        float *want = malloc(3 * (size_t)g_nout * sizeof(float)), *got = malloc(3 * (size_t)g_nout * sizeof(float));
        CHECK(gn_runner_step(r, it, 3, want, &e) == 0, "ref: %s", e.msg);
        CHECK(gn_wire_unpack_f32(resp.logprobs->data.data, resp.logprobs->data.len, GN_F32, 3 * (size_t)g_nout, got,
                                 &e) == 0 &&
                  memcmp(got, want, 3 * (size_t)g_nout * sizeof(float)) == 0,
              "host tensor == runner rows");
        free(want), free(got);
        for (int i = 0; i < 3; i++) gn_seq_free(s[i]);
        gn_runner_free(r);
    }
    CHECK(gn_host_n_seqs(h) == 3 && gn_host_seq_len(h, 10) == 4 && gn_host_seq_len(h, 99) == -1, "lengths");

    /* Full: a fourth is CAPACITY; the others in the same step still run. */
    uint64_t ids2[2] = {13, 11};
    uint32_t pos2[2] = {0, 2};
    int nt2[2] = {1, 1};
    CHECK(gn_host_step(h, mk(&b, 2, ids2, pos2, toks, nt2, GN_BF16), 100, &resp, &e) == 0, "step 2");
    CHECK(resp.n_results == 1 && resp.results[0]->seq_id == 11 && resp.results[0]->seq_len == 3 &&
              resp.n_errors == 1 && resp.errors[0]->seq_id == 13 &&
              resp.errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_CAPACITY,
          "capacity beside success");
    CHECK(resp.logprobs->dtype == GENARM__V1__DTYPE__DTYPE_BF16 && resp.logprobs->data.len == (size_t)g_nout * 2,
          "bf16 tensor");

    /* Rewind, ahead, unknown (max_seqs = 3 per step). */
    uint64_t ids3[3] = {10, 11, 77};
    uint32_t pos3[3] = {1, 9, 3};
    int nt3[3] = {2, 1, 1};
    req_buf b3;
    CHECK(gn_host_step(h, mk(&b3, 3, ids3, pos3, toks, nt3, GN_F16), 200, &resp, &e) == 0, "step 3");
    CHECK(resp.n_results == 1 && resp.results[0]->seq_id == 10 && resp.results[0]->seq_len == 3,
          "rewind 10 to 1 (+2)");
    CHECK(resp.n_errors == 2 && resp.errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_POS_MISMATCH &&
              resp.errors[1]->code == GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_SEQ,
          "per-sequence errors: %zu", resp.n_errors);
    /* Append, bad token on a new sequence (not kept). */
    uint64_t ids4[2] = {12, 99};
    uint32_t pos4[2] = {1, 0};
    int nt4[2] = {1, 1};
    req_buf b4;
    gn_wire_step_req *r3 = mk(&b4, 2, ids4, pos4, toks, nt4, GN_F16);
    int32_t bad = 100000;
    b4.s[1].tokens = &bad;
    CHECK(gn_host_step(h, r3, 200, &resp, &e) == 0, "step 4");
    CHECK(resp.n_results == 1 && resp.results[0]->seq_id == 12 && resp.results[0]->seq_len == 2 &&
              resp.n_errors == 1 && resp.errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_TOKEN_RANGE &&
              gn_host_seq_len(h, 99) == -1,
          "append beside a bad token");
    CHECK(gn_host_seq_len(h, 11) == 3, "11 unchanged by its error");

    /* Whole-step failure: bad dtype. */
    gn_wire_step_req *r4 = mk(&b, 1, ids, pos0, toks, nt, GN_F32);
    r4->dtype = 0;
    CHECK(gn_host_step(h, r4, 300, &resp, &e) == GENARM__V1__ERROR_CODE__ERROR_BAD_DTYPE, "bad dtype");

    /* Idle: 11 last used at 100, 10 and 12 at 200; timeout 1000. */
    CHECK(gn_host_sweep(h, 1100) == 0, "nothing idle yet");
    CHECK(gn_host_sweep(h, 1101) == 1 && gn_host_seq_len(h, 11) == -1, "11 expired");
    CHECK(gn_host_release(h, (uint64_t[]){10, 10, 55}, 3) == 1, "release counts held ones");
    /* release_after */
    uint64_t id5 = 12;
    uint32_t pos5 = 2;
    int nt5 = 1;
    req_buf b5;
    gn_wire_step_req *r5 = mk(&b5, 1, &id5, &pos5, toks, &nt5, GN_F32);
    b5.s[0].release_after = 1;
    CHECK(gn_host_step(h, r5, 400, &resp, &e) == 0 && resp.n_results == 1 && resp.results[0]->seq_len == 3,
          "last step");
    CHECK(gn_host_n_seqs(h) == 0, "release_after freed it");
    int used, total;
    gn_host_kv_usage(h, &used, &total);
    CHECK(used == 0 && total > 0, "KV blocks returned (%d of %d)", used, total);
    gn_host_free(h);
}

static void test_alloc_failures(void) {
    gn_err e = {0};
    gn_host_params hp = gn_host_default_params();
    hp.max_seqs = 4;
    hp.runner.n_blocks = 64;
    gn_host *h = NULL;
    int fails = 0;
    for (long n = 0; n < 400; n++) {
        gn_alloc_fail_after(n);
        h = gn_host_create(g_m, &hp, &e);
        gn_alloc_fail_after(-1);
        if (h)
            break;
        fails++;
    }
    CHECK(h != NULL && fails > 5, "create survives every allocation failure (%d points)", fails);
    if (!h)
        return;
    int32_t toks[6] = {1, 2, 3, 4, 5, 6};
    uint64_t ids[2] = {1, 2};
    uint32_t pos[2] = {0, 0};
    int nt[2] = {6, 3};
    req_buf b;
    gn_wire_step_resp resp = GENARM__V1__STEP_RESPONSE__INIT;
    int ok = 0;
    fails = 0;
    for (long n = 0; n < 400; n++) {
        gn_alloc_fail_after(n);
        int rc = gn_host_step(h, mk(&b, 2, ids, pos, toks, nt, GN_F16), 0, &resp, &e);
        gn_alloc_fail_after(-1);
        if (rc == 0 && resp.n_errors == 0) {
            ok = resp.n_results == 2 && gn_host_seq_len(h, 1) == 6 && gn_host_seq_len(h, 2) == 3;
            break;
        }
        fails++;
        /* A failed step (or a failed sequence creation) keeps nothing new. */
        if (rc == 0) {
            for (size_t i = 0; i < resp.n_results; i++) gn_host_release(h, &resp.results[i]->seq_id, 1);
        }
        if (gn_host_n_seqs(h) != 0) {
            CHECK(0, "failure at allocation %ld left %d sequences", n, gn_host_n_seqs(h));
            break;
        }
    }
    CHECK(ok && fails > 0, "step survives allocation failures (%d points)", fails);
    gn_host_free(h);
}

/* Reference top-k of a row: largest first, ties by lower id. */
static int cmp_desc(const void *a, const void *b, const float *row) {
    int ia = *(const int *)a, ib = *(const int *)b;
    if (row[ia] != row[ib]) return row[ia] > row[ib] ? -1 : 1;
    return ia < ib ? -1 : 1;
}
static const float *g_sort_row;
static int cmp_ids(const void *a, const void *b) { return cmp_desc(a, b, g_sort_row); }

static void check_sparse(const char *what, const gn_wire_step_resp *resp, const Genarm__V1__SeqResult *r,
                         const float *dense, int k) {
    gn_err e = {0};
    const int32_t *ids;
    const float *vals;
    int32_t si[64];
    float sv[64];
    CHECK(r->n_rows == 0 && r->n_cand == (uint32_t)k, "%s: %u candidates, %u rows", what, r->n_cand, r->n_rows);
    if (gn_wire_sparse_row(resp, r, si, sv, 64, &ids, &vals, &e) != 0) {
        CHECK(0, "%s: sparse row: %s", what, e.msg);
        return;
    }
    int *ord = malloc((size_t)g_nout * sizeof *ord);
    for (int v = 0; v < g_nout; v++) ord[v] = v;
    g_sort_row = dense;
    qsort(ord, (size_t)g_nout, sizeof *ord, cmp_ids);
    int same = 1;
    for (int j = 0; j < k; j++) same &= ids[j] == ord[j] && memcmp(&vals[j], &dense[ord[j]], 4) == 0;
    CHECK(same, "%s: candidates == the top-%d of the dense row (ids, values bit for bit)", what, k);
    float mn = dense[0];
    double tail = 0;
    for (int v = 0; v < g_nout; v++) mn = dense[v] < mn ? dense[v] : mn;
    for (int j = k; j < g_nout; j++) tail += exp((double)dense[ord[j]]);
    CHECK(r->cand_floor == dense[ord[k]] && r->row_min == mn, "%s: floor %g (want %g), row_min %g (want %g)", what,
          r->cand_floor, dense[ord[k]], r->row_min, mn);
    double lse = log(tail);
    CHECK(r->tail_lse >= lse - 1e-6 && r->tail_lse <= lse + 1e-4, "%s: tail_lse %.7f vs exact %.7f", what,
          r->tail_lse, lse);
    free(ord);
}

/* Fetches from h: one sequence, listed ids or the full row. */
static int fetch1(gn_host *h, uint64_t id, uint32_t len, const int32_t *ids, int n_ids, int full,
                  Genarm__V1__RowFetchResult *res, gn_err *e) {
    Genarm__V1__FetchSeq fs = GENARM__V1__FETCH_SEQ__INIT, *fp = &fs;
    fs.seq_id = id;
    fs.seq_len = len;
    fs.ids = (int32_t *)ids;
    fs.n_ids = (size_t)n_ids;
    fs.full_row = full;
    Genarm__V1__RowFetch rf = GENARM__V1__ROW_FETCH__INIT;
    rf.seqs = &fp;
    rf.n_seqs = 1;
    Genarm__V1__RowFetchResult r0 = GENARM__V1__ROW_FETCH_RESULT__INIT;
    *res = r0;
    return gn_host_fetch(h, NULL, &rf, res, e);
}

static void test_batch_sparse_fetch(void) {
    gn_err e = {0};
    gn_host_params hp = gn_host_default_params();
    hp.max_seqs = 8;
    hp.max_batch_seqs = 2; /* smaller than a batch below: the scratch grows */
    gn_host *h = gn_host_create(g_m, &hp, &e);
    CHECK(h != NULL, "host: %s", e.msg);
    if (!h) return;
    int32_t toks[8] = {3, 14, 15, 92, 65, 35, 89, 79};
    /* Alone: the dense rows of sequences 1 (3 tokens) and 2 (5 tokens). */
    float *alone = malloc(2 * (size_t)g_nout * sizeof(float));
    req_buf b;
    gn_wire_step_resp resp = GENARM__V1__STEP_RESPONSE__INIT;
    for (int i = 0; i < 2; i++) {
        uint64_t id = 1 + (uint64_t)i;
        uint32_t pos = 0;
        int nt = 3 + 2 * i;
        CHECK(gn_host_step(h, mk(&b, 1, &id, &pos, toks, &nt, GN_F32), 0, &resp, &e) == 0 && resp.n_results == 1,
              "alone %d: %s", i, e.msg);
        memcpy(alone + (size_t)i * (size_t)g_nout, resp.logprobs->data.data, (size_t)g_nout * sizeof(float));
        CHECK(resp.pass_seqs == 1, "a pass of one");
    }
    gn_host_release(h, (uint64_t[]){1, 2}, 2);
    uint64_t p0, s0;
    gn_host_counters(h, &p0, &s0);

    /* One batch of three requests: [11 dense (3 tok), 12 sparse (5 tok)],
     * [21 dense bf16 (5 tok)], [31 sparse (3 tok), 11 again]. */
    req_buf b1, b2, b3;
    gn_wire_step_req *r1 = mk(&b1, 2, (uint64_t[]){11, 12}, (uint32_t[]){0, 0}, toks, (int[]){3, 5}, GN_F32);
    b1.s[1].top_k = 5;
    gn_wire_step_req *r2 = mk(&b2, 1, (uint64_t[]){21}, (uint32_t[]){0}, toks, (int[]){5}, GN_BF16);
    gn_wire_step_req *r3 = mk(&b3, 2, (uint64_t[]){31, 11}, (uint32_t[]){0, 0}, toks, (int[]){3, 3}, GN_F32);
    b3.s[0].top_k = 7;
    const gn_wire_step_req *reqs[3] = {r1, r2, r3};
    gn_wire_step_resp rs[3] = {GENARM__V1__STEP_RESPONSE__INIT, GENARM__V1__STEP_RESPONSE__INIT,
                               GENARM__V1__STEP_RESPONSE__INIT};
    gn_wire_step_resp *rp[3] = {&rs[0], &rs[1], &rs[2]};
    int codes[3];
    gn_err errs[3];
    gn_host_step_batch(h, NULL, reqs, 3, rp, codes, errs, 10);
    CHECK(codes[0] == 0 && codes[1] == 0 && codes[2] == 0, "batch: %s %s %s", errs[0].msg, errs[1].msg, errs[2].msg);
    uint64_t p1, s1;
    gn_host_counters(h, &p1, &s1);
    CHECK(p1 == p0 + 1 && s1 == s0 + 4, "one pass of 4 sequences (%llu passes, %llu seqs)",
          (unsigned long long)(p1 - p0), (unsigned long long)(s1 - s0));
    for (int i = 0; i < 3; i++) {
        CHECK(rs[i].pass_seqs == 4 && rs[i].compute_us > 0, "request %d: pass_seqs %u", i, rs[i].pass_seqs);
        CHECK(gn_wire_step_resp_check(&rs[i], &e) == 0, "request %d checks: %s", i, e.msg);
    }
    CHECK(rs[0].n_results == 2 && rs[0].results[0]->seq_id == 11 && rs[0].results[0]->n_rows == 1 &&
              rs[0].results[0]->row_offset == 0 && rs[0].results[1]->seq_id == 12 && rs[0].logprobs->rows == 1,
          "request 0: a dense and a sparse result, one row");
    CHECK(memcmp(rs[0].logprobs->data.data, alone, (size_t)g_nout * sizeof(float)) == 0,
          "batched dense row == stepped alone (bit for bit)");
    check_sparse("request 0 sparse", &rs[0], rs[0].results[1], alone + g_nout, 5);
    CHECK(rs[1].n_results == 1 && rs[1].logprobs->rows == 1 && rs[1].logprobs->dtype == GENARM__V1__DTYPE__DTYPE_BF16,
          "request 1: its own dtype");
    {
        float got[2048];
        CHECK(g_nout <= 2048 && gn_wire_unpack_f32(rs[1].logprobs->data.data, rs[1].logprobs->data.len, GN_BF16,
                                                   (size_t)g_nout, got, &e) == 0,
              "bf16 unpack");
        int ok = 1;
        for (int v = 0; v < g_nout && v < 2048; v++)
            ok &= fabsf(got[v] - alone[g_nout + v]) <= fabsf(alone[g_nout + v]) / 128 + 1e-6f;
        CHECK(ok, "request 1's bf16 row == the row alone, rounded");
    }
    CHECK(rs[2].n_results == 1 && rs[2].results[0]->seq_id == 31 && rs[2].n_errors == 1 &&
              rs[2].errors[0]->seq_id == 11 && rs[2].errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST &&
              rs[2].logprobs->rows == 0,
          "request 2: seq 11 stepped twice in one batch refused; 31 sparse");
    check_sparse("request 2 sparse", &rs[2], rs[2].results[0], alone, 7);
    CHECK(gn_host_seq_len(h, 11) == 3, "11 stepped once");

    /* Fetch the kept rows. */
    Genarm__V1__RowFetchResult fr;
    const float *v = NULL;
    float sc[16];
    int32_t ids[4] = {0, 17, (int32_t)g_nout - 1, 5};
    CHECK(fetch1(h, 12, 5, ids, 4, 0, &fr, &e) == 0 && fr.n_results == 1 && fr.n_errors == 0 &&
              gn_wire_fetch_result_check(&fr, &e) == 0 && gn_wire_fetch_values(&fr, fr.results[0], sc, 16, &v, &e) == 0,
          "fetch ids: %s", e.msg);
    int same = v != NULL;
    for (int j = 0; same && j < 4; j++) same = memcmp(&v[j], &alone[g_nout + ids[j]], 4) == 0;
    CHECK(same, "fetched values == the dense row");
    CHECK(fetch1(h, 12, 5, NULL, 0, 1, &fr, &e) == 0 && fr.n_results == 1 && fr.results[0]->n == (uint32_t)g_nout &&
              fr.values.len == (size_t)g_nout * 4 && memcmp(fr.values.data, alone + g_nout, (size_t)g_nout * 4) == 0,
          "full row == the dense row");
    int32_t bad[2] = {1, g_nout};
    CHECK(fetch1(h, 12, 5, bad, 2, 0, &fr, &e) == 0 && fr.n_results == 0 && fr.n_errors == 1 &&
              fr.errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_TOKEN_RANGE,
          "an id past the row: TOKEN_RANGE");
    CHECK(fetch1(h, 12, 4, ids, 1, 0, &fr, &e) == 0 && fr.n_errors == 1 &&
              fr.errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_ROW_GONE,
          "another seq_len: ROW_GONE");
    CHECK(fetch1(h, 21, 5, ids, 1, 0, &fr, &e) == 0 && fr.n_errors == 1 &&
              fr.errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_ROW_GONE,
          "a dense step keeps no row: ROW_GONE");
    /* The next step of 12 (dense) drops its row; a release drops 31's. */
    uint64_t id12 = 12;
    uint32_t pos12 = 5;
    int nt1 = 1;
    CHECK(gn_host_step(h, mk(&b, 1, &id12, &pos12, toks, &nt1, GN_F32), 20, &resp, &e) == 0 && resp.n_results == 1,
          "12 steps on");
    CHECK(fetch1(h, 12, 5, ids, 1, 0, &fr, &e) == 0 && fr.n_errors == 1 &&
              fr.errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_ROW_GONE,
          "after the next step: ROW_GONE");
    CHECK(fetch1(h, 31, 3, ids, 1, 0, &fr, &e) == 0 && fr.n_results == 1, "31's row still held");
    gn_host_release(h, (uint64_t[]){31}, 1);
    CHECK(fetch1(h, 31, 3, ids, 1, 0, &fr, &e) == 0 && fr.n_errors == 1 &&
              fr.errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_ROW_GONE,
          "after release: ROW_GONE");
    /* top_k above the row width lists every token: floor and tail -inf. */
    uint64_t id40 = 40;
    uint32_t pos40 = 0;
    req_buf b4;
    gn_wire_step_req *r4 = mk(&b4, 1, &id40, &pos40, toks, &nt1, GN_F32);
    b4.s[0].top_k = 100000;
    CHECK(gn_host_step(h, r4, 30, &resp, &e) == 0 && resp.n_results == 1 &&
              resp.results[0]->n_cand == (uint32_t)g_nout && isinf(resp.results[0]->cand_floor) &&
              resp.results[0]->cand_floor < 0 && isinf(resp.results[0]->tail_lse),
          "top_k over the width: every token listed");
    free(alone);
    gn_host_free(h);
}

/* A batch whose allocations fail: every request with a sequence fails, no
 * new sequence is kept, held ones keep their lengths. */
static void test_batch_alloc_failures(void) {
    gn_err e = {0};
    gn_host_params hp = gn_host_default_params();
    hp.max_seqs = 6;
    hp.max_batch_seqs = 1;
    hp.runner.n_blocks = 64;
    gn_host *h = gn_host_create(g_m, &hp, &e);
    CHECK(h != NULL, "host: %s", e.msg);
    if (!h) return;
    int32_t toks[6] = {1, 2, 3, 4, 5, 6};
    req_buf b0;
    gn_wire_step_resp resp = GENARM__V1__STEP_RESPONSE__INIT;
    CHECK(gn_host_step(h, mk(&b0, 1, (uint64_t[]){9}, (uint32_t[]){0}, toks, (int[]){2}, GN_F32), 0, &resp, &e) == 0,
          "held sequence");
    int ok = 0, fails = 0;
    for (long n = 0; n < 400; n++) {
        req_buf b1, b2;
        gn_wire_step_req *r1 = mk(&b1, 2, (uint64_t[]){1, 9}, (uint32_t[]){0, 2}, toks, (int[]){4, 1}, GN_F16);
        b1.s[0].top_k = 3;
        gn_wire_step_req *r2 = mk(&b2, 1, (uint64_t[]){2}, (uint32_t[]){0}, toks, (int[]){6}, GN_F32);
        const gn_wire_step_req *reqs[2] = {r1, r2};
        gn_wire_step_resp rs[2] = {GENARM__V1__STEP_RESPONSE__INIT, GENARM__V1__STEP_RESPONSE__INIT};
        gn_wire_step_resp *rp[2] = {&rs[0], &rs[1]};
        int codes[2];
        gn_err errs[2];
        gn_alloc_fail_after(n);
        gn_host_step_batch(h, NULL, reqs, 2, rp, codes, errs, 0);
        gn_alloc_fail_after(-1);
        if (!codes[0] && !codes[1] && rs[0].n_errors == 0 && rs[1].n_errors == 0) {
            ok = rs[0].n_results == 2 && rs[1].n_results == 1 && gn_host_seq_len(h, 9) == 3 &&
                 gn_host_seq_len(h, 1) == 4 && rs[0].results[0]->n_cand == 3;
            break;
        }
        fails++;
        if (codes[0] || codes[1]) {
            if (gn_host_n_seqs(h) != 1 || gn_host_seq_len(h, 9) != 2) {
                CHECK(0, "failed batch (alloc %ld) left %d sequences, 9 at %d", n, gn_host_n_seqs(h),
                      gn_host_seq_len(h, 9));
                break;
            }
        } else { /* a sequence failed alone (its own allocation): undo the others */
            gn_host_release(h, (uint64_t[]){1, 2}, 2);
            if (gn_host_seq_len(h, 9) == 3) gn_host_release(h, (uint64_t[]){9}, 1);
            if (gn_host_seq_len(h, 9) < 0 &&
                gn_host_step(h, mk(&b0, 1, (uint64_t[]){9}, (uint32_t[]){0}, toks, (int[]){2}, GN_F32), 0, &resp,
                             &e) != 0) {
                CHECK(0, "re-create 9: %s", e.msg);
                break;
            }
        }
    }
    CHECK(ok && fails > 3, "batch survives allocation failures (%d points)", fails);
    gn_host_free(h);
}

/* max_reply_bytes: a step or fetch whose reply would carry more values is
 * ERROR_TOO_LARGE before any work (no pass, no sequence kept); a reply within
 * it is served, in the same batch as a refused one. */
static void test_reply_bound(void) {
    gn_err e = {0};
    gn_host_params hp = gn_host_default_params();
    hp.max_seqs = 8;
    hp.max_reply_bytes = 2 * (size_t)g_nout * sizeof(float); /* two F32 rows */
    gn_host *h = gn_host_create(g_m, &hp, &e);
    CHECK(h != NULL, "host: %s", e.msg);
    if (!h) return;
    CHECK(gn_host_max_reply_bytes(h) == hp.max_reply_bytes, "limit kept");
    int32_t toks[8] = {3, 14, 15, 92, 65, 35, 89, 79};
    req_buf b;
    gn_wire_step_resp resp = GENARM__V1__STEP_RESPONSE__INIT;
    uint64_t p0, s0, p1, s1;
    gn_host_counters(h, &p0, &s0);

    /* all_logits over 3 tokens: 3 F32 rows > 2. */
    gn_wire_step_req *r = mk(&b, 1, (uint64_t[]){1}, (uint32_t[]){0}, toks, (int[]){3}, GN_F32);
    b.s[0].all_logits = 1;
    CHECK(gn_host_step(h, r, 0, &resp, &e) == GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE &&
              strstr(e.msg, "max_reply_bytes") && strstr(e.msg, "exceeds"),
          "3 rows over a 2-row bound: TOO_LARGE (%s)", e.msg);
    char want[64];
    snprintf(want, sizeof want, "%zu bytes", 3 * (size_t)g_nout * sizeof(float));
    CHECK(strstr(e.msg, want) != NULL, "the message says the size: %s", e.msg);
    snprintf(want, sizeof want, "limit of %zu bytes", hp.max_reply_bytes);
    CHECK(strstr(e.msg, want) != NULL, "the message says the limit: %s", e.msg);
    gn_host_counters(h, &p1, &s1);
    CHECK(p1 == p0 && gn_host_seq_len(h, 1) == -1 && gn_host_n_seqs(h) == 0, "refused before the pass: nothing kept");

    /* The same 3 rows in F16 are 1.5 F32 rows: served. */
    r = mk(&b, 1, (uint64_t[]){1}, (uint32_t[]){0}, toks, (int[]){3}, GN_F16);
    b.s[0].all_logits = 1;
    CHECK(gn_host_step(h, r, 0, &resp, &e) == 0 && resp.n_results == 1 && resp.logprobs->rows == 3,
          "3 f16 rows within the bound: %s", e.msg);
    gn_host_release(h, (uint64_t[]){1}, 1);

    /* A batch: three dense sequences (3 rows) refused, two sparse ones and a
     * dense one served in one pass. */
    req_buf b1, b2;
    gn_wire_step_req *big = mk(&b1, 3, (uint64_t[]){11, 12, 13}, (uint32_t[]){0, 0, 0}, toks, (int[]){2, 2, 2}, GN_F32);
    gn_wire_step_req *ok = mk(&b2, 3, (uint64_t[]){21, 22, 23}, (uint32_t[]){0, 0, 0}, toks, (int[]){2, 2, 2}, GN_F32);
    b2.s[0].top_k = 4;
    b2.s[1].top_k = 4;
    const gn_wire_step_req *reqs[2] = {big, ok};
    gn_wire_step_resp rs[2] = {GENARM__V1__STEP_RESPONSE__INIT, GENARM__V1__STEP_RESPONSE__INIT};
    gn_wire_step_resp *rp[2] = {&rs[0], &rs[1]};
    int codes[2];
    gn_err errs[2];
    gn_host_counters(h, &p0, &s0);
    gn_host_step_batch(h, NULL, reqs, 2, rp, codes, errs, 0);
    gn_host_counters(h, &p1, &s1);
    CHECK(codes[0] == GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE && codes[1] == 0 && rs[1].n_results == 3 &&
              p1 - p0 == 1 && s1 - s0 == 3 && gn_host_seq_len(h, 11) == -1 && gn_host_seq_len(h, 21) == 2,
          "batch: the big request refused, the other served (%d %d: %s)", codes[0], codes[1], errs[0].msg);

    /* Fetches: three full rows > 2 (refused whatever rows are held), one
     * full row served. */
    Genarm__V1__FetchSeq fs[3], *fp[3];
    for (int i = 0; i < 3; i++) {
        Genarm__V1__FetchSeq f0 = GENARM__V1__FETCH_SEQ__INIT;
        fs[i] = f0;
        fs[i].seq_id = 21 + (uint64_t)(i % 2);
        fs[i].seq_len = 2;
        fs[i].full_row = 1;
        fp[i] = &fs[i];
    }
    Genarm__V1__RowFetch rf = GENARM__V1__ROW_FETCH__INIT;
    rf.seqs = fp;
    rf.n_seqs = 3;
    Genarm__V1__RowFetchResult fr = GENARM__V1__ROW_FETCH_RESULT__INIT;
    CHECK(gn_host_fetch(h, NULL, &rf, &fr, &e) == GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE &&
              strstr(e.msg, "max_reply_bytes"),
          "fetch of 3 full rows: TOO_LARGE (%s)", e.msg);
    CHECK(fetch1(h, 21, 2, NULL, 0, 1, &fr, &e) == 0 && fr.n_results == 1 && fr.results[0]->n == (uint32_t)g_nout,
          "fetch of 1 full row: %s", e.msg);
    gn_host_free(h);
}

int main(void) {
    char root[] = "/tmp/gn_test_host_XXXXXX";
    if (!mkdtemp(root)) {
        CHECK(0, "mkdtemp");
        GN_TEST_MAIN_END();
    }
    char dir[256];
    snprintf(dir, sizeof dir, "%s/model", root);
    gn_make_model_params mp = gn_make_model_default_params();
    mp.arch = "qwen2";
    mp.init_std = 0.15f;
    gn_err e = {0};
    CHECK(gn_make_model(&mp, dir, &e) == 0, "make: %s", e.msg);
    gn_backend_params bp = gn_backend_default_params();
    bp.n_threads = 1;
    gn_backend *be = gn_backend_create("cpu-ref", &bp, &e);
    gn_model_params lp = gn_model_default_params();
    g_m = be ? gn_model_load(dir, be, &lp, &e) : NULL;
    CHECK(g_m != NULL, "load: %s", e.msg);
    if (g_m) {
        g_nout = gn_model_n_out(g_m);
        test_rules();
        test_batch_sparse_fetch();
        test_reply_bound();
        test_alloc_failures();
        test_batch_alloc_failures();
    }
    gn_model_free(g_m);
    gn_backend_free(be);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd)) {
    }
    GN_TEST_MAIN_END();
}
