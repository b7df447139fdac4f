/* generate.c — the single-process GenARM loop: step every model, draw the
 * next token (draw.h: combine + sample on dense rows), append; plus streaming
 * text with stop strings, and ARM scoring. */
#define _GNU_SOURCE /* memmem */
#include "generate.h"

#include <string.h>
#include <time.h>

#include "gn_alloc.h"
#include "tokenizer.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* ======================================================================== */
/* Streaming text with stop strings                                          */
/* ======================================================================== */

struct gn_gen_text {
    gn_tok_stream *ts;
    char **stop; /* (n_stop) owned copies */
    size_t *stop_len;
    int n_stop;
    char *buf; /* decoded text so far (cut at a stop string), NUL-terminated */
    size_t len, cap;
    size_t emitted; /* bytes of buf already handed out */
    int stopped;    /* a stop string was found: no more text */
};

void gn_gen_text_free(gn_gen_text *x) {
    if (!x)
        return;
    gn_tok_stream_free(x->ts);
    for (int i = 0; i < x->n_stop; i++)
        gn_free(x->stop[i]);
    gn_free(x->stop);
    gn_free(x->stop_len);
    gn_free(x->buf);
    gn_free(x);
}

gn_gen_text *gn_gen_text_create(const gn_tokenizer *t, const char *const *stop, int n_stop,
                                gn_err *err) {
    if (n_stop < 0 || (n_stop > 0 && !stop)) {
        gn_errf(err, GN_EINVAL, "stop strings: bad count %d", n_stop);
        return NULL;
    }
    for (int i = 0; i < n_stop; i++)
        if (!stop[i] || !stop[i][0]) {
            gn_errf(err, GN_EINVAL, "stop string %d is empty", i);
            return NULL;
        }
    gn_gen_text *x = gn_calloc(1, sizeof *x);
    if (!x)
        goto oom;
    x->cap = 256;
    x->buf = gn_malloc(x->cap);
    if (!x->buf)
        goto oom;
    x->buf[0] = '\0';
    if (n_stop > 0) {
        x->stop = gn_calloc((size_t)n_stop, sizeof *x->stop);
        x->stop_len = gn_calloc((size_t)n_stop, sizeof *x->stop_len);
        if (!x->stop || !x->stop_len)
            goto oom;
        for (int i = 0; i < n_stop; i++) {
            x->stop[i] = gn_strdup(stop[i]);
            if (!x->stop[i])
                goto oom;
            x->n_stop = i + 1;
            x->stop_len[i] = strlen(stop[i]);
        }
    }
    x->ts = gn_tok_stream_create(t, 1, err);
    if (!x->ts) {
        gn_gen_text_free(x);
        return NULL;
    }
    return x;
oom:
    gn_gen_text_free(x);
    gn_errf(err, GN_ENOMEM, "stop strings: out of memory");
    return NULL;
}

static int text_append(gn_gen_text *x, const char *s, size_t n, gn_err *err) {
    if (n == 0)
        return 0;
    size_t need;
    if (gn_size_add(x->len, n + 1, &need))
        return gn_errf(err, GN_ERANGE, "text too long");
    if (need > x->cap) {
        size_t cap = x->cap;
        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        char *b = gn_realloc(x->buf, cap);
        if (!b)
            return gn_errf(err, GN_ENOMEM, "out of memory for generated text");
        x->buf = b;
        x->cap = cap;
    }
    memcpy(x->buf + x->len, s, n);
    x->len += n;
    x->buf[x->len] = '\0';
    return 0;
}

/* After text was appended at old_len: cut at the earliest stop string, or
 * hold back the longest tail that is a proper prefix of a stop string
 * (final = 1: hold nothing back). Emits buf[emitted .. new emitted). */
static void text_release(gn_gen_text *x, size_t old_len, int final, const char **out,
                         size_t *out_len, int *stopped) {
    size_t best = SIZE_MAX;
    for (int i = 0; i < x->n_stop; i++) {
        size_t sl = x->stop_len[i];
        /* A match cannot start inside text already emitted (that text never
         * ends with a stop-string prefix), nor lie wholly in old text. */
        size_t start = old_len + 1 > sl ? old_len + 1 - sl : 0;
        if (start < x->emitted)
            start = x->emitted;
        if (x->len < start + sl)
            continue;
        const char *hit = memmem(x->buf + start, x->len - start, x->stop[i], sl);
        if (hit && (size_t)(hit - x->buf) < best)
            best = (size_t)(hit - x->buf);
    }
    size_t end = x->len;
    if (best != SIZE_MAX) {
        x->len = end = best;
        x->buf[end] = '\0';
        x->stopped = 1;
    } else if (!final) {
        size_t hold = 0;
        for (int i = 0; i < x->n_stop; i++) {
            size_t sl = x->stop_len[i];
            for (size_t k = sl - 1; k > hold; k--) {
                if (k > x->len - x->emitted)
                    continue;
                if (memcmp(x->buf + x->len - k, x->stop[i], k) == 0) {
                    hold = k;
                    break;
                }
            }
        }
        end = x->len - hold;
    }
    *out = x->buf + x->emitted;
    *out_len = end - x->emitted;
    x->emitted = end;
    *stopped = x->stopped;
}

int gn_gen_text_push(gn_gen_text *x, int32_t token, const char **out, size_t *out_len, int *stopped,
                     gn_err *err) {
    *out = x->buf + x->emitted;
    *out_len = 0;
    *stopped = x->stopped;
    if (x->stopped)
        return 0;
    const char *piece;
    size_t n;
    int rc = gn_tok_stream_push(x->ts, token, &piece, &n, err);
    if (rc)
        return rc;
    size_t old_len = x->len;
    if ((rc = text_append(x, piece, n, err)))
        return rc;
    text_release(x, old_len, 0, out, out_len, stopped);
    return 0;
}

int gn_gen_text_finish(gn_gen_text *x, const char **out, size_t *out_len, int *stopped,
                       gn_err *err) {
    *out = x->buf + x->emitted;
    *out_len = 0;
    *stopped = x->stopped;
    if (x->stopped)
        return 0;
    const char *piece;
    size_t n;
    int rc = gn_tok_stream_flush(x->ts, &piece, &n, err);
    if (rc)
        return rc;
    size_t old_len = x->len;
    if ((rc = text_append(x, piece, n, err)))
        return rc;
    text_release(x, old_len, 1, out, out_len, stopped);
    return 0;
}

const char *gn_gen_text_str(const gn_gen_text *x, size_t *len) {
    if (len)
        *len = x->emitted;
    return x->buf;
}

/* ======================================================================== */
/* The generator                                                             */
/* ======================================================================== */

struct gn_generator {
    int n_models;        /* 1 + n_arms; model 0 is the base */
    gn_model **models;   /* (n_models) borrowed */
    gn_runner **runners; /* (n_models) owned */
    gn_guidance profile;
    int n_vocab;   /* shared width of every row */
    int max_seqs;  /* sequences per runner step */
    int ctx_limit; /* tokens a sequence may hold in every model */
    const gn_tokenizer *tok;
    int eos[GN_MAX_EOS + 1];
    int n_eos;
    gn_drawer *drawer;  /* combine + sample (+ log-probs) of every step */
    gn_row_view *views; /* (n_models) one sequence's rows, all dense */
};

void gn_generator_free(gn_generator *g) {
    if (!g)
        return;
    if (g->runners)
        for (int i = 0; i < g->n_models; i++)
            gn_runner_free(g->runners[i]);
    gn_free(g->runners);
    gn_free(g->models);
    gn_drawer_free(g->drawer);
    gn_free(g->views);
    gn_free(g);
}

int gn_generator_n_vocab(const gn_generator *g) { return g->n_vocab; }
const gn_tokenizer *gn_generator_tokenizer(const gn_generator *g) { return g->tok; }
gn_runner *gn_generator_runner(gn_generator *g, int mi) {
    return mi >= 0 && mi < g->n_models ? g->runners[mi] : NULL;
}

static void add_eos(gn_generator *g, int id) {
    if (id < 0 || id >= g->n_vocab)
        return;
    for (int i = 0; i < g->n_eos; i++)
        if (g->eos[i] == id)
            return;
    if (g->n_eos < GN_MAX_EOS + 1)
        g->eos[g->n_eos++] = id;
}

static int is_eos(const gn_generator *g, int32_t id) {
    for (int i = 0; i < g->n_eos; i++)
        if (g->eos[i] == id)
            return 1;
    return 0;
}

gn_generator *gn_generator_create(gn_model *base, gn_model *const *arms, int n_arms,
                                  const gn_guidance *profile, const gn_runner_params *rp,
                                  gn_err *err) {
    if (!base) {
        gn_errf(err, GN_EINVAL, "generator: no base model");
        return NULL;
    }
    if (n_arms < 0 || n_arms > GN_GUIDANCE_MAX_ARMS || (n_arms > 0 && !arms)) {
        gn_errf(err, GN_EINVAL, "generator: %d ARMs (at most %d)", n_arms, GN_GUIDANCE_MAX_ARMS);
        return NULL;
    }
    gn_guidance prof = gn_guidance_default();
    prof.n_arms = n_arms;
    if (profile) {
        if (profile->n_arms != n_arms) {
            gn_errf(err, GN_EINVAL, "generator: profile has %d weights for %d ARMs",
                    profile->n_arms, n_arms);
            return NULL;
        }
        prof = *profile;
    }
    if (gn_guidance_validate(&prof, err))
        return NULL;

    /* Every model must share the base's vocabulary (ARCHITECTURE.md §1). */
    const gn_tokenizer *bt = gn_model_tokenizer(base);
    if (!bt) {
        gn_errf(err, GN_EINVAL, "base model %s: no tokenizer loaded", gn_model_dir(base));
        return NULL;
    }
    int n_vocab = gn_model_n_out(base);
    for (int i = 0; i < n_arms; i++) {
        const gn_tokenizer *at = arms[i] ? gn_model_tokenizer(arms[i]) : NULL;
        if (!at) {
            gn_errf(err, GN_EINVAL, "ARM %s: no tokenizer loaded",
                    arms[i] ? gn_model_dir(arms[i]) : "(null)");
            return NULL;
        }
        if (strcmp(gn_tok_hash(at), gn_tok_hash(bt)) != 0) {
            gn_errf(err, GN_EMISMATCH,
                    "ARM %s: its tokenizer differs from the base model's (%s): GenARM needs one "
                    "shared vocabulary (tokenizer hash %.12s vs %.12s)",
                    gn_model_dir(arms[i]), gn_model_dir(base), gn_tok_hash(at), gn_tok_hash(bt));
            return NULL;
        }
        if (gn_model_n_out(arms[i]) != n_vocab) {
            gn_errf(err, GN_EMISMATCH, "ARM %s: %d output columns but the base model %s has %d",
                    gn_model_dir(arms[i]), gn_model_n_out(arms[i]), gn_model_dir(base), n_vocab);
            return NULL;
        }
    }

    gn_runner_params rpar = rp ? *rp : gn_runner_default_params();
    gn_generator *g = gn_calloc(1, sizeof *g);
    if (!g)
        goto oom;
    g->n_models = 1 + n_arms;
    g->profile = prof;
    g->n_vocab = n_vocab;
    g->tok = bt;
    g->max_seqs = rpar.max_seqs > 0 ? rpar.max_seqs : 64;
    g->models = gn_calloc((size_t)g->n_models, sizeof *g->models);
    g->runners = gn_calloc((size_t)g->n_models, sizeof *g->runners);
    g->views = gn_calloc((size_t)g->n_models, sizeof *g->views);
    if (!g->models || !g->runners || !g->views)
        goto oom;
    g->ctx_limit = rpar.max_ctx > 0 ? rpar.max_ctx : 4096;
    for (int mi = 0; mi < g->n_models; mi++) {
        gn_model *m = mi == 0 ? base : arms[mi - 1];
        g->models[mi] = m;
        int mp = gn_model_cfg(m)->max_pos;
        if (mp > 0 && mp < g->ctx_limit)
            g->ctx_limit = mp;
        g->runners[mi] = gn_runner_create(m, &rpar, err);
        if (!g->runners[mi]) {
            gn_err_prefix(err, "%s %s: ", mi == 0 ? "base model" : "ARM", gn_model_dir(m));
            gn_generator_free(g);
            return NULL;
        }
    }
    g->drawer = gn_drawer_create(n_vocab, err);
    if (!g->drawer) {
        gn_generator_free(g);
        return NULL;
    }
    /* EOS ids: config.json + generation_config.json, then the tokenizer's. */
    const gn_model_config *cfg = gn_model_cfg(base);
    for (int i = 0; i < cfg->n_eos && i < GN_MAX_EOS; i++)
        add_eos(g, cfg->eos_token_ids[i]);
    add_eos(g, gn_tok_eos(bt));
    return g;
oom:
    gn_generator_free(g);
    gn_errf(err, GN_ENOMEM, "generator: out of memory");
    return NULL;
}

gn_gen_request gn_gen_default_request(void) {
    gn_gen_request r;
    memset(&r, 0, sizeof r);
    r.add_special = 1;
    r.sampling = gn_sampler_default_params();
    r.max_tokens = 256;
    return r;
}

void gn_gen_result_free(gn_gen_result *r) {
    if (!r)
        return;
    gn_free(r->tokens);
    gn_free(r->text);
    memset(r, 0, sizeof *r);
}

/* ---- one sequence's state ------------------------------------------------ */

typedef struct gseq {
    int idx; /* request index */
    const gn_gen_request *req;
    gn_guidance guid; /* resolved profile */
    gn_draw_params dp; /* guid, the request's sampling and log-prob asks */
    gn_seq **kv;      /* (n_models) one KV sequence per model */
    int32_t **prompt; /* (n_models) prompt ids per model */
    int *n_prompt;    /* (n_models) */
    int owns_prompt;  /* prompt[] were gn_malloc'd by the tokenizer */
    gn_rng rng;
    gn_gen_text *text;
    int32_t *tokens; /* (cap) generated ids */
    int n_tokens, cap;
    int active; /* still generating */
    int row;    /* row of this sequence in the last step's output */
    const char *finish;
    double ttft_ms, total_ms;
} gseq;

static void gseq_release_kv(gseq *s, int n_models) {
    if (!s->kv)
        return;
    for (int mi = 0; mi < n_models; mi++) {
        gn_seq_free(s->kv[mi]);
        s->kv[mi] = NULL;
    }
}

static void gseq_clear(gseq *s, int n_models) {
    gseq_release_kv(s, n_models);
    gn_free(s->kv);
    if (s->prompt && s->owns_prompt)
        for (int mi = 0; mi < n_models; mi++)
            gn_free(s->prompt[mi]);
    gn_free(s->prompt);
    gn_free(s->n_prompt);
    gn_gen_text_free(s->text);
    gn_free(s->tokens);
    memset(s, 0, sizeof *s);
}

/* Validates request q (index idx), tokenizes its prompt for every model and
 * creates its KV sequences. */
static int gseq_setup(gn_generator *g, gseq *s, const gn_gen_request *q, int idx, gn_err *err) {
    const int nm = g->n_models;
    s->idx = idx;
    s->req = q;
    s->row = -1;
    int rc = gn_sampler_validate_params(&q->sampling, err);
    if (rc)
        return gn_err_prefix(err, "request %d: ", idx);
    s->guid = q->guidance ? *q->guidance : g->profile;
    if (s->guid.n_arms != nm - 1)
        return gn_errf(err, GN_EINVAL, "request %d: guidance has %d weights for %d ARMs", idx,
                       s->guid.n_arms, nm - 1);
    if ((rc = gn_guidance_validate(&s->guid, err)))
        return gn_err_prefix(err, "request %d: ", idx);
    if (q->max_tokens < 0)
        return gn_errf(err, GN_EINVAL, "request %d: max_tokens must be >= 0 (got %d)", idx,
                       q->max_tokens);
    if (!q->prompt_ids && !q->prompt && !q->prompts)
        return gn_errf(err, GN_EINVAL, "request %d: no prompt", idx);
    if (q->n_top < 0 || q->n_top > GN_DRAW_MAX_TOP)
        return gn_errf(err, GN_EINVAL, "request %d: n_top must be in 0..%d (got %d)", idx,
                       GN_DRAW_MAX_TOP, q->n_top);
    s->dp = gn_draw_default_params();
    s->dp.guidance = s->guid;
    s->dp.sampling = q->sampling;
    s->dp.want_logprob = q->want_logprob != 0;
    s->dp.n_top = q->n_top;
    gn_rng_seed(&s->rng, q->sampling.seed);

    s->kv = gn_calloc((size_t)nm, sizeof *s->kv);
    s->prompt = gn_calloc((size_t)nm, sizeof *s->prompt);
    s->n_prompt = gn_calloc((size_t)nm, sizeof *s->n_prompt);
    if (!s->kv || !s->prompt || !s->n_prompt)
        return gn_errf(err, GN_ENOMEM, "request %d: out of memory", idx);

    int room = g->ctx_limit; /* generated tokens that fit in every model */
    s->owns_prompt = q->prompt_ids == NULL;
    for (int mi = 0; mi < nm; mi++) {
        if (q->prompt_ids) {
            if (q->n_prompt_ids <= 0)
                return gn_errf(err, GN_EINVAL, "request %d: empty prompt", idx);
            for (int i = 0; i < q->n_prompt_ids; i++)
                if (q->prompt_ids[i] < 0 || q->prompt_ids[i] >= g->n_vocab)
                    return gn_errf(err, GN_EINVAL,
                                   "request %d: prompt token %d is %d, outside [0, %d)", idx, i,
                                   q->prompt_ids[i], g->n_vocab);
            s->prompt[mi] = (int32_t *)q->prompt_ids;
            s->n_prompt[mi] = q->n_prompt_ids;
        } else {
            const char *text = q->prompts && q->prompts[mi] ? q->prompts[mi] : q->prompt;
            const gn_tokenizer *t = gn_model_tokenizer(g->models[mi]);
            if (!text)
                return gn_errf(err, GN_EINVAL, "request %d: no prompt for model %d", idx, mi);
            rc = gn_tok_encode(t, text, strlen(text), q->add_special, &s->prompt[mi],
                               &s->n_prompt[mi], err);
            if (rc)
                return gn_err_prefix(err, "request %d: tokenizing the prompt for %s: ", idx,
                                     gn_model_dir(g->models[mi]));
            if (s->n_prompt[mi] == 0)
                return gn_errf(err, GN_EINVAL, "request %d: the prompt is empty after tokenization",
                               idx);
        }
        if (s->n_prompt[mi] > g->ctx_limit)
            return gn_errf(err, GN_ERANGE,
                           "request %d: prompt of %d tokens for %s exceeds the context limit of %d",
                           idx, s->n_prompt[mi], gn_model_dir(g->models[mi]), g->ctx_limit);
        if (g->ctx_limit - s->n_prompt[mi] < room)
            room = g->ctx_limit - s->n_prompt[mi];
        s->kv[mi] = gn_seq_create(g->runners[mi], err);
        if (!s->kv[mi])
            return gn_err_prefix(err, "request %d: ", idx);
    }
    /* the last sampled token is never appended, hence + 1 */
    s->cap = q->max_tokens < room + 1 ? q->max_tokens : room + 1;
    s->tokens = gn_malloc((size_t)(s->cap > 0 ? s->cap : 1) * sizeof *s->tokens);
    if (!s->tokens)
        return gn_errf(err, GN_ENOMEM, "request %d: out of memory", idx);
    s->text = gn_gen_text_create(g->tok, q->stop, q->n_stop, err);
    if (!s->text)
        return gn_err_prefix(err, "request %d: ", idx);
    s->active = 1;
    return 0;
}

/* Ends sequence s: flushes text that was held back, frees its KV. */
static int gseq_finish(gn_generator *g, gseq *s, const char *reason, const gn_gen_callbacks *cb,
                       double t0, gn_err *err) {
    const char *out;
    size_t n;
    int stopped;
    int rc = 0;
    if (strcmp(reason, "abort") != 0) {
        rc = gn_gen_text_finish(s->text, &out, &n, &stopped, err);
        if (rc)
            return rc;
        if (stopped)
            reason = "stop";
        if (n && cb && cb->on_text)
            cb->on_text(cb->ud, s->idx, -1, out, n);
    }
    s->finish = reason;
    s->active = 0;
    s->total_ms = now_ms() - t0;
    if (s->n_tokens == 0)
        s->ttft_ms = s->total_ms;
    gseq_release_kv(s, g->n_models);
    return 0;
}

/* One runner step per model over the active sequences (in index order; each
 * sequence's row is recorded in s->row). first = 1: the prompts, else each
 * sequence's last token. The per-model steps are independent: this is where
 * the service fans out to its base and reward workers. */
static int step_models(gn_generator *g, gseq *seqs, int n, int first, gn_step_item *items,
                       float **rows, gn_err *err) {
    for (int mi = 0; mi < g->n_models; mi++) {
        int k = 0;
        for (int j = 0; j < n; j++) {
            gseq *s = &seqs[j];
            if (!s->active)
                continue;
            items[k].seq = s->kv[mi];
            items[k].tokens = first ? s->prompt[mi] : &s->tokens[s->n_tokens - 1];
            items[k].n_tokens = first ? s->n_prompt[mi] : 1;
            items[k].all_logits = 0;
            s->row = k;
            k++;
        }
        if (k == 0)
            return 0;
        int rc = gn_runner_step(g->runners[mi], items, k, rows[mi], err);
        if (rc)
            return gn_err_prefix(err, "%s %s: ", mi == 0 ? "base model" : "ARM",
                                 gn_model_dir(g->models[mi]));
    }
    return 0;
}

/* Draws (draw.h, dense rows: combine + sample) and appends one token for
 * every active sequence. */
static int sample_all(gn_generator *g, gseq *seqs, int n, float **rows, const float **arm_rows,
                      const gn_gen_callbacks *cb, double t0, gn_err *err) {
    const int nv = g->n_vocab;
    for (int j = 0; j < n; j++) {
        gseq *s = &seqs[j];
        if (!s->active)
            continue;
        const float *base_row = rows[0] + (size_t)s->row * nv;
        for (int i = 0; i + 1 < g->n_models; i++)
            arm_rows[i] = rows[i + 1] + (size_t)s->row * nv;
        for (int mi = 0; mi < g->n_models; mi++)
            g->views[mi].dense = mi == 0 ? base_row : arm_rows[mi - 1];
        gn_draw_result dr;
        int rc = gn_draw(g->drawer, &s->dp, g->views, &s->rng, &dr, err);
        if (rc < 0)
            return gn_err_prefix(err, "request %d: ", s->idx);
        if (dr.status != GN_DRAW_DONE) /* dense rows always draw */
            return gn_errf(err, GN_EINVAL, "request %d: the draw asked for rows (status %d)",
                           s->idx, dr.status);
        const int32_t tok = dr.token;
        if (s->n_tokens == 0)
            s->ttft_ms = now_ms() - t0;
        s->tokens[s->n_tokens++] = tok;
        if (cb && cb->on_step) {
            gn_gen_step_info info = {s->idx,
                                     s->n_tokens - 1,
                                     tok,
                                     nv,
                                     gn_drawer_scores(g->drawer),
                                     base_row,
                                     arm_rows,
                                     g->n_models - 1,
                                     &dr};
            cb->on_step(cb->ud, &info);
        }
        if (!s->req->ignore_eos && is_eos(g, tok)) {
            if ((rc = gseq_finish(g, s, "stop", cb, t0, err)))
                return rc;
            continue;
        }
        const char *out;
        size_t len;
        int stopped;
        if ((rc = gn_gen_text_push(s->text, tok, &out, &len, &stopped, err)))
            return gn_err_prefix(err, "request %d: ", s->idx);
        if (len && cb && cb->on_text && cb->on_text(cb->ud, s->idx, tok, out, len)) {
            if ((rc = gseq_finish(g, s, "abort", cb, t0, err)))
                return rc;
            continue;
        }
        if (stopped)
            rc = gseq_finish(g, s, "stop", cb, t0, err);
        else if (s->n_tokens >= s->cap)
            rc = gseq_finish(g, s, "length", cb, t0, err);
        if (rc)
            return rc;
    }
    return 0;
}

/* Generates one group of at most max_seqs requests. */
static int generate_group(gn_generator *g, const gn_gen_request *reqs, int base_idx, int n,
                          gn_gen_result *res, const gn_gen_callbacks *cb, double t0, gn_err *err) {
    const int nm = g->n_models;
    int rc = 0;
    gseq *seqs = gn_calloc((size_t)n, sizeof *seqs);
    gn_step_item *items = gn_calloc((size_t)n, sizeof *items);
    float **rows = gn_calloc((size_t)nm, sizeof *rows);
    const float **arm_rows = gn_calloc((size_t)nm, sizeof *arm_rows);
    size_t row_floats;
    if (!seqs || !items || !rows || !arm_rows ||
        gn_size_mul((size_t)n, (size_t)g->n_vocab, &row_floats)) {
        rc = gn_errf(err, GN_ENOMEM, "generate: out of memory");
        goto done;
    }
    for (int mi = 0; mi < nm; mi++) {
        rows[mi] = gn_malloc(row_floats * sizeof(float));
        if (!rows[mi]) {
            rc = gn_errf(err, GN_ENOMEM, "generate: out of memory for %d log-prob rows", n);
            goto done;
        }
    }
    for (int j = 0; j < n; j++)
        if ((rc = gseq_setup(g, &seqs[j], &reqs[j], base_idx + j, err)))
            goto done;
    for (int j = 0; j < n; j++)
        if (seqs[j].cap == 0 && (rc = gseq_finish(g, &seqs[j], "length", cb, t0, err)))
            goto done;

    for (int first = 1;; first = 0) {
        int active = 0;
        for (int j = 0; j < n; j++)
            active += seqs[j].active;
        if (!active)
            break;
        if ((rc = step_models(g, seqs, n, first, items, rows, err)))
            goto done;
        if ((rc = sample_all(g, seqs, n, rows, arm_rows, cb, t0, err)))
            goto done;
    }

    for (int j = 0; j < n; j++) {
        gseq *s = &seqs[j];
        gn_gen_result *r = &res[j];
        size_t len;
        const char *text = gn_gen_text_str(s->text, &len);
        r->text = gn_malloc(len + 1); /* not strndup: the text may hold NUL bytes */
        if (r->text) {
            memcpy(r->text, text, len);
            r->text[len] = '\0';
        }
        if (!r->text) {
            rc = gn_errf(err, GN_ENOMEM, "generate: out of memory");
            goto done;
        }
        r->text_len = len;
        r->tokens = s->tokens;
        s->tokens = NULL;
        r->n_tokens = s->n_tokens;
        r->finish_reason = s->finish;
        r->n_prompt_tokens = s->n_prompt[0];
        r->ttft_ms = s->ttft_ms;
        r->total_ms = s->total_ms;
    }
done:
    if (seqs)
        for (int j = 0; j < n; j++)
            gseq_clear(&seqs[j], nm);
    if (rc)
        for (int j = 0; j < n; j++)
            gn_gen_result_free(&res[j]);
    if (rows)
        for (int mi = 0; mi < nm; mi++)
            gn_free(rows[mi]);
    gn_free(rows);
    gn_free(arm_rows);
    gn_free(items);
    gn_free(seqs);
    return rc;
}

int gn_generate(gn_generator *g, const gn_gen_request *reqs, int n, gn_gen_result *res,
                const gn_gen_callbacks *cb, gn_err *err) {
    if (!g || n < 0 || (n > 0 && (!reqs || !res)))
        return gn_errf(err, GN_EINVAL, "generate: bad arguments");
    for (int j = 0; j < n; j++)
        memset(&res[j], 0, sizeof res[j]);
    double t0 = now_ms();
    for (int b = 0; b < n; b += g->max_seqs) {
        int k = n - b < g->max_seqs ? n - b : g->max_seqs;
        int rc = generate_group(g, reqs + b, b, k, res + b, cb, t0, err);
        if (rc) {
            for (int j = 0; j < b; j++)
                gn_gen_result_free(&res[j]);
            return rc;
        }
    }
    return 0;
}

/* ======================================================================== */
/* Scoring                                                                   */
/* ======================================================================== */

/* Rows of log-probs per step while scoring: bounds memory at
 * SCORE_CHUNK * n_vocab floats however long the response is. */
#define SCORE_CHUNK 64

int gn_score_ids(gn_model *m, gn_runner *r, const int32_t *prompt_ids, int n_prompt,
                 const int32_t *resp, int n_resp, float *logp, double *total, gn_err *err) {
    if (!m || !r || !prompt_ids || !resp || !logp || !total)
        return gn_errf(err, GN_EINVAL, "score: bad arguments");
    if (n_prompt < 1)
        return gn_errf(err, GN_EINVAL, "score: the prompt has no tokens");
    if (n_resp < 1)
        return gn_errf(err, GN_EINVAL, "score: the response has no tokens");
    const int nv = gn_model_n_out(m);
    for (int t = 0; t < n_resp; t++)
        if (resp[t] < 0 || resp[t] >= nv)
            return gn_errf(err, GN_EINVAL, "score: response token %d is %d, outside [0, %d)", t,
                           resp[t], nv);
    int chunk = n_resp - 1 < SCORE_CHUNK ? n_resp - 1 : SCORE_CHUNK;
    float *rows = gn_malloc((size_t)(chunk > 1 ? chunk : 1) * (size_t)nv * sizeof *rows);
    gn_seq *s = gn_seq_create(r, err);
    int rc = 0;
    if (!s) {
        rc = err && err->code ? err->code : GN_ENOMEM;
        goto done;
    }
    if (!rows) {
        rc = gn_errf(err, GN_ENOMEM, "score: out of memory for %d log-prob rows", chunk);
        goto done;
    }
    /* The prompt's last row predicts y_0; then each response token's row
     * predicts the next one (all_logits over the response, chunked). */
    gn_step_item it = {s, prompt_ids, n_prompt, 0};
    if ((rc = gn_runner_step(r, &it, 1, rows, err)))
        goto done;
    logp[0] = rows[resp[0]];
    for (int t = 0; t + 1 < n_resp;) {
        int c = n_resp - 1 - t < chunk ? n_resp - 1 - t : chunk;
        gn_step_item ic = {s, resp + t, c, 1};
        if ((rc = gn_runner_step(r, &ic, 1, rows, err)))
            goto done;
        for (int i = 0; i < c; i++)
            logp[t + 1 + i] = rows[(size_t)i * nv + resp[t + 1 + i]];
        t += c;
    }
    double sum = 0.0;
    for (int t = 0; t < n_resp; t++)
        sum += logp[t];
    *total = sum;
done:
    gn_seq_free(s);
    gn_free(rows);
    return rc;
}

void gn_score_result_free(gn_score_result *r) {
    if (!r)
        return;
    gn_free(r->tokens);
    gn_free(r->logp);
    memset(r, 0, sizeof *r);
}

int gn_score_text(gn_model *m, gn_runner *r, const char *prompt, const char *response, int add_eos,
                  gn_score_result *out, gn_err *err) {
    memset(out, 0, sizeof *out);
    const gn_tokenizer *t = m ? gn_model_tokenizer(m) : NULL;
    if (!t)
        return gn_errf(err, GN_EINVAL, "score: the model has no tokenizer loaded");
    if (!prompt || !response)
        return gn_errf(err, GN_EINVAL, "score: no prompt or response");
    int32_t *p_ids = NULL, *r_ids = NULL;
    int np = 0, nr = 0;
    int rc = gn_tok_encode(t, prompt, strlen(prompt), 1, &p_ids, &np, err);
    if (rc) {
        gn_err_prefix(err, "score: tokenizing the prompt: ");
        goto fail;
    }
    if ((rc = gn_tok_encode(t, response, strlen(response), 0, &r_ids, &nr, err))) {
        gn_err_prefix(err, "score: tokenizing the response: ");
        goto fail;
    }
    if (add_eos) {
        int eos = gn_tok_eos(t);
        if (eos < 0) {
            rc = gn_errf(err, GN_EINVAL, "score: the tokenizer has no EOS token to append");
            goto fail;
        }
        int32_t *grown = gn_realloc(r_ids, (size_t)(nr + 1) * sizeof *grown);
        if (!grown) {
            rc = gn_errf(err, GN_ENOMEM, "score: out of memory");
            goto fail;
        }
        r_ids = grown;
        r_ids[nr++] = eos;
    }
    if (nr == 0) {
        rc = gn_errf(err, GN_EINVAL, "score: the response is empty after tokenization");
        goto fail;
    }
    out->logp = gn_malloc((size_t)nr * sizeof *out->logp);
    if (!out->logp) {
        rc = gn_errf(err, GN_ENOMEM, "score: out of memory");
        goto fail;
    }
    if ((rc = gn_score_ids(m, r, p_ids, np, r_ids, nr, out->logp, &out->total, err)))
        goto fail;
    out->tokens = r_ids;
    out->n_tokens = nr;
    out->n_prompt_tokens = np;
    gn_free(p_ids);
    return 0;
fail:
    gn_free(p_ids);
    gn_free(r_ids);
    gn_score_result_free(out);
    return rc;
}
