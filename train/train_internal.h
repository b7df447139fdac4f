/* train_internal.h — the layout of gn_train_model shared by train_model.c
 * (loading, LoRA, saving) and train_fwd.c (forward and backward). Not a
 * public header. */
#ifndef GN_TRAIN_INTERNAL_H
#define GN_TRAIN_INTERNAL_H

#include "gn_threadpool.h"
#include "train_model.h"

/* A linear projection y = x W^T (+ b) (+ scale · (x A^T) B^T). */
typedef struct tm_lin {
    float *w, *b;   /* (out, in), (out) or NULL */
    float *gw, *gb; /* their gradients, NULL when frozen */
    int out, in;
    float *A, *B;   /* LoRA (r, in), (out, r), or NULL */
    float *gA, *gB;
    int r;
    float scale;
    float *xa;      /* forward scratch: (N, r) = x A^T, kept for backward */
} tm_lin;

typedef struct tm_norm {
    float *w, *gw; /* (n), gradient or NULL */
    int n;
} tm_norm;

typedef struct tm_layer {
    tm_norm attn_norm, ffn_norm, q_norm, k_norm; /* q/k norm: Qwen3 only (w NULL otherwise) */
    tm_lin q, k, v, o, gate, up, down;
    /* saved activations of the last forward, N = n_seqs * seq_len rows */
    float *x_in, *h1, *r1;      /* (N, D), (N, D), (N) */
    float *qlin, *klin;         /* (N, Qd), (N, KVd) before q/k norm (== q, k without it) */
    float *aq, *ak, *av;        /* after norm + RoPE: (N, Qd), (N, KVd), (N, KVd) */
    float *qr, *kr;             /* q/k norm reciprocal RMS: (N, Hq), (N, Hk) */
    float *P;                   /* softmax probabilities (B, Hq, T, T) */
    float *att, *xmid, *h2, *r2; /* (N, Qd), (N, D), (N, D), (N) */
    float *g, *u, *a;           /* (N, F) each: gate, up, silu(gate) * up */
} tm_layer;

struct gn_train_model {
    gn_model_config cfg;
    gn_dtype src_dtype;
    gn_pool *pool;
    int n_threads;

    float *base;      /* every base weight, float32, table order */
    size_t n_base;
    float *base_grad; /* same layout; NULL with LoRA (base frozen) */
    gn_train_tensor *base_tab;
    int n_base_tab;

    float *lora;      /* adapters: A then B per module, table order */
    size_t n_lora;
    float *lora_grad;
    gn_train_tensor *lora_tab;
    int n_lora_tab;
    int lora_rank;
    float lora_alpha;
    unsigned lora_targets;

    float *embed, *gembed;       /* (V, D) */
    tm_norm final_norm;
    float *lm_head, *glm_head;   /* == embed / gembed when tied */
    tm_layer *layers;
    float *inv_freq;             /* (head_dim / 2) */

    /* activations of the last forward */
    float *act;
    size_t act_cap;              /* floats */
    gn_train_batch batch;        /* borrowed arrays */
    int have_fwd;
    float *x_last, *hf, *rf, *logits; /* (N, D), (N, D), (N), (N, V) -> probabilities */
    float *bwd;                  /* backward scratch inside act */
};

#endif
