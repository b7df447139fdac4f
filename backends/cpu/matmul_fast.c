/* matmul_fast.c — y(n, rows) = x(n, cols) · wᵀ + bias for the fast CPU table.
 *
 * Weights stay in their stored dtype and are widened to float32 in registers
 * (BF16: zero-extend + shift; F16: vcvtph2ps); accumulation is float32. Both
 * kernels compute dot products along the contiguous `cols` dimension, so no
 * weight is ever packed or copied:
 *
 *  - n == 1 (batch-1 decode, memory-bound): each weight row is streamed
 *    strictly front to back with 4 accumulator chains (x stays in L1). One
 *    sequential stream per thread is what the hardware prefetcher serves
 *    best: on the dev machine (Zen 4, 2 cores) it reads BF16 weights at the
 *    machine's read bandwidth (~30 GB/s), about 2x faster than walking 4 rows
 *    side by side.
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
 * thread, whole 4-row tiles); each task writes a disjoint set of columns of y. */
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

/* y[r] for weight rows [r0, r1) against the single row of x: each row is
 * read front to back with 4 independent accumulator chains. */
static GN_AI GN_T512 void seq_rows16_dt(const mm_job *j, gn_dtype dt, int r0, int r1) {
    size_t cols = (size_t)j->cols;
    const float *x = j->x;
    for (int r = r0; r < r1; r++) {
        const char *w = (const char *)j->w + (size_t)r * cols * gn_dtype_size(dt);
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        size_t k = 0;
        for (; k + 64 <= cols; k += 64) {
            a0 = _mm512_fmadd_ps(gn_ld16(w, k, dt), _mm512_loadu_ps(x + k), a0);
            a1 = _mm512_fmadd_ps(gn_ld16(w, k + 16, dt), _mm512_loadu_ps(x + k + 16), a1);
            a2 = _mm512_fmadd_ps(gn_ld16(w, k + 32, dt), _mm512_loadu_ps(x + k + 32), a2);
            a3 = _mm512_fmadd_ps(gn_ld16(w, k + 48, dt), _mm512_loadu_ps(x + k + 48), a3);
        }
        for (; k < cols; k += 16) {
            __mmask16 m = gn_mask16((int)(cols - k));
            a0 = _mm512_fmadd_ps(gn_ld16_mask(w, k, dt, m), _mm512_maskz_loadu_ps(m, x + k), a0);
        }
        __m512 s = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
        j->y[r] = _mm512_reduce_add_ps(s) + bias_at(j->bias, r);
    }
}

/* Horizontal sums of 16 vectors at once: lane k of the result is the sum of
 * a[k]'s lanes. 15 adds and 30 in-register shuffles, against 16 separate
 * reductions (~8 uops each). */
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
    if (NJ == 4) {
        /* Lane 4v + u of the reduction is y[i0 + v][r0 + u]. */
        __m512 all[16];
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++)
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) all[v * 4 + u] = acc[u][v];
        __m512 sums = reduce16x16(all);
        __m128 bv = _mm_loadu_ps(b4);
        __mmask8 m = (__mmask8)((1u << nr) - 1u);
        float *y = j->y + (size_t)i0 * (size_t)j->rows + (size_t)r0;
        size_t ld = (size_t)j->rows;
        _mm_mask_storeu_ps(y, m, _mm_add_ps(_mm512_extractf32x4_ps(sums, 0), bv));
        _mm_mask_storeu_ps(y + ld, m, _mm_add_ps(_mm512_extractf32x4_ps(sums, 1), bv));
        _mm_mask_storeu_ps(y + 2 * ld, m, _mm_add_ps(_mm512_extractf32x4_ps(sums, 2), bv));
        _mm_mask_storeu_ps(y + 3 * ld, m, _mm_add_ps(_mm512_extractf32x4_ps(sums, 3), bv));
        return;
    }
#pragma GCC unroll 4
    for (int v = 0; v < NJ; v++) {
        float *y = j->y + (size_t)(i0 + v) * (size_t)j->rows + (size_t)r0;
        for (int u = 0; u < nr; u++) y[u] = _mm512_reduce_add_ps(acc[u][v]) + b4[u];
    }
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

/* Same two kernels with 8 lanes and AVX2's 16 registers (the tile is 4
 * weight rows x 2 x rows). Tails (cols % 8) are finished in scalar code. */
static GN_AI GN_T256 void seq_rows8_dt(const mm_job *j, gn_dtype dt, int r0, int r1) {
    size_t cols = (size_t)j->cols;
    const float *x = j->x;
    for (int r = r0; r < r1; r++) {
        const char *w = (const char *)j->w + (size_t)r * cols * gn_dtype_size(dt);
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        size_t k = 0;
        for (; k + 32 <= cols; k += 32) {
            a0 = _mm256_fmadd_ps(gn_ld8(w, k, dt), _mm256_loadu_ps(x + k), a0);
            a1 = _mm256_fmadd_ps(gn_ld8(w, k + 8, dt), _mm256_loadu_ps(x + k + 8), a1);
            a2 = _mm256_fmadd_ps(gn_ld8(w, k + 16, dt), _mm256_loadu_ps(x + k + 16), a2);
            a3 = _mm256_fmadd_ps(gn_ld8(w, k + 24, dt), _mm256_loadu_ps(x + k + 24), a3);
        }
        for (; k + 8 <= cols; k += 8) a0 = _mm256_fmadd_ps(gn_ld8(w, k, dt), _mm256_loadu_ps(x + k), a0);
        float t = gn_hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        for (; k < cols; k++) t += gn_cpu_wget(w, dt, k) * x[k];
        j->y[r] = t + bias_at(j->bias, r);
    }
}

static GN_AI GN_T256 void tile8(const mm_job *j, gn_dtype dt, int NJ, int i0, int r0, int nr, int pf) {
    size_t cols = (size_t)j->cols, es = gn_dtype_size(dt);
    const char *w[4];
    for (int u = 0; u < 4; u++)
        w[u] = (const char *)j->w + (size_t)(r0 + (u < nr ? u : nr - 1)) * cols * es;
    const float *x = j->x + (size_t)i0 * cols;
    __m256 acc[4][2];
#pragma GCC unroll 4
    for (int u = 0; u < 4; u++)
#pragma GCC unroll 2
        for (int v = 0; v < NJ; v++) acc[u][v] = _mm256_setzero_ps();
    const char *nx = w[0] + 4 * cols * es;
    size_t k = 0;
    for (; k + 8 <= cols; k += 8) {
        if (pf && (k & 15) == 0)
            for (int u = 0; u < 4; u++) _mm_prefetch(nx + ((size_t)u * cols + k) * es, _MM_HINT_T0);
        __m256 wv[4];
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++) wv[u] = gn_ld8(w[u], k, dt);
#pragma GCC unroll 2
        for (int v = 0; v < NJ; v++) {
            __m256 xv = _mm256_loadu_ps(x + (size_t)v * cols + k);
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) acc[u][v] = _mm256_fmadd_ps(wv[u], xv, acc[u][v]);
        }
    }
#pragma GCC unroll 2
    for (int v = 0; v < NJ; v++) {
        float *y = j->y + (size_t)(i0 + v) * (size_t)j->rows + (size_t)r0;
        const float *xv = x + (size_t)v * cols;
        for (int u = 0; u < nr; u++) {
            float s = gn_hsum8(acc[u][v]);
            for (size_t kk = k; kk < cols; kk++) s += gn_cpu_wget(w[u], dt, kk) * xv[kk];
            y[u] = s + bias_at(j->bias, r0 + u);
        }
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
