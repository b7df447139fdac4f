/* metrics.c — thread-safe Prometheus registry and text exposition (metrics.h). */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "gn_alloc.h"

typedef struct child {
    char *label_value;
    double value;                                   /* counter/gauge; histogram: sum */
    unsigned long long count;                       /* histogram */
    unsigned long long buckets[GN_METRICS_MAX_BUCKETS]; /* histogram, non-cumulative */
} child;

struct gn_metric {
    gn_metrics *reg;
    int type;
    char *name, *help, *label;
    double bounds[GN_METRICS_MAX_BUCKETS];
    int n_bounds;
    child children[GN_METRICS_MAX_CHILDREN];
    int n_children;
    unsigned long long overflow; /* updates dropped for too many label values */
    gn_metric *next;
};

struct gn_metrics {
    pthread_mutex_t mu;
    gn_metric *head, *tail;
};

gn_metrics *gn_metrics_create(gn_err *err) {
    gn_metrics *m = gn_calloc(1, sizeof *m);
    if (!m) {
        gn_errf(err, GN_ENOMEM, "metrics registry: out of memory");
        return NULL;
    }
    pthread_mutex_init(&m->mu, NULL);
    return m;
}

static void metric_free(gn_metric *f) {
    for (int i = 0; i < f->n_children; i++) gn_free(f->children[i].label_value);
    gn_free(f->name);
    gn_free(f->help);
    gn_free(f->label);
    gn_free(f);
}

void gn_metrics_free(gn_metrics *m) {
    if (!m) return;
    for (gn_metric *f = m->head, *n; f; f = n) {
        n = f->next;
        metric_free(f);
    }
    pthread_mutex_destroy(&m->mu);
    gn_free(m);
}

static int name_ok(const char *s, int allow_colon) {
    if (!s || !*s) return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                 (allow_colon && c == ':') || (p != s && c >= '0' && c <= '9');
        if (!ok) return 0;
    }
    return 1;
}

gn_metric *gn_metrics_add(gn_metrics *m, int type, const char *name, const char *help,
                          const char *label, const double *buckets, int n_buckets, gn_err *err) {
    if (!m || type < GN_METRIC_COUNTER || type > GN_METRIC_HISTOGRAM || !name_ok(name, 1) ||
        (label && (!name_ok(label, 0) || strcmp(label, "le") == 0))) {
        gn_errf(err, GN_EINVAL, "metric '%s': bad type, name or label", name ? name : "(null)");
        return NULL;
    }
    if (help && strchr(help, '\n')) {
        gn_errf(err, GN_EINVAL, "metric '%s': help must be one line", name);
        return NULL;
    }
    if (type == GN_METRIC_HISTOGRAM) {
        if (!buckets || n_buckets < 1 || n_buckets > GN_METRICS_MAX_BUCKETS) {
            gn_errf(err, GN_EINVAL, "metric '%s': 1..%d buckets required", name, GN_METRICS_MAX_BUCKETS);
            return NULL;
        }
        for (int i = 0; i < n_buckets; i++)
            if (!isfinite(buckets[i]) || (i && buckets[i] <= buckets[i - 1])) {
                gn_errf(err, GN_EINVAL, "metric '%s': buckets must be finite and increasing", name);
                return NULL;
            }
    }
    pthread_mutex_lock(&m->mu);
    for (gn_metric *f = m->head; f; f = f->next)
        if (strcmp(f->name, name) == 0) {
            pthread_mutex_unlock(&m->mu);
            gn_errf(err, GN_EINVAL, "metric '%s' registered twice", name);
            return NULL;
        }
    gn_metric *f = gn_calloc(1, sizeof *f);
    if (!f || !(f->name = gn_strdup(name)) || !(f->help = gn_strdup(help ? help : "")) ||
        (label && !(f->label = gn_strdup(label)))) {
        pthread_mutex_unlock(&m->mu);
        if (f) metric_free(f);
        gn_errf(err, GN_ENOMEM, "metric '%s': out of memory", name);
        return NULL;
    }
    f->reg = m;
    f->type = type;
    if (type == GN_METRIC_HISTOGRAM) {
        memcpy(f->bounds, buckets, (size_t)n_buckets * sizeof *buckets);
        f->n_bounds = n_buckets;
    }
    if (m->tail)
        m->tail->next = f;
    else
        m->head = f;
    m->tail = f;
    pthread_mutex_unlock(&m->mu);
    return f;
}

/* The child for label value lv (created on first use); NULL when the family
 * is full or allocation fails. Called with the lock held. */
static child *get_child(gn_metric *f, const char *lv, int create) {
    if (!f->label) lv = "";
    if (!lv) lv = "";
    for (int i = 0; i < f->n_children; i++)
        if (strcmp(f->children[i].label_value, lv) == 0) return &f->children[i];
    if (!create) return NULL;
    if (f->n_children == GN_METRICS_MAX_CHILDREN) {
        f->overflow++;
        return NULL;
    }
    child *c = &f->children[f->n_children];
    memset(c, 0, sizeof *c);
    if (!(c->label_value = gn_strdup(lv))) {
        f->overflow++;
        return NULL;
    }
    f->n_children++;
    return c;
}

void gn_metric_inc(gn_metric *f, const char *lv, double v) {
    if (!f || f->type == GN_METRIC_HISTOGRAM || !isfinite(v) ||
        (f->type == GN_METRIC_COUNTER && v < 0))
        return;
    pthread_mutex_lock(&f->reg->mu);
    child *c = get_child(f, lv, 1);
    if (c) c->value += v;
    pthread_mutex_unlock(&f->reg->mu);
}

void gn_metric_set(gn_metric *f, const char *lv, double v) {
    if (!f || f->type != GN_METRIC_GAUGE) return;
    pthread_mutex_lock(&f->reg->mu);
    child *c = get_child(f, lv, 1);
    if (c) c->value = v;
    pthread_mutex_unlock(&f->reg->mu);
}

void gn_metric_observe(gn_metric *f, const char *lv, double v) {
    if (!f || f->type != GN_METRIC_HISTOGRAM || isnan(v)) return;
    pthread_mutex_lock(&f->reg->mu);
    child *c = get_child(f, lv, 1);
    if (c) {
        c->count++;
        c->value += v;
        for (int i = 0; i < f->n_bounds; i++)
            if (v <= f->bounds[i]) {
                c->buckets[i]++;
                break;
            }
    }
    pthread_mutex_unlock(&f->reg->mu);
}

double gn_metric_value(gn_metric *f, const char *lv) {
    if (!f) return 0;
    pthread_mutex_lock(&f->reg->mu);
    child *c = get_child(f, lv, 0);
    double v = !c ? 0 : f->type == GN_METRIC_HISTOGRAM ? (double)c->count : c->value;
    pthread_mutex_unlock(&f->reg->mu);
    return v;
}

/* ---- exposition ---------------------------------------------------------- */

typedef struct buf {
    char *p;
    size_t len, cap;
    int oom;
} buf;

__attribute__((format(printf, 2, 3))) static void bprintf(buf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if (b->p && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + (size_t)n + 1) cap *= 2;
        char *q = gn_realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
}

/* Label values escape \, " and newline. */
static void put_escaped(buf *b, const char *s) {
    for (; *s; s++) {
        if (*s == '\\')
            bprintf(b, "\\\\");
        else if (*s == '"')
            bprintf(b, "\\\"");
        else if (*s == '\n')
            bprintf(b, "\\n");
        else
            bprintf(b, "%c", *s);
    }
}

static void put_num(buf *b, double v) {
    if (isinf(v))
        bprintf(b, v > 0 ? "+Inf" : "-Inf");
    else if (isnan(v))
        bprintf(b, "NaN");
    else
        bprintf(b, "%.17g", v);
}

/* name{label="lv"[,le="x"]} */
static void put_series(buf *b, const gn_metric *f, const char *suffix, const child *c,
                       const char *le) {
    bprintf(b, "%s%s", f->name, suffix);
    if (f->label || le) {
        bprintf(b, "{");
        if (f->label) {
            bprintf(b, "%s=\"", f->label);
            put_escaped(b, c->label_value);
            bprintf(b, "\"%s", le ? "," : "");
        }
        if (le) bprintf(b, "le=\"%s\"", le);
        bprintf(b, "}");
    }
    bprintf(b, " ");
}

int gn_metrics_render(gn_metrics *m, char **out, size_t *len, gn_err *err) {
    buf b = {0};
    static const char *const types[] = {"counter", "gauge", "histogram"};
    bprintf(&b, "%s", "");
    pthread_mutex_lock(&m->mu);
    for (gn_metric *f = m->head; f; f = f->next) {
        bprintf(&b, "# HELP %s ", f->name);
        for (const char *h = f->help; *h; h++) bprintf(&b, *h == '\\' ? "\\\\" : "%c", *h);
        bprintf(&b, "\n# TYPE %s %s\n", f->name, types[f->type]);
        /* A family without labels shows 0 before its first update. */
        child zero = {.label_value = ""};
        int n = f->n_children;
        const child *cs = f->children;
        if (n == 0 && !f->label) {
            cs = &zero;
            n = 1;
        }
        for (int i = 0; i < n; i++) {
            const child *c = &cs[i];
            if (f->type != GN_METRIC_HISTOGRAM) {
                put_series(&b, f, "", c, NULL);
                put_num(&b, c->value);
                bprintf(&b, "\n");
                continue;
            }
            unsigned long long cum = 0;
            for (int k = 0; k < f->n_bounds; k++) {
                char le[40];
                cum += c->buckets[k];
                snprintf(le, sizeof le, "%.17g", f->bounds[k]);
                put_series(&b, f, "_bucket", c, le);
                bprintf(&b, "%llu\n", cum);
            }
            put_series(&b, f, "_bucket", c, "+Inf");
            bprintf(&b, "%llu\n", c->count);
            put_series(&b, f, "_sum", c, NULL);
            put_num(&b, c->value);
            bprintf(&b, "\n");
            put_series(&b, f, "_count", c, NULL);
            bprintf(&b, "%llu\n", c->count);
        }
    }
    pthread_mutex_unlock(&m->mu);
    if (b.oom) {
        gn_free(b.p);
        return gn_errf(err, GN_ENOMEM, "metrics: out of memory while rendering");
    }
    *out = b.p;
    if (len) *len = b.len;
    return 0;
}

/* ---- the coordinator's set -------------------------------------------------- */

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
