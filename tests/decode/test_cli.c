/* test_cli.c — the `genarm` command line: help, flag validation, clear errors
 * (missing and malformed model directories, mismatched ARM tokenizer), and
 * that `generate` and `score` print what the library computes. Guided
 * scoring (`score --model`, gn_score_guided) equals, token by token, the
 * log-probs of the decoder's own score rows for the tokens it generated.
 * Runs the built binary ($GN_BUILD_DIR/tools/genarm) on tiny models from the
 * model maker.
 *
 * test_cli DEVICE (tests/gpu registers it with cuda:0): only --device DEVICE,
 * guided greedy generation and score through the CLI against --device cpu;
 * exits 77 where DEVICE cannot be created. */
#define _GNU_SOURCE
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "generate.h"
#include "gn_alloc.h"
#include "gn_test.h"
#include "model_maker.h"
#include "score.h"
#include "tokenizer.h"

static char g_tmp[256], g_bin[512];
static char g_out[1 << 16], g_errtxt[1 << 14];

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void slurp(const char *path, char *buf, size_t cap) {
    buf[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (!f)
        return;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* Runs `genarm ARGS`; stdout in g_out, stderr in g_errtxt; returns the exit
 * status (or -1). */
static int run(const char *args) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' %s >'%s/out.txt' 2>'%s/err.txt'", g_bin, args, g_tmp, g_tmp);
    int st = system(cmd);
    char p[400];
    snprintf(p, sizeof p, "%s/out.txt", g_tmp);
    slurp(p, g_out, sizeof g_out);
    snprintf(p, sizeof p, "%s/err.txt", g_tmp);
    slurp(p, g_errtxt, sizeof g_errtxt);
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int make_model(const char *name, const char *arch, uint64_t seed, int merges, char *dir,
                      size_t cap) {
    snprintf(dir, cap, "%s/%s", g_tmp, name);
    gn_make_model_params p = gn_make_model_default_params();
    p.arch = arch;
    p.seed = seed;
    p.dtype = GN_F32;
    p.tok_merges = merges;
    p.init_std = 0.08f;
    gn_err err = {0};
    int rc = gn_make_model(&p, dir, &err);
    CHECK(rc == 0, "make %s: %s", name, err.msg);
    return rc;
}

static void test_usage(const char *base, const char *other) {
    char a[2048];
    CHECK(run("--help") == 0, "--help exits 0");
    CHECK(strstr(g_out, "--arm DIR[:WEIGHT]") && strstr(g_out, "--beta") &&
              strstr(g_out, "--top-p") && strstr(g_out, "--min-p") && strstr(g_out, "--stop") &&
              strstr(g_out, "score") && strstr(g_out, "--response") && strstr(g_out, "--lora"),
          "help documents the flags");
    CHECK(run("") == 2, "no command: exit 2");
    CHECK(run("frobnicate") == 2 && strstr(g_errtxt, "unknown command"), "unknown command");

    snprintf(a, sizeof a, "generate --model '%s' --prompt hi --beta 0", base);
    CHECK(run(a) == 2 && strstr(g_errtxt, "--beta must be > 0"), "--beta 0: %s", g_errtxt);
    snprintf(a, sizeof a, "generate --model '%s' --prompt hi --beta -1", base);
    CHECK(run(a) == 2 && strstr(g_errtxt, "--beta must be > 0"), "--beta -1: %s", g_errtxt);
    snprintf(a, sizeof a, "generate --model '%s' --prompt hi --top-p 1.5", base);
    CHECK(run(a) == 2 && strstr(g_errtxt, "--top-p"), "--top-p 1.5: %s", g_errtxt);
    snprintf(a, sizeof a, "generate --model '%s' --prompt hi --temperature abc", base);
    CHECK(run(a) == 2 && strstr(g_errtxt, "not a number"), "--temperature abc: %s", g_errtxt);
    snprintf(a, sizeof a, "generate --model '%s' --prompt hi --max-tokens -3", base);
    CHECK(run(a) == 2, "--max-tokens -3");
    snprintf(a, sizeof a, "generate --model '%s' --prompt hi --bogus", base);
    CHECK(run(a) == 2 && strstr(g_errtxt, "--bogus"), "unknown flag: %s", g_errtxt);
    snprintf(a, sizeof a, "generate --model '%s'", base);
    CHECK(run(a) == 2 && strstr(g_errtxt, "--prompt"), "no prompt: %s", g_errtxt);
    snprintf(a, sizeof a, "generate --model '%s' --prompt hi --lora", base);
    CHECK(run(a) == 2 && strstr(g_errtxt, "needs a value"), "flag without value: %s", g_errtxt);
    CHECK(run("generate --prompt hi") == 2 && strstr(g_errtxt, "--model"), "no --model");
    snprintf(a, sizeof a, "generate --model '%s' --prompt hi --arm '%s:nan'", base, base);
    CHECK(run(a) != 0, "NaN weight refused");

    CHECK(run("generate --model /nonexistent/model --prompt hi") == 1 &&
              strstr(g_errtxt, "/nonexistent/model") && strstr(g_errtxt, "no such directory"),
          "missing model dir: %s", g_errtxt);
    snprintf(a, sizeof a, "generate --model '%s' --arm /nonexistent/arm:0.5 --prompt hi", base);
    CHECK(run(a) == 1 && strstr(g_errtxt, "/nonexistent/arm"), "missing ARM dir: %s", g_errtxt);
    snprintf(a, sizeof a, "generate --model '%s' --prompt-file /nonexistent/prompt.txt", base);
    CHECK(run(a) == 1 && strstr(g_errtxt, "/nonexistent/prompt.txt"), "missing prompt file");

    /* malformed config.json */
    char bad[400], p[500];
    snprintf(bad, sizeof bad, "%s/broken", g_tmp);
    mkdir(bad, 0755);
    snprintf(p, sizeof p, "%s/config.json", bad);
    FILE *f = fopen(p, "w");
    if (f) {
        fputs("{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": ", f);
        fclose(f);
    }
    snprintf(a, sizeof a, "generate --model '%s' --prompt hi", bad);
    CHECK(run(a) == 1 && strstr(g_errtxt, "config.json"), "malformed config.json: %s", g_errtxt);

    /* ARM with a different tokenizer */
    snprintf(a, sizeof a, "generate --model '%s' --arm '%s' --prompt hi --device cpu-ref", base,
             other);
    CHECK(run(a) == 1 && strstr(g_errtxt, "tokenizer") && strstr(g_errtxt, other),
          "mismatched tokenizer: %s", g_errtxt);

    /* score usage */
    snprintf(a, sizeof a, "score --arm '%s' --prompt hi", base);
    CHECK(run(a) == 2 && strstr(g_errtxt, "--response"), "score without response");
    CHECK(run("score --prompt a --response b") == 2, "score without --arm");
}

/* ---- guided scoring ---------------------------------------------------------- */

#define GS_STEPS 12
#define GS_TOP 5

/* What the decoder saw: per step the token and, from its combined score row,
 * log_softmax (double) of the token and of the GS_TOP most likely tokens. */
typedef struct steps {
    int n;
    int32_t tok[GS_STEPS];
    double logp[GS_STEPS];
    int32_t top_ids[GS_STEPS][GS_TOP];
    double top_logp[GS_STEPS][GS_TOP];
} steps;

static void on_step(void *ud, const gn_gen_step_info *info) {
    steps *st = ud;
    if (info->step >= GS_STEPS)
        return;
    const float *s = info->score;
    double mx = -INFINITY, sum = 0.0;
    for (int v = 0; v < info->n_vocab; v++)
        mx = s[v] > mx ? s[v] : mx;
    for (int v = 0; v < info->n_vocab; v++)
        sum += exp((double)s[v] - mx);
    double lse = mx + log(sum);
    int t = info->step;
    st->tok[t] = info->token;
    st->logp[t] = (double)s[info->token] - lse;
    for (int j = 0; j < GS_TOP; j++) { /* the j-th largest, ties: lower id */
        int best = -1;
        for (int v = 0; v < info->n_vocab; v++) {
            int taken = 0;
            for (int i = 0; i < j; i++)
                taken |= st->top_ids[t][i] == v;
            if (!taken && (best < 0 || s[v] > s[best]))
                best = v;
        }
        st->top_ids[t][j] = best;
        st->top_logp[t][j] = (double)s[best] - lse;
    }
    st->n = t + 1;
}

/* Rank j of the alternatives agrees: the same token, or (near-ties may swap
 * places between two float paths) the same log-prob. */
static int same_alt(int32_t id, double lp, int32_t want_id, double want_lp) {
    return fabs(lp - want_lp) < 1e-4 && (id == want_id || fabs(lp - want_lp) < 2e-5);
}

static void ids_arg(const int32_t *ids, int n, char *buf, size_t cap) {
    size_t k = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && k + 16 < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%d", i ? "," : "", ids[i]);
}

/* The CLI's guided JSON against the decoder, token by token. */
static void check_guided_json(const steps *st, const char *what) {
    json_error_t je;
    json_t *root = json_loads(g_out, 0, &je);
    CHECK(root != NULL, "%s: JSON: %s (%s)", what, je.text, g_errtxt);
    json_t *toks = json_object_get(root, "tokens");
    CHECK(json_is_array(toks) && (int)json_array_size(toks) == st->n, "%s: %d tokens", what,
          st->n);
    int bad_tok = 0, bad_lp = 0, bad_top = 0;
    double sum = 0.0, worst = 0.0;
    for (int t = 0; json_is_array(toks) && t < st->n && t < (int)json_array_size(toks); t++) {
        json_t *e = json_array_get(toks, t);
        double lp = json_real_value(json_object_get(e, "logp"));
        sum += lp;
        bad_tok += json_integer_value(json_object_get(e, "id")) != st->tok[t] ||
                   !json_is_string(json_object_get(e, "piece"));
        bad_lp += !(fabs(lp - st->logp[t]) < 1e-4);
        worst = fabs(lp - st->logp[t]) > worst ? fabs(lp - st->logp[t]) : worst;
        json_t *top = json_object_get(e, "top_logprobs");
        if (!json_is_array(top) || json_array_size(top) != GS_TOP) {
            bad_top++;
            continue;
        }
        for (int j = 0; j < GS_TOP; j++) {
            json_t *a = json_array_get(top, (size_t)j);
            bad_top += !same_alt((int32_t)json_integer_value(json_object_get(a, "id")),
                                 json_real_value(json_object_get(a, "logp")), st->top_ids[t][j],
                                 st->top_logp[t][j]);
        }
    }
    CHECK(bad_tok == 0, "%s: %d tokens with another id or no piece", what, bad_tok);
    CHECK(bad_lp == 0, "%s: %d log-probs differ from the decoder's by >= 1e-4 (worst %.3g)", what,
          bad_lp, worst);
    CHECK(bad_top == 0, "%s: %d top alternatives differ from the decoder's", what, bad_top);
    CHECK(fabs(json_real_value(json_object_get(root, "total")) - sum) < 1e-6,
          "%s: total is the sum", what);
    CHECK(json_is_string(json_object_get(root, "model")) && json_is_array(json_object_get(root, "arms")) &&
              json_is_number(json_object_get(root, "beta")) &&
              json_is_integer(json_object_get(root, "n_prompt_tokens")) &&
              json_integer_value(json_object_get(root, "n_tokens")) == st->n,
          "%s: the documented fields", what);
    json_decref(root);
    printf("%s: %d tokens, worst |logp - decoder| %.2e\n", what, st->n, worst);
}

/* Exactly these keys in object o (the legacy reward JSON keeps its shape). */
static int has_keys(json_t *o, const char *const *keys, int n) {
    if (!json_is_object(o) || (int)json_object_size(o) != n)
        return 0;
    for (int i = 0; i < n; i++)
        if (!json_object_get(o, keys[i]))
            return 0;
    return 1;
}

static void test_guided_score(const char *base, const char *arm1, const char *arm2,
                              const char *other) {
    char a[4096], ids[1024], want[sizeof g_out];
    const char *prompt = "The river ran";
    gn_err err = {0};
    gn_backend_params bp = gn_backend_default_params();
    bp.n_threads = 1;
    gn_backend *be = gn_backend_create("cpu-ref", &bp, &err);
    gn_model_params mp = gn_model_default_params();
    mp.load_tokenizer = 1;
    gn_model *m[3] = {be ? gn_model_load(base, be, &mp, &err) : NULL,
                      be ? gn_model_load(arm1, be, &mp, &err) : NULL,
                      be ? gn_model_load(arm2, be, &mp, &err) : NULL};
    gn_guidance prof = gn_guidance_default();
    prof.n_arms = 2;
    prof.weights[0] = 0.5f;
    prof.weights[1] = -0.25f;
    prof.beta = 0.5f;
    gn_generator *g = m[0] && m[1] && m[2] ? gn_generator_create(m[0], m + 1, 2, &prof, NULL, &err)
                                           : NULL;
    CHECK(g != NULL, "guided score: generator: %s", err.msg);
    steps st = {0};
    gn_gen_result res = {0};
    int32_t *p_ids = NULL;
    int np = 0;
    if (g) { /* the decoder: greedy, observing every step's score row */
        gn_gen_request q = gn_gen_default_request();
        q.prompt = prompt;
        q.max_tokens = GS_STEPS;
        q.ignore_eos = 1;
        q.sampling.temperature = 0.0f;
        gn_gen_callbacks cb = {NULL, on_step, &st};
        CHECK(gn_generate(g, &q, 1, &res, &cb, &err) == 0 && res.n_tokens == GS_STEPS &&
                  st.n == GS_STEPS,
              "greedy run: %s", err.msg);
        CHECK(gn_tok_encode(gn_generator_tokenizer(g), prompt, strlen(prompt), 1, &p_ids, &np,
                            &err) == 0,
              "prompt: %s", err.msg);
    }
    if (g && st.n == GS_STEPS && p_ids) {
        /* the library: whole-sequence scoring against the decoder */
        gn_runner *runners[3] = {gn_generator_runner(g, 0), gn_generator_runner(g, 1),
                                 gn_generator_runner(g, 2)};
        const int32_t *prompts[3] = {p_ids, p_ids, p_ids};
        int nps[3] = {np, np, np};
        gn_guided_score gs = {0};
        int rc = gn_score_guided(m, runners, &prof, prompts, nps, st.tok, st.n, GS_TOP, &gs, &err);
        CHECK(rc == 0 && gs.n_tokens == st.n && gs.n_top == GS_TOP, "gn_score_guided: %s", err.msg);
        if (rc == 0) {
            int bad = 0, bad_top = 0;
            double worst = 0.0, sum = 0.0;
            for (int t = 0; t < st.n; t++) {
                double d = fabs(gs.logp[t] - st.logp[t]);
                worst = d > worst ? d : worst;
                bad += !(d < 1e-4);
                sum += gs.logp[t];
                for (int j = 0; j < GS_TOP; j++)
                    bad_top += !same_alt(gs.top_ids[t * GS_TOP + j], gs.top_logp[t * GS_TOP + j],
                                         st.top_ids[t][j], st.top_logp[t][j]);
            }
            CHECK(bad == 0, "gn_score_guided: %d of %d log-probs off the decoder's (worst %.3g)",
                  bad, st.n, worst);
            CHECK(bad_top == 0, "gn_score_guided: %d alternatives off", bad_top);
            CHECK(fabs(gs.total - sum) < 1e-9, "gn_score_guided: total");
            printf("gn_score_guided: worst |logp - decoder| %.2e over %d tokens\n", worst, st.n);
        }
        gn_guided_score_free(&gs);
        /* errors: an id out of range, n_top too large, a bad guidance */
        int32_t badtok[2] = {3, 1 << 20};
        CHECK(gn_score_guided(m, runners, &prof, prompts, nps, badtok, 2, 0, &gs, &err) ==
                      GN_EINVAL &&
                  strstr(err.msg, "response token 1"),
              "id out of range: %s", err.msg);
        CHECK(gn_score_guided(m, runners, &prof, prompts, nps, st.tok, 2, GN_DRAW_MAX_TOP + 1,
                              &gs, &err) == GN_EINVAL,
              "n_top too large");
        gn_guidance badg = prof;
        badg.beta = 0.0f;
        CHECK(gn_score_guided(m, runners, &badg, prompts, nps, st.tok, 2, 0, &gs, &err) ==
                      GN_EINVAL && gs.logp == NULL,
              "beta 0: %s", err.msg);
        /* allocation failures free everything and report GN_ENOMEM */
        int failures = 0;
        for (long i = 0; i < 40; i++) {
            gn_alloc_fail_after(i);
            rc = gn_score_guided(m, runners, &prof, prompts, nps, st.tok, st.n, GS_TOP, &gs, &err);
            gn_alloc_fail_after(-1);
            if (rc == 0) {
                gn_guided_score_free(&gs);
                break;
            }
            failures++;
            if (rc != GN_ENOMEM || gs.logp != NULL)
                break;
        }
        CHECK(rc == 0 && failures > 3, "allocation failures: rc %d after %d (%s)", rc, failures,
              err.msg);

        /* the CLI: --response-ids of the generated tokens */
        ids_arg(st.tok, st.n, ids, sizeof ids);
        snprintf(a, sizeof a,
                 "score --model '%s' --arm '%s:0.5' --arm '%s:-0.25' --beta 0.5 --prompt '%s' "
                 "--response-ids %s --top-logprobs %d --json --device cpu-ref --threads 1",
                 base, arm1, arm2, prompt, ids, GS_TOP);
        CHECK(run(a) == 0, "score --model --json: %s", g_errtxt);
        check_guided_json(&st, "score --model --response-ids");
        /* the SIMD kernels, threaded: another float path, within 1e-4 all the same */
        snprintf(a, sizeof a,
                 "score --model '%s' --arm '%s:0.5' --arm '%s:-0.25' --beta 0.5 --prompt '%s' "
                 "--response-ids %s --top-logprobs %d --json --device cpu",
                 base, arm1, arm2, prompt, ids, GS_TOP);
        CHECK(run(a) == 0, "score --model --device cpu: %s", g_errtxt);
        check_guided_json(&st, "score --model --device cpu");
        snprintf(a, sizeof a,
                 "score --model '%s' --arm '%s:0.5' --arm '%s:-0.25' --beta 0.5 --prompt '%s' "
                 "--response-ids %s --top-logprobs 2 --device cpu-ref",
                 base, arm1, arm2, prompt, ids);
        CHECK(run(a) == 0 && strstr(g_out, "logp") && strstr(g_out, "\ntotal ") &&
                  strstr(g_out, "     2. ") && strstr(g_out, "guided by 2 ARMs"),
              "score --model table: %s %s", g_out, g_errtxt);
    }

    /* --response-ids equals the text form when the text round-trips */
    const char *resp = " fast under the old stone bridge.";
    int32_t *r_ids = NULL;
    int nr = 0;
    char *back = NULL;
    size_t blen = 0;
    const gn_tokenizer *tk = m[0] ? gn_model_tokenizer(m[0]) : NULL;
    if (tk && gn_tok_encode(tk, resp, strlen(resp), 0, &r_ids, &nr, &err) == 0 &&
        gn_tok_decode(tk, r_ids, nr, 0, &back, &blen, &err) == 0) {
        CHECK(blen == strlen(resp) && !memcmp(back, resp, blen), "the response round-trips");
        ids_arg(r_ids, nr, ids, sizeof ids);
        const char *forms[2] = {"--model", "--arm"};
        for (int f = 0; f < 2; f++) {
            const char *guided = f == 0 ? "--arm" : "";
            const char *arm = f == 0 ? arm1 : "";
            snprintf(a, sizeof a,
                     "score %s '%s' %s %s%s%s --prompt '%s' --response '%s' --json --device cpu-ref",
                     forms[f], f == 0 ? base : arm1, guided, f == 0 ? "'" : "", arm,
                     f == 0 ? ":0.5'" : "", prompt, resp);
            CHECK(run(a) == 0, "%s text: %s", forms[f], g_errtxt);
            memcpy(want, g_out, sizeof g_out);
            snprintf(a, sizeof a,
                     "score %s '%s' %s %s%s%s --prompt '%s' --response-ids '%s' --json --device "
                     "cpu-ref",
                     forms[f], f == 0 ? base : arm1, guided, f == 0 ? "'" : "", arm,
                     f == 0 ? ":0.5'" : "", prompt, ids);
            CHECK(run(a) == 0 && !strcmp(g_out, want) && strstr(want, "\"tokens\""),
                  "%s: --response-ids output == --response output (%s)", forms[f], g_errtxt);
        }
        /* legacy reward JSON: its shape is unchanged */
        json_error_t je;
        json_t *root = json_loads(want, 0, &je);
        static const char *const top_keys[5] = {"arm", "n_prompt_tokens", "n_tokens", "tokens",
                                                "total"};
        static const char *const tok_keys[3] = {"id", "piece", "logp"};
        json_t *toks = root ? json_object_get(root, "tokens") : NULL;
        CHECK(has_keys(root, top_keys, 5) && json_is_array(toks) && (int)json_array_size(toks) == nr &&
                  has_keys(json_array_get(toks, 0), tok_keys, 3),
              "legacy score JSON keeps its fields: %s", want);
        /* with --add-eos the ids form gets the EOS too */
        snprintf(a, sizeof a, "score --arm '%s' --prompt '%s' --response-ids '%s' --add-eos --json",
                 arm1, prompt, ids);
        json_t *r2 = run(a) == 0 ? json_loads(g_out, 0, &je) : NULL;
        CHECK(r2 && json_integer_value(json_object_get(r2, "n_tokens")) == nr + 1,
              "--response-ids --add-eos: %s", g_errtxt);
        json_decref(r2);

        /* guided without ARMs is the base model's own log-probs: its reward */
        double legacy_total = 0.0;
        snprintf(a, sizeof a, "score --arm '%s' --prompt '%s' --response '%s' --json", base, prompt,
                 resp);
        json_t *r3 = run(a) == 0 ? json_loads(g_out, 0, &je) : NULL;
        legacy_total = r3 ? json_real_value(json_object_get(r3, "total")) : NAN;
        snprintf(a, sizeof a, "score --model '%s' --prompt '%s' --response '%s' --json", base,
                 prompt, resp);
        json_t *r4 = run(a) == 0 ? json_loads(g_out, 0, &je) : NULL;
        CHECK(r3 && r4 &&
                  fabs(json_real_value(json_object_get(r4, "total")) - legacy_total) < 1e-4 &&
                  json_array_size(json_object_get(r4, "arms")) == 0,
              "score --model BASE alone == the base's reward (%g): %s", legacy_total, g_errtxt);
        json_decref(r3);
        json_decref(r4);
        json_decref(root);
    } else {
        CHECK(0, "tokenizing the response: %s", err.msg);
    }
    gn_free(back);
    gn_free(r_ids);

    /* bad inputs fail with a message */
    struct {
        const char *ids;
        const char *msg;
    } bad[] = {{"1,x,3", "entry 2 'x'"},
               {"", "empty list"},
               {"4,,5", "entry 2 is empty"},
               {"7,-2", "entry 2 '-2'"},
               {"3,99999999", "entry 2 (99999999) is outside the vocabulary"},
               {"1.5", "entry 1 '1.5'"},
               {"12345678901234567890", "not a token id"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        for (int f = 0; f < 2; f++) {
            snprintf(a, sizeof a, "score %s '%s' --prompt hi --response-ids '%s'",
                     f ? "--arm" : "--model", f ? arm1 : base, bad[i].ids);
            int rc = run(a);
            CHECK(rc == 2 && strstr(g_errtxt, "--response-ids") && strstr(g_errtxt, bad[i].msg),
                  "--response-ids '%s' (%s): exit %d: %s", bad[i].ids, f ? "reward" : "guided", rc,
                  g_errtxt);
        }
    }
    snprintf(a, sizeof a, "score --arm '%s' --prompt hi --response x --response-ids 1", arm1);
    CHECK(run(a) == 2 && strstr(g_errtxt, "exactly one of"), "two responses: %s", g_errtxt);
    snprintf(a, sizeof a, "score --model '%s' --prompt hi --response x --top-logprobs 21", base);
    CHECK(run(a) == 2 && strstr(g_errtxt, "--top-logprobs"), "--top-logprobs 21: %s", g_errtxt);
    snprintf(a, sizeof a, "score --arm '%s' --prompt hi --response x --top-logprobs 3", arm1);
    CHECK(run(a) == 2 && strstr(g_errtxt, "needs --model"), "--top-logprobs without --model: %s",
          g_errtxt);
    snprintf(a, sizeof a, "score --arm '%s' --prompt hi --response x --beta 2", arm1);
    CHECK(run(a) == 2 && strstr(g_errtxt, "needs --model"), "--beta without --model: %s", g_errtxt);
    snprintf(a, sizeof a, "score --arm '%s' --arm '%s' --prompt hi --response x", arm1, arm2);
    CHECK(run(a) == 2 && strstr(g_errtxt, "--model"), "two ARMs without --model: %s", g_errtxt);
    snprintf(a, sizeof a, "score --model '%s' --arm '%s' --prompt hi --response x --device cpu-ref",
             base, other);
    CHECK(run(a) == 1 && strstr(g_errtxt, "tokenizer") && strstr(g_errtxt, other),
          "guided score with a mismatched tokenizer: %s", g_errtxt);
    snprintf(a, sizeof a, "score --model '%s' --arm /nonexistent/arm:0.5 --prompt hi --response x",
             base);
    CHECK(run(a) == 1 && strstr(g_errtxt, "/nonexistent/arm"), "missing ARM dir: %s", g_errtxt);
    CHECK(run("--help") == 0 && strstr(g_out, "--response-ids") && strstr(g_out, "--top-logprobs") &&
              strstr(g_out, "top_logprobs"),
          "help documents guided scoring");

    gn_free(p_ids);
    gn_gen_result_free(&res);
    gn_generator_free(g);
    for (int i = 0; i < 3; i++)
        gn_model_free(m[i]);
    gn_backend_free(be);
}

static void test_generate_matches_library(const char *base, const char *arm1, const char *arm2) {
    char a[2048];
    const char *prompt = "The river ran";
    snprintf(a, sizeof a,
             "generate --model '%s' --arm '%s:0.5' --arm '%s:-0.25' --beta 0.5 --prompt '%s' "
             "--max-tokens 12 --temperature 0.8 --top-k 40 --top-p 0.95 --min-p 0.01 --seed 7 "
             "--ignore-eos --device cpu-ref --threads 1",
             base, arm1, arm2, prompt);
    int rc = run(a);
    CHECK(rc == 0, "generate exit %d: %s", rc, g_errtxt);
    CHECK(strstr(g_errtxt, "tokens/s") != NULL, "stats on stderr: %s", g_errtxt);
    CHECK(strstr(g_errtxt, "generated 12 tokens") != NULL, "12 tokens: %s", g_errtxt);
    char streamed[sizeof g_out];
    memcpy(streamed, g_out, sizeof g_out);

    /* the library with the same settings */
    gn_err err = {0};
    gn_backend_params bp = gn_backend_default_params();
    bp.n_threads = 1;
    gn_backend *be = gn_backend_create("cpu-ref", &bp, &err);
    gn_model_params mp = gn_model_default_params();
    mp.load_tokenizer = 1;
    gn_model *mb = be ? gn_model_load(base, be, &mp, &err) : NULL;
    gn_model *m1 = be ? gn_model_load(arm1, be, &mp, &err) : NULL;
    gn_model *m2 = be ? gn_model_load(arm2, be, &mp, &err) : NULL;
    gn_model *arms[2] = {m1, m2};
    gn_guidance prof = gn_guidance_default();
    prof.n_arms = 2;
    prof.weights[0] = 0.5f;
    prof.weights[1] = -0.25f;
    prof.beta = 0.5f;
    gn_generator *g = mb && m1 && m2 ? gn_generator_create(mb, arms, 2, &prof, NULL, &err) : NULL;
    CHECK(g != NULL, "library generator: %s", err.msg);
    if (g) {
        gn_gen_request q = gn_gen_default_request();
        q.prompt = prompt;
        q.max_tokens = 12;
        q.ignore_eos = 1;
        q.sampling.temperature = 0.8f;
        q.sampling.top_k = 40;
        q.sampling.top_p = 0.95f;
        q.sampling.min_p = 0.01f;
        q.sampling.seed = 7;
        gn_gen_result r = {0};
        if (gn_generate(g, &q, 1, &r, NULL, &err) == 0) {
            size_t n = strlen(streamed);
            CHECK(n == r.text_len + 1 && streamed[n - 1] == '\n' &&
                      !memcmp(streamed, r.text, r.text_len),
                  "CLI stdout == library text + newline ('%s' vs '%s')", streamed, r.text);
        } else {
            CHECK(0, "library generate: %s", err.msg);
        }
        gn_gen_result_free(&r);

        /* score: the CLI's JSON total equals gn_score_text */
        const char *resp = " fast under the old stone bridge.";
        snprintf(a, sizeof a,
                 "score --arm '%s' --prompt '%s' --response '%s' --json --device cpu-ref", arm1,
                 prompt, resp);
        rc = run(a);
        CHECK(rc == 0, "score exit %d: %s", rc, g_errtxt);
        json_error_t je;
        json_t *root = json_loads(g_out, 0, &je);
        CHECK(root != NULL, "score --json is JSON: %s", je.text);
        gn_runner *run1 = gn_generator_runner(g, 1);
        gn_score_result sr = {0};
        if (root && gn_score_text(m1, run1, prompt, resp, 0, &sr, &err) == 0) {
            double total = json_real_value(json_object_get(root, "total"));
            json_t *toks = json_object_get(root, "tokens");
            CHECK(fabs(total - sr.total) < 1e-4, "CLI total %g vs library %g", total, sr.total);
            CHECK(json_is_array(toks) && (int)json_array_size(toks) == sr.n_tokens,
                  "one entry per token");
            double sum = 0.0;
            int ids_ok = 1;
            for (size_t i = 0; json_is_array(toks) && i < json_array_size(toks); i++) {
                json_t *t = json_array_get(toks, i);
                sum += json_real_value(json_object_get(t, "logp"));
                if (json_integer_value(json_object_get(t, "id")) != sr.tokens[i])
                    ids_ok = 0;
                if (!json_is_string(json_object_get(t, "piece")))
                    ids_ok = 0;
            }
            CHECK(ids_ok, "ids and pieces");
            CHECK(fabs(sum - total) < 1e-4, "total = sum of per-token logp");
        } else {
            CHECK(0, "library score: %s", err.msg);
        }
        gn_score_result_free(&sr);
        json_decref(root);

        snprintf(a, sizeof a, "score --arm '%s' --prompt '%s' --response '%s' --device cpu-ref",
                 arm1, prompt, resp);
        CHECK(run(a) == 0 && strstr(g_out, "\ntotal ") && strstr(g_out, "logp"), "score table: %s",
              g_out);
    }
    gn_generator_free(g);
    gn_model_free(mb);
    gn_model_free(m1);
    gn_model_free(m2);
    gn_backend_free(be);

    /* --no-stream prints the same text; -n 3 runs a batch */
    snprintf(a, sizeof a,
             "generate --model '%s' --arm '%s:0.5' --arm '%s:-0.25' --beta 0.5 --prompt '%s' "
             "--max-tokens 12 --temperature 0.8 --top-k 40 --top-p 0.95 --min-p 0.01 --seed 7 "
             "--ignore-eos --device cpu-ref --no-stream",
             base, arm1, arm2, prompt);
    CHECK(run(a) == 0 && !strcmp(g_out, streamed), "--no-stream prints the same text");
    snprintf(a, sizeof a,
             "generate --model '%s' --arm '%s' --prompt '%s' --max-tokens 5 -n 3 --device cpu "
             "--stop xyz",
             base, arm1, prompt);
    CHECK(run(a) == 0 && strstr(g_out, "--- sample 2") && strstr(g_errtxt, "3 sequences"),
          "-n 3: %s %s", g_out, g_errtxt);
}

/* --device dev against --device cpu: guided greedy text equal (the models'
 * top two log-probs are far apart compared with the device's rounding), and
 * score totals within the device's rounding (F16 KV cache on a GPU). */
static void test_device(const char *dev, const char *base, const char *arm1, const char *arm2) {
    char a[2048], want[sizeof g_out];
    const char *prompt = "The river ran";
    const char *devs[2] = {"cpu", dev};
    double totals[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        snprintf(a, sizeof a,
                 "generate --model '%s' --arm '%s:0.5' --arm '%s:-0.25' --beta 0.5 --prompt '%s' "
                 "--max-tokens 16 --temperature 0 --ignore-eos --device %s",
                 base, arm1, arm2, prompt, devs[i]);
        int rc = run(a);
        CHECK(rc == 0, "generate --device %s: exit %d: %s", devs[i], rc, g_errtxt);
        CHECK(strstr(g_errtxt, "generated 16 tokens") != NULL, "--device %s: 16 tokens: %s", devs[i], g_errtxt);
        if (i == 0) memcpy(want, g_out, sizeof g_out);
        else CHECK(!strcmp(g_out, want), "--device %s text '%s' != cpu text '%s'", dev, g_out, want);
        snprintf(a, sizeof a,
                 "score --arm '%s' --prompt '%s' --response ' fast under the old stone bridge.' --json "
                 "--device %s",
                 arm1, prompt, devs[i]);
        rc = run(a);
        CHECK(rc == 0, "score --device %s: exit %d: %s", devs[i], rc, g_errtxt);
        json_error_t je;
        json_t *root = json_loads(g_out, 0, &je);
        CHECK(root != NULL, "score --device %s: JSON: %s", devs[i], je.text);
        totals[i] = root ? json_real_value(json_object_get(root, "total")) : 0.0;
        json_decref(root);
    }
    CHECK(fabs(totals[1] - totals[0]) < 0.02, "score total on %s %g vs cpu %g", dev, totals[1], totals[0]);
    double guided[2] = {0, 0};
    for (int i = 0; i < 2; i++) { /* guided scoring on the device */
        snprintf(a, sizeof a,
                 "score --model '%s' --arm '%s:0.5' --arm '%s:-0.25' --beta 0.5 --prompt '%s' "
                 "--response ' fast under the old stone bridge.' --top-logprobs 3 --json --device %s",
                 base, arm1, arm2, prompt, devs[i]);
        int rc = run(a);
        CHECK(rc == 0, "score --model --device %s: exit %d: %s", devs[i], rc, g_errtxt);
        json_error_t je;
        json_t *root = json_loads(g_out, 0, &je);
        guided[i] = root ? json_real_value(json_object_get(root, "total")) : 0.0;
        json_decref(root);
    }
    CHECK(fabs(guided[1] - guided[0]) < 0.03, "guided score total on %s %g vs cpu %g", dev,
          guided[1], guided[0]);
    printf("--device %s: text equal to cpu; score total %.6f vs %.6f on cpu\n", dev, totals[1], totals[0]);
}

int main(int argc, char **argv) {
    const char *dev = argc > 1 ? argv[1] : NULL;
    if (dev) {
        gn_err err = {0};
        gn_backend *be = gn_backend_create(dev, NULL, &err);
        if (!be)
            GN_TEST_SKIP(err.msg);
        gn_backend_free(be);
    }
    const char *bdir = getenv("GN_BUILD_DIR");
    if (!bdir)
        GN_TEST_SKIP("GN_BUILD_DIR not set (run through ctest)");
    snprintf(g_bin, sizeof g_bin, "%s/tools/genarm", bdir);
    if (access(g_bin, X_OK) != 0)
        GN_TEST_SKIP("genarm not built");
    snprintf(g_tmp, sizeof g_tmp, "/tmp/gn_test_cli_XXXXXX");
    if (!mkdtemp(g_tmp))
        GN_TEST_SKIP("cannot create a temporary directory");
    char base[300], arm1[300], arm2[300], other[300];
    if (make_model("base", "llama", 1, 254, base, sizeof base) == 0 &&
        make_model("arm1", "llama", 2, 254, arm1, sizeof arm1) == 0 &&
        make_model("arm2", "qwen3", 3, 254, arm2, sizeof arm2) == 0 &&
        make_model("other", "llama", 4, 200, other, sizeof other) == 0) {
        if (dev) {
            test_device(dev, base, arm1, arm2);
        } else {
            test_usage(base, other);
            test_generate_matches_library(base, arm1, arm2);
            test_guided_score(base, arm1, arm2, other);
        }
    }
    nftw(g_tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    GN_TEST_MAIN_END();
}
