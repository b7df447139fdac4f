/* cuda_common.cuh — internal to the CUDA backend: the per-backend state, the
 * one macro that checks every CUDA and cuBLAS call, dtype load/store helpers
 * for kernels, and the launchers the .cu files share (all extern "C",
 * prefix gn_cuda_). Not installed, not included by C code. */
#pragma once

#include <utility>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "backend_cuda.h" /* engine/backend.h etc. with C linkage */

struct gn_cu_prof; /* profile.cu */

/* Per-backend state (gn_backend.impl). */
struct gn_cuda {
    int device;
    char name[24];            /* "cuda:N"; gn_backend.name points here */
    cudaStream_t stream;      /* every op is enqueued here */
    cublasHandle_t cublas;
    void *cublas_ws;          /* explicit cuBLAS workspace (keeps GEMMs graph-capturable) */
    size_t cublas_ws_size;
    void *scratch;            /* activations converted to the weight dtype for GemmEx; grows */
    size_t scratch_cap;
    void *retired[48];        /* outgrown scratch buffers a recorded graph may still use */
    int n_retired;
    unsigned char *staging;   /* pinned host ring for small uploads (no pageable-copy stream sync) */
    size_t staging_cap;
    size_t staging_used;      /* reset whenever the stream has been synchronised */
    int gemv_max;             /* matmul uses the GEMV kernel for n <= gemv_max */
    int sm_count;
    int pdl_ok;               /* programmatic dependent launch works here (sm_90+, probed at create) */
    int pdl;                  /* kernels are launched with it (pdl_ok and not switched off) */
    int fuse;                 /* fused ops on: add_rmsnorm/rope_qk in the table, KV write in attention */
    int capturing;            /* between capture_begin and capture_end */
    cudaGraphExec_t graphs[GN_GRAPH_SLOTS];
    int n_graphs;             /* slots holding a graph */
    unsigned long long graph_launches;
    gn_cu_prof *prof;         /* per-op GPU time of eager ops (profile.cu); NULL when off */
};

static inline gn_cuda *gn_cu(gn_backend *be) { return (gn_cuda *)be->impl; }

extern "C" {
/* Writes "<stmt> failed at file:line: <what>" into be->err; returns GN_EBACKEND. */
int gn_cuda_fail(gn_backend *be, const char *stmt, const char *file, int line, const char *what);

/* profile.cu: mark = the ops enqueued from here on until the next mark are
 * `label` (printf format); end = after the host waited for the stream: close
 * the last interval and add the intervals up; destroy = free the profile. */
void gn_cu_prof_mark(gn_backend *be, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void gn_cu_prof_end(gn_backend *be);
void gn_cu_prof_destroy(gn_backend *be);
}

/* A profile mark that costs one load when profiling is off. */
#define GN_CU_PROF(be, ...)                                   \
    do {                                                      \
        if (gn_cu(be)->prof) gn_cu_prof_mark(be, __VA_ARGS__); \
    } while (0)

static inline bool gn_cu_failed(cudaError_t e) { return e != cudaSuccess; }
static inline bool gn_cu_failed(cublasStatus_t s) { return s != CUBLAS_STATUS_SUCCESS; }
static inline const char *gn_cu_str(cudaError_t e) { return cudaGetErrorString(e); }
static inline const char *gn_cu_str(cublasStatus_t s) { return cublasGetStatusString(s); }

/* The one check for every CUDA runtime and cuBLAS call: on failure, records
 * the statement, file and line in be->err and returns GN_EBACKEND from the
 * enclosing function (which must return int). */
#define GN_CU_CHECK(be, stmt)                                                        \
    do {                                                                             \
        auto gn_cu_rc_ = (stmt);                                                     \
        if (gn_cu_failed(gn_cu_rc_))                                                 \
            return gn_cuda_fail((be), #stmt, __FILE__, __LINE__, gn_cu_str(gn_cu_rc_)); \
    } while (0)

/* --- programmatic dependent launch (PDL, sm_90+) ---------------------------
 * Every kernel of this backend is launched through gn_cu_launch. With PDL on,
 * a kernel may start while the kernel before it in the stream is still
 * running; it must call gn_pdl_wait() before it reads anything an earlier
 * kernel or copy may write (activations, KV pool, step tables) and before it
 * writes anything. Only immutable data (weights, biases) may be read before
 * the wait (no kernel does so today: streaming weights before the wait was
 * measured slower on an H200).
 * gn_pdl_trigger() lets the next kernel be scheduled once every block of this
 * one has started; the next kernel's wait still waits for this one to finish
 * and for its writes to be visible. Both are no-ops without PDL (or below
 * sm_90). */
__device__ __forceinline__ void gn_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void gn_pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Launches kernel k<<<grid, block, smem>>> on the backend's stream, with the
 * PDL attribute when `pdl` is set. Returns the launch status. */
template <typename... KArgs, typename... Args>
static inline cudaError_t gn_cu_launch_ex(gn_backend *be, bool pdl, void (*k)(KArgs...), dim3 grid,
                                          dim3 block, size_t smem, Args &&...args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = gn_cu(be)->stream;
    cudaLaunchAttribute attr[1];
    if (pdl) {
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
    }
    return cudaLaunchKernelEx(&cfg, k, std::forward<Args>(args)...);
}

/* The usual launch: PDL when the backend uses it. A kernel that writes
 * weights (the benchmark's random fill) must use gn_cu_launch_ex(be, false,
 * ...) instead: a GEMV after it reads weights before its wait. */
template <typename... KArgs, typename... Args>
static inline cudaError_t gn_cu_launch(gn_backend *be, void (*k)(KArgs...), dim3 grid, dim3 block,
                                       size_t smem, Args &&...args) {
    return gn_cu_launch_ex(be, gn_cu(be)->pdl != 0, k, grid, block, smem, std::forward<Args>(args)...);
}

/* Launch + check in one statement (inside a function returning int). */
#define GN_CU_LAUNCH(be, ...) GN_CU_CHECK(be, gn_cu_launch(be, __VA_ARGS__))

/* --- dtype helpers for kernels ------------------------------------------ */

__device__ __forceinline__ float gn_ld(const float *p) { return *p; }
__device__ __forceinline__ float gn_ld(const __half *p) { return __half2float(*p); }
__device__ __forceinline__ float gn_ld(const __nv_bfloat16 *p) { return __bfloat162float(*p); }

/* Two consecutive elements (p must be aligned to two elements). */
__device__ __forceinline__ float2 gn_ld2(const float *p) { return *(const float2 *)p; }
__device__ __forceinline__ float2 gn_ld2(const __half *p) { return __half22float2(*(const __half2 *)p); }
__device__ __forceinline__ float2 gn_ld2(const __nv_bfloat16 *p) {
    return __bfloat1622float2(*(const __nv_bfloat162 *)p);
}

__device__ __forceinline__ void gn_st(float *p, float v) { *p = v; }
/* fp16 saturates at +-65504 instead of becoming inf (KV cache, GemmEx inputs). */
__device__ __forceinline__ void gn_st(__half *p, float v) {
    *p = __float2half_rn(fminf(fmaxf(v, -65504.0f), 65504.0f));
}
__device__ __forceinline__ void gn_st(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }

/* Loads element i of a tensor whose dtype is only known at run time. */
__device__ __forceinline__ float gn_ld_dt(const void *p, int dt, size_t i) {
    if (dt == GN_F32) return ((const float *)p)[i];
    if (dt == GN_F16) return __half2float(((const __half *)p)[i]);
    return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
}

__device__ __forceinline__ float gn_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float gn_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Grid size for a grid-stride loop over n elements with `threads` per block. */
static inline unsigned gn_cu_blocks(size_t n, int threads) {
    size_t b = (n + (size_t)threads - 1) / (size_t)threads;
    if (b > 65535u * 16u) b = 65535u * 16u;
    return b ? (unsigned)b : 1u;
}

/* --- launchers shared between the .cu files ------------------------------ */
extern "C" {
/* kernels_misc.cu: the vtable ops with simple kernels (same signatures). */
int gn_cuda_embed(gn_backend *be, float *out, const gn_tensor *table, const int32_t *tokens, int n);
int gn_cuda_rmsnorm(gn_backend *be, float *out, const float *x, const gn_tensor *w, int n_rows,
                    int dim, float eps);
int gn_cuda_rope(gn_backend *be, float *x, int n_tok, int n_heads, int head_dim,
                 const int32_t *pos, const float *inv_freq);
int gn_cuda_swiglu(gn_backend *be, float *out, const float *gate, const float *up, size_t n);
/* The optional fused ops (backend.h): add_rmsnorm and rope_qk. */
int gn_cuda_add_rmsnorm(gn_backend *be, float *x, const float *y, float *out, const gn_tensor *w,
                        int n_rows, int dim, float eps);
int gn_cuda_rope_qk(gn_backend *be, float *q, float *k, int n_tok, int n_heads, int n_kv_heads,
                    int head_dim, const int32_t *pos, const float *inv_freq);
int gn_cuda_add(gn_backend *be, float *x, const float *y, size_t n);
int gn_cuda_get_rows(gn_backend *be, float *out, const float *x, const int32_t *rows, int n,
                     int dim);
int gn_cuda_log_softmax(gn_backend *be, float *out, const float *x, int n_rows, int n_cols,
                        int ld_x);
/* dst(n elements, dtype dt in {F16, BF16}) = src converted (fp16 saturates). */
int gn_cuda_convert_f32(gn_backend *be, void *dst, gn_dtype dt, const float *src, size_t n);
/* y(n, rows) += bias (1, rows), bias in any dtype. */
int gn_cuda_bias_add(gn_backend *be, float *y, const gn_tensor *bias, int n, int rows);

/* Launches the PDL probe kernel (*p += 1 on the device; p device memory). */
int gn_cuda_probe_step(gn_backend *be, int *p);

/* kernels_gemv.cu: y(n, w.rows) = x(n, w.cols) · wᵀ + bias for 1 <= n <= 8. */
int gn_cuda_gemv(gn_backend *be, float *y, const float *x, const gn_tensor *w,
                 const gn_tensor *bias, int n);
/* The same for n_mats weights sharing x, in one launch (every weight of one
 * dtype, equal widths, each passing gn_cuda_gemv_ok when n_mats > 1). */
int gn_cuda_gemv_multi(gn_backend *be, int n_mats, float *const *ys, const float *x,
                       const gn_tensor *const *ws, const gn_tensor *const *biases, int n);
/* 1 when the vectorised kernel can read w and x (16-byte aligned rows). */
int gn_cuda_gemv_ok(const float *x, const gn_tensor *w);

/* kernels_attention.cu: the attention op (KV write + paged causal attention). */
int gn_cuda_attention(gn_backend *be, float *out, const float *q, const float *k, const float *v,
                      const gn_kv_pool *kv, int layer, const gn_attn_batch *b, int n_heads,
                      int sliding_window, float scale);
/* The optional rope_attention op (backend.h): RoPE on q and k, then attention. */
int gn_cuda_rope_attention(gn_backend *be, float *out, float *q, float *k, const float *v,
                           const gn_kv_pool *kv, int layer, const gn_attn_batch *b, int n_heads,
                           int sliding_window, float scale, const float *inv_freq);
}
