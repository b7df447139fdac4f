/* test_cli.c — the `genarm` command line: help, flag validation, clear errors
 * (missing and malformed model directories, mismatched ARM tokenizer), and
 * that `generate` and `score` print what the library computes. Runs the built
 * binary ($GN_BUILD_DIR/tools/genarm) on tiny models from the model maker.
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
        }
    }
    nftw(g_tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    GN_TEST_MAIN_END();
}
