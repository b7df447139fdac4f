/* test_cuda_ops.c — every op of the CUDA backend against the CPU reference
 * table ("cpu-ref"), on random inputs of awkward shapes, every weight dtype,
 * GQA, several sequences of different lengths over scattered paged blocks,
 * the optional fused ops against the compositions they replace,
 * both matmul paths (GEMV kernel and cuBLAS), the KV pool layout, CUDA graph
 * capture/replay, and the error paths. Tolerance atol + rtol·|ref| per
 * element (gn_t_close prints the worst mismatch); each case's tolerance is
 * stated where it is checked, with the rounding that justifies it.
 * Exits 77 where no CUDA device is visible. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cpu.h"
#include "backend_cuda.h"
#include "gn_half.h"
#include "gn_test.h"

static gn_backend *g_gpu, *g_ref;
/* GN_TEST_CUDA_STANDIN=cpu: the fast CPU backend stands in for the GPU, to
 * check this harness itself on a machine without one (CUDA-only parts are
 * skipped). Never set in CI or check.sh. */
static int g_standin;

static int set_gemv_max(int n) { return g_standin ? 8 : gn_backend_cuda_set_gemv_max(g_gpu, n); }

/* ---- helpers ------------------------------------------------------------- */

static uint64_t g_rng = 0x2545f4914f6cdd1dull;
static float frand(void) { /* uniform in [-1, 1) */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}
static int irand(int n) { return (int)(((frand() + 1.0f) * 0.5f) * (float)n) % n; }

static float *rand_f32(size_t n, float scale) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = frand() * scale;
    return p;
}

/* Host weights of dtype dt, values uniform in [-scale, scale) (exactly
 * representable after rounding: both backends see the same numbers). */
static void *rand_w(gn_dtype dt, size_t n, float scale) {
    void *p = malloc(n * gn_dtype_size(dt) + 16);
    for (size_t i = 0; i < n; i++) {
        float v = frand() * scale;
        if (dt == GN_F32) ((float *)p)[i] = v;
        else if (dt == GN_F16) ((uint16_t *)p)[i] = gn_f32_to_f16(v);
        else ((uint16_t *)p)[i] = gn_f32_to_bf16(v);
    }
    return p;
}

/* alloc + upload on backend be (the CPU backend's memory is host memory). */
static void *put(gn_backend *be, const void *host, size_t nbytes) {
    void *d = be->ops->alloc(be, nbytes ? nbytes : 1);
    if (!d) {
        fprintf(stderr, "%s: alloc %zu: %s\n", be->name, nbytes, be->err.msg);
        exit(1);
    }
    if (host && nbytes && be->ops->upload(be, d, host, nbytes)) {
        fprintf(stderr, "%s: upload: %s\n", be->name, be->err.msg);
        exit(1);
    }
    return d;
}

static void get(gn_backend *be, void *host, const void *d, size_t nbytes) {
    if (be->ops->download(be, host, d, nbytes)) {
        fprintf(stderr, "%s: download: %s\n", be->name, be->err.msg);
        exit(1);
    }
}

static int op_ok(gn_backend *be, int rc, const char *what) {
    if (rc) fprintf(stderr, "%s: %s failed: %s\n", be->name, what, be->err.msg);
    CHECK(rc == 0, "%s on %s returned %d", what, be->name, rc);
    return rc == 0;
}

static const gn_dtype k_dtypes[3] = {GN_F32, GN_F16, GN_BF16};

/* ---- embed / get_rows / add / swiglu ---------------------------------- */

static void test_embed(void) {
    for (int di = 0; di < 3; di++) {
        gn_dtype dt = k_dtypes[di];
        int rows = 37, cols = 100, n = 13;
        void *tab = rand_w(dt, (size_t)rows * cols, 1.0f);
        int32_t tok[13];
        for (int i = 0; i < n; i++) tok[i] = irand(rows);
        tok[0] = rows - 1;
        float *got = malloc((size_t)n * cols * 4), *want = malloc((size_t)n * cols * 4);
        gn_backend *bes[2] = {g_gpu, g_ref};
        float *outs[2] = {got, want};
        for (int b = 0; b < 2; b++) {
            gn_backend *be = bes[b];
            gn_tensor t = {put(be, tab, (size_t)rows * cols * gn_dtype_size(dt)), dt, rows, cols};
            int32_t *dtok = put(be, tok, sizeof tok);
            float *dout = put(be, NULL, (size_t)n * cols * 4);
            op_ok(be, be->ops->embed(be, dout, &t, dtok, n), "embed");
            get(be, outs[b], dout, (size_t)n * cols * 4);
            be->ops->free(be, t.data);
            be->ops->free(be, dtok);
            be->ops->free(be, dout);
        }
        char what[64];
        snprintf(what, sizeof what, "embed %s", gn_dtype_name(dt));
        gn_t_close(what, got, want, (size_t)n * cols, 0.0f, 0.0f);
        free(tab), free(got), free(want);
    }
}

static void test_elementwise(void) {
    size_t n = 10007;
    float *g = rand_f32(n, 6.0f), *u = rand_f32(n, 2.0f);
    float *got = malloc(n * 4), *want = malloc(n * 4);
    gn_backend *bes[2] = {g_gpu, g_ref};
    float *outs[2] = {got, want};
    /* swiglu, out-of-place then in place (out == gate) */
    for (int inplace = 0; inplace < 2; inplace++) {
        for (int b = 0; b < 2; b++) {
            gn_backend *be = bes[b];
            float *dg = put(be, g, n * 4), *du = put(be, u, n * 4);
            float *dout = inplace ? dg : put(be, NULL, n * 4);
            op_ok(be, be->ops->swiglu(be, dout, dg, du, n), "swiglu");
            get(be, outs[b], dout, n * 4);
            if (!inplace) be->ops->free(be, dout);
            be->ops->free(be, dg);
            be->ops->free(be, du);
        }
        gn_t_close(inplace ? "swiglu in place" : "swiglu", got, want, n, 1e-6f, 1e-5f);
    }
    /* add */
    for (int b = 0; b < 2; b++) {
        gn_backend *be = bes[b];
        float *dx = put(be, g, n * 4), *dy = put(be, u, n * 4);
        op_ok(be, be->ops->add(be, dx, dy, n), "add");
        get(be, outs[b], dx, n * 4);
        be->ops->free(be, dx);
        be->ops->free(be, dy);
    }
    gn_t_close("add", got, want, n, 0.0f, 0.0f);
    /* get_rows: 7 rows of 333 picked from 50, with repeats */
    {
        int dim = 333, nr = 50, k = 7;
        float *x = rand_f32((size_t)nr * dim, 1.0f);
        int32_t rows[7] = {49, 0, 3, 3, 17, 48, 1};
        float *a = malloc((size_t)k * dim * 4), *bb = malloc((size_t)k * dim * 4);
        float *o2[2] = {a, bb};
        for (int b = 0; b < 2; b++) {
            gn_backend *be = bes[b];
            float *dx = put(be, x, (size_t)nr * dim * 4);
            int32_t *dr = put(be, rows, sizeof rows);
            float *dout = put(be, NULL, (size_t)k * dim * 4);
            op_ok(be, be->ops->get_rows(be, dout, dx, dr, k, dim), "get_rows");
            get(be, o2[b], dout, (size_t)k * dim * 4);
            be->ops->free(be, dx);
            be->ops->free(be, dr);
            be->ops->free(be, dout);
        }
        gn_t_close("get_rows", a, bb, (size_t)k * dim, 0.0f, 0.0f);
        free(x), free(a), free(bb);
    }
    free(g), free(u), free(got), free(want);
}

/* ---- rmsnorm ------------------------------------------------------------ */

static void test_rmsnorm(void) {
    const int dims[4] = {1000, 130, 4096, 64};
    for (int di = 0; di < 3; di++) {
        for (int k = 0; k < 4; k++) {
            gn_dtype dt = k_dtypes[di];
            int dim = dims[k], rows = k == 3 ? 67 : 5; /* 67 rows of 64: the q/k-norm shape */
            float *x = rand_f32((size_t)rows * dim, 3.0f);
            void *w = rand_w(dt, (size_t)dim, 1.5f);
            size_t nb = (size_t)rows * dim * 4;
            float *got = malloc(nb), *want = malloc(nb);
            for (int inplace = 0; inplace < 2; inplace++) {
                gn_backend *bes[2] = {g_gpu, g_ref};
                float *outs[2] = {got, want};
                for (int b = 0; b < 2; b++) {
                    gn_backend *be = bes[b];
                    gn_tensor tw = {put(be, w, (size_t)dim * gn_dtype_size(dt)), dt, 1, dim};
                    float *dx = put(be, x, nb);
                    float *dout = inplace ? dx : put(be, NULL, nb);
                    op_ok(be, be->ops->rmsnorm(be, dout, dx, &tw, rows, dim, 1e-5f), "rmsnorm");
                    get(be, outs[b], dout, nb);
                    if (!inplace) be->ops->free(be, dout);
                    be->ops->free(be, dx);
                    be->ops->free(be, tw.data);
                }
                char what[80];
                snprintf(what, sizeof what, "rmsnorm %s dim %d%s", gn_dtype_name(dt), dim,
                         inplace ? " in place" : "");
                gn_t_close(what, got, want, (size_t)rows * dim, 1e-5f, 1e-5f);
            }
            free(x), free(w), free(got), free(want);
        }
    }
}

/* ---- host memory -------------------------------------------------------- */

/* gn_backend_host_alloc gives page-locked memory on the GPU backend that
 * upload and download use like any host memory. */
static void test_host_memory(void) {
    if (g_standin) return;
    CHECK(g_gpu->ops->host_alloc && g_gpu->ops->host_free, "%s has no host_alloc", g_gpu->name);
    const size_t n = (size_t)3 << 20; /* 12 MiB: above the staged-upload size */
    float *src = gn_backend_host_alloc(g_gpu, n * 4), *dst = gn_backend_host_alloc(g_gpu, n * 4);
    CHECK(src && dst, "host_alloc: %s", g_gpu->err.msg);
    if (src && dst) {
        for (size_t i = 0; i < n; i++) src[i] = (float)i * 0.5f - 7.0f;
        float *d = put(g_gpu, src, n * 4);
        memset(dst, 0, n * 4);
        get(g_gpu, dst, d, n * 4);
        CHECK(memcmp(src, dst, n * 4) == 0, "page-locked round trip differs");
        g_gpu->ops->free(g_gpu, d);
    }
    gn_backend_host_free(g_gpu, src);
    gn_backend_host_free(g_gpu, dst);
    gn_backend_host_free(g_gpu, NULL);
}

/* ---- matmul --------------------------------------------------------------- */

/* One matmul case on both backends; `misalign` offsets the GPU weight pointer
 * by one element (forces the scalar GEMV kernel / unaligned cuBLAS). */
static void matmul_case(gn_dtype dt, int R, int C, int n, int with_bias, int gemv_max,
                        int misalign) {
    size_t es = gn_dtype_size(dt);
    void *w = rand_w(dt, (size_t)R * C, 1.0f / sqrtf((float)C) * 1.7f);
    void *bias = rand_w(dt, (size_t)R, 0.5f);
    float *x = rand_f32((size_t)n * C, 1.0f);
    size_t ny = (size_t)n * R;
    float *got = malloc(ny * 4), *want = malloc(ny * 4);
    gn_backend *bes[2] = {g_gpu, g_ref};
    float *outs[2] = {got, want};
    int old = set_gemv_max(gemv_max);
    for (int b = 0; b < 2; b++) {
        gn_backend *be = bes[b];
        int off = (b == 0 && misalign) ? (int)es : 0; /* one element: aligned to it, not to 16 */
        unsigned char *wbuf = put(be, NULL, (size_t)R * C * es + 16);
        if (be->ops->upload(be, wbuf + off, w, (size_t)R * C * es)) exit(1);
        gn_tensor tw = {wbuf + off, dt, R, C};
        gn_tensor tb = {with_bias ? put(be, bias, (size_t)R * es) : NULL, dt, 1, R};
        float *dx = put(be, x, (size_t)n * C * 4);
        float *dy = put(be, NULL, ny * 4);
        op_ok(be, be->ops->matmul(be, dy, dx, &tw, with_bias ? &tb : NULL, n), "matmul");
        get(be, outs[b], dy, ny * 4);
        be->ops->free(be, wbuf);
        if (tb.data) be->ops->free(be, tb.data);
        be->ops->free(be, dx);
        be->ops->free(be, dy);
    }
    set_gemv_max(old);
    /* GEMV kernel: fp32 x times exact weights, fp32 sums. cuBLAS: x is
     * rounded to the weight dtype first (bf16: 8 bits, f16: 11 bits). */
    int cublas = n > gemv_max;
    float atol = 2e-5f, rtol = 1e-4f;
    if (cublas && dt == GN_BF16) atol = 2e-2f, rtol = 1e-2f;
    if (cublas && dt == GN_F16) atol = 3e-3f, rtol = 2e-3f;
    char what[128];
    snprintf(what, sizeof what, "matmul %s R=%d C=%d n=%d%s via %s%s", gn_dtype_name(dt), R, C, n,
             with_bias ? " +bias" : "", cublas ? "cuBLAS" : "GEMV", misalign ? " (misaligned)" : "");
    gn_t_close(what, got, want, ny, atol, rtol);
    free(w), free(bias), free(x), free(got), free(want);
}

static void test_matmul(void) {
    for (int di = 0; di < 3; di++) {
        gn_dtype dt = k_dtypes[di];
        for (int n = 1; n <= 8; n++) matmul_case(dt, 256, 1024, n, n % 2, 8, 0); /* every GEMV width */
        matmul_case(dt, 4500, 264, 8, 1, 8, 0);  /* tall: 4 rows per warp */
        matmul_case(dt, 2200, 520, 6, 0, 8, 0);  /* 2 rows per warp (n 5..8) */
        matmul_case(dt, 2200, 136, 3, 1, 8, 0);  /* 2 rows per warp (n 3..4) */
        matmul_case(dt, 67, 130, 3, 1, 8, 0);    /* C % 8 != 0: scalar GEMV */
        matmul_case(dt, 300, 4104, 5, 1, 8, 0);  /* a partial second x tile */
        matmul_case(dt, 301, 9000, 1, 0, 8, 0);  /* three tiles, ragged rows */
        matmul_case(dt, 64, 512, 2, 1, 8, 1);    /* misaligned weights */
        matmul_case(dt, 1000, 520, 9, 1, 8, 0);  /* cuBLAS */
        matmul_case(dt, 513, 2048, 37, 0, 8, 0); /* cuBLAS, prefill-like */
        matmul_case(dt, 300, 1024, 16, 1, 8, 0); /* cuBLAS + bias */
        matmul_case(dt, 2048, 2048, 64, 0, 8, 0); /* cuBLAS: a 1B q_proj at batch 64 */
        matmul_case(dt, 129, 136, 4, 1, 0, 0);   /* cuBLAS forced at small n */
        matmul_case(dt, 96, 200, 12, 1, 0, 1);   /* cuBLAS, misaligned */
    }
}

/* ---- matmul_multi ------------------------------------------------------- */

/* n_mats products sharing x on the GPU through matmul_multi, against the
 * same products as separate GPU matmuls (the same kernels: equal up to
 * summation order) and against cpu-ref. `mixed`: weight 1 is F32 while the
 * others are dt (the backend then runs them one by one); `misalign` offsets
 * weight 0 by one element (no fused GEMV). */
static void multi_case(gn_dtype dt, int n_mats, const int *rows, int C, int n, int with_bias,
                       int gemv_max, int mixed, int misalign) {
    void *w[GN_MATMUL_MULTI_MAX], *bias[GN_MATMUL_MULTI_MAX];
    gn_dtype wdt[GN_MATMUL_MULTI_MAX];
    size_t ny[GN_MATMUL_MULTI_MAX], ny_all = 0;
    for (int i = 0; i < n_mats; i++) {
        wdt[i] = mixed && i == 1 ? GN_F32 : dt;
        w[i] = rand_w(wdt[i], (size_t)rows[i] * C, 1.7f / sqrtf((float)C));
        bias[i] = rand_w(wdt[i], (size_t)rows[i], 0.5f);
        ny[i] = (size_t)n * rows[i];
        ny_all += ny[i];
    }
    float *x = rand_f32((size_t)n * C, 1.0f);
    float *got = malloc(ny_all * 4), *sep = malloc(ny_all * 4), *want = malloc(ny_all * 4);
    gn_backend *bes[2] = {g_gpu, g_ref};
    int old = set_gemv_max(gemv_max);
    for (int b = 0; b < 2; b++) {
        gn_backend *be = bes[b];
        unsigned char *wbuf[GN_MATMUL_MULTI_MAX];
        gn_tensor tw[GN_MATMUL_MULTI_MAX], tb[GN_MATMUL_MULTI_MAX];
        const gn_tensor *ws[GN_MATMUL_MULTI_MAX], *bs[GN_MATMUL_MULTI_MAX];
        float *dy[GN_MATMUL_MULTI_MAX];
        for (int i = 0; i < n_mats; i++) {
            size_t es = gn_dtype_size(wdt[i]);
            int off = (b == 0 && misalign && i == 0) ? (int)es : 0;
            wbuf[i] = put(be, NULL, (size_t)rows[i] * C * es + 16);
            if (be->ops->upload(be, wbuf[i] + off, w[i], (size_t)rows[i] * C * es)) exit(1);
            tw[i] = (gn_tensor){wbuf[i] + off, wdt[i], rows[i], C};
            /* Bias on every other product; one present entry with data NULL. */
            int has = with_bias && i % 2 == 0;
            tb[i] = (gn_tensor){has ? put(be, bias[i], (size_t)rows[i] * es) : NULL, wdt[i], 1, rows[i]};
            ws[i] = &tw[i];
            bs[i] = &tb[i];
            dy[i] = put(be, NULL, ny[i] * 4);
        }
        float *dx = put(be, x, (size_t)n * C * 4);
        size_t o = 0;
        if (b == 0) {
            CHECK(be->ops->matmul_multi != NULL, "%s has no matmul_multi", be->name);
            if (be->ops->matmul_multi)
                op_ok(be, be->ops->matmul_multi(be, n_mats, dy, dx, ws, with_bias ? bs : NULL, n), "matmul_multi");
            for (int i = 0; i < n_mats; i++) {
                get(be, got + o, dy[i], ny[i] * 4);
                o += ny[i];
            }
        }
        o = 0;
        for (int i = 0; i < n_mats; i++) {
            op_ok(be, be->ops->matmul(be, dy[i], dx, ws[i], with_bias ? bs[i] : NULL, n), "matmul");
            get(be, (b == 0 ? sep : want) + o, dy[i], ny[i] * 4);
            o += ny[i];
        }
        for (int i = 0; i < n_mats; i++) {
            be->ops->free(be, wbuf[i]);
            if (tb[i].data) be->ops->free(be, tb[i].data);
            be->ops->free(be, dy[i]);
        }
        be->ops->free(be, dx);
    }
    set_gemv_max(old);
    int cublas = n > gemv_max;
    float atol = 2e-5f, rtol = 1e-4f;
    if (cublas && dt == GN_BF16) atol = 2e-2f, rtol = 1e-2f;
    if (cublas && dt == GN_F16) atol = 3e-3f, rtol = 2e-3f;
    char what[160];
    snprintf(what, sizeof what, "matmul_multi %s x%d (rows %d..) C=%d n=%d%s via %s%s%s", gn_dtype_name(dt), n_mats,
             rows[0], C, n, with_bias ? " +bias" : "", cublas ? "cuBLAS" : "GEMV", mixed ? " (mixed dtypes)" : "",
             misalign ? " (misaligned)" : "");
    gn_t_close(what, got, want, ny_all, atol, rtol);
    snprintf(what + strlen(what), sizeof what - strlen(what), " = separate matmuls");
    gn_t_close(what, got, sep, ny_all, 1e-6f, 1e-6f);
    for (int i = 0; i < n_mats; i++) free(w[i]), free(bias[i]);
    free(x), free(got), free(sep), free(want);
}

static void test_matmul_multi(void) {
    const int qkv[3] = {256, 64, 64}, gu[2] = {1000, 1000}, four[4] = {100, 37, 300, 8};
    for (int di = 0; di < 3; di++) {
        gn_dtype dt = k_dtypes[di];
        for (int n = 1; n <= 8; n += (n < 2 ? 1 : 3)) /* 1, 2, 5, 8 */
            multi_case(dt, 3, qkv, 512, n, n % 2, 8, 0, 0);
        multi_case(dt, 2, gu, 264, 1, 0, 8, 0, 0);
        multi_case(dt, 2, gu, 264, 4, 0, 8, 0, 0);
        multi_case(dt, 4, four, 136, 3, 1, 8, 0, 0);  /* ragged segments */
        multi_case(dt, 1, four, 4104, 2, 1, 8, 0, 0); /* one product, two x tiles */
        multi_case(dt, 3, qkv, 512, 12, 1, 8, 0, 0);  /* cuBLAS: x converted once */
        multi_case(dt, 2, gu, 264, 5, 0, 0, 0, 0);    /* cuBLAS forced */
        if (dt != GN_F32) {
            multi_case(dt, 3, qkv, 512, 2, 1, 8, 1, 0);  /* mixed dtypes: one by one */
            multi_case(dt, 3, qkv, 512, 10, 1, 8, 1, 0); /* the same on cuBLAS */
        }
        multi_case(dt, 3, qkv, 520, 3, 1, 8, 0, 1); /* misaligned weight 0 */
    }
    /* Refusals. */
    gn_backend *be = g_gpu;
    if (!be->ops->matmul_multi) return;
    float *d = put(be, NULL, 4096 * 4);
    gn_tensor a = {d, GN_F32, 8, 16}, b = {d, GN_F32, 8, 24};
    const gn_tensor *ws[5] = {&a, &b, &a, &a, &a};
    float *ys[5] = {d, d, d, d, d};
    CHECK(be->ops->matmul_multi(be, 2, ys, d, ws, NULL, 1) == GN_EINVAL, "matmul_multi: column mismatch accepted");
    ws[1] = &a;
    CHECK(be->ops->matmul_multi(be, 5, ys, d, ws, NULL, 1) == GN_EINVAL, "matmul_multi: 5 products accepted");
    CHECK(be->ops->matmul_multi(be, 0, ys, d, ws, NULL, 1) == GN_EINVAL, "matmul_multi: 0 products accepted");
    be->ops->free(be, d);
}

/* ---- rope ----------------------------------------------------------------- */

static void test_rope(void) {
    const int hds[3] = {64, 128, 80};
    for (int k = 0; k < 3; k++) {
        int n_tok = 7, n_heads = 5, hd = hds[k], half = hd / 2;
        size_t nx = (size_t)n_tok * n_heads * hd;
        float *x = rand_f32(nx, 2.0f);
        float *inv = malloc((size_t)half * 4);
        for (int i = 0; i < half; i++) inv[i] = (float)pow(10000.0, -2.0 * i / hd);
        int32_t pos[7] = {0, 1, 2, 77, 1000, 4095, 5000};
        float *got = malloc(nx * 4), *want = malloc(nx * 4);
        gn_backend *bes[2] = {g_gpu, g_ref};
        float *outs[2] = {got, want};
        for (int b = 0; b < 2; b++) {
            gn_backend *be = bes[b];
            float *dx = put(be, x, nx * 4), *dinv = put(be, inv, (size_t)half * 4);
            int32_t *dpos = put(be, pos, sizeof pos);
            op_ok(be, be->ops->rope(be, dx, n_tok, n_heads, hd, dpos, dinv), "rope");
            get(be, outs[b], dx, nx * 4);
            be->ops->free(be, dx);
            be->ops->free(be, dinv);
            be->ops->free(be, dpos);
        }
        char what[64];
        snprintf(what, sizeof what, "rope head_dim %d", hd);
        gn_t_close(what, got, want, nx, 2e-6f, 2e-6f);
        free(x), free(inv), free(got), free(want);
    }
}

/* ---- fused optional ops (add_rmsnorm, rope_qk) --------------------------- */

/* GN_CUDA_FUSE=0 in the environment: the backend was created without them. */
static int fuse_env_off(void) {
    const char *env = getenv("GN_CUDA_FUSE");
    return env && !strcmp(env, "0");
}

/* Each fused op on the GPU against the composition it stands for on cpu-ref
 * (add then rmsnorm; rope on q then on k). The CUDA backend must provide
 * them; a stand-in without them is skipped. */
static void test_add_rmsnorm(void) {
    if (!g_gpu->ops->add_rmsnorm) {
        CHECK(g_standin || fuse_env_off(), "%s has no add_rmsnorm", g_gpu->name);
        return;
    }
    const int dims[4] = {4096, 1000, 130, 64};
    for (int di = 0; di < 3; di++) {
        for (int k = 0; k < 4; k++) {
            gn_dtype dt = k_dtypes[di];
            int dim = dims[k], rows = k == 3 ? 67 : 5;
            size_t ne = (size_t)rows * dim, nb = ne * 4;
            float *x = rand_f32(ne, 3.0f), *y = rand_f32(ne, 2.0f);
            void *w = rand_w(dt, (size_t)dim, 1.5f);
            float *gx = malloc(nb), *go = malloc(nb), *wx = malloc(nb), *wo = malloc(nb);
            for (int out_is_y = 0; out_is_y < 2; out_is_y++) {
                gn_backend *bes[2] = {g_gpu, g_ref};
                float *xs[2] = {gx, wx}, *os[2] = {go, wo};
                for (int b = 0; b < 2; b++) {
                    gn_backend *be = bes[b];
                    gn_tensor tw = {put(be, w, (size_t)dim * gn_dtype_size(dt)), dt, 1, dim};
                    float *dx = put(be, x, nb), *dy = put(be, y, nb);
                    float *dout = out_is_y ? dy : put(be, NULL, nb);
                    if (b == 0) {
                        op_ok(be, be->ops->add_rmsnorm(be, dx, dy, dout, &tw, rows, dim, 1e-5f), "add_rmsnorm");
                    } else {
                        op_ok(be, be->ops->add(be, dx, dy, ne), "add");
                        op_ok(be, be->ops->rmsnorm(be, dout, dx, &tw, rows, dim, 1e-5f), "rmsnorm");
                    }
                    get(be, xs[b], dx, nb);
                    get(be, os[b], dout, nb);
                    if (!out_is_y) be->ops->free(be, dout);
                    be->ops->free(be, dx);
                    be->ops->free(be, dy);
                    be->ops->free(be, tw.data);
                }
                char what[96];
                snprintf(what, sizeof what, "add_rmsnorm %s dim %d%s: x", gn_dtype_name(dt), dim,
                         out_is_y ? " (out = y)" : "");
                gn_t_close(what, gx, wx, ne, 0.0f, 0.0f); /* one fp32 add: exact */
                snprintf(what, sizeof what, "add_rmsnorm %s dim %d%s: out", gn_dtype_name(dt), dim,
                         out_is_y ? " (out = y)" : "");
                gn_t_close(what, go, wo, ne, 1e-5f, 1e-5f); /* as rmsnorm */
            }
            free(x), free(y), free(w), free(gx), free(go), free(wx), free(wo);
        }
    }
    /* out aliasing x is refused. */
    float *d = put(g_gpu, NULL, 64 * 4);
    gn_tensor tw = {put(g_gpu, NULL, 64 * 4), GN_F32, 1, 64};
    CHECK(g_gpu->ops->add_rmsnorm(g_gpu, d, d + 32, d, &tw, 1, 32, 1e-5f) == GN_EINVAL,
          "add_rmsnorm with out == x accepted");
    g_gpu->ops->free(g_gpu, d);
    g_gpu->ops->free(g_gpu, tw.data);
}

static void test_rope_qk(void) {
    if (!g_gpu->ops->rope_qk) {
        CHECK(g_standin || fuse_env_off(), "%s has no rope_qk", g_gpu->name);
        return;
    }
    const int hds[3] = {64, 128, 80};
    const int heads[3][2] = {{8, 2}, {32, 8}, {5, 5}};
    for (int k = 0; k < 3; k++) {
        int n_tok = 7, nh = heads[k][0], nkv = heads[k][1], hd = hds[k], half = hd / 2;
        size_t nq = (size_t)n_tok * nh * hd, nk = (size_t)n_tok * nkv * hd;
        float *q = rand_f32(nq, 2.0f), *kk = rand_f32(nk, 2.0f);
        float *inv = malloc((size_t)half * 4);
        for (int i = 0; i < half; i++) inv[i] = (float)pow(10000.0, -2.0 * i / hd);
        int32_t pos[7] = {0, 1, 2, 77, 1000, 4095, 5000};
        float *gq = malloc(nq * 4), *gk = malloc(nk * 4), *wq = malloc(nq * 4), *wk = malloc(nk * 4);
        gn_backend *bes[2] = {g_gpu, g_ref};
        float *qs[2] = {gq, wq}, *ks[2] = {gk, wk};
        for (int b = 0; b < 2; b++) {
            gn_backend *be = bes[b];
            float *dq = put(be, q, nq * 4), *dk = put(be, kk, nk * 4), *dinv = put(be, inv, (size_t)half * 4);
            int32_t *dpos = put(be, pos, sizeof pos);
            if (b == 0) {
                op_ok(be, be->ops->rope_qk(be, dq, dk, n_tok, nh, nkv, hd, dpos, dinv), "rope_qk");
            } else {
                op_ok(be, be->ops->rope(be, dq, n_tok, nh, hd, dpos, dinv), "rope q");
                op_ok(be, be->ops->rope(be, dk, n_tok, nkv, hd, dpos, dinv), "rope k");
            }
            get(be, qs[b], dq, nq * 4);
            get(be, ks[b], dk, nk * 4);
            be->ops->free(be, dq), be->ops->free(be, dk), be->ops->free(be, dinv), be->ops->free(be, dpos);
        }
        char what[80];
        snprintf(what, sizeof what, "rope_qk head_dim %d heads %d/%d: q", hd, nh, nkv);
        gn_t_close(what, gq, wq, nq, 2e-6f, 2e-6f); /* as rope */
        snprintf(what, sizeof what, "rope_qk head_dim %d heads %d/%d: k", hd, nh, nkv);
        gn_t_close(what, gk, wk, nk, 2e-6f, 2e-6f);
        free(q), free(kk), free(inv), free(gq), free(gk), free(wq), free(wk);
    }
}

/* ---- log_softmax ------------------------------------------------------- */

static void test_log_softmax(void) {
    struct { int rows, cols, ld; } cs[3] = {{4, 1000, 1003}, {3, 32000, 32000}, {2, 151936, 152064}};
    for (int k = 0; k < 3; k++) {
        int rows = cs[k].rows, cols = cs[k].cols, ld = cs[k].ld;
        float *x = rand_f32((size_t)rows * ld, 8.0f);
        x[5] = -INFINITY; /* a masked logit */
        size_t no = (size_t)rows * cols;
        float *got = malloc(no * 4), *want = malloc(no * 4);
        int inplace = cols == ld;
        gn_backend *bes[2] = {g_gpu, g_ref};
        float *outs[2] = {got, want};
        for (int b = 0; b < 2; b++) {
            gn_backend *be = bes[b];
            float *dx = put(be, x, (size_t)rows * ld * 4);
            float *dout = inplace ? dx : put(be, NULL, no * 4);
            op_ok(be, be->ops->log_softmax(be, dout, dx, rows, cols, ld), "log_softmax");
            get(be, outs[b], dout, no * 4);
            if (!inplace) be->ops->free(be, dout);
            be->ops->free(be, dx);
        }
        CHECK(isinf(got[5]) && got[5] < 0, "log_softmax of -inf is %g", got[5]);
        got[5] = want[5] = 0.0f;
        char what[80];
        snprintf(what, sizeof what, "log_softmax %dx%d (ld %d)%s", rows, cols, ld,
                 inplace ? " in place" : "");
        gn_t_close(what, got, want, no, 2e-5f, 1e-6f);
        free(x), free(got), free(want);
    }
}

/* ---- attention over the paged pool ------------------------------------- */

typedef struct {
    int n_layers, n_kv, n_heads, hd, bs, n_blocks, max_blocks, window;
    gn_dtype gpu_kv;
    int rope; /* 1: rope_attention on the GPU vs rope q, rope k, attention on cpu-ref */
} attn_cfg;

/* Runs a prefill of three sequences of different lengths in one batch, then
 * four decode steps of all three (on CUDA: the KV write folded into the
 * attention kernel unless set_fuse(0)), on both backends,
 * optionally with RoPE first (c.rope: the GPU's rope_attention, which on
 * decode steps rotates inside the attention kernel), comparing every step's
 * output and finally the pool contents (layout check, exact for an F32
 * pool without RoPE). Blocks are handed out in a scrambled order. */
static void attn_case(attn_cfg c) {
    enum { NS = 3 };
    const int layer = c.n_layers - 1;
    const int prefill[NS] = {37, 5, 20};
    const int decode_steps = 4;
    size_t kvrow = (size_t)c.n_kv * c.hd, qrow = (size_t)c.n_heads * c.hd;
    size_t pool_elems = (size_t)c.n_blocks * c.n_layers * 2 * c.bs * kvrow;

    /* Block tables: a scrambled permutation of the pool's blocks. */
    int32_t *table = malloc((size_t)NS * c.max_blocks * 4);
    int *perm = malloc((size_t)c.n_blocks * sizeof *perm);
    for (int i = 0; i < c.n_blocks; i++) perm[i] = i;
    for (int i = c.n_blocks - 1; i > 0; i--) {
        int j = irand(i + 1), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    for (int i = 0; i < NS * c.max_blocks; i++) table[i] = i < c.n_blocks ? perm[i] : -1;

    gn_backend *bes[2] = {g_gpu, g_ref};
    gn_kv_pool pools[2];
    for (int b = 0; b < 2; b++) {
        gn_dtype dt = b == 0 ? c.gpu_kv : GN_F32;
        pools[b] = (gn_kv_pool){put(bes[b], NULL, pool_elems * gn_dtype_size(dt)), dt, c.n_layers,
                                c.n_kv, c.hd, c.bs, c.n_blocks};
    }
    int32_t *dtable[2];
    for (int b = 0; b < 2; b++) dtable[b] = put(bes[b], table, (size_t)NS * c.max_blocks * 4);
    float *inv = malloc((size_t)(c.hd / 2) * 4), *dinv[2];
    for (int i = 0; i < c.hd / 2; i++) inv[i] = (float)pow(10000.0, -2.0 * i / c.hd);
    for (int b = 0; b < 2; b++) dinv[b] = put(bes[b], inv, (size_t)(c.hd / 2) * 4);
    /* rope_attention must be there unless fused ops are off (environment or
     * test_unfused's gn_backend_cuda_set_fuse(0), which also drops add_rmsnorm). */
    if (c.rope && !g_gpu->ops->rope_attention)
        CHECK(g_standin || fuse_env_off() || !g_gpu->ops->add_rmsnorm, "%s has no rope_attention",
              g_gpu->name);

    int len[NS] = {0, 0, 0};
    float tol_a = c.gpu_kv == GN_F32 ? 1e-5f : c.gpu_kv == GN_F16 ? 2e-3f : 1.5e-2f;
    float tol_r = c.gpu_kv == GN_F32 ? 1e-4f : c.gpu_kv == GN_F16 ? 2e-3f : 1.5e-2f;
    for (int step = 0; step <= decode_steps; step++) {
        int nt = 0;
        int32_t tok_seq[64], tok_pos[64], seq_len[NS];
        for (int s = 0; s < NS; s++) {
            int add = step == 0 ? prefill[s] : 1;
            for (int i = 0; i < add; i++) {
                tok_seq[nt] = s;
                tok_pos[nt] = len[s] + i;
                nt++;
            }
            seq_len[s] = len[s] + add;
        }
        int max_len = 0;
        for (int s = 0; s < NS; s++) max_len = seq_len[s] > max_len ? seq_len[s] : max_len;
        float *q = rand_f32((size_t)nt * qrow, 1.5f), *k = rand_f32((size_t)nt * kvrow, 1.5f);
        float *v = rand_f32((size_t)nt * kvrow, 1.0f);
        float *got = malloc((size_t)nt * qrow * 4), *want = malloc((size_t)nt * qrow * 4);
        float *outs[2] = {got, want};
        for (int b = 0; b < 2; b++) {
            gn_backend *be = bes[b];
            int32_t *dseq = put(be, tok_seq, (size_t)nt * 4), *dpos = put(be, tok_pos, (size_t)nt * 4);
            int32_t *dlen = put(be, seq_len, sizeof seq_len);
            float *dq = put(be, q, (size_t)nt * qrow * 4), *dk = put(be, k, (size_t)nt * kvrow * 4);
            float *dv = put(be, v, (size_t)nt * kvrow * 4), *dout = put(be, NULL, (size_t)nt * qrow * 4);
            gn_attn_batch ab = {nt, NS, dseq, dpos, dlen, dtable[b], c.max_blocks, max_len};
            float sc = 1.0f / sqrtf((float)c.hd);
            if (c.rope && b == 0 && be->ops->rope_attention) {
                op_ok(be, be->ops->rope_attention(be, dout, dq, dk, dv, &pools[b], layer, &ab, c.n_heads,
                                                  c.window, sc, dinv[b]),
                      "rope_attention");
            } else {
                if (c.rope) {
                    op_ok(be, be->ops->rope(be, dq, nt, c.n_heads, c.hd, dpos, dinv[b]), "rope q");
                    op_ok(be, be->ops->rope(be, dk, nt, c.n_kv, c.hd, dpos, dinv[b]), "rope k");
                }
                op_ok(be, be->ops->attention(be, dout, dq, dk, dv, &pools[b], layer, &ab, c.n_heads,
                                             c.window, sc),
                      "attention");
            }
            get(be, outs[b], dout, (size_t)nt * qrow * 4);
            be->ops->free(be, dseq), be->ops->free(be, dpos), be->ops->free(be, dlen);
            be->ops->free(be, dq), be->ops->free(be, dk), be->ops->free(be, dv);
            be->ops->free(be, dout);
        }
        char what[160];
        snprintf(what, sizeof what,
                 "%sattention %s kv, hd %d, heads %d/%d, block %d, window %d, step %d (%d tokens)",
                 c.rope ? "rope_" : "", gn_dtype_name(c.gpu_kv), c.hd, c.n_heads, c.n_kv, c.bs, c.window, step,
                 nt);
        gn_t_close(what, got, want, (size_t)nt * qrow, tol_a, tol_r);
        for (int s = 0; s < NS; s++) len[s] = seq_len[s];
        free(q), free(k), free(v), free(got), free(want);
    }

    /* The pools must hold the same rows at the same places (layout formula). */
    {
        size_t es = gn_dtype_size(c.gpu_kv);
        unsigned char *raw = malloc(pool_elems * es);
        float *a = malloc(pool_elems * 4), *bb = malloc(pool_elems * 4);
        get(g_gpu, raw, pools[0].data, pool_elems * es);
        get(g_ref, bb, pools[1].data, pool_elems * 4);
        for (size_t i = 0; i < pool_elems; i++) {
            if (c.gpu_kv == GN_F32) a[i] = ((float *)raw)[i];
            else if (c.gpu_kv == GN_F16) a[i] = gn_f16_to_f32(((uint16_t *)raw)[i]);
            else a[i] = gn_bf16_to_f32(((uint16_t *)raw)[i]);
        }
        /* Only the written rows are defined: compare those. */
        size_t nbad = 0, nchk = 0;
        float worst = 0;
        for (int s = 0; s < NS; s++)
            for (int p = 0; p < len[s]; p++)
                for (int kv = 0; kv < 2; kv++) {
                    int blk = table[s * c.max_blocks + p / c.bs];
                    size_t base = ((((size_t)blk * c.n_layers + layer) * 2 + kv) * c.bs + p % c.bs) * kvrow;
                    for (size_t e = 0; e < kvrow; e++) {
                        float d = fabsf(a[base + e] - bb[base + e]);
                        /* F32 without RoPE: a copy, exact. With RoPE the
                         * GPU's sincosf and cpu-ref's differ by an ulp or so. */
                        float tol = c.gpu_kv == GN_F32 ? (c.rope ? 2e-6f * (1 + fabsf(bb[base + e])) : 0.0f)
                                                       : (c.gpu_kv == GN_F16 ? 1e-3f : 8e-3f) * (1 + fabsf(bb[base + e]));
                        nchk++;
                        if (!(d <= tol)) nbad++;
                        if (d > worst) worst = d;
                    }
                }
        CHECK(nbad == 0, "KV pool (%s): %zu of %zu written elements differ (worst %g)",
              gn_dtype_name(c.gpu_kv), nbad, nchk, worst);
        free(raw), free(a), free(bb);
    }
    for (int b = 0; b < 2; b++) {
        bes[b]->ops->free(bes[b], pools[b].data);
        bes[b]->ops->free(bes[b], dtable[b]);
        bes[b]->ops->free(bes[b], dinv[b]);
    }
    free(table), free(perm), free(inv);
}

static void test_attention(void) {
    /* n_layers, n_kv, n_heads, hd, bs, n_blocks, max_blocks, window, gpu kv dtype, rope */
    attn_cfg cases[] = {
        {2, 2, 6, 64, 16, 24, 8, 0, GN_F32, 0},   /* GQA 3, the layout check is exact */
        {2, 2, 6, 64, 16, 24, 8, 0, GN_F16, 0},
        {2, 2, 6, 64, 16, 24, 8, 0, GN_BF16, 0},
        {3, 1, 4, 128, 5, 40, 12, 0, GN_F32, 0},  /* MQA, odd block size, last layer */
        {1, 4, 4, 80, 7, 30, 10, 0, GN_F16, 0},   /* head_dim 80, MHA */
        {2, 2, 8, 128, 16, 24, 8, 9, GN_F32, 0},  /* sliding window 9 */
        {2, 2, 8, 256, 4, 60, 20, 6, GN_F16, 0},  /* head_dim 256 (the maximum) */
        /* rope_attention (RoPE inside the attention kernel on decode steps) */
        {2, 2, 6, 64, 16, 24, 8, 0, GN_F32, 1},
        {2, 2, 8, 128, 16, 24, 8, 9, GN_F16, 1},
        {3, 1, 4, 80, 5, 40, 12, 0, GN_BF16, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (!g_standin || cases[i].gpu_kv == GN_F32) attn_case(cases[i]);
}

/* ---- errors, extras --------------------------------------------------- */

static void test_errors(void) {
    if (g_standin) return;
    gn_err e = {0};
    gn_backend *none = gn_backend_cuda_create(999, &e);
    CHECK(none == NULL && e.code == GN_ENOTFOUND && strstr(e.msg, "cuda:999"), "create(999): %s",
          e.msg);

    /* An impossible allocation fails cleanly and the backend stays usable. */
    void *huge = g_gpu->ops->alloc(g_gpu, (size_t)1 << 52);
    CHECK(huge == NULL && g_gpu->err.code == GN_EBACKEND && strstr(g_gpu->err.msg, "cudaMalloc"),
          "huge alloc: %s", g_gpu->err.msg);
    printf("expected failure reads: %s\n", g_gpu->err.msg);

    float one[4] = {1, 2, 3, 4}, back[4] = {0};
    float *d = put(g_gpu, one, sizeof one);
    float *d2 = put(g_gpu, one, sizeof one);
    CHECK(g_gpu->ops->add(g_gpu, d, d2, 4) == 0, "add after failed alloc: %s", g_gpu->err.msg);
    get(g_gpu, back, d, sizeof back);
    CHECK(back[3] == 8.0f, "add after failed alloc gave %g", back[3]);

    gn_tensor bad = {d, GN_BF16, 0, 4};
    CHECK(g_gpu->ops->matmul(g_gpu, d2, d, &bad, NULL, 1) == GN_EINVAL, "matmul with 0 rows");
    CHECK(g_gpu->ops->log_softmax(g_gpu, d, d, 1, 2, 4) == GN_EINVAL,
          "in-place log_softmax with truncation must be refused");
    gn_kv_pool kv = {d, GN_F16, 1, 1, 512, 16, 1};
    gn_attn_batch ab = {1, 1, (int32_t *)d, (int32_t *)d, (int32_t *)d, (int32_t *)d, 1, 1};
    CHECK(g_gpu->ops->attention(g_gpu, d, d, d, d, &kv, 0, &ab, 1, 0, 1.0f) == GN_EUNSUP,
          "head_dim 512 must be refused");
    CHECK(g_gpu->ops->synchronize(g_gpu) == 0, "synchronize: %s", g_gpu->err.msg);
    g_gpu->ops->free(g_gpu, d);
    g_gpu->ops->free(g_gpu, d2);

    /* Extras used by the benchmark. */
    size_t n = 1 << 20;
    uint16_t *rw = put(g_gpu, NULL, n * 2);
    CHECK(gn_backend_cuda_fill_random(g_gpu, rw, GN_BF16, n, 7, 0.5f, 0.0f) == 0, "fill_random: %s",
          g_gpu->err.msg);
    uint16_t *h = malloc(n * 2);
    get(g_gpu, h, rw, n * 2);
    double sum = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        float f = gn_bf16_to_f32(h[i]);
        sum += f;
        if (fabsf(f) > mx) mx = fabsf(f);
    }
    CHECK(fabs(sum / n) < 0.01 && mx <= 0.5 && mx > 0.49, "fill_random: mean %g max %g", sum / n, mx);
    free(h);
    g_gpu->ops->free(g_gpu, rw);
    double gbps = 0;
    CHECK(gn_backend_cuda_copy_bandwidth(g_gpu, 64u << 20, 5, &gbps) == 0 && gbps > 10,
          "copy bandwidth %g GB/s: %s", gbps, g_gpu->err.msg);
    char name[128];
    size_t fr = 0, tot = 0;
    CHECK(gn_backend_cuda_device_info(g_gpu, name, sizeof name, &fr, &tot) == 0, "device_info");
    printf("device: %s, %.1f of %.1f GiB free, D2D copy %.0f GB/s (read+write)\n", name,
           fr / 1073741824.0, tot / 1073741824.0, gbps);
}

/* ---- CUDA graph capture and replay ---------------------------------------- */

/* Records add + matmul (GEMV at n = 4, cuBLAS at n = 12) into a graph,
 * replays it on fresh inputs and compares with the same ops run eagerly;
 * checks that host-synchronous calls are refused while capturing and that a
 * failed capture can be discarded. */
static void test_graph(void) {
    if (g_standin) return;
    const int R = 200, C = 512;
    gn_backend *be = g_gpu;
    void *w = rand_w(GN_BF16, (size_t)R * C, 0.1f);
    gn_tensor tw = {put(be, w, (size_t)R * C * 2), GN_BF16, R, C};
    for (int n = 4; n <= 12; n += 8) {
        size_t nx = (size_t)n * C, ny = (size_t)n * R;
        float *x2 = rand_f32(nx, 1.0f);
        float *dx = put(be, NULL, nx * 4), *dx2 = put(be, x2, nx * 4), *dy = put(be, NULL, ny * 4);
        float *want = malloc(ny * 4), *got = malloc(ny * 4);
        float *x = rand_f32(nx, 1.0f);
        /* Eager run first: also grows the cuBLAS conversion scratch. */
        be->ops->upload(be, dx, x, nx * 4);
        op_ok(be, be->ops->add(be, dx, dx2, nx), "add");
        op_ok(be, be->ops->matmul(be, dy, dx, &tw, NULL, n), "matmul");
        get(be, want, dy, ny * 4);
        int slot = n;
        CHECK(gn_backend_cuda_capture_begin(be) == 0, "capture_begin: %s", be->err.msg);
        CHECK(be->ops->upload(be, dx, x, nx * 4) == GN_EINVAL, "upload while capturing must be refused");
        CHECK(be->ops->synchronize(be) == GN_EINVAL, "synchronize while capturing must be refused");
        op_ok(be, be->ops->add(be, dx, dx2, nx), "add (captured)");
        op_ok(be, be->ops->matmul(be, dy, dx, &tw, NULL, n), "matmul (captured)");
        CHECK(gn_backend_cuda_capture_end(be, slot) == 0, "capture_end: %s", be->err.msg);
        for (int rep = 0; rep < 2; rep++) {
            float *xr = rand_f32(nx, 1.0f);
            /* reference: eager */
            be->ops->upload(be, dx, xr, nx * 4);
            be->ops->add(be, dx, dx2, nx);
            be->ops->matmul(be, dy, dx, &tw, NULL, n);
            get(be, want, dy, ny * 4);
            /* replay */
            be->ops->upload(be, dx, xr, nx * 4);
            float *poison = malloc(ny * 4);
            for (size_t i = 0; i < ny; i++) poison[i] = NAN;
            be->ops->upload(be, dy, poison, ny * 4);
            free(poison);
            CHECK(gn_backend_cuda_graph_launch(be, slot) == 0, "graph_launch: %s", be->err.msg);
            get(be, got, dy, ny * 4);
            char what[64];
            snprintf(what, sizeof what, "graph replay %d (n=%d)", rep, n);
            gn_t_close(what, got, want, ny, 1e-5f, 1e-5f); /* same kernels: equal in practice */
            free(xr);
        }
        be->ops->free(be, dx), be->ops->free(be, dx2), be->ops->free(be, dy);
        free(x), free(x2), free(want), free(got);
    }
    /* A capture that fails (the cuBLAS scratch would have to grow) is
     * discarded and leaves the backend usable. n is chosen from the scratch
     * the earlier tests left, so that this matmul certainly needs more. */
    {
        int n = (int)(gn_backend_cuda_scratch_bytes(be) / ((size_t)C * 2)) + 64;
        float *dx = put(be, NULL, (size_t)n * C * 4), *dy = put(be, NULL, (size_t)n * R * 4);
        CHECK(gn_backend_cuda_capture_begin(be) == 0, "capture_begin: %s", be->err.msg);
        int rc = be->ops->matmul(be, dy, dx, &tw, NULL, n);
        CHECK(rc == GN_EINVAL && strstr(be->err.msg, "capturing"), "growing scratch while capturing: %d %s",
              rc, be->err.msg);
        CHECK(gn_backend_cuda_capture_end(be, -1) == 0, "discarding a capture: %s", be->err.msg);
        CHECK(gn_backend_cuda_graph_launch(be, GN_GRAPH_SLOTS - 1) == GN_EINVAL, "empty slot must be refused");
        CHECK(be->ops->matmul(be, dy, dx, &tw, NULL, 2) == 0 && be->ops->synchronize(be) == 0,
              "backend unusable after a discarded capture: %s", be->err.msg);
        be->ops->free(be, dx), be->ops->free(be, dy);
    }
    be->ops->free(be, tw.data);
    free(w);
}

/* The same recording through the vtable (what the runner uses): q/k/v as one
 * matmul_multi, rmsnorm and add recorded with graph_begin / graph_end,
 * replayed on fresh inputs against the ops run eagerly, at a GEMV and at a
 * cuBLAS batch size; plus the refusals while recording and a bad slot. */
static void test_graph_vtable(void) {
    gn_backend *be = g_gpu;
    const gn_backend_ops *o = be->ops;
    if (!o->graph_begin || !o->graph_end || !o->graph_launch) {
        CHECK(g_standin, "%s has no graph hooks", be->name);
        return;
    }
    const int C = 256, rows[3] = {256, 64, 64};
    void *w[3];
    gn_tensor tw[3];
    const gn_tensor *ws[3];
    for (int i = 0; i < 3; i++) {
        w[i] = rand_w(GN_BF16, (size_t)rows[i] * C, 0.1f);
        tw[i] = (gn_tensor){put(be, w[i], (size_t)rows[i] * C * 2), GN_BF16, rows[i], C};
        ws[i] = &tw[i];
    }
    void *nw = rand_w(GN_F32, C, 1.0f);
    gn_tensor tn = {put(be, nw, (size_t)C * 4), GN_F32, 1, C};
    for (int n = 3; n <= 11; n += 8) {
        size_t nx = (size_t)n * C, nyt = (size_t)n * (256 + 64 + 64);
        float *dx = put(be, NULL, nx * 4), *dxb = put(be, NULL, nx * 4);
        float *dy = put(be, NULL, nyt * 4);
        float *ys[3] = {dy, dy + (size_t)n * 256, dy + (size_t)n * 320};
        float *want = malloc(nyt * 4), *got = malloc(nyt * 4), *xh = malloc(nx * 4);
        /* The step: xb = rmsnorm(x); y = xb · {wq, wk, wv}; x += xb. */
#define STEP()                                                                   \
    (o->rmsnorm(be, dxb, dx, &tn, n, C, 1e-5f) || o->matmul_multi(be, 3, ys, dxb, ws, NULL, n) || \
     o->add(be, dx, dxb, nx))
        for (size_t i = 0; i < nx; i++) xh[i] = frand();
        o->upload(be, dx, xh, nx * 4);
        CHECK(STEP() == 0, "eager step (n=%d): %s", n, be->err.msg); /* grows the scratch */
        int slot = 40 + n;
        CHECK(o->graph_begin(be) == 0, "graph_begin: %s", be->err.msg);
        CHECK(o->upload(be, dx, xh, nx * 4) == GN_EINVAL, "upload while recording must be refused");
        CHECK(o->download(be, xh, dx, nx * 4) == GN_EINVAL, "download while recording must be refused");
        CHECK(o->alloc(be, 64) == NULL, "alloc while recording must be refused");
        int rc = STEP();
        CHECK(rc == 0, "recorded step (n=%d): %s", n, be->err.msg);
        CHECK(o->graph_end(be, rc ? -1 : slot) == 0, "graph_end: %s", be->err.msg);
        for (int rep = 0; rep < 3 && rc == 0; rep++) {
            for (size_t i = 0; i < nx; i++) xh[i] = frand();
            o->upload(be, dx, xh, nx * 4);
            CHECK(STEP() == 0, "eager step: %s", be->err.msg);
            get(be, want, dy, nyt * 4);
            float *x2 = malloc(nx * 4);
            get(be, x2, dx, nx * 4);
            o->upload(be, dx, xh, nx * 4);
            float *poison = malloc(nyt * 4);
            for (size_t i = 0; i < nyt; i++) poison[i] = NAN;
            o->upload(be, dy, poison, nyt * 4);
            free(poison);
            CHECK(o->graph_launch(be, slot) == 0, "graph_launch: %s", be->err.msg);
            get(be, got, dy, nyt * 4);
            char what[80];
            snprintf(what, sizeof what, "vtable graph replay %d (n=%d): q/k/v", rep, n);
            gn_t_close(what, got, want, nyt, 1e-6f, 1e-6f);
            get(be, xh, dx, nx * 4);
            snprintf(what, sizeof what, "vtable graph replay %d (n=%d): residual", rep, n);
            gn_t_close(what, xh, x2, nx, 0.0f, 0.0f);
            free(x2);
        }
#undef STEP
        be->ops->free(be, dx), be->ops->free(be, dxb), be->ops->free(be, dy);
        free(want), free(got), free(xh);
    }
    CHECK(o->graph_begin(be) == 0, "graph_begin: %s", be->err.msg);
    CHECK(o->graph_begin(be) != 0, "nested graph_begin must be refused");
    CHECK(o->graph_end(be, GN_GRAPH_SLOTS) != 0, "graph_end to slot %d must be refused", GN_GRAPH_SLOTS);
    CHECK(o->graph_launch(be, GN_GRAPH_SLOTS) != 0, "graph_launch of slot %d must be refused", GN_GRAPH_SLOTS);
    CHECK(o->synchronize(be) == 0, "backend unusable after a refused graph_end: %s", be->err.msg);
    for (int i = 0; i < 3; i++) be->ops->free(be, tw[i].data), free(w[i]);
    be->ops->free(be, tn.data);
    free(nw);
}

/* Programmatic dependent launch off: the kernels that read weights before
 * their wait (GEMV) and the attention chain once more without it, so that a
 * difference between the two launch modes shows up as a failure here. */
static void test_pdl_modes(void) {
    if (g_standin) return;
    int was = gn_backend_cuda_set_pdl(g_gpu, 1);
    printf("programmatic dependent launch: %s\n", was ? "on" : "off (unsupported here or GN_CUDA_PDL=0)");
    gn_backend_cuda_set_pdl(g_gpu, 0);
    matmul_case(GN_BF16, 4500, 264, 8, 1, 8, 0);
    matmul_case(GN_BF16, 301, 9000, 1, 0, 8, 0);
    const int qkv[3] = {256, 64, 64};
    multi_case(GN_BF16, 3, qkv, 512, 1, 1, 8, 0, 0);
    attn_case((attn_cfg){2, 2, 6, 64, 16, 24, 8, 0, GN_F16, 0});
    attn_case((attn_cfg){2, 2, 6, 64, 16, 24, 8, 0, GN_F16, 1});
    gn_backend_cuda_set_pdl(g_gpu, was);
}

/* Fused decode ops off: the op table loses add_rmsnorm / rope_qk and decode
 * steps write K/V with the separate kernel; attention still matches cpu-ref
 * (the decode steps of attn_case otherwise run the fused KV write). */
static void test_unfused(void) {
    if (g_standin) return;
    int was = gn_backend_cuda_set_fuse(g_gpu, 0);
    CHECK(was == !fuse_env_off(), "fused ops %s at creation (GN_CUDA_FUSE %s)", was ? "on" : "off",
          fuse_env_off() ? "=0" : "unset");
    CHECK(!g_gpu->ops->add_rmsnorm && !g_gpu->ops->rope_qk && !g_gpu->ops->rope_attention,
          "unfused table still has fused ops");
    attn_case((attn_cfg){2, 2, 6, 64, 16, 24, 8, 0, GN_F16, 0});
    attn_case((attn_cfg){2, 2, 8, 128, 16, 24, 8, 9, GN_F32, 0});
    attn_case((attn_cfg){2, 2, 6, 64, 16, 24, 8, 0, GN_F32, 1}); /* no rope_attention: composition */
    gn_backend_cuda_set_fuse(g_gpu, was);
    CHECK(!was || (g_gpu->ops->add_rmsnorm && g_gpu->ops->rope_qk && g_gpu->ops->rope_attention),
          "fused ops not restored");
}

int main(void) {
    const char *standin = getenv("GN_TEST_CUDA_STANDIN");
    g_standin = standin && !strcmp(standin, "cpu");
    if (!g_standin && gn_backend_cuda_device_count() == 0) GN_TEST_SKIP("no CUDA device");
    gn_err e = {0};
    g_gpu = g_standin ? gn_backend_cpu_create(0, 0, &e) : gn_backend_cuda_create(0, &e);
    if (!g_gpu) {
        fprintf(stderr, "cuda:0: %s\n", e.msg);
        return 1;
    }
    g_ref = gn_backend_cpu_create(1, 1, &e);
    if (!g_ref) {
        fprintf(stderr, "cpu-ref: %s\n", e.msg);
        return 1;
    }
    if (!g_standin)
        CHECK(strcmp(g_gpu->name, "cuda:0") == 0 && !g_gpu->is_host, "backend name %s", g_gpu->name);
    test_embed();
    test_host_memory();
    test_elementwise();
    test_rmsnorm();
    test_matmul();
    test_matmul_multi();
    test_rope();
    test_add_rmsnorm();
    test_rope_qk();
    test_log_softmax();
    test_attention();
    test_errors();
    test_graph();
    test_graph_vtable();
    test_pdl_modes();
    test_unfused();
    g_gpu->ops->destroy(g_gpu);
    g_ref->ops->destroy(g_ref);
    GN_TEST_MAIN_END();
}
