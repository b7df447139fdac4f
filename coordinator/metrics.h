/* metrics.h — the coordinator's metric set on a gn_metrics registry
 * (telemetry/gn_metrics.h). Names follow vLLM where vLLM has the metric
 * (vllm:time_to_first_token_seconds becomes genarm:time_to_first_token_seconds)
 * plus GenARM's own. */
#ifndef GN_COORD_METRICS_H
#define GN_COORD_METRICS_H

#include "gn_metrics.h"

typedef struct gn_coord_metrics {
    gn_metrics *reg;
    /* vLLM names (prefix genarm: instead of vllm:) */
    gn_metric *requests_running;        /* gauge num_requests_running */
    gn_metric *requests_waiting;        /* gauge num_requests_waiting */
    gn_metric *kv_cache_usage;          /* gauge kv_cache_usage_perc (0..1) */
    gn_metric *prompt_tokens;           /* counter prompt_tokens_total */
    gn_metric *generation_tokens;       /* counter generation_tokens_total */
    gn_metric *request_success;         /* counter request_success_total{finished_reason} */
    gn_metric *ttft;                    /* histogram time_to_first_token_seconds */
    gn_metric *itl;                     /* histogram inter_token_latency_seconds */
    gn_metric *tpot;                    /* histogram time_per_output_token_seconds */
    gn_metric *queue_time;              /* histogram request_queue_time_seconds */
    gn_metric *e2e_latency;             /* histogram e2e_request_latency_seconds */
    gn_metric *prompt_tokens_hist;      /* histogram request_prompt_tokens */
    gn_metric *generation_tokens_hist;  /* histogram request_generation_tokens */
    /* GenARM's own */
    gn_metric *http_requests;           /* counter http_requests_total{code} */
    gn_metric *step_exchange;           /* histogram step_exchange_seconds{worker} */
    gn_metric *arm_swap;                /* histogram arm_swap_duration_seconds */
    gn_metric *requests_waiting_for_arm;/* gauge requests_waiting_for_arm */
} gn_coord_metrics;

/* Creates a registry with every metric above. NULL with err on failure. */
gn_coord_metrics *gn_coord_metrics_create(gn_err *err);
void gn_coord_metrics_free(gn_coord_metrics *cm); /* NULL is a no-op */

#endif
