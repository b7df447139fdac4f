/* ops_fast.c — the fast op table ("cpu"): the element-wise and row-wise
 * ops, threaded over rows on the backend's pool, with SIMD for the ones
 * that do arithmetic per element (rmsnorm, swiglu, log_softmax). matmul and
 * attention live in matmul_fast.c and attention_fast.c. Small inputs run on
 * the calling thread: waking the pool costs more than they do. */
#include <math.h>
#include <string.h>

#include "cpu_internal.h"
#include "simd.h"

/* Below this many elements an op runs single-threaded. */
#define PAR_MIN_ELEMS 16384

/* Splits [0, n_rows) into at most 4 tasks per thread. */
typedef struct rows_job {
    int n_rows, rows_per_task;
    void *op; /* the op's own arguments */
    void (*fn)(void *op, int r0, int r1);
} rows_job;

static void rows_task(void *ctx, int task, int thread) {
    (void)thread;
    rows_job *j = ctx;
    int r0 = task * j->rows_per_task;
    int r1 = r0 + j->rows_per_task < j->n_rows ? r0 + j->rows_per_task : j->n_rows;
    j->fn(j->op, r0, r1);
}

static void par_rows(gn_cpu *c, int n_rows, size_t elems_per_row, void *op,
                     void (*fn)(void *op, int r0, int r1)) {
    if (n_rows <= 0) return;
    if (c->n_threads == 1 || n_rows == 1 || (size_t)n_rows * elems_per_row < PAR_MIN_ELEMS) {
        fn(op, 0, n_rows);
        return;
    }
    int tasks = c->n_threads * 4 < n_rows ? c->n_threads * 4 : n_rows;
    rows_job j = {.n_rows = n_rows, .rows_per_task = (n_rows + tasks - 1) / tasks, .op = op, .fn = fn};
    gn_pool_run(c->pool, rows_task, &j, (n_rows + j.rows_per_task - 1) / j.rows_per_task);
}

/* ------------------------------------------------------------------ embed */

typedef struct embed_op {
    float *out;
    const gn_tensor *t;
    const int32_t *tokens;
} embed_op;

static void embed_rows(void *p, int r0, int r1) {
    embed_op *o = p;
    size_t dim = (size_t)o->t->cols;
    for (int i = r0; i < r1; i++) {
        float *dst = o->out + (size_t)i * dim;
        size_t base = (size_t)o->tokens[i] * dim;
        if (o->t->dtype == GN_F32) {
            memcpy(dst, (const float *)o->t->data + base, dim * sizeof(float));
        } else if (o->t->dtype == GN_BF16) {
            const uint16_t *s = (const uint16_t *)o->t->data + base;
            for (size_t d = 0; d < dim; d++) dst[d] = gn_bf16_to_f32(s[d]);
        } else {
            const uint16_t *s = (const uint16_t *)o->t->data + base;
            for (size_t d = 0; d < dim; d++) dst[d] = gn_f16_to_f32(s[d]);
        }
    }
}

static int fast_embed(gn_backend *be, float *out, const gn_tensor *table, const int32_t *tokens,
                      int n) {
    int rc = gn_cpu_check_weight(be, "embed", table);
    if (rc) return rc;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= table->rows)
            return gn_errf(&be->err, GN_EINVAL, "embed: token %d out of [0, %lld)", tokens[i],
                           (long long)table->rows);
    embed_op o = {out, table, tokens};
    par_rows(gn_cpu_of(be), n, (size_t)table->cols, &o, embed_rows);
    return 0;
}

/* ------------------------------------------------------------------ rmsnorm */

typedef struct rms_op {
    float *out;
    const float *x;
    const gn_tensor *w;
    int dim;
    float eps;
    gn_cpu_isa isa;
} rms_op;

#ifdef GN_CPU_X86
static GN_AI GN_T512 void rms_row16(float *o, const float *x, const void *w, gn_dtype dt, int dim,
                                    float eps) {
    __m512 s = _mm512_setzero_ps();
    for (int d = 0; d < dim; d += 16) {
        __m512 v = _mm512_maskz_loadu_ps(gn_mask16(dim - d), x + d);
        s = _mm512_fmadd_ps(v, v, s);
    }
    __m512 inv = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(s) / (float)dim + eps));
    for (int d = 0; d < dim; d += 16) {
        __mmask16 m = gn_mask16(dim - d);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + d), inv);
        _mm512_mask_storeu_ps(o + d, m, _mm512_mul_ps(v, gn_ld16_mask(w, (size_t)d, dt, m)));
    }
}

static GN_T512 void rms_rows16(rms_op *o, int r0, int r1) {
    for (int r = r0; r < r1; r++) {
        float *out = o->out + (size_t)r * (size_t)o->dim;
        const float *x = o->x + (size_t)r * (size_t)o->dim;
        switch (o->w->dtype) {
        case GN_F32: rms_row16(out, x, o->w->data, GN_F32, o->dim, o->eps); break;
        case GN_BF16: rms_row16(out, x, o->w->data, GN_BF16, o->dim, o->eps); break;
        case GN_F16: rms_row16(out, x, o->w->data, GN_F16, o->dim, o->eps); break;
        }
    }
}
#endif

static void rms_rows(void *p, int r0, int r1) {
    rms_op *o = p;
#ifdef GN_CPU_X86
    if (o->isa == GN_CPU_AVX512) {
        rms_rows16(o, r0, r1);
        return;
    }
#endif
    int dim = o->dim;
    for (int r = r0; r < r1; r++) {
        float *out = o->out + (size_t)r * (size_t)dim;
        const float *x = o->x + (size_t)r * (size_t)dim;
        float s[8] = {0};
        int d = 0;
        for (; d + 8 <= dim; d += 8)
            for (int u = 0; u < 8; u++) s[u] += x[d + u] * x[d + u];
        for (; d < dim; d++) s[0] += x[d] * x[d];
        float ss = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
        float inv = 1.0f / sqrtf(ss / (float)dim + o->eps);
        for (d = 0; d < dim; d++) out[d] = x[d] * inv * gn_cpu_wget(o->w->data, o->w->dtype, (size_t)d);
    }
}

static int fast_rmsnorm(gn_backend *be, float *out, const float *x, const gn_tensor *w, int n_rows,
                        int dim, float eps) {
    int rc = gn_cpu_check_weight(be, "rmsnorm", w);
    if (rc) return rc;
    if (w->rows * w->cols != dim)
        return gn_errf(&be->err, GN_EINVAL, "rmsnorm: weight has %lld elements, dim %d",
                       (long long)(w->rows * w->cols), dim);
    gn_cpu *c = gn_cpu_of(be);
    rms_op o = {out, x, w, dim, eps, c->isa};
    par_rows(c, n_rows, (size_t)dim, &o, rms_rows);
    return 0;
}

/* ------------------------------------------------------------------ rope */

typedef struct rope_op {
    float *x;
    int n_heads, head_dim;
    const int32_t *pos;
    const float *inv_freq;
} rope_op;

static void rope_rows(void *p, int t0, int t1) {
    rope_op *o = p;
    int half = o->head_dim / 2;
    float cs[GN_CPU_MAX_HEAD_DIM / 2], sn[GN_CPU_MAX_HEAD_DIM / 2];
    for (int t = t0; t < t1; t++) {
        /* Same rounding as the reference: float angle, exact cos/sin. */
        for (int i = 0; i < half; i++) {
            float angle = (float)o->pos[t] * o->inv_freq[i];
            cs[i] = (float)cos((double)angle);
            sn[i] = (float)sin((double)angle);
        }
        for (int h = 0; h < o->n_heads; h++) {
            float *v = o->x + ((size_t)t * (size_t)o->n_heads + (size_t)h) * (size_t)o->head_dim;
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * cs[i] - b * sn[i];
                v[i + half] = b * cs[i] + a * sn[i];
            }
        }
    }
}

static int fast_rope(gn_backend *be, float *x, int n_tok, int n_heads, int head_dim,
                     const int32_t *pos, const float *inv_freq) {
    if (head_dim <= 0 || head_dim % 2 || head_dim > GN_CPU_MAX_HEAD_DIM)
        return gn_errf(&be->err, GN_EINVAL, "rope: head_dim %d (even, at most %d)", head_dim,
                       GN_CPU_MAX_HEAD_DIM);
    rope_op o = {x, n_heads, head_dim, pos, inv_freq};
    par_rows(gn_cpu_of(be), n_tok, (size_t)n_heads * (size_t)head_dim * 4, &o, rope_rows);
    return 0;
}

/* ------------------------------------------------------------------ swiglu, add */

#define ELEM_CHUNK 4096 /* elements per "row" when an element-wise op is split */

typedef struct elem_op {
    float *out;
    const float *a, *b;
    size_t n;
    gn_cpu_isa isa;
} elem_op;

#ifdef GN_CPU_X86
static GN_T512 void swiglu16(float *out, const float *g, const float *u, size_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = gn_mask16(n - i < 16 ? (int)(n - i) : 16);
        __m512 gv = _mm512_maskz_loadu_ps(m, g + i);
        __m512 e = gn_exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        __m512 silu = _mm512_div_ps(gv, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(m, u + i)));
    }
}

static GN_AI GN_T256 __m256 swiglu8_vec(__m256 gv, __m256 uv) {
    __m256 e = gn_exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
    return _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), uv);
}

/* The tail (n % 8) goes through the same vector code, zero padded, so an
 * element's result does not depend on where it sits in the array (batch
 * invariance: the last row of a batch is no different). */
static GN_T256 void swiglu8(float *out, const float *g, const float *u, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, swiglu8_vec(_mm256_loadu_ps(g + i), _mm256_loadu_ps(u + i)));
    if (i < n) {
        float gt[8] = {0}, ut[8] = {0}, ot[8];
        memcpy(gt, g + i, (n - i) * sizeof(float));
        memcpy(ut, u + i, (n - i) * sizeof(float));
        _mm256_storeu_ps(ot, swiglu8_vec(_mm256_loadu_ps(gt), _mm256_loadu_ps(ut)));
        memcpy(out + i, ot, (n - i) * sizeof(float));
    }
}
#endif

static void swiglu_rows(void *p, int c0, int c1) {
    elem_op *o = p;
    size_t i0 = (size_t)c0 * ELEM_CHUNK, i1 = (size_t)c1 * ELEM_CHUNK;
    if (i1 > o->n) i1 = o->n;
#ifdef GN_CPU_X86
    if (o->isa == GN_CPU_AVX512) {
        swiglu16(o->out + i0, o->a + i0, o->b + i0, i1 - i0);
        return;
    }
    if (o->isa == GN_CPU_AVX2) {
        swiglu8(o->out + i0, o->a + i0, o->b + i0, i1 - i0);
        return;
    }
#endif
    for (size_t i = i0; i < i1; i++) o->out[i] = o->a[i] / (1.0f + expf(-o->a[i])) * o->b[i];
}

static int fast_swiglu(gn_backend *be, float *out, const float *gate, const float *up, size_t n) {
    gn_cpu *c = gn_cpu_of(be);
    elem_op o = {out, gate, up, n, c->isa};
    size_t chunks = (n + ELEM_CHUNK - 1) / ELEM_CHUNK;
    if (chunks > INT32_MAX) return gn_errf(&be->err, GN_ERANGE, "swiglu: %zu elements", n);
    par_rows(c, (int)chunks, ELEM_CHUNK, &o, swiglu_rows);
    return 0;
}

static void add_rows(void *p, int c0, int c1) {
    elem_op *o = p;
    size_t i0 = (size_t)c0 * ELEM_CHUNK, i1 = (size_t)c1 * ELEM_CHUNK;
    if (i1 > o->n) i1 = o->n;
    float *x = o->out;
    const float *y = o->b;
    for (size_t i = i0; i < i1; i++) x[i] += y[i];
}

static int fast_add(gn_backend *be, float *x, const float *y, size_t n) {
    gn_cpu *c = gn_cpu_of(be);
    elem_op o = {x, NULL, y, n, c->isa};
    size_t chunks = (n + ELEM_CHUNK - 1) / ELEM_CHUNK;
    if (chunks > INT32_MAX) return gn_errf(&be->err, GN_ERANGE, "add: %zu elements", n);
    par_rows(c, (int)chunks, ELEM_CHUNK, &o, add_rows);
    return 0;
}

/* The optional fused ops (backend.h), as the compositions they stand for:
 * the same results bit for bit; the runner's fused path runs on the CPU too. */
static int fast_add_rmsnorm(gn_backend *be, float *x, const float *y, float *out, const gn_tensor *w,
                            int n_rows, int dim, float eps) {
    if (n_rows < 0 || dim <= 0 || out == x)
        return gn_errf(&be->err, GN_EINVAL, "add_rmsnorm: rows=%d dim=%d%s", n_rows, dim,
                       out == x ? " (out aliases x)" : "");
    int rc = fast_add(be, x, y, (size_t)n_rows * (size_t)dim);
    return rc ? rc : fast_rmsnorm(be, out, x, w, n_rows, dim, eps);
}

static int fast_rope_qk(gn_backend *be, float *q, float *k, int n_tok, int n_heads, int n_kv_heads,
                        int head_dim, const int32_t *pos, const float *inv_freq) {
    int rc = fast_rope(be, q, n_tok, n_heads, head_dim, pos, inv_freq);
    return rc ? rc : fast_rope(be, k, n_tok, n_kv_heads, head_dim, pos, inv_freq);
}

static int fast_get_rows(gn_backend *be, float *out, const float *x, const int32_t *rows, int n,
                         int dim) {
    (void)be;
    for (int i = 0; i < n; i++)
        memcpy(out + (size_t)i * (size_t)dim, x + (size_t)rows[i] * (size_t)dim, (size_t)dim * sizeof(float));
    return 0;
}

/* ------------------------------------------------------------------ log_softmax */

typedef struct lsm_op {
    float *out;
    const float *x;
    int n_cols, ld_x;
    gn_cpu_isa isa;
} lsm_op;

#ifdef GN_CPU_X86
static GN_T512 void lsm_row16(float *o, const float *x, int n) {
    __m512 mv = _mm512_set1_ps(-INFINITY);
    for (int c = 0; c < n; c += 16) {
        __mmask16 m = gn_mask16(n - c);
        mv = _mm512_mask_max_ps(mv, m, mv, _mm512_maskz_loadu_ps(m, x + c));
    }
    float mx = _mm512_reduce_max_ps(mv);
    __m512 mb = _mm512_set1_ps(mx), s = _mm512_setzero_ps();
    for (int c = 0; c < n; c += 16) {
        __mmask16 m = gn_mask16(n - c);
        __m512 e = gn_exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + c), mb));
        s = _mm512_add_ps(s, _mm512_maskz_mov_ps(m, e));
    }
    __m512 lse = _mm512_set1_ps(mx + logf(_mm512_reduce_add_ps(s)));
    for (int c = 0; c < n; c += 16) {
        __mmask16 m = gn_mask16(n - c);
        _mm512_mask_storeu_ps(o + c, m, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + c), lse));
    }
}
#endif

static void lsm_rows(void *p, int r0, int r1) {
    lsm_op *o = p;
    for (int r = r0; r < r1; r++) {
        const float *x = o->x + (size_t)r * (size_t)o->ld_x;
        float *out = o->out + (size_t)r * (size_t)o->n_cols;
#ifdef GN_CPU_X86
        if (o->isa == GN_CPU_AVX512) {
            lsm_row16(out, x, o->n_cols);
            continue;
        }
#endif
        float mx = -INFINITY;
        for (int c = 0; c < o->n_cols; c++) mx = x[c] > mx ? x[c] : mx;
        float s = 0.0f;
        for (int c = 0; c < o->n_cols; c++) s += expf(x[c] - mx);
        float lse = mx + logf(s);
        for (int c = 0; c < o->n_cols; c++) out[c] = x[c] - lse;
    }
}

static int fast_log_softmax(gn_backend *be, float *out, const float *x, int n_rows, int n_cols,
                            int ld_x) {
    if (n_cols <= 0 || n_cols > ld_x)
        return gn_errf(&be->err, GN_EINVAL, "log_softmax: %d columns of rows of %d", n_cols, ld_x);
    gn_cpu *c = gn_cpu_of(be);
    lsm_op o = {out, x, n_cols, ld_x, c->isa};
    par_rows(c, n_rows, (size_t)n_cols, &o, lsm_rows);
    return 0;
}

const gn_backend_ops gn_cpu_fast_ops = {
    .destroy = gn_cpu_destroy,
    .alloc = gn_cpu_alloc,
    .free = gn_cpu_free,
    .upload = gn_cpu_upload,
    .download = gn_cpu_download,
    .synchronize = gn_cpu_synchronize,
    .embed = fast_embed,
    .rmsnorm = fast_rmsnorm,
    .matmul = gn_cpu_matmul_fast,
    .matmul_multi = gn_cpu_matmul_multi_fast,
    .rope = fast_rope,
    .swiglu = fast_swiglu,
    .add = fast_add,
    .get_rows = fast_get_rows,
    .attention = gn_cpu_attention_fast,
    .log_softmax = fast_log_softmax,
    .add_rmsnorm = fast_add_rmsnorm,
    .rope_qk = fast_rope_qk,
};
