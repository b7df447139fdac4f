/* kernels_attention.cu — the attention op over the paged KV pool.
 *
 * A batch that holds several tokens of one sequence (prefill) runs two
 * kernels on the backend's stream:
 *  1. kv_write: token i's k and v rows go to slot pos % block_size of block
 *     block_table[seq * max_blocks + pos / block_size] (pool layout in
 *     engine/backend.h), converted to the pool's dtype.
 *  2. attn: one block of kAttnWarps warps per (token, head), walking the
 *     token's visible positions (causal, sliding window) in tiles of 32 with
 *     an online softmax (details at attn_kernel). GQA: head h reads kv head
 *     h / (n_heads / n_kv_heads). The grid depends on the batch and the head
 *     count only, never on the context length, so a captured decode step
 *     (CUDA graph) stays valid as sequences grow.
 *
 * Same-step tokens see each other's K/V because kernel 2 waits for kernel 1
 * to finish (stream order; with PDL, gn_pdl_wait).
 *
 * A decode-shaped batch (n_tokens == n_seqs: every listed sequence has at
 * least one token, as the runner builds them, so each has exactly one) runs
 * kernel 2 alone, with the KV write folded in: the block of (token, head)
 * stages its token's own K/V row of its kv head, rounded to the pool dtype,
 * in shared memory and reads position pos from there (the only position of
 * this step it can see), and the first head of each kv group writes the row
 * to the pool for later steps. Every other visible position was written by
 * an earlier step, so no block waits for another; the results are those of
 * the two-kernel path (the same rounded values are read). rope_attention
 * on such a batch also rotates q and that K row there (q is not written
 * back); on any other batch it runs the rope_qk kernel first.
 *
 * Block ids outside [0, n_blocks) are skipped rather than dereferenced, so a
 * corrupt table cannot write outside the pool. */
#include <cmath>
#include <cstring>

#include "cuda_common.cuh"

namespace {

constexpr int kAttnWarps = 8;
constexpr int kMaxPairsPerLane = 4; /* head_dim <= 2 * 32 * 4 = 256 */
constexpr int kPV = 8;              /* V rows whose loads are in flight together */

template <typename KV>
__global__ void kv_write_kernel(KV *__restrict__ pool, const float *__restrict__ k,
                                const float *__restrict__ v, const int32_t *tok_seq,
                                const int32_t *tok_pos, const int32_t *block_table, int max_blocks,
                                int n_blocks, int n_layers, int layer, int block_size, int kvdim) {
    gn_pdl_wait();
    gn_pdl_trigger();
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

/* Eight consecutive elements of a K row as floats (p 16-byte aligned). */
__device__ __forceinline__ void ld8(const float *p, float (&f)[8]) {
    const float4 a = *(const float4 *)p, b = *(const float4 *)(p + 4);
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
__device__ __forceinline__ void ld8(const __half *p, float (&f)[8]) {
    const uint4 u = *(const uint4 *)p;
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        __half2 h;
        memcpy(&h, &w[i], 4);
        const float2 v = __half22float2(h);
        f[2 * i] = v.x, f[2 * i + 1] = v.y;
    }
}
__device__ __forceinline__ void ld8(const __nv_bfloat16 *p, float (&f)[8]) {
    const uint4 u = *(const uint4 *)p;
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; i++) { /* bf16 -> f32 is a 16-bit shift */
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

/* Two consecutive elements of a V row (the pair a lane owns), loaded as
 * stored and converted at the point of use, so that kPV rows' loads in flight
 * take one register per pair for 16-bit pools. */
template <typename KV>
struct vpair {
    using raw = unsigned;
    static __device__ __forceinline__ raw load(const KV *p) { return *(const unsigned *)p; }
    static __device__ __forceinline__ raw zero() { return 0u; }
    static __device__ __forceinline__ float2 get(raw u);
};
template <>
__device__ __forceinline__ float2 vpair<__half>::get(unsigned u) {
    __half2 h;
    memcpy(&h, &u, 4);
    return __half22float2(h);
}
template <>
__device__ __forceinline__ float2 vpair<__nv_bfloat16>::get(unsigned u) { /* element 0 in the low half */
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}
template <>
struct vpair<float> {
    using raw = float2;
    static __device__ __forceinline__ raw load(const float *p) { return *(const float2 *)p; }
    static __device__ __forceinline__ raw zero() { return make_float2(0.0f, 0.0f); }
    static __device__ __forceinline__ float2 get(raw v) { return v; }
};

/* q·k over head_dim for one K row kp (16-byte aligned when VEC); sq is q·scale
 * in shared memory. */
template <bool VEC, typename KV>
__device__ __forceinline__ float qk_dot(const KV *kp, const float *sq, int head_dim) {
    float a = 0.0f;
    if (VEC) {
#pragma unroll 8
        for (int d = 0; d < head_dim; d += 8) {
            float kf[8];
            ld8(kp + d, kf);
            const float4 q0 = *(const float4 *)&sq[d], q1 = *(const float4 *)&sq[d + 4];
            a = fmaf(q0.x, kf[0], a), a = fmaf(q0.y, kf[1], a);
            a = fmaf(q0.z, kf[2], a), a = fmaf(q0.w, kf[3], a);
            a = fmaf(q1.x, kf[4], a), a = fmaf(q1.y, kf[5], a);
            a = fmaf(q1.z, kf[6], a), a = fmaf(q1.w, kf[7], a);
        }
    } else {
#pragma unroll 8
        for (int d = 0; d < head_dim; d += 2) {
            const float2 kk = gn_ld2(kp + d);
            a = fmaf(sq[d], kk.x, a);
            a = fmaf(sq[d + 1], kk.y, a);
        }
    }
    return a;
}

/* Stages q·scale and this token's K row (pool dtype) rotated by RoPE, as
 * rope_kernel rotates them. Not inlined: precise sincosf's rare slow path
 * would otherwise cost the attention loop registers. */
template <typename KV>
__device__ __noinline__ void rope_stage(float *sq, KV *s_k, const float *qh, const float *kr,
                                        const float *inv_freq, int pos, int npairs, float scale) {
    for (int i = threadIdx.x; i < npairs; i += blockDim.x) {
        float sn, cs;
        sincosf((float)pos * inv_freq[i], &sn, &cs);
        const float a = qh[i], b = qh[i + npairs];
        sq[i] = (a * cs - b * sn) * scale;
        sq[i + npairs] = (b * cs + a * sn) * scale;
        const float ka = kr[i], kb = kr[i + npairs];
        gn_st(&s_k[i], ka * cs - kb * sn);
        gn_st(&s_k[i + npairs], kb * cs + ka * sn);
    }
}

/* sm_off value of the position whose V row is this block's own (decode). */
constexpr size_t kSelfRow = ~(size_t)0;

/* One block of kAttnWarps warps per (token, head). The visible positions are
 * cut into tiles of 32; warp w takes tiles w, w + kAttnWarps, ... In a tile
 * lane j scores position p0 + j on its own (the whole K row, 16-byte loads
 * all in flight, q·scale broadcast from shared memory), the warp updates its
 * online softmax (running max m, sum l) once per tile, then accumulates
 * Σ p_j·V_j with lane l owning dimension pairs l, l+32, ... (V rows read
 * coalesced, kPV positions' loads in flight). The warps' partial results
 * are merged in shared memory at the end. Compared with one position per
 * warp step, a decode step of a few hundred positions takes a handful of
 * dependent memory round trips instead of one per position. */
template <typename KV, bool VEC>
__global__ void __launch_bounds__(kAttnWarps * 32, 4) /* 64 registers: 4 blocks per SM */
attn_kernel(float *__restrict__ out, const float *__restrict__ q, const KV *__restrict__ pool,
            KV *pool_w, const float *k_new, const float *v_new, const float *inv_freq,
            const int32_t *tok_seq, const int32_t *tok_pos, const int32_t *block_table, int max_blocks,
            int n_blocks, int n_layers, int layer, int n_heads, int n_kv_heads, int head_dim,
            int block_size, int window, float scale) {
    __shared__ __align__(16) float sq[2 * 32 * kMaxPairsPerLane];
    __shared__ float sm_m[kAttnWarps], sm_l[kAttnWarps];
    __shared__ float2 sm_acc[kAttnWarps][32 * kMaxPairsPerLane];
    __shared__ size_t sm_off[kAttnWarps][32];
    __shared__ __align__(16) KV s_k[2 * 32 * kMaxPairsPerLane], s_v[2 * 32 * kMaxPairsPerLane];
    __shared__ float sm_p[kAttnWarps][32];

    gn_pdl_wait();
    gn_pdl_trigger();
    const int t = blockIdx.x, h = blockIdx.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kvh = h / (n_heads / n_kv_heads);
    const int seq = tok_seq[t], pos = tok_pos[t];
    const int start = window > 0 ? max(0, pos - window + 1) : 0;
    const int npairs = head_dim / 2;
    const size_t kvdim = (size_t)n_kv_heads * head_dim;
    const size_t blk_stride = (size_t)n_layers * 2 * block_size * kvdim;
    const size_t layer_off = (size_t)layer * 2 * block_size * kvdim + (size_t)kvh * head_dim;
    const size_t v_off = (size_t)block_size * kvdim;
    const int32_t *bt = block_table + (size_t)seq * max_blocks;

    const float *qh = q + ((size_t)t * n_heads + h) * head_dim;
    /* Decode (k_new set): this token's K/V row of kv head kvh. With inv_freq
     * (only with k_new), q and that K row are rotated here as rope_kernel
     * does (pair i, i + head_dim/2 by pos * inv_freq[i]); q in memory is not. */
    const bool self = k_new != nullptr;
    const float *kr = self ? k_new + (size_t)t * kvdim + (size_t)kvh * head_dim : nullptr;
    if (inv_freq) {
        rope_stage(sq, s_k, qh, kr, inv_freq, pos, npairs, scale);
    } else {
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) sq[i] = qh[i] * scale;
        if (self)
            for (int i = threadIdx.x; i < head_dim; i += blockDim.x) gn_st(&s_k[i], kr[i]);
    }
    if (self) {
        const float *vr = v_new + (size_t)t * kvdim + (size_t)kvh * head_dim;
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) gn_st(&s_v[i], vr[i]);
    }
    __syncthreads();
    if (self && h % (n_heads / n_kv_heads) == 0) {
        const int blk = bt[pos / block_size];
        if (blk >= 0 && blk < n_blocks) {
            /* pool_w: the same pool; the row written is never read through pool. */
            KV *kd = pool_w + (size_t)blk * blk_stride + layer_off + (size_t)(pos % block_size) * kvdim;
            for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
                kd[i] = s_k[i];
                kd[v_off + i] = s_v[i];
            }
        }
    }

    float m = -INFINITY, l = 0.0f;
    float2 acc[kMaxPairsPerLane];
#pragma unroll
    for (int j = 0; j < kMaxPairsPerLane; j++) acc[j] = make_float2(0.0f, 0.0f);

    for (int p0 = start + warp * 32; p0 <= pos; p0 += kAttnWarps * 32) {
        /* Scores: lane j <-> position p0 + j. */
        const int p = p0 + lane;
        size_t off = 0;
        bool ok = false;
        if (p <= pos) {
            const int blk = bt[p / block_size];
            ok = blk >= 0 && blk < n_blocks; /* a corrupt table is skipped, not followed */
            if (ok) off = (size_t)blk * blk_stride + layer_off + (size_t)(p % block_size) * kvdim;
        }
        float s = -INFINITY;
        if (ok) {
            /* Separate calls keep the pool loads global (read-only path). */
            s = self && p == pos ? qk_dot<VEC>((const KV *)s_k, sq, head_dim)
                                 : qk_dot<VEC>(pool + off, sq, head_dim);
        }
        const float tmax = gn_warp_max(s);
        if (tmax == -INFINITY) continue; /* warp-uniform: nothing visible in this tile */
        const float mn = fmaxf(m, tmax);
        const float corr = expf(m - mn); /* 0 on the first tile (m = -inf) */
        const float pe = ok ? expf(s - mn) : 0.0f;
        l = l * corr + gn_warp_sum(pe);
#pragma unroll
        for (int j = 0; j < kMaxPairsPerLane; j++) acc[j].x *= corr, acc[j].y *= corr;
        m = mn;

        /* Values: Σ_j p_j V_j over the tile's positions. */
        sm_off[warp][lane] = self && p == pos ? kSelfRow : off + v_off;
        sm_p[warp][lane] = pe;
        __syncwarp();
        /* kPV positions at a time: every V load of the group is issued
         * before the first FMA (one memory round trip per group, not per
         * position); rows with p = 0 are not read (skipped rows never are),
         * and the sums are taken in position order as one at a time would. */
        const int cnt = min(32, pos - p0 + 1);
        for (int j0 = 0; j0 < cnt; j0 += kPV) {
            float pj[kPV];
            const KV *vp[kPV];
#pragma unroll
            for (int u = 0; u < kPV; u++) {
                const int jj = min(j0 + u, 31);
                pj[u] = j0 + u < cnt ? sm_p[warp][jj] : 0.0f;
                const size_t o = sm_off[warp][jj];
                vp[u] = pj[u] == 0.0f ? nullptr : o == kSelfRow ? (const KV *)s_v : pool + o;
            }
            typename vpair<KV>::raw vv[kPV][kMaxPairsPerLane]; /* as stored: few registers */
#pragma unroll
            for (int u = 0; u < kPV; u++)
#pragma unroll
                for (int j = 0; j < kMaxPairsPerLane; j++) {
                    const int pi = lane + 32 * j;
                    vv[u][j] = vp[u] && pi < npairs ? vpair<KV>::load(vp[u] + 2 * pi) : vpair<KV>::zero();
                }
#pragma unroll
            for (int u = 0; u < kPV; u++)
#pragma unroll
                for (int j = 0; j < kMaxPairsPerLane; j++) {
                    const float2 v2 = vpair<KV>::get(vv[u][j]);
                    acc[j].x = fmaf(pj[u], v2.x, acc[j].x);
                    acc[j].y = fmaf(pj[u], v2.y, acc[j].y);
                }
        }
        __syncwarp(); /* the next tile rewrites sm_off / sm_p */
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

/* inv_freq non-NULL (decode-shaped rope_attention only): q and k not yet rotated. */
template <typename KV>
cudaError_t launch(gn_backend *be, float *out, const float *q, const float *k, const float *v,
                   const gn_kv_pool *kv, int layer, const gn_attn_batch *b, int n_heads, int window,
                   float scale, const float *inv_freq) {
    const int kvdim = kv->n_kv_heads * kv->head_dim;
    KV *pool = (KV *)kv->data;
    /* Decode-shaped: the KV write (and RoPE) happen inside attn_kernel (see the top). */
    const bool fused = gn_cu(be)->fuse && b->n_tokens == b->n_seqs;
    if (!fused) {
        cudaError_t e = gn_cu_launch(be, kv_write_kernel<KV>, b->n_tokens, kvdim >= 256 ? 256 : 128, 0, pool,
                                     k, v, b->tok_seq, b->tok_pos, b->block_table, b->max_blocks,
                                     kv->n_blocks, kv->n_layers, layer, kv->block_size, kvdim);
        if (e != cudaSuccess) return e;
    }
    /* 16-byte K loads: rows start at multiples of 8 elements, pool aligned. */
    const bool vec = kv->head_dim % 8 == 0 && (uintptr_t)kv->data % 16 == 0;
    const dim3 grid((unsigned)b->n_tokens, (unsigned)n_heads);
    auto kern = vec ? attn_kernel<KV, true> : attn_kernel<KV, false>;
    return gn_cu_launch(be, kern, grid, kAttnWarps * 32, 0, out, q, (const KV *)pool, pool,
                        fused ? k : nullptr, fused ? v : nullptr, inv_freq, b->tok_seq, b->tok_pos,
                        b->block_table, b->max_blocks, kv->n_blocks, kv->n_layers, layer, n_heads, kv->n_kv_heads,
                        kv->head_dim, kv->block_size, window, scale);
}

} // namespace

extern "C" int gn_cuda_rope_attention(gn_backend *be, float *out, float *q, float *k,
                                      const float *v, const gn_kv_pool *kv, int layer,
                                      const gn_attn_batch *b, int n_heads, int sliding_window,
                                      float scale, const float *inv_freq) {
    if (kv->head_dim <= 0 || kv->head_dim % 2 || kv->head_dim > 2 * 32 * kMaxPairsPerLane)
        return gn_errf(&be->err, GN_EUNSUP, "%s: attention: head_dim %d unsupported (even, <= %d)",
                       be->name, kv->head_dim, 2 * 32 * kMaxPairsPerLane);
    if (kv->n_kv_heads <= 0 || n_heads <= 0 || n_heads % kv->n_kv_heads || n_heads > 65535)
        return gn_errf(&be->err, GN_EINVAL, "%s: attention: %d heads over %d kv heads", be->name,
                       n_heads, kv->n_kv_heads);
    if (layer < 0 || layer >= kv->n_layers || kv->block_size <= 0 || b->max_blocks <= 0)
        return gn_errf(&be->err, GN_EINVAL, "%s: attention: layer %d of %d, block_size %d, max_blocks %d",
                       be->name, layer, kv->n_layers, kv->block_size, b->max_blocks);
    /* RoPE goes inside the attention kernel only where the KV write does. */
    if (inv_freq && !(gn_cu(be)->fuse && b->n_tokens == b->n_seqs)) {
        int rc = gn_cuda_rope_qk(be, q, k, b->n_tokens, n_heads, kv->n_kv_heads, kv->head_dim, b->tok_pos,
                                 inv_freq);
        if (rc) return rc;
        inv_freq = nullptr;
    }
    cudaError_t e;
    const int w = sliding_window;
    switch (kv->dtype) {
    case GN_F32: e = launch<float>(be, out, q, k, v, kv, layer, b, n_heads, w, scale, inv_freq); break;
    case GN_F16: e = launch<__half>(be, out, q, k, v, kv, layer, b, n_heads, w, scale, inv_freq); break;
    default: e = launch<__nv_bfloat16>(be, out, q, k, v, kv, layer, b, n_heads, w, scale, inv_freq); break;
    }
    GN_CU_CHECK(be, e);
    return 0;
}

extern "C" int gn_cuda_attention(gn_backend *be, float *out, const float *q, const float *k,
                                 const float *v, const gn_kv_pool *kv, int layer,
                                 const gn_attn_batch *b, int n_heads, int sliding_window,
                                 float scale) {
    /* Without inv_freq q and k are only read. */
    return gn_cuda_rope_attention(be, out, (float *)q, (float *)k, v, kv, layer, b, n_heads, sliding_window,
                                  scale, nullptr);
}
