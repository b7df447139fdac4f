/* attention_fast.c — causal attention over the paged KV pool for the fast
 * CPU table: one task per (token, kv head, group of q heads), online
 * softmax over block-sized chunks, SIMD dot products / V accumulation and a
 * vector exp. See attention_tmpl.h for the task body. */
#include <math.h>
#include <string.h>

#include "cpu_internal.h"
#include "simd.h"

#define GN_ATTN_CHUNK 32
#define GN_ATTN_MAX_G 8
#define GN_ATTN_ACC 2048

typedef struct attn_job {
    float *out;
    const float *q;
    const gn_kv_pool *kv;
    int layer;
    const gn_attn_batch *b;
    int n_heads, group, g, n_sub, window;
    float scale;
} attn_job;

/* ---- scalar helpers ---- */

static inline float dot_sc(const float *a, const float *b, int n) {
    float s[4] = {0, 0, 0, 0};
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int u = 0; u < 4; u++) s[u] += a[i + u] * b[i + u];
    for (; i < n; i++) s[0] += a[i] * b[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

static inline void dots_sc(float *s, const float *q, const float *k, size_t stride, int cn, int n,
                           float scale) {
    for (int t = 0; t < cn; t++) s[t] = dot_sc(q, k + (size_t)t * stride, n) * scale;
}

static inline void wsum_sc(float *y, const float *p, const float *v, size_t stride, int cn, int n) {
    for (int t = 0; t < cn; t++)
        for (int i = 0; i < n; i++) y[i] += p[t] * v[(size_t)t * stride + i];
}

static inline void scale_sc(float *y, float a, int n) {
    for (int i = 0; i < n; i++) y[i] *= a;
}

static inline float expsum_sc(float *s, int n, float m) {
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        s[i] = expf(s[i] - m);
        sum += s[i];
    }
    return sum;
}

#define GN_ATTN_NAME attn_one_sc
#define GN_ATTN_TARGET
#define GN_ATTN_DOTS dots_sc
#define GN_ATTN_WSUM wsum_sc
#define GN_ATTN_SCALE scale_sc
#define GN_ATTN_EXPSUM expsum_sc
#include "attention_tmpl.h"
#undef GN_ATTN_NAME
#undef GN_ATTN_TARGET
#undef GN_ATTN_DOTS
#undef GN_ATTN_WSUM
#undef GN_ATTN_SCALE
#undef GN_ATTN_EXPSUM

#ifdef GN_CPU_X86

/* ---- AVX-512 helpers ---- */

/* Scores of cn positions, 4 at a time so that the horizontal sums of
 * independent positions overlap. */
static GN_AI GN_T512 void dots_512(float *s, const float *q, const float *k, size_t stride, int cn, int n,
                                   float scale) {
    int t = 0;
    for (; t + 4 <= cn; t += 4) {
        const float *k0 = k + (size_t)t * stride, *k1 = k0 + stride, *k2 = k1 + stride, *k3 = k2 + stride;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < n; i += 16) {
            __mmask16 m = gn_mask16(n - i);
            __m512 qv = _mm512_maskz_loadu_ps(m, q + i);
            a0 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k0 + i), a0);
            a1 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k1 + i), a1);
            a2 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k2 + i), a2);
            a3 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k3 + i), a3);
        }
        s[t] = _mm512_reduce_add_ps(a0) * scale;
        s[t + 1] = _mm512_reduce_add_ps(a1) * scale;
        s[t + 2] = _mm512_reduce_add_ps(a2) * scale;
        s[t + 3] = _mm512_reduce_add_ps(a3) * scale;
    }
    for (; t < cn; t++) {
        const float *kt = k + (size_t)t * stride;
        __m512 a0 = _mm512_setzero_ps();
        for (int i = 0; i < n; i += 16) {
            __mmask16 m = gn_mask16(n - i);
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), _mm512_maskz_loadu_ps(m, kt + i), a0);
        }
        s[t] = _mm512_reduce_add_ps(a0) * scale;
    }
}

/* y += sum_t p[t] v_t, 16 columns at a time with the running sum in
 * registers (y is loaded and stored once per chunk, not per position). */
static GN_AI GN_T512 void wsum_512(float *y, const float *p, const float *v, size_t stride, int cn, int n) {
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = gn_mask16(n - i);
        __m512 r0 = _mm512_maskz_loadu_ps(m, y + i), r1 = _mm512_setzero_ps();
        int t = 0;
        for (; t + 2 <= cn; t += 2) {
            r0 = _mm512_fmadd_ps(_mm512_set1_ps(p[t]), _mm512_maskz_loadu_ps(m, v + (size_t)t * stride + i), r0);
            r1 = _mm512_fmadd_ps(_mm512_set1_ps(p[t + 1]),
                                 _mm512_maskz_loadu_ps(m, v + (size_t)(t + 1) * stride + i), r1);
        }
        if (t < cn) r0 = _mm512_fmadd_ps(_mm512_set1_ps(p[t]), _mm512_maskz_loadu_ps(m, v + (size_t)t * stride + i), r0);
        _mm512_mask_storeu_ps(y + i, m, _mm512_add_ps(r0, r1));
    }
}

static GN_AI GN_T512 void scale_512(float *y, float a, int n) {
    __m512 av = _mm512_set1_ps(a);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = gn_mask16(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(av, _mm512_maskz_loadu_ps(m, y + i)));
    }
}

static GN_AI GN_T512 float expsum_512(float *s, int n, float mval) {
    __m512 mv = _mm512_set1_ps(mval), acc = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = gn_mask16(n - i);
        __m512 e = gn_exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + i), mv));
        e = _mm512_maskz_mov_ps(m, e);
        _mm512_mask_storeu_ps(s + i, m, e);
        acc = _mm512_add_ps(acc, e);
    }
    return _mm512_reduce_add_ps(acc);
}

#define GN_ATTN_NAME attn_one_512
#define GN_ATTN_TARGET GN_T512
#define GN_ATTN_DOTS dots_512
#define GN_ATTN_WSUM wsum_512
#define GN_ATTN_SCALE scale_512
#define GN_ATTN_EXPSUM expsum_512
#include "attention_tmpl.h"
#undef GN_ATTN_NAME
#undef GN_ATTN_TARGET
#undef GN_ATTN_DOTS
#undef GN_ATTN_WSUM
#undef GN_ATTN_SCALE
#undef GN_ATTN_EXPSUM

/* ---- AVX2 helpers ---- */

static GN_AI GN_T256 float dot_256(const float *a, const float *b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = gn_hsum8(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static GN_AI GN_T256 void axpy_256(float *y, float a, const float *x, int n) {
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

static GN_AI GN_T256 void dots_256(float *s, const float *q, const float *k, size_t stride, int cn, int n,
                                   float scale) {
    for (int t = 0; t < cn; t++) s[t] = dot_256(q, k + (size_t)t * stride, n) * scale;
}

static GN_AI GN_T256 void wsum_256(float *y, const float *p, const float *v, size_t stride, int cn, int n) {
    for (int t = 0; t < cn; t++) axpy_256(y, p[t], v + (size_t)t * stride, n);
}

static GN_AI GN_T256 void scale_256(float *y, float a, int n) {
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(av, _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] *= a;
}

static GN_AI GN_T256 float expsum_256(float *s, int n, float mval) {
    __m256 mv = _mm256_set1_ps(mval), acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = gn_exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), mv));
        _mm256_storeu_ps(s + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = gn_hsum8(acc);
    for (; i < n; i++) {
        s[i] = expf(s[i] - mval);
        sum += s[i];
    }
    return sum;
}

#define GN_ATTN_NAME attn_one_256
#define GN_ATTN_TARGET GN_T256
#define GN_ATTN_DOTS dots_256
#define GN_ATTN_WSUM wsum_256
#define GN_ATTN_SCALE scale_256
#define GN_ATTN_EXPSUM expsum_256
#include "attention_tmpl.h"
#undef GN_ATTN_NAME
#undef GN_ATTN_TARGET
#undef GN_ATTN_DOTS
#undef GN_ATTN_WSUM
#undef GN_ATTN_SCALE
#undef GN_ATTN_EXPSUM

#endif /* GN_CPU_X86 */

typedef struct attn_ctx {
    const attn_job *j;
    gn_cpu_isa isa;
} attn_ctx;

static void attn_task(void *ctx, int task, int thread) {
    (void)thread;
    const attn_ctx *a = ctx;
    const attn_job *j = a->j;
    int nkv = j->kv->n_kv_heads;
    int per_tok = nkv * j->n_sub;
    /* Later tokens of a prefill see more positions: hand them out first. */
    int i = j->b->n_tokens - 1 - task / per_tok;
    int r = task % per_tok;
    int kh = r / j->n_sub, sub = r % j->n_sub;
    int h0 = kh * j->group + sub * j->g;
    int g = j->group - sub * j->g < j->g ? j->group - sub * j->g : j->g;
#ifdef GN_CPU_X86
    if (a->isa == GN_CPU_AVX512) {
        attn_one_512(j, i, kh, h0, g);
        return;
    }
    if (a->isa == GN_CPU_AVX2) {
        attn_one_256(j, i, kh, h0, g);
        return;
    }
#endif
    attn_one_sc(j, i, kh, h0, g);
}

int gn_cpu_attention_fast(gn_backend *be, float *out, const float *q, const float *k,
                          const float *v, const gn_kv_pool *kv, int layer, const gn_attn_batch *b,
                          int n_heads, int sliding_window, float scale) {
    int rc = gn_cpu_check_attention(be, kv, layer, b, n_heads);
    if (rc) return rc;
    gn_cpu *c = gn_cpu_of(be);
    int hd = kv->head_dim, bs = kv->block_size;
    size_t kv_row = (size_t)kv->n_kv_heads * (size_t)hd;
    for (int i = 0; i < b->n_tokens; i++) {
        int s = b->tok_seq[i], pos = b->tok_pos[i];
        int blk = b->block_table[(size_t)s * (size_t)b->max_blocks + (size_t)(pos / bs)];
        memcpy(gn_cpu_kv_row(kv, blk, layer, 0, pos % bs), k + (size_t)i * kv_row, kv_row * sizeof(float));
        memcpy(gn_cpu_kv_row(kv, blk, layer, 1, pos % bs), v + (size_t)i * kv_row, kv_row * sizeof(float));
    }
    attn_job j = {.out = out, .q = q, .kv = kv, .layer = layer, .b = b, .n_heads = n_heads,
                  .group = n_heads / kv->n_kv_heads, .window = sliding_window, .scale = scale};
    j.g = j.group < GN_ATTN_MAX_G ? j.group : GN_ATTN_MAX_G;
    while (j.g > 1 && j.g * hd > GN_ATTN_ACC) j.g--;
    j.n_sub = (j.group + j.g - 1) / j.g;
    attn_ctx a = {&j, c->isa};
    gn_pool_run(c->pool, attn_task, &a, b->n_tokens * kv->n_kv_heads * j.n_sub);
    return 0;
}
