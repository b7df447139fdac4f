/* model_config.h — the architecture hyper-parameters of a LLaMA-family model,
 * as read from a Hugging Face config.json (+ generation_config.json).
 *
 * Pure data; parsing lives in formats/hf_config.h. */
#ifndef GN_MODEL_CONFIG_H
#define GN_MODEL_CONFIG_H

#include <stdint.h>

#include "gn_tensor.h"

typedef enum gn_arch {
    GN_ARCH_LLAMA = 0,   /* LlamaForCausalLM (Llama-2, Llama-3.x) */
    GN_ARCH_MISTRAL = 1, /* MistralForCausalLM */
    GN_ARCH_QWEN2 = 2,   /* Qwen2ForCausalLM: q/k/v projections carry a bias */
    GN_ARCH_QWEN3 = 3,   /* Qwen3ForCausalLM: RMSNorm on each q and k head */
} gn_arch;

typedef enum gn_rope_scaling {
    GN_ROPE_NONE = 0,
    GN_ROPE_LLAMA3 = 1, /* rope_type "llama3": factor, low/high_freq_factor, original_max_position_embeddings */
    GN_ROPE_LINEAR = 2, /* rope_type "linear": positions divided by factor */
} gn_rope_scaling;

#define GN_MAX_EOS 8

typedef struct gn_model_config {
    gn_arch arch;
    char arch_name[64];   /* as written in "architectures"[0] */
    int n_vocab;          /* rows of embed_tokens / lm_head (may exceed the tokenizer's size) */
    int dim;              /* hidden_size */
    int n_layers;         /* num_hidden_layers */
    int n_heads;          /* num_attention_heads */
    int n_kv_heads;       /* num_key_value_heads (GQA); == n_heads when absent */
    int head_dim;         /* head_dim, or dim / n_heads when absent */
    int ffn_dim;          /* intermediate_size */
    int max_pos;          /* max_position_embeddings */
    int sliding_window;   /* Mistral: attend to at most this many past tokens; 0 = unlimited */
    float norm_eps;       /* rms_norm_eps */
    float rope_theta;     /* rope_theta (default 10000) */
    gn_rope_scaling rope_scaling;
    float rope_factor;
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    int rope_orig_max_pos;
    int tie_embeddings;   /* tie_word_embeddings: lm_head shares embed_tokens */
    int attn_bias;        /* q/k/v projections have a bias (Qwen2, or attention_bias) */
    int qk_norm;          /* per-head RMSNorm on q and k before RoPE (Qwen3) */
    gn_dtype dtype;       /* torch_dtype (informational; tensors keep their stored dtype) */
    int bos_token_id;     /* -1 when absent */
    int n_eos;            /* number of entries in eos_token_ids */
    int eos_token_ids[GN_MAX_EOS];
} gn_model_config;

/* Fills the RoPE inverse frequencies, (head_dim / 2) floats, including the
 * Llama-3 / linear scaling of cfg. Position p rotates pair (i, i + head_dim/2)
 * of each head by angle p * inv_freq[i] (Hugging Face's rotate_half layout). */
void gn_rope_inv_freq(const gn_model_config *cfg, float *inv_freq);

#endif
