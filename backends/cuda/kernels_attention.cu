/* kernels_attention.cu — the attention op over the paged KV pool.
 *
 * Two kernels on the backend's stream:
 *  1. kv_write: token i's k and v rows go to slot pos % block_size of block
 *     block_table[seq * max_blocks + pos / block_size] (pool layout in
 *     engine/backend.h), converted to the pool's dtype.
 *  2. attn: one block of kAttnWarps warps per (token, head). Each warp walks
 *     every kAttnWarps-th visible position of the token's sequence (causal,
 *     sliding window), keeping an online softmax (running max m, sum l, and
 *     the weighted V sum in registers: lane l holds dimension pairs
 *     l, l+32, ... of the head); the warps' partial results are merged in
 *     shared memory. GQA: head h reads kv head h / (n_heads / n_kv_heads).
 *
 * Same-step tokens see each other's K/V because kernel 2 starts after kernel
 * 1 has finished (stream order). Block ids outside [0, n_blocks) are skipped
 * rather than dereferenced, so a corrupt table cannot write outside the pool. */
#include <cmath>

#include "cuda_common.cuh"

namespace {

constexpr int kAttnWarps = 4;
constexpr int kMaxPairsPerLane = 4; /* head_dim <= 2 * 32 * 4 = 256 */

template <typename KV>
__global__ void kv_write_kernel(KV *__restrict__ pool, const float *__restrict__ k,
                                const float *__restrict__ v, const int32_t *tok_seq,
                                const int32_t *tok_pos, const int32_t *block_table, int max_blocks,
                                int n_blocks, int n_layers, int layer, int block_size, int kvdim) {
    const int t = blockIdx.x;
    const int pos = tok_pos[t];
    const int blk = block_table[(size_t)tok_seq[t] * max_blocks + pos / block_size];
    if (blk < 0 || blk >= n_blocks) return;
    const size_t kbase =
        ((((size_t)blk * n_layers + layer) * 2 + 0) * block_size + pos % block_size) * kvdim;
    const size_t vbase = kbase + (size_t)block_size * kvdim;
    const float *kr = k + (size_t)t * kvdim, *vr = v + (size_t)t * kvdim;
    for (int i = threadIdx.x; i < kvdim; i += blockDim.x) {
        gn_st(pool + kbase + i, kr[i]);
        gn_st(pool + vbase + i, vr[i]);
    }
}

template <typename KV>
__global__ void __launch_bounds__(kAttnWarps * 32)
attn_kernel(float *__restrict__ out, const float *__restrict__ q, const KV *__restrict__ pool,
            const int32_t *tok_seq, const int32_t *tok_pos, const int32_t *block_table,
            int max_blocks, int n_blocks, int n_layers, int layer, int n_heads, int n_kv_heads,
            int head_dim, int block_size, int window, float scale) {
    __shared__ float sm_m[kAttnWarps], sm_l[kAttnWarps];
    __shared__ float2 sm_acc[kAttnWarps][32 * kMaxPairsPerLane];

    const int t = blockIdx.x, h = blockIdx.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kvh = h / (n_heads / n_kv_heads);
    const int seq = tok_seq[t], pos = tok_pos[t];
    const int start = window > 0 ? max(0, pos - window + 1) : 0;
    const int npairs = head_dim / 2;
    const size_t kvdim = (size_t)n_kv_heads * head_dim;
    const int32_t *bt = block_table + (size_t)seq * max_blocks;

    float2 qv[kMaxPairsPerLane];
    const float *qh = q + ((size_t)t * n_heads + h) * head_dim;
#pragma unroll
    for (int j = 0; j < kMaxPairsPerLane; j++) {
        const int pi = lane + 32 * j;
        qv[j] = pi < npairs ? make_float2(qh[2 * pi], qh[2 * pi + 1]) : make_float2(0.0f, 0.0f);
    }

    float m = -INFINITY, l = 0.0f;
    float2 acc[kMaxPairsPerLane];
#pragma unroll
    for (int j = 0; j < kMaxPairsPerLane; j++) acc[j] = make_float2(0.0f, 0.0f);

    for (int p = start + warp; p <= pos; p += kAttnWarps) {
        const int blk = bt[p / block_size];
        if (blk < 0 || blk >= n_blocks) continue; /* warp-uniform */
        const KV *kp = pool +
                       ((((size_t)blk * n_layers + layer) * 2) * block_size + p % block_size) * kvdim +
                       (size_t)kvh * head_dim;
        const KV *vp = kp + (size_t)block_size * kvdim;
        float2 vv[kMaxPairsPerLane];
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < kMaxPairsPerLane; j++) {
            const int pi = lane + 32 * j;
            if (pi < npairs) {
                const float2 kk = gn_ld2(kp + 2 * pi);
                vv[j] = gn_ld2(vp + 2 * pi); /* issued early: independent of the score */
                s = fmaf(qv[j].x, kk.x, s);
                s = fmaf(qv[j].y, kk.y, s);
            } else {
                vv[j] = make_float2(0.0f, 0.0f);
            }
        }
        s = gn_warp_sum(s) * scale;
        const float mn = fmaxf(m, s);
        const float corr = expf(m - mn); /* 0 on the first position (m = -inf) */
        const float pe = expf(s - mn);
        l = l * corr + pe;
#pragma unroll
        for (int j = 0; j < kMaxPairsPerLane; j++) {
            acc[j].x = acc[j].x * corr + pe * vv[j].x;
            acc[j].y = acc[j].y * corr + pe * vv[j].y;
        }
        m = mn;
    }

    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
#pragma unroll
    for (int j = 0; j < kMaxPairsPerLane; j++) sm_acc[warp][lane + 32 * j] = acc[j];
    __syncthreads();

    /* Merge: M = max m_w; out = Σ_w acc_w e^(m_w - M) / Σ_w l_w e^(m_w - M). */
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kAttnWarps; w++) M = fmaxf(M, sm_m[w]);
    float wgt[kAttnWarps], L = 0.0f;
#pragma unroll
    for (int w = 0; w < kAttnWarps; w++) {
        wgt[w] = sm_m[w] == -INFINITY ? 0.0f : expf(sm_m[w] - M);
        L += sm_l[w] * wgt[w];
    }
    const float inv = L > 0.0f ? 1.0f / L : 0.0f;
    float *oh = out + ((size_t)t * n_heads + h) * head_dim;
    for (int pi = threadIdx.x; pi < npairs; pi += blockDim.x) {
        float2 o = make_float2(0.0f, 0.0f);
#pragma unroll
        for (int w = 0; w < kAttnWarps; w++) {
            o.x += sm_acc[w][pi].x * wgt[w];
            o.y += sm_acc[w][pi].y * wgt[w];
        }
        oh[2 * pi] = o.x * inv;
        oh[2 * pi + 1] = o.y * inv;
    }
}

template <typename KV>
void launch(cudaStream_t s, float *out, const float *q, const float *k, const float *v,
            const gn_kv_pool *kv, int layer, const gn_attn_batch *b, int n_heads, int window,
            float scale) {
    const int kvdim = kv->n_kv_heads * kv->head_dim;
    KV *pool = (KV *)kv->data;
    kv_write_kernel<KV><<<b->n_tokens, kvdim >= 256 ? 256 : 128, 0, s>>>(
        pool, k, v, b->tok_seq, b->tok_pos, b->block_table, b->max_blocks, kv->n_blocks,
        kv->n_layers, layer, kv->block_size, kvdim);
    dim3 grid((unsigned)b->n_tokens, (unsigned)n_heads);
    attn_kernel<KV><<<grid, kAttnWarps * 32, 0, s>>>(
        out, q, pool, b->tok_seq, b->tok_pos, b->block_table, b->max_blocks, kv->n_blocks,
        kv->n_layers, layer, n_heads, kv->n_kv_heads, kv->head_dim, kv->block_size, window, scale);
}

} // namespace

extern "C" int gn_cuda_attention(gn_backend *be, float *out, const float *q, const float *k,
                                 const float *v, const gn_kv_pool *kv, int layer,
                                 const gn_attn_batch *b, int n_heads, int sliding_window,
                                 float scale) {
    if (kv->head_dim <= 0 || kv->head_dim % 2 || kv->head_dim > 2 * 32 * kMaxPairsPerLane)
        return gn_errf(&be->err, GN_EUNSUP, "%s: attention: head_dim %d unsupported (even, <= %d)",
                       be->name, kv->head_dim, 2 * 32 * kMaxPairsPerLane);
    if (kv->n_kv_heads <= 0 || n_heads <= 0 || n_heads % kv->n_kv_heads || n_heads > 65535)
        return gn_errf(&be->err, GN_EINVAL, "%s: attention: %d heads over %d kv heads", be->name,
                       n_heads, kv->n_kv_heads);
    if (layer < 0 || layer >= kv->n_layers || kv->block_size <= 0 || b->max_blocks <= 0)
        return gn_errf(&be->err, GN_EINVAL, "%s: attention: layer %d of %d, block_size %d, max_blocks %d",
                       be->name, layer, kv->n_layers, kv->block_size, b->max_blocks);
    cudaStream_t s = gn_cu(be)->stream;
    switch (kv->dtype) {
    case GN_F32: launch<float>(s, out, q, k, v, kv, layer, b, n_heads, sliding_window, scale); break;
    case GN_F16: launch<__half>(s, out, q, k, v, kv, layer, b, n_heads, sliding_window, scale); break;
    default: launch<__nv_bfloat16>(s, out, q, k, v, kv, layer, b, n_heads, sliding_window, scale); break;
    }
    GN_CU_LAUNCHED(be);
    return 0;
}
