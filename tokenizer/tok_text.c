#define _GNU_SOURCE /* memmem */
/* tok_text.c — everything that happens to text before the BPE model:
 * normalizers (Prepend, Replace, Unicode normal forms through ICU), added-token
 * splitting (leftmost-longest, with lstrip/rstrip/single_word) and the
 * pre-tokenizers (Split with PCRE2 regexes, ByteLevel, Metaspace, Digits),
 * each mirroring the Hugging Face `tokenizers` semantics. */
#include <string.h>
#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include "tok_internal.h"

/* ---- regexes ---- */

/* Oniguruma's \s (what the reference uses) is the Unicode White_Space
 * property; PCRE2's \s under UCP also matches U+180E. Spell it out. */
#define WS_SET                                                                                 \
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}" \
    "\\x{202F}\\x{205F}\\x{3000}"

int tk_compile_regex(pcre2_code **re, int *jit, const char *pat, size_t len,
                     pcre2_compile_context *cctx, gn_err *err) {
    tk_buf b = {0};
    int in_class = 0, class_start = 0;
    for (size_t i = 0; i < len; i++) {
        char c = pat[i];
        int rc = 0;
        if (c == '\\' && i + 1 < len) {
            char d = pat[++i];
            if (d == 's')
                rc = tk_buf_put(&b, in_class ? WS_SET : "[" WS_SET "]",
                                strlen(in_class ? WS_SET : "[" WS_SET "]"));
            else if (d == 'S' && !in_class)
                rc = tk_buf_put(&b, "[^" WS_SET "]", strlen("[^" WS_SET "]"));
            else {
                char two[2] = {c, d};
                rc = tk_buf_put(&b, two, 2);
            }
            class_start = 0;
        } else {
            if (c == '[' && !in_class) {
                in_class = 1;
                class_start = 1;
            } else if (c == '^' && class_start == 1) {
                class_start = 2;
            } else if (c == ']' && in_class && !class_start) {
                in_class = 0;
            } else {
                class_start = 0;
            }
            if (c == '[' && class_start == 1) class_start = 1;
            rc = tk_buf_put(&b, &c, 1);
        }
        if (rc) {
            tk_buf_free(&b);
            return gn_errf(err, GN_ENOMEM, "out of memory");
        }
    }
    int ec;
    PCRE2_SIZE eo;
    *re = pcre2_compile((PCRE2_SPTR)(b.p ? b.p : ""), b.n, PCRE2_UTF | PCRE2_UCP, &ec, &eo, cctx);
    tk_buf_free(&b);
    if (!*re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return gn_errf(err, ec == PCRE2_ERROR_HEAP_FAILED ? GN_ENOMEM : GN_EFORMAT,
                       "bad regex \"%.*s\": %s", (int)(len > 80 ? 80 : len), pat, (char *)msg);
    }
    *jit = pcre2_jit_compile(*re, PCRE2_JIT_COMPLETE) == 0;
    return 0;
}

/* Next match of re in s[from..n); 1 with [*ms, *me), 0 when none, < 0 error. */
static int re_next(pcre2_code *re, pcre2_match_data *md, const char *s, size_t n, size_t from,
                   size_t *ms, size_t *me, gn_err *err) {
    int rc = pcre2_match(re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc < 0) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(rc, msg, sizeof msg);
        return gn_errf(err, rc == PCRE2_ERROR_NOMEMORY ? GN_ENOMEM : GN_ERANGE,
                       "pre-tokenizer regex failed: %s", (char *)msg);
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    *ms = ov[0];
    *me = ov[1];
    return 1;
}

/* ---- normalizers ---- */

static int is_ascii(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80) return 0;
    return 1;
}

static int icu_normalize(int kind, const char *s, size_t n, tk_buf *out, gn_err *err) {
    UErrorCode st = U_ZERO_ERROR;
    const UNormalizer2 *nz = kind == TK_NORM_NFC    ? unorm2_getNFCInstance(&st)
                             : kind == TK_NORM_NFD  ? unorm2_getNFDInstance(&st)
                             : kind == TK_NORM_NFKC ? unorm2_getNFKCInstance(&st)
                                                    : unorm2_getNFKDInstance(&st);
    if (U_FAILURE(st)) return gn_errf(err, GN_EUNSUP, "ICU normalizer: %s", u_errorName(st));
    if (n > INT32_MAX / 4) return gn_errf(err, GN_ERANGE, "text too long to normalize");
    int rc = GN_ENOMEM;
    int32_t cap16 = (int32_t)n + 1, len16 = 0, cap2 = 0, len2 = 0;
    UChar *u16 = gn_malloc((size_t)cap16 * sizeof(UChar)), *n16 = NULL;
    if (!u16) goto fail;
    u_strFromUTF8(u16, cap16, &len16, s, (int32_t)n, &st);
    if (U_FAILURE(st)) goto icu_fail;
    cap2 = len16 + 16;
    for (int tries = 0; tries < 2; tries++) {
        n16 = gn_malloc((size_t)cap2 * sizeof(UChar));
        if (!n16) goto fail;
        st = U_ZERO_ERROR;
        len2 = unorm2_normalize(nz, u16, len16, n16, cap2, &st);
        if (st != U_BUFFER_OVERFLOW_ERROR) break;
        gn_free(n16);
        n16 = NULL;
        cap2 = len2 + 1;
    }
    if (U_FAILURE(st) || !n16) goto icu_fail;
    if (tk_buf_reserve(out, (size_t)len2 * 3 + 1)) goto fail;
    int32_t len8 = 0;
    st = U_ZERO_ERROR;
    u_strToUTF8(out->p + out->n, (int32_t)(out->cap - out->n), &len8, n16, len2, &st);
    if (U_FAILURE(st)) goto icu_fail;
    out->n += (size_t)len8;
    out->p[out->n] = '\0';
    rc = 0;
    goto done;
icu_fail:
    rc = gn_errf(err, GN_EINVAL, "ICU normalization failed: %s", u_errorName(st));
done:
    gn_free(u16);
    gn_free(n16);
    return rc;
fail:
    gn_free(u16);
    gn_free(n16);
    return gn_errf(err, GN_ENOMEM, "out of memory");
}

/* Non-overlapping, leftmost literal replacement (HF Replace with a String). */
int tk_replace_lit(const char *s, size_t n, const char *pat, size_t plen, const char *to,
                   size_t tlen, tk_buf *out) {
    size_t i = 0;
    while (i < n) {
        const char *hit = plen && plen <= n - i ? memmem(s + i, n - i, pat, plen) : NULL;
        size_t end = hit ? (size_t)(hit - s) : n;
        if (tk_buf_put(out, s + i, end - i)) return GN_ENOMEM;
        if (!hit) break;
        if (tk_buf_put(out, to, tlen)) return GN_ENOMEM;
        i = end + plen;
    }
    return 0;
}

int tk_normalize(const gn_tokenizer *t, const char *s, size_t n, tk_buf *out, gn_err *err) {
    tk_buf a = {0}, b = {0};
    out->n = 0;
    if (tk_buf_put(&a, s, n)) goto oom;
    for (int i = 0; i < t->n_norm; i++) {
        const tk_norm *z = &t->norm[i];
        b.n = 0;
        if (tk_buf_reserve(&b, 1)) goto oom;
        b.p[0] = '\0';
        switch (z->kind) {
        case TK_NORM_PREPEND:
            if (a.n && (tk_buf_put(&b, z->a, z->alen) || tk_buf_put(&b, a.p, a.n))) goto oom;
            break;
        case TK_NORM_REPLACE:
            if (tk_replace_lit(a.p, a.n, z->a, z->alen, z->b, z->blen, &b)) goto oom;
            break;
        default:
            if (is_ascii(a.p, a.n)) {
                if (tk_buf_put(&b, a.p, a.n)) goto oom;
            } else {
                int rc = icu_normalize(z->kind, a.p, a.n, &b, err);
                if (rc) {
                    tk_buf_free(&a);
                    tk_buf_free(&b);
                    return rc;
                }
            }
        }
        tk_buf tmp = a;
        a = b;
        b = tmp;
    }
    if (tk_buf_put(out, a.p, a.n)) goto oom;
    tk_buf_free(&a);
    tk_buf_free(&b);
    return 0;
oom:
    tk_buf_free(&a);
    tk_buf_free(&b);
    return gn_errf(err, GN_ENOMEM, "out of memory");
}

/* ---- added tokens ---- */

static int is_word_cp(uint32_t cp) {
    if (cp == '_') return 1;
    if (u_hasBinaryProperty((UChar32)cp, UCHAR_ALPHABETIC)) return 1;
    int8_t ty = u_charType((UChar32)cp);
    return ty == U_DECIMAL_DIGIT_NUMBER || ty == U_LETTER_NUMBER || ty == U_OTHER_NUMBER;
}

static int is_space_cp(uint32_t cp) { return u_isUWhiteSpace((UChar32)cp); }

/* Start of the last char ending at end (end > 0). */
static size_t char_start_before(const char *s, size_t end) {
    size_t i = end - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    return i;
}

int tk_split_added(const gn_tokenizer *t, const tk_matcher *m, const char *s, size_t n,
                   tk_ids *segs, gn_err *err) {
    size_t start_offset = 0, i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        int best = -1;
        size_t best_len = 0;
        for (int32_t k = m->start[c]; k < m->start[c + 1]; k++) {
            const tk_added *a = &t->added[m->idx[k]];
            const char *p = m->normalized ? a->ns : a->s;
            size_t l = m->normalized ? a->nlen : a->len;
            if (l > best_len && l <= n - i && memcmp(p, s + i, l) == 0) {
                best = m->idx[k];
                best_len = l;
                break; /* candidates are sorted longest first */
            }
        }
        if (best < 0) {
            i++;
            continue;
        }
        const tk_added *a = &t->added[best];
        size_t ms = i, me = i + best_len;
        i = me; /* matches never overlap */
        if (a->single_word) {
            int start_space = 1;
            if (ms > 0) {
                uint32_t cp;
                tk_utf8_dec((const unsigned char *)s + char_start_before(s, ms), &cp);
                start_space = !is_word_cp(cp);
            }
            int stop_space = 1;
            if (me < n) {
                uint32_t cp;
                tk_utf8_dec((const unsigned char *)s + me, &cp);
                stop_space = !is_word_cp(cp);
            }
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = ms;
            while (ns > 0) {
                size_t cs = char_start_before(s, ns);
                uint32_t cp;
                tk_utf8_dec((const unsigned char *)s + cs, &cp);
                if (!is_space_cp(cp)) break;
                ns = cs;
            }
            ms = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip) {
            while (me < n) {
                uint32_t cp;
                int l = tk_utf8_dec((const unsigned char *)s + me, &cp);
                if (!is_space_cp(cp)) break;
                me += (size_t)l;
            }
        }
        if (start_offset < ms && (tk_ids_push(segs, (int32_t)start_offset) ||
                                  tk_ids_push(segs, (int32_t)ms) || tk_ids_push(segs, -1)))
            goto oom;
        if (tk_ids_push(segs, (int32_t)ms) || tk_ids_push(segs, (int32_t)me) ||
            tk_ids_push(segs, a->id))
            goto oom;
        start_offset = me;
    }
    if (start_offset < n && (tk_ids_push(segs, (int32_t)start_offset) ||
                             tk_ids_push(segs, (int32_t)n) || tk_ids_push(segs, -1)))
        goto oom;
    return 0;
oom:
    return gn_errf(err, GN_ENOMEM, "out of memory");
}

/* ---- pre-tokenizers ---- */

/* Appends (start, end, is_match) for every piece of s: the regex/literal
 * matches and the gaps between them, like HF's Pattern::find_matches. */
static int find_matches(const tk_pretok *p, struct tk_enc *e, const char *s, size_t n,
                        tk_ids *out, gn_err *err) {
    size_t prev = 0, from = 0;
    if (p->kind == TK_PT_DIGITS) {
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            int l = tk_utf8_dec((const unsigned char *)s + i, &cp);
            int8_t ty = u_charType((UChar32)cp);
            if (ty == U_DECIMAL_DIGIT_NUMBER || ty == U_LETTER_NUMBER || ty == U_OTHER_NUMBER) {
                if (prev < i && (tk_ids_push(out, (int32_t)prev) || tk_ids_push(out, (int32_t)i) ||
                                 tk_ids_push(out, 0)))
                    goto oom;
                if (tk_ids_push(out, (int32_t)i) || tk_ids_push(out, (int32_t)(i + (size_t)l)) ||
                    tk_ids_push(out, 1))
                    goto oom;
                prev = i + (size_t)l;
            }
            i += (size_t)l;
        }
    } else {
        while (from < n) {
            size_t ms = 0, me = 0;
            if (p->re) {
                int rc = re_next(p->re, e->md, s, n, from, &ms, &me, err);
                if (rc < 0) return rc;
                if (!rc) break;
            } else {
                const char *hit = p->lit_len && p->lit_len <= n - from
                                      ? memmem(s + from, n - from, p->lit, p->lit_len)
                                      : NULL;
                if (!hit) break;
                ms = (size_t)(hit - s);
                me = ms + p->lit_len;
            }
            if (prev != ms && (tk_ids_push(out, (int32_t)prev) || tk_ids_push(out, (int32_t)ms) ||
                               tk_ids_push(out, 0)))
                goto oom;
            if (tk_ids_push(out, (int32_t)ms) || tk_ids_push(out, (int32_t)me) ||
                tk_ids_push(out, 1))
                goto oom;
            prev = me;
            if (me == ms) { /* empty match: step over one character */
                int l = me < n ? tk_utf8_len((const unsigned char *)s + me, n - me) : 1;
                from = me + (size_t)(l ? l : 1);
            } else {
                from = me;
            }
        }
    }
    if (prev != n &&
        (tk_ids_push(out, (int32_t)prev) || tk_ids_push(out, (int32_t)n) || tk_ids_push(out, 0)))
        goto oom;
    return 0;
oom:
    return gn_errf(err, GN_ENOMEM, "out of memory");
}

/* Applies a SplitDelimiterBehavior in place on the (start, end, flag) list. */
static void apply_behavior(tk_ids *v, int behavior, int invert) {
    int32_t *p = v->p;
    size_t n = v->n / 3, w = 0;
    if (invert)
        for (size_t i = 0; i < n; i++) p[3 * i + 2] = !p[3 * i + 2];
    if (behavior == TK_SPLIT_ISOLATED) return;
    if (behavior == TK_SPLIT_REMOVED) {
        for (size_t i = 0; i < n; i++)
            if (!p[3 * i + 2]) {
                memmove(&p[3 * w], &p[3 * i], 3 * sizeof *p);
                w++;
            }
    } else if (behavior == TK_SPLIT_MERGED_PREV) {
        int prev_match = 0;
        for (size_t i = 0; i < n; i++) {
            int m = p[3 * i + 2];
            if (m && !prev_match && w > 0) {
                p[3 * (w - 1) + 1] = p[3 * i + 1];
            } else {
                int32_t s0 = p[3 * i], s1 = p[3 * i + 1];
                p[3 * w] = s0;
                p[3 * w + 1] = s1;
                p[3 * w + 2] = 0;
                w++;
            }
            prev_match = m;
        }
    } else if (behavior == TK_SPLIT_MERGED_NEXT) {
        /* walk backwards, building the result from the end */
        int prev_match = 0;
        size_t top = n; /* result occupies p[3*top .. 3*n) */
        for (size_t ii = n; ii-- > 0;) {
            int m = p[3 * ii + 2];
            int32_t s0 = p[3 * ii], s1 = p[3 * ii + 1];
            if (m && !prev_match && top < n) {
                p[3 * top] = s0;
            } else {
                top--;
                p[3 * top] = s0;
                p[3 * top + 1] = s1;
                p[3 * top + 2] = 0;
            }
            prev_match = m;
        }
        w = n - top;
        memmove(p, &p[3 * top], 3 * w * sizeof *p);
    } else { /* CONTIGUOUS */
        int prev_match = 0;
        for (size_t i = 0; i < n; i++) {
            int m = p[3 * i + 2];
            if (m == prev_match && w > 0) {
                p[3 * (w - 1) + 1] = p[3 * i + 1];
            } else {
                int32_t s0 = p[3 * i], s1 = p[3 * i + 1];
                p[3 * w] = s0;
                p[3 * w + 1] = s1;
                p[3 * w + 2] = 0;
                w++;
            }
            prev_match = m;
        }
    }
    v->n = 3 * w;
}

typedef struct {
    struct tk_enc *e;
} tk_ptctx;

static int pretok_rec(const gn_tokenizer *t, tk_ptctx *c, int depth, const char *s, size_t n,
                      int at_origin, gn_err *err);

/* Splits s with step p and recurses into every non-empty piece. */
static int split_and_recurse(const gn_tokenizer *t, tk_ptctx *c, int depth, const tk_pretok *p,
                             int behavior, const char *s, size_t n, int at_origin,
                             int (*each)(const gn_tokenizer *, tk_ptctx *, int, const char *,
                                         size_t, int, gn_err *),
                             gn_err *err) {
    tk_ids *v = &c->e->spl[depth];
    v->n = 0;
    int rc = find_matches(p, c->e, s, n, v, err);
    if (rc) return rc;
    apply_behavior(v, behavior, p->invert);
    /* v is private to this depth: deeper levels use their own */
    for (size_t i = 0; i + 2 < v->n; i += 3) {
        size_t a = (size_t)v->p[i], b = (size_t)v->p[i + 1];
        if (a >= b) continue;
        rc = each(t, c, depth, s + a, b - a, at_origin && a == 0, err);
        if (rc) return rc;
    }
    return 0;
}

static int next_level(const gn_tokenizer *t, tk_ptctx *c, int depth, const char *s, size_t n,
                      int at_origin, gn_err *err) {
    return pretok_rec(t, c, depth + 1, s, n, at_origin, err);
}

/* ByteLevel: map every byte of the piece to its GPT-2 character. */
static int bytelevel_piece(const gn_tokenizer *t, tk_ptctx *c, int depth, const char *s,
                           size_t n, int at_origin, gn_err *err) {
    tk_buf *b = &c->e->scratch[depth];
    b->n = 0;
    if (tk_buf_reserve(b, 2 * n + 1)) return gn_errf(err, GN_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        uint16_t cp = tk_byte_to_cp[(unsigned char)s[i]];
        if (cp < 0x80) {
            b->p[b->n++] = (char)cp;
        } else {
            b->p[b->n++] = (char)(0xC0 | cp >> 6);
            b->p[b->n++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    return pretok_rec(t, c, depth + 1, b->p, b->n, at_origin, err);
}

static int pretok_rec(const gn_tokenizer *t, tk_ptctx *c, int depth, const char *s, size_t n,
                      int at_origin, gn_err *err) {
    if (n == 0) return 0;
    if (depth == t->n_pre) return tk_bpe_word(t, c->e, s, n, err);
    const tk_pretok *p = &t->pre[depth];
    tk_buf *pre = &c->e->pre[depth];
    switch (p->kind) {
    case TK_PT_SPLIT:
        return split_and_recurse(t, c, depth, p, p->behavior, s, n, at_origin, next_level, err);
    case TK_PT_DIGITS:
        return split_and_recurse(t, c, depth, p,
                                 p->individual_digits ? TK_SPLIT_ISOLATED : TK_SPLIT_CONTIGUOUS, s,
                                 n, at_origin, next_level, err);
    case TK_PT_BYTELEVEL:
        if (p->add_prefix_space && s[0] != ' ') {
            pre->n = 0;
            if (tk_buf_put(pre, " ", 1) || tk_buf_put(pre, s, n))
                return gn_errf(err, GN_ENOMEM, "out of memory");
            s = pre->p;
            n = pre->n;
        }
        if (p->re)
            return split_and_recurse(t, c, depth, p, TK_SPLIT_ISOLATED, s, n, at_origin,
                                     bytelevel_piece, err);
        return bytelevel_piece(t, c, depth, s, n, at_origin, err);
    case TK_PT_METASPACE: {
        /* spaces become the replacement first; the prefix is added after, only
         * when the result does not already start with it */
        tk_buf *tmp = &c->e->scratch[depth];
        tmp->n = 0;
        if (tk_replace_lit(s, n, " ", 1, p->repl, (size_t)p->repl_len, tmp))
            return gn_errf(err, GN_ENOMEM, "out of memory");
        pre->n = 0;
        int add = p->prepend == 1 || (p->prepend == 2 && at_origin);
        if (add &&
            !(tmp->n >= (size_t)p->repl_len && memcmp(tmp->p, p->repl, (size_t)p->repl_len) == 0) &&
            tk_buf_put(pre, p->repl, (size_t)p->repl_len))
            return gn_errf(err, GN_ENOMEM, "out of memory");
        if (tk_buf_put(pre, tmp->p, tmp->n)) return gn_errf(err, GN_ENOMEM, "out of memory");
        if (!p->split) return pretok_rec(t, c, depth + 1, pre->p, pre->n, at_origin, err);
        tk_pretok lit = *p;
        lit.re = NULL;
        lit.lit = (char *)p->repl;
        lit.lit_len = (size_t)p->repl_len;
        lit.invert = 0;
        return split_and_recurse(t, c, depth, &lit, TK_SPLIT_MERGED_NEXT, pre->p, pre->n,
                                 at_origin, next_level, err);
    }
    }
    return gn_errf(err, GN_EUNSUP, "unknown pre-tokenizer");
}

int tk_pretokenize_and_model(const gn_tokenizer *t, struct tk_enc *e, const char *s, size_t n,
                             int at_origin, gn_err *err) {
    tk_ptctx c;
    memset(&c, 0, sizeof c);
    c.e = e;
    return pretok_rec(t, &c, 0, s, n, at_origin, err);
}
