/* step_server.h — the ZeroMQ side of a worker: a ROUTER socket that receives
 * Envelopes, validates every frame, dispatches each request to callbacks and
 * sends exactly one reply per request. Generic over what is served: the
 * base_worker plugs in one model, a reward_worker dispatches on
 * StepRequest.model (name, version) to the ARM it holds.
 *
 * Discipline (DESIGN.md §2, STYLE.md 15): polls with a timeout (tick_ms) and
 * never blocks on a send; a malformed frame (not protobuf, wrong version,
 * no body, oversized, bad multipart layout, invalid StepRequest) gets an Error
 * reply and the loop goes on; on stop it drains: requests already queued are
 * answered ERROR_SHUTTING_DOWN, then the socket closes with a bounded linger.
 *
 * Thread-safety: a server and its callbacks run on the thread that calls
 * gn_step_server_run. */
#ifndef GN_STEP_SERVER_H
#define GN_STEP_SERVER_H

#include <signal.h>
#include <stdint.h>

#include "gn_err.h"
#include "wire.h"

/* Callbacks. Those returning int return 0 on success or a genarm.v1.ErrorCode
 * (> 0) to answer the whole request with an Error carrying err->msg. Memory a
 * callback puts into a reply (arrays, strings, tensor bytes) stays owned by
 * the callback's object and must stay valid until its next call. */
typedef struct gn_step_handlers {
    void *ud;
    /* A validated StepRequest (gn_wire_step_check passed). Fill resp (it comes
     * initialised, empty). Required. */
    int (*step)(void *ud, const gn_wire_step_req *req, gn_wire_step_resp *resp, gn_err *err);
    /* Frees the listed sequences; *released = how many were held. Required. */
    int (*release)(void *ud, const Genarm__V1__Release *rel, uint32_t *released, gn_err *err);
    /* Fills the load fields of the worker's heartbeat reply (worker_id,
     * unix_ms and draining are set by the server). May be NULL. */
    void (*heartbeat)(void *ud, Genarm__V1__Heartbeat *hb);
    /* LoadModel / UnloadModel / PromoteModel envelopes. NULL = answered
     * ERROR_UNSUPPORTED. */
    int (*command)(void *ud, const gn_wire_env *cmd, Genarm__V1__CommandResult *res, gn_err *err);
    /* Called about every tick_ms with the monotonic clock (idle sweeps,
     * registry heartbeats). May be NULL. */
    void (*tick)(void *ud, int64_t now_ms);
} gn_step_handlers;

typedef struct gn_step_server_params {
    const char *endpoint;  /* e.g. "tcp://127.0.0.1:5555" or "tcp://127.0.0.1:*" */
    const char *worker_id; /* for heartbeats and logs, default "worker" */
    const char *log_comp;  /* comp= field of log lines, default "step_server" */
    int tick_ms;           /* poll timeout and tick period, default 100 */
    int drain_ms;          /* time to answer queued requests after stop, default 500 */
    int linger_ms;         /* socket linger at close, default 1000 */
    gn_wire_limits limits; /* frame and request limits (gn_wire_default_limits) */
} gn_step_server_params;

gn_step_server_params gn_step_server_default_params(void);

typedef struct gn_step_server gn_step_server;

/* Creates the ZeroMQ context and ROUTER socket and binds p->endpoint. h is
 * copied. NULL and err on failure (bind error names the endpoint). */
gn_step_server *gn_step_server_create(const gn_step_server_params *p, const gn_step_handlers *h,
                                      gn_err *err);

/* The endpoint actually bound (the port resolved when "*" was asked). */
const char *gn_step_server_endpoint(const gn_step_server *s);

/* Serves until *stop becomes non-zero (checked at least every tick_ms; a
 * signal handler may set it), then drains. Returns 0 after a clean stop, or a
 * negative GN_E* code on a socket failure. */
int gn_step_server_run(gn_step_server *s, volatile sig_atomic_t *stop, gn_err *err);

/* Requests served and error replies sent so far (for logs and tests). */
void gn_step_server_counts(const gn_step_server *s, uint64_t *requests, uint64_t *errors);

/* Closes the socket and context (NULL is a no-op). */
void gn_step_server_free(gn_step_server *s);

/* Monotonic clock in milliseconds (the clock tick and idle timeouts use). */
int64_t gn_wire_now_ms(void);

#endif
