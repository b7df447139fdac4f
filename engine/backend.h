/* backend.h — the compute backend interface (a small vtable).
 *
 * The transformer in runner.c is written once against these operations; the
 * CPU backend (backends/cpu: a plain reference table "cpu-ref" and a fast
 * SIMD + multi-threaded table "cpu") and the CUDA backend (backends/cuda)
 * implement them. Pointers passed to ops are backend memory (device pointers
 * for CUDA, host pointers for CPU) unless stated otherwise.
 *
 * Activations are always float32, row-major. Weights are gn_tensor views in
 * their stored dtype (F32/F16/BF16). Ops may run asynchronously (CUDA stream);
 * results are visible to the host after download() or synchronize().
 *
 * Every op returns 0 or a negative GN_E* code; on failure the backend writes the
 * detail into be->err. A backend object is used by one thread at a time. */
#ifndef GN_BACKEND_H
#define GN_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "gn_err.h"
#include "gn_tensor.h"

typedef struct gn_backend gn_backend;

/* The paged KV cache storage of one model on one backend. Element
 * (block b, layer l, s = 0 for K / 1 for V, slot t, kv head h, d) lives at
 *   ((((b * n_layers + l) * 2 + s) * block_size + t) * n_kv_heads + h) * head_dim + d
 * in `data`, whose element type is `dtype` (chosen by the backend). */
typedef struct gn_kv_pool {
    void *data;      /* backend memory */
    gn_dtype dtype;
    int n_layers;
    int n_kv_heads;
    int head_dim;
    int block_size;  /* tokens per block */
    int n_blocks;
} gn_kv_pool;

/* Describes the tokens of one batched step to the attention op. All arrays
 * are backend memory (uploaded by the runner each step). Token i of the batch
 * belongs to sequence tok_seq[i] and sits at absolute position tok_pos[i]; it
 * attends causally to positions [max(0, tok_pos[i] - window + 1), tok_pos[i]]
 * of its own sequence, whose K/V rows live in the blocks listed by
 * block_table[tok_seq[i] * max_blocks + pos / block_size]. */
typedef struct gn_attn_batch {
    int n_tokens;
    int n_seqs;
    const int32_t *tok_seq;     /* (n_tokens) */
    const int32_t *tok_pos;     /* (n_tokens) */
    const int32_t *seq_len;     /* (n_seqs) context length after this step */
    const int32_t *block_table; /* (n_seqs, max_blocks) physical block ids */
    int max_blocks;
    int max_seq_len;            /* host copy: max over seq_len, for launch sizing */
} gn_attn_batch;

typedef struct gn_backend_ops {
    /* Frees the backend and everything it allocated. */
    void (*destroy)(gn_backend *be);

    /* Backend memory. alloc returns NULL on failure (detail in be->err). */
    void *(*alloc)(gn_backend *be, size_t nbytes);
    void (*free)(gn_backend *be, void *p);
    int (*upload)(gn_backend *be, void *dst, const void *src_host, size_t nbytes);
    int (*download)(gn_backend *be, void *dst_host, const void *src, size_t nbytes);
    int (*synchronize)(gn_backend *be);

    /* out(n, table.cols) = table[tokens[i]] as float. Token ids are checked
     * by the caller against table.rows. */
    int (*embed)(gn_backend *be, float *out, const gn_tensor *table, const int32_t *tokens, int n);

    /* out(n_rows, dim) = x / sqrt(mean(x^2) + eps) * w (w: (1, dim)). out may equal x. */
    int (*rmsnorm)(gn_backend *be, float *out, const float *x, const gn_tensor *w, int n_rows,
                   int dim, float eps);

    /* y(n, w.rows) = x(n, w.cols) · wᵀ + bias (bias may be NULL or have data NULL).
     * Accumulation in float32 whatever w's dtype. y must not alias x. */
    int (*matmul)(gn_backend *be, float *y, const float *x, const gn_tensor *w,
                  const gn_tensor *bias, int n);

    /* Rotates x(n_tok, n_heads, head_dim) in place, Hugging Face rotate_half
     * layout: pair (i, i + head_dim/2) by angle pos[t] * inv_freq[i]. */
    int (*rope)(gn_backend *be, float *x, int n_tok, int n_heads, int head_dim, const int32_t *pos,
                const float *inv_freq);

    /* out[i] = silu(gate[i]) * up[i]; out may equal gate. */
    int (*swiglu)(gn_backend *be, float *out, const float *gate, const float *up, size_t n);

    /* x[i] += y[i]. */
    int (*add)(gn_backend *be, float *x, const float *y, size_t n);

    /* out(n, dim) = x[rows[i]] (rows in backend memory). out must not alias x. */
    int (*get_rows)(gn_backend *be, float *out, const float *x, const int32_t *rows, int n, int dim);

    /* Writes k, v (n_tokens, n_kv_heads*head_dim) of layer `layer` into the pool
     * at their tokens' positions, then computes causal attention for every
     * token: out(n_tokens, n_heads*head_dim) from q(n_tokens, n_heads*head_dim),
     * GQA (head h reads kv head h / (n_heads / n_kv_heads)), softmax(q·k * scale)
     * over the visible positions (see gn_attn_batch; sliding_window 0 = none). */
    int (*attention)(gn_backend *be, float *out, const float *q, const float *k, const float *v,
                     const gn_kv_pool *kv, int layer, const gn_attn_batch *b, int n_heads,
                     int sliding_window, float scale);

    /* out(n_rows, n_cols) = log_softmax over each row's first n_cols entries of
     * x(n_rows, ld_x), n_cols <= ld_x (drops padding vocabulary rows). out may
     * equal x only when n_cols == ld_x. */
    int (*log_softmax)(gn_backend *be, float *out, const float *x, int n_rows, int n_cols, int ld_x);

    /* Optional (NULL: the runner calls matmul once per weight). Several
     * products sharing one input, fused into one launch / one thread-pool job:
     * ys[i](n, ws[i]->rows) = x(n, cols) · ws[i]ᵀ + biases[i] for i < n_mats
     * (n_mats <= GN_MATMUL_MULTI_MAX; every ws[i]->cols equal; biases may be
     * NULL, or an entry NULL / with data NULL). Used for q/k/v and gate/up. */
    int (*matmul_multi)(gn_backend *be, int n_mats, float *const *ys, const float *x,
                        const gn_tensor *const *ws, const gn_tensor *const *biases, int n);

    /* Optional graph recording (CUDA graphs; NULL elsewhere). After
     * graph_begin the ops are recorded instead of run, until graph_end(slot)
     * stores the recording under slot in [0, GN_GRAPH_SLOTS) (slot < 0
     * discards it); graph_launch(slot) replays it. While recording, alloc,
     * free, upload, download and synchronize fail with GN_EINVAL, so a
     * recorded step must read every per-step value from backend memory that
     * was uploaded before the launch. A failed graph_end leaves the backend
     * usable (eager). */
    int (*graph_begin)(gn_backend *be);
    int (*graph_end)(gn_backend *be, int slot);
    int (*graph_launch)(gn_backend *be, int slot);

    /* Optional fused ops (NULL: the runner composes the ops above). Each is
     * defined as the composition it replaces and must match it within the
     * tolerance of the ops themselves; they exist to save launches between
     * the projections of a decode step. */

    /* Residual add + RMSNorm: x(n_rows, dim) += y, then out = rmsnorm(x)·w of
     * the updated x (as add, then rmsnorm). out may equal y, must not alias x. */
    int (*add_rmsnorm)(gn_backend *be, float *x, const float *y, float *out, const gn_tensor *w,
                       int n_rows, int dim, float eps);

    /* RoPE on q(n_tok, n_heads, head_dim) and k(n_tok, n_kv_heads, head_dim)
     * in place, in one launch: as rope(q, n_heads) then rope(k, n_kv_heads). */
    int (*rope_qk)(gn_backend *be, float *q, float *k, int n_tok, int n_heads, int n_kv_heads,
                   int head_dim, const int32_t *pos, const float *inv_freq);

    /* RoPE + attention: as rope_qk(q, k, b->n_tokens, n_heads, kv->n_kv_heads,
     * kv->head_dim, b->tok_pos, inv_freq) followed by attention(out, q, k, v,
     * ...). Afterwards q and k hold unspecified values (a backend may rotate
     * them inside its attention kernel without writing them back). */
    int (*rope_attention)(gn_backend *be, float *out, float *q, float *k, const float *v,
                          const gn_kv_pool *kv, int layer, const gn_attn_batch *b, int n_heads,
                          int sliding_window, float scale, const float *inv_freq);

    /* Optional (NULL: plain host memory transfers as fast). Host memory that
     * download and upload move fastest, page-locked on a GPU (a download of
     * 8 MB of log-probs into pageable memory took 3.5-6x as long as into
     * page-locked memory on an H200). Use through gn_backend_host_alloc / _free. */
    void *(*host_alloc)(gn_backend *be, size_t nbytes);
    void (*host_free)(gn_backend *be, void *p);
} gn_backend_ops;

#define GN_MATMUL_MULTI_MAX 4
#define GN_GRAPH_SLOTS 128

struct gn_backend {
    const gn_backend_ops *ops;
    const char *name;    /* "cpu", "cpu-ref", "cuda:0" */
    gn_dtype kv_dtype;   /* element type of KV pools on this backend */
    int is_host;         /* 1: backend memory is host memory (weights used in place) */
    gn_err err;          /* detail of the last failure */
    void *impl;
};

typedef struct gn_backend_params {
    int n_threads;   /* CPU worker threads, 0 = all online cores */
} gn_backend_params;

gn_backend_params gn_backend_default_params(void);

/* Creates a backend by device name: "cpu" (fast), "cpu-ref" (reference,
 * single-threaded), "cuda" or "cuda:N" (when built with CUDA). Returns NULL and
 * fills err when the device is unknown or unavailable. */
gn_backend *gn_backend_create(const char *device, const gn_backend_params *p, gn_err *err);

/* Destroys be (NULL is a no-op). */
void gn_backend_free(gn_backend *be);

/* Host memory for buffers that be downloads into or uploads from every step
 * (log-probs): the backend's host_alloc where it has one, else gn_malloc.
 * NULL on failure (be->err says why where the backend allocated).
 * gn_backend_host_free(be, NULL) is a no-op. */
void *gn_backend_host_alloc(gn_backend *be, size_t nbytes);
void gn_backend_host_free(gn_backend *be, void *p);

#endif
