/* The transparent scorers (eval/scorers.h): exact expected scores on fixed
 * texts with the shipped AFINN-165 list and with a small inline lexicon, the
 * word and sentence rules, malformed lexicons. */
#include <string.h>

#include "gn_alloc.h"
#include "gn_test.h"
#include "scorers.h"

static gn_eval_scores sc(const gn_eval_lexicon *lx, const char *t) { return gn_eval_score(lx, t, strlen(t)); }

int main(void) {
    gn_err err = {0};
    char path[1024];
    gn_eval_lexicon *lx = gn_eval_lexicon_load(gn_t_src(path, sizeof path, "eval/afinn-165.tsv"), &err);
    CHECK(lx != NULL, "load afinn: %s", err.msg);
    if (!lx) GN_TEST_MAIN_END();
    CHECK(gn_eval_lexicon_size(lx) == 3352, "AFINN-165 single words: %d", gn_eval_lexicon_size(lx));
    CHECK(gn_eval_lexicon_value(lx, "good", 4) == 3, "good");
    CHECK(gn_eval_lexicon_value(lx, "terrible", 8) == -3, "terrible");
    CHECK(gn_eval_lexicon_value(lx, "table", 5) == 0, "absent word");

    /* good 3 + happy 3 + love 3 - hate 3 = 6; 10 words in 2 sentences. */
    gn_eval_scores s = sc(lx, "A good and happy day. I love it, I hate");
    CHECK(s.sentiment == 6.0, "sentiment %g", s.sentiment);
    CHECK(s.n_words == 10 && s.n_sentences == 2, "words %d sentences %d", s.n_words, s.n_sentences);
    CHECK(s.n_lexicon_words == 4, "lexicon words %d", s.n_lexicon_words);
    CHECK(s.words_per_sentence == 5.0 && s.concise == -5.0, "wps %g concise %g", s.words_per_sentence, s.concise);

    /* Case folding, apostrophes/hyphens trimmed, hyphenated fallback, non-ASCII separates. */
    s = sc(lx, "WONDERFUL! 'Sad' war-peace cover-up --bad-- joy\xc3\xa9terrible");
    /* wonderful 4, sad -2, war-peace -> war -2 + peace 2 = 0, cover-up -3, bad -3, joy 3, terrible -3 */
    CHECK(s.sentiment == -4.0, "sentiment %g", s.sentiment);
    CHECK(s.n_words == 7 && s.n_sentences == 2, "words %d sentences %d", s.n_words, s.n_sentences);

    /* Sentence rules: '.', '!', '?', blank line; empty sentences do not count. */
    s = sc(lx, "One two three... Four?! \n\nfive six\n\nseven\neight nine");
    CHECK(s.n_words == 9 && s.n_sentences == 4, "words %d sentences %d", s.n_words, s.n_sentences);
    CHECK(s.concise == -2.25, "concise %g", s.concise);
    s = sc(lx, "  ... !? ");
    CHECK(s.n_words == 0 && s.n_sentences == 0 && s.concise == 0.0 && s.sentiment == 0.0, "no words");
    s = gn_eval_score(lx, "", 0);
    CHECK(s.n_words == 0 && s.concise == 0.0, "empty text");
    s = gn_eval_score(NULL, "good day", 8);
    CHECK(s.sentiment == 0.0 && s.n_words == 2 && s.concise == -2.0, "no lexicon");
    /* A concise and a verbose text: the concise one scores higher. */
    gn_eval_scores c = sc(lx, "He left. She stayed. It rained.");
    gn_eval_scores v = sc(lx, "He left the house early in the morning while she stayed at home and it rained all day");
    CHECK(c.concise == -2.0 && v.concise == -18.0 && c.concise > v.concise, "concise %g verbose %g", c.concise, v.concise);
    gn_eval_lexicon_free(lx);

    /* An inline lexicon: upper case stored lower, comments and blank lines skipped. */
    lx = gn_eval_lexicon_parse("# comment\n\nNice\t2\nawful\t-4\n", "inline", &err);
    CHECK(lx && gn_eval_lexicon_size(lx) == 2, "inline lexicon: %s", err.msg);
    if (lx) {
        s = sc(lx, "nice, NICE and awful");
        CHECK(s.sentiment == 0.0 && s.n_lexicon_words == 3, "inline sentiment %g", s.sentiment);
    }
    gn_eval_lexicon_free(lx);

    const char *bad[] = {"word\n", "word\tx\n", "\t3\n", "a\t1\na\t2\n", "w\t999\n", "w\t3 \n"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err.msg[0] = '\0';
        lx = gn_eval_lexicon_parse(bad[i], "bad", &err);
        CHECK(lx == NULL && strncmp(err.msg, "bad", 3) == 0, "bad lexicon %zu accepted (%s)", i, err.msg);
        gn_eval_lexicon_free(lx);
    }
    err.msg[0] = '\0';
    CHECK(gn_eval_lexicon_load("/nonexistent/lexicon.tsv", &err) == NULL && err.msg[0], "missing file");

    /* Every allocation of parse and load may fail: NULL with a message, nothing leaked (ASan). */
    int oom_ok = 1, n_points = 0;
    for (long k = 0; k < 64; k++) {
        gn_alloc_fail_after(k);
        err.msg[0] = '\0';
        gn_eval_lexicon *a = gn_eval_lexicon_parse("x\t1\ny\t-2\n", "oom", &err);
        gn_eval_lexicon *b = gn_eval_lexicon_load(path, &err);
        long made = gn_alloc_fail_after(-1);
        int done = a && b;
        if ((!a || !b) && !err.msg[0]) oom_ok = 0;
        gn_eval_lexicon_free(a);
        gn_eval_lexicon_free(b);
        n_points++;
        if (done && made <= k) break;
    }
    CHECK(oom_ok && n_points > 3, "allocation failure paths (%d points)", n_points);
    gn_eval_lexicon_free(NULL);
    GN_TEST_MAIN_END();
}
