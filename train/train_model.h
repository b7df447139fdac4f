/* train_model.h — a LLaMA-family model held for training on the CPU: float32
 * master weights, gradients, optional LoRA adapters, and a forward pass that
 * keeps every activation the exact backward pass needs.
 *
 * Architectures: what engine/model_config.h describes — RMSNorm, RoPE (with
 * the Llama-3 / linear scaling of gn_rope_inv_freq), GQA attention (Mistral's
 * sliding window included), SwiGLU, Qwen2 q/k/v biases, Qwen3 per-head q/k
 * RMSNorm, tied embeddings.
 *
 * A batch is n_seqs sequences of seq_len tokens each, right-padded. targets[i]
 * is the token the model should predict after position i, or -1 where
 * position i does not count (padding, prompt). Because attention is causal,
 * right padding never changes the positions that count, so no other mask is
 * needed. The forward pass returns, per position, log π(target | prefix)
 * (0 where target is -1); a loss turns these into dL/dlogp (train_loss.c) and
 * the backward pass accumulates parameter gradients from them.
 *
 * Determinism: every output element is computed by one thread in a fixed
 * order, so results do not depend on the number of threads.
 *
 * Thread-safety: a gn_train_model is used by one thread at a time (it drives
 * its own thread pool). */
#ifndef GN_TRAIN_MODEL_H
#define GN_TRAIN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "gn_err.h"
#include "gn_tensor.h"
#include "model_config.h"

typedef struct gn_train_model gn_train_model;

/* Loads config.json and the weights (model.safetensors or shards, any of
 * F32/F16/BF16) of the Hugging Face model directory `dir` into float32.
 * n_threads <= 0: all CPUs. All parameters are trainable until
 * gn_train_model_add_lora. NULL and err on failure (errors name the tensor). */
gn_train_model *gn_train_model_load(const char *dir, int n_threads, gn_err *err);
void gn_train_model_free(gn_train_model *m);

const gn_model_config *gn_train_model_cfg(const gn_train_model *m);
/* dtype the base weights were stored in (that of the first matrix). */
gn_dtype gn_train_model_src_dtype(const gn_train_model *m);

/* LoRA on the linear projections named by `targets` (a bit set of GN_LORA_*
 * from engine/lora.h): W x + scale · B (A x) with scale = alpha / rank, A
 * (rank, in) drawn from U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform(a=√5))
 * with `seed`, B (out, rank) zero. From then on only the adapters are
 * trainable (the base weights are frozen and have no gradients). Once only. */
int gn_train_model_add_lora(gn_train_model *m, int rank, float alpha, unsigned targets,
                            uint64_t seed, gn_err *err);
int gn_train_model_has_lora(const gn_train_model *m);

/* The trainable parameters as one flat float32 vector (the base weights, or
 * the LoRA adapters), their gradients (same layout), and its length. The
 * pointers stay valid while m lives; callers may write the parameters (the
 * optimizer does). */
size_t gn_train_n_params(const gn_train_model *m);
float *gn_train_params(gn_train_model *m);
float *gn_train_grads(gn_train_model *m);
void gn_train_zero_grads(gn_train_model *m);

/* One named trainable tensor inside the flat vector. Names are the Hugging
 * Face ones ("model.layers.0.self_attn.q_proj.weight") or, for LoRA, the
 * PEFT ones ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"). */
typedef struct gn_train_tensor {
    const char *name;
    size_t offset;      /* first element in the flat vector */
    int64_t rows, cols; /* rows = 1 for a vector */
    int n_dims;         /* 1 or 2, as saved */
    int decay;          /* 1 for matrices and embeddings (weight decay applies), 0 for norms/biases */
} gn_train_tensor;
int gn_train_n_tensors(const gn_train_model *m);
const gn_train_tensor *gn_train_tensor_at(const gn_train_model *m, int i);

typedef struct gn_train_batch {
    int n_seqs;
    int seq_len;
    const int32_t *tokens;  /* (n_seqs, seq_len), ids < n_vocab (pad with any valid id) */
    const int32_t *targets; /* (n_seqs, seq_len), next-token id or -1 (not counted) */
} gn_train_batch;

/* Forward pass over the batch. Writes logp[i] = log π(targets[i] | tokens of
 * its sequence up to i) for every position ((n_seqs * seq_len) floats, 0 where
 * targets[i] is -1) and keeps the activations for gn_train_backward. The batch
 * arrays must stay alive until the backward pass. Scratch grows as needed.
 * 0, GN_EINVAL (token/target out of range, sequence longer than
 * max_position_embeddings) or GN_ENOMEM. */
int gn_train_forward(gn_train_model *m, const gn_train_batch *b, float *logp, gn_err *err);

/* Backward pass of the last forward: given dL/dlogp per position (same layout
 * as logp; entries where the target is -1 are ignored), ADDS the gradients of
 * the trainable parameters to gn_train_grads(m). 0 or GN_EINVAL (no forward). */
int gn_train_backward(gn_train_model *m, const float *dlogp, gn_err *err);

/* Writes the model in the Hugging Face layout into out_dir (created when
 * missing): config.json, generation_config.json and the tokenizer files
 * copied from src_dir (the directory the model was loaded from), and
 * model.safetensors in `dtype` (LoRA adapters, when present, merged in).
 * 0 or GN_EIO / GN_ENOMEM. */
int gn_train_model_save(const gn_train_model *m, const char *src_dir, const char *out_dir,
                        gn_dtype dtype, gn_err *err);

/* Writes the LoRA adapters as a PEFT adapter directory (adapter_config.json +
 * adapter_model.safetensors in float32) that engine/lora.h loads on top of
 * base_dir. GN_EINVAL when the model has no LoRA. */
int gn_train_lora_save(const gn_train_model *m, const char *base_dir, const char *out_dir,
                       gn_err *err);

/* ---- losses (train_loss.c) ---------------------------------------------------
 * Each returns the loss of the batch and writes dlogp = scale · dL/dlogp
 * (scale lets gradient accumulation average over micro-batches). */

/* Token cross-entropy: mean over counted positions of -logp. *n_tokens (may be
 * NULL) receives the number of counted positions. */
double gn_train_loss_lm(const gn_train_batch *b, const float *logp, float scale, float *dlogp,
                        int *n_tokens);

/* The GenARM ARM loss (ARCHITECTURE.md §1). Sequences come in pairs: 2i is the
 * chosen response y_w, 2i+1 the rejected y_l, each counting only its response
 * tokens. r(y) = Σ_t logp; loss = mean over pairs of
 * -log σ(beta_r · (r(y_w) - r(y_l))), no length normalisation, no reference
 * model. margins (may be NULL) receives r(y_w) - r(y_l) per pair. */
double gn_train_loss_arm(const gn_train_batch *b, const float *logp, float beta_r, float scale,
                         float *dlogp, float *margins);

#endif
