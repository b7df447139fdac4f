/* gn_metrics.h — a small thread-safe Prometheus registry: counters, gauges and
 * histograms with fixed buckets, each family with at most one label, rendered
 * in the text exposition format (version 0.0.4) for GET /metrics.
 *
 * Every process of the service keeps one registry: the coordinator's metric
 * set is coordinator/metrics.h, the workers' is in their programs; each is
 * served on GET /metrics (the coordinator's HTTP front, or metrics_http.h).
 *
 * Thread-safety: every function may be called from any thread; one mutex per
 * registry guards all values (updates are a few nanoseconds of work). */
#ifndef GN_METRICS_H
#define GN_METRICS_H

#include <stddef.h>

#include "gn_err.h"

enum { GN_METRIC_COUNTER = 0, GN_METRIC_GAUGE = 1, GN_METRIC_HISTOGRAM = 2 };

#define GN_METRICS_MAX_BUCKETS 32
#define GN_METRICS_MAX_CHILDREN 64 /* distinct label values per family */

typedef struct gn_metrics gn_metrics;
typedef struct gn_metric gn_metric; /* one family, owned by its registry */

gn_metrics *gn_metrics_create(gn_err *err);
void gn_metrics_free(gn_metrics *m); /* NULL is a no-op; frees every family */

/* Adds a family. name: [a-zA-Z_:][a-zA-Z0-9_:]*; help: one line; label: a label
 * name or NULL for none. Histograms take n_buckets (1..GN_METRICS_MAX_BUCKETS)
 * strictly increasing finite upper bounds (+Inf is implicit). Returns the
 * family (owned by the registry) or NULL with err (bad name, duplicate,
 * bad buckets, GN_ENOMEM). */
gn_metric *gn_metrics_add(gn_metrics *m, int type, const char *name, const char *help,
                          const char *label, const double *buckets, int n_buckets, gn_err *err);

/* Updates. label_value: the value of the family's label (ignored / may be NULL
 * when it has none; NULL counts as ""). A family holds at most
 * GN_METRICS_MAX_CHILDREN label values; later new values are dropped and
 * counted in the family's overflow (never an error on the hot path). m may be
 * NULL (no-op), so optional metrics need no checks at call sites. */
void gn_metric_inc(gn_metric *m, const char *label_value, double v);     /* counter/gauge += v (v >= 0 for counters) */
void gn_metric_set(gn_metric *m, const char *label_value, double v);     /* gauge = v */
void gn_metric_observe(gn_metric *m, const char *label_value, double v); /* histogram */

/* Current value of a counter/gauge, or a histogram's count; 0 when the label
 * value was never seen. For tests and /ready decisions. */
double gn_metric_value(gn_metric *m, const char *label_value);

/* Renders every family (in creation order) in the text format. *out is
 * gn_malloc'd and NUL-terminated (*len bytes). */
int gn_metrics_render(gn_metrics *m, char **out, size_t *len, gn_err *err);

#endif
