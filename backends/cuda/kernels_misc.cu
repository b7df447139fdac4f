/* kernels_misc.cu — the small CUDA kernels: embedding lookup, RMSNorm, RoPE,
 * SwiGLU, add, get_rows, log-softmax, dtype conversion, bias add and the
 * random fill used by benchmarks. Each launcher enqueues on the backend's
 * stream and checks the launch. Arguments were validated by backend_cuda.cu. */
#include <cfloat>
#include <cmath>

#include "cuda_common.cuh"

/* ---- block reductions ------------------------------------------------- */

/* Sum over the block; every thread gets the result. blockDim.x is a multiple
 * of 32 and at most 1024. `red` is __shared__ float[32]. */
__device__ float block_sum(float v, float *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = gn_warp_sum(v);
    __syncthreads(); /* red may still be read from a previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.0f;
    return gn_warp_sum(v);
}

/* ---- embed ------------------------------------------------------------ */

template <typename T>
__global__ void embed_kernel(float *out, const T *table, const int32_t *tokens, int cols) {
    const int i = blockIdx.x;
    const T *row = table + (size_t)tokens[i] * cols;
    float *o = out + (size_t)i * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = gn_ld(row + c);
}

extern "C" int gn_cuda_embed(gn_backend *be, float *out, const gn_tensor *table,
                             const int32_t *tokens, int n) {
    cudaStream_t s = gn_cu(be)->stream;
    const int cols = (int)table->cols;
    switch (table->dtype) {
    case GN_F32: embed_kernel<<<n, 256, 0, s>>>(out, (const float *)table->data, tokens, cols); break;
    case GN_F16: embed_kernel<<<n, 256, 0, s>>>(out, (const __half *)table->data, tokens, cols); break;
    default: embed_kernel<<<n, 256, 0, s>>>(out, (const __nv_bfloat16 *)table->data, tokens, cols); break;
    }
    GN_CU_LAUNCHED(be);
    return 0;
}

/* ---- rmsnorm ------------------------------------------------------------ */

/* One block per row; out may equal x (each thread rewrites what it read). */
template <typename T>
__global__ void rmsnorm_kernel(float *out, const float *x, const T *w, int dim, float eps) {
    __shared__ float red[32];
    const float *xr = x + (size_t)blockIdx.x * dim;
    float *o = out + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) ss += xr[c] * xr[c];
    ss = block_sum(ss, red);
    const float r = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int c = threadIdx.x; c < dim; c += blockDim.x) o[c] = xr[c] * r * gn_ld(w + c);
}

extern "C" int gn_cuda_rmsnorm(gn_backend *be, float *out, const float *x, const gn_tensor *w,
                               int n_rows, int dim, float eps) {
    cudaStream_t s = gn_cu(be)->stream;
    int threads = dim >= 2048 ? 512 : dim >= 512 ? 256 : dim >= 128 ? 64 : 32;
    switch (w->dtype) {
    case GN_F32: rmsnorm_kernel<<<n_rows, threads, 0, s>>>(out, x, (const float *)w->data, dim, eps); break;
    case GN_F16: rmsnorm_kernel<<<n_rows, threads, 0, s>>>(out, x, (const __half *)w->data, dim, eps); break;
    default:
        rmsnorm_kernel<<<n_rows, threads, 0, s>>>(out, x, (const __nv_bfloat16 *)w->data, dim, eps);
        break;
    }
    GN_CU_LAUNCHED(be);
    return 0;
}

/* ---- rope --------------------------------------------------------------- */

/* One thread per (token, head, pair i): rotate (x[i], x[i + half]) by
 * pos * inv_freq[i] (Hugging Face rotate_half). Precise sincosf: angles reach
 * thousands of radians. */
__global__ void rope_kernel(float *x, int n_tok, int n_heads, int head_dim, const int32_t *pos,
                            const float *inv_freq) {
    const int half = head_dim / 2;
    const size_t total = (size_t)n_tok * n_heads * half;
    for (size_t g = blockIdx.x * (size_t)blockDim.x + threadIdx.x; g < total;
         g += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(g % half);
        const size_t th = g / half; /* token * n_heads + head */
        const int t = (int)(th / n_heads);
        const float ang = (float)pos[t] * inv_freq[i];
        float sn, cs;
        sincosf(ang, &sn, &cs);
        float *h = x + th * head_dim;
        const float a = h[i], b = h[i + half];
        h[i] = a * cs - b * sn;
        h[i + half] = b * cs + a * sn;
    }
}

extern "C" int gn_cuda_rope(gn_backend *be, float *x, int n_tok, int n_heads, int head_dim,
                            const int32_t *pos, const float *inv_freq) {
    size_t total = (size_t)n_tok * n_heads * (head_dim / 2);
    rope_kernel<<<gn_cu_blocks(total, 256), 256, 0, gn_cu(be)->stream>>>(x, n_tok, n_heads, head_dim,
                                                                         pos, inv_freq);
    GN_CU_LAUNCHED(be);
    return 0;
}

/* ---- elementwise -------------------------------------------------------- */

__global__ void swiglu_kernel(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

extern "C" int gn_cuda_swiglu(gn_backend *be, float *out, const float *gate, const float *up,
                              size_t n) {
    swiglu_kernel<<<gn_cu_blocks(n, 256), 256, 0, gn_cu(be)->stream>>>(out, gate, up, n);
    GN_CU_LAUNCHED(be);
    return 0;
}

__global__ void add_kernel(float *x, const float *y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] += y[i];
}

extern "C" int gn_cuda_add(gn_backend *be, float *x, const float *y, size_t n) {
    add_kernel<<<gn_cu_blocks(n, 256), 256, 0, gn_cu(be)->stream>>>(x, y, n);
    GN_CU_LAUNCHED(be);
    return 0;
}

__global__ void get_rows_kernel(float *out, const float *x, const int32_t *rows, int dim) {
    const float *src = x + (size_t)rows[blockIdx.x] * dim;
    float *dst = out + (size_t)blockIdx.x * dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) dst[c] = src[c];
}

extern "C" int gn_cuda_get_rows(gn_backend *be, float *out, const float *x, const int32_t *rows,
                                int n, int dim) {
    get_rows_kernel<<<n, 256, 0, gn_cu(be)->stream>>>(out, x, rows, dim);
    GN_CU_LAUNCHED(be);
    return 0;
}

/* ---- log-softmax -------------------------------------------------------- */

/* One block per row: an online (max, sum-of-exp) pass, then the write pass.
 * Each thread touches the same indices in both passes, so out may equal x
 * (only allowed when n_cols == ld_x; output rows are n_cols apart). */
__global__ void log_softmax_kernel(float *out, const float *x, int n_cols, int ld_x) {
    __shared__ float red_m[32], red_s[32];
    const float *xr = x + (size_t)blockIdx.x * ld_x;
    float *o = out + (size_t)blockIdx.x * n_cols;
    float m = -INFINITY, s = 0.0f;
    for (int c = threadIdx.x; c < n_cols; c += blockDim.x) {
        const float v = xr[c];
        if (v > m) {
            s = s * expf(m - v) + 1.0f;
            m = v;
        } else if (v != -INFINITY) { /* -inf logits (masked) add nothing */
            s += expf(v - m);
        }
    }
    /* Combine (m, s) pairs: warp, then block. */
    for (int off = 16; off > 0; off >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, off);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, off);
        const float mm = fmaxf(m, m2);
        s = (m == -INFINITY ? 0.0f : s * expf(m - mm)) + (m2 == -INFINITY ? 0.0f : s2 * expf(m2 - mm));
        m = mm;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) {
        red_m[warp] = m;
        red_s[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        m = lane < nw ? red_m[lane] : -INFINITY;
        s = lane < nw ? red_s[lane] : 0.0f;
        for (int off = 16; off > 0; off >>= 1) {
            const float m2 = __shfl_xor_sync(0xffffffffu, m, off);
            const float s2 = __shfl_xor_sync(0xffffffffu, s, off);
            const float mm = fmaxf(m, m2);
            s = (m == -INFINITY ? 0.0f : s * expf(m - mm)) +
                (m2 == -INFINITY ? 0.0f : s2 * expf(m2 - mm));
            m = mm;
        }
        if (lane == 0) {
            red_m[0] = m;
            red_s[0] = s;
        }
    }
    __syncthreads();
    const float lse = red_m[0] + logf(red_s[0]);
    for (int c = threadIdx.x; c < n_cols; c += blockDim.x) o[c] = xr[c] - lse;
}

extern "C" int gn_cuda_log_softmax(gn_backend *be, float *out, const float *x, int n_rows,
                                   int n_cols, int ld_x) {
    int threads = n_cols >= 8192 ? 1024 : n_cols >= 1024 ? 256 : 64;
    log_softmax_kernel<<<n_rows, threads, 0, gn_cu(be)->stream>>>(out, x, n_cols, ld_x);
    GN_CU_LAUNCHED(be);
    return 0;
}

/* ---- conversion and bias -------------------------------------------- */

template <typename T>
__global__ void convert_kernel(T *dst, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        gn_st(dst + i, src[i]);
}

extern "C" int gn_cuda_convert_f32(gn_backend *be, void *dst, gn_dtype dt, const float *src,
                                   size_t n) {
    cudaStream_t s = gn_cu(be)->stream;
    if (dt == GN_F16)
        convert_kernel<<<gn_cu_blocks(n, 256), 256, 0, s>>>((__half *)dst, src, n);
    else if (dt == GN_BF16)
        convert_kernel<<<gn_cu_blocks(n, 256), 256, 0, s>>>((__nv_bfloat16 *)dst, src, n);
    else
        convert_kernel<<<gn_cu_blocks(n, 256), 256, 0, s>>>((float *)dst, src, n);
    GN_CU_LAUNCHED(be);
    return 0;
}

__global__ void bias_add_kernel(float *y, const void *bias, int dt, size_t total, int rows) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += gn_ld_dt(bias, dt, i % rows);
}

extern "C" int gn_cuda_bias_add(gn_backend *be, float *y, const gn_tensor *bias, int n, int rows) {
    size_t total = (size_t)n * rows;
    bias_add_kernel<<<gn_cu_blocks(total, 256), 256, 0, gn_cu(be)->stream>>>(y, bias->data,
                                                                            (int)bias->dtype, total, rows);
    GN_CU_LAUNCHED(be);
    return 0;
}

/* ---- random fill (benchmarks) ------------------------------------------ */

__device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

template <typename T>
__global__ void fill_random_kernel(T *dst, size_t n, uint64_t seed, float scale, float offset) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const uint64_t r = splitmix64(seed * 0x100000001b3ull + i);
        const float u = (float)(r >> 40) * (1.0f / 16777216.0f); /* [0, 1) */
        gn_st(dst + i, offset + scale * (2.0f * u - 1.0f));
    }
}

extern "C" int gn_backend_cuda_fill_random(gn_backend *be, void *dst, gn_dtype dt, size_t n,
                                           uint64_t seed, float scale, float offset) {
    if (!n) return 0;
    GN_CU_CHECK(be, cudaSetDevice(gn_cu(be)->device));
    cudaStream_t s = gn_cu(be)->stream;
    unsigned blocks = gn_cu_blocks(n, 256);
    if (dt == GN_F32)
        fill_random_kernel<<<blocks, 256, 0, s>>>((float *)dst, n, seed, scale, offset);
    else if (dt == GN_F16)
        fill_random_kernel<<<blocks, 256, 0, s>>>((__half *)dst, n, seed, scale, offset);
    else
        fill_random_kernel<<<blocks, 256, 0, s>>>((__nv_bfloat16 *)dst, n, seed, scale, offset);
    GN_CU_LAUNCHED(be);
    return 0;
}
