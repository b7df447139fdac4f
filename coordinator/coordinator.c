/* coordinator — the GenARM Serve front process: OpenAI-compatible HTTP
 * (http_server.h), API keys and profiles from Redis (auth_redis.h), and the
 * distributed per-step loop over the base and reward workers
 * (dist_backend.h), or with --inproc the single-process engine
 * (inproc_backend.h) with the registry's current ARM versions.
 *
 *   coordinator --listen 127.0.0.1:PORT --redis 127.0.0.1:PORT
 *               --base tcp://127.0.0.1:P --base-model DIR [--inproc]
 *               [--model-id ID] [--step-timeout-ms MS] [--arm-wait-ms MS]
 *               [--max-batch N] [--drain-timeout-s S] [--id NAME]
 *               [--ready-file PATH] [--threads N] [--sample-threads N]
 *               [--no-share] [--peer-listen tcp://HOST:PORT] [--peer-advertise tcp://HOST:PORT]
 *               [--peer-timeout-ms MS] [--capacity-wait-ms MS] [--liveness-ms MS]
 *               [--rows sparse|f32|f16|bf16] [--epsilon E] [--sparse-k K] [--sparse-k-max K]
 *               [--no-ipc]
 *
 * --rows: how the workers send log-prob rows. "sparse" (default): their top
 * candidates and bounds on the rest; a draw goes ahead only when proved within
 * --epsilon (total variation, default 1e-6) of the exact distribution, else
 * the missing values or whole rows are fetched first (--sparse-k candidates to
 * start with, adapted per sequence up to --sparse-k-max). "f32": whole rows,
 * exact. "f16"/"bf16": whole rows in 16 bits, with their rounding.
 * --liveness-ms: a worker that answers neither a pending request nor a
 * heartbeat for this long is declared stalled (default 1000); a worker whose
 * connection drops fails its requests at once. Reward workers on this host
 * that offer an ipc:// endpoint are reached through it (no TCP copy), unless
 * --no-ipc; the base worker is reached at --base, which may be ipc:// too.
 *
 * Several coordinators share one Redis: a request that finds this one's
 * batch full goes to the shared queue and whichever coordinator has room
 * runs it, streaming the output back over ZeroMQ to the peer endpoint
 * (--peer-listen, default tcp://127.0.0.1:0; --peer-advertise is the address
 * the others use, required when listening on a wildcard address). --no-share
 * runs every request here. --id must then be unique per coordinator (default:
 * coord-HOSTNAME-PID).
 *
 * --listen may use port 0; --ready-file then receives "host:port" once the
 * server listens. SIGTERM/SIGINT: /ready turns 503, new requests get 503,
 * nothing more is taken from the shared queue, running streams (its own and
 * those it runs for other coordinators) finish (at most --drain-timeout-s,
 * default 60), then the process exits 0. Exit 1 on a start-up failure, 2 on a bad command line.
 * Logs: key=value lines on stderr. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "auth_redis.h"
#include "control.h"
#include "dist_backend.h"
#include "gn_cli.h"
#include "step_exchange.h"
#include "gn_alloc.h"
#include "http_server.h"
#include "inproc_backend.h"
#include "metrics.h"
#include "wire.h"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static void usage(FILE *f) {
    fprintf(f, "usage: coordinator --listen HOST:PORT --redis HOST:PORT --base tcp://HOST:PORT --base-model DIR\n"
               "                   [--inproc] [--model-id ID] [--step-timeout-ms MS] [--arm-wait-ms MS]\n"
               "                   [--max-batch N] [--drain-timeout-s S] [--id NAME] [--ready-file PATH]\n"
               "                   [--threads N] [--sample-threads N] [--no-share] [--peer-listen ENDPOINT]\n"
               "                   [--peer-advertise ENDPOINT] [--peer-timeout-ms MS] [--capacity-wait-ms MS]\n"
               "                   [--liveness-ms MS] [--rows sparse|f32|f16|bf16] [--epsilon E]\n"
               "                   [--sparse-k K] [--sparse-k-max K] [--no-ipc]\n");
}

static int split_hostport(const char *s, char *host, size_t cap, int *port) {
    const char *c = strrchr(s, ':');
    if (!c || c == s || (size_t)(c - s) >= cap) return -1;
    memcpy(host, s, (size_t)(c - s));
    host[c - s] = 0;
    char *end;
    long p = strtol(c + 1, &end, 10);
    if (*end || p < 0 || p > 65535) return -1;
    *port = (int)p;
    return 0;
}

typedef struct opts {
    const char *listen, *redis, *base, *base_model, *model_id, *id, *ready_file, *peer_listen, *peer_advertise;
    const char *rows;
    int inproc, no_share, no_ipc, step_timeout_ms, arm_wait_ms, max_batch, drain_timeout_s, threads, sample_threads;
    int peer_timeout_ms, capacity_wait_ms, liveness_ms, sparse_k, sparse_k_max;
    double epsilon;
} opts;

static int parse_args(int argc, char **argv, opts *o) {
    memset(o, 0, sizeof *o);
    o->drain_timeout_s = 60;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(a, "--inproc")) {
            o->inproc = 1;
            continue;
        }
        if (!strcmp(a, "--no-share")) {
            o->no_share = 1;
            continue;
        }
        if (!strcmp(a, "--no-ipc")) {
            o->no_ipc = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "coordinator: %s needs a value\n", a);
            return -1;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--listen")) o->listen = v;
        else if (!strcmp(a, "--redis")) o->redis = v;
        else if (!strcmp(a, "--base")) o->base = v;
        else if (!strcmp(a, "--base-model")) o->base_model = v;
        else if (!strcmp(a, "--model-id")) o->model_id = v;
        else if (!strcmp(a, "--id")) o->id = v;
        else if (!strcmp(a, "--ready-file")) o->ready_file = v;
        else if (!strcmp(a, "--peer-listen")) o->peer_listen = v;
        else if (!strcmp(a, "--peer-advertise")) o->peer_advertise = v;
        else if (!strcmp(a, "--peer-timeout-ms")) o->peer_timeout_ms = atoi(v);
        else if (!strcmp(a, "--capacity-wait-ms")) o->capacity_wait_ms = atoi(v);
        else if (!strcmp(a, "--step-timeout-ms")) o->step_timeout_ms = atoi(v);
        else if (!strcmp(a, "--arm-wait-ms")) o->arm_wait_ms = atoi(v);
        else if (!strcmp(a, "--max-batch")) o->max_batch = atoi(v);
        else if (!strcmp(a, "--drain-timeout-s")) o->drain_timeout_s = atoi(v);
        else if (!strcmp(a, "--threads")) o->threads = atoi(v);
        else if (!strcmp(a, "--sample-threads")) o->sample_threads = atoi(v);
        else if (!strcmp(a, "--liveness-ms")) { if (gn_cli_int("coordinator", a, v, 10, 3600000, &o->liveness_ms)) return -1; }
        else if (!strcmp(a, "--sparse-k")) { if (gn_cli_int("coordinator", a, v, 1, 1 << 20, &o->sparse_k)) return -1; }
        else if (!strcmp(a, "--sparse-k-max")) { if (gn_cli_int("coordinator", a, v, 1, 1 << 20, &o->sparse_k_max)) return -1; }
        else if (!strcmp(a, "--rows")) {
            gn_rows_policy rp;
            if (gn_rows_policy_parse(v, &rp)) {
                fprintf(stderr, "coordinator: --rows %s: expected sparse, f32, f16 or bf16\n", v);
                return -1;
            }
            o->rows = v;
        } else if (!strcmp(a, "--epsilon")) {
            char *end;
            o->epsilon = strtod(v, &end);
            if (*end || end == v || !(o->epsilon > 0) || o->epsilon > 0.5) {
                fprintf(stderr, "coordinator: --epsilon %s: expected a number in (0, 0.5]\n", v);
                return -1;
            }
        } else {
            fprintf(stderr, "coordinator: unknown option %s\n", a);
            return -1;
        }
    }
    if (!o->listen || !o->redis || !o->base_model || (!o->base && !o->inproc)) {
        fprintf(stderr, "coordinator: --listen, --redis, --base-model and --base (or --inproc) are required\n");
        return -1;
    }
    return 0;
}

/* --inproc: the registry's ARMs at their current versions. */
static gn_inproc *make_inproc(const opts *o, const char *rhost, int rport, gn_coord_metrics *m, gn_err *e) {
    gn_ctl *c = gn_ctl_connect(rhost, rport, 2000, e);
    if (!c) return NULL;
    gn_ctl_arm_info *arms = NULL;
    size_t n = 0;
    gn_inproc *x = NULL;
    if (gn_ctl_arm_list(c, &arms, &n, e) == 0) {
        gn_inproc_params p;
        memset(&p, 0, sizeof p);
        p.base_dir = o->base_model;
        p.model_id = o->model_id;
        p.n_threads = o->threads;
        p.metrics = m;
        for (size_t i = 0; i < n && p.n_arms < GN_INPROC_MAX_ARMS; i++)
            for (size_t k = 0; k < arms[i].n_versions; k++)
                if (strcmp(arms[i].versions[k].version, arms[i].current) == 0) {
                    p.arm_names[p.n_arms] = arms[i].name;
                    p.arm_dirs[p.n_arms++] = arms[i].versions[k].path;
                }
        x = gn_inproc_create(&p, e);
        gn_ctl_arm_list_free(arms, n);
    }
    gn_ctl_free(c);
    return x;
}

int main(int argc, char **argv) {
    opts o;
    if (parse_args(argc, argv, &o)) {
        usage(stderr);
        return 2;
    }
    char lhost[256], rhost[256];
    int lport, rport;
    if (split_hostport(o.listen, lhost, sizeof lhost, &lport) || split_hostport(o.redis, rhost, sizeof rhost, &rport) ||
        rport == 0) {
        fprintf(stderr, "coordinator: --listen and --redis want HOST:PORT\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    gn_err e = {0};
    int rc = 1;
    gn_coord_metrics *metrics = NULL;
    gn_auth_redis *auth = NULL;
    gn_dist *dist = NULL;
    gn_inproc *inproc = NULL;
    gn_coord_server *srv = NULL;
    if (!(metrics = gn_coord_metrics_create(&e))) goto out;
    if (!(auth = gn_auth_redis_create(rhost, rport, 2000, &e))) goto out;
    gn_coord_backend be;
    if (o.inproc) {
        if (!(inproc = make_inproc(&o, rhost, rport, metrics, &e))) goto out;
        be = gn_inproc_backend(inproc);
    } else {
        gn_dist_params dp = gn_dist_default_params();
        dp.base_endpoint = o.base;
        dp.base_model_dir = o.base_model;
        dp.redis_host = rhost;
        dp.redis_port = rport;
        if (o.step_timeout_ms > 0) dp.step_timeout_ms = o.step_timeout_ms;
        if (o.arm_wait_ms > 0) dp.arm_wait_ms = o.arm_wait_ms;
        if (o.max_batch > 0) dp.max_batch = o.max_batch;
        if (o.sample_threads > 0) dp.sample_threads = o.sample_threads;
        dp.model_id = o.model_id;
        dp.coordinator_id = o.id;
        dp.metrics = metrics;
        dp.no_share = o.no_share;
        dp.no_ipc = o.no_ipc;
        dp.peer_bind = o.peer_listen;
        dp.peer_advertise = o.peer_advertise;
        dp.peer_timeout_ms = o.peer_timeout_ms;
        dp.capacity_wait_ms = o.capacity_wait_ms;
        dp.liveness_ms = o.liveness_ms;
        if (o.rows) dp.rows = o.rows;
        if (o.epsilon > 0) dp.epsilon = o.epsilon;
        dp.sparse_k = (uint32_t)o.sparse_k;
        dp.sparse_k_max = (uint32_t)o.sparse_k_max;
        if (!(dist = gn_dist_create(&dp, &e))) goto out;
        be = gn_dist_backend(dist);
    }
    gn_coord_auth ai = gn_auth_redis_iface(auth);
    gn_coord_server_params sp = gn_coord_server_default_params();
    sp.bind_addr = lhost;
    sp.port = lport;
    sp.backend = be;
    sp.auth = &ai;
    sp.metrics = metrics;
    if (!(srv = gn_coord_server_start(&sp, &e))) goto out;
    gn_wire_log("info", "coordinator", "event=listening addr=%s:%d backend=%s model=%s", lhost,
                gn_coord_server_port(srv), o.inproc ? "inproc" : "dist", be.model_id);
    if (o.ready_file) {
        char tmp[1100];
        snprintf(tmp, sizeof tmp, "%s.tmp", o.ready_file);
        FILE *f = fopen(tmp, "w");
        if (f) {
            fprintf(f, "%s:%d\n", lhost, gn_coord_server_port(srv));
            fclose(f);
            rename(tmp, o.ready_file);
        }
    }
    while (!g_stop) usleep(50000);
    int left = gn_coord_server_drain(srv);
    if (dist) gn_dist_drain(dist);
    gn_wire_log("info", "coordinator", "event=draining inflight=%d", left);
    time_t t0 = time(NULL);
    /* its own clients' requests, and other coordinators' requests running here */
    while ((left = gn_coord_server_inflight(srv) + (dist ? gn_dist_peer_jobs(dist) : 0)) > 0 &&
           time(NULL) - t0 < o.drain_timeout_s)
        usleep(50000);
    gn_wire_log("info", "coordinator", "event=stopping inflight=%d", left);
    rc = 0;
out:
    if (rc) gn_wire_log("error", "coordinator", "event=start_failed msg=\"%s\"", e.msg);
    gn_coord_server_stop(srv);
    gn_dist_free(dist);
    gn_inproc_free(inproc);
    gn_auth_redis_free(auth);
    gn_coord_metrics_free(metrics);
    return rc;
}
