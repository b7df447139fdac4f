/* test_train_grad.c — the backward pass against central finite differences of
 * the forward pass, for every trainable tensor (embeddings, q/k/v/o with and
 * without bias, q/k norms, MLP, norms, lm_head, LoRA A and B on all seven
 * projections), with the LM and the ARM loss, on tiny GQA models with padded
 * batches. Also checks the loss helpers' edge cases and the data loader's
 * error messages. */
#include <stdint.h>
#include <string.h>

#include "gn_alloc.h"
#include "lora.h"
#include "tokenizer.h"
#include "train_data.h"
#include "train_model.h"
#include "train_test_util.h"

enum { B_LM = 3, T_LM = 9, B_ARM = 4, T_ARM = 8 };

typedef struct batch_set {
    int32_t tok[64], tgt[64];
    gn_train_batch b;
    int arm;
} batch_set;

static uint64_t rng = 12345;
static uint32_t rnd(void) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng >> 33);
}

static void make_batch(batch_set *s, int arm, int n_vocab) {
    const int B = arm ? B_ARM : B_LM, T = arm ? T_ARM : T_LM;
    static const int lens_lm[B_LM] = {9, 6, 4};
    static const int lens_arm[B_ARM] = {8, 5, 6, 7}, prompt[2] = {3, 2};
    for (int i = 0; i < B * T; i++) {
        s->tok[i] = 0;
        s->tgt[i] = -1;
    }
    for (int b = 0; b < B; b++) {
        int n = arm ? lens_arm[b] : lens_lm[b], first = arm ? prompt[b / 2] : 1;
        for (int t = 0; t < n; t++) s->tok[b * T + t] = (int32_t)(rnd() % (uint32_t)n_vocab);
        if (arm && (b & 1)) /* rejected shares the chosen's prompt */
            memcpy(&s->tok[b * T], &s->tok[(b - 1) * T], (size_t)first * sizeof(int32_t));
        for (int t = first - 1; t + 1 < n; t++) s->tgt[b * T + t] = s->tok[b * T + t + 1];
    }
    s->b = (gn_train_batch){B, T, s->tok, s->tgt};
    s->arm = arm;
}

static double loss_of(gn_train_model *m, const batch_set *s, float *dlogp) {
    float logp[64], tmp[64];
    gn_err err = {0};
    if (gn_train_forward(m, &s->b, logp, &err)) {
        fprintf(stderr, "forward: %s\n", err.msg);
        return NAN;
    }
    return s->arm ? gn_train_loss_arm(&s->b, logp, 0.8f, 1.0f, dlogp ? dlogp : tmp, NULL)
                  : gn_train_loss_lm(&s->b, logp, 1.0f, dlogp ? dlogp : tmp, NULL);
}

/* Checks the analytic gradient of each trainable tensor at its largest
 * element and at 2 random ones. */
static void check_fd(gn_train_model *m, const batch_set *s, const char *what) {
    float dlogp[64];
    gn_err err = {0};
    gn_train_zero_grads(m);
    loss_of(m, s, dlogp);
    int rc = gn_train_backward(m, dlogp, &err);
    CHECK(rc == 0, "%s backward: %s", what, err.msg);
    float *w = gn_train_params(m);
    const float *g = gn_train_grads(m);
    int bad = 0, n_checked = 0;
    double worst = 0;
    for (int i = 0; i < gn_train_n_tensors(m); i++) {
        const gn_train_tensor *t = gn_train_tensor_at(m, i);
        size_t n = (size_t)t->rows * (size_t)t->cols, pick[3], amax = 0;
        for (size_t k = 0; k < n; k++)
            if (fabsf(g[t->offset + k]) > fabsf(g[t->offset + amax])) amax = k;
        pick[0] = amax;
        for (int k = 1; k < 3; k++) pick[k] = rnd() % n;
        for (int k = 0; k < 3; k++) {
            size_t idx = t->offset + pick[k];
            /* central differences at h and h/2, Richardson-extrapolated:
             * the h² error cancels, so h can be large enough that float
             * rounding in the loss stays far below the tolerance */
            float keep = w[idx];
            double d[2];
            for (int r = 0; r < 2; r++) {
                float h = (r ? 5e-3f : 1e-2f) * (fabsf(keep) > 1 ? fabsf(keep) : 1.0f);
                w[idx] = keep + h;
                double lp = loss_of(m, s, NULL);
                w[idx] = keep - h;
                double lm = loss_of(m, s, NULL);
                w[idx] = keep;
                d[r] = (lp - lm) / ((double)(keep + h) - (double)(keep - h));
            }
            double fd = (4 * d[1] - d[0]) / 3;
            double an = g[idx], err_abs = fabs(fd - an);
            double tol = 2e-4 + 2e-2 * fabs(an);
            n_checked++;
            if (err_abs > worst) worst = err_abs;
            if (!(err_abs <= tol)) {
                bad++;
                fprintf(stderr, "FD %s %s[%zu]: analytic %.6g finite-difference %.6g\n", what,
                        t->name, pick[k], an, fd);
            }
        }
    }
    CHECK(bad == 0 && n_checked > 0, "%s: %d of %d gradient elements disagree with finite differences",
          what, bad, n_checked);
    printf("%s: %d elements, worst |fd - analytic| %.2e\n", what, n_checked, worst);
}

static void test_losses(void) {
    /* one pair, chosen better by 2 nats: loss = -log σ(β·2) */
    int32_t tok[6] = {1, 2, 3, 1, 2, 3}, tgt[6] = {-1, 3, -1, -1, 3, -1};
    float logp[6] = {0, -1, 0, 0, -3, 0}, d[6], mg;
    gn_train_batch b = {2, 3, tok, tgt};
    double l = gn_train_loss_arm(&b, logp, 0.5f, 1.0f, d, &mg);
    double want = log1p(exp(-1.0));
    CHECK(fabs(l - want) < 1e-9 && fabs(mg - 2.0f) < 1e-6, "arm loss %g want %g margin %g", l, want,
          (double)mg);
    double sg = 1.0 / (1.0 + exp(1.0)); /* σ(-z) */
    CHECK(fabs(d[1] + 0.5 * sg) < 1e-6 && fabs(d[4] - 0.5 * sg) < 1e-6 && d[0] == 0 && d[2] == 0,
          "arm dlogp %g %g", (double)d[1], (double)d[4]);
    /* large margins stay finite */
    float big[6] = {0, -1, 0, 0, -900, 0};
    l = gn_train_loss_arm(&b, big, 1.0f, 1.0f, d, NULL);
    CHECK(l >= 0 && l < 1e-6 && isfinite(d[1]), "saturated arm loss %g", l);
    l = gn_train_loss_arm(&b, (float[6]){0, -900, 0, 0, -1, 0}, 1.0f, 1.0f, d, NULL);
    CHECK(fabs(l - 899) < 1e-3 && fabs(d[1] + 1) < 1e-6, "reversed arm loss %g", l);
    int nt = 0;
    l = gn_train_loss_lm(&b, logp, 0.5f, d, &nt);
    CHECK(nt == 2 && fabs(l - 2.0) < 1e-9 && fabs(d[1] + 0.25f) < 1e-7 && d[0] == 0, "lm loss %g n %d",
          l, nt);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void test_data(const char *model_dir, const char *tmp) {
    gn_err err = {0};
    gn_tokenizer *tok = gn_tok_load(model_dir, &err);
    CHECK(tok != NULL, "tokenizer: %s", err.msg);
    if (!tok) return;
    char path[700];
    snprintf(path, sizeof path, "%s/pairs.jsonl", tmp);
    write_file(path, "{\"prompt\":\"Hi\",\"chosen\":\"good day\",\"rejected\":\"bad\"}\n\n"
                     "{\"prompt\":\"Yo\",\"chosen\":\"x\"}\n");
    gn_train_data *d = gn_train_data_load(path, GN_DATA_PAIRS, tok, 32, &err);
    CHECK(d == NULL && strstr(err.msg, "pairs.jsonl:3:") && strstr(err.msg, "rejected"),
          "missing field message: %s", err.msg);
    gn_train_data_free(d);
    write_file(path, "{\"prompt\":\"Hi\",\"chosen\":\"good day\",\"rejected\":\"bad\"}\nnot json\n");
    d = gn_train_data_load(path, GN_DATA_PAIRS, tok, 32, &err);
    CHECK(d == NULL && strstr(err.msg, "pairs.jsonl:2:"), "bad JSON message: %s", err.msg);
    gn_train_data_free(d);
    write_file(path, "{\"prompt\":\"Hi\",\"chosen\":\"good day\",\"rejected\":\"bad\"}\n"
                     "{\"prompt\":\"Hello there\",\"chosen\":\"fine\",\"rejected\":\"no\"}\n");
    d = gn_train_data_load(path, GN_DATA_PAIRS, tok, 32, &err);
    CHECK(d && gn_train_data_n_examples(d) == 2 && gn_train_data_seqs_per_example(d) == 2,
          "pairs: %s", err.msg);
    if (d) {
        const gn_train_seq *c = gn_train_data_seq(d, 0, 0), *r = gn_train_data_seq(d, 0, 1);
        int bos = gn_tok_bos(tok), eos = gn_tok_eos(tok);
        CHECK(c->first == r->first && c->tokens[0] == bos && c->tokens[c->len - 1] == eos &&
                  r->tokens[r->len - 1] == eos && !memcmp(c->tokens, r->tokens, (size_t)c->first * 4),
              "pair layout: first %d/%d len %d/%d", c->first, r->first, c->len, r->len);
        int32_t tk[4 * 32], tg[4 * 32];
        int T = 0;
        int n = gn_train_data_batch(d, 7, 0, 2, tk, tg, &T);
        int cnt = 0;
        for (int e = 0; e < 2; e++)
            for (int s = 0; s < 2; s++) cnt += gn_train_data_seq(d, e, s)->len - gn_train_data_seq(d, e, s)->first;
        CHECK(n == cnt && T <= 32, "batch counts %d targets, want %d", n, cnt);
    }
    gn_train_data_free(d);
    gn_tok_free(tok);
}

/* Every allocation of loading, adding LoRA, a forward/backward and the data
 * loader fails once in turn: each failure is an error return, nothing leaks
 * (the sanitizer build's leak checker sees to that), and the next try works. */
static void test_alloc_failures(const char *model_dir, const char *tmp) {
    char path[700];
    snprintf(path, sizeof path, "%s/alloc.jsonl", tmp);
    write_file(path, "{\"prompt\":\"Hi\",\"chosen\":\"good day\",\"rejected\":\"bad\"}\n");
    int failures = 0, done = 0;
    for (long k = 0; k < 100000 && !done; k++) {
        gn_err err = {0};
        gn_alloc_fail_after(k);
        gn_train_model *m = gn_train_model_load(model_dir, 1, &err);
        gn_tokenizer *tok = m ? gn_tok_load(model_dir, &err) : NULL;
        gn_train_data *d = tok ? gn_train_data_load(path, GN_DATA_PAIRS, tok, 32, &err) : NULL;
        int rc = d ? gn_train_model_add_lora(m, 2, 4.0f, 0x7fu, 1, &err) : -1;
        if (!rc) {
            int32_t tk[64], tg[64];
            int T = 0;
            gn_train_data_batch(d, 1, 0, 1, tk, tg, &T);
            gn_train_batch b = {2, T, tk, tg};
            float logp[64], dl[64];
            rc = gn_train_forward(m, &b, logp, &err);
            if (!rc) {
                gn_train_loss_arm(&b, logp, 1.0f, 1.0f, dl, NULL);
                rc = gn_train_backward(m, dl, &err);
            }
        }
        gn_alloc_fail_after(-1);
        if (rc == 0) done = 1;
        else if (err.code == GN_ENOMEM || strstr(err.msg, "memory")) failures++;
        else {
            CHECK(0, "allocation failure %ld gave a non-ENOMEM error: %s", k, err.msg);
            done = 1;
        }
        gn_train_data_free(d);
        gn_tok_free(tok);
        gn_train_model_free(m);
    }
    CHECK(done && failures > 10, "allocation-failure loop: %d failures handled", failures);
}

int main(void) {
    static const char *const archs[] = {"llama", "qwen2", "qwen3", "mistral"};
    char tmp[512], dir[600], what[128];
    tt_tmpdir(tmp, sizeof tmp, "grad");
    test_losses();
    for (size_t a = 0; a < sizeof archs / sizeof archs[0]; a++) {
        snprintf(dir, sizeof dir, "%s/%s", tmp, archs[a]);
        if (tt_make_tiny(archs[a], dir)) {
            CHECK(0, "make %s", archs[a]);
            continue;
        }
        gn_err err = {0};
        gn_train_model *m = gn_train_model_load(dir, 1, &err);
        CHECK(m != NULL, "load %s: %s", archs[a], err.msg);
        if (!m) continue;
        const int V = gn_train_model_cfg(m)->n_vocab;
        batch_set s;
        for (int arm = 0; arm < 2; arm++) {
            make_batch(&s, arm, V);
            snprintf(what, sizeof what, "%s %s full", archs[a], arm ? "arm" : "lm");
            check_fd(m, &s, what);
        }
        if (a == 0) {
            test_data(dir, tmp);
            test_alloc_failures(dir, tmp);
        }
        /* LoRA on every projection; B made non-zero so both A and B get gradients */
        int rc = gn_train_model_add_lora(m, 3, 6.0f, 0x7fu, 9, &err);
        CHECK(rc == 0, "add lora: %s", err.msg);
        if (!rc) {
            float *w = gn_train_params(m);
            for (int i = 0; i < gn_train_n_tensors(m); i++) {
                const gn_train_tensor *t = gn_train_tensor_at(m, i);
                if (strstr(t->name, "lora_B"))
                    for (size_t k = 0; k < (size_t)t->rows * (size_t)t->cols; k++)
                        w[t->offset + k] = ((float)(rnd() % 2001) - 1000.0f) * 1e-4f;
            }
            for (int arm = 0; arm < 2; arm++) {
                make_batch(&s, arm, V);
                snprintf(what, sizeof what, "%s %s lora", archs[a], arm ? "arm" : "lm");
                check_fd(m, &s, what);
            }
        }
        gn_train_model_free(m);
    }
    tt_rmrf(tmp);
    GN_TEST_MAIN_END();
}
