/* arm_pin.c — the control thread's snapshot of ARM versions and the workers
 * that hold them, parking, swap reports (arm_pin.h). */
#include "arm_pin.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "gn_alloc.h"
#include "wire.h" /* gn_wire_log */

#define MAX_NAMES 256 /* ARM names whose current version the snapshot follows */
#define MAX_OPS 256   /* park / unpark operations waiting for the control thread */
#define COMP "coordinator"

typedef struct holder {
    char ref[GN_CTL_REF_MAX];           /* name@version */
    char endpoint[GN_CTL_PATH_MAX];
    double load;                        /* load / capacity */
} holder;

typedef struct snapshot {
    holder *h;  /* one entry per (worker, ARM version) held */
    size_t n;
    double taken_at; /* when the refresh that made it started; 0 = none yet */
} snapshot;

typedef struct op {
    int park; /* 1 park, 0 take back */
    char name[GN_CTL_ID_MAX];
    char version[GN_CTL_ID_MAX];
    uint64_t job_id;
} op;

struct gn_arm_pin {
    gn_arm_pin_params p;
    char coord_id[GN_CTL_ID_MAX];
    char local_host[256];
    gn_ctl *ctl; /* the control thread's connection */
    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int quit, kicked;
    snapshot snap;                                  /* under mu */
    char names[MAX_NAMES][GN_CTL_ID_MAX];           /* under mu: ARMs followed */
    char current[MAX_NAMES][GN_CTL_ID_MAX];         /* under mu: their current version, "" unknown */
    int n_names;
    op ops[MAX_OPS];                                /* under mu */
    int n_ops;
    /* control thread only */
    char swap_after[GN_CTL_STREAM_ID_MAX];
    double next_slow; /* swap reports and parked tokens: about once a second */
    int parked_any;   /* parked something: tokens may come back on the stream */
    double parked_last;
    int queue_ready;
    int failing; /* registry reads failed in a row (logged once) */
};

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

gn_arm_pin_params gn_arm_pin_default_params(void) {
    gn_arm_pin_params p;
    memset(&p, 0, sizeof p);
    p.redis_timeout_ms = 2000;
    p.refresh_ms = 100;
    return p;
}

/* ---- the control thread ------------------------------------------------------ */

/* The endpoint to reach w by: its ipc:// endpoint when it is on this host. */
static const char *reach(const gn_arm_pin *a, const gn_ctl_worker *w) {
    if (a->local_host[0] && w->ipc[0] && strcmp(w->host, a->local_host) == 0) return w->ipc;
    return w->endpoint;
}

/* Reads the worker registry and the followed ARMs' current versions into a
 * new snapshot. Redis errors keep the previous snapshot (logged once per
 * failure streak). */
static void refresh(gn_arm_pin *a) {
    double t = mono_s();
    gn_err e = {0};
    gn_ctl_worker *ws = NULL;
    size_t nw = 0;
    if (gn_ctl_worker_list(a->ctl, &ws, &nw, &e) != 0) {
        if (!a->failing++) gn_wire_log("warn", COMP, "event=registry_read_failed msg=\"%s\"", e.msg);
        return;
    }
    if (a->failing) gn_wire_log("info", COMP, "event=registry_read_ok after_failures=%d", a->failing);
    a->failing = 0;
    size_t nh = 0;
    for (size_t i = 0; i < nw; i++)
        if (ws[i].kind == GN_CTL_WORKER_REWARD) nh += (size_t)ws[i].n_arms;
    holder *h = gn_calloc(nh ? nh : 1, sizeof *h);
    if (!h) {
        gn_free(ws);
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < nw; i++) {
        if (ws[i].kind != GN_CTL_WORKER_REWARD) continue;
        double load = ws[i].capacity > 0 ? (double)ws[i].load / ws[i].capacity : (double)ws[i].load;
        for (int j = 0; j < ws[i].n_arms; j++, k++) {
            snprintf(h[k].ref, sizeof h[k].ref, "%s", ws[i].arms[j]);
            snprintf(h[k].endpoint, sizeof h[k].endpoint, "%s", reach(a, &ws[i]));
            h[k].load = load;
        }
    }
    gn_free(ws);
    /* the followed ARMs' current versions */
    pthread_mutex_lock(&a->mu);
    int nn = a->n_names;
    char (*names)[GN_CTL_ID_MAX] = gn_malloc((size_t)(nn ? nn : 1) * sizeof *names);
    if (names) memcpy(names, a->names, (size_t)nn * sizeof *names);
    pthread_mutex_unlock(&a->mu);
    if (!names) {
        gn_free(h);
        return;
    }
    char (*cur)[GN_CTL_ID_MAX] = gn_calloc((size_t)(nn ? nn : 1), sizeof *cur);
    for (int i = 0; cur && i < nn; i++) {
        gn_ctl_arm_version v;
        if (gn_ctl_arm_get(a->ctl, names[i], NULL, &v, &e) == 0) snprintf(cur[i], GN_CTL_ID_MAX, "%s", v.version);
    }
    pthread_mutex_lock(&a->mu);
    gn_free(a->snap.h);
    a->snap.h = h;
    a->snap.n = k;
    a->snap.taken_at = t;
    for (int i = 0; cur && i < nn; i++)
        if (cur[i][0]) snprintf(a->current[i], GN_CTL_ID_MAX, "%s", cur[i]); /* names are only ever appended */
    pthread_mutex_unlock(&a->mu);
    gn_free(names);
    gn_free(cur);
}

static void run_ops(gn_arm_pin *a) {
    op ops[MAX_OPS];
    pthread_mutex_lock(&a->mu);
    int n = a->n_ops;
    memcpy(ops, a->ops, (size_t)n * sizeof *ops);
    a->n_ops = 0;
    pthread_mutex_unlock(&a->mu);
    for (int i = 0; i < n; i++) {
        gn_err e = {0};
        if (ops[i].park) {
            char payload[256];
            int len = snprintf(payload, sizeof payload, "{\"coordinator\":\"%s\",\"job\":%llu,\"parked\":true}",
                               a->coord_id, (unsigned long long)ops[i].job_id);
            if (gn_ctl_wait_push(a->ctl, ops[i].name, ops[i].version, payload, (size_t)len, &e) == 0) {
                a->parked_any = 1;
                a->parked_last = mono_s();
            } else {
                gn_wire_log("warn", COMP, "event=park_failed arm=%s@%s msg=\"%s\"", ops[i].name, ops[i].version,
                            e.msg);
            }
        } else {
            gn_ctl_wait_release(a->ctl, ops[i].name, ops[i].version, &e);
            a->parked_last = mono_s();
        }
    }
}

/* A parked request comes back onto the request stream (genarm:requests) when
 * a reward worker has loaded its ARM (gn_ctl_wait_release). This coordinator
 * follows the worker registry instead, so those entries are only tokens:
 * acknowledge them so that the stream (and its depth metric) does not grow. */
static void ack_parked(gn_arm_pin *a) {
    if (!a->p.ack_parked || !a->parked_any) return;
    gn_err e = {0};
    if (!a->queue_ready) {
        if (gn_ctl_queue_init(a->ctl, &e)) return;
        a->queue_ready = 1;
    }
    int got = 0;
    for (int i = 0; i < 64; i++) {
        gn_ctl_msg m;
        memset(&m, 0, sizeof m);
        if (gn_ctl_queue_read(a->ctl, a->coord_id, 0, &m, &e) != 1) break;
        got++;
        if (m.payload && strstr(m.payload, "\"parked\":true"))
            gn_ctl_queue_ack(a->ctl, m.id, &e);
        else
            gn_wire_log("warn", COMP, "event=queue_entry_ignored id=%s", m.id);
        gn_ctl_msg_clear(&m);
    }
    if (!got && mono_s() - a->parked_last > 5.0) a->parked_any = 0; /* nothing came back for a while */
}

static void swap_reports(gn_arm_pin *a) {
    if (!a->p.metrics) return;
    gn_err e = {0};
    for (int i = 0; i < 64; i++) {
        gn_ctl_swap_report r;
        int rc = gn_ctl_swap_report_next(a->ctl, a->swap_after, &r, &e);
        if (r.id[0]) snprintf(a->swap_after, sizeof a->swap_after, "%s", r.id); /* a bad one is skipped */
        if (rc == 1) gn_metric_observe(a->p.metrics->arm_swap, NULL, (double)r.swap_ms / 1000.0);
        if (rc <= 0 && !(rc < 0 && r.id[0])) break;
    }
}

static void *control_main(void *arg) {
    gn_arm_pin *a = arg;
    for (;;) {
        pthread_mutex_lock(&a->mu);
        if (!a->quit && !a->kicked && !a->n_ops) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            long ns = ts.tv_nsec + (long)a->p.refresh_ms * 1000000L;
            ts.tv_sec += ns / 1000000000L;
            ts.tv_nsec = ns % 1000000000L;
            pthread_cond_timedwait(&a->cv, &a->mu, &ts);
        }
        int quit = a->quit;
        a->kicked = 0;
        pthread_mutex_unlock(&a->mu);
        run_ops(a); /* also on the way out: tokens taken back are not left parked */
        if (quit) break;
        refresh(a);
        double t = mono_s();
        if (t >= a->next_slow) {
            a->next_slow = t + 1.0;
            swap_reports(a);
            ack_parked(a);
        }
    }
    return NULL;
}

/* ---- the scheduler's side ------------------------------------------------------ */

gn_arm_pin *gn_arm_pin_create(const gn_arm_pin_params *p, gn_err *err) {
    if (!p || !p->redis_host) {
        gn_errf(err, GN_EINVAL, "arm_pin: redis required");
        return NULL;
    }
    gn_arm_pin *a = gn_calloc(1, sizeof *a);
    if (!a) {
        gn_errf(err, GN_ENOMEM, "arm_pin: out of memory");
        return NULL;
    }
    a->p = *p;
    if (a->p.refresh_ms <= 0) a->p.refresh_ms = 100;
    if (a->p.redis_timeout_ms <= 0) a->p.redis_timeout_ms = 2000;
    snprintf(a->coord_id, sizeof a->coord_id, "%s", p->coordinator_id ? p->coordinator_id : "coord");
    snprintf(a->local_host, sizeof a->local_host, "%s", p->local_host ? p->local_host : "");
    a->p.coordinator_id = a->coord_id;
    a->p.local_host = a->local_host;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    { /* swap reports from now on */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        snprintf(a->swap_after, sizeof a->swap_after, "%lld-0",
                 (long long)ts.tv_sec * 1000 + (long long)(ts.tv_nsec / 1000000));
    }
    if (!(a->ctl = gn_ctl_connect(p->redis_host, p->redis_port, a->p.redis_timeout_ms, err))) goto fail;
    refresh(a); /* a first snapshot before any job asks */
    if (pthread_create(&a->thread, NULL, control_main, a)) {
        gn_errf(err, GN_EIO, "arm_pin: cannot start the control thread");
        goto fail;
    }
    a->started = 1;
    return a;
fail:
    gn_arm_pin_free(a);
    return NULL;
}

void gn_arm_pin_free(gn_arm_pin *a) {
    if (!a) return;
    if (a->started) {
        pthread_mutex_lock(&a->mu);
        a->quit = 1;
        pthread_cond_signal(&a->cv);
        pthread_mutex_unlock(&a->mu);
        pthread_join(a->thread, NULL);
    }
    gn_ctl_free(a->ctl);
    gn_free(a->snap.h);
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->mu);
    gn_free(a);
}

int gn_arm_pin_find(gn_arm_pin *a, const char *name, const char *version,
                    char endpoints[][GN_CTL_PATH_MAX], int max, double *taken_at) {
    char ref[GN_CTL_REF_MAX];
    snprintf(ref, sizeof ref, "%s@%s", name, version);
    if (max > GN_ARM_PIN_MAX_CANDIDATES) max = GN_ARM_PIN_MAX_CANDIDATES;
    holder best[GN_ARM_PIN_MAX_CANDIDATES];
    int n = 0, total = 0;
    pthread_mutex_lock(&a->mu);
    if (taken_at) *taken_at = a->snap.taken_at;
    for (size_t i = 0; i < a->snap.n; i++) {
        const holder *h = &a->snap.h[i];
        if (strcmp(h->ref, ref) != 0) continue;
        total++;
        int pos = n < max ? n++ : max; /* insertion by load, lowest first */
        while (pos > 0 && h->load < best[pos - 1].load) {
            if (pos < max) best[pos] = best[pos - 1];
            pos--;
        }
        if (pos < max) best[pos] = *h;
    }
    pthread_mutex_unlock(&a->mu);
    for (int i = 0; i < n; i++) snprintf(endpoints[i], GN_CTL_PATH_MAX, "%s", best[i].endpoint);
    return total;
}

int gn_arm_pin_current(gn_arm_pin *a, const char *name, char *version, double *taken_at) {
    int found = 0;
    version[0] = 0;
    pthread_mutex_lock(&a->mu);
    if (taken_at) *taken_at = a->snap.taken_at;
    int i = 0;
    for (; i < a->n_names; i++)
        if (strcmp(a->names[i], name) == 0) break;
    if (i < a->n_names && a->current[i][0]) {
        snprintf(version, GN_CTL_ID_MAX, "%s", a->current[i]);
        found = 1;
    } else if (i == a->n_names && a->n_names < MAX_NAMES) {
        snprintf(a->names[a->n_names], GN_CTL_ID_MAX, "%s", name);
        a->current[a->n_names++][0] = 0;
        a->kicked = 1;
        pthread_cond_signal(&a->cv);
    }
    pthread_mutex_unlock(&a->mu);
    return found;
}

static void push_op(gn_arm_pin *a, int park, const char *name, const char *version, uint64_t job_id) {
    pthread_mutex_lock(&a->mu);
    if (a->n_ops < MAX_OPS) {
        op *o = &a->ops[a->n_ops++];
        o->park = park;
        snprintf(o->name, sizeof o->name, "%s", name);
        snprintf(o->version, sizeof o->version, "%s", version);
        o->job_id = job_id;
        pthread_cond_signal(&a->cv);
    } else {
        gn_wire_log("warn", COMP, "event=park_dropped arm=%s@%s reason=queue_full", name, version);
    }
    pthread_mutex_unlock(&a->mu);
}

void gn_arm_pin_park(gn_arm_pin *a, const char *name, const char *version, uint64_t job_id) {
    push_op(a, 1, name, version, job_id);
}

void gn_arm_pin_unpark(gn_arm_pin *a, const char *name, const char *version) { push_op(a, 0, name, version, 0); }

void gn_arm_pin_kick(gn_arm_pin *a) {
    pthread_mutex_lock(&a->mu);
    a->kicked = 1;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
}
