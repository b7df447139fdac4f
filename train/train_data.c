/* train_data.c — tokenised training examples and the deterministic batch order. */
#include <jansson.h>
#include <string.h>

#include "fsutil.h"
#include "gn_alloc.h"
#include "tokenizer.h"
#include "train_data.h"

struct gn_train_data {
    gn_train_data_kind kind;
    int spe;            /* sequences per example */
    int n_seqs, cap_seqs;
    gn_train_seq *seqs;
    size_t *seq_off;    /* offsets into pool while loading */
    int32_t *pool;
    size_t n_pool, cap_pool;
    int n_truncated;
    int64_t perm_epoch; /* cached permutation */
    int *perm;
};

static int push_tokens(gn_train_data *d, const int32_t *ids, int n) {
    if (d->n_pool + (size_t)n > d->cap_pool) {
        size_t cap = d->cap_pool ? d->cap_pool : 4096;
        while (cap < d->n_pool + (size_t)n) cap *= 2;
        int32_t *p = gn_realloc(d->pool, cap * sizeof *p);
        if (!p) return GN_ENOMEM;
        d->pool = p;
        d->cap_pool = cap;
    }
    memcpy(d->pool + d->n_pool, ids, (size_t)n * sizeof *ids);
    d->n_pool += (size_t)n;
    return 0;
}

/* Appends a sequence made of the last `len` pool tokens. */
static int push_seq(gn_train_data *d, int len, int first) {
    if (d->n_seqs == d->cap_seqs) {
        int cap = d->cap_seqs ? 2 * d->cap_seqs : 256;
        gn_train_seq *s = gn_realloc(d->seqs, (size_t)cap * sizeof *s);
        if (!s) return GN_ENOMEM;
        d->seqs = s;
        size_t *o = gn_realloc(d->seq_off, (size_t)cap * sizeof *o);
        if (!o) return GN_ENOMEM;
        d->seq_off = o;
        d->cap_seqs = cap;
    }
    d->seq_off[d->n_seqs] = d->n_pool - (size_t)len;
    d->seqs[d->n_seqs] = (gn_train_seq){NULL, len, first};
    d->n_seqs++;
    return 0;
}

static int load_text(gn_train_data *d, const char *path, const char *buf, size_t len,
                     const gn_tokenizer *tok, int seq_len, gn_err *err) {
    int bos = gn_tok_bos(tok);
    int per = bos >= 0 ? seq_len - 1 : seq_len;
    if (per < 1) return gn_errf(err, GN_EINVAL, "--seq-len %d too short", seq_len);
    /* Tokenise in pieces of about 4 KiB cut after a newline, so a large
     * corpus does not go through the pre-tokenizer as one string. */
    int32_t *all = NULL;
    size_t n_all = 0, cap = 0;
    int rc = 0;
    for (size_t pos = 0; pos < len && !rc;) {
        size_t end = pos + 4096 < len ? pos + 4096 : len;
        while (end < len && buf[end - 1] != '\n') end++;
        int32_t *ids = NULL;
        int n = 0;
        rc = gn_tok_encode(tok, buf + pos, end - pos, 0, &ids, &n, err);
        if (rc) {
            gn_err_prefix(err, "%s: near byte %zu: ", path, pos);
            break;
        }
        if (n_all + (size_t)n > cap) {
            size_t nc = cap ? cap : 65536;
            while (nc < n_all + (size_t)n) nc *= 2;
            int32_t *p = gn_realloc(all, nc * sizeof *p);
            if (!p) {
                gn_free(ids);
                rc = gn_errf(err, GN_ENOMEM, "out of memory");
                break;
            }
            all = p;
            cap = nc;
        }
        memcpy(all + n_all, ids, (size_t)n * sizeof *ids);
        n_all += (size_t)n;
        gn_free(ids);
        pos = end;
    }
    for (size_t off = 0; !rc && off < n_all; off += (size_t)per) {
        int n = n_all - off < (size_t)per ? (int)(n_all - off) : per;
        int32_t b = bos;
        int total = n + (bos >= 0);
        if (total < 2) break;
        if (bos >= 0 && push_tokens(d, &b, 1)) rc = GN_ENOMEM;
        if (!rc && push_tokens(d, all + off, n)) rc = GN_ENOMEM;
        if (!rc && push_seq(d, total, 1)) rc = GN_ENOMEM;
        if (rc) gn_errf(err, GN_ENOMEM, "out of memory");
    }
    gn_free(all);
    if (!rc && d->n_seqs == 0) rc = gn_errf(err, GN_EINVAL, "%s: no text to train on", path);
    return rc;
}

/* prompt (with specials) + response (without) + EOS, cut at seq_len. */
static int add_prompt_response(gn_train_data *d, const gn_tokenizer *tok, const char *prompt,
                               const char *response, int seq_len, const char *path, int line,
                               gn_err *err) {
    int32_t *p = NULL, *r = NULL;
    int np = 0, nr = 0, rc;
    if ((rc = gn_tok_encode(tok, prompt, strlen(prompt), 1, &p, &np, err)) ||
        (rc = gn_tok_encode(tok, response, strlen(response), 0, &r, &nr, err))) {
        gn_free(p);
        gn_err_prefix(err, "%s:%d: ", path, line);
        return rc;
    }
    int eos = gn_tok_eos(tok);
    int total = np + nr + (eos >= 0);
    if (np < 1 || np >= seq_len) {
        gn_free(p);
        gn_free(r);
        return gn_errf(err, GN_EINVAL, "%s:%d: prompt of %d tokens leaves no room for the response "
                       "(--seq-len %d)", path, line, np, seq_len);
    }
    if (total > seq_len) d->n_truncated++;
    int keep = total < seq_len ? total : seq_len;
    rc = push_tokens(d, p, np);
    int nr_keep = keep - np < nr ? keep - np : nr;
    if (!rc) rc = push_tokens(d, r, nr_keep);
    int32_t e = eos;
    if (!rc && np + nr_keep < keep) rc = push_tokens(d, &e, 1);
    if (!rc) rc = push_seq(d, keep, np);
    gn_free(p);
    gn_free(r);
    return rc ? gn_errf(err, GN_ENOMEM, "out of memory") : 0;
}

static int load_jsonl(gn_train_data *d, const char *path, const char *buf, size_t len,
                      const gn_tokenizer *tok, int seq_len, gn_err *err) {
    const int pairs = d->kind == GN_DATA_PAIRS;
    static const char *const k_lm[] = {"prompt", "response"};
    static const char *const k_pair[] = {"prompt", "chosen", "rejected"};
    const char *const *keys = pairs ? k_pair : k_lm;
    int n_keys = pairs ? 3 : 2, line = 0, rc = 0;
    for (size_t pos = 0; pos < len && !rc; line++) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - buf) : len;
        size_t s = pos, e = end;
        while (s < e && (buf[s] == ' ' || buf[s] == '\t' || buf[s] == '\r')) s++;
        pos = end + 1;
        if (s == e) continue;
        json_error_t je;
        json_t *o = json_loadb(buf + s, e - s, 0, &je);
        if (!o || !json_is_object(o)) {
            json_decref(o);
            return gn_errf(err, GN_EFORMAT, "%s:%d: %s", path, line + 1,
                           o ? "not a JSON object" : je.text);
        }
        const char *v[3] = {NULL, NULL, NULL};
        for (int k = 0; k < n_keys; k++)
            if (!(v[k] = json_string_value(json_object_get(o, keys[k])))) {
                json_decref(o);
                return gn_errf(err, GN_EFORMAT, "%s:%d: field \"%s\" missing or not a string", path,
                               line + 1, keys[k]);
            }
        rc = add_prompt_response(d, tok, v[0], v[1], seq_len, path, line + 1, err);
        if (!rc && pairs) rc = add_prompt_response(d, tok, v[0], v[2], seq_len, path, line + 1, err);
        json_decref(o);
    }
    if (!rc && d->n_seqs == 0) rc = gn_errf(err, GN_EINVAL, "%s: no examples", path);
    return rc;
}

gn_train_data *gn_train_data_load(const char *path, gn_train_data_kind kind, const gn_tokenizer *tok,
                                  int seq_len, gn_err *err) {
    if (seq_len < 2) {
        gn_errf(err, GN_EINVAL, "--seq-len %d must be at least 2", seq_len);
        return NULL;
    }
    gn_train_data *d = gn_calloc(1, sizeof *d);
    char *buf = NULL;
    size_t len = 0;
    if (!d) {
        gn_errf(err, GN_ENOMEM, "out of memory");
        return NULL;
    }
    d->kind = kind;
    d->spe = kind == GN_DATA_PAIRS ? 2 : 1;
    d->perm_epoch = -1;
    int rc = gn_fs_read_file(path, (size_t)1 << 34, &buf, &len, err);
    if (!rc)
        rc = kind == GN_DATA_TEXT ? load_text(d, path, buf, len, tok, seq_len, err)
                                  : load_jsonl(d, path, buf, len, tok, seq_len, err);
    gn_free(buf);
    if (rc) {
        gn_train_data_free(d);
        return NULL;
    }
    for (int i = 0; i < d->n_seqs; i++) d->seqs[i].tokens = d->pool + d->seq_off[i];
    if (!(d->perm = gn_malloc((size_t)(d->n_seqs / d->spe) * sizeof *d->perm))) {
        gn_errf(err, GN_ENOMEM, "out of memory");
        gn_train_data_free(d);
        return NULL;
    }
    return d;
}

void gn_train_data_free(gn_train_data *d) {
    if (!d) return;
    gn_free(d->seqs);
    gn_free(d->seq_off);
    gn_free(d->pool);
    gn_free(d->perm);
    gn_free(d);
}

int gn_train_data_n_examples(const gn_train_data *d) { return d->n_seqs / d->spe; }
int gn_train_data_seqs_per_example(const gn_train_data *d) { return d->spe; }
int gn_train_data_n_truncated(const gn_train_data *d) { return d->n_truncated; }
const gn_train_seq *gn_train_data_seq(const gn_train_data *d, int i, int s) {
    return &d->seqs[(size_t)i * d->spe + s];
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void make_perm(gn_train_data *d, uint64_t seed, int64_t epoch) {
    int n = gn_train_data_n_examples(d);
    uint64_t s = seed * 0x9e3779b97f4a7c15ull ^ (uint64_t)epoch * 0xd1b54a32d192ed03ull;
    for (int i = 0; i < n; i++) d->perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(splitmix64(&s) % (uint64_t)(i + 1));
        int t = d->perm[i];
        d->perm[i] = d->perm[j];
        d->perm[j] = t;
    }
    d->perm_epoch = epoch;
}

int gn_train_data_batch(gn_train_data *d, uint64_t seed, int64_t first, int n, int32_t *tokens,
                        int32_t *targets, int *T) {
    const int64_t n_ex = gn_train_data_n_examples(d);
    int ex[n > 0 ? n : 1];
    int maxlen = 1;
    for (int j = 0; j < n; j++) {
        int64_t i = first + j, epoch = i / n_ex;
        if (epoch != d->perm_epoch) make_perm(d, seed, epoch);
        ex[j] = d->perm[i % n_ex];
        for (int s = 0; s < d->spe; s++)
            if (gn_train_data_seq(d, ex[j], s)->len > maxlen) maxlen = gn_train_data_seq(d, ex[j], s)->len;
    }
    int counted = 0;
    for (int j = 0; j < n; j++)
        for (int s = 0; s < d->spe; s++) {
            const gn_train_seq *q = gn_train_data_seq(d, ex[j], s);
            int32_t *tk = tokens + (size_t)(j * d->spe + s) * maxlen;
            int32_t *tg = targets + (size_t)(j * d->spe + s) * maxlen;
            for (int t = 0; t < maxlen; t++) {
                tk[t] = t < q->len ? q->tokens[t] : 0;
                tg[t] = t + 1 < q->len && t + 1 >= q->first ? q->tokens[t + 1] : -1;
                counted += tg[t] >= 0;
            }
        }
    *T = maxlen;
    return counted;
}
