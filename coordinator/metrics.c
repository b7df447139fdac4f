/* metrics.c — the coordinator's metric set (metrics.h). */
#include "metrics.h"

#include "gn_alloc.h"

static const double lat_buckets[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                     0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
static const double itl_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15,
                                     0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0};
static const double step_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                      0.05, 0.1, 0.25, 0.5, 1.0, 2.5};
static const double swap_buckets[] = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
static const double tok_buckets[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000,
                                     20000, 50000, 100000};

#define NB(a) (int)(sizeof(a) / sizeof *(a))

gn_coord_metrics *gn_coord_metrics_create(gn_err *err) {
    gn_coord_metrics *cm = gn_calloc(1, sizeof *cm);
    if (!cm) {
        gn_errf(err, GN_ENOMEM, "metrics: out of memory");
        return NULL;
    }
    if (!(cm->reg = gn_metrics_create(err))) {
        gn_free(cm);
        return NULL;
    }
    gn_metrics *r = cm->reg;
    struct {
        gn_metric **slot;
        int type;
        const char *name, *help, *label;
        const double *b;
        int nb;
    } defs[] = {
        {&cm->requests_running, GN_METRIC_GAUGE, "genarm:num_requests_running",
         "Number of requests generating (in the running batch).", NULL, NULL, 0},
        {&cm->requests_waiting, GN_METRIC_GAUGE, "genarm:num_requests_waiting",
         "Number of requests accepted and waiting to be scheduled.", NULL, NULL, 0},
        {&cm->kv_cache_usage, GN_METRIC_GAUGE, "genarm:kv_cache_usage_perc",
         "KV-cache usage of the base worker (1 = full), sampled every second.", NULL, NULL, 0},
        {&cm->prompt_tokens, GN_METRIC_COUNTER, "genarm:prompt_tokens_total",
         "Prefill tokens processed (base model).", NULL, NULL, 0},
        {&cm->generation_tokens, GN_METRIC_COUNTER, "genarm:generation_tokens_total",
         "Generated tokens.", NULL, NULL, 0},
        {&cm->request_success, GN_METRIC_COUNTER, "genarm:request_success_total",
         "Finished requests by finish reason (stop, length, abort).", "finished_reason", NULL, 0},
        {&cm->ttft, GN_METRIC_HISTOGRAM, "genarm:time_to_first_token_seconds",
         "Time from request arrival to its first generated text.", NULL, lat_buckets, NB(lat_buckets)},
        {&cm->itl, GN_METRIC_HISTOGRAM, "genarm:inter_token_latency_seconds",
         "Time between consecutive streamed pieces of one request.", NULL, itl_buckets, NB(itl_buckets)},
        {&cm->tpot, GN_METRIC_HISTOGRAM, "genarm:time_per_output_token_seconds",
         "Mean time per output token after the first, per request.", NULL, itl_buckets, NB(itl_buckets)},
        {&cm->queue_time, GN_METRIC_HISTOGRAM, "genarm:request_queue_time_seconds",
         "Time a request waited before generation started.", NULL, lat_buckets, NB(lat_buckets)},
        {&cm->e2e_latency, GN_METRIC_HISTOGRAM, "genarm:e2e_request_latency_seconds",
         "Time from request arrival to its last token.", NULL, lat_buckets, NB(lat_buckets)},
        {&cm->prompt_tokens_hist, GN_METRIC_HISTOGRAM, "genarm:request_prompt_tokens",
         "Prompt length of finished requests, in tokens.", NULL, tok_buckets, NB(tok_buckets)},
        {&cm->generation_tokens_hist, GN_METRIC_HISTOGRAM, "genarm:request_generation_tokens",
         "Generated length of finished requests, in tokens.", NULL, tok_buckets, NB(tok_buckets)},
        {&cm->http_requests, GN_METRIC_COUNTER, "genarm:http_requests_total",
         "HTTP requests answered, by status code.", "code", NULL, 0},
        {&cm->step_exchange, GN_METRIC_HISTOGRAM, "genarm:step_exchange_seconds",
         "Round trip of one batched step request to a worker (send to last reply).", "worker",
         step_buckets, NB(step_buckets)},
        {&cm->arm_swap, GN_METRIC_HISTOGRAM, "genarm:arm_swap_duration_seconds",
         "Time from an ARM promotion to the new version serving.", NULL, swap_buckets, NB(swap_buckets)},
        {&cm->requests_waiting_for_arm, GN_METRIC_GAUGE, "genarm:requests_waiting_for_arm",
         "Requests parked until a reward worker loads their ARM.", NULL, NULL, 0},
    };
    for (size_t i = 0; i < sizeof defs / sizeof *defs; i++) {
        *defs[i].slot = gn_metrics_add(r, defs[i].type, defs[i].name, defs[i].help, defs[i].label,
                                       defs[i].b, defs[i].nb, err);
        if (!*defs[i].slot) {
            gn_coord_metrics_free(cm);
            return NULL;
        }
    }
    return cm;
}

void gn_coord_metrics_free(gn_coord_metrics *cm) {
    if (!cm) return;
    gn_metrics_free(cm->reg);
    gn_free(cm);
}
