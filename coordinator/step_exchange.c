/* step_exchange.c — one step over the workers: links, requests, gathering,
 * fetching what a draw lacks (step_exchange.h). */
#include "step_exchange.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "dist_internal.h"
#include "gn_alloc.h"
#include "step_client.h"
#include "wire.h"

#define MAX_LINKS 128
#define DENSE_AFTER_MAX 64 /* dense steps after the largest sparse rows still did not certify */
#define SHRINK_AFTER 32    /* certified-at-once steps before asking for fewer candidates */
#define FORGET_AFTER 256   /* ... and before a k that needed a fetch may be tried again */
#define MAX_HINTS 64       /* kinds of jobs whose last row mode is remembered */

struct gn_xlink {
    gn_step_client *c;
    int is_base;
    double last_heard;  /* any frame from it (monotonic s) */
    double last_ping;   /* heartbeat sent */
    uint64_t ping_rid;  /* the heartbeat in flight, 0 = none */
    int waiting;        /* requests of this step waiting on it */
};

typedef struct item {
    dseq *s;
    int mi;
} item;

/* One StepRequest of the step (a worker and a model), later its RowFetch. */
typedef struct group {
    gn_xlink *l;
    const char *name;
    uint32_t version;
    char label[GN_CTL_REF_MAX];
    int n, cap;       /* items, room for them (grown on demand up to max_batch) */
    item *it;         /* (cap) */
    gn_step_seq *ss;  /* (cap) */
    gn_fetch_seq *fs; /* (cap) */
    int *fidx;        /* (cap) item of each fetched sequence */
    int nf;
    gn_wire_env *rep;  /* the step's reply, kept until the step ends */
    gn_wire_env *frep[GN_EXCHANGE_MAX_FETCH_ROUNDS]; /* each fetch round's reply: whole rows point into them */
    int n_frep;
    float *conv;       /* dense rows converted from F16/BF16 */
    size_t conv_bytes;
    uint64_t compute_us;
    double sent_at, done_at;
} group;

/* Frees a group's replies (rows pointing into them become invalid). */
static void drop_replies(group *g) {
    gn_wire_env_free(g->rep);
    g->rep = NULL;
    for (int i = 0; i < g->n_frep; i++) gn_wire_env_free(g->frep[i]);
    g->n_frep = 0;
}

typedef struct pending {
    uint64_t rid;
    gn_xlink *l;
    group *g;     /* NULL: a heartbeat */
    int fetch;    /* 1: g's RowFetch */
    uint64_t disconnects; /* the link's count when sent */
    double sent_at;
} pending;

struct gn_exchange {
    gn_exchange_params p;
    void *zctx; /* one ZeroMQ context for every link */
    gn_xlink links[MAX_LINKS];
    char endpoints[MAX_LINKS][GN_CTL_PATH_MAX];
    int n_links;
    group *groups;
    int n_groups, max_groups;
    pending *pend; /* (max_pend): a step and a fetch per group, a heartbeat per link */
    int n_pend, max_pend;
    double t_first_send, t_last_reply;
    unsigned round; /* fetch rounds so far */
    struct {
        int used;
        uint64_t key, stamp;
        gn_row_mode mode;
    } hints[MAX_HINTS];
    uint64_t hint_clock;
    gn_dtype dense_dtype;
    gn_metric *m_bytes, *m_rows, *m_fetches, *m_bound, *m_pass;
};

/* ---- policy and modes --------------------------------------------------------- */

int gn_rows_policy_parse(const char *s, gn_rows_policy *out) {
    static const struct { const char *name; gn_rows_policy v; } t[] = {
        {"sparse", GN_ROWS_SPARSE}, {"f32", GN_ROWS_F32}, {"f16", GN_ROWS_F16}, {"bf16", GN_ROWS_BF16}};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++)
        if (s && strcmp(s, t[i].name) == 0) {
            *out = t[i].v;
            return 0;
        }
    return GN_EINVAL;
}

gn_exchange_params gn_exchange_default_params(void) {
    gn_exchange_params p;
    memset(&p, 0, sizeof p);
    p.step_timeout_ms = 30000;
    p.liveness_ms = 1000;
    p.rows = GN_ROWS_SPARSE;
    p.k_first = 64;
    p.k_max = 2048;
    p.max_batch = 64;
    p.max_arms = GN_OAI_MAX_ARMS;
    return p;
}


/* The candidates a sequence asks for this step (0: a dense row). */
static uint32_t mode_k(const gn_exchange *x, const gn_row_mode *m) {
    return x->p.rows == GN_ROWS_SPARSE && m->dense_left == 0 ? m->k : 0;
}

/* How a sparse draw went, for mode_adapt. */
enum { DRAW_AT_ONCE, DRAW_NEEDED_VALUES, DRAW_NEEDED_ROWS };

/* After a step. A fetch costs a round trip, so a draw that needed one asks
 * for more candidates next (x2 after missing values, x4 after whole rows, at
 * most k_max; whole rows needed at k_max: dense rows for a while). After a
 * run of draws certified at once k halves, but not down to a k that needed a
 * fetch (k_fail), which is forgotten slowly as the sequence moves on. (A kind
 * of job whose rows are too flat pays the climb once: new sequences of that
 * kind start where the last one got to.) */
static void mode_adapt(const gn_exchange *x, gn_row_mode *m, int how) {
    if (x->p.rows != GN_ROWS_SPARSE) return;
    if (m->dense_left > 0) {
        if (--m->dense_left == 0) m->k = x->p.k_max, m->streak = 0; /* try sparse again */
        return;
    }
    if (how != DRAW_AT_ONCE) {
        m->streak = 0;
        if (m->k > m->k_fail) m->k_fail = m->k;
        if (how == DRAW_NEEDED_ROWS && m->k >= x->p.k_max)
            m->dense_left = DENSE_AFTER_MAX; /* too flat to certify: dense rows for a while */
        else
            m->k = m->k * (how == DRAW_NEEDED_ROWS ? 4 : 2) < x->p.k_max ? m->k * (how == DRAW_NEEDED_ROWS ? 4 : 2)
                                                                       : x->p.k_max;
        return;
    }
    if (++m->streak % FORGET_AFTER == 0) m->k_fail /= 2;
    if (m->streak % SHRINK_AFTER == 0 && m->k / 2 >= x->p.k_first && m->k / 2 > m->k_fail) m->k /= 2;
}

/* The row mode sequences of one kind of job (same ARMs, same sampling) ended
 * their last step with: a new sequence of that kind starts from it, so rows
 * too flat to certify cost fetches once per kind, not once per sequence. The
 * least recently written kind gives its slot to a new one. */
static gn_row_mode *hint_slot(gn_exchange *x, uint64_t key, int create) {
    int oldest = 0;
    for (int i = 0; i < MAX_HINTS; i++) {
        if (x->hints[i].used && x->hints[i].key == key) {
            if (create) x->hints[i].stamp = ++x->hint_clock; /* written: recently used */
            return &x->hints[i].mode;
        }
        if (x->hints[i].stamp < x->hints[oldest].stamp) oldest = i;
    }
    if (!create) return NULL;
    x->hints[oldest].used = 1;
    x->hints[oldest].key = key;
    x->hints[oldest].stamp = ++x->hint_clock;
    return &x->hints[oldest].mode;
}

gn_row_mode gn_exchange_first_mode(gn_exchange *x, uint64_t kind) {
    gn_row_mode m = {x->p.rows == GN_ROWS_SPARSE ? x->p.k_first : 0, 0, 0, 0};
    const gn_row_mode *h = hint_slot(x, kind, 0);
    if (h) m = *h, m.streak = 0;
    return m;
}

/* ---- links ----------------------------------------------------------------------- */

gn_xlink *gn_exchange_link(gn_exchange *x, const char *endpoint, gn_err *err) {
    for (int i = 0; i < x->n_links; i++)
        if (strcmp(x->endpoints[i], endpoint) == 0) return &x->links[i];
    if (x->n_links == MAX_LINKS) {
        gn_errf(err, GN_ERANGE, "too many worker connections (%d)", MAX_LINKS);
        return NULL;
    }
    gn_step_client_params cp = gn_step_client_default_params();
    cp.zmq_ctx = x->zctx;
    /* Replies may be as large as the largest this coordinator asks for: a
     * dense f32 row (or a whole-row fetch) for every sequence of a full batch,
     * with room for the per-sequence fields. At 128k columns and 256
     * sequences that is 131 MB, over the default 64 MiB frame limit, which
     * would drop the connection (ZMQ_MAXMSGSIZE) and every step in flight. */
    size_t reply_max = (size_t)x->p.max_batch * ((size_t)x->p.n_vocab * 4 + 512) + ((size_t)1 << 20);
    if (reply_max > cp.limits.max_frame_bytes) cp.limits.max_frame_bytes = reply_max;
    gn_step_client *c = gn_step_client_create(endpoint, &cp, err);
    if (!c) return NULL;
    gn_xlink *l = &x->links[x->n_links];
    memset(l, 0, sizeof *l);
    l->c = c;
    l->last_heard = gn_mono_s();
    snprintf(x->endpoints[x->n_links], GN_CTL_PATH_MAX, "%s", endpoint);
    x->n_links++;
    return l;
}

gn_xlink *gn_exchange_base(gn_exchange *x) { return &x->links[0]; }

int gn_xlink_down(gn_exchange *x, gn_xlink *l) {
    (void)x;
    gn_step_link st;
    gn_step_client_link(l->c, &st);
    return !st.connected && st.disconnects > 0; /* was up, dropped, not back */
}

/* ---- create / free ------------------------------------------------------------- */

gn_exchange *gn_exchange_create(const gn_exchange_params *pin, gn_err *err) {
    gn_exchange_params p = pin ? *pin : gn_exchange_default_params();
    gn_exchange_params def = gn_exchange_default_params();
    if (!p.base_endpoint || p.n_vocab <= 0 || p.max_batch <= 0) {
        gn_errf(err, GN_EINVAL, "exchange: base endpoint, vocabulary and batch size required");
        return NULL;
    }
    if (p.step_timeout_ms <= 0) p.step_timeout_ms = def.step_timeout_ms;
    if (p.liveness_ms <= 0) p.liveness_ms = def.liveness_ms;
    if (p.k_first == 0) p.k_first = def.k_first;
    /* a candidate costs 8 bytes, a dense entry 4: past a quarter of the
     * vocabulary a sparse row stops paying for itself */
    if (p.k_max > (uint32_t)p.n_vocab / 4) p.k_max = (uint32_t)p.n_vocab / 4;
    if (p.k_first > p.k_max) p.k_first = p.k_max;
    if (p.k_first == 0) p.k_first = p.k_max = 1;
    if (p.max_arms <= 0) p.max_arms = def.max_arms;
    gn_exchange *x = gn_calloc(1, sizeof *x);
    if (!x) {
        gn_errf(err, GN_ENOMEM, "exchange: out of memory");
        return NULL;
    }
    x->p = p;
    x->dense_dtype = p.rows == GN_ROWS_F16 ? GN_F16 : p.rows == GN_ROWS_BF16 ? GN_BF16 : GN_F32;
    /* one group per (worker, model version) a step touches: the base, and at
     * most max_arms per sequence of the batch (each tenant may bring ARMs of
     * its own); a group's arrays grow with its sequences */
    x->max_groups = 1 + p.max_batch * p.max_arms;
    x->max_pend = 2 * x->max_groups + MAX_LINKS;
    x->groups = gn_calloc((size_t)x->max_groups, sizeof *x->groups);
    x->pend = gn_calloc((size_t)x->max_pend, sizeof *x->pend);
    if (!x->groups || !x->pend) goto oom;
    if (!(x->zctx = gn_step_context_new())) {
        gn_errf(err, GN_EIO, "exchange: cannot create a ZeroMQ context");
        goto fail;
    }
    if (!gn_exchange_link(x, p.base_endpoint, err)) goto fail;
    x->links[0].is_base = 1;
    if (p.metrics) {
        static const double bound_b[] = {1e-15, 1e-12, 1e-10, 1e-9, 1e-8, 1e-7, 3e-7, 1e-6, 1e-5, 1e-4};
        static const double pass_b[] = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256};
        gn_metrics *r = p.metrics->reg;
        if (!(x->m_bytes = gn_metrics_add(r, GN_METRIC_COUNTER, "genarm:exchange_received_bytes_total",
                                          "Bytes of worker replies (steps and fetches) received by the scheduler.",
                                          "worker", NULL, 0, err)) ||
            !(x->m_rows = gn_metrics_add(r, GN_METRIC_COUNTER, "genarm:exchange_rows_total",
                                         "Log-prob rows received, by format (sparse, f32, f16, bf16).", "format",
                                         NULL, 0, err)) ||
            !(x->m_fetches = gn_metrics_add(r, GN_METRIC_COUNTER, "genarm:exchange_fetches_total",
                                            "Sparse draws that had to fetch missing values or whole rows.", "kind",
                                            NULL, 0, err)) ||
            !(x->m_bound = gn_metrics_add(r, GN_METRIC_HISTOGRAM, "genarm:exchange_tv_bound",
                                          "Certified total-variation bound of each sparse draw.", NULL, bound_b,
                                          (int)(sizeof bound_b / sizeof *bound_b), err)) ||
            !(x->m_pass = gn_metrics_add(r, GN_METRIC_HISTOGRAM, "genarm:worker_pass_sequences",
                                         "Sequences in the worker forward pass that served a step request "
                                         "(several coordinators' requests share one pass).",
                                         "worker", pass_b, (int)(sizeof pass_b / sizeof *pass_b), err)))
            goto fail;
    }
    return x;
oom:
    gn_errf(err, GN_ENOMEM, "exchange: out of memory");
fail:
    gn_exchange_free(x);
    return NULL;
}

void gn_exchange_free(gn_exchange *x) {
    if (!x) return;
    for (int i = 0; x->groups && i < x->max_groups; i++) {
        group *g = &x->groups[i];
        drop_replies(g);
        gn_free(g->it);
        gn_free(g->ss);
        gn_free(g->fs);
        gn_free(g->fidx);
        gn_free(g->conv);
    }
    gn_free(x->groups);
    gn_free(x->pend);
    for (int i = 0; i < x->n_links; i++) gn_step_client_free(x->links[i].c);
    gn_step_context_free(x->zctx);
    gn_free(x);
}

/* ---- requests in flight ---------------------------------------------------------- */

/* Records a request in flight. 0, or -1 when the table is full (it holds a
 * step and a fetch per group and a heartbeat per link: it cannot fill). */
static int pend_add(gn_exchange *x, uint64_t rid, gn_xlink *l, group *g, int fetch) {
    if (x->n_pend == x->max_pend) return -1;
    gn_step_link st;
    gn_step_client_link(l->c, &st);
    pending *p = &x->pend[x->n_pend++];
    p->rid = rid;
    p->l = l;
    p->g = g;
    p->fetch = fetch;
    p->disconnects = st.disconnects;
    p->sent_at = gn_mono_s();
    if (g) l->waiting++;
    if (!x->t_first_send) x->t_first_send = p->sent_at;
    return 0;
}

static void pend_drop(gn_exchange *x, int i) {
    if (x->pend[i].g) x->pend[i].l->waiting--;
    x->pend[i] = x->pend[--x->n_pend];
}

static const char *worker_kind(const gn_xlink *l) { return l->is_base ? "base" : "reward"; }

/* Fails every sequence of g's step (fetch = 0) or fetch (fetch = 1). */
static void group_fail(gn_exchange *x, group *g, int fetch, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void group_fail(gn_exchange *x, group *g, int fetch, const char *fmt, ...) {
    char why[GN_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    const char *ep = gn_step_client_endpoint(g->l->c);
    gn_wire_log("warn", "coordinator", "event=worker_failed model=%s worker=%s msg=\"%s\" seqs=%d", g->label, ep,
                why, fetch ? g->nf : g->n);
    int n = fetch ? g->nf : g->n;
    for (int j = 0; j < n; j++) {
        const item *it = &g->it[fetch ? g->fidx[j] : j];
        dseq *s = it->s;
        if (fetch) {
            s->draw_rc = gn_errf(&s->draw_err, GN_EIO, "%.100s worker %.100s: %.300s", g->label, ep, why);
        } else {
            seq_model *sm = &s->m[it->mi];
            sm->has_row = 0;
            sm->err_code = GENARM__V1__ERROR_CODE__ERROR_INTERNAL;
            snprintf(sm->err_msg, sizeof sm->err_msg, "%.100s worker %.100s: %.300s", g->label, ep, why);
        }
    }
    (void)x;
}

static void ping(gn_exchange *x, gn_xlink *l) {
    gn_wire_env env;
    gn_wire_env_init(&env, 0);
    Genarm__V1__Heartbeat hb = GENARM__V1__HEARTBEAT__INIT;
    env.body_case = GENARM__V1__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    gn_err e = {0};
    uint64_t rid;
    l->last_ping = gn_mono_s();
    if (x->n_pend < x->max_pend && gn_step_client_send(l->c, &env, &rid, &e) == 0 &&
        pend_add(x, rid, l, NULL, 0) == 0)
        l->ping_rid = rid;
}

/* ---- replies ------------------------------------------------------------------------ */

static int find_item(const group *g, uint64_t seq_id) {
    for (int k = 0; k < g->n; k++)
        if (g->it[k].s->id == seq_id) return k;
    return -1;
}

static void seq_error(seq_model *sm, int code, const char *label, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void seq_error(seq_model *sm, int code, const char *label, const char *fmt, ...) {
    char msg[GN_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sm->has_row = 0;
    sm->err_code = code;
    snprintf(sm->err_msg, sizeof sm->err_msg, "%.100s: %.400s", label, msg);
}

/* Grows a row's own buffers to n entries. */
static int row_room(seq_model *sm, size_t n) {
    if (gn_grow((void **)&sm->ids, &sm->ids_bytes, n * sizeof *sm->ids) ||
        gn_grow((void **)&sm->vals, &sm->vals_bytes, n * sizeof *sm->vals))
        return GN_ENOMEM;
    return 0;
}

static void step_reply(gn_exchange *x, group *g, const gn_wire_step_resp *r) {
    const int V = x->p.n_vocab;
    g->compute_us = r->compute_us;
    gn_metric_observe(x->m_pass, worker_kind(g->l), (double)r->pass_seqs);
    const float *dense = NULL;
    uint64_t rows = 0, cols = 0;
    gn_err e = {0};
    if (r->logprobs && r->logprobs->rows > 0) {
        size_t need = (size_t)r->logprobs->rows * (size_t)V * sizeof(float);
        if (r->logprobs->dtype != GENARM__V1__DTYPE__DTYPE_F32 &&
            gn_grow((void **)&g->conv, &g->conv_bytes, need)) {
            group_fail(x, g, 0, "out of memory converting %llu rows", (unsigned long long)r->logprobs->rows);
            return;
        }
        if (gn_step_resp_logprobs_view(r, g->conv, g->conv_bytes / sizeof(float), &dense, &rows, &cols, &e)) {
            group_fail(x, g, 0, "%s", e.msg);
            return;
        }
        if (cols != (uint64_t)V) {
            group_fail(x, g, 0, "rows of %llu columns, the base vocabulary has %d", (unsigned long long)cols, V);
            return;
        }
        gn_metric_inc(x->m_rows,
                      r->logprobs->dtype == GENARM__V1__DTYPE__DTYPE_F16    ? "f16"
                      : r->logprobs->dtype == GENARM__V1__DTYPE__DTYPE_BF16 ? "bf16"
                                                                             : "f32",
                      (double)rows);
    }
    int n_sparse = 0;
    for (size_t i = 0; i < r->n_results; i++) {
        const Genarm__V1__SeqResult *sr = r->results[i];
        int k = find_item(g, sr->seq_id);
        if (k < 0) continue; /* not ours: ignored */
        dseq *s = g->it[k].s;
        seq_model *sm = &s->m[g->it[k].mi];
        if (*g->name && sr->model_version != g->version) {
            seq_error(sm, GENARM__V1__ERROR_CODE__ERROR_INTERNAL, g->label,
                      "served by version %u, the sequence is pinned to %u", sr->model_version, g->version);
            continue;
        }
        uint32_t len = g->ss[k].start_pos + (uint32_t)g->ss[k].n_tokens;
        if (sr->seq_len != len) { /* the tokens to feed next are counted from it */
            seq_error(sm, GENARM__V1__ERROR_CODE__ERROR_INTERNAL, g->label,
                      "reported length %u after the step, expected %u", sr->seq_len, len);
            continue;
        }
        if (sr->n_cand > 0) {
            const int32_t *ids;
            const float *vals;
            int rc = gn_wire_sparse_row(r, sr, sm->ids, sm->vals, sm->ids_bytes / sizeof *sm->ids, &ids, &vals, &e);
            if (rc == GN_ERANGE && row_room(sm, sr->n_cand) == 0)
                rc = gn_wire_sparse_row(r, sr, sm->ids, sm->vals, sr->n_cand, &ids, &vals, &e);
            if (rc) {
                seq_error(sm, GENARM__V1__ERROR_CODE__ERROR_INTERNAL, g->label, "%s", e.msg);
                continue;
            }
            gn_row_view v = {NULL, ids, vals, (int)sr->n_cand, {sr->cand_floor, sr->row_min, sr->tail_lse}};
            sm->row = v;
            n_sparse++;
        } else if (sr->n_rows == 1 && dense && sr->row_offset < rows) {
            gn_row_view v = {dense + (size_t)sr->row_offset * (size_t)V, NULL, NULL, 0, {0, 0, 0}};
            sm->row = v;
        } else {
            seq_error(sm, GENARM__V1__ERROR_CODE__ERROR_INTERNAL, g->label, "a reply without a usable row");
            continue;
        }
        sm->has_row = 1;
        sm->err_code = 0;
        sm->held = sr->seq_len;
    }
    if (n_sparse) gn_metric_inc(x->m_rows, "sparse", n_sparse);
    for (size_t i = 0; i < r->n_errors; i++) {
        const Genarm__V1__Error *er = r->errors[i];
        int k = er->has_seq ? find_item(g, er->seq_id) : -1;
        if (k < 0) continue;
        seq_model *sm = &g->it[k].s->m[g->it[k].mi];
        seq_error(sm, er->code ? (int)er->code : GENARM__V1__ERROR_CODE__ERROR_INTERNAL, g->label, "%s",
                  er->message ? er->message : "refused");
    }
    for (int k = 0; k < g->n; k++) {
        seq_model *sm = &g->it[k].s->m[g->it[k].mi];
        if (!sm->has_row && !sm->err_code)
            seq_error(sm, GENARM__V1__ERROR_CODE__ERROR_INTERNAL, g->label, "the worker returned no row for the sequence");
    }
}

static void fetch_reply(gn_exchange *x, group *g, const Genarm__V1__RowFetchResult *r) {
    const int V = x->p.n_vocab;
    for (size_t i = 0; i < r->n_results; i++) {
        const Genarm__V1__FetchResult *fr = r->results[i];
        int j = 0;
        while (j < g->nf && g->it[g->fidx[j]].s->id != fr->seq_id) j++;
        if (j == g->nf) continue;
        dseq *s = g->it[g->fidx[j]].s;
        seq_model *sm = &s->m[g->it[g->fidx[j]].mi];
        const gn_fetch_seq *fs = &g->fs[j];
        gn_err e = {0};
        const float *vals;
        size_t want = fs->full_row ? (size_t)V : (size_t)fs->n_ids;
        if (fr->n != want) {
            s->draw_rc = gn_errf(&s->draw_err, GN_EIO, "%s: fetch answered %u values for %zu", g->label, fr->n, want);
            continue;
        }
        if (fs->full_row) { /* the whole row: the sequence draws from dense rows now */
            int rc = gn_wire_fetch_values(r, fr, sm->vals, sm->vals_bytes / sizeof *sm->vals, &vals, &e);
            if (rc == GN_ERANGE && gn_grow((void **)&sm->vals, &sm->vals_bytes, (size_t)V * sizeof *sm->vals) == 0)
                rc = gn_wire_fetch_values(r, fr, sm->vals, (size_t)V, &vals, &e);
            if (rc) {
                s->draw_rc = gn_errf(&s->draw_err, GN_EIO, "%s: %s", g->label, e.msg);
                continue;
            }
            gn_row_view v = {vals, NULL, NULL, 0, {0, 0, 0}};
            sm->row = v;
            sm->n_asked = 0;
        } else { /* values of listed tokens: appended behind the ones asked for */
            float *dst = sm->vals + sm->row.n;
            if (gn_wire_fetch_values(r, fr, dst, want, &vals, &e)) {
                s->draw_rc = gn_errf(&s->draw_err, GN_EIO, "%s: %s", g->label, e.msg);
                continue;
            }
            if (vals != dst) memcpy(dst, vals, want * sizeof *dst);
            sm->row.n += (int)want;
            sm->n_asked = 0;
        }
    }
    for (size_t i = 0; i < r->n_errors; i++) {
        const Genarm__V1__Error *er = r->errors[i];
        for (int j = 0; er->has_seq && j < g->nf; j++) {
            dseq *s = g->it[g->fidx[j]].s;
            if (s->id == er->seq_id)
                s->draw_rc = gn_errf(&s->draw_err, GN_EIO, "%s: fetch: %s: %s", g->label, gn_wire_code_name(er->code),
                                     er->message ? er->message : "");
        }
    }
    for (int j = 0; j < g->nf; j++) { /* anything not answered */
        dseq *s = g->it[g->fidx[j]].s;
        if (!s->draw_rc && s->m[g->it[g->fidx[j]].mi].n_asked > 0)
            s->draw_rc = gn_errf(&s->draw_err, GN_EIO, "%s: the fetch returned no values for the sequence", g->label);
    }
}

/* Hands one received envelope to what waits for it. */
static void dispatch(gn_exchange *x, gn_xlink *l, gn_wire_env *env, uint64_t rid, int rc, const gn_err *e) {
    int i = 0;
    while (i < x->n_pend && !(x->pend[i].rid == rid && x->pend[i].l == l)) i++;
    if (env && env->body_case == GENARM__V1__ENVELOPE__BODY_HEARTBEAT && l->is_base && x->p.metrics &&
        env->heartbeat->kv_total_blocks > 0)
        gn_metric_set(x->p.metrics->kv_cache_usage, NULL,
                      (double)env->heartbeat->kv_used_blocks / (double)env->heartbeat->kv_total_blocks);
    if (i == x->n_pend) { /* late (its request failed or timed out), or a Release's answer */
        gn_wire_env_free(env);
        return;
    }
    pending p = x->pend[i];
    pend_drop(x, i);
    if (env && x->m_bytes)
        gn_metric_inc(x->m_bytes, worker_kind(l), (double)genarm__v1__envelope__get_packed_size(env));
    if (!p.g) { /* a heartbeat */
        if (l->ping_rid == rid) l->ping_rid = 0;
        gn_wire_env_free(env);
        return;
    }
    group *g = p.g;
    if (!p.fetch) { /* the step's round trip; fetch rounds count in the step's time, not here */
        x->t_last_reply = gn_mono_s();
        g->done_at = x->t_last_reply;
    }
    if (rc) {
        group_fail(x, g, p.fetch, "malformed reply: %s", e->msg);
    } else if (env->body_case == GENARM__V1__ENVELOPE__BODY_ERROR) {
        group_fail(x, g, p.fetch, "%s: %s", gn_wire_code_name(env->error->code),
                   env->error->message ? env->error->message : "");
    } else if (!p.fetch && env->body_case == GENARM__V1__ENVELOPE__BODY_STEP_RESULT) {
        step_reply(x, g, env->step_result);
        g->rep = env; /* the rows point into it */
        return;
    } else if (p.fetch && env->body_case == GENARM__V1__ENVELOPE__BODY_FETCH_RESULT) {
        fetch_reply(x, g, env->fetch_result);
        if (g->n_frep < GN_EXCHANGE_MAX_FETCH_ROUNDS) { /* else fetch sent nothing: see gn_exchange_fetch */
            g->frep[g->n_frep++] = env;
            return;
        }
    } else {
        group_fail(x, g, p.fetch, "unexpected reply (body %d)", (int)env->body_case);
    }
    gn_wire_env_free(env);
}

/* Reads everything waiting on link l. */
static void drain_link(gn_exchange *x, gn_xlink *l) {
    for (int n = 0; n < 4096; n++) {
        gn_wire_env *env = NULL;
        uint64_t rid = 0;
        gn_err e = {0};
        int rc = gn_step_client_recv_any(l->c, 0, &env, &rid, &e);
        if (rc == GN_EIO) return; /* nothing more */
        l->last_heard = gn_mono_s();
        dispatch(x, l, env, rid, rc, &e);
    }
}

/* Waits until every step or fetch request in flight is answered or failed:
 * replies are read from whichever worker has one; a link whose connection
 * dropped (before or after a request was sent) fails that request at once; a worker
 * silent (no reply, no heartbeat answer) for liveness_ms with a request
 * pending is stalled or unreachable; the step deadline bounds the rest. */
static void gather(gn_exchange *x) {
    const double live = x->p.liveness_ms / 1000.0;
    const double deadline = gn_mono_s() + x->p.step_timeout_ms / 1000.0;
    gn_step_client *cl[MAX_LINKS];
    gn_xlink *ll[MAX_LINKS];
    unsigned char readable[MAX_LINKS];
    for (;;) {
        int nc = 0, waiting = 0;
        double t = gn_mono_s();
        for (int i = 0; i < x->n_pend;) {
            pending *p = &x->pend[i];
            if (!p->g) { /* a heartbeat: the requests' checks judge the link; a lost one is forgotten */
                if (t - p->sent_at > live) {
                    if (p->l->ping_rid == p->rid) p->l->ping_rid = 0;
                    pend_drop(x, i);
                } else {
                    i++;
                }
                continue;
            }
            gn_step_link st;
            gn_step_client_link(p->l->c, &st);
            double heard = p->l->last_heard > p->sent_at ? p->l->last_heard : p->sent_at;
            /* lost after it was sent, or sent while a connection that had been up
             * was down (the worker died between two steps) */
            if (st.disconnects > p->disconnects || (!st.connected && st.disconnects > 0)) {
                group *g = p->g;
                int f = p->fetch;
                pend_drop(x, i);
                group_fail(x, g, f, "connection lost (the worker died or restarted)");
                continue;
            }
            if (t - heard > live) {
                group *g = p->g;
                int f = p->fetch;
                pend_drop(x, i);
                if (st.connected)
                    group_fail(x, g, f, "no reply and no heartbeat for %.0f ms (stalled)", (t - heard) * 1000.0);
                else
                    group_fail(x, g, f, "unreachable: no connection for %.0f ms", (t - heard) * 1000.0);
                continue;
            }
            if (t > deadline) {
                group *g = p->g;
                int f = p->fetch;
                pend_drop(x, i);
                group_fail(x, g, f, "timeout: no reply within %d ms", x->p.step_timeout_ms);
                continue;
            }
            if (t - heard > live / 4 && !p->l->ping_rid) ping(x, p->l);
            waiting++;
            i++;
        }
        if (!waiting) return;
        for (int i = 0; i < x->n_links; i++)
            if (x->links[i].waiting > 0 || x->links[i].ping_rid) {
                ll[nc] = &x->links[i];
                cl[nc++] = x->links[i].c;
            }
        double wait = live / 4;
        if (deadline - t < wait) wait = deadline - t;
        gn_err e = {0};
        int n = gn_step_clients_wait(cl, nc, (int)(wait * 1000.0) + 1, readable, &e);
        for (int i = 0; n > 0 && i < nc; i++)
            if (readable[i]) drain_link(x, ll[i]);
    }
}

/* ---- one step ------------------------------------------------------------------------- */

void gn_exchange_begin(gn_exchange *x) {
    for (int i = 0; i < x->n_groups; i++) {
        group *g = &x->groups[i];
        drop_replies(g);
        g->n = g->nf = 0;
    }
    x->n_groups = 0;
    for (int i = 0; i < x->n_pend;) /* requests of an earlier step are late now */
        if (x->pend[i].g) pend_drop(x, i);
        else i++;
    x->t_first_send = x->t_last_reply = 0;
}

static group *group_for(gn_exchange *x, gn_xlink *l, const char *name, uint32_t version) {
    for (int i = 0; i < x->n_groups; i++)
        if (x->groups[i].l == l && x->groups[i].version == version && strcmp(x->groups[i].name, name) == 0)
            return &x->groups[i];
    if (x->n_groups == x->max_groups) return NULL;
    group *g = &x->groups[x->n_groups++];
    g->l = l;
    g->name = name;
    g->version = version;
    g->n = g->nf = 0;
    g->compute_us = 0;
    g->sent_at = g->done_at = 0;
    if (*name)
        snprintf(g->label, sizeof g->label, "%s@%u", name, version);
    else
        snprintf(g->label, sizeof g->label, "base");
    return g;
}

/* Room for one more item in g: 0, GN_ERANGE (a full batch), GN_ENOMEM. */
static int group_room(gn_exchange *x, group *g) {
    if (g->n < g->cap) return 0;
    if (g->n >= x->p.max_batch) return GN_ERANGE;
    int cap = g->cap ? 2 * g->cap : 8;
    if (cap > x->p.max_batch) cap = x->p.max_batch;
    void *p;
    if (!(p = gn_realloc(g->it, (size_t)cap * sizeof *g->it))) return GN_ENOMEM;
    g->it = p;
    if (!(p = gn_realloc(g->ss, (size_t)cap * sizeof *g->ss))) return GN_ENOMEM;
    g->ss = p;
    if (!(p = gn_realloc(g->fs, (size_t)cap * sizeof *g->fs))) return GN_ENOMEM;
    g->fs = p;
    if (!(p = gn_realloc(g->fidx, (size_t)cap * sizeof *g->fidx))) return GN_ENOMEM;
    g->fidx = p;
    g->cap = cap;
    return 0;
}

int gn_exchange_add(gn_exchange *x, dseq *s, int mi, gn_xlink *l, const char *name, uint32_t version,
                    uint32_t start_pos, const int32_t *tokens, int n) {
    group *g = group_for(x, l, name, version);
    if (!g) return GN_ERANGE;
    int rc = group_room(x, g);
    if (rc) return rc;
    int k = g->n++;
    g->it[k] = (item){s, mi};
    g->ss[k] = (gn_step_seq){s->id, start_pos, tokens, n, 0, 0, mode_k(x, &s->mode)};
    seq_model *sm = &s->m[mi];
    sm->sent = 1;
    sm->has_row = 0;
    sm->err_code = 0;
    sm->err_msg[0] = 0;
    sm->n_asked = 0;
    s->fetches = 0;
    return 0;
}

void gn_exchange_run(gn_exchange *x) {
    gn_dtype dt = x->p.rows == GN_ROWS_SPARSE ? GN_F32 : x->dense_dtype;
    for (int i = 0; i < x->n_groups; i++) {
        group *g = &x->groups[i];
        if (g->n == 0) continue;
        uint64_t rid;
        gn_err e = {0};
        g->sent_at = gn_mono_s();
        if (gn_step_client_step_send(g->l->c, g->name, g->version, g->ss, g->n, dt, &rid, &e))
            group_fail(x, g, 0, "send: %s", e.msg);
        else if (pend_add(x, rid, g->l, g, 0))
            group_fail(x, g, 0, "too many requests in flight");
    }
    gather(x);
}

int gn_exchange_keep_missing(dseq *s) {
    for (int mi = 0; mi < N_MODELS_MAX; mi++) {
        int miss = s->draw.n_missing[mi];
        if (miss <= 0) continue;
        seq_model *sm = &s->m[mi];
        size_t n0 = (size_t)sm->row.n;
        int32_t *old_ids = sm->ids;
        if (row_room(sm, n0 + (size_t)miss)) return GN_ENOMEM;
        if (sm->row.ids != old_ids) { /* the listed ones still point into the reply */
            memcpy(sm->ids, sm->row.ids, n0 * sizeof *sm->ids);
            memcpy(sm->vals, sm->row.vals, n0 * sizeof *sm->vals);
        }
        memcpy(sm->ids + n0, s->draw.missing[mi], (size_t)miss * sizeof *sm->ids);
        sm->row.ids = sm->ids;
        sm->row.vals = sm->vals;
        sm->n_asked = miss;
    }
    return 0;
}

int gn_exchange_fetch(gn_exchange *x) {
    int total = 0, seqs = 0;
    for (int i = 0; i < x->n_groups; i++) {
        group *g = &x->groups[i];
        g->nf = 0;
        for (int k = 0; k < g->n; k++) {
            dseq *s = g->it[k].s;
            int mi = g->it[k].mi;
            if (s->done || s->draw_rc || !s->m[mi].has_row) continue;
            gn_fetch_seq f = {s->id, s->m[mi].held, NULL, 0, 0};
            if (s->draw.status == GN_DRAW_NEED_VALUES && s->m[mi].n_asked > 0) {
                f.ids = s->m[mi].ids + s->m[mi].row.n;
                f.n_ids = s->m[mi].n_asked;
            } else if (s->draw.status == GN_DRAW_NEED_ROWS && s->draw.need_rows[mi]) {
                f.full_row = 1;
            } else {
                continue;
            }
            g->fidx[g->nf] = k;
            g->fs[g->nf++] = f;
        }
        total += g->nf;
    }
    if (!total) return 0;
    for (int i = 0; i < x->n_groups; i++) /* where its reply would be kept */
        if (x->groups[i].nf && x->groups[i].n_frep == GN_EXCHANGE_MAX_FETCH_ROUNDS) {
            group_fail(x, &x->groups[i], 1, "more than %d fetch rounds in one step", GN_EXCHANGE_MAX_FETCH_ROUNDS);
            x->groups[i].nf = 0;
        }
    x->round++;
    for (int i = 0; i < x->n_groups; i++) { /* each sequence counts once per round */
        group *g = &x->groups[i];
        for (int j = 0; j < g->nf; j++) {
            dseq *s = g->it[g->fidx[j]].s;
            if (s->fetch_mark != x->round) {
                s->fetch_mark = x->round;
                seqs++;
                s->fetches++;
                gn_metric_inc(x->m_fetches, s->draw.status == GN_DRAW_NEED_ROWS ? "rows" : "values", 1);
                mode_adapt(x, &s->mode, s->draw.status == GN_DRAW_NEED_ROWS ? DRAW_NEEDED_ROWS : DRAW_NEEDED_VALUES);
            }
        }
    }
    for (int i = 0; i < x->n_groups; i++) {
        group *g = &x->groups[i];
        if (g->nf == 0) continue;
        uint64_t rid;
        gn_err e = {0};
        if (gn_step_client_fetch_send(g->l->c, g->name, g->version, g->fs, g->nf, &rid, &e))
            group_fail(x, g, 1, "fetch send: %s", e.msg);
        else if (pend_add(x, rid, g->l, g, 1))
            group_fail(x, g, 1, "too many requests in flight");
    }
    gather(x);
    return seqs;
}

double gn_exchange_end(gn_exchange *x, double *wait_s) {
    /* model compute: the slowest worker's forward passes. Requests to one
     * worker may share a pass (the worker batches them), so a worker counts
     * its longest one, not their sum. */
    double compute = 0;
    for (int i = 0; i < x->n_links; i++) {
        double c = 0;
        for (int j = 0; j < x->n_groups; j++)
            if (x->groups[j].l == &x->links[i] && x->groups[j].compute_us * 1e-6 > c)
                c = x->groups[j].compute_us * 1e-6;
        if (c > compute) compute = c;
    }
    if (wait_s && x->t_first_send && x->t_last_reply > x->t_first_send) *wait_s += x->t_last_reply - x->t_first_send;
    for (int i = 0; i < x->n_groups; i++) {
        group *g = &x->groups[i];
        if (g->n && g->done_at > g->sent_at && x->p.metrics)
            gn_metric_observe(x->p.metrics->step_exchange, worker_kind(g->l), g->done_at - g->sent_at);
        if (g->l->is_base) /* once per sequence: the base carries every stepped sequence */
            for (int k = 0; k < g->n; k++) {
                dseq *s = g->it[k].s;
                if (s->drawn) {
                    if (s->draw.bound > 0 || (s->m[0].has_row && !s->m[0].row.dense))
                        gn_metric_observe(x->m_bound, NULL, s->draw.bound);
                    if (s->fetches == 0) mode_adapt(x, &s->mode, DRAW_AT_ONCE);
                    gn_row_mode *h = hint_slot(x, s->jb->kind, 1);
                    *h = s->mode;
                }
            }
        drop_replies(g);
    }
    return compute;
}

/* ---- outside steps --------------------------------------------------------------------- */

void gn_exchange_release(gn_exchange *x, gn_xlink *l, const char *name, uint32_t version, const uint64_t *ids,
                         int n) {
    (void)x;
    uint64_t rid;
    gn_err e = {0};
    gn_step_client_release_send(l->c, name, version, ids, n, &rid, &e); /* its answer is dropped as late */
}

void gn_exchange_idle(gn_exchange *x) {
    double t = gn_mono_s();
    gn_xlink *b = &x->links[0];
    if (b->ping_rid && t - b->last_ping > 5.0) { /* never answered: forget it */
        for (int i = 0; i < x->n_pend; i++)
            if (x->pend[i].rid == b->ping_rid && !x->pend[i].g) {
                pend_drop(x, i);
                break;
            }
        b->ping_rid = 0;
    }
    if (x->p.metrics && !b->ping_rid && t - b->last_ping >= 1.0) ping(x, b);
    gn_step_client *cl[MAX_LINKS];
    unsigned char readable[MAX_LINKS];
    for (int i = 0; i < x->n_links; i++) cl[i] = x->links[i].c;
    gn_err e = {0};
    if (gn_step_clients_wait(cl, x->n_links, 0, readable, &e) > 0)
        for (int i = 0; i < x->n_links; i++)
            if (readable[i]) drain_link(x, &x->links[i]);
}
