/* matmul_fast.c — y(n, rows) = x(n, cols) · wᵀ + bias for the fast CPU table.
 *
 * Weights stay in their stored dtype and are widened to float32 in registers
 * (BF16: zero-extend + shift; F16: vcvtph2ps); accumulation is float32. Both
 * kernels compute dot products along the contiguous `cols` dimension, so no
 * weight is ever packed or copied:
 *
 *  - n == 1 (batch-1 decode, memory-bound): each weight row is streamed
 *    strictly front to back (x stays in L1). One sequential stream per
 *    thread is what the hardware prefetcher serves best: on the dev machine
 *    (Zen 4, 2 cores) it reads BF16 weights at the machine's read bandwidth
 *    (~30-40 GB/s), 1.3-2x faster than walking 2 or 4 rows side by side.
 *
 *  - n >= 2 (batched decode and prefill): a 4 weight rows x 4 x rows
 *    register tile (16 accumulators), so each load feeds 4 FMAs; x is
 *    processed in chunks that stay in L2 while the 4-row weight tile stays in
 *    L1. Two details matter: the 16 horizontal sums of a tile are done by one
 *    shuffle network (reduce16x16), and the next tile's 4 rows are software-
 *    prefetched during the current one, because 4 short interleaved row
 *    streams defeat the hardware prefetcher. On 2 Zen 4 cores this reaches
 *    ~210 GFLOP/s (the FMA peak) for n >= 128 and ~25 GB/s of BF16 weights at
 *    n = 2..4. It beat a packed GEMM (convert + transpose a weight panel,
 *    6 x 32 broadcast micro-kernel) at every n we measured up to 512: the
 *    packing cost more than the final horizontal sums.
 *
 * Threads split the weight rows into contiguous ranges (about 8 tasks per
 * thread, whole 4-row tiles); each task writes a disjoint set of columns of y.
 *
 * Batch invariance: y[i][r] is bit-for-bit the same whatever n, the position
 * of row i in the batch (inside a tile, in a remainder tile, in the GEMV),
 * the x chunking and the thread count, so a sequence's log-probs do not
 * depend on what else is in its step (same seed, same output, whatever the
 * load). Every kernel of one SIMD level computes an output in one order:
 * fixed vector accumulators over k from 0 in order (AVX-512: one 16-lane
 * chain; AVX2: two 8-lane chains over alternate chunks of 8), the tail as a
 * last zero-padded vector, then one fixed horizontal sum, then + bias.
 * Nothing is split along k across tasks. The scalar kernel is one loop for
 * every n. */
#include <string.h>

#include "cpu_internal.h"
#include "simd.h"

/* Bytes of x one tile pass keeps hot (about a quarter of a Zen 4 L2). */
#define X_CHUNK_BYTES (256 * 1024)

typedef struct mm_job {
    float *y;
    const float *x;
    const void *w;
    gn_dtype dt;
    const gn_tensor *bias;
    int n, rows, cols;
    int rows_per_task;
    int x_chunk; /* rows of x per tile pass, multiple of 4 */
    gn_cpu_isa isa;
} mm_job;

static float bias_at(const gn_tensor *bias, int r) {
    return (bias && bias->data) ? gn_cpu_wget(bias->data, bias->dtype, (size_t)r) : 0.0f;
}

/* ------------------------------------------------------------------ scalar */

static void rows_scalar(const mm_job *j, int r0, int r1) {
    size_t cols = (size_t)j->cols;
    for (int r = r0; r < r1; r++) {
        for (int i = 0; i < j->n; i++) {
            const float *x = j->x + (size_t)i * cols;
            float acc[8] = {0};
            size_t k = 0;
            if (j->dt == GN_F32) {
                const float *w = (const float *)j->w + (size_t)r * cols;
                for (; k + 8 <= cols; k += 8)
                    for (int u = 0; u < 8; u++) acc[u] += w[k + u] * x[k + u];
                for (; k < cols; k++) acc[0] += w[k] * x[k];
            } else {
                const uint16_t *w = (const uint16_t *)j->w + (size_t)r * cols;
                if (j->dt == GN_BF16) {
                    for (; k + 8 <= cols; k += 8)
                        for (int u = 0; u < 8; u++) acc[u] += gn_bf16_to_f32(w[k + u]) * x[k + u];
                    for (; k < cols; k++) acc[0] += gn_bf16_to_f32(w[k]) * x[k];
                } else {
                    for (; k + 8 <= cols; k += 8)
                        for (int u = 0; u < 8; u++) acc[u] += gn_f16_to_f32(w[k + u]) * x[k + u];
                    for (; k < cols; k++) acc[0] += gn_f16_to_f32(w[k]) * x[k];
                }
            }
            float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
            j->y[(size_t)i * (size_t)j->rows + (size_t)r] = s + bias_at(j->bias, r);
        }
    }
}

#ifdef GN_CPU_X86

/* ------------------------------------------------------------------ AVX-512 */

/* Every AVX-512 output y[i][r] is computed in one order, whatever n, the
 * kernel or the thread count (batch invariance: a sequence's log-probs do
 * not depend on what else is in its batch): one 16-lane accumulator over k
 * in steps of 16 from 0 (the masked tail last), then the horizontal sum of
 * reduce16x16, then + bias. */

/* Horizontal sums of 16 vectors at once: lane k of the result is the sum of
 * a[k]'s lanes. 15 adds and 30 in-register shuffles, against 16 separate
 * reductions (~8 uops each). Each vector's lanes are summed in the same
 * order whatever its position k (lane quads (0+2)+(1+3), then the 128-bit
 * lanes (L0+L2)+(L1+L3)), so unused inputs may be zero padding. */
static GN_AI GN_T512 __m512 reduce16x16(const __m512 *a) {
    __m512 l1[8], l2[4], l3[2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) /* per 128-bit lane: a0+a2, b0+b2, a1+a3, b1+b3 */
        l1[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) { /* per lane: the partial sums of 4 vectors, in order */
        __m512d x = _mm512_castps_pd(l1[2 * i]), y = _mm512_castps_pd(l1[2 * i + 1]);
        l2[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) /* lanes (0+2, 1+3) of two groups of 4 */
        l3[i] = _mm512_add_ps(_mm512_shuffle_f32x4(l2[2 * i], l2[2 * i + 1], 0x44),
                              _mm512_shuffle_f32x4(l2[2 * i], l2[2 * i + 1], 0xee));
    return _mm512_add_ps(_mm512_shuffle_f32x4(l3[0], l3[1], 0x88), _mm512_shuffle_f32x4(l3[0], l3[1], 0xdd));
}

/* y[r] for weight rows [r0, r1) against the single row of x (batch-1
 * decode, memory-bound): each row is one accumulator chain read strictly
 * front to back, the sums of 16 rows are done by one reduce16x16. One
 * sequential stream per thread is what the hardware prefetcher serves best;
 * on the dev machine (Zen 4, 2 cores) walking two rows side by side (two
 * chains, to hide the FMA latency) was 1.3-2x slower from DRAM, and one
 * chain per row streams as fast as the former 4-chain loop did. (From L3
 * the one chain is latency-bound, ~30% slower than 4 chains; but 4 chains
 * would sum in another order than the batched tiles.) */
static GN_AI GN_T512 void seq_rows16_dt(const mm_job *j, gn_dtype dt, int r0, int r1) {
    size_t cols = (size_t)j->cols, rs = cols * gn_dtype_size(dt);
    const float *x = j->x;
    size_t kv = cols & ~(size_t)15; /* whole vectors */
    __mmask16 mt = gn_mask16((int)(cols - kv));
    for (int g = r0; g < r1; g += 16) {
        int ng = r1 - g < 16 ? r1 - g : 16;
        __m512 acc[16];
        for (int u = 0; u < ng; u++) {
            const char *w = (const char *)j->w + (size_t)(g + u) * rs;
            __m512 a0 = _mm512_setzero_ps();
            for (size_t k = 0; k < kv; k += 16) a0 = _mm512_fmadd_ps(gn_ld16(w, k, dt), _mm512_loadu_ps(x + k), a0);
            if (kv < cols)
                a0 = _mm512_fmadd_ps(gn_ld16_mask(w, kv, dt, mt), _mm512_maskz_loadu_ps(mt, x + kv), a0);
            acc[u] = a0;
        }
        for (int u = ng; u < 16; u++) acc[u] = _mm512_setzero_ps();
        float s[16];
        _mm512_storeu_ps(s, reduce16x16(acc));
        for (int u = 0; u < ng; u++) j->y[g + u] = s[u] + bias_at(j->bias, g + u);
    }
}

/* y for weight rows [r0, r0 + nr) (nr <= 4) x rows [i0, i0 + NJ): 4 x NJ
 * dot products. Rows past nr repeat the last row (results dropped) so the
 * loop body stays branch-free. */
static GN_AI GN_T512 void tile16(const mm_job *j, gn_dtype dt, int NJ, int i0, int r0, int nr, int pf) {
    size_t cols = (size_t)j->cols, es = gn_dtype_size(dt);
    const char *w[4];
    for (int u = 0; u < 4; u++)
        w[u] = (const char *)j->w + (size_t)(r0 + (u < nr ? u : nr - 1)) * cols * es;
    const float *x = j->x + (size_t)i0 * cols;
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int u = 0; u < 4; u++)
#pragma GCC unroll 4
        for (int v = 0; v < NJ; v++) acc[u][v] = _mm512_setzero_ps();
    /* The next tile's rows start 4 rows on: prefetch them along. */
    const char *nx = w[0] + 4 * cols * es;
    size_t k = 0;
    for (; k + 16 <= cols; k += 16) {
        if (pf)
            for (int u = 0; u < 4; u++) _mm_prefetch(nx + ((size_t)u * cols + k) * es, _MM_HINT_T0);
        __m512 wv[4];
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++) wv[u] = gn_ld16(w[u], k, dt);
#pragma GCC unroll 4
        for (int v = 0; v < NJ; v++) {
            __m512 xv = _mm512_loadu_ps(x + (size_t)v * cols + k);
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) acc[u][v] = _mm512_fmadd_ps(wv[u], xv, acc[u][v]);
        }
    }
    if (k < cols) {
        __mmask16 m = gn_mask16((int)(cols - k));
        __m512 wv[4];
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++) wv[u] = gn_ld16_mask(w[u], k, dt, m);
#pragma GCC unroll 4
        for (int v = 0; v < NJ; v++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + (size_t)v * cols + k);
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) acc[u][v] = _mm512_fmadd_ps(wv[u], xv, acc[u][v]);
        }
    }
    float b4[4] = {0, 0, 0, 0};
    for (int u = 0; u < nr; u++) b4[u] = bias_at(j->bias, r0 + u);
    /* Lane 4v + u of the reduction is y[i0 + v][r0 + u]; the x rows a
     * narrower tile lacks are zero padding (the same sums as the GEMV's). */
    __m512 all[16];
#pragma GCC unroll 4
    for (int v = 0; v < 4; v++)
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++) all[v * 4 + u] = v < NJ ? acc[u][v] : _mm512_setzero_ps();
    __m512 sums = reduce16x16(all);
    __m128 bv = _mm_loadu_ps(b4);
    __mmask8 m = (__mmask8)((1u << nr) - 1u);
    float *y = j->y + (size_t)i0 * (size_t)j->rows + (size_t)r0;
    size_t ld = (size_t)j->rows;
    _mm_mask_storeu_ps(y, m, _mm_add_ps(_mm512_extractf32x4_ps(sums, 0), bv));
    if (NJ > 1) _mm_mask_storeu_ps(y + ld, m, _mm_add_ps(_mm512_extractf32x4_ps(sums, 1), bv));
    if (NJ > 2) _mm_mask_storeu_ps(y + 2 * ld, m, _mm_add_ps(_mm512_extractf32x4_ps(sums, 2), bv));
    if (NJ > 3) _mm_mask_storeu_ps(y + 3 * ld, m, _mm_add_ps(_mm512_extractf32x4_ps(sums, 3), bv));
}

static GN_AI GN_T512 void tile_rows16_dt(const mm_job *j, gn_dtype dt, int r0, int r1) {
    for (int c0 = 0; c0 < j->n; c0 += j->x_chunk) {
        int c1 = c0 + j->x_chunk < j->n ? c0 + j->x_chunk : j->n;
        for (int r = r0; r < r1; r += 4) {
            int nr = r1 - r < 4 ? r1 - r : 4;
            /* Prefetch the next tile during the first pass over this one:
             * four interleaved short row streams defeat the hardware
             * prefetcher (measured: +40% at n = 4). */
            int pf = r + 8 <= r1;
            int i = c0;
            for (; i + 4 <= c1; i += 4, pf = 0) tile16(j, dt, 4, i, r, nr, pf);
            switch (c1 - i) {
            case 3: tile16(j, dt, 3, i, r, nr, pf); break;
            case 2: tile16(j, dt, 2, i, r, nr, pf); break;
            case 1: tile16(j, dt, 1, i, r, nr, pf); break;
            default: break;
            }
        }
    }
}

static GN_T512 void rows16(const mm_job *j, int r0, int r1) {
    if (j->n == 1) {
        switch (j->dt) {
        case GN_F32: seq_rows16_dt(j, GN_F32, r0, r1); break;
        case GN_BF16: seq_rows16_dt(j, GN_BF16, r0, r1); break;
        case GN_F16: seq_rows16_dt(j, GN_F16, r0, r1); break;
        }
        return;
    }
    switch (j->dt) {
    case GN_F32: tile_rows16_dt(j, GN_F32, r0, r1); break;
    case GN_BF16: tile_rows16_dt(j, GN_BF16, r0, r1); break;
    case GN_F16: tile_rows16_dt(j, GN_F16, r0, r1); break;
    }
}

/* ------------------------------------------------------------------ AVX2 */

/* Same two kernels with 8 lanes and AVX2's 16 registers, and the same rule
 * for batch invariance, with two accumulators per output so that the GEMV
 * (one row, one stream) has two FMA chains in flight (one 8-lane chain per
 * row was 30% slower): y[i][r] is gn_hsum8(a_even + a_odd), where a_even
 * sums the 8-element chunks [k, k + 8) and a_odd the chunks [k + 8, k + 16)
 * for k = 0, 16, 32, ... in order (the tail zero padded), then + bias. */

/* Elements [k, min(k + 8, cols)) of a weight row / of x, zero padded
 * (nothing read at or past cols). */
static GN_AI GN_T256 __m256 ld8_part(const void *w, size_t k, size_t cols, gn_dtype dt) {
    if (k + 8 <= cols) return gn_ld8(w, k, dt);
    uint32_t t[8] = {0};
    if (k < cols) memcpy(t, (const char *)w + k * gn_dtype_size(dt), (cols - k) * gn_dtype_size(dt));
    return gn_ld8(t, 0, dt);
}

static GN_AI GN_T256 void seq_rows8_dt(const mm_job *j, gn_dtype dt, int r0, int r1) {
    size_t cols = (size_t)j->cols, rs = cols * gn_dtype_size(dt);
    const float *x = j->x;
    size_t kv = cols & ~(size_t)15;
    __m256 xe = ld8_part(x, kv, cols, GN_F32), xo = ld8_part(x, kv + 8, cols, GN_F32);
    for (int r = r0; r < r1; r++) {
        const char *w = (const char *)j->w + (size_t)r * rs;
        __m256 ae = _mm256_setzero_ps(), ao = ae;
        for (size_t k = 0; k < kv; k += 16) {
            ae = _mm256_fmadd_ps(gn_ld8(w, k, dt), _mm256_loadu_ps(x + k), ae);
            ao = _mm256_fmadd_ps(gn_ld8(w, k + 8, dt), _mm256_loadu_ps(x + k + 8), ao);
        }
        if (kv < cols) {
            ae = _mm256_fmadd_ps(ld8_part(w, kv, cols, dt), xe, ae);
            ao = _mm256_fmadd_ps(ld8_part(w, kv + 8, cols, dt), xo, ao);
        }
        j->y[r] = gn_hsum8(_mm256_add_ps(ae, ao)) + bias_at(j->bias, r);
    }
}

/* Elements of k per block of the tile below (measured on Zen 4 with the
 * AVX2 kernels: 128 is within ~5% of the former one-chain tile; 512 and
 * 2048 lose 10-35% on F32 weights). */
#define TILE8_KB 128

/* y for weight rows [r0, r0 + nr) (nr <= 4) x rows [i0, i0 + NJ) (NJ <= 2):
 * 4 x NJ outputs with two chains each is 16 accumulators, more than AVX2
 * has registers beside the loads. So k goes in blocks of TILE8_KB: the even
 * chains run over the block's even chunks, then (swapped through memory,
 * the block now in L1) the odd chains over its odd chunks; each chain still
 * sums its chunks in order. */
static GN_AI GN_T256 void tile8(const mm_job *j, gn_dtype dt, int NJ, int i0, int r0, int nr, int pf) {
    size_t cols = (size_t)j->cols, es = gn_dtype_size(dt);
    const char *w[4];
    for (int u = 0; u < 4; u++)
        w[u] = (const char *)j->w + (size_t)(r0 + (u < nr ? u : nr - 1)) * cols * es;
    const float *x = j->x + (size_t)i0 * cols;
    __m256 acc[2][4][2]; /* [even/odd][weight row][x row] */
    for (int h = 0; h < 2; h++)
        for (int u = 0; u < 4; u++)
            for (int v = 0; v < 2; v++) acc[h][u][v] = _mm256_setzero_ps();
    const char *nx = w[0] + 4 * cols * es; /* the next tile's rows */
    size_t kv = cols & ~(size_t)15;
    for (size_t kb = 0; kb < kv; kb += TILE8_KB) {
        size_t ke = kb + TILE8_KB < kv ? kb + TILE8_KB : kv;
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m256 a[4][2];
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++)
#pragma GCC unroll 2
                for (int v = 0; v < NJ; v++) a[u][v] = acc[h][u][v];
            for (size_t k = kb + 8 * (size_t)h; k < ke; k += 16) {
                if (pf && h == 0)
                    for (int u = 0; u < 4; u++) _mm_prefetch(nx + ((size_t)u * cols + k) * es, _MM_HINT_T0);
                __m256 wv[4];
#pragma GCC unroll 4
                for (int u = 0; u < 4; u++) wv[u] = gn_ld8(w[u], k, dt);
#pragma GCC unroll 2
                for (int v = 0; v < NJ; v++) {
                    __m256 xv = _mm256_loadu_ps(x + (size_t)v * cols + k);
#pragma GCC unroll 4
                    for (int u = 0; u < 4; u++) a[u][v] = _mm256_fmadd_ps(wv[u], xv, a[u][v]);
                }
            }
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++)
#pragma GCC unroll 2
                for (int v = 0; v < NJ; v++) acc[h][u][v] = a[u][v];
        }
    }
    if (kv < cols) {
        for (int h = 0; h < 2; h++) {
            __m256 wv[4];
            for (int u = 0; u < 4; u++) wv[u] = ld8_part(w[u], kv + 8 * (size_t)h, cols, dt);
            for (int v = 0; v < NJ; v++) {
                __m256 xv = ld8_part(x + (size_t)v * cols, kv + 8 * (size_t)h, cols, GN_F32);
                for (int u = 0; u < 4; u++) acc[h][u][v] = _mm256_fmadd_ps(wv[u], xv, acc[h][u][v]);
            }
        }
    }
    for (int v = 0; v < NJ; v++) {
        float *y = j->y + (size_t)(i0 + v) * (size_t)j->rows + (size_t)r0;
        for (int u = 0; u < nr; u++)
            y[u] = gn_hsum8(_mm256_add_ps(acc[0][u][v], acc[1][u][v])) + bias_at(j->bias, r0 + u);
    }
}

static GN_AI GN_T256 void tile_rows8_dt(const mm_job *j, gn_dtype dt, int r0, int r1) {
    for (int c0 = 0; c0 < j->n; c0 += j->x_chunk) {
        int c1 = c0 + j->x_chunk < j->n ? c0 + j->x_chunk : j->n;
        for (int r = r0; r < r1; r += 4) {
            int nr = r1 - r < 4 ? r1 - r : 4;
            int pf = r + 8 <= r1;
            int i = c0;
            for (; i + 2 <= c1; i += 2, pf = 0) tile8(j, dt, 2, i, r, nr, pf);
            if (i < c1) tile8(j, dt, 1, i, r, nr, pf);
        }
    }
}

static GN_T256 void rows8(const mm_job *j, int r0, int r1) {
    if (j->n == 1) {
        switch (j->dt) {
        case GN_F32: seq_rows8_dt(j, GN_F32, r0, r1); break;
        case GN_BF16: seq_rows8_dt(j, GN_BF16, r0, r1); break;
        case GN_F16: seq_rows8_dt(j, GN_F16, r0, r1); break;
        }
        return;
    }
    switch (j->dt) {
    case GN_F32: tile_rows8_dt(j, GN_F32, r0, r1); break;
    case GN_BF16: tile_rows8_dt(j, GN_BF16, r0, r1); break;
    case GN_F16: tile_rows8_dt(j, GN_F16, r0, r1); break;
    }
}

#endif /* GN_CPU_X86 */

/* ------------------------------------------------------------------ driver */

static void mm_task(void *ctx, int task, int thread) {
    (void)thread;
    const mm_job *j = ctx;
    int r0 = task * j->rows_per_task;
    int r1 = r0 + j->rows_per_task < j->rows ? r0 + j->rows_per_task : j->rows;
#ifdef GN_CPU_X86
    if (j->isa == GN_CPU_AVX512) {
        rows16(j, r0, r1);
        return;
    }
    if (j->isa == GN_CPU_AVX2) {
        rows8(j, r0, r1);
        return;
    }
#endif
    rows_scalar(j, r0, r1);
}

/* Fills j for one product and returns its number of tasks. */
static int mm_setup(mm_job *j, gn_cpu *c, float *y, const float *x, const gn_tensor *w, const gn_tensor *bias,
                    int n, int share) {
    *j = (mm_job){.y = y, .x = x, .w = w->data, .dt = w->dtype, .bias = bias, .n = n,
                  .rows = (int)w->rows, .cols = (int)w->cols, .isa = c->isa};
    size_t xc = X_CHUNK_BYTES / ((size_t)j->cols * sizeof(float));
    xc = xc / 4 * 4;
    j->x_chunk = xc < 4 ? 4 : xc > (size_t)n ? n : (int)xc;
    /* About 8 tasks per thread for balance (spread over `share` products),
     * each a contiguous range of whole 4-row tiles and at least 16 rows. */
    int nt = c->n_threads;
    int target = nt > 1 ? (nt * 8 + share - 1) / share : 1;
    int rpt = (j->rows + target - 1) / target;
    if (rpt < 16) rpt = 16;
    rpt = (rpt + 3) / 4 * 4;
    j->rows_per_task = rpt;
    return (j->rows + rpt - 1) / rpt;
}

int gn_cpu_matmul_fast(gn_backend *be, float *y, const float *x, const gn_tensor *w,
                       const gn_tensor *bias, int n) {
    int rc = gn_cpu_check_matmul(be, y, x, w, bias, n);
    if (rc) return rc;
    if (n == 0) return 0;
    gn_cpu *c = gn_cpu_of(be);
    mm_job j;
    int tasks = mm_setup(&j, c, y, x, w, bias, n, 1);
    gn_pool_run(c->pool, mm_task, &j, tasks);
    return 0;
}

/* Several products of one x in one pool job: fewer wake-ups and barriers per
 * layer (q/k/v, gate/up), and no thread idles between the products. */
typedef struct mm_multi {
    mm_job jobs[GN_MATMUL_MULTI_MAX];
    int first[GN_MATMUL_MULTI_MAX + 1]; /* first task of each product */
    int n_jobs;
} mm_multi;

static void multi_task(void *ctx, int task, int thread) {
    const mm_multi *m = ctx;
    int i = 0;
    while (i + 1 < m->n_jobs && task >= m->first[i + 1]) i++;
    mm_task((void *)&m->jobs[i], task - m->first[i], thread);
}

int gn_cpu_matmul_multi_fast(gn_backend *be, int n_mats, float *const *ys, const float *x,
                             const gn_tensor *const *ws, const gn_tensor *const *biases, int n) {
    if (n_mats < 1 || n_mats > GN_MATMUL_MULTI_MAX || !ys || !ws)
        return gn_errf(&be->err, GN_EINVAL, "matmul_multi: %d products (1 .. %d)", n_mats, GN_MATMUL_MULTI_MAX);
    for (int i = 0; i < n_mats; i++) {
        int rc = gn_cpu_check_matmul(be, ys[i], x, ws[i], biases ? biases[i] : NULL, n);
        if (rc) return rc;
        if (ws[i]->cols != ws[0]->cols)
            return gn_errf(&be->err, GN_EINVAL, "matmul_multi: product %d has %lld columns, product 0 %lld", i,
                           (long long)ws[i]->cols, (long long)ws[0]->cols);
    }
    if (n == 0) return 0;
    gn_cpu *c = gn_cpu_of(be);
    mm_multi m;
    m.n_jobs = n_mats;
    m.first[0] = 0;
    for (int i = 0; i < n_mats; i++)
        m.first[i + 1] = m.first[i] + mm_setup(&m.jobs[i], c, ys[i], x, ws[i], biases ? biases[i] : NULL, n, n_mats);
    gn_pool_run(c->pool, multi_task, &m, m.first[n_mats]);
    return 0;
}
