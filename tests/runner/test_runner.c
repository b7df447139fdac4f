/* test_runner.c — the batched forward pass (engine/runner.h) on tiny models
 * written by the model maker: batched == one at a time (prefill of prompts of
 * different lengths, decode steps), a prefill of N tokens == N single-token
 * steps, chunking, truncation, the fast table == the reference table, KV
 * blocks returned, and errors (bad token, context overflow, exhausted pool,
 * a backend failure half-way through a chunked step) that leave every
 * sequence unchanged. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "gn_alloc.h"
#include "gn_test.h"
#include "model.h"
#include "model_maker.h"
#include "runner.h"

static char g_root[256];
static gn_backend *g_fast, *g_ref;

/* Log-probs of the fast table for one token computed in different batch
 * shapes: the dot products change summation order (1-row vs tiled kernels),
 * nothing else. */
#define ATOL 2e-4f
#define RTOL 1e-4f

static uint64_t g_rng = 12345;
static int32_t rand_tok(int n_vocab) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (int32_t)((g_rng >> 33) % (uint64_t)n_vocab);
}

static gn_model *make_and_load(const char *name, const char *arch, gn_dtype dt, int sliding, gn_backend *be) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", g_root, name);
    gn_make_model_params p = gn_make_model_default_params();
    p.arch = arch;
    p.dtype = dt;
    p.init_std = 0.15f; /* large enough that attention and logits are far from uniform */
    p.sliding_window = sliding;
    gn_err e = {0};
    if (access(dir, F_OK) != 0 && gn_make_model(&p, dir, &e) != 0) {
        CHECK(0, "make %s: %s", name, e.msg);
        return NULL;
    }
    gn_model_params mp = gn_model_default_params();
    gn_model *m = gn_model_load(dir, be, &mp, &e);
    CHECK(m != NULL, "load %s: %s", name, e.msg);
    return m;
}

/* Runs one step with a single item on a fresh sequence; the sequence is
 * returned for further steps. */
static gn_seq *one(gn_runner *r, const int32_t *toks, int n, int all, float *out) {
    gn_err e = {0};
    gn_seq *s = gn_seq_create(r, &e);
    gn_step_item it = {s, toks, n, all};
    int rc = gn_runner_step(r, &it, 1, out, &e);
    CHECK(rc == 0, "single step: %s", e.msg);
    return s;
}

/* Prefill of prompts of different lengths in one step == each alone; then
 * decode steps for all sequences at once == each alone; and a prefill of N
 * tokens == N single-token steps. */
static void test_batching(gn_model *m, const char *what) {
    gn_err e = {0};
    gn_runner_params rp = gn_runner_default_params();
    gn_runner *r = gn_runner_create(m, &rp, &e);
    CHECK(r != NULL, "runner: %s", e.msg);
    if (!r) return;
    int nv = gn_model_cfg(m)->n_vocab, no = gn_model_n_out(m);
    enum { NS = 4, MAXP = 30, DEC = 4 };
    static const int lens[NS] = {1, 5, 13, 30};
    int32_t toks[NS][MAXP + DEC];
    for (int s = 0; s < NS; s++)
        for (int t = 0; t < MAXP + DEC; t++) toks[s][t] = rand_tok(nv);

    /* Batched prefill, all logits for sequences 1 and 3, last only for 0 and 2. */
    gn_seq *bs[NS];
    gn_step_item items[NS];
    for (int s = 0; s < NS; s++) {
        bs[s] = gn_seq_create(r, &e);
        items[s] = (gn_step_item){bs[s], toks[s], lens[s], s % 2};
    }
    int rows = gn_runner_step_rows(items, NS);
    CHECK(rows == 1 + 5 + 1 + 30, "step rows %d", rows);
    float *batched = malloc(sizeof(float) * (size_t)rows * (size_t)no);
    CHECK(gn_runner_step(r, items, NS, batched, &e) == 0, "batched prefill: %s", e.msg);
    for (int s = 0; s < NS; s++) CHECK(gn_seq_len(bs[s]) == lens[s], "len after prefill");

    /* Each alone. */
    float *alone = malloc(sizeof(float) * (size_t)MAXP * (size_t)no);
    gn_seq *as[NS];
    size_t off = 0;
    for (int s = 0; s < NS; s++) {
        as[s] = one(r, toks[s], lens[s], s % 2, alone);
        int nr = s % 2 ? lens[s] : 1;
        char msg[128];
        snprintf(msg, sizeof msg, "%s: prefill batch vs alone, seq %d (%d tokens)", what, s, lens[s]);
        gn_t_close(msg, batched + off * (size_t)no, alone, (size_t)nr * (size_t)no, ATOL, RTOL);
        off += (size_t)nr;
    }

    /* Decode: all at once vs each alone, DEC steps. */
    float *dec_b = malloc(sizeof(float) * NS * (size_t)no), *dec_a = malloc(sizeof(float) * (size_t)no);
    for (int d = 0; d < DEC; d++) {
        for (int s = 0; s < NS; s++) items[s] = (gn_step_item){bs[s], &toks[s][lens[s] + d], 1, 0};
        CHECK(gn_runner_step(r, items, NS, dec_b, &e) == 0, "batched decode: %s", e.msg);
        for (int s = 0; s < NS; s++) {
            gn_step_item it = {as[s], &toks[s][lens[s] + d], 1, 0};
            CHECK(gn_runner_step(r, &it, 1, dec_a, &e) == 0, "single decode: %s", e.msg);
            char msg[128];
            snprintf(msg, sizeof msg, "%s: decode step %d batch vs alone, seq %d", what, d, s);
            gn_t_close(msg, dec_b + (size_t)s * (size_t)no, dec_a, (size_t)no, ATOL, RTOL);
        }
    }

    /* Prefill of 30 tokens (all logits) == 30 single-token steps. */
    gn_seq *st = gn_seq_create(r, &e);
    for (int t = 0; t < lens[3]; t++) {
        gn_step_item it = {st, &toks[3][t], 1, 0};
        CHECK(gn_runner_step(r, &it, 1, dec_a, &e) == 0, "token step: %s", e.msg);
        char msg[128];
        snprintf(msg, sizeof msg, "%s: prefill row %d vs token-by-token", what, t);
        gn_t_close(msg, dec_a, batched + (size_t)(1 + 5 + 1 + t) * (size_t)no, (size_t)no, ATOL, RTOL);
    }

    /* Log-probs are normalised over n_out columns. */
    double sum = 0;
    for (int c = 0; c < no; c++) sum += exp((double)dec_a[c]);
    CHECK(fabs(sum - 1.0) < 1e-4, "%s: probabilities sum to %g", what, sum);

    int used, total;
    gn_runner_kv_usage(r, &used, &total);
    CHECK(used > 0 && used <= total, "kv usage %d/%d", used, total);
    for (int s = 0; s < NS; s++) {
        gn_seq_free(bs[s]);
        gn_seq_free(as[s]);
    }
    gn_seq_free(st);
    gn_runner_kv_usage(r, &used, &total);
    CHECK(used == 0, "%s: seq_free returned every block (%d still used)", what, used);
    free(batched);
    free(alone);
    free(dec_b);
    free(dec_a);
    gn_runner_free(r);
}

/* A step bigger than max_batch_tokens is cut into chunks; the results equal
 * an unchunked runner's. Also: truncate + re-append == the original. */
static void test_chunking(gn_model *m) {
    gn_err e = {0};
    gn_runner_params big = gn_runner_default_params(), small = big;
    small.max_batch_tokens = 7;
    small.max_seqs = 3;
    gn_runner *rb = gn_runner_create(m, &big, &e), *rs = gn_runner_create(m, &small, &e);
    CHECK(rb && rs, "runners: %s", e.msg);
    if (!rb || !rs) return;
    int nv = gn_model_cfg(m)->n_vocab, no = gn_model_n_out(m);
    int32_t t0[20], t1[3], t2[9];
    for (int i = 0; i < 20; i++) t0[i] = rand_tok(nv);
    for (int i = 0; i < 3; i++) t1[i] = rand_tok(nv);
    for (int i = 0; i < 9; i++) t2[i] = rand_tok(nv);
    gn_seq *a[3], *b[3];
    for (int i = 0; i < 3; i++) {
        a[i] = gn_seq_create(rb, &e);
        b[i] = gn_seq_create(rs, &e);
    }
    gn_step_item ia[3] = {{a[0], t0, 20, 1}, {a[1], t1, 3, 0}, {a[2], t2, 9, 1}};
    gn_step_item ib[3] = {{b[0], t0, 20, 1}, {b[1], t1, 3, 0}, {b[2], t2, 9, 1}};
    int rows = gn_runner_step_rows(ia, 3);
    float *oa = malloc(sizeof(float) * (size_t)rows * (size_t)no), *ob = malloc(sizeof(float) * (size_t)rows * (size_t)no);
    CHECK(gn_runner_step(rb, ia, 3, oa, &e) == 0, "unchunked: %s", e.msg);
    CHECK(gn_runner_step(rs, ib, 3, ob, &e) == 0, "chunked: %s", e.msg);
    gn_t_close("chunked (7 tokens per chunk) vs one chunk", ob, oa, (size_t)rows * (size_t)no, ATOL, RTOL);
    /* Second step, chunked again, on top of chunked history. */
    ia[0].n_tokens = ib[0].n_tokens = 8;
    ia[0].all_logits = ib[0].all_logits = 0;
    ia[1].tokens = ib[1].tokens = t2;
    ia[1].n_tokens = ib[1].n_tokens = 9;
    rows = gn_runner_step_rows(ia, 2);
    CHECK(gn_runner_step(rb, ia, 2, oa, &e) == 0, "unchunked 2: %s", e.msg);
    CHECK(gn_runner_step(rs, ib, 2, ob, &e) == 0, "chunked 2: %s", e.msg);
    gn_t_close("chunked second step", ob, oa, (size_t)rows * (size_t)no, ATOL, RTOL);
    CHECK(gn_seq_len(b[0]) == 28 && gn_seq_len(b[1]) == 12, "lengths after chunked steps");

    /* Truncate to 15 tokens (one block of 16) and append the same 5 tokens
     * again: the last row equals the 20-token prefill's row 19. */
    int u0, u1;
    gn_runner_kv_usage(rs, &u0, NULL);
    gn_seq_truncate(b[0], 15);
    gn_runner_kv_usage(rs, &u1, NULL);
    CHECK(gn_seq_len(b[0]) == 15 && u1 == u0 - 1, "truncate 28 -> 15 frees one block (%d -> %d)", u0, u1);
    gn_step_item it = {b[0], t0 + 15, 5, 0};
    float *row = malloc(sizeof(float) * (size_t)no);
    CHECK(gn_runner_step(rs, &it, 1, row, &e) == 0, "after truncate: %s", e.msg);
    gn_step_item ref_it = {a[0], t0, 20, 1};
    gn_seq_truncate(a[0], 0);
    CHECK(gn_seq_len(a[0]) == 0, "truncate to 0");
    float *full = malloc(sizeof(float) * 20 * (size_t)no);
    CHECK(gn_runner_step(rb, &ref_it, 1, full, &e) == 0, "re-prefill: %s", e.msg);
    gn_t_close("truncate + re-append == prefill", row, full + 19 * (size_t)no, (size_t)no, ATOL, RTOL);
    for (int i = 0; i < 3; i++) {
        gn_seq_free(a[i]);
        gn_seq_free(b[i]);
    }
    free(oa);
    free(ob);
    free(row);
    free(full);
    gn_runner_free(rb);
    gn_runner_free(rs);
}

/* The fast table and the reference table agree through the whole model. */
static void test_fast_vs_ref(gn_model *mf, gn_model *mr, const char *what) {
    gn_err e = {0};
    gn_runner_params rp = gn_runner_default_params();
    gn_runner *rf = gn_runner_create(mf, &rp, &e), *rr = gn_runner_create(mr, &rp, &e);
    CHECK(rf && rr, "runners: %s", e.msg);
    if (!rf || !rr) return;
    int nv = gn_model_cfg(mf)->n_vocab, no = gn_model_n_out(mf);
    int32_t toks[24];
    for (int i = 0; i < 24; i++) toks[i] = rand_tok(nv);
    float *of = malloc(sizeof(float) * 24 * (size_t)no), *orr = malloc(sizeof(float) * 24 * (size_t)no);
    gn_seq *sf = one(rf, toks, 24, 1, of), *sr = one(rr, toks, 24, 1, orr);
    char msg[128];
    snprintf(msg, sizeof msg, "%s: cpu vs cpu-ref, 24-token prefill", what);
    gn_t_close(msg, of, orr, 24 * (size_t)no, 5e-4f, 1e-4f);
    gn_seq_free(sf);
    gn_seq_free(sr);
    free(of);
    free(orr);
    gn_runner_free(rf);
    gn_runner_free(rr);
}

/* A backend op table whose attention fails on the Nth call: a real backend
 * with a fault injected, to prove a failing chunk rolls the step back. */
static gn_backend_ops g_faulty;
static const gn_backend_ops *g_real;
static int g_attn_countdown;
static int faulty_attention(gn_backend *be, float *out, const float *q, const float *k, const float *v,
                            const gn_kv_pool *kv, int layer, const gn_attn_batch *b, int n_heads,
                            int sliding_window, float scale) {
    if (g_attn_countdown-- == 0) return gn_errf(&be->err, GN_EBACKEND, "injected attention failure");
    return g_real->attention(be, out, q, k, v, kv, layer, b, n_heads, sliding_window, scale);
}

static void test_errors(gn_model *m) {
    gn_err e = {0};
    gn_runner_params rp = gn_runner_default_params();
    rp.max_ctx = 40;
    rp.max_batch_tokens = 8;
    rp.max_seqs = 2;
    rp.n_blocks = 5; /* 80 tokens */
    gn_runner *r = gn_runner_create(m, &rp, &e);
    CHECK(r != NULL, "runner: %s", e.msg);
    if (!r) return;
    int nv = gn_model_cfg(m)->n_vocab, no = gn_model_n_out(m);
    int32_t toks[64];
    for (int i = 0; i < 64; i++) toks[i] = rand_tok(nv);
    float *out = malloc(sizeof(float) * 64 * (size_t)no), *out2 = malloc(sizeof(float) * 64 * (size_t)no);
    gn_seq *a = gn_seq_create(r, &e), *b = gn_seq_create(r, &e), *c = gn_seq_create(r, &e);
    gn_step_item it[3] = {{a, toks, 10, 0}, {b, toks + 10, 3, 0}, {c, toks, 1, 0}};
    CHECK(gn_runner_step(r, it, 2, out, &e) == 0, "first step: %s", e.msg);
    int used0;
    gn_runner_kv_usage(r, &used0, NULL);
    CHECK(used0 == 2, "blocks used %d", used0);

#define UNCHANGED(label)                                                                    \
    do {                                                                                    \
        int used_;                                                                          \
        gn_runner_kv_usage(r, &used_, NULL);                                                \
        CHECK(gn_seq_len(a) == 10 && gn_seq_len(b) == 3 && used_ == used0,                  \
              "%s: state changed (len %d %d, blocks %d)", label, gn_seq_len(a), gn_seq_len(b), used_); \
    } while (0)

    int32_t bad[3] = {1, nv, 2};
    gn_step_item ib[2] = {{a, toks, 2, 0}, {b, bad, 3, 0}};
    CHECK(gn_runner_step(r, ib, 2, out, &e) == GN_EINVAL, "bad token accepted");
    CHECK(strstr(e.msg, "item 1 token 1") != NULL, "message names the item: %s", e.msg);
    UNCHANGED("bad token");
    bad[1] = -1;
    CHECK(gn_runner_step(r, ib, 2, out, &e) == GN_EINVAL, "negative token accepted");
    UNCHANGED("negative token");

    gn_step_item io[2] = {{a, toks, 2, 0}, {b, toks, 38, 0}};
    CHECK(gn_runner_step(r, io, 2, out, &e) == GN_ERANGE, "context overflow accepted");
    CHECK(strstr(e.msg, "item 1") && strstr(e.msg, "max_ctx 40"), "message: %s", e.msg);
    UNCHANGED("context overflow");

    gn_step_item ip[2] = {{a, toks, 30, 0}, {b, toks, 34, 0}}; /* needs 3 + 3 - 2 = 4 more, 3 free */
    CHECK(gn_runner_step(r, ip, 2, out, &e) == GN_ERANGE, "pool exhaustion accepted");
    CHECK(strstr(e.msg, "KV cache exhausted") != NULL, "message: %s", e.msg);
    UNCHANGED("pool exhausted");

    gn_step_item id[2] = {{a, toks, 1, 0}, {a, toks, 1, 0}};
    CHECK(gn_runner_step(r, id, 2, out, &e) == GN_EINVAL, "duplicate sequence accepted");
    UNCHANGED("duplicate");
    CHECK(gn_runner_step(r, it, 3, out, &e) == GN_ERANGE, "more than max_seqs accepted");
    UNCHANGED("too many items");
    gn_step_item iz[1] = {{a, toks, 0, 0}};
    CHECK(gn_runner_step(r, iz, 1, out, &e) == GN_EINVAL, "zero tokens accepted");
    UNCHANGED("zero tokens");

    /* Backend failure in the second chunk of a 3-chunk step (8 tokens per
     * chunk, 2 layers: attention call 3 is chunk 2, layer 0). */
    gn_step_item ig[2] = {{a, toks + 10, 12, 1}, {b, toks + 13, 6, 1}};
    gn_backend *be = gn_model_backend(m);
    g_real = be->ops;
    g_faulty = *be->ops;
    g_faulty.attention = faulty_attention;
    be->ops = &g_faulty;
    g_attn_countdown = 2;
    int rc = gn_runner_step(r, ig, 2, out, &e);
    be->ops = g_real;
    CHECK(rc == GN_EBACKEND, "injected failure rc %d", rc);
    CHECK(strstr(e.msg, "attention") && strstr(e.msg, "injected"), "message: %s", e.msg);
    UNCHANGED("backend failure");
    /* The same step now succeeds and equals a clean runner's result. */
    CHECK(gn_runner_step(r, ig, 2, out, &e) == 0, "retry: %s", e.msg);
    gn_runner_params rp2 = gn_runner_default_params();
    gn_runner *r2 = gn_runner_create(m, &rp2, &e);
    gn_seq *a2 = gn_seq_create(r2, &e), *b2 = gn_seq_create(r2, &e);
    gn_step_item ic[2] = {{a2, toks, 10, 0}, {b2, toks + 10, 3, 0}};
    CHECK(gn_runner_step(r2, ic, 2, out2, &e) == 0, "clean 1: %s", e.msg);
    ic[0] = (gn_step_item){a2, toks + 10, 12, 1};
    ic[1] = (gn_step_item){b2, toks + 13, 6, 1};
    CHECK(gn_runner_step(r2, ic, 2, out2, &e) == 0, "clean 2: %s", e.msg);
    gn_t_close("step after a rolled-back failure == clean run", out, out2, 18 * (size_t)no, ATOL, RTOL);
    gn_seq_free(a2);
    gn_seq_free(b2);
    gn_runner_free(r2);

    /* Bad runner parameters are named. */
    gn_runner_params bp = gn_runner_default_params();
    bp.block_size = 0;
    CHECK(gn_runner_create(m, &bp, &e) == NULL && strstr(e.msg, "block_size"), "block_size 0: %s", e.msg);
    bp = gn_runner_default_params();
    bp.max_batch_tokens = -3;
    CHECK(gn_runner_create(m, &bp, &e) == NULL && strstr(e.msg, "max_batch_tokens"), "mbt: %s", e.msg);

    gn_seq_free(a);
    gn_seq_free(b);
    gn_seq_free(c);
    int used;
    gn_runner_kv_usage(r, &used, NULL);
    CHECK(used == 0, "all blocks back (%d)", used);
    free(out);
    free(out2);
    gn_runner_free(r);
}

/* Every allocation of gn_runner_create and gn_seq_create can fail cleanly. */
static void test_alloc_failures(gn_model *m) {
    gn_runner_params rp = gn_runner_default_params();
    rp.n_blocks = 8;
    int points = 0, clean = 1;
    for (long i = 0; i < 200; i++) {
        gn_err e = {0};
        gn_alloc_fail_after(i);
        gn_runner *r = gn_runner_create(m, &rp, &e);
        gn_seq *s = r ? gn_seq_create(r, &e) : NULL;
        gn_alloc_fail_after(-1);
        if (r && s) {
            gn_seq_free(s);
            gn_runner_free(r);
            break;
        }
        points++;
        if (e.code != GN_ENOMEM) {
            clean = 0;
            fprintf(stderr, "alloc point %ld: %s\n", i, e.msg);
        }
        gn_runner_free(r);
    }
    CHECK(points > 20 && clean, "runner alloc failures: %d points, all GN_ENOMEM %d", points, clean);
}

int main(void) {
    snprintf(g_root, sizeof g_root, "/tmp/gn_test_runner_XXXXXX");
    if (!mkdtemp(g_root)) {
        perror("mkdtemp");
        return 1;
    }
    gn_err e = {0};
    gn_backend_params bp = gn_backend_default_params();
    bp.n_threads = 2;
    g_fast = gn_backend_create("cpu", &bp, &e);
    g_ref = gn_backend_create("cpu-ref", &bp, &e);
    CHECK(g_fast && g_ref, "backends: %s", e.msg);
    if (!g_fast || !g_ref) GN_TEST_MAIN_END();
    CHECK(gn_backend_create("tpu", &bp, &e) == NULL && strstr(e.msg, "unknown device"), "tpu: %s", e.msg);
    CHECK(gn_backend_create("cuda:x", &bp, &e) == NULL && e.code == GN_EINVAL, "cuda:x: %s", e.msg);

    static const struct {
        const char *name, *arch;
        gn_dtype dt;
        int sliding;
    } models[] = {
        {"llama_bf16", "llama", GN_BF16, -1},
        {"qwen3_f32", "qwen3", GN_F32, -1},
        {"qwen2_f16", "qwen2", GN_F16, -1},
        {"mistral_bf16", "mistral", GN_BF16, 4},
    };
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        gn_model *mf = make_and_load(models[i].name, models[i].arch, models[i].dt, models[i].sliding, g_fast);
        gn_model *mr = make_and_load(models[i].name, models[i].arch, models[i].dt, models[i].sliding, g_ref);
        if (mf && mr) {
            test_batching(mf, models[i].name);
            test_fast_vs_ref(mf, mr, models[i].name);
            if (i == 0) {
                test_chunking(mf);
                test_errors(mf);
                test_alloc_failures(mf);
            }
            if (i == 3) test_chunking(mf); /* sliding window across chunk edges */
        }
        gn_model_free(mf);
        gn_model_free(mr);
    }
    gn_backend_free(g_fast);
    gn_backend_free(g_ref);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
    GN_TEST_MAIN_END();
}
