/* kernels_gemv.cu — y(n, R) = x(n, C) · Wᵀ + bias for small batches (n <= 8),
 * the decode-time projections, for one weight or for up to
 * GN_MATMUL_MULTI_MAX weights that share x (q/k/v, gate/up: one launch, one
 * grid over all their rows). Memory-bound on W: each weight byte is read
 * once, with 16-byte streaming loads, and multiplied with fp32 activations
 * (no rounding of x to the weight dtype, unlike the cuBLAS path), fp32
 * accumulation.
 *
 * Layout: a block of 8 warps owns 8·RPW consecutive rows of one weight
 * ("segment", chosen per block from the launch parameters); each warp owns
 * RPW rows (1, 2 or 4, chosen per launch); lane l handles 8-column chunks l,
 * l+32, ... of each row. x is staged in shared memory one column tile at a
 * time (all n rows of it), stored as [n][half][chunk][4] so that the float4
 * reads of a warp hit distinct banks. The partial dot products are reduced
 * across the warp at the end.
 *
 * PDL: the kernels wait for the previous kernel (gn_pdl_wait) before
 * anything else and read nothing before it; the vector kernel lets the next
 * kernel launch (gn_pdl_trigger) only after its main loop. (An earlier version streamed its
 * first weights and an L2 prefetch before the wait, staged x with cp.async,
 * used 8192-column tiles at n = 1 and forced 4 / 3 blocks per SM through
 * __launch_bounds__; on an H200 that ran at 40-52 % of the copy roofline
 * against 63-95 % for this structure, with PDL on or off alike.)
 *
 * A plain warp-per-row kernel handles weights that are not 16-byte aligned or
 * whose width is not a multiple of 8 (one segment per launch). */
#include <cstring>

#include "cuda_common.cuh"

namespace {

constexpr int kWarps = 8;

template <int NMAX>
struct cfg {
    static constexpr int TC = NMAX <= 2 ? 4096 : NMAX <= 4 ? 2048 : 1024; /* x tile columns */
    static constexpr size_t smem = (size_t)NMAX * TC * sizeof(float);      /* <= 32 KiB */
};

/* One weight of a launch: rows [0, rows) of w produce y(n, rows). Blocks
 * [block0, next segment's block0) of the grid belong to it. */
struct gemv_seg {
    const void *w;
    float *y;
    const void *bias; /* NULL: none */
    int bias_dt;
    int rows;
    int block0;
};

struct gemv_params {
    gemv_seg seg[GN_MATMUL_MULTI_MAX];
    int n_seg;
    const float *x;
    int n, C;
};

/* A chunk of 8 consecutive weights: loaded raw with streaming 16-byte loads
 * (weights are read exactly once), converted to float at the point of use so
 * that several chunks can be in flight in few registers. */
template <typename W>
struct chunk8;

template <>
struct chunk8<__nv_bfloat16> {
    uint4 u;
    __device__ __forceinline__ void load(const __nv_bfloat16 *p) { u = __ldcs((const uint4 *)p); }
    __device__ __forceinline__ void zero() { u = make_uint4(0, 0, 0, 0); }
    __device__ __forceinline__ void get(float (&f)[8]) const {
        const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[2 * i] = __uint_as_float(w[i] << 16);
            f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
};

template <>
struct chunk8<__half> {
    uint4 u;
    __device__ __forceinline__ void load(const __half *p) { u = __ldcs((const uint4 *)p); }
    __device__ __forceinline__ void zero() { u = make_uint4(0, 0, 0, 0); }
    __device__ __forceinline__ void get(float (&f)[8]) const {
        const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            __half2 h;
            memcpy(&h, &w[i], 4);
            const float2 v = __half22float2(h);
            f[2 * i] = v.x;
            f[2 * i + 1] = v.y;
        }
    }
};

template <>
struct chunk8<float> {
    float4 a, b;
    __device__ __forceinline__ void load(const float *p) {
        a = __ldcs((const float4 *)p);
        b = __ldcs((const float4 *)p + 1);
    }
    __device__ __forceinline__ void zero() { a = b = make_float4(0.f, 0.f, 0.f, 0.f); }
    __device__ __forceinline__ void get(float (&f)[8]) const {
        f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w;
        f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
    }
};

/* RPW rows per warp: each x value read from shared memory serves RPW
 * weights, so larger batches use more rows per warp (shared-memory traffic
 * per weight byte stays at or below 4x the weight bytes) when the matrix has
 * rows enough to keep every SM busy; kUnroll = 8 / RPW keeps eight 16-byte
 * weight loads in flight per lane. */
template <typename W, int NMAX, int RPW>
__global__ void __launch_bounds__(kWarps * 32)
gemv_vec_kernel(const gemv_params p) {
    constexpr int TC = cfg<NMAX>::TC, kUnroll = 8 / RPW;
    constexpr int XPER = NMAX * TC / 4 / (kWarps * 32); /* float4s of x per thread per tile */
    extern __shared__ float4 gemv_smem[];
    float *xs = (float *)gemv_smem;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    /* This block's segment (selects, not a dynamically indexed parameter). */
    const W *w = (const W *)p.seg[0].w;
    float *y = p.seg[0].y;
    const void *bias = p.seg[0].bias;
    int bias_dt = p.seg[0].bias_dt, R = p.seg[0].rows, block0 = 0;
#pragma unroll
    for (int i = 1; i < GN_MATMUL_MULTI_MAX; i++) {
        if (i < p.n_seg && (int)blockIdx.x >= p.seg[i].block0) {
            w = (const W *)p.seg[i].w;
            y = p.seg[i].y;
            bias = p.seg[i].bias;
            bias_dt = p.seg[i].bias_dt;
            R = p.seg[i].rows;
            block0 = p.seg[i].block0;
        }
    }
    const float *__restrict__ x = p.x;
    const int C = p.C, n = p.n;
    const int row0 = (((int)blockIdx.x - block0) * kWarps + warp) * RPW;

    gn_pdl_wait();

    float acc[RPW][NMAX];
#pragma unroll
    for (int r = 0; r < RPW; r++)
#pragma unroll
        for (int j = 0; j < NMAX; j++) acc[r][j] = 0.0f;

    for (int c0 = 0; c0 < C; c0 += TC) {
        const int tc = min(TC, C - c0); /* a multiple of 8 */
        const int tc4 = tc >> 2;
        /* Stage x[:, c0:c0+tc] in shared memory: all loads first, then the
         * stores. Columns c..c+3 (c % 4 == 0) land in one float4 slot; rows
         * j >= n are zero. */
        float4 xt[XPER];
#pragma unroll
        for (int u = 0; u < XPER; u++) {
            const int idx = threadIdx.x + u * kWarps * 32;
            const int j = idx / tc4, c = (idx - j * tc4) * 4;
            xt[u] = (j < n && idx < NMAX * tc4)
                        ? __ldg((const float4 *)(x + (size_t)j * C + c0 + c))
                        : make_float4(0.f, 0.f, 0.f, 0.f);
        }
        __syncthreads(); /* everyone is done with the previous tile */
#pragma unroll
        for (int u = 0; u < XPER; u++) {
            const int idx = threadIdx.x + u * kWarps * 32;
            if (idx < NMAX * tc4) {
                const int j = idx / tc4, c = (idx - j * tc4) * 4;
                *(float4 *)&xs[j * TC + ((c >> 2) & 1) * (TC / 2) + (c >> 3) * 4] = xt[u];
            }
        }
        __syncthreads();
        const int nk = tc >> 3;
        for (int kb = 0; kb < nk; kb += 32 * kUnroll) {
            chunk8<W> wc[kUnroll][RPW];
#pragma unroll
            for (int u = 0; u < kUnroll; u++) {
                const int k = kb + u * 32 + lane;
#pragma unroll
                for (int r = 0; r < RPW; r++) {
                    if (k < nk && row0 + r < R)
                        wc[u][r].load(w + (size_t)(row0 + r) * C + c0 + k * 8);
                    else
                        wc[u][r].zero();
                }
            }
#pragma unroll
            for (int u = 0; u < kUnroll; u++) {
                const int k = min(kb + u * 32 + lane, nk - 1); /* zero weights past nk */
                float wf[RPW][8];
#pragma unroll
                for (int r = 0; r < RPW; r++) wc[u][r].get(wf[r]);
#pragma unroll
                for (int j = 0; j < NMAX; j++) {
                    const float4 lo = *(const float4 *)&xs[j * TC + k * 4];
                    const float4 hi = *(const float4 *)&xs[j * TC + TC / 2 + k * 4];
#pragma unroll
                    for (int r = 0; r < RPW; r++) {
                        float a = acc[r][j];
                        a = fmaf(wf[r][0], lo.x, a);
                        a = fmaf(wf[r][1], lo.y, a);
                        a = fmaf(wf[r][2], lo.z, a);
                        a = fmaf(wf[r][3], lo.w, a);
                        a = fmaf(wf[r][4], hi.x, a);
                        a = fmaf(wf[r][5], hi.y, a);
                        a = fmaf(wf[r][6], hi.z, a);
                        a = fmaf(wf[r][7], hi.w, a);
                        acc[r][j] = a;
                    }
                }
            }
        }
    }

    /* Let the next kernel in only now: triggered at the start, its waiting
     * blocks would sit on the SMs through every later wave of this one. */
    gn_pdl_trigger();
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        const int row = row0 + r;
        const float b = (bias && row < R) ? gn_ld_dt(bias, bias_dt, row) : 0.0f;
#pragma unroll
        for (int j = 0; j < NMAX; j++) {
            const float s = gn_warp_sum(acc[r][j]);
            if (lane == 0 && row < R && j < n) y[(size_t)j * R + row] = s + b;
        }
    }
}

/* Fallback: one warp per row, scalar loads, x straight from global memory. */
template <typename W>
__global__ void __launch_bounds__(kWarps * 32)
gemv_scalar_kernel(float *__restrict__ y, const float *__restrict__ x, const W *__restrict__ w,
                   const void *bias, int bias_dt, int n, int R, int C) {
    gn_pdl_wait();
    gn_pdl_trigger();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * kWarps + warp;
    if (row >= R) return;
    float acc[8];
#pragma unroll
    for (int j = 0; j < 8; j++) acc[j] = 0.0f;
    const W *wr = w + (size_t)row * C;
    for (int c = lane; c < C; c += 32) {
        const float wv = gn_ld(wr + c);
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (j < n) acc[j] = fmaf(wv, x[(size_t)j * C + c], acc[j]);
    }
    const float b = bias ? gn_ld_dt(bias, bias_dt, row) : 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const float s = gn_warp_sum(acc[j]);
        if (lane == 0 && j < n) y[(size_t)j * R + row] = s + b;
    }
}

/* Fills the segments' first blocks for rows_per_block and returns the grid. */
unsigned plan(gemv_params &p, int rows_per_block) {
    unsigned blocks = 0;
    for (int i = 0; i < p.n_seg; i++) {
        p.seg[i].block0 = (int)blocks;
        blocks += (unsigned)((p.seg[i].rows + rows_per_block - 1) / rows_per_block);
    }
    return blocks;
}

template <typename W, int NMAX, int RPW>
cudaError_t launch_vec(gn_backend *be, gemv_params &p) {
    const unsigned blocks = plan(p, kWarps * RPW);
    return gn_cu_launch(be, gemv_vec_kernel<W, NMAX, RPW>, blocks, kWarps * 32, cfg<NMAX>::smem, p);
}

template <typename W>
cudaError_t launch(gn_backend *be, gemv_params &p) {
    /* Rows per warp: as many as the batch asks for while the grid still
     * covers every SM at least once. */
    const int sms = gn_cu(be)->sm_count > 0 ? gn_cu(be)->sm_count : 108;
    auto fits = [&](int rpw) {
        gemv_params q = p;
        return (int)plan(q, kWarps * rpw) >= sms;
    };
    const int n = p.n;
    if (n <= 1) return launch_vec<W, 1, 1>(be, p);
    if (n <= 2) return launch_vec<W, 2, 1>(be, p);
    if (n <= 4) return fits(2) ? launch_vec<W, 4, 2>(be, p) : launch_vec<W, 4, 1>(be, p);
    if (fits(4)) return launch_vec<W, 8, 4>(be, p);
    if (fits(2)) return launch_vec<W, 8, 2>(be, p);
    return launch_vec<W, 8, 1>(be, p);
}

template <typename W>
cudaError_t launch_scalar(gn_backend *be, float *y, const float *x, const gn_tensor *w,
                          const void *bias, int bias_dt, int n) {
    const int R = (int)w->rows, C = (int)w->cols;
    const unsigned blocks = (unsigned)((R + kWarps - 1) / kWarps);
    return gn_cu_launch(be, gemv_scalar_kernel<W>, blocks, kWarps * 32, 0, y, x, (const W *)w->data,
                        bias, bias_dt, n, R, C);
}

} // namespace

extern "C" int gn_cuda_gemv_ok(const float *x, const gn_tensor *w) {
    return ((uintptr_t)w->data % 16 == 0) && ((uintptr_t)x % 16 == 0) && (w->cols % 8 == 0);
}

extern "C" int gn_cuda_gemv_multi(gn_backend *be, int n_mats, float *const *ys, const float *x,
                                  const gn_tensor *const *ws, const gn_tensor *const *biases, int n) {
    if (n < 1 || n > 8 || n_mats < 1 || n_mats > GN_MATMUL_MULTI_MAX)
        return gn_errf(&be->err, GN_EINVAL, "%s: gemv: n=%d outside 1..8 or %d weights", be->name, n,
                       n_mats);
    gemv_params p;
    memset(&p, 0, sizeof p);
    p.n_seg = n_mats;
    p.x = x;
    p.n = n;
    p.C = (int)ws[0]->cols;
    const gn_dtype dt = ws[0]->dtype;
    for (int i = 0; i < n_mats; i++) {
        const gn_tensor *b = biases ? biases[i] : NULL;
        p.seg[i].w = ws[i]->data;
        p.seg[i].y = ys[i];
        p.seg[i].bias = b && b->data ? b->data : NULL;
        p.seg[i].bias_dt = b ? (int)b->dtype : 0;
        p.seg[i].rows = (int)ws[i]->rows;
    }
    /* 16-byte loads need every row start of w and x 16-byte aligned; one
     * launch needs one weight dtype (backend_cuda.cu only fuses such sets). */
    bool vec = true;
    for (int i = 0; i < n_mats; i++)
        if (!gn_cuda_gemv_ok(x, ws[i]) || ws[i]->dtype != dt) vec = false;
    if (!vec) {
        if (n_mats > 1)
            return gn_errf(&be->err, GN_EINVAL, "%s: gemv: weights unaligned or of mixed dtypes", be->name);
        const void *bp = p.seg[0].bias;
        const int bdt = p.seg[0].bias_dt;
        cudaError_t e;
        switch (dt) {
        case GN_F32: e = launch_scalar<float>(be, ys[0], x, ws[0], bp, bdt, n); break;
        case GN_F16: e = launch_scalar<__half>(be, ys[0], x, ws[0], bp, bdt, n); break;
        default: e = launch_scalar<__nv_bfloat16>(be, ys[0], x, ws[0], bp, bdt, n); break;
        }
        GN_CU_CHECK(be, e);
        return 0;
    }
    cudaError_t e;
    switch (dt) {
    case GN_F32: e = launch<float>(be, p); break;
    case GN_F16: e = launch<__half>(be, p); break;
    default: e = launch<__nv_bfloat16>(be, p); break;
    }
    GN_CU_CHECK(be, e);
    return 0;
}

extern "C" int gn_cuda_gemv(gn_backend *be, float *y, const float *x, const gn_tensor *w,
                            const gn_tensor *bias, int n) {
    float *const ys[1] = {y};
    const gn_tensor *const ws[1] = {w};
    const gn_tensor *const bs[1] = {bias};
    return gn_cuda_gemv_multi(be, 1, ys, x, ws, bs, n);
}
