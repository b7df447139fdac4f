/* gn_make_tokenizer_from_text (engine/model_maker.h), the tokenizer learner
 * behind genarm-make-tokenizer and the demo models: the vocabulary size, the
 * learned merges (a frequent word becomes one token), determinism, round-trip
 * through the project's tokenizer, and the committed demo tokenizer is what the
 * learner makes from nothing but merges (loads, 1,458 ids, BOS/EOS). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gn_alloc.h"
#include "gn_test.h"
#include "model_maker.h"
#include "tokenizer.h"

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long l = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)l + 1);
    if (b && fread(b, 1, (size_t)l, f) != (size_t)l) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) b[l] = '\0';
    *n = (size_t)l;
    return b;
}

int main(void) {
    char text[4096] = "";
    for (int i = 0; i < 40; i++) strcat(text, "the fortune cookie says: good luck, fortune favours the bold. ");
    char d1[] = "/tmp/gn_eval_tokXXXXXX", d2[] = "/tmp/gn_eval_tokXXXXXX";
    CHECK(mkdtemp(d1) && mkdtemp(d2), "mkdtemp");
    gn_err err = {0};
    int nv = 0, bos = 0, eos = 0, nv2 = 0;
    int rc = gn_make_tokenizer_from_text(d1, text, strlen(text), 40, 512, &nv, &bos, &eos, &err);
    CHECK(rc == 0, "learn: %s", err.msg);
    /* This text has 37 mergeable pairs in all: learning stops there, every word one token. */
    CHECK(nv == 256 + 37 + 2 && bos == nv - 2 && eos == nv - 1, "vocab %d bos %d eos %d", nv, bos, eos);
    int want_bos = bos;
    rc = gn_make_tokenizer_from_text(d2, text, strlen(text), 40, 512, &nv2, &bos, &eos, &err);
    char p1[256], p2[256];
    snprintf(p1, sizeof p1, "%s/tokenizer.json", d1);
    snprintf(p2, sizeof p2, "%s/tokenizer.json", d2);
    size_t n1 = 0, n2 = 0;
    char *a = slurp(p1, &n1), *b = slurp(p2, &n2);
    CHECK(rc == 0 && a && b && n1 == n2 && !memcmp(a, b, n1), "two runs differ");
    free(a);
    free(b);

    gn_tokenizer *t = gn_tok_load(d1, &err);
    CHECK(t != NULL, "load learned tokenizer: %s", err.msg);
    if (t) {
        int32_t *ids = NULL;
        int n = 0;
        const char *s = " fortune";
        CHECK(gn_tok_encode(t, s, strlen(s), 0, &ids, &n, &err) == 0 && n == 1,
              "' fortune' is %d tokens (a frequent word should be one)", n);
        gn_free(ids);
        s = "The bold cookie, unseen words: zebra!";
        CHECK(gn_tok_encode(t, s, strlen(s), 1, &ids, &n, &err) == 0 && n > 2 && ids[0] == want_bos, "encode");
        char *back = NULL;
        size_t bl = 0;
        CHECK(gn_tok_decode(t, ids, n, 1, &back, &bl, &err) == 0 && bl == strlen(s) && !memcmp(back, s, bl),
              "round trip: '%s'", back ? back : "");
        gn_free(back);
        gn_free(ids);
        gn_tok_free(t);
    }
    for (int i = 0; i < 2; i++) {
        char f[300];
        const char *dir = i ? d2 : d1;
        snprintf(f, sizeof f, "%s/tokenizer.json", dir);
        remove(f);
        snprintf(f, sizeof f, "%s/tokenizer_config.json", dir);
        remove(f);
        rmdir(dir);
    }

    CHECK(gn_make_tokenizer_from_text("/tmp", "", 0, 10, 512, &nv, &bos, &eos, &err) == GN_EINVAL, "empty text");
    CHECK(gn_make_tokenizer_from_text("/tmp", "ab", 2, 5000, 512, &nv, &bos, &eos, &err) == GN_EINVAL,
          "too many merges");

    /* The committed demo tokenizer. */
    char path[1024];
    t = gn_tok_load(gn_t_src(path, sizeof path, "models/base"), &err);
    CHECK(t && gn_tok_n_vocab(t) == 1458 && gn_tok_bos(t) == 1456 && gn_tok_eos(t) == 1457,
          "models/base tokenizer: %s", t ? "wrong sizes" : err.msg);
    gn_tok_free(t);
    GN_TEST_MAIN_END();
}
