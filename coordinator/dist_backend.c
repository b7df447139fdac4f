/* dist_backend.c — the distributed gn_coord_backend: jobs in (prepare,
 * queue, cancel), create and free. The loop itself is scheduler.c, one step
 * over the workers step_exchange.c, ARM placement arm_pin.c
 * (dist_internal.h says who does what). */
#include "dist_backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "dist_internal.h"
#include "gn_alloc.h"
#include "hf_config.h"
#include "model_config.h"
#include "tokenizer.h"
#include "wire.h"

int gn_dist_arm_version_num(const char *version, uint32_t *out) {
    char *end = NULL;
    unsigned long vn = strtoul(version, &end, 10);
    if (end == version || *end || vn == 0 || vn > 0xffffffffUL || strlen(version) >= GN_CTL_ID_MAX) return GN_EINVAL;
    *out = (uint32_t)vn;
    return 0;
}

gn_dist_params gn_dist_default_params(void) {
    gn_dist_params p;
    memset(&p, 0, sizeof p);
    p.redis_timeout_ms = 2000;
    p.step_timeout_ms = 30000;
    p.liveness_ms = 1000;
    p.arm_wait_ms = 30000;
    p.capacity_wait_ms = 60000;
    p.max_batch = 64;
    p.rows = "sparse";
    p.epsilon = 1e-6;
    p.sparse_k = 64;
    p.sparse_k_max = 2048;
    return p;
}

/* ---- prompts ----------------------------------------------------------------------- */

/* The ARM at `path` (under mu_ctl): its tokenizer and chat template, loaded
 * once. Falls back to the base model's when the directory cannot be read here
 * (the registry's hash guarantees the same tokenizer; only the template could
 * differ). */
static const gn_prompt_model *arm_prompt_model(gn_dist *d, const char *path) {
    for (int i = 0; i < d->n_minfo; i++)
        if (strcmp(d->arms[i].path, path) == 0) return &d->arms[i];
    if (d->n_minfo == MAX_MINFO) return &d->base;
    gn_err e = {0};
    gn_prompt_model *m = &d->arms[d->n_minfo];
    if (gn_prompt_model_load(m, path, &e)) {
        gn_wire_log("warn", "coordinator", "event=arm_tokenizer_unreadable path=\"%s\" msg=\"%s\"", path, e.msg);
        return &d->base;
    }
    d->n_minfo++;
    return m;
}

/* The prompt tokens of model mi for job jb (m: its tokenizer/template). */
static int job_prompt(gn_dist *d, djob *jb, int mi, const gn_prompt_model *m, gn_err *err) {
    int rc = gn_prompt_tokens(m, jb->j.req, &jb->prompt[mi], &jb->n_prompt[mi], err);
    if (rc) return rc;
    if (jb->n_prompt[mi] > d->ctx_limit)
        return gn_errf(err, GN_ERANGE, "prompt of %d tokens exceeds the context limit of %d", jb->n_prompt[mi],
                       d->ctx_limit);
    return 0;
}

/* ---- jobs in ---------------------------------------------------------------------- */

static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* What makes two jobs' draws certify alike: their ARMs (name, version,
 * weight), beta and sampling settings, and whether log-probs are asked. */
static uint64_t job_kind(const djob *jb) {
    uint64_t h = 0xcbf29ce484222325ull;
    const gn_draw_params *p = &jb->dp;
    for (int k = 0; k < jb->n_arms; k++) {
        h = fnv1a(h, jb->j.arm_names[k], strlen(jb->j.arm_names[k]) + 1);
        h = fnv1a(h, &jb->arm_vnum[k], sizeof jb->arm_vnum[k]);
        h = fnv1a(h, &p->guidance.weights[k], sizeof p->guidance.weights[k]);
    }
    h = fnv1a(h, &p->guidance.beta, sizeof p->guidance.beta);
    h = fnv1a(h, &p->sampling.temperature, sizeof p->sampling.temperature);
    h = fnv1a(h, &p->sampling.top_k, sizeof p->sampling.top_k);
    h = fnv1a(h, &p->sampling.top_p, sizeof p->sampling.top_p);
    h = fnv1a(h, &p->sampling.min_p, sizeof p->sampling.min_p);
    h = fnv1a(h, &p->want_logprob, sizeof p->want_logprob);
    return fnv1a(h, &p->n_top, sizeof p->n_top);
}

/* Checks job j and prepares it for the scheduler: its draw parameters, every
 * model's prompt tokenized, every ARM pinned to the registry's current version. */
int gn_dist_job_prepare(gn_dist *d, const gn_coord_job *j, gn_coord_sink *sink, djob **out, gn_err *err) {
    *out = NULL;
    if (j->n < 1 || j->n > GN_OAI_MAX_N || j->max_tokens < 1)
        return gn_errf(err, GN_EINVAL, "n must be in 1..%d and max_tokens >= 1", GN_OAI_MAX_N);
    if (j->n > d->p.max_batch)
        return gn_errf(err, GN_EINVAL, "n = %d exceeds the batch limit of %d", j->n, d->p.max_batch);
    if (j->n_arms < 0 || j->n_arms > GN_OAI_MAX_ARMS) return gn_errf(err, GN_EINVAL, "too many reward models");
    djob *jb = gn_calloc(1, sizeof *jb);
    if (!jb) return gn_errf(err, GN_ENOMEM, "out of memory");
    jb->j = *j;
    jb->sink = sink;
    jb->t_submit = jb->t_pinned = gn_mono_s();
    atomic_init(&jb->cancelled, 0);
    jb->n_arms = j->n_arms;
    gn_draw_params dp = gn_draw_default_params();
    dp.guidance.n_arms = j->n_arms;
    dp.guidance.beta = (float)j->beta;
    for (int k = 0; k < j->n_arms; k++) dp.guidance.weights[k] = (float)j->weights[k];
    dp.sampling.temperature = (float)j->temperature;
    dp.sampling.top_p = (float)j->top_p;
    dp.sampling.top_k = j->top_k;
    dp.sampling.min_p = (float)j->min_p;
    dp.epsilon = d->p.epsilon;
    if (j->req->logprobs >= 0) {
        int k = j->req->logprobs > j->req->top_logprobs ? j->req->logprobs : j->req->top_logprobs;
        dp.want_logprob = 1;
        dp.n_top = k < GN_OAI_MAX_TOP ? k : GN_OAI_MAX_TOP;
    }
    jb->dp = dp;
    int rc = gn_guidance_validate(&dp.guidance, err);
    if (!rc) rc = gn_sampler_validate_params(&dp.sampling, err);
    if (rc) {
        gn_sched_job_free(jb);
        return GN_EINVAL;
    }
    if ((rc = job_prompt(d, jb, 0, &d->base, err))) goto fail;
    int room = d->ctx_limit - jb->n_prompt[0];
    /* pin every ARM to the registry's current version, now */
    pthread_mutex_lock(&d->mu_ctl);
    for (int k = 0; k < j->n_arms && !rc; k++) {
        gn_ctl_arm_version v;
        rc = gn_ctl_arm_get(d->ctl_submit, j->arm_names[k], NULL, &v, err);
        if (rc == GN_ENOTFOUND) {
            gn_errf(err, GN_ENOTFOUND, "reward model '%s' is not registered", j->arm_names[k]);
            break;
        }
        if (rc) break;
        if (gn_dist_arm_version_num(v.version, &jb->arm_vnum[k])) {
            rc = gn_errf(err, GN_EINVAL, "ARM %s: version '%s' is not a number >= 1", j->arm_names[k], v.version);
            break;
        }
        snprintf(jb->arm_ver[k], sizeof jb->arm_ver[k], "%s", v.version);
        const gn_prompt_model *m = arm_prompt_model(d, v.path);
        if ((rc = job_prompt(d, jb, 1 + k, m, err))) break;
        if (d->ctx_limit - jb->n_prompt[1 + k] < room) room = d->ctx_limit - jb->n_prompt[1 + k];
    }
    pthread_mutex_unlock(&d->mu_ctl);
    if (rc) goto fail;
    jb->cap = j->max_tokens < room + 1 ? j->max_tokens : room + 1;
    jb->kind = job_kind(jb);
    jb->arm_deadline = gn_mono_s() + d->p.arm_wait_ms / 1000.0;
    *out = jb;
    return 0;
fail:
    gn_sched_job_free(jb);
    return rc;
}

/* Hands a prepared job to the scheduler (any thread). On failure the caller
 * still owns jb. */
int gn_dist_job_enqueue(gn_dist *d, djob *jb, gn_err *err) {
    pthread_mutex_lock(&d->mu);
    if (d->quit) {
        pthread_mutex_unlock(&d->mu);
        return gn_errf(err, GN_EIO, "the backend is shutting down");
    }
    atomic_fetch_add(&d->load, jb->j.n);
    if (d->in_tail)
        d->in_tail->next = jb;
    else
        d->in_head = jb;
    d->in_tail = jb;
    d->n_in++;
    jb->all_next = d->all;
    if (d->all) d->all->all_prev = jb;
    d->all = jb;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
    return 0;
}

static int dist_submit(void *impl, const gn_coord_job *j, gn_coord_sink *sink, gn_err *err) {
    gn_dist *d = impl;
    djob *jb;
    int rc = gn_dist_job_prepare(d, j, sink, &jb, err);
    if (rc) return rc;
    if (d->share && j->body && !atomic_load(&d->draining) && atomic_load(&d->load) + j->n > d->p.max_batch) {
        gn_err e = {0};
        if (gn_share_export(d->share, j, sink, &e) == 0) {
            gn_sched_job_free(jb);
            return 0;
        }
        gn_wire_log("warn", "coordinator", "event=queue_unavailable job=%llu msg=\"%s\" action=run_here",
                    (unsigned long long)j->id, e.msg);
    }
    if ((rc = gn_dist_job_enqueue(d, jb, err))) gn_sched_job_free(jb);
    return rc;
}

void gn_dist_cancel_id(void *impl, uint64_t id) {
    gn_dist *d = impl;
    if (d->share && gn_share_cancel(d->share, id)) return;
    pthread_mutex_lock(&d->mu);
    for (djob *jb = d->all; jb; jb = jb->all_next)
        if (jb->j.id == id) atomic_store(&jb->cancelled, 1);
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

static int dist_ready(void *impl) {
    gn_dist *d = impl;
    pthread_mutex_lock(&d->mu);
    int ok = !d->quit;
    pthread_mutex_unlock(&d->mu);
    return ok;
}

gn_coord_backend gn_dist_backend(gn_dist *d) {
    gn_coord_backend b = {d, d->model_id, dist_submit, gn_dist_cancel_id, dist_ready};
    return b;
}

void gn_dist_drain(gn_dist *d) { atomic_store(&d->draining, 1); }

int gn_dist_peer_jobs(gn_dist *d) { return d->share ? gn_share_remote_running(d->share) : 0; }

void gn_dist_get_stats(gn_dist *d, gn_dist_stats *out) {
    pthread_mutex_lock(&d->mu);
    *out = d->stats;
    pthread_mutex_unlock(&d->mu);
}

/* ---- lifecycle --------------------------------------------------------------------- */

/* A name unique among coordinators sharing one queue: coord-HOST-PID. */
static void default_id(char *out, size_t cap) {
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    for (char *c = host; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-')) *c = '-';
    snprintf(out, cap, "coord-%.40s-%d", host, (int)getpid());
}

/* Sequence ids are unique across every coordinator that shares a worker (a
 * worker knows sequences by id): a random 64-bit start, counted up. */
static uint64_t first_seq_id(void) {
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = ((uint64_t)getpid() << 40) ^ ((uint64_t)time(NULL) << 20) ^ (uint64_t)(uintptr_t)&r;
    return (r & ~0xffffffull) | 1; /* room for 16M sequences before the low bits wrap */
}

static int add_counters(gn_dist *d, gn_err *err) {
    gn_metrics *reg = d->metrics->reg;
    struct {
        gn_metric **slot;
        const char *name, *help;
    } defs[] = {
        {&d->m_steps, "genarm:coordinator_steps_total", "Batched decoding steps run by the scheduler."},
        {&d->m_step_s, "genarm:coordinator_step_seconds_total",
         "Wall time of the steps (plan, exchange, fetches, draws, streaming)."},
        {&d->m_wait_s, "genarm:coordinator_step_wait_seconds_total",
         "Part of the steps spent waiting for worker replies (first send to last reply)."},
        {&d->m_compute_s, "genarm:coordinator_step_compute_seconds_total",
         "Part of the steps that was model compute on the workers (forward pass and log-softmax; "
         "the slowest worker per step)."},
        {&d->m_tokens, "genarm:coordinator_sampled_tokens_total", "Tokens sampled by the scheduler."},
    };
    for (size_t i = 0; i < sizeof defs / sizeof *defs; i++)
        if (!(*defs[i].slot = gn_metrics_add(reg, GN_METRIC_COUNTER, defs[i].name, defs[i].help, NULL, NULL, 0, err)))
            return err->code ? err->code : GN_ENOMEM;
    return 0;
}

gn_dist *gn_dist_create(const gn_dist_params *p, gn_err *err) {
    if (!p || !p->base_endpoint || !p->base_model_dir || !p->redis_host || !*p->redis_host || p->redis_port <= 0 ||
        p->redis_port > 65535) {
        gn_errf(err, GN_EINVAL, "dist backend: base_endpoint, base_model_dir and redis required");
        return NULL;
    }
    gn_dist_params def = gn_dist_default_params();
    gn_rows_policy rows;
    if (gn_rows_policy_parse(p->rows ? p->rows : def.rows, &rows)) {
        gn_errf(err, GN_EINVAL, "rows '%s': expected sparse, f32, f16 or bf16", p->rows);
        return NULL;
    }
    if (p->epsilon < 0 || p->epsilon > 0.5) {
        gn_errf(err, GN_EINVAL, "epsilon %g: expected 0 .. 0.5", p->epsilon);
        return NULL;
    }
    gn_dist *d = gn_calloc(1, sizeof *d);
    if (!d) {
        gn_errf(err, GN_ENOMEM, "dist backend: out of memory");
        return NULL;
    }
    pthread_mutex_init(&d->mu, NULL);
    pthread_mutex_init(&d->mu_ctl, NULL);
    pthread_cond_init(&d->cv, NULL);
    d->p = *p;
    if (d->p.redis_timeout_ms <= 0) d->p.redis_timeout_ms = def.redis_timeout_ms;
    if (d->p.step_timeout_ms <= 0) d->p.step_timeout_ms = def.step_timeout_ms;
    if (d->p.liveness_ms <= 0) d->p.liveness_ms = def.liveness_ms;
    if (d->p.arm_wait_ms <= 0) d->p.arm_wait_ms = def.arm_wait_ms;
    if (d->p.capacity_wait_ms <= 0) d->p.capacity_wait_ms = def.capacity_wait_ms;
    if (d->p.max_batch <= 0) d->p.max_batch = def.max_batch;
    if (d->p.max_batch > 256) d->p.max_batch = 256;
    if (d->p.epsilon == 0) d->p.epsilon = def.epsilon;
    if (d->p.sparse_k == 0) d->p.sparse_k = def.sparse_k;
    if (d->p.sparse_k_max == 0) d->p.sparse_k_max = def.sparse_k_max;
    d->metrics = p->metrics;
    if (p->coordinator_id)
        snprintf(d->coord_id, sizeof d->coord_id, "%s", p->coordinator_id);
    else
        default_id(d->coord_id, sizeof d->coord_id);
    atomic_init(&d->load, 0);
    atomic_init(&d->draining, 0);
    d->next_seq = first_seq_id();
    if (p->model_id) {
        snprintf(d->model_id, sizeof d->model_id, "%s", p->model_id);
    } else {
        const char *b = strrchr(p->base_model_dir, '/');
        snprintf(d->model_id, sizeof d->model_id, "%s", b && b[1] ? b + 1 : p->base_model_dir);
    }
    if (gn_prompt_model_load(&d->base, p->base_model_dir, err)) {
        gn_err_prefix(err, "base model %s: ", p->base_model_dir);
        goto fail;
    }
    gn_model_config cfg;
    if (gn_hf_config_load(p->base_model_dir, &cfg, err)) goto fail;
    d->n_vocab = cfg.n_vocab;
    d->ctx_limit = 4096;
    if (cfg.max_pos > 0 && cfg.max_pos < d->ctx_limit) d->ctx_limit = cfg.max_pos;
    for (int i = 0; i < cfg.n_eos && d->n_eos < MAX_EOS_IDS; i++)
        if (cfg.eos_token_ids[i] >= 0 && cfg.eos_token_ids[i] < d->n_vocab) d->eos[d->n_eos++] = cfg.eos_token_ids[i];
    int te = gn_tok_eos(d->base.tok);
    int known = 0;
    for (int i = 0; i < d->n_eos; i++) known |= d->eos[i] == te;
    if (te >= 0 && te < d->n_vocab && !known && d->n_eos < MAX_EOS_IDS) d->eos[d->n_eos++] = te;
    if (!(d->ctl_submit = gn_ctl_connect(p->redis_host, p->redis_port, d->p.redis_timeout_ms, err))) goto fail;
    gn_arm_pin_params ap = gn_arm_pin_default_params();
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    ap.redis_host = p->redis_host;
    ap.redis_port = p->redis_port;
    ap.redis_timeout_ms = d->p.redis_timeout_ms;
    ap.coordinator_id = d->coord_id;
    ap.ack_parked = p->no_share;
    ap.local_host = p->no_ipc ? NULL : host;
    ap.metrics = p->metrics;
    if (!(d->pin = gn_arm_pin_create(&ap, err))) goto fail;
    gn_exchange_params xp = gn_exchange_default_params();
    xp.base_endpoint = p->base_endpoint;
    xp.n_vocab = d->n_vocab;
    xp.max_batch = d->p.max_batch;
    xp.step_timeout_ms = d->p.step_timeout_ms;
    xp.liveness_ms = d->p.liveness_ms;
    xp.rows = rows;
    xp.k_first = d->p.sparse_k;
    xp.k_max = d->p.sparse_k_max;
    xp.metrics = p->metrics;
    if (!(d->ex = gn_exchange_create(&xp, err))) goto fail;
    if (!p->no_share) {
        gn_share_params sp = gn_share_default_params();
        sp.coordinator_id = d->coord_id;
        if (p->peer_bind) sp.bind = p->peer_bind;
        sp.advertise = p->peer_advertise;
        sp.redis_host = p->redis_host;
        sp.redis_port = p->redis_port;
        sp.redis_timeout_ms = d->p.redis_timeout_ms;
        if (p->peer_timeout_ms > 0) sp.peer_timeout_ms = p->peer_timeout_ms;
        sp.metrics = p->metrics;
        if (!(d->share = gn_share_create(&sp, err))) goto fail;
    }
    int mb = d->p.max_batch;
    d->n_drawers = d->p.sample_threads > 1 ? d->p.sample_threads : 1;
    if (d->n_drawers > 64) d->n_drawers = 64;
    d->drawers = gn_calloc((size_t)d->n_drawers, sizeof *d->drawers);
    d->active = gn_calloc((size_t)mb, sizeof *d->active);
    d->work = gn_calloc((size_t)mb, sizeof *d->work);
    if (!d->drawers || !d->active || !d->work) goto oom;
    for (int i = 0; i < d->n_drawers; i++)
        if (!(d->drawers[i] = gn_drawer_create(d->n_vocab, err))) goto fail;
    if (d->n_drawers > 1 && !(d->pool = gn_pool_create(d->n_drawers))) goto oom;
    if (d->metrics && add_counters(d, err)) goto fail;
    if (pthread_create(&d->thread, NULL, gn_sched_main, d)) {
        gn_errf(err, GN_EIO, "dist backend: cannot start the scheduler thread");
        goto fail;
    }
    d->thread_started = 1;
    return d;
oom:
    gn_errf(err, GN_ENOMEM, "dist backend: out of memory");
fail:
    gn_dist_free(d);
    return NULL;
}

void gn_dist_free(gn_dist *d) {
    if (!d) return;
    if (d->thread_started) {
        pthread_mutex_lock(&d->mu);
        d->quit = 1;
        for (djob *jb = d->in_head; jb; jb = jb->next) atomic_store(&jb->cancelled, 1);
        pthread_cond_broadcast(&d->cv);
        pthread_mutex_unlock(&d->mu);
        pthread_join(d->thread, NULL);
    }
    gn_share_free(d->share); /* after the scheduler: taken jobs have ended */
    gn_exchange_free(d->ex);
    gn_arm_pin_free(d->pin);
    gn_pool_free(d->pool);
    for (int i = 0; d->drawers && i < d->n_drawers; i++) gn_drawer_free(d->drawers[i]);
    gn_free(d->drawers);
    gn_free(d->active);
    gn_free(d->work);
    gn_ctl_free(d->ctl_submit);
    for (int i = 0; i < d->n_minfo; i++) gn_prompt_model_clear(&d->arms[i]);
    gn_prompt_model_clear(&d->base);
    pthread_cond_destroy(&d->cv);
    pthread_mutex_destroy(&d->mu);
    pthread_mutex_destroy(&d->mu_ctl);
    gn_free(d);
}
