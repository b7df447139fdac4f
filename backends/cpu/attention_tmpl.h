/* attention_tmpl.h — the body of one attention task, included by
 * attention_fast.c once per SIMD level with these macros defined:
 *   GN_ATTN_NAME    function name          GN_ATTN_TARGET  target attribute
 *   GN_ATTN_DOTS(s, q, k, stride, cn, n, scale)
 *                              s[t] = scale * sum_i q[i] * k[t*stride + i], t < cn
 *   GN_ATTN_WSUM(y, p, v, stride, cn, n)
 *                              y[i] += sum_t p[t] * v[t*stride + i]
 *   GN_ATTN_SCALE(y, a, n)     y[i] *= a
 *   GN_ATTN_EXPSUM(s, n, m)    s[i] = exp(s[i] - m), returns the sum
 * No include guard on purpose. */

/* One task: token i, kv head kh, q heads [h0, h0 + g) of that kv head's
 * group. Online softmax over chunks of at most GN_ATTN_CHUNK positions that
 * stay inside one KV block, so K/V rows are read once for all g heads. */
static GN_ATTN_TARGET void GN_ATTN_NAME(const attn_job *j, int i, int kh, int h0, int g) {
    const gn_kv_pool *kv = j->kv;
    const gn_attn_batch *b = j->b;
    int hd = kv->head_dim, bs = kv->block_size;
    size_t slot_stride = (size_t)kv->n_kv_heads * (size_t)hd;
    size_t q_row = (size_t)j->n_heads * (size_t)hd;
    int s = b->tok_seq[i], pos = b->tok_pos[i];
    int lo = 0;
    if (j->window > 0 && pos - j->window + 1 > 0) lo = pos - j->window + 1;
    const int32_t *table = b->block_table + (size_t)s * (size_t)b->max_blocks;

    float acc[GN_ATTN_ACC]; /* g * hd <= GN_ATTN_ACC */
    float sc[GN_ATTN_MAX_G][GN_ATTN_CHUNK];
    float mx[GN_ATTN_MAX_G], sum[GN_ATTN_MAX_G];
    const float *qh[GN_ATTN_MAX_G];
    for (int u = 0; u < g; u++) {
        qh[u] = j->q + (size_t)i * q_row + (size_t)(h0 + u) * (size_t)hd;
        mx[u] = -INFINITY;
        sum[u] = 0.0f;
    }
    memset(acc, 0, (size_t)g * (size_t)hd * sizeof(float));

    for (int p = lo; p <= pos;) {
        int slot = p % bs;
        int cn = bs - slot;
        if (cn > pos + 1 - p) cn = pos + 1 - p;
        if (cn > GN_ATTN_CHUNK) cn = GN_ATTN_CHUNK;
        int blk = table[p / bs];
        const float *kb = gn_cpu_kv_row(kv, blk, j->layer, 0, slot) + (size_t)kh * (size_t)hd;
        const float *vb = gn_cpu_kv_row(kv, blk, j->layer, 1, slot) + (size_t)kh * (size_t)hd;
        for (int u = 0; u < g; u++) GN_ATTN_DOTS(sc[u], qh[u], kb, slot_stride, cn, hd, j->scale);
        for (int u = 0; u < g; u++) {
            float cm = sc[u][0];
            for (int t = 1; t < cn; t++) cm = sc[u][t] > cm ? sc[u][t] : cm;
            float *au = acc + (size_t)u * (size_t)hd;
            if (cm > mx[u]) {
                /* exp(-inf) = 0 on the first chunk: acc and sum are zero anyway. */
                float corr = expf(mx[u] - cm);
                sum[u] *= corr;
                GN_ATTN_SCALE(au, corr, hd);
                mx[u] = cm;
            }
            sum[u] += GN_ATTN_EXPSUM(sc[u], cn, mx[u]);
            GN_ATTN_WSUM(au, sc[u], vb, slot_stride, cn, hd);
        }
        p += cn;
    }
    for (int u = 0; u < g; u++) {
        float *o = j->out + (size_t)i * q_row + (size_t)(h0 + u) * (size_t)hd;
        const float *au = acc + (size_t)u * (size_t)hd;
        float inv = 1.0f / sum[u];
        for (int d = 0; d < hd; d++) o[d] = au[d] * inv;
    }
}
