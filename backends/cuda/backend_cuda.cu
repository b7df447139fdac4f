/* backend_cuda.cu — the CUDA backend object: creation, memory, transfers,
 * the op table and the cuBLAS projections. Kernels live in kernels_*.cu. */
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cuda_common.cuh"

extern "C" {
#include "gn_alloc.h"
}

enum {
    GN_CU_STAGING_BYTES = 8 << 20,  /* pinned ring for small uploads */
    GN_CU_STAGED_MAX = 1 << 20,     /* uploads up to this size go through the ring */
    GN_CU_CUBLAS_WS = 32 << 20,     /* cuBLAS workspace (NVIDIA's recommendation for Hopper) */
    GN_CU_GEMV_MAX_LIMIT = 8,       /* the GEMV kernel handles at most this many rows of x */
    GN_CU_GEMV_MAX_DEFAULT = 4,     /* GEMV for n <= 4: it beats cuBLAS at n = 2..4 on the 7B q/k/v and
                                       4096-row shapes and loses at n = 8 (H200, bench_gpu) */
};

extern "C" int gn_cuda_fail(gn_backend *be, const char *stmt, const char *file, int line,
                            const char *what) {
    const char *base = strrchr(file, '/');
    return gn_errf(&be->err, GN_EBACKEND, "%s: %s failed at %s:%d: %s", be->name ? be->name : "cuda",
                   stmt, base ? base + 1 : file, line, what ? what : "unknown error");
}

/* Makes the backend's device current for this thread. cudaGetDevice is a
 * thread-local read; cudaSetDevice only runs when another device is current. */
static int cu_enter(gn_backend *be) {
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur == gn_cu(be)->device) return 0;
    GN_CU_CHECK(be, cudaSetDevice(gn_cu(be)->device));
    return 0;
}

/* ---- lifetime --------------------------------------------------------- */

static void cu_destroy(gn_backend *be) {
    if (!be) return;
    gn_cuda *c = gn_cu(be);
    if (c) {
        /* Nothing here can report a failure: errors are cleared and ignored. */
        cudaSetDevice(c->device);
        if (c->capturing) {
            cudaGraph_t g = NULL;
            if (cudaStreamEndCapture(c->stream, &g) == cudaSuccess && g) cudaGraphDestroy(g);
        }
        if (c->stream) cudaStreamSynchronize(c->stream);
        gn_cu_prof_destroy(be);
        for (int i = 0; i < GN_GRAPH_SLOTS; i++)
            if (c->graphs[i]) cudaGraphExecDestroy(c->graphs[i]);
        if (c->cublas) cublasDestroy(c->cublas);
        cudaFree(c->cublas_ws);
        cudaFree(c->scratch);
        for (int i = 0; i < c->n_retired; i++) cudaFree(c->retired[i]);
        cudaFreeHost(c->staging);
        if (c->stream) cudaStreamDestroy(c->stream);
        cudaGetLastError();
        gn_free(c);
    }
    gn_free(be);
}

/* ---- memory ------------------------------------------------------------- */

/* Host-synchronous calls cannot be recorded into a graph. */
static int cu_not_capturing(gn_backend *be, const char *op) {
    if (!gn_cu(be)->capturing) return 0;
    return gn_errf(&be->err, GN_EINVAL, "%s: %s is not allowed while capturing a CUDA graph", be->name, op);
}

static void *cu_alloc(gn_backend *be, size_t nbytes) {
    if (cu_not_capturing(be, "alloc") || cu_enter(be)) return NULL;
    void *p = NULL;
    /* Never hand out NULL for a zero-byte request: NULL means failure. */
    int rc = [&]() -> int {
        GN_CU_CHECK(be, cudaMalloc(&p, nbytes ? nbytes : 256));
        return 0;
    }();
    if (rc) {
        cudaGetLastError(); /* an out-of-memory error is not sticky: clear it */
        gn_err_prefix(&be->err, "allocating %zu bytes: ", nbytes);
        return NULL;
    }
    return p;
}

/* Page-locked host memory (downloads into it run at full PCIe speed). */
static void *cu_host_alloc(gn_backend *be, size_t nbytes) {
    if (cu_not_capturing(be, "host_alloc") || cu_enter(be)) return NULL;
    void *p = NULL;
    int rc = [&]() -> int {
        GN_CU_CHECK(be, cudaMallocHost(&p, nbytes ? nbytes : 1));
        return 0;
    }();
    if (rc) {
        cudaGetLastError();
        gn_err_prefix(&be->err, "allocating %zu bytes of page-locked host memory: ", nbytes);
        return NULL;
    }
    return p;
}

static void cu_host_free(gn_backend *be, void *p) {
    if (!p) return;
    cudaSetDevice(gn_cu(be)->device);
    if (cudaFreeHost(p) != cudaSuccess) cudaGetLastError();
}

static void cu_free(gn_backend *be, void *p) {
    if (!p) return;
    gn_cuda *c = gn_cu(be);
    if (cu_not_capturing(be, "free")) return; /* leaks p rather than breaking the capture */
    cudaSetDevice(c->device);
    /* cudaFree waits for the device; a failure here (a sticky fault from an
     * earlier kernel) has already been or will be reported by another op. */
    if (cudaFree(p) != cudaSuccess) cudaGetLastError();
}

static int cu_synchronize(gn_backend *be) {
    gn_cuda *c = gn_cu(be);
    if (cu_not_capturing(be, "synchronize")) return GN_EINVAL;
    if (cu_enter(be)) return GN_EBACKEND;
    GN_CU_CHECK(be, cudaStreamSynchronize(c->stream));
    c->staging_used = 0; /* every staged upload has been consumed */
    gn_cu_prof_end(be);
    return 0;
}

static int cu_upload(gn_backend *be, void *dst, const void *src_host, size_t nbytes) {
    gn_cuda *c = gn_cu(be);
    if (!nbytes) return 0;
    if (cu_not_capturing(be, "upload")) return GN_EINVAL;
    if (cu_enter(be)) return GN_EBACKEND;
    GN_CU_PROF(be, "upload");
    if (nbytes <= GN_CU_STAGED_MAX && c->staging) {
        /* Small per-step uploads (token ids, positions, block tables) go through
         * pinned memory: a pageable cudaMemcpyAsync would synchronise the
         * stream and stall the launch pipeline. A region is reused only after
         * the stream has been synchronised. */
        size_t need = (nbytes + 255) & ~(size_t)255;
        if (c->staging_used + need > c->staging_cap) {
            GN_CU_CHECK(be, cudaStreamSynchronize(c->stream));
            c->staging_used = 0;
        }
        unsigned char *slot = c->staging + c->staging_used;
        memcpy(slot, src_host, nbytes);
        GN_CU_CHECK(be, cudaMemcpyAsync(dst, slot, nbytes, cudaMemcpyHostToDevice, c->stream));
        c->staging_used += need;
        return 0;
    }
    /* Large uploads (weights): the caller may unmap or reuse src as soon as we
     * return, so wait for the copy. */
    GN_CU_CHECK(be, cudaMemcpyAsync(dst, src_host, nbytes, cudaMemcpyHostToDevice, c->stream));
    GN_CU_CHECK(be, cudaStreamSynchronize(c->stream));
    c->staging_used = 0;
    return 0;
}

static int cu_download(gn_backend *be, void *dst_host, const void *src, size_t nbytes) {
    gn_cuda *c = gn_cu(be);
    if (!nbytes) return cu_synchronize(be);
    if (cu_not_capturing(be, "download")) return GN_EINVAL;
    if (cu_enter(be)) return GN_EBACKEND;
    GN_CU_PROF(be, "download %zu KiB", nbytes >> 10);
    GN_CU_CHECK(be, cudaMemcpyAsync(dst_host, src, nbytes, cudaMemcpyDeviceToHost, c->stream));
    GN_CU_CHECK(be, cudaStreamSynchronize(c->stream));
    c->staging_used = 0;
    gn_cu_prof_end(be);
    return 0;
}

/* ---- projections -------------------------------------------------------- */

/* Grows the conversion scratch to at least nbytes (rarely: sizes settle after
 * the first prefill; at least doubling, so few buffers are ever made). While
 * recorded graphs exist, the outgrown buffer is kept until destroy, since a
 * graph may still write it; otherwise it is freed (cudaFree waits for kernels
 * still reading it). */
static int cu_scratch(gn_backend *be, size_t nbytes) {
    gn_cuda *c = gn_cu(be);
    if (nbytes <= c->scratch_cap) return 0;
    if (c->capturing)
        return gn_errf(&be->err, GN_EINVAL,
                       "%s: matmul needs %zu bytes of scratch (has %zu) while capturing a CUDA graph: "
                       "run one step of this shape eagerly first", be->name, nbytes, c->scratch_cap);
    size_t cap = nbytes + nbytes / 4;
    if (cap < 2 * c->scratch_cap) cap = 2 * c->scratch_cap;
    if (cap < ((size_t)1 << 20)) cap = (size_t)1 << 20;
    void *p = NULL;
    GN_CU_CHECK(be, cudaMalloc(&p, cap));
    if (c->scratch) {
        if (c->n_graphs > 0 && c->n_retired < (int)(sizeof c->retired / sizeof c->retired[0])) {
            c->retired[c->n_retired++] = c->scratch;
        } else if (c->n_graphs > 0) {
            cudaFree(p);
            return gn_errf(&be->err, GN_ENOMEM, "%s: conversion scratch grown too often", be->name);
        } else {
            GN_CU_CHECK(be, cudaFree(c->scratch));
        }
    }
    c->scratch = p;
    c->scratch_cap = cap;
    return 0;
}

/* Shape checks shared by matmul and matmul_multi. */
static int cu_check_w(gn_backend *be, const char *op, const gn_tensor *w, const gn_tensor *bias, int n) {
    if (n < 0 || !w || !w->data || w->rows <= 0 || w->cols <= 0 || w->rows > INT_MAX || w->cols > INT_MAX)
        return gn_errf(&be->err, GN_EINVAL, "%s: %s: bad shape n=%d w=(%lld, %lld)", be->name, op, n,
                       w ? (long long)w->rows : 0LL, w ? (long long)w->cols : 0LL);
    if (bias && bias->data && (size_t)bias->rows * (size_t)bias->cols != (size_t)w->rows)
        return gn_errf(&be->err, GN_EINVAL, "%s: %s: bias has %lld elements for %lld rows", be->name, op,
                       (long long)(bias->rows * bias->cols), (long long)w->rows);
    return 0;
}

/* y = x·wᵀ (+ bias) through cuBLAS; for 16-bit weights `xc` already holds x
 * converted to w's dtype (n x C elements), for F32 weights it is unused. */
static int cu_gemm(gn_backend *be, float *y, const float *x, const void *xc, const gn_tensor *w,
                   const gn_tensor *bias, int n) {
    gn_cuda *c = gn_cu(be);
    const int R = (int)w->rows, C = (int)w->cols;
    const float one = 1.0f, zero = 0.0f;
    /* Row-major y(n,R) = x(n,C)·Wᵀ is column-major y(R,n) = Wc(C,R)ᵀ · xc(C,n). */
    if (w->dtype == GN_F32) {
        GN_CU_CHECK(be, cublasSgemm(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, R, n, C, &one,
                                    (const float *)w->data, C, x, C, &zero, y, R));
    } else {
        const cudaDataType_t t = w->dtype == GN_BF16 ? CUDA_R_16BF : CUDA_R_16F;
        GN_CU_CHECK(be, cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, R, n, C, &one, w->data, t,
                                     C, xc, t, C, &zero, y, CUDA_R_32F, R,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    if (bias && bias->data) return gn_cuda_bias_add(be, y, bias, n, R);
    return 0;
}

/* Converts x (n x C floats) into the scratch as dtype dt (F16/BF16). */
static int cu_convert_x(gn_backend *be, const float *x, gn_dtype dt, int n, int C) {
    size_t elems = (size_t)n * (size_t)C;
    int rc = cu_scratch(be, elems * 2);
    if (rc) return rc;
    return gn_cuda_convert_f32(be, gn_cu(be)->scratch, dt, x, elems);
}

static int cu_matmul(gn_backend *be, float *y, const float *x, const gn_tensor *w,
                     const gn_tensor *bias, int n) {
    gn_cuda *c = gn_cu(be);
    int rc = cu_check_w(be, "matmul", w, bias, n);
    if (rc || n == 0) return rc;
    if (cu_enter(be)) return GN_EBACKEND;
    GN_CU_PROF(be, "matmul %lldx%lld n=%d", (long long)w->rows, (long long)w->cols, n);
    if (n <= c->gemv_max) return gn_cuda_gemv(be, y, x, w, bias, n);
    if (w->dtype != GN_F32 && (rc = cu_convert_x(be, x, w->dtype, n, (int)w->cols))) return rc;
    return cu_gemm(be, y, x, c->scratch, w, bias, n);
}

/* Several weights sharing x: one GEMV launch over all of them (n <=
 * gemv_max), or x converted once and one GEMM per weight. Sets the kernels
 * cannot take together (mixed dtypes, unaligned weights) run one by one. */
static int cu_matmul_multi(gn_backend *be, int n_mats, float *const *ys, const float *x,
                           const gn_tensor *const *ws, const gn_tensor *const *biases, int n) {
    gn_cuda *c = gn_cu(be);
    if (n_mats < 1 || n_mats > GN_MATMUL_MULTI_MAX || !ys || !ws)
        return gn_errf(&be->err, GN_EINVAL, "%s: matmul_multi: %d products (1 .. %d)", be->name, n_mats,
                       GN_MATMUL_MULTI_MAX);
    bool same = true;
    for (int i = 0; i < n_mats; i++) {
        int rc = cu_check_w(be, "matmul_multi", ws[i], biases ? biases[i] : NULL, n);
        if (rc) return rc;
        if (ws[i]->cols != ws[0]->cols)
            return gn_errf(&be->err, GN_EINVAL, "%s: matmul_multi: product %d has %lld columns, product 0 %lld",
                           be->name, i, (long long)ws[i]->cols, (long long)ws[0]->cols);
        if (ws[i]->dtype != ws[0]->dtype) same = false;
    }
    if (n == 0) return 0;
    if (cu_enter(be)) return GN_EBACKEND;
    GN_CU_PROF(be, "matmul_multi %dx %lldx%lld n=%d", n_mats, (long long)ws[0]->rows, (long long)ws[0]->cols, n);
    if (n <= c->gemv_max) {
        bool fuse = same && n_mats > 1;
        for (int i = 0; i < n_mats && fuse; i++) fuse = gn_cuda_gemv_ok(x, ws[i]) != 0;
        if (fuse) return gn_cuda_gemv_multi(be, n_mats, ys, x, ws, biases, n);
        for (int i = 0; i < n_mats; i++) {
            int rc = gn_cuda_gemv(be, ys[i], x, ws[i], biases ? biases[i] : NULL, n);
            if (rc) return rc;
        }
        return 0;
    }
    const gn_dtype dt = ws[0]->dtype;
    if (same && dt != GN_F32) {
        int rc = cu_convert_x(be, x, dt, n, (int)ws[0]->cols);
        if (rc) return rc;
    }
    for (int i = 0; i < n_mats; i++) {
        const gn_tensor *b = biases ? biases[i] : NULL;
        int rc = same ? cu_gemm(be, ys[i], x, c->scratch, ws[i], b, n) : cu_matmul(be, ys[i], x, ws[i], b, n);
        if (rc) return rc;
    }
    return 0;
}

/* Ops with argument checks in front of the kernels (the kernels trust their
 * launch arguments). */
static int cu_embed(gn_backend *be, float *out, const gn_tensor *table, const int32_t *tokens,
                    int n) {
    if (n <= 0) return n < 0 ? gn_errf(&be->err, GN_EINVAL, "%s: embed: n=%d", be->name, n) : 0;
    if (cu_enter(be)) return GN_EBACKEND;
    GN_CU_PROF(be, "embed n=%d", n);
    return gn_cuda_embed(be, out, table, tokens, n);
}

static int cu_rmsnorm(gn_backend *be, float *out, const float *x, const gn_tensor *w, int n_rows,
                      int dim, float eps) {
    if (n_rows < 0 || dim <= 0 || (size_t)w->rows * (size_t)w->cols != (size_t)dim)
        return gn_errf(&be->err, GN_EINVAL, "%s: rmsnorm: bad shape rows=%d dim=%d", be->name,
                       n_rows, dim);
    if (n_rows == 0) return 0;
    if (cu_enter(be)) return GN_EBACKEND;
    GN_CU_PROF(be, "rmsnorm %dx%d", n_rows, dim);
    return gn_cuda_rmsnorm(be, out, x, w, n_rows, dim, eps);
}

static int cu_rope(gn_backend *be, float *x, int n_tok, int n_heads, int head_dim,
                   const int32_t *pos, const float *inv_freq) {
    if (n_tok < 0 || n_heads <= 0 || head_dim <= 0 || head_dim % 2)
        return gn_errf(&be->err, GN_EINVAL, "%s: rope: bad shape tok=%d heads=%d head_dim=%d",
                       be->name, n_tok, n_heads, head_dim);
    if (n_tok == 0) return 0;
    if (cu_enter(be)) return GN_EBACKEND;
    GN_CU_PROF(be, "rope n=%d", n_tok);
    return gn_cuda_rope(be, x, n_tok, n_heads, head_dim, pos, inv_freq);
}

static int cu_add_rmsnorm(gn_backend *be, float *x, const float *y, float *out, const gn_tensor *w,
                          int n_rows, int dim, float eps) {
    if (n_rows < 0 || dim <= 0 || !w || (size_t)w->rows * (size_t)w->cols != (size_t)dim || out == x)
        return gn_errf(&be->err, GN_EINVAL, "%s: add_rmsnorm: bad shape rows=%d dim=%d%s", be->name,
                       n_rows, dim, out == x ? " (out aliases x)" : "");
    if (n_rows == 0) return 0;
    if (cu_enter(be)) return GN_EBACKEND;
    GN_CU_PROF(be, "add_rmsnorm %dx%d", n_rows, dim);
    return gn_cuda_add_rmsnorm(be, x, y, out, w, n_rows, dim, eps);
}

static int cu_rope_qk(gn_backend *be, float *q, float *k, int n_tok, int n_heads, int n_kv_heads,
                      int head_dim, const int32_t *pos, const float *inv_freq) {
    if (n_tok < 0 || n_heads <= 0 || n_kv_heads <= 0 || head_dim <= 0 || head_dim % 2)
        return gn_errf(&be->err, GN_EINVAL, "%s: rope_qk: bad shape tok=%d heads=%d/%d head_dim=%d",
                       be->name, n_tok, n_heads, n_kv_heads, head_dim);
    if (n_tok == 0) return 0;
    if (cu_enter(be)) return GN_EBACKEND;
    GN_CU_PROF(be, "rope_qk n=%d", n_tok);
    return gn_cuda_rope_qk(be, q, k, n_tok, n_heads, n_kv_heads, head_dim, pos, inv_freq);
}

static int cu_swiglu(gn_backend *be, float *out, const float *gate, const float *up, size_t n) {
    if (!n) return 0;
    if (cu_enter(be)) return GN_EBACKEND;
    GN_CU_PROF(be, "swiglu %zu", n);
    return gn_cuda_swiglu(be, out, gate, up, n);
}

static int cu_add(gn_backend *be, float *x, const float *y, size_t n) {
    if (!n) return 0;
    if (cu_enter(be)) return GN_EBACKEND;
    GN_CU_PROF(be, "add %zu", n);
    return gn_cuda_add(be, x, y, n);
}

static int cu_get_rows(gn_backend *be, float *out, const float *x, const int32_t *rows, int n,
                       int dim) {
    if (n < 0 || dim <= 0)
        return gn_errf(&be->err, GN_EINVAL, "%s: get_rows: n=%d dim=%d", be->name, n, dim);
    if (n == 0) return 0;
    if (cu_enter(be)) return GN_EBACKEND;
    GN_CU_PROF(be, "get_rows n=%d", n);
    return gn_cuda_get_rows(be, out, x, rows, n, dim);
}

static int cu_attention(gn_backend *be, float *out, const float *q, const float *k, const float *v,
                        const gn_kv_pool *kv, int layer, const gn_attn_batch *b, int n_heads,
                        int sliding_window, float scale) {
    if (b->n_tokens < 0) return gn_errf(&be->err, GN_EINVAL, "%s: attention: n_tokens < 0", be->name);
    if (b->n_tokens == 0) return 0;
    if (cu_enter(be)) return GN_EBACKEND;
    GN_CU_PROF(be, "attention n=%d seqs=%d", b->n_tokens, b->n_seqs);
    return gn_cuda_attention(be, out, q, k, v, kv, layer, b, n_heads, sliding_window, scale);
}

static int cu_rope_attention(gn_backend *be, float *out, float *q, float *k, const float *v,
                             const gn_kv_pool *kv, int layer, const gn_attn_batch *b, int n_heads,
                             int sliding_window, float scale, const float *inv_freq) {
    if (b->n_tokens < 0 || !inv_freq)
        return gn_errf(&be->err, GN_EINVAL, "%s: rope_attention: n_tokens %d, inv_freq %p", be->name,
                       b->n_tokens, (const void *)inv_freq);
    if (b->n_tokens == 0) return 0;
    if (cu_enter(be)) return GN_EBACKEND;
    GN_CU_PROF(be, "rope_attention n=%d seqs=%d", b->n_tokens, b->n_seqs);
    return gn_cuda_rope_attention(be, out, q, k, v, kv, layer, b, n_heads, sliding_window, scale, inv_freq);
}

static int cu_log_softmax(gn_backend *be, float *out, const float *x, int n_rows, int n_cols,
                          int ld_x) {
    if (n_rows < 0 || n_cols <= 0 || n_cols > ld_x || (out == x && n_cols != ld_x))
        return gn_errf(&be->err, GN_EINVAL, "%s: log_softmax: rows=%d cols=%d ld=%d%s", be->name,
                       n_rows, n_cols, ld_x, out == x ? " (in place)" : "");
    if (n_rows == 0) return 0;
    if (cu_enter(be)) return GN_EBACKEND;
    GN_CU_PROF(be, "log_softmax %dx%d", n_rows, n_cols);
    return gn_cuda_log_softmax(be, out, x, n_rows, n_cols, ld_x);
}

static int cu_graph_begin(gn_backend *be) { return gn_backend_cuda_capture_begin(be); }
static int cu_graph_end(gn_backend *be, int slot) { return gn_backend_cuda_capture_end(be, slot); }
static int cu_graph_launch(gn_backend *be, int slot) { return gn_backend_cuda_graph_launch(be, slot); }

static const gn_backend_ops cu_ops = {
    cu_destroy,      cu_alloc,       cu_free,      cu_upload,    cu_download,     cu_synchronize,
    cu_embed,        cu_rmsnorm,     cu_matmul,    cu_rope,      cu_swiglu,       cu_add,
    cu_get_rows,     cu_attention,   cu_log_softmax, cu_matmul_multi, cu_graph_begin, cu_graph_end,
    cu_graph_launch, cu_add_rmsnorm, cu_rope_qk,     cu_rope_attention, cu_host_alloc, cu_host_free,
};

/* The same without the optional fused ops (gn_backend_cuda_set_fuse(be, 0)). */
static const gn_backend_ops cu_ops_unfused = {
    cu_destroy,      cu_alloc,       cu_free,      cu_upload,    cu_download,     cu_synchronize,
    cu_embed,        cu_rmsnorm,     cu_matmul,    cu_rope,      cu_swiglu,       cu_add,
    cu_get_rows,     cu_attention,   cu_log_softmax, cu_matmul_multi, cu_graph_begin, cu_graph_end,
    cu_graph_launch, NULL,           NULL,           NULL,              cu_host_alloc, cu_host_free,
};

/* ---- programmatic dependent launch ---------------------------------------- */

/* Whether kernels launched with the PDL attribute work here, eagerly and
 * captured into a graph after a host-to-device copy: runs a tiny chain
 * (copy 5 in, two kernels adding 1, copy out) both ways and checks 7. Any
 * failure (an old driver, no sm_90, a capture the driver refuses) turns PDL
 * off; the error is cleared, and the backend works as before. */
static int cu_probe_pdl(gn_backend *be) {
    gn_cuda *c = gn_cu(be);
    int *d = NULL, ok = 0;
    int *h = (int *)c->staging; /* pinned; unused until the first upload */
    cudaGraph_t g = NULL;
    cudaGraphExec_t ge = NULL;
    c->pdl = 1;
    int rc = [&]() -> int {
        GN_CU_CHECK(be, cudaMalloc(&d, sizeof(int)));
        for (int mode = 0; mode < 2; mode++) {
            h[0] = 5;
            h[1] = 0;
            if (mode == 1) GN_CU_CHECK(be, cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
            GN_CU_CHECK(be, cudaMemcpyAsync(d, h, sizeof(int), cudaMemcpyHostToDevice, c->stream));
            if (gn_cuda_probe_step(be, d) || gn_cuda_probe_step(be, d)) return GN_EBACKEND;
            GN_CU_CHECK(be, cudaMemcpyAsync(h + 1, d, sizeof(int), cudaMemcpyDeviceToHost, c->stream));
            if (mode == 1) {
                cudaError_t e = cudaStreamEndCapture(c->stream, &g);
                GN_CU_CHECK(be, e);
                GN_CU_CHECK(be, cudaGraphInstantiate(&ge, g, 0));
                GN_CU_CHECK(be, cudaGraphLaunch(ge, c->stream));
            }
            GN_CU_CHECK(be, cudaStreamSynchronize(c->stream));
            if (h[1] != 7) return gn_errf(&be->err, GN_EBACKEND, "PDL probe %d read %d", mode, h[1]);
        }
        return 0;
    }();
    ok = rc == 0;
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(c->stream, &st) == cudaSuccess && st != cudaStreamCaptureStatusNone) {
        cudaGraph_t junk = NULL;
        if (cudaStreamEndCapture(c->stream, &junk) == cudaSuccess && junk) cudaGraphDestroy(junk);
    }
    if (ge) cudaGraphExecDestroy(ge);
    if (g) cudaGraphDestroy(g);
    cudaStreamSynchronize(c->stream);
    cudaFree(d);
    cudaGetLastError(); /* none of this is sticky */
    c->pdl = 0;
    c->pdl_ok = ok;
    if (!ok) gn_err_clear(&be->err);
    return ok;
}

/* ---- public entry points ---------------------------------------------- */

extern "C" int gn_backend_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" gn_backend *gn_backend_cuda_create(int device, gn_err *err) {
    int count = gn_backend_cuda_device_count();
    if (device < 0 || device >= count) {
        gn_errf(err, GN_ENOTFOUND, "cuda:%d: no such CUDA device (%d visible)", device, count);
        return NULL;
    }
    gn_backend *be = (gn_backend *)gn_calloc(1, sizeof *be);
    gn_cuda *c = (gn_cuda *)gn_calloc(1, sizeof *c);
    if (!be || !c) {
        gn_free(be);
        gn_free(c);
        gn_errf(err, GN_ENOMEM, "cuda:%d: out of host memory", device);
        return NULL;
    }
    c->device = device;
    snprintf(c->name, sizeof c->name, "cuda:%d", device);
    c->gemv_max = GN_CU_GEMV_MAX_DEFAULT;
    const char *env = getenv("GN_CUDA_GEMV_MAX");
    if (env && *env) {
        int v = atoi(env);
        c->gemv_max = v < 0 ? 0 : v > GN_CU_GEMV_MAX_LIMIT ? GN_CU_GEMV_MAX_LIMIT : v;
    }
    const char *fuse = getenv("GN_CUDA_FUSE");
    c->fuse = !(fuse && !strcmp(fuse, "0"));
    be->ops = c->fuse ? &cu_ops : &cu_ops_unfused;
    be->name = c->name;
    be->kv_dtype = GN_F16;
    be->is_host = 0;
    be->impl = c;

    int rc = [&]() -> int {
        GN_CU_CHECK(be, cudaSetDevice(device));
        cudaDeviceProp prop;
        GN_CU_CHECK(be, cudaGetDeviceProperties(&prop, device));
        c->sm_count = prop.multiProcessorCount;
        cudaStream_t st = NULL;
        GN_CU_CHECK(be, cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        c->stream = st;
        cublasHandle_t h = NULL;
        GN_CU_CHECK(be, cublasCreate(&h));
        c->cublas = h;
        GN_CU_CHECK(be, cublasSetStream(c->cublas, c->stream));
        /* Accuracy first: plain fp32 (no TF32) for F32 weights. */
        GN_CU_CHECK(be, cublasSetMathMode(c->cublas, CUBLAS_DEFAULT_MATH));
        /* An explicit workspace keeps cuBLAS calls capturable into graphs. */
        GN_CU_CHECK(be, cudaMalloc(&c->cublas_ws, GN_CU_CUBLAS_WS));
        c->cublas_ws_size = GN_CU_CUBLAS_WS;
        GN_CU_CHECK(be, cublasSetWorkspace(c->cublas, c->cublas_ws, c->cublas_ws_size));
        GN_CU_CHECK(be, cudaMallocHost((void **)&c->staging, GN_CU_STAGING_BYTES));
        c->staging_cap = GN_CU_STAGING_BYTES;
        if (prop.major >= 9) cu_probe_pdl(be);
        return 0;
    }();
    if (rc) {
        gn_errf(err, rc, "%s", be->err.msg);
        cu_destroy(be);
        return NULL;
    }
    const char *pdl = getenv("GN_CUDA_PDL");
    c->pdl = c->pdl_ok && !(pdl && !strcmp(pdl, "0"));
    return be;
}

extern "C" int gn_backend_cuda_set_pdl(gn_backend *be, int on) {
    gn_cuda *c = gn_cu(be);
    int old = c->pdl;
    c->pdl = on && c->pdl_ok;
    return old;
}

extern "C" int gn_backend_cuda_set_fuse(gn_backend *be, int on) {
    gn_cuda *c = gn_cu(be);
    int old = c->fuse;
    c->fuse = on != 0;
    be->ops = c->fuse ? &cu_ops : &cu_ops_unfused;
    return old;
}

extern "C" size_t gn_backend_cuda_scratch_bytes(gn_backend *be) { return gn_cu(be)->scratch_cap; }

extern "C" unsigned long long gn_backend_cuda_graph_launches(gn_backend *be) {
    return gn_cu(be)->graph_launches;
}

extern "C" int gn_backend_cuda_set_gemv_max(gn_backend *be, int n) {
    gn_cuda *c = gn_cu(be);
    int old = c->gemv_max;
    c->gemv_max = n < 0 ? 0 : n > GN_CU_GEMV_MAX_LIMIT ? GN_CU_GEMV_MAX_LIMIT : n;
    return old;
}

extern "C" int gn_backend_cuda_copy_bandwidth(gn_backend *be, size_t nbytes, int iters,
                                              double *gbps) {
    gn_cuda *c = gn_cu(be);
    if (!nbytes || iters <= 0 || !gbps)
        return gn_errf(&be->err, GN_EINVAL, "%s: copy_bandwidth: bad arguments", be->name);
    if (cu_enter(be)) return GN_EBACKEND;
    void *a = NULL, *b = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    int rc = [&]() -> int {
        GN_CU_CHECK(be, cudaMalloc(&a, nbytes));
        GN_CU_CHECK(be, cudaMalloc(&b, nbytes));
        GN_CU_CHECK(be, cudaMemsetAsync(a, 1, nbytes, c->stream));
        GN_CU_CHECK(be, cudaEventCreate(&e0));
        GN_CU_CHECK(be, cudaEventCreate(&e1));
        GN_CU_CHECK(be, cudaMemcpyAsync(b, a, nbytes, cudaMemcpyDeviceToDevice, c->stream));
        GN_CU_CHECK(be, cudaEventRecord(e0, c->stream));
        for (int i = 0; i < iters; i++)
            GN_CU_CHECK(be, cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, nbytes,
                                            cudaMemcpyDeviceToDevice, c->stream));
        GN_CU_CHECK(be, cudaEventRecord(e1, c->stream));
        GN_CU_CHECK(be, cudaEventSynchronize(e1));
        float ms = 0;
        GN_CU_CHECK(be, cudaEventElapsedTime(&ms, e0, e1));
        *gbps = ms > 0 ? 2.0 * (double)nbytes * iters / (ms * 1e-3) / 1e9 : 0;
        return 0;
    }();
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    return rc;
}

extern "C" int gn_backend_cuda_capture_begin(gn_backend *be) {
    gn_cuda *c = gn_cu(be);
    if (c->capturing) return gn_errf(&be->err, GN_EINVAL, "%s: already capturing", be->name);
    if (cu_enter(be)) return GN_EBACKEND;
    /* Thread-local mode: other threads' CUDA calls are not affected. */
    GN_CU_CHECK(be, cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    c->capturing = 1;
    return 0;
}

extern "C" int gn_backend_cuda_capture_end(gn_backend *be, int slot) {
    gn_cuda *c = gn_cu(be);
    if (!c->capturing) return gn_errf(&be->err, GN_EINVAL, "%s: not capturing", be->name);
    if (cu_enter(be)) return GN_EBACKEND;
    c->capturing = 0;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &g);
    if (e != cudaSuccess || slot < 0 || slot >= GN_GRAPH_SLOTS) {
        if (g) cudaGraphDestroy(g);
        cudaGetLastError(); /* an invalidated capture is not a sticky error */
        if (e != cudaSuccess) return gn_cuda_fail(be, "cudaStreamEndCapture", __FILE__, __LINE__, cudaGetErrorString(e));
        return slot == -1 ? 0 : gn_errf(&be->err, GN_EINVAL, "%s: graph slot %d", be->name, slot);
    }
    cudaGraphExec_t x = NULL;
    e = cudaGraphInstantiate(&x, g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) return gn_cuda_fail(be, "cudaGraphInstantiate", __FILE__, __LINE__, cudaGetErrorString(e));
    if (c->graphs[slot]) cudaGraphExecDestroy(c->graphs[slot]);
    else c->n_graphs++;
    c->graphs[slot] = x;
    return 0;
}

extern "C" int gn_backend_cuda_graph_launch(gn_backend *be, int slot) {
    gn_cuda *c = gn_cu(be);
    if (slot < 0 || slot >= GN_GRAPH_SLOTS || !c->graphs[slot])
        return gn_errf(&be->err, GN_EINVAL, "%s: no graph in slot %d", be->name, slot);
    if (c->capturing) return cu_not_capturing(be, "graph_launch");
    if (cu_enter(be)) return GN_EBACKEND;
    GN_CU_CHECK(be, cudaGraphLaunch(c->graphs[slot], c->stream));
    c->graph_launches++;
    return 0;
}

extern "C" int gn_backend_cuda_device_info(gn_backend *be, char *name, size_t name_cap,
                                           size_t *free_bytes, size_t *total_bytes) {
    gn_cuda *c = gn_cu(be);
    if (cu_enter(be)) return GN_EBACKEND;
    if (name && name_cap) {
        cudaDeviceProp prop;
        GN_CU_CHECK(be, cudaGetDeviceProperties(&prop, c->device));
        snprintf(name, name_cap, "%s (sm_%d%d, %d SMs)", prop.name, prop.major, prop.minor,
                 prop.multiProcessorCount);
    }
    if (free_bytes || total_bytes) {
        size_t f = 0, t = 0;
        GN_CU_CHECK(be, cudaMemGetInfo(&f, &t));
        if (free_bytes) *free_bytes = f;
        if (total_bytes) *total_bytes = t;
    }
    return 0;
}
