/* worker_metrics.h — the metric set both workers export on GET /metrics
 * (telemetry/metrics_http.h), every family labelled worker=<worker id>:
 *
 *   genarm:worker_forward_passes_total     counter    forward passes run
 *   genarm:worker_pass_sequences           histogram  sequences per forward pass
 *   genarm:worker_step_requests_total      counter    StepRequests served
 *   genarm:worker_batch_requests           histogram  StepRequests merged into one batch
 *   genarm:worker_rows_bytes_sent_total    counter    bytes of log-probs sent (dense tensors and sparse
 *                                                     candidates of step replies, fetched values)
 *   genarm:worker_fetches_total            counter    RowFetch requests served
 *   genarm:worker_rows_gone_total          counter    fetched sequences answered ERROR_ROW_GONE
 *   genarm:worker_gather_wait_seconds      histogram  time a batch waited for expected peers
 *
 * Thread-safety: updates from the compute thread, scrapes from the HTTP
 * thread (the registry locks). */
#ifndef GN_WORKER_METRICS_H
#define GN_WORKER_METRICS_H

#include "gn_err.h"
#include "gn_metrics.h"
#include "wire.h"

typedef struct gn_worker_metrics gn_worker_metrics;

/* A registry with the families above for worker worker_id. NULL with err. */
gn_worker_metrics *gn_worker_metrics_create(const char *worker_id, gn_err *err);
void gn_worker_metrics_free(gn_worker_metrics *m); /* NULL is a no-op; stops serving first */

/* Serves the registry on listen ("HOST:PORT", port 0 = any). 0, or a
 * negative GN_E* code with err. */
int gn_worker_metrics_serve(gn_worker_metrics *m, const char *listen, gn_err *err);
/* "HOST:PORT" being served, or "" when not serving. */
const char *gn_worker_metrics_address(const gn_worker_metrics *m);

/* One batch of n StepRequests has been answered (codes[i] != 0: request i
 * failed as a whole): its forward passes (each pass's sequences in
 * pass_seqs[0 .. n_passes)) and the gather wait before it. */
void gn_worker_metrics_batch(gn_worker_metrics *m, int n, gn_wire_step_resp *const *resps, const int *codes,
                             const int *pass_seqs, int n_passes, double gather_wait_s);

/* A RowFetch has been answered (res NULL when it failed as a whole). */
void gn_worker_metrics_fetch(gn_worker_metrics *m, const Genarm__V1__RowFetchResult *res);

#endif
