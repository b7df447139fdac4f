/* tok_maker.c — generates a small, valid byte-level BPE tokenizer in the
 * Hugging Face tokenizer.json format (GPT-2 style), for the model maker.
 *
 * Vocabulary: ids 0..255 are the 256 bytes (in GPT-2's byte-to-unicode
 * spelling, id = byte value), then the tokens created by BPE training on the
 * embedded English text below, then "<|bos|>" and "<|eos|>" as added special
 * tokens. Training: pre-tokenize with (an ASCII rendering of) the GPT-2 split
 * regex, count words, repeatedly merge the most frequent adjacent pair (ties:
 * smallest (left id, right id)). Everything is deterministic. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "gn_alloc.h"
#include "model_maker.h"

static const char k_text[] =
    "The morning was cold and clear, and the river ran fast under the old stone bridge. "
    "People walked to the market with baskets of bread, apples, cheese and fresh fish. "
    "A small boy asked his mother why the water never stopped moving, and she told him that "
    "every river is always on its way to the sea. He thought about that for a long time.\n\n"
    "In the afternoon the sky turned grey. The wind came down from the hills and the first "
    "drops of rain fell on the roofs of the town. Shopkeepers pulled their awnings in, and the "
    "children ran home laughing. It's the kind of weather that makes you want a warm kitchen, "
    "a pot of soup and a good book.\n\n"
    "To make a simple vegetable soup, you'll need two onions, three carrots, a few potatoes, "
    "some celery, salt, pepper and water. Cut the vegetables into small pieces. Warm a little "
    "oil in a large pot, add the onions and cook them slowly until they are soft. Then add the "
    "rest of the vegetables and enough water to cover them. Let the soup simmer for about forty "
    "minutes, and taste it before you serve it. We've found that a spoon of butter at the end "
    "makes it even better.\n\n"
    "Learning a new language takes patience. At first the words feel strange in your mouth, and "
    "you can't follow what people are saying. But if you listen every day, read short stories and "
    "speak without fear of mistakes, you will understand more each week. Most teachers agree "
    "that practice matters more than talent. They'd tell you to be kind to yourself and to keep "
    "going.\n\n"
    "The history of the town goes back more than eight hundred years. It began as a few houses "
    "near the crossing of two roads, where traders stopped to rest their horses. Over the "
    "centuries it grew into a busy place with a church, a school, a library and a market square. "
    "In 1850 the railway arrived, and in 1920 the first cars appeared on its narrow streets.\n\n"
    "Computers follow instructions written by people. A program is a list of such instructions: "
    "read a number, add it to another number, store the result, repeat until the work is done. "
    "Good programs are clear and simple, and they check their inputs before they trust them. "
    "When something goes wrong, a careful program reports the error instead of hiding it.\n\n"
    "\"Where are you going?\" she asked. \"To the station,\" he said. \"The last train leaves at "
    "nine, and I don't want to miss it.\" She smiled and gave him an umbrella. \"Take this. "
    "I'm sure it will rain again before you get there.\"\n\n"
    "Gardens change with the seasons. In spring the trees are full of flowers and the birds "
    "build their nests. In summer the days are long and the tomatoes turn red in the sun. In "
    "autumn the leaves fall, and in winter the ground sleeps under the frost, waiting for the "
    "light to return. A patient gardener learns to work with the weather, not against it.\n\n"
    "Questions and answers: What is the capital of France? Paris. How many days are in a week? "
    "Seven. What do bees make? Honey. Which planet is the largest? Jupiter. Why is the sky blue? "
    "Because the air scatters blue light from the sun more than the other colours.\n";

static int is_letter(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80; }
static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static int is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
static int is_other(unsigned char c) { return !is_letter(c) && !is_digit(c) && !is_space(c); }

/* Length of the pre-token starting at s[i] (GPT-2: 's|'t|'re|'ve|'m|'ll|'d|
 * ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+). */
static size_t pretoken_len(const unsigned char *s, size_t n, size_t i) {
    static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    for (size_t k = 0; k < 7; k++) {
        size_t l = strlen(contractions[k]);
        if (i + l <= n && !memcmp(s + i, contractions[k], l)) return l;
    }
    size_t j = i;
    if (s[j] == ' ' && j + 1 < n && !is_space(s[j + 1])) j++;
    int (*cls)(unsigned char) = is_letter(s[j]) ? is_letter : is_digit(s[j]) ? is_digit
                                : is_other(s[j]) ? is_other : NULL;
    if (cls) {
        while (j < n && cls(s[j])) j++;
        return j - i;
    }
    while (j < n && is_space(s[j])) j++;
    if (j < n && j - i > 1) j--; /* \s+(?!\S): leave the last space to the next word */
    return j - i;
}

typedef struct word {
    const unsigned char *s;
    size_t len;
    long count;
    int *sym;
    int n_sym;
} word;

static int cmp_word(const void *a, const void *b) {
    const word *x = a, *y = b;
    size_t m = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, m);
    return c ? c : (x->len < y->len ? -1 : x->len > y->len);
}

typedef struct pair_count {
    uint64_t key; /* left << 32 | right */
    long count;
} pair_count;

static int cmp_pair(const void *a, const void *b) {
    uint64_t x = ((const pair_count *)a)->key, y = ((const pair_count *)b)->key;
    return x < y ? -1 : x > y;
}

/* GPT-2 bytes_to_unicode: the code point that spells byte b. */
static unsigned byte_cp(unsigned b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174)) return b;
    unsigned n = 0;
    for (unsigned x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174))) n++;
    return 256 + n;
}

/* Byte-level spelling of raw bytes, as UTF-8 (gn_malloc'd). */
static char *byte_level(const unsigned char *b, size_t n) {
    char *out = gn_malloc(n * 3 + 1), *o = out;
    if (!out) return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned cp = byte_cp(b[i]);
        if (cp < 0x80) *o++ = (char)cp;
        else {
            *o++ = (char)(0xc0 | (cp >> 6));
            *o++ = (char)(0x80 | (cp & 0x3f));
        }
    }
    *o = '\0';
    return out;
}

typedef struct trainer {
    unsigned char **tok;   /* raw bytes of each token */
    size_t *tok_len;
    int n_tok, cap_tok;
    int (*merges)[2];
    int n_merges, cap_merges;
} trainer;

static int find_or_add(trainer *t, const unsigned char *b, size_t n) {
    for (int i = 0; i < t->n_tok; i++)
        if (t->tok_len[i] == n && !memcmp(t->tok[i], b, n)) return i;
    if (t->n_tok == t->cap_tok) return -1;
    unsigned char *c = gn_malloc(n);
    if (!c) return -1;
    memcpy(c, b, n);
    t->tok[t->n_tok] = c;
    t->tok_len[t->n_tok] = n;
    return t->n_tok++;
}

/* Learns merges until `target` new tokens exist or nothing is left to merge. */
static int train(trainer *t, word *w, int n_words, int target) {
    size_t total = 0;
    for (int i = 0; i < n_words; i++) total += (size_t)w[i].n_sym;
    pair_count *pc = gn_malloc(sizeof *pc * (total + 1));
    if (!pc) return GN_ENOMEM;
    while (t->n_tok - 256 < target) {
        size_t np = 0;
        for (int i = 0; i < n_words; i++)
            for (int k = 0; k + 1 < w[i].n_sym; k++) {
                pc[np].key = (uint64_t)w[i].sym[k] << 32 | (uint32_t)w[i].sym[k + 1];
                pc[np++].count = w[i].count;
            }
        if (np == 0) break;
        qsort(pc, np, sizeof *pc, cmp_pair);
        uint64_t best = 0;
        long best_count = 0;
        for (size_t a = 0; a < np;) {
            size_t b = a;
            long c = 0;
            while (b < np && pc[b].key == pc[a].key) c += pc[b++].count;
            if (c > best_count) { /* strictly greater: ties keep the smallest key */
                best_count = c;
                best = pc[a].key;
            }
            a = b;
        }
        int l = (int)(best >> 32), r = (int)(best & 0xffffffffu);
        size_t ln = t->tok_len[l], rn = t->tok_len[r];
        unsigned char buf[512];
        if (ln + rn > sizeof buf) break;
        memcpy(buf, t->tok[l], ln);
        memcpy(buf + ln, t->tok[r], rn);
        int id = find_or_add(t, buf, ln + rn);
        if (id < 0 || t->n_merges == t->cap_merges) {
            gn_free(pc);
            return GN_ENOMEM;
        }
        t->merges[t->n_merges][0] = l;
        t->merges[t->n_merges][1] = r;
        t->n_merges++;
        for (int i = 0; i < n_words; i++) {
            int o = 0;
            for (int k = 0; k < w[i].n_sym; k++) {
                if (k + 1 < w[i].n_sym && w[i].sym[k] == l && w[i].sym[k + 1] == r) {
                    w[i].sym[o++] = id;
                    k++;
                } else {
                    w[i].sym[o++] = w[i].sym[k];
                }
            }
            w[i].n_sym = o;
        }
    }
    gn_free(pc);
    return 0;
}

static json_t *added_token(int id, const char *content) {
    return json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", id, "content", content,
                     "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1);
}

static json_t *build_tokenizer_json(const trainer *t, int bos, int eos) {
    json_t *vocab = json_object(), *merges = json_array();
    if (!vocab || !merges) goto fail;
    for (int i = 0; i < t->n_tok; i++) {
        char *s = byte_level(t->tok[i], t->tok_len[i]);
        if (!s || json_object_set_new(vocab, s, json_integer(i)) != 0) {
            gn_free(s);
            goto fail;
        }
        gn_free(s);
    }
    for (int i = 0; i < t->n_merges; i++) {
        char *a = byte_level(t->tok[t->merges[i][0]], t->tok_len[t->merges[i][0]]);
        char *b = byte_level(t->tok[t->merges[i][1]], t->tok_len[t->merges[i][1]]);
        char *m = a && b ? gn_malloc(strlen(a) + strlen(b) + 2) : NULL;
        int bad = !m;
        if (m) {
            strcpy(m, a);
            strcat(m, " ");
            strcat(m, b);
            bad = json_array_append_new(merges, json_string(m)) != 0;
        }
        gn_free(a);
        gn_free(b);
        gn_free(m);
        if (bad) goto fail;
    }
    json_t *root = json_pack(
        "{s:s, s:n, s:n, s:[o,o], s:n,"
        " s:{s:s, s:b, s:b, s:b},"
        " s:{s:s, s:[{s:{s:s,s:i}},{s:{s:s,s:i}}],"
        "     s:[{s:{s:s,s:i}},{s:{s:s,s:i}},{s:{s:s,s:i}},{s:{s:s,s:i}}],"
        "     s:{s:{s:s, s:[i], s:[s]}}},"
        " s:{s:s, s:b, s:b, s:b},"
        " s:{s:s, s:n, s:n, s:n, s:n, s:b, s:b, s:b, s:o, s:o}}",
        "version", "1.0", "truncation", "padding", "added_tokens", added_token(bos, "<|bos|>"),
        added_token(eos, "<|eos|>"), "normalizer",
        "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 1,
        "post_processor", "type", "TemplateProcessing",
        "single", "SpecialToken", "id", "<|bos|>", "type_id", 0, "Sequence", "id", "A", "type_id", 0,
        "pair", "SpecialToken", "id", "<|bos|>", "type_id", 0, "Sequence", "id", "A", "type_id", 0,
        "SpecialToken", "id", "<|bos|>", "type_id", 1, "Sequence", "id", "B", "type_id", 1,
        "special_tokens", "<|bos|>", "id", "<|bos|>", "ids", bos, "tokens", "<|bos|>",
        "decoder", "type", "ByteLevel", "add_prefix_space", 1, "trim_offsets", 1, "use_regex", 1,
        "model", "type", "BPE", "dropout", "unk_token", "continuing_subword_prefix",
        "end_of_word_suffix", "fuse_unk", 0, "byte_fallback", 0, "ignore_merges", 0, "vocab", vocab,
        "merges", merges);
    return root; /* json_pack stole vocab and merges ("o"), even on failure */
fail:
    json_decref(vocab);
    json_decref(merges);
    return NULL;
}

static const char k_chat_template[] =
    "{{ bos_token }}{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + "
    "message['content'] + eos_token + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|assistant|>\\n' }}{% endif %}";

static json_t *build_tokenizer_config(int bos, int eos, int max_len) {
    /* added_tokens_decoder is keyed by the id as a string. */
    char k1[16], k2[16];
    snprintf(k1, sizeof k1, "%d", bos);
    snprintf(k2, sizeof k2, "%d", eos);
    json_t *dec = json_object();
    if (!dec || json_object_set_new(dec, k1, added_token(bos, "<|bos|>")) != 0 ||
        json_object_set_new(dec, k2, added_token(eos, "<|eos|>")) != 0) {
        json_decref(dec);
        return NULL;
    }
    return json_pack("{s:b, s:b, s:o, s:s, s:s, s:s, s:b, s:i, s:s}", "add_bos_token", 1,
                     "add_eos_token", 0, "added_tokens_decoder", dec, "bos_token", "<|bos|>",
                     "eos_token", "<|eos|>", "chat_template", k_chat_template,
                     "clean_up_tokenization_spaces", 0, "model_max_length", max_len,
                     "tokenizer_class", "PreTrainedTokenizerFast");
}

int gn_make_tokenizer(const char *dir, int n_merges, int model_max_length, int *n_vocab, int *bos,
                      int *eos, gn_err *err) {
    return gn_make_tokenizer_from_text(dir, k_text, sizeof k_text - 1, n_merges, model_max_length,
                                       n_vocab, bos, eos, err);
}

int gn_make_tokenizer_from_text(const char *dir, const char *text, size_t len, int n_merges,
                                int model_max_length, int *n_vocab, int *bos, int *eos,
                                gn_err *err) {
    if (n_merges < 0 || n_merges > 4000)
        return gn_errf(err, GN_EINVAL, "tokenizer merges %d out of range [0, 4000]", n_merges);
    if (!text || len == 0) return gn_errf(err, GN_EINVAL, "tokenizer maker: empty training text");
    if (len > ((size_t)256 << 20))
        return gn_errf(err, GN_ERANGE, "tokenizer maker: training text of %zu bytes exceeds 256 MiB", len);
    const unsigned char *s = (const unsigned char *)text;
    size_t n = len;
    int rc = 0, n_words = 0;
    word *w = gn_calloc(n, sizeof *w);
    int *syms = gn_malloc(sizeof *syms * n);
    trainer t = {0};
    t.cap_tok = 256 + n_merges;
    t.cap_merges = 4 * n_merges + 16;
    t.tok = gn_calloc((size_t)t.cap_tok, sizeof *t.tok);
    t.tok_len = gn_calloc((size_t)t.cap_tok, sizeof *t.tok_len);
    t.merges = gn_calloc((size_t)t.cap_merges, sizeof *t.merges);
    if (!w || !syms || !t.tok || !t.tok_len || !t.merges) {
        rc = gn_errf(err, GN_ENOMEM, "tokenizer maker: out of memory");
        goto done;
    }
    for (int b = 0; b < 256; b++) {
        unsigned char c = (unsigned char)b;
        if (find_or_add(&t, &c, 1) != b) {
            rc = gn_errf(err, GN_ENOMEM, "tokenizer maker: out of memory");
            goto done;
        }
    }
    for (size_t i = 0; i < n;) {
        size_t l = pretoken_len(s, n, i);
        w[n_words].s = s + i;
        w[n_words].len = l;
        w[n_words].count = 1;
        n_words++;
        i += l;
    }
    qsort(w, (size_t)n_words, sizeof *w, cmp_word);
    int u = 0;
    size_t used = 0;
    for (int i = 0; i < n_words; i++) {
        if (u && !cmp_word(&w[u - 1], &w[i])) {
            w[u - 1].count++;
            continue;
        }
        w[u] = w[i];
        w[u].sym = syms + used;
        w[u].n_sym = (int)w[u].len;
        for (size_t k = 0; k < w[u].len; k++) w[u].sym[k] = w[u].s[k];
        used += w[u].len;
        u++;
    }
    if ((rc = train(&t, w, u, n_merges)) != 0) {
        gn_errf(err, rc, "tokenizer maker: out of memory");
        goto done;
    }
    *bos = t.n_tok;
    *eos = t.n_tok + 1;
    *n_vocab = t.n_tok + 2;
    const size_t fl = JSON_INDENT(2) | JSON_PRESERVE_ORDER;
    rc = gn_fs_write_json(dir, "tokenizer.json", build_tokenizer_json(&t, *bos, *eos), fl, err);
    if (!rc)
        rc = gn_fs_write_json(dir, "tokenizer_config.json", build_tokenizer_config(*bos, *eos, model_max_length),
                              fl, err);
done:
    for (int i = 0; i < t.n_tok; i++) gn_free(t.tok[i]);
    gn_free(t.tok);
    gn_free(t.tok_len);
    gn_free(t.merges);
    gn_free(w);
    gn_free(syms);
    return rc;
}
