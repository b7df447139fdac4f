/* job_share.h — coordinators sharing requests through the Redis request
 * queue (ARCHITECTURE.md §8: several coordinators run side by side).
 *
 * A coordinator whose batch is full does not make a new request wait behind
 * its own work: it puts it on the stream genarm:requests (consumer group
 * "coordinators") and any coordinator with room takes it — the same one
 * later, or another. The coordinator that holds the client's HTTP connection
 * (the origin) keeps it; the one that takes the request (the executor) runs
 * it in its step loop and sends the output back over ZeroMQ to the origin's
 * peer endpoint (proto/genarm.proto: QueuedJob, JobAccept, JobText, JobToken,
 * JobDone, JobAlive, JobCancel). Redis carries the request once; per-token
 * traffic never goes through it.
 *
 * Nothing is lost or run twice:
 *  - an executor sends JobAccept before it acknowledges (deletes) the stream
 *    entry, so a coordinator that dies in between leaves the entry pending and
 *    another one claims it after claim_idle_ms;
 *  - the origin accepts the first executor and cancels any other;
 *  - an executor that falls silent for peer_timeout_ms (it sends JobAlive
 *    every second) is presumed dead: a request that had produced no output
 *    yet goes back on the queue, one that had is ended with an error naming
 *    the executor (a stream cannot be replayed);
 *  - an origin that falls silent (no answer to JobAlive) for peer_timeout_ms
 *    has lost its client: the executor cancels its requests;
 *  - a client that disconnects cancels its request wherever it is: still
 *    queued (dropped when taken), or running on an executor (JobCancel).
 *
 * Threads: gn_share_export and gn_share_cancel from any thread; the origin
 * side runs its own thread (the peer ROUTER; exported requests' sinks are
 * called from it); gn_share_take, gn_share_poll and the sinks of taken remote
 * requests belong to one thread (the caller's step loop). */
#ifndef GN_JOB_SHARE_H
#define GN_JOB_SHARE_H

#include <stddef.h>
#include <stdint.h>

#include "coord_backend.h"
#include "gn_err.h"
#include "metrics.h"
#include "wire.h"

typedef struct gn_share_params {
    const char *coordinator_id; /* required: names this coordinator (consumer name, logs) */
    const char *bind;           /* peer ROUTER endpoint, default "tcp://127.0.0.1:0" */
    const char *advertise;      /* endpoint other coordinators connect to; default: the bound
                                   endpoint (required when bind uses a wildcard address) */
    const char *redis_host;     /* required */
    int redis_port;             /* required */
    int redis_timeout_ms;       /* default 2000 */
    int peer_timeout_ms;        /* silence after which a peer is presumed dead, default 10000 */
    int claim_idle_ms;          /* a taken-but-unacknowledged entry is claimed after this, default 15000 */
    gn_coord_metrics *metrics;  /* optional (borrowed) */
} gn_share_params;

gn_share_params gn_share_default_params(void);

typedef struct gn_share gn_share;

/* Binds the peer ROUTER, connects to Redis (creating the consumer group if
 * missing) and starts the origin thread. NULL with err on failure. */
gn_share *gn_share_create(const gn_share_params *p, gn_err *err);

/* The endpoint other coordinators reach this one at. */
const char *gn_share_endpoint(const gn_share *s);

/* Ends every exported request that has not finished (its sink's done()
 * reports "abort"), cancels them on their executors, stops the thread,
 * closes the sockets. Taken remote requests must have ended first (their
 * sinks' done() called). NULL is a no-op. */
void gn_share_free(gn_share *s);

/* ---- origin ----------------------------------------------------------------- */

/* Puts job on the shared queue. job->req, job->tenant and job->body must stay
 * valid until sink->done() returns. From then on s (or the coordinator that
 * takes the request) owns the sink: exactly one done() follows, from s's
 * thread or from the caller of gn_share_take that takes it back. 0, or a
 * negative code with err when the queue cannot take it (the caller then runs
 * it itself; the sink is untouched). */
int gn_share_export(gn_share *s, const gn_coord_job *job, gn_coord_sink *sink, gn_err *err);

/* Cancels exported request job_id: 1 when s knew it (done() follows with
 * "abort"), 0 when it is not an exported request. */
int gn_share_cancel(gn_share *s, uint64_t job_id);

/* Exported requests not finished yet (queued or running elsewhere). */
int gn_share_exported(gn_share *s);

/* ---- executor (one thread) ------------------------------------------------------ */

/* A request taken from the queue. */
typedef struct gn_share_taken {
    int remote;          /* 0: one of this coordinator's own exports came back */
    gn_coord_job *job;   /* valid until sink->done() returns */
    gn_coord_sink *sink; /* remote: forwards to the origin */
} gn_share_taken;

/* Takes the next request from the queue (or claims one left pending by a
 * coordinator that died). 1 with *out filled: the caller must run the job or
 * call out->sink->done() with an error; 0 when there is none; negative on a
 * Redis failure. Entries that cannot be decoded are logged, dropped and
 * answered with a JobDone error when their origin is readable. */
int gn_share_take(gn_share *s, gn_share_taken *out, gn_err *err);

/* Non-blocking upkeep of the taken remote requests: sends JobAlive, reads the
 * origins' JobCancel, and presumes an origin dead after peer_timeout_ms of
 * silence. Calls cancel(ctx, job->id) for each request to stop; the caller
 * then ends it (done() with "abort"). Call at least every few hundred ms
 * while remote requests run. */
void gn_share_poll(gn_share *s, void (*cancel)(void *ctx, uint64_t job_id), void *ctx);

/* Taken remote requests that have not called done() yet (any thread). */
int gn_share_remote_running(gn_share *s);

/* Entries waiting on the queue (not yet taken), for the gauge
 * genarm:request_queue_depth; negative on a Redis failure. */
long gn_share_queue_depth(gn_share *s);

/* ---- the queued message (exposed for tests) --------------------------------------- */

/* Serializes job as an Envelope holding a QueuedJob (job->body is required). */
int gn_share_encode(const gn_coord_job *job, const char *origin_id, const char *origin_endpoint,
                    uint64_t enqueued_unix_ms, uint8_t **out, size_t *len, gn_err *err);

/* A decoded QueuedJob: the job with its parsed request, owned here. */
typedef struct gn_share_job {
    char origin_id[GN_CTL_ID_MAX];
    char origin_endpoint[256];
    uint64_t origin_job_id;
    uint64_t enqueued_unix_ms;
    gn_coord_job job; /* job.req = &req, job.tenant = tenant, job.body = body; job.id = origin_job_id */
    gn_oai_request req;
    char tenant[GN_CTL_ID_MAX];
    char *body;
    size_t body_len;
} gn_share_job;

/* Decodes and validates a queue payload (frame size, protocol version, every
 * field's range, the body through the OpenAI parser). 0 with *out filled
 * (free with gn_share_job_clear), or GN_EFORMAT / GN_EINVAL / GN_ENOMEM with a
 * message naming the field. When the failure is in the request itself and the
 * origin is readable, out->origin_id / origin_endpoint / origin_job_id are
 * still filled (so the origin can be told), else origin_endpoint is "". */
int gn_share_decode(const uint8_t *buf, size_t len, gn_share_job *out, gn_err *err);
void gn_share_job_clear(gn_share_job *j);

#endif
