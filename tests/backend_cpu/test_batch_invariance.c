/* test_batch_invariance.c — the fast CPU table ("cpu") gives a row the same
 * bits whatever else is computed with it (batch invariance: same seed, same
 * output, whatever the server's load), at every SIMD level this CPU has and
 * with 1 or 2 worker threads.
 *
 *  - ops: row i of matmul / matmul_multi over n rows (n = 1..9, 16, 33, awkward
 *    shapes, every weight dtype, with and without bias) is bit-identical to
 *    the n = 1 product of that row alone; the same for rmsnorm, swiglu,
 *    rope, log_softmax; attention of a token computed inside a prefill (and
 *    beside other sequences) is bit-identical to the same token's decode step.
 *  - models (tiny random models from the model maker, through the runner):
 *    the log-probs of each sequence stepped alone (prompt prefill, then decode
 *    steps) are memcmp-equal to the same sequence stepped inside batches of
 *    2, 5 and 16 sequences that mix prefill and decode in one step, with the
 *    other thread count, with small forward chunks, and to a token-by-token
 *    prefill; and, for the batches of 16, on the reference table too. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend_cpu.h"
#include "gn_half.h"
#include "gn_test.h"
#include "model.h"
#include "model_maker.h"
#include "runner.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;

static float frand(void) { /* uniform in [-1, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static int irand(int n) { return (int)((rng = rng * 6364136223846793005ull + 1442695040888963407ull) >> 33) % n; }

static void fill(float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = frand() * scale;
}

static gn_tensor make_weight(gn_dtype dt, int64_t rows, int64_t cols, float scale) {
    gn_tensor t = {NULL, dt, rows, cols};
    size_t n = (size_t)(rows * cols);
    t.data = malloc(n * gn_dtype_size(dt) + 64);
    for (size_t i = 0; i < n; i++) {
        float v = frand() * scale;
        if (dt == GN_F32) ((float *)t.data)[i] = v;
        else if (dt == GN_BF16) ((uint16_t *)t.data)[i] = gn_f32_to_bf16(v);
        else ((uint16_t *)t.data)[i] = gn_f32_to_f16(v);
    }
    return t;
}

static const char *dtn(gn_dtype d) { return d == GN_F32 ? "F32" : d == GN_F16 ? "F16" : "BF16"; }

/* Index of the first differing float of two rows, or -1. */
static long first_diff(const float *a, const float *b, size_t n) {
    if (!memcmp(a, b, n * sizeof(float))) return -1;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float))) return (long)i;
    return 0;
}

/* One check: n rows of `got` (stride ld) against `want` row by row. */
static void check_rows(const char *what, const float *got, const float *want, int n, size_t len, size_t ld) {
    for (int i = 0; i < n; i++) {
        long d = first_diff(got + (size_t)i * ld, want + (size_t)i * ld, len);
        if (d >= 0) {
            CHECK(0, "%s: row %d differs at [%ld]: %.9g vs %.9g", what, i, d, got[(size_t)i * ld + (size_t)d],
                  want[(size_t)i * ld + (size_t)d]);
            return;
        }
    }
    CHECK(1, "%s", what);
}

static gn_backend *be1, *be2; /* the fast table with 1 and 2 worker threads */
static gn_backend *ber;       /* the reference table */
static const char *isa_name;

/* ------------------------------------------------------------------ ops */

static void test_matmul(gn_backend *be, const char *tn) {
    static const int shapes[][2] = {{1, 1}, {5, 7}, {37, 100}, {67, 300}, {130, 17}, {33, 513}, {18, 4100}, {9, 20003}};
    static const int ns[] = {2, 3, 4, 5, 6, 7, 8, 9, 16, 33};
    const gn_dtype dts[] = {GN_F32, GN_F16, GN_BF16};
    for (size_t di = 0; di < 3; di++) {
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            int rows = shapes[si][0], cols = shapes[si][1];
            gn_tensor w = make_weight(dts[di], rows, cols, 1.0f), w2 = make_weight(dts[di], rows + 3, cols, 1.0f);
            gn_tensor b = make_weight(si % 2 ? GN_F32 : dts[di], 1, rows, 1.0f);
            int nmax = 33;
            float *x = malloc(sizeof(float) * (size_t)nmax * (size_t)cols);
            float *y1 = malloc(sizeof(float) * (size_t)nmax * (size_t)rows);
            float *yn = malloc(sizeof(float) * (size_t)nmax * (size_t)rows);
            float *z1 = malloc(sizeof(float) * (size_t)nmax * (size_t)(rows + 3));
            float *zn = malloc(sizeof(float) * (size_t)nmax * (size_t)(rows + 3));
            fill(x, (size_t)nmax * (size_t)cols, 1.0f);
            x[0] = 0.0f;
            for (int bi = 0; bi < 2; bi++) {
                const gn_tensor *bias = bi ? &b : NULL;
                /* Every row alone (n = 1), with the single-thread backend. */
                int ok = 1;
                for (int i = 0; i < nmax; i++) {
                    ok &= be1->ops->matmul(be1, y1 + (size_t)i * (size_t)rows, x + (size_t)i * (size_t)cols, &w, bias,
                                           1) == 0;
                    ok &= be1->ops->matmul(be1, z1 + (size_t)i * (size_t)(rows + 3), x + (size_t)i * (size_t)cols,
                                           &w2, NULL, 1) == 0;
                }
                CHECK(ok, "matmul n=1: %s", be1->err.msg);
                for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
                    int n = ns[ni];
                    char what[160];
                    /* The n rows starting at an odd offset, so a row meets
                     * every position inside a tile. */
                    int off = (int)(ni % 2);
                    if (off + n > nmax) off = 0;
                    const float *xs = x + (size_t)off * (size_t)cols;
                    CHECK(be->ops->matmul(be, yn, xs, &w, bias, n) == 0, "matmul: %s", be->err.msg);
                    snprintf(what, sizeof what, "[%s %s] matmul %s (%d x %d) n=%d bias=%d", isa_name, tn,
                             dtn(dts[di]), rows, cols, n, bi);
                    check_rows(what, yn, y1 + (size_t)off * (size_t)rows, n, (size_t)rows, (size_t)rows);
                    float *ys[2] = {yn, zn};
                    const gn_tensor *ws[2] = {&w, &w2}, *bs[2] = {bias, NULL};
                    CHECK(be->ops->matmul_multi(be, 2, ys, xs, ws, bs, n) == 0, "matmul_multi: %s", be->err.msg);
                    snprintf(what, sizeof what, "[%s %s] matmul_multi %s (%d x %d) n=%d bias=%d", isa_name, tn,
                             dtn(dts[di]), rows, cols, n, bi);
                    check_rows(what, yn, y1 + (size_t)off * (size_t)rows, n, (size_t)rows, (size_t)rows);
                    check_rows(what, zn, z1 + (size_t)off * (size_t)(rows + 3), n, (size_t)(rows + 3),
                               (size_t)(rows + 3));
                }
            }
            free(x);
            free(y1);
            free(yn);
            free(z1);
            free(zn);
            free(w.data);
            free(w2.data);
            free(b.data);
        }
    }
}

/* rmsnorm, swiglu, rope, log_softmax: n rows at once == each row alone. */
static void test_row_ops(gn_backend *be, const char *tn) {
    static const int dims[] = {7, 64, 100, 771};
    static const int ns[] = {2, 5, 16, 33};
    for (size_t ki = 0; ki < sizeof dims / sizeof dims[0]; ki++) {
        int dim = dims[ki], nmax = 33;
        size_t ne = (size_t)nmax * (size_t)dim;
        gn_tensor w = make_weight(GN_BF16, 1, dim, 2.0f);
        float *x = malloc(ne * sizeof(float)), *u = malloc(ne * sizeof(float));
        float *o1 = malloc(ne * sizeof(float)), *on = malloc(ne * sizeof(float));
        fill(x, ne, 8.0f);
        fill(u, ne, 2.0f);
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
            int n = ns[ni];
            char what[128];
            int ok = 1;
            for (int i = 0; i < n; i++)
                ok &= be1->ops->rmsnorm(be1, o1 + (size_t)i * dim, x + (size_t)i * dim, &w, 1, dim, 1e-5f) == 0;
            ok &= be->ops->rmsnorm(be, on, x, &w, n, dim, 1e-5f) == 0;
            CHECK(ok, "rmsnorm");
            snprintf(what, sizeof what, "[%s %s] rmsnorm dim=%d n=%d", isa_name, tn, dim, n);
            check_rows(what, on, o1, n, (size_t)dim, (size_t)dim);

            ok = 1;
            for (int i = 0; i < n; i++)
                ok &= be1->ops->swiglu(be1, o1 + (size_t)i * dim, x + (size_t)i * dim, u + (size_t)i * dim,
                                       (size_t)dim) == 0;
            ok &= be->ops->swiglu(be, on, x, u, (size_t)n * (size_t)dim) == 0;
            CHECK(ok, "swiglu");
            snprintf(what, sizeof what, "[%s %s] swiglu dim=%d n=%d", isa_name, tn, dim, n);
            check_rows(what, on, o1, n, (size_t)dim, (size_t)dim);

            ok = 1;
            for (int i = 0; i < n; i++)
                ok &= be1->ops->log_softmax(be1, o1 + (size_t)i * dim, x + (size_t)i * dim, 1, dim, dim) == 0;
            ok &= be->ops->log_softmax(be, on, x, n, dim, dim) == 0;
            CHECK(ok, "log_softmax");
            snprintf(what, sizeof what, "[%s %s] log_softmax dim=%d n=%d", isa_name, tn, dim, n);
            check_rows(what, on, o1, n, (size_t)dim, (size_t)dim);

            if (dim % 2 == 0) { /* rope: heads of dim/4 (or dim/2), even */
                int hd = dim % 8 == 0 ? dim / 4 : dim / 2, nh = dim / hd;
                float inv[512];
                int32_t pos[33];
                for (int i = 0; i < hd / 2; i++) inv[i] = powf(10000.0f, -2.0f * (float)i / (float)hd);
                for (int i = 0; i < n; i++) pos[i] = irand(3000);
                memcpy(o1, x, ne * sizeof(float));
                memcpy(on, x, ne * sizeof(float));
                ok = 1;
                for (int i = 0; i < n; i++) ok &= be1->ops->rope(be1, o1 + (size_t)i * dim, 1, nh, hd, &pos[i], inv) == 0;
                ok &= be->ops->rope(be, on, n, nh, hd, pos, inv) == 0;
                CHECK(ok, "rope");
                snprintf(what, sizeof what, "[%s %s] rope dim=%d n=%d", isa_name, tn, dim, n);
                check_rows(what, on, o1, n, (size_t)dim, (size_t)dim);
            }
        }
        free(w.data);
        free(x);
        free(u);
        free(o1);
        free(on);
    }
}

/* Attention: sequence A's tokens [past, past + L) as one prefill beside
 * other sequences' tokens, against the same tokens as L decode steps of A
 * alone on a copy of the pool. Outputs and written K/V must match bit for
 * bit. */
static void test_attention(gn_backend *be, const char *tn) {
    typedef struct {
        int nh, nkv, hd, bs, window, past, L;
    } acase;
    static const acase cases[] = {
        {4, 4, 16, 16, 0, 0, 17}, {8, 2, 64, 16, 0, 5, 40}, {6, 1, 24, 3, 0, 7, 9},
        {8, 4, 32, 4, 5, 3, 20},  {16, 1, 80, 8, 0, 0, 33}, {4, 2, 20, 5, 7, 12, 14},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const acase *c = &cases[ci];
        int nl = 1, nseq = 3, other = 6; /* sequences 1 and 2 add 1 and 5 tokens */
        int lens[3] = {c->past + c->L, 30 + 1, 5};
        int adds[3] = {c->L, 1, 5};
        int max_blocks = 0, nb_total = 0;
        for (int s = 0; s < nseq; s++) {
            int nb = (lens[s] + c->bs - 1) / c->bs;
            max_blocks = nb > max_blocks ? nb : max_blocks;
            nb_total += nb;
        }
        int32_t *table = calloc((size_t)nseq * (size_t)max_blocks, sizeof(int32_t));
        for (int s = 0, used = 0; s < nseq; s++)
            for (int b = 0; b < (lens[s] + c->bs - 1) / c->bs; b++) table[s * max_blocks + b] = nb_total - 1 - used++;
        size_t row = (size_t)c->nkv * (size_t)c->hd, qrow = (size_t)c->nh * (size_t)c->hd;
        size_t pool_n = (size_t)nb_total * (size_t)nl * 2 * (size_t)c->bs * row;
        float *pool_b = malloc(pool_n * sizeof(float)), *pool_d = malloc(pool_n * sizeof(float));
        fill(pool_b, pool_n, 1.0f);
        memcpy(pool_d, pool_b, pool_n * sizeof(float));
        int nt = c->L + other;
        float *q = malloc((size_t)nt * qrow * sizeof(float)), *k = malloc((size_t)nt * row * sizeof(float));
        float *v = malloc((size_t)nt * row * sizeof(float));
        float *ob = malloc((size_t)nt * qrow * sizeof(float)), *od = malloc((size_t)c->L * qrow * sizeof(float));
        fill(q, (size_t)nt * qrow, 1.0f);
        fill(k, (size_t)nt * row, 1.0f);
        fill(v, (size_t)nt * row, 1.0f);
        /* Batched: token order [seq 1 (1 token), seq A (L), seq 2 (5)]. */
        int32_t *tseq = malloc(sizeof(int32_t) * (size_t)nt), *tpos = malloc(sizeof(int32_t) * (size_t)nt);
        int t = 0;
        tseq[t] = 1;
        tpos[t++] = lens[1] - 1;
        int a0 = t;
        for (int i = 0; i < c->L; i++, t++) {
            tseq[t] = 0;
            tpos[t] = c->past + i;
        }
        for (int i = 0; i < adds[2]; i++, t++) {
            tseq[t] = 2;
            tpos[t] = i;
        }
        gn_kv_pool kvb = {pool_b, GN_F32, nl, c->nkv, c->hd, c->bs, nb_total}, kvd = kvb;
        kvd.data = pool_d;
        int32_t seq_len[3] = {lens[0], lens[1], lens[2]};
        int max_len = lens[0] > lens[1] ? lens[0] : lens[1];
        gn_attn_batch ab = {nt, nseq, tseq, tpos, seq_len, table, max_blocks, max_len};
        /* q/k/v rows laid out in token order: A's rows are a0 .. a0 + L - 1. */
        float scale = 1.0f / sqrtf((float)c->hd);
        CHECK(be->ops->attention(be, ob, q, k, v, &kvb, 0, &ab, c->nh, c->window, scale) == 0, "attention: %s",
              be->err.msg);
        /* Decode: A's tokens one by one, alone (1 thread). */
        int ok = 1;
        for (int i = 0; i < c->L; i++) {
            int32_t s0 = 0, p = c->past + i, len = p + 1;
            gn_attn_batch d = {1, 1, &s0, &p, &len, table, max_blocks, len};
            ok &= be1->ops->attention(be1, od + (size_t)i * qrow, q + (size_t)(a0 + i) * qrow,
                                      k + (size_t)(a0 + i) * row, v + (size_t)(a0 + i) * row, &kvd, 0, &d, c->nh,
                                      c->window, scale) == 0;
        }
        CHECK(ok, "attention decode: %s", be1->err.msg);
        char what[160];
        snprintf(what, sizeof what, "[%s %s] attention heads %d/%d hd %d bs %d window %d: prefill of %d vs decode",
                 isa_name, tn, c->nh, c->nkv, c->hd, c->bs, c->window, c->L);
        check_rows(what, ob + (size_t)a0 * qrow, od, c->L, qrow, qrow);
        free(table);
        free(pool_b);
        free(pool_d);
        free(q);
        free(k);
        free(v);
        free(ob);
        free(od);
        free(tseq);
        free(tpos);
    }
}

/* ------------------------------------------------------------------ models */

enum { NSEQ = 16, MAXP = 40, DEC = 4 };
static const int k_plen[NSEQ] = {1, 2, 3, 5, 7, 8, 9, 13, 16, 17, 20, 24, 29, 31, 33, 40};

typedef struct ref_run {
    int32_t toks[NSEQ][MAXP + DEC];
    float *lp; /* (NSEQ, 1 + DEC, n_out): after the prefill, then after each decode step */
    int n_out;
} ref_run;

static float *lp_at(ref_run *rr, int s, int e) {
    return rr->lp + ((size_t)s * (1 + DEC) + (size_t)e) * (size_t)rr->n_out;
}

static gn_runner *new_runner(gn_model *m, int max_batch_tokens) {
    gn_err e = {0};
    gn_runner_params rp = gn_runner_default_params();
    rp.max_seqs = NSEQ;
    rp.max_ctx = MAXP + DEC + 1;
    if (max_batch_tokens) rp.max_batch_tokens = max_batch_tokens;
    gn_runner *r = gn_runner_create(m, &rp, &e);
    CHECK(r != NULL, "runner: %s", e.msg);
    return r;
}

/* Each sequence alone: prefill, then DEC decode steps (token_by_token: the
 * prompt as single-token steps). Fills out (NSEQ, 1 + DEC, n_out). */
static void run_alone(gn_model *m, ref_run *rr, float *out, int token_by_token, int max_batch_tokens) {
    gn_runner *r = new_runner(m, max_batch_tokens);
    if (!r) return;
    gn_err e = {0};
    for (int s = 0; s < NSEQ; s++) {
        gn_seq *q = gn_seq_create(r, &e);
        int ok = q != NULL;
        float *dst = out + (size_t)s * (1 + DEC) * (size_t)rr->n_out;
        if (token_by_token) {
            for (int t = 0; t < k_plen[s] && ok; t++) {
                gn_step_item it = {q, &rr->toks[s][t], 1, 0};
                ok = gn_runner_step(r, &it, 1, dst, &e) == 0;
            }
        } else {
            gn_step_item it = {q, rr->toks[s], k_plen[s], 0};
            ok = ok && gn_runner_step(r, &it, 1, dst, &e) == 0;
        }
        for (int d = 0; d < DEC && ok; d++) {
            gn_step_item it = {q, &rr->toks[s][k_plen[s] + d], 1, 0};
            ok = gn_runner_step(r, &it, 1, dst + (size_t)(1 + d) * (size_t)rr->n_out, &e) == 0;
        }
        CHECK(ok, "alone seq %d: %s", s, e.msg);
        gn_seq_free(q);
    }
    gn_runner_free(r);
}

/* Sequences [s0, s0 + B) together: sequence j joins at step j % 3 (so steps
 * mix prefills with decodes), prefills its prompt in one item, then decodes
 * one token a step. Compares every log-prob row with the alone run. */
static void run_batched(gn_model *m, ref_run *rr, int s0, int B, int max_batch_tokens, const char *what) {
    gn_runner *r = new_runner(m, max_batch_tokens);
    if (!r) return;
    gn_err e = {0};
    gn_seq *seqs[NSEQ];
    int done[NSEQ]; /* events so far: 0 = not started, 1 = prefilled, 1 + d = d decodes */
    for (int j = 0; j < B; j++) {
        seqs[j] = gn_seq_create(r, &e);
        done[j] = 0;
    }
    float *out = malloc(sizeof(float) * (size_t)B * (size_t)rr->n_out);
    int bad = 0;
    for (int step = 0; step < DEC + 3 && !bad; step++) {
        gn_step_item items[NSEQ];
        int who[NSEQ], n = 0;
        for (int j = 0; j < B; j++) {
            int s = s0 + j;
            if (step < j % 3 || done[j] > DEC) continue;
            if (done[j] == 0) items[n] = (gn_step_item){seqs[j], rr->toks[s], k_plen[s], 0};
            else items[n] = (gn_step_item){seqs[j], &rr->toks[s][k_plen[s] + done[j] - 1], 1, 0};
            who[n++] = j;
        }
        if (n == 0) continue;
        if (gn_runner_step(r, items, n, out, &e) != 0) {
            CHECK(0, "%s: step %d: %s", what, step, e.msg);
            break;
        }
        for (int i = 0; i < n && !bad; i++) {
            int j = who[i], s = s0 + j;
            const float *want = lp_at(rr, s, done[j]), *got = out + (size_t)i * (size_t)rr->n_out;
            long d = first_diff(got, want, (size_t)rr->n_out);
            if (d >= 0) {
                CHECK(0, "%s: seq %d (prompt %d) event %d in a step of %d: log-prob [%ld] %.9g vs alone %.9g", what,
                      s, k_plen[s], done[j], n, d, got[d], want[d]);
                bad = 1;
            }
            done[j]++;
        }
    }
    for (int j = 0; j < B; j++) {
        CHECK(bad || done[j] == DEC + 1, "%s: seq %d ran %d events", what, s0 + j, done[j]);
        gn_seq_free(seqs[j]);
    }
    CHECK(!bad, "%s", what);
    free(out);
    gn_runner_free(r);
}

static void test_model(const char *root, const char *name, const char *arch, gn_dtype dt) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    gn_make_model_params p = gn_make_model_default_params();
    p.arch = arch;
    p.dtype = dt;
    p.dim = 80; /* head_dim 20: tails at every SIMD width */
    p.n_heads = 4;
    p.n_kv_heads = 2;
    p.ffn_dim = 134; /* not a multiple of 8 */
    p.init_std = 0.15f;
    gn_err e = {0};
    if (gn_make_model(&p, dir, &e) != 0) {
        CHECK(0, "make %s: %s", name, e.msg);
        return;
    }
    gn_model_params mp = gn_model_default_params();
    gn_model *m1 = gn_model_load(dir, be1, &mp, &e), *m2 = m1 ? gn_model_load(dir, be2, &mp, &e) : NULL;
    CHECK(m1 && m2, "load %s: %s", name, e.msg);
    if (!m1 || !m2) {
        gn_model_free(m1);
        return;
    }
    ref_run rr;
    rr.n_out = gn_model_n_out(m1);
    int nv = gn_model_cfg(m1)->n_vocab;
    for (int s = 0; s < NSEQ; s++)
        for (int t = 0; t < MAXP + DEC; t++) rr.toks[s][t] = (int32_t)irand(nv);
    size_t per = (size_t)NSEQ * (1 + DEC) * (size_t)rr.n_out;
    rr.lp = malloc(per * sizeof(float));
    float *other = malloc(per * sizeof(float));
    char what[160];

    gn_cpu_isa best = gn_cpu_isa_detect();
    for (int isa = GN_CPU_SCALAR; isa <= (int)best; isa++) {
        gn_backend_cpu_set_isa(be1, (gn_cpu_isa)isa);
        gn_backend_cpu_set_isa(be2, (gn_cpu_isa)isa);
        isa_name = gn_cpu_isa_name((gn_cpu_isa)isa);
        /* The reference: each sequence alone, 1 thread. */
        run_alone(m1, &rr, rr.lp, 0, 0);
        /* Alone with 2 threads; prompt token by token; chunks of 7 tokens. */
        run_alone(m2, &rr, other, 0, 0);
        snprintf(what, sizeof what, "[%s] %s: alone, 2 threads vs 1", isa_name, name);
        check_rows(what, other, rr.lp, NSEQ * (1 + DEC), (size_t)rr.n_out, (size_t)rr.n_out);
        run_alone(m1, &rr, other, 1, 0);
        snprintf(what, sizeof what, "[%s] %s: prompt token by token vs one prefill", isa_name, name);
        check_rows(what, other, rr.lp, NSEQ * (1 + DEC), (size_t)rr.n_out, (size_t)rr.n_out);
        run_alone(m2, &rr, other, 0, 7);
        snprintf(what, sizeof what, "[%s] %s: prefill in chunks of 7 tokens", isa_name, name);
        check_rows(what, other, rr.lp, NSEQ * (1 + DEC), (size_t)rr.n_out, (size_t)rr.n_out);
        /* Batches of 2, 5 and 16, with 1 and 2 threads. */
        static const int bsz[] = {2, 5, 16};
        for (size_t bi = 0; bi < 3; bi++) {
            int B = bsz[bi];
            for (int th = 1; th <= 2; th++) {
                for (int s0 = 0; s0 + B <= NSEQ; s0 += B) {
                    snprintf(what, sizeof what, "[%s] %s: batch of %d from seq %d, %d thread%s", isa_name, name, B,
                             s0, th, th > 1 ? "s" : "");
                    run_batched(th == 1 ? m1 : m2, &rr, s0, B, 0, what);
                }
            }
        }
        snprintf(what, sizeof what, "[%s] %s: batch of 16, chunks of 24 tokens", isa_name, name);
        run_batched(m2, &rr, 0, 16, 24, what);
    }
    gn_backend_cpu_set_isa(be1, best);
    gn_backend_cpu_set_isa(be2, best);
    /* The reference table too (plain loops: invariant by construction). */
    gn_model *mr = gn_model_load(dir, ber, &mp, &e);
    CHECK(mr != NULL, "load %s on cpu-ref: %s", name, e.msg);
    if (mr) {
        run_alone(mr, &rr, rr.lp, 0, 0);
        snprintf(what, sizeof what, "[cpu-ref] %s: batch of 16", name);
        run_batched(mr, &rr, 0, 16, 0, what);
        gn_model_free(mr);
    }
    free(rr.lp);
    free(other);
    gn_model_free(m1);
    gn_model_free(m2);
}

int main(void) {
    gn_err err = {0};
    be1 = gn_backend_cpu_create(0, 1, &err);
    be2 = be1 ? gn_backend_cpu_create(0, 2, &err) : NULL;
    ber = be2 ? gn_backend_cpu_create(1, 1, &err) : NULL;
    CHECK(be1 && be2 && ber, "create: %s", err.msg);
    if (!be1 || !be2 || !ber) GN_TEST_MAIN_END();
    gn_cpu_isa best = gn_cpu_isa_detect();
    printf("cpu isa: %s\n", gn_cpu_isa_name(best));
    for (int isa = GN_CPU_SCALAR; isa <= (int)best; isa++) {
        CHECK(gn_backend_cpu_set_isa(be1, (gn_cpu_isa)isa) == 0 && gn_backend_cpu_set_isa(be2, (gn_cpu_isa)isa) == 0,
              "set isa");
        isa_name = gn_cpu_isa_name((gn_cpu_isa)isa);
        test_matmul(be1, "1 thread");
        test_matmul(be2, "2 threads");
        test_row_ops(be2, "2 threads");
        test_attention(be1, "1 thread");
        test_attention(be2, "2 threads");
    }

    char root[64];
    snprintf(root, sizeof root, "/tmp/gn_test_inv_XXXXXX");
    if (!mkdtemp(root)) {
        CHECK(0, "mkdtemp");
        GN_TEST_MAIN_END();
    }
    test_model(root, "llama_bf16", "llama", GN_BF16);
    test_model(root, "qwen3_f32", "qwen3", GN_F32);   /* GQA + q/k norm, tied embeddings */
    test_model(root, "qwen2_bf16", "qwen2", GN_BF16); /* q/k/v bias */
    test_model(root, "mistral_f16", "mistral", GN_F16); /* sliding window 16 */
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
    be1->ops->destroy(be1);
    be2->ops->destroy(be2);
    ber->ops->destroy(ber);
    GN_TEST_MAIN_END();
}
