/* test_generate.c — GenARM guided generation end to end on tiny random models
 * written by the model maker (reference CPU backend, so results do not depend
 * on the batch composition).
 *
 *  - a weight-0 ARM reproduces base-only decoding token for token (T = 0 and
 *    T > 0 with the same seed);
 *  - ARM == base with weight w and β: every combined row is (1 + w/β)·base_lp,
 *    so guided sampling at T = 1 is sampling from base^(1+w/β);
 *  - several ARMs: each step's rows are what each model computes on its own
 *    prompt plus the shared continuation (checked by re-scoring);
 *  - stop strings (with hold-back while streaming), max_tokens, context limit;
 *  - an ARM with a different tokenizer is refused;
 *  - a batch of several prompts equals each prompt alone;
 *  - the score API equals a manual sum of log-probs. */
#define _GNU_SOURCE
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "generate.h"
#include "gn_alloc.h"
#include "gn_test.h"
#include "model_maker.h"
#include "tokenizer.h"

static char g_tmp[256];
static gn_backend *g_be;

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int make_model(const char *name, const char *arch, uint64_t seed, int merges, char *dir,
                      size_t cap) {
    snprintf(dir, cap, "%s/%s", g_tmp, name);
    gn_make_model_params p = gn_make_model_default_params();
    p.arch = arch;
    p.seed = seed;
    p.dtype = GN_F32;
    p.tok_merges = merges;
    p.init_std = 0.08f; /* peakier distributions than the default 0.02 */
    gn_err err = {0};
    int rc = gn_make_model(&p, dir, &err);
    CHECK(rc == 0, "make %s: %s", name, err.msg);
    return rc;
}

static gn_model *load(const char *dir) {
    gn_err err = {0};
    gn_model_params mp = gn_model_default_params();
    mp.load_tokenizer = 1;
    gn_model *m = gn_model_load(dir, g_be, &mp, &err);
    CHECK(m != NULL, "load %s: %s", dir, err.msg);
    return m;
}

static gn_generator *make_gen(gn_model *base, gn_model **arms, int n_arms, const float *w,
                              float beta) {
    gn_guidance prof = gn_guidance_default();
    prof.n_arms = n_arms;
    prof.beta = beta;
    for (int i = 0; i < n_arms; i++)
        prof.weights[i] = w[i];
    gn_err err = {0};
    gn_generator *g = gn_generator_create(base, arms, n_arms, &prof, NULL, &err);
    CHECK(g != NULL, "generator: %s", err.msg);
    return g;
}

static int gen1(gn_generator *g, const gn_gen_request *q, gn_gen_result *r,
                const gn_gen_callbacks *cb) {
    gn_err err = {0};
    int rc = gn_generate(g, q, 1, r, cb, &err);
    CHECK(rc == 0, "generate: %s", err.msg);
    return rc;
}

static int same_tokens(const gn_gen_result *a, const gn_gen_result *b) {
    return a->n_tokens == b->n_tokens &&
           memcmp(a->tokens, b->tokens, sizeof(int32_t) * (size_t)a->n_tokens) == 0;
}

static const char *k_prompts[] = {"The river ran", "Once upon a time, the", "Gardens change with",
                                  "A program is a list of"};

/* ---- weight 0 == base only --------------------------------------------------- */

static void test_weight_zero(gn_model *base, gn_model *arm1, gn_model *arm2) {
    gn_generator *gb = make_gen(base, NULL, 0, NULL, 1.0f);
    gn_model *arms[2] = {arm1, arm2};
    const float w0[2] = {0.0f, 0.0f};
    gn_generator *ga = make_gen(base, arms, 2, w0, 0.25f);
    if (!gb || !ga)
        goto out;
    const float temps[] = {0.0f, 0.8f, 1.3f};
    for (int ti = 0; ti < 3; ti++) {
        for (int pi = 0; pi < 2; pi++) {
            gn_gen_request q = gn_gen_default_request();
            q.prompt = k_prompts[pi];
            q.max_tokens = 24;
            q.ignore_eos = 1;
            q.sampling.temperature = temps[ti];
            q.sampling.top_p = ti == 2 ? 0.9f : 1.0f;
            q.sampling.seed = 11 + (uint64_t)pi;
            gn_gen_result rb = {0}, ra = {0};
            if (gen1(gb, &q, &rb, NULL) == 0 && gen1(ga, &q, &ra, NULL) == 0) {
                CHECK(rb.n_tokens == 24 && !strcmp(rb.finish_reason, "length"), "24 tokens");
                CHECK(same_tokens(&ra, &rb), "T %g prompt %d: weight-0 ARMs change the tokens",
                      (double)temps[ti], pi);
                CHECK(!strcmp(ra.text, rb.text), "same text");
            }
            gn_gen_result_free(&rb);
            gn_gen_result_free(&ra);
        }
    }
    /* a different seed gives a different sample (T > 0) */
    gn_gen_request q = gn_gen_default_request();
    q.prompt = k_prompts[0];
    q.max_tokens = 24;
    q.ignore_eos = 1;
    gn_gen_result r1 = {0}, r2 = {0};
    q.sampling.seed = 1;
    gen1(gb, &q, &r1, NULL);
    q.sampling.seed = 2;
    gen1(gb, &q, &r2, NULL);
    CHECK(!same_tokens(&r1, &r2), "different seeds, different samples");
    gn_gen_result_free(&r1);
    gn_gen_result_free(&r2);
out:
    gn_generator_free(gb);
    gn_generator_free(ga);
}

/* ---- ARM == base ------------------------------------------------------------------ */

typedef struct self_ctx {
    float factor; /* 1 + w / beta */
    gn_sampler *smp;
    int steps, bad_row, bad_arm, bad_dist;
    double worst;
} self_ctx;

static void on_step_self(void *ud, const gn_gen_step_info *in) {
    self_ctx *c = ud;
    c->steps++;
    const int n = in->n_vocab;
    if (memcmp(in->arm_lp[0], in->base_lp, sizeof(float) * (size_t)n) != 0)
        c->bad_arm++;
    for (int v = 0; v < n; v++) {
        float want = c->factor * in->base_lp[v];
        if (fabsf(in->score[v] - want) > 1e-5f * (1.0f + fabsf(want))) {
            c->bad_row++;
            break;
        }
    }
    /* the distribution at T = 1 is base^(1+w/β), normalised (direct, double) */
    gn_sampler_params sp = gn_sampler_default_params();
    const int32_t *ids;
    const double *probs;
    int m;
    gn_err err = {0};
    if (gn_sampler_dist(c->smp, &sp, in->score, n, &ids, &probs, &m, &err)) {
        c->bad_dist++;
        return;
    }
    double *want = calloc((size_t)n, sizeof *want), *got = calloc((size_t)n, sizeof *got);
    double s = 0.0;
    for (int v = 0; v < n; v++)
        s += (want[v] = pow(exp((double)in->base_lp[v]), c->factor));
    for (int i = 0; i < m; i++)
        got[ids[i]] = probs[i];
    for (int v = 0; v < n; v++) {
        double d = fabs(got[v] - want[v] / s);
        if (d > c->worst)
            c->worst = d;
    }
    if (c->worst > 1e-5)
        c->bad_dist++;
    free(want);
    free(got);
}

static void test_arm_equals_base(gn_model *base, gn_model *base_again) {
    const float w = 1.5f, beta = 0.75f; /* factor 3 */
    gn_model *arms[1] = {base_again};
    gn_generator *gg = make_gen(base, arms, 1, &w, beta);
    gn_generator *gb = make_gen(base, NULL, 0, NULL, 1.0f);
    gn_err err = {0};
    self_ctx c = {1.0f + w / beta, gn_sampler_create(4096, &err), 0, 0, 0, 0, 0.0};
    if (!gg || !gb || !c.smp)
        goto out;
    gn_gen_request q = gn_gen_default_request();
    q.prompt = k_prompts[1];
    q.max_tokens = 20;
    q.ignore_eos = 1;
    q.sampling.temperature = 1.0f;
    q.sampling.seed = 99;
    gn_gen_callbacks cb = {NULL, on_step_self, &c};
    gn_gen_result rg = {0}, rb = {0};
    if (gen1(gg, &q, &rg, &cb))
        goto out;
    CHECK(c.steps == 20, "on_step once per token (%d)", c.steps);
    CHECK(c.bad_arm == 0, "ARM rows equal base rows (%d steps differ)", c.bad_arm);
    CHECK(c.bad_row == 0, "score == (1 + w/beta) * base_lp (%d steps differ)", c.bad_row);
    CHECK(c.bad_dist == 0, "T = 1 distribution is base^(1+w/beta): worst %g", c.worst);
    /* the same draw as base-only decoding at temperature 1 / (1 + w/beta) */
    q.sampling.temperature = 1.0f / c.factor;
    if (gen1(gb, &q, &rb, NULL) == 0)
        CHECK(same_tokens(&rg, &rb), "guided T=1 == base at T = 1/(1+w/beta), token for token");
out:
    gn_gen_result_free(&rg);
    gn_gen_result_free(&rb);
    gn_sampler_free(c.smp);
    gn_generator_free(gg);
    gn_generator_free(gb);
}

/* ---- several ARMs: the rows are each model's own log-probs ------------------------ */

#define MAXSTEPS 32
typedef struct multi_ctx {
    int n_arms;
    float alpha[2];
    int steps, bad_combine;
    int32_t tokens[MAXSTEPS];
    float lp[3][MAXSTEPS]; /* per model: log-prob of the sampled token */
} multi_ctx;

static void on_step_multi(void *ud, const gn_gen_step_info *in) {
    multi_ctx *c = ud;
    if (in->step >= MAXSTEPS || in->n_arms != c->n_arms)
        return;
    c->steps++;
    c->tokens[in->step] = in->token;
    c->lp[0][in->step] = in->base_lp[in->token];
    for (int i = 0; i < in->n_arms; i++)
        c->lp[1 + i][in->step] = in->arm_lp[i][in->token];
    for (int v = 0; v < in->n_vocab; v++) {
        double want = in->base_lp[v];
        for (int i = 0; i < in->n_arms; i++)
            want += (double)c->alpha[i] * in->arm_lp[i][v];
        if (fabs(in->score[v] - want) > 1e-4 * (1.0 + fabs(want))) {
            c->bad_combine++;
            break;
        }
    }
}

/* Re-scores the continuation with model m given its own prompt text and
 * compares with the per-step rows seen during generation. */
static void check_rescored(gn_model *m, const char *prompt, const int32_t *toks, int n,
                           const float *seen, const char *what) {
    gn_err err = {0};
    gn_runner *r = gn_runner_create(m, NULL, &err);
    CHECK(r != NULL, "runner: %s", err.msg);
    if (!r)
        return;
    int32_t *pids = NULL;
    int np = 0;
    float logp[MAXSTEPS];
    double total = 0.0;
    const gn_tokenizer *t = gn_model_tokenizer(m);
    if (gn_tok_encode(t, prompt, strlen(prompt), 1, &pids, &np, &err) == 0 &&
        gn_score_ids(m, r, pids, np, toks, n, logp, &total, &err) == 0) {
        gn_t_close(what, logp, seen, (size_t)n, 1e-4f, 1e-4f);
    } else {
        CHECK(0, "%s: %s", what, err.msg);
    }
    gn_free(pids);
    gn_runner_free(r);
}

static void test_multi_arm(gn_model *base, gn_model *arm1, gn_model *arm2) {
    gn_model *arms[2] = {arm1, arm2};
    const float w[2] = {0.7f, -0.3f};
    const float beta = 0.5f;
    gn_generator *g = make_gen(base, arms, 2, w, beta);
    if (!g)
        return;
    multi_ctx c = {2, {w[0] / beta, w[1] / beta}, 0, 0, {0}, {{0}}};
    /* each model gets its own prompt text (its own "template") */
    const char *prompts[3] = {"The river ran", "Judge: The river ran", NULL};
    gn_gen_request q = gn_gen_default_request();
    q.prompt = "River: The river ran";
    q.prompts = prompts; /* ARM 2 falls back to q.prompt */
    q.max_tokens = 16;
    q.ignore_eos = 1;
    q.sampling.temperature = 0.9f;
    q.sampling.top_k = 50;
    q.sampling.seed = 5;
    gn_gen_callbacks cb = {NULL, on_step_multi, &c};
    gn_gen_result r = {0};
    if (gen1(g, &q, &r, &cb) == 0) {
        CHECK(c.steps == 16 && r.n_tokens == 16, "16 steps (%d)", c.steps);
        CHECK(memcmp(c.tokens, r.tokens, sizeof(int32_t) * 16) == 0, "on_step tokens = result");
        CHECK(c.bad_combine == 0, "score = base + sum alpha_i arm_i (%d rows off)", c.bad_combine);
        check_rescored(base, prompts[0], r.tokens, 16, c.lp[0], "base rows vs re-scoring");
        check_rescored(arm1, prompts[1], r.tokens, 16, c.lp[1], "ARM 1 rows vs re-scoring");
        check_rescored(arm2, q.prompt, r.tokens, 16, c.lp[2], "ARM 2 rows vs re-scoring");
        int32_t *ids = NULL;
        int np = 0;
        gn_err err = {0};
        gn_tok_encode(gn_model_tokenizer(base), prompts[0], strlen(prompts[0]), 1, &ids, &np, &err);
        CHECK(r.n_prompt_tokens == np, "n_prompt_tokens is the base's (%d vs %d)",
              r.n_prompt_tokens, np);
        gn_free(ids);
    }
    gn_gen_result_free(&r);
    gn_generator_free(g);
}

/* ---- stops, streaming, max_tokens, context -------------------------------------- */

typedef struct stream_ctx {
    char buf[8192];
    size_t len;
    int calls, bad;
    const char *stop;
} stream_ctx;

static int on_text_collect(void *ud, int seq, int32_t token, const char *text, size_t len) {
    stream_ctx *c = ud;
    (void)token;
    if (seq != 0 || len == 0)
        c->bad++;
    if (c->len + len < sizeof c->buf) {
        memcpy(c->buf + c->len, text, len);
        c->len += len;
        c->buf[c->len] = '\0';
    }
    if (c->stop && strstr(c->buf, c->stop))
        c->bad++; /* a stop string must never be streamed */
    c->calls++;
    return 0;
}

static void test_stops(gn_model *base) {
    gn_generator *g = make_gen(base, NULL, 0, NULL, 1.0f);
    if (!g)
        return;
    gn_gen_request q = gn_gen_default_request();
    q.prompt = k_prompts[2];
    q.max_tokens = 40;
    q.ignore_eos = 1;
    q.sampling.temperature = 0.0f;
    stream_ctx c0 = {.len = 0};
    gn_gen_callbacks cb = {on_text_collect, NULL, &c0};
    gn_gen_result full = {0};
    if (gen1(g, &q, &full, &cb))
        goto out;
    CHECK(full.n_tokens == 40 && !strcmp(full.finish_reason, "length"), "max_tokens 40: %d %s",
          full.n_tokens, full.finish_reason);
    CHECK(c0.len == full.text_len && !memcmp(c0.buf, full.text, c0.len),
          "streamed pieces concatenate to the text");
    char *dec = NULL;
    size_t dlen = 0;
    gn_err err = {0};
    CHECK(gn_tok_decode(gn_model_tokenizer(base), full.tokens, full.n_tokens, 1, &dec, &dlen,
                        &err) == 0 &&
              dlen == full.text_len && !memcmp(dec, full.text, dlen),
          "text == decode(tokens)");
    gn_free(dec);

    /* stop strings taken from the greedy text: a short one in the middle and
     * one that is not there; the output ends right before the first match */
    if (full.text_len >= 12) {
        char stop[8];
        size_t at = full.text_len / 2;
        memcpy(stop, full.text + at, 3);
        stop[3] = '\0';
        const char *first = strstr(full.text, stop);
        size_t cut = (size_t)(first - full.text);
        const char *stops[2] = {"\x01never\x02", stop};
        gn_gen_request qs = q;
        qs.stop = stops;
        qs.n_stop = 2;
        stream_ctx c1 = {.len = 0, .stop = stop};
        gn_gen_callbacks cb1 = {on_text_collect, NULL, &c1};
        gn_gen_result rs = {0};
        if (gen1(g, &qs, &rs, &cb1) == 0) {
            CHECK(!strcmp(rs.finish_reason, "stop"), "finish stop (%s)", rs.finish_reason);
            CHECK(rs.text_len == cut && !memcmp(rs.text, full.text, cut),
                  "text cut before the stop string '%s': %zu bytes, want %zu", stop, rs.text_len,
                  cut);
            CHECK(c1.len == rs.text_len && !memcmp(c1.buf, rs.text, c1.len),
                  "streamed = final text");
            CHECK(c1.bad == 0, "stream never showed the stop string");
            CHECK(rs.n_tokens <= full.n_tokens &&
                      !memcmp(rs.tokens, full.tokens, sizeof(int32_t) * (size_t)rs.n_tokens),
                  "tokens are a prefix of the unstopped run");
        }
        gn_gen_result_free(&rs);
    } else {
        CHECK(0, "greedy text too short for the stop test (%zu bytes)", full.text_len);
    }

    /* max_tokens 0 */
    gn_gen_request q0 = q;
    q0.max_tokens = 0;
    gn_gen_result r0 = {0};
    if (gen1(g, &q0, &r0, NULL) == 0)
        CHECK(r0.n_tokens == 0 && r0.text_len == 0 && !strcmp(r0.finish_reason, "length"),
              "max_tokens 0");
    gn_gen_result_free(&r0);
out:
    gn_gen_result_free(&full);
    gn_generator_free(g);
}

static void test_context_limit(gn_model *base) {
    gn_err err = {0};
    gn_runner_params rp = gn_runner_default_params();
    rp.max_ctx = 24;
    gn_generator *g = gn_generator_create(base, NULL, 0, NULL, &rp, &err);
    CHECK(g != NULL, "%s", err.msg);
    if (!g)
        return;
    gn_gen_request q = gn_gen_default_request();
    q.prompt = k_prompts[0];
    q.max_tokens = 100;
    q.ignore_eos = 1;
    int32_t *ids = NULL;
    int np = 0;
    gn_tok_encode(gn_model_tokenizer(base), q.prompt, strlen(q.prompt), 1, &ids, &np, &err);
    gn_free(ids);
    gn_gen_result r = {0};
    if (gen1(g, &q, &r, NULL) == 0)
        CHECK(r.n_tokens == 24 - np + 1 && !strcmp(r.finish_reason, "length"),
              "context limit ends the sequence: %d tokens (prompt %d), %s", r.n_tokens, np,
              r.finish_reason);
    gn_gen_result_free(&r);
    /* a prompt longer than the context is refused */
    char longp[2048] = "";
    for (int i = 0; i < 40; i++)
        strcat(longp, "The river ran fast. ");
    q.prompt = longp;
    CHECK(gn_generate(g, &q, 1, &r, NULL, &err) == GN_ERANGE, "long prompt refused: %s", err.msg);
    gn_generator_free(g);
}

/* EOS ends a sequence ("stop"), is the last token and adds no text. A very
 * high temperature makes EOS (1 of 512 ids) likely within a few hundred
 * tokens (P(no hit in 12 x 400 draws) ~ 1e-4 for any model); the seeds are
 * fixed, so this is deterministic. */
static void test_eos(gn_model *base) {
    gn_generator *g = make_gen(base, NULL, 0, NULL, 1.0f);
    if (!g)
        return;
    const int eos = gn_tok_eos(gn_model_tokenizer(base));
    enum { N = 12 };
    gn_gen_request q[N];
    gn_gen_result r[N];
    for (int i = 0; i < N; i++) {
        q[i] = gn_gen_default_request();
        q[i].prompt = k_prompts[i % 4];
        q[i].max_tokens = 400;
        q[i].sampling.temperature = 50.0f;
        q[i].sampling.seed = 77 + (uint64_t)i;
    }
    gn_err err = {0};
    int rc = gn_generate(g, q, N, r, NULL, &err);
    CHECK(rc == 0, "%s", err.msg);
    int hits = 0;
    for (int i = 0; rc == 0 && i < N; i++) {
        int at = -1;
        for (int t = 0; t < r[i].n_tokens; t++)
            if (r[i].tokens[t] == eos && at < 0)
                at = t;
        if (at >= 0) {
            hits++;
            CHECK(at == r[i].n_tokens - 1, "seq %d: EOS is the last token", i);
            CHECK(!strcmp(r[i].finish_reason, "stop"), "seq %d: EOS finishes with stop", i);
            char *dec = NULL;
            size_t dl = 0;
            gn_tok_decode(gn_model_tokenizer(base), r[i].tokens, at, 1, &dec, &dl, &err);
            CHECK(dec && dl == r[i].text_len && !memcmp(dec, r[i].text, dl),
                  "seq %d: text is the decoded tokens before EOS", i);
            gn_free(dec);
        } else {
            CHECK(r[i].n_tokens == 400 && !strcmp(r[i].finish_reason, "length"), "seq %d: length",
                  i);
        }
        gn_gen_result_free(&r[i]);
    }
    CHECK(hits > 0, "some sequence reached EOS (%d of %d)", hits, N);
    gn_generator_free(g);
}

/* ---- batch == alone ------------------------------------------------------------- */

static void test_batch(gn_model *base, gn_model *arm1) {
    gn_model *arms[1] = {arm1};
    const float w = 0.8f;
    gn_err err = {0};
    gn_runner_params rp = gn_runner_default_params();
    rp.max_seqs = 3; /* 6 requests: two groups */
    gn_guidance prof = gn_guidance_default();
    prof.n_arms = 1;
    prof.weights[0] = w;
    prof.beta = 0.6f;
    gn_generator *g = gn_generator_create(base, arms, 1, &prof, &rp, &err);
    CHECK(g != NULL, "%s", err.msg);
    if (!g)
        return;
    enum { N = 6 };
    gn_gen_request q[N];
    const char *stops[1] = {"the"};
    for (int i = 0; i < N; i++) {
        q[i] = gn_gen_default_request();
        q[i].prompt = k_prompts[i % 4];
        q[i].max_tokens = 10 + 3 * i; /* different lengths: sequences leave the batch early */
        q[i].ignore_eos = 1;
        q[i].sampling.temperature = i == 0 ? 0.0f : 0.9f;
        q[i].sampling.seed = 1000 + (uint64_t)i; /* 4, 5 share prompts 0, 1 with 0, 1 */
        if (i == 3) {
            q[i].stop = stops;
            q[i].n_stop = 1;
        }
    }
    gn_gen_result rb[N], ra[N];
    memset(ra, 0, sizeof ra);
    int rc = gn_generate(g, q, N, rb, NULL, &err);
    CHECK(rc == 0, "batch: %s", err.msg);
    if (rc)
        goto out;
    for (int i = 0; i < N; i++) {
        if (gen1(g, &q[i], &ra[i], NULL))
            continue;
        CHECK(same_tokens(&rb[i], &ra[i]), "request %d: batch == alone", i);
        CHECK(rb[i].text_len == ra[i].text_len && !strcmp(rb[i].text, ra[i].text), "text %d", i);
        CHECK(!strcmp(rb[i].finish_reason, ra[i].finish_reason), "finish %d", i);
    }
    for (int i = 0; i < N; i++)
        gn_gen_result_free(&rb[i]);
out:
    for (int i = 0; i < N; i++)
        gn_gen_result_free(&ra[i]);
    /* request errors name the request */
    gn_gen_request bad[2] = {gn_gen_default_request(), gn_gen_default_request()};
    bad[0].prompt = "ok";
    bad[1].prompt = "bad";
    bad[1].sampling.top_p = 0.0f;
    gn_gen_result rr[2];
    CHECK(gn_generate(g, bad, 2, rr, NULL, &err) == GN_EINVAL && strstr(err.msg, "request 1"),
          "bad request refused: %s", err.msg);
    gn_guidance wrong = gn_guidance_default();
    wrong.n_arms = 2;
    bad[1].sampling = gn_sampler_default_params();
    bad[1].guidance = &wrong;
    CHECK(gn_generate(g, bad, 2, rr, NULL, &err) == GN_EINVAL, "guidance/ARM count mismatch");
    gn_generator_free(g);
}

/* ---- tokenizer mismatch ------------------------------------------------------------ */

static void test_mismatch(gn_model *base, gn_model *other_tok, const char *base_dir,
                          const char *other_dir) {
    gn_model *arms[1] = {other_tok};
    gn_err err = {0};
    gn_generator *g = gn_generator_create(base, arms, 1, NULL, NULL, &err);
    CHECK(g == NULL && err.code == GN_EMISMATCH, "mismatched tokenizer refused (%d)", err.code);
    CHECK(strstr(err.msg, base_dir) && strstr(err.msg, other_dir),
          "message names both directories: %s", err.msg);
    CHECK(strstr(err.msg, "tokenizer") != NULL, "message says tokenizer: %s", err.msg);
    gn_generator_free(g);
    gn_guidance bad = gn_guidance_default();
    bad.n_arms = 0;
    bad.beta = 0.0f;
    CHECK(gn_generator_create(base, NULL, 0, &bad, NULL, &err) == NULL &&
              strstr(err.msg, "beta must be > 0"),
          "beta 0 refused: %s", err.msg);
}

/* ---- scoring ------------------------------------------------------------------------ */

static void test_score(gn_model *arm) {
    gn_err err = {0};
    gn_runner *r = gn_runner_create(arm, NULL, &err);
    CHECK(r != NULL, "%s", err.msg);
    if (!r)
        return;
    const char *prompt = "Where are you going?", *resp = " To the station, he said.";
    gn_score_result sr = {0};
    int rc = gn_score_text(arm, r, prompt, resp, 0, &sr, &err);
    CHECK(rc == 0, "score: %s", err.msg);
    if (rc)
        goto out;
    const gn_tokenizer *t = gn_model_tokenizer(arm);
    int32_t *pi = NULL, *ri = NULL;
    int np = 0, nr = 0;
    gn_tok_encode(t, prompt, strlen(prompt), 1, &pi, &np, &err);
    gn_tok_encode(t, resp, strlen(resp), 0, &ri, &nr, &err);
    CHECK(sr.n_tokens == nr && sr.n_prompt_tokens == np && nr > 3, "token counts");
    CHECK(!memcmp(sr.tokens, ri, sizeof(int32_t) * (size_t)nr), "response ids");
    /* manual: one step over prompt + response with every row, sum by hand */
    int n = np + nr;
    int32_t *all = malloc(sizeof(int32_t) * (size_t)n);
    memcpy(all, pi, sizeof(int32_t) * (size_t)np);
    memcpy(all + np, ri, sizeof(int32_t) * (size_t)nr);
    int nv = gn_model_n_out(arm);
    float *rows = malloc(sizeof(float) * (size_t)n * (size_t)nv);
    gn_seq *s = gn_seq_create(r, &err);
    gn_step_item it = {s, all, n, 1};
    CHECK(gn_runner_step_rows(&it, 1) == n, "all_logits rows");
    if (s && gn_runner_step(r, &it, 1, rows, &err) == 0) {
        float want[256];
        double total = 0.0;
        for (int k = 0; k < nr && k < 256; k++) {
            want[k] = rows[(size_t)(np - 1 + k) * nv + ri[k]];
            total += want[k];
        }
        gn_t_close("per-token log-probs vs manual", sr.logp, want, (size_t)nr, 1e-4f, 1e-4f);
        CHECK(fabs(sr.total - total) < 1e-3, "total %g vs manual %g", sr.total, total);
        double sum = 0.0;
        for (int k = 0; k < nr; k++)
            sum += sr.logp[k];
        CHECK(sr.total == sum, "total is the sum of the per-token values");
        CHECK(sr.total < 0.0, "a reward of log-probs is negative");
    } else {
        CHECK(0, "manual step: %s", err.msg);
    }
    gn_seq_free(s);
    /* add_eos appends the tokenizer's EOS */
    gn_score_result se = {0};
    if (gn_score_text(arm, r, prompt, resp, 1, &se, &err) == 0) {
        CHECK(se.n_tokens == nr + 1 && se.tokens[nr] == gn_tok_eos(t), "EOS appended");
        CHECK(!memcmp(se.logp, sr.logp, sizeof(float) * (size_t)nr) ||
                  fabsf(se.logp[0] - sr.logp[0]) < 1e-5f,
              "same prefix values");
    } else {
        CHECK(0, "score with EOS: %s", err.msg);
    }
    gn_score_result_free(&se);
    CHECK(gn_score_text(arm, r, prompt, "", 0, &se, &err) == GN_EINVAL, "empty response refused");
    int32_t bad_tok = 1 << 30;
    float lp;
    double tot;
    CHECK(gn_score_ids(arm, r, pi, np, &bad_tok, 1, &lp, &tot, &err) == GN_EINVAL,
          "out-of-range response token refused");
    free(rows);
    free(all);
    gn_free(pi);
    gn_free(ri);
out:
    gn_score_result_free(&sr);
    gn_runner_free(r);
}

/* ---- gn_gen_text on its own --------------------------------------------------------- */

static void feed_text(const gn_tokenizer *t, const char *text, const char *stop, const char *want,
                      int want_stopped) {
    gn_err err = {0};
    int32_t *ids = NULL;
    int n = 0;
    if (gn_tok_encode(t, text, strlen(text), 0, &ids, &n, &err)) {
        CHECK(0, "encode: %s", err.msg);
        return;
    }
    const char *stops[1] = {stop};
    gn_gen_text *x = gn_gen_text_create(t, stops, stop ? 1 : 0, &err);
    CHECK(x != NULL, "%s", err.msg);
    if (!x) {
        gn_free(ids);
        return;
    }
    char got[1024] = "";
    size_t gl = 0;
    int stopped = 0, leaked = 0;
    for (int i = 0; i < n && !stopped; i++) {
        const char *out;
        size_t len;
        if (gn_gen_text_push(x, ids[i], &out, &len, &stopped, &err))
            break;
        memcpy(got + gl, out, len);
        gl += len;
        got[gl] = '\0';
        if (stop && strstr(got, stop))
            leaked = 1;
        /* nothing may be streamed past what the final text holds */
        if (strncmp(got, want, gl) != 0)
            leaked = 1;
    }
    if (!stopped) {
        const char *out;
        size_t len;
        gn_gen_text_finish(x, &out, &len, &stopped, &err);
        memcpy(got + gl, out, len);
        gl += len;
        got[gl] = '\0';
    }
    CHECK(!strcmp(got, want), "stop '%s': got '%s', want '%s'", stop ? stop : "", got, want);
    CHECK(stopped == want_stopped, "stopped %d", stopped);
    CHECK(!leaked, "stop '%s': streamed text went past the final text", stop ? stop : "");
    size_t sl;
    const char *all = gn_gen_text_str(x, &sl);
    CHECK(sl == strlen(want) && !strncmp(all, want, sl), "gn_gen_text_str");
    gn_gen_text_free(x);
    gn_free(ids);
}

static void test_text(const gn_tokenizer *t) {
    const char *s = "The morning was cold and clear, and the river ran fast.";
    feed_text(t, s, NULL, s, 0);
    feed_text(t, s, "river", "The morning was cold and clear, and the ", 1);
    feed_text(t, s, "d c", "The morning was cold an", 1); /* "and clear": across tokens */
    feed_text(t, s, "fast.", "The morning was cold and clear, and the river ran ", 1);
    feed_text(t, s, "fast!", s, 0); /* a held-back prefix that never completes is released */
    feed_text(t, s, "The", "", 1);
    gn_err err = {0};
    const char *empty[1] = {""};
    CHECK(gn_gen_text_create(t, empty, 1, &err) == NULL && err.code == GN_EINVAL,
          "empty stop string refused");
}

/* ---- allocation failures: every error path returns cleanly ------------------------ */

static void test_alloc_failures(gn_model *base, gn_model *arm1) {
    gn_model *arms[1] = {arm1};
    gn_guidance prof = gn_guidance_default();
    prof.n_arms = 1;
    prof.weights[0] = 0.5f;
    gn_err err = {0};
    int failures = 0, bad = 0;
    gn_generator *g = NULL;
    for (long k = 0; k < 4000 && !g; k++) {
        gn_alloc_fail_after(k);
        g = gn_generator_create(base, arms, 1, &prof, NULL, &err);
        gn_alloc_fail_after(-1);
        if (!g) {
            failures++;
            if (err.code != GN_ENOMEM && err.code != GN_EBACKEND)
                bad++;
        }
    }
    CHECK(g != NULL, "generator creation eventually succeeds");
    CHECK(failures > 3 && bad == 0, "create: %d injected failures, %d with a wrong code", failures,
          bad);
    if (!g)
        return;
    gn_gen_request q[2] = {gn_gen_default_request(), gn_gen_default_request()};
    const char *stops[1] = {"xyz"};
    for (int i = 0; i < 2; i++) {
        q[i].prompt = k_prompts[i];
        q[i].max_tokens = 6;
        q[i].ignore_eos = 1;
        q[i].stop = stops;
        q[i].n_stop = 1;
    }
    int ok = 0;
    failures = bad = 0;
    for (long k = 0; k < 4000 && !ok; k++) {
        gn_gen_result r[2];
        gn_alloc_fail_after(k);
        int rc = gn_generate(g, q, 2, r, NULL, &err);
        gn_alloc_fail_after(-1);
        if (rc == 0) {
            ok = 1;
            gn_gen_result_free(&r[0]);
            gn_gen_result_free(&r[1]);
        } else {
            failures++;
            if (r[0].tokens || r[1].tokens || r[0].text || r[1].text || err.code != GN_ENOMEM)
                bad++;
        }
    }
    CHECK(ok, "generation eventually succeeds");
    CHECK(failures > 10 && bad == 0,
          "generate: %d injected failures, %d left results or a wrong code", failures, bad);
    /* the generator still works after all those failures */
    gn_gen_result r[2];
    CHECK(gn_generate(g, q, 2, r, NULL, &err) == 0 && r[0].n_tokens == 6, "still works: %s",
          err.msg);
    gn_gen_result_free(&r[0]);
    gn_gen_result_free(&r[1]);
    gn_generator_free(g);
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/gn_test_generate_XXXXXX");
    if (!mkdtemp(g_tmp))
        GN_TEST_SKIP("cannot create a temporary directory");
    gn_err err = {0};
    gn_backend_params bp = gn_backend_default_params();
    bp.n_threads = 1;
    g_be = gn_backend_create("cpu-ref", &bp, &err);
    CHECK(g_be != NULL, "backend: %s", err.msg);
    char d_base[300], d_arm1[300], d_arm2[300], d_other[300];
    gn_model *base = NULL, *base2 = NULL, *arm1 = NULL, *arm2 = NULL, *other = NULL;
    if (!g_be || make_model("base", "llama", 1, 254, d_base, sizeof d_base) ||
        make_model("arm1", "llama", 2, 254, d_arm1, sizeof d_arm1) ||
        make_model("arm2", "qwen2", 3, 254, d_arm2, sizeof d_arm2) ||
        make_model("other", "llama", 4, 200, d_other, sizeof d_other))
        goto out;
    base = load(d_base);
    base2 = load(d_base);
    arm1 = load(d_arm1);
    arm2 = load(d_arm2);
    other = load(d_other);
    if (!base || !base2 || !arm1 || !arm2 || !other)
        goto out;

    test_text(gn_model_tokenizer(base));
    test_weight_zero(base, arm1, arm2);
    test_arm_equals_base(base, base2);
    test_multi_arm(base, arm1, arm2);
    test_stops(base);
    test_context_limit(base);
    test_eos(base);
    test_batch(base, arm1);
    test_mismatch(base, other, d_base, d_other);
    test_score(arm1);
    test_alloc_failures(base, arm1);
out:
    gn_model_free(base);
    gn_model_free(base2);
    gn_model_free(arm1);
    gn_model_free(arm2);
    gn_model_free(other);
    gn_backend_free(g_be);
    nftw(g_tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    GN_TEST_MAIN_END();
}
