/* runner.h — batched forward passes over many sequences (the per-step engine
 * of base_worker and reward_worker, and of the CLI).
 *
 * A gn_runner owns the per-worker scratch (activation buffers sized once for
 * max_batch_tokens) and the paged KV pool of one model. A gn_seq is one
 * sequence's state: its KV blocks and length. gn_runner_step() appends new
 * tokens to any number of sequences at once (prefill and decode mixed) and
 * returns next-token log-probs.
 *
 * Thread-safety: a runner and its sequences are used by one thread at a time;
 * several runners may share one model. */
#ifndef GN_RUNNER_H
#define GN_RUNNER_H

#include <stdint.h>

#include "gn_err.h"
#include "model.h"

typedef struct gn_runner_params {
    int max_batch_tokens; /* tokens per forward chunk (longer steps are chunked), default 512 */
    int max_seqs;         /* sequences in one step, default 64 */
    int max_ctx;          /* maximum sequence length, default min(model max_pos, 4096) */
    int block_size;       /* KV tokens per block, default 16 */
    int n_blocks;         /* KV pool size in blocks; 0 = enough for max_seqs full sequences... capped at 1 GiB */
} gn_runner_params;

gn_runner_params gn_runner_default_params(void);

typedef struct gn_runner gn_runner;
typedef struct gn_seq gn_seq;

/* Creates a runner for model m (borrowed; must outlive the runner). NULL and
 * err on failure. */
gn_runner *gn_runner_create(gn_model *m, const gn_runner_params *p, gn_err *err);
void gn_runner_free(gn_runner *r);

/* A new, empty sequence on runner r. Owned by the caller; free with
 * gn_seq_free before the runner. NULL on allocation failure. */
gn_seq *gn_seq_create(gn_runner *r, gn_err *err);
/* Returns the sequence's KV blocks to the pool (NULL is a no-op). */
void gn_seq_free(gn_seq *s);
/* Tokens the sequence holds in its KV cache. */
int gn_seq_len(const gn_seq *s);
/* Forgets the tail: keeps the first n tokens (n <= len). */
void gn_seq_truncate(gn_seq *s, int n);
/* Binds a LoRA adapter (lora.h; NULL = none, the default) to s: every step
 * of s then applies it on top of the shared weights. Only while s holds no
 * tokens (GN_EINVAL otherwise); the adapter must belong to the runner's model
 * (GN_EMISMATCH) and outlive s. Sequences with different adapters (or none)
 * share one batch. */
struct gn_lora_adapter;
int gn_seq_set_adapter(gn_seq *s, const struct gn_lora_adapter *a, gn_err *err);
const struct gn_lora_adapter *gn_seq_adapter(const gn_seq *s);

typedef struct gn_step_item {
    gn_seq *seq;
    const int32_t *tokens; /* host memory, n_tokens ids to append */
    int n_tokens;          /* >= 1 */
    int all_logits;        /* 1: a row of log-probs for every new token; 0: last one only */
} gn_step_item;

/* Runs the model on the new tokens of every item (all sequences distinct) and
 * writes float32 log-probs (log_softmax over gn_model_n_out(m) columns) to
 * out_host, rows in item order (n_tokens rows for all_logits items, else one).
 * out_host must hold gn_runner_step_rows(items, n) * n_out floats.
 * On failure no sequence changes length, err says which item/token was bad
 * (token id out of range, context overflow, KV pool exhausted, backend error). */
int gn_runner_step(gn_runner *r, const gn_step_item *items, int n_items, float *out_host,
                   gn_err *err);

/* Rows gn_runner_step writes for these items. */
int gn_runner_step_rows(const gn_step_item *items, int n_items);

/* KV blocks in use / total, for metrics. */
void gn_runner_kv_usage(const gn_runner *r, int *used_blocks, int *total_blocks);

#endif
