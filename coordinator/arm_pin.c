/* arm_pin.c — the control thread's snapshot of ARM versions and the workers
 * that hold them, parking, swap reports (arm_pin.h). */
#include "arm_pin.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "gn_alloc.h"
#include "gn_time.h"
#include "wire.h" /* gn_wire_log */

#define MAX_NAMES 256   /* ARM names whose current version the snapshot follows */
#define MAX_TOKENS 1024  /* parked requests (job, ARM) at once */
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

/* A job's request parked on an ARM's waiting list. The scheduler says what
 * it wants (want); the control thread makes the list agree (on_list), and
 * retries a Redis failure at the next refresh. An entry leaves the table once
 * it is neither wanted nor on the list. */
typedef struct token {
    char name[GN_CTL_ID_MAX];
    char version[GN_CTL_ID_MAX];
    uint64_t job_id;
    int want, on_list;
} token;

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
    double asked[MAX_NAMES];                        /* under mu: when a job last asked about it */
    int n_names;
    token tokens[MAX_TOKENS];                       /* under mu */
    int n_tokens, tokens_wake;                      /* under mu: wake = the scheduler changed one */
    double parked_last;                             /* under mu: a token changed */
    /* control thread only */
    char swap_after[GN_CTL_STREAM_ID_MAX];
    double next_slow; /* swap reports and parked tokens: about once a second */
    int queue_ready;
    int park_failing; /* the last sync_tokens had failures (logged once) */
    int failing; /* registry reads failed in a row (logged once) */
};

gn_arm_pin_params gn_arm_pin_default_params(void) {
    gn_arm_pin_params p;
    memset(&p, 0, sizeof p);
    p.redis_timeout_ms = 2000;
    p.refresh_ms = 100;
    p.forget_s = 60;
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
    double t = gn_mono_s();
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
    /* the followed ARMs' current versions; names no job asked about for a
     * while are dropped first (only this thread removes names, so the indices
     * stay valid until the results are written back below) */
    pthread_mutex_lock(&a->mu);
    int kept = 0;
    for (int i = 0; i < a->n_names; i++)
        if (t - a->asked[i] < a->p.forget_s) {
            if (kept != i) {
                memcpy(a->names[kept], a->names[i], sizeof a->names[i]);
                memcpy(a->current[kept], a->current[i], sizeof a->current[i]);
                a->asked[kept] = a->asked[i];
            }
            kept++;
        }
    a->n_names = kept;
    int nn = a->n_names;
    char (*names)[GN_CTL_ID_MAX] = gn_malloc((size_t)(nn ? nn : 1) * sizeof *names);
    if (names) memcpy(names, a->names, (size_t)nn * sizeof *names);
    pthread_mutex_unlock(&a->mu);
    if (!names) {
        gn_free(h);
        return;
    }
    char (*cur)[GN_CTL_ID_MAX] = gn_calloc((size_t)(nn ? nn : 1), sizeof *cur);
    for (int i = 0; cur && i < nn; i++) gn_ctl_arm_current(a->ctl, names[i], cur[i], &e);
    pthread_mutex_lock(&a->mu);
    gn_free(a->snap.h);
    a->snap.h = h;
    a->snap.n = k;
    a->snap.taken_at = t;
    for (int i = 0; cur && i < nn; i++)
        if (cur[i][0]) snprintf(a->current[i], GN_CTL_ID_MAX, "%s", cur[i]);
    pthread_mutex_unlock(&a->mu);
    gn_free(names);
    gn_free(cur);
}

static int token_payload(const gn_arm_pin *a, uint64_t job_id, char *buf, size_t cap) {
    return snprintf(buf, cap, "{\"coordinator\":\"%s\",\"job\":%llu,\"parked\":true}", a->coord_id,
                    (unsigned long long)job_id);
}

static token *token_find(gn_arm_pin *a, const char *name, const char *version, uint64_t job_id) {
    for (int i = 0; i < a->n_tokens; i++) {
        token *t = &a->tokens[i];
        if (t->job_id == job_id && !strcmp(t->name, name) && !strcmp(t->version, version)) return t;
    }
    return NULL;
}

/* Forgets the tokens neither wanted nor on a list (under mu). */
static void drop_settled(gn_arm_pin *a) {
    int kept = 0;
    for (int i = 0; i < a->n_tokens; i++) {
        if (!a->tokens[i].want && !a->tokens[i].on_list) {
            a->parked_last = gn_mono_s(); /* its token may still come back on the stream */
            continue;
        }
        if (kept != i) a->tokens[kept] = a->tokens[i];
        kept++;
    }
    a->n_tokens = kept;
}

/* Makes the waiting lists agree with what the scheduler wants: pushes the
 * wanted tokens not on their list yet, takes back (only this job's entry)
 * the ones no longer wanted. Redis I/O without the lock, on a copy; a
 * failure leaves the entry as it was, to be tried again at the next refresh. */
static void sync_tokens(gn_arm_pin *a) {
    pthread_mutex_lock(&a->mu);
    int n = 0;
    for (int i = 0; i < a->n_tokens && !n; i++)
        if (a->tokens[i].want != a->tokens[i].on_list) n = a->n_tokens;
    token *work = n ? gn_malloc((size_t)n * sizeof *work) : NULL;
    if (work) memcpy(work, a->tokens, (size_t)n * sizeof *work);
    a->tokens_wake = 0;
    if (!work) /* nothing to push or take back (or out of memory: the next refresh tries again) */
        drop_settled(a);
    pthread_mutex_unlock(&a->mu);
    if (!work)
        return;
    int failed = 0;
    for (int i = 0; i < n; i++) {
        token *t = &work[i];
        if (t->want == t->on_list) continue;
        char payload[256];
        int len = token_payload(a, t->job_id, payload, sizeof payload);
        gn_err e = {0};
        if (t->want ? gn_ctl_wait_push(a->ctl, t->name, t->version, payload, (size_t)len, &e) == 0
                    : gn_ctl_wait_cancel(a->ctl, t->name, t->version, payload, (size_t)len, &e) >= 0) {
            t->on_list = t->want;
        } else if (!failed++ && !a->park_failing) { /* once per failure streak */
            gn_wire_log("warn", COMP, "event=%s arm=%s@%s job=%llu msg=\"%s\" retry=next_refresh",
                        t->want ? "park_failed" : "unpark_failed", t->name, t->version,
                        (unsigned long long)t->job_id, e.msg);
        }
    }
    pthread_mutex_lock(&a->mu);
    for (int i = 0; i < n; i++) {
        token *t = token_find(a, work[i].name, work[i].version, work[i].job_id);
        if (t) t->on_list = work[i].on_list;
    }
    drop_settled(a);
    a->parked_last = gn_mono_s();
    pthread_mutex_unlock(&a->mu);
    gn_free(work);
    a->park_failing = failed;
}

/* A parked request comes back onto the request stream (genarm:requests) when
 * a reward worker has loaded its ARM (gn_ctl_wait_release). This coordinator
 * follows the worker registry instead, so those entries are only tokens:
 * acknowledge them so that the stream (and its depth metric) does not grow. */
static void ack_parked(gn_arm_pin *a) {
    if (!a->p.ack_parked) return;
    pthread_mutex_lock(&a->mu); /* tokens come back while parked, or soon after */
    int recent = a->n_tokens > 0 || gn_mono_s() - a->parked_last < 30.0;
    pthread_mutex_unlock(&a->mu);
    if (!recent) return;
    gn_err e = {0};
    if (!a->queue_ready) {
        if (gn_ctl_queue_init(a->ctl, &e)) return;
        a->queue_ready = 1;
    }
    for (int i = 0; i < 64; i++) {
        gn_ctl_msg m;
        memset(&m, 0, sizeof m);
        if (gn_ctl_queue_read(a->ctl, a->coord_id, 0, &m, &e) != 1) break;
        if (m.payload && strstr(m.payload, "\"parked\":true"))
            gn_ctl_queue_ack(a->ctl, m.id, &e);
        else
            gn_wire_log("warn", COMP, "event=queue_entry_ignored id=%s", m.id);
        gn_ctl_msg_clear(&m);
    }
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
        if (!a->quit && !a->kicked && !a->tokens_wake) {
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
        sync_tokens(a); /* also on the way out: tokens taken back are not left parked */
        if (quit) break;
        refresh(a);
        double t = gn_mono_s();
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
    if (a->p.forget_s <= 0) a->p.forget_s = 60;
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
    if (i < a->n_names) a->asked[i] = gn_mono_s();
    if (i < a->n_names && a->current[i][0]) {
        snprintf(version, GN_CTL_ID_MAX, "%s", a->current[i]);
        found = 1;
    } else if (i == a->n_names && a->n_names < MAX_NAMES) {
        snprintf(a->names[a->n_names], GN_CTL_ID_MAX, "%s", name);
        a->asked[a->n_names] = gn_mono_s();
        a->current[a->n_names++][0] = 0;
        a->kicked = 1;
        pthread_cond_signal(&a->cv);
    }
    pthread_mutex_unlock(&a->mu);
    return found;
}

int gn_arm_pin_park(gn_arm_pin *a, const char *name, const char *version, uint64_t job_id) {
    int rc = 0;
    pthread_mutex_lock(&a->mu);
    token *t = token_find(a, name, version, job_id);
    if (!t && a->n_tokens < MAX_TOKENS) {
        t = &a->tokens[a->n_tokens++];
        memset(t, 0, sizeof *t);
        snprintf(t->name, sizeof t->name, "%s", name);
        snprintf(t->version, sizeof t->version, "%s", version);
        t->job_id = job_id;
    }
    if (t) {
        t->want = 1;
        a->tokens_wake = 1;
        pthread_cond_signal(&a->cv);
    } else {
        rc = GN_ERANGE;
    }
    pthread_mutex_unlock(&a->mu);
    return rc;
}

void gn_arm_pin_unpark(gn_arm_pin *a, const char *name, const char *version, uint64_t job_id) {
    pthread_mutex_lock(&a->mu);
    token *t = token_find(a, name, version, job_id);
    if (t) {
        t->want = 0;
        a->tokens_wake = 1;
        pthread_cond_signal(&a->cv);
    }
    pthread_mutex_unlock(&a->mu);
}

void gn_arm_pin_kick(gn_arm_pin *a) {
    pthread_mutex_lock(&a->mu);
    a->kicked = 1;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
}
