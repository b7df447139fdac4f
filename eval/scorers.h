/* scorers.h — the transparent scoring functions that label the demo preference
 * pairs and judge the evaluation (issue 5). Both are plain text statistics, no
 * model involved, so anyone can recompute a label by hand.
 *
 * Words: maximal runs of ASCII letters, digits, apostrophes and hyphens,
 * lower-cased, with leading/trailing apostrophes and hyphens stripped (runs
 * that become empty are not words).
 *
 * Sentiment: the sum of the AFINN-165 valences (-5..+5) of the words of the
 * text (eval/afinn-165.tsv). A hyphenated word missing from the lexicon counts
 * as the sum of its hyphen-separated parts. Words not in the lexicon count 0.
 *
 * Conciseness: minus the mean number of words per sentence. Sentences end at
 * '.', '!', '?' or a blank line (two newlines); a trailing unterminated piece
 * with words counts as a sentence; sentences without words are not counted. A
 * text with no words scores 0.
 *
 * Thread-safety: a loaded lexicon is immutable and may be shared by threads. */
#ifndef GN_EVAL_SCORERS_H
#define GN_EVAL_SCORERS_H

#include <stddef.h>

#include "gn_err.h"

typedef struct gn_eval_lexicon gn_eval_lexicon;

/* Loads "word<TAB>integer" lines ('#' lines and blank lines skipped; words are
 * stored lower-cased, at most 63 bytes; values must lie in [-100, 100]). A
 * malformed line fails with "path:line: ...". NULL and err on failure. */
gn_eval_lexicon *gn_eval_lexicon_load(const char *path, gn_err *err);
/* The same from a NUL-terminated buffer (name is used in messages). */
gn_eval_lexicon *gn_eval_lexicon_parse(const char *text, const char *name, gn_err *err);
void gn_eval_lexicon_free(gn_eval_lexicon *lx); /* NULL is a no-op */
int gn_eval_lexicon_size(const gn_eval_lexicon *lx);
/* Valence of one (already lower-case) word, 0 if absent. */
int gn_eval_lexicon_value(const gn_eval_lexicon *lx, const char *word, size_t len);

typedef struct gn_eval_scores {
    double sentiment;          /* sum of valences */
    int n_words;               /* words in the text */
    int n_sentences;           /* sentences with at least one word */
    int n_lexicon_words;       /* words with a nonzero valence */
    double words_per_sentence; /* n_words / n_sentences, 0 when no words */
    double concise;            /* -words_per_sentence */
} gn_eval_scores;

/* Scores text[0..len) (any bytes; non-ASCII bytes separate words). lx may be
 * NULL (sentiment 0). Never fails. */
gn_eval_scores gn_eval_score(const gn_eval_lexicon *lx, const char *text, size_t len);

#endif
