/* worker_metrics.c — the workers' metric set (see worker_metrics.h). */
#include "worker_metrics.h"

#include <stdio.h>

#include "gn_alloc.h"
#include "metrics_http.h"

struct gn_worker_metrics {
    gn_metrics *reg;
    gn_metrics_http *http;
    char worker[72];
    gn_metric *passes, *pass_seqs, *requests, *batch_requests, *bytes, *fetches, *gone, *gather;
};

gn_worker_metrics *gn_worker_metrics_create(const char *worker_id, gn_err *err) {
    gn_worker_metrics *m = gn_calloc(1, sizeof *m);
    if (!m) {
        gn_errf(err, GN_ENOMEM, "worker metrics: out of memory");
        return NULL;
    }
    snprintf(m->worker, sizeof m->worker, "%s", worker_id ? worker_id : "worker");
    static const double seqs[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
    static const double reqs[] = {1, 2, 3, 4, 6, 8, 12, 16, 32, 64};
    static const double wait[] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1};
    if (!(m->reg = gn_metrics_create(err)) ||
        !(m->passes = gn_metrics_add(m->reg, GN_METRIC_COUNTER, "genarm:worker_forward_passes_total",
                                     "Forward passes run.", "worker", NULL, 0, err)) ||
        !(m->pass_seqs = gn_metrics_add(m->reg, GN_METRIC_HISTOGRAM, "genarm:worker_pass_sequences",
                                        "Sequences per forward pass.", "worker", seqs, 10, err)) ||
        !(m->requests = gn_metrics_add(m->reg, GN_METRIC_COUNTER, "genarm:worker_step_requests_total",
                                       "StepRequests served.", "worker", NULL, 0, err)) ||
        !(m->batch_requests = gn_metrics_add(m->reg, GN_METRIC_HISTOGRAM, "genarm:worker_batch_requests",
                                             "StepRequests merged into one batch.", "worker", reqs, 10, err)) ||
        !(m->bytes = gn_metrics_add(m->reg, GN_METRIC_COUNTER, "genarm:worker_rows_bytes_sent_total",
                                    "Bytes of log-probs sent: dense rows, sparse candidates, fetched values.",
                                    "worker", NULL, 0, err)) ||
        !(m->fetches = gn_metrics_add(m->reg, GN_METRIC_COUNTER, "genarm:worker_fetches_total",
                                      "RowFetch requests served.", "worker", NULL, 0, err)) ||
        !(m->gone = gn_metrics_add(m->reg, GN_METRIC_COUNTER, "genarm:worker_rows_gone_total",
                                   "Fetched sequences whose row was no longer held (ROW_GONE).", "worker", NULL, 0,
                                   err)) ||
        !(m->gather = gn_metrics_add(m->reg, GN_METRIC_HISTOGRAM, "genarm:worker_gather_wait_seconds",
                                     "Time a batch waited for the peers of the previous batch.", "worker", wait, 11,
                                     err))) {
        gn_worker_metrics_free(m);
        return NULL;
    }
    /* Counters show 0 from the start (histograms appear with their first batch). */
    gn_metric_inc(m->passes, m->worker, 0);
    gn_metric_inc(m->requests, m->worker, 0);
    gn_metric_inc(m->bytes, m->worker, 0);
    gn_metric_inc(m->fetches, m->worker, 0);
    gn_metric_inc(m->gone, m->worker, 0);
    return m;
}

void gn_worker_metrics_free(gn_worker_metrics *m) {
    if (!m) return;
    gn_metrics_http_stop(m->http);
    gn_metrics_free(m->reg);
    gn_free(m);
}

int gn_worker_metrics_serve(gn_worker_metrics *m, const char *listen, gn_err *err) {
    if (m->http) return 0;
    m->http = gn_metrics_http_start(m->reg, listen, err);
    return m->http ? 0 : (err && err->code ? err->code : GN_EIO);
}

const char *gn_worker_metrics_address(const gn_worker_metrics *m) {
    return m->http ? gn_metrics_http_address(m->http) : "";
}

void gn_worker_metrics_batch(gn_worker_metrics *m, int n, gn_wire_step_resp *const *resps, const int *codes,
                             const int *pass_seqs, int n_passes, double gather_wait_s) {
    if (!m) return;
    double bytes = 0;
    for (int i = 0; i < n; i++) {
        if (codes[i]) continue;
        const gn_wire_step_resp *r = resps[i];
        bytes += (double)(r->logprobs ? r->logprobs->data.len : 0) + (double)r->cand_ids.len +
                 (double)r->cand_values.len;
    }
    gn_metric_inc(m->requests, m->worker, n);
    gn_metric_observe(m->batch_requests, m->worker, n);
    gn_metric_inc(m->bytes, m->worker, bytes);
    gn_metric_inc(m->passes, m->worker, n_passes);
    for (int p = 0; p < n_passes; p++) gn_metric_observe(m->pass_seqs, m->worker, pass_seqs[p]);
    gn_metric_observe(m->gather, m->worker, gather_wait_s);
}

void gn_worker_metrics_fetch(gn_worker_metrics *m, const Genarm__V1__RowFetchResult *res) {
    if (!m) return;
    gn_metric_inc(m->fetches, m->worker, 1);
    if (!res) return;
    double gone = 0;
    for (size_t i = 0; i < res->n_errors; i++) gone += res->errors[i]->code == GENARM__V1__ERROR_CODE__ERROR_ROW_GONE;
    gn_metric_inc(m->gone, m->worker, gone);
    gn_metric_inc(m->bytes, m->worker, (double)res->values.len);
}
