/* test_lora_adapters.c — LoRA adapters kept apart from the weights (lora.h
 * gn_lora_adapter_*, runner.h gn_seq_set_adapter) on tiny models written by
 * the model maker:
 *   1. a sequence with an unmerged adapter == the model loaded with the
 *      adapter merged (gn_model_params.lora_dir), prefill and decode, on
 *      "cpu-ref" and "cpu", within a stated tolerance;
 *   2. one batch mixing sequences without an adapter, with adapter 1 and
 *      with adapter 2 (prefill and decode mixed, different lengths) gives
 *      what each sequence gives stepped alone, and the sequences without an
 *      adapter equal a runner that never saw one: bit for bit on the CPU
 *      backends, within rounding on a GPU (rows_match);
 *   3. refusals: wrong shapes, wrong layer count, another model's adapter,
 *      binding to a sequence that holds tokens;
 *   4. the adapter holds its factors only; loading adapters leaves the model
 *      as it was. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "gn_alloc.h"
#include "gn_half.h"
#include "gn_test.h"
#include "lora.h"
#include "model.h"
#include "model_maker.h"
#include "runner.h"
#include "safetensors.h"

static char g_root[256];
static gn_backend *g_fast, *g_ref;

/* Rows that must match: bit for bit on the CPU backends (batch-invariant).
 * On others within `tol` (absolute and relative): a GPU's batched GEMM is not
 * its GEMV, and with 16-bit weights its cuBLAS path rounds the activations to
 * the weight dtype (test_cuda_model), which these sharp models amplify to a
 * few hundredths of a log-prob. The largest difference seen is kept in
 * g_mixed_worst and printed. */
static double g_mixed_worst;
static int rows_match(const gn_backend *be, float tol, const float *got, const float *want, size_t n) {
    if (be->is_host) return memcmp(got, want, n * sizeof(float)) == 0;
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        if (d > g_mixed_worst) g_mixed_worst = d;
        if (!(d <= tol + tol * fabsf(want[i]))) ok = 0;
    }
    return ok;
}
static double g_worst;

/* Merged vs unmerged: W·x + B'(A·x) against (W + B'A)·x. With F32 weights
 * only the summation order differs (measured: at most 3.4e-6). With BF16
 * weights the merged W + B'A is rounded to BF16 once (relative 2^-9 per
 * element, as large as the model's own quantization), which the unmerged
 * path does not do (measured: up to 0.065 on these sharp init_std 0.15
 * models). The adapters move log-probs by 1..7, checked to exceed 10x atol and
 * 20x the merged/unmerged difference. */
#define ATOL_F32 2e-4f
#define RTOL_F32 1e-4f
#define ATOL_BF16 0.1f
#define RTOL_BF16 0.0f

static uint64_t g_rng = 777;
static uint64_t next_u64(void) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return g_rng >> 11;
}
static int32_t rand_tok(int n_vocab) { return (int32_t)(next_u64() % (uint64_t)n_vocab); }
static float rand_unit(void) { return (float)((double)(next_u64() >> 11) / (double)(1ull << 42) * 2.0 - 1.0); }

typedef struct shape {
    int n_layers, dim, q, kv, ffn;
} shape;

static shape shape_of(const gn_model *m) {
    const gn_model_config *c = gn_model_cfg(m);
    return (shape){c->n_layers, c->dim, c->n_heads * c->head_dim, c->n_kv_heads * c->head_dim, c->ffn_dim};
}

static const char *const k_mod_name[7] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
static const char *const k_mod_path[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                          "self_attn.o_proj",
                                          "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

/* Writes a PEFT adapter for shape sh into dir: modules `targets` (GN_LORA_*
 * bits), rank r, alpha, factors in dtype dt, random with a fixed seed.
 * in_delta is added to every A's column count (a wrong-shape adapter). */
static int write_adapter(const char *dir, shape sh, unsigned targets, int r, float alpha, gn_dtype dt,
                         uint64_t seed, int in_delta) {
    mkdir(dir, 0755);
    char path[600], tl[256] = "";
    for (int m = 0; m < 7; m++)
        if (targets & (1u << m)) {
            if (tl[0]) strcat(tl, ", ");
            strcat(tl, "\"");
            strcat(tl, k_mod_name[m]);
            strcat(tl, "\"");
        }
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f,
            "{\"peft_type\": \"LORA\", \"r\": %d, \"lora_alpha\": %g, \"target_modules\": [%s], "
            "\"bias\": \"none\", \"fan_in_fan_out\": false, \"use_rslora\": false, \"task_type\": "
            "\"CAUSAL_LM\"}\n",
            r, (double)alpha, tl);
    fclose(f);
    uint64_t save = g_rng;
    g_rng = seed;
    gn_st_write_tensor t[7 * 2 * 8];
    char names[7 * 2 * 8][128];
    void *bufs[7 * 2 * 8];
    int n = 0;
    for (int l = 0; l < sh.n_layers && l < 8; l++)
        for (int m = 0; m < 7; m++) {
            if (!(targets & (1u << m))) continue;
            int64_t in = m == 3 ? sh.q : m == 6 ? sh.ffn : sh.dim;
            int64_t out = m == 0 ? sh.q : m == 1 || m == 2 ? sh.kv : m == 3 || m == 6 ? sh.dim : sh.ffn;
            in += in_delta;
            for (int ab = 0; ab < 2; ab++, n++) {
                snprintf(names[n], sizeof names[n], "base_model.model.model.layers.%d.%s.lora_%c.weight", l,
                         k_mod_path[m], ab ? 'B' : 'A');
                int64_t rows = ab ? out : r, cols = ab ? r : in;
                size_t numel = (size_t)(rows * cols);
                bufs[n] = gn_malloc(numel * gn_dtype_size(dt));
                /* A ~ U(-1, 1)/sqrt(in); B large enough that the adapter moves
                 * the log-probs well beyond the tolerances. */
                float sc = ab ? 0.25f : 1.0f / sqrtf((float)in);
                for (size_t i = 0; i < numel; i++) {
                    float v = sc * rand_unit();
                    if (dt == GN_F32)
                        ((float *)bufs[n])[i] = v;
                    else
                        ((uint16_t *)bufs[n])[i] = dt == GN_BF16 ? gn_f32_to_bf16(v) : gn_f32_to_f16(v);
                }
                t[n] = (gn_st_write_tensor){.name = names[n], .dtype = dt, .n_dims = 2, .shape = {rows, cols},
                                            .data = bufs[n]};
            }
        }
    g_rng = save;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    gn_err e = {0};
    int rc = gn_st_write(path, t, n, NULL, &e);
    for (int i = 0; i < n; i++) gn_free(bufs[i]);
    CHECK(rc == 0, "write adapter %s: %s", dir, e.msg);
    return rc;
}

typedef struct model_case {
    const char *name, *arch;
    gn_dtype dt;
    int n_heads, n_kv_heads;
} model_case;

static int make_model(const model_case *mc, char *dir, size_t cap) {
    snprintf(dir, cap, "%s/%s", g_root, mc->name);
    char lora[600];
    snprintf(lora, sizeof lora, "%s/%s_maker_lora", g_root, mc->name);
    gn_make_model_params p = gn_make_model_default_params();
    p.arch = mc->arch;
    p.dtype = mc->dt;
    p.init_std = 0.15f;
    p.n_heads = mc->n_heads;
    p.n_kv_heads = mc->n_kv_heads;
    p.lora_out = lora; /* q/k/v, r 8, alpha 16, the maker's own writer */
    gn_err e = {0};
    int rc = gn_make_model(&p, dir, &e);
    CHECK(rc == 0, "make %s: %s", mc->name, e.msg);
    return rc;
}

static gn_model *load(const char *dir, gn_backend *be, const char *lora_dir) {
    gn_model_params mp = gn_model_default_params();
    mp.lora_dir = lora_dir;
    gn_err e = {0};
    gn_model *m = gn_model_load(dir, be, &mp, &e);
    CHECK(m != NULL, "load %s (lora %s): %s", dir, lora_dir ? lora_dir : "-", e.msg);
    return m;
}

static gn_runner *runner(gn_model *m) {
    gn_err e = {0};
    gn_runner_params rp = gn_runner_default_params();
    rp.max_seqs = 8;
    rp.max_ctx = 128;
    gn_runner *r = gn_runner_create(m, &rp, &e);
    CHECK(r != NULL, "runner: %s", e.msg);
    return r;
}

/* ---- 1. unmerged == merged ------------------------------------------------------ */

static void test_merged(const char *model_dir, const char *lora_dir, gn_backend *be, float atol, float rtol,
                        const char *what) {
    gn_model *base = load(model_dir, be, NULL), *merged = load(model_dir, be, lora_dir);
    if (!base || !merged) goto out;
    gn_err e = {0};
    gn_lora_adapter *ad = gn_lora_adapter_load(base, lora_dir, &e);
    CHECK(ad != NULL, "%s: adapter load: %s", what, e.msg);
    gn_runner *ra = runner(base), *rm = runner(merged), *rb = runner(base);
    if (!ad || !ra || !rm || !rb) goto out2;
    int no = gn_model_n_out(base), nv = gn_model_cfg(base)->n_vocab;
    enum { NP = 9, ND = 4 };
    int32_t toks[NP + ND];
    for (int i = 0; i < NP + ND; i++) toks[i] = rand_tok(nv);
    float *oa = gn_malloc(sizeof(float) * NP * (size_t)no), *om = gn_malloc(sizeof(float) * NP * (size_t)no),
          *ob = gn_malloc(sizeof(float) * NP * (size_t)no);
    gn_seq *sa = gn_seq_create(ra, &e), *sm = gn_seq_create(rm, &e), *sb = gn_seq_create(rb, &e);
    CHECK(gn_seq_set_adapter(sa, ad, &e) == 0 && gn_seq_adapter(sa) == ad, "%s: set_adapter: %s", what, e.msg);
    CHECK(gn_seq_adapter(sb) == NULL, "%s: no adapter by default", what);
    double moved = 0;
    for (int step = 0; step <= ND; step++) {
        const int32_t *tk = step ? toks + NP + step - 1 : toks;
        int nt = step ? 1 : NP;
        gn_step_item ia = {sa, tk, nt, 1}, im = {sm, tk, nt, 1}, ib = {sb, tk, nt, 1};
        int rc = gn_runner_step(ra, &ia, 1, oa, &e);
        rc = rc ? rc : gn_runner_step(rm, &im, 1, om, &e);
        rc = rc ? rc : gn_runner_step(rb, &ib, 1, ob, &e);
        CHECK(rc == 0, "%s step %d: %s", what, step, e.msg);
        char lbl[200];
        snprintf(lbl, sizeof lbl, "%s: unmerged vs merged, %s", what, step ? "decode" : "prefill");
        gn_t_close(lbl, oa, om, (size_t)nt * (size_t)no, atol, rtol);
        for (size_t i = 0; i < (size_t)nt * (size_t)no; i++) {
            double d = fabs((double)oa[i] - (double)ob[i]);
            if (d > moved) moved = d;
            d = fabs((double)oa[i] - (double)om[i]);
            if (d > g_worst) g_worst = d;
        }
    }
    /* A prefill cut into chunks of 4 tokens (adapter rows split across
     * chunks) == one chunk. */
    {
        gn_runner_params rp = gn_runner_default_params();
        rp.max_seqs = 8;
        rp.max_ctx = 128;
        rp.max_batch_tokens = 4;
        gn_runner *rc4 = gn_runner_create(base, &rp, &e);
        gn_seq *s1 = gn_seq_create(ra, &e), *s4 = rc4 ? gn_seq_create(rc4, &e) : NULL;
        CHECK(rc4 && s1 && s4 && gn_seq_set_adapter(s1, ad, &e) == 0 && gn_seq_set_adapter(s4, ad, &e) == 0,
              "%s: chunked runner: %s", what, e.msg);
        if (rc4 && s1 && s4) {
            gn_step_item i1 = {s1, toks, NP, 1}, i4 = {s4, toks, NP, 1};
            CHECK(gn_runner_step(ra, &i1, 1, oa, &e) == 0 && gn_runner_step(rc4, &i4, 1, om, &e) == 0,
                  "%s: chunked steps: %s", what, e.msg);
            char lbl[200];
            snprintf(lbl, sizeof lbl, "%s: prefill in chunks of 4 vs one chunk", what);
            /* One order of operations per output on the CPU backends: only
             * float noise; a GPU rounds activations as in test_mixed. */
            gn_t_close(lbl, om, oa, (size_t)NP * (size_t)no, be->is_host ? ATOL_F32 : atol,
                       be->is_host ? RTOL_F32 : rtol);
        }
        gn_seq_free(s1);
        gn_seq_free(s4);
        gn_runner_free(rc4);
    }
    /* The adapter really changes the output (far beyond the tolerance). */
    CHECK(moved > 10 * atol && moved > 20 * g_worst, "%s: adapter moves log-probs by %g only (merged differs by %g)",
          what, moved, g_worst);
    if (getenv("GN_TEST_VERBOSE"))
        printf("%s: max |unmerged - merged| %.3g, adapter effect %.3g\n", what, g_worst, moved);
    g_worst = 0;
    gn_seq_free(sa);
    gn_seq_free(sm);
    gn_seq_free(sb);
    gn_free(oa);
    gn_free(om);
    gn_free(ob);
out2:
    gn_runner_free(ra);
    gn_runner_free(rm);
    gn_runner_free(rb);
    gn_lora_adapter_free(ad);
out:
    gn_model_free(base);
    gn_model_free(merged);
}

/* ---- 2. mixed batch == alone ---------------------------------------------------- */

enum { NSEQ = 6, NSTEP = 3, MAXT = 16 };

static void test_mixed(const char *model_dir, const char *lora1, const char *lora2, gn_backend *be,
                       float tol, const char *what) {
    gn_model *m = load(model_dir, be, NULL), *m_plain = load(model_dir, be, NULL);
    if (!m || !m_plain) goto out;
    gn_err e = {0};
    size_t wbytes = gn_model_weight_bytes(m);
    gn_lora_adapter *a1 = gn_lora_adapter_load(m, lora1, &e);
    CHECK(a1 != NULL, "%s: adapter 1: %s", what, e.msg);
    gn_lora_adapter *a2 = gn_lora_adapter_load(m, lora2, &e);
    CHECK(a2 != NULL, "%s: adapter 2: %s", what, e.msg);
    CHECK(gn_model_weight_bytes(m) == wbytes, "%s: loading adapters changed the model's weight bytes", what);
    gn_runner *rb = runner(m), *ra = runner(m), *rp = runner(m_plain);
    if (!a1 || !a2 || !rb || !ra || !rp) goto out2;
    int no = gn_model_n_out(m), nv = gn_model_cfg(m)->n_vocab;
    /* Two neighbours on adapter 1 (one segment of rows), one apart. */
    const gn_lora_adapter *ads[NSEQ] = {NULL, a1, a1, a2, NULL, a1};
    /* Tokens per step per sequence: prefill and decode mixed, all lengths different. */
    static const int nt[NSTEP][NSEQ] = {{7, 5, 11, 3, 1, 2}, {1, 4, 1, 1, 6, 1}, {1, 1, 1, 1, 1, 1}};
    int32_t toks[NSEQ][NSTEP * MAXT];
    for (int s = 0; s < NSEQ; s++)
        for (int t = 0; t < NSTEP * MAXT; t++) toks[s][t] = rand_tok(nv);
    gn_seq *sb[NSEQ], *sa[NSEQ], *sp[NSEQ];
    for (int s = 0; s < NSEQ; s++) {
        sb[s] = gn_seq_create(rb, &e);
        sa[s] = gn_seq_create(ra, &e);
        sp[s] = gn_seq_create(rp, &e);
        CHECK(gn_seq_set_adapter(sb[s], ads[s], &e) == 0 && gn_seq_set_adapter(sa[s], ads[s], &e) == 0,
              "%s: set_adapter: %s", what, e.msg);
    }
    size_t cap = (size_t)NSEQ * MAXT * (size_t)no;
    float *ob = gn_malloc(sizeof(float) * cap), *oa = gn_malloc(sizeof(float) * cap),
          *op = gn_malloc(sizeof(float) * cap);
    int off[NSEQ] = {0};
    for (int step = 0; step < NSTEP; step++) {
        gn_step_item items[NSEQ];
        for (int s = 0; s < NSEQ; s++) items[s] = (gn_step_item){sb[s], toks[s] + off[s], nt[step][s], s % 2};
        int rc = gn_runner_step(rb, items, NSEQ, ob, &e);
        CHECK(rc == 0, "%s: batched step %d: %s", what, step, e.msg);
        size_t row = 0;
        for (int s = 0; s < NSEQ; s++) {
            gn_step_item one = {sa[s], toks[s] + off[s], nt[step][s], s % 2};
            int rows = gn_runner_step_rows(&one, 1);
            rc = gn_runner_step(ra, &one, 1, oa, &e);
            CHECK(rc == 0, "%s: alone step %d seq %d: %s", what, step, s, e.msg);
            size_t nf = (size_t)rows * (size_t)no;
            CHECK(rows_match(be, tol, ob + row * (size_t)no, oa, nf), "%s: step %d seq %d (adapter %d): batched != alone",
                  what, step, s, ads[s] == a1 ? 1 : ads[s] == a2 ? 2 : 0);
            if (!ads[s]) {
                one.seq = sp[s];
                rc = gn_runner_step(rp, &one, 1, op, &e);
                CHECK(rc == 0 && rows_match(be, tol, ob + row * (size_t)no, op, nf),
                      "%s: step %d seq %d: no-adapter sequence differs from a runner without adapters", what, step,
                      s);
            }
            row += (size_t)rows;
            off[s] += nt[step][s];
        }
    }
    /* Adapter 1 and adapter 2 on the same tokens differ. */
    {
        gn_seq *x1 = gn_seq_create(ra, &e), *x2 = gn_seq_create(ra, &e);
        gn_seq_set_adapter(x1, a1, &e);
        gn_seq_set_adapter(x2, a2, &e);
        gn_step_item it[2] = {{x1, toks[0], 4, 0}, {x2, toks[0], 4, 0}};
        CHECK(gn_runner_step(ra, it, 2, oa, &e) == 0, "%s: two adapters: %s", what, e.msg);
        CHECK(memcmp(oa, oa + no, sizeof(float) * (size_t)no) != 0, "%s: adapters 1 and 2 give the same", what);
        gn_seq_free(x1);
        gn_seq_free(x2);
    }
    for (int s = 0; s < NSEQ; s++) {
        gn_seq_free(sb[s]);
        gn_seq_free(sa[s]);
        gn_seq_free(sp[s]);
    }
    gn_free(ob);
    gn_free(oa);
    gn_free(op);
out2:
    gn_runner_free(rb);
    gn_runner_free(ra);
    gn_runner_free(rp);
    gn_lora_adapter_free(a1);
    gn_lora_adapter_free(a2);
out:
    gn_model_free(m);
    gn_model_free(m_plain);
}

/* ---- 3. refusals, 4. memory ------------------------------------------------------ */

static void test_refusals(const char *model_dir, const char *other_dir, shape sh) {
    gn_model *m = load(model_dir, g_fast, NULL), *other = load(other_dir, g_fast, NULL);
    if (!m || !other) goto out;
    gn_err e = {0};
    char dir[600];
    /* Shapes of another model: A has the wrong number of columns. */
    snprintf(dir, sizeof dir, "%s/bad_shape", g_root);
    write_adapter(dir, sh, GN_LORA_V | GN_LORA_O, 4, 8, GN_F32, 5, 16);
    CHECK(gn_lora_adapter_load(m, dir, &e) == NULL && e.code == GN_EMISMATCH &&
              strstr(e.msg, "model.layers.0.self_attn.v_proj"),
          "wrong shapes: %d %s", e.code, e.msg);
    /* More layers than the model has. */
    snprintf(dir, sizeof dir, "%s/bad_layers", g_root);
    shape deeper = sh;
    deeper.n_layers = sh.n_layers + 1;
    write_adapter(dir, deeper, GN_LORA_Q, 4, 8, GN_F32, 6, 0);
    e = (gn_err){0};
    CHECK(gn_lora_adapter_load(m, dir, &e) == NULL && e.code == GN_EMISMATCH && strstr(e.msg, "q_proj"),
          "extra layer: %d %s", e.code, e.msg);
    CHECK(gn_lora_adapter_load(m, "/nonexistent/adapter", &e) == NULL && e.code < 0, "missing dir");

    /* Memory: the factors only, F32; the model does not grow. */
    snprintf(dir, sizeof dir, "%s/mem_qkv", g_root);
    write_adapter(dir, sh, GN_LORA_Q | GN_LORA_K | GN_LORA_V, 8, 16, GN_BF16, 7, 0);
    size_t wb = gn_model_weight_bytes(m);
    gn_lora_adapter *a = gn_lora_adapter_load(m, dir, &e), *b = gn_lora_adapter_load(m, dir, &e);
    CHECK(a && b, "mem adapter: %s", e.msg);
    if (a && b) {
        size_t want = (size_t)sh.n_layers * 4u * 8u * ((size_t)sh.dim * 3 + (size_t)sh.q + 2 * (size_t)sh.kv);
        CHECK(gn_lora_adapter_bytes(a) == want && gn_lora_adapter_bytes(b) == want, "adapter bytes %zu, want %zu",
              gn_lora_adapter_bytes(a), want);
        CHECK(gn_lora_adapter_bytes(a) * 20 < wb, "adapter %zu bytes vs model %zu", gn_lora_adapter_bytes(a), wb);
        CHECK(gn_model_weight_bytes(m) == wb, "model grew: %zu -> %zu", wb, gn_model_weight_bytes(m));
        const gn_lora_config *c = gn_lora_adapter_cfg(a);
        CHECK(c->r == 8 && c->scale == 2.0f && c->targets == (GN_LORA_Q | GN_LORA_K | GN_LORA_V), "cfg");
        CHECK(gn_lora_adapter_bytes(NULL) == 0, "bytes(NULL)");

        gn_runner *r = runner(m), *ro = runner(other);
        if (r && ro) {
            gn_seq *s = gn_seq_create(r, &e), *so = gn_seq_create(ro, &e);
            /* Another model's adapter. */
            e = (gn_err){0};
            CHECK(gn_seq_set_adapter(so, a, &e) == GN_EMISMATCH && gn_seq_adapter(so) == NULL,
                  "other model: %d %s", e.code, e.msg);
            /* A sequence holding tokens. */
            int32_t t[3] = {1, 2, 3};
            float *out = gn_malloc(sizeof(float) * (size_t)gn_model_n_out(m));
            gn_step_item it = {s, t, 3, 0};
            CHECK(gn_runner_step(r, &it, 1, out, &e) == 0, "step: %s", e.msg);
            e = (gn_err){0};
            CHECK(gn_seq_set_adapter(s, a, &e) == GN_EINVAL && gn_seq_adapter(s) == NULL, "holds tokens: %d %s",
                  e.code, e.msg);
            /* After truncating to nothing it may take one, and unbind with NULL. */
            gn_seq_truncate(s, 0);
            CHECK(gn_seq_set_adapter(s, b, &e) == 0 && gn_seq_adapter(s) == b, "after truncate: %s", e.msg);
            CHECK(gn_seq_set_adapter(s, NULL, &e) == 0 && gn_seq_adapter(s) == NULL, "unbind: %s", e.msg);
            gn_free(out);
            gn_seq_free(s);
            gn_seq_free(so);
        }
        gn_runner_free(r);
        gn_runner_free(ro);
    }
    gn_lora_adapter_free(a);
    gn_lora_adapter_free(b);
    gn_lora_adapter_free(NULL);
out:
    gn_model_free(m);
    gn_model_free(other);
}

/* argv[1]: the backend to test besides cpu-ref (default "cpu"; tests/gpu runs
 * it with "cuda:0" and it skips, exit 77, where that backend cannot start). */
int main(int argc, char **argv) {
    const char *fast_name = argc > 1 ? argv[1] : "cpu";
    snprintf(g_root, sizeof g_root, "/tmp/gn_test_lora_adapters_XXXXXX");
    if (!mkdtemp(g_root)) {
        perror("mkdtemp");
        return 1;
    }
    gn_err e = {0};
    gn_backend_params bp = gn_backend_default_params();
    bp.n_threads = 2;
    g_fast = gn_backend_create(fast_name, &bp, &e);
    if (!g_fast && argc > 1) {
        rmdir(g_root);
        GN_TEST_SKIP(e.msg);
    }
    g_ref = gn_backend_create("cpu-ref", &bp, &e);
    CHECK(g_fast && g_ref, "backends: %s", e.msg);
    if (!g_fast || !g_ref) GN_TEST_MAIN_END();

    static const model_case models[] = {
        {"llama_bf16", "llama", GN_BF16, 4, 4},  /* multi-head */
        {"llama_f32", "llama", GN_F32, 4, 2},    /* GQA 2:1 */
        {"qwen2_bf16", "qwen2", GN_BF16, 4, 2},  /* q/k/v bias, tied embeddings */
        {"qwen3_f32", "qwen3", GN_F32, 8, 2},    /* q/k norm, GQA 4:1 */
    };
    char dirs[4][512];
    for (int i = 0; i < 4; i++) {
        const model_case *mc = &models[i];
        if (make_model(mc, dirs[i], sizeof dirs[i])) continue;
        gn_model *probe = load(dirs[i], g_ref, NULL);
        if (!probe) continue;
        shape sh = shape_of(probe);
        gn_model_free(probe);
        char maker_qkv[600], qkv[600], all[600], all2[600];
        snprintf(maker_qkv, sizeof maker_qkv, "%s/%s_maker_lora", g_root, mc->name);
        snprintf(qkv, sizeof qkv, "%s/%s_qkv", g_root, mc->name);
        snprintf(all, sizeof all, "%s/%s_all", g_root, mc->name);
        snprintf(all2, sizeof all2, "%s/%s_all2", g_root, mc->name);
        write_adapter(qkv, sh, GN_LORA_Q | GN_LORA_K | GN_LORA_V, 8, 16, mc->dt, 100 + (uint64_t)i, 0);
        write_adapter(all, sh, 0x7f, 8, 16, GN_F32, 200 + (uint64_t)i, 0);
        write_adapter(all2, sh, GN_LORA_K | GN_LORA_O | GN_LORA_DOWN, 4, 4, GN_F16, 300 + (uint64_t)i, 0);
        float atol = mc->dt == GN_F32 ? ATOL_F32 : ATOL_BF16, rtol = mc->dt == GN_F32 ? RTOL_F32 : RTOL_BF16;
        float mtol = mc->dt == GN_F32 ? 2e-3f : ATOL_BF16; /* mixed batch vs alone, off the CPU */
        gn_backend *bes[2] = {g_ref, g_fast};
        for (int b = 0; b < 2; b++) {
            char what[300];
            snprintf(what, sizeof what, "%s/%s/q,k,v", mc->name, bes[b]->name);
            test_merged(dirs[i], qkv, bes[b], atol, rtol, what);
            snprintf(what, sizeof what, "%s/%s/all-linear", mc->name, bes[b]->name);
            test_merged(dirs[i], all, bes[b], atol, rtol, what);
            if (i == 0) {
                snprintf(what, sizeof what, "%s/%s/maker q,k,v", mc->name, bes[b]->name);
                test_merged(dirs[i], maker_qkv, bes[b], atol, rtol, what);
            }
            snprintf(what, sizeof what, "%s/%s mixed", mc->name, bes[b]->name);
            test_mixed(dirs[i], all, all2, bes[b], mtol, what);
            snprintf(what, sizeof what, "%s/%s mixed q,k,v", mc->name, bes[b]->name);
            if (b == 1) test_mixed(dirs[i], qkv, all, bes[b], mtol, what);
            if (!bes[b]->is_host)
                printf("%s/%s: mixed batch vs alone, max |d| %.3g (tolerance %g)\n", mc->name, bes[b]->name,
                       g_mixed_worst, mtol);
            g_mixed_worst = 0;
        }
        if (i == 1) test_refusals(dirs[1], dirs[0], sh);
    }
    gn_backend_free(g_fast);
    gn_backend_free(g_ref);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
    GN_TEST_MAIN_END();
}
