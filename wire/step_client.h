/* step_client.h — the coordinator's side of the data plane: a DEALER socket
 * connected to one worker, with request ids, timeouts and capped reconnect
 * backoff. Sends and receives are split so a caller can fan a step out to
 * several workers and then gather each reply with a deadline.
 *
 * Replies are matched by request id: gn_step_client_recv waits for one id
 * (replies to earlier requests that timed out arrive late and are dropped);
 * gn_step_client_recv_any hands over whatever arrives, so several requests
 * (one per ARM version on one worker, heartbeats) can be in flight on one
 * socket, and gn_step_clients_wait polls many clients at once. No call blocks
 * longer than its timeout.
 *
 * Link state: every client watches its connection (a ZeroMQ socket monitor),
 * so a worker that dies — its TCP or ipc connection drops — is known at once
 * (gn_step_client_link: `disconnects` grows), not after a timeout. A stalled
 * worker keeps its connection: the caller's heartbeats tell that one.
 *
 * Thread-safety: one client is used by one thread at a time (ZeroMQ sockets
 * are not thread-safe); use one client per thread per worker. */
#ifndef GN_STEP_CLIENT_H
#define GN_STEP_CLIENT_H

#include <stdint.h>

#include "gn_err.h"
#include "gn_tensor.h"
#include "wire.h"

typedef struct gn_step_client_params {
    void *zmq_ctx;            /* a ZeroMQ context to share (all of a coordinator's clients), or
                                 NULL: the client makes its own */
    int send_timeout_ms;      /* a send waits at most this for queue room, default 1000 */
    int reconnect_ivl_ms;     /* first reconnect delay, default 100 */
    int reconnect_ivl_max_ms; /* backoff cap, default 2000 */
    gn_wire_limits limits;    /* applied to replies (max_frame_bytes) */
} gn_step_client_params;

gn_step_client_params gn_step_client_default_params(void);

/* A ZeroMQ context for clients to share (gn_step_client_params.zmq_ctx):
 * one set of I/O threads for all of a process's links. NULL on failure.
 * Free it after every client using it. */
void *gn_step_context_new(void);
void gn_step_context_free(void *ctx); /* NULL is a no-op */

typedef struct gn_step_client gn_step_client;

/* Creates a client connected to endpoint ("tcp://host:port"). The connection
 * is made in the background (the worker may start later). p may be NULL.
 * NULL and err on failure. */
gn_step_client *gn_step_client_create(const char *endpoint, const gn_step_client_params *p,
                                      gn_err *err);
void gn_step_client_free(gn_step_client *c);

/* Sends env after setting its protocol_version and a fresh request_id
 * (returned in *request_id; env is otherwise unchanged and still the
 * caller's). Returns 0, GN_ENOMEM or GN_EIO (queue full past
 * send_timeout_ms, socket error). */
int gn_step_client_send(gn_step_client *c, gn_wire_env *env, uint64_t *request_id, gn_err *err);

/* Sends len raw bytes as one frame (tests, fuzzing). */
int gn_step_client_send_raw(gn_step_client *c, const void *buf, size_t len, gn_err *err);

/* Waits at most timeout_ms for the reply to request_id and decodes it into
 * *reply (free with gn_wire_env_free). Replies with other ids are dropped.
 * StepResponses and RowFetchResults are validated as by
 * gn_step_client_recv_any. Returns 0; GN_EIO with a message starting
 * "timeout" when nothing came; GN_EFORMAT when the reply does not decode or
 * fails its check. A reply that is an Error envelope is returned as is (0):
 * the caller reads reply->error. */
int gn_step_client_recv(gn_step_client *c, uint64_t request_id, int timeout_ms,
                        gn_wire_env **reply, gn_err *err);

/* Waits at most timeout_ms for any one frame and returns its raw bytes
 * (gn_malloc'd, caller frees). Returns 0 or GN_EIO ("timeout..."). */
int gn_step_client_recv_raw(gn_step_client *c, int timeout_ms, uint8_t **buf, size_t *len,
                            gn_err *err);

/* Waits at most timeout_ms for the next reply, whatever its request id, and
 * decodes it into *reply (free with gn_wire_env_free). StepResponses and
 * RowFetchResults are validated (gn_wire_step_resp_check,
 * gn_wire_fetch_result_check): one that fails is returned as GN_EFORMAT with
 * *request_id set, so the caller can fail that request. Returns 0, GN_EIO
 * ("timeout") when nothing came, GN_EFORMAT. */
int gn_step_client_recv_any(gn_step_client *c, int timeout_ms, gn_wire_env **reply,
                            uint64_t *request_id, gn_err *err);

/* The connection as the socket monitor last reported it (events are read by
 * gn_step_clients_wait and gn_step_client_link). */
typedef struct gn_step_link {
    int connected;          /* 1 while a connection to the worker is up */
    uint64_t disconnects;   /* connections lost so far: a request sent before the count grew
                               will never be answered */
    int64_t since_ms;       /* gn_wire_now_ms of the last change (creation at first) */
} gn_step_link;
void gn_step_client_link(gn_step_client *c, gn_step_link *out);

/* Polls clients cs[0..n) at most timeout_ms (0: just look) for replies and
 * connection events; reads the events (updating each link) and sets
 * readable[i] = 1 where a reply is waiting. Returns the number of readable
 * clients (0 on timeout) or GN_EIO. n <= 256. */
int gn_step_clients_wait(gn_step_client *const *cs, int n, int timeout_ms, unsigned char *readable,
                         gn_err *err);

/* The endpoint the client connects to. */
const char *gn_step_client_endpoint(const gn_step_client *c);

/* send + recv. */
int gn_step_client_call(gn_step_client *c, gn_wire_env *env, int timeout_ms, gn_wire_env **reply,
                        gn_err *err);

/* One sequence's part of a step, in host terms. */
typedef struct gn_step_seq {
    uint64_t seq_id;
    uint32_t start_pos;    /* tokens the worker holds before this step (0 = new) */
    const int32_t *tokens; /* n_tokens ids, borrowed for the call */
    int n_tokens;
    int all_logits;
    int release_after;
    uint32_t top_k;        /* 0: a dense row; > 0: a sparse row of top_k candidates (SeqStep.top_k) */
} gn_step_seq;

/* Builds and sends a StepRequest for model (name may be NULL/"" = base,
 * version) over n seqs, asking for log-probs in dtype. Returns like
 * gn_step_client_send. */
int gn_step_client_step_send(gn_step_client *c, const char *model_name, uint32_t model_version,
                             const gn_step_seq *seqs, int n, gn_dtype dtype, uint64_t *request_id,
                             gn_err *err);

/* One sequence's part of a RowFetch: the values of ids[0..n_ids) of the row
 * the sequence's step at seq_len produced, or (full_row) the whole row. */
typedef struct gn_fetch_seq {
    uint64_t seq_id;
    uint32_t seq_len;
    const int32_t *ids; /* borrowed for the call */
    int n_ids;
    int full_row;
} gn_fetch_seq;

/* Builds and sends a RowFetch for model (name NULL/"" = base, version) over n
 * sequences. Returns like gn_step_client_send. */
int gn_step_client_fetch_send(gn_step_client *c, const char *model_name, uint32_t model_version,
                              const gn_fetch_seq *seqs, int n, uint64_t *request_id, gn_err *err);

/* Sends a Release for these sequence ids (fire and collect the reply with
 * gn_step_client_recv). */
int gn_step_client_release_send(gn_step_client *c, const char *model_name,
                                uint32_t model_version, const uint64_t *seq_ids, int n,
                                uint64_t *request_id, gn_err *err);

/* Converts a received StepResponse's log-prob tensor to float32: checks it
 * (gn_wire_step_resp_check) and writes rows*cols floats to dst (dst_cap
 * floats). *rows, *cols receive the shape. Returns 0, GN_EFORMAT or
 * GN_ERANGE (dst too small). */
int gn_step_resp_logprobs_f32(const gn_wire_step_resp *resp, float *dst, size_t dst_cap,
                              uint64_t *rows, uint64_t *cols, gn_err *err);

/* The same rows without a copy where possible: an F32 tensor on a
 * little-endian host, 4-byte aligned, is read in place (*out points into
 * resp, valid while resp lives); anything else is converted into dst as
 * above and *out = dst. */
int gn_step_resp_logprobs_view(const gn_wire_step_resp *resp, float *dst, size_t dst_cap,
                               const float **out, uint64_t *rows, uint64_t *cols, gn_err *err);

#endif
