/* scorers.c — sentiment (AFINN-165 lexicon sum) and conciseness (minus words
 * per sentence); see scorers.h for the exact definitions. */
#include "scorers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gn_alloc.h"

#define WORD_MAX 64

typedef struct entry {
    char word[WORD_MAX];
    int value;
} entry;

struct gn_eval_lexicon {
    entry *e; /* sorted by word */
    int n;
};

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const entry *)a)->word, ((const entry *)b)->word);
}

gn_eval_lexicon *gn_eval_lexicon_parse(const char *text, const char *name, gn_err *err) {
    gn_eval_lexicon *lx = gn_calloc(1, sizeof *lx);
    size_t cap = 0;
    if (!lx) goto oom;
    for (int c = 0; text[c]; c++) cap += text[c] == '\n';
    lx->e = gn_calloc(cap + 1, sizeof *lx->e);
    if (!lx->e) goto oom;
    int line = 0;
    for (const char *p = text; *p;) {
        const char *eol = strchr(p, '\n');
        size_t ll = eol ? (size_t)(eol - p) : strlen(p);
        line++;
        if (ll > 0 && p[0] != '#') {
            const char *tab = memchr(p, '\t', ll);
            size_t wl = tab ? (size_t)(tab - p) : 0;
            char num[16];
            size_t nl = tab ? ll - wl - 1 : 0;
            if (!tab || wl == 0 || wl >= WORD_MAX || nl == 0 || nl >= sizeof num) {
                gn_errf(err, GN_EFORMAT, "%s:%d: expected word<TAB>value", name, line);
                goto fail;
            }
            memcpy(num, tab + 1, nl);
            num[nl] = '\0';
            char *end = NULL;
            long v = strtol(num, &end, 10);
            if (*end || v < -100 || v > 100) {
                gn_errf(err, GN_EFORMAT, "%s:%d: bad value '%s'", name, line, num);
                goto fail;
            }
            entry *e = &lx->e[lx->n++];
            for (size_t k = 0; k < wl; k++) {
                char ch = p[k];
                e->word[k] = ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
            }
            e->word[wl] = '\0';
            e->value = (int)v;
        }
        p += ll + (eol ? 1 : 0);
    }
    qsort(lx->e, (size_t)lx->n, sizeof *lx->e, cmp_entry);
    for (int i = 1; i < lx->n; i++)
        if (!strcmp(lx->e[i - 1].word, lx->e[i].word)) {
            gn_errf(err, GN_EFORMAT, "%s: duplicate word '%s'", name, lx->e[i].word);
            goto fail;
        }
    return lx;
oom:
    gn_errf(err, GN_ENOMEM, "%s: out of memory", name);
fail:
    gn_eval_lexicon_free(lx);
    return NULL;
}

gn_eval_lexicon *gn_eval_lexicon_load(const char *path, gn_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        gn_errf(err, GN_EIO, "cannot open lexicon %s", path);
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = gn_malloc(cap);
    while (buf) {
        if (n + 1 >= cap) {
            if (cap >= (size_t)64 << 20) { /* a lexicon, not a corpus */
                gn_free(buf);
                fclose(f);
                gn_errf(err, GN_EFORMAT, "lexicon %s: larger than 64 MiB", path);
                return NULL;
            }
            char *nb = gn_realloc(buf, cap * 2);
            if (!nb) {
                gn_free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    fclose(f);
    if (!buf) {
        gn_errf(err, GN_ENOMEM, "lexicon %s: out of memory", path);
        return NULL;
    }
    buf[n] = '\0';
    gn_eval_lexicon *lx = memchr(buf, '\0', n) ? NULL : gn_eval_lexicon_parse(buf, path, err);
    if (!lx && memchr(buf, '\0', n)) gn_errf(err, GN_EFORMAT, "lexicon %s: contains a NUL byte", path);
    gn_free(buf);
    return lx;
}

void gn_eval_lexicon_free(gn_eval_lexicon *lx) {
    if (!lx) return;
    gn_free(lx->e);
    gn_free(lx);
}

int gn_eval_lexicon_size(const gn_eval_lexicon *lx) { return lx ? lx->n : 0; }

int gn_eval_lexicon_value(const gn_eval_lexicon *lx, const char *word, size_t len) {
    if (!lx || len == 0 || len >= WORD_MAX) return 0;
    entry key;
    memcpy(key.word, word, len);
    key.word[len] = '\0';
    const entry *e = bsearch(&key, lx->e, (size_t)lx->n, sizeof *lx->e, cmp_entry);
    return e ? e->value : 0;
}

static int is_word_char(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '\'' ||
           c == '-';
}

/* Valence of word w[0..n) (lower case, trimmed): whole word, else the sum of
 * its hyphen-separated parts. */
static int valence(const gn_eval_lexicon *lx, const char *w, size_t n) {
    int v = gn_eval_lexicon_value(lx, w, n);
    if (v || !memchr(w, '-', n)) return v;
    int s = 0;
    for (size_t a = 0; a < n;) {
        size_t b = a;
        while (b < n && w[b] != '-') b++;
        if (b > a) s += gn_eval_lexicon_value(lx, w + a, b - a);
        a = b + 1;
    }
    return s;
}

gn_eval_scores gn_eval_score(const gn_eval_lexicon *lx, const char *text, size_t len) {
    gn_eval_scores s = {0};
    const unsigned char *t = (const unsigned char *)text;
    int words_in_sentence = 0;
    for (size_t i = 0; i < len;) {
        unsigned char c = t[i];
        if (is_word_char(c)) {
            size_t j = i;
            while (j < len && is_word_char(t[j])) j++;
            size_t a = i, b = j;
            while (a < b && (t[a] == '\'' || t[a] == '-')) a++;
            while (b > a && (t[b - 1] == '\'' || t[b - 1] == '-')) b--;
            if (b > a) {
                char w[WORD_MAX];
                s.n_words++;
                words_in_sentence++;
                if (b - a < WORD_MAX) {
                    for (size_t k = a; k < b; k++)
                        w[k - a] = t[k] >= 'A' && t[k] <= 'Z' ? (char)(t[k] - 'A' + 'a') : (char)t[k];
                    int v = valence(lx, w, b - a);
                    s.sentiment += v;
                    s.n_lexicon_words += v != 0;
                }
            }
            i = j;
            continue;
        }
        int end = c == '.' || c == '!' || c == '?' || (c == '\n' && i + 1 < len && t[i + 1] == '\n');
        if (end && words_in_sentence) {
            s.n_sentences++;
            words_in_sentence = 0;
        }
        i++;
    }
    if (words_in_sentence) s.n_sentences++;
    if (s.n_sentences) {
        s.words_per_sentence = (double)s.n_words / s.n_sentences;
        s.concise = -s.words_per_sentence;
    }
    return s;
}
