/* test_cpu_ops.c — every op of the fast CPU table ("cpu") against the
 * reference table ("cpu-ref") on random inputs of awkward shapes, at every
 * SIMD level this CPU has (scalar, avx2, avx512), with 2 worker threads.
 * A mismatch prints the worst element (gn_t_close). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cpu.h"
#include "gn_alloc.h"
#include "gn_half.h"
#include "gn_test.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float frand(void) { /* uniform in [-1, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static int irand(int n) { return (int)(((frand() + 1.0f) * 0.5f) * (float)n) % n; }

static void fill(float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = frand() * scale;
}

/* A random weight of the given dtype (values exactly representable, so both
 * tables see the same numbers). Caller frees t->data. */
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

static gn_backend *ref, *fast;
static const char *isa_name;

static void test_matmul(void) {
    static const int shapes[][2] = {{1, 1}, {3, 7}, {5, 16}, {37, 100}, {67, 300}, {33, 513}, {96, 64}, {130, 17}, {9, 4100}};
    static const int ns[] = {1, 2, 3, 4, 5, 6, 7, 13, 17, 64};
    gn_dtype dts[] = {GN_F32, GN_F16, GN_BF16};
    for (size_t di = 0; di < 3; di++) {
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            int rows = shapes[si][0], cols = shapes[si][1];
            gn_tensor w = make_weight(dts[di], rows, cols, 1.0f);
            gn_tensor b = make_weight(si % 2 ? GN_F32 : dts[di], 1, rows, 1.0f);
            for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
                int n = ns[ni];
                float *x = malloc(sizeof(float) * (size_t)n * (size_t)cols);
                float *y0 = malloc(sizeof(float) * (size_t)n * (size_t)rows);
                float *y1 = malloc(sizeof(float) * (size_t)n * (size_t)rows);
                fill(x, (size_t)n * (size_t)cols, 1.0f);
                const gn_tensor *bias = (ni % 2) ? &b : NULL;
                int rc0 = ref->ops->matmul(ref, y0, x, &w, bias, n);
                int rc1 = fast->ops->matmul(fast, y1, x, &w, bias, n);
                CHECK(rc0 == 0 && rc1 == 0, "matmul rc %d %d", rc0, rc1);
                char what[128];
                snprintf(what, sizeof what, "[%s] matmul %s (%d x %d) n=%d bias=%d", isa_name,
                         dtn(dts[di]), rows, cols, n, bias != NULL);
                gn_t_close(what, y1, y0, (size_t)n * (size_t)rows, 1e-4f, 1e-4f);
                free(x);
                free(y0);
                free(y1);
            }
            free(w.data);
            free(b.data);
        }
    }
    /* matmul_multi (fast table only; the reference leaves it NULL): q/k/v-like
     * products of one x, with and without biases, against one matmul each. */
    CHECK(ref->ops->matmul_multi == NULL && fast->ops->matmul_multi != NULL, "matmul_multi presence");
    for (size_t di = 0; di < 3; di++) {
        static const int mrows[3] = {64, 16, 37};
        static const int mns[] = {1, 3, 4, 17};
        int cols = 96;
        gn_tensor w[3], b[3];
        for (int i = 0; i < 3; i++) {
            w[i] = make_weight(dts[di], mrows[i], cols, 1.0f);
            b[i] = make_weight(dts[di], 1, mrows[i], 1.0f);
        }
        for (size_t ni = 0; ni < sizeof mns / sizeof mns[0]; ni++) {
            int n = mns[ni];
            float *x = malloc(sizeof(float) * (size_t)n * (size_t)cols);
            fill(x, (size_t)n * (size_t)cols, 1.0f);
            float *y0[3], *y1[3];
            for (int i = 0; i < 3; i++) {
                y0[i] = malloc(sizeof(float) * (size_t)n * (size_t)mrows[i]);
                y1[i] = malloc(sizeof(float) * (size_t)n * (size_t)mrows[i]);
                CHECK(ref->ops->matmul(ref, y0[i], x, &w[i], ni % 2 ? &b[i] : NULL, n) == 0, "ref matmul");
            }
            const gn_tensor *ws[3] = {&w[0], &w[1], &w[2]}, *bs[3] = {&b[0], NULL, &b[2]};
            if (!(ni % 2)) bs[0] = bs[2] = NULL;
            else bs[1] = &b[1];
            CHECK(fast->ops->matmul_multi(fast, 3, y1, x, ws, ni % 2 ? bs : NULL, n) == 0, "matmul_multi: %s",
                  fast->err.msg);
            for (int i = 0; i < 3; i++) {
                char what[128];
                snprintf(what, sizeof what, "[%s] matmul_multi %s product %d n=%d", isa_name, dtn(dts[di]), i, n);
                gn_t_close(what, y1[i], y0[i], (size_t)n * (size_t)mrows[i], 1e-4f, 1e-4f);
                free(y0[i]);
                free(y1[i]);
            }
            free(x);
        }
        gn_tensor wbad = make_weight(dts[di], 8, cols + 1, 1.0f);
        const gn_tensor *wsb[2] = {&w[0], &wbad};
        float *yb[2] = {NULL, NULL};
        float xb[200] = {0}, ya[64], yc[8];
        yb[0] = ya;
        yb[1] = yc;
        CHECK(fast->ops->matmul_multi(fast, 2, yb, xb, wsb, NULL, 1) == GN_EINVAL, "column mismatch accepted");
        CHECK(fast->ops->matmul_multi(fast, 5, yb, xb, wsb, NULL, 1) == GN_EINVAL, "5 products accepted");
        free(wbad.data);
        for (int i = 0; i < 3; i++) {
            free(w[i].data);
            free(b[i].data);
        }
    }
    /* Errors: a bias of the wrong length and an unknown dtype are refused. */
    gn_tensor w = make_weight(GN_F32, 4, 8, 1.0f), b = make_weight(GN_F32, 1, 3, 1.0f);
    float x[8] = {0}, y[4];
    CHECK(fast->ops->matmul(fast, y, x, &w, &b, 1) == GN_EINVAL, "bad bias accepted");
    gn_tensor bad = w;
    bad.dtype = (gn_dtype)7;
    CHECK(fast->ops->matmul(fast, y, x, &bad, NULL, 1) == GN_EINVAL, "bad dtype accepted");
    CHECK(strstr(fast->err.msg, "dtype") != NULL, "message: %s", fast->err.msg);
    free(w.data);
    free(b.data);
}

static void test_rows_ops(void) {
    static const int dims[] = {1, 7, 16, 64, 100, 771};
    static const int nrows[] = {1, 3, 17, 64};
    gn_dtype dts[] = {GN_F32, GN_F16, GN_BF16};
    for (size_t di = 0; di < 3; di++) {
        for (size_t ki = 0; ki < sizeof dims / sizeof dims[0]; ki++) {
            int dim = dims[ki];
            gn_tensor w = make_weight(dts[di], 1, dim, 2.0f);
            gn_tensor table = make_weight(dts[di], 50, dim, 1.0f);
            for (size_t ri = 0; ri < sizeof nrows / sizeof nrows[0]; ri++) {
                int n = nrows[ri];
                size_t ne = (size_t)n * (size_t)dim;
                float *x = malloc(ne * sizeof(float)), *o0 = malloc(ne * sizeof(float)),
                      *o1 = malloc(ne * sizeof(float));
                char what[128];
                fill(x, ne, 3.0f);
                CHECK(ref->ops->rmsnorm(ref, o0, x, &w, n, dim, 1e-5f) == 0, "rmsnorm ref");
                CHECK(fast->ops->rmsnorm(fast, o1, x, &w, n, dim, 1e-5f) == 0, "rmsnorm fast");
                snprintf(what, sizeof what, "[%s] rmsnorm %s n=%d dim=%d", isa_name, dtn(dts[di]), n, dim);
                gn_t_close(what, o1, o0, ne, 1e-5f, 1e-5f);
                /* in place */
                memcpy(o1, x, ne * sizeof(float));
                CHECK(fast->ops->rmsnorm(fast, o1, o1, &w, n, dim, 1e-5f) == 0, "rmsnorm in place");
                snprintf(what, sizeof what, "[%s] rmsnorm in place %s n=%d dim=%d", isa_name, dtn(dts[di]), n, dim);
                gn_t_close(what, o1, o0, ne, 1e-5f, 1e-5f);

                int32_t *tok = malloc((size_t)n * sizeof(int32_t));
                for (int i = 0; i < n; i++) tok[i] = irand(50);
                CHECK(ref->ops->embed(ref, o0, &table, tok, n) == 0, "embed ref");
                CHECK(fast->ops->embed(fast, o1, &table, tok, n) == 0, "embed fast");
                snprintf(what, sizeof what, "[%s] embed %s n=%d dim=%d", isa_name, dtn(dts[di]), n, dim);
                gn_t_close(what, o1, o0, ne, 0.0f, 0.0f);
                tok[n - 1] = 50;
                CHECK(fast->ops->embed(fast, o1, &table, tok, n) == GN_EINVAL, "embed accepted token 50");
                free(tok);
                free(x);
                free(o0);
                free(o1);
            }
            free(w.data);
            free(table.data);
        }
    }
}

static void test_elementwise(void) {
    static const size_t ns[] = {1, 17, 4097, 100003};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        size_t n = ns[i];
        float *g = malloc(n * sizeof(float)), *u = malloc(n * sizeof(float));
        float *o0 = malloc(n * sizeof(float)), *o1 = malloc(n * sizeof(float));
        fill(g, n, 12.0f);
        fill(u, n, 2.0f);
        g[0] = -95.0f; /* exp overflow side */
        char what[128];
        CHECK(ref->ops->swiglu(ref, o0, g, u, n) == 0, "swiglu ref");
        CHECK(fast->ops->swiglu(fast, o1, g, u, n) == 0, "swiglu fast");
        snprintf(what, sizeof what, "[%s] swiglu n=%zu", isa_name, n);
        gn_t_close(what, o1, o0, n, 1e-6f, 1e-5f);
        memcpy(o1, g, n * sizeof(float));
        CHECK(fast->ops->swiglu(fast, o1, o1, u, n) == 0, "swiglu in place");
        snprintf(what, sizeof what, "[%s] swiglu in place n=%zu", isa_name, n);
        gn_t_close(what, o1, o0, n, 1e-6f, 1e-5f);

        memcpy(o0, g, n * sizeof(float));
        memcpy(o1, g, n * sizeof(float));
        CHECK(ref->ops->add(ref, o0, u, n) == 0 && fast->ops->add(fast, o1, u, n) == 0, "add");
        snprintf(what, sizeof what, "[%s] add n=%zu", isa_name, n);
        gn_t_close(what, o1, o0, n, 0.0f, 0.0f);
        free(g);
        free(u);
        free(o0);
        free(o1);
    }
    /* get_rows */
    float x[5 * 9], o0[4 * 9], o1[4 * 9];
    fill(x, 45, 1.0f);
    int32_t rows[4] = {4, 0, 4, 2};
    CHECK(ref->ops->get_rows(ref, o0, x, rows, 4, 9) == 0 && fast->ops->get_rows(fast, o1, x, rows, 4, 9) == 0,
          "get_rows");
    gn_t_close("get_rows", o1, o0, 36, 0.0f, 0.0f);
    CHECK(o1[9] == x[0] && o1[0] == x[36], "get_rows picks rows");
}

static void test_log_softmax(void) {
    static const int cols[][2] = {{1, 1}, {17, 17}, {1000, 1003}, {32000, 32001}};
    static const int nrows[] = {1, 3, 8};
    for (size_t ci = 0; ci < sizeof cols / sizeof cols[0]; ci++) {
        for (size_t ri = 0; ri < sizeof nrows / sizeof nrows[0]; ri++) {
            int nc = cols[ci][0], ld = cols[ci][1], n = nrows[ri];
            float *x = malloc(sizeof(float) * (size_t)n * (size_t)ld);
            float *o0 = malloc(sizeof(float) * (size_t)n * (size_t)nc), *o1 = malloc(sizeof(float) * (size_t)n * (size_t)nc);
            fill(x, (size_t)n * (size_t)ld, 20.0f);
            if (nc > 2) x[1] = -1e30f; /* a masked-out logit */
            CHECK(ref->ops->log_softmax(ref, o0, x, n, nc, ld) == 0, "lsm ref");
            CHECK(fast->ops->log_softmax(fast, o1, x, n, nc, ld) == 0, "lsm fast");
            char what[128];
            snprintf(what, sizeof what, "[%s] log_softmax n=%d cols=%d ld=%d", isa_name, n, nc, ld);
            gn_t_close(what, o1, o0, (size_t)n * (size_t)nc, 1e-5f, 1e-6f);
            free(x);
            free(o0);
            free(o1);
        }
    }
    float x[4] = {0};
    CHECK(fast->ops->log_softmax(fast, x, x, 1, 5, 4) == GN_EINVAL, "n_cols > ld_x accepted");
}

static void test_rope(void) {
    static const int hds[] = {2, 8, 64, 128, 40};
    static const int ntoks[] = {1, 3, 17};
    for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++) {
        int hd = hds[hi];
        float inv[512];
        for (int i = 0; i < hd / 2; i++) inv[i] = (float)pow(10000.0, -2.0 * i / hd);
        for (size_t ti = 0; ti < sizeof ntoks / sizeof ntoks[0]; ti++) {
            int nt = ntoks[ti], nh = 3;
            size_t ne = (size_t)nt * (size_t)nh * (size_t)hd;
            float *x0 = malloc(ne * sizeof(float)), *x1 = malloc(ne * sizeof(float));
            int32_t pos[17];
            for (int t = 0; t < nt; t++) pos[t] = irand(5000);
            fill(x0, ne, 2.0f);
            memcpy(x1, x0, ne * sizeof(float));
            CHECK(ref->ops->rope(ref, x0, nt, nh, hd, pos, inv) == 0, "rope ref");
            CHECK(fast->ops->rope(fast, x1, nt, nh, hd, pos, inv) == 0, "rope fast");
            char what[128];
            snprintf(what, sizeof what, "[%s] rope hd=%d n_tok=%d", isa_name, hd, nt);
            gn_t_close(what, x1, x0, ne, 1e-6f, 1e-6f);
            free(x0);
            free(x1);
        }
    }
    float x[3];
    int32_t p = 0;
    CHECK(fast->ops->rope(fast, x, 1, 1, 3, &p, x) == GN_EINVAL, "odd head_dim accepted");
}

/* Attention: several sequences with different past lengths over shuffled
 * paged blocks, new tokens per sequence (prefill and decode mixed). Both
 * tables start from the same pool contents; outputs and the written pools
 * are compared. */
typedef struct attn_case {
    int n_heads, n_kv, hd, block_size, window;
    int n_seqs;
    int past[4], add[4];
} attn_case;

static void run_attn_case(const attn_case *ac) {
    int nl = 2, layer = 1, bs = ac->block_size, nkv = ac->n_kv, hd = ac->hd;
    int max_blocks = 0, n_tok = 0, total_blocks = 0;
    for (int s = 0; s < ac->n_seqs; s++) {
        int nb = (ac->past[s] + ac->add[s] + bs - 1) / bs;
        if (nb > max_blocks) max_blocks = nb;
        total_blocks += nb;
        n_tok += ac->add[s];
    }
    int n_blocks = total_blocks + 3;
    /* block ids: a random permutation */
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)n_blocks);
    for (int i = 0; i < n_blocks; i++) perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int k = irand(i + 1), t = perm[i];
        perm[i] = perm[k];
        perm[k] = t;
    }
    int32_t *table = calloc((size_t)ac->n_seqs * (size_t)max_blocks, sizeof(int32_t));
    int32_t seq_len[4], *tok_seq = malloc(sizeof(int32_t) * (size_t)n_tok), *tok_pos = malloc(sizeof(int32_t) * (size_t)n_tok);
    int used = 0, t = 0;
    for (int s = 0; s < ac->n_seqs; s++) {
        seq_len[s] = ac->past[s] + ac->add[s];
        for (int b = 0; b < (seq_len[s] + bs - 1) / bs; b++) table[s * max_blocks + b] = perm[used++];
        for (int i = 0; i < ac->add[s]; i++, t++) {
            tok_seq[t] = s;
            tok_pos[t] = ac->past[s] + i;
        }
    }
    size_t pool_elems = (size_t)n_blocks * (size_t)nl * 2 * (size_t)bs * (size_t)nkv * (size_t)hd;
    float *pool0 = malloc(pool_elems * sizeof(float)), *pool1 = malloc(pool_elems * sizeof(float));
    fill(pool0, pool_elems, 1.0f);
    memcpy(pool1, pool0, pool_elems * sizeof(float));
    gn_kv_pool kv0 = {pool0, GN_F32, nl, nkv, hd, bs, n_blocks}, kv1 = kv0;
    kv1.data = pool1;
    size_t qn = (size_t)n_tok * (size_t)ac->n_heads * (size_t)hd, kn = (size_t)n_tok * (size_t)nkv * (size_t)hd;
    float *q = malloc(qn * sizeof(float)), *k = malloc(kn * sizeof(float)), *v = malloc(kn * sizeof(float));
    float *o0 = malloc(qn * sizeof(float)), *o1 = malloc(qn * sizeof(float));
    fill(q, qn, 1.0f);
    fill(k, kn, 1.0f);
    fill(v, kn, 1.0f);
    int max_len = 0;
    for (int s = 0; s < ac->n_seqs; s++) max_len = seq_len[s] > max_len ? seq_len[s] : max_len;
    gn_attn_batch b = {n_tok, ac->n_seqs, tok_seq, tok_pos, seq_len, table, max_blocks, max_len};
    float scale = 1.0f / sqrtf((float)hd);
    int rc0 = ref->ops->attention(ref, o0, q, k, v, &kv0, layer, &b, ac->n_heads, ac->window, scale);
    int rc1 = fast->ops->attention(fast, o1, q, k, v, &kv1, layer, &b, ac->n_heads, ac->window, scale);
    CHECK(rc0 == 0 && rc1 == 0, "attention rc %d %d: %s %s", rc0, rc1, ref->err.msg, fast->err.msg);
    char what[160];
    snprintf(what, sizeof what, "[%s] attention heads %d/%d hd %d bs %d window %d seqs %d tok %d", isa_name,
             ac->n_heads, nkv, hd, bs, ac->window, ac->n_seqs, n_tok);
    gn_t_close(what, o1, o0, qn, 1e-5f, 1e-4f);
    snprintf(what, sizeof what, "[%s] attention KV writes heads %d/%d hd %d bs %d", isa_name, ac->n_heads, nkv, hd, bs);
    gn_t_close(what, pool1, pool0, pool_elems, 0.0f, 0.0f);

    /* A block id outside the pool is an error, not a wild read. */
    table[0] = n_blocks;
    CHECK(fast->ops->attention(fast, o1, q, k, v, &kv1, layer, &b, ac->n_heads, ac->window, scale) == GN_EINVAL,
          "bad block id accepted");
    table[0] = perm[0];
    tok_pos[0] = seq_len[tok_seq[0]];
    CHECK(fast->ops->attention(fast, o1, q, k, v, &kv1, layer, &b, ac->n_heads, ac->window, scale) == GN_EINVAL,
          "position past the sequence accepted");

    free(perm);
    free(table);
    free(tok_seq);
    free(tok_pos);
    free(pool0);
    free(pool1);
    free(q);
    free(k);
    free(v);
    free(o0);
    free(o1);
}

static void test_attention(void) {
    static const attn_case cases[] = {
        {4, 4, 16, 16, 0, 1, {0}, {1}},                    /* first token */
        {4, 4, 16, 16, 0, 1, {0}, {17}},                   /* prefill only */
        {8, 2, 64, 16, 0, 3, {0, 40, 5}, {9, 1, 3}},       /* GQA, mixed */
        {6, 1, 24, 3, 0, 3, {7, 0, 50}, {1, 5, 2}},        /* MQA, odd head_dim, odd block size */
        {8, 4, 32, 4, 5, 4, {20, 3, 0, 64}, {1, 6, 17, 3}},/* sliding window 5 */
        {12, 12, 64, 16, 0, 2, {100, 0}, {1, 64}},         /* decode + long prefill */
        {16, 1, 256, 8, 0, 2, {9, 0}, {2, 3}},             /* group 16 > 8 heads per task */
        {4, 2, 512, 16, 0, 2, {30, 2}, {1, 4}},            /* big head_dim: smaller groups */
        {2, 1, 80, 5, 7, 2, {33, 0}, {3, 12}},             /* window + head_dim 80 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_attn_case(&cases[i]);
}

int main(void) {
    gn_err err = {0};
    ref = gn_backend_cpu_create(1, 0, &err);
    fast = gn_backend_cpu_create(0, 2, &err);
    CHECK(ref && fast, "create: %s", err.msg);
    if (!ref || !fast) GN_TEST_MAIN_END();
    CHECK(ref->is_host && fast->is_host && ref->kv_dtype == GN_F32 && fast->kv_dtype == GN_F32, "host f32");
    CHECK(!strcmp(ref->name, "cpu-ref") && !strcmp(fast->name, "cpu"), "names");
    gn_cpu_isa best = gn_cpu_isa_detect();
    printf("cpu isa: %s\n", gn_cpu_isa_name(best));
    for (int isa = GN_CPU_SCALAR; isa <= (int)best; isa++) {
        CHECK(gn_backend_cpu_set_isa(fast, (gn_cpu_isa)isa) == 0, "set isa");
        isa_name = gn_cpu_isa_name((gn_cpu_isa)isa);
        test_matmul();
        test_rows_ops();
        test_elementwise();
        test_log_softmax();
        test_rope();
        test_attention();
    }
    CHECK(gn_backend_cpu_set_isa(ref, GN_CPU_AVX2) == GN_EUNSUP, "ref has no isa levels");
    /* The allocation wrapper's failure reaches the caller as NULL + message. */
    gn_alloc_fail_after(0);
    void *p = fast->ops->alloc(fast, 100);
    CHECK(p == NULL && fast->err.code == GN_ENOMEM, "alloc failure");
    gn_alloc_fail_after(-1);
    for (long i = 0;; i++) { /* create fails cleanly at every allocation point */
        gn_alloc_fail_after(i);
        gn_backend *b = gn_backend_cpu_create(0, 2, &err);
        long made = gn_alloc_fail_after(-1);
        if (b) {
            b->ops->destroy(b);
            break;
        }
        CHECK(err.code == GN_ENOMEM, "create failure %ld: %s", i, err.msg);
        if (made > 100) break;
    }
    ref->ops->destroy(ref);
    fast->ops->destroy(fast);
    GN_TEST_MAIN_END();
}
