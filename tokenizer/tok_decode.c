/* tok_decode.c — the decoder chain (ByteLevel, Replace, ByteFallback, Fuse,
 * Strip, Metaspace, Sequence of those), gn_tok_decode, and the streaming
 * decoder built on it.
 *
 * The chain works on a list of byte strings ("pieces"), one per token at the
 * start, exactly like the reference's Decoder::decode_chain; the final text is
 * the concatenation passed through a lossy UTF-8 conversion.
 *
 * Streaming: every decoder step above is prefix-stable — appending tokens
 * never changes output already produced — except for three things that the
 * stream holds back: a trailing run of byte-fallback tokens (the run decodes
 * as a whole, or as one U+FFFD per byte when invalid), a trailing incomplete
 * UTF-8 sequence, and the leading-character Strip / Metaspace first-token rule
 * until the start of the text is settled. */
#include <string.h>

#include "tok_internal.h"

typedef struct {
    tk_buf data;
    tk_ids off; /* (start, len) pairs into data */
} plist;

static void plist_free(plist *l) {
    tk_buf_free(&l->data);
    tk_ids_free(&l->off);
}

static int plist_add(plist *l, const char *s, size_t n) {
    if (l->data.n > INT32_MAX || n > INT32_MAX) return GN_ERANGE;
    int32_t at = (int32_t)l->data.n;
    if (tk_buf_put(&l->data, s, n) || tk_ids_push(&l->off, at) || tk_ids_push(&l->off, (int32_t)n))
        return GN_ENOMEM;
    return 0;
}

/* Appends bytes to the last piece (creating one when the list is empty). */
static int plist_append_last(plist *l, const char *s, size_t n) {
    if (!l->off.n) return plist_add(l, s, n);
    if (tk_buf_put(&l->data, s, n)) return GN_ENOMEM;
    l->off.p[l->off.n - 1] += (int32_t)n;
    return 0;
}

#define PIECE(l, i) ((l)->data.p + (l)->off.p[2 * (i)])
#define PLEN(l, i) ((size_t)(l)->off.p[2 * (i) + 1])
#define NPIECE(l) ((l)->off.n / 2)

static int byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) {
            if (i == 3 && c == '+') continue; /* Rust's from_str_radix takes a '+' */
            return -1;
        }
        v = v * 16 + d;
    }
    return v;
}

static int flush_bytes(plist *out, tk_buf *bytes) {
    if (!bytes->n) return 0;
    if (tk_utf8_check(bytes->p, bytes->n) == (size_t)-1) {
        if (plist_add(out, bytes->p, bytes->n)) return GN_ENOMEM;
    } else {
        for (size_t i = 0; i < bytes->n; i++)
            if (plist_add(out, "\xEF\xBF\xBD", 3)) return GN_ENOMEM;
    }
    bytes->n = 0;
    return 0;
}

/* Runs the chain on `in` (consumed) and leaves the result in `in`.
 * at_start = 0: the pieces continue earlier text, so the rules that apply to
 * the start of the text (leading Strip after a fuse, Metaspace's first token)
 * are off. *strip_open is set when a leading Strip consumed everything it saw
 * without reaching its limit (more text could still be stripped). */
static int run_chain(const gn_tokenizer *t, plist *in, int at_start, int *strip_open) {
    plist out = {0};
    tk_buf tmp = {0};
    int fused = 0, rc = 0;
    *strip_open = 0;
    for (int k = 0; k < t->n_dec && !rc; k++) {
        const tk_dec *d = &t->dec[k];
        out.data.n = 0;
        out.off.n = 0;
        size_t np = NPIECE(in);
        switch (d->kind) {
        case TK_DEC_BYTELEVEL:
            if ((rc = plist_add(&out, "", 0))) break;
            for (size_t i = 0; i < np && !rc; i++) {
                const unsigned char *s = (const unsigned char *)PIECE(in, i);
                size_t n = PLEN(in, i), j = 0;
                tmp.n = 0;
                while (j < n) {
                    uint32_t cp;
                    int l = tk_utf8_len(s + j, n - j);
                    if (!l) break;
                    tk_utf8_dec(s + j, &cp);
                    int b = tk_cp_to_byte(cp);
                    if (b < 0) break;
                    char c = (char)b;
                    if (tk_buf_put(&tmp, &c, 1)) {
                        rc = GN_ENOMEM;
                        break;
                    }
                    j += (size_t)l;
                }
                if (rc) break;
                rc = j == n ? plist_append_last(&out, tmp.p ? tmp.p : "", tmp.n)
                            : plist_append_last(&out, (const char *)s, n);
            }
            fused = 1;
            break;
        case TK_DEC_REPLACE:
            for (size_t i = 0; i < np && !rc; i++) {
                tmp.n = 0;
                if (tk_replace_lit(PIECE(in, i), PLEN(in, i), d->pat, d->pat_len, d->content,
                                   d->content_len, &tmp))
                    rc = GN_ENOMEM;
                else
                    rc = plist_add(&out, tmp.p ? tmp.p : "", tmp.n);
            }
            break;
        case TK_DEC_BYTEFALLBACK:
            tmp.n = 0;
            for (size_t i = 0; i < np && !rc; i++) {
                int b = byte_token(PIECE(in, i), PLEN(in, i));
                if (b >= 0) {
                    char c = (char)b;
                    if (tk_buf_put(&tmp, &c, 1)) rc = GN_ENOMEM;
                    continue;
                }
                if ((rc = flush_bytes(&out, &tmp))) break;
                rc = plist_add(&out, PIECE(in, i), PLEN(in, i));
            }
            if (!rc) rc = flush_bytes(&out, &tmp);
            break;
        case TK_DEC_FUSE:
            rc = plist_add(&out, "", 0);
            for (size_t i = 0; i < np && !rc; i++)
                rc = plist_append_last(&out, PIECE(in, i), PLEN(in, i));
            fused = 1;
            break;
        case TK_DEC_STRIP:
            for (size_t i = 0; i < np && !rc; i++) {
                const char *s = PIECE(in, i);
                size_t n = PLEN(in, i), a = 0, b = n, cl = (size_t)d->strip_ch_len;
                int lead = at_start || !fused || i > 0, cut = 0;
                if (lead) {
                    while (cut < d->start && a + cl <= n && memcmp(s + a, d->strip_ch, cl) == 0) {
                        a += cl;
                        cut++;
                    }
                    if (fused && i == 0 && a == n && cut < d->start) *strip_open = 1;
                }
                for (int c = 0; c < d->stop && b >= a + cl &&
                                memcmp(s + b - cl, d->strip_ch, cl) == 0;
                     c++)
                    b -= cl;
                rc = plist_add(&out, s + a, b - a);
            }
            break;
        case TK_DEC_METASPACE:
            for (size_t i = 0; i < np && !rc; i++) {
                tmp.n = 0;
                int drop = i == 0 && at_start && !fused && d->prepend;
                if (tk_replace_lit(PIECE(in, i), PLEN(in, i), d->repl, (size_t)d->repl_len,
                                   " ", drop ? 0 : 1, &tmp))
                    rc = GN_ENOMEM;
                else
                    rc = plist_add(&out, tmp.p ? tmp.p : "", tmp.n);
            }
            break;
        }
        plist swap = *in;
        *in = out;
        out = swap;
    }
    plist_free(&out);
    tk_buf_free(&tmp);
    return rc;
}

int tk_decode_tokens(const gn_tokenizer *t, const int32_t *ids, int n, int skip_special,
                     int at_start, tk_buf *out, size_t *stable_len, int *strip_open,
                     int *n_passed, gn_err *err) {
    plist l = {0};
    int rc = 0, np = 0, tail = -1, sopen = 0, has_bf = 0;
    for (int k = 0; k < t->n_dec; k++) has_bf |= t->dec[k].kind == TK_DEC_BYTEFALLBACK;
    out->n = 0;
    if (tk_buf_reserve(out, 1)) return gn_errf(err, GN_ENOMEM, "out of memory");
    out->p[0] = '\0';
    for (int i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_vocab || t->tok_len[id] == UINT32_MAX) {
            plist_free(&l);
            return gn_errf(err, GN_EINVAL, "unknown token id %d (vocabulary has %d)", (int)id,
                           t->n_vocab);
        }
        if (skip_special && t->is_special[id]) continue;
        const char *s = t->tok_ptr[id];
        size_t len = t->tok_len[id];
        if (has_bf && byte_token(s, len) >= 0) {
            if (tail < 0) tail = np;
        } else {
            tail = -1;
        }
        if (t->n_dec == 0 && (np > 0 || !at_start)) {
            if (plist_add(&l, " ", 1)) goto oom;
        }
        if (plist_add(&l, s, len)) goto oom;
        np++;
    }
    if (n_passed) *n_passed = np;
    /* with no decoder the reference joins tokens with spaces: the pieces
     * above already carry them */
    size_t cut_piece = (size_t)-1;
    if (stable_len && tail >= 0) cut_piece = (size_t)tail * (t->n_dec == 0 ? 2 : 1);
    plist head = {0};
    if (cut_piece != (size_t)-1) {
        for (size_t i = 0; i < cut_piece; i++)
            if (plist_add(&head, PIECE(&l, i), PLEN(&l, i))) {
                plist_free(&head);
                goto oom;
            }
    }
    rc = run_chain(t, &l, at_start, &sopen);
    if (rc) {
        plist_free(&head);
        goto fail;
    }
    size_t complete = 0;
    tk_buf raw = {0};
    for (size_t i = 0; i < NPIECE(&l) && !rc; i++)
        if (tk_buf_put(&raw, PIECE(&l, i), PLEN(&l, i))) rc = GN_ENOMEM;
    if (!rc) rc = tk_utf8_lossy(out, raw.p ? raw.p : "", raw.n, &complete);
    if (!rc && cut_piece != (size_t)-1) {
        int sopen2;
        rc = run_chain(t, &head, at_start, &sopen2);
        raw.n = 0;
        for (size_t i = 0; i < NPIECE(&head) && !rc; i++)
            if (tk_buf_put(&raw, PIECE(&head, i), PLEN(&head, i))) rc = GN_ENOMEM;
        tk_buf hb = {0};
        if (!rc) rc = tk_utf8_lossy(&hb, raw.p ? raw.p : "", raw.n, &complete);
        /* prefix stability: the head's final text must begin the full text */
        if (!rc && (complete > out->n || memcmp(hb.p ? hb.p : "", out->p, complete) != 0))
            complete = 0;
        tk_buf_free(&hb);
    }
    tk_buf_free(&raw);
    plist_free(&head);
    if (rc) goto fail;
    if (stable_len) *stable_len = complete;
    if (strip_open) *strip_open = sopen;
    plist_free(&l);
    return 0;
oom:
    rc = GN_ENOMEM;
fail:
    plist_free(&l);
    return gn_errf(err, rc, rc == GN_ENOMEM ? "out of memory" : "decode failed");
}

int gn_tok_decode(const gn_tokenizer *t, const int32_t *ids, int n, int skip_special, char **out,
                  size_t *out_len, gn_err *err) {
    if (!t || !out || (!ids && n > 0) || n < 0)
        return gn_errf(err, GN_EINVAL, "gn_tok_decode: bad argument");
    *out = NULL;
    if (out_len) *out_len = 0;
    tk_buf b = {0};
    int rc = tk_decode_tokens(t, ids, n, skip_special, 1, &b, NULL, NULL, NULL, err);
    if (rc) {
        tk_buf_free(&b);
        return rc;
    }
    *out = b.p;
    if (out_len) *out_len = b.n;
    return 0;
}

/* ---- streaming ---- */

struct gn_tok_stream {
    const gn_tokenizer *t;
    int skip_special;
    tk_ids win;      /* ids since the last point where the text was settled */
    int at_start;    /* no settled text yet: start-of-text rules still apply */
    size_t emitted;  /* bytes of the window's decode already handed out */
    tk_buf text;     /* the window's decode; output points into it */
};

gn_tok_stream *gn_tok_stream_create(const gn_tokenizer *t, int skip_special, gn_err *err) {
    if (!t) {
        gn_errf(err, GN_EINVAL, "gn_tok_stream_create: NULL tokenizer");
        return NULL;
    }
    gn_tok_stream *s = gn_calloc(1, sizeof *s);
    if (!s) {
        gn_errf(err, GN_ENOMEM, "out of memory");
        return NULL;
    }
    s->t = t;
    s->skip_special = skip_special;
    s->at_start = 1;
    return s;
}

void gn_tok_stream_free(gn_tok_stream *s) {
    if (!s) return;
    tk_ids_free(&s->win);
    tk_buf_free(&s->text);
    gn_free(s);
}

int gn_tok_stream_push(gn_tok_stream *s, int32_t id, const char **out, size_t *out_len,
                       gn_err *err) {
    if (!s || !out || !out_len) return gn_errf(err, GN_EINVAL, "gn_tok_stream_push: NULL argument");
    *out = "";
    *out_len = 0;
    const gn_tokenizer *t = s->t;
    if (id < 0 || id >= t->n_vocab || t->tok_len[id] == UINT32_MAX)
        return gn_errf(err, GN_EINVAL, "unknown token id %d (vocabulary has %d)", (int)id,
                       t->n_vocab);
    if (tk_ids_push(&s->win, id)) return gn_errf(err, GN_ENOMEM, "out of memory");
    size_t stable;
    int sopen, np;
    int rc = tk_decode_tokens(t, s->win.p, (int)s->win.n, s->skip_special, s->at_start, &s->text,
                              &stable, &sopen, &np, err);
    if (rc) {
        s->win.n--;
        return rc;
    }
    if (stable > s->emitted) {
        *out = s->text.p + s->emitted;
        *out_len = stable - s->emitted;
        s->emitted = stable;
    }
    if (np == 0) {
        /* only skipped tokens so far: nothing to remember */
        s->win.n = 0;
        s->emitted = 0;
    } else if (stable == s->text.n && !sopen) {
        s->win.n = 0;
        s->emitted = 0;
        s->at_start = 0;
    }
    return 0;
}

int gn_tok_stream_flush(gn_tok_stream *s, const char **out, size_t *out_len, gn_err *err) {
    if (!s || !out || !out_len)
        return gn_errf(err, GN_EINVAL, "gn_tok_stream_flush: NULL argument");
    *out = "";
    *out_len = 0;
    if (!s->win.n) return 0;
    int np;
    int rc = tk_decode_tokens(s->t, s->win.p, (int)s->win.n, s->skip_special, s->at_start,
                              &s->text, NULL, NULL, &np, err);
    if (rc) return rc;
    if (s->text.n > s->emitted) {
        *out = s->text.p + s->emitted;
        *out_len = s->text.n - s->emitted;
    }
    s->win.n = 0;
    s->emitted = 0;
    if (np) s->at_start = 0;
    return 0;
}
