/* tok_internal.h — what the tokenizer's .c files share; not a public header.
 *
 * Layout of the tokenizer (immutable after gn_tok_load*):
 *   tok_util.c    growable buffers, UTF-8, hash maps (string -> id, pair -> merge)
 *   tok_load.c    tokenizer.json / tokenizer_config.json -> struct gn_tokenizer
 *   tok_text.c    normalizers, added-token splitting, pre-tokenizers (PCRE2)
 *   tok_bpe.c     the BPE model (priority-queue merges) and gn_tok_encode
 *   tok_decode.c  decoder chain, gn_tok_decode and the streaming decoder
 *   sha256.c      fingerprint for gn_tok_hash */
#ifndef GN_TOK_INTERNAL_H
#define GN_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdint.h>

#include "gn_alloc.h"
#include "gn_err.h"
#include "tokenizer.h"

/* ---- growable buffers (tok_util.c) ---- */
typedef struct {
    char *p;
    size_t n, cap;
} tk_buf;
int tk_buf_reserve(tk_buf *b, size_t extra); /* 0 or GN_ENOMEM */
int tk_buf_put(tk_buf *b, const void *p, size_t n);
void tk_buf_free(tk_buf *b);

typedef struct {
    int32_t *p;
    size_t n, cap;
} tk_ids;
int tk_ids_push(tk_ids *v, int32_t id);
void tk_ids_free(tk_ids *v);

/* ---- UTF-8 (tok_util.c) ---- */
/* Length of the valid UTF-8 sequence at s[0..n) (1..4), or 0 if invalid. */
int tk_utf8_len(const unsigned char *s, size_t n);
/* Decodes the (valid) sequence at s; returns its length, code point in *cp. */
int tk_utf8_dec(const unsigned char *s, uint32_t *cp);
int tk_utf8_enc(uint32_t cp, char out[4]);
/* Offset of the first invalid byte, or (size_t)-1 when all of s is valid. */
size_t tk_utf8_check(const char *s, size_t n);
/* Appends s with invalid sequences replaced by U+FFFD, the way Rust's
 * String::from_utf8_lossy does (one U+FFFD per maximal invalid subpart).
 * *complete_out receives the output length not counting a trailing sequence
 * that is merely incomplete (could still become valid with more bytes). */
int tk_utf8_lossy(tk_buf *out, const char *s, size_t n, size_t *complete_out);

/* ---- string -> id map; keys are not copied (they must outlive the map) ---- */
typedef struct {
    const char *s;
    uint32_t len;
    int32_t val;
} tk_sent;
typedef struct {
    uint32_t *slot; /* 0 = empty, else entry index + 1 */
    size_t mask;
    tk_sent *ent;
    size_t n, cap;
} tk_strmap;
int tk_strmap_init(tk_strmap *m, size_t expected);
/* Inserts or overwrites. */
int tk_strmap_put(tk_strmap *m, const char *s, size_t len, int32_t val);
/* Value or -1. */
int32_t tk_strmap_get(const tk_strmap *m, const char *s, size_t len);
void tk_strmap_free(tk_strmap *m);

/* ---- (left id, right id) -> (rank, merged id) ---- */
typedef struct {
    uint64_t *key; /* UINT64_MAX = empty */
    uint32_t *rank;
    int32_t *new_id;
    size_t mask;
} tk_pairmap;
int tk_pairmap_init(tk_pairmap *m, size_t expected);
void tk_pairmap_put(tk_pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id);
/* 1 and (*rank, *new_id) when present, else 0. */
static inline int tk_pairmap_get(const tk_pairmap *m, int32_t a, int32_t b, uint32_t *rank,
                                 int32_t *new_id) {
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = (size_t)((k * 0x9E3779B97F4A7C15ull) >> 20) & m->mask;
    for (;;) {
        uint64_t kk = m->key[i];
        if (kk == k) {
            *rank = m->rank[i];
            *new_id = m->new_id[i];
            return 1;
        }
        if (kk == UINT64_MAX) return 0;
        i = (i + 1) & m->mask;
    }
}
void tk_pairmap_free(tk_pairmap *m);

/* ---- tokenizer pieces ---- */
enum { TK_NORM_PREPEND, TK_NORM_REPLACE, TK_NORM_NFC, TK_NORM_NFD, TK_NORM_NFKC, TK_NORM_NFKD };
typedef struct {
    int kind;
    char *a; /* PREPEND: the text; REPLACE: the literal pattern */
    size_t alen;
    char *b; /* REPLACE: the content */
    size_t blen;
} tk_norm;

enum { TK_PT_SPLIT, TK_PT_BYTELEVEL, TK_PT_METASPACE, TK_PT_DIGITS };
enum { TK_SPLIT_REMOVED, TK_SPLIT_ISOLATED, TK_SPLIT_MERGED_PREV, TK_SPLIT_MERGED_NEXT,
       TK_SPLIT_CONTIGUOUS };
typedef struct {
    int kind;
    pcre2_code *re;   /* SPLIT with a Regex pattern, BYTELEVEL with use_regex */
    int jit;          /* JIT compiled successfully */
    char *lit;        /* SPLIT with a String pattern */
    size_t lit_len;
    int behavior;     /* TK_SPLIT_* */
    int invert;
    int add_prefix_space; /* BYTELEVEL */
    /* METASPACE */
    char repl[4];
    int repl_len;
    int prepend;      /* 0 never, 1 always, 2 first */
    int split;
    int individual_digits; /* DIGITS */
} tk_pretok;

enum { TK_DEC_BYTELEVEL, TK_DEC_REPLACE, TK_DEC_BYTEFALLBACK, TK_DEC_FUSE, TK_DEC_STRIP,
       TK_DEC_METASPACE };
typedef struct {
    int kind;
    char *pat, *content; /* REPLACE */
    size_t pat_len, content_len;
    char strip_ch[4];    /* STRIP: the character, UTF-8 */
    int strip_ch_len;
    int start, stop;     /* STRIP */
    char repl[4];        /* METASPACE */
    int repl_len;
    int prepend;         /* METASPACE: prepend_scheme != never */
} tk_dec;

typedef struct {
    char *s;     /* content (owned) */
    size_t len;
    char *ns;    /* content after the normalizer (owned; == NULL when not normalized) */
    size_t nlen;
    int32_t id;
    uint8_t special, lstrip, rstrip, single_word, normalized;
} tk_added;

/* Added-token matcher: candidates indexed by first byte, longest first. */
typedef struct {
    int32_t start[257]; /* CSR offsets into idx */
    int32_t *idx;       /* indexes into t->added */
    int normalized;     /* match t->added[i].ns instead of .s */
} tk_matcher;

struct gn_tokenizer {
    /* model (BPE) */
    int n_vocab;           /* max id + 1 over model and added tokens */
    char *arena;           /* every model vocab string, back to back */
    uint32_t *tok_off;     /* (n_vocab) offset into arena, or of added token */
    uint32_t *tok_len;     /* (n_vocab) UINT32_MAX when the id has no token */
    const char **tok_ptr;  /* (n_vocab) the string decode uses for the id */
    tk_strmap vocab;       /* model vocab string -> id */
    tk_pairmap merges;
    int n_merges;
    int32_t unk_id;
    int byte_fallback, fuse_unk, ignore_merges;
    int merge_cross_meta;  /* some merge joins "..x" + "\u2581..", x != U+2581 */
    int meta_chunks;       /* encode may cut words before U+2581 (see tok_bpe.c) */
    char *cont_prefix, *eow_suffix; /* NULL when absent */
    size_t cont_prefix_len, eow_suffix_len;
    int32_t byte_id[256];  /* byte fallback "<0xXX>" ids, -1 if missing */
    int32_t char1_id[128]; /* ids of 1-byte ASCII tokens (fast path), -1 if missing */

    /* added tokens */
    tk_added *added;
    int n_added;
    tk_strmap added_map;   /* content -> id */
    tk_matcher m_raw, m_norm;
    uint8_t *is_special;   /* (n_vocab) */

    tk_norm *norm;
    int n_norm;
    tk_pretok *pre;
    int n_pre;
    tk_dec *dec;
    int n_dec;
    pcre2_general_context *gctx; /* PCRE2 allocations go through gn_malloc */
    pcre2_compile_context *cctx;

    /* post-processor: ids around the sequence when add_special */
    int32_t *tpl_pre, *tpl_post;
    int n_tpl_pre, n_tpl_post;

    int32_t bos, eos;
    char *chat_template;
    char hash[65];
};

/* GPT-2 byte <-> unicode table (tok_util.c). */
extern const uint16_t tk_byte_to_cp[256];
/* Byte value of code point cp under the GPT-2 map, or -1. */
int tk_cp_to_byte(uint32_t cp);

/* tok_text.c */
int tk_normalize(const gn_tokenizer *t, const char *s, size_t n, tk_buf *out, gn_err *err);
/* Splits text into segments: [start, end) with id >= 0 for an added token,
 * -1 for ordinary text. Appends (start, end, id) triples to segs. */
int tk_split_added(const gn_tokenizer *t, const tk_matcher *m, const char *s, size_t n,
                   tk_ids *segs, gn_err *err);
/* Pre-tokenizes s (already normalized) and feeds every pre-token to the model,
 * appending ids to e->out. at_origin: s starts at offset 0 of the input (for
 * Metaspace's prepend_scheme "first"). */
struct tk_enc;
int tk_pretokenize_and_model(const gn_tokenizer *t, struct tk_enc *e, const char *s, size_t n,
                             int at_origin, gn_err *err);
int tk_compile_regex(pcre2_code **re, int *jit, const char *pattern, size_t len,
                     pcre2_compile_context *cctx, gn_err *err);
/* Non-overlapping leftmost literal replacement of pat by to, appended to out. */
int tk_replace_lit(const char *s, size_t n, const char *pat, size_t plen, const char *to,
                   size_t tlen, tk_buf *out);

/* tok_bpe.c */
typedef struct {
    int32_t id;
    int32_t prev, next;
    uint32_t len;
} tk_sym;
typedef struct {
    uint32_t rank;
    int32_t pos;
    int32_t new_id;
} tk_merge;
#define TK_MAX_DEPTH 4 /* pre-tokenizer steps after flattening Sequences */
struct tk_enc {
    tk_ids out;
    tk_buf scratch[TK_MAX_DEPTH]; /* per pre-tokenizer depth: transformed pieces */
    tk_buf pre[TK_MAX_DEPTH];     /* per depth: prefixed/replaced input */
    tk_ids spl[TK_MAX_DEPTH];     /* per depth: (start, end, flag) split lists */
    tk_buf word;
    tk_sym *sym;
    size_t sym_cap;
    tk_merge *heap;
    size_t heap_cap;
    pcre2_match_data *md;
};
int tk_bpe_word(const gn_tokenizer *t, struct tk_enc *e, const char *w, size_t n, gn_err *err);

/* tok_decode.c */
int tk_decode_tokens(const gn_tokenizer *t, const int32_t *ids, int n, int skip_special,
                     int at_start, tk_buf *out, size_t *stable_len, int *strip_open,
                     int *n_passed, gn_err *err);


#endif
