/* gn_metrics.c — thread-safe Prometheus registry and text exposition (gn_metrics.h). */
#include "gn_metrics.h"

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
