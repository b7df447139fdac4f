/* cpu_internal.h — what the CPU backend's source files share (not installed,
 * not part of any contract outside backends/cpu). */
#ifndef GN_CPU_INTERNAL_H
#define GN_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "backend_cpu.h"
#include "gn_half.h"
#include "gn_threadpool.h"

/* Largest head_dim the attention kernels accept (stack accumulators). */
#define GN_CPU_MAX_HEAD_DIM 1024

typedef struct gn_cpu {
    int reference;  /* 1: the cpu-ref table */
    gn_cpu_isa isa; /* SIMD level of the fast table */
    int n_threads;
    gn_pool *pool;  /* NULL for the reference table */
} gn_cpu;

static inline gn_cpu *gn_cpu_of(gn_backend *be) { return (gn_cpu *)be->impl; }

extern const gn_backend_ops gn_cpu_ref_ops;
extern const gn_backend_ops gn_cpu_fast_ops;

/* Memory ops shared by both tables (backend_cpu.c). */
void gn_cpu_destroy(gn_backend *be);
void *gn_cpu_alloc(gn_backend *be, size_t nbytes);
void gn_cpu_free(gn_backend *be, void *p);
int gn_cpu_upload(gn_backend *be, void *dst, const void *src_host, size_t nbytes);
int gn_cpu_download(gn_backend *be, void *dst_host, const void *src, size_t nbytes);
int gn_cpu_synchronize(gn_backend *be);

/* Argument checks shared by both tables (backend_cpu.c): 0 or GN_EINVAL with
 * the detail in be->err. */
int gn_cpu_check_weight(gn_backend *be, const char *op, const gn_tensor *w);
int gn_cpu_check_matmul(gn_backend *be, const float *y, const float *x, const gn_tensor *w,
                        const gn_tensor *bias, int n);
int gn_cpu_check_attention(gn_backend *be, const gn_kv_pool *kv, int layer, const gn_attn_batch *b,
                           int n_heads);

/* Element i of a weight of any dtype, as float. */
static inline float gn_cpu_wget(const void *data, gn_dtype dt, size_t i) {
    switch (dt) {
    case GN_F32: return ((const float *)data)[i];
    case GN_F16: return gn_f16_to_f32(((const uint16_t *)data)[i]);
    case GN_BF16: return gn_bf16_to_f32(((const uint16_t *)data)[i]);
    }
    return 0.0f;
}

/* Pointer to (block, layer, s, slot, kv head 0, d 0) of a float32 KV pool. */
static inline float *gn_cpu_kv_row(const gn_kv_pool *kv, int block, int layer, int s, int slot) {
    size_t idx = ((((size_t)block * (size_t)kv->n_layers + (size_t)layer) * 2 + (size_t)s) *
                      (size_t)kv->block_size + (size_t)slot) *
                 (size_t)kv->n_kv_heads * (size_t)kv->head_dim;
    return (float *)kv->data + idx;
}

/* The fast kernels (matmul_fast.c, attention_fast.c). The reference table
 * leaves matmul_multi NULL: the runner then calls matmul per weight. */
int gn_cpu_matmul_fast(gn_backend *be, float *y, const float *x, const gn_tensor *w,
                       const gn_tensor *bias, int n);
int gn_cpu_matmul_multi_fast(gn_backend *be, int n_mats, float *const *ys, const float *x,
                             const gn_tensor *const *ws, const gn_tensor *const *biases, int n);
int gn_cpu_attention_fast(gn_backend *be, float *out, const float *q, const float *k,
                          const float *v, const gn_kv_pool *kv, int layer, const gn_attn_batch *b,
                          int n_heads, int sliding_window, float scale);

#endif
