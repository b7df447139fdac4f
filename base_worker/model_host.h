/* model_host.h — one loaded model served to many sequences over the step
 * protocol: a table seq_id -> gn_seq (KV cache) with last-use times, the
 * execution of a StepRequest through gn_runner_step into a StepResponse
 * (log-probs packed in the requested dtype), release and idle expiry.
 *
 * This is the step-serving core of base_worker; a reward_worker holds one
 * gn_host per full-model ARM version, or one per ARM backbone shared by the
 * LoRA adapters on it (each an ARM version: the *_for calls name the
 * adapter, and a host's sequences are keyed by (seq_id, adapter)), and routes
 * StepRequest.model to it, so a sequence started on version k stays on k's
 * weights (its KV cache belongs to them).
 *
 * Sequence rules (proto/genarm.proto, SeqStep.start_pos): an unknown seq_id
 * with start_pos 0 starts a sequence; with start_pos > 0 it is
 * ERROR_UNKNOWN_SEQ (released, expired or never seen); start_pos below the
 * held length rewinds the cache; above it is ERROR_POS_MISMATCH. Each failing
 * sequence gets its own Error in the response and is left unchanged; the
 * others run.
 *
 * Thread-safety: one thread at a time (like the runner it owns). */
#ifndef GN_MODEL_HOST_H
#define GN_MODEL_HOST_H

#include <stdint.h>

#include "gn_err.h"
#include "lora.h"
#include "model.h"
#include "runner.h"
#include "wire.h"

typedef struct gn_host_params {
    int max_seqs;           /* live sequences held at once, default 64; a new sequence beyond
                               them gets ERROR_CAPACITY (the coordinator retries it later) */
    int max_req_seqs;       /* sequences in one step request, default 256 (at least max_seqs);
                               more is ERROR_TOO_LARGE for the whole request */
    int64_t idle_timeout_ms;/* a sequence unused this long is freed by gn_host_sweep; 0 = never;
                               default 300000 */
    gn_runner_params runner;/* runner.max_seqs is set to max_seqs */
} gn_host_params;

gn_host_params gn_host_default_params(void);

typedef struct gn_host gn_host;

/* Creates a host for model m (borrowed; must outlive the host) with its own
 * runner and KV pool. NULL and err on failure. */
gn_host *gn_host_create(gn_model *m, const gn_host_params *p, gn_err *err);

/* Frees every sequence, the runner and the host (NULL is a no-op). */
void gn_host_free(gn_host *h);

/* Runs one StepRequest (already checked by gn_wire_step_check) at time
 * now_ms (monotonic) and fills resp. The arrays, strings and tensor bytes
 * resp points to belong to the host and stay valid until the next
 * gn_host_step / gn_host_free. Returns 0 (per-sequence failures are in
 * resp->errors), or a genarm.v1.ErrorCode > 0 with err when the whole step
 * failed (bad dtype, out of memory, the forward pass itself failing); then no
 * sequence grew (a rewound one stays rewound) and sequences new in this
 * request are not kept. resp->model echoes req->model; a caller that resolved
 * the request to another version (a reward_worker's "current") points
 * resp->model at its own ModelRef after the call. */
int gn_host_step(gn_host *h, const gn_wire_step_req *req, int64_t now_ms, gn_wire_step_resp *resp,
                 gn_err *err);

/* The same for the sequences of adapter ad (NULL: the model itself, which is
 * what gn_host_step serves): new sequences are bound to ad (gn_seq_set_adapter),
 * held ones are found by (seq_id, ad). */
int gn_host_step_for(gn_host *h, const gn_lora_adapter *ad, const gn_wire_step_req *req, int64_t now_ms,
                     gn_wire_step_resp *resp, gn_err *err);

/* Frees the listed sequences (of adapter ad for _for); returns how many were held. */
int gn_host_release(gn_host *h, const uint64_t *seq_ids, size_t n);
int gn_host_release_for(gn_host *h, const gn_lora_adapter *ad, const uint64_t *seq_ids, size_t n);
/* Frees every sequence of adapter ad (before the adapter itself is freed). */
int gn_host_release_all_for(gn_host *h, const gn_lora_adapter *ad);

/* Frees sequences idle for longer than idle_timeout_ms at now_ms; returns how
 * many. */
int gn_host_sweep(gn_host *h, int64_t now_ms);

/* Sequences held now (all, or adapter ad's) / at most. */
int gn_host_n_seqs(const gn_host *h);
int gn_host_n_seqs_for(const gn_host *h, const gn_lora_adapter *ad);
int gn_host_max_seqs(const gn_host *h);
int gn_host_max_req_seqs(const gn_host *h);
/* Tokens held for seq_id (of adapter ad for _for), or -1 when the host does not hold it. */
int gn_host_seq_len(const gn_host *h, uint64_t seq_id);
int gn_host_seq_len_for(const gn_host *h, const gn_lora_adapter *ad, uint64_t seq_id);
void gn_host_kv_usage(const gn_host *h, int *used_blocks, int *total_blocks);
/* Columns of every log-prob row (gn_model_n_out). */
int gn_host_n_out(const gn_host *h);

#endif
