/* test_safetensors.c — the safetensors parser, mapped files, sharded sets and
 * the writer: valid files of every dtype, dozens of malformed headers (each
 * must be refused with a message naming the file and the tensor), and an
 * allocation-failure loop over every allocation point. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fsutil.h"
#include "gn_alloc.h"
#include "gn_half.h"
#include "gn_test.h"
#include "safetensors.h"

/* A file image: little-endian length prefix `n`, the header text, then
 * data_len bytes of data (value i & 0xff). */
static uint8_t *mk_raw(uint64_t n, const char *hdr, size_t data_len, size_t *len) {
    size_t hl = strlen(hdr);
    *len = 8 + hl + data_len;
    uint8_t *b = malloc(*len);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(n >> (8 * i));
    memcpy(b + 8, hdr, hl);
    for (size_t i = 0; i < data_len; i++) b[8 + hl + i] = (uint8_t)i;
    return b;
}

static uint8_t *mk(const char *hdr, size_t data_len, size_t *len) {
    return mk_raw(strlen(hdr), hdr, data_len, len);
}

static const char *const FNAME = "bad.safetensors";

/* Parses hdr + data and expects failure `code` with every `needle` (up to
 * two, NULL to skip) and the file name in the message. */
static void expect_bad(const char *what, const char *hdr, size_t data_len, int code,
                       const char *needle, const char *needle2) {
    size_t len;
    uint8_t *b = mk(hdr, data_len, &len);
    gn_st_header h;
    gn_err e = {0};
    int rc = gn_st_parse(b, len, FNAME, &h, &e);
    CHECK(rc == code, "%s: rc %d (%s), want %d; msg: %s", what, rc, gn_strerror(rc), code, e.msg);
    CHECK(strstr(e.msg, FNAME) != NULL, "%s: message does not name the file: %s", what, e.msg);
    if (needle) CHECK(strstr(e.msg, needle) != NULL, "%s: message lacks '%s': %s", what, needle, e.msg);
    if (needle2) CHECK(strstr(e.msg, needle2) != NULL, "%s: message lacks '%s': %s", what, needle2, e.msg);
    CHECK(h.n_tensors == 0 && h.tensors == NULL && h.n_meta == 0, "%s: output not left empty", what);
    free(b);
}

static void test_malformed(void) {
    gn_st_header h;
    gn_err e = {0};
    size_t len;
    uint8_t *b;

    /* Length prefix problems. */
    uint8_t tiny[5] = {1, 0, 0, 0, 0};
    CHECK(gn_st_parse(tiny, sizeof tiny, FNAME, &h, &e) == GN_EFORMAT && strstr(e.msg, "too short"),
          "short file: %s", e.msg);
    b = mk_raw(1000, "{}", 0, &len);
    CHECK(gn_st_parse(b, len, FNAME, &h, &e) == GN_EFORMAT && strstr(e.msg, "past the end"),
          "length > file: %s", e.msg);
    free(b);
    b = mk_raw(UINT64_MAX, "{}", 0, &len);
    CHECK(gn_st_parse(b, len, FNAME, &h, &e) == GN_EFORMAT && strstr(e.msg, "limit"),
          "length 2^64-1: %s", e.msg);
    free(b);
    b = mk_raw((uint64_t)1 << 63, "{}", 0, &len);
    CHECK(gn_st_parse(b, len, FNAME, &h, &e) == GN_EFORMAT, "length 2^63: %s", e.msg);
    free(b);
    b = mk_raw(0, "{}", 0, &len);
    CHECK(gn_st_parse(b, len, FNAME, &h, &e) == GN_EFORMAT, "length 0: %s", e.msg);
    free(b);
    b = mk_raw(1, "{}", 0, &len); /* header "{" */
    CHECK(gn_st_parse(b, len, FNAME, &h, &e) == GN_EFORMAT, "length 1: %s", e.msg);
    free(b);

    /* Header text. */
    expect_bad("not JSON", "{\"a\": ", 0, GN_EFORMAT, "not valid JSON", NULL);
    expect_bad("array", "[1, 2]", 0, GN_EFORMAT, "JSON object", NULL);
    expect_bad("leading space", " {}", 0, GN_EFORMAT, "JSON object", NULL);
    expect_bad("trailing garbage", "{} x", 0, GN_EFORMAT, "not valid JSON", NULL);
    expect_bad("invalid UTF-8", "{\"w\xff\":{}}", 0, GN_EFORMAT, "not valid JSON", NULL);
    expect_bad("NUL escape in a name",
               "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
               GN_EFORMAT, "not valid JSON", NULL);
    {
        static const char with_nul[] = "{\"w\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}";
        uint8_t *nb = mk(with_nul, 4, &len);
        nb[8 + 3] = '\0';
        CHECK(gn_st_parse(nb, len, FNAME, &h, &e) == GN_EFORMAT, "raw NUL byte: %s", e.msg);
        free(nb);
    }
    expect_bad("duplicate names",
               "{\"w.dup\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"w.dup\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
               8, GN_EFORMAT, "w.dup", "duplicate");
    expect_bad("empty name", "{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
               GN_EFORMAT, "empty name", NULL);

    /* Entries. */
    expect_bad("entry not object", "{\"w.x\": [1]}", 0, GN_EFORMAT, "w.x", "not a JSON object");
    expect_bad("missing dtype", "{\"w.x\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, GN_EFORMAT,
               "w.x", "dtype");
    expect_bad("missing shape", "{\"w.x\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, GN_EFORMAT,
               "w.x", "shape");
    expect_bad("missing offsets", "{\"w.x\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, GN_EFORMAT, "w.x",
               "data_offsets");
    expect_bad("dtype number", "{\"w.x\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
               GN_EFORMAT, "w.x", "dtype");
    expect_bad("unknown dtype", "{\"w.x\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}",
               4, GN_EFORMAT, "w.x", "F33");
    expect_bad("lowercase dtype", "{\"w.x\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
               4, GN_EFORMAT, "w.x", "unknown dtype");
    expect_bad("I64 unsupported", "{\"w.i\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}",
               8, GN_EUNSUP, "w.i", "I64");
    expect_bad("F64 unsupported", "{\"w.d\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}",
               8, GN_EUNSUP, "w.d", "F64");
    expect_bad("F8 unsupported",
               "{\"w.q\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4, GN_EUNSUP,
               "w.q", "F8_E4M3");
    expect_bad("shape not array", "{\"w.x\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,4]}}",
               4, GN_EFORMAT, "w.x", "shape");
    expect_bad("negative dim", "{\"w.x\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
               4, GN_EFORMAT, "w.x", "shape[0]");
    expect_bad("float dim", "{\"w.x\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}",
               4, GN_EFORMAT, "w.x", "shape[0]");
    expect_bad("string dim", "{\"w.x\":{\"dtype\":\"F32\",\"shape\":[1,\"2\"],\"data_offsets\":[0,8]}}",
               8, GN_EFORMAT, "w.x", "shape[1]");
    expect_bad("nine dims",
               "{\"w.x\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
               GN_EUNSUP, "w.x", "dimensions");
    expect_bad("overflow shape",
               "{\"w.big\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4611686018427387904],"
               "\"data_offsets\":[0,4]}}",
               4, GN_ERANGE, "w.big", "overflow");
    expect_bad("overflow with dtype size",
               "{\"w.big\":{\"dtype\":\"F32\",\"shape\":[9223372036854775807],"
               "\"data_offsets\":[0,4]}}",
               4, GN_ERANGE, "w.big", "overflow");
    expect_bad("too big integer",
               "{\"w.x\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}",
               4, GN_EFORMAT, "not valid JSON", NULL);
    expect_bad("offsets one value", "{\"w.x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}",
               4, GN_EFORMAT, "w.x", "data_offsets");
    expect_bad("offsets three values",
               "{\"w.x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8, GN_EFORMAT,
               "w.x", "data_offsets");
    expect_bad("offsets object",
               "{\"w.x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{\"a\":0}}}", 4, GN_EFORMAT,
               "w.x", "data_offsets");
    expect_bad("negative offset", "{\"w.x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}",
               4, GN_EFORMAT, "w.x", "data_offsets");
    expect_bad("reversed offsets", "{\"w.x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}",
               4, GN_EFORMAT, "w.x", "reversed");
    expect_bad("offsets past end", "{\"w.x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
               8, GN_EFORMAT, "w.x", "past the data area");
    expect_bad("huge end offset",
               "{\"w.x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[9223372036854775803,"
               "9223372036854775807]}}",
               4, GN_EFORMAT, "w.x", "past the data area");
    expect_bad("span != shape",
               "{\"w.x\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 20, GN_EFORMAT,
               "w.x", "24 bytes");
    expect_bad("span != shape BF16",
               "{\"w.h\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16, GN_EFORMAT,
               "w.h", "8 bytes");
    expect_bad("zero dim with bytes",
               "{\"w.z\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[0,16]}}", 16, GN_EFORMAT,
               "w.z", "0 bytes");
    expect_bad("gap",
               "{\"w.a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"w.b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
               12, GN_EFORMAT, "w.b", "gap");
    expect_bad("gap at start", "{\"w.a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
               GN_EFORMAT, "w.a", "gap");
    expect_bad("overlap",
               "{\"w.a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"w.b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               12, GN_EFORMAT, "w.b", "overlaps");
    expect_bad("same span twice",
               "{\"w.a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"w.b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
               8, GN_EFORMAT, "w.b", "overlaps");
    expect_bad("trailing bytes", "{\"w.a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
               12, GN_EFORMAT, "w.a", "not covered");
    expect_bad("no tensors but data", "{}", 4, GN_EFORMAT, "no tensors", NULL);
    expect_bad("metadata not object", "{\"__metadata__\": [1]}", 0, GN_EFORMAT, "__metadata__", NULL);
    expect_bad("metadata value not string", "{\"__metadata__\": {\"format\": 1}}", 0, GN_EFORMAT,
               "format", NULL);
}

static void test_valid_parse(void) {
    /* A scalar, a vector, a 3-D tensor, an empty tensor, metadata, and the
     * entries out of offset order. Header padded with spaces. */
    const char *hdr =
        "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"x\"},"
        "\"c.cube\":{\"dtype\":\"F16\",\"shape\":[2,3,4],\"data_offsets\":[8,56]},"
        "\"a.scalar\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
        "\"e.empty\":{\"dtype\":\"BF16\",\"shape\":[0,7],\"data_offsets\":[56,56]},"
        "\"b.vec\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[4,8]}}   ";
    size_t len;
    uint8_t *b = mk(hdr, 56, &len);
    gn_st_header h;
    gn_err e = {0};
    int rc = gn_st_parse(b, len, "ok.safetensors", &h, &e);
    CHECK(rc == 0, "valid header refused: %s", e.msg);
    if (rc == 0) {
        CHECK(h.n_tensors == 4, "n_tensors %d", h.n_tensors);
        CHECK(h.n_meta == 2 && !strcmp(h.meta_keys[0], "format") && !strcmp(h.meta_values[0], "pt"),
              "metadata");
        CHECK(h.data_start == 8 + strlen(hdr) && h.data_len == 56, "data area");
        CHECK(!strcmp(h.tensors[0].name, "a.scalar") && !strcmp(h.tensors[3].name, "e.empty"),
              "sorted by name");
        const gn_st_tensor *c = gn_st_header_find(&h, "c.cube");
        CHECK(c && c->dtype == GN_F16 && c->n_dims == 3 && c->shape[2] == 4 && c->begin == 8 &&
                  c->end == 56 && gn_st_tensor_numel(c) == 24,
              "c.cube");
        const gn_st_tensor *s = gn_st_header_find(&h, "a.scalar");
        CHECK(s && s->n_dims == 0 && gn_st_tensor_numel(s) == 1, "scalar");
        CHECK(gn_st_header_find(&h, "nope") == NULL && gn_st_header_find(&h, "") == NULL, "find");
        const gn_st_tensor *z = gn_st_header_find(&h, "e.empty");
        CHECK(z && gn_st_tensor_numel(z) == 0, "empty tensor");
    }
    gn_st_header_free(&h);
    gn_st_header_free(&h); /* idempotent */
    free(b);

    /* An empty file: "{}" and nothing else. */
    b = mk("{}", 0, &len);
    CHECK(gn_st_parse(b, len, NULL, &h, &e) == 0 && h.n_tensors == 0, "empty file: %s", e.msg);
    gn_st_header_free(&h);
    free(b);
}

static char g_dir[256];

static void tmp_path(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", g_dir, name); }

static void test_write_and_map(void) {
    float f32[6] = {1.5f, -2.0f, 3.25f, 0.0f, -0.125f, 1e-3f};
    uint16_t f16[4], bf16[3];
    for (int i = 0; i < 4; i++) f16[i] = gn_f32_to_f16((float)i * 0.5f - 1.0f);
    for (int i = 0; i < 3; i++) bf16[i] = gn_f32_to_bf16((float)i * 4.0f + 0.5f);
    gn_st_write_tensor t[3] = {
        {.name = "w.f32", .dtype = GN_F32, .n_dims = 2, .shape = {2, 3}, .data = f32},
        {.name = "w.f16", .dtype = GN_F16, .n_dims = 1, .shape = {4}, .data = f16},
        {.name = "w.bf16", .dtype = GN_BF16, .n_dims = 3, .shape = {1, 1, 3}, .data = bf16},
    };
    static const char *const meta[] = {"format", "pt", "k\"ey", "va\nlue", NULL};
    char path[512], path2[512];
    tmp_path(path, sizeof path, "one.safetensors");
    tmp_path(path2, sizeof path2, "two.safetensors");
    gn_err e = {0};
    CHECK(gn_st_write(path, t, 3, meta, &e) == 0, "write: %s", e.msg);
    CHECK(gn_st_write(path2, t, 3, meta, &e) == 0, "write 2: %s", e.msg);
    char *a = NULL, *b = NULL;
    size_t al = 0, bl = 0;
    int ra = gn_fs_read_file(path, 1 << 20, &a, &al, &e);
    int rb = gn_fs_read_file(path2, 1 << 20, &b, &bl, &e);
    CHECK(ra == 0 && rb == 0 && al > 8, "read back");
    if (ra || rb || al <= 8) return;
    CHECK(al == bl && !memcmp(a, b, al), "writer is deterministic");
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | (unsigned char)a[i];
    CHECK((8 + hl) % 8 == 0, "data area 8-byte aligned (header %llu)", (unsigned long long)hl);
    gn_free(a);
    gn_free(b);

    gn_st_file *f = gn_st_open(path, &e);
    CHECK(f != NULL, "open: %s", e.msg);
    if (f) {
        CHECK(f->hdr.n_tensors == 3 && f->hdr.n_meta == 2, "counts");
        CHECK(!strcmp(f->hdr.meta_keys[1], "k\"ey") && !strcmp(f->hdr.meta_values[1], "va\nlue"),
              "metadata escaping");
        const gn_st_tensor *x = gn_st_header_find(&f->hdr, "w.f32");
        gn_tensor v = gn_st_view(f, x);
        CHECK(v.dtype == GN_F32 && v.rows == 2 && v.cols == 3 && !memcmp(v.data, f32, sizeof f32),
              "f32 view");
        CHECK(((uintptr_t)v.data % 4) == 0, "f32 data aligned");
        x = gn_st_header_find(&f->hdr, "w.f16");
        v = gn_st_view(f, x);
        CHECK(v.dtype == GN_F16 && v.rows == 1 && v.cols == 4 && !memcmp(v.data, f16, sizeof f16),
              "f16 view");
        CHECK(gn_f16_to_f32(((const uint16_t *)v.data)[3]) == 0.5f, "f16 value");
        x = gn_st_header_find(&f->hdr, "w.bf16");
        v = gn_st_view(f, x);
        CHECK(v.dtype == GN_BF16 && v.rows == 1 && v.cols == 3 && !memcmp(v.data, bf16, sizeof bf16),
              "bf16 view");
        CHECK(gn_bf16_to_f32(((const uint16_t *)v.data)[2]) == 8.5f, "bf16 value");
    }
    gn_st_close(f);
    gn_st_close(NULL);

    /* Writer refuses bad input. */
    gn_st_write_tensor dup[2] = {t[0], t[0]};
    CHECK(gn_st_write(path, dup, 2, NULL, &e) == GN_EINVAL && strstr(e.msg, "w.f32"), "dup name: %s", e.msg);
    gn_st_write_tensor neg = t[0];
    neg.shape[0] = -1;
    CHECK(gn_st_write(path, &neg, 1, NULL, &e) == GN_EINVAL, "negative dim");

    /* File errors. */
    char missing[512];
    tmp_path(missing, sizeof missing, "missing.safetensors");
    CHECK(gn_st_open(missing, &e) == NULL && e.code == GN_ENOTFOUND && strstr(e.msg, "missing.safetensors"),
          "missing file: %s", e.msg);
    char shortf[512];
    tmp_path(shortf, sizeof shortf, "short.safetensors");
    CHECK(gn_fs_write_file(shortf, "abc", 3, &e) == 0, "write short");
    CHECK(gn_st_open(shortf, &e) == NULL && e.code == GN_EFORMAT, "short file: %s", e.msg);
    CHECK(gn_st_open(g_dir, &e) == NULL && e.code == GN_EIO, "directory: %s", e.msg);
    /* A truncated copy of a good file. */
    char trunc[512];
    tmp_path(trunc, sizeof trunc, "trunc.safetensors");
    CHECK(gn_fs_read_file(path, 1 << 20, &a, &al, &e) == 0, "read");
    CHECK(gn_fs_write_file(trunc, a, al - 2, &e) == 0, "write trunc");
    gn_free(a);
    f = gn_st_open(trunc, &e);
    CHECK(f == NULL && e.code == GN_EFORMAT && strstr(e.msg, "trunc.safetensors") &&
              strstr(e.msg, "w."),
          "truncated file names file and tensor: %s", e.msg);
}

static void test_index_and_sets(void) {
    gn_err e = {0};
    char **names, **files;
    int n;
    const char *good = "{\"metadata\":{\"total_size\":12},\"weight_map\":{\"a\":\"s1.safetensors\","
                       "\"b\":\"s2.safetensors\",\"c\":\"s1.safetensors\"}}";
    CHECK(gn_st_index_parse(good, strlen(good), "idx", &names, &files, &n, &e) == 0 && n == 3 &&
              !strcmp(names[1], "b") && !strcmp(files[1], "s2.safetensors"),
          "index parse: %s", e.msg);
    gn_st_index_free(names, files, n);
    static const struct {
        const char *json, *needle;
    } bad[] = {
        {"{\"weight_map\":{\"a\":\"../x.safetensors\"}}", "plain file name"},
        {"{\"weight_map\":{\"a\":\"sub/x.safetensors\"}}", "plain file name"},
        {"{\"weight_map\":{\"a\":\"..\"}}", "plain file name"},
        {"{\"weight_map\":{\"a\":\"\"}}", "plain file name"},
        {"{\"weight_map\":{\"a\":3}}", "weight_map[\"a\"]"},
        {"{\"weight_map\":[]}", "weight_map"},
        {"{\"metadata\":{}}", "weight_map"},
        {"[1]", "weight_map"},
        {"{\"weight_map\":{\"a\":\"x\",\"a\":\"y\"}}", "duplicate"},
        {"{", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = gn_st_index_parse(bad[i].json, strlen(bad[i].json), "idx.json", &names, &files, &n, &e);
        CHECK(rc != 0 && strstr(e.msg, bad[i].needle) && strstr(e.msg, "idx.json") && names == NULL,
              "bad index %zu: rc %d %s", i, rc, e.msg);
    }

    /* A two-shard directory. */
    char d[512], p[600];
    snprintf(d, sizeof d, "%s/sharded", g_dir);
    CHECK(gn_fs_mkdirs(d, &e) == 0, "mkdir");
    float x[4] = {1, 2, 3, 4};
    gn_st_write_tensor t1[2] = {{.name = "a", .dtype = GN_F32, .n_dims = 1, .shape = {2}, .data = x},
                                {.name = "c", .dtype = GN_F32, .n_dims = 1, .shape = {1}, .data = x}};
    gn_st_write_tensor t2[1] = {{.name = "b", .dtype = GN_F32, .n_dims = 2, .shape = {1, 4}, .data = x}};
    snprintf(p, sizeof p, "%s/s1.safetensors", d);
    CHECK(gn_st_write(p, t1, 2, NULL, &e) == 0, "shard 1");
    snprintf(p, sizeof p, "%s/s2.safetensors", d);
    CHECK(gn_st_write(p, t2, 1, NULL, &e) == 0, "shard 2");
    const char *nm[3] = {"a", "b", "c"}, *fl[3] = {"s1.safetensors", "s2.safetensors", "s1.safetensors"};
    CHECK(gn_st_write_index(d, nm, fl, 3, 28, &e) == 0, "index: %s", e.msg);
    gn_st_set *s = gn_st_set_open(d, &e);
    CHECK(s != NULL, "open set: %s", e.msg);
    if (s) {
        CHECK(s->n_files == 2 && s->n_entries == 3, "files %d entries %d", s->n_files, s->n_entries);
        const gn_st_entry *b = gn_st_set_find(s, "b");
        CHECK(b && strstr(b->file->path, "s2.safetensors") && b->tensor->shape[1] == 4, "find b");
        CHECK(gn_st_set_find(s, "zz") == NULL, "find missing");
        gn_tensor v = gn_st_view(b->file, b->tensor);
        CHECK(((const float *)v.data)[3] == 4.0f, "b data");
    }
    gn_st_set_close(s);
    /* Index naming a tensor its shard lacks. */
    const char *nm2[2] = {"a", "ghost"}, *fl2[2] = {"s1.safetensors", "s2.safetensors"};
    CHECK(gn_st_write_index(d, nm2, fl2, 2, 0, &e) == 0, "index 2");
    s = gn_st_set_open(d, &e);
    CHECK(s == NULL && e.code == GN_ENOTFOUND && strstr(e.msg, "ghost") && strstr(e.msg, "s2.safetensors"),
          "ghost tensor: %s", e.msg);
    /* Index naming a missing shard. */
    const char *fl3[2] = {"s1.safetensors", "s9.safetensors"};
    CHECK(gn_st_write_index(d, nm2, fl3, 2, 0, &e) == 0, "index 3");
    s = gn_st_set_open(d, &e);
    CHECK(s == NULL && e.code == GN_ENOTFOUND && strstr(e.msg, "s9.safetensors"), "missing shard: %s", e.msg);
    /* A directory with nothing. */
    char empty[512];
    snprintf(empty, sizeof empty, "%s/empty", g_dir);
    gn_fs_mkdirs(empty, &e);
    s = gn_st_set_open(empty, &e);
    CHECK(s == NULL && e.code == GN_ENOTFOUND && strstr(e.msg, "model.safetensors"), "empty dir: %s", e.msg);
}

/* Every allocation point of parse, write, open and set open fails cleanly. */
static void test_alloc_failures(void) {
    const char *hdr = "{\"__metadata__\":{\"format\":\"pt\"},"
                      "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"y\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[4,8]}}";
    size_t len;
    uint8_t *b = mk(hdr, 8, &len);
    int points = 0, clean = 1;
    for (long n = 0; n < 1000; n++) {
        gn_st_header h;
        gn_err e = {0};
        gn_alloc_fail_after(n);
        int rc = gn_st_parse(b, len, "f", &h, &e);
        gn_alloc_fail_after(-1);
        if (rc == 0) {
            gn_st_header_free(&h);
            break;
        }
        points++;
        if (rc != GN_ENOMEM || h.tensors || h.meta_keys) clean = 0;
    }
    CHECK(points >= 4 && clean, "parse: %d failure points, clean %d", points, clean);
    free(b);

    char d[512];
    snprintf(d, sizeof d, "%s/sharded", g_dir);
    const char *nm[3] = {"a", "b", "c"}, *fl[3] = {"s1.safetensors", "s2.safetensors", "s1.safetensors"};
    gn_err e = {0};
    CHECK(gn_st_write_index(d, nm, fl, 3, 28, &e) == 0, "index");
    points = 0;
    clean = 1;
    for (long n = 0; n < 1000; n++) {
        gn_alloc_fail_after(n);
        gn_st_set *s = gn_st_set_open(d, &e);
        gn_alloc_fail_after(-1);
        if (s) {
            CHECK(s->n_entries == 3, "entries after %ld", n);
            gn_st_set_close(s);
            break;
        }
        points++;
        if (e.code != GN_ENOMEM) clean = 0;
    }
    CHECK(points >= 8 && clean, "set open: %d failure points, clean %d (%s)", points, clean, e.msg);

    float x[2] = {1, 2};
    gn_st_write_tensor t = {.name = "a", .dtype = GN_F32, .n_dims = 1, .shape = {2}, .data = x};
    char p[600];
    snprintf(p, sizeof p, "%s/w.safetensors", g_dir);
    points = 0;
    for (long n = 0; n < 100; n++) {
        gn_alloc_fail_after(n);
        int rc = gn_st_write(p, &t, 1, NULL, &e);
        gn_alloc_fail_after(-1);
        if (rc == 0) break;
        points++;
        CHECK(rc == GN_ENOMEM, "write rc %d", rc);
    }
    CHECK(points >= 1, "write: %d failure points", points);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/gn_test_st_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_malformed();
    test_valid_parse();
    test_write_and_map();
    test_index_and_sets();
    test_alloc_failures();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    GN_TEST_MAIN_END();
}
