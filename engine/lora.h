/* lora.h — PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors),
 * merged into a model's weights at load time: W' = W + scale · B·A with
 * scale = lora_alpha / r (or lora_alpha / sqrt(r) with use_rslora).
 *
 * Supported: peft_type LORA on the linear projections of the LLaMA family
 * (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, also
 * written as a path suffix like "self_attn.q_proj"; the string "all-linear"
 * means all of them), fan_in_fan_out false, bias "none", no DoRA, no LoRA
 * bias, no rank/alpha patterns, no modules_to_save. Anything else is GN_EUNSUP with
 * the field named. Adapter tensors are
 *   base_model.model.<module>.lora_A.weight  (r, in_features)
 *   base_model.model.<module>.lora_B.weight  (out_features, r)
 * in F32, F16 or BF16.
 *
 * A gn_lora is read-only after opening; merging is reentrant. */
#ifndef GN_LORA_H
#define GN_LORA_H

#include <stddef.h>

#include "gn_err.h"
#include "gn_tensor.h"

typedef struct gn_lora_config {
    int r;             /* rank */
    float alpha;       /* lora_alpha */
    int use_rslora;
    float scale;       /* alpha / r, or alpha / sqrt(r) with use_rslora */
    unsigned targets;  /* bit set of GN_LORA_* modules named by target_modules */
} gn_lora_config;

enum {
    GN_LORA_Q = 1u << 0, GN_LORA_K = 1u << 1, GN_LORA_V = 1u << 2, GN_LORA_O = 1u << 3,
    GN_LORA_GATE = 1u << 4, GN_LORA_UP = 1u << 5, GN_LORA_DOWN = 1u << 6,
};

/* Pure parser of adapter_config.json. `fname` is for messages. 0 or
 * GN_EFORMAT / GN_EUNSUP / GN_ERANGE naming the field. */
int gn_lora_config_parse(const char *json, size_t len, const char *fname, gn_lora_config *out,
                         gn_err *err);

typedef struct gn_lora gn_lora;

/* Opens the adapter directory `dir`: parses adapter_config.json, maps
 * adapter_model.safetensors read-only and checks that every tensor is a
 * lora_A/lora_B of a targeted module, that the pairs are complete, and that
 * each A is (r, in) and each B is (out, r). NULL and err on failure. */
gn_lora *gn_lora_open(const char *dir, gn_err *err);
void gn_lora_free(gn_lora *l);

const gn_lora_config *gn_lora_cfg(const gn_lora *l);

/* Looks up the adapter for the model weight `weight_name` (e.g.
 * "model.layers.3.self_attn.q_proj.weight"). Returns 1 and fills *a, *b
 * (views into the mapping) when there is one, else 0. Marks it used. */
int gn_lora_find(gn_lora *l, const char *weight_name, gn_tensor *a, gn_tensor *b);

/* After merging: GN_EMISMATCH naming the first adapter module that no model
 * weight asked for (e.g. a layer index beyond the model's), else 0. */
int gn_lora_check_all_used(const gn_lora *l, gn_err *err);

/* ---- adapters kept apart from the weights (several on one backbone) ---------- */

/* A PEFT adapter loaded for one model WITHOUT merging: its low-rank factors
 * on the model's backend (A as (r, in), B pre-scaled by `scale` as
 * (out, r)), applied per sequence by the runner (gn_seq_set_adapter), so
 * any number of adapters share one backbone's weights and one batch:
 *     y = W·x + scale·B·(A·x)   for the targeted projections.
 * Memory: the factors only (a few MB for r = 8 on q/k/v of a 7B model). */
typedef struct gn_lora_adapter gn_lora_adapter;

struct gn_model;
/* Loads the adapter in `dir` for model m (borrowed; must outlive the
 * adapter): every targeted module must exist in m with matching shapes
 * (GN_EMISMATCH naming the module otherwise), the same checks as
 * gn_lora_open. NULL and err on failure. */
gn_lora_adapter *gn_lora_adapter_load(struct gn_model *m, const char *dir, gn_err *err);
void gn_lora_adapter_free(gn_lora_adapter *a); /* NULL is a no-op */
const gn_lora_config *gn_lora_adapter_cfg(const gn_lora_adapter *a);
/* Bytes the adapter holds on its backend. */
size_t gn_lora_adapter_bytes(const gn_lora_adapter *a);

/* For the runner. The model the adapter was loaded for. */
struct gn_model *gn_lora_adapter_model(const gn_lora_adapter *a);
/* The factors of one projection: `module` is the index of its GN_LORA_* bit
 * (0 q, 1 k, 2 v, 3 o, 4 gate, 5 up, 6 down). Returns 1 and sets *A (r, in)
 * and *B (out, r, already times scale), F32 tensors in backend memory, when
 * the adapter has that module in that layer; else 0. */
int gn_lora_adapter_factors(const gn_lora_adapter *a, int layer, int module, const gn_tensor **A,
                            const gn_tensor **B);

/* Writes W + scale · B·A into out (w.rows × w.cols elements of w.dtype):
 * accumulated in float32, rounded once to w's dtype. Checks a (r, w.cols) and
 * b (w.rows, r); `name` is used in messages. out must not alias w. 0,
 * GN_EMISMATCH or GN_ENOMEM. */
int gn_lora_merge(const gn_tensor *w, const gn_tensor *a, const gn_tensor *b, float scale,
                  void *out, const char *name, gn_err *err);

#endif
