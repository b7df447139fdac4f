/* test_wire.c — the pure half of the data plane (wire/wire.h): tensor
 * packing to little-endian fp32/fp16/bf16 bytes and back, shape checks that
 * never trust a claimed size, envelope encode/decode with version and body
 * validation, StepRequest/StepResponse validation (sparse candidates
 * included), RowFetch/RowFetchResult validation and the readers of sparse
 * rows and fetched values (in place and converted), every prefix of a valid
 * frame, hand-made frames with huge claimed lengths, and allocation-failure
 * loops over decode and encode. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gn_alloc.h"
#include "gn_half.h"
#include "gn_test.h"
#include "wire.h"

static uint64_t g_rng = 99;
static float rand_f(void) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(g_rng >> 11) / 9007199254740992.0 * 40.0 - 30.0); /* [-30, 10) */
}

static void test_dtypes(void) {
    gn_dtype d;
    CHECK(gn_wire_dtype_from_proto(GENARM__V1__DTYPE__DTYPE_F32, &d) == 0 && d == GN_F32, "f32");
    CHECK(gn_wire_dtype_from_proto(GENARM__V1__DTYPE__DTYPE_F16, &d) == 0 && d == GN_F16, "f16");
    CHECK(gn_wire_dtype_from_proto(GENARM__V1__DTYPE__DTYPE_BF16, &d) == 0 && d == GN_BF16, "bf16");
    CHECK(gn_wire_dtype_from_proto(GENARM__V1__DTYPE__DTYPE_UNSPECIFIED, &d) == GN_EINVAL, "unspec");
    CHECK(gn_wire_dtype_from_proto(4, &d) == GN_EINVAL, "unknown 4");
    CHECK(gn_wire_dtype_from_proto(-1, &d) == GN_EINVAL, "unknown -1");
    for (int t = 0; t < 3; t++) {
        CHECK(gn_wire_dtype_from_proto(gn_wire_dtype_to_proto((gn_dtype)t), &d) == 0 && d == (gn_dtype)t,
              "round trip %d", t);
    }
    size_t n;
    CHECK(gn_wire_tensor_nbytes(GN_F16, 3, 5, &n) == 0 && n == 30, "nbytes 3x5 f16 = %zu", n);
    CHECK(gn_wire_tensor_nbytes(GN_F32, 0, 5, &n) == 0 && n == 0, "nbytes empty");
    CHECK(gn_wire_tensor_nbytes(GN_F32, 1ull << 40, 1ull << 30, &n) == GN_ERANGE, "overflow rows*cols");
    CHECK(gn_wire_tensor_nbytes(GN_F32, 1ull << 31, 1ull << 31, &n) == GN_ERANGE, "overflow *4");
    CHECK(gn_wire_tensor_nbytes(GN_F32, UINT64_MAX, 1, &n) == GN_ERANGE, "overflow u64 max");
}

static void test_packing(void) {
    /* Exact byte layout: little-endian whatever the host. */
    float v[3] = {1.0f, -2.0f, 0.5f};
    uint8_t b[12];
    gn_err e = {0};
    CHECK(gn_wire_pack_f32(v, 3, GN_F32, b, sizeof b, &e) == 0, "pack f32");
    static const uint8_t want32[12] = {0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0, 0, 0, 0, 0x3f};
    CHECK(memcmp(b, want32, 12) == 0, "f32 bytes");
    CHECK(gn_wire_pack_f32(v, 3, GN_F16, b, 6, &e) == 0, "pack f16");
    static const uint8_t want16[6] = {0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38};
    CHECK(memcmp(b, want16, 6) == 0, "f16 bytes %02x %02x", b[0], b[1]);
    CHECK(gn_wire_pack_f32(v, 3, GN_BF16, b, 6, &e) == 0, "pack bf16");
    static const uint8_t wantbf[6] = {0x80, 0x3f, 0x00, 0xc0, 0x00, 0x3f};
    CHECK(memcmp(b, wantbf, 6) == 0, "bf16 bytes");
    /* gn_wire_le32_write: the same bytes for floats and int32, in place too. */
    uint8_t c[12];
    gn_wire_le32_write(v, 3, c);
    CHECK(memcmp(c, want32, 12) == 0, "le32_write: f32 bytes");
    int32_t iv[2] = {0x01020304, -2}, iv2[2];
    static const uint8_t wanti[8] = {4, 3, 2, 1, 0xfe, 0xff, 0xff, 0xff};
    gn_wire_le32_write(iv, 2, c);
    memcpy(iv2, iv, sizeof iv);
    gn_wire_le32_write(iv2, 2, iv2);
    CHECK(memcmp(c, wanti, 8) == 0 && memcmp(iv2, wanti, 8) == 0, "le32_write: int32 bytes, in place too");
    CHECK(gn_wire_pack_f32(v, 3, GN_F32, b, 11, &e) == GN_ERANGE, "pack: dst too small");
    CHECK(gn_wire_pack_f32(v, SIZE_MAX / 2, GN_F32, b, sizeof b, &e) == GN_ERANGE, "pack: overflow");

    /* Round trips: exact for f32; for f16/bf16 the same rounding as gn_half.h. */
    enum { N = 4099 };
    float *src = malloc(N * sizeof(float)), *back = malloc(N * sizeof(float));
    float *want = malloc(N * sizeof(float));
    uint8_t *buf = malloc(N * 4);
    for (int i = 0; i < N; i++) src[i] = rand_f();
    src[0] = -INFINITY; /* masked log-prob */
    src[1] = 0.0f;
    src[2] = -1e-30f;   /* underflows in fp16 */
    src[3] = -70000.0f; /* overflows fp16 to -inf */
    for (int t = 0; t < 3; t++) {
        gn_dtype dt = (gn_dtype)t;
        size_t nb = N * gn_dtype_size(dt);
        CHECK(gn_wire_pack_f32(src, N, dt, buf, nb, &e) == 0, "pack %d: %s", t, e.msg);
        CHECK(gn_wire_unpack_f32(buf, nb, dt, N, back, &e) == 0, "unpack %d: %s", t, e.msg);
        for (int i = 0; i < N; i++)
            want[i] = dt == GN_F32 ? src[i]
                      : dt == GN_F16 ? gn_f16_to_f32(gn_f32_to_f16(src[i]))
                                     : gn_bf16_to_f32(gn_f32_to_bf16(src[i]));
        CHECK(memcmp(back, want, N * sizeof(float)) == 0, "round trip %s bit-exact", gn_dtype_name(dt));
        if (dt != GN_F32) /* and within half an ulp of the original (finite, normal range) */
            gn_t_close(dt == GN_F16 ? "f16 rounding" : "bf16 rounding", back + 4, src + 4, N - 4, 0,
                       dt == GN_F16 ? 1.0f / 2048 : 1.0f / 256);
        CHECK(gn_wire_unpack_f32(buf, nb - 1, dt, N, back, &e) == GN_EFORMAT, "unpack short %d", t);
        CHECK(gn_wire_unpack_f32(buf, nb, dt, N - 1, back, &e) == GN_EFORMAT, "unpack long %d", t);
    }
    CHECK(isinf(back[0]) && back[0] < 0, "-inf survives bf16");
    free(src), free(back), free(want), free(buf);
}

static void test_tensor_check(void) {
    gn_err e = {0};
    gn_dtype dt;
    uint8_t data[24] = {0};
    Genarm__V1__Tensor t = GENARM__V1__TENSOR__INIT;
    t.dtype = GENARM__V1__DTYPE__DTYPE_F16;
    t.rows = 3;
    t.cols = 4;
    t.data.data = data;
    t.data.len = 24;
    CHECK(gn_wire_tensor_check(&t, &dt, &e) == 0 && dt == GN_F16, "good tensor: %s", e.msg);
    t.data.len = 23;
    CHECK(gn_wire_tensor_check(&t, &dt, &e) == GN_EFORMAT, "short data");
    t.data.len = 24;
    t.rows = 1ull << 62;
    CHECK(gn_wire_tensor_check(&t, &dt, &e) == GN_EFORMAT, "huge claimed rows: %s", e.msg);
    t.rows = 3;
    t.dtype = 7;
    CHECK(gn_wire_tensor_check(&t, &dt, &e) == GN_EINVAL, "bad dtype");
    CHECK(gn_wire_tensor_check(NULL, &dt, &e) == GN_EFORMAT, "missing tensor");
}

/* A rich step envelope (3 sequences) serialized into *buf. */
static void make_step_frame(uint8_t **buf, size_t *len, uint32_t version) {
    static int32_t toks[3][5] = {{1, 2, 3, 4, 5}, {7}, {9, 8}};
    Genarm__V1__SeqStep s[3];
    Genarm__V1__SeqStep *sp[3];
    for (int i = 0; i < 3; i++) {
        Genarm__V1__SeqStep x = GENARM__V1__SEQ_STEP__INIT;
        x.seq_id = 1000 + (uint64_t)i;
        x.start_pos = (uint32_t)i;
        x.tokens = toks[i];
        x.n_tokens = i == 0 ? 5 : (size_t)i;
        x.all_logits = i == 0;
        x.release_after = i == 2;
        s[i] = x;
        sp[i] = &s[i];
    }
    Genarm__V1__ModelRef mr = GENARM__V1__MODEL_REF__INIT;
    mr.name = "helpful";
    mr.version = 3;
    gn_wire_step_req req = GENARM__V1__STEP_REQUEST__INIT;
    req.model = &mr;
    req.n_seqs = 3;
    req.seqs = sp;
    req.dtype = GENARM__V1__DTYPE__DTYPE_BF16;
    gn_wire_env env;
    gn_wire_env_init(&env, 42);
    env.protocol_version = version;
    env.body_case = GENARM__V1__ENVELOPE__BODY_STEP;
    env.step = &req;
    gn_err e = {0};
    int rc = gn_wire_encode(&env, buf, len, &e);
    CHECK(rc == 0, "encode: %s", e.msg);
}

static void test_envelope(void) {
    gn_err e = {0};
    uint8_t *buf;
    size_t len;
    make_step_frame(&buf, &len, GN_WIRE_PROTOCOL_VERSION);
    gn_wire_env *env = NULL;
    int code = -1;
    uint64_t rid = 0;
    CHECK(gn_wire_decode(buf, len, NULL, &env, &code, &rid, &e) == 0, "decode: %s", e.msg);
    CHECK(env && code == 0 && rid == 42, "decode result code %d rid %llu", code, (unsigned long long)rid);
    if (env) {
        CHECK(env->body_case == GENARM__V1__ENVELOPE__BODY_STEP, "body");
        const gn_wire_step_req *r = env->step;
        CHECK(r->n_seqs == 3 && r->seqs[0]->n_tokens == 5 && r->seqs[0]->tokens[4] == 5 &&
                  r->seqs[2]->tokens[1] == 8 && r->seqs[0]->all_logits && r->seqs[2]->release_after &&
                  r->seqs[1]->start_pos == 1 && r->seqs[2]->seq_id == 1002,
              "fields survive");
        CHECK(!strcmp(r->model->name, "helpful") && r->model->version == 3, "model ref");
        CHECK(gn_wire_step_check(r, NULL, &code, &e) == 0, "valid step: %s", e.msg);
        gn_wire_env_free(env);
    }

    /* Limits. */
    gn_wire_limits lim = gn_wire_default_limits();
    lim.max_frame_bytes = len - 1;
    CHECK(gn_wire_decode(buf, len, &lim, &env, &code, &rid, &e) == GN_ERANGE && !env &&
              code == GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE,
          "frame over the limit");
    CHECK(gn_wire_decode(buf, 0, NULL, &env, &code, &rid, &e) == GN_EFORMAT &&
              code == GENARM__V1__ERROR_CODE__ERROR_BAD_FRAME,
          "empty frame");

    /* Every strict prefix either fails cleanly or decodes to a valid envelope
     * (protobuf has no end marker: a cut at a field boundary is a smaller
     * message). None may crash or leak (run under ASan). */
    int failed = 0;
    for (size_t k = 1; k < len; k++) {
        int rc = gn_wire_decode(buf, k, NULL, &env, &code, &rid, &e);
        if (rc == 0) {
            if (env->body_case == GENARM__V1__ENVELOPE__BODY_STEP)
                (void)gn_wire_step_check(env->step, NULL, &code, &e);
            gn_wire_env_free(env);
        } else {
            CHECK(env == NULL && code > 0, "failed prefix %zu leaves no envelope", k);
            failed++;
        }
    }
    CHECK(failed >= (int)len / 2, "most prefixes fail (%d of %zu)", failed, len - 1);
    /* Flipping bytes: never crashes. */
    for (size_t k = 0; k < len; k++) {
        uint8_t *c = malloc(len);
        memcpy(c, buf, len);
        c[k] ^= 0xff;
        if (gn_wire_decode(c, len, NULL, &env, &code, &rid, &e) == 0)
            gn_wire_env_free(env);
        free(c);
    }
    gn_free(buf);

    /* Wrong versions: the request id is still reported, for the error reply. */
    make_step_frame(&buf, &len, 0);
    CHECK(gn_wire_decode(buf, len, NULL, &env, &code, &rid, &e) == GN_EFORMAT && !env &&
              code == GENARM__V1__ERROR_CODE__ERROR_BAD_VERSION && rid == 42,
          "version 0: code %d", code);
    gn_free(buf);
    make_step_frame(&buf, &len, 2);
    CHECK(gn_wire_decode(buf, len, NULL, &env, &code, &rid, &e) == GN_EFORMAT &&
              code == GENARM__V1__ERROR_CODE__ERROR_BAD_VERSION,
          "version 2");
    gn_free(buf);

    /* No body. */
    gn_wire_env empty;
    gn_wire_env_init(&empty, 5);
    CHECK(gn_wire_encode(&empty, &buf, &len, &e) == 0, "encode empty");
    CHECK(gn_wire_decode(buf, len, NULL, &env, &code, &rid, &e) == GN_EFORMAT &&
              code == GENARM__V1__ERROR_CODE__ERROR_BAD_FRAME && rid == 5,
          "no body");
    gn_free(buf);

    /* Hand-made frames claiming huge lengths. */
    /* version=1, request_id=7, field 10 (step) length-delimited with length 2^40. */
    static const uint8_t huge_msg[] = {0x08, 0x01, 0x10, 0x07, 0x52, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 0x0a};
    CHECK(gn_wire_decode(huge_msg, sizeof huge_msg, NULL, &env, &code, &rid, &e) == GN_EFORMAT && !env &&
              code == GENARM__V1__ERROR_CODE__ERROR_BAD_FRAME,
          "claimed 2^40-byte submessage");
    /* A step whose packed tokens field claims 2^31 bytes inside a 20-byte frame. */
    static const uint8_t huge_tok[] = {0x08, 0x01, 0x52, 0x0a, 0x12, 0x08, 0x08, 0x01,
                                       0x1a, 0x80, 0x80, 0x80, 0x80, 0x08};
    CHECK(gn_wire_decode(huge_tok, sizeof huge_tok, NULL, &env, &code, &rid, &e) == GN_EFORMAT && !env,
          "claimed 2^31-byte token array");
    /* An over-long varint (11 bytes). */
    static const uint8_t bad_varint[] = {0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    CHECK(gn_wire_decode(bad_varint, sizeof bad_varint, NULL, &env, &code, &rid, &e) == GN_EFORMAT,
          "11-byte varint");
    /* Plain garbage. */
    uint8_t junk[257];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)(i * 37 + 11);
    if (gn_wire_decode(junk, sizeof junk, NULL, &env, &code, &rid, &e) == 0) {
        CHECK(0, "garbage decoded as a valid envelope");
        gn_wire_env_free(env);
    } else {
        CHECK(code == GENARM__V1__ERROR_CODE__ERROR_BAD_FRAME || code == GENARM__V1__ERROR_CODE__ERROR_BAD_VERSION,
              "garbage code %d", code);
    }
}

static void test_step_check(void) {
    gn_err e = {0};
    int code;
    int32_t toks[4] = {1, 2, 3, 4};
    Genarm__V1__SeqStep s[3], *sp[3];
    for (int i = 0; i < 3; i++) {
        Genarm__V1__SeqStep x = GENARM__V1__SEQ_STEP__INIT;
        x.seq_id = (uint64_t)i;
        x.tokens = toks;
        x.n_tokens = 4;
        s[i] = x;
        sp[i] = &s[i];
    }
    gn_wire_step_req r = GENARM__V1__STEP_REQUEST__INIT;
    r.seqs = sp;
    r.n_seqs = 3;
    r.dtype = GENARM__V1__DTYPE__DTYPE_F32;
    CHECK(gn_wire_step_check(&r, NULL, &code, &e) == 0 && code == 0, "valid: %s", e.msg);
    r.dtype = GENARM__V1__DTYPE__DTYPE_UNSPECIFIED;
    CHECK(gn_wire_step_check(&r, NULL, &code, &e) != 0 && code == GENARM__V1__ERROR_CODE__ERROR_BAD_DTYPE, "dtype");
    r.dtype = 99;
    CHECK(gn_wire_step_check(&r, NULL, &code, &e) != 0 && code == GENARM__V1__ERROR_CODE__ERROR_BAD_DTYPE, "dtype 99");
    r.dtype = GENARM__V1__DTYPE__DTYPE_F16;
    s[2].seq_id = 0;
    CHECK(gn_wire_step_check(&r, NULL, &code, &e) != 0 && code == GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST,
          "duplicate seq id");
    s[2].seq_id = 2;
    s[1].n_tokens = 0;
    CHECK(gn_wire_step_check(&r, NULL, &code, &e) != 0 && code == GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST, "no tokens");
    s[1].n_tokens = 4;
    gn_wire_limits lim = gn_wire_default_limits();
    lim.max_seqs = 2;
    CHECK(gn_wire_step_check(&r, &lim, &code, &e) != 0 && code == GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE, "seqs");
    lim = gn_wire_default_limits();
    lim.max_tokens = 11;
    CHECK(gn_wire_step_check(&r, &lim, &code, &e) != 0 && code == GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE, "tokens");
    lim.max_tokens = 12;
    CHECK(gn_wire_step_check(&r, &lim, &code, &e) == 0, "tokens at the limit");
    s[1].top_k = 8;
    CHECK(gn_wire_step_check(&r, NULL, &code, &e) == 0, "a sparse row: %s", e.msg);
    s[1].all_logits = 1;
    CHECK(gn_wire_step_check(&r, NULL, &code, &e) != 0 && code == GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST &&
              strstr(e.msg, "seq 1") && strstr(e.msg, "all_logits"),
          "top_k with all_logits refused, naming the sequence: %s", e.msg);
    s[1].top_k = 0;
    CHECK(gn_wire_step_check(&r, NULL, &code, &e) == 0, "all_logits alone: %s", e.msg);
    s[1].all_logits = 0;
    r.n_seqs = 0;
    CHECK(gn_wire_step_check(&r, NULL, &code, &e) != 0 && code == GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST, "empty");

    /* Responses: rows must lie inside the tensor. */
    uint8_t data[3 * 2 * 4] = {0};
    Genarm__V1__Tensor t = GENARM__V1__TENSOR__INIT;
    t.dtype = GENARM__V1__DTYPE__DTYPE_F32;
    t.rows = 3;
    t.cols = 2;
    t.data.data = data;
    t.data.len = sizeof data;
    Genarm__V1__SeqResult a = GENARM__V1__SEQ_RESULT__INIT, b = GENARM__V1__SEQ_RESULT__INIT;
    a.n_rows = 2;
    b.row_offset = 2;
    b.n_rows = 1;
    Genarm__V1__SeqResult *rp[2] = {&a, &b};
    gn_wire_step_resp resp = GENARM__V1__STEP_RESPONSE__INIT;
    resp.n_results = 2;
    resp.results = rp;
    resp.logprobs = &t;
    CHECK(gn_wire_step_resp_check(&resp, &e) == 0, "good response: %s", e.msg);
    b.n_rows = 2;
    CHECK(gn_wire_step_resp_check(&resp, &e) == GN_EFORMAT, "rows past the end");
    b.n_rows = 1;
    b.row_offset = UINT64_MAX;
    CHECK(gn_wire_step_resp_check(&resp, &e) == GN_EFORMAT, "offset overflow");
    b.row_offset = 2;
    resp.logprobs = NULL;
    CHECK(gn_wire_step_resp_check(&resp, &e) == GN_EFORMAT, "results without a tensor");
    CHECK(strcmp(gn_wire_code_name(GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE), "TOO_LARGE") == 0 &&
              strcmp(gn_wire_code_name(GENARM__V1__ERROR_CODE__ERROR_ROW_GONE), "ROW_GONE") == 0 &&
              strcmp(gn_wire_code_name(1000), "UNKNOWN") == 0,
          "code names");
}

/* Little-endian bytes of n int32 / float values. */
static void le32(uint8_t *dst, const void *src, size_t n) {
    const uint8_t *p = src;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, p + 4 * i, 4);
        for (int b = 0; b < 4; b++) dst[4 * i + (size_t)b] = (uint8_t)(u >> (8 * b));
    }
}

/* Sparse rows in a StepResponse: the checker and gn_wire_sparse_row. */
static void test_sparse(void) {
    gn_err e = {0};
    int32_t ids[5] = {7, 3, 9, 1, 0};
    float vals[5] = {-0.5f, -1.25f, -2.0f, -0.75f, -3.5f};
    uint8_t bi[4 * 5 + 1], bv[4 * 5 + 1];
    le32(bi, ids, 5);
    le32(bv, vals, 5);
    uint8_t data[1 * 2 * 4] = {0};
    Genarm__V1__Tensor t = GENARM__V1__TENSOR__INIT;
    t.dtype = GENARM__V1__DTYPE__DTYPE_F32;
    t.rows = 1;
    t.cols = 2;
    t.data.data = data;
    t.data.len = sizeof data;
    Genarm__V1__SeqResult a = GENARM__V1__SEQ_RESULT__INIT, b = GENARM__V1__SEQ_RESULT__INIT,
                          d = GENARM__V1__SEQ_RESULT__INIT;
    a.seq_id = 1; /* sparse: 3 candidates at 0 */
    a.n_cand = 3;
    b.seq_id = 2; /* dense: one row */
    b.n_rows = 1;
    d.seq_id = 3; /* sparse: 2 candidates at 3 */
    d.n_cand = 2;
    d.cand_offset = 3;
    Genarm__V1__SeqResult *rp[3] = {&a, &b, &d};
    gn_wire_step_resp resp = GENARM__V1__STEP_RESPONSE__INIT;
    resp.n_results = 3;
    resp.results = rp;
    resp.logprobs = &t;
    resp.cand_ids.data = bi;
    resp.cand_ids.len = 20;
    resp.cand_values.data = bv;
    resp.cand_values.len = 20;
    CHECK(gn_wire_step_resp_check(&resp, &e) == 0, "sparse + dense response: %s", e.msg);
    int32_t si[8];
    float sv[8];
    const int32_t *gi = NULL;
    const float *gv = NULL;
    CHECK(gn_wire_sparse_row(&resp, &d, si, sv, 8, &gi, &gv, &e) == 0 && gi[0] == 1 && gi[1] == 0 &&
              gv[0] == -0.75f && gv[1] == -3.5f,
          "second sparse row: %s", e.msg);
    CHECK(GN_WIRE_HOST_LE ? gi == (const int32_t *)(const void *)(bi + 12) : gi == si, "read in place where aligned");
    /* Unaligned bytes are converted into the scratch. */
    uint8_t ui[4 * 5 + 1], uv[4 * 5 + 1];
    memcpy(ui + 1, bi, 20);
    memcpy(uv + 1, bv, 20);
    resp.cand_ids.data = ui + 1;
    resp.cand_values.data = uv + 1;
    CHECK(gn_wire_sparse_row(&resp, &a, si, sv, 8, &gi, &gv, &e) == 0 && gi == si && gv == sv && gi[0] == 7 &&
              gi[2] == 9 && gv[1] == -1.25f,
          "unaligned: converted: %s", e.msg);
    CHECK(gn_wire_sparse_row(&resp, &a, si, sv, 2, &gi, &gv, &e) == GN_ERANGE, "scratch too small");
    resp.cand_ids.data = bi;
    resp.cand_values.data = bv;
    CHECK(gn_wire_sparse_row(&resp, &b, si, sv, 8, &gi, &gv, &e) == GN_EFORMAT, "a dense result is not sparse");
    /* Malformed candidate arrays. */
    d.n_cand = 3;
    CHECK(gn_wire_step_resp_check(&resp, &e) == GN_EFORMAT, "candidates past the end");
    CHECK(gn_wire_sparse_row(&resp, &d, si, sv, 8, &gi, &gv, &e) == GN_EFORMAT, "reader checks the range too");
    d.n_cand = 2;
    d.cand_offset = UINT64_MAX;
    CHECK(gn_wire_step_resp_check(&resp, &e) == GN_EFORMAT, "offset overflow");
    d.cand_offset = 3;
    d.n_rows = 1;
    CHECK(gn_wire_step_resp_check(&resp, &e) == GN_EFORMAT, "a sparse result with dense rows");
    d.n_rows = 0;
    resp.cand_values.len = 16;
    CHECK(gn_wire_step_resp_check(&resp, &e) == GN_EFORMAT, "ids and values disagree");
    resp.cand_values.len = 20;
    resp.cand_ids.len = 19;
    resp.cand_values.len = 19;
    CHECK(gn_wire_step_resp_check(&resp, &e) == GN_EFORMAT, "not whole 4-byte entries");
    resp.cand_ids.len = 20;
    resp.cand_values.len = 20;
    /* Only sparse results: no tensor needed. */
    resp.results = (Genarm__V1__SeqResult *[]){&a, &d};
    resp.n_results = 2;
    resp.logprobs = NULL;
    CHECK(gn_wire_step_resp_check(&resp, &e) == 0, "sparse results need no tensor: %s", e.msg);
}

/* RowFetch validation and RowFetchResult readers. */
static void test_fetch(void) {
    gn_err e = {0};
    int code;
    int32_t ids[3] = {4, 5, 6};
    Genarm__V1__FetchSeq f[2] = {GENARM__V1__FETCH_SEQ__INIT, GENARM__V1__FETCH_SEQ__INIT}, *fp[2] = {&f[0], &f[1]};
    f[0].seq_id = 1;
    f[0].seq_len = 10;
    f[0].ids = ids;
    f[0].n_ids = 3;
    f[1].seq_id = 2;
    f[1].full_row = 1;
    Genarm__V1__RowFetch rf = GENARM__V1__ROW_FETCH__INIT;
    rf.seqs = fp;
    rf.n_seqs = 2;
    CHECK(gn_wire_fetch_check(&rf, NULL, &code, &e) == 0 && code == 0, "valid fetch: %s", e.msg);
    gn_wire_limits lim = gn_wire_default_limits();
    lim.max_seqs = 1;
    CHECK(gn_wire_fetch_check(&rf, &lim, &code, &e) != 0 && code == GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE,
          "too many sequences");
    lim = gn_wire_default_limits();
    lim.max_tokens = 2;
    CHECK(gn_wire_fetch_check(&rf, &lim, &code, &e) != 0 && code == GENARM__V1__ERROR_CODE__ERROR_TOO_LARGE,
          "too many ids");
    rf.n_seqs = 0;
    CHECK(gn_wire_fetch_check(&rf, NULL, &code, &e) != 0 && code == GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST,
          "no sequences");

    float v[5] = {-1.0f, -2.0f, -3.0f, -4.0f, -5.0f};
    uint8_t bv[21];
    le32(bv, v, 5);
    Genarm__V1__FetchResult r1 = GENARM__V1__FETCH_RESULT__INIT, r2 = GENARM__V1__FETCH_RESULT__INIT;
    r1.seq_id = 1;
    r1.n = 3;
    r2.seq_id = 2;
    r2.offset = 3;
    r2.n = 2;
    Genarm__V1__FetchResult *rp[2] = {&r1, &r2};
    Genarm__V1__RowFetchResult res = GENARM__V1__ROW_FETCH_RESULT__INIT;
    res.results = rp;
    res.n_results = 2;
    res.values.data = bv;
    res.values.len = 20;
    CHECK(gn_wire_fetch_result_check(&res, &e) == 0, "valid result: %s", e.msg);
    float sc[4];
    const float *got = NULL;
    CHECK(gn_wire_fetch_values(&res, &r2, sc, 4, &got, &e) == 0 && got[0] == -4.0f && got[1] == -5.0f,
          "values of the second: %s", e.msg);
    uint8_t ub[22];
    memcpy(ub + 1, bv, 20);
    res.values.data = ub + 1;
    CHECK(gn_wire_fetch_values(&res, &r1, sc, 4, &got, &e) == 0 && got == sc && sc[2] == -3.0f,
          "unaligned: converted");
    CHECK(gn_wire_fetch_values(&res, &r1, sc, 2, &got, &e) == GN_ERANGE, "scratch too small");
    res.values.data = bv;
    r2.n = 3;
    CHECK(gn_wire_fetch_result_check(&res, &e) == GN_EFORMAT, "values past the end");
    CHECK(gn_wire_fetch_values(&res, &r2, sc, 4, &got, &e) == GN_EFORMAT, "reader checks the range too");
    r2.n = 2;
    r2.offset = UINT64_MAX;
    CHECK(gn_wire_fetch_result_check(&res, &e) == GN_EFORMAT, "offset overflow");
    r2.offset = 3;
    res.values.len = 18;
    CHECK(gn_wire_fetch_result_check(&res, &e) == GN_EFORMAT, "not whole floats");
}

/* Every allocation of decode and encode may fail: the call fails cleanly
 * (no envelope, no leak under ASan) and a later call succeeds. */
static void test_alloc_failures(void) {
    uint8_t *buf;
    size_t len;
    make_step_frame(&buf, &len, GN_WIRE_PROTOCOL_VERSION);
    gn_err e = {0};
    int ok = 0, fails = 0;
    for (long n = 0; n < 200; n++) {
        gn_wire_env *env = (gn_wire_env *)1;
        int code;
        uint64_t rid;
        gn_alloc_fail_after(n);
        int rc = gn_wire_decode(buf, len, NULL, &env, &code, &rid, &e);
        gn_alloc_fail_after(-1);
        if (rc == 0) {
            CHECK(env && env->step && env->step->n_seqs == 3, "decode after %ld allocations", n);
            gn_wire_env_free(env);
            ok = 1;
            break;
        }
        fails++;
        if (env != NULL) {
            CHECK(0, "failed decode (alloc %ld) left an envelope", n);
            break;
        }
    }
    CHECK(ok && fails > 3, "decode survives every allocation failure (%d failing points)", fails);

    ok = 0;
    gn_wire_env *env;
    int code;
    uint64_t rid;
    CHECK(gn_wire_decode(buf, len, NULL, &env, &code, &rid, &e) == 0, "decode");
    for (long n = 0; n < 10 && env; n++) {
        uint8_t *out = NULL;
        size_t olen = 0;
        gn_alloc_fail_after(n);
        int rc = gn_wire_encode(env, &out, &olen, &e);
        gn_alloc_fail_after(-1);
        if (rc == 0) {
            CHECK(olen == len && memcmp(out, buf, len) == 0, "re-encode is byte-identical");
            gn_free(out);
            ok = 1;
            break;
        }
        CHECK(rc == GN_ENOMEM && out == NULL, "encode failure %ld", n);
    }
    CHECK(ok, "encode succeeds once allocations do");
    gn_wire_env_free(env);
    gn_free(buf);
}

/* The error pool of a batch: two responses owning ranges [0, 2) and [2, 3). */
static void test_err_pool(void) {
    gn_wire_err_pool ep = {0};
    CHECK(gn_wire_err_pool_reserve(&ep, 3) == 0 && ep.cap == 3, "reserve");
    gn_wire_step_resp r1 = GENARM__V1__STEP_RESPONSE__INIT, r2 = GENARM__V1__STEP_RESPONSE__INIT;
    gn_wire_err_pool_add(&ep, 0, &r1.errors, &r1.n_errors, 7, GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_SEQ,
                         "seq %d unknown", 7);
    gn_wire_err_pool_add(&ep, 2, &r2.errors, &r2.n_errors, 11, GENARM__V1__ERROR_CODE__ERROR_TOKEN_RANGE, "%s",
                         "range");
    gn_wire_err_pool_add(&ep, 0, &r1.errors, &r1.n_errors, 9, GENARM__V1__ERROR_CODE__ERROR_CAPACITY, "%s", "full");
    gn_wire_err_pool_add(&ep, 2, &r2.errors, &r2.n_errors, 12, GENARM__V1__ERROR_CODE__ERROR_CAPACITY, "dropped");
    CHECK(r1.n_errors == 2 && r2.n_errors == 1, "an entry beyond the reserved room is dropped (%zu, %zu)",
          r1.n_errors, r2.n_errors);
    CHECK(r1.errors[0]->seq_id == 7 && r1.errors[0]->has_seq &&
              r1.errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_SEQ &&
              !strcmp(r1.errors[0]->message, "seq 7 unknown") && r1.errors[1]->seq_id == 9 &&
              !strcmp(r1.errors[1]->message, "full"),
          "the first response's errors");
    CHECK(r2.errors[0]->seq_id == 11 && r2.errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_TOKEN_RANGE,
          "the second response's range");
    char big[400];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    gn_wire_step_resp r3 = GENARM__V1__STEP_RESPONSE__INIT;
    gn_wire_err_pool_add(&ep, 2, &r3.errors, &r3.n_errors, 1, GENARM__V1__ERROR_CODE__ERROR_INTERNAL, "%s", big);
    CHECK(r3.n_errors == 1 && strlen(r3.errors[0]->message) == GN_WIRE_ERR_MSG_MAX - 1, "long message cut");
    gn_alloc_fail_after(1);
    CHECK(gn_wire_err_pool_reserve(&ep, 100) == GN_ENOMEM && ep.cap == 3, "a failed reserve keeps the pool");
    gn_alloc_fail_after(-1);
    gn_wire_err_pool_free(&ep);
    CHECK(ep.cap == 0 && !ep.e, "free zeroes");
    gn_wire_err_pool_free(&ep);
}

int main(void) {
    test_dtypes();
    test_packing();
    test_tensor_check();
    test_envelope();
    test_step_check();
    test_sparse();
    test_fetch();
    test_alloc_failures();
    test_err_pool();
    GN_TEST_MAIN_END();
}
