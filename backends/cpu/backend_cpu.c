/* backend_cpu.c — the CPU backend object: creation, ISA dispatch level, host
 * memory, and the argument checks both op tables share. */
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"
#include "gn_alloc.h"

gn_cpu_isa gn_cpu_isa_detect(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return GN_CPU_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c"))
        return GN_CPU_AVX2;
#endif
    return GN_CPU_SCALAR;
}

const char *gn_cpu_isa_name(gn_cpu_isa isa) {
    switch (isa) {
    case GN_CPU_SCALAR: return "scalar";
    case GN_CPU_AVX2: return "avx2";
    case GN_CPU_AVX512: return "avx512";
    }
    return "?";
}

gn_backend *gn_backend_cpu_create(int reference, int n_threads, gn_err *err) {
    gn_backend *be = gn_calloc(1, sizeof *be);
    gn_cpu *c = gn_calloc(1, sizeof *c);
    if (!be || !c) {
        gn_free(be);
        gn_free(c);
        gn_errf(err, GN_ENOMEM, "cpu backend: out of memory");
        return NULL;
    }
    be->impl = c;
    be->kv_dtype = GN_F32;
    be->is_host = 1;
    c->reference = reference != 0;
    if (c->reference) {
        be->ops = &gn_cpu_ref_ops;
        be->name = "cpu-ref";
        c->isa = GN_CPU_SCALAR;
        c->n_threads = 1;
        return be;
    }
    be->ops = &gn_cpu_fast_ops;
    be->name = "cpu";
    c->isa = gn_cpu_isa_detect();
    const char *force = getenv("GN_CPU_ISA");
    if (force && *force) {
        gn_cpu_isa want;
        if (!strcmp(force, "scalar")) want = GN_CPU_SCALAR;
        else if (!strcmp(force, "avx2")) want = GN_CPU_AVX2;
        else if (!strcmp(force, "avx512")) want = GN_CPU_AVX512;
        else {
            gn_errf(err, GN_EINVAL, "cpu backend: GN_CPU_ISA='%s' is not scalar, avx2 or avx512", force);
            gn_cpu_destroy(be);
            return NULL;
        }
        if (want > c->isa) {
            gn_errf(err, GN_EUNSUP, "cpu backend: GN_CPU_ISA=%s but this CPU supports only %s", force,
                    gn_cpu_isa_name(c->isa));
            gn_cpu_destroy(be);
            return NULL;
        }
        c->isa = want;
    }
    c->pool = gn_pool_create(n_threads);
    if (!c->pool) {
        gn_errf(err, GN_ENOMEM, "cpu backend: cannot start the thread pool");
        gn_cpu_destroy(be);
        return NULL;
    }
    c->n_threads = gn_pool_size(c->pool);
    return be;
}

int gn_backend_cpu_set_isa(gn_backend *be, gn_cpu_isa isa) {
    gn_cpu *c = gn_cpu_of(be);
    if (c->reference)
        return gn_errf(&be->err, GN_EUNSUP, "cpu-ref has no SIMD levels");
    if (isa > gn_cpu_isa_detect())
        return gn_errf(&be->err, GN_EUNSUP, "this CPU does not support %s", gn_cpu_isa_name(isa));
    c->isa = isa;
    return 0;
}

gn_cpu_isa gn_backend_cpu_isa(const gn_backend *be) {
    const gn_cpu *c = be->impl;
    return c->isa;
}

void gn_cpu_destroy(gn_backend *be) {
    if (!be) return;
    gn_cpu *c = be->impl;
    if (c) {
        gn_pool_free(c->pool);
        gn_free(c);
    }
    gn_free(be);
}

void *gn_cpu_alloc(gn_backend *be, size_t nbytes) {
    void *p = gn_malloc_aligned(nbytes ? nbytes : 1, 64);
    if (!p) gn_errf(&be->err, GN_ENOMEM, "%s: cannot allocate %zu bytes", be->name, nbytes);
    return p;
}

void gn_cpu_free(gn_backend *be, void *p) {
    (void)be;
    gn_free_aligned(p);
}

int gn_cpu_upload(gn_backend *be, void *dst, const void *src_host, size_t nbytes) {
    (void)be;
    if (nbytes && dst != src_host) memmove(dst, src_host, nbytes);
    return 0;
}

int gn_cpu_download(gn_backend *be, void *dst_host, const void *src, size_t nbytes) {
    (void)be;
    if (nbytes && dst_host != src) memmove(dst_host, src, nbytes);
    return 0;
}

int gn_cpu_synchronize(gn_backend *be) {
    (void)be;
    return 0;
}

int gn_cpu_check_weight(gn_backend *be, const char *op, const gn_tensor *w) {
    if (!w || !w->data)
        return gn_errf(&be->err, GN_EINVAL, "%s: missing weight", op);
    if (w->dtype != GN_F32 && w->dtype != GN_F16 && w->dtype != GN_BF16)
        return gn_errf(&be->err, GN_EINVAL, "%s: unknown weight dtype %d", op, (int)w->dtype);
    if (w->rows <= 0 || w->cols <= 0 || w->rows > INT32_MAX || w->cols > INT32_MAX)
        return gn_errf(&be->err, GN_EINVAL, "%s: bad weight shape (%lld, %lld)", op,
                       (long long)w->rows, (long long)w->cols);
    return 0;
}

int gn_cpu_check_matmul(gn_backend *be, const float *y, const float *x, const gn_tensor *w,
                        const gn_tensor *bias, int n) {
    int rc = gn_cpu_check_weight(be, "matmul", w);
    if (rc) return rc;
    if (n < 0) return gn_errf(&be->err, GN_EINVAL, "matmul: n = %d", n);
    if (n > 0 && (!y || !x)) return gn_errf(&be->err, GN_EINVAL, "matmul: NULL input or output");
    if (bias && bias->data) {
        rc = gn_cpu_check_weight(be, "matmul bias", bias);
        if (rc) return rc;
        if (bias->rows * bias->cols != w->rows)
            return gn_errf(&be->err, GN_EINVAL, "matmul: bias has %lld elements, weight %lld rows",
                           (long long)(bias->rows * bias->cols), (long long)w->rows);
    }
    return 0;
}

int gn_cpu_check_attention(gn_backend *be, const gn_kv_pool *kv, int layer, const gn_attn_batch *b,
                           int n_heads) {
    if (!kv || !kv->data || kv->dtype != GN_F32)
        return gn_errf(&be->err, GN_EINVAL, "attention: the KV pool must be float32 backend memory");
    if (layer < 0 || layer >= kv->n_layers)
        return gn_errf(&be->err, GN_EINVAL, "attention: layer %d of %d", layer, kv->n_layers);
    if (kv->n_kv_heads <= 0 || n_heads <= 0 || n_heads % kv->n_kv_heads)
        return gn_errf(&be->err, GN_EINVAL, "attention: %d heads over %d kv heads", n_heads,
                       kv->n_kv_heads);
    if (kv->head_dim <= 0 || kv->head_dim > GN_CPU_MAX_HEAD_DIM)
        return gn_errf(&be->err, GN_EUNSUP, "attention: head_dim %d (max %d)", kv->head_dim,
                       GN_CPU_MAX_HEAD_DIM);
    if (kv->block_size <= 0 || kv->n_blocks <= 0)
        return gn_errf(&be->err, GN_EINVAL, "attention: empty KV pool");
    /* Every token's position must map onto an existing block of its sequence,
     * and lie inside its sequence's length. */
    for (int i = 0; i < b->n_tokens; i++) {
        int s = b->tok_seq[i], pos = b->tok_pos[i];
        if (s < 0 || s >= b->n_seqs)
            return gn_errf(&be->err, GN_EINVAL, "attention: token %d: sequence %d of %d", i, s,
                           b->n_seqs);
        if (pos < 0 || pos >= b->seq_len[s] || pos / kv->block_size >= b->max_blocks)
            return gn_errf(&be->err, GN_EINVAL, "attention: token %d: position %d, sequence length %d",
                           i, pos, b->seq_len[s]);
    }
    for (int s = 0; s < b->n_seqs; s++) {
        int nb = (b->seq_len[s] + kv->block_size - 1) / kv->block_size;
        if (b->seq_len[s] < 0 || nb > b->max_blocks)
            return gn_errf(&be->err, GN_EINVAL, "attention: sequence %d: length %d", s, b->seq_len[s]);
        for (int j = 0; j < nb; j++) {
            int blk = b->block_table[(size_t)s * (size_t)b->max_blocks + (size_t)j];
            if (blk < 0 || blk >= kv->n_blocks)
                return gn_errf(&be->err, GN_EINVAL, "attention: sequence %d block %d -> %d of %d", s,
                               j, blk, kv->n_blocks);
        }
    }
    return 0;
}
