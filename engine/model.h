/* model.h — a loaded model: configuration, tokenizer and weights, shared
 * read-only by every sequence that runs on it (per-sequence state lives in
 * gn_seq, per-worker scratch in gn_runner; see runner.h).
 *
 * Weights keep their stored dtype (BF16 / F16 / F32). On the CPU backend the
 * tensors point straight into the read-only mapped safetensors files; on a
 * device backend they are uploaded copies. */
#ifndef GN_MODEL_H
#define GN_MODEL_H

#include "backend.h"
#include "gn_err.h"
#include "gn_tensor.h"
#include "model_config.h"

struct gn_tokenizer;

typedef struct gn_layer_weights {
    gn_tensor attn_norm;          /* (1, dim) */
    gn_tensor wq, wk, wv;         /* (n_heads*head_dim, dim), (n_kv_heads*head_dim, dim) x2 */
    gn_tensor bq, bk, bv;         /* biases, (1, out) — data NULL when the arch has none */
    gn_tensor q_norm, k_norm;     /* (1, head_dim) — Qwen3 only, else data NULL */
    gn_tensor wo;                 /* (dim, n_heads*head_dim) */
    gn_tensor ffn_norm;           /* (1, dim) */
    gn_tensor w_gate, w_up;       /* (ffn_dim, dim) */
    gn_tensor w_down;             /* (dim, ffn_dim) */
} gn_layer_weights;

typedef struct gn_weights {
    gn_tensor embed;       /* (n_vocab, dim) */
    gn_tensor final_norm;  /* (1, dim) */
    gn_tensor lm_head;     /* (n_vocab, dim); same data as embed when tied */
    gn_layer_weights *layers; /* n_layers entries */
} gn_weights;

typedef struct gn_model_params {
    const char *lora_dir;  /* PEFT adapter directory merged on load, or NULL */
    int load_tokenizer;    /* 1: also load tokenizer.json from the model directory */
} gn_model_params;

gn_model_params gn_model_default_params(void);

typedef struct gn_model gn_model;

/* Loads the Hugging Face model directory `dir` (config.json,
 * model.safetensors or shards + model.safetensors.index.json,
 * generation_config.json, tokenizer files) onto backend `be` (borrowed; must
 * outlive the model). Returns NULL and fills err on failure; every tensor is
 * checked against the config and the file, and errors name the file and the
 * tensor. Not thread-safe during load; the result is read-only afterwards and
 * may be shared by many runners. */
gn_model *gn_model_load(const char *dir, gn_backend *be, const gn_model_params *p, gn_err *err);

/* Frees the model (NULL is a no-op). */
void gn_model_free(gn_model *m);

const gn_model_config *gn_model_cfg(const gn_model *m);
const gn_weights *gn_model_weights(const gn_model *m);   /* backend-resident views */
gn_backend *gn_model_backend(const gn_model *m);
/* The tokenizer, or NULL when not loaded (p->load_tokenizer == 0). */
const struct gn_tokenizer *gn_model_tokenizer(const gn_model *m);
/* Number of output columns the model's log-probs have: the tokenizer's
 * vocabulary size when a tokenizer is loaded and smaller than n_vocab (extra
 * padding rows are dropped, ARCHITECTURE.md §1), else n_vocab. */
int gn_model_n_out(const gn_model *m);
/* Total bytes of weights (as stored), for bandwidth accounting. */
size_t gn_model_weight_bytes(const gn_model *m);
const char *gn_model_dir(const gn_model *m);

#endif
