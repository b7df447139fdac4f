/* fuzz_wire.c — fuzz target for everything a worker or client does with the
 * bytes of one frame: gn_wire_decode, then the request/response validators
 * (StepRequest, StepResponse with sparse candidates, RowFetch,
 * RowFetchResult), tensor unpacking of a response, the readers of sparse rows
 * and fetched values, and a re-encode of whatever decoded.
 *
 * Built two ways: with -DGN_FUZZ=ON and clang, a libFuzzer binary
 * (fuzz_wire); always, a replay test (test_fuzz_wire_replay) that mutates
 * seed frames of every message type deterministically (bit flips,
 * truncations, insertions, overwrites with varint-like bytes) and replays
 * each through the target, so CI (and the ASan+UBSan pass) runs it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gn_alloc.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    gn_wire_limits lim = gn_wire_default_limits();
    lim.max_frame_bytes = 1 << 20;
    gn_wire_env *env = NULL;
    int code;
    uint64_t rid;
    gn_err e = {0};
    if (gn_wire_decode(data, size, &lim, &env, &code, &rid, &e) != 0)
        return 0;
    int32_t ids[64];
    float vals[64];
    if (env->body_case == GENARM__V1__ENVELOPE__BODY_STEP) {
        (void)gn_wire_step_check(env->step, &lim, &code, &e);
    } else if (env->body_case == GENARM__V1__ENVELOPE__BODY_FETCH) {
        (void)gn_wire_fetch_check(env->fetch, &lim, &code, &e);
    } else if (env->body_case == GENARM__V1__ENVELOPE__BODY_FETCH_RESULT) {
        /* The reader checks ranges itself: run it on every result either way. */
        (void)gn_wire_fetch_result_check(env->fetch_result, &e);
        for (size_t i = 0; i < env->fetch_result->n_results; i++) {
            const float *v = NULL;
            if (gn_wire_fetch_values(env->fetch_result, env->fetch_result->results[i], vals, 64, &v, &e) == 0 &&
                env->fetch_result->results[i]->n)
                vals[0] = v[env->fetch_result->results[i]->n - 1];
        }
    } else if (env->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT) {
        const gn_wire_step_resp *r = env->step_result;
        for (size_t i = 0; i < r->n_results; i++) {
            const int32_t *gi = NULL;
            const float *gv = NULL;
            if (r->results[i]->n_cand && gn_wire_sparse_row(r, r->results[i], ids, vals, 64, &gi, &gv, &e) == 0)
                vals[0] = gv[r->results[i]->n_cand - 1] + (float)gi[r->results[i]->n_cand - 1];
        }
        if (gn_wire_step_resp_check(env->step_result, &e) == 0 && env->step_result->logprobs) {
            gn_dtype dt;
            const Genarm__V1__Tensor *t = env->step_result->logprobs;
            if (gn_wire_tensor_check(t, &dt, &e) == 0 && t->data.len <= (1u << 20)) {
                size_t n = t->data.len / gn_dtype_size(dt);
                float *f = gn_malloc(n * sizeof(float) + 1);
                if (f) {
                    (void)gn_wire_unpack_f32(t->data.data, t->data.len, dt, n, f, &e);
                    gn_free(f);
                }
            }
        }
    }
    uint8_t *out;
    size_t len;
    if (gn_wire_encode(env, &out, &len, &e) == 0)
        gn_free(out);
    gn_wire_env_free(env);
    return 0;
}

#ifdef GN_FUZZ_REPLAY
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng % n);
}

static int add_seed(uint8_t **seeds, size_t *lens, int n, const gn_wire_env *env) {
    gn_err e = {0};
    if (gn_wire_encode(env, &seeds[n], &lens[n], &e) != 0) {
        fprintf(stderr, "FAIL encode seed %d: %s\n", n, e.msg);
        exit(1);
    }
    return n + 1;
}

int main(void) {
    uint8_t *seeds[12];
    size_t lens[12];
    int ns = 0;
    gn_wire_env env;

    int32_t toks[6] = {1, 300, 2, 511, 0, 17};
    Genarm__V1__SeqStep s1 = GENARM__V1__SEQ_STEP__INIT, s2 = GENARM__V1__SEQ_STEP__INIT;
    s1.seq_id = 1;
    s1.tokens = toks;
    s1.n_tokens = 6;
    s1.all_logits = 1;
    s2.seq_id = 2;
    s2.start_pos = 9;
    s2.tokens = toks + 3;
    s2.n_tokens = 1;
    Genarm__V1__SeqStep *sp[2] = {&s1, &s2};
    Genarm__V1__ModelRef mr = GENARM__V1__MODEL_REF__INIT;
    mr.name = "arm";
    mr.version = 2;
    gn_wire_step_req req = GENARM__V1__STEP_REQUEST__INIT;
    req.model = &mr;
    req.seqs = sp;
    req.n_seqs = 2;
    req.dtype = GENARM__V1__DTYPE__DTYPE_F16;
    gn_wire_env_init(&env, 11);
    env.body_case = GENARM__V1__ENVELOPE__BODY_STEP;
    env.step = &req;
    ns = add_seed(seeds, lens, ns, &env);

    uint8_t data[7 * 3 * 2];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)(i * 29);
    Genarm__V1__Tensor t = GENARM__V1__TENSOR__INIT;
    t.dtype = GENARM__V1__DTYPE__DTYPE_BF16;
    t.rows = 7;
    t.cols = 3;
    t.data.data = data;
    t.data.len = sizeof data;
    Genarm__V1__SeqResult r1 = GENARM__V1__SEQ_RESULT__INIT, r2 = GENARM__V1__SEQ_RESULT__INIT;
    r1.seq_id = 1;
    r1.n_rows = 6;
    r1.seq_len = 6;
    r2.seq_id = 2;
    r2.row_offset = 6;
    r2.n_rows = 1;
    Genarm__V1__SeqResult *rp[2] = {&r1, &r2};
    Genarm__V1__Error er = GENARM__V1__ERROR__INIT;
    er.code = GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_SEQ;
    er.message = "not held";
    er.seq_id = 3;
    er.has_seq = 1;
    Genarm__V1__Error *ep[1] = {&er};
    gn_wire_step_resp resp = GENARM__V1__STEP_RESPONSE__INIT;
    resp.model = &mr;
    resp.results = rp;
    resp.n_results = 2;
    resp.logprobs = &t;
    resp.errors = ep;
    resp.n_errors = 1;
    gn_wire_env_init(&env, 11);
    env.body_case = GENARM__V1__ENVELOPE__BODY_STEP_RESULT;
    env.step_result = &resp;
    ns = add_seed(seeds, lens, ns, &env);

    uint64_t ids[3] = {1, 2, 1ull << 60};
    Genarm__V1__Release rel = GENARM__V1__RELEASE__INIT;
    rel.seq_ids = ids;
    rel.n_seq_ids = 3;
    gn_wire_env_init(&env, 12);
    env.body_case = GENARM__V1__ENVELOPE__BODY_RELEASE;
    env.release = &rel;
    ns = add_seed(seeds, lens, ns, &env);

    Genarm__V1__Heartbeat hb = GENARM__V1__HEARTBEAT__INIT;
    Genarm__V1__ModelRef *mp[1] = {&mr};
    hb.worker_id = "w1";
    hb.unix_ms = 1700000000000ull;
    hb.models = mp;
    hb.n_models = 1;
    gn_wire_env_init(&env, 13);
    env.body_case = GENARM__V1__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    ns = add_seed(seeds, lens, ns, &env);

    Genarm__V1__LoadModel lm = GENARM__V1__LOAD_MODEL__INIT;
    lm.model = &mr;
    lm.path = "/models/arm";
    lm.lora_path = "";
    gn_wire_env_init(&env, 14);
    env.body_case = GENARM__V1__ENVELOPE__BODY_LOAD;
    env.load = &lm;
    ns = add_seed(seeds, lens, ns, &env);

    /* A response with sparse rows (and one dense row). */
    uint8_t cid[4 * 5], cval[4 * 5];
    for (size_t i = 0; i < sizeof cid; i++) {
        cid[i] = (uint8_t)(i % 4 == 0 ? i : 0);
        cval[i] = (uint8_t)(i % 4 == 3 ? 0xbf : i);
    }
    Genarm__V1__SeqResult r3 = GENARM__V1__SEQ_RESULT__INIT, r4 = GENARM__V1__SEQ_RESULT__INIT;
    r3.seq_id = 4;
    r3.n_cand = 3;
    r3.cand_floor = -2.0f;
    r3.row_min = -30.0f;
    r3.tail_lse = -1.0f;
    r4.seq_id = 5;
    r4.n_cand = 2;
    r4.cand_offset = 3;
    Genarm__V1__SeqResult *rp2[3] = {&r3, &r2, &r4};
    r2.row_offset = 0;
    gn_wire_step_resp sresp = GENARM__V1__STEP_RESPONSE__INIT;
    sresp.results = rp2;
    sresp.n_results = 3;
    t.rows = 1;
    t.data.len = 3 * 2;
    sresp.logprobs = &t;
    sresp.cand_ids.data = cid;
    sresp.cand_ids.len = sizeof cid;
    sresp.cand_values.data = cval;
    sresp.cand_values.len = sizeof cval;
    sresp.pass_seqs = 9;
    gn_wire_env_init(&env, 15);
    env.body_case = GENARM__V1__ENVELOPE__BODY_STEP_RESULT;
    env.step_result = &sresp;
    ns = add_seed(seeds, lens, ns, &env);

    /* A row fetch and its result. */
    int32_t fids[3] = {5, 0, 511};
    Genarm__V1__FetchSeq f1 = GENARM__V1__FETCH_SEQ__INIT, f2 = GENARM__V1__FETCH_SEQ__INIT, *fp[2] = {&f1, &f2};
    f1.seq_id = 4;
    f1.seq_len = 12;
    f1.ids = fids;
    f1.n_ids = 3;
    f2.seq_id = 5;
    f2.seq_len = 3;
    f2.full_row = 1;
    Genarm__V1__RowFetch rf = GENARM__V1__ROW_FETCH__INIT;
    rf.model = &mr;
    rf.seqs = fp;
    rf.n_seqs = 2;
    gn_wire_env_init(&env, 16);
    env.body_case = GENARM__V1__ENVELOPE__BODY_FETCH;
    env.fetch = &rf;
    ns = add_seed(seeds, lens, ns, &env);

    Genarm__V1__FetchResult q1 = GENARM__V1__FETCH_RESULT__INIT, q2 = GENARM__V1__FETCH_RESULT__INIT, *qp[2] = {&q1, &q2};
    q1.seq_id = 4;
    q1.n = 3;
    q2.seq_id = 5;
    q2.offset = 3;
    q2.n = 2;
    Genarm__V1__RowFetchResult fres = GENARM__V1__ROW_FETCH_RESULT__INIT;
    fres.results = qp;
    fres.n_results = 2;
    fres.values.data = cval;
    fres.values.len = sizeof cval;
    Genarm__V1__Error gone = GENARM__V1__ERROR__INIT;
    gone.code = GENARM__V1__ERROR_CODE__ERROR_ROW_GONE;
    gone.message = "gone";
    gone.seq_id = 6;
    gone.has_seq = 1;
    Genarm__V1__Error *gp[1] = {&gone};
    fres.errors = gp;
    fres.n_errors = 1;
    gn_wire_env_init(&env, 17);
    env.body_case = GENARM__V1__ENVELOPE__BODY_FETCH_RESULT;
    env.fetch_result = &fres;
    ns = add_seed(seeds, lens, ns, &env);

    long runs = 0;
    uint8_t buf[512];
    for (int s = 0; s < ns; s++) {
        LLVMFuzzerTestOneInput(seeds[s], lens[s]);
        runs++;
        for (int it = 0; it < 6000; it++) {
            size_t n = lens[s];
            memcpy(buf, seeds[s], n);
            int muts = 1 + (int)rnd(4);
            for (int m = 0; m < muts; m++) {
                switch (rnd(5)) {
                case 0: if (n) buf[rnd((uint32_t)n)] ^= (uint8_t)(1u << rnd(8)); break;
                case 1: if (n) n = rnd((uint32_t)n); break;
                case 2: if (n) buf[rnd((uint32_t)n)] = (uint8_t)(rnd(2) ? 0xff : 0x80); break;
                case 3:
                    if (n + 1 < sizeof buf) {
                        size_t at = rnd((uint32_t)n + 1);
                        memmove(buf + at + 1, buf + at, n - at);
                        buf[at] = (uint8_t)rnd(256);
                        n++;
                    }
                    break;
                default: if (n) buf[rnd((uint32_t)n)] = (uint8_t)rnd(256); break;
                }
            }
            LLVMFuzzerTestOneInput(buf, n);
            runs++;
        }
        gn_free(seeds[s]);
    }
    /* Reaching here without a crash or sanitizer report is the assertion. */
    printf("%ld passed, 0 failed\n", runs);
    return 0;
}
#endif
