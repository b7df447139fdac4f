/* tok_bpe.c — the BPE model and gn_tok_encode.
 *
 * Merging follows Hugging Face's Word::merge_all exactly: a binary min-heap of
 * candidate merges ordered by (rank, position), symbols kept in a doubly
 * linked list inside an array, stale heap entries skipped when popped. That is
 * O(n log n) in the word length, so a 10 kB word without spaces (Llama-2 has
 * no pre-tokenizer) costs milliseconds, not seconds. */
#define _GNU_SOURCE /* memmem */
#include <string.h>

#include "tok_internal.h"

static int merge_less(const tk_merge *a, const tk_merge *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(tk_merge *h, size_t *n, tk_merge m) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!merge_less(&m, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = m;
}

static tk_merge heap_pop(tk_merge *h, size_t *n) {
    tk_merge top = h[0], last = h[--*n];
    size_t i = 0, len = *n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const tk_merge *best = &last;
        if (l < len && merge_less(&h[l], best)) {
            m = l;
            best = &h[l];
        }
        if (r < len && merge_less(&h[r], best)) m = r;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (len) h[i] = last;
    return top;
}

static int add_sym(struct tk_enc *e, size_t *ns, int32_t id, uint32_t len) {
    if (*ns == e->sym_cap) {
        size_t cap = e->sym_cap ? e->sym_cap * 2 : 64, bytes;
        if (gn_size_mul(cap, sizeof *e->sym, &bytes)) return GN_ENOMEM;
        tk_sym *s = gn_realloc(e->sym, bytes);
        if (!s) return GN_ENOMEM;
        e->sym = s;
        e->sym_cap = cap;
    }
    size_t i = (*ns)++;
    e->sym[i] = (tk_sym){id, (int32_t)i - 1, -1, len};
    if (i > 0) e->sym[i - 1].next = (int32_t)i;
    return 0;
}

/* Looks up one character with the continuing-subword prefix / end-of-word
 * suffix applied as the reference does. */
static int32_t char_id(const gn_tokenizer *t, struct tk_enc *e, const char *c, size_t l,
                       int first, int last, const char **key, size_t *key_len) {
    int pre = !first && t->cont_prefix, suf = last && t->eow_suffix;
    if (!pre && !suf) {
        *key = c;
        *key_len = l;
        if (l == 1 && (unsigned char)c[0] < 128) return t->char1_id[(unsigned char)c[0]];
        return tk_strmap_get(&t->vocab, c, l);
    }
    tk_buf *w = &e->word;
    w->n = 0;
    if ((pre && tk_buf_put(w, t->cont_prefix, t->cont_prefix_len)) || tk_buf_put(w, c, l) ||
        (suf && tk_buf_put(w, t->eow_suffix, t->eow_suffix_len))) {
        *key = NULL;
        return -2;
    }
    *key = w->p;
    *key_len = w->n;
    return tk_strmap_get(&t->vocab, w->p, w->n);
}

static int bpe_core(const gn_tokenizer *t, struct tk_enc *e, const char *w, size_t n,
                    gn_err *err) {
    size_t ns = 0;
    int32_t unk = -1;
    uint32_t unk_len = 0;
    for (size_t i = 0; i < n;) {
        int l = tk_utf8_len((const unsigned char *)w + i, n - i);
        if (!l) l = 1; /* cannot happen: input was validated */
        const char *key;
        size_t key_len;
        int32_t id = char_id(t, e, w + i, (size_t)l, i == 0, i + (size_t)l == n, &key, &key_len);
        if (id == -2) goto oom;
        if (id >= 0) {
            if (unk >= 0) {
                if (add_sym(e, &ns, unk, unk_len)) goto oom;
                unk = -1;
            }
            if (add_sym(e, &ns, id, (uint32_t)l)) goto oom;
        } else {
            int done = 0;
            if (t->byte_fallback) {
                size_t k = 0;
                while (k < key_len && t->byte_id[(unsigned char)key[k]] >= 0) k++;
                if (k == key_len) {
                    /* (the reference leaves a pending unk in place here) */
                    for (k = 0; k < key_len; k++)
                        if (add_sym(e, &ns, t->byte_id[(unsigned char)key[k]], 1)) goto oom;
                    done = 1;
                }
            }
            if (!done) {
                if (t->unk_id < 0) {
                    uint32_t cp;
                    tk_utf8_dec((const unsigned char *)w + i, &cp);
                    return gn_errf(err, GN_EINVAL,
                                   "no vocabulary token for character U+%04X and no unk_token",
                                   (unsigned)cp);
                }
                if (unk < 0) {
                    unk = t->unk_id;
                    unk_len = (uint32_t)l;
                } else if (t->fuse_unk) {
                    unk_len += (uint32_t)l;
                } else {
                    if (add_sym(e, &ns, unk, unk_len)) goto oom;
                    unk = t->unk_id;
                    unk_len = (uint32_t)l;
                }
            }
        }
        i += (size_t)l;
    }
    if (unk >= 0 && add_sym(e, &ns, unk, unk_len)) goto oom;

    if (ns > 1) {
        if (e->heap_cap < ns * 2) {
            size_t cap = ns * 2, bytes;
            if (gn_size_mul(cap, sizeof *e->heap, &bytes)) goto oom;
            tk_merge *h = gn_realloc(e->heap, bytes);
            if (!h) goto oom;
            e->heap = h;
            e->heap_cap = cap;
        }
        tk_sym *s = e->sym;
        size_t hn = 0;
        for (size_t i = 0; i + 1 < ns; i++) {
            uint32_t rank;
            int32_t nid;
            if (tk_pairmap_get(&t->merges, s[i].id, s[i + 1].id, &rank, &nid))
                heap_push(e->heap, &hn, (tk_merge){rank, (int32_t)i, nid});
        }
        while (hn) {
            tk_merge top = heap_pop(e->heap, &hn);
            tk_sym *cur = &s[top.pos];
            if (cur->len == 0 || cur->next < 0) continue;
            tk_sym *right = &s[cur->next];
            uint32_t rank;
            int32_t nid;
            if (!tk_pairmap_get(&t->merges, cur->id, right->id, &rank, &nid) || nid != top.new_id)
                continue;
            cur->id = top.new_id;
            cur->len += right->len;
            cur->next = right->next;
            right->len = 0;
            if (cur->next >= 0) s[cur->next].prev = top.pos;
            /* the heap never holds more than one entry per adjacent pair plus
             * stale ones; make room before pushing two more */
            if (hn + 2 > e->heap_cap) {
                size_t cap = e->heap_cap * 2, bytes;
                if (gn_size_mul(cap, sizeof *e->heap, &bytes)) goto oom;
                tk_merge *h = gn_realloc(e->heap, bytes);
                if (!h) goto oom;
                e->heap = h;
                e->heap_cap = cap;
            }
            if (cur->prev >= 0 &&
                tk_pairmap_get(&t->merges, s[cur->prev].id, cur->id, &rank, &nid))
                heap_push(e->heap, &hn, (tk_merge){rank, cur->prev, nid});
            if (cur->next >= 0 && tk_pairmap_get(&t->merges, cur->id, s[cur->next].id, &rank, &nid))
                heap_push(e->heap, &hn, (tk_merge){rank, top.pos, nid});
        }
    }
    for (size_t i = 0; i < ns; i++)
        if (e->sym[i].len && tk_ids_push(&e->out, e->sym[i].id)) goto oom;
    return 0;
oom:
    return gn_errf(err, GN_ENOMEM, "out of memory");
}

#define META "\xE2\x96\x81" /* U+2581, the SentencePiece space */

int tk_bpe_word(const gn_tokenizer *t, struct tk_enc *e, const char *w, size_t n, gn_err *err) {
    if (t->ignore_merges) {
        int32_t id = tk_strmap_get(&t->vocab, w, n);
        if (id >= 0) return tk_ids_push(&e->out, id) ? gn_errf(err, GN_ENOMEM, "out of memory") : 0;
    }
    if (!t->meta_chunks) return bpe_core(t, e, w, n, err);
    /* Without a pre-tokenizer (Llama-2) the whole text is one word. When no
     * merge joins a symbol ending in something other than U+2581 to one that
     * starts with U+2581 (checked at load), no symbol can ever span such a
     * boundary, so merging each chunk on its own gives the same ids. */
    size_t start = 0, i = 1;
    while (i + 3 <= n) {
        const char *hit = memmem(w + i, n - i, META, 3);
        if (!hit) break;
        size_t p = (size_t)(hit - w);
        if (!(p >= 3 && memcmp(w + p - 3, META, 3) == 0)) {
            int rc = bpe_core(t, e, w + start, p - start, err);
            if (rc) return rc;
            start = p;
        }
        i = p + 3;
    }
    return bpe_core(t, e, w + start, n - start, err);
}

static void enc_free(struct tk_enc *e) {
    tk_ids_free(&e->out);
    for (int i = 0; i < TK_MAX_DEPTH; i++) {
        tk_buf_free(&e->scratch[i]);
        tk_buf_free(&e->pre[i]);
        tk_ids_free(&e->spl[i]);
    }
    tk_buf_free(&e->word);
    gn_free(e->sym);
    gn_free(e->heap);
    pcre2_match_data_free(e->md);
}

static int push_all(tk_ids *out, const int32_t *ids, int n) {
    for (int i = 0; i < n; i++)
        if (tk_ids_push(out, ids[i])) return GN_ENOMEM;
    return 0;
}

/* Normalizes one piece of ordinary text, splits out normalized added tokens,
 * pre-tokenizes and runs the model. */
static int encode_plain(const gn_tokenizer *t, struct tk_enc *e, const char *s, size_t n,
                        int at_origin, tk_buf *norm, tk_ids *segs, gn_err *err) {
    const char *ns = s;
    size_t nn = n;
    if (t->n_norm) {
        int rc = tk_normalize(t, s, n, norm, err);
        if (rc) return rc;
        ns = norm->p;
        nn = norm->n;
    }
    if (nn == 0) return 0;
    if (t->m_norm.start[256] == 0) return tk_pretokenize_and_model(t, e, ns, nn, at_origin, err);
    segs->n = 0;
    int rc = tk_split_added(t, &t->m_norm, ns, nn, segs, err);
    for (size_t i = 0; !rc && i + 2 < segs->n; i += 3) {
        size_t a = (size_t)segs->p[i], b = (size_t)segs->p[i + 1];
        if (segs->p[i + 2] >= 0)
            rc = tk_ids_push(&e->out, segs->p[i + 2]) ? gn_errf(err, GN_ENOMEM, "out of memory") : 0;
        else if (b > a)
            rc = tk_pretokenize_and_model(t, e, ns + a, b - a, at_origin && a == 0, err);
    }
    return rc;
}

int gn_tok_encode(const gn_tokenizer *t, const char *text, size_t len, int add_special,
                  int32_t **ids, int *n_ids, gn_err *err) {
    if (!t || !ids || !n_ids || (!text && len))
        return gn_errf(err, GN_EINVAL, "gn_tok_encode: NULL argument");
    *ids = NULL;
    *n_ids = 0;
    if (len > (size_t)INT32_MAX / 2)
        return gn_errf(err, GN_ERANGE, "text of %zu bytes is too long to encode", len);
    size_t bad = tk_utf8_check(text, len);
    if (bad != (size_t)-1)
        return gn_errf(err, GN_EINVAL, "invalid UTF-8 at byte offset %zu (byte 0x%02X)", bad,
                       (unsigned)(unsigned char)text[bad]);
    struct tk_enc e;
    memset(&e, 0, sizeof e);
    tk_buf norm = {0};
    tk_ids segs = {0}, segs2 = {0};
    int rc = 0;
    if (t->gctx && !(e.md = pcre2_match_data_create(1, t->gctx))) goto oom;
    if (add_special && push_all(&e.out, t->tpl_pre, t->n_tpl_pre)) goto oom;
    if (t->m_raw.start[256] == 0) {
        rc = encode_plain(t, &e, text, len, 1, &norm, &segs2, err);
    } else {
        rc = tk_split_added(t, &t->m_raw, text, len, &segs, err);
        for (size_t i = 0; !rc && i + 2 < segs.n; i += 3) {
            size_t a = (size_t)segs.p[i], b = (size_t)segs.p[i + 1];
            if (segs.p[i + 2] >= 0)
                rc = tk_ids_push(&e.out, segs.p[i + 2]) ? gn_errf(err, GN_ENOMEM, "out of memory")
                                                        : 0;
            else if (b > a)
                rc = encode_plain(t, &e, text + a, b - a, a == 0, &norm, &segs2, err);
        }
    }
    if (rc) goto done;
    if (add_special && push_all(&e.out, t->tpl_post, t->n_tpl_post)) goto oom;
    if (e.out.n > (size_t)INT32_MAX) {
        rc = gn_errf(err, GN_ERANGE, "too many tokens");
        goto done;
    }
    size_t real_n = e.out.n;
    if (!e.out.p && tk_ids_push(&e.out, 0)) goto oom; /* always hand back an allocation */
    *n_ids = (int)real_n;
    *ids = e.out.p;
    e.out.p = NULL;
    goto done;
oom:
    rc = gn_errf(err, GN_ENOMEM, "out of memory");
done:
    enc_free(&e);
    tk_buf_free(&norm);
    tk_ids_free(&segs);
    tk_ids_free(&segs2);
    return rc;
}
