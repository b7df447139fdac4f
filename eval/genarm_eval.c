/* genarm-eval — samples continuations of a prompt set from a base model, alone
 * and guided by ARMs under several (weights, β) configurations, and scores
 * every sample with the transparent scorers (scorers.h), and with its mean
 * log-prob per token under the base model (how natural the base finds it: the
 * price of guidance). One JSON line per sample; eval/summarize.py turns them into tables and plots, and
 * eval/make_pairs.py into preference pairs.
 *
 *   genarm-eval --model BASE [--arm DIR]... --prompts FILE --lexicon TSV --out OUT.jsonl
 *               [--config SPEC]... [-n K] [--max-tokens N] [--temperature T] [--top-p P]
 *               [--seed S] [--threads N] [--device D] [--show]
 *
 * --show prints the first sample (seed S) of every prompt and configuration with
 * its scores, then every configuration's mean scores over all samples, to
 * stdout (then --out is optional).
 * SPEC is "base" (no guidance) or "W1,W2,...@BETA" (one weight per --arm),
 * optionally preceded by "LABEL=" (the name used in the output; default SPEC).
 * Sample k of every prompt and every configuration uses seed S + k, so the
 * configurations are compared on common random numbers. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "generate.h"
#include "gn_alloc.h"
#include "gn_err.h"
#include "guidance.h"
#include "model.h"
#include "scorers.h"

#define MAX_ARMS 8
#define MAX_CONFIGS 64

typedef struct config {
    char label[96];
    int base_only;
    gn_guidance g;
} config;

static int usage(void) {
    fprintf(stderr,
            "usage: genarm-eval --model BASE [--arm DIR]... --prompts FILE --lexicon TSV --out OUT.jsonl\n"
            "       [--config [LABEL=]base|W1,W2,...@BETA]... [-n K (4)] [--max-tokens N (32)]\n"
            "       [--temperature T (1)] [--top-p P (1)] [--seed S (1)] [--threads N (1)] [--device D (cpu)]\n"
            "       [--show: print each configuration's first sample and mean scores; --out optional]\n");
    return 2;
}

static int parse_config(const char *s, int n_arms, config *c) {
    memset(c, 0, sizeof *c);
    const char *eq = strchr(s, '=');
    if (eq) { /* "LABEL=SPEC" */
        snprintf(c->label, sizeof c->label, "%.*s", (int)(eq - s), s);
        s = eq + 1;
    } else {
        snprintf(c->label, sizeof c->label, "%s", s);
    }
    if (!strcmp(s, "base")) {
        c->base_only = 1;
        c->g = gn_guidance_default();
        c->g.n_arms = n_arms;
        for (int i = 0; i < n_arms; i++) c->g.weights[i] = 0.0f;
        return 0;
    }
    const char *at = strchr(s, '@');
    if (!at) return -1;
    c->g = gn_guidance_default();
    c->g.n_arms = n_arms;
    const char *p = s;
    for (int i = 0; i < n_arms; i++) {
        char *end = NULL;
        c->g.weights[i] = strtof(p, &end);
        if (end == p || (i + 1 < n_arms ? *end != ',' : end != at)) return -1;
        p = end + 1;
    }
    char *end = NULL;
    c->g.beta = strtof(at + 1, &end);
    if (*end || !(c->g.beta > 0)) return -1;
    gn_err err = {0};
    return gn_guidance_validate(&c->g, &err) ? -1 : 0;
}

/* Reads non-empty lines of path (trailing '\r' dropped). */
static char **read_lines(const char *path, int *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char **v = NULL, line[4096];
    int cap = 0;
    *n = 0;
    while (fgets(line, sizeof line, f)) {
        size_t l = strcspn(line, "\r\n");
        line[l] = '\0';
        if (!l) continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nv = gn_realloc(v, sizeof *v * (size_t)cap);
            if (!nv) break;
            v = nv;
        }
        if (!(v[*n] = gn_malloc(l + 1))) break;
        memcpy(v[(*n)++], line, l + 1);
    }
    fclose(f);
    return v;
}

int main(int argc, char **argv) {
    const char *model_dir = NULL, *prompts_path = NULL, *lex_path = NULL, *out_path = NULL;
    const char *device = "cpu", *arm_dirs[MAX_ARMS];
    const char *specs[MAX_CONFIGS];
    int n_arms = 0, n_specs = 0, k_samples = 4, max_tokens = 32, threads = 1, show = 0;
    gn_sampler_params sp = gn_sampler_default_params();
    unsigned long long seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(f, "--show")) {
            show = 1;
            continue;
        }
        if (!v) return usage();
        i++;
        if (!strcmp(f, "--model")) model_dir = v;
        else if (!strcmp(f, "--arm") && n_arms < MAX_ARMS) arm_dirs[n_arms++] = v;
        else if (!strcmp(f, "--prompts")) prompts_path = v;
        else if (!strcmp(f, "--lexicon")) lex_path = v;
        else if (!strcmp(f, "--out")) out_path = v;
        else if (!strcmp(f, "--config") && n_specs < MAX_CONFIGS) specs[n_specs++] = v;
        else if (!strcmp(f, "-n")) k_samples = atoi(v);
        else if (!strcmp(f, "--max-tokens")) max_tokens = atoi(v);
        else if (!strcmp(f, "--temperature")) sp.temperature = strtof(v, NULL);
        else if (!strcmp(f, "--top-p")) sp.top_p = strtof(v, NULL);
        else if (!strcmp(f, "--seed")) seed = strtoull(v, NULL, 10);
        else if (!strcmp(f, "--threads")) threads = atoi(v);
        else if (!strcmp(f, "--device")) device = v;
        else return usage();
    }
    if (!model_dir || !prompts_path || !lex_path || (!out_path && !show) || k_samples < 1 || k_samples > 256 ||
        max_tokens < 1 || threads < 0)
        return usage();
    if (!n_specs) specs[n_specs++] = "base";
    config cfg[MAX_CONFIGS];
    for (int c = 0; c < n_specs; c++)
        if (parse_config(specs[c], n_arms, &cfg[c])) {
            fprintf(stderr, "genarm-eval: bad --config '%s' (base, or %d weights then @beta > 0)\n",
                    specs[c], n_arms);
            return 2;
        }

    int rc = 1, n_prompts = 0;
    gn_err err = {0};
    char **prompts = read_lines(prompts_path, &n_prompts);
    gn_eval_lexicon *lx = gn_eval_lexicon_load(lex_path, &err);
    gn_backend *be = NULL;
    gn_model *base = NULL, *arms[MAX_ARMS] = {0};
    gn_generator *g = NULL;
    int n_req = n_specs * k_samples;
    double sum_sent[MAX_CONFIGS] = {0}, sum_wps[MAX_CONFIGS] = {0}, sum_lp[MAX_CONFIGS] = {0};
    gn_gen_request *reqs = gn_calloc((size_t)n_req, sizeof *reqs);
    gn_gen_result *res = gn_calloc((size_t)n_req, sizeof *res);
    FILE *out = NULL;
    int tty = isatty(2);
    if (!prompts || !n_prompts) {
        fprintf(stderr, "genarm-eval: no prompts in %s\n", prompts_path);
        goto done;
    }
    if (!lx || !reqs || !res) {
        fprintf(stderr, "genarm-eval: %s\n", lx ? "out of memory" : err.msg);
        goto done;
    }
    gn_backend_params bp = gn_backend_default_params();
    bp.n_threads = threads;
    gn_model_params mp = gn_model_default_params();
    mp.load_tokenizer = 1;
    if (!(be = gn_backend_create(device, &bp, &err)) || !(base = gn_model_load(model_dir, be, &mp, &err))) {
        fprintf(stderr, "genarm-eval: %s: %s\n", model_dir, err.msg);
        goto done;
    }
    for (int i = 0; i < n_arms; i++)
        if (!(arms[i] = gn_model_load(arm_dirs[i], be, &mp, &err))) {
            fprintf(stderr, "genarm-eval: %s: %s\n", arm_dirs[i], err.msg);
            goto done;
        }
    if (!(g = gn_generator_create(base, arms, n_arms, &cfg[0].g, NULL, &err))) {
        fprintf(stderr, "genarm-eval: %s\n", err.msg);
        goto done;
    }
    if (out_path && !(out = fopen(out_path, "w"))) {
        fprintf(stderr, "genarm-eval: cannot write %s\n", out_path);
        goto done;
    }
    for (int p = 0; p < n_prompts; p++) {
        for (int c = 0; c < n_specs; c++)
            for (int k = 0; k < k_samples; k++) {
                gn_gen_request *r = &reqs[c * k_samples + k];
                *r = gn_gen_default_request();
                r->prompt = prompts[p];
                r->sampling = sp;
                r->sampling.seed = seed + (unsigned long long)k;
                r->max_tokens = max_tokens;
                r->guidance = &cfg[c].g;
            }
        if (gn_generate(g, reqs, n_req, res, NULL, &err)) {
            fprintf(stderr, "genarm-eval: prompt %d: %s\n", p + 1, err.msg);
            goto done;
        }
        for (int c = 0; c < n_specs; c++)
            for (int k = 0; k < k_samples; k++) {
                gn_gen_result *r = &res[c * k_samples + k];
                gn_eval_scores s = gn_eval_score(lx, r->text, r->text_len);
                /* Naturalness under the base model: mean log-prob per token of the text. */
                double base_lp = 0.0;
                if (r->text_len && !memchr(r->text, '\0', r->text_len)) {
                    gn_score_result sr = {0};
                    if (gn_score_text(base, gn_generator_runner(g, 0), prompts[p], r->text, 0, &sr, &err)) {
                        fprintf(stderr, "genarm-eval: scoring under the base: %s\n", err.msg);
                        goto done;
                    }
                    base_lp = sr.n_tokens ? sr.total / sr.n_tokens : 0.0;
                    gn_score_result_free(&sr);
                }
                sum_lp[c] += base_lp;
                sum_sent[c] += s.sentiment;
                sum_wps[c] += s.words_per_sentence;
                json_t *w = json_array();
                for (int i = 0; i < n_arms; i++) json_array_append_new(w, json_real(cfg[c].g.weights[i]));
                json_t *o = json_pack(
                    "{s:i, s:s, s:s, s:b, s:f, s:o, s:i, s:I, s:s%, s:i, s:s, s:f, s:f, s:f, s:i, s:i, s:f}",
                    "prompt_index", p, "prompt", prompts[p], "config", cfg[c].label, "base_only",
                    cfg[c].base_only, "beta", (double)cfg[c].g.beta, "weights", w, "sample", k, "seed",
                    (json_int_t)(seed + (unsigned long long)k), "response", r->text, r->text_len,
                    "n_tokens", r->n_tokens, "finish", r->finish_reason, "sentiment", s.sentiment,
                    "concise", s.concise, "words_per_sentence", s.words_per_sentence, "n_words",
                    s.n_words, "n_sentences", s.n_sentences, "base_logp_per_token", base_lp);
                char *line = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII) : NULL;
                json_decref(o);
                if (!line) {
                    fprintf(stderr, "genarm-eval: out of memory\n");
                    goto done;
                }
                if (out) fprintf(out, "%s\n", line);
                free(line);
                if (show && k == 0)
                    printf("\n== %s (seed %llu)\n%s%.*s\n   sentiment %+g   words per sentence %.1f"
                           "   (concise %.1f)   base log-prob/token %.2f\n",
                           cfg[c].label,
                           seed + (unsigned long long)k, prompts[p], (int)r->text_len, r->text,
                           s.sentiment, s.words_per_sentence, s.concise, base_lp);
                gn_gen_result_free(r);
            }
        if (!show && tty) fprintf(stderr, "\rgenarm-eval: %d/%d prompts", p + 1, n_prompts);
    }
    if (!show)
        fprintf(stderr, "%sgenarm-eval: %d prompts x %d configurations x %d samples -> %s\n",
                tty ? "\n" : "", n_prompts, n_specs, k_samples, out_path);
    else {
        printf("\nmeans over %d sample%s (%d prompt%s x %d seed%s):\n", n_prompts * k_samples,
               n_prompts * k_samples == 1 ? "" : "s", n_prompts, n_prompts == 1 ? "" : "s", k_samples,
               k_samples == 1 ? "" : "s");
        for (int c = 0; c < n_specs; c++)
            printf("  %-38s sentiment %+6.2f   words per sentence %5.1f   base log-prob/token %6.2f\n",
                   cfg[c].label, sum_sent[c] / (n_prompts * k_samples),
                   sum_wps[c] / (n_prompts * k_samples), sum_lp[c] / (n_prompts * k_samples));
    }
    rc = 0;
done:
    if (out && fclose(out)) rc = 1;
    for (int i = 0; res && i < n_req; i++) gn_gen_result_free(&res[i]); /* error paths */
    gn_free(reqs);
    gn_free(res);
    gn_generator_free(g);
    for (int i = 0; i < n_arms; i++) gn_model_free(arms[i]);
    gn_model_free(base);
    gn_backend_free(be);
    gn_eval_lexicon_free(lx);
    for (int i = 0; i < n_prompts; i++) gn_free(prompts[i]);
    gn_free(prompts);
    return rc;
}
