/* ops_ref.c — the reference op table ("cpu-ref"): plain scalar C, one
 * thread, written to be obviously correct rather than fast. Every other
 * implementation of engine/backend.h is tested against these functions; keep
 * them simple (sums in double, no reordering tricks). */
#include <math.h>
#include <string.h>

#include "cpu_internal.h"

static int ref_embed(gn_backend *be, float *out, const gn_tensor *table, const int32_t *tokens,
                     int n) {
    int rc = gn_cpu_check_weight(be, "embed", table);
    if (rc) return rc;
    for (int i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= table->rows)
            return gn_errf(&be->err, GN_EINVAL, "embed: token %d out of [0, %lld)", tokens[i],
                           (long long)table->rows);
        for (int64_t d = 0; d < table->cols; d++)
            out[(size_t)i * (size_t)table->cols + (size_t)d] =
                gn_cpu_wget(table->data, table->dtype, (size_t)tokens[i] * (size_t)table->cols + (size_t)d);
    }
    return 0;
}

static int ref_rmsnorm(gn_backend *be, float *out, const float *x, const gn_tensor *w, int n_rows,
                       int dim, float eps) {
    int rc = gn_cpu_check_weight(be, "rmsnorm", w);
    if (rc) return rc;
    if (w->rows * w->cols != dim)
        return gn_errf(&be->err, GN_EINVAL, "rmsnorm: weight has %lld elements, dim %d",
                       (long long)(w->rows * w->cols), dim);
    for (int r = 0; r < n_rows; r++) {
        const float *xr = x + (size_t)r * (size_t)dim;
        float *o = out + (size_t)r * (size_t)dim;
        double ss = 0.0;
        for (int d = 0; d < dim; d++) ss += (double)xr[d] * (double)xr[d];
        float inv = (float)(1.0 / sqrt(ss / dim + (double)eps));
        for (int d = 0; d < dim; d++) o[d] = xr[d] * inv * gn_cpu_wget(w->data, w->dtype, (size_t)d);
    }
    return 0;
}

static int ref_matmul(gn_backend *be, float *y, const float *x, const gn_tensor *w,
                      const gn_tensor *bias, int n) {
    int rc = gn_cpu_check_matmul(be, y, x, w, bias, n);
    if (rc) return rc;
    size_t rows = (size_t)w->rows, cols = (size_t)w->cols;
    for (int i = 0; i < n; i++) {
        for (size_t r = 0; r < rows; r++) {
            double acc = 0.0;
            for (size_t c = 0; c < cols; c++)
                acc += (double)x[(size_t)i * cols + c] * (double)gn_cpu_wget(w->data, w->dtype, r * cols + c);
            if (bias && bias->data) acc += gn_cpu_wget(bias->data, bias->dtype, r);
            y[(size_t)i * rows + r] = (float)acc;
        }
    }
    return 0;
}

static int ref_rope(gn_backend *be, float *x, int n_tok, int n_heads, int head_dim,
                    const int32_t *pos, const float *inv_freq) {
    if (head_dim <= 0 || head_dim % 2)
        return gn_errf(&be->err, GN_EINVAL, "rope: head_dim %d is not even", head_dim);
    int half = head_dim / 2;
    for (int t = 0; t < n_tok; t++) {
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)t * (size_t)n_heads + (size_t)h) * (size_t)head_dim;
            for (int i = 0; i < half; i++) {
                /* The angle is rounded to float like Hugging Face's float32
                 * position x inv_freq product; cos/sin are then exact. */
                float angle = (float)pos[t] * inv_freq[i];
                float c = (float)cos((double)angle), s = (float)sin((double)angle);
                float a = v[i], b = v[i + half];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
    }
    return 0;
}

static int ref_swiglu(gn_backend *be, float *out, const float *gate, const float *up, size_t n) {
    (void)be;
    for (size_t i = 0; i < n; i++) {
        double g = gate[i];
        out[i] = (float)(g / (1.0 + exp(-g)) * (double)up[i]);
    }
    return 0;
}

static int ref_add(gn_backend *be, float *x, const float *y, size_t n) {
    (void)be;
    for (size_t i = 0; i < n; i++) x[i] += y[i];
    return 0;
}

static int ref_get_rows(gn_backend *be, float *out, const float *x, const int32_t *rows, int n,
                        int dim) {
    (void)be;
    for (int i = 0; i < n; i++)
        memcpy(out + (size_t)i * (size_t)dim, x + (size_t)rows[i] * (size_t)dim, (size_t)dim * sizeof(float));
    return 0;
}

/* Two passes per (token, head) with no scratch: the first finds the largest
 * score, the second sums exp(score - max) and the weighted V rows. */
static int ref_attention(gn_backend *be, float *out, const float *q, const float *k, const float *v,
                         const gn_kv_pool *kv, int layer, const gn_attn_batch *b, int n_heads,
                         int sliding_window, float scale) {
    int rc = gn_cpu_check_attention(be, kv, layer, b, n_heads);
    if (rc) return rc;
    int hd = kv->head_dim, nkv = kv->n_kv_heads, bs = kv->block_size;
    size_t kv_row = (size_t)nkv * (size_t)hd, q_row = (size_t)n_heads * (size_t)hd;
    /* 1. Store this step's K and V rows at their positions. */
    for (int i = 0; i < b->n_tokens; i++) {
        int s = b->tok_seq[i], pos = b->tok_pos[i];
        int blk = b->block_table[(size_t)s * (size_t)b->max_blocks + (size_t)(pos / bs)];
        memcpy(gn_cpu_kv_row(kv, blk, layer, 0, pos % bs), k + (size_t)i * kv_row, kv_row * sizeof(float));
        memcpy(gn_cpu_kv_row(kv, blk, layer, 1, pos % bs), v + (size_t)i * kv_row, kv_row * sizeof(float));
    }
    /* 2. Attend. */
    int group = n_heads / nkv;
    double acc[GN_CPU_MAX_HEAD_DIM];
    for (int i = 0; i < b->n_tokens; i++) {
        int s = b->tok_seq[i], pos = b->tok_pos[i];
        int lo = 0;
        if (sliding_window > 0 && pos - sliding_window + 1 > 0) lo = pos - sliding_window + 1;
        const int32_t *table = b->block_table + (size_t)s * (size_t)b->max_blocks;
        for (int h = 0; h < n_heads; h++) {
            const float *qh = q + (size_t)i * q_row + (size_t)h * (size_t)hd;
            int kh = h / group;
            double mx = -INFINITY;
            for (int p = lo; p <= pos; p++) {
                const float *kp = gn_cpu_kv_row(kv, table[p / bs], layer, 0, p % bs) + (size_t)kh * (size_t)hd;
                double dot = 0.0;
                for (int d = 0; d < hd; d++) dot += (double)qh[d] * (double)kp[d];
                dot *= scale;
                if (dot > mx) mx = dot;
            }
            double sum = 0.0;
            for (int d = 0; d < hd; d++) acc[d] = 0.0;
            for (int p = lo; p <= pos; p++) {
                const float *kp = gn_cpu_kv_row(kv, table[p / bs], layer, 0, p % bs) + (size_t)kh * (size_t)hd;
                const float *vp = gn_cpu_kv_row(kv, table[p / bs], layer, 1, p % bs) + (size_t)kh * (size_t)hd;
                double dot = 0.0;
                for (int d = 0; d < hd; d++) dot += (double)qh[d] * (double)kp[d];
                double e = exp(dot * scale - mx);
                sum += e;
                for (int d = 0; d < hd; d++) acc[d] += e * (double)vp[d];
            }
            float *o = out + (size_t)i * q_row + (size_t)h * (size_t)hd;
            for (int d = 0; d < hd; d++) o[d] = (float)(acc[d] / sum);
        }
    }
    return 0;
}

static int ref_log_softmax(gn_backend *be, float *out, const float *x, int n_rows, int n_cols,
                           int ld_x) {
    if (n_cols <= 0 || n_cols > ld_x)
        return gn_errf(&be->err, GN_EINVAL, "log_softmax: %d columns of rows of %d", n_cols, ld_x);
    for (int r = 0; r < n_rows; r++) {
        const float *xr = x + (size_t)r * (size_t)ld_x;
        float *o = out + (size_t)r * (size_t)n_cols;
        double mx = -INFINITY;
        for (int c = 0; c < n_cols; c++)
            if (xr[c] > mx) mx = xr[c];
        double sum = 0.0;
        for (int c = 0; c < n_cols; c++) sum += exp((double)xr[c] - mx);
        double lse = mx + log(sum);
        for (int c = 0; c < n_cols; c++) o[c] = (float)((double)xr[c] - lse);
    }
    return 0;
}

const gn_backend_ops gn_cpu_ref_ops = {
    .destroy = gn_cpu_destroy,
    .alloc = gn_cpu_alloc,
    .free = gn_cpu_free,
    .upload = gn_cpu_upload,
    .download = gn_cpu_download,
    .synchronize = gn_cpu_synchronize,
    .embed = ref_embed,
    .rmsnorm = ref_rmsnorm,
    .matmul = ref_matmul,
    .rope = ref_rope,
    .swiglu = ref_swiglu,
    .add = ref_add,
    .get_rows = ref_get_rows,
    .attention = ref_attention,
    .log_softmax = ref_log_softmax,
};
