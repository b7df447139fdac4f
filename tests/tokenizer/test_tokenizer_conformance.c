/* test_tokenizer_conformance — our tokenizer against Hugging Face's.
 *
 * For Llama-2, Llama-3 and Qwen3 (and two small synthetic tokenizers that
 * cover the added-token flags, NFKC, Digits, Metaspace, unk), every fixture line (made by
 * gen_fixtures.js with HF `tokenizers`) holds a string, its ids with and
 * without special tokens, and the reference decodes of the first with and
 * without skip_special. Checks: both encodings, both decodes, and that the
 * streaming decoder's pieces are valid UTF-8 whose concatenation equals the
 * full decode. Any difference fails; the first few are printed.
 *
 * Usage: test_tokenizer_conformance TOKENIZERS_DIR FIXTURES_DIR */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gn_alloc.h"
#include "gn_test.h"
#include "tokenizer.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int valid_utf8(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        int k = c < 0x80 ? 0 : c >= 0xC2 && c <= 0xDF ? 1 : c >= 0xE0 && c <= 0xEF ? 2
                : c >= 0xF0 && c <= 0xF4 ? 3 : -1;
        if (k < 0 || i + (size_t)k >= n + (k ? 0 : 1)) return 0;
        for (int j = 1; j <= k; j++)
            if (i + (size_t)j >= n || (u[i + j] & 0xC0) != 0x80) return 0;
        i += (size_t)k + 1;
    }
    return 1;
}

static void print_ids(const char *what, const int32_t *ids, int n) {
    fprintf(stderr, "    %s (%d):", what, n);
    for (int i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

static int ids_from_json(json_t *arr, int32_t **out) {
    size_t n = json_array_size(arr);
    *out = malloc((n ? n : 1) * sizeof **out);
    for (size_t i = 0; i < n; i++) (*out)[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return (int)n;
}

/* Streams ids through gn_tok_stream and compares with want. */
static int stream_ok(const gn_tokenizer *t, const int32_t *ids, int n, int skip, const char *want,
                     size_t want_len) {
    gn_err err = {0};
    gn_tok_stream *s = gn_tok_stream_create(t, skip, &err);
    if (!s) return 0;
    char *acc = malloc(want_len + 64 * (size_t)n + 64);
    size_t at = 0, cap = want_len + 64 * (size_t)n + 64;
    int ok = 1;
    for (int i = 0; i <= n && ok; i++) {
        const char *o;
        size_t ol;
        int rc = i < n ? gn_tok_stream_push(s, ids[i], &o, &ol, &err)
                       : gn_tok_stream_flush(s, &o, &ol, &err);
        if (rc || !valid_utf8(o, ol) || at + ol > cap) {
            ok = 0;
            break;
        }
        memcpy(acc + at, o, ol);
        at += ol;
    }
    if (ok && (at != want_len || memcmp(acc, want, at) != 0)) ok = 0;
    free(acc);
    gn_tok_stream_free(s);
    return ok;
}

static void run(const char *tokdir, const char *fixdir, const char *name) {
    char path[4096];
    gn_err err = {0};
    snprintf(path, sizeof path, "%s/%s", tokdir, name);
    double t0 = now_s();
    gn_tokenizer *t = gn_tok_load(path, &err);
    double load_s = now_s() - t0;
    CHECK(t != NULL, "load %s: %s", path, err.msg);
    if (!t) return;
    snprintf(path, sizeof path, "%s/%s.jsonl", fixdir, name);
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL, "open %s", path);
    if (!f) {
        gn_tok_free(t);
        return;
    }
    char *line = NULL;
    size_t lcap = 0;
    ssize_t ll;
    int n_lines = 0, bad[6] = {0}, shown = 0;
    double enc_s = 0;
    size_t enc_bytes = 0;
    static const char *what[6] = {"encode(add_special=1)", "encode(add_special=0)",
                                  "decode(skip=0)", "decode(skip=1)", "stream(skip=0)",
                                  "stream(skip=1)"};
    while ((ll = getline(&line, &lcap, f)) > 0) {
        json_error_t je;
        json_t *o = json_loadb(line, (size_t)ll, JSON_ALLOW_NUL, &je);
        if (!o) {
            CHECK(0, "%s line %d: %s", path, n_lines + 1, je.text);
            break;
        }
        n_lines++;
        const char *s = json_string_value(json_object_get(o, "s"));
        size_t sl = json_string_length(json_object_get(o, "s"));
        int32_t *want[2];
        int nw[2];
        nw[0] = ids_from_json(json_object_get(o, "a"), &want[0]);
        nw[1] = ids_from_json(json_object_get(o, "n"), &want[1]);
        for (int k = 0; k < 2; k++) {
            int32_t *got = NULL;
            int ng = 0;
            double a = now_s();
            int rc = gn_tok_encode(t, s, sl, k == 0, &got, &ng, &err);
            enc_s += now_s() - a;
            enc_bytes += sl;
            if (rc || ng != nw[k] || memcmp(got, want[k], (size_t)ng * sizeof *got) != 0) {
                if (bad[k]++ < 5 && shown++ < 12) {
                    fprintf(stderr, "MISMATCH %s %s on \"%.*s\"%s (rc %d %s)\n", name, what[k],
                            (int)(sl > 200 ? 200 : sl), s, sl > 200 ? "..." : "", rc,
                            rc ? err.msg : "");
                    print_ids("expected", want[k], nw[k]);
                    if (!rc) print_ids("got", got, ng);
                }
            }
            gn_free(got);
        }
        for (int k = 0; k < 2; k++) {
            json_t *dv = json_object_get(o, k == 0 ? "d" : "k");
            const char *d = json_string_value(dv);
            size_t dl = json_string_length(dv);
            char *out = NULL;
            size_t ol = 0;
            int rc = gn_tok_decode(t, want[0], nw[0], k, &out, &ol, &err);
            if (rc || ol != dl || memcmp(out, d, dl) != 0) {
                if (bad[2 + k]++ < 5 && shown++ < 12)
                    fprintf(stderr, "MISMATCH %s %s on \"%.*s\": want \"%.*s\" got \"%.*s\"\n",
                            name, what[2 + k], (int)(sl > 100 ? 100 : sl), s,
                            (int)(dl > 100 ? 100 : dl), d, (int)(ol > 100 ? 100 : ol),
                            out ? out : "");
            }
            gn_free(out);
            if (!stream_ok(t, want[0], nw[0], k, d, dl)) {
                if (bad[4 + k]++ < 5 && shown++ < 12)
                    fprintf(stderr, "MISMATCH %s %s on \"%.*s\"\n", name, what[4 + k],
                            (int)(sl > 100 ? 100 : sl), s);
            }
        }
        free(want[0]);
        free(want[1]);
        json_decref(o);
    }
    free(line);
    fclose(f);
    CHECK(n_lines >= 2000, "%s: only %d fixture strings", name, n_lines);
    for (int k = 0; k < 6; k++)
        CHECK(bad[k] == 0, "%s: %s differs from the reference on %d of %d strings", name, what[k],
              bad[k], n_lines);
    printf("%s: %d strings, mismatches: enc+%d enc-%d dec%d deck%d stream%d streamk%d; "
           "load %.3f s, encode %.1f MB/s\n",
           name, n_lines, bad[0], bad[1], bad[2], bad[3], bad[4], bad[5], load_s,
           (double)enc_bytes / 1e6 / (enc_s > 0 ? enc_s : 1e-9));
    gn_tok_free(t);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s TOKENIZERS_DIR FIXTURES_DIR [name...]\n", argv[0]);
        return 2;
    }
    if (argc > 3) {
        for (int i = 3; i < argc; i++) run(argv[1], argv[2], argv[i]);
    } else {
        static const char *names[] = {"llama2", "llama3", "qwen3", "tiny_bytelevel", "tiny_spm"};
        for (size_t i = 0; i < sizeof names / sizeof *names; i++) run(argv[1], argv[2], names[i]);
    }
    GN_TEST_MAIN_END();
}
