/* test_train_ref.c — the trainer's forward log-probs, LM and ARM losses and
 * every parameter gradient against the independent PyTorch float64
 * reference (tests/train/ref_grad.py, fixtures from make_fixtures.sh), on
 * tiny Llama (GQA, untied), Qwen2 (bias, tied), Qwen3 (q/k norm, tied) and
 * Mistral (sliding window 4) models. */
#include <stdint.h>
#include <string.h>

#include "gn_alloc.h"
#include "train_model.h"
#include "train_test_util.h"

static void to_ids(const float *f, int32_t *ids, int n) {
    for (int i = 0; i < n; i++) ids[i] = (int32_t)f[i];
}

/* Runs one loss (lm or arm) and compares with the fixture. */
static void check_loss(gn_train_model *m, const gn_st_file *fx, const char *arch, int arm) {
    const int B = arm ? 4 : 3, T = arm ? 8 : 9, N = B * T;
    float tf[64], gf[64], want_loss, beta_r = 0, want_logp[64];
    int32_t tok[64], tgt[64];
    if (tt_fixture(fx, arm ? "tokens_arm" : "tokens_lm", tf, (size_t)N) ||
        tt_fixture(fx, arm ? "targets_arm" : "targets_lm", gf, (size_t)N) ||
        tt_fixture(fx, arm ? "loss_arm" : "loss_lm", &want_loss, 1) ||
        tt_fixture(fx, "beta_r", &beta_r, 1) || (!arm && tt_fixture(fx, "logp_lm", want_logp, (size_t)N))) {
        CHECK(0, "%s: fixture incomplete", arch);
        return;
    }
    to_ids(tf, tok, N);
    to_ids(gf, tgt, N);
    gn_train_batch b = {B, T, tok, tgt};
    float logp[64], dlogp[64];
    gn_err err = {0};
    gn_train_zero_grads(m);
    int rc = gn_train_forward(m, &b, logp, &err);
    CHECK(rc == 0, "%s forward: %s", arch, err.msg);
    if (rc) return;
    double loss = arm ? gn_train_loss_arm(&b, logp, beta_r, 1.0f, dlogp, NULL)
                      : gn_train_loss_lm(&b, logp, 1.0f, dlogp, NULL);
    CHECK(fabs(loss - want_loss) <= 2e-5 * fabs(want_loss) + 1e-6, "%s %s loss %.7f want %.7f", arch,
          arm ? "arm" : "lm", loss, (double)want_loss);
    char what[256];
    if (!arm) {
        snprintf(what, sizeof what, "%s logp", arch);
        gn_t_close(what, logp, want_logp, (size_t)N, 2e-5f, 1e-5f);
    }
    rc = gn_train_backward(m, dlogp, &err);
    CHECK(rc == 0, "%s backward: %s", arch, err.msg);
    const float *g = gn_train_grads(m);
    for (int i = 0; i < gn_train_n_tensors(m); i++) {
        const gn_train_tensor *t = gn_train_tensor_at(m, i);
        size_t n = (size_t)t->rows * (size_t)t->cols;
        float *want = gn_malloc(n * sizeof *want);
        char name[200];
        snprintf(name, sizeof name, "grad_%s.%s", arm ? "arm" : "lm", t->name);
        if (!want || tt_fixture(fx, name, want, n)) {
            CHECK(0, "%s: no reference for %s", arch, name);
            gn_free(want);
            continue;
        }
        /* scale the absolute tolerance to the tensor's largest gradient */
        float mx = 0;
        for (size_t k = 0; k < n; k++)
            if (fabsf(want[k]) > mx) mx = fabsf(want[k]);
        snprintf(what, sizeof what, "%s %s", arch, name);
        gn_t_close(what, g + t->offset, want, n, 1e-4f * mx + 1e-7f, 1e-3f);
        gn_free(want);
    }
}

int main(void) {
    static const char *const archs[] = {"llama", "qwen2", "qwen3", "mistral"};
    char tmp[512], dir[600], fxp[700];
    tt_tmpdir(tmp, sizeof tmp, "ref");
    for (size_t a = 0; a < sizeof archs / sizeof archs[0]; a++) {
        snprintf(dir, sizeof dir, "%s/%s", tmp, archs[a]);
        if (tt_make_tiny(archs[a], dir)) {
            CHECK(0, "make %s", archs[a]);
            continue;
        }
        gn_err err = {0};
        gn_train_model *m = gn_train_model_load(dir, 2, &err);
        CHECK(m != NULL, "load %s: %s", archs[a], err.msg);
        char rel[128];
        snprintf(rel, sizeof rel, "tests/train/fixtures/ref_%s.safetensors", archs[a]);
        gn_st_file *fx = gn_st_open(gn_t_src(fxp, sizeof fxp, rel), &err);
        CHECK(fx != NULL, "fixture %s: %s", rel, err.msg);
        if (m && fx) {
            check_loss(m, fx, archs[a], 0);
            check_loss(m, fx, archs[a], 1);
        }
        gn_st_close(fx);
        gn_train_model_free(m);
    }
    tt_rmrf(tmp);
    GN_TEST_MAIN_END();
}
