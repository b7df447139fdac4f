/* hf_config.h — Hugging Face config.json (+ generation_config.json) into a
 * gn_model_config (engine/model_config.h).
 *
 * Supported "architectures": LlamaForCausalLM, MistralForCausalLM,
 * Qwen2ForCausalLM, Qwen3ForCausalLM. Missing optional fields take the
 * defaults of the matching transformers *Config class (num_key_value_heads =
 * num_attention_heads, head_dim = hidden_size / num_attention_heads (Qwen3:
 * 128), rope_theta 10000, rms_norm_eps 1e-6, tie_word_embeddings false,
 * max_position_embeddings 2048 / 131072 / 32768 / 32768, Mistral
 * sliding_window 4096). The dimension fields (vocab_size, hidden_size,
 * intermediate_size, num_hidden_layers, num_attention_heads) are required.
 * rope_scaling (or rope_parameters) of type "llama3", "linear" or "default"
 * is supported; any other type is refused with GN_EUNSUP. eos_token_id may be
 * an integer or a list; generation_config.json's eos_token_id list extends
 * config.json's (union, config.json's first), its bos_token_id wins.
 *
 * Errors name the file and the field. Reentrant. */
#ifndef GN_HF_CONFIG_H
#define GN_HF_CONFIG_H

#include <stddef.h>

#include "gn_err.h"
#include "model_config.h"

/* Pure parser: config_json[0..config_len) is config.json, gen_json (may be
 * NULL) generation_config.json. `fname` prefixes messages (may be NULL).
 * Returns 0 and fills *out, or GN_EFORMAT (malformed / missing field),
 * GN_EUNSUP (unsupported architecture or feature), GN_ERANGE (value out of
 * range or not divisible). */
int gn_hf_config_parse(const char *config_json, size_t config_len, const char *gen_json,
                       size_t gen_len, const char *fname, gn_model_config *out, gn_err *err);

/* Reads dir/config.json and, when present, dir/generation_config.json. */
int gn_hf_config_load(const char *dir, gn_model_config *out, gn_err *err);

/* Name of an architecture as written in "architectures" ("LlamaForCausalLM"…). */
const char *gn_arch_hf_name(gn_arch a);

#endif
