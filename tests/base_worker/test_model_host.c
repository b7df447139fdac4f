/* test_model_host.c — the step-serving core (base_worker/model_host.h) in
 * process, without sockets: sequence rules (new / unknown / rewind / ahead),
 * per-sequence errors beside successful ones, capacity, release and
 * release_after, idle expiry on an explicit clock, the packed tensor against
 * gn_runner_step, and allocation-failure loops over gn_host_create and
 * gn_host_step (a failed step keeps no new sequence and changes no length). */
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
        test_alloc_failures();
    }
    gn_model_free(g_m);
    gn_backend_free(be);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd)) {
    }
    GN_TEST_MAIN_END();
}
