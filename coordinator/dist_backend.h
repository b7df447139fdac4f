/* dist_backend.h — the distributed gn_coord_backend: GenARM decoding as
 * per-step exchanges with a base_worker and the reward_workers over ZeroMQ,
 * with continuous batching (docs/ARCHITECTURE.md tells the whole story).
 *
 * Every step: the running sequences (each choice of each job is one
 * sequence; new ones join between steps) go to the base worker in one
 * StepRequest and to the reward worker of each ARM version they use (each
 * model gets its OWN prompt tokens, rendered with its own chat template for
 * chat requests; all share the continuation). Replies are gathered from every
 * worker at once; each sequence's rows are combined and drawn from with its
 * own RNG (engine/draw.h: the same draw as the in-process engine), and the
 * tokens become streamed text (stop strings, hold-back) and, when asked,
 * log-probs. EOS, a stop string or max_tokens ends a sequence; a finished or
 * cancelled sequence is released on every worker that holds it.
 *
 * Rows: by default SPARSE (each worker sends its top candidates and bounds
 * on the rest); a draw goes ahead only when it is proved within epsilon
 * (total variation) of the exact GenARM distribution, else what it lacks is
 * fetched first. "f32" rows are exact; "f16"/"bf16" rows are smaller with
 * their rounding and no such bound (step_exchange.h).
 *
 * ARM versions: a job's ARMs are pinned at submit to the registry's current
 * version and that version is named in every StepRequest, so a promotion
 * never moves a running sequence. The reward worker comes from a snapshot of
 * the worker registry kept by a control thread (arm_pin.h): no Redis call on
 * the step path. When no worker holds the version the job is parked (a reward
 * worker loads the ARM) and admitted when one does, or fails after
 * arm_wait_ms with an error naming the ARM.
 *
 * Sharing: when a submitted job would not fit in the batch (max_batch
 * sequences, counting the ones waiting here), it goes to the shared Redis
 * queue instead (job_share.h); the scheduler takes queued jobs — its own or
 * other coordinators' — whenever it has room.
 *
 * Capacity: a worker that refuses a sequence with ERROR_CAPACITY does not
 * fail it: the sequence is not stepped for a short backoff and retried, until
 * it gets room or capacity_wait_ms passes.
 *
 * Failures: a worker whose connection drops fails the sequences that were
 * waiting on it at once; one that answers neither its requests nor heartbeats
 * for liveness_ms is declared stalled; an error reply fails only the
 * sequences it names. Nothing else waits for a failed worker.
 *
 * Thread-safety: the gn_coord_backend callbacks may be called from any
 * thread; create/free from one thread. */
#ifndef GN_DIST_BACKEND_H
#define GN_DIST_BACKEND_H

#include <stdint.h>

#include "coord_backend.h"
#include "gn_err.h"
#include "metrics.h"

typedef struct gn_dist_params {
    const char *base_endpoint;  /* required: the base_worker, "tcp://host:port" */
    const char *base_model_dir; /* required: tokenizer, config (EOS ids, context) and chat template */
    const char *redis_host;     /* required */
    int redis_port;             /* required */
    int redis_timeout_ms;       /* default 2000 */
    int step_timeout_ms;        /* a worker's reply to one step, default 30000 */
    int liveness_ms;            /* a worker with a request pending that answers neither it nor a
                                   heartbeat for this long is stalled, default 1000 */
    const char *rows;           /* "sparse" (default), "f32", "f16" or "bf16" (step_exchange.h) */
    double epsilon;             /* sparse rows: the largest total-variation distance between a
                                   draw's distribution and the exact one, default 1e-6 */
    uint32_t sparse_k;          /* candidates a sparse row starts with, default 64 */
    uint32_t sparse_k_max;      /* most candidates before dense rows, default 2048 */
    int no_ipc;                 /* 1: reach reward workers over TCP even on this host (by default a
                                   worker on this host that offers an ipc:// endpoint is reached
                                   through it) */
    int arm_wait_ms;            /* how long a job waits for a worker holding its ARM, default 30000 */
    int capacity_wait_ms;       /* how long a sequence waits for room on a worker at capacity
                                   (ERROR_CAPACITY), retrying with backoff, default 60000 */
    int max_batch;              /* sequences per step, default 64 */
    int sample_threads;         /* threads drawing a step's sequences, default 1; the result does
                                   not depend on it (each sequence owns its RNG) */
    const char *model_id;       /* served model name; default: basename of base_model_dir */
    const char *coordinator_id; /* names this coordinator in logs and parked requests; default "coord" */
    gn_coord_metrics *metrics;  /* optional (borrowed) */
    /* Sharing requests with other coordinators through the Redis queue
     * (job_share.h): a request that finds this coordinator's batch full is
     * queued, and this coordinator takes queued requests whenever it has room. */
    int no_share;               /* 1: run every request here, never queue or take */
    const char *peer_bind;      /* the peer endpoint, default "tcp://127.0.0.1:0" */
    const char *peer_advertise; /* how other coordinators reach it (required with a wildcard bind) */
    int peer_timeout_ms;        /* a silent peer is presumed dead after this, default 10000 */
} gn_dist_params;

gn_dist_params gn_dist_default_params(void);

typedef struct gn_dist gn_dist;

/* Loads the base tokenizer/config/template, connects to Redis, starts the
 * scheduler thread. The workers may come up later. NULL with err on failure. */
gn_dist *gn_dist_create(const gn_dist_params *p, gn_err *err);

/* The backend interface over d (d must outlive every use of it). */
gn_coord_backend gn_dist_backend(gn_dist *d);

/* Step statistics since creation (for benchmarks): steps run, total seconds
 * in steps, seconds waiting for workers (send..last reply), seconds of model
 * compute on the workers, tokens sampled. */
typedef struct gn_dist_stats {
    long steps;
    long tokens;
    double step_s;
    double wait_s;
    double compute_s; /* the workers' forward passes (StepResponse.compute_us), slowest worker per step */
} gn_dist_stats;
void gn_dist_get_stats(gn_dist *d, gn_dist_stats *out);

/* Stops taking requests from the shared queue (graceful drain: this
 * coordinator finishes what it runs; queued requests go to the others). */
void gn_dist_drain(gn_dist *d);

/* Other coordinators' requests running here (a drain waits for them too). */
int gn_dist_peer_jobs(gn_dist *d);

/* Cancels every job still queued or running (done() reports "abort"), stops
 * the thread, releases the sequences on the workers, frees. NULL is a no-op. */
void gn_dist_free(gn_dist *d);

#endif
