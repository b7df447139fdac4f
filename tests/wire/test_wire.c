/* test_wire.c — the pure half of the data plane (wire/wire.h): tensor
 * packing to little-endian fp32/fp16/bf16 bytes and back, shape checks that
 * never trust a claimed size, envelope encode/decode with version and body
 * validation, StepRequest/StepResponse validation, every prefix of a valid
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
              strcmp(gn_wire_code_name(1000), "UNKNOWN") == 0,
          "code names");
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

static void test_seq_errors(void) {
    gn_wire_seq_errors *e = gn_wire_seq_errors_create(2);
    CHECK(e != NULL, "create");
    if (!e) return;
    gn_wire_step_resp resp = GENARM__V1__STEP_RESPONSE__INIT;
    gn_wire_seq_errors_attach(e, &resp);
    CHECK(resp.n_errors == 0 && resp.errors != NULL, "attach empties the list");
    gn_wire_seq_errors_add(e, &resp, 7, GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_SEQ, "seq %d unknown", 7);
    gn_wire_seq_errors_add(e, &resp, 9, GENARM__V1__ERROR_CODE__ERROR_CAPACITY, "%s", "full");
    gn_wire_seq_errors_add(e, &resp, 11, GENARM__V1__ERROR_CODE__ERROR_CAPACITY, "dropped");
    CHECK(resp.n_errors == 2, "a third error beyond max_seqs 2 is dropped (n %zu)", resp.n_errors);
    CHECK(resp.errors[0]->seq_id == 7 && resp.errors[0]->has_seq &&
              resp.errors[0]->code == GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_SEQ &&
              !strcmp(resp.errors[0]->message, "seq 7 unknown"),
          "first error");
    CHECK(resp.errors[1]->seq_id == 9 && !strcmp(resp.errors[1]->message, "full"), "second error");
    gn_wire_seq_errors_attach(e, &resp);
    CHECK(resp.n_errors == 0, "attach again starts a new response");
    gn_wire_seq_errors_free(e);
    gn_wire_seq_errors_free(NULL);
}

int main(void) {
    test_dtypes();
    test_packing();
    test_tensor_check();
    test_envelope();
    test_step_check();
    test_alloc_failures();
    test_seq_errors();
    GN_TEST_MAIN_END();
}
