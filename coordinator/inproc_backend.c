/* inproc_backend.c — gn_coord_backend over engine/generate.h (inproc_backend.h). */
#include "inproc_backend.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "generate.h"
#include "gn_alloc.h"
#include "gn_time.h"
#include "model.h"
#include "prompt_model.h"
#include "token_report.h"
#include "tokenizer.h"

#define N_MODELS_MAX (1 + GN_INPROC_MAX_ARMS)

typedef struct job {
    gn_coord_job j; /* copied; its req/tenant pointers stay borrowed */
    gn_coord_sink *sink;
    atomic_int cancelled;
    double t_submit;
    int n_tokens[GN_OAI_MAX_N];
    struct job *next;
} job;

struct gn_inproc {
    gn_backend *be;
    gn_model *base;
    gn_model *arms[GN_INPROC_MAX_ARMS];
    char arm_names[GN_INPROC_MAX_ARMS][GN_OAI_ID_MAX];
    int n_arms;
    gn_prompt_model pm[N_MODELS_MAX]; /* chat templates over the models' own tokenizers */
    gn_generator *gen;
    char model_id[256];
    gn_coord_metrics *metrics;
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *head, *tail; /* queued */
    job *running;
    int n_waiting;
    int quit;
};

static void gauges(gn_inproc *x) {
    if (!x->metrics) return;
    gn_metric_set(x->metrics->requests_waiting, NULL, x->n_waiting);
    gn_metric_set(x->metrics->requests_running, NULL, x->running ? 1 : 0);
}

/* ---- the worker thread ---------------------------------------------------------- */

typedef struct run_ctx {
    gn_inproc *x;
    job *jb;
} run_ctx;

static int on_text(void *ud, int seq, int32_t token, const char *text, size_t len) {
    run_ctx *rc = ud;
    (void)token;
    rc->jb->sink->text(rc->jb->sink, seq, text, len, seq < GN_OAI_MAX_N ? rc->jb->n_tokens[seq] : 0);
    return atomic_load(&rc->jb->cancelled) ? 1 : 0;
}

static void on_step(void *ud, const gn_gen_step_info *info) {
    run_ctx *rc = ud;
    if (info->seq >= 0 && info->seq < GN_OAI_MAX_N) rc->jb->n_tokens[info->seq]++;
    if (rc->jb->j.req->logprobs >= 0 && rc->jb->sink->token && !atomic_load(&rc->jb->cancelled))
        gn_token_report(rc->jb->sink, info->seq, gn_generator_tokenizer(rc->x->gen), rc->jb->j.req->token_ids,
                        info->draw);
}

static void run_job(gn_inproc *x, job *jb) {
    const gn_coord_job *j = &jb->j;
    const gn_oai_request *r = j->req;
    gn_coord_result res;
    memset(&res, 0, sizeof res);
    res.queue_s = gn_mono_s() - jb->t_submit;
    gn_coord_choice_result ch[GN_OAI_MAX_N];
    gn_gen_request reqs[GN_OAI_MAX_N];
    gn_gen_result out[GN_OAI_MAX_N];
    memset(out, 0, sizeof out);
    char *prompts_txt[N_MODELS_MAX] = {0};
    const char *prompts[N_MODELS_MAX] = {0};
    int n = j->n;
    if (atomic_load(&jb->cancelled)) { /* cancelled while queued */
        gn_coord_sink_end(jb->sink, n, 0, NULL, res.queue_s);
        return;
    }
    /* Guidance over every loaded ARM; the ones the job does not name weigh 0. */
    gn_guidance g = gn_guidance_default();
    g.n_arms = x->n_arms;
    g.beta = (float)j->beta;
    for (int a = 0; a < x->n_arms; a++) g.weights[a] = 0;
    for (int k = 0; k < j->n_arms; k++)
        for (int a = 0; a < x->n_arms; a++)
            if (strcmp(j->arm_names[k], x->arm_names[a]) == 0) g.weights[a] = (float)j->weights[k];
    int rc = 0;
    if (r->kind == GN_OAI_CHAT) {
        for (int mi = 0; mi <= x->n_arms && !rc; mi++) {
            rc = gn_prompt_chat_text(&x->pm[mi], r, &prompts_txt[mi], &res.err);
            prompts[mi] = prompts_txt[mi];
        }
    }
    if (!rc) {
        for (int i = 0; i < n; i++) {
            gn_gen_request *q = &reqs[i];
            *q = gn_gen_default_request();
            q->prompt = r->kind == GN_OAI_CHAT ? prompts_txt[0] : r->prompt;
            q->prompts = r->kind == GN_OAI_CHAT ? prompts : NULL;
            q->add_special = r->kind == GN_OAI_CHAT ? 0 : 1;
            q->sampling.temperature = (float)j->temperature;
            q->sampling.top_p = (float)j->top_p;
            q->sampling.top_k = j->top_k;
            q->sampling.min_p = (float)j->min_p;
            q->sampling.seed = j->seed + (uint64_t)i;
            q->max_tokens = j->max_tokens;
            q->stop = (const char *const *)r->stop;
            q->n_stop = r->n_stop;
            q->ignore_eos = r->ignore_eos;
            q->guidance = &g;
            if (r->logprobs >= 0) { /* the token's log-prob and the alternatives asked for */
                int k = r->logprobs > r->top_logprobs ? r->logprobs : r->top_logprobs;
                q->want_logprob = 1;
                q->n_top = k < 0 ? 0 : k > GN_DRAW_MAX_TOP ? GN_DRAW_MAX_TOP : k;
            }
        }
        run_ctx ctx = {x, jb};
        gn_gen_callbacks cb = {on_text, on_step, &ctx};
        rc = gn_generate(x->gen, reqs, n, out, &cb, &res.err);
    }
    res.rc = rc;
    if (!rc) {
        for (int i = 0; i < n; i++)
            ch[i] = (gn_coord_choice_result){out[i].text, out[i].text_len, out[i].finish_reason, out[i].n_tokens};
        res.n_choices = n;
        res.choices = ch;
        res.prompt_tokens = out[0].n_prompt_tokens;
    } else {
        res.err.code = rc;
    }
    jb->sink->done(jb->sink, &res);
    for (int i = 0; i < n && !rc; i++) gn_gen_result_free(&out[i]);
    for (int mi = 0; mi < N_MODELS_MAX; mi++) gn_free(prompts_txt[mi]);
}

static void *worker(void *arg) {
    gn_inproc *x = arg;
    pthread_mutex_lock(&x->mu);
    for (;;) {
        while (!x->head && !x->quit) pthread_cond_wait(&x->cv, &x->mu);
        job *jb = x->head;
        if (!jb) break; /* quit with an empty queue */
        x->head = jb->next;
        if (!x->head) x->tail = NULL;
        x->n_waiting--;
        if (x->quit) atomic_store(&jb->cancelled, 1);
        x->running = jb;
        gauges(x);
        pthread_mutex_unlock(&x->mu);
        run_job(x, jb);
        pthread_mutex_lock(&x->mu);
        x->running = NULL;
        gauges(x);
        gn_free(jb);
    }
    pthread_mutex_unlock(&x->mu);
    return NULL;
}

/* ---- the interface -------------------------------------------------------------- */

static int inproc_submit(void *impl, const gn_coord_job *j, gn_coord_sink *sink, gn_err *err) {
    gn_inproc *x = impl;
    if (j->n < 1 || j->n > GN_OAI_MAX_N || j->max_tokens < 1)
        return gn_errf(err, GN_EINVAL, "n must be in 1..%d and max_tokens >= 1", GN_OAI_MAX_N);
    for (int k = 0; k < j->n_arms; k++) {
        int found = 0;
        for (int a = 0; a < x->n_arms; a++) found |= strcmp(j->arm_names[k], x->arm_names[a]) == 0;
        if (!found) return gn_errf(err, GN_ENOTFOUND, "reward model '%s' is not loaded", j->arm_names[k]);
    }
    gn_guidance g = gn_guidance_default();
    g.n_arms = 0;
    g.beta = (float)j->beta;
    if (gn_guidance_validate(&g, err)) return GN_EINVAL;
    gn_sampler_params sp = gn_sampler_default_params();
    sp.temperature = (float)j->temperature;
    sp.top_p = (float)j->top_p;
    sp.top_k = j->top_k;
    sp.min_p = (float)j->min_p;
    if (gn_sampler_validate_params(&sp, err)) return GN_EINVAL;
    job *jb = gn_calloc(1, sizeof *jb);
    if (!jb) return gn_errf(err, GN_ENOMEM, "out of memory");
    jb->j = *j;
    jb->sink = sink;
    jb->t_submit = gn_mono_s();
    atomic_init(&jb->cancelled, 0);
    pthread_mutex_lock(&x->mu);
    if (x->quit) {
        pthread_mutex_unlock(&x->mu);
        gn_free(jb);
        return gn_errf(err, GN_EIO, "the backend is shutting down");
    }
    if (x->tail)
        x->tail->next = jb;
    else
        x->head = jb;
    x->tail = jb;
    x->n_waiting++;
    gauges(x);
    pthread_cond_signal(&x->cv);
    pthread_mutex_unlock(&x->mu);
    return 0;
}

static void inproc_cancel(void *impl, uint64_t id) {
    gn_inproc *x = impl;
    pthread_mutex_lock(&x->mu);
    if (x->running && x->running->j.id == id) atomic_store(&x->running->cancelled, 1);
    for (job *jb = x->head; jb; jb = jb->next)
        if (jb->j.id == id) atomic_store(&jb->cancelled, 1);
    pthread_mutex_unlock(&x->mu);
}

static int inproc_ready(void *impl) {
    gn_inproc *x = impl;
    pthread_mutex_lock(&x->mu);
    int ok = !x->quit;
    pthread_mutex_unlock(&x->mu);
    return ok;
}

gn_coord_backend gn_inproc_backend(gn_inproc *x) {
    gn_coord_backend b = {x, x->model_id, inproc_submit, inproc_cancel, inproc_ready};
    return b;
}

const char *gn_inproc_tokenizer_hash(const gn_inproc *x) { return gn_tok_hash(gn_model_tokenizer(x->base)); }

/* ---- lifecycle ------------------------------------------------------------------ */

gn_inproc *gn_inproc_create(const gn_inproc_params *p, gn_err *err) {
    if (!p || !p->base_dir || p->n_arms < 0 || p->n_arms > GN_INPROC_MAX_ARMS) {
        gn_errf(err, GN_EINVAL, "inproc backend: base_dir and 0..%d ARMs required", GN_INPROC_MAX_ARMS);
        return NULL;
    }
    gn_inproc *x = gn_calloc(1, sizeof *x);
    if (!x) {
        gn_errf(err, GN_ENOMEM, "inproc backend: out of memory");
        return NULL;
    }
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->cv, NULL);
    x->metrics = p->metrics;
    gn_backend_params bp = gn_backend_default_params();
    bp.n_threads = p->n_threads;
    if (!(x->be = gn_backend_create(p->device ? p->device : "cpu", &bp, err))) goto fail;
    gn_model_params mp = gn_model_default_params();
    mp.load_tokenizer = 1;
    if (!(x->base = gn_model_load(p->base_dir, x->be, &mp, err))) {
        gn_err_prefix(err, "base model %s: ", p->base_dir);
        goto fail;
    }
    if (gn_prompt_model_init(&x->pm[0], gn_model_tokenizer(x->base), gn_model_dir(x->base), err)) goto fail;
    for (int i = 0; i < p->n_arms; i++) {
        const char *nm = p->arm_names[i];
        if (!nm || !*nm || strlen(nm) >= GN_OAI_ID_MAX) {
            gn_errf(err, GN_EINVAL, "inproc backend: ARM %d needs a name of 1..64 characters", i);
            goto fail;
        }
        for (int k = 0; k < i; k++)
            if (strcmp(x->arm_names[k], nm) == 0) {
                gn_errf(err, GN_EINVAL, "inproc backend: ARM name '%s' used twice", nm);
                goto fail;
            }
        snprintf(x->arm_names[i], sizeof x->arm_names[i], "%s", nm);
        if (!(x->arms[i] = gn_model_load(p->arm_dirs[i], x->be, &mp, err))) {
            gn_err_prefix(err, "ARM %s (%s): ", nm, p->arm_dirs[i]);
            goto fail;
        }
        x->n_arms = i + 1;
        if (gn_prompt_model_init(&x->pm[i + 1], gn_model_tokenizer(x->arms[i]), gn_model_dir(x->arms[i]), err))
            goto fail;
    }
    gn_guidance g = gn_guidance_default();
    g.n_arms = x->n_arms;
    gn_runner_params rp = gn_runner_default_params();
    rp.max_seqs = GN_OAI_MAX_N;
    if (!(x->gen = gn_generator_create(x->base, x->arms, x->n_arms, &g, &rp, err))) goto fail;
    if (p->model_id) {
        snprintf(x->model_id, sizeof x->model_id, "%s", p->model_id);
    } else {
        const char *b = strrchr(p->base_dir, '/');
        snprintf(x->model_id, sizeof x->model_id, "%s", b && b[1] ? b + 1 : p->base_dir);
    }
    if (pthread_create(&x->thread, NULL, worker, x)) {
        gn_errf(err, GN_EIO, "inproc backend: cannot start the worker thread");
        goto fail;
    }
    x->thread_started = 1;
    gauges(x);
    return x;
fail:
    gn_inproc_free(x);
    return NULL;
}

void gn_inproc_free(gn_inproc *x) {
    if (!x) return;
    if (x->thread_started) {
        pthread_mutex_lock(&x->mu);
        x->quit = 1;
        for (job *jb = x->head; jb; jb = jb->next) atomic_store(&jb->cancelled, 1);
        if (x->running) atomic_store(&x->running->cancelled, 1);
        pthread_cond_broadcast(&x->cv);
        pthread_mutex_unlock(&x->mu);
        pthread_join(x->thread, NULL);
    }
    gn_generator_free(x->gen);
    for (int i = 0; i < N_MODELS_MAX; i++) {
        gn_prompt_model_clear(&x->pm[i]);
    }
    for (int i = 0; i < x->n_arms; i++) gn_model_free(x->arms[i]);
    gn_model_free(x->base);
    gn_backend_free(x->be);
    pthread_cond_destroy(&x->cv);
    pthread_mutex_destroy(&x->mu);
    gn_free(x);
}
