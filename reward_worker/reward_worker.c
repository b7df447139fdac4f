/* reward_worker — holds autoregressive reward models (ARMs), answers the step
 * protocol addressed by ARM name and version, registers itself in Redis and
 * hot-swaps ARM versions without dropping or mixing sequences. StepRequests
 * that arrive together (several coordinators, several ARMs) are served with
 * one forward pass per model host; sparse rows are kept for RowFetch.
 *
 *   reward_worker --bind ENDPOINT[,ENDPOINT...] --redis HOST:PORT --worker-id ID
 *                 [--arm NAME[@VERSION]]... [--device cpu|cuda:N] [--threads N]
 *                 [--capacity N] [--ready-file F] [--idle-timeout-s S]
 *                 [--heartbeat-ms MS] [--advertise ENDPOINT] [--max-arms N]
 *                 [--no-load-waiting] [--gather-us N] [--max-batch N]
 *                 [--metrics-listen HOST:PORT]
 *
 * The routing/hot-swap rule lives in arm_set.{h,c}; this file is the process:
 * options, the Redis side (ARM registry lookups, the worker record with its
 * heartbeat TTL, swap notifications) and the step-server callbacks.
 *
 * Following promotions: the worker subscribes to the channels genarm:swaps and
 * genarm:load for promptness, and on every heartbeat also compares each held
 * ARM's registry "current" with the one it last saw (level-triggered, so a
 * notification lost while the connection was down is caught up within one
 * heartbeat). A registry change to version k+1 loads k+1 and makes it current;
 * k drains (arm_set.h).
 *
 * Exit status: 0 after SIGTERM/SIGINT (queued requests answered
 * SHUTTING_DOWN, record removed from the registry), 1 on a start-up failure,
 * 2 on a bad command line. Logs: key=value lines on stderr. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "arm_set.h"
#include "backend.h"
#include "control.h"
#include "gn_alloc.h"
#include "gn_cli.h"
#include "lora_dir.h"
#include "step_server.h"
#include "wire.h"
#include "worker_metrics.h"

#define COMP "reward_worker"
#define MAX_CLI_ARMS 32
#define MAX_SEEN 64

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

typedef struct opts {
    const char *bind, *redis, *worker_id, *device, *ready_file, *advertise, *metrics_listen;
    const char *arms[MAX_CLI_ARMS];
    int n_arms, threads, capacity, heartbeat_ms, max_arms, load_waiting, gather_us, max_batch;
    double idle_timeout_s;
} opts;

typedef struct seen_current {
    char name[GN_ARM_NAME_MAX];
    char version[GN_CTL_ID_MAX]; /* the registry's current version when last looked */
} seen_current;

typedef struct worker {
    opts o;
    char redis_host[256];
    int redis_port;
    gn_ctl *ctl; /* commands */
    gn_ctl *sub; /* subscriber: genarm:swaps, genarm:load (NULL when it failed) */
    gn_arms *arms;
    gn_step_server *srv;
    gn_worker_metrics *wm;
    char endpoint[GN_CTL_PATH_MAX]; /* the record's endpoint: --advertise, else the first TCP one bound */
    char ipc[GN_CTL_PATH_MAX];      /* the first ipc:// endpoint bound, "" when none */
    char host[GN_CTL_HOST_MAX];
    int64_t next_hb_ms;
    int reconcile_now;
    uint64_t published_gen;
    int published_once;
    seen_current seen[MAX_SEEN];
    int n_seen;
    struct {
        char ref[GN_CTL_REF_MAX];
        int64_t until_ms;
    } backoff[16];       /* name@version whose load failed recently: not retried before until_ms */
    int64_t sub_retry_ms; /* subscriber failed: next poll not before this */
    gn_step_load load; /* what Heartbeat replies report (5 KB: here, not on the stack) */
    char cmd_msg[GN_ERR_MSG_MAX];
} worker;

/* ---- options ---------------------------------------------------------------- */

static void usage(FILE *f) {
    fprintf(f,
            "usage: reward_worker --bind ENDPOINT[,ENDPOINT...] --redis HOST:PORT --worker-id ID\n"
            "                     [--arm NAME[@VERSION]]... [--device cpu|cuda:N] [--threads N]\n"
            "                     [--capacity N] [--ready-file F] [--idle-timeout-s S]\n"
            "                     [--heartbeat-ms MS] [--advertise ENDPOINT] [--max-arms N]\n"
            "                     [--no-load-waiting] [--gather-us N] [--max-batch N]\n"
            "                     [--metrics-listen HOST:PORT]\n");
}

/* A registry version string as the protocol's uint32 (>= 1). */
static int parse_version(const char *s, uint32_t *out) {
    if (!s || !*s || strlen(s) > 10)
        return -1;
    unsigned long long x = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        x = x * 10 + (unsigned)(*p - '0');
    }
    if (x < 1 || x > UINT32_MAX)
        return -1;
    *out = (uint32_t)x;
    return 0;
}

/* "NAME" or "NAME@VERSION" -> name (GN_ARM_NAME_MAX) and version (0 = current). */
static int parse_arm_ref(const char *ref, char *name, uint32_t *version) {
    const char *at = strchr(ref, '@');
    size_t n = at ? (size_t)(at - ref) : strlen(ref);
    if (n == 0 || n >= GN_ARM_NAME_MAX)
        return -1;
    memcpy(name, ref, n);
    name[n] = 0;
    if (!gn_arms_name_valid(name))
        return -1;
    *version = 0;
    return at ? parse_version(at + 1, version) : 0;
}

static int parse_opts(int argc, char **argv, opts *o) {
    memset(o, 0, sizeof *o);
    o->device = "cpu";
    o->capacity = 64;
    o->idle_timeout_s = 300;
    o->heartbeat_ms = 2000;
    o->max_arms = 16;
    o->load_waiting = 1;
    o->gather_us = gn_step_server_default_params().gather_us;
    o->max_batch = 256;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(a, "--no-load-waiting")) {
            o->load_waiting = 0;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "reward_worker: %s: missing value\n", a);
            return -1;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--bind")) o->bind = v;
        else if (!strcmp(a, "--redis")) o->redis = v;
        else if (!strcmp(a, "--worker-id")) o->worker_id = v;
        else if (!strcmp(a, "--device")) o->device = v;
        else if (!strcmp(a, "--ready-file")) o->ready_file = v;
        else if (!strcmp(a, "--advertise")) o->advertise = v;
        else if (!strcmp(a, "--metrics-listen")) o->metrics_listen = v;
        else if (!strcmp(a, "--gather-us")) { if (gn_cli_int("reward_worker", a, v, 0, 10000000, &o->gather_us)) return -1; }
        else if (!strcmp(a, "--max-batch")) { if (gn_cli_int("reward_worker", a, v, 1, 65536, &o->max_batch)) return -1; }
        else if (!strcmp(a, "--arm")) {
            char name[GN_ARM_NAME_MAX];
            uint32_t ver;
            if (o->n_arms == MAX_CLI_ARMS || parse_arm_ref(v, name, &ver) != 0) {
                fprintf(stderr, "reward_worker: --arm %s: expected NAME or NAME@VERSION (version "
                                "a decimal number >= 1), at most %d\n", v, MAX_CLI_ARMS);
                return -1;
            }
            o->arms[o->n_arms++] = v;
        }
        else if (!strcmp(a, "--threads")) { if (gn_cli_int("reward_worker", a, v, 0, 1024, &o->threads)) return -1; }
        else if (!strcmp(a, "--capacity")) { if (gn_cli_int("reward_worker", a, v, 1, 65536, &o->capacity)) return -1; }
        else if (!strcmp(a, "--heartbeat-ms")) { if (gn_cli_int("reward_worker", a, v, 20, 600000, &o->heartbeat_ms)) return -1; }
        else if (!strcmp(a, "--max-arms")) { if (gn_cli_int("reward_worker", a, v, 1, GN_CTL_WORKER_MAX_ARMS, &o->max_arms)) return -1; }
        else if (!strcmp(a, "--idle-timeout-s")) {
            char *end;
            o->idle_timeout_s = strtod(v, &end);
            if (*end || end == v || !(o->idle_timeout_s >= 0) || o->idle_timeout_s > 1e9) {
                fprintf(stderr, "reward_worker: --idle-timeout-s %s: expected seconds >= 0\n", v);
                return -1;
            }
        } else {
            fprintf(stderr, "reward_worker: unknown option %s\n", a);
            return -1;
        }
    }
    if (!o->bind || !o->redis || !o->worker_id) {
        fprintf(stderr, "reward_worker: --bind, --redis and --worker-id are required\n");
        return -1;
    }
    if (!gn_ctl_id_valid(o->worker_id)) {
        fprintf(stderr, "reward_worker: --worker-id %s: 1..64 characters of [A-Za-z0-9._-]\n",
                o->worker_id);
        return -1;
    }
    return 0;
}

static int split_host_port(const char *s, char *host, size_t cap, int *port) {
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= cap)
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    int p;
    if (gn_cli_int("reward_worker", "--redis", colon + 1, 1, 65535, &p))
        return -1;
    *port = p;
    return 0;
}

/* ---- the Redis side ----------------------------------------------------------- */

static seen_current *seen_slot(worker *w, const char *name) {
    for (int i = 0; i < w->n_seen; i++)
        if (!strcmp(w->seen[i].name, name))
            return &w->seen[i];
    if (w->n_seen == MAX_SEEN)
        return NULL;
    seen_current *s = &w->seen[w->n_seen++];
    size_t len = strnlen(name, sizeof s->name - 1); /* names are checked to fit (control.h) */
    memcpy(s->name, name, len);
    s->name[len] = '\0';
    s->version[0] = 0;
    return s;
}

#define LOAD_BACKOFF_MS 30000

/* 1 when ref failed to load less than LOAD_BACKOFF_MS ago (a model load is
 * expensive: a broken registry entry must not be retried every heartbeat). */
static int backoff_active(const worker *w, const char *ref, int64_t now_ms) {
    for (size_t i = 0; i < sizeof w->backoff / sizeof w->backoff[0]; i++)
        if (w->backoff[i].until_ms > now_ms && !strcmp(w->backoff[i].ref, ref))
            return 1;
    return 0;
}

static void backoff_note(worker *w, const char *ref, int64_t now_ms) {
    size_t k = 0;
    for (size_t i = 0; i < sizeof w->backoff / sizeof w->backoff[0]; i++)
        if (w->backoff[i].until_ms < w->backoff[k].until_ms)
            k = i; /* the oldest (or an empty) slot */
    snprintf(w->backoff[k].ref, sizeof w->backoff[k].ref, "%s", ref);
    w->backoff[k].until_ms = now_ms + LOAD_BACKOFF_MS;
}

/* Resolver for arm_set: the ARM registry. */
static int resolve(void *ud, const char *name, uint32_t version, gn_arm_source *out, gn_err *err) {
    worker *w = ud;
    gn_ctl_arm_version cur, v;
    int rc = gn_ctl_arm_get(w->ctl, name, NULL, &cur, err);
    if (rc == GN_ENOTFOUND && version == 0)
        return gn_errf(err, GN_ENOTFOUND, "ARM %s is not registered (or has no current version)",
                       name);
    if (rc && rc != GN_ENOTFOUND)
        return rc;
    if (rc == 0) {
        seen_current *s = seen_slot(w, name);
        if (s)
            snprintf(s->version, sizeof s->version, "%s", cur.version);
    }
    if (version == 0) {
        v = cur;
    } else {
        char vs[16];
        snprintf(vs, sizeof vs, "%u", version);
        if ((rc = gn_ctl_arm_get(w->ctl, name, vs, &v, err)) != 0)
            return rc == GN_ENOTFOUND ? gn_errf(err, GN_ENOTFOUND, "ARM %s@%u is not registered",
                                                name, version)
                                      : rc;
    }
    if (parse_version(v.version, &out->version) != 0)
        return gn_errf(err, GN_EUNSUP, "ARM %s: registry version \"%s\" is not a decimal number "
                       ">= 1 (the step protocol addresses versions as uint32)", name, v.version);
    if (gn_lora_is_adapter_dir(v.path)) { /* a PEFT adapter: served on its backbone, shared */
        snprintf(out->lora_path, sizeof out->lora_path, "%s", v.path);
        if ((rc = gn_lora_backbone_dir(v.path, out->path, sizeof out->path, err)) != 0)
            return gn_err_prefix(err, "ARM %s@%s: ", name, v.version);
    } else {
        snprintf(out->path, sizeof out->path, "%s", v.path);
        out->lora_path[0] = 0;
    }
    snprintf(out->tokenizer_hash, sizeof out->tokenizer_hash, "%s", v.tokenizer_hash);
    out->is_current = version == 0 || !strcmp(v.version, cur.version);
    return 0;
}

/* Writes the worker record (endpoint, ARMs held as name@version, capacity,
 * load) and renews its TTL. */
static void publish(worker *w, int64_t now_ms) {
    gn_ctl_worker rec;
    memset(&rec, 0, sizeof rec);
    snprintf(rec.id, sizeof rec.id, "%s", w->o.worker_id);
    rec.kind = GN_CTL_WORKER_REWARD;
    snprintf(rec.endpoint, sizeof rec.endpoint, "%s", w->endpoint);
    snprintf(rec.host, sizeof rec.host, "%s", w->host);
    snprintf(rec.ipc, sizeof rec.ipc, "%s", w->ipc);
    int n = gn_arms_count(w->arms);
    for (int i = 0; i < n && rec.n_arms < GN_CTL_WORKER_MAX_ARMS; i++) {
        gn_arm_info ai;
        if (gn_arms_get(w->arms, i, &ai) == 0)
            snprintf(rec.arms[rec.n_arms++], GN_CTL_REF_MAX, "%s@%u", ai.name, ai.version);
    }
    rec.capacity = w->o.capacity;
    rec.load = gn_arms_load_total(w->arms);
    gn_err e = {0};
    uint64_t gen = gn_arms_generation(w->arms);
    if (gn_ctl_worker_heartbeat(w->ctl, &rec, 3 * w->o.heartbeat_ms, &e) != 0) {
        gn_wire_log("warn", COMP, "event=registry_heartbeat_failed msg=\"%s\"", e.msg);
    } else {
        if (!w->published_once || gen != w->published_gen)
            gn_wire_log("info", COMP, "event=registered n_arms=%d load=%d", rec.n_arms, rec.load);
        w->published_gen = gen;
        w->published_once = 1;
    }
    w->next_hb_ms = now_ms + w->o.heartbeat_ms;
}

/* Follows the registry: a held ARM whose registry "current" changed since it
 * was last seen is swapped to it. */
static int reconcile(worker *w, int64_t now_ms) {
    char names[GN_CTL_WORKER_MAX_ARMS][GN_ARM_NAME_MAX];
    int nn = 0, n = gn_arms_count(w->arms);
    for (int i = 0; i < n && nn < GN_CTL_WORKER_MAX_ARMS; i++) {
        gn_arm_info ai;
        if (gn_arms_get(w->arms, i, &ai) || !ai.is_current)
            continue;
        snprintf(names[nn++], GN_ARM_NAME_MAX, "%s", ai.name);
    }
    for (int i = 0; i < nn; i++) {
        gn_ctl_arm_version cur;
        gn_err e = {0};
        int rc = gn_ctl_arm_get(w->ctl, names[i], NULL, &cur, &e);
        if (rc == GN_EIO)
            return rc; /* Redis unreachable: try again next heartbeat */
        if (rc != 0)
            continue; /* unregistered (loaded by path): keep what we hold */
        seen_current *s = seen_slot(w, names[i]);
        if (!s || !strcmp(s->version, cur.version))
            continue;
        char before[GN_CTL_ID_MAX], ref[GN_CTL_REF_MAX];
        snprintf(before, sizeof before, "%s", s->version);
        snprintf(s->version, sizeof s->version, "%s", cur.version);
        snprintf(ref, sizeof ref, "%.64s@%.64s", names[i], cur.version);
        uint32_t v;
        if (!before[0] || parse_version(cur.version, &v) != 0 ||
            v == gn_arms_current(w->arms, names[i]))
            continue; /* first look (recorded only), or nothing to do */
        if (backoff_active(w, ref, now_ms)) {
            snprintf(s->version, sizeof s->version, "%s", before); /* retry later */
            continue;
        }
        int64_t t0 = gn_wire_now_ms();
        if (gn_arms_ensure(w->arms, names[i], v, 1, NULL, &e) != 0) {
            gn_wire_log("error", COMP, "event=swap_failed arm=%s msg=\"%s\" retry_in_ms=%d", ref,
                        e.msg, LOAD_BACKOFF_MS);
            s = seen_slot(w, names[i]); /* the resolver may have written it */
            if (s)
                snprintf(s->version, sizeof s->version, "%s", before);
            backoff_note(w, ref, now_ms);
        } else {
            int64_t ms = gn_wire_now_ms() - t0;
            gn_wire_log("info", COMP, "event=swap_done arm=%s current=%u swap_ms=%lld", names[i], v, (long long)ms);
            gn_err e2 = {0}; /* for genarm:arm_swap_duration_seconds; a lost report loses only the metric */
            if (gn_ctl_swap_report_push(w->ctl, w->o.worker_id, names[i], cur.version, ms, &e2))
                gn_wire_log("warn", COMP, "event=swap_report_failed msg=\"%s\"", e2.msg);
        }
    }
    return 0;
}

/* Loads ARMs that coordinators parked requests for, then hands the requests
 * back to the stream. */
static void serve_waiting(worker *w, int64_t now_ms) {
    char **refs = NULL;
    size_t n = 0;
    gn_err e = {0};
    if (gn_ctl_wait_arms(w->ctl, &refs, &n, &e) != 0)
        return;
    for (size_t i = 0; i < n; i++) {
        char name[GN_ARM_NAME_MAX];
        uint32_t v;
        const char *at = strchr(refs[i], '@');
        if (parse_arm_ref(refs[i], name, &v) != 0 || v == 0 || backoff_active(w, refs[i], now_ms))
            continue;
        if (gn_arms_ensure(w->arms, name, v, 0, NULL, &e) != 0) {
            gn_wire_log("warn", COMP, "event=waiting_load_failed arm=%s msg=\"%s\" retry_in_ms=%d",
                        refs[i], e.msg, LOAD_BACKOFF_MS);
            backoff_note(w, refs[i], now_ms);
            continue;
        }
        publish(w, now_ms); /* visible before the requests come back */
        long moved = gn_ctl_wait_release(w->ctl, name, at + 1, &e);
        if (moved > 0)
            gn_wire_log("info", COMP, "event=waiting_released arm=%s requests=%ld", refs[i], moved);
    }
    gn_ctl_strv_free(refs, n);
}

/* ---- step-server callbacks ------------------------------------------------------ */

/* What Heartbeat replies report: published after every batch, command and tick. */
static void publish_load(worker *w) {
    if (!w->srv) return;
    gn_step_load *ld = &w->load;
    memset(ld, 0, sizeof *ld);
    int n = gn_arms_count(w->arms);
    for (int i = 0; i < n && ld->n_models < GN_STEP_LOAD_MAX_MODELS; i++) {
        gn_arm_info ai;
        if (gn_arms_get(w->arms, i, &ai)) continue;
        snprintf(ld->models[ld->n_models].name, sizeof ld->models[0].name, "%s", ai.name);
        ld->models[ld->n_models++].version = ai.version;
    }
    ld->active_seqs = (uint32_t)gn_arms_load_total(w->arms);
    ld->max_seqs = (uint32_t)w->o.capacity;
    int used, total;
    gn_arms_kv_usage(w->arms, &used, &total);
    ld->kv_used_blocks = (uint32_t)used;
    ld->kv_total_blocks = (uint32_t)total;
    gn_arms_counters(w->arms, &ld->forward_passes, &ld->pass_seqs_total);
    gn_step_server_publish_load(w->srv, ld);
}

static void after_change(worker *w) {
    publish_load(w);
    if (gn_arms_generation(w->arms) != w->published_gen)
        publish(w, gn_wire_now_ms());
}

static void on_step(void *ud, const gn_wire_step_req *const *reqs, int n, gn_wire_step_resp *const *resps,
                    int *codes, gn_err *errs) {
    worker *w = ud;
    gn_step_server_stats st;
    gn_step_server_stats_get(w->srv, &st); /* the gather wait before this batch */
    uint64_t gen = gn_arms_generation(w->arms);
    gn_arms_step_batch(w->arms, reqs, n, resps, codes, errs, gn_wire_now_ms());
    const int *ps = NULL;
    int np = gn_arms_last_passes(w->arms, &ps);
    gn_worker_metrics_batch(w->wm, n, resps, codes, ps, np, (double)st.last_gather_us / 1e6);
    /* A load on demand changed the set: the registry must say so (publishing
     * does not touch the hosts, so the responses stay valid). */
    if (gn_arms_generation(w->arms) != gen) after_change(w);
    else publish_load(w);
}

static int on_fetch(void *ud, const Genarm__V1__RowFetch *req, Genarm__V1__RowFetchResult *res, gn_err *err) {
    worker *w = ud;
    int code = gn_arms_fetch(w->arms, req, res, err);
    gn_worker_metrics_fetch(w->wm, code ? NULL : res);
    return code;
}

static int on_release(void *ud, const Genarm__V1__Release *rel, uint32_t *released, gn_err *err) {
    worker *w = ud;
    (void)err;
    const char *name = rel->model && rel->model->name ? rel->model->name : "";
    uint32_t ver = rel->model ? rel->model->version : 0;
    *released = (uint32_t)gn_arms_release(w->arms, name, ver, rel->seq_ids, rel->n_seq_ids);
    after_change(w);
    return 0;
}

static int code_of(int rc) {
    switch (rc) {
    case GN_ENOTFOUND: return GENARM__V1__ERROR_CODE__ERROR_UNKNOWN_MODEL;
    case GN_EINVAL:
    case GN_EMISMATCH:
    case GN_EUNSUP: return GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST;
    case GN_ERANGE: return GENARM__V1__ERROR_CODE__ERROR_CAPACITY;
    default: return GENARM__V1__ERROR_CODE__ERROR_INTERNAL;
    }
}

static int on_command(void *ud, const gn_wire_env *cmd, Genarm__V1__CommandResult *res, gn_err *err) {
    worker *w = ud;
    const Genarm__V1__ModelRef *m = NULL;
    if (cmd->body_case == GENARM__V1__ENVELOPE__BODY_LOAD && cmd->load) m = cmd->load->model;
    if (cmd->body_case == GENARM__V1__ENVELOPE__BODY_UNLOAD && cmd->unload) m = cmd->unload->model;
    if (cmd->body_case == GENARM__V1__ENVELOPE__BODY_PROMOTE && cmd->promote) m = cmd->promote->model;
    const char *name = m && m->name ? m->name : "";
    uint32_t ver = m ? m->version : 0;
    if (!gn_arms_name_valid(name)) {
        gn_errf(err, GN_EINVAL, "command: ARM name \"%s\" is not valid", name);
        return GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST;
    }
    int rc = 0;
    uint32_t got = ver;
    const char *what = "";
    switch (cmd->body_case) {
    case GENARM__V1__ENVELOPE__BODY_LOAD: {
        const char *path = cmd->load->path ? cmd->load->path : "";
        const char *lora = cmd->load->lora_path ? cmd->load->lora_path : "";
        what = "loaded";
        if (path[0]) {
            if (ver == 0) {
                gn_errf(err, GN_EINVAL, "LoadModel %s from a path needs a version >= 1", name);
                return GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST;
            }
            /* A registered version must match the registry's tokenizer hash. */
            gn_ctl_arm_version v;
            char vs[16];
            snprintf(vs, sizeof vs, "%u", ver);
            gn_err e2 = {0};
            const char *want = gn_ctl_arm_get(w->ctl, name, vs, &v, &e2) == 0 ? v.tokenizer_hash : NULL;
            rc = gn_arms_load(w->arms, name, ver, path, lora, want, 0, err);
        } else {
            rc = gn_arms_ensure(w->arms, name, ver, 0, &got, err);
        }
        break;
    }
    case GENARM__V1__ENVELOPE__BODY_UNLOAD:
        what = "unloading (freed when its last sequence ends)";
        rc = gn_arms_unload(w->arms, name, ver, err);
        rc = rc > 0 ? 0 : rc;
        break;
    case GENARM__V1__ENVELOPE__BODY_PROMOTE:
        if (ver == 0) {
            gn_errf(err, GN_EINVAL, "PromoteModel %s needs a version >= 1", name);
            return GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST;
        }
        what = "current (the previous version drains)";
        rc = gn_arms_ensure(w->arms, name, ver, 1, &got, err);
        break;
    default:
        gn_errf(err, GN_EINVAL, "not a command");
        return GENARM__V1__ERROR_CODE__ERROR_BAD_REQUEST;
    }
    if (rc) {
        gn_wire_log("warn", COMP, "event=command_failed arm=%s@%u msg=\"%s\"", name, ver, err->msg);
        return code_of(rc);
    }
    after_change(w);
    snprintf(w->cmd_msg, sizeof w->cmd_msg, "ARM %s@%u %s", name, got, what);
    res->ok = 1;
    res->message = w->cmd_msg;
    return 0;
}

static void on_tick(void *ud, int64_t now_ms) {
    worker *w = ud;
    int freed = gn_arms_sweep(w->arms, now_ms);
    if (freed)
        gn_wire_log("info", COMP, "event=idle_expired freed=%d live=%d", freed,
                    gn_arms_load_total(w->arms));
    for (int i = 0; w->sub && now_ms >= w->sub_retry_ms && i < 32; i++) { /* ~1 ms */
        char ch[GN_CTL_CHANNEL_MAX];
        char *payload = NULL;
        size_t len = 0;
        gn_err e = {0};
        int rc = gn_ctl_sub_next(w->sub, 1, ch, &payload, &len, &e);
        gn_free(payload);
        if (rc < 0) { /* reconnect failed: not again before the next heartbeat */
            gn_wire_log("warn", COMP, "event=subscriber_failed msg=\"%s\"", e.msg);
            w->sub_retry_ms = now_ms + w->o.heartbeat_ms;
        }
        if (rc != 1)
            break;
        w->reconcile_now = 1; /* the registry is the truth: re-read it */
    }
    int hb_due = now_ms >= w->next_hb_ms;
    if (w->reconcile_now || hb_due) {
        w->reconcile_now = 0;
        if (reconcile(w, now_ms) == 0 && w->o.load_waiting)
            serve_waiting(w, now_ms);
    }
    if (hb_due || gn_arms_generation(w->arms) != w->published_gen)
        publish(w, now_ms);
    publish_load(w); /* sweeps, loads and swaps change it */
}

/* ---- main ------------------------------------------------------------------------- */

/* The record's endpoints from what was bound (comma-separated): endpoint =
 * --advertise, else the first non-ipc one (else the first); ipc = the first
 * ipc:// one. */
static void pick_endpoints(worker *w, const char *bound) {
    char first[GN_CTL_PATH_MAX] = "", tcp[GN_CTL_PATH_MAX] = "";
    const char *p = bound;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n && n < GN_CTL_PATH_MAX) {
            char ep[GN_CTL_PATH_MAX];
            memcpy(ep, p, n);
            ep[n] = 0;
            if (!first[0]) memcpy(first, ep, n + 1);
            if (!strncmp(ep, "ipc://", 6)) {
                if (!w->ipc[0]) memcpy(w->ipc, ep, n + 1);
            } else if (!tcp[0]) {
                memcpy(tcp, ep, n + 1);
            }
        }
        p += n;
        if (*p == ',') p++;
    }
    snprintf(w->endpoint, sizeof w->endpoint, "%s", w->o.advertise ? w->o.advertise : tcp[0] ? tcp : first);
}

static int write_ready_file(const char *path, const char *endpoint) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    int bad = fprintf(f, "%s\n", endpoint) < 0;
    bad |= fclose(f) != 0;
    return bad || rename(tmp, path) != 0 ? -1 : 0;
}

int main(int argc, char **argv) {
    static worker W;
    worker *w = &W;
    if (parse_opts(argc, argv, &w->o) != 0) {
        usage(stderr);
        return 2;
    }
    if (split_host_port(w->o.redis, w->redis_host, sizeof w->redis_host, &w->redis_port) != 0) {
        fprintf(stderr, "reward_worker: --redis %s: expected HOST:PORT\n", w->o.redis);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: zmq_poll returns EINTR at once */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    gn_err err = {0};
    int status = 1, registered = 0;
    gn_backend *be = NULL;
    gn_backend_params bp = gn_backend_default_params();
    bp.n_threads = w->o.threads;
    if (!(be = gn_backend_create(w->o.device, &bp, &err))) {
        gn_wire_log("error", COMP, "event=start_failed stage=backend device=%s msg=\"%s\"",
                    w->o.device, err.msg);
        goto out;
    }
    int tmo = w->o.heartbeat_ms < 2000 ? 2000 : w->o.heartbeat_ms;
    if (!(w->ctl = gn_ctl_connect(w->redis_host, w->redis_port, tmo, &err))) {
        gn_wire_log("error", COMP, "event=start_failed stage=redis redis=%s msg=\"%s\"", w->o.redis,
                    err.msg);
        goto out;
    }
    if ((w->sub = gn_ctl_connect(w->redis_host, w->redis_port, tmo, &err)) &&
        (gn_ctl_subscribe(w->sub, "genarm:swaps", &err) || gn_ctl_subscribe(w->sub, "genarm:load", &err))) {
        gn_wire_log("warn", COMP, "event=subscribe_failed msg=\"%s\" fallback=poll", err.msg);
        gn_ctl_free(w->sub);
        w->sub = NULL;
    }
    gn_arms_params ap = gn_arms_default_params();
    ap.max_models = w->o.max_arms;
    ap.host.max_seqs = w->o.capacity;
    ap.host.idle_timeout_ms = (int64_t)(w->o.idle_timeout_s * 1000.0);
    ap.max_req_seqs = w->o.capacity > 256 ? w->o.capacity : 256; /* new sequences beyond the
                                       capacity get per-sequence ERROR_CAPACITY, not a refused request */
    ap.host.max_req_seqs = ap.max_req_seqs;
    ap.max_batch_seqs = w->o.max_batch;
    ap.host.max_batch_seqs = w->o.max_batch;
    if (!(w->wm = gn_worker_metrics_create(w->o.worker_id, &err))) {
        gn_wire_log("error", COMP, "event=start_failed stage=metrics msg=\"%s\"", err.msg);
        goto out;
    }
    if (w->o.metrics_listen && gn_worker_metrics_serve(w->wm, w->o.metrics_listen, &err) != 0) {
        gn_wire_log("error", COMP, "event=start_failed stage=metrics listen=%s msg=\"%s\"", w->o.metrics_listen,
                    err.msg);
        goto out;
    }
    if (!(w->arms = gn_arms_create(be, &ap, resolve, w, &err))) {
        gn_wire_log("error", COMP, "event=start_failed stage=arms msg=\"%s\"", err.msg);
        goto out;
    }
    for (int i = 0; i < w->o.n_arms; i++) {
        char name[GN_ARM_NAME_MAX];
        uint32_t v;
        parse_arm_ref(w->o.arms[i], name, &v); /* checked in parse_opts */
        if (gn_arms_ensure(w->arms, name, v, 0, NULL, &err) != 0) {
            gn_wire_log("error", COMP, "event=start_failed stage=arm arm=%s msg=\"%s\"",
                        w->o.arms[i], err.msg);
            goto out;
        }
    }
    gn_step_server_params sp = gn_step_server_default_params();
    sp.endpoint = w->o.bind;
    sp.worker_id = w->o.worker_id;
    sp.log_comp = COMP;
    sp.limits.max_seqs = ap.max_req_seqs;
    sp.tick_ms = 50; /* registry notifications and idle sweeps stay prompt */
    if (ap.host.idle_timeout_ms > 0 && ap.host.idle_timeout_ms < 200)
        sp.tick_ms = (int)(ap.host.idle_timeout_ms / 4 + 1);
    sp.max_batch_seqs = w->o.max_batch;
    sp.gather_us = w->o.gather_us;
    gn_step_handlers hd = {.ud = w, .step = on_step, .fetch = on_fetch, .release = on_release,
                           .command = on_command, .tick = on_tick};
    if (!(w->srv = gn_step_server_create(&sp, &hd, &err))) {
        gn_wire_log("error", COMP, "event=start_failed stage=bind endpoint=%s msg=\"%s\"",
                    w->o.bind, err.msg);
        goto out;
    }
    pick_endpoints(w, gn_step_server_endpoints(w->srv));
    if (gethostname(w->host, sizeof w->host) != 0 || !w->host[0]) w->host[0] = 0;
    w->host[sizeof w->host - 1] = 0;
    for (char *c = w->host; *c; c++) /* the registry takes no spaces or control characters */
        if ((unsigned char)*c <= 0x20 || (unsigned char)*c == 0x7f) *c = '_';
    publish(w, gn_wire_now_ms());
    publish_load(w);
    registered = 1;
    gn_wire_log("info", COMP,
                "event=ready endpoint=%s endpoints=%s ipc=%s host=%s metrics=%s redis=%s device=%s n_arms=%d "
                "capacity=%d heartbeat_ms=%d idle_timeout_ms=%lld gather_us=%d max_batch=%d",
                w->endpoint, gn_step_server_endpoints(w->srv), w->ipc[0] ? w->ipc : "-", w->host[0] ? w->host : "-",
                gn_worker_metrics_address(w->wm)[0] ? gn_worker_metrics_address(w->wm) : "-", w->o.redis,
                w->o.device, gn_arms_count(w->arms), w->o.capacity, w->o.heartbeat_ms,
                (long long)ap.host.idle_timeout_ms, w->o.gather_us, w->o.max_batch);
    if (w->o.ready_file && write_ready_file(w->o.ready_file, gn_step_server_endpoint(w->srv))) {
        gn_wire_log("error", COMP, "event=start_failed stage=ready_file path=%s msg=\"%s\"",
                    w->o.ready_file, strerror(errno));
        goto out;
    }
    if (gn_step_server_run(w->srv, &g_stop, &err) != 0) {
        gn_wire_log("error", COMP, "event=serve_failed msg=\"%s\"", err.msg);
        goto out;
    }
    status = 0;
out:
    if (registered && w->ctl) {
        gn_err e2 = {0};
        if (gn_ctl_worker_remove(w->ctl, w->o.worker_id, &e2) != 0)
            gn_wire_log("warn", COMP, "event=deregister_failed msg=\"%s\"", e2.msg);
    }
    gn_step_server_free(w->srv);
    gn_worker_metrics_free(w->wm);
    gn_arms_free(w->arms);
    gn_ctl_free(w->sub);
    gn_ctl_free(w->ctl);
    gn_backend_free(be);
    if (status == 0)
        gn_wire_log("info", COMP, "event=exit status=0");
    return status;
}
