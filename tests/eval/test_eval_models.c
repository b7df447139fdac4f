/* Smoke test of the committed demo models (models/, made by
 * scripts/train_demo.sh): the base and both ARMs load with their tokenizer,
 * share it, and generate; guidance by arm-positive changes the greedy
 * continuation. (How well the ARMs steer is measured by eval/run_eval.sh.) */
#include <string.h>

#include "backend.h"
#include "generate.h"
#include "gn_test.h"
#include "model.h"
#include "scorers.h"
#include "tokenizer.h"

static const char *const k_names[3] = {"models/base", "models/arm-positive", "models/arm-concise"};

int main(void) {
    gn_err err = {0};
    char path[3][1024];
    gn_backend_params bp = gn_backend_default_params();
    bp.n_threads = 1;
    gn_backend *be = gn_backend_create("cpu", &bp, &err);
    CHECK(be != NULL, "backend: %s", err.msg);
    if (!be) GN_TEST_MAIN_END();
    gn_model *m[3] = {0};
    gn_model_params mp = gn_model_default_params();
    mp.load_tokenizer = 1;
    for (int i = 0; i < 3; i++) {
        m[i] = gn_model_load(gn_t_src(path[i], sizeof path[i], k_names[i]), be, &mp, &err);
        CHECK(m[i] != NULL, "load %s: %s", k_names[i], err.msg);
    }
    if (!m[0] || !m[1] || !m[2]) goto out;
    CHECK(gn_model_n_out(m[0]) == gn_model_n_out(m[1]) && gn_model_n_out(m[0]) == gn_model_n_out(m[2]),
          "vocab sizes differ");
    CHECK(gn_model_weight_bytes(m[0]) < (size_t)10 << 20, "base weights %zu bytes", gn_model_weight_bytes(m[0]));

    gn_guidance prof = gn_guidance_default();
    prof.n_arms = 2;
    gn_generator *g = gn_generator_create(m[0], m + 1, 2, &prof, NULL, &err);
    CHECK(g != NULL, "generator: %s", err.msg);
    if (!g) goto out;
    gn_guidance none = prof, pos = prof;
    none.weights[0] = none.weights[1] = 0.0f;
    pos.weights[1] = 0.0f;
    pos.beta = 0.25f;
    gn_gen_request req[2];
    gn_gen_result res[2];
    memset(res, 0, sizeof res);
    for (int i = 0; i < 2; i++) {
        req[i] = gn_gen_default_request();
        req[i].prompt = "The meaning of life";
        req[i].max_tokens = 24;
        req[i].ignore_eos = 1;
        req[i].sampling.temperature = 0.0f;
        req[i].guidance = i ? &pos : &none;
    }
    int rc = gn_generate(g, req, 2, res, NULL, &err);
    CHECK(rc == 0, "generate: %s", err.msg);
    if (rc == 0) {
        CHECK(res[0].n_tokens == 24 && res[1].n_tokens == 24, "tokens %d %d", res[0].n_tokens, res[1].n_tokens);
        gn_eval_scores s = gn_eval_score(NULL, res[0].text, res[0].text_len);
        CHECK(s.n_words >= 5, "base continuation has %d words: '%s'", s.n_words, res[0].text);
        CHECK(res[0].text_len != res[1].text_len || memcmp(res[0].text, res[1].text, res[0].text_len),
              "guidance did not change the greedy continuation: '%s'", res[0].text);
        printf("base:   %s\nguided: %s\n", res[0].text, res[1].text);
        gn_gen_result_free(&res[0]);
        gn_gen_result_free(&res[1]);
    }
    gn_generator_free(g);
out:
    for (int i = 0; i < 3; i++) gn_model_free(m[i]);
    gn_backend_free(be);
    GN_TEST_MAIN_END();
}
