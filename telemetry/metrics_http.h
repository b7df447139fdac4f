/* metrics_http.h — a tiny HTTP server for a process that has no HTTP front of
 * its own (the workers): GET /metrics answers the Prometheus text of a
 * gn_metrics registry, GET /health answers "ok". Anything else is 404 (405
 * for a method other than GET/HEAD).
 *
 * It runs on its own thread (libmicrohttpd's internal polling thread), so a
 * worker busy in a long forward pass still answers scrapes; rendering takes
 * the registry's own lock for a moment.
 *
 * Thread-safety: start/stop from one thread; the registry may be updated from
 * any thread while it serves. */
#ifndef GN_METRICS_HTTP_H
#define GN_METRICS_HTTP_H

#include "gn_err.h"
#include "gn_metrics.h"

typedef struct gn_metrics_http gn_metrics_http;

/* Starts serving m (borrowed: must outlive the server) on listen, "HOST:PORT"
 * with HOST an IPv4 address (or "localhost" = 127.0.0.1) and PORT 0 for any
 * free port; NULL or "" = "127.0.0.1:0". NULL with err (GN_EINVAL for a bad
 * address, GN_EIO when it cannot listen). */
gn_metrics_http *gn_metrics_http_start(gn_metrics *m, const char *listen, gn_err *err);

/* The port actually bound. */
int gn_metrics_http_port(const gn_metrics_http *s);

/* "HOST:PORT" actually bound (e.g. "127.0.0.1:40231"), for logs. */
const char *gn_metrics_http_address(const gn_metrics_http *s);

/* Stops the thread, closes the socket, frees s (NULL is a no-op). */
void gn_metrics_http_stop(gn_metrics_http *s);

#endif
