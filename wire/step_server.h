/* step_server.h — the ZeroMQ side of a worker, and the worker's BATCHING
 * POINT: a ROUTER socket that receives Envelopes from any number of
 * coordinators, validates every frame, merges the StepRequests that arrive
 * together into one batch for the model (one forward pass per model host),
 * and sends exactly one reply per request. Generic over what is served: the
 * base_worker plugs in one model, a reward_worker routes each request's
 * StepRequest.model to the ARM version it holds.
 *
 * Two threads. gn_step_server_run starts an I/O thread that owns the socket:
 * it receives and validates frames, answers Heartbeats at once from the load
 * the compute side last published (so a worker busy in a long forward pass
 * still answers pings, and only a dead or stalled process misses them), and
 * sends the replies. The handlers all run on the thread that called
 * gn_step_server_run (the compute thread), one at a time, so the model state
 * has one owner.
 *
 * Batching: requests are taken in arrival order. Consecutive StepRequests go
 * into one batch (the step handler gets them all at once) up to
 * max_batch_seqs sequences. Before a batch starts, the compute thread waits
 * for the next request of every peer that was served in the previous batch
 * and has not sent one yet: coordinators in a steady decode loop come back
 * within a round trip plus their own work, and their steps then share one
 * forward pass instead of running one after another. The wait adapts to the
 * peers: twice the slowest missing peer's recent turnaround (its reply sent to
 * its next step received) plus 0.5 ms, at most gather_us. A peer that does not
 * come back within it is not waited for again until it sends something. A
 * lone coordinator is never delayed (it is the only peer expected, and its
 * request is there). RowFetch and Release are served before the batch they
 * arrive with (a Release naming a sequence the batch steps is applied after
 * it); Load/Unload/Promote end the batch and run in order.
 *
 * Discipline: polls with a timeout (tick_ms) and never blocks on a send; a
 * malformed frame (not protobuf, wrong version, no body, oversized, bad
 * multipart layout, invalid StepRequest) gets an Error reply and the loop goes
 * on; on stop it drains: requests already queued are answered
 * ERROR_SHUTTING_DOWN, then the socket closes with a bounded linger. */
#ifndef GN_STEP_SERVER_H
#define GN_STEP_SERVER_H

#include <signal.h>
#include <stdint.h>

#include "gn_err.h"
#include "wire.h"

/* Callbacks, all on the compute thread. Those returning int return 0 on
 * success or a genarm.v1.ErrorCode (> 0) to answer the whole request with an
 * Error carrying err->msg. Memory a callback puts into a reply (arrays,
 * strings, tensor bytes) stays owned by the callback's object and must stay
 * valid until its next call (the server encodes every reply of a call before
 * it makes the next one). */
typedef struct gn_step_handlers {
    void *ud;
    /* n >= 1 validated StepRequests (gn_wire_step_check passed; distinct
     * sequences within each request, but two requests may name the same
     * seq_id: refuse the later one per sequence). Serve them with as few
     * forward passes as the models allow and fill resps[i] (initialised,
     * empty); codes[i] = 0, or a genarm.v1.ErrorCode for a whole-request
     * failure of request i with errs[i]. Required. */
    void (*step)(void *ud, const gn_wire_step_req *const *reqs, int n, gn_wire_step_resp *const *resps,
                 int *codes, gn_err *errs);
    /* Values of rows the worker still holds (sparse steps). NULL = answered
     * ERROR_UNSUPPORTED. */
    int (*fetch)(void *ud, const Genarm__V1__RowFetch *req, Genarm__V1__RowFetchResult *res, gn_err *err);
    /* Frees the listed sequences; *released = how many were held. Required. */
    int (*release)(void *ud, const Genarm__V1__Release *rel, uint32_t *released, gn_err *err);
    /* LoadModel / UnloadModel / PromoteModel envelopes. NULL = answered
     * ERROR_UNSUPPORTED. */
    int (*command)(void *ud, const gn_wire_env *cmd, Genarm__V1__CommandResult *res, gn_err *err);
    /* Called about every tick_ms with the monotonic clock (idle sweeps,
     * registry heartbeats). May be NULL. */
    void (*tick)(void *ud, int64_t now_ms);
} gn_step_handlers;

#define GN_STEP_LOAD_MAX_MODELS 64

/* What Heartbeat replies carry: published by the compute side whenever it
 * changes (gn_step_server_publish_load), read by the I/O thread. */
typedef struct gn_step_load {
    uint32_t active_seqs, max_seqs;
    uint32_t kv_used_blocks, kv_total_blocks;
    uint64_t forward_passes;  /* forward passes since start */
    uint64_t pass_seqs_total; /* sequences stepped over them */
    int n_models;             /* models held (empty name = the base model) */
    struct {
        char name[72];
        uint32_t version;
    } models[GN_STEP_LOAD_MAX_MODELS];
} gn_step_load;

typedef struct gn_step_server_params {
    const char *endpoint;  /* one or several, comma-separated: "tcp://127.0.0.1:5555",
                              "tcp://127.0.0.1:*,ipc:///run/genarm/base.sock" */
    const char *worker_id; /* for heartbeats and logs, default "worker" */
    const char *log_comp;  /* comp= field of log lines, default "step_server" */
    int tick_ms;           /* poll timeout and tick period, default 100 */
    int drain_ms;          /* time to answer queued requests after stop, default 500 */
    int linger_ms;         /* socket linger at close, default 1000 */
    int gather_us;         /* longest wait for expected peers before a batch (the wait itself
                              follows their turnaround), default 10000; 0 = none */
    int max_batch_seqs;    /* sequences in one batch, default 256 */
    gn_wire_limits limits; /* frame and request limits (gn_wire_default_limits) */
} gn_step_server_params;

gn_step_server_params gn_step_server_default_params(void);

typedef struct gn_step_server gn_step_server;

/* Creates the ZeroMQ context and ROUTER socket and binds every endpoint of
 * p->endpoint. h is copied. NULL and err on failure (a bind error names the
 * endpoint). */
gn_step_server *gn_step_server_create(const gn_step_server_params *p, const gn_step_handlers *h,
                                      gn_err *err);

/* The first endpoint actually bound (the port resolved when "*" was asked). */
const char *gn_step_server_endpoint(const gn_step_server *s);
/* Every endpoint bound, comma-separated, in the order given. */
const char *gn_step_server_endpoints(const gn_step_server *s);

/* Replaces the load Heartbeats report. Thread-safe. */
void gn_step_server_publish_load(gn_step_server *s, const gn_step_load *load);

/* Serves until *stop becomes non-zero (checked at least every tick_ms; a
 * signal handler may set it), then drains. Runs the handlers on the calling
 * thread. Returns 0 after a clean stop, or a negative GN_E* code on a socket
 * failure. */
int gn_step_server_run(gn_step_server *s, volatile sig_atomic_t *stop, gn_err *err);

/* Counters since creation (logs, tests, metrics): requests received, error
 * replies sent, step batches run and the StepRequests in them; the gather
 * waits: batches that waited for expected peers, the microseconds spent
 * waiting in all, and the wait before the latest batch (a step handler that
 * reads it gets the wait before its own batch). Thread-safe. */
typedef struct gn_step_server_stats {
    uint64_t requests, errors, batches, batched_requests;
    uint64_t gather_waits, gather_us_total, last_gather_us;
} gn_step_server_stats;
void gn_step_server_stats_get(const gn_step_server *s, gn_step_server_stats *out);

/* Closes the socket and context (NULL is a no-op). Not while running. */
void gn_step_server_free(gn_step_server *s);

/* Monotonic clock in milliseconds (the clock tick and idle timeouts use). */
int64_t gn_wire_now_ms(void);

#endif
