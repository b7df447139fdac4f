/* http_server.h — the coordinator's OpenAI-compatible HTTP front
 * (libmicrohttpd, one thread per connection).
 *
 * Routes
 *   POST /v1/completions, POST /v1/chat/completions   (JSON or SSE with "stream": true)
 *   GET  /v1/models                                   (the backend's model id)
 *   GET  /health   200 while the process serves
 *   GET  /ready    200 when the backend is ready and the server is not draining, else 503
 *   GET  /metrics  Prometheus text format (metrics.h)
 * The /v1 routes need "Authorization: Bearer <key>" when an auth interface is
 * given (401 invalid_api_key otherwise). Errors are OpenAI error objects:
 * 400 malformed body (openai.h codes), 401 bad key, 404 unknown model /
 * profile / reward model / route, 405 wrong method, 413 body too large,
 * 503 draining or control plane down, 500 internal.
 * logprobs: completions {tokens, token_logprobs, top_logprobs, text_offset},
 * chat {content: [{token, logprob, bytes, top_logprobs}]}, streamed with the
 * chunk whose text the tokens released (the rest with the final chunk). The
 * values are log_softmax of the combined GenARM score (temperature 1).
 *
 * Generation runs behind gn_coord_backend (coord_backend.h). A client that
 * disconnects (mid-stream, or while a non-streamed request is generating)
 * gets its job cancelled.
 *
 * Thread-safety: create/free from one thread; the server's own threads do all
 * the rest. gn_coord_server_drain may be called from any thread (e.g. after
 * SIGTERM). */
#ifndef GN_HTTP_SERVER_H
#define GN_HTTP_SERVER_H

#include <stddef.h>

#include "coord_backend.h"
#include "gn_err.h"
#include "metrics.h"

typedef struct gn_coord_server_params {
    const char *bind_addr;   /* IPv4 address, default "127.0.0.1" */
    int port;                /* 0 = a free port (see gn_coord_server_port) */
    size_t max_body;         /* bytes, default 1 MiB (<= GN_OAI_BODY_MAX) */
    int default_max_tokens;  /* when neither request nor profile sets it, default 256 */
    int max_connections;     /* default 256 */
    gn_coord_backend backend;   /* required (copied) */
    const gn_coord_auth *auth;  /* NULL: no keys, tenant "anonymous", no profiles; borrowed */
    gn_coord_metrics *metrics;  /* NULL: the server creates its own; borrowed otherwise */
} gn_coord_server_params;

gn_coord_server_params gn_coord_server_default_params(void);

typedef struct gn_coord_server gn_coord_server;

/* Starts listening and serving. NULL with err on failure (bad params, bind). */
gn_coord_server *gn_coord_server_start(const gn_coord_server_params *p, gn_err *err);

/* The bound TCP port. */
int gn_coord_server_port(const gn_coord_server *s);

/* The metric set the server updates (its own or the one given). */
gn_coord_metrics *gn_coord_server_metrics(gn_coord_server *s);

/* Draining: /ready answers 503 and new generation requests get 503; running
 * ones go on. Returns the number of requests still in flight. */
int gn_coord_server_drain(gn_coord_server *s);

/* Number of generation requests in flight (submitted, done() not yet seen). */
int gn_coord_server_inflight(gn_coord_server *s);

/* Stops: closes the listening socket, cancels what is still running, waits for
 * every connection thread, frees. The backend must still be alive (done()
 * callbacks are awaited). NULL is a no-op. */
void gn_coord_server_stop(gn_coord_server *s);

#endif
