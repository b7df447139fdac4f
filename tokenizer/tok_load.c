/* tok_load.c — tokenizer.json / tokenizer_config.json -> gn_tokenizer, the
 * small accessors, and the fingerprint.
 *
 * Every field read from the JSON is type-checked; errors name the file and the
 * JSON path ("tokenizer.json: model.merges[17]: ..."). Added-token ids are
 * assigned the way the reference's AddedVocabulary does: a token already in the
 * model vocabulary keeps that id, any other gets the next id after the model
 * vocabulary and the added tokens before it. */
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "sha256.h"
#include "tok_internal.h"

#define TK_MAX_ID (1 << 24) /* larger ids are refused: the tables are dense */

static const char GPT2_REGEX[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

typedef struct {
    gn_tokenizer *t;
    gn_err *err;
    const char *file;
} ld;

static int fail(ld *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(ld *c, int code, const char *fmt, ...) {
    char msg[GN_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return gn_errf(c->err, code, "%s: %s", c->file, msg);
}

static int oom(ld *c) { return fail(c, GN_ENOMEM, "out of memory"); }

/* Optional boolean field; *out keeps its default when absent or null. */
static int get_bool(ld *c, json_t *o, const char *key, const char *path, int *out) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return fail(c, GN_EFORMAT, "%s.%s must be a boolean", path, key);
    *out = json_is_true(v);
    return 0;
}

/* String field: required or optional (NULL when absent or null). */
static int get_str(ld *c, json_t *o, const char *key, const char *path, int required,
                   const char **s, size_t *len) {
    json_t *v = json_object_get(o, key);
    *s = NULL;
    if (len) *len = 0;
    if (!v || json_is_null(v)) {
        if (required) return fail(c, GN_EFORMAT, "%s.%s is missing", path, key);
        return 0;
    }
    if (!json_is_string(v)) return fail(c, GN_EFORMAT, "%s.%s must be a string", path, key);
    *s = json_string_value(v);
    if (len) *len = json_string_length(v);
    return 0;
}

static int get_int(ld *c, json_t *o, const char *key, const char *path, int required, long lo,
                   long hi, long *out) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required) return fail(c, GN_EFORMAT, "%s.%s is missing", path, key);
        return 0;
    }
    if (!json_is_integer(v)) return fail(c, GN_EFORMAT, "%s.%s must be an integer", path, key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return fail(c, GN_ERANGE, "%s.%s = %lld is out of range [%ld, %ld]", path, key,
                    (long long)x, lo, hi);
    *out = (long)x;
    return 0;
}

static char *dup_n(const char *s, size_t n) {
    char *d = gn_malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

/* {"String": "x"} or {"Regex": "x"}. */
static int get_pattern(ld *c, json_t *o, const char *path, const char **s, size_t *len,
                       int *is_regex) {
    *s = NULL, *len = 0, *is_regex = 0;
    json_t *p = json_object_get(o, "pattern");
    if (!json_is_object(p)) return fail(c, GN_EFORMAT, "%s.pattern must be an object", path);
    json_t *v;
    if ((v = json_object_get(p, "String")) && json_is_string(v)) {
        *is_regex = 0;
    } else if ((v = json_object_get(p, "Regex")) && json_is_string(v)) {
        *is_regex = 1;
    } else {
        return fail(c, GN_EFORMAT, "%s.pattern needs a \"String\" or \"Regex\" string", path);
    }
    *s = json_string_value(v);
    *len = json_string_length(v);
    return 0;
}

/* A Replace step (normalizer or decoder): a literal, non-empty "pattern" and
 * its "content", copied (NUL-terminated) into *pat and *content. */
static int get_replace(ld *c, json_t *o, const char *path, char **pat, size_t *pat_len, char **content,
                       size_t *content_len) {
    const char *p, *s;
    size_t pl, sl;
    int is_re, rc;
    if ((rc = get_pattern(c, o, path, &p, &pl, &is_re)) || (rc = get_str(c, o, "content", path, 1, &s, &sl)))
        return rc;
    if (is_re) return fail(c, GN_EUNSUP, "%s: Replace with a Regex pattern is not supported", path);
    if (!pl) return fail(c, GN_EFORMAT, "%s: empty Replace pattern", path);
    char *dp = dup_n(p, pl), *ds = dup_n(s, sl);
    if (!dp || !ds) {
        gn_free(dp);
        gn_free(ds);
        return oom(c);
    }
    *pat = dp, *pat_len = pl, *content = ds, *content_len = sl;
    return 0;
}

static void *pc_malloc(PCRE2_SIZE n, void *u) {
    (void)u;
    return gn_malloc(n);
}
static void pc_free(void *p, void *u) {
    (void)u;
    gn_free(p);
}

static int compile(ld *c, pcre2_code **re, int *jit, const char *pat, size_t len,
                   const char *path) {
    gn_tokenizer *t = c->t;
    if (!t->gctx && !(t->gctx = pcre2_general_context_create(pc_malloc, pc_free, NULL)))
        return oom(c);
    if (!t->cctx && !(t->cctx = pcre2_compile_context_create(t->gctx))) return oom(c);
    int rc = tk_compile_regex(re, jit, pat, len, t->cctx, c->err);
    if (rc) return gn_err_prefix(c->err, "%s: %s: ", c->file, path);
    return 0;
}

static const char *type_of(json_t *o) {
    json_t *ty = json_object_get(o, "type");
    return json_is_string(ty) ? json_string_value(ty) : NULL;
}

/* ---- model ---- */

static int load_vocab(ld *c, json_t *vocab, size_t *n_entries) {
    gn_tokenizer *t = c->t;
    if (!json_is_object(vocab)) return fail(c, GN_EFORMAT, "model.vocab must be an object");
    size_t n = json_object_size(vocab), total = 0;
    for (void *it = json_object_iter(vocab); it; it = json_object_iter_next(vocab, it)) {
        if (gn_size_add(total, json_object_iter_key_len(it) + 1, &total)) return oom(c);
    }
    if (total > UINT32_MAX) return fail(c, GN_ERANGE, "model.vocab is too large");
    t->arena = gn_malloc(total ? total : 1);
    if (!t->arena || tk_strmap_init(&t->vocab, n)) return oom(c);
    size_t at = 0;
    for (void *it = json_object_iter(vocab); it; it = json_object_iter_next(vocab, it)) {
        const char *k = json_object_iter_key(it);
        size_t kl = json_object_iter_key_len(it);
        json_t *v = json_object_iter_value(it);
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) >= TK_MAX_ID)
            return fail(c, GN_EFORMAT, "model.vocab[\"%.60s\"] must be an integer id in [0, %d)",
                        k, TK_MAX_ID);
        if (tk_utf8_check(k, kl) != (size_t)-1)
            return fail(c, GN_EFORMAT, "model.vocab: a token is not valid UTF-8");
        memcpy(t->arena + at, k, kl);
        t->arena[at + kl] = '\0';
        if (tk_strmap_put(&t->vocab, t->arena + at, kl, (int32_t)json_integer_value(v)))
            return oom(c);
        at += kl + 1;
    }
    *n_entries = n;
    return 0;
}

static int load_merges(ld *c, json_t *merges, gn_sha256 *mh) {
    gn_tokenizer *t = c->t;
    if (!merges || json_is_null(merges)) merges = NULL;
    else if (!json_is_array(merges)) return fail(c, GN_EFORMAT, "model.merges must be an array");
    size_t n = merges ? json_array_size(merges) : 0;
    if (n > (size_t)INT32_MAX) return fail(c, GN_ERANGE, "model.merges is too large");
    if (tk_pairmap_init(&t->merges, n)) return oom(c);
    t->n_merges = (int)n;
    tk_buf cat = {0};
    int rc = 0;
    size_t plen = t->cont_prefix ? t->cont_prefix_len : 0;
    for (size_t i = 0; i < n && !rc; i++) {
        json_t *m = json_array_get(merges, i);
        const char *a, *b;
        size_t al, bl;
        if (json_is_string(m)) {
            const char *s = json_string_value(m);
            size_t sl = json_string_length(m);
            const char *sp = memchr(s, ' ', sl);
            if (!sp) {
                rc = fail(c, GN_EFORMAT, "model.merges[%zu] \"%.60s\" is not \"left right\"", i, s);
                break;
            }
            a = s;
            al = (size_t)(sp - s);
            b = sp + 1;
            bl = sl - al - 1;
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            al = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            bl = json_string_length(json_array_get(m, 1));
        } else {
            rc = fail(c, GN_EFORMAT, "model.merges[%zu] must be a \"a b\" string or a [a, b] pair",
                      i);
            break;
        }
        int32_t ia = tk_strmap_get(&t->vocab, a, al), ib = tk_strmap_get(&t->vocab, b, bl);
        if (ia < 0 || ib < 0) {
            rc = fail(c, GN_EFORMAT, "model.merges[%zu]: token \"%.*s\" is not in model.vocab", i,
                      (int)(ia < 0 ? (al > 60 ? 60 : al) : (bl > 60 ? 60 : bl)), ia < 0 ? a : b);
            break;
        }
        if (bl < plen) {
            rc = fail(c, GN_EFORMAT, "model.merges[%zu]: right part shorter than the prefix", i);
            break;
        }
        cat.n = 0;
        if (tk_buf_put(&cat, a, al) || tk_buf_put(&cat, b + plen, bl - plen)) {
            rc = oom(c);
            break;
        }
        int32_t nid = tk_strmap_get(&t->vocab, cat.p, cat.n);
        if (nid < 0) {
            rc = fail(c, GN_EFORMAT, "model.merges[%zu]: merged token \"%.*s\" is not in model.vocab",
                      i, (int)(cat.n > 60 ? 60 : cat.n), cat.p);
            break;
        }
        tk_pairmap_put(&t->merges, ia, ib, (uint32_t)i, nid);
        if (bl >= 3 && memcmp(b, "\xE2\x96\x81", 3) == 0 &&
            !(al >= 3 && memcmp(a + al - 3, "\xE2\x96\x81", 3) == 0))
            t->merge_cross_meta = 1;
        int32_t trip[3] = {ia, ib, nid};
        gn_sha256_update(mh, trip, sizeof trip);
    }
    tk_buf_free(&cat);
    return rc;
}

static int load_model(ld *c, json_t *model, gn_sha256 *mh, size_t *n_entries) {
    gn_tokenizer *t = c->t;
    if (!json_is_object(model)) return fail(c, GN_EFORMAT, "\"model\" must be an object");
    const char *ty = type_of(model);
    json_t *tyv = json_object_get(model, "type");
    if (tyv && !json_is_string(tyv)) return fail(c, GN_EFORMAT, "model.type must be a string");
    if (ty && strcmp(ty, "BPE") != 0)
        return fail(c, GN_EUNSUP, "model.type \"%s\" is not supported (only BPE)", ty);
    if (!ty && !json_object_get(model, "merges"))
        return fail(c, GN_EUNSUP, "model has no type and no merges: only BPE is supported");
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) &&
        (!json_is_number(dropout) || json_number_value(dropout) != 0.0))
        return fail(c, GN_EUNSUP, "model.dropout must be null (BPE dropout is not supported)");
    int rc;
    const char *s;
    size_t sl;
    if ((rc = get_str(c, model, "continuing_subword_prefix", "model", 0, &s, &sl))) return rc;
    if (s && !(t->cont_prefix = dup_n(s, sl))) return oom(c);
    t->cont_prefix_len = sl;
    if ((rc = get_str(c, model, "end_of_word_suffix", "model", 0, &s, &sl))) return rc;
    if (s && !(t->eow_suffix = dup_n(s, sl))) return oom(c);
    t->eow_suffix_len = sl;
    if ((rc = get_bool(c, model, "byte_fallback", "model", &t->byte_fallback)) ||
        (rc = get_bool(c, model, "fuse_unk", "model", &t->fuse_unk)) ||
        (rc = get_bool(c, model, "ignore_merges", "model", &t->ignore_merges)))
        return rc;
    if ((rc = load_vocab(c, json_object_get(model, "vocab"), n_entries))) return rc;
    if ((rc = get_str(c, model, "unk_token", "model", 0, &s, &sl))) return rc;
    t->unk_id = s ? tk_strmap_get(&t->vocab, s, sl) : -1;
    if (s && t->unk_id < 0)
        return fail(c, GN_EFORMAT, "model.unk_token \"%.60s\" is not in model.vocab", s);
    if ((rc = load_merges(c, json_object_get(model, "merges"), mh))) return rc;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_id[b] = tk_strmap_get(&t->vocab, name, 6);
    }
    for (int ch = 0; ch < 128; ch++) {
        char one = (char)ch;
        t->char1_id[ch] = tk_strmap_get(&t->vocab, &one, 1);
    }
    return 0;
}

/* ---- added tokens ---- */

static int load_added(ld *c, json_t *arr, size_t n_model_entries, int32_t *max_id) {
    gn_tokenizer *t = c->t;
    if (!arr || json_is_null(arr)) return tk_strmap_init(&t->added_map, 0) ? oom(c) : 0;
    if (!json_is_array(arr)) return fail(c, GN_EFORMAT, "added_tokens must be an array");
    size_t n = json_array_size(arr);
    if (n > TK_MAX_ID) return fail(c, GN_ERANGE, "too many added_tokens");
    t->added = gn_calloc(n ? n : 1, sizeof *t->added);
    if (!t->added || tk_strmap_init(&t->added_map, n)) return oom(c);
    int32_t next_base = (int32_t)n_model_entries, max_added = -1;
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(arr, i);
        char path[48];
        snprintf(path, sizeof path, "added_tokens[%zu]", i);
        if (!json_is_object(o)) return fail(c, GN_EFORMAT, "%s must be an object", path);
        const char *s;
        size_t sl;
        long jid = -1;
        int rc;
        int special = 0, lstrip = 0, rstrip = 0, single = 0, normalized;
        if ((rc = get_str(c, o, "content", path, 1, &s, &sl)) ||
            (rc = get_int(c, o, "id", path, 0, 0, TK_MAX_ID - 1, &jid)) ||
            (rc = get_bool(c, o, "special", path, &special)))
            return rc;
        normalized = !special;
        if ((rc = get_bool(c, o, "lstrip", path, &lstrip)) ||
            (rc = get_bool(c, o, "rstrip", path, &rstrip)) ||
            (rc = get_bool(c, o, "single_word", path, &single)) ||
            (rc = get_bool(c, o, "normalized", path, &normalized)))
            return rc;
        if (sl == 0 || tk_strmap_get(&t->added_map, s, sl) >= 0) continue; /* as the reference */
        if (tk_utf8_check(s, sl) != (size_t)-1)
            return fail(c, GN_EFORMAT, "%s.content is not valid UTF-8", path);
        int32_t id = tk_strmap_get(&t->vocab, s, sl);
        if (id < 0) {
            id = max_added + 1 > next_base ? max_added + 1 : next_base;
            if (id >= TK_MAX_ID) return fail(c, GN_ERANGE, "%s: id out of range", path);
        }
        if (id > max_added) max_added = id;
        tk_added *a = &t->added[t->n_added];
        if (!(a->s = dup_n(s, sl))) return oom(c);
        t->n_added++;
        a->len = sl;
        a->id = id;
        a->special = (uint8_t)special;
        a->lstrip = (uint8_t)lstrip;
        a->rstrip = (uint8_t)rstrip;
        a->single_word = (uint8_t)single;
        a->normalized = (uint8_t)normalized;
        if (tk_strmap_put(&t->added_map, a->s, a->len, id)) return oom(c);
        if (id > *max_id) *max_id = id;
    }
    return 0;
}

static int build_matcher(ld *c, tk_matcher *m, int normalized) {
    gn_tokenizer *t = c->t;
    m->normalized = normalized;
    memset(m->start, 0, sizeof m->start);
    int cnt[257] = {0};
    for (int i = 0; i < t->n_added; i++) {
        tk_added *a = &t->added[i];
        size_t l = normalized ? a->nlen : a->len;
        const char *s = normalized ? a->ns : a->s;
        if (a->normalized != normalized || !s || l == 0) continue;
        cnt[(unsigned char)s[0]]++;
    }
    for (int b = 0; b < 256; b++) m->start[b + 1] = m->start[b] + cnt[b];
    m->idx = gn_malloc((size_t)(m->start[256] ? m->start[256] : 1) * sizeof *m->idx);
    if (!m->idx) return oom(c);
    int fill[256];
    for (int b = 0; b < 256; b++) fill[b] = m->start[b];
    for (int i = 0; i < t->n_added; i++) {
        tk_added *a = &t->added[i];
        size_t l = normalized ? a->nlen : a->len;
        const char *s = normalized ? a->ns : a->s;
        if (a->normalized != normalized || !s || l == 0) continue;
        /* insertion by length, longest first; equal lengths keep file order */
        int b = (unsigned char)s[0], k = fill[b]++;
        while (k > m->start[b]) {
            const tk_added *p = &t->added[m->idx[k - 1]];
            if ((normalized ? p->nlen : p->len) >= l) break;
            m->idx[k] = m->idx[k - 1];
            k--;
        }
        m->idx[k] = i;
    }
    return 0;
}

/* ---- normalizer / pre-tokenizer / decoder / post-processor ---- */

typedef int (*add_fn)(ld *c, json_t *o, const char *path);

/* The head the four component parsers share: o must be an object with a
 * "type"; a "Sequence" applies add to each element of its array `list`.
 * Returns 1 with *ty set when the caller goes on with a single component, 0
 * when it was a Sequence (done), or a negative code. */
static int component(ld *c, json_t *o, const char *path, const char *list, add_fn add, const char **ty) {
    if (!json_is_object(o)) return fail(c, GN_EFORMAT, "%s must be an object", path);
    if (!(*ty = type_of(o))) return fail(c, GN_EFORMAT, "%s.type is missing", path);
    if (strcmp(*ty, "Sequence") != 0) return 1;
    json_t *arr = json_object_get(o, list);
    if (!json_is_array(arr)) return fail(c, GN_EFORMAT, "%s.%s must be an array", path, list);
    for (size_t i = 0; i < json_array_size(arr); i++) {
        char sub[160];
        snprintf(sub, sizeof sub, "%s.%s[%zu]", path, list, i);
        int rc = add(c, json_array_get(arr, i), sub);
        if (rc) return rc;
    }
    return 0;
}

static int add_norm(ld *c, json_t *o, const char *path) {
    gn_tokenizer *t = c->t;
    const char *ty = NULL;
    int head = component(c, o, path, "normalizers", add_norm, &ty);
    if (head <= 0) return head; /* a Sequence done, or an error */
    tk_norm z = {0};
    int rc;
    if (!strcmp(ty, "Prepend")) {
        const char *s;
        size_t sl;
        if ((rc = get_str(c, o, "prepend", path, 1, &s, &sl))) return rc;
        z.kind = TK_NORM_PREPEND;
        if (!(z.a = dup_n(s, sl))) return oom(c);
        z.alen = sl;
    } else if (!strcmp(ty, "Replace")) {
        if ((rc = get_replace(c, o, path, &z.a, &z.alen, &z.b, &z.blen))) return rc;
        z.kind = TK_NORM_REPLACE;
    } else if (!strcmp(ty, "NFC")) {
        z.kind = TK_NORM_NFC;
    } else if (!strcmp(ty, "NFD")) {
        z.kind = TK_NORM_NFD;
    } else if (!strcmp(ty, "NFKC")) {
        z.kind = TK_NORM_NFKC;
    } else if (!strcmp(ty, "NFKD")) {
        z.kind = TK_NORM_NFKD;
    } else {
        return fail(c, GN_EUNSUP, "%s.type \"%s\" is not a supported normalizer", path, ty);
    }
    tk_norm *nn = gn_realloc(t->norm, (size_t)(t->n_norm + 1) * sizeof *nn);
    if (!nn) {
        gn_free(z.a);
        gn_free(z.b);
        return oom(c);
    }
    t->norm = nn;
    t->norm[t->n_norm++] = z;
    return 0;
}

static int get_prepend_scheme(ld *c, json_t *o, const char *path, int *prepend) {
    const char *ps;
    int rc = get_str(c, o, "prepend_scheme", path, 0, &ps, NULL), aps = 1;
    if (rc) return rc;
    if (ps) {
        if (!strcmp(ps, "always")) *prepend = 1;
        else if (!strcmp(ps, "first")) *prepend = 2;
        else if (!strcmp(ps, "never")) *prepend = 0;
        else return fail(c, GN_EFORMAT, "%s.prepend_scheme \"%s\" is unknown", path, ps);
        return 0;
    }
    if ((rc = get_bool(c, o, "add_prefix_space", path, &aps))) return rc;
    *prepend = aps ? 1 : 0;
    return 0;
}

static int get_replacement(ld *c, json_t *o, const char *path, char repl[4], int *repl_len) {
    const char *s;
    size_t sl;
    int rc = get_str(c, o, "replacement", path, 0, &s, &sl);
    if (rc) return rc;
    if (!s) {
        s = "\xE2\x96\x81";
        sl = 3;
    }
    int l = tk_utf8_len((const unsigned char *)s, sl);
    if (!l || (size_t)l != sl) return fail(c, GN_EFORMAT, "%s.replacement must be one character", path);
    memcpy(repl, s, sl);
    *repl_len = l;
    return 0;
}

static int add_pretok(ld *c, json_t *o, const char *path) {
    gn_tokenizer *t = c->t;
    const char *ty = NULL;
    int head = component(c, o, path, "pretokenizers", add_pretok, &ty);
    if (head <= 0) return head; /* a Sequence done, or an error */
    if (t->n_pre >= TK_MAX_DEPTH)
        return fail(c, GN_EUNSUP, "%s: more than %d pre-tokenizer steps", path, TK_MAX_DEPTH);
    tk_pretok *p = &t->pre[t->n_pre];
    memset(p, 0, sizeof *p);
    int rc;
    if (!strcmp(ty, "Split")) {
        const char *pat, *beh;
        size_t pl;
        int is_re;
        if ((rc = get_pattern(c, o, path, &pat, &pl, &is_re)) ||
            (rc = get_str(c, o, "behavior", path, 1, &beh, NULL)) ||
            (rc = get_bool(c, o, "invert", path, &p->invert)))
            return rc;
        if (!strcmp(beh, "Removed")) p->behavior = TK_SPLIT_REMOVED;
        else if (!strcmp(beh, "Isolated")) p->behavior = TK_SPLIT_ISOLATED;
        else if (!strcmp(beh, "MergedWithPrevious")) p->behavior = TK_SPLIT_MERGED_PREV;
        else if (!strcmp(beh, "MergedWithNext")) p->behavior = TK_SPLIT_MERGED_NEXT;
        else if (!strcmp(beh, "Contiguous")) p->behavior = TK_SPLIT_CONTIGUOUS;
        else return fail(c, GN_EFORMAT, "%s.behavior \"%s\" is unknown", path, beh);
        p->kind = TK_PT_SPLIT;
        if (is_re) {
            char sub[180];
            snprintf(sub, sizeof sub, "%s.pattern.Regex", path);
            if ((rc = compile(c, &p->re, &p->jit, pat, pl, sub))) return rc;
        } else {
            if (!pl) return fail(c, GN_EFORMAT, "%s: empty Split pattern", path);
            if (!(p->lit = dup_n(pat, pl))) return oom(c);
            p->lit_len = pl;
        }
    } else if (!strcmp(ty, "ByteLevel")) {
        int use_regex = 1;
        p->kind = TK_PT_BYTELEVEL;
        if ((rc = get_bool(c, o, "add_prefix_space", path, &p->add_prefix_space)) ||
            (rc = get_bool(c, o, "use_regex", path, &use_regex)))
            return rc;
        if (use_regex &&
            (rc = compile(c, &p->re, &p->jit, GPT2_REGEX, sizeof GPT2_REGEX - 1, path)))
            return rc;
    } else if (!strcmp(ty, "Metaspace")) {
        p->kind = TK_PT_METASPACE;
        p->split = 1;
        if ((rc = get_replacement(c, o, path, p->repl, &p->repl_len)) ||
            (rc = get_prepend_scheme(c, o, path, &p->prepend)) ||
            (rc = get_bool(c, o, "split", path, &p->split)))
            return rc;
    } else if (!strcmp(ty, "Digits")) {
        p->kind = TK_PT_DIGITS;
        if ((rc = get_bool(c, o, "individual_digits", path, &p->individual_digits))) return rc;
    } else {
        return fail(c, GN_EUNSUP, "%s.type \"%s\" is not a supported pre-tokenizer", path, ty);
    }
    t->n_pre++;
    return 0;
}

static int add_dec(ld *c, json_t *o, const char *path) {
    gn_tokenizer *t = c->t;
    const char *ty = NULL;
    int head = component(c, o, path, "decoders", add_dec, &ty);
    if (head <= 0) return head; /* a Sequence done, or an error */
    tk_dec d;
    memset(&d, 0, sizeof d);
    int rc;
    if (!strcmp(ty, "ByteLevel")) {
        d.kind = TK_DEC_BYTELEVEL;
    } else if (!strcmp(ty, "ByteFallback")) {
        d.kind = TK_DEC_BYTEFALLBACK;
    } else if (!strcmp(ty, "Fuse")) {
        d.kind = TK_DEC_FUSE;
    } else if (!strcmp(ty, "Replace")) {
        if ((rc = get_replace(c, o, path, &d.pat, &d.pat_len, &d.content, &d.content_len))) return rc;
        d.kind = TK_DEC_REPLACE;
    } else if (!strcmp(ty, "Strip")) {
        const char *s;
        size_t sl;
        long start = 0, stop = 0;
        if ((rc = get_str(c, o, "content", path, 1, &s, &sl)) ||
            (rc = get_int(c, o, "start", path, 0, 0, 1 << 20, &start)) ||
            (rc = get_int(c, o, "stop", path, 0, 0, 1 << 20, &stop)))
            return rc;
        int l = tk_utf8_len((const unsigned char *)s, sl);
        if (!l || (size_t)l != sl) return fail(c, GN_EFORMAT, "%s.content must be one character", path);
        d.kind = TK_DEC_STRIP;
        memcpy(d.strip_ch, s, sl);
        d.strip_ch_len = l;
        d.start = (int)start;
        d.stop = (int)stop;
    } else if (!strcmp(ty, "Metaspace")) {
        d.kind = TK_DEC_METASPACE;
        if ((rc = get_replacement(c, o, path, d.repl, &d.repl_len)) ||
            (rc = get_prepend_scheme(c, o, path, &d.prepend)))
            return rc;
    } else {
        return fail(c, GN_EUNSUP, "%s.type \"%s\" is not a supported decoder", path, ty);
    }
    tk_dec *nd = gn_realloc(t->dec, (size_t)(t->n_dec + 1) * sizeof *nd);
    if (!nd) {
        gn_free(d.pat);
        gn_free(d.content);
        return oom(c);
    }
    t->dec = nd;
    t->dec[t->n_dec++] = d;
    return 0;
}

static int push_id(ld *c, int32_t **arr, int *n, long id) {
    int32_t *p = gn_realloc(*arr, (size_t)(*n + 1) * sizeof *p);
    if (!p) return oom(c);
    *arr = p;
    p[(*n)++] = (int32_t)id;
    return 0;
}

static int add_post(ld *c, json_t *o, const char *path) {
    gn_tokenizer *t = c->t;
    const char *ty = NULL;
    int head = component(c, o, path, "processors", add_post, &ty);
    if (head <= 0) return head; /* a Sequence done, or an error */
    if (!strcmp(ty, "ByteLevel")) return 0; /* offsets only; ids are unchanged */
    if (!strcmp(ty, "BertProcessing") || !strcmp(ty, "RobertaProcessing")) {
        json_t *cls = json_object_get(o, "cls"), *sep = json_object_get(o, "sep");
        if (!json_is_array(cls) || !json_is_integer(json_array_get(cls, 1)) ||
            !json_is_array(sep) || !json_is_integer(json_array_get(sep, 1)))
            return fail(c, GN_EFORMAT, "%s: cls and sep must be [token, id] pairs", path);
        json_int_t a = json_integer_value(json_array_get(cls, 1));
        json_int_t b = json_integer_value(json_array_get(sep, 1));
        if (a < 0 || a >= t->n_vocab || b < 0 || b >= t->n_vocab)
            return fail(c, GN_ERANGE, "%s: cls/sep id out of range", path);
        int rc = push_id(c, &t->tpl_pre, &t->n_tpl_pre, (long)a);
        return rc ? rc : push_id(c, &t->tpl_post, &t->n_tpl_post, (long)b);
    }
    if (strcmp(ty, "TemplateProcessing") != 0)
        return fail(c, GN_EUNSUP, "%s.type \"%s\" is not a supported post-processor", path, ty);
    json_t *single = json_object_get(o, "single"), *sp = json_object_get(o, "special_tokens");
    if (!json_is_array(single)) return fail(c, GN_EFORMAT, "%s.single must be an array", path);
    if (sp && !json_is_null(sp) && !json_is_object(sp))
        return fail(c, GN_EFORMAT, "%s.special_tokens must be an object", path);
    int seen_seq = 0;
    for (size_t i = 0; i < json_array_size(single); i++) {
        json_t *it = json_array_get(single, i), *st, *sq;
        const char *name = NULL;
        if (json_is_object(it) && (sq = json_object_get(it, "Sequence"))) {
            seen_seq = 1;
            continue;
        }
        if (json_is_object(it) && (st = json_object_get(it, "SpecialToken")) && json_is_object(st))
            name = json_string_value(json_object_get(st, "id"));
        if (!name)
            return fail(c, GN_EFORMAT, "%s.single[%zu] must be a SpecialToken or a Sequence", path,
                        i);
        json_t *def = sp ? json_object_get(sp, name) : NULL, *ids;
        if (!json_is_object(def) || !json_is_array(ids = json_object_get(def, "ids")))
            return fail(c, GN_EFORMAT, "%s.special_tokens has no ids for \"%.60s\"", path, name);
        for (size_t k = 0; k < json_array_size(ids); k++) {
            json_t *v = json_array_get(ids, k);
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) >= t->n_vocab)
                return fail(c, GN_ERANGE, "%s.special_tokens[\"%.60s\"].ids[%zu] is not a valid id",
                            path, name, k);
            int rc = seen_seq ? push_id(c, &t->tpl_post, &t->n_tpl_post, (long)json_integer_value(v))
                              : push_id(c, &t->tpl_pre, &t->n_tpl_pre, (long)json_integer_value(v));
            if (rc) return rc;
        }
    }
    return 0;
}

/* ---- config ---- */

static int config_token(ld *c, json_t *cfg, const char *key, int32_t *id, const char **name_out) {
    json_t *v = json_object_get(cfg, key);
    const char *name = NULL;
    *name_out = NULL;
    if (!v || json_is_null(v)) return 0;
    if (json_is_string(v)) name = json_string_value(v);
    else if (json_is_object(v) && json_is_string(json_object_get(v, "content")))
        name = json_string_value(json_object_get(v, "content"));
    else
        return fail(c, GN_EFORMAT, "%s must be a string or an object with \"content\"", key);
    *name_out = name;
    *id = gn_tok_token_id(c->t, name);
    return 0;
}

static int load_config(ld *c, const char *js, size_t len) {
    gn_tokenizer *t = c->t;
    json_error_t je;
    /* model_max_length is often 1e30: read integers as reals */
    json_t *cfg = json_loadb(js, len, JSON_DECODE_INT_AS_REAL, &je);
    if (!cfg) return fail(c, GN_EFORMAT, "line %d column %d: %s", je.line, je.column, je.text);
    int rc = 0;
    const char *name;
    if (!json_is_object(cfg)) {
        rc = fail(c, GN_EFORMAT, "the top level must be an object");
        goto out;
    }
    int32_t bos = -1, eos = -1;
    if ((rc = config_token(c, cfg, "bos_token", &bos, &name))) goto out;
    if ((rc = config_token(c, cfg, "eos_token", &eos, &name))) goto out;
    if (name && eos < 0) {
        rc = fail(c, GN_EFORMAT, "eos_token \"%.60s\" is not a token of tokenizer.json", name);
        goto out;
    }
    if (t->bos < 0) t->bos = bos;
    t->eos = eos;
    json_t *ct = json_object_get(cfg, "chat_template");
    const char *tmpl = NULL;
    if (json_is_string(ct)) {
        tmpl = json_string_value(ct);
    } else if (json_is_array(ct)) {
        for (size_t i = 0; i < json_array_size(ct); i++) {
            json_t *e = json_array_get(ct, i);
            json_t *nm = json_object_get(e, "name"), *tp = json_object_get(e, "template");
            if (!json_is_string(tp)) continue;
            if (!tmpl || (json_is_string(nm) && !strcmp(json_string_value(nm), "default")))
                tmpl = json_string_value(tp);
        }
    } else if (ct && !json_is_null(ct)) {
        rc = fail(c, GN_EFORMAT, "chat_template must be a string or a list of templates");
        goto out;
    }
    if (tmpl && !(t->chat_template = gn_strdup(tmpl))) rc = oom(c);
out:
    json_decref(cfg);
    return rc;
}

/* ---- hash ---- */

static void compute_hash(gn_tokenizer *t, gn_sha256 *mh) {
    gn_sha256 h;
    uint8_t d[32], md[32];
    gn_sha256_init(&h);
    gn_sha256_update(&h, "genarm-tokenizer-v1", 20);
    int32_t nv = t->n_vocab;
    gn_sha256_update(&h, &nv, sizeof nv);
    for (int32_t id = 0; id < t->n_vocab; id++) {
        uint32_t len = t->tok_len[id];
        uint8_t sp = t->is_special[id];
        gn_sha256_update(&h, &len, sizeof len);
        gn_sha256_update(&h, &sp, 1);
        if (len != UINT32_MAX) gn_sha256_update(&h, t->tok_ptr[id], len);
    }
    gn_sha256_final(mh, md);
    gn_sha256_update(&h, md, sizeof md);
    int32_t meta[6] = {t->n_merges, t->unk_id, t->byte_fallback, t->ignore_merges,
                       t->n_tpl_pre, t->n_tpl_post};
    gn_sha256_update(&h, meta, sizeof meta);
    gn_sha256_update(&h, t->tpl_pre, (size_t)t->n_tpl_pre * sizeof *t->tpl_pre);
    gn_sha256_update(&h, t->tpl_post, (size_t)t->n_tpl_post * sizeof *t->tpl_post);
    gn_sha256_final(&h, d);
    gn_sha256_hex(d, t->hash);
}

/* ---- load ---- */

static gn_tokenizer *load(const char *tok_json, size_t tok_len, const char *cfg_json,
                          size_t cfg_len, const char *tok_name, const char *cfg_name,
                          gn_err *err) {
    gn_tokenizer *t = gn_calloc(1, sizeof *t);
    ld c = {t, err, tok_name};
    if (!t) {
        oom(&c);
        return NULL;
    }
    t->bos = t->eos = -1;
    t->unk_id = -1;
    t->pre = gn_calloc(TK_MAX_DEPTH, sizeof *t->pre);
    if (!t->pre) {
        oom(&c);
        goto fail;
    }
    json_error_t je;
    json_t *root = json_loadb(tok_json, tok_len, 0, &je);
    if (!root) {
        fail(&c, GN_EFORMAT, "line %d column %d: %s", je.line, je.column, je.text);
        goto fail;
    }
    gn_sha256 mh;
    gn_sha256_init(&mh);
    size_t n_entries = 0;
    int32_t max_id = -1;
    json_t *x;
    int rc;
    if (!json_is_object(root)) {
        rc = fail(&c, GN_EFORMAT, "the top level must be an object");
        goto fail_json;
    }
    if ((rc = load_model(&c, json_object_get(root, "model"), &mh, &n_entries))) goto fail_json;
    for (size_t i = 0; i < t->vocab.n; i++)
        if (t->vocab.ent[i].val > max_id) max_id = t->vocab.ent[i].val;
    if ((rc = load_added(&c, json_object_get(root, "added_tokens"), n_entries, &max_id)))
        goto fail_json;
    t->n_vocab = max_id + 1;
    t->tok_ptr = gn_calloc((size_t)(t->n_vocab ? t->n_vocab : 1), sizeof *t->tok_ptr);
    t->tok_len = gn_malloc((size_t)(t->n_vocab ? t->n_vocab : 1) * sizeof *t->tok_len);
    t->is_special = gn_calloc((size_t)(t->n_vocab ? t->n_vocab : 1), 1);
    if (!t->tok_ptr || !t->tok_len || !t->is_special) {
        rc = oom(&c);
        goto fail_json;
    }
    for (int i = 0; i < t->n_vocab; i++) t->tok_len[i] = UINT32_MAX;
    for (size_t i = 0; i < t->vocab.n; i++) {
        t->tok_ptr[t->vocab.ent[i].val] = t->vocab.ent[i].s;
        t->tok_len[t->vocab.ent[i].val] = t->vocab.ent[i].len;
    }
    for (int i = 0; i < t->n_added; i++) {
        tk_added *a = &t->added[i];
        t->tok_ptr[a->id] = a->s;
        t->tok_len[a->id] = (uint32_t)a->len;
    }
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].special) t->is_special[t->added[i].id] = 1;

    if ((x = json_object_get(root, "normalizer")) && !json_is_null(x) &&
        (rc = add_norm(&c, x, "normalizer")))
        goto fail_json;
    if ((x = json_object_get(root, "pre_tokenizer")) && !json_is_null(x) &&
        (rc = add_pretok(&c, x, "pre_tokenizer")))
        goto fail_json;
    if ((x = json_object_get(root, "decoder")) && !json_is_null(x) &&
        (rc = add_dec(&c, x, "decoder")))
        goto fail_json;
    if ((x = json_object_get(root, "post_processor")) && !json_is_null(x) &&
        (rc = add_post(&c, x, "post_processor")))
        goto fail_json;
    t->meta_chunks = t->n_pre == 0 && !t->merge_cross_meta && !t->cont_prefix && !t->eow_suffix &&
                     tk_strmap_get(&t->vocab, "\xE2\x96\x81", 3) >= 0;
    /* normalized added tokens are matched in normalized text */
    for (int i = 0; i < t->n_added; i++) {
        tk_added *a = &t->added[i];
        if (!a->normalized) continue;
        tk_buf nb = {0};
        if ((rc = tk_normalize(t, a->s, a->len, &nb, err))) {
            tk_buf_free(&nb);
            gn_err_prefix(err, "%s: added_tokens: ", tok_name);
            goto fail_json;
        }
        if (!nb.p && tk_buf_put(&nb, "", 0)) {
            rc = oom(&c);
            goto fail_json;
        }
        a->ns = nb.p;
        a->nlen = nb.n;
        /* the reference reports (and decodes) a normalized added token by its
         * normalized content */
        t->tok_ptr[a->id] = a->ns;
        t->tok_len[a->id] = (uint32_t)a->nlen;
    }
    if ((rc = build_matcher(&c, &t->m_raw, 0)) || (rc = build_matcher(&c, &t->m_norm, 1)))
        goto fail_json;
    json_decref(root);
    root = NULL;
    if (t->n_tpl_pre) t->bos = t->tpl_pre[0];
    if (cfg_json) {
        c.file = cfg_name;
        if (load_config(&c, cfg_json, cfg_len)) goto fail;
    }
    compute_hash(t, &mh);
    return t;
fail_json:
    json_decref(root);
fail:
    gn_tok_free(t);
    return NULL;
}

gn_tokenizer *gn_tok_load_mem(const char *tok_json, size_t tok_len, const char *cfg_json,
                              size_t cfg_len, gn_err *err) {
    if (!tok_json) {
        gn_errf(err, GN_EINVAL, "gn_tok_load_mem: NULL tokenizer.json text");
        return NULL;
    }
    return load(tok_json, tok_len, cfg_json, cfg_len, "tokenizer.json", "tokenizer_config.json",
                err);
}

/* Reads a whole file (at most 1 GiB). 0, GN_ENOTFOUND when it does not exist,
 * or another error. */
static int read_file(const char *path, char **buf, size_t *len, gn_err *err) {
    FILE *f = fopen(path, "rb");
    *buf = NULL;
    *len = 0;
    if (!f) {
        int e = errno;
        return gn_errf(err, e == ENOENT ? GN_ENOTFOUND : GN_EIO, "%s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return gn_errf(err, GN_EIO, "%s: not a regular file", path);
    }
    if (st.st_size > (1L << 30)) {
        fclose(f);
        return gn_errf(err, GN_ERANGE, "%s: %lld bytes is too large", path, (long long)st.st_size);
    }
    size_t n = (size_t)st.st_size;
    char *b = gn_malloc(n + 1);
    if (!b) {
        fclose(f);
        return gn_errf(err, GN_ENOMEM, "%s: out of memory", path);
    }
    size_t got = fread(b, 1, n, f);
    fclose(f);
    if (got != n) {
        gn_free(b);
        return gn_errf(err, GN_EIO, "%s: short read", path);
    }
    b[n] = '\0';
    *buf = b;
    *len = n;
    return 0;
}

gn_tokenizer *gn_tok_load(const char *path, gn_err *err) {
    if (!path) {
        gn_errf(err, GN_EINVAL, "gn_tok_load: NULL path");
        return NULL;
    }
    struct stat st;
    if (stat(path, &st) != 0) {
        gn_errf(err, errno == ENOENT ? GN_ENOTFOUND : GN_EIO, "%s: %s", path, strerror(errno));
        return NULL;
    }
    size_t pl = strlen(path);
    char *tok_path = gn_malloc(pl + 32), *cfg_path = gn_malloc(pl + 32);
    char *tj = NULL, *cj = NULL;
    size_t tl = 0, cl = 0;
    gn_tokenizer *t = NULL;
    if (!tok_path || !cfg_path) {
        gn_errf(err, GN_ENOMEM, "out of memory");
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        snprintf(tok_path, pl + 32, "%s/tokenizer.json", path);
        snprintf(cfg_path, pl + 32, "%s/tokenizer_config.json", path);
    } else {
        memcpy(tok_path, path, pl + 1);
        const char *slash = strrchr(path, '/');
        size_t dl = slash ? (size_t)(slash - path) + 1 : 0;
        memcpy(cfg_path, path, dl);
        memcpy(cfg_path + dl, "tokenizer_config.json", 22);
    }
    if (read_file(tok_path, &tj, &tl, err)) goto out;
    int rc = read_file(cfg_path, &cj, &cl, err);
    if (rc && rc != GN_ENOTFOUND) goto out;
    if (rc) gn_err_clear(err);
    t = load(tj, tl, cj, cl, tok_path, cfg_path, err);
out:
    gn_free(tj);
    gn_free(cj);
    gn_free(tok_path);
    gn_free(cfg_path);
    return t;
}

void gn_tok_free(gn_tokenizer *t) {
    if (!t) return;
    gn_free(t->arena);
    gn_free(t->tok_ptr);
    gn_free(t->tok_len);
    tk_strmap_free(&t->vocab);
    tk_pairmap_free(&t->merges);
    gn_free(t->cont_prefix);
    gn_free(t->eow_suffix);
    for (int i = 0; i < t->n_added; i++) {
        gn_free(t->added[i].s);
        gn_free(t->added[i].ns);
    }
    gn_free(t->added);
    tk_strmap_free(&t->added_map);
    gn_free(t->m_raw.idx);
    gn_free(t->m_norm.idx);
    gn_free(t->is_special);
    for (int i = 0; i < t->n_norm; i++) {
        gn_free(t->norm[i].a);
        gn_free(t->norm[i].b);
    }
    gn_free(t->norm);
    if (t->pre) {
        for (int i = 0; i < TK_MAX_DEPTH; i++) {
            pcre2_code_free(t->pre[i].re);
            gn_free(t->pre[i].lit);
        }
    }
    gn_free(t->pre);
    for (int i = 0; i < t->n_dec; i++) {
        gn_free(t->dec[i].pat);
        gn_free(t->dec[i].content);
    }
    gn_free(t->dec);
    gn_free(t->tpl_pre);
    gn_free(t->tpl_post);
    gn_free(t->chat_template);
    pcre2_compile_context_free(t->cctx);
    pcre2_general_context_free(t->gctx);
    gn_free(t);
}

/* ---- accessors ---- */

int gn_tok_n_vocab(const gn_tokenizer *t) { return t ? t->n_vocab : 0; }
int gn_tok_bos(const gn_tokenizer *t) { return t ? t->bos : -1; }
int gn_tok_eos(const gn_tokenizer *t) { return t ? t->eos : -1; }

int gn_tok_token_id(const gn_tokenizer *t, const char *token) {
    if (!t || !token) return -1;
    size_t n = strlen(token);
    int32_t id = tk_strmap_get(&t->added_map, token, n);
    return id >= 0 ? id : tk_strmap_get(&t->vocab, token, n);
}

const char *gn_tok_token_str(const gn_tokenizer *t, int id) {
    if (!t || id < 0 || id >= t->n_vocab || t->tok_len[id] == UINT32_MAX) return NULL;
    return t->tok_ptr[id];
}

int gn_tok_is_special(const gn_tokenizer *t, int id) {
    return t && id >= 0 && id < t->n_vocab && t->is_special[id];
}

const char *gn_tok_hash(const gn_tokenizer *t) { return t ? t->hash : NULL; }
const char *gn_tok_chat_template(const gn_tokenizer *t) { return t ? t->chat_template : NULL; }
