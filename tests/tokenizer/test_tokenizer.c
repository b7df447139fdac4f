/* test_tokenizer — unit tests for tokenizer/: the real tokenizers' metadata,
 * round trips, invalid UTF-8, decoding of broken byte sequences, streaming on
 * random ids, malformed tokenizer.json files (each with the error it must
 * give), the hash, an allocation-failure loop over loading, encoding and
 * decoding, and a throughput figure.
 *
 * Usage: test_tokenizer TOKENIZERS_DIR  (the unpacked tests/fixtures/tokenizers) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gn_alloc.h"
#include "gn_test.h"
#include "tokenizer.h"

static const char *g_dir;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) b[n] = '\0';
    *len = (size_t)n;
    return b;
}

static gn_tokenizer *load_named(const char *name) {
    char p[4096];
    gn_err err = {0};
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    gn_tokenizer *t = gn_tok_load(p, &err);
    CHECK(t != NULL, "load %s: %s", p, err.msg);
    return t;
}

static int valid_utf8(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        int k = c < 0x80 ? 0 : c >= 0xC2 && c <= 0xDF ? 1 : c >= 0xE0 && c <= 0xEF ? 2
                : c >= 0xF0 && c <= 0xF4 ? 3 : -1;
        if (k < 0) return 0;
        for (int j = 1; j <= k; j++)
            if (i + (size_t)j >= n || (u[i + j] & 0xC0) != 0x80) return 0;
        i += (size_t)k + 1;
    }
    return 1;
}

/* encode then decode(skip_special) gives the text back */
static void check_roundtrip(const gn_tokenizer *t, const char *name, const char *s) {
    gn_err err = {0};
    int32_t *ids = NULL;
    int n = 0;
    char *out = NULL;
    size_t ol = 0;
    int rc = gn_tok_encode(t, s, strlen(s), 1, &ids, &n, &err);
    CHECK(rc == 0, "%s encode \"%s\": %s", name, s, err.msg);
    rc = rc ? rc : gn_tok_decode(t, ids, n, 1, &out, &ol, &err);
    CHECK(rc == 0 && ol == strlen(s) && memcmp(out, s, ol) == 0, "%s round trip \"%s\" -> \"%s\"",
          name, s, out ? out : "(null)");
    gn_free(ids);
    gn_free(out);
}

static void test_real(void) {
    static const struct {
        const char *name;
        int n_vocab, bos, eos, has_template;
        const char *special;
        int special_id;
    } want[] = {
        {"llama2", 32000, 1, 2, 0, "</s>", 2},
        {"llama3", 128256, 128000, 128001, 1, "<|eot_id|>", 128009},
        {"qwen3", 151669, -1, 151645, 1, "<|im_start|>", 151644},
    };
    const char *hashes[3] = {0};
    gn_tokenizer *tk[3] = {0};
    for (int i = 0; i < 3; i++) {
        double t0 = now_s();
        gn_tokenizer *t = tk[i] = load_named(want[i].name);
        double dt = now_s() - t0;
        if (!t) continue;
        printf("%s: loaded in %.3f s, hash %s\n", want[i].name, dt, gn_tok_hash(t));
        CHECK(dt < 5.0, "%s: load took %.2f s", want[i].name, dt);
        CHECK(gn_tok_n_vocab(t) == want[i].n_vocab, "%s n_vocab %d", want[i].name, gn_tok_n_vocab(t));
        CHECK(gn_tok_bos(t) == want[i].bos, "%s bos %d", want[i].name, gn_tok_bos(t));
        CHECK(gn_tok_eos(t) == want[i].eos, "%s eos %d", want[i].name, gn_tok_eos(t));
        CHECK((gn_tok_chat_template(t) != NULL) == want[i].has_template, "%s chat template",
              want[i].name);
        int id = gn_tok_token_id(t, want[i].special);
        CHECK(id == want[i].special_id, "%s id of %s = %d", want[i].name, want[i].special, id);
        CHECK(gn_tok_is_special(t, id), "%s %s is special", want[i].name, want[i].special);
        CHECK(gn_tok_token_str(t, id) && !strcmp(gn_tok_token_str(t, id), want[i].special),
              "%s token_str", want[i].name);
        CHECK(gn_tok_token_str(t, -1) == NULL && gn_tok_token_str(t, gn_tok_n_vocab(t)) == NULL,
              "%s token_str out of range", want[i].name);
        CHECK(gn_tok_token_id(t, "no such token, surely") == -1, "%s missing token", want[i].name);
        CHECK(!gn_tok_is_special(t, 100), "%s id 100 is not special", want[i].name);
        hashes[i] = gn_tok_hash(t);
        CHECK(hashes[i] && strlen(hashes[i]) == 64, "%s hash length", want[i].name);
        static const char *rt[] = {"Hello world", "Hello, World! 123 4567",
                                   "naïve café — Zürich", "日本語のテキスト", "emoji 👨‍👩‍👧‍👦 🇺🇸",
                                   "  leading and trailing  ", "tabs\tand\nnewlines\r\n",
                                   "code: for (int i = 0; i < n; i++) { x += i; }"};
        for (size_t k = 0; k < sizeof rt / sizeof *rt; k++) check_roundtrip(t, want[i].name, rt[k]);
    }
    if (hashes[0] && hashes[1] && hashes[2])
        CHECK(strcmp(hashes[0], hashes[1]) && strcmp(hashes[1], hashes[2]) &&
                  strcmp(hashes[0], hashes[2]),
              "hashes differ between tokenizers");
    /* a tokenizer.json path (not its folder) also finds tokenizer_config.json */
    {
        char p[4096];
        gn_err e2 = {0};
        snprintf(p, sizeof p, "%s/llama2/tokenizer.json", g_dir);
        gn_tokenizer *byfile = gn_tok_load(p, &e2);
        CHECK(byfile && gn_tok_eos(byfile) == 2 && tk[0] &&
                  !strcmp(gn_tok_hash(byfile), gn_tok_hash(tk[0])),
              "load by file path: %s", e2.msg);
        gn_tok_free(byfile);
    }
    /* same file twice: same hash */
    gn_tokenizer *again = load_named("qwen3");
    if (again && tk[2]) CHECK(!strcmp(gn_tok_hash(again), gn_tok_hash(tk[2])), "hash is stable");
    gn_tok_free(again);

    gn_err err = {0};
    int32_t *ids = NULL;
    int n = 0;
    if (tk[0]) {
        /* Llama-2 adds BOS; byte fallback for characters outside the vocab */
        int rc = gn_tok_encode(tk[0], "Hello", 5, 1, &ids, &n, &err);
        CHECK(rc == 0 && n >= 2 && ids[0] == 1, "llama2 BOS first");
        gn_free(ids);
        rc = gn_tok_encode(tk[0], "", 0, 1, &ids, &n, &err);
        CHECK(rc == 0 && n == 1 && ids[0] == 1, "llama2 empty text gives only BOS (n %d)", n);
        gn_free(ids);
        rc = gn_tok_encode(tk[0], "", 0, 0, &ids, &n, &err);
        CHECK(rc == 0 && n == 0 && ids != NULL, "empty text, no specials: 0 ids, non-NULL array");
        gn_free(ids);
        /* <0xE4><0x41>: an invalid byte run decodes to one U+FFFD per byte */
        int e4 = gn_tok_token_id(tk[0], "<0xE4>"), a41 = gn_tok_token_id(tk[0], "<0x41>");
        int32_t bad[3] = {e4, a41, gn_tok_token_id(tk[0], "▁x")};
        char *out = NULL;
        size_t ol;
        rc = gn_tok_decode(tk[0], bad, 3, 0, &out, &ol, &err);
        CHECK(rc == 0 && !strcmp(out, "\xEF\xBF\xBD\xEF\xBF\xBD x"), "llama2 invalid byte run: \"%s\"",
              out ? out : "");
        gn_free(out);
        int32_t unk[2] = {5, 999999};
        rc = gn_tok_decode(tk[0], unk, 2, 0, &out, &ol, &err);
        CHECK(rc == GN_EINVAL && strstr(err.msg, "999999"), "unknown id: %s", err.msg);
        gn_free(out);
    }
    if (tk[1]) {
        /* a lone byte token decodes to U+FFFD; an incomplete tail too */
        char *out = NULL;
        size_t ol;
        int32_t ff[1] = {gn_tok_token_id(tk[1], "\xC3\xBF")}; /* ÿ = byte 0xFF */
        int rc = gn_tok_decode(tk[1], ff, 1, 0, &out, &ol, &err);
        CHECK(rc == 0 && !strcmp(out, "\xEF\xBF\xBD"), "llama3 byte 0xFF decodes to U+FFFD");
        gn_free(out);
        /* invalid UTF-8 input is refused with its offset */
        static const struct {
            const char *s;
            size_t len, off;
        } inv[] = {{"ab\xFF", 3, 2},           {"a\xC3", 2, 1},        {"\xC0\x80", 2, 0},
                   {"xy\xED\xA0\x80", 5, 2},   {"\xF4\x90\x80\x80", 4, 0}, {"ok\x80", 3, 2},
                   {"\xE2\x82", 2, 0}};
        for (size_t k = 0; k < sizeof inv / sizeof *inv; k++) {
            char want_msg[64];
            snprintf(want_msg, sizeof want_msg, "byte offset %zu", inv[k].off);
            ids = NULL;
            rc = gn_tok_encode(tk[1], inv[k].s, inv[k].len, 0, &ids, &n, &err);
            CHECK(rc == GN_EINVAL && strstr(err.msg, want_msg) && ids == NULL,
                  "invalid UTF-8 case %zu: rc %d \"%s\"", k, rc, err.msg);
        }
        /* NUL bytes are ordinary text */
        rc = gn_tok_encode(tk[1], "a\0b", 3, 0, &ids, &n, &err);
        CHECK(rc == 0 && n == 3, "NUL inside text (n %d)", n);
        gn_free(ids);
    }

    /* streaming on random ids: valid UTF-8 pieces, concatenation == decode */
    unsigned seed = 12345;
    for (int i = 0; i < 3; i++) {
        if (!tk[i]) continue;
        int bad = 0;
        for (int trial = 0; trial < 200; trial++) {
            int32_t rid[40];
            int nid = 1 + (int)((seed = seed * 1103515245u + 12345u) >> 16) % 40;
            for (int k = 0; k < nid; k++) {
                seed = seed * 1103515245u + 12345u;
                unsigned r = seed >> 8;
                /* bias towards byte tokens, where streaming is hardest */
                rid[k] = (int32_t)(k % 3 == 0 ? (i == 0 ? 3 + r % 256 : r % 256)
                                              : r % (unsigned)gn_tok_n_vocab(tk[i]));
            }
            for (int skip = 0; skip < 2; skip++) {
                char *full = NULL;
                size_t fl = 0;
                if (gn_tok_decode(tk[i], rid, nid, skip, &full, &fl, &err)) {
                    bad++;
                    continue;
                }
                gn_tok_stream *s = gn_tok_stream_create(tk[i], skip, &err);
                char *acc = malloc(fl + 1);
                size_t at = 0;
                int ok = s && acc;
                for (int k = 0; k <= nid && ok; k++) {
                    const char *o;
                    size_t ol;
                    int rc = k < nid ? gn_tok_stream_push(s, rid[k], &o, &ol, &err)
                                     : gn_tok_stream_flush(s, &o, &ol, &err);
                    if (rc || !valid_utf8(o, ol) || at + ol > fl) ok = 0;
                    else {
                        memcpy(acc + at, o, ol);
                        at += ol;
                    }
                }
                if (!ok || at != fl || memcmp(acc, full, fl)) bad++;
                free(acc);
                gn_free(full);
                gn_tok_stream_free(s);
            }
        }
        CHECK(bad == 0, "tokenizer %d: %d random id sequences stream differently", i, bad);
    }

    /* throughput on English prose */
    if (tk[1]) {
        static const char para[] =
            "The quick brown fox jumps over the lazy dog. It was the best of times, it was the "
            "worst of times; we had everything before us, we had nothing before us. In 1859, "
            "Darwin published his theory, and nothing was ever quite the same again!\n";
        size_t reps = 4000, pl = sizeof para - 1;
        char *big = malloc(pl * reps + 1);
        for (size_t k = 0; k < reps; k++) memcpy(big + k * pl, para, pl);
        for (int i = 0; i < 3; i++) {
            if (!tk[i]) continue;
            double t0 = now_s();
            int rc = gn_tok_encode(tk[i], big, pl * reps, 0, &ids, &n, &err);
            double dt = now_s() - t0;
            printf("encode %.2f MB of English with tokenizer %d: %.1f MB/s (%d tokens)\n",
                   (double)(pl * reps) / 1e6, i, (double)(pl * reps) / 1e6 / dt, n);
            CHECK(rc == 0 && n > 1000, "big encode");
            gn_free(ids);
        }
        free(big);
        /* a 10 kB word without spaces must not be quadratic */
        char *w = malloc(20001);
        for (int k = 0; k < 20000; k++) w[k] = "abcdefghij"[(k * 7) % 10];
        w[20000] = 0;
        double t0 = now_s();
        int rc = gn_tok_encode(tk[0], w, 20000, 0, &ids, &n, &err);
        double dt = now_s() - t0;
        CHECK(rc == 0 && dt < 1.0, "20 kB word in %.3f s", dt);
        gn_free(ids);
        free(w);
    }
    for (int i = 0; i < 3; i++) gn_tok_free(tk[i]);
}

/* ---- malformed files ---- */

static const char SMALL[] =
    "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":5,\"content\":\"<s>\",\"special\":true,"
    "\"normalized\":false,\"lstrip\":false,\"rstrip\":false,\"single_word\":false}],"
    "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
    "\"use_regex\":true},\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":"
    "[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],"
    "\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[5],\"tokens\":[\"<s>\"]}}},"
    "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,"
    "\"ab\":2,\"\\u0120\":3,\"c\":4},\"merges\":[\"a b\"]}}";

/* Replaces the first occurrence of from by to in SMALL. */
static char *variant(const char *from, const char *to) {
    const char *hit = strstr(SMALL, from);
    if (!hit) {
        fprintf(stderr, "test bug: \"%s\" not in SMALL\n", from);
        exit(2);
    }
    size_t pre = (size_t)(hit - SMALL), fl = strlen(from), tl = strlen(to);
    char *s = malloc(sizeof SMALL + tl);
    memcpy(s, SMALL, pre);
    memcpy(s + pre, to, tl);
    strcpy(s + pre + tl, hit + fl);
    return s;
}

static void expect_fail(const char *json, size_t len, int code, const char *needle,
                        const char *what) {
    gn_err err = {0};
    gn_tokenizer *t = gn_tok_load_mem(json, len, NULL, 0, &err);
    CHECK(t == NULL && err.code == code && strstr(err.msg, needle),
          "%s: want code %d with \"%s\", got %s code %d \"%s\"", what, code, needle,
          t ? "a tokenizer" : "NULL", err.code, err.msg);
    gn_tok_free(t);
}

static void expect_variant_fail(const char *from, const char *to, int code, const char *needle) {
    char *s = variant(from, to);
    expect_fail(s, strlen(s), code, needle, to);
    free(s);
}

static void test_malformed(void) {
    gn_err err = {0};
    gn_tokenizer *t = gn_tok_load_mem(SMALL, strlen(SMALL), NULL, 0, &err);
    CHECK(t != NULL, "small tokenizer loads: %s", err.msg);
    if (t) {
        int32_t *ids;
        int n;
        int rc = gn_tok_encode(t, "<s>ab c", 7, 1, &ids, &n, &err);
        CHECK(rc == 0 && n == 5 && ids[0] == 5 && ids[1] == 5 && ids[2] == 2 && ids[3] == 3 &&
                  ids[4] == 4,
              "small encode (rc %d n %d)", rc, n);
        if (!rc) gn_free(ids);
        rc = gn_tok_encode(t, "d", 1, 0, &ids, &n, &err);
        CHECK(rc == GN_EINVAL && strstr(err.msg, "no vocabulary token"), "missing byte: %s",
              err.msg);
        CHECK(gn_tok_bos(t) == 5 && gn_tok_eos(t) == -1 && gn_tok_n_vocab(t) == 6, "small meta");
        gn_tok_free(t);
    }
    /* config: good, and malformed */
    const char *cfg = "{\"bos_token\":\"<s>\",\"eos_token\":{\"content\":\"c\"},"
                      "\"model_max_length\":1000000000000000019884624838656,"
                      "\"chat_template\":[{\"name\":\"tool\",\"template\":\"T\"},"
                      "{\"name\":\"default\",\"template\":\"D\"}]}";
    t = gn_tok_load_mem(SMALL, strlen(SMALL), cfg, strlen(cfg), &err);
    CHECK(t && gn_tok_eos(t) == 4 && gn_tok_chat_template(t) &&
              !strcmp(gn_tok_chat_template(t), "D"),
          "config parsed: %s", err.msg);
    gn_tok_free(t);
    t = gn_tok_load_mem(SMALL, strlen(SMALL), "{\"eos_token\": 3", 15, &err);
    CHECK(!t && err.code == GN_EFORMAT && strstr(err.msg, "tokenizer_config.json"),
          "bad config: %s", err.msg);
    gn_tok_free(t);

    for (size_t cut = 1; cut < strlen(SMALL); cut += 37)
        expect_fail(SMALL, cut, GN_EFORMAT, "tokenizer.json: line", "truncated");
    expect_fail("[1,2]", 5, GN_EFORMAT, "top level", "array at the top");
    expect_variant_fail("\"type\":\"BPE\"", "\"type\":\"Unigram\"", GN_EUNSUP, "Unigram");
    expect_variant_fail("\"type\":\"BPE\"", "\"type\":7", GN_EFORMAT, "model.type");
    expect_variant_fail("\"vocab\":{\"a\":0,", "\"vocab\":[0],\"x\":{\"a\":0,", GN_EFORMAT,
                        "model.vocab must be an object");
    expect_variant_fail("\"a\":0,", "\"a\":\"zero\",", GN_EFORMAT, "model.vocab[\"a\"]");
    expect_variant_fail("\"a\":0,", "\"a\":-4,", GN_EFORMAT, "model.vocab[\"a\"]");
    expect_variant_fail("\"a\":0,", "\"a\":99999999999,", GN_EFORMAT, "model.vocab[\"a\"]");
    expect_variant_fail("\"merges\":[\"a b\"]", "\"merges\":{}", GN_EFORMAT, "model.merges");
    expect_variant_fail("\"merges\":[\"a b\"]", "\"merges\":[\"a z\"]", GN_EFORMAT,
                        "model.merges[0]: token \"z\"");
    expect_variant_fail("\"merges\":[\"a b\"]", "\"merges\":[\"b a\"]", GN_EFORMAT,
                        "merged token \"ba\"");
    expect_variant_fail("\"merges\":[\"a b\"]", "\"merges\":[\"ab\"]", GN_EFORMAT,
                        "model.merges[0]");
    expect_variant_fail("\"merges\":[\"a b\"]", "\"merges\":[[1,2]]", GN_EFORMAT,
                        "model.merges[0]");
    expect_variant_fail("\"merges\":[\"a b\"]", "\"merges\":[[\"a\",\"b\"],[\"a\"]]", GN_EFORMAT,
                        "model.merges[1]");
    expect_variant_fail("\"type\":\"BPE\"", "\"type\":\"BPE\",\"dropout\":0.1", GN_EUNSUP,
                        "dropout");
    expect_variant_fail("\"type\":\"BPE\"", "\"type\":\"BPE\",\"unk_token\":\"<unk>\"", GN_EFORMAT,
                        "unk_token");
    expect_variant_fail("\"type\":\"BPE\"", "\"type\":\"BPE\",\"byte_fallback\":1", GN_EFORMAT,
                        "model.byte_fallback must be a boolean");
    expect_variant_fail("\"type\":\"ByteLevel\",\"add_prefix_space\"",
                        "\"type\":\"Whitespace\",\"add_prefix_space\"", GN_EUNSUP,
                        "pre_tokenizer.type \"Whitespace\"");
    expect_variant_fail("\"pre_tokenizer\":{\"type\":\"ByteLevel\"",
                        "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a\"},"
                        "\"behavior\":\"Isolated\",\"x\":\"ByteLevel\"",
                        GN_EFORMAT, "pre_tokenizer.pattern.Regex");
    expect_variant_fail("\"pre_tokenizer\":{\"type\":\"ByteLevel\"",
                        "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},"
                        "\"behavior\":\"Sideways\",\"x\":\"ByteLevel\"",
                        GN_EFORMAT, "behavior \"Sideways\"");
    expect_variant_fail("\"normalizer\":null", "\"normalizer\":{\"type\":\"Lowercase\"}", GN_EUNSUP,
                        "normalizer.type \"Lowercase\"");
    expect_variant_fail("\"normalizer\":null", "\"normalizer\":{\"type\":\"Sequence\"}", GN_EFORMAT,
                        "normalizer.normalizers");
    expect_variant_fail("\"decoder\":{\"type\":\"ByteLevel\"}", "\"decoder\":{\"type\":\"WordPiece\"}",
                        GN_EUNSUP, "decoder.type \"WordPiece\"");
    expect_variant_fail("\"added_tokens\":[{\"id\":5,\"content\":\"<s>\"",
                        "\"added_tokens\":[{\"id\":5,\"content\":7", GN_EFORMAT,
                        "added_tokens[0].content");
    expect_variant_fail("\"added_tokens\":[", "\"added_tokens\":{\"x\":[", GN_EFORMAT, "");
    expect_variant_fail("\"ids\":[5]", "\"ids\":[77]", GN_ERANGE, "special_tokens[\"<s>\"].ids[0]");
    expect_variant_fail("\"type\":\"TemplateProcessing\"", "\"type\":\"Magic\"", GN_EUNSUP,
                        "post_processor.type \"Magic\"");
    /* files */
    t = gn_tok_load("/nonexistent/dir", &err);
    CHECK(!t && err.code == GN_ENOTFOUND && strstr(err.msg, "/nonexistent/dir"), "missing dir: %s",
          err.msg);
}

/* ---- allocation failures ---- */

static void alloc_loop(const char *name) {
    char p[4096];
    size_t tl = 0, cl = 0;
    snprintf(p, sizeof p, "%s/%s/tokenizer.json", g_dir, name);
    char *tj = slurp(p, &tl);
    snprintf(p, sizeof p, "%s/%s/tokenizer_config.json", g_dir, name);
    char *cj = slurp(p, &cl);
    CHECK(tj && cj, "read %s", name);
    if (!tj || !cj) goto out;
    gn_err err = {0};
    int failures = 0, wrong = 0;
    long n;
    for (n = 0; n < 100000; n++) {
        gn_alloc_fail_after(n);
        gn_tokenizer *t = gn_tok_load_mem(tj, tl, cj, cl, &err);
        long used = gn_alloc_fail_after(-1);
        if (!t) {
            failures++;
            if (err.code != GN_ENOMEM) {
                wrong++;
                fprintf(stderr, "load failure %ld: code %d \"%s\"\n", n, err.code, err.msg);
            }
            continue;
        }
        gn_tok_free(t);
        if (used <= n) break; /* nothing failed: every allocation point was covered */
    }
    CHECK(failures > 10 && wrong == 0, "%s: %d injected load failures, %d with a wrong code (%s)",
          name, failures, wrong, err.msg);
    gn_tokenizer *t = gn_tok_load_mem(tj, tl, cj, cl, &err);
    CHECK(t != NULL, "%s reload", name);
    if (!t) goto out;
    static const char text[] = "<|bos|>Hello <mask> world [tool] 12 <sep>  ﬁx the café 😀\n<s>x";
    int efail = 0, dfail = 0, sfail = 0;
    for (n = 0; n < 100000; n++) {
        int32_t *ids = NULL;
        int ni = 0;
        gn_alloc_fail_after(n);
        int rc = gn_tok_encode(t, text, sizeof text - 1, 1, &ids, &ni, &err);
        long used = gn_alloc_fail_after(-1);
        if (rc) {
            efail += rc != GN_ENOMEM;
            continue;
        }
        char *out = NULL;
        size_t ol;
        for (long m = 0; m < 100000; m++) {
            gn_alloc_fail_after(m);
            int rc2 = gn_tok_decode(t, ids, ni, 0, &out, &ol, &err);
            long u2 = gn_alloc_fail_after(-1);
            if (rc2) {
                dfail += rc2 != GN_ENOMEM;
                continue;
            }
            gn_free(out);
            if (u2 <= m) break;
        }
        for (long m = 0; m < 100000; m++) {
            gn_alloc_fail_after(m);
            gn_tok_stream *s = gn_tok_stream_create(t, 0, &err);
            int bad = !s;
            for (int k = 0; k < ni && s && !bad; k++) {
                const char *o;
                size_t ol2;
                if (gn_tok_stream_push(s, ids[k], &o, &ol2, &err)) bad = 1;
            }
            long u2 = gn_alloc_fail_after(-1);
            if (bad) sfail += err.code != GN_ENOMEM;
            gn_tok_stream_free(s);
            if (!bad && u2 <= m) break;
        }
        gn_free(ids);
        if (used <= n) break;
    }
    CHECK(efail == 0 && dfail == 0 && sfail == 0, "%s: wrong codes under failing allocations",
          name);
    gn_tok_free(t);
out:
    free(tj);
    free(cj);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s TOKENIZERS_DIR\n", argv[0]);
        return 2;
    }
    g_dir = argv[1];
    test_malformed();
    alloc_loop("tiny_bytelevel");
    alloc_loop("tiny_spm");
    test_real();
    GN_TEST_MAIN_END();
}
