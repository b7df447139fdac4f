/* scheduler.c — the distributed backend's scheduler thread: jobs in, the
 * per-step loop, results out (dist_internal.h).
 *
 * One pass of the loop:
 *
 *     take_new_jobs   the submit queue joins the pending list
 *     end_cancelled   cancelled jobs' sequences stop
 *     take_shared     other coordinators' queued requests, while there is room
 *     admit           pending jobs whose ARMs are placed join the running batch
 *     run_step        one decoding step for the running batch
 *     retire          finished jobs go to their sinks
 *
 * and one step:
 *
 *     plan_step       which sequences step, which worker feeds each model
 *     exchange        requests out, replies in (step_exchange.h)
 *     worker_refusals a worker at capacity, a superseded ARM version, a failure
 *     draw            combine + sample (+ log-probs) per sequence (draw.h),
 *                     fetching what a sparse draw lacks, in parallel
 *     apply           tokens, text, stops, finished sequences
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dist_internal.h"
#include "gn_alloc.h"
#include "token_report.h"
#include "wire.h"

#define COMP "coordinator"

/* ---- sequences and jobs ----------------------------------------------------------- */

static int is_eos(const gn_dist *d, int32_t t) {
    for (int i = 0; i < d->n_eos; i++)
        if (d->eos[i] == t) return 1;
    return 0;
}

static void seq_log_done(djob *jb, dseq *s) {
    char arms[512] = "";
    size_t off = 0;
    for (int k = 0; k < jb->n_arms && off < sizeof arms; k++)
        off += (size_t)snprintf(arms + off, sizeof arms - off, "%s%s@%s", k ? "," : "", jb->j.arm_names[k],
                                jb->arm_ver[k]);
    gn_wire_log("info", COMP, "event=seq_done job=%llu seq=%llu index=%d tokens=%d finish=%s arms=%s",
                (unsigned long long)jb->j.id, (unsigned long long)s->id, s->index, s->n_tokens,
                s->finish ? s->finish : "error", arms[0] ? arms : "-");
}

/* Releases s on every worker that may hold it. */
static void seq_release(gn_dist *d, dseq *s) {
    djob *jb = s->jb;
    gn_exchange_release(d->ex, gn_exchange_base(d->ex), "", 0, &s->id, 1);
    for (int k = 0; k < jb->n_arms; k++)
        if (jb->arm_link[k] && jb->dp.guidance.weights[k] != 0)
            gn_exchange_release(d->ex, jb->arm_link[k], jb->j.arm_names[k], jb->arm_vnum[k], &s->id, 1);
}

/* Ends sequence s with reason (NULL = failed), flushing held-back text. */
static void seq_finish(gn_dist *d, dseq *s, const char *reason) {
    if (s->done) return;
    djob *jb = s->jb;
    if (reason && strcmp(reason, "abort") != 0) {
        const char *out;
        size_t n;
        int stopped;
        gn_err e = {0};
        if (gn_gen_text_finish(s->text, &out, &n, &stopped, &e) == 0) {
            if (stopped) reason = "stop";
            if (n) jb->sink->text(jb->sink, s->index, out, n, s->n_tokens);
        }
    }
    s->finish = reason;
    s->failed = reason == NULL;
    s->done = 1;
    if (s->active) seq_release(d, s);
    s->active = 0;
    jb->n_left--;
    seq_log_done(jb, s);
}

static void job_fail(gn_dist *d, djob *jb, int rc, const gn_err *e) {
    if (!jb->rc) {
        jb->rc = rc;
        jb->err = *e;
        jb->err.code = rc;
        gn_wire_log("warn", COMP, "event=job_failed job=%llu code=%d msg=\"%s\"", (unsigned long long)jb->j.id, rc,
                    e->msg);
    }
    for (int i = 0; i < jb->j.n; i++)
        if (!jb->seqs[i].done) seq_finish(d, &jb->seqs[i], jb->seqs[i].failed ? NULL : "abort");
}

static void fail_seq(gn_dist *d, dseq *s, int rc, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void fail_seq(gn_dist *d, dseq *s, int rc, const char *fmt, ...) {
    gn_err e = {0};
    char msg[GN_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    gn_errf(&e, rc, "%s", msg);
    s->failed = 1;
    job_fail(d, s->jb, rc, &e);
}

void gn_sched_job_free(djob *jb) {
    for (int mi = 0; mi < N_MODELS_MAX; mi++) gn_free(jb->prompt[mi]);
    for (int i = 0; i < GN_OAI_MAX_N; i++) {
        dseq *s = &jb->seqs[i];
        gn_free(s->tokens);
        gn_gen_text_free(s->text);
        for (int mi = 0; mi < N_MODELS_MAX; mi++) {
            gn_free(s->m[mi].ids);
            gn_free(s->m[mi].vals);
            gn_free(s->feed[mi]);
        }
    }
    gn_free(jb);
}

/* Takes jb's parked request for its ARM k back (only jb's: other jobs waiting
 * for the same version stay parked). */
static void job_unpark(gn_dist *d, djob *jb, int k) {
    if (!jb->arm_parked[k]) return;
    gn_arm_pin_unpark(d->pin, jb->j.arm_names[k], jb->arm_ver[k], jb->j.id);
    jb->arm_parked[k] = 0;
}

/* Hands a finished job to its sink and frees it; takes back whatever it left
 * parked (it gave up waiting, was cancelled, or the coordinator stops). */
static void job_retire(gn_dist *d, djob *jb) {
    for (int k = 0; k < jb->n_arms; k++) job_unpark(d, jb, k);
    atomic_fetch_sub(&d->load, jb->j.n);
    pthread_mutex_lock(&d->mu);
    if (jb->all_prev)
        jb->all_prev->all_next = jb->all_next;
    else
        d->all = jb->all_next;
    if (jb->all_next) jb->all_next->all_prev = jb->all_prev;
    pthread_mutex_unlock(&d->mu);
    gn_coord_result res;
    memset(&res, 0, sizeof res);
    gn_coord_choice_result ch[GN_OAI_MAX_N];
    res.rc = jb->rc;
    res.err = jb->err;
    res.queue_s = (jb->t_start > 0 ? jb->t_start : gn_mono_s()) - jb->t_submit;
    res.prompt_tokens = jb->n_prompt[0];
    for (int i = 0; i < jb->j.n; i++) {
        size_t len = 0;
        const char *t = jb->seqs[i].text ? gn_gen_text_str(jb->seqs[i].text, &len) : "";
        ch[i] = (gn_coord_choice_result){t, len, jb->seqs[i].finish ? jb->seqs[i].finish : "abort",
                                         jb->seqs[i].n_tokens};
    }
    res.n_choices = jb->j.n;
    res.choices = ch;
    jb->sink->done(jb->sink, &res);
    gn_sched_job_free(jb);
}

/* ---- placing a job's ARMs (no I/O: the arm_pin snapshot) ------------------------------ */

/* Finds a live reward worker for every ARM of jb. 1: all placed; 0: waiting
 * (parked when the snapshot says no worker holds the version); negative:
 * failed (err). */
static int job_place(gn_dist *d, djob *jb, gn_err *err) {
    int all = 1;
    double now = gn_mono_s();
    for (int k = 0; k < jb->n_arms; k++) {
        if (jb->arm_link[k] || jb->dp.guidance.weights[k] == 0) continue;
        const char *name = jb->j.arm_names[k];
        /* the version current now, when the registry moved on after the job was pinned */
        char cur[GN_CTL_ID_MAX];
        double ts = 0;
        if (gn_arm_pin_current(d->pin, name, cur, &ts) && ts > jb->t_pinned && strcmp(cur, jb->arm_ver[k]) != 0) {
            uint32_t vn;
            if (gn_dist_arm_version_num(cur, &vn) == 0) {
                job_unpark(d, jb, k); /* the old version's parked request goes */
                snprintf(jb->arm_ver[k], sizeof jb->arm_ver[k], "%s", cur);
                jb->arm_vnum[k] = vn;
            }
        }
        char eps[GN_ARM_PIN_MAX_CANDIDATES][GN_CTL_PATH_MAX];
        double taken = 0;
        int n = gn_arm_pin_find(d->pin, name, jb->arm_ver[k], eps, GN_ARM_PIN_MAX_CANDIDATES, &taken);
        for (int i = 0; i < n && i < GN_ARM_PIN_MAX_CANDIDATES && !jb->arm_link[k]; i++) {
            gn_err e = {0};
            gn_xlink *l = gn_exchange_link(d->ex, eps[i], &e);
            if (l && !gn_xlink_down(d->ex, l)) jb->arm_link[k] = l;
        }
        if (jb->arm_link[k]) {
            if (jb->arm_parked[k])
                gn_wire_log("info", COMP, "event=arm_available job=%llu arm=%s@%s", (unsigned long long)jb->j.id,
                            name, jb->arm_ver[k]);
            job_unpark(d, jb, k);
            continue;
        }
        all = 0;
        if (n == 0 && taken > jb->t_pinned && !jb->arm_parked[k]) { /* a fresh snapshot: nobody holds it */
            if (gn_arm_pin_park(d->pin, name, jb->arm_ver[k], jb->j.id) == 0) {
                jb->arm_parked[k] = 1;
                gn_wire_log("info", COMP, "event=arm_wait job=%llu arm=%s@%s", (unsigned long long)jb->j.id, name,
                            jb->arm_ver[k]);
            }
        } else if (taken <= jb->t_pinned) {
            gn_arm_pin_kick(d->pin);
        }
        if (now > jb->arm_deadline) /* job_retire takes the parked requests back */
            return gn_errf(err, GN_EIO, "no reward worker holds ARM %s@%s (waited %.1f s)%s", name, jb->arm_ver[k],
                           d->p.arm_wait_ms / 1000.0, n ? ": its workers are unreachable" : "");
    }
    return all;
}

/* A superseded ARM version refused the prefill of a job's sequences (a
 * promotion raced their start): place that ARM again at the version current
 * now and redo the step for the job (the other models rewind by one token). */
static void job_repin(gn_dist *d, djob *jb, int k, const char *why) {
    if (jb->arm_link[k]) {
        gn_wire_log("info", COMP, "event=arm_repin job=%llu arm=%s@%s msg=\"%s\"", (unsigned long long)jb->j.id,
                    jb->j.arm_names[k], jb->arm_ver[k], why);
        jb->arm_link[k] = NULL;
        jb->repins++;
    }
    jb->need_place = 1;
    jb->t_pinned = gn_mono_s(); /* only a snapshot taken from now on names the new version */
    jb->arm_deadline = gn_mono_s() + d->p.arm_wait_ms / 1000.0;
    gn_arm_pin_kick(d->pin);
    for (int i = 0; i < jb->j.n; i++) jb->seqs[i].repin = 1;
}

/* A worker at capacity refused sequence s (a new sequence while all its
 * slots are taken, or its KV pool exhausted): s waits and retries, with
 * backoff, until the worker has room — for at most capacity_wait_ms. */
static void seq_capacity_wait(gn_dist *d, dseq *s, const char *why) {
    double t = gn_mono_s();
    if (!s->wait_since) {
        s->wait_since = t;
        gn_wire_log("info", COMP, "event=capacity_wait job=%llu seq=%llu msg=\"%s\"", (unsigned long long)s->jb->j.id,
                    (unsigned long long)s->id, why);
    }
    if (t - s->wait_since > d->p.capacity_wait_ms / 1000.0) {
        fail_seq(d, s, GN_EIO, "at capacity for %.1f s: %s", t - s->wait_since, why);
        return;
    }
    double backoff = 0.02 + 0.25 * (t - s->wait_since);
    s->wait_until = t + (backoff < 0.5 ? backoff : 0.5);
    s->repin = 1;
}

static int job_activate(gn_dist *d, djob *jb, gn_err *err) {
    for (int i = 0; i < jb->j.n; i++) {
        dseq *s = &jb->seqs[i];
        s->jb = jb;
        s->index = i;
        s->id = d->next_seq++;
        s->mode = gn_exchange_first_mode(d->ex, jb->kind);
        s->tokens = gn_malloc((size_t)(jb->cap > 0 ? jb->cap : 1) * sizeof *s->tokens);
        if (!s->tokens) return gn_errf(err, GN_ENOMEM, "out of memory");
        s->text = gn_gen_text_create(d->base.tok, (const char *const *)jb->j.req->stop, jb->j.req->n_stop, err);
        if (!s->text) return err->code;
        gn_rng_seed(&s->rng, jb->j.seed + (uint64_t)i);
    }
    jb->t_start = gn_mono_s();
    jb->n_left = jb->j.n;
    for (int i = 0; i < jb->j.n; i++) {
        dseq *s = &jb->seqs[i];
        if (jb->cap == 0) {
            seq_finish(d, s, "length");
            continue;
        }
        s->active = 1;
        d->active[d->n_active++] = s;
    }
    return 0;
}

/* ---- one step -------------------------------------------------------------------------- */

/* The tokens model mi of s must be fed now: from what its worker holds to
 * the end of the prompt and the generated tokens. */
static int seq_feed(dseq *s, int mi, const int32_t **feed, int *n) {
    djob *jb = s->jb;
    uint32_t held = s->m[mi].held;
    uint32_t total = (uint32_t)jb->n_prompt[mi] + (uint32_t)s->n_tokens;
    *n = (int)(total - held);
    if (s->n_tokens > 0 && held + 1 == total) { /* decoding: the last token */
        *feed = &s->tokens[s->n_tokens - 1];
    } else if (s->n_tokens == 0) { /* prefill */
        *feed = jb->prompt[mi] + held;
    } else { /* a rewind that spans prompt and generated tokens */
        int32_t *own = gn_malloc((size_t)*n * sizeof *own);
        if (!own) return GN_ENOMEM;
        for (int i = 0; i < *n; i++) {
            uint32_t pos = held + (uint32_t)i;
            own[i] = pos < (uint32_t)jb->n_prompt[mi] ? jb->prompt[mi][pos] : s->tokens[pos - jb->n_prompt[mi]];
        }
        s->feed[mi] = own;
        *feed = own;
    }
    return 0;
}

/* Adds every sequence that can step now to the exchange. Returns how many. */
static int plan_step(gn_dist *d, double t0) {
    int n = 0;
    gn_exchange_begin(d->ex);
    for (int a = 0; a < d->n_active; a++) {
        dseq *s = d->active[a];
        djob *jb = s->jb;
        s->stepped = 0;
        s->drawn = 0;
        s->draw_rc = 0;
        memset(&s->draw, 0, sizeof s->draw);
        for (int mi = 0; mi < N_MODELS_MAX; mi++) s->m[mi].sent = 0;
        if (jb->need_place || s->wait_until > t0) {
            s->repin = 1; /* not stepped: nothing to rewind beyond the usual */
            continue;
        }
        int rc = 0;
        for (int mi = 0; mi <= jb->n_arms && !rc; mi++) {
            if (mi > 0 && jb->dp.guidance.weights[mi - 1] == 0) continue;
            const int32_t *feed;
            int nf;
            gn_xlink *l = mi == 0 ? gn_exchange_base(d->ex) : jb->arm_link[mi - 1];
            if (!(rc = seq_feed(s, mi, &feed, &nf)))
                rc = gn_exchange_add(d->ex, s, mi, l, mi == 0 ? "" : jb->j.arm_names[mi - 1],
                                     mi == 0 ? 0 : jb->arm_vnum[mi - 1], s->m[mi].held, feed, nf);
        }
        if (rc == GN_ERANGE) { /* this step has no room for its worker requests: the next one */
            s->repin = 1;
        } else if (rc) {
            fail_seq(d, s, GN_ENOMEM, "out of memory for the step's tokens");
        } else {
            s->stepped = 1;
            n++;
        }
    }
    return n;
}

/* What the workers refused, sequence by sequence. */
static void worker_refusals(gn_dist *d) {
    for (int a = 0; a < d->n_active; a++) {
        dseq *s = d->active[a];
        if (!s->stepped || s->done) continue;
        for (int mi = 0; mi < N_MODELS_MAX && !s->done; mi++) {
            seq_model *sm = &s->m[mi];
            if (!sm->sent || !sm->err_code) continue;
            if (mi > 0 && sm->err_code == GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL && s->n_tokens == 0 &&
                s->jb->repins < 3) {
                job_repin(d, s->jb, mi - 1, sm->err_msg);
            } else if (sm->err_code == GENARM__V1__ERROR_CODE__ERROR_CAPACITY) {
                seq_capacity_wait(d, s, sm->err_msg);
            } else {
                fail_seq(d, s, GN_EIO, "%s", sm->err_msg);
            }
        }
    }
}

/* Combines and draws s's next token into s->draw (s->draw_rc on failure).
 * Touches only s and the drawer, so sequences are drawn in parallel. */
static void draw_seq(dseq *s, gn_drawer *dr) {
    djob *jb = s->jb;
    gn_row_view rows[N_MODELS_MAX];
    memset(rows, 0, sizeof rows);
    for (int mi = 0; mi <= jb->n_arms; mi++)
        if (mi == 0 || jb->dp.guidance.weights[mi - 1] != 0) {
            if (!s->m[mi].has_row) { /* worker_refusals ended or deferred every sequence without one */
                s->draw_rc = gn_errf(&s->draw_err, GN_EIO, "model %d: no row this step", mi);
                return;
            }
            rows[mi] = s->m[mi].row;
        }
    s->draw_rc = gn_draw(dr, &jb->dp, rows, &s->rng, &s->draw, &s->draw_err);
    if (!s->draw_rc && s->draw.status == GN_DRAW_NEED_VALUES && gn_exchange_keep_missing(s))
        s->draw_rc = gn_errf(&s->draw_err, GN_ENOMEM, "out of memory for fetched values");
}

typedef struct draw_ctx {
    gn_dist *d;
    int n;
} draw_ctx;

static void draw_task(void *ctx, int task, int thread) {
    draw_ctx *c = ctx;
    for (int i = task; i < c->n; i += c->d->n_drawers) draw_seq(c->d->work[i], c->d->drawers[thread]);
}

/* Draws every stepped sequence that has all its rows and still needs a
 * draw; with sparse rows, fetches what the draws lack and draws again. */
static void draw_all(gn_dist *d) {
    for (int round = 0;; round++) {
        int n = 0;
        for (int a = 0; a < d->n_active; a++) {
            dseq *s = d->active[a];
            if (!s->stepped || s->done || s->repin || s->draw_rc) continue;
            if (round > 0 && s->draw.status == GN_DRAW_DONE) continue;
            d->work[n++] = s;
        }
        if (n == 0) return;
        draw_ctx dc = {d, n};
        if (d->pool && n >= 4)
            gn_pool_run(d->pool, draw_task, &dc, d->n_drawers);
        else
            for (int i = 0; i < n; i++) draw_seq(d->work[i], d->drawers[0]);
        if (round == GN_EXCHANGE_MAX_FETCH_ROUNDS || gn_exchange_fetch(d->ex) == 0) break;
    }
    for (int a = 0; a < d->n_active; a++) { /* still not settled after a values and a rows fetch */
        dseq *s = d->active[a];
        if (s->stepped && !s->done && !s->repin && !s->draw_rc && s->draw.status != GN_DRAW_DONE)
            s->draw_rc = gn_errf(&s->draw_err, GN_EIO, "the draw could not be settled (status %d)", s->draw.status);
    }
}

/* Appends the drawn token: log-probs, EOS, text, stop strings, length. */
static void apply_seq(gn_dist *d, dseq *s) {
    djob *jb = s->jb;
    if (s->draw_rc) {
        s->failed = 1;
        job_fail(d, jb, s->draw_rc, &s->draw_err);
        return;
    }
    int tok = s->draw.token;
    s->drawn = 1;
    s->tokens[s->n_tokens++] = tok;
    if (jb->dp.want_logprob && jb->sink->token)
        gn_token_report(jb->sink, s->index, d->base.tok, jb->j.req->token_ids, &s->draw);
    if (!jb->j.req->ignore_eos && is_eos(d, tok)) {
        seq_finish(d, s, "stop");
        return;
    }
    const char *out;
    size_t len;
    int stopped;
    gn_err e = {0};
    if (gn_gen_text_push(s->text, tok, &out, &len, &stopped, &e)) {
        s->failed = 1;
        job_fail(d, jb, e.code ? e.code : GN_EINVAL, &e);
        return;
    }
    if (len) jb->sink->text(jb->sink, s->index, out, len, s->n_tokens);
    if (stopped)
        seq_finish(d, s, "stop");
    else if (s->n_tokens >= jb->cap)
        seq_finish(d, s, "length");
}

/* A sequence that got no token this step: each model recomputes its last row
 * next time (what a worker holds is cut back by one), and an ARM that must be
 * placed again starts over on its new worker. */
static void rewind_seq(dseq *s) {
    s->repin = 0;
    for (int mi = 0; mi < N_MODELS_MAX; mi++) {
        uint32_t total = (uint32_t)s->jb->n_prompt[mi] + (uint32_t)s->n_tokens;
        if (s->m[mi].held > 0 && s->m[mi].held > total - 1) s->m[mi].held = total - 1;
    }
    for (int k = 0; k < s->jb->n_arms; k++)
        if (!s->jb->arm_link[k]) s->m[1 + k].held = 0;
}

/* Applies the step's draws; returns the number of tokens drawn. */
static int apply_all(gn_dist *d) {
    int tokens = 0;
    for (int a = 0; a < d->n_active; a++) {
        dseq *s = d->active[a];
        if (s->done) continue;
        if (s->repin) {
            rewind_seq(s);
            continue;
        }
        if (!s->stepped) continue;
        s->wait_since = 0;
        apply_seq(d, s);
        tokens += s->drawn;
    }
    return tokens;
}

/* One step; returns the number of sequences sent to the workers. */
static int run_step(gn_dist *d) {
    double t0 = gn_mono_s();
    int n = plan_step(d, t0);
    if (n > 0) gn_exchange_run(d->ex);
    worker_refusals(d);
    draw_all(d);
    int tokens = apply_all(d);
    double wait_s = 0;
    double compute = gn_exchange_end(d->ex, &wait_s);
    for (int a = 0; a < d->n_active; a++)
        for (int mi = 0; mi < N_MODELS_MAX; mi++) {
            gn_free(d->active[a]->feed[mi]);
            d->active[a]->feed[mi] = NULL;
        }
    if (n == 0) return 0;
    double t1 = gn_mono_s();
    pthread_mutex_lock(&d->mu);
    d->stats.steps++;
    d->stats.tokens += tokens;
    d->stats.step_s += t1 - t0;
    d->stats.wait_s += wait_s;
    d->stats.compute_s += compute;
    pthread_mutex_unlock(&d->mu);
    gn_metric_inc(d->m_steps, NULL, 1);
    gn_metric_inc(d->m_tokens, NULL, tokens);
    gn_metric_inc(d->m_step_s, NULL, t1 - t0);
    gn_metric_inc(d->m_wait_s, NULL, wait_s);
    gn_metric_inc(d->m_compute_s, NULL, compute);
    return n;
}

/* ---- the loop ------------------------------------------------------------------------------- */

static void compact_active(gn_dist *d) {
    int k = 0;
    for (int a = 0; a < d->n_active; a++)
        if (!d->active[a]->done) d->active[k++] = d->active[a];
    d->n_active = k;
}

static void retire(gn_dist *d) {
    for (djob **pp = &d->running; *pp;) {
        djob *jb = *pp;
        if (jb->n_left > 0) {
            pp = &jb->next;
            continue;
        }
        *pp = jb->next;
        job_retire(d, jb);
    }
}

/* Ends a pending job that never ran: cancelled (e.code 0) or failed. */
static void drop_pending(gn_dist *d, djob *jb, const gn_err *e) {
    jb->n_left = 0;
    if (e && e->code) {
        jb->rc = e->code;
        jb->err = *e;
        gn_wire_log("warn", COMP, "event=job_failed job=%llu code=%d msg=\"%s\"", (unsigned long long)jb->j.id,
                    e->code, e->msg);
    }
    for (int i = 0; i < jb->j.n; i++) {
        jb->seqs[i].finish = "abort";
        jb->seqs[i].done = 1;
    }
    job_retire(d, jb);
}

/* Pending jobs whose ARMs are placed join the batch, first come first served. */
static void admit(gn_dist *d, int quit) {
    for (djob **pp = &d->pending; *pp;) {
        djob *jb = *pp;
        gn_err e = {0};
        if (atomic_load(&jb->cancelled) || quit) {
            *pp = jb->next;
            drop_pending(d, jb, NULL);
            continue;
        }
        if (d->n_active + jb->j.n > d->p.max_batch) break; /* FIFO: wait for room */
        int r = job_place(d, jb, &e);
        if (r == 0) {
            pp = &jb->next;
            continue;
        }
        if (r == 1 && (r = job_activate(d, jb, &e)) == 0) {
            *pp = jb->next;
            jb->next = d->running;
            d->running = jb;
            continue;
        }
        *pp = jb->next;
        drop_pending(d, jb, &e);
    }
}

/* Running jobs whose ARM must be placed again (a superseded version). */
static int place_running(gn_dist *d) {
    int stepping = 0;
    for (djob *j = d->running; j; j = j->next) {
        if (j->need_place && j->n_left > 0) {
            gn_err e = {0};
            int r = job_place(d, j, &e);
            if (r == 1) j->need_place = 0;
            if (r < 0) job_fail(d, j, r, &e);
        }
        if (!j->need_place) stepping += j->n_left;
    }
    return stepping;
}

/* Ends a taken job that cannot run here: done() with the error. */
static void taken_fail(const gn_share_taken *tk, int rc, const gn_err *e) {
    gn_wire_log("warn", COMP, "event=job_failed job=%llu code=%d msg=\"%s\"", (unsigned long long)tk->job->id, rc,
                e->msg);
    gn_coord_sink_end(tk->sink, tk->job->n, rc, e, 0);
}

/* Takes requests from the shared queue while this coordinator has room, and
 * keeps the taken ones' origins informed. */
static void take_shared(gn_dist *d, int quit) {
    if (!d->share) return;
    gn_share_poll(d->share, gn_dist_cancel_id, d);
    double t = gn_mono_s();
    if (t >= d->next_depth) {
        d->next_depth = t + 1.0;
        gn_share_queue_depth(d->share);
    }
    if (quit || atomic_load(&d->draining) || t < d->next_take) return;
    while (atomic_load(&d->load) < d->p.max_batch) {
        gn_share_taken tk;
        gn_err e = {0};
        int r = gn_share_take(d->share, &tk, &e);
        if (r <= 0) {
            if (r < 0) gn_wire_log("warn", COMP, "event=queue_read_failed msg=\"%s\"", e.msg);
            d->next_take = gn_mono_s() + (r < 0 ? 1.0 : 0.05);
            return;
        }
        djob *jb = NULL;
        int rc = gn_dist_job_prepare(d, tk.job, tk.sink, &jb, &e);
        if (!rc && (rc = gn_dist_job_enqueue(d, jb, &e))) gn_sched_job_free(jb);
        if (rc) taken_fail(&tk, rc, &e);
    }
}

static void gauges(gn_dist *d) {
    if (!d->metrics) return;
    int run = 0, wait = 0, parked = 0;
    for (djob *j = d->running; j; j = j->next) run++;
    for (djob *j = d->pending; j; j = j->next) {
        wait++;
        for (int k = 0; k < j->n_arms; k++)
            if (j->arm_parked[k] && !j->arm_link[k]) {
                parked++;
                break;
            }
    }
    pthread_mutex_lock(&d->mu);
    wait += d->n_in;
    pthread_mutex_unlock(&d->mu);
    gn_metric_set(d->metrics->requests_running, NULL, run);
    gn_metric_set(d->metrics->requests_waiting, NULL, wait);
    gn_metric_set(d->metrics->requests_waiting_for_arm, NULL, parked);
}

/* Waits for something to do (new jobs, a running batch, jobs waiting for an
 * ARM, the shared queue, the base worker's heartbeat), then moves the submit
 * queue to the end of the pending list. Returns the quit flag. */
static int take_new_jobs(gn_dist *d) {
    pthread_mutex_lock(&d->mu);
    if (!d->in_head && !d->quit && d->n_active == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long ns = ts.tv_nsec + (d->pending || d->share ? 50 : 250) * 1000000L;
        ts.tv_sec += ns / 1000000000L;
        ts.tv_nsec = ns % 1000000000L;
        pthread_cond_timedwait(&d->cv, &d->mu, &ts);
    }
    djob *in = d->in_head;
    d->in_head = d->in_tail = NULL;
    d->n_in = 0;
    int quit = d->quit;
    pthread_mutex_unlock(&d->mu);
    djob **tail = &d->pending;
    while (*tail) tail = &(*tail)->next;
    *tail = in;
    return quit;
}

static void end_cancelled(gn_dist *d, int quit) {
    for (djob *j = d->running; j; j = j->next) {
        if (quit) atomic_store(&j->cancelled, 1);
        if (atomic_load(&j->cancelled))
            for (int i = 0; i < j->j.n; i++)
                if (!j->seqs[i].done) seq_finish(d, &j->seqs[i], "abort");
    }
}

void *gn_sched_main(void *arg) {
    gn_dist *d = arg;
    for (;;) {
        int quit = take_new_jobs(d);
        end_cancelled(d, quit);
        take_shared(d, quit);
        admit(d, quit);
        int stepping = place_running(d);
        compact_active(d);
        if (d->n_active > 0 && stepping > 0) {
            if (run_step(d) == 0) usleep(5000); /* every sequence waits for a worker with room */
        } else if (d->n_active > 0) {
            usleep(20000); /* only jobs waiting for an ARM version */
        }
        compact_active(d);
        retire(d);
        gauges(d);
        gn_exchange_idle(d->ex);
        if (quit && !d->running && !d->pending) break;
    }
    return NULL;
}
