/* model_host.h — one loaded model served to many sequences over the step
 * protocol: a table seq_id -> gn_seq (KV cache) with last-use times, the
 * execution of StepRequests through gn_runner_step into StepResponses
 * (log-probs packed in the requested dtype, or sparse rows), the rows kept for
 * RowFetch, release and idle expiry.
 *
 * This is the step-serving core of base_worker; a reward_worker holds one
 * gn_host per full-model ARM version, or one per ARM backbone shared by the
 * LoRA adapters on it (each an ARM version: the calls name the adapter, and a
 * host's sequences are keyed by (seq_id, adapter)), and routes
 * StepRequest.model to it, so a sequence started on version k stays on k's
 * weights (its KV cache belongs to them).
 *
 * Batching: gn_host_step_batch serves several StepRequests (from several
 * coordinators, or several ARM versions on one backbone) with ONE forward
 * pass; each request still gets its own response.
 *
 * Sequence rules (proto/genarm.proto, SeqStep.start_pos): an unknown seq_id
 * with start_pos 0 starts a sequence; with start_pos > 0 it is
 * ERROR_UNKNOWN_SEQ (released, expired or never seen); start_pos below the
 * held length rewinds the cache; above it is ERROR_POS_MISMATCH. Each failing
 * sequence gets its own Error in its request's response and is left
 * unchanged; the others run.
 *
 * Sparse rows (SeqStep.top_k > 0): the response carries the top_k largest
 * log-probs and the bounds of the others (engine/row_select.h) instead of the
 * row; the host keeps the full F32 row, with the seq_len it belongs to, until
 * the sequence's next step, its release or its expiry, and serves its values
 * to gn_host_fetch.
 *
 * Memory: the response scratch is sized at create for max_batch_seqs
 * sequences (and as many requests) and grown only when a bigger batch comes;
 * a kept row is allocated once per sequence slot on its first sparse step and
 * freed with the slot. Nothing else is allocated per step.
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
    int max_batch_seqs;     /* sequences over all the requests of one batch the scratch is
                               sized for at create, default 256 (a bigger batch grows it) */
    int64_t idle_timeout_ms;/* a sequence unused this long is freed by gn_host_sweep; 0 = never;
                               default 300000 */
    size_t max_reply_bytes; /* values one reply may carry (dense rows, sparse candidates at 8
                               bytes each, fetched values), default 1 GiB (0 = the default); a
                               step or fetch that would carry more is ERROR_TOO_LARGE, refused
                               before the forward pass or any allocation. The coordinator's
                               largest reply, 256 full F32 rows of 128k columns, is 131 MB */
    gn_runner_params runner;/* runner.max_seqs is set to max_seqs */
} gn_host_params;

gn_host_params gn_host_default_params(void);

typedef struct gn_host gn_host;

/* Creates a host for model m (borrowed; must outlive the host) with its own
 * runner and KV pool. NULL and err on failure. */
gn_host *gn_host_create(gn_model *m, const gn_host_params *p, gn_err *err);

/* Frees every sequence, the runner and the host (NULL is a no-op). */
void gn_host_free(gn_host *h);

/* Serves n >= 1 StepRequests (each already checked by gn_wire_step_check) at
 * time now_ms (monotonic) with ONE forward pass over all their sequences.
 * ads[i] is the adapter whose sequences request i addresses (ads NULL, or
 * ads[i] NULL: the model itself); new sequences are bound to it
 * (gn_seq_set_adapter), held ones are found by (seq_id, adapter).
 *
 * Every sequence of every request is checked as described above; a seq_id
 * (of the same adapter) that an earlier request of the batch already steps
 * gets ERROR_BAD_REQUEST. resps[i] (initialised by the caller) receives
 * request i's results in request order, its per-sequence errors, its dense
 * rows (a tensor of the request's dtype: the rows of request i only; F32 on a
 * little-endian host points into the runner output, no copy), its sparse rows
 * (cand_ids / cand_values with cand_floor, row_min, tail_lse per result),
 * compute_us (the pass's forward time, log-softmax included; selection and
 * packing are not) and pass_seqs (sequences in the pass). resp->model echoes
 * req->model; a caller that resolved the request to another version points it
 * at its own ModelRef afterwards.
 *
 * codes[i] = 0, or a genarm.v1.ErrorCode with errs[i] when request i failed as
 * a whole (bad dtype, too many sequences, a reply over max_reply_bytes
 * (gn_host_reply_check), out of memory, the forward pass failing). A failing pass fails every request with a sequence in it: no
 * sequence grows (a rewound one stays rewound), sequences new in the batch
 * are not kept.
 *
 * The memory the responses point to belongs to the host and stays valid until
 * the next gn_host_step* call on it (or gn_host_free); gn_host_fetch does not
 * touch it. */
void gn_host_step_batch(gn_host *h, const gn_lora_adapter *const *ads, const gn_wire_step_req *const *reqs,
                        int n, gn_wire_step_resp *const *resps, int *codes, gn_err *errs, int64_t now_ms);

/* One request (gn_host_step_batch with n = 1): returns 0 (per-sequence
 * failures are in resp->errors) or the request's genarm.v1.ErrorCode with
 * err. gn_host_step serves the model itself, gn_host_step_for adapter ad. */
int gn_host_step(gn_host *h, const gn_wire_step_req *req, int64_t now_ms, gn_wire_step_resp *resp,
                 gn_err *err);
int gn_host_step_for(gn_host *h, const gn_lora_adapter *ad, const gn_wire_step_req *req, int64_t now_ms,
                     gn_wire_step_resp *resp, gn_err *err);

/* The bound on one reply: 0 when a reply to req (every sequence served:
 * dense rows, all_logits rows, sparse candidates) stays within
 * max_reply_bytes, else ERROR_TOO_LARGE with err naming the size and the
 * limit. gn_host_step_batch applies it to each request; a caller that splits
 * one request over several hosts of the same row width applies it to the
 * whole request. */
int gn_host_reply_check(const gn_host *h, const gn_wire_step_req *req, gn_err *err);

/* Values of kept rows (sparse steps) of adapter ad's sequences (NULL: the
 * model itself), for a RowFetch already checked by gn_wire_fetch_check: per
 * sequence, the listed ids in order, or the whole row (full_row), from the row
 * whose seq_len equals FetchSeq.seq_len. res receives the served sequences in
 * request order and the values as float32 little-endian; a sequence whose row
 * is not held (stepped on, released, expired, dense, or another seq_len) gets
 * an Error ERROR_ROW_GONE, an id outside [0, n_out) ERROR_TOKEN_RANGE. The
 * memory res points to belongs to the host until its next gn_host_fetch.
 * Returns 0, or a genarm.v1.ErrorCode with err (ERROR_TOO_LARGE: the values
 * asked for exceed max_reply_bytes; out of memory). */
int gn_host_fetch(gn_host *h, const gn_lora_adapter *ad, const Genarm__V1__RowFetch *req,
                  Genarm__V1__RowFetchResult *res, gn_err *err);

/* Forward passes run and sequences stepped over them since create. */
void gn_host_counters(const gn_host *h, uint64_t *forward_passes, uint64_t *pass_seqs_total);

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
size_t gn_host_max_reply_bytes(const gn_host *h);
/* Tokens held for seq_id (of adapter ad for _for), or -1 when the host does not hold it. */
int gn_host_seq_len(const gn_host *h, uint64_t seq_id);
int gn_host_seq_len_for(const gn_host *h, const gn_lora_adapter *ad, uint64_t seq_id);
void gn_host_kv_usage(const gn_host *h, int *used_blocks, int *total_blocks);
/* Columns of every log-prob row (gn_model_n_out). */
int gn_host_n_out(const gn_host *h);

#endif
