/* test_golden.c — the engine's log-probs against an independent reference.
 *
 * tests/golden/fixtures/manifest.json lists tiny models (every architecture,
 * BF16 / F16 / F32) by their model-maker parameters, with token-id prompts;
 * <case>.bin holds the log-probs that tests/golden/golden.py computed for
 * every prompt position with its own PyTorch float32 implementation of the
 * Hugging Face models. This test regenerates the same model directories with
 * gn_make_model (deterministic, fixed seeds) in a temporary directory, runs
 * both prompts as one batched step on the fast "cpu" table (at every SIMD
 * level this CPU has: avx512, avx2, scalar) and on the reference "cpu-ref"
 * table, and requires
 *     |got - want| <= atol + rtol * |want|     (atol 5e-5, rtol 1e-5 from the manifest;
 *                                              observed differences are below 1e-5)
 * for every log-prob, printing the worst element on failure and the largest
 * difference of every case. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_cpu.h"
#include "gn_test.h"
#include "model.h"
#include "model_maker.h"
#include "runner.h"

static char g_root[256];

static int read_file(const char *path, void *buf, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t got = fread(buf, 1, n, f);
    int extra = fgetc(f);
    fclose(f);
    return got == n && extra == EOF ? 0 : -1;
}

static int get_int(json_t *o, const char *k, int def) {
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? (int)json_integer_value(v) : def;
}

/* The maker parameters of a case, as golden.py passed them to genarm-make-model. */
static int case_params(json_t *c, gn_make_model_params *p) {
    json_t *mk = json_object_get(c, "maker");
    const char *dt = json_string_value(json_object_get(c, "dtype"));
    if (!json_is_object(mk) || !dt) return -1;
    *p = gn_make_model_default_params();
    p->arch = json_string_value(json_object_get(c, "arch"));
    p->dtype = !strcmp(dt, "bf16") ? GN_BF16 : !strcmp(dt, "f16") ? GN_F16 : GN_F32;
    p->dim = get_int(mk, "dim", p->dim);
    p->n_layers = get_int(mk, "layers", p->n_layers);
    p->n_heads = get_int(mk, "heads", p->n_heads);
    p->n_kv_heads = get_int(mk, "kv_heads", p->n_kv_heads);
    p->ffn_dim = get_int(mk, "ffn", p->ffn_dim);
    p->tok_merges = get_int(mk, "merges", p->tok_merges);
    p->seed = (uint64_t)get_int(mk, "seed", (int)p->seed);
    p->n_vocab = get_int(mk, "vocab", p->n_vocab);
    p->sliding_window = get_int(mk, "sliding_window", p->sliding_window);
    p->head_dim = get_int(mk, "head_dim", p->head_dim);
    json_t *sd = json_object_get(mk, "std");
    if (json_is_number(sd)) p->init_std = (float)json_number_value(sd);
    return p->arch ? 0 : -1;
}

static void run_case(json_t *c, float atol, float rtol, const char *fixdir, gn_backend *const *bes,
                     const char *const *labels, int n_bes) {
    const char *name = json_string_value(json_object_get(c, "name"));
    const char *file = json_string_value(json_object_get(c, "file"));
    json_t *prompts = json_object_get(c, "prompts");
    int n_out = get_int(c, "n_out", 0);
    gn_make_model_params mp;
    if (!name || !file || !json_is_array(prompts) || n_out <= 0 || case_params(c, &mp) != 0) {
        CHECK(0, "malformed manifest case");
        return;
    }
    /* Prompts and expected rows. */
    size_t np = json_array_size(prompts), rows = 0;
    int32_t *ids[8];
    int lens[8];
    if (np == 0 || np > 8) {
        CHECK(0, "%s: %zu prompts", name, np);
        return;
    }
    for (size_t i = 0; i < np; i++) {
        json_t *pr = json_array_get(prompts, i);
        lens[i] = (int)json_array_size(pr);
        ids[i] = malloc(sizeof(int32_t) * (size_t)(lens[i] ? lens[i] : 1));
        for (int t = 0; t < lens[i]; t++) ids[i][t] = (int32_t)json_integer_value(json_array_get(pr, (size_t)t));
        rows += (size_t)lens[i];
    }
    float *want = malloc(sizeof(float) * rows * (size_t)n_out), *got = malloc(sizeof(float) * rows * (size_t)n_out);
    char path[700];
    snprintf(path, sizeof path, "%s/%s", fixdir, file);
    CHECK(read_file(path, want, sizeof(float) * rows * (size_t)n_out) == 0, "%s: fixture %s missing or of the wrong size",
          name, path);

    char dir[600];
    snprintf(dir, sizeof dir, "%s/%s", g_root, name);
    gn_err e = {0};
    int rc = gn_make_model(&mp, dir, &e);
    CHECK(rc == 0, "%s: make model: %s", name, e.msg);
    for (int b = 0; b < n_bes && rc == 0; b++) {
        gn_model_params lp = gn_model_default_params();
        gn_model *m = gn_model_load(dir, bes[b], &lp, &e);
        CHECK(m != NULL, "%s: load: %s", name, e.msg);
        if (!m) continue;
        CHECK(gn_model_n_out(m) == n_out, "%s: n_out %d, fixture %d", name, gn_model_n_out(m), n_out);
        gn_runner_params rp = gn_runner_default_params();
        gn_runner *r = gn_runner_create(m, &rp, &e);
        CHECK(r != NULL, "%s: runner: %s", name, e.msg);
        if (r && gn_model_n_out(m) == n_out) {
            gn_seq *seqs[8];
            gn_step_item items[8];
            for (size_t i = 0; i < np; i++) {
                seqs[i] = gn_seq_create(r, &e);
                items[i] = (gn_step_item){seqs[i], ids[i], lens[i], 1};
            }
            rc = gn_runner_step(r, items, (int)np, got, &e);
            CHECK(rc == 0, "%s: step: %s", name, e.msg);
            if (rc == 0) {
                double worst = 0;
                for (size_t i = 0; i < rows * (size_t)n_out; i++) {
                    double d = fabs((double)got[i] - (double)want[i]);
                    if (d > worst) worst = d;
                }
                char what[160];
                snprintf(what, sizeof what, "golden %s on %s", name, labels[b]);
                gn_t_close(what, got, want, rows * (size_t)n_out, atol, rtol);
                printf("%-14s %-11s max |diff| %.2e over %zu log-probs\n", name, labels[b], worst,
                       rows * (size_t)n_out);
            }
            rc = 0;
            for (size_t i = 0; i < np; i++) gn_seq_free(seqs[i]);
        }
        gn_runner_free(r);
        gn_model_free(m);
    }
    for (size_t i = 0; i < np; i++) free(ids[i]);
    free(want);
    free(got);
}

int main(void) {
    char fixdir[512], man[600];
    gn_t_src(fixdir, sizeof fixdir, "tests/golden/fixtures");
    snprintf(man, sizeof man, "%s/manifest.json", fixdir);
    json_error_t je;
    json_t *root = json_load_file(man, 0, &je);
    CHECK(root != NULL, "%s: %s (line %d)", man, je.text, je.line);
    if (!root) GN_TEST_MAIN_END();
    json_t *cases = json_object_get(root, "cases");
    json_t *ja = json_object_get(root, "atol"), *jr = json_object_get(root, "rtol");
    CHECK(json_is_array(cases) && json_array_size(cases) >= 10 && json_is_number(ja) && json_is_number(jr),
          "manifest: cases / atol / rtol");
    float atol = (float)json_number_value(ja), rtol = (float)json_number_value(jr);
    CHECK(atol > 0 && atol <= 1e-4f && rtol <= 1e-5f, "tolerances must stay tight (atol %g rtol %g)", atol, rtol);

    snprintf(g_root, sizeof g_root, "/tmp/gn_test_golden_XXXXXX");
    if (!mkdtemp(g_root)) {
        perror("mkdtemp");
        return 1;
    }
    gn_err e = {0};
    gn_backend_params bp = gn_backend_default_params();
    bp.n_threads = 2;
    /* The fast table at each SIMD level the CPU has, then the reference. */
    gn_backend *bes[4];
    const char *labels[4];
    int n_bes = 0, ok = 1;
    for (int isa = (int)gn_cpu_isa_detect(); isa >= GN_CPU_SCALAR; isa--) {
        gn_backend *be = gn_backend_create("cpu", &bp, &e);
        ok &= be != NULL && gn_backend_cpu_set_isa(be, (gn_cpu_isa)isa) == 0;
        if (!be) break;
        static char names[3][16];
        snprintf(names[isa], sizeof names[isa], "cpu/%s", gn_cpu_isa_name((gn_cpu_isa)isa));
        labels[n_bes] = names[isa];
        bes[n_bes++] = be;
    }
    gn_backend *ref = gn_backend_create("cpu-ref", &bp, &e);
    ok &= ref != NULL;
    if (ref) {
        labels[n_bes] = "cpu-ref";
        bes[n_bes++] = ref;
    }
    CHECK(ok, "backends: %s", e.msg);
    if (ok)
        for (size_t i = 0; i < json_array_size(cases); i++)
            run_case(json_array_get(cases, i), atol, rtol, fixdir, bes, labels, n_bes);
    for (int b = 0; b < n_bes; b++) gn_backend_free(bes[b]);
    json_decref(root);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
    GN_TEST_MAIN_END();
}
